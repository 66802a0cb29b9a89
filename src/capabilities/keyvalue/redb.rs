//! The `redb` backend: an embedded, durable file, the default for one machine.
//!
//! Every store is a table in a redb database file; stores configured with the same `path` share
//! the file (a file can be opened only once per process). Each write is one write transaction,
//! and an increment or compare-and-swap is atomic because redb serializes write transactions.
//! redb is blocking, so every operation runs on the redb stores' own small thread pool
//! ([`BlockingPool`]: bounded, separate from tokio's blocking pool and its DNS lookups; an
//! operation that has not started within its queue wait is not done, one that started is
//! awaited, so a write is never reported failed and then committed).
//!
//! Durability is the store's choice (`sync_interval`):
//! * by default each commit is durable (fsync) before the guest's call returns, so a write the
//!   guest saw succeed survives a crash; throughput is bounded by the disk's fsync rate;
//! * with `sync_interval`, commits are non-durable (visible to every reader at once, not yet
//!   synced) and a [`Syncer`] thread makes them durable together with one empty durable commit,
//!   at most `sync_interval` later, and once more when the store is dropped. A crash loses at most
//!   the last interval's writes; the file is never corrupted (redb's commit protocol).

use super::backend::{
    Backend, BackendError, CounterRange, KeyPage, add_counter, page_from_sorted, parse_counter,
};
use super::pool::BlockingPool;
use anyhow::Context;
use async_trait::async_trait;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub struct RedbBackend {
    db: Arc<Database>,
    table: Arc<str>,
    /// Present when commits are non-durable and synced periodically.
    syncer: Option<Arc<Syncer>>,
    /// Where every operation runs.
    pool: Arc<BlockingPool>,
}

/// Threads of the pool all redb stores share: writes to a file take turns anyway (redb has one
/// write transaction at a time), reads can run side by side.
pub const POOL_THREADS: usize = 4;
/// Operations queued or running at once on that pool.
pub const POOL_QUEUE: usize = 256;
/// How long an operation may wait to start before it fails (and is never run).
pub const POOL_QUEUE_WAIT: Duration = Duration::from_secs(5);

/// The pool the redb stores of a process share.
pub fn pool() -> anyhow::Result<Arc<BlockingPool>> {
    Ok(Arc::new(BlockingPool::new(
        "redb",
        POOL_THREADS,
        POOL_QUEUE,
        POOL_QUEUE_WAIT,
    )?))
}

/// Opens (or creates) a database file.
pub fn open_database(path: &Path) -> anyhow::Result<Arc<Database>> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create directory {}", dir.display()))?;
    }
    let db = Database::create(path)
        .with_context(|| format!("cannot open redb file {}", path.display()))?;
    Ok(Arc::new(db))
}

fn storage(e: impl std::fmt::Display) -> BackendError {
    BackendError::Unavailable(format!("redb: {e}"))
}

impl RedbBackend {
    /// The store `name` in `db`; creates its table so reads of an empty store work. With
    /// `sync_interval`, writes are synced in the background (see the module docs). Operations
    /// run on `pool`.
    pub fn new(
        db: Arc<Database>,
        name: &str,
        sync_interval: Option<Duration>,
        pool: Arc<BlockingPool>,
    ) -> anyhow::Result<RedbBackend> {
        let table: Arc<str> = format!("kv:{name}").into();
        let txn = db
            .begin_write()
            .context("cannot start a redb transaction")?;
        txn.open_table(TableDefinition::<&str, &[u8]>::new(&table))
            .context("cannot create the store's table")?;
        txn.commit().context("cannot commit to redb")?;
        let syncer = sync_interval
            .map(|interval| Syncer::start(db.clone(), interval))
            .transpose()?;
        Ok(RedbBackend {
            db,
            table,
            syncer,
            pool,
        })
    }

    /// Runs a read on the pool.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::ReadOnlyTable<&str, &[u8]>) -> Result<T, BackendError> + Send + 'static,
    ) -> Result<T, BackendError> {
        let (db, table) = (self.db.clone(), self.table.clone());
        self.pool
            .run(move || {
                let txn = db.begin_read().map_err(storage)?;
                let table = txn
                    .open_table(TableDefinition::<&str, &[u8]>::new(&table))
                    .map_err(storage)?;
                f(&table)
            })
            .await
    }

    /// Runs a write transaction on the pool and commits it if `f` succeeds.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut redb::Table<&str, &[u8]>) -> Result<T, BackendError> + Send + 'static,
    ) -> Result<T, BackendError> {
        let (db, table) = (self.db.clone(), self.table.clone());
        let syncer = self.syncer.clone();
        self.pool
            .run(move || {
                let mut txn = db.begin_write().map_err(storage)?;
                if syncer.is_some() {
                    txn.set_durability(Durability::None).map_err(storage)?;
                }
                let result = {
                    let mut table = txn
                        .open_table(TableDefinition::<&str, &[u8]>::new(&table))
                        .map_err(storage)?;
                    f(&mut table)?
                };
                txn.commit().map_err(storage)?;
                if let Some(syncer) = &syncer {
                    syncer.dirty.store(true, Ordering::Release);
                }
                Ok(result)
            })
            .await
    }
}

/// Makes a database's non-durable commits durable, every interval and when dropped.
struct Syncer {
    db: Arc<Database>,
    /// A non-durable commit has happened since the last sync.
    dirty: AtomicBool,
}

impl Syncer {
    fn start(db: Arc<Database>, interval: Duration) -> anyhow::Result<Arc<Syncer>> {
        let syncer = Arc::new(Syncer {
            db,
            dirty: AtomicBool::new(false),
        });
        // The thread holds only a weak reference: once the store is dropped (and has synced one
        // last time, see `Drop`), its next wake-up finds nothing to upgrade and it ends.
        let weak = Arc::downgrade(&syncer);
        std::thread::Builder::new()
            .name("wasmgate-redb-sync".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(interval);
                    let Some(syncer) = weak.upgrade() else { return };
                    syncer.sync();
                }
            })
            .context("cannot start the redb sync thread")?;
        Ok(syncer)
    }

    /// One empty durable commit, which makes every earlier commit durable, if there were any.
    fn sync(&self) {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return;
        }
        let result = self.db.begin_write().map_err(storage).and_then(|mut txn| {
            txn.set_durability(Durability::Immediate).map_err(storage)?;
            txn.commit().map_err(storage)
        });
        if let Err(e) = result {
            self.dirty.store(true, Ordering::Release);
            tracing::warn!(error = %e, "cannot sync the redb store to disk; will retry");
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.sync();
    }
}

#[async_trait]
impl Backend for RedbBackend {
    fn kind(&self) -> &'static str {
        "redb"
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        let key = key.to_string();
        self.read(move |t| {
            Ok(t.get(key.as_str())
                .map_err(storage)?
                .map(|v| v.value().to_vec()))
        })
        .await
    }

    async fn set(&self, key: &str, value: &[u8]) -> Result<(), BackendError> {
        let (key, value) = (key.to_string(), value.to_vec());
        self.write(move |t| {
            t.insert(key.as_str(), value.as_slice()).map_err(storage)?;
            Ok(())
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), BackendError> {
        let key = key.to_string();
        self.write(move |t| {
            t.remove(key.as_str()).map_err(storage)?;
            Ok(())
        })
        .await
    }

    async fn exists(&self, key: &str) -> Result<bool, BackendError> {
        let key = key.to_string();
        self.read(move |t| Ok(t.get(key.as_str()).map_err(storage)?.is_some()))
            .await
    }

    async fn list_keys(&self, cursor: Option<&str>, limit: usize) -> Result<KeyPage, BackendError> {
        let cursor = cursor.map(str::to_string);
        self.read(move |t| {
            let start = match &cursor {
                Some(c) => Bound::Excluded(c.as_str()),
                None => Bound::Unbounded,
            };
            let mut keys = Vec::new();
            for entry in t
                .range::<&str>((start, Bound::Unbounded))
                .map_err(storage)?
                .take(limit + 1)
            {
                let (key, _) = entry.map_err(storage)?;
                keys.push(key.value().to_string());
            }
            Ok(page_from_sorted(keys, limit))
        })
        .await
    }

    async fn increment(
        &self,
        key: &str,
        delta: i64,
        range: CounterRange,
    ) -> Result<i64, BackendError> {
        let key = key.to_string();
        self.write(move |t| {
            let current = match t.get(key.as_str()).map_err(storage)? {
                Some(v) => parse_counter(v.value())?,
                None => 0,
            };
            let next = add_counter(current, delta, range)?;
            t.insert(key.as_str(), next.to_string().as_bytes())
                .map_err(storage)?;
            Ok(next)
        })
        .await
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool, BackendError> {
        let (key, expected, new) = (key.to_string(), expected.map(<[u8]>::to_vec), new.to_vec());
        self.write(move |t| {
            let current = t
                .get(key.as_str())
                .map_err(storage)?
                .map(|v| v.value().to_vec());
            if current != expected {
                return Ok(false);
            }
            t.insert(key.as_str(), new.as_slice()).map_err(storage)?;
            Ok(true)
        })
        .await
    }
}
