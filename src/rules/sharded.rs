//! Hash maps split into shards, so that no single insert rehashes the whole table.
//!
//! A `HashMap` doubles when it fills: at a million entries one insert moves every entry,
//! tens to hundreds of milliseconds under the clearance table's write lock, during which the
//! lines cannot decide. Split over [`SHARDS`] maps chosen by the key's hash, each growth
//! moves one shard: a 64th of the work, with the same memory. The shard is picked with the
//! map's own random hasher, so a platform cannot aim every waybill at one shard.

use std::borrow::Borrow;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};

/// Shards per map: growth steps stay below a few milliseconds up to tens of millions of
/// entries.
pub const SHARDS: usize = 64;

/// A `HashMap` over [`SHARDS`] shards.
#[derive(Debug, Clone)]
pub struct ShardedMap<K, V> {
    shards: Vec<HashMap<K, V>>,
    pick: RandomState,
    len: usize,
}

impl<K, V> Default for ShardedMap<K, V> {
    fn default() -> Self {
        ShardedMap {
            shards: (0..SHARDS).map(|_| HashMap::new()).collect(),
            pick: RandomState::new(),
            len: 0,
        }
    }
}

impl<K: Hash + Eq, V> ShardedMap<K, V> {
    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> usize {
        (self.pick.hash_one(key) as usize) % SHARDS
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shards[self.shard(key)].get(key)
    }

    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let i = self.shard(key);
        self.shards[i].get_mut(key)
    }

    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let i = self.shard(&key);
        let old = self.shards[i].insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let i = self.shard(key);
        let old = self.shards[i].remove(key);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.shards.iter().flat_map(|s| s.values())
    }
}

/// A `HashSet` over [`SHARDS`] shards.
#[derive(Debug, Clone, Default)]
pub struct ShardedSet<T> {
    map: ShardedMap<T, ()>,
}

impl<T: Hash + Eq> ShardedSet<T> {
    pub fn contains(&self, value: &T) -> bool {
        self.map.get(value).is_some()
    }

    /// Whether the value was new.
    pub fn insert(&mut self, value: T) -> bool {
        self.map.insert(value, ()).is_none()
    }

    /// Whether the value was there.
    pub fn remove(&mut self, value: &T) -> bool {
        self.map.remove(value).is_some()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// The sharded map behaves as one `HashMap` under any sequence of inserts and removes.
        #[test]
        fn behaves_as_one_map(ops in prop::collection::vec((any::<bool>(), 0u16..500, any::<u32>()), 0..2000)) {
            let mut sharded: ShardedMap<String, u32> = ShardedMap::default();
            let mut plain: HashMap<String, u32> = HashMap::new();
            for (insert, k, v) in ops {
                let key = format!("BL{k:06}");
                if insert {
                    prop_assert_eq!(sharded.insert(key.clone(), v), plain.insert(key, v));
                } else {
                    prop_assert_eq!(sharded.remove(key.as_str()), plain.remove(key.as_str()));
                }
                prop_assert_eq!(sharded.len(), plain.len());
            }
            for (k, v) in &plain {
                prop_assert_eq!(sharded.get(k.as_str()), Some(v));
            }
            prop_assert_eq!(sharded.values().count(), plain.len());
        }
    }

    #[test]
    fn a_set_counts_what_it_holds() {
        let mut s = ShardedSet::default();
        assert!(s.insert(7u128));
        assert!(!s.insert(7u128));
        assert!(s.contains(&7));
        assert_eq!(s.len(), 1);
        assert!(s.remove(&7));
        assert!(s.is_empty());
    }
}
