//! A map with a size cap, for what a partition worker remembers per account: handled
//! versions (a cache of the sink's) and the gap quarantine. When full, the entry inserted
//! longest ago is forgotten first. Forgetting is always safe here: a forgotten version is
//! read from the sink again, and a forgotten quarantine is found again (the gap is
//! re-checked and reported once more).

use std::collections::VecDeque;
use std::hash::Hash;

use foldhash::{HashMap, HashMapExt as _};

#[derive(Debug)]
pub(crate) struct Bounded<K, V> {
    max: usize,
    map: HashMap<K, V>,
    /// Keys in insertion order; exactly the keys of `map`.
    order: VecDeque<K>,
}

impl<K: Hash + Eq + Copy, V> Bounded<K, V> {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    pub(crate) fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key)
    }

    pub(crate) fn contains_key(&self, key: &K) -> bool {
        self.map.contains_key(key)
    }

    pub(crate) fn insert(&mut self, key: K, value: V) {
        if self.map.insert(key, value).is_none() {
            self.order.push_back(key);
            while self.map.len() > self.max {
                match self.order.pop_front() {
                    Some(oldest) => {
                        self.map.remove(&oldest);
                    }
                    None => break,
                }
            }
        }
    }

    pub(crate) fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_holds_more_than_its_cap_and_forgets_the_oldest_first() {
        let mut m = Bounded::new(3);
        for k in 0..10 {
            m.insert(k, k * 10);
            assert!(m.len() <= 3);
        }
        assert_eq!(m.len(), 3);
        assert!(!m.contains_key(&6));
        assert_eq!(m.get(&7), Some(&70));
        assert_eq!(m.get(&9), Some(&90));
        // Updating a key keeps one entry for it.
        m.insert(9, 91);
        assert_eq!(m.len(), 3);
        assert_eq!(m.get(&9), Some(&91));
        assert_eq!(m.order.len(), 3);
        m.clear();
        assert_eq!(m.len(), 0);
        assert!(m.order.is_empty());
    }
}
