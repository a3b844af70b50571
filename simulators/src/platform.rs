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

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _};
use bondline_devices::contract::{
    topic, unix_ms, Anomaly, Declaration, DeclaredItem, EdgeEvent, EnterpriseAction,
    EnterpriseNotice, Instruction, LaneRole, ParcelRecord, ReadOutcome, Record, RuleSetUpdate,
    SCHEMA,
};
use bondline_devices::signing::{Signed, SigningKey, Target};
use rand::Rng as _;
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS, SubscribeFilter, SubscribeReasonCode,
};
use tokio::task::JoinHandle;

use crate::audit::RuleBook;
use crate::chain::{ChainStatus, Chains};
use crate::plan::{Plan, PlanKind, PlannedParcel, SUSPENDED_ENTERPRISE};

/// How long `connect` waits for the broker to accept the subscriptions.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a publish call waits for the broker's PUBACKs.
const PUBACK_TIMEOUT: Duration = Duration::from_secs(30);
/// A connected platform simulator. Dropping it stops its MQTT task.
#[derive(Debug)]
pub struct PlatformSim {
    client: AsyncClient,
    prefix: String,
    shared: Arc<Mutex<Shared>>,
    task: JoinHandle<()>,
    /// Whether the suspension of [`SUSPENDED_ENTERPRISE`] has been published.
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

    /// Publishes a declaration for every declared parcel in `range`, and an instruction for
    /// those customs decided on, each waybill's declaration before its instruction (QoS 1).
    /// The first call for a plan with suspended-enterprise parcels publishes the suspension
    /// of [`SUSPENDED_ENTERPRISE`] before anything else. Returns once the broker has
    /// acknowledged every publish.
    pub async fn publish_plan(&self, plan: &Plan, range: Range<u64>) -> anyhow::Result<()> {
        if plan.mix().suspended > 0 && !self.suspension_sent.load(Ordering::Relaxed) {
            self.publish_suspension().await?;
            self.suspension_sent.store(true, Ordering::Relaxed);
        }
        let mut declarations = 0usize;
        let mut instructions = 0usize;
        for p in plan.parcels(range) {
            if !p.kind.is_declared() {
                continue;
            }
            let declaration = self.signed(declaration_for(plan, &p));
            self.publish_json(topic::DECLARATIONS, &declaration).await?;
            declarations += 1;
            if let Some(action) = p.kind.instruction() {
                let reason = match p.kind {
                    PlanKind::Inspect => "selected for inspection",
                    PlanKind::Hold => "held: documents disagree",
                    _ => "cleared by platform",
                };
                let instruction = Instruction {
                    schema: SCHEMA,
                    instruction_id: format!("I-{}", p.waybill),
                    waybill: p.waybill.clone(),
                    action,
                    reason: reason.to_string(),
                    issued_at_ms: Some(unix_ms(SystemTime::now())),
                    signature: None,
                };
                let instruction = self.signed(instruction);
                self.publish_json(topic::INSTRUCTIONS, &instruction).await?;
                instructions += 1;
            }
        }
        self.wait_acked().await?;
        tracing::info!(declarations, instructions, "plan published");
        Ok(())
    }

    /// Suspends [`SUSPENDED_ENTERPRISE`] (QoS 1, a fixed notice id, so a repeat is a
    /// redelivery) and waits for the broker's acknowledge.
    pub async fn publish_suspension(&self) -> anyhow::Result<()> {
        let notice = EnterpriseNotice {
            schema: SCHEMA,
            notice_id: format!("N-suspend-{SUSPENDED_ENTERPRISE}"),
            enterprise: SUSPENDED_ENTERPRISE.to_string(),
            action: EnterpriseAction::Suspend,
            reason: "pilot qualification withdrawn".to_string(),
            issued_at_ms: Some(unix_ms(SystemTime::now())),
            signature: None,
        };
        let notice = self.signed(notice);
        self.publish_json(topic::ENTERPRISES, &notice).await?;
        self.wait_acked().await?;
        tracing::info!(enterprise = SUSPENDED_ENTERPRISE, "enterprise suspended");
        Ok(())
    }

    /// Pushes a customs rule set (the TOML text of a rule file) as update `update_id` (QoS 1)
    /// and waits for the broker's acknowledge. The daemon answers on its events topic: a
    /// `rule_set_applied` event, or a rejection with the reason.
    pub async fn publish_rules(&self, update_id: &str, rules_toml: &str) -> anyhow::Result<()> {
        let update = RuleSetUpdate {
            schema: SCHEMA,
            update_id: update_id.to_string(),
            rules_toml: rules_toml.to_string(),
            issued_at_ms: Some(unix_ms(SystemTime::now())),
            signature: None,
        };
        let update = self.signed(update);
        self.publish_json(topic::RULES, &update).await?;
        self.wait_acked().await
    }

    /// Publishes one customs instruction (QoS 1) at once, without waiting for the broker's
    /// acknowledge, so a caller timing it (a late X-ray mark) is not held up by the broker.
    pub async fn publish_instruction(&self, instruction: &Instruction) -> anyhow::Result<()> {
        let instruction = self.signed(instruction.clone());
        self.publish_json(topic::INSTRUCTIONS, &instruction).await
    }

    /// Signs every message published from now on with `key`, under `key_id`, for the
    /// gateways `target` names (signature scheme 2).
    pub fn sign_with(&mut self, key_id: &str, key: SigningKey, target: Target) {
        self.signer = Some((key_id.to_string(), key, target));
    }

    /// `msg`, signed now if this platform signs.
    pub fn signed<T: Signed>(&self, msg: T) -> T {
        self.signed_at(msg, unix_ms(SystemTime::now()))
    }

    /// `msg`, signed as of `signed_at_ms` if this platform signs (tests of ordering by the
    /// signature time publish messages signed earlier).
    pub fn signed_at<T: Signed>(&self, mut msg: T, signed_at_ms: u64) -> T {
        if let Some((id, key, target)) = &self.signer {
            bondline_devices::signing::sign(&mut msg, id, key, signed_at_ms, target);
        }
        msg
    }

    /// Publishes a customs instruction as is (signed or not by the caller), QoS 1, and waits
    /// for the broker's acknowledge.
    pub async fn publish_instruction_as_is(&self, instruction: &Instruction) -> anyhow::Result<()> {
        self.publish_json(topic::INSTRUCTIONS, instruction).await?;
        self.wait_acked().await
    }

    /// Publishes `payload` as is to `{prefix}/{topic_suffix}` (QoS 1), for tests that feed the
    /// daemon malformed messages. Returns once the broker has acknowledged it.
    pub async fn publish_raw(&self, topic_suffix: &str, payload: Vec<u8>) -> anyhow::Result<()> {
        self.publish(topic_suffix, payload).await?;
        self.wait_acked().await
    }

    async fn publish_json<T: serde::Serialize>(&self, suffix: &str, msg: &T) -> anyhow::Result<()> {
        let payload = serde_json::to_vec(msg).context("encoding a platform message")?;
        self.publish(suffix, payload).await
    }

    async fn publish(&self, suffix: &str, payload: Vec<u8>) -> anyhow::Result<()> {
        let topic = format!("{}/{suffix}", self.prefix);
        self.lock().published += 1;
        if let Err(err) = self
            .client
            .publish(topic.as_str(), QoS::AtLeastOnce, false, payload)
            .await
        {
            self.lock().published -= 1;
            return Err(err).with_context(|| format!("publishing to {topic}"));
        }
        Ok(())
    }

    /// Waits until the broker has acknowledged every publish handed to the client so far.
    /// With a clean session, publishes in flight when the connection drops are lost; this is
    /// where that surfaces, as an error after 30 s.
    async fn wait_acked(&self) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + PUBACK_TIMEOUT;
        loop {
            let (published, acked) = {
                let s = self.lock();
                (s.published, s.acked)
            };
            if acked >= published {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "broker acknowledged {acked} of {published} publishes within {}s",
                    PUBACK_TIMEOUT.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
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

/// The declaration the e-commerce side files for parcel `p`, from the plan's facts
/// ([`Plan::facts`]): the plan's kind alone decides which customs rule, if any, stops it.
fn declaration_for(plan: &Plan, p: &PlannedParcel) -> Declaration {
    let facts = plan.facts(p);
    Declaration {
        schema: SCHEMA,
        waybill: p.waybill.clone(),
        enterprise: facts.enterprise,
        consumer: Some(facts.consumer),
        identity_verified: facts.identity_verified,
        value_minor: Some(facts.value_minor),
        currency: Some("CNY".to_string()),
        gross_weight_g: Some(facts.declared_weight_g),
        items: vec![DeclaredItem {
            description: facts.goods.to_string(),
            quantity: facts.quantity,
        }],
        order_id: None,
        pieces: None,
        signature: None,
    }
}

/// Drives the MQTT event loop forever: records incoming messages, counts PUBACKs, subscribes
/// on every new connection, and backs off (with jitter) between failed connection attempts.
async fn drive(
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

fn parse_record(payload: &[u8]) -> Option<Record> {
    let r = serde_json::from_slice::<Record>(payload).ok()?;
    (r.schema() == SCHEMA).then_some(r)
}

/// What a report needs to predict each parcel's lane beyond its plan kind.
#[derive(Debug, Clone, Default)]
pub struct Expect {
    /// Whether the line's scanner weighs (a weighing profile), so the weight rule can fire.
    pub weighed: bool,
    /// Whether the line has an X-ray scanner judging parcels as the plan says, so the
    /// `xray_suspect` rule can fire.
    pub xray: bool,
    /// The rule set the daemon runs, if known: its random sampling changes expected lanes,
    /// and its rule kinds tell which fired rules are platform instructions. Without it, a rule
    /// is taken to be of the kind its name says (as in the built-in set).
    pub rules: Option<RuleBook>,
}

impl Expect {
    /// The kind of the rule named `rule`.
    fn kind_of<'a>(&'a self, rule: &'a str) -> &'a str {
        self.rules
            .as_ref()
            .and_then(|b| b.kind_of(rule))
            .unwrap_or(rule)
    }
}

/// The deciding rule the daemon names when nothing decided (kept in step with the rules
/// engine's `AWAITING_RELEASE`).
const AWAITING_RELEASE: &str = "awaiting_release";
/// The deciding rule while a parcel on an X-ray line waits for its verdict (the engine's
/// `AWAITING_XRAY`); the verdict decides it again.
const AWAITING_XRAY: &str = "awaiting_xray";

/// What the platform received, against a plan range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformReport {
    /// Records received, duplicates included.
    pub records: usize,
    pub distinct_msg_ids: usize,
    /// `records - distinct_msg_ids`: redeliveries, harmless under at-least-once.
    pub duplicates: usize,
    /// Parcels per lane role, by their latest decision.
    pub by_role: BTreeMap<LaneRole, usize>,
    /// Parcels that were no-reads.
    pub no_reads: usize,
    /// Waybills of readable parcels in the range without any record, in plan order.
    pub missing: Vec<String>,
    /// Distinct records of plan parcels whose lane differs from the plan's expected lane.
    /// Not necessarily wrong (a divert timeout sends a parcel to exception), but worth a look.
    pub lane_mismatches: usize,
    /// Waybills (or msg_ids of no-reads and unknown waybills) that reached the release lane
    /// though the plan expects another lane (no release instruction, a rule that must stop
    /// it, or the random sample): a fail-closed breach.
    pub released_against_plan: Vec<String>,
    /// Distinct records per deciding rule (the record's `rule`).
    pub by_rule: BTreeMap<String, usize>,
    /// Distinct records per rule that fired, deciding or not.
    pub fired: BTreeMap<String, usize>,
    /// Distinct records per kind of rule that fired (kinds from the rule set when known).
    pub kinds_fired: BTreeMap<String, usize>,
    /// Kinds of the known rule set that fired for no record; empty without a rule set.
    pub kinds_never_fired: Vec<String>,
    /// Distinct anomalies received.
    pub anomalies: usize,
    /// Waybills (or msg_ids) of records that a rule other than a platform instruction kept
    /// off the release lane, with no anomaly for their parcel.
    pub flagged_without_anomaly: Vec<String>,
    pub events: usize,
    pub bad_payloads: usize,
    /// The chain check of every record received (all kinds, not only the plan range), per
    /// gateway id.
    pub chains: BTreeMap<String, ChainStatus>,
}

impl PlatformReport {
    fn build(
        plan: &Plan,
        range: Range<u64>,
        records: &[ParcelRecord],
        anomalies: &[Anomaly],
        events: usize,
        bad_payloads: usize,
        expect: &Expect,
    ) -> PlatformReport {
        let anomaly_ids: HashSet<&str> = anomalies.iter().map(|a| a.anomaly_id.as_str()).collect();
        let anomalous: HashSet<(&str, &str, u32)> = anomalies
            .iter()
            .map(|a| (a.gateway.as_str(), a.line.as_str(), a.parcel))
            .collect();
        let mut by_rule: BTreeMap<String, usize> = BTreeMap::new();
        let mut fired: BTreeMap<String, usize> = BTreeMap::new();
        let mut kinds_fired: BTreeMap<String, usize> = BTreeMap::new();
        let mut flagged_without_anomaly = Vec::new();
        let mut seen_ids = HashSet::new();
        let mut seen_waybills = HashSet::new();
        let mut by_role: BTreeMap<LaneRole, usize> =
            LaneRole::ALL.iter().map(|r| (*r, 0)).collect();
        let mut no_reads = 0;
        let mut lane_mismatches = 0;
        let mut released_against_plan = Vec::new();
        // Each parcel is judged by its latest decision: an earlier revision was superseded
        // before the parcel reached its gate (an X-ray verdict, a late declaration).
        let mut latest: BTreeMap<(&str, &str, u32, Option<&str>), u32> = BTreeMap::new();
        for r in records {
            let key = (
                r.gateway.as_str(),
                r.line.as_str(),
                r.parcel,
                r.waybill.as_deref(),
            );
            let rev = latest.entry(key).or_default();
            *rev = (*rev).max(r.revision);
        }
        for r in records {
            if !seen_ids.insert(r.msg_id.as_str()) {
                continue;
            }
            let key = (
                r.gateway.as_str(),
                r.line.as_str(),
                r.parcel,
                r.waybill.as_deref(),
            );
            if latest.get(&key).is_some_and(|rev| *rev != r.revision) {
                continue;
            }
            *by_role.entry(r.lane_role).or_default() += 1;
            *by_rule.entry(r.rule.clone()).or_default() += 1;
            let mut kinds = BTreeSet::new();
            for f in r.rules_fired.iter().filter(|f| f.rule != AWAITING_XRAY) {
                *fired.entry(f.rule.clone()).or_default() += 1;
                kinds.insert(expect.kind_of(&f.rule));
            }
            for k in kinds {
                *kinds_fired.entry(k.to_string()).or_default() += 1;
            }
            let name = || r.waybill.clone().unwrap_or_else(|| r.msg_id.clone());
            // The daemon's anomaly condition: a rule other than the platform's instruction
            // (and other than "nothing decided yet") kept the parcel off the release lane.
            let flagged = r.lane_role != LaneRole::Release
                && r.rules_fired.first().is_some_and(|f| {
                    f.rule != AWAITING_RELEASE
                        && f.rule != AWAITING_XRAY
                        && expect.kind_of(&f.rule) != "instruction"
                });
            if flagged && !anomalous.contains(&(r.gateway.as_str(), r.line.as_str(), r.parcel)) {
                flagged_without_anomaly.push(name());
            }
            if r.read == ReadOutcome::NoRead {
                no_reads += 1;
            }
            let planned = r
                .waybill
                .as_deref()
                .and_then(|w| plan.index_of(w))
                .map(|i| plan.parcel(i));
            if let Some(w) = &r.waybill {
                seen_waybills.insert(w.as_str());
            }
            let expected = planned.as_ref().and_then(|p| {
                plan.expected_role_with(p, expect.weighed, expect.xray, expect.rules.as_ref())
            });
            if expected.is_some_and(|e| e != r.lane_role) {
                lane_mismatches += 1;
            }
            if r.lane_role == LaneRole::Release && expected != Some(LaneRole::Release) {
                released_against_plan.push(name());
            }
        }
        let kinds_never_fired = expect
            .rules
            .iter()
            .flat_map(|b| b.kinds.values())
            .filter(|k| !kinds_fired.contains_key(k.as_str()))
            // Rules the line cannot feed are not expected to fire.
            .filter(|k| expect.xray || k.as_str() != "xray_suspect")
            .filter(|k| expect.weighed || k.as_str() != "weight_mismatch")
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let missing = plan
            .parcels(range)
            .filter(|p| p.kind.is_readable() && !seen_waybills.contains(p.waybill.as_str()))
            .map(|p| p.waybill)
            .collect();
        PlatformReport {
            records: records.len(),
            distinct_msg_ids: seen_ids.len(),
            duplicates: records.len() - seen_ids.len(),
            by_role,
            no_reads,
            missing,
            lane_mismatches,
            released_against_plan,
            by_rule,
            fired,
            kinds_fired,
            kinds_never_fired,
            anomalies: anomaly_ids.len(),
            flagged_without_anomaly,
            events,
            bad_payloads,
            chains: BTreeMap::new(),
        }
    }
}

impl fmt::Display for PlatformReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        /// Long lists are cut so a periodic report stays readable.
        fn list(f: &mut fmt::Formatter<'_>, items: &[String]) -> fmt::Result {
            const SHOWN: usize = 10;
            for w in items.iter().take(SHOWN) {
                write!(f, " {w}")?;
            }
            if items.len() > SHOWN {
                write!(f, " (and {} more)", items.len() - SHOWN)?;
            }
            Ok(())
        }
        writeln!(
            f,
            "records: {} ({} distinct, {} duplicates), events: {}, bad payloads: {}",
            self.records, self.distinct_msg_ids, self.duplicates, self.events, self.bad_payloads
        )?;
        write!(f, "lanes:")?;
        for (role, n) in &self.by_role {
            write!(f, " {} {n}", role.as_str())?;
        }
        writeln!(
            f,
            "; no-reads {}; lane differs from plan {}",
            self.no_reads, self.lane_mismatches
        )?;
        write!(f, "deciding rules:")?;
        for (rule, n) in &self.by_rule {
            write!(f, " {rule} {n}")?;
        }
        write!(f, "\nrules fired:")?;
        for (rule, n) in &self.fired {
            write!(f, " {rule} {n}")?;
        }
        write!(f, "\nrule kinds fired:")?;
        for (kind, n) in &self.kinds_fired {
            write!(f, " {kind} {n}")?;
        }
        if !self.kinds_never_fired.is_empty() {
            write!(f, "; never fired:")?;
            for kind in &self.kinds_never_fired {
                write!(f, " {kind}")?;
            }
        }
        writeln!(
            f,
            "\nanomalies: {}; flagged parcels without an anomaly: {}",
            self.anomalies,
            self.flagged_without_anomaly.len()
        )?;
        write!(f, "missing: {}", self.missing.len())?;
        list(f, &self.missing)?;
        for (gateway, chain) in &self.chains {
            let gateway = if gateway.is_empty() {
                "(no gateway)"
            } else {
                gateway
            };
            write!(f, "\nchain of {gateway}: {chain}")?;
        }
        if !self.released_against_plan.is_empty() {
            write!(
                f,
                "\nRELEASED AGAINST PLAN: {}",
                self.released_against_plan.len()
            )?;
            list(f, &self.released_against_plan)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bondline_devices::contract::{DivertOutcome, DivertStatus, FiredRule};

    use crate::plan::Mix;

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

    fn record(seq: u64, waybill: Option<&str>, role: LaneRole) -> ParcelRecord {
        ParcelRecord {
            schema: SCHEMA,
            msg_id: format!("gw-{seq}"),
            seq,
            prev_hash: String::new(),
            gateway: "gw".into(),
            line: "l1".into(),
            parcel: seq as u32,
            read: if waybill.is_some() {
                ReadOutcome::Ok
            } else {
                ReadOutcome::NoRead
            },
            waybill: waybill.map(str::to_string),
            lane: 1,
            lane_role: role,
            rule: "r".into(),
            reason: "r".into(),
            instruction_id: None,
            scanned_at_ms: 0,
            decided_at_ms: 0,
            divert: DivertOutcome {
                status: DivertStatus::Acked,
                plc_seq: Some(1),
                detail: None,
                at_ms: 0,
                late: false,
            },
            revision: 0,
            deadline_ms: None,
            rule_set: None,
            rules_fired: Vec::new(),
            inputs: None,
        }
    }

    #[test]
    fn report_counts_missing_duplicates_and_breaches() {
        let plan = Plan::new(5);
        let parcels: Vec<_> = plan.parcels(0..200).collect();
        let release = parcels
            .iter()
            .find(|p| p.kind == PlanKind::Release)
            .expect("release");
        let undeclared = parcels
            .iter()
            .find(|p| p.kind == PlanKind::Undeclared)
            .expect("undeclared");
        let records = vec![
            record(1, Some(&release.waybill), LaneRole::Release),
            record(1, Some(&release.waybill), LaneRole::Release),
            record(2, Some(&undeclared.waybill), LaneRole::Release),
            record(3, None, LaneRole::Exception),
        ];
        let r = PlatformReport::build(&plan, 0..200, &records, &[], 0, 0, &Expect::default());
        assert_eq!((r.records, r.distinct_msg_ids, r.duplicates), (4, 3, 1));
        assert_eq!(r.by_role[&LaneRole::Release], 2);
        assert_eq!(r.no_reads, 1);
        assert_eq!(r.lane_mismatches, 1);
        assert_eq!(r.released_against_plan, vec![undeclared.waybill.clone()]);
        let readable = parcels.iter().filter(|p| p.kind.is_readable()).count();
        assert_eq!(r.missing.len(), readable - 2);
        let text = r.to_string();
        assert!(text.contains("RELEASED AGAINST PLAN: 1"), "{text}");
        assert!(text.contains("more)"), "{text}");
    }

    fn fired(rule: &str, target: LaneRole) -> FiredRule {
        FiredRule {
            rule: rule.into(),
            target,
            reason: "r".into(),
        }
    }

    #[test]
    fn report_counts_rules_and_missing_anomalies() {
        let plan = Plan::with_mix(5, Mix::every_rule());
        let book = RuleBook::demo();
        let pick = |kind: PlanKind| {
            plan.parcels(0..400)
                .find(|p| p.kind == kind && !book.sampled(&p.waybill))
                .expect("kind in plan")
        };
        let (heavy, light, held) = (
            pick(PlanKind::Overweight),
            pick(PlanKind::Release),
            pick(PlanKind::Hold),
        );
        let mut weighed = record(1, Some(&heavy.waybill), LaneRole::Inspection);
        weighed.rule = "weight_mismatch".into();
        weighed.rules_fired = vec![
            fired("weight_mismatch", LaneRole::Inspection),
            fired("instruction", LaneRole::Release),
        ];
        let mut released = record(2, Some(&light.waybill), LaneRole::Release);
        released.rule = "instruction".into();
        released.rules_fired = vec![fired("instruction", LaneRole::Release)];
        let mut hold = record(3, Some(&held.waybill), LaneRole::Hold);
        hold.rule = "instruction".into();
        hold.rules_fired = vec![fired("instruction", LaneRole::Hold)];
        let records = vec![weighed.clone(), released, hold];
        let expect = Expect {
            weighed: true,
            xray: true,
            rules: Some(book.clone()),
        };
        let r = PlatformReport::build(&plan, 0..0, &records, &[], 0, 0, &expect);
        assert_eq!(r.by_rule["instruction"], 2);
        assert_eq!(r.fired["instruction"], 3);
        assert_eq!(r.kinds_fired["weight_mismatch"], 1);
        assert_eq!(r.lane_mismatches, 0, "{r}");
        // Only the weight rule's parcel is an anomaly, and none arrived for it.
        assert_eq!(r.flagged_without_anomaly, vec![heavy.waybill.clone()]);
        assert!(r.kinds_never_fired.contains(&"sampling".to_string()));
        assert!(!r.kinds_never_fired.contains(&"instruction".to_string()));
        let anomaly = Anomaly {
            schema: SCHEMA,
            anomaly_id: "gw-l1-1-0".into(),
            gateway: "gw".into(),
            line: "l1".into(),
            parcel: weighed.parcel,
            waybill: weighed.waybill.clone(),
            lane: 2,
            lane_role: LaneRole::Inspection,
            rule_set: book.version.clone(),
            rules_fired: weighed.rules_fired.clone(),
            inputs: Default::default(),
            scanned_at_ms: 0,
            at_ms: 0,
        };
        let r = PlatformReport::build(&plan, 0..0, &records, &[anomaly], 0, 0, &expect);
        assert!(r.flagged_without_anomaly.is_empty());
        assert_eq!(r.anomalies, 1);
        // Without a scale the overweight parcel should have been released.
        let unweighed = Expect {
            weighed: false,
            ..expect
        };
        let r = PlatformReport::build(&plan, 0..0, &records, &[], 0, 0, &unweighed);
        assert_eq!(r.lane_mismatches, 1);
        assert!(r
            .to_string()
            .contains("deciding rules: instruction 2 weight_mismatch 1"));
    }

    #[test]
    fn declarations_are_valid_contract_messages() {
        let plan = Plan::new(5);
        for p in plan.parcels(0..50).filter(|p| p.kind.is_declared()) {
            let d = declaration_for(&plan, &p);
            let bytes = serde_json::to_vec(&d).expect("json");
            assert_eq!(Declaration::parse(&bytes).expect("valid"), d);
            assert!(d.value_minor.is_some_and(|v| v < 500_000));
        }
    }
}

/// An image as the platform received it.
#[derive(Debug, Clone)]
pub struct ReceivedImage {
    pub record: bondline_devices::contract::ImageRecord,
    /// The original, once every chunk arrived; `None` while pieces are missing or when the
    /// gateway kept it (over the size cap).
    pub original: Option<Vec<u8>>,
    /// Whether the original's SHA-256 matches the record's.
    pub hash_ok: bool,
}

/// Puts images back together from the records received: each distinct image record (by hash,
/// scan and view) with the chunks carrying its hash, duplicates ignored.
pub fn reassemble(records: &[Record]) -> Vec<ReceivedImage> {
    use std::collections::HashSet;
    let originals = Originals::of(records);
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for r in records {
        let Record::Image(i) = r else { continue };
        if !seen.insert((i.sha256.clone(), i.scan_id, i.view.clone())) {
            continue;
        }
        let (original, hash_ok) = originals.get(&i.sha256, i.chunks);
        out.push(ReceivedImage {
            record: i.clone(),
            original,
            hash_ok,
        });
    }
    out
}

/// A camera snapshot record as the platform received it.
#[derive(Debug, Clone)]
pub struct ReceivedSnapshot {
    pub record: bondline_devices::contract::SnapshotRecord,
    /// The JPEG, once every chunk arrived; `None` without a picture or while pieces miss.
    pub original: Option<Vec<u8>>,
    /// Whether the original's SHA-256 matches the record's.
    pub hash_ok: bool,
}

/// Every snapshot record received (duplicates by message id ignored), with its JPEG put back
/// together from the chunks carrying its hash, as for X-ray images.
pub fn reassemble_snapshots(records: &[Record]) -> Vec<ReceivedSnapshot> {
    use std::collections::HashSet;
    let originals = Originals::of(records);
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for r in records {
        let Record::Snapshot(s) = r else { continue };
        if !seen.insert(s.msg_id.clone()) {
            continue;
        }
        let (original, hash_ok) = match &s.sha256 {
            Some(sha) => originals.get(sha, s.chunks),
            None => (None, false),
        };
        out.push(ReceivedSnapshot {
            record: s.clone(),
            original,
            hash_ok,
        });
    }
    out
}

/// The image chunk records received, by hash and index.
struct Originals<'a>(
    std::collections::HashMap<
        &'a str,
        std::collections::BTreeMap<u32, &'a bondline_devices::contract::ImageChunkRecord>,
    >,
);

impl<'a> Originals<'a> {
    fn of(records: &'a [Record]) -> Originals<'a> {
        let mut chunks: std::collections::HashMap<_, std::collections::BTreeMap<_, _>> =
            std::collections::HashMap::new();
        for r in records {
            if let Record::ImageChunk(c) = r {
                chunks
                    .entry(c.sha256.as_str())
                    .or_default()
                    .insert(c.index, c);
            }
        }
        Originals(chunks)
    }

    /// The original with this hash in `count` chunks, if all arrived, and whether its hash
    /// checks.
    fn get(&self, sha256: &str, count: u32) -> (Option<Vec<u8>>, bool) {
        use base64::Engine;
        use sha2::Digest;
        let parts = self.0.get(sha256);
        let complete = count > 0 && parts.is_some_and(|p| p.len() == count as usize);
        let original = complete
            .then(|| {
                let mut bytes = Vec::new();
                for c in parts.into_iter().flat_map(|p| p.values()) {
                    match base64::engine::general_purpose::STANDARD.decode(&c.data_b64) {
                        Ok(b) => bytes.extend(b),
                        Err(_) => return None,
                    }
                }
                Some(bytes)
            })
            .flatten();
        let hash_ok = original
            .as_ref()
            .is_some_and(|b| hex::encode(sha2::Sha256::digest(b)) == sha256);
        (original, hash_ok)
    }
}
