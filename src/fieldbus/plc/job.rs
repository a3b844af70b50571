//! One divert job on the wire: the deadline check, the handshake's sequence, the atomic
//! block write and the wait for the acknowledge (see the module's doc, "Slow is not dead").
//! Separate from the link task, which decides when a job runs and what a failure does to
//! the link.

use std::time::{Duration, SystemTime};

use bondline_devices::contract::{DivertOutcome, DivertStatus};
use bondline_devices::plc::{DivertCommand, PlcMap};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_modbus::client::{Reader, Writer};

use super::connection::{call, Link};
use super::{late_ack, outcome, DivertError};
use crate::fieldbus::handshake::{Ack, Handshake};
use crate::floor::{Command, DivertJob, PlcEvent};
use crate::metrics::{unix_ms, Metrics};

/// Sends one job unless its deadline has passed, and waits for its acknowledge; returns the
/// outcome and, if a call failed, the error (so the caller can judge the link).
pub(super) async fn handle_job(
    l: &mut Link,
    hs: &mut Handshake,
    map: &PlcMap,
    job: &DivertJob,
    events: &mpsc::UnboundedSender<PlcEvent>,
    metrics: &Metrics,
) -> (DivertOutcome, Option<DivertError>) {
    if Instant::now() >= job.deadline && !job.withdraws_release {
        return (
            outcome(
                DivertStatus::DeadlineMissed,
                None,
                Some("the divert deadline passed before the command could be sent".into()),
                false,
            ),
            None,
        );
    }
    let command = Command {
        parcel: job.parcel,
        lane: job.lane,
        revision: Some(job.revision),
    };
    let Some(seq) = hs.begin(command, unix_ms(SystemTime::now())) else {
        return (
            outcome(
                DivertStatus::Timeout,
                None,
                Some("every handshake sequence is in doubt: the PLC has taken no command for a whole cycle".into()),
                false,
            ),
            None,
        );
    };
    let cmd = DivertCommand {
        seq,
        lane: job.lane,
        parcel: job.parcel,
    };
    let timeout = Duration::from_millis(map.timeout_ms);
    let started = Instant::now();
    let ack_deadline = started + timeout;
    if let Err(e) = call(
        timeout,
        l.ctx
            .write_multiple_registers(map.divert.block, &cmd.to_registers()),
    )
    .await
    {
        if matches!(e, DivertError::Refused(_)) {
            hs.refused();
        } else {
            hs.link_lost();
        }
        return (
            outcome(e.status(), Some(seq), Some(e.to_string()), false),
            Some(e),
        );
    }
    let poll = Duration::from_millis(map.divert.ack_poll_ms);
    loop {
        // Each read has its own timeout: an acknowledge wait that ends while a read is in
        // flight ends the job, not the link.
        match call(timeout, l.ctx.read_holding_registers(map.divert.ack, 1)).await {
            Ok(regs) => match hs.seen(regs.first().copied().unwrap_or(0)) {
                Ack::Mine(_) => {
                    let late = Instant::now() > job.deadline;
                    return (outcome(DivertStatus::Acked, Some(seq), None, late), None);
                }
                Ack::Late(w) => late_ack(w, events, metrics),
                Ack::Nothing => {}
            },
            Err(e) => {
                if matches!(e, DivertError::Refused(_)) {
                    hs.gave_up();
                } else {
                    hs.link_lost();
                }
                return (
                    outcome(e.status(), Some(seq), Some(e.to_string()), false),
                    Some(e),
                );
            }
        }
        if Instant::now() + poll >= ack_deadline {
            hs.gave_up();
            let e = DivertError::AckTimeout(timeout);
            return (
                outcome(e.status(), Some(seq), Some(e.to_string()), false),
                Some(e),
            );
        }
        tokio::time::sleep(poll).await;
    }
}
