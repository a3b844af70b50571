//! Consumers' recent purchases, for limits over rolling windows ("self-use, in reasonable
//! quantity").
//!
//! A consumer's history is a short list of day totals (parcels and declared value), kept for
//! [`KEEP_DAYS`] days: enough for a one-year window. A window of `n` days is the day of the
//! parcel and the `n - 1` days before it; a calendar window runs from the first day of its
//! month or year (see [`crate::rules::calendar`]). Days are local days since 1970-01-01 in the
//! configured time zone (UTC days for history stored before the zone was). Pure data: the
//! journal persists which held waybills were counted, and the day totals of forgotten ones
//! by consumer ([`StoredHistory`]).

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
/// year: that day is kept inline, in the consumer's own slot (24 bytes), instead of in an
/// allocation of its own (a `Vec` would take 24 bytes in the slot and 80 on the heap).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Days {
    totals: SmallVec<[DayTotal; 1]>,
}

impl Days {
    /// Adds `parcels` parcels worth `value_minor` in all on `day`. Days older than
    /// [`KEEP_DAYS`] before `day`, or before the newest day already kept if that is earlier,
    /// are dropped on the way: a day far ahead (counted by a clock that ran ahead) does not
    /// push out the history the windows of the real days still count.
    pub fn add_totals(&mut self, day: u32, parcels: u32, value_minor: u64) {
        if parcels == 0 {
            return;
        }
        let newest = self.totals.last().map_or(day, |d| d.day.min(day));
        let oldest = newest.saturating_sub(KEEP_DAYS - 1);
        self.totals.retain(|d| d.day >= oldest);
        match self.totals.binary_search_by_key(&day, |d| d.day) {
            Ok(i) => {
                let d = &mut self.totals[i];
                d.parcels = d.parcels.saturating_add(parcels);
                d.value_minor = d.value_minor.saturating_add(value_minor);
            }
            Err(i) => self.totals.insert(
                i,
                DayTotal {
                    day,
                    parcels,
                    value_minor,
                },
            ),
        }
    }

    /// [`Days::add_totals`] for each of `days` (stored totals), with room made for them at
    /// once rather than grown one by one.
    pub fn add_all(&mut self, days: &[StoredDay]) {
        let new = days
            .iter()
            .filter(|d| d.1 > 0 && self.totals.binary_search_by_key(&d.0, |t| t.day).is_err())
            .count();
        if self.totals.len() + new > self.totals.inline_size() {
            self.totals.reserve_exact(new);
        }
        for &(day, parcels, value_minor) in days {
            self.add_totals(day, parcels, value_minor);
        }
    }

    /// Takes back one parcel of `value_minor` on `day` (a declaration that changed after its
    /// parcel was counted).
    pub fn remove(&mut self, day: u32, value_minor: u64) {
        if let Ok(i) = self.totals.binary_search_by_key(&day, |d| d.day) {
            let d = &mut self.totals[i];
            d.parcels = d.parcels.saturating_sub(1);
            d.value_minor = d.value_minor.saturating_sub(value_minor);
            if d.parcels == 0 {
                self.totals.remove(i);
            }
        }
    }

    /// The totals over the days `first..=today`.
    pub fn window(&self, first: u32, today: u32) -> ConsumerWindow {
        let mut w = ConsumerWindow::default();
        for d in self.totals.iter().rev() {
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

    pub fn is_empty(&self) -> bool {
        self.totals.is_empty()
    }

    /// Whether the days are kept inline, without an allocation of their own.
    pub fn inline(&self) -> bool {
        !self.totals.spilled()
    }
}

/// A stored day total: the day, parcels and value.
pub type StoredDay = (u32, u32, u64);

/// Where the day totals of a consumer's forgotten declarations are kept: the journal's store,
/// read when a consumer's first held declaration arrives (see
/// [`crate::rules::ClearanceTable`]). Read on the platform ingest's side, never by a line.
pub trait StoredHistory: Send + Sync + std::fmt::Debug {
    /// The stored day totals of `consumer`: `(day, parcels, value_minor)`. An error leaves
    /// the consumer's history unknown, which every limit then treats as exceeded.
    fn days_of(&self, consumer: &str) -> Result<Vec<StoredDay>, String>;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A parcel counted a few years ahead keeps the year before the days already counted.
    #[test]
    fn a_day_far_ahead_does_not_push_out_the_history() {
        let mut d = Days::default();
        d.add_totals(1000, 1, 10);
        d.add_totals(1000 + 3 * KEEP_DAYS, 1, 20);
        assert_eq!(d.window(1000, u32::MAX).parcels, 2);
        // Counted on the real day again: the far day stays, the old year too.
        d.add_totals(1001, 1, 30);
        assert_eq!(d.window(1000, u32::MAX).value_minor, 60);
        // Days more than a year before the newest real one go.
        d.add_totals(1001 + KEEP_DAYS, 1, 40);
        d.add_totals(1002 + KEEP_DAYS, 1, 50);
        assert_eq!(d.window(0, 1001).parcels, 0);
    }

    #[test]
    fn windows_roll_by_day() {
        let mut h = Days::default();
        h.add_totals(100, 1, 10);
        h.add_totals(100, 1, 5);
        h.add_totals(101, 1, 1);
        h.add_totals(300, 1, 100);
        let w = |h: &Days, today: u32, n: u32| {
            let w = h.window((today + 1).saturating_sub(n), today);
            (w.parcels, w.value_minor)
        };
        assert_eq!(w(&h, 101, 1), (1, 1));
        assert_eq!(w(&h, 101, 2), (3, 16));
        assert_eq!(w(&h, 300, 199), (1, 100));
        assert_eq!(w(&h, 300, 200), (2, 101));
        assert_eq!(w(&h, 300, 366), (4, 116));
        assert_eq!(Days::default().window(0, 300), ConsumerWindow::default());
        h.remove(100, 10);
        assert_eq!(w(&h, 100, 1), (1, 5));
    }

    #[test]
    fn one_day_fits_in_the_slot() {
        assert_eq!(std::mem::size_of::<Days>(), 24);
        let mut h = Days::default();
        h.add_totals(10, 1, 5);
        assert!(h.inline(), "one day needs no allocation");
        h.add_totals(11, 1, 5);
        assert_eq!(h.window(10, 11).parcels, 2);
    }

    #[test]
    fn old_days_are_dropped() {
        let mut h = Days::default();
        h.add_totals(10, 1, 1);
        // A year on: kept until a later day is counted (this one may be a clock ahead).
        h.add_totals(10 + KEEP_DAYS, 1, 1);
        assert_eq!(h.window(0, 10 + KEEP_DAYS).parcels, 2);
        h.add_totals(11 + KEEP_DAYS, 1, 1);
        assert_eq!(h.window(0, 11 + KEEP_DAYS).parcels, 2);
        h.remove(10 + KEEP_DAYS, 1);
        h.remove(11 + KEEP_DAYS, 1);
        assert!(h.is_empty());
    }
}
