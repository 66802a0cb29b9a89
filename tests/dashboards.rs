//! The Grafana dashboard (`deploy/grafana/wasmgate.json`) and the alert rules
//! (`deploy/prometheus/alerts.yml`) query only metrics a running gateway exports: a gateway with
//! every kind of route serves traffic that makes each series appear, and every metric name in a
//! panel's or a rule's expression must be in its `/metrics`.

mod common;

use common::tls::{CertOptions, Pki, fresh_serial};
use common::*;
use http::{Method, Request, StatusCode};
use std::collections::BTreeSet;
use std::io::{Read, Write};

/// The metric names in a PromQL expression: identifiers that start like ours.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = ["http_server_", "wasmgate_"]
        .iter()
        .filter_map(|prefix| rest.find(prefix))
        .min()
    {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

fn dashboard_names() -> BTreeSet<String> {
    let text = include_str!("../deploy/grafana/wasmgate.json");
    let dashboard: serde_json::Value = serde_json::from_str(text).expect("the dashboard is JSON");
    let mut names = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            names.extend(metric_names(target["expr"].as_str().expect("expr")));
        }
    }
    for variable in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        if let Some(query) = variable["query"].as_str() {
            names.extend(metric_names(query));
        }
    }
    names
}

fn alert_names() -> BTreeSet<String> {
    let text = include_str!("../deploy/prometheus/alerts.yml");
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .flat_map(metric_names)
        .collect()
}

#[tokio::test]
async fn every_metric_the_dashboard_and_the_alerts_query_is_exported() {
    let upstream = serve_http(|_| async { http::Response::new(server_text("upstream\n")) }).await;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "dash");
    let (cert, key) = pki.server_cert(
        "server",
        &["localhost"],
        CertOptions {
            serial: fresh_serial(),
            ..Default::default()
        },
    );
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[engine]\n\
         cache_dir = {cache}\nmax_instances = 32\n\n\
         [[listener]]\nname = \"plain\"\naddress = \"127.0.0.1:0\"\n\
         [[listener]]\nname = \"tls\"\naddress = \"127.0.0.1:0\"\ntls = {{ cert = {cert}, key = {key} }}\n\n\
         [keyvalue.kv]\nbackend = \"memory\"\n[blobstore.files]\nbackend = \"memory\"\n\n\
         [upstream.api]\ntargets = [\"http://{upstream}\"]\n\n\
         [[route]]\npath = \"/hello\"\ncomponent = {hello}\n\
         [[route]]\npath = \"/trap\"\ncomponent = {trap}\n\
         [[route]]\npath = \"/one\"\ncomponent = {streaming}\nmax_concurrency = 1\nqueue_size = 0\n\
         [[route]]\npath = \"/count/...\"\ncomponent = {counter}\nkeyvalue = [\"kv\"]\nenv = {{ KV_STORE = \"kv\" }}\n\
         [[route]]\npath = \"/files/...\"\ncomponent = {files}\nblobstore = \"files\"\n\
         [[route]]\npath = \"/api\"\nupstream = \"api\"\n",
        cache = toml_path(&shared_cache_dir()),
        cert = toml_path(&cert),
        key = toml_path(&key),
        hello = toml_path(&guest("hello")),
        trap = toml_path(&guest("trap")),
        streaming = toml_path(&guest("streaming")),
        counter = toml_path(&guest("kv-counter")),
        files = toml_path(&guest("blob-files")),
    );
    let gw = Gateway::start_in(dir, &config);
    // A connection that the gateway closes, so the closed-connections series exists.
    let mut closing = std::net::TcpStream::connect(gw.listener("plain")).unwrap();
    closing
        .write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    closing.read_to_end(&mut Vec::new()).unwrap();
    let client = http1();
    let url = |path: &str| format!("http://{}{path}", gw.listener("plain"));
    assert_eq!(get(&client, &url("/hello")).await.0, StatusCode::OK);
    assert_eq!(
        get(&client, &url("/trap")).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(get(&client, &url("/count/x")).await.0, StatusCode::OK);
    assert_eq!(get(&client, &url("/api")).await.0, StatusCode::OK);
    let put = Request::builder()
        .method(Method::PUT)
        .uri(url("/files/c/x"))
        .body(body("blob"))
        .unwrap();
    assert_eq!(read(send(&client, put).await).await.0, StatusCode::CREATED);
    assert_eq!(get(&client, &url("/files/c/x")).await.0, StatusCode::OK);
    // One request holds /one; the next is turned away.
    let holder = send(
        &client,
        Request::get(url("/one?chunks=2&delay_ms=300"))
            .body(empty())
            .unwrap(),
    )
    .await;
    assert_eq!(
        get(&client, &url("/one")).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let _ = read(holder).await;
    let reload = Request::post(gw.admin_url("/reload"))
        .body(empty())
        .unwrap();
    assert_eq!(read(send(&client, reload).await).await.0, StatusCode::OK);

    let metrics = gw.metrics().await;
    let exported: BTreeSet<&str> = metrics
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split(['{', ' ']).next())
        .collect();
    let queried: BTreeSet<String> = dashboard_names().into_iter().chain(alert_names()).collect();
    assert!(queried.len() >= 15, "{queried:?}");
    let missing: Vec<&String> = queried
        .iter()
        .filter(|name| !exported.contains(name.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "queried but not exported: {missing:?}\n{metrics}"
    );
}

#[test]
fn metric_names_are_found_in_expressions() {
    let names = metric_names(
        "histogram_quantile(0.99, sum by (le) (rate(http_server_request_duration_seconds_bucket[5m]))) / wasmgate_x_total",
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "http_server_request_duration_seconds_bucket",
            "wasmgate_x_total"
        ]
    );
}
