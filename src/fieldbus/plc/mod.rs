//! The sorter PLC link: divert commands out over Modbus (TCP or RTU), acknowledges, lane
//! states and dispositions back, a heartbeat both ways.
//!
//! One task owns the connection; the handshake's bookkeeping (which sequence a command gets,
//! whose acknowledge a value is) is the pure [`super::handshake::Handshake`]. Divert jobs
//! are handled one at a time: one atomic block write, then reads of the acknowledge register
//! until the PLC shows the job's sequence or the profile's timeout has passed since the
//! write. A job whose divert deadline has passed before it could be sent is not sent at all
//! (`deadline_missed`): the PLC's own default then sends the parcel to the exception lane,
//! which is the fail-closed outcome; an acknowledge after the deadline is reported as late.
//! Every outcome goes back to the line as a [`PlcEvent`].
//!
//! **Slow is not dead.** Each Modbus call has its own timeout (`timeout_ms`); the
//! acknowledge wait ends a job, never the link: a read still in flight when the wait ends
//! gets its own full timeout. Only a call with no answer in time, a transport error or a
//! stuck heartbeat drops the link. A command whose acknowledge did not come stays *in doubt*:
//! its sequence is not used again, and while any command is in doubt the task keeps reading
//! the acknowledge register between jobs, so that a late acknowledge is reported with its
//! parcel and lane ([`PlcEvent::LateAck`]).
//!
//! **Release commands are written ahead.** A job for the release lane carries a receiver
//! that resolves once the parcel's decision is durable in the journal; the job waits beside
//! the queue (other parcels' commands go on) and is written only then. A newer revision of a
//! parcel supersedes every older job of it still waiting, so a held release can never be
//! written after the inspection that replaced it.
//!
//! Between jobs, on the profile's status interval, the task increments the controller's
//! heartbeat, checks that the PLC's heartbeat moves (a counter stuck for the heartbeat timeout
//! means a dead or half-open link: it is dropped and made anew), reads the lane states into
//! [`LaneStates`] and reads new dispositions from the PLC's ring. The ring's content at the
//! first read of a run is reported too: the line knows which of those parcels an earlier run
//! already recorded.
//!
//! Reconnecting runs beside job handling, never in front of it: while the link is down, jobs
//! are answered at once with `link_down` instead of queueing behind a connect attempt.

mod connection;
mod job;
mod queue;
mod status;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bondline_devices::contract::{DivertOutcome, DivertStatus};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_modbus::ExceptionCode;
use tracing::{debug, info, warn};

use super::handshake::Handshake;
use crate::backoff::Backoff;
use crate::config::PlcDevice;
use crate::floor::{DivertJob, LaneStates, PlcEvent, Written};
use crate::metrics::{unix_ms, Metrics};
use connection::{connect, Connecting, Link};
use job::handle_job;
use queue::{Held, Queue};
use status::{status_interval, tick};

/// How long a command's acknowledge is still expected after its write. Far longer than any
/// PLC takes; at 60,000 parcels an hour a line uses 1,000 sequences a minute, so the
/// 65,535 of the cycle last over an hour and ten minutes of doubt never run them out.
pub const DOUBT_HORIZON: Duration = Duration::from_secs(600);
/// How often the acknowledge register is read between jobs while a command is in doubt
/// (when the profile has no faster status tick).
const DOUBT_POLL: Duration = Duration::from_millis(50);

/// Why a Modbus exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum DivertError {
    /// The PLC answered, with a Modbus exception: the device refused, the link is fine.
    #[error("PLC refused: {0}")]
    Refused(ExceptionCode),
    /// The PLC took the write but did not echo the sequence in time.
    #[error("no acknowledge within {0:?}")]
    AckTimeout(Duration),
    /// A Modbus call got no answer in time: the link is suspect.
    #[error("PLC did not answer within {0:?}")]
    CallTimeout(Duration),
    /// The transport failed.
    #[error("link failed: {0}")]
    Io(#[from] tokio_modbus::Error),
    /// The PLC's heartbeat counter stopped moving.
    #[error("PLC heartbeat unchanged for {0:?}")]
    HeartbeatLost(Duration),
}

impl DivertError {
    /// Whether the connection must be dropped and made anew.
    fn breaks_link(&self) -> bool {
        matches!(
            self,
            DivertError::CallTimeout(_) | DivertError::Io(_) | DivertError::HeartbeatLost(_)
        )
    }

    fn status(&self) -> DivertStatus {
        match self {
            DivertError::Refused(_) => DivertStatus::Refused,
            DivertError::AckTimeout(_) | DivertError::CallTimeout(_) => DivertStatus::Timeout,
            DivertError::Io(_) | DivertError::HeartbeatLost(_) => DivertStatus::LinkDown,
        }
    }
}

/// Handles divert jobs until the job queue closes (the line has stopped) and every job taken
/// has its answer.
pub async fn run(
    dev: PlcDevice,
    mut jobs: mpsc::Receiver<DivertJob>,
    events: mpsc::UnboundedSender<PlcEvent>,
    lanes: Arc<LaneStates>,
    metrics: Arc<Metrics>,
) {
    let link_name = format!("plc:{}", dev.name);
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    let mut link: Option<Link> = None;
    let mut hs = Handshake::new(DOUBT_HORIZON.as_millis() as u64);
    let mut queue = Queue::default();
    let mut jobs_open = true;
    let mut connecting: Option<Connecting> = Some(Box::pin(connect(dev.clone())));
    let retry = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(retry);
    let mut retry_armed = false;
    // Dispositions already read; kept across reconnects so none is reported twice. `None`
    // until the first read of this run, which reports what the ring holds.
    let mut ring_seen: Option<u16> = None;
    let status_every = status_interval(&dev.map);
    let mut status_tick = tokio::time::interval(status_every.unwrap_or(DOUBT_POLL));
    status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        if !jobs_open && queue.is_empty() {
            break;
        }
        let held_deadline = queue.held_deadline();
        let failure: Option<DivertError> = tokio::select! {
            // The status tick comes first: a stream of slow divert jobs must not starve the
            // heartbeat, or the PLC would go fail-safe.
            biased;
            _ = status_tick.tick(), if link.is_some() && (status_every.is_some() || hs.any_in_doubt()) => {
                let l = link.as_mut().expect("guarded by the select condition");
                tick(l, &dev.map, &mut hs, &lanes, &mut ring_seen, &events, &metrics, status_every.is_some()).await
            }
            job = jobs.recv(), if jobs_open => {
                match job {
                    Some(job) => queue.admit(job, &events),
                    None => jobs_open = false,
                }
                None
            }
            (i, durable) = queue.next_durable(), if !queue.held.is_empty() => {
                let held = queue.held.swap_remove(i);
                if durable {
                    queue.ready.push_back(held.job);
                } else {
                    answer(&held.job, outcome(
                        DivertStatus::NotRecorded,
                        None,
                        Some("the decision could not be stored in the journal; the release command was not sent".into()),
                        false,
                    ), &events, &metrics);
                }
                None
            }
            _ = tokio::time::sleep_until(held_deadline.unwrap_or_else(Instant::now)), if held_deadline.is_some() => {
                let now = Instant::now();
                let (late, waiting): (Vec<Held>, Vec<Held>) =
                    queue.held.drain(..).partition(|h| h.job.deadline <= now);
                queue.held = waiting;
                for h in late {
                    answer(&h.job, outcome(
                        DivertStatus::DeadlineMissed,
                        None,
                        Some("the decision was not yet durable in the journal at the divert deadline; the release command was not sent".into()),
                        false,
                    ), &events, &metrics);
                }
                None
            }
            _ = std::future::ready(()), if !queue.ready.is_empty() => {
                let job = queue.ready.pop_front().expect("guarded by the select condition");
                let (outcome, failure) = match link.as_mut() {
                    Some(l) => handle_job(l, &mut hs, &dev.map, &job, &events, &metrics).await,
                    None => (
                        outcome(DivertStatus::LinkDown, None, Some("no link to the PLC".into()), false),
                        None,
                    ),
                };
                answer(&job, outcome, &events, &metrics);
                failure
            }
            res = async { connecting.as_mut().expect("guarded by the select condition").await }, if connecting.is_some() => {
                connecting = None;
                match res {
                    Ok((ctx, block, ack)) => {
                        info!(plc = %dev.name, transport = %dev.transport, "PLC connected");
                        metrics.set_link(&link_name, true, None);
                        backoff.reset();
                        let now = SystemTime::now();
                        let found = hs.connected(block, ack, unix_ms(now));
                        if !found.dropped.is_empty() {
                            warn!(plc = %dev.name, commands = found.dropped.len(), "PLC restarted with commands in doubt; it can no longer take them");
                            let _ = events.send(PlcEvent::CommandsDropped(found.dropped));
                        }
                        if let Some(w) = found.late {
                            late_ack(w, &events, &metrics);
                        }
                        link = Some(Link { ctx, beat: 0, plc_beat: None });
                    }
                    Err(e) => {
                        let wait = backoff.next_delay();
                        warn!(plc = %dev.name, error = %e, retry_in = ?wait, "PLC connect failed");
                        metrics.set_link(&link_name, false, Some(e.to_string()));
                        retry.as_mut().reset(Instant::now() + wait);
                        retry_armed = true;
                    }
                }
                None
            }
            _ = &mut retry, if retry_armed && link.is_none() && connecting.is_none() => {
                retry_armed = false;
                connecting = Some(Box::pin(connect(dev.clone())));
                None
            }
        };
        if let Some(e) = failure {
            if e.breaks_link() {
                warn!(plc = %dev.name, error = %e, "PLC link lost");
                metrics.set_link(&link_name, false, Some(e.to_string()));
                hs.link_lost();
                link = None;
                retry.as_mut().reset(Instant::now() + backoff.next_delay());
                retry_armed = true;
            } else {
                debug!(plc = %dev.name, error = %e, "PLC call failed");
            }
        }
    }
}

/// Reports a job's outcome to the line and counts it.
fn answer(
    job: &DivertJob,
    outcome: DivertOutcome,
    events: &mpsc::UnboundedSender<PlcEvent>,
    metrics: &Metrics,
) {
    match outcome.status {
        DivertStatus::Acked => Metrics::add(&metrics.diverts_acked, 1),
        DivertStatus::DeadlineMissed => {
            Metrics::add(&metrics.deadlines_missed, 1);
            Metrics::add(&metrics.diverts_failed, 1);
        }
        _ => Metrics::add(&metrics.diverts_failed, 1),
    }
    if outcome.late {
        Metrics::add(&metrics.late_diverts, 1);
    }
    let _ = events.send(PlcEvent::Outcome {
        parcel: job.parcel,
        revision: job.revision,
        lane: job.lane,
        outcome,
        at: Instant::now(),
    });
}

fn late_ack(w: Written, events: &mpsc::UnboundedSender<PlcEvent>, metrics: &Metrics) {
    Metrics::add(&metrics.late_acks, 1);
    let after = Duration::from_millis(unix_ms(SystemTime::now()).saturating_sub(w.at_ms));
    let _ = events.send(PlcEvent::LateAck { written: w, after });
}

fn outcome(
    status: DivertStatus,
    seq: Option<u16>,
    detail: Option<String>,
    late: bool,
) -> DivertOutcome {
    DivertOutcome {
        status,
        plc_seq: seq,
        detail,
        at_ms: unix_ms(SystemTime::now()),
        late,
    }
}
