//! The platform's report: what it received against a plan range (lanes reached, missing
//! records, duplicates, rules decided and fired, anomalies, release breaches, chains), with
//! the expectations ([`Expect`]) that predict each parcel's lane. Pure over the records, so
//! it is tested without a broker.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;
use std::ops::Range;

use bondline_devices::contract::{Anomaly, LaneRole, ParcelRecord, ReadOutcome};

use crate::audit::RuleBook;
use crate::chain::ChainStatus;
use crate::plan::Plan;

/// What a report needs to predict each parcel's lane beyond its plan kind.
#[derive(Debug, Clone, Default)]
pub struct Expect {
    /// Whether the line's scanner weighs (a weighing profile), so the weight rule can fire.
    pub weighed: bool,
    /// Whether the line has an X-ray scanner judging parcels as the plan says, so the
    /// `xray_suspect` rule can fire.
    pub xray: bool,
    /// The rule set the daemon runs, if known: its random sampling changes expected lanes,
    /// and its rule kinds tell which fired rules are platform instructions. Without it, a rule
    /// is taken to be of the kind its name says (as in the built-in set).
    pub rules: Option<RuleBook>,
}

impl Expect {
    /// The kind of the rule named `rule`.
    fn kind_of<'a>(&'a self, rule: &'a str) -> &'a str {
        self.rules
            .as_ref()
            .and_then(|b| b.kind_of(rule))
            .unwrap_or(rule)
    }
}

/// The deciding rule the daemon names when nothing decided (kept in step with the rules
/// engine's `AWAITING_RELEASE`).
const AWAITING_RELEASE: &str = "awaiting_release";
/// The deciding rule while a parcel on an X-ray line waits for its verdict (the engine's
/// `AWAITING_XRAY`); the verdict decides it again.
const AWAITING_XRAY: &str = "awaiting_xray";

/// What the platform received, against a plan range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformReport {
    /// Records received, duplicates included.
    pub records: usize,
    pub distinct_msg_ids: usize,
    /// `records - distinct_msg_ids`: redeliveries, harmless under at-least-once.
    pub duplicates: usize,
    /// Parcels per lane role, by their latest decision.
    pub by_role: BTreeMap<LaneRole, usize>,
    /// Parcels that were no-reads.
    pub no_reads: usize,
    /// Waybills of readable parcels in the range without any record, in plan order.
    pub missing: Vec<String>,
    /// Distinct records of plan parcels whose lane differs from the plan's expected lane.
    /// Not necessarily wrong (a divert timeout sends a parcel to exception), but worth a look.
    pub lane_mismatches: usize,
    /// Waybills (or msg_ids of no-reads and unknown waybills) that reached the release lane
    /// though the plan expects another lane (no release instruction, a rule that must stop
    /// it, or the random sample): a fail-closed breach.
    pub released_against_plan: Vec<String>,
    /// Distinct records per deciding rule (the record's `rule`).
    pub by_rule: BTreeMap<String, usize>,
    /// Distinct records per rule that fired, deciding or not.
    pub fired: BTreeMap<String, usize>,
    /// Distinct records per kind of rule that fired (kinds from the rule set when known).
    pub kinds_fired: BTreeMap<String, usize>,
    /// Kinds of the known rule set that fired for no record; empty without a rule set.
    pub kinds_never_fired: Vec<String>,
    /// Distinct anomalies received.
    pub anomalies: usize,
    /// Waybills (or msg_ids) of records that a rule other than a platform instruction kept
    /// off the release lane, with no anomaly for their parcel.
    pub flagged_without_anomaly: Vec<String>,
    pub events: usize,
    pub bad_payloads: usize,
    /// The chain check of every record received (all kinds, not only the plan range), per
    /// gateway id.
    pub chains: BTreeMap<String, ChainStatus>,
}

impl PlatformReport {
    pub(super) fn build(
        plan: &Plan,
        range: Range<u64>,
        records: &[ParcelRecord],
        anomalies: &[Anomaly],
        events: usize,
        bad_payloads: usize,
        expect: &Expect,
    ) -> PlatformReport {
        let anomaly_ids: HashSet<&str> = anomalies.iter().map(|a| a.anomaly_id.as_str()).collect();
        let anomalous: HashSet<(&str, &str, u32)> = anomalies
            .iter()
            .map(|a| (a.gateway.as_str(), a.line.as_str(), a.parcel))
            .collect();
        let mut by_rule: BTreeMap<String, usize> = BTreeMap::new();
        let mut fired: BTreeMap<String, usize> = BTreeMap::new();
        let mut kinds_fired: BTreeMap<String, usize> = BTreeMap::new();
        let mut flagged_without_anomaly = Vec::new();
        let mut seen_ids = HashSet::new();
        let mut seen_waybills = HashSet::new();
        let mut by_role: BTreeMap<LaneRole, usize> =
            LaneRole::ALL.iter().map(|r| (*r, 0)).collect();
        let mut no_reads = 0;
        let mut lane_mismatches = 0;
        let mut released_against_plan = Vec::new();
        // Each parcel is judged by its latest decision: an earlier revision was superseded
        // before the parcel reached its gate (an X-ray verdict, a late declaration).
        let mut latest: BTreeMap<(&str, &str, u32, Option<&str>), u32> = BTreeMap::new();
        for r in records {
            let key = (
                r.gateway.as_str(),
                r.line.as_str(),
                r.parcel,
                r.waybill.as_deref(),
            );
            let rev = latest.entry(key).or_default();
            *rev = (*rev).max(r.revision);
        }
        for r in records {
            if !seen_ids.insert(r.msg_id.as_str()) {
                continue;
            }
            let key = (
                r.gateway.as_str(),
                r.line.as_str(),
                r.parcel,
                r.waybill.as_deref(),
            );
            if latest.get(&key).is_some_and(|rev| *rev != r.revision) {
                continue;
            }
            *by_role.entry(r.lane_role).or_default() += 1;
            *by_rule.entry(r.rule.clone()).or_default() += 1;
            let mut kinds = BTreeSet::new();
            for f in r.rules_fired.iter().filter(|f| f.rule != AWAITING_XRAY) {
                *fired.entry(f.rule.clone()).or_default() += 1;
                kinds.insert(expect.kind_of(&f.rule));
            }
            for k in kinds {
                *kinds_fired.entry(k.to_string()).or_default() += 1;
            }
            let name = || r.waybill.clone().unwrap_or_else(|| r.msg_id.clone());
            // The daemon's anomaly condition: a rule other than the platform's instruction
            // (and other than "nothing decided yet") kept the parcel off the release lane.
            let flagged = r.lane_role != LaneRole::Release
                && r.rules_fired.first().is_some_and(|f| {
                    f.rule != AWAITING_RELEASE
                        && f.rule != AWAITING_XRAY
                        && expect.kind_of(&f.rule) != "instruction"
                });
            if flagged && !anomalous.contains(&(r.gateway.as_str(), r.line.as_str(), r.parcel)) {
                flagged_without_anomaly.push(name());
            }
            if r.read == ReadOutcome::NoRead {
                no_reads += 1;
            }
            let planned = r
                .waybill
                .as_deref()
                .and_then(|w| plan.index_of(w))
                .map(|i| plan.parcel(i));
            if let Some(w) = &r.waybill {
                seen_waybills.insert(w.as_str());
            }
            let expected = planned.as_ref().and_then(|p| {
                plan.expected_role_with(p, expect.weighed, expect.xray, expect.rules.as_ref())
            });
            if expected.is_some_and(|e| e != r.lane_role) {
                lane_mismatches += 1;
            }
            if r.lane_role == LaneRole::Release && expected != Some(LaneRole::Release) {
                released_against_plan.push(name());
            }
        }
        let kinds_never_fired = expect
            .rules
            .iter()
            .flat_map(|b| b.kinds.values())
            .filter(|k| !kinds_fired.contains_key(k.as_str()))
            // Rules the line cannot feed are not expected to fire.
            .filter(|k| expect.xray || k.as_str() != "xray_suspect")
            .filter(|k| expect.weighed || k.as_str() != "weight_mismatch")
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let missing = plan
            .parcels(range)
            .filter(|p| p.kind.is_readable() && !seen_waybills.contains(p.waybill.as_str()))
            .map(|p| p.waybill)
            .collect();
        PlatformReport {
            records: records.len(),
            distinct_msg_ids: seen_ids.len(),
            duplicates: records.len() - seen_ids.len(),
            by_role,
            no_reads,
            missing,
            lane_mismatches,
            released_against_plan,
            by_rule,
            fired,
            kinds_fired,
            kinds_never_fired,
            anomalies: anomaly_ids.len(),
            flagged_without_anomaly,
            events,
            bad_payloads,
            chains: BTreeMap::new(),
        }
    }
}

impl fmt::Display for PlatformReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        /// Long lists are cut so a periodic report stays readable.
        fn list(f: &mut fmt::Formatter<'_>, items: &[String]) -> fmt::Result {
            const SHOWN: usize = 10;
            for w in items.iter().take(SHOWN) {
                write!(f, " {w}")?;
            }
            if items.len() > SHOWN {
                write!(f, " (and {} more)", items.len() - SHOWN)?;
            }
            Ok(())
        }
        writeln!(
            f,
            "records: {} ({} distinct, {} duplicates), events: {}, bad payloads: {}",
            self.records, self.distinct_msg_ids, self.duplicates, self.events, self.bad_payloads
        )?;
        write!(f, "lanes:")?;
        for (role, n) in &self.by_role {
            write!(f, " {} {n}", role.as_str())?;
        }
        writeln!(
            f,
            "; no-reads {}; lane differs from plan {}",
            self.no_reads, self.lane_mismatches
        )?;
        write!(f, "deciding rules:")?;
        for (rule, n) in &self.by_rule {
            write!(f, " {rule} {n}")?;
        }
        write!(f, "\nrules fired:")?;
        for (rule, n) in &self.fired {
            write!(f, " {rule} {n}")?;
        }
        write!(f, "\nrule kinds fired:")?;
        for (kind, n) in &self.kinds_fired {
            write!(f, " {kind} {n}")?;
        }
        if !self.kinds_never_fired.is_empty() {
            write!(f, "; never fired:")?;
            for kind in &self.kinds_never_fired {
                write!(f, " {kind}")?;
            }
        }
        writeln!(
            f,
            "\nanomalies: {}; flagged parcels without an anomaly: {}",
            self.anomalies,
            self.flagged_without_anomaly.len()
        )?;
        write!(f, "missing: {}", self.missing.len())?;
        list(f, &self.missing)?;
        for (gateway, chain) in &self.chains {
            let gateway = if gateway.is_empty() {
                "(no gateway)"
            } else {
                gateway
            };
            write!(f, "\nchain of {gateway}: {chain}")?;
        }
        if !self.released_against_plan.is_empty() {
            write!(
                f,
                "\nRELEASED AGAINST PLAN: {}",
                self.released_against_plan.len()
            )?;
            list(f, &self.released_against_plan)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use bondline_devices::contract::{DivertOutcome, DivertStatus, FiredRule, SCHEMA};

    use super::*;
    use crate::plan::{Mix, PlanKind};

    fn record(seq: u64, waybill: Option<&str>, role: LaneRole) -> ParcelRecord {
        ParcelRecord {
            schema: SCHEMA,
            msg_id: format!("gw-{seq}"),
            seq,
            prev_hash: String::new(),
            gateway: "gw".into(),
            line: "l1".into(),
            parcel: seq as u32,
            read: if waybill.is_some() {
                ReadOutcome::Ok
            } else {
                ReadOutcome::NoRead
            },
            waybill: waybill.map(str::to_string),
            lane: 1,
            lane_role: role,
            rule: "r".into(),
            reason: "r".into(),
            instruction_id: None,
            scanned_at_ms: 0,
            decided_at_ms: 0,
            divert: DivertOutcome {
                status: DivertStatus::Acked,
                plc_seq: Some(1),
                detail: None,
                at_ms: 0,
                late: false,
            },
            revision: 0,
            deadline_ms: None,
            rule_set: None,
            rules_fired: Vec::new(),
            inputs: None,
        }
    }

    #[test]
    fn report_counts_missing_duplicates_and_breaches() {
        let plan = Plan::new(5);
        let parcels: Vec<_> = plan.parcels(0..200).collect();
        let release = parcels
            .iter()
            .find(|p| p.kind == PlanKind::Release)
            .expect("release");
        let undeclared = parcels
            .iter()
            .find(|p| p.kind == PlanKind::Undeclared)
            .expect("undeclared");
        let records = vec![
            record(1, Some(&release.waybill), LaneRole::Release),
            record(1, Some(&release.waybill), LaneRole::Release),
            record(2, Some(&undeclared.waybill), LaneRole::Release),
            record(3, None, LaneRole::Exception),
        ];
        let r = PlatformReport::build(&plan, 0..200, &records, &[], 0, 0, &Expect::default());
        assert_eq!((r.records, r.distinct_msg_ids, r.duplicates), (4, 3, 1));
        assert_eq!(r.by_role[&LaneRole::Release], 2);
        assert_eq!(r.no_reads, 1);
        assert_eq!(r.lane_mismatches, 1);
        assert_eq!(r.released_against_plan, vec![undeclared.waybill.clone()]);
        let readable = parcels.iter().filter(|p| p.kind.is_readable()).count();
        assert_eq!(r.missing.len(), readable - 2);
        let text = r.to_string();
        assert!(text.contains("RELEASED AGAINST PLAN: 1"), "{text}");
        assert!(text.contains("more)"), "{text}");
    }

    fn fired(rule: &str, target: LaneRole) -> FiredRule {
        FiredRule {
            rule: rule.into(),
            target,
            reason: "r".into(),
        }
    }

    #[test]
    fn report_counts_rules_and_missing_anomalies() {
        let plan = Plan::with_mix(5, Mix::every_rule());
        let book = RuleBook::demo();
        let pick = |kind: PlanKind| {
            plan.parcels(0..400)
                .find(|p| p.kind == kind && !book.sampled(&p.waybill))
                .expect("kind in plan")
        };
        let (heavy, light, held) = (
            pick(PlanKind::Overweight),
            pick(PlanKind::Release),
            pick(PlanKind::Hold),
        );
        let mut weighed = record(1, Some(&heavy.waybill), LaneRole::Inspection);
        weighed.rule = "weight_mismatch".into();
        weighed.rules_fired = vec![
            fired("weight_mismatch", LaneRole::Inspection),
            fired("instruction", LaneRole::Release),
        ];
        let mut released = record(2, Some(&light.waybill), LaneRole::Release);
        released.rule = "instruction".into();
        released.rules_fired = vec![fired("instruction", LaneRole::Release)];
        let mut hold = record(3, Some(&held.waybill), LaneRole::Hold);
        hold.rule = "instruction".into();
        hold.rules_fired = vec![fired("instruction", LaneRole::Hold)];
        let records = vec![weighed.clone(), released, hold];
        let expect = Expect {
            weighed: true,
            xray: true,
            rules: Some(book.clone()),
        };
        let r = PlatformReport::build(&plan, 0..0, &records, &[], 0, 0, &expect);
        assert_eq!(r.by_rule["instruction"], 2);
        assert_eq!(r.fired["instruction"], 3);
        assert_eq!(r.kinds_fired["weight_mismatch"], 1);
        assert_eq!(r.lane_mismatches, 0, "{r}");
        // Only the weight rule's parcel is an anomaly, and none arrived for it.
        assert_eq!(r.flagged_without_anomaly, vec![heavy.waybill.clone()]);
        assert!(r.kinds_never_fired.contains(&"sampling".to_string()));
        assert!(!r.kinds_never_fired.contains(&"instruction".to_string()));
        let anomaly = Anomaly {
            schema: SCHEMA,
            anomaly_id: "gw-l1-1-0".into(),
            gateway: "gw".into(),
            line: "l1".into(),
            parcel: weighed.parcel,
            waybill: weighed.waybill.clone(),
            lane: 2,
            lane_role: LaneRole::Inspection,
            rule_set: book.version.clone(),
            rules_fired: weighed.rules_fired.clone(),
            inputs: Default::default(),
            scanned_at_ms: 0,
            at_ms: 0,
        };
        let r = PlatformReport::build(&plan, 0..0, &records, &[anomaly], 0, 0, &expect);
        assert!(r.flagged_without_anomaly.is_empty());
        assert_eq!(r.anomalies, 1);
        // Without a scale the overweight parcel should have been released.
        let unweighed = Expect {
            weighed: false,
            ..expect
        };
        let r = PlatformReport::build(&plan, 0..0, &records, &[], 0, 0, &unweighed);
        assert_eq!(r.lane_mismatches, 1);
        assert!(r
            .to_string()
            .contains("deciding rules: instruction 2 weight_mismatch 1"));
    }
}
