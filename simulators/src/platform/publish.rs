//! What the platform sends the floor: declarations and instructions for a plan, the
//! enterprise suspension, rule sets, raw payloads for malformed-message tests, all signed
//! when the platform has a key, and the wait for the broker's acknowledges. The outbound half
//! of [`PlatformSim`]; the inbound half is the event-loop task (`session`).

use std::ops::Range;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _};
use bondline_devices::contract::{
    topic, unix_ms, Declaration, DeclaredItem, EnterpriseAction, EnterpriseNotice, Instruction,
    RuleSetUpdate, SCHEMA,
};
use bondline_devices::signing::{Signed, SigningKey, Target};
use rumqttc::QoS;

use super::PlatformSim;
use crate::plan::{Plan, PlanKind, PlannedParcel, SUSPENDED_ENTERPRISE};

/// How long a publish call waits for the broker's PUBACKs.
const PUBACK_TIMEOUT: Duration = Duration::from_secs(30);

impl PlatformSim {
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

#[cfg(test)]
mod tests {
    use super::*;

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
