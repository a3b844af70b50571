//! The consumers' day totals of forgotten declarations, kept for the longest consumer-limit
//! window after the declarations themselves are forgotten.
//!
//! Two trees hold the same totals: `history` by day, then consumer (old days go by a range
//! of keys), and `history_by_consumer`, one value per consumer holding all its days, which
//! the clearance table reads with one lookup when a consumer's first held declaration
//! arrives ([`StoredDays`]). The table keeps in
//! memory only the consumers of held declarations, so a year of one-off buyers stays on disk.
//!
//! A total is written to `history` first, and `history_by_consumer` is set to the same
//! total (not added to), so the two agree after every write. A crash before the store's
//! flush makes retention fold the same segment again (its segment goes only once the totals
//! are durable): a parcel may then count twice, never less. The index is built from
//! `history` once, at the first load of a store that lacks it (a store of an older build, or
//! a salvaged one); built again after a crash half way, it sets the same values. A build
//! older than the index writes only `history`: after running one on this store, `journal
//! salvage` builds the index afresh (the salvaged store has none).

use std::sync::{Arc, Weak};

use sled::Tree;

use super::retention::decode_total;
use crate::journal::{Journal, JournalError};
use crate::rules::history::{StoredDay, StoredHistory};

/// Set once `history_by_consumer` holds everything `history` does.
const META_HISTORY_INDEXED: &[u8] = b"history_by_consumer";

/// `history` key: the UTC day, then the consumer.
pub(super) fn by_day_key(day: u32, consumer: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + consumer.len());
    k.extend_from_slice(&day.to_be_bytes());
    k.extend_from_slice(consumer);
    k
}

/// A consumer's days in `history_by_consumer`, oldest first, 16 bytes each: the day, the
/// parcels and the value (big-endian).
fn decode_days(v: &[u8]) -> Result<Vec<StoredDay>, String> {
    if v.len() % 16 != 0 {
        return Err(format!(
            "consumer history store: a consumer's days are {} bytes, not a multiple of 16",
            v.len()
        ));
    }
    Ok(v.chunks_exact(16)
        .map(|c| {
            let day = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
            let (parcels, value) = decode_total(&c[4..]);
            (day, parcels, value)
        })
        .collect())
}

fn encode_days(days: &[StoredDay]) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 * days.len());
    for &(day, parcels, value) in days {
        v.extend_from_slice(&day.to_be_bytes());
        v.extend_from_slice(&encode_total(parcels, value));
    }
    v
}

fn encode_total(parcels: u32, value: u64) -> [u8; 12] {
    let mut v = [0u8; 12];
    v[..4].copy_from_slice(&parcels.to_be_bytes());
    v[4..].copy_from_slice(&value.to_be_bytes());
    v
}

/// The stored day totals, read by consumer (see the module's doc). It does not keep the
/// store open: once the journal is closed, every read fails (and the consumer's history is
/// unknown).
#[derive(Debug, Clone)]
pub struct StoredDays {
    by_consumer: Weak<Tree>,
}

impl StoredDays {
    /// Whether no day total is stored.
    pub fn is_empty(&self) -> bool {
        self.by_consumer.upgrade().is_none_or(|t| t.is_empty())
    }
}

impl StoredHistory for StoredDays {
    fn days_of(&self, consumer: &str) -> Result<Vec<StoredDay>, String> {
        let tree = self
            .by_consumer
            .upgrade()
            .ok_or("consumer history store: the journal is closed")?;
        let v = tree
            .get(consumer.as_bytes())
            .map_err(|e| format!("consumer history store: {e}"))?;
        v.map_or(Ok(Vec::new()), |v| decode_days(&v))
    }
}

impl Journal {
    /// The stored day totals by consumer, built from `history` first if this store has not
    /// had them yet (see the module's doc).
    pub fn stored_days(&self) -> Result<StoredDays, JournalError> {
        self.index_history(&mut || false)?;
        Ok(StoredDays {
            by_consumer: Arc::downgrade(&self.history_by_consumer),
        })
    }

    /// Builds `history_by_consumer` from `history` if this store has not had it yet, calling
    /// `tick` after each total (a start's load counts them as progress); false, with the
    /// index left to build again, once `tick` says stop.
    pub(super) fn index_history(
        &self,
        tick: &mut dyn FnMut() -> bool,
    ) -> Result<bool, JournalError> {
        if self.meta.get(META_HISTORY_INDEXED)?.is_some() {
            return Ok(true);
        }
        let mut n = 0u64;
        for entry in self.history.iter() {
            let (k, v) = entry?;
            if let Some(day) = super::be_u32(&k) {
                let (parcels, value) = decode_total(&v);
                self.set_consumer_day(&k[4..], day, |_| (parcels, value))?;
                n += 1;
            }
            if tick() {
                return Ok(false);
            }
        }
        self.history_by_consumer.flush()?;
        self.meta.insert(META_HISTORY_INDEXED, &[1u8][..])?;
        if n > 0 {
            tracing::info!(
                totals = n,
                "consumers' stored day totals indexed by consumer"
            );
        }
        Ok(true)
    }

    /// Adds one counted parcel of `value` to `consumer`'s stored day total of `day` (what
    /// retention does for a forgotten declaration that was counted; public for tools).
    pub fn add_to_history(&self, day: u32, consumer: &str, value: u64) -> Result<(), JournalError> {
        let key = by_day_key(day, consumer.as_bytes());
        let (parcels, total) = self
            .history
            .get(&key)?
            .map(|v| decode_total(&v))
            .unwrap_or((0, 0));
        let (parcels, total) = (parcels.saturating_add(1), total.saturating_add(value));
        self.history
            .insert(key, &encode_total(parcels, total)[..])?;
        self.set_consumer_day(consumer.as_bytes(), day, |_| (parcels, total))?;
        Ok(())
    }

    /// Sets `consumer`'s total of `day` in `history_by_consumer` to what `f` makes of the
    /// one stored (`None`: none); a total of no parcels removes the day, and a consumer
    /// left without days goes.
    fn set_consumer_day(
        &self,
        consumer: &[u8],
        day: u32,
        f: impl FnOnce(Option<(u32, u64)>) -> (u32, u64),
    ) -> Result<(), JournalError> {
        // A damaged value is left as it is: its reads say unknown (over every limit), and
        // retention goes on with the others.
        let mut days = match self.history_by_consumer.get(consumer)? {
            Some(v) => match decode_days(&v) {
                Ok(days) => days,
                Err(e) => {
                    tracing::error!(error = %e, "a consumer's stored days are damaged: left as they are, and every limit over them is taken as exceeded");
                    return Ok(());
                }
            },
            None => Vec::new(),
        };
        let at = days.binary_search_by_key(&day, |d| d.0);
        let (parcels, value) = f(at.ok().map(|i| (days[i].1, days[i].2)));
        match (at, parcels) {
            (Ok(i), 0) => {
                days.remove(i);
            }
            (Ok(i), _) => days[i] = (day, parcels, value),
            (Err(_), 0) => return Ok(()),
            (Err(i), _) => days.insert(i, (day, parcels, value)),
        }
        if days.is_empty() {
            self.history_by_consumer.remove(consumer)?;
        } else {
            self.history_by_consumer
                .insert(consumer, encode_days(&days))?;
        }
        Ok(())
    }

    /// Forgets the day totals of days before `oldest`.
    pub(super) fn drop_history_before(&self, oldest: u32) -> Result<(), JournalError> {
        for k in self.history.range(..oldest.to_be_bytes()).keys() {
            let k = k?;
            if let Some(day) = super::be_u32(&k) {
                self.set_consumer_day(&k[4..], day, |_| (0, 0))?;
            }
            self.history.remove(k)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_consumers_name_never_reads_anothers_days() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        j.add_to_history(10, "ab", 5).unwrap();
        j.add_to_history(10, "ab", 7).unwrap();
        j.add_to_history(11, "abc", 1).unwrap();
        let days = j.stored_days().unwrap();
        assert_eq!(days.days_of("ab").unwrap(), vec![(10, 2, 12)]);
        assert_eq!(days.days_of("abc").unwrap(), vec![(11, 1, 1)]);
        assert!(days.days_of("a").unwrap().is_empty());
        j.drop_history_before(11).unwrap();
        assert!(days.days_of("ab").unwrap().is_empty());
        assert_eq!(days.days_of("abc").unwrap(), vec![(11, 1, 1)]);
    }

    #[test]
    fn a_store_without_the_index_gets_it_from_the_day_totals() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path()).unwrap();
        // As an older build left it: totals by day only.
        j.history
            .insert(by_day_key(20, b"c1"), &encode_total(3, 30)[..])
            .unwrap();
        j.history
            .insert(by_day_key(21, b"c1"), &encode_total(1, 5)[..])
            .unwrap();
        let days = j.stored_days().unwrap();
        assert_eq!(days.days_of("c1").unwrap(), vec![(20, 3, 30), (21, 1, 5)]);
        // Built once: what is written later is kept in both by every write.
        j.add_to_history(22, "c1", 2).unwrap();
        assert_eq!(j.stored_days().unwrap().days_of("c1").unwrap().len(), 3);
    }
}
