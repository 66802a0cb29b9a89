//! Traffic splitting end to end: a route whose `targets` are a component and an upstream, by
//! weight (the shares over 10,000 requests, the per-target metric), sticky by cookie (the
//! gateway sets it, the client stays) and by header, and the config's refusals.

mod common;

use common::*;
use http::{Request, StatusCode};
use std::collections::HashMap;

/// An upstream that answers `upstream` to everything.
async fn upstream_target() -> String {
    let addr = serve_http(|_| async { http::Response::new(server_text("upstream\n")) }).await;
    format!("[upstream.legacy]\ntargets = [\"http://{addr}\"]\n")
}

/// Which target answered: the hello component or the upstream.
fn who(text: &str) -> &'static str {
    match text {
        "Hello from wasmgate!\n" => "component",
        "upstream\n" => "upstream",
        _ => panic!("unexpected answer: {text:?}"),
    }
}

fn split_route(weights: (u32, u32), extra: &str) -> String {
    format!(
        "[[route]]\npath = \"/app\"\ntargets = [\n  {{ component = {}, weight = {}, name = \"v2\" }},\n  {{ upstream = \"legacy\", weight = {} }},\n]\n{extra}\n",
        toml_path(&guest("hello")),
        weights.0,
        weights.1,
    )
}

#[tokio::test]
async fn ten_thousand_requests_split_within_two_percent_of_the_weights() {
    let gw = Gateway::start(&format!(
        "{}{}",
        upstream_target().await,
        split_route((10, 90), "")
    ));
    let url = gw.url("/app");
    // Eight clients at once, 1,250 requests each.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move {
                let client = http1();
                let mut counts: HashMap<&'static str, u32> = HashMap::new();
                for _ in 0..1250 {
                    let (status, _, text) = get(&client, &url).await;
                    assert_eq!(status, StatusCode::OK, "{text}");
                    *counts.entry(who(&text)).or_default() += 1;
                }
                counts
            })
        })
        .collect();
    let mut counts: HashMap<&'static str, u32> = HashMap::new();
    for task in tasks {
        for (k, v) in task.await.unwrap() {
            *counts.entry(k).or_default() += v;
        }
    }
    let component = f64::from(counts.get("component").copied().unwrap_or(0));
    let upstream = f64::from(counts.get("upstream").copied().unwrap_or(0));
    assert_eq!(component + upstream, 10_000.0);
    assert!(
        (component / 10_000.0 - 0.10).abs() < 0.02,
        "the component got {component} of 10,000 (weight 10 of 100)"
    );

    // The metric counts each target under its name.
    let metrics = gw.metrics().await;
    let counted = |target: &str| {
        metric_value(
            &metrics,
            "wasmgate_split_requests_total",
            &[("route", "/app"), ("target", target)],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(counted("v2"), component, "{metrics}");
    assert_eq!(counted("upstream:legacy"), upstream, "{metrics}");
}

#[tokio::test]
async fn a_sticky_cookie_is_set_once_and_keeps_the_client_on_its_target() {
    let gw = Gateway::start(&format!(
        "{}{}",
        upstream_target().await,
        split_route(
            (50, 50),
            "sticky = { cookie = \"canary\", max_age = \"1h\" }"
        )
    ));
    let client = http1();
    let mut seen = HashMap::new();
    for _ in 0..40 {
        // A new client: the gateway makes up its cookie.
        let (status, headers, text) = get(&client, &gw.url("/app")).await;
        assert_eq!(status, StatusCode::OK);
        let set = headers["set-cookie"].to_str().unwrap().to_string();
        assert!(
            set.starts_with("canary=") && set.contains("Max-Age=3600") && set.contains("HttpOnly"),
            "{set}"
        );
        let cookie = set.split(';').next().unwrap().to_string();
        let first = who(&text);
        *seen.entry(first).or_insert(0) += 1;
        // The same client comes back with it: same target, and no new cookie.
        for _ in 0..5 {
            let request = Request::get(gw.url("/app"))
                .header("cookie", format!("theme=dark; {cookie}"))
                .body(empty())
                .unwrap();
            let (_, headers, text) = read(send(&client, request).await).await;
            assert_eq!(who(&text), first, "{cookie} moved");
            assert!(headers.get("set-cookie").is_none());
        }
    }
    // Forty clients at 50/50 land on both.
    assert_eq!(seen.len(), 2, "{seen:?}");
}

#[tokio::test]
async fn a_sticky_header_keeps_its_value_on_one_target() {
    let gw = Gateway::start(&format!(
        "{}{}",
        upstream_target().await,
        split_route((50, 50), "sticky = { header = \"x-user\" }")
    ));
    let client = http1();
    let mut targets = HashMap::new();
    for user in 0..30 {
        let mut answers = Vec::new();
        for _ in 0..4 {
            let request = Request::get(gw.url("/app"))
                .header("x-user", format!("user-{user}"))
                .body(empty())
                .unwrap();
            let (_, headers, text) = read(send(&client, request).await).await;
            assert!(headers.get("set-cookie").is_none());
            answers.push(who(&text));
        }
        answers.dedup();
        assert_eq!(answers.len(), 1, "user-{user} moved: {answers:?}");
        targets.insert(answers[0], ());
    }
    assert_eq!(
        targets.len(),
        2,
        "thirty users at 50/50 land on both targets"
    );
}

#[test]
fn the_config_refuses_splits_that_cannot_work() {
    let dir = tempfile::tempdir().unwrap();
    let hello = toml_path(&guest("hello"));
    let upstream = "[upstream.legacy]\ntargets = [\"http://127.0.0.1:9\"]\n";
    for (route, expected) in [
        (
            format!("component = {hello}\ntargets = [{{ upstream = \"legacy\", weight = 1 }}]"),
            "give one of `component`, `upstream` and `targets`",
        ),
        (
            "targets = [{ upstream = \"legacy\", weight = 0 }]".to_string(),
            "weights add up to 0",
        ),
        (
            format!(
                "targets = [{{ component = {hello}, weight = 1 }}, {{ component = {hello}, weight = 1 }}]"
            ),
            "two targets are named `hello.wasm`",
        ),
        (
            "targets = [{ upstream = \"nope\", weight = 1 }]".to_string(),
            "upstream `nope` is not defined",
        ),
        (
            format!("component = {hello}\nsticky = {{ cookie = \"c\" }}"),
            "sticky is for a route with `targets`",
        ),
        (
            "targets = [{ upstream = \"legacy\", weight = 1 }]\nsticky = { cookie = \"a b\" }"
                .to_string(),
            "not a valid cookie name",
        ),
        (
            "targets = [{ upstream = \"legacy\", weight = 1, component = \"x.wasm\" }]".to_string(),
            "has both `component` and `upstream`",
        ),
    ] {
        let config = format!("{upstream}[[route]]\npath = \"/\"\n{route}\n");
        let (ok, output) = check_config(dir.path(), &config);
        assert!(!ok, "accepted:\n{config}");
        assert!(output.contains(expected), "{config}\n---\n{output}");
    }
}
