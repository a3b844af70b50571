//! The pieces the clearance table is built from: tables split into shards, each behind its
//! own lock, so that no lookup waits for more than one small write on one shard.
//!
//! A single `HashMap` doubles when it fills: at a million entries one insert moves every
//! entry, and under a lock the lines read through that stops every line (130 ms, then
//! seconds as the table grows). Here a key's hash picks one of [`SHARDS`] shards; a growth
//! moves one shard's slots, and the slots are `(position, hash)` pairs of 8 bytes, so growing
//! never rehashes a key or touches the entries themselves. At ten million entries a shard
//! holds about ten thousand: a growth copies some 100 KiB, a few tens of microseconds.
//!
//! The shard is picked with a random hasher, so a platform cannot aim every waybill at one
//! shard.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use hashbrown::HashTable;

/// Shards per table: ten million waybills make shards of about ten thousand.
pub const SHARDS: usize = 1024;

/// Where a key lives: its shard and the 32 bits of its hash the shard's index keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    pub shard: usize,
    pub hash: u32,
}

/// Picks places for keys; one random key per table.
#[derive(Debug, Clone, Default)]
pub struct Picker {
    state: RandomState,
}

impl Picker {
    pub fn place<Q: Hash + ?Sized>(&self, key: &Q, shards: usize) -> Place {
        let h = self.state.hash_one(key);
        Place {
            shard: ((h >> 32) as usize) % shards,
            hash: h as u32,
        }
    }
}

/// The hash the index's table is arranged by, rebuilt from the 32 bits kept: the high bits
/// (hashbrown's tag) and the low bits (its bucket) both come from them.
fn spread(hash: u32) -> u64 {
    (u64::from(hash) << 32) | u64::from(hash)
}

/// One shard's index from key to position in the shard's entries.
#[derive(Debug, Default, Clone)]
pub struct Index {
    slots: HashTable<(u32, u32)>,
}

impl Index {
    /// The position of the entry whose key `is` accepts.
    pub fn find(&self, hash: u32, mut is: impl FnMut(u32) -> bool) -> Option<u32> {
        self.slots
            .find(spread(hash), |&(pos, h)| h == hash && is(pos))
            .map(|&(pos, _)| pos)
    }

    pub fn insert(&mut self, hash: u32, pos: u32) {
        self.slots
            .insert_unique(spread(hash), (pos, hash), |&(_, h)| spread(h));
    }

    /// Forgets `pos`.
    pub fn remove(&mut self, hash: u32, pos: u32) {
        if let Ok(e) = self.slots.find_entry(spread(hash), |&(p, _)| p == pos) {
            e.remove();
        }
    }

    /// Notes that the entry at `from` moved to `to`.
    pub fn moved(&mut self, hash: u32, from: u32, to: u32) {
        if let Some(slot) = self.slots.find_mut(spread(hash), |&(p, _)| p == from) {
            slot.0 = to;
        }
    }

    /// Makes room for `n` entries at once (loading a stored table of known size).
    pub fn reserve(&mut self, n: usize) {
        self.slots.reserve(n, |&(_, h)| spread(h));
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// Grows `v` by an eighth rather than doubling, so a shard's entries waste at most an
/// eighth of their room; each step copies one shard's entries, a bounded amount.
pub fn grow<T>(v: &mut Vec<T>) {
    if v.len() == v.capacity() {
        v.reserve_exact((v.len() / 8).max(16));
    }
}

/// Sharded locks over `T`.
#[derive(Debug)]
pub struct Locked<T> {
    shards: Box<[RwLock<T>]>,
}

impl<T: Default> Locked<T> {
    pub fn new(n: usize) -> Locked<T> {
        Locked {
            shards: (0..n).map(|_| RwLock::new(T::default())).collect(),
        }
    }
}

impl<T> Locked<T> {
    pub fn count(&self) -> usize {
        self.shards.len()
    }

    /// A poisoned shard is used as it is: every write to a shard leaves it consistent
    /// before anything that could panic.
    pub fn read(&self, i: usize) -> RwLockReadGuard<'_, T> {
        self.shards[i].read().unwrap_or_else(|e| e.into_inner())
    }

    pub fn write(&self, i: usize) -> RwLockWriteGuard<'_, T> {
        self.shards[i].write().unwrap_or_else(|e| e.into_inner())
    }
}

/// 64-bit digests seen, sharded by the digest itself (they are already uniform).
#[derive(Debug)]
pub struct DigestSet {
    shards: Locked<HashTable<u64>>,
    len: AtomicUsize,
}

impl Default for DigestSet {
    fn default() -> Self {
        DigestSet {
            shards: Locked::new(SHARDS),
            len: AtomicUsize::new(0),
        }
    }
}

impl DigestSet {
    fn shard(d: u64) -> usize {
        (d as usize) % SHARDS
    }

    pub fn contains(&self, d: u64) -> bool {
        self.shards
            .read(Self::shard(d))
            .find(d, |&x| x == d)
            .is_some()
    }

    /// Whether the digest was new.
    pub fn insert(&self, d: u64) -> bool {
        let mut s = self.shards.write(Self::shard(d));
        if s.find(d, |&x| x == d).is_some() {
            return false;
        }
        s.insert_unique(d, d, |&x| x);
        self.len.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Whether the digest was there.
    pub fn remove(&self, d: u64) -> bool {
        let mut s = self.shards.write(Self::shard(d));
        match s.find_entry(d, |&x| x == d) {
            Ok(e) => {
                e.remove();
                self.len.fetch_sub(1, Ordering::Relaxed);
                true
            }
            Err(_) => false,
        }
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// An index over a vector of keys, with removals by swapping the last entry in,
        /// finds every key a plain `HashMap` holds, whatever the sequence.
        #[test]
        fn index_behaves_as_one_map(ops in prop::collection::vec((any::<bool>(), 0u16..300), 0..1500)) {
            let picker = Picker::default();
            let mut index = Index::default();
            let mut keys: Vec<String> = Vec::new();
            let mut plain: HashMap<String, ()> = HashMap::new();
            for (insert, k) in ops {
                let key = format!("BL{k:06}");
                let h = picker.place(key.as_str(), 1).hash;
                let found = index.find(h, |p| keys[p as usize] == key);
                if insert {
                    if found.is_none() {
                        index.insert(h, keys.len() as u32);
                        keys.push(key.clone());
                    }
                    plain.insert(key, ());
                } else if let Some(pos) = found {
                    index.remove(h, pos);
                    let last = keys.len() as u32 - 1;
                    keys.swap_remove(pos as usize);
                    if pos != last {
                        let moved = picker.place(keys[pos as usize].as_str(), 1).hash;
                        index.moved(moved, last, pos);
                    }
                    plain.remove(&key);
                }
                prop_assert_eq!(index.len(), plain.len());
            }
            for k in plain.keys() {
                let h = picker.place(k.as_str(), 1).hash;
                let pos = index.find(h, |p| &keys[p as usize] == k);
                prop_assert!(pos.is_some());
            }
        }
    }

    #[test]
    fn a_digest_set_counts_what_it_holds() {
        let s = DigestSet::default();
        assert!(s.insert(7));
        assert!(!s.insert(7));
        assert!(s.contains(7));
        assert_eq!(s.len(), 1);
        assert!(s.remove(7));
        assert!(s.is_empty());
    }
}
