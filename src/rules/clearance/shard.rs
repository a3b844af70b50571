//! The table's storage: one shard of waybills, each an [`Entry`] holding the compact facts of
//! its declaration and, in a side slab, the slot of its instruction ([`Held`]). Flags stand
//! for optional numbers so that no value is taken as a sentinel. Only this shard's lock
//! guards it; the table ([`super::ClearanceTable`]) picks the shard.

use super::stamp::Stamp;
use super::NONE;
use crate::rules::compact::Compact;
use crate::rules::sharded::{grow, Index, Picker, Place, SHARDS};
use bondline_devices::contract::Action;

/// `counted_day` of a parcel not counted.
pub(super) const NOT_COUNTED: u16 = u16::MAX;
/// The last `counted_day` kept as it is.
pub(super) const LAST_DAY: u16 = u16::MAX - 1;

/// A counted day as the entry keeps it.
pub(super) fn counted_day(day: u32) -> u16 {
    u16::try_from(day).map_or(LAST_DAY, |d| d.min(LAST_DAY))
}

/// The bits of `Entry::signed_touched` that hold the signing time.
const MS_BITS: u64 = (1 << 48) - 1;

// Entry flags.
pub(super) const DECLARED: u8 = 1;
pub(super) const IDENTITY_VERIFIED: u8 = 2;
pub(super) const HAS_VALUE: u8 = 4;
pub(super) const HAS_WEIGHT: u8 = 8;
pub(super) const HAS_SIGNED: u8 = 16;
/// The waybill's newest declaration failed its integrity check at a load: the one held is
/// stale, and lookups see none until a newer one replaces it (which clears the flag).
pub(super) const REFUSED: u8 = 32;

/// Everything held for one waybill: its declaration's facts (when `DECLARED`) and the slot of
/// its instruction. Optional numbers are flagged, not sentinels: a declared value of
/// `u64::MAX` must stay a value, not become "none" (which a value limit would let through).
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) waybill: Compact,
    /// Digest of the whole declaration, to recognise a redelivery.
    pub(super) digest: u64,
    /// When the platform signed the declaration (`HAS_SIGNED`), in the low 48 bits (Unix
    /// milliseconds run to the year 10889 in them), and in the high 16 the UTC day the
    /// waybill's declaration or instruction was last stored (0: not known), which retention
    /// asks for (`ClearanceTable::retention_facts`). Packed so the entry stays at 72 bytes.
    signed_touched: u64,
    pub(super) value_minor: u64,
    pub(super) enterprise: u32,
    pub(super) consumer: u32,
    pub(super) currency: u32,
    pub(super) gross_weight_g: u32,
    /// The UTC day (since 1970) the parcel was added to its consumer's history, or
    /// [`NOT_COUNTED`]. Two bytes, not four: they keep the entry at 72 bytes, not 80 (7.6 MiB
    /// per million held). Days run to 2149; a later one is kept as [`LAST_DAY`].
    pub(super) counted_day: u16,
    /// The instruction's slot, or `NONE`.
    pub(super) instruction: u32,
    pub(super) flags: u8,
}

const _: () = assert!(std::mem::size_of::<Entry>() == 72);

impl Entry {
    fn empty(waybill: &str) -> Entry {
        Entry {
            waybill: Compact::new(waybill),
            digest: 0,
            signed_touched: 0,
            value_minor: 0,
            enterprise: NONE,
            consumer: NONE,
            currency: NONE,
            gross_weight_g: 0,
            counted_day: NOT_COUNTED,
            instruction: NONE,
            flags: 0,
        }
    }

    pub(super) fn declared(&self) -> bool {
        self.flags & DECLARED != 0
    }

    pub(super) fn value(&self) -> Option<u64> {
        (self.flags & HAS_VALUE != 0).then_some(self.value_minor)
    }

    pub(super) fn signed_at(&self) -> Option<u64> {
        (self.declared() && self.flags & HAS_SIGNED != 0).then_some(self.signed_touched & MS_BITS)
    }

    /// Sets the signing time (its low 48 bits; a later one is kept as the last).
    pub(super) fn set_signed_at(&mut self, ms: u64) {
        self.signed_touched = (self.signed_touched & !MS_BITS) | ms.min(MS_BITS);
    }

    /// The UTC day the waybill was last stored, if known.
    pub(super) fn touched(&self) -> Option<u32> {
        let d = (self.signed_touched >> 48) as u32;
        (d != 0).then_some(d)
    }

    /// Notes that the waybill was stored on `day`, unless a later day is noted.
    pub(super) fn touch(&mut self, day: u32) {
        let day = u64::from(day.min(u32::from(u16::MAX)));
        if day > self.signed_touched >> 48 {
            self.signed_touched = (self.signed_touched & MS_BITS) | (day << 48);
        }
    }

    pub(super) fn counted(&self) -> Option<u32> {
        (self.counted_day != NOT_COUNTED).then_some(u32::from(self.counted_day))
    }
}

/// An instruction held for a waybill.
#[derive(Debug, Clone)]
pub(super) struct Held {
    pub(super) id: Compact,
    pub(super) signed_at_ms: u64,
    pub(super) issued_at_ms: u64,
    pub(super) reason: u32,
    pub(super) action: Action,
    /// Bit 0: signed; bit 1: issued time present.
    pub(super) stamp: u8,
}

impl Held {
    pub(super) fn made(&self) -> Stamp {
        Stamp {
            signed_at_ms: (self.stamp & 1 != 0).then_some(self.signed_at_ms),
            issued_at_ms: (self.stamp & 2 != 0).then_some(self.issued_at_ms),
        }
    }
}

/// One shard of waybills.
#[derive(Debug, Default)]
pub(super) struct Shard {
    pub(super) index: Index,
    pub(super) entries: Vec<Entry>,
    pub(super) held: Vec<Held>,
    /// Free slots of `held`.
    pub(super) free: Vec<u32>,
}

impl Shard {
    pub(super) fn find(&self, place: Place, waybill: &str) -> Option<usize> {
        self.index
            .find(place.hash, |p| {
                self.entries[p as usize].waybill.as_str() == waybill
            })
            .map(|p| p as usize)
    }

    pub(super) fn held(&self, e: &Entry) -> Option<&Held> {
        (e.instruction != NONE).then(|| &self.held[e.instruction as usize])
    }

    /// The entry of `waybill`, made empty if there is none.
    pub(super) fn entry(&mut self, place: Place, waybill: &str) -> (usize, bool) {
        if let Some(i) = self.find(place, waybill) {
            return (i, false);
        }
        let i = self.entries.len();
        grow(&mut self.entries);
        self.entries.push(Entry::empty(waybill));
        self.index.insert(place.hash, i as u32);
        (i, true)
    }

    pub(super) fn set_held(&mut self, i: usize, h: Held) -> bool {
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
    pub(super) fn remove(&mut self, i: usize, place: Place, picker: &Picker) -> Entry {
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
