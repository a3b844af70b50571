//! The PLC's transport: opening the TCP or serial connection with Modbus attached, the
//! first reads that prove the PLC answers, and the one wrapper every Modbus call goes
//! through (its timeout, and the PLC's refusals kept apart from a failed link). Kept apart
//! from the link task so that the task deals in links and errors, not in sockets.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bondline_devices::plc::{DivertCommand, DIVERT_BLOCK_LEN};
use tokio::time::Instant;
use tokio_modbus::client::{Context, Reader};

use super::DivertError;
use crate::config::PlcDevice;

/// What a connect found: the context, the PLC's divert block (the last command it received)
/// and its acknowledge register.
pub(super) type Connection = (Context, Option<DivertCommand>, u16);
pub(super) type Connecting = Pin<Box<dyn Future<Output = Result<Connection, ConnectError>> + Send>>;

/// Why the PLC could not be connected: its transport did not open, or it did not answer the
/// first reads (the link failed, or the PLC refused with a Modbus exception).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    Open(#[from] crate::fieldbus::OpenError),
    #[error("reading the {what}: {source}")]
    FirstRead {
        what: &'static str,
        #[source]
        source: DivertError,
    },
}

/// The link's state between calls.
pub(super) struct Link {
    pub(super) ctx: Context,
    /// Controller heartbeat counter.
    pub(super) beat: u16,
    /// Last PLC heartbeat value and when it changed.
    pub(super) plc_beat: Option<(u16, Instant)>,
}

/// One Modbus call with the profile timeout; exceptions and I/O kept apart.
pub(super) async fn call<T>(
    timeout: Duration,
    fut: impl Future<Output = tokio_modbus::Result<T>>,
) -> Result<T, DivertError> {
    match tokio::time::timeout(timeout, fut).await {
        Err(_) => Err(DivertError::CallTimeout(timeout)),
        Ok(r) => Ok(r?.map_err(DivertError::Refused)?),
    }
}

/// Opens the transport, attaches Modbus and reads the divert block and the acknowledge
/// register once: that proves the PLC answers, and tells the handshake the last command the
/// PLC received and the last it took.
pub(super) async fn connect(dev: PlcDevice) -> Result<Connection, ConnectError> {
    let timeout = Duration::from_millis(dev.map.timeout_ms).max(Duration::from_millis(500));
    let mut ctx = crate::fieldbus::attach(&dev.transport, dev.map.unit_id, timeout).await?;
    let first_read = |what| move |source| ConnectError::FirstRead { what, source };
    let block = call(
        timeout,
        ctx.read_holding_registers(dev.map.divert.block, DIVERT_BLOCK_LEN),
    )
    .await
    .map_err(first_read("divert block"))?;
    let ack = call(timeout, ctx.read_holding_registers(dev.map.divert.ack, 1))
        .await
        .map_err(first_read("acknowledge register"))?;
    Ok((
        ctx,
        DivertCommand::from_registers(&block),
        ack.first().copied().unwrap_or(0),
    ))
}
