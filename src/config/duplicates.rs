//! `[duplicates]`: when a re-scan of a released waybill may be the same parcel come round
//! the loop again, rather than a second parcel under a copied label (see
//! [`crate::line::duplicates`]).

use serde::Deserialize;

use super::{bad, Bad};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDuplicates {
    #[serde(default = "default_true")]
    recirculation: bool,
    #[serde(default = "default_min_loop_ms")]
    min_loop_ms: u64,
    #[serde(default = "default_weight_tolerance_g")]
    weight_tolerance_g: u32,
    #[serde(default)]
    allow_unweighed: bool,
}

fn default_true() -> bool {
    true
}
fn default_min_loop_ms() -> u64 {
    crate::line::duplicates::Settings::default().min_loop_ms
}
fn default_weight_tolerance_g() -> u32 {
    crate::line::duplicates::Settings::default().weight_tolerance_g
}

/// Checks `[duplicates]` and resolves it.
pub(super) fn resolve(
    raw: Option<RawDuplicates>,
) -> Result<crate::line::duplicates::Settings, Bad> {
    match raw {
        None => Ok(crate::line::duplicates::Settings::default()),
        Some(d) if d.min_loop_ms == 0 || d.min_loop_ms > 3_600_000 => {
            Err(bad(
                "duplicates.min_loop_ms",
                format!(
                    "must be 1 to 3600000 (got {}): the shortest time a parcel takes to come round the loop",
                    d.min_loop_ms
                ),
            ))
        }
        Some(d) if d.weight_tolerance_g > 10_000 => {
            Err(bad(
                "duplicates.weight_tolerance_g",
                format!(
                    "must be at most 10000 (got {}): a wider tolerance no longer tells two parcels apart",
                    d.weight_tolerance_g
                ),
            ))
        }
        Some(d) => Ok(crate::line::duplicates::Settings {
            recirculation: d.recirculation,
            min_loop_ms: d.min_loop_ms,
            weight_tolerance_g: d.weight_tolerance_g,
            allow_unweighed: d.allow_unweighed,
        }),
    }
}
