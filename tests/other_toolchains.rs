//! Components from toolchains other than Rust, through the real binary: the componentize-py and
//! componentize-js (jco) hellos that `loadtests/lang/build.sh` builds (`.ci/run` runs it), served
//! under `[engine]`'s pool and under the `pool` that `wasmgate check` suggests for them.

mod common;

use common::*;
use http::StatusCode;
use std::path::PathBuf;

/// A component `loadtests/lang/build.sh` builds; missing is a failure, not a skip.
fn built(name: &str) -> PathBuf {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/loadtests/lang")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run loadtests/lang/build.sh first (.ci/run does)",
        path.display()
    );
    path
}

#[tokio::test]
async fn python_and_javascript_hellos_are_served_under_either_pool() {
    let (py, js) = (built("hello-py.wasm"), built("hello-js.wasm"));
    let suggested = r#"{ pagemap_scan = false, linear_memory_keep_resident = "16MiB" }"#;
    let gw = Gateway::start(&format!(
        r#"
[[route]]
path = "/py"
component = {py}

[[route]]
path = "/py-tuned"
component = {py}
pool = {suggested}

[[route]]
path = "/js"
component = {js}

[[route]]
path = "/js-tuned"
component = {js}
pool = {suggested}
"#,
        py = toml_path(&py),
        js = toml_path(&js),
    ));
    let client = http1();
    for _ in 0..5 {
        for (path, body) in [
            ("/py", "hello from python\n"),
            ("/py-tuned", "hello from python\n"),
            ("/js", "hello from javascript\n"),
            ("/js-tuned", "hello from javascript\n"),
        ] {
            let (status, _, got) = get(&client, &gw.url(path)).await;
            assert_eq!((status, got.as_str()), (StatusCode::OK, body), "{path}");
        }
    }
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_value(&metrics, "wasmgate_instance_pools", &[]),
        Some(2.0)
    );
}

#[test]
fn check_suggests_a_pool_for_an_interpreters_snapshot() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = format!(
        "[engine]\ncache_dir = {}\n[[route]]\npath = \"/py\"\ncomponent = {}\n",
        toml_path(&shared_cache_dir()),
        toml_path(&built("hello-py.wasm"))
    );
    let (ok, text) = check_config(dir.path(), &config);
    assert!(ok, "{text}");
    let footprint = text
        .lines()
        .find(|line| line.contains("hello-py.wasm: data "))
        .unwrap_or_else(|| panic!("no footprint in {text}"));
    assert!(
        footprint.contains(
            r#"for its routes try pool = { pagemap_scan = false, linear_memory_keep_resident = "16MiB" }"#
        ),
        "{footprint}"
    );
}
