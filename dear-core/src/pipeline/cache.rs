//! A bounded score cache shared by every search through one reranker.
//!
//! Pointwise scores are keyed by (stage key, query text, passage content); listwise
//! orders by (stage key, query text, mode, windows, the ordered passages). Repeating a
//! query, or asking for its next page, costs no model call. Entries are evicted oldest
//! first once the capacity is reached.

use std::collections::{HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};

use crate::Passage;
use parking_lot::Mutex;

/// A 128-bit content key (two independently seeded SipHash values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Key(u64, u64);

impl Key {
    pub(crate) fn of(parts: &[&dyn HashPart]) -> Key {
        let mut a = DefaultHasher::new();
        let mut b = DefaultHasher::new();
        0xdea5_u16.hash(&mut b);
        for p in parts {
            p.feed(&mut a);
            p.feed(&mut b);
        }
        Key(a.finish(), b.finish())
    }
}

/// Something that feeds a cache key.
pub(crate) trait HashPart {
    fn feed(&self, h: &mut DefaultHasher);
}

impl HashPart for &str {
    fn feed(&self, h: &mut DefaultHasher) {
        self.hash(h);
    }
}

impl HashPart for String {
    fn feed(&self, h: &mut DefaultHasher) {
        self.as_str().hash(h);
    }
}

impl HashPart for Passage {
    fn feed(&self, h: &mut DefaultHasher) {
        // The id is not content: the same text under two ids scores the same.
        self.title.hash(h);
        self.text.hash(h);
    }
}

impl HashPart for &[Passage] {
    fn feed(&self, h: &mut DefaultHasher) {
        self.len().hash(h);
        for p in self.iter() {
            p.feed(h);
        }
    }
}

/// A bounded map, oldest entries evicted first.
#[derive(Debug)]
struct Bounded<V> {
    map: HashMap<Key, V>,
    order: VecDeque<Key>,
    capacity: usize,
}

impl<V: Clone> Bounded<V> {
    fn new(capacity: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    fn get(&self, key: &Key) -> Option<V> {
        self.map.get(key).cloned()
    }

    fn insert(&mut self, key: Key, value: V) {
        if self.capacity == 0 {
            return;
        }
        if self.map.insert(key, value).is_none() {
            self.order.push_back(key);
        }
        while self.map.len() > self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
    }

    fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
    }
}

/// The caches of one reranker.
#[derive(Debug)]
pub(crate) struct ScoreCache {
    pointwise: Mutex<Bounded<f32>>,
    listwise: Mutex<Bounded<Vec<usize>>>,
}

impl ScoreCache {
    pub(crate) fn new(pointwise: usize, listwise: usize) -> Self {
        Self {
            pointwise: Mutex::new(Bounded::new(pointwise)),
            listwise: Mutex::new(Bounded::new(listwise)),
        }
    }

    pub(crate) fn pointwise(&self, key: &Key) -> Option<f32> {
        self.pointwise.lock().get(key)
    }

    pub(crate) fn put_pointwise(&self, entries: impl IntoIterator<Item = (Key, f32)>) {
        let mut map = self.pointwise.lock();
        for (k, v) in entries {
            map.insert(k, v);
        }
    }

    pub(crate) fn listwise(&self, key: &Key) -> Option<Vec<usize>> {
        self.listwise.lock().get(key)
    }

    pub(crate) fn put_listwise(&self, key: Key, order: Vec<usize>) {
        self.listwise.lock().insert(key, order);
    }

    pub(crate) fn len(&self) -> (usize, usize) {
        (
            self.pointwise.lock().map.len(),
            self.listwise.lock().map.len(),
        )
    }

    pub(crate) fn clear(&self) {
        self.pointwise.lock().clear();
        self.listwise.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_depend_on_content_not_id() {
        let a = Passage::new("text").with_id("1");
        let b = Passage::new("text").with_id("2");
        let c = Passage::new("text").with_title("t");
        assert_eq!(Key::of(&[&a]), Key::of(&[&b]));
        assert_ne!(Key::of(&[&a]), Key::of(&[&c]));
        assert_ne!(Key::of(&[&"q1", &a]), Key::of(&[&"q2", &a]));
        // Parts are length-delimited: "ab"+"c" is not "a"+"bc".
        assert_ne!(Key::of(&[&"ab", &"c"]), Key::of(&[&"a", &"bc"]));
    }

    #[test]
    fn oldest_entries_are_evicted() {
        let cache = ScoreCache::new(2, 1);
        let k = |s: &str| Key::of(&[&s]);
        cache.put_pointwise([(k("a"), 1.0), (k("b"), 2.0), (k("c"), 3.0)]);
        assert_eq!(cache.pointwise(&k("a")), None);
        assert_eq!(cache.pointwise(&k("b")), Some(2.0));
        assert_eq!(cache.pointwise(&k("c")), Some(3.0));
        cache.put_listwise(k("x"), vec![1, 0]);
        cache.put_listwise(k("y"), vec![0, 1]);
        assert_eq!(cache.listwise(&k("x")), None);
        assert_eq!(cache.listwise(&k("y")), Some(vec![0, 1]));
        assert_eq!(cache.len(), (2, 1));
        cache.clear();
        assert_eq!(cache.len(), (0, 0));
        let none = ScoreCache::new(0, 0);
        none.put_pointwise([(k("a"), 1.0)]);
        assert_eq!(none.pointwise(&k("a")), None);
    }
}
