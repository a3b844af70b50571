//! Device and store health for people and scrapers: each link's state with its last error
//! and since when, the backlog and its oldest record, the rule set in force.

use std::sync::atomic::Ordering;

use serde::Serialize;

use crate::journal::{Journal, JournalError};
use crate::metrics::{unix_ms, Metrics};

/// What `/api/health` returns and `/metrics` reports on.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Health {
    pub gateway: String,
    /// Version of the customs rule set deciding now.
    pub rule_set: String,
    /// Whether platform messages must be signed: `required`, or `NOT REQUIRED` on a line
    /// configured with `allow_unsigned` (demo only), which the board shows as a warning.
    pub platform_signatures: &'static str,
    pub links: Vec<LinkHealth>,
    pub lines: Vec<LineDevices>,
    /// Records waiting for the broker's acknowledge.
    pub backlog: u64,
    pub oldest_unforwarded: Option<Oldest>,
    pub parked: u64,
    /// `ok`, `nearly_full`, `over_quota` or `full`.
    pub journal_level: &'static str,
    /// Bytes of stored records and of stored platform state: the two parts of the quota.
    pub journal_record_bytes: u64,
    pub journal_platform_bytes: u64,
    /// Integrity problems found at start (stored state refused, the journal's chain
    /// broken), as operator text; empty when none. The board shows them as a warning.
    pub integrity: Vec<String>,
    pub uplink_ready: bool,
    /// Platform messages being taken in on the current broker session, while there are any.
    pub platform_backlog: Option<PlatformBacklog>,
    /// What the clearance table holds in memory.
    pub clearance: Clearance,
    pub now_ms: u64,
    /// Board streams that fell behind since start (for `/metrics`).
    #[serde(skip)]
    pub stream_lagged: u64,
}

/// What the clearance table holds in memory: its size is the daemon's memory. Declarations
/// go with the clearance period, and the consumers (with their histories) with their last
/// held declaration (README).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Clearance {
    pub declarations: u64,
    pub instructions: u64,
    /// Consumers that held declarations name, each with its history in memory.
    pub consumers: u64,
}

impl Clearance {
    pub fn of(table: &crate::rules::ClearanceTable) -> Clearance {
        Clearance {
            declarations: table.declarations() as u64,
            instructions: table.instructions() as u64,
            consumers: table.consumers() as u64,
        }
    }
}

/// The platform's messages being taken in (a backlog after an outage, or a burst).
#[derive(Debug, Clone, Serialize)]
pub struct PlatformBacklog {
    /// Received on this session and not yet acknowledged.
    pub in_flight: u64,
    /// Stored and acknowledged since start.
    pub ingested: u64,
    /// Messages per second over the last seconds.
    pub rate: u64,
    /// Held to `uplink.platform_rate_while_sorting` while the lines sort.
    pub paced: bool,
}

/// The backlog line of the health area: shown while messages are in flight or arriving.
pub fn platform_backlog(metrics: &Metrics) -> Option<PlatformBacklog> {
    let b = PlatformBacklog {
        in_flight: Metrics::get(&metrics.platform_in_flight),
        ingested: Metrics::get(&metrics.platform_ingested),
        rate: Metrics::get(&metrics.platform_ingest_rate),
        paced: metrics
            .platform_ingest_paced
            .load(std::sync::atomic::Ordering::Relaxed),
    };
    (b.in_flight > 0 || b.rate > 0).then_some(b)
}

/// One device or broker link.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LinkHealth {
    /// `plc:<device>`, `scanner:<device>`, `spool:<device>`, `evidence` or `broker`.
    pub name: String,
    /// `plc`, `scanner`, `xray`, `spool` (an X-ray image spool directory), `evidence` (the
    /// directory X-ray originals are kept in) or `broker`.
    pub kind: &'static str,
    /// `up`, `down`, or `not connected yet` (no attempt has finished since start).
    pub state: &'static str,
    /// When the state last changed (Unix ms).
    pub since_ms: Option<u64>,
    /// The last error seen on this link, kept after it recovers.
    pub last_error: Option<String>,
}

/// The devices of one line, by configured name.
#[derive(Debug, Clone, Serialize)]
pub struct LineDevices {
    pub line: String,
    pub scanner: String,
    pub plc: String,
    /// The line's X-ray device; none can be configured yet.
    pub xray: Option<String>,
}

/// The oldest record waiting for its acknowledge.
#[derive(Debug, Clone, Serialize)]
pub struct Oldest {
    pub seq: u64,
    pub at_ms: u64,
    pub age_ms: u64,
}

/// The links the configuration expects (in that order), then any other link the daemon
/// reports, with their current state.
pub fn links(metrics: &Metrics, expected: &[(String, &'static str)]) -> Vec<LinkHealth> {
    let known = metrics.links();
    let mut out: Vec<LinkHealth> = expected
        .iter()
        .map(|(name, kind)| link(name, kind, known.get(name)))
        .collect();
    for (name, status) in &known {
        if !expected.iter().any(|(n, _)| n == name) {
            let kind = match name.split(':').next() {
                Some("plc") => "plc",
                Some("scanner") => "scanner",
                Some("xray") => "xray",
                Some("spool") => "spool",
                Some("evidence") => "evidence",
                Some("camera") => "camera",
                _ => "broker",
            };
            out.push(link(name, kind, Some(status)));
        }
    }
    out
}

fn link(name: &str, kind: &'static str, status: Option<&crate::metrics::LinkStatus>) -> LinkHealth {
    LinkHealth {
        name: name.to_string(),
        kind,
        state: match status {
            Some(s) if s.up => "up",
            Some(_) => "down",
            None => "not connected yet",
        },
        since_ms: status.map(|s| unix_ms(s.since)),
        last_error: status.and_then(|s| s.last_error.clone()),
    }
}

/// The outbox side of health: backlog, its oldest record, parked records. Reads the store:
/// call it off the async threads.
pub fn outbox(journal: &Journal, now_ms: u64) -> Result<(u64, Option<Oldest>, u64), JournalError> {
    let (head, _) = journal.chain_head()?;
    let w = journal.forwarded_watermark();
    let oldest = journal
        .outbox_from(w + 1, head, 1)?
        .pop()
        .map(|(seq, bytes)| {
            let at_ms = serde_json::from_slice::<bondline_devices::contract::Record>(&bytes)
                .map(|r| r.at_ms())
                .unwrap_or(0);
            Oldest {
                seq,
                at_ms,
                age_ms: now_ms.saturating_sub(at_ms),
            }
        });
    Ok((
        journal.backlog_len() as u64,
        oldest,
        journal.parked()?.len() as u64,
    ))
}

/// The journal's capacity level as a word.
pub fn journal_level(metrics: &Metrics) -> &'static str {
    crate::journal::capacity::Level::from_u8(metrics.journal_level.load(Ordering::Relaxed)).as_str()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expected_links_come_first_and_unknown_ones_are_kept() {
        let m = Metrics::default();
        m.set_link("plc:p", false, Some("connection refused".into()));
        m.set_link("broker", true, None);
        let l = links(
            &m,
            &[("scanner:s".into(), "scanner"), ("plc:p".into(), "plc")],
        );
        assert_eq!(l.len(), 3);
        assert_eq!((l[0].state, l[0].since_ms), ("not connected yet", None));
        assert_eq!(l[1].state, "down");
        assert_eq!(l[1].last_error.as_deref(), Some("connection refused"));
        assert_eq!(
            (l[2].name.as_str(), l[2].kind, l[2].state),
            ("broker", "broker", "up")
        );
    }
}
