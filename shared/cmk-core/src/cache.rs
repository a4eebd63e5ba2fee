//! A bounded in-memory cache of unwrapped data keys: least recently used out, with a time to
//! live, sharded so that no one lock serves every request.
//!
//! Saves a key-provider round trip per encrypt/decrypt. Entries are [`DataKey`]s, which zeroize
//! their bytes when dropped, so eviction, expiry and invalidation wipe them. A TTL of zero (or a
//! capacity of zero) disables the cache.
//!
//! Bounds: the shards' capacities add up to the cache's capacity, and each shard holds at most
//! its own, so the entries never exceed the capacity however keys churn or expire. Each entry
//! remembers the key that wrapped it, and each shard counts its entries per wrapping key, so
//! that [`DataKeyCache::evict_key`] (a revoked, disabled or deleted key) wipes exactly that
//! key's data keys, and walks only the shards that hold some.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hashlink::LinkedHashMap;

use crate::crypto::DataKey;
use crate::model::{DataKeyId, KeyId, OrgId};

type CacheKey = (OrgId, DataKeyId);
type WrappingKey = (OrgId, KeyId);

/// Most shards; a small cache gets one shard per entry of capacity at most.
const SHARDS: usize = 16;

#[derive(Debug)]
pub struct DataKeyCache {
    ttl: Duration,
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
}

#[derive(Debug)]
struct Entry {
    key: DataKey,
    wrapped_by: KeyId,
    expires: Instant,
}

/// One shard: entries from least to most recently used, how many each wrapping key has, and
/// how many times each wrapping key's entries were wiped.
#[derive(Debug, Default)]
struct Shard {
    capacity: usize,
    entries: LinkedHashMap<CacheKey, Entry>,
    per_key: HashMap<WrappingKey, usize>,
    wipes: HashMap<WrappingKey, u64>,
}

impl Shard {
    fn counted(&mut self, org: &OrgId, key: &KeyId, delta: isize) {
        let wk = (org.clone(), key.clone());
        let n = self.per_key.entry(wk.clone()).or_insert(0);
        *n = n.saturating_add_signed(delta);
        if *n == 0 {
            self.per_key.remove(&wk);
        }
    }

    fn remove(&mut self, k: &CacheKey) {
        if let Some(e) = self.entries.remove(k) {
            self.counted(&k.0, &e.wrapped_by, -1);
        }
    }

    fn get(&mut self, k: &CacheKey, now: Instant) -> Option<DataKey> {
        let live = self.entries.get(k).map(|e| e.expires > now)?;
        if !live {
            self.remove(k);
            return None;
        }
        self.entries.to_back(k).map(|e| e.key.clone())
    }

    fn insert(&mut self, k: CacheKey, wrapped_by: &KeyId, key: &DataKey, expires: Instant) {
        let org = k.0.clone();
        let entry = Entry {
            key: key.clone(),
            wrapped_by: wrapped_by.clone(),
            expires,
        };
        if let Some(old) = self.entries.insert(k, entry) {
            self.counted(&org, &old.wrapped_by, -1);
        }
        self.counted(&org, wrapped_by, 1);
        while self.entries.len() > self.capacity {
            let Some((k, e)) = self.entries.pop_front() else {
                break;
            };
            self.counted(&k.0, &e.wrapped_by, -1);
        }
    }

    fn evict_key(&mut self, org: &OrgId, key: &KeyId) -> usize {
        let wk = (org.clone(), key.clone());
        *self.wipes.entry(wk.clone()).or_insert(0) += 1;
        let Some(n) = self.per_key.remove(&wk) else {
            return 0;
        };
        self.entries
            .retain(|(o, _), e| !(o == org && e.wrapped_by == *key));
        n
    }
}

/// How much the cache holds, for tests and figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheFootprint {
    /// Cached data keys.
    pub entries: usize,
    /// Per-wrapping-key counters (at most one per distinct key among the entries).
    pub counters: usize,
}

impl DataKeyCache {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        let n = if ttl.is_zero() {
            0
        } else {
            capacity.min(SHARDS)
        };
        let shards = (0..n)
            .map(|i| {
                // Capacities add up to `capacity` exactly.
                let cap = capacity / n + usize::from(i < capacity % n);
                Mutex::new(Shard {
                    capacity: cap,
                    ..Shard::default()
                })
            })
            .collect();
        Self {
            ttl,
            hasher: RandomState::new(),
            shards,
        }
    }

    pub fn disabled() -> Self {
        Self::new(Duration::ZERO, 0)
    }

    fn shard(&self, k: &CacheKey) -> Option<std::sync::MutexGuard<'_, Shard>> {
        if self.shards.is_empty() {
            return None;
        }
        let i = (self.hasher.hash_one(k) % self.shards.len() as u64) as usize;
        Some(lock(&self.shards[i]))
    }

    pub fn get(&self, org: &OrgId, id: &DataKeyId) -> Option<DataKey> {
        self.get_at(org, id, Instant::now())
    }

    fn get_at(&self, org: &OrgId, id: &DataKeyId, now: Instant) -> Option<DataKey> {
        let k = (org.clone(), id.clone());
        self.shard(&k)?.get(&k, now)
    }

    /// Caches `key` whatever was wiped meanwhile (tests; the service uses
    /// [`DataKeyCache::insert_unless_wiped`]).
    #[cfg(test)]
    fn insert(&self, org: &OrgId, id: &DataKeyId, wrapped_by: &KeyId, key: &DataKey) {
        self.insert_at(org, id, wrapped_by, key, Instant::now());
    }

    /// How many times `wrapped_by`'s data keys were wiped, as the shard of `id` knows it: read
    /// before a provider call, and given to [`DataKeyCache::insert_unless_wiped`] after it.
    pub fn wipes(&self, org: &OrgId, id: &DataKeyId, wrapped_by: &KeyId) -> u64 {
        let k = (org.clone(), id.clone());
        self.shard(&k).map_or(0, |s| {
            s.wipes
                .get(&(org.clone(), wrapped_by.clone()))
                .copied()
                .unwrap_or(0)
        })
    }

    /// Caches `key` unless `wrapped_by`'s data keys were wiped since [`DataKeyCache::wipes`]
    /// read `wipes`: a plaintext unwrapped just before a revocation must not be cached after
    /// the wipe it caused (checked and inserted under one shard lock).
    pub fn insert_unless_wiped(
        &self,
        org: &OrgId,
        id: &DataKeyId,
        wrapped_by: &KeyId,
        key: &DataKey,
        wipes: u64,
    ) {
        let k = (org.clone(), id.clone());
        let expires = Instant::now() + self.ttl;
        if let Some(mut shard) = self.shard(&k) {
            let now = shard
                .wipes
                .get(&(org.clone(), wrapped_by.clone()))
                .copied()
                .unwrap_or(0);
            if now == wipes {
                shard.insert(k, wrapped_by, key, expires);
            }
        }
    }

    #[cfg(test)]
    fn insert_at(
        &self,
        org: &OrgId,
        id: &DataKeyId,
        wrapped_by: &KeyId,
        key: &DataKey,
        now: Instant,
    ) {
        let k = (org.clone(), id.clone());
        let expires = now + self.ttl;
        if let Some(mut shard) = self.shard(&k) {
            shard.insert(k, wrapped_by, key, expires);
        }
    }

    /// Forgets data keys (e.g. after a re-encryption moved them to another key).
    pub fn forget(&self, org: &OrgId, ids: &[DataKeyId]) {
        if self.shards.is_empty() {
            return;
        }
        for id in ids {
            let k = (org.clone(), id.clone());
            if let Some(mut shard) = self.shard(&k) {
                shard.remove(&k);
            }
        }
    }

    /// Wipes every cached data key that `key` wrapped, at once: a key the customer revoked,
    /// disabled or deleted must stop serving decrypts on this instance. Returns how many.
    pub fn evict_key(&self, org: &OrgId, key: &KeyId) -> usize {
        self.shards
            .iter()
            .map(|s| lock(s).evict_key(org, key))
            .sum()
    }

    pub fn len(&self) -> usize {
        self.footprint().entries
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn footprint(&self) -> CacheFootprint {
        self.shards.iter().fold(
            CacheFootprint {
                entries: 0,
                counters: 0,
            },
            |acc, s| {
                let s = lock(s);
                CacheFootprint {
                    entries: acc.entries + s.entries.len(),
                    counters: acc.counters + s.per_key.len(),
                }
            },
        )
    }
}

fn lock(m: &Mutex<Shard>) -> std::sync::MutexGuard<'_, Shard> {
    // A panic while holding a shard leaves it consistent enough to serve: poisoning is ignored.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn org() -> OrgId {
        OrgId::from_trusted("acme")
    }

    #[test]
    fn the_least_recently_used_entry_goes_first_and_entries_expire() {
        // One shard (capacity 2), so the order is exact.
        let cache = DataKeyCache::new(Duration::from_secs(60), 2);
        assert_eq!(cache.shards.len(), 2);
        let cache = DataKeyCache {
            shards: vec![Mutex::new(Shard {
                capacity: 2,
                ..Shard::default()
            })]
            .into_boxed_slice(),
            ..cache
        };
        let kek = KeyId::service();
        let ids: Vec<_> = (0..3).map(|_| DataKeyId::generate()).collect();
        let t0 = Instant::now();
        cache.insert_at(&org(), &ids[0], &kek, &DataKey::generate(), t0);
        cache.insert_at(&org(), &ids[1], &kek, &DataKey::generate(), t0);
        // Using the first makes the second the least recently used.
        assert!(cache.get_at(&org(), &ids[0], t0).is_some());
        cache.insert_at(&org(), &ids[2], &kek, &DataKey::generate(), t0);
        assert_eq!(cache.len(), 2);
        assert!(cache.get_at(&org(), &ids[1], t0).is_none(), "LRU evicted");
        assert!(cache.get_at(&org(), &ids[0], t0).is_some());
        let later = t0 + Duration::from_secs(61);
        assert!(cache.get_at(&org(), &ids[2], later).is_none(), "expired");
    }

    #[test]
    fn zero_ttl_or_capacity_disables() {
        for cache in [
            DataKeyCache::new(Duration::ZERO, 100),
            DataKeyCache::new(Duration::from_secs(1), 0),
        ] {
            let id = DataKeyId::generate();
            cache.insert(&org(), &id, &KeyId::service(), &DataKey::generate());
            assert!(cache.get(&org(), &id).is_none());
            assert!(cache.is_empty());
        }
    }

    #[test]
    fn five_thousand_hot_keys_over_many_expiries_stay_within_capacity() {
        // The churn that leaked before: hot keys read, expired, read again and re-inserted, over
        // and over. The entries and their bookkeeping never exceed the capacity.
        let capacity = 8_000;
        let cache = DataKeyCache::new(Duration::from_secs(1), capacity);
        let keks = [KeyId::service(), KeyId::generate(), KeyId::generate()];
        let hot: Vec<_> = (0..5_000).map(|_| DataKeyId::generate()).collect();
        let key = DataKey::generate();
        let allocated = |c: &DataKeyCache| -> usize {
            c.shards.iter().map(|s| lock(s).entries.capacity()).sum()
        };
        let t0 = Instant::now();
        let mut hits = 0usize;
        for round in 0..60u64 {
            // Every round is 400 ms later: entries expire every few rounds.
            let now = t0 + Duration::from_millis(400 * round);
            for (i, id) in hot.iter().enumerate() {
                if cache.get_at(&org(), id, now).is_some() {
                    hits += 1;
                } else {
                    cache.insert_at(&org(), id, &keks[i % keks.len()], &key, now);
                }
                // And a stream of one-off data keys pushing against the bound.
                if i % 5 == 0 {
                    cache.insert_at(&org(), &DataKeyId::generate(), &keks[0], &key, now);
                }
            }
            let f = cache.footprint();
            assert!(f.entries <= capacity, "round {round}: {f:?}");
            assert!(f.counters <= keks.len() * SHARDS, "round {round}: {f:?}");
            // Hash tables keep slack, never a backlog: bounded by the capacity, not the churn.
            let slots = allocated(&cache);
            assert!(slots <= 4 * capacity, "round {round}: {slots} slots");
        }
        assert!(hits > 0, "the cache still serves hits");
        let f = cache.footprint();
        assert!(f.entries <= capacity && f.entries > capacity / 2, "{f:?}");
    }

    #[test]
    fn evicting_a_key_wipes_exactly_its_data_keys() {
        let cache = DataKeyCache::new(Duration::from_secs(60), 1_000);
        let (revoked, healthy) = (KeyId::generate(), KeyId::generate());
        let other_org = OrgId::from_trusted("globex");
        let ids: Vec<_> = (0..300).map(|_| DataKeyId::generate()).collect();
        for (i, id) in ids.iter().enumerate() {
            let kek = if i % 2 == 0 { &revoked } else { &healthy };
            cache.insert(&org(), id, kek, &DataKey::generate());
            cache.insert(&other_org, id, &revoked, &DataKey::generate());
        }
        assert_eq!(cache.evict_key(&org(), &revoked), 150);
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(cache.get(&org(), id).is_some(), i % 2 == 1, "{i}");
            assert!(
                cache.get(&other_org, id).is_some(),
                "another org keeps its keys"
            );
        }
        assert_eq!(cache.evict_key(&org(), &revoked), 0, "nothing left to wipe");
        cache.forget(&org(), &ids[1..2]);
        assert!(cache.get(&org(), &ids[1]).is_none());
        assert_eq!(cache.len(), 149 + 300);
    }

    #[test]
    fn a_plaintext_unwrapped_before_a_wipe_is_not_cached_after_it() {
        let cache = DataKeyCache::new(Duration::from_secs(60), 100);
        let kek = KeyId::generate();
        let (a, b) = (DataKeyId::generate(), DataKeyId::generate());
        // Request A reads the count, unwraps (succeeds just before the revocation)...
        let seen = cache.wipes(&org(), &a, &kek);
        // ...request B fails through the same key, which wipes it...
        cache.evict_key(&org(), &kek);
        // ...then A tries to cache its plaintext: refused.
        cache.insert_unless_wiped(&org(), &a, &kek, &DataKey::generate(), seen);
        assert!(cache.get(&org(), &a).is_none());
        // A request that started after the wipe caches as usual.
        let seen = cache.wipes(&org(), &b, &kek);
        cache.insert_unless_wiped(&org(), &b, &kek, &DataKey::generate(), seen);
        assert!(cache.get(&org(), &b).is_some());
    }

    #[test]
    fn re_inserting_a_data_key_under_another_key_moves_its_count() {
        let cache = DataKeyCache::new(Duration::from_secs(60), 10);
        let (a, b) = (KeyId::generate(), KeyId::generate());
        let id = DataKeyId::generate();
        cache.insert(&org(), &id, &a, &DataKey::generate());
        cache.insert(&org(), &id, &b, &DataKey::generate());
        assert_eq!(cache.evict_key(&org(), &a), 0);
        assert_eq!(cache.evict_key(&org(), &b), 1);
        assert_eq!(cache.footprint().counters, 0);
    }
}
