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
//! a packet it refuses) is parked too; after one such session the next sends one record at a
//! time until past the suspect, so the culprit is the only record in flight when it is cut
//! again. Parked records stay in the journal, raise an alarm and
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
//!
//! Layout: [`Uplink::run`] ([`reconnect`]) runs one [`session`] after another; a session's
//! publishes are mapped back to records by [`pending`], the outbox is sent by [`feed`],
//! events and anomalies by [`events`], and platform messages go through the pure checks of
//! [`ingest`] and [`judge`] to [`inbound`], which stores, applies and acknowledges them.

mod events;
mod feed;
mod inbound;
pub mod ingest;
pub mod ingest_pace;
pub mod judge;
mod pending;
pub mod probe;
mod reconnect;
pub mod refusals;
mod session;
pub mod session_watch;
mod unreadable;

#[cfg(test)]
mod client_tests;

use std::sync::{Arc, Mutex};

use bondline_devices::contract::Anomaly;
use tokio::sync::{mpsc, watch};

use crate::alarm::Alarms;
use crate::config::Uplink as UplinkConfig;
use crate::floor::ClearanceChange;
use crate::journal::Journal;
use crate::metrics::Metrics;
use crate::policy::Policy;
use crate::rules::ClearanceTable;

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
