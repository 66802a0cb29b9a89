//! Routes' own pool settings (`pool = { ... }`) through the real binary: each distinct tuning
//! gets a pool of its own, routes with the same tuning share one, instances from a tuned pool
//! start from a clean memory like any other, and the settings are checked.

mod common;

use common::*;
use http::{Request, StatusCode};

/// `[engine]`'s pool settings in the test harness are the defaults; this one differs.
const INTERPRETER: &str = r#"{ pagemap_scan = false, linear_memory_keep_resident = "16MiB" }"#;

fn routes(extra: &str) -> String {
    format!(
        r#"
[[route]]
path = "/plain"
component = {hello}

[[route]]
path = "/as-engine"
component = {hello}
pool = {{ pagemap_scan = true, linear_memory_keep_resident = "4MiB" }}

[[route]]
path = "/tuned"
component = {hello}
pool = {INTERPRETER}

[[route]]
path = "/tuned-visits"
component = {visits}
pool = {INTERPRETER}
{extra}"#,
        hello = toml_path(&guest("hello")),
        visits = toml_path(&guest("visits")),
    )
}

async fn pools(gw: &Gateway) -> Option<f64> {
    metric_value(&gw.metrics().await, "wasmgate_instance_pools", &[])
}

async fn reload(gw: &Gateway, config: &str) -> (StatusCode, String) {
    let text = std::fs::read_to_string(gw.dir.path().join("wasmgate.toml")).expect("config");
    let head = text
        .split("[[route]]")
        .next()
        .expect("sections")
        .to_string();
    std::fs::write(gw.dir.path().join("wasmgate.toml"), head + config).expect("write config");
    let request = Request::post(gw.admin_url("/reload"))
        .body(empty())
        .expect("request");
    let (status, _, body) = read(send(&http1(), request).await).await;
    (status, body)
}

#[tokio::test]
async fn routes_with_the_same_tuning_share_a_pool_and_tuned_instances_start_clean() {
    let gw = Gateway::start(&routes(""));
    let client = http1();
    for _ in 0..20 {
        for path in ["/plain", "/as-engine", "/tuned"] {
            let (status, _, body) = get(&client, &gw.url(path)).await;
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
        }
        // A fresh instance from the tuned pool, whose memory is kept resident between
        // instances, still starts from the component's own memory: nothing of the last
        // request's counting is left.
        let (status, _, body) = get(&client, &gw.url("/tuned-visits")).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "visit 1\n"));
    }
    // [engine]'s pool, which /as-engine's settings name again, and one for the two tuned routes.
    assert_eq!(pools(&gw).await, Some(2.0));
    let (_, _, lines) = get(&client, &gw.admin_url("/routes")).await;
    let own_pool = |path: &str| {
        let line = lines
            .lines()
            .find(|line| line.starts_with(&format!("{path} ")))
            .unwrap_or_else(|| panic!("no {path} in {lines}"));
        line.contains("(own pool: pagemap_scan = false, linear_memory_keep_resident = 16384 KiB")
    };
    assert!(!own_pool("/plain") && !own_pool("/as-engine"), "{lines}");
    assert!(own_pool("/tuned") && own_pool("/tuned-visits"), "{lines}");
    let output = gw.output();
    assert_eq!(
        output
            .matches("created an instance pool for routes' `pool` settings")
            .count(),
        1,
        "{output}"
    );
}

#[tokio::test]
async fn a_reload_adds_pools_up_to_four_refuses_a_fifth_and_frees_unused_ones() {
    let gw = Gateway::start(&routes(""));
    assert_eq!(pools(&gw).await, Some(2.0));
    let more = |keep: &str| {
        format!(
            r#"
[[route]]
path = "/more-{keep}"
component = {hello}
pool = {{ linear_memory_keep_resident = "{keep}" }}
"#,
            hello = toml_path(&guest("hello")),
        )
    };
    let (status, body) = reload(&gw, &routes(&(more("1MiB") + &more("2MiB")))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(pools(&gw).await, Some(4.0), "{body} {}", gw.output());
    let (status, _, body) = get(&http1(), &gw.url("/more-2MiB")).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let (status, body) = reload(&gw, &routes(&(more("1MiB") + &more("8MiB")))).await;
    assert!(!status.is_success(), "{status}: {body}");
    assert!(body.contains("has 4 already"), "{body}");
    // The generation before keeps serving.
    let (status, _, body) = get(&http1(), &gw.url("/more-2MiB")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(pools(&gw).await, Some(4.0));

    // Without the routes that used them, their pools go with the last generation using them.
    let (status, body) = reload(&gw, &routes("")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_for_pools(&gw, 2.0).await;
    // A reload that fails after making a pool does not keep it.
    let broken = "\n[[route]]\npath = \"/broken\"\nupstream = \"missing\"\n";
    let (status, body) = reload(&gw, &routes(&(more("8MiB") + broken))).await;
    assert!(!status.is_success(), "{status}: {body}");
    wait_for_pools(&gw, 2.0).await;
    let (status, body) = reload(&gw, &routes(&(more("8MiB") + &more("16MiB")))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(pools(&gw).await, Some(4.0));
    let (status, _, body) = get(&http1(), &gw.url("/more-8MiB")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// Waits (up to 10 s) for `wasmgate_instance_pools` to read `count`.
async fn wait_for_pools(gw: &Gateway, count: f64) {
    for _ in 0..100 {
        if pools(gw).await == Some(count) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("pools: {:?}, expected {count}", pools(gw).await);
}

#[test]
fn pool_settings_are_checked() {
    let dir = tempfile::tempdir().expect("temp dir");
    let hello = toml_path(&guest("hello"));
    let config = |engine: &str, pool: &str| {
        format!("[engine]\n{engine}\n[[route]]\npath = \"/\"\ncomponent = {hello}\npool = {pool}\n")
    };
    let (ok, text) = check_config(dir.path(), &config("pooling = false", INTERPRETER));
    assert!(!ok && text.contains("[engine] pooling = false"), "{text}");
    let (ok, text) = check_config(dir.path(), &config("", "{ keep_resident = \"1MiB\" }"));
    assert!(
        !ok && text.contains("unknown field `keep_resident`"),
        "{text}"
    );
    let (ok, text) = check_config(
        dir.path(),
        &format!(
            "[upstream.api]\ntargets = [\"http://127.0.0.1:9\"]\n[[route]]\npath = \"/\"\n\
             upstream = \"api\"\npool = {INTERPRETER}\n"
        ),
    );
    assert!(
        !ok && text.contains("`pool` is for component routes"),
        "{text}"
    );
    let (ok, text) = check_config(dir.path(), &config("max_instances = 8", INTERPRETER));
    assert!(ok, "{text}");
    assert!(text.contains("(own pool: pagemap_scan = false"), "{text}");
    // The footprint of a small component, with no pool to suggest (see runtime::footprint's
    // tests for one that gets a suggestion).
    let footprint = text
        .lines()
        .find(|line| line.contains("hello.wasm: data "))
        .unwrap_or_else(|| panic!("no footprint in {text}"));
    assert!(
        footprint.contains("MiB, memory at start ") && !footprint.contains("try pool"),
        "{footprint}"
    );
}
