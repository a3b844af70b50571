//! One camera's task: waits until each requested parcel is in the field, fetches the
//! snapshot, checks and keeps it with the X-ray evidence functions, and journals the record.
//!
//! The task owns everything slow about a camera, so the line never waits on it: the line
//! only `try_send`s a [`Capture`] into this task's bounded queue. At most [`IN_FLIGHT`]
//! snapshots of one camera are fetched at once; while they are all busy (a hanging camera
//! runs each one to its timeout) the queue fills and the line records `no evidence: camera
//! queue full` itself. A capture whose moment has passed by more than the camera's timeout
//! before a fetch could start is recorded as `camera busy` rather than fetched: a picture
//! taken then would show another parcel, and a snapshot joined to the wrong parcel is worse
//! than none.
//!
//! Every capture ends in exactly one [`SnapshotRecord`]: a picture, or `no evidence: <why>`.
//! The camera's state is the `camera:NAME` link of the staff view's health: down with the
//! reason on any failed snapshot, up again on the next good one.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use base64::Engine as _;
use bondline_devices::contract::SnapshotRecord;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::fetch::{fetch, Target};
use super::schedule::{no_evidence, Capture};
use crate::evidence::ingest::chunk_records;
use crate::evidence::process::process;
use crate::journal::RecordSink;
use crate::metrics::{unix_ms, Metrics};

/// Snapshots of one camera fetched at once.
pub const IN_FLIGHT: usize = 4;

/// What a camera task needs; shared by its fetches.
pub struct Camera {
    pub name: String,
    pub gateway: String,
    pub line: String,
    pub target: Target,
    /// The evidence directory, where originals are kept by hash.
    pub dir: PathBuf,
    pub thumbnail_px: u32,
    /// Originals up to this size are forwarded in chunk records.
    pub max_forward_bytes: u64,
    pub sink: RecordSink,
    pub metrics: Arc<Metrics>,
}

impl Camera {
    fn link(&self) -> String {
        format!("camera:{}", self.name)
    }

    /// Takes captures from `rx` until `shutdown` or until every sender is gone.
    pub async fn run(self, mut rx: mpsc::Receiver<Capture>, shutdown: CancellationToken) {
        let me = Arc::new(self);
        let permits = Arc::new(Semaphore::new(IN_FLIGHT));
        loop {
            let c = tokio::select! {
                c = rx.recv() => match c {
                    Some(c) => c,
                    None => break,
                },
                _ = shutdown.cancelled() => break,
            };
            tokio::select! {
                _ = tokio::time::sleep_until(c.due.into()) => {}
                _ = shutdown.cancelled() => {
                    me.fail(&c, "the gateway was stopping");
                    break;
                }
            }
            let permit = tokio::select! {
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
                _ = shutdown.cancelled() => {
                    me.fail(&c, "the gateway was stopping");
                    break;
                }
            };
            let late = Instant::now().saturating_duration_since(c.due);
            if late > me.target.timeout {
                me.fail(
                    &c,
                    &format!(
                        "camera busy: the parcel had left its field {} ms before a fetch could start",
                        late.as_millis()
                    ),
                );
                continue;
            }
            let me = me.clone();
            tokio::spawn(async move {
                let _permit = permit;
                me.take(c).await;
            });
        }
        // Captures still queued: the parcel's file says why there is no picture.
        while let Ok(c) = rx.try_recv() {
            me.fail(&c, "the gateway was stopping");
        }
    }

    /// Journals `no evidence: reason` for `c`.
    fn fail(&self, c: &Capture, reason: &str) {
        Metrics::add(&self.metrics.snapshots_failed, 1);
        self.sink
            .push(no_evidence(&self.gateway, &self.line, c, reason));
    }

    /// Marks the camera down with `reason` (logging the change) and journals the failure.
    fn down(&self, c: &Capture, reason: &str) {
        let was_up = self.metrics.links().get(&self.link()).is_none_or(|l| l.up);
        if was_up {
            warn!(camera = %self.name, line = %self.line, "camera snapshot failed: {reason}");
        }
        self.metrics
            .set_link(&self.link(), false, Some(reason.to_string()));
        self.fail(c, reason);
    }

    async fn take(&self, c: Capture) {
        let bytes = match fetch(&self.target).await {
            Ok(b) => b,
            Err(e) => return self.down(&c, &e.to_string()),
        };
        let taken_at_ms = unix_ms(SystemTime::now());
        let dir = self.dir.clone();
        let px = self.thumbnail_px;
        let forward = bytes.len() as u64 <= self.max_forward_bytes;
        let (gateway, line) = (self.gateway.clone(), self.line.clone());
        // Decoding and the durable write are blocking work, off the async threads.
        let job = tokio::task::spawn_blocking(move || {
            let p = process(&bytes, px);
            if p.error.is_some() || p.format != Some("jpeg") {
                return Err(Box::new(p));
            }
            let kept = crate::evidence::store::keep(&dir, &p.sha256, p.ext, &bytes);
            let chunks = match (&kept, forward) {
                (Ok(_), true) => chunk_records(&bytes, &p.sha256, &gateway, &line),
                _ => Vec::new(),
            };
            Ok((p, kept, chunks))
        });
        let (p, kept, chunks) = match job.await {
            Ok(Ok(done)) => done,
            Ok(Err(p)) => {
                let why = p.error.unwrap_or_else(|| {
                    format!("a {} image, not a JPEG", p.format.unwrap_or("non-JPEG"))
                });
                return self.down(&c, &format!("camera sent no usable JPEG: {why}"));
            }
            Err(e) => return self.fail(&c, &format!("snapshot worker failed: {e}")),
        };
        let kept_at = match kept {
            Ok((path, _fresh)) => path,
            Err(e) => {
                self.metrics
                    .set_link("evidence", false, Some(e.to_string()));
                return self.fail(
                    &c,
                    &format!("cannot keep the snapshot in {}: {e}", self.dir.display()),
                );
            }
        };
        let count = chunks.len() as u32;
        for chunk in chunks {
            self.sink.push(chunk);
        }
        let was_down = self
            .metrics
            .links()
            .get(&self.link())
            .is_some_and(|l| !l.up);
        if was_down {
            info!(camera = %self.name, line = %self.line, "camera snapshots work again");
        }
        self.metrics.set_link(&self.link(), true, None);
        Metrics::add(&self.metrics.snapshots_taken, 1);
        self.sink.push(SnapshotRecord {
            schema: bondline_devices::contract::SCHEMA,
            msg_id: String::new(),
            seq: 0,
            prev_hash: String::new(),
            gateway: self.gateway.clone(),
            line: self.line.clone(),
            camera: self.name.clone(),
            point: c.point,
            lane: c.lane,
            parcel: c.parcel,
            waybill: c.waybill,
            due_at_ms: c.due_at_ms,
            taken_at_ms: Some(taken_at_ms),
            sha256: Some(p.sha256),
            bytes: p.bytes,
            width: p.width,
            height: p.height,
            thumbnail_jpeg_b64: p
                .thumbnail_jpeg
                .map(|t| base64::engine::general_purpose::STANDARD.encode(t)),
            chunks: count,
            kept_at: Some(kept_at.display().to_string()),
            error: None,
            at_ms: unix_ms(SystemTime::now()),
        });
    }
}
