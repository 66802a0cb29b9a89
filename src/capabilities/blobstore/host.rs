//! The `wasi:blobstore@0.2.0-draft` interfaces (`blobstore`, `container`, `types`), as a guest
//! sees them: its resources and how their streams reach a [`Store`].
//!
//! A write: `outgoing-value.new-outgoing-value` makes a channel with a budget of
//! [`WRITE_BUFFER_BYTES`]; the value's `output-stream` sends the guest's chunks into it;
//! `container.write-data` starts the store's write in a task of its own, reading from the
//! channel; `outgoing-value.finish` marks the end and waits for the write's outcome. The
//! stream has room only while the budget has, and the write gives budget back as the backend
//! takes chunks, so a slow backend slows the guest down rather than filling the host's memory.
//! A value dropped without `finish` closes the channel without its end mark, and the backend
//! discards what it had (nothing becomes visible). Bytes written before `write-data` (as some
//! wasmCloud examples do) wait in the channel; once they fill the budget the stream fails,
//! rather than wait for a `write-data` that is not coming.
//!
//! A read: `container.get-data` opens the range at the backend; `incoming-value` streams it
//! to the guest (`consume-async`), or collects it for `consume-sync`, up to the route's
//! `max_memory` (a guest could not hold more).
//!
//! The spec calls the value's `output-stream` a child resource that must be dropped before
//! `finish`; guests built with wasmCloud's bindings call `finish` with the stream still open,
//! so the stream is independent of the value here.

use super::backend::{BlobError, ByteStream, Read};
use super::{NO_STORE, Op, Store};
use crate::metrics::Metrics;
use bytes::Bytes;
use futures::StreamExt;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use tokio::sync::{Semaphore, TryAcquireError, mpsc, oneshot};
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, InputStream, OutputStream, Pollable};
use wasmtime_wasi::p2::{StreamError, StreamResult};

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit",
        world: "wasi:blobstore/imports@0.2.0-draft",
        imports: { default: async | trappable },
        with: {
            "wasi:io": wasmtime_wasi::p2::bindings::io,
            "wasi:blobstore/container.container": crate::capabilities::blobstore::host::Container,
            "wasi:blobstore/container.stream-object-names": crate::capabilities::blobstore::host::ObjectNames,
            "wasi:blobstore/types.outgoing-value": crate::capabilities::blobstore::host::OutgoingValue,
            "wasi:blobstore/types.incoming-value": crate::capabilities::blobstore::host::IncomingValue,
        },
    });
}

use bindings::wasi::blobstore::{blobstore, container, types};

/// Bytes a write holds between the guest and the backend.
pub const WRITE_BUFFER_BYTES: usize = 1 << 20;

/// The most bytes one guest write may carry (what `check-write` allows).
pub const WRITE_CHUNK: usize = 64 << 10;

/// Outgoing values one request may have at once, counting writes still running after their
/// value is gone. One more traps the guest (`new-outgoing-value` has no error to return).
pub const MAX_OPEN_VALUES: usize = 16;

/// Incoming values and name listings one request may have open at once (each may hold a file
/// or a connection).
pub const MAX_OPEN_READS: usize = 16;

/// Names one `read-stream-object-names` call returns at most.
const MAX_NAMES_PER_READ: u64 = super::PAGE_SIZE as u64;

/// The blobstore side of one request: the route's store, and what the request holds.
pub struct RequestState {
    store: Option<Arc<Store>>,
    /// Outgoing values, and the writes they started, not yet ended.
    writes: OpenCount,
    /// Incoming values and listings not yet dropped.
    reads: OpenCount,
    /// The most `consume-sync` collects: the route's `max_memory`.
    max_sync_read: u64,
}

impl RequestState {
    pub fn new(store: Option<Arc<Store>>, max_sync_read: u64) -> RequestState {
        RequestState {
            store,
            writes: OpenCount::default(),
            reads: OpenCount::default(),
            max_sync_read,
        }
    }
}

/// How many of something a request holds open; each is a [`Held`] that gives its place back
/// when it is dropped, wherever it went (a write's task outlives its value). The counter is
/// made on first use: most requests never touch a blob store.
#[derive(Default)]
struct OpenCount(std::sync::OnceLock<Arc<AtomicUsize>>);

struct Held(Arc<AtomicUsize>);

impl OpenCount {
    /// A place, if fewer than `max` are taken.
    fn take(&self, max: usize) -> Option<Held> {
        let count = self.0.get_or_init(Arc::default);
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Held(count.clone()))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the host functions see of a request.
pub struct BlobStoreView<'a> {
    pub table: &'a mut ResourceTable,
    pub state: &'a mut RequestState,
    pub metrics: &'a Metrics,
}

struct BlobStore;

impl HasData for BlobStore {
    type Data<'a> = BlobStoreView<'a>;
}

/// Adds the `wasi:blobstore@0.2.0-draft` interfaces to a linker.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> BlobStoreView<'_>,
) -> anyhow::Result<()> {
    blobstore::add_to_linker::<T, BlobStore>(linker, view)?;
    container::add_to_linker::<T, BlobStore>(linker, view)?;
    types::add_to_linker::<T, BlobStore>(linker, view)?;
    Ok(())
}

/// A `container` resource: a store and a container name in it.
pub struct Container {
    store: Arc<Store>,
    name: String,
    created_at: u64,
}

/// A `stream-object-names` resource: a listing, fetched a page at a time.
pub struct ObjectNames {
    _held: Held,
    store: Arc<Store>,
    container: String,
    buffered: VecDeque<String>,
    /// Where the next page starts; `None` with `listed` set: no more pages.
    cursor: Option<String>,
    listed: bool,
}

/// What a value's stream, the value and its write share.
struct ValueState {
    /// Room in the channel, in bytes: taken by the stream's writes, given back as the write
    /// reads chunks.
    budget: Arc<Semaphore>,
    /// `write-data` took the channel's receiving end.
    attached: AtomicBool,
    /// `finish` was called, or the value dropped: no more writes.
    closed: AtomicBool,
}

/// One message from a guest's value to its write.
enum Chunk {
    Data(Bytes),
    /// The guest called `finish`: the object is complete.
    End,
    /// The guest dropped the value: the write is abandoned (its stream may still be open).
    Abandon,
}

/// Where a started write reports how it ended: the object's size, or why it failed.
type WriteOutcome = oneshot::Receiver<std::result::Result<u64, BlobError>>;

/// An `outgoing-value` resource.
pub struct OutgoingValue {
    tx: mpsc::UnboundedSender<Chunk>,
    /// Until `write-data` takes it.
    rx: Option<mpsc::UnboundedReceiver<Chunk>>,
    stream_taken: bool,
    state: Arc<ValueState>,
    /// Its place among the request's writes; goes to the write's task with `write-data`.
    held: Option<Held>,
    /// The write's outcome, once `write-data` started it.
    outcome: Option<(Arc<Store>, WriteOutcome)>,
}

/// An `incoming-value` resource: a range of an object, open at the backend.
pub struct IncomingValue {
    read: Read,
    held: Held,
}

fn too_many_reads() -> String {
    format!(
        "the guest holds {MAX_OPEN_READS} incoming-values and object-name streams, the most a \
         request may have open at once: drop one first"
    )
}

/// The error a call from a route without a blob store gets, counted.
fn denied(metrics: &Metrics, op: Op) -> String {
    metrics
        .blobstore()
        .operations
        .with_label_values(&[NO_STORE, "none", op.as_str(), "denied"])
        .inc();
    "access denied: this route has no blob store (name one with `blobstore = \"NAME\"` on the \
     route)"
        .to_string()
}

type Result<T> = wasmtime::Result<std::result::Result<T, String>>;

fn text(e: BlobError) -> String {
    e.to_string()
}

impl BlobStoreView<'_> {
    fn store(&self, op: Op) -> std::result::Result<Arc<Store>, String> {
        self.state
            .store
            .clone()
            .ok_or_else(|| denied(self.metrics, op))
    }

    fn container(&self, container: &Resource<Container>) -> wasmtime::Result<(Arc<Store>, String)> {
        let found = self.table.get(container)?;
        Ok((found.store.clone(), found.name.clone()))
    }

    /// A `container` resource for a container the store just created or found.
    fn container_handle(
        &mut self,
        store: Arc<Store>,
        name: String,
        info: std::result::Result<super::backend::ContainerInfo, BlobError>,
    ) -> Result<Resource<Container>> {
        match info {
            Ok(info) => Ok(Ok(self.table.push(Container {
                store,
                name,
                created_at: info.created_at,
            })?)),
            Err(e) => Ok(Err(text(e))),
        }
    }

    async fn copy(&mut self, src: types::ObjectId, dest: types::ObjectId, op: Op) -> Result<()> {
        let store = match self.store(op) {
            Ok(store) => store,
            Err(e) => return Ok(Err(e)),
        };
        Ok(store
            .copy_object(
                (&src.container, &src.object),
                (&dest.container, &dest.object),
                op,
            )
            .await
            .map_err(text))
    }
}

impl blobstore::Host for BlobStoreView<'_> {
    async fn create_container(&mut self, name: String) -> Result<Resource<Container>> {
        let store = match self.store(Op::CreateContainer) {
            Ok(store) => store,
            Err(e) => return Ok(Err(e)),
        };
        let info = store.create_container(&name).await;
        self.container_handle(store, name, info)
    }

    async fn get_container(&mut self, name: String) -> Result<Resource<Container>> {
        let store = match self.store(Op::GetContainer) {
            Ok(store) => store,
            Err(e) => return Ok(Err(e)),
        };
        let info = store.get_container(&name).await;
        self.container_handle(store, name, info)
    }

    async fn delete_container(&mut self, name: String) -> Result<()> {
        let store = match self.store(Op::DeleteContainer) {
            Ok(store) => store,
            Err(e) => return Ok(Err(e)),
        };
        Ok(store.delete_container(&name).await.map_err(text))
    }

    async fn container_exists(&mut self, name: String) -> Result<bool> {
        let store = match self.store(Op::ContainerExists) {
            Ok(store) => store,
            Err(e) => return Ok(Err(e)),
        };
        Ok(store.container_exists(&name).await.map_err(text))
    }

    async fn copy_object(&mut self, src: types::ObjectId, dest: types::ObjectId) -> Result<()> {
        self.copy(src, dest, Op::CopyObject).await
    }

    async fn move_object(&mut self, src: types::ObjectId, dest: types::ObjectId) -> Result<()> {
        self.copy(src, dest, Op::MoveObject).await
    }
}

impl container::Host for BlobStoreView<'_> {}

impl container::HostContainer for BlobStoreView<'_> {
    async fn name(&mut self, container: Resource<Container>) -> Result<String> {
        Ok(Ok(self.table.get(&container)?.name.clone()))
    }

    async fn info(&mut self, container: Resource<Container>) -> Result<types::ContainerMetadata> {
        let found = self.table.get(&container)?;
        Ok(Ok(types::ContainerMetadata {
            name: found.name.clone(),
            created_at: found.created_at,
        }))
    }

    async fn get_data(
        &mut self,
        container: Resource<Container>,
        name: String,
        start: u64,
        end: u64,
    ) -> Result<Resource<IncomingValue>> {
        let (store, container) = self.container(&container)?;
        let Some(held) = self.state.reads.take(MAX_OPEN_READS) else {
            return Ok(Err(too_many_reads()));
        };
        match store.get_data(&container, &name, start, end).await {
            Ok(read) => Ok(Ok(self.table.push(IncomingValue { read, held })?)),
            Err(e) => Ok(Err(text(e))),
        }
    }

    async fn write_data(
        &mut self,
        container: Resource<Container>,
        name: String,
        data: Resource<OutgoingValue>,
    ) -> Result<()> {
        let (store, container) = self.container(&container)?;
        let value = self.table.get_mut(&data)?;
        let Some(rx) = value.rx.take() else {
            return Ok(Err(
                "this outgoing-value is already being written (write-data was called for it)"
                    .to_string(),
            ));
        };
        value.state.attached.store(true, Ordering::Release);
        let (done_tx, done_rx) = oneshot::channel();
        value.outcome = Some((store.clone(), done_rx));
        let budget = value.state.budget.clone();
        let body = value_body(rx, budget.clone());
        let held = value.held.take();
        tokio::spawn(async move {
            // The write counts among the request's until it ends, even if its value is gone.
            let _held = held;
            let result = store.write_data(&container, &name, body).await;
            // No more room will come: a stream waiting for it wakes up and finds the channel
            // closed.
            budget.close();
            let _ = done_tx.send(result);
        });
        Ok(Ok(()))
    }

    async fn list_objects(
        &mut self,
        container: Resource<Container>,
    ) -> Result<Resource<ObjectNames>> {
        let (store, container) = self.container(&container)?;
        let Some(held) = self.state.reads.take(MAX_OPEN_READS) else {
            return Ok(Err(too_many_reads()));
        };
        // The first page now: a container that does not exist fails here, not later.
        let page = match store.list_objects(&container, None).await {
            Ok(page) => page,
            Err(e) => return Ok(Err(text(e))),
        };
        Ok(Ok(self.table.push(ObjectNames {
            _held: held,
            store,
            container,
            buffered: page.names.into(),
            cursor: page.cursor,
            listed: true,
        })?))
    }

    async fn delete_object(&mut self, container: Resource<Container>, name: String) -> Result<()> {
        let (store, container) = self.container(&container)?;
        Ok(store.delete_object(&container, &name).await.map_err(text))
    }

    async fn delete_objects(
        &mut self,
        container: Resource<Container>,
        names: Vec<String>,
    ) -> Result<()> {
        let (store, container) = self.container(&container)?;
        for name in names {
            if let Err(e) = store.delete_object(&container, &name).await {
                return Ok(Err(text(e)));
            }
        }
        Ok(Ok(()))
    }

    async fn has_object(&mut self, container: Resource<Container>, name: String) -> Result<bool> {
        let (store, container) = self.container(&container)?;
        Ok(store.has_object(&container, &name).await.map_err(text))
    }

    async fn object_info(
        &mut self,
        container: Resource<Container>,
        name: String,
    ) -> Result<types::ObjectMetadata> {
        let (store, container) = self.container(&container)?;
        Ok(store
            .object_info(&container, &name)
            .await
            .map(|info| types::ObjectMetadata {
                name,
                container,
                created_at: info.created_at,
                size: info.size,
            })
            .map_err(text))
    }

    async fn clear(&mut self, container: Resource<Container>) -> Result<()> {
        let (store, container) = self.container(&container)?;
        Ok(store.clear(&container).await.map_err(text))
    }

    async fn drop(&mut self, container: Resource<Container>) -> wasmtime::Result<()> {
        self.table.delete(container)?;
        Ok(())
    }
}

impl ObjectNames {
    /// Buffers names until `wanted` are there or the listing ends.
    async fn fill(&mut self, wanted: usize) -> std::result::Result<(), BlobError> {
        while self.buffered.len() < wanted && (!self.listed || self.cursor.is_some()) {
            let page = self
                .store
                .list_objects(&self.container, self.cursor.as_deref())
                .await?;
            self.listed = true;
            self.buffered.extend(page.names);
            self.cursor = page.cursor;
        }
        Ok(())
    }

    fn at_end(&self) -> bool {
        self.buffered.is_empty() && self.listed && self.cursor.is_none()
    }
}

impl container::HostStreamObjectNames for BlobStoreView<'_> {
    async fn read_stream_object_names(
        &mut self,
        names: Resource<ObjectNames>,
        len: u64,
    ) -> Result<(Vec<String>, bool)> {
        let names = self.table.get_mut(&names)?;
        let wanted = len.min(MAX_NAMES_PER_READ) as usize;
        if let Err(e) = names.fill(wanted).await {
            return Ok(Err(text(e)));
        }
        let take = wanted.min(names.buffered.len());
        let read: Vec<String> = names.buffered.drain(..take).collect();
        Ok(Ok((read, names.at_end())))
    }

    async fn skip_stream_object_names(
        &mut self,
        names: Resource<ObjectNames>,
        num: u64,
    ) -> Result<(u64, bool)> {
        let names = self.table.get_mut(&names)?;
        let mut skipped = 0u64;
        while skipped < num {
            let wanted = (num - skipped).min(MAX_NAMES_PER_READ) as usize;
            if let Err(e) = names.fill(wanted).await {
                return Ok(Err(text(e)));
            }
            let take = wanted.min(names.buffered.len());
            if take == 0 {
                break;
            }
            names.buffered.drain(..take);
            skipped += take as u64;
        }
        Ok(Ok((skipped, names.at_end())))
    }

    async fn drop(&mut self, names: Resource<ObjectNames>) -> wasmtime::Result<()> {
        self.table.delete(names)?;
        Ok(())
    }
}

impl types::Host for BlobStoreView<'_> {}

impl types::HostOutgoingValue for BlobStoreView<'_> {
    async fn new_outgoing_value(&mut self) -> wasmtime::Result<Resource<OutgoingValue>> {
        let Some(held) = self.state.writes.take(MAX_OPEN_VALUES) else {
            // The interface gives this function no error to return.
            return Err(wasmtime::format_err!(
                "the guest holds {MAX_OPEN_VALUES} unfinished outgoing-values or writes, the \
                 most a request may have at once: finish or drop one first"
            ));
        };
        // Unbounded in chunks, bounded in bytes by the budget.
        let (tx, rx) = mpsc::unbounded_channel();
        Ok(self.table.push(OutgoingValue {
            tx,
            rx: Some(rx),
            stream_taken: false,
            state: Arc::new(ValueState {
                budget: Arc::new(Semaphore::new(WRITE_BUFFER_BYTES)),
                attached: AtomicBool::new(false),
                closed: AtomicBool::new(false),
            }),
            held: Some(held),
            outcome: None,
        })?)
    }

    async fn outgoing_value_write_body(
        &mut self,
        value: Resource<OutgoingValue>,
    ) -> wasmtime::Result<std::result::Result<Resource<DynOutputStream>, ()>> {
        let value = self.table.get_mut(&value)?;
        if value.stream_taken {
            return Ok(Err(()));
        }
        value.stream_taken = true;
        let writer: DynOutputStream = Box::new(ValueWriter {
            tx: value.tx.clone(),
            state: value.state.clone(),
        });
        Ok(Ok(self.table.push(writer)?))
    }

    async fn finish(&mut self, value: Resource<OutgoingValue>) -> Result<()> {
        let value = self.table.delete(value)?;
        value.state.closed.store(true, Ordering::Release);
        let Some((store, outcome)) = value.outcome else {
            return Ok(Err(
                "the value was never given to container.write-data, so there is nothing to \
                 finish"
                    .to_string(),
            ));
        };
        // The end mark waits for room behind the chunks already sent, as they do; a write
        // that already failed has closed the channel, and its outcome says why.
        let _ = value.tx.send(Chunk::End);
        drop(value.tx);
        // No timeout of its own: the store fails a write whose backend stalls for longer than
        // its timeout, so the outcome comes, and it is the truth (a write reported failed is
        // never committed later).
        drop(store);
        match outcome.await {
            Ok(result) => Ok(result.map(|_| ()).map_err(text)),
            Err(_) => Ok(Err("the write ended without an outcome".to_string())),
        }
    }

    async fn drop(&mut self, value: Resource<OutgoingValue>) -> wasmtime::Result<()> {
        // Dropped without `finish`: the write (if one started) is abandoned now, even if the
        // value's stream is still open, and the stream takes no more.
        let value = self.table.delete(value)?;
        value.state.closed.store(true, Ordering::Release);
        let _ = value.tx.send(Chunk::Abandon);
        Ok(())
    }
}

impl types::HostIncomingValue for BlobStoreView<'_> {
    async fn incoming_value_consume_sync(
        &mut self,
        value: Resource<IncomingValue>,
    ) -> Result<Vec<u8>> {
        let IncomingValue { read, held: _held } = self.table.delete(value)?;
        if read.size > self.state.max_sync_read {
            return Ok(Err(format!(
                "the value is {} bytes, more than the route's max_memory ({} bytes) allows to \
                 read at once: read it with incoming-value-consume-async",
                read.size, self.state.max_sync_read
            )));
        }
        let mut body = read.body;
        // One copy on the host: the list handed to the guest.
        let mut data = Vec::with_capacity(usize::try_from(read.size).unwrap_or(0));
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(chunk) => data.extend_from_slice(&chunk),
                Err(e) => return Ok(Err(text(e))),
            }
        }
        Ok(Ok(data))
    }

    async fn incoming_value_consume_async(
        &mut self,
        value: Resource<IncomingValue>,
    ) -> Result<Resource<DynInputStream>> {
        let IncomingValue { read, held } = self.table.delete(value)?;
        let reader: DynInputStream = Box::new(ValueReader {
            _held: held,
            body: read.body,
            buffer: Bytes::new(),
            end: ReadEnd::Open,
        });
        Ok(Ok(self.table.push(reader)?))
    }

    async fn size(&mut self, value: Resource<IncomingValue>) -> wasmtime::Result<u64> {
        Ok(self.table.get(&value)?.read.size)
    }

    async fn drop(&mut self, value: Resource<IncomingValue>) -> wasmtime::Result<()> {
        self.table.delete(value)?;
        Ok(())
    }
}

/// What a write reads from a value's channel: the chunks, ending at the end mark; a channel
/// that closes without it (the value was dropped) is an abandoned write.
fn value_body(rx: mpsc::UnboundedReceiver<Chunk>, budget: Arc<Semaphore>) -> ByteStream {
    futures::stream::unfold(Some(rx), move |rx| {
        let budget = budget.clone();
        async move {
            let mut rx = rx?;
            match rx.recv().await {
                Some(Chunk::Data(bytes)) => {
                    budget.add_permits(bytes.len());
                    Some((Ok(bytes), Some(rx)))
                }
                Some(Chunk::End) => None,
                Some(Chunk::Abandon) => Some((Err(BlobError::Abandoned), None)),
                None => Some((Err(BlobError::Abandoned), None)),
            }
        }
    })
    .boxed()
}

/// The `output-stream` of an outgoing value.
struct ValueWriter {
    tx: mpsc::UnboundedSender<Chunk>,
    state: Arc<ValueState>,
}

impl ValueWriter {
    fn stopped() -> StreamError {
        StreamError::LastOperationFailed(wasmtime::format_err!(
            "the blob write stopped (outgoing-value.finish says why)"
        ))
    }
}

#[async_trait::async_trait]
impl Pollable for ValueWriter {
    async fn ready(&mut self) {
        // Until `write-data`, nothing drains the channel: a full one would never get room.
        if self.state.attached.load(Ordering::Acquire) && !self.tx.is_closed() {
            // Room for a whole chunk, given back at once: check-write then grants it.
            let _ = self.state.budget.acquire_many(WRITE_CHUNK as u32).await;
        }
    }
}

#[async_trait::async_trait]
impl OutputStream for ValueWriter {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        if self.state.closed.load(Ordering::Acquire) {
            return Err(StreamError::Closed);
        }
        if bytes.len() > WRITE_CHUNK {
            return Err(StreamError::trap(
                "write of more bytes than check-write allowed",
            ));
        }
        if bytes.is_empty() {
            return Ok(());
        }
        let room = match self.state.budget.try_acquire_many(bytes.len() as u32) {
            Ok(room) => room,
            // The write ended (failed) since check-write: say so, as the next check would.
            Err(TryAcquireError::Closed) => return Err(Self::stopped()),
            Err(TryAcquireError::NoPermits) => {
                return Err(StreamError::trap(
                    "write without room (check-write said less)",
                ));
            }
        };
        // Given back by the write when it reads the chunk.
        room.forget();
        self.tx
            .send(Chunk::Data(bytes))
            .map_err(|_| Self::stopped())
    }

    fn flush(&mut self) -> StreamResult<()> {
        // Chunks go to the write as they are written; there is nothing to flush.
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        if self.state.closed.load(Ordering::Acquire) {
            return Err(StreamError::Closed);
        }
        if self.tx.is_closed() {
            return Err(Self::stopped());
        }
        let room = self.state.budget.available_permits().min(WRITE_CHUNK);
        if room == 0 && !self.state.attached.load(Ordering::Acquire) {
            return Err(StreamError::LastOperationFailed(wasmtime::format_err!(
                "{WRITE_BUFFER_BYTES} bytes were written before container.write-data was called \
                 for this value, as many as wait for it: call write-data first"
            )));
        }
        Ok(room)
    }
}

/// How a value's read ended.
enum ReadEnd {
    Open,
    Closed,
    Failed(BlobError),
}

/// The `input-stream` of an incoming value: one chunk ahead of the guest.
struct ValueReader {
    /// Its place among the request's open reads.
    _held: Held,
    body: ByteStream,
    buffer: Bytes,
    end: ReadEnd,
}

#[async_trait::async_trait]
impl Pollable for ValueReader {
    async fn ready(&mut self) {
        while self.buffer.is_empty() && matches!(self.end, ReadEnd::Open) {
            match self.body.next().await {
                Some(Ok(chunk)) => self.buffer = chunk,
                Some(Err(e)) => self.end = ReadEnd::Failed(e),
                None => self.end = ReadEnd::Closed,
            }
        }
    }
}

#[async_trait::async_trait]
impl InputStream for ValueReader {
    fn read(&mut self, size: usize) -> StreamResult<Bytes> {
        if !self.buffer.is_empty() {
            let take = size.min(self.buffer.len());
            return Ok(self.buffer.split_to(take));
        }
        match &self.end {
            ReadEnd::Open => Ok(Bytes::new()),
            ReadEnd::Closed => Err(StreamError::Closed),
            ReadEnd::Failed(e) => Err(StreamError::LastOperationFailed(wasmtime::format_err!(
                "{e}"
            ))),
        }
    }
}
