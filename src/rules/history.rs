//! Consumers' recent purchases, for limits over rolling windows ("self-use, in reasonable
//! quantity").
//!
//! A consumer's history is a short list of day totals (parcels and declared value), kept for
//! at least [`KEEP_DAYS`] days: enough for a one-year window (in memory at most [`MAX_DAYS`]
//! days; the store drops days a year older than the day retention trusts). A window of `n` days is the day of the
//! parcel and the `n - 1` days before it; a calendar window runs from the first day of its
//! month or year (see [`crate::rules::calendar`]). Days are local days since 1970-01-01 in the
//! configured time zone (UTC days for history stored before the zone was). Pure data: the
//! journal persists which held waybills were counted, and the day totals of forgotten ones
//! by consumer ([`StoredHistory`]).

use smallvec::SmallVec;

use crate::rules::engine::ConsumerWindow;

/// Days of history kept: the longest window a rule may ask for.
pub const KEEP_DAYS: u32 = 366;

/// Most days a consumer's history holds in memory: two years of daily purchases, so that
/// a year of real days survives whatever a clock set ahead counted (see
/// [`Days::add_totals`]).
pub const MAX_DAYS: usize = 2 * KEEP_DAYS as usize;

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
    /// Adds `parcels` parcels worth `value_minor` in all on `day`. Beyond [`MAX_DAYS`] days
    /// the oldest goes. Not by date: days counted far ahead (by a clock that ran ahead) would
    /// push out the year the windows of the real days still count, and nothing here knows
    /// which days are real. Windows read only their own days, so an old day kept is harmless.
    pub fn add_totals(&mut self, day: u32, parcels: u32, value_minor: u64) {
        if parcels == 0 {
            return;
        }
        match self.totals.binary_search_by_key(&day, |d| d.day) {
            Ok(i) => {
                let d = &mut self.totals[i];
                d.parcels = d.parcels.saturating_add(parcels);
                d.value_minor = d.value_minor.saturating_add(value_minor);
            }
            Err(i) => {
                self.totals.insert(
                    i,
                    DayTotal {
                        day,
                        parcels,
                        value_minor,
                    },
                );
                if self.totals.len() > MAX_DAYS {
                    self.totals.remove(0);
                }
            }
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

    /// Parcels counted years ahead (a clock that ran ahead) keep the real days' history.
    #[test]
    fn days_far_ahead_do_not_push_out_the_history() {
        let mut d = Days::default();
        d.add_totals(1000, 1, 10);
        for ahead in 0..30 {
            d.add_totals(1000 + 3 * KEEP_DAYS + ahead, 1, 20);
        }
        // Counted on the real day again, once the clock is set back.
        d.add_totals(1001, 1, 30);
        let w = d.window(1000, 1001);
        assert_eq!((w.parcels, w.value_minor), (2, 40));
        assert_eq!(d.window(1000, u32::MAX).parcels, 32);
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
    fn the_oldest_days_go_beyond_the_most_kept() {
        let mut h = Days::default();
        for day in 0..MAX_DAYS as u32 + 2 {
            h.add_totals(10 + day, 1, 1);
        }
        assert_eq!(h.window(0, u32::MAX).parcels, MAX_DAYS as u32);
        assert_eq!(h.window(0, 11).parcels, 0, "days 10 and 11 went");
        assert_eq!(h.window(0, 12).parcels, 1);
    }
}
