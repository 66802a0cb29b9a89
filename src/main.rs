//! The `wasmgate` command line: `serve` and `check`.

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use wasmgate::config::Config;
use wasmgate::gateway::Gateway;
use wasmgate::metrics::Metrics;

/// An edge HTTP gateway that serves WebAssembly components (wasi:http, WASI 0.2).
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log format on stdout.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the routes of a config file until SIGTERM or SIGINT.
    ///
    /// Compiles every component (or loads it from the compile cache), then listens on
    /// `[server] listen` for traffic and on `[admin] listen` for /livez, /readyz and /metrics.
    Serve {
        /// The config file.
        #[arg(default_value = "config/wasmgate.toml")]
        config: PathBuf,
    },
    /// Validate a config file without serving: parse it, load and type-check every component.
    ///
    /// Exits non-zero with a message naming the route, the file and the problem on any error.
    /// Also fills the compile cache, so a following `serve` starts fast.
    Check {
        /// The config file.
        config: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let result = match cli.command {
        Command::Serve { config } => serve(config),
        Command::Check { config } => check(config),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(wasmgate::server::run(config))
}

fn check(path: PathBuf) -> anyhow::Result<()> {
    let config = Config::load(&path)?;
    let gateway = Gateway::build(&config, Metrics::new())?;
    println!(
        "{}: OK, {} routes, {} components",
        path.display(),
        config.routes.len(),
        gateway.components.len()
    );
    Ok(())
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
