//! The `nats` backend: NATS JetStream object stores, one bucket per container, for objects
//! shared by many gateway replicas.
//!
//! A container `C` of the store is the object store bucket `PREFIX_C`, with `C` encoded for the
//! bucket alphabet ([`names`], `_` escapes); object names need no encoding (the client encodes
//! them itself). Its creation time is the bucket's stream's.
//!
//! A put sends the object in chunks and then its metadata, which is the commit: an object
//! becomes visible whole, and an abandoned write stays invisible (its chunks so far stay in
//! the bucket's stream, unreferenced, until the container is deleted: JetStream's client
//! cannot remove them without knowing their id). The guest's chunks are regrouped into
//! [`CHUNK`]-byte ones first, because each read of the put's reader becomes one message. Of two
//! puts of one name at once, the one that commits last wins, whole; the loser's chunks stay
//! behind unreferenced (the client purges only the chunks of the object it saw when it
//! started).
//!
//! Reads fetch the object's chunks one at a time from the bucket's stream ([`Chunks`]), so a
//! read holds one chunk however slowly the guest takes them (the object store's own reader
//! buffers tens of MiB ahead). A range read starts at the range's chunk when the object's chunks
//! lie consecutively and full in the stream (as this backend writes them), else it walks the
//! chunks from the first, dropping those before the range. An open read of an object that is
//! deleted or overwritten meanwhile fails (its chunks are purged). The connection is made on first use
//! and shared ([`SharedConnection`]); every operation is bounded by the store's timeout.

use super::backend::{
    Backend, BlobError, ByteRange, ByteStream, ContainerInfo, Listing, ObjectInfo, Read,
};
use super::names::{self, Escape};
use super::unix_seconds;
use crate::capabilities::keyvalue::connect::SharedConnection;
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::object_store::{self, InfoErrorKind, ObjectStore};
use async_nats::jetstream::{self, ErrorCode};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

/// The size of the chunks a put sends (the client's default).
pub const CHUNK: usize = 128 << 10;

pub struct NatsBackend {
    url: String,
    prefix: String,
    timeout: Duration,
    context: SharedConnection<jetstream::Context>,
    /// Open object stores by bucket.
    buckets: Mutex<HashMap<String, ObjectStore>>,
}

impl NatsBackend {
    /// A backend whose containers are buckets named `PREFIX_...` on the server at `url`; does
    /// not connect yet.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> NatsBackend {
        NatsBackend {
            url: url.to_string(),
            prefix: prefix.to_string(),
            timeout,
            context: SharedConnection::new("nats", timeout),
            buckets: Mutex::default(),
        }
    }

    fn bucket(&self, container: &str) -> String {
        format!(
            "{}_{}",
            self.prefix,
            names::encode(container, Escape::Underscore)
        )
    }

    async fn context(&self) -> Result<jetstream::Context, BlobError> {
        let (url, timeout) = (self.url.clone(), self.timeout);
        self.context
            .get(move || async move {
                let client = async_nats::ConnectOptions::new()
                    .connection_timeout(timeout)
                    .request_timeout(Some(timeout))
                    .connect(url.as_str())
                    .await
                    .map_err(|e| {
                        crate::capabilities::keyvalue::backend::BackendError::Unavailable(format!(
                            "nats: {e}"
                        ))
                    })?;
                Ok(jetstream::ContextBuilder::new()
                    .timeout(timeout)
                    .build(client))
            })
            .await
            .map_err(|e| BlobError::Unavailable(e.to_string()))
    }

    fn cached(&self) -> std::sync::MutexGuard<'_, HashMap<String, ObjectStore>> {
        // Nothing panics while the lock is held.
        self.buckets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The container's bucket's stream info: its creation time, or `NotFound`.
    async fn stream_created(&self, container: &str) -> Result<u64, BlobError> {
        let context = self.context().await?;
        let stream = format!("OBJ_{}", self.bucket(container));
        match context.get_stream(&stream).await {
            Ok(stream) => Ok(unix_seconds(stream.cached_info().created.into())),
            Err(e) => match e.kind() {
                GetStreamErrorKind::JetStream(j)
                    if j.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                {
                    Err(missing_container(container))
                }
                _ => Err(BlobError::unavailable("nats: read the container", e)),
            },
        }
    }

    /// The container's object store.
    async fn store(&self, container: &str) -> Result<ObjectStore, BlobError> {
        let bucket = self.bucket(container);
        if let Some(store) = self.cached().get(&bucket) {
            return Ok(store.clone());
        }
        let context = self.context().await?;
        match context.get_object_store(&bucket).await {
            Ok(store) => {
                self.cached().insert(bucket, store.clone());
                Ok(store)
            }
            // Missing, or the server is down: the stream says which.
            Err(e) => {
                self.stream_created(container).await?;
                Err(BlobError::unavailable("nats: open the container", e))
            }
        }
    }
}

fn missing_container(container: &str) -> BlobError {
    BlobError::NotFound(format!("container `{container}`"))
}

fn missing_object(name: &str) -> BlobError {
    BlobError::NotFound(format!("object `{name}`"))
}

/// An object's chunks, fetched one at a time from its bucket's stream (direct gets), so a read
/// holds one chunk however slowly its reader goes, and a range read starts at the range's chunk
/// when it can find it without reading the ones before.
struct Chunks {
    stream: jetstream::stream::Stream,
    subject: String,
    /// The sequence of the next chunk, when the chunks are known to be consecutive; otherwise
    /// the sequence to look for the next chunk from.
    next: u64,
    consecutive: bool,
    /// The object offset of the next chunk's first byte.
    offset: u64,
    /// Bytes of the next chunk to drop (the range starts inside it).
    skip: u64,
}

impl Chunks {
    /// Positions a read at `start`. The chunks of an object are consecutive in the stream unless
    /// another put wrote between them; when they are, and all but the last are full (as this
    /// backend writes them), the chunk holding `start` is found by arithmetic.
    async fn locate(
        stream: jetstream::stream::Stream,
        bucket: &str,
        info: &object_store::ObjectInfo,
        start: u64,
    ) -> Result<Chunks, BlobError> {
        let failed = |e| BlobError::unavailable("nats: read the object", e);
        let subject = format!("$O.{bucket}.C.{}", info.nuid);
        let first = stream
            .direct_get_first_for_subject(subject.as_str())
            .await
            .map_err(failed)?;
        let mut chunks = Chunks {
            stream,
            subject,
            next: first.sequence,
            consecutive: false,
            offset: 0,
            skip: start,
        };
        let max = info
            .options
            .as_ref()
            .and_then(|o| o.max_chunk_size)
            .unwrap_or(CHUNK) as u64;
        if info.chunks > 1 && start >= max {
            let last = chunks
                .stream
                .direct_get_last_for_subject(chunks.subject.as_str())
                .await
                .map_err(failed)?;
            let count = info.chunks as u64;
            chunks.consecutive = last.sequence - first.sequence + 1 == count
                && info.size as u64 - last.payload.len() as u64 == (count - 1) * max;
            if chunks.consecutive {
                let index = start / max;
                chunks.next = first.sequence + index;
                chunks.offset = index * max;
                chunks.skip = start - chunks.offset;
            }
        }
        Ok(chunks)
    }

    /// The chunk at or after `next`.
    async fn fetch(&mut self) -> Result<Bytes, BlobError> {
        let message = if self.consecutive {
            self.stream.direct_get(self.next).await
        } else {
            self.stream
                .direct_get_next_for_subject(self.subject.as_str(), Some(self.next))
                .await
        };
        let message = message.map_err(|e| {
            BlobError::unavailable(
                "nats: read the object (deleted or overwritten while it was read?)",
                e,
            )
        })?;
        if message.subject.as_str() != self.subject {
            return Err(BlobError::Unavailable(
                "nats: the object changed while it was read".into(),
            ));
        }
        self.next = message.sequence + 1;
        Ok(message.payload)
    }

    /// The bytes up to `end` (exclusive), chunk by chunk.
    fn body(self, end: u64) -> ByteStream {
        futures::stream::try_unfold(self, move |mut chunks| async move {
            if chunks.offset >= end {
                return Ok(None);
            }
            let mut chunk = chunks.fetch().await?;
            if chunk.is_empty() {
                return Err(BlobError::Unavailable(
                    "nats: the object ended early".into(),
                ));
            }
            let at = chunks.offset;
            chunks.offset += chunk.len() as u64;
            let skip = usize::try_from(chunks.skip)
                .unwrap_or(usize::MAX)
                .min(chunk.len());
            chunks.skip -= skip as u64;
            let _ = chunk.split_to(skip);
            let keep = usize::try_from(end.saturating_sub(at + skip as u64)).unwrap_or(usize::MAX);
            chunk.truncate(keep);
            Ok(Some((chunk, chunks)))
        })
        .boxed()
    }
}

/// `body` regrouped into chunks of [`CHUNK`] bytes (the last one shorter).
fn rechunk(body: ByteStream) -> ByteStream {
    futures::stream::unfold(
        (Some(body), BytesMut::new()),
        |(body, mut pending)| async move {
            let mut body = body?;
            while pending.len() < CHUNK {
                match body.next().await {
                    Some(Ok(chunk)) => pending.extend_from_slice(&chunk),
                    Some(Err(e)) => return Some((Err(e), (None, BytesMut::new()))),
                    None => {
                        if pending.is_empty() {
                            return None;
                        }
                        let last = pending.split().freeze();
                        return Some((Ok(last), (None, pending)));
                    }
                }
            }
            let full = pending.split_to(CHUNK).freeze();
            Some((Ok(full), (Some(body), pending)))
        },
    )
    .boxed()
}

#[async_trait]
impl Backend for NatsBackend {
    fn kind(&self) -> &'static str {
        "nats"
    }

    async fn container_count(&self) -> Result<u64, BlobError> {
        let context = self.context().await?;
        let own = format!("OBJ_{}_", self.prefix);
        let names: Vec<String> = context
            .stream_names()
            .try_collect()
            .await
            .map_err(|e| BlobError::unavailable("nats: list the containers", e))?;
        Ok(names.iter().filter(|name| name.starts_with(&own)).count() as u64)
    }

    async fn create_container(&self, container: &str) -> Result<(), BlobError> {
        match self.stream_created(container).await {
            Ok(_) => return Err(BlobError::AlreadyExists(format!("container `{container}`"))),
            Err(BlobError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let context = self.context().await?;
        let bucket = self.bucket(container);
        let store = context
            .create_object_store(object_store::Config {
                bucket: bucket.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| BlobError::unavailable("nats: create the container", e))?;
        self.cached().insert(bucket, store);
        Ok(())
    }

    async fn container_info(&self, container: &str) -> Result<ContainerInfo, BlobError> {
        Ok(ContainerInfo {
            created_at: self.stream_created(container).await?,
        })
    }

    async fn delete_container(&self, container: &str) -> Result<(), BlobError> {
        self.stream_created(container).await?;
        let bucket = self.bucket(container);
        self.cached().remove(&bucket);
        let context = self.context().await?;
        context
            .delete_object_store(&bucket)
            .await
            .map_err(|e| BlobError::unavailable("nats: delete the container", e))
    }

    async fn list_objects(
        &self,
        container: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Listing, BlobError> {
        let store = self.store(container).await?;
        // The object store lists everything, unordered: sort, and page by name.
        let mut all: Vec<String> = store
            .list()
            .await
            .map_err(|e| BlobError::unavailable("nats: list the container", e))?
            .map_ok(|info| info.name)
            .try_collect()
            .await
            .map_err(|e| BlobError::unavailable("nats: list the container", e))?;
        all.sort_unstable();
        Ok(Listing::page_of(&all, cursor, limit))
    }

    async fn object_info(&self, container: &str, name: &str) -> Result<ObjectInfo, BlobError> {
        let store = self.store(container).await?;
        match store.info(name).await {
            Ok(info) if !info.deleted => Ok(ObjectInfo {
                size: info.size as u64,
                created_at: info.modified.map_or(0, |t| unix_seconds(t.into())),
            }),
            Ok(_) => Err(missing_object(name)),
            Err(e) if e.kind() == InfoErrorKind::NotFound => Err(missing_object(name)),
            Err(e) => Err(BlobError::unavailable("nats: read the object", e)),
        }
    }

    async fn read(&self, container: &str, name: &str, range: ByteRange) -> Result<Read, BlobError> {
        let store = self.store(container).await?;
        let info = match store.info(name).await {
            Ok(info) if !info.deleted => info,
            Ok(_) => return Err(missing_object(name)),
            Err(e) if e.kind() == InfoErrorKind::NotFound => return Err(missing_object(name)),
            Err(e) => return Err(BlobError::unavailable("nats: read the object", e)),
        };
        let part = range.clamp(info.size as u64);
        let size = part.end - part.start;
        if size == 0 {
            return Ok(Read {
                size,
                body: futures::stream::empty().boxed(),
            });
        }
        let context = self.context().await?;
        let bucket = self.bucket(container);
        let stream = context
            .get_stream(format!("OBJ_{bucket}"))
            .await
            .map_err(|e| BlobError::unavailable("nats: read the object", e))?;
        let chunks = Chunks::locate(stream, &bucket, &info, part.start).await?;
        Ok(Read {
            size,
            body: chunks.body(part.end),
        })
    }

    async fn write(&self, container: &str, name: &str, body: ByteStream) -> Result<u64, BlobError> {
        let store = self.store(container).await?;
        let mut reader = tokio_util::io::StreamReader::new(
            rechunk(body).map_err(|e: BlobError| std::io::Error::other(e)),
        );
        match store.put(name, &mut reader).await {
            Ok(info) => Ok(info.size as u64),
            Err(e) => {
                // The guest's side failed (abandoned, too large): say that, not "nats failed".
                let source = std::error::Error::source(&e)
                    .and_then(|s| s.downcast_ref::<std::io::Error>())
                    .and_then(|io| io.get_ref())
                    .and_then(|inner| inner.downcast_ref::<BlobError>());
                match source {
                    Some(guest) => Err(guest.clone()),
                    None => Err(BlobError::unavailable("nats: write the object", e)),
                }
            }
        }
    }

    async fn delete_object(&self, container: &str, name: &str) -> Result<(), BlobError> {
        let store = self.store(container).await?;
        match store.delete(name).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == object_store::DeleteErrorKind::NotFound => Ok(()),
            Err(e) => Err(BlobError::unavailable("nats: delete the object", e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn small_chunks_are_regrouped_into_full_ones() {
        let pieces: Vec<Result<Bytes, BlobError>> =
            (0..100).map(|_| Ok(Bytes::from(vec![7u8; 4096]))).collect();
        let chunks: Vec<Bytes> = rechunk(futures::stream::iter(pieces).boxed())
            .try_collect()
            .await
            .unwrap();
        let sizes: Vec<usize> = chunks.iter().map(Bytes::len).collect();
        assert_eq!(sizes, vec![CHUNK, CHUNK, CHUNK, 100 * 4096 - 3 * CHUNK]);
        let broken = futures::stream::iter(vec![
            Ok(Bytes::from_static(b"a")),
            Err(BlobError::Abandoned),
        ]);
        let result: Result<Vec<Bytes>, BlobError> = rechunk(broken.boxed()).try_collect().await;
        assert_eq!(result, Err(BlobError::Abandoned));
    }
}
