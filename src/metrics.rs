//! Counters and link states shared by the daemon's tasks, read by the demo summary, the
//! tests and (later) the staff view. Plain atomics: updating them never blocks a task.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use bondline_devices::contract::LaneRole;

/// Process-wide counters. Monotonic unless named as a gauge.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Frames that yielded a parcel (reads and no-reads).
    pub parcels: AtomicU64,
    pub no_reads: AtomicU64,
    /// Frames rejected by the decoder (noise, over-long, malformed).
    pub frames_rejected: AtomicU64,
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
    /// Gauge: the journal's capacity level (`journal::capacity::Level` as a number).
    pub journal_level: std::sync::atomic::AtomicU8,
    /// Gauge: free bytes on the journal's filesystem, and bytes of stored records.
    pub journal_free_bytes: AtomicU64,
    pub journal_live_bytes: AtomicU64,
    pub platform_messages: AtomicU64,
    pub platform_rejected: AtomicU64,
    /// Broker sessions that ended (outages, refusals, keep-alive timeouts).
    pub uplink_disconnects: AtomicU64,
    /// Gauge: the uplink has a session with the broker and its subscriptions are acknowledged.
    pub uplink_ready: AtomicBool,
    links: Mutex<BTreeMap<String, LinkStatus>>,
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
            crate::journal::capacity::Level::from_u8(self.journal_level.load(Ordering::Relaxed))
                .as_str(),
            if down.is_empty() { "none".to_string() } else { down.join(", ") },
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

/// Milliseconds since the Unix epoch, for records.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
