//! The `s3` backend: an S3-compatible service (AWS, MinIO, SeaweedFS, R2, ...) through the
//! `object_store` crate, with path-style addressing.
//!
//! A store is one bucket, which must exist; each container is a key prefix in it:
//! `PREFIX/CONTAINER/NAME`, where CONTAINER and NAME are encoded ([`super::names`]) so that any
//! name is one valid key segment. A container exists while its marker object
//! `PREFIX/CONTAINER/.container` does (its time is the container's creation time); no encoded
//! name starts with `.`, so the marker is never an object.
//!
//! Objects up to [`PART_SIZE`] are sent with one `PUT` once the guest finishes; larger ones as a
//! multipart upload, [`PART_SIZE`] parts with at most [`PARTS_IN_FLIGHT`] in flight (so a write
//! holds at most that many parts in memory), completed when the guest finishes and aborted when
//! it does not. Either way S3 makes the object visible whole, at the end. Listing pages with
//! S3's continuation tokens; a range read asks S3 for that range only.

use super::backend::{
    Backend, BlobError, ByteRange, ByteStream, ContainerInfo, Listing, ObjectInfo, Read,
};
use super::names::{self, Escape};
use crate::capabilities::config_store::expand_env;
use crate::config::blobstore::BlobStoreConfig;
use anyhow::Context;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::list::{PaginatedListOptions, PaginatedListStore};
use object_store::path::Path;
use object_store::{
    ClientOptions, GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
    WriteMultipart,
};
use std::time::Duration;

/// The size of a multipart upload's parts (S3's minimum, but for the last part).
pub const PART_SIZE: usize = 5 << 20;

/// Parts of one upload sent at once.
const PARTS_IN_FLIGHT: usize = 2;

/// The marker object of a container.
const MARKER: &str = ".container";

pub struct S3Backend {
    s3: AmazonS3,
    /// The key prefix of every container, without a trailing `/`; may be empty.
    prefix: String,
    bucket: String,
}

impl S3Backend {
    /// A backend on the store's bucket; connects on first use.
    pub fn new(config: &BlobStoreConfig) -> anyhow::Result<S3Backend> {
        let bucket = config
            .bucket
            .clone()
            .context("an s3 store needs `bucket`")?;
        let env = |name: &str| std::env::var(name).ok();
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(&bucket)
            .with_region(config.region.as_deref().unwrap_or("us-east-1"))
            .with_virtual_hosted_style_request(false)
            .with_retry(RetryConfig {
                max_retries: 2,
                retry_timeout: config.timeout,
                ..RetryConfig::default()
            })
            // The store bounds each call and each chunk of a streamed one by its own timeout; a
            // timeout over a whole request would cut long reads and writes.
            .with_client_options(
                ClientOptions::new()
                    .with_timeout_disabled()
                    .with_connect_timeout(config.timeout.min(Duration::from_secs(5)))
                    .with_allow_http(
                        config
                            .endpoint
                            .as_deref()
                            .is_some_and(|e| e.starts_with("http://")),
                    ),
            );
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        if let (Some(key), Some(secret)) = (&config.access_key_id, &config.secret_access_key) {
            builder = builder
                .with_access_key_id(expand_env(key, env).context("access_key_id")?)
                .with_secret_access_key(expand_env(secret, env).context("secret_access_key")?);
        }
        let s3 = builder.build().context("cannot set up the S3 client")?;
        let prefix = config
            .prefix
            .as_deref()
            .unwrap_or("")
            .trim_matches('/')
            .to_string();
        if !prefix.is_empty() {
            Path::parse(&prefix)
                .with_context(|| format!("prefix `{prefix}` is not a valid key"))?;
        }
        Ok(S3Backend { s3, prefix, bucket })
    }

    /// The key prefix of a container, ending in `/`.
    fn container_prefix(&self, container: &str) -> String {
        let container = names::encode(container, Escape::Percent);
        if self.prefix.is_empty() {
            format!("{container}/")
        } else {
            format!("{}/{container}/", self.prefix)
        }
    }

    fn key(&self, container: &str, leaf: &str) -> Result<Path, BlobError> {
        let key = format!("{}{leaf}", self.container_prefix(container));
        Path::parse(&key).map_err(|e| BlobError::Invalid(format!("not a valid S3 key: {e}")))
    }

    fn object_key(&self, container: &str, name: &str) -> Result<Path, BlobError> {
        self.key(container, &names::encode(name, Escape::Percent))
    }

    fn marker(&self, container: &str) -> Result<Path, BlobError> {
        self.key(container, MARKER)
    }

    /// The container must exist.
    async fn check_container(&self, container: &str) -> Result<(), BlobError> {
        self.container_info(container).await.map(|_| ())
    }

    /// Every key under a container, marker included.
    fn keys(
        &self,
        container: &str,
    ) -> Result<futures::stream::BoxStream<'static, object_store::Result<Path>>, BlobError> {
        let prefix = Path::parse(self.container_prefix(container).trim_end_matches('/'))
            .map_err(|e| BlobError::Invalid(format!("not a valid S3 key: {e}")))?;
        Ok(self
            .s3
            .list(Some(&prefix))
            .map_ok(|meta| meta.location)
            .boxed())
    }
}

/// An `object_store` error as a backend error. A 404 outside a lookup (a bucket that does not
/// exist, say) is the service failing, not a missing object: the lookups match `NotFound`
/// themselves.
fn failed(what: &str, error: object_store::Error) -> BlobError {
    BlobError::unavailable(format!("s3: {what}"), error)
}

/// A lookup's error: a missing key is `not_found`.
fn lookup_failed(
    what: &str,
    found: impl FnOnce() -> String,
    error: object_store::Error,
) -> BlobError {
    match error {
        object_store::Error::NotFound { .. } => BlobError::NotFound(found()),
        other => failed(what, other),
    }
}

/// A multipart upload that is aborted unless it was completed: also when the write is given up
/// on (the store drops a write whose backend stalls), so no parts are left behind.
struct Upload(Option<WriteMultipart>);

impl Upload {
    fn writer(&mut self) -> &mut WriteMultipart {
        // Present until `finish` or `abort` takes it, and both consume the upload.
        self.0.as_mut().expect("the upload is under way")
    }

    async fn finish(mut self) -> object_store::Result<()> {
        match self.0.take() {
            Some(writer) => writer.finish().await.map(|_| ()),
            None => Ok(()),
        }
    }

    async fn abort(mut self) {
        if let Some(writer) = self.0.take()
            && let Err(e) = writer.abort().await
        {
            tracing::warn!(error = %e, "s3: could not abort an abandoned upload");
        }
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if let Some(writer) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                if let Err(e) = writer.abort().await {
                    tracing::warn!(error = %e, "s3: could not abort an abandoned upload");
                }
            });
        }
    }
}

fn missing_container(container: &str) -> impl FnOnce() -> String + '_ {
    move || format!("container `{container}`")
}

fn missing_object(name: &str) -> impl FnOnce() -> String + '_ {
    move || format!("object `{name}`")
}

/// When an object was last written, in seconds since the Unix epoch.
fn written_at(meta: &object_store::ObjectMeta) -> u64 {
    u64::try_from(meta.last_modified.timestamp()).unwrap_or(0)
}

#[async_trait]
impl Backend for S3Backend {
    fn kind(&self) -> &'static str {
        "s3"
    }

    async fn container_count(&self) -> Result<u64, BlobError> {
        let prefix = (!self.prefix.is_empty())
            .then(|| Path::parse(&self.prefix))
            .transpose()
            .map_err(|e| BlobError::Invalid(e.to_string()))?;
        let listed = self
            .s3
            .list_with_delimiter(prefix.as_ref())
            .await
            .map_err(|e| failed("list the containers", e))?;
        Ok(listed.common_prefixes.len() as u64)
    }

    async fn create_container(&self, container: &str) -> Result<(), BlobError> {
        let marker = self.marker(container)?;
        let options = object_store::PutOptions {
            mode: object_store::PutMode::Create,
            ..Default::default()
        };
        match self
            .s3
            .put_opts(&marker, PutPayload::from_static(b""), options)
            .await
        {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => {
                Err(BlobError::AlreadyExists(format!("container `{container}`")))
            }
            // Services without conditional writes: look first (racy, but only between two
            // creators of one name, who then both succeed).
            Err(object_store::Error::NotImplemented { .. })
            | Err(object_store::Error::NotSupported { .. }) => {
                if self.s3.head(&marker).await.is_ok() {
                    return Err(BlobError::AlreadyExists(format!("container `{container}`")));
                }
                self.s3
                    .put(&marker, PutPayload::from_static(b""))
                    .await
                    .map(|_| ())
                    .map_err(|e| failed("create the container", e))
            }
            Err(e) => Err(failed(
                &format!("create the container (bucket `{}`)", self.bucket),
                e,
            )),
        }
    }

    async fn container_info(&self, container: &str) -> Result<ContainerInfo, BlobError> {
        let meta =
            self.s3.head(&self.marker(container)?).await.map_err(|e| {
                lookup_failed("read the container", missing_container(container), e)
            })?;
        Ok(ContainerInfo {
            created_at: written_at(&meta),
        })
    }

    async fn delete_container(&self, container: &str) -> Result<(), BlobError> {
        self.check_container(container).await?;
        // The objects first, the marker last: a container whose deletion failed halfway still
        // exists, with what is left of it.
        let marker = self.marker(container)?;
        let objects = self
            .keys(container)?
            .try_filter(move |key| std::future::ready(*key != marker))
            .boxed();
        let mut deleted = self.s3.delete_stream(objects);
        while let Some(result) = deleted.next().await {
            result.map_err(|e| failed("delete the container", e))?;
        }
        self.s3
            .delete(&self.marker(container)?)
            .await
            .map_err(|e| failed("delete the container", e))
    }

    async fn list_objects(
        &self,
        container: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Listing, BlobError> {
        if cursor.is_none() {
            self.check_container(container).await?;
        }
        let prefix = self.container_prefix(container);
        let page = self
            .s3
            .list_paginated(
                Some(&prefix),
                PaginatedListOptions {
                    max_keys: Some(limit),
                    page_token: cursor.map(str::to_string),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| lookup_failed("list the container", missing_container(container), e))?;
        let names = page
            .result
            .objects
            .iter()
            .filter_map(|meta| {
                let leaf = meta.location.as_ref().strip_prefix(&prefix)?;
                names::decode(leaf, Escape::Percent)
            })
            .collect();
        Ok(Listing {
            names,
            cursor: page.page_token,
        })
    }

    async fn object_info(&self, container: &str, name: &str) -> Result<ObjectInfo, BlobError> {
        match self.s3.head(&self.object_key(container, name)?).await {
            Ok(meta) => Ok(ObjectInfo {
                size: meta.size,
                created_at: written_at(&meta),
            }),
            Err(object_store::Error::NotFound { .. }) => {
                // Which one is missing: the object, or its container?
                self.check_container(container).await?;
                Err(BlobError::NotFound(missing_object(name)()))
            }
            Err(e) => Err(failed("read the object", e)),
        }
    }

    async fn read(&self, container: &str, name: &str, range: ByteRange) -> Result<Read, BlobError> {
        let key = self.object_key(container, name)?;
        let whole = range.start == 0 && range.end == u64::MAX;
        let get = if whole {
            GetOptions::default()
        } else {
            // S3 refuses a range that starts past the end: learn the size first, and read
            // nothing without asking when the range is empty.
            let size = self.object_info(container, name).await?.size;
            let part = range.clamp(size);
            if part.is_empty() {
                return Ok(Read {
                    size: 0,
                    body: futures::stream::empty().boxed(),
                });
            }
            GetOptions::new().with_range(Some(GetRange::Bounded(part)))
        };
        let result = match self.s3.get_opts(&key, get).await {
            Ok(result) => result,
            Err(object_store::Error::NotFound { .. }) => {
                self.check_container(container).await?;
                return Err(BlobError::NotFound(missing_object(name)()));
            }
            Err(e) => return Err(failed("read the object", e)),
        };
        let size = result.range.end - result.range.start;
        let body = result
            .into_stream()
            .map_err(|e| BlobError::unavailable("s3: read the object", e))
            .boxed();
        Ok(Read { size, body })
    }

    async fn write(
        &self,
        container: &str,
        name: &str,
        mut body: ByteStream,
    ) -> Result<u64, BlobError> {
        self.check_container(container).await?;
        let key = self.object_key(container, name)?;
        // Up to one part: a single PUT when the guest finishes.
        let mut first = BytesMut::new();
        let mut ended = false;
        while first.len() < PART_SIZE {
            match body.next().await {
                Some(chunk) => first.extend_from_slice(&chunk?),
                None => {
                    ended = true;
                    break;
                }
            }
        }
        if ended {
            let size = first.len() as u64;
            self.s3
                .put(&key, PutPayload::from_bytes(first.freeze()))
                .await
                .map_err(|e| failed("write the object", e))?;
            return Ok(size);
        }
        let upload = self
            .s3
            .put_multipart(&key)
            .await
            .map_err(|e| failed("start the upload", e))?;
        let mut upload = Upload(Some(WriteMultipart::new_with_chunk_size(upload, PART_SIZE)));
        let mut size = first.len() as u64;
        upload.writer().put(first.freeze());
        let sent: Result<(), BlobError> = async {
            while let Some(chunk) = body.next().await {
                let chunk: Bytes = chunk?;
                upload
                    .writer()
                    .wait_for_capacity(PARTS_IN_FLIGHT)
                    .await
                    .map_err(|e| failed("upload a part", e))?;
                size += chunk.len() as u64;
                upload.writer().put(chunk);
            }
            Ok(())
        }
        .await;
        match sent {
            Ok(()) => upload
                .finish()
                .await
                .map(|()| size)
                .map_err(|e| failed("complete the upload", e)),
            Err(e) => {
                // Nothing becomes visible; the parts sent so far are discarded.
                upload.abort().await;
                Err(e)
            }
        }
    }

    async fn delete_object(&self, container: &str, name: &str) -> Result<(), BlobError> {
        // No look at the container first: deleting what is not there succeeds anyway, and
        // `clear` deletes object after object.
        self.s3
            .delete(&self.object_key(container, name)?)
            .await
            .map_err(|e| failed("delete the object", e))
    }

    async fn copy_in_service(
        &self,
        from: (&str, &str),
        to: (&str, &str),
    ) -> Option<Result<(), BlobError>> {
        Some(self.copy_object(from, to).await)
    }
}

impl S3Backend {
    /// A copy inside S3 (`CopyObject`): the bytes never reach the gateway.
    async fn copy_object(&self, from: (&str, &str), to: (&str, &str)) -> Result<(), BlobError> {
        self.check_container(to.0).await?;
        let source = self.object_key(from.0, from.1)?;
        let target = self.object_key(to.0, to.1)?;
        match self.s3.copy(&source, &target).await {
            Ok(()) => Ok(()),
            Err(object_store::Error::NotFound { .. }) => {
                self.check_container(from.0).await?;
                Err(BlobError::NotFound(missing_object(from.1)()))
            }
            Err(e) => Err(failed("copy the object", e)),
        }
    }
}
