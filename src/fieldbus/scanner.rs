//! The barcode scanner reader: bytes from serial or TCP in, scan events out.
//!
//! Framing comes from the scanner's profile ([`bondline_devices::framing`]). Rejected frames
//! are counted and skipped; they never become parcels. A closed or failed port is reopened
//! with backoff; a pseudo-terminal whose peer went away reads as an error and is reopened too.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bondline_devices::framing::{Frame, FrameDecoder};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::config::{ScannerDevice, Transport};
use crate::floor::{ScanEvent, ScanRead};
use crate::metrics::Metrics;

/// First reconnect delay after the link fails; it doubles per failed attempt, with jitter
/// ([`Backoff`]), and a successful open starts again from here. devices/README.md states
/// these three values ("Reconnects").
pub const RECONNECT_BASE: Duration = Duration::from_millis(100);
/// Longest reconnect delay: a scanner that comes back is read again within this.
pub const RECONNECT_MAX: Duration = Duration::from_secs(2);
/// A TCP connect to the scanner that hangs is given up after this.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Reads the scanner until `shutdown`, sending each parcel to `tx`.
pub async fn run(
    dev: ScannerDevice,
    tx: mpsc::Sender<ScanEvent>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let link = format!("scanner:{}", dev.name);
    let mut backoff = Backoff::new(RECONNECT_BASE, RECONNECT_MAX);
    loop {
        let opened: Result<Box<dyn AsyncRead + Unpin + Send>, String> = match &dev.transport {
            Transport::Serial(s) => super::open_serial(s)
                .map(|p| Box::new(p) as Box<dyn AsyncRead + Unpin + Send>)
                .map_err(|e| e.to_string()),
            Transport::Tcp { host, port } => super::connect_tcp(host, *port, CONNECT_TIMEOUT)
                .await
                .map(|s| Box::new(s) as Box<dyn AsyncRead + Unpin + Send>)
                .map_err(|e| e.to_string()),
        };
        let reason = match opened {
            Ok(port) => {
                info!(scanner = %dev.name, transport = %dev.transport, "scanner connected");
                metrics.set_link(&link, true, None);
                backoff.reset();
                let reason = read_frames(&dev, port, &tx, &metrics, &shutdown).await;
                if shutdown.is_cancelled() || tx.is_closed() {
                    return;
                }
                reason
            }
            Err(e) => e,
        };
        metrics.set_link(&link, false, Some(reason.clone()));
        let wait = backoff.next_delay();
        warn!(scanner = %dev.name, error = %reason, retry_in = ?wait, "scanner link down");
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Reads and decodes until the port fails or shutdown; returns why it stopped.
async fn read_frames(
    dev: &ScannerDevice,
    mut port: Box<dyn AsyncRead + Unpin + Send>,
    tx: &mpsc::Sender<ScanEvent>,
    metrics: &Metrics,
    shutdown: &CancellationToken,
) -> String {
    let mut decoder = FrameDecoder::new(dev.framing.clone());
    let mut buf = [0u8; 1024];
    let mut frames = Vec::with_capacity(16);
    loop {
        let n = tokio::select! {
            _ = shutdown.cancelled() => return "shutdown".into(),
            r = port.read(&mut buf) => match r {
                Ok(0) => return "end of stream".into(),
                Ok(n) => n,
                Err(e) => return e.to_string(),
            },
        };
        let at = SystemTime::now();
        let instant = Instant::now();
        decoder.push(&buf[..n], &mut frames);
        for frame in frames.drain(..) {
            let (read, weight_g) = match frame {
                Frame::Read(w) => (ScanRead::Waybill(w), None),
                Frame::Weighed(w, g) => (ScanRead::Waybill(w), g),
                Frame::NoRead => {
                    metrics.no_reads.fetch_add(1, Ordering::Relaxed);
                    (ScanRead::NoRead, None)
                }
                Frame::Reject(why) => {
                    metrics.frames_rejected.fetch_add(1, Ordering::Relaxed);
                    debug!(scanner = %dev.name, ?why, "frame rejected");
                    continue;
                }
            };
            let scan = ScanEvent {
                read,
                weight_g,
                at,
                instant,
            };
            if tx.send(scan).await.is_err() {
                return "line stopped".into();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_reconnect_backoff_is_the_one_used() {
        let doc = include_str!("../../devices/README.md");
        let stated = "exponential from 100 ms,\n  capped at 2 s, each delay drawn at random between 50 ms and the current cap";
        assert!(doc.contains(stated), "devices/README.md: {stated:?}");
        assert!(doc.contains("A TCP connect that hangs gives up after 2 s."));
        assert_eq!(
            (RECONNECT_BASE, RECONNECT_MAX, CONNECT_TIMEOUT),
            (
                Duration::from_millis(100),
                Duration::from_secs(2),
                Duration::from_secs(2)
            )
        );
        // The jitter's floor is half the base, and no delay passes the cap.
        let mut b = Backoff::new(RECONNECT_BASE, RECONNECT_MAX);
        for _ in 0..50 {
            let d = b.next_delay();
            assert!(
                d >= Duration::from_millis(50) && d <= RECONNECT_MAX,
                "{d:?}"
            );
        }
    }
}
