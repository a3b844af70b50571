//! Strings stored once: enterprise codes, currencies and instruction reasons recur across
//! millions of declarations, so entries hold a `u32` id instead of the string. Sharded like
//! the waybills so that interning never contends with lookups of other names; never
//! forgotten.

use std::sync::Arc;

use super::{NAME_SHARDS, NONE};
use crate::rules::sharded::{grow, Index, Locked, Picker, Place};

/// One shard of the interned strings. An id is `position * NAME_SHARDS + shard`.
#[derive(Debug, Default)]
struct NameShard {
    index: Index,
    names: Vec<Arc<str>>,
}

/// Strings stored once, numbered; never forgotten (enterprises, currencies and reasons
/// recur; consumers, which mostly do not, are kept in [`super::consumers`]).
#[derive(Debug)]
pub(super) struct Interner {
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

    pub(super) fn intern(&self, s: &str) -> u32 {
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

    pub(super) fn get(&self, s: &str) -> Option<u32> {
        let place = self.picker.place(s, NAME_SHARDS);
        Self::find(&self.shards.read(place.shard), place, s).map(|pos| Self::id(place, pos))
    }

    pub(super) fn name(&self, id: u32) -> Option<Arc<str>> {
        if id == NONE {
            return None;
        }
        let shard = self.shards.read(id as usize % NAME_SHARDS);
        shard.names.get((id as usize) / NAME_SHARDS).cloned()
    }
}
