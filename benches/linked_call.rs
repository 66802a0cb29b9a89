//! In-process benchmark: what a request costs on the hello route and on routes linked to another
//! component (docs/linking.md), without sockets or a load generator in the way.
//!
//! Run with `cargo bench --bench linked_call [-- WORD]` (after the guests are built; building wasmgate builds
//! them). Each scenario serves `ITERATIONS` requests one after another through the gateway's
//! request path (routing, admission, a fresh instance per request, the response body read to the
//! end), on a single-threaded tokio runtime, and prints the median and mean time per request.
//! Set `RUST_BACKTRACE` unset: wasmtime captures a backtrace on every store drop when it is set.

mod support;

use std::path::Path;
use support::{ITERATIONS, WARMUP, empty, measure, micros};
use wasmgate::config::Config;
use wasmgate::gateway::Gateway;
use wasmgate::metrics::Metrics;
use wasmgate::runtime::loader::Process;

fn main() -> anyhow::Result<()> {
    if std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0") {
        eprintln!("note: RUST_BACKTRACE is set; wasmtime will capture backtraces (slower)");
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let release = root.join("guests/target/wasm32-wasip2/release");
    let config = format!(
        r#"
[engine]
cache_dir = {cache:?}
max_instances = 16

[component.greeter]
path = {greeter:?}

[[route]]
path = "/hello"
component = {hello:?}

[[route]]
path = "/greet/..."
component = {greet_http:?}
links = {{ "local:greeter-demo/greet" = "greeter" }}
"#,
        cache = root.join("target/wasmgate-cache").display().to_string(),
        greeter = release.join("greeter.wasm").display().to_string(),
        hello = release.join("hello.wasm").display().to_string(),
        greet_http = release.join("greet_http.wasm").display().to_string(),
    );
    let config = Config::parse(&config, root.to_path_buf())?;
    let gateway = Gateway::new(Process::start(&config, Metrics::new())?);
    gateway.load(&config)?;

    let names: Vec<String> = (0..100).map(|i| format!("n{i}")).collect();
    let counter = format!("/greet/counter?names={}", names.join(","));
    let scenarios = [
        ("hello", "/hello"),
        ("linked pair, no call", "/greet/local"),
        ("one linked call", "/greet?name=Ada"),
        ("resource + 101 linked calls", counter.as_str()),
    ];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    println!(
        "{} requests per scenario after {} warm-up, one at a time, in process",
        ITERATIONS, WARMUP
    );
    // `cargo bench --bench linked_call -- WORD` runs only the scenarios whose name has WORD
    // (for profiling one of them); cargo itself passes `--bench`.
    let filter = std::env::args().skip(1).find(|arg| !arg.starts_with("--"));
    if let Some(word) = &filter {
        for (name, path) in scenarios
            .iter()
            .filter(|(name, _)| name.contains(word.as_str()))
        {
            let (median, mean) = runtime.block_on(measure(
                &gateway,
                || Ok(http::Request::get(format!("http://localhost{path}")).body(empty())?),
                |status| status.is_success(),
            ))?;
            println!(
                "{name:<28} median {:>7.2} us   mean {:>7.2} us",
                micros(median),
                micros(mean)
            );
        }
        return Ok(());
    }
    let mut medians = Vec::new();
    for (name, path) in scenarios {
        let (median, mean) = runtime.block_on(measure(
            &gateway,
            || Ok(http::Request::get(format!("http://localhost{path}")).body(empty())?),
            |status| status.is_success(),
        ))?;
        println!(
            "{name:<28} median {:>7.2} us   mean {:>7.2} us",
            micros(median),
            micros(mean)
        );
        medians.push(micros(median));
    }
    println!(
        "over hello (medians): linked pair {:+.2} us; one call {:+.2} us more; 101 calls {:+.2} us \
         more ({:.2} us per call)",
        medians[1] - medians[0],
        medians[2] - medians[1],
        medians[3] - medians[1],
        (medians[3] - medians[1]) / 101.0
    );
    Ok(())
}
