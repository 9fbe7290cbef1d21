//! Which backend made each stored response (Responses API), so that a request continuing
//! it (`previous_response_id`) and `GET`/`DELETE`/`cancel` by id reach the provider
//! account that holds it: another account answers "not found".
//!
//! Bounded: the newest [`CAPACITY`] ids this proxy forwarded, oldest forgotten first. An
//! id this proxy did not see (made through another proxy, or before a restart, or evicted)
//! is unknown: a continuation then goes to any candidate, a lookup by id gets 404.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};

/// Ids remembered (about 100 bytes each: at most ~10 MB).
pub const CAPACITY: usize = 100_000;

/// Where a stored response lives, and whose it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The backend that made it.
    pub backend_id: Arc<str>,
    /// The client key that asked for it (`None` without one): only that key may reach it.
    pub key_id: Option<Arc<str>>,
}

#[derive(Default)]
struct Inner {
    by_id: HashMap<Box<str>, Origin>,
    order: VecDeque<Box<str>>,
}

/// The bounded id → origin map of one proxy.
pub struct Origins {
    inner: Mutex<Inner>,
    capacity: usize,
}

impl Default for Origins {
    fn default() -> Self {
        Self::with_capacity(CAPACITY)
    }
}

impl Origins {
    /// A map that remembers at most `capacity` ids.
    pub fn with_capacity(capacity: usize) -> Self {
        Self { inner: Mutex::default(), capacity: capacity.max(1) }
    }

    /// Remembers that `id` was made by `origin`, forgetting the oldest id if full.
    pub fn record(&self, id: &str, origin: Origin) {
        let mut inner = self.inner.lock().expect("origins lock");
        if inner.by_id.insert(id.into(), origin).is_some() {
            return;
        }
        inner.order.push_back(id.into());
        while inner.order.len() > self.capacity {
            if let Some(old) = inner.order.pop_front() {
                inner.by_id.remove(&old);
            }
        }
    }

    /// Where `id` lives, if this proxy knows.
    pub fn get(&self, id: &str) -> Option<Origin> {
        self.inner.lock().expect("origins lock").by_id.get(id).cloned()
    }

    /// Where `id` lives, if this proxy knows and `key_id` (the caller's client key, `None`
    /// without one) is the key that made it: another key is told nothing.
    pub fn get_for(&self, id: &str, key_id: Option<&str>) -> Option<Origin> {
        self.get(id).filter(|o| o.key_id.as_deref() == key_id)
    }

    /// Forgets `id` (the response was deleted).
    pub fn forget(&self, id: &str) {
        let mut inner = self.inner.lock().expect("origins lock");
        if inner.by_id.remove(id).is_some() {
            inner.order.retain(|i| &**i != id);
        }
    }

    /// Ids remembered.
    pub fn len(&self) -> usize {
        self.inner.lock().expect("origins lock").by_id.len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(backend: &str) -> Origin {
        Origin { backend_id: backend.into(), key_id: None }
    }

    #[test]
    fn remembers_the_newest_ids_within_its_bound() {
        let o = Origins::with_capacity(3);
        for i in 0..5 {
            o.record(&format!("resp_{i}"), at(&format!("b{i}")));
        }
        assert_eq!(o.len(), 3, "never more than the bound");
        assert_eq!(o.get("resp_0"), None, "the oldest are forgotten first");
        assert_eq!(o.get("resp_1"), None);
        assert_eq!(o.get("resp_4"), Some(at("b4")));
        o.forget("resp_4");
        assert_eq!(o.get("resp_4"), None);
        assert_eq!(o.len(), 2);
        o.record("resp_5", at("b5"));
        o.record("resp_6", at("b6"));
        assert_eq!(o.len(), 3);
        assert_eq!(o.get("resp_2"), None);
        assert_eq!(o.get("resp_3"), Some(at("b3")));
    }
}
