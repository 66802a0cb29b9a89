//! The TLS test scaffolding's own proof (`tests/common/tls.rs`): certificates from its `Pki`
//! are served by an in-process tokio-rustls + hyper server and its client reaches them.

mod common;

use bytes::Bytes;
use common::tls::{
    self, CertOptions, ClientOptions, KeyKind, Pki, client_config, https_get, load_certs, load_key,
    mismatched_key, proxy_v1_header, proxy_v2_header,
};
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// A server config for the chain and key, ALPN h2 and http/1.1; TLS 1.3 only if asked;
/// requiring client certificates from `client_ca` if given.
fn server_config(
    (chain, key): &(std::path::PathBuf, std::path::PathBuf),
    tls13_only: bool,
    client_ca: Option<&Path>,
) -> ServerConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&'static rustls::SupportedProtocolVersion] = if tls13_only {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .expect("versions");
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder_with_provider(Arc::new(tls::root_store(ca)), provider)
                .build()
                .expect("client verifier"),
        ),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(load_certs(chain), load_key(key))
        .expect("server certificate");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

/// Serves `config` on an ephemeral port: every request gets 200 "ok", with the serial of the
/// client certificate (if any) in `x-client-serial`.
async fn serve(config: ServerConfig) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let client_serial = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|leaf| tls::leaf_identity(leaf).0.to_string());
                let service = service_fn(move |_request| {
                    let mut response = Response::builder().status(StatusCode::OK);
                    if let Some(serial) = &client_serial {
                        response = response.header("x-client-serial", serial.as_str());
                    }
                    let response = response
                        .body(Full::new(Bytes::from_static(b"ok")))
                        .expect("response");
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn alpn_client(ca: &Path, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    client_config(&ClientOptions {
        alpn: alpn.iter().map(|p| p.to_vec()).collect(),
        ..ClientOptions::new(ca)
    })
}

#[tokio::test]
async fn h2_and_http1_with_the_right_alpn_and_serial() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path(), "test");
    let cert = pki.server_cert(
        "api",
        &["api.example.com"],
        CertOptions {
            serial: 4242,
            ..Default::default()
        },
    );
    let addr = serve(server_config(&cert, false, None)).await;

    const H2: &[u8] = b"h2";
    const H1: &[u8] = b"http/1.1";
    for (offer, expected) in [
        (vec![H2, H1], Some(H2)),
        (vec![H1], Some(H1)),
        (vec![], None),
    ] {
        let config = alpn_client(pki.ca_path(), &offer);
        let (negotiated, status, _, body) = https_get(addr, "api.example.com", config, "/hello")
            .await
            .unwrap_or_else(|e| panic!("GET with ALPN {offer:?}: {e}"));
        assert_eq!(negotiated.alpn.as_deref(), expected);
        assert_eq!(negotiated.peer_serial, 4242);
        assert_eq!(negotiated.peer_names, ["api.example.com"]);
        assert_eq!(negotiated.version, Some(rustls::ProtocolVersion::TLSv1_3));
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    }
}

#[tokio::test]
async fn rsa_ecdsa_and_ed25519_certificates_handshake() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path(), "test");
    let names = ["*.apps.example.com", "127.0.0.1"];
    for (serial, key) in [
        (1, KeyKind::Rsa),
        (2, KeyKind::Ecdsa),
        (3, KeyKind::Ed25519),
    ] {
        let opts = CertOptions {
            key,
            serial,
            ..Default::default()
        };
        let cert = pki.server_cert(&format!("{key:?}"), &names, opts);
        let addr = serve(server_config(&cert, false, None)).await;
        // A wildcard name, and an IP address checked against the IP SAN.
        for server_name in ["one.apps.example.com", "127.0.0.1"] {
            let config = alpn_client(pki.ca_path(), &[b"h2"]);
            let (negotiated, status, _, _) = https_get(addr, server_name, config, "/")
                .await
                .unwrap_or_else(|e| panic!("{key:?} certificate, {server_name}: {e}"));
            assert_eq!(negotiated.peer_serial, serial);
            assert_eq!(negotiated.peer_names, ["*.apps.example.com"]);
            assert_eq!(status, StatusCode::OK);
        }
    }
}

#[tokio::test]
async fn a_chain_through_the_intermediate_verifies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path(), "test");
    let cert = pki.server_cert(
        "chained",
        &["chained.example.com"],
        CertOptions {
            serial: 77,
            intermediate: true,
            ..Default::default()
        },
    );
    assert_eq!(load_certs(&cert.0).len(), 2, "leaf then intermediate");
    let addr = serve(server_config(&cert, false, None)).await;
    let config = alpn_client(pki.ca_path(), &[b"h2"]);
    let (negotiated, status, _, _) = https_get(addr, "chained.example.com", config, "/")
        .await
        .expect("GET through an intermediate");
    assert_eq!((negotiated.peer_serial, status), (77, StatusCode::OK));
}

#[tokio::test]
async fn an_expired_certificate_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path(), "test");
    let cert = pki.server_cert(
        "old",
        &["old.example.com"],
        CertOptions {
            expired: true,
            ..Default::default()
        },
    );
    let addr = serve(server_config(&cert, false, None)).await;
    let config = alpn_client(pki.ca_path(), &[b"h2"]);
    let error = tls::connect(addr, "old.example.com", config)
        .await
        .expect_err("an expired certificate must be refused");
    assert!(error.to_string().contains("expired"), "{error}");
}

#[tokio::test]
async fn tls_version_limits() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path(), "test");
    let cert = pki.server_cert("v", &["v.example.com"], CertOptions::default());
    let tls12 = client_config(&ClientOptions {
        tls12_only: true,
        ..ClientOptions::new(pki.ca_path())
    });

    let both = serve(server_config(&cert, false, None)).await;
    let (negotiated, status, _, _) = https_get(both, "v.example.com", tls12.clone(), "/")
        .await
        .expect("TLS 1.2 against a server allowing it");
    assert_eq!(negotiated.version, Some(rustls::ProtocolVersion::TLSv1_2));
    assert_eq!(status, StatusCode::OK);

    let tls13_only = serve(server_config(&cert, true, None)).await;
    tls::connect(tls13_only, "v.example.com", tls12)
        .await
        .expect_err("a TLS 1.2-only client against a TLS 1.3-only server");
}

#[tokio::test]
async fn mtls_client_certificate_reaches_the_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path(), "test");
    let cert = pki.server_cert("m", &["m.example.com"], CertOptions::default());
    let (client_cert, client_key) = pki.client_cert(
        "svc",
        "svc-a",
        Some("Acme"),
        &["svc-a.internal", "10.0.0.7"],
    );
    let expected_serial = tls::leaf_identity(&load_certs(&client_cert)[0]);
    assert_eq!(expected_serial.1, ["svc-a.internal"]);
    let addr = serve(server_config(&cert, false, Some(pki.ca_path()))).await;

    let with_cert = client_config(&ClientOptions {
        client_cert: Some((&client_cert, &client_key)),
        ..ClientOptions::new(pki.ca_path())
    });
    let (_, status, headers, body) = https_get(addr, "m.example.com", with_cert, "/")
        .await
        .expect("GET with a client certificate");
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    assert_eq!(
        headers["x-client-serial"],
        expected_serial.0.to_string().as_str()
    );

    let without = alpn_client(pki.ca_path(), &[b"h2"]);
    https_get(addr, "m.example.com", without, "/")
        .await
        .expect_err("no client certificate, no response");
}

#[test]
fn a_mismatched_key_is_refused_by_rustls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path(), "test");
    let (chain, _) = pki.server_cert("k", &["k.example.com"], CertOptions::default());
    let other = mismatched_key(dir.path(), "other");
    let result =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(load_certs(&chain), load_key(&other));
    assert!(
        matches!(result, Err(rustls::Error::InconsistentKeys(_))),
        "a key that is not the certificate's: {result:?}"
    );
}

#[test]
fn proxy_v1_bytes() {
    let src: SocketAddr = "1.2.3.4:1111".parse().expect("addr");
    let dst: SocketAddr = "5.6.7.8:2222".parse().expect("addr");
    assert_eq!(
        proxy_v1_header(src, dst),
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n"
    );
}

#[test]
fn proxy_v2_bytes() {
    let src: SocketAddr = "1.2.3.4:1111".parse().expect("addr");
    let dst: SocketAddr = "5.6.7.8:2222".parse().expect("addr");
    let expected: &[u8] = &[
        0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, // signature
        0x21, // version 2, PROXY
        0x11, // TCP over IPv4
        0x00, 0x0c, // 12 bytes follow
        1, 2, 3, 4, // source address
        5, 6, 7, 8, // destination address
        0x04, 0x57, // 1111
        0x08, 0xae, // 2222
    ];
    assert_eq!(proxy_v2_header(src, dst), expected);
}
