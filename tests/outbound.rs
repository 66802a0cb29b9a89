//! Where components' outgoing requests may go: `http://self` only through a rule naming it (in
//! any case), never the admin listener through a wildcard port, and never a loopback or private
//! address through a wildcard host. Every request here goes to the gateway's own loopback ports.
//!
//! These tests write their own config (fixed ports picked free beforehand), because the rules
//! under test name the gateway's ports, and the admin listener's port must be known to it.

mod common;

use common::*;
use http::StatusCode;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A gateway process started on fixed ports.
struct Process {
    child: Child,
    public: u16,
    admin: u16,
    output: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.public)
    }

    fn output(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }

    /// The first printed line with `text`, waiting for the log writer up to 5 s.
    fn wait_for_output(&self, text: &str) -> String {
        let started = Instant::now();
        loop {
            if let Some(line) = self
                .output
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(text))
            {
                return line.clone();
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "no line with {text:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// GETs `route?url=TARGET` on the outbound guest: (status, body).
    async fn fetch(&self, route: &str, target: &str) -> (StatusCode, String) {
        let (status, _, body) = get(
            &http1(),
            &self.url(&format!("{route}?url={}", percent_encode(target))),
        )
        .await;
        (status, body)
    }
}

/// Starts a gateway whose routes are `routes(public port, admin port)`, with `server` added to
/// its `[server]` section. Ports picked free can be taken by someone else before the gateway
/// binds them (any outgoing connection may draw them): then it tries again with others.
fn start(server: &str, routes: impl Fn(u16, u16) -> String) -> Process {
    for _ in 0..5 {
        match try_start(server, &routes) {
            Ok(process) => return process,
            Err(output) if output.contains("Address already in use") => continue,
            Err(output) => panic!("wasmgate did not start:\n{output}"),
        }
    }
    panic!("no free ports for wasmgate after 5 tries");
}

fn try_start(server: &str, routes: &impl Fn(u16, u16) -> String) -> Result<Process, String> {
    let (public, admin) = (free_port(), free_port());
    let dir = tempfile::tempdir().expect("temp dir");
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{public}\"\n{server}\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\n\
         [engine]\ncache_dir = {}\nmax_instances = 16\n\n{}",
        toml_path(&shared_cache_dir()),
        routes(public, admin)
    );
    let path = dir.path().join("wasmgate.toml");
    std::fs::write(&path, config).expect("write config");
    let mut child = Command::new(env!("CARGO_BIN_EXE_wasmgate"))
        .args(["serve", path.to_str().expect("utf-8 path")])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start wasmgate");
    let output = Arc::new(Mutex::new(Vec::new()));
    let mut readers = Vec::new();
    for stream in [
        Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().expect("stderr")),
    ] {
        let output = output.clone();
        readers.push(std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                output.lock().unwrap().push(line);
            }
        }));
    }
    let mut process = Process {
        child,
        public,
        admin,
        output,
        _dir: dir,
    };
    let started = Instant::now();
    while !process.output().contains("serving HTTP on") {
        if let Ok(Some(_)) = process.child.try_wait() {
            for reader in readers {
                let _ = reader.join();
            }
            return Err(process.output());
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "wasmgate did not start:\n{}",
            process.output()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(process)
}

fn route(path: &str, component: &str, allowed: &[String]) -> String {
    format!(
        "[[route]]\npath = \"{path}\"\ncomponent = {}\nallowed_outbound_hosts = {allowed:?}\n\n",
        toml_path(&guest(component))
    )
}

fn hello_routes() -> String {
    format!(
        "[[route]]\npath = \"/hello/:name\"\ncomponent = {}\n\n\
         [[route]]\npath = \"/internal/hello/:name\"\ncomponent = {}\nprivate = true\n\n",
        toml_path(&guest("hello")),
        toml_path(&guest("hello")),
    )
}

const DENIED: &str = "outbound error: HttpRequestDenied\n";
const PROHIBITED: &str = "outbound error: DestinationIpProhibited\n";

#[tokio::test]
async fn self_is_matched_in_any_case_and_only_by_a_rule_naming_it() {
    let gw = start("", |_, _| {
        hello_routes()
            + &route("/explicit", "outbound", &["http://self".into()])
            + &route(
                "/wildcard",
                "outbound",
                &["http://*".into(), "*://*:*".into()],
            )
    });
    for host in ["self", "SELF", "Self"] {
        let target = format!("http://{host}/internal/hello/{host}");
        assert_eq!(
            gw.fetch("/explicit", &target).await,
            (StatusCode::OK, format!("Hello, {host}!\n")),
            "{target} through `http://self`"
        );
        assert_eq!(
            gw.fetch("/wildcard", &target).await,
            (StatusCode::BAD_GATEWAY, DENIED.to_string()),
            "{target}: a wildcard host never grants the gateway itself"
        );
    }
}

#[tokio::test]
async fn a_loopback_rule_with_any_port_cannot_reach_the_admin_port() {
    let gw = start("", |_, admin| {
        hello_routes()
            + &route("/loopback", "outbound", &["http://127.0.0.1:*".into()])
            + &route(
                "/admin-named",
                "outbound",
                &[format!("http://127.0.0.1:{admin}")],
            )
    });
    let admin = gw.admin;
    for target in [
        format!("http://127.0.0.1:{admin}/metrics"),
        format!("http://127.0.0.1:{admin}/livez"),
    ] {
        assert_eq!(
            gw.fetch("/loopback", &target).await,
            (StatusCode::BAD_GATEWAY, PROHIBITED.to_string()),
            "{target}"
        );
    }
    assert!(
        gw.wait_for_output("the address is the admin listener's")
            .contains("admin listener"),
        "{}",
        gw.output()
    );
    // The same rule still reaches other loopback ports...
    let public = format!("http://127.0.0.1:{}/hello/loop", gw.public);
    assert_eq!(
        gw.fetch("/loopback", &public).await,
        (StatusCode::OK, "Hello, loop!\n".to_string())
    );
    // ...and a rule that names the admin port reaches it.
    let (status, body) = gw
        .fetch("/admin-named", &format!("http://127.0.0.1:{admin}/livez"))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn a_wildcard_host_does_not_reach_loopback_while_a_named_one_does() {
    let routes = |public: u16, _| {
        hello_routes()
            + &route("/wildcard", "outbound", &["http://*:*".into()])
            + &route(
                "/named",
                "outbound",
                &[format!("http://localhost:{public}")],
            )
    };
    let gw = start("", routes);
    let target = format!("http://localhost:{}/hello/named", gw.public);
    assert_eq!(
        gw.fetch("/wildcard", &target).await,
        (StatusCode::BAD_GATEWAY, PROHIBITED.to_string()),
        "localhost resolves to loopback"
    );
    let literal = format!("http://127.0.0.1:{}/hello/named", gw.public);
    assert_eq!(
        gw.fetch("/wildcard", &literal).await,
        (StatusCode::BAD_GATEWAY, PROHIBITED.to_string()),
        "an IP literal under a wildcard rule is checked the same way"
    );
    assert!(
        gw.wait_for_output("resolves to a non-public address")
            .contains("non-public"),
        "{}",
        gw.output()
    );
    assert_eq!(
        gw.fetch("/named", &target).await,
        (StatusCode::OK, "Hello, named!\n".to_string())
    );
    let (_, _, metrics) = get(&http1(), &format!("http://127.0.0.1:{}/metrics", gw.admin)).await;
    let outbound = |route, outcome| {
        metric_value(
            &metrics,
            "wasmgate_outbound_requests_total",
            &[("route", route), ("outcome", outcome)],
        )
    };
    assert_eq!(outbound("/wildcard", "denied"), Some(2.0));
    assert_eq!(outbound("/wildcard", "allowed"), Some(0.0));
    assert_eq!(outbound("/named", "allowed"), Some(1.0));
    drop(gw);

    // The operator can let wildcards reach private addresses.
    let gw = start("outbound_deny_private = false", routes);
    let target = format!("http://localhost:{}/hello/open", gw.public);
    assert_eq!(
        gw.fetch("/wildcard", &target).await,
        (StatusCode::OK, "Hello, open!\n".to_string())
    );
}

#[tokio::test]
async fn https_goes_through_tls_on_the_checked_connection() {
    // The gateway's public port speaks plain HTTP, so the TLS handshake must fail (cleanly).
    let gw = start("", |_, _| {
        hello_routes() + &route("/tls", "outbound", &["https://127.0.0.1:*".into()])
    });
    let target = format!("https://127.0.0.1:{}/hello/tls", gw.public);
    let (status, body) = gw.fetch("/tls", &target).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.starts_with("outbound error: Tls"), "{body}");
    // The gateway is still serving.
    let (status, _, _) = get(&http1(), &gw.url("/hello/after")).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn the_admin_port_is_protected_as_bound_when_the_config_says_port_0() {
    // Gateway::start configures `[admin] listen = "127.0.0.1:0"`.
    let gw = Gateway::start(&route(
        "/loopback",
        "outbound",
        &["http://127.0.0.1:*".into()],
    ));
    let target = format!("http://127.0.0.1:{}/metrics", gw.admin.port());
    let (status, _, body) = get(
        &http1(),
        &gw.url(&format!("/loopback?url={}", percent_encode(&target))),
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::BAD_GATEWAY, PROHIBITED)
    );
}
