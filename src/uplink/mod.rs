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
//! Inbound declarations, instructions, enterprise notices and rule sets are acknowledged
//! manually, after they are stored, so a crash between receipt and storage makes the broker
//! deliver them again. The session is
//! persistent (`clean_session = false`) so the broker keeps instructions published while the
//! gateway was offline.
//!
//! Anomalies from the lines go out on `P/anomalies` as soon as they arrive, ahead of the
//! record backlog; while the broker is unreachable they wait in a bounded queue (the parcel's
//! record carries the same facts durably).
//!
//! Pace: besides the in-flight window, a backlog is sent at most `drain_rate` records per
//! second, so a gateway coming back after an outage does not flood the broker.
//!
//! Records the broker will not take are *parked*, never dropped: a record larger than
//! `max_packet_kib` is parked before it is sent; a record that is the oldest unacknowledged
//! one when [`POISON_SESSIONS`] sessions in a row end (a broker that closes the connection on
//! a packet it refuses) is parked too. Parked records stay in the journal, raise an alarm and
//! go out again with `bondline journal replay`. MQTT 3.1.1 gives a broker no way to say "I
//! dropped this" in a PUBACK, so a broker configured to acknowledge and discard oversized
//! messages (Mosquitto's `message_size_limit`) cannot be detected: set `max_packet_kib` at or
//! below the broker's limit.
//!
//! Platform messages the client cannot read (a packet above `max_incoming_kib`, or one that
//! does not decode) end the session: rumqttc 0.25 fails the connection on them and has no
//! way to skip the packet, and the broker delivers it again on the next session. The gateway
//! ends that session itself, so it never counts against the records in flight (nothing is
//! parked because of it), reports it once per run of such sessions (alarm and journaled
//! `rejected_message` alert), and reconnects with its usual backoff. A packet over the read
//! limit cuts one session only: the next session's limit is raised to its size
//! ([`unreadable::read_limit_after`]), so it is read once, refused by the payload limit
//! with its own alert and acknowledged, and the broker stops delivering it. A malformed one
//! cuts every session until the broker drops it. The remedy is on the broker: its packet
//! limit below the gateway's (docs/mqtt.md).

pub mod ingest;
pub mod judge;
pub mod probe;
pub mod refusals;
pub mod session_watch;
mod unreadable;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bondline_devices::contract::{
    topic, AlertKind, Anomaly, Declaration, EdgeEvent, EventKind, Instruction, SCHEMA,
};
use rumqttc::{
    AsyncClient, ConnectionError, Event, Incoming, MqttOptions, Outgoing, Publish, QoS, StateError,
};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::alarm::Alarms;
use crate::backoff::Backoff;
use crate::config::Uplink as UplinkConfig;
use crate::floor::ClearanceChange;
use crate::journal::Journal;
use crate::metrics::{unix_ms, Metrics};
use crate::policy::{Policy, UpdateError, UpdateOutcome};
use crate::rules::{Applied, ClearanceTable, Message};
use crate::tls;
use unreadable::{read_limit_after, unreadable, unreadable_reason};

const LINK: &str = "broker";
/// Largest platform message accepted; larger ones are rejected with an event. The MQTT
/// client's own incoming limit (`uplink.max_incoming_kib`, 32 MiB by default) is set much
/// higher, so an oversized message is read, refused and acknowledged rather than breaking
/// the connection over and over.
const MAX_INBOUND_PAYLOAD: usize = 1024 * 1024;
/// Sessions in a row that may end with the same record unacknowledged before it is parked.
pub const POISON_SESSIONS: u32 = 3;
/// MQTT PUBLISH overhead besides payload and topic: fixed header (up to 5 bytes), topic
/// length (2) and packet id (2), rounded up.
const PACKET_OVERHEAD: usize = 16;

/// Everything the uplink task needs.
pub struct Uplink {
    pub config: UplinkConfig,
    pub gateway: String,
    pub journal: Journal,
    pub table: Arc<ClearanceTable>,
    pub metrics: Arc<Metrics>,
    /// Last accepted journal sequence; changes when new records are durable.
    pub accepted: watch::Receiver<u64>,
    pub alarms: Alarms,
    /// Clearance that changed, for the lines to re-decide tracked parcels.
    pub changes: tokio::sync::broadcast::Sender<ClearanceChange>,
    /// The rule set in force, which the platform may replace.
    pub policy: Policy,
    /// Anomalies from the lines, sent at once.
    pub anomalies: mpsc::Receiver<Anomaly>,
    /// Refused platform messages, to be journaled as alerts (see [`refusals`]).
    pub refusals: mpsc::UnboundedSender<refusals::Refusal>,
    /// Lost or taken-over broker sessions (see [`session_watch`]).
    pub session_watch: Mutex<session_watch::SessionWatch>,
    /// A finding made between sessions, reported as an event once connected again.
    pub session_finding: Mutex<Option<session_watch::Finding>>,
    /// Ends the current connection (SIGHUP: new TLS material or credentials take effect).
    pub reconnect: Arc<tokio::sync::Notify>,
    /// Which platform messages to believe.
    pub trust: crate::trust::Trust,
}

/// How a session ended.
struct SessionEnd {
    reason: String,
    /// The oldest record sent in this session and not acknowledged, if the session ended
    /// in a way that points at it: the peer closed the connection within
    /// [`POISON_WINDOW`] after it was sent, with no PUBACK for anything since.
    poison_suspect: Option<u64>,
    /// How long the session was up.
    lasted: Duration,
    /// Set when the session ended on a packet the client could not read.
    unreadable: bool,
    /// The size of that packet when it was over the session's read limit.
    oversized: Option<usize>,
    /// The broker could not be reached at all.
    unreachable: bool,
    /// The broker closed a session that was up (not a timeout, not the gateway's doing).
    cut_by_broker: bool,
}

/// Why a session ended, as far as the gateway can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EndCause {
    /// The connection failed or the broker closed it.
    Peer,
    /// Keep-alive or network timeouts.
    Timeout,
    /// The broker's address refused the TCP connection or could not be reached: the broker
    /// is down (see [`probe`]).
    Unreachable,
    /// The gateway ended it (a message it could not store, a full request queue).
    Local,
    /// The client could not read a packet from the broker (malformed): a platform
    /// message, never one of the gateway's records.
    Unreadable,
    /// A packet from the broker of this many bytes was over the session's read limit.
    Oversized(usize),
}

/// Requests the MQTT client may queue besides the records in flight, acknowledges and
/// events (see [`Uplink::request_queue`]): subscriptions and the odd request on top.
const REQUEST_SLACK: usize = 64;

/// Alarms published per feeder round at most.
const ALARMS_PER_ROUND: usize = 8;
/// A record unacknowledged this long on a live connection means the broker has stopped
/// acknowledging: the session is ended and an alarm raised.
const ACK_TIMEOUT: Duration = Duration::from_secs(60);

/// A session that ends this soon after a record was sent counts against that record.
const POISON_WINDOW: Duration = Duration::from_secs(5);
/// A session that lasted this long resets the reconnect backoff.
const HEALTHY_SESSION: Duration = Duration::from_secs(10);

/// Packet-id bookkeeping of one session. `None` marks a publish that is not a record (an
/// event), whose PUBACK frees nothing in the journal.
#[derive(Default)]
struct Pending {
    queued: VecDeque<Option<u64>>,
    by_pkid: HashMap<u16, Option<u64>>,
    /// When each unacknowledged record was written to the connection.
    sent_at: HashMap<u64, Instant>,
    /// When the last PUBACK for a record arrived.
    last_record_ack: Option<Instant>,
    /// Records acknowledged and not yet cleared from the outbox (see [`CLEAR_BATCH`]).
    acked: Vec<u64>,
}

/// PUBACKs cleared from the outbox together, at most: one watermark write for the batch
/// instead of one per record, which is what limits a backlog drain otherwise.
const CLEAR_BATCH: usize = 64;
/// How long an acknowledged record may wait to be cleared. Until then a crash would send it
/// again (a duplicate, never a loss).
const CLEAR_DELAY: Duration = Duration::from_millis(2);

impl Uplink {
    /// Runs sessions until `shutdown`, reconnecting with backoff and jitter.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(250), self.config.reconnect_max);
        // The record that was left unacknowledged by the last sessions, and how many in a row.
        let mut suspect: Option<(u64, u32)> = None;
        // Sessions in a row that ended on a packet the client could not read.
        let mut unreadable_run = 0u32;
        // The client's read limit for the next session (see [`read_limit_after`]).
        let mut read_limit = self.config.max_incoming_bytes;
        loop {
            let mut anomalies = std::mem::replace(&mut self.anomalies, mpsc::channel(1).1);
            let end = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = self.session(&mut anomalies, read_limit) => r,
            };
            read_limit = read_limit_after(self.config.max_incoming_bytes, end.oversized);
            self.anomalies = anomalies;
            self.metrics.uplink_ready.store(false, Ordering::Relaxed);
            Metrics::add(&self.metrics.uplink_disconnects, 1);
            self.metrics.set_link(LINK, false, Some(end.reason.clone()));
            if end.cut_by_broker {
                let found = self
                    .session_watch
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .cut_by_broker(std::time::Instant::now());
                if let Some(f) = found {
                    self.report_session(&f);
                    *self
                        .session_finding
                        .lock()
                        .unwrap_or_else(|e| e.into_inner()) = Some(f);
                }
            }
            if end.unreadable {
                unreadable_run += 1;
                if unreadable_run == 1 {
                    self.report_unreadable(&end.reason, end.oversized.is_some());
                }
            } else {
                unreadable_run = 0;
            }
            if end.lasted >= HEALTHY_SESSION && !end.unreadable {
                backoff.reset();
            }
            suspect = match (end.poison_suspect, suspect) {
                (Some(seq), Some((s, n))) if s == seq => Some((seq, n + 1)),
                (Some(seq), _) => Some((seq, 1)),
                (None, _) => None,
            };
            if let Some((seq, n)) = suspect {
                if n >= POISON_SESSIONS {
                    self.park(
                        seq,
                        &format!("the broker closed the connection {n} times in a row right after this record was sent ({})", end.reason),
                    );
                    suspect = None;
                }
            }
            let wait = backoff.next_delay();
            warn!(error = %end.reason, retry_in = ?wait, "broker link down");
            // Probing cheaply meanwhile: a broker that was down is used again within a probe
            // interval of its return (see `probe`).
            let (host, port) = (&self.config.host, self.config.port);
            match probe::wait_out(host, port, wait, end.unreachable, &shutdown).await {
                probe::WaitEnd::Cancelled => return,
                probe::WaitEnd::BrokerBack => {
                    info!("the broker is reachable again; reconnecting before the backoff ends")
                }
                probe::WaitEnd::Elapsed => {}
            }
        }
    }

    /// The connection's options, with TLS material and password read from their files now.
    fn options(&self, read_limit: usize) -> Result<MqttOptions, tls::TlsError> {
        let c = &self.config;
        let mut o = MqttOptions::new(&c.client_id, &c.host, c.port);
        o.set_keep_alive(c.keep_alive)
            .set_clean_session(false)
            .set_manual_acks(true)
            // Room for events beside the records' window, so an event never holds up the
            // acknowledges queued behind it (the client stops taking requests when full).
            .set_inflight(c.inflight.saturating_add(ingest::EVENT_ROOM as u16))
            .set_max_packet_size(read_limit, c.max_packet_bytes)
            .set_request_channel_capacity(self.request_queue());
        if let Some(t) = &c.tls {
            o.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(t.client_config()?),
            ));
        }
        if let Some(cred) = &c.credentials {
            o.set_credentials(&cred.username, cred.password()?);
        }
        Ok(o)
    }

    /// The MQTT client's request queue: acknowledges ([`ingest::ACK_WINDOW`]), the records in
    /// flight, events and anomalies, and slack. Each has its own bound, so a publish never
    /// finds the queue full.
    fn request_queue(&self) -> usize {
        ingest::ACK_WINDOW + self.publish_room() + REQUEST_SLACK
    }

    /// A platform message the client cannot read cut the session: refused, journaled and
    /// raised once per run of such sessions. The broker delivers it again: one over the read
    /// limit is then read once and refused like any oversized message; a malformed one ends
    /// every session until the broker stops delivering it.
    fn report_unreadable(&self, reason: &str, oversized: bool) {
        Metrics::add(&self.metrics.platform_rejected, 1);
        let detail = if oversized {
            format!(
                "a platform message over the read limit ended a session: {reason}; the next session reads it once to refuse it; set the broker's packet limit below uplink.max_incoming_kib (docs/mqtt.md)"
            )
        } else {
            format!(
                "a platform message could not be read and ends every session until the broker stops delivering it: {reason}; set the broker's packet limit below uplink.max_incoming_kib (docs/mqtt.md)"
            )
        };
        warn!(%reason, "platform message unreadable; the session is ended and retried with backoff");
        let _ = self.refusals.send(refusals::Refusal {
            alert: AlertKind::RejectedMessage,
            detail: detail.clone(),
        });
        self.alarms.raise(detail);
    }

    /// Clears the acknowledged records from the outbox, in one journal write.
    fn clear_acked(&self, pending: &Mutex<Pending>) {
        let seqs = std::mem::take(&mut pending.lock().unwrap_or_else(|e| e.into_inner()).acked);
        if seqs.is_empty() {
            return;
        }
        match self.journal.mark_forwarded_many(&seqs) {
            Ok(n) => {
                Metrics::add(&self.metrics.records_forwarded, n);
                Metrics::sub(&self.metrics.backlog, n);
            }
            Err(e) => {
                warn!(records = seqs.len(), error = %e, "cannot clear records from the outbox; they will be sent again")
            }
        }
    }

    /// Raises a lost or taken-over session: an alarm, and a journaled `broker_session`
    /// alert delivered like any record.
    fn report_session(&self, f: &session_watch::Finding) {
        warn!(finding = ?f, "broker session not safe");
        self.alarms.raise(format!("broker session: {}", f.detail()));
        let _ = self.refusals.send(refusals::Refusal {
            alert: AlertKind::BrokerSession,
            detail: f.detail(),
        });
    }

    /// Parks a record the broker will not take, with an alarm.
    fn park(&self, seq: u64, reason: &str) {
        park(&self.journal, &self.metrics, &self.alarms, seq, reason);
    }

    /// One connection, until it fails.
    async fn session(
        &self,
        anomalies: &mut mpsc::Receiver<Anomaly>,
        read_limit: usize,
    ) -> SessionEnd {
        let started = Instant::now();
        let pending = Arc::new(Mutex::new(Pending::default()));
        let (reason, cause) = self.connection(&pending, anomalies, read_limit).await;
        // PUBACKs received before the end still clear their records.
        self.clear_acked(&pending);
        let ended = Instant::now();
        let p = pending.lock().unwrap_or_else(|e| e.into_inner());
        let oldest = p.by_pkid.values().flatten().min().copied();
        let poison_suspect = oldest.filter(|seq| {
            let Some(&sent) = p.sent_at.get(seq) else {
                return false;
            };
            cause == EndCause::Peer
                && ended.duration_since(sent) < POISON_WINDOW
                && p.last_record_ack.is_none_or(|acked| acked < sent)
        });
        SessionEnd {
            reason,
            poison_suspect,
            lasted: ended.duration_since(started),
            unreadable: matches!(cause, EndCause::Unreadable | EndCause::Oversized(_)),
            oversized: match cause {
                EndCause::Oversized(n) => Some(n),
                _ => None,
            },
            unreachable: cause == EndCause::Unreachable,
            cut_by_broker: cause == EndCause::Peer,
        }
    }

    /// Drives one connection until it fails; returns why.
    async fn connection(
        &self,
        pending: &Arc<Mutex<Pending>>,
        anomalies: &mut mpsc::Receiver<Anomaly>,
        read_limit: usize,
    ) -> (String, EndCause) {
        let options = match self.options(read_limit) {
            Ok(o) => o,
            Err(e) => {
                self.alarms.raise(format!(
                    "cannot connect to the broker: {e}; records wait in the journal"
                ));
                return (e.to_string(), EndCause::Local);
            }
        };
        let (client, mut events) = AsyncClient::new(options, self.request_queue());
        let window = Arc::new(Semaphore::new(self.config.inflight as usize));
        let feeder_stop = CancellationToken::new();
        let _stop_feeder = feeder_stop.clone().drop_guard();
        let feeder_failed = CancellationToken::new();
        let mut watchdog = tokio::time::interval(Duration::from_secs(1));
        // When acknowledged records are cleared from the outbox at the latest.
        let mut clear_at: Option<Instant> = None;
        // The ingest stages (see [`ingest`]): the poller hands platform messages to the
        // checker, which hands checked batches to the storer, which acknowledges them.
        let (to_checker, mut from_poller) = mpsc::unbounded_channel::<Publish>();
        let (to_storer, mut from_checker) = mpsc::channel::<Vec<ingest::Prepared>>(1);
        let ack_room = Semaphore::new(ingest::ACK_WINDOW);
        // Platform messages received on this session and not yet acknowledged.
        let mut in_flight = 0u64;
        let ingested_at_start = Metrics::get(&self.metrics.platform_ingested);
        let mut stall = ingest::StallWatch::new(Instant::now(), ingested_at_start);
        let mut rate = ingest::Rate::new(Instant::now(), ingested_at_start);
        let checker = async {
            let trust = Arc::new(self.trust.clone());
            let prefix = self.config.topic_prefix.clone();
            while let Some(first) = from_poller.recv().await {
                let mut batch = vec![first];
                while batch.len() < ingest::INGEST_BATCH {
                    match from_poller.try_recv() {
                        Ok(p) => batch.push(p),
                        Err(_) => break,
                    }
                }
                let (trust, prefix) = (trust.clone(), prefix.clone());
                let now = unix_ms(SystemTime::now());
                let checked = tokio::task::spawn_blocking(move || {
                    ingest::prepare_batch(&trust, &prefix, MAX_INBOUND_PAYLOAD, batch, now)
                })
                .await;
                match checked {
                    Ok(b) => {
                        if to_storer.send(b).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        return (
                            format!("cannot check platform messages: {e}"),
                            EndCause::Local,
                        )
                    }
                }
            }
            ("platform message queue closed".to_string(), EndCause::Local)
        };
        let storer = async {
            let mut acks = ingest::AckQueue::default();
            while let Some(batch) = from_checker.recv().await {
                if let Err(e) = self
                    .ingest_batch(batch, &client, pending, &mut acks, &ack_room)
                    .await
                {
                    return (e, EndCause::Local);
                }
            }
            (
                "checked platform messages closed".to_string(),
                EndCause::Local,
            )
        };
        let poller = async {
            loop {
                let event = tokio::select! {
                    _ = tokio::time::sleep_until(clear_at.unwrap_or_else(Instant::now).into()), if clear_at.is_some() => {
                        clear_at = None;
                        self.clear_acked(pending);
                        continue;
                    }
                    _ = watchdog.tick() => {
                        let now = Instant::now();
                        let ingested = Metrics::get(&self.metrics.platform_ingested);
                        self.metrics.platform_in_flight.store(in_flight, Ordering::Relaxed);
                        self.metrics.platform_ingest_rate.store(rate.tick(now, ingested).round() as u64, Ordering::Relaxed);
                        if let Some(stalled) = stall.tick(now, in_flight, ingested) {
                            warn!(in_flight, stalled_s = stalled.as_secs(), "platform ingest stalled");
                            self.alarms.raise(format!(
                                "platform ingest stalled: {in_flight} platform messages received and none stored for {} s; they are acknowledged only once stored",
                                stalled.as_secs()
                            ));
                        }
                        let oldest = pending
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .sent_at
                            .iter()
                            .min_by_key(|(_, at)| **at)
                            .map(|(seq, at)| (*seq, at.elapsed()));
                        if let Some((seq, age)) = oldest.filter(|(_, age)| *age > ACK_TIMEOUT) {
                            let reason = format!("no PUBACK for record {seq} after {}s on a live connection", age.as_secs());
                            self.alarms.raise(format!("broker stopped acknowledging: {reason}; reconnecting"));
                            return (reason, EndCause::Timeout);
                        }
                        continue;
                    }
                    r = events.poll() => match r {
                        Ok(e) => e,
                        Err(e) => {
                            let cause = match &e {
                                _ if unreadable::oversized(&e).is_some() => {
                                    EndCause::Oversized(unreadable::oversized(&e).unwrap_or_default())
                                }
                                ConnectionError::NetworkTimeout
                                | ConnectionError::FlushTimeout
                                | ConnectionError::MqttState(StateError::AwaitPingResp) => EndCause::Timeout,
                                ConnectionError::MqttState(StateError::Deserialization(d)) if unreadable(d) => EndCause::Unreadable,
                                ConnectionError::Io(io) if matches!(
                                    io.kind(),
                                    std::io::ErrorKind::ConnectionRefused
                                        | std::io::ErrorKind::HostUnreachable
                                        | std::io::ErrorKind::NetworkUnreachable
                                ) => EndCause::Unreachable,
                                _ => EndCause::Peer,
                            };
                            return (unreadable_reason(&e, read_limit), cause);
                        }
                    },
                    _ = feeder_failed.cancelled() => return ("record queue to the broker failed".into(), EndCause::Local),
                    _ = self.reconnect.notified() => {
                        info!("reconnecting to the broker to use reloaded TLS material and credentials");
                        return ("reconnect requested (reload)".into(), EndCause::Local);
                    }
                    Some(a) = anomalies.recv(), if self.metrics.uplink_ready.load(Ordering::Relaxed) => {
                        self.publish_anomaly(&client, pending, &a);
                        continue;
                    }
                };
                match event {
                    Event::Incoming(Incoming::ConnAck(ack)) => {
                        info!(broker = %format!("{}:{}", self.config.host, self.config.port), session_present = ack.session_present, "broker connected");
                        self.metrics.set_link(LINK, true, None);
                        let lost = self
                            .session_watch
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .connected(ack.session_present);
                        if let Some(f) = &lost {
                            self.report_session(f);
                        }
                        let earlier = self
                            .session_finding
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .take();
                        for f in earlier.iter().chain(lost.iter()) {
                            self.event(
                                &client,
                                pending,
                                EventKind::Alarm,
                                format!("broker_session: {}", f.detail()),
                                None,
                            );
                        }
                        if lost.is_some() {
                            // Fail closed meanwhile: the table keeps what it holds; the platform
                            // answers by sending the current state again.
                            self.event(&client, pending, EventKind::StateRequest, "session lost: send the current declarations, instructions, notices and rule set for this gateway".into(), None);
                        }
                        let subs = [
                            topic::DECLARATIONS,
                            topic::INSTRUCTIONS,
                            topic::ENTERPRISES,
                            topic::RULES,
                        ]
                        .map(|t| {
                            rumqttc::SubscribeFilter::new(self.config.topic(t), QoS::AtLeastOnce)
                        });
                        if let Err(e) = client.try_subscribe_many(subs) {
                            return (format!("cannot subscribe: {e}"), EndCause::Local);
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
                            max_payload: self.config.max_packet_bytes.saturating_sub(
                                PACKET_OVERHEAD + self.config.topic(topic::RECORDS).len(),
                            ),
                            drain_rate: self.config.drain_rate,
                            alarms: self.alarms.clone(),
                            events_topic: self.config.topic(topic::EVENTS),
                            metrics: self.metrics.clone(),
                        }));
                    }
                    Event::Incoming(Incoming::SubAck(_)) => {
                        self.metrics.uplink_ready.store(true, Ordering::Relaxed);
                    }
                    Event::Outgoing(Outgoing::Publish(pkid)) => {
                        let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
                        if let Some(entry) = p.queued.pop_front() {
                            if let Some(seq) = entry {
                                p.sent_at.insert(seq, Instant::now());
                            }
                            p.by_pkid.insert(pkid, entry);
                        }
                    }
                    Event::Incoming(Incoming::PubAck(ack)) => {
                        let entry = {
                            let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
                            let entry = p.by_pkid.remove(&ack.pkid);
                            if let Some(Some(seq)) = entry {
                                p.sent_at.remove(&seq);
                                p.last_record_ack = Some(Instant::now());
                            }
                            entry
                        };
                        if let Some(Some(seq)) = entry {
                            window.add_permits(1);
                            let full = {
                                let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
                                p.acked.push(seq);
                                p.acked.len() >= CLEAR_BATCH
                            };
                            if full {
                                clear_at = None;
                                self.clear_acked(pending);
                            } else if clear_at.is_none() {
                                clear_at = Some(Instant::now() + CLEAR_DELAY);
                            }
                        }
                    }
                    Event::Incoming(Incoming::Publish(p)) => {
                        // Never waits: checked, stored and acknowledged by the ingest stages.
                        in_flight += 1;
                        if to_checker.send(p).is_err() {
                            return ("platform message queue closed".into(), EndCause::Local);
                        }
                    }
                    Event::Outgoing(Outgoing::PubAck(_)) => {
                        in_flight = in_flight.saturating_sub(1);
                        ack_room.add_permits(1);
                    }
                    other => debug!(?other, "mqtt"),
                }
            }
        };
        let end = tokio::select! {
            r = poller => r,
            r = checker => r,
            r = storer => r,
        };
        // What was received and not acknowledged comes again on the next session.
        self.metrics.platform_in_flight.store(0, Ordering::Relaxed);
        self.metrics
            .platform_ingest_rate
            .store(0, Ordering::Relaxed);
        end
    }

    /// Stores and applies one checked batch in arrival order, makes it durable and
    /// acknowledges it (see [`ingest`]). A bad message is refused whole, reported and
    /// acknowledged (redelivering it would not make it better). A message that cannot be
    /// stored returns an error: the session then ends without acknowledging it or anything
    /// after it, so the broker delivers them again on the next session.
    async fn ingest_batch(
        &self,
        batch: Vec<ingest::Prepared>,
        client: &AsyncClient,
        pending: &Mutex<Pending>,
        acks: &mut ingest::AckQueue<Publish>,
        ack_room: &Semaphore,
    ) -> Result<(), String> {
        {
            // Storing and applying do not interleave with forgetting old state.
            let _guard = self.journal.platform_lock().lock().await;
            let mut seg = Segment::default();
            let result = batch.into_iter().try_for_each(|prep| {
                let topic_name = prep.publish.topic.clone();
                let dup = prep.publish.dup;
                let ticket = acks.arrive(prep.publish);
                self.ingest_one(prep.verdict, &topic_name, dup, client, pending, &mut seg)?;
                acks.stored(ticket);
                Ok::<(), String>(())
            });
            // What was stored is applied even when a later message could not be: the table
            // follows the journal.
            self.commit(&mut seg);
            result?;
        }
        self.journal
            .flush()
            .await
            .map_err(|e| format!("cannot store platform messages: {e}"))?;
        acks.flushed();
        for p in acks.ready() {
            match ack_room.acquire().await {
                Ok(permit) => permit.forget(),
                Err(_) => return Err("acknowledge window closed".into()),
            }
            client
                .ack(&p)
                .await
                .map_err(|e| format!("cannot acknowledge: {e}"))?;
            Metrics::add(&self.metrics.platform_ingested, 1);
        }
        Ok(())
    }

    /// Stores one checked platform message and queues its table change in `seg`; reports a
    /// refusal. Counts it as a distinct message or as a redelivery.
    fn ingest_one(
        &self,
        verdict: Result<(ingest::Parsed, Option<u64>), ingest::Refusal>,
        topic_name: &str,
        dup: bool,
        client: &AsyncClient,
        pending: &Mutex<Pending>,
        seg: &mut Segment,
    ) -> Result<(), String> {
        use ingest::Parsed;
        use judge::{judge, Held, Keep, Kind};
        // Already stored: same id, or the same content.
        let mut known = false;
        let verdict: Result<(), ingest::Refusal> = match verdict {
            Err(r) => Err(r),
            Ok((Parsed::Declaration(d), signed_at)) => {
                let key = format!("w:{}", d.waybill);
                if seg.keys.contains(&key) {
                    self.commit(seg);
                }
                let held = {
                    let t = self.read_table();
                    Held {
                        id_seen: false,
                        fresh: t.declaration_is_new(&d),
                        replayed: t.declaration_replayed(&d, signed_at),
                    }
                };
                let what = format!("declaration of {}", d.waybill);
                let j = judge(Kind::Declaration, held, dup, &what);
                if j.keep == Keep::Message {
                    self.journal
                        .store_declaration(&d)
                        .map_err(|e| format!("cannot store a declaration: {e}"))?;
                }
                if j.apply {
                    seg.keys.insert(key);
                    seg.ops.push(TableOp::Declaration(d));
                }
                known = j.known;
                j.refusal.map_or(Ok(()), Err)
            }
            Ok((Parsed::Instruction(i), _)) => {
                let keys = [
                    format!("w:{}", i.waybill),
                    format!("i:{}", i.instruction_id),
                ];
                if keys.iter().any(|k| seg.keys.contains(k)) {
                    self.commit(seg);
                }
                let held = {
                    let t = self.read_table();
                    Held {
                        id_seen: t.instruction_id_seen(&i.instruction_id),
                        fresh: t.instruction_is_new(&i),
                        replayed: false,
                    }
                };
                let what = format!("instruction {} for {}", i.instruction_id, i.waybill);
                let j = judge(Kind::Instruction, held, dup, &what);
                match j.keep {
                    Keep::Message => self
                        .journal
                        .store_instruction(&i)
                        .map_err(|e| format!("cannot store an instruction: {e}"))?,
                    Keep::Id => self
                        .journal
                        .remember_instruction_id(&i)
                        .map_err(|e| format!("cannot store an instruction id: {e}"))?,
                    Keep::Nothing => {}
                }
                if j.apply {
                    seg.keys.extend(keys);
                    seg.ops.push(TableOp::Instruction(i));
                }
                known = j.known;
                j.refusal.map_or(Ok(()), Err)
            }
            Ok((Parsed::Notice(n), _)) => {
                // Rare, and a notice may change every parcel: applied on its own.
                self.commit(seg);
                let held = {
                    let t = self.read_table();
                    Held {
                        id_seen: t.notice_id_seen(&n.notice_id),
                        fresh: t.notice_is_new(&n),
                        replayed: false,
                    }
                };
                let what = format!("enterprise notice {} for {}", n.notice_id, n.enterprise);
                let j = judge(Kind::Notice, held, dup, &what);
                match j.keep {
                    Keep::Message => self
                        .journal
                        .store_notice(&n)
                        .map_err(|e| format!("cannot store an enterprise notice: {e}"))?,
                    Keep::Id => self
                        .journal
                        .remember_notice_id(&n)
                        .map_err(|e| format!("cannot store a notice id: {e}"))?,
                    Keep::Nothing => {}
                }
                if j.apply && self.write_table().apply_notice(&n) == Applied::Changed {
                    info!(enterprise = %n.enterprise, action = ?n.action, notice = %n.notice_id, "enterprise notice applied");
                    let _ = self.changes.send(ClearanceChange::All);
                }
                known = j.known;
                j.refusal.map_or(Ok(()), Err)
            }
            Ok((Parsed::Rules(u), _)) => {
                self.commit(seg);
                match self.policy.apply_update(&u) {
                    Ok(UpdateOutcome::Applied(version)) => {
                        // The policy has told the lines to decide their parcels again.
                        self.event(
                            client,
                            pending,
                            EventKind::RuleSetApplied,
                            format!("rule set {version} from update {} in force", u.update_id),
                            Some(topic_name.to_string()),
                        );
                        Ok(())
                    }
                    Ok(outcome) => {
                        known = outcome == UpdateOutcome::Seen;
                        judge::replay_refusal(
                            known,
                            false,
                            dup,
                            &format!("rule set update {}", u.update_id),
                            "the platform's rule set last applied",
                        )
                        .map_or(Ok(()), Err)
                    }
                    Err(UpdateError::Invalid(reason)) => Err((
                        EventKind::RejectedMessage,
                        format!("rule set update {} refused: {reason}", u.update_id),
                    )),
                    // Not acknowledged: the broker delivers it again.
                    Err(UpdateError::Store(e)) => {
                        return Err(format!("cannot store a rule set update: {e}"))
                    }
                }
            }
        };
        let redelivery = known || (dup && verdict.is_err());
        Metrics::add(
            if redelivery {
                &self.metrics.platform_redeliveries
            } else {
                &self.metrics.platform_messages
            },
            1,
        );
        if let Err((kind, reason)) = verdict {
            self.report_refusal(client, pending, topic_name, kind, reason);
        }
        Ok(())
    }

    /// Applies the queued table changes, [`ingest::APPLY_CHUNK`] per write lock, and tells
    /// the lines which waybills changed.
    fn commit(&self, seg: &mut Segment) {
        seg.keys.clear();
        if seg.ops.is_empty() {
            return;
        }
        let mut changed = Vec::with_capacity(seg.ops.len());
        let msgs: Vec<Message<'_>> = seg
            .ops
            .iter()
            .map(|op| match op {
                TableOp::Declaration(d) => Message::Declaration(d),
                TableOp::Instruction(i) => Message::Instruction(i),
            })
            .collect();
        // Each chunk's share of a shard under one hold of that shard's lock: a lookup sees
        // all a chunk says of a waybill, or none of it.
        for chunk in msgs.chunks(ingest::APPLY_CHUNK) {
            let applied = self.write_table().apply_many(chunk);
            for (m, a) in chunk.iter().zip(applied) {
                match m {
                    Message::Declaration(d) => changed.push(d.waybill.clone()),
                    Message::Instruction(i) if a == Applied::Changed => {
                        changed.push(i.waybill.clone())
                    }
                    _ => {}
                }
            }
        }
        drop(msgs);
        seg.ops.clear();
        for w in changed {
            let _ = self.changes.send(ClearanceChange::Waybill(w));
        }
    }

    /// Reports a refused platform message: counted, logged, journaled as an alert and sent
    /// as an event.
    fn report_refusal(
        &self,
        client: &AsyncClient,
        pending: &Mutex<Pending>,
        topic_name: &str,
        kind: EventKind,
        reason: String,
    ) {
        Metrics::add(&self.metrics.platform_rejected, 1);
        if kind == EventKind::WrongTarget {
            Metrics::add(&self.metrics.wrong_target_messages, 1);
        }
        let alert = if matches!(kind, EventKind::ForgedMessage | EventKind::WrongTarget) {
            Metrics::add(&self.metrics.forged_messages, 1);
            warn!(topic = %topic_name, %reason, "platform message refused: not from the platform");
            AlertKind::ForgedMessage
        } else {
            warn!(topic = %topic_name, %reason, "platform message rejected");
            AlertKind::RejectedMessage
        };
        // Journaled too: the event below is best effort. A closed channel means the gateway
        // is stopping; the log has it.
        let _ = self.refusals.send(refusals::Refusal {
            alert,
            detail: format!("{topic_name}: {reason}"),
        });
        self.event(client, pending, kind, reason, Some(topic_name.to_string()));
    }

    /// Publishes an event to `P/events` if the request queue has room; events are notices,
    /// the log keeps them too.
    fn event(
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
    fn publish_anomaly(&self, client: &AsyncClient, pending: &Mutex<Pending>, a: &Anomaly) {
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

    /// Publishes the request queue holds room for besides acknowledges: the records in
    /// flight and [`ingest::EVENT_ROOM`] events and anomalies.
    fn publish_room(&self) -> usize {
        self.config.inflight as usize + ingest::EVENT_ROOM
    }

    /// The clearance table: every method takes `&self` (it locks per shard inside).
    fn read_table(&self) -> &ClearanceTable {
        &self.table
    }

    fn write_table(&self) -> &ClearanceTable {
        &self.table
    }
}
/// Table changes of a run of platform messages that touch no waybill or id twice, applied
/// under one write lock (see [`Uplink::commit`]). A message that touches a key already in the
/// run applies the run first, so every check sees what came before it.
#[derive(Default)]
struct Segment {
    ops: Vec<TableOp>,
    keys: std::collections::HashSet<String>,
}

/// One table change of a [`Segment`].
enum TableOp {
    Declaration(Declaration),
    Instruction(Instruction),
}

/// Parks `seq`: out of the outbox, kept in the journal, reported.
fn park(journal: &Journal, metrics: &Metrics, alarms: &Alarms, seq: u64, reason: &str) {
    match journal.park(seq, reason) {
        Ok(()) => {
            Metrics::sub(&metrics.backlog, 1);
            Metrics::add(&metrics.records_parked, 1);
            alarms.raise(format!(
                "record {seq} parked, not forwarded: {reason}; it stays in the journal (bondline journal replay)"
            ));
        }
        Err(e) => warn!(seq, error = %e, "cannot park a record"),
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
    /// Largest record payload the broker is configured to take.
    max_payload: usize,
    /// Records per second at most; 0 means only the window limits.
    drain_rate: u32,
    alarms: Alarms,
    events_topic: String,
    metrics: Arc<Metrics>,
}

impl Feeder {
    /// Queues one publish and its FIFO entry under one lock, so packet ids map back exactly.
    fn publish(&self, topic: &str, entry: Option<u64>, payload: Vec<u8>) -> bool {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.queued.push_back(entry);
        if let Err(e) = self
            .client
            .try_publish(topic, QoS::AtLeastOnce, false, payload)
        {
            p.queued.pop_back();
            warn!(error = %e, "cannot queue a publish; session will restart");
            self.failed.cancel();
            return false;
        }
        true
    }

    /// Publishes a few queued alarms (the rest wait for the next round, so a burst cannot
    /// fill the request queue); returns false if the session must end.
    fn send_alarms(&self) -> bool {
        let mut events = self.alarms.drain();
        if events.len() > ALARMS_PER_ROUND {
            self.alarms.requeue(events.split_off(ALARMS_PER_ROUND));
        }
        for (i, e) in events.iter().enumerate() {
            let bytes = serde_json::to_vec(e).expect("events always serialize");
            if !self.publish(&self.events_topic, None, bytes) {
                self.alarms.requeue(events[i..].to_vec());
                return false;
            }
        }
        true
    }
}

/// Spaces publishes `1/rate` apart on average; after an idle spell at most [`PACE_SLACK`]
/// of idle time is made up in a burst.
struct Pace {
    interval: Option<Duration>,
    next: tokio::time::Instant,
}

impl Pace {
    fn new(rate: u32) -> Pace {
        Pace {
            interval: (rate > 0).then(|| Duration::from_secs_f64(1.0 / rate as f64)),
            next: tokio::time::Instant::now(),
        }
    }

    async fn wait(&mut self) {
        let Some(interval) = self.interval else {
            return;
        };
        // The timer ticks in milliseconds, so intervals shorter than that are kept on
        // average: a schedule up to PACE_SLACK behind is caught up without sleeping.
        let now = tokio::time::Instant::now();
        let floor = now.checked_sub(PACE_SLACK).unwrap_or(now);
        if self.next < floor {
            self.next = floor;
        }
        if self.next > now {
            tokio::time::sleep_until(self.next).await;
        }
        self.next += interval;
    }
}

/// How far the drain schedule may fall behind before idle time stops counting.
const PACE_SLACK: Duration = Duration::from_millis(10);

/// Sends the outbox in sequence order, holding a window permit per unacknowledged record.
async fn feed(mut f: Feeder) {
    let mut next = 0u64;
    let mut pace = Pace::new(f.drain_rate);
    loop {
        if !f.send_alarms() {
            return;
        }
        // Mark the current value seen before reading, so a record accepted after the read
        // wakes the wait below; and never read past it: only flushed records may leave.
        let upto = *f.accepted.borrow_and_update();
        let batch = match f.journal.outbox_from(next, upto, 256) {
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
                _ = f.alarms.raised() => {}
            }
            continue;
        }
        for (seq, bytes) in batch {
            next = seq + 1;
            if bytes.len() > f.max_payload {
                park(
                    &f.journal,
                    &f.metrics,
                    &f.alarms,
                    seq,
                    &format!(
                        "payload of {} bytes is over uplink.max_packet_kib",
                        bytes.len()
                    ),
                );
                continue;
            }
            let permit = tokio::select! {
                _ = f.stop.cancelled() => return,
                p = f.window.acquire() => match p { Ok(p) => p, Err(_) => return },
            };
            permit.forget();
            pace.wait().await;
            if !f.publish(&f.topic, Some(seq), bytes) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pace_keeps_sub_millisecond_rates_on_average() {
        let mut pace = Pace::new(5000);
        let start = tokio::time::Instant::now();
        for _ in 0..1000 {
            pace.wait().await;
        }
        let rate = 1000.0 / start.elapsed().as_secs_f64();
        // 5000/s means 0.2 s for 1000; timer granularity must not cut it to ~1000/s.
        assert!(rate > 3000.0 && rate < 6000.0, "{rate:.0}/s");
    }
}
