//! The belt model: a scenario's parcels in order, each with its length, its times at the
//! scanner and the gate, the plan entry it carries and the faults that touch it. A pure,
//! deterministic function of the scenario (draws are salted hashes of the seed), apart from
//! the scenario's parsing and the simulator's clock.

use super::{FaultKind, RunLength, Scenario};
use crate::plan::{Plan, PlanKind};

/// Salts of the plan hash for the belt's own draws, apart from the plan's kind draw.
const SALT_LENGTH: u64 = 0x6C65_6E67;
const SALT_GAP: u64 = 0x6761_7073;
const SALT_EXTRA_NOISE: u64 = 0x6E6F_6973_6532;
const SALT_MARK: u64 = 0x6D61_726B;

impl Scenario {
    /// The belt's parcels in order, each with its scanner and gate times. Deterministic: a
    /// pure function of the scenario.
    pub fn belt(&self) -> Belt {
        Belt {
            scenario: self.clone(),
            plan: self.plan(),
            n: 0,
            next_plan: 0,
            lead_at_induction_s: 0.0,
        }
    }
}

/// One physical parcel on the belt.
#[derive(Debug, Clone, PartialEq)]
pub struct BeltParcel {
    /// Physical parcel number in the run, from 0.
    pub n: u64,
    /// The plan parcel it carries (never a garbage one).
    pub plan_index: u64,
    pub kind: PlanKind,
    pub waybill: String,
    pub length_m: f64,
    /// Seconds into the run at which its leading edge reaches the scanner, and the gate.
    pub scan_s: f64,
    pub gate_s: f64,
    /// Plan indices of the plan's garbage entries before this parcel: the scanner sends their
    /// noise just ahead of this parcel's frame.
    pub noise_before: Vec<u64>,
    /// A `scanner_garbage` fault adds one more garbage frame ahead of this parcel.
    pub extra_noise: bool,
    /// A `late_instructions` fault: seconds into the run at which the platform publishes an
    /// inspect instruction for this parcel.
    pub late_mark_s: Option<f64>,
}

/// The belt's parcels in order; see [`Scenario::belt`].
#[derive(Debug, Clone)]
pub struct Belt {
    scenario: Scenario,
    plan: Plan,
    n: u64,
    next_plan: u64,
    /// When the next parcel's leading edge passes the induction point (position 0).
    lead_at_induction_s: f64,
}

/// A uniform draw in `[0, 1)` from a 64-bit hash.
fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

fn between((lo, hi): (f64, f64), h: u64) -> f64 {
    lo + (hi - lo) * unit(h)
}

impl Iterator for Belt {
    type Item = BeltParcel;

    fn next(&mut self) -> Option<BeltParcel> {
        let s = &self.scenario;
        if let RunLength::Parcels(count) = s.length {
            if self.n >= count {
                return None;
            }
        }
        let v = s.belt_speed_m_s;
        let scan_s = self.lead_at_induction_s + s.scanner_at_m / v;
        if let RunLength::Seconds(d) = s.length {
            if scan_s > d {
                return None;
            }
        }
        let gate_s = self.lead_at_induction_s + s.gate_at_m / v;
        let n = self.n;
        let length_m = between(s.parcel_length_m, self.plan.hash(n, SALT_LENGTH));
        let mut noise_before = Vec::new();
        // Validation guarantees a non-garbage weight, so this ends (geometrically fast).
        let parcel = loop {
            let p = self.plan.parcel(self.next_plan);
            self.next_plan += 1;
            if p.kind == PlanKind::Garbage {
                noise_before.push(p.index);
            } else {
                break p;
            }
        };
        let garbage_share = s
            .faults
            .iter()
            .filter(|f| f.active_at(scan_s))
            .filter_map(|f| match f.kind {
                FaultKind::ScannerGarbage { share } => Some(share),
                _ => None,
            })
            .fold(0.0, f64::max);
        let extra_noise =
            garbage_share > 0.0 && unit(self.plan.hash(n, SALT_EXTRA_NOISE)) < garbage_share;
        let late_mark_s = s
            .faults
            .iter()
            .filter(|f| f.active_at(scan_s))
            .find_map(|f| match f.kind {
                FaultKind::LateInstructions { late_ms, share } => Some((late_ms, share)),
                _ => None,
            })
            .filter(|(_, share)| {
                parcel.kind.is_readable() && unit(self.plan.hash(parcel.index, SALT_MARK)) < *share
            })
            .map(|(late_ms, _)| scan_s + late_ms as f64 / 1000.0);
        let gap_after = between(s.gap_m, self.plan.hash(n + 1, SALT_GAP));
        self.lead_at_induction_s += (length_m + gap_after) / v;
        self.n += 1;
        Some(BeltParcel {
            n,
            plan_index: parcel.index,
            kind: parcel.kind,
            waybill: parcel.waybill,
            length_m,
            scan_s,
            gate_s,
            noise_before,
            extra_noise,
            late_mark_s,
        })
    }
}
