//! Alarms: conditions an operator or customs must hear about (journal filling up, records
//! the broker refuses). Each alarm is logged at once and queued as an `alarm` event for the
//! platform, which the uplink publishes on `P/events` while it is connected. The queue is
//! bounded: when the platform is unreachable for long, the oldest alarms are dropped from
//! the queue (they stay in the log and the metrics), never anything from the journal.
//!
//! Repeats are folded: an alarm identical to one raised less than [`REPEAT_WINDOW`] ago is
//! logged but not queued again (a missing TLS key fails every reconnect attempt, seven in
//! five seconds); the next one after the window, or the next drain after it, carries how
//! many were folded into it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bondline_devices::contract::{EdgeEvent, EventKind, SCHEMA};
use tokio::sync::Notify;

use crate::metrics::unix_ms;

const QUEUE: usize = 1000;

/// An identical alarm within this time of the first is folded into it.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(60);

/// Distinct alarm texts remembered for folding; beyond, the oldest are forgotten.
const REMEMBERED: usize = 256;

/// An alarm text raised recently: when its window started and how many repeats it folded.
struct Recent {
    since: Instant,
    folded: u64,
}

/// Shared handle: raise alarms from anywhere, drain them in the uplink.
#[derive(Clone)]
pub struct Alarms {
    gateway: String,
    queue: Arc<Mutex<VecDeque<EdgeEvent>>>,
    recent: Arc<Mutex<HashMap<String, Recent>>>,
    notify: Arc<Notify>,
}

impl Alarms {
    pub fn new(gateway: &str) -> Alarms {
        Alarms {
            gateway: gateway.to_string(),
            queue: Arc::new(Mutex::new(VecDeque::new())),
            recent: Arc::new(Mutex::new(HashMap::new())),
            notify: Arc::new(Notify::new()),
        }
    }

    /// Logs the alarm and queues it for the platform, unless the same alarm was queued less
    /// than [`REPEAT_WINDOW`] ago (then it is only logged and counted).
    pub fn raise(&self, detail: String) {
        self.raise_at(detail, Instant::now());
    }

    fn raise_at(&self, detail: String, now: Instant) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let folded = match recent.get_mut(&detail) {
            Some(r) if now.duration_since(r.since) < REPEAT_WINDOW => {
                r.folded += 1;
                tracing::warn!(alarm = %detail, "ALARM repeated; folded into the one raised at most a minute ago");
                return;
            }
            Some(r) => std::mem::take(&mut r.folded),
            None => 0,
        };
        if recent.len() >= REMEMBERED {
            let oldest = recent
                .iter()
                .min_by_key(|(_, r)| r.since)
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                recent.remove(&k);
            }
        }
        recent.insert(
            detail.clone(),
            Recent {
                since: now,
                folded: 0,
            },
        );
        drop(recent);
        self.queue_alarm(with_repeats(detail, folded));
    }

    fn queue_alarm(&self, detail: String) {
        tracing::error!(alarm = %detail, "ALARM");
        let event = EdgeEvent {
            schema: SCHEMA,
            gateway: self.gateway.clone(),
            kind: EventKind::Alarm,
            at_ms: unix_ms(SystemTime::now()),
            detail,
            topic: None,
        };
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= QUEUE {
            q.pop_front();
        }
        q.push_back(event);
        drop(q);
        self.notify.notify_one();
    }

    /// Queues a summary for every alarm whose window has passed with repeats folded into it.
    fn summarise_at(&self, now: Instant) {
        let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        let mut due = Vec::new();
        recent.retain(|detail, r| {
            if now.duration_since(r.since) < REPEAT_WINDOW {
                return true;
            }
            if r.folded > 0 {
                due.push(with_repeats(detail.clone(), r.folded));
            }
            false
        });
        drop(recent);
        for d in due {
            self.queue_alarm(d);
        }
    }

    /// Takes every queued alarm (with the summaries of repeats whose window has passed).
    pub fn drain(&self) -> Vec<EdgeEvent> {
        self.drain_at(Instant::now())
    }

    fn drain_at(&self, now: Instant) -> Vec<EdgeEvent> {
        self.summarise_at(now);
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect()
    }

    /// Puts alarms back at the front (they could not be sent).
    pub fn requeue(&self, events: Vec<EdgeEvent>) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        for e in events.into_iter().rev() {
            if q.len() < QUEUE {
                q.push_front(e);
            }
        }
    }

    /// Resolves when an alarm has been raised since the last call.
    pub async fn raised(&self) {
        self.notify.notified().await
    }
}

/// The alarm text, with how many identical alarms were folded into it.
fn with_repeats(detail: String, folded: u64) -> String {
    if folded == 0 {
        return detail;
    }
    format!(
        "{detail} (repeated {folded} more time(s) within {} s, not raised separately)",
        REPEAT_WINDOW.as_secs()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_alarms_are_folded_and_counted() {
        let a = Alarms::new("gw");
        let t0 = Instant::now();
        let key = "cannot connect to the broker: key file missing".to_string();
        // Seven failed reconnects in five seconds: one alarm.
        for i in 0..7 {
            a.raise_at(key.clone(), t0 + Duration::from_millis(700 * i));
        }
        a.raise_at("another alarm".into(), t0 + Duration::from_secs(1));
        let first = a.drain_at(t0 + Duration::from_secs(5));
        let details: Vec<&str> = first.iter().map(|e| e.detail.as_str()).collect();
        assert_eq!(details, [key.as_str(), "another alarm"]);
        // After the window: the next one says how many were folded.
        a.raise_at(key.clone(), t0 + REPEAT_WINDOW + Duration::from_secs(1));
        let second = a.drain_at(t0 + REPEAT_WINDOW + Duration::from_secs(2));
        assert_eq!(second.len(), 1, "{second:?}");
        assert!(
            second[0]
                .detail
                .ends_with("(repeated 6 more time(s) within 60 s, not raised separately)"),
            "{}",
            second[0].detail
        );
        // Repeats that stop are summed up by the drain after their window.
        a.raise_at(key.clone(), t0 + REPEAT_WINDOW + Duration::from_secs(3));
        assert!(a
            .drain_at(t0 + REPEAT_WINDOW + Duration::from_secs(4))
            .is_empty());
        let later = a.drain_at(t0 + 3 * REPEAT_WINDOW);
        assert_eq!(later.len(), 1, "{later:?}");
        assert!(
            later[0].detail.contains("repeated 1 more time(s)"),
            "{}",
            later[0].detail
        );
        assert!(a.drain_at(t0 + 4 * REPEAT_WINDOW).is_empty());
    }
}
