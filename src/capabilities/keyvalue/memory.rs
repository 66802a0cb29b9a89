//! The `memory` backend: one process-wide map per store, shared by every request and every
//! route granted the store. Gone when the process exits.

use super::backend::{
    Backend, BackendError, KeyPage, add_counter, page_from_sorted, parse_counter,
};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::RwLock;

#[derive(Default)]
pub struct MemoryBackend {
    map: RwLock<BTreeMap<String, Vec<u8>>>,
}

impl MemoryBackend {
    pub fn new() -> MemoryBackend {
        MemoryBackend::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Vec<u8>>> {
        // A panic while holding the lock cannot leave the map half-written (every write is one
        // map operation), so a poisoned lock is still consistent.
        self.map.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Vec<u8>>> {
        self.map.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(self.read().get(key).cloned())
    }

    async fn set(&self, key: &str, value: &[u8]) -> Result<(), BackendError> {
        self.write().insert(key.to_string(), value.to_vec());
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), BackendError> {
        self.write().remove(key);
        Ok(())
    }

    async fn exists(&self, key: &str) -> Result<bool, BackendError> {
        Ok(self.read().contains_key(key))
    }

    async fn list_keys(&self, cursor: Option<&str>, limit: usize) -> Result<KeyPage, BackendError> {
        let map = self.read();
        let start = match cursor {
            Some(cursor) => Bound::Excluded(cursor),
            None => Bound::Unbounded,
        };
        let keys = map
            .range::<str, _>((start, Bound::Unbounded))
            .take(limit + 1)
            .map(|(k, _)| k.clone())
            .collect();
        Ok(page_from_sorted(keys, limit))
    }

    async fn increment(&self, key: &str, delta: i64) -> Result<i64, BackendError> {
        let mut map = self.write();
        let current = match map.get(key) {
            Some(value) => parse_counter(value)?,
            None => 0,
        };
        let next = add_counter(current, delta)?;
        map.insert(key.to_string(), next.to_string().into_bytes());
        Ok(next)
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool, BackendError> {
        let mut map = self.write();
        if map.get(key).map(Vec::as_slice) != expected {
            return Ok(false);
        }
        map.insert(key.to_string(), new.to_vec());
        Ok(true)
    }
}
