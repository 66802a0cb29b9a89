//! The gateway's configuration: the TOML schema, its defaults, and loading it from a file.
//!
//! Everything an operator can set lives in [`Config`]. Parsing is strict: unknown keys, values of
//! the wrong type, and bad durations or sizes are errors that name the file, the line and the
//! key. Checks that need more than one value at a time (route patterns, conflicts between routes,
//! components that do not load) happen when the gateway is built from the config, and name the
//! route they concern.
//!
//! Relative paths in the file (components, the cache directory) are relative to the directory the
//! config file is in, so a config works the same from any working directory.

pub mod blobstore;
pub mod listener;
pub mod middleware;
pub mod overrides;
pub mod pool;
pub mod registry;
pub mod reuse;
pub mod split;
pub mod telemetry;
pub mod units;
pub mod upstream;

pub use blobstore::{BlobBackend, BlobStoreConfig};
pub use listener::{ListenerConfig, TlsConfig};
pub use registry::RegistryConfig;
pub use telemetry::TracingConfig;
pub use upstream::UpstreamConfig;

use crate::connection_info::{Redirect, Scheme};
use crate::host_pattern::HostPattern;
use anyhow::{Context, bail};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole config file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub engine: EngineConfig,
    #[serde(default)]
    pub logging: LoggingConfig,
    /// OpenTelemetry traces over OTLP; off unless `otlp_endpoint` is set.
    #[serde(default)]
    pub tracing: TracingConfig,
    /// Named keyvalue stores (`[keyvalue.NAME]`); routes are granted stores by name.
    #[serde(default)]
    pub keyvalue: BTreeMap<String, KeyValueConfig>,
    /// Named blob stores (`[blobstore.NAME]`); a route names the one its component uses.
    #[serde(default)]
    pub blobstore: BTreeMap<String, BlobStoreConfig>,
    /// Named components (`[component.NAME]`) that routes' components link to.
    #[serde(default, rename = "component")]
    pub components: BTreeMap<String, NamedComponentConfig>,
    /// How `oci://` components are pulled from registries.
    #[serde(default)]
    pub registry: RegistryConfig,
    /// HTTP services that routes forward to (`[upstream.NAME]`).
    #[serde(default, rename = "upstream")]
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// The routes, in any order: matching picks the most specific one.
    #[serde(default, rename = "route")]
    pub routes: Vec<RouteConfig>,
    /// `[[listener]]` tables; none means one cleartext listener on `[server] listen`.
    #[serde(default, rename = "listener")]
    pub listener_tables: Vec<ListenerConfig>,
    /// Where the file was read from; relative paths are resolved against its directory.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// Components pulled from registries (`runtime::oci::localize`): each one's file, and the
    /// `oci://` reference the config named it by, for log lines and route listings.
    #[serde(skip)]
    pub pulled: BTreeMap<PathBuf, String>,
}

/// `[server]`: the public listener and the limits it applies to every connection.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    /// How long a client may take to send a request's headers (HTTP/1.1).
    #[serde(deserialize_with = "units::duration")]
    pub header_read_timeout: Duration,
    /// The default for a route's `timeout`.
    #[serde(deserialize_with = "units::duration")]
    pub request_timeout: Duration,
    /// Larger request bodies get 413.
    #[serde(deserialize_with = "units::size")]
    pub max_request_body: u64,
    /// Larger request header sections get 431.
    #[serde(deserialize_with = "units::size")]
    pub max_header_bytes: u64,
    /// Connections beyond this wait in the kernel's accept queue.
    pub max_connections: usize,
    /// How long in-flight requests may take to finish after SIGTERM.
    #[serde(deserialize_with = "units::duration")]
    pub shutdown_grace: Duration,
    /// How many HTTP/2 streams one connection may have open at once.
    pub max_concurrent_streams: u32,
    /// How long a connection may stay open with no request in flight (HTTP/1.1 keep-alive and
    /// HTTP/2). An HTTP/1.1 connection waiting for its next request is also bounded by
    /// `header_read_timeout`.
    #[serde(deserialize_with = "units::duration")]
    pub idle_timeout: Duration,
    /// How long a request body may take to arrive, from the first read to its end; slower
    /// bodies are cut off and the request gets 408.
    #[serde(deserialize_with = "units::duration")]
    pub body_read_timeout: Duration,
    /// How long a write to a client may wait for the client to read; a peer that stops reading
    /// for longer is disconnected.
    #[serde(deserialize_with = "units::duration")]
    pub send_timeout: Duration,
    /// The kernel send buffer of each client connection (`SO_SNDBUF`); `0` leaves it to the
    /// kernel's autotuning, which lets a slow reader's responses pile up to megabytes before
    /// a write waits and `send_timeout` can start.
    #[serde(deserialize_with = "units::size")]
    pub send_buffer: u64,
    /// How often an HTTP/2 connection is pinged; a peer that does not answer a ping within the
    /// same time is disconnected.
    #[serde(deserialize_with = "units::duration")]
    pub keepalive_interval: Duration,
    /// After SIGTERM, how long the listener keeps accepting while `/readyz` already fails, so
    /// load balancers stop sending traffic before the port closes.
    #[serde(deserialize_with = "units::duration")]
    pub shutdown_delay: Duration,
    /// Whether a host that only a wildcard `allowed_outbound_hosts` entry allows is refused when
    /// it resolves to a loopback, private or link-local address.
    pub outbound_deny_private: bool,
    /// A CA certificate (PEM) that components' `https` requests trust, besides the public and
    /// the system's roots.
    pub outbound_ca: Option<PathBuf>,
    /// Reload when the config file or a component file it names changes.
    pub watch: bool,
    /// Peers (CIDR blocks, or single addresses) whose `forwarded`, `x-forwarded-*` and PROXY
    /// protocol headers are believed; from anyone else they are replaced.
    pub trusted_proxies: Vec<String>,
    /// Keep a well-formed `x-request-id` from a trusted proxy instead of making a new one.
    pub trust_request_id: bool,
    /// Where client connections run: each pinned to one worker thread (`per_core`), or on a
    /// work-stealing pool of threads.
    pub scheduler: Scheduler,
    /// With `scheduler = "per_core"`: how many worker threads; `0` is one per core the process
    /// may use (its CPU affinity and cgroup quota included).
    pub workers: usize,
}

/// The most `[server] workers` a config may ask for: far past any core count, a typo's guard.
pub const MAX_WORKERS: usize = 1024;

/// `[server] scheduler`: how client connections are spread over threads
/// (`crate::server::workers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scheduler {
    /// One worker thread per core, each with an event loop of its own; a connection stays on
    /// the worker it was given, as in nginx and Envoy.
    #[default]
    PerCore,
    /// tokio's multi-thread runtime: any thread runs any connection's work, and idle threads
    /// steal it.
    WorkStealing,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            max_request_body: 16 << 20,
            max_header_bytes: 64 << 10,
            max_connections: 10_000,
            shutdown_grace: Duration::from_secs(30),
            max_concurrent_streams: 200,
            idle_timeout: Duration::from_secs(60),
            body_read_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(30),
            send_buffer: 256 << 10,
            keepalive_interval: Duration::from_secs(20),
            shutdown_delay: Duration::ZERO,
            outbound_deny_private: true,
            outbound_ca: None,
            watch: false,
            trusted_proxies: Vec::new(),
            trust_request_id: false,
            scheduler: Scheduler::default(),
            workers: 0,
        }
    }
}

/// `[admin]`: the operator's listener for probes and metrics.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
        }
    }
}

/// The log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `[logging]`: the gateway's log output, and what one request's guest may log.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    pub format: LogFormat,
    /// A `tracing` filter such as `"info"` or `"info,wasmgate::access=debug"`; `RUST_LOG`, when
    /// set, takes precedence.
    pub level: String,
    /// Messages one request's component may log through `wasi:logging`; more are dropped.
    pub max_guest_messages: u32,
    /// One line per request at info level (target `wasmgate::access`), with OpenTelemetry's
    /// HTTP field names.
    pub access_log: bool,
    /// Bytes (context and message) one request's component may log; more are dropped.
    #[serde(deserialize_with = "units::size")]
    pub max_guest_bytes: u64,
    /// Log lines queued for stdout at most; more are dropped (and counted) rather than waited for.
    pub buffer_lines: usize,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            format: LogFormat::Text,
            level: "info".into(),
            max_guest_messages: 100,
            access_log: true,
            max_guest_bytes: 64 << 10,
            buffer_lines: 16_384,
        }
    }
}

/// `[engine]`: the one wasmtime engine the process shares, and its instance pool.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Where compiled components are cached; `""` disables the cache.
    pub cache_dir: PathBuf,
    /// Instances that can be alive at once across all routes, counted with or without the pool
    /// (and the pooling allocator's slots).
    pub max_instances: u32,
    /// The most linear memory one instance may grow to; a route's `max_memory` may be lower.
    #[serde(deserialize_with = "units::size")]
    pub max_instance_memory: u64,
    /// Use the pooling allocator (the default). `false` allocates every instance on demand.
    pub pooling: bool,
    /// Pool tuning, see docs/perf.md: bytes of each memory kept resident between instances.
    #[serde(deserialize_with = "units::size")]
    pub linear_memory_keep_resident: u64,
    /// Pool tuning: bytes of each table kept resident between instances.
    #[serde(deserialize_with = "units::size")]
    pub table_keep_resident: u64,
    /// Pool tuning: how many slots are decommitted in one batch.
    pub decommit_batch_size: usize,
    /// Pool tuning: free slots kept warm for reuse.
    pub max_unused_warm_slots: Option<u32>,
    /// Pool tuning: reset memory with the Linux PAGEMAP_SCAN ioctl where the kernel has it.
    pub pagemap_scan: bool,
    /// How often the epoch ticker advances; the granularity of timeouts and of preemption.
    #[serde(deserialize_with = "units::duration")]
    pub epoch_tick: Duration,
    /// Serve WASI 0.3 components (`wasi:http/handler@0.3.0`). Off by default: the component
    /// model's concurrency support it turns on costs WASI 0.2 requests 10-15% of their
    /// throughput (docs/perf.md).
    pub wasi_p3: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            cache_dir: PathBuf::from(".wasmgate/cache"),
            max_instances: 1000,
            max_instance_memory: 128 << 20,
            pooling: true,
            // Measured best on the hello component (docs/perf.md, loadtests/pool-experiment.sh):
            // with PAGEMAP_SCAN only dirtied pages are reset, so keeping memory resident costs
            // nothing for pages a guest never touched and saves madvise + TLB shootdowns.
            linear_memory_keep_resident: 4 << 20,
            table_keep_resident: 1 << 20,
            decommit_batch_size: 1,
            max_unused_warm_slots: None,
            pagemap_scan: true,
            epoch_tick: Duration::from_millis(10),
            wasi_p3: false,
        }
    }
}

/// Which backend a keyvalue store lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyValueBackend {
    Memory,
    Redb,
    Redis,
    Nats,
}

/// `[keyvalue.NAME]`: one named store.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyValueConfig {
    pub backend: KeyValueBackend,
    /// redb: the database file (stores may share one).
    pub path: Option<PathBuf>,
    /// redis and nats: the server, e.g. `redis://127.0.0.1:6379`, `nats://127.0.0.1:4222`.
    pub url: Option<String>,
    /// redis: the key prefix, default `wasmgate:NAME`.
    pub prefix: Option<String>,
    /// nats: the JetStream key-value bucket, default NAME.
    pub bucket: Option<String>,
    /// nats: create the bucket if it does not exist.
    #[serde(default = "default_true")]
    pub create_bucket: bool,
    /// redb: absent, every write is durable (fsync) before the guest's call returns; a duration,
    /// writes return without waiting for the disk and are made durable together at most this
    /// much later, so a crash loses at most that much.
    #[serde(default, deserialize_with = "units::opt_duration")]
    pub sync_interval: Option<Duration>,
    /// The longest key a guest may use.
    #[serde(default = "default_max_key_size", deserialize_with = "units::size")]
    pub max_key_size: u64,
    /// The largest value a guest may store.
    #[serde(default = "default_max_value_size", deserialize_with = "units::size")]
    pub max_value_size: u64,
    /// The most keys one batch call (`get-many`, `set-many`, `delete-many`) may name.
    #[serde(default = "default_max_batch_keys")]
    pub max_batch_keys: u64,
    /// The most bytes of this store's data one request may have the host hold for it at once:
    /// the values a call returns (`get-many` above all) plus its open handles (a draft2 `cas`
    /// keeps a copy of its value).
    #[serde(
        default = "default_max_request_bytes",
        deserialize_with = "units::size"
    )]
    pub max_request_bytes: u64,
    /// memory: the most bytes (keys and values) the store may hold; absent, 256 MiB.
    #[serde(default, deserialize_with = "units::opt_size")]
    pub max_total_size: Option<u64>,
}

fn default_true() -> bool {
    true
}

fn default_max_key_size() -> u64 {
    256
}

fn default_max_value_size() -> u64 {
    1 << 20
}

fn default_max_batch_keys() -> u64 {
    1000
}

fn default_max_request_bytes() -> u64 {
    16 << 20
}

/// `[keyvalue.NAME] max_total_size` of a memory store when it is absent.
pub const DEFAULT_MEMORY_MAX_TOTAL_SIZE: u64 = 256 << 20;

/// `[component.NAME]`: a component that provides interfaces to other components (see
/// `runtime::linking`). It serves no route of its own.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedComponentConfig {
    /// The component file.
    pub path: PathBuf,
    /// The interfaces this component imports from other named components:
    /// `{ "pkg:name/interface" = "COMPONENT" }`.
    #[serde(default)]
    pub links: BTreeMap<String, String>,
}

/// One `[[route]]`: what requests it matches and the component that serves them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// `api.example.com`, `*.example.com`, or absent for any host.
    pub host: Option<String>,
    /// `/exact`, `/users/:id`, `/static/...`.
    pub path: String,
    /// Absent means every method.
    pub methods: Option<Vec<String>>,
    /// The component that serves the route (a `wasi:http/incoming-handler` component); a route
    /// has this or `upstream`.
    pub component: Option<PathBuf>,
    /// The `[upstream.NAME]` the route forwards to.
    pub upstream: Option<String>,
    /// Weighted targets (traffic splitting), instead of `component` or `upstream`:
    /// `[{ component = "v2.wasm", weight = 10 }, { upstream = "legacy", weight = 90 }]`.
    /// The route's other settings apply to each target of the kind they are for.
    #[serde(default)]
    pub targets: Vec<split::SplitTargetConfig>,
    /// Keeps a client on one of `targets`, by a cookie or a header.
    pub sticky: Option<split::Sticky>,
    /// On an upstream route: a leading part of the path taken off before forwarding
    /// (`/api` makes `/api/users` `/users`).
    pub strip_prefix: Option<String>,
    /// Compress responses (gzip, br, zstd) by the client's `Accept-Encoding`.
    #[serde(default)]
    pub compression: bool,
    /// Answer CORS preflights and add CORS headers to responses.
    pub cors: Option<middleware::CorsConfig>,
    /// Headers set on requests, set on or removed from responses.
    #[serde(default)]
    pub headers: middleware::HeadersConfig,
    /// Requests per second per client; more get 429 with `Retry-After`.
    pub rate_limit: Option<middleware::RateLimitConfig>,
    /// Interfaces the component imports from named components, linked in process:
    /// `{ "pkg:name/interface" = "COMPONENT" }`.
    #[serde(default)]
    pub links: BTreeMap<String, String>,
    /// Environment variables the component sees.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Where the component may send HTTP requests: `scheme://host[:port]`, host may start with
    /// `*.`, port may be `*`.
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<String>,
    /// The keyvalue stores the component may open.
    #[serde(default)]
    pub keyvalue: Vec<String>,
    /// The blob store (`[blobstore.NAME]`) the component's `wasi:blobstore` containers live
    /// in; absent, every blobstore call fails.
    pub blobstore: Option<String>,
    /// Reachable only from components (`http://self/...`), never from outside (404).
    #[serde(default)]
    pub private: bool,
    /// The listeners (by name) the route serves on; absent, all of them.
    pub listeners: Option<Vec<String>>,
    /// Values the component reads through `wasi:config`; `${NAME}` is the gateway's env var.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    /// Live instances of this route at once.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: usize,
    /// Requests that may wait for an instance; more get 503. Defaults to `max_concurrency`.
    pub queue_size: Option<usize>,
    /// How long a request may wait for an instance before it gets 503.
    #[serde(
        default = "default_queue_timeout",
        deserialize_with = "units::duration"
    )]
    pub queue_timeout: Duration,
    /// How long one request may run; defaults to `[server] request_timeout`.
    #[serde(default, deserialize_with = "units::opt_duration")]
    pub timeout: Option<Duration>,
    /// The most linear memory an instance of this route may use; defaults to
    /// `[engine] max_instance_memory`.
    #[serde(default, deserialize_with = "units::opt_size")]
    pub max_memory: Option<u64>,
    /// Serve more than one request from one instance (weaker isolation; off by default).
    pub reuse: Option<reuse::ReuseConfig>,
    /// Pool settings of this route's own, in place of `[engine]`'s (`config::pool`).
    pub pool: Option<pool::PoolTuning>,
    /// Requests one instance of a `wasi:http` 0.3 component may run at once; more than 1 needs
    /// `reuse`.
    #[serde(default = "default_max_concurrent_per_instance")]
    pub max_concurrent_per_instance: usize,
}

fn default_max_concurrent_per_instance() -> usize {
    1
}

fn default_max_concurrency() -> usize {
    100
}

fn default_queue_timeout() -> Duration {
    Duration::from_secs(1)
}

impl RouteConfig {
    /// Whether any of the route's targets is a component.
    pub fn serves_components(&self) -> bool {
        self.component.is_some() || self.targets.iter().any(|t| t.component.is_some())
    }

    /// The methods the router sends to the route: `methods`, plus `OPTIONS` when the route has
    /// `cors`, whose layer answers the browser's preflight (a 405 would fail it), unless another
    /// route has the same host and path (`alone` false): which of them takes `OPTIONS` is then
    /// the config's to say.
    pub fn routed_methods(&self, alone: bool) -> Option<Vec<String>> {
        let mut methods = self.methods.clone()?;
        if alone
            && self.cors.is_some()
            && !methods.iter().any(|m| m.eq_ignore_ascii_case("OPTIONS"))
        {
            methods.push("OPTIONS".into());
        }
        Some(methods)
    }

    /// The component files the route serves from.
    pub fn component_files(&self) -> impl Iterator<Item = &std::path::Path> {
        self.component
            .iter()
            .chain(self.targets.iter().filter_map(|t| t.component.as_ref()))
            .map(PathBuf::as_path)
    }

    /// The upstreams the route forwards to.
    pub fn upstream_names(&self) -> impl Iterator<Item = &str> {
        self.upstream
            .iter()
            .chain(self.targets.iter().filter_map(|t| t.upstream.as_ref()))
            .map(String::as_str)
    }

    /// The route's name in metrics, logs and `/routes`: its host (if any) and path template, as
    /// written in the config, e.g. `api.example.com/users/:id`. Routes that differ by host are
    /// told apart; the number of names is bounded by the config.
    pub fn label(&self) -> String {
        match &self.host {
            Some(host) => format!("{host}{}", self.path),
            None => self.path.clone(),
        }
    }

    /// A short name for error messages: `route 2 (GET api.example.com/hello/:name)`.
    pub fn describe(&self, index: usize) -> String {
        let methods = self
            .methods
            .as_ref()
            .map(|m| format!("{} ", m.join(",")))
            .unwrap_or_default();
        let host = self.host.as_deref().unwrap_or("");
        format!("route {} ({methods}{host}{})", index + 1, self.path)
    }
}

impl Config {
    /// Reads and parses a config file. The error names the file and, for parse errors, the line
    /// and key.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let environment = std::env::vars_os().filter_map(|(name, value)| {
            Some((name.into_string().ok()?, value.into_string().ok()?))
        });
        let overrides = overrides::collect(environment)?;
        Config::parse_overridden(&text, base_dir, &overrides)
            .with_context(|| format!("in config file {}", path.display()))
    }

    /// Parses config text with settings from outside the file applied (see [`overrides`]).
    pub fn parse_overridden(
        text: &str,
        base_dir: PathBuf,
        overrides: &[overrides::Override],
    ) -> anyhow::Result<Config> {
        if overrides.is_empty() {
            return Config::parse(text, base_dir);
        }
        let mut config = overrides::parse_with(text, overrides)?;
        config.base_dir = base_dir;
        config.check_values()?;
        Ok(config)
    }

    /// Parses config text; relative paths will resolve against `base_dir`.
    pub fn parse(text: &str, base_dir: PathBuf) -> anyhow::Result<Config> {
        let mut config: Config = toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        config.base_dir = base_dir;
        config.check_values()?;
        Ok(config)
    }

    /// The listeners to serve on: the `[[listener]]` tables, or else one cleartext listener
    /// named `default` on `[server] listen`.
    pub fn listeners(&self) -> Vec<ListenerConfig> {
        if !self.listener_tables.is_empty() {
            return self.listener_tables.clone();
        }
        vec![ListenerConfig {
            name: DEFAULT_LISTENER.to_string(),
            address: self.server.listen,
            proxy_protocol: false,
            tls: None,
            http_redirect: None,
        }]
    }

    /// Resolves a path from the file against the config file's directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base_dir.join(path)
        }
    }

    /// The directory for compiled components, or `None` when caching is off.
    pub fn cache_dir(&self) -> Option<PathBuf> {
        (!self.engine.cache_dir.as_os_str().is_empty())
            .then(|| self.resolve(&self.engine.cache_dir))
    }

    /// Checks single values that serde cannot: ranges and relations between two keys.
    fn check_values(&self) -> anyhow::Result<()> {
        let server = &self.server;
        if server.max_header_bytes < 8 << 10 {
            bail!(
                "[server] max_header_bytes must be at least 8KiB (hyper's smallest header buffer)"
            );
        }
        if server.max_connections == 0 {
            bail!("[server] max_connections must be at least 1");
        }
        if server.scheduler == Scheduler::WorkStealing && server.workers != 0 {
            bail!(
                "[server] workers is the number of per_core workers: it cannot be set with \
                 scheduler = \"work_stealing\", whose threads tokio sizes to the cores"
            );
        }
        if server.workers > MAX_WORKERS {
            bail!("[server] workers must be at most {MAX_WORKERS}");
        }
        if server.max_concurrent_streams == 0 {
            bail!("[server] max_concurrent_streams must be at least 1");
        }
        for (key, value) in [
            ("header_read_timeout", server.header_read_timeout),
            ("idle_timeout", server.idle_timeout),
            ("body_read_timeout", server.body_read_timeout),
            ("send_timeout", server.send_timeout),
            ("keepalive_interval", server.keepalive_interval),
        ] {
            if value.is_zero() {
                bail!("[server] {key} must be longer than zero");
            }
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.logging.level) {
            bail!(
                "[logging] level `{}` is not a valid log filter: {e}",
                self.logging.level
            );
        }
        let engine = &self.engine;
        if engine.max_instances == 0 {
            bail!("[engine] max_instances must be at least 1");
        }
        if engine.max_instance_memory < 64 << 10 {
            bail!("[engine] max_instance_memory must be at least one wasm page (64KiB)");
        }
        if engine.epoch_tick.is_zero() {
            bail!("[engine] epoch_tick must be longer than zero");
        }
        for (name, store) in &self.keyvalue {
            let needs = |what: &str, present: bool, applies: bool| -> anyhow::Result<()> {
                if applies && !present {
                    bail!(
                        "[keyvalue.{name}]: a {:?} store needs `{what}`",
                        store.backend
                    );
                }
                if !applies && present {
                    bail!(
                        "[keyvalue.{name}]: `{what}` does not apply to a {:?} store",
                        store.backend
                    );
                }
                Ok(())
            };
            use KeyValueBackend::*;
            needs("path", store.path.is_some(), store.backend == Redb)?;
            needs(
                "url",
                store.url.is_some(),
                matches!(store.backend, Redis | Nats),
            )?;
            needs(
                "prefix",
                store.prefix.is_some(),
                store.backend == Redis && store.prefix.is_some(),
            )?;
            needs(
                "bucket",
                store.bucket.is_some(),
                store.backend == Nats && store.bucket.is_some(),
            )?;
            needs(
                "sync_interval",
                store.sync_interval.is_some(),
                store.backend == Redb && store.sync_interval.is_some(),
            )?;
            if store
                .sync_interval
                .is_some_and(|i| i.is_zero() || i > Duration::from_secs(60))
            {
                bail!(
                    "[keyvalue.{name}]: sync_interval must be longer than zero and at most 60s \
                     (leave it out for a durable commit on every write)"
                );
            }
            if store.max_key_size == 0 || store.max_value_size == 0 {
                bail!("[keyvalue.{name}]: max_key_size and max_value_size must be at least 1");
            }
            needs(
                "max_total_size",
                store.max_total_size.is_some(),
                store.backend == Memory && store.max_total_size.is_some(),
            )?;
            if store.max_batch_keys == 0 || store.max_total_size == Some(0) {
                bail!("[keyvalue.{name}]: max_batch_keys and max_total_size must be at least 1");
            }
            if store.max_request_bytes < store.max_value_size {
                bail!(
                    "[keyvalue.{name}]: max_request_bytes ({} bytes) must be at least \
                     max_value_size ({} bytes), or no value could be read",
                    store.max_request_bytes,
                    store.max_value_size
                );
            }
        }
        for (name, store) in &self.blobstore {
            store.check(name)?;
        }
        self.registry.check()?;
        self.tracing.check()?;
        self.check_listeners()?;
        self.check_links()?;
        for (name, upstream) in &self.upstreams {
            upstream.check(name)?;
        }
        for (index, route) in self.routes.iter().enumerate() {
            let name = route.describe(index);
            self.check_target(route, &name)?;
            if route.max_concurrency == 0 {
                bail!("{name}: max_concurrency must be at least 1");
            }
            if let Some(max_memory) = route.max_memory
                && max_memory > engine.max_instance_memory
            {
                bail!(
                    "{name}: max_memory ({max_memory} bytes) is larger than [engine] \
                     max_instance_memory ({} bytes)",
                    engine.max_instance_memory
                );
            }
            if route.timeout.is_some_and(|t| t.is_zero()) {
                bail!("{name}: timeout must be longer than zero");
            }
            if let Some(reuse) = &route.reuse {
                reuse.check(&name)?;
            }
            if route.pool.is_some() && !engine.pooling {
                bail!(
                    "{name}: `pool` tunes the pooling allocator, and [engine] pooling = false \
                     turns it off"
                );
            }
            if route.max_concurrent_per_instance == 0 {
                bail!("{name}: max_concurrent_per_instance must be at least 1");
            }
            if route.max_concurrent_per_instance > 1 && route.reuse.is_none() {
                bail!(
                    "{name}: max_concurrent_per_instance above 1 shares an instance between \
                     requests: add `reuse` too (without it every request has an instance of its \
                     own)"
                );
            }
            for key in route.env.keys() {
                if key.is_empty() || key.contains('=') || key.contains('\0') {
                    bail!("{name}: env key `{key}` is not a valid variable name");
                }
            }
        }
        Ok(())
    }
}

impl Config {
    /// A route has one kind of target (a component, an upstream or weighted `targets`), and
    /// only the settings its targets use; its middleware settings are valid.
    fn check_target(&self, route: &RouteConfig, name: &str) -> anyhow::Result<()> {
        let given = [
            route.component.is_some(),
            route.upstream.is_some(),
            !route.targets.is_empty(),
        ];
        match given.iter().filter(|g| **g).count() {
            0 => bail!("{name}: needs a `component`, an `upstream` or `targets`"),
            1 => {}
            _ => bail!("{name}: give one of `component`, `upstream` and `targets`"),
        }
        if !route.targets.is_empty() {
            split::check(&route.targets).with_context(|| format!("{name}: targets"))?;
        }
        if let Some(sticky) = &route.sticky {
            if route.targets.is_empty() {
                bail!("{name}: sticky is for a route with `targets`");
            }
            sticky.key().with_context(|| name.to_string())?;
        }
        if let Some(store) = &route.blobstore
            && !self.blobstore.contains_key(store)
        {
            let known: Vec<&str> = self.blobstore.keys().map(String::as_str).collect();
            bail!(
                "{name}: blobstore `{store}` is not defined (add a [blobstore.{store}] table; \
                 defined: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            );
        }
        for upstream in route.upstream_names() {
            if !self.upstreams.contains_key(upstream) {
                let known: Vec<&str> = self.upstreams.keys().map(String::as_str).collect();
                bail!(
                    "{name}: upstream `{upstream}` is not defined (defined: {})",
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                );
            }
        }
        if !route.serves_components() {
            let component_only = [
                ("links", !route.links.is_empty()),
                ("env", !route.env.is_empty()),
                (
                    "allowed_outbound_hosts",
                    !route.allowed_outbound_hosts.is_empty(),
                ),
                ("keyvalue", !route.keyvalue.is_empty()),
                ("blobstore", route.blobstore.is_some()),
                ("config", !route.config.is_empty()),
                ("max_memory", route.max_memory.is_some()),
                ("reuse", route.reuse.is_some()),
                ("pool", route.pool.is_some()),
                (
                    "max_concurrent_per_instance",
                    route.max_concurrent_per_instance != 1,
                ),
            ];
            if let Some((key, _)) = component_only.iter().find(|(_, set)| *set) {
                bail!("{name}: `{key}` is for component routes, not upstream routes");
            }
        }
        if let Some(prefix) = &route.strip_prefix {
            if route.upstream_names().next().is_none() {
                bail!("{name}: strip_prefix is for upstream routes");
            }
            let literal = prefix.starts_with('/')
                && !prefix.ends_with('/')
                && !prefix.contains(':')
                && !prefix.contains("...");
            let under = route.path == *prefix || route.path.starts_with(&format!("{prefix}/"));
            if !literal || !under {
                bail!(
                    "{name}: strip_prefix `{prefix}` must be a literal leading part of the \
                     route's path `{}` (like `/api` for `/api/...`)",
                    route.path
                );
            }
        }
        if let Some(cors) = &route.cors {
            cors.check().with_context(|| name.to_string())?;
        }
        route.headers.parsed().with_context(|| name.to_string())?;
        if let Some(limit) = &route.rate_limit {
            limit.check().with_context(|| name.to_string())?;
        }
        Ok(())
    }
}

/// Every ```toml block of a document, parsed as a config (for tests that keep docs true).
#[cfg(test)]
pub(crate) fn documented_configs(doc: &str) -> Vec<Config> {
    doc.split("```toml\n")
        .skip(1)
        .map(|block| {
            let text = block.split("```").next().unwrap_or_default();
            Config::parse(text, PathBuf::from("/etc/wasmgate"))
                .unwrap_or_else(|e| panic!("documented config:\n{text}\n{e:#}"))
        })
        .collect()
}

/// The name of the listener `[server] listen` makes when there are no `[[listener]]` tables.
pub const DEFAULT_LISTENER: &str = "default";

impl Config {
    /// Listener names are unique, addresses distinct, `http_redirect` only on cleartext
    /// listeners and well-formed, and routes name listeners that exist.
    fn check_listeners(&self) -> anyhow::Result<()> {
        let listeners = self.listeners();
        for (index, listener) in listeners.iter().enumerate() {
            let name = &listener.name;
            if name.is_empty() {
                bail!("[[listener]] {}: `name` must not be empty", index + 1);
            }
            if listeners[..index].iter().any(|l| &l.name == name) {
                bail!("[[listener]] `{name}`: two listeners have this name");
            }
            // Port 0 (any free port, for tests) never collides.
            if listener.address.port() != 0
                && listeners[..index]
                    .iter()
                    .any(|l| l.address == listener.address)
            {
                bail!(
                    "[[listener]] `{name}`: address {} is already another listener's",
                    listener.address
                );
            }
            if let Some(redirect) = &listener.http_redirect {
                if listener.tls.is_some() {
                    bail!("[[listener]] `{name}`: http_redirect is for cleartext listeners");
                }
                redirect_target(redirect)
                    .with_context(|| format!("[[listener]] `{name}`: http_redirect"))?;
            }
            if listener.proxy_protocol && self.server.trusted_proxies.is_empty() {
                bail!(
                    "[[listener]] `{name}`: proxy_protocol takes the client's address from the \
                     peer, so [server] trusted_proxies must name the load balancers allowed to \
                     send it"
                );
            }
            if let Some(tls) = &listener.tls {
                for entry in &tls.sni {
                    if entry.names.is_empty() {
                        bail!("[[listener]] `{name}`: an sni entry has no names");
                    }
                    for host in &entry.names {
                        HostPattern::parse(host)
                            .with_context(|| format!("[[listener]] `{name}`: sni names"))?;
                    }
                }
            }
        }
        for (index, route) in self.routes.iter().enumerate() {
            for wanted in route.listeners.iter().flatten() {
                if !listeners.iter().any(|l| &l.name == wanted) {
                    let known: Vec<&str> = listeners.iter().map(|l| l.name.as_str()).collect();
                    bail!(
                        "{}: listener `{wanted}` is not defined (defined: {})",
                        route.describe(index),
                        known.join(", ")
                    );
                }
            }
        }
        for proxy in &self.server.trusted_proxies {
            parse_cidr(proxy)
                .with_context(|| format!("[server] trusted_proxies entry `{proxy}`"))?;
        }
        Ok(())
    }
}

/// `scheme://[host]:port` of an `http_redirect`: the scheme, and the port (`None`: the
/// scheme's default). The host part, if any, is ignored: the client's host is kept.
pub fn redirect_target(text: &str) -> anyhow::Result<Redirect> {
    let (scheme, rest) = text
        .split_once("://")
        .context("must look like \"https://:8443\" (a scheme and an optional port)")?;
    let scheme = match scheme {
        "https" => Scheme::Https,
        "http" => Scheme::Http,
        _ => bail!("the scheme must be http or https"),
    };
    let rest = rest.trim_end_matches('/');
    let port = match rest.rsplit_once(':') {
        Some((_, port)) => Some(port.parse::<u16>().context("the port must be a number")?),
        None => None,
    };
    Ok(Redirect { scheme, port })
}

/// A CIDR block (`10.0.0.0/8`, `fd00::/8`) or a single address, as (network, prefix length).
pub fn parse_cidr(text: &str) -> anyhow::Result<(std::net::IpAddr, u8)> {
    let (address, prefix) = match text.split_once('/') {
        Some((address, prefix)) => (address, Some(prefix)),
        None => (text, None),
    };
    let address: std::net::IpAddr = address
        .trim()
        .parse()
        .context("not an IP address or CIDR block")?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    let prefix = match prefix {
        Some(prefix) => prefix
            .trim()
            .parse::<u8>()
            .ok()
            .filter(|p| *p <= max)
            .with_context(|| format!("the prefix length must be 0 to {max}"))?,
        None => max,
    };
    Ok((address, prefix))
}

/// A `[component.NAME]` name: lowercase letters, digits and `-` or `_`.
fn is_component_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// An interface name as a link key: `namespace:package/interface`, optionally `@version`.
fn is_interface_name(name: &str) -> bool {
    let unversioned = name.split_once('@').map_or(name, |(n, _)| n);
    match unversioned.split_once(':') {
        Some((namespace, rest)) => match rest.split_once('/') {
            Some((package, interface)) => {
                !namespace.is_empty() && !package.is_empty() && !interface.is_empty()
            }
            None => false,
        },
        None => false,
    }
}

impl Config {
    /// Checks `[component.NAME]` and every `links` table: names, that each link names a
    /// declared component, and that named components do not link in a cycle. Whether the
    /// components import and export what the links say is checked when they are loaded.
    fn check_links(&self) -> anyhow::Result<()> {
        for name in self.components.keys() {
            if !is_component_name(name) {
                bail!(
                    "[component.{name}]: a component name may have only lowercase letters, digits, `-` and `_`"
                );
            }
        }
        let check_table = |owner: &str, links: &BTreeMap<String, String>| -> anyhow::Result<()> {
            for (interface, target) in links {
                if !is_interface_name(interface) {
                    bail!(
                        "{owner}: link `{interface}` is not an interface name (`namespace:package/interface`, e.g. `local:greeter-demo/greet`)"
                    );
                }
                if !self.components.contains_key(target) {
                    let known: Vec<&str> = self.components.keys().map(String::as_str).collect();
                    bail!(
                        "{owner}: link `{interface}` names component `{target}`, but there is no [component.{target}] (declared: {})",
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    );
                }
            }
            Ok(())
        };
        for (name, component) in &self.components {
            check_table(&format!("[component.{name}]"), &component.links)?;
        }
        for (index, route) in self.routes.iter().enumerate() {
            check_table(&route.describe(index), &route.links)?;
        }
        let mut done = std::collections::BTreeSet::new();
        for name in self.components.keys() {
            let mut path = vec![name.as_str()];
            self.find_cycle(&mut path, &mut done)?;
        }
        Ok(())
    }

    /// Named components that no route uses, directly or through other components' links.
    pub fn unused_components(&self) -> Vec<&str> {
        let mut used: Vec<&str> = Vec::new();
        let mut pending: Vec<&str> = self
            .routes
            .iter()
            .flat_map(|route| route.links.values().map(String::as_str))
            .collect();
        while let Some(name) = pending.pop() {
            if used.contains(&name) {
                continue;
            }
            used.push(name);
            if let Some(component) = self.components.get(name) {
                pending.extend(component.links.values().map(String::as_str));
            }
        }
        self.components
            .keys()
            .map(String::as_str)
            .filter(|name| !used.contains(name))
            .collect()
    }

    /// Depth-first search from the last component of `path`; an error names the cycle. `done`
    /// holds the components already searched from, so shared providers are searched once.
    fn find_cycle<'a>(
        &'a self,
        path: &mut Vec<&'a str>,
        done: &mut std::collections::BTreeSet<&'a str>,
    ) -> anyhow::Result<()> {
        let Some(&name) = path.last() else {
            return Ok(());
        };
        let Some(current) = self.components.get(name).filter(|_| !done.contains(name)) else {
            return Ok(());
        };
        for target in current.links.values() {
            if let Some(start) = path.iter().position(|name| name == target) {
                let mut cycle: Vec<&str> = path[start..].to_vec();
                cycle.push(target);
                bail!(
                    "[component.{}]: components link in a cycle ({}); a component cannot use \
                     itself, directly or through others",
                    path[start],
                    cycle.join(" -> ")
                );
            }
            path.push(target);
            self.find_cycle(path, done)?;
            path.pop();
        }
        done.insert(name);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<Config> {
        Config::parse(text, PathBuf::from("/etc/wasmgate"))
    }

    /// The config examples of the README and the reference docs are configs the gateway takes.
    #[test]
    fn the_readme_and_reference_examples_parse() {
        for (doc, text) in [
            ("README.md", include_str!("../../README.md")),
            ("docs/config.md", include_str!("../../docs/config.md")),
            ("docs/keyvalue.md", include_str!("../../docs/keyvalue.md")),
            ("docs/blobstore.md", include_str!("../../docs/blobstore.md")),
            ("docs/linking.md", include_str!("../../docs/linking.md")),
        ] {
            assert!(!documented_configs(text).is_empty(), "{doc} has no example");
        }
    }

    /// The whole error chain of a config that must be refused.
    fn refusal(text: &str) -> String {
        format!("{:#}", parse(text).expect_err("the config must be refused"))
    }

    #[test]
    fn an_empty_file_gives_the_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config.server.listen.port(), 8080);
        assert_eq!(config.server.max_request_body, 16 << 20);
        assert!(config.routes.is_empty());
    }

    #[test]
    fn routes_parse_with_units_and_relative_paths() {
        let config = parse(
            r#"
            [[route]]
            path = "/hello/:name"
            methods = ["GET"]
            component = "hello.wasm"
            timeout = "250ms"
            max_memory = "32MiB"
            env = { GREETING = "hi" }
            "#,
        )
        .unwrap();
        let route = &config.routes[0];
        assert_eq!(route.timeout, Some(Duration::from_millis(250)));
        assert_eq!(route.max_memory, Some(32 << 20));
        assert_eq!(route.queue_timeout, Duration::from_secs(1));
        assert_eq!(
            config.resolve(route.component.as_deref().expect("a component route")),
            PathBuf::from("/etc/wasmgate/hello.wasm")
        );
    }

    #[test]
    fn unknown_keys_name_the_key_and_line() {
        let err = parse("[server]\nlisten = \"127.0.0.1:1\"\nlisten_port = 3\n").unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("listen_port"), "{text}");
        assert!(text.contains("line 3"), "{text}");
    }

    #[test]
    fn bad_units_name_the_key() {
        let err = parse("[server]\nrequest_timeout = \"forever\"\n").unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("request_timeout") && text.contains("not a duration"),
            "{text}"
        );
    }

    #[test]
    fn durations_that_would_overflow_a_deadline_are_config_errors() {
        let text =
            refusal("[[route]]\npath = \"/\"\ncomponent = \"a.wasm\"\ntimeout = \"1000000000y\"\n");
        assert!(text.contains("timeout"), "{text}");
        let text = refusal("[server]\nidle_timeout = \"400days\"\n");
        assert!(
            text.contains("idle_timeout") && text.contains("too long"),
            "{text}"
        );
        assert!(refusal("[server]\nsend_timeout = \"0s\"\n").contains("send_timeout"));
    }

    #[test]
    fn the_scheduler_and_its_workers_are_checked() {
        let config = parse("").unwrap();
        assert_eq!(config.server.scheduler, Scheduler::PerCore);
        assert_eq!(config.server.workers, 0);
        let config = parse("[server]\nscheduler = \"work_stealing\"\n").unwrap();
        assert_eq!(config.server.scheduler, Scheduler::WorkStealing);
        assert_eq!(parse("[server]\nworkers = 3\n").unwrap().server.workers, 3);
        assert!(
            refusal("[server]\nscheduler = \"work_stealing\"\nworkers = 2\n")
                .contains("workers is the number of per_core workers")
        );
        assert!(refusal("[server]\nworkers = 5000\n").contains("at most 1024"));
        assert!(refusal("[server]\nscheduler = \"round_robin\"\n").contains("unknown variant"));
    }

    #[test]
    fn listeners_default_to_server_listen_and_are_checked() {
        let config = parse("[server]\nlisten = \"127.0.0.1:1\"\n").unwrap();
        let listeners = config.listeners();
        assert_eq!(listeners.len(), 1);
        assert_eq!(listeners[0].name, "default");
        let two = "[[listener]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n[[listener]]\nname = \"a\"\naddress = \"127.0.0.1:2\"\n";
        assert!(refusal(two).contains("two listeners have this name"));
        let route = "[[listener]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\n[[route]]\npath = \"/\"\ncomponent = \"x.wasm\"\nlisteners = [\"b\"]\n";
        assert!(refusal(route).contains("listener `b` is not defined (defined: a)"));
        let redirect =
            "[[listener]]\nname = \"a\"\naddress = \"127.0.0.1:1\"\nhttp_redirect = \"ftp://x\"\n";
        assert!(refusal(redirect).contains("http_redirect"));
        assert_eq!(
            redirect_target("https://:8443").unwrap(),
            Redirect {
                scheme: Scheme::Https,
                port: Some(8443)
            }
        );
        assert!(
            refusal("[server]\ntrusted_proxies = [\"10.0.0.0/33\"]\n").contains("prefix length")
        );
        assert_eq!(
            parse_cidr("fd00::/8").unwrap(),
            ("fd00::".parse().unwrap(), 8)
        );
    }

    #[test]
    fn route_memory_cannot_exceed_the_engine_limit() {
        let err = parse(
            "[engine]\nmax_instance_memory = \"64MiB\"\n[[route]]\npath = \"/\"\ncomponent = \"a.wasm\"\nmax_memory = \"1GiB\"\n",
        )
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("route 1 (/): max_memory"),
            "{err:#}"
        );
    }

    #[test]
    fn sync_interval_is_for_redb_and_bounded() {
        let redb = "[keyvalue.k]\nbackend = \"redb\"\npath = \"kv.redb\"\n";
        let config = parse(&format!("{redb}sync_interval = \"100ms\"\n")).unwrap();
        assert_eq!(
            config.keyvalue["k"].sync_interval,
            Some(Duration::from_millis(100))
        );
        assert!(refusal(&format!("{redb}sync_interval = \"0s\"\n")).contains("longer than zero"));
        assert!(refusal(&format!("{redb}sync_interval = \"5m\"\n")).contains("at most 60s"));
        let redis = "[keyvalue.k]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1\"\nsync_interval = \"1s\"\n";
        assert!(
            refusal(redis).contains("`sync_interval` does not apply to a Redis store"),
            "{}",
            refusal(redis)
        );
    }

    #[test]
    fn links_must_name_declared_components() {
        let text = refusal(
            "[[route]]\npath = \"/\"\ncomponent = \"a.wasm\"\nlinks = { \"local:demo/greet\" = \"greeter\" }\n",
        );
        assert!(
            text.contains("route 1 (/): link `local:demo/greet` names component `greeter`")
                && text.contains("no [component.greeter]"),
            "{text}"
        );
    }

    #[test]
    fn component_names_are_checked() {
        let text = refusal("[component.Greeter]\npath = \"g.wasm\"\n");
        assert!(
            text.contains(
                "[component.Greeter]: a component name may have only lowercase letters, digits, `-` and `_`"
            ),
            "{text}"
        );
        assert!(is_component_name("greeter_2-x"));
    }

    #[test]
    fn link_keys_must_be_interface_names() {
        let text = refusal(
            "[component.g]\npath = \"g.wasm\"\n[[route]]\npath = \"/\"\ncomponent = \"a.wasm\"\nlinks = { greet = \"g\" }\n",
        );
        assert!(
            text.contains("link `greet` is not an interface name"),
            "{text}"
        );
        assert!(is_interface_name("wasi:http/types@0.2.0"));
        assert!(!is_interface_name("wasi:http"));
        assert!(!is_interface_name(":x/y"));
    }

    #[test]
    fn link_cycles_are_named() {
        let text = refusal(
            r#"
            [component.a]
            path = "a.wasm"
            links = { "local:x/b" = "b" }
            [component.b]
            path = "b.wasm"
            links = { "local:x/c" = "c" }
            [component.c]
            path = "c.wasm"
            links = { "local:x/a" = "a" }
            "#,
        );
        assert!(
            text.contains("components link in a cycle (a -> b -> c -> a)"),
            "{text}"
        );
        let text = refusal("[component.a]\npath = \"a.wasm\"\nlinks = { \"local:x/a\" = \"a\" }\n");
        assert!(text.contains("(a -> a)"), "{text}");
    }

    #[test]
    fn a_deep_diamond_of_shared_providers_is_checked_quickly() {
        // c0 links to both c1 and c2 and every ci to both c(i+1) and c(i+2): without memoising
        // finished components the search would take about 1.6^60 steps.
        let mut text = String::new();
        for i in 0..60 {
            text.push_str(&format!(
                "[component.c{i}]\npath = \"c{i}.wasm\"\nlinks = {{ \"local:x/a\" = \"c{}\", \"local:x/b\" = \"c{}\" }}\n",
                i + 1,
                i + 2
            ));
        }
        text.push_str(
            "[component.c60]\npath = \"c60.wasm\"\n[component.c61]\npath = \"c61.wasm\"\n",
        );
        assert_eq!(parse(&text).unwrap().components.len(), 62);
    }

    #[test]
    fn a_shared_provider_is_not_a_cycle() {
        let config = parse(
            r#"
            [component.a]
            path = "a.wasm"
            links = { "local:x/b" = "b", "local:x/c" = "c" }
            [component.b]
            path = "b.wasm"
            links = { "local:x/c" = "c" }
            [component.c]
            path = "c.wasm"
            "#,
        )
        .unwrap();
        assert_eq!(config.components.len(), 3);
        assert_eq!(config.unused_components(), vec!["a", "b", "c"]);
        let config = parse(
            r#"
            [component.a]
            path = "a.wasm"
            links = { "local:x/b" = "b" }
            [component.b]
            path = "b.wasm"
            [component.c]
            path = "c.wasm"
            [[route]]
            path = "/"
            component = "r.wasm"
            links = { "local:x/a" = "a" }
            "#,
        )
        .unwrap();
        assert_eq!(config.unused_components(), vec!["c"]);
    }
}
