//! A route's `reuse` through the real binary, with the `visits` guest, which counts its requests
//! in its own memory: what a reused instance keeps, when it is retired, and that an instance
//! which ended a request badly (trapped, or left the response open) never serves another.

mod common;

use common::*;
use http::StatusCode;
use std::time::Duration;

fn routes(reuse: &str) -> String {
    format!(
        r#"
[[route]]
path = "/fresh"
component = {visits}

[[route]]
path = "/kept"
component = {visits}
reuse = {reuse}

[[route]]
path = "/other"
component = {visits}
"#,
        visits = toml_path(&guest("visits")),
    )
}

async fn visit(client: &HttpClient, gw: &Gateway, path: &str) -> String {
    let (status, _, body) = get(client, &gw.url(path)).await;
    assert_eq!(status, StatusCode::OK, "{path}: {body}");
    body
}

#[tokio::test]
async fn a_reused_instance_keeps_its_memory_until_it_has_served_max_requests() {
    let gw = Gateway::start(&routes("{ max_requests = 3 }"));
    let client = http1();
    let mut kept = Vec::new();
    for _ in 0..7 {
        kept.push(visit(&client, &gw, "/kept").await);
        assert_eq!(visit(&client, &gw, "/fresh").await, "visit 1\n");
    }
    // Three requests per instance, then a fresh one.
    let expected: Vec<String> = [1, 2, 3, 1, 2, 3, 1]
        .iter()
        .map(|n| format!("visit {n}\n"))
        .collect();
    assert_eq!(kept, expected);

    let metrics = gw.metrics().await;
    let reuses = |route| {
        metric_value(
            &metrics,
            "wasmgate_instance_reuses_total",
            &[("route", route)],
        )
    };
    assert_eq!(reuses("/kept"), Some(4.0), "{metrics}");
    assert_eq!(reuses("/fresh"), Some(0.0), "{metrics}");
    let idle = metric_value(&metrics, "wasmgate_instances_idle", &[("route", "/kept")]);
    assert_eq!(
        idle,
        Some(1.0),
        "the third instance waits for its second request"
    );
    // Only fresh instances are instantiated: 3 on /kept, 7 on /fresh.
    let instantiated = |route| {
        metric_value(
            &metrics,
            "wasmgate_instantiation_duration_seconds_count",
            &[("route", route)],
        )
    };
    assert_eq!(instantiated("/kept"), Some(3.0), "{metrics}");
    assert_eq!(instantiated("/fresh"), Some(7.0), "{metrics}");
}

#[tokio::test]
async fn an_instance_that_ended_a_request_badly_is_never_reused() {
    let gw = Gateway::start(&routes("{ max_requests = 100 }"));
    let client = http1();
    assert_eq!(visit(&client, &gw, "/kept").await, "visit 1\n");
    assert_eq!(visit(&client, &gw, "/kept").await, "visit 2\n");

    // A trap: 500, and the instance is gone.
    let (status, _, _) = get(&client, &gw.url("/kept?trap=1")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(visit(&client, &gw, "/kept").await, "visit 1\n");

    // A response body kept open past the handler's return: the client gets a 500 (when the
    // guest returned before the headers went out) or its response cut off after what was
    // written, never a truncated body passed off as complete, nor one held open until the
    // instance retires; with reuse or without.
    assert_not_passed_off_as_complete(&gw, "/fresh?leak=body").await;
    assert_not_passed_off_as_complete(&gw, "/kept?leak=body").await;
    let client = http1();
    assert_eq!(visit(&client, &gw, "/kept").await, "visit 1\n");

    // A response-outparam kept unset: 500 at once, not a wait for the instance to go.
    let (status, _, _) = tokio::time::timeout(
        Duration::from_secs(10),
        get(&client, &gw.url("/kept?leak=outparam")),
    )
    .await
    .expect("answered although the guest kept its response-outparam");
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(visit(&client, &gw, "/kept").await, "visit 1\n");
    assert_eq!(visit(&client, &gw, "/kept").await, "visit 2\n");

    // The request kept in a global: the response is whole, but the instance is not reused.
    assert_eq!(visit(&client, &gw, "/kept?leak=request").await, "visit 3\n");
    assert_eq!(visit(&client, &gw, "/kept").await, "visit 1\n");
}

async fn assert_not_passed_off_as_complete(gw: &Gateway, path: &str) {
    let client = http1();
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        send(
            &client,
            http::Request::get(gw.url(path)).body(empty()).unwrap(),
        ),
    )
    .await
    .expect("answered although the guest kept its body");
    if response.status() == StatusCode::OK {
        let ended = tokio::time::timeout(
            Duration::from_secs(10),
            http_body_util::BodyExt::collect(response.into_body()),
        )
        .await
        .expect("the response ends although the guest kept its body");
        assert!(
            ended.is_err(),
            "{path}: an unfinished body is cut off, not completed"
        );
    } else {
        assert_eq!(
            response.status(),
            StatusCode::INTERNAL_SERVER_ERROR,
            "{path}"
        );
    }
}

#[tokio::test]
async fn a_request_the_guest_never_saw_leaves_the_instance_idle() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let gw = Gateway::start(&routes("{ max_requests = 100 }"));
    let client = http1();
    assert_eq!(visit(&client, &gw, "/kept").await, "visit 1\n");
    // HTTP/1.0 without `Host`: no authority to give the guest, so 400 before it runs.
    let mut stream = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"GET /kept HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
        .await
        .expect("answered")
        .unwrap();
    assert!(answer.starts_with("HTTP/1.0 400"), "{answer}");
    // The instance taken for it went back untouched.
    assert_eq!(visit(&client, &gw, "/kept").await, "visit 2\n");
}

#[tokio::test]
async fn idle_instances_are_dropped_after_idle_timeout() {
    let gw = Gateway::start(&routes("{ idle_timeout = \"200ms\" }"));
    let client = http1();
    assert_eq!(visit(&client, &gw, "/kept").await, "visit 1\n");
    assert_eq!(visit(&client, &gw, "/kept").await, "visit 2\n");
    let idle =
        |metrics: &str| metric_value(metrics, "wasmgate_instances_idle", &[("route", "/kept")]);
    assert_eq!(idle(&gw.metrics().await), Some(1.0));
    // The sweeper runs every 100 ms: the instance is gone well before a request asks for it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while idle(&gw.metrics().await) != Some(0.0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the idle instance was never dropped"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(visit(&client, &gw, "/kept").await, "visit 1\n");
}

#[tokio::test]
async fn idle_instances_give_their_slots_to_other_routes() {
    let gw = Gateway::start_with(
        &routes("{ max_requests = 100 }"),
        Sections {
            engine: format!(
                "cache_dir = {}\nmax_instances = 2\n",
                toml_path(&shared_cache_dir())
            ),
            ..Sections::default()
        },
    );
    // Two requests at once leave two idle instances on /kept: every slot of the process.
    let (first, second, url) = (http1(), http1(), gw.url("/kept?delay_ms=300"));
    let (a, b) = tokio::join!(get(&first, &url), get(&second, &url));
    assert_eq!((a.0, b.0), (StatusCode::OK, StatusCode::OK));
    let idle =
        |metrics: &str| metric_value(metrics, "wasmgate_instances_idle", &[("route", "/kept")]);
    assert_eq!(idle(&gw.metrics().await), Some(2.0));

    // Another route still gets an instance: the longest-idle one of /kept is dropped for it.
    let client = http1();
    assert_eq!(visit(&client, &gw, "/other").await, "visit 1\n");
    assert_eq!(idle(&gw.metrics().await), Some(1.0));
    // And the one left still serves /kept, with what it remembers.
    assert_eq!(visit(&client, &gw, "/kept").await, "visit 2\n");
}

#[tokio::test]
async fn log_lines_of_a_reused_instance_carry_each_request_s_id_and_budget() {
    let gw = Gateway::start_with(
        &format!("[logging]\nmax_guest_messages = 2\n{}", routes("{}")),
        Sections::default(),
    );
    let client = http1();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (status, headers, _) = get(&client, &gw.url("/kept?print=3")).await;
        assert_eq!(status, StatusCode::OK);
        ids.push(headers["x-request-id"].to_str().unwrap().to_string());
    }
    gw.wait_for_output(Duration::from_secs(10), |line| {
        line.contains("line 2 of visit 2")
    });
    // The first request's dropped line is reported under its id when the second one starts.
    let report = gw.wait_for_output(Duration::from_secs(10), |line| {
        line.contains("used up its log budget") && line.contains(ids[0].as_str())
    });
    assert!(report.contains("1 lines dropped"), "{report}");
    let output = gw.output();
    for (visit, id) in ids.iter().enumerate().map(|(i, id)| (i + 1, id)) {
        let line = output
            .lines()
            .find(|line| line.contains(&format!("line 1 of visit {visit}")))
            .unwrap_or_else(|| panic!("visit {visit} logged: {output}"));
        assert!(line.contains(id.as_str()), "{id} in {line}");
        assert!(
            !output.contains(&format!("line 3 of visit {visit}")),
            "each request has a budget of 2 lines: {output}"
        );
    }
}

#[test]
fn reuse_settings_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let visits = toml_path(&guest("visits"));
    for (route, expected) in [
        (
            format!("path = \"/\"\ncomponent = {visits}\nreuse = {{ max_requests = 1 }}"),
            "reuse.max_requests must be at least 2",
        ),
        (
            format!("path = \"/\"\ncomponent = {visits}\nreuse = {{ max_age = \"soon\" }}"),
            "is not a duration",
        ),
        (
            "path = \"/\"\nupstream = \"u\"\nreuse = {}\n[upstream.u]\ntargets = [\"http://127.0.0.1:1\"]"
                .to_string(),
            "`reuse` is for component routes",
        ),
    ] {
        let (ok, output) = check_config(dir.path(), &format!("[[route]]\n{route}\n"));
        assert!(!ok, "{route}");
        assert!(output.contains(expected), "{route}: {output}");
    }
}
