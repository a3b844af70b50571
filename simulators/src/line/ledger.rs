//! The ledger of a `line-sim` run: where every physical parcel went against where the plan
//! says it must go, and how fast and how late the daemon's divert commands came.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use bondline_devices::contract::LaneRole;
use bondline_devices::plc::DispositionCode;
use serde::{Deserialize, Serialize};

use super::scenario::LaneRoles;
use crate::plan::PlanKind;

/// Leaked or wrongly sorted parcels listed by name in a ledger; the counts are complete.
const LISTED: usize = 50;

/// What happened to one physical parcel that reached its gate, in times since the run's
/// start. The input of [`Ledger::tally`], so classification is testable from made-up events.
#[derive(Debug, Clone, PartialEq)]
pub struct ParcelOutcome {
    pub plan_index: u64,
    pub kind: PlanKind,
    pub waybill: String,
    /// When its scanner frame was written; `None` if the frame never reached the daemon (no
    /// scanner client connected, or the write failed).
    pub frame_at: Option<Duration>,
    pub gate_at: Duration,
    /// Arrival of every divert command for this parcel, in order.
    pub commands: Vec<Duration>,
    /// The PLC's disposition at the gate: code and physical lane.
    pub code: DispositionCode,
    pub lane: u16,
    /// When the platform published a late inspect instruction for it, if it did.
    pub late_mark_at: Option<Duration>,
    /// The plan's lane for it was reported full (or disabled) to the controller between
    /// shortly before its scan and its last command: the controller may rightly have chosen
    /// another (stricter) lane.
    pub plan_lane_blocked: bool,
    /// What the line's X-ray did with it; `None` on a line without X-ray.
    pub xray: Option<XrayOutcome>,
}

/// A parcel's passage through the X-ray tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XrayOutcome {
    /// The X-ray's scan id, also in its image file names.
    pub scan_id: u32,
    /// When the X-ray flagged it (suspect verdict, or an officer's mark), if it did.
    pub flagged_at: Option<Duration>,
}

/// Decision latency over the parcels that got a command: from the write of the scanner frame
/// to the arrival of the first divert command for the parcel at the PLC.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub samples: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p99_9_ms: Option<f64>,
    pub max_ms: Option<f64>,
}

impl Latency {
    fn of(mut ms: Vec<f64>) -> Latency {
        ms.sort_by(f64::total_cmp);
        Latency {
            samples: ms.len() as u64,
            p50_ms: percentile(&ms, 0.50),
            p99_ms: percentile(&ms, 0.99),
            p99_9_ms: percentile(&ms, 0.999),
            max_ms: ms.last().copied(),
        }
    }
}

/// Parcels the platform marked for inspection late (`late_instructions` faults).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LateMarks {
    pub marked: u64,
    /// Marks published before the parcel reached its gate: the daemon could still re-divert.
    pub before_gate: u64,
    /// Marked parcels that physically reached the inspection lane.
    pub to_inspection: u64,
    /// Parcels marked before their gate that still reached the release lane. Not counted as
    /// leaks (the plan released them, and a mark a few milliseconds before the gate cannot be
    /// acted on), but the number to watch for late marks.
    pub released_after_mark: u64,
}

/// Parcels the line's X-ray flagged (suspect verdicts and operator marks).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct XrayFlags {
    /// Parcels that passed the tunnel.
    pub passages: u64,
    pub flagged: u64,
    /// Flagged before the parcel reached its gate: the daemon could still divert it.
    pub before_gate: u64,
    /// Flagged parcels that physically reached the inspection lane.
    pub to_inspection: u64,
    /// Parcels flagged before their gate that still reached the release lane. Not counted
    /// as leaks (a flag just before the gate cannot be acted on), but the number to watch.
    pub released_after_flag: u64,
}

/// How the daemon's parcel ids were matched to the simulated parcels (see `LineSim`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Correlation {
    /// Scanner connections that carried frames: each has its own base (a restarted daemon
    /// numbers from a new one).
    pub epochs: u32,
    /// The daemon's parcel id of the first delivered frame; `None` if no command came.
    pub base: Option<u32>,
    /// Times the estimate of `base` had to be raised after it was first set. Above 0 means
    /// the parcels at the gate before the last raise may have been matched with the command of
    /// an earlier parcel.
    pub adjustments: u32,
    /// Commands whose parcel id matches no delivered frame.
    pub unmatched_commands: u64,
    /// With a platform: records checked, and records whose parcel id disagrees with the
    /// matching (waybill to frame to id). Both `None` without a platform.
    pub records_checked: Option<u64>,
    pub record_mismatches: Option<u64>,
}

/// A parcel in the wrong lane: leaked into release, or sorted elsewhere than the plan says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Misplaced {
    pub plan_index: u64,
    pub waybill: String,
    /// The plan kind, e.g. `Undeclared`.
    pub kind: String,
    /// The PLC's disposition code, e.g. `sorted`.
    pub code: String,
    pub lane: u16,
    pub expected_lane: Option<u16>,
    /// For a parcel with a late inspect mark: how long before (positive) or after
    /// (negative) its gate the mark was published, in ms.
    pub late_mark_before_gate_ms: Option<f64>,
}

/// The outcome of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    pub scenario: String,
    /// Seconds from the start of the belt to the end of the run (last gate plus a second).
    pub run_s: f64,
    /// Seconds between the first and the last of these parcels at the scanner.
    pub scan_span_s: f64,
    /// Physical parcels that reached their gate.
    pub parcels: u64,
    /// The most any belt event (scan, gate) ran behind its time, in ms. Tens of ms mean the
    /// machine was too loaded for the timing figures (late diverts, latency) to hold.
    pub max_lag_ms: f64,
    /// Garbage frames the scanner wrote (the plan's noise and `scanner_garbage` faults).
    pub garbage_frames: u64,
    /// Parcels whose frame never reached the daemon.
    pub unscanned: u64,
    /// Parcels in the lane of the plan's expected role (or, after a late mark published
    /// before the gate, in the inspection lane).
    pub correct: u64,
    /// Parcels in the release lane whose plan kind is not `Release`. Must be 0.
    pub leaks: u64,
    /// Parcels sorted (code `sorted`) to a lane other than the correct one, leaks and
    /// reroutes excluded.
    pub wrong_lanes: u64,
    /// Parcels the controller sent to another lane (not release) because their plan lane was
    /// reported full or disabled: explained, not wrong.
    pub rerouted: u64,
    /// Parcels with a divert command that arrived after they reached the gate.
    pub late_diverts: u64,
    /// Parcels whose frame reached the daemon but which got no command at all.
    pub no_command: u64,
    /// Dispositions by code.
    pub sorted: u64,
    pub overflow: u64,
    pub no_destination: u64,
    pub fail_safe: u64,
    pub lost: u64,
    pub latency: Latency,
    /// The same over the parcels the plan releases: their commands are written only once
    /// their decision is durable in the daemon's journal.
    pub release_latency: Latency,
    /// The same over the parcels the plan sends elsewhere (their commands go at once).
    pub other_latency: Latency,
    pub late_marks: LateMarks,
    pub xray: XrayFlags,
    /// Parcels per physical lane.
    pub lanes: BTreeMap<u16, u64>,
    /// The first leaked parcels.
    pub leaked: Vec<Misplaced>,
    /// The first wrongly sorted parcels.
    pub wrong: Vec<Misplaced>,
    pub correlation: Correlation,
}

fn code_name(code: DispositionCode) -> &'static str {
    match code {
        DispositionCode::Sorted => "sorted",
        DispositionCode::Overflow => "overflow",
        DispositionCode::NoDestination => "no_destination",
        DispositionCode::Lost => "lost",
        DispositionCode::FailSafe => "fail_safe",
    }
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

impl Ledger {
    /// Classifies `outcomes` against the plan with the line's lane map. `run_s`,
    /// `garbage_frames` and `correlation` are the caller's to fill in.
    pub fn tally(scenario: &str, outcomes: &[ParcelOutcome], roles: &LaneRoles) -> Ledger {
        let mut l = Ledger {
            scenario: scenario.to_string(),
            parcels: outcomes.len() as u64,
            ..Ledger::default()
        };
        let mut latencies = Vec::new();
        let mut release_latencies = Vec::new();
        let mut other_latencies = Vec::new();
        for o in outcomes {
            *l.lanes.entry(o.lane).or_default() += 1;
            match o.code {
                DispositionCode::Sorted => l.sorted += 1,
                DispositionCode::Overflow => l.overflow += 1,
                DispositionCode::NoDestination => l.no_destination += 1,
                DispositionCode::FailSafe => l.fail_safe += 1,
                DispositionCode::Lost => l.lost += 1,
            }
            if o.frame_at.is_none() {
                l.unscanned += 1;
            } else if o.commands.is_empty() {
                l.no_command += 1;
            }
            if o.commands.iter().any(|c| *c > o.gate_at) {
                l.late_diverts += 1;
            }
            if let (Some(frame), Some(first)) = (o.frame_at, o.commands.iter().min()) {
                let ms = first.saturating_sub(frame).as_secs_f64() * 1000.0;
                latencies.push(ms);
                if o.kind.expected_role() == Some(LaneRole::Release) {
                    release_latencies.push(ms);
                } else {
                    other_latencies.push(ms);
                }
            }

            let marked_in_time = o.late_mark_at.is_some_and(|m| m < o.gate_at);
            if o.late_mark_at.is_some() {
                l.late_marks.marked += 1;
                if marked_in_time {
                    l.late_marks.before_gate += 1;
                }
                if o.lane == roles.inspection {
                    l.late_marks.to_inspection += 1;
                }
                if marked_in_time && o.lane == roles.release {
                    l.late_marks.released_after_mark += 1;
                }
            }

            let flagged_in_time = o
                .xray
                .and_then(|x| x.flagged_at)
                .is_some_and(|f| f < o.gate_at);
            if let Some(x) = o.xray {
                l.xray.passages += 1;
                if x.flagged_at.is_some() {
                    l.xray.flagged += 1;
                    l.xray.to_inspection += u64::from(o.lane == roles.inspection);
                }
                if flagged_in_time {
                    l.xray.before_gate += 1;
                    l.xray.released_after_flag += u64::from(o.lane == roles.release);
                }
            }

            let leak = o.lane == roles.release && o.kind.expected_role() != Some(LaneRole::Release);
            let expected = o.kind.expected_role().map(|r| roles.lane(r));
            let correct = expected == Some(o.lane)
                || ((marked_in_time || flagged_in_time) && o.lane == roles.inspection);
            let misplaced = || Misplaced {
                plan_index: o.plan_index,
                waybill: o.waybill.clone(),
                kind: format!("{:?}", o.kind),
                code: code_name(o.code).to_string(),
                lane: o.lane,
                expected_lane: expected,
                late_mark_before_gate_ms: o
                    .late_mark_at
                    .map(|m| (o.gate_at.as_secs_f64() - m.as_secs_f64()) * 1000.0),
            };
            if leak {
                l.leaks += 1;
                if l.leaked.len() < LISTED {
                    l.leaked.push(misplaced());
                }
            } else if correct {
                l.correct += 1;
            } else if o.code == DispositionCode::Sorted && o.plan_lane_blocked {
                l.rerouted += 1;
            } else if o.code == DispositionCode::Sorted {
                l.wrong_lanes += 1;
                if l.wrong.len() < LISTED {
                    l.wrong.push(misplaced());
                }
            }
            // Other mismatches are explained by the PLC's code: overflow, no destination,
            // fail-safe or lost.
        }
        l.latency = Latency::of(latencies);
        l.release_latency = Latency::of(release_latencies);
        l.other_latency = Latency::of(other_latencies);
        l
    }

    /// Parcels per hour at the scanner: the parcels after the first over the time from the
    /// first to the last.
    pub fn parcels_per_hour(&self) -> f64 {
        if self.scan_span_s > 0.0 && self.parcels > 1 {
            (self.parcels - 1) as f64 * 3600.0 / self.scan_span_s
        } else {
            0.0
        }
    }
}

impl fmt::Display for Ledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |v: Option<f64>| v.map_or_else(|| "-".to_string(), |v| format!("{v:.1} ms"));
        writeln!(
            f,
            "line-sim ledger: scenario {} | {} parcels in {:.1} s ({:.0}/h at the scanner)",
            self.scenario,
            self.parcels,
            self.run_s,
            self.parcels_per_hour()
        )?;
        let leaks = if self.leaks == 0 {
            "0".to_string()
        } else {
            format!("{}  <-- CUSTOMS BREACH", self.leaks)
        };
        writeln!(f, "  correct lanes      {}", self.correct)?;
        writeln!(f, "  LEAKS              {leaks}")?;
        writeln!(f, "  wrong lanes        {}", self.wrong_lanes)?;
        writeln!(f, "  rerouted (full)    {}", self.rerouted)?;
        writeln!(f, "  late diverts       {}", self.late_diverts)?;
        writeln!(f, "  no command         {}", self.no_command)?;
        writeln!(f, "  unscanned          {}", self.unscanned)?;
        writeln!(
            f,
            "  PLC dispositions   sorted {}  overflow {}  no destination {}  fail-safe {}  lost {}",
            self.sorted, self.overflow, self.no_destination, self.fail_safe, self.lost
        )?;
        writeln!(
            f,
            "  decision latency   p50 {}  p99 {}  max {}  ({} commands)",
            ms(self.latency.p50_ms),
            ms(self.latency.p99_ms),
            ms(self.latency.max_ms),
            self.latency.samples
        )?;
        if self.late_marks.marked > 0 {
            let m = &self.late_marks;
            writeln!(
                f,
                "  late marks         {} marked ({} before the gate): {} to inspection, {} released after an in-time mark",
                m.marked, m.before_gate, m.to_inspection, m.released_after_mark
            )?;
        }
        if self.xray.passages > 0 {
            let x = &self.xray;
            writeln!(
                f,
                "  x-ray              {} passages, {} flagged ({} before the gate): {} to inspection, {} released after an in-time flag",
                x.passages, x.flagged, x.before_gate, x.to_inspection, x.released_after_flag
            )?;
        }
        let lanes: Vec<String> = self
            .lanes
            .iter()
            .map(|(lane, n)| format!("{lane}: {n}"))
            .collect();
        writeln!(f, "  lanes              {}", lanes.join("  "))?;
        writeln!(f, "  garbage frames     {}", self.garbage_frames)?;
        writeln!(f, "  simulator lag      max {:.1} ms", self.max_lag_ms)?;
        let c = &self.correlation;
        let mut base = c
            .base
            .map_or_else(|| "unknown".to_string(), |b| b.to_string());
        if c.epochs > 1 {
            base.push_str(&format!(" (first of {} scanner connections)", c.epochs));
        }
        let records = match (c.records_checked, c.record_mismatches) {
            (Some(n), Some(bad)) => format!(", {bad} of {n} platform records disagree"),
            _ => String::new(),
        };
        write!(
            f,
            "  parcel ids         base {base}, {} adjustments, {} unmatched commands{records}",
            c.adjustments, c.unmatched_commands
        )?;
        for (what, list, total) in [
            ("leaked", &self.leaked, self.leaks),
            ("wrong", &self.wrong, self.wrong_lanes),
        ] {
            for m in list {
                let expected = m
                    .expected_lane
                    .map_or_else(String::new, |l| format!(", plan lane {l}"));
                let mark = m.late_mark_before_gate_ms.map_or_else(String::new, |ms| {
                    format!(", late mark {ms:.0} ms before the gate")
                });
                write!(
                    f,
                    "\n  {what}: #{} {} ({}) {} to lane {}{expected}{mark}",
                    m.plan_index, m.waybill, m.kind, m.code, m.lane
                )?;
            }
            if total > list.len() as u64 {
                write!(f, "\n  ... and {} more", total - list.len() as u64)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn outcome(kind: PlanKind, code: DispositionCode, lane: u16) -> ParcelOutcome {
        ParcelOutcome {
            plan_index: 0,
            kind,
            waybill: "BL000100000000".into(),
            frame_at: Some(ms(1000)),
            gate_at: ms(2500),
            commands: vec![ms(1004)],
            code,
            lane,
            late_mark_at: None,
            plan_lane_blocked: false,
            xray: None,
        }
    }

    #[test]
    fn classification_from_synthetic_events() {
        use DispositionCode::*;
        use PlanKind::*;
        let roles = LaneRoles::default();
        let mut late = outcome(Inspect, Sorted, 2);
        late.commands = vec![ms(2600)];
        let mut marked_in_time = outcome(Release, Sorted, 2);
        marked_in_time.late_mark_at = Some(ms(1400));
        let mut marked_missed = outcome(Release, Sorted, 1);
        marked_missed.late_mark_at = Some(ms(2400));
        let mut marked_after_gate = outcome(Release, Sorted, 1);
        marked_after_gate.late_mark_at = Some(ms(3000));
        let mut unscanned = outcome(Hold, NoDestination, 4);
        unscanned.frame_at = None;
        unscanned.commands.clear();
        let mut no_command = outcome(NoRead, NoDestination, 4);
        no_command.commands.clear();
        let mut rerouted = outcome(Release, Sorted, 3);
        rerouted.plan_lane_blocked = true;
        let mut blocked_but_leaked = outcome(Hold, Sorted, 1);
        blocked_but_leaked.plan_lane_blocked = true;
        let mut recommanded_late = outcome(Release, Sorted, 1);
        recommanded_late.commands = vec![ms(1010), ms(2700)];
        let outcomes = vec![
            outcome(Release, Sorted, 1),        // correct
            outcome(Undeclared, Sorted, 1),     // leak
            outcome(NoRead, Overflow, 1),       // leak, whatever the code
            late,                               // correct, late
            outcome(Inspect, Sorted, 3),        // wrong
            outcome(Release, Overflow, 3),      // explained
            outcome(DeclaredOnly, FailSafe, 3), // correct (hold)
            outcome(Release, FailSafe, 3),      // explained
            outcome(Inspect, NoDestination, 4), // explained
            marked_in_time,                     // correct (inspection after a mark)
            marked_missed,                      // correct by plan, released after mark
            marked_after_gate,                  // correct
            unscanned,                          // explained
            no_command,                         // correct (exception)
            recommanded_late,                   // correct, late
            rerouted,                           // explained by a full lane
            blocked_but_leaked,                 // a full lane never excuses release
        ];
        let l = Ledger::tally("synthetic", &outcomes, &roles);
        assert_eq!(l.parcels, 17);
        assert_eq!(l.leaks, 3);
        assert_eq!(l.leaked.len(), 3);
        assert_eq!(l.rerouted, 1);
        assert_eq!(l.leaked[1].code, "overflow");
        assert_eq!(l.wrong_lanes, 1);
        assert_eq!(l.wrong[0].expected_lane, Some(2));
        assert_eq!(l.late_diverts, 2);
        assert_eq!(l.correct, 8);
        assert_eq!(
            (l.sorted, l.overflow, l.fail_safe, l.no_destination, l.lost),
            (10, 2, 2, 3, 0)
        );
        assert_eq!((l.unscanned, l.no_command), (1, 1));
        assert_eq!(
            l.late_marks,
            LateMarks {
                marked: 3,
                before_gate: 2,
                to_inspection: 1,
                released_after_mark: 1
            }
        );
        assert_eq!(l.lanes.get(&1), Some(&7));
        // Latency: 15 parcels with a command; 4 ms but for one at 10 ms and the late one.
        assert_eq!(l.latency.samples, 15);
        assert_eq!(l.latency.p50_ms, Some(4.0));
        assert_eq!(l.latency.max_ms, Some(1600.0));
        let text = l.to_string();
        assert!(
            text.contains("LEAKS              3  <-- CUSTOMS BREACH"),
            "{text}"
        );
        assert!(text.contains("late marks"), "{text}");
        let json = serde_json::to_value(&l).expect("json");
        assert_eq!(json["leaks"], 3);
        assert_eq!(json["latency"]["p50_ms"], 4.0);
    }

    /// X-ray flags: inspection is right for a flag before the gate, a release after one is
    /// reported, a flag after the gate changes nothing.
    #[test]
    fn xray_flags_are_tallied() {
        use DispositionCode::Sorted;
        use PlanKind::Release;
        let roles = LaneRoles::default();
        let passed = |lane: u16, flagged_ms: Option<u64>| {
            let mut o = outcome(Release, Sorted, lane);
            o.xray = Some(XrayOutcome {
                scan_id: 1,
                flagged_at: flagged_ms.map(ms),
            });
            o
        };
        let outcomes = vec![
            passed(1, None),             // clear, released: correct
            passed(2, Some(1400)),       // flagged in time, inspected: correct
            passed(1, Some(2400)),       // flagged in time, released: correct by plan, reported
            passed(1, Some(3000)),       // flagged after the gate: correct
            passed(2, None),             // clear but inspected: wrong
            outcome(Release, Sorted, 1), // no X-ray on its way
        ];
        let l = Ledger::tally("xray", &outcomes, &roles);
        assert_eq!(
            l.xray,
            XrayFlags {
                passages: 5,
                flagged: 3,
                before_gate: 2,
                to_inspection: 1,
                released_after_flag: 1
            }
        );
        assert_eq!((l.correct, l.wrong_lanes, l.leaks), (5, 1, 0));
        assert!(
            l.to_string().contains("x-ray              5 passages"),
            "{l}"
        );
        let without = Ledger::tally("plain", &outcomes[5..], &roles);
        assert!(!without.to_string().contains("x-ray"));
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(50.0));
        assert_eq!(percentile(&v, 0.99), Some(99.0));
        assert_eq!(percentile(&[3.0], 0.99), Some(3.0));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
