//! Consumers' histories: each declared parcel with a consumer is counted once, on the day
//! of its first scan, in a history sharded by consumer (the per-consumer limits read it
//! through [`super::lookup`]); totals of forgotten declarations are added back at start.

use super::shard::{counted_day, Entry, NOT_COUNTED};
use super::{ClearanceTable, HISTORY_SHARDS, NONE};

impl ClearanceTable {
    /// Consumers with purchases in the kept history.
    pub fn consumers(&self) -> usize {
        (0..self.history.count())
            .map(|i| self.history.read(i).consumers())
            .sum()
    }

    /// Adds the entry's parcel to its consumer's history on `day`, once.
    pub(super) fn count_entry(&self, e: &mut Entry, day: u32) -> bool {
        if !e.declared() || e.consumer == NONE || e.counted_day != NOT_COUNTED {
            return false;
        }
        e.counted_day = counted_day(day);
        self.history
            .write(e.consumer as usize % HISTORY_SHARDS)
            .add(e.consumer, day, e.value().unwrap_or(0));
        true
    }

    /// Adds stored day totals of forgotten declarations to `consumer`'s history (at start).
    pub fn add_history(&self, consumer: &str, day: u32, parcels: u32, value_minor: u64) {
        let id = self.strings.intern(consumer);
        self.history
            .write(id as usize % HISTORY_SHARDS)
            .add_totals(id, day, parcels, value_minor);
    }

    /// Adds the parcel of `waybill` to its consumer's history on `day`, once per waybill.
    /// Returns whether it was added now (declared with a consumer, not counted before).
    pub fn count(&self, waybill: &str, day: u32) -> bool {
        let place = self.place(waybill);
        let mut shard = self.shards.write(place.shard);
        let Some(i) = shard.find(place, waybill) else {
            return false;
        };
        self.count_entry(&mut shard.entries[i], day)
    }
}
