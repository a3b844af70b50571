//! One session with the broker: a fresh MQTT client and event loop, subscribed to the
//! platform's topics once connected, with the record feeder ([`super::feed`]) started
//! beside it and the inbound stages ([`super::inbound`]) fed from it, until the connection
//! fails. Each ending is classified ([`EndCause`]) so that [`super::reconnect`] can tell a
//! broker refusing a record from a broker that is down or a message the client cannot read.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bondline_devices::contract::{topic, Anomaly, EventKind};
use rumqttc::{
    AsyncClient, ConnectionError, Event, Incoming, MqttOptions, Outgoing, Publish, QoS, StateError,
};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::feed::{feed, Feeder};
use super::ingest_pace::{self, IngestPace};
use super::pending::{Clearer, Pending, CLEAR_DELAY};
use super::unreadable::{self, unreadable, unreadable_reason};
use super::{ingest, Uplink, LINK, MAX_INBOUND_PAYLOAD, PACKET_OVERHEAD};
use crate::metrics::{mono_ms, unix_ms, Metrics};
use crate::tls;

/// How a session ended.
pub(super) struct SessionEnd {
    pub(super) reason: String,
    /// The oldest record sent in this session and not acknowledged, if the session ended
    /// in a way that points at it: the peer closed the connection within
    /// [`POISON_WINDOW`] after it was sent, with no PUBACK for anything since.
    pub(super) poison_suspect: Option<u64>,
    /// How long the session was up.
    pub(super) lasted: Duration,
    /// Set when the session ended on a packet the client could not read.
    pub(super) unreadable: bool,
    /// The size of that packet when it was over the session's read limit.
    pub(super) oversized: Option<usize>,
    /// The broker could not be reached at all.
    pub(super) unreachable: bool,
    /// The broker closed a session that was up (not a timeout, not the gateway's doing).
    pub(super) cut_by_broker: bool,
}

/// Why a session ended, as far as the gateway can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EndCause {
    /// The connection failed or the broker closed it.
    Peer,
    /// Keep-alive or network timeouts.
    Timeout,
    /// The broker's address refused the TCP connection or could not be reached: the broker
    /// is down (see [`probe`](super::probe)).
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

/// Requests the client writes to the connection before one flush at most: while a backlog
/// drains, the records the feeder queued since the last write (bounded by the window anyway).
const REQUEST_BATCH: usize = 64;

/// A record unacknowledged this long on a live connection means the broker has stopped
/// acknowledging: the session is ended and an alarm raised.
const ACK_TIMEOUT: Duration = Duration::from_secs(60);

/// A session that ends this soon after a record was sent counts against that record.
const POISON_WINDOW: Duration = Duration::from_secs(5);

impl Uplink {
    /// The connection's options, with TLS material and password read from their files now.
    pub(super) fn options(&self, read_limit: usize) -> Result<MqttOptions, tls::TlsError> {
        let c = &self.config;
        let mut o = MqttOptions::new(&c.client_id, &c.host, c.port);
        o.set_keep_alive(c.keep_alive)
            .set_clean_session(false)
            .set_manual_acks(true)
            // Room for events beside the records' window, so an event never holds up the
            // acknowledges queued behind it (the client stops taking requests when full).
            .set_inflight(c.inflight.saturating_add(ingest::EVENT_ROOM as u16))
            .set_max_packet_size(read_limit, c.max_packet_bytes)
            .set_request_channel_capacity(self.request_queue())
            // Records queued by the feeder go out together (up to this many, or about 8 KiB,
            // per write), not one system call each.
            .set_max_request_batch(REQUEST_BATCH);
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
    pub(super) fn request_queue(&self) -> usize {
        ingest::ACK_WINDOW + self.publish_room() + REQUEST_SLACK
    }

    /// Publishes the request queue holds room for besides acknowledges: the records in
    /// flight and [`ingest::EVENT_ROOM`] events and anomalies.
    pub(super) fn publish_room(&self) -> usize {
        self.config.inflight as usize + ingest::EVENT_ROOM
    }

    /// One connection, until it fails.
    /// `careful`: the last session ended right after this record was sent (a poison
    /// suspect). This one then sends one record at a time until that record is acknowledged,
    /// so that if the broker cuts it again, the record it cut on is the only one in flight
    /// (with a full window the acknowledge of the record before it can be lost in the cut,
    /// and that record would be taken for the culprit).
    pub(super) async fn session(
        &self,
        anomalies: &mut mpsc::Receiver<Anomaly>,
        read_limit: usize,
        careful: Option<u64>,
    ) -> SessionEnd {
        let started = Instant::now();
        let pending = Arc::new(Mutex::new(Pending::default()));
        let clearer = Clearer::start(self.journal.clone(), self.metrics.clone());
        let (reason, cause) = self
            .connection(&pending, &clearer, anomalies, read_limit, careful)
            .await;
        // PUBACKs received before the end still clear their records.
        clearer.clear(&pending);
        clearer.finish().await;
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
        clearer: &Clearer,
        anomalies: &mut mpsc::Receiver<Anomaly>,
        read_limit: usize,
        mut careful: Option<u64>,
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
        let full_window = self.config.inflight as usize;
        let window = Arc::new(Semaphore::new(if careful.is_some() {
            1
        } else {
            full_window
        }));
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
            // Held to a pace while the lines sort (see `ingest_pace`).
            let last_scan = || self.metrics.last_scan_ms.load(Ordering::Relaxed);
            let mut pace = IngestPace::new(self.config.platform_rate_while_sorting, Instant::now());
            while let Some(first) = from_poller.recv().await {
                // The gauge follows in the watchdog's tick, every second.
                let paced = pace.paced(mono_ms(), last_scan());
                let now = Instant::now();
                let ready = pace.ready_at(now, paced);
                if ready > now {
                    tokio::time::sleep_until(ready.into()).await;
                }
                let mut batch = vec![first];
                let most = pace.batch_limit(paced, ingest::INGEST_BATCH);
                while batch.len() < most {
                    match from_poller.try_recv() {
                        Ok(p) => batch.push(p),
                        Err(_) => break,
                    }
                }
                pace.took(Instant::now(), batch.len(), paced);
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
            // The select below runs twice per record while a backlog drains (the publish
            // written, its PUBACK): its futures that outlive one round are made once, so a
            // round does not register a timer and two waiters and take them back again.
            let clear_timer = tokio::time::sleep(Duration::ZERO);
            tokio::pin!(clear_timer);
            let failed = feeder_failed.cancelled();
            tokio::pin!(failed);
            let reconnect = self.reconnect.notified();
            tokio::pin!(reconnect);
            loop {
                let event = tokio::select! {
                    _ = &mut clear_timer, if clear_at.is_some() => {
                        clear_at = None;
                        clearer.clear(pending);
                        continue;
                    }
                    _ = watchdog.tick() => {
                        let now = Instant::now();
                        let ingested = Metrics::get(&self.metrics.platform_ingested);
                        self.metrics.platform_in_flight.store(in_flight, Ordering::Relaxed);
                        self.metrics.platform_ingest_rate.store(rate.tick(now, ingested).round() as u64, Ordering::Relaxed);
                        self.metrics.platform_ingest_paced.store(
                            ingest_pace::applies(
                                self.config.platform_rate_while_sorting,
                                mono_ms(),
                                self.metrics.last_scan_ms.load(Ordering::Relaxed),
                            ),
                            Ordering::Relaxed,
                        );
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
                    // Dropped on every other branch: the patched client's poll() is
                    // cancel-safe for the packets it writes (client_tests).
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
                    _ = &mut failed => return ("record queue to the broker failed".into(), EndCause::Local),
                    _ = &mut reconnect => {
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
                        pending
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .written(pkid);
                    }
                    Event::Incoming(Incoming::PubAck(ack)) => {
                        // One lock for the match and the queued clear.
                        let full = {
                            let mut p = pending.lock().unwrap_or_else(|e| e.into_inner());
                            match p.acknowledged(ack.pkid) {
                                Some(Some(seq)) => Some((seq, p.queue_clear(seq))),
                                _ => None,
                            }
                        };
                        if let Some((seq, full)) = full {
                            window.add_permits(1);
                            if careful.is_some_and(|suspect| seq >= suspect) {
                                careful = None;
                                window.add_permits(full_window.saturating_sub(1));
                            }
                            if full {
                                clear_at = None;
                                clearer.clear(pending);
                            } else if clear_at.is_none() {
                                let at = Instant::now() + CLEAR_DELAY;
                                clear_at = Some(at);
                                clear_timer.as_mut().reset(at.into());
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
        self.metrics
            .platform_ingest_paced
            .store(false, Ordering::Relaxed);
        end
    }
}
