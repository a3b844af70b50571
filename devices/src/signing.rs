//! Signatures on platform messages: only the platform may steer the lanes.
//!
//! A broker shared with other systems lets any client that may publish to the instruction
//! topic send "release". So every platform → gateway message (declaration, instruction,
//! enterprise notice, rule set update) carries a `signature`: Ed25519 by one of the platform's
//! keys over
//!
//! ```text
//! bondline-signed/2 <kind> <key_id> <signed_at_ms> <target>\n<the message's JSON without `signature`>
//! ```
//!
//! where `<kind>` is `declaration`, `instruction`, `enterprise_notice` or `rule_set_update`
//! (so a signature cannot be moved to another kind of message), `<target>` names the gateways
//! the message is meant for ([`Target`]: `gateway:<id>[,<id>…]` or `warehouse:<id>`, so a
//! message sniffed on one gateway cannot be replayed on another) and the JSON is the message as
//! this crate serializes it (fields in declaration order, compact, no `signature` key). The
//! gateway verifies against its configured public keys and rejects unsigned, mis-signed,
//! expired, replayed and mis-targeted messages (see the daemon's `trust` module).
//!
//! Scheme 1 (`bondline-signed/1 <kind> <key_id> <signed_at_ms>\n<json>`, no target) is still
//! verified so that a gateway can be migrated, but the daemon refuses it unless configured to
//! accept it.

use ed25519_dalek::{Signer, Verifier};
pub use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::contract::{Declaration, EnterpriseNotice, Instruction, RuleSetUpdate};

/// A platform signature on a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    /// The signature scheme: 2 (with a target) or 1 (legacy, no target). Absent means 1.
    #[serde(default = "scheme_1")]
    pub scheme: u8,
    /// Which platform key signed (the gateway's configuration maps ids to public keys).
    pub key_id: String,
    /// When it was signed, Unix ms: too old is expired; older than what it replaces is a replay.
    pub signed_at_ms: u64,
    /// Scheme 2: the gateways the message is for, as signed (see [`Target`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The Ed25519 signature, 128 hex digits.
    pub ed25519: String,
}

fn scheme_1() -> u8 {
    1
}

/// The scheme new signatures are made with.
pub const SCHEME: u8 = 2;

/// Which gateways a scheme-2 signature is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// These gateways (by gateway id or MQTT client id), at least one.
    Gateways(Vec<String>),
    /// Every gateway of this warehouse (its `[trust] warehouse_id`).
    Warehouse(String),
}

/// Why a target does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("target `{0}` is not `gateway:<id>[,<id>...]` or `warehouse:<id>`")]
pub struct BadTarget(pub String);

/// An id in a target: 1 to 64 characters, no whitespace, no comma.
fn target_id_ok(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && !id.contains(|c: char| c.is_whitespace() || c == ',')
}

impl Target {
    /// One gateway.
    pub fn gateway(id: &str) -> Target {
        Target::Gateways(vec![id.to_string()])
    }

    /// Whether the target names a gateway known by any of `gateway_ids`, or `warehouse`.
    pub fn names(&self, gateway_ids: &[&str], warehouse: Option<&str>) -> bool {
        match self {
            Target::Gateways(ids) => ids.iter().any(|i| gateway_ids.contains(&i.as_str())),
            Target::Warehouse(w) => warehouse == Some(w.as_str()),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Gateways(ids) => write!(f, "gateway:{}", ids.join(",")),
            Target::Warehouse(w) => write!(f, "warehouse:{w}"),
        }
    }
}

impl std::str::FromStr for Target {
    type Err = BadTarget;
    fn from_str(s: &str) -> Result<Target, BadTarget> {
        let bad = || BadTarget(s.to_string());
        if let Some(ids) = s.strip_prefix("gateway:") {
            let ids: Vec<String> = ids.split(',').map(str::to_string).collect();
            if ids.iter().all(|i| target_id_ok(i)) {
                return Ok(Target::Gateways(ids));
            }
        } else if let Some(w) = s.strip_prefix("warehouse:") {
            if target_id_ok(w) {
                return Ok(Target::Warehouse(w.to_string()));
            }
        }
        Err(bad())
    }
}

/// A message the platform signs.
pub trait Signed: Serialize + Clone {
    /// The message kind in the signed bytes.
    const KIND: &'static str;
    fn signature(&self) -> Option<&Signature>;
    fn set_signature(&mut self, s: Option<Signature>);
}

macro_rules! signed {
    ($t:ty, $kind:literal) => {
        impl Signed for $t {
            const KIND: &'static str = $kind;
            fn signature(&self) -> Option<&Signature> {
                self.signature.as_ref()
            }
            fn set_signature(&mut self, s: Option<Signature>) {
                self.signature = s;
            }
        }
    };
}

signed!(Declaration, "declaration");
signed!(Instruction, "instruction");
signed!(EnterpriseNotice, "enterprise_notice");
signed!(RuleSetUpdate, "rule_set_update");

/// The bytes a scheme-2 signature covers.
pub fn signed_bytes<T: Signed>(
    msg: &T,
    key_id: &str,
    signed_at_ms: u64,
    target: &Target,
) -> Vec<u8> {
    let head = format!(
        "bondline-signed/2 {} {key_id} {signed_at_ms} {target}\n",
        T::KIND
    );
    with_json(head, msg)
}

/// The bytes a scheme-1 signature covers (legacy: no target).
pub fn signed_bytes_v1<T: Signed>(msg: &T, key_id: &str, signed_at_ms: u64) -> Vec<u8> {
    with_json(
        format!("bondline-signed/1 {} {key_id} {signed_at_ms}\n", T::KIND),
        msg,
    )
}

fn with_json<T: Signed>(head: String, msg: &T) -> Vec<u8> {
    let mut bare = msg.clone();
    bare.set_signature(None);
    let mut out = head.into_bytes();
    out.extend(serde_json::to_vec(&bare).expect("platform messages always serialize"));
    out
}

/// Signs `msg` in place for `target` with scheme 2 (the platform side; the simulators use it).
pub fn sign<T: Signed>(
    msg: &mut T,
    key_id: &str,
    key: &SigningKey,
    signed_at_ms: u64,
    target: &Target,
) {
    let sig = key.sign(&signed_bytes(msg, key_id, signed_at_ms, target));
    msg.set_signature(Some(Signature {
        scheme: SCHEME,
        key_id: key_id.to_string(),
        signed_at_ms,
        target: Some(target.to_string()),
        ed25519: hex::encode(sig.to_bytes()),
    }));
}

/// Signs `msg` in place with the legacy scheme 1 (no target), for migration tests.
pub fn sign_v1<T: Signed>(msg: &mut T, key_id: &str, key: &SigningKey, signed_at_ms: u64) {
    let sig = key.sign(&signed_bytes_v1(msg, key_id, signed_at_ms));
    msg.set_signature(Some(Signature {
        scheme: 1,
        key_id: key_id.to_string(),
        signed_at_ms,
        target: None,
        ed25519: hex::encode(sig.to_bytes()),
    }));
}

/// Why a signature does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadSignature {
    #[error("not signed")]
    Missing,
    #[error("signed by unknown key `{0}`")]
    UnknownKey(String),
    #[error("signature is not 128 hex digits")]
    Malformed,
    #[error("signature does not match the message (key `{0}`)")]
    Mismatch(String),
    #[error("signature scheme {0} is unknown (2 is current, 1 legacy)")]
    UnknownScheme(u8),
    #[error("scheme-2 signature without a valid target: {0}")]
    BadTarget(String),
    #[error("scheme-1 signature carries a target")]
    TargetInScheme1,
}

/// Checks `msg`'s signature with the key `lookup` gives for its key id.
pub fn verify<T: Signed>(
    msg: &T,
    lookup: impl Fn(&str) -> Option<VerifyingKey>,
) -> Result<&Signature, BadSignature> {
    let s = msg.signature().ok_or(BadSignature::Missing)?;
    let key = lookup(&s.key_id).ok_or_else(|| BadSignature::UnknownKey(s.key_id.clone()))?;
    let bytes: [u8; 64] = hex::decode(&s.ed25519)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or(BadSignature::Malformed)?;
    let signed = match s.scheme {
        1 if s.target.is_some() => return Err(BadSignature::TargetInScheme1),
        1 => signed_bytes_v1(msg, &s.key_id, s.signed_at_ms),
        2 => {
            let raw = s.target.as_deref().unwrap_or("");
            let target: Target = raw
                .parse()
                .map_err(|e: BadTarget| BadSignature::BadTarget(e.to_string()))?;
            // The exact text signed: a target that parses but prints otherwise is refused.
            if target.to_string() != raw {
                return Err(BadSignature::BadTarget(format!("`{raw}` is not canonical")));
            }
            signed_bytes(msg, &s.key_id, s.signed_at_ms, &target)
        }
        other => return Err(BadSignature::UnknownScheme(other)),
    };
    let sig = ed25519_dalek::Signature::from_bytes(&bytes);
    key.verify(&signed, &sig)
        .map_err(|_| BadSignature::Mismatch(s.key_id.clone()))?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{Action, SCHEMA};

    fn release() -> Instruction {
        Instruction {
            schema: SCHEMA,
            instruction_id: "I1".into(),
            waybill: "BL1".into(),
            action: Action::Release,
            reason: String::new(),
            issued_at_ms: Some(5),
            signature: None,
        }
    }

    #[test]
    fn a_signature_holds_for_its_message_only() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let public = key.verifying_key();
        let lookup = |id: &str| (id == "k1").then_some(public);
        let mut m = release();
        assert_eq!(verify(&m, lookup), Err(BadSignature::Missing));
        let gw = Target::gateway("gw-a");
        sign(&mut m, "k1", &key, 1000, &gw);
        assert!(verify(&m, lookup).is_ok());
        // Through JSON and back, as it travels.
        let wire: Instruction = serde_json::from_slice(&serde_json::to_vec(&m).unwrap()).unwrap();
        assert!(verify(&wire, lookup).is_ok());
        let mut hold = m.clone();
        hold.action = Action::Hold;
        assert!(matches!(
            verify(&hold, lookup),
            Err(BadSignature::Mismatch(_))
        ));
        let mut later = m.clone();
        later.signature.as_mut().unwrap().signed_at_ms = 2000;
        assert!(matches!(
            verify(&later, lookup),
            Err(BadSignature::Mismatch(_))
        ));
        let mut other = m.clone();
        sign(
            &mut other,
            "k2",
            &SigningKey::from_bytes(&[8; 32]),
            1000,
            &gw,
        );
        assert_eq!(
            verify(&other, lookup),
            Err(BadSignature::UnknownKey("k2".into()))
        );
        let mut forged = m.clone();
        sign(
            &mut forged,
            "k1",
            &SigningKey::from_bytes(&[8; 32]),
            1000,
            &gw,
        );
        assert!(matches!(
            verify(&forged, lookup),
            Err(BadSignature::Mismatch(_))
        ));
        // The target is signed: rewriting it to another gateway breaks the signature.
        let mut moved = m.clone();
        moved.signature.as_mut().unwrap().target = Some("gateway:gw-b".into());
        assert!(matches!(
            verify(&moved, lookup),
            Err(BadSignature::Mismatch(_))
        ));
        // Nor can it be dropped by claiming the legacy scheme.
        let mut downgraded = m.clone();
        downgraded.signature.as_mut().unwrap().scheme = 1;
        assert_eq!(
            verify(&downgraded, lookup),
            Err(BadSignature::TargetInScheme1)
        );
        downgraded.signature.as_mut().unwrap().target = None;
        assert!(matches!(
            verify(&downgraded, lookup),
            Err(BadSignature::Mismatch(_))
        ));
        let mut v1 = release();
        sign_v1(&mut v1, "k1", &key, 1000);
        assert_eq!(verify(&v1, lookup).unwrap().scheme, 1);
        let wire: Instruction = serde_json::from_str(
            &serde_json::to_string(&v1)
                .unwrap()
                .replace("\"scheme\":1,", ""),
        )
        .unwrap();
        assert!(
            verify(&wire, lookup).is_ok(),
            "a scheme-1 message without `scheme`"
        );
        let mut unknown = m.clone();
        unknown.signature.as_mut().unwrap().scheme = 3;
        assert_eq!(
            verify(&unknown, lookup),
            Err(BadSignature::UnknownScheme(3))
        );
    }

    #[test]
    fn targets_parse_print_and_name_gateways() {
        for ok in ["gateway:gw-01", "gateway:gw-01,gw-02", "warehouse:WH-SZ-3"] {
            assert_eq!(ok.parse::<Target>().unwrap().to_string(), ok);
        }
        for bad in [
            "",
            "gateway:",
            "gateway:a,,b",
            "warehouse:",
            "gw-01",
            "gateway:a b",
        ] {
            assert!(bad.parse::<Target>().is_err(), "{bad}");
        }
        let t: Target = "gateway:gw-01,gw-02".parse().unwrap();
        assert!(t.names(&["gw-02"], None));
        assert!(!t.names(&["gw-03"], Some("gw-01")));
        let w: Target = "warehouse:WH".parse().unwrap();
        assert!(w.names(&["x"], Some("WH")));
        assert!(!w.names(&["WH"], None));
    }

    /// The test vectors in docs/mqtt.md, read from the document itself: a platform built
    /// from the docs alone signs exactly these bytes. Fails if the signed bytes change.
    #[test]
    fn the_documented_test_vectors_hold() {
        use crate::contract::{Declaration, EnterpriseNotice, RuleSetUpdate};
        const DOC: &str = include_str!("../../docs/mqtt.md");
        fn check<T: Signed + serde::de::DeserializeOwned>(v: &serde_json::Value) -> String {
            let secret: [u8; 32] = hex::decode(v["secret_key_hex"].as_str().unwrap())
                .unwrap()
                .try_into()
                .unwrap();
            let key = SigningKey::from_bytes(&secret);
            assert_eq!(
                hex::encode(key.verifying_key().to_bytes()),
                v["public_key_hex"].as_str().unwrap()
            );
            let msg: T = serde_json::from_value(v["message"].clone()).unwrap();
            let s = msg.signature().unwrap().clone();
            assert_eq!(s.scheme, SCHEME);
            let target: Target = s.target.as_deref().unwrap().parse().unwrap();
            let bytes = signed_bytes(&msg, &s.key_id, s.signed_at_ms, &target);
            assert_eq!(
                String::from_utf8(bytes).unwrap(),
                v["signed_bytes"].as_str().unwrap(),
                "signed bytes of vector {}",
                v["vector"]
            );
            let public = key.verifying_key();
            assert!(verify(&msg, |_| Some(public)).is_ok(), "{}", v["vector"]);
            let mut again = msg.clone();
            sign(&mut again, &s.key_id, &key, s.signed_at_ms, &target);
            assert_eq!(
                again.signature().unwrap().ed25519,
                s.ed25519,
                "Ed25519 is deterministic"
            );
            T::KIND.to_string()
        }
        let mut kinds = Vec::new();
        for block in DOC.split("#### Vector: ").skip(1) {
            let start = block.find("```json\n").expect("a json block") + 8;
            let end = start + block[start..].find("\n```").expect("its end");
            let v: serde_json::Value = serde_json::from_str(&block[start..end]).unwrap();
            let head = v["signed_bytes"]
                .as_str()
                .unwrap()
                .split(' ')
                .nth(1)
                .unwrap();
            kinds.push(match head {
                "declaration" => check::<Declaration>(&v),
                "instruction" => check::<Instruction>(&v),
                "enterprise_notice" => check::<EnterpriseNotice>(&v),
                "rule_set_update" => check::<RuleSetUpdate>(&v),
                other => panic!("unknown kind {other}"),
            });
        }
        assert!(kinds.len() >= 5, "{kinds:?}");
        for k in [
            "declaration",
            "instruction",
            "enterprise_notice",
            "rule_set_update",
        ] {
            assert!(kinds.iter().any(|x| x == k), "no vector for {k}");
        }
    }
}
