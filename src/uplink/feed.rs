//! The publishing half of a session: the feeder sends the outbox in sequence order, only
//! records already durable, holding a window permit per unacknowledged record, paced to
//! `drain_rate` records per second; queued alarms go out first, a few per round. A record
//! larger than the broker takes is parked, never dropped.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, QoS};
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::pending::Pending;
use crate::alarm::Alarms;
use crate::journal::Journal;
use crate::metrics::Metrics;

/// Alarms published per feeder round at most.
const ALARMS_PER_ROUND: usize = 8;

/// Parks `seq`: out of the outbox, kept in the journal, reported. The sled write runs on a
/// blocking thread (the uplink's thread runs no sled work); the caller waits for it, so the
/// feeder sends nothing more until the record is parked.
pub(super) async fn park(
    journal: &Journal,
    metrics: &Metrics,
    alarms: &Alarms,
    seq: u64,
    reason: &str,
) {
    let parked = {
        let (journal, reason) = (journal.clone(), reason.to_string());
        tokio::task::spawn_blocking(move || journal.park(seq, &reason)).await
    };
    match parked {
        Ok(Ok(())) => {
            Metrics::sub(&metrics.backlog, 1);
            Metrics::add(&metrics.records_parked, 1);
            alarms.raise(format!(
                "record {seq} parked, not forwarded: {reason}; it stays in the journal (bondline journal replay)"
            ));
        }
        Ok(Err(e)) => warn!(seq, error = %e, "cannot park a record"),
        Err(e) => warn!(seq, error = %e, "cannot park a record"),
    }
}

/// The publishing half of a session.
pub(super) struct Feeder {
    pub(super) client: AsyncClient,
    pub(super) journal: Journal,
    pub(super) topic: String,
    pub(super) pending: Arc<Mutex<Pending>>,
    pub(super) window: Arc<Semaphore>,
    pub(super) accepted: watch::Receiver<u64>,
    pub(super) stop: CancellationToken,
    /// Cancelled by the feeder when it cannot go on, which ends the session.
    pub(super) failed: CancellationToken,
    /// Largest record payload the broker is configured to take.
    pub(super) max_payload: usize,
    /// Records per second at most; 0 means only the window limits.
    pub(super) drain_rate: u32,
    pub(super) alarms: Alarms,
    pub(super) events_topic: String,
    pub(super) metrics: Arc<Metrics>,
}

impl Feeder {
    /// Queues one publish and its FIFO entry under one lock, so packet ids map back exactly.
    fn publish(&self, topic: &str, entry: Option<u64>, payload: Vec<u8>) -> bool {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.queued.push_back(entry);
        if let Err(e) = self
            .client
            .try_publish(topic, QoS::AtLeastOnce, false, payload)
        {
            p.queued.pop_back();
            warn!(error = %e, "cannot queue a publish; session will restart");
            self.failed.cancel();
            return false;
        }
        true
    }

    /// Publishes a few queued alarms (the rest wait for the next round, so a burst cannot
    /// fill the request queue); returns false if the session must end.
    fn send_alarms(&self) -> bool {
        let mut events = self.alarms.drain();
        if events.len() > ALARMS_PER_ROUND {
            self.alarms.requeue(events.split_off(ALARMS_PER_ROUND));
        }
        for (i, e) in events.iter().enumerate() {
            let bytes = serde_json::to_vec(e).expect("events always serialize");
            if !self.publish(&self.events_topic, None, bytes) {
                self.alarms.requeue(events[i..].to_vec());
                return false;
            }
        }
        true
    }
}

/// Spaces publishes `1/rate` apart on average; after an idle spell at most [`PACE_SLACK`]
/// of idle time is made up in a burst.
struct Pace {
    interval: Option<Duration>,
    next: tokio::time::Instant,
}

impl Pace {
    fn new(rate: u32) -> Pace {
        Pace {
            interval: (rate > 0).then(|| Duration::from_secs_f64(1.0 / rate as f64)),
            next: tokio::time::Instant::now(),
        }
    }

    async fn wait(&mut self) {
        let Some(interval) = self.interval else {
            return;
        };
        // The timer ticks in milliseconds, so intervals shorter than that are kept on
        // average: a schedule up to PACE_SLACK behind is caught up without sleeping.
        let now = tokio::time::Instant::now();
        let floor = now.checked_sub(PACE_SLACK).unwrap_or(now);
        if self.next < floor {
            self.next = floor;
        }
        if self.next > now {
            tokio::time::sleep_until(self.next).await;
        }
        self.next += interval;
    }
}

/// How far the drain schedule may fall behind before idle time stops counting.
const PACE_SLACK: Duration = Duration::from_millis(10);

/// Records read from the outbox at a time.
const READ_BATCH: usize = 256;

type Read = Result<Vec<(u64, Vec<u8>)>, crate::journal::JournalError>;

/// Reads up to [`READ_BATCH`] outbox records on a blocking thread: sled reads never run on
/// an async worker.
fn read(journal: &Journal, from: u64, upto: u64) -> tokio::task::JoinHandle<Read> {
    let journal = journal.clone();
    tokio::task::spawn_blocking(move || journal.outbox_from(from, upto, READ_BATCH))
}

/// Sends the outbox in sequence order, holding a window permit per unacknowledged record.
/// The next batch is read while the current one is sent.
pub(super) async fn feed(mut f: Feeder) {
    let mut next = 0u64;
    let mut pace = Pace::new(f.drain_rate);
    let mut ahead: Option<tokio::task::JoinHandle<Read>> = None;
    loop {
        if !f.send_alarms() {
            return;
        }
        // Mark the current value seen before reading, so a record accepted after the read
        // wakes the wait below; and never read past it: only flushed records may leave.
        let upto = *f.accepted.borrow_and_update();
        // A batch read ahead counts only if it found records: it was read against an
        // older `upto`, so an empty one is read again now rather than waited on.
        let read_ahead = match ahead.take() {
            Some(h) => match h.await {
                Ok(Ok(b)) if !b.is_empty() => Some(b),
                _ => None,
            },
            None => None,
        };
        let batch = match read_ahead {
            Some(b) => b,
            None => match read(&f.journal, next, upto)
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()))
            {
                Ok(b) => b,
                Err(error) => {
                    warn!(%error, "cannot read the outbox");
                    tokio::select! {
                        _ = f.stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            },
        };
        let Some(&(last, _)) = batch.last() else {
            tokio::select! {
                _ = f.stop.cancelled() => return,
                r = f.accepted.changed() => if r.is_err() { return },
                _ = f.alarms.raised() => {}
            }
            continue;
        };
        if batch.len() == READ_BATCH {
            ahead = Some(read(&f.journal, last + 1, upto));
        }
        for (seq, bytes) in batch {
            next = seq + 1;
            if bytes.len() > f.max_payload {
                park(
                    &f.journal,
                    &f.metrics,
                    &f.alarms,
                    seq,
                    &format!(
                        "payload of {} bytes is over uplink.max_packet_kib",
                        bytes.len()
                    ),
                )
                .await;
                continue;
            }
            // A free permit is taken without waiting (the common case while draining); the
            // select, which registers with the stop token, only when the window is full.
            let permit = match f.window.try_acquire() {
                Ok(p) => p,
                Err(_) => tokio::select! {
                    _ = f.stop.cancelled() => return,
                    p = f.window.acquire() => match p { Ok(p) => p, Err(_) => return },
                },
            };
            permit.forget();
            pace.wait().await;
            if !f.publish(&f.topic, Some(seq), bytes) {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pace_keeps_sub_millisecond_rates_on_average() {
        let mut pace = Pace::new(5000);
        let start = tokio::time::Instant::now();
        for _ in 0..1000 {
            pace.wait().await;
        }
        let rate = 1000.0 / start.elapsed().as_secs_f64();
        // 5000/s means 0.2 s for 1000; timer granularity must not cut it to ~1000/s.
        assert!(rate > 3000.0 && rate < 6000.0, "{rate:.0}/s");
    }
}
