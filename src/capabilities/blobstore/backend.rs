//! The one trait every blobstore backend implements, and the semantics they all share.
//!
//! `wasi:blobstore` sits on this trait, so a component sees the same behaviour on every backend:
//!
//! * containers are created explicitly; creating one that exists is an error, writing into or
//!   listing one that does not is a [`BlobError::NotFound`];
//! * an object becomes visible only whole: [`Backend::write`] consumes a [`ByteStream`] and makes
//!   the object visible when the stream *ends*; if the stream yields an error (the guest dropped
//!   its `outgoing-value` without `finish`, the object grew past its limit, the client went
//!   away), nothing is written and an earlier object of that name stays as it was. Of two
//!   writers of one name, the one that finishes last wins; a reader never sees a mix;
//! * [`Backend::read`] takes an inclusive byte range, clamped to the object's size (a range that
//!   starts at or past the end reads nothing), and streams it;
//! * deleting an object that does not exist succeeds; deleting a container deletes its objects.
//!
//! Name, size and count limits are enforced above the backends, in the store layer
//! ([`super::Store`]); the backends only store.

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

/// What went wrong, in words a guest may see (the interface's errors are strings).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlobError {
    /// The container or object does not exist.
    #[error("{0} does not exist")]
    NotFound(String),
    /// The container already exists.
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The call breaks a rule or a limit of the store.
    #[error("{0}")]
    Invalid(String),
    /// The write was given up before `finish` (the guest dropped its value, or its stream
    /// failed); nothing was written.
    #[error("the write was abandoned before finish: nothing was written")]
    Abandoned,
    /// The service behind the store cannot be reached or failed; retrying later may work.
    #[error("the blob store is unavailable: {0}")]
    Unavailable(String),
}

impl BlobError {
    /// A backend failure, with what was being done.
    pub fn unavailable(what: impl std::fmt::Display, error: impl std::fmt::Display) -> BlobError {
        BlobError::Unavailable(format!("{what}: {error}"))
    }

    /// The `outcome` label of an operation that failed with this error.
    pub fn outcome(&self) -> &'static str {
        match self {
            BlobError::NotFound(_) => "not_found",
            BlobError::AlreadyExists(_) | BlobError::Invalid(_) | BlobError::Abandoned => "invalid",
            BlobError::Unavailable(_) => "error",
        }
    }
}

/// An object's bytes as they come: from a backend to a guest, or from a guest to a backend.
/// A stream that ends has delivered everything; one that yields an error is broken.
pub type ByteStream = BoxStream<'static, Result<Bytes, BlobError>>;

/// What a container's `info` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerInfo {
    /// Seconds since the Unix epoch.
    pub created_at: u64,
}

/// What an object's `info` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectInfo {
    pub size: u64,
    /// Seconds since the Unix epoch (of the last write: objects are written whole).
    pub created_at: u64,
}

/// One page of object names, in the backend's order.
#[derive(Debug, Default)]
pub struct Listing {
    pub names: Vec<String>,
    /// Where the next page starts (opaque to the caller); `None` on the last page.
    pub cursor: Option<String>,
}

impl Listing {
    /// The page of `sorted` names that follows `cursor` (the last name of the previous page):
    /// for backends that can only list everything and sort it themselves.
    pub fn page_of(sorted: &[String], cursor: Option<&str>, limit: usize) -> Listing {
        let start = cursor.map_or(0, |cursor| sorted.partition_point(|n| n.as_str() <= cursor));
        let names: Vec<String> = sorted.iter().skip(start).take(limit).cloned().collect();
        let cursor = (start + names.len() < sorted.len())
            .then(|| names.last().cloned())
            .flatten();
        Listing { names, cursor }
    }
}

/// An object's bytes, or a range of them, being read.
pub struct Read {
    /// How many bytes `body` yields.
    pub size: u64,
    pub body: ByteStream,
}

/// An inclusive byte range, `start..=end`, as `get-data` gives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    /// The part of an object of `size` bytes the range covers, as a half-open range
    /// (`start..end`); empty when the range starts at or past the end, or ends before it
    /// starts.
    pub fn clamp(self, size: u64) -> std::ops::Range<u64> {
        let start = self.start.min(size);
        let end = self.end.saturating_add(1).min(size).max(start);
        start..end
    }
}

/// A blobstore backend: one named store's containers.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The backend's kind, for metrics: `memory`, `fs`, `nats`, `s3`.
    fn kind(&self) -> &'static str;

    /// How many containers exist (for `max_containers`).
    async fn container_count(&self) -> Result<u64, BlobError>;
    async fn create_container(&self, container: &str) -> Result<(), BlobError>;
    async fn container_info(&self, container: &str) -> Result<ContainerInfo, BlobError>;
    /// Deletes the container and its objects.
    async fn delete_container(&self, container: &str) -> Result<(), BlobError>;

    /// Up to `limit` names after `cursor` (from the start if `None`).
    async fn list_objects(
        &self,
        container: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Listing, BlobError>;
    async fn object_info(&self, container: &str, name: &str) -> Result<ObjectInfo, BlobError>;
    /// Streams `range` of the object (see the module docs for clamping).
    async fn read(&self, container: &str, name: &str, range: ByteRange) -> Result<Read, BlobError>;
    /// Writes the object from `body`, visible when `body` ends (see the module docs); returns
    /// its size.
    async fn write(&self, container: &str, name: &str, body: ByteStream) -> Result<u64, BlobError>;
    /// Deletes the object; one that does not exist is no error.
    async fn delete_object(&self, container: &str, name: &str) -> Result<(), BlobError>;

    /// Copies an object inside the service, if the backend can (`None`: the store streams it
    /// through the gateway instead, as a read and a write).
    async fn copy_in_service(
        &self,
        _from: (&str, &str),
        _to: (&str, &str),
    ) -> Option<Result<(), BlobError>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_clamp_to_the_object() {
        let range = |start, end| ByteRange { start, end };
        assert_eq!(range(0, 9).clamp(10), 0..10);
        assert_eq!(range(0, 100).clamp(10), 0..10);
        assert_eq!(range(9, 9).clamp(10), 9..10);
        assert_eq!(range(10, 20).clamp(10), 10..10);
        assert_eq!(range(0, 0).clamp(0), 0..0);
        assert_eq!(range(0, u64::MAX).clamp(5), 0..5);
        assert_eq!(range(5, 2).clamp(10), 5..5);
    }
}
