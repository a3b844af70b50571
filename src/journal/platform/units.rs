//! The platform log on disk (format in [`super::log`]): messages are appended as singles,
//! one sled entry each, in the order they are stored, and packed into chunks once
//! [`PACK_AFTER`] of them wait, in one atomic batch of the log's tree (the chunk in, its
//! singles out). Keys are sequence numbers (big-endian `u64`); a chunk takes the key of its
//! first message, so reading the tree in key order reads the messages in the order they were
//! stored, whatever was packed.
//!
//! State of an older build (a tree per kind) is moved into the log at the first load, keyed
//! below [`FIRST_SEQ`], so it stays older than anything appended since.

use std::sync::Mutex;

use super::log::{self, Frame, PACKED};
use super::TREE_LOG;
use crate::journal::integrity::{self, Checked};
use crate::journal::{Journal, JournalError};

/// The first key of an appended message; keys below are state moved from an older build.
pub(in crate::journal) const FIRST_SEQ: u64 = 1 << 40;

/// Singles waiting before they are packed into chunks (about 40 KiB of declarations).
pub(super) const PACK_AFTER: usize = 64;

/// Where the log ends, guarded by its lock: appends, packing and the purge's rewrites of a
/// unit take it, so none of them sees another half done.
#[derive(Debug, Default)]
pub(in crate::journal) struct Tail {
    /// The next key to append at.
    next: u64,
    /// The first single not yet packed, if any.
    first_single: Option<u64>,
    /// Singles appended since the last packing (an upper bound: a purge may remove some).
    singles: usize,
}

/// The log's tail as stored: the key after the last unit, and the trailing singles.
pub(in crate::journal) fn open_tail(tree: &sled::Tree) -> Result<Mutex<Tail>, JournalError> {
    let mut tail = Tail {
        next: FIRST_SEQ,
        ..Tail::default()
    };
    for entry in tree.iter().rev() {
        let (k, v) = entry?;
        let Some(seq) = key_seq(&k) else { continue };
        if tail.next == FIRST_SEQ {
            tail.next = seq.saturating_add(1).max(FIRST_SEQ);
        }
        let packed = log::header(integrity::payload(&v)).map_or(true, |h| h.flags & PACKED != 0);
        if packed || seq < FIRST_SEQ {
            break;
        }
        tail.first_single = Some(seq);
        tail.singles += 1;
    }
    Ok(Mutex::new(tail))
}

pub(super) fn key_seq(k: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(k.try_into().ok()?))
}

impl Journal {
    pub(super) fn tail(&self) -> std::sync::MutexGuard<'_, Tail> {
        self.log_tail.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends messages to the platform log in order, each a single sealed with the integrity
    /// key; durable after the next [`Journal::flush`]. Packs the waiting singles when enough
    /// wait.
    pub(super) fn append(&self, frames: &[Frame<'_>]) -> Result<(), JournalError> {
        if frames.is_empty() {
            return Ok(());
        }
        let mut tail = self.tail();
        let mut batch = sled::Batch::default();
        let mut added = 0u64;
        let first = tail.next;
        for f in frames {
            let key = tail.next.to_be_bytes();
            tail.next += 1;
            let v = self.seal(TREE_LOG, &key, log::encode(0, 0, [*f]));
            added += (key.len() + v.len()) as u64;
            batch.insert(&key, v);
        }
        self.platform_log.apply_batch(batch)?;
        tail.first_single.get_or_insert(first);
        tail.singles += frames.len();
        self.platform_grow(added, 0);
        if tail.singles >= PACK_AFTER {
            self.pack(&mut tail)?;
        }
        Ok(())
    }

    /// Packs the waiting singles into chunks, in one batch. A single whose integrity tag
    /// does not verify is left as it lies (the load refuses it) and the runs on either side
    /// are packed apart, so nothing it says is laundered into a genuine chunk.
    fn pack(&self, tail: &mut Tail) -> Result<(), JournalError> {
        let Some(first) = tail.first_single else {
            tail.singles = 0;
            return Ok(());
        };
        let mut singles: Vec<(sled::IVec, sled::IVec)> = Vec::new();
        for entry in self.platform_log.range(first.to_be_bytes()..) {
            singles.push(entry?);
        }
        let mut batch = sled::Batch::default();
        let (mut added, mut removed) = (0u64, 0u64);
        // Runs of good singles: each run's frames, with the key of each frame's single.
        let mut run: Vec<(&[u8], Frame<'_>)> = Vec::new();
        let mut flush_run = |run: &mut Vec<(&[u8], Frame<'_>)>, batch: &mut sled::Batch| {
            let frames: Vec<Frame<'_>> = run.iter().map(|(_, f)| *f).collect();
            let mut at = 0;
            for unit in log::pack(&frames) {
                let n = log::frames(&unit).map_or(0, Iterator::count);
                let key = run[at].0;
                let v = self.seal(TREE_LOG, key, unit);
                added += (key.len() + v.len()) as u64;
                batch.insert(key, v);
                at += n.max(1);
            }
            run.clear();
        };
        for (k, v) in &singles {
            let payload = match self.integrity_key.get() {
                None => Some(integrity::payload(v)),
                Some(key) => match key.check(TREE_LOG.as_bytes(), k, v) {
                    Checked::Genuine(p) => Some(p),
                    Checked::Untagged(_) | Checked::Forged => None,
                },
            };
            let single = payload.and_then(|p| {
                let h = log::header(p).ok()?;
                let mut fs = log::frames(p).ok()?;
                let f = fs.next()?.ok()?;
                (h.flags & PACKED == 0 && fs.next().is_none()).then_some(f)
            });
            match single {
                Some(f) => {
                    removed += (k.len() + v.len()) as u64;
                    batch.remove(k);
                    run.push((k, f));
                }
                None => {
                    if !run.is_empty() {
                        flush_run(&mut run, &mut batch);
                    }
                    tracing::warn!(
                        key = key_seq(k).unwrap_or(0),
                        "a stored platform message does not read or verify: left as it lies, not packed"
                    );
                }
            }
        }
        if !run.is_empty() {
            flush_run(&mut run, &mut batch);
        }
        self.platform_log.apply_batch(batch)?;
        self.platform_grow(added, removed);
        tail.first_single = None;
        tail.singles = 0;
        Ok(())
    }

    /// Adds `added` and takes `removed` bytes from the platform state's figure.
    pub(super) fn platform_grow(&self, added: u64, removed: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        let _ = self.platform_bytes.fetch_update(Relaxed, Relaxed, |b| {
            Some(b.saturating_add(added).saturating_sub(removed))
        });
    }

    /// Packs whatever singles wait, however few (a clean stop, tests).
    pub fn pack_platform_log(&self) -> Result<(), JournalError> {
        let mut tail = self.tail();
        self.pack(&mut tail)
    }

    /// How many sled entries the platform log takes, and how many of them are singles.
    pub fn platform_log_units(&self) -> Result<(u64, u64), JournalError> {
        let (mut units, mut singles) = (0, 0);
        for entry in self.platform_log.iter() {
            let (_, v) = entry?;
            units += 1;
            if log::header(integrity::payload(&v)).is_ok_and(|h| h.flags & PACKED == 0) {
                singles += 1;
            }
        }
        Ok((units, singles))
    }
}

#[cfg(test)]
mod tests {
    use bondline_devices::contract::{Action, Instruction, SCHEMA};
    use proptest::prelude::*;

    use crate::journal::Journal;
    use crate::rules::clearance::tests::decl as declaration;
    use crate::rules::ClearanceTable;

    #[derive(Debug, Clone)]
    enum Op {
        Declare {
            w: u8,
            consumer: u8,
            value: u64,
        },
        Instruct {
            w: u8,
            id: u8,
            issued: u8,
            hold: bool,
        },
        Count {
            w: u8,
        },
        NextDay(u8),
        Purge {
            keep: u8,
            step: u8,
        },
        Restart,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u8..40, 0u8..4, 0u64..1000).prop_map(|(w, consumer, value)| Op::Declare { w, consumer, value }),
            4 => (0u8..40, 0u8..60, any::<u8>(), any::<bool>()).prop_map(|(w, id, issued, hold)| Op::Instruct { w, id, issued, hold }),
            2 => (0u8..40).prop_map(|w| Op::Count { w }),
            2 => (1u8..4).prop_map(Op::NextDay),
            1 => (1u8..6, 1u8..30).prop_map(|(keep, step)| Op::Purge { keep, step }),
            1 => Just(Op::Restart),
        ]
    }

    /// What the lines would see of `w`, for comparing two tables.
    fn seen(t: &ClearanceTable, w: &str) -> String {
        let k = t.known(w);
        let today = super::super::today();
        let window = t.consumer_window(w, today - 400, today + 400);
        format!(
            "{:?} {:?} {:?} {:?} {:?}",
            (window.parcels, window.value_minor),
            k.declaration.map(|d| (d.consumer, d.value_minor)),
            k.instruction.map(|i| (i.id, i.action)),
            k.counted_day,
            t.retention_facts(w).map(|f| f.touched_day),
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        /// Whatever was stored, packed into chunks at any point, purged with any cutoff and in
        /// any steps, a restart loads exactly the table the uplink and the retention task left
        /// in memory: the same declarations, instructions, counts, days last stored and ids
        /// seen. Packing never reorders what a later message replaced, and the purge never
        /// drops what a kept waybill still needs.
        #[test]
        fn a_restart_loads_what_the_live_table_held(ops in proptest::collection::vec(op(), 1..160)) {
            let dir = tempfile::tempdir().unwrap();
            let mut j = Journal::open(dir.path()).unwrap();
            let live = ClearanceTable::default();
            let mut day = super::super::today() - 30;
            for op in ops {
                match op {
                    Op::Declare { w, consumer, value } => {
                        let d = declaration(&format!("W{w}"), &format!("c{consumer}"), value);
                        if live.declaration_is_new(&d) {
                            j.store_declaration_on(&d, day).unwrap();
                            live.apply_declaration(&d);
                            live.touch(&d.waybill, day);
                        }
                    }
                    Op::Instruct { w, id, issued, hold } => {
                        let i = Instruction {
                            schema: SCHEMA,
                            instruction_id: format!("I{id}"),
                            waybill: format!("W{w}"),
                            action: if hold { Action::Hold } else { Action::Release },
                            reason: String::new(),
                            issued_at_ms: Some(u64::from(issued)),
                            signature: None,
                        };
                        if live.instruction_is_new(&i) {
                            j.store_instruction_on(&i, day).unwrap();
                            live.apply_instruction(&i);
                            live.touch(&i.waybill, day);
                        } else if !live.instruction_id_seen(&i.instruction_id) {
                            j.remember_instruction_id_on(&i, day).unwrap();
                            live.mark_instruction_seen(&i.instruction_id);
                        }
                    }
                    Op::Count { w } => {
                        let w = format!("W{w}");
                        if live.count(&w, day) {
                            j.mark_counted([(w.as_str(), day)]).unwrap();
                        }
                    }
                    Op::NextDay(n) => day += u32::from(n),
                    Op::Purge { keep, step } => {
                        super::super::tests::purge_all(&j, &live, day - u32::from(keep), usize::from(step));
                    }
                    Op::Restart => {
                        j.db.flush().unwrap();
                        drop(j);
                        j = Journal::open(dir.path()).unwrap();
                        let loaded = j.load_clearance().unwrap();
                        for w in 0..40 {
                            let w = format!("W{w}");
                            prop_assert_eq!(seen(&loaded, &w), seen(&live, &w), "waybill {}", w);
                        }
                        for id in 0..60 {
                            let id = format!("I{id}");
                            prop_assert_eq!(loaded.instruction_id_seen(&id), live.instruction_id_seen(&id), "id {}", id);
                        }
                    }
                }
            }
        }
    }
}
