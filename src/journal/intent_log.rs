//! The release intents' write-ahead log: two pre-zeroed segment files beside the intent
//! store, written in place and synced with `fdatasync`, so that a release waits for the
//! cheapest durable write the disk offers and for nothing else.
//!
//! # Why
//! A sled flush of the intent store writes sled's own log and, as that log grows, its file
//! metadata: under a draining backlog the filesystem's journal commits stand in front of it
//! (`bondline_intent_flush_latency_seconds`, BENCHMARKS.md: p99 3-23 ms). A write into a file
//! whose blocks are already written (here: zeros, at creation) changes no metadata, so its
//! `fdatasync` waits only for the data (`bondline-lab bench fsync`: p99 1.3-2.5 ms beside
//! the same load).
//!
//! # Invariants
//! - **Ahead of the command.** A batch of intents is appended here and the append returns once
//!   `fdatasync` did; the intent store's own thread applies it after (in memory), and the
//!   store reaches the disk later, with sled's own flush.
//! - **Generations.** Each use of a segment begins under a generation above every earlier
//!   one, and moves to the next one at every periodic cover; every frame carries its
//!   generation and a CRC32 of generation, length and payload. A segment is read from its
//!   start for as long as frames are whole and their generations do not go down: what
//!   follows (a torn frame, zeros, frames of an earlier use) is not part of it.
//! - **Covered before reused.** A cover makes the intent store durable together with the
//!   `covered` mark (the generation it covers), after every apply of that generation's
//!   frames. Switching to the other segment first waits for the cover of its last use.
//!   About once a second, and at a clean stop, the generation in use is covered as well, so a
//!   start after a crash replays only the last second's frames: in generation order, every
//!   frame above `covered`, into the intent store, which it then flushes and covers.
//!   Replaying a frame twice stores the same keys again: an intent settled in between is
//!   found again at start, where its durable record (looked up by waybill if it is older
//!   than the recent window) settles it once more (see `intents`, `app::takeover`).
//!
//! Pure framing here ([`Segments`]); the intent store's side is in `intent_wal`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Bytes per segment: a few thousand release intents of about a kilobyte each.
pub const SEGMENT_BYTES: u64 = 4 * 1024 * 1024;

/// Frame header: generation (`u64`), payload length (`u32`), CRC32 (`u32`), little-endian.
const HEADER: usize = 16;

/// The segment files of the log in `dir`.
pub fn segment_paths(dir: &Path) -> [PathBuf; 2] {
    [dir.join("wal.0"), dir.join("wal.1")]
}

fn crc(generation: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&generation.to_le_bytes());
    h.update(&(payload.len() as u32).to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// One frame, ready to write.
fn frame(generation: u64, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(HEADER + payload.len());
    f.extend_from_slice(&generation.to_le_bytes());
    f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    f.extend_from_slice(&crc(generation, payload).to_le_bytes());
    f.extend_from_slice(payload);
    f
}

/// The frames of one segment's last use, each with its generation, in order. A use begins
/// under a generation above every earlier one and may move to later ones as it goes (each
/// periodic cover), so a frame of a lower generation than the one before it is an earlier
/// use's, and ends the read.
pub fn parse_segment(bytes: &[u8]) -> Vec<(u64, Vec<u8>)> {
    let mut at = 0usize;
    let mut last = 0u64;
    let mut frames = Vec::new();
    while let Some(head) = bytes.get(at..at + HEADER) {
        let g = u64::from_le_bytes(head[0..8].try_into().unwrap_or_default());
        let len = u32::from_le_bytes(head[8..12].try_into().unwrap_or_default());
        let sum = u32::from_le_bytes(head[12..16].try_into().unwrap_or_default());
        if g == 0 || g < last {
            break;
        }
        let Some(payload) = bytes.get(at + HEADER..at + HEADER + len as usize) else {
            break;
        };
        if crc(g, payload) != sum {
            break;
        }
        last = g;
        frames.push((g, payload.to_vec()));
        at += HEADER + len as usize;
    }
    frames
}

/// Every frame above `covered` in the segments in `dir`, in generation order, and the highest
/// generation found (0 for none). Missing segment files hold nothing.
pub fn read_uncovered(dir: &Path, covered: u64) -> io::Result<(Vec<Vec<u8>>, u64)> {
    let mut frames = Vec::new();
    for path in segment_paths(dir) {
        match std::fs::read(&path) {
            Ok(bytes) => frames.extend(parse_segment(&bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    // Stable: frames of one generation keep their order. Two segments' uses never share a
    // generation.
    frames.sort_by_key(|(g, _)| *g);
    let highest = frames.last().map_or(0, |(g, _)| *g);
    let payloads = frames
        .into_iter()
        .filter(|(g, _)| *g > covered)
        .map(|(_, p)| p)
        .collect();
    Ok((payloads, highest))
}

/// The two segments, open for writing: which one is in use, where the next frame goes and
/// under which generation.
#[derive(Debug)]
pub struct Segments {
    files: [File; 2],
    size: u64,
    active: usize,
    offset: u64,
    generation: u64,
}

impl Segments {
    /// Opens the segments in `dir`, creating missing ones as `size` zeros (synced, with the
    /// directory), and starts writing segment 0 under `generation`, which must be above every
    /// generation in the files (`read_uncovered`'s highest), all of them covered.
    pub fn open(dir: &Path, size: u64, generation: u64) -> io::Result<Segments> {
        let open = |path: &Path| -> io::Result<File> {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)?;
            if file.metadata()?.len() < size {
                // Written zeros, not a hole or `fallocate`: later writes then change no
                // block mapping, so their `fdatasync` writes the data alone.
                let zeros = vec![0u8; 1024 * 1024];
                let mut at = 0;
                while at < size {
                    let n = zeros.len().min((size - at) as usize);
                    file.write_all_at(&zeros[..n], at)?;
                    at += n as u64;
                }
                file.sync_all()?;
            }
            Ok(file)
        };
        let [a, b] = segment_paths(dir);
        let files = [open(&a)?, open(&b)?];
        // Always, not only after a creation: a start killed between the zeros and this sync
        // leaves full-size files whose directory entries may not be durable yet.
        File::open(dir)?.sync_all()?;
        Ok(Segments {
            files,
            size,
            active: 0,
            offset: 0,
            generation: generation.max(1),
        })
    }

    /// Whether a payload of `len` bytes fits in an empty segment at all.
    pub fn can_hold(&self, len: usize) -> bool {
        (HEADER + len) as u64 <= self.size
    }

    /// Whether a payload of `len` bytes fits in what is left of the segment in use.
    pub fn fits(&self, len: usize) -> bool {
        self.offset + (HEADER + len) as u64 <= self.size
    }

    /// Appends one frame and syncs it: durable on return. The caller checked [`Segments::fits`].
    pub fn append(&mut self, payload: &[u8]) -> io::Result<()> {
        let f = frame(self.generation, payload);
        let file = &self.files[self.active];
        file.write_all_at(&f, self.offset)?;
        file.sync_data()?;
        self.offset += f.len() as u64;
        Ok(())
    }

    /// The generation of the frames now written.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Writes the first `n` bytes of a frame where the next append would go (within the
    /// segment), as a crash in the middle of a write leaves it.
    #[cfg(test)]
    pub fn tear(&mut self, n: usize) {
        let f = frame(self.generation, &vec![0xAB; n]);
        let room = (self.size - self.offset) as usize;
        let n = n.min(f.len() - 1).min(room);
        let _ = self.files[self.active].write_all_at(&f[..n], self.offset);
    }

    /// Goes on in the same segment under the next generation and returns the generation
    /// left, for the caller to cover: what was written so far can then be covered while the
    /// segment is still in use.
    pub fn advance(&mut self) -> u64 {
        self.generation += 1;
        self.generation - 1
    }

    /// Moves to the other segment under the next generation and returns the generation of
    /// the one left, for the caller to cover. The caller made sure the other segment's last
    /// use is covered.
    pub fn switch(&mut self) -> u64 {
        let left = self.generation;
        self.active = 1 - self.active;
        self.offset = 0;
        self.generation += 1;
        left
    }
}

/// The payload of one batch of intents: count, then length-prefixed key and value of each.
pub fn encode_batch(intents: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let size: usize = intents.iter().map(|(k, v)| 8 + k.len() + v.len()).sum();
    let mut out = Vec::with_capacity(4 + size);
    out.extend_from_slice(&(intents.len() as u32).to_le_bytes());
    for (k, v) in intents {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(k);
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        out.extend_from_slice(v);
    }
    out
}

/// The intents of a payload; `None` if it does not decode (a frame's CRC held, so only a
/// payload written by another build could fail).
pub fn decode_batch(payload: &[u8]) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    fn take<'a>(b: &'a [u8], at: &mut usize) -> Option<&'a [u8]> {
        let len = u32::from_le_bytes(b.get(*at..*at + 4)?.try_into().ok()?) as usize;
        let out = b.get(*at + 4..*at + 4 + len)?;
        *at += 4 + len;
        Some(out)
    }
    let n = u32::from_le_bytes(payload.get(..4)?.try_into().ok()?) as usize;
    let mut at = 4;
    let mut out = Vec::with_capacity(n.min(4096));
    for _ in 0..n {
        let k = take(payload, &mut at)?.to_vec();
        let v = take(payload, &mut at)?.to_vec();
        out.push((k, v));
    }
    (at == payload.len()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_read_back_and_a_torn_or_stale_tail_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Segments::open(dir.path(), 4096, 7).unwrap();
        s.append(b"one").unwrap();
        s.append(b"two").unwrap();
        let (got, highest) = read_uncovered(dir.path(), 0).unwrap();
        assert_eq!(got, vec![b"one".to_vec(), b"two".to_vec()]);
        assert_eq!(highest, 7);
        // Covered frames are not read again.
        assert!(read_uncovered(dir.path(), 7).unwrap().0.is_empty());

        // A torn third frame: its bytes cut short.
        let third = frame(7, b"three");
        let [a, _] = segment_paths(dir.path());
        let f = OpenOptions::new().write(true).open(&a).unwrap();
        f.write_all_at(&third[..third.len() - 2], 2 * HEADER as u64 + 6)
            .unwrap();
        assert_eq!(read_uncovered(dir.path(), 0).unwrap().0.len(), 2);

        // A new use of segment 0 under a later generation hides the earlier frames behind it.
        let mut s = Segments::open(dir.path(), 4096, 9).unwrap();
        s.append(b"new").unwrap();
        let (got, highest) = read_uncovered(dir.path(), 0).unwrap();
        assert_eq!(got, vec![b"new".to_vec()]);
        assert_eq!(highest, 9);
    }

    #[test]
    fn a_segment_read_follows_its_generations_up_and_stops_where_they_go_down() {
        let dir = tempfile::tempdir().unwrap();
        // An earlier use of segment 0 under generations 3 and 4.
        let mut s = Segments::open(dir.path(), 4096, 3).unwrap();
        for p in [&b"a"[..], b"bb", b"ccc", b"dddd"] {
            s.append(p).unwrap();
        }
        s.advance();
        s.append(b"e").unwrap();
        // A later use under 6, then 7 after a periodic cover: shorter, so the earlier use's
        // frames lie behind it.
        let mut s = Segments::open(dir.path(), 4096, 6).unwrap();
        s.append(b"x").unwrap();
        assert_eq!(s.advance(), 6);
        s.append(b"y").unwrap();
        let (got, highest) = read_uncovered(dir.path(), 0).unwrap();
        assert_eq!(got, vec![b"x".to_vec(), b"y".to_vec()]);
        assert_eq!(highest, 7);
        // Covering 6 leaves the frame of 7.
        assert_eq!(
            read_uncovered(dir.path(), 6).unwrap().0,
            vec![b"y".to_vec()]
        );
    }

    #[test]
    fn batches_round_trip_and_garbage_does_not_decode() {
        let batch = vec![
            (b"L1\0\0\0\0\x07".to_vec(), b"value".to_vec()),
            (vec![], vec![]),
        ];
        assert_eq!(decode_batch(&encode_batch(&batch)), Some(batch));
        assert_eq!(decode_batch(b"\x05\0\0\0xx"), None);
        assert_eq!(decode_batch(b""), None);
    }
}
