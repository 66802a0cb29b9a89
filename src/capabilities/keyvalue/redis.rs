//! The `redis` backend: a real Redis, for state shared by many gateway replicas.
//!
//! Keys live under the store's prefix (default `wasmgate:STORE`), wrapped in a hash tag so a
//! store's keys share one cluster slot: the value of `k` at `{PREFIX}:v:k`, and an index of the
//! store's keys in the sorted set `{PREFIX}:keys`. Every write is one Lua script, so the value and
//! the index change atomically, and `list-keys` pages through the index by key (`ZRANGE BYLEX`),
//! which returns every key exactly once (`SCAN` may repeat keys). `increment` is `INCRBY`.
//!
//! The connection is made on first use and then kept by redis-rs' `ConnectionManager`, which
//! reconnects by itself; while Redis is unreachable, operations fail after a short timeout with
//! an error the guest can handle, and the store recovers when Redis is back. Concurrent requests
//! share one connection attempt ([`SharedConnection`]), so against a Redis that accepts and never
//! answers every one of them fails within the timeout, not one attempt after another.

use super::backend::{
    Backend, BackendError, CounterRange, KeyPage, negative_counter, page_from_sorted, parse_counter,
};
use super::connect::SharedConnection;
use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisError, Script};
use std::sync::LazyLock;
use std::time::Duration;

/// How long one Redis operation, or a connection attempt, may take.
const TIMEOUT: Duration = Duration::from_secs(2);

static SET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "redis.call('SET', KEYS[1], ARGV[1]); redis.call('ZADD', KEYS[2], 0, ARGV[2]); return 1",
    )
});
static DELETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new("redis.call('DEL', KEYS[1]); redis.call('ZREM', KEYS[2], ARGV[1]); return 1")
});
/// ARGV: delta, key, `1` if the result must not be negative. Returns the new value as text (a
/// Lua number would lose precision past 2^53), or the error `WASMGATE_NEGATIVE` without writing anything.
/// The sign of the sum is decided exactly on the decimal digits (a valid counter has no leading
/// zeros, and an invalid one makes INCRBY fail as usual).
static INCREMENT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "if ARGV[3] == '1' then \
           local function gt(a, b) return #a > #b or (#a == #b and a > b) end \
           local cur = redis.call('GET', KEYS[1]) or '0' \
           local d = ARGV[1] \
           local cneg = string.sub(cur, 1, 1) == '-' \
           local dneg = string.sub(d, 1, 1) == '-' \
           local cm = cneg and string.sub(cur, 2) or cur \
           local dm = dneg and string.sub(d, 2) or d \
           if (cneg and dneg) or (cneg and gt(cm, dm)) or (dneg and not cneg and gt(dm, cm)) then \
             return redis.error_reply('WASMGATE_NEGATIVE') \
           end \
         end \
         redis.call('INCRBY', KEYS[1], ARGV[1]); redis.call('ZADD', KEYS[2], 0, ARGV[2]) \
         return redis.call('GET', KEYS[1])",
    )
});
/// ARGV: expected-present flag, expected value, new value, key.
static COMPARE_AND_SWAP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        "local cur = redis.call('GET', KEYS[1]) \
         if ARGV[1] == '1' then if cur ~= ARGV[2] then return 0 end \
         elseif cur then return 0 end \
         redis.call('SET', KEYS[1], ARGV[3]); redis.call('ZADD', KEYS[2], 0, ARGV[4]); return 1",
    )
});

pub struct RedisBackend {
    client: Client,
    connection: SharedConnection<ConnectionManager>,
    /// `{PREFIX}:v:`
    value_prefix: String,
    /// `{PREFIX}:keys`
    index: String,
}

impl RedisBackend {
    /// A backend for `url` with keys under `prefix`; does not connect yet.
    pub fn new(url: &str, prefix: &str) -> anyhow::Result<RedisBackend> {
        let client =
            Client::open(url).map_err(|e| anyhow::anyhow!("invalid Redis url `{url}`: {e}"))?;
        Ok(RedisBackend {
            client,
            connection: SharedConnection::new("redis", TIMEOUT),
            value_prefix: format!("{{{prefix}}}:v:"),
            index: format!("{{{prefix}}}:keys"),
        })
    }

    async fn connection(&self) -> Result<ConnectionManager, BackendError> {
        self.connection
            .get(|| {
                let client = self.client.clone();
                async move {
                    let config = ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(TIMEOUT))
                        .set_response_timeout(Some(TIMEOUT))
                        .set_number_of_retries(1);
                    ConnectionManager::new_with_config(client, config)
                        .await
                        .map_err(unavailable)
                }
            })
            .await
    }

    fn value_key(&self, key: &str) -> String {
        format!("{}{key}", self.value_prefix)
    }
}

fn unavailable(e: RedisError) -> BackendError {
    BackendError::Unavailable(format!("redis: {e}"))
}

/// A command without an answer in time. It may have reached Redis and run: say so rather than
/// that it failed.
fn timed_out() -> BackendError {
    BackendError::Unavailable(format!(
        "redis: no answer within {}s (a write may still have been applied)",
        TIMEOUT.as_secs()
    ))
}

/// Bounds one command by [`TIMEOUT`] whatever the client does first (after a dropped
/// connection, redis-rs reconnects before it sends, and that wait has bounds of its own).
async fn within<T>(
    command: impl Future<Output = Result<T, RedisError>>,
) -> Result<Result<T, RedisError>, BackendError> {
    tokio::time::timeout(TIMEOUT, command)
        .await
        .map_err(|_| timed_out())
}

/// Server-side errors about the data are the guest's to see; everything else means Redis is
/// out of reach.
fn classify(e: RedisError) -> BackendError {
    if e.is_timeout() {
        timed_out()
    } else if e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
    {
        unavailable(e)
    } else {
        let text = e.to_string();
        if text.contains("not an integer") || text.contains("overflow") {
            BackendError::Invalid(
                "the value is not an integer counter, or the counter would overflow".into(),
            )
        } else {
            BackendError::Unavailable(format!("redis: {text}"))
        }
    }
}

#[async_trait]
impl Backend for RedisBackend {
    fn kind(&self) -> &'static str {
        "redis"
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, BackendError> {
        let mut con = self.connection().await?;
        within(
            redis::cmd("GET")
                .arg(self.value_key(key))
                .query_async(&mut con),
        )
        .await?
        .map_err(classify)
    }

    async fn set(&self, key: &str, value: &[u8]) -> Result<(), BackendError> {
        let mut con = self.connection().await?;
        within(
            SET.key(self.value_key(key))
                .key(&self.index)
                .arg(value)
                .arg(key)
                .invoke_async::<i64>(&mut con),
        )
        .await?
        .map(drop)
        .map_err(classify)
    }

    async fn delete(&self, key: &str) -> Result<(), BackendError> {
        let mut con = self.connection().await?;
        within(
            DELETE
                .key(self.value_key(key))
                .key(&self.index)
                .arg(key)
                .invoke_async::<i64>(&mut con),
        )
        .await?
        .map(drop)
        .map_err(classify)
    }

    async fn exists(&self, key: &str) -> Result<bool, BackendError> {
        let mut con = self.connection().await?;
        within(
            redis::cmd("EXISTS")
                .arg(self.value_key(key))
                .query_async(&mut con),
        )
        .await?
        .map_err(classify)
    }

    async fn list_keys(&self, cursor: Option<&str>, limit: usize) -> Result<KeyPage, BackendError> {
        let mut con = self.connection().await?;
        let start = match cursor {
            Some(cursor) => format!("({cursor}"),
            None => "-".to_string(),
        };
        let keys: Vec<String> = within(
            redis::cmd("ZRANGE")
                .arg(&self.index)
                .arg(start)
                .arg("+")
                .arg("BYLEX")
                .arg("LIMIT")
                .arg(0)
                .arg(limit + 1)
                .query_async(&mut con),
        )
        .await?
        .map_err(classify)?;
        Ok(page_from_sorted(keys, limit))
    }

    async fn increment(
        &self,
        key: &str,
        delta: i64,
        range: CounterRange,
    ) -> Result<i64, BackendError> {
        let mut con = self.connection().await?;
        let result: Result<Vec<u8>, RedisError> = within(
            INCREMENT
                .key(self.value_key(key))
                .key(&self.index)
                .arg(delta)
                .arg(key)
                .arg(match range {
                    CounterRange::Any => "0",
                    CounterRange::NonNegative => "1",
                })
                .invoke_async(&mut con),
        )
        .await?;
        match result {
            Ok(value) => parse_counter(&value),
            Err(e) if e.to_string().contains("WASMGATE_NEGATIVE") => Err(negative_counter()),
            Err(e) => Err(classify(e)),
        }
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: &[u8],
    ) -> Result<bool, BackendError> {
        let mut con = self.connection().await?;
        let swapped: i64 = within(
            COMPARE_AND_SWAP
                .key(self.value_key(key))
                .key(&self.index)
                .arg(if expected.is_some() { "1" } else { "0" })
                .arg(expected.unwrap_or_default())
                .arg(new)
                .arg(key)
                .invoke_async(&mut con),
        )
        .await?
        .map_err(classify)?;
        Ok(swapped == 1)
    }
}
