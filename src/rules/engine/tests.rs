use super::*;
use crate::rules::calendar::Window;
use bondline_devices::contract::{Action, LaneRole};
use bondline_devices::xray::XrayResult;
use proptest::prelude::*;

/// A rule set with every kind, shared by the engine's and the decision's tests.
pub(crate) const SET: &str = r#"
version = "test-1"
sampling_key_hex = "000102030405060708090a0b0c0d0e0f"
[[rules]]
name = "platform"
kind = "instruction"
priority = 100
[[rules]]
name = "suspended"
kind = "suspended_enterprise"
priority = 90
target = "hold"
[[rules]]
name = "identity"
kind = "unverified_identity"
priority = 80
target = "hold"
[[rules]]
name = "undeclared"
kind = "undeclared"
priority = 70
target = "hold"
[[rules]]
name = "xray"
kind = "xray_suspect"
priority = 60
target = "inspection"
[[rules]]
name = "weight"
kind = "weight_mismatch"
priority = 50
target = "inspection"
tolerance_pct = 10.0
tolerance_g = 50
[[rules]]
name = "daily"
kind = "consumer_limit"
priority = 40
target = "inspection"
window_days = 1
max_parcels = 3
[[rules]]
name = "sample"
kind = "sampling"
priority = 10
target = "inspection"
rate_ppm = 100000
"#;

fn set() -> RuleSet {
    RuleSet::parse("test", SET).unwrap()
}

fn decl(verified: bool, weight: Option<u32>) -> Declared<'static> {
    Declared {
        enterprise: "E1",
        consumer: Some("c1"),
        identity_verified: verified,
        value_minor: Some(1000),
        currency: Some("CNY"),
        gross_weight_g: weight,
    }
}

fn instr(action: Action) -> Ordered<'static> {
    Ordered {
        id: "i",
        action,
        reason: "",
    }
}

/// A waybill the test key does not sample.
fn unsampled(set: &RuleSet) -> String {
    (0..)
        .map(|i| format!("W{i}"))
        .find(|w| !set.sampled(w, 100_000))
        .unwrap()
}

#[test]
fn a_release_stands_only_alone() {
    let s = set();
    let w = unsampled(&s);
    let d = decl(true, Some(1000));
    let rel = instr(Action::Release);
    let base = Inputs {
        waybill: &w,
        declaration: Some(d),
        instruction: Some(rel),
        measured_weight_g: Some(1010),
        weighing: true,
        ..Default::default()
    };
    let e = evaluate(&s, &base);
    assert_eq!(e.role, LaneRole::Release, "{e:?}");
    assert_eq!(e.version, "test-1");
    let heavy = Inputs {
        measured_weight_g: Some(1500),
        ..base.clone()
    };
    let e = evaluate(&s, &heavy);
    assert_eq!(e.role, LaneRole::Inspection);
    assert_eq!(e.fired[0].rule, "weight");
    assert!(
        e.fired.iter().any(|f| f.rule == "platform"),
        "every fired rule is reported"
    );
    let suspended = Inputs {
        suspension: Some("documents"),
        ..heavy
    };
    assert_eq!(
        evaluate(&s, &suspended).role,
        LaneRole::Hold,
        "priority decides"
    );
}

#[test]
fn a_weighing_line_fails_closed_on_missing_weights() {
    let s = set();
    let w = unsampled(&s);
    let base = Inputs {
        waybill: &w,
        declaration: Some(decl(true, Some(1000))),
        instruction: Some(instr(Action::Release)),
        measured_weight_g: None,
        weighing: true,
        ..Default::default()
    };
    let e = evaluate(&s, &base);
    assert_eq!(e.role, LaneRole::Inspection);
    assert_eq!(e.fired[0].rule, "weight");
    assert!(e.fired[0].reason.contains("no reading"), "{e:?}");
    let undeclared_weight = Inputs {
        declaration: Some(decl(true, None)),
        measured_weight_g: Some(900),
        ..base.clone()
    };
    let e = evaluate(&s, &undeclared_weight);
    assert_eq!(e.role, LaneRole::Inspection);
    assert!(
        e.fired[0].reason.contains("no declared gross weight"),
        "{e:?}"
    );
    // A line without a scale cannot feed the rule: the load-time warning covers it.
    let no_scale = Inputs {
        weighing: false,
        ..base
    };
    assert_eq!(evaluate(&s, &no_scale).role, LaneRole::Release);
}

#[test]
fn the_built_in_table_of_docs_mqtt_md_is_what_the_built_in_set_decides() {
    // Each row of the table "With the built-in rule set" in docs/mqtt.md, as written
    // there, and the inputs it stands for. A platform written from that doc alone must
    // see what the engine does (identity_verified absent is false: held).
    let doc = include_str!("../../../docs/mqtt.md");
    let s = RuleSet::builtin();
    // (row, instruction held, declaration, lane role, deciding rule)
    type Row<'a> = (
        &'a str,
        Option<Action>,
        Option<Declared<'a>>,
        LaneRole,
        &'a str,
    );
    let rows: [Row; 9] = [
        ("| waybill | `inspect` | any | inspection | `instruction` |", Some(Action::Inspect), Some(decl(false, None)), LaneRole::Inspection, "instruction"),
        ("| waybill | `hold` | any | hold | `instruction` |", Some(Action::Hold), None, LaneRole::Hold, "instruction"),
        ("| waybill | `release` or none | no | hold | `undeclared` |", Some(Action::Release), None, LaneRole::Hold, "undeclared"),
        ("| waybill | `release` or none | no | hold | `undeclared` |", None, None, LaneRole::Hold, "undeclared"),
        ("| waybill | `release` or none | yes, `identity_verified` `false` or absent | hold | `unverified_identity` |", Some(Action::Release), Some(decl(false, None)), LaneRole::Hold, "unverified_identity"),
        ("| waybill | `release` or none | yes, `identity_verified` `false` or absent | hold | `unverified_identity` |", None, Some(decl(false, None)), LaneRole::Hold, "unverified_identity"),
        ("| waybill | `release` | yes, `identity_verified: true` | release | `instruction` |", Some(Action::Release), Some(decl(true, None)), LaneRole::Release, "instruction"),
        ("| waybill | none | yes, `identity_verified: true` | hold | `awaiting_release` |", None, Some(decl(true, None)), LaneRole::Hold, AWAITING_RELEASE),
        ("| waybill | `inspect` | any | inspection | `instruction` |", Some(Action::Inspect), None, LaneRole::Inspection, "instruction"),
    ];
    for (row, action, declaration, role, rule) in rows {
        assert!(doc.contains(row), "docs/mqtt.md lacks the row {row}");
        let inp = Inputs {
            waybill: "W1",
            declaration,
            instruction: action.map(instr),
            ..Default::default()
        };
        let e = evaluate(&s, &inp);
        assert_eq!((e.role, e.fired[0].rule.as_str()), (role, rule), "{row}");
    }
}

#[test]
fn suspension_and_unverified_identity_hold_without_their_rules() {
    let only_instruction = RuleSet::parse(
        "t",
        "version = \"bare-1\"\n[[rules]]\nname = \"platform\"\nkind = \"instruction\"\npriority = 100\n",
    )
    .unwrap();
    let w = "W1";
    let released = Inputs {
        waybill: w,
        declaration: Some(decl(true, None)),
        instruction: Some(instr(Action::Release)),
        ..Default::default()
    };
    assert_eq!(
        evaluate(&only_instruction, &released).role,
        LaneRole::Release
    );
    let suspended = Inputs {
        suspension: Some("licence withdrawn"),
        ..released.clone()
    };
    let e = evaluate(&only_instruction, &suspended);
    assert_eq!(
        (e.role, e.fired[0].rule.as_str()),
        (LaneRole::Hold, ENTERPRISE_SUSPENDED)
    );
    let unverified = Inputs {
        declaration: Some(decl(false, None)),
        ..released
    };
    let e = evaluate(&only_instruction, &unverified);
    assert_eq!(
        (e.role, e.fired[0].rule.as_str()),
        (LaneRole::Hold, IDENTITY_UNVERIFIED)
    );
}

#[test]
fn a_consumer_limit_needs_exactly_one_window() {
    let set = |w: &str| {
        RuleSet::parse(
            "t",
            &format!(
                "version = \"v\"\n[[rules]]\nname = \"i\"\nkind = \"instruction\"\npriority = 9\n\
                 [[rules]]\nname = \"c\"\nkind = \"consumer_limit\"\npriority = 5\ntarget = \"inspection\"\nmax_parcels = 1\n{w}"
            ),
        )
    };
    let both = set("window = \"calendar_year\"\nwindow_days = 3\n")
        .unwrap_err()
        .to_string();
    assert!(
        both.contains("window") && both.contains("not both"),
        "{both}"
    );
    let none = set("").unwrap_err().to_string();
    assert!(none.contains("calendar_day"), "{none}");
    let bad = set("window = \"fortnight\"\n").unwrap_err().to_string();
    assert!(
        bad.contains("fortnight") || bad.contains("calendar_day"),
        "{bad}"
    );
    let year = set("window = \"calendar_year\"\n").unwrap();
    assert_eq!(year.rules[1].kind.consumer_window(), Some(Window::Year));
    let rolling = set("window_days = 30\n").unwrap();
    assert_eq!(
        rolling.rules[1].kind.consumer_window(),
        Some(Window::Rolling(30))
    );
}

#[test]
fn consumer_limits_count_this_parcel() {
    let s = set();
    let w = unsampled(&s);
    let d = decl(true, None);
    let rel = instr(Action::Release);
    let daily = s.rules.iter().position(|r| r.name == "daily").unwrap();
    let history = [(
        daily,
        ConsumerWindow {
            parcels: 3,
            value_minor: 0,
        },
    )];
    let inp = Inputs {
        waybill: &w,
        declaration: Some(d),
        instruction: Some(rel),
        consumer: &history,
        ..Default::default()
    };
    assert_eq!(evaluate(&s, &inp).role, LaneRole::Inspection);
    let history = [(
        daily,
        ConsumerWindow {
            parcels: 2,
            value_minor: 0,
        },
    )];
    let inp = Inputs {
        consumer: &history,
        ..inp
    };
    assert_eq!(evaluate(&s, &inp).role, LaneRole::Release);
}

#[test]
fn sampling_is_keyed_and_close_to_its_rate() {
    let s = set();
    let n = (0..20_000)
        .filter(|i| s.sampled(&format!("BL{i:08}"), 100_000))
        .count();
    assert!((1_700..2_300).contains(&n), "{n} of 20000 at 10%");
    let other = RuleSet::parse("t", &SET.replace("000102", "ff0102")).unwrap();
    let same = (0..2_000)
        .filter(|i| {
            s.sampled(&format!("BL{i:08}"), 100_000) == other.sampled(&format!("BL{i:08}"), 100_000)
        })
        .count();
    assert!(same < 2_000, "a different key samples differently");
}

#[test]
fn invalid_rule_sets_are_rejected_whole() {
    for (from, to, key) in [
        (
            "target = \"hold\"\n[[rules]]\nname = \"identity\"",
            "target = \"release\"\n[[rules]]\nname = \"identity\"",
            "rules[1].target",
        ),
        (
            "name = \"identity\"",
            "name = \"suspended\"",
            "rules[2].name",
        ),
        (
            "rate_ppm = 100000",
            "rate_ppm = 2000000",
            "rules[7].rate_ppm",
        ),
        ("max_parcels = 3", "max_parcel = 3", "rules[6]"),
    ] {
        let e = RuleSet::parse("t", &SET.replacen(from, to, 1)).unwrap_err();
        assert_eq!(e.key, key, "{e}");
    }
    let e = RuleSet::parse("t", "version = \"x\"\nrules = []\n").unwrap_err();
    assert!(e.reason.contains("instruction"), "{e}");
    let example = include_str!("../../../deploy/rules.toml");
    assert!(RuleSet::parse("deploy/rules.toml", example).is_ok());
}

proptest! {
    /// Whatever the inputs and whichever rules the set has, a parcel reaches release only
    /// when it is declared, has a release instruction, is verified, of an enterprise not
    /// suspended, X-ray clear (on an X-ray line) and nothing else fired; and every decision
    /// names its version.
    #[test]
    fn nothing_is_released_without_declaration_and_release_instruction(
        declared in any::<bool>(),
        verified in any::<bool>(),
        action in prop_oneof![Just(None), Just(Some(Action::Release)), Just(Some(Action::Inspect)), Just(Some(Action::Hold))],
        suspended in any::<bool>(),
        xray in prop_oneof![
            Just(XrayInput::NotOnLine),
            Just(XrayInput::Pending),
            Just(XrayInput::Verdict(XrayResult::Clear)),
            Just(XrayInput::Verdict(XrayResult::Suspect)),
            Just(XrayInput::Verdict(XrayResult::OperatorMark)),
        ],
        keep in proptest::collection::vec(any::<bool>(), 8),
        weighing in any::<bool>(),
        weight in proptest::option::of(0u32..5000),
        measured in proptest::option::of(0u32..5000),
        history in 0u32..6,
        waybill in "[A-Z0-9]{6,20}",
    ) {
        // Any subset of the rules (the instruction rule is required at load), so the
        // guarantees cannot lean on the set having a rule for each case.
        let mut s = set();
        let mut k = keep.iter();
        s.rules.retain(|r| r.kind == RuleKind::Instruction || *k.next().unwrap_or(&true));
        let d = decl(verified, weight);
        let ins = action.map(instr);
        let h: Vec<_> = s.rules.iter().position(|r| r.name == "daily")
            .map(|daily| (daily, ConsumerWindow { parcels: history, value_minor: 0 }))
            .into_iter()
            .collect();
        let inp = Inputs {
            waybill: &waybill,
            declaration: declared.then_some(d),
            instruction: ins,
            suspension: suspended.then_some("suspended"),
            measured_weight_g: measured,
            weighing,
            xray,
            consumer: &h,
            transaction: None,
        };
        let e = evaluate(&s, &inp);
        prop_assert_eq!(&e.version, "test-1");
        prop_assert!(!e.fired.is_empty());
        if e.role == LaneRole::Release {
            prop_assert!(declared && action == Some(Action::Release));
            prop_assert!(verified && !suspended);
            prop_assert!(matches!(xray, XrayInput::NotOnLine | XrayInput::Verdict(XrayResult::Clear)));
            prop_assert!(e.fired.iter().all(|f| f.target == LaneRole::Release));
        }
        if !declared || !verified || suspended || action == Some(Action::Inspect) || action == Some(Action::Hold) {
            prop_assert_ne!(e.role, LaneRole::Release);
        }
        let weight_rule = s.rules.iter().any(|r| matches!(r.kind, RuleKind::WeightMismatch { .. }));
        if weight_rule && weighing && (weight.is_none() || measured.is_none()) {
            prop_assert_ne!(e.role, LaneRole::Release, "an unchecked weight is never released");
        }
    }
}
