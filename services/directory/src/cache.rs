//! A small time-bounded cache for the authentication hot path. Every request authenticates and
//! checks permissions; without it each does three to six database round trips. Entries live
//! `AUTH_CACHE_TTL`: a change made through this process invalidates its entries at once; a
//! change made by another process (another replica) is seen within the TTL.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long another replica may act on a revoked key, an ended session or a changed grant.
pub const AUTH_CACHE_TTL: Duration = Duration::from_secs(5);
const CAPACITY: usize = 100_000;

#[derive(Debug)]
pub(crate) struct TtlCache<K, V> {
    map: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Eq + Hash + Clone, V: Clone> Default for TtlCache<K, V> {
    fn default() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> TtlCache<K, V> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, (Instant, V)>> {
        self.map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn get(&self, k: &K) -> Option<V> {
        let mut map = self.lock();
        match map.get(k) {
            Some((at, v)) if at.elapsed() < AUTH_CACHE_TTL => Some(v.clone()),
            Some(_) => {
                map.remove(k);
                None
            }
            None => None,
        }
    }

    pub fn insert(&self, k: K, v: V) {
        let mut map = self.lock();
        if map.len() >= CAPACITY {
            map.retain(|_, (at, _)| at.elapsed() < AUTH_CACHE_TTL);
            if map.len() >= CAPACITY {
                map.clear();
            }
        }
        map.insert(k, (Instant::now(), v));
    }

    pub fn remove(&self, k: &K) {
        self.lock().remove(k);
    }

    pub fn retain(&self, keep: impl Fn(&K) -> bool) {
        self.lock().retain(|k, _| keep(k));
    }
}
