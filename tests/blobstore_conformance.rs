//! One conformance suite for every blobstore backend: memory, fs, and real NATS JetStream
//! (127.0.0.1:4222, which the machine runs) and S3 (SeaweedFS on 127.0.0.1:18333, started by
//! `tests/services/s3-server`, which `.ci/run` runs). The tests fail, not skip, if a service is
//! missing. Each test uses its own store: its own directory, NATS bucket prefix or S3 key prefix,
//! so runs never collide. The suite calls the store layer guests call (`Store`), so the names,
//! limits and errors are the ones a guest sees.

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use std::sync::Arc;
use std::time::Duration;
use wasmgate::capabilities::blobstore::backend::{Backend, BlobError, ByteStream};
use wasmgate::capabilities::blobstore::fs::FsBackend;
use wasmgate::capabilities::blobstore::memory::MemoryBackend;
use wasmgate::capabilities::blobstore::nats::NatsBackend;
use wasmgate::capabilities::blobstore::s3::S3Backend;
use wasmgate::capabilities::blobstore::{Op, Store};
use wasmgate::config::BlobStoreConfig;
use wasmgate::metrics::Metrics;

const NATS: &str = "nats://127.0.0.1:4222";
const S3: &str = "http://127.0.0.1:18333";
const S3_BUCKET: &str = "wasmgate-test";

fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

fn config(text: &str) -> BlobStoreConfig {
    toml::from_str(text).unwrap()
}

/// The S3 store config for a fresh prefix of the test bucket.
pub fn s3_config(prefix: &str) -> BlobStoreConfig {
    config(&format!(
        "backend = \"s3\"\nendpoint = \"{S3}\"\nbucket = \"{S3_BUCKET}\"\nprefix = \"{prefix}\"\n\
         access_key_id = \"wasmgate-test-key\"\nsecret_access_key = \"wasmgate-test-secret\"\n"
    ))
}

/// A store under test, and what keeps its data alive.
struct Subject {
    store: Arc<Store>,
    _dir: Option<tempfile::TempDir>,
    nats_prefix: Option<String>,
}

impl Subject {
    /// Removes what the test left in NATS (S3 prefixes are left: each is unique).
    async fn cleanup(self) {
        let Some(prefix) = self.nats_prefix else {
            return;
        };
        let Ok(client) = async_nats::connect(NATS).await else {
            return;
        };
        let js = async_nats::jetstream::new(client);
        let names: Vec<String> = js.stream_names().try_collect().await.unwrap_or_default();
        for name in names {
            if let Some(bucket) = name.strip_prefix("OBJ_")
                && bucket.starts_with(&prefix)
            {
                let _ = js.delete_object_store(bucket).await;
            }
        }
    }
}

fn store(backend: Arc<dyn Backend>, config: &BlobStoreConfig) -> Arc<Store> {
    Arc::new(Store::new("test", config, backend, &Metrics::new()))
}

/// A subject with extra config lines (limits).
async fn subject_with(kind: &str, extra: &str) -> Subject {
    match kind {
        "memory" => {
            let config = config(&format!("backend = \"memory\"\n{extra}"));
            Subject {
                store: store(Arc::new(MemoryBackend::new(1 << 30)), &config),
                _dir: None,
                nats_prefix: None,
            }
        }
        "fs" => {
            let dir = tempfile::tempdir().unwrap();
            let config = config(&format!("backend = \"fs\"\npath = \"unused\"\n{extra}"));
            Subject {
                store: store(Arc::new(FsBackend::open(dir.path()).unwrap()), &config),
                _dir: Some(dir),
                nats_prefix: None,
            }
        }
        "nats" => {
            let prefix = format!("wgtest{}", unique());
            let config = config(&format!("backend = \"nats\"\nurl = \"{NATS}\"\n{extra}"));
            let backend = NatsBackend::new(NATS, &prefix, Duration::from_secs(5));
            backend
                .container_count()
                .await
                .expect("NATS with JetStream must run on 127.0.0.1:4222 (CI starts it)");
            Subject {
                store: store(Arc::new(backend), &config),
                _dir: None,
                nats_prefix: Some(prefix),
            }
        }
        "s3" => {
            let mut config = s3_config(&format!("conformance/{}", unique()));
            let extra: BlobStoreConfig =
                toml::from_str(&format!("backend = \"s3\"\n{extra}")).unwrap();
            config.max_object_size = extra.max_object_size;
            config.max_containers = extra.max_containers;
            config.max_name_length = extra.max_name_length;
            let backend = S3Backend::new(&config).unwrap();
            backend.container_count().await.expect(
                "an S3 server must answer on 127.0.0.1:18333 with the bucket wasmgate-test: \
                 run tests/services/s3-server (CI does)",
            );
            Subject {
                store: store(Arc::new(backend), &config),
                _dir: None,
                nats_prefix: None,
            }
        }
        other => panic!("unknown backend {other}"),
    }
}

/// Runs `check` against every backend; the failure names the backend.
macro_rules! conformance {
    ($name:ident, $check:expr) => {
        conformance!($name, "", $check);
    };
    ($name:ident, $extra:expr, $check:expr) => {
        mod $name {
            use super::*;
            async fn run(kind: &str) {
                let subject = subject_with(kind, $extra).await;
                let check = $check;
                check(subject.store.clone()).await;
                subject.cleanup().await;
            }
            #[tokio::test]
            async fn memory() {
                run("memory").await
            }
            #[tokio::test]
            async fn fs() {
                run("fs").await
            }
            #[tokio::test]
            async fn nats() {
                run("nats").await
            }
            #[tokio::test]
            async fn s3() {
                run("s3").await
            }
        }
    };
}

fn bytes_of(data: &[u8], piece: usize) -> ByteStream {
    let pieces: Vec<Result<Bytes, BlobError>> = data
        .chunks(piece.max(1))
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    futures::stream::iter(pieces).boxed()
}

async fn put(store: &Arc<Store>, container: &str, name: &str, data: &[u8]) {
    let size = store
        .write_data(container, name, bytes_of(data, 4096))
        .await
        .unwrap_or_else(|e| panic!("write {container}/{name}: {e}"));
    assert_eq!(size, data.len() as u64);
}

async fn read(store: &Arc<Store>, container: &str, name: &str, start: u64, end: u64) -> Vec<u8> {
    let read = store
        .get_data(container, name, start, end)
        .await
        .unwrap_or_else(|e| panic!("read {container}/{name}: {e}"));
    let data: Vec<Bytes> = read.body.try_collect().await.unwrap();
    let data = data.concat();
    assert_eq!(
        read.size,
        data.len() as u64,
        "the announced size is what is read"
    );
    data
}

async fn all_names(store: &Arc<Store>, container: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = store
            .list_objects(container, cursor.as_deref())
            .await
            .unwrap();
        names.extend(page.names);
        match page.cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    names.sort();
    names
}

conformance!(containers_are_created_found_and_deleted, |store: Arc<
    Store,
>| async move {
    assert!(!store.container_exists("box").await.unwrap());
    assert!(matches!(
        store.get_container("box").await,
        Err(BlobError::NotFound(_))
    ));
    let created = store.create_container("box").await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        created.created_at.abs_diff(now) < 120,
        "{created:?} vs {now}"
    );
    assert!(store.container_exists("box").await.unwrap());
    assert_eq!(store.get_container("box").await.unwrap(), created);
    assert!(matches!(
        store.create_container("box").await,
        Err(BlobError::AlreadyExists(_))
    ));
    put(&store, "box", "inside", b"data").await;
    store.delete_container("box").await.unwrap();
    assert!(!store.container_exists("box").await.unwrap());
    assert!(matches!(
        store.delete_container("box").await,
        Err(BlobError::NotFound(_))
    ));
    // A container made again is empty.
    store.create_container("box").await.unwrap();
    assert!(all_names(&store, "box").await.is_empty());
    assert!(!store.has_object("box", "inside").await.unwrap());
});

conformance!(
    objects_round_trip_with_odd_names,
    |store: Arc<Store>| async move {
        store.create_container("c").await.unwrap();
        let binary: Vec<u8> = (0..=255).cycle().take(300_000).collect();
        let names = [
            "plain.txt",
            "with space and ünïcødé 日本語 🎉",
            "a/b/c",
            "..",
            ".",
            "../../escape",
            "percent%2Fand%",
            "nul\0byte",
            "_underscore_",
            "-",
        ];
        for name in names {
            put(&store, "c", name, &binary).await;
        }
        for name in names {
            assert!(store.has_object("c", name).await.unwrap(), "{name:?}");
            assert_eq!(
                read(&store, "c", name, 0, u64::MAX).await,
                binary,
                "{name:?}"
            );
            let info = store.object_info("c", name).await.unwrap();
            assert_eq!(info.size, binary.len() as u64);
        }
        let mut expected: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        expected.sort();
        assert_eq!(all_names(&store, "c").await, expected);
        // Odd container names too.
        for container in ["ünï/cødé", "..", "a_b"] {
            store.create_container(container).await.unwrap();
            put(&store, container, "x", b"in an odd container").await;
            assert_eq!(
                read(&store, container, "x", 0, u64::MAX).await,
                b"in an odd container"
            );
        }
        assert!(!store.has_object("ünï/cødé", "plain.txt").await.unwrap());
    }
);

conformance!(
    empty_objects_and_overwrites,
    |store: Arc<Store>| async move {
        store.create_container("c").await.unwrap();
        put(&store, "c", "empty", b"").await;
        assert_eq!(store.object_info("c", "empty").await.unwrap().size, 0);
        assert_eq!(read(&store, "c", "empty", 0, 0).await, b"");
        assert_eq!(read(&store, "c", "empty", 0, u64::MAX).await, b"");
        put(&store, "c", "x", b"first").await;
        put(&store, "c", "x", b"second, longer").await;
        assert_eq!(read(&store, "c", "x", 0, u64::MAX).await, b"second, longer");
        store.delete_object("c", "x").await.unwrap();
        store
            .delete_object("c", "x")
            .await
            .expect("deleting a missing object succeeds");
        assert!(!store.has_object("c", "x").await.unwrap());
        assert!(matches!(
            store.get_data("c", "x", 0, 10).await,
            Err(BlobError::NotFound(_))
        ));
        assert!(matches!(
            store.object_info("c", "x").await,
            Err(BlobError::NotFound(_))
        ));
        // Writing into a container that does not exist fails and creates nothing.
        assert!(matches!(
            store.write_data("nope", "x", bytes_of(b"data", 2)).await,
            Err(BlobError::NotFound(_))
        ));
        assert!(!store.container_exists("nope").await.unwrap());
    }
);

conformance!(range_reads_at_the_edges, |store: Arc<Store>| async move {
    store.create_container("c").await.unwrap();
    let data: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    put(&store, "c", "r", &data).await;
    assert_eq!(read(&store, "c", "r", 0, 0).await, &data[..1]);
    assert_eq!(
        read(&store, "c", "r", 0, 9).await,
        &data[..10],
        "end is inclusive"
    );
    assert_eq!(read(&store, "c", "r", 990, 999).await, &data[990..]);
    assert_eq!(read(&store, "c", "r", 999, 999).await, &data[999..]);
    assert_eq!(
        read(&store, "c", "r", 500, 5000).await,
        &data[500..],
        "end clamps"
    );
    assert_eq!(
        read(&store, "c", "r", 1000, 2000).await,
        b"",
        "past the end: nothing"
    );
    assert_eq!(
        read(&store, "c", "r", 10, 5).await,
        b"",
        "end before start: nothing"
    );
    assert_eq!(read(&store, "c", "r", 123, 456).await, &data[123..457]);
});

conformance!(
    listing_ten_thousand_objects,
    |store: Arc<Store>| async move {
        store.create_container("many").await.unwrap();
        let names: Vec<String> = (0..10_000).map(|i| format!("object-{i:05}")).collect();
        futures::stream::iter(names.iter())
            .for_each_concurrent(32, |name| {
                let store = store.clone();
                async move {
                    store
                        .write_data("many", name, bytes_of(b"x", 1))
                        .await
                        .unwrap();
                }
            })
            .await;
        let listed = all_names(&store, "many").await;
        assert_eq!(listed.len(), 10_000);
        assert_eq!(listed, names);
        store.clear("many").await.unwrap();
        assert!(all_names(&store, "many").await.is_empty());
        assert!(
            store.container_exists("many").await.unwrap(),
            "clear keeps the container"
        );
    }
);

conformance!(
    copy_and_move_across_containers,
    |store: Arc<Store>| async move {
        store.create_container("from").await.unwrap();
        store.create_container("to").await.unwrap();
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        put(&store, "from", "a", &data).await;
        put(&store, "to", "b", b"to be overwritten").await;
        store
            .copy_object(("from", "a"), ("to", "b"), Op::CopyObject)
            .await
            .unwrap();
        assert_eq!(read(&store, "to", "b", 0, u64::MAX).await, data);
        assert!(
            store.has_object("from", "a").await.unwrap(),
            "a copy keeps the source"
        );
        store
            .copy_object(("from", "a"), ("to", "moved"), Op::MoveObject)
            .await
            .unwrap();
        assert_eq!(read(&store, "to", "moved", 0, u64::MAX).await, data);
        assert!(
            !store.has_object("from", "a").await.unwrap(),
            "a move removes the source"
        );
        // Into a missing container, or from a missing object: errors, nothing written.
        assert!(matches!(
            store
                .copy_object(("to", "b"), ("nope", "b"), Op::CopyObject)
                .await,
            Err(BlobError::NotFound(_))
        ));
        assert!(matches!(
            store
                .copy_object(("from", "gone"), ("to", "c"), Op::CopyObject)
                .await,
            Err(BlobError::NotFound(_))
        ));
        assert!(!store.has_object("to", "c").await.unwrap());
        // Onto itself: nothing changes.
        store
            .copy_object(("to", "b"), ("to", "b"), Op::MoveObject)
            .await
            .unwrap();
        assert_eq!(read(&store, "to", "b", 0, u64::MAX).await, data);
    }
);

conformance!(concurrent_writers_to_one_name_never_mix, |store: Arc<
    Store,
>| async move {
    store.create_container("c").await.unwrap();
    // Eight writers of one name, each its own byte, each in many small pieces.
    let writers: Vec<_> = (0..8u8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let data = vec![b'a' + i; 300_000];
                store
                    .write_data("c", "contested", bytes_of(&data, 7000))
                    .await
                    .unwrap();
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    let data = read(&store, "c", "contested", 0, u64::MAX).await;
    assert_eq!(data.len(), 300_000);
    assert!(
        data.iter().all(|b| *b == data[0]),
        "one writer's object, whole"
    );
});

conformance!(
    abandoned_writes_leave_nothing,
    |store: Arc<Store>| async move {
        store.create_container("c").await.unwrap();
        put(&store, "c", "kept", b"the old object").await;
        for name in ["new", "kept"] {
            // Six MiB (more than one S3 part), then the guest gives up.
            let chunks = (0..6)
                .map(|_| Ok(Bytes::from(vec![1u8; 1 << 20])))
                .chain(std::iter::once(Err(BlobError::Abandoned)));
            let result = store
                .write_data("c", name, futures::stream::iter(chunks).boxed())
                .await;
            assert_eq!(result, Err(BlobError::Abandoned));
        }
        assert!(!store.has_object("c", "new").await.unwrap());
        assert_eq!(
            read(&store, "c", "kept", 0, u64::MAX).await,
            b"the old object"
        );
    }
);

conformance!(
    limits_refuse_before_anything_is_stored,
    "max_object_size = 1000\nmax_containers = 2\nmax_name_length = 20\n",
    |store: Arc<Store>| async move {
        store.create_container("one").await.unwrap();
        store.create_container("two").await.unwrap();
        let over = store.create_container("three").await.unwrap_err();
        assert!(over.to_string().contains("max_containers"), "{over}");
        let big = store
            .write_data("one", "big", bytes_of(&[0u8; 1001], 100))
            .await
            .unwrap_err();
        assert!(big.to_string().contains("max_object_size"), "{big}");
        assert!(!store.has_object("one", "big").await.unwrap());
        put(&store, "one", "fits", &[0u8; 1000]).await;
        let long = store
            .write_data("one", &"n".repeat(21), bytes_of(b"x", 1))
            .await
            .unwrap_err();
        assert!(long.to_string().contains("max_name_length"), "{long}");
        let empty = store.object_info("one", "").await.unwrap_err();
        assert!(empty.to_string().contains("empty"), "{empty}");
    }
);

#[tokio::test]
async fn fs_names_never_leave_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(
        Arc::new(FsBackend::open(dir.path()).unwrap()),
        &config("backend = \"fs\"\npath = \"unused\"\nmax_name_length = 1000\n"),
    );
    for container in ["..", "../outside", "/abs"] {
        store.create_container(container).await.unwrap();
        put(&store, container, "../../../etc/passwd", b"contained").await;
    }
    // Everything is inside the directory, one level of container directories deep.
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let entry = entry.unwrap();
        assert!(entry.file_type().unwrap().is_dir(), "{entry:?}");
        for file in std::fs::read_dir(entry.path()).unwrap() {
            assert!(file.unwrap().file_type().unwrap().is_file());
        }
    }
    assert!(!dir.path().join("../outside").exists());
    // A name too long for a file name once encoded is refused, clearly.
    let long = store
        .write_data("..", &"é".repeat(60), bytes_of(b"x", 1))
        .await
        .unwrap_err();
    assert!(
        long.to_string().contains("too long for an fs store"),
        "{long}"
    );
}

#[tokio::test]
async fn fs_removes_stale_temporary_files_a_crash_left() {
    let dir = tempfile::tempdir().unwrap();
    let backend = FsBackend::open(dir.path()).unwrap();
    backend.create_container("c").await.unwrap();
    let container_dir = std::fs::read_dir(dir.path())
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::write(container_dir.join(".tmp-crashed"), b"half").unwrap();
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    std::fs::File::options()
        .write(true)
        .open(container_dir.join(".tmp-crashed"))
        .unwrap()
        .set_modified(two_hours_ago)
        .unwrap();
    // A young one may be a write still running (another replica, the previous generation).
    std::fs::write(container_dir.join(".tmp-running"), b"half").unwrap();
    drop(backend);
    let backend = FsBackend::open(dir.path()).unwrap();
    assert!(!container_dir.join(".tmp-crashed").exists());
    assert!(container_dir.join(".tmp-running").exists());
    assert!(
        backend
            .list_objects("c", None, 10)
            .await
            .unwrap()
            .names
            .is_empty()
    );
}

#[tokio::test]
async fn memory_stays_within_its_total_size() {
    let store = store(
        Arc::new(MemoryBackend::new(10_000)),
        &config("backend = \"memory\"\n"),
    );
    store.create_container("c").await.unwrap();
    put(&store, "c", "a", &[0u8; 6000]).await;
    let full = store
        .write_data("c", "b", bytes_of(&[0u8; 6000], 1000))
        .await
        .unwrap_err();
    assert!(full.to_string().contains("full"), "{full}");
    // A write counts while it is collected, next to the object it replaces; once it replaced
    // it, the old object's room is free again.
    put(&store, "c", "a", &[0u8; 4000]).await;
    put(&store, "c", "b", &[0u8; 6000]).await;
    store.delete_object("c", "a").await.unwrap();
    store.delete_object("c", "b").await.unwrap();
    put(&store, "c", "b", &[0u8; 10_000]).await;
}

conformance!(
    range_reads_deep_in_large_objects,
    |store: Arc<Store>| async move {
        store.create_container("c").await.unwrap();
        // Two objects written at once, so that a backend that stores chunks in one log (NATS)
        // interleaves them, and one written alone.
        let object = |seed: u32| -> Vec<u8> {
            (0..1_500_000u32)
                .map(|i| ((i * 7 + seed) % 251) as u8)
                .collect()
        };
        let (a, b, alone) = (object(1), object(2), object(3));
        let (wa, wb) = tokio::join!(
            store.write_data("c", "a", bytes_of(&a, 4096)),
            store.write_data("c", "b", bytes_of(&b, 4096)),
        );
        wa.unwrap();
        wb.unwrap();
        put(&store, "c", "alone", &alone).await;
        for (name, data) in [("a", &a), ("b", &b), ("alone", &alone)] {
            for (start, end) in [
                (0, 99),
                (131_071, 131_072),
                (500_000, 600_000),
                (1_400_000, 2_000_000),
                (1_499_999, 1_499_999),
            ] {
                let end_excl = (end + 1).min(data.len() as u64) as usize;
                assert_eq!(
                    read(&store, "c", name, start, end).await,
                    &data[start as usize..end_excl],
                    "{name} {start}..={end}"
                );
            }
        }
    }
);
