//! X-ray image evidence: images taken in from the workstation (a spool directory or an HTTP
//! upload), checked, hashed, thumbnailed, kept on the gateway and forwarded to the platform.
//!
//! This module owns the images up to the moment their [`ImageRecord`] is handed to the line
//! of their X-ray device, which joins it to a parcel by scan id and journals it. It never
//! touches the decision path: decoding runs on the blocking pool behind a semaphore of
//! `workers`, and the line receives a finished record on a channel.
//!
//! - [`process`]: pure: hash, format check, bomb-safe decode, thumbnail; the file name rule.
//! - [`store`]: the evidence directory, originals kept durably by content hash.
//! - [`ingest`]: the order of effects for one image (keep, chunk records, hand to the line).
//! - [`spool`]: one watcher per device with a spool directory.
//! - [`upload`]: `POST /xray/{device}/{scan_id}/{view}`, on its own listener.
//! - [`retention`]: originals removed after the retention, and oldest first above the quota.
//! - [`bench`]: `bondline-lab bench images`.
//!
//! File naming, the spool protocol, the upload API and forwarding are in `docs/xray.md`.

pub mod bench;
mod config;
pub mod ingest;
pub mod process;
pub mod retention;
pub mod spool;
pub mod store;
#[cfg(test)]
mod tests;
pub mod upload;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use bondline_devices::contract::ImageRecord;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::journal::RecordSink;
use crate::metrics::Metrics;

pub use config::{EvidenceConfig, RawEvidence, UploadConfig};
pub use ingest::{Incoming, IngestError, Ingested, Ingestor};

/// Largest image taken, from the spool or an upload. X-ray views are a few MiB at most.
pub const MAX_IMAGE_BYTES: usize = 32 * 1024 * 1024;

/// The smallest uplink packet that carries a chunk record: a full chunk in base64 plus its
/// fields, rounded up. Checked at config load while originals are forwarded.
pub const MIN_PACKET_FOR_CHUNKS: usize = 132 * 1024;

/// Where the images of one X-ray device go.
#[derive(Debug, Clone)]
pub struct Destination {
    /// The line the device belongs to; its records carry this line.
    pub line: String,
    /// The device's spool directory, if its workstation writes one.
    pub spool: Option<PathBuf>,
    /// The line task's image channel. Records arrive with `parcel` and `waybill` empty, and
    /// not yet journaled: the line fills them in and pushes the record.
    pub tx: mpsc::Sender<ImageRecord>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("X-ray image upload endpoint cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
}

/// Starts a spool watcher per device with a spool and, when configured, the upload
/// endpoint; `devices` is keyed by the X-ray device's configured name. Call within a tokio
/// runtime. The tasks stop at `shutdown`, after the image in hand; they hold `sink`, so the
/// journal writer outlives them. Nothing is started when no device is given.
pub fn start(
    cfg: &EvidenceConfig,
    gateway: String,
    devices: HashMap<String, Destination>,
    sink: RecordSink,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> Result<Vec<JoinHandle<()>>, StartError> {
    if devices.is_empty() {
        return Ok(Vec::new());
    }
    if let Err(e) = std::fs::create_dir_all(&cfg.dir) {
        // Not fatal: the line runs without it; images wait in the spool (uploads get 503)
        // until the directory can be written, and the first failure is logged then.
        tracing::error!(dir = %cfg.dir.display(), error = %e, "cannot create the X-ray evidence directory");
    }
    let routes = devices
        .iter()
        .map(|(name, d)| {
            (
                name.clone(),
                ingest::Route {
                    line: d.line.clone(),
                    tx: d.tx.clone(),
                },
            )
        })
        .collect();
    let ingestor = Ingestor::new(cfg, gateway, routes, sink, metrics.clone());
    let mut tasks = Vec::new();
    if let Some(u) = &cfg.upload {
        let listener = upload::bind(u.listen).map_err(|source| StartError::Bind {
            addr: u.listen,
            source,
        })?;
        let addr = listener.local_addr().unwrap_or(u.listen);
        let app = upload::router(
            ingestor.clone(),
            u.credentials.clone(),
            MAX_IMAGE_BYTES,
            shutdown.clone(),
        );
        tracing::info!(%addr, "X-ray image upload endpoint listening");
        tasks.push(tokio::spawn(upload::serve(
            listener,
            app,
            u.max_connections,
            metrics.clone(),
            shutdown.clone(),
        )));
    }
    for (name, d) in devices {
        if let Some(dir) = d.spool {
            let w = spool::Watcher::new(name, dir, ingestor.clone(), metrics.clone(), cfg.workers);
            tasks.push(tokio::spawn(w.run(shutdown.clone())));
        }
    }
    Ok(tasks)
}

/// Sweeps the evidence directory now and every [`retention::SWEEP_EVERY`] until `shutdown`
/// (see [`retention`]); raises an alarm when originals younger than the retention had to go
/// to stay under the quota. The walk runs on the blocking pool.
pub async fn keep_within_limits(
    cfg: EvidenceConfig,
    alarms: crate::alarm::Alarms,
    shutdown: CancellationToken,
) {
    let mut every = tokio::time::interval(retention::SWEEP_EVERY);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let (dir, keep, quota) = (cfg.dir.clone(), cfg.retention, cfg.quota_bytes);
        let pass = tokio::task::spawn_blocking(move || {
            retention::sweep(&dir, std::time::SystemTime::now(), keep, quota)
        })
        .await;
        match pass {
            Ok(Ok(s)) => {
                if s.expired + s.for_quota > 0 {
                    tracing::info!(
                        expired = s.expired,
                        for_quota = s.for_quota,
                        kept_bytes = s.kept_bytes,
                        "evidence originals removed"
                    );
                }
                if s.for_quota > 0 {
                    alarms.raise(format!(
                        "evidence directory {} over its quota of {} MiB: {} original(s) younger than the retention removed, oldest first (their chunks went through the journal)",
                        cfg.dir.display(),
                        cfg.quota_bytes >> 20,
                        s.for_quota
                    ));
                }
                if s.failed > 0 {
                    tracing::warn!(dir = %cfg.dir.display(), failed = s.failed, "evidence originals could not be removed");
                }
            }
            Ok(Err(e)) => {
                tracing::warn!(dir = %cfg.dir.display(), error = %e, "evidence sweep failed")
            }
            Err(e) => tracing::warn!(error = %e, "evidence sweep worker failed"),
        }
    }
}
