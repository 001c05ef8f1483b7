//! Containers for the state that grows to millions of entries (dedupe ids, streaks), made to grow without
//! long stops. A hash table or a Vec grows by moving every entry into one twice as big, all at once: on a
//! million entries that stops the batch in hand for 20-160 ms (copying, rehashing, the kernel zeroing the
//! new pages), which shows up directly in the worker's p99 latency.
//! - `ShardedMap`: a hash map split into 64 shards by key hash; each growth moves about 1/64 of the entries, at
//!   different times (the total work is the same).
//! - `ChunkedVec`: a list kept in fixed-size chunks; it never moves what it holds.

use hashbrown::hash_table::{Entry, HashTable};
use std::hash::{BuildHasher, Hash};

const SHARD_BITS: u32 = 6;
const SHARDS: usize = 1 << SHARD_BITS;

/// Each key is hashed once. The shard is picked by the top bits of the hash times an odd constant, which
/// depend on all of its bits: foldhash's middle bits alone vary too little over close keys (consecutive
/// numeric ids) for about 1 seed in 100. The shard's table uses the same hash: its bucket index comes from the
/// low bits and its tag from the top 7, and both stay evenly spread within a shard (the multiply is a bijection).
///
/// The shards get unequal shares of the keys, from 1 to 2 in geometric steps: shards of equal size would
/// all reach their growth point together, in the same batch, and stop it as long as one big table would.
pub struct ShardedMap<K, V> {
    shards: Vec<HashTable<(K, V)>>,
    hasher: foldhash::fast::RandomState, // seeded per map and per process: ids come from clients
    pick: Box<[u8; PICK_SLOTS]>,         // top PICK_BITS bits of the mixed hash -> shard
}

const PICK_BITS: u32 = 12;
const PICK_SLOTS: usize = 1 << PICK_BITS;
const SHARD_MIX: u64 = 0x9e37_79b9_7f4a_7c15; // 2^64 / the golden ratio, odd
/// insert_all's order cuts each shard's table into at most 2^MAX_ORDER_BITS runs of neighbouring buckets.
const MAX_ORDER_BITS: u32 = 10;

/// Slot -> shard, shard i holding a number of slots proportional to 2^(i/SHARDS).
fn pick_table() -> Box<[u8; PICK_SLOTS]> {
    let weights: Vec<f64> = (0..SHARDS).map(|i| (i as f64 / SHARDS as f64).exp2()).collect();
    let total: f64 = weights.iter().sum();
    let mut table = Box::new([0u8; PICK_SLOTS]);
    let (mut acc, mut slot) = (0.0, 0);
    for (i, w) in weights.iter().enumerate() {
        acc += w;
        let end = if i == SHARDS - 1 { PICK_SLOTS } else { (acc / total * PICK_SLOTS as f64).round() as usize };
        while slot < end {
            table[slot] = i as u8;
            slot += 1;
        }
    }
    table
}

impl<K, V> Default for ShardedMap<K, V> {
    fn default() -> Self {
        ShardedMap { shards: (0..SHARDS).map(|_| HashTable::new()).collect(), hasher: Default::default(),
                     pick: pick_table() }
    }
}

impl<K, V> ShardedMap<K, V> {
    fn shard_of(&self, hash: u64) -> usize {
        self.pick[(hash.wrapping_mul(SHARD_MIX) >> (64 - PICK_BITS)) as usize] as usize
    }
}

impl<K: Hash + Eq, V> ShardedMap<K, V> {
    /// The key's hash, for the `_hashed` calls: a caller that looks a key up and then changes the map hashes it
    /// once.
    pub fn hash(&self, key: &K) -> u64 {
        self.hasher.hash_one(key)
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.get_hashed(self.hash(key), key)
    }

    pub fn get_hashed(&self, h: u64, key: &K) -> Option<&V> {
        self.shards[self.shard_of(h)].find(h, |(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.get_mut_hashed(self.hash(key), key)
    }

    pub fn get_mut_hashed(&mut self, h: u64, key: &K) -> Option<&mut V> {
        let i = self.shard_of(h);
        self.shards[i].find_mut(h, |(k, _)| k == key).map(|(_, v)| v)
    }

    /// Insert a key the caller knows is absent (no comparison with the keys already there).
    pub fn insert_absent_hashed(&mut self, h: u64, key: K, value: V) {
        debug_assert!(self.get_hashed(h, &key).is_none(), "insert_absent_hashed of a present key");
        let i = self.shard_of(h);
        let hasher = &self.hasher;
        self.shards[i].insert_unique(h, (key, value), |(k, _)| hasher.hash_one(k));
    }

    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let h = self.hasher.hash_one(&key);
        self.insert_hashed(h, key, value)
    }

    fn insert_hashed(&mut self, h: u64, key: K, value: V) -> Option<V> {
        let i = self.shard_of(h);
        let hasher = &self.hasher;
        match self.shards[i].entry(h, |(k, _)| *k == key, |(k, _)| hasher.hash_one(k)) {
            Entry::Occupied(mut e) => Some(std::mem::replace(&mut e.get_mut().1, value)),
            Entry::Vacant(e) => {
                e.insert((key, value));
                None
            }
        }
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        self.remove_hashed(self.hash(key), key)
    }

    pub fn remove_hashed(&mut self, h: u64, key: &K) -> Option<V> {
        let i = self.shard_of(h);
        self.shards[i].find_entry(h, |(k, _)| k == key).ok().map(|e| e.remove().0 .1)
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(HashTable::len).sum()
    }

    /// Many entries at once, a later entry of a key replacing an earlier one (as `insert` one at a time would).
    /// They go in sorted by where each lands in its shard's table, so each table is written nearly front to
    /// back: a restore's million keys inserted in their own order would each land at a random place in a table
    /// far larger than the cache, and each insert would wait for memory.
    pub fn insert_all(&mut self, entries: Vec<(K, V)>) {
        let mut per_shard = [0usize; SHARDS];
        let hashes: Vec<u64> = entries.iter().map(|(k, _)| {
            let h = self.hasher.hash_one(k);
            per_shard[self.shard_of(h)] += 1;
            h
        }).collect();
        let hasher = &self.hasher;
        for (shard, n) in self.shards.iter_mut().zip(per_shard) {
            shard.reserve(n, |(k, _)| hasher.hash_one(k));
        }
        // A table's first probe for a hash is bucket `hash & (buckets - 1)` (hashbrown's h1). The entries (which
        // are large) stay where they are: their indices are counted into groups of neighbouring first buckets
        // (a shard's table cut into runs holding a few entries each), in index order within a group, so a
        // key's later entry still comes later.
        let masks: Vec<u64> = self.shards.iter()
            .map(|s| ((s.capacity() / 7 * 8).next_power_of_two() - 1) as u64).collect();
        let order_bits = (hashes.len() / SHARDS / 4).max(1).ilog2().min(MAX_ORDER_BITS);
        let shifts: Vec<u32> = masks.iter().map(|m| m.count_ones().saturating_sub(order_bits)).collect();
        let group_of = |h: u64| {
            let shard = self.shard_of(h);
            (shard << order_bits) | ((h & masks[shard]) >> shifts[shard]) as usize
        };
        let mut next = vec![0usize; SHARDS << order_bits];
        for &h in &hashes {
            next[group_of(h)] += 1;
        }
        let mut at = 0;
        for slot in next.iter_mut() {
            (*slot, at) = (at, at + *slot);
        }
        let mut order = vec![0usize; hashes.len()];
        for (i, &h) in hashes.iter().enumerate() {
            let slot = &mut next[group_of(h)];
            order[*slot] = i;
            *slot += 1;
        }
        let mut entries: Vec<Option<(K, V)>> = entries.into_iter().map(Some).collect();
        for i in order {
            let (key, value) = entries[i].take().expect("each index once");
            self.insert_hashed(hashes[i], key, value);
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.shards.iter().flat_map(|s| s.iter().map(|(k, v)| (k, v)))
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.shards.iter().flat_map(|s| s.iter().map(|(_, v)| v))
    }
}

impl<K: Hash + Eq> ShardedMap<K, ()> {
    /// As a set: true when the key was not there yet.
    pub fn insert_new(&mut self, key: K) -> bool {
        self.insert(key, ()).is_none()
    }
}

/// Entries per chunk of a ChunkedVec (16-byte ids: 1 MiB chunks).
const CHUNK: usize = 1 << 16;

/// A list that grows a chunk at a time, never moving its entries.
pub struct ChunkedVec<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for ChunkedVec<T> {
    fn default() -> Self {
        ChunkedVec { chunks: Vec::new(), len: 0 }
    }
}

impl<T> ChunkedVec<T> {
    pub fn push(&mut self, value: T) {
        match self.chunks.last_mut() {
            Some(last) if last.len() < CHUNK => last.push(value),
            _ => {
                let mut chunk = Vec::with_capacity(if self.chunks.is_empty() { 16 } else { CHUNK });
                chunk.push(value);
                self.chunks.push(chunk);
            }
        }
        self.len += 1;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// The entries from index `start` on, in order (every chunk but the last is full: no scan to start).
    pub fn iter_from(&self, start: usize) -> impl Iterator<Item = &T> {
        let (first, offset) = (start / CHUNK, start % CHUNK);
        self.chunks.iter().skip(first).enumerate()
            .flat_map(move |(i, chunk)| chunk[if i == 0 { offset.min(chunk.len()) } else { 0 }..].iter())
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.iter_from(0)
    }
}

impl<T> IntoIterator for ChunkedVec<T> {
    type Item = T;
    type IntoIter = std::iter::Flatten<std::vec::IntoIter<Vec<T>>>;

    fn into_iter(self) -> Self::IntoIter {
        self.chunks.into_iter().flatten()
    }
}

impl<T> FromIterator<T> for ChunkedVec<T> {
    fn from_iter<I: IntoIterator<Item = T>>(items: I) -> Self {
        let mut v = ChunkedVec::default();
        for item in items {
            v.push(item);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Id;

    #[test]
    fn chunked_vec_keeps_order_across_chunks() {
        let n = CHUNK * 2 + 5;
        let v: ChunkedVec<usize> = (0..n).collect();
        assert_eq!(v.len(), n);
        assert!(v.iter().copied().eq(0..n));
        assert!(v.iter_from(CHUNK - 1).copied().eq(CHUNK - 1..n));
        for start in [CHUNK, CHUNK + 1, 2 * CHUNK, 2 * CHUNK + 4] {
            assert!(v.iter_from(start).copied().eq(start..n));
        }
        assert_eq!(v.iter_from(n).count(), 0);
        assert_eq!(v.iter_from(n + CHUNK * 3).count(), 0);
        assert!(v.into_iter().eq(0..n));
    }

    #[test]
    fn behaves_like_one_map() {
        let mut m: ShardedMap<u64, u64> = ShardedMap::default();
        let mut reference = std::collections::HashMap::new();
        for i in 0..10_000u64 {
            let k = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) % 3_000;
            assert_eq!(m.insert(k, i), reference.insert(k, i));
            if i % 7 == 0 {
                assert_eq!(m.remove(&(k / 2)), reference.remove(&(k / 2)));
            }
        }
        assert_eq!(m.len(), reference.len());
        for (k, v) in &reference {
            assert_eq!(m.get(k), Some(v));
        }
        let mut all: Vec<_> = m.iter().map(|(k, v)| (*k, *v)).collect();
        all.sort_unstable();
        let mut expected: Vec<_> = reference.into_iter().collect();
        expected.sort_unstable();
        assert_eq!(all, expected);
        let used = m.shards.iter().filter(|s| !s.is_empty()).count();
        assert!(used > SHARDS / 2, "keys spread over the shards ({used} used)");
    }

    #[test]
    fn close_ids_spread_over_the_shards_whatever_the_maps_seed() {
        // Consecutive numeric ids (one client's counter): each map has its own hash seed, and the shards must
        // be spread for every seed, not just most.
        for _ in 0..1000 {
            let mut m: ShardedMap<Id, ()> = ShardedMap::default();
            for i in 0..3000u64 {
                m.insert(Id::Num(7_000_000_000_000_000_000 + i), ());
            }
            let used = m.shards.iter().filter(|s| !s.is_empty()).count();
            assert_eq!(used, SHARDS, "3000 ids in {used} of {SHARDS} shards");
        }
    }

    #[test]
    fn insert_all_is_inserting_one_at_a_time() {
        let entries: Vec<(u64, u64)> =
            (0..50_000u64).map(|i| (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) % 20_000, i)).collect();
        let mut one_by_one: ShardedMap<u64, u64> = ShardedMap::default();
        let mut at_once: ShardedMap<u64, u64> = ShardedMap::default();
        for (k, v) in [(7, 1), (123_456, 2)] {
            one_by_one.insert(k, v);
            at_once.insert(k, v);
        }
        for (k, v) in &entries {
            one_by_one.insert(*k, *v);
        }
        at_once.insert_all(entries);
        let sorted = |m: &ShardedMap<u64, u64>| {
            let mut all: Vec<_> = m.iter().map(|(k, v)| (*k, *v)).collect();
            all.sort_unstable();
            all
        };
        assert_eq!(sorted(&at_once), sorted(&one_by_one), "the same keys, each with its last value");
        assert_eq!(at_once.get(&123_456), Some(&2));
    }

    #[test]
    fn shard_shares_grow_from_1_to_2() {
        let table = pick_table();
        let mut counts = [0usize; SHARDS];
        for &s in table.iter() {
            counts[s as usize] += 1;
        }
        assert!(counts.windows(2).all(|w| w[0] <= w[1] + 1), "non-decreasing shares: {counts:?}");
        let ratio = counts[SHARDS - 1] as f64 / counts[0] as f64;
        assert!((1.8..=2.2).contains(&ratio), "largest / smallest share {ratio}");
    }
}
