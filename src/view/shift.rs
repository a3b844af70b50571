//! Shifts in the warehouse's local time: which shift an instant falls in, its bounds, the
//! shifts before and after it, and a local day's bounds.
//!
//! Records stay in UTC (milliseconds since the epoch); officers think in local shifts ("the
//! night shift of the 4th"), so every page, chart and export that speaks of a shift asks this
//! module. Pure: no clock, no I/O; the caller passes the instant.
//!
//! A shift runs from one configured start time to the next (the last one of a day runs to the
//! first one of the next day). Starts are local wall-clock times; where a start falls into a
//! daylight-saving gap it moves forward to the first instant that exists, and where it falls
//! into a fold the earlier instant is used (jiff's "compatible" rule). China has no daylight
//! saving; other zones work all the same.

use jiff::civil::{Date, Time};
use jiff::tz::TimeZone;
use jiff::{Timestamp, Zoned};

/// Why a time zone, shift list, date or shift reference was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShiftError {
    #[error("`{0}` is not a time zone of the IANA database (such as Asia/Shanghai or UTC)")]
    UnknownZone(String),
    #[error("needs at least one shift start time (such as [\"08:00\", \"20:00\"])")]
    NoShifts,
    #[error("`{0}` is not a local time HH:MM (00:00 to 23:59)")]
    BadStart(String),
    #[error("start times must be in ascending order without repeats: `{0}` follows `{1}`")]
    NotAscending(String, String),
    #[error("at most 24 shifts a day")]
    TooMany,
    #[error("`{0}` is not a date YYYY-MM-DD")]
    BadDate(String),
    #[error("`{0}` is not a time: RFC 3339 (2026-12-05T08:00:00+08:00), local YYYY-MM-DDTHH:MM, or milliseconds since the epoch")]
    BadInstant(String),
    #[error("shift number {0} does not exist: the day has {1} shifts (1 to {1})")]
    BadNumber(usize, usize),
    #[error("time out of the supported range")]
    OutOfRange,
}

/// The configured shift pattern in one time zone.
#[derive(Debug, Clone)]
pub struct ShiftPlan {
    tz: TimeZone,
    zone_name: String,
    /// Local start times, ascending, distinct, not empty.
    starts: Vec<Time>,
}

/// One concrete shift: the `index`-th start time of local date `date`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shift {
    /// Local date on which the shift starts.
    pub date: Date,
    /// Position of its start time in the plan (0-based).
    pub index: usize,
    pub start: Zoned,
    pub end: Zoned,
}

impl Shift {
    /// Start, milliseconds since the epoch (inclusive).
    pub fn start_ms(&self) -> i64 {
        self.start.timestamp().as_millisecond()
    }
    /// End, milliseconds since the epoch (exclusive).
    pub fn end_ms(&self) -> i64 {
        self.end.timestamp().as_millisecond()
    }
    /// Start as RFC 3339 with the local offset, such as `2026-12-05T08:00:00+08:00`.
    pub fn start_rfc3339(&self) -> String {
        rfc3339(&self.start)
    }
    /// End as RFC 3339 with the local offset.
    pub fn end_rfc3339(&self) -> String {
        rfc3339(&self.end)
    }
    /// The shift's number within its day, 1-based (as officers count them).
    pub fn number(&self) -> usize {
        self.index + 1
    }
    /// Short local label, such as `2026-12-05 08:00–20:00`.
    pub fn label(&self) -> String {
        format!(
            "{} {}–{}",
            self.date,
            self.start.strftime("%H:%M"),
            self.end.strftime("%H:%M")
        )
    }
    /// Whether `ms` falls in the shift.
    pub fn contains(&self, ms: i64) -> bool {
        (self.start_ms()..self.end_ms()).contains(&ms)
    }
}

/// RFC 3339 with the zone's offset at that instant, to the second.
pub fn rfc3339(z: &Zoned) -> String {
    z.strftime("%Y-%m-%dT%H:%M:%S%:z").to_string()
}

/// Parses `HH:MM`.
fn parse_start(s: &str) -> Result<Time, ShiftError> {
    let bad = || ShiftError::BadStart(s.to_string());
    let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: i8 = h.parse().map_err(|_| bad())?;
    let m: i8 = m.parse().map_err(|_| bad())?;
    Time::new(h, m, 0, 0).map_err(|_| bad())
}

/// Resolves an IANA time zone name from the bundled database.
pub fn zone(name: &str) -> Result<TimeZone, ShiftError> {
    TimeZone::get(name.trim()).map_err(|_| ShiftError::UnknownZone(name.to_string()))
}

impl ShiftPlan {
    /// Default zone of the warehouse (China Standard Time).
    pub const DEFAULT_ZONE: &'static str = "Asia/Shanghai";

    /// Two 12-hour shifts from 08:00 and 20:00 in China Standard Time.
    pub fn default_plan() -> ShiftPlan {
        ShiftPlan::new(Self::DEFAULT_ZONE, &["08:00", "20:00"]).expect("the default plan is valid")
    }

    /// Validates a zone name and a list of local start times (`HH:MM`, ascending).
    pub fn new<S: AsRef<str>>(zone_name: &str, starts: &[S]) -> Result<ShiftPlan, ShiftError> {
        let tz = zone(zone_name)?;
        Ok(ShiftPlan {
            tz,
            zone_name: zone_name.trim().to_string(),
            starts: parse_starts(starts)?,
        })
    }

    /// The same shifts in another zone (`bondline report shift --time-zone`).
    pub fn with_zone(&self, zone_name: &str) -> Result<ShiftPlan, ShiftError> {
        Ok(ShiftPlan {
            tz: zone(zone_name)?,
            zone_name: zone_name.trim().to_string(),
            starts: self.starts.clone(),
        })
    }

    pub fn time_zone(&self) -> &TimeZone {
        &self.tz
    }
    pub fn zone_name(&self) -> &str {
        &self.zone_name
    }
    /// Shifts a day.
    pub fn len(&self) -> usize {
        self.starts.len()
    }
    /// Never true: a plan has at least one shift.
    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }
    /// Start times as `HH:MM`.
    pub fn starts(&self) -> Vec<String> {
        self.starts
            .iter()
            .map(|t| t.strftime("%H:%M").to_string())
            .collect()
    }

    /// The local wall-clock instant of an epoch millisecond.
    pub fn local(&self, ms: i64) -> Result<Zoned, ShiftError> {
        Ok(Timestamp::from_millisecond(ms)
            .map_err(|_| ShiftError::OutOfRange)?
            .to_zoned(self.tz.clone()))
    }

    /// Local time of `ms` as RFC 3339 (for exports and API answers).
    pub fn local_rfc3339(&self, ms: i64) -> String {
        match self.local(ms) {
            Ok(z) => rfc3339(&z),
            Err(_) => ms.to_string(),
        }
    }

    fn start_of(&self, date: Date, index: usize) -> Result<Zoned, ShiftError> {
        date.to_datetime(self.starts[index])
            .to_zoned(self.tz.clone())
            .map_err(|_| ShiftError::OutOfRange)
    }

    /// The `index`-th shift (0-based) starting on local date `date`.
    pub fn shift_on(&self, date: Date, index: usize) -> Result<Shift, ShiftError> {
        if index >= self.starts.len() {
            return Err(ShiftError::BadNumber(index + 1, self.starts.len()));
        }
        let start = self.start_of(date, index)?;
        let (next_date, next_index) = self.successor(date, index)?;
        let end = self.start_of(next_date, next_index)?;
        Ok(Shift {
            date,
            index,
            start,
            end,
        })
    }

    fn successor(&self, date: Date, index: usize) -> Result<(Date, usize), ShiftError> {
        if index + 1 < self.starts.len() {
            Ok((date, index + 1))
        } else {
            Ok((date.tomorrow().map_err(|_| ShiftError::OutOfRange)?, 0))
        }
    }

    fn predecessor(&self, date: Date, index: usize) -> Result<(Date, usize), ShiftError> {
        if index > 0 {
            Ok((date, index - 1))
        } else {
            Ok((
                date.yesterday().map_err(|_| ShiftError::OutOfRange)?,
                self.starts.len() - 1,
            ))
        }
    }

    /// The shift after `s`.
    pub fn next(&self, s: &Shift) -> Result<Shift, ShiftError> {
        let (d, i) = self.successor(s.date, s.index)?;
        self.shift_on(d, i)
    }

    /// The shift before `s`.
    pub fn previous(&self, s: &Shift) -> Result<Shift, ShiftError> {
        let (d, i) = self.predecessor(s.date, s.index)?;
        self.shift_on(d, i)
    }

    /// The shift that `ms` (epoch milliseconds) falls in: start <= ms < end.
    pub fn shift_at(&self, ms: i64) -> Result<Shift, ShiftError> {
        let local = self.local(ms)?;
        let (date, time) = (local.date(), local.time());
        let mut s = match self.starts.iter().rposition(|t| *t <= time) {
            Some(i) => self.shift_on(date, i)?,
            // Before the day's first start: the last shift of the day before.
            None => {
                let (d, i) = self.predecessor(date, 0)?;
                self.shift_on(d, i)?
            }
        };
        // Wall-clock arithmetic can be off by one shift around a daylight-saving change;
        // settle on the instant. Bounded: each step moves by one shift.
        for _ in 0..4 {
            if s.start_ms() > ms {
                s = self.previous(&s)?;
            } else if s.end_ms() <= ms {
                s = self.next(&s)?;
            } else {
                break;
            }
        }
        Ok(s)
    }

    /// The local day's bounds `[start, end)` in epoch milliseconds (midnight to midnight; a
    /// day with a daylight-saving change is 23 or 25 hours long).
    pub fn day_bounds(&self, date: Date) -> Result<(i64, i64), ShiftError> {
        let start = date
            .to_zoned(self.tz.clone())
            .map_err(|_| ShiftError::OutOfRange)?;
        let end = date
            .tomorrow()
            .map_err(|_| ShiftError::OutOfRange)?
            .to_zoned(self.tz.clone())
            .map_err(|_| ShiftError::OutOfRange)?;
        Ok((
            start.timestamp().as_millisecond(),
            end.timestamp().as_millisecond(),
        ))
    }

    /// The local date of `ms`.
    pub fn date_of(&self, ms: i64) -> Result<Date, ShiftError> {
        Ok(self.local(ms)?.date())
    }

    /// Parses an instant given by a person or a link: RFC 3339 with an offset, a local
    /// `YYYY-MM-DDTHH:MM[:SS]` (or with a space) in the plan's zone, or epoch milliseconds.
    pub fn parse_instant(&self, s: &str) -> Result<i64, ShiftError> {
        let t = s.trim();
        let bad = || ShiftError::BadInstant(s.to_string());
        if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
            return t.parse::<i64>().map_err(|_| bad());
        }
        if let Ok(ts) = t.parse::<Timestamp>() {
            return Ok(ts.as_millisecond());
        }
        let dt: jiff::civil::DateTime = t.replace(' ', "T").parse().map_err(|_| bad())?;
        Ok(dt
            .to_zoned(self.tz.clone())
            .map_err(|_| bad())?
            .timestamp()
            .as_millisecond())
    }
}

/// Parses a local date `YYYY-MM-DD`.
pub fn parse_date(s: &str) -> Result<Date, ShiftError> {
    let t = s.trim();
    if t.len() != 10 {
        return Err(ShiftError::BadDate(s.to_string()));
    }
    t.parse::<Date>()
        .map_err(|_| ShiftError::BadDate(s.to_string()))
}

fn parse_starts<S: AsRef<str>>(starts: &[S]) -> Result<Vec<Time>, ShiftError> {
    if starts.is_empty() {
        return Err(ShiftError::NoShifts);
    }
    if starts.len() > 24 {
        return Err(ShiftError::TooMany);
    }
    let mut out: Vec<Time> = Vec::with_capacity(starts.len());
    for (i, s) in starts.iter().enumerate() {
        let t = parse_start(s.as_ref())?;
        if let Some(prev) = out.last() {
            if t <= *prev {
                return Err(ShiftError::NotAscending(
                    s.as_ref().to_string(),
                    starts[i - 1].as_ref().to_string(),
                ));
            }
        }
        out.push(t);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    fn ms(rfc: &str) -> i64 {
        rfc.parse::<Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn default_plan_has_two_twelve_hour_shifts_in_china() {
        let p = ShiftPlan::default_plan();
        assert_eq!(p.zone_name(), "Asia/Shanghai");
        assert_eq!(p.starts(), vec!["08:00", "20:00"]);
        let s = p.shift_at(ms("2026-12-05T03:00:00Z")).unwrap(); // 11:00 local
        assert_eq!(s.date, date(2026, 12, 5));
        assert_eq!(s.number(), 1);
        assert_eq!(s.start_rfc3339(), "2026-12-05T08:00:00+08:00");
        assert_eq!(s.end_rfc3339(), "2026-12-05T20:00:00+08:00");
        assert_eq!(s.end_ms() - s.start_ms(), 12 * 3_600_000);
        assert_eq!(s.label(), "2026-12-05 08:00–20:00");
    }

    #[test]
    fn boundaries_belong_to_the_shift_that_starts_there() {
        let p = ShiftPlan::default_plan();
        let at8 = ms("2026-12-05T00:00:00Z"); // 08:00 local
        let s = p.shift_at(at8).unwrap();
        assert_eq!((s.date, s.index, s.start_ms()), (date(2026, 12, 5), 0, at8));
        let before = p.shift_at(at8 - 1).unwrap();
        assert_eq!((before.date, before.index), (date(2026, 12, 4), 1));
        assert_eq!(before.end_ms(), at8);
        assert!(before.contains(at8 - 1) && !before.contains(at8));
    }

    #[test]
    fn the_night_shift_runs_across_midnight() {
        let p = ShiftPlan::default_plan();
        // 23:30 on the 5th and 02:00 on the 6th, local: both the night shift of the 5th.
        let late = p.shift_at(ms("2026-12-05T15:30:00Z")).unwrap();
        let early = p.shift_at(ms("2026-12-05T18:00:00Z")).unwrap();
        assert_eq!(late, early);
        assert_eq!((late.date, late.number()), (date(2026, 12, 5), 2));
        assert_eq!(late.start_rfc3339(), "2026-12-05T20:00:00+08:00");
        assert_eq!(late.end_rfc3339(), "2026-12-06T08:00:00+08:00");
        // Local midnight exactly.
        let midnight = p.shift_at(ms("2026-12-05T16:00:00Z")).unwrap();
        assert_eq!(midnight, late);
    }

    #[test]
    fn previous_and_next_walk_across_days_and_years() {
        let p = ShiftPlan::new("Asia/Shanghai", &["06:00", "14:00", "22:00"]).unwrap();
        let s = p.shift_on(date(2026, 12, 31), 2).unwrap();
        assert_eq!(s.end_rfc3339(), "2027-01-01T06:00:00+08:00");
        let n = p.next(&s).unwrap();
        assert_eq!((n.date, n.index), (date(2027, 1, 1), 0));
        assert_eq!(n.start, s.end);
        assert_eq!(p.previous(&n).unwrap(), s);
        let first = p.shift_on(date(2027, 1, 1), 0).unwrap();
        let back = p.previous(&first).unwrap();
        assert_eq!((back.date, back.index), (date(2026, 12, 31), 2));
        // Shifts tile time: walking a day of them covers it without gap or overlap.
        let mut cur = p.shift_on(date(2026, 12, 5), 0).unwrap();
        for _ in 0..7 {
            let nx = p.next(&cur).unwrap();
            assert_eq!(cur.end_ms(), nx.start_ms());
            cur = nx;
        }
    }

    #[test]
    fn a_single_shift_is_a_whole_day_from_its_start() {
        let p = ShiftPlan::new("UTC", &["06:00"]).unwrap();
        let s = p.shift_at(ms("2026-12-05T05:59:59Z")).unwrap();
        assert_eq!(s.date, date(2026, 12, 4));
        assert_eq!(s.end_ms() - s.start_ms(), 86_400_000);
    }

    #[test]
    fn daylight_saving_days_keep_shifts_tiled() {
        // Europe/Berlin: 2026-03-29 02:00 -> 03:00, 2026-10-25 03:00 -> 02:00.
        let p = ShiftPlan::new("Europe/Berlin", &["02:30", "14:00"]).unwrap();
        let gap = p.shift_on(date(2026, 3, 29), 0).unwrap();
        // 02:30 does not exist that day: the shift starts at 03:30 summer time.
        assert_eq!(gap.start_rfc3339(), "2026-03-29T03:30:00+02:00");
        let prev = p.previous(&gap).unwrap();
        assert_eq!(prev.end, gap.start);
        for probe in [
            "2026-03-29T00:00:00Z",
            "2026-03-29T01:29:59Z",
            "2026-03-29T01:30:00Z",
            "2026-10-25T00:29:59Z",
            "2026-10-25T00:30:00Z",
            "2026-10-25T01:30:00Z",
        ] {
            let t = ms(probe);
            let s = p.shift_at(t).unwrap();
            assert!(s.contains(t), "{probe} not in {}", s.label());
        }
        let (a, b) = p.day_bounds(date(2026, 3, 29)).unwrap();
        assert_eq!(b - a, 23 * 3_600_000);
        let (a, b) = p.day_bounds(date(2026, 10, 25)).unwrap();
        assert_eq!(b - a, 25 * 3_600_000);
    }

    #[test]
    fn day_bounds_are_local_midnights() {
        let p = ShiftPlan::default_plan();
        let (a, b) = p.day_bounds(date(2026, 12, 5)).unwrap();
        assert_eq!(a, ms("2026-12-04T16:00:00Z"));
        assert_eq!(b, ms("2026-12-05T16:00:00Z"));
        assert_eq!(p.date_of(a).unwrap(), date(2026, 12, 5));
        assert_eq!(p.date_of(b - 1).unwrap(), date(2026, 12, 5));
        assert_eq!(p.date_of(b).unwrap(), date(2026, 12, 6));
    }

    #[test]
    fn instants_parse_in_three_forms() {
        let p = ShiftPlan::default_plan();
        let want = ms("2026-12-05T00:00:00Z");
        assert_eq!(p.parse_instant("2026-12-05T08:00:00+08:00").unwrap(), want);
        assert_eq!(p.parse_instant("2026-12-05T08:00").unwrap(), want);
        assert_eq!(p.parse_instant("2026-12-05 08:00:00").unwrap(), want);
        assert_eq!(p.parse_instant(&want.to_string()).unwrap(), want);
        assert!(p.parse_instant("yesterday").is_err());
        assert!(p.parse_instant("").is_err());
        assert_eq!(p.local_rfc3339(want), "2026-12-05T08:00:00+08:00");
    }

    #[test]
    fn bad_plans_are_refused_with_reasons() {
        assert_eq!(
            ShiftPlan::new("Mars/Olympus", &["08:00"]).unwrap_err(),
            ShiftError::UnknownZone("Mars/Olympus".into())
        );
        let none: [&str; 0] = [];
        assert_eq!(
            ShiftPlan::new("UTC", &none).unwrap_err(),
            ShiftError::NoShifts
        );
        for bad in ["8", "24:00", "08:60", "08:0", "ab:cd", "-1:00", "08:00:00"] {
            assert_eq!(
                ShiftPlan::new("UTC", &[bad]).unwrap_err(),
                ShiftError::BadStart(bad.into()),
                "{bad}"
            );
        }
        assert!(matches!(
            ShiftPlan::new("UTC", &["20:00", "08:00"]).unwrap_err(),
            ShiftError::NotAscending(..)
        ));
        assert!(matches!(
            ShiftPlan::new("UTC", &["08:00", "08:00"]).unwrap_err(),
            ShiftError::NotAscending(..)
        ));
        assert!(ShiftPlan::new("UTC", &["8:00"]).is_ok());
        let p = ShiftPlan::default_plan();
        assert_eq!(
            p.shift_on(date(2026, 1, 1), 2).unwrap_err(),
            ShiftError::BadNumber(3, 2)
        );
        assert!(parse_date("2026-02-30").is_err());
        assert!(parse_date("2026-2-3").is_err());
        assert_eq!(parse_date("2026-02-03").unwrap(), date(2026, 2, 3));
    }

    proptest::proptest! {
        /// Every instant lies in exactly the shift `shift_at` names, and the neighbours
        /// touch it: no gap, no overlap, in any zone used here.
        #[test]
        fn every_instant_lies_in_its_shift(
            t in 0i64..4_102_444_800_000,
            zone in proptest::sample::select(vec!["Asia/Shanghai", "UTC", "Europe/Berlin", "America/New_York"]),
            plan in proptest::sample::select(vec![vec!["08:00", "20:00"], vec!["00:00"], vec!["01:30", "02:30", "13:00"]]),
        ) {
            let p = ShiftPlan::new(zone, &plan).unwrap();
            let s = p.shift_at(t).unwrap();
            proptest::prop_assert!(s.contains(t));
            proptest::prop_assert_eq!(p.previous(&s).unwrap().end_ms(), s.start_ms());
            proptest::prop_assert_eq!(p.next(&s).unwrap().start_ms(), s.end_ms());
        }
    }
}
