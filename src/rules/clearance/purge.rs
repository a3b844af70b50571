//! Forgetting what retention removes (see `Journal::purge_clearance`): a waybill's
//! declaration and instruction, with its order's sums and declared pieces, and instruction
//! ids older than any signature the gateway accepts. A consumer's history stays in the
//! journal's day totals; the table keeps the consumer only while a held declaration names it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::shard::{Entry, Held};
use super::{ClearanceTable, NONE};

/// A waybill taken out of the table by retention, its consumer still referenced: released
/// or restored ([`ClearanceTable::release_taken`], [`ClearanceTable::restore_taken`]).
#[derive(Debug)]
#[must_use = "a taken waybill is released or restored"]
pub struct Taken {
    /// The day its parcel was counted in its consumer's history, that consumer and the
    /// value, if it was counted.
    pub counted: Option<(u32, Arc<str>, u64)>,
    waybill: String,
    entry: Entry,
    held: Option<Held>,
}

/// What retention needs to know of a waybill held in the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionFacts {
    /// The UTC day its declaration or instruction was last stored (0 if never noted).
    pub touched_day: u32,
    /// The day it was counted in its consumer's history, and that consumer and value, for
    /// the day totals kept once the declaration is forgotten.
    pub counted: Option<(u32, Arc<str>, u64)>,
}

impl ClearanceTable {
    /// Notes that the platform state of `waybill` was stored on `day` (a later day noted
    /// before stays). Retention keeps a waybill whose state was stored within the clearance
    /// period, however old its first message.
    pub fn touch(&self, waybill: &str, day: u32) {
        let place = self.place(waybill);
        let mut shard = self.shards.write(place.shard);
        if let Some(i) = shard.find(place, waybill) {
            shard.entries[i].touch(day);
        }
    }

    /// Whether `json` is the declaration held for `waybill` (the bytes it was applied from).
    pub fn declaration_current(&self, waybill: &str, json: &[u8]) -> bool {
        let digest = self.digest(json);
        self.with_entry(waybill, |_, e| {
            e.is_some_and(|e| e.declared() && e.digest == digest)
        })
    }

    /// Whether the instruction `id` is the one held for `waybill`.
    pub fn instruction_current(&self, waybill: &str, id: &str) -> bool {
        self.with_entry(waybill, |shard, e| {
            e.and_then(|e| shard.held(e))
                .is_some_and(|h| h.id.as_str() == id)
        })
    }

    /// Whether `n` is the notice in force for its enterprise.
    pub fn notice_current(&self, n: &bondline_devices::contract::EnterpriseNotice) -> bool {
        let Some(e) = self.strings.get(&n.enterprise) else {
            return false;
        };
        let made = super::Stamp::of(n.signature.as_ref(), n.issued_at_ms);
        self.notices
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_enterprise
            .get(&e)
            .is_some_and(|held| held.action == n.action && held.made == made)
    }

    /// What retention needs of `waybill`, if the table holds it.
    pub fn retention_facts(&self, waybill: &str) -> Option<RetentionFacts> {
        // The consumer's name is read under the entry's lock (its id is not reused while the
        // entry names it).
        let (e, consumer) = self.with_entry(waybill, |_, e| {
            e.map(|e| (e.clone(), self.consumers.name(e.consumer)))
        })?;
        let counted = e
            .counted()
            .filter(|_| e.declared())
            .and_then(|day| Some((day, consumer?, e.value().unwrap_or(0))));
        Some(RetentionFacts {
            touched_day: e.touched().unwrap_or(0),
            counted,
        })
    }

    /// Forgets what the platform said of `waybill` (its declaration and instruction), its
    /// order's sums and declared pieces; its consumer's history stays in the journal's day
    /// totals (see `Journal::purge_clearance`, which takes and releases instead).
    pub fn forget_waybill(&self, waybill: &str) {
        if let Some(t) = self.take_waybill(waybill) {
            self.release_taken(t);
        }
    }

    /// Takes `waybill` out of the table, keeping what it held (and its consumer in memory)
    /// until [`ClearanceTable::release_taken`] forgets it for good or
    /// [`ClearanceTable::restore_taken`] puts it back. Taken under the waybill's lock, so
    /// that no parcel a line counts is missed: a line counts it before (and it is in
    /// [`Taken::counted`]) or finds nothing to count after. Retention writes the counted
    /// parcel into the stored day totals in between.
    pub fn take_waybill(&self, waybill: &str) -> Option<Taken> {
        let place = self.place(waybill);
        let mut shard = self.shards.write(place.shard);
        let i = shard.find(place, waybill)?;
        let held = shard.held(&shard.entries[i]).cloned();
        let mut entry = shard.remove(i, place, &self.picker);
        if entry.declared() {
            self.declarations.fetch_sub(1, Ordering::Relaxed);
        }
        if entry.instruction != NONE {
            self.instructions.fetch_sub(1, Ordering::Relaxed);
        }
        entry.instruction = NONE;
        // The consumer's name is read under the entry's lock (its reference is held).
        let counted = entry
            .counted()
            .filter(|_| entry.declared())
            .and_then(|day| {
                Some((
                    day,
                    self.consumers.name(entry.consumer)?,
                    entry.value().unwrap_or(0),
                ))
            });
        Some(Taken {
            counted,
            waybill: waybill.to_string(),
            entry,
            held,
        })
    }

    /// Forgets a waybill taken by [`ClearanceTable::take_waybill`] for good: its order's
    /// sums and declared pieces go, and its consumer, with its last held declaration, leaves
    /// memory.
    pub fn release_taken(&self, t: Taken) {
        self.orders
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .forget(&t.waybill);
        self.multi_piece
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.digest(t.waybill.as_bytes()));
        self.consumers.release(t.entry.consumer);
    }

    /// Puts a waybill taken by [`ClearanceTable::take_waybill`] back as it was (retention
    /// could not write its day total). Nothing else creates a waybill's entry while retention
    /// holds the platform lock; if something did, the taken one gives way.
    pub fn restore_taken(&self, t: Taken) {
        let place = self.place(&t.waybill);
        let mut shard = self.shards.write(place.shard);
        let (i, new) = shard.entry(place, &t.waybill);
        if !new {
            drop(shard);
            self.consumers.release(t.entry.consumer);
            return;
        }
        if t.entry.declared() {
            self.declarations.fetch_add(1, Ordering::Relaxed);
        }
        shard.entries[i] = t.entry;
        if let Some(h) = t.held {
            shard.set_held(i, h);
            self.instructions.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Forgets an instruction id (one older than any signature the gateway accepts).
    pub fn forget_instruction_id(&self, id: &str) {
        self.seen_instructions.remove(self.digest(id.as_bytes()));
    }
}
