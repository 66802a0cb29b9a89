//! `wasi:keyvalue@0.2.0-draft2` (store, atomics with compare-and-swap, batch): the version Spin's
//! components import. Cursors are strings; `cas` captures a key's value when it is created, and
//! `swap` succeeds only if the value is still that one, else it hands back a fresh `cas`.

use super::backend::CounterRange;
use super::draft::KeyValueView;
use super::{Bucket, HANDLE_BYTES, KvError};
use std::sync::Arc;
use wasmtime::component::{HasData, Linker, Resource};

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit/deps/keyvalue-0.2.0-draft2",
        world: "wasi:keyvalue/imports",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": crate::capabilities::keyvalue::Bucket,
            "wasi:keyvalue/atomics.cas": crate::capabilities::keyvalue::draft2::Cas,
        },
    });
}

use bindings::wasi::keyvalue::{atomics, batch, store};

/// A `cas` resource: a key and the value it had when the handle was made. Its bytes count
/// against the request's `max_request_bytes` until it is dropped or swapped.
pub struct Cas {
    store: Arc<super::Store>,
    key: String,
    seen: Option<Vec<u8>>,
}

impl Cas {
    fn bytes(&self) -> usize {
        HANDLE_BYTES + self.key.len() + self.seen.as_ref().map_or(0, Vec::len)
    }
}

impl KeyValueView<'_> {
    /// Makes a `cas` handle on `key`'s current value, if the request has room to hold it.
    async fn new_cas(
        &mut self,
        store: Arc<super::Store>,
        key: String,
    ) -> wasmtime::Result<std::result::Result<Resource<Cas>, KvError>> {
        // Read whole (one value, at most what the store holds), then kept only if it fits.
        let seen = match store.fetch(&key).await {
            Ok(seen) => seen,
            Err(e) => return Ok(Err(e)),
        };
        let cas = Cas { store, key, seen };
        if let Err(e) = self
            .state
            .hold(&cas.store, cas.bytes(), "another cas handle")
        {
            return Ok(Err(e));
        }
        Ok(Ok(self.table.push(cas)?))
    }

    /// Drops a `cas` resource and stops counting its bytes.
    fn take_cas(&mut self, cas: Resource<Cas>) -> wasmtime::Result<Cas> {
        let cas = self.table.delete(cas)?;
        self.state.release(&cas.store, cas.bytes());
        Ok(cas)
    }
}

struct Draft2;

impl HasData for Draft2 {
    type Data<'a> = KeyValueView<'a>;
}

/// Adds the 0.2.0-draft2 interfaces to a linker.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> KeyValueView<'_>,
) -> anyhow::Result<()> {
    store::add_to_linker::<T, Draft2>(linker, view)?;
    atomics::add_to_linker::<T, Draft2>(linker, view)?;
    batch::add_to_linker::<T, Draft2>(linker, view)?;
    Ok(())
}

fn error(e: KvError) -> store::Error {
    match e {
        KvError::AccessDenied => store::Error::AccessDenied,
        KvError::Other(text) => store::Error::Other(text),
    }
}

type Result<T> = wasmtime::Result<std::result::Result<T, store::Error>>;

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
        cursor: Option<String>,
    ) -> Result<store::KeyResponse> {
        let (store, room) = self.store_and_room(&bucket)?;
        Ok(store
            .list_keys(cursor.as_deref(), room)
            .await
            .map(|page| store::KeyResponse {
                keys: page.keys,
                cursor: page.cursor,
            })
            .map_err(error))
    }

    async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.drop_bucket(bucket)
    }
}

impl atomics::HostCas for KeyValueView<'_> {
    async fn new(&mut self, bucket: Resource<Bucket>, key: String) -> Result<Resource<Cas>> {
        let store = self.store_of(&bucket)?;
        Ok(self.new_cas(store, key).await?.map_err(error))
    }

    async fn current(&mut self, cas: Resource<Cas>) -> Result<Option<Vec<u8>>> {
        let cas = self.table.get(&cas)?;
        // The copy handed to the guest is held next to the handle's own.
        let size = cas.seen.as_ref().map_or(0, Vec::len);
        if size > self.state.room(&cas.store) {
            return Ok(Err(error(cas.store.over_request_bytes("the cas value"))));
        }
        Ok(Ok(cas.seen.clone()))
    }

    async fn drop(&mut self, cas: Resource<Cas>) -> wasmtime::Result<()> {
        self.take_cas(cas)?;
        Ok(())
    }
}

impl atomics::Host for KeyValueView<'_> {
    async fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: i64,
    ) -> Result<i64> {
        let store = self.store_of(&bucket)?;
        Ok(store
            .increment(&key, delta, CounterRange::Any)
            .await
            .map_err(error))
    }

    async fn swap(
        &mut self,
        cas: Resource<Cas>,
        value: Vec<u8>,
    ) -> wasmtime::Result<std::result::Result<(), atomics::CasError>> {
        let Cas { store, key, seen } = self.take_cas(cas)?;
        match store.compare_and_swap(&key, seen.as_deref(), &value).await {
            Ok(true) => Ok(Ok(())),
            Ok(false) => {
                // Someone else changed it: hand back a handle on the value as it is now.
                drop(seen);
                Ok(Err(match self.new_cas(store, key).await? {
                    Ok(fresh) => atomics::CasError::CasFailed(fresh),
                    Err(e) => atomics::CasError::StoreError(error(e)),
                }))
            }
            Err(e) => Ok(Err(atomics::CasError::StoreError(error(e)))),
        }
    }
}

impl batch::Host for KeyValueView<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<Bucket>,
        keys: Vec<String>,
    ) -> Result<Vec<(String, Option<Vec<u8>>)>> {
        let (store, room) = self.store_and_room(&bucket)?;
        Ok(store.get_many(keys, room).await.map_err(error))
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
