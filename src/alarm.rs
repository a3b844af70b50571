//! Alarms: conditions an operator or customs must hear about (journal filling up, records
//! the broker refuses). Each alarm is logged at once and queued as an `alarm` event for the
//! platform, which the uplink publishes on `P/events` while it is connected. The queue is
//! bounded: when the platform is unreachable for long, the oldest alarms are dropped from
//! the queue (they stay in the log and the metrics), never anything from the journal.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bondline_devices::contract::{EdgeEvent, EventKind, SCHEMA};
use tokio::sync::Notify;

use crate::metrics::unix_ms;

const QUEUE: usize = 1000;

/// Shared handle: raise alarms from anywhere, drain them in the uplink.
#[derive(Clone)]
pub struct Alarms {
    gateway: String,
    queue: Arc<Mutex<VecDeque<EdgeEvent>>>,
    notify: Arc<Notify>,
}

impl Alarms {
    pub fn new(gateway: &str) -> Alarms {
        Alarms {
            gateway: gateway.to_string(),
            queue: Arc::new(Mutex::new(VecDeque::new())),
            notify: Arc::new(Notify::new()),
        }
    }

    /// Logs the alarm and queues it for the platform.
    pub fn raise(&self, detail: String) {
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

    /// Takes every queued alarm.
    pub fn drain(&self) -> Vec<EdgeEvent> {
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
