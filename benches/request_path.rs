//! In-process benchmark of the gateway's own request path: what one request costs from the
//! moment hyper hands it over to the end of its response body, without sockets, a load
//! generator or the kernel in the way, so that a change's cost shows without load noise.
//!
//! Run with `cargo bench --bench request_path [-- WORD]` (after the guests are built). Three
//! scenarios, each `ITERATIONS` requests one after another on a single-threaded tokio runtime,
//! every request carrying what the listener gives a real one (its `ConnectionInfo`, a `Host`,
//! a user agent):
//!
//! - `no route`: the stages alone (guards, identity, route lookup, the 404 page, observe);
//! - `hello, fresh instance`: `guests/hello` in a new instance per request, the default;
//! - `hello, reused instance`: the same with `reuse`, so that what is left beside the guest's
//!   own call is the gateway's path.
//!
//! It runs with the server's allocator (mimalloc) and the load tests' log filter (`warn`, which
//! leaves out the access log; `RUST_LOG=info` puts it in, written nowhere). It prints the median
//! and mean per request. For stable comparisons between two builds count
//! instructions instead of time:
//! `BENCH_MAX_INSTANCES=1 valgrind --tool=callgrind target/release/deps/request_path-* reused`
//! (docs/perf.md): valgrind cannot reserve the address space of the default 16 pool slots
//! (`BENCH_ON_DEMAND=1` allocates instances on demand instead of from the pool).
//! Leave `RUST_BACKTRACE` unset: wasmtime captures a backtrace on every store drop when it is set.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use support::{ITERATIONS, WARMUP, empty, measure, micros};
use wasmgate::config::Config;
use wasmgate::connection_info::{ConnectionInfo, Scheme};
use wasmgate::gateway::Gateway;
use wasmgate::metrics::Metrics;
use wasmgate::runtime::loader::Process;

/// The server's allocator, so that allocation costs what it costs there.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    if std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0") {
        eprintln!("note: RUST_BACKTRACE is set; wasmtime will capture backtraces (slower)");
    }
    // The load tests' log filter (`RUST_LOG=warn`, which leaves the access log out) unless
    // `RUST_LOG` says otherwise, writing nowhere: spans and events cost what they cost in the
    // server (with no subscriber at all, `tracing` would forward every span to `log`).
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_ansi(false)
        .with_writer(std::io::sink)
        .init();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let hello = root.join("guests/target/wasm32-wasip2/release/hello.wasm");
    let config = format!(
        r#"
[engine]
cache_dir = {cache:?}
max_instances = {max_instances}
pooling = {pooling}

[[route]]
path = "/fresh"
component = {hello:?}

[[route]]
path = "/reused"
component = {hello:?}
reuse = {{ max_requests = 1000000, max_age = "1h", idle_timeout = "1h" }}
"#,
        cache = root.join("target/wasmgate-cache").display().to_string(),
        hello = hello.display().to_string(),
        pooling = std::env::var_os("BENCH_ON_DEMAND").is_none(),
        max_instances = std::env::var("BENCH_MAX_INSTANCES").unwrap_or_else(|_| "16".into()),
    );
    let config = Config::parse(&config, root.to_path_buf())?;
    let gateway = Gateway::new(Process::start(&config, Metrics::new())?);
    gateway.load(&config)?;

    let scenarios = [
        ("no route", "/nothing", 404),
        ("hello, fresh instance", "/fresh", 200),
        ("hello, reused instance", "/reused", 200),
    ];
    // `cargo bench --bench request_path -- WORD` runs only the scenarios whose name has WORD
    // (for profiling one of them); cargo itself passes `--bench`.
    let filter = std::env::args().skip(1).find(|arg| !arg.starts_with("--"));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let connection = Arc::new(ConnectionInfo {
        listener: Arc::from("default"),
        scheme: Scheme::Http,
        peer: SocketAddr::from(([127, 0, 0, 1], 40000)),
        client: SocketAddr::from(([127, 0, 0, 1], 40000)),
        tls: None,
        redirect: None,
    });
    println!(
        "{ITERATIONS} requests per scenario after {WARMUP} warm-up, one at a time, in process"
    );
    for (name, path, status) in scenarios {
        if filter
            .as_ref()
            .is_some_and(|word| !name.contains(word.as_str()))
        {
            continue;
        }
        let request = || {
            let mut request = http::Request::get(path)
                .header(http::header::HOST, "localhost:8080")
                .header(http::header::USER_AGENT, "request_path-bench/1")
                .header(http::header::ACCEPT, "*/*")
                .body(empty())?;
            request.extensions_mut().insert(connection.clone());
            Ok(request)
        };
        let (median, mean) =
            runtime.block_on(measure(&gateway, request, |got| got.as_u16() == status))?;
        println!(
            "{name:<24} median {:>7.2} us   mean {:>7.2} us",
            micros(median),
            micros(mean)
        );
    }
    Ok(())
}
