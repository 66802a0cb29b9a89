//! `wasi:keyvalue@0.2.0-draft2` (store, atomics with compare-and-swap, batch): the version Spin's
//! components import. Cursors are strings; `cas` captures a key's value when it is created, and
//! `swap` succeeds only if the value is still that one, else it hands back a fresh `cas`.

use super::draft::KeyValueView;
use super::{Bucket, KvError};
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

/// A `cas` resource: a key and the value it had when the handle was made.
pub struct Cas {
    store: Arc<super::Store>,
    key: String,
    seen: Option<Vec<u8>>,
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
        let store = self.store_of(&bucket)?;
        Ok(store.get(&key).await.map_err(error))
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
        let store = self.store_of(&bucket)?;
        Ok(store
            .list_keys(cursor.as_deref())
            .await
            .map(|page| store::KeyResponse {
                keys: page.keys,
                cursor: page.cursor,
            })
            .map_err(error))
    }

    async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::HostCas for KeyValueView<'_> {
    async fn new(&mut self, bucket: Resource<Bucket>, key: String) -> Result<Resource<Cas>> {
        let store = self.store_of(&bucket)?;
        let seen = match store.get(&key).await {
            Ok(seen) => seen,
            Err(e) => return Ok(Err(error(e))),
        };
        Ok(Ok(self.table.push(Cas { store, key, seen })?))
    }

    async fn current(&mut self, cas: Resource<Cas>) -> Result<Option<Vec<u8>>> {
        Ok(Ok(self.table.get(&cas)?.seen.clone()))
    }

    async fn drop(&mut self, cas: Resource<Cas>) -> wasmtime::Result<()> {
        self.table.delete(cas)?;
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
        Ok(store.increment(&key, delta).await.map_err(error))
    }

    async fn swap(
        &mut self,
        cas: Resource<Cas>,
        value: Vec<u8>,
    ) -> wasmtime::Result<std::result::Result<(), atomics::CasError>> {
        let Cas { store, key, seen } = self.table.delete(cas)?;
        match store.compare_and_swap(&key, seen.as_deref(), &value).await {
            Ok(true) => Ok(Ok(())),
            Ok(false) => {
                // Someone else changed it: hand back a handle on the value as it is now.
                let seen = match store.get(&key).await {
                    Ok(seen) => seen,
                    Err(e) => return Ok(Err(atomics::CasError::StoreError(error(e)))),
                };
                let fresh = self.table.push(Cas { store, key, seen })?;
                Ok(Err(atomics::CasError::CasFailed(fresh)))
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
        let store = self.store_of(&bucket)?;
        Ok(store.get_many(keys).await.map_err(error))
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
