//! Inbound platform messages, after the pure checks of [`ingest`]: each checked batch is
//! judged against the table ([`judge`]), stored in the journal, applied to the clearance
//! table in runs that touch no waybill twice, made durable and only then acknowledged;
//! refusals are counted, journaled and sent as events.

use std::sync::Mutex;

use bondline_devices::contract::{AlertKind, Declaration, EventKind, Instruction};
use rumqttc::{AsyncClient, Publish};
use tokio::sync::Semaphore;
use tracing::{info, warn};

use super::pending::Pending;
use super::{ingest, judge, refusals, Uplink};
use crate::floor::ClearanceChange;
use crate::metrics::Metrics;
use crate::policy::{UpdateError, UpdateOutcome};
use crate::rules::{Applied, ClearanceTable, Message};

impl Uplink {
    /// Stores and applies one checked batch in arrival order, makes it durable and
    /// acknowledges it (see [`ingest`]). A bad message is refused whole, reported and
    /// acknowledged (redelivering it would not make it better). A message that cannot be
    /// stored returns an error: the session then ends without acknowledging it or anything
    /// after it, so the broker delivers them again on the next session.
    pub(super) async fn ingest_batch(
        &self,
        batch: Vec<ingest::Prepared>,
        client: &AsyncClient,
        pending: &Mutex<Pending>,
        acks: &mut ingest::AckQueue<Publish>,
        ack_room: &Semaphore,
    ) -> Result<(), String> {
        {
            // Storing and applying do not interleave with forgetting old state.
            let _guard = self.journal.platform_lock().lock().await;
            let mut seg = Segment::default();
            let result = batch.into_iter().try_for_each(|prep| {
                let topic_name = prep.publish.topic.clone();
                let dup = prep.publish.dup;
                let ticket = acks.arrive(prep.publish);
                self.ingest_one(prep.verdict, &topic_name, dup, client, pending, &mut seg)?;
                acks.stored(ticket);
                Ok::<(), String>(())
            });
            // What was stored is applied even when a later message could not be: the table
            // follows the journal.
            self.commit(&mut seg);
            result?;
        }
        self.journal
            .flush()
            .await
            .map_err(|e| format!("cannot store platform messages: {e}"))?;
        acks.flushed();
        for p in acks.ready() {
            match ack_room.acquire().await {
                Ok(permit) => permit.forget(),
                Err(_) => return Err("acknowledge window closed".into()),
            }
            client
                .ack(&p)
                .await
                .map_err(|e| format!("cannot acknowledge: {e}"))?;
            Metrics::add(&self.metrics.platform_ingested, 1);
        }
        Ok(())
    }

    /// Stores one checked platform message and queues its table change in `seg`; reports a
    /// refusal. Counts it as a distinct message or as a redelivery.
    fn ingest_one(
        &self,
        verdict: Result<(ingest::Parsed, Option<u64>), ingest::Refusal>,
        topic_name: &str,
        dup: bool,
        client: &AsyncClient,
        pending: &Mutex<Pending>,
        seg: &mut Segment,
    ) -> Result<(), String> {
        use ingest::Parsed;
        use judge::{judge, Held, Keep, Kind};
        if let Ok((_, Some(signed_at))) = &verdict {
            // A signature checked now: the platform's clock is at least there.
            self.read_table().note_platform_time(*signed_at);
        }
        // Already stored: same id, or the same content.
        let mut known = false;
        let verdict: Result<(), ingest::Refusal> = match verdict {
            Err(r) => Err(r),
            Ok((Parsed::Declaration(d), signed_at)) => {
                let key = format!("w:{}", d.waybill);
                if seg.keys.contains(&key) {
                    self.commit(seg);
                }
                let held = {
                    let t = self.read_table();
                    Held {
                        id_seen: false,
                        fresh: t.declaration_is_new(&d),
                        replayed: t.declaration_replayed(&d, signed_at),
                    }
                };
                let what = format!("declaration of {}", d.waybill);
                let j = judge(Kind::Declaration, held, dup, &what);
                if j.keep == Keep::Message {
                    let day = self
                        .journal
                        .store_declaration(&d)
                        .map_err(|e| format!("cannot store a declaration: {e}"))?;
                    seg.stored.push((d.waybill.clone(), day));
                }
                if j.apply {
                    seg.keys.insert(key);
                    seg.ops.push(TableOp::Declaration(d));
                }
                known = j.known;
                j.refusal.map_or(Ok(()), Err)
            }
            Ok((Parsed::Instruction(i), _)) => {
                let keys = [
                    format!("w:{}", i.waybill),
                    format!("i:{}", i.instruction_id),
                ];
                if keys.iter().any(|k| seg.keys.contains(k)) {
                    self.commit(seg);
                }
                let held = {
                    let t = self.read_table();
                    Held {
                        id_seen: t.instruction_id_seen(&i.instruction_id),
                        fresh: t.instruction_is_new(&i),
                        replayed: false,
                    }
                };
                let what = format!("instruction {} for {}", i.instruction_id, i.waybill);
                let j = judge(Kind::Instruction, held, dup, &what);
                match j.keep {
                    Keep::Message => {
                        let day = self
                            .journal
                            .store_instruction(&i)
                            .map_err(|e| format!("cannot store an instruction: {e}"))?;
                        seg.stored.push((i.waybill.clone(), day));
                    }
                    Keep::Id => self
                        .journal
                        .remember_instruction_id(&i)
                        .map_err(|e| format!("cannot store an instruction id: {e}"))?,
                    Keep::Nothing => {}
                }
                if j.apply {
                    seg.keys.extend(keys);
                    seg.ops.push(TableOp::Instruction(i));
                }
                known = j.known;
                j.refusal.map_or(Ok(()), Err)
            }
            Ok((Parsed::Notice(n), _)) => {
                // Rare, and a notice may change every parcel: applied on its own.
                self.commit(seg);
                let held = {
                    let t = self.read_table();
                    Held {
                        id_seen: t.notice_id_seen(&n.notice_id),
                        fresh: t.notice_is_new(&n),
                        replayed: false,
                    }
                };
                let what = format!("enterprise notice {} for {}", n.notice_id, n.enterprise);
                let j = judge(Kind::Notice, held, dup, &what);
                match j.keep {
                    Keep::Message => self
                        .journal
                        .store_notice(&n)
                        .map_err(|e| format!("cannot store an enterprise notice: {e}"))?,
                    Keep::Id => self
                        .journal
                        .remember_notice_id(&n)
                        .map_err(|e| format!("cannot store a notice id: {e}"))?,
                    Keep::Nothing => {}
                }
                if j.apply && self.write_table().apply_notice(&n) == Applied::Changed {
                    info!(enterprise = %n.enterprise, action = ?n.action, notice = %n.notice_id, "enterprise notice applied");
                    let _ = self.changes.send(ClearanceChange::All);
                }
                known = j.known;
                j.refusal.map_or(Ok(()), Err)
            }
            Ok((Parsed::Rules(u), _)) => {
                self.commit(seg);
                match self.policy.apply_update(&u) {
                    Ok(UpdateOutcome::Applied(version)) => {
                        // The policy has told the lines to decide their parcels again.
                        self.event(
                            client,
                            pending,
                            EventKind::RuleSetApplied,
                            format!("rule set {version} from update {} in force", u.update_id),
                            Some(topic_name.to_string()),
                        );
                        Ok(())
                    }
                    Ok(outcome) => {
                        known = outcome == UpdateOutcome::Seen;
                        judge::replay_refusal(
                            known,
                            false,
                            dup,
                            &format!("rule set update {}", u.update_id),
                            "the platform's rule set last applied",
                        )
                        .map_or(Ok(()), Err)
                    }
                    Err(UpdateError::Invalid(reason)) => Err((
                        EventKind::RejectedMessage,
                        format!("rule set update {} refused: {reason}", u.update_id),
                    )),
                    // Not acknowledged: the broker delivers it again.
                    Err(UpdateError::Store(e)) => {
                        return Err(format!("cannot store a rule set update: {e}"))
                    }
                }
            }
        };
        let redelivery = known || (dup && verdict.is_err());
        Metrics::add(
            if redelivery {
                &self.metrics.platform_redeliveries
            } else {
                &self.metrics.platform_messages
            },
            1,
        );
        if let Err((kind, reason)) = verdict {
            self.report_refusal(client, pending, topic_name, kind, reason);
        }
        Ok(())
    }

    /// Applies the queued table changes, [`ingest::APPLY_CHUNK`] per write lock, and tells
    /// the lines which waybills changed.
    fn commit(&self, seg: &mut Segment) {
        seg.keys.clear();
        if seg.ops.is_empty() {
            self.note_stored(seg);
            return;
        }
        let mut changed = Vec::with_capacity(seg.ops.len());
        let msgs: Vec<Message<'_>> = seg
            .ops
            .iter()
            .map(|op| match op {
                TableOp::Declaration(d) => Message::Declaration(d),
                TableOp::Instruction(i) => Message::Instruction(i),
            })
            .collect();
        // Each chunk's share of a shard under one hold of that shard's lock: a lookup sees
        // all a chunk says of a waybill, or none of it.
        for chunk in msgs.chunks(ingest::APPLY_CHUNK) {
            let applied = self.write_table().apply_many(chunk);
            for (m, a) in chunk.iter().zip(applied) {
                match m {
                    Message::Declaration(d) => changed.push(d.waybill.clone()),
                    Message::Instruction(i) if a == Applied::Changed => {
                        changed.push(i.waybill.clone())
                    }
                    _ => {}
                }
            }
        }
        drop(msgs);
        seg.ops.clear();
        self.note_stored(seg);
        for w in changed {
            let _ = self.changes.send(ClearanceChange::Waybill(w));
        }
    }

    /// Notes in the table the day each stored waybill was stored on, as a start reads it
    /// back from the platform log (retention keeps a waybill by its last one).
    fn note_stored(&self, seg: &mut Segment) {
        for (waybill, day) in seg.stored.drain(..) {
            self.write_table().touch(&waybill, day);
        }
    }

    /// Reports a refused platform message: counted, logged, journaled as an alert and sent
    /// as an event.
    fn report_refusal(
        &self,
        client: &AsyncClient,
        pending: &Mutex<Pending>,
        topic_name: &str,
        kind: EventKind,
        reason: String,
    ) {
        Metrics::add(&self.metrics.platform_rejected, 1);
        if kind == EventKind::WrongTarget {
            Metrics::add(&self.metrics.wrong_target_messages, 1);
        }
        let alert = if matches!(kind, EventKind::ForgedMessage | EventKind::WrongTarget) {
            Metrics::add(&self.metrics.forged_messages, 1);
            warn!(topic = %topic_name, %reason, "platform message refused: not from the platform");
            AlertKind::ForgedMessage
        } else {
            warn!(topic = %topic_name, %reason, "platform message rejected");
            AlertKind::RejectedMessage
        };
        // Journaled too: the event below is best effort. A closed channel means the gateway
        // is stopping; the log has it.
        let _ = self.refusals.send(refusals::Refusal {
            alert,
            detail: format!("{topic_name}: {reason}"),
        });
        self.event(client, pending, kind, reason, Some(topic_name.to_string()));
    }

    /// The clearance table: every method takes `&self` (it locks per shard inside).
    fn read_table(&self) -> &ClearanceTable {
        &self.table
    }

    fn write_table(&self) -> &ClearanceTable {
        &self.table
    }
}
/// Table changes of a run of platform messages that touch no waybill or id twice, applied
/// under one write lock (see [`Uplink::commit`]). A message that touches a key already in the
/// run applies the run first, so every check sees what came before it.
#[derive(Default)]
struct Segment {
    ops: Vec<TableOp>,
    /// Waybills whose declaration or instruction was stored since the last commit, with the
    /// day the journal stored it on: the table notes it once they are applied.
    stored: Vec<(String, u32)>,
    keys: std::collections::HashSet<String>,
}

/// One table change of a [`Segment`].
enum TableOp {
    Declaration(Declaration),
    Instruction(Instruction),
}
