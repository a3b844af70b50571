//! A decision's reasons in the reader's language, written from structured fields: the rule's
//! kind and parameters (from the rule set the record names) and what the decision saw (the
//! record's `inputs`), through the catalogues' `reason.<kind>` templates. The pages do the same
//! in the browser (`reasonOf` in `assets/common.js`, with the same keys and the same fallbacks);
//! this is the server's copy, for the shift export.
//!
//! The recorded reason (English, written at decision time) is the fallback whenever the
//! structured fields cannot say it: a record decided under a rule set not at hand, a rule not
//! in it, a figure missing from the inputs. Pure.

use bondline_devices::contract::{wire_name, ParcelRecord};

use super::i18n::Lang;
use crate::rules::engine::{RuleKind, RuleSet};

/// The reason of rule `name` on parcel record `p` in `lang`; `recorded` when the structured
/// fields cannot give it. `rule_sets` are the rule sets at hand; the record's own (by
/// `rule_set` version) is used.
pub fn reason_text(
    p: &ParcelRecord,
    name: &str,
    recorded: &str,
    rule_sets: &[RuleSet],
    lang: Lang,
) -> String {
    let cat = lang.catalogue();
    // The gateway's own decisions (no read, waiting for the X-ray) have fixed reasons.
    let builtin = format!("reason.builtin.{name}");
    if cat.get(&builtin) != builtin {
        return cat.get(&builtin).to_string();
    }
    let rule = p
        .rule_set
        .as_deref()
        .and_then(|v| rule_sets.iter().find(|s| s.version == v))
        .and_then(|s| s.rules.iter().find(|r| r.name == name));
    let (Some(rule), Some(i)) = (rule, p.inputs.as_deref()) else {
        return recorded.to_string();
    };
    let fmt = |key: &str, args: &[(&str, &str)]| cat.format(key, args);
    match &rule.kind {
        RuleKind::Instruction => match i.instruction {
            Some(a) => {
                let action = cat.get(&format!("action.{}", wire_name(&a))).to_string();
                fmt("reason.instruction", &[("action", &action)])
            }
            None => recorded.to_string(),
        },
        RuleKind::Undeclared => fmt(
            "reason.undeclared",
            &[("waybill", p.waybill.as_deref().unwrap_or("—"))],
        ),
        RuleKind::SuspendedEnterprise => match i.enterprise.as_deref() {
            Some(e) => fmt("reason.suspended_enterprise", &[("enterprise", e)]),
            None => recorded.to_string(),
        },
        RuleKind::WeightMismatch {
            tolerance_pct,
            tolerance_g,
        } => match (i.measured_weight_g, i.declared_weight_g) {
            (Some(m), Some(d)) => fmt(
                "reason.weight_mismatch",
                &[
                    ("measured_g", &number(u64::from(m))),
                    ("declared_g", &number(u64::from(d))),
                    ("tolerance_pct", &decimal(*tolerance_pct)),
                    ("tolerance_g", &number(u64::from(*tolerance_g))),
                ],
            ),
            _ => recorded.to_string(),
        },
        RuleKind::ConsumerLimit {
            window,
            window_days,
            currency,
            ..
        } => {
            let Some(w) = i.consumer_windows.iter().find(|w| w.rule == name) else {
                return recorded.to_string();
            };
            let window = match window {
                Some(cw) => cat.get(&format!("window.{}", wire_name(cw))).to_string(),
                None => fmt(
                    "window.rolling",
                    &[(
                        "days",
                        &number(u64::from(window_days.unwrap_or(w.window_days))),
                    )],
                ),
            };
            let currency = i.currency.as_deref().or(currency.as_deref());
            fmt(
                "reason.consumer_limit",
                &[
                    ("window", &window),
                    ("parcels", &number(u64::from(w.parcels))),
                    ("value", &money(w.value_minor, currency)),
                ],
            )
        }
        RuleKind::TransactionLimit { currency, .. } => {
            let Some(x) = i.transactions.iter().find(|x| x.rule == name) else {
                return recorded.to_string();
            };
            let cur = x
                .currency
                .as_deref()
                .or(currency.as_deref())
                .or(i.currency.as_deref());
            let which = match &x.order_id {
                Some(order) => fmt(
                    "transaction.order",
                    &[
                        ("order", order.as_str()),
                        ("parcels", &number(u64::from(x.parcels))),
                    ],
                ),
                None => fmt("transaction.waybill", &[]),
            };
            fmt(
                "reason.transaction_limit",
                &[
                    ("which", &which),
                    ("value", &money(x.value_minor_after, cur)),
                    (
                        "limit",
                        &money(x.max_value_minor, currency.as_deref().or(cur)),
                    ),
                ],
            )
        }
        RuleKind::Sampling { rate_ppm } => fmt(
            "reason.sampling",
            &[("rate_ppm", &number(u64::from(*rate_ppm)))],
        ),
        RuleKind::UnverifiedIdentity => fmt("reason.unverified_identity", &[]),
        RuleKind::XraySuspect => fmt("reason.xray_suspect", &[]),
    }
}

/// Every fired rule with its reason, the deciding one first, as `rule: reason; …`; the
/// decision's own rule and reason when none is listed.
pub fn reasons_text(p: &ParcelRecord, rule_sets: &[RuleSet], lang: Lang) -> String {
    if p.rules_fired.is_empty() {
        return format!(
            "{}: {}",
            p.rule,
            reason_text(p, &p.rule, &p.reason, rule_sets, lang)
        );
    }
    p.rules_fired
        .iter()
        .map(|f| {
            format!(
                "{}: {}",
                f.rule,
                reason_text(p, &f.rule, &f.reason, rule_sets, lang)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A whole number with thousands separators (`12,345`), as both languages write it.
fn number(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A decimal with at most three places and no trailing zeros (`2.5`, `10`).
fn decimal(x: f64) -> String {
    if !x.is_finite() {
        return x.to_string();
    }
    let s = format!("{:.3}", x.abs());
    let s = s.trim_end_matches('0').trim_end_matches('.');
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let int = number(int.parse().unwrap_or(0));
    let sign = if x < 0.0 && s != "0" { "-" } else { "" };
    if frac.is_empty() {
        format!("{sign}{int}")
    } else {
        format!("{sign}{int}.{frac}")
    }
}

/// An amount in minor units (cents, fen) with two places and its currency code
/// (`1,234.50 CNY`).
fn money(minor: u64, currency: Option<&str>) -> String {
    let v = format!("{}.{:02}", number(minor / 100), minor % 100);
    match currency {
        Some(c) => format!("{v} {c}"),
        None => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bondline_devices::contract::{Action, ConsumerWindowSeen, DecisionInputs, FiredRule};

    const RULES: &str = r#"
version = "r-7"
sampling_key_hex = "00112233445566778899aabbccddeeff"
[[rules]]
name = "customs-instruction"
kind = "instruction"
priority = 100
[[rules]]
name = "weight"
kind = "weight_mismatch"
tolerance_pct = 2.5
tolerance_g = 1200
priority = 50
target = "inspection"
[[rules]]
name = "monthly"
kind = "consumer_limit"
window = "calendar_month"
max_parcels = 10
currency = "CNY"
priority = 40
target = "hold"
[[rules]]
name = "sample"
kind = "sampling"
rate_ppm = 20000
priority = 10
target = "inspection"
"#;

    fn record() -> ParcelRecord {
        let mut p = crate::journal::test_record(1, 1000);
        p.rule_set = Some("r-7".into());
        p.rule = "weight".into();
        p.reason = "weighed 5148 g, declared 3218 g".into();
        p.inputs = Some(Box::new(DecisionInputs {
            measured_weight_g: Some(5148),
            declared_weight_g: Some(3218),
            instruction: Some(Action::Release),
            currency: Some("CNY".into()),
            // Parsed as stored, so fields added to the window later keep their defaults.
            consumer_windows: vec![serde_json::from_value::<ConsumerWindowSeen>(
                serde_json::json!({
                    "rule": "monthly", "window_days": 31, "parcels": 12,
                    "value_minor": 123_450, "window": "calendar_month"
                }),
            )
            .unwrap()],
            ..Default::default()
        }));
        p.rules_fired = vec![
            FiredRule {
                rule: "weight".into(),
                target: bondline_devices::contract::LaneRole::Inspection,
                reason: p.reason.clone(),
            },
            FiredRule {
                rule: "monthly".into(),
                target: bondline_devices::contract::LaneRole::Hold,
                reason: "consumer over the monthly limit".into(),
            },
        ];
        p
    }

    #[test]
    fn reasons_are_written_from_the_rule_and_the_inputs_in_each_language() {
        let sets = [RuleSet::parse("test", RULES).unwrap()];
        let p = record();
        assert_eq!(
            reasons_text(&p, &sets, Lang::Zh),
            "weight: 实重 5,148 克，申报 3,218 克（允差 2.5% 且 1,200 克）; \
             monthly: 消费者超出自然月额度：12 个包裹，金额 1,234.50 CNY"
        );
        assert_eq!(
            reasons_text(&p, &sets, Lang::En),
            "weight: Weighed 5,148 g, declared 3,218 g (tolerance 2.5 % and 1,200 g); \
             monthly: Consumer over the limit of the calendar month: 12 parcels, value 1,234.50 CNY"
        );
        assert_eq!(
            reason_text(&p, "customs-instruction", "x", &sets, Lang::Zh),
            "海关平台指令：放行"
        );
        assert_eq!(
            reason_text(&p, "sample", "x", &sets, Lang::En),
            "Random sampling at 20,000 per million"
        );
        assert_eq!(
            reason_text(&p, "no_read", "x", &sets, Lang::Zh),
            "扫描器未能读取运单号"
        );
    }

    #[test]
    fn the_recorded_reason_stands_in_when_the_fields_cannot_say_it() {
        let sets = [RuleSet::parse("test", RULES).unwrap()];
        let mut p = record();
        // A rule not in the set.
        assert_eq!(
            reason_text(&p, "gone", "as recorded", &sets, Lang::Zh),
            "as recorded"
        );
        // Another rule set.
        p.rule_set = Some("r-6".into());
        assert_eq!(
            reason_text(&p, "weight", "as recorded", &sets, Lang::Zh),
            "as recorded"
        );
        // A figure missing.
        p.rule_set = Some("r-7".into());
        if let Some(i) = p.inputs.as_deref_mut() {
            i.measured_weight_g = None;
        }
        assert_eq!(
            reason_text(&p, "weight", "as recorded", &sets, Lang::En),
            "as recorded"
        );
        // No rule set at hand.
        assert_eq!(
            reasons_text(&p, &[], Lang::Zh),
            "weight: weighed 5148 g, declared 3218 g; monthly: consumer over the monthly limit"
        );
    }

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(number(0), "0");
        assert_eq!(number(999), "999");
        assert_eq!(number(1000), "1,000");
        assert_eq!(number(1_234_567), "1,234,567");
        assert_eq!(decimal(2.5), "2.5");
        assert_eq!(decimal(10.0), "10");
        assert_eq!(decimal(1234.125), "1,234.125");
        assert_eq!(money(5, None), "0.05");
    }
}
