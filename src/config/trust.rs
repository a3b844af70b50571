//! `[trust]`: the platform's public keys and what a signature must name; resolved into the
//! gateway's [`crate::trust::Trust`]. A signature's validity must end before the instruction
//! ids it could replay are forgotten, so `max_age_h` is checked against `[storage]`.

use std::time::Duration;

use serde::Deserialize;

use super::{bad, Bad, Storage};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTrust {
    #[serde(default)]
    keys: Vec<RawKey>,
    #[serde(default)]
    allow_unsigned: bool,
    #[serde(default = "default_max_age_h")]
    max_age_h: u64,
    /// A `warehouse:<id>` signature target must name this.
    #[serde(default)]
    warehouse_id: Option<String>,
    /// Migration switch: accept legacy scheme-1 signatures, which name no gateway.
    #[serde(default)]
    accept_scheme_1: bool,
}

fn default_max_age_h() -> u64 {
    72
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKey {
    id: String,
    ed25519_public_hex: String,
}

/// Checks `[trust]` and resolves it for a gateway known by `gateway_ids` (its id and its
/// MQTT client id).
pub(super) fn resolve(
    raw: Option<RawTrust>,
    storage: &Storage,
    gateway_ids: Vec<String>,
) -> Result<crate::trust::Trust, Bad> {
    match raw {
        None => Err(bad(
            "trust",
            "the platform's public keys are needed (`[trust] keys = [{ id, ed25519_public_hex }]`), or `allow_unsigned = true` for a demo line".into(),
        )),
        Some(t) => {
            let mut keys = std::collections::HashMap::new();
            for (i, k) in t.keys.into_iter().enumerate() {
                let key = |f: &str| format!("trust.keys[{i}].{f}");
                if k.id.is_empty() || k.id.len() > 64 || k.id.contains(char::is_whitespace) {
                    return Err(bad(&key("id"), "must be 1 to 64 characters without spaces".into()));
                }
                let bytes: [u8; 32] = hex::decode(&k.ed25519_public_hex)
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| bad(&key("ed25519_public_hex"), "must be 64 hex digits (an Ed25519 public key)".into()))?;
                let vk = bondline_devices::signing::VerifyingKey::from_bytes(&bytes)
                    .map_err(|e| bad(&key("ed25519_public_hex"), format!("not an Ed25519 public key: {e}")))?;
                if keys.insert(k.id.clone(), vk).is_some() {
                    return Err(bad(&key("id"), format!("key `{}` appears twice", k.id)));
                }
            }
            if keys.is_empty() && !t.allow_unsigned {
                return Err(bad(
                    "trust.keys",
                    "at least one platform key is needed unless allow_unsigned = true".into(),
                ));
            }
            if !(1..=24 * 365).contains(&t.max_age_h) {
                return Err(bad("trust.max_age_h", "must be 1 to 8760".into()));
            }
            // A forgotten instruction id could be replayed while its signature is valid.
            if Duration::from_secs(t.max_age_h * 3600) >= storage.clearance {
                return Err(bad(
                    "trust.max_age_h",
                    format!(
                        "must be shorter than storage.clearance_days ({} days): instruction ids are forgotten then, and a signature still valid could be replayed",
                        storage.clearance.as_secs() / 86_400
                    ),
                ));
            }
            if let Some(w) = &t.warehouse_id {
                if w.is_empty() || w.len() > 64 || w.contains(|c: char| c.is_whitespace() || c == ',') {
                    return Err(bad("trust.warehouse_id", "must be 1 to 64 characters without spaces or commas".into()));
                }
            }
            Ok(crate::trust::Trust::new(keys, t.allow_unsigned, Duration::from_secs(t.max_age_h * 3600)).for_gateway(
                crate::trust::Identity {
                    gateway_ids,
                    warehouse_id: t.warehouse_id,
                    accept_scheme_1: t.accept_scheme_1,
                },
            ))
        }
    }
}
