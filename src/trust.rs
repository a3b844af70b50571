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
//!
//! Signatures (scheme 2) name the gateways a message is for: a message whose target names
//! neither this gateway (its `gateway_id` or MQTT client id) nor its warehouse
//! (`[trust] warehouse_id`) is refused as `wrong_target`, so a message sniffed on one
//! gateway cannot steer another. Scheme 1 (no target) is refused unless
//! `[trust] accept_scheme_1 = true`, a switch for the migration of a platform only.

use std::collections::HashMap;
use std::time::Duration;

use bondline_devices::signing::{verify, Signed, Target, VerifyingKey};

/// How far in the future a signature time may be (clocks of platform and gateway differ).
pub const CLOCK_SKEW: Duration = Duration::from_secs(300);

/// Why a platform message is not believed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Signed for other gateways: reported with reason `wrong_target`.
    #[error("{0}")]
    WrongTarget(String),
    /// Unsigned, mis-signed, expired, from the future or of a refused scheme.
    #[error("{0}")]
    NotFromPlatform(String),
}

impl Refused {
    /// The reason code in refusal metrics and events.
    pub fn code(&self) -> &'static str {
        match self {
            Refused::WrongTarget(_) => "wrong_target",
            Refused::NotFromPlatform(_) => "forged",
        }
    }

    pub fn contains(&self, s: &str) -> bool {
        self.to_string().contains(s)
    }
}

/// Whom scheme-2 signatures must name for this gateway.
#[derive(Debug, Clone, Default)]
pub struct Identity {
    /// The gateway id and the MQTT client id (either may appear in a `gateway:` target).
    pub gateway_ids: Vec<String>,
    /// `[trust] warehouse_id`: a `warehouse:` target must name it.
    pub warehouse_id: Option<String>,
    /// `[trust] accept_scheme_1`: accept legacy signatures that name no gateway.
    pub accept_scheme_1: bool,
}

/// The gateway's trust in platform keys.
#[derive(Debug, Clone)]
pub struct Trust {
    keys: HashMap<String, VerifyingKey>,
    pub allow_unsigned: bool,
    pub max_age: Duration,
    pub identity: Identity,
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
            identity: Identity::default(),
        }
    }

    /// The same trust, for the gateway `identity`.
    pub fn for_gateway(self, identity: Identity) -> Trust {
        Trust { identity, ..self }
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
    pub fn check<T: Signed>(&self, msg: &T, now_ms: u64) -> Result<Option<u64>, Refused> {
        use Refused::NotFromPlatform as Forged;
        if msg.signature().is_none() {
            return if self.allow_unsigned {
                Ok(None)
            } else {
                Err(Forged(format!(
                    "{} not signed: only the platform may steer the lanes",
                    T::KIND
                )))
            };
        }
        let s = verify(msg, |id| self.keys.get(id).copied())
            .map_err(|e| Forged(format!("{}: {e}", T::KIND)))?;
        match s.scheme {
            1 if !self.identity.accept_scheme_1 => {
                return Err(Forged(format!(
                    "{}: signature scheme 1 names no gateway and is refused (`[trust] accept_scheme_1` allows it while a platform migrates)",
                    T::KIND
                )))
            }
            1 => {}
            _ => {
                // `verify` checked that the target parses and was signed as it reads.
                let target: Target = s
                    .target
                    .as_deref()
                    .unwrap_or_default()
                    .parse()
                    .map_err(|e| Forged(format!("{}: {e}", T::KIND)))?;
                let ids: Vec<&str> = self.identity.gateway_ids.iter().map(String::as_str).collect();
                if !target.names(&ids, self.identity.warehouse_id.as_deref()) {
                    return Err(Refused::WrongTarget(format!(
                        "{} signed for `{target}`, not for this gateway ({}{})",
                        T::KIND,
                        ids.join(", "),
                        self.identity
                            .warehouse_id
                            .as_deref()
                            .map(|w| format!(", warehouse {w}"))
                            .unwrap_or_default()
                    )));
                }
            }
        }
        let age = now_ms.saturating_sub(s.signed_at_ms);
        if age > self.max_age.as_millis() as u64 {
            return Err(Forged(format!(
                "{} expired: signed {} s ago, at most {} s accepted",
                T::KIND,
                age / 1000,
                self.max_age.as_secs()
            )));
        }
        if s.signed_at_ms > now_ms + CLOCK_SKEW.as_millis() as u64 {
            return Err(Forged(format!(
                "{} signed {} s in the future",
                T::KIND,
                (s.signed_at_ms - now_ms) / 1000
            )));
        }
        Ok(Some(s.signed_at_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bondline_devices::contract::{Action, Instruction, SCHEMA};
    use bondline_devices::signing::{sign, sign_v1, SigningKey};

    /// Trust for gateway `gw-01` (also `bondline-gw-01`) of warehouse `WH-1`, knowing `key` as `p1`.
    fn gateway_trust(key: &SigningKey) -> Trust {
        Trust::new(
            [("p1".to_string(), key.verifying_key())].into(),
            false,
            Duration::from_secs(3600),
        )
        .for_gateway(Identity {
            gateway_ids: vec!["gw-01".into(), "bondline-gw-01".into()],
            warehouse_id: Some("WH-1".into()),
            accept_scheme_1: false,
        })
    }

    /// An unsigned release instruction for waybill `BL1`.
    fn release() -> Instruction {
        Instruction {
            schema: SCHEMA,
            instruction_id: "I".into(),
            waybill: "BL1".into(),
            action: Action::Release,
            reason: String::new(),
            issued_at_ms: None,
            signature: None,
        }
    }

    #[test]
    fn unsigned_forged_expired_and_future_messages_are_refused() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let trust = gateway_trust(&key);
        let here = Target::gateway("gw-01");
        let mut m = release();
        let now = 10_000_000;
        assert!(trust.check(&m, now).unwrap_err().contains("not signed"));
        let lenient = Trust {
            allow_unsigned: true,
            ..trust.clone()
        };
        assert_eq!(lenient.check(&m, now), Ok(None));
        sign(&mut m, "p1", &key, now - 1000, &here);
        assert_eq!(trust.check(&m, now), Ok(Some(now - 1000)));
        let mut forged = m.clone();
        sign(
            &mut forged,
            "p1",
            &SigningKey::from_bytes(&[2; 32]),
            now,
            &here,
        );
        assert!(trust
            .check(&forged, now)
            .unwrap_err()
            .contains("does not match"));
        assert!(
            lenient.check(&forged, now).is_err(),
            "a bad signature is refused even in demo mode"
        );
        let mut old = m.clone();
        sign(&mut old, "p1", &key, now - 3_601_000, &here);
        assert!(trust.check(&old, now).unwrap_err().contains("expired"));
        let mut future = m.clone();
        sign(&mut future, "p1", &key, now + 301_000, &here);
        assert!(trust.check(&future, now).unwrap_err().contains("future"));
    }

    #[test]
    fn a_message_for_another_gateway_or_warehouse_or_of_scheme_1_is_refused() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let trust = gateway_trust(&key);
        let mut m = release();
        let now = 10_000_000;
        for ok in [
            "gateway:gw-01",
            "gateway:gw-07,bondline-gw-01",
            "warehouse:WH-1",
        ] {
            sign(&mut m, "p1", &key, now, &ok.parse().unwrap());
            assert_eq!(trust.check(&m, now), Ok(Some(now)), "{ok}");
        }
        for wrong in ["gateway:gw-02", "gateway:gw-02,gw-03", "warehouse:WH-2"] {
            sign(&mut m, "p1", &key, now, &wrong.parse().unwrap());
            let e = trust.check(&m, now).unwrap_err();
            assert_eq!(e.code(), "wrong_target", "{wrong}: {e}");
            assert!(e.contains(wrong), "{e}");
        }
        let no_warehouse = trust.clone().for_gateway(Identity {
            warehouse_id: None,
            ..trust.identity.clone()
        });
        sign(&mut m, "p1", &key, now, &"warehouse:WH-1".parse().unwrap());
        assert_eq!(
            no_warehouse.check(&m, now).unwrap_err().code(),
            "wrong_target"
        );
        sign_v1(&mut m, "p1", &key, now);
        let e = trust.check(&m, now).unwrap_err();
        assert_eq!(e.code(), "forged");
        assert!(e.contains("scheme 1"), "{e}");
        let migrating = trust.clone().for_gateway(Identity {
            accept_scheme_1: true,
            ..trust.identity.clone()
        });
        assert_eq!(migrating.check(&m, now), Ok(Some(now)));
    }
}
