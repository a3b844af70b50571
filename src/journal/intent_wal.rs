//! The release intents' write-ahead log in front of the intent store: replay at open,
//! appends, and the covers that let a segment be reused (the invariants are in
//! [`intent_log`], the framing's module). Generic over the store ([`WalStore`]) so that a
//! model store can crash at any step in the tests.

use super::intent_log;
use super::intents::apply_intents;
use super::JournalError;

/// The tree of the intent store that keeps the write-ahead log's `covered` mark.
const WAL: &str = "wal";
const COVERED: &[u8] = b"covered";

/// What the write-ahead log needs of the store it stands in front of.
pub(crate) trait WalStore: Clone + Send + 'static {
    /// Applies a batch of intents (in memory; durable with the next flush).
    fn apply(&self, intents: &[(Vec<u8>, Vec<u8>)]) -> Result<(), JournalError>;
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
        tracing::info!(
            intents = replayed,
            "release intents replayed from their write-ahead log"
        );
    }
    Ok(highest)
}

/// A thread writing a segment's cover.
type Cover = std::thread::JoinHandle<Result<(), JournalError>>;

/// The write-ahead log in front of a [`WalStore`]: see [`intent_log`].
pub(crate) struct IntentWal<S: WalStore> {
    segments: intent_log::Segments,
    store: S,
    /// The cover of the segment left at the last switch: its generation and the thread
    /// writing it (`None` once it failed, to be retried before the segment is reused).
    checkpoint: Option<(u64, Option<Cover>)>,
    /// Set after a failed write: the log's state on disk is unknown, so from then on every
    /// batch is made durable by the store's own flush.
    failed: bool,
}

/// A cover still running when the log is dropped is waited for: it holds the intent store
/// open, and a restart in the same process opens it again at once.
impl<S: WalStore> Drop for IntentWal<S> {
    fn drop(&mut self) {
        if let Some((_, Some(done))) = self.checkpoint.take() {
            let _ = done.join();
        }
    }
}

#[cfg(test)]
impl<S: WalStore> IntentWal<S> {
    /// Writes the first `n` bytes of a frame where the next append would go, as a crash in
    /// the middle of a write leaves it.
    fn tear(&mut self, n: usize) {
        self.segments.tear(n);
    }

    /// Waits for the cover in flight, if any.
    fn join_cover(&mut self) {
        if let Some((_, done)) = &mut self.checkpoint {
            if let Some(h) = done.take() {
                let _ = h.join();
            }
        }
    }
}

impl<S: WalStore> IntentWal<S> {
    /// Opens the log in `dir` (segments of `size` bytes, created zeroed when missing) in
    /// front of `store`. The log must have been recovered ([`recover_wal`]).
    pub(crate) fn open(dir: &std::path::Path, size: u64, store: S) -> Result<Self, JournalError> {
        let covered = store.covered()?;
        let (uncovered, highest) =
            intent_log::read_uncovered(dir, covered).map_err(sled::Error::Io)?;
        if !uncovered.is_empty() {
            return Err(JournalError::Corrupt {
                seq: 0,
                reason: "the release intents' log holds frames not yet replayed".into(),
            });
        }
        Ok(IntentWal {
            segments: intent_log::Segments::open(dir, size, highest.max(covered) + 1)
                .map_err(sled::Error::Io)?,
            store,
            checkpoint: None,
            failed: false,
        })
    }

    /// Applies a batch of intents to the store and makes it durable: in the log, or with the
    /// store's own flush when the batch is larger than a segment or the log failed.
    pub(crate) fn store(&mut self, intents: &[(Vec<u8>, Vec<u8>)]) -> Result<(), JournalError> {
        self.store.apply(intents)?;
        let payload = intent_log::encode_batch(intents);
        if self.failed || !self.segments.can_hold(payload.len()) {
            return self.cover_all();
        }
        if !self.segments.fits(payload.len()) {
            self.switch()?;
        }
        if let Err(e) = self.segments.append(&payload) {
            self.failed = true;
            tracing::error!(error = %e, "the release intents' log failed; release intents are now made durable by the intent store's own flush");
            return self.cover_all();
        }
        Ok(())
    }

    /// Makes everything applied so far durable with the store's own flush, covering every
    /// frame written, and goes on in the other segment. A plain flush would not do: a later
    /// start would replay older frames still uncovered over what it made durable.
    fn cover_all(&mut self) -> Result<(), JournalError> {
        if let Some((_, Some(done))) = self.checkpoint.take() {
            let _ = done.join();
        }
        self.store.cover(self.segments.generation())?;
        self.segments.switch();
        Ok(())
    }

    /// Moves to the other segment once its last use is covered, and covers the one left on a
    /// thread of its own.
    fn switch(&mut self) -> Result<(), JournalError> {
        if let Some((generation, done)) = &mut self.checkpoint {
            let covered = done.take().is_some_and(|h| matches!(h.join(), Ok(Ok(()))));
            if !covered {
                self.store.cover(*generation)?;
            }
            self.checkpoint = None;
        }
        let left = self.segments.switch();
        let store = self.store.clone();
        let done = std::thread::Builder::new()
            .name("bondline-intents-cover".into())
            .spawn(move || store.cover(left))
            .ok();
        self.checkpoint = Some((left, done));
        Ok(())
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
        applied: BTreeMap<Vec<u8>, Vec<u8>>,
        durable: BTreeMap<Vec<u8>, Vec<u8>>,
        covered: u64,
        durable_covered: u64,
    }

    impl WalStore for Model {
        fn apply(&self, intents: &[(Vec<u8>, Vec<u8>)]) -> Result<(), JournalError> {
            let mut s = self.0.lock().unwrap();
            for (k, v) in intents {
                s.applied.insert(k.clone(), v.clone());
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
            })))
        }
        fn settle(&self, key: &[u8]) {
            self.0.lock().unwrap().applied.remove(key);
        }
        fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
            self.0.lock().unwrap().applied.get(key).cloned()
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Stores a batch: (key, value length) pairs; values are made unique.
        Store(Vec<(u8, usize)>),
        /// Removes a key from the store (an intent settled by its durable record).
        Settle(u8),
        /// The store's own background flush.
        Flush,
        /// The log's write fails: the log is given up for the store's flush until a restart.
        Fail,
        /// A crash, with a torn frame of `n` bytes in the log (an append that never returned).
        Crash(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => prop::collection::vec((0u8..8, 0usize..90), 1..4).prop_map(Op::Store),
            // Now and then a batch larger than a segment.
            1 => prop::collection::vec((0u8..8, 400usize..600), 2..3).prop_map(Op::Store),
            2 => (0u8..8).prop_map(Op::Settle),
            1 => Just(Op::Flush),
            1 => Just(Op::Fail),
            1 => (0usize..60).prop_map(Op::Crash),
        ]
    }

    const SIZE: u64 = 512;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        /// Whatever the order of appends, settles, the store's flushes, segment switches and
        /// crashes (with a torn frame), a restart finds every intent whose store returned and
        /// that was not settled since, with the value last stored for it.
        #[test]
        fn a_crash_loses_no_stored_intent(ops in prop::collection::vec(op(), 1..80)) {
            let dir = tempfile::tempdir().unwrap();
            let mut store = Model::default();
            recover_wal(dir.path(), &store).unwrap();
            let mut wal = IntentWal::open(dir.path(), SIZE, store.clone()).unwrap();
            // Key -> the value last stored, while not settled since.
            let mut expected: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
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
                        wal.store(&batch).unwrap();
                        for (k, v) in batch {
                            expected.insert(k, v);
                        }
                    }
                    Op::Settle(k) => {
                        store.settle(&[k]);
                        expected.remove(&vec![k]);
                    }
                    Op::Flush => store.flush().unwrap(),
                    Op::Fail => wal.failed = true,
                    Op::Crash(torn) => {
                        wal.tear(torn);
                        // A cover in flight may have ended or not: both must be safe.
                        if torn % 2 == 0 {
                            wal.join_cover();
                        }
                        drop(wal);
                        store = store.crashed();
                        recover_wal(dir.path(), &store).unwrap();
                        for (k, v) in &expected {
                            prop_assert_eq!(store.get(k), Some(v.clone()), "key {:?}", k);
                        }
                        wal = IntentWal::open(dir.path(), SIZE, store.clone()).unwrap();
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
