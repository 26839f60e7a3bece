//! The compact connection table behind both caches: a `hashbrown::HashTable` of values
//! that carry their own key (the entry's original tuple and zone), so the key is not
//! stored a second time next to the entry as a `HashMap<Key, V>` would store it. At 100k
//! entries a slot shrinks from 160 to 112 bytes (the external cache of the backup is the
//! bulk of its memory). Hashing is foldhash with a per-table random seed (hashbrown's own
//! default): SipHash, std's default, was ~18 % of the master's CPU while replicating.

use std::hash::BuildHasher;

use foldhash::fast::RandomState;
use hashbrown::HashTable;

use crate::entry::Key;

/// A value that knows its key.
pub trait Keyed {
    /// The key the value is stored under.
    fn key(&self) -> Key;
}

/// A map from [`Key`] to values that contain their key.
#[derive(Debug, Clone, Default)]
pub struct Table<V> {
    table: HashTable<V>,
    hasher: RandomState,
}

impl<V: Keyed> Table<V> {
    /// An empty table.
    pub fn new() -> Table<V> {
        Table {
            table: HashTable::new(),
            hasher: RandomState::default(),
        }
    }

    fn hash(&self, k: &Key) -> u64 {
        self.hasher.hash_one(k)
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The value under `k`.
    pub fn get(&self, k: &Key) -> Option<&V> {
        self.table.find(self.hash(k), |v| v.key() == *k)
    }

    /// The value under `k`, mutable. The caller must not change its key.
    pub fn get_mut(&mut self, k: &Key) -> Option<&mut V> {
        let h = self.hash(k);
        self.table.find_mut(h, |v| v.key() == *k)
    }

    /// Inserts `v` under its key; returns the value it replaced.
    pub fn insert(&mut self, v: V) -> Option<V> {
        let k = v.key();
        let h = self.hash(&k);
        let hasher = &self.hasher;
        match self
            .table
            .entry(h, |x| x.key() == k, |x| hasher.hash_one(x.key()))
        {
            hashbrown::hash_table::Entry::Occupied(mut o) => {
                Some(std::mem::replace(o.get_mut(), v))
            }
            hashbrown::hash_table::Entry::Vacant(slot) => {
                slot.insert(v);
                None
            }
        }
    }

    /// Removes and returns the value under `k`.
    pub fn remove(&mut self, k: &Key) -> Option<V> {
        let h = self.hash(k);
        match self.table.find_entry(h, |v| v.key() == *k) {
            Ok(o) => Some(o.remove().0),
            Err(_) => None,
        }
    }

    /// All values, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.table.iter()
    }

    /// All keys, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = Key> + '_ {
        self.table.iter().map(Keyed::key)
    }

    /// Keeps only the values for which `keep` is true; calls `removed` for each other one.
    pub fn retain(&mut self, mut keep: impl FnMut(&V) -> bool, mut removed: impl FnMut(V)) {
        // `extract_if` hands out the removed values (plain `retain` would only drop them).
        for v in self.table.extract_if(|v| !keep(v)) {
            removed(v);
        }
    }

    /// Removes everything (the allocation is released too).
    pub fn clear(&mut self) {
        self.table = HashTable::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::Entry;
    use crate::entry::tests::tcp;

    #[derive(Debug, Clone, PartialEq)]
    struct V(Entry, u32);
    impl Keyed for V {
        fn key(&self) -> Key {
            self.0.key()
        }
    }

    /// Insert replaces, get/remove find by key, retain reports what it removed.
    #[test]
    fn behaves_like_a_map_keyed_by_the_entry() {
        let mut t = Table::new();
        let a = tcp(1000, false);
        let b = tcp(1001, true);
        assert_eq!(t.insert(V(a, 1)), None);
        assert_eq!(t.insert(V(b, 2)), None);
        assert_eq!(t.insert(V(a, 3)), Some(V(a, 1)));
        assert_eq!(t.len(), 2);
        assert_eq!(t.get(&a.key()).map(|v| v.1), Some(3));
        t.get_mut(&b.key()).unwrap().1 = 4;
        let mut gone = Vec::new();
        t.retain(|v| v.1 != 4, |v| gone.push(v));
        assert_eq!(gone, vec![V(b, 4)]);
        assert_eq!(t.keys().collect::<Vec<_>>(), vec![a.key()]);
        assert_eq!(t.remove(&a.key()), Some(V(a, 3)));
        assert_eq!(t.remove(&a.key()), None);
        assert!(t.is_empty());
    }
}
