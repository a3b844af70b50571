//! Wiring: builds every task of the daemon from a validated [`Config`] and runs them until
//! shutdown.
//!
//! Per line: scanner reader → line (decision) → PLC link → journal sink. Shared: one journal
//! writer and one uplink. Shutdown is a chain, so nothing in flight is lost: cancelling stops
//! the scanners; each line then ends when its scanner channel closes, each PLC link when its
//! job queue closes, and the journal writer when the last record sink is gone, after it has
//! flushed everything it was given.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::alarm::Alarms;
use crate::config::Config;
use crate::fieldbus;
use crate::floor::{ClearanceChange, LaneStates};
use crate::journal::capacity::Limits;
use crate::journal::{record_sink, Housekeeping, Journal, JournalError};
use crate::line::{self, LineCtx, LineIo};
use crate::metrics::Metrics;
use crate::policy::{Policy, SharedRules};
use crate::rules::ClearanceTable;
use crate::threads::Dedicated;
use crate::uplink::Uplink;

/// Scan events buffered between a scanner and its line; a line decides in microseconds, so
/// this only absorbs scheduling jitter.
const SCAN_QUEUE: usize = 1024;
/// Divert jobs buffered before a PLC link; beyond this a parcel is recorded as overload.
const PLC_QUEUE: usize = 256;
/// Clearance changes buffered per line; a line that falls further behind is told so.
const CHANGES_QUEUE: usize = 4096;
/// Anomalies waiting for the uplink; beyond this they are dropped (counted), the records keep
/// the same facts.
const ANOMALY_QUEUE: usize = 4096;
/// Processed X-ray images on their way to their line's join; the evidence workers wait
/// when it is full (they are off the decision path).
const IMAGE_QUEUE: usize = 256;

/// A running daemon.
pub struct App {
    pub metrics: Arc<Metrics>,
    pub table: Arc<ClearanceTable>,
    pub journal: Journal,
    /// The rule set every line decides with; replaced whole by the [`Policy`].
    pub rules: SharedRules,
    policy: Policy,
    reconnect: Arc<tokio::sync::Notify>,
    tls_configured: bool,
    /// The staff view's certificate, reloaded on SIGHUP.
    view_tls: Option<crate::view::tls::ViewTls>,
    /// Scanners, lines, PLC links and the journal writer.
    pipeline: JoinSet<()>,
    /// The floor and journal threads; they end once the pipeline has (see [`crate::threads`]).
    _threads: [Dedicated; 2],
    /// Where the staff view listens, when configured and bound.
    pub view_addr: Option<std::net::SocketAddr>,
    uplink: tokio::task::JoinHandle<()>,
    /// Tasks that use the journal and stop with the uplink (the waybill index, housekeeping,
    /// the rule file's watch): awaited before `wait` returns, so the store is closed then.
    journal_tasks: JoinSet<()>,
    uplink_stop: CancellationToken,
}

/// How far back the journal is read at start for parcels whose dispositions may still come:
/// far beyond a line's disposition timeout; [`RECENT_DISPOSITIONS`] per line are read even
/// if older (the PLC's ring may hold them), and never more than [`RECENT_MAX_RECORDS`].
const RECENT_WINDOW: Duration = Duration::from_secs(30 * 60);
const RECENT_DISPOSITIONS: usize = 64;
const RECENT_MAX_RECORDS: usize = 100_000;

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("cannot start the {0} thread: {1}")]
    Thread(&'static str, std::io::Error),
    #[error("storage.integrity_key_file: {0}")]
    IntegrityKey(#[from] crate::journal::integrity::KeyError),
}

impl StartError {
    /// The journal's error, if that is why.
    pub fn journal(&self) -> Option<&JournalError> {
        match self {
            StartError::Journal(e) => Some(e),
            StartError::Thread(..) | StartError::IntegrityKey(_) => None,
        }
    }
}

/// Runs a decision-path task on the floor thread; the pipeline waits for it.
fn on_floor(
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

/// Records spilled at the last shutdown are stored first; their files go once they are.
fn restore_spill(
    spill: &std::path::Path,
    sink: &crate::journal::RecordSink,
    accepted: &tokio::sync::watch::Receiver<u64>,
) {
    let (spill_files, spilled) = crate::journal::read_spill(spill);
    if !spill_files.is_empty() {
        let n = spilled.len() as u64;
        info!(records = n, "storing records spilled at the last shutdown");
        let target = *accepted.borrow() + n;
        for r in spilled {
            sink.push(r);
        }
        let mut watch = accepted.clone();
        tokio::spawn(async move {
            while *watch.borrow_and_update() < target {
                if watch.changed().await.is_err() {
                    return;
                }
            }
            for f in spill_files {
                if let Err(e) = std::fs::remove_file(&f) {
                    tracing::warn!(file = %f.display(), error = %e, "cannot remove a stored spill file");
                }
            }
        });
    }
}

/// Release decisions stored ahead of a command whose outcome was never recorded (the
/// gateway stopped in between) are recorded now, as `interrupted`; what the journal
/// holds of recent parcels lets the lines explain the PLC's dispositions of an earlier
/// run's parcels (see journal::intents).
fn settle_interrupted(
    journal: &Journal,
    sink: &crate::journal::RecordSink,
    now_ms: u64,
) -> Result<crate::journal::intents::RecentParcels, StartError> {
    let mut recent = journal.recent_parcels(
        now_ms.saturating_sub(RECENT_WINDOW.as_millis() as u64),
        RECENT_DISPOSITIONS,
        RECENT_MAX_RECORDS,
    )?;
    for r in journal.intents()? {
        let recorded = recent
            .lines
            .get(&r.line)
            .and_then(|parcels| parcels.get(&r.parcel))
            .is_some_and(|k| k.decided && k.revision >= r.revision);
        if recorded {
            // Stopped between the record and the intent's removal: nothing was lost.
            let key = crate::journal::intents::intent_key(&r.line, r.parcel);
            journal.settle_intents(&[(key, r.revision)])?;
            continue;
        }
        let (record, alert) = crate::journal::intents::interrupted(r, now_ms);
        tracing::warn!(line = %record.line, parcel = record.parcel, "release decision found without its outcome: recorded as interrupted");
        recent.decided(&record);
        sink.push(record);
        sink.push(alert);
    }
    Ok(recent)
}

/// Waybills this gateway released, for the duplicate-label rule on every line: from
/// the marks stored with each release intent, within the clearance horizon. Read once
/// here; the lines consult the copy in memory.
fn released_registry(
    journal: &Journal,
    config: &Config,
    now_ms: u64,
) -> Result<Arc<crate::line::duplicates::Released>, StartError> {
    let released = Arc::new(crate::line::duplicates::Released::new(
        config.duplicates,
        config.storage.clearance.as_millis() as u64,
    ));
    for r in journal
        .released_since(now_ms.saturating_sub(config.storage.clearance.as_millis() as u64))?
    {
        let Some(waybill) = r.waybill.clone() else {
            continue;
        };
        released.load(
            &waybill,
            crate::line::duplicates::Mark {
                line: r.line.clone(),
                parcel: r.parcel,
                scanned_at_ms: r.scanned_at_ms,
                weight_g: r.inputs.as_ref().and_then(|i| i.measured_weight_g),
                lane: r.lane,
                // The store does not hold the PLC's word on where it went: taken as
                // released, so no later parcel is taken for it come round again.
                floor: crate::line::duplicates::Floor::Released,
                snapshots: Vec::new(),
            },
        );
    }
    Ok(released)
}

/// The waybill index, written behind the journal writer (see journal::lookup), until `stop`.
async fn index_behind_writer(journal: Journal, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let j = journal.clone();
        match tokio::task::spawn_blocking(move || j.index_pending(1024)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "waybill index not updated; lookups read the batches")
            }
            Err(e) => tracing::warn!(error = %e, "waybill index task failed"),
        }
    }
}

/// What every line's tasks are given besides their own devices.
struct LineWiring<'a> {
    config: &'a Config,
    table: &'a Arc<ClearanceTable>,
    rules: &'a SharedRules,
    metrics: &'a Arc<Metrics>,
    changes: &'a broadcast::Sender<ClearanceChange>,
    sink: &'a crate::journal::RecordSink,
    anomalies: &'a mpsc::Sender<bondline_devices::contract::Anomaly>,
    released: &'a Arc<crate::line::duplicates::Released>,
    liveness: &'a crate::service::Liveness,
    shutdown: &'a CancellationToken,
}

/// A line's X-ray scanner and where its verdicts and processed images go.
struct LineXray {
    device: crate::config::XrayDevice,
    verdicts: mpsc::UnboundedSender<crate::floor::XrayMsg>,
    images: mpsc::Sender<bondline_devices::contract::ImageRecord>,
}

/// Starts one line's tasks on the floor thread: its scanner reader, the line and its PLC
/// link. Returns its X-ray scanner, whose bus task and image intake the caller starts with
/// the others.
fn start_line(
    l: &crate::config::Line,
    w: &LineWiring<'_>,
    cameras: Option<crate::camera::LineCameras>,
    recent: std::collections::HashMap<u32, crate::journal::intents::Recent>,
    floor: &Dedicated,
    tasks: &mut JoinSet<()>,
) -> Option<LineXray> {
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

/// How long a stopping daemon keeps the uplink open to forward its last records.
pub const UPLINK_DRAIN: Duration = Duration::from_secs(3);

impl App {
    /// Opens the journal, restores the clearance table and starts every task.
    pub async fn start(config: Config, shutdown: CancellationToken) -> Result<App, StartError> {
        std::fs::create_dir_all(&config.storage.path).map_err(|e| JournalError::Open {
            path: config.storage.path.display().to_string(),
            source: sled::Error::Io(e),
        })?;
        // The decision path and the journal's writer get threads of their own (see threads).
        let floor =
            Dedicated::start("bondline-floor").map_err(|e| StartError::Thread("floor", e))?;
        let journal_thread =
            Dedicated::start("bondline-journal").map_err(|e| StartError::Thread("journal", e))?;
        let journal = Journal::open(&config.storage.path)?;
        journal.check_head_mark()?;
        let (key, created) = crate::journal::integrity::IntegrityKey::load_or_create(
            &config.storage.integrity_key_file,
        )?;
        if created {
            info!(file = %config.storage.integrity_key_file.display(), "integrity key created");
        }
        journal.set_integrity_key(key, created);
        // The clearance table fills in the background (see `load_clearance` below): the lines
        // decide from the first second, holding every waybill until it is loaded.
        let table = Arc::new(ClearanceTable::default());
        let (expected_entries, expected_declarations) = journal.clearance_load_hint();
        table.begin_loading(expected_entries);
        let adopting = journal.begin_clearance_load()?;
        // The chain's head and anchor tags now, before the writer moves the head; the whole
        // chain is walked in the background below.
        let chain_tags = journal.check_chain_tags(true)?;
        let metrics = Arc::new(Metrics::default());
        metrics
            .backlog
            .store(journal.backlog_len() as u64, Ordering::Relaxed);
        info!(
            stored_entries = expected_entries,
            stored_declarations = expected_declarations,
            backlog = Metrics::get(&metrics.backlog),
            lines = config.lines.len(),
            "bondline starting; the clearance table loads in the background"
        );

        let alarms = Alarms::new(&config.gateway_id);
        // A salvaged store says so once, as an alarm (its chain holds the salvage record).
        if let Some(notice) = journal.take_salvage_notice()? {
            alarms.raise(notice);
        }
        let mut tasks = JoinSet::new();
        let mut journal_tasks = JoinSet::new();
        let uplink_stop = CancellationToken::new();
        let (sink, writer, accepted) = record_sink(
            journal.clone(),
            config.storage.flush_window,
            metrics.clone(),
        )?;
        // The staff view's board subscribes before the writer runs, so it misses no record.
        let view_feed = config.view.as_ref().map(|_| writer.subscribe());
        let view_accepted = accepted.clone();
        let spill = crate::journal::spill_dir(&config.storage.path);
        let limits = Limits {
            quota_bytes: config.storage.quota_bytes,
            min_free_bytes: config.storage.min_free_bytes,
        };
        let writer = journal_thread.spawn(
            writer
                .with_hold(config.storage.hold_records, alarms.clone(), spill.clone())
                .with_capacity(config.storage.path.clone(), limits)
                .run(),
        );
        tasks.spawn(async move {
            let _ = writer.await;
        });
        restore_spill(&spill, &sink, &accepted);
        let now_ms = crate::metrics::unix_ms(std::time::SystemTime::now());
        let mut recent = settle_interrupted(&journal, &sink, now_ms)?;
        let released = released_registry(&journal, &config, now_ms)?;
        journal_tasks.spawn(index_behind_writer(journal.clone(), uplink_stop.clone()));
        let housekeeping = Housekeeping {
            path: config.storage.path.clone(),
            limits,
            retention: config.storage.retention,
            interval: Duration::from_secs(1),
        };
        journal_tasks.spawn(crate::memory::run(metrics.clone(), uplink_stop.clone()));
        journal_tasks.spawn(housekeeping.run(
            journal.clone(),
            metrics.clone(),
            alarms.clone(),
            uplink_stop.clone(),
        ));
        // Waybills whose clearance changed (from the uplink) and new rule sets (from the
        // policy), to every line.
        let (changes, _) = broadcast::channel(CHANGES_QUEUE);
        let policy = Policy::start(
            config.rules.clone(),
            config.rules_file.clone(),
            crate::policy::Feeds {
                weighing: config
                    .lines
                    .iter()
                    .any(|l| l.scanner.framing.weight.is_some()),
                xray: config.lines.iter().any(|l| l.xray.is_some()),
            },
            journal.clone(),
            alarms.clone(),
            metrics.clone(),
            changes.clone(),
        )?;
        let rules = policy.shared();
        {
            let set = policy.current();
            info!(rule_set = %set.version, rules = set.rules.len(), "customs rule set");
        }
        check_chain(&journal, &config.gateway_id, &alarms, &sink, chain_tags);
        tasks.spawn(load_clearance(
            Loader {
                journal: journal.clone(),
                table: table.clone(),
                adopting,
                expected_declarations,
                changes: changes.clone(),
                alarms: alarms.clone(),
                sink: sink.clone(),
                gateway: config.gateway_id.clone(),
                key_file: config.storage.integrity_key_file.clone(),
            },
            shutdown.clone(),
        ));
        journal_tasks.spawn(policy.clone().watch(uplink_stop.clone()));
        {
            // Forgetting old state waits for the load: it forgets from the store and the
            // table together.
            let (journal, table, released) = (journal.clone(), table.clone(), released.clone());
            let (keep, stop) = (config.storage.clearance, uplink_stop.clone());
            journal_tasks.spawn(async move {
                if loaded(&table, &stop).await {
                    crate::retention::run(journal, table, released, keep, stop).await;
                }
            });
        }
        let (anomaly_tx, anomaly_rx) = mpsc::channel(ANOMALY_QUEUE);
        let reconnect = Arc::new(tokio::sync::Notify::new());
        if let Some(day) = config.report_publish_day {
            tokio::spawn(crate::report::publish_monthly(
                journal.clone(),
                sink.clone(),
                accepted.clone(),
                config.gateway_id.clone(),
                day,
                config.calendar.clone(),
                // Stops with the scanners: it holds a record sink, which must be gone for the
                // journal writer to finish.
                shutdown.clone(),
            ));
        }
        // Refused platform messages are journaled by their own task, which stops with the
        // other record producers (the uplink runs on until the journal is flushed).
        let (refusal_tx, refusal_rx) = mpsc::unbounded_channel();
        tasks.spawn(crate::uplink::refusals::journal(
            config.gateway_id.clone(),
            refusal_rx,
            sink.clone(),
            shutdown.clone(),
        ));
        let uplink = Uplink {
            config: config.uplink.clone(),
            gateway: config.gateway_id.clone(),
            journal: journal.clone(),
            table: table.clone(),
            metrics: metrics.clone(),
            accepted,
            alarms: alarms.clone(),
            changes: changes.clone(),
            policy: policy.clone(),
            anomalies: anomaly_rx,
            refusals: refusal_tx,
            session_watch: Default::default(),
            session_finding: Default::default(),
            reconnect: reconnect.clone(),
            trust: config.trust.clone(),
        };
        // Platform messages are taken in once the table is loaded: their freshness is judged
        // against what the table holds, so a partial table could let an old message replace
        // a newer stored one. Records wait in the journal meanwhile.
        let uplink = {
            let (table, stop) = (table.clone(), uplink_stop.clone());
            tokio::spawn(async move {
                if loaded(&table, &stop).await {
                    uplink.run(stop).await;
                }
            })
        };

        let liveness = crate::service::Liveness::default();
        let mut xray_devices = Vec::new();
        // Where each X-ray scanner's processed images go: its line's join.
        let mut image_routes = std::collections::HashMap::new();
        // Camera tasks stop at `shutdown` like the evidence tasks: they hold a record sink.
        let (mut line_cameras, camera_tasks) = crate::camera::start(
            &config.cameras,
            &config.evidence,
            &config.gateway_id,
            sink.clone(),
            metrics.clone(),
            shutdown.clone(),
        );
        tasks.spawn(crate::evidence::keep_within_limits(
            config.evidence.clone(),
            alarms.clone(),
            shutdown.clone(),
        ));
        for h in camera_tasks {
            tasks.spawn(async move {
                let _ = h.await;
            });
        }
        // A small table loads in a moment: the lines wait that long for it rather than hold
        // their first parcels as `state_loading`. A large one goes on loading behind them.
        let _ = tokio::time::timeout(LOAD_WAIT, loaded(&table, &shutdown)).await;
        let wiring = LineWiring {
            config: &config,
            table: &table,
            rules: &rules,
            metrics: &metrics,
            changes: &changes,
            sink: &sink,
            anomalies: &anomaly_tx,
            released: &released,
            liveness: &liveness,
            shutdown: &shutdown,
        };
        for l in &config.lines {
            let cameras = line_cameras.remove(&l.id);
            let recent = recent.take(&l.id);
            if let Some(xray) = start_line(l, &wiring, cameras, recent, &floor, &mut tasks) {
                image_routes.insert(
                    xray.device.name.clone(),
                    (l.id.clone(), xray.device.spool.clone(), xray.images),
                );
                xray_devices.push((xray.device, xray.verdicts));
            }
        }
        for task in fieldbus::xray::tasks(xray_devices, metrics.clone(), shutdown.clone()) {
            on_floor(&mut tasks, &floor, task);
        }
        let destinations = image_routes
            .into_iter()
            .map(|(device, (line, spool, tx))| {
                (device, crate::evidence::Destination { line, spool, tx })
            })
            .collect();
        match crate::evidence::start(
            &config.evidence,
            config.gateway_id.clone(),
            destinations,
            sink.clone(),
            metrics.clone(),
            shutdown.clone(),
        ) {
            Ok(handles) => {
                for h in handles {
                    tasks.spawn(async move {
                        let _ = h.await;
                    });
                }
            }
            Err(e) => alarms.raise(format!("X-ray images: {e}")),
        }
        let view_addr = match (&config.view, view_feed) {
            (Some(view), Some(feed)) => {
                start_view(
                    view,
                    &config,
                    &journal,
                    &metrics,
                    &rules,
                    view_accepted,
                    &shutdown,
                    &alarms,
                    feed,
                    &table,
                )
                .await
            }
            _ => None,
        };
        tokio::spawn(crate::service::watchdog(liveness, uplink_stop.clone()));
        Ok(App {
            view_addr,
            metrics,
            table,
            journal,
            rules,
            policy,
            reconnect,
            tls_configured: config.uplink.tls.is_some() || config.uplink.credentials.is_some(),
            view_tls: config.view.as_ref().and_then(|v| v.tls.clone()),
            pipeline: tasks,
            _threads: [floor, journal_thread],
            uplink,
            journal_tasks,
            uplink_stop,
        })
    }

    /// The rule set in force, for reloads (usable after the app is moved).
    pub fn policy(&self) -> Policy {
        self.policy.clone()
    }

    /// What SIGHUP reloads: the rule set, and the broker connection's TLS material and
    /// credentials (by reconnecting; records wait in the journal meanwhile).
    pub fn reloader(&self) -> Reloader {
        Reloader {
            policy: self.policy.clone(),
            reconnect: self.tls_configured.then(|| self.reconnect.clone()),
            view_tls: self.view_tls.clone(),
        }
    }

    /// Waits for the pipeline to finish (after shutdown), gives the uplink a short while to
    /// forward the last records, then stops it and the tasks that use the journal, and flushes
    /// the journal. Whatever is not
    /// acknowledged by then stays in the outbox for the next start.
    pub async fn wait(mut self) -> Result<(), JournalError> {
        while let Some(r) = self.pipeline.join_next().await {
            if let Err(e) = r {
                if e.is_panic() {
                    tracing::error!(error = %e, "a task panicked");
                }
            }
        }
        let start = Instant::now();
        while Metrics::get(&self.metrics.backlog) > 0
            && self.metrics.uplink_ready.load(Ordering::Relaxed)
            && start.elapsed() < UPLINK_DRAIN
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.uplink_stop.cancel();
        let _ = self.uplink.await;
        while self.journal_tasks.join_next().await.is_some() {}
        self.journal.flush().await?;
        info!(
            backlog = Metrics::get(&self.metrics.backlog),
            "bondline stopped; unforwarded records stay in the journal"
        );
        Ok(())
    }
}

/// Raises `journal_chain_broken` for the head and anchor tag problems found at start, then
/// walks the whole chain on a blocking thread (off the decision path: lines run meanwhile)
/// and raises it for what the walk finds.
fn check_chain(
    journal: &Journal,
    gateway: &str,
    alarms: &Alarms,
    sink: &crate::journal::RecordSink,
    tags: Vec<crate::journal::ChainProblem>,
) {
    let raise = {
        let (journal, gateway, alarms, sink) = (
            journal.clone(),
            gateway.to_string(),
            alarms.clone(),
            sink.clone(),
        );
        move |problems: &[crate::journal::ChainProblem]| {
            use bondline_devices::contract::{AlertKind, AlertRecord, SCHEMA};
            let text = problems
                .iter()
                .take(20)
                .map(|p| serde_json::to_string(p).unwrap_or_default())
                .collect::<Vec<_>>()
                .join(", ");
            let detail = format!(
                "journal chain broken: {} problem(s): {text}; see `bondline journal verify`",
                problems.len()
            );
            journal.note_chain_problem(detail.clone());
            alarms.raise(format!("journal_chain_broken: {detail}"));
            sink.push(AlertRecord {
                schema: SCHEMA,
                msg_id: String::new(),
                seq: 0,
                prev_hash: String::new(),
                gateway: gateway.clone(),
                line: String::new(),
                parcel: None,
                waybill: None,
                alert: AlertKind::JournalChainBroken,
                detail,
                at_ms: crate::metrics::unix_ms(std::time::SystemTime::now()),
            });
        }
    };
    if !tags.is_empty() {
        raise(&tags);
    }
    let journal = journal.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let walked = tokio::task::spawn_blocking(move || journal.verify_running()).await;
        match walked {
            Ok(Ok(report)) if report.ok() => {
                info!(records = report.checked, took = ?started.elapsed(), "journal chain checked: whole");
            }
            Ok(Ok(report)) if tags.is_empty() => raise(&report.problems),
            Ok(Ok(report)) => {
                let mut all = tags;
                all.extend(report.problems);
                raise(&all);
            }
            Ok(Err(e)) => warn!(error = %e, "journal chain check at start failed"),
            Err(e) => warn!(error = %e, "journal chain check at start stopped"),
        }
    });
}

/// At most this many refused entries are alerted one by one; the rest in one summary.
const REFUSED_ALERTS: usize = 100;

/// Raises a `stored_state_refused` alert record and alarm for every stored platform entry
/// that the load refused.
/// What the background load of the clearance table needs.
struct Loader {
    journal: Journal,
    table: Arc<ClearanceTable>,
    adopting: bool,
    expected_declarations: u64,
    changes: broadcast::Sender<ClearanceChange>,
    alarms: Alarms,
    sink: crate::journal::RecordSink,
    gateway: String,
    key_file: std::path::PathBuf,
}

/// How long the lines' start waits for the clearance table's load before they decide
/// without it (holding every waybill until it is loaded).
const LOAD_WAIT: Duration = Duration::from_millis(500);

/// How often a load's progress is logged and told to the service manager.
const LOAD_REPORT: Duration = Duration::from_secs(2);

/// Fills the clearance table from the store, then tells the lines to decide their parcels
/// again (every parcel decided meanwhile was held as `state_loading`). Integrity checks
/// apply as at any load; refused entries and adopted ones raise their alarms once the load is
/// done. A load that fails leaves the table loading: everything stays held, `/readyz` says
/// why, and an alarm is raised.
async fn load_clearance(l: Loader, shutdown: CancellationToken) {
    let started = std::time::Instant::now();
    l.table.reserve(l.expected_declarations as usize);
    let reporter = {
        let table = l.table.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(LOAD_REPORT);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(p) = table.loading() else { return };
                let status = format!(
                    "running; clearance table loading: {} of about {} stored entries",
                    p.done, p.expected
                );
                info!(
                    done = p.done,
                    expected = p.expected,
                    "clearance table loading"
                );
                crate::service::status(&status, Some(LOAD_REPORT * 5));
            }
        })
    };
    let (journal, table, stop) = (l.journal.clone(), l.table.clone(), shutdown.clone());
    let outcome = tokio::task::spawn_blocking(move || {
        journal.load_clearance_into(&table, l.adopting, &|| stop.is_cancelled())
    })
    .await;
    reporter.abort();
    match outcome {
        Ok(Ok(true)) => {
            l.table.finish_loading();
            info!(
                declarations = l.table.declarations(),
                instructions = l.table.instructions(),
                consumers = l.table.consumers(),
                suspended_enterprises = l.table.suspended(),
                took_ms = started.elapsed().as_millis() as u64,
                "clearance table loaded; tracked parcels are decided again"
            );
            crate::service::status("running", None);
            let _ = l.changes.send(ClearanceChange::All);
        }
        Ok(Ok(false)) => info!("clearance table load stopped by shutdown"),
        Ok(Err(e)) => {
            tracing::error!(error = %e, "clearance table cannot be loaded: every parcel is held");
            l.alarms.raise(format!(
                "clearance table cannot be loaded from the store ({e}): every parcel is held as state_loading"
            ));
        }
        Err(e) => {
            tracing::error!(error = %e, "clearance table load failed: every parcel is held");
            l.alarms.raise(format!(
                "clearance table load failed ({e}): every parcel is held as state_loading"
            ));
        }
    }
    if l.journal.adopted_untagged() > 0 {
        l.alarms.raise(format!(
            "integrity: {} stored entries without integrity tags adopted as they lay on disk (integrity key {} created at this start, or a salvaged store)",
            l.journal.adopted_untagged(),
            l.key_file.display()
        ));
    }
    // Platform state refused by its integrity check (clearance table and rule set): an
    // alert in the chain and an alarm for each.
    raise_refused(&l.journal, &l.gateway, &l.alarms, &l.sink);
}

/// Waits until the clearance table is loaded; false if `stop` comes first.
async fn loaded(table: &ClearanceTable, stop: &CancellationToken) -> bool {
    while table.loading().is_some() {
        tokio::select! {
            _ = stop.cancelled() => return false,
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
    }
    true
}

fn raise_refused(
    journal: &Journal,
    gateway: &str,
    alarms: &Alarms,
    sink: &crate::journal::RecordSink,
) {
    use bondline_devices::contract::{AlertKind, AlertRecord, SCHEMA};
    let refused = journal.refused_entries();
    let alert = |waybill: Option<String>, detail: String| AlertRecord {
        schema: SCHEMA,
        msg_id: String::new(),
        seq: 0,
        prev_hash: String::new(),
        gateway: gateway.to_string(),
        line: String::new(),
        parcel: None,
        waybill,
        alert: AlertKind::StoredStateRefused,
        detail,
        at_ms: crate::metrics::unix_ms(std::time::SystemTime::now()),
    };
    for r in refused.iter().take(REFUSED_ALERTS) {
        alarms.raise(format!("stored_state_refused: {r}"));
        let waybill = (r.tree == "declarations" || r.tree == "instructions").then(|| r.key.clone());
        sink.push(alert(waybill, r.to_string()));
    }
    if refused.len() > REFUSED_ALERTS {
        let detail = format!(
            "{} more stored platform entries refused by their integrity check (see the log)",
            refused.len() - REFUSED_ALERTS
        );
        alarms.raise(format!("stored_state_refused: {detail}"));
        sink.push(alert(None, detail));
    }
}

/// Starts the staff view. It is not on the decision path: if it cannot listen, the line
/// runs on and an alarm says why.
#[allow(clippy::too_many_arguments)]
async fn start_view(
    view: &crate::view::ViewConfig,
    config: &Config,
    journal: &Journal,
    metrics: &Arc<Metrics>,
    rules: &crate::policy::SharedRules,
    accepted: tokio::sync::watch::Receiver<u64>,
    shutdown: &CancellationToken,
    alarms: &Alarms,
    feed: broadcast::Receiver<bondline_devices::contract::Record>,
    table: &Arc<ClearanceTable>,
) -> Option<std::net::SocketAddr> {
    let ctx = crate::view::ViewCtx {
        table: table.clone(),
        unsigned_allowed: config.trust.allow_unsigned,
        evidence_dir: config.evidence.dir.clone(),
        gateway: config.gateway_id.clone(),
        journal: journal.clone(),
        metrics: metrics.clone(),
        rules: rules.clone(),
        lines: config
            .lines
            .iter()
            .map(|l| crate::view::LineInfo {
                id: l.id.clone(),
                scanner: l.scanner.name.clone(),
                plc: l.plc.name.clone(),
                xray: l.xray.as_ref().map(|(x, _)| x.name.clone()),
                cameras: config
                    .cameras
                    .iter()
                    .filter(|c| c.line == l.id)
                    .map(|c| c.name.clone())
                    .collect(),
                lanes: bondline_devices::contract::LaneRole::ALL
                    .iter()
                    .map(|r| (l.lanes.lane(*r), *r))
                    .collect(),
            })
            .collect(),
        accepted,
        shutdown: shutdown.clone(),
    };
    // HTTP clients get the descriptors the devices leave (see crate::fds).
    let mut view = view.clone();
    let fitted = crate::fds::view_connections(
        view.budget.max_connections,
        crate::fds::soft_limit(),
        config.lines.len() + config.cameras.len(),
        config
            .evidence
            .upload
            .as_ref()
            .map_or(0, |u| u.max_connections),
    );
    if fitted < view.budget.max_connections {
        warn!(
            configured = view.budget.max_connections,
            limit = fitted,
            open_files = crate::fds::soft_limit(),
            "staff view connection limit lowered to keep file descriptors for the devices; raise LimitNOFILE"
        );
        view.budget.max_connections = fitted;
    }
    match crate::view::start(&view, ctx, feed).await {
        Ok(addr) => Some(addr),
        Err(e) => {
            alarms.raise(format!("staff view not started: {e}"));
            None
        }
    }
}

/// Reloads what SIGHUP reloads; see [`App::reloader`].
#[derive(Clone)]
pub struct Reloader {
    policy: Policy,
    reconnect: Option<Arc<tokio::sync::Notify>>,
    view_tls: Option<crate::view::tls::ViewTls>,
}

impl Reloader {
    /// Reloads; returns the rule set version in force.
    pub fn reload(&self) -> String {
        if let Some(r) = &self.reconnect {
            r.notify_one();
        }
        if let Some(t) = &self.view_tls {
            match t.reload() {
                Ok(()) => info!("staff view certificate reloaded"),
                Err(e) => {
                    warn!(error = %e, "staff view certificate not reloaded; the one in use stays")
                }
            }
        }
        self.policy.reload_on_signal()
    }
}
