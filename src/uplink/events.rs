//! What a session publishes besides the records: events on `P/events` (refusals, session
//! findings, rule sets applied) and the lines' anomalies on `P/anomalies`, each only if the
//! request queue has room, since the log (events) or the parcel's record (anomalies) keeps
//! the same facts.

use std::sync::Mutex;
use std::time::SystemTime;

use bondline_devices::contract::{topic, Anomaly, EdgeEvent, EventKind, SCHEMA};
use rumqttc::{AsyncClient, QoS};
use tracing::warn;

use super::pending::Pending;
use super::Uplink;
use crate::metrics::{unix_ms, Metrics};

impl Uplink {
    /// Publishes an event to `P/events` if the request queue has room; events are notices,
    /// the log keeps them too.
    pub(super) fn event(
        &self,
        client: &AsyncClient,
        pending: &Mutex<Pending>,
        kind: EventKind,
        detail: String,
        topic_name: Option<String>,
    ) {
        let event = EdgeEvent {
            schema: SCHEMA,
            gateway: self.gateway.clone(),
            kind,
            at_ms: unix_ms(SystemTime::now()),
            detail,
            topic: topic_name,
        };
        let bytes = serde_json::to_vec(&event).expect("events always serialize");
        let mut pend = pending.lock().unwrap_or_else(|e| e.into_inner());
        if pend.queued.len() >= self.publish_room() {
            warn!("event queue full; event reported in the log only");
            return;
        }
        pend.queued.push_back(None);
        if client
            .try_publish(
                self.config.topic(topic::EVENTS),
                QoS::AtLeastOnce,
                false,
                bytes,
            )
            .is_err()
        {
            pend.queued.pop_back();
            warn!("event queue full; event reported in the log only");
        }
    }

    /// Publishes an anomaly if the request queue has room; otherwise it is counted as
    /// dropped (the parcel's record holds the same facts).
    pub(super) fn publish_anomaly(
        &self,
        client: &AsyncClient,
        pending: &Mutex<Pending>,
        a: &Anomaly,
    ) {
        let bytes = serde_json::to_vec(a).expect("anomalies always serialize");
        let mut pend = pending.lock().unwrap_or_else(|e| e.into_inner());
        pend.queued.push_back(None);
        if pend.queued.len() > self.publish_room()
            || client
                .try_publish(
                    self.config.topic(topic::ANOMALIES),
                    QoS::AtLeastOnce,
                    false,
                    bytes,
                )
                .is_err()
        {
            pend.queued.pop_back();
            Metrics::add(&self.metrics.anomalies_dropped, 1);
            warn!(anomaly = %a.anomaly_id, "request queue full; anomaly not sent, the record carries it");
        }
    }
}
