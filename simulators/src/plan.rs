//! A deterministic parcel plan: which waybills pass the line and what customs says about each.
//!
//! The scanner simulator and the platform simulator run as separate processes (or tasks) and
//! must agree on every parcel without talking to each other: the scanner sends waybill `i`, the
//! platform has declared (or deliberately not declared) the same waybill. Both derive parcel `i`
//! from `(seed, i)` alone through a stateless hash, so any range can be generated in any order,
//! by any process, and a test can compute the lane each parcel must reach.

use bondline_devices::contract::{Action, LaneRole};

/// What the plan makes of one parcel, seen from the platform and the scanner together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PlanKind {
    /// Declared and released by customs.
    Release,
    /// Declared and selected for inspection.
    Inspect,
    /// Declared and held by customs.
    Hold,
    /// Declared, but customs never sends an instruction.
    DeclaredOnly,
    /// Read by the scanner but never declared.
    Undeclared,
    /// The scanner saw the parcel but read no code.
    NoRead,
    /// The scanner emits bytes that are not a usable frame; there is no parcel.
    Garbage,
}

impl PlanKind {
    /// Every kind, in declaration order.
    pub const ALL: [PlanKind; 7] = [
        PlanKind::Release,
        PlanKind::Inspect,
        PlanKind::Hold,
        PlanKind::DeclaredOnly,
        PlanKind::Undeclared,
        PlanKind::NoRead,
        PlanKind::Garbage,
    ];

    /// The lane role a correct controller sends this parcel to, if it is a parcel at all.
    ///
    /// Everything without a positive release decision fails closed: declared-only and undeclared
    /// parcels go to hold, a no-read to the exception lane. Garbage is skipped by the daemon's
    /// framing and never becomes a parcel, hence `None`.
    pub fn expected_role(self) -> Option<LaneRole> {
        match self {
            PlanKind::Release => Some(LaneRole::Release),
            PlanKind::Inspect => Some(LaneRole::Inspection),
            PlanKind::Hold | PlanKind::DeclaredOnly | PlanKind::Undeclared => Some(LaneRole::Hold),
            PlanKind::NoRead => Some(LaneRole::Exception),
            PlanKind::Garbage => None,
        }
    }

    /// Whether the platform publishes a declaration for this parcel.
    pub fn is_declared(self) -> bool {
        matches!(
            self,
            PlanKind::Release | PlanKind::Inspect | PlanKind::Hold | PlanKind::DeclaredOnly
        )
    }

    /// The customs instruction the platform publishes for this parcel, if any.
    pub fn instruction(self) -> Option<Action> {
        match self {
            PlanKind::Release => Some(Action::Release),
            PlanKind::Inspect => Some(Action::Inspect),
            PlanKind::Hold => Some(Action::Hold),
            _ => None,
        }
    }

    /// Whether the scanner sends a readable waybill for this parcel (so a record with that
    /// waybill is expected).
    pub fn is_readable(self) -> bool {
        !matches!(self, PlanKind::NoRead | PlanKind::Garbage)
    }
}

/// Relative weights of the plan kinds. Only ratios matter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix {
    pub release: u32,
    pub inspect: u32,
    pub hold: u32,
    pub declared_only: u32,
    pub undeclared: u32,
    pub no_read: u32,
    pub garbage: u32,
}

impl Default for Mix {
    /// Mostly releases, with every failure path exercised often enough to show in a short run.
    fn default() -> Mix {
        Mix {
            release: 40,
            inspect: 15,
            hold: 5,
            declared_only: 10,
            undeclared: 15,
            no_read: 10,
            garbage: 5,
        }
    }
}

impl Mix {
    /// A mix that yields only `kind`, for tests that need one path.
    pub fn only(kind: PlanKind) -> Mix {
        let mut mix = Mix {
            release: 0,
            inspect: 0,
            hold: 0,
            declared_only: 0,
            undeclared: 0,
            no_read: 0,
            garbage: 0,
        };
        *mix.weight_mut(kind) = 1;
        mix
    }

    fn weight(&self, kind: PlanKind) -> u32 {
        match kind {
            PlanKind::Release => self.release,
            PlanKind::Inspect => self.inspect,
            PlanKind::Hold => self.hold,
            PlanKind::DeclaredOnly => self.declared_only,
            PlanKind::Undeclared => self.undeclared,
            PlanKind::NoRead => self.no_read,
            PlanKind::Garbage => self.garbage,
        }
    }

    fn weight_mut(&mut self, kind: PlanKind) -> &mut u32 {
        match kind {
            PlanKind::Release => &mut self.release,
            PlanKind::Inspect => &mut self.inspect,
            PlanKind::Hold => &mut self.hold,
            PlanKind::DeclaredOnly => &mut self.declared_only,
            PlanKind::Undeclared => &mut self.undeclared,
            PlanKind::NoRead => &mut self.no_read,
            PlanKind::Garbage => &mut self.garbage,
        }
    }

    fn total(&self) -> u64 {
        PlanKind::ALL
            .iter()
            .map(|k| u64::from(self.weight(*k)))
            .sum()
    }
}

/// A parcel plan: parcel `i` is a pure function of `(seed, i)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    seed: u64,
    mix: Mix,
}

/// One parcel of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PlannedParcel {
    pub index: u64,
    pub waybill: String,
    pub kind: PlanKind,
}

impl Plan {
    /// A plan with the default mix.
    pub fn new(seed: u64) -> Plan {
        Plan::with_mix(seed, Mix::default())
    }

    /// A plan with the given weights. An all-zero mix cannot choose anything and is replaced by
    /// the default mix rather than failing, since the weights usually come from a test table.
    pub fn with_mix(seed: u64, mix: Mix) -> Plan {
        let mix = if mix.total() == 0 {
            Mix::default()
        } else {
            mix
        };
        Plan { seed, mix }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn mix(&self) -> &Mix {
        &self.mix
    }

    /// Parcel `i` of the plan.
    ///
    /// The waybill is `BL` + the seed modulo 10000 (4 digits) + the index (at least 8 digits):
    /// 14 to 26 ASCII alphanumerics, inside every built-in scanner profile's length bounds, and
    /// unique within a plan. Seeds equal modulo 10000 share waybills (with different kinds), so
    /// use seeds below 10000 when plans must not collide.
    pub fn parcel(&self, i: u64) -> PlannedParcel {
        PlannedParcel {
            index: i,
            waybill: self.waybill(i),
            kind: self.kind(i),
        }
    }

    /// Parcels `range` in index order.
    pub fn parcels(&self, range: std::ops::Range<u64>) -> impl Iterator<Item = PlannedParcel> + '_ {
        range.map(move |i| self.parcel(i))
    }

    /// The index of the parcel carrying `waybill` in this plan, if any.
    pub fn index_of(&self, waybill: &str) -> Option<u64> {
        let rest = waybill.strip_prefix(&format!("BL{:04}", self.seed % 10_000))?;
        if rest.len() < 8 || !rest.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let i: u64 = rest.parse().ok()?;
        // Rejects non-canonical spellings such as extra leading zeros.
        (self.waybill(i) == waybill).then_some(i)
    }

    fn waybill(&self, i: u64) -> String {
        format!("BL{:04}{:08}", self.seed % 10_000, i)
    }

    fn kind(&self, i: u64) -> PlanKind {
        let mut pick = self.hash(i, 0) % self.mix.total();
        for kind in PlanKind::ALL {
            let w = u64::from(self.mix.weight(kind));
            if pick < w {
                return kind;
            }
            pick -= w;
        }
        // Unreachable: `pick < total` and the weights sum to `total`.
        PlanKind::Garbage
    }

    /// A well-mixed 64-bit value for parcel `i`; `salt` separates independent draws (kind,
    /// declared value, consumer, ...) for the same parcel.
    pub fn hash(&self, i: u64, salt: u64) -> u64 {
        splitmix64(splitmix64(self.seed ^ salt.wrapping_mul(0xA076_1D64_78BD_642F)) ^ i)
    }
}

/// The splitmix64 finaliser: a cheap, stateless, well-distributed 64-bit mix.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    #[test]
    fn deterministic_per_seed_and_index() {
        let a = Plan::new(7);
        let b = Plan::new(7);
        let fwd: Vec<_> = a.parcels(0..200).collect();
        let back: Vec<_> = (0..200).rev().map(|i| b.parcel(i)).collect();
        assert_eq!(fwd, back.into_iter().rev().collect::<Vec<_>>());
        let other: Vec<_> = Plan::new(8).parcels(0..200).map(|p| p.kind).collect();
        assert_ne!(fwd.iter().map(|p| p.kind).collect::<Vec<_>>(), other);
    }

    #[test]
    fn every_kind_appears_in_default_mix() {
        let plan = Plan::new(1);
        let mut counts: HashMap<PlanKind, usize> = HashMap::new();
        for p in plan.parcels(0..1000) {
            *counts.entry(p.kind).or_default() += 1;
        }
        for kind in PlanKind::ALL {
            assert!(
                counts.get(&kind).copied().unwrap_or(0) > 0,
                "{kind:?} missing"
            );
        }
        // Roughly proportional: release is 40 % of the default mix.
        let release = counts[&PlanKind::Release];
        assert!((300..500).contains(&release), "release {release}");
    }

    #[test]
    fn waybills_unique_and_acceptable_to_framing() {
        let plan = Plan::new(12_345);
        let mut seen = HashSet::new();
        for p in plan.parcels(0..1000).chain([plan.parcel(u64::MAX)]) {
            assert!((6..=40).contains(&p.waybill.len()), "{}", p.waybill);
            assert!(p.waybill.bytes().all(|b| b.is_ascii_alphanumeric()));
            assert!(seen.insert(p.waybill.clone()), "duplicate {}", p.waybill);
            assert_eq!(plan.index_of(&p.waybill), Some(p.index));
        }
        assert_eq!(plan.parcel(3).waybill, "BL234500000003");
        assert_eq!(plan.index_of("BL2345000000003"), None);
        assert_eq!(plan.index_of("BL9999000000003"), None);
        assert_eq!(plan.index_of("BL23450000x003"), None);
    }

    #[test]
    fn kinds_are_consistent() {
        for kind in PlanKind::ALL {
            if kind.instruction().is_some() {
                assert!(kind.is_declared());
            }
            assert_eq!(kind.expected_role().is_none(), kind == PlanKind::Garbage);
        }
        assert_eq!(PlanKind::DeclaredOnly.expected_role(), Some(LaneRole::Hold));
    }

    #[test]
    fn single_kind_mix_and_zero_mix() {
        let plan = Plan::with_mix(3, Mix::only(PlanKind::NoRead));
        assert!(plan.parcels(0..100).all(|p| p.kind == PlanKind::NoRead));
        let zero = Mix {
            no_read: 0,
            ..Mix::only(PlanKind::NoRead)
        };
        assert_eq!(Plan::with_mix(3, zero).mix(), &Mix::default());
    }
}
