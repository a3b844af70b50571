//! The sorter PLC link: divert commands out over Modbus (TCP or RTU), acknowledges, lane
//! states and dispositions back, a heartbeat both ways.
//!
//! One task owns the connection. Divert jobs are handled in arrival order: one atomic block
//! write, then reads of the acknowledge register until the PLC echoes the job's sequence, all
//! within the profile's timeout. A job whose divert deadline has passed before it could be
//! sent is not sent at all (`deadline_missed`): the PLC's own default then sends the parcel
//! to the exception lane, which is the fail-closed outcome; an acknowledge after the deadline
//! is reported as late. Every outcome goes back to the line as a [`PlcEvent`].
//!
//! Between jobs, on the profile's status interval, the task increments the controller's
//! heartbeat, checks that the PLC's heartbeat moves (a counter stuck for the heartbeat timeout
//! means a dead or half-open link: it is dropped and made anew), reads the lane states into
//! [`LaneStates`] and reads new dispositions from the PLC's ring.
//!
//! Reconnecting runs beside job handling, never in front of it: while the link is down, jobs
//! are answered at once with `link_down` instead of queueing behind a connect attempt.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bondline_devices::contract::{DivertOutcome, DivertStatus};
use bondline_devices::plc::{
    new_dispositions, next_seq, Disposition, DivertCommand, PlcMap, LANE_DISABLED, LANE_FULL,
    LANE_REGISTERS,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_modbus::client::{Context, Reader, Writer};
use tokio_modbus::{ExceptionCode, Slave};
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::config::{PlcDevice, Transport};
use crate::metrics::{unix_ms, Metrics};

/// A decided parcel on its way to the PLC.
#[derive(Debug, Clone, Copy)]
pub struct DivertJob {
    pub parcel: u32,
    pub lane: u16,
    pub revision: u32,
    /// The latest moment the command may reach the PLC.
    pub deadline: Instant,
}

/// What the PLC link reports to its line.
#[derive(Debug, Clone)]
pub enum PlcEvent {
    /// What became of a divert job.
    Outcome {
        parcel: u32,
        revision: u32,
        outcome: DivertOutcome,
        /// When the outcome was known (the acknowledge, for acked jobs).
        at: Instant,
    },
    /// The PLC reported where a parcel went.
    Disposition(Disposition),
    /// The PLC's ring overran before it was read: this many dispositions are lost.
    DispositionsMissed(u16),
}

/// Lane states read from the PLC (bit 0 full, bit 1 disabled), shared with the line's
/// decision path, which reads them without waiting.
#[derive(Debug, Default)]
pub struct LaneStates {
    lanes: [AtomicU16; LANE_REGISTERS as usize],
}

impl LaneStates {
    /// Whether `lane` may take parcels now (unknown lanes count as available).
    pub fn available(&self, lane: u16) -> bool {
        match lane.checked_sub(1).and_then(|i| self.lanes.get(i as usize)) {
            Some(s) => s.load(Ordering::Relaxed) & (LANE_FULL | LANE_DISABLED) == 0,
            None => true,
        }
    }

    /// Why `lane` is unavailable, for records.
    pub fn describe(&self, lane: u16) -> &'static str {
        let s = lane
            .checked_sub(1)
            .and_then(|i| self.lanes.get(i as usize))
            .map_or(0, |s| s.load(Ordering::Relaxed));
        if s & LANE_DISABLED != 0 {
            "disabled"
        } else if s & LANE_FULL != 0 {
            "full"
        } else {
            "available"
        }
    }

    pub fn set(&self, lane: u16, state: u16) {
        if let Some(s) = lane.checked_sub(1).and_then(|i| self.lanes.get(i as usize)) {
            s.store(state, Ordering::Relaxed);
        }
    }
}

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

type Connecting = Pin<Box<dyn Future<Output = Result<(Context, u16), String>> + Send>>;

/// The link's state between calls.
struct Link {
    ctx: Context,
    /// Last divert sequence written.
    seq: u16,
    /// Controller heartbeat counter.
    beat: u16,
    /// Last PLC heartbeat value and when it changed.
    plc_beat: Option<(u16, Instant)>,
}

/// Handles divert jobs until the job queue closes (the line has stopped).
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
    let mut connecting: Option<Connecting> = Some(Box::pin(connect(dev.clone())));
    let retry = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(retry);
    let mut retry_armed = false;
    // Dispositions already read; kept across reconnects so none is reported twice. At start
    // the ring's old content (from before this process) is skipped.
    let mut ring_seen: Option<u16> = None;
    let status_every = status_interval(&dev.map);
    let mut status_tick = tokio::time::interval(status_every.unwrap_or(Duration::from_secs(3600)));
    status_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        let failure: Option<DivertError> = tokio::select! {
            // The status tick comes first: a stream of slow divert jobs must not starve the
            // heartbeat, or the PLC would go fail-safe.
            biased;
            _ = status_tick.tick(), if status_every.is_some() && link.is_some() => {
                let l = link.as_mut().expect("guarded by the select condition");
                match poll_status(l, &dev.map, &lanes, &mut ring_seen).await {
                    Ok((found, missed)) => {
                        for d in found {
                            let _ = events.send(PlcEvent::Disposition(d));
                        }
                        if missed > 0 {
                            let _ = events.send(PlcEvent::DispositionsMissed(missed));
                        }
                        None
                    }
                    Err(e) => Some(e),
                }
            }
            job = jobs.recv() => {
                let Some(job) = job else { break };
                let (outcome, failure) = match link.as_mut() {
                    Some(l) => handle_job(l, &dev.map, job).await,
                    None => (
                        outcome(DivertStatus::LinkDown, None, Some("no link to the PLC".into()), false),
                        None,
                    ),
                };
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
                failure
            }
            res = async { connecting.as_mut().expect("guarded by the select condition").await }, if connecting.is_some() => {
                connecting = None;
                match res {
                    Ok((ctx, ack)) => {
                        info!(plc = %dev.name, transport = %dev.transport, "PLC connected");
                        metrics.set_link(&link_name, true, None);
                        backoff.reset();
                        // Continue after whatever the PLC last acknowledged, so a stale ack
                        // from before a restart can never match a new command.
                        link = Some(Link { ctx, seq: ack, beat: 0, plc_beat: None });
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
                link = None;
                retry.as_mut().reset(Instant::now() + backoff.next_delay());
                retry_armed = true;
            } else {
                debug!(plc = %dev.name, error = %e, "PLC call failed");
            }
        }
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

/// Sends one job unless its deadline has passed; returns the outcome and, if the exchange
/// failed, the error (so the caller can judge the link).
async fn handle_job(
    l: &mut Link,
    map: &PlcMap,
    job: DivertJob,
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
    l.seq = next_seq(l.seq);
    let cmd = DivertCommand {
        seq: l.seq,
        lane: job.lane,
        parcel: job.parcel,
    };
    match divert(&mut l.ctx, map, cmd).await {
        Ok(()) => {
            let late = Instant::now() > job.deadline;
            (
                outcome(DivertStatus::Acked, Some(cmd.seq), None, late),
                None,
            )
        }
        Err(e) => (
            outcome(e.status(), Some(cmd.seq), Some(e.to_string()), false),
            Some(e),
        ),
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
        // First read of this process: what the ring holds is from before; start after it.
        None => {
            *ring_seen = Some(head);
            Ok((Vec::new(), 0))
        }
        Some(seen) => {
            let (found, missed) = new_dispositions(&ring, seen);
            *ring_seen = Some(head);
            Ok((found, missed))
        }
    }
}

/// Opens the transport, attaches Modbus and reads the acknowledge register once, which both
/// proves the PLC answers and gives the sequence to continue from.
async fn connect(dev: PlcDevice) -> Result<(Context, u16), String> {
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
    let regs = call(timeout, ctx.read_holding_registers(dev.map.divert.ack, 1))
        .await
        .map_err(|e| e.to_string())?;
    Ok((ctx, regs.first().copied().unwrap_or(0)))
}

/// Writes one divert command and waits for its acknowledge, all within the profile timeout.
pub async fn divert(
    ctx: &mut Context,
    map: &PlcMap,
    cmd: DivertCommand,
) -> Result<(), DivertError> {
    let timeout = Duration::from_millis(map.timeout_ms);
    let deadline = Instant::now() + timeout;
    let regs = cmd.to_registers();
    match tokio::time::timeout_at(
        deadline,
        ctx.write_multiple_registers(map.divert.block, &regs),
    )
    .await
    {
        Err(_) => return Err(DivertError::CallTimeout(timeout)),
        Ok(r) => r?.map_err(DivertError::Refused)?,
    }
    let poll = Duration::from_millis(map.divert.ack_poll_ms);
    loop {
        let regs =
            match tokio::time::timeout_at(deadline, ctx.read_holding_registers(map.divert.ack, 1))
                .await
            {
                Err(_) => return Err(DivertError::CallTimeout(timeout)),
                Ok(r) => r?.map_err(DivertError::Refused)?,
            };
        if regs.first() == Some(&cmd.seq) {
            return Ok(());
        }
        if Instant::now() + poll >= deadline {
            return Err(DivertError::AckTimeout(timeout));
        }
        tokio::time::sleep(poll).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_states_mark_full_and_disabled_lanes_unavailable() {
        let l = LaneStates::default();
        assert!(l.available(2));
        l.set(2, LANE_FULL);
        l.set(3, LANE_DISABLED);
        assert!(!l.available(2));
        assert!(!l.available(3));
        assert_eq!(l.describe(2), "full");
        assert_eq!(l.describe(3), "disabled");
        assert!(
            l.available(40),
            "lanes beyond the status block are not known to be down"
        );
        l.set(2, 0);
        assert!(l.available(2));
    }
}
