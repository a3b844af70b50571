//! Declarations: recognising a redelivery or a replay, storing a declaration's compact facts
//! in its waybill's entry (moving its consumer count when a redeclaration changes it), and
//! what a declaration changes beside its entry: its order's sums and its declared pieces.

use std::sync::atomic::Ordering;

use bondline_devices::contract::Declaration;

use super::shard::{Entry, Shard, DECLARED, HAS_SIGNED, HAS_VALUE, HAS_WEIGHT, IDENTITY_VERIFIED};
use super::{Applied, ClearanceTable, NONE};
use crate::rules::engine::Declared;
use crate::rules::orders::Transaction;
use crate::rules::sharded::Place;

/// A declaration's facts, made ready outside any shard lock.
pub(super) struct Facts {
    digest: u64,
    signed_at_ms: Option<u64>,
    value_minor: Option<u64>,
    enterprise: u32,
    consumer: u32,
    currency: u32,
    gross_weight_g: Option<u32>,
    identity_verified: bool,
}

impl ClearanceTable {
    /// Whether applying `d` would change the table (it is not a redelivery).
    pub fn declaration_is_new(&self, d: &Declaration) -> bool {
        let digest = self.declaration_digest(d);
        self.with_entry(&d.waybill, |_, e| {
            e.is_none_or(|e| !e.declared() || e.digest != digest)
        })
    }

    /// Whether a declaration signed at `signed_at_ms` is older than the signed one held for
    /// its waybill: a replay of an old declaration, which must not replace the newer one.
    pub fn declaration_replayed(&self, d: &Declaration, signed_at_ms: Option<u64>) -> bool {
        let held = self.with_entry(&d.waybill, |_, e| e.and_then(Entry::signed_at));
        match (signed_at_ms, held) {
            (Some(new), Some(held)) => new < held,
            _ => false,
        }
    }

    /// The facts of `d`, its consumer's reference taken: [`ClearanceTable::declare_in`] keeps
    /// or gives it back.
    pub(super) fn facts(&self, d: &Declaration, digest: u64) -> Facts {
        Facts {
            digest,
            signed_at_ms: d.signature.as_ref().map(|s| s.signed_at_ms),
            value_minor: d.value_minor,
            enterprise: self.strings.intern(&d.enterprise),
            consumer: d
                .consumer
                .as_deref()
                .map_or(NONE, |c| self.acquire_consumer(c)),
            currency: d
                .currency
                .as_deref()
                .map_or(NONE, |c| self.strings.intern(c)),
            gross_weight_g: d.gross_weight_g,
            identity_verified: d.identity_verified,
        }
    }

    /// Stores a declaration; a later declaration of the same waybill replaces it. If the
    /// parcel was already counted in its consumer's history, the count moves to the new
    /// consumer and value.
    pub fn apply_declaration(&self, d: &Declaration) -> Applied {
        let digest = self.declaration_digest(d);
        self.apply_declaration_digested(d, digest)
    }

    /// The newest declaration of `waybill` failed its integrity check at a load: the one
    /// held from before it is stale, so lookups see none (the waybill is held as
    /// undeclared) until a newer declaration replaces it. The parcel's count stays with the
    /// consumer it was counted for: taken out, it would be missing from that consumer's
    /// windows.
    pub fn refuse_declaration(&self, waybill: &str) {
        let place = self.place(waybill);
        let mut shard = self.shards.write(place.shard);
        if let Some(i) = shard.find(place, waybill) {
            shard.entries[i].flags |= super::shard::REFUSED;
        }
    }

    /// [`ClearanceTable::apply_declaration`] of a declaration whose stored bytes are `json`
    /// (loading: the digest is taken of the bytes as stored, without serializing again).
    pub fn restore_declaration(&self, d: &Declaration, json: &[u8]) -> Applied {
        let digest = self.digest(json);
        self.apply_declaration_digested(d, digest)
    }

    fn apply_declaration_digested(&self, d: &Declaration, digest: u64) -> Applied {
        let place = self.place(&d.waybill);
        if !self.with_entry(&d.waybill, |_, e| {
            e.is_none_or(|e| !e.declared() || e.digest != digest)
        }) {
            return Applied::Unchanged;
        }
        let facts = self.facts(d, digest);
        let applied = {
            let mut shard = self.shards.write(place.shard);
            self.declare_in(&mut shard, place, &d.waybill, &facts)
        };
        if applied == Applied::Changed {
            self.after_declaration(d);
        }
        applied
    }

    /// What a declaration changes beside its waybill's entry: its order's sums and its
    /// declared pieces (each under its own short lock, taken after the shard's is released).
    pub(super) fn after_declaration(&self, d: &Declaration) {
        self.orders
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .apply(d);
        self.set_pieces(&d.waybill, d.pieces);
    }

    /// Keeps the declared pieces of `waybill` when more than one (capped at `MAX_PIECES`,
    /// which declarations are checked against on arrival).
    fn set_pieces(&self, waybill: &str, pieces: Option<u32>) {
        let key = self.digest(waybill.as_bytes());
        let mut m = self.multi_piece.write().unwrap_or_else(|e| e.into_inner());
        match pieces.filter(|&n| n > 1) {
            Some(n) => {
                let n = u16::try_from(n.min(bondline_devices::contract::MAX_PIECES)).unwrap_or(1);
                m.insert(key, n);
            }
            None => {
                m.remove(&key);
            }
        }
    }

    /// The pieces declared for `waybill` (1 unless its declaration says more).
    pub fn pieces(&self, waybill: &str) -> u32 {
        let key = self.digest(waybill.as_bytes());
        self.multi_piece
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .map_or(1, |&n| u32::from(n))
    }

    /// The transaction `waybill` belongs to (its order's waybills, or itself alone), as
    /// declared in `d`, the declaration held for it.
    pub fn transaction(&self, waybill: &str, d: &Declared<'_>) -> Transaction {
        self.orders
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .transaction(waybill, d.value_minor, d.currency)
    }

    pub(super) fn declare_in(
        &self,
        shard: &mut Shard,
        place: Place,
        waybill: &str,
        f: &Facts,
    ) -> Applied {
        let (i, _) = shard.entry(place, waybill);
        let e = &mut shard.entries[i];
        if e.declared() && e.digest == f.digest {
            self.consumers.release(f.consumer);
            return Applied::Unchanged;
        }
        if !e.declared() {
            self.declarations.fetch_add(1, Ordering::Relaxed);
        }
        // The count moves to the new consumer and value: added there first, then taken from
        // the old, so that a window read in between counts it twice, never not at all. The
        // old consumer's reference goes last (the same consumer is not dropped on the way).
        let counted = e.counted();
        let before = e.clone();
        let mut flags = DECLARED;
        if f.identity_verified {
            flags |= IDENTITY_VERIFIED;
        }
        if f.value_minor.is_some() {
            flags |= HAS_VALUE;
        }
        if f.gross_weight_g.is_some() {
            flags |= HAS_WEIGHT;
        }
        if f.signed_at_ms.is_some() {
            flags |= HAS_SIGNED;
        }
        e.digest = f.digest;
        e.set_signed_at(f.signed_at_ms.unwrap_or(0));
        e.value_minor = f.value_minor.unwrap_or(0);
        e.enterprise = f.enterprise;
        e.consumer = f.consumer;
        e.currency = f.currency;
        e.gross_weight_g = f.gross_weight_g.unwrap_or(0);
        e.counted_day = super::shard::NOT_COUNTED;
        e.flags = flags;
        if let Some(day) = counted {
            if !self.count_entry(e, day) {
                // Declared without a consumer for now: the parcel stays counted on its day
                // (adding to no history), so that the declaration that names a consumer
                // again counts it there, as the scan did.
                e.counted_day = super::shard::counted_day(day);
            }
        }
        self.uncount_entry(&before);
        self.consumers.release(before.consumer);
        Applied::Changed
    }
}
