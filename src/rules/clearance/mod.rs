//! What the platform has told this gateway: declarations, instructions and enterprise
//! notices, kept compact in memory for the decision path.
//!
//! A busy gateway holds ten million open declarations (a million a day, kept
//! `storage.clearance_days`). The table keeps of each only what rules look at, in one entry
//! per waybill holding the declaration's facts and, in a side slab, its instruction; repeated
//! strings (enterprise codes, currencies, instruction reasons) are stored once, and so are
//! consumers, for as long as a held declaration names them ([`consumers`]); waybills and
//! instruction ids sit inline in their slots ([`Compact`](crate::rules::compact::Compact)). The full messages live in the journal.
//! About 138 bytes of heap per declaration with half of them instructed, the index and
//! the consumers' histories included (`bondline-lab bench table`: 132 MiB per million).
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
//! - locks nest only in one order: a waybill shard, then a consumer's shard. Interned
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
//!
//! # Layout
//!
//! The table's storage is [`shard`] (waybill entries and instruction slots) and
//! [`interner`] (strings stored once). What the platform says is applied in
//! [`declarations`], [`instructions`] and [`notices`] (ordered by [`stamp`]), one message or
//! a [`batch`]; [`lookup`] serves the decision path, [`consumers`] keeps the consumers of
//! the held declarations and counts their parcels, [`loading`] and [`purge`] are the
//! table's start and retention.

mod batch;
mod consumer_name;
mod consumers;
mod declarations;
mod instructions;
mod interner;
mod loading;
mod lookup;
mod notices;
mod purge;
mod shard;
mod stamp;

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::RwLock;

use bondline_devices::contract::Declaration;

use crate::rules::history::StoredHistory;
use crate::rules::orders::OrderTotals;
use crate::rules::sharded::{DigestSet, Locked, Picker, Place, SHARDS};
use consumers::Book;
use interner::Interner;
use notices::Notices;
use shard::{Entry, Shard};

pub use batch::Message;
pub use loading::Loading;
pub use lookup::{Found, FoundDeclaration, FoundInstruction, Known};
pub use purge::{RetentionFacts, Taken};
pub use stamp::Stamp;

/// What applying a platform message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The table changed.
    Changed,
    /// Same message seen before (redelivery), or older than what the table holds.
    Unchanged,
}

const NONE: u32 = u32::MAX;
/// Shards of the interned strings.
const NAME_SHARDS: usize = 256;

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
    /// The consumers of the held declarations, with their histories.
    consumers: Book,
    /// The day totals of forgotten declarations, read for a consumer's first held one.
    stored_history: arc_swap::ArcSwapOption<Box<dyn StoredHistory>>,
    declarations: AtomicUsize,
    instructions: AtomicUsize,
    loading: AtomicBool,
    load_done: AtomicU64,
    load_expected: AtomicU64,
    /// Per-order sums of declared values, for the per-transaction limit.
    orders: RwLock<OrderTotals>,
    /// Declared pieces of the waybills declared with more than one, by waybill digest (few).
    multi_piece: RwLock<std::collections::HashMap<u64, u16>>,
    /// The newest signature time of a platform message taken in (checked at arrival, or
    /// loaded from the tagged store), in ms; 0 with none. See [`ClearanceTable::counting_ms`].
    platform_clock: AtomicU64,
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
            consumers: Book::default(),
            stored_history: arc_swap::ArcSwapOption::empty(),
            declarations: AtomicUsize::new(0),
            instructions: AtomicUsize::new(0),
            loading: AtomicBool::new(false),
            load_done: AtomicU64::new(0),
            load_expected: AtomicU64::new(0),
            orders: RwLock::default(),
            multi_piece: RwLock::default(),
            platform_clock: AtomicU64::new(0),
        }
    }
}

impl ClearanceTable {
    /// Notes the signature time of a platform message the gateway believes (its signature
    /// checked at arrival, or stored under the integrity key): the platform's clock, as far
    /// as the gateway knows it, is at least there. Stand-ins made at a load are not noted.
    pub fn note_platform_time(&self, signed_at_ms: u64) {
        self.platform_clock
            .fetch_max(signed_at_ms, Ordering::Relaxed);
    }

    /// The newest signature time noted (`None` before any signed message).
    pub fn platform_clock_ms(&self) -> Option<u64> {
        Some(self.platform_clock.load(Ordering::Relaxed)).filter(|&t| t > 0)
    }

    /// The time a parcel scanned at `scanned_ms` (the local clock) counts at in its
    /// consumer's history and windows: its own, unless the local clock is behind the newest
    /// platform signature by more than [`crate::trust::CLOCK_SKEW`] (an RTC reset before the
    /// time source answered), when it is that signature's time. A clock set back by days
    /// would otherwise count the parcel on a day gone by, in windows that miss every parcel
    /// counted since (fail open for consumer limits).
    pub fn counting_ms(&self, scanned_ms: u64) -> u64 {
        counting_ms(scanned_ms, self.platform_clock_ms())
    }
    pub fn declarations(&self) -> usize {
        self.declarations.load(Ordering::Relaxed)
    }

    pub fn instructions(&self) -> usize {
        self.instructions.load(Ordering::Relaxed)
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
}

#[cfg(test)]
pub(crate) mod tests;

/// [`ClearanceTable::counting_ms`] as a pure function of the two clocks.
pub fn counting_ms(scanned_ms: u64, platform_clock_ms: Option<u64>) -> u64 {
    let skew = crate::trust::CLOCK_SKEW.as_millis() as u64;
    match platform_clock_ms {
        Some(platform) if platform > scanned_ms.saturating_add(skew) => platform,
        _ => scanned_ms,
    }
}
