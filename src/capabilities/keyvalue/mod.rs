//! `wasi:keyvalue` for components, from stores the operator configures.
//!
//! `[keyvalue.NAME]` tables define named stores, each on a backend ([`memory`], [`redb`],
//! [`redis`], [`nats`]); a route lists the stores it may open. Everything a guest can do goes
//! through a [`Store`], which enforces the key and value size limits, counts and times every
//! operation (`wasmgate_keyvalue_operations_total`, `wasmgate_keyvalue_operation_duration_seconds`)
//! and logs backend failures; the backends only store.
//!
//! What the host holds for a guest lives outside the guest's `max_memory`, so it has bounds of
//! its own: a batch call names at most `max_batch_keys` keys, and one request's values in flight
//! (what a call returns) plus its open handles (buckets, 0.2.0-draft cursors, draft2 `cas`
//! values) stay within the store's `max_request_bytes`, tracked per request in [`RequestState`].
//! A call that would go past it fails with an error naming the setting, before more is copied.
//!
//! Two versions of the interface are served on the same stores, so components built for either
//! platform run unchanged: `wasi:keyvalue@0.2.0-draft` ([`draft`], what wasmCloud's and
//! wasmtime's components import) and `@0.2.0-draft2` ([`draft2`], what Spin's import).

pub mod backend;
pub(crate) mod connect;
pub mod draft;
pub mod draft2;
pub mod memory;
pub mod nats;
pub mod pool;
pub mod redb;
pub mod redis;

use self::backend::{Backend, BackendError, CounterRange, KeyPage};
use crate::config::{DEFAULT_MEMORY_MAX_TOTAL_SIZE, KeyValueBackend, KeyValueConfig};
use crate::metrics::{KeyValueOpMetrics, Metrics};
use anyhow::{Context, bail};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Keys a `list-keys` page holds at most.
pub const PAGE_SIZE: usize = 1000;

/// What a handle (a bucket or a `cas`) is counted as, besides the data it keeps.
pub const HANDLE_BYTES: usize = 64;

/// What a guest's keyvalue call can fail with, before it is put in a version's error type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvError {
    AccessDenied,
    Other(String),
}

impl From<BackendError> for KvError {
    fn from(e: BackendError) -> KvError {
        KvError::Other(e.to_string())
    }
}

/// A named store: a backend, its limits and its metrics.
pub struct Store {
    name: Arc<str>,
    backend: Arc<dyn Backend>,
    max_key_size: usize,
    max_value_size: usize,
    max_batch_keys: usize,
    max_request_bytes: usize,
    /// Metric handles by [`Op`], resolved when the store is built.
    ops: [KeyValueOpMetrics; Op::ALL.len()],
}

/// The operations a store counts and times, each its own `op` label.
#[derive(Debug, Clone, Copy)]
enum Op {
    Get,
    Set,
    Delete,
    Exists,
    ListKeys,
    Increment,
    CompareAndSwap,
}

impl Op {
    const ALL: [Op; 7] = [
        Op::Get,
        Op::Set,
        Op::Delete,
        Op::Exists,
        Op::ListKeys,
        Op::Increment,
        Op::CompareAndSwap,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Set => "set",
            Op::Delete => "delete",
            Op::Exists => "exists",
            Op::ListKeys => "list_keys",
            Op::Increment => "increment",
            Op::CompareAndSwap => "compare_and_swap",
        }
    }
}

/// The stores a route may open, by name. Cheap to clone into each request.
/// Every configured store is listed, `None` where the route may not open it, so that a refused
/// `open` can be counted by store name without letting a guest invent label values.
pub type Grants = Arc<HashMap<String, Option<Arc<Store>>>>;

/// The `store` label of a refused `open` of a name no `[keyvalue.NAME]` defines.
pub const UNDEFINED_STORE: &str = "(undefined)";

/// Every configured store, with the definition it was built from.
#[derive(Default)]
pub struct Stores {
    stores: BTreeMap<String, Arc<Store>>,
    definitions: BTreeMap<String, KeyValueConfig>,
    /// Open redb files by path: a file can be opened once per process.
    redb_files: HashMap<PathBuf, Arc<::redb::Database>>,
    redb_pool: Option<Arc<pool::BlockingPool>>,
}

impl Stores {
    /// What `wasmgate check` needs: the stores the config defines, checked, but none opened.
    /// Every store is an empty in-memory one, so a check never takes a redb file's lock (which
    /// a running gateway holds) or creates a data file.
    pub fn unopened(config: &BTreeMap<String, KeyValueConfig>, metrics: &Arc<Metrics>) -> Stores {
        let stores = config
            .iter()
            .map(|(name, store)| {
                let backend: Arc<dyn Backend> = Arc::new(memory::MemoryBackend::new(size(
                    DEFAULT_MEMORY_MAX_TOTAL_SIZE,
                )));
                (
                    name.clone(),
                    Arc::new(Store::new(name, store, backend, metrics)),
                )
            })
            .collect();
        Stores {
            stores,
            definitions: config.clone(),
            ..Stores::default()
        }
    }

    /// Builds the stores of the config. Remote backends connect on first use, so a gateway
    /// starts even while Redis or NATS is down.
    pub fn build(
        config: &BTreeMap<String, KeyValueConfig>,
        resolve: impl Fn(&std::path::Path) -> PathBuf,
        metrics: &Arc<Metrics>,
    ) -> anyhow::Result<Stores> {
        Stores::default().next(config, resolve, metrics)
    }

    /// The stores of a new config (a reload): a store whose definition did not change is kept
    /// as it is, with its connections and data; a new or changed one is built. Open redb files
    /// are shared, since a file can be opened only once per process.
    pub fn next(
        &self,
        config: &BTreeMap<String, KeyValueConfig>,
        resolve: impl Fn(&std::path::Path) -> PathBuf,
        metrics: &Arc<Metrics>,
    ) -> anyhow::Result<Stores> {
        let mut redb_files = self.redb_files.clone();
        let mut redb_pool = self.redb_pool.clone();
        let mut stores = BTreeMap::new();
        for (name, store) in config {
            if self.definitions.get(name) == Some(store)
                && let Some(kept) = self.stores.get(name)
            {
                stores.insert(name.clone(), kept.clone());
                continue;
            }
            let context = || format!("[keyvalue.{name}]");
            let backend: Arc<dyn Backend> = match store.backend {
                KeyValueBackend::Memory => Arc::new(memory::MemoryBackend::new(size(
                    store
                        .max_total_size
                        .unwrap_or(DEFAULT_MEMORY_MAX_TOTAL_SIZE),
                ))),
                KeyValueBackend::Redb => {
                    let path = resolve(
                        store
                            .path
                            .as_deref()
                            .context("a redb store needs `path`")
                            .with_context(context)?,
                    );
                    let db = match redb_files.get(&path) {
                        Some(db) => db.clone(),
                        None => {
                            let db = redb::open_database(&path).with_context(context)?;
                            redb_files.insert(path.clone(), db.clone());
                            db
                        }
                    };
                    let pool = match &redb_pool {
                        Some(pool) => pool.clone(),
                        None => redb_pool
                            .insert(redb::pool().context("cannot start the redb thread pool")?)
                            .clone(),
                    };
                    Arc::new(
                        redb::RedbBackend::new(db, name, store.sync_interval, pool)
                            .with_context(context)?,
                    )
                }
                KeyValueBackend::Redis => {
                    let url = store
                        .url
                        .as_deref()
                        .context("a redis store needs `url`")
                        .with_context(context)?;
                    let prefix = store
                        .prefix
                        .clone()
                        .unwrap_or_else(|| format!("wasmgate:{name}"));
                    Arc::new(redis::RedisBackend::new(url, &prefix).with_context(context)?)
                }
                KeyValueBackend::Nats => {
                    let url = store
                        .url
                        .as_deref()
                        .context("a nats store needs `url`")
                        .with_context(context)?;
                    let bucket = store.bucket.clone().unwrap_or_else(|| name.clone());
                    Arc::new(nats::NatsBackend::new(url, &bucket, store.create_bucket))
                }
            };
            stores.insert(
                name.clone(),
                Arc::new(Store::new(name, store, backend, metrics)),
            );
        }
        Ok(Stores {
            stores,
            definitions: config.clone(),
            redb_files,
            redb_pool,
        })
    }

    /// The grants of a route that lists `names`; an undefined name is an error.
    pub fn grants(&self, names: &[String]) -> anyhow::Result<Grants> {
        let mut grants: HashMap<String, Option<Arc<Store>>> = self
            .stores
            .keys()
            .map(|name| (name.clone(), None))
            .collect();
        for name in names {
            let Some(store) = self.stores.get(name) else {
                let defined: Vec<_> = self.stores.keys().map(String::as_str).collect();
                bail!(
                    "keyvalue store `{name}` is not defined (add a [keyvalue.{name}] table; defined: {})",
                    if defined.is_empty() {
                        "none".to_string()
                    } else {
                        defined.join(", ")
                    }
                );
            };
            grants.insert(name.clone(), Some(store.clone()));
        }
        Ok(Arc::new(grants))
    }
}

/// A size from the config as a `usize` (saturating on 32-bit targets).
fn size(bytes: u64) -> usize {
    usize::try_from(bytes).unwrap_or(usize::MAX)
}

/// The keyvalue side of one request: the stores its route may open, and the bytes its open
/// handles hold on the host, per store (for `max_request_bytes`).
pub struct RequestState {
    grants: Grants,
    held: HashMap<Arc<str>, usize>,
}

impl RequestState {
    pub fn new(grants: Grants) -> RequestState {
        RequestState {
            grants,
            held: HashMap::new(),
        }
    }

    /// What this request's handles on `store` hold.
    fn held(&self, store: &Store) -> usize {
        self.held.get(&store.name).copied().unwrap_or(0)
    }

    /// Room left for a call's result next to what the handles hold.
    pub fn room(&self, store: &Store) -> usize {
        store.max_request_bytes.saturating_sub(self.held(store))
    }

    /// Counts `bytes` for a handle until [`release`](Self::release), if they fit.
    pub fn hold(&mut self, store: &Store, bytes: usize, what: &str) -> Result<(), KvError> {
        if bytes > self.room(store) {
            return Err(store.over_request_bytes(what));
        }
        *self.held.entry(store.name.clone()).or_default() += bytes;
        Ok(())
    }

    /// Stops counting bytes that [`hold`](Self::hold) counted.
    pub fn release(&mut self, store: &Store, bytes: usize) {
        if let Some(held) = self.held.get_mut(&store.name) {
            *held = held.saturating_sub(bytes);
        }
    }
}

/// Opens a store for a guest: only stores granted to the route.
pub fn open(grants: &Grants, name: &str, metrics: &Metrics) -> Result<Arc<Store>, KvError> {
    match grants.get(name) {
        Some(Some(store)) => Ok(store.clone()),
        Some(None) => {
            metrics.keyvalue_operation(name, "none", "open", "denied");
            Err(KvError::AccessDenied)
        }
        None => {
            metrics.keyvalue_operation(UNDEFINED_STORE, "none", "open", "denied");
            Err(KvError::AccessDenied)
        }
    }
}

impl Store {
    fn new(
        name: &str,
        config: &KeyValueConfig,
        backend: Arc<dyn Backend>,
        metrics: &Arc<Metrics>,
    ) -> Store {
        Store {
            name: name.into(),
            ops: Op::ALL.map(|op| metrics.keyvalue_op(name, backend.kind(), op.as_str())),
            backend,
            max_key_size: size(config.max_key_size),
            max_value_size: size(config.max_value_size),
            max_batch_keys: size(config.max_batch_keys),
            max_request_bytes: size(config.max_request_bytes),
        }
    }

    fn check_key(&self, key: &str) -> Result<(), KvError> {
        if key.is_empty() {
            return Err(KvError::Other("the key must not be empty".into()));
        }
        if key.len() > self.max_key_size {
            return Err(KvError::Other(format!(
                "the key is {} bytes, more than the store's limit of {} bytes",
                key.len(),
                self.max_key_size
            )));
        }
        Ok(())
    }

    /// The error for a call that would hold more than `max_request_bytes` for its request.
    pub fn over_request_bytes(&self, what: &str) -> KvError {
        KvError::Other(format!(
            "{what} would take this request past the store's limit of {} bytes held at once \
             (max_request_bytes): ask for less at a time, or drop cas handles",
            self.max_request_bytes
        ))
    }

    /// Checks that a result of `bytes` fits in `room`.
    fn check_room(&self, bytes: usize, room: usize, what: &str) -> Result<(), KvError> {
        if bytes > room {
            return Err(self.over_request_bytes(what));
        }
        Ok(())
    }

    fn check_batch(&self, keys: usize) -> Result<(), KvError> {
        if keys > self.max_batch_keys {
            return Err(KvError::Other(format!(
                "the batch names {keys} keys, more than the store's limit of {} (max_batch_keys)",
                self.max_batch_keys
            )));
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<(), KvError> {
        if value.len() > self.max_value_size {
            return Err(KvError::Other(format!(
                "the value is {} bytes, more than the store's limit of {} bytes",
                value.len(),
                self.max_value_size
            )));
        }
        Ok(())
    }

    /// Runs a backend operation with its metrics and logging.
    async fn run<T>(
        &self,
        op: Op,
        f: impl Future<Output = Result<T, BackendError>>,
    ) -> Result<T, KvError> {
        let started = Instant::now();
        let result = f.await;
        let metrics = &self.ops[op as usize];
        metrics
            .duration
            .get()
            .observe(started.elapsed().as_secs_f64());
        match &result {
            Ok(_) => metrics.ok.get().inc(),
            Err(BackendError::Invalid(_)) => metrics.invalid.get().inc(),
            Err(BackendError::Unavailable(e)) => {
                metrics.error.get().inc();
                tracing::warn!(
                    store = %self.name, backend = self.backend.kind(), op = op.as_str(), error = %e,
                    "keyvalue backend failed"
                );
            }
        }
        result.map_err(KvError::from)
    }

    /// The value at `key`, if it fits in `room` bytes.
    pub async fn get(&self, key: &str, room: usize) -> Result<Option<Vec<u8>>, KvError> {
        let value = self.fetch(key).await?;
        let size = value.as_ref().map_or(0, Vec::len);
        self.check_room(size, room, "the value")?;
        Ok(value)
    }

    async fn fetch(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.check_key(key)?;
        self.run(Op::Get, self.backend.get(key)).await
    }

    pub async fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.check_key(key)?;
        self.check_value(value)?;
        self.run(Op::Set, self.backend.set(key, value)).await
    }

    pub async fn delete(&self, key: &str) -> Result<(), KvError> {
        self.check_key(key)?;
        self.run(Op::Delete, self.backend.delete(key)).await
    }

    pub async fn exists(&self, key: &str) -> Result<bool, KvError> {
        self.check_key(key)?;
        self.run(Op::Exists, self.backend.exists(key)).await
    }

    /// A page of keys, if it fits in `room` bytes.
    pub async fn list_keys(&self, cursor: Option<&str>, room: usize) -> Result<KeyPage, KvError> {
        let page = self
            .run(Op::ListKeys, self.backend.list_keys(cursor, PAGE_SIZE))
            .await?;
        let size: usize = page.keys.iter().map(String::len).sum::<usize>()
            + page.cursor.as_ref().map_or(0, String::len);
        self.check_room(size, room, "the page of keys")?;
        Ok(page)
    }

    pub async fn increment(
        &self,
        key: &str,
        delta: i64,
        range: CounterRange,
    ) -> Result<i64, KvError> {
        self.check_key(key)?;
        self.run(Op::Increment, self.backend.increment(key, delta, range))
            .await
    }

    pub async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool, KvError> {
        self.check_key(key)?;
        self.check_value(new)?;
        self.run(
            Op::CompareAndSwap,
            self.backend.compare_and_swap(key, expected, new),
        )
        .await
    }

    /// `get` for each key in order: each key with its value, if any; stops at the first error,
    /// and as soon as the values so far take more than `room` bytes.
    pub async fn get_many(
        &self,
        keys: Vec<String>,
        room: usize,
    ) -> Result<Vec<(String, Option<Vec<u8>>)>, KvError> {
        self.check_batch(keys.len())?;
        let mut values = Vec::with_capacity(keys.len());
        let mut left = room;
        for key in keys {
            let value = self.fetch(&key).await?;
            let size = key.len() + value.as_ref().map_or(0, Vec::len);
            left = left
                .checked_sub(size)
                .ok_or_else(|| self.over_request_bytes("the values of get-many"))?;
            values.push((key, value));
        }
        Ok(values)
    }

    /// `set` for each pair in order; stops at the first error.
    pub async fn set_many(&self, key_values: Vec<(String, Vec<u8>)>) -> Result<(), KvError> {
        self.check_batch(key_values.len())?;
        for (key, value) in key_values {
            self.set(&key, &value).await?;
        }
        Ok(())
    }

    /// `delete` for each key in order; stops at the first error.
    pub async fn delete_many(&self, keys: Vec<String>) -> Result<(), KvError> {
        self.check_batch(keys.len())?;
        for key in keys {
            self.delete(&key).await?;
        }
        Ok(())
    }
}

/// A `bucket` resource: an open store, plus the string cursors handed out as numbers to
/// 0.2.0-draft guests (whose cursors are `u64`).
pub struct Bucket {
    pub store: Arc<Store>,
    pub cursors: Vec<String>,
    /// The bytes counted for this handle in its request's [`RequestState`].
    held: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_opens_are_counted_by_defined_name_only() {
        let config: BTreeMap<String, KeyValueConfig> =
            toml::from_str("[mine]\nbackend = \"memory\"\n[theirs]\nbackend = \"memory\"\n")
                .unwrap();
        let metrics = Metrics::new();
        let stores = Stores::build(&config, |p| p.to_path_buf(), &metrics).unwrap();
        let grants = stores.grants(&["mine".to_string()]).unwrap();
        assert!(open(&grants, "mine", &metrics).is_ok());
        assert_eq!(
            open(&grants, "theirs", &metrics).err(),
            Some(KvError::AccessDenied)
        );
        for invented in ["a", "b", "c"] {
            assert_eq!(
                open(&grants, invented, &metrics).err(),
                Some(KvError::AccessDenied)
            );
        }
        let text = metrics.render();
        assert!(text.contains(r#"store="theirs""#), "{text}");
        assert!(
            text.contains(r#"op="open",outcome="denied",store="(undefined)"} 3"#),
            "{text}"
        );
        assert!(!text.contains(r#"store="a""#), "{text}");
    }
}
