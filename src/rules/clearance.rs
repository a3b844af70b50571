//! What the platform has told this gateway: declarations, instructions and enterprise
//! notices, kept compact in memory for the decision path.
//!
//! A busy gateway holds ten million open declarations (a million a day, kept
//! `storage.clearance_days`). The table keeps of each only what rules look at, in one entry
//! per waybill holding the declaration's facts and, in a side slab, its instruction; repeated
//! strings (enterprise codes, consumer hashes, currencies, instruction reasons) are stored
//! once; waybills and instruction ids sit inline in their slots ([`Compact`]). The full
//! messages live in the journal. About 100 bytes per declaration with half of them
//! instructed (`bondline-lab bench table`).
//!
//! # Concurrency: lookups never wait for more than one small write
//!
//! The table is shared as `Arc<ClearanceTable>` and every method takes `&self`. Waybills are
//! spread over [`SHARDS`] shards, each behind its own `RwLock`:
//! - a lookup holds one shard's read lock while it copies one entry out, then reads the
//!   interned names, the notices and the consumer's history under their own locks, one at a
//!   time;
//! - a writer holds one shard's write lock for one message (or, in [`ClearanceTable::apply_many`],
//!   for the messages of that shard in one batch); a shard's growth copies one shard's slots
//!   (see [`crate::rules::sharded`]), so no write holds a lock for long at any size;
//! - locks nest only in one order: a waybill shard, then a consumer-history shard. Interned
//!   names, notices and seen ids are locked alone, never while another lock is held.
//!
//! What a lookup may see: everything one message (or one batch) says of one waybill is
//! applied under that waybill's shard lock, so a lookup sees all of it or none of it (a
//! declaration and the instruction that came with it arrive together). Different waybills of
//! one batch are not applied at one instant; no decision reads two waybills. A consumer's
//! history is read after the waybill's entry: a parcel counted in between is counted once more
//! (stricter), never less.
//!
//! # Digests
//!
//! Declarations (to recognise a redelivery) and instruction and notice ids (to ignore a replay)
//! are remembered as 64-bit SipHash digests under a key drawn at random when the table is made
//! (digests are never stored: a restart recomputes them from the journal under its new key).
//! Nobody can aim a message at another's digest without the key; by chance, a new id among ten
//! million held ones collides with probability about 2^-40 (10^7 / 2^64), far below any other
//! failure of the gateway, where 128 bits would add 8 bytes to every one of ten million slots.
//!
//! # Loading
//!
//! A restart fills the table in the background (see `Journal::load_clearance_into`). Until
//! [`ClearanceTable::finish_loading`], [`ClearanceTable::loading`] says so and every decision
//! is `state_loading` (hold: fail closed); the lines decide again when the load ends.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use bondline_devices::contract::{
    Action, Declaration, EnterpriseAction, EnterpriseNotice, Instruction,
};

use crate::rules::compact::Compact;
use crate::rules::engine::{ConsumerWindow, Declared, Ordered};
use crate::rules::history::ConsumerHistory;
use crate::rules::orders::{OrderTotals, Transaction};
use crate::rules::sharded::{grow, DigestSet, Index, Locked, Picker, Place, SHARDS};

/// What applying a platform message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The table changed.
    Changed,
    /// Same message seen before (redelivery), or older than what the table holds.
    Unchanged,
}

/// One platform message, for [`ClearanceTable::apply_many`].
#[derive(Debug, Clone, Copy)]
pub enum Message<'a> {
    Declaration(&'a Declaration),
    Instruction(&'a Instruction),
    Notice(&'a EnterpriseNotice),
}

const NONE: u32 = u32::MAX;
/// Shards of the interned strings and of the consumers' histories.
const NAME_SHARDS: usize = 256;
const HISTORY_SHARDS: usize = 256;

/// One shard of the interned strings. An id is `position * NAME_SHARDS + shard`.
#[derive(Debug, Default)]
struct NameShard {
    index: Index,
    names: Vec<Arc<str>>,
}

/// Strings stored once, numbered; never forgotten (enterprises, currencies, reasons and
/// consumers recur).
#[derive(Debug)]
struct Interner {
    shards: Locked<NameShard>,
    picker: Picker,
}

impl Default for Interner {
    fn default() -> Self {
        Interner {
            shards: Locked::new(NAME_SHARDS),
            picker: Picker::default(),
        }
    }
}

impl Interner {
    fn find(shard: &NameShard, place: Place, s: &str) -> Option<u32> {
        shard
            .index
            .find(place.hash, |p| &*shard.names[p as usize] == s)
    }

    fn id(place: Place, pos: u32) -> u32 {
        pos * NAME_SHARDS as u32 + place.shard as u32
    }

    fn intern(&self, s: &str) -> u32 {
        let place = self.picker.place(s, NAME_SHARDS);
        if let Some(pos) = Self::find(&self.shards.read(place.shard), place, s) {
            return Self::id(place, pos);
        }
        let mut shard = self.shards.write(place.shard);
        if let Some(pos) = Self::find(&shard, place, s) {
            return Self::id(place, pos);
        }
        let pos = shard.names.len() as u32;
        grow(&mut shard.names);
        shard.names.push(s.into());
        shard.index.insert(place.hash, pos);
        Self::id(place, pos)
    }

    fn get(&self, s: &str) -> Option<u32> {
        let place = self.picker.place(s, NAME_SHARDS);
        Self::find(&self.shards.read(place.shard), place, s).map(|pos| Self::id(place, pos))
    }

    fn name(&self, id: u32) -> Option<Arc<str>> {
        if id == NONE {
            return None;
        }
        let shard = self.shards.read(id as usize % NAME_SHARDS);
        shard.names.get((id as usize) / NAME_SHARDS).cloned()
    }
}

// Entry flags.
const DECLARED: u8 = 1;
const IDENTITY_VERIFIED: u8 = 2;
const HAS_VALUE: u8 = 4;
const HAS_WEIGHT: u8 = 8;
const HAS_SIGNED: u8 = 16;

/// Everything held for one waybill: its declaration's facts (when `DECLARED`) and the slot of
/// its instruction. Optional numbers are flagged, not sentinels: a declared value of
/// `u64::MAX` must stay a value, not become "none" (which a value limit would let through).
#[derive(Debug, Clone)]
struct Entry {
    waybill: Compact,
    /// Digest of the whole declaration, to recognise a redelivery.
    digest: u64,
    /// When the platform signed the declaration (`HAS_SIGNED`).
    signed_at_ms: u64,
    value_minor: u64,
    enterprise: u32,
    consumer: u32,
    currency: u32,
    gross_weight_g: u32,
    /// The day the parcel was added to its consumer's history, or `NONE`.
    counted_day: u32,
    /// The instruction's slot, or `NONE`.
    instruction: u32,
    flags: u8,
}

impl Entry {
    fn empty(waybill: &str) -> Entry {
        Entry {
            waybill: Compact::new(waybill),
            digest: 0,
            signed_at_ms: 0,
            value_minor: 0,
            enterprise: NONE,
            consumer: NONE,
            currency: NONE,
            gross_weight_g: 0,
            counted_day: NONE,
            instruction: NONE,
            flags: 0,
        }
    }

    fn declared(&self) -> bool {
        self.flags & DECLARED != 0
    }

    fn value(&self) -> Option<u64> {
        (self.flags & HAS_VALUE != 0).then_some(self.value_minor)
    }

    fn signed_at(&self) -> Option<u64> {
        (self.declared() && self.flags & HAS_SIGNED != 0).then_some(self.signed_at_ms)
    }

    fn counted(&self) -> Option<u32> {
        (self.counted_day != NONE).then_some(self.counted_day)
    }
}

/// An instruction held for a waybill.
#[derive(Debug, Clone)]
struct Held {
    id: Compact,
    signed_at_ms: u64,
    issued_at_ms: u64,
    reason: u32,
    action: Action,
    /// Bit 0: signed; bit 1: issued time present.
    stamp: u8,
}

impl Held {
    fn made(&self) -> Stamp {
        Stamp {
            signed_at_ms: (self.stamp & 1 != 0).then_some(self.signed_at_ms),
            issued_at_ms: (self.stamp & 2 != 0).then_some(self.issued_at_ms),
        }
    }
}

/// One shard of waybills.
#[derive(Debug, Default)]
struct Shard {
    index: Index,
    entries: Vec<Entry>,
    held: Vec<Held>,
    /// Free slots of `held`.
    free: Vec<u32>,
}

impl Shard {
    fn find(&self, place: Place, waybill: &str) -> Option<usize> {
        self.index
            .find(place.hash, |p| {
                self.entries[p as usize].waybill.as_str() == waybill
            })
            .map(|p| p as usize)
    }

    fn held(&self, e: &Entry) -> Option<&Held> {
        (e.instruction != NONE).then(|| &self.held[e.instruction as usize])
    }

    /// The entry of `waybill`, made empty if there is none.
    fn entry(&mut self, place: Place, waybill: &str) -> (usize, bool) {
        if let Some(i) = self.find(place, waybill) {
            return (i, false);
        }
        let i = self.entries.len();
        grow(&mut self.entries);
        self.entries.push(Entry::empty(waybill));
        self.index.insert(place.hash, i as u32);
        (i, true)
    }

    fn set_held(&mut self, i: usize, h: Held) -> bool {
        let slot = self.entries[i].instruction;
        if slot != NONE {
            self.held[slot as usize] = h;
            return false;
        }
        let slot = match self.free.pop() {
            Some(s) => {
                self.held[s as usize] = h;
                s
            }
            None => {
                grow(&mut self.held);
                self.held.push(h);
                (self.held.len() - 1) as u32
            }
        };
        self.entries[i].instruction = slot;
        true
    }

    /// Removes entry `i`, moving the last entry into its place.
    fn remove(&mut self, i: usize, place: Place, picker: &Picker) -> Entry {
        self.index.remove(place.hash, i as u32);
        let last = self.entries.len() - 1;
        let gone = self.entries.swap_remove(i);
        if i != last {
            let moved = picker.place(self.entries[i].waybill.as_str(), SHARDS);
            self.index.moved(moved.hash, last as u32, i as u32);
        }
        if gone.instruction != NONE {
            self.free.push(gone.instruction);
        }
        gone
    }
}

#[derive(Debug, Clone)]
struct Notice {
    action: EnterpriseAction,
    reason: Arc<str>,
    made: Stamp,
}

#[derive(Debug, Default)]
struct Notices {
    /// The latest notice per enterprise (by interned id).
    by_enterprise: HashMap<u32, Notice>,
}

/// When the platform made a message, for ordering messages that replace each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stamp {
    /// The signature time: present on every message the gateway believes (only a demo
    /// line with `allow_unsigned` takes messages without it).
    pub signed_at_ms: Option<u64>,
    /// The platform's own time, optional in the contract.
    pub issued_at_ms: Option<u64>,
}

impl Stamp {
    pub fn of(
        signature: Option<&bondline_devices::signing::Signature>,
        issued_at_ms: Option<u64>,
    ) -> Stamp {
        Stamp {
            signed_at_ms: signature.map(|s| s.signed_at_ms),
            issued_at_ms,
        }
    }

    /// Whether a message made at `self` may replace one made at `held`: ordered by the
    /// signature time, then by `issued_at_ms` where both carry it. An older message never
    /// replaces a newer one, whatever order the broker delivers them in. With equal times
    /// (or, on a demo line, no times to compare) the later arrival replaces.
    pub fn replaces(self, held: Stamp) -> bool {
        if let (Some(old), Some(new)) = (held.signed_at_ms, self.signed_at_ms) {
            if new != old {
                return new > old;
            }
        }
        match (held.issued_at_ms, self.issued_at_ms) {
            (Some(old), Some(new)) => new >= old,
            _ => true,
        }
    }
}

/// Progress of a background load, for `/readyz` and the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loading {
    /// Stored entries applied so far.
    pub done: u64,
    /// Stored entries expected (as counted at the last complete load; 0 if unknown).
    pub expected: u64,
}

/// Declarations, instructions, enterprise notices and consumer histories, as last received.
/// Shared between the lines (lookups) and the uplink (writes): see the module's concurrency
/// rule.
#[derive(Debug)]
pub struct ClearanceTable {
    shards: Locked<Shard>,
    picker: Picker,
    /// The key of the 64-bit digests.
    digests: RandomState,
    /// Digests of every instruction id ever applied, superseded or ignored, so a redelivery
    /// of an old instruction cannot replace a newer one.
    seen_instructions: DigestSet,
    seen_notices: DigestSet,
    notices: RwLock<Notices>,
    strings: Interner,
    /// Consumers' histories, sharded by consumer id.
    history: Locked<ConsumerHistory>,
    declarations: AtomicUsize,
    instructions: AtomicUsize,
    loading: AtomicBool,
    load_done: AtomicU64,
    load_expected: AtomicU64,
    /// Per-order sums of declared values, for the per-transaction limit.
    orders: RwLock<OrderTotals>,
    /// Declared pieces of the waybills declared with more than one, by waybill digest (few).
    multi_piece: RwLock<std::collections::HashMap<u64, u16>>,
}

impl Default for ClearanceTable {
    fn default() -> Self {
        ClearanceTable {
            shards: Locked::new(SHARDS),
            picker: Picker::default(),
            digests: RandomState::new(),
            seen_instructions: DigestSet::default(),
            seen_notices: DigestSet::default(),
            notices: RwLock::default(),
            strings: Interner::default(),
            history: Locked::new(HISTORY_SHARDS),
            declarations: AtomicUsize::new(0),
            instructions: AtomicUsize::new(0),
            loading: AtomicBool::new(false),
            load_done: AtomicU64::new(0),
            load_expected: AtomicU64::new(0),
            orders: RwLock::default(),
            multi_piece: RwLock::default(),
        }
    }
}

/// What the table knows of one waybill, copied out for a decision (no lock is held while
/// rules look at it). [`Found::known`] lends it to the rules engine.
#[derive(Debug, Clone, Default)]
pub struct Found {
    pub declaration: Option<FoundDeclaration>,
    pub instruction: Option<FoundInstruction>,
    /// The reason of the declaring enterprise's suspension, if it is suspended.
    pub suspension: Option<Arc<str>>,
    /// The day this waybill was counted in its consumer's history, if it was.
    pub counted_day: Option<u32>,
    /// Set while the table is still loading from the store: what is here may be incomplete.
    pub loading: Option<Loading>,
    consumer_id: u32,
}

/// A declaration as rules see it.
#[derive(Debug, Clone)]
pub struct FoundDeclaration {
    pub enterprise: Arc<str>,
    pub consumer: Option<Arc<str>>,
    pub identity_verified: bool,
    pub value_minor: Option<u64>,
    pub currency: Option<Arc<str>>,
    pub gross_weight_g: Option<u32>,
}

/// The instruction held for a waybill.
#[derive(Debug, Clone)]
pub struct FoundInstruction {
    pub id: String,
    pub action: Action,
    pub reason: Arc<str>,
}

/// What the table knows of one waybill, borrowed for a decision.
#[derive(Debug, Clone, Copy, Default)]
pub struct Known<'a> {
    pub declaration: Option<Declared<'a>>,
    pub instruction: Option<Ordered<'a>>,
    pub suspension: Option<&'a str>,
    /// The day this waybill was counted in its consumer's history, if it was.
    pub counted_day: Option<u32>,
}

impl Found {
    pub fn known(&self) -> Known<'_> {
        Known {
            declaration: self.declaration.as_ref().map(|d| Declared {
                enterprise: &d.enterprise,
                consumer: d.consumer.as_deref(),
                identity_verified: d.identity_verified,
                value_minor: d.value_minor,
                currency: d.currency.as_deref(),
                gross_weight_g: d.gross_weight_g,
            }),
            instruction: self.instruction.as_ref().map(|i| Ordered {
                id: &i.id,
                action: i.action,
                reason: &i.reason,
            }),
            suspension: self.suspension.as_deref(),
            counted_day: self.counted_day,
        }
    }
}

/// A declaration's facts, made ready outside any shard lock.
struct Facts {
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
    pub fn declarations(&self) -> usize {
        self.declarations.load(Ordering::Relaxed)
    }

    pub fn instructions(&self) -> usize {
        self.instructions.load(Ordering::Relaxed)
    }

    /// Consumers with purchases in the kept history.
    pub fn consumers(&self) -> usize {
        (0..self.history.count())
            .map(|i| self.history.read(i).consumers())
            .sum()
    }

    /// Enterprises suspended now.
    pub fn suspended(&self) -> usize {
        self.notices
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_enterprise
            .values()
            .filter(|n| n.action == EnterpriseAction::Suspend)
            .count()
    }

    fn digest(&self, bytes: &[u8]) -> u64 {
        self.digests.hash_one(bytes)
    }

    fn declaration_digest(&self, d: &Declaration) -> u64 {
        self.digest(&serde_json::to_vec(d).expect("declarations always serialize"))
    }

    fn place(&self, waybill: &str) -> Place {
        self.picker.place(waybill, SHARDS)
    }

    /// Reads `waybill`'s entry under its shard's read lock.
    fn with_entry<R>(&self, waybill: &str, f: impl FnOnce(&Shard, Option<&Entry>) -> R) -> R {
        let place = self.place(waybill);
        let shard = self.shards.read(place.shard);
        let e = shard.find(place, waybill).map(|i| &shard.entries[i]);
        f(&shard, e)
    }

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

    fn facts(&self, d: &Declaration, digest: u64) -> Facts {
        Facts {
            digest,
            signed_at_ms: d.signature.as_ref().map(|s| s.signed_at_ms),
            value_minor: d.value_minor,
            enterprise: self.strings.intern(&d.enterprise),
            consumer: d
                .consumer
                .as_deref()
                .map_or(NONE, |c| self.strings.intern(c)),
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
    fn after_declaration(&self, d: &Declaration) {
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

    fn declare_in(&self, shard: &mut Shard, place: Place, waybill: &str, f: &Facts) -> Applied {
        let (i, new) = shard.entry(place, waybill);
        let e = &mut shard.entries[i];
        if e.declared() && e.digest == f.digest {
            return Applied::Unchanged;
        }
        if !e.declared() {
            self.declarations.fetch_add(1, Ordering::Relaxed);
        }
        let _ = new;
        let counted = e.counted();
        if let Some(day) = counted {
            if e.consumer != NONE {
                let value = e.value().unwrap_or(0);
                self.history
                    .write(e.consumer as usize % HISTORY_SHARDS)
                    .remove(e.consumer, day, value);
            }
        }
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
        e.signed_at_ms = f.signed_at_ms.unwrap_or(0);
        e.value_minor = f.value_minor.unwrap_or(0);
        e.enterprise = f.enterprise;
        e.consumer = f.consumer;
        e.currency = f.currency;
        e.gross_weight_g = f.gross_weight_g.unwrap_or(0);
        e.counted_day = NONE;
        e.flags = flags;
        if let Some(day) = counted {
            self.count_entry(e, day);
        }
        Applied::Changed
    }

    /// Adds the entry's parcel to its consumer's history on `day`, once.
    fn count_entry(&self, e: &mut Entry, day: u32) -> bool {
        if !e.declared() || e.consumer == NONE || e.counted_day != NONE {
            return false;
        }
        e.counted_day = day;
        self.history
            .write(e.consumer as usize % HISTORY_SHARDS)
            .add(e.consumer, day, e.value().unwrap_or(0));
        true
    }

    /// Whether an instruction with this id was received before (applied or not).
    pub fn instruction_id_seen(&self, id: &str) -> bool {
        self.seen_instructions.contains(self.digest(id.as_bytes()))
    }

    /// Whether a notice with this id was received before (applied or not).
    pub fn notice_id_seen(&self, id: &str) -> bool {
        self.seen_notices.contains(self.digest(id.as_bytes()))
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
                .is_none_or(|h| made.replaces(h.made()))
        })
    }

    fn held_of(&self, i: &Instruction) -> Held {
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
    fn instruct_in(&self, shard: &mut Shard, place: Place, i: &Instruction, held: Held) -> Applied {
        let digest = self.digest(i.instruction_id.as_bytes());
        let seen = !self.seen_instructions.insert(digest);
        let fresh = !seen
            && shard
                .find(place, &i.waybill)
                .and_then(|at| shard.held(&shard.entries[at]))
                .is_none_or(|h| held.made().replaces(h.made()));
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

    /// Applies platform messages in order, each shard's share under one hold of its lock:
    /// a lookup sees everything the batch says of a waybill, or nothing of it. Returns what
    /// each message did, in order.
    pub fn apply_many(&self, msgs: &[Message<'_>]) -> Vec<Applied> {
        enum Ready {
            Declaration(Facts),
            Instruction(Held),
            Notice,
        }
        let mut out = vec![Applied::Unchanged; msgs.len()];
        // Everything that takes other locks (interning, digests) is done first.
        let mut ready: Vec<(usize, usize, Ready)> = Vec::with_capacity(msgs.len());
        for (n, m) in msgs.iter().enumerate() {
            match m {
                Message::Declaration(d) => {
                    let digest = self.declaration_digest(d);
                    ready.push((
                        self.place(&d.waybill).shard,
                        n,
                        Ready::Declaration(self.facts(d, digest)),
                    ))
                }
                Message::Instruction(i) => ready.push((
                    self.place(&i.waybill).shard,
                    n,
                    Ready::Instruction(self.held_of(i)),
                )),
                Message::Notice(_) => ready.push((usize::MAX, n, Ready::Notice)),
            }
        }
        // Stable: a shard's messages keep their order.
        ready.sort_by_key(|(s, _, _)| *s);
        let mut rest = &mut ready[..];
        while let Some(first) = rest.first() {
            let s = first.0;
            let len = rest.iter().take_while(|(x, _, _)| *x == s).count();
            let (group, tail) = rest.split_at_mut(len);
            rest = tail;
            if s == usize::MAX {
                for (_, n, _) in group.iter() {
                    if let Message::Notice(notice) = msgs[*n] {
                        out[*n] = self.apply_notice(notice);
                    }
                }
                continue;
            }
            let mut shard = self.shards.write(s);
            for (_, n, r) in group.iter_mut() {
                let r = std::mem::replace(r, Ready::Notice);
                out[*n] = match (msgs[*n], r) {
                    (Message::Declaration(d), Ready::Declaration(f)) => {
                        let place = self.place(&d.waybill);
                        self.declare_in(&mut shard, place, &d.waybill, &f)
                    }
                    (Message::Instruction(i), Ready::Instruction(h)) => {
                        let place = self.place(&i.waybill);
                        self.instruct_in(&mut shard, place, i, h)
                    }
                    _ => Applied::Unchanged,
                };
            }
        }
        for (m, applied) in msgs.iter().zip(&out) {
            if let (Message::Declaration(d), Applied::Changed) = (m, applied) {
                self.after_declaration(d);
            }
        }
        out
    }

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

    /// Adds stored day totals of forgotten declarations to `consumer`'s history (at start).
    pub fn add_history(&self, consumer: &str, day: u32, parcels: u32, value_minor: u64) {
        let id = self.strings.intern(consumer);
        self.history
            .write(id as usize % HISTORY_SHARDS)
            .add_totals(id, day, parcels, value_minor);
    }

    /// Records an instruction id as seen without applying anything (restoring from the store).
    pub fn mark_instruction_seen(&self, id: &str) {
        self.seen_instructions.insert(self.digest(id.as_bytes()));
    }

    /// Whether applying `n` would change the table: not a redelivery, not older than the
    /// notice held for the enterprise.
    pub fn notice_is_new(&self, n: &EnterpriseNotice) -> bool {
        if self.notice_id_seen(&n.notice_id) {
            return false;
        }
        let Some(e) = self.strings.get(&n.enterprise) else {
            return true;
        };
        let notices = self.notices.read().unwrap_or_else(|e| e.into_inner());
        notices
            .by_enterprise
            .get(&e)
            .is_none_or(|h| Stamp::of(n.signature.as_ref(), n.issued_at_ms).replaces(h.made))
    }

    /// Applies a suspension or lift unless it is a redelivery or stale.
    pub fn apply_notice(&self, n: &EnterpriseNotice) -> Applied {
        let fresh = self.notice_is_new(n);
        self.seen_notices
            .insert(self.digest(n.notice_id.as_bytes()));
        if !fresh {
            return Applied::Unchanged;
        }
        self.restore_notice(n);
        Applied::Changed
    }

    /// Puts back the notice in force for an enterprise (restoring from the store).
    pub fn restore_notice(&self, n: &EnterpriseNotice) {
        self.seen_notices
            .insert(self.digest(n.notice_id.as_bytes()));
        let e = self.strings.intern(&n.enterprise);
        self.notices
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .by_enterprise
            .insert(
                e,
                Notice {
                    action: n.action,
                    reason: n.reason.as_str().into(),
                    made: Stamp::of(n.signature.as_ref(), n.issued_at_ms),
                },
            );
    }

    /// Records a notice id as seen (restoring from the store).
    pub fn mark_notice_seen(&self, id: &str) {
        self.seen_notices.insert(self.digest(id.as_bytes()));
    }

    /// What the table holds for `waybill`, copied out.
    pub fn known(&self, waybill: &str) -> Found {
        let copied = self.with_entry(waybill, |shard, e| {
            e.map(|e| {
                let held = shard
                    .held(e)
                    .map(|h| (h.id.as_str().to_string(), h.action, h.reason));
                (e.clone(), held)
            })
        });
        let mut found = Found {
            consumer_id: NONE,
            loading: self.loading(),
            ..Found::default()
        };
        let Some((e, held)) = copied else {
            return found;
        };
        if e.declared() {
            found.declaration = Some(FoundDeclaration {
                enterprise: self.strings.name(e.enterprise).unwrap_or_else(|| "".into()),
                consumer: self.strings.name(e.consumer),
                identity_verified: e.flags & IDENTITY_VERIFIED != 0,
                value_minor: e.value(),
                currency: self.strings.name(e.currency),
                gross_weight_g: (e.flags & HAS_WEIGHT != 0).then_some(e.gross_weight_g),
            });
            found.suspension = self
                .notices
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .by_enterprise
                .get(&e.enterprise)
                .filter(|n| n.action == EnterpriseAction::Suspend)
                .map(|n| n.reason.clone());
            found.consumer_id = e.consumer;
            found.counted_day = e.counted();
        }
        found.instruction = held.map(|(id, action, reason)| FoundInstruction {
            id,
            action,
            reason: self.strings.name(reason).unwrap_or_else(|| "".into()),
        });
        found
    }

    /// The history of the consumer of `waybill` over the local days `first..=today`, without
    /// the waybill's own parcel (its decision counts "before this one").
    pub fn consumer_window(&self, waybill: &str, first: u32, today: u32) -> ConsumerWindow {
        let found = self.known(waybill);
        self.consumer_window_of(&found, first, today)
    }

    /// [`ClearanceTable::consumer_window`] of a waybill already looked up.
    pub fn consumer_window_of(&self, found: &Found, first: u32, today: u32) -> ConsumerWindow {
        let c = found.consumer_id;
        if c == NONE || found.declaration.is_none() {
            return ConsumerWindow::default();
        }
        let mut w = self
            .history
            .read(c as usize % HISTORY_SHARDS)
            .window(c, first, today);
        if let Some(day) = found.counted_day {
            if (first..=today).contains(&day) {
                let value = found
                    .declaration
                    .as_ref()
                    .and_then(|d| d.value_minor)
                    .unwrap_or(0);
                w.parcels = w.parcels.saturating_sub(1);
                w.value_minor = w.value_minor.saturating_sub(value);
            }
        }
        w
    }

    /// Adds the parcel of `waybill` to its consumer's history on `day`, once per waybill.
    /// Returns whether it was added now (declared with a consumer, not counted before).
    pub fn count(&self, waybill: &str, day: u32) -> bool {
        let place = self.place(waybill);
        let mut shard = self.shards.write(place.shard);
        let Some(i) = shard.find(place, waybill) else {
            return false;
        };
        self.count_entry(&mut shard.entries[i], day)
    }

    /// Makes room for `declarations` waybills spread over the shards (a load of a stored
    /// table whose size is known), so the load itself grows nothing.
    pub fn reserve(&self, declarations: usize) {
        let per = declarations / SHARDS + declarations / SHARDS / 16 + 1;
        for s in 0..SHARDS {
            let mut shard = self.shards.write(s);
            let room = per.saturating_sub(shard.entries.len());
            shard.entries.reserve_exact(room);
            let room = per.saturating_sub(shard.index.len());
            shard.index.reserve(room);
        }
    }

    /// Marks the table as loading from the store, `expected` entries to come (0: unknown).
    pub fn begin_loading(&self, expected: u64) {
        self.load_done.store(0, Ordering::Relaxed);
        self.load_expected.store(expected, Ordering::Relaxed);
        self.loading.store(true, Ordering::Release);
    }

    /// Counts `n` more stored entries applied.
    pub fn loaded(&self, n: u64) {
        self.load_done.fetch_add(n, Ordering::Relaxed);
    }

    /// The load is complete: lookups are whole from now on.
    pub fn finish_loading(&self) {
        self.loading.store(false, Ordering::Release);
    }

    /// The load's progress while the table is loading; `None` once it is whole.
    pub fn loading(&self) -> Option<Loading> {
        self.loading.load(Ordering::Acquire).then(|| Loading {
            done: self.load_done.load(Ordering::Relaxed),
            expected: self.load_expected.load(Ordering::Relaxed),
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bondline_devices::contract::SCHEMA;
    use std::collections::HashMap;

    /// A verified declaration in CNY, shared with the store's tests.
    pub(crate) fn decl(w: &str, consumer: &str, value: u64) -> Declaration {
        Declaration {
            schema: SCHEMA,
            waybill: w.into(),
            enterprise: "E1".into(),
            consumer: Some(consumer.into()),
            identity_verified: true,
            value_minor: Some(value),
            currency: Some("CNY".into()),
            gross_weight_g: None,
            items: vec![],
            order_id: None,
            pieces: None,
            signature: None,
        }
    }

    fn notice(id: &str, action: EnterpriseAction, at: Option<u64>) -> EnterpriseNotice {
        EnterpriseNotice {
            schema: SCHEMA,
            notice_id: id.into(),
            enterprise: "E1".into(),
            action,
            reason: "licence review".into(),
            issued_at_ms: at,
            signature: None,
        }
    }

    #[test]
    fn counting_is_once_per_waybill_and_excludes_the_parcel_itself() {
        let t = ClearanceTable::default();
        t.apply_declaration(&decl("A", "c", 100));
        t.apply_declaration(&decl("B", "c", 50));
        assert!(t.count("A", 10));
        assert!(!t.count("A", 10), "a re-scan does not count twice");
        assert!(!t.count("nobody", 10));
        let w = t.consumer_window("B", 10, 10);
        assert_eq!((w.parcels, w.value_minor), (1, 100));
        let own = t.consumer_window("A", 10, 10);
        assert_eq!(
            (own.parcels, own.value_minor),
            (0, 0),
            "not its own history"
        );
        // A changed declaration moves the count.
        t.apply_declaration(&decl("A", "c", 300));
        let w = t.consumer_window("B", 10, 10);
        assert_eq!((w.parcels, w.value_minor), (1, 300));
        t.apply_declaration(&decl("A", "other", 300));
        assert_eq!(t.consumer_window("B", 10, 10).parcels, 0);
    }

    #[test]
    fn notices_apply_once_and_in_order() {
        let t = ClearanceTable::default();
        t.apply_declaration(&decl("A", "c", 1));
        assert!(t.known("A").suspension.is_none());
        let s = notice("n1", EnterpriseAction::Suspend, Some(20));
        assert_eq!(t.apply_notice(&s), Applied::Changed);
        assert_eq!(t.apply_notice(&s), Applied::Unchanged);
        assert_eq!(t.known("A").suspension.as_deref(), Some("licence review"));
        let stale = notice("n0", EnterpriseAction::Lift, Some(10));
        assert_eq!(t.apply_notice(&stale), Applied::Unchanged);
        assert_eq!(t.suspended(), 1);
        let lift = notice("n2", EnterpriseAction::Lift, Some(30));
        assert_eq!(t.apply_notice(&lift), Applied::Changed);
        assert!(t.known("A").suspension.is_none());
    }

    /// A platform message for the ordering property: an instruction for waybill `W{n}` or a
    /// notice for `E1`, with its signature time and, sometimes, `issued_at_ms`.
    #[derive(Debug, Clone)]
    enum Msg {
        Instruction(Instruction),
        Notice(EnterpriseNotice),
    }

    impl Msg {
        fn signed_at(&self) -> u64 {
            let s = match self {
                Msg::Instruction(i) => &i.signature,
                Msg::Notice(n) => &n.signature,
            };
            s.as_ref().expect("signed").signed_at_ms
        }
    }

    fn signature(at: u64) -> Option<bondline_devices::signing::Signature> {
        Some(bondline_devices::signing::Signature {
            scheme: 2,
            key_id: "p1".into(),
            signed_at_ms: at,
            target: Some("gateway:gw".into()),
            ed25519: "00".repeat(64),
        })
    }

    fn messages() -> impl proptest::strategy::Strategy<Value = Vec<Msg>> {
        use proptest::prelude::*;
        let one = (
            0u8..4,
            0usize..3,
            any::<Option<u64>>(),
            prop_oneof![
                Just(Action::Release),
                Just(Action::Hold),
                Just(Action::Inspect)
            ],
        );
        proptest::collection::vec(one, 1..10).prop_map(|specs| {
            specs
                .into_iter()
                .enumerate()
                .map(|(n, (kind, w, issued, action))| {
                    // Distinct signature times; `issued_at_ms` unrelated to them, or absent.
                    let at = 1_000_000 + (n as u64 * 7919) % 10_007;
                    if kind == 0 {
                        let mut m = notice(
                            &format!("N{n}"),
                            if action == Action::Release {
                                EnterpriseAction::Lift
                            } else {
                                EnterpriseAction::Suspend
                            },
                            issued,
                        );
                        m.signature = signature(at);
                        Msg::Notice(m)
                    } else {
                        Msg::Instruction(Instruction {
                            schema: SCHEMA,
                            instruction_id: format!("I{n}"),
                            waybill: format!("W{w}"),
                            action,
                            reason: String::new(),
                            issued_at_ms: issued,
                            signature: signature(at),
                        })
                    }
                })
                .collect()
        })
    }

    fn state_after(msgs: &[Msg]) -> Vec<(Option<(String, Action)>, bool)> {
        let t = ClearanceTable::default();
        for w in 0..3 {
            t.apply_declaration(&decl(&format!("W{w}"), "c", 100));
        }
        for m in msgs {
            match m {
                Msg::Instruction(i) => t.apply_instruction(i),
                Msg::Notice(n) => t.apply_notice(n),
            };
        }
        (0..3)
            .map(|w| {
                let k = t.known(&format!("W{w}"));
                (
                    k.instruction.map(|o| (o.id.to_string(), o.action)),
                    k.suspension.is_some(),
                )
            })
            .collect()
    }

    use proptest::strategy::Strategy as _;

    proptest::proptest! {
        /// Whatever order the broker delivers signed platform messages in (and whether they
        /// carry `issued_at_ms` or not), the table ends as if they came in signed order: an
        /// older release or lift published after a hold never wins.
        #[test]
        fn any_arrival_order_ends_as_signed_order(
            (msgs, order) in messages().prop_flat_map(|m| {
                let n = m.len();
                (proptest::strategy::Just(m), proptest::strategy::Just((0..n).collect::<Vec<_>>()).prop_shuffle())
            })
        ) {
            let mut signed_order = msgs.clone();
            signed_order.sort_by_key(Msg::signed_at);
            let arrived: Vec<Msg> = order.iter().map(|&i| msgs[i].clone()).collect();
            // Redelivery of everything after the fact changes nothing either.
            let mut twice = arrived.clone();
            twice.extend(msgs.iter().cloned());
            proptest::prop_assert_eq!(state_after(&arrived), state_after(&signed_order));
            proptest::prop_assert_eq!(state_after(&twice), state_after(&signed_order));
        }
    }

    #[test]
    fn an_older_release_without_issued_at_published_after_a_hold_does_not_win() {
        let t = ClearanceTable::default();
        t.apply_declaration(&decl("W", "c", 100));
        let mut release = Instruction {
            schema: SCHEMA,
            instruction_id: "I-rel".into(),
            waybill: "W".into(),
            action: Action::Release,
            reason: String::new(),
            issued_at_ms: None,
            signature: signature(1_000),
        };
        let mut hold = release.clone();
        hold.instruction_id = "I-hold".into();
        hold.action = Action::Hold;
        hold.issued_at_ms = Some(2_000);
        hold.signature = signature(2_000);
        assert_eq!(t.apply_instruction(&hold), Applied::Changed);
        assert_eq!(t.apply_instruction(&release), Applied::Unchanged);
        assert_eq!(t.known("W").instruction.unwrap().action, Action::Hold);
        // A lift signed before the suspension does not end it.
        let mut suspend = notice("N-s", EnterpriseAction::Suspend, None);
        suspend.signature = signature(5_000);
        let mut lift = notice("N-l", EnterpriseAction::Lift, Some(9_999_999));
        lift.signature = signature(4_000);
        t.apply_notice(&suspend);
        assert_eq!(t.apply_notice(&lift), Applied::Unchanged);
        assert!(t.known("W").suspension.is_some());
        release.instruction_id = "I-rel-2".into();
        release.signature = signature(3_000);
        assert_eq!(t.apply_instruction(&release), Applied::Changed);
    }

    fn instruction(w: &str, id: &str, action: Action) -> Instruction {
        Instruction {
            schema: SCHEMA,
            instruction_id: id.into(),
            waybill: w.into(),
            action,
            reason: format!("reason {id}"),
            issued_at_ms: None,
            signature: None,
        }
    }

    /// An operation of the model test.
    #[derive(Debug, Clone)]
    enum Op {
        Declare(u16, u64),
        Instruct(u16, u32),
        Forget(u16),
        Count(u16),
    }

    fn ops() -> impl proptest::strategy::Strategy<Value = Vec<Op>> {
        use proptest::prelude::*;
        let op = prop_oneof![
            (0u16..400, 0u64..5).prop_map(|(w, v)| Op::Declare(w, v)),
            (0u16..400, any::<u32>()).prop_map(|(w, n)| Op::Instruct(w, n)),
            (0u16..400).prop_map(Op::Forget),
            (0u16..400).prop_map(Op::Count),
        ];
        proptest::collection::vec(op, 1..1500)
    }

    proptest::proptest! {
        /// The sharded table holds what a plain map of waybills would, whatever the sequence
        /// of declarations, instructions, counts and forgetting (slots moved on removal, freed
        /// instruction slots reused).
        #[test]
        fn holds_what_a_plain_map_would(ops in ops()) {
            let t = ClearanceTable::default();
            // waybill -> (declared value, instruction id, counted)
            let mut model: HashMap<String, (Option<u64>, Option<String>, bool)> = HashMap::new();
            for (n, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Declare(w, v) => {
                        let w = format!("BL{w:05}");
                        t.apply_declaration(&decl(&w, "c", v));
                        let m = model.entry(w).or_default();
                        m.0 = Some(v);
                    }
                    Op::Instruct(w, k) => {
                        let w = format!("BL{w:05}");
                        let id = format!("I{n}-{k}");
                        t.apply_instruction(&instruction(&w, &id, Action::Release));
                        model.entry(w).or_default().1 = Some(id);
                    }
                    Op::Forget(w) => {
                        let w = format!("BL{w:05}");
                        t.forget_waybill(&w);
                        model.remove(&w);
                    }
                    Op::Count(w) => {
                        let w = format!("BL{w:05}");
                        let counted = t.count(&w, 100);
                        let m = model.get_mut(&w);
                        let expect = m.as_ref().is_some_and(|m| m.0.is_some() && !m.2);
                        proptest::prop_assert_eq!(counted, expect);
                        if let Some(m) = m {
                            m.2 |= counted;
                        }
                    }
                }
            }
            proptest::prop_assert_eq!(t.declarations(), model.values().filter(|m| m.0.is_some()).count());
            proptest::prop_assert_eq!(t.instructions(), model.values().filter(|m| m.1.is_some()).count());
            for w in 0..400u16 {
                let w = format!("BL{w:05}");
                let k = t.known(&w);
                let m = model.get(&w);
                proptest::prop_assert_eq!(k.declaration.as_ref().and_then(|d| d.value_minor), m.and_then(|m| m.0));
                proptest::prop_assert_eq!(k.instruction.as_ref().map(|i| i.id.clone()), m.and_then(|m| m.1.clone()));
                proptest::prop_assert_eq!(k.counted_day.is_some(), m.is_some_and(|m| m.2 && m.0.is_some()));
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(12))]
        /// A lookup never sees half of a message: a writer applies batches that each declare
        /// a waybill (value `k`) and instruct it (id `I<k>`), or forget it, while other
        /// waybills grow the table; readers on other threads find either nothing, or a
        /// declaration and an instruction of the same batch.
        #[test]
        fn a_lookup_never_sees_half_a_batch(
            batches in proptest::collection::vec((0u16..16, proptest::bool::weighted(0.15)), 50..300)
        ) {
            use std::sync::atomic::AtomicBool;
            let t = Arc::new(ClearanceTable::default());
            let done = Arc::new(AtomicBool::new(false));
            let torn = Arc::new(AtomicUsize::new(0));
            let readers: Vec<_> = (0..2)
                .map(|r| {
                    let (t, done, torn) = (t.clone(), done.clone(), torn.clone());
                    std::thread::spawn(move || {
                        let mut looked = 0u64;
                        while !done.load(Ordering::Acquire) || looked < 1_000 {
                            for w in 0..16u16 {
                                let k = t.known(&format!("W{w}"));
                                looked += 1;
                                let ok = match (&k.declaration, &k.instruction) {
                                    (None, None) => true,
                                    (Some(d), Some(i)) => {
                                        i.id == format!("I{}", d.value_minor.unwrap_or(u64::MAX))
                                            && *i.reason == *format!("for {}", d.value_minor.unwrap_or(0))
                                    }
                                    _ => false,
                                };
                                if !ok {
                                    torn.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                            if r == 1 {
                                std::thread::yield_now();
                            }
                        }
                    })
                })
                .collect();
            for (k, (w, forget)) in batches.into_iter().enumerate() {
                let w = format!("W{w}");
                if forget {
                    t.forget_waybill(&w);
                } else {
                    let d = decl(&w, &format!("c{k}"), k as u64);
                    let mut i = instruction(&w, &format!("I{k}"), Action::Release);
                    i.reason = format!("for {k}");
                    t.apply_many(&[Message::Declaration(&d), Message::Instruction(&i)]);
                }
                // Growth elsewhere meanwhile: shards resize under the readers.
                for g in 0..50 {
                    t.apply_declaration(&decl(&format!("G{k}-{g}"), "g", 1));
                }
            }
            done.store(true, Ordering::Release);
            for r in readers {
                r.join().expect("reader");
            }
            proptest::prop_assert_eq!(torn.load(Ordering::Relaxed), 0);
        }
    }

    #[test]
    fn a_batch_reports_each_message_in_order() {
        let t = ClearanceTable::default();
        let d = decl("A", "c", 1);
        let i = instruction("A", "I1", Action::Hold);
        let n = notice("N1", EnterpriseAction::Suspend, Some(1));
        let out = t.apply_many(&[
            Message::Declaration(&d),
            Message::Notice(&n),
            Message::Instruction(&i),
            Message::Declaration(&d),
            Message::Instruction(&i),
        ]);
        assert_eq!(
            out,
            vec![
                Applied::Changed,
                Applied::Changed,
                Applied::Changed,
                Applied::Unchanged,
                Applied::Unchanged
            ]
        );
        let k = t.known("A");
        assert_eq!(k.instruction.unwrap().action, Action::Hold);
        assert!(k.suspension.is_some());
    }

    #[test]
    fn a_loading_table_says_so_in_every_lookup() {
        let t = ClearanceTable::default();
        t.begin_loading(10);
        t.apply_declaration(&decl("A", "c", 1));
        t.loaded(4);
        assert_eq!(
            t.known("A").loading,
            Some(Loading {
                done: 4,
                expected: 10
            })
        );
        assert!(t.known("unknown").loading.is_some());
        t.finish_loading();
        assert!(t.known("A").loading.is_none());
    }

    #[test]
    fn a_declared_value_of_u64_max_stays_a_value() {
        let t = ClearanceTable::default();
        t.apply_declaration(&decl("A", "c", u64::MAX));
        assert_eq!(
            t.known("A").declaration.unwrap().value_minor,
            Some(u64::MAX)
        );
    }
}
