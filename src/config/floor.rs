//! `[floor]`: how the host treats the decision path's thread.

use serde::Deserialize;

use super::{bad, Bad};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFloor {
    #[serde(default)]
    cpu_wake_latency_us: Option<u32>,
}

/// The longest wake-up latency `cpu_wake_latency_us` may ask for: beyond it no idle state is
/// excluded on any machine, so the setting would do nothing.
const MAX_WAKE_LATENCY_US: u32 = 100_000;

/// Checks `[floor]` and resolves it.
pub(super) fn resolve(raw: Option<RawFloor>) -> Result<crate::threads::FloorSettings, Bad> {
    let Some(raw) = raw else {
        return Ok(crate::threads::FloorSettings::default());
    };
    if let Some(us) = raw
        .cpu_wake_latency_us
        .filter(|&us| us > MAX_WAKE_LATENCY_US)
    {
        return Err(bad(
            "floor.cpu_wake_latency_us",
            format!(
                "must be 0 to {MAX_WAKE_LATENCY_US} microseconds (got {us}): the longest time a CPU may take to wake from idle"
            ),
        ));
    }
    Ok(crate::threads::FloorSettings {
        cpu_wake_latency_us: raw.cpu_wake_latency_us,
    })
}
