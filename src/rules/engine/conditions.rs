//! The conditions of the rule kinds that weigh figures rather than read a flag: consumer
//! limits over a window, transaction limits over an order, and the scale against the
//! declared weight. Each fails closed where its figures cannot be checked.

use bondline_devices::contract::LaneRole;

use super::Inputs;
use crate::rules::calendar::Window;

/// Whether the consumer-limit rule at index `i` fires, and why.
pub(super) fn consumer_limit(
    inp: &Inputs,
    i: usize,
    window: Window,
    max_parcels: Option<u32>,
    max_value_minor: Option<u64>,
    currency: Option<&str>,
) -> Option<(LaneRole, String)> {
    let d = inp.declaration?;
    d.consumer?;
    let value = d.value_minor.unwrap_or(0);
    if let (Some(limit_cur), Some(_)) = (currency, max_value_minor) {
        if d.currency != Some(limit_cur) {
            return Some((
                LaneRole::Inspection,
                format!(
                    "declared value in {} cannot be checked against the {} limit in {limit_cur}",
                    d.currency.unwrap_or("no currency"),
                    window.describe()
                ),
            ));
        }
    }
    let seen = inp
        .consumer
        .iter()
        .find(|(r, _)| *r == i)
        .map(|(_, w)| *w)
        .unwrap_or_default();
    let over_count = max_parcels.is_some_and(|m| seen.parcels.saturating_add(1) > m);
    let over_value = max_value_minor.is_some_and(|m| seen.value_minor.saturating_add(value) > m);
    (over_count || over_value).then(|| {
        (
            LaneRole::Inspection,
            format!(
                "consumer over its {} limit: {} parcel(s) and {} in value before this one, {value} in this one",
                window.describe(), seen.parcels, seen.value_minor
            ),
        )
    })
}

/// Whether a transaction-limit rule fires, and why: the transaction's declared value, this
/// parcel included, above `max_value_minor`; or a value that cannot be checked (another
/// currency than the rule's, a waybill without a value): fail closed.
pub(super) fn transaction_limit(
    inp: &Inputs,
    max_value_minor: u64,
    currency: Option<&str>,
) -> Option<(LaneRole, String)> {
    inp.declaration?;
    let t = inp.transaction.as_ref()?;
    let which = match &t.order_id {
        Some(o) => format!("order {o} ({} waybill(s))", t.parcels),
        None => "this waybill".to_string(),
    };
    if let Some(limit_cur) = currency {
        if t.currency.as_deref() != Some(limit_cur) {
            return Some((
                LaneRole::Inspection,
                format!(
                    "declared value of {which} in {} cannot be checked against the transaction limit in {limit_cur}",
                    t.currency.as_deref().unwrap_or("no single currency")
                ),
            ));
        }
    }
    if t.without_value > 0 {
        return Some((
            LaneRole::Inspection,
            format!(
                "{which}: {} waybill(s) declared without a value, the transaction limit cannot be checked",
                t.without_value
            ),
        ));
    }
    (t.value_minor > max_value_minor).then(|| {
        (
            LaneRole::Inspection,
            format!(
                "transaction over its limit: {which} declared {} in value, limit {max_value_minor}",
                t.value_minor
            ),
        )
    })
}

/// Whether a weight rule fires, and why. On a weighing line an unweighed parcel, or one
/// declared without a gross weight, cannot be checked and fires: fail closed. A line without
/// a scale cannot feed the rule at all (the daemon warns about such a rule at load).
pub(super) fn weight_mismatch(
    inp: &Inputs,
    tolerance_pct: f64,
    tolerance_g: u32,
) -> Option<(LaneRole, String)> {
    let d = inp.declaration?;
    if !inp.weighing {
        return None;
    }
    let reason = match (d.gross_weight_g, inp.measured_weight_g) {
        (Some(declared), Some(measured)) => {
            let diff = declared.abs_diff(measured);
            let pct = diff as f64 * 100.0 / declared.max(1) as f64;
            if diff <= tolerance_g || pct <= tolerance_pct {
                return None;
            }
            format!("weighed {measured} g, declared {declared} g")
        }
        (None, _) => "no declared gross weight to check the scale against".into(),
        (Some(declared), None) => format!("the scale gave no reading (declared {declared} g)"),
    };
    Some((LaneRole::Inspection, reason))
}
