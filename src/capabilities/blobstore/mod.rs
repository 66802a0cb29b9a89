//! `wasi:blobstore@0.2.0-draft` for components, from stores the operator configures.
//!
//! `[blobstore.NAME]` tables define named stores, each on a backend ([`memory`], [`fs`],
//! [`nats`], [`s3`]) behind one trait ([`backend::Backend`]); a route names the one store its
//! component's containers live in. Everything a guest does goes through a [`Store`], which
//! enforces the names, sizes and counts the config allows, bounds every backend call by the
//! store's `timeout`, counts and times every operation (`wasmgate_blobstore_operations_total`,
//! `wasmgate_blobstore_operation_duration_seconds`, `wasmgate_blobstore_bytes_total`) and logs
//! backend failures; the backends only store. [`host`] is the interface itself: the resources a
//! guest holds and how its streams reach the backends.
//!
//! Objects stream in both directions with bounded buffers: a write holds at most
//! [`host::WRITE_BUFFER_BYTES`] between the guest and the backend (the guest's stream reports
//! no room until the backend has taken them), a read at most one chunk ahead of the guest. A request may have [`host::MAX_OPEN_VALUES`] outgoing values at once, so what one
//! request can make the host hold is bounded too.

pub mod backend;
pub mod fs;
pub mod host;
pub mod memory;
pub mod names;
pub mod nats;
pub mod s3;

use self::backend::{
    Backend, BlobError, ByteRange, ByteStream, ContainerInfo, Listing, ObjectInfo,
};
use crate::config::blobstore::{BlobBackend, BlobStoreConfig, DEFAULT_MEMORY_MAX_TOTAL_SIZE};
use crate::metrics::{BlobStoreMetrics, Metrics};
use anyhow::Context;
use futures::StreamExt;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Names a listing page holds at most.
pub const PAGE_SIZE: usize = 1000;

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    unix_seconds(SystemTime::now())
}

/// Seconds since the Unix epoch at `time` (0 before it).
pub fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// The operations a store counts and times, each its own `op` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    CreateContainer,
    GetContainer,
    DeleteContainer,
    ContainerExists,
    ListObjects,
    ObjectInfo,
    HasObject,
    GetData,
    WriteData,
    DeleteObject,
    Clear,
    CopyObject,
    MoveObject,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::CreateContainer => "create_container",
            Op::GetContainer => "get_container",
            Op::DeleteContainer => "delete_container",
            Op::ContainerExists => "container_exists",
            Op::ListObjects => "list_objects",
            Op::ObjectInfo => "object_info",
            Op::HasObject => "has_object",
            Op::GetData => "get_data",
            Op::WriteData => "write_data",
            Op::DeleteObject => "delete_object",
            Op::Clear => "clear",
            Op::CopyObject => "copy_object",
            Op::MoveObject => "move_object",
        }
    }
}

/// The `store` label of calls from a route that has no blob store.
pub const NO_STORE: &str = "(none)";

/// A named store: a backend, its limits and its metrics.
pub struct Store {
    name: Arc<str>,
    backend: Arc<dyn Backend>,
    max_object_size: u64,
    max_containers: u64,
    max_name_length: usize,
    timeout: Duration,
    metrics: BlobStoreMetrics,
}

/// Which way object bytes flow, the `direction` label.
#[derive(Debug, Clone, Copy)]
enum Direction {
    Read,
    Write,
}

impl Store {
    pub fn new(
        name: &str,
        config: &BlobStoreConfig,
        backend: Arc<dyn Backend>,
        metrics: &Metrics,
    ) -> Store {
        Store {
            name: name.into(),
            backend,
            max_object_size: config.max_object_size,
            max_containers: config.max_containers,
            max_name_length: config.max_name_length,
            timeout: config.timeout,
            metrics: metrics.blobstore().clone(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The backend's kind, as metrics label it.
    pub fn kind(&self) -> &'static str {
        self.backend.kind()
    }

    /// How long one backend step may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    fn check_name(&self, what: &str, name: &str) -> Result<(), BlobError> {
        if name.is_empty() {
            return Err(BlobError::Invalid(format!(
                "the {what} name must not be empty"
            )));
        }
        if name.len() > self.max_name_length {
            return Err(BlobError::Invalid(format!(
                "the {what} name is {} bytes, more than the store's limit of {} \
                 (max_name_length)",
                name.len(),
                self.max_name_length
            )));
        }
        Ok(())
    }

    /// Counts an operation that ended with `result`, and logs a backend failure.
    fn record<T>(&self, op: Op, started: Instant, result: &Result<T, BlobError>) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(e) => e.outcome(),
        };
        self.metrics
            .operations
            .with_label_values(&[&self.name, self.backend.kind(), op.as_str(), outcome])
            .inc();
        self.metrics
            .duration
            .with_label_values(&[self.backend.kind(), op.as_str()])
            .observe(started.elapsed().as_secs_f64());
        if let Err(BlobError::Unavailable(e)) = result {
            tracing::warn!(
                store = %self.name, backend = self.backend.kind(), op = op.as_str(), error = %e,
                "blobstore backend failed"
            );
        }
    }

    /// Runs a backend call within the store's timeout, with its metrics and logging.
    async fn run<T>(
        &self,
        op: Op,
        call: impl Future<Output = Result<T, BlobError>>,
    ) -> Result<T, BlobError> {
        let started = Instant::now();
        let result = match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(self.timed_out()),
        };
        self.record(op, started, &result);
        result
    }

    fn timed_out(&self) -> BlobError {
        BlobError::Unavailable(format!(
            "the {} backend did not answer within {} (the store's timeout)",
            self.backend.kind(),
            humantime::format_duration(self.timeout)
        ))
    }

    /// Counts bytes of object data.
    fn count_bytes(&self, direction: Direction, bytes: usize) {
        let direction = match direction {
            Direction::Read => "read",
            Direction::Write => "write",
        };
        self.metrics
            .bytes
            .with_label_values(&[&self.name, direction])
            .inc_by(bytes as u64);
    }

    pub async fn create_container(&self, container: &str) -> Result<ContainerInfo, BlobError> {
        self.check_name("container", container)?;
        self.run(Op::CreateContainer, async {
            let count = self.backend.container_count().await?;
            if count >= self.max_containers {
                return Err(BlobError::Invalid(format!(
                    "the store holds {count} containers, its limit (max_containers)"
                )));
            }
            self.backend.create_container(container).await?;
            self.backend.container_info(container).await
        })
        .await
    }

    /// The container's info; an error if it does not exist.
    pub async fn get_container(&self, container: &str) -> Result<ContainerInfo, BlobError> {
        self.check_name("container", container)?;
        self.run(Op::GetContainer, self.backend.container_info(container))
            .await
    }

    pub async fn container_exists(&self, container: &str) -> Result<bool, BlobError> {
        self.check_name("container", container)?;
        self.run(Op::ContainerExists, async {
            match self.backend.container_info(container).await {
                Ok(_) => Ok(true),
                Err(BlobError::NotFound(_)) => Ok(false),
                Err(e) => Err(e),
            }
        })
        .await
    }

    pub async fn delete_container(&self, container: &str) -> Result<(), BlobError> {
        self.check_name("container", container)?;
        self.run(
            Op::DeleteContainer,
            self.backend.delete_container(container),
        )
        .await
    }

    /// A page of the container's object names, after `cursor`.
    pub async fn list_objects(
        &self,
        container: &str,
        cursor: Option<&str>,
    ) -> Result<Listing, BlobError> {
        self.run(
            Op::ListObjects,
            self.backend.list_objects(container, cursor, PAGE_SIZE),
        )
        .await
    }

    pub async fn object_info(&self, container: &str, name: &str) -> Result<ObjectInfo, BlobError> {
        self.check_name("object", name)?;
        self.run(Op::ObjectInfo, self.backend.object_info(container, name))
            .await
    }

    pub async fn has_object(&self, container: &str, name: &str) -> Result<bool, BlobError> {
        self.check_name("object", name)?;
        self.run(Op::HasObject, async {
            match self.backend.object_info(container, name).await {
                Ok(_) => Ok(true),
                Err(BlobError::NotFound(what)) if what.starts_with("object") => Ok(false),
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// Opens `start..=end` of an object for reading. The returned stream counts the bytes it
    /// yields and fails if the backend stalls for longer than the store's timeout.
    pub async fn get_data(
        self: &Arc<Self>,
        container: &str,
        name: &str,
        start: u64,
        end: u64,
    ) -> Result<backend::Read, BlobError> {
        self.check_name("object", name)?;
        // A range that ends before it starts reads nothing, as one that starts past the end of
        // the object does (what wasmCloud's hosts do, so its components behave the same).
        // (`ByteRange::clamp` makes such a range empty.)
        let range = ByteRange { start, end };
        let started = Instant::now();
        let result = self.open_read(container, name, range).await;
        self.record(Op::GetData, started, &result);
        result
    }

    /// Opens a range of an object for reading, within the store's timeout; the stream counts
    /// the bytes it yields and fails if the backend stalls for longer than the timeout.
    async fn open_read(
        self: &Arc<Self>,
        container: &str,
        name: &str,
        range: ByteRange,
    ) -> Result<backend::Read, BlobError> {
        let read = self
            .timed(self.backend.read(container, name, range))
            .await?;
        let store = self.clone();
        let body = read
            .body
            .then(move |chunk| {
                if let Ok(bytes) = &chunk {
                    store.count_bytes(Direction::Read, bytes.len());
                }
                std::future::ready(chunk)
            })
            .boxed();
        Ok(backend::Read {
            size: read.size,
            body: with_stall_timeout(body, self.timeout, self.timed_out()),
        })
    }

    /// Writes an object from `body`, which ends when the guest finishes and fails when the
    /// guest abandons the value; the object is cut off (and not written) past
    /// `max_object_size`. Returns the object's size.
    pub async fn write_data(
        self: &Arc<Self>,
        container: &str,
        name: &str,
        body: ByteStream,
    ) -> Result<u64, BlobError> {
        let started = Instant::now();
        let result = async {
            self.check_name("object", name)?;
            self.write_body(container, name, body).await
        }
        .await;
        self.record(Op::WriteData, started, &result);
        result
    }

    /// Writes an object from `body`, cut off past `max_object_size`, counting its bytes; fails
    /// once the backend has held the write up for longer than the store's timeout.
    async fn write_body(
        self: &Arc<Self>,
        container: &str,
        name: &str,
        body: ByteStream,
    ) -> Result<u64, BlobError> {
        let limit = self.max_object_size;
        let store = self.clone();
        let mut written = 0u64;
        let body = body
            .map(move |chunk| {
                let bytes = chunk?;
                written += bytes.len() as u64;
                if written > limit {
                    return Err(BlobError::Invalid(format!(
                        "the object is larger than the store's limit of {limit} bytes \
                         (max_object_size): nothing was written"
                    )));
                }
                store.count_bytes(Direction::Write, bytes.len());
                Ok(bytes)
            })
            .boxed();
        let (body, progress) = Progress::watch(body);
        let write = self.backend.write(container, name, body);
        progress.bound(write, self.timeout, self.timed_out()).await
    }

    pub async fn delete_object(&self, container: &str, name: &str) -> Result<(), BlobError> {
        self.check_name("object", name)?;
        self.run(
            Op::DeleteObject,
            self.backend.delete_object(container, name),
        )
        .await
    }

    /// Deletes every object of the container, page by page.
    pub async fn clear(&self, container: &str) -> Result<(), BlobError> {
        let started = Instant::now();
        let result = async {
            loop {
                let page = self
                    .timed(self.backend.list_objects(container, None, PAGE_SIZE))
                    .await?;
                if page.names.is_empty() {
                    return Ok(());
                }
                for name in &page.names {
                    self.timed(self.backend.delete_object(container, name))
                        .await?;
                }
            }
        }
        .await;
        self.record(Op::Clear, started, &result);
        result
    }

    /// Copies an object; the destination is overwritten. The service copies it where it can
    /// (S3), within the store's timeout; otherwise it streams through the gateway, bounded per
    /// chunk as reads and writes are, and counted as both.
    pub async fn copy_object(
        self: &Arc<Self>,
        from: (&str, &str),
        to: (&str, &str),
        op: Op,
    ) -> Result<(), BlobError> {
        self.check_name("object", from.1)?;
        self.check_name("object", to.1)?;
        let started = Instant::now();
        let result = async {
            self.timed(self.backend.container_info(to.0)).await?;
            if from == to {
                return self
                    .timed(self.backend.object_info(from.0, from.1))
                    .await
                    .map(|_| ());
            }
            let in_service =
                tokio::time::timeout(self.timeout, self.backend.copy_in_service(from, to))
                    .await
                    .unwrap_or_else(|_| Some(Err(self.timed_out())));
            match in_service {
                Some(result) => result?,
                None => {
                    let whole = ByteRange {
                        start: 0,
                        end: u64::MAX,
                    };
                    let read = self.open_read(from.0, from.1, whole).await?;
                    self.write_body(to.0, to.1, read.body).await?;
                }
            }
            if op == Op::MoveObject {
                self.timed(self.backend.delete_object(from.0, from.1))
                    .await?;
            }
            Ok(())
        }
        .await;
        self.record(op, started, &result);
        result
    }

    /// A backend call within the store's timeout, counted by the caller.
    async fn timed<T>(
        &self,
        call: impl Future<Output = Result<T, BlobError>>,
    ) -> Result<T, BlobError> {
        tokio::time::timeout(self.timeout, call)
            .await
            .unwrap_or_else(|_| Err(self.timed_out()))
    }
}

/// A read stream whose every chunk must come within `timeout`.
fn with_stall_timeout(body: ByteStream, timeout: Duration, error: BlobError) -> ByteStream {
    futures::stream::unfold(Some(body), move |body| {
        let error = error.clone();
        async move {
            let mut body = body?;
            match tokio::time::timeout(timeout, body.next()).await {
                Ok(Some(chunk)) => Some((chunk, Some(body))),
                Ok(None) => None,
                Err(_) => Some((Err(error), None)),
            }
        }
    })
    .boxed()
}

/// Tells a write stalled in its backend from one waiting for its guest: the body records when
/// the backend last took a chunk and whether it is now waiting for the guest's next one.
struct Progress {
    state: Arc<std::sync::Mutex<ProgressState>>,
}

struct ProgressState {
    /// When the backend last took a chunk (or the write started).
    last: Instant,
    /// The backend is waiting for the guest, so time does not count against it.
    waiting_for_guest: bool,
}

impl Progress {
    /// Wraps `body` so that it reports progress.
    fn watch(mut body: ByteStream) -> (ByteStream, Progress) {
        let state = Arc::new(std::sync::Mutex::new(ProgressState {
            last: Instant::now(),
            waiting_for_guest: false,
        }));
        let shared = state.clone();
        let watched = futures::stream::poll_fn(move |cx| {
            let polled = body.poll_next_unpin(cx);
            let mut guard = shared
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            guard.waiting_for_guest = polled.is_pending();
            if polled.is_ready() {
                guard.last = Instant::now();
            }
            polled
        })
        .boxed();
        (watched, Progress { state })
    }

    /// Runs `write`, failing it with `error` once the backend has held up the write for longer
    /// than `timeout` (time the guest takes to send its next chunk does not count).
    async fn bound<T>(
        self,
        write: impl Future<Output = Result<T, BlobError>>,
        timeout: Duration,
        error: BlobError,
    ) -> Result<T, BlobError> {
        let watchdog = async {
            loop {
                tokio::time::sleep(timeout / 4).await;
                let guard = self
                    .state
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if !guard.waiting_for_guest && guard.last.elapsed() > timeout {
                    return;
                }
            }
        };
        tokio::select! {
            result = write => result,
            () = watchdog => Err(error),
        }
    }
}

/// Every configured store, with the definition it was built from.
#[derive(Default)]
pub struct Stores {
    stores: BTreeMap<String, Arc<Store>>,
    definitions: BTreeMap<String, BlobStoreConfig>,
}

impl Stores {
    /// What `wasmgate check` needs: the stores the config defines, checked, but none opened
    /// (each an empty in-memory one), so a check creates no directory and connects nowhere.
    pub fn unopened(config: &BTreeMap<String, BlobStoreConfig>, metrics: &Metrics) -> Stores {
        let stores = config
            .iter()
            .map(|(name, store)| {
                let backend: Arc<dyn Backend> =
                    Arc::new(memory::MemoryBackend::new(DEFAULT_MEMORY_MAX_TOTAL_SIZE));
                (
                    name.clone(),
                    Arc::new(Store::new(name, store, backend, metrics)),
                )
            })
            .collect();
        Stores {
            stores,
            definitions: config.clone(),
        }
    }

    /// The stores of a config, after `self` (a reload): a store whose definition did not
    /// change is kept as it is, with its connections and (for `memory`) its data.
    pub fn next(
        &self,
        config: &BTreeMap<String, BlobStoreConfig>,
        resolve: impl Fn(&std::path::Path) -> PathBuf,
        metrics: &Metrics,
    ) -> anyhow::Result<Stores> {
        let mut stores = BTreeMap::new();
        for (name, store) in config {
            if self.definitions.get(name) == Some(store)
                && let Some(kept) = self.stores.get(name)
            {
                stores.insert(name.clone(), kept.clone());
                continue;
            }
            let backend = open_backend(name, store, &resolve)
                .with_context(|| format!("[blobstore.{name}]"))?;
            stores.insert(
                name.clone(),
                Arc::new(Store::new(name, store, backend, metrics)),
            );
        }
        Ok(Stores {
            stores,
            definitions: config.clone(),
        })
    }

    /// The store a route names; an undefined name is an error (the config check catches it
    /// first).
    pub fn grant(&self, name: Option<&str>) -> anyhow::Result<Option<Arc<Store>>> {
        let Some(name) = name else {
            return Ok(None);
        };
        self.stores
            .get(name)
            .cloned()
            .map(Some)
            .with_context(|| format!("blobstore `{name}` is not defined"))
    }
}

/// The backend a store's definition asks for. Remote backends connect on first use, so a
/// gateway starts even while NATS or S3 is down.
fn open_backend(
    name: &str,
    store: &BlobStoreConfig,
    resolve: &impl Fn(&std::path::Path) -> PathBuf,
) -> anyhow::Result<Arc<dyn Backend>> {
    Ok(match store.backend {
        BlobBackend::Memory => Arc::new(memory::MemoryBackend::new(
            store
                .max_total_size
                .unwrap_or(DEFAULT_MEMORY_MAX_TOTAL_SIZE),
        )),
        BlobBackend::Fs => {
            let path = store.path.as_deref().context("an fs store needs `path`")?;
            Arc::new(fs::FsBackend::open(&resolve(path))?)
        }
        BlobBackend::Nats => {
            let url = store.url.as_deref().context("a nats store needs `url`")?;
            let prefix = store.prefix.clone().unwrap_or_else(|| {
                format!(
                    "wasmgate-{}",
                    names::encode(name, names::Escape::Underscore)
                )
            });
            Arc::new(nats::NatsBackend::new(url, &prefix, store.timeout))
        }
        BlobBackend::S3 => Arc::new(s3::S3Backend::new(store)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use bytes::Bytes;

    fn store_on(backend: Arc<dyn Backend>, timeout: &str) -> Arc<Store> {
        let config: BlobStoreConfig =
            toml::from_str(&format!("backend = \"memory\"\ntimeout = \"{timeout}\"\n")).unwrap();
        Arc::new(Store::new("test", &config, backend, &Metrics::new()))
    }

    /// A guest that sends a chunk, then thinks for `pause`, `count` times.
    fn slow_guest(count: usize, pause: Duration) -> ByteStream {
        futures::stream::unfold(0, move |sent| async move {
            if sent == count {
                return None;
            }
            tokio::time::sleep(pause).await;
            Some((Ok(Bytes::from_static(b"chunk")), sent + 1))
        })
        .boxed()
    }

    #[tokio::test]
    async fn a_guest_slower_than_the_timeout_is_not_a_stalled_backend() {
        let store = store_on(Arc::new(memory::MemoryBackend::new(1 << 20)), "100ms");
        store.create_container("c").await.unwrap();
        let size = store
            .write_data("c", "x", slow_guest(3, Duration::from_millis(250)))
            .await
            .unwrap();
        assert_eq!(size, 15);
    }

    /// A backend that takes the first chunk of a write and then never answers again.
    struct Stalls;

    #[async_trait]
    impl Backend for Stalls {
        fn kind(&self) -> &'static str {
            "stalls"
        }
        async fn container_count(&self) -> Result<u64, BlobError> {
            Ok(0)
        }
        async fn create_container(&self, _: &str) -> Result<(), BlobError> {
            Ok(())
        }
        async fn container_info(&self, _: &str) -> Result<ContainerInfo, BlobError> {
            Ok(ContainerInfo { created_at: 0 })
        }
        async fn delete_container(&self, _: &str) -> Result<(), BlobError> {
            Ok(())
        }
        async fn list_objects(
            &self,
            _: &str,
            _: Option<&str>,
            _: usize,
        ) -> Result<Listing, BlobError> {
            std::future::pending().await
        }
        async fn object_info(&self, _: &str, _: &str) -> Result<ObjectInfo, BlobError> {
            std::future::pending().await
        }
        async fn read(&self, _: &str, _: &str, _: ByteRange) -> Result<backend::Read, BlobError> {
            std::future::pending().await
        }
        async fn write(&self, _: &str, _: &str, mut body: ByteStream) -> Result<u64, BlobError> {
            let _ = body.next().await;
            std::future::pending().await
        }
        async fn delete_object(&self, _: &str, _: &str) -> Result<(), BlobError> {
            std::future::pending().await
        }
    }

    #[tokio::test]
    async fn a_stalled_backend_fails_the_write_and_every_call_within_the_timeout() {
        let store = store_on(Arc::new(Stalls), "200ms");
        let started = Instant::now();
        let error = store
            .write_data("c", "x", slow_guest(100, Duration::from_millis(1)))
            .await
            .unwrap_err();
        assert!(matches!(error, BlobError::Unavailable(_)), "{error}");
        assert!(error.to_string().contains("within 200ms"), "{error}");
        assert!(
            started.elapsed() < Duration::from_millis(600),
            "{:?}",
            started.elapsed()
        );
        let started = Instant::now();
        assert!(matches!(
            store.object_info("c", "x").await,
            Err(BlobError::Unavailable(_))
        ));
        assert!(matches!(
            store
                .copy_object(("c", "x"), ("c", "y"), Op::CopyObject)
                .await,
            Err(BlobError::Unavailable(_))
        ));
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn an_fs_write_given_up_on_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let backend = fs::FsBackend::open(dir.path()).unwrap();
        backend.create_container("c").await.unwrap();
        // A guest that sends one chunk and then nothing: the write is dropped mid-way.
        let body = futures::stream::once(async { Ok(Bytes::from_static(b"half")) })
            .chain(futures::stream::pending())
            .boxed();
        let given_up =
            tokio::time::timeout(Duration::from_millis(200), backend.write("c", "x", body)).await;
        assert!(given_up.is_err());
        let container = std::fs::read_dir(dir.path())
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(std::fs::read_dir(container.path()).unwrap().count(), 0);
    }
}
