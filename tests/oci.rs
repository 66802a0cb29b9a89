//! Components from OCI registries (`component = "oci://..."`), against real registries: the
//! CNCF distribution server from Debian's docker-registry package, started once for the suite
//! by `tests/services/oci-registry` (127.0.0.1:15000 open, :15001 behind basic auth). Components
//! are pushed as `wkg` and `wash` push them (an `application/wasm` layer), with the oci-client
//! crate, each test to repositories of its own.

mod common;
#[path = "common/tcp_proxy.rs"]
#[allow(dead_code)]
mod tcp_proxy;

use base64::Engine as _;
use common::{Gateway, guest, http1, toml_path};
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::OciImageManifest;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use std::path::Path;

const OPEN: &str = "127.0.0.1:15000";
const AUTH: &str = "127.0.0.1:15001";
const USER: &str = "wasmgate-test";
const PASSWORD: &str = "wasmgate-test-password";

/// A repository name no other test or run uses.
fn repository(name: &str) -> String {
    format!("wasmgate-test/{}/{name}", uuid::Uuid::new_v4().simple())
}

fn registry_client() -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..ClientConfig::default()
    })
}

/// Pushes `bytes` as a one-layer artifact of `media_type` to `reference`; returns the
/// manifest's digest.
async fn push_layer(
    reference: &str,
    bytes: Vec<u8>,
    media_type: &str,
    auth: &RegistryAuth,
) -> String {
    let reference: Reference = reference.parse().expect("reference");
    let client = registry_client();
    let layer = ImageLayer::new(bytes, media_type.to_string(), None);
    let config = Config::new(
        b"{}".to_vec(),
        "application/vnd.wasm.config.v0+json".to_string(),
        None,
    );
    let manifest = OciImageManifest::build(std::slice::from_ref(&layer), &config, None);
    client
        .push(&reference, &[layer], config, auth, Some(manifest))
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot push to {reference}: {e} (is the test registry running? \
                 tests/services/oci-registry starts it)"
            )
        });
    client
        .fetch_manifest_digest(&reference, auth)
        .await
        .expect("manifest digest")
}

/// Pushes the built guest `name` as a component to `reference`.
async fn push_guest(reference: &str, name: &str) -> String {
    let bytes = std::fs::read(guest(name)).expect("guest");
    push_layer(
        reference,
        bytes,
        "application/wasm",
        &RegistryAuth::Anonymous,
    )
    .await
}

fn registry_section(extra: &str) -> String {
    format!("[registry]\ninsecure = [\"{OPEN}\", \"{AUTH}\"]\n{extra}\n")
}

fn route(path: &str, component: &str) -> String {
    format!("[[route]]\npath = \"{path}\"\ncomponent = \"{component}\"\n")
}

/// `wasmgate check` on `config` (written into `dir`) with `envs`, and no docker config file
/// unless `envs` gives one: (success, output).
fn check(dir: &Path, config: &str, envs: &[(&str, &str)]) -> (bool, String) {
    let no_docker_config = dir.join("no-docker-config");
    let mut all = vec![("DOCKER_CONFIG", no_docker_config.to_str().unwrap())];
    all.extend_from_slice(envs);
    common::check_config_with(dir, config, &all)
}

fn cache_section(cache: &Path) -> String {
    format!("[engine]\ncache_dir = {}\n", toml_path(cache))
}

#[tokio::test]
async fn serves_components_pulled_by_tag_and_by_digest_into_the_content_addressed_cache() {
    let repo = repository("hello");
    let tagged = format!("{OPEN}/{repo}:1.0.0");
    let digest = push_guest(&tagged, "hello").await;
    let pinned = format!("{OPEN}/{repo}@{digest}");

    let routes = format!(
        "{}{}{}",
        registry_section(""),
        route("/tag", &format!("oci://{tagged}")),
        route("/digest", &format!("oci://{pinned}")),
    );
    let gateway = Gateway::start(&routes);
    let client = http1();
    for path in ["/tag", "/digest"] {
        let (status, _, body) = common::get(&client, &gateway.url(path)).await;
        assert_eq!(
            (status.as_u16(), body.as_str()),
            (200, "Hello from wasmgate!\n"),
            "{path}"
        );
    }
    // The component is stored under its layer digest, and the compile cache (keyed by the
    // bytes) is the one files use.
    let bytes = std::fs::read(guest("hello")).unwrap();
    let layer = sha256_hex(&bytes);
    let stored = common::shared_cache_dir().join(format!("oci/blobs/sha256/{layer}.wasm"));
    assert_eq!(std::fs::read(&stored).expect("stored component"), bytes);
    let output = gateway.output();
    assert!(
        output.contains("pulled component from the registry"),
        "{output}"
    );
}

#[tokio::test]
async fn a_reload_re_resolves_a_tag() {
    let repo = repository("live");
    let tagged = format!("{OPEN}/{repo}:live");
    push_guest(&tagged, "hello").await;
    let gateway = Gateway::start(&format!(
        "{}{}",
        registry_section(""),
        route("/", &format!("oci://{tagged}"))
    ));
    let client = http1();
    let (_, headers, body) = common::get(&client, &gateway.url("/")).await;
    assert_eq!(body, "Hello from wasmgate!\n");
    assert!(headers.get("x-echo-method").is_none());

    push_guest(&tagged, "echo").await;
    let reload = common::send(
        &client,
        http::Request::post(gateway.admin_url("/reload"))
            .body(common::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(reload.status(), 200);
    let (status, headers, _) = common::get(&client, &gateway.url("/")).await;
    assert_eq!(status, 200);
    assert_eq!(
        headers.get("x-echo-method").map(|v| v.to_str().unwrap()),
        Some("GET"),
        "the tag now names the echo component"
    );
}

// Multi-threaded: the proxy serves the gateway while the test waits for it to start.
#[tokio::test(flavor = "multi_thread")]
async fn with_the_registry_away_a_tag_serves_what_it_last_resolved_to_and_a_digest_needs_no_network()
 {
    let proxy = tcp_proxy::Proxy::start(OPEN).await;
    let repo = repository("offline");
    let digest = push_guest(&format!("{OPEN}/{repo}:1"), "hello").await;
    let through_proxy = format!("127.0.0.1:{}/{repo}", proxy.port);
    let config = format!(
        "[registry]\ninsecure = [\"127.0.0.1:{}\"]\ntimeout = \"5s\"\n{}{}",
        proxy.port,
        route("/tag", &format!("oci://{through_proxy}:1")),
        route("/digest", &format!("oci://{through_proxy}@{digest}")),
    );
    let mut first = Gateway::start(&config);
    first.terminate();

    proxy.cut();
    let second = Gateway::start(&config);
    let client = http1();
    for path in ["/tag", "/digest"] {
        let (status, _, body) = common::get(&client, &second.url(path)).await;
        assert_eq!(
            (status.as_u16(), body.as_str()),
            (200, "Hello from wasmgate!\n"),
            "{path}"
        );
    }
    let output = second.output();
    assert!(output.contains("last resolved to"), "{output}");
    assert!(
        !output.contains("pulled component from the registry"),
        "{output}"
    );

    // A tag never resolved before has nothing to fall back to: the start fails and says why.
    let dir = tempfile::tempdir().unwrap();
    let (ok, output) = check(
        dir.path(),
        &format!(
            "{}[registry]\ninsecure = [\"127.0.0.1:{}\"]\ntimeout = \"5s\"\n{}",
            cache_section(&dir.path().join("cache")),
            proxy.port,
            route("/", &format!("oci://{through_proxy}:1"))
        ),
        &[],
    );
    assert!(!ok, "{output}");
    assert!(output.contains("cannot get the manifest"), "{output}");
}

#[tokio::test]
async fn credentials_come_from_the_config_or_the_docker_config_file() {
    let repo = repository("private");
    let tagged = format!("{AUTH}/{repo}:1");
    let bytes = std::fs::read(guest("hello")).unwrap();
    let auth = RegistryAuth::Basic(USER.into(), PASSWORD.into());
    push_layer(&tagged, bytes, "application/wasm", &auth).await;

    let dir = tempfile::tempdir().unwrap();
    let base = format!(
        "{}{}",
        cache_section(&dir.path().join("cache")),
        route("/", &format!("oci://{tagged}"))
    );

    let (ok, output) = check(dir.path(), &format!("{base}{}", registry_section("")), &[]);
    assert!(!ok, "anonymous pulls are refused: {output}");
    assert!(output.contains(&format!("oci://{tagged}")), "{output}");

    let with_auth = registry_section(&format!(
        "[registry.auth.\"{AUTH}\"]\nusername = \"{USER}\"\npassword = \"${{OCI_TEST_PASSWORD}}\"\n"
    ));
    let (ok, output) = check(
        dir.path(),
        &format!("{base}{with_auth}"),
        &[("OCI_TEST_PASSWORD", PASSWORD)],
    );
    assert!(ok, "{output}");
    // The route listing names the component by its reference, not by its file in the cache.
    assert!(output.contains(&format!("/ oci://{tagged}")), "{output}");
    let (ok, output) = check(
        dir.path(),
        &format!("{base}{with_auth}"),
        &[("OCI_TEST_PASSWORD", "wrong")],
    );
    assert!(!ok, "{output}");

    // The docker config file, as `docker login` writes it.
    let docker = dir.path().join("docker");
    std::fs::create_dir_all(&docker).unwrap();
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    std::fs::write(
        docker.join("config.json"),
        format!("{{\"auths\": {{\"{AUTH}\": {{\"auth\": \"{encoded}\"}}}}}}"),
    )
    .unwrap();
    let (ok, output) = check(
        dir.path(),
        &format!("{base}{}", registry_section("")),
        &[("DOCKER_CONFIG", docker.to_str().unwrap())],
    );
    assert!(ok, "{output}");
}

#[tokio::test]
async fn what_is_not_a_usable_component_reference_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_section(&dir.path().join("cache"));
    let refused = |config: String, expected: &'static str| {
        let (ok, output) = check(dir.path(), &config, &[]);
        assert!(!ok, "{config}\n{output}");
        assert!(
            output.contains(expected),
            "expected `{expected}`:\n{output}"
        );
    };
    // A route serving `component`, with the registry section and the test's cache.
    let with_component =
        |component: &str| format!("{cache}{}{}", registry_section(""), route("/", component));

    // A container image, not a component artifact.
    let image = format!("{OPEN}/{}:1", repository("image"));
    push_layer(
        &image,
        b"not a component".to_vec(),
        "application/vnd.oci.image.layer.v1.tar+gzip",
        &RegistryAuth::Anonymous,
    )
    .await;
    refused(
        with_component(&format!("oci://{image}")),
        "not a Wasm component artifact",
    );
    // An `application/wasm` layer that is not a component.
    let core = format!("{OPEN}/{}:1", repository("core"));
    push_layer(
        &core,
        b"\0asm\x01\0\0\0".to_vec(),
        "application/wasm",
        &RegistryAuth::Anonymous,
    )
    .await;
    refused(
        with_component(&format!("oci://{core}")),
        "core WebAssembly module",
    );
    // A tag that does not exist; a digest that no manifest has.
    let missing = format!("{OPEN}/{}", repository("missing"));
    refused(
        with_component(&format!("oci://{missing}:1")),
        "cannot get the manifest",
    );
    refused(
        with_component(&format!("oci://{missing}@sha256:{}", "0".repeat(64))),
        "cannot get the manifest",
    );
    // Not a reference at all.
    refused(
        with_component("oci://Not A Reference"),
        "not a valid registry reference",
    );
    // Pulled components live in the cache directory: it cannot be off.
    refused(
        format!(
            "[engine]\ncache_dir = \"\"\n{}{}",
            registry_section(""),
            route("/", &format!("oci://{image}"))
        ),
        "cache_dir",
    );
    // A registry that is not listed as insecure is spoken to over HTTPS, which it does not
    // speak: refused, not downgraded.
    refused(
        format!("{cache}{}", route("/", &format!("oci://{image}"))),
        "cannot get the manifest",
    );
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A registry that lies (a small test server, since a real one does not): its manifest gives
/// the layer `declared` bytes, and it sends `sent`.
async fn lying_registry(declared: i64, sent: Vec<u8>) -> std::net::SocketAddr {
    let digest = format!("sha256:{}", sha256_hex(&sent));
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "config":{{"mediaType":"application/vnd.wasm.config.v0+json","digest":"sha256:{}","size":2}},
            "layers":[{{"mediaType":"application/wasm","digest":"{digest}","size":{declared}}}]}}"#,
        sha256_hex(b"{}")
    );
    common::serve_http(move |request: http::Request<hyper::body::Incoming>| {
        let (manifest, sent) = (manifest.clone(), sent.clone());
        async move {
            let path = request.uri().path();
            let (content_type, body) = if path.contains("/manifests/") {
                (
                    "application/vnd.oci.image.manifest.v1+json",
                    manifest.into_bytes(),
                )
            } else if path.contains("/blobs/") {
                ("application/octet-stream", sent)
            } else {
                ("application/json", b"{}".to_vec())
            };
            http::Response::builder()
                .header("content-type", content_type)
                .body(common::server_text(body))
                .unwrap()
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_registry_that_sends_more_than_its_manifest_says_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    for (declared, sent, expected) in [
        (10, vec![7u8; 1 << 20], "sent more than the 10 bytes"),
        (-1, vec![7u8; 16], "a size of -1"),
        (
            1 << 40,
            vec![7u8; 16],
            "more than [registry] max_component_size",
        ),
    ] {
        let registry = lying_registry(declared, sent).await;
        let config = format!(
            "{}[registry]\ninsecure = [\"{registry}\"]\n{}",
            cache_section(&dir.path().join("cache")),
            route("/", &format!("oci://{registry}/liar/component:1"))
        );
        let dir_path = dir.path().to_path_buf();
        let (ok, output) = tokio::task::spawn_blocking(move || check(&dir_path, &config, &[]))
            .await
            .unwrap();
        assert!(!ok, "{output}");
        assert!(
            output.contains(expected),
            "expected `{expected}`:\n{output}"
        );
    }
}
