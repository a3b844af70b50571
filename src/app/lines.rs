//! Each line's tasks, started on the floor thread: its scanner reader, the line (the
//! decision) and its PLC link, with the queues between them sized here.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::fieldbus;
use crate::floor::{ClearanceChange, LaneStates, Recent};
use crate::line::{self, LineCtx, LineIo};
use crate::metrics::Metrics;
use crate::policy::SharedRules;
use crate::rules::ClearanceTable;
use crate::threads::Dedicated;

/// Scan events buffered between a scanner and its line; a line decides in microseconds, so
/// this only absorbs scheduling jitter.
const SCAN_QUEUE: usize = 1024;
/// Divert jobs buffered before a PLC link; beyond this a parcel is recorded as overload.
const PLC_QUEUE: usize = 256;
/// Processed X-ray images on their way to their line's join; the evidence workers wait
/// when it is full (they are off the decision path).
const IMAGE_QUEUE: usize = 256;
/// Runs a decision-path task on `floor` (the floor thread, or another urgent one); the
/// pipeline waits for it.
pub(super) fn on_floor(
    tasks: &mut JoinSet<()>,
    floor: &Dedicated,
    task: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let handle = floor.spawn(task);
    tasks.spawn(async move {
        if let Err(e) = handle.await {
            if e.is_panic() {
                tracing::error!(error = %e, "a floor task panicked");
            }
        }
    });
}

/// What every line's tasks are given besides their own devices.
pub(super) struct LineWiring<'a> {
    pub(super) config: &'a Config,
    pub(super) table: &'a Arc<ClearanceTable>,
    pub(super) rules: &'a SharedRules,
    pub(super) metrics: &'a Arc<Metrics>,
    pub(super) changes: &'a broadcast::Sender<ClearanceChange>,
    pub(super) sink: &'a crate::journal::RecordSink,
    pub(super) anomalies: &'a mpsc::Sender<bondline_devices::contract::Anomaly>,
    pub(super) released: &'a Arc<crate::line::duplicates::Released>,
    pub(super) liveness: &'a crate::service::Liveness,
    pub(super) shutdown: &'a CancellationToken,
}

/// A line's X-ray scanner and where its verdicts and processed images go.
pub(super) struct LineXray {
    pub(super) device: crate::config::XrayDevice,
    pub(super) verdicts: mpsc::UnboundedSender<crate::floor::XrayMsg>,
    pub(super) images: mpsc::Sender<bondline_devices::contract::ImageRecord>,
}

/// Starts one line's tasks on the floor thread: its scanner reader, the line and its PLC
/// link. Returns its X-ray scanner, whose bus task and image intake the caller starts with
/// the others.
pub(super) fn start_line(
    l: &crate::config::Line,
    w: &LineWiring<'_>,
    cameras: Option<crate::camera::LineCameras>,
    earlier: Earlier,
    floor: &Dedicated,
    tasks: &mut JoinSet<()>,
) -> Option<LineXray> {
    let (recent, earlier) = match earlier {
        Earlier::Now(recent) => (recent, None),
        Earlier::Later(rx) => (HashMap::new(), Some(rx)),
    };
    let (scan_tx, scan_rx) = mpsc::channel(SCAN_QUEUE);
    let (plc_tx, plc_rx) = mpsc::channel(PLC_QUEUE);
    let (event_tx, event_rx) = mpsc::unbounded_channel();
    let lane_states = Arc::new(LaneStates::default());
    on_floor(
        tasks,
        floor,
        fieldbus::scanner::run(
            l.scanner.clone(),
            scan_tx,
            w.metrics.clone(),
            w.shutdown.clone(),
        ),
    );
    let ctx = LineCtx {
        gateway: w.config.gateway_id.clone(),
        line: l.id.clone(),
        lanes: l.lanes.clone(),
        geometry: l.geometry,
        table: w.table.clone(),
        rules: w.rules.clone(),
        lane_states: lane_states.clone(),
        metrics: w.metrics.clone(),
        dispositions: l.plc.map.status.is_some(),
        weighing: l.scanner.framing.weight.is_some(),
        calendar: w.config.calendar.clone(),
        beat: w.liveness.register(&format!("line {}", l.id)),
        xray: l.xray.as_ref().map(|(x, g)| (x.name.clone(), *g)),
        cameras,
        recent,
        released: w.released.clone(),
    };
    let (xray, xray_rx, image_rx) = match &l.xray {
        Some((x, _)) => {
            let (verdicts, rx) = mpsc::unbounded_channel();
            let (images, image_rx) = mpsc::channel(IMAGE_QUEUE);
            let xray = LineXray {
                device: x.clone(),
                verdicts,
                images,
            };
            (Some(xray), Some(rx), Some(image_rx))
        }
        None => (None, None, None),
    };
    let io = LineIo {
        scans: scan_rx,
        plc: plc_tx,
        plc_events: event_rx,
        changes: w.changes.subscribe(),
        sink: w.sink.clone(),
        anomalies: w.anomalies.clone(),
        xray: xray_rx,
        images: image_rx,
        earlier,
    };
    on_floor(tasks, floor, line::run(ctx, io));
    on_floor(
        tasks,
        floor,
        fieldbus::plc::run(
            l.plc.clone(),
            plc_rx,
            event_tx,
            lane_states,
            w.metrics.clone(),
        ),
    );
    xray
}

/// What the store holds of a line's parcels of an earlier run (see `line::earlier`): read
/// before the line starts, or sent to it once the store is open.
pub(super) enum Earlier {
    Now(HashMap<u32, Recent>),
    Later(oneshot::Receiver<HashMap<u32, Recent>>),
}

/// Where each line's earlier parcels go once the store is read, by line id.
pub(super) type EarlierSenders = Vec<(String, oneshot::Sender<HashMap<u32, Recent>>)>;

/// Starts the floor: the cameras, every line (see [`start_line`]) and the X-ray scanners'
/// bus tasks on the floor thread. `recent`: what the store holds of an earlier run's
/// parcels, or `None` if the store is not open yet (the returned senders take it to each
/// line later). Returns where each X-ray scanner's processed images go: its line's join.
pub(super) fn start_floor(
    w: &LineWiring<'_>,
    mut recent: Option<&mut crate::journal::intents::RecentParcels>,
    floor: &Dedicated,
    tasks: &mut JoinSet<()>,
) -> (
    HashMap<String, crate::evidence::Destination>,
    EarlierSenders,
) {
    // Camera tasks stop at `shutdown` like the evidence tasks: they hold a record sink.
    let (mut cameras, camera_tasks) = crate::camera::start(
        &w.config.cameras,
        &w.config.evidence,
        &w.config.gateway_id,
        w.sink.clone(),
        w.metrics.clone(),
        w.shutdown.clone(),
    );
    join_all(tasks, camera_tasks);
    let mut xray_devices = Vec::new();
    let mut destinations = HashMap::new();
    let mut senders = Vec::new();
    for l in &w.config.lines {
        let cameras = cameras.remove(&l.id);
        let earlier = match recent.as_deref_mut() {
            Some(recent) => Earlier::Now(recent.take(&l.id)),
            None => {
                let (tx, rx) = oneshot::channel();
                senders.push((l.id.clone(), tx));
                Earlier::Later(rx)
            }
        };
        if let Some(xray) = start_line(l, w, cameras, earlier, floor, tasks) {
            let to = crate::evidence::Destination {
                line: l.id.clone(),
                spool: xray.device.spool.clone(),
                tx: xray.images,
            };
            destinations.insert(xray.device.name.clone(), to);
            xray_devices.push((xray.device, xray.verdicts));
        }
    }
    let xray_tasks = fieldbus::xray::tasks(xray_devices, w.metrics.clone(), w.shutdown.clone());
    for task in xray_tasks {
        on_floor(tasks, floor, task);
    }
    (destinations, senders)
}

/// The pipeline waits for these tasks too.
pub(super) fn join_all(tasks: &mut JoinSet<()>, handles: Vec<tokio::task::JoinHandle<()>>) {
    for h in handles {
        tasks.spawn(async move {
            let _ = h.await;
        });
    }
}
