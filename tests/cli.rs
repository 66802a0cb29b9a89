//! The command line: `check` on good and bad configs, the compile cache, shutdown, settings
//! from the environment and flags, and `health`.

mod common;

use common::*;
use http::{Request, StatusCode};
use std::io::Read as _;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn engine() -> String {
    format!(
        "[engine]\ncache_dir = {}\nmax_instances = 16\n",
        toml_path(&shared_cache_dir())
    )
}

fn one_route(component: &str) -> String {
    format!(
        "{}\n[[route]]\npath = \"/x\"\ncomponent = {component}\n",
        engine()
    )
}

#[test]
fn check_accepts_a_good_config_and_every_example_config() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, text) = check_config(dir.path(), &one_route(&toml_path(&guest("hello"))));
    assert!(ok, "{text}");
    assert!(text.contains("OK, 1 routes, 1 components"), "{text}");

    // Every example config the repository ships.
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut configs: Vec<_> = std::fs::read_dir(&examples)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "toml"))
        .collect();
    configs.sort();
    assert!(configs.len() >= 2, "{configs:?}");
    for config in configs {
        let output = Command::new(env!("CARGO_BIN_EXE_wasmgate"))
            .args(["check", config.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}: {}",
            config.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn check_names_the_route_the_file_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.wasm");
    std::fs::write(&garbage, b"definitely not wasm").unwrap();
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, [0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00]).unwrap();
    let needs_more = dir.path().join("needs-more.wat");
    std::fs::write(
        &needs_more,
        "(component (import \"acme:missing/thing@1.0.0\" (instance (export \"go\" (func)))))",
    )
    .unwrap();
    let missing = dir.path().join("missing.wasm");

    let cases: Vec<(String, Vec<String>)> = vec![
        (
            one_route(&toml_path(&missing)),
            vec![
                "route 1 (/x)".into(),
                "missing.wasm".into(),
                "cannot read component".into(),
            ],
        ),
        (
            one_route(&toml_path(&garbage)),
            vec!["route 1 (/x)".into(), "not a WebAssembly file".into()],
        ),
        (
            one_route(&toml_path(&core)),
            vec![
                "route 1 (/x)".into(),
                "core WebAssembly module, not a component".into(),
            ],
        ),
        (
            one_route(&toml_path(&guest("not-a-proxy"))),
            vec![
                "route 1 (/x)".into(),
                "not-a-proxy.wasm".into(),
                "exports neither `wasi:http/incoming-handler` (WASI 0.2) nor `wasi:http/handler@0.3.0`".into(),
            ],
        ),
        (
            one_route(&toml_path(&needs_more)),
            vec![
                "route 1 (/x)".into(),
                "needs-more.wat".into(),
                "acme:missing/thing".into(),
            ],
        ),
        (
            format!(
                "{}\n[[route]]\npath = \"/x\"\ncomponent = \"a.wasm\"\nmax_concurency = 3\n",
                engine()
            ),
            vec![
                "wasmgate.toml".into(),
                "max_concurency".into(),
                "line".into(),
            ],
        ),
        (
            format!(
                "{}\n[[route]]\npath = \"/u/:id\"\ncomponent = {h}\n[[route]]\npath = \"/u/:name\"\ncomponent = {h}\n",
                engine(),
                h = toml_path(&guest("hello"))
            ),
            vec!["routes 1 and 2 match the same requests".into()],
        ),
        (
            format!(
                "{}\n[[route]]\npath = \"x\"\ncomponent = {}\n",
                engine(),
                toml_path(&guest("hello"))
            ),
            vec!["route 1 (x)".into(), "must start with `/`".into()],
        ),
        (
            format!(
                "{}\n[[route]]\npath = \"/x\"\ncomponent = {}\nallowed_outbound_hosts = [\"example.com\"]\n",
                engine(),
                toml_path(&guest("hello"))
            ),
            vec![
                "route 1 (/x)".into(),
                "allowed_outbound_hosts entry `example.com`".into(),
            ],
        ),
        (
            "[server]\nmax_request_body = \"lots\"\n".into(),
            vec!["max_request_body".into(), "not a size".into()],
        ),
    ];
    for (config, expected) in cases {
        let (ok, text) = check_config(dir.path(), &config);
        assert!(!ok, "accepted a bad config:\n{config}");
        for fragment in expected {
            assert!(
                text.contains(&fragment),
                "message lacks `{fragment}`:\n{text}\nconfig:\n{config}"
            );
        }
        assert!(!text.contains("panicked"), "{text}");
    }

    // A missing config file and serve on a bad config fail the same clear way.
    let output = Command::new(env!("CARGO_BIN_EXE_wasmgate"))
        .args(["serve", "/nonexistent/wasmgate.toml"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr)
            .contains("cannot read config file /nonexistent/wasmgate.toml")
    );
}

#[test]
fn a_second_start_loads_compiled_components_from_the_cache() {
    let cache = tempfile::tempdir().unwrap();
    let routes = format!(
        "[[route]]\npath = \"/\"\ncomponent = {}\n",
        toml_path(&guest("hello"))
    );
    let sections = || Sections {
        engine: format!(
            "cache_dir = {}\nmax_instances = 8\n",
            toml_path(cache.path())
        ),
        ..Sections::default()
    };
    let first = Gateway::start_with(&routes, sections());
    first.wait_for_output(Duration::from_secs(5), |l| l.contains("compiled component"));
    assert!(
        !first
            .output()
            .contains("loaded compiled component from cache")
    );
    drop(first);
    let cached: Vec<_> = std::fs::read_dir(cache.path()).unwrap().flatten().collect();
    assert_eq!(cached.len(), 1, "one compiled component in the cache");
    assert!(cached[0].file_name().to_string_lossy().ends_with(".cwasm"));

    let second = Gateway::start_with(&routes, sections());
    second.wait_for_output(Duration::from_secs(5), |l| {
        l.contains("loaded compiled component from cache")
    });
    assert!(
        !second.output().contains("\"compiled component\"")
            && !second.output().contains(" compiled component component=")
    );
}

#[tokio::test]
async fn sigterm_fails_readiness_drains_in_flight_requests_and_exits_zero() {
    let routes = format!(
        "[[route]]\npath = \"/stream\"\ncomponent = {}\n",
        toml_path(&guest("streaming"))
    );
    let mut gw = Gateway::start(&routes);
    let client = http1();
    let in_flight = send(
        &client,
        Request::get(gw.url("/stream?chunks=4&delay_ms=300"))
            .body(empty())
            .unwrap(),
    )
    .await;
    gw.signal_terminate();
    gw.wait_for_output(Duration::from_secs(5), |l| l.contains("shutting down"));

    let (status, _, _) = get(&http1(), &gw.admin_url("/readyz")).await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "readiness fails during the drain"
    );
    assert!(
        std::net::TcpStream::connect(gw.addr).is_err(),
        "no new connections are accepted"
    );

    let (status, _, body) = read(in_flight).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "chunk 0\nchunk 1\nchunk 2\nchunk 3\n"),
        "the in-flight request finished"
    );
    let exit = gw.wait_exit(Duration::from_secs(10));
    assert!(exit.success(), "exit status {exit}");
}

#[tokio::test]
async fn check_opens_no_store_and_passes_beside_a_running_gateway() {
    let routes = format!(
        "[keyvalue.default]\nbackend = \"redb\"\npath = \"data/kv.redb\"\n\n[[route]]\npath = \"/count/...\"\ncomponent = {}\nkeyvalue = [\"default\"]\n",
        toml_path(&guest("kv-counter"))
    );
    // Alone: a check creates no data file.
    let dir = tempfile::tempdir().unwrap();
    let (ok, text) = check_config(dir.path(), &format!("{}\n{routes}", engine()));
    assert!(ok, "{text}");
    assert!(
        !dir.path().join("data").exists(),
        "check created the data directory"
    );

    // Beside a gateway that holds the redb file's lock.
    let gw = Gateway::start(&routes);
    assert_eq!(get(&http1(), &gw.url("/count/x")).await.0, StatusCode::OK);
    let output = Command::new(env!("CARGO_BIN_EXE_wasmgate"))
        .args([
            "check",
            gw.dir.path().join("wasmgate.toml").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `component` with a custom section `name` appended: the same code, other bytes, so the
/// compile cache holds it apart.
fn with_custom_section(component: &[u8], name: &str) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let mut payload = Vec::new();
    leb(name.len(), &mut payload);
    payload.extend_from_slice(name.as_bytes());
    let mut bytes = component.to_vec();
    bytes.push(0);
    leb(payload.len(), &mut bytes);
    bytes.extend_from_slice(&payload);
    bytes
}

#[tokio::test]
async fn the_admin_port_is_live_while_components_compile_and_ready_after() {
    // 24 distinct components and no compile cache: the first generation takes a while.
    let dir = tempfile::tempdir().unwrap();
    let echo = std::fs::read(guest("echo")).unwrap();
    let mut routes = String::new();
    for i in 0..24 {
        let path = dir.path().join(format!("echo-{i}.wasm"));
        std::fs::write(&path, with_custom_section(&echo, &format!("copy-{i}"))).unwrap();
        routes.push_str(&format!(
            "[[route]]\npath = \"/e{i}/...\"\ncomponent = {}\n",
            toml_path(&path)
        ));
    }
    let (public, admin) = (free_port(), free_port());
    let config = dir.path().join("wasmgate.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:{public}\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n[engine]\ncache_dir = \"\"\nmax_instances = 16\n{routes}"
        ),
    )
    .unwrap();
    let _process = Killed(
        Command::new(env!("CARGO_BIN_EXE_wasmgate"))
            .args(["serve", config.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let client = http1();
    let status = |path: &'static str| {
        let client = client.clone();
        async move {
            let request = Request::get(format!("http://127.0.0.1:{admin}{path}"))
                .body(empty())
                .unwrap();
            match tokio::time::timeout(Duration::from_secs(1), client.request(request)).await {
                Ok(Ok(response)) => Some(response.status()),
                _ => None,
            }
        }
    };
    let started = std::time::Instant::now();
    let mut live_while_starting = false;
    loop {
        let ready = status("/readyz").await;
        if ready == Some(StatusCode::OK) {
            break;
        }
        if ready == Some(StatusCode::SERVICE_UNAVAILABLE)
            && status("/livez").await == Some(StatusCode::OK)
        {
            live_while_starting = true;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "never ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        live_while_starting,
        "/livez 200 and /readyz 503 were never seen while the components compiled"
    );
    // Ready means serving.
    let (status, _, _) = get(&client, &format!("http://127.0.0.1:{public}/e23/x")).await;
    assert_eq!(status, StatusCode::OK);
}

fn health(admin: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_wasmgate"))
        .args(["health", "--admin", admin])
        .output()
        .unwrap()
}

/// One image, many deployments: the flags and `WASMGATE_SECTION__KEY` variables replace the
/// file's settings; `health` answers for container health checks.
#[tokio::test]
async fn flags_and_environment_variables_override_the_file_and_health_reports_readiness() {
    let dir = tempfile::tempdir().unwrap();
    // Addresses nobody may bind: only the overrides make this config serve.
    let config = format!(
        "[server]\nlisten = \"192.0.2.1:80\"\n[admin]\nlisten = \"192.0.2.1:81\"\n{}",
        one_route(&toml_path(&guest("hello")))
    );
    let mut gw = Gateway::start_in_with(
        dir,
        &config,
        &["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"],
        &[
            ("WASMGATE_SERVER__LISTEN", "192.0.2.1:82"),
            ("WASMGATE_SERVER__MAX_REQUEST_BODY", "10"),
            ("WASMGATE_LOGGING__FORMAT", "json"),
        ],
    );
    let (status, _, text) = get(&http1(), &gw.url("/x")).await;
    assert_eq!(
        (status, text.as_str()),
        (StatusCode::OK, "Hello from wasmgate!\n")
    );
    // The environment's body limit applies.
    let request = Request::post(gw.url("/x"))
        .body(body("more than ten bytes"))
        .unwrap();
    assert_eq!(
        send(&http1(), request).await.status(),
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert!(
        gw.output().lines().any(|line| line.starts_with('{')),
        "json logs"
    );

    let admin = gw.admin.to_string();
    let ready = health(&admin);
    assert!(ready.status.success(), "{ready:?}");
    assert_eq!(String::from_utf8_lossy(&ready.stdout), "ready\n");
    gw.terminate();
    let gone = health(&admin);
    assert!(!gone.status.success());
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("cannot reach"),
        "{gone:?}"
    );
}

#[test]
fn a_bad_override_is_an_error_naming_the_variable() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wasmgate.toml");
    std::fs::write(&path, one_route(&toml_path(&guest("hello")))).unwrap();
    for (name, value, expected) in [
        (
            "WASMGATE_SERVER__NO_SUCH_KEY",
            "1",
            "WASMGATE_SERVER__NO_SUCH_KEY",
        ),
        (
            "WASMGATE_ENGINE__MAX_INSTANCES",
            "lots",
            "WASMGATE_ENGINE__MAX_INSTANCES",
        ),
        (
            "WASMGATE_ENGINE__MAX_INSTANCES",
            "0",
            "max_instances must be at least 1",
        ),
        (
            "WASMGATE_ROUTES__PATH",
            "/",
            "not a section the environment can set",
        ),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_wasmgate"))
            .args(["check", path.to_str().unwrap()])
            .env(name, value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{name}={value} was accepted");
        assert!(stderr.contains(expected), "{name}={value}: {stderr}");
    }
}

/// The gateway raises its soft open-file limit to the hard one, and warns when even that is
/// below what `max_connections` may need (twice it, for lingering sockets, and 1,024 more).
#[test]
fn the_open_file_limit_is_raised_and_a_short_one_is_named() {
    for (limits, max_connections, short) in [("256:4096", 1000, false), ("256:2048", 10_000, true)]
    {
        let dir = tempfile::tempdir().unwrap();
        let (public, admin) = (free_port(), free_port());
        let config = dir.path().join("wasmgate.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:{public}\"\nmax_connections = {max_connections}\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n{}",
                one_route(&toml_path(&guest("hello")))
            ),
        )
        .unwrap();
        // prlimit (util-linux) starts the gateway with these soft and hard limits.
        let child = Command::new("prlimit")
            .arg(format!("--nofile={limits}"))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_wasmgate"))
            .args(["serve", config.to_str().unwrap()])
            .env("RUST_LOG", "warn")
            .env_remove("RUST_BACKTRACE")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("prlimit runs");
        let pid = child.id();
        let mut process = Killed(child);
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", admin)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "never listened"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let proc_limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
        let open_files: Vec<&str> = proc_limits
            .lines()
            .find(|line| line.starts_with("Max open files"))
            .expect("a line for open files")
            .split_whitespace()
            .collect();
        let hard = limits.split(':').nth(1).unwrap();
        assert_eq!(
            open_files[3..5],
            [hard, hard],
            "soft raised to hard: {proc_limits}"
        );
        let _ = process.0.kill();
        let _ = process.0.wait();
        let mut output = String::new();
        if let Some(mut stdout) = process.0.stdout.take() {
            let _ = stdout.read_to_string(&mut output);
        }
        if let Some(mut stderr) = process.0.stderr.take() {
            let _ = stderr.read_to_string(&mut output);
        }
        assert_eq!(
            output.contains("the open file limit is below what max_connections may need"),
            short,
            "{limits}, max_connections = {max_connections}: {output}"
        );
    }
}
