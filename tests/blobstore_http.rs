//! wasi:blobstore end to end: real components (`blob-files` on the gateway's own bindings,
//! `blob-wasmcloud` on wasmCloud's SDK) behind real gateways, on every backend, with real NATS
//! and S3 (SeaweedFS, started by `tests/services/s3-server`).

mod common;
#[path = "common/tcp_proxy.rs"]
mod tcp_proxy;

use bytes::Bytes;
use common::*;
use http::{Method, Request, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody};
use std::time::{Duration, Instant};

fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

/// A `[blobstore.files]` table on `backend`, with unique names so runs never collide.
fn store_table(backend: &str, dir: &std::path::Path) -> String {
    match backend {
        "memory" => "[blobstore.files]\nbackend = \"memory\"\n".to_string(),
        "fs" => format!(
            "[blobstore.files]\nbackend = \"fs\"\npath = {}\n",
            toml_path(&dir.join("blobs"))
        ),
        "nats" => format!(
            "[blobstore.files]\nbackend = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\nprefix = \"wgtest{}\"\n",
            unique()
        ),
        "s3" => format!(
            "[blobstore.files]\nbackend = \"s3\"\nendpoint = \"http://127.0.0.1:18333\"\n\
             bucket = \"wasmgate-test\"\nprefix = \"http/{}\"\n\
             access_key_id = \"wasmgate-test-key\"\nsecret_access_key = \"wasmgate-test-secret\"\n",
            unique()
        ),
        other => panic!("unknown backend {other}"),
    }
}

fn files_route(store: Option<&str>) -> String {
    let store = store.map_or(String::new(), |s| format!("blobstore = \"{s}\"\n"));
    format!(
        "[[route]]\npath = \"/files/...\"\ncomponent = {}\n{store}max_concurrency = 16\ntimeout = \"120s\"\n",
        toml_path(&guest("blob-files"))
    )
}

fn request(method: Method, url: &str, data: impl Into<Bytes>) -> Request<ClientBody> {
    Request::builder()
        .method(method)
        .uri(url)
        .body(body(data))
        .unwrap()
}

async fn call(client: &HttpClient, method: Method, url: &str, data: &[u8]) -> (StatusCode, String) {
    let (status, _, text) = read(send(client, request(method, url, data.to_vec())).await).await;
    (status, text)
}

async fn files_work_over_http(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&format!(
        "{}\n{}",
        store_table(backend, dir.path()),
        files_route(Some("files"))
    ));
    let client = http1();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    let (status, text) = call(
        &client,
        Method::PUT,
        &gw.url("/files/docs/report%20v1.bin"),
        &data,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    assert_eq!(text, "stored 100000 bytes\n");
    call(&client, Method::PUT, &gw.url("/files/docs/empty"), b"").await;

    let response = send(
        &client,
        request(Method::GET, &gw.url("/files/docs/report%20v1.bin"), ""),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-length"], "100000");
    let got = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(got, data);

    // Ranges map to get-data.
    let ranged = Request::builder()
        .uri(gw.url("/files/docs/report%20v1.bin"))
        .header("range", "bytes=1000-1999")
        .body(empty())
        .unwrap();
    let response = send(&client, ranged).await;
    assert_eq!(response.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        response.headers()["content-range"],
        "bytes 1000-1999/100000"
    );
    let got = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(got, &data[1000..2000]);
    let suffix = Request::builder()
        .uri(gw.url("/files/docs/report%20v1.bin"))
        .header("range", "bytes=-10")
        .body(empty())
        .unwrap();
    let got = send(&client, suffix)
        .await
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(got, &data[99_990..]);
    let past = Request::builder()
        .uri(gw.url("/files/docs/report%20v1.bin"))
        .header("range", "bytes=100000-")
        .body(empty())
        .unwrap();
    assert_eq!(
        send(&client, past).await.status(),
        StatusCode::RANGE_NOT_SATISFIABLE
    );

    let (status, listing) = call(&client, Method::GET, &gw.url("/files/docs"), b"").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listing, "empty\nreport v1.bin\n");
    let (status, _) = call(&client, Method::DELETE, &gw.url("/files/docs/empty"), b"").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = call(&client, Method::GET, &gw.url("/files/docs/empty"), b"").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(&client, Method::GET, &gw.url("/files/nothing-here"), b"").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(&client, Method::DELETE, &gw.url("/files/docs"), b"").await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = call(
        &client,
        Method::GET,
        &gw.url("/files/docs/report%20v1.bin"),
        b"",
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let metrics = gw.metrics().await;
    let written = metric_value(
        &metrics,
        "wasmgate_blobstore_bytes_total",
        &[("store", "files"), ("direction", "write")],
    );
    assert_eq!(written, Some(100_000.0), "{metrics}");
    let ok_writes = metric_value(
        &metrics,
        "wasmgate_blobstore_operations_total",
        &[
            ("store", "files"),
            ("backend", backend),
            ("op", "write_data"),
            ("outcome", "ok"),
        ],
    );
    assert_eq!(ok_writes, Some(2.0), "{metrics}");
    assert!(
        metrics.contains("wasmgate_blobstore_operation_duration_seconds_bucket"),
        "{metrics}"
    );
}

#[tokio::test]
async fn files_work_over_http_on_memory() {
    files_work_over_http("memory").await;
}

#[tokio::test]
async fn files_work_over_http_on_fs() {
    files_work_over_http("fs").await;
}

#[tokio::test]
async fn files_work_over_http_on_nats() {
    files_work_over_http("nats").await;
}

#[tokio::test]
async fn files_work_over_http_on_s3() {
    files_work_over_http("s3").await;
}

#[tokio::test]
async fn a_route_without_a_blob_store_gets_access_denied() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&format!(
        "{}\n{}",
        store_table("memory", dir.path()),
        files_route(None)
    ));
    let (status, text) = call(&http1(), Method::PUT, &gw.url("/files/c/x"), b"data").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(text.contains("access denied"), "{text}");
    let metrics = gw.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "wasmgate_blobstore_operations_total",
            &[("store", "(none)"), ("outcome", "denied")],
        )
        .is_some(),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_component_built_with_the_wasmcloud_sdk_runs_unchanged() {
    let gw = Gateway::start(&format!(
        "[blobstore.shared]\nbackend = \"memory\"\n\n[[route]]\npath = \"/wc/...\"\ncomponent = {}\nblobstore = \"shared\"\n",
        toml_path(&guest("blob-wasmcloud"))
    ));
    let client = http1();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 199) as u8).collect();
    for (name, data) in [
        ("hello.txt", b"hello from wasmCloud".to_vec()),
        ("big.bin", big),
    ] {
        let (status, text) =
            call(&client, Method::PUT, &gw.url(&format!("/wc/{name}")), &data).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        assert_eq!(text, "stored\n");
        let response = send(
            &client,
            request(Method::GET, &gw.url(&format!("/wc/{name}")), ""),
        )
        .await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.into_body().collect().await.unwrap().to_bytes(),
            data
        );
    }
    let (status, listing) = call(&client, Method::GET, &gw.url("/wc/"), b"").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listing, "big.bin\nhello.txt\n");
}

/// The resident memory of a process, from /proc/PID/status.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|n| n.trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib / 1024.0
}

/// 200 MiB, streamed from the test in 1 MiB frames (a byte pattern, so the download can be
/// checked without keeping it).
fn pattern(mib: usize) -> ClientBody {
    let frames = (0..mib).map(|i| {
        let frame: Vec<u8> = (0..1 << 20)
            .map(|j: usize| ((i * 7 + j) % 251) as u8)
            .collect();
        Ok::<_, BoxError>(Frame::data(Bytes::from(frame)))
    });
    BodyExt::boxed(StreamBody::new(futures::stream::iter(frames)))
}

/// 200 MiB up and down through `backend`, with the gateway's RSS growing by less than
/// `allowance_mib` (the buffers the backend's writes hold: 1 MiB of channel everywhere, and up to
/// three 5 MiB parts of an S3 multipart upload).
async fn two_hundred_mebibytes_stream_through_with_flat_memory(backend: &str, allowance_mib: f64) {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start_with(
        &format!(
            "{}\n{}",
            store_table(backend, dir.path()),
            files_route(Some("files"))
        ),
        Sections {
            server: "max_request_body = \"300MiB\"\nrequest_timeout = \"120s\"\n".into(),
            ..Sections::default()
        },
    );
    let client = http1();
    // Warm up: the instance pool, the connection, the first object.
    call(
        &client,
        Method::PUT,
        &gw.url("/files/big/warm"),
        &vec![1u8; 4 << 20],
    )
    .await;
    let before = rss_mib(gw.pid());

    const MIB: usize = 200;
    let upload = Request::builder()
        .method(Method::PUT)
        .uri(gw.url("/files/big/object"))
        .body(pattern(MIB))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(120), client.request(upload))
        .await
        .unwrap()
        .unwrap();
    let (status, _, text) = read(response).await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    assert_eq!(text, format!("stored {} bytes\n", MIB << 20));
    let after_upload = rss_mib(gw.pid());

    let response = send(
        &client,
        request(Method::GET, &gw.url("/files/big/object"), ""),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    let mut body = response.into_body();
    let (mut received, mut mismatches) = (0usize, 0usize);
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.unwrap().into_data() {
            for (k, byte) in data.iter().enumerate() {
                let at = received + k;
                if *byte != (((at >> 20) * 7 + (at & ((1 << 20) - 1))) % 251) as u8 {
                    mismatches += 1;
                }
            }
            received += data.len();
        }
    }
    assert_eq!(received, MIB << 20);
    assert_eq!(mismatches, 0);
    let after_download = rss_mib(gw.pid());
    eprintln!(
        "RSS: {before:.1} MiB before, {after_upload:.1} MiB after the upload, \
         {after_download:.1} MiB after the download"
    );
    // Flat: far below the object's 200 MiB (the guest's instance and the buffers are a few MiB).
    assert!(
        after_upload - before < allowance_mib,
        "{before} -> {after_upload}"
    );
    assert!(
        after_download - before < allowance_mib,
        "{before} -> {after_download}"
    );
}

#[tokio::test]
async fn two_hundred_mebibytes_stream_through_fs_with_flat_memory() {
    two_hundred_mebibytes_stream_through_with_flat_memory("fs", 12.0).await;
}

#[tokio::test]
async fn two_hundred_mebibytes_stream_through_nats_with_flat_memory() {
    two_hundred_mebibytes_stream_through_with_flat_memory("nats", 12.0).await;
}

#[tokio::test]
async fn two_hundred_mebibytes_stream_through_s3_with_flat_memory() {
    two_hundred_mebibytes_stream_through_with_flat_memory("s3", 32.0).await;
}

#[tokio::test]
async fn a_client_that_disconnects_mid_upload_leaves_no_object() {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&format!(
        "{}\n{}",
        store_table("fs", dir.path()),
        files_route(Some("files"))
    ));
    let client = http1();
    call(&client, Method::PUT, &gw.url("/files/c/kept"), b"kept").await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let upload = Request::builder()
        .method(Method::PUT)
        .uri(gw.url("/files/c/partial"))
        .header("content-length", (50u64 << 20).to_string())
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap();
    let sending = tokio::spawn({
        // A client of its own: the connection of a cut upload must not go back into the pool
        // the later requests use.
        let client = http1();
        async move { client.request(upload).await }
    });
    for _ in 0..8 {
        tx.send(Ok(Frame::data(Bytes::from(vec![9u8; 1 << 20]))))
            .await
            .unwrap();
    }
    // The client goes away: its connection closes with the body cut short.
    sending.abort();
    drop(tx);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = call(&client, Method::GET, &gw.url("/files/c/partial"), b"").await;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "a partial upload became visible"
        );
        let leftovers = std::fs::read_dir(dir.path().join("blobs"))
            .unwrap()
            .flat_map(|container| std::fs::read_dir(container.unwrap().path()).unwrap())
            .count();
        if leftovers == 1 || Instant::now() > deadline {
            assert_eq!(leftovers, 1, "only `kept` is left, no temporary file");
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, text) = call(&client, Method::GET, &gw.url("/files/c/kept"), b"").await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "kept"));
}

#[tokio::test]
async fn a_backend_outage_is_an_error_for_its_route_only_and_recovers_by_itself() {
    let proxy = tcp_proxy::Proxy::start("127.0.0.1:4222").await;
    let prefix = format!("wgtest{}", unique());
    let gw = Gateway::start(&format!(
        "[blobstore.files]\nbackend = \"nats\"\nurl = \"nats://127.0.0.1:{}\"\nprefix = \"{prefix}\"\ntimeout = \"2s\"\n\n{}\n\
         [[route]]\npath = \"/hello\"\ncomponent = {}\n",
        proxy.port,
        files_route(Some("files")),
        toml_path(&guest("hello"))
    ));
    let client = http1();
    let (status, text) = call(&client, Method::PUT, &gw.url("/files/c/x"), b"before").await;
    assert_eq!(status, StatusCode::CREATED, "{text}");

    proxy.cut();
    let started = Instant::now();
    let (status, text) = call(&client, Method::GET, &gw.url("/files/c/x"), b"").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert!(text.contains("blobstore error"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let (status, _, _) = get(&client, &gw.url("/hello")).await;
    assert_eq!(status, StatusCode::OK, "other routes are unaffected");

    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, text) = call(&client, Method::GET, &gw.url("/files/c/x"), b"").await;
        if status == StatusCode::OK {
            assert_eq!(text, "before");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "did not recover: {status} {text}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let metrics = gw.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "wasmgate_blobstore_operations_total",
            &[("store", "files"), ("outcome", "error")],
        )
        .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    assert!(gw.output().contains("blobstore backend failed"));
    // The test's buckets.
    if let Ok(client) = async_nats::connect("nats://127.0.0.1:4222").await {
        let js = async_nats::jetstream::new(client);
        let _ = js.delete_object_store(format!("{prefix}_c")).await;
    }
}

#[tokio::test]
async fn a_backend_lost_mid_upload_fails_the_upload_within_the_timeout() {
    let proxy = tcp_proxy::Proxy::start("127.0.0.1:4222").await;
    let prefix = format!("wgtest{}", unique());
    let gw = Gateway::start_with(
        &format!(
            "[blobstore.files]\nbackend = \"nats\"\nurl = \"nats://127.0.0.1:{}\"\nprefix = \"{prefix}\"\ntimeout = \"2s\"\n\n{}",
            proxy.port,
            files_route(Some("files")),
        ),
        Sections {
            server: "max_request_body = \"300MiB\"\n".into(),
            ..Sections::default()
        },
    );
    let client = http1();
    let (status, text) = call(&client, Method::PUT, &gw.url("/files/c/small"), b"before").await;
    assert_eq!(status, StatusCode::CREATED, "{text}");

    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(2);
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let upload = Request::builder()
        .method(Method::PUT)
        .uri(gw.url("/files/c/big"))
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .unwrap();
    let response = tokio::spawn({
        // A client of its own: the connection of a cut upload must not go back into the pool
        // the later requests use.
        let client = http1();
        async move { client.request(upload).await }
    });
    // The client keeps sending (1 MiB every 20 ms) for as long as the gateway reads.
    let feeder = tokio::spawn(async move {
        for i in 0..2000 {
            let frame = Ok(Frame::data(Bytes::from(vec![i as u8; 1 << 20])));
            if tx.send(frame).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.cut();
    let cut_at = Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(30), response)
        .await
        .expect("an answer while the backend is gone")
        .unwrap()
        .unwrap();
    let (status, _, text) = read(response).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert!(text.contains("blobstore error"), "{text}");
    assert!(
        cut_at.elapsed() < Duration::from_secs(20),
        "{:?}",
        cut_at.elapsed()
    );
    feeder.abort();

    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, text) = call(&client, Method::GET, &gw.url("/files/c/big"), b"").await;
        if status == StatusCode::NOT_FOUND {
            break;
        }
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "the cut object appeared: {text}"
        );
        assert!(
            Instant::now() < deadline,
            "did not recover: {status} {text}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (status, text) = call(&client, Method::GET, &gw.url("/files/c/small"), b"").await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "before"));
    if let Ok(client) = async_nats::connect("nats://127.0.0.1:4222").await {
        let js = async_nats::jetstream::new(client);
        let _ = js.delete_object_store(format!("{prefix}_c")).await;
    }
}

#[tokio::test]
async fn a_reload_keeps_an_unchanged_store_and_rebuilds_a_changed_one() {
    let gw = Gateway::start(&format!(
        "[blobstore.files]\nbackend = \"memory\"\n\n{}",
        files_route(Some("files"))
    ));
    let client = http1();
    let (status, text) = call(&client, Method::PUT, &gw.url("/files/c/x"), b"kept").await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    let path = gw.dir.path().join("wasmgate.toml");
    let original = std::fs::read_to_string(&path).unwrap();
    let reload = |text: String| {
        std::fs::write(&path, text).unwrap();
        let request = Request::post(gw.admin_url("/reload"))
            .body(empty())
            .unwrap();
        let client = client.clone();
        async move {
            let (status, _, body) = read(send(&client, request).await).await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
    };
    // Another route, the same store: its data stays.
    reload(format!(
        "{original}\n[[route]]\npath = \"/hello\"\ncomponent = {}\n",
        toml_path(&guest("hello"))
    ))
    .await;
    let (status, text) = call(&client, Method::GET, &gw.url("/files/c/x"), b"").await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "kept"));
    // A changed store is a new store.
    reload(original.replace(
        "backend = \"memory\"",
        "backend = \"memory\"\nmax_object_size = \"1MiB\"",
    ))
    .await;
    let (status, _) = call(&client, Method::GET, &gw.url("/files/c/x"), b"").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// The host's side of the interface, driven by a real guest: write orders, abandoned values,
/// the object size limit, consume-sync's limit and the count of open values.
#[tokio::test]
async fn the_hosts_rules_hold_for_a_real_guest() {
    let gw = Gateway::start(&format!(
        "[blobstore.files]\nbackend = \"memory\"\nmax_object_size = \"12MiB\"\n\n{}\n\
         [[route]]\nhost = \"small.test\"\npath = \"/files/...\"\ncomponent = {}\n\
         blobstore = \"files\"\nmax_memory = \"8MiB\"\n",
        files_route(Some("files")),
        toml_path(&guest("blob-files"))
    ));
    let client = http1();
    let on = |host: &str, method: Method, path: &str, data: Vec<u8>| {
        Request::builder()
            .method(method)
            .uri(gw.url(path))
            .header("host", host)
            .body(body(data))
            .unwrap()
    };
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 241) as u8).collect();

    // The bytes before write-data: fine up to the 1 MiB that may wait, refused beyond.
    let (status, text) = call(
        &client,
        Method::PUT,
        &gw.url("/files/c/early?mode=data-last"),
        &data,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    let response = send(&client, request(Method::GET, &gw.url("/files/c/early"), "")).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.into_body().collect().await.unwrap().to_bytes() == data);
    let (status, text) = call(
        &client,
        Method::PUT,
        &gw.url("/files/c/late?mode=data-last"),
        &vec![1u8; 3 << 20],
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert!(text.contains("call write-data first"), "{text}");

    // A value dropped without finish stores nothing, even with its stream still open, and an
    // earlier object of the name stays.
    call(&client, Method::PUT, &gw.url("/files/c/x"), b"old").await;
    let (status, text) = call(
        &client,
        Method::PUT,
        &gw.url("/files/c/x?mode=abandon"),
        &data,
    )
    .await;
    assert_eq!(
        (status, text.as_str()),
        (StatusCode::ACCEPTED, "abandoned, stream refused: true\n")
    );
    let (status, text) = call(&client, Method::GET, &gw.url("/files/c/x"), b"").await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "old"));

    // Past max_object_size: the guest hears why (not a trap), nothing is stored.
    let (status, text) = call(
        &client,
        Method::PUT,
        &gw.url("/files/c/huge"),
        &vec![2u8; 13 << 20],
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert!(text.contains("max_object_size"), "{text}");
    let (status, _) = call(&client, Method::GET, &gw.url("/files/c/huge"), b"").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // consume-sync reads what the route's max_memory allows, and refuses more.
    let ten: Vec<u8> = (0..10u32 << 20).map(|i| (i % 239) as u8).collect();
    call(&client, Method::PUT, &gw.url("/files/c/ten"), &ten).await;
    let response = send(
        &client,
        request(Method::GET, &gw.url("/files/c/ten?sync=1"), ""),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        ten
    );
    let (status, _, text) = read(
        send(
            &client,
            on("small.test", Method::GET, "/files/c/ten?sync=1", vec![]),
        )
        .await,
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
    assert!(
        text.contains("max_memory") && text.contains("consume-async"),
        "{text}"
    );
    let streamed = send(
        &client,
        on("small.test", Method::GET, "/files/c/ten", vec![]),
    )
    .await;
    assert_eq!(streamed.status(), StatusCode::OK);
    let streamed = streamed.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(streamed.len(), 10 << 20, "streaming has no limit");

    // Sixteen open values per request; a seventeenth traps the guest.
    let (status, text) = call(&client, Method::POST, &gw.url("/files/c?values=16"), b"").await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "held 16\n"));
    let (status, _) = call(&client, Method::POST, &gw.url("/files/c?values=17"), b"").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    gw.wait_for_output(Duration::from_secs(5), |out| {
        out.contains("unfinished outgoing-values")
    });
}

/// The functions blob-files' plain GET and PUT do not call, through the component.
async fn the_rest_of_the_interface(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let gw = Gateway::start(&format!(
        "{}\n{}",
        store_table(backend, dir.path()),
        files_route(Some("files"))
    ));
    let client = http1();
    for name in ["a", "b", "c", "d"] {
        let (status, text) = call(
            &client,
            Method::PUT,
            &gw.url(&format!("/files/one/{name}")),
            name.as_bytes(),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{text}");
    }
    call(&client, Method::PUT, &gw.url("/files/two/placeholder"), b"").await;
    let ask = |method: Method, path: &str| {
        let client = client.clone();
        let url = gw.url(path);
        async move { call(&client, method, &url, b"").await }
    };
    assert_eq!(
        ask(Method::GET, "/files/one/a?exists=1").await,
        (StatusCode::OK, "true\n".into())
    );
    assert_eq!(
        ask(Method::GET, "/files/one/zz?exists=1").await,
        (StatusCode::OK, "false\n".into())
    );
    let (status, info) = ask(Method::GET, "/files/one?info=1").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        info.starts_with("container one (one), created at "),
        "{info}"
    );
    assert_eq!(
        ask(Method::GET, "/files/one?skip=3").await,
        (StatusCode::OK, "skipped 3, then 1\n".into())
    );
    assert_eq!(
        ask(Method::GET, "/files/one?skip=10").await,
        (StatusCode::OK, "skipped 4, then 0\n".into())
    );

    // Copy and move across containers.
    assert_eq!(
        ask(Method::POST, "/files/one/a?copy-to=two/a-copy").await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        ask(Method::POST, "/files/one/b?move-to=two/b-moved")
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        ask(Method::GET, "/files/two/a-copy").await,
        (StatusCode::OK, "a".into())
    );
    assert_eq!(
        ask(Method::GET, "/files/two/b-moved").await,
        (StatusCode::OK, "b".into())
    );
    assert_eq!(
        ask(Method::GET, "/files/one/b").await.0,
        StatusCode::NOT_FOUND
    );
    let (status, text) = ask(Method::POST, "/files/one/a?copy-to=nowhere/a").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{text}");

    // delete-objects, then clear.
    assert_eq!(
        ask(Method::POST, "/files/one?delete=a,c,never-was").await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        ask(Method::GET, "/files/one").await,
        (StatusCode::OK, "d\n".into())
    );
    assert_eq!(
        ask(Method::DELETE, "/files/two?clear=1").await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        ask(Method::GET, "/files/two").await,
        (StatusCode::OK, String::new())
    );
    assert_eq!(
        ask(Method::GET, "/files/two?info=1").await.0,
        StatusCode::OK,
        "clear keeps the container"
    );
}

#[tokio::test]
async fn the_rest_of_the_interface_on_memory() {
    the_rest_of_the_interface("memory").await;
}

#[tokio::test]
async fn the_rest_of_the_interface_on_fs() {
    the_rest_of_the_interface("fs").await;
}

#[tokio::test]
async fn the_rest_of_the_interface_on_nats() {
    the_rest_of_the_interface("nats").await;
}

#[tokio::test]
async fn the_rest_of_the_interface_on_s3() {
    the_rest_of_the_interface("s3").await;
}
