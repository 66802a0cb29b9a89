//! One conformance suite for every keyvalue backend: memory, redb, and real Redis and NATS
//! JetStream (127.0.0.1:6379 and :4222, which the machine runs; the tests fail, not skip, if they
//! are missing). Each run uses its own Redis prefix and NATS bucket, so runs never collide.

use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use wasmgate::capabilities::keyvalue::backend::{Backend, BackendError, CounterRange};
use wasmgate::capabilities::keyvalue::memory::MemoryBackend;
use wasmgate::capabilities::keyvalue::nats::NatsBackend;
use wasmgate::capabilities::keyvalue::redb::{RedbBackend, open_database};
use wasmgate::capabilities::keyvalue::redis::RedisBackend;

#[path = "common/tcp_proxy.rs"]
mod tcp_proxy;

use tcp_proxy::Proxy;

const REDIS: &str = "redis://127.0.0.1:6379";
const NATS: &str = "nats://127.0.0.1:4222";

fn redb_pool() -> Arc<wasmgate::capabilities::keyvalue::pool::BlockingPool> {
    wasmgate::capabilities::keyvalue::redb::pool().unwrap()
}

fn unique(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// A backend under test, and what to clean up afterwards.
struct Subject {
    backend: Arc<dyn Backend>,
    _dir: Option<tempfile::TempDir>,
    nats_bucket: Option<String>,
}

impl Subject {
    async fn cleanup(self) {
        if let Some(bucket) = self.nats_bucket
            && let Ok(client) = async_nats::connect(NATS).await
        {
            let _ = async_nats::jetstream::new(client)
                .delete_key_value(bucket)
                .await;
        }
    }
}

async fn subject(kind: &str) -> Subject {
    match kind {
        "memory" => Subject {
            backend: Arc::new(MemoryBackend::new(256 << 20)),
            _dir: None,
            nats_bucket: None,
        },
        "redb" => {
            let dir = tempfile::tempdir().unwrap();
            let db = open_database(&dir.path().join("kv.redb")).unwrap();
            Subject {
                backend: Arc::new(RedbBackend::new(db, "test", None, redb_pool()).unwrap()),
                _dir: Some(dir),
                nats_bucket: None,
            }
        }
        "redb-periodic" => {
            let dir = tempfile::tempdir().unwrap();
            let db = open_database(&dir.path().join("kv.redb")).unwrap();
            let interval = Some(std::time::Duration::from_millis(20));
            Subject {
                backend: Arc::new(RedbBackend::new(db, "test", interval, redb_pool()).unwrap()),
                _dir: Some(dir),
                nats_bucket: None,
            }
        }
        "redis" => {
            let backend = RedisBackend::new(REDIS, &unique("wasmgate-test:")).unwrap();
            backend
                .exists("probe")
                .await
                .expect("Redis must run on 127.0.0.1:6379 (CI starts it)");
            Subject {
                backend: Arc::new(backend),
                _dir: None,
                nats_bucket: None,
            }
        }
        "nats" => {
            let bucket = unique("wasmgate_test_");
            let backend = NatsBackend::new(NATS, &bucket, true);
            backend
                .exists("probe")
                .await
                .expect("NATS with JetStream must run on 127.0.0.1:4222 (CI starts it)");
            Subject {
                backend: Arc::new(backend),
                _dir: None,
                nats_bucket: Some(bucket),
            }
        }
        other => panic!("unknown backend {other}"),
    }
}

/// Runs `check` against every backend; the failure names the backend.
macro_rules! conformance {
    ($name:ident, $check:expr) => {
        mod $name {
            use super::*;
            async fn run(kind: &str) {
                let subject = subject(kind).await;
                let check = $check;
                check(subject.backend.clone()).await;
                subject.cleanup().await;
            }
            #[tokio::test]
            async fn memory() {
                run("memory").await
            }
            #[tokio::test]
            async fn redb() {
                run("redb").await
            }
            #[tokio::test]
            async fn redb_periodic() {
                run("redb-periodic").await
            }
            #[tokio::test]
            async fn redis() {
                run("redis").await
            }
            #[tokio::test]
            async fn nats() {
                run("nats").await
            }
        }
    };
}

conformance!(get_set_delete_exists, |kv: Arc<dyn Backend>| async move {
    assert_eq!(
        kv.get("missing").await.unwrap(),
        None,
        "a missing key is none"
    );
    assert!(!kv.exists("missing").await.unwrap());
    kv.delete("missing")
        .await
        .expect("deleting a missing key succeeds");

    kv.set("greeting", b"hello").await.unwrap();
    assert_eq!(
        kv.get("greeting").await.unwrap().as_deref(),
        Some(&b"hello"[..])
    );
    assert!(kv.exists("greeting").await.unwrap());
    kv.set("greeting", b"bonjour").await.unwrap();
    assert_eq!(
        kv.get("greeting").await.unwrap().as_deref(),
        Some(&b"bonjour"[..]),
        "set overwrites"
    );

    // Keys and values of every kind round-trip.
    let odd_key = "a key/with:odd.chars=and ünïcode";
    let binary: Vec<u8> = (0..=255).collect();
    kv.set(odd_key, &binary).await.unwrap();
    assert_eq!(kv.get(odd_key).await.unwrap(), Some(binary));
    kv.set("empty-value", b"").await.unwrap();
    assert_eq!(kv.get("empty-value").await.unwrap(), Some(vec![]));

    kv.delete("greeting").await.unwrap();
    assert_eq!(kv.get("greeting").await.unwrap(), None);
    assert!(!kv.exists("greeting").await.unwrap());
});

conformance!(list_keys_pages_every_key_exactly_once, |kv: Arc<
    dyn Backend,
>| async move {
    let empty = kv.list_keys(None, 10).await.unwrap();
    assert!(empty.keys.is_empty() && empty.cursor.is_none());

    let mut expected: Vec<String> = (0..23).map(|i| format!("key-{i:03}")).collect();
    expected.push("z/last.key".into());
    for key in &expected {
        kv.set(key, b"v").await.unwrap();
    }
    kv.set("deleted", b"v").await.unwrap();
    kv.delete("deleted").await.unwrap();

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let page = kv.list_keys(cursor.as_deref(), 5).await.unwrap();
        assert!(page.keys.len() <= 5);
        seen.extend(page.keys);
        pages += 1;
        match page.cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
        assert!(pages < 100, "the cursor never ends");
    }
    expected.sort();
    assert_eq!(
        seen, expected,
        "every key exactly once, in order, without deleted ones"
    );
    assert_eq!(pages, 5);
});

conformance!(increment_is_atomic_and_counts_from_zero, |kv: Arc<
    dyn Backend,
>| async move {
    assert_eq!(
        kv.increment("counter", 5, CounterRange::Any).await.unwrap(),
        5,
        "an absent counter starts at 0"
    );
    assert_eq!(
        kv.increment("counter", -2, CounterRange::Any)
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        kv.get("counter").await.unwrap().as_deref(),
        Some(&b"3"[..]),
        "stored as decimal text"
    );

    kv.set("text", b"not a number").await.unwrap();
    assert!(matches!(
        kv.increment("text", 1, CounterRange::Any).await,
        Err(BackendError::Invalid(_))
    ));
    assert_eq!(
        kv.get("text").await.unwrap().as_deref(),
        Some(&b"not a number"[..])
    );

    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let kv = kv.clone();
            tokio::spawn(async move {
                for _ in 0..20 {
                    kv.increment("race", 1, CounterRange::Any).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(
        kv.get("race").await.unwrap().as_deref(),
        Some(&b"1000"[..]),
        "no increment lost"
    );
});

conformance!(unsigned_counters_are_checked_before_the_write, |kv: Arc<
    dyn Backend,
>| async move {
    let negative = |r: Result<i64, BackendError>| {
        let refused = matches!(&r, Err(BackendError::Invalid(e)) if e.contains("the counter would be negative"));
        assert!(refused, "expected a refusal, got {r:?}");
        refused
    };
    kv.set("neg", b"-5").await.unwrap();
    assert!(negative(
        kv.increment("neg", 3, CounterRange::NonNegative).await
    ));
    assert_eq!(
        kv.get("neg").await.unwrap().as_deref(),
        Some(&b"-5"[..]),
        "nothing written"
    );
    assert_eq!(
        kv.increment("neg", 5, CounterRange::NonNegative)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        kv.increment("neg", 12, CounterRange::NonNegative)
            .await
            .unwrap(),
        12
    );
    assert!(negative(
        kv.increment("neg", -13, CounterRange::NonNegative).await
    ));
    assert_eq!(
        kv.increment("neg", -12, CounterRange::NonNegative)
            .await
            .unwrap(),
        0
    );
    assert!(negative(
        kv.increment("absent", -1, CounterRange::NonNegative).await
    ));
    assert_eq!(kv.get("absent").await.unwrap(), None, "not created either");
    // Large magnitudes are compared exactly.
    kv.set("big", b"-9007199254740993").await.unwrap();
    assert!(negative(
        kv.increment("big", 9007199254740992, CounterRange::NonNegative)
            .await
    ));
    assert_eq!(
        kv.increment("big", 9007199254740993, CounterRange::NonNegative)
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        kv.increment("big", -9007199254740993, CounterRange::Any)
            .await
            .unwrap(),
        -9007199254740993,
        "signed counters may go negative"
    );
});

conformance!(
    compare_and_swap_fails_cleanly_when_the_value_changed,
    |kv: Arc<dyn Backend>| async move {
        assert!(
            kv.compare_and_swap("cas", None, b"one").await.unwrap(),
            "absent as expected"
        );
        assert!(
            !kv.compare_and_swap("cas", None, b"two").await.unwrap(),
            "no longer absent"
        );
        assert_eq!(kv.get("cas").await.unwrap().as_deref(), Some(&b"one"[..]));
        assert!(
            kv.compare_and_swap("cas", Some(b"one"), b"two")
                .await
                .unwrap()
        );
        assert!(
            !kv.compare_and_swap("cas", Some(b"one"), b"three")
                .await
                .unwrap(),
            "stale expectation"
        );
        assert_eq!(
            kv.get("cas").await.unwrap().as_deref(),
            Some(&b"two"[..]),
            "a failed swap changes nothing"
        );
        kv.delete("cas").await.unwrap();
        assert!(
            kv.compare_and_swap("cas", None, b"again").await.unwrap(),
            "deleted counts as absent"
        );

        // Concurrent read-modify-write loops with CAS lose no update either.
        kv.set("cas-counter", b"0").await.unwrap();
        let tasks: Vec<_> = (0..10)
            .map(|_| {
                let kv = kv.clone();
                tokio::spawn(async move {
                    for _ in 0..10 {
                        loop {
                            let current = kv.get("cas-counter").await.unwrap().unwrap();
                            let n: u64 = std::str::from_utf8(&current).unwrap().parse().unwrap();
                            if kv
                                .compare_and_swap(
                                    "cas-counter",
                                    Some(&current),
                                    (n + 1).to_string().as_bytes(),
                                )
                                .await
                                .unwrap()
                            {
                                break;
                            }
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(
            kv.get("cas-counter").await.unwrap().as_deref(),
            Some(&b"100"[..])
        );
    }
);

/// Two independent clients of the same shared store (as two gateway processes would be) see
/// each other's writes and count together.
#[tokio::test]
async fn redis_and_nats_clients_share_state() {
    let prefix = unique("wasmgate-test:");
    let a = RedisBackend::new(REDIS, &prefix).unwrap();
    let b = RedisBackend::new(REDIS, &prefix).unwrap();
    a.set("shared", b"from a")
        .await
        .expect("Redis must run on 127.0.0.1:6379");
    assert_eq!(
        b.get("shared").await.unwrap().as_deref(),
        Some(&b"from a"[..])
    );

    let bucket = unique("wasmgate_test_");
    let a = NatsBackend::new(NATS, &bucket, true);
    let b = NatsBackend::new(NATS, &bucket, true);
    a.set("shared", b"from a")
        .await
        .expect("NATS must run on 127.0.0.1:4222");
    assert_eq!(
        b.get("shared").await.unwrap().as_deref(),
        Some(&b"from a"[..])
    );
    let client = async_nats::connect(NATS).await.unwrap();
    let _ = async_nats::jetstream::new(client)
        .delete_key_value(bucket)
        .await;
}

#[tokio::test]
async fn redb_keeps_data_across_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kv.redb");
    {
        let kv =
            RedbBackend::new(open_database(&path).unwrap(), "durable", None, redb_pool()).unwrap();
        kv.set("kept", b"yes").await.unwrap();
        kv.increment("n", 7, CounterRange::Any).await.unwrap();
    }
    let kv = RedbBackend::new(open_database(&path).unwrap(), "durable", None, redb_pool()).unwrap();
    assert_eq!(kv.get("kept").await.unwrap().as_deref(), Some(&b"yes"[..]));
    assert_eq!(kv.increment("n", 1, CounterRange::Any).await.unwrap(), 8);
    // Stores sharing a file are separate tables.
    let other = RedbBackend::new(
        open_database(&dir.path().join("other.redb")).unwrap(),
        "durable",
        None,
        redb_pool(),
    )
    .unwrap();
    assert_eq!(other.get("kept").await.unwrap(), None);
}

/// While the service is unreachable the backend returns `Unavailable` promptly (the guest gets
/// an error it can handle), and once it is reachable again the backend recovers by itself.
async fn survives_an_outage(backend: Arc<dyn Backend>, proxy: &Proxy) {
    backend
        .set("k", b"before")
        .await
        .expect("works through the proxy");
    proxy.cut();
    let started = std::time::Instant::now();
    let mut saw_error = false;
    for _ in 0..3 {
        match backend.get("k").await {
            Err(BackendError::Unavailable(_)) => saw_error = true,
            Err(other) => panic!("expected Unavailable, got {other:?}"),
            Ok(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(saw_error, "the outage was noticed");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "errors come back promptly, not after a hang"
    );
    proxy.restore();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match backend.get("k").await {
            Ok(Some(value)) => {
                assert_eq!(value, b"before");
                break;
            }
            other => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "did not recover: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[tokio::test]
async fn redis_recovers_after_an_outage() {
    let proxy = Proxy::start("127.0.0.1:6379").await;
    let backend = RedisBackend::new(
        &format!("redis://127.0.0.1:{}", proxy.port),
        &unique("wasmgate-test:"),
    )
    .unwrap();
    survives_an_outage(Arc::new(backend), &proxy).await;
}

#[tokio::test]
async fn nats_recovers_after_an_outage() {
    let proxy = Proxy::start("127.0.0.1:4222").await;
    let bucket = unique("wasmgate_test_");
    let backend = NatsBackend::new(&format!("nats://127.0.0.1:{}", proxy.port), &bucket, true);
    survives_an_outage(Arc::new(backend), &proxy).await;
    let client = async_nats::connect(NATS).await.unwrap();
    let _ = async_nats::jetstream::new(client)
        .delete_key_value(bucket)
        .await;
}

/// Batch operations, through the store layer both interface versions call.
#[tokio::test]
async fn batch_operations_apply_in_order_and_report_missing_keys() {
    use wasmgate::capabilities::keyvalue::Stores;
    let config: std::collections::BTreeMap<String, wasmgate::config::KeyValueConfig> =
        toml::from_str("[batch]\nbackend = \"memory\"\nmax_key_size = 8\n").unwrap();
    let stores = Stores::build(
        &config,
        |p| p.to_path_buf(),
        &wasmgate::metrics::Metrics::new(),
    )
    .unwrap();
    let store = stores.grants(&["batch".to_string()]).unwrap()["batch"]
        .clone()
        .expect("granted to the route");

    store
        .set_many(vec![
            ("a".into(), b"1".to_vec()),
            ("b".into(), b"2".to_vec()),
        ])
        .await
        .unwrap();
    let values = store
        .get_many(vec!["a".into(), "missing".into(), "b".into()], usize::MAX)
        .await
        .unwrap();
    assert_eq!(
        values,
        vec![
            ("a".into(), Some(b"1".to_vec())),
            ("missing".into(), None),
            ("b".into(), Some(b"2".to_vec()))
        ]
    );
    store
        .delete_many(vec!["a".into(), "missing".into()])
        .await
        .unwrap();
    assert_eq!(store.get("a", usize::MAX).await.unwrap(), None);
    assert_eq!(
        store.get("b", usize::MAX).await.unwrap(),
        Some(b"2".to_vec())
    );
    // A key over the limit stops the batch with the store's error.
    assert!(
        store
            .set_many(vec![
                ("c".into(), b"3".to_vec()),
                ("far-too-long".into(), b"4".to_vec())
            ])
            .await
            .is_err()
    );
    assert_eq!(
        store.get("c", usize::MAX).await.unwrap(),
        Some(b"3".to_vec()),
        "earlier pairs were applied"
    );
}

/// Batch calls name at most `max_batch_keys` keys, and `get-many` stops as soon as its values
/// take more than the room it is given.
#[tokio::test]
async fn batch_calls_are_bounded_by_key_count_and_bytes() {
    use wasmgate::capabilities::keyvalue::{KvError, Stores};
    let config: std::collections::BTreeMap<String, wasmgate::config::KeyValueConfig> =
        toml::from_str("[b]\nbackend = \"memory\"\nmax_batch_keys = 3\n").unwrap();
    let stores = Stores::build(
        &config,
        |p| p.to_path_buf(),
        &wasmgate::metrics::Metrics::new(),
    )
    .unwrap();
    let store = stores.grants(&["b".to_string()]).unwrap()["b"]
        .clone()
        .expect("granted");
    let keys = |n: usize| (0..n).map(|i| format!("k{i}")).collect::<Vec<_>>();
    let too_many = |r: Result<(), KvError>| matches!(r, Err(KvError::Other(e)) if e.contains("more than the store's limit of 3 (max_batch_keys)"));
    assert!(too_many(
        store
            .set_many(keys(4).into_iter().map(|k| (k, b"v".to_vec())).collect())
            .await
    ));
    assert!(too_many(store.delete_many(keys(4)).await));
    assert!(too_many(
        store.get_many(keys(4), usize::MAX).await.map(drop)
    ));
    assert_eq!(
        store.get("k0", usize::MAX).await.unwrap(),
        None,
        "nothing was set"
    );

    store.set("k0", &[7; 100]).await.unwrap();
    let three = vec!["k0".to_string(); 3];
    assert_eq!(store.get_many(three.clone(), 306).await.unwrap().len(), 3);
    let over = store.get_many(three, 305).await.unwrap_err();
    assert!(
        matches!(&over, KvError::Other(e) if e.contains("(max_request_bytes)")),
        "{over:?}"
    );
    assert!(store.get("k0", 99).await.is_err());
}

/// 50,000 keys paged through a NATS bucket: every key once, in order, and the bucket's keys
/// are read once for the whole listing, not once per page.
#[tokio::test]
async fn fifty_thousand_keys_page_through_nats_reading_the_keys_once() {
    let bucket = unique("wasmgate_test_");
    let backend = Arc::new(NatsBackend::new(NATS, &bucket, true));
    backend
        .exists("probe")
        .await
        .expect("NATS with JetStream must run on 127.0.0.1:4222");
    let client = async_nats::connect(NATS).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let kv = js.get_key_value(bucket.as_str()).await.unwrap();
    let expected: Vec<String> = (0..50_000).map(|i| format!("key-{i:05}")).collect();
    // Written straight to the bucket, many at a time (keys need no encoding).
    let writes = futures::stream::iter(expected.iter().cloned().map(|key| {
        let kv = kv.clone();
        async move { kv.put(key, "v".into()).await.map(drop) }
    }))
    .buffer_unordered(256)
    .collect::<Vec<_>>()
    .await;
    assert!(writes.iter().all(Result::is_ok));

    let started = std::time::Instant::now();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = backend.list_keys(cursor.as_deref(), 1000).await.unwrap();
        seen.extend(page.keys);
        match page.cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let elapsed = started.elapsed();
    eprintln!("listed 50,000 NATS keys in 50 pages in {elapsed:?}");
    assert_eq!(seen, expected, "every key once, in order");
    assert_eq!(
        backend.key_scans(),
        1,
        "the keys were read once, not per page"
    );

    // A continuation the backend has no snapshot for (another gateway served the first
    // page) reads the keys afresh and goes on after the cursor.
    let other = NatsBackend::new(NATS, &bucket, true);
    let page = other.list_keys(Some("key-49994"), 1000).await.unwrap();
    assert_eq!(
        page.keys,
        [
            "key-49995",
            "key-49996",
            "key-49997",
            "key-49998",
            "key-49999"
        ]
    );
    assert_eq!(page.cursor, None);
    let _ = js.delete_key_value(bucket).await;
}

/// redb work runs on its own bounded pool: a write that has not started within the queue wait
/// is reported as failed and never runs, and a write that has started is waited for and
/// reported as it ended, however long redb makes it wait.
#[tokio::test]
async fn redb_writes_are_never_reported_failed_and_then_committed() {
    use wasmgate::capabilities::keyvalue::pool::BlockingPool;
    let dir = tempfile::tempdir().unwrap();
    let db = open_database(&dir.path().join("kv.redb")).unwrap();
    let wait = Duration::from_secs(1);
    let pool = Arc::new(BlockingPool::new("redb", 1, 8, wait).unwrap());
    let kv = Arc::new(RedbBackend::new(db.clone(), "t", None, pool).unwrap());

    // Another writer holds redb's one write transaction.
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (held, is_held) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        let txn = db.begin_write().unwrap();
        held.send(()).unwrap();
        released.recv().unwrap();
        drop(txn);
    });
    is_held.recv().unwrap();

    // Starts on the pool's only thread and waits there for the transaction.
    let started = {
        let kv = kv.clone();
        tokio::spawn(async move { kv.set("started", b"1").await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Queued behind it past the queue wait.
    let queued = {
        let kv = kv.clone();
        tokio::spawn(async move { kv.set("queued", b"1").await })
    };
    tokio::time::sleep(wait + Duration::from_millis(500)).await;
    let err = queued.await.unwrap().unwrap_err();
    assert!(
        matches!(&err, BackendError::Unavailable(e) if e.contains("was not done")),
        "{err:?}"
    );

    release.send(()).unwrap();
    holder.join().unwrap();
    assert_eq!(
        started.await.unwrap(),
        Ok(()),
        "waited for past the queue wait"
    );
    assert_eq!(kv.get("started").await.unwrap().as_deref(), Some(&b"1"[..]));
    assert_eq!(kv.get("queued").await.unwrap(), None, "never written");
}
