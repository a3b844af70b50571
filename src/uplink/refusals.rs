//! Platform messages the gateway refused, kept as `alert` records.
//!
//! A refusal (a forged, expired or replayed message, or one that does not parse) is evidence
//! customs needs: someone may be trying to steer the lanes. The uplink reports it at once on
//! `P/events`, which is best effort, and hands it here to be journaled like any record, so it
//! reaches the platform in order and survives restarts and broker outages.
//!
//! Whoever can publish to the broker can send refusals as fast as the link allows; they must
//! not fill the gateway's disk. At most [`PER_MINUTE`] are journaled per minute; the rest are
//! counted and summed up in one alert when the minute ends (the log keeps every one).

use std::time::{Duration, SystemTime};

use bondline_devices::contract::{AlertKind, AlertRecord};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::journal::RecordSink;
use crate::metrics::unix_ms;

/// Refusals journaled one by one per minute; more are summed up.
pub const PER_MINUTE: u32 = 60;
const MINUTE: Duration = Duration::from_secs(60);

/// One refused message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// `forged_message` or `rejected_message`.
    pub alert: AlertKind,
    /// Why, naming the topic.
    pub detail: String,
}

/// Counts refusals per minute: which to journal, and how many were summed up.
#[derive(Debug, Default)]
pub struct Budget {
    used: u32,
    /// Summed up, by kind: forged, rejected.
    suppressed: (u32, u32),
}

impl Budget {
    /// Whether this refusal is journaled by itself.
    pub fn take(&mut self, alert: AlertKind) -> bool {
        if self.used < PER_MINUTE {
            self.used += 1;
            return true;
        }
        if alert == AlertKind::ForgedMessage {
            self.suppressed.0 += 1;
        } else {
            self.suppressed.1 += 1;
        }
        false
    }

    /// A new minute: returns how many refusals of each kind (forged, rejected) the last one
    /// summed up.
    pub fn roll(&mut self) -> (u32, u32) {
        self.used = 0;
        std::mem::take(&mut self.suppressed)
    }
}

fn record(gateway: &str, alert: AlertKind, detail: String) -> AlertRecord {
    // Not about a line: about the gateway's platform link.
    AlertRecord::new(gateway, "", alert, detail, unix_ms(SystemTime::now()))
}

/// Journals refusals from `rx` until `stop`, then those already queued. Holds a record sink,
/// so it must stop with the other producers (the journal writer finishes after them).
pub async fn journal(
    gateway: String,
    mut rx: mpsc::UnboundedReceiver<Refusal>,
    sink: RecordSink,
    stop: CancellationToken,
) {
    let mut budget = Budget::default();
    let mut minute = tokio::time::interval(MINUTE);
    minute.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    minute.tick().await;
    let summaries = |(forged, rejected): (u32, u32)| {
        [
            (AlertKind::ForgedMessage, forged),
            (AlertKind::RejectedMessage, rejected),
        ]
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(alert, n)| {
            record(
                &gateway,
                alert,
                format!("{n} more refused platform message(s) in the last minute, beyond {PER_MINUTE}: see the gateway's log"),
            )
        })
        .collect::<Vec<_>>()
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = minute.tick() => {
                for r in summaries(budget.roll()) {
                    sink.push(r);
                }
            }
            r = rx.recv() => match r {
                Some(r) => {
                    if budget.take(r.alert) {
                        sink.push(record(&gateway, r.alert, r.detail));
                    }
                }
                None => break,
            },
        }
    }
    while let Ok(r) = rx.try_recv() {
        if budget.take(r.alert) {
            sink.push(record(&gateway, r.alert, r.detail));
        }
    }
    for r in summaries(budget.roll()) {
        sink.push(r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_summed_up_not_journaled_one_by_one() {
        let mut b = Budget::default();
        let taken = (0..1000)
            .filter(|i| {
                b.take(if i % 2 == 0 {
                    AlertKind::ForgedMessage
                } else {
                    AlertKind::RejectedMessage
                })
            })
            .count();
        assert_eq!(taken, PER_MINUTE as usize);
        let rest = 1000 - PER_MINUTE;
        assert_eq!(b.roll(), (rest / 2, rest / 2));
        assert!(
            b.take(AlertKind::ForgedMessage),
            "a new minute has its budget again"
        );
        assert_eq!(b.roll(), (0, 0));
    }

    #[test]
    fn refusal_alerts_carry_what_docs_mqtt_md_says() {
        // docs/mqtt.md: not about a line or a parcel: `line` is "", `parcel` and `waybill`
        // are null (not absent, not "").
        let r = bondline_devices::contract::Record::Alert(record(
            "gw",
            AlertKind::ForgedMessage,
            "P/instructions: unsigned".into(),
        ));
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["line"], serde_json::json!(""));
        assert_eq!(v.get("parcel"), Some(&serde_json::Value::Null));
        assert_eq!(v.get("waybill"), Some(&serde_json::Value::Null));
        let doc = include_str!("../../docs/mqtt.md");
        assert_eq!(
            doc.matches("Not about a line or a parcel: `line` is `\"\"` (the empty string), `parcel` and `waybill` are `null`.").count(),
            2,
            "docs/mqtt.md describes both refusal alerts' empty fields"
        );
    }

    #[tokio::test]
    async fn refusals_become_alert_records_and_none_is_left_at_stop() {
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::default());
        let (sink, mut records) = RecordSink::for_tests(metrics);
        let (tx, rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        for i in 0..3 {
            tx.send(Refusal {
                alert: AlertKind::ForgedMessage,
                detail: format!("forged {i}"),
            })
            .unwrap();
        }
        stop.cancel();
        journal("gw".into(), rx, sink, stop).await;
        let mut got = Vec::new();
        while let Ok(r) = records.try_recv() {
            got.push(serde_json::to_value(&r).unwrap());
        }
        assert_eq!(got.len(), 3);
        assert_eq!(got[0]["alert"], "forged_message");
        assert_eq!(got[2]["detail"], "forged 2");
    }
}
