//! `platform-sim`: the customs clearance platform, as the edge controller sees it over MQTT.
//!
//! It publishes what the platform sends the floor (declarations and customs instructions for
//! the declared parcels of a [`Plan`], the suspension of [`SUSPENDED_ENTERPRISE`] when the plan
//! has its parcels, and on request a customs rule set) and collects what the floor sends back
//! (parcel records, anomalies and events). [`PlatformSim::report`] compares the records with
//! the plan: which lane each parcel reached, which readable parcels never produced a record,
//! which rules decided and fired, whether every parcel a rule flagged was reported as an
//! anomaly, and, the one thing that must never happen, which parcels reached the release lane
//! against the plan. Every payload on the records topic also goes, as received, through the
//! chain check of its gateway ([`crate::chain`]); [`PlatformSim::chains`] and the report give
//! its results.
//!
//! The MQTT event loop runs in its own task and keeps polling after errors, which is how
//! rumqttc reconnects; each new connection subscribes again because the session is clean.
//! Received messages are kept in memory: a simulator runs for minutes, not months.
//!
//! Layout: the [`PlatformSim`] handle and its accessors here; `publish` (what the platform
//! sends), `session` (the MQTT event-loop task), `report` ([`PlatformReport`] against a
//! plan), `reassembly` (images and snapshots from their chunks).
//!
//! [`SUSPENDED_ENTERPRISE`]: crate::plan::SUSPENDED_ENTERPRISE

mod publish;
mod reassembly;
mod report;
mod session;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::bail;
use bondline_devices::contract::{Anomaly, EdgeEvent, ParcelRecord, Record};
use bondline_devices::signing::{SigningKey, Target};
use rumqttc::{AsyncClient, MqttOptions};
use tokio::task::JoinHandle;

pub use reassembly::{reassemble, reassemble_snapshots, ReceivedImage, ReceivedSnapshot};
pub use report::{Expect, PlatformReport};

use crate::chain::{ChainStatus, Chains};
use crate::plan::Plan;
use session::drive;

/// How long `connect` waits for the broker to accept the subscriptions.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

/// A connected platform simulator. Dropping it stops its MQTT task.
#[derive(Debug)]
pub struct PlatformSim {
    client: AsyncClient,
    prefix: String,
    shared: Arc<Mutex<Shared>>,
    task: JoinHandle<()>,
    /// Whether the suspension of [`SUSPENDED_ENTERPRISE`] has been published.
    ///
    /// [`SUSPENDED_ENTERPRISE`]: crate::plan::SUSPENDED_ENTERPRISE
    suspension_sent: AtomicBool,
    /// The platform key that signs every message, as a real platform does; `None` publishes
    /// unsigned messages (for a gateway that allows them, or to play an intruder).
    signer: Option<(String, SigningKey, Target)>,
}

/// What the event-loop task has seen, read by the public accessors.
#[derive(Debug, Default)]
struct Shared {
    /// Every record received (parcel decisions, dispositions, alerts), in arrival order.
    all: Vec<Record>,
    /// The chain check of every payload received on the records topic, per gateway.
    chains: Chains,
    events: Vec<EdgeEvent>,
    anomalies: Vec<Anomaly>,
    bad_payloads: usize,
    /// True once the broker granted both subscriptions on the current connection.
    subscribed: bool,
    /// QoS 1 publishes handed to the client, and PUBACKs received for them.
    published: u64,
    acked: u64,
}

impl PlatformSim {
    /// Connects to the broker at `broker`, subscribes to `{topic_prefix}/records` and
    /// `{topic_prefix}/events`, and returns once the broker has granted both, so nothing the
    /// daemon sends afterwards is missed. Fails if that takes more than 10 s.
    pub async fn connect(
        broker: SocketAddr,
        topic_prefix: &str,
        client_id: &str,
    ) -> anyhow::Result<PlatformSim> {
        Self::connect_with(broker, topic_prefix, client_id, true).await
    }

    /// Like [`PlatformSim::connect`], but with a persistent session (`clean_session = false`):
    /// a broker that keeps sessions (Mosquitto with persistence) queues records for the
    /// platform while it is away, as a real clearance platform would be set up.
    pub async fn connect_persistent(
        broker: SocketAddr,
        topic_prefix: &str,
        client_id: &str,
    ) -> anyhow::Result<PlatformSim> {
        Self::connect_with(broker, topic_prefix, client_id, false).await
    }

    async fn connect_with(
        broker: SocketAddr,
        topic_prefix: &str,
        client_id: &str,
        clean_session: bool,
    ) -> anyhow::Result<PlatformSim> {
        let prefix = topic_prefix.trim_end_matches('/').to_string();
        if prefix.is_empty() || prefix.contains(['+', '#']) {
            bail!("topic prefix `{topic_prefix}` must be non-empty and hold no MQTT wildcard");
        }
        let mut opts = MqttOptions::new(client_id, broker.ip().to_string(), broker.port());
        opts.set_clean_session(clean_session)
            .set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, eventloop) = AsyncClient::new(opts, 1024);
        let shared = Arc::new(Mutex::new(Shared::default()));
        let task = tokio::spawn(drive(
            eventloop,
            client.clone(),
            prefix.clone(),
            Arc::clone(&shared),
        ));
        let sim = PlatformSim {
            client,
            prefix,
            shared,
            task,
            suspension_sent: AtomicBool::new(false),
            signer: None,
        };
        let deadline = tokio::time::Instant::now() + SUBSCRIBE_TIMEOUT;
        while !sim.lock().subscribed {
            if tokio::time::Instant::now() >= deadline {
                // `sim` drops here and its task with it.
                bail!(
                    "broker {broker} did not accept the connection and subscriptions within {}s",
                    SUBSCRIBE_TIMEOUT.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tracing::info!(%broker, prefix = %sim.prefix, "platform-sim connected and subscribed");
        Ok(sim)
    }

    pub fn topic_prefix(&self) -> &str {
        &self.prefix
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        // Only plain data behind the lock; a panic elsewhere leaves it usable.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }
    /// Every parcel record received, in arrival order, duplicates included.
    /// Parcel decision records received, in arrival order (duplicates kept).
    pub fn records(&self) -> Vec<ParcelRecord> {
        self.lock()
            .all
            .iter()
            .filter_map(|r| r.as_parcel().cloned())
            .collect()
    }

    /// Every record received, of every kind, in arrival order (duplicates kept).
    pub fn all_records(&self) -> Vec<Record> {
        self.lock().all.clone()
    }

    /// The X-ray images received, each with its original put back together from its chunks
    /// (see [`reassemble`]).
    pub fn images(&self) -> Vec<ReceivedImage> {
        reassemble(&self.lock().all)
    }

    /// The camera snapshot records received, each with its JPEG put back together (see
    /// [`reassemble_snapshots`]).
    pub fn snapshots(&self) -> Vec<ReceivedSnapshot> {
        reassemble_snapshots(&self.lock().all)
    }

    /// Whether the current connection's subscriptions are in place (after a broker restart,
    /// the platform subscribes again; records published before that reach nobody).
    pub fn is_subscribed(&self) -> bool {
        self.lock().subscribed
    }

    /// Every edge event received, in arrival order.
    pub fn events(&self) -> Vec<EdgeEvent> {
        self.lock().events.clone()
    }

    /// Every anomaly received, in arrival order (duplicates kept).
    pub fn anomalies(&self) -> Vec<Anomaly> {
        self.lock().anomalies.clone()
    }

    /// The chain check of the records received so far, per gateway id: records verified,
    /// duplicates, and every problem found (gaps, broken links, reused or reordered `seq`).
    pub fn chains(&self) -> BTreeMap<String, ChainStatus> {
        self.lock().chains.status()
    }

    /// Messages on the records or events topic that did not parse as their type (or carried
    /// another schema). A correct daemon sends none.
    pub fn bad_payloads(&self) -> usize {
        self.lock().bad_payloads
    }

    /// Polls until at least `n` records (duplicates included) have arrived; false on timeout.
    pub async fn wait_for_records(&self, n: usize, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self
                .lock()
                .all
                .iter()
                .filter(|r| r.as_parcel().is_some())
                .count()
                >= n
            {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Compares the records received so far with parcels `range` of `plan`, for a line
    /// whose scanner does not weigh and whose rule set does not sample.
    pub fn report(&self, plan: &Plan, range: Range<u64>) -> PlatformReport {
        self.report_with(plan, range, &Expect::default())
    }

    /// Compares the records and anomalies received so far with parcels `range` of `plan`,
    /// predicting lanes with `expect`.
    pub fn report_with(&self, plan: &Plan, range: Range<u64>, expect: &Expect) -> PlatformReport {
        let s = self.lock();
        let parcels: Vec<ParcelRecord> = s
            .all
            .iter()
            .filter_map(|r| r.as_parcel().cloned())
            .collect();
        let mut report = PlatformReport::build(
            plan,
            range,
            &parcels,
            &s.anomalies,
            s.events.len(),
            s.bad_payloads,
            expect,
        );
        report.chains = s.chains.status();
        report
    }
}

impl Drop for PlatformSim {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tests and the demo hold these futures across spawns; this only has to compile.
    #[allow(dead_code)]
    fn futures_are_send(sim: &PlatformSim, plan: &Plan) {
        fn send<T: Send>(_: T) {}
        send(PlatformSim::connect(
            ([127, 0, 0, 1], 1883).into(),
            "p",
            "c",
        ));
        send(sim.publish_plan(plan, 0..1));
        send(sim.publish_raw("x", Vec::new()));
        send(sim.wait_for_records(1, Duration::ZERO));
    }
}
