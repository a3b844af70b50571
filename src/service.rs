//! Running under systemd: readiness, watchdog, stop and reload notices (`Type=notify`).
//!
//! The watchdog ping is not a timer: it is sent only while every line task has been seen
//! alive recently. A line stuck in its loop (a lock never released, a busy loop) stops the
//! pings, and systemd restarts the service after `WatchdogSec`; the journal keeps every
//! accepted record across that restart. Outside systemd (no `NOTIFY_SOCKET`) every call here
//! does nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

// The runtime's clock, so that tests can run the liveness checks on paused time.
use tokio::time::Instant;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// How long a task may go without a beat before it counts as hung.
pub const HUNG_AFTER: Duration = Duration::from_secs(5);

/// Heartbeats of the tasks the watchdog vouches for.
#[derive(Clone, Default)]
pub struct Liveness {
    beats: Arc<Mutex<Vec<(String, Beat)>>>,
}

/// One task's heartbeat: milliseconds since the process's reference instant.
#[derive(Clone)]
pub struct Beat {
    last_ms: Arc<AtomicU64>,
    origin: Instant,
}

impl Beat {
    /// Records that the task is alive now.
    pub fn beat(&self) {
        self.last_ms
            .store(self.origin.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn age(&self) -> Duration {
        let now = self.origin.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

impl Liveness {
    /// A new heartbeat for the task `name`, alive as of now.
    pub fn register(&self, name: &str) -> Beat {
        let beat = Beat {
            last_ms: Arc::new(AtomicU64::new(0)),
            origin: Instant::now(),
        };
        beat.beat();
        self.beats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((name.to_string(), beat.clone()));
        beat
    }

    /// The tasks not seen alive for longer than `limit`.
    pub fn hung(&self, limit: Duration) -> Vec<String> {
        self.beats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, b)| b.age() > limit)
            .map(|(n, _)| n.clone())
            .collect()
    }
}

fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        warn!(error = %e, "cannot notify the service manager");
    }
}

/// Start-up is complete: the pipeline runs.
pub fn ready(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells the service manager what the daemon is doing now; with `extend`, also that the
/// step in progress (start-up, stop) may take that much longer than its timeout allows.
pub fn status(status: &str, extend: Option<Duration>) {
    let mut states = vec![NotifyState::Status(status)];
    if let Some(d) = extend {
        states.push(NotifyState::ExtendTimeoutUsec(
            d.as_micros().min(u128::from(u32::MAX)) as u32,
        ));
    }
    notify(&states);
}

/// How often [`Extension`] asks for more time, and how much it asks for each time.
const EXTEND_EVERY: Duration = Duration::from_secs(5);
const EXTEND_BY: Duration = Duration::from_secs(20);

/// While alive, keeps extending the service manager's timeout (`EXTEND_TIMEOUT_USEC`) for a
/// step that may outlast it (opening and checking a large store at start), from a thread of
/// its own, so a step that blocks its thread still gets its extensions. A step that hangs
/// for good is not helped for ever: the extension ends when the guard is dropped, and the
/// watchdog covers the running daemon.
pub struct Extension {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Extension {
    pub fn start(what: &str) -> Extension {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let what = what.to_string();
        let thread = std::thread::Builder::new()
            .name("bondline-extend".into())
            .spawn(move || loop {
                status(&what, Some(EXTEND_BY));
                match rx.recv_timeout(EXTEND_EVERY) {
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
            })
            .ok();
        Extension {
            stop: Some(tx),
            thread,
        }
    }
}

impl Drop for Extension {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Shutdown has begun: in-flight parcels finish, the journal flushes.
pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// A reload (SIGHUP) is in progress.
pub fn reloading() {
    let mut states = vec![NotifyState::Reloading];
    // Type=notify-reload wants the monotonic time with RELOADING=1; older managers ignore it.
    if let Ok(t) = NotifyState::monotonic_usec_now() {
        states.push(t);
    }
    notify(&states);
}

/// The reload finished; `status` says what is in force.
pub fn reloaded(status: &str) {
    notify(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Pings the service manager's watchdog while every registered task is alive, until `stop`.
/// Does nothing when the unit has no `WatchdogSec`.
pub async fn watchdog(liveness: Liveness, stop: CancellationToken) {
    let mut usec = 0u64;
    if !sd_notify::watchdog_enabled(false, &mut usec) {
        return;
    }
    let period = Duration::from_micros(usec) / 2;
    let limit = HUNG_AFTER.min(Duration::from_micros(usec));
    info!(every = ?period, "systemd watchdog enabled");
    let mut tick = tokio::time::interval(period);
    let mut reported = false;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let hung = liveness.hung(limit);
        if hung.is_empty() {
            notify(&[NotifyState::Watchdog]);
            reported = false;
        } else if !reported {
            error!(tasks = ?hung, "tasks hung: watchdog pings stop, systemd will restart bondline");
            reported = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_task_that_stops_beating_is_hung() {
        let l = Liveness::default();
        let a = l.register("line L1");
        let _b = l.register("line L2");
        assert!(l.hung(Duration::from_millis(50)).is_empty());
        tokio::time::advance(Duration::from_millis(80)).await;
        a.beat();
        assert_eq!(
            l.hung(Duration::from_millis(50)),
            vec!["line L2".to_string()]
        );
    }
}
