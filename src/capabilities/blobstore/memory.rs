//! The `memory` backend: containers of objects in the gateway's memory, shared by every route
//! granted the store, lost on restart. Its objects together stay within `max_total_size`; a
//! write is collected whole before it replaces the object, and counts against the limit while
//! it is collected, so concurrent writes cannot overshoot it together.

use super::backend::{
    Backend, BlobError, ByteRange, ByteStream, ContainerInfo, Listing, ObjectInfo, Read,
};
use super::unix_now;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

struct Object {
    data: Bytes,
    created_at: u64,
}

struct Container {
    created_at: u64,
    objects: BTreeMap<String, Object>,
}

#[derive(Default)]
struct State {
    containers: HashMap<String, Container>,
    /// Bytes of stored objects plus bytes of writes being collected.
    used: u64,
}

pub struct MemoryBackend {
    state: Mutex<State>,
    max_total_size: u64,
}

impl MemoryBackend {
    pub fn new(max_total_size: u64) -> MemoryBackend {
        MemoryBackend {
            state: Mutex::new(State::default()),
            max_total_size,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while the lock was held leaves plain data behind, still consistent enough
        // to serve: take it rather than fail every later call.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts `bytes` more against the limit, if they fit.
    fn reserve(&self, bytes: u64) -> Result<(), BlobError> {
        let mut state = self.state();
        if state.used.saturating_add(bytes) > self.max_total_size {
            return Err(BlobError::Invalid(format!(
                "the memory store is full (max_total_size is {} bytes)",
                self.max_total_size
            )));
        }
        state.used += bytes;
        Ok(())
    }

    fn release(&self, bytes: u64) {
        let mut state = self.state();
        state.used = state.used.saturating_sub(bytes);
    }
}

fn missing(container: &str) -> BlobError {
    BlobError::NotFound(format!("container `{container}`"))
}

#[async_trait]
impl Backend for MemoryBackend {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn container_count(&self) -> Result<u64, BlobError> {
        Ok(self.state().containers.len() as u64)
    }

    async fn create_container(&self, container: &str) -> Result<(), BlobError> {
        let mut state = self.state();
        if state.containers.contains_key(container) {
            return Err(BlobError::AlreadyExists(format!("container `{container}`")));
        }
        state.containers.insert(
            container.to_string(),
            Container {
                created_at: unix_now(),
                objects: BTreeMap::new(),
            },
        );
        Ok(())
    }

    async fn container_info(&self, container: &str) -> Result<ContainerInfo, BlobError> {
        let state = self.state();
        let found = state
            .containers
            .get(container)
            .ok_or_else(|| missing(container))?;
        Ok(ContainerInfo {
            created_at: found.created_at,
        })
    }

    async fn delete_container(&self, container: &str) -> Result<(), BlobError> {
        let mut state = self.state();
        let removed = state
            .containers
            .remove(container)
            .ok_or_else(|| missing(container))?;
        let freed: u64 = removed.objects.values().map(|o| o.data.len() as u64).sum();
        state.used = state.used.saturating_sub(freed);
        Ok(())
    }

    async fn list_objects(
        &self,
        container: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Listing, BlobError> {
        let state = self.state();
        let found = state
            .containers
            .get(container)
            .ok_or_else(|| missing(container))?;
        let after = match cursor {
            Some(cursor) => std::ops::Bound::Excluded(cursor),
            None => std::ops::Bound::Unbounded,
        };
        let mut names: Vec<String> = found
            .objects
            .range::<str, _>((after, std::ops::Bound::Unbounded))
            .take(limit.saturating_add(1))
            .map(|(name, _)| name.clone())
            .collect();
        let cursor = if names.len() > limit {
            names.pop();
            names.last().cloned()
        } else {
            None
        };
        Ok(Listing { names, cursor })
    }

    async fn object_info(&self, container: &str, name: &str) -> Result<ObjectInfo, BlobError> {
        let state = self.state();
        let found = state
            .containers
            .get(container)
            .ok_or_else(|| missing(container))?;
        let object = found
            .objects
            .get(name)
            .ok_or_else(|| BlobError::NotFound(format!("object `{name}`")))?;
        Ok(ObjectInfo {
            size: object.data.len() as u64,
            created_at: object.created_at,
        })
    }

    async fn read(&self, container: &str, name: &str, range: ByteRange) -> Result<Read, BlobError> {
        let data = {
            let state = self.state();
            let found = state
                .containers
                .get(container)
                .ok_or_else(|| missing(container))?;
            found
                .objects
                .get(name)
                .ok_or_else(|| BlobError::NotFound(format!("object `{name}`")))?
                .data
                .clone()
        };
        let range = range.clamp(data.len() as u64);
        // The range is within `data`, whose length is a usize.
        let part = data.slice(range.start as usize..range.end as usize);
        let size = part.len() as u64;
        let body = if part.is_empty() {
            futures::stream::empty().boxed()
        } else {
            futures::stream::once(async move { Ok(part) }).boxed()
        };
        Ok(Read { size, body })
    }

    async fn write(
        &self,
        container: &str,
        name: &str,
        mut body: ByteStream,
    ) -> Result<u64, BlobError> {
        if !self.state().containers.contains_key(container) {
            return Err(missing(container));
        }
        let mut data = BytesMut::new();
        let collected = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                self.reserve(chunk.len() as u64)?;
                data.extend_from_slice(&chunk);
            }
            Ok(())
        }
        .await;
        let size = data.len() as u64;
        if let Err(e) = collected {
            self.release(size);
            return Err(e);
        }
        let mut state = self.state();
        let Some(found) = state.containers.get_mut(container) else {
            // Deleted while the object was being written.
            state.used = state.used.saturating_sub(size);
            return Err(missing(container));
        };
        let replaced = found.objects.insert(
            name.to_string(),
            Object {
                data: data.freeze(),
                created_at: unix_now(),
            },
        );
        if let Some(old) = replaced {
            state.used = state.used.saturating_sub(old.data.len() as u64);
        }
        Ok(size)
    }

    async fn delete_object(&self, container: &str, name: &str) -> Result<(), BlobError> {
        let mut state = self.state();
        let found = state
            .containers
            .get_mut(container)
            .ok_or_else(|| missing(container))?;
        if let Some(old) = found.objects.remove(name) {
            state.used = state.used.saturating_sub(old.data.len() as u64);
        }
        Ok(())
    }
}
