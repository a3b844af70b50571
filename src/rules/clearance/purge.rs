//! Forgetting what retention removes (see `Journal::purge_clearance`): a waybill's
//! declaration and instruction, with its order's sums and declared pieces, and instruction
//! ids older than any signature the gateway accepts. Consumers' histories stay.

use std::sync::atomic::Ordering;

use super::{ClearanceTable, NONE};

impl ClearanceTable {
    /// Forgets what the platform said of `waybill` (its declaration and instruction); its
    /// consumer's history stays. See `Journal::purge_clearance`.
    pub fn forget_waybill(&self, waybill: &str) {
        let place = self.place(waybill);
        let mut shard = self.shards.write(place.shard);
        if let Some(i) = shard.find(place, waybill) {
            let gone = shard.remove(i, place, &self.picker);
            if gone.declared() {
                self.declarations.fetch_sub(1, Ordering::Relaxed);
            }
            if gone.instruction != NONE {
                self.instructions.fetch_sub(1, Ordering::Relaxed);
            }
        }
        drop(shard);
        self.orders
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .forget(waybill);
        self.multi_piece
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.digest(waybill.as_bytes()));
    }

    /// Forgets an instruction id (one older than any signature the gateway accepts).
    pub fn forget_instruction_id(&self, id: &str) {
        self.seen_instructions.remove(self.digest(id.as_bytes()));
    }
}
