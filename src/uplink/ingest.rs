//! The ingest stage of platform messages: how a burst or a backlog of declarations,
//! instructions, notices and rule sets gets from the broker into the journal and the
//! clearance table without starving the MQTT event loop.
//!
//! A session runs three stages side by side:
//! - the *poller* drives the MQTT event loop and never waits on anything else: it hands every
//!   incoming publish to the checker over an unbounded queue (its length is bounded by the
//!   broker's in-flight window for the gateway: Mosquitto's `max_inflight_messages`);
//! - the *checker* takes up to [`INGEST_BATCH`] messages at a time and parses them and checks
//!   their signatures on blocking threads ([`prepare_batch`], both cores), one batch ahead of
//!   the storer; while the lines sort it takes batches no faster than
//!   `uplink.platform_rate_while_sorting` allows ([`super::ingest_pace`]);
//! - the *storer* stores a batch (one platform lock, one table write lock per run of
//!   independent messages, one journal flush), then acknowledges the batch in arrival order.
//!
//! Acknowledges go through the MQTT client's bounded request queue. The storer takes a permit
//! of [`ACK_WINDOW`] per acknowledge and the poller gives it back when the event loop has
//! written the PUBACK, so acknowledges never hold more than `ACK_WINDOW` places of that queue:
//! the rest is room for the records in flight and events, whose publishes therefore never find
//! it full. Waiting for a permit cannot deadlock: the poller, which frees them, waits on
//! nothing.
//!
//! Invariant (see [`AckQueue`]): a platform message is acknowledged only after it was stored
//! (or refused and reported) and the journal flush that covers it finished, and
//! acknowledgements leave in arrival order, as MQTT requires. A crash before the acknowledge
//! makes the broker deliver the message again.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bondline_devices::contract::{
    topic, Declaration, EnterpriseNotice, EventKind, Instruction, RuleSetUpdate,
};
use rumqttc::Publish;

use crate::trust::{Refused, Trust};

/// Platform messages checked, stored and flushed together, at most. Bounds how long the
/// storer holds the platform lock and how much one flush covers.
pub const INGEST_BATCH: usize = 512;
/// Table changes applied under one write lock, at most: the lines' lookups wait for no more.
pub const APPLY_CHUNK: usize = 128;
/// Acknowledges that may wait in the MQTT client's request queue (see the module doc).
pub const ACK_WINDOW: usize = 4096;
/// Publishes of the gateway's own events and anomalies that may wait in the request queue on
/// top of the records in flight; beyond that an event goes to the log only.
pub const EVENT_ROOM: usize = 256;
/// Messages in flight but none stored for this long raises the ingest-stall alarm.
pub const STALL_AFTER: Duration = Duration::from_secs(20);
/// Below this many messages a batch is checked on one thread: a second one costs more than
/// it saves.
const PARALLEL_FROM: usize = 32;

/// Why a platform message is refused: the event kind to report and the reason.
pub type Refusal = (EventKind, String);

/// A platform message parsed from its topic and payload.
#[derive(Debug, Clone)]
pub enum Parsed {
    Declaration(Declaration),
    Instruction(Instruction),
    Notice(EnterpriseNotice),
    Rules(RuleSetUpdate),
}

/// A platform message after parsing and its signature check, in arrival order.
pub struct Prepared {
    pub publish: Publish,
    /// The message and its signing time, or why it is refused.
    pub verdict: Result<(Parsed, Option<u64>), Refusal>,
}

/// Parses `p` by its topic under `prefix` and checks its signature: everything about a
/// platform message that needs neither the journal nor the table, so it can run on any
/// thread.
pub fn prepare(
    trust: &Trust,
    prefix: &str,
    max_payload: usize,
    p: &Publish,
    now_ms: u64,
) -> Result<(Parsed, Option<u64>), Refusal> {
    if p.payload.len() > max_payload {
        return Err((
            EventKind::RejectedMessage,
            format!(
                "payload of {} bytes is over the limit of {max_payload}",
                p.payload.len()
            ),
        ));
    }
    let suffix = p
        .topic
        .strip_prefix(prefix)
        .and_then(|s| s.strip_prefix('/'))
        .unwrap_or("");
    let rejected = |e: &dyn std::fmt::Display| (EventKind::RejectedMessage, e.to_string());
    let parsed = match suffix {
        topic::DECLARATIONS => {
            Parsed::Declaration(Declaration::parse(&p.payload).map_err(|e| rejected(&e))?)
        }
        topic::INSTRUCTIONS => {
            Parsed::Instruction(Instruction::parse(&p.payload).map_err(|e| rejected(&e))?)
        }
        topic::ENTERPRISES => {
            Parsed::Notice(EnterpriseNotice::parse(&p.payload).map_err(|e| rejected(&e))?)
        }
        topic::RULES => Parsed::Rules(RuleSetUpdate::parse(&p.payload).map_err(|e| rejected(&e))?),
        _ => {
            return Err((
                EventKind::RejectedMessage,
                "no handler for this topic".into(),
            ))
        }
    };
    let checked = match &parsed {
        Parsed::Declaration(m) => trust.check(m, now_ms),
        Parsed::Instruction(m) => trust.check(m, now_ms),
        Parsed::Notice(m) => trust.check(m, now_ms),
        Parsed::Rules(m) => trust.check(m, now_ms),
    };
    match checked {
        Ok(signed_at) => Ok((parsed, signed_at)),
        Err(Refused::WrongTarget(why)) => {
            Err((EventKind::WrongTarget, format!("wrong_target: {why}")))
        }
        Err(Refused::NotFromPlatform(why)) => Err((EventKind::ForgedMessage, why)),
    }
}

/// [`prepare`] over a batch, on this thread and one more for a batch worth it; the result
/// keeps arrival order.
pub fn prepare_batch(
    trust: &Trust,
    prefix: &str,
    max_payload: usize,
    batch: Vec<Publish>,
    now_ms: u64,
) -> Vec<Prepared> {
    let check = |p: &Publish| prepare(trust, prefix, max_payload, p, now_ms);
    let verdicts: Vec<_> = if batch.len() < PARALLEL_FROM {
        batch.iter().map(check).collect()
    } else {
        let (first, second) = batch.split_at(batch.len() / 2);
        std::thread::scope(|s| {
            let other = s.spawn(|| second.iter().map(check).collect::<Vec<_>>());
            let mut v: Vec<_> = first.iter().map(check).collect();
            match other.join() {
                Ok(rest) => v.extend(rest),
                // A panic in the checker is a bug; refuse rather than lose order or messages.
                Err(_) => v.extend(second.iter().map(|_| {
                    Err((
                        EventKind::RejectedMessage,
                        "the message could not be checked".to_string(),
                    ))
                })),
            }
            v
        })
    };
    batch
        .into_iter()
        .zip(verdicts)
        .map(|(publish, verdict)| Prepared { publish, verdict })
        .collect()
}

/// Where a message stands on its way to its acknowledge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Arrived,
    /// Stored in the journal (or refused and reported), not yet flushed.
    Stored,
    /// Covered by a finished flush: may be acknowledged.
    Durable,
}

/// Arrival-ordered acknowledges. A message is released only once it was stored and a flush
/// finished after that, and only when every message that arrived before it is released too.
#[derive(Debug)]
pub struct AckQueue<T> {
    /// Ticket of the front entry.
    base: u64,
    items: VecDeque<(T, Stage)>,
}

impl<T> Default for AckQueue<T> {
    fn default() -> Self {
        AckQueue {
            base: 0,
            items: VecDeque::new(),
        }
    }
}

impl<T> AckQueue<T> {
    /// Records an arrival; returns its ticket.
    pub fn arrive(&mut self, item: T) -> u64 {
        self.items.push_back((item, Stage::Arrived));
        self.base + self.items.len() as u64 - 1
    }

    /// The message with `ticket` is stored (or refused and reported).
    pub fn stored(&mut self, ticket: u64) {
        if let Some(e) = ticket
            .checked_sub(self.base)
            .and_then(|i| self.items.get_mut(i as usize))
        {
            if e.1 == Stage::Arrived {
                e.1 = Stage::Stored;
            }
        }
    }

    /// A flush finished: everything stored before it is durable.
    pub fn flushed(&mut self) {
        for e in self.items.iter_mut().filter(|e| e.1 == Stage::Stored) {
            e.1 = Stage::Durable;
        }
    }

    /// The messages that may be acknowledged now, in arrival order.
    pub fn ready(&mut self) -> Vec<T> {
        let mut out = Vec::new();
        while self.items.front().is_some_and(|e| e.1 == Stage::Durable) {
            if let Some((item, _)) = self.items.pop_front() {
                out.push(item);
                self.base += 1;
            }
        }
        out
    }

    /// Messages not yet released.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// Notices an ingest that stopped: messages in flight and none stored for
/// [`STALL_AFTER`]. Reports once per stall.
#[derive(Debug)]
pub struct StallWatch {
    last_ingested: u64,
    progress_at: Instant,
    reported: bool,
}

impl StallWatch {
    pub fn new(now: Instant, ingested: u64) -> StallWatch {
        StallWatch {
            last_ingested: ingested,
            progress_at: now,
            reported: false,
        }
    }

    /// Called periodically with the messages in flight and the ingested count; returns how
    /// long ingest has been stalled when that is first found.
    pub fn tick(&mut self, now: Instant, in_flight: u64, ingested: u64) -> Option<Duration> {
        if ingested != self.last_ingested || in_flight == 0 {
            self.last_ingested = ingested;
            self.progress_at = now;
            self.reported = false;
            return None;
        }
        let stalled = now.saturating_duration_since(self.progress_at);
        if stalled >= STALL_AFTER && !self.reported {
            self.reported = true;
            return Some(stalled);
        }
        None
    }
}

/// Messages per second over the last seconds: each tick blends the last interval's rate in.
#[derive(Debug)]
pub struct Rate {
    last: u64,
    at: Instant,
    rate: f64,
}

impl Rate {
    pub fn new(now: Instant, count: u64) -> Rate {
        Rate {
            last: count,
            at: now,
            rate: 0.0,
        }
    }

    /// The rate after counting `count` at `now`.
    pub fn tick(&mut self, now: Instant, count: u64) -> f64 {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        if dt > 0.0 {
            let now_rate = count.saturating_sub(self.last) as f64 / dt;
            // Half-life of about a second at one tick a second.
            self.rate = 0.5 * self.rate + 0.5 * now_rate;
            self.last = count;
            self.at = now;
        }
        self.rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Arrive,
        /// Stores the n-th unstored arrival (modulo their number): storing may be out of
        /// order, as refusals and stores interleave.
        Store(usize),
        Flush,
        Ack,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => Just(Op::Arrive),
            3 => (0usize..64).prop_map(Op::Store),
            1 => Just(Op::Flush),
            2 => Just(Op::Ack),
        ]
    }

    proptest! {
        /// Whatever the interleaving, acknowledges leave in arrival order, never before the
        /// message was stored and a flush finished after that, and nothing is lost.
        #[test]
        fn acks_follow_arrival_order_and_only_after_a_flush(ops in proptest::collection::vec(op(), 0..300)) {
            let mut q = AckQueue::default();
            let mut next = 0u64;
            let mut unstored: Vec<u64> = Vec::new();
            // Per message: stored, durable.
            let mut state: Vec<(bool, bool)> = Vec::new();
            let mut acked: Vec<u64> = Vec::new();
            for o in ops {
                match o {
                    Op::Arrive => {
                        let t = q.arrive(next);
                        prop_assert_eq!(t, next);
                        unstored.push(next);
                        state.push((false, false));
                        next += 1;
                    }
                    Op::Store(n) if !unstored.is_empty() => {
                        let id = unstored.remove(n % unstored.len());
                        q.stored(id);
                        state[id as usize].0 = true;
                    }
                    Op::Store(_) => {}
                    Op::Flush => {
                        q.flushed();
                        for s in state.iter_mut().filter(|s| s.0) {
                            s.1 = true;
                        }
                    }
                    Op::Ack => {
                        for id in q.ready() {
                            prop_assert!(state[id as usize].1, "message {} acknowledged before it was durable", id);
                            prop_assert_eq!(id, acked.len() as u64, "out of arrival order");
                            acked.push(id);
                        }
                    }
                }
            }
            // Store and flush what is left: everything comes out, in order.
            for id in unstored {
                q.stored(id);
            }
            q.flushed();
            for id in q.ready() {
                prop_assert_eq!(id, acked.len() as u64);
                acked.push(id);
            }
            prop_assert_eq!(acked.len() as u64, next);
            prop_assert!(q.is_empty());
        }
    }

    #[test]
    fn a_stall_is_reported_once_and_cleared_by_progress() {
        let t0 = Instant::now();
        let mut w = StallWatch::new(t0, 0);
        assert_eq!(w.tick(t0 + Duration::from_secs(5), 10, 0), None);
        assert!(w.tick(t0 + STALL_AFTER, 10, 0).is_some());
        assert_eq!(w.tick(t0 + STALL_AFTER * 2, 10, 0), None, "reported once");
        assert_eq!(w.tick(t0 + STALL_AFTER * 3, 10, 5), None, "progress");
        assert!(w.tick(t0 + STALL_AFTER * 4, 10, 5).is_some(), "a new stall");
        // Nothing in flight is idle, not stalled.
        let mut idle = StallWatch::new(t0, 0);
        assert_eq!(idle.tick(t0 + STALL_AFTER * 2, 0, 0), None);
    }

    #[test]
    fn the_rate_follows_the_count() {
        let t0 = Instant::now();
        let mut r = Rate::new(t0, 0);
        let mut rate = 0.0;
        for s in 1..=10u64 {
            rate = r.tick(t0 + Duration::from_secs(s), s * 1000);
        }
        assert!((rate - 1000.0).abs() < 5.0, "{rate}");
    }
}
