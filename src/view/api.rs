//! The JSON API and the plain endpoints (`/metrics`, `/healthz`, `/readyz`), documented in
//! `docs/view.md`. Store reads run on the blocking pool: a long time-range lookup never holds
//! up the runtime that carries the decision path.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bondline_devices::contract::Record;
use serde::{Deserialize, Serialize};

use super::board::{Event, LineSnapshot};
use super::health::{self, Health, LineDevices};
use super::{Shared, ViewError};
use crate::journal::Forwarding;
use crate::metrics::{unix_ms, Metrics};

/// Records a time-range lookup returns by default and at most.
const DEFAULT_LIMIT: usize = 200;
const MAX_LIMIT: usize = 1000;
/// Rows per line the board API returns by default and at most.
const DEFAULT_ROWS: usize = 50;
/// A quiet stream still sends this often, so pages notice a dead connection.
const PING: Duration = Duration::from_secs(15);
/// How long a browser waits before reconnecting a dropped stream.
const RETRY: Duration = Duration::from_secs(3);

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ViewError> + Send + 'static,
) -> Result<T, ViewError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ViewError::Task(e.to_string()))?
}

#[derive(Serialize)]
pub struct BoardResponse {
    gateway: String,
    rule_set: String,
    /// Counters count from here (Unix ms).
    counting_since_ms: u64,
    now_ms: u64,
    lines: Vec<LineSnapshot>,
}

#[derive(Deserialize)]
pub struct BoardQuery {
    rows: Option<String>,
}

pub async fn board(
    State(s): State<Shared>,
    Query(q): Query<BoardQuery>,
) -> Result<Json<BoardResponse>, ViewError> {
    let rows = parse_count(
        q.rows.as_deref(),
        "rows",
        DEFAULT_ROWS,
        super::board::ROWS_PER_LINE,
    )?;
    Ok(Json(board_snapshot(&s, rows)))
}

/// The board as a page starts from it.
pub fn board_snapshot(s: &Shared, rows: usize) -> BoardResponse {
    let lines = s.board().snapshot(rows);
    BoardResponse {
        gateway: s.ctx.gateway.clone(),
        rule_set: rule_set(s),
        counting_since_ms: s.started_ms,
        now_ms: unix_ms(std::time::SystemTime::now()),
        lines,
    }
}

/// Server-sent events: `update` (a board change), `resync` (fetch the board again), `ping`.
/// Beyond `[view] max_event_streams` open streams, 503: each stream holds a connection and a
/// subscription to the board for as long as the page is open.
pub async fn events(State(s): State<Shared>) -> Response {
    let Ok(permit) = s.streams.clone().try_acquire_owned() else {
        Metrics::add(&s.ctx.metrics.view_http.streams_refused, 1);
        let mut r = (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({
                "error": "too many live board streams are open; close another board page or try again later"
            })),
        )
            .into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("30"));
        return r;
    };
    let rx = s.events.subscribe();
    let mut tick = tokio::time::interval(PING);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = (rx, tick, s.ctx.shutdown.clone(), s.lagged.clone(), true);
    let stream = futures::stream::unfold(
        state,
        move |(mut rx, mut tick, stop, lagged, first)| async move {
            use tokio::sync::broadcast::error::RecvError;
            let event = tokio::select! {
                _ = stop.cancelled() => return None,
                _ = tick.tick() => SseEvent::default().event("ping").data(""),
                r = rx.recv() => match r {
                    Ok(Event::Update(json)) => SseEvent::default().event("update").data(&*json),
                    Ok(Event::Resync) => SseEvent::default().event("resync").data(""),
                    Err(RecvError::Lagged(_)) => {
                        Metrics::add(&lagged, 1);
                        SseEvent::default().event("resync").data("")
                    }
                    Err(RecvError::Closed) => return None,
                },
            };
            let event = if first { event.retry(RETRY) } else { event };
            Some((Ok::<_, Infallible>(event), (rx, tick, stop, lagged, false)))
        },
    );
    // The permit goes with the stream: it is given back when the page goes away.
    let stream = futures::StreamExt::map(stream, move |e| {
        let _held = &permit;
        e
    });
    Sse::new(stream).into_response()
}

pub async fn health(State(s): State<Shared>) -> Result<Json<Health>, ViewError> {
    Ok(Json(gather_health(&s).await?))
}

async fn gather_health(s: &Shared) -> Result<Health, ViewError> {
    let now_ms = unix_ms(std::time::SystemTime::now());
    let journal = s.ctx.journal.clone();
    let (backlog, oldest, parked) = blocking(move || Ok(health::outbox(&journal, now_ms)?)).await?;
    let mut expected = Vec::new();
    for l in &s.ctx.lines {
        expected.push((format!("scanner:{}", l.scanner), "scanner"));
        expected.push((format!("plc:{}", l.plc), "plc"));
        if let Some(x) = &l.xray {
            expected.push((format!("xray:{x}"), "xray"));
        }
        for c in &l.cameras {
            expected.push((format!("camera:{c}"), "camera"));
        }
    }
    expected.push(("broker".to_string(), "broker"));
    Ok(Health {
        gateway: s.ctx.gateway.clone(),
        rule_set: rule_set(s),
        platform_signatures: if s.ctx.unsigned_allowed {
            "NOT REQUIRED"
        } else {
            "required"
        },
        links: health::links(&s.ctx.metrics, &expected),
        lines: s
            .ctx
            .lines
            .iter()
            .map(|l| LineDevices {
                line: l.id.clone(),
                scanner: l.scanner.clone(),
                plc: l.plc.clone(),
                xray: l.xray.clone(),
            })
            .collect(),
        backlog,
        oldest_unforwarded: oldest,
        parked,
        journal_level: health::journal_level(&s.ctx.metrics),
        journal_record_bytes: Metrics::get(&s.ctx.metrics.journal_live_bytes),
        journal_platform_bytes: Metrics::get(&s.ctx.metrics.journal_platform_bytes),
        integrity: s.ctx.journal.integrity_problems(),
        uplink_ready: s
            .ctx
            .metrics
            .uplink_ready
            .load(std::sync::atomic::Ordering::Relaxed),
        platform_backlog: health::platform_backlog(&s.ctx.metrics),
        clearance: health::Clearance::of(&s.ctx.table),
        now_ms,
        stream_lagged: Metrics::get(&s.lagged),
    })
}

/// A stored record with where it stands on its way to the platform.
#[derive(Serialize)]
pub struct RecordView {
    seq: u64,
    /// `parcel`, `disposition` or `alert`.
    kind: String,
    forwarding: Forwarding,
    /// The record exactly as sent to the platform, every field included.
    record: serde_json::Value,
}

pub(super) fn record_views(
    journal: &crate::journal::Journal,
    records: Vec<Record>,
) -> Result<Vec<RecordView>, ViewError> {
    records
        .into_iter()
        .map(|r| {
            let record = serde_json::to_value(&r).unwrap_or_default();
            Ok(RecordView {
                seq: r.seq(),
                kind: record
                    .get("kind")
                    .and_then(|k| k.as_str())
                    .unwrap_or("")
                    .to_string(),
                forwarding: journal.forwarding(r.seq())?,
                record,
            })
        })
        .collect()
}

#[derive(Serialize)]
pub struct ParcelResponse {
    waybill: String,
    /// Every record of the waybill in sequence order: decisions, dispositions, alerts.
    records: Vec<RecordView>,
}

pub async fn parcel(
    State(s): State<Shared>,
    Path(waybill): Path<String>,
) -> Result<Json<ParcelResponse>, ViewError> {
    let waybill = check_waybill(&waybill)?;
    let journal = s.ctx.journal.clone();
    let w = waybill.clone();
    let records = blocking(move || {
        let records = journal.waybill_records(&w)?;
        record_views(&journal, records)
    })
    .await?;
    Ok(Json(ParcelResponse { waybill, records }))
}

#[derive(Deserialize)]
pub struct RangeQuery {
    from: Option<String>,
    to: Option<String>,
    limit: Option<String>,
}

#[derive(Serialize)]
pub struct RangeResponse {
    from_ms: u64,
    to_ms: u64,
    /// Newest first.
    records: Vec<RecordView>,
    /// More records matched than `limit`.
    truncated: bool,
}

pub async fn records(
    State(s): State<Shared>,
    Query(q): Query<RangeQuery>,
) -> Result<Json<RangeResponse>, ViewError> {
    let now = unix_ms(std::time::SystemTime::now());
    let (from_ms, to_ms, limit) = parse_range(&q, now)?;
    let journal = s.ctx.journal.clone();
    let (records, truncated) = blocking(move || {
        let (records, truncated) = journal.records_between(from_ms, to_ms, limit)?;
        Ok((record_views(&journal, records)?, truncated))
    })
    .await?;
    Ok(Json(RangeResponse {
        from_ms,
        to_ms,
        records,
        truncated,
    }))
}

pub async fn metrics(State(s): State<Shared>) -> Result<Response, ViewError> {
    let health = gather_health(&s).await?;
    let text = {
        let board = s.board();
        super::prometheus::render(&s.ctx.metrics, board.decisions(), &health)
    };
    Ok((
        [(header::CONTENT_TYPE, super::prometheus::CONTENT_TYPE)],
        text,
    )
        .into_response())
}

/// `GET /api/rules`: the rules in force, each with its kind and parameters, so the pages can
/// write a decision's reasons from structured fields in the reader's language (a record
/// carries the rule's name and an English reason; the kind and parameters come from here when
/// the record's rule set is the one in force).
pub async fn rules(State(s): State<Shared>) -> Json<serde_json::Value> {
    let set = s.ctx.rules.load_full();
    let rules: Vec<serde_json::Value> = set
        .rules
        .iter()
        .map(|r| {
            let mut v = rule_kind_fields(&r.kind);
            v["name"] = r.name.clone().into();
            v["target"] = r.target.map(|t| t.as_str()).into();
            v
        })
        .collect();
    Json(serde_json::json!({ "version": set.version, "rules": rules }))
}

/// A rule kind as its wire name (`kind`) and parameters.
pub fn rule_kind_fields(kind: &crate::rules::engine::RuleKind) -> serde_json::Value {
    use crate::rules::engine::RuleKind as K;
    use serde_json::json;
    match kind {
        K::Instruction => json!({ "kind": "instruction" }),
        K::Undeclared => json!({ "kind": "undeclared" }),
        K::UnverifiedIdentity => json!({ "kind": "unverified_identity" }),
        K::SuspendedEnterprise => json!({ "kind": "suspended_enterprise" }),
        K::WeightMismatch {
            tolerance_pct,
            tolerance_g,
        } => {
            json!({ "kind": "weight_mismatch", "tolerance_pct": tolerance_pct, "tolerance_g": tolerance_g })
        }
        K::ConsumerLimit {
            window,
            window_days,
            max_parcels,
            max_value_minor,
            currency,
        } => json!({
            "kind": "consumer_limit",
            "window": window,
            "window_days": window_days,
            "max_parcels": max_parcels,
            "max_value_minor": max_value_minor,
            "currency": currency,
        }),
        K::TransactionLimit {
            max_value_minor,
            currency,
        } => json!({
            "kind": "transaction_limit",
            "max_value_minor": max_value_minor,
            "currency": currency,
        }),
        K::Sampling { rate_ppm } => json!({ "kind": "sampling", "rate_ppm": rate_ppm }),
        K::XraySuspect => json!({ "kind": "xray_suspect" }),
    }
}

/// The process is up and answering.
pub async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready: the journal reads, its writer runs, the clearance table is loaded, and the daemon
/// is not shutting down. While the table loads the lines hold every waybill
/// (`state_loading`), so the gateway is up (`/healthz`) but not ready.
pub async fn readyz(State(s): State<Shared>) -> Response {
    let mut problems = Vec::new();
    if let Some(l) = s.ctx.table.loading() {
        problems.push(if l.expected > 0 {
            format!(
                "clearance table loading: {} of about {} stored entries ({}%); parcels are held as state_loading until then",
                l.done,
                l.expected,
                (l.done * 100 / l.expected).min(99)
            )
        } else {
            format!(
                "clearance table loading: {} stored entries so far; parcels are held as state_loading until then",
                l.done
            )
        });
    }
    if s.ctx.shutdown.is_cancelled() {
        problems.push("shutting down".to_string());
    }
    if s.ctx.accepted.has_changed().is_err() {
        problems.push("journal writer stopped".to_string());
    }
    if let Err(e) = s.ctx.journal.chain_head() {
        problems.push(format!("journal unreadable: {e}"));
    }
    problems.extend(s.ctx.journal.integrity_problems());
    if problems.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", problems.join("; ")),
        )
            .into_response()
    }
}

pub async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({ "error": "no such page; see docs/view.md" })),
    )
        .into_response()
}

fn rule_set(s: &Shared) -> String {
    s.ctx.rules.load().version.clone()
}

// ---- query parsing (pure) ------------------------------------------------------------

/// A waybill as typed: surrounding blanks dropped, 1 to 64 printable characters.
fn check_waybill(s: &str) -> Result<String, ViewError> {
    let w = s.trim();
    if w.is_empty() || w.len() > 64 || w.chars().any(char::is_control) {
        return Err(ViewError::invalid("bad_waybill", &[]));
    }
    Ok(w.to_string())
}

/// Unix ms, or an RFC 3339 time (`2026-11-01T08:00:00Z`).
pub(super) fn parse_time(s: &str, name: &str) -> Result<u64, ViewError> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    humantime::parse_rfc3339_weak(s)
        .map(unix_ms)
        .map_err(|_| ViewError::invalid("bad_time", &[("name", name)]))
}

pub(super) fn parse_count(
    s: Option<&str>,
    name: &str,
    default: usize,
    max: usize,
) -> Result<usize, ViewError> {
    match s {
        None => Ok(default),
        Some(v) => match v.trim().parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ViewError::invalid(
                "bad_count",
                &[("name", name), ("max", &max.to_string())],
            )),
        },
    }
}

/// `from` defaults to an hour before `to`, `to` to now; `to` is exclusive.
fn parse_range(q: &RangeQuery, now_ms: u64) -> Result<(u64, u64, usize), ViewError> {
    let to = match &q.to {
        Some(t) => parse_time(t, "to")?,
        None => now_ms.saturating_add(1),
    };
    let from = match &q.from {
        Some(f) => parse_time(f, "from")?,
        None => to.saturating_sub(3_600_000),
    };
    if from > to {
        return Err(ViewError::invalid("range_reversed", &[]));
    }
    let limit = parse_count(q.limit.as_deref(), "limit", DEFAULT_LIMIT, MAX_LIMIT)?;
    Ok((from, to, limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(from: Option<&str>, to: Option<&str>, limit: Option<&str>) -> RangeQuery {
        RangeQuery {
            from: from.map(str::to_string),
            to: to.map(str::to_string),
            limit: limit.map(str::to_string),
        }
    }

    fn bad(r: Result<impl std::fmt::Debug, ViewError>) -> String {
        match r {
            Err(e @ (ViewError::BadRequest(_) | ViewError::Invalid { .. })) => e.to_string(),
            other => panic!("expected a bad request, got {other:?}"),
        }
    }

    #[test]
    fn ranges_default_to_the_last_hour_and_accept_ms_and_rfc3339() {
        assert_eq!(
            parse_range(&q(None, None, None), 10_000_000).unwrap(),
            (6_400_001, 10_000_001, DEFAULT_LIMIT)
        );
        assert_eq!(
            parse_range(&q(Some("1000"), Some("2026-01-01T00:00:00Z"), Some("5")), 0).unwrap(),
            (1000, 1_767_225_600_000, 5)
        );
        assert_eq!(
            parse_range(&q(Some("0"), Some("10"), None), 0).unwrap().0,
            0
        );
    }

    #[test]
    fn bad_ranges_are_refused_with_a_reason() {
        assert!(bad(parse_range(&q(Some("yesterday"), None, None), 0)).contains("from"));
        assert!(bad(parse_range(&q(Some("20"), Some("10"), None), 0)).contains("after"));
        assert!(bad(parse_range(&q(None, None, Some("0")), 5)).contains("limit"));
        assert!(bad(parse_range(&q(None, None, Some("1001")), 5)).contains("1000"));
        assert!(bad(parse_range(&q(None, None, Some("-1")), 5)).contains("limit"));
    }

    #[test]
    fn waybills_are_trimmed_and_bounded() {
        assert_eq!(check_waybill("  BL123 ").unwrap(), "BL123");
        bad(check_waybill(""));
        bad(check_waybill("   "));
        bad(check_waybill(&"X".repeat(65)));
        bad(check_waybill("BL\n1"));
        assert_eq!(parse_count(None, "rows", 50, 200).unwrap(), 50);
        bad(parse_count(Some("x"), "rows", 50, 200));
    }
}
