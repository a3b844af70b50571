//! What the line tells people about: alerts for customs staff, recorded in the journal,
//! and anomalies (a parcel a rule flagged) sent to the platform at once. Kept together so
//! every handler raises them the same way, with the same gateway/line identity and metrics.

use bondline_devices::contract::{AlertKind, AlertRecord, Anomaly, SCHEMA};
use tracing::warn;

use super::effects::{Effect, Turn};
use super::records::fired_rules;
use super::Line;
use crate::metrics::{unix_ms, Metrics};

impl Line {
    /// Sends the parcel's current decision as an anomaly if a rule flagged it.
    pub(super) fn anomaly(&self, parcel: u32, turn: &mut Turn) {
        let Some(t) = self.tracker.get(parcel) else {
            return;
        };
        if !t.decision.is_anomaly() {
            return;
        }
        let Some(inputs) = t.decision.inputs.clone() else {
            return;
        };
        let anomaly = Anomaly {
            schema: SCHEMA,
            anomaly_id: format!(
                "{}-{}-{}-{}",
                self.ctx.gateway, self.ctx.line, parcel, t.revision
            ),
            gateway: self.ctx.gateway.clone(),
            line: self.ctx.line.clone(),
            parcel,
            waybill: t.waybill().map(str::to_string),
            lane: t.lane,
            lane_role: t.decision.role,
            rule_set: t.decision.rule_set.clone(),
            rules_fired: fired_rules(&t.decision),
            inputs,
            scanned_at_ms: unix_ms(t.scanned_at),
            at_ms: unix_ms(t.decided_at),
        };
        Metrics::add(&self.ctx.metrics.anomalies, 1);
        turn.push(Effect::Anomaly(Box::new(anomaly)));
    }

    pub(super) fn alert(
        &self,
        parcel: Option<u32>,
        waybill: Option<String>,
        alert: AlertKind,
        detail: String,
        turn: &mut Turn,
    ) {
        Metrics::add(&self.ctx.metrics.alerts, 1);
        warn!(line = %self.ctx.line, ?parcel, ?alert, %detail, "alert");
        let at_ms = unix_ms(turn.now.wall);
        let record = AlertRecord::new(&self.ctx.gateway, &self.ctx.line, alert, detail, at_ms);
        turn.record(record.about(parcel, waybill));
    }
}
