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
//! Object stores have no ranged read: a range read reads the object from its start and
//! discards what comes before the range, chunk by chunk (so the store's timeout applies per
//! chunk, not to the skipping as a whole). An open read of an object that is deleted or
//! overwritten meanwhile fails (its chunks are purged). The connection is made on first use
//! and shared ([`SharedConnection`]); every operation is bounded by the store's timeout.

use super::backend::{
    Backend, BlobError, ByteRange, ByteStream, ContainerInfo, Listing, ObjectInfo, Read,
};
use super::names::{self, Escape};
use super::unix_seconds;
use crate::capabilities::keyvalue::connect::SharedConnection;
use async_nats::jetstream::context::GetStreamErrorKind;
use async_nats::jetstream::object_store::{self, GetErrorKind, InfoErrorKind, ObjectStore};
use async_nats::jetstream::{self, ErrorCode};
use async_trait::async_trait;
use bytes::BytesMut;
use futures::{StreamExt, TryStreamExt};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::AsyncReadExt;

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

/// `body` without its first `skip` bytes: the chunks before them come out empty (an empty
/// chunk is nothing to a reader, but it is progress to a per-chunk timeout).
fn skip_bytes(body: ByteStream, skip: u64) -> ByteStream {
    let mut left = skip;
    body.map_ok(move |mut chunk| {
        let drop = usize::try_from(left).unwrap_or(usize::MAX).min(chunk.len());
        left -= drop as u64;
        let _ = chunk.split_to(drop);
        chunk
    })
    .boxed()
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
        let object = match store.get(name).await {
            Ok(object) => object,
            Err(e) if e.kind() == GetErrorKind::NotFound => return Err(missing_object(name)),
            Err(e) => return Err(BlobError::unavailable("nats: read the object", e)),
        };
        let part = range.clamp(object.info.size as u64);
        let size = part.end - part.start;
        // No ranged reads: the object from its start, the bytes before the range dropped. Every
        // chunk is an item of the stream, skipped or not, so the caller's per-chunk timeout
        // applies to each (a read whose chunks were purged by an overwrite would otherwise wait
        // for ever).
        let chunks = tokio_util::io::ReaderStream::with_capacity(object.take(part.end), CHUNK)
            .map_err(|e| BlobError::unavailable("nats: read the object", e));
        let body = if size == 0 {
            futures::stream::empty().boxed()
        } else {
            skip_bytes(chunks.boxed(), part.start)
        };
        Ok(Read { size, body })
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
    use bytes::Bytes;

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

    #[tokio::test]
    async fn skipping_drops_whole_chunks_and_a_part_of_one() {
        let chunks: Vec<Result<Bytes, BlobError>> =
            vec![Ok("abc".into()), Ok("def".into()), Ok("ghi".into())];
        let read: Vec<Bytes> = skip_bytes(futures::stream::iter(chunks).boxed(), 4)
            .try_collect()
            .await
            .unwrap();
        assert_eq!(
            read,
            vec![Bytes::new(), Bytes::from("ef"), Bytes::from("ghi")]
        );
    }
}
