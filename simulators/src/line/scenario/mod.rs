//! Line scenarios: the belt, the lanes, the parcel mix and the faults of one `line-sim` run,
//! read from TOML (see `simulators/scenarios/*.toml`), and the belt model they give.
//!
//! Layout: the scenario's types and queries here; `parse` reads and validates the TOML
//! file; `belt` turns a scenario into its parcels in order ([`Belt`]).

mod belt;
mod parse;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use bondline_devices::contract::LaneRole;
use serde::Deserialize;

use crate::plan::{Mix, Plan};
use crate::plc::PlcOptions;
use crate::xray::{DriverConfig, ImageOrder};

pub use belt::{Belt, BeltParcel};

/// A validated scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    pub name: String,
    /// Seed of the parcel plan (waybills and what customs says) and of the belt's draws.
    pub seed: u64,
    pub length: RunLength,
    pub belt_speed_m_s: f64,
    /// Uniform distribution of parcel lengths, `(min, max)`.
    pub parcel_length_m: (f64, f64),
    /// Uniform distribution of the gaps between parcels, `(min, max)`.
    pub gap_m: (f64, f64),
    /// Positions along the belt from induction; the gate is the divert decision point.
    pub scanner_at_m: f64,
    pub gate_at_m: f64,
    pub lane_roles: LaneRoles,
    /// Lanes with a capacity; lanes not listed never fill.
    pub lanes: Vec<LaneSpec>,
    pub mix: Mix,
    /// The PLC program's lanes (fail-safe, exception, overflow); automatic disposal is off,
    /// since the belt model disposes of each parcel at its gate.
    pub plc: PlcOptions,
    pub faults: Vec<Fault>,
    /// The X-ray tunnel between scanner and gate, if the line has one (`[xray]`).
    pub xray: Option<XrayStage>,
}

/// The line's X-ray tunnel and how its workstation judges (the scenario's `[xray]` table).
/// Each parcel enters the tunnel `scan_to_xray_m` after its leading edge passed the
/// scanner; the verdicts, marks and images follow from [`XrayStage::driver_config`].
#[derive(Debug, Clone, PartialEq)]
pub struct XrayStage {
    /// Distance from the barcode scanner to the tunnel entrance, as the daemon's
    /// `geometry.scan_to_xray_m` (default 0.5 m, the daemon's default too).
    pub scan_to_xray_m: f64,
    /// The X-ray device's Modbus unit id (default 1).
    pub unit: u8,
    /// Share of parcels the automatic judge flags (default 0.05).
    pub suspect_rate: f64,
    /// Share of parcels an officer marks after the verdict (default 0).
    pub mark_rate: f64,
    /// From tunnel entry to the automatic verdict (default 300 ms).
    pub processing_ms: u64,
    /// From the verdict to the officer's mark (default 3000 ms).
    pub mark_latency_ms: u64,
    /// Write each scan's images this long after its verdict; `None` (default): just
    /// before it.
    pub images_after_ms: Option<u64>,
}

impl XrayStage {
    /// The X-ray driver's settings for this stage, seeded from the scenario's seed.
    pub fn driver_config(&self, seed: u64) -> DriverConfig {
        DriverConfig {
            unit: self.unit,
            seed,
            suspect_rate: self.suspect_rate,
            mark_rate: self.mark_rate,
            processing: Duration::from_millis(self.processing_ms),
            mark_latency: Duration::from_millis(self.mark_latency_ms),
            image_order: match self.images_after_ms {
                Some(ms) => ImageOrder::After(Duration::from_millis(ms)),
                None => ImageOrder::Before,
            },
        }
    }
}

/// How long a run lasts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RunLength {
    /// Parcels reach the scanner for this many seconds.
    Seconds(f64),
    /// This many physical parcels pass (garbage frames are not parcels).
    Parcels(u64),
}

/// The line's lane map, as the daemon is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaneRoles {
    pub release: u16,
    pub inspection: u16,
    pub hold: u16,
    pub exception: u16,
}

impl Default for LaneRoles {
    fn default() -> LaneRoles {
        LaneRoles {
            release: 1,
            inspection: 2,
            hold: 3,
            exception: 4,
        }
    }
}

impl LaneRoles {
    pub fn lane(&self, role: LaneRole) -> u16 {
        match role {
            LaneRole::Release => self.release,
            LaneRole::Inspection => self.inspection,
            LaneRole::Hold => self.hold,
            LaneRole::Exception => self.exception,
        }
    }
}

/// A lane that fills: it is full while its count is at or above `capacity`, and the count
/// drains by `drain_per_s` (people emptying the chute into cages).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LaneSpec {
    pub lane: u16,
    pub capacity: u32,
    pub drain_per_s: f64,
}

/// A fault window: `kind` holds from `at_s` for `for_s` seconds of the run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fault {
    pub at_s: f64,
    pub for_s: f64,
    pub kind: FaultKind,
}

impl Fault {
    pub fn active_at(&self, t_s: f64) -> bool {
        t_s >= self.at_s && t_s < self.at_s + self.for_s
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FaultKind {
    /// The PLC is off the network (connections closed, see `PlcState::set_down`).
    PlcDown,
    /// The PLC acknowledges each divert only after `ack_delay_ms`.
    PlcSlow { ack_delay_ms: u64 },
    /// The PLC answers every request with an exception (stop mode).
    PlcRefuse,
    /// Each parcel scanned in the window is preceded by an extra garbage frame with
    /// probability `share`.
    ScannerGarbage { share: f64 },
    /// Lane `lane` reports full for the window, whatever its count.
    LaneFull { lane: u16 },
    /// For each readable parcel scanned in the window (with probability `share`), the
    /// platform publishes an inspect instruction `late_ms` after the parcel passed the scanner:
    /// a late X-ray mark. Below the scanner-to-gate time the daemon can still re-divert it.
    LateInstructions { late_ms: u64, share: f64 },
}

impl FaultKind {
    pub fn name(&self) -> &'static str {
        match self {
            FaultKind::PlcDown => "plc_down",
            FaultKind::PlcSlow { .. } => "plc_slow",
            FaultKind::PlcRefuse => "plc_refuse",
            FaultKind::ScannerGarbage { .. } => "scanner_garbage",
            FaultKind::LaneFull { .. } => "lane_full",
            FaultKind::LateInstructions { .. } => "late_instructions",
        }
    }
}

/// What the PLC faults amount to at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PlcFaults {
    pub down: bool,
    pub refuse: bool,
    pub ack_delay: Duration,
    pub full_lanes: BTreeSet<u16>,
}

/// Why a scenario cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read scenario {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("scenario is not valid TOML for a scenario: {0}")]
    Syntax(String),
    #[error("scenario field `{field}`: {message}")]
    Invalid { field: String, message: String },
    #[error("scenario {path}: {source}")]
    File {
        path: PathBuf,
        source: Box<ScenarioError>,
    },
}

impl Scenario {
    /// The same scenario `factor` times shorter, for tests: the run (seconds or parcel count)
    /// and every fault window's start and length are divided by `factor`; the belt, its
    /// parcels and their rate stay as they are. Factors below 1 (or not finite) are taken as 1.
    pub fn shortened(&self, factor: f64) -> Scenario {
        let f = if factor.is_finite() && factor >= 1.0 {
            factor
        } else {
            1.0
        };
        let mut s = self.clone();
        s.length = match self.length {
            RunLength::Seconds(d) => RunLength::Seconds(d / f),
            RunLength::Parcels(n) => RunLength::Parcels(((n as f64 / f).ceil() as u64).max(1)),
        };
        for fault in &mut s.faults {
            fault.at_s /= f;
            fault.for_s /= f;
        }
        s
    }

    /// The plan whose parcels this scenario's belt carries.
    pub fn plan(&self) -> Plan {
        Plan::with_mix(self.seed, self.mix)
    }

    /// Seconds from a parcel's leading edge at the scanner to it at the gate.
    pub fn scanner_to_gate_s(&self) -> f64 {
        (self.gate_at_m - self.scanner_at_m) / self.belt_speed_m_s
    }

    /// Seconds from a parcel's leading edge at the scanner to it entering the X-ray tunnel;
    /// `None` without an X-ray stage.
    pub fn scanner_to_xray_s(&self) -> Option<f64> {
        self.xray
            .as_ref()
            .map(|x| x.scan_to_xray_m / self.belt_speed_m_s)
    }

    /// Mean parcels per second the belt carries: speed over mean pitch (length plus gap).
    pub fn mean_rate_per_s(&self) -> f64 {
        let pitch = (self.parcel_length_m.0 + self.parcel_length_m.1) / 2.0
            + (self.gap_m.0 + self.gap_m.1) / 2.0;
        self.belt_speed_m_s / pitch
    }

    /// The PLC faults in force at `t_s` seconds into the run.
    pub fn plc_faults_at(&self, t_s: f64) -> PlcFaults {
        let mut out = PlcFaults::default();
        for f in self.faults.iter().filter(|f| f.active_at(t_s)) {
            match f.kind {
                FaultKind::PlcDown => out.down = true,
                FaultKind::PlcRefuse => out.refuse = true,
                FaultKind::PlcSlow { ack_delay_ms } => {
                    out.ack_delay = out.ack_delay.max(Duration::from_millis(ack_delay_ms));
                }
                FaultKind::LaneFull { lane } => {
                    out.full_lanes.insert(lane);
                }
                FaultKind::ScannerGarbage { .. } | FaultKind::LateInstructions { .. } => {}
            }
        }
        out
    }

    /// The seconds into the run at which the PLC faults change.
    pub fn fault_boundaries(&self) -> Vec<f64> {
        let mut out: Vec<f64> = self
            .faults
            .iter()
            .flat_map(|f| [f.at_s, f.at_s + f.for_s])
            .collect();
        out.sort_by(f64::total_cmp);
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::PlanKind;

    const MINIMAL: &str = r#"
name = "t"
seed = 1
duration_s = 10
belt_speed_m_s = 2.0
parcel_length_m = [0.2, 0.4]
gap_m = [0.1, 0.3]
scanner_at_m = 1.0
gate_at_m = 4.0
"#;

    fn err(text: &str) -> String {
        match Scenario::from_toml(text) {
            Ok(s) => panic!("accepted: {s:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn minimal_scenario_has_defaults() {
        let s = Scenario::from_toml(MINIMAL).expect("valid");
        assert_eq!(s.length, RunLength::Seconds(10.0));
        assert_eq!(s.lane_roles, LaneRoles::default());
        assert_eq!(s.mix, Mix::default());
        assert_eq!(
            (
                s.plc.fail_safe_lane,
                s.plc.overflow_lane,
                s.plc.exception_lane
            ),
            (3, 3, 4)
        );
        assert!((s.scanner_to_gate_s() - 1.5).abs() < 1e-9);
        assert!(s.lanes.is_empty() && s.faults.is_empty());
        assert_eq!((&s.xray, s.scanner_to_xray_s()), (&None, None));
    }

    #[test]
    fn xray_stage_has_defaults_and_lies_between_scanner_and_gate() {
        let s = Scenario::from_toml(&format!("{MINIMAL}[xray]\n")).expect("valid");
        let x = s.xray.clone().expect("stage");
        assert_eq!(
            x,
            XrayStage {
                scan_to_xray_m: 0.5,
                unit: 1,
                suspect_rate: 0.05,
                mark_rate: 0.0,
                processing_ms: 300,
                mark_latency_ms: 3000,
                images_after_ms: None,
            }
        );
        assert_eq!(s.scanner_to_xray_s(), Some(0.25));
        let d = x.driver_config(9);
        assert_eq!((d.unit, d.seed, d.image_order), (1, 9, ImageOrder::Before));
        let s = Scenario::from_toml(&format!(
            "{MINIMAL}[xray]\nscan_to_xray_m = 1.0\nunit = 3\nimages_after_ms = 200\n"
        ))
        .expect("valid");
        let d = s.xray.expect("stage").driver_config(1);
        assert_eq!(
            (d.unit, d.image_order),
            (3, ImageOrder::After(Duration::from_millis(200)))
        );
        for (extra, want) in [
            ("scan_to_xray_m = 3.0\n", "xray.scan_to_xray_m"),
            ("scan_to_xray_m = -1.0\n", "xray.scan_to_xray_m"),
            ("unit = 0\n", "xray.unit"),
            ("suspect_rate = 2.0\n", "xray.suspect_rate"),
            ("processing_ms = 70000\n", "xray.processing_ms"),
            ("tunnel = 1\n", "unknown field `tunnel`"),
        ] {
            let e = err(&format!("{MINIMAL}[xray]\n{extra}"));
            assert!(e.contains(want), "{extra:?}: {e}");
        }
    }

    #[test]
    fn validation_errors_name_the_field() {
        let cases: &[(&str, &str)] = &[
            ("bogus = 1\n", "unknown field `bogus`"),
            ("parcels = 5\n", "exactly one of `duration_s` and `parcels`"),
            ("[plc]\nfail_safe_lane = 1\n", "plc.fail_safe_lane"),
            ("[lane_roles]\nrelease = 2\ninspection = 2\nhold = 3\nexception = 4\n", "lane_roles.inspection"),
            ("[lane_roles]\nrelease = 1\ninspection = 2\nhold = 3\nexception = 17\n", "lane 17 does not exist"),
            ("[mix]\ngarbage = 5\n", "mix"),
            ("[mix]\nsmuggled = 5\n", "unknown field `smuggled`"),
            ("[[lanes]]\nlane = 1\ncapacity = 0\ndrain_per_s = 1\n", "lanes[0].capacity"),
            ("[[lanes]]\nlane = 1\ncapacity = 5\ndrain_per_s = 1\n[[lanes]]\nlane = 1\ncapacity = 5\ndrain_per_s = 1\n", "listed twice"),
            ("[[faults]]\nat_s = 1\nfor_s = 1\nkind = \"lane_full\"\n", "`faults[0].lane`: is required for kind `lane_full`"),
            ("[[faults]]\nat_s = 1\nfor_s = 1\nkind = \"plc_down\"\nlane = 2\n", "`faults[0].lane`: is not a parameter of kind `plc_down`"),
            ("[[faults]]\nat_s = 1\nfor_s = 1\nkind = \"scanner_garbage\"\nshare = 1.5\n", "faults[0].share"),
            ("[[faults]]\nat_s = 1\nfor_s = 1\nkind = \"plc_slow\"\n", "`faults[0].ack_delay_ms`: is required"),
            ("[[faults]]\nat_s = 20\nfor_s = 1\nkind = \"plc_down\"\n", "after the run ends"),
            ("[[faults]]\nat_s = 1\nfor_s = 1\nkind = \"meteor\"\n", "unknown variant `meteor`"),
        ];
        for (extra, want) in cases {
            let e = err(&format!("{MINIMAL}{extra}"));
            assert!(e.contains(want), "{extra:?}: {e}");
        }
        let e = err(&MINIMAL.replace("gate_at_m = 4.0", "gate_at_m = 0.5"));
        assert!(e.contains("gate_at_m"), "{e}");
        let e = err(&MINIMAL.replace("[0.2, 0.4]", "[0.4, 0.2]"));
        assert!(e.contains("parcel_length_m"), "{e}");
        let e = err(&MINIMAL.replace("belt_speed_m_s = 2.0", "belt_speed_m_s = nan"));
        assert!(e.contains("belt_speed_m_s"), "{e}");
        let e = err(&MINIMAL
            .replace("[0.2, 0.4]", "[0.01, 0.01]")
            .replace("[0.1, 0.3]", "[0.0, 0.0]")
            .replace("belt_speed_m_s = 2.0", "belt_speed_m_s = 4.0"));
        assert!(e.contains("parcels/s"), "{e}");
        let e = err("name = \"t\"\nseed = ");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn belt_is_deterministic_and_spaced() {
        let s = Scenario::from_toml(MINIMAL).expect("valid");
        let a: Vec<_> = s.belt().collect();
        let b: Vec<_> = s.belt().collect();
        assert_eq!(a, b);
        assert!(!a.is_empty());
        for w in a.windows(2) {
            let (p, q) = (&w[0], &w[1]);
            // The next leading edge is at least this parcel's length plus the smallest gap
            // behind, at most its length plus the largest gap.
            let dt = q.scan_s - p.scan_s;
            assert!(dt >= (p.length_m + 0.1) / 2.0 - 1e-9, "{dt}");
            assert!(dt <= (p.length_m + 0.3) / 2.0 + 1e-9, "{dt}");
            assert!((p.gate_s - p.scan_s - 1.5).abs() < 1e-9);
            assert!(q.plan_index > p.plan_index);
            assert_eq!(q.n, p.n + 1);
        }
        assert!(a
            .iter()
            .all(|p| p.kind != PlanKind::Garbage && p.scan_s <= 10.0));
        // Every plan index is accounted for: a parcel or noise ahead of one.
        let mut seen: Vec<u64> = a
            .iter()
            .flat_map(|p| p.noise_before.iter().copied().chain([p.plan_index]))
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..seen.len() as u64).collect::<Vec<_>>());
        let counted = Scenario {
            length: RunLength::Parcels(7),
            ..s
        };
        assert_eq!(counted.belt().count(), 7);
    }

    #[test]
    fn faults_mark_parcels_and_plc_state() {
        let text = format!(
            "{MINIMAL}[[faults]]\nat_s = 2\nfor_s = 3\nkind = \"scanner_garbage\"\nshare = 1.0\n\
             [[faults]]\nat_s = 6\nfor_s = 2\nkind = \"late_instructions\"\nlate_ms = 400\n\
             [[faults]]\nat_s = 1\nfor_s = 2\nkind = \"plc_slow\"\nack_delay_ms = 300\n\
             [[faults]]\nat_s = 2\nfor_s = 2\nkind = \"lane_full\"\nlane = 2\n"
        );
        let s = Scenario::from_toml(&text).expect("valid");
        for p in s.belt() {
            assert_eq!(p.extra_noise, (2.0..5.0).contains(&p.scan_s), "{p:?}");
            let marked = (6.0..8.0).contains(&p.scan_s) && p.kind.is_readable();
            assert_eq!(p.late_mark_s.is_some(), marked, "{p:?}");
            if let Some(m) = p.late_mark_s {
                assert!((m - p.scan_s - 0.4).abs() < 1e-9);
            }
        }
        assert_eq!(s.plc_faults_at(0.5), PlcFaults::default());
        let f = s.plc_faults_at(2.5);
        assert_eq!(f.ack_delay, Duration::from_millis(300));
        assert_eq!(f.full_lanes.into_iter().collect::<Vec<_>>(), vec![2]);
        assert!(
            s.plc_faults_at(3.0).ack_delay.is_zero(),
            "window is half-open"
        );
        assert_eq!(
            s.fault_boundaries(),
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0]
        );
    }

    #[test]
    fn shortened_scales_run_and_faults() {
        let text = format!("{MINIMAL}[[faults]]\nat_s = 4\nfor_s = 2\nkind = \"plc_down\"\n");
        let s = Scenario::from_toml(&text).expect("valid").shortened(4.0);
        assert_eq!(s.length, RunLength::Seconds(2.5));
        assert_eq!((s.faults[0].at_s, s.faults[0].for_s), (1.0, 0.5));
        assert_eq!(s.belt_speed_m_s, 2.0);
        let same = s.shortened(0.5);
        assert_eq!(same, s);
    }
}
