//! Counters and link states shared by the daemon's tasks, read by the demo summary, the
//! tests and the staff view (`/metrics`). Plain atomics: updating them never blocks a task.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use bondline_devices::contract::LaneRole;

mod histogram;
pub use histogram::{new_hdr, Histogram, Percentiles, Snapshot, LATENCY_BUCKETS_US};

/// Process-wide counters. Monotonic unless named as a gauge.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Frames that yielded a parcel (reads and no-reads).
    pub parcels: AtomicU64,
    /// When the last parcel was scanned, on [`mono_ms`]'s clock (0: none since start). The
    /// platform ingest is paced while it is recent (`uplink::ingest_pace`).
    pub last_scan_ms: AtomicU64,
    pub no_reads: AtomicU64,
    /// Frames rejected by the decoder (noise, over-long, malformed).
    pub frames_rejected: AtomicU64,
    /// Parcels per lane role by their current decision: a re-decision moves its parcel.
    lanes: [AtomicU64; 4],
    pub diverts_acked: AtomicU64,
    pub diverts_failed: AtomicU64,
    /// Records flushed to the journal (accepted).
    pub records_accepted: AtomicU64,
    /// Records acknowledged by the broker.
    pub records_forwarded: AtomicU64,
    /// Gauge: records in the outbox, not yet acknowledged.
    pub backlog: AtomicU64,
    pub journal_errors: AtomicU64,
    /// Records taken out of the outbox because the broker will not take them.
    pub records_parked: AtomicU64,
    /// Gauge: records waiting in memory for room on the journal's disk.
    pub records_held: AtomicU64,
    /// Records that could be neither stored nor held (logged at error level each).
    pub records_refused: AtomicU64,
    /// Forwarded records removed by retention or to make room.
    pub records_purged: AtomicU64,
    /// Gauge: the journal's capacity level ([`JournalLevel`] as a number).
    pub journal_level: std::sync::atomic::AtomicU8,
    /// Gauge: free bytes on the journal's filesystem, and bytes of stored records.
    pub journal_free_bytes: AtomicU64,
    pub journal_live_bytes: AtomicU64,
    /// Gauge: bytes of stored platform state (declarations, instructions, notices, rule
    /// sets); they count towards the quota with the records.
    pub journal_platform_bytes: AtomicU64,
    /// Bytes of records the journal may hold before the writer holds new ones (see
    /// `journal::capacity::write_budget`); 0 until first measured means "no limit known".
    pub journal_write_budget: AtomicU64,
    /// Gauge: bytes the journal writer needs for its next write of held records (the oldest
    /// one with its index entry); 0 while it holds none. See `journal::capacity::level`.
    pub journal_next_write: AtomicU64,
    /// Distinct platform messages received: the broker's redeliveries of a message already
    /// stored are counted in `platform_redeliveries` instead.
    pub platform_messages: AtomicU64,
    pub platform_rejected: AtomicU64,
    /// Platform messages delivered again: already stored (same id or same content), or
    /// marked as a redelivery by the broker and refused.
    pub platform_redeliveries: AtomicU64,
    /// Platform messages stored (or refused and reported) and acknowledged to the broker.
    pub platform_ingested: AtomicU64,
    /// Gauge: platform messages received on this session and not yet acknowledged.
    pub platform_in_flight: AtomicU64,
    /// Gauge: platform messages ingested per second, over the last seconds.
    pub platform_ingest_rate: AtomicU64,
    /// Gauge: the platform ingest is held to `uplink.platform_rate_while_sorting` because
    /// the lines are sorting (`uplink::ingest_pace`).
    pub platform_ingest_paced: AtomicBool,
    /// Broker sessions that ended (outages, refusals, keep-alive timeouts).
    pub uplink_disconnects: AtomicU64,
    /// Gauge: the uplink has a session with the broker and its subscriptions are acknowledged.
    pub uplink_ready: AtomicBool,
    /// Scanner frame received → PLC-acknowledged divert.
    pub decision_latency: Histogram,
    /// One group commit of the journal: transaction and flush to disk, retries included.
    pub journal_flush_latency: Histogram,
    /// Release intents made durable ahead of their commands: one batch of them, written and
    /// synced in their write-ahead log (what a release command waits for).
    pub intent_flush_latency: Histogram,
    /// Acknowledges that came after the parcel's divert deadline.
    pub late_diverts: AtomicU64,
    /// Acknowledges of commands whose job had already ended without it.
    pub late_acks: AtomicU64,
    /// Commands not sent because the deadline had passed.
    pub deadlines_missed: AtomicU64,
    /// Re-commits after new information before the deadline.
    pub recommits: AtomicU64,
    /// Clearance changes a line fell behind on and dropped (it then decided every parcel
    /// before its deadline again).
    pub changes_missed: AtomicU64,
    pub dispositions: AtomicU64,
    pub alerts: AtomicU64,
    /// Parcels the PLC reports in the release lane without a release decision. Must stay 0.
    pub released_without_decision: AtomicU64,
    /// Parcels sent to inspection because their waybill was already released (duplicate
    /// labels).
    pub duplicate_labels: AtomicU64,
    /// Decisions flagged by a rule (sent on the anomalies topic).
    pub anomalies: AtomicU64,
    /// Anomalies not sent because the uplink's anomaly queue was full.
    pub anomalies_dropped: AtomicU64,
    /// Platform-topic messages refused as not from the platform (signature checks).
    pub forged_messages: AtomicU64,
    /// Of those, messages signed for other gateways (reason `wrong_target`).
    pub wrong_target_messages: AtomicU64,
    /// Rule sets applied (from the file, a reload or the platform) and refused.
    pub rule_sets_applied: AtomicU64,
    pub rule_sets_refused: AtomicU64,
    /// X-ray verdicts read from the scanners' rings.
    pub xray_verdicts: AtomicU64,
    /// Failed or refused X-ray requests.
    pub xray_errors: AtomicU64,
    /// X-ray verdicts overwritten before they were read, or that would not decode.
    pub xray_events_lost: AtomicU64,
    /// X-ray verdicts joined to a parcel, and those that matched none.
    pub xray_matched: AtomicU64,
    pub xray_unmatched: AtomicU64,
    /// Parcels that reached their deadline without an X-ray verdict.
    pub xray_missing: AtomicU64,
    /// X-ray images kept and handed to their line (spool and upload), corrupt ones included.
    pub images_ingested: AtomicU64,
    /// Of those, images that did not decode (kept and forwarded with their error).
    pub images_with_errors: AtomicU64,
    /// Bytes of the originals ingested.
    pub image_bytes: AtomicU64,
    /// Spool files moved to `rejected/` (bad name, too large).
    pub images_rejected: AtomicU64,
    /// Attempts to keep an original that failed (the image waits or the upload is refused).
    pub images_store_failed: AtomicU64,
    /// Image records journaled without a parcel because their line did not take them.
    pub images_unrouted: AtomicU64,
    /// Camera snapshots decoded, kept and recorded with their parcel.
    pub snapshots_taken: AtomicU64,
    /// Snapshot records with `no evidence: <reason>` (camera down, slow, garbage, queue full).
    pub snapshots_failed: AtomicU64,
    /// One image: arrival to kept, chunked and handed to its line (decoding included).
    pub image_ingest_latency: Histogram,
    /// The staff view's and the upload endpoint's connections and logins.
    pub view_http: HttpStats,
    pub upload_http: HttpStats,
    links: Mutex<BTreeMap<String, LinkStatus>>,
}

/// One of the daemon's HTTP servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpServer {
    View,
    Upload,
}

impl HttpServer {
    pub fn name(self) -> &'static str {
        match self {
            HttpServer::View => "staff view",
            HttpServer::Upload => "image upload",
        }
    }
}

/// Budget counters of one HTTP server (see `view::serve` and `view::throttle`).
#[derive(Debug, Default)]
pub struct HttpStats {
    /// Gauge: connections open now.
    pub connections: AtomicU64,
    /// Times the server stopped accepting because its connection limit was reached.
    pub connection_limit_reached: AtomicU64,
    /// Connections closed by the header or idle timeout.
    pub timed_out: AtomicU64,
    /// Requests with wrong credentials.
    pub login_failures: AtomicU64,
    /// Requests refused with 429 by the failed-login throttle.
    pub logins_throttled: AtomicU64,
    /// Event streams refused with 503 because the stream limit was reached.
    pub streams_refused: AtomicU64,
}

impl Metrics {
    /// The counters of `server`.
    pub fn http(&self, server: HttpServer) -> &HttpStats {
        match server {
            HttpServer::View => &self.view_http,
            HttpServer::Upload => &self.upload_http,
        }
    }
}

/// The state of one device or broker link, as of its last change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkStatus {
    pub up: bool,
    pub since: SystemTime,
    pub last_error: Option<String>,
}

impl Metrics {
    pub fn count_lane(&self, role: LaneRole) {
        self.lanes[lane_index(role)].fetch_add(1, Ordering::Relaxed);
    }

    /// A re-decision took a parcel from one lane role to another.
    pub fn move_lane(&self, from: LaneRole, to: LaneRole) {
        Metrics::sub(&self.lanes[lane_index(from)], 1);
        self.count_lane(to);
    }

    pub fn lane_count(&self, role: LaneRole) -> u64 {
        self.lanes[lane_index(role)].load(Ordering::Relaxed)
    }

    /// Records a link's state; only a change of state updates `since`.
    pub fn set_link(&self, name: &str, up: bool, error: Option<String>) {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        let entry = links.entry(name.to_string()).or_insert(LinkStatus {
            up: !up,
            since: SystemTime::now(),
            last_error: None,
        });
        if entry.up != up {
            entry.up = up;
            entry.since = SystemTime::now();
        }
        if error.is_some() {
            entry.last_error = error;
        }
    }

    pub fn links(&self) -> BTreeMap<String, LinkStatus> {
        self.links.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Lowers a gauge, stopping at zero.
    pub fn sub(gauge: &AtomicU64, n: u64) {
        let _ = gauge.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
            Some(v.saturating_sub(n))
        });
    }

    /// One line for a terminal: parcels by lane, PLC and uplink progress.
    /// (Latency and deadlines are in [`Metrics::timing_summary`].)
    pub fn summary(&self) -> String {
        let g = Metrics::get;
        let links = self.links();
        let down: Vec<&str> = links
            .iter()
            .filter(|(_, s)| !s.up)
            .map(|(n, _)| n.as_str())
            .collect();
        format!(
            "parcels {} (release {} inspection {} hold {} exception {}) | rejected frames {} | diverts acked {} failed {} | records stored {} forwarded {} backlog {} | journal {} | links down: {}",
            g(&self.parcels),
            self.lane_count(LaneRole::Release),
            self.lane_count(LaneRole::Inspection),
            self.lane_count(LaneRole::Hold),
            self.lane_count(LaneRole::Exception),
            g(&self.frames_rejected),
            g(&self.diverts_acked),
            g(&self.diverts_failed),
            g(&self.records_accepted),
            g(&self.records_forwarded),
            g(&self.backlog),
            JournalLevel::from_u8(self.journal_level.load(Ordering::Relaxed))
                .as_str(),
            if down.is_empty() { "none".to_string() } else { down.join(", ") },
        )
    }
}

impl Metrics {
    /// Decision latency and deadline figures in one line.
    pub fn timing_summary(&self) -> String {
        let h = &self.decision_latency;
        format!(
            "scan→PLC ack: {} | late diverts {} deadlines missed {} recommits {} | dispositions {} alerts {} released without decision {}",
            h.percentiles(),
            Metrics::get(&self.late_diverts),
            Metrics::get(&self.deadlines_missed),
            Metrics::get(&self.recommits),
            Metrics::get(&self.dispositions),
            Metrics::get(&self.alerts),
            Metrics::get(&self.released_without_decision),
        )
    }
}

fn lane_index(role: LaneRole) -> usize {
    match role {
        LaneRole::Release => 0,
        LaneRole::Inspection => 1,
        LaneRole::Hold => 2,
        LaneRole::Exception => 3,
    }
}

/// How full the journal is (`journal::capacity` decides; this is the gauge's value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JournalLevel {
    Ok,
    NearlyFull,
    OverQuota,
    Full,
}

impl JournalLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            JournalLevel::Ok => "ok",
            JournalLevel::NearlyFull => "nearly_full",
            JournalLevel::OverQuota => "over_quota",
            JournalLevel::Full => "full",
        }
    }

    pub fn from_u8(v: u8) -> JournalLevel {
        match v {
            1 => JournalLevel::NearlyFull,
            2 => JournalLevel::OverQuota,
            3 => JournalLevel::Full,
            _ => JournalLevel::Ok,
        }
    }

    pub fn as_u8(self) -> u8 {
        match self {
            JournalLevel::Ok => 0,
            JournalLevel::NearlyFull => 1,
            JournalLevel::OverQuota => 2,
            JournalLevel::Full => 3,
        }
    }
}

/// Milliseconds since the Unix epoch, for records (said once, in the contract).
pub use bondline_devices::contract::unix_ms;

/// Milliseconds on a monotonic clock (unmoved by changes to the wall clock), counted from a
/// fixed point in this process, never 0: for times compared across threads in an atomic.
pub fn mono_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(std::time::Instant::now);
    (epoch.elapsed().as_millis() as u64).saturating_add(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn histogram_quantiles_are_the_recorded_values_within_one_percent() {
        let h = Histogram::default();
        assert_eq!(h.quantile_us(0.99), 0);
        for _ in 0..98 {
            h.record(Duration::from_micros(80));
        }
        h.record(Duration::from_micros(900));
        h.record(Duration::from_millis(7));
        assert_eq!(h.count(), 100);
        assert_eq!(h.quantile_us(0.5), 80);
        assert!(
            (900..=909).contains(&h.quantile_us(0.99)),
            "{}",
            h.quantile_us(0.99)
        );
        assert_eq!(h.quantile_us(1.0), 7_000, "capped at the maximum seen");
        assert_eq!(h.max_us(), 7_000);
    }
}
