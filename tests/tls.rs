//! TLS listeners end to end: a real gateway, certificates made per run (`common::tls`), rustls
//! and curl as clients. SNI and ALPN, what the guest sees, TLS 1.3 only, mTLS, certificate
//! rotation under load, config errors naming the file, PROXY protocol, and the redirect to
//! HTTPS.

mod common;

use common::tls::{
    CertOptions, ClientOptions, KeyKind, Pki, client_config, https_get, https_request,
    mismatched_key, proxy_v1_header, proxy_v2_header,
};
use common::{Gateway, guest, metric_value, shared_cache_dir, toml_path};
use http::{Request, StatusCode};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The config's head: admin on an ephemeral port, the shared compile cache.
fn head(server: &str) -> String {
    format!(
        "[server]\n{server}\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[engine]\ncache_dir = {}\nmax_instances = 64\n\n",
        toml_path(&shared_cache_dir())
    )
}

fn echo_route(listeners: Option<&str>) -> String {
    let listeners = listeners.map_or(String::new(), |l| format!("listeners = [{l}]\n"));
    format!(
        "[[route]]\npath = \"/echo/...\"\ncomponent = {}\n{listeners}\n",
        toml_path(&guest("echo"))
    )
}

fn p(path: &Path) -> String {
    toml_path(path)
}

fn header<'a>(headers: &'a http::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

#[tokio::test]
async fn sni_picks_the_certificate_alpn_the_protocol_and_the_guest_sees_https() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "test");
    let (default_cert, default_key) = pki.server_cert("default", &["default.example"], serial(1));
    let (api_cert, api_key) = pki.server_cert(
        "api",
        &["api.example.com", "*.apps.example.com"],
        CertOptions {
            serial: 2,
            key: KeyKind::Rsa,
            intermediate: true,
            ..Default::default()
        },
    );
    let (x_cert, x_key) = pki.server_cert(
        "x",
        &["x.apps.example.com"],
        CertOptions {
            serial: 3,
            key: KeyKind::Ed25519,
            ..Default::default()
        },
    );
    let config = format!(
        "{}[[listener]]\nname = \"tls\"\naddress = \"127.0.0.1:0\"\n\
         tls = {{ cert = {}, key = {}, sni = [ {{ names = [\"api.example.com\", \"*.apps.example.com\"], cert = {}, key = {} }}, {{ names = [\"x.apps.example.com\"], cert = {}, key = {} }} ] }}\n\n\
         [[listener]]\nname = \"plain\"\naddress = \"127.0.0.1:0\"\nhttp_redirect = \"https://:8443\"\n\n\
         {}[[route]]\npath = \"/plain\"\ncomponent = {}\nlisteners = [\"plain\"]\n",
        head(""),
        p(&default_cert),
        p(&default_key),
        p(&api_cert),
        p(&api_key),
        p(&x_cert),
        p(&x_key),
        echo_route(Some("\"tls\"")),
        p(&guest("hello")),
    );
    let gateway = Gateway::start_in(dir, &config);
    let tls = gateway.listener("tls");
    let h2 = client_config(&ClientOptions::new(pki.ca_path()));
    let http1 = client_config(&ClientOptions {
        alpn: vec![b"http/1.1".to_vec()],
        ..ClientOptions::new(pki.ca_path())
    });

    // SNI: exact beats wildcard, a wildcard matches, anything else gets the default.
    for (name, serial) in [
        ("api.example.com", 2),
        ("foo.apps.example.com", 2),
        ("x.apps.example.com", 3),
        ("default.example", 1),
    ] {
        let (negotiated, status, _, _) = https_get(tls, name, h2.clone(), "/echo/sni")
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(status, StatusCode::OK, "{name}");
        assert_eq!(negotiated.peer_serial, serial, "{name}");
        assert_eq!(negotiated.alpn.as_deref(), Some(&b"h2"[..]), "{name}");
    }

    // Session resumption: a second connection with the same client resumes the first's session.
    let resumed = {
        let first = common::tls::connect(tls, "api.example.com", http1.clone())
            .await
            .unwrap();
        drop(
            common::tls::send_request(
                first,
                Request::get("https://api.example.com/echo/1")
                    .body(String::new())
                    .unwrap(),
            )
            .await
            .unwrap(),
        );
        let second = common::tls::connect(tls, "api.example.com", http1.clone())
            .await
            .unwrap();
        second.get_ref().1.handshake_kind()
    };
    assert_eq!(resumed, Some(rustls::HandshakeKind::Resumed));

    // ALPN http/1.1, and what the guest sees: https, the authority, the client's address
    // replacing a spoofed one, and no client-cert header smuggled in.
    let request = Request::get("https://api.example.com/echo/who?q=1")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-wasmgate-client-cert-subject", "CN=admin")
        .body(String::new())
        .unwrap();
    let (negotiated, status, headers, _) =
        https_request(tls, "api.example.com", http1.clone(), request)
            .await
            .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(negotiated.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(header(&headers, "x-echo-scheme"), "https");
    assert_eq!(header(&headers, "x-echo-authority"), "api.example.com");
    assert_eq!(header(&headers, "x-echo-uri"), "/echo/who?q=1");
    assert_eq!(
        header(&headers, "x-echo-header-x-forwarded-for"),
        "127.0.0.1"
    );
    assert_eq!(header(&headers, "x-echo-header-x-forwarded-proto"), "https");
    assert!(
        headers
            .get("x-echo-header-x-wasmgate-client-cert-subject")
            .is_none(),
        "{headers:?}"
    );

    // The route that serves only the TLS listener is redirected on the cleartext one; the
    // cleartext route is served there and absent on TLS.
    let plain = gateway.listener("plain");
    let response = raw_http1(
        plain,
        &[],
        "GET /echo/x?y=1 HTTP/1.1\r\nHost: Example.com:8080\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 308"), "{response}");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("location: https://example.com:8443/echo/x?y=1\r\n"),
        "{response}"
    );
    let response = raw_http1(
        plain,
        &[],
        "GET /plain HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let (_, status, _, _) = https_get(tls, "api.example.com", h2.clone(), "/plain")
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);

    // curl, over both protocols.
    for (flag, expect) in [("--http2", "HTTP/2 200"), ("--http1.1", "HTTP/1.1 200")] {
        let output = std::process::Command::new("curl")
            .args([
                "-sS",
                "-i",
                flag,
                "--cacert",
                pki.ca_path().to_str().unwrap(),
                "--resolve",
                &format!("api.example.com:{}:127.0.0.1", tls.port()),
                &format!("https://api.example.com:{}/echo/curl", tls.port()),
            ])
            .output()
            .expect("curl is installed");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            text.starts_with(expect),
            "{flag}: {text}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    // Plain HTTP on the TLS port fails the handshake, counted by reason.
    let _ = raw_http1(tls, &[], "GET / HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let metrics = handshake_failures(&gateway, "not_tls").await;
    // Its connection counts as closed before it was established.
    wait_for_metric(
        &gateway,
        "wasmgate_connections_closed_total",
        &[("listener", "tls"), ("reason", "not_established")],
    )
    .await;
    let expiry = metric_value(
        &metrics,
        "wasmgate_tls_certificate_expiry_timestamp_seconds",
        &[("name", "tls:api.example.com")],
    )
    .expect("expiry of the SNI certificate");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(expiry > now + 300.0 * 86400.0, "{expiry}");
}

#[tokio::test]
async fn tls13_only_refuses_a_tls12_client() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "test");
    let (cert, key) = pki.server_cert("site", &["site.example"], CertOptions::default());
    let config = format!(
        "{}[[listener]]\nname = \"tls\"\naddress = \"127.0.0.1:0\"\ntls = {{ cert = {}, key = {}, min_version = \"1.3\" }}\n\n{}",
        head(""),
        p(&cert),
        p(&key),
        echo_route(None)
    );
    let gateway = Gateway::start_in(dir, &config);
    let tls = gateway.listener("tls");
    let tls12 = client_config(&ClientOptions {
        tls12_only: true,
        ..ClientOptions::new(pki.ca_path())
    });
    assert!(
        https_get(tls, "site.example", tls12, "/echo/x")
            .await
            .is_err()
    );
    let (negotiated, status, _, _) = https_get(
        tls,
        "site.example",
        client_config(&ClientOptions::new(pki.ca_path())),
        "/echo/x",
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(negotiated.version, Some(rustls::ProtocolVersion::TLSv1_3));
    handshake_failures(&gateway, "incompatible").await;
}

#[tokio::test]
async fn mtls_passes_the_verified_identity_and_refuses_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "servers");
    let clients = Pki::new(dir.path(), "clients");
    let strangers = Pki::new(dir.path(), "strangers");
    let (cert, key) = pki.server_cert("site", &["site.example"], CertOptions::default());
    let (client_cert, client_key) = clients.client_cert(
        "client",
        "client-1",
        Some("Example"),
        &["client-1.example", "10.0.0.1"],
    );
    let (stranger_cert, stranger_key) =
        strangers.client_cert("stranger", "client-1", Some("Example"), &[]);
    let tls = |required: bool| {
        format!(
            "tls = {{ cert = {}, key = {}, client_auth = {{ ca = {}, required = {required} }} }}",
            p(&cert),
            p(&key),
            p(clients.ca_path())
        )
    };
    let config = format!(
        "{}[[listener]]\nname = \"strict\"\naddress = \"127.0.0.1:0\"\n{}\n\n[[listener]]\nname = \"lax\"\naddress = \"127.0.0.1:0\"\n{}\n\n{}",
        head(""),
        tls(true),
        tls(false),
        echo_route(None)
    );
    let gateway = Gateway::start_in(dir, &config);
    let with_cert = |cert: &Path, key: &Path| {
        let mut options = ClientOptions::new(pki.ca_path());
        options.client_cert = Some((cert, key));
        client_config(&options)
    };
    let anonymous = client_config(&ClientOptions::new(pki.ca_path()));

    for listener in ["strict", "lax"] {
        let (_, status, headers, _) = https_get(
            gateway.listener(listener),
            "site.example",
            with_cert(&client_cert, &client_key),
            "/echo/id",
        )
        .await
        .unwrap_or_else(|e| panic!("{listener}: {e}"));
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            header(&headers, "x-echo-header-x-wasmgate-client-cert-subject"),
            // RFC 4514 writes the certificate's RDNs last first, as `openssl x509 -nameopt
            // RFC2253` does; the test CA encodes CN first, then O.
            "O=Example,CN=client-1",
            "{listener}"
        );
        assert_eq!(
            header(&headers, "x-echo-header-x-wasmgate-client-cert-san"),
            "DNS:client-1.example, IP:10.0.0.1",
            "{listener}"
        );
    }
    let strict = gateway.listener("strict");
    assert!(
        https_get(strict, "site.example", anonymous.clone(), "/echo/id")
            .await
            .is_err(),
        "no client certificate on a listener that requires one"
    );
    assert!(
        https_get(
            strict,
            "site.example",
            with_cert(&stranger_cert, &stranger_key),
            "/echo/id"
        )
        .await
        .is_err(),
        "a certificate from another CA"
    );
    let (_, status, headers, _) = https_get(
        gateway.listener("lax"),
        "site.example",
        anonymous,
        "/echo/id",
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers
            .get("x-echo-header-x-wasmgate-client-cert-subject")
            .is_none()
    );
    handshake_failures(&gateway, "client_cert_missing").await;
    handshake_failures(&gateway, "client_cert_invalid").await;
}

#[test]
fn certificates_that_cannot_serve_are_config_errors_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "test");
    let (good_cert, good_key) = pki.server_cert("good", &["a.example"], CertOptions::default());
    let (expired_cert, expired_key) = pki.server_cert(
        "expired",
        &["a.example"],
        CertOptions {
            expired: true,
            ..Default::default()
        },
    );
    let other_key = mismatched_key(dir.path(), "other");
    let missing = dir.path().join("missing.pem");
    for (cert, key, expect) in [
        (&expired_cert, &expired_key, "expired"),
        (&good_cert, &other_key, "does not belong to the certificate"),
        (&missing, &good_key, "cannot read certificate file"),
        (&good_cert, &good_cert, "no usable private key"),
    ] {
        let config = format!(
            "[[listener]]\nname = \"tls\"\naddress = \"127.0.0.1:0\"\ntls = {{ cert = {}, key = {} }}\n\n{}",
            p(cert),
            p(key),
            echo_route(None)
        );
        let (ok, text) = common::check_config(dir.path(), &config);
        assert!(!ok, "{expect}: {text}");
        assert!(text.contains(expect), "{expect}: {text}");
        let named = if expect.contains("private key") {
            key
        } else {
            cert
        };
        let file = named.file_name().unwrap().to_str().unwrap();
        assert!(text.contains(file), "{expect} should name {file}: {text}");
        assert!(text.contains("[[listener]] `tls`"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_load_without_a_failed_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Arc::new(Pki::new(dir.path(), "test"));
    let (cert, key) = pki.server_cert("site", &["site.example"], serial(10));
    let config = format!(
        "{}[[listener]]\nname = \"tls\"\naddress = \"127.0.0.1:0\"\ntls = {{ cert = {}, key = {} }}\n\n{}",
        head(""),
        p(&cert),
        p(&key),
        echo_route(None)
    );
    let gateway = Gateway::start_in(dir, &config);
    let tls = gateway.listener("tls");
    let client = full_handshakes(pki.ca_path());

    // Clients open new connections continuously, each recording the serial it was served.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let new_serial_seen = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (stop, failures, new_serial_seen, client) = (
            stop.clone(),
            failures.clone(),
            new_serial_seen.clone(),
            client.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut served = 0usize;
            while !stop.load(Ordering::Relaxed) {
                match https_get(tls, "site.example", client.clone(), "/echo/r").await {
                    Ok((negotiated, StatusCode::OK, _, _)) => {
                        served += 1;
                        if negotiated.peer_serial == 11 {
                            new_serial_seen.fetch_add(1, Ordering::Relaxed);
                        } else {
                            assert_eq!(negotiated.peer_serial, 10);
                        }
                    }
                    Ok((_, status, _, _)) => panic!("status {status}"),
                    Err(e) => {
                        eprintln!("request failed: {e}");
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            served
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    // A renewal: new files written beside the old ones and renamed over them.
    let (new_cert, new_key) = pki.server_cert("site-renewed", &["site.example"], serial(11));
    std::fs::rename(&new_key, &key).unwrap();
    std::fs::rename(&new_cert, &cert).unwrap();
    let started = Instant::now();
    while new_serial_seen.load(Ordering::Relaxed) < 20 {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the renewed certificate was not served within 15 s:\n{}",
            gateway.output()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A broken renewal keeps the certificate in use.
    std::fs::write(&cert, "not a certificate").unwrap();
    wait_for_metric(
        &gateway,
        "wasmgate_tls_certificate_reloads_total",
        &[("outcome", "failure")],
    )
    .await;
    let seen_before = new_serial_seen.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut served = 0;
    for task in tasks {
        served += task.await.expect("client task");
    }
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "handshakes or requests failed during the rotation ({served} served)"
    );
    assert!(
        new_serial_seen.load(Ordering::Relaxed) > seen_before,
        "still served after the broken renewal"
    );
    let metrics = gateway.metrics().await;
    assert!(
        metric_value(
            &metrics,
            "wasmgate_tls_certificate_reloads_total",
            &[("outcome", "success")]
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    assert!(gateway.output().contains("keeping the old certificates"));
}

#[tokio::test]
async fn proxy_protocol_from_a_trusted_peer_names_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "test");
    let (cert, key) = pki.server_cert("site", &["site.example"], CertOptions::default());
    let config = format!(
        "{}[[listener]]\nname = \"lb\"\naddress = \"127.0.0.1:0\"\nproxy_protocol = true\n\n\
         [[listener]]\nname = \"lb-tls\"\naddress = \"127.0.0.1:0\"\nproxy_protocol = true\ntls = {{ cert = {}, key = {} }}\n\n{}",
        head("trusted_proxies = [\"127.0.0.1\"]\n"),
        p(&cert),
        p(&key),
        echo_route(None)
    );
    let gateway = Gateway::start_in(dir, &config);
    let lb = gateway.listener("lb");
    let request = "GET /echo/p HTTP/1.1\r\nHost: a.example\r\nX-Forwarded-For: 6.6.6.6\r\nConnection: close\r\n\r\n";
    let client: SocketAddr = "203.0.113.7:40000".parse().unwrap();
    for preface in [proxy_v2_header(client, lb), proxy_v1_header(client, lb)] {
        let response = raw_http1(lb, &preface, request).await;
        assert!(response.starts_with("HTTP/1.1 200"), "{response}");
        let lower = response.to_ascii_lowercase();
        assert!(
            lower.contains("x-echo-header-x-forwarded-for: 203.0.113.7\r\n"),
            "{response}"
        );
    }
    let six: SocketAddr = "[2001:db8::7]:40000".parse().unwrap();
    let response = raw_http1(
        lb,
        &proxy_v2_header(six, "[2001:db8::1]:80".parse().unwrap()),
        request,
    )
    .await;
    assert!(
        response
            .to_ascii_lowercase()
            .contains("x-echo-header-x-forwarded-for: 2001:db8::7\r\n"),
        "{response}"
    );

    // Before TLS.
    let stream = common::tls::connect_with_preface(
        gateway.listener("lb-tls"),
        &proxy_v2_header(client, lb),
        "site.example",
        client_config(&ClientOptions::new(pki.ca_path())),
    )
    .await
    .unwrap();
    let (_, status, headers, _) = common::tls::send_request(
        stream,
        Request::get("https://site.example/echo/p")
            .body(String::new())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        header(&headers, "x-echo-header-x-forwarded-for"),
        "203.0.113.7"
    );

    // Without a header, the connection is closed unanswered.
    let response = raw_http1(lb, &[], request).await;
    assert!(response.is_empty(), "{response}");
}

#[tokio::test]
async fn proxy_protocol_from_an_untrusted_peer_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "{}[[listener]]\nname = \"lb\"\naddress = \"127.0.0.1:0\"\nproxy_protocol = true\n\n{}",
        head("trusted_proxies = [\"192.0.2.1\"]\n"),
        echo_route(None)
    );
    let gateway = Gateway::start_in(dir, &config);
    let lb = gateway.listener("lb");
    let client: SocketAddr = "203.0.113.7:40000".parse().unwrap();
    let response = raw_http1(
        lb,
        &proxy_v1_header(client, lb),
        "GET /echo/p HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(response.is_empty(), "{response}");
    // And the config refuses proxy_protocol without trusted proxies.
    let (ok, text) = common::check_config(
        tempfile::tempdir().unwrap().path(),
        &format!(
            "[[listener]]\nname = \"lb\"\naddress = \"127.0.0.1:0\"\nproxy_protocol = true\n\n{}",
            echo_route(None)
        ),
    );
    assert!(!ok && text.contains("trusted_proxies"), "{text}");
}

/// Sends `preface` and then `request` on a new TCP connection and reads until the server
/// closes it (at most 10 s).
async fn raw_http1(addr: SocketAddr, preface: &[u8], request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut bytes = preface.to_vec();
    bytes.extend_from_slice(request.as_bytes());
    let _ = stream.write_all(&bytes).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    String::from_utf8_lossy(&response).into_owned()
}

fn serial(serial: u64) -> CertOptions {
    CertOptions {
        serial,
        ..Default::default()
    }
}

/// A client that never resumes a session: a resumed session reports the certificate of the
/// session it resumed, not the one the server has now.
fn full_handshakes(ca: &Path) -> Arc<rustls::ClientConfig> {
    let mut client = (*client_config(&ClientOptions::new(ca))).clone();
    client.resumption = rustls::client::Resumption::disabled();
    Arc::new(client)
}

/// Waits until a handshake failure for `reason` is counted; returns the metrics text.
async fn handshake_failures(gateway: &Gateway, reason: &str) -> String {
    wait_for_metric(
        gateway,
        "wasmgate_tls_handshake_failures_total",
        &[("reason", reason)],
    )
    .await
}

/// Waits (at most 5 s) until the metric sample is at least 1; returns the metrics text.
async fn wait_for_metric(gateway: &Gateway, name: &str, labels: &[(&str, &str)]) -> String {
    wait_for_count(gateway, name, labels, 1.0).await
}

/// Waits (at most 5 s) until the metric sample is at least `count`; returns the metrics text.
/// The gateway counts a failed handshake after the client has already seen it fail.
async fn wait_for_count(
    gateway: &Gateway,
    name: &str,
    labels: &[(&str, &str)],
    count: f64,
) -> String {
    let started = Instant::now();
    loop {
        let metrics = gateway.metrics().await;
        if metric_value(&metrics, name, labels).unwrap_or(0.0) >= count {
            return metrics;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{name}{labels:?} not counted:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn unknown_names_can_be_refused_and_silent_handshakes_time_out() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "test");
    let (default_cert, default_key) =
        pki.server_cert("default", &["default.example", "127.0.0.1"], serial(1));
    let (known_cert, known_key) = pki.server_cert("known", &["known.example"], serial(2));
    let config = format!(
        "{}[[listener]]\nname = \"tls\"\naddress = \"127.0.0.1:0\"\n\
         tls = {{ cert = {}, key = {}, unknown_sni = \"refuse\", sni = [ {{ names = [\"known.example\"], cert = {}, key = {} }} ] }}\n\n{}",
        head("header_read_timeout = \"1s\"\n"),
        p(&default_cert),
        p(&default_key),
        p(&known_cert),
        p(&known_key),
        echo_route(None)
    );
    let gateway = Gateway::start_in(dir, &config);
    let tls = gateway.listener("tls");
    let client = client_config(&ClientOptions::new(pki.ca_path()));
    for (name, serial) in [("known.example", 2), ("default.example", 1)] {
        let (negotiated, status, _, _) = https_get(tls, name, client.clone(), "/echo/x")
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!((status, negotiated.peer_serial), (StatusCode::OK, serial));
    }
    // A name no certificate has, and no name at all (an IP address sends no SNI).
    for name in ["other.example", "127.0.0.1"] {
        assert!(
            https_get(tls, name, client.clone(), "/echo/x")
                .await
                .is_err(),
            "{name} was served"
        );
    }
    let metrics = wait_for_count(
        &gateway,
        "wasmgate_tls_handshake_failures_total",
        &[("reason", "unknown_sni")],
        2.0,
    )
    .await;
    assert_eq!(
        metric_value(
            &metrics,
            "wasmgate_tls_handshake_failures_total",
            &[("reason", "unknown_sni")]
        ),
        Some(2.0)
    );

    // A client that connects and says nothing is closed after header_read_timeout.
    let mut silent = TcpStream::connect(tls).await.unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("closed within 5 s");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() >= Duration::from_millis(900));
    handshake_failures(&gateway, "timeout").await;
}

#[tokio::test]
async fn a_config_reload_applies_new_certificates_or_keeps_the_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "test");
    let (a_cert, a_key) = pki.server_cert("a", &["site.example"], serial(20));
    let (b_cert, b_key) = pki.server_cert("b", &["site.example"], serial(21));
    let broken = pki.ca_path().with_file_name("broken.pem");
    std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    let config = |cert: &Path, key: &Path| {
        format!(
            "{}[[listener]]\nname = \"tls\"\naddress = \"127.0.0.1:0\"\ntls = {{ cert = {}, key = {} }}\n\n{}",
            head(""),
            p(cert),
            p(key),
            echo_route(None)
        )
    };
    let config_path = dir.path().join("wasmgate.toml");
    let gateway = Gateway::start_in(dir, &config(&a_cert, &a_key));
    let tls = gateway.listener("tls");
    let client = full_handshakes(pki.ca_path());
    let serial = || async {
        https_get(tls, "site.example", client.clone(), "/echo/x")
            .await
            .expect("served")
            .0
            .peer_serial
    };
    assert_eq!(serial().await, 20);

    let reload = || async {
        let response = common::send(
            &common::http1(),
            Request::post(gateway.admin_url("/reload"))
                .body(common::empty())
                .unwrap(),
        )
        .await;
        common::read(response).await
    };
    std::fs::write(&config_path, config(&b_cert, &b_key)).unwrap();
    let (status, body) = {
        let (status, _, body) = reload().await;
        (status, body)
    };
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(serial().await, 21);

    std::fs::write(&config_path, config(&broken, &b_key)).unwrap();
    let (status, _, body) = reload().await;
    assert_ne!(status, StatusCode::OK, "{body}");
    assert!(body.contains("broken.pem"), "{body}");
    assert_eq!(serial().await, 21);
    let metrics = gateway.metrics().await;
    for outcome in ["success", "failure"] {
        assert_eq!(
            metric_value(
                &metrics,
                "wasmgate_tls_certificate_reloads_total",
                &[("outcome", outcome)]
            ),
            Some(1.0),
            "{outcome}"
        );
    }
}
