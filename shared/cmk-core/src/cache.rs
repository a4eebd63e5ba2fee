//! A bounded in-memory cache of unwrapped data keys with a time to live.
//!
//! Saves a key-provider round trip per encrypt/decrypt. Entries are [`DataKey`]s, which zeroize
//! their bytes when dropped, so eviction and expiry wipe them. A TTL of zero disables the cache.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::crypto::DataKey;
use crate::model::{DataKeyId, OrgId};

type CacheKey = (OrgId, DataKeyId);

#[derive(Debug)]
pub struct DataKeyCache {
    ttl: Duration,
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<CacheKey, (DataKey, Instant)>,
    /// Insertion order, for evicting the oldest entry when full.
    order: VecDeque<CacheKey>,
}

impl DataKeyCache {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity,
            inner: Mutex::new(Inner::default()),
        }
    }

    pub fn disabled() -> Self {
        Self::new(Duration::ZERO, 0)
    }

    fn enabled(&self) -> bool {
        !self.ttl.is_zero() && self.capacity > 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the map consistent, so poisoning is ignored.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, org: &OrgId, id: &DataKeyId) -> Option<DataKey> {
        if !self.enabled() {
            return None;
        }
        let mut inner = self.lock();
        let key = (org.clone(), id.clone());
        match inner.entries.get(&key) {
            Some((dk, expires)) if *expires > Instant::now() => Some(dk.clone()),
            Some(_) => {
                inner.entries.remove(&key);
                None
            }
            None => None,
        }
    }

    pub fn insert(&self, org: &OrgId, id: &DataKeyId, key: &DataKey) {
        if !self.enabled() {
            return;
        }
        let now = Instant::now();
        let mut inner = self.lock();
        let cache_key = (org.clone(), id.clone());
        if inner
            .entries
            .insert(cache_key.clone(), (key.clone(), now + self.ttl))
            .is_none()
        {
            inner.order.push_back(cache_key);
        }
        while inner.entries.len() > self.capacity {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            inner.entries.remove(&oldest);
        }
        // Keep the order queue from growing with keys that expired and were removed by `get`.
        if inner.order.len() > self.capacity.saturating_mul(2) {
            let Inner { entries, order } = &mut *inner;
            order.retain(|k| entries.contains_key(k));
        }
    }

    /// Forgets every entry of an org (e.g. after a key is revoked or disabled).
    pub fn evict_org(&self, org: &OrgId) {
        let mut inner = self.lock();
        inner.entries.retain(|(o, _), _| o != org);
        let Inner { entries, order } = &mut *inner;
        order.retain(|k| entries.contains_key(k));
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_expiring() {
        let cache = DataKeyCache::new(Duration::from_millis(50), 2);
        let org = OrgId::from_trusted("acme");
        let ids: Vec<_> = (0..3).map(|_| DataKeyId::generate()).collect();
        for id in &ids {
            cache.insert(&org, id, &DataKey::generate());
        }
        assert_eq!(cache.len(), 2);
        assert!(cache.get(&org, &ids[0]).is_none(), "oldest evicted");
        assert!(cache.get(&org, &ids[2]).is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert!(cache.get(&org, &ids[2]).is_none(), "expired");
    }

    #[test]
    fn zero_ttl_disables() {
        let cache = DataKeyCache::new(Duration::ZERO, 100);
        let org = OrgId::from_trusted("acme");
        let id = DataKeyId::generate();
        cache.insert(&org, &id, &DataKey::generate());
        assert!(cache.get(&org, &id).is_none());
        assert!(cache.is_empty());
    }
}
