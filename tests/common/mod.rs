//! The integration-test harness: a real `wasmgate` process on ephemeral ports, real clients.
//!
//! [`Gateway::start`] writes a config (the given routes plus test-friendly `[server]`,
//! `[admin]` and `[engine]` sections) into a temporary directory, starts the binary, and waits
//! for the line that names the addresses it listens on. Everything the process prints is kept,
//! so tests can assert on log lines. The process is killed when the [`Gateway`] is dropped.
//!
//! Compiled components are cached in one directory shared by every test, so each guest is
//! compiled once per `cargo test` run, not once per test.
#![allow(dead_code)]

pub mod tls;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ClientBody = BoxBody<Bytes, BoxError>;
pub type HttpClient = Client<HttpConnector, ClientBody>;

/// The path of a built example guest, e.g. `guest("hello")`.
pub fn guest(name: &str) -> PathBuf {
    let file = if name == "not-a-proxy" {
        name.to_string()
    } else {
        name.replace('-', "_")
    };
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("guests/target/wasm32-wasip2/release")
        .join(format!("{file}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: build the guests first (`rustup target add wasm32-wasip2` and \
         `cargo build --release` in guests/; building wasmgate does it too)",
        path.display()
    );
    path
}

/// A TOML string literal for a path.
pub fn toml_path(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

/// Runs `wasmgate check` on a config text written into `dir`; returns (success, stdout + stderr).
pub fn check_config(dir: &Path, config: &str) -> (bool, String) {
    check_config_with(dir, config, &[])
}

/// [`check_config`] with environment variables.
pub fn check_config_with(dir: &Path, config: &str, envs: &[(&str, &str)]) -> (bool, String) {
    let path = dir.join("wasmgate.toml");
    std::fs::write(&path, config).expect("write config");
    let output = Command::new(env!("CARGO_BIN_EXE_wasmgate"))
        .args(["check", path.to_str().expect("utf-8 path")])
        .env("RUST_LOG", "warn")
        .envs(envs.iter().copied())
        .output()
        .expect("run wasmgate check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// A port nothing listens on right now (another process may take it before the test does).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A child process killed (and reaped) when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The compile cache every test shares.
pub fn shared_cache_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/wasmgate-test-cache")
}

/// A running gateway process.
pub struct Gateway {
    child: Option<Child>,
    /// The first listener's address.
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// Every listener, in config order.
    pub listeners: Vec<Listening>,
    output: Arc<Mutex<Vec<String>>>,
    pub dir: tempfile::TempDir,
}

/// A listener the gateway opened: (name, scheme, address).
pub type Listening = (String, String, SocketAddr);

/// Test defaults for the sections a test does not write itself.
pub struct Sections {
    pub server: String,
    pub engine: String,
    /// `RUST_LOG` for the process; `None` leaves the filter to `[logging] level`.
    pub rust_log: Option<String>,
}

impl Default for Sections {
    fn default() -> Self {
        Sections {
            server: String::new(),
            engine: format!(
                "cache_dir = {}\nmax_instances = 64\n",
                toml_path(&shared_cache_dir())
            ),
            rust_log: Some("info".into()),
        }
    }
}

impl Gateway {
    /// Starts a gateway with `routes` (TOML `[[route]]` tables) and default sections.
    pub fn start(routes: &str) -> Gateway {
        Gateway::start_with(routes, Sections::default())
    }

    pub fn start_with(routes: &str, sections: Sections) -> Gateway {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{}\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[engine]\n{}\n{routes}",
            sections.server, sections.engine
        );
        let path = dir.path().join("wasmgate.toml");
        std::fs::write(&path, config).expect("write config");
        Gateway::spawn(&path, dir, sections.rust_log.as_deref())
    }

    /// Starts a gateway on a whole config text written into `dir` (which may hold the files
    /// the config names, such as certificates). `[admin] listen` must be in the text.
    pub fn start_in(dir: tempfile::TempDir, config: &str) -> Gateway {
        Gateway::start_in_with(dir, config, &[], &[])
    }

    /// [`Gateway::start_in`] with extra `serve` arguments and environment variables.
    pub fn start_in_with(
        dir: tempfile::TempDir,
        config: &str,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Gateway {
        let path = dir.path().join("wasmgate.toml");
        std::fs::write(&path, config).expect("write config");
        Gateway::spawn_with(&path, dir, Some("info"), args, envs)
    }

    /// The address of the listener named `name`.
    pub fn listener(&self, name: &str) -> SocketAddr {
        self.listeners
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, _, addr)| *addr)
            .unwrap_or_else(|| panic!("no listener `{name}` in {:?}", self.listeners))
    }

    fn spawn(config: &Path, dir: tempfile::TempDir, rust_log: Option<&str>) -> Gateway {
        Gateway::spawn_with(config, dir, rust_log, &[], &[])
    }

    fn spawn_with(
        config: &Path,
        dir: tempfile::TempDir,
        rust_log: Option<&str>,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Gateway {
        let mut command = Command::new(env!("CARGO_BIN_EXE_wasmgate"));
        match rust_log {
            Some(filter) => command.env("RUST_LOG", filter),
            None => command.env_remove("RUST_LOG"),
        };
        let mut child = command
            .args(["serve", config.to_str().expect("utf-8 path")])
            .args(args)
            .envs(envs.iter().copied())
            .env_remove("RUST_BACKTRACE")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start wasmgate");
        let output = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let output = output.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if let Some(addrs) = parse_listening(&line) {
                        let _ = tx.send(addrs);
                    }
                    output.lock().unwrap().push(line);
                }
            });
        }
        let started = Instant::now();
        loop {
            if let Ok((listeners, admin)) = rx.recv_timeout(Duration::from_millis(100)) {
                return Gateway {
                    child: Some(child),
                    addr: listeners[0].2,
                    admin,
                    listeners,
                    output,
                    dir,
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "wasmgate exited with {status} before listening:\n{}",
                    output.lock().unwrap().join("\n")
                );
            }
            if started.elapsed() > Duration::from_secs(120) {
                let _ = child.kill();
                panic!(
                    "wasmgate did not start listening:\n{}",
                    output.lock().unwrap().join("\n")
                );
            }
        }
    }

    /// `http://ADDR{path}`
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Everything the process printed so far.
    pub fn output(&self) -> String {
        self.output.lock().unwrap().join("\n")
    }

    /// Waits until a printed line satisfies `pred`; panics with the output after `timeout`.
    pub fn wait_for_output(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        loop {
            if let Some(line) = self.output.lock().unwrap().iter().find(|l| pred(l)) {
                return line.clone();
            }
            if started.elapsed() > timeout {
                panic!("no matching output line; output:\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The Prometheus text from the admin port.
    pub async fn metrics(&self) -> String {
        let (status, _, body) = get(&http1(), &self.admin_url("/metrics")).await;
        assert_eq!(status, StatusCode::OK);
        body
    }

    /// Waits until the metric sample `name{labels}` reads `want` (a missing sample reads as
    /// none), at most `within`.
    pub async fn wait_for_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        want: f64,
        within: Duration,
    ) {
        let started = std::time::Instant::now();
        loop {
            let now = metric_value(&self.metrics().await, name, labels);
            if now == Some(want) {
                return;
            }
            assert!(
                started.elapsed() < within,
                "{name}{labels:?} is {now:?}, expected {want}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        child.wait().expect("wait")
    }

    /// Kills the process with SIGKILL, as a crash would, and waits for it.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().expect("kill");
        child.wait().expect("wait");
    }

    /// Sends SIGTERM without waiting.
    pub fn signal_terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit after a signal.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status;
            }
            if started.elapsed() > timeout {
                let _ = child.kill();
                panic!("wasmgate did not exit; output:\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Finds "serving HTTP on http://A [name], https://B [name2] (admin endpoints on http://C)" in
/// a log line.
fn parse_listening(line: &str) -> Option<(Vec<Listening>, SocketAddr)> {
    let rest = line.split("serving HTTP on ").nth(1)?;
    let (list, rest) = rest.split_once(" (admin endpoints on http://")?;
    let admin = rest.split(|c: char| c == ')' || c.is_whitespace()).next()?;
    let mut listeners = Vec::new();
    for entry in list.split(", ") {
        let (url, name) = entry.split_once(' ')?;
        let (scheme, addr) = url.split_once("://")?;
        let name = name.trim_start_matches('[').trim_end_matches(']');
        listeners.push((name.to_string(), scheme.to_string(), addr.parse().ok()?));
    }
    if listeners.is_empty() {
        return None;
    }
    Some((listeners, admin.parse().ok()?))
}

/// An HTTP/1.1 client.
pub fn http1() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 client with prior knowledge (cleartext).
pub fn http2() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

pub fn body(bytes: impl Into<Bytes>) -> ClientBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> ClientBody {
    body(Bytes::new())
}

/// Sends a request and returns the response with its body unread.
pub async fn send(client: &HttpClient, request: Request<ClientBody>) -> Response<Incoming> {
    tokio::time::timeout(Duration::from_secs(30), client.request(request))
        .await
        .expect("response within 30s")
        .expect("request sent")
}

/// GETs a URL and reads the whole body as text.
pub async fn get(client: &HttpClient, url: &str) -> (StatusCode, HeaderMap, String) {
    let request = Request::get(url).body(empty()).expect("request");
    read(send(client, request).await).await
}

/// Reads a whole response.
pub async fn read(response: Response<Incoming>) -> (StatusCode, HeaderMap, String) {
    let (parts, body) = response.into_parts();
    let bytes = tokio::time::timeout(Duration::from_secs(30), body.collect())
        .await
        .expect("body within 30s")
        .expect("complete body")
        .to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

/// The value of a sample in Prometheus text, e.g.
/// `metric_value(&text, "wasmgate_guest_traps_total", &[("route", "/trap"), ("kind", "trap")])`.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let all = labels.iter().all(|(k, v)| {
                label_text
                    .split(',')
                    .any(|pair| pair == format!("{k}=\"{v}\""))
            });
            if all { value.parse().ok() } else { None }
        })
}

/// Percent-encodes everything but letters and digits (for a URL in a query string).
pub fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A body a test server answers with.
pub type ServerBody = BoxBody<Bytes, std::io::Error>;

/// Starts an HTTP/1.1 server (with upgrades) on an ephemeral port that answers every request
/// with `handler`; it runs until the test's runtime ends.
pub async fn serve_http<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<ServerBody>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a test server");
    let addr = listener.local_addr().expect("its address");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    let answer = handler(request);
                    async move { Ok::<_, std::convert::Infallible>(answer.await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

/// A whole response body for a test server.
pub fn server_text(text: impl Into<Bytes>) -> ServerBody {
    Full::new(text.into())
        .map_err(|never| match never {})
        .boxed()
}
