//! The scanner's side of the daemon's scanner connection: where frames go (a TCP listener
//! the daemon connects to, or a serial port), waiting for the daemon, following its
//! reconnects and writing frames with a timeout. Kept apart from the scheduler so the belt
//! model does not care which transport carries its frames.

use std::future::{self, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use anyhow::bail;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use super::run::Stop;

/// How long `run` waits for the daemon to connect to the scanner port.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// A frame write that takes longer means the daemon stopped reading; the connection is
/// dropped and the frame counts as not delivered.
const WRITE_TIMEOUT: Duration = Duration::from_millis(500);

/// Where the scanner frames go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScannerPort {
    /// Listen here; the daemon connects as to a network scanner.
    Tcp(SocketAddr),
    /// Write to this serial device (e.g. one end of a `socat` pty pair).
    Serial { path: String, baud: u32 },
}

/// The scanner's side of the daemon's scanner connection.
#[derive(Debug)]
pub(super) enum Link {
    Tcp {
        listener: TcpListener,
        conn: Option<TcpStream>,
    },
    Serial {
        port: tokio_serial::SerialStream,
        path: String,
    },
}

pub(super) enum LinkEvent {
    Connected(TcpStream, SocketAddr),
    Closed,
    AcceptFailed(io::Error),
}

impl Link {
    /// Waits for the daemon to connect (TCP); false on shutdown.
    pub(super) async fn wait_connected<S: Future<Output = ()>>(
        &mut self,
        shutdown: &mut Pin<&mut S>,
        stop: &mut Stop,
    ) -> anyhow::Result<bool> {
        let Link::Tcp { listener, conn } = self else {
            return Ok(!stop.stopped);
        };
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "line-sim scanner waiting for the daemon to connect");
        }
        let deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
        while conn.is_none() {
            if stop.stopped {
                return Ok(false);
            }
            tokio::select! {
                () = shutdown.as_mut() => { stop.stopped = true; return Ok(false); }
                () = tokio::time::sleep_until(deadline) => bail!(
                    "the daemon did not connect to the scanner port within {} s",
                    CONNECT_TIMEOUT.as_secs()
                ),
                res = listener.accept() => match res {
                    Ok((stream, peer)) => {
                        tracing::info!(%peer, "scanner client connected");
                        *conn = Some(stream);
                    }
                    Err(e) => {
                        tracing::warn!(%e, "scanner accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        Ok(true)
    }

    /// Completes when a client connects or the current one goes away (TCP); never on serial.
    pub(super) async fn next_event(&mut self) -> LinkEvent {
        match self {
            Link::Serial { .. } => future::pending().await,
            Link::Tcp { listener, conn } => {
                let closed = async {
                    let mut buf = [0u8; 256];
                    match conn.as_mut() {
                        // Whatever a client sends a scanner is read and ignored.
                        Some(c) => loop {
                            match c.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(_) => {}
                            }
                        },
                        None => future::pending::<()>().await,
                    }
                };
                tokio::select! {
                    res = listener.accept() => match res {
                        Ok((stream, peer)) => LinkEvent::Connected(stream, peer),
                        Err(e) => LinkEvent::AcceptFailed(e),
                    },
                    () = closed => LinkEvent::Closed,
                }
            }
        }
    }

    /// Applies a link event; true if a new client connected.
    pub(super) async fn apply(&mut self, event: LinkEvent) -> bool {
        let Link::Tcp { conn, .. } = self else {
            return false;
        };
        match event {
            LinkEvent::Connected(stream, peer) => {
                tracing::info!(%peer, "scanner client connected");
                *conn = Some(stream);
                return true;
            }
            LinkEvent::Closed => {
                tracing::warn!("scanner client disconnected; frames are lost until it is back");
                *conn = None;
            }
            LinkEvent::AcceptFailed(e) => {
                tracing::warn!(%e, "scanner accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        false
    }

    /// Writes one parcel's bytes; true if they were handed to the connection.
    pub(super) async fn write(&mut self, bytes: &[u8]) -> bool {
        async fn put<W: tokio::io::AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> bool {
            let io = async {
                w.write_all(bytes).await?;
                w.flush().await
            };
            matches!(tokio::time::timeout(WRITE_TIMEOUT, io).await, Ok(Ok(())))
        }
        match self {
            Link::Serial { port, path } => {
                let ok = put(port, bytes).await;
                if !ok {
                    tracing::warn!(path, "scanner serial write failed or timed out");
                }
                ok
            }
            Link::Tcp { conn, .. } => match conn {
                None => false,
                Some(c) => {
                    let ok = put(c, bytes).await;
                    if !ok {
                        tracing::warn!("scanner write failed or timed out; dropping the client");
                        *conn = None;
                    }
                    ok
                }
            },
        }
    }
}
