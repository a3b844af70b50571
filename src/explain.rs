//! `bondline explain WAYBILL`: why each parcel of a waybill went where it went, from the store.
//!
//! Pure rendering of what the journal holds: the declaration, and every record of the waybill
//! (each parcel decision with the rules that fired and the inputs they saw, the PLC's
//! dispositions, alerts) with its forwarding state. Text for people; `--json` for tools.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use bondline_devices::contract::{DecisionInputs, Declaration, Record};
use serde::Serialize;

use crate::journal::Forwarding;

/// One record of the waybill and whether the platform has it.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub record: Record,
    pub forwarding: Forwarding,
}

/// Everything the store knows about one waybill.
#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    pub waybill: String,
    pub declaration: Option<Declaration>,
    pub records: Vec<Entry>,
}

/// Everything the journal at hand holds about `waybill`: its declaration and its records in
/// sequence order, found through the waybill index.
pub fn from_journal(
    journal: &crate::journal::Journal,
    waybill: &str,
) -> Result<Explanation, crate::journal::JournalError> {
    let mut records = Vec::new();
    for record in journal.waybill_records(waybill)? {
        let forwarding = journal.forwarding(record.seq())?;
        records.push(Entry { record, forwarding });
    }
    Ok(Explanation {
        waybill: waybill.to_string(),
        declaration: journal.declaration(waybill)?,
        records,
    })
}

fn time(ms: u64) -> String {
    humantime::format_rfc3339_millis(SystemTime::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

fn money(minor: u64, currency: Option<&str>) -> String {
    format!(
        "{}.{:02} {}",
        minor / 100,
        minor % 100,
        currency.unwrap_or("(no currency)")
    )
}

fn grams(g: u32) -> String {
    format!("{}.{:03} kg", g / 1000, g % 1000)
}

/// What the decision saw, in one line.
fn inputs_line(i: &DecisionInputs) -> String {
    let mut parts = Vec::new();
    if !i.declared {
        parts.push("no declaration".to_string());
    } else {
        let e = i.enterprise.as_deref().unwrap_or("?");
        parts.push(if i.enterprise_suspended {
            format!("enterprise {e} SUSPENDED")
        } else {
            format!("enterprise {e}")
        });
        if let Some(c) = &i.consumer {
            let verified = match i.identity_verified {
                Some(true) => "verified",
                _ => "NOT verified",
            };
            parts.push(format!("consumer {c} ({verified})"));
        }
        if let Some(v) = i.value_minor {
            parts.push(format!("value {}", money(v, i.currency.as_deref())));
        }
    }
    match (i.measured_weight_g, i.declared_weight_g) {
        (Some(m), Some(d)) => parts.push(format!(
            "weighed {} against {} declared",
            grams(m),
            grams(d)
        )),
        (Some(m), None) => parts.push(format!("weighed {}", grams(m))),
        (None, Some(d)) => parts.push(format!("{} declared, not weighed", grams(d))),
        (None, None) => {}
    }
    parts.push(match i.instruction {
        Some(a) => format!(
            "instruction {}",
            serde_json::to_value(a)
                .map(|v| v.as_str().unwrap_or("?").to_string())
                .unwrap_or_default()
        ),
        None => "no instruction".into(),
    });
    if let Some(x) = i.xray {
        parts.push(format!(
            "X-ray {}",
            serde_json::to_value(x)
                .map(|v| v.as_str().unwrap_or("?").replace('_', " "))
                .unwrap_or_default()
        ));
    }
    for w in &i.consumer_windows {
        parts.push(consumer_window_text(w, i.currency.as_deref()));
    }
    for t in &i.transactions {
        parts.push(transaction_text(t));
    }
    parts.join("; ")
}

/// One transaction-limit rule's figures as an officer checks them: the order (or the waybill
/// alone), its declared value before and with this parcel, and the limit.
fn transaction_text(t: &bondline_devices::contract::TransactionSeen) -> String {
    let cur = t.currency.as_deref();
    let which = match &t.order_id {
        Some(o) => format!("order {o}, {} waybill(s)", t.parcels),
        None => "no order id, this waybill alone".to_string(),
    };
    let mut text = format!(
        "{} ({which}): before this one {}; with it {}; limit {}",
        t.rule,
        money(t.value_minor, cur),
        money(t.value_minor_after, cur),
        money(t.max_value_minor, cur),
    );
    if cur.is_none() {
        text.push_str("; not in one currency");
    }
    if t.without_value > 0 {
        text.push_str(&format!("; {} waybill(s) without a value", t.without_value));
    }
    text
}

/// One limit rule's window as an officer checks it: which window, its local bounds, the
/// figures before and after this parcel, and the limit.
fn consumer_window_text(
    w: &bondline_devices::contract::ConsumerWindowSeen,
    currency: Option<&str>,
) -> String {
    let Some(kind) = w.window.as_deref() else {
        return format!(
            "{} over {} day(s): {} parcel(s), {} before this one",
            w.rule,
            w.window_days,
            w.parcels,
            money(w.value_minor, currency)
        );
    };
    // Records keep local times only for the rules that fired; the others carry the instants
    // and the zone, which give the same local times here.
    let cal = w
        .time_zone
        .as_deref()
        .and_then(|z| crate::rules::calendar::Calendar::new(z).ok());
    let local = |text: &Option<String>, ms: Option<i64>| {
        text.clone()
            .or_else(|| Some(cal.as_ref()?.rfc3339(ms?)))
            .unwrap_or_else(|| "?".into())
    };
    let mut t = format!(
        "{} {} [{} .. {}) ({} ms .. {} ms): before this one {} parcel(s), {}; with it {} parcel(s), {}",
        w.rule,
        kind,
        local(&w.from_local, w.from_ms),
        local(&w.until_local, w.until_ms),
        w.from_ms.map_or_else(|| "?".into(), |v| v.to_string()),
        w.until_ms.map_or_else(|| "?".into(), |v| v.to_string()),
        w.parcels,
        money(w.value_minor, currency),
        w.parcels_after.map_or_else(|| "?".into(), |v| v.to_string()),
        w.value_minor_after.map_or_else(|| "?".into(), |v| money(v, currency)),
    );
    if let Some(m) = w.max_parcels {
        t.push_str(&format!("; limit {m} parcel(s)"));
    }
    if let Some(m) = w.max_value_minor {
        t.push_str(&format!("; limit {}", money(m, currency)));
    }
    t
}

impl Explanation {
    /// The explanation as text for customs staff.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "Waybill {}", self.waybill);
        match &self.declaration {
            None => {
                let _ = writeln!(out, "Declaration: none received");
            }
            Some(d) => {
                let items: Vec<String> = d
                    .items
                    .iter()
                    .map(|i| format!("{} x{}", i.description, i.quantity))
                    .collect();
                let _ = writeln!(
                    out,
                    "Declaration: enterprise {}, consumer {}, identity {}, value {}, gross weight {}, items: {}",
                    d.enterprise,
                    d.consumer.as_deref().unwrap_or("(none)"),
                    if d.identity_verified { "verified" } else { "not verified" },
                    d.value_minor.map_or("(none)".into(), |v| money(v, d.currency.as_deref())),
                    d.gross_weight_g.map_or("(none)".into(), grams),
                    if items.is_empty() { "(none)".into() } else { items.join(", ") },
                );
            }
        }
        if self.records.is_empty() {
            let _ = writeln!(
                out,
                "No records: not scanned on this gateway, or purged by retention."
            );
        }
        for e in &self.records {
            let state = match &e.forwarding {
                Forwarding::Forwarded => "forwarded".to_string(),
                Forwarding::Outbox => "in outbox".to_string(),
                Forwarding::Parked { reason } => format!("parked: {reason}"),
            };
            match &e.record {
                Record::Parcel(p) => {
                    let _ = writeln!(
                        out,
                        "\nParcel {} on line {}, scanned {} (record {}, {state})",
                        p.parcel,
                        p.line,
                        time(p.scanned_at_ms),
                        p.seq
                    );
                    let _ = writeln!(
                        out,
                        "  revision {}: {} (lane {}) by rule `{}` of rule set {}",
                        p.revision,
                        p.lane_role.as_str(),
                        p.lane,
                        p.rule,
                        p.rule_set.as_deref().unwrap_or("(unknown)")
                    );
                    let _ = writeln!(out, "  why: {}", p.reason);
                    for f in &p.rules_fired {
                        let _ = writeln!(
                            out,
                            "  fired: {} -> {}: {}",
                            f.rule,
                            f.target.as_str(),
                            f.reason
                        );
                    }
                    if let Some(i) = &p.inputs {
                        let _ = writeln!(out, "  saw: {}", inputs_line(i));
                    }
                    let d = &p.divert;
                    let _ = writeln!(
                        out,
                        "  divert: {}{}{} at {}",
                        serde_json::to_value(d.status)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default(),
                        d.plc_seq
                            .map_or(String::new(), |s| format!(" (PLC seq {s})")),
                        d.detail
                            .as_ref()
                            .map_or(String::new(), |x| format!(": {x}")),
                        time(d.at_ms)
                    );
                    if d.late {
                        let _ = writeln!(out, "  LATE: the PLC acknowledged after the deadline");
                    }
                }
                Record::Disposition(d) => {
                    let _ = writeln!(
                        out,
                        "  disposition of parcel {}: {} to lane {}{} at {} (record {}, {state})",
                        d.parcel,
                        serde_json::to_value(d.disposition)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default(),
                        d.lane,
                        d.lane_role
                            .map_or(String::new(), |r| format!(" ({})", r.as_str())),
                        time(d.at_ms),
                        d.seq
                    );
                }
                Record::Report(_) | Record::ImageChunk(_) => {}
                Record::Xray(x) => {
                    let verdict = match x.result {
                        Some(r) => r.as_str().replace('_', " "),
                        None => "none before the deadline".into(),
                    };
                    let _ = writeln!(
                        out,
                        "  X-ray {}: {verdict}{}{} ({}) at {} (record {}, {state})",
                        x.device,
                        x.material.map_or(String::new(), |m| format!(
                            ", {}",
                            bondline_devices::contract::wire_name(&m)
                        )),
                        x.scan_id.map_or(String::new(), |s| format!(", scan {s}")),
                        bondline_devices::contract::wire_name(&x.join).replace('_', " "),
                        time(x.at_ms),
                        x.seq
                    );
                }
                Record::Image(i) => {
                    let _ = writeln!(
                        out,
                        "  X-ray image {} of scan {}: {} bytes, sha256 {}{}{} (record {}, {state})",
                        i.view,
                        i.scan_id,
                        i.bytes,
                        i.sha256,
                        match (&i.error, i.width, i.height) {
                            (Some(e), _, _) => format!(", UNREADABLE: {e}"),
                            (None, Some(w), Some(h)) =>
                                format!(", {} {w}x{h}", i.format.as_deref().unwrap_or("?")),
                            _ => String::new(),
                        },
                        i.kept_at
                            .as_ref()
                            .map_or(String::new(), |k| format!(", original at {k}")),
                        i.seq
                    );
                }
                Record::Snapshot(s) => {
                    let at = match s.lane {
                        Some(l) => format!("lane {l}"),
                        None => "scan point".to_string(),
                    };
                    let what = match (&s.error, &s.sha256) {
                        // The reason as recorded: it may name a path or a status.
                        (Some(e), _) => {
                            format!(
                                "NO EVIDENCE: {}",
                                e.strip_prefix("no evidence: ").unwrap_or(e)
                            )
                        }
                        (None, Some(sha)) => format!(
                            "{} bytes{}, sha256 {sha}{}",
                            s.bytes,
                            match (s.width, s.height) {
                                (Some(w), Some(h)) => format!(" {w}x{h}"),
                                _ => String::new(),
                            },
                            s.kept_at
                                .as_ref()
                                .map_or(String::new(), |k| format!(", original at {k}"))
                        ),
                        (None, None) => "no picture".to_string(),
                    };
                    let _ = writeln!(
                        out,
                        "  camera {} at {at}: {what}, due {} (record {}, {state})",
                        s.camera,
                        time(s.due_at_ms),
                        s.seq
                    );
                }
                Record::Alert(a) => {
                    let _ = writeln!(
                        out,
                        "  ALERT {}: {} at {} (record {}, {state})",
                        serde_json::to_value(a.alert)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_string))
                            .unwrap_or_default(),
                        a.detail,
                        time(a.at_ms),
                        a.seq
                    );
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bondline_devices::contract::{
        DivertOutcome, DivertStatus, FiredRule, LaneRole, ParcelRecord, ReadOutcome, SCHEMA,
    };

    #[test]
    fn a_weighed_parcel_is_explained_with_its_rules_and_inputs() {
        let p = ParcelRecord {
            schema: SCHEMA,
            msg_id: "gw-7".into(),
            seq: 7,
            prev_hash: String::new(),
            gateway: "gw".into(),
            line: "L1".into(),
            parcel: 42,
            read: ReadOutcome::Ok,
            waybill: Some("BL1".into()),
            lane: 2,
            lane_role: LaneRole::Inspection,
            rule: "weight".into(),
            reason: "weighed 1600 g, declared 1000 g".into(),
            instruction_id: Some("I1".into()),
            scanned_at_ms: 1_795_721_462_091,
            decided_at_ms: 1_795_721_462_091,
            divert: DivertOutcome {
                status: DivertStatus::Acked,
                plc_seq: Some(5),
                detail: None,
                at_ms: 1_795_721_462_095,
                late: false,
            },
            revision: 0,
            deadline_ms: None,
            rule_set: Some("v1".into()),
            rules_fired: vec![
                FiredRule {
                    rule: "weight".into(),
                    target: LaneRole::Inspection,
                    reason: "weighed 1600 g, declared 1000 g".into(),
                },
                FiredRule {
                    rule: "instruction".into(),
                    target: LaneRole::Release,
                    reason: "instruction I1: Release".into(),
                },
            ],
            inputs: Some(Box::new(DecisionInputs {
                declared: true,
                enterprise: Some("E1".into()),
                consumer: Some("c1".into()),
                identity_verified: Some(true),
                value_minor: Some(12_345),
                currency: Some("CNY".into()),
                declared_weight_g: Some(1000),
                measured_weight_g: Some(1600),
                instruction: Some(bondline_devices::contract::Action::Release),
                transactions: vec![bondline_devices::contract::TransactionSeen {
                    rule: "per_order".into(),
                    order_id: Some("O-7".into()),
                    parcels: 2,
                    value_minor: 300_000,
                    value_minor_after: 312_345,
                    currency: Some("CNY".into()),
                    max_value_minor: 500_000,
                    without_value: 0,
                }],
                ..Default::default()
            })),
        };
        let text = Explanation {
            waybill: "BL1".into(),
            declaration: None,
            records: vec![Entry {
                record: Record::Parcel(p),
                forwarding: Forwarding::Forwarded,
            }],
        }
        .render();
        for want in [
            "Waybill BL1",
            "Declaration: none received",
            "inspection (lane 2) by rule `weight` of rule set v1",
            "fired: instruction -> release",
            "weighed 1.600 kg against 1.000 kg declared",
            "value 123.45 CNY",
            "per_order (order O-7, 2 waybill(s)): before this one 3000.00 CNY; with it 3123.45 CNY; limit 5000.00 CNY",
            "instruction release",
            "divert: acked (PLC seq 5)",
            "record 7, forwarded",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
    }

    #[test]
    fn snapshots_are_listed_with_their_picture_or_why_there_is_none() {
        let c = crate::camera::Capture {
            camera: "lane-2".into(),
            point: bondline_devices::contract::CameraPoint::Lane,
            lane: Some(2),
            parcel: 9,
            waybill: Some("BL1".into()),
            due: std::time::Instant::now(),
            due_at_ms: 1_795_721_464_091,
        };
        let missing =
            crate::camera::schedule::no_evidence("gw", "L1", &c, "camera answered HTTP 503");
        let mut taken = missing.clone();
        taken.error = None;
        taken.sha256 = Some("ab".repeat(32));
        taken.bytes = 4096;
        (taken.width, taken.height) = (Some(320), Some(120));
        taken.kept_at = Some("/ev/ab/abab.jpg".into());
        let text = Explanation {
            waybill: "BL1".into(),
            declaration: None,
            records: [taken, missing]
                .into_iter()
                .map(|r| Entry {
                    record: Record::Snapshot(r),
                    forwarding: Forwarding::Outbox,
                })
                .collect(),
        }
        .render();
        for want in [
            "camera lane-2 at lane 2: 4096 bytes 320x120, sha256 abab",
            "original at /ev/ab/abab.jpg",
            "camera lane-2 at lane 2: NO EVIDENCE: camera answered HTTP 503",
            "in outbox",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
    }
}
