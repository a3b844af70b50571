//! `GET /api/worklist`: the inspection worklist's data, from the journal itself.
//!
//! The parcels sent to inspection or hold in a time range (default: the shift running now,
//! and at least the last hour), newest first, with the worklist's filters, a page at a time.
//! Each item carries the waybill's other records (X-ray verdicts, image and snapshot
//! thumbnails, dispositions, alerts), so the page draws a slip from one answer.
//!
//! Bounded: a page walks the journal backwards from its cursor (`before`, a sequence) on the
//! blocking pool and stops at `limit` items or after [`MAX_EXAMINED`] records, whichever comes
//! first, and hands back the cursor of the next page. A shift of 40,000 parcels an hour is
//! therefore complete (page after page) without any request reading more than a bounded slice.
//!
//! A waybill counts once, by its newest decision in the range: a parcel re-decided (a new
//! revision) or a waybill scanned again is shown where its newest decision is, and not at all
//! when that one sent it elsewhere.

use axum::extract::{Query, State};
use axum::Json;
use bondline_devices::contract::{LaneRole, ParcelRecord};
use serde::{Deserialize, Serialize};

use super::api::{self, RecordView};
use super::{Shared, ViewError};
use crate::metrics::unix_ms;

/// Records one page reads at most before it answers with what it found and a cursor.
pub const MAX_EXAMINED: usize = 20_000;
/// Items per page by default and at most.
const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 50;
/// The default range reaches back at least this far, so parcels of the minutes before a
/// shift change stay in view.
const AT_LEAST_MS: u64 = 3_600_000;

/// The worklist's filters; empty ones match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub line: Option<String>,
    /// Inspection or hold; none: both.
    pub role: Option<LaneRole>,
    /// The deciding rule or any rule that fired.
    pub rule: Option<String>,
    /// The declaring enterprise's customs code, exactly.
    pub enterprise: Option<String>,
    /// The start of the waybill.
    pub waybill_prefix: Option<String>,
}

impl Filter {
    /// Whether `p` belongs on the worklist under this filter.
    pub fn matches(&self, p: &ParcelRecord) -> bool {
        if !matches!(p.lane_role, LaneRole::Inspection | LaneRole::Hold) {
            return false;
        }
        if self.role.is_some_and(|r| r != p.lane_role) {
            return false;
        }
        if self.line.as_deref().is_some_and(|l| l != p.line) {
            return false;
        }
        if let Some(rule) = self.rule.as_deref() {
            if p.rule != rule && !p.rules_fired.iter().any(|f| f.rule == rule) {
                return false;
            }
        }
        if let Some(e) = self.enterprise.as_deref() {
            if p.inputs.as_ref().and_then(|i| i.enterprise.as_deref()) != Some(e) {
                return false;
            }
        }
        if let Some(w) = self.waybill_prefix.as_deref() {
            if !p.waybill.as_deref().is_some_and(|x| x.starts_with(w)) {
                return false;
            }
        }
        true
    }
}

#[derive(Deserialize, Default)]
pub struct WorklistQuery {
    from: Option<String>,
    to: Option<String>,
    line: Option<String>,
    role: Option<String>,
    rule: Option<String>,
    enterprise: Option<String>,
    waybill: Option<String>,
    /// The cursor of the page: items below this journal sequence.
    before: Option<String>,
    limit: Option<String>,
}

/// One parcel on the worklist.
#[derive(Serialize)]
pub struct Item {
    seq: u64,
    /// The parcel's newest decision.
    record: ParcelRecord,
    /// Every record of the waybill in sequence order (decisions, X-ray verdicts, images,
    /// snapshots, dispositions, alerts), with where each stands on its way to the platform.
    related: Vec<RecordView>,
}

#[derive(Serialize)]
pub struct WorklistPage {
    from_ms: u64,
    to_ms: u64,
    items: Vec<Item>,
    /// The cursor of the next page (`before=`); none when the range is exhausted.
    next: Option<String>,
    /// Records this page read.
    examined: usize,
}

fn nonempty(s: &Option<String>) -> Option<String> {
    s.as_ref()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The filter of a query.
fn filter_of(q: &WorklistQuery) -> Result<Filter, ViewError> {
    let role = match nonempty(&q.role).as_deref() {
        None => None,
        Some("inspection") => Some(LaneRole::Inspection),
        Some("hold") => Some(LaneRole::Hold),
        Some(other) => return Err(ViewError::invalid("bad_role", &[("role", other)])),
    };
    Ok(Filter {
        line: nonempty(&q.line),
        role,
        rule: nonempty(&q.rule),
        enterprise: nonempty(&q.enterprise),
        waybill_prefix: nonempty(&q.waybill),
    })
}

/// `[from, to)`, the cursor and the page size of a query. `shift_start_ms` is the start of
/// the shift running now, when known.
fn range_of(
    q: &WorklistQuery,
    now_ms: u64,
    shift_start_ms: Option<u64>,
) -> Result<(u64, u64, u64, usize), ViewError> {
    let to = match nonempty(&q.to) {
        Some(t) => api::parse_time(&t, "to")?,
        None => now_ms.saturating_add(1),
    };
    let from = match nonempty(&q.from) {
        Some(f) => api::parse_time(&f, "from")?,
        None => {
            let hour = to.saturating_sub(AT_LEAST_MS);
            shift_start_ms.map_or(hour, |s| s.min(hour))
        }
    };
    if from > to {
        return Err(ViewError::invalid("range_reversed", &[]));
    }
    let before = match nonempty(&q.before) {
        None => u64::MAX,
        Some(b) => b
            .parse::<u64>()
            .map_err(|_| ViewError::invalid("bad_cursor", &[]))?,
    };
    let limit = api::parse_count(q.limit.as_deref(), "limit", DEFAULT_LIMIT, MAX_LIMIT)?;
    Ok((from, to, before, limit))
}

/// One page of the worklist, read from the journal (blocking).
pub fn page(
    journal: &crate::journal::Journal,
    filter: &Filter,
    (from_ms, to_ms): (u64, u64),
    before: u64,
    limit: usize,
    max_examined: usize,
) -> Result<WorklistPage, ViewError> {
    let mut items = Vec::new();
    let mut examined = 0usize;
    let mut lowest = before;
    let mut failed = None;
    let finished = journal.walk_back(before, from_ms, |r| {
        examined += 1;
        lowest = r.seq();
        let Some(p) = r.as_parcel() else {
            return examined < max_examined;
        };
        if !(from_ms..to_ms).contains(&p.scanned_at_ms) || !filter.matches(p) {
            return examined < max_examined;
        }
        let Some(waybill) = p.waybill.as_deref() else {
            return examined < max_examined;
        };
        let related = match journal.waybill_records(waybill) {
            Ok(rs) => rs,
            Err(e) => {
                failed = Some(e);
                return false;
            }
        };
        let superseded = related.iter().any(|x| {
            x.as_parcel()
                .is_some_and(|n| n.seq > p.seq && n.scanned_at_ms < to_ms)
        });
        if !superseded {
            match api::record_views(journal, related) {
                Ok(related) => items.push(Item {
                    seq: p.seq,
                    record: p.clone(),
                    related,
                }),
                Err(e) => {
                    failed = Some(match e {
                        ViewError::Journal(j) => j,
                        other => crate::journal::JournalError::Corrupt {
                            seq: p.seq,
                            reason: other.to_string(),
                        },
                    });
                    return false;
                }
            }
        }
        items.len() < limit && examined < max_examined
    })?;
    if let Some(e) = failed {
        return Err(ViewError::Journal(e));
    }
    let next = (!finished && lowest > 1).then(|| lowest.to_string());
    Ok(WorklistPage {
        from_ms,
        to_ms,
        items,
        next,
        examined,
    })
}

/// `GET /api/worklist?from=&to=&line=&role=&rule=&enterprise=&waybill=&before=&limit=`
pub async fn worklist_api(
    State(s): State<Shared>,
    Query(q): Query<WorklistQuery>,
) -> Result<Json<WorklistPage>, ViewError> {
    let now = unix_ms(std::time::SystemTime::now());
    let shift_start = s
        .shifts
        .shift_at(now as i64)
        .ok()
        .map(|sh| sh.start_ms().max(0) as u64);
    let (from, to, before, limit) = range_of(&q, now, shift_start)?;
    let filter = filter_of(&q)?;
    let journal = s.ctx.journal.clone();
    let page = tokio::task::spawn_blocking(move || {
        page(&journal, &filter, (from, to), before, limit, MAX_EXAMINED)
    })
    .await
    .map_err(|e| ViewError::Task(e.to_string()))??;
    Ok(Json(page))
}

#[cfg(test)]
mod tests;
