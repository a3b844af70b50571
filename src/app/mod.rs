//! Wiring: builds every task of the daemon from a validated [`Config`] and runs them until
//! shutdown.
//!
//! Per line: scanner reader → line (decision) → PLC link → journal sink. Shared: one journal
//! writer and one uplink. Shutdown is a chain, so nothing in flight is lost: cancelling stops
//! the scanners; each line then ends when its scanner channel closes, each PLC link when its
//! job queue closes, and the journal writer when the last record sink is gone, after it has
//! flushed everything it was given.

mod background;
mod lines;
mod loading;
mod takeover;
mod view;

use lines::{join_all, start_floor, LineWiring};
use loading::{load_clearance, loaded, Loader, LOAD_WAIT};
pub use takeover::CHECK_AFTER_BACKLOG;
use takeover::{check_chain, fill_released, released_registry, settle_interrupted, Opened};
use view::start_view;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::alarm::Alarms;
use crate::config::Config;
use crate::journal::capacity::Limits;
use crate::journal::{record_queue, Journal, JournalError, JournalWriter};
use crate::metrics::Metrics;
use crate::policy::{Policy, SharedRules};
use crate::rules::ClearanceTable;
use crate::threads::Dedicated;
use crate::uplink::Uplink;

/// Clearance changes buffered per line; a line that falls further behind is told so.
const CHANGES_QUEUE: usize = 4096;
/// Anomalies waiting for the uplink; beyond this they are dropped (counted), the records keep
/// the same facts.
const ANOMALY_QUEUE: usize = 4096;

/// How long the lines' start waits for the journal store to open before they start without
/// it (see [`App::start`]). A store of ordinary size opens in milliseconds.
pub const OPEN_WAIT: Duration = Duration::from_secs(1);
/// How long a start that fails after the lines started waits for them to stop and for the
/// spill to take their last records.
const STOP_WAIT: Duration = Duration::from_secs(5);

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
    /// The floor, journal, intents and uplink threads; they end once the pipeline has (see
    /// [`crate::threads`]).
    _threads: [Dedicated; 4],
    /// The CPUs' wake-up latency request (`[floor] cpu_wake_latency_us`), held while running.
    _wake_latency: Option<crate::threads::WakeLatency>,
    /// Where the staff view listens, when configured and bound.
    pub view_addr: Option<std::net::SocketAddr>,
    uplink: tokio::task::JoinHandle<()>,
    /// Tasks that use the journal and stop with the uplink (the waybill index, housekeeping,
    /// the rule file's watch): awaited before `wait` returns, so the store is closed then.
    journal_tasks: JoinSet<()>,
    uplink_stop: CancellationToken,
    /// The store's owner lock, held while the daemon runs. The last field, so the last to
    /// go when an `App` is dropped.
    _owner: takeover::OwnerLock,
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error("cannot start the {0} thread: {1}")]
    Thread(&'static str, std::io::Error),
    #[error("storage.integrity_key_file: {0}")]
    IntegrityKey(#[from] crate::journal::integrity::KeyError),
    #[error("the journal store's owner lock {lock}: {why}")]
    OwnerLock { lock: String, why: String },
    #[error("the journal store's opening stopped: {0}")]
    Opening(String),
}

impl StartError {
    /// The journal's error, if that is why.
    pub fn journal(&self) -> Option<&JournalError> {
        match self {
            StartError::Journal(e) => Some(e),
            StartError::Thread(..)
            | StartError::IntegrityKey(_)
            | StartError::OwnerLock { .. }
            | StartError::Opening(_) => None,
        }
    }
}

/// How long a stopping daemon keeps the uplink open to forward its last records.
pub const UPLINK_DRAIN: Duration = Duration::from_secs(3);

impl App {
    /// Opens the journal, restores the clearance table and starts every task.
    ///
    /// The store opens on a blocking thread. One that opens within [`OPEN_WAIT`] (any store
    /// of ordinary size) is open before the lines start, as it always was. A large one takes
    /// seconds (sled replays its log and rebuilds its page table): the lines then start
    /// without it and hold every parcel (`state_loading`: the clearance table cannot load
    /// before the store is open), their records go to a spill file that the journal's writer
    /// stores first once the store is open, and what the store holds of an earlier run's
    /// parcels reaches them once it is read (the PLC's dispositions of such parcels wait for
    /// it). The store's owner lock is taken before anything, so only one daemon ever drives a
    /// floor.
    pub async fn start(config: Config, shutdown: CancellationToken) -> Result<App, StartError> {
        let begun = Instant::now();
        std::fs::create_dir_all(&config.storage.path).map_err(|e| JournalError::Open {
            path: config.storage.path.display().to_string(),
            source: sled::Error::Io(e),
        })?;
        let owner = takeover::lock_owner(&config.storage.path).await?;
        // The decision path and the journal's writer get threads of their own (see threads).
        let floor = Dedicated::start_urgent("bondline-floor")
            .map_err(|e| StartError::Thread("floor", e))?;
        let wake_latency = hold_wake_latency(config.floor);
        let journal_thread =
            Dedicated::start("bondline-journal").map_err(|e| StartError::Thread("journal", e))?;
        // Release intents are on the decision path: they get a thread of their own, at the
        // floor's scheduling (see `JournalWriter::take_intents`).
        let intents_thread = Dedicated::start_urgent("bondline-intents")
            .map_err(|e| StartError::Thread("intents", e))?;
        let uplink_thread = Dedicated::start_yielding("bondline-uplink")
            .map_err(|e| StartError::Thread("uplink", e))?;
        let metrics = Arc::new(Metrics::default());
        // The view's address answers from now on (see view::starting): opening a large
        // store takes seconds, and /readyz says so meanwhile. If it cannot bind, the view's
        // own start below fails the same way and raises the alarm.
        let starting = config.view.as_ref().and_then(|v| {
            crate::view::starting::Starting::start(
                &view::fitted(v, &config),
                &format!(
                    "opening the journal store {}; no parcel is decided until it is open",
                    config.storage.path.display()
                ),
                metrics.clone(),
            )
            .map_err(|e| warn!(error = %e, "staff view address not answering during start"))
            .ok()
        });
        let mut opening = tokio::task::spawn_blocking({
            let config = config.clone();
            move || takeover::open_store(&config)
        });

        // What the lines need, ready before the store is.
        // The clearance table fills in the background (see `load_clearance`): until then
        // every waybill is held as `state_loading`.
        let table = Arc::new(ClearanceTable::default());
        table.begin_loading(0);
        let alarms = Alarms::new(&config.gateway_id);
        let mut tasks = JoinSet::new();
        let mut journal_tasks = JoinSet::new();
        let uplink_stop = CancellationToken::new();
        let (sink, queue) = record_queue(metrics.clone());
        let spill = crate::journal::spill_dir(&config.storage.path);
        let store_open = CancellationToken::new();
        let before_open = journal_thread.spawn(queue.spill_until(
            spill.clone(),
            config.storage.flush_window,
            store_open.clone(),
        ));
        // Waybills whose clearance changed (from the uplink) and new rule sets (from the
        // policy), to every line.
        let (changes, _) = broadcast::channel(CHANGES_QUEUE);
        // The configured set until the policy has read which one is in force (see
        // `Policy::start`); every parcel is held until then anyway.
        let rules: SharedRules = Arc::new(arc_swap::ArcSwap::new(config.rules.clone()));
        let released = released_registry(&config);
        let (anomaly_tx, anomaly_rx) = mpsc::channel(ANOMALY_QUEUE);
        let liveness = crate::service::Liveness::default();
        tasks.spawn(crate::evidence::keep_within_limits(
            config.evidence.clone(),
            alarms.clone(),
            shutdown.clone(),
        ));
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

        let opened_soon = tokio::time::timeout(OPEN_WAIT, &mut opening).await.ok();
        let mut early = match opened_soon {
            Some(_) => None,
            None => {
                warn!(
                    store = %config.storage.path.display(),
                    "the journal store is still opening: the lines start now and hold every parcel until it is open and the clearance table is loaded; their records wait in the spill {}",
                    spill.display()
                );
                if let Some(s) = &starting {
                    s.phase(&format!(
                        "opening the journal store {}; the lines hold every parcel until it is open",
                        config.storage.path.display()
                    ));
                }
                Some(start_floor(&wiring, None, &floor, &mut tasks))
            }
        };
        let opened = match opened_soon {
            Some(r) => r,
            None => opening.await,
        };
        let opened = match opened
            .map_err(|e| StartError::Opening(e.to_string()))
            .and_then(|r| r)
        {
            Ok(opened) => opened,
            Err(e) => {
                if early.is_some() {
                    // The lines ran without the store, which will not open: they stop, and
                    // the spill takes their last records before the error ends the process.
                    error!(error = %e, "the journal store cannot be opened: stopping the lines that started without it");
                    shutdown.cancel();
                    drop(early);
                    drop(sink);
                    let stopped = async { while tasks.join_next().await.is_some() {} };
                    let _ = tokio::time::timeout(STOP_WAIT, stopped).await;
                    let _ = tokio::time::timeout(STOP_WAIT, before_open).await;
                }
                return Err(e);
            }
        };
        let Opened {
            journal,
            adopting,
            expected_entries,
            expected_declarations,
            chain_tags,
        } = opened;
        table.begin_loading(expected_entries);
        if let Some(s) = &starting {
            s.phase(if early.is_some() {
                "the journal store is open; starting the view (the lines hold every parcel until the clearance table is loaded)"
            } else {
                "starting the lines and the view"
            });
        }
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
        // A salvaged store says so once, as an alarm (its chain holds the salvage record).
        if let Some(notice) = journal.take_salvage_notice()? {
            alarms.raise(notice);
        }
        // The writer takes over the queue, and stores the spill first (the last shutdown's,
        // and what the lines decided while the store opened).
        store_open.cancel();
        let queue = before_open
            .await
            .map_err(|e| StartError::Opening(e.to_string()))?;
        let (mut writer, accepted) = JournalWriter::new(
            journal.clone(),
            queue,
            config.storage.flush_window,
            metrics.clone(),
        )?;
        let mut restored = writer.restored();
        if let Some(intents) = writer.take_intents() {
            lines::on_floor(&mut tasks, &intents_thread, intents);
        }
        // The staff view's board subscribes before the writer runs, so it misses no record.
        let view_feed = config.view.as_ref().map(|_| writer.subscribe());
        let view_accepted = accepted.clone();
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
        // What the store says of an earlier run's parcels must include the spilled records
        // (a start interrupted while its store opened left its parcels there). A large spill
        // (of a shutdown with a full disk) takes a while to store: the lines do not wait
        // for it past `OPEN_WAIT` either, and hold every parcel meanwhile.
        let mut restored_done = false;
        if early.is_none() {
            let left = OPEN_WAIT.saturating_sub(begun.elapsed());
            match tokio::time::timeout(left, &mut restored).await {
                Ok(_) => restored_done = true,
                Err(_) => {
                    warn!("storing the spilled records takes a while: the lines start now and hold every parcel meanwhile");
                    early = Some(start_floor(&wiring, None, &floor, &mut tasks));
                }
            }
        }
        if !restored_done {
            let _ = restored.await;
        }
        let now_ms = crate::metrics::unix_ms(std::time::SystemTime::now());
        let (mut recent, interrupted) = settle_interrupted(&journal, now_ms)?;
        fill_released(&journal, &config, &released, now_ms)?;
        let destinations = match early {
            Some((destinations, waiting)) => {
                // The lines started early: what the store holds of an earlier run's parcels
                // goes to them now.
                for (line, tx) in waiting {
                    let _ = tx.send(recent.take(&line));
                }
                Some(destinations)
            }
            None => None,
        };
        background::keep_store(
            &mut journal_tasks,
            &config,
            &journal,
            &metrics,
            &alarms,
            &uplink_stop,
        );
        let policy = Policy::start(
            rules.clone(),
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
        {
            let set = policy.current();
            info!(rule_set = %set.version, rules = set.rules.len(), "customs rule set");
        }
        let chain_check = check_chain(
            &journal,
            &config.gateway_id,
            &alarms,
            &sink,
            chain_tags,
            {
                let metrics = metrics.clone();
                move || Metrics::get(&metrics.backlog)
            },
            // Stops with the scanners: it holds a record sink, which must be gone for the
            // journal writer to finish (and the writer to spill what it holds).
            shutdown.clone(),
        );
        journal_tasks.spawn(async move {
            let _ = chain_check.await;
        });
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
                interrupted,
            },
            shutdown.clone(),
        ));
        journal_tasks.spawn(policy.clone().watch(uplink_stop.clone()));
        {
            // Forgetting old state waits for the load: it forgets from the store and the
            // table together.
            let (journal, table, released) = (journal.clone(), table.clone(), released.clone());
            let (keep, stop) = (config.storage.clearance, uplink_stop.clone());
            let (alarms, changes) = (alarms.clone(), changes.clone());
            journal_tasks.spawn(async move {
                if loaded(&table, &stop).await {
                    crate::retention::run(journal, table, released, changes, keep, alarms, stop)
                        .await;
                }
            });
        }
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
            uplink_thread.spawn(async move {
                if loaded(&table, &stop).await {
                    uplink.run(stop).await;
                }
            })
        };

        let destinations = match destinations {
            Some(d) => d,
            None => {
                // A small table loads in a moment: the lines wait that long for it rather
                // than hold their first parcels as `state_loading`. A large one goes on
                // loading behind them.
                let _ = tokio::time::timeout(LOAD_WAIT, loaded(&table, &shutdown)).await;
                start_floor(&wiring, Some(&mut recent), &floor, &mut tasks).0
            }
        };
        match crate::evidence::start(
            &config.evidence,
            config.gateway_id.clone(),
            destinations,
            sink.clone(),
            metrics.clone(),
            shutdown.clone(),
        ) {
            Ok(handles) => join_all(&mut tasks, handles),
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
                    starting,
                )
                .await
            }
            _ => None,
        };
        tokio::spawn(crate::service::watchdog(liveness, uplink_stop.clone()));
        Ok(App {
            _wake_latency: wake_latency,
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
            _threads: [floor, journal_thread, intents_thread, uplink_thread],
            uplink,
            journal_tasks,
            uplink_stop,
            _owner: owner,
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

/// Holds the configured wake-up latency request; a refusal is logged and the daemon runs on
/// (the floor's decisions stay correct, only their latency when idle is the kernel's choice).
fn hold_wake_latency(
    settings: crate::threads::FloorSettings,
) -> Option<crate::threads::WakeLatency> {
    use crate::threads::WakeLatency;
    let us = settings.cpu_wake_latency_us?;
    match WakeLatency::hold(us) {
        Ok(held) => {
            info!(
                cpu_wake_latency_us = us,
                "CPUs kept out of idle states slower to leave than this"
            );
            Some(held)
        }
        Err(e) => {
            warn!(cpu_wake_latency_us = us, device = WakeLatency::DEVICE, error = %e, "cannot ask the kernel for a wake-up latency (the device must be writable by the service's user: deploy/udev); idle CPUs sleep as the kernel chooses");
            None
        }
    }
}
