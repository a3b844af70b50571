//! Video evidence: camera snapshots of each parcel at the scanner and, for parcels bound for
//! a watched lane (inspection, hold), at the lane, joined to the parcel's record.
//!
//! The line decides which parcel each camera should see and when ([`schedule`], pure), and
//! hands the request on with a non-blocking `try_send` ([`LineCameras::request`]); a full
//! queue is recorded at once as `no evidence: camera queue full`. Everything that waits
//! (the moment the parcel reaches the field, the HTTP fetch, decoding, the durable write)
//! runs in one task per camera ([`capture`]), so a camera that is down, slow or returns
//! garbage costs a `no evidence: <reason>` record and a down `camera:NAME` health link,
//! never a decision.
//!
//! Snapshots go the way of X-ray images: checked, hashed and thumbnailed by
//! [`crate::evidence::process`], kept by hash in the evidence directory
//! ([`crate::evidence::store`]) and forwarded as image chunk records through the journal.
//!
//! - [`config`]: the `[cameras.NAME]` sections.
//! - [`schedule`]: which captures a scan or a lane commitment asks for; the failure record.
//! - [`fetch`]: one HTTP(S) snapshot with basic or digest credentials, within a timeout.
//! - [`capture`]: a camera's task.

pub mod capture;
pub mod fetch;
pub mod schedule;

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::evidence::EvidenceConfig;
use crate::journal::RecordSink;
use crate::metrics::Metrics;

pub use crate::config::camera::{Auth, CameraConfig, LineFacts, RawCamera};
pub use schedule::{Capture, Watch};

/// Captures waiting for one camera. At line speed a camera has a few per second; this is
/// minutes of a slow camera's backlog at most before the line records `queue full`.
pub const QUEUE: usize = 256;

/// A line's cameras, as the line task holds them.
#[derive(Debug, Clone)]
pub struct LineCameras {
    gateway: String,
    line: String,
    pub watches: Vec<Watch>,
    queues: HashMap<String, mpsc::Sender<Capture>>,
}

impl LineCameras {
    /// Whether any camera watches `lane`.
    pub fn watches_lane(&self, lane: u16) -> bool {
        self.watches.iter().any(|w| w.lanes.contains(&lane))
    }

    /// Hands the captures to their cameras without waiting; one that cannot be queued is
    /// journaled at once as `no evidence: <why>`.
    pub fn request(&self, captures: Vec<Capture>, sink: &RecordSink, metrics: &Metrics) {
        for c in captures {
            let Some(q) = self.queues.get(&c.camera) else {
                continue;
            };
            let why = match q.try_send(c) {
                Ok(()) => continue,
                Err(TrySendError::Full(c)) => (c, "camera queue full"),
                Err(TrySendError::Closed(c)) => (c, "camera task stopped"),
            };
            Metrics::add(&metrics.snapshots_failed, 1);
            sink.push(schedule::no_evidence(
                &self.gateway,
                &self.line,
                &why.0,
                why.1,
            ));
        }
    }
}

/// Starts one task per camera; returns each line's cameras (by line id) and the tasks. The
/// tasks end at `shutdown`, recording the captures still queued; they hold `sink`.
pub fn start(
    cameras: &[CameraConfig],
    evidence: &EvidenceConfig,
    gateway: &str,
    sink: RecordSink,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> (HashMap<String, LineCameras>, Vec<JoinHandle<()>>) {
    let mut lines: HashMap<String, LineCameras> = HashMap::new();
    let mut tasks = Vec::new();
    if !cameras.is_empty() {
        if let Err(e) = std::fs::create_dir_all(&evidence.dir) {
            // Not fatal: each snapshot then records why it could not be kept.
            tracing::error!(dir = %evidence.dir.display(), error = %e, "cannot create the evidence directory");
        }
    }
    for c in cameras {
        let (tx, rx) = mpsc::channel(QUEUE);
        let entry = lines.entry(c.line.clone()).or_insert_with(|| LineCameras {
            gateway: gateway.to_string(),
            line: c.line.clone(),
            watches: Vec::new(),
            queues: HashMap::new(),
        });
        entry.watches.push(Watch {
            camera: c.name.clone(),
            scan: c.scan,
            lanes: c.lanes.clone(),
            offset: c.offset,
        });
        entry.queues.insert(c.name.clone(), tx);
        // Shown in the health from the start, as up until a snapshot fails.
        metrics.set_link(&format!("camera:{}", c.name), true, None);
        let camera = capture::Camera {
            name: c.name.clone(),
            gateway: gateway.to_string(),
            line: c.line.clone(),
            target: fetch::Target {
                url: c.url.clone(),
                auth: c.auth.clone(),
                tls: c.tls.clone(),
                timeout: c.timeout,
            },
            dir: evidence.dir.clone(),
            thumbnail_px: evidence.thumbnail_px,
            max_forward_bytes: evidence.max_forward_bytes,
            sink: sink.clone(),
            metrics: metrics.clone(),
        };
        tasks.push(tokio::spawn(camera.run(rx, shutdown.clone())));
    }
    (lines, tasks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bondline_devices::contract::Record;
    use std::time::{Duration, Instant, SystemTime};

    #[test]
    fn a_full_camera_queue_is_recorded_at_once_and_never_waited_for() {
        let metrics = Arc::new(Metrics::default());
        let (sink, mut records) = RecordSink::for_tests(metrics.clone());
        let (tx, mut rx) = mpsc::channel(1);
        let cams = LineCameras {
            gateway: "gw".into(),
            line: "L1".into(),
            watches: vec![Watch {
                camera: "entry".into(),
                scan: true,
                lanes: vec![],
                offset: Duration::from_millis(200),
            }],
            queues: HashMap::from([("entry".to_string(), tx)]),
        };
        let at = |parcel| {
            schedule::captures(
                &cams.watches,
                schedule::At::Scan,
                parcel,
                Some("BL1"),
                Instant::now(),
                SystemTime::now(),
            )
        };
        cams.request(at(1), &sink, &metrics);
        cams.request(at(2), &sink, &metrics);
        assert_eq!(rx.try_recv().unwrap().parcel, 1);
        match records.try_recv().unwrap() {
            Record::Snapshot(s) => {
                assert_eq!(s.parcel, 2);
                assert_eq!(s.error.as_deref(), Some("no evidence: camera queue full"));
            }
            other => panic!("{other:?}"),
        }
        drop(rx);
        cams.request(at(3), &sink, &metrics);
        match records.try_recv().unwrap() {
            Record::Snapshot(s) => {
                assert_eq!(s.error.as_deref(), Some("no evidence: camera task stopped"))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(Metrics::get(&metrics.snapshots_failed), 2);
        assert!(!cams.watches_lane(2));
    }
}
