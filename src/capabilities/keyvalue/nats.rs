//! The `nats` backend: a NATS JetStream key-value bucket per store, for state shared by many
//! gateway replicas.
//!
//! NATS keys allow only `A-Z a-z 0-9 - _ / = .` (and no leading or trailing `.`), so keys are
//! stored encoded: those characters stay as they are except `=` and `.`, and every other byte is
//! written `=XX` (hex). The encoding is reversible, and listing decodes and sorts, so guests see
//! their own keys in byte order.
//!
//! `increment` and `compare_and_swap` read the entry with its revision and write back only if
//! the revision is unchanged (`update`), or only if the key is absent (`create`), retrying a
//! lost race after a short random pause: atomic across gateway processes without locks.
//!
//! The connection is made on first use, one attempt shared by every request that waits for it
//! ([`SharedConnection`]); afterwards async-nats reconnects by itself. Every operation is bounded
//! by a timeout, so while NATS is unreachable the guest gets an error, not a hang.
//!
//! JetStream cannot list a bucket's keys in order or from a position: it can only deliver all of
//! them. So the first page of a listing reads every key once, sorts them and keeps that snapshot
//! ([`Listings`]) for the pages that follow (for up to a minute), instead of reading every key
//! again for every page: a listing of n keys costs one read of n keys, not n / page of them. A
//! continuation whose snapshot is gone (expired, or another gateway process served the previous
//! page) reads the keys afresh and goes on after the cursor, so it is still exact.

use super::backend::{Backend, BackendError, CounterRange, KeyPage, add_counter, parse_counter};
use super::connect::SharedConnection;
use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long one NATS operation, or connecting, may take.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Lost races an increment retries before giving up.
const MAX_RETRIES: u32 = 200;
/// The longest pause between two attempts after a lost race.
const MAX_BACKOFF_MS: u64 = 32;
/// How long a listing's snapshot of the keys serves its following pages.
const SNAPSHOT_TTL: Duration = Duration::from_secs(60);
/// Snapshots kept at once per store (the newest).
const MAX_SNAPSHOTS: usize = 8;
/// Keys sorted on the calling task; more are sorted on the blocking pool.
const SORT_INLINE: usize = 10_000;
/// The most keys a listing reads; a larger bucket cannot be listed.
pub const MAX_LISTED_KEYS: usize = 1_000_000;

/// A random pause that grows with the attempts, so contending writers spread out.
async fn backoff(attempt: u32) {
    let ceiling = MAX_BACKOFF_MS.min(1 << attempt.min(5));
    let jitter = (uuid::Uuid::new_v4().as_u128() as u64) % (ceiling * 1000);
    tokio::time::sleep(Duration::from_micros(jitter)).await;
}

pub struct NatsBackend {
    url: String,
    bucket: String,
    create_bucket: bool,
    store: SharedConnection<kv::Store>,
    listings: Mutex<Listings>,
    /// How many times every key of the bucket was read.
    scans: AtomicU64,
}

/// The sorted keys of a bucket as one listing read them, and the cursors handed out from them.
struct Snapshot {
    taken: Instant,
    keys: Arc<[String]>,
    /// Cursor handed out → index of the first key of the next page.
    next: HashMap<String, usize>,
}

/// The snapshots of recent listings, newest last.
#[derive(Default)]
struct Listings {
    snapshots: VecDeque<Snapshot>,
}

impl Listings {
    /// The newest live snapshot that handed out `cursor`, and where its next page starts. The
    /// newest, because a snapshot is only good for a listing that started before it was taken.
    fn find(&mut self, cursor: &str) -> Option<(Arc<[String]>, usize, Instant)> {
        self.snapshots
            .retain(|snapshot| snapshot.taken.elapsed() < SNAPSHOT_TTL);
        self.snapshots.iter().rev().find_map(|snapshot| {
            let start = *snapshot.next.get(cursor)?;
            Some((snapshot.keys.clone(), start, snapshot.taken))
        })
    }

    /// Remembers that `cursor` continues at `start` in the snapshot `keys` taken at `taken`.
    fn remember(&mut self, keys: &Arc<[String]>, taken: Instant, cursor: String, start: usize) {
        let known = self
            .snapshots
            .iter_mut()
            .find(|snapshot| Arc::ptr_eq(&snapshot.keys, keys));
        match known {
            Some(snapshot) => {
                snapshot.next.insert(cursor, start);
            }
            None => {
                self.snapshots.push_back(Snapshot {
                    taken,
                    keys: keys.clone(),
                    next: HashMap::from([(cursor, start)]),
                });
                while self.snapshots.len() > MAX_SNAPSHOTS {
                    self.snapshots.pop_front();
                }
            }
        }
    }
}

impl NatsBackend {
    /// A backend for `bucket` on the server at `url`; does not connect yet.
    pub fn new(url: &str, bucket: &str, create_bucket: bool) -> NatsBackend {
        NatsBackend {
            url: url.to_string(),
            bucket: bucket.to_string(),
            create_bucket,
            store: SharedConnection::new("nats", TIMEOUT),
            listings: Mutex::default(),
            scans: AtomicU64::new(0),
        }
    }

    /// How many times every key of the bucket was read (the first page of each listing, and
    /// continuations whose snapshot was gone).
    pub fn key_scans(&self) -> u64 {
        self.scans.load(Ordering::Relaxed)
    }

    async fn store(&self) -> Result<kv::Store, BackendError> {
        let (url, bucket, create) = (self.url.clone(), self.bucket.clone(), self.create_bucket);
        self.store
            .get(move || async move {
                let client = async_nats::ConnectOptions::new()
                    .connection_timeout(TIMEOUT)
                    .request_timeout(Some(TIMEOUT))
                    .connect(url.as_str())
                    .await
                    .map_err(unavailable)?;
                let mut jetstream = async_nats::jetstream::new(client.clone());
                jetstream.set_timeout(TIMEOUT);
                if let Ok(store) = jetstream.get_key_value(bucket.as_str()).await {
                    return Ok(store);
                }
                if !create {
                    return Err(BackendError::Unavailable(format!(
                        "nats: bucket `{bucket}` does not exist and create_bucket is off"
                    )));
                }
                create_bucket(&client, &bucket).await?;
                // Opened whoever created it: another gateway may have won the race.
                bounded(jetstream.get_key_value(bucket.as_str())).await
            })
            .await
    }

    fn listings(&self) -> std::sync::MutexGuard<'_, Listings> {
        // Nothing panics while the lock is held.
        self.listings.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every key of the bucket, decoded and sorted; each item must come within [`TIMEOUT`].
    async fn all_keys(&self, store: &kv::Store) -> Result<Vec<String>, BackendError> {
        self.scans.fetch_add(1, Ordering::Relaxed);
        let mut stream = bounded(store.keys()).await?;
        let mut keys = Vec::new();
        while let Some(encoded) = bounded(stream.try_next()).await? {
            if keys.len() >= MAX_LISTED_KEYS {
                return Err(BackendError::Unavailable(format!(
                    "nats: the bucket has more than {MAX_LISTED_KEYS} keys, more than list-keys reads"
                )));
            }
            keys.extend(decode_key(&encoded));
        }
        if keys.len() < SORT_INLINE {
            keys.sort_unstable();
            return Ok(keys);
        }
        // Sorting a large bucket's keys takes a while: not on a worker thread.
        tokio::task::spawn_blocking(move || {
            keys.sort_unstable();
            keys
        })
        .await
        .map_err(unavailable)
    }
}

/// Creates the stream behind a key-value bucket through the JetStream API, with the stream
/// config every JetStream server since 2.7 accepts (async-nats' own `create_key_value` sends
/// fields that the 2.9 servers Debian ships reject). An "already in use" answer is fine.
async fn create_bucket(client: &async_nats::Client, bucket: &str) -> Result<(), BackendError> {
    if bucket.is_empty()
        || !bucket
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(BackendError::Unavailable(format!(
            "nats: bucket name `{bucket}` may only contain letters, digits, `_` and `-`"
        )));
    }
    let config = format!(
        r#"{{"name":"KV_{bucket}","subjects":["$KV.{bucket}.>"],"retention":"limits","max_consumers":-1,"max_msgs_per_subject":1,"max_msgs":-1,"max_bytes":-1,"max_age":0,"max_msg_size":-1,"storage":"file","discard":"new","num_replicas":1,"duplicate_window":120000000000,"allow_rollup_hdrs":true,"deny_delete":true,"allow_direct":true}}"#
    );
    let reply =
        bounded(client.request(format!("$JS.API.STREAM.CREATE.KV_{bucket}"), config.into()))
            .await?;
    let text = String::from_utf8_lossy(&reply.payload);
    if text.contains("\"error\"") && !text.contains("already in use") {
        return Err(BackendError::Unavailable(format!(
            "nats: cannot create bucket `{bucket}`: {text}"
        )));
    }
    Ok(())
}

fn unavailable(e: impl std::fmt::Display) -> BackendError {
    BackendError::Unavailable(format!("nats: {e}"))
}

/// A NATS call without an answer in time. The request may have reached the server and been
/// applied: say so rather than that it failed.
fn timed_out() -> BackendError {
    BackendError::Unavailable(format!(
        "nats: no answer within {}s (a write may still have been applied)",
        TIMEOUT.as_secs()
    ))
}

/// Bounds a NATS call by [`TIMEOUT`].
async fn bounded<T, E: std::fmt::Display>(
    f: impl Future<Output = Result<T, E>>,
) -> Result<T, BackendError> {
    match tokio::time::timeout(TIMEOUT, f).await {
        Ok(result) => result.map_err(unavailable),
        Err(_) => Err(timed_out()),
    }
}

/// Encodes a key into NATS' key alphabet; see the module docs.
pub fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for byte in key.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'/') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("={byte:02X}"));
        }
    }
    out
}

/// Reverses [`encode_key`]; `None` for keys the gateway did not write.
pub fn decode_key(encoded: &str) -> Option<String> {
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            let hex = encoded.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The current value and revision of a key; a deleted key has a revision but no value.
async fn entry(store: &kv::Store, key: &str) -> Result<(Option<Bytes>, Option<u64>), BackendError> {
    match bounded(store.entry(key)).await? {
        Some(entry) if entry.operation == Operation::Put => {
            Ok((Some(entry.value), Some(entry.revision)))
        }
        Some(entry) => Ok((None, Some(entry.revision))),
        None => Ok((None, None)),
    }
}

/// Writes `value` if the key is still at `revision` (or absent, for `None`); `Ok(false)` if
/// another writer got there first.
async fn write_if_unchanged(
    store: &kv::Store,
    key: &str,
    value: Bytes,
    revision: Option<u64>,
) -> Result<bool, BackendError> {
    let outcome = match revision {
        Some(revision) => tokio::time::timeout(TIMEOUT, store.update(key, value, revision))
            .await
            .map(|r| {
                r.map(drop).map_err(|e| {
                    (
                        e.kind() == UpdateErrorKind::WrongLastRevision,
                        e.to_string(),
                    )
                })
            }),
        None => tokio::time::timeout(TIMEOUT, store.create(key, value))
            .await
            .map(|r| {
                r.map(drop)
                    .map_err(|e| (e.kind() == CreateErrorKind::AlreadyExists, e.to_string()))
            }),
    };
    match outcome {
        Ok(Ok(())) => Ok(true),
        Ok(Err((true, _))) => Ok(false),
        Ok(Err((false, e))) => Err(unavailable(e)),
        Err(_) => Err(timed_out()),
    }
}

#[async_trait]
impl Backend for NatsBackend {
    fn kind(&self) -> &'static str {
        "nats"
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        let store = self.store().await?;
        Ok(bounded(store.get(encode_key(key)))
            .await?
            .map(|v| v.to_vec()))
    }

    async fn set(&self, key: &str, value: &[u8]) -> Result<(), BackendError> {
        let store = self.store().await?;
        bounded(store.put(encode_key(key), Bytes::copy_from_slice(value)))
            .await
            .map(drop)
    }

    async fn delete(&self, key: &str) -> Result<(), BackendError> {
        let store = self.store().await?;
        bounded(store.delete(encode_key(key))).await
    }

    async fn exists(&self, key: &str) -> Result<bool, BackendError> {
        Ok(self.get(key).await?.is_some())
    }

    async fn list_keys(&self, cursor: Option<&str>, limit: usize) -> Result<KeyPage, BackendError> {
        let known = cursor.and_then(|cursor| self.listings().find(cursor));
        let (keys, start, taken) = match known {
            Some(known) => known,
            None => {
                let store = self.store().await?;
                let taken = Instant::now();
                let keys: Arc<[String]> = self.all_keys(&store).await?.into();
                let start = match cursor {
                    Some(cursor) => keys.partition_point(|k| k.as_str() <= cursor),
                    None => 0,
                };
                (keys, start, taken)
            }
        };
        let end = start.saturating_add(limit.max(1)).min(keys.len());
        let page = keys.get(start..end).unwrap_or_default().to_vec();
        let cursor = if end < keys.len() {
            page.last().cloned()
        } else {
            None
        };
        if let Some(cursor) = &cursor {
            self.listings().remember(&keys, taken, cursor.clone(), end);
        }
        Ok(KeyPage { keys: page, cursor })
    }

    async fn increment(
        &self,
        key: &str,
        delta: i64,
        range: CounterRange,
    ) -> Result<i64, BackendError> {
        let store = self.store().await?;
        let store = &store;
        let key = encode_key(key);
        for attempt in 0..MAX_RETRIES {
            let (value, revision) = entry(store, &key).await?;
            let current = value
                .as_deref()
                .map(parse_counter)
                .transpose()?
                .unwrap_or(0);
            let next = add_counter(current, delta, range)?;
            if write_if_unchanged(store, &key, next.to_string().into(), revision).await? {
                return Ok(next);
            }
            backoff(attempt).await;
        }
        Err(BackendError::Unavailable(
            "nats: too much contention on the counter".into(),
        ))
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool, BackendError> {
        let store = self.store().await?;
        let key = encode_key(key);
        let (value, revision) = entry(&store, &key).await?;
        if value.as_deref() != expected {
            return Ok(false);
        }
        // A deleted key has a revision but counts as absent: `create` handles it.
        let revision = if value.is_some() { revision } else { None };
        write_if_unchanged(&store, &key, Bytes::copy_from_slice(new), revision).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_continuation_uses_the_newest_snapshot_that_handed_out_its_cursor() {
        let mut listings = Listings::default();
        let old: Arc<[String]> = vec!["a".to_string(), "b".into(), "c".into()].into();
        let new: Arc<[String]> = vec!["a".to_string(), "b".into(), "bb".into(), "c".into()].into();
        let taken = Instant::now();
        listings.remember(&old, taken, "a".into(), 1);
        listings.remember(&new, taken, "a".into(), 1);
        listings.remember(&new, taken, "b".into(), 2);
        let (keys, start, _) = listings.find("a").unwrap();
        assert!(Arc::ptr_eq(&keys, &new) && start == 1);
        assert_eq!(listings.snapshots.len(), 2, "one entry per snapshot");
        assert!(listings.find("z").is_none());
        // At most MAX_SNAPSHOTS are kept, the oldest go first.
        for i in 0..MAX_SNAPSHOTS {
            let keys: Arc<[String]> = vec![format!("k{i}")].into();
            listings.remember(&keys, taken, format!("k{i}"), 1);
        }
        assert_eq!(listings.snapshots.len(), MAX_SNAPSHOTS);
        assert!(listings.find("a").is_none());
        assert!(listings.find("k0").is_some());
    }

    #[test]
    fn keys_round_trip_through_the_nats_alphabet() {
        for key in [
            "plain",
            "with space",
            "a.b",
            "=x=",
            "über/ß",
            "..",
            "a:b:c",
            "-_/",
        ] {
            let encoded = encode_key(key);
            assert!(
                encoded
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_/=".contains(&b)),
                "{encoded}"
            );
            assert_eq!(decode_key(&encoded).as_deref(), Some(key));
        }
    }
}
