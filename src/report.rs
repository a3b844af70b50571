//! The monthly customs report: parcels scanned in a calendar month (local time in the
//! configured `[calendar] time_zone`), by enterprise and by
//! lane, with their final decisions and declared value.
//!
//! Built from the journal's parcel records in one pass, in sequence order. A parcel decided
//! again before its deadline has several records (revisions); only its latest counts: a
//! revision replaces the contribution of the one before. Revisions follow their parcel within
//! seconds, so only the parcels of the last [`REVISION_HORIZON`] are remembered, which keeps
//! memory flat for a month of a busy line.

use crate::rules::calendar::Calendar;
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use bondline_devices::contract::{
    LaneRole, LaneTotals, MonthlyReport, ParcelRecord, Record, Totals,
};

/// How long after its scan a parcel's revision is still matched to it.
pub const REVISION_HORIZON: Duration = Duration::from_secs(600);

/// A calendar month (its bounds in a time zone: [`Month::local_bounds_ms`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Month {
    pub year: u32,
    pub month: u32,
}

impl Month {
    /// Parses `YYYY-MM`.
    pub fn parse(s: &str) -> Result<Month, String> {
        let bad = || format!("`{s}` is not a month as YYYY-MM");
        let (y, m) = s.split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 {
            return Err(bad());
        }
        let year: u32 = y.parse().map_err(|_| bad())?;
        let month: u32 = m.parse().map_err(|_| bad())?;
        if !(1970..=9998).contains(&year) || !(1..=12).contains(&month) {
            return Err(bad());
        }
        Ok(Month { year, month })
    }

    /// The month `t` falls in, UTC.
    pub fn of(t: SystemTime) -> Month {
        let text = humantime::format_rfc3339_seconds(t).to_string();
        Month::parse(&text[..7]).expect("RFC 3339 starts with YYYY-MM")
    }

    /// The local month `t` falls in, in `calendar`'s time zone.
    pub fn of_local(t: SystemTime, calendar: &Calendar) -> Month {
        let (year, month) = calendar.month_of(crate::metrics::unix_ms(t));
        Month {
            year: year.max(1970) as u32,
            month,
        }
    }

    /// The first instant of the local month and of the next one, Unix ms.
    pub fn local_bounds_ms(self, calendar: &Calendar) -> (u64, u64) {
        let (from, to) = calendar.month_bounds(self.year as i32, self.month);
        (from.max(0) as u64, to.max(0) as u64)
    }

    pub fn next(self) -> Month {
        if self.month == 12 {
            Month {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Month {
                year: self.year,
                month: self.month + 1,
            }
        }
    }

    pub fn previous(self) -> Month {
        if self.month == 1 {
            Month {
                year: self.year - 1,
                month: 12,
            }
        } else {
            Month {
                year: self.year,
                month: self.month - 1,
            }
        }
    }

    /// The first instant of the month, Unix ms.
    pub fn start_ms(self) -> u64 {
        let t = humantime::parse_rfc3339(&format!("{self}-01T00:00:00Z"))
            .expect("a valid RFC 3339 date");
        crate::metrics::unix_ms(t)
    }
}

impl std::fmt::Display for Month {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

/// A lane of a line, with its role.
type LaneKey = (String, u16, LaneRole);

/// What one parcel's latest record adds to the report.
#[derive(Debug, Clone)]
struct Contribution {
    enterprise: String,
    line: String,
    lane: u16,
    role: LaneRole,
    value: Option<(String, u64)>,
    scanned_at_ms: u64,
    revision: u32,
}

/// Builds a [`MonthlyReport`] from records fed in sequence order.
#[derive(Debug)]
pub struct Builder {
    month: Month,
    from_ms: u64,
    to_ms: u64,
    total: Totals,
    by_enterprise: BTreeMap<String, Totals>,
    by_lane: BTreeMap<LaneKey, (u64, BTreeMap<String, u64>)>,
    recent: HashMap<(String, u32, u64), Contribution>,
    oldest_record_ms: Option<u64>,
    newest_scan_ms: u64,
}

fn role_count(t: &mut Totals, role: LaneRole) -> &mut u64 {
    match role {
        LaneRole::Release => &mut t.released,
        LaneRole::Inspection => &mut t.inspected,
        LaneRole::Hold => &mut t.held,
        LaneRole::Exception => &mut t.exception,
    }
}

/// Adds (`sign` = 1) or takes back (`sign` = -1) one parcel.
fn apply(t: &mut Totals, c: &Contribution, add: bool) {
    let step = |n: &mut u64, by: u64| {
        *n = if add {
            n.saturating_add(by)
        } else {
            n.saturating_sub(by)
        }
    };
    step(&mut t.scanned, 1);
    step(role_count(t, c.role), 1);
    if let Some((cur, v)) = &c.value {
        step(t.declared_value_minor.entry(cur.clone()).or_default(), *v);
    }
}

impl Builder {
    /// The report of `month` in local time: from its first local midnight to the next
    /// month's, in `calendar`'s time zone.
    pub fn new(month: Month, calendar: &Calendar) -> Builder {
        let (from_ms, to_ms) = month.local_bounds_ms(calendar);
        Builder {
            month,
            from_ms,
            to_ms,
            total: Totals::default(),
            by_enterprise: BTreeMap::new(),
            by_lane: BTreeMap::new(),
            recent: HashMap::new(),
            oldest_record_ms: None,
            newest_scan_ms: 0,
        }
    }

    /// Feeds one record (of any kind; only parcel records of the month count).
    pub fn add(&mut self, r: &Record) {
        if self.oldest_record_ms.is_none() {
            self.oldest_record_ms = Some(r.at_ms());
        }
        let Record::Parcel(p) = r else {
            return;
        };
        if p.scanned_at_ms < self.from_ms || p.scanned_at_ms >= self.to_ms {
            return;
        }
        self.add_parcel(p);
    }

    fn add_parcel(&mut self, p: &ParcelRecord) {
        let inputs = p.inputs.as_deref();
        let enterprise = match (&p.waybill, inputs.and_then(|i| i.enterprise.clone())) {
            (None, _) => "(no read)".to_string(),
            (Some(_), Some(e)) => e,
            (Some(_), None) => "(undeclared)".to_string(),
        };
        let value = inputs.and_then(|i| {
            i.value_minor.map(|v| {
                (
                    i.currency.clone().unwrap_or_else(|| "(none)".to_string()),
                    v,
                )
            })
        });
        let c = Contribution {
            enterprise,
            line: p.line.clone(),
            lane: p.lane,
            role: p.lane_role,
            value,
            scanned_at_ms: p.scanned_at_ms,
            revision: p.revision,
        };
        let key = (p.line.clone(), p.parcel, p.scanned_at_ms);
        if let Some(old) = self.recent.get(&key) {
            if old.revision >= c.revision {
                // A resent copy of a record already counted, or an older revision.
                return;
            }
            let old = old.clone();
            self.count(&old, false);
        }
        self.count(&c, true);
        self.recent.insert(key, c);
        // Forget parcels too old to get another revision.
        if p.scanned_at_ms > self.newest_scan_ms {
            self.newest_scan_ms = p.scanned_at_ms;
            let horizon = self
                .newest_scan_ms
                .saturating_sub(REVISION_HORIZON.as_millis() as u64);
            if self.recent.len() > 10_000 {
                self.recent.retain(|_, c| c.scanned_at_ms >= horizon);
            }
        }
    }

    fn count(&mut self, c: &Contribution, add: bool) {
        apply(&mut self.total, c, add);
        apply(
            self.by_enterprise.entry(c.enterprise.clone()).or_default(),
            c,
            add,
        );
        let lane = self
            .by_lane
            .entry((c.line.clone(), c.lane, c.role))
            .or_default();
        lane.0 = if add {
            lane.0 + 1
        } else {
            lane.0.saturating_sub(1)
        };
        if let Some((cur, v)) = &c.value {
            let e = lane.1.entry(cur.clone()).or_default();
            *e = if add { *e + v } else { e.saturating_sub(*v) };
        }
    }

    /// The report. `purged`: whether the journal had removed records before the first one fed.
    pub fn finish(self, purged: bool) -> MonthlyReport {
        let complete = !purged || self.oldest_record_ms.is_some_and(|t| t <= self.from_ms);
        MonthlyReport {
            month: self.month.to_string(),
            from_ms: self.from_ms,
            to_ms: self.to_ms,
            complete,
            oldest_record_ms: self.oldest_record_ms,
            total: self.total,
            by_enterprise: self.by_enterprise,
            by_lane: self
                .by_lane
                .into_iter()
                .filter(|(_, (n, _))| *n > 0)
                .map(|((line, lane, lane_role), (parcels, value))| LaneTotals {
                    line,
                    lane,
                    lane_role,
                    parcels,
                    declared_value_minor: value,
                })
                .collect(),
        }
    }
}

/// The report of local `month` (in `calendar`'s zone) from every record the journal holds.
pub fn from_journal(
    journal: &crate::journal::Journal,
    month: Month,
    calendar: &Calendar,
) -> Result<MonthlyReport, crate::journal::ExportError> {
    let mut b = Builder::new(month, calendar);
    journal.each_record(|r| {
        b.add(r);
        true
    })?;
    Ok(b.finish(journal.has_purged()?))
}

fn values(v: &BTreeMap<String, u64>) -> String {
    v.iter()
        .filter(|(_, n)| **n > 0)
        .map(|(c, n)| format!("{}.{:02} {c}", n / 100, n % 100))
        .collect::<Vec<_>>()
        .join("; ")
}

fn csv(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The report as CSV: one row per enterprise, one per lane, and a total row. Declared value
/// is in major units with its currency (`123.45 CNY`), several currencies separated by `;`.
pub fn to_csv(r: &MonthlyReport) -> String {
    let mut out = String::from(
        "month,section,key,lane_role,scanned,released,inspected,held,exception,declared_value\n",
    );
    let totals_row = |section: &str, key: &str, t: &Totals| {
        format!(
            "{},{section},{},,{},{},{},{},{},{}\n",
            r.month,
            csv(key),
            t.scanned,
            t.released,
            t.inspected,
            t.held,
            t.exception,
            csv(&values(&t.declared_value_minor))
        )
    };
    for (e, t) in &r.by_enterprise {
        out.push_str(&totals_row("enterprise", e, t));
    }
    for l in &r.by_lane {
        out.push_str(&format!(
            "{},lane,{},{},{},,,,,{}\n",
            r.month,
            csv(&format!("{}/{}", l.line, l.lane)),
            l.lane_role.as_str(),
            l.parcels,
            csv(&values(&l.declared_value_minor))
        ));
    }
    out.push_str(&totals_row("total", "", &r.total));
    out
}

/// How often the publisher looks whether a report is due.
const SCHEDULE_CHECK: Duration = Duration::from_secs(3600);
/// At most this many missed months are published late, oldest first.
pub const CATCH_UP_MONTHS: usize = 12;

/// The months whose report is due on local day `day` of local month `this`, oldest first: the
/// months after the last one published (`sent`), up to last month once `publish_day` is
/// reached (the month before otherwise). Months missed while the gateway was down are thus
/// published late rather than never; at most [`CATCH_UP_MONTHS`]. Without a report ever
/// published, only the latest due month.
pub fn due_months(sent: Option<Month>, this: Month, day: u32, publish_day: u32) -> Vec<Month> {
    let last_due = if day >= publish_day {
        this.previous()
    } else {
        this.previous().previous()
    };
    let Some(sent) = sent else {
        return vec![last_due];
    };
    let mut months = Vec::new();
    let mut m = sent.next();
    while m <= last_due {
        months.push(m);
        m = m.next();
    }
    let skip = months.len().saturating_sub(CATCH_UP_MONTHS);
    months.split_off(skip)
}

/// Publishes each due month's report to the platform (see [`due_months`]) through the
/// journal, so it is stored, chained and delivered like any record, and remembers the month
/// in the journal once its report record is durable. Checks at start and then hourly, until
/// `stop`. A stop or crash between the two sends the report again at the next start (the
/// platform keeps one report per gateway and month); no month is skipped unless the gateway
/// was down for more than [`CATCH_UP_MONTHS`] (a late month whose records were purged
/// meanwhile goes out with `complete: false`).
pub async fn publish_monthly(
    journal: crate::journal::Journal,
    sink: crate::journal::RecordSink,
    mut accepted: tokio::sync::watch::Receiver<u64>,
    gateway: String,
    publish_day: u32,
    calendar: Calendar,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        // The schedule runs on local dates: "from the 5th" is the 5th in the warehouse.
        let now = SystemTime::now();
        let day = calendar.day_of_month(crate::metrics::unix_ms(now));
        match journal.report_sent() {
            Ok(sent) => {
                let sent = sent.and_then(|m| Month::parse(&m).ok());
                let this = Month::of_local(now, &calendar);
                for month in due_months(sent, this, day, publish_day) {
                    let c = &calendar;
                    if !publish_one(&journal, &sink, &mut accepted, &gateway, month, c, &stop).await
                    {
                        break;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read which monthly report was published; retrying at the next check")
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(SCHEDULE_CHECK) => {}
        }
    }
}

/// Builds, journals and marks one month's report. False when it could not (it is tried
/// again at the next check) or the daemon is stopping.
async fn publish_one(
    journal: &crate::journal::Journal,
    sink: &crate::journal::RecordSink,
    accepted: &mut tokio::sync::watch::Receiver<u64>,
    gateway: &str,
    month: Month,
    calendar: &Calendar,
    stop: &tokio_util::sync::CancellationToken,
) -> bool {
    let j = journal.clone();
    let cal = calendar.clone();
    let report = match tokio::task::spawn_blocking(move || from_journal(&j, month, &cal)).await {
        Ok(Ok(report)) => report,
        Ok(Err(e)) => {
            tracing::error!(%month, error = %e, "cannot build the monthly report");
            return false;
        }
        Err(e) => {
            tracing::error!(%month, error = %e, "monthly report task failed");
            return false;
        }
    };
    let complete = report.complete;
    let name = month.to_string();
    // Records before this one may still be on their way to the journal: the mark goes in
    // only once this very report is read back from it.
    let mut checked = *accepted.borrow_and_update();
    sink.push(bondline_devices::contract::ReportRecord {
        schema: bondline_devices::contract::SCHEMA,
        msg_id: String::new(),
        seq: 0,
        prev_hash: String::new(),
        gateway: gateway.to_string(),
        line: String::new(),
        waybill: None,
        report,
        at_ms: crate::metrics::unix_ms(SystemTime::now()),
    });
    loop {
        tokio::select! {
            _ = stop.cancelled() => return false,
            r = accepted.changed() => if r.is_err() { return false },
        }
        let upto = *accepted.borrow_and_update();
        let j = journal.clone();
        let name2 = name.clone();
        let found = tokio::task::spawn_blocking(move || {
            (checked + 1..=upto).any(|seq| {
                matches!(j.record(seq), Ok(Some(bondline_devices::contract::Record::Report(r)))
                    if r.report.month == name2)
            })
        })
        .await
        .unwrap_or(false);
        checked = upto;
        if found {
            break;
        }
    }
    match journal.set_report_sent(&name) {
        Ok(()) => {
            tracing::info!(%month, complete, "monthly report published");
            if let Err(e) = journal.flush().await {
                tracing::warn!(%month, error = %e, "the published report's mark is not flushed yet");
            }
            true
        }
        Err(e) => {
            tracing::warn!(%month, error = %e, "cannot remember the published report; it may be sent again");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_months_catch_up_and_never_skip() {
        let m = |s| Month::parse(s).unwrap();
        let nov = m("2026-11");
        // Before the publish day, last month is not due yet; a month missed before it is.
        assert_eq!(
            due_months(Some(m("2026-08")), nov, 3, 5),
            vec![m("2026-09")]
        );
        assert_eq!(due_months(Some(m("2026-09")), nov, 3, 5), vec![]);
        // From the publish day on, last month is due.
        assert_eq!(
            due_months(Some(m("2026-09")), nov, 5, 5),
            vec![m("2026-10")]
        );
        assert_eq!(due_months(Some(m("2026-10")), nov, 28, 5), vec![]);
        // A gateway down across a whole publishing window catches up, oldest first.
        assert_eq!(
            due_months(Some(m("2026-07")), nov, 10, 5),
            vec![m("2026-08"), m("2026-09"), m("2026-10")]
        );
        // Across a year, and at most CATCH_UP_MONTHS.
        assert_eq!(
            due_months(Some(m("2026-11")), m("2027-01"), 5, 5),
            vec![m("2026-12")]
        );
        let long = due_months(Some(m("2020-01")), nov, 5, 5);
        assert_eq!(long.len(), CATCH_UP_MONTHS);
        assert_eq!(long.last(), Some(&m("2026-10")));
        // Never published: only the latest due month.
        assert_eq!(due_months(None, nov, 5, 5), vec![m("2026-10")]);
        assert_eq!(due_months(None, nov, 1, 5), vec![m("2026-09")]);
    }

    /// A month runs from local midnight on the 1st to the next 1st: in Shanghai a parcel at
    /// 23:59:59 on 30 November local (15:59:59 UTC) is November's and one at 00:00:00 on
    /// 1 December local (16:00 UTC on 30 November) is December's; the schedule's day is the
    /// local day of the month.
    #[test]
    fn months_and_the_schedule_are_local() {
        let cal = Calendar::default();
        let dec = Month::parse("2026-12").unwrap();
        let (from, to) = dec.local_bounds_ms(&cal);
        assert_eq!(cal.rfc3339(from as i64), "2026-12-01T00:00:00+08:00");
        assert_eq!(cal.rfc3339(to as i64), "2027-01-01T00:00:00+08:00");
        assert_eq!(from, dec.start_ms() - 8 * 3_600_000);
        let at = |ms: u64| SystemTime::UNIX_EPOCH + Duration::from_millis(ms);
        assert_eq!(Month::of_local(at(from), &cal), dec);
        assert_eq!(Month::of_local(at(from - 1000), &cal), dec.previous());
        assert_eq!(Month::of(at(from)), dec.previous(), "still November in UTC");
        // 9 December 23:59:59 local is the 9th, a second later the 10th (UTC: 15:59:59 and
        // 16:00 on the 9th).
        let tenth = from + 9 * 86_400_000;
        assert_eq!(cal.day_of_month(tenth - 1000), 9);
        assert_eq!(cal.day_of_month(tenth), 10);
        let this = Month::of_local(at(tenth), &cal);
        let day = cal.day_of_month(tenth);
        assert_eq!(
            due_months(None, this, day, 10),
            vec![Month::parse("2026-11").unwrap()]
        );
        let day = cal.day_of_month(tenth - 1000);
        assert_eq!(
            due_months(None, this, day, 10),
            vec![Month::parse("2026-10").unwrap()]
        );
        // Another zone, another month bound.
        let ny = Calendar::new("America/New_York").unwrap();
        let (from, _) = dec.local_bounds_ms(&ny);
        assert_eq!(ny.rfc3339(from as i64), "2026-12-01T00:00:00-05:00");
    }

    #[test]
    fn months_parse_and_roll() {
        let m = Month::parse("2026-12").unwrap();
        assert_eq!(m.next().to_string(), "2027-01");
        assert_eq!(
            Month::parse("2026-01").unwrap().previous().to_string(),
            "2025-12"
        );
        assert_eq!(m.start_ms(), 1_796_083_200_000);
        for bad in ["2026-13", "2026-1", "26-01", "2026/01", "x"] {
            assert!(Month::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Month::of(SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_083_199_999)),
            Month::parse("2026-11").unwrap()
        );
    }
}
