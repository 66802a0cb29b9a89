//! The one trait every keyvalue backend implements, and the semantics they all share.
//!
//! Both `wasi:keyvalue` versions the gateway serves (0.2.0-draft and 0.2.0-draft2) sit on this
//! trait, so a component sees the same behaviour on every backend:
//!
//! * `get` of a missing key is `None`; `set` overwrites; `delete` of a missing key succeeds;
//! * `list_keys` pages through keys in byte order, after an opaque cursor (the last key of the
//!   previous page), so every key present for the whole listing is returned exactly once;
//! * counters are stored as decimal ASCII (`"42"`), the representation Redis `INCRBY` uses, and
//!   `increment` is atomic across requests and across gateway processes;
//! * `compare_and_swap` replaces a value only if it is still what the caller read (`None`: the
//!   key must be absent).
//!
//! Key and value size limits are enforced above the backends, in the store layer.

use async_trait::async_trait;

/// What went wrong in a backend, in words a guest may see.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The service behind the store cannot be reached; retrying later may work.
    #[error("the store is unavailable: {0}")]
    Unavailable(String),
    /// The operation does not fit the stored data (say, incrementing a value that is no number).
    #[error("{0}")]
    Invalid(String),
}

/// One page of keys.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyPage {
    pub keys: Vec<String>,
    /// Where the next page starts; `None` on the last page.
    pub cursor: Option<String>,
}

/// A keyvalue backend: one named store's data.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The backend's kind, for metrics: `memory`, `redb`, `redis`, `nats`.
    fn kind(&self) -> &'static str;

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError>;
    async fn set(&self, key: &str, value: &[u8]) -> Result<(), BackendError>;
    async fn delete(&self, key: &str) -> Result<(), BackendError>;
    async fn exists(&self, key: &str) -> Result<bool, BackendError>;

    /// Up to `limit` keys that sort after `cursor` (all keys if `None`), in byte order.
    async fn list_keys(&self, cursor: Option<&str>, limit: usize) -> Result<KeyPage, BackendError>;

    /// Adds `delta` to the counter at `key` (absent counts as 0) and returns the new value. A
    /// result outside `range` is an `Invalid` error and nothing is written.
    async fn increment(
        &self,
        key: &str,
        delta: i64,
        range: CounterRange,
    ) -> Result<i64, BackendError>;

    /// Sets `key` to `new` if its value is `expected` (`None`: absent). `Ok(false)`: it was not,
    /// and nothing changed.
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool, BackendError>;
}

/// The values a counter may take after an `increment`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CounterRange {
    /// Any 64-bit signed value (0.2.0-draft2's `s64` counters).
    Any,
    /// Zero or more (0.2.0-draft's counters are `u64`): an increment that would leave the
    /// counter negative fails before it writes.
    NonNegative,
}

/// The error for an increment whose result would be negative in a [`CounterRange::NonNegative`]
/// counter.
pub fn negative_counter() -> BackendError {
    BackendError::Invalid(
        "the counter would be negative, which an unsigned (0.2.0-draft) counter cannot hold; \
         nothing was written"
            .into(),
    )
}

/// Parses a stored counter.
pub fn parse_counter(value: &[u8]) -> Result<i64, BackendError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|text| text.trim().parse::<i64>().ok())
        .ok_or_else(|| BackendError::Invalid("the value is not an integer counter".into()))
}

/// `current + delta`, or an error instead of wrapping or leaving `range`.
pub fn add_counter(current: i64, delta: i64, range: CounterRange) -> Result<i64, BackendError> {
    let next = current.checked_add(delta).ok_or_else(|| {
        BackendError::Invalid("the counter would overflow a 64-bit integer".into())
    })?;
    match range {
        CounterRange::NonNegative if next < 0 => Err(negative_counter()),
        _ => Ok(next),
    }
}

/// Builds a page from keys already sorted and filtered to those after the cursor.
pub fn page_from_sorted(mut keys: Vec<String>, limit: usize) -> KeyPage {
    if keys.len() > limit {
        keys.truncate(limit);
        let cursor = keys.last().cloned();
        KeyPage { keys, cursor }
    } else {
        KeyPage { keys, cursor: None }
    }
}
