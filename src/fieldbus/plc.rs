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

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;

use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime};

use bondline_devices::contract::{DivertOutcome, DivertStatus};
use bondline_devices::plc::{
    new_dispositions, Disposition, DivertCommand, PlcMap, DIVERT_BLOCK_LEN, LANE_REGISTERS,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_modbus::client::{Context, Reader, Writer};
use tokio_modbus::{ExceptionCode, Slave};
use tracing::{debug, info, warn};

use super::handshake::{Ack, Handshake};
use crate::backoff::Backoff;
use crate::config::{PlcDevice, Transport};
use crate::floor::{Command, DivertJob, LaneStates, PlcEvent, Written};
use crate::metrics::{unix_ms, Metrics};

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

/// What a connect found: the context, the PLC's divert block (the last command it received)
/// and its acknowledge register.
type Connection = (Context, Option<DivertCommand>, u16);
type Connecting = Pin<Box<dyn Future<Output = Result<Connection, String>> + Send>>;

/// The link's state between calls.
struct Link {
    ctx: Context,
    /// Controller heartbeat counter.
    beat: u16,
    /// Last PLC heartbeat value and when it changed.
    plc_beat: Option<(u16, Instant)>,
}

/// A release job waiting for its decision to be durable.
struct Held {
    job: DivertJob,
    durable: oneshot::Receiver<bool>,
}

/// Jobs not yet written: those ready in decision order, release jobs waiting for the
/// journal beside them.
#[derive(Default)]
struct Queue {
    ready: VecDeque<DivertJob>,
    held: Vec<Held>,
}

impl Queue {
    /// Takes a job in. An older revision of the same parcel still waiting is superseded: its
    /// answer goes back at once (the line ignores answers to superseded revisions).
    fn admit(&mut self, mut job: DivertJob, events: &mpsc::UnboundedSender<PlcEvent>) {
        let newer = |j: &DivertJob| j.parcel == job.parcel && j.revision < job.revision;
        let mut superseded = Vec::new();
        self.ready.retain(|j| {
            let old = newer(j);
            if old {
                superseded.push((j.parcel, j.revision));
            }
            !old
        });
        self.held.retain(|h| {
            let old = newer(&h.job);
            if old {
                superseded.push((h.job.parcel, h.job.revision));
            }
            !old
        });
        for (parcel, revision) in superseded {
            let detail = format!("superseded by revision {} before it was sent", job.revision);
            let _ = events.send(PlcEvent::Outcome {
                parcel,
                revision,
                outcome: outcome(DivertStatus::Overload, None, Some(detail), false),
                at: Instant::now(),
            });
        }
        match job.durable.take() {
            Some(durable) => self.held.push(Held { job, durable }),
            None => self.ready.push_back(job),
        }
    }

    fn is_empty(&self) -> bool {
        self.ready.is_empty() && self.held.is_empty()
    }

    /// The earliest deadline of a held job.
    fn held_deadline(&self) -> Option<Instant> {
        self.held.iter().map(|h| h.job.deadline).min()
    }

    /// Resolves once a held job's decision is stored (or failed to be): its index and whether
    /// it is durable.
    async fn next_durable(&mut self) -> (usize, bool) {
        std::future::poll_fn(|cx| {
            for (i, h) in self.held.iter_mut().enumerate() {
                if let Poll::Ready(r) = Pin::new(&mut h.durable).poll(cx) {
                    return Poll::Ready((i, r.unwrap_or(false)));
                }
            }
            Poll::Pending
        })
        .await
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
                        metrics.set_link(&link_name, false, Some(e));
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
        outcome,
        at: Instant::now(),
    });
}

fn late_ack(w: Written, events: &mpsc::UnboundedSender<PlcEvent>, metrics: &Metrics) {
    Metrics::add(&metrics.late_acks, 1);
    let after = Duration::from_millis(unix_ms(SystemTime::now()).saturating_sub(w.at_ms));
    let _ = events.send(PlcEvent::LateAck { written: w, after });
}

/// One status tick: heartbeat, lane states and dispositions (with a status section), then
/// the acknowledge register while commands are in doubt.
#[allow(clippy::too_many_arguments)]
async fn tick(
    l: &mut Link,
    map: &PlcMap,
    hs: &mut Handshake,
    lanes: &LaneStates,
    ring_seen: &mut Option<u16>,
    events: &mpsc::UnboundedSender<PlcEvent>,
    metrics: &Metrics,
    status: bool,
) -> Option<DivertError> {
    if status {
        match poll_status(l, map, lanes, ring_seen).await {
            Ok((found, missed)) => {
                for d in found {
                    let _ = events.send(PlcEvent::Disposition(d));
                }
                if missed > 0 {
                    let _ = events.send(PlcEvent::DispositionsMissed(missed));
                }
            }
            Err(e) => return Some(e),
        }
    }
    hs.expire(unix_ms(SystemTime::now()));
    if !hs.any_in_doubt() {
        return None;
    }
    let timeout = Duration::from_millis(map.timeout_ms);
    match call(timeout, l.ctx.read_holding_registers(map.divert.ack, 1)).await {
        Ok(regs) => {
            if let Ack::Late(w) = hs.seen(regs.first().copied().unwrap_or(0)) {
                late_ack(w, events, metrics);
            }
            None
        }
        Err(e) => Some(e),
    }
}

fn status_interval(map: &PlcMap) -> Option<Duration> {
    let hb = map.heartbeat.as_ref().map(|h| h.interval_ms);
    let st = map.status.as_ref().map(|s| s.poll_ms);
    match (hb, st) {
        (None, None) => None,
        (a, b) => Some(Duration::from_millis(
            a.unwrap_or(u64::MAX).min(b.unwrap_or(u64::MAX)),
        )),
    }
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

/// Sends one job unless its deadline has passed, and waits for its acknowledge; returns the
/// outcome and, if a call failed, the error (so the caller can judge the link).
async fn handle_job(
    l: &mut Link,
    hs: &mut Handshake,
    map: &PlcMap,
    job: &DivertJob,
    events: &mpsc::UnboundedSender<PlcEvent>,
    metrics: &Metrics,
) -> (DivertOutcome, Option<DivertError>) {
    if Instant::now() >= job.deadline {
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

/// One Modbus call with the profile timeout; exceptions and I/O kept apart.
async fn call<T>(
    timeout: Duration,
    fut: impl Future<Output = tokio_modbus::Result<T>>,
) -> Result<T, DivertError> {
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => Err(DivertError::CallTimeout(timeout)),
        Ok(r) => Ok(r?.map_err(DivertError::Refused)?),
    }
}

/// Heartbeat out and in, lane states, new dispositions.
async fn poll_status(
    l: &mut Link,
    map: &PlcMap,
    lanes: &LaneStates,
    ring_seen: &mut Option<u16>,
) -> Result<(Vec<Disposition>, u16), DivertError> {
    let timeout = Duration::from_millis(map.timeout_ms);
    if let Some(hb) = &map.heartbeat {
        l.beat = l.beat.wrapping_add(1);
        call(timeout, l.ctx.write_single_register(hb.controller, l.beat)).await?;
        let v = call(timeout, l.ctx.read_holding_registers(hb.plc, 1))
            .await?
            .first()
            .copied()
            .unwrap_or(0);
        let now = Instant::now();
        match l.plc_beat {
            Some((old, _)) if old != v => l.plc_beat = Some((v, now)),
            Some((_, since)) => {
                let stuck = now.duration_since(since);
                if stuck > Duration::from_millis(hb.timeout_ms) {
                    return Err(DivertError::HeartbeatLost(stuck));
                }
            }
            None => l.plc_beat = Some((v, now)),
        }
    }
    let Some(st) = &map.status else {
        return Ok((Vec::new(), 0));
    };
    let states = call(
        timeout,
        l.ctx.read_holding_registers(st.lanes, LANE_REGISTERS),
    )
    .await?;
    for (i, v) in states.iter().enumerate() {
        lanes.set(i as u16 + 1, *v);
    }
    let ring = call(
        timeout,
        l.ctx.read_holding_registers(st.dispositions, st.ring_len()),
    )
    .await?;
    let head = ring.first().copied().unwrap_or(0);
    match *ring_seen {
        // First read of this run: what the ring holds is reported (the line knows which of
        // those parcels an earlier run recorded already).
        None => {
            let (found, _) = new_dispositions(&ring, 0);
            *ring_seen = Some(head);
            Ok((found, 0))
        }
        Some(seen) => {
            let (found, missed) = new_dispositions(&ring, seen);
            *ring_seen = Some(head);
            Ok((found, missed))
        }
    }
}

/// Opens the transport, attaches Modbus and reads the divert block and the acknowledge
/// register once: that proves the PLC answers, and tells the handshake the last command the
/// PLC received and the last it took.
async fn connect(dev: PlcDevice) -> Result<Connection, String> {
    let slave = Slave(dev.map.unit_id);
    let timeout = Duration::from_millis(dev.map.timeout_ms).max(Duration::from_millis(500));
    let mut ctx = match &dev.transport {
        Transport::Tcp { host, port } => {
            let stream = super::connect_tcp(host, *port, timeout)
                .await
                .map_err(|e| e.to_string())?;
            tokio_modbus::client::tcp::attach_slave(stream, slave)
        }
        Transport::Serial(s) => {
            let port = super::open_serial(s).map_err(|e| e.to_string())?;
            tokio_modbus::client::rtu::attach_slave(port, slave)
        }
    };
    let block = call(
        timeout,
        ctx.read_holding_registers(dev.map.divert.block, DIVERT_BLOCK_LEN),
    )
    .await
    .map_err(|e| format!("reading the divert block: {e}"))?;
    let ack = call(timeout, ctx.read_holding_registers(dev.map.divert.ack, 1))
        .await
        .map_err(|e| format!("reading the acknowledge register: {e}"))?;
    Ok((
        ctx,
        DivertCommand::from_registers(&block),
        ack.first().copied().unwrap_or(0),
    ))
}
