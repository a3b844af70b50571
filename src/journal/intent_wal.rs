//! The release intents' write-ahead log in front of the intent store: replay at open,
//! appends, and the covers that let a segment be reused (the invariants are in
//! [`intent_log`], the framing's module). Generic over the store ([`WalStore`]) so that a
//! model store can crash at any step in the tests.

use super::intent_log;
use super::intents::{apply_intents, settle_intents};
use super::JournalError;

/// The tree of the intent store that keeps the write-ahead log's `covered` mark.
const WAL: &str = "wal";
const COVERED: &[u8] = b"covered";

/// What the write-ahead log needs of the store it stands in front of.
pub(crate) trait WalStore: Clone + Send + 'static {
    /// Applies a batch of intents (in memory; durable with the next flush).
    fn apply(&self, intents: &[(Vec<u8>, Vec<u8>)]) -> Result<(), JournalError>;
    /// Removes intents whose parcel record is durable (key and the record's revision; an
    /// intent of a newer revision stays).
    fn settle(&self, settle: &[(Vec<u8>, u32)]) -> Result<(), JournalError>;
    /// Makes everything applied so far durable.
    fn flush(&self) -> Result<(), JournalError>;
    /// Notes `generation` as covered and makes it durable with everything applied so far.
    fn cover(&self, generation: u64) -> Result<(), JournalError>;
    /// The generation the last durable [`WalStore::cover`] noted (0 for none).
    fn covered(&self) -> Result<u64, JournalError>;
}

/// The intent store (`<store>-intents`) behind its write-ahead log.
#[derive(Clone)]
pub(crate) struct SledIntents(pub(crate) sled::Db);

impl WalStore for SledIntents {
    fn apply(&self, intents: &[(Vec<u8>, Vec<u8>)]) -> Result<(), JournalError> {
        apply_intents(&self.0, intents)
    }

    fn settle(&self, settle: &[(Vec<u8>, u32)]) -> Result<(), JournalError> {
        settle_intents(&self.0, settle)
    }

    fn flush(&self) -> Result<(), JournalError> {
        self.0.flush()?;
        Ok(())
    }

    fn cover(&self, generation: u64) -> Result<(), JournalError> {
        let tree = self.0.open_tree(WAL)?;
        let at = self.covered()?.max(generation);
        tree.insert(COVERED, &at.to_be_bytes())?;
        self.flush()
    }

    fn covered(&self) -> Result<u64, JournalError> {
        let v = self.0.open_tree(WAL)?.get(COVERED)?;
        Ok(
            v.and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
                .unwrap_or(0),
        )
    }
}

/// Replays the write-ahead log in `dir` into `store`: every frame its `covered` mark does
/// not cover, in order, then covers them. Returns the highest generation in the log.
pub(crate) fn recover_wal<S: WalStore>(
    dir: &std::path::Path,
    store: &S,
) -> Result<u64, JournalError> {
    let covered = store.covered()?;
    let (payloads, highest) = intent_log::read_uncovered(dir, covered).map_err(sled::Error::Io)?;
    let mut replayed = 0usize;
    for payload in &payloads {
        match intent_log::decode_batch(payload) {
            Some(batch) => {
                store.apply(&batch)?;
                replayed += batch.len();
            }
            None => tracing::error!(
                bytes = payload.len(),
                "a whole frame of the release intents' log does not decode; its intents are not recovered"
            ),
        }
    }
    if highest > covered {
        store.cover(highest)?;
        // A clean stop covers the log (see `IntentWal`'s drop): this start follows a crash.
        tracing::warn!(
            intents = replayed,
            "release intents replayed from their write-ahead log: the last run stopped without covering it"
        );
    }
    Ok(highest)
}

/// What the store's thread is asked to do, in the order the log asks it.
enum Job {
    Apply(Vec<(Vec<u8>, Vec<u8>)>),
    /// Intents whose parcel record is durable: key and the record's revision.
    Settle(Vec<(Vec<u8>, u32)>),
    /// Cover a generation, answering once it is durable.
    Cover(u64, std::sync::mpsc::SyncSender<Result<(), JournalError>>),
    Stop,
}

/// A job held back on the store's thread behind an apply that failed.
enum Behind {
    Apply(Vec<(Vec<u8>, Vec<u8>)>),
    Settle(Vec<(Vec<u8>, u32)>),
}

/// The store's thread: applies, settles and covers in the order asked, so that a cover
/// follows every apply of its frames, and a settle the apply of its intent. An apply that
/// fails holds back the jobs after it; each cover first tries them again, in order, and
/// fails while they still fail (the log keeps their frames, and the segment is not reused).
fn serve<S: WalStore>(store: S, jobs: std::sync::mpsc::Receiver<Job>) {
    let mut behind: std::collections::VecDeque<Behind> = std::collections::VecDeque::new();
    let settle = |s: &[(Vec<u8>, u32)]| {
        if let Err(e) = store.settle(s) {
            tracing::error!(error = %e, "settled intents could not be removed; they are checked again at the next start");
        }
    };
    while let Ok(job) = jobs.recv() {
        match job {
            Job::Apply(batch) => {
                if !behind.is_empty() {
                    behind.push_back(Behind::Apply(batch));
                } else if let Err(e) = store.apply(&batch) {
                    tracing::error!(error = %e, "release intents could not be applied to the intent store; they stay in its write-ahead log and are tried again");
                    behind.push_back(Behind::Apply(batch));
                }
            }
            Job::Settle(s) if behind.is_empty() => settle(&s),
            Job::Settle(s) => behind.push_back(Behind::Settle(s)),
            Job::Cover(generation, done) => {
                let mut result = Ok(());
                while let Some(job) = behind.front() {
                    match job {
                        Behind::Apply(batch) => {
                            if let Err(e) = store.apply(batch) {
                                result = Err(e);
                                break;
                            }
                        }
                        Behind::Settle(s) => settle(s),
                    }
                    behind.pop_front();
                }
                let result = result.and_then(|()| store.cover(generation));
                let _ = done.send(result);
            }
            Job::Stop => break,
        }
    }
}

/// The write-ahead log in front of a [`WalStore`] (see [`intent_log`]). A release waits for
/// the log's write and sync alone: the store is written by a thread of its own
/// (`bondline-intents-store`), since even sled's in-memory apply waits for its log buffers
/// while sled flushes them (10-30 ms under a drain, measured). The one wait on that thread
/// is at a segment switch, for the cover of the segment's last use, asked a whole segment
/// earlier.
pub(crate) struct IntentWal {
    segments: intent_log::Segments,
    jobs: std::sync::mpsc::Sender<Job>,
    store_thread: Option<std::thread::JoinHandle<()>>,
    /// The cover asked for the segment left at the last switch: its generation and answer.
    checkpoint: Option<(u64, std::sync::mpsc::Receiver<Result<(), JournalError>>)>,
    /// Set after a failed write: the log's state on disk is unknown, so from then on every
    /// batch is made durable by the store's own flush.
    failed: bool,
    /// When the generation in use was last covered (or began).
    last_cover: std::time::Instant,
    /// Whether frames were written under the generation in use.
    dirty: bool,
    /// [`COVER_EVERY`], shorter in tests.
    cover_every: std::time::Duration,
}

/// How often the generation in use is covered while intents come: a start after a crash
/// then replays about this much of them.
pub(crate) const COVER_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// A clean stop covers what the log holds, so that the next start replays nothing. The
/// store's thread is then stopped once it has done what it was asked (and joined: it holds
/// the intent store open, and a restart in the same process opens it again at once).
impl Drop for IntentWal {
    fn drop(&mut self) {
        if let Err(e) = self.cover(self.segments.generation()) {
            tracing::warn!(error = %e, "the release intents' log could not be covered at stop; the next start replays it");
        }
        let _ = self.jobs.send(Job::Stop);
        if let Some(t) = self.store_thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
impl IntentWal {
    /// Writes the first `n` bytes of a frame where the next append would go, as a crash in
    /// the middle of a write leaves it.
    fn tear(&mut self, n: usize) {
        self.segments.tear(n);
    }
}

impl IntentWal {
    /// Opens the log in `dir` (segments of `size` bytes, created zeroed when missing) in
    /// front of `store`. The log must have been recovered ([`recover_wal`]).
    pub(crate) fn open<S: WalStore>(
        dir: &std::path::Path,
        size: u64,
        store: S,
    ) -> Result<Self, JournalError> {
        let covered = store.covered()?;
        let (uncovered, highest) =
            intent_log::read_uncovered(dir, covered).map_err(sled::Error::Io)?;
        if !uncovered.is_empty() {
            return Err(JournalError::Corrupt {
                seq: 0,
                reason: "the release intents' log holds frames not yet replayed".into(),
            });
        }
        let segments = intent_log::Segments::open(dir, size, highest.max(covered) + 1)
            .map_err(sled::Error::Io)?;
        let (jobs, rx) = std::sync::mpsc::channel();
        let store_thread = std::thread::Builder::new()
            .name("bondline-intents-store".into())
            .spawn(move || serve(store, rx))
            .map_err(sled::Error::Io)?;
        Ok(IntentWal {
            segments,
            jobs,
            store_thread: Some(store_thread),
            checkpoint: None,
            failed: false,
            last_cover: std::time::Instant::now(),
            dirty: false,
            cover_every: COVER_EVERY,
        })
    }

    /// Where settled intents are sent: the store's thread removes them after their intents'
    /// apply.
    pub(crate) fn settler(&self) -> Settler {
        Settler(self.jobs.clone())
    }

    /// Makes a batch of intents durable in the log (or, when the batch is larger than a
    /// segment or the log failed, with the store's own flush) and has the store's thread
    /// apply it.
    pub(crate) fn store(&mut self, intents: &[(Vec<u8>, Vec<u8>)]) -> Result<(), JournalError> {
        let payload = intent_log::encode_batch(intents);
        if self.failed || !self.segments.can_hold(payload.len()) {
            self.send(Job::Apply(intents.to_vec()))?;
            return self.cover_all();
        }
        if !self.segments.fits(payload.len()) {
            self.switch()?;
        }
        if let Err(e) = self.segments.append(&payload) {
            self.failed = true;
            tracing::error!(error = %e, "the release intents' log failed; release intents are now made durable by the intent store's own flush");
            self.send(Job::Apply(intents.to_vec()))?;
            return self.cover_all();
        }
        self.dirty = true;
        self.send(Job::Apply(intents.to_vec()))?;
        self.cover_if_due();
        Ok(())
    }

    /// Covers the generation in use if frames were written under it and it is older than
    /// [`COVER_EVERY`]: the log moves on to the next generation in the same segment, and the
    /// store's thread covers the one left behind its applies. Nothing waits for it.
    pub(crate) fn cover_if_due(&mut self) {
        if !self.dirty || self.failed || self.last_cover.elapsed() < self.cover_every {
            return;
        }
        let (done, _) = std::sync::mpsc::sync_channel(1);
        let left = self.segments.advance();
        if self.send(Job::Cover(left, done)).is_ok() {
            self.dirty = false;
            self.last_cover = std::time::Instant::now();
        }
    }

    fn send(&self, job: Job) -> Result<(), JournalError> {
        self.jobs
            .send(job)
            .map_err(|_| JournalError::Transaction("the intent store's thread stopped".into()))
    }

    /// Asks the store's thread to cover `generation` and waits until it is durable.
    fn cover(&self, generation: u64) -> Result<(), JournalError> {
        let (done, answer) = std::sync::mpsc::sync_channel(1);
        self.send(Job::Cover(generation, done))?;
        answer
            .recv()
            .map_err(|_| JournalError::Transaction("the intent store's thread stopped".into()))?
    }

    /// Waits for the cover asked at the last switch; asks again if it failed (a failure
    /// again keeps it for the next switch, and fails this one).
    fn settle_checkpoint(&mut self) -> Result<(), JournalError> {
        if let Some((generation, answer)) = self.checkpoint.take() {
            if !matches!(answer.recv(), Ok(Ok(()))) {
                if let Err(e) = self.cover(generation) {
                    let (_, failed) = std::sync::mpsc::sync_channel(1);
                    self.checkpoint = Some((generation, failed));
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Makes everything written so far durable with the store's own flush, covering every
    /// frame written, and goes on in the other segment. A plain flush would not do: a later
    /// start would replay older frames still uncovered over what it made durable.
    fn cover_all(&mut self) -> Result<(), JournalError> {
        self.cover(self.segments.generation())?;
        self.checkpoint = None;
        self.segments.switch();
        self.last_cover = std::time::Instant::now();
        self.dirty = false;
        Ok(())
    }

    /// Moves to the other segment once its last use is covered, and asks for the cover of the
    /// one left.
    fn switch(&mut self) -> Result<(), JournalError> {
        self.settle_checkpoint()?;
        // Asked before the switch: if the store's thread is gone, nothing moves on to a
        // segment whose frames could not be covered.
        let left = self.segments.generation();
        let (done, answer) = std::sync::mpsc::sync_channel(1);
        self.send(Job::Cover(left, done))?;
        self.checkpoint = Some((left, answer));
        self.segments.switch();
        self.last_cover = std::time::Instant::now();
        self.dirty = false;
        Ok(())
    }
}

/// Sends settled intents to the store's thread (see [`IntentWal::settler`]).
#[derive(Clone)]
pub(crate) struct Settler(std::sync::mpsc::Sender<Job>);

impl Settler {
    pub(crate) fn settle(&self, settle: &[(Vec<u8>, u32)]) -> Result<(), JournalError> {
        self.0
            .send(Job::Settle(settle.to_vec()))
            .map_err(|_| JournalError::Transaction("the intent store's thread stopped".into()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use proptest::prelude::*;

    use super::*;

    /// A store that keeps what was applied apart from what a flush made durable, so that a
    /// crash (losing everything not flushed) can come at any step.
    #[derive(Clone, Default)]
    struct Model(Arc<Mutex<ModelState>>);

    #[derive(Clone, Default)]
    struct ModelState {
        /// Covers take a while (a busy disk), so that one not waited for lands too late.
        slow_covers: bool,
        /// Applies that fail before the next one succeeds (a store that errs for a while).
        failing_applies: u32,
        applied: BTreeMap<Vec<u8>, Vec<u8>>,
        durable: BTreeMap<Vec<u8>, Vec<u8>>,
        covered: u64,
        durable_covered: u64,
    }

    impl WalStore for Model {
        fn apply(&self, intents: &[(Vec<u8>, Vec<u8>)]) -> Result<(), JournalError> {
            let mut s = self.0.lock().unwrap();
            if s.failing_applies > 0 {
                s.failing_applies -= 1;
                return Err(JournalError::Transaction("model apply fails".into()));
            }
            for (k, v) in intents {
                s.applied.insert(k.clone(), v.clone());
            }
            Ok(())
        }
        /// As the intent store does: removes an intent whose revision (here: the serial in
        /// its value's first four bytes) is not newer than the settling record's.
        fn settle(&self, settle: &[(Vec<u8>, u32)]) -> Result<(), JournalError> {
            let mut s = self.0.lock().unwrap();
            for (k, revision) in settle {
                if s.applied.get(k).is_some_and(|v| serial_of(v) <= *revision) {
                    s.applied.remove(k);
                }
            }
            Ok(())
        }
        fn flush(&self) -> Result<(), JournalError> {
            let mut s = self.0.lock().unwrap();
            s.durable = s.applied.clone();
            s.durable_covered = s.covered;
            Ok(())
        }
        fn cover(&self, generation: u64) -> Result<(), JournalError> {
            if self.0.lock().unwrap().slow_covers {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            {
                let mut s = self.0.lock().unwrap();
                s.covered = s.covered.max(generation);
            }
            self.flush()
        }
        fn covered(&self) -> Result<u64, JournalError> {
            Ok(self.0.lock().unwrap().covered)
        }
    }

    impl Model {
        /// What a restart after a crash finds: only what was flushed.
        fn crashed(&self) -> Model {
            let s = self.0.lock().unwrap();
            Model(Arc::new(Mutex::new(ModelState {
                applied: s.durable.clone(),
                durable: s.durable.clone(),
                covered: s.durable_covered,
                durable_covered: s.durable_covered,
                slow_covers: s.slow_covers,
                failing_applies: 0,
            })))
        }
        fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
            self.0.lock().unwrap().applied.get(key).cloned()
        }
    }

    fn serial_of(v: &[u8]) -> u32 {
        u32::from_be_bytes(v[..4].try_into().unwrap())
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Stores a batch: (key, value length) pairs; values are made unique.
        Store(Vec<(u8, usize)>),
        /// Settles a key's intent with the revision last stored (its durable record).
        Settle(u8),
        /// Settles a key with an older revision than the one last stored (an earlier
        /// decision's record): the newer intent stays.
        SettleOlder(u8),
        /// The store's own background flush.
        Flush,
        /// The log's write fails: the log is given up for the store's flush until a restart.
        Fail,
        /// The store's next applies fail.
        ApplyFails(u32),
        /// A crash, with a torn frame of `n` bytes in the log (an append that never returned).
        Crash(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => prop::collection::vec((0u8..24, 0usize..90), 1..4).prop_map(Op::Store),
            // Now and then a batch larger than a segment.
            1 => prop::collection::vec((0u8..24, 400usize..600), 2..3).prop_map(Op::Store),
            2 => (0u8..24).prop_map(Op::Settle),
            1 => (0u8..24).prop_map(Op::SettleOlder),
            1 => Just(Op::Flush),
            1 => Just(Op::Fail),
            1 => (1u32..3).prop_map(Op::ApplyFails),
            1 => (0usize..60).prop_map(Op::Crash),
        ]
    }

    const SIZE: u64 = 512;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever the order of appends, settles (of the same or an older revision), the
        /// store's flushes, segment switches, periodic covers, failing applies and crashes
        /// (with a torn frame), a restart finds every intent whose store returned and that was
        /// not settled since, with the value last stored for it (or a refused later one).
        #[test]
        fn a_crash_loses_no_stored_intent(
            ops in prop::collection::vec(op(), 1..80),
            slow_covers: bool,
            frequent_covers: bool,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut store = Model::default();
            store.0.lock().unwrap().slow_covers = slow_covers;
            recover_wal(dir.path(), &store).unwrap();
            let open = |store: &Model| {
                let mut wal = IntentWal::open(dir.path(), SIZE, store.clone()).unwrap();
                if frequent_covers {
                    wal.cover_every = std::time::Duration::ZERO;
                }
                wal
            };
            let mut wal = open(&store);
            // Key -> the values a restart may find for it (the one last stored; with the one
            // before while a later store was refused), while not settled since.
            let mut expected: BTreeMap<Vec<u8>, Vec<Vec<u8>>> = BTreeMap::new();
            // Key -> the newest serial stored for it, refused or not.
            let mut newest: BTreeMap<Vec<u8>, u32> = BTreeMap::new();
            let mut serial = 0u32;
            for op in ops {
                match op {
                    Op::Store(batch) => {
                        let batch: Vec<_> = batch
                            .into_iter()
                            .map(|(k, len)| {
                                serial += 1;
                                let mut v = serial.to_be_bytes().to_vec();
                                v.resize(4 + len, k);
                                (vec![k], v)
                            })
                            .collect();
                        let stored = wal.store(&batch).is_ok();
                        for (k, v) in batch {
                            newest.insert(k.clone(), serial_of(&v));
                            if stored {
                                expected.insert(k, vec![v]);
                            } else if let Some(values) = expected.get_mut(&k) {
                                // Refused: its command is not sent; its intent may or may not
                                // be found at start (an `interrupted` record errs safe), but
                                // the one stored before must not be lost.
                                values.push(v);
                            }
                        }
                    }
                    Op::Settle(k) => {
                        let revision = newest.get(&vec![k]).copied().unwrap_or(0);
                        wal.settler().settle(&[(vec![k], revision)]).unwrap();
                        expected.remove(&vec![k]);
                    }
                    Op::SettleOlder(k) => {
                        // A record older than every value a restart may find.
                        let oldest = expected
                            .get(&vec![k])
                            .and_then(|values| values.iter().map(|v| serial_of(v)).min());
                        if let Some(revision) = oldest {
                            let older = revision.saturating_sub(1);
                            wal.settler().settle(&[(vec![k], older)]).unwrap();
                        }
                    }
                    Op::Flush => store.flush().unwrap(),
                    Op::Fail => wal.failed = true,
                    Op::ApplyFails(n) => store.0.lock().unwrap().failing_applies = n,
                    Op::Crash(torn) => {
                        wal.tear(torn);
                        // What was flushed by now: applies and covers still queued on the
                        // store's thread may come after the crash, or (odd `torn`) before.
                        if torn % 2 == 1 {
                            let _ = wal.cover(0);
                        }
                        let crashed = store.crashed();
                        drop(wal);
                        store = crashed;
                        recover_wal(dir.path(), &store).unwrap();
                        for (k, values) in &expected {
                            let found = store.get(k);
                            prop_assert!(
                                found.as_ref().is_some_and(|f| values.contains(f)),
                                "key {:?}: found {:?}, expected one of {:?}", k, found, values
                            );
                        }
                        wal = open(&store);
                    }
                }
            }
        }
    }

    /// The real intent store: intents stored through the log, and a store that lost what it
    /// had not flushed (here: a fresh one beside the same log), finds them again at open.
    #[test]
    fn the_intent_store_recovers_what_only_the_log_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let journal = crate::journal::Journal::open(&path).unwrap();
        journal.prepare_intent_log().unwrap();
        let intents: Vec<_> = (0..50u8)
            .map(|i| (vec![b'L', 0, 0, 0, 0, i], vec![0, 0, 0, 1, i]))
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        for chunk in intents.chunks(7) {
            rt.block_on(journal.store_intents(chunk)).unwrap();
        }
        drop(journal);
        // The same log in front of an empty store.
        let other = dir.path().join("other");
        let wal_dir = crate::journal::intents::intents_dir(&other);
        std::fs::create_dir_all(&wal_dir).unwrap();
        for (from, to) in intent_log::segment_paths(&crate::journal::intents::intents_dir(&path))
            .iter()
            .zip(intent_log::segment_paths(&wal_dir))
        {
            std::fs::copy(from, to).unwrap();
        }
        let db = crate::journal::intents::open(&other).unwrap();
        for (k, v) in &intents {
            assert_eq!(db.get(k).unwrap().as_deref(), Some(&v[..]));
        }
        // Replayed and covered: a second open replays nothing.
        drop(db);
        let db = crate::journal::intents::open(&other).unwrap();
        assert_eq!(
            SledIntents(db.clone()).covered().unwrap(),
            intent_log::read_uncovered(&wal_dir, 0).unwrap().1
        );
    }
}
