//! Loading the stored platform state into the clearance table at start: every entry is
//! checked (see [`super::trust`]) and applied, with progress reported, and a refused entry
//! is replaced by its fail-closed stand-in. Its own module because the load is the one reader
//! of the whole state, and it runs before the uplink may write any.

use bondline_devices::contract::{
    Action, Declaration, EnterpriseAction, EnterpriseNotice, Instruction, SCHEMA,
};

use super::files::{block_key, ReadError};
use super::log;
use super::trust::Verdict;
use super::units::MOVED_DAY;
use super::{
    be_u32, RefusedEntry, META_PLATFORM_RULES, TREE_DECLARATIONS, TREE_ENTERPRISES,
    TREE_INSTRUCTIONS, TREE_LOG, TREE_META,
};
use crate::journal::integrity;
use crate::journal::integrity::Checked;
use crate::journal::{Journal, JournalError};
use crate::rules::ClearanceTable;

/// How many stored entries the last complete load applied: the next load's progress and the
/// room the table makes before it (`u64`, big-endian).
const META_LOADED_ENTRIES: &[u8] = b"clearance_loaded_entries";

/// Entries applied between two progress reports of a load.
pub(super) const LOAD_STEP: u64 = 16_384;

impl Journal {
    /// Rebuilds the clearance table from what was stored, for a restart. Unreadable entries
    /// (written by an older build) are skipped with a warning.
    ///
    /// With an integrity key set, every declaration, instruction and enterprise notice is
    /// checked first (see [`crate::journal::integrity`]). A refused one is left out, fail closed: a refused
    /// declaration leaves its waybill undeclared, a refused instruction is replaced by a hold
    /// and a refused notice by a suspension, whatever they said; each is noted for
    /// [`Journal::refused_entries`]. Untagged entries of an older build are adopted (tagged in
    /// place) at the first start with a key, and refused afterwards.
    pub fn load_clearance(&self) -> Result<ClearanceTable, JournalError> {
        let table = ClearanceTable::default();
        let adopting = self.begin_clearance_load()?;
        self.load_clearance_into(&table, adopting, &|| false)?;
        Ok(table)
    }

    /// What must happen before the rest of start-up, of a load: whether untagged state is
    /// adopted at this start (decided now, before `check_chain_tags` ends a salvage's
    /// adoption), and the stored platform rule set adopted with it, before the policy reads it.
    /// Pass the result to [`Journal::load_clearance_into`].
    pub fn begin_clearance_load(&self) -> Result<bool, JournalError> {
        let adopting = self.adopting();
        if adopting {
            if let Some(key) = self.integrity_key.get() {
                if let Some(v) = self.meta.get(META_PLATFORM_RULES)? {
                    if let Checked::Untagged(p) =
                        key.check(TREE_META.as_bytes(), META_PLATFORM_RULES, &v)
                    {
                        let sealed = key.seal(TREE_META.as_bytes(), META_PLATFORM_RULES, p);
                        self.meta.insert(META_PLATFORM_RULES, sealed)?;
                        tracing::warn!("stored platform rule set without an integrity tag adopted as it lies on disk");
                        *self.adopted.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                    }
                }
            }
        }
        Ok(adopting)
    }

    /// How many stored entries, and declarations among them, the last complete load applied
    /// (zeros before the first).
    pub fn clearance_load_hint(&self) -> (u64, u64) {
        let v = self.meta.get(META_LOADED_ENTRIES).ok().flatten();
        let at = |i: usize| {
            v.as_deref()
                .and_then(|v| Some(u64::from_be_bytes(v.get(i..i + 8)?.try_into().ok()?)))
                .unwrap_or(0)
        };
        (at(0), at(8))
    }

    /// [`Journal::load_clearance`] into a table the lines already read: each entry is applied
    /// with the table's own per-shard locking (no lock is held across entries), and progress
    /// is counted with [`ClearanceTable::loaded`]. The caller marks the table loading before
    /// and finished after; nothing else may write platform state meanwhile (the uplink starts
    /// after the load).
    ///
    /// `adopting`: from [`Journal::begin_clearance_load`]. Stops early, returning false, once
    /// `cancelled` says so (a shutdown during the load); true when everything was applied.
    pub fn load_clearance_into(
        &self,
        table: &ClearanceTable,
        adopting: bool,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<bool, JournalError> {
        let mut load = Load {
            table,
            cancelled,
            adopted: !adopting,
            applied: 0,
            step: 0,
            unreadable: 0,
            adopting: 0,
            refused: Vec::new(),
            pending_counts: Default::default(),
        };
        // The consumers' forgotten days are added once the log is in (below), for all held
        // consumers at once in the file's order. An older build's totals are moved into
        // their file first. A move that fails (the file cannot be used) is done by retention
        // later: the load goes on, and every consumer's history not in memory stays unknown
        // until it is.
        match self.move_history(&mut || load.tick()) {
            Ok(true) => {}
            Ok(false) => return Ok(false),
            Err(e) => {
                tracing::warn!(error = %e, "an older build's consumer day totals are not moved into their file yet: consumer limits over histories not in memory count as exceeded until they are")
            }
        }
        table.clear_stored_history();
        // An older build's trees first: moved into the log, below what was appended since.
        if !self.move_into_log(&mut load)? {
            return Ok(false);
        }
        // A block torn at the end of the log by a crash is cut off first (it was never
        // acknowledged), so that the load reads to the end.
        // A segment an earlier run synced that is gone lost acknowledged messages whose
        // waybills nothing names: refused as damage is.
        let lost = self.platform_log.repair_newest()?;
        for lost in &lost {
            load.refused.push(RefusedEntry {
                tree: TREE_LOG,
                key: format!(
                    "{} (synced to {})",
                    super::files::segment_name(lost.day),
                    lost.synced
                ),
                why: "file gone from the disk",
            });
        }
        // The platform state's bytes, summed on the way (see `Journal::platform_bytes`).
        let mut platform_bytes = 0u64;
        for (day, len) in self.platform_log.segments()? {
            platform_bytes += len;
            if !self.load_segment(day, &mut load)? {
                return Ok(false);
            }
        }
        // What an older build's trees still hold (entries refused or unreadable, left as
        // they lie), the rule set and its update ids.
        for tree in [
            &self.declarations,
            &self.instructions,
            &self.instruction_ids,
            &self.enterprises,
            &self.notice_ids,
            &self.counted,
            &self.rule_update_ids,
        ] {
            for entry in tree.iter() {
                let (k, v) = entry?;
                platform_bytes += (k.len() + v.len()) as u64;
            }
        }
        if let Some(v) = self.meta.get(META_PLATFORM_RULES)? {
            platform_bytes += (META_PLATFORM_RULES.len() + v.len()) as u64;
        }
        self.platform_bytes
            .store(platform_bytes, std::sync::atomic::Ordering::Relaxed);
        // The stored days of the consumers the held declarations name (see
        // [`super::held_days`]). From then on, a consumer's first held declaration reads its own.
        let stored = self.stored_days()?;
        if !super::held_days::add_held_consumers_days(&stored, table, &mut || load.tick())? {
            return Ok(false);
        }
        table.set_stored_history(Box::new(stored));
        if load.unreadable > 0 {
            tracing::warn!(
                entries = load.unreadable,
                "stored platform messages that this build cannot read were skipped"
            );
        }
        if load.adopting > 0 {
            tracing::warn!(
                entries = load.adopting,
                "stored platform state without integrity tags adopted as it lies on disk (integrity key's adoption open: created at this start, a start cut short, or a salvaged store): it is tagged from now on, and an untagged entry found later is refused"
            );
            *self.adopted.lock().unwrap_or_else(|e| e.into_inner()) += load.adopting;
        }
        for r in std::mem::take(&mut load.refused) {
            tracing::error!(refused = %r, "stored platform state failed its integrity check and was left out");
            self.note_refused(r);
        }
        table.loaded(load.step);
        if cancelled() {
            return Ok(false);
        }
        let mut hint = load.applied.to_be_bytes().to_vec();
        hint.extend_from_slice(&(table.declarations() as u64).to_be_bytes());
        self.meta.insert(META_LOADED_ENTRIES, hint)?;
        // Millions of decoded messages came and went between the table's long-lived entries:
        // their freed memory goes back to the system rather than staying resident.
        crate::memory::give_back();
        Ok(true)
    }

    /// Loads one segment of the platform log; false if the load is to stop. A segment
    /// written without tags and adopted at this start is written again, sealed.
    fn load_segment(&self, day: u32, load: &mut Load<'_>) -> Result<bool, JournalError> {
        let key = self.integrity_key.get();
        // Untagged blocks are adopted only while the key's adoption is open (see
        // `integrity::IntegrityKey::open_for_start`): the log is tagged from its first block on.
        let adopting = self.adopting() && key.is_some();
        let mut sealed_anew: Vec<Vec<u8>> = Vec::new();
        let mut untagged = 0usize;
        use std::cell::Cell;
        let damaged = Cell::new(false);
        let stopped = Cell::new(false);
        let end = Cell::new(0u64);
        let mut from = 0u64;
        let mut damage = Vec::new();
        // Where an earlier run synced this segment to, if it recorded it.
        let vouched = self.platform_log.synced_ends().of(day);
        let mut handle = |b: super::files::Block| {
            end.set(b.offset + (super::files::BLOCK_HEADER + b.payload.len()) as u64);
            let block = block_key(day, b.offset);
            let payload = if !b.intact {
                Err("its checksum does not match (damaged on disk)")
            } else {
                match key {
                    None => Ok(integrity::payload(&b.payload)),
                    Some(k) => match k.check(TREE_LOG.as_bytes(), &block, &b.payload) {
                        Checked::Genuine(p) => Ok(p),
                        Checked::Untagged(p) if adopting => {
                            untagged += 1;
                            Ok(p)
                        }
                        Checked::Untagged(_) => Err("untagged"),
                        Checked::Forged => Err("tag does not verify"),
                    },
                }
            };
            let payload = match payload {
                Ok(p) => p,
                Err(why) => {
                    damaged.set(true);
                    refuse_unit(
                        load.table,
                        day,
                        b.offset,
                        &b.payload,
                        why,
                        &mut load.refused,
                    );
                    return Ok(true);
                }
            };
            if adopting {
                sealed_anew.push(payload.to_vec());
            }
            let Ok(frames) = log::frames(payload) else {
                load.unreadable += 1;
                return Ok(true);
            };
            for f in frames {
                let Ok(f) = f else {
                    load.unreadable += 1;
                    break;
                };
                if !apply_frame(load.table, &f, &mut load.pending_counts) {
                    load.unreadable += 1;
                }
                if load.tick() {
                    stopped.set(true);
                    return Ok(false);
                }
            }
            Ok(true)
        };
        let stop = loop {
            end.set(from);
            let read = self.platform_log.read(day, from, &mut handle);
            let stop = match read {
                Ok(()) => end.get(),
                Err(ReadError::Damaged(at)) => at,
                Err(ReadError::Journal(e)) => return Err(e),
            };
            if stopped.get() {
                return Ok(false);
            }
            // Where the blocks stop reading, anything but zeros after them is damage to what
            // was written: refused (an alarm, `/readyz` 503), as no stand-in can say whom it
            // held; intact blocks after it are read on.
            let path = self
                .platform_log_dir()
                .join(super::files::segment_name(day));
            let rest = super::files::first_nonzero(&path, stop)
                .map_err(|e| JournalError::Store(sled::Error::Io(e)))?;
            let Some(at) = rest else {
                // Zeros from here: the segment ends, and must not end before where an
                // earlier run synced it (zeroed, cut or an older copy put back on disk).
                if let Some(synced) = vouched.filter(|&s| stop < s) {
                    tracing::error!(
                        segment = %path.display(),
                        blocks_end = stop,
                        synced_to = synced,
                        "the platform log's segment ends before what was synced to it: cut short on disk"
                    );
                    damage.push(RefusedEntry {
                        tree: TREE_LOG,
                        key: format!(
                            "{} offset {stop} (synced to {synced})",
                            super::files::segment_name(day)
                        ),
                        why: "cut short on disk",
                    });
                }
                break stop;
            };
            damaged.set(true);
            damage.push(RefusedEntry {
                tree: TREE_LOG,
                key: format!("{} offset {at}", super::files::segment_name(day)),
                why: "does not read (damaged on disk)",
            });
            match self.platform_log.resume(day, stop)? {
                Some(next) => from = next,
                None => break stop,
            }
        };
        load.refused.extend(damage);
        if untagged > 0 {
            load.adopting += untagged;
            // Sealed as it lies, unless something in it was refused: that stays for the
            // investigation, refused again at the next start.
            if !damaged.get() {
                self.platform_log.rewrite(day, &sealed_anew, stop)?;
            } else {
                // Left untagged, and refused once the adoption ends (fail closed).
                self.unsealed
                    .fetch_add(untagged, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(segment = %super::files::segment_name(day), untagged, "untagged platform messages adopted in a segment that holds damage are not sealed (the segment is kept as it lies): they are refused from the next start on");
            }
        }
        Ok(true)
    }

    /// Moves the platform state of an older build (a tree per kind, see [`super`]) into the
    /// log's segment of day 0 ([`MOVED_DAY`], read before any other), in the order that
    /// build loaded it, in chunks: each chunk is written and synced, then its entries are
    /// removed from their trees (a crash between the two moves them again, which changes
    /// nothing). An entry that fails its integrity check
    /// gets its stand-in and stays where it is, refused again at every start, as before; one
    /// whose JSON does not parse stays too. Ages (`received`, `aging`) go once all is moved:
    /// the log's frames carry their day.
    fn move_into_log(&self, load: &mut Load<'_>) -> Result<bool, JournalError> {
        let trees = [
            (
                TREE_DECLARATIONS,
                log::Kind::InstructionId,
                &self.instruction_ids,
            ),
            (TREE_DECLARATIONS, log::Kind::NoticeId, &self.notice_ids),
            (
                TREE_DECLARATIONS,
                log::Kind::Declaration,
                &self.declarations,
            ),
            (
                TREE_INSTRUCTIONS,
                log::Kind::Instruction,
                &self.instructions,
            ),
            (TREE_ENTERPRISES, log::Kind::Notice, &self.enterprises),
            (TREE_DECLARATIONS, log::Kind::Counted, &self.counted),
        ];
        if trees.iter().all(|(_, _, t)| t.is_empty()) {
            if !self.received.is_empty() || !self.aging.is_empty() {
                self.received.clear()?;
                self.aging.clear()?;
            }
            return Ok(true);
        }
        let today = super::today();
        let mut moved = 0usize;
        for (name, kind, tree) in trees {
            let mut frames: Vec<(u32, Vec<u8>, Vec<u8>)> = Vec::new();
            let mut keys: Vec<sled::IVec> = Vec::new();
            let mut bytes = 0usize;
            let mut entries = tree.iter();
            loop {
                let entry = entries.next().transpose()?;
                let last = entry.is_none();
                if let Some((k, v)) = entry {
                    if load.tick() {
                        return Ok(false);
                    }
                    let moved_frame = match kind {
                        log::Kind::InstructionId | log::Kind::NoticeId => {
                            Some((today, Vec::new(), k.to_vec()))
                        }
                        log::Kind::Counted => be_u32(&v).map(|day| (day, Vec::new(), k.to_vec())),
                        _ => match self.verdict(name, &k, &v, load.adopted)? {
                            Verdict::Use(p) => {
                                let parses = match kind {
                                    log::Kind::Declaration => {
                                        serde_json::from_slice::<Declaration>(p).is_ok()
                                    }
                                    log::Kind::Instruction => {
                                        serde_json::from_slice::<Instruction>(p).is_ok()
                                    }
                                    _ => serde_json::from_slice::<EnterpriseNotice>(p).is_ok(),
                                };
                                if !load.adopted
                                    && self.integrity_key.get().is_some()
                                    && p.len() == v.len()
                                {
                                    load.adopting += 1;
                                }
                                if !parses {
                                    load.unreadable += 1;
                                }
                                let day = self.received.get(&k)?.as_deref().and_then(be_u32);
                                // The tree's key is the waybill or enterprise.
                                parses.then(|| (day.unwrap_or(today), k.to_vec(), p.to_vec()))
                            }
                            Verdict::Refuse(why) => {
                                let key = String::from_utf8_lossy(&k).into_owned();
                                refuse_into(load.table, name, &key);
                                load.refused.push(RefusedEntry {
                                    tree: name,
                                    key,
                                    why,
                                });
                                None
                            }
                        },
                    };
                    if let Some(f) = moved_frame {
                        bytes += f.2.len();
                        frames.push(f);
                        keys.push(k);
                    }
                }
                if (last && !frames.is_empty()) || bytes >= 4 * log::UNIT_BYTES {
                    let fs: Vec<log::Frame<'_>> = frames
                        .iter()
                        .map(|(day, subject, body)| log::Frame {
                            kind,
                            day: *day,
                            subject: &subject[..subject.len().min(255)],
                            body,
                        })
                        .collect();
                    for unit in log::pack(&fs) {
                        self.platform_log.append_sealed(MOVED_DAY, &unit)?;
                    }
                    // Synced, and where it was synced to recorded (durable with the trees'
                    // removal below, in the same store): the older build's trees, the only
                    // other copy, are emptied next.
                    self.write_platform(true)?;
                    let mut gone = sled::Batch::default();
                    for k in keys.drain(..) {
                        gone.remove(k);
                    }
                    tree.apply_batch(gone)?;
                    moved += frames.len();
                    frames.clear();
                    bytes = 0;
                }
                if last {
                    break;
                }
            }
        }
        self.received.clear()?;
        self.aging.clear()?;
        if moved > 0 {
            tracing::info!(
                entries = moved,
                "platform state of an older build moved into the platform log"
            );
        }
        Ok(true)
    }
}

/// A load's progress and what it found.
struct Load<'a> {
    table: &'a ClearanceTable,
    cancelled: &'a dyn Fn() -> bool,
    adopted: bool,
    applied: u64,
    step: u64,
    unreadable: usize,
    adopting: usize,
    refused: Vec<RefusedEntry>,
    /// Counted parcels waiting for their waybill's declaration (see [`apply_frame`]).
    pending_counts: std::collections::HashMap<String, u32>,
}

impl Load<'_> {
    /// Counts one applied entry; reports progress every [`LOAD_STEP`]. True once the load
    /// is to stop.
    fn tick(&mut self) -> bool {
        self.applied += 1;
        self.step += 1;
        if self.step == LOAD_STEP {
            self.table.loaded(self.step);
            self.step = 0;
            return (self.cancelled)();
        }
        false
    }
}

/// Applies one message of the log to the table, as the uplink applied it when it arrived.
/// False if its body does not read. A parcel counted while its waybill holds no declaration
/// here (the one it was counted under was replaced since, and forgotten by the purge) is
/// counted once the waybill's next declaration is applied, as the running daemon moved
/// the count to it (`pending`).
fn apply_frame(
    table: &ClearanceTable,
    f: &log::Frame<'_>,
    pending: &mut std::collections::HashMap<String, u32>,
) -> bool {
    let text = || std::str::from_utf8(f.body).ok();
    match f.kind {
        log::Kind::Declaration => serde_json::from_slice::<Declaration>(f.body)
            .map(|d| {
                note_signed(table, d.signature.as_ref());
                table.restore_declaration(&d, f.body);
                table.touch(&d.waybill, f.day);
                if let Some(day) = pending.remove(&d.waybill) {
                    table.count(&d.waybill, day);
                }
            })
            .is_ok(),
        log::Kind::Instruction => serde_json::from_slice::<Instruction>(f.body)
            .map(|i| {
                note_signed(table, i.signature.as_ref());
                table.restore_instruction(&i);
                table.touch(&i.waybill, f.day);
            })
            .is_ok(),
        log::Kind::Notice => serde_json::from_slice::<EnterpriseNotice>(f.body)
            .map(|n| {
                note_signed(table, n.signature.as_ref());
                table.restore_notice(&n)
            })
            .is_ok(),
        log::Kind::InstructionId => text().map(|id| table.mark_instruction_seen(id)).is_some(),
        log::Kind::NoticeId => text().map(|id| table.mark_notice_seen(id)).is_some(),
        log::Kind::Forget => text()
            .map(|w| {
                table.forget_waybill(w);
                pending.remove(w);
            })
            .is_some(),
        log::Kind::Counted => text()
            .map(|w| {
                if table.known(w).declaration.is_none() {
                    pending.insert(w.to_string(), f.day);
                } else {
                    table.count(w, f.day);
                }
            })
            .is_some(),
    }
}

/// A loaded message's signature time, as the platform's clock (see
/// [`ClearanceTable::note_platform_time`]): it was checked when it arrived, and its block's
/// tag when it was read.
fn note_signed(table: &ClearanceTable, signature: Option<&bondline_devices::signing::Signature>) {
    if let Some(s) = signature {
        table.note_platform_time(s.signed_at_ms);
    }
}

/// A unit of the log that failed its integrity check: each message it seems to hold gets its
/// fail-closed stand-in (read without trusting it, only to know which waybills and
/// enterprises to hold), and is noted; a unit that does not even read is noted whole.
fn refuse_unit(
    table: &ClearanceTable,
    day: u32,
    offset: u64,
    stored: &[u8],
    why: &'static str,
    refused: &mut Vec<RefusedEntry>,
) {
    let before = refused.len();
    if let Ok(frames) = log::frames(crate::journal::integrity::payload(stored)) {
        for f in frames.map_while(Result::ok) {
            let tree = match f.kind {
                log::Kind::Declaration => TREE_DECLARATIONS,
                log::Kind::Instruction => TREE_INSTRUCTIONS,
                log::Kind::Notice => TREE_ENTERPRISES,
                _ => continue,
            };
            if let Some(subject) = log::subject(&f) {
                refuse_into(table, tree, &subject);
                refused.push(RefusedEntry {
                    tree,
                    key: subject,
                    why,
                });
            }
        }
    }
    if refused.len() == before {
        refused.push(RefusedEntry {
            tree: TREE_LOG,
            key: format!("{} offset {offset}", super::files::segment_name(day)),
            why,
        });
    }
}

/// Puts the fail-closed stand-in of a refused entry in the table: a refused instruction
/// becomes a hold, a refused notice a suspension; a refused declaration stays out, and
/// one held from before it is not used either (undeclared: held) until a newer one comes.
///
/// A stand-in is made now: only what the platform signs after this load replaces it, not a
/// message signed before, which may be the very release the refused hold replaced, replayed.
fn refuse_into(table: &ClearanceTable, tree: &str, key: &str) {
    const REASON: &str = "stored state failed its integrity check";
    let now = crate::metrics::unix_ms(std::time::SystemTime::now());
    match tree {
        TREE_INSTRUCTIONS => table.restore_stand_in(
            &Instruction {
                schema: SCHEMA,
                instruction_id: String::new(),
                waybill: key.to_string(),
                action: Action::Hold,
                reason: REASON.into(),
                issued_at_ms: None,
                signature: None,
            },
            now,
        ),
        TREE_ENTERPRISES => table.restore_stand_in_notice(
            &EnterpriseNotice {
                schema: SCHEMA,
                notice_id: String::new(),
                enterprise: key.to_string(),
                action: EnterpriseAction::Suspend,
                reason: REASON.into(),
                issued_at_ms: None,
                signature: None,
            },
            now,
        ),
        TREE_DECLARATIONS => table.refuse_declaration(key),
        _ => {}
    }
}
