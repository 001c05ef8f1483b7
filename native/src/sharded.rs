//! Containers for the state that grows to millions of entries (dedupe ids, streaks), made to grow without
//! long stops. A hash table or a Vec grows by moving every entry into one twice as big, all at once: on a
//! million entries that stops the batch in hand for 20-160 ms (copying, rehashing, the kernel zeroing the
//! new pages), which shows up directly in the worker's p99 latency.
//! - `ShardedMap`: a hash map split into 64 shards by key hash; each growth moves about 1/64 of the entries, at
//!   different times (the total work is the same).
//! - `ShardedSet`: the same sharding over a set of small keys held in open addressing, where the probe for a
//!   key starts at a place the caller can compute in advance: `prefetch` asks for that cache line some events
//!   before the key is inserted, so the insert does not wait for memory (hashbrown's table does not say where
//!   a key would go).
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
    pick: ShardPick,
}

/// A sharded container's hasher and its hash -> shard table.
struct ShardPick {
    hasher: foldhash::fast::RandomState, // seeded per container and per process: ids come from clients
    table: Box<[u8; PICK_SLOTS]>,        // top PICK_BITS bits of the mixed hash -> shard
}

impl Default for ShardPick {
    fn default() -> Self {
        ShardPick { hasher: Default::default(), table: pick_table() }
    }
}

impl ShardPick {
    fn shard_of(&self, hash: u64) -> usize {
        self.table[(hash.wrapping_mul(SHARD_MIX) >> (64 - PICK_BITS)) as usize] as usize
    }

    fn hash<K: Hash>(&self, key: &K) -> u64 {
        self.hasher.hash_one(key)
    }
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
        ShardedMap { shards: (0..SHARDS).map(|_| HashTable::new()).collect(), pick: ShardPick::default() }
    }
}

impl<K, V> ShardedMap<K, V> {
    fn shard_of(&self, hash: u64) -> usize {
        self.pick.shard_of(hash)
    }
}

impl<K: Hash + Eq, V> ShardedMap<K, V> {
    /// The key's hash, for the `_hashed` calls: a caller that looks a key up and then changes the map hashes it
    /// once.
    pub fn hash(&self, key: &K) -> u64 {
        self.pick.hash(key)
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
        let hasher = &self.pick.hasher;
        self.shards[i].insert_unique(h, (key, value), |(k, _)| hasher.hash_one(k));
    }

    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let h = self.pick.hash(&key);
        self.insert_hashed(h, key, value)
    }

    fn insert_hashed(&mut self, h: u64, key: K, value: V) -> Option<V> {
        let i = self.shard_of(h);
        let hasher = &self.pick.hasher;
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
            let h = self.pick.hash(k);
            per_shard[self.shard_of(h)] += 1;
            h
        }).collect();
        let hasher = &self.pick.hasher;
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

/// A set split into shards like `ShardedMap`, each shard an open-addressing table (`ProbeSet`). The engine's
/// dedupe ids: a million of them are far larger than the cache, so each new id's insert would wait for memory;
/// `prefetch` lets the caller ask for that memory while it works on the events before.
pub struct ShardedSet<K> {
    shards: Vec<ProbeSet<K>>,
    pick: ShardPick,
}

impl<K> Default for ShardedSet<K> {
    fn default() -> Self {
        ShardedSet { shards: (0..SHARDS).map(|_| ProbeSet::default()).collect(), pick: ShardPick::default() }
    }
}

impl<K: Hash + Eq> ShardedSet<K> {
    /// The key's hash, for `prefetch` and `insert_new_hashed`.
    pub fn hash(&self, key: &K) -> u64 {
        self.pick.hash(key)
    }

    /// Start loading the cache line where the probe for a key of hash `h` begins (a hint: nothing changes).
    pub fn prefetch(&self, h: u64) {
        self.shards[self.pick.shard_of(h)].prefetch(h);
    }

    /// True when the key was not there yet.
    pub fn insert_new(&mut self, key: K) -> bool {
        self.insert_new_hashed(self.hash(&key), key)
    }

    /// `insert_new` of a key whose hash (`hash`) the caller has.
    pub fn insert_new_hashed(&mut self, h: u64, key: K) -> bool {
        let pick = &self.pick;
        self.shards[pick.shard_of(h)].insert_new(h, key, |k| pick.hash(k))
    }

    #[cfg(test)]
    pub fn contains(&self, key: &K) -> bool {
        let h = self.hash(key);
        self.shards[self.pick.shard_of(h)].find(h, key).is_some()
    }

    /// True when the key was there.
    pub fn remove(&mut self, key: &K) -> bool {
        let h = self.hash(key);
        let pick = &self.pick;
        self.shards[pick.shard_of(h)].remove(h, key, |k| pick.hash(k))
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.len).sum()
    }

    /// Many keys at once (a restore's): each shard is sized once, and each key's line is prefetched a few keys
    /// ahead of its insert.
    pub fn insert_all(&mut self, keys: Vec<K>) {
        const AHEAD: usize = 16;
        let hashes: Vec<u64> = keys.iter().map(|k| self.hash(k)).collect();
        let mut per_shard = [0usize; SHARDS];
        for &h in &hashes {
            per_shard[self.pick.shard_of(h)] += 1;
        }
        let pick = &self.pick;
        for (shard, n) in self.shards.iter_mut().zip(per_shard) {
            shard.reserve(n, |k| pick.hash(k));
        }
        for (i, key) in keys.into_iter().enumerate() {
            if let Some(&ahead) = hashes.get(i + AHEAD) {
                self.shards[pick.shard_of(ahead)].prefetch(ahead);
            }
            let h = hashes[i];
            self.shards[pick.shard_of(h)].insert_new(h, key, |k| pick.hash(k));
        }
    }

    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = &K> {
        self.shards.iter().flat_map(|s| s.slots.iter().flatten())
    }
}

/// An open-addressing set with linear probing: a key of hash `h` is at slot `h & mask` or in the run of full
/// slots after it (wrapping around). A slot holds the key itself (16 bytes for an `Id`, four to a cache line),
/// so a lookup usually reads one line. At most 5/8 of the slots are full; a removal shifts the run after it
/// back (no tombstones, so lookups never slow down with churn).
struct ProbeSet<K> {
    slots: Vec<Option<K>>, // empty, or a power of two long
    len: usize,
}

impl<K> Default for ProbeSet<K> {
    fn default() -> Self {
        ProbeSet { slots: Vec::new(), len: 0 }
    }
}

const MIN_SLOTS: usize = 16;

impl<K: Eq> ProbeSet<K> {
    fn mask(&self) -> usize {
        self.slots.len().wrapping_sub(1)
    }

    fn prefetch(&self, h: u64) {
        if let Some(slot) = self.slots.get(h as usize & self.mask()) {
            prefetch_line(slot);
        }
    }

    fn find(&self, h: u64, key: &K) -> Option<usize> {
        let mask = self.mask();
        let mut i = h as usize & mask;
        loop {
            match self.slots.get(i)? {
                None => return None,
                Some(k) if k == key => return Some(i),
                Some(_) => i = (i + 1) & mask,
            }
        }
    }

    fn insert_new(&mut self, h: u64, key: K, hash: impl Fn(&K) -> u64) -> bool {
        if (self.len + 1) * 8 > self.slots.len() * 5 {
            self.reserve(1, &hash);
        }
        let mask = self.mask();
        let mut i = h as usize & mask;
        loop {
            match &self.slots[i] {
                None => {
                    self.slots[i] = Some(key);
                    self.len += 1;
                    return true;
                }
                Some(k) if *k == key => return false,
                Some(_) => i = (i + 1) & mask,
            }
        }
    }

    fn remove(&mut self, h: u64, key: &K, hash: impl Fn(&K) -> u64) -> bool {
        let Some(mut hole) = self.find(h, key) else { return false };
        self.slots[hole] = None;
        self.len -= 1;
        let mask = self.mask();
        let mut j = hole;
        loop {
            j = (j + 1) & mask;
            let Some(k) = &self.slots[j] else { return true };
            // k moves into the hole unless its home slot lies after the hole (then the hole is not on its path)
            let home = hash(k) as usize & mask;
            if j.wrapping_sub(home) & mask >= j.wrapping_sub(hole) & mask {
                self.slots[hole] = self.slots[j].take();
                hole = j;
            }
        }
    }

    /// Room for `additional` more keys within the load limit: grows to the next power of two that has it.
    fn reserve(&mut self, additional: usize, hash: impl Fn(&K) -> u64) {
        let need = self.len + additional;
        if need * 8 <= self.slots.len() * 5 {
            return;
        }
        let size = (need * 8).div_ceil(5).next_power_of_two().max(MIN_SLOTS);
        let old = std::mem::replace(&mut self.slots, std::iter::repeat_with(|| None).take(size).collect());
        let mask = size - 1;
        for key in old.into_iter().flatten() {
            let mut i = hash(&key) as usize & mask;
            while self.slots[i].is_some() {
                i = (i + 1) & mask;
            }
            self.slots[i] = Some(key);
        }
    }
}

/// Ask the CPU to bring the cache line holding `value` into its caches (a no-op where there is no such hint).
#[inline(always)]
fn prefetch_line<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch only hints; it reads nothing the program sees and cannot fault.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>((value as *const T).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
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
    fn an_id_slot_is_16_bytes() {
        assert_eq!(std::mem::size_of::<Option<Id>>(), 16, "four slots to a cache line");
    }

    /// Random inserts and removes against std's HashSet, under a hash that puts many keys on few home slots and
    /// some on the last slot, so runs wrap around the end and removals shift runs back across it.
    fn probe_set_follows_hash_set(hash: fn(&u64) -> u64) {
        let mut set: ProbeSet<u64> = ProbeSet::default();
        let mut reference = std::collections::HashSet::new();
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..40_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let key = x % 700;
            if x.is_multiple_of(3) {
                assert_eq!(set.remove(hash(&key), &key, hash), reference.remove(&key), "remove {key}");
            } else {
                assert_eq!(set.insert_new(hash(&key), key, hash), reference.insert(key), "insert {key}");
            }
            assert_eq!(set.len, reference.len());
        }
        for key in 0..700u64 {
            assert_eq!(set.find(hash(&key), &key).is_some(), reference.contains(&key), "find {key}");
        }
        assert!(set.len * 8 <= set.slots.len() * 5, "load within 5/8");
    }

    #[test]
    fn probe_set_is_a_set_under_colliding_hashes() {
        probe_set_follows_hash_set(|k| k % 5 * 0x1_0000_0001 + u64::MAX * (k % 2)); // 10 homes, half at the end
        probe_set_follows_hash_set(|_| u64::MAX); // one run from the last slot
        probe_set_follows_hash_set(|k| k.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    }

    #[test]
    fn sharded_set_behaves_like_one_set() {
        let mut set: ShardedSet<Id> = ShardedSet::default();
        let mut reference = std::collections::HashSet::new();
        for i in 0..30_000u64 {
            let key = Id::Num(i.wrapping_mul(0x9e37_79b9_7f4a_7c15) % 9_000);
            assert_eq!(set.insert_new(key.clone()), reference.insert(key.clone()));
            if i % 5 == 0 {
                let gone = Id::Num(i % 9_000);
                assert_eq!(set.remove(&gone), reference.remove(&gone));
            }
        }
        assert_eq!(set.len(), reference.len());
        let mut all: Vec<_> = set.iter().map(|k| format!("{k:?}")).collect();
        let mut expected: Vec<_> = reference.iter().map(|k| format!("{k:?}")).collect();
        all.sort_unstable();
        expected.sort_unstable();
        assert_eq!(all, expected);
        let text = Id::new("a-long-client-event-id-0001");
        assert!(set.insert_new(text.clone()) && !set.insert_new(text.clone()) && set.contains(&text));
    }

    #[test]
    fn close_ids_spread_over_the_set_shards_whatever_the_seed() {
        for _ in 0..300 {
            let mut set: ShardedSet<Id> = ShardedSet::default();
            for i in 0..3000u64 {
                set.insert_new(Id::Num(7_000_000_000_000_000_000 + i));
            }
            let used = set.shards.iter().filter(|s| s.len > 0).count();
            assert_eq!(used, SHARDS, "3000 ids in {used} of {SHARDS} shards");
        }
    }

    #[test]
    fn set_insert_all_is_inserting_one_at_a_time() {
        let keys: Vec<u64> = (0..50_000u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) % 20_000).collect();
        let mut one_by_one: ShardedSet<u64> = ShardedSet::default();
        let mut at_once: ShardedSet<u64> = ShardedSet::default();
        for k in [7, 123_456] {
            one_by_one.insert_new(k);
            at_once.insert_new(k);
        }
        for k in &keys {
            one_by_one.insert_new(*k);
        }
        at_once.insert_all(keys);
        let sorted = |s: &ShardedSet<u64>| {
            let mut all: Vec<u64> = s.iter().copied().collect();
            all.sort_unstable();
            all
        };
        assert_eq!(sorted(&at_once), sorted(&one_by_one));
        assert_eq!(at_once.len(), one_by_one.len());
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
