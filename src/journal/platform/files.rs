//! The platform log's files (`<store>-platform/`): one segment per UTC day of storing,
//! `day-DDDDDD.log`, each a sequence of blocks followed by zeros (a segment grows by
//! [`GROW_BYTES`] of them at a time). A block: [`MAGIC`], the payload's length (`u32`), the
//! CRC-32 of both (`u32`), the payload (a unit of the log, [`super::log`], with its
//! integrity tag); integers big-endian. Frames stored between two flushes are staged in
//! memory and written as one block, with one tag, at the flush.
//!
//! Why files and not a sled tree: a start reads the whole platform state, and sled keeps
//! resident most of what is read of large values (BENCHMARKS.md, "What sled keeps of what a
//! start reads"); files are read through and cost the process nothing once read, and a day's
//! segment is forgotten by deleting it. [`PlatformLog::write`] with `sync` makes them durable
//! (`fdatasync`); the journal's flush does it before sled's.
//!
//! A torn block at the end of a segment (a crash during its write) is cut off before the
//! next block is written there: it was never synced, so nothing acknowledged is lost with it.
//! What tells a torn block from damage is [`SyncedEnds`], where each segment was synced to,
//! which the journal records in its store after every sync of the log (durable with the
//! store's flush, before any message it covers is acknowledged): a block that does not read
//! below its segment's synced end was synced, so it is damage, kept on disk for the load to
//! refuse; a newest segment whose blocks end short of it was cut on disk. Past it, a torn
//! block is cut off in any segment (retention writes into older ones too).

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::log::Frame;
use crate::journal::integrity::IntegrityKey;
use crate::journal::JournalError;

/// The domain of the blocks' integrity tags.
const DOMAIN: &[u8] = b"platform_log";

/// First byte of every block.
const MAGIC: u8 = 0xB1;
pub const BLOCK_HEADER: usize = 9;
/// Largest payload a block may hold: a longer length is damage, not a block.
const MAX_PAYLOAD: usize = 64 << 20;
/// Staged bytes past which the journal writes a block without waiting for a flush.
pub const STAGE_BYTES: usize = 1 << 20;
/// A segment grows by this many bytes of zeros at a time, written and synced before blocks
/// are written into them: a block's write then changes no file metadata, so its `fdatasync`
/// is a data write alone and does not hold up the filesystem's journal, which the release
/// intents' log syncs through too (as that log's files are written full of zeros).
#[cfg(not(test))]
pub const GROW_BYTES: u64 = 16 << 20;
/// Smaller in unit tests, which make many short segments.
#[cfg(test)]
pub const GROW_BYTES: u64 = 64 << 10;

/// Where, inside the platform log's directory, an operator puts a damaged segment taken out
/// of the log (README, "A damaged journal"): its entry is then forgotten, not reported lost.
pub const SET_ASIDE: &str = "set-aside";

/// The directory of the platform log of the store at `store`.
pub fn dir_of(store: &Path) -> PathBuf {
    let mut name = store.as_os_str().to_owned();
    name.push("-platform");
    PathBuf::from(name)
}

/// A segment's file name.
pub fn segment_name(day: u32) -> String {
    format!("day-{day:06}.log")
}

/// The day of a segment's file name.
fn segment_day(name: &str) -> Option<u32> {
    name.strip_prefix("day-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

fn io(e: std::io::Error) -> JournalError {
    JournalError::Store(sled::Error::Io(e))
}

/// Where each segment was synced to: the end of its blocks at its last sync, by day.
/// Everything before it was durable then. Recorded by the journal in its store at each
/// synced write ([`PlatformLog::set_recorder`]) and handed to the next open
/// ([`PlatformLog::vouch`]); a segment with no entry (an older build's, or one written since
/// the last record) is vouched for nowhere.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncedEnds(std::collections::BTreeMap<u32, u64>);

impl SyncedEnds {
    /// Twelve bytes per segment: its day and its synced end, big-endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(self.0.len() * 12);
        for (day, end) in &self.0 {
            b.extend_from_slice(&day.to_be_bytes());
            b.extend_from_slice(&end.to_be_bytes());
        }
        b
    }

    pub fn decode(b: &[u8]) -> SyncedEnds {
        SyncedEnds(
            b.chunks_exact(12)
                .map(|c| {
                    let day = u32::from_be_bytes(c[..4].try_into().expect("4 bytes"));
                    let end = u64::from_be_bytes(c[4..].try_into().expect("8 bytes"));
                    (day, end)
                })
                .collect(),
        )
    }

    /// How far into the segment of `day` a sync vouches for, if any did.
    pub fn of(&self, day: u32) -> Option<u64> {
        self.0.get(&day).copied()
    }
}

/// What records [`SyncedEnds`], encoded, in the journal's store; with `true`, durably
/// before it returns.
/// The first slice is [`SyncedEnds`], the second the segments lost (the same encoding).
type RecordFn = dyn Fn(&[u8], &[u8], bool) -> Result<(), JournalError> + Send + Sync;

/// The journal's [`RecordFn`], once set ([`PlatformLog::set_recorder`]).
#[derive(Default)]
struct Recorder(std::sync::OnceLock<Box<RecordFn>>);

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() {
            "Recorder(set)"
        } else {
            "Recorder(unset)"
        })
    }
}

/// [`SyncedEnds`] as this process keeps it: changed by every sync and removal, recorded in
/// the store when `generation` moved past `recorded`.
#[derive(Debug, Default)]
struct Synced {
    ends: SyncedEnds,
    /// Segments found gone from the disk with synced blocks in them, by day, with where they
    /// were synced to: refused at every start until their day is past the clearance period
    /// ([`PlatformLog::forget_lost_before`]), even once the day is written again.
    lost: SyncedEnds,
    generation: u64,
    /// The generation last handed to the store, and the one last made durable there.
    recorded: u64,
    flushed: u64,
}

impl Synced {
    fn set(&mut self, day: u32, end: Option<u64>) {
        let old = match end {
            Some(end) => self.ends.0.insert(day, end),
            None => self.ends.0.remove(&day),
        };
        if old != end {
            self.generation += 1;
        }
    }

    /// The segment of `day`, synced to `end`, is gone from the disk: its entry becomes a loss.
    fn lose(&mut self, day: u32, end: u64) {
        self.lost.0.insert(day, end);
        self.set(day, None);
        self.generation += 1;
    }
}

/// A segment an earlier run synced that is gone from the disk: what it held is lost, and
/// nothing says whom it was about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lost {
    pub day: u32,
    /// Where its blocks ended when synced.
    pub synced: u64,
}

/// What [`PlatformLog::check_files`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FilesChecked {
    /// Days of segments written back from the open file.
    pub restored: Vec<u32>,
    /// Segments lost, with what they held.
    pub lost: Vec<Lost>,
    /// The open segment could not be written back: the log stopped (see `failed`).
    pub stopped: bool,
    /// Segments found gone by retention's purge, past its cut: what they held for waybills
    /// still kept is lost, and no later start can tell (their days are past the period).
    pub forgotten: Vec<Lost>,
}

impl FilesChecked {
    fn take(&mut self) -> FilesChecked {
        std::mem::take(self)
    }

    fn add(&mut self, other: FilesChecked) {
        self.restored.extend(other.restored);
        self.lost.extend(other.lost);
        self.stopped |= other.stopped;
        self.forgotten.extend(other.forgotten);
    }
}

/// Frames stored since the last block was written.
#[derive(Debug, Default)]
struct Staged {
    frames: Vec<u8>,
}

/// The segment being appended to.
#[derive(Debug)]
struct Current {
    day: u32,
    file: File,
    /// Where its blocks end (zeros follow, up to `allocated`).
    len: u64,
    /// Its length on disk.
    allocated: u64,
    /// Written since the last sync.
    dirty: bool,
}

/// The platform log's files. Writes, syncs and removals take its lock.
#[derive(Debug)]
pub struct PlatformLog {
    dir: PathBuf,
    current: Mutex<Option<Current>>,
    staged: Mutex<Staged>,
    /// Where the blocks of segments written to since the open end (the rest is zeros).
    ends: Mutex<std::collections::HashMap<u32, u64>>,
    /// The journal's integrity key, once set: blocks are sealed with it.
    key: std::sync::Arc<std::sync::OnceLock<IntegrityKey>>,
    /// Set once a sync failed: what the kernel failed to write may be gone from its cache, so
    /// no later sync can vouch for it; every write fails from then on (the ingest stops and
    /// alarms, nothing is acknowledged) until the daemon is restarted.
    failed: std::sync::atomic::AtomicBool,
    /// The newest segment's day: [`PlatformLog::write`] never writes into an older one, so
    /// a clock set back does not put what is stored next before what was stored already.
    newest: std::sync::atomic::AtomicU32,
    /// Where each segment was synced to: as the store recorded it at the open, then kept up
    /// to date by every sync (see [`SyncedEnds`]).
    synced: Mutex<Synced>,
    /// Records `synced` in the journal's store.
    recorder: Recorder,
    /// Set once the start's [`PlatformLog::repair_newest`] has run: before, what is gone
    /// from the disk is its to report.
    repaired: std::sync::atomic::AtomicBool,
    /// Segments found lost while writing (a day written again after its file went): for
    /// [`PlatformLog::check_files`] to report.
    unreported: Mutex<FilesChecked>,
}

impl Drop for PlatformLog {
    /// What is staged is written and synced when the last handle goes (a clean stop, a
    /// tool), as sled does with what it holds.
    fn drop(&mut self) {
        let today =
            crate::rules::history::day_of(crate::metrics::unix_ms(std::time::SystemTime::now()));
        if let Err(e) = self.write(today, true) {
            tracing::warn!(error = %e, "platform messages staged at the stop not written");
        }
    }
}

/// One block as read: where it starts and its payload.
pub struct Block {
    pub offset: u64,
    pub payload: Vec<u8>,
    /// False when its checksum does not match (a damaged block whose length still reads:
    /// the blocks after it are read on). Its payload is not to be trusted.
    pub intact: bool,
}

/// Why a segment could not be read to its end.
#[derive(Debug)]
pub enum ReadError {
    /// The block at this offset does not read (torn or damaged); what came before stands.
    Damaged(u64),
    Journal(JournalError),
}

impl From<JournalError> for ReadError {
    fn from(e: JournalError) -> ReadError {
        ReadError::Journal(e)
    }
}

impl PlatformLog {
    /// Opens (creating) the log of the store at `store`, cutting a torn block off the end
    /// of its newest segment.
    pub fn open(
        store: &Path,
        key: std::sync::Arc<std::sync::OnceLock<IntegrityKey>>,
    ) -> Result<PlatformLog, JournalError> {
        let dir = dir_of(store);
        std::fs::create_dir_all(&dir).map_err(io)?;
        let log = PlatformLog {
            dir,
            current: Mutex::new(None),
            staged: Mutex::new(Staged::default()),
            ends: Mutex::new(std::collections::HashMap::new()),
            key,
            newest: std::sync::atomic::AtomicU32::new(0),
            failed: std::sync::atomic::AtomicBool::new(false),
            synced: Mutex::new(Synced::default()),
            recorder: Recorder::default(),
            repaired: std::sync::atomic::AtomicBool::new(false),
            unreported: Mutex::new(FilesChecked::default()),
        };
        // The newest segment's end is found when it is first read or written to, not here:
        // it can hold gigabytes, and the store's open is on the start's way.
        if let Some(&(day, _)) = log.segments()?.last() {
            log.newest.store(day, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(log)
    }

    /// Sets where an earlier run synced each segment to (read from the journal's store): a
    /// block that does not read before that is damage, not a torn write. Before any read.
    pub fn vouch(&self, ends: SyncedEnds, lost: SyncedEnds) {
        let mut synced = self.synced_lock();
        synced.ends = ends;
        synced.lost = lost;
        synced.recorded = synced.generation;
        synced.flushed = synced.generation;
    }

    /// Sets what records where each segment was synced to in the journal's store (see
    /// [`SyncedEnds`]): called after every synced [`PlatformLog::write`] that changed it
    /// (durable with the store's next flush, which comes before anything it covers is
    /// acknowledged), and at once, durably, when a segment no sync vouched for is first
    /// written to, or rewritten.
    pub fn set_recorder(
        &self,
        record: impl Fn(&[u8], &[u8], bool) -> Result<(), JournalError> + Send + Sync + 'static,
    ) {
        let _ = self.recorder.0.set(Box::new(record));
    }

    /// Records where each segment was synced to if that changed since it was last recorded
    /// (`durable`: in the store's files before it returns).
    fn record(&self, durable: bool) -> Result<(), JournalError> {
        let Some(record) = self.recorder.0.get() else {
            return Ok(());
        };
        let mut synced = self.synced_lock();
        let generation = synced.generation;
        if synced.recorded != generation || (durable && synced.flushed != generation) {
            record(&synced.ends.encode(), &synced.lost.encode(), durable)?;
            synced.recorded = generation;
            if durable {
                synced.flushed = generation;
            }
        }
        Ok(())
    }

    /// Where each segment was synced to, as far as this process knows.
    pub fn synced_ends(&self) -> SyncedEnds {
        self.synced_lock().ends.clone()
    }

    fn synced_lock(&self) -> std::sync::MutexGuard<'_, Synced> {
        self.synced.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ends(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<u32, u64>> {
        self.ends.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes where the blocks of the segment of `day` end, unless a later end is known.
    fn note_end(&self, day: u32, end: u64) {
        let mut ends = self.ends();
        let e = ends.entry(day).or_insert(end);
        *e = (*e).max(end);
    }

    /// Where the blocks of the segment of `day` end: known from a read or a write since
    /// the open, or found by reading it. A torn block there (a stop during its write: never
    /// synced, never acknowledged) is cut off, its bytes zeroed, so the next block starts
    /// whole and a read never stops short of it. Bytes that do not read where an earlier
    /// run synced (see [`SyncedEnd`]) are damage instead: left as they lie, the next block
    /// written after them, for the load to refuse.
    fn end_of(&self, day: u32) -> Result<u64, JournalError> {
        if let Some(&end) = self.ends().get(&day) {
            return Ok(end);
        }
        self.find_end(day, 0)
    }

    /// [`PlatformLog::end_of`], read from `start` (where a block starts): a start reads only
    /// what follows the synced end of a segment that is not among the newest.
    fn find_end(&self, day: u32, start: u64) -> Result<u64, JournalError> {
        if start > 0 && !self.block_at(day, start)? {
            // The synced end recorded is not where a block starts (a layout it no longer
            // describes): read through from the start instead.
            return self.find_end(day, 0);
        }
        let synced_to = self.synced_lock().ends.of(day);
        // Whether a block starts or an intact one ends at the synced end, as read.
        let mut edge_at_synced = synced_to == Some(start);
        // The end of the last intact block, read past damage (see `PlatformLog::resume`).
        let mut whole = start;
        let mut from = start;
        loop {
            let mut stop = from;
            match self.read(day, from, &mut |b| {
                stop = b.offset + (BLOCK_HEADER + b.payload.len()) as u64;
                if b.intact {
                    whole = stop;
                }
                edge_at_synced |=
                    synced_to == Some(b.offset) || (b.intact && synced_to == Some(stop));
                Ok(true)
            }) {
                Ok(()) => {}
                Err(ReadError::Damaged(at)) => stop = at,
                Err(ReadError::Journal(e)) => return Err(e),
            }
            match self.resume(day, stop)? {
                Some(next) => from = next,
                None => break,
            }
        }
        let path = self.dir.join(segment_name(day));
        if let Some(s) = synced_to.filter(|&s| s <= whole && edge_at_synced) {
            // Past the synced end nothing was acknowledged, and blocks written between two
            // syncs may reach the disk out of order: an intact block after one that does not
            // read there is no more durable than it. Kept only while they follow on whole.
            // (Only where the read found a block's edge at the synced end: one recorded for
            // another layout of the file is no guide.)
            if self.block_starts(day, s)? {
                whole = self.whole_from(day, s)?;
            }
        }
        let mut end = whole;
        match first_nonzero(&path, whole).map_err(io)? {
            Some(at) if synced_to.is_some_and(|s| at < s || whole < s) => {
                // Synced by an earlier run: damage (or the log cut and written over), not a
                // torn write. Kept for the investigation; the next block goes after it.
                end = last_nonzero(&path, at).map_err(io)? + 1;
                tracing::error!(
                    segment = %path.display(),
                    from = at,
                    to = end,
                    "the platform log's last block does not read although it was synced: damaged on disk, kept and refused"
                );
            }
            Some(at) => {
                // Read past damage already: no intact block follows, so this is a block torn
                // by a stop during its write.
                tracing::warn!(
                    segment = %path.display(),
                    kept = whole,
                    from = at,
                    "the platform log's last block was torn by a stop during its write (never synced, so never acknowledged): cut off"
                );
                let f = OpenOptions::new().write(true).open(&path).map_err(io)?;
                let len = f.metadata().map_err(io)?.len();
                zero(&f, whole, len).map_err(io)?;
                self.synced(f.sync_all())?;
            }
            // Blocks that end before the synced end, zeros after them: the load reports
            // the segment cut short (it reads every segment to its end).
            None => {}
        }
        // Exactly here (the read noted the end of what it read, torn bytes included).
        self.ends().insert(day, end);
        Ok(end)
    }

    /// Where the intact blocks that follow one another from `from` (a block's start) end: at
    /// the first block that does not read, or zeros.
    fn whole_from(&self, day: u32, from: u64) -> Result<u64, JournalError> {
        let mut end = from;
        // A header that does not read is reported and read past (see `PlatformLog::read`):
        // nothing after the first block that does not read counts.
        let mut broken = false;
        match self.read(day, from, &mut |b| {
            broken |= !b.intact;
            if !broken {
                end = b.offset + (BLOCK_HEADER + b.payload.len()) as u64;
            }
            Ok(!broken)
        }) {
            Ok(()) | Err(ReadError::Damaged(_)) => Ok(end),
            Err(ReadError::Journal(e)) => Err(e),
        }
    }

    /// Whether a block starts at `at` of the segment of `day`, whole or torn (its magic), or
    /// zeros do: a synced end recorded there is where blocks written since begin.
    fn block_starts(&self, day: u32, at: u64) -> Result<bool, JournalError> {
        let file = File::open(self.dir.join(segment_name(day))).map_err(io)?;
        let mut header = [0u8; BLOCK_HEADER];
        match file.read_exact_at(&mut header, at) {
            // A header whose first bytes are zeros is one torn before they reached the disk
            // (the recorded end is a block's start: nothing but a block begins there).
            Ok(()) => Ok(header[0] == MAGIC || header[0] == 0),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(true),
            Err(e) => Err(io(e)),
        }
    }

    /// Whether an intact block starts at `at` of the segment of `day`, or only zeros follow
    /// it: where a recorded synced end can be read on from. Anything else (a torn block
    /// there, or an end recorded for a layout the segment no longer has) is read from the
    /// segment's start, so that no genuine block is taken for a torn one.
    fn block_at(&self, day: u32, at: u64) -> Result<bool, JournalError> {
        let file = File::open(self.dir.join(segment_name(day))).map_err(io)?;
        let mut header = [0u8; BLOCK_HEADER];
        match file.read_exact_at(&mut header, at) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(true),
            Err(e) => return Err(io(e)),
        }
        // Zeros (the end, or a block torn before its header was written: read on from here,
        // and a torn tail past it is cut), or an intact block.
        let size = file.metadata().map_err(io)?.len();
        Ok(header == [0; BLOCK_HEADER]
            || intact_block_at(&file, at, size, MAX_PAYLOAD).map_err(io)?)
    }

    /// Where reading the segment of `day` goes on after it stopped at `stop` (zeros or a
    /// block that does not read): at the next intact block, if bytes other than zeros follow
    /// and one of them starts an intact block (damage, not the end); `None` at the end.
    pub fn resume(&self, day: u32, stop: u64) -> Result<Option<u64>, JournalError> {
        let path = self.dir.join(segment_name(day));
        let Some(at) = first_nonzero(&path, stop).map_err(io)? else {
            return Ok(None);
        };
        let file = File::open(&path).map_err(io)?;
        next_intact_block(&file, at.max(stop + 1)).map_err(io)
    }

    /// Cuts a torn block off the end of the two newest segments (a stop at midnight can
    /// tear the last block of the day before; see [`PlatformLog::end_of`]), and off the end
    /// of older ones past their synced end (retention carries messages into older segments),
    /// for a start's load to read a whole log. Damage before intact blocks is left as it
    /// lies, for the load to refuse, as is a synced block that does not read. Returns the
    /// segments lost from the disk (synced, and gone), for the load to refuse.
    pub fn repair_newest(&self) -> Result<Vec<Lost>, JournalError> {
        // No block is written meanwhile (a spill restored beside the load): one would look
        // like a torn tail.
        let _current = self.lock();
        let segments = self.segments()?;
        let newest: Vec<u32> = segments.iter().rev().take(2).map(|&(d, _)| d).collect();
        let synced = self.synced_ends();
        // A segment removed has its entry taken out durably before its file goes: a file gone
        // with its entry still there was lost on disk, and what it held with it; unless the
        // operator set it aside (README, "A damaged journal"). A loss is reported at every
        // start until its day is past the clearance period ([`PlatformLog::forget_lost_before`]).
        for (&day, &end) in &synced.0 {
            if segments.iter().any(|&(d, _)| d == day) {
                continue;
            }
            if end == 0 || self.dir.join(SET_ASIDE).join(segment_name(day)).exists() {
                self.synced_lock().set(day, None);
            } else {
                tracing::error!(
                    segment = %segment_name(day),
                    synced_to = end,
                    "a platform log file that was synced is gone from the disk"
                );
                self.synced_lock().lose(day, end);
            }
        }
        let lost: Vec<Lost> = self
            .synced_lock()
            .lost
            .0
            .iter()
            .map(|(&day, &synced)| Lost { day, synced })
            .collect();
        // The start reports every loss known so far (one found while the load wrote, too).
        self.unreported_lock().lost.clear();
        for &(day, _) in &segments {
            match synced.of(day) {
                None if newest.contains(&day) => {
                    // No sync vouched for it (an older build's log): read through, a torn
                    // block cut off its end, and durable as it is now.
                    let end = self.end_of(day)?;
                    self.synced(File::open(&self.dir).and_then(|d| d.sync_all()))?;
                    let path = self.dir.join(segment_name(day));
                    self.synced(File::open(&path).and_then(|f| f.sync_data()))?;
                    self.synced_lock().set(day, Some(end));
                }
                // An older one no sync vouched for is left as it lies, for the load (which
                // refuses what does not read); it is vouched for when next written to.
                None => {}
                Some(_) if newest.contains(&day) => {
                    self.end_of(day)?;
                }
                Some(end) if !self.ends().contains_key(&day) => {
                    self.find_end(day, end)?;
                }
                Some(_) => {}
            }
        }
        self.record(true)?;
        self.repaired
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(lost)
    }

    /// Forgets the entries of segments of days before `before_day` (past the clearance
    /// period, as retention counts it) whose files are gone: a lost segment is refused at
    /// every start until then, as a damaged one is kept until its day is forgotten. One gone
    /// with synced blocks in it and not known lost yet (removed since the last check of the
    /// files) held what the purge would have carried on for waybills still kept: it is left
    /// for the next [`PlatformLog::check_files`] to report, once.
    pub fn forget_lost_before(&self, before_day: u32) -> Result<(), JournalError> {
        let mut changed = false;
        let mut found = Vec::new();
        {
            let current = self.lock();
            // The segment being written to is still open: the check writes it back.
            let open = current.as_ref().map(|c| c.day);
            let ends = self.synced_ends();
            let present: Vec<u32> = self.segments()?.into_iter().map(|(d, _)| d).collect();
            let mut synced = self.synced_lock();
            for (&day, &end) in &ends.0 {
                if day < before_day && !present.contains(&day) && open != Some(day) {
                    let set_aside = self.dir.join(SET_ASIDE).join(segment_name(day)).exists();
                    if end > 0 && !set_aside {
                        tracing::error!(segment = %segment_name(day), synced_to = end, "a platform log file that was synced is gone from the disk");
                        found.push(Lost { day, synced: end });
                    }
                    synced.set(day, None);
                    changed = true;
                }
            }
            let before = synced.lost.0.len();
            synced.lost.0.retain(|&day, _| day >= before_day);
            if synced.lost.0.len() != before {
                synced.generation += 1;
                changed = true;
            }
        }
        // Handed on before the record: a record that fails must not lose the report.
        self.unreported_lock().forgotten.extend(found);
        if changed {
            self.record(true)?;
        }
        Ok(())
    }

    fn unreported_lock(&self) -> std::sync::MutexGuard<'_, FilesChecked> {
        self.unreported.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Before the open segment `c` is closed (a switch to another day, a rewrite): if its
    /// file was removed since the last check, it is written back from the open file now
    /// (reported by the next check), or the log stops, as the check does.
    fn keep_if_removed(&self, c: &mut Current) -> Result<(), JournalError> {
        let path = self.dir.join(segment_name(c.day));
        match std::fs::symlink_metadata(&path) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let mut found = FilesChecked::default();
        let written = self.write_back(c, &path, &mut found);
        self.unreported_lock().add(found);
        written
    }

    /// Writes the open segment `c`, whose file at `path` is gone, back from the open file,
    /// noting it in `out`. If that fails, its blocks not yet synced are gone with the file:
    /// the log stops, so that no sync after this vouches for them and nothing more is
    /// acknowledged, until a restart.
    fn write_back(
        &self,
        c: &mut Current,
        path: &Path,
        out: &mut FilesChecked,
    ) -> Result<(), JournalError> {
        match self.restore(c, path) {
            Ok(()) => {
                tracing::error!(segment = %segment_name(c.day), bytes = c.len, "a platform log file was removed while it was written to: written back from the open file");
                out.restored.push(c.day);
                Ok(())
            }
            Err(e) => {
                self.failed
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                let _ = std::fs::remove_file(self.dir.join(format!("{}.tmp", segment_name(c.day))));
                tracing::error!(segment = %segment_name(c.day), error = %e, "a platform log file removed while it was written to cannot be written back: the platform log stops until a restart");
                out.stopped = true;
                Err(e)
            }
        }
    }

    /// Looks for segments gone from the disk while the daemon runs (an operator's clean-up,
    /// a script): called every few seconds beside the writer. The segment being appended to
    /// is still open: its bytes are written back from the open file, synced, so nothing is
    /// lost. Any other segment an earlier sync vouched for is lost with what it held, and
    /// kept as a loss, as a start finds it (refused at every start until its day is past the
    /// clearance period). One set aside by the operator (`set-aside/`) is not a loss.
    ///
    /// Never waits: while a write holds the log, it finds nothing until the next call.
    pub fn check_files(&self) -> Result<FilesChecked, JournalError> {
        // Before the start's repair, a file lost while the daemon was stopped is the
        // repair's to report (once).
        if !self.repaired.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(FilesChecked::default());
        }
        let mut out = self.unreported_lock().take();
        match self.look_for_removed(&mut out) {
            Ok(()) => Ok(out),
            Err(e) => {
                // What was found is reported by the next check all the same.
                self.unreported_lock().add(out);
                Err(e)
            }
        }
    }

    /// The look of [`PlatformLog::check_files`], adding what it finds to `out`.
    fn look_for_removed(&self, out: &mut FilesChecked) -> Result<(), JournalError> {
        let mut current = match self.current.try_lock() {
            Ok(c) => c,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Ok(()),
        };
        let mut changed = false;
        let days: Vec<u32> = self.synced_lock().ends.0.keys().copied().collect();
        for day in days {
            let path = self.dir.join(segment_name(day));
            match std::fs::symlink_metadata(&path) {
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(e)),
            }
            if let Some(c) = current.as_mut().filter(|c| c.day == day) {
                // Written back wherever it went (moved into `set-aside/` too: blocks
                // appended since, acknowledged at the next sync, would be set aside with it).
                if self.write_back(c, &path, out).is_ok() {
                    changed = true;
                    continue;
                }
                *current = None;
                if path.exists() {
                    // Renamed into place before the step that failed: whole, kept.
                    continue;
                }
            }
            let set_aside = self.dir.join(SET_ASIDE).join(segment_name(day)).exists();
            self.ends().remove(&day);
            changed = true;
            // Read after the file was found gone: a removal takes the entry out before the
            // file goes, so an entry still here was not removed by the log.
            let mut synced = self.synced_lock();
            match synced.ends.of(day) {
                Some(end) if end > 0 && !set_aside => {
                    tracing::error!(segment = %segment_name(day), synced_to = end, "a platform log file that was synced is gone from the disk");
                    synced.lose(day, end);
                    out.lost.push(Lost { day, synced: end });
                }
                Some(_) => synced.set(day, None),
                None => {}
            }
        }
        drop(current);
        if changed {
            self.record(true)?;
        }
        Ok(())
    }

    /// Writes the open segment `c`, whose file is gone, back to `path` from the open file:
    /// through a file renamed into place once synced, then appended to as before.
    fn restore(&self, c: &mut Current, path: &Path) -> Result<(), JournalError> {
        self.usable()?;
        // The whole directory may be gone.
        std::fs::create_dir_all(&self.dir).map_err(io)?;
        let tmp = self.dir.join(format!("{}.tmp", segment_name(c.day)));
        let mut out = File::create(&tmp).map_err(io)?;
        let mut buf = vec![0u8; 1 << 20];
        let mut at = 0u64;
        while at < c.len {
            let want = buf.len().min((c.len - at) as usize);
            let n = c.file.read_at(&mut buf[..want], at).map_err(io)?;
            if n == 0 {
                return Err(io(std::io::Error::other("the open file ends early")));
            }
            out.write_all(&buf[..n]).map_err(io)?;
            at += n as u64;
        }
        out.sync_all().map_err(io)?;
        drop(out);
        std::fs::rename(&tmp, path).map_err(io)?;
        self.synced(File::open(&self.dir).and_then(|d| d.sync_all()))?;
        c.file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io)?;
        c.allocated = c.len;
        c.dirty = false;
        self.synced_lock().set(c.day, Some(c.len));
        Ok(())
    }

    /// An error once a sync failed (see the field `failed`).
    fn usable(&self) -> Result<(), JournalError> {
        if self.failed.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(io(std::io::Error::other(
                "a sync of the platform log failed earlier: nothing more is written until the daemon restarts",
            )));
        }
        Ok(())
    }

    /// Makes what was written to segment `c` since its last sync durable, and vouches for it
    /// (see [`SyncedEnds`]). Checks first for a sync another thread saw fail: a second one
    /// on the same file would return Ok without the lost pages.
    fn sync_segment(&self, c: &mut Current) -> Result<(), JournalError> {
        if c.dirty {
            self.usable()?;
            self.synced(c.file.sync_data())?;
            c.dirty = false;
            self.synced_lock().set(c.day, Some(c.len));
        }
        Ok(())
    }

    /// The result of a sync; a failure marks the log failed for good.
    fn synced(&self, r: std::io::Result<()>) -> Result<(), JournalError> {
        r.map_err(|e| {
            self.failed
                .store(true, std::sync::atomic::Ordering::Relaxed);
            io(e)
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Current>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The newest segment's day (0 if none).
    pub fn newest(&self) -> u32 {
        self.newest.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The segments' days, oldest first, with their sizes.
    pub fn segments(&self) -> Result<Vec<(u32, u64)>, JournalError> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name();
            if let Some(day) = name.to_str().and_then(segment_day) {
                out.push((day, entry.metadata().map_err(io)?.len()));
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Stages frames to be written in the next block; returns the bytes staged.
    pub fn stage(&self, frames: &[Frame<'_>]) -> usize {
        let mut s = self.staged.lock().unwrap_or_else(|e| e.into_inner());
        for f in frames {
            f.write(&mut s.frames);
        }
        s.frames.len()
    }

    /// `unit` as stored under `key`: with its integrity tag once the key is set.
    fn seal(&self, key: &[u8], unit: &[u8]) -> Vec<u8> {
        match self.key.get() {
            Some(k) => k.seal(DOMAIN, key, unit),
            None => unit.to_vec(),
        }
    }

    /// Writes what is staged as one block of the segment of `day` (or of the newest segment,
    /// if newer), and with `sync` makes every block written so far durable. Returns the bytes
    /// the segments grew by on disk. Staged frames leave the stage only once their block is
    /// written: after a failed write they go with the next.
    pub fn write(&self, day: u32, sync: bool) -> Result<u64, JournalError> {
        self.usable()?;
        let mut s = self.staged.lock().unwrap_or_else(|e| e.into_inner());
        let day = day.max(self.newest.load(std::sync::atomic::Ordering::Relaxed));
        let mut written = 0;
        if !s.frames.is_empty() {
            let unit = super::log::encode_raw(&s.frames);
            written = self.append_sealed(day, &unit)?;
            s.frames.clear();
        }
        if sync {
            {
                let mut current = self.lock();
                // Again under the lock: a check that found the open file gone and could not
                // write it back dropped it with the blocks just appended.
                self.usable()?;
                if let Some(c) = current.as_mut() {
                    self.sync_segment(c)?;
                }
            }
            // Recorded under the stage's lock, as the sync was: records are made in the order
            // of the syncs they describe, and a later one never records less.
            self.record(false)?;
        }
        drop(s);
        Ok(written)
    }

    /// Appends `unit` as one block of the segment of `day`, sealed for its key. Durable
    /// after the next synced [`PlatformLog::write`]. Returns the bytes the segment grew by
    /// on disk (it grows by [`GROW_BYTES`] at a time).
    pub fn append_sealed(&self, day: u32, unit: &[u8]) -> Result<u64, JournalError> {
        self.append(day, &|key| self.seal(key, unit))
    }

    /// Appends one block to the segment of `day`, its payload made by `payload` from the
    /// block's key; returns the bytes the segment grew by on disk.
    pub fn append(
        &self,
        day: u32,
        payload: &dyn Fn(&[u8]) -> Vec<u8>,
    ) -> Result<u64, JournalError> {
        self.usable()?;
        let mut current = self.lock();
        if current.as_ref().is_none_or(|c| c.day != day) {
            if let Some(old) = current.as_mut() {
                self.keep_if_removed(old)?;
                self.sync_segment(old)?;
            }
            if let Some(old) = current.take() {
                self.note_end(old.day, old.len);
            }
            let path = self.dir.join(segment_name(day));
            let created = !path.exists();
            let file = OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&path)
                .map_err(io)?;
            if created {
                // A day written again after its file was removed starts from nothing; vouched
                // for from its birth (durably, before a block goes in), so that a block torn
                // in it is always told from damage, whichever segment it is. A file gone with
                // synced blocks in it was lost, not removed: kept as a loss, reported at
                // every start until its day is past the clearance period.
                let was = self.synced_lock().ends.of(day).filter(|&e| e > 0);
                if let Some(end) = was {
                    tracing::error!(segment = %segment_name(day), synced_to = end, "a platform log file that was synced is gone from the disk");
                    self.synced_lock().lose(day, end);
                    self.unreported_lock().lost.push(Lost { day, synced: end });
                }
                self.ends().remove(&day);
                self.synced(File::open(&self.dir).and_then(|d| d.sync_all()))?;
                self.synced_lock().set(day, Some(0));
                self.record(true)?;
            }
            let allocated = file.metadata().map_err(io)?.len();
            let len = self.end_of(day)?;
            if !created && self.synced_lock().ends.of(day).is_none() {
                // An older segment no sync vouched for yet (an older build's, or one not
                // written since the map was last recorded): durable as it is now, so that a
                // block torn after it is told from damage before it.
                self.synced(File::open(&self.dir).and_then(|d| d.sync_all()))?;
                self.synced(file.sync_data())?;
                self.synced_lock().set(day, Some(len));
                // Durable before a block goes in: torn by a stop, that block is told from
                // what is vouched for at the next start.
                self.record(true)?;
            }
            *current = Some(Current {
                day,
                file,
                len,
                allocated,
                dirty: false,
            });
        }
        let c = current.as_mut().expect("opened above");
        self.newest
            .fetch_max(day, std::sync::atomic::Ordering::Relaxed);
        let payload = payload(&block_key(day, c.len));
        let mut block = Vec::with_capacity(BLOCK_HEADER + payload.len());
        block.push(MAGIC);
        block.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        block.extend_from_slice(&block_crc(&payload).to_be_bytes());
        block.extend_from_slice(&payload);
        let need = c.len + block.len() as u64;
        let mut grown = 0;
        if need > c.allocated {
            // Room made first, of zeros, durable with the file's new length.
            let to = need.div_ceil(GROW_BYTES) * GROW_BYTES;
            zero(&c.file, c.allocated, to).map_err(io)?;
            self.usable()?;
            self.synced(c.file.sync_all())?;
            grown = to - c.allocated;
            c.allocated = to;
        }
        if let Err(e) = c.file.write_all_at(&block, c.len) {
            // Whatever part was written is zeroed, so the next block starts whole.
            let _ = zero(&c.file, c.len, c.len + block.len() as u64);
            return Err(io(e));
        }
        c.len += block.len() as u64;
        c.dirty = true;
        Ok(grown)
    }

    /// Reads the blocks of the segment of `day` from `offset`, in order, until `f` returns
    /// false. A block that does not read ends the segment with [`ReadError::Damaged`].
    pub fn read(
        &self,
        day: u32,
        offset: u64,
        f: &mut dyn FnMut(Block) -> Result<bool, JournalError>,
    ) -> Result<(), ReadError> {
        let path = self.dir.join(segment_name(day));
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(ReadError::Journal(io(e))),
        };
        let mut r = BufReader::with_capacity(256 << 10, file);
        std::io::Seek::seek(&mut r, std::io::SeekFrom::Start(offset)).map_err(io)?;
        let mut at = offset;
        loop {
            let mut header = [0u8; BLOCK_HEADER];
            let n = read_full(&mut r, &mut header).map_err(io)?;
            if n == 0 || header == [0; BLOCK_HEADER] {
                // The end, or the zeros a segment grows by. (Blocks after zeros would be
                // damage: the load and the writer look for them, see `PlatformLog::resume`.)
                if offset == 0 {
                    self.note_end(day, at);
                }
                return Ok(());
            }
            let len = u32::from_be_bytes(header[1..5].try_into().expect("4 bytes")) as usize;
            let crc = u32::from_be_bytes(header[5..9].try_into().expect("4 bytes"));
            let mut payload = Vec::new();
            let whole = n == BLOCK_HEADER && header[0] == MAGIC && len <= MAX_PAYLOAD && {
                payload.resize(len, 0);
                read_full(&mut r, &mut payload).map_err(io)? == len
            };
            if !whole {
                // A header that does not read: damage, or a torn last block. Read on from
                // the next intact block if there is one.
                match next_intact_block(r.get_ref(), at + 1).map_err(io)? {
                    None => return Err(ReadError::Damaged(at)),
                    Some(next) => {
                        at = self.skip_damage(&mut r, at, next, f)?;
                        continue;
                    }
                }
            }
            let intact = block_crc(&payload) == crc;
            let next = at + (BLOCK_HEADER + len) as u64;
            if !f(Block {
                offset: at,
                payload,
                intact,
            })? {
                return Ok(());
            }
            at = next;
        }
    }

    /// Reports the damaged bytes from `at` to `next` as a block that is not intact (with
    /// nothing in it), and goes on reading at `next`.
    fn skip_damage(
        &self,
        r: &mut BufReader<File>,
        at: u64,
        next: u64,
        f: &mut dyn FnMut(Block) -> Result<bool, JournalError>,
    ) -> Result<u64, ReadError> {
        std::io::Seek::seek(r, std::io::SeekFrom::Start(next)).map_err(io)?;
        f(Block {
            offset: at,
            payload: Vec::new(),
            intact: false,
        })?;
        Ok(next)
    }

    /// Removes the segment of `day` (once what it kept was carried forward and synced).
    pub fn remove(&self, day: u32) -> Result<(), JournalError> {
        let mut current = self.lock();
        if current.as_ref().is_some_and(|c| c.day == day) {
            *current = None;
        }
        self.ends().remove(&day);
        drop(current);
        // Its entry goes durably before the file does (and what was carried out of it, synced
        // by the caller, is recorded with it): a start that finds a file gone with its entry
        // still there knows it was lost, not removed.
        self.synced_lock().set(day, None);
        self.record(true)?;
        match std::fs::remove_file(self.dir.join(segment_name(day))) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        self.synced(File::open(&self.dir).and_then(|d| d.sync_all()))
    }

    /// Replaces the segment of `day`, read up to `read_to` into `units`, by blocks of
    /// `units` each sealed for its new key (adopting an untagged segment with the key created
    /// at this start), through a file renamed over it. Blocks written after `read_to`
    /// meanwhile (sealed already) are kept, after them; nothing is written while it runs.
    pub fn rewrite(&self, day: u32, units: &[Vec<u8>], read_to: u64) -> Result<(), JournalError> {
        let mut current = self.lock();
        if let Some(c) = current.as_mut() {
            // Written and not yet synced (the writer's sync would find no segment open).
            self.keep_if_removed(c)?;
            self.sync_segment(c)?;
            self.note_end(c.day, c.len);
        }
        *current = None;
        // Every block moves: the entry of the layout before goes durably first, so that it
        // is never read against the new one.
        self.synced_lock().set(day, None);
        self.record(true)?;
        let mut units = units.to_vec();
        let end = self.end_of(day)?;
        if end > read_to {
            let mut later = Vec::new();
            let read = self.read(day, read_to, &mut |b| {
                if b.intact {
                    let genuine = match self.key.get() {
                        None => Some(b.payload.clone()),
                        Some(k) => match k.check(DOMAIN, &block_key(day, b.offset), &b.payload) {
                            super::super::integrity::Checked::Genuine(p) => Some(p.to_vec()),
                            _ => None,
                        },
                    };
                    later.extend(genuine);
                }
                Ok(b.offset < end)
            });
            if let Err(ReadError::Journal(e)) = read {
                return Err(e);
            }
            units.extend(later);
        }
        let path = self.dir.join(segment_name(day));
        let tmp = self.dir.join(format!("{}.tmp", segment_name(day)));
        let mut out = Vec::new();
        for u in &units {
            let sealed = self.seal(&block_key(day, out.len() as u64), u);
            out.push(MAGIC);
            out.extend_from_slice(&(sealed.len() as u32).to_be_bytes());
            out.extend_from_slice(&block_crc(&sealed).to_be_bytes());
            out.extend_from_slice(&sealed);
        }
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(&out).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        self.ends().insert(day, out.len() as u64);
        self.synced(File::open(&self.dir).and_then(|d| d.sync_all()))?;
        self.synced_lock().set(day, Some(out.len() as u64));
        self.record(true)
    }
}

/// The key a block's integrity tag is made over: its segment's day and its offset, so a
/// block moved elsewhere fails.
pub fn block_key(day: u32, offset: u64) -> Vec<u8> {
    let mut k = day.to_be_bytes().to_vec();
    k.extend_from_slice(&offset.to_be_bytes());
    k
}

/// A block's checksum: over its length and its payload, so that a block cut down to its
/// first bytes (zeros after them) does not pass for an empty one.
pub(in crate::journal) fn block_crc(payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&(payload.len() as u32).to_be_bytes());
    h.update(payload);
    h.finalize()
}

/// Writes zeros over `from..to` of `file`.
fn zero(file: &File, from: u64, to: u64) -> std::io::Result<()> {
    let chunk = vec![0u8; 1 << 20];
    let mut at = from;
    while at < to {
        let n = (to - at).min(chunk.len() as u64) as usize;
        file.write_all_at(&chunk[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Whether an intact block (its magic, a length up to `max_len` that fits in the file, and a
/// matching checksum) starts at `at` of `file`, `size` bytes long.
fn intact_block_at(file: &File, at: u64, size: u64, max_len: usize) -> std::io::Result<bool> {
    let mut header = [0u8; BLOCK_HEADER];
    if at + BLOCK_HEADER as u64 > size {
        return Ok(false);
    }
    file.read_exact_at(&mut header, at)?;
    let len = u32::from_be_bytes(header[1..5].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_be_bytes(header[5..9].try_into().expect("4 bytes"));
    if header[0] != MAGIC || len == 0 || len > max_len || at + (BLOCK_HEADER + len) as u64 > size {
        return Ok(false);
    }
    let mut payload = vec![0u8; len];
    file.read_exact_at(&mut payload, at + BLOCK_HEADER as u64)?;
    Ok(block_crc(&payload) == crc)
}

/// Where the next intact block starts at or after `from` in `file`, if one does. Read a
/// window at a time; a candidate's length is taken up to 8 MiB (a block the log writes
/// holds one flush, about 1 MiB at most).
fn next_intact_block(file: &File, from: u64) -> std::io::Result<Option<u64>> {
    const WINDOW: usize = 1 << 20;
    const MAX_CANDIDATE: usize = 8 << 20;
    let size = file.metadata()?.len();
    let mut window = vec![0u8; WINDOW];
    let mut base = from;
    while base < size {
        let n = (size - base).min(WINDOW as u64) as usize;
        file.read_exact_at(&mut window[..n], base)?;
        for i in (0..n).filter(|&i| window[i] == MAGIC) {
            let at = base + i as u64;
            if intact_block_at(file, at, size, MAX_CANDIDATE)? {
                return Ok(Some(at));
            }
        }
        base += n as u64;
    }
    Ok(None)
}

/// A chunk of zeros to compare read chunks with.
static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

/// The last byte at or after `from` of the file at `path` that is not zero (`from` if none).
fn last_nonzero(path: &Path, from: u64) -> std::io::Result<u64> {
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    let mut buf = vec![0u8; 1 << 20];
    let mut last = from;
    let mut at = from;
    while at < size {
        let n = (size - at).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], at)?;
        if let Some(i) = buf[..n].iter().rposition(|&b| b != 0) {
            last = at + i as u64;
        }
        at += n as u64;
    }
    Ok(last)
}

/// The first byte at or after `from` of the file at `path` that is not zero.
pub(super) fn first_nonzero(path: &Path, from: u64) -> std::io::Result<Option<u64>> {
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = from;
    while at < size {
        let n = (size - at).min(buf.len() as u64) as usize;
        file.read_exact_at(&mut buf[..n], at)?;
        // A segment ends in up to 16 MiB of zeros: a whole chunk compared at once (memcmp).
        if buf[..n] == ZEROS[..n] {
            at += n as u64;
            continue;
        }
        let (words, rest) = buf[..n].split_at(n - n % 8);
        let word = words
            .chunks_exact(8)
            .position(|w| u64::from_ne_bytes(w.try_into().expect("8 bytes")) != 0);
        let hit = match word {
            Some(w) => words[w * 8..w * 8 + 8]
                .iter()
                .position(|&b| b != 0)
                .map(|i| w * 8 + i),
            None => rest.iter().position(|&b| b != 0).map(|i| words.len() + i),
        };
        if let Some(i) = hit {
            return Ok(Some(at + i as u64));
        }
        at += n as u64;
    }
    Ok(None)
}

/// Reads until `buf` is full or the end; returns how much was read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payloads(log: &PlatformLog, day: u32) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        log.read(day, 0, &mut |b| {
            out.push(b.payload);
            Ok(true)
        })
        .unwrap();
        out
    }

    /// A block torn anywhere (its tail never written) at the end of the newest segment is
    /// cut off at the next open; every whole block before it reads back, and the next block
    /// follows them.
    #[test]
    fn a_torn_last_block_is_cut_off_and_the_rest_kept() {
        for cut in [1, 4, 5, 9, 13, 20, 24, 25, 28, 29] {
            let dir = tempfile::tempdir().unwrap();
            let store = dir.path().join("journal");
            let log = PlatformLog::open(&store, Default::default()).unwrap();
            let mut end = 0;
            for i in 0..3u8 {
                log.append(7, &|_| vec![i; 20]).unwrap();
                if i == 1 {
                    end = 2 * 29;
                }
            }
            log.write(7, true).unwrap();
            drop(log);
            // The third block's last `cut` bytes never reached the disk.
            let path = dir_of(&store).join(segment_name(7));
            let f = OpenOptions::new().write(true).open(&path).unwrap();
            zero(&f, end + 29 - cut, end + 29).unwrap();
            let log = PlatformLog::open(&store, Default::default()).unwrap();
            log.repair_newest().unwrap();
            assert_eq!(
                payloads(&log, 7),
                vec![vec![0; 20], vec![1; 20]],
                "cut {cut}"
            );
            drop(log);
            // Written after it without a repair first: the block follows the whole ones.
            zero(&f, end + 29 - cut, end + 29).unwrap();
            let (a, b) = (end as usize + 5, end as usize + 9);
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[a..b].copy_from_slice(&[1, 2, 3, 4]);
            std::fs::write(&path, bytes).unwrap();
            let log = PlatformLog::open(&store, Default::default()).unwrap();
            log.append(7, &|_| vec![9; 5]).unwrap();
            assert_eq!(
                payloads(&log, 7),
                vec![vec![0; 20], vec![1; 20], vec![9; 5]],
                "cut {cut}"
            );
        }
    }

    /// Damage in the middle of a segment (a flipped byte, a header overwritten with garbage
    /// or zeros) is reported as a block that is not intact, and the blocks after it are read
    /// on; the next block is written after the last one, the damage left as it lies.
    #[test]
    fn damage_in_the_middle_is_reported_and_read_past() {
        for damage in [b"flip".as_slice(), b"garbage", b"zeros"] {
            let dir = tempfile::tempdir().unwrap();
            let store = dir.path().join("journal");
            let log = PlatformLog::open(&store, Default::default()).unwrap();
            for i in 0..4u8 {
                log.append(7, &|_| vec![i + 1; 20]).unwrap();
            }
            log.write(7, true).unwrap();
            drop(log);
            let path = dir_of(&store).join(segment_name(7));
            let mut bytes = std::fs::read(&path).unwrap();
            match damage {
                b"flip" => bytes[29 + 15] ^= 0x40,
                b"garbage" => bytes[29..29 + 9].copy_from_slice(&[7; 9]),
                _ => bytes[29..29 + 29].fill(0),
            }
            std::fs::write(&path, bytes).unwrap();
            let log = PlatformLog::open(&store, Default::default()).unwrap();
            log.repair_newest().unwrap();
            // Read as the load reads: on past what stops a read.
            let all = |log: &PlatformLog| {
                let mut seen = Vec::new();
                let mut from = 0;
                loop {
                    let mut stop = from;
                    match log.read(7, from, &mut |b| {
                        stop = b.offset + (BLOCK_HEADER + b.payload.len()) as u64;
                        seen.push((b.offset, b.intact, b.payload.first().copied()));
                        Ok(true)
                    }) {
                        Ok(()) => {}
                        Err(ReadError::Damaged(at)) => stop = at,
                        Err(ReadError::Journal(e)) => panic!("{e}"),
                    }
                    match log.resume(7, stop).unwrap() {
                        Some(next) => from = next,
                        None => return seen,
                    }
                }
            };
            let name = String::from_utf8_lossy(damage);
            let seen = all(&log);
            assert_eq!(seen[0], (0, true, Some(1)), "{name}");
            let after: Vec<_> = seen[1..].iter().filter(|b| b.1).copied().collect();
            assert_eq!(after, [(58, true, Some(3)), (87, true, Some(4))], "{name}");
            if damage != b"zeros" {
                assert_eq!((seen[1].0, seen[1].1), (29, false), "{name}");
            }
            log.append(7, &|_| vec![9; 5]).unwrap();
            assert_eq!(all(&log).last(), Some(&(116, true, Some(9))), "{name}");
        }
    }

    /// Segments grow by zeros written ahead; blocks go into them, and reading stops at them.
    #[test]
    fn a_segment_grows_by_zeros_written_ahead() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("journal");
        let log = PlatformLog::open(&store, Default::default()).unwrap();
        assert_eq!(log.append(1, &|_| vec![1; 100]).unwrap(), GROW_BYTES);
        assert_eq!(log.append(1, &|_| vec![2; 100]).unwrap(), 0);
        let big = GROW_BYTES as usize;
        assert_eq!(log.append(1, &|_| vec![3; big]).unwrap(), GROW_BYTES);
        assert_eq!(log.segments().unwrap(), vec![(1, 2 * GROW_BYTES)]);
        drop(log);
        let log = PlatformLog::open(&store, Default::default()).unwrap();
        assert_eq!(payloads(&log, 1).len(), 3);
        log.append(1, &|_| vec![4; 10]).unwrap();
        assert_eq!(payloads(&log, 1).last().unwrap(), &vec![4; 10]);
    }

    #[test]
    fn segments_are_per_day_and_removed_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("journal");
        let log = PlatformLog::open(&store, Default::default()).unwrap();
        let keys = Mutex::new(Vec::new());
        for day in [3, 3, 5] {
            log.append(day, &|k| {
                keys.lock().unwrap().push(k.to_vec());
                b"x".to_vec()
            })
            .unwrap();
        }
        assert_eq!(
            keys.into_inner().unwrap(),
            vec![block_key(3, 0), block_key(3, 10), block_key(5, 0)]
        );
        assert_eq!(
            log.segments().unwrap(),
            vec![(3, GROW_BYTES), (5, GROW_BYTES)]
        );
        log.remove(3).unwrap();
        assert_eq!(log.segments().unwrap(), vec![(5, GROW_BYTES)]);
    }
}
