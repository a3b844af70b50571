//! The X-ray stage of `line-sim`: an in-process `xray-sim` whose tunnel the belt's parcels
//! pass through.
//!
//! The hook into the belt is one call: when the scanner event of a parcel runs at `t`,
//! [`XrayHook::enter`] hands the [`XrayDriver`] a passage with the next scan id (a counter
//! from 1) entering the tunnel at `t + scan_to_xray_m / speed` (Unix ms, the clock the daemon
//! joins by); the driver publishes the verdict, images and marks on its own schedule. The
//! parcel enters the tunnel whether or not its scanner frame reached the daemon: the X-ray
//! does not know about the scanner.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bondline_devices::xray::XrayMap;
use tokio::task::JoinHandle;

use super::scenario::XrayStage;
use super::XrayOutcome;
use crate::xray::{self, Passage, XrayDriver, XrayFeed, XrayImages, XraySim, XrayState};

/// Where the simulated X-ray serves Modbus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XrayPort {
    /// Serve Modbus TCP here; the daemon connects.
    Tcp(SocketAddr),
    /// Serve Modbus RTU on this serial device (one end of a `socat` pty pair).
    Rtu { path: String, baud: u32 },
}

/// An X-ray device attached to a line simulator, not yet serving.
#[derive(Debug)]
pub(super) struct XrayAttachment {
    pub(super) state: XrayState,
    server: Server,
    images: Option<XrayImages>,
}

#[derive(Debug)]
enum Server {
    Tcp(XraySim),
    Rtu { path: String, baud: u32 },
}

impl XrayAttachment {
    /// Binds the TCP port now (so a test can learn it); a serial port is opened when the run
    /// starts.
    pub(super) async fn bind(
        stage: &XrayStage,
        map: XrayMap,
        port: XrayPort,
        images: Option<XrayImages>,
    ) -> std::io::Result<XrayAttachment> {
        let invalid =
            |e: xray::XraySimError| std::io::Error::new(std::io::ErrorKind::InvalidInput, e);
        let state = XrayState::new(map, &[stage.unit]).map_err(invalid)?;
        let server = match port {
            XrayPort::Tcp(addr) => {
                Server::Tcp(XraySim::bind(addr, state.clone()).await.map_err(|e| {
                    std::io::Error::new(e.kind(), format!("X-ray port {addr}: {e}"))
                })?)
            }
            XrayPort::Rtu { path, baud } => Server::Rtu { path, baud },
        };
        Ok(XrayAttachment {
            state,
            server,
            images,
        })
    }

    pub(super) fn addr(&self) -> Option<SocketAddr> {
        match &self.server {
            Server::Tcp(sim) => Some(sim.local_addr()),
            Server::Rtu { .. } => None,
        }
    }

    /// Starts serving and the driver; both stop when the hook is dropped.
    pub(super) fn start(self, stage: &XrayStage, seed: u64, speed_m_s: f64) -> XrayHook {
        let server = match self.server {
            Server::Tcp(sim) => tokio::spawn(async move {
                if let Err(e) = sim.run(std::future::pending()).await {
                    tracing::warn!(%e, "line-sim X-ray server stopped");
                }
            }),
            Server::Rtu { path, baud } => {
                let serve =
                    xray::serve_rtu(&path, baud, self.state.clone(), std::future::pending());
                tokio::spawn(async move {
                    if let Err(e) = serve.await {
                        tracing::warn!(%e, path, "line-sim X-ray serial port failed");
                    }
                })
            }
        };
        let mut tasks = vec![server];
        let feed = match XrayDriver::new(stage.driver_config(seed), self.state, self.images) {
            Ok((driver, feed)) => {
                tasks.push(tokio::spawn(async move {
                    driver.run(std::future::pending()).await;
                }));
                Some(feed)
            }
            Err(e) => {
                // The stage was validated with the scenario, so this is not expected; the
                // ledger then shows no X-ray passages.
                tracing::error!(%e, "line-sim X-ray driver not started");
                None
            }
        };
        XrayHook {
            feed,
            offset_ms: (stage.scan_to_xray_m / speed_m_s * 1000.0).round() as u64,
            next_scan_id: 1,
            tasks,
        }
    }
}

/// The running X-ray stage, fed by the belt's scanner events.
#[derive(Debug)]
pub(super) struct XrayHook {
    feed: Option<XrayFeed>,
    offset_ms: u64,
    next_scan_id: u32,
    tasks: Vec<JoinHandle<()>>,
}

impl XrayHook {
    /// The parcel whose leading edge passed the scanner at `scanned` (the run started at
    /// `start`) enters the tunnel: returns its scan id and when, since the start, the X-ray
    /// flagged it if it does.
    pub(super) fn enter(&mut self, scanned: Instant, start: Instant) -> Option<XrayOutcome> {
        let feed = self.feed.as_ref()?;
        let scan_id = self.next_scan_id;
        self.next_scan_id = scan_id.checked_add(1).unwrap_or(1);
        let ago = u64::try_from(scanned.elapsed().as_millis()).unwrap_or(u64::MAX);
        let scan_ms = feed.now_ms().saturating_sub(ago);
        let outcome = feed.pass(Passage::new(scan_id, scan_ms + self.offset_ms))?;
        let since_scan = |at_ms: u64| Duration::from_millis(at_ms.saturating_sub(scan_ms));
        Some(XrayOutcome {
            scan_id,
            flagged_at: outcome
                .flagged_at_ms()
                .map(|f| scanned.saturating_duration_since(start) + since_scan(f)),
        })
    }
}

impl Drop for XrayHook {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
