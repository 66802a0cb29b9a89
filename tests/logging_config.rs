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

/// The variable `routes()`'s `config` reads, which the gateway process inherits.
fn set_region() {
    // SAFETY of the test: the variable is set before the gateway process is spawned with it.
    unsafe { std::env::set_var("WASMGATE_TEST_REGION", "eu") };
}

fn start() -> Gateway {
    set_region();
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

/// A JSON object's members in the order they appear, duplicates kept (a map would keep one).
struct Members(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Members, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, serde_json::Value>()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

impl Members {
    fn parse(line: &str) -> Members {
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON object ({e}): {line}"))
    }

    fn get(&self, key: &str) -> Option<&serde_json::Value> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn assert_unique(&self, line: &str) {
        let mut keys: Vec<&str> = self.0.iter().map(|(k, _)| k.as_str()).collect();
        keys.sort_unstable();
        let before = keys.len();
        keys.dedup();
        assert_eq!(before, keys.len(), "a key appears twice in {line}");
    }
}

#[tokio::test]
async fn a_json_line_has_each_key_once_and_the_guest_level_in_its_own_key() {
    let gw = start();
    let (status, _, _) = get(&http1(), &gw.url("/log")).await;
    assert_eq!(status, StatusCode::OK);
    for (guest, line_level) in [("warn", "WARN"), ("critical", "ERROR"), ("trace", "TRACE")] {
        let line = gw.wait_for_output(Duration::from_secs(5), |l| {
            l.contains(&format!("\"message at {guest}\""))
        });
        let members = Members::parse(&line);
        members.assert_unique(&line);
        assert_eq!(members.get("level"), Some(&line_level.into()), "{line}");
        assert_eq!(members.get("guest_level"), Some(&guest.into()), "{line}");
    }
}

#[tokio::test]
async fn stdout_and_stderr_share_the_request_budget_and_report_what_was_dropped() {
    let gw = start();
    // 100,000 stdout lines and 10 stderr lines, against a budget of 8 for the request.
    let (status, headers, _) =
        get(&http1(), &gw.url("/log?repeat=0&stdout=100000&stderr=10")).await;
    assert_eq!(status, StatusCode::OK);
    let request_id = headers["x-request-id"].to_str().unwrap().to_string();
    let last = gw.wait_for_output(Duration::from_secs(30), |l| {
        l.contains("lines dropped") && l.contains(&request_id)
    });
    let members = Members::parse(&last);
    assert_eq!(members.get("dropped"), Some(&100_002.into()), "{last}");
    assert!(last.contains("100002 lines dropped"), "{last}");

    let output = gw.output();
    let ours = |needle: &str| {
        output
            .lines()
            .filter(|l| l.contains(&request_id) && l.contains(needle))
            .count()
    };
    assert_eq!(ours("stdout line"), 8, "the budget, and nothing past it");
    assert_eq!(ours("stderr line"), 0);
    assert_eq!(ours("lines dropped"), 1, "one summary line per request");

    let metrics = gw.metrics().await;
    let count = |level, outcome| {
        metric_value(
            &metrics,
            "wasmgate_guest_log_messages_total",
            &[("route", "/log"), ("level", level), ("outcome", outcome)],
        )
    };
    assert_eq!(count("info", "logged"), Some(8.0));
    assert_eq!(
        count("info", "dropped"),
        Some(99_992.0),
        "stdout counts as info"
    );
    assert_eq!(
        count("warn", "dropped"),
        Some(10.0),
        "stderr counts as warn"
    );
    assert_eq!(
        metric_value(&metrics, "wasmgate_log_lines_dropped_total", &[]),
        Some(0.0),
        "the writer kept up"
    );
}

fn start_text(routes: &str) -> Gateway {
    set_region();
    Gateway::start_with(
        routes,
        Sections {
            server: "\n[logging]\nformat = \"text\"\n".into(),
            ..Sections::default()
        },
    )
}

#[tokio::test]
async fn guest_text_cannot_forge_lines_in_the_text_format() {
    let gw = start_text(&routes());
    let forged = "legit\nFORGED 2026-01-01T00:00:00Z ERROR fake: \u{1b}[31mred\r\tend";
    let (status, headers, _) = get(
        &http1(),
        &gw.url(&format!("/log?repeat=0&text={}", percent_encode(forged))),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let request_id = headers["x-request-id"].to_str().unwrap().to_string();
    // wasi:logging: one line, the newline escaped.
    let line = gw.wait_for_output(Duration::from_secs(5), |l| {
        l.contains(&request_id) && l.contains("context=")
    });
    assert!(
        line.contains(r"legit\nFORGED 2026-01-01T00:00:00Z ERROR fake: \u{1b}[31mred\r\tend"),
        "{line}"
    );
    // stdout and stderr: a line per line, control characters escaped.
    gw.wait_for_output(Duration::from_secs(5), |l| {
        l.contains(&request_id) && l.contains("stream=\"stderr\"") && l.contains("FORGED")
    });
    let output = gw.output();
    for line in output.lines() {
        assert!(!line.starts_with("FORGED"), "a forged line: {line}");
        assert!(
            !line.contains('\u{1b}') && !line.contains('\r'),
            "raw control characters: {line:?}"
        );
    }
}

#[tokio::test]
async fn a_trap_backtrace_is_logged_once_a_minute_per_route() {
    let gw = start_text(&format!(
        "[[route]]\npath = \"/trap\"\ncomponent = {}\n",
        toml_path(&guest("trap"))
    ));
    for _ in 0..3 {
        let (status, _, _) = get(&http1(), &gw.url("/trap")).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    let started = std::time::Instant::now();
    let trapped = loop {
        let output = gw.output();
        let lines: Vec<String> = output
            .lines()
            .filter(|l| l.contains("component trapped"))
            .map(str::to_string)
            .collect();
        if lines.len() == 3 || started.elapsed() > Duration::from_secs(5) {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(trapped.len(), 3, "{}", gw.output());
    let with_backtrace = trapped
        .iter()
        .filter(|l| l.contains("wasm backtrace"))
        .count();
    let without = trapped
        .iter()
        .filter(|l| l.contains("backtrace omitted") && l.contains("unreachable"))
        .count();
    assert_eq!((with_backtrace, without), (1, 2), "{trapped:#?}");
}

/// Kills the process when dropped.

#[tokio::test]
async fn a_stdout_nobody_reads_drops_log_lines_and_never_holds_requests() {
    // The gateway's stdout is a pipe this test never reads: once the pipe and the writer's
    // queue (1,000 lines) are full, lines must be dropped and counted, and requests served.
    let (public, admin) = (free_port(), free_port());
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{public}\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n\
         [logging]\nbuffer_lines = 1000\nmax_guest_messages = 100\n\
         [engine]\ncache_dir = {}\nmax_instances = 16\n\
         [[route]]\npath = \"/log\"\ncomponent = {}\n",
        toml_path(&shared_cache_dir()),
        toml_path(&guest("logger")),
    );
    let path = dir.path().join("wasmgate.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Killed(
        std::process::Command::new(env!("CARGO_BIN_EXE_wasmgate"))
            .args(["serve", path.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start wasmgate"),
    );
    let _unread = child.0.stdout.take();
    let client = http1();
    let started = std::time::Instant::now();
    loop {
        // Ready once the traffic listener is open (the admin port opens before it).
        let request = http::Request::get(format!("http://127.0.0.1:{admin}/readyz"))
            .body(empty())
            .unwrap();
        if let Ok(Ok(response)) =
            tokio::time::timeout(Duration::from_secs(1), client.request(request)).await
            && response.status() == http::StatusCode::OK
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "wasmgate did not start (or a port was taken)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 60 requests x 100 lines of ~170 bytes: 6,000 lines, far more than a 64 KiB pipe and
    // 1,000 queued lines hold.
    let started = std::time::Instant::now();
    for _ in 0..60 {
        let (status, _, _) = get(
            &client,
            &format!("http://127.0.0.1:{public}/log?repeat=0&stdout=100"),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "requests were held by the log output: {:?}",
        started.elapsed()
    );
    let (_, _, metrics) = get(&client, &format!("http://127.0.0.1:{admin}/metrics")).await;
    let dropped = metric_value(&metrics, "wasmgate_log_lines_dropped_total", &[]).unwrap();
    assert!(
        (1000.0..6000.0).contains(&dropped),
        "dropped {dropped} of 6,000 lines"
    );
}
