//! wasi:logging and wasi:config end to end, through real components.

mod common;

use common::*;
use http::StatusCode;
use std::time::Duration;

fn routes() -> String {
    format!(
        r#"
[[route]]
path = "/log"
component = {logger}

[[route]]
path = "/config/..."
component = {config}
config = {{ greeting = "hello", region = "${{WASMGATE_TEST_REGION}}-east", url = "https://${{WASMGATE_TEST_REGION}}.example.com" }}
"#,
        logger = toml_path(&guest("logger")),
        config = toml_path(&guest("config-echo")),
    )
}

fn sections() -> Sections {
    Sections {
        server: "\n[logging]\nformat = \"json\"\nlevel = \"trace\"\nmax_guest_messages = 8\nmax_guest_bytes = \"4KiB\"\n".into(),
        rust_log: None,
        ..Sections::default()
    }
}

fn start() -> Gateway {
    // SAFETY of the test: the variable is set before the gateway process is spawned with it.
    unsafe { std::env::set_var("WASMGATE_TEST_REGION", "eu") };
    Gateway::start_with(&routes(), sections())
}

#[tokio::test]
async fn every_level_arrives_as_a_json_line_with_route_and_request_id() {
    let gw = start();
    let (status, headers, body) = get(&http1(), &gw.url("/log")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "logged\n"));
    let request_id = headers["x-request-id"].to_str().unwrap().to_string();
    for (level, json_level) in [
        ("trace", "TRACE"),
        ("debug", "DEBUG"),
        ("info", "INFO"),
        ("warn", "WARN"),
        ("error", "ERROR"),
        ("critical", "ERROR"),
    ] {
        let line = gw.wait_for_output(Duration::from_secs(5), |l| {
            l.contains(&format!("\"message at {level}\""))
        });
        assert!(line.starts_with('{'), "a JSON line: {line}");
        for field in [
            format!("\"level\":\"{json_level}\""),
            format!("\"request_id\":\"{request_id}\""),
            "\"route\":\"/log\"".to_string(),
            "\"component\":\"logger.wasm\"".to_string(),
            "\"context\":\"logger-guest\"".to_string(),
            "\"timestamp\":".to_string(),
        ] {
            assert!(line.contains(&field), "{field} missing in {line}");
        }
        if level == "critical" {
            assert!(line.contains("\"critical\":true"), "{line}");
        }
    }
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "wasmgate_guest_log_messages_total",
            &[
                ("route", "/log"),
                ("level", "critical"),
                ("outcome", "logged")
            ]
        ),
        Some(1.0)
    );
}

#[tokio::test]
async fn the_per_request_budget_drops_and_counts() {
    let gw = start();
    // 3 x 6 = 18 messages against a budget of 8.
    let (status, _, _) = get(&http1(), &gw.url("/log?repeat=3")).await;
    assert_eq!(status, StatusCode::OK);
    gw.wait_for_output(Duration::from_secs(5), |l| {
        l.contains("used up its log budget")
    });
    let metrics = gw.metrics().await;
    let total = |outcome: &str| -> f64 {
        ["trace", "debug", "info", "warn", "error", "critical"]
            .iter()
            .filter_map(|level| {
                metric_value(
                    &metrics,
                    "wasmgate_guest_log_messages_total",
                    &[("route", "/log"), ("level", level), ("outcome", outcome)],
                )
            })
            .sum()
    };
    assert_eq!(total("logged"), 8.0);
    assert_eq!(total("dropped"), 10.0);

    // The bytes budget too: one message larger than 4KiB is dropped; the budget is per request.
    let (status, _, _) = get(&http1(), &gw.url("/log?big=5000")).await;
    assert_eq!(status, StatusCode::OK);
    let metrics = gw.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            "wasmgate_guest_log_messages_total",
            &[("route", "/log"), ("level", "info"), ("outcome", "dropped")]
        ),
        Some(3.0),
        "2 from the first request (the budget of 8 ends after its second `debug`), 1 oversized"
    );
}

#[tokio::test]
async fn config_values_reach_the_component_with_env_references_resolved() {
    let gw = start();
    let (status, _, body) = get(&http1(), &gw.url("/config")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        "greeting=hello\nregion=eu-east\nurl=https://eu.example.com\n"
    );
    assert_eq!(get(&http1(), &gw.url("/config/greeting")).await.2, "hello");
    assert_eq!(
        get(&http1(), &gw.url("/config/missing")).await.0,
        StatusCode::NOT_FOUND
    );
}

#[test]
fn an_unset_environment_reference_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[engine]\ncache_dir = {}\n[[route]]\npath = \"/c\"\ncomponent = {}\nconfig = {{ secret = \"${{WASMGATE_SURELY_UNSET_VAR}}\" }}\n",
        toml_path(&shared_cache_dir()),
        toml_path(&guest("config-echo"))
    );
    let (ok, stderr) = check_config(dir.path(), &config);
    assert!(!ok);
    assert!(
        stderr.contains("route 1 (/c)")
            && stderr.contains("config key `secret`")
            && stderr.contains("`WASMGATE_SURELY_UNSET_VAR` is not set"),
        "{stderr}"
    );
}
