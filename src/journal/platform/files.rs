//! The platform log's files (`<store>-platform/`): one segment per UTC day of storing,
//! `day-DDDDDD.log`, each a sequence of blocks. A block: [`MAGIC`], the payload's length
//! (`u32`), its CRC-32 (`u32`), the payload (a unit of the log, [`super::log`], with its
//! integrity tag); integers big-endian. Frames stored between two flushes are staged in
//! memory and written as one block, with one tag, at the flush.
//!
//! Why files and not a sled tree: a start reads the whole platform state, and sled keeps
//! resident most of what is read of large values (BENCHMARKS.md, "What sled keeps of what a
//! start reads"); files are read through and cost the process nothing once read, and a day's
//! segment is forgotten by deleting it. [`PlatformLog::write`] with `sync` makes them durable
//! (`fdatasync`); the journal's flush does it before sled's.
//!
//! A torn block at the end of the newest segment (a crash during its write) is cut off when
//! the log is opened: it was never synced, so nothing acknowledged is lost with it.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
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

/// Frames stored since the last block was written.
#[derive(Debug, Default)]
struct Staged {
    frames: Vec<u8>,
    oldest: u32,
}

/// The segment being appended to.
#[derive(Debug)]
struct Current {
    day: u32,
    file: File,
    len: u64,
    /// Written since the last sync.
    dirty: bool,
}

/// The platform log's files. Writes, syncs and removals take its lock.
#[derive(Debug)]
pub struct PlatformLog {
    dir: PathBuf,
    current: Mutex<Option<Current>>,
    staged: Mutex<Staged>,
    /// The journal's integrity key, once set: blocks are sealed with it.
    key: std::sync::Arc<std::sync::OnceLock<IntegrityKey>>,
    /// The newest segment's day: [`PlatformLog::write`] never writes into an older one, so
    /// a clock set back does not put what is stored next before what was stored already.
    newest: std::sync::atomic::AtomicU32,
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
            key,
            newest: std::sync::atomic::AtomicU32::new(0),
        };
        if let Some(&(day, len)) = log.segments()?.last() {
            log.newest.store(day, std::sync::atomic::Ordering::Relaxed);
            let mut whole = 0u64;
            match log.read(day, 0, &mut |b| {
                whole = b.offset + (BLOCK_HEADER + b.payload.len()) as u64;
                Ok(true)
            }) {
                Ok(()) | Err(ReadError::Damaged(_)) => {}
                Err(ReadError::Journal(e)) => return Err(e),
            }
            if whole < len {
                let path = log.dir.join(segment_name(day));
                tracing::warn!(
                    segment = %path.display(),
                    kept = whole,
                    cut = len - whole,
                    "the platform log's last block was torn by a stop during its write (never synced, so never acknowledged): cut off"
                );
                let f = OpenOptions::new().write(true).open(&path).map_err(io)?;
                f.set_len(whole).map_err(io)?;
                f.sync_all().map_err(io)?;
            }
        }
        Ok(log)
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
        if s.frames.is_empty() {
            s.oldest = u32::MAX;
        }
        for f in frames {
            s.oldest = s.oldest.min(f.day);
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
    /// written. Staged frames leave the stage only once their block is written: after a
    /// failed write they go with the next.
    pub fn write(&self, day: u32, sync: bool) -> Result<u64, JournalError> {
        let mut s = self.staged.lock().unwrap_or_else(|e| e.into_inner());
        let day = day.max(self.newest.load(std::sync::atomic::Ordering::Relaxed));
        let mut written = 0;
        if !s.frames.is_empty() {
            let unit = super::log::encode_raw(0, 0, s.oldest, &s.frames);
            written = self.append_sealed(day, &unit)?;
            s.frames.clear();
        }
        if sync {
            let mut current = self.lock();
            if let Some(c) = current.as_mut().filter(|c| c.dirty) {
                c.file.sync_data().map_err(io)?;
                c.dirty = false;
            }
        }
        Ok(written)
    }

    /// Appends `unit` as one block of the segment of `day`, sealed for its key. Durable
    /// after the next synced [`PlatformLog::write`]. Returns the bytes written.
    pub fn append_sealed(&self, day: u32, unit: &[u8]) -> Result<u64, JournalError> {
        self.append(day, &|key| self.seal(key, unit))
    }

    /// Appends one block to the segment of `day`, its payload made by `payload` from the
    /// block's key (as it lies: salvage copies blocks with their tags).
    pub fn append(
        &self,
        day: u32,
        payload: &dyn Fn(&[u8]) -> Vec<u8>,
    ) -> Result<u64, JournalError> {
        let mut current = self.lock();
        if current.as_ref().is_none_or(|c| c.day != day) {
            if let Some(old) = current.as_mut().filter(|c| c.dirty) {
                old.file.sync_data().map_err(io)?;
            }
            *current = None;
            let path = self.dir.join(segment_name(day));
            let created = !path.exists();
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io)?;
            if created {
                File::open(&self.dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io)?;
            }
            let len = file.metadata().map_err(io)?.len();
            *current = Some(Current {
                day,
                file,
                len,
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
        block.extend_from_slice(&crc32fast::hash(&payload).to_be_bytes());
        block.extend_from_slice(&payload);
        if let Err(e) = c.file.write_all(&block) {
            // Whatever part was written is cut off, so the next block starts whole.
            let _ = c.file.set_len(c.len);
            return Err(io(e));
        }
        c.len += block.len() as u64;
        c.dirty = true;
        Ok(block.len() as u64)
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
        std::io::copy(&mut (&mut r).take(offset), &mut std::io::sink()).map_err(io)?;
        let mut at = offset;
        loop {
            let mut header = [0u8; BLOCK_HEADER];
            match read_full(&mut r, &mut header).map_err(io)? {
                0 => return Ok(()),
                n if n < BLOCK_HEADER => return Err(ReadError::Damaged(at)),
                _ => {}
            }
            let len = u32::from_be_bytes(header[1..5].try_into().expect("4 bytes")) as usize;
            let crc = u32::from_be_bytes(header[5..9].try_into().expect("4 bytes"));
            if header[0] != MAGIC || len > MAX_PAYLOAD {
                return Err(ReadError::Damaged(at));
            }
            let mut payload = vec![0u8; len];
            if read_full(&mut r, &mut payload).map_err(io)? < len
                || crc32fast::hash(&payload) != crc
            {
                return Err(ReadError::Damaged(at));
            }
            let next = at + (BLOCK_HEADER + len) as u64;
            if !f(Block {
                offset: at,
                payload,
            })? {
                return Ok(());
            }
            at = next;
        }
    }

    /// Removes the segment of `day` (once what it kept was carried forward and synced).
    pub fn remove(&self, day: u32) -> Result<(), JournalError> {
        let mut current = self.lock();
        if current.as_ref().is_some_and(|c| c.day == day) {
            *current = None;
        }
        match std::fs::remove_file(self.dir.join(segment_name(day))) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io)
    }

    /// Replaces the segment of `day` by blocks of `units`, each sealed for its new key
    /// (adopting an untagged segment with the key created at this start), through a file
    /// renamed over it.
    pub fn rewrite(&self, day: u32, units: &[Vec<u8>]) -> Result<(), JournalError> {
        let mut current = self.lock();
        *current = None;
        let path = self.dir.join(segment_name(day));
        let tmp = self.dir.join(format!("{}.tmp", segment_name(day)));
        let mut out = Vec::new();
        for u in units {
            let sealed = self.seal(&block_key(day, out.len() as u64), u);
            out.push(MAGIC);
            out.extend_from_slice(&(sealed.len() as u32).to_be_bytes());
            out.extend_from_slice(&crc32fast::hash(&sealed).to_be_bytes());
            out.extend_from_slice(&sealed);
        }
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(&out).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io)
    }
}

/// The key a block's integrity tag is made over: its segment's day and its offset, so a
/// block moved elsewhere fails.
pub fn block_key(day: u32, offset: u64) -> Vec<u8> {
    let mut k = day.to_be_bytes().to_vec();
    k.extend_from_slice(&offset.to_be_bytes());
    k
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

    /// A block torn anywhere at the end of the newest segment is cut off at the next open;
    /// every whole block before it reads back, and the next block follows them.
    #[test]
    fn a_torn_last_block_is_cut_off_and_the_rest_kept() {
        for cut in 1..=29u64 {
            let dir = tempfile::tempdir().unwrap();
            let store = dir.path().join("journal");
            let log = PlatformLog::open(&store, Default::default()).unwrap();
            for i in 0..3u8 {
                log.append(7, &|_| vec![i; 20]).unwrap();
            }
            log.write(7, true).unwrap();
            drop(log);
            let path = dir_of(&store).join(segment_name(7));
            let len = std::fs::metadata(&path).unwrap().len();
            let f = OpenOptions::new().write(true).open(&path).unwrap();
            f.set_len(len - cut).unwrap();
            let log = PlatformLog::open(&store, Default::default()).unwrap();
            assert_eq!(
                payloads(&log, 7),
                vec![vec![0; 20], vec![1; 20]],
                "cut {cut}"
            );
            log.append(7, &|_| vec![9; 5]).unwrap();
            assert_eq!(payloads(&log, 7).last().unwrap(), &vec![9; 5]);
        }
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
        assert_eq!(log.segments().unwrap(), vec![(3, 20), (5, 10)]);
        log.remove(3).unwrap();
        assert_eq!(log.segments().unwrap(), vec![(5, 10)]);
    }
}
