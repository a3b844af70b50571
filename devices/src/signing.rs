//! Signatures on platform messages: only the platform may steer the lanes.
//!
//! A broker shared with other systems lets any client that may publish to the instruction
//! topic send "release". So every platform → gateway message (declaration, instruction,
//! enterprise notice, rule set update) carries a `signature`: Ed25519 by one of the platform's
//! keys over
//!
//! ```text
//! bondline-signed/1 <kind> <key_id> <signed_at_ms>\n<the message's JSON without `signature`>
//! ```
//!
//! where `<kind>` is `declaration`, `instruction`, `enterprise_notice` or `rule_set_update`
//! (so a signature cannot be moved to another kind of message) and the JSON is the message as
//! this crate serializes it (fields in declaration order, compact, no `signature` key). The
//! gateway verifies against its configured public keys and rejects unsigned, mis-signed,
//! expired and replayed messages (see the daemon's `trust` module).

use ed25519_dalek::{Signer, Verifier};
pub use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::contract::{Declaration, EnterpriseNotice, Instruction, RuleSetUpdate};

/// A platform signature on a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    /// Which platform key signed (the gateway's configuration maps ids to public keys).
    pub key_id: String,
    /// When it was signed, Unix ms: too old is expired; older than what it replaces is a replay.
    pub signed_at_ms: u64,
    /// The Ed25519 signature, 128 hex digits.
    pub ed25519: String,
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

/// The bytes a signature covers.
pub fn signed_bytes<T: Signed>(msg: &T, key_id: &str, signed_at_ms: u64) -> Vec<u8> {
    let mut bare = msg.clone();
    bare.set_signature(None);
    let mut out = format!("bondline-signed/1 {} {key_id} {signed_at_ms}\n", T::KIND).into_bytes();
    out.extend(serde_json::to_vec(&bare).expect("platform messages always serialize"));
    out
}

/// Signs `msg` in place (the platform side; the simulators use it).
pub fn sign<T: Signed>(msg: &mut T, key_id: &str, key: &SigningKey, signed_at_ms: u64) {
    let sig = key.sign(&signed_bytes(msg, key_id, signed_at_ms));
    msg.set_signature(Some(Signature {
        key_id: key_id.to_string(),
        signed_at_ms,
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
    let sig = ed25519_dalek::Signature::from_bytes(&bytes);
    key.verify(&signed_bytes(msg, &s.key_id, s.signed_at_ms), &sig)
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
        sign(&mut m, "k1", &key, 1000);
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
        sign(&mut other, "k2", &SigningKey::from_bytes(&[8; 32]), 1000);
        assert_eq!(
            verify(&other, lookup),
            Err(BadSignature::UnknownKey("k2".into()))
        );
        let mut forged = m.clone();
        sign(&mut forged, "k1", &SigningKey::from_bytes(&[8; 32]), 1000);
        assert!(matches!(
            verify(&forged, lookup),
            Err(BadSignature::Mismatch(_))
        ));
    }
}
