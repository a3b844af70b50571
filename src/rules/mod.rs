//! Customs rules: what the platform has told this gateway, and the lane decision.
//!
//! This module is pure: no I/O, no clock, no locks. [`ClearanceTable`] holds the declarations,
//! instructions, enterprise notices and consumer histories received from the platform or
//! counted here; [`decide`] maps a scan to a lane role with an [`engine::RuleSet`] over that
//! table. It fails closed: the release lane needs a declaration *and* a release instruction
//! and no other rule firing; everything else goes to hold, inspection or exception. Every
//! decision carries the inputs it saw ([`DecisionInputs`]), so it can be explained later.

pub mod calendar;
pub mod clearance;
pub mod compact;
pub mod engine;
pub mod history;
pub mod orders;
pub mod sharded;
pub mod sharded_map;

use bondline_devices::contract::{ConsumerWindowSeen, DecisionInputs, LaneRole, TransactionSeen};

use crate::floor::ScanRead;

pub use clearance::{Applied, ClearanceTable, Message, RetentionFacts};

/// The rule of a decision made while the clearance table is still loading from the store:
/// hold, fail closed; the lines decide again when the load ends.
pub const STATE_LOADING: &str = "state_loading";

/// The outcome of [`decide`]: the lane role and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub role: LaneRole,
    /// The rule that decided, for counting and lookup.
    pub rule: String,
    /// Human-readable reason, for customs staff.
    pub reason: String,
    pub instruction_id: Option<String>,
    /// Every rule that fired, the deciding one first.
    pub fired: Vec<engine::Fired>,
    /// The rule set's version.
    pub rule_set: String,
    /// What the decision saw; `None` for a no-read.
    pub inputs: Option<DecisionInputs>,
}

impl Decision {
    /// Whether a rule other than the platform's own instruction flagged the parcel (fired
    /// with a lane other than release): an anomaly customs wants to hear about at once, even
    /// when the platform's own hold or inspection decided the lane (a weight mismatch on a
    /// held parcel is still evidence). Parcels merely waiting for a decision
    /// (`awaiting_release`) or for their X-ray verdict (`awaiting_xray`) are not anomalies.
    pub fn is_anomaly(&self) -> bool {
        self.role != LaneRole::Release
            && self.fired.iter().any(|f| {
                !f.rule_kind_instruction
                    && f.target != LaneRole::Release
                    && f.rule != engine::AWAITING_RELEASE
                    && f.rule != engine::AWAITING_XRAY
                    && f.rule != STATE_LOADING
            })
    }
}

/// One scan to decide: what was read, what the line scale weighed, and when (for consumer
/// windows: the local day in the calendar's time zone, see [`calendar::Calendar::day_of`]).
#[derive(Debug, Clone, Copy)]
pub struct Scan<'a> {
    pub read: &'a ScanRead,
    pub weight_g: Option<u32>,
    /// Whether the scanner station weighs parcels (see [`engine::Inputs::weighing`]).
    pub weighing: bool,
    /// The local day of the scan, `calendar.day_of(at_ms)`.
    pub day: u32,
    /// The time zone consumer windows are counted in, for their bounds on the record.
    pub calendar: &'a calendar::Calendar,
    /// What the parcel's previous decision saw, when it is decided again. Its consumer
    /// windows are kept: "before this parcel" must not grow with parcels scanned after it.
    pub prior: Option<&'a DecisionInputs>,
    /// The X-ray verdict joined to the parcel so far.
    pub xray: engine::XrayInput,
}

/// Decides the lane role of one scanned parcel with `rules`. Pure and light: it runs on the
/// decision path for every parcel.
pub fn decide(table: &ClearanceTable, rules: &engine::RuleSet, scan: Scan) -> Decision {
    let waybill = match scan.read {
        ScanRead::NoRead => {
            return Decision {
                role: LaneRole::Exception,
                rule: "no_read".into(),
                reason: "scanner could not read a waybill".into(),
                instruction_id: None,
                fired: Vec::new(),
                rule_set: rules.version.clone(),
                inputs: None,
            }
        }
        ScanRead::Waybill(w) => w,
    };
    let found = table.known(waybill);
    if let Some(loading) = found.loading {
        return while_loading(rules, waybill, loading, scan);
    }
    let known = found.known();
    let mut windows = Vec::new();
    let mut seen = Vec::new();
    let consumer = known.declaration.and_then(|d| d.consumer);
    let prior = scan
        .prior
        .filter(|p| consumer.is_some() && p.consumer.as_deref() == consumer);
    if consumer.is_some() {
        let value = known.declaration.and_then(|d| d.value_minor).unwrap_or(0);
        for (i, r) in rules.rules.iter().enumerate() {
            if let engine::RuleKind::ConsumerLimit {
                max_parcels,
                max_value_minor,
                ..
            } = r.kind
            {
                let window = r.kind.consumer_window().unwrap_or(calendar::Window::Day);
                let b = scan.calendar.bounds(window, scan.day);
                let window_days = b.last_day - b.first_day + 1;
                let kept = prior.and_then(|p| {
                    p.consumer_windows.iter().find(|w| {
                        w.window_days == window_days
                            && w.window.as_deref().is_none_or(|k| k == window.name())
                    })
                });
                let w = match kept {
                    Some(k) => engine::ConsumerWindow {
                        parcels: k.parcels,
                        value_minor: k.value_minor,
                    },
                    // Up to no end: a parcel counted on a day after this one (a clock that
                    // ran ahead and was set back) counts in every window until its day comes,
                    // rather than in none (fail closed). Only such a clock counts there.
                    None => table.consumer_window_of(waybill, &found, b.first_day, u32::MAX),
                };
                windows.push((i, w));
                seen.push(ConsumerWindowSeen {
                    rule: r.name.clone(),
                    window_days,
                    parcels: w.parcels,
                    value_minor: w.value_minor,
                    window: Some(window.name().to_string()),
                    time_zone: Some(scan.calendar.zone_name().to_string()),
                    // Local times are written below for the rules that fire: no formatting on
                    // the decision path for a limit nobody reaches.
                    from_local: None,
                    from_ms: Some(b.start_ms),
                    until_local: None,
                    until_ms: Some(b.end_ms),
                    parcels_after: Some(w.parcels.saturating_add(1)),
                    value_minor_after: Some(w.value_minor.saturating_add(value)),
                    max_parcels,
                    max_value_minor,
                });
            }
        }
    }
    // The transaction's figures, only for a set with a transaction limit (a digest lookup).
    let transaction = known.declaration.as_ref().filter(|_| {
        rules
            .rules
            .iter()
            .any(|r| matches!(r.kind, engine::RuleKind::TransactionLimit { .. }))
    });
    let transaction = transaction.map(|d| table.transaction(waybill, d));
    let transactions = transaction
        .as_ref()
        .map(|t| {
            let own = known.declaration.and_then(|d| d.value_minor).unwrap_or(0);
            rules
                .rules
                .iter()
                .filter_map(|r| match r.kind {
                    engine::RuleKind::TransactionLimit {
                        max_value_minor, ..
                    } => Some(TransactionSeen {
                        rule: r.name.clone(),
                        order_id: t.order_id.as_deref().map(str::to_string),
                        parcels: t.parcels,
                        value_minor: t.value_minor.saturating_sub(own),
                        value_minor_after: t.value_minor,
                        currency: t.currency.as_deref().map(str::to_string),
                        max_value_minor,
                        without_value: t.without_value,
                    }),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let e = engine::evaluate(
        rules,
        &engine::Inputs {
            waybill,
            declaration: known.declaration,
            instruction: known.instruction,
            suspension: known.suspension,
            measured_weight_g: scan.weight_g,
            weighing: scan.weighing,
            xray: scan.xray,
            consumer: &windows,
            transaction,
        },
    );
    for w in seen.iter_mut() {
        if e.fired.iter().any(|f| f.rule == w.rule) {
            w.from_local = w.from_ms.map(|ms| scan.calendar.rfc3339(ms));
            w.until_local = w.until_ms.map(|ms| scan.calendar.rfc3339(ms));
        }
    }
    let d = known.declaration;
    let inputs = DecisionInputs {
        declared: d.is_some(),
        enterprise: d.map(|d| d.enterprise.to_string()),
        enterprise_suspended: known.suspension.is_some(),
        consumer: d.and_then(|d| d.consumer).map(str::to_string),
        identity_verified: d.map(|d| d.identity_verified),
        value_minor: d.and_then(|d| d.value_minor),
        currency: d.and_then(|d| d.currency).map(str::to_string),
        declared_weight_g: d.and_then(|d| d.gross_weight_g),
        measured_weight_g: scan.weight_g,
        instruction: known.instruction.map(|i| i.action),
        consumer_windows: seen,
        counted: false,
        counted_day: None,
        xray: match scan.xray {
            engine::XrayInput::NotOnLine => None,
            engine::XrayInput::Pending => Some(bondline_devices::contract::XraySeen::Pending),
            engine::XrayInput::Verdict(r) => Some(r.into()),
        },
        transactions,
        pieces: d.map(|_| table.pieces(waybill)).filter(|&n| n > 1),
    };
    let first = e.fired.first();
    let instruction_id = known
        .instruction
        .filter(|_| e.fired.iter().any(|f| f.rule_kind_instruction))
        .map(|i| i.id.to_string());
    Decision {
        role: e.role,
        rule: first.map_or_else(String::new, |f| f.rule.clone()),
        reason: first.map_or_else(String::new, |f| f.reason.clone()),
        instruction_id,
        fired: e.fired,
        rule_set: e.version,
        inputs: Some(inputs),
    }
}

/// The decision of a waybill while the clearance table loads: hold. Its declaration, its
/// instruction, its enterprise's notice or its consumer's history may not be in yet, and only
/// a complete picture may release.
fn while_loading(
    rules: &engine::RuleSet,
    waybill: &str,
    loading: clearance::Loading,
    scan: Scan,
) -> Decision {
    let progress = if loading.expected > 0 {
        format!(
            "{} of about {} stored entries",
            loading.done, loading.expected
        )
    } else {
        format!("{} stored entries so far", loading.done)
    };
    let reason = format!(
        "clearance state still loading from the store ({progress}): {waybill} is held until it is loaded"
    );
    Decision {
        role: LaneRole::Hold,
        rule: STATE_LOADING.into(),
        reason: reason.clone(),
        instruction_id: None,
        fired: vec![engine::Fired {
            rule: STATE_LOADING.into(),
            target: LaneRole::Hold,
            reason,
            rule_kind_instruction: false,
        }],
        rule_set: rules.version.clone(),
        inputs: Some(DecisionInputs {
            measured_weight_g: scan.weight_g,
            ..DecisionInputs::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bondline_devices::contract::{Action, Declaration, Instruction, SCHEMA};
    use bondline_devices::xray::XrayResult;
    use std::collections::{HashMap, HashSet};

    fn decl(w: &str) -> Declaration {
        Declaration {
            schema: SCHEMA,
            waybill: w.into(),
            enterprise: "E1".into(),
            consumer: None,
            identity_verified: true,
            value_minor: None,
            currency: None,
            gross_weight_g: None,
            items: vec![],
            order_id: None,
            pieces: None,
            signature: None,
        }
    }

    fn instr(w: &str, id: &str, action: Action, at: Option<u64>) -> Instruction {
        Instruction {
            schema: SCHEMA,
            instruction_id: id.into(),
            waybill: w.into(),
            action,
            reason: String::new(),
            issued_at_ms: at,
            signature: None,
        }
    }

    fn role(t: &ClearanceTable, w: &str) -> LaneRole {
        let read = ScanRead::Waybill(w.into());
        let scan = Scan {
            read: &read,
            weight_g: None,
            weighing: false,
            day: 1,
            calendar: &calendar::Calendar::default(),
            prior: None,
            xray: engine::XrayInput::NotOnLine,
        };
        decide(t, &engine::RuleSet::builtin(), scan).role
    }

    #[test]
    fn a_local_rule_flagging_a_parcel_is_an_anomaly_whoever_decided() {
        let fired = |rule: &str, target, instruction| engine::Fired {
            rule: rule.into(),
            target,
            reason: String::new(),
            rule_kind_instruction: instruction,
        };
        let decision = |role, fired: Vec<engine::Fired>| Decision {
            role,
            rule: fired[0].rule.clone(),
            reason: String::new(),
            instruction_id: None,
            fired,
            rule_set: "v".into(),
            inputs: None,
        };
        let weight = fired("weight", LaneRole::Inspection, false);
        let hold = fired("instruction", LaneRole::Hold, true);
        let release = fired("instruction", LaneRole::Release, true);
        assert!(decision(LaneRole::Inspection, vec![weight.clone(), release.clone()]).is_anomaly());
        assert!(
            decision(LaneRole::Hold, vec![hold.clone(), weight]).is_anomaly(),
            "customs' hold decided, the scale's evidence still counts"
        );
        assert!(
            !decision(LaneRole::Hold, vec![hold]).is_anomaly(),
            "customs' own order"
        );
        assert!(!decision(LaneRole::Release, vec![release.clone()]).is_anomaly());
        let waiting = fired(engine::AWAITING_XRAY, LaneRole::Inspection, false);
        assert!(!decision(LaneRole::Inspection, vec![waiting, release]).is_anomaly());
    }

    #[test]
    fn each_case_goes_to_its_lane() {
        let t = ClearanceTable::default();
        for w in ["R", "I", "H", "D"] {
            t.apply_declaration(&decl(w));
        }
        t.apply_instruction(&instr("R", "1", Action::Release, None));
        t.apply_instruction(&instr("I", "2", Action::Inspect, None));
        t.apply_instruction(&instr("H", "3", Action::Hold, None));
        t.apply_instruction(&instr("U", "4", Action::Release, None));
        assert_eq!(role(&t, "R"), LaneRole::Release);
        assert_eq!(role(&t, "I"), LaneRole::Inspection);
        assert_eq!(role(&t, "H"), LaneRole::Hold);
        assert_eq!(role(&t, "D"), LaneRole::Hold);
        assert_eq!(
            role(&t, "U"),
            LaneRole::Hold,
            "release without declaration holds"
        );
        assert_eq!(role(&t, "nobody"), LaneRole::Hold);
        assert_eq!(
            decide(
                &t,
                &engine::RuleSet::builtin(),
                Scan {
                    read: &ScanRead::NoRead,
                    weight_g: None,
                    weighing: false,
                    day: 1,
                    calendar: &calendar::Calendar::default(),
                    prior: None,
                    xray: engine::XrayInput::NotOnLine,
                }
            )
            .role,
            LaneRole::Exception
        );
    }

    #[test]
    fn release_needs_both_declaration_and_release_instruction() {
        // Exhaustive over the small input space: declared or not × each instruction.
        let actions = [
            None,
            Some(Action::Release),
            Some(Action::Inspect),
            Some(Action::Hold),
        ];
        for declared in [false, true] {
            for a in actions {
                let t = ClearanceTable::default();
                if declared {
                    t.apply_declaration(&decl("W"));
                }
                if let Some(a) = a {
                    t.apply_instruction(&instr("W", "x", a, None));
                }
                let released = role(&t, "W") == LaneRole::Release;
                assert_eq!(released, declared && a == Some(Action::Release));
            }
        }
    }

    #[test]
    fn redelivery_and_stale_instructions_do_not_change_the_table() {
        let t = ClearanceTable::default();
        t.apply_declaration(&decl("W"));
        assert_eq!(
            t.apply_instruction(&instr("W", "a", Action::Inspect, Some(20))),
            Applied::Changed
        );
        assert_eq!(
            t.apply_instruction(&instr("W", "a", Action::Inspect, Some(20))),
            Applied::Unchanged
        );
        assert_eq!(
            t.apply_instruction(&instr("W", "old", Action::Release, Some(10))),
            Applied::Unchanged
        );
        assert_eq!(role(&t, "W"), LaneRole::Inspection);
        assert_eq!(t.apply_declaration(&decl("W")), Applied::Unchanged);
        // A replaced instruction delivered again (without a time) does not come back.
        assert_eq!(
            t.apply_instruction(&instr("W", "b", Action::Hold, None)),
            Applied::Changed
        );
        assert_eq!(
            t.apply_instruction(&instr("W", "a", Action::Inspect, None)),
            Applied::Unchanged
        );
        assert_eq!(role(&t, "W"), LaneRole::Hold);
    }

    /// A daily limit of one parcel per consumer, and two released waybills A and B of
    /// consumer `c`.
    fn one_a_day() -> (engine::RuleSet, ClearanceTable) {
        let rules = engine::RuleSet::parse(
            "t",
            "version = \"v\"\n[[rules]]\nname = \"i\"\nkind = \"instruction\"\npriority = 9\n\
             [[rules]]\nname = \"daily\"\nkind = \"consumer_limit\"\npriority = 5\ntarget = \"inspection\"\nwindow_days = 1\nmax_parcels = 1\n",
        )
        .unwrap();
        let t = ClearanceTable::default();
        for w in ["A", "B"] {
            let mut d = decl(w);
            d.consumer = Some("c".into());
            t.apply_declaration(&d);
            t.apply_instruction(&instr(w, &format!("I{w}"), Action::Release, None));
        }
        (rules, t)
    }

    /// The decision for a scan of `waybill` on `day`.
    fn decide_on(
        t: &ClearanceTable,
        rules: &engine::RuleSet,
        waybill: &str,
        day: u32,
        prior: Option<&DecisionInputs>,
    ) -> Decision {
        let read = ScanRead::Waybill(waybill.into());
        decide(
            t,
            rules,
            Scan {
                read: &read,
                weight_g: None,
                weighing: false,
                day,
                calendar: &calendar::Calendar::default(),
                prior,
                xray: engine::XrayInput::NotOnLine,
            },
        )
    }

    #[test]
    fn a_re_decision_keeps_the_history_before_the_parcel() {
        let (rules, t) = one_a_day();
        let first = decide_on(&t, &rules, "A", 3, None);
        assert_eq!(first.role, LaneRole::Release);
        t.count("A", 3);
        t.count("B", 3);
        // Decided afresh, A would see B, scanned after it, and exceed the limit of one.
        assert_eq!(
            decide_on(&t, &rules, "A", 3, None).role,
            LaneRole::Inspection
        );
        // Decided again with its first inputs, it keeps the history it had.
        let again = decide_on(&t, &rules, "A", 3, first.inputs.as_ref());
        assert_eq!(again.role, LaneRole::Release, "{:?}", again.fired);
    }

    /// A parcel counted on a day ahead of the scan's (the clock ran ahead, then was set back)
    /// counts in the consumer's windows of the days before it, so that a limit is not reset
    /// by the clock.
    #[test]
    fn a_parcel_counted_on_a_day_ahead_counts_in_the_windows_before_it() {
        let (rules, t) = one_a_day();
        // A counted on day 10 by a clock a week ahead; B scanned on day 3 once it is set back.
        t.count("A", 10);
        let b = decide_on(&t, &rules, "B", 3, None);
        assert_eq!(b.role, LaneRole::Inspection, "{:?}", b.fired);
        assert_eq!(b.rule, "daily");
    }

    /// A calendar-day limit in China Standard Time: a parcel at 23:59:59 local counts on its
    /// day, one at 00:00:00 starts the next (whose UTC date is still the day before), and the
    /// record says which window, its local bounds and the figures before and after.
    #[test]
    fn calendar_windows_turn_at_local_midnight_and_on_new_year() {
        let rules = engine::RuleSet::parse(
            "t",
            "version = \"v\"\n[[rules]]\nname = \"i\"\nkind = \"instruction\"\npriority = 9\n\
             [[rules]]\nname = \"daily\"\nkind = \"consumer_limit\"\npriority = 5\ntarget = \"inspection\"\nwindow = \"calendar_day\"\nmax_parcels = 1\n\
             [[rules]]\nname = \"annual\"\nkind = \"consumer_limit\"\npriority = 4\ntarget = \"inspection\"\nwindow = \"calendar_year\"\nmax_value_minor = 2600000\ncurrency = \"CNY\"\n",
        )
        .unwrap();
        let cal = calendar::Calendar::default();
        let at = |y, m, d, s: i64| {
            (cal.day_start_ms(calendar::days_from_civil(y, m, d) as u32) + s * 1000) as u64
        };
        let t = ClearanceTable::default();
        for w in ["A", "B", "C", "D"] {
            let mut d = decl(w);
            d.consumer = Some("c".into());
            d.value_minor = Some(1_000_000);
            d.currency = Some("CNY".into());
            t.apply_declaration(&d);
            t.apply_instruction(&instr(w, &format!("I{w}"), Action::Release, None));
        }
        let decide_at = |t: &ClearanceTable, w: &str, ms: u64| {
            let read = ScanRead::Waybill(w.into());
            decide(
                t,
                &rules,
                Scan {
                    read: &read,
                    weight_g: None,
                    weighing: false,
                    day: cal.day_of(ms),
                    calendar: &cal,
                    prior: None,
                    xray: engine::XrayInput::NotOnLine,
                },
            )
        };
        // A at 23:59:58 on 30 December, B a second before midnight: the same local day.
        let a = at(2026, 12, 30, 86_398);
        assert_eq!(decide_at(&t, "A", a).role, LaneRole::Release);
        t.count("A", cal.day_of(a));
        let b = at(2026, 12, 30, 86_399);
        let d = decide_at(&t, "B", b);
        assert_eq!(d.role, LaneRole::Inspection);
        assert_eq!(d.rule, "daily");
        let seen = &d.inputs.as_ref().unwrap().consumer_windows;
        let daily = seen.iter().find(|w| w.rule == "daily").unwrap();
        assert_eq!(daily.window.as_deref(), Some("calendar_day"));
        assert_eq!(
            daily.from_local.as_deref(),
            Some("2026-12-30T00:00:00+08:00")
        );
        assert_eq!(
            daily.until_local.as_deref(),
            Some("2026-12-31T00:00:00+08:00")
        );
        assert_eq!(
            (daily.parcels, daily.parcels_after, daily.max_parcels),
            (1, Some(2), Some(1))
        );
        let annual = seen.iter().find(|w| w.rule == "annual").unwrap();
        assert_eq!(
            annual.from_local, None,
            "a limit that did not fire is not formatted"
        );
        assert_eq!(
            annual.from_ms,
            Some(cal.day_start_ms(calendar::days_from_civil(2026, 1, 1) as u32))
        );
        assert_eq!(
            (annual.value_minor, annual.value_minor_after),
            (1_000_000, Some(2_000_000))
        );
        // At 00:00:00 local the day has turned (the UTC date is still the 30th).
        let c = at(2026, 12, 31, 0);
        assert_eq!(c / 86_400_000, b / 86_400_000, "same UTC day");
        assert_eq!(decide_at(&t, "B", c).role, LaneRole::Release);
        t.count("B", cal.day_of(c));
        // C would bring the year to 30,000.00 CNY: over the annual limit on 31 December...
        let eve = at(2026, 12, 31, 86_399);
        let d = decide_at(&t, "C", eve);
        assert!(d.fired.iter().any(|f| f.rule == "annual"), "{:?}", d.fired);
        // ...and not a second later, on New Year's day, when the year starts again.
        let new_year = at(2027, 1, 1, 0);
        assert_eq!(decide_at(&t, "C", new_year).role, LaneRole::Release);
    }

    /// A transaction limit sums the waybills of one order (same enterprise and order id); a
    /// waybill without an order id is its own transaction; another currency, or a waybill of
    /// the order without a value, fails closed; the record carries the order's figures.
    #[test]
    fn a_transaction_limit_counts_the_whole_order() {
        let rules = engine::RuleSet::parse(
            "t",
            "version = \"v\"\n[[rules]]\nname = \"i\"\nkind = \"instruction\"\npriority = 9\n\
             [[rules]]\nname = \"per_order\"\nkind = \"transaction_limit\"\npriority = 5\ntarget = \"inspection\"\nmax_value_minor = 500000\ncurrency = \"CNY\"\n",
        )
        .unwrap();
        let mut t = ClearanceTable::default();
        let declare = |t: &mut ClearanceTable,
                       w: &str,
                       order: Option<&str>,
                       value: Option<u64>,
                       cur: &str| {
            let mut d = decl(w);
            d.consumer = Some("c".into());
            d.value_minor = value;
            d.currency = Some(cur.into());
            d.order_id = order.map(str::to_string);
            t.apply_declaration(&d);
            t.apply_instruction(&instr(w, &format!("I{w}"), Action::Release, None));
        };
        let decide_w = |t: &ClearanceTable, w: &str| {
            let read = ScanRead::Waybill(w.into());
            decide(
                t,
                &rules,
                Scan {
                    read: &read,
                    weight_g: None,
                    weighing: false,
                    day: 1,
                    calendar: &calendar::Calendar::default(),
                    prior: None,
                    xray: engine::XrayInput::NotOnLine,
                },
            )
        };
        declare(&mut t, "A", Some("O-1"), Some(300_000), "CNY");
        let a = decide_w(&t, "A");
        assert_eq!(a.role, LaneRole::Release, "{:?}", a.fired);
        declare(&mut t, "B", Some("O-1"), Some(250_000), "CNY");
        let b = decide_w(&t, "B");
        assert_eq!(
            (b.role, b.rule.as_str()),
            (LaneRole::Inspection, "per_order")
        );
        assert!(b.is_anomaly());
        assert!(
            b.reason.contains("order O-1 (2 waybill(s))"),
            "{}",
            b.reason
        );
        let seen = &b.inputs.as_ref().unwrap().transactions;
        assert_eq!(
            seen.as_slice(),
            [TransactionSeen {
                rule: "per_order".into(),
                order_id: Some("O-1".into()),
                parcels: 2,
                value_minor: 300_000,
                value_minor_after: 550_000,
                currency: Some("CNY".into()),
                max_value_minor: 500_000,
                without_value: 0,
            }]
        );
        // The same value without an order id is a transaction of its own.
        declare(&mut t, "C", None, Some(450_000), "CNY");
        let c = decide_w(&t, "C");
        assert_eq!(c.role, LaneRole::Release);
        assert_eq!(c.inputs.unwrap().transactions[0].order_id, None);
        // Another currency, or a waybill of the order without a value: cannot be checked.
        declare(&mut t, "D", None, Some(1), "USD");
        assert!(decide_w(&t, "D").reason.contains("cannot be checked"));
        declare(&mut t, "E", Some("O-2"), Some(1), "CNY");
        declare(&mut t, "F", Some("O-2"), None, "CNY");
        let e = decide_w(&t, "E");
        assert_eq!(e.role, LaneRole::Inspection);
        assert!(e.reason.contains("without a value"), "{}", e.reason);
        // B re-declared under another order: A's order is within its limit again.
        declare(&mut t, "B", Some("O-3"), Some(250_000), "CNY");
        assert_eq!(decide_w(&t, "A").role, LaneRole::Release);
        t.forget_waybill("F");
        assert_eq!(decide_w(&t, "E").role, LaneRole::Release);
    }

    /// The whole decision over any sequence of platform messages and scans: a parcel reaches
    /// release only if, at that moment, it is declared, its identity verified, its enterprise
    /// not suspended, and its latest applicable instruction is a release; and every decision
    /// names its rule set.
    mod model {
        use super::*;
        use bondline_devices::contract::{EnterpriseAction, EnterpriseNotice};
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Msg {
            Declare {
                w: u8,
                enterprise: u8,
                verified: bool,
                value: u64,
            },
            Instruct {
                w: u8,
                id: u8,
                action: Action,
                at: Option<u64>,
            },
            Notice {
                enterprise: u8,
                id: u8,
                suspend: bool,
                at: Option<u64>,
            },
            Scan {
                w: u8,
                grams: Option<u32>,
                xray: u8,
            },
        }

        fn msg() -> impl Strategy<Value = Msg> {
            let action = prop_oneof![
                Just(Action::Release),
                Just(Action::Inspect),
                Just(Action::Hold)
            ];
            prop_oneof![
                (0u8..6, 0u8..3, any::<bool>(), 0u64..1_000_000).prop_map(
                    |(w, enterprise, verified, value)| Msg::Declare {
                        w,
                        enterprise,
                        verified,
                        value
                    }
                ),
                (0u8..6, 0u8..12, action, proptest::option::of(0u64..5))
                    .prop_map(|(w, id, action, at)| Msg::Instruct { w, id, action, at }),
                (0u8..3, 0u8..8, any::<bool>(), proptest::option::of(0u64..5)).prop_map(
                    |(enterprise, id, suspend, at)| Msg::Notice {
                        enterprise,
                        id,
                        suspend,
                        at
                    }
                ),
                (0u8..7, proptest::option::of(0u32..3000), 0u8..5)
                    .prop_map(|(w, grams, xray)| Msg::Scan { w, grams, xray }),
            ]
        }

        proptest! {
            #[test]
            fn nothing_reaches_release_that_should_not(msgs in proptest::collection::vec(msg(), 1..60)) {
                let rules = engine::RuleSet::parse("model", engine::tests::SET).unwrap();
                let t = ClearanceTable::default();
                // The model: what a correct gateway believes about each waybill.
                let mut declared: HashMap<u8, (u8, bool)> = HashMap::new();
                let mut instruction: HashMap<u8, (Action, Option<u64>)> = HashMap::new();
                let mut seen_ids: HashSet<u8> = HashSet::new();
                let mut suspended: HashMap<u8, (bool, Option<u64>)> = HashMap::new();
                let mut seen_notices: HashSet<u8> = HashSet::new();
                for m in msgs {
                    match m {
                        Msg::Declare { w, enterprise, verified, value } => {
                            let mut d = decl(&format!("W{w}"));
                            d.enterprise = format!("E{enterprise}");
                            d.identity_verified = verified;
                            d.consumer = Some(format!("C{}", w % 2));
                            d.value_minor = Some(value);
                            d.currency = Some("CNY".into());
                            d.gross_weight_g = Some(1000);
                            t.apply_declaration(&d);
                            declared.insert(w, (enterprise, verified));
                        }
                        Msg::Instruct { w, id, action, at } => {
                            let i = instr(&format!("W{w}"), &format!("I{id}"), action, at);
                            t.apply_instruction(&i);
                            let stale = matches!((instruction.get(&w), at), (Some((_, Some(old))), Some(new)) if new < *old);
                            if seen_ids.insert(id) && !stale {
                                instruction.insert(w, (action, at));
                            }
                        }
                        Msg::Notice { enterprise, id, suspend, at } => {
                            let n = EnterpriseNotice {
                                schema: SCHEMA,
                                notice_id: format!("N{id}"),
                                enterprise: format!("E{enterprise}"),
                                action: if suspend { EnterpriseAction::Suspend } else { EnterpriseAction::Lift },
                                reason: String::new(),
                                issued_at_ms: at,
                                signature: None,
                            };
                            t.apply_notice(&n);
                            let stale = matches!((suspended.get(&enterprise), at), (Some((_, Some(old))), Some(new)) if new < *old);
                            if seen_notices.insert(id) && !stale {
                                suspended.insert(enterprise, (suspend, at));
                            }
                        }
                        Msg::Scan { w, grams, xray } => {
                            let read = ScanRead::Waybill(format!("W{w}"));
                            let xray = match xray {
                                0 => engine::XrayInput::NotOnLine,
                                1 => engine::XrayInput::Pending,
                                2 => engine::XrayInput::Verdict(XrayResult::Clear),
                                3 => engine::XrayInput::Verdict(XrayResult::Suspect),
                                _ => engine::XrayInput::Verdict(XrayResult::OperatorMark),
                            };
                            let d = decide(&t, &rules, Scan { read: &read, weight_g: grams, weighing: true, day: 100, calendar: &calendar::Calendar::default(), prior: None, xray });
                            if d.inputs.as_ref().is_some_and(|i| i.consumer.is_some()) {
                                t.count(&format!("W{w}"), 100);
                            }
                            prop_assert_eq!(&d.rule_set, "test-1");
                            prop_assert!(!d.fired.is_empty());
                            if d.role == LaneRole::Release {
                                let (enterprise, verified) = declared.get(&w).copied().expect("released undeclared");
                                prop_assert!(verified, "released unverified");
                                prop_assert!(!suspended.get(&enterprise).is_some_and(|s| s.0), "released suspended");
                                prop_assert_eq!(instruction.get(&w).map(|i| i.0), Some(Action::Release));
                                prop_assert!(matches!(xray, engine::XrayInput::NotOnLine | engine::XrayInput::Verdict(XrayResult::Clear)), "released without a clear X-ray verdict");
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn while_the_table_loads_every_waybill_is_held_as_state_loading() {
        let t = ClearanceTable::default();
        t.apply_declaration(&decl("W"));
        t.apply_instruction(&instr("W", "I1", Action::Release, None));
        t.begin_loading(100);
        let rules = engine::RuleSet::builtin();
        let calendar = calendar::Calendar::default();
        let read = ScanRead::Waybill("W".into());
        let scan = Scan {
            read: &read,
            weight_g: None,
            weighing: false,
            day: 0,
            calendar: &calendar,
            prior: None,
            xray: engine::XrayInput::NotOnLine,
        };
        let d = decide(&t, &rules, scan);
        assert_eq!((d.role, d.rule.as_str()), (LaneRole::Hold, STATE_LOADING));
        assert!(d.reason.contains("of about 100"), "{}", d.reason);
        assert!(!d.is_anomaly(), "waiting for the load is not an anomaly");
        t.finish_loading();
        let d = decide(&t, &rules, scan);
        assert_eq!(d.role, LaneRole::Release);
    }
}
