//! A bounded in-memory map for caches whose entries are hints or can be rebuilt: two
//! generations — lookups check both, inserts go to the young one, and when it is full the old
//! one is dropped, so recently used entries survive and memory stays bounded without
//! per-entry bookkeeping. Used for stream heads (the store) and aggregate states (services).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

#[derive(Debug)]
pub struct Generational<K, V> {
    capacity: usize,
    inner: Mutex<Generations<K, V>>,
}

#[derive(Debug)]
struct Generations<K, V> {
    young: HashMap<K, V>,
    old: HashMap<K, V>,
}

impl<K: Eq + Hash, V: Clone> Generational<K, V> {
    /// At most `capacity` entries (two generations of half of it each).
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(2),
            inner: Mutex::new(Generations {
                young: HashMap::new(),
                old: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations<K, V>> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn get(&self, key: &K) -> Option<V> {
        let g = self.lock();
        g.young.get(key).or_else(|| g.old.get(key)).cloned()
    }

    pub fn put(&self, key: K, value: V) {
        let mut g = self.lock();
        if g.young.len() >= self.capacity / 2 {
            g.old = std::mem::take(&mut g.young);
        }
        g.old.remove(&key);
        g.young.insert(key, value);
    }

    pub fn forget(&self, key: &K) {
        let mut g = self.lock();
        g.young.remove(key);
        g.old.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_recent_entries_and_stays_bounded() {
        let c = Generational::new(4);
        for i in 0..100 {
            c.put(i, i * 10);
        }
        assert_eq!(c.get(&99), Some(990));
        assert_eq!(c.get(&98), Some(980));
        assert_eq!(c.get(&0), None);
        let g = c.lock();
        assert!(g.young.len() + g.old.len() <= 4);
    }

    #[test]
    fn a_read_entry_survives_by_being_put_again_and_forget_removes_it() {
        let c = Generational::new(4);
        c.put("a", 1);
        c.put("b", 2);
        c.put("c", 3); // young full: {a, b} became old
        assert_eq!(c.get(&"a"), Some(1));
        c.put("a", 4);
        assert_eq!(c.get(&"a"), Some(4));
        c.forget(&"a");
        assert_eq!(c.get(&"a"), None);
    }
}
