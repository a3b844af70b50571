//! The jobs waiting to be written, in decision order, and the release jobs held beside them
//! until their decision is durable in the journal (see the module's doc, "Release commands
//! are written ahead"). Its own module because superseding and holding are rules about the
//! queue, apart from how a job is written to the PLC.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use bondline_devices::contract::DivertStatus;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::outcome;
use crate::floor::{DivertJob, PlcEvent};

/// A release job waiting for its decision to be durable.
pub(super) struct Held {
    pub(super) job: DivertJob,
    pub(super) durable: oneshot::Receiver<bool>,
}

/// Jobs not yet written: those ready in decision order, release jobs waiting for the
/// journal beside them.
#[derive(Default)]
pub(super) struct Queue {
    pub(super) ready: VecDeque<DivertJob>,
    pub(super) held: Vec<Held>,
}

impl Queue {
    /// Takes a job in. An older revision of the same parcel still waiting is superseded: its
    /// answer goes back at once (the line ignores answers to superseded revisions).
    pub(super) fn admit(&mut self, mut job: DivertJob, events: &mpsc::UnboundedSender<PlcEvent>) {
        let newer = |j: &DivertJob| j.parcel == job.parcel && j.revision < job.revision;
        let mut superseded = Vec::new();
        self.ready.retain(|j| {
            let old = newer(j);
            if old {
                superseded.push((j.parcel, j.revision, j.lane));
            }
            !old
        });
        self.held.retain(|h| {
            let old = newer(&h.job);
            if old {
                superseded.push((h.job.parcel, h.job.revision, h.job.lane));
            }
            !old
        });
        for (parcel, revision, lane) in superseded {
            let detail = format!("superseded by revision {} before it was sent", job.revision);
            let _ = events.send(PlcEvent::Outcome {
                parcel,
                revision,
                lane,
                outcome: outcome(DivertStatus::Overload, None, Some(detail), false),
                at: Instant::now(),
            });
        }
        match job.durable.take() {
            Some(durable) => self.held.push(Held { job, durable }),
            None => self.ready.push_back(job),
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.ready.is_empty() && self.held.is_empty()
    }

    /// The earliest deadline of a held job.
    pub(super) fn held_deadline(&self) -> Option<Instant> {
        self.held.iter().map(|h| h.job.deadline).min()
    }

    /// Resolves once a held job's decision is stored (or failed to be): its index and whether
    /// it is durable.
    pub(super) async fn next_durable(&mut self) -> (usize, bool) {
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
