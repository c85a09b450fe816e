//! Storage that survives a simulated reboot (flash, NVS).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// A per-node key → bytes map owned by the simulator that outlives the node's volatile
/// state: a reboot rebuilds the [`meshfleet_mesh::Node`] from the factory, but hands it the
/// same store. Plugins (the OTA engine's received-parts bitmap) keep a clone and write to it
/// as they go.
///
/// Cloning gives another handle to the same map. It is `Send + Sync` because plugins must
/// be `Send`; the lock is never contended (the simulator is single-threaded).
#[derive(Clone, Debug, Default)]
pub struct PersistentStore(Arc<Mutex<BTreeMap<String, Vec<u8>>>>);

impl PersistentStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn map(&self) -> MutexGuard<'_, BTreeMap<String, Vec<u8>>> {
        // A panic while holding the lock leaves a consistent map (every write is a single
        // insert or remove), so a poisoned lock is safe to keep using.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The value stored under `key`.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.map().get(key).cloned()
    }

    /// Stores `value` under `key`, replacing any previous value.
    pub fn put(&self, key: &str, value: impl Into<Vec<u8>>) {
        self.map().insert(key.to_owned(), value.into());
    }

    /// Removes `key`, returning its value.
    pub fn remove(&self, key: &str) -> Option<Vec<u8>> {
        self.map().remove(key)
    }

    /// Every key, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.map().keys().cloned().collect()
    }

    /// Total bytes stored (values only).
    pub fn bytes(&self) -> usize {
        self.map().values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_the_map() {
        let a = PersistentStore::new();
        let b = a.clone();
        a.put("ota/bitmap", [1u8, 2, 3]);
        assert_eq!(b.get("ota/bitmap"), Some(vec![1, 2, 3]));
        assert_eq!(b.keys(), ["ota/bitmap"]);
        assert_eq!(b.remove("ota/bitmap"), Some(vec![1, 2, 3]));
        assert_eq!(a.bytes(), 0);
    }
}
