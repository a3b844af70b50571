//! The scenario file: its TOML form, read as is, and the validation that turns it into a
//! [`Scenario`] or an error naming the field. Kept apart from the scenario's queries so the
//! file format's checks and limits are read in one place.

use std::path::Path;

use bondline_devices::contract::LaneRole;
use serde::Deserialize;

use super::{Fault, FaultKind, LaneRoles, LaneSpec, RunLength, Scenario, ScenarioError, XrayStage};
use crate::plan::Mix;
use crate::plc::{PlcOptions, LANES};
use crate::xray::MAX_UNIT;

/// Longest run a scenario may ask for: the simulator keeps one small trace per parcel.
const MAX_DURATION_S: f64 = 24.0 * 3600.0;
const MAX_PARCELS: u64 = 2_000_000;
/// More parcels per second than this is no sorter and would only load the machine.
const MAX_RATE_PER_S: f64 = 200.0;

impl Scenario {
    /// Parses and validates a scenario. Errors name the field and what it must be.
    pub fn from_toml(text: &str) -> Result<Scenario, ScenarioError> {
        let raw: RawScenario =
            toml::from_str(text).map_err(|e| ScenarioError::Syntax(e.to_string()))?;
        raw.validate()
    }

    /// Reads and validates a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Scenario::from_toml(&text).map_err(|e| ScenarioError::File {
            path: path.to_path_buf(),
            source: Box::new(e),
        })
    }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> ScenarioError {
    ScenarioError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: String,
    seed: u64,
    duration_s: Option<f64>,
    parcels: Option<u64>,
    belt_speed_m_s: f64,
    parcel_length_m: [f64; 2],
    gap_m: [f64; 2],
    scanner_at_m: f64,
    gate_at_m: f64,
    #[serde(default)]
    lane_roles: LaneRoles,
    #[serde(default)]
    lanes: Vec<RawLane>,
    mix: Option<RawMix>,
    #[serde(default)]
    plc: RawPlc,
    #[serde(default)]
    faults: Vec<RawFault>,
    xray: Option<RawXray>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawXray {
    scan_to_xray_m: Option<f64>,
    unit: Option<u8>,
    suspect_rate: Option<f64>,
    mark_rate: Option<f64>,
    processing_ms: Option<u64>,
    mark_latency_ms: Option<u64>,
    images_after_ms: Option<u64>,
}

impl RawXray {
    /// Checks the stage against the belt: the tunnel lies between scanner and gate.
    fn validate(self, scanner_to_gate_m: f64) -> Result<XrayStage, ScenarioError> {
        let at = self.scan_to_xray_m.unwrap_or(0.5);
        if !(at.is_finite() && at >= 0.0 && at < scanner_to_gate_m) {
            return Err(invalid(
                "xray.scan_to_xray_m",
                format!(
                    "must be from 0 to less than the {scanner_to_gate_m} m from scanner to gate, \
                     not {at}"
                ),
            ));
        }
        let unit = self.unit.unwrap_or(1);
        if !(1..=MAX_UNIT).contains(&unit) {
            return Err(invalid(
                "xray.unit",
                format!("must be from 1 to {MAX_UNIT}, not {unit}"),
            ));
        }
        let ms = |field: &str, v: Option<u64>, default: u64| match v.unwrap_or(default) {
            v if v <= 60_000 => Ok(v),
            v => Err(invalid(
                format!("xray.{field}"),
                format!("must be at most 60000, not {v}"),
            )),
        };
        Ok(XrayStage {
            scan_to_xray_m: at,
            unit,
            suspect_rate: range(
                "xray.suspect_rate",
                self.suspect_rate.unwrap_or(0.05),
                0.0,
                1.0,
            )?,
            mark_rate: range("xray.mark_rate", self.mark_rate.unwrap_or(0.0), 0.0, 1.0)?,
            processing_ms: ms("processing_ms", self.processing_ms, 300)?,
            mark_latency_ms: ms("mark_latency_ms", self.mark_latency_ms, 3000)?,
            images_after_ms: self
                .images_after_ms
                .map(|v| ms("images_after_ms", Some(v), 0))
                .transpose()?,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLane {
    lane: u16,
    capacity: u32,
    drain_per_s: f64,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawMix {
    release: u32,
    inspect: u32,
    hold: u32,
    declared_only: u32,
    undeclared: u32,
    no_read: u32,
    garbage: u32,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPlc {
    fail_safe_lane: Option<u16>,
    overflow_lane: Option<u16>,
    exception_lane: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFault {
    at_s: f64,
    for_s: f64,
    kind: RawFaultKind,
    ack_delay_ms: Option<u64>,
    share: Option<f64>,
    lane: Option<u16>,
    late_ms: Option<u64>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum RawFaultKind {
    PlcDown,
    PlcSlow,
    PlcRefuse,
    ScannerGarbage,
    LaneFull,
    LateInstructions,
}

/// Checks `v` is a finite number within `lo..=hi`.
fn range(field: &str, v: f64, lo: f64, hi: f64) -> Result<f64, ScenarioError> {
    if v.is_finite() && v >= lo && v <= hi {
        Ok(v)
    } else {
        Err(invalid(
            field,
            format!("must be from {lo} to {hi}, not {v}"),
        ))
    }
}

fn lane_no(field: &str, lane: u16) -> Result<u16, ScenarioError> {
    if (1..=LANES).contains(&lane) {
        Ok(lane)
    } else {
        Err(invalid(
            field,
            format!("lane {lane} does not exist; lanes are 1 to {LANES}"),
        ))
    }
}

impl RawScenario {
    fn validate(self) -> Result<Scenario, ScenarioError> {
        if self.name.trim().is_empty() {
            return Err(invalid("name", "must not be empty"));
        }
        let length = match (self.duration_s, self.parcels) {
            (Some(d), None) => RunLength::Seconds(range("duration_s", d, 0.001, MAX_DURATION_S)?),
            (None, Some(n)) if (1..=MAX_PARCELS).contains(&n) => RunLength::Parcels(n),
            (None, Some(n)) => {
                return Err(invalid(
                    "parcels",
                    format!("must be from 1 to {MAX_PARCELS}, not {n}"),
                ))
            }
            _ => {
                return Err(invalid(
                    "duration_s",
                    "give exactly one of `duration_s` and `parcels`",
                ))
            }
        };
        let speed = range("belt_speed_m_s", self.belt_speed_m_s, 0.01, 10.0)?;
        let [lmin, lmax] = self.parcel_length_m;
        range("parcel_length_m", lmin, 0.01, 5.0)?;
        range("parcel_length_m", lmax, lmin, 5.0)
            .map_err(|_| invalid("parcel_length_m", "must be [min, max] with min <= max <= 5"))?;
        let [gmin, gmax] = self.gap_m;
        range("gap_m", gmin, 0.0, 100.0)?;
        range("gap_m", gmax, gmin, 100.0)
            .map_err(|_| invalid("gap_m", "must be [min, max] with min <= max <= 100"))?;
        range("scanner_at_m", self.scanner_at_m, 0.0, 1000.0)?;
        if !(self.gate_at_m.is_finite() && self.gate_at_m > self.scanner_at_m)
            || self.gate_at_m > 1000.0
        {
            return Err(invalid(
                "gate_at_m",
                format!(
                    "must be after the scanner ({} m) and at most 1000 m",
                    self.scanner_at_m
                ),
            ));
        }

        let roles = self.lane_roles;
        for role in LaneRole::ALL {
            lane_no(&format!("lane_roles.{}", role.as_str()), roles.lane(role))?;
        }
        for role in [LaneRole::Inspection, LaneRole::Hold, LaneRole::Exception] {
            if roles.lane(role) == roles.release {
                return Err(invalid(
                    format!("lane_roles.{}", role.as_str()),
                    "must not be the release lane",
                ));
            }
        }

        let mut lanes = Vec::with_capacity(self.lanes.len());
        for (i, l) in self.lanes.into_iter().enumerate() {
            let field = |f: &str| format!("lanes[{i}].{f}");
            lane_no(&field("lane"), l.lane)?;
            if lanes.iter().any(|o: &LaneSpec| o.lane == l.lane) {
                return Err(invalid(
                    field("lane"),
                    format!("lane {} listed twice", l.lane),
                ));
            }
            if l.capacity == 0 {
                return Err(invalid(field("capacity"), "must be at least 1"));
            }
            range(&field("drain_per_s"), l.drain_per_s, 0.0, 10_000.0)?;
            lanes.push(LaneSpec {
                lane: l.lane,
                capacity: l.capacity,
                drain_per_s: l.drain_per_s,
            });
        }

        let mix = match self.mix {
            None => Mix::default(),
            Some(m) => Mix {
                release: m.release,
                inspect: m.inspect,
                hold: m.hold,
                declared_only: m.declared_only,
                undeclared: m.undeclared,
                no_read: m.no_read,
                garbage: m.garbage,
                // Scenarios run the daemon's rule set of their configuration; the kinds for
                // the demo's customs rules are not part of a scenario's mix.
                ..Mix::none()
            },
        };
        let parcels_weight = [
            mix.release,
            mix.inspect,
            mix.hold,
            mix.declared_only,
            mix.undeclared,
            mix.no_read,
        ]
        .iter()
        .map(|w| u64::from(*w))
        .sum::<u64>();
        if parcels_weight == 0 {
            return Err(invalid(
                "mix",
                "needs a weight above 0 on a kind other than garbage (a belt of noise has no parcels)",
            ));
        }

        let plc = PlcOptions {
            fail_safe_lane: lane_no(
                "plc.fail_safe_lane",
                self.plc.fail_safe_lane.unwrap_or(roles.hold),
            )?,
            exception_lane: lane_no(
                "plc.exception_lane",
                self.plc.exception_lane.unwrap_or(roles.exception),
            )?,
            overflow_lane: lane_no(
                "plc.overflow_lane",
                self.plc.overflow_lane.unwrap_or(roles.hold),
            )?,
            auto_dispose_after: None,
        };
        for (field, lane) in [
            ("plc.fail_safe_lane", plc.fail_safe_lane),
            ("plc.exception_lane", plc.exception_lane),
            ("plc.overflow_lane", plc.overflow_lane),
        ] {
            if lane == roles.release {
                return Err(invalid(
                    field,
                    "must not be the release lane: the PLC's own defaults fail closed",
                ));
            }
        }

        let run_s = match length {
            RunLength::Seconds(d) => Some(d),
            RunLength::Parcels(_) => None,
        };
        let mut faults = Vec::with_capacity(self.faults.len());
        for (i, f) in self.faults.into_iter().enumerate() {
            faults.push(f.validate(i, run_s)?);
        }

        let xray = self
            .xray
            .map(|x| x.validate(self.gate_at_m - self.scanner_at_m))
            .transpose()?;
        let scenario = Scenario {
            xray,
            name: self.name,
            seed: self.seed,
            length,
            belt_speed_m_s: speed,
            parcel_length_m: (lmin, lmax),
            gap_m: (gmin, gmax),
            scanner_at_m: self.scanner_at_m,
            gate_at_m: self.gate_at_m,
            lane_roles: roles,
            lanes,
            mix,
            plc,
            faults,
        };
        let rate = scenario.mean_rate_per_s();
        if rate > MAX_RATE_PER_S {
            return Err(invalid(
                "gap_m",
                format!(
                    "belt speed over mean parcel pitch gives {rate:.0} parcels/s; at most \
                     {MAX_RATE_PER_S} are simulated"
                ),
            ));
        }
        Ok(scenario)
    }
}

impl RawFault {
    fn validate(self, i: usize, run_s: Option<f64>) -> Result<Fault, ScenarioError> {
        let field = |f: &str| format!("faults[{i}].{f}");
        let at_s = range(&field("at_s"), self.at_s, 0.0, MAX_DURATION_S)?;
        let for_s = range(&field("for_s"), self.for_s, 0.001, MAX_DURATION_S)?;
        if let Some(run) = run_s {
            if at_s >= run {
                return Err(invalid(
                    field("at_s"),
                    format!("starts at {at_s} s, after the run ends ({run} s)"),
                ));
            }
        }
        // Which parameters each kind takes; anything else given is a mistake worth naming.
        let (name, wants): (&str, &[&str]) = match self.kind {
            RawFaultKind::PlcDown => ("plc_down", &[]),
            RawFaultKind::PlcSlow => ("plc_slow", &["ack_delay_ms"]),
            RawFaultKind::PlcRefuse => ("plc_refuse", &[]),
            RawFaultKind::ScannerGarbage => ("scanner_garbage", &["share"]),
            RawFaultKind::LaneFull => ("lane_full", &["lane"]),
            RawFaultKind::LateInstructions => ("late_instructions", &["late_ms", "share"]),
        };
        for (param, given) in [
            ("ack_delay_ms", self.ack_delay_ms.is_some()),
            ("share", self.share.is_some()),
            ("lane", self.lane.is_some()),
            ("late_ms", self.late_ms.is_some()),
        ] {
            if given && !wants.contains(&param) {
                return Err(invalid(
                    field(param),
                    format!("is not a parameter of kind `{name}`"),
                ));
            }
        }
        let required =
            |param: &str| invalid(field(param), format!("is required for kind `{name}`"));
        let share = |default: Option<f64>| -> Result<f64, ScenarioError> {
            match self.share.or(default) {
                Some(s) if s.is_finite() && s > 0.0 && s <= 1.0 => Ok(s),
                Some(s) => Err(invalid(
                    field("share"),
                    format!("must be above 0 and at most 1, not {s}"),
                )),
                None => Err(required("share")),
            }
        };
        let kind = match self.kind {
            RawFaultKind::PlcDown => FaultKind::PlcDown,
            RawFaultKind::PlcRefuse => FaultKind::PlcRefuse,
            RawFaultKind::PlcSlow => match self.ack_delay_ms {
                Some(ms) if (1..=60_000).contains(&ms) => FaultKind::PlcSlow { ack_delay_ms: ms },
                Some(ms) => {
                    return Err(invalid(
                        field("ack_delay_ms"),
                        format!("must be from 1 to 60000, not {ms}"),
                    ))
                }
                None => return Err(required("ack_delay_ms")),
            },
            RawFaultKind::ScannerGarbage => FaultKind::ScannerGarbage {
                share: share(None)?,
            },
            RawFaultKind::LaneFull => match self.lane {
                Some(lane) => FaultKind::LaneFull {
                    lane: lane_no(&field("lane"), lane)?,
                },
                None => return Err(required("lane")),
            },
            RawFaultKind::LateInstructions => match self.late_ms {
                Some(ms) if ms <= 60_000 => FaultKind::LateInstructions {
                    late_ms: ms,
                    share: share(Some(1.0))?,
                },
                Some(ms) => {
                    return Err(invalid(
                        field("late_ms"),
                        format!("must be at most 60000, not {ms}"),
                    ))
                }
                None => return Err(required("late_ms")),
            },
        };
        Ok(Fault { at_s, for_s, kind })
    }
}
