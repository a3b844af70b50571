//! The calendar customs counts in: local days, months and years in the warehouse's time zone.
//!
//! A consumer's limits turn over at local midnight and on 1 January local time (China
//! Standard Time by default), not at 00:00 UTC. This module is pure: it maps an instant in
//! Unix milliseconds and a [`Window`] to local day numbers and to the window's bounds, with
//! the zone's rules from the bundled time-zone database; it never reads the clock.
//!
//! Days are numbered as *local* days since 1970-01-01 (day 0), so a consumer's history keeps
//! one total per local day and a window is a contiguous run of day numbers.

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::TimeZone;
use jiff::Timestamp;

/// The zone customs rules count in when the configuration names none.
pub const DEFAULT_ZONE: &str = "Asia/Shanghai";

const DAY_MS: i64 = 86_400_000;

/// A time-zone name the bundled database does not know.
#[derive(Debug, thiserror::Error)]
#[error("unknown time zone `{0}` (an IANA name such as Asia/Shanghai)")]
pub struct UnknownZone(pub String);

/// Which days a consumer limit counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Window {
    /// The local day of the parcel.
    Day,
    /// The local calendar month of the parcel.
    Month,
    /// The local calendar year of the parcel (1 January to 31 December).
    Year,
    /// The day of the parcel and the `n - 1` local days before it.
    Rolling(u32),
}

impl Window {
    /// The name the configuration and the records use.
    pub fn name(self) -> &'static str {
        match self {
            Window::Day => "calendar_day",
            Window::Month => "calendar_month",
            Window::Year => "calendar_year",
            Window::Rolling(_) => "rolling_days",
        }
    }

    /// Parses a configured `window` (`calendar_day`, `calendar_month`, `calendar_year`).
    pub fn calendar(name: &str) -> Option<Window> {
        match name {
            "calendar_day" => Some(Window::Day),
            "calendar_month" => Some(Window::Month),
            "calendar_year" => Some(Window::Year),
            _ => None,
        }
    }

    /// Words for reasons: "calendar year", "30-day".
    pub fn describe(self) -> String {
        match self {
            Window::Day => "calendar day".into(),
            Window::Month => "calendar month".into(),
            Window::Year => "calendar year".into(),
            Window::Rolling(n) => format!("{n}-day"),
        }
    }

    /// The first and last local day numbers of the window that holds local day `day`.
    pub fn days(self, day: u32) -> (u32, u32) {
        match self {
            Window::Day => (day, day),
            Window::Rolling(n) => (day.saturating_sub(n.saturating_sub(1)), day),
            Window::Month => {
                let (y, m, _) = civil_from_days(day as i64);
                let first = days_from_civil(y, m, 1);
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                (first as u32, (days_from_civil(ny, nm, 1) - 1) as u32)
            }
            Window::Year => {
                let (y, _, _) = civil_from_days(day as i64);
                (
                    days_from_civil(y, 1, 1) as u32,
                    (days_from_civil(y + 1, 1, 1) - 1) as u32,
                )
            }
        }
    }
}

/// The bounds of one window in one zone: `[start_ms, end_ms)`, and the same instants in local
/// time as RFC 3339 with the zone's offset, for an officer to check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bounds {
    pub first_day: u32,
    pub last_day: u32,
    pub start_ms: i64,
    pub end_ms: i64,
}

/// The time zone windows are counted in.
#[derive(Debug, Clone)]
pub struct Calendar {
    zone: TimeZone,
    name: String,
}

impl Default for Calendar {
    fn default() -> Self {
        Calendar::new(DEFAULT_ZONE).expect("the default zone is in the bundled database")
    }
}

impl PartialEq for Calendar {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Calendar {
    /// The calendar of zone `name`: an IANA name, from the database built into the binary,
    /// or a fixed offset from UTC written `UTC+HH:MM` or `UTC-HH:MM:SS` (for a platform that
    /// counts in a fixed offset).
    pub fn new(name: &str) -> Result<Calendar, UnknownZone> {
        let unknown = || UnknownZone(name.to_string());
        let zone = match name.strip_prefix("UTC").filter(|r| !r.is_empty()) {
            Some(rest) => {
                let secs = fixed_offset_s(rest).ok_or_else(unknown)?;
                TimeZone::fixed(jiff::tz::Offset::from_seconds(secs).map_err(|_| unknown())?)
            }
            None => TimeZone::get(name).map_err(|_| unknown())?,
        };
        Ok(Calendar {
            zone,
            name: name.to_string(),
        })
    }

    /// The zone's name.
    pub fn zone_name(&self) -> &str {
        &self.name
    }

    /// The zone's offset from UTC at `unix_ms`, in seconds.
    pub fn offset_s(&self, unix_ms: i64) -> i32 {
        match Timestamp::from_millisecond(unix_ms) {
            Ok(ts) => self.zone.to_offset(ts).seconds(),
            Err(_) => 0,
        }
    }

    /// The local day number of the instant `unix_ms` (days since 1970-01-01 local).
    pub fn day_of(&self, unix_ms: u64) -> u32 {
        let ms = unix_ms.min(i64::MAX as u64 / 2) as i64;
        let local = ms + i64::from(self.offset_s(ms)) * 1000;
        local.div_euclid(DAY_MS).max(0) as u32
    }

    /// The instant local day `day` starts (its first local instant: midnight, or the end of a
    /// gap when the zone skips midnight).
    pub fn day_start_ms(&self, day: u32) -> i64 {
        let (y, m, d) = civil_from_days(day as i64);
        let start = Date::new(y as i16, m as i8, d as i8)
            .ok()
            .map(|date| DateTime::from_parts(date, Time::midnight()))
            .and_then(|dt| self.zone.to_ambiguous_timestamp(dt).compatible().ok());
        match start {
            Some(ts) => ts.as_millisecond(),
            None => day as i64 * DAY_MS,
        }
    }

    /// The bounds of `window` around local day `day`.
    pub fn bounds(&self, window: Window, day: u32) -> Bounds {
        let (first_day, last_day) = window.days(day);
        Bounds {
            first_day,
            last_day,
            start_ms: self.day_start_ms(first_day),
            end_ms: self.day_start_ms(last_day.saturating_add(1)),
        }
    }

    /// `unix_ms` in local time as RFC 3339 with the zone's offset (`2026-01-01T00:00:00+08:00`).
    pub fn rfc3339(&self, unix_ms: i64) -> String {
        let off = self.offset_s(unix_ms);
        let local_s = (unix_ms + i64::from(off) * 1000).div_euclid(1000);
        let (y, m, d) = civil_from_days(local_s.div_euclid(86_400));
        let secs = local_s.rem_euclid(86_400);
        let (sign, a) = if off < 0 { ('-', -off) } else { ('+', off) };
        format!(
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}{sign}{:02}:{:02}",
            secs / 3600,
            secs / 60 % 60,
            secs % 60,
            a / 3600,
            a / 60 % 60
        )
    }

    /// The local calendar month `(year, month)` of `unix_ms`.
    pub fn month_of(&self, unix_ms: u64) -> (i32, u32) {
        let (y, m, _) = civil_from_days(self.day_of(unix_ms) as i64);
        (y, m)
    }

    /// The local day of the month of `unix_ms` (1-31).
    pub fn day_of_month(&self, unix_ms: u64) -> u32 {
        civil_from_days(self.day_of(unix_ms) as i64).2
    }

    /// The instant local month `(year, month)` starts, and the instant the next one starts.
    pub fn month_bounds(&self, year: i32, month: u32) -> (i64, i64) {
        let first = days_from_civil(year, month, 1).max(0) as u32;
        let b = self.bounds(Window::Month, first);
        (b.start_ms, b.end_ms)
    }
}

/// `+HH:MM` or `-HH:MM:SS` in seconds, at most 23:59:59 either way.
fn fixed_offset_s(text: &str) -> Option<i32> {
    let (sign, rest) = match text.as_bytes().first()? {
        b'+' => (1, &text[1..]),
        b'-' => (-1, &text[1..]),
        _ => return None,
    };
    let parts: Vec<&str> = rest.split(':').collect();
    if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.len() != 2) {
        return None;
    }
    let n: Vec<i32> = parts
        .iter()
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let (h, m, s) = (n[0], n[1], n.get(2).copied().unwrap_or(0));
    (h < 24 && m < 60 && s < 60).then_some(sign * (h * 3600 + m * 60 + s))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub fn days_from_civil(y: i32, m: u32, d: u32) -> i64 {
    let y = i64::from(y) - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date of a day number since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i32, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    ((y + i64::from(m <= 2)) as i32, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Unix ms of a local wall time in `cal`'s zone.
    fn local_ms(cal: &Calendar, y: i32, m: u32, d: u32, hh: i64, mm: i64, ss: i64) -> u64 {
        let day = days_from_civil(y, m, d) as u32;
        (cal.day_start_ms(day) + ((hh * 60 + mm) * 60 + ss) * 1000) as u64
    }

    #[test]
    fn civil_days_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        for z in [0, 59, 60, 365, 10_956, 11_016, 11_017, 20_000, 60_000] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
    }

    #[test]
    fn shanghai_days_turn_at_local_midnight() {
        let cal = Calendar::default();
        let before = local_ms(&cal, 2026, 3, 14, 23, 59, 59);
        let after = local_ms(&cal, 2026, 3, 15, 0, 0, 0);
        assert_eq!(after - before, 1000);
        assert_eq!(cal.day_of(before) + 1, cal.day_of(after));
        // 00:30 local is 16:30 UTC the day before: a UTC count would put it on the 14th.
        assert_eq!(cal.rfc3339(after as i64), "2026-03-15T00:00:00+08:00");
        assert_eq!(
            (after / 86_400_000) as u32 + 1,
            cal.day_of(after),
            "the UTC day lags the local one before 08:00"
        );
        let b = cal.bounds(Window::Day, cal.day_of(before));
        assert_eq!(cal.rfc3339(b.start_ms), "2026-03-14T00:00:00+08:00");
        assert_eq!(b.end_ms as u64, after);
    }

    #[test]
    fn new_year_starts_a_new_calendar_year() {
        let cal = Calendar::default();
        let eve = local_ms(&cal, 2026, 12, 31, 23, 59, 59);
        let new_year = local_ms(&cal, 2027, 1, 1, 0, 0, 0);
        let y1 = cal.bounds(Window::Year, cal.day_of(eve));
        let y2 = cal.bounds(Window::Year, cal.day_of(new_year));
        assert_eq!(cal.rfc3339(y1.start_ms), "2026-01-01T00:00:00+08:00");
        assert_eq!(cal.rfc3339(y1.end_ms), "2027-01-01T00:00:00+08:00");
        assert_eq!(y1.end_ms, y2.start_ms);
        assert!((eve as i64) < y1.end_ms && new_year as i64 >= y2.start_ms);
        assert_eq!(y2.last_day - y2.first_day + 1, 365);
        let leap = cal.bounds(Window::Year, days_from_civil(2028, 6, 1) as u32);
        assert_eq!(leap.last_day - leap.first_day + 1, 366);
        let feb = cal.bounds(Window::Month, days_from_civil(2028, 2, 29) as u32);
        assert_eq!(cal.rfc3339(feb.start_ms), "2028-02-01T00:00:00+08:00");
        assert_eq!(cal.rfc3339(feb.end_ms), "2028-03-01T00:00:00+08:00");
    }

    #[test]
    fn dst_zones_keep_local_midnights() {
        let cal = Calendar::new("America/New_York").unwrap();
        // 2026-03-08: clocks go 02:00 -> 03:00; the day lasts 23 hours.
        let d = cal.day_of(local_ms(&cal, 2026, 3, 8, 12, 0, 0));
        let b = cal.bounds(Window::Day, d);
        assert_eq!(b.end_ms - b.start_ms, 23 * 3_600_000);
        assert_eq!(cal.rfc3339(b.start_ms), "2026-03-08T00:00:00-05:00");
        assert_eq!(cal.rfc3339(b.end_ms), "2026-03-09T00:00:00-04:00");
        // 2026-11-01: clocks go back 02:00 -> 01:00; the day lasts 25 hours.
        let d = cal.day_of(local_ms(&cal, 2026, 11, 1, 12, 0, 0));
        let b = cal.bounds(Window::Day, d);
        assert_eq!(b.end_ms - b.start_ms, 25 * 3_600_000);
        let before = local_ms(&cal, 2026, 11, 2, 23, 59, 59);
        let after = local_ms(&cal, 2026, 11, 3, 0, 0, 0);
        assert_eq!(after - before, 1000);
        assert_eq!(cal.rfc3339(before as i64), "2026-11-02T23:59:59-05:00");
        assert_eq!(cal.day_of(before) + 1, cal.day_of(after));
        // A zone whose clocks skip midnight starts the day at 01:00.
        let santiago = Calendar::new("America/Santiago").unwrap();
        let day = days_from_civil(2026, 9, 6) as u32;
        let s = santiago.day_start_ms(day);
        assert_eq!(santiago.rfc3339(s), "2026-09-06T01:00:00-03:00");
        assert_eq!(santiago.day_of(s as u64), day);
        assert_eq!(santiago.day_of(s as u64 - 1), day - 1);
    }

    #[test]
    fn unknown_zones_are_refused() {
        assert!(Calendar::new("Mars/Olympus_Mons").is_err());
        assert!(Calendar::new("Asia/Shanghai").is_ok());
        for bad in [
            "UTC+8",
            "UTC+24:00",
            "UTC+08:60",
            "UTC08:00",
            "UTC+08:00:00:00",
        ] {
            assert!(Calendar::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fixed_offsets_count_their_own_midnights() {
        let cal = Calendar::new("UTC+05:13:27").unwrap();
        let start = cal.day_start_ms(20_000);
        assert_eq!(start, 20_000 * DAY_MS - (5 * 3600 + 13 * 60 + 27) * 1000);
        assert_eq!(cal.rfc3339(start), "2024-10-04T00:00:00+05:13");
        let west = Calendar::new("UTC-03:30").unwrap();
        assert_eq!(west.offset_s(0), -(3 * 3600 + 30 * 60));
    }

    proptest! {
        /// Whatever the zone and instant, a calendar window holds its own parcel, and a parcel
        /// is counted in it exactly when its instant lies within the window's local bounds.
        #[test]
        fn windows_count_exactly_their_local_bounds(
            zone in prop::sample::select(vec![
                "Asia/Shanghai", "America/New_York", "Europe/Berlin", "Australia/Lord_Howe",
                "Pacific/Chatham", "America/Santiago", "UTC", "Asia/Kathmandu",
            ]),
            now in 946_684_800_000u64..4_102_444_800_000,
            other in -400i64 * 86_400_000..400 * 86_400_000,
            kind in 0u8..4,
            n in 1u32..=366,
        ) {
            let cal = Calendar::new(zone).unwrap();
            let w = [Window::Day, Window::Month, Window::Year, Window::Rolling(n)][kind as usize];
            let day = cal.day_of(now);
            let b = cal.bounds(w, day);
            prop_assert!(b.start_ms <= now as i64 && (now as i64) < b.end_ms);
            let t = (now as i64 + other) as u64;
            let (first, last) = (b.first_day, b.last_day);
            let counted = (first..=last).contains(&cal.day_of(t));
            let inside = b.start_ms <= t as i64 && (t as i64) < b.end_ms;
            prop_assert_eq!(counted, inside);
        }
    }
}
