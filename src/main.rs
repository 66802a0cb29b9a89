//! The `wasmgate` command line: `serve` and `check`.

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use wasmgate::config::Config;
use wasmgate::gateway::Gateway;
use wasmgate::metrics::Metrics;
use wasmgate::reload::SetLogLevel;
use wasmgate::runtime::loader::Process;

/// mimalloc for every allocation of the process (Cargo.toml says why).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An edge HTTP gateway that serves WebAssembly components (wasi:http, WASI 0.2 and 0.3).
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stdout; overrides `[logging] format`.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the routes of a config file until SIGTERM or SIGINT.
    ///
    /// Compiles every component (or loads it from the compile cache), then listens on its
    /// listeners (`[[listener]]`, or `[server] listen`) for traffic and on `[admin] listen` for
    /// /livez, /readyz and /metrics.
    Serve {
        /// The config file.
        #[arg(default_value = "config/wasmgate.toml")]
        config: PathBuf,
        /// Listen here instead of `[server] listen` (the listener used when the config has no
        /// `[[listener]]` tables).
        #[arg(long)]
        listen: Option<String>,
        /// Serve the admin endpoints here instead of `[admin] listen`.
        #[arg(long)]
        admin_listen: Option<String>,
    },
    /// Validate a config file without serving: parse it, load and type-check every component.
    ///
    /// Exits non-zero with a message naming the route, the file and the problem on any error.
    /// Also fills the compile cache, so a following `serve` starts fast. Lists the routes and each
    /// component's memory footprint, with the route `pool` to try for an interpreter's snapshot.
    Check {
        /// The config file.
        config: PathBuf,
    },
    /// Ask a running gateway to reload its config file, and print the outcome.
    ///
    /// Sends `POST /reload` to the gateway's admin port. Exits non-zero if the new config was
    /// refused (the gateway keeps serving the old one) or the gateway cannot be reached.
    Reload {
        /// The gateway's admin address (`[admin] listen`).
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin: std::net::SocketAddr,
    },
    /// Ask a running gateway whether it is ready (`GET /readyz` on its admin port): for
    /// container health checks in images without curl.
    ///
    /// Exits zero when the gateway answers 200, non-zero otherwise (not ready, draining, or not
    /// reachable within two seconds).
    Health {
        /// The gateway's admin address (`[admin] listen`). Default: `WASMGATE_ADMIN__LISTEN`
        /// if the environment sets it (an unspecified address such as 0.0.0.0 is asked on
        /// 127.0.0.1), else 127.0.0.1:9090.
        #[arg(long)]
        admin: Option<std::net::SocketAddr>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve {
            config,
            listen,
            admin_listen,
        } => {
            wasmgate::config::overrides::set_flags(wasmgate::config::overrides::flags(
                listen.as_deref(),
                admin_listen.as_deref(),
            ));
            serve(config, cli.log_format)
        }
        Command::Check { config } => check(config, cli.log_format),
        Command::Reload { admin } => reload(admin),
        Command::Health { admin } => health(admin),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(path: PathBuf, format: Option<LogFormat>) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    // Held until `serve` returns: dropping it writes out the lines still queued.
    let (_log_writer, set_log_level) = init_logging(&config, format, Output::NonBlocking);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(wasmgate::server::run(config, path, set_log_level))
}

fn reload(admin: std::net::SocketAddr) -> anyhow::Result<()> {
    use http_body_util::BodyExt;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let (status, text) = runtime.block_on(async {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<bytes::Bytes>>();
        let request = http::Request::post(format!("http://{admin}/reload"))
            .body(http_body_util::Empty::new())
            .context("cannot build the request")?;
        let response = client
            .request(request)
            .await
            .with_context(|| format!("cannot reach the gateway's admin port at {admin}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .context("the gateway's answer broke off")?
            .to_bytes();
        anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
    })?;
    print!("{text}");
    anyhow::ensure!(status.is_success(), "the reload was not applied ({status})");
    Ok(())
}

/// Where `health` asks: the flag, else the admin address the environment gives the gateway.
fn health_address(flag: Option<std::net::SocketAddr>) -> anyhow::Result<std::net::SocketAddr> {
    if let Some(admin) = flag {
        return Ok(admin);
    }
    let Ok(listen) = std::env::var("WASMGATE_ADMIN__LISTEN") else {
        return Ok(std::net::SocketAddr::from(([127, 0, 0, 1], 9090)));
    };
    let mut admin: std::net::SocketAddr = listen
        .parse()
        .with_context(|| format!("WASMGATE_ADMIN__LISTEN `{listen}` is not an address"))?;
    if admin.ip().is_unspecified() {
        admin.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    Ok(admin)
}

fn health(admin: Option<std::net::SocketAddr>) -> anyhow::Result<()> {
    let admin = health_address(admin)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let status = runtime.block_on(async {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Empty<bytes::Bytes>>();
        let request = http::Request::get(format!("http://{admin}/readyz"))
            .body(http_body_util::Empty::new())
            .context("cannot build the request")?;
        let response =
            tokio::time::timeout(std::time::Duration::from_secs(2), client.request(request))
                .await
                .with_context(|| {
                    format!("the gateway's admin port at {admin} did not answer within 2s")
                })?
                .with_context(|| format!("cannot reach the gateway's admin port at {admin}"))?;
        anyhow::Ok(response.status())
    })?;
    anyhow::ensure!(status.is_success(), "not ready ({status})");
    println!("ready");
    Ok(())
}

fn check(path: PathBuf, format: Option<LogFormat>) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    let _log_writer = init_logging(&config, format, Output::Blocking);
    wasmgate::tls::TlsListeners::check(&config)?;
    let gateway = Gateway::new(Process::for_check(&config, Metrics::new())?);
    let generation = gateway.load(&config)?;
    println!(
        "{}: OK, {} routes, {} components, {} listeners",
        path.display(),
        config.routes.len(),
        generation.components.len(),
        config.listeners().len()
    );
    for line in generation.route_lines() {
        println!("  {line}");
    }
    println!(
        "memory footprints (what instances start with; docs/config.md, \"Pool settings per route\"):"
    );
    for (path, _) in &generation.components {
        match wasmgate::runtime::footprint::Footprint::read(path) {
            Ok(footprint) => {
                let suggestion = footprint
                    .suggested_pool(&config.engine)
                    .map(|pool| format!("; for its routes try {pool}"))
                    .unwrap_or_default();
                println!("  {}: {footprint}{suggestion}", path.display());
            }
            Err(error) => println!("  {}: {error:#}", path.display()),
        }
    }
    Ok(())
}

/// The crates that compile wasm. At debug or trace level they log every function they compile,
/// which makes compiling a component take a minute instead of a fraction of a second.
const COMPILER_TARGETS: [&str; 5] = [
    "cranelift_codegen",
    "cranelift_frontend",
    "regalloc2",
    "wasmtime_cranelift",
    "wasmtime_environ",
];

/// `directives` with the compiler crates held at `warn`, unless `directives` names one of them.
fn quiet_compiler(directives: &str) -> String {
    if COMPILER_TARGETS.iter().any(|t| directives.contains(t)) {
        return directives.to_string();
    }
    let mut filter = directives.to_string();
    for target in COMPILER_TARGETS {
        filter.push_str(&format!(",{target}=warn"));
    }
    filter
}

/// The crates whose generated `wasi` bindings log every host call of every guest, with its
/// arguments (a guest's writes included), at trace level: 6 lines per `println!`, outside the
/// guest's log budget.
const BINDING_TARGETS: [&str; 2] = ["wasmtime_wasi", "wasmtime_wasi_http"];

/// `directives` with the binding crates held at `debug`, unless `directives` names one of them.
fn quiet_bindings(directives: &str) -> String {
    if BINDING_TARGETS.iter().any(|t| directives.contains(t)) {
        return directives.to_string();
    }
    let mut filter = directives.to_string();
    for target in BINDING_TARGETS {
        filter.push_str(&format!(",{target}=debug"));
    }
    filter
}

/// How log lines reach stdout.
#[derive(Clone, Copy)]
enum Output {
    /// Written by the thread that logs: for `check`, which prints its own lines in between.
    Blocking,
    /// Queued for a writer thread of their own (bounded by `[logging] buffer_lines`, dropped
    /// and counted when full), so a slow stdout never holds a worker thread.
    NonBlocking,
}

/// Logs to stdout, in the format the CLI or `[logging]` asks for, filtered by `RUST_LOG` or else
/// `[logging] level`. The text format escapes control characters in field values, so that a
/// guest's text cannot forge log lines. Returns the writer thread's guard, if there is one.
fn init_logging(
    config: &Config,
    format: Option<LogFormat>,
    output: Output,
) -> (
    Option<tracing_appender::non_blocking::WorkerGuard>,
    SetLogLevel,
) {
    use wasmgate::capabilities::logging::{EscapedFields, non_blocking_stdout};
    let format = format.unwrap_or(match config.logging.format {
        wasmgate::config::LogFormat::Text => LogFormat::Text,
        wasmgate::config::LogFormat::Json => LogFormat::Json,
    });
    let rust_log = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    let from_env = rust_log.is_some();
    let directives = rust_log.unwrap_or_else(|| config.logging.level.clone());
    let filter =
        log_filter(&directives).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    let (writer, guard) = match output {
        Output::Blocking => (
            tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stdout),
            None,
        ),
        Output::NonBlocking => {
            let (writer, guard) = non_blocking_stdout(config.logging.buffer_lines);
            (
                tracing_subscriber::fmt::writer::BoxMakeWriter::new(writer),
                Some(guard),
            )
        }
    };
    let builder = builder.with_writer(writer);
    // The filter can be replaced while running: a config reload applies a new `[logging] level`
    // unless RUST_LOG set it.
    macro_rules! init_reloadable {
        ($builder:expr) => {{
            let builder = $builder.with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            let set: SetLogLevel = std::sync::Arc::new(move |level: &str| {
                anyhow::ensure!(
                    !from_env,
                    "RUST_LOG is set, so [logging] level does not apply"
                );
                handle
                    .reload(log_filter(level)?)
                    .map_err(|e| anyhow::anyhow!("cannot replace the log filter: {e}"))
            });
            set
        }};
    }
    let set = match format {
        LogFormat::Text => init_reloadable!(builder.fmt_fields(EscapedFields)),
        LogFormat::Json => init_reloadable!(builder.json().flatten_event(true)),
    };
    (guard, set)
}

/// The filter for a `[logging] level` or `RUST_LOG` value, with the noisy crates held back.
fn log_filter(directives: &str) -> anyhow::Result<tracing_subscriber::EnvFilter> {
    tracing_subscriber::EnvFilter::try_new(quiet_bindings(&quiet_compiler(directives)))
        .map_err(|e| anyhow::anyhow!("`{directives}` is not a valid log filter: {e}"))
}

#[cfg(test)]
mod tests {
    use super::{quiet_bindings, quiet_compiler};

    #[test]
    fn host_call_traces_stay_quiet_unless_named() {
        let filter = quiet_bindings("trace");
        assert!(
            filter.contains("wasmtime_wasi=debug") && filter.contains("wasmtime_wasi_http=debug")
        );
        assert_eq!(
            quiet_bindings("info,wasmtime_wasi_http=trace"),
            "info,wasmtime_wasi_http=trace"
        );
    }

    #[test]
    fn compiler_crates_stay_quiet_unless_named() {
        let filter = quiet_compiler("trace");
        assert!(filter.starts_with("trace,") && filter.contains("cranelift_codegen=warn"));
        assert_eq!(
            quiet_compiler("info,regalloc2=trace"),
            "info,regalloc2=trace"
        );
    }
}
