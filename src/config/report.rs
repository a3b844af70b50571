//! `[report]` and `[calendar]`: the day the monthly customs report is published, and the
//! time zone in which consumers' days and the report's months are counted.

use std::time::Duration;

use serde::Deserialize;

use super::{bad, Bad, Storage};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReport {
    publish_day: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCalendar {
    #[serde(default)]
    time_zone: Option<String>,
}

/// The day of the month the report is published on, if any. The month's first records must
/// still be in the journal that day, so `[storage] retention_days` bounds it.
pub(super) fn publish_day(raw: Option<RawReport>, storage: &Storage) -> Result<Option<u32>, Bad> {
    match raw {
        Some(r) if !(1..=28).contains(&r.publish_day) => Err(bad(
            "report.publish_day",
            "must be 1 to 28, a day every month has".into(),
        )),
        // The report of a month is built from the journal on day `publish_day` of the next
        // one: the month's first records must still be there.
        Some(r) if storage.retention < Duration::from_secs((u64::from(r.publish_day) + 31) * 86_400) => {
            Err(bad(
                "report.publish_day",
                format!(
                    "day {} needs storage.retention_days of at least {} (now {}): retention would purge the start of the month before its report is built",
                    r.publish_day,
                    r.publish_day + 31,
                    storage.retention.as_secs() / 86_400
                ),
            ))
        }
        Some(r) => Ok(Some(r.publish_day)),
        None => Ok(None),
    }
}

/// The calendar of `[calendar] time_zone` (Asia/Shanghai when not given).
pub(super) fn calendar(raw: Option<RawCalendar>) -> Result<crate::rules::calendar::Calendar, Bad> {
    let zone = raw
        .and_then(|c| c.time_zone)
        .unwrap_or_else(|| crate::rules::calendar::DEFAULT_ZONE.to_string());
    crate::rules::calendar::Calendar::new(&zone)
        .map_err(|e| bad("calendar.time_zone", e.to_string()))
}
