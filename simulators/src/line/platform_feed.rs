//! The platform's part in a run: declarations and instructions published about 20 s of belt
//! ahead of the scanner, and the late inspect instructions of `late_instructions` faults.
//! It runs beside the scheduler, so a slow broker never holds the belt up.

use std::time::{Duration, SystemTime};

use bondline_devices::contract::{unix_ms, Action, Instruction, SCHEMA};
use tokio::sync::mpsc;

use super::Belt;
use super::BeltParcel;
use crate::plan::Plan;
use crate::platform::PlatformSim;

/// How far ahead of the scanner (in seconds of belt) the platform declares parcels.
pub(super) const AHEAD_S: f64 = 20.0;

/// Tracks how far along the belt the platform has declared.
pub(super) struct Ahead {
    belt: Belt,
    pending: Option<BeltParcel>,
    /// Plan index after the last parcel up to the current horizon.
    upto: u64,
    exhausted: bool,
    pub(super) declared: u64,
}

impl Ahead {
    pub(super) fn new(belt: Belt) -> Ahead {
        Ahead {
            belt,
            pending: None,
            upto: 0,
            exhausted: false,
            declared: 0,
        }
    }

    /// The plan index up to which parcels reaching the scanner by `horizon_s` lie.
    pub(super) fn target(&mut self, horizon_s: f64) -> u64 {
        loop {
            let Some(p) = self.pending.take().or_else(|| self.belt.next()) else {
                self.exhausted = true;
                return self.upto;
            };
            if p.scan_s <= horizon_s {
                self.upto = p.plan_index + 1;
            } else {
                self.pending = Some(p);
                return self.upto;
            }
        }
    }
}

/// Keeps the platform's declarations and instructions 20 s of belt ahead of the scanner.
/// Publishing errors are logged and retried; parcels that reach the scanner undeclared are
/// held by a correct daemon, which the ledger shows as explained, never as leaks.
pub(super) async fn keep_declared_ahead(
    platform: &PlatformSim,
    plan: &Plan,
    mut ahead: Ahead,
    start: tokio::time::Instant,
) {
    loop {
        let horizon = start.elapsed().as_secs_f64() + AHEAD_S;
        let upto = ahead.target(horizon);
        if upto > ahead.declared {
            match platform.publish_plan(plan, ahead.declared..upto).await {
                Ok(()) => ahead.declared = upto,
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "platform publish failed; retrying")
                }
            }
        }
        if ahead.exhausted && ahead.declared >= ahead.upto {
            return;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Publishes a late inspect instruction for each waybill received.
pub(super) async fn publish_marks(platform: &PlatformSim, mut rx: mpsc::UnboundedReceiver<String>) {
    while let Some(waybill) = rx.recv().await {
        let instruction = Instruction {
            schema: SCHEMA,
            instruction_id: format!("LATE-{waybill}"),
            waybill,
            action: Action::Inspect,
            reason: "late X-ray mark".to_string(),
            issued_at_ms: Some(unix_ms(SystemTime::now())),
            signature: None,
        };
        if let Err(e) = platform.publish_instruction(&instruction).await {
            tracing::warn!(error = %format!("{e:#}"), waybill = %instruction.waybill, "late mark not published");
        }
    }
}
