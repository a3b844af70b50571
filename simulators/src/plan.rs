//! A deterministic parcel plan: which waybills pass the line and what customs says about each.
//!
//! The scanner simulator and the platform simulator run as separate processes (or tasks) and
//! must agree on every parcel without talking to each other: the scanner sends waybill `i`, the
//! platform has declared (or deliberately not declared) the same waybill. Both derive parcel `i`
//! from `(seed, i)` alone through a stateless hash, so any range can be generated in any order,
//! by any process, and a test can compute the lane each parcel must reach.
//!
//! Besides its kind, every parcel has the facts a declaration carries and the line measures
//! ([`Plan::facts`]): enterprise, consumer, value, declared gross weight and the weight the
//! line scale reads. The kinds beyond the platform's own instructions exercise the customs
//! rules of `deploy/rules-demo.toml`: an unverified consumer, a suspended enterprise, a scale
//! reading far above the declaration, a value above the consumer's annual limit, and frequent
//! buyers whose parcels beyond a daily count go to inspection.

use bondline_devices::contract::{Action, LaneRole};

use crate::audit::RuleBook;

/// The enterprise code the platform suspends before it declares anything
/// ([`PlanKind::Suspended`] parcels are declared by it). The other enterprises are
/// `E44030000` to `E44030015`.
pub const SUSPENDED_ENTERPRISE: &str = "E44039999";

/// Parcels per frequent-buyer block: the [`PlanKind::Frequent`] parcels of one block of
/// indices share one consumer.
pub const FREQUENT_BLOCK: u64 = 40;

/// How many parcels a consumer may have per day before the daily limit sends the next ones
/// to inspection: the `max_parcels` of the demo rule set's one-day `consumer_limit`.
pub const FREQUENT_DAILY_LIMIT: u32 = 3;

/// The consumer's annual value limit in fen that [`PlanKind::OverLimit`] parcels exceed on
/// their own: the `max_value_minor` of the demo rule set's 365-day `consumer_limit`.
pub const ANNUAL_LIMIT_MINOR: u64 = 2_600_000;

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
    /// Declared with `identity_verified = false`, released by customs: the identity rule holds
    /// it.
    Unverified,
    /// Declared by [`SUSPENDED_ENTERPRISE`], released by customs: the suspension holds it.
    Suspended,
    /// Declared and released, but the line scale reads far more than the declared gross
    /// weight: the weight rule sends it to inspection (on a weighing scanner).
    Overweight,
    /// Declared and released, with a value above [`ANNUAL_LIMIT_MINOR`] on its own: the
    /// annual consumer limit sends it to inspection whatever came before.
    OverLimit,
    /// Declared and released for a frequent buyer: one of the first [`FREQUENT_DAILY_LIMIT`]
    /// parcels of its block's shared consumer, so within the daily limit.
    Frequent,
    /// Like [`PlanKind::Frequent`], but beyond the daily limit: inspection. Never drawn
    /// directly; a drawn `Frequent` becomes this by its rank in its block.
    FrequentOver,
    /// Declared and released by customs, but the X-ray scanner judges it suspect: the
    /// `xray_suspect` rule sends it to inspection (on a line with an X-ray scanner whose
    /// driver follows the plan, see [`PlanKind::xray_suspect`]).
    XraySuspect,
}

impl PlanKind {
    /// Every kind, in declaration order. The draw walks this order, so kinds added at the end
    /// with weight 0 leave the plans of existing mixes unchanged.
    pub const ALL: [PlanKind; 14] = [
        PlanKind::Release,
        PlanKind::Inspect,
        PlanKind::Hold,
        PlanKind::DeclaredOnly,
        PlanKind::Undeclared,
        PlanKind::NoRead,
        PlanKind::Garbage,
        PlanKind::Unverified,
        PlanKind::Suspended,
        PlanKind::Overweight,
        PlanKind::OverLimit,
        PlanKind::Frequent,
        PlanKind::FrequentOver,
        PlanKind::XraySuspect,
    ];

    /// The lane role a correct controller sends this parcel to, if it is a parcel at all,
    /// under a rule set holding every rule kind the plan exercises (`deploy/rules-demo.toml`)
    /// on a weighing scanner, before random sampling. [`Plan::expected_role_with`] adds the
    /// sampling and a scanner without a scale.
    ///
    /// Everything without a positive release decision fails closed: declared-only and undeclared
    /// parcels go to hold, a no-read to the exception lane. Garbage is skipped by the daemon's
    /// framing and never becomes a parcel, hence `None`. The kinds of the default mix go to the
    /// same lanes under the built-in rule set.
    pub fn expected_role(self) -> Option<LaneRole> {
        match self {
            PlanKind::Release | PlanKind::Frequent => Some(LaneRole::Release),
            PlanKind::Inspect
            | PlanKind::Overweight
            | PlanKind::OverLimit
            | PlanKind::FrequentOver
            | PlanKind::XraySuspect => Some(LaneRole::Inspection),
            PlanKind::Hold
            | PlanKind::DeclaredOnly
            | PlanKind::Undeclared
            | PlanKind::Unverified
            | PlanKind::Suspended => Some(LaneRole::Hold),
            PlanKind::NoRead => Some(LaneRole::Exception),
            PlanKind::Garbage => None,
        }
    }

    /// Whether the platform publishes a declaration for this parcel.
    pub fn is_declared(self) -> bool {
        !matches!(
            self,
            PlanKind::Undeclared | PlanKind::NoRead | PlanKind::Garbage
        )
    }

    /// The customs instruction the platform publishes for this parcel, if any. Every kind
    /// that a local rule stops is released by the platform: the rule, not the instruction,
    /// must keep it off the release lane.
    pub fn instruction(self) -> Option<Action> {
        match self {
            PlanKind::Release
            | PlanKind::Unverified
            | PlanKind::Suspended
            | PlanKind::Overweight
            | PlanKind::OverLimit
            | PlanKind::Frequent
            | PlanKind::FrequentOver
            | PlanKind::XraySuspect => Some(Action::Release),
            PlanKind::Inspect => Some(Action::Inspect),
            PlanKind::Hold => Some(Action::Hold),
            PlanKind::DeclaredOnly
            | PlanKind::Undeclared
            | PlanKind::NoRead
            | PlanKind::Garbage => None,
        }
    }

    /// Whether the scanner sends a readable waybill for this parcel (so a record with that
    /// waybill is expected).
    pub fn is_readable(self) -> bool {
        !matches!(self, PlanKind::NoRead | PlanKind::Garbage)
    }

    /// Whether an X-ray scanner following the plan judges this parcel suspect.
    pub fn xray_suspect(self) -> bool {
        self == PlanKind::XraySuspect
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
    pub unverified: u32,
    pub suspended: u32,
    pub overweight: u32,
    pub over_limit: u32,
    /// Frequent-buyer parcels; those beyond the daily limit in their block become
    /// [`PlanKind::FrequentOver`].
    pub frequent: u32,
    pub xray_suspect: u32,
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
            unverified: 0,
            suspended: 0,
            overweight: 0,
            over_limit: 0,
            frequent: 0,
            xray_suspect: 0,
        }
    }
}

impl Mix {
    /// Every weight 0 (which [`Plan::with_mix`] replaces by the default): a base for struct
    /// update syntax.
    pub const fn none() -> Mix {
        Mix {
            release: 0,
            inspect: 0,
            hold: 0,
            declared_only: 0,
            undeclared: 0,
            no_read: 0,
            garbage: 0,
            unverified: 0,
            suspended: 0,
            overweight: 0,
            over_limit: 0,
            frequent: 0,
            xray_suspect: 0,
        }
    }

    /// The demo's mix: every path of the default mix plus a parcel for every customs rule of
    /// `deploy/rules-demo.toml`, often enough that each shows within a minute at 4 parcels/s.
    pub fn every_rule() -> Mix {
        Mix {
            release: 30,
            inspect: 8,
            hold: 4,
            declared_only: 4,
            undeclared: 8,
            no_read: 4,
            garbage: 2,
            unverified: 6,
            suspended: 6,
            overweight: 8,
            over_limit: 6,
            frequent: 14,
            xray_suspect: 6,
        }
    }

    /// A mix that yields only `kind`, for tests that need one path. `FrequentOver` is never
    /// drawn, so it yields `Frequent` parcels (of which those beyond the limit turn over).
    pub fn only(kind: PlanKind) -> Mix {
        let mut mix = Mix::none();
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
            PlanKind::Unverified => self.unverified,
            PlanKind::Suspended => self.suspended,
            PlanKind::Overweight => self.overweight,
            PlanKind::OverLimit => self.over_limit,
            PlanKind::Frequent => self.frequent,
            // Never drawn: see `PlanKind::FrequentOver`.
            PlanKind::FrequentOver => 0,
            PlanKind::XraySuspect => self.xray_suspect,
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
            PlanKind::Unverified => &mut self.unverified,
            PlanKind::Suspended => &mut self.suspended,
            PlanKind::Overweight => &mut self.overweight,
            PlanKind::OverLimit => &mut self.over_limit,
            PlanKind::Frequent | PlanKind::FrequentOver => &mut self.frequent,
            PlanKind::XraySuspect => &mut self.xray_suspect,
        }
    }

    fn total(&self) -> u64 {
        PlanKind::ALL
            .iter()
            .map(|k| u64::from(self.weight(*k)))
            .sum()
    }
}

/// Salts separating the plan-hash draws of one parcel's facts (0 is the kind draw).
const SALT_ENTERPRISE: u64 = 1;
const SALT_CONSUMER: u64 = 2;
const SALT_VALUE: u64 = 3;
const SALT_WEIGHT: u64 = 4;
const SALT_ITEM: u64 = 5;
const SALT_SCALE: u64 = 6;
const SALT_FREQUENT_CONSUMER: u64 = 7;

const GOODS: [&str; 6] = [
    "infant formula 800g",
    "face cream 50ml",
    "vitamin tablets",
    "running shoes",
    "olive oil 1l",
    "wireless earbuds",
];

/// What the e-commerce side declares for a parcel, and what the line scale reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParcelFacts {
    pub enterprise: String,
    /// The consumer's keyed hash, as the platform sends it.
    pub consumer: String,
    pub identity_verified: bool,
    /// Declared value in fen (CNY).
    pub value_minor: u64,
    pub declared_weight_g: u32,
    /// What the line scale reads, when the scanner station weighs.
    pub measured_weight_g: u32,
    pub goods: &'static str,
    pub quantity: u32,
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
        match self.draw(i) {
            PlanKind::Frequent if self.frequent_rank(i) >= u64::from(FREQUENT_DAILY_LIMIT) => {
                PlanKind::FrequentOver
            }
            kind => kind,
        }
    }

    /// The kind drawn for parcel `i` by the mix alone.
    fn draw(&self, i: u64) -> PlanKind {
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

    /// How many frequent-buyer parcels of `i`'s block come before `i`. The scanner sends
    /// parcels in index order and each is counted in its consumer's history at its scan, so
    /// this is the number of parcels the daemon has seen for the consumer that day.
    fn frequent_rank(&self, i: u64) -> u64 {
        if self.mix.frequent == 0 {
            return 0;
        }
        let block = i - i % FREQUENT_BLOCK;
        (block..i)
            .filter(|j| self.draw(*j) == PlanKind::Frequent)
            .count() as u64
    }

    /// The lane role parcel `p` must reach on a line whose scanner weighs (`weighed`) or not,
    /// with an X-ray scanner following the plan (`xray`) or none, under a rule set described
    /// by `rules` (its random sampling; `None`: no sampling).
    ///
    /// On top of [`PlanKind::expected_role`]: without a scale the weight rule cannot fire, so
    /// an overweight parcel is released; without an X-ray scanner an X-ray suspect parcel is
    /// released; and a parcel that would be released goes to inspection when the rule set's
    /// sampling picks its waybill.
    pub fn expected_role_with(
        &self,
        p: &PlannedParcel,
        weighed: bool,
        xray: bool,
        rules: Option<&RuleBook>,
    ) -> Option<LaneRole> {
        let role = match p.kind {
            PlanKind::Overweight if !weighed => Some(LaneRole::Release),
            PlanKind::XraySuspect if !xray => Some(LaneRole::Release),
            kind => kind.expected_role(),
        };
        match role {
            Some(LaneRole::Release) if rules.is_some_and(|r| r.sampled(&p.waybill)) => {
                Some(LaneRole::Inspection)
            }
            other => other,
        }
    }

    /// What the declaration says of parcel `i` and what the line scale reads.
    ///
    /// Every parcel has its own consumer, a value below 2,000 CNY, one of 16 enterprises and a
    /// scale reading within 2 % of its declared gross weight, so the customs rules leave it
    /// alone unless its kind says otherwise.
    pub fn facts(&self, p: &PlannedParcel) -> ParcelFacts {
        let i = p.index;
        let item = self.hash(i, SALT_ITEM);
        let declared = 100 + (self.hash(i, SALT_WEIGHT) % 4_900) as u32;
        let measured = if p.kind == PlanKind::Overweight {
            // Far beyond any sensible tolerance: 60 % and at least 300 g more.
            declared + (declared * 3 / 5).max(300)
        } else {
            let spread = declared / 50;
            let offset = (self.hash(i, SALT_SCALE) % u64::from(2 * spread + 1)) as u32;
            declared - spread + offset
        };
        let enterprise = if p.kind == PlanKind::Suspended {
            SUSPENDED_ENTERPRISE.to_string()
        } else {
            format!("E{:08}", 44_030_000 + self.hash(i, SALT_ENTERPRISE) % 16)
        };
        let consumer = match p.kind {
            PlanKind::Frequent | PlanKind::FrequentOver => {
                let block = i / FREQUENT_BLOCK;
                format!("{:016x}", self.hash(block, SALT_FREQUENT_CONSUMER))
            }
            _ => format!("{:016x}", self.hash(i, SALT_CONSUMER)),
        };
        let value_minor = if p.kind == PlanKind::OverLimit {
            ANNUAL_LIMIT_MINOR + 1 + self.hash(i, SALT_VALUE) % 400_000
        } else {
            1_000 + self.hash(i, SALT_VALUE) % 200_000
        };
        ParcelFacts {
            enterprise,
            consumer,
            identity_verified: p.kind != PlanKind::Unverified,
            value_minor,
            declared_weight_g: declared,
            measured_weight_g: measured,
            goods: GOODS[(item % GOODS.len() as u64) as usize],
            quantity: 1 + ((item >> 32) % 3) as u32,
        }
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
        // The default mix has the kinds of the built-in rule set's paths only.
        for kind in &PlanKind::ALL[..7] {
            assert!(
                counts.get(kind).copied().unwrap_or(0) > 0,
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
    fn new_kinds_leave_the_default_mix_alone() {
        // The draw of a default-mix plan is what it was before the customs-rule kinds
        // existed (these kinds were taken from that version), so older scenarios keep their
        // parcels.
        use PlanKind::*;
        let plan = Plan::new(1);
        let kinds: Vec<PlanKind> = plan.parcels(0..12).map(|p| p.kind).collect();
        assert_eq!(
            kinds,
            [
                Hold,
                Release,
                Release,
                Release,
                Release,
                Undeclared,
                Release,
                DeclaredOnly,
                Release,
                Release,
                DeclaredOnly,
                Release
            ]
        );
        assert!(plan
            .parcels(0..1000)
            .all(|p| PlanKind::ALL[..7].contains(&p.kind)));
    }

    #[test]
    fn every_rule_mix_has_every_kind_and_honest_facts() {
        let plan = Plan::with_mix(2, Mix::every_rule());
        let mut counts: HashMap<PlanKind, usize> = HashMap::new();
        for p in plan.parcels(0..2000) {
            *counts.entry(p.kind).or_default() += 1;
            let f = plan.facts(&p);
            let diff = f.declared_weight_g.abs_diff(f.measured_weight_g);
            if p.kind == PlanKind::Overweight {
                // Far outside the demo's tolerance (10 % and 50 g).
                assert!(diff >= 300 && diff * 10 > f.declared_weight_g * 5, "{f:?}");
            } else {
                assert!(diff * 50 <= f.declared_weight_g, "{f:?}");
            }
            assert_eq!(f.identity_verified, p.kind != PlanKind::Unverified);
            assert_eq!(
                f.enterprise == SUSPENDED_ENTERPRISE,
                p.kind == PlanKind::Suspended
            );
            assert_eq!(
                f.value_minor > ANNUAL_LIMIT_MINOR,
                p.kind == PlanKind::OverLimit
            );
        }
        for kind in PlanKind::ALL {
            assert!(
                counts.get(&kind).copied().unwrap_or(0) > 0,
                "{kind:?} missing"
            );
        }
    }

    #[test]
    fn frequent_buyers_share_a_consumer_and_turn_over_at_the_limit() {
        let plan = Plan::with_mix(4, Mix::every_rule());
        let mut consumers = HashSet::new();
        for block in 0..50 {
            let start = block * FREQUENT_BLOCK;
            let group: Vec<_> = plan
                .parcels(start..start + FREQUENT_BLOCK)
                .filter(|p| matches!(p.kind, PlanKind::Frequent | PlanKind::FrequentOver))
                .collect();
            // The first `limit` of the block are within the limit, the rest beyond it.
            for (rank, p) in group.iter().enumerate() {
                let within = rank < FREQUENT_DAILY_LIMIT as usize;
                assert_eq!(
                    p.kind == PlanKind::Frequent,
                    within,
                    "block {block} rank {rank}"
                );
            }
            let shared: HashSet<String> = group.iter().map(|p| plan.facts(p).consumer).collect();
            assert!(shared.len() <= 1, "block {block}: {shared:?}");
            assert!(
                shared.iter().all(|c| consumers.insert(c.clone())),
                "blocks share"
            );
        }
        // Everyone else has a consumer of their own.
        let others: Vec<String> = plan
            .parcels(0..2000)
            .filter(|p| !matches!(p.kind, PlanKind::Frequent | PlanKind::FrequentOver))
            .map(|p| plan.facts(&p).consumer)
            .collect();
        let distinct: HashSet<&String> = others.iter().collect();
        assert_eq!(distinct.len(), others.len());
        assert!(others.iter().all(|c| !consumers.contains(c)));
        assert!(plan
            .parcels(0..2000)
            .any(|p| p.kind == PlanKind::FrequentOver));
    }

    #[test]
    fn expected_roles_add_sampling_and_the_missing_scale() {
        let book = RuleBook::demo();
        let plan = Plan::with_mix(6, Mix::every_rule());
        let mut sampled_releases = 0;
        for p in plan.parcels(0..3000) {
            let base = p.kind.expected_role();
            let with = plan.expected_role_with(&p, true, true, Some(&book));
            if base == Some(LaneRole::Release) && book.sampled(&p.waybill) {
                assert_eq!(with, Some(LaneRole::Inspection));
                sampled_releases += 1;
            } else {
                assert_eq!(with, base, "{p:?}");
            }
            assert_eq!(plan.expected_role_with(&p, true, true, None), base);
            let unweighed = plan.expected_role_with(&p, false, true, None);
            if p.kind == PlanKind::Overweight {
                assert_eq!(unweighed, Some(LaneRole::Release));
            } else {
                assert_eq!(unweighed, base);
            }
        }
        assert!(
            sampled_releases > 0,
            "no release was sampled in 3000 parcels"
        );
        // Nothing the platform did not release may be expected in the release lane.
        for kind in PlanKind::ALL {
            if kind.expected_role() == Some(LaneRole::Release) {
                assert_eq!(kind.instruction(), Some(Action::Release));
                assert!(kind.is_declared());
            }
        }
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
