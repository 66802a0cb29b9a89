//! `wasi:keyvalue@0.2.0-draft` (store, atomics, batch): the version wasmCloud's and wasmtime's
//! components import. Its `list-keys` cursor is a `u64`; the gateway hands out numbers that stand
//! for string cursors kept in the bucket resource, so paging is exact here too.

use super::backend::CounterRange;
use super::{Bucket, HANDLE_BYTES, KvError, RequestState, Store, open};
use crate::metrics::Metrics;
use std::sync::Arc;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit/deps/keyvalue-0.2.0-draft",
        world: "wasi:keyvalue/imports",
        imports: { default: async | trappable },
        with: { "wasi:keyvalue/store.bucket": crate::capabilities::keyvalue::Bucket },
    });
}

use bindings::wasi::keyvalue::{atomics, batch, store};

/// What the host functions see of a request's store.
pub struct KeyValueView<'a> {
    pub table: &'a mut ResourceTable,
    /// The request's grants and what its handles hold.
    pub state: &'a mut RequestState,
    pub metrics: &'a Metrics,
}

struct Draft;

impl HasData for Draft {
    type Data<'a> = KeyValueView<'a>;
}

/// Adds the 0.2.0-draft interfaces to a linker.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> KeyValueView<'_>,
) -> anyhow::Result<()> {
    store::add_to_linker::<T, Draft>(linker, view)?;
    atomics::add_to_linker::<T, Draft>(linker, view)?;
    batch::add_to_linker::<T, Draft>(linker, view)?;
    Ok(())
}

fn error(e: KvError) -> store::Error {
    match e {
        KvError::AccessDenied => store::Error::AccessDenied,
        KvError::Other(text) => store::Error::Other(text),
    }
}

type Result<T> = wasmtime::Result<std::result::Result<T, store::Error>>;

impl KeyValueView<'_> {
    /// Opens a granted store as a new `bucket` resource (both interface versions).
    pub(super) fn open_bucket(
        &mut self,
        name: &str,
    ) -> wasmtime::Result<std::result::Result<Resource<Bucket>, KvError>> {
        let store = match open(&self.state.grants, name, self.metrics) {
            Ok(store) => store,
            Err(e) => return Ok(Err(e)),
        };
        if let Err(e) = self
            .state
            .hold(&store, HANDLE_BYTES, "another bucket handle")
        {
            return Ok(Err(e));
        }
        Ok(Ok(self.table.push(Bucket {
            store,
            cursors: Vec::new(),
            held: HANDLE_BYTES,
        })?))
    }

    /// Drops a `bucket` resource and what it held (both interface versions).
    pub(super) fn drop_bucket(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        let bucket = self.table.delete(bucket)?;
        self.state.release(&bucket.store, bucket.held);
        Ok(())
    }

    /// The store behind a `bucket` resource (both interface versions).
    pub(super) fn store_of(&self, bucket: &Resource<Bucket>) -> wasmtime::Result<Arc<Store>> {
        Ok(self.table.get(bucket)?.store.clone())
    }

    /// The store behind a `bucket` resource and the room left for a result from it.
    pub(super) fn store_and_room(
        &self,
        bucket: &Resource<Bucket>,
    ) -> wasmtime::Result<(Arc<Store>, usize)> {
        let store = self.store_of(bucket)?;
        let room = self.state.room(&store);
        Ok((store, room))
    }
}

impl store::Host for KeyValueView<'_> {
    async fn open(&mut self, identifier: String) -> Result<Resource<Bucket>> {
        Ok(self.open_bucket(&identifier)?.map_err(error))
    }
}

impl store::HostBucket for KeyValueView<'_> {
    async fn get(&mut self, bucket: Resource<Bucket>, key: String) -> Result<Option<Vec<u8>>> {
        let (store, room) = self.store_and_room(&bucket)?;
        Ok(store.get(&key, room).await.map_err(error))
    }

    async fn set(&mut self, bucket: Resource<Bucket>, key: String, value: Vec<u8>) -> Result<()> {
        let store = self.store_of(&bucket)?;
        Ok(store.set(&key, &value).await.map_err(error))
    }

    async fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> Result<()> {
        let store = self.store_of(&bucket)?;
        Ok(store.delete(&key).await.map_err(error))
    }

    async fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> Result<bool> {
        let store = self.store_of(&bucket)?;
        Ok(store.exists(&key).await.map_err(error))
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<u64>,
    ) -> Result<store::KeyResponse> {
        let open = self.table.get(&bucket)?;
        let store = open.store.clone();
        let after = match cursor {
            None => None,
            Some(n) => match usize::try_from(n)
                .ok()
                .and_then(|n| n.checked_sub(1))
                .and_then(|i| open.cursors.get(i))
            {
                Some(after) => Some(after.clone()),
                None => return Ok(Err(store::Error::Other(format!("unknown cursor {n}")))),
            },
        };
        let room = self.state.room(&store);
        let page = match store.list_keys(after.as_deref(), room).await {
            Ok(page) => page,
            Err(e) => return Ok(Err(error(e))),
        };
        let cursor = match page.cursor {
            Some(next) => {
                // The cursor stays in the bucket until it is dropped: it counts as held.
                let bytes = next.len();
                if let Err(e) = self.state.hold(&store, bytes, "another list-keys cursor") {
                    return Ok(Err(error(e)));
                }
                let open = self.table.get_mut(&bucket)?;
                open.cursors.push(next);
                open.held += bytes;
                Some(open.cursors.len() as u64)
            }
            None => None,
        };
        Ok(Ok(store::KeyResponse {
            keys: page.keys,
            cursor,
        }))
    }

    async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.drop_bucket(bucket)
    }
}

impl atomics::Host for KeyValueView<'_> {
    async fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: u64,
    ) -> Result<u64> {
        let store = self.store_of(&bucket)?;
        let Ok(delta) = i64::try_from(delta) else {
            return Ok(Err(store::Error::Other(
                "the delta is larger than a 64-bit signed counter".into(),
            )));
        };
        // The check that the counter stays unsigned comes before the write.
        Ok(
            match store
                .increment(&key, delta, CounterRange::NonNegative)
                .await
            {
                Ok(value) => u64::try_from(value)
                    .map_err(|_| store::Error::Other("the counter is negative".into())),
                Err(e) => Err(error(e)),
            },
        )
    }
}

impl batch::Host for KeyValueView<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, Vec<u8>)>>> {
        let (store, room) = self.store_and_room(&bucket)?;
        Ok(store
            .get_many(keys, room)
            .await
            .map(|values| values.into_iter().map(|(k, v)| v.map(|v| (k, v))).collect())
            .map_err(error))
    }

    async fn set_many(
        &mut self,
        bucket: Resource<Bucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Result<()> {
        let store = self.store_of(&bucket)?;
        Ok(store.set_many(key_values).await.map_err(error))
    }

    async fn delete_many(&mut self, bucket: Resource<Bucket>, keys: Vec<String>) -> Result<()> {
        let store = self.store_of(&bucket)?;
        Ok(store.delete_many(keys).await.map_err(error))
    }
}
