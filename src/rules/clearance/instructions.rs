//! Instructions: the platform's release, inspect or hold order for a waybill, held in its
//! entry's instruction slot. Every instruction id ever received is remembered (as a digest),
//! so a redelivery is ignored, and an instruction older than the one held never replaces it.

use std::sync::atomic::Ordering;

use bondline_devices::contract::Instruction;

use super::shard::{Held, Shard};
use super::stamp::Stamp;
use super::{Applied, ClearanceTable};
use crate::rules::compact::Compact;
use crate::rules::sharded::Place;

impl ClearanceTable {
    /// Whether an instruction with this id was received before (applied or not).
    pub fn instruction_id_seen(&self, id: &str) -> bool {
        self.seen_instructions.contains(self.digest(id.as_bytes()))
    }

    /// Whether applying `i` would change the table. An instruction id seen before is a
    /// redelivery; an instruction issued before the one held is stale.
    pub fn instruction_is_new(&self, i: &Instruction) -> bool {
        if self.instruction_id_seen(&i.instruction_id) {
            return false;
        }
        let made = Stamp::of(i.signature.as_ref(), i.issued_at_ms);
        self.with_entry(&i.waybill, |shard, e| {
            e.and_then(|e| shard.held(e))
                .is_none_or(|h| replaces(made, i.action, h))
        })
    }

    pub(super) fn held_of(&self, i: &Instruction) -> Held {
        let made = Stamp::of(i.signature.as_ref(), i.issued_at_ms);
        Held {
            id: Compact::new(&i.instruction_id),
            signed_at_ms: made.signed_at_ms.unwrap_or(0),
            issued_at_ms: made.issued_at_ms.unwrap_or(0),
            reason: self.strings.intern(&i.reason),
            action: i.action,
            stamp: u8::from(made.signed_at_ms.is_some())
                | (u8::from(made.issued_at_ms.is_some()) << 1),
        }
    }

    /// Applies `i` in its shard (held by the caller): unless its id was seen or it is
    /// older than the instruction held.
    pub(super) fn instruct_in(
        &self,
        shard: &mut Shard,
        place: Place,
        i: &Instruction,
        held: Held,
    ) -> Applied {
        let digest = self.digest(i.instruction_id.as_bytes());
        let seen = !self.seen_instructions.insert(digest);
        let fresh = !seen
            && shard
                .find(place, &i.waybill)
                .and_then(|at| shard.held(&shard.entries[at]))
                .is_none_or(|h| replaces(held.made(), held.action, h));
        if !fresh {
            return Applied::Unchanged;
        }
        self.put_instruction(shard, place, &i.waybill, held);
        Applied::Changed
    }

    fn put_instruction(&self, shard: &mut Shard, place: Place, waybill: &str, held: Held) {
        let (at, _) = shard.entry(place, waybill);
        if shard.set_held(at, held) {
            self.instructions.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Stores an instruction unless it is a redelivery or stale (see
    /// [`ClearanceTable::instruction_is_new`]), so a late redelivery cannot undo a newer order.
    pub fn apply_instruction(&self, i: &Instruction) -> Applied {
        let place = self.place(&i.waybill);
        let held = self.held_of(i);
        let mut shard = self.shards.write(place.shard);
        self.instruct_in(&mut shard, place, i, held)
    }

    /// Puts back an instruction that was stored as current (restoring from the store): its id
    /// is already marked seen, so [`ClearanceTable::apply_instruction`] would refuse it.
    pub fn restore_instruction(&self, i: &Instruction) {
        self.mark_instruction_seen(&i.instruction_id);
        let place = self.place(&i.waybill);
        let held = self.held_of(i);
        let mut shard = self.shards.write(place.shard);
        self.put_instruction(&mut shard, place, &i.waybill, held);
    }

    /// Records an instruction id as seen without applying anything (restoring from the store).
    pub fn mark_instruction_seen(&self, id: &str) {
        self.seen_instructions.insert(self.digest(id.as_bytes()));
    }

    /// Puts the fail-closed stand-in `i` of a stored instruction that failed its integrity
    /// check (restoring from the store), made at `at_ms`, the load: only a message signed
    /// after it replaces it. One signed before, such as the release the refused hold had
    /// replaced, replayed from the broker, does not.
    pub fn restore_stand_in(&self, i: &Instruction, at_ms: u64) {
        let place = self.place(&i.waybill);
        let mut held = self.held_of(i);
        held.signed_at_ms = at_ms;
        held.stamp |= 1;
        let mut shard = self.shards.write(place.shard);
        self.put_instruction(&mut shard, place, &i.waybill, held);
    }
}

/// Whether an instruction `action` made at `made` replaces the one `held`.
fn replaces(made: Stamp, action: bondline_devices::contract::Action, held: &Held) -> bool {
    use super::stamp::strictness;
    made.replaces_stricter(held.made(), strictness(action) >= strictness(held.action))
}
