//! Components linked to components: `[component.NAME]` and a route's `links`, through the
//! `greet-http` and `greeter` example guests (`wit/greeter-demo/`).

mod common;

use common::*;
use http::StatusCode;

fn routes() -> String {
    format!(
        r#"
[component.greeter]
path = {greeter}

# Provides the greeter's interface by re-exporting it from the greeter: a link of a link.
[component.relay]
path = {relay}
links = {{ "local:greeter-demo/greet" = "greeter" }}

[[route]]
path = "/greet/..."
component = {greet_http}
links = {{ "local:greeter-demo/greet" = "greeter" }}
env = {{ GREETING = "Howdy" }}

[[route]]
host = "relayed.test"
path = "/greet/..."
component = {greet_http}
links = {{ "local:greeter-demo/greet" = "relay" }}
"#,
        greeter = toml_path(&guest("greeter")),
        greet_http = toml_path(&guest("greet-http")),
        relay = toml_path(&relay_component()),
    )
}

/// A text-format component that imports the greeter's interface and exports it unchanged.
fn relay_component() -> std::path::PathBuf {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/components/greet-relay.wat");
    assert!(path.exists(), "{} is missing", path.display());
    path
}

#[tokio::test]
async fn the_linked_greeter_answers_strings_records_results_and_resources() {
    let gw = Gateway::start(&routes());
    for client in [http1(), http2()] {
        let (status, _, body) = get(&client, &gw.url("/greet?name=Ada")).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "Howdy, Ada!\n"),
            "a string crosses the link, and the greeter sees the route's env"
        );

        let (status, _, body) = get(&client, &gw.url("/greet/all?names=Ada,Grace%20Hopper")).await;
        assert_eq!(
            (status, body.as_str()),
            (
                StatusCode::OK,
                "Howdy, Ada! (11 chars)\nHowdy, Grace Hopper! (20 chars)\n"
            ),
            "a list of strings goes in, a list of records comes back"
        );

        let (status, _, body) = get(&client, &gw.url("/greet/checked?name=")).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::BAD_REQUEST, "refused: the name is empty\n"),
            "the error case of a result"
        );
        let (status, _, body) = get(&client, &gw.url("/greet/checked?name=Lin")).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "Howdy, Lin!\n"));

        let (status, _, body) =
            get(&client, &gw.url("/greet/counter?names=a,b,c&prefix=%3E%20")).await;
        assert_eq!(
            (status, body.as_str()),
            (
                StatusCode::OK,
                "> 1. Howdy, a!\n> 2. Howdy, b!\n> 3. Howdy, c!\ncount: 3\n"
            ),
            "a resource the greeter owns, used through its handle"
        );
    }
}

#[tokio::test]
async fn every_request_gets_fresh_linked_instances() {
    let gw = Gateway::start(&routes());
    let (_, _, listed) = get(&http1(), &gw.admin_url("/routes")).await;
    assert!(
        listed.contains("/greet/... greet_http.wasm+greeter\n")
            && listed.contains("greet_http.wasm+relay\n"),
        "the admin route list names the linked components: {listed}"
    );
    for _ in 0..3 {
        let (status, _, body) = get(&http1(), &gw.url("/greet/counter?names=x")).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::OK, "1. Howdy, x!\ncount: 1\n"),
            "no state survives from one request's greeter to the next"
        );
    }
}

#[tokio::test]
async fn a_link_through_another_named_component_works() {
    let gw = Gateway::start(&routes());
    let request = http::Request::get(gw.url("/greet?name=Bo"))
        .header("host", "relayed.test")
        .body(empty())
        .unwrap();
    let (status, _, body) = read(send(&http1(), request).await).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, "Hello, Bo!\n"),
        "greet-http -> relay -> greeter, with this route's (empty) env"
    );
}

#[tokio::test]
async fn a_trap_in_the_linked_component_fails_only_that_request() {
    let gw = Gateway::start(&routes());
    let (status, headers, body) = get(&http1(), &gw.url("/greet?name=!trap")).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let request_id = headers["x-request-id"].to_str().unwrap();
    assert!(body.contains(request_id), "{body}");
    assert!(
        !body.contains("greeter was asked to trap"),
        "guest details stay in the log: {body}"
    );
    gw.wait_for_output(std::time::Duration::from_secs(5), |line| {
        line.contains(request_id)
            && line.contains("greeter was asked to trap")
            && line.contains("component=greet_http.wasm+greeter")
    });

    let (status, _, body) = get(&http1(), &gw.url("/greet?name=again")).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "Howdy, again!\n"));
}

/// `wasmgate check` on `routes` plus `[component.greeter]`, which must fail; returns the output.
fn check_fails(routes: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "[engine]\ncache_dir = {}\n\n[component.greeter]\npath = {}\n\n[component.hello]\npath = {}\n\n{routes}",
        toml_path(&shared_cache_dir()),
        toml_path(&guest("greeter")),
        toml_path(&guest("hello")),
    );
    let (ok, output) = check_config(dir.path(), &config);
    assert!(!ok, "the config must be refused:\n{output}");
    output
}

#[test]
fn an_import_nothing_supplies_is_named_at_load() {
    let output = check_fails(&format!(
        "[[route]]\npath = \"/greet/...\"\ncomponent = {}\n",
        toml_path(&guest("greet-http"))
    ));
    assert!(
        output.contains("route 1 (/greet/...)")
            && output.contains(
                "it imports `local:greeter-demo/greet`, which neither the gateway nor a link supplies"
            )
            && output.contains("links = { \"local:greeter-demo/greet\" = \"NAME\" }"),
        "{output}"
    );
}

#[test]
fn an_import_of_a_linked_component_that_nothing_supplies_names_that_component() {
    let output = check_fails(&format!(
        "[component.relay]\npath = {}\n\n[[route]]\npath = \"/greet/...\"\ncomponent = {}\nlinks = {{ \"local:greeter-demo/greet\" = \"relay\" }}\n",
        toml_path(&relay_component()),
        toml_path(&guest("greet-http"))
    ));
    assert!(
        output.contains(
            "[component.relay] imports `local:greeter-demo/greet`, which neither the gateway nor a link supplies"
        ) && output.contains("= \"NAME\" }` to [component.relay])"),
        "the relay, not the route's component, lacks the link:\n{output}"
    );
}

#[test]
fn a_link_to_a_component_without_the_export_is_refused() {
    let output = check_fails(&format!(
        "[[route]]\npath = \"/greet/...\"\ncomponent = {}\nlinks = {{ \"local:greeter-demo/greet\" = \"hello\" }}\n",
        toml_path(&guest("greet-http"))
    ));
    assert!(
        output.contains("links `local:greeter-demo/greet` to component `hello`")
            && output.contains("which does not export `local:greeter-demo/greet`")
            && output.contains("wasi:http/incoming-handler@0.2."),
        "names the interface and lists what `hello` does export:\n{output}"
    );
}

#[test]
fn a_link_the_component_does_not_import_is_refused() {
    let output = check_fails(&format!(
        "[[route]]\npath = \"/\"\ncomponent = {}\nlinks = {{ \"local:greeter-demo/greet\" = \"greeter\" }}\n",
        toml_path(&guest("hello"))
    ));
    assert!(
        output.contains(
            "cannot be linked to `local:greeter-demo/greet`: it imports no `local:greeter-demo/greet`"
        ),
        "{output}"
    );
}

#[test]
fn a_provider_whose_types_differ_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong-greeter.wat");
    // Exports the interface name with a `greet` that takes a number.
    std::fs::write(
        &wrong,
        r#"(component
  (core module $m
    (func (export "greet") (param i32) (result i32) local.get 0))
  (core instance $i (instantiate $m))
  (func $greet (param "name" u32) (result u32) (canon lift (core func $i "greet")))
  (instance $api (export "greet" (func $greet)))
  (export "local:greeter-demo/greet" (instance $api)))
"#,
    )
    .unwrap();
    let output = check_fails(&format!(
        "[component.wrong]\npath = {}\n\n[[route]]\npath = \"/greet/...\"\ncomponent = {}\nlinks = {{ \"local:greeter-demo/greet\" = \"wrong\" }}\n",
        toml_path(&wrong),
        toml_path(&guest("greet-http"))
    ));
    assert!(
        output.contains("imports `local:greeter-demo/greet` with types that do not match")
            && output.contains("component `wrong`"),
        "{output}"
    );
}

#[test]
fn links_in_a_cycle_are_refused() {
    let output = check_fails(
        "[component.a]\npath = \"a.wasm\"\nlinks = { \"local:x/b\" = \"b\" }\n\n[component.b]\npath = \"b.wasm\"\nlinks = { \"local:x/a\" = \"a\" }\n",
    );
    assert!(
        output.contains("components link in a cycle (a -> b -> a)"),
        "{output}"
    );
}
