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
//! The connection is made on first use; afterwards async-nats reconnects by itself. Every
//! operation is bounded by a timeout, so while NATS is unreachable the guest gets an error, not
//! a hang.

use super::backend::{
    Backend, BackendError, KeyPage, add_counter, page_from_sorted, parse_counter,
};
use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use async_trait::async_trait;
use bytes::Bytes;
use futures::TryStreamExt;
use std::time::Duration;
use tokio::sync::OnceCell;

/// How long one NATS operation, or connecting, may take.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Lost races an increment retries before giving up.
const MAX_RETRIES: u32 = 200;
/// The longest pause between two attempts after a lost race.
const MAX_BACKOFF_MS: u64 = 32;

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
    store: OnceCell<kv::Store>,
}

impl NatsBackend {
    /// A backend for `bucket` on the server at `url`; does not connect yet.
    pub fn new(url: &str, bucket: &str, create_bucket: bool) -> NatsBackend {
        NatsBackend {
            url: url.to_string(),
            bucket: bucket.to_string(),
            create_bucket,
            store: OnceCell::new(),
        }
    }

    async fn store(&self) -> Result<&kv::Store, BackendError> {
        self.store
            .get_or_try_init(|| async {
                let client = async_nats::ConnectOptions::new()
                    .connection_timeout(TIMEOUT)
                    .request_timeout(Some(TIMEOUT))
                    .connect(self.url.as_str())
                    .await
                    .map_err(unavailable)?;
                let mut jetstream = async_nats::jetstream::new(client.clone());
                jetstream.set_timeout(TIMEOUT);
                if let Ok(store) = jetstream.get_key_value(self.bucket.as_str()).await {
                    return Ok(store);
                }
                if !self.create_bucket {
                    return Err(BackendError::Unavailable(format!(
                        "nats: bucket `{}` does not exist and create_bucket is off",
                        self.bucket
                    )));
                }
                create_bucket(&client, &self.bucket).await?;
                // Opened whoever created it: another gateway may have won the race.
                bounded(jetstream.get_key_value(self.bucket.as_str())).await
            })
            .await
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

/// Bounds a NATS call by [`TIMEOUT`].
async fn bounded<T, E: std::fmt::Display>(
    f: impl Future<Output = Result<T, E>>,
) -> Result<T, BackendError> {
    match tokio::time::timeout(TIMEOUT, f).await {
        Ok(result) => result.map_err(unavailable),
        Err(_) => Err(BackendError::Unavailable("nats: timed out".into())),
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
        Err(_) => Err(BackendError::Unavailable("nats: timed out".into())),
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
        let store = self.store().await?;
        let encoded: Vec<String> = bounded(async {
            store
                .keys()
                .await?
                .try_collect::<Vec<_>>()
                .await
                .map_err(anyhow::Error::from)
        })
        .await?;
        let mut keys: Vec<String> = encoded
            .iter()
            .filter_map(|k| decode_key(k))
            .filter(|k| cursor.is_none_or(|c| k.as_str() > c))
            .collect();
        keys.sort_unstable();
        keys.truncate(limit + 1);
        Ok(page_from_sorted(keys, limit))
    }

    async fn increment(&self, key: &str, delta: i64) -> Result<i64, BackendError> {
        let store = self.store().await?;
        let key = encode_key(key);
        for attempt in 0..MAX_RETRIES {
            let (value, revision) = entry(store, &key).await?;
            let current = value
                .as_deref()
                .map(parse_counter)
                .transpose()?
                .unwrap_or(0);
            let next = add_counter(current, delta)?;
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
        let (value, revision) = entry(store, &key).await?;
        if value.as_deref() != expected {
            return Ok(false);
        }
        // A deleted key has a revision but counts as absent: `create` handles it.
        let revision = if value.is_some() { revision } else { None };
        write_if_unchanged(store, &key, Bytes::copy_from_slice(new), revision).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
