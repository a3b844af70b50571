//! Consumers' recent purchases, for limits over rolling windows ("self-use, in reasonable
//! quantity").
//!
//! A consumer's history is a short list of day totals (parcels and declared value), kept for
//! [`KEEP_DAYS`] days: enough for a one-year window. A window of `n` days is the day of the
//! parcel and the `n - 1` days before it; a calendar window runs from the first day of its
//! month or year (see [`crate::rules::calendar`]). Days are local days since 1970-01-01 in the
//! configured time zone (UTC days for history stored before the zone was). Pure data: the
//! journal persists which waybills were counted and rebuilds this at start.

use std::collections::HashMap;

use smallvec::SmallVec;

use crate::rules::engine::ConsumerWindow;

/// Days of history kept: the longest window a rule may ask for.
pub const KEEP_DAYS: u32 = 366;

/// The UTC day number of a Unix time in milliseconds (for the history's own retention; the
/// days a consumer is counted on are local, see [`crate::rules::calendar::Calendar::day_of`]).
pub fn day_of(unix_ms: u64) -> u32 {
    (unix_ms / 86_400_000) as u32
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DayTotal {
    day: u32,
    parcels: u32,
    value_minor: u64,
}

/// A consumer's day totals, oldest first. Most cross-border buyers buy on one day of the
/// year: that day is kept inline, in the map's own slot (24 bytes), instead of in an
/// allocation of its own (a `Vec` would take 24 bytes in the slot and 80 on the heap).
type Days = SmallVec<[DayTotal; 1]>;

/// Day totals per consumer. Consumers are numbered by the caller (interned ids).
#[derive(Debug, Default, Clone)]
pub struct ConsumerHistory {
    by_consumer: HashMap<u32, Days>,
}

impl ConsumerHistory {
    /// Consumers with any history.
    pub fn consumers(&self) -> usize {
        self.by_consumer.len()
    }

    /// Adds one parcel of `value_minor` on `day`. Days older than [`KEEP_DAYS`] before `day`
    /// are dropped on the way.
    pub fn add(&mut self, consumer: u32, day: u32, value_minor: u64) {
        self.add_totals(consumer, day, 1, value_minor);
    }

    /// Adds `parcels` parcels worth `value_minor` in all on `day`.
    pub fn add_totals(&mut self, consumer: u32, day: u32, parcels: u32, value_minor: u64) {
        if parcels == 0 {
            return;
        }
        let days = self.by_consumer.entry(consumer).or_default();
        let oldest = day.saturating_sub(KEEP_DAYS - 1);
        days.retain(|d| d.day >= oldest);
        match days.binary_search_by_key(&day, |d| d.day) {
            Ok(i) => {
                days[i].parcels = days[i].parcels.saturating_add(parcels);
                days[i].value_minor = days[i].value_minor.saturating_add(value_minor);
            }
            Err(i) => days.insert(
                i,
                DayTotal {
                    day,
                    parcels,
                    value_minor,
                },
            ),
        }
    }

    /// Takes back one parcel of `value_minor` on `day` (a declaration that changed after its
    /// parcel was counted).
    pub fn remove(&mut self, consumer: u32, day: u32, value_minor: u64) {
        let Some(days) = self.by_consumer.get_mut(&consumer) else {
            return;
        };
        if let Ok(i) = days.binary_search_by_key(&day, |d| d.day) {
            days[i].parcels = days[i].parcels.saturating_sub(1);
            days[i].value_minor = days[i].value_minor.saturating_sub(value_minor);
            if days[i].parcels == 0 {
                days.remove(i);
            }
        }
        if days.is_empty() {
            self.by_consumer.remove(&consumer);
        }
    }

    /// The consumer's totals over the days `first..=today`.
    pub fn window(&self, consumer: u32, first: u32, today: u32) -> ConsumerWindow {
        let Some(days) = self.by_consumer.get(&consumer) else {
            return ConsumerWindow::default();
        };
        let mut w = ConsumerWindow::default();
        for d in days.iter().rev() {
            if d.day < first {
                break;
            }
            if d.day <= today {
                w.parcels = w.parcels.saturating_add(d.parcels);
                w.value_minor = w.value_minor.saturating_add(d.value_minor);
            }
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_roll_by_day() {
        let mut h = ConsumerHistory::default();
        h.add(7, 100, 10);
        h.add(7, 100, 5);
        h.add(7, 101, 1);
        h.add(7, 300, 100);
        let w = |h: &ConsumerHistory, today: u32, n: u32| {
            let w = h.window(7, (today + 1).saturating_sub(n), today);
            (w.parcels, w.value_minor)
        };
        assert_eq!(w(&h, 101, 1), (1, 1));
        assert_eq!(w(&h, 101, 2), (3, 16));
        assert_eq!(w(&h, 300, 199), (1, 100));
        assert_eq!(w(&h, 300, 200), (2, 101));
        assert_eq!(w(&h, 300, 366), (4, 116));
        assert_eq!(h.window(8, 0, 300), ConsumerWindow::default());
        h.remove(7, 100, 10);
        assert_eq!(w(&h, 100, 1), (1, 5));
    }

    #[test]
    fn one_day_fits_in_the_slot() {
        assert_eq!(std::mem::size_of::<Days>(), 24);
        let mut h = ConsumerHistory::default();
        h.add(3, 10, 5);
        assert!(!h.by_consumer[&3].spilled(), "one day needs no allocation");
        h.add(3, 11, 5);
        assert_eq!(h.window(3, 10, 11).parcels, 2);
    }

    #[test]
    fn old_days_are_dropped() {
        let mut h = ConsumerHistory::default();
        h.add(1, 10, 1);
        h.add(1, 10 + KEEP_DAYS, 1);
        assert_eq!(h.window(1, 0, 10 + KEEP_DAYS).parcels, 1);
        h.remove(1, 10 + KEEP_DAYS, 1);
        assert_eq!(h.consumers(), 0);
    }
}
