//! One image from arrival to its line: checked, hashed, thumbnailed, kept, chunked, handed on.
//!
//! Decoding and the durable write run on tokio's blocking pool, at most `workers` images at
//! once (a semaphore), so neither the async threads nor the lines' decision path ever wait on
//! an image. The order of effects is what makes an image safe to let go of:
//!
//! 1. the original is kept durably in the evidence directory (see [`super::store`]); if that
//!    fails nothing else happens and the caller keeps the image (a spool file stays, an
//!    upload is answered 503);
//! 2. the original's [`ImageChunkRecord`]s are pushed to the journal, if it is not larger
//!    than `max_forward_kb` (otherwise it stays on the gateway only, `chunks` = 0). Chunks are
//!    pushed with every image record, even for bytes kept before: each record is then whole
//!    on its own, and the platform keeps one copy per `(sha256, index)`;
//! 3. the [`ImageRecord`] goes to the line of the image's X-ray device, which joins it to a
//!    parcel and journals it. If the line does not take it within [`LINE_HANDOFF`] (stopped,
//!    or stuck) the record is journaled directly without a parcel, so it is never lost.
//!
//! A corrupt image goes through the same steps with its `error` set.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use bondline_devices::contract::{
    ImageChunkRecord, ImageRecord, ImageSource, IMAGE_CHUNK_BYTES, SCHEMA,
};
use tokio::sync::{mpsc, Semaphore};
use tracing::{error, info, warn};

use super::process::{process, Processed};
use super::EvidenceConfig;
use crate::journal::RecordSink;
use crate::metrics::{unix_ms, Metrics};

/// How long a line may take to accept an image record before it is journaled without one.
pub const LINE_HANDOFF: Duration = Duration::from_secs(2);

/// An image as it arrived, before anything was done with it.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The X-ray device's name in the configuration.
    pub device: String,
    pub scan_id: u32,
    pub view: String,
    pub source: ImageSource,
    pub file_name: String,
    pub bytes: Vec<u8>,
    /// When it arrived, for the ingest latency.
    pub received: Instant,
}

/// What became of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingested {
    pub sha256: String,
    pub bytes: u64,
    /// Why it could not be decoded, if it could not.
    pub error: Option<String>,
    pub kept_at: PathBuf,
    /// Chunk records pushed to the journal; 0 when larger than the forwarding cap.
    pub chunks: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("no X-ray device named `{0}`")]
    UnknownDevice(String),
    /// The original could not be kept; nothing was recorded, the caller still has it.
    #[error("cannot keep the original in {dir}: {source}")]
    Store {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("image worker failed: {0}")]
    Worker(String),
}

/// Where the images of one X-ray device go.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    pub line: String,
    pub tx: mpsc::Sender<ImageRecord>,
}

/// Shared by the spool watchers and the upload endpoint; cheap to clone.
#[derive(Clone)]
pub struct Ingestor {
    inner: Arc<Inner>,
}

struct Inner {
    gateway: String,
    dir: PathBuf,
    max_forward_bytes: u64,
    thumbnail_px: u32,
    routes: HashMap<String, Route>,
    sink: RecordSink,
    metrics: Arc<Metrics>,
    workers: Arc<Semaphore>,
    /// Whether the last write to the evidence directory worked, to log changes only.
    store_ok: AtomicBool,
}

impl Ingestor {
    pub(crate) fn new(
        cfg: &EvidenceConfig,
        gateway: String,
        routes: HashMap<String, Route>,
        sink: RecordSink,
        metrics: Arc<Metrics>,
    ) -> Ingestor {
        Ingestor {
            inner: Arc::new(Inner {
                gateway,
                dir: cfg.dir.clone(),
                max_forward_bytes: cfg.max_forward_bytes,
                thumbnail_px: cfg.thumbnail_px,
                routes,
                sink,
                metrics,
                workers: Arc::new(Semaphore::new(cfg.workers.max(1))),
                store_ok: AtomicBool::new(true),
            }),
        }
    }

    /// The daemon's counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.inner.metrics.clone()
    }

    /// Whether images of `device` are taken.
    pub fn knows(&self, device: &str) -> bool {
        self.inner.routes.contains_key(device)
    }

    /// Processes, keeps and hands on one image; see the module doc for the order. Returns
    /// once the record is with the line (or the journal).
    pub async fn ingest(&self, image: Incoming) -> Result<Ingested, IngestError> {
        let inner = &self.inner;
        let route = inner
            .routes
            .get(&image.device)
            .ok_or_else(|| IngestError::UnknownDevice(image.device.clone()))?;
        let permit = inner
            .workers
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| IngestError::Worker(e.to_string()))?;
        let Incoming {
            device,
            scan_id,
            view,
            source,
            file_name,
            bytes,
            received,
        } = image;
        let dir = inner.dir.clone();
        let px = inner.thumbnail_px;
        let forward = bytes.len() as u64 <= inner.max_forward_bytes;
        let gateway = inner.gateway.clone();
        let line = route.line.clone();
        // The permit moves into the job: a caller that gives up (a dropped upload) does not
        // free a worker whose decode is still running.
        let job = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let p = process(&bytes, px);
            let kept = super::store::keep(&dir, &p.sha256, p.ext, &bytes);
            let chunks = match (&kept, forward) {
                (Ok(_), true) => chunk_records(&bytes, &p.sha256, &gateway, &line),
                _ => Vec::new(),
            };
            (p, kept, chunks)
        });
        let (p, kept, chunks) = job.await.map_err(|e| IngestError::Worker(e.to_string()))?;
        let kept_at = match kept {
            Ok((path, _fresh)) => {
                self.store_health(None);
                path
            }
            Err(source) => {
                self.store_health(Some(&source));
                Metrics::add(&inner.metrics.images_store_failed, 1);
                return Err(IngestError::Store {
                    dir: inner.dir.clone(),
                    source,
                });
            }
        };
        let count = chunks.len() as u32;
        for c in chunks {
            inner.sink.push(c);
        }
        let record = image_record(
            &inner.gateway,
            route,
            (device, scan_id, view, source, file_name),
            &p,
            count,
            &kept_at,
        );
        let done = Ingested {
            sha256: p.sha256,
            bytes: p.bytes,
            error: p.error,
            kept_at,
            chunks: count,
        };
        self.hand_to_line(route, record).await;
        let m = &inner.metrics;
        Metrics::add(&m.images_ingested, 1);
        Metrics::add(&m.image_bytes, done.bytes);
        if done.error.is_some() {
            Metrics::add(&m.images_with_errors, 1);
        }
        m.image_ingest_latency.record(received.elapsed());
        Ok(done)
    }

    async fn hand_to_line(&self, route: &Route, record: ImageRecord) {
        let why = match tokio::time::timeout(LINE_HANDOFF, route.tx.reserve()).await {
            Ok(Ok(permit)) => {
                permit.send(record);
                return;
            }
            Ok(Err(_)) => "the line has stopped",
            Err(_) => "the line did not take it in time",
        };
        warn!(
            line = %route.line,
            device = %record.device,
            scan_id = record.scan_id,
            sha256 = %record.sha256,
            "image record journaled without a parcel: {why}"
        );
        Metrics::add(&self.inner.metrics.images_unrouted, 1);
        self.inner.sink.push(record);
    }

    /// Logs the evidence directory's state when it changes, and shows it as the `evidence`
    /// link in the staff view's health.
    fn store_health(&self, problem: Option<&std::io::Error>) {
        let ok = problem.is_none();
        let was = self.inner.store_ok.swap(ok, Ordering::Relaxed);
        self.inner
            .metrics
            .set_link("evidence", ok, problem.map(|e| e.to_string()));
        match problem {
            Some(e) if was => {
                error!(dir = %self.inner.dir.display(), error = %e, "cannot keep X-ray images: spool files wait, uploads are refused")
            }
            None if !was => info!(dir = %self.inner.dir.display(), "X-ray images are kept again"),
            _ => {}
        }
    }
}

/// The chunk records of an original: `ceil(len / IMAGE_CHUNK_BYTES)` pieces, base64.
pub(crate) fn chunk_records(
    bytes: &[u8],
    sha256: &str,
    gateway: &str,
    line: &str,
) -> Vec<ImageChunkRecord> {
    let count = bytes.len().div_ceil(IMAGE_CHUNK_BYTES) as u32;
    let at_ms = unix_ms(SystemTime::now());
    bytes
        .chunks(IMAGE_CHUNK_BYTES)
        .enumerate()
        .map(|(index, piece)| ImageChunkRecord {
            schema: SCHEMA,
            msg_id: String::new(),
            seq: 0,
            prev_hash: String::new(),
            gateway: gateway.to_string(),
            line: line.to_string(),
            waybill: None,
            sha256: sha256.to_string(),
            index: index as u32,
            count,
            data_b64: base64::engine::general_purpose::STANDARD.encode(piece),
            at_ms,
        })
        .collect()
}

fn image_record(
    gateway: &str,
    route: &Route,
    (device, scan_id, view, source, file_name): (String, u32, String, ImageSource, String),
    p: &Processed,
    chunks: u32,
    kept_at: &std::path::Path,
) -> ImageRecord {
    ImageRecord {
        schema: SCHEMA,
        msg_id: String::new(),
        seq: 0,
        prev_hash: String::new(),
        gateway: gateway.to_string(),
        line: route.line.clone(),
        device,
        scan_id,
        view,
        parcel: None,
        waybill: None,
        source,
        file_name,
        sha256: p.sha256.clone(),
        bytes: p.bytes,
        format: p.format.map(str::to_string),
        width: p.width,
        height: p.height,
        thumbnail_jpeg_b64: p
            .thumbnail_jpeg
            .as_ref()
            .map(|t| base64::engine::general_purpose::STANDARD.encode(t)),
        error: p.error.clone(),
        chunks,
        kept_at: Some(kept_at.display().to_string()),
        at_ms: unix_ms(SystemTime::now()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_the_original_in_order() {
        let bytes: Vec<u8> = (0..(2 * IMAGE_CHUNK_BYTES + 5)).map(|i| i as u8).collect();
        let chunks = chunk_records(&bytes, "ab", "gw", "L1");
        assert_eq!(chunks.len(), 3);
        let mut joined = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            assert_eq!((c.index, c.count, c.sha256.as_str()), (i as u32, 3, "ab"));
            joined.extend(
                base64::engine::general_purpose::STANDARD
                    .decode(&c.data_b64)
                    .unwrap(),
            );
        }
        assert_eq!(joined, bytes);
        assert_eq!(
            chunk_records(&bytes[..IMAGE_CHUNK_BYTES], "ab", "gw", "L1").len(),
            1
        );
        assert!(chunk_records(&[], "ab", "gw", "L1").is_empty());
    }
}
