//! The sorter PLC link: divert commands out over Modbus (TCP or RTU), acknowledges back.
//!
//! One task owns the connection and handles divert jobs in arrival order. Each job is one
//! atomic block write followed by reads of the acknowledge register until the PLC echoes the
//! job's sequence, all within the profile's timeout. The outcome (acked, timeout, refused,
//! link down) goes into the parcel's record either way: a parcel the PLC did not take still
//! has its record, and the PLC's own default sends it to the exception lane.
//!
//! Reconnecting runs beside job handling, never in front of it: while the link is down, jobs
//! are answered at once with `link_down` instead of queueing behind a connect attempt.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bondline_devices::contract::{DivertOutcome, DivertStatus, ParcelRecord};
use bondline_devices::plc::{next_seq, DivertCommand, PlcMap};
use tokio::sync::mpsc;
use tokio_modbus::client::{Context, Reader, Writer};
use tokio_modbus::{ExceptionCode, Slave};
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::config::{PlcDevice, Transport};
use crate::journal::RecordSink;
use crate::metrics::{unix_ms, Metrics};

/// A decided parcel on its way to the PLC. The record is complete but for its divert outcome.
#[derive(Debug)]
pub struct DivertJob {
    pub lane: u16,
    pub parcel: u32,
    pub record: ParcelRecord,
    /// When the scanner frame arrived, for latency.
    pub scanned: Instant,
}

/// Why a divert was not acknowledged.
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
}

impl DivertError {
    /// Whether the connection must be dropped and made anew.
    fn breaks_link(&self) -> bool {
        matches!(self, DivertError::CallTimeout(_) | DivertError::Io(_))
    }

    fn status(&self) -> DivertStatus {
        match self {
            DivertError::Refused(_) => DivertStatus::Refused,
            DivertError::AckTimeout(_) | DivertError::CallTimeout(_) => DivertStatus::Timeout,
            DivertError::Io(_) => DivertStatus::LinkDown,
        }
    }
}

type Connecting = Pin<Box<dyn Future<Output = Result<(Context, u16), String>> + Send>>;

/// Handles divert jobs until the job queue closes (the line has stopped).
pub async fn run(
    dev: PlcDevice,
    mut jobs: mpsc::Receiver<DivertJob>,
    sink: RecordSink,
    metrics: Arc<Metrics>,
) {
    let link_name = format!("plc:{}", dev.name);
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let mut link: Option<Context> = None;
    let mut seq: u16 = 0;
    let mut connecting: Option<Connecting> = Some(Box::pin(connect(dev.clone())));
    let retry = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(retry);
    let mut retry_armed = false;

    loop {
        tokio::select! {
            biased;
            job = jobs.recv() => {
                let Some(job) = job else { break };
                let outcome = match link.as_mut() {
                    Some(ctx) => {
                        seq = next_seq(seq);
                        let cmd = DivertCommand { seq, lane: job.lane, parcel: job.parcel };
                        match divert(ctx, &dev.map, cmd).await {
                            Ok(()) => outcome(DivertStatus::Acked, Some(seq), None),
                            Err(e) => {
                                let o = outcome(e.status(), Some(seq), Some(e.to_string()));
                                if e.breaks_link() {
                                    warn!(plc = %dev.name, error = %e, "PLC link lost");
                                    metrics.set_link(&link_name, false, Some(e.to_string()));
                                    link = None;
                                    retry.as_mut().reset(tokio::time::Instant::now() + backoff.next_delay());
                                    retry_armed = true;
                                } else {
                                    debug!(plc = %dev.name, error = %e, "divert not acknowledged");
                                }
                                o
                            }
                        }
                    }
                    None => outcome(DivertStatus::LinkDown, None, Some("no link to the PLC".into())),
                };
                finish(job, outcome, &sink, &metrics);
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
                        seq = ack;
                        link = Some(ctx);
                    }
                    Err(e) => {
                        let wait = backoff.next_delay();
                        warn!(plc = %dev.name, error = %e, retry_in = ?wait, "PLC connect failed");
                        metrics.set_link(&link_name, false, Some(e));
                        retry.as_mut().reset(tokio::time::Instant::now() + wait);
                        retry_armed = true;
                    }
                }
            }
            _ = &mut retry, if retry_armed && link.is_none() && connecting.is_none() => {
                retry_armed = false;
                connecting = Some(Box::pin(connect(dev.clone())));
            }
        }
    }
}

fn outcome(status: DivertStatus, seq: Option<u16>, detail: Option<String>) -> DivertOutcome {
    DivertOutcome {
        status,
        plc_seq: seq,
        detail,
        at_ms: unix_ms(SystemTime::now()),
    }
}

fn finish(mut job: DivertJob, outcome: DivertOutcome, sink: &RecordSink, metrics: &Metrics) {
    if outcome.status == DivertStatus::Acked {
        Metrics::add(&metrics.diverts_acked, 1);
    } else {
        Metrics::add(&metrics.diverts_failed, 1);
    }
    job.record.divert = outcome;
    sink.push(job.record);
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
    let ack = match tokio::time::timeout(timeout, ctx.read_holding_registers(dev.map.divert.ack, 1))
        .await
    {
        Err(_) => return Err(format!("PLC did not answer within {timeout:?}")),
        Ok(Err(e)) => return Err(e.to_string()),
        Ok(Ok(Err(code))) => return Err(format!("PLC refused reading the ack register: {code}")),
        Ok(Ok(Ok(regs))) => regs.first().copied().unwrap_or(0),
    };
    Ok((ctx, ack))
}

/// Writes one divert command and waits for its acknowledge, all within the profile timeout.
pub async fn divert(
    ctx: &mut Context,
    map: &PlcMap,
    cmd: DivertCommand,
) -> Result<(), DivertError> {
    let timeout = Duration::from_millis(map.timeout_ms);
    let deadline = tokio::time::Instant::now() + timeout;
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
        if tokio::time::Instant::now() + poll >= deadline {
            return Err(DivertError::AckTimeout(timeout));
        }
        tokio::time::sleep(poll).await;
    }
}
