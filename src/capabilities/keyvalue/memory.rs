//! The `memory` backend: one process-wide map per store, shared by every request and every
//! route granted the store. Gone when the process exits.
//!
//! The map lives outside every guest's `max_memory`, so it has a total size of its own
//! (`max_total_size`, keys and values counted): a write that would take the store past it fails
//! with an error the guest sees, while writes that shrink the store and deletes always work.
//! Every operation is one map operation under a lock held for microseconds (at most a copy of
//! one value), so the calls never hold a worker thread for long.

use super::backend::{
    Backend, BackendError, CounterRange, KeyPage, add_counter, page_from_sorted, parse_counter,
};
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::RwLock;

pub struct MemoryBackend {
    map: RwLock<Map>,
    /// The most bytes the keys and values together may take.
    max_total_size: usize,
}

#[derive(Default)]
struct Map {
    entries: BTreeMap<String, Vec<u8>>,
    /// The bytes of every key and value in `entries`.
    size: usize,
}

impl Map {
    /// Stores `value` at `key` if the store stays within `max` bytes (or does not grow).
    fn insert(&mut self, key: &str, value: Vec<u8>, max: usize) -> Result<(), BackendError> {
        let old = self.entries.get(key).map_or(0, |v| key.len() + v.len());
        let new = key.len() + value.len();
        let size = self.size - old + new;
        if new > old && size > max {
            return Err(BackendError::Invalid(format!(
                "the store is full: this write would take it to {size} bytes, more than its \
                 max_total_size of {max} bytes"
            )));
        }
        self.entries.insert(key.to_string(), value);
        self.size = size;
        Ok(())
    }
}

impl MemoryBackend {
    /// An empty store that may hold up to `max_total_size` bytes of keys and values.
    pub fn new(max_total_size: usize) -> MemoryBackend {
        MemoryBackend {
            map: RwLock::default(),
            max_total_size,
        }
    }

    /// The bytes of keys and values stored now.
    pub fn size(&self) -> usize {
        self.read().size
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Map> {
        // A panic while holding the lock cannot leave the map half-written (every write is one
        // map operation, then the size), so a poisoned lock is still consistent.
        self.map.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Map> {
        self.map.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl Backend for MemoryBackend {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(self.read().entries.get(key).cloned())
    }

    async fn set(&self, key: &str, value: &[u8]) -> Result<(), BackendError> {
        self.write()
            .insert(key, value.to_vec(), self.max_total_size)
    }

    async fn delete(&self, key: &str) -> Result<(), BackendError> {
        let mut map = self.write();
        if let Some(value) = map.entries.remove(key) {
            map.size -= key.len() + value.len();
        }
        Ok(())
    }

    async fn exists(&self, key: &str) -> Result<bool, BackendError> {
        Ok(self.read().entries.contains_key(key))
    }

    async fn list_keys(&self, cursor: Option<&str>, limit: usize) -> Result<KeyPage, BackendError> {
        let map = self.read();
        let start = match cursor {
            Some(cursor) => Bound::Excluded(cursor),
            None => Bound::Unbounded,
        };
        let keys = map
            .entries
            .range::<str, _>((start, Bound::Unbounded))
            .take(limit + 1)
            .map(|(k, _)| k.clone())
            .collect();
        Ok(page_from_sorted(keys, limit))
    }

    async fn increment(
        &self,
        key: &str,
        delta: i64,
        range: CounterRange,
    ) -> Result<i64, BackendError> {
        let mut map = self.write();
        let current = match map.entries.get(key) {
            Some(value) => parse_counter(value)?,
            None => 0,
        };
        let next = add_counter(current, delta, range)?;
        map.insert(key, next.to_string().into_bytes(), self.max_total_size)?;
        Ok(next)
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool, BackendError> {
        let mut map = self.write();
        if map.entries.get(key).map(Vec::as_slice) != expected {
            return Ok(false);
        }
        map.insert(key, new.to_vec(), self.max_total_size)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_total_size_bounds_writes_that_grow_the_store_only() {
        let kv = MemoryBackend::new(10);
        kv.set("ab", b"12345678").await.unwrap();
        assert_eq!(kv.size(), 10);
        let full = kv.set("c", b"1").await.unwrap_err();
        assert!(
            full.to_string().contains("max_total_size of 10 bytes"),
            "{full}"
        );
        assert_eq!(kv.get("c").await.unwrap(), None);
        assert!(kv.compare_and_swap("c", None, b"x").await.is_err());
        assert!(kv.increment("n", 1, CounterRange::Any).await.is_err());
        // Shrinking and same-size writes work when full; deletes free room.
        kv.set("ab", b"1234").await.unwrap();
        assert_eq!(kv.size(), 6);
        kv.set("cd", b"12").await.unwrap();
        assert_eq!(kv.size(), 10);
        kv.delete("ab").await.unwrap();
        kv.delete("ab").await.unwrap();
        assert_eq!(kv.size(), 4);
        assert_eq!(kv.increment("n", 5, CounterRange::Any).await.unwrap(), 5);
        assert_eq!(kv.size(), 6);
    }
}
