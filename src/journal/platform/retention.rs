//! Forgetting what the platform said once it is old (see the module's doc): every message
//! of the platform log carries the UTC day it was stored, the clearance table knows the day
//! each waybill was last stored, and [`Journal::purge_clearance`] rewrites the log's old
//! units without what is forgotten, folding the consumer history of forgotten declarations
//! into day totals. Its own module because retention is a policy over the stored state,
//! apart from how a message is stored or loaded.

use std::collections::{BTreeMap, HashSet};

use bondline_devices::contract::{EnterpriseNotice, Instruction};

use super::files::{self, block_key, ReadError};
use super::log;
use super::{be_u32, today, TREE_LOG};
use crate::journal::integrity::{self, Checked};
use crate::journal::{Journal, JournalError};
use crate::rules::clearance::Taken;
use crate::rules::ClearanceTable;

/// What [`Journal::purge_clearance`] forgot, for the clearance table to forget too.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Forgotten {
    pub waybills: Vec<String>,
    pub instruction_ids: Vec<String>,
    /// Whether entries older than the cutoff may remain (the purge stopped at its limit).
    pub more: bool,
}

/// A stored consumer day total: parcels (`u32`) and value (`u64`), big-endian.
pub(super) fn decode_total(v: &[u8]) -> (u32, u64) {
    let parcels = be_u32(v).unwrap_or(0);
    let value = v
        .get(4..12)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0);
    (parcels, value)
}

/// A frame read from a segment, owned: kind, day, subject, body.
type Owned = (log::Kind, u32, Vec<u8>, Vec<u8>);

impl Journal {
    /// Forgets waybills stored last before UTC day `before_day` and instruction ids seen
    /// before it, examining at most about `max` messages (call again while
    /// [`Forgotten::more`]). `table` is the loaded clearance table: a waybill whose
    /// declaration or instruction was stored on `before_day` or later
    /// ([`ClearanceTable::retention_facts`]) is kept, however old its first message; one the
    /// table does not hold is forgotten. So the table must be loaded before any purge. A
    /// waybill forgotten is taken out of `table` here ([`ClearanceTable::take_waybill`]),
    /// and its parcel, if counted, leaves its day total behind (durable before the step's
    /// Forget marks: a crash between counts it twice, never less); day totals older than the
    /// longest window go too. Enterprise notices in force and notice ids are kept.
    ///
    /// The log's segments of days before `before_day` are read block by block: what is kept
    /// of them and still in force (the declaration, instruction, notice and counted mark the
    /// table holds) is written again at the end of the segment of the day its waybill was
    /// last stored (a notice: the newest), made durable, and then a finished segment is
    /// deleted whole. A message replaced since is not carried, so carrying never puts an
    /// older message after a newer one of its kind, and a carried message is forgotten with
    /// the segment of its waybill's newest. Stopped half way (a crash), a segment is read
    /// again from its start; what was carried already is carried once more, which loads the
    /// same.
    pub fn purge_clearance(
        &self,
        before_day: u32,
        max: usize,
        table: &ClearanceTable,
    ) -> Result<Forgotten, JournalError> {
        let mut out = Forgotten::default();
        // Nothing is taken out of the table while the consumers' totals cannot be written.
        // An older build's totals not moved at the load (the file could not be used then).
        if !self.move_history(&mut || false)? {
            return Ok(out);
        }
        self.consumer_days_usable()?;
        // Files lost from the disk are refused at every start until their day is past the
        // period too (one found gone only now is reported by the next check of the files).
        self.platform_log.forget_lost_before(before_day)?;
        let mut cursor = self.purge_cursor.lock().unwrap_or_else(|e| e.into_inner());
        let (mut day_at, mut offset) = match *cursor {
            Some((cut, day, offset)) if cut == before_day => (day, offset),
            _ => (0, 0),
        };
        let mut gone: HashSet<String> = HashSet::new();
        let mut examined = 0usize;
        let key = self.integrity_key.get();
        let segments: Vec<u32> = self
            .platform_log
            .segments()?
            .into_iter()
            .map(|(d, _)| d)
            .filter(|&d| d < before_day && d >= day_at)
            .collect();
        for day in segments {
            if day != day_at {
                (day_at, offset) = (day, 0);
            }
            if offset == 0 && !self.segment_whole(day)? {
                // Kept whole: its refused blocks' stand-ins (holds, suspensions) must not go
                // while the waybills they hold are kept; nothing in it is forgotten, here or
                // in the table, until the operator acts (README, A damaged journal).
                tracing::warn!(
                    segment = %files::segment_name(day),
                    "a platform log file holding refused or damaged blocks is kept past the clearance period"
                );
                (day_at, offset) = (day + 1, 0);
                continue;
            }
            // What is carried, by the segment it goes to.
            let mut carried: BTreeMap<u32, Vec<Owned>> = BTreeMap::new();
            let mut next = offset;
            let mut failed = None;
            let forgotten_before = out.waybills.len();
            // Taken out of the table by this step, released once their totals are durable.
            let mut taken: Vec<Taken> = Vec::new();
            let read = self.platform_log.read(day, offset, &mut |b| {
                next = b.offset + files::BLOCK_HEADER as u64 + b.payload.len() as u64;
                let payload = match key {
                    None => integrity::payload(&b.payload),
                    Some(k) => {
                        match k.check(TREE_LOG.as_bytes(), &block_key(day, b.offset), &b.payload) {
                            Checked::Genuine(p) => p,
                            // A block that does not verify goes with its segment: it would
                            // have been forgotten by now.
                            _ => return Ok(true),
                        }
                    }
                };
                let Ok(frames) = log::frames(payload) else {
                    return Ok(true);
                };
                for f in frames.map_while(Result::ok) {
                    examined += 1;
                    match self.carries(&f, before_day, table, &mut gone, &mut taken, &mut out) {
                        Ok(Some(to)) => carried.entry(to).or_default().push((
                            f.kind,
                            f.day,
                            f.subject.to_vec(),
                            f.body.to_vec(),
                        )),
                        Ok(None) => {}
                        Err(e) => {
                            failed = Some(e);
                            return Ok(false);
                        }
                    }
                }
                Ok(examined < max)
            });
            let finished = match (failed, read) {
                (Some(e), _) | (None, Err(ReadError::Journal(e))) => {
                    // Held again as they were; a later step takes them again.
                    taken.into_iter().for_each(|t| table.restore_taken(t));
                    return Err(e);
                }
                (None, Ok(())) => examined < max,
                // What follows a damaged block does not read: it goes with the segment.
                (None, Err(ReadError::Damaged(_))) => true,
            };
            // The day totals of what this step forgot are durable before any of its Forget
            // marks is written (a crash between folds the waybills again: counted twice,
            // never less), and before their consumers are released in the table (so that a
            // consumer's first declaration after that reads them). Totals that cannot be
            // written put the waybills back, and the step fails.
            let counted: Vec<(u32, &str, u64)> = taken
                .iter()
                .filter_map(|t| t.counted.as_ref().map(|(d, c, v)| (*d, &**c, *v)))
                .collect();
            let written = self.add_many_to_history(&counted);
            drop(counted);
            if let Err(e) = written {
                taken.into_iter().for_each(|t| table.restore_taken(t));
                return Err(e);
            }
            taken.into_iter().for_each(|t| table.release_taken(t));
            // The waybills forgotten leave a mark after everything of theirs still in the
            // log (a parcel counted after their last message was stored), so that a start
            // forgets them there as this table does now.
            let forgets: Vec<&String> = out.waybills[forgotten_before..].iter().collect();
            if !forgets.is_empty() {
                let newest = self.platform_log.newest().max(today());
                carried
                    .entry(newest)
                    .or_default()
                    .extend(forgets.into_iter().map(|w| {
                        (
                            log::Kind::Forget,
                            before_day,
                            Vec::new(),
                            w.as_bytes().to_vec(),
                        )
                    }));
            }
            for (to, frames) in &carried {
                let frames: Vec<log::Frame<'_>> = frames
                    .iter()
                    .map(|(kind, day, subject, body)| log::Frame {
                        kind: *kind,
                        day: *day,
                        subject,
                        body,
                    })
                    .collect();
                for unit in log::pack(&frames) {
                    let written = self.platform_log.append_sealed(*to, &unit)?;
                    self.platform_grow(written, 0);
                }
            }
            self.write_platform(true)?;
            if finished {
                let len = self
                    .platform_log
                    .segments()?
                    .into_iter()
                    .find(|(d, _)| *d == day)
                    .map_or(0, |(_, len)| len);
                // The day totals written for what it held were made durable by their step.
                self.platform_log.remove(day)?;
                self.platform_grow(0, len);
                (day_at, offset) = (day + 1, 0);
            } else {
                // Goes on with the block after the last one read.
                offset = next;
                out.more = true;
                break;
            }
        }
        *cursor = Some((before_day, day_at, offset));
        // What was forgotten above stays forgotten, whatever this does. A year counted back
        // from the day retention trusts (a clock set ahead does not drop the real year).
        let trusted = crate::retention::retention_day(today(), table.platform_clock_ms());
        if let Err(e) =
            self.drop_history_before(trusted.saturating_sub(crate::rules::history::KEEP_DAYS))
        {
            tracing::warn!(error = %e, "consumers' day totals older than a year not dropped; retrying later");
        }
        Ok(out)
    }

    /// Whether every block of the segment of `day` reads and verifies, with nothing but
    /// zeros after them.
    fn segment_whole(&self, day: u32) -> Result<bool, JournalError> {
        let key = self.integrity_key.get();
        let mut whole = true;
        let mut end = 0u64;
        let read = self.platform_log.read(day, 0, &mut |b| {
            end = b.offset + (files::BLOCK_HEADER + b.payload.len()) as u64;
            let genuine = b.intact
                && key.is_none_or(|k| {
                    matches!(
                        k.check(TREE_LOG.as_bytes(), &block_key(day, b.offset), &b.payload),
                        Checked::Genuine(_)
                    )
                });
            whole &= genuine;
            Ok(whole)
        });
        match read {
            Ok(()) => {}
            Err(ReadError::Damaged(_)) => return Ok(false),
            Err(ReadError::Journal(e)) => return Err(e),
        }
        let path = self.platform_log_dir().join(files::segment_name(day));
        let rest = files::first_nonzero(&path, end)
            .map_err(|e| JournalError::Store(sled::Error::Io(e)))?;
        Ok(whole && rest.is_none())
    }

    /// Where the purge carries message `f` of an old segment (see
    /// [`Journal::purge_clearance`]), or `None` when it is forgotten; notes what it forgets
    /// in `out` and the waybills forgotten in this step in `gone`. A waybill's message goes
    /// to the segment of the day the waybill was last stored, after its newest message, so
    /// that it is forgotten with it; a notice goes to the newest segment.
    fn carries(
        &self,
        f: &log::Frame<'_>,
        before_day: u32,
        table: &ClearanceTable,
        gone: &mut HashSet<String>,
        taken: &mut Vec<Taken>,
        out: &mut Forgotten,
    ) -> Result<Option<u32>, JournalError> {
        let newest = self.platform_log.newest().max(today());
        let instruction = |f: &log::Frame<'_>| serde_json::from_slice::<Instruction>(f.body).ok();
        match f.kind {
            log::Kind::NoticeId => Ok(Some(newest)),
            log::Kind::Notice => Ok(serde_json::from_slice::<EnterpriseNotice>(f.body)
                .is_ok_and(|n| table.notice_current(&n))
                .then_some(newest)),
            // An id seen is kept for the period from the day it was seen (one moved from an
            // older build is dated the day it was moved).
            log::Kind::InstructionId if f.day >= before_day => Ok(Some(newest)),
            log::Kind::InstructionId => {
                out.instruction_ids
                    .push(String::from_utf8_lossy(f.body).into_owned());
                Ok(None)
            }
            // Everything of its waybill before it is in this or an older segment, gone.
            log::Kind::Forget => Ok(None),
            log::Kind::Declaration | log::Kind::Instruction | log::Kind::Counted => {
                let Some(waybill) = log::subject(f) else {
                    return Ok(None);
                };
                if !gone.contains(&waybill) {
                    let held = table.retention_facts(&waybill);
                    if let Some(touched) = held
                        .as_ref()
                        .map(|h| h.touched_day)
                        .filter(|&t| t >= before_day)
                    {
                        // Kept: carried if still in force.
                        let current = match f.kind {
                            log::Kind::Declaration => table.declaration_current(&waybill, f.body),
                            log::Kind::Instruction => instruction(f).is_some_and(|i| {
                                table.instruction_current(&waybill, &i.instruction_id)
                            }),
                            _ => held
                                .as_ref()
                                .and_then(|h| h.counted.as_ref())
                                .is_some_and(|(day, _, _)| *day == f.day),
                        };
                        if !current && f.kind == log::Kind::Instruction {
                            out.instruction_ids
                                .extend(instruction(f).map(|i| i.instruction_id));
                        }
                        return Ok(current.then_some(touched));
                    }
                    if held.is_some() {
                        // Out of the table, with what it counted at that moment (a line may
                        // count its parcel up to then); its consumer stays until the step's
                        // day totals are written.
                        taken.extend(table.take_waybill(&waybill));
                        out.waybills.push(waybill.clone());
                    }
                    gone.insert(waybill);
                }
                if f.kind == log::Kind::Instruction {
                    out.instruction_ids
                        .extend(instruction(f).map(|i| i.instruction_id));
                }
                Ok(None)
            }
        }
    }
}
