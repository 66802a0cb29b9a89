//! Upstream routes in front of a real nginx (Debian's nginx-light, which `.ci/run` installs):
//! keep-alive reuse seen from nginx's side (its connection serial numbers), a large body
//! streamed through whole, and round robin between two nginx servers within 10%.
//!
//! One nginx serves every test of this file, started on first use; it must be installed: the
//! tests fail, never skip, without it.

mod common;

use common::*;
use http::StatusCode;
use sha2::Digest;
use std::collections::HashSet;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The running nginx: its two ports and its files. A static is never dropped, so nginx runs
/// under a shell that stops it when its stdin closes, which happens when the test binary exits
/// however it exits.
struct Nginx {
    ports: [u16; 2],
    /// The SHA-256 of the 24 MiB file it serves at `/big.bin`.
    big_sha256: [u8; 32],
    _dir: tempfile::TempDir,
    _stop_on_close: std::process::ChildStdin,
}

fn nginx() -> &'static Nginx {
    static NGINX: OnceLock<Nginx> = OnceLock::new();
    NGINX.get_or_init(start_nginx)
}

fn start_nginx() -> Nginx {
    let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("nginx is not installed: `apt-get install nginx-light` (.ci/run does)");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("www");
    std::fs::create_dir_all(&root).unwrap();
    let big: Vec<u8> = (0..24u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(root.join("big.bin"), &big).unwrap();
    let big_sha256: [u8; 32] = sha2::Sha256::digest(&big).into();
    let ports = [free_port(), free_port()];
    let server = |port: u16, name: &str| {
        format!(
            "server {{\n  listen 127.0.0.1:{port};\n  root {root};\n  keepalive_requests 10000;\n  \
             location = /who {{ add_header x-connection $connection; return 200 \"{name}\\n\"; }}\n  \
             location / {{ }}\n}}\n",
            root = root.display()
        )
    };
    let config = format!(
        "daemon off;\nmaster_process off;\nerror_log {dir}/error.log;\npid {dir}/nginx.pid;\n\
         events {{ worker_connections 1024; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n  \
         fastcgi_temp_path {dir}/fastcgi;\n  uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n  \
         keepalive_timeout 60s;\n{}{}}}\n",
        server(ports[0], "a"),
        server(ports[1], "b"),
        dir = dir.path().display(),
    );
    let config_path = dir.path().join("nginx.conf");
    std::fs::write(&config_path, config).unwrap();
    let mut process = Command::new("sh")
        .arg("-c")
        .arg("\"$0\" -c \"$1\" -p \"$2\" & pid=$!; cat >/dev/null; kill $pid")
        .arg(binary)
        .arg(&config_path)
        .arg(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start nginx");
    let stdin = process.stdin.take().expect("nginx's shell's stdin");
    std::thread::spawn(move || process.wait());
    // Ready once both ports answer.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    for port in ports {
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nginx did not listen on {port}: {}",
                std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    Nginx {
        ports,
        big_sha256,
        _dir: dir,
        _stop_on_close: stdin,
    }
}

fn gateway(targets: &[u16]) -> Gateway {
    let targets: Vec<String> = targets
        .iter()
        .map(|p| format!("\"http://127.0.0.1:{p}\""))
        .collect();
    Gateway::start(&format!(
        "[upstream.web]\ntargets = [{}]\n[[route]]\npath = \"/...\"\nupstream = \"web\"\nmax_concurrency = 64\n",
        targets.join(", ")
    ))
}

#[tokio::test]
async fn connections_to_nginx_are_kept_alive_across_requests() {
    let nginx = nginx();
    let gw = gateway(&nginx.ports[..1]);
    let client = http1();
    let mut connections = HashSet::new();
    for _ in 0..200 {
        let (status, headers, text) = get(&client, &gw.url("/who")).await;
        assert_eq!(status, StatusCode::OK, "{text}");
        assert_eq!(text, "a\n");
        connections.insert(headers["x-connection"].to_str().unwrap().to_string());
    }
    // Without keep-alive there would be 200; a connection still on its way back to the pool
    // when the next request starts can make the pool open another now and then.
    assert!(
        connections.len() <= 10,
        "nginx saw {} connections for 200 sequential requests",
        connections.len()
    );
}

#[tokio::test]
async fn a_large_body_streams_through_whole() {
    let nginx = nginx();
    let gw = gateway(&nginx.ports[..1]);
    let response = send(
        &http1(),
        http::Request::get(gw.url("/big.bin"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-length"],
        (24u32 << 20).to_string()
    );
    let mut body = response.into_body();
    let mut hasher = sha2::Sha256::new();
    let mut length = 0usize;
    while let Some(frame) = http_body_util::BodyExt::frame(&mut body).await {
        if let Some(data) = frame.unwrap().data_ref() {
            length += data.len();
            hasher.update(data);
        }
    }
    assert_eq!(length, 24 << 20);
    assert_eq!(<[u8; 32]>::from(hasher.finalize()), nginx.big_sha256);
}

#[tokio::test]
async fn round_robin_spreads_requests_within_ten_percent() {
    let nginx = nginx();
    let gw = gateway(&nginx.ports);
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let url = gw.url("/who");
            tokio::spawn(async move {
                let client = http1();
                let mut a = 0u32;
                for _ in 0..250 {
                    let (status, _, text) = get(&client, &url).await;
                    assert_eq!(status, StatusCode::OK);
                    a += u32::from(text == "a\n");
                }
                a
            })
        })
        .collect();
    let mut a = 0;
    for task in tasks {
        a += task.await.unwrap();
    }
    let share = f64::from(a) / 1000.0;
    assert!((share - 0.5).abs() <= 0.05, "nginx a got {a} of 1000");
}
