//! Which platform messages the gateway believes: signature checks (pure).
//!
//! Every declaration, instruction, enterprise notice and rule set update must carry a valid
//! signature by one of the configured platform keys (see `bondline_devices::signing`), made
//! no longer ago than `max_age` (and not in the future beyond [`CLOCK_SKEW`]). The only
//! exception is `allow_unsigned`, meant for a demo line: unsigned messages are then accepted,
//! and the staff view and the log say so plainly. A signed message is always verified, even
//! then. Replays are caught where the state is: a repeated instruction, notice or update id
//! is a redelivery and is not applied again; a declaration signed before the one held is
//! refused as a replay.

use std::collections::HashMap;
use std::time::Duration;

use bondline_devices::signing::{verify, Signed, VerifyingKey};

/// How far in the future a signature time may be (clocks of platform and gateway differ).
pub const CLOCK_SKEW: Duration = Duration::from_secs(300);

/// The gateway's trust in platform keys.
#[derive(Debug, Clone)]
pub struct Trust {
    keys: HashMap<String, VerifyingKey>,
    pub allow_unsigned: bool,
    pub max_age: Duration,
}

impl Trust {
    pub fn new(
        keys: HashMap<String, VerifyingKey>,
        allow_unsigned: bool,
        max_age: Duration,
    ) -> Trust {
        Trust {
            keys,
            allow_unsigned,
            max_age,
        }
    }

    /// Believes nothing unsigned and knows no key: for tools that only read.
    pub fn none() -> Trust {
        Trust::new(HashMap::new(), false, Duration::ZERO)
    }

    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// Checks `msg` at `now_ms`. Returns the signature time of a signed message, `None` for
    /// an unsigned one that is allowed; `Err` with the reason otherwise.
    pub fn check<T: Signed>(&self, msg: &T, now_ms: u64) -> Result<Option<u64>, String> {
        if msg.signature().is_none() {
            return if self.allow_unsigned {
                Ok(None)
            } else {
                Err(format!(
                    "{} not signed: only the platform may steer the lanes",
                    T::KIND
                ))
            };
        }
        let s = verify(msg, |id| self.keys.get(id).copied())
            .map_err(|e| format!("{}: {e}", T::KIND))?;
        let age = now_ms.saturating_sub(s.signed_at_ms);
        if age > self.max_age.as_millis() as u64 {
            return Err(format!(
                "{} expired: signed {} s ago, at most {} s accepted",
                T::KIND,
                age / 1000,
                self.max_age.as_secs()
            ));
        }
        if s.signed_at_ms > now_ms + CLOCK_SKEW.as_millis() as u64 {
            return Err(format!(
                "{} signed {} s in the future",
                T::KIND,
                (s.signed_at_ms - now_ms) / 1000
            ));
        }
        Ok(Some(s.signed_at_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bondline_devices::contract::{Action, Instruction, SCHEMA};
    use bondline_devices::signing::{sign, SigningKey};

    #[test]
    fn unsigned_forged_expired_and_future_messages_are_refused() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let trust = Trust::new(
            [("p1".to_string(), key.verifying_key())].into(),
            false,
            Duration::from_secs(3600),
        );
        let mut m = Instruction {
            schema: SCHEMA,
            instruction_id: "I".into(),
            waybill: "BL1".into(),
            action: Action::Release,
            reason: String::new(),
            issued_at_ms: None,
            signature: None,
        };
        let now = 10_000_000;
        assert!(trust.check(&m, now).unwrap_err().contains("not signed"));
        let lenient = Trust {
            allow_unsigned: true,
            ..trust.clone()
        };
        assert_eq!(lenient.check(&m, now), Ok(None));
        sign(&mut m, "p1", &key, now - 1000);
        assert_eq!(trust.check(&m, now), Ok(Some(now - 1000)));
        let mut forged = m.clone();
        sign(&mut forged, "p1", &SigningKey::from_bytes(&[2; 32]), now);
        assert!(trust
            .check(&forged, now)
            .unwrap_err()
            .contains("does not match"));
        assert!(
            lenient.check(&forged, now).is_err(),
            "a bad signature is refused even in demo mode"
        );
        let mut old = m.clone();
        sign(&mut old, "p1", &key, now - 3_601_000);
        assert!(trust.check(&old, now).unwrap_err().contains("expired"));
        let mut future = m.clone();
        sign(&mut future, "p1", &key, now + 301_000);
        assert!(trust.check(&future, now).unwrap_err().contains("future"));
    }
}
