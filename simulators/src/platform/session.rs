//! The MQTT event-loop task: subscribes on every new connection, takes in records (through
//! the chain check, on the bytes as received), events and anomalies, counts PUBACKs, and
//! backs off with jitter between failed connection attempts. It owns the connection; the
//! [`PlatformSim`](super::PlatformSim) handle only reads what it has seen.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bondline_devices::contract::{topic, Anomaly, EdgeEvent, Record, SCHEMA};
use rand::Rng as _;
use rumqttc::{AsyncClient, Event, EventLoop, Packet, QoS, SubscribeFilter, SubscribeReasonCode};

use super::Shared;

/// Drives the MQTT event loop forever: records incoming messages, counts PUBACKs, subscribes
/// on every new connection, and backs off (with jitter) between failed connection attempts.
pub(super) async fn drive(
    mut eventloop: EventLoop,
    client: AsyncClient,
    prefix: String,
    shared: Arc<Mutex<Shared>>,
) {
    let records_topic = format!("{prefix}/{}", topic::RECORDS);
    let events_topic = format!("{prefix}/{}", topic::EVENTS);
    let anomalies_topic = format!("{prefix}/{}", topic::ANOMALIES);
    let lock = || shared.lock().unwrap_or_else(|e| e.into_inner());
    let mut failures: u32 = 0;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                failures = 0;
                lock().subscribed = false;
                // Not awaited here: the request channel is only drained by this very loop.
                let client = client.clone();
                let filters = [
                    records_topic.clone(),
                    events_topic.clone(),
                    anomalies_topic.clone(),
                ]
                .map(|t| SubscribeFilter::new(t, QoS::AtLeastOnce));
                tokio::spawn(async move {
                    if let Err(err) = client.subscribe_many(filters).await {
                        tracing::warn!(%err, "cannot request subscriptions");
                    }
                });
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let granted = ack
                    .return_codes
                    .iter()
                    .all(|c| matches!(c, SubscribeReasonCode::Success(_)));
                if !granted {
                    tracing::warn!(codes = ?ack.return_codes, "broker refused a subscription");
                }
                lock().subscribed = granted;
            }
            Ok(Event::Incoming(Packet::PubAck(_))) => lock().acked += 1,
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if p.topic == records_topic {
                    let mut s = lock();
                    // The chain is checked on the bytes as received, whatever they parse as.
                    s.chains.receive(&p.payload);
                    match parse_record(&p.payload) {
                        Some(r) => s.all.push(r),
                        None => {
                            tracing::warn!(bytes = p.payload.len(), "unparsable parcel record");
                            s.bad_payloads += 1;
                        }
                    }
                } else if p.topic == events_topic {
                    match serde_json::from_slice::<EdgeEvent>(&p.payload) {
                        Ok(e) if e.schema == SCHEMA => {
                            tracing::info!(kind = ?e.kind, detail = %e.detail, "edge event");
                            lock().events.push(e);
                        }
                        _ => {
                            tracing::warn!(bytes = p.payload.len(), "unparsable edge event");
                            lock().bad_payloads += 1;
                        }
                    }
                } else if p.topic == anomalies_topic {
                    match serde_json::from_slice::<Anomaly>(&p.payload) {
                        Ok(a) if a.schema == SCHEMA => lock().anomalies.push(a),
                        _ => {
                            tracing::warn!(bytes = p.payload.len(), "unparsable anomaly");
                            lock().bad_payloads += 1;
                        }
                    }
                }
            }
            Ok(_) => {}
            Err(err) => {
                lock().subscribed = false;
                failures = failures.saturating_add(1);
                let base = Duration::from_millis(100) * 2u32.pow(failures.min(5));
                let backoff = base
                    .min(Duration::from_secs(2))
                    .mul_f64(rand::thread_rng().gen_range(0.5..1.0));
                tracing::warn!(%err, retry_in_ms = backoff.as_millis() as u64, "mqtt connection");
                tokio::time::sleep(backoff).await;
            }
        }
    }
}

pub(super) fn parse_record(payload: &[u8]) -> Option<Record> {
    let r = serde_json::from_slice::<Record>(payload).ok()?;
    (r.schema() == SCHEMA).then_some(r)
}
