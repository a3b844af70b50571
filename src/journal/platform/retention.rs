//! Forgetting what the platform said once it is old (see the module's doc): every stored
//! waybill and instruction id is dated by UTC day in `aging`, and [`Journal::purge_clearance`]
//! removes what was stored before a cutoff, folding the consumer history of forgotten
//! declarations into day totals. Its own module because retention is a policy over the
//! stored state, apart from how a message is stored or loaded.

use bondline_devices::contract::Declaration;

use super::{be_u32, today};
use crate::journal::integrity;
use crate::journal::{Journal, JournalError};

const META_AGES_BACKFILLED: &[u8] = b"ages_backfilled";

/// What an `aging` entry ages: a waybill's stored state, or an instruction id.
const AGE_WAYBILL: u8 = b'w';
const AGE_INSTRUCTION_ID: u8 = b'i';

/// `aging` key: the UTC day (big-endian, so keys sort by day), the kind, the name.
fn age_key(day: u32, kind: u8, name: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + name.len());
    k.extend_from_slice(&day.to_be_bytes());
    k.push(kind);
    k.extend_from_slice(name);
    k
}

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
    /// Gives state stored before ages were kept (an older build) the age `day`, once, so it
    /// is forgotten in its turn. Returns how many entries it aged.
    pub fn backfill_ages(&self, day: u32) -> Result<usize, JournalError> {
        if self.meta.contains_key(META_AGES_BACKFILLED)? {
            return Ok(0);
        }
        let mut n = 0;
        for key in self
            .declarations
            .iter()
            .keys()
            .chain(self.instructions.iter().keys())
        {
            let key = key?;
            if !self.received.contains_key(&key)? {
                self.received.insert(&key, &day.to_be_bytes())?;
                self.aging.insert(age_key(day, AGE_WAYBILL, &key), &[])?;
                n += 1;
            }
        }
        for key in self.instruction_ids.iter().keys() {
            self.aging
                .insert(age_key(day, AGE_INSTRUCTION_ID, &key?), &[])?;
            n += 1;
        }
        self.meta.insert(META_AGES_BACKFILLED, &[])?;
        Ok(n)
    }

    /// Notes that `waybill`'s state was stored on `day`.
    pub(super) fn touch_waybill(&self, waybill: &str, day: u32) -> Result<(), JournalError> {
        let last = self
            .received
            .insert(waybill.as_bytes(), &day.to_be_bytes())?;
        if last.as_deref().and_then(be_u32) != Some(day) {
            self.aging
                .insert(age_key(day, AGE_WAYBILL, waybill.as_bytes()), &[])?;
        }
        Ok(())
    }

    pub(super) fn touch_instruction_id(&self, id: &str, day: u32) -> Result<(), JournalError> {
        self.aging
            .insert(age_key(day, AGE_INSTRUCTION_ID, id.as_bytes()), &[])?;
        Ok(())
    }

    /// Forgets waybills and instruction ids stored before UTC day `before_day`, at most
    /// `max` of them (call again while [`Forgotten::more`]). A waybill stored again since
    /// is kept. A forgotten declaration that was counted in its consumer's history leaves
    /// its day total behind; day totals older than the longest window go too.
    pub fn purge_clearance(&self, before_day: u32, max: usize) -> Result<Forgotten, JournalError> {
        let mut out = Forgotten::default();
        let end = age_key(before_day, 0, &[]);
        for (seen, entry) in self.aging.range(..end).enumerate() {
            if seen == max {
                out.more = true;
                break;
            }
            let (k, _) = entry?;
            let (Some(day), Some(&kind)) = (be_u32(&k), k.get(4)) else {
                self.aging.remove(&k)?;
                continue;
            };
            let name = &k[5..];
            match kind {
                AGE_WAYBILL => {
                    let last = self.received.get(name)?.as_deref().and_then(be_u32);
                    if last.is_none_or(|l| l <= day) {
                        self.fold_into_history(name)?;
                        let d = self.declarations.remove(name)?;
                        self.platform_change(name, d.as_deref(), None);
                        let i = self.instructions.remove(name)?;
                        self.platform_change(name, i.as_deref(), None);
                        self.counted.remove(name)?;
                        self.received.remove(name)?;
                        out.waybills
                            .push(String::from_utf8_lossy(name).into_owned());
                    }
                }
                AGE_INSTRUCTION_ID => {
                    let old = self.instruction_ids.remove(name)?;
                    self.platform_change(name, old.as_deref(), None);
                    out.instruction_ids
                        .push(String::from_utf8_lossy(name).into_owned());
                }
                _ => {}
            }
            self.aging.remove(&k)?;
        }
        let oldest = today().saturating_sub(crate::rules::history::KEEP_DAYS);
        for k in self.history.range(..oldest.to_be_bytes()).keys() {
            self.history.remove(k?)?;
        }
        Ok(out)
    }

    /// Adds a counted declaration's parcel to its consumer's stored day total.
    pub(super) fn fold_into_history(&self, waybill: &[u8]) -> Result<(), JournalError> {
        let Some(day) = self.counted.get(waybill)?.as_deref().and_then(be_u32) else {
            return Ok(());
        };
        let Some(d) = self
            .declarations
            .get(waybill)?
            .and_then(|v| serde_json::from_slice::<Declaration>(integrity::payload(&v)).ok())
        else {
            return Ok(());
        };
        let Some(consumer) = d.consumer else {
            return Ok(());
        };
        let key = history_key(day, &consumer);
        let (parcels, value) = self
            .history
            .get(&key)?
            .map(|v| decode_total(&v))
            .unwrap_or((0, 0));
        let mut v = Vec::with_capacity(12);
        v.extend_from_slice(&parcels.saturating_add(1).to_be_bytes());
        v.extend_from_slice(
            &value
                .saturating_add(d.value_minor.unwrap_or(0))
                .to_be_bytes(),
        );
        self.history.insert(key, v)?;
        Ok(())
    }
}
