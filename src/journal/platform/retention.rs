//! Forgetting what the platform said once it is old (see the module's doc): every message
//! of the platform log carries the UTC day it was stored, the clearance table knows the day
//! each waybill was last stored, and [`Journal::purge_clearance`] rewrites the log's old
//! units without what is forgotten, folding the consumer history of forgotten declarations
//! into day totals. Its own module because retention is a policy over the stored state,
//! apart from how a message is stored or loaded.

use std::collections::HashSet;

use bondline_devices::contract::Instruction;

use super::log;
use super::units::{key_seq, FIRST_SEQ};
use super::{be_u32, today, TREE_LOG};
use crate::journal::integrity::{self, Checked};
use crate::journal::{Journal, JournalError};
use crate::rules::RetentionFacts;

/// `history` key: the UTC day, then the consumer.
fn history_key(day: u32, consumer: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + consumer.len());
    k.extend_from_slice(&day.to_be_bytes());
    k.extend_from_slice(consumer.as_bytes());
    k
}

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

impl Journal {
    /// Forgets waybills stored last before UTC day `before_day` and instruction ids seen
    /// before it, examining at most about `max` messages (call again while
    /// [`Forgotten::more`]). `facts` is the loaded clearance table's
    /// ([`crate::rules::ClearanceTable::retention_facts`]): a waybill whose declaration or
    /// instruction was stored on `before_day` or later is kept whole, however old its first
    /// message; one the table does not hold is forgotten. So the table must be loaded before
    /// any purge. A forgotten declaration that was counted in its consumer's history leaves
    /// its day total behind (written before its messages go: a crash between errs strict);
    /// day totals older than the longest window go too. Enterprise notices are kept.
    ///
    /// The log is read from its start, unit by unit, up to the first appended unit whose
    /// oldest message is not old; each unit is rewritten without what is forgotten, marked as
    /// checked against `before_day` (passed over by the next step), or removed once empty.
    /// Units moved from an older build, whose days are mixed, are all read. Days are
    /// appended in order (each message is stored on the day it arrives); should the clock
    /// step back over midnight, what was stored after the step is forgotten a day late.
    pub fn purge_clearance(
        &self,
        before_day: u32,
        max: usize,
        facts: &dyn Fn(&str) -> Option<RetentionFacts>,
    ) -> Result<Forgotten, JournalError> {
        let mut out = Forgotten::default();
        let mut cursor = self.purge_cursor.lock().unwrap_or_else(|e| e.into_inner());
        let mut from = match *cursor {
            Some((day, at)) if day == before_day => at,
            _ => 0,
        };
        let mut gone: HashSet<String> = HashSet::new();
        let mut examined = 0usize;
        loop {
            if examined >= max {
                out.more = true;
                break;
            }
            let tail = self.tail();
            let Some((k, v)) = self
                .platform_log
                .range(from.to_be_bytes()..)
                .next()
                .transpose()?
            else {
                break;
            };
            let Some(seq) = key_seq(&k) else {
                from = u64::MAX;
                break;
            };
            from = seq.saturating_add(1);
            let Ok(h) = log::header(integrity::payload(&v)) else {
                continue;
            };
            if h.oldest_day >= before_day {
                if seq >= FIRST_SEQ {
                    from = seq;
                    break;
                }
                continue;
            }
            if h.checked >= before_day {
                continue;
            }
            // A unit that does not verify is left as it lies (the load refuses it).
            let payload = match self.integrity_key.get() {
                None => integrity::payload(&v),
                Some(key) => match key.check(TREE_LOG.as_bytes(), &k, &v) {
                    Checked::Genuine(p) => p,
                    _ => continue,
                },
            };
            let Ok(frames) = log::frames(payload).and_then(|f| f.collect::<Result<Vec<_>, _>>())
            else {
                continue;
            };
            examined += frames.len();
            let mut kept = Vec::with_capacity(frames.len());
            for f in frames {
                if self.keeps(&f, before_day, facts, &mut gone, &mut out)? {
                    kept.push(f);
                }
            }
            if kept.is_empty() {
                self.platform_log.remove(&k)?;
                self.platform_grow(0, (k.len() + v.len()) as u64);
            } else {
                let unit = self.seal(TREE_LOG, &k, log::encode(h.flags, before_day, kept));
                self.platform_grow((k.len() + unit.len()) as u64, (k.len() + v.len()) as u64);
                self.platform_log.insert(&k, unit)?;
            }
            drop(tail);
        }
        *cursor = Some((before_day, from));
        let oldest = today().saturating_sub(crate::rules::history::KEEP_DAYS);
        for k in self.history.range(..oldest.to_be_bytes()).keys() {
            self.history.remove(k?)?;
        }
        Ok(out)
    }

    /// Whether the purge keeps message `f` (see [`Journal::purge_clearance`]); notes what it
    /// forgets in `out` and the waybills forgotten in this step in `gone`.
    fn keeps(
        &self,
        f: &log::Frame<'_>,
        before_day: u32,
        facts: &dyn Fn(&str) -> Option<RetentionFacts>,
        gone: &mut HashSet<String>,
        out: &mut Forgotten,
    ) -> Result<bool, JournalError> {
        let instruction_id = |f: &log::Frame<'_>| {
            serde_json::from_slice::<Instruction>(f.body)
                .ok()
                .map(|i| i.instruction_id)
        };
        match f.kind {
            log::Kind::Notice | log::Kind::NoticeId => Ok(true),
            log::Kind::InstructionId => {
                if f.day >= before_day {
                    return Ok(true);
                }
                out.instruction_ids
                    .push(String::from_utf8_lossy(f.body).into_owned());
                Ok(false)
            }
            log::Kind::Declaration | log::Kind::Instruction | log::Kind::Counted => {
                let Some(waybill) = log::subject(f) else {
                    return Ok(f.day >= before_day);
                };
                if !gone.contains(&waybill) {
                    let held = facts(&waybill);
                    if held.as_ref().is_some_and(|h| h.touched_day >= before_day) {
                        return Ok(true);
                    }
                    if let Some((day, consumer, value)) =
                        held.as_ref().and_then(|h| h.counted.clone())
                    {
                        self.add_to_history(day, &consumer, value)?;
                    }
                    if held.is_some() {
                        out.waybills.push(waybill.clone());
                    }
                    gone.insert(waybill);
                }
                if f.kind == log::Kind::Instruction {
                    out.instruction_ids.extend(instruction_id(f));
                }
                Ok(false)
            }
        }
    }

    /// Adds one counted parcel of `value` to `consumer`'s stored day total of `day`.
    fn add_to_history(&self, day: u32, consumer: &str, value: u64) -> Result<(), JournalError> {
        let key = history_key(day, consumer);
        let (parcels, total) = self
            .history
            .get(&key)?
            .map(|v| decode_total(&v))
            .unwrap_or((0, 0));
        let mut v = Vec::with_capacity(12);
        v.extend_from_slice(&parcels.saturating_add(1).to_be_bytes());
        v.extend_from_slice(&total.saturating_add(value).to_be_bytes());
        self.history.insert(key, v)?;
        Ok(())
    }
}
