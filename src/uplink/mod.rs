//! The uplink to the customs clearance platform over MQTT (rumqttc).
//!
//! Each connection is one *session*: a fresh client and event loop, so no retransmission
//! state from an old connection can confuse which PUBACK belongs to which record. A session
//! sends the outbox from its lowest sequence, in order, with at most `inflight` records
//! unacknowledged; the journal drops a record from the outbox only on the PUBACK that
//! matches it. rumqttc reports the packet id of each publish as it writes it, in request
//! order, so a FIFO of sequence numbers, pushed under the same lock that queues the request,
//! maps every packet id back to its record.
//!
//! Inbound declarations and instructions are acknowledged manually, after they are stored,
//! so a crash between receipt and storage makes the broker deliver them again. The session is
//! persistent (`clean_session = false`) so the broker keeps instructions published while the
//! gateway was offline.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use bondline_devices::contract::{topic, Declaration, EdgeEvent, EventKind, Instruction, SCHEMA};
use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, Outgoing, Publish, QoS};
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::config::Uplink as UplinkConfig;
use crate::journal::Journal;
use crate::metrics::{unix_ms, Metrics};
use crate::rules::{Applied, ClearanceTable};

const LINK: &str = "broker";

/// Everything the uplink task needs.
pub struct Uplink {
    pub config: UplinkConfig,
    pub gateway: String,
    pub journal: Journal,
    pub table: Arc<RwLock<ClearanceTable>>,
    pub metrics: Arc<Metrics>,
    /// Last accepted journal sequence; changes when new records are durable.
    pub accepted: watch::Receiver<u64>,
}

/// Packet-id bookkeeping of one session. `None` marks a publish that is not a record (an
/// event), whose PUBACK frees nothing in the journal.
#[derive(Default)]
struct Pending {
    queued: VecDeque<Option<u64>>,
    by_pkid: HashMap<u16, Option<u64>>,
}

impl Uplink {
    /// Runs sessions until `shutdown`, reconnecting with backoff and jitter.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(250), self.config.reconnect_max);
        loop {
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.session(&mut backoff) => r,
            };
            self.metrics.uplink_ready.store(false, Ordering::Relaxed);
            self.metrics.set_link(LINK, false, Some(outcome.clone()));
            let wait = backoff.next_delay();
            warn!(error = %outcome, retry_in = ?wait, "broker link down");
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn options(&self) -> MqttOptions {
        let c = &self.config;
        let mut o = MqttOptions::new(&c.client_id, &c.host, c.port);
        o.set_keep_alive(c.keep_alive)
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_inflight(c.inflight)
            .set_max_packet_size(c.max_packet_bytes, c.max_packet_bytes)
            .set_request_channel_capacity(c.inflight as usize + 256);
        o
    }

    /// One connection, until it fails. Returns why it ended.
    async fn session(&self, backoff: &mut Backoff) -> String {
        let (client, mut events) =
            AsyncClient::new(self.options(), self.config.inflight as usize + 256);
        let pending = Arc::new(Mutex::new(Pending::default()));
        let window = Arc::new(Semaphore::new(self.config.inflight as usize));
        let feeder_stop = CancellationToken::new();
        let _stop_feeder = feeder_stop.clone().drop_guard();
        let feeder_failed = CancellationToken::new();
        loop {
            let event = tokio::select! {
                r = events.poll() => match r {
                    Ok(e) => e,
                    Err(e) => return e.to_string(),
                },
                _ = feeder_failed.cancelled() => return "record queue to the broker failed".into(),
            };
            match event {
                Event::Incoming(Incoming::ConnAck(ack)) => {
                    info!(broker = %format!("{}:{}", self.config.host, self.config.port), session_present = ack.session_present, "broker connected");
                    backoff.reset();
                    self.metrics.set_link(LINK, true, None);
                    let subs = [topic::DECLARATIONS, topic::INSTRUCTIONS].map(|t| {
                        rumqttc::SubscribeFilter::new(self.config.topic(t), QoS::AtLeastOnce)
                    });
                    if let Err(e) = client.try_subscribe_many(subs) {
                        return format!("cannot subscribe: {e}");
                    }
                    tokio::spawn(feed(Feeder {
                        client: client.clone(),
                        journal: self.journal.clone(),
                        topic: self.config.topic(topic::RECORDS),
                        pending: pending.clone(),
                        window: window.clone(),
                        accepted: self.accepted.clone(),
                        stop: feeder_stop.clone(),
                        failed: feeder_failed.clone(),
                    }));
                }
                Event::Incoming(Incoming::SubAck(_)) => {
                    self.metrics.uplink_ready.store(true, Ordering::Relaxed);
                }
                Event::Outgoing(Outgoing::Publish(pkid)) => {
                    let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(entry) = p.queued.pop_front() {
                        p.by_pkid.insert(pkid, entry);
                    }
                }
                Event::Incoming(Incoming::PubAck(ack)) => {
                    let entry = pending
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .by_pkid
                        .remove(&ack.pkid);
                    if let Some(Some(seq)) = entry {
                        window.add_permits(1);
                        match self.journal.mark_forwarded(seq) {
                            Ok(true) => {
                                Metrics::add(&self.metrics.records_forwarded, 1);
                                self.metrics.backlog.fetch_sub(1, Ordering::Relaxed);
                            }
                            Ok(false) => {}
                            Err(e) => {
                                warn!(seq, error = %e, "cannot clear record from the outbox; it will be sent again")
                            }
                        }
                    }
                }
                Event::Incoming(Incoming::Publish(p)) => {
                    self.inbound(&p, &client, &pending).await;
                    if let Err(e) = client.try_ack(&p) {
                        return format!("cannot acknowledge: {e}");
                    }
                }
                other => debug!(?other, "mqtt"),
            }
        }
    }

    /// Applies one platform message. Bad messages are reported, never applied in part.
    async fn inbound(&self, p: &Publish, client: &AsyncClient, pending: &Mutex<Pending>) {
        Metrics::add(&self.metrics.platform_messages, 1);
        let suffix = p
            .topic
            .strip_prefix(&self.config.topic_prefix)
            .and_then(|s| s.strip_prefix('/'))
            .unwrap_or("");
        let result: Result<(), String> = match suffix {
            topic::DECLARATIONS => match Declaration::parse(&p.payload) {
                Ok(d) => match self.journal.store_declaration(&d).await {
                    Ok(()) => {
                        self.apply(|t| t.apply_declaration(d));
                        Ok(())
                    }
                    Err(e) => Err(format!("cannot store: {e}")),
                },
                Err(e) => Err(e.to_string()),
            },
            topic::INSTRUCTIONS => match Instruction::parse(&p.payload) {
                Ok(i) => match self.journal.store_instruction(&i).await {
                    Ok(()) => {
                        self.apply(|t| t.apply_instruction(i));
                        Ok(())
                    }
                    Err(e) => Err(format!("cannot store: {e}")),
                },
                Err(e) => Err(e.to_string()),
            },
            _ => Err("no handler for this topic".into()),
        };
        if let Err(reason) = result {
            Metrics::add(&self.metrics.platform_rejected, 1);
            warn!(topic = %p.topic, %reason, "platform message rejected");
            let event = EdgeEvent {
                schema: SCHEMA,
                gateway: self.gateway.clone(),
                kind: EventKind::RejectedMessage,
                at_ms: unix_ms(SystemTime::now()),
                detail: reason,
                topic: Some(p.topic.clone()),
            };
            let bytes = serde_json::to_vec(&event).expect("events always serialize");
            let mut pend = pending.lock().unwrap_or_else(|e| e.into_inner());
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
                warn!("event queue full; rejection reported in the log only");
            }
        }
    }

    fn apply(&self, f: impl FnOnce(&mut ClearanceTable) -> Applied) {
        let mut table = self.table.write().unwrap_or_else(|e| e.into_inner());
        f(&mut table);
    }
}

/// The publishing half of a session.
struct Feeder {
    client: AsyncClient,
    journal: Journal,
    topic: String,
    pending: Arc<Mutex<Pending>>,
    window: Arc<Semaphore>,
    accepted: watch::Receiver<u64>,
    stop: CancellationToken,
    /// Cancelled by the feeder when it cannot go on, which ends the session.
    failed: CancellationToken,
}

/// Sends the outbox in sequence order, holding a window permit per unacknowledged record.
async fn feed(mut f: Feeder) {
    let mut next = 0u64;
    loop {
        // Mark the current value seen before reading, so a record accepted after the read
        // wakes the wait below.
        f.accepted.borrow_and_update();
        let batch = match f.journal.outbox_from(next, 256) {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "cannot read the outbox");
                tokio::select! {
                    _ = f.stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        if batch.is_empty() {
            tokio::select! {
                _ = f.stop.cancelled() => return,
                r = f.accepted.changed() => if r.is_err() { return },
            }
            continue;
        }
        for (seq, bytes) in batch {
            let permit = tokio::select! {
                _ = f.stop.cancelled() => return,
                p = f.window.acquire() => match p { Ok(p) => p, Err(_) => return },
            };
            permit.forget();
            let mut p = f.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.queued.push_back(Some(seq));
            if let Err(e) = f
                .client
                .try_publish(&f.topic, QoS::AtLeastOnce, false, bytes.to_vec())
            {
                p.queued.pop_back();
                warn!(error = %e, "cannot queue a record; session will restart");
                f.failed.cancel();
                return;
            }
            next = seq + 1;
        }
    }
}
