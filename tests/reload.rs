//! Reloading the config while serving: build then swap, invisible to clients (issue 9).

mod common;

use common::*;
use http::{Request, StatusCode};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The sections `Gateway::start` writes, so a test can rewrite the file with other routes.
fn config_text(routes: &str, server: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{server}\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[engine]\n{}\n{routes}",
        Sections::default().engine
    )
}

/// Generation A: `/v` is hello, `/stream` streams.
fn routes_a() -> String {
    format!(
        r#"
[[route]]
path = "/v"
component = {hello}

[[route]]
path = "/stream"
component = {streaming}
"#,
        hello = toml_path(&guest("hello")),
        streaming = toml_path(&guest("streaming")),
    )
}

/// Generation B: `/v` is echo (another component), and `/extra` is a new route.
fn routes_b() -> String {
    format!(
        r#"
[[route]]
path = "/v"
component = {echo}

[[route]]
path = "/stream"
component = {streaming}

[[route]]
path = "/extra"
component = {hello}
"#,
        hello = toml_path(&guest("hello")),
        echo = toml_path(&guest("echo")),
        streaming = toml_path(&guest("streaming")),
    )
}

fn rewrite(gw: &Gateway, text: &str) {
    std::fs::write(gw.dir.path().join("wasmgate.toml"), text).expect("write config");
}

async fn reload(gw: &Gateway) -> (StatusCode, String) {
    let request = Request::post(gw.admin_url("/reload"))
        .body(empty())
        .unwrap();
    let (status, _, body) = read(send(&http1(), request).await).await;
    (status, body)
}

async fn generation(gw: &Gateway) -> f64 {
    metric_value(&gw.metrics().await, "wasmgate_config_generation", &[]).unwrap_or(0.0)
}

#[tokio::test]
async fn twenty_reloads_under_load_lose_no_request() {
    let gw = Gateway::start(&routes_a());
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for i in 0..6 {
        let client = if i % 2 == 0 { http1() } else { http2() };
        let url = gw.url("/v");
        let stop = stop.clone();
        let served = served.clone();
        clients.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let request = Request::get(&url).body(empty()).unwrap();
                match client.request(request).await {
                    Ok(response) => {
                        let (status, headers, body) = read(response).await;
                        // One generation's answer or the other's, whole: hello's text, or
                        // echo's headers with an empty body.
                        let hello = body == "Hello from wasmgate!\n";
                        let echo = headers.contains_key("x-echo-method") && body.is_empty();
                        if status != StatusCode::OK || !(hello || echo) {
                            failures.push(format!("{status} {body:?}"));
                        }
                    }
                    Err(e) => failures.push(format!("request failed: {e:?}")),
                }
                served.fetch_add(1, Ordering::Relaxed);
            }
            failures
        }));
    }
    // A streamed response that spans several reloads.
    let streamed = {
        let url = gw.url("/stream?chunks=20&delay_ms=100");
        tokio::spawn(async move { get(&http1(), &url).await })
    };

    for i in 0..20 {
        let (routes, extra) = if i % 2 == 0 {
            (routes_b(), StatusCode::OK)
        } else {
            (routes_a(), StatusCode::NOT_FOUND)
        };
        rewrite(&gw, &config_text(&routes, ""));
        let (status, body) = reload(&gw).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert!(body.contains(&format!("generation {}", i + 2)), "{body}");
        let (status, _, _) = get(&http1(), &gw.url("/extra")).await;
        assert_eq!(status, extra, "after reload {i}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let failures = client.await.unwrap();
        assert!(failures.is_empty(), "{failures:?}");
    }
    assert!(
        served.load(Ordering::Relaxed) > 200,
        "the load was too light"
    );
    let (status, _, body) = streamed.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.lines().count(), 20, "{body}");
    assert_eq!(generation(&gw).await, 21.0);
}

#[tokio::test]
async fn a_broken_config_or_component_keeps_the_old_generation() {
    let gw = Gateway::start(&routes_a());
    rewrite(&gw, &config_text(&routes_a(), "no_such_key = 1\n"));
    let (status, body) = reload(&gw).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(body.contains("no_such_key"), "{body}");

    let not_a_component = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let broken = format!(
        "{}\n[[route]]\npath = \"/broken\"\ncomponent = {}\n",
        routes_b(),
        toml_path(&not_a_component)
    );
    rewrite(&gw, &config_text(&broken, ""));
    let (status, body) = reload(&gw).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        body.contains("/broken") && body.contains("Cargo.toml"),
        "{body}"
    );

    // Generation 1 still serves: hello at /v, no /extra.
    let (status, _, body) = get(&http1(), &gw.url("/v")).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "Hello from wasmgate!\n")
    );
    assert_eq!(
        get(&http1(), &gw.url("/extra")).await.0,
        StatusCode::NOT_FOUND
    );
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "wasmgate_config_reloads_total",
            &[("outcome", "failure")]
        ),
        Some(2.0)
    );
    assert_eq!(generation(&gw).await, 1.0);
    gw.wait_for_output(Duration::from_secs(5), |line| {
        line.contains("reload failed, still serving the old config")
    });
}

#[tokio::test]
async fn sighup_the_reload_command_and_a_file_change_each_reload() {
    let gw = Gateway::start_with(
        &routes_a(),
        Sections {
            server: "watch = true\n".into(),
            ..Sections::default()
        },
    );
    // SIGHUP.
    rewrite(&gw, &config_text(&routes_b(), "watch = true\n"));
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &gw.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    wait_for_generation(&gw, 2.0).await;
    assert_eq!(get(&http1(), &gw.url("/extra")).await.0, StatusCode::OK);

    // `wasmgate reload --admin ADDR`.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_wasmgate"))
        .args(["reload", "--admin", &gw.admin.to_string()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("reloaded: generation 3"), "{text}");

    // A change to the config file, with `watch = true`.
    rewrite(&gw, &config_text(&routes_a(), "watch = true\n"));
    wait_for_generation(&gw, 4.0).await;
    assert_eq!(
        get(&http1(), &gw.url("/extra")).await.0,
        StatusCode::NOT_FOUND
    );
}

async fn wait_for_generation(gw: &Gateway, want: f64) {
    let started = Instant::now();
    while generation(gw).await != want {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "generation {} after 10 s, expected {want}:\n{}",
            generation(gw).await,
            gw.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// In process: a request in flight keeps its generation's component alive, and it is freed
/// once that request ends.
#[tokio::test]
async fn the_old_generation_is_freed_when_its_last_request_ends() {
    use http_body_util::BodyExt;
    use wasmgate::generation::Backend;

    let dir = tempfile::tempdir().unwrap();
    let parse = |routes: &str| {
        wasmgate::config::Config::parse(&config_text(routes, ""), dir.path().to_path_buf()).unwrap()
    };
    let first = parse(&routes_a());
    let gateway = wasmgate::gateway::Gateway::new(
        wasmgate::runtime::loader::Process::start(&first, wasmgate::metrics::Metrics::new())
            .unwrap(),
    );
    gateway.load(&first).unwrap();
    let old_components: Vec<_> = gateway
        .generation()
        .routes
        .targets()
        .flat_map(|(_, route)| route.target.backends())
        .filter_map(|backend| match backend {
            Backend::Component(component) => Some(Arc::downgrade(component)),
            Backend::Upstream(_) => None,
        })
        .collect();

    let body = http_body_util::Empty::<bytes::Bytes>::new()
        .map_err(|never| -> wasmtime_wasi_http::Error { match never {} });
    let request = Request::get("http://localhost/stream?chunks=3&delay_ms=200")
        .body(body)
        .unwrap();
    let response = gateway.handle(request).await;
    assert_eq!(response.status(), StatusCode::OK);

    gateway.load(&parse(&routes_b())).unwrap();
    assert!(
        old_components.iter().any(|weak| weak.upgrade().is_some()),
        "the streaming request still uses its generation's component"
    );
    let text = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(text.len(), "chunk 0\n".len() * 3);
    // The guest's task drops its store after the body ends.
    let started = Instant::now();
    while old_components.iter().any(|weak| weak.upgrade().is_some()) {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the old generation's components are still alive"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_route_whose_limits_did_not_change_keeps_its_admission_state() {
    let routes = format!(
        "[[route]]\npath = \"/one\"\ncomponent = {}\nmax_concurrency = 1\nqueue_size = 0\n",
        toml_path(&guest("streaming"))
    );
    let gw = Gateway::start(&routes);
    // Holds the route's only permit for about a second.
    let held = {
        let url = gw.url("/one?chunks=10&delay_ms=100");
        tokio::spawn(async move { get(&http1(), &url).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    rewrite(&gw, &config_text(&format!("{routes}\n{}", routes_b()), ""));
    assert_eq!(reload(&gw).await.0, StatusCode::OK);
    // The new generation's /one shares the old one's limit: still full.
    let (status, _, _) = get(&http1(), &gw.url("/one?chunks=1&delay_ms=0")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(held.await.unwrap().0, StatusCode::OK);
    let (status, _, _) = get(&http1(), &gw.url("/one?chunks=1&delay_ms=0")).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_reload_applies_a_new_log_level() {
    let gw = Gateway::start_with(
        &routes_a(),
        Sections {
            rust_log: None,
            ..Sections::default()
        },
    );
    let (status, headers, _) = get(&http1(), &gw.url("/v")).await;
    assert_eq!(status, StatusCode::OK);
    let before = headers
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    gw.wait_for_output(Duration::from_secs(5), |line| {
        line.contains("wasmgate::access") && line.contains(&before)
    });

    rewrite(
        &gw,
        &config_text(&format!("[logging]\nlevel = \"warn\"\n{}", routes_a()), ""),
    );
    let (status, body) = reload(&gw).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(!body.contains("restart"), "{body}");
    let (_, headers, _) = get(&http1(), &gw.url("/v")).await;
    let after = headers
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    // A line at warn level comes after the request, so its access line would be there by then.
    let _ = get(&http1(), &gw.url("/no-such-route")).await;
    rewrite(&gw, &config_text("no_such_key = 1\n", ""));
    let _ = reload(&gw).await;
    gw.wait_for_output(Duration::from_secs(5), |line| {
        line.contains("reload failed")
    });
    assert!(
        !gw.output().contains(&after),
        "an info line was logged at level warn:\n{}",
        gw.output()
    );
}

#[tokio::test]
async fn a_self_call_is_routed_by_the_generation_its_request_started_on() {
    // Generation A has the private route the caller reaches through http://self; generation B
    // has not. A request that started on A makes its self-call after the reload to B.
    let caller = format!(
        "[[route]]\npath = \"/fetch\"\ncomponent = {}\nallowed_outbound_hosts = [\"http://self\"]\n",
        toml_path(&guest("outbound"))
    );
    let target = format!(
        "[[route]]\npath = \"/target\"\ncomponent = {}\nprivate = true\n",
        toml_path(&guest("hello"))
    );
    let gw = Gateway::start(&format!("{caller}\n{target}"));
    let client = http1();
    let url = gw.url("/fetch?url=http%3A%2F%2Fself%2Ftarget&delay_ms=1500");
    let in_flight = tokio::spawn(async move { get(&client, &url).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    rewrite(&gw, &config_text(&caller, ""));
    let (status, body) = reload(&gw).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, headers, body) = in_flight.await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        headers
            .get("x-upstream-status")
            .map(|v| v.to_str().unwrap()),
        Some("200"),
        "{body}"
    );
    assert_eq!(body, "Hello from wasmgate!\n");
    // A request that starts on B finds no such route.
    let (_, headers, _) = get(&http1(), &gw.url("/fetch?url=http%3A%2F%2Fself%2Ftarget")).await;
    assert_eq!(
        headers
            .get("x-upstream-status")
            .map(|v| v.to_str().unwrap()),
        Some("404")
    );
}

#[tokio::test]
async fn a_reload_applies_env_config_grants_new_stores_and_limits() {
    let routes = |color: &str, value: &str, grant: &str, store: &str, body: &str| {
        format!(
            "{store}\n[[route]]\npath = \"/env\"\ncomponent = {env}\nenv = {{ COLOR = \"{color}\" }}\n\n\
             [[route]]\npath = \"/config/...\"\ncomponent = {config}\nconfig = {{ k = \"{value}\" }}\n\n\
             [[route]]\npath = \"/kv/...\"\ncomponent = {kv}\nkeyvalue = [{grant}]\nenv = {{ KV_STORE = \"mem\" }}\n\n\
             [[route]]\npath = \"/echo/...\"\ncomponent = {echo}\n{body}\n",
            env = toml_path(&guest("env")),
            config = toml_path(&guest("config-echo")),
            kv = toml_path(&guest("kv-crud")),
            echo = toml_path(&guest("echo")),
        )
    };
    let gw = Gateway::start(&routes("red", "v1", "", "", ""));
    let client = http1();
    let (_, _, env) = get(&client, &gw.url("/env")).await;
    assert!(env.contains("COLOR=red\n"), "{env}");
    let (_, _, value) = get(&client, &gw.url("/config/k")).await;
    assert_eq!(value, "v1");
    let put = |client: &HttpClient| {
        let request = Request::put(gw.url("/kv/key")).body(body("x")).unwrap();
        let client = client.clone();
        async move { read(send(&client, request).await).await.0 }
    };
    assert_ne!(
        put(&client).await,
        StatusCode::NO_CONTENT,
        "no store granted yet"
    );
    let big = Request::post(gw.url("/echo/x"))
        .body(body(vec![b'x'; 2048]))
        .unwrap();
    assert_eq!(read(send(&client, big).await).await.0, StatusCode::OK);

    // B: another env value and config value, a new memory store granted, a smaller body limit.
    rewrite(
        &gw,
        &config_text(
            &routes(
                "blue",
                "v2",
                "\"mem\"",
                "[keyvalue.mem]\nbackend = \"memory\"\n",
                "",
            ),
            "max_request_body = \"1KiB\"\n",
        ),
    );
    let (status, text) = reload(&gw).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let (_, _, env) = get(&client, &gw.url("/env")).await;
    assert!(env.contains("COLOR=blue\n"), "{env}");
    let (_, _, value) = get(&client, &gw.url("/config/k")).await;
    assert_eq!(value, "v2");
    assert_eq!(put(&client).await, StatusCode::NO_CONTENT);
    let (status, _, value) = get(&client, &gw.url("/kv/key")).await;
    assert_eq!((status, value.as_str()), (StatusCode::OK, "x"));
    let big = Request::post(gw.url("/echo/x"))
        .body(body(vec![b'x'; 2048]))
        .unwrap();
    assert_eq!(
        read(send(&client, big).await).await.0,
        StatusCode::PAYLOAD_TOO_LARGE
    );
}

#[tokio::test]
async fn with_watch_a_changed_component_file_is_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let component = dir.path().join("app.wasm");
    std::fs::copy(guest("hello"), &component).unwrap();
    let gw = Gateway::start_with(
        &format!(
            "[[route]]\npath = \"/app/...\"\ncomponent = {}\n",
            toml_path(&component)
        ),
        Sections {
            server: "watch = true\n".into(),
            ..Sections::default()
        },
    );
    let (_, _, body) = get(&http1(), &gw.url("/app/x")).await;
    assert_eq!(body, "Hello from wasmgate!\n");
    // A deployment replaces the file: written beside it, renamed over it.
    let next = dir.path().join("app.wasm.new");
    std::fs::copy(guest("echo"), &next).unwrap();
    std::fs::rename(&next, &component).unwrap();
    let started = Instant::now();
    loop {
        let (_, headers, _) = get(&http1(), &gw.url("/app/x")).await;
        if headers.contains_key("x-echo-method") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the new component was not served within 15 s:\n{}",
            gw.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(generation(&gw).await, 2.0);
}
