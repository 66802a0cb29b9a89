//! Loading: the state that lives as long as the process, and the generations built on it.
//!
//! A [`Process`] owns what every config shares and a reload keeps: the wasmtime engine and its
//! epoch ticker, the linker (and another such [`Pool`] for each distinct route `pool` tuning,
//! while routes use it), the keyvalue and blob stores and their connections, the metrics
//! registry, the tracer and the process-wide instance slots. [`load`] turns a [`Config`] into a [`Generation`] on that
//! process: it loads every component once (through the compile cache; `oci::localize` has
//! pulled those from registries into files first), composes linked ones,
//! pre-instantiates each against the linker, and validates the route table. Any error names
//! the route and the file. Nothing here runs on the request path.

use crate::capabilities::blobstore::Stores as BlobStores;
use crate::capabilities::config_store;
use crate::capabilities::keyvalue::{Grants, Stores};
use crate::capabilities::logging::LogBudget;
use crate::capabilities::outbound_client::{self, OutboundClient};
use crate::capabilities::outbound_http::{Allowlist, OutboundRule, PrivateAddresses, SelfHandle};
use crate::client_identity::ClientPolicy;
use crate::config::pool::{MAX_POOLS, PoolKey, PoolTuning};
use crate::config::split::SplitKind;
use crate::config::{Config, EngineConfig, RouteConfig};
use crate::generation::{Backend, Generation, RequestLimits, Route, Target};
use crate::metrics::Metrics;
use crate::middleware::{self, RateLimit};
use crate::otel::Tracing;
use crate::proxy::{Upstream, UpstreamRoute};
use crate::router::{RouteSpec, RouteTable};
use crate::runtime::admission::{Admission, AdmissionLimits};
use crate::runtime::component::{self, Origin};
use crate::runtime::engine::{Allocator, EpochTicker, InstanceSlots, build_engine};
use crate::runtime::instance::{ComponentPre, ComponentRoute, HostState, RouteSettings, linker};
use crate::runtime::linking;
use crate::split::{Split, SplitBackend};
use anyhow::Context;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use wasmtime::component::{Component, Linker};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p3::bindings::ServicePre;

/// The stores guests reach through `wasi:keyvalue` and `wasi:blobstore`, kept across reloads
/// where their definitions did not change.
pub struct CapabilityStores {
    keyvalue: Stores,
    blobstore: BlobStores,
}

/// One instance pool: a wasmtime engine with its pool settings, the linker of the host's
/// interfaces on it, and the ticker that drives its epochs. A route's own pool
/// (`RouteSettings::own_pool`) lives as long as a route of a live generation uses it.
pub struct Pool {
    key: PoolKey,
    engine: wasmtime::Engine,
    linker: Linker<HostState>,
    _ticker: EpochTicker,
    /// `wasmgate_instance_pools`, counting this one until it is dropped.
    counted: prometheus::IntGauge,
}

impl Pool {
    fn build(engine_config: &EngineConfig, metrics: &Metrics) -> anyhow::Result<(Pool, Allocator)> {
        let (engine, allocator) = build_engine(engine_config)?;
        let linker = linker(&engine, engine_config.wasi_p3)?;
        let ticker = EpochTicker::start(engine.clone(), engine_config.epoch_tick);
        let counted = metrics.instance_pools.clone();
        counted.inc();
        let pool = Pool {
            key: PoolKey::of(engine_config),
            engine,
            linker,
            _ticker: ticker,
            counted,
        };
        Ok((pool, allocator))
    }

    /// The pool's settings.
    pub fn key(&self) -> PoolKey {
        self.key
    }

    /// The pool's engine.
    pub fn engine(&self) -> &wasmtime::Engine {
        &self.engine
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.counted.dec();
    }
}

/// What lives for the whole process, whatever generation is serving.
pub struct Process {
    /// `[engine]`'s pool, which every route without a `pool` of its own uses.
    pool: Arc<Pool>,
    /// One per distinct route `pool` tuning, for as long as a route of a live generation (or of
    /// one being built) holds it.
    own_pools: std::sync::Mutex<Vec<std::sync::Weak<Pool>>>,
    /// `[engine]` as it was at start: what every pool is built from.
    engine_config: EngineConfig,
    /// Whether the engine and linker serve WASI 0.3 components (`[engine] wasi_p3` at start).
    wasi_p3: bool,
    /// The stores of the live generation; a load builds the next ones from these.
    stores: std::sync::Mutex<Arc<CapabilityStores>>,
    metrics: Arc<Metrics>,
    /// Traces over OTLP, when `[tracing]` turns them on.
    tracing: Option<Arc<Tracing>>,
    instances: InstanceSlots,
    /// Which allocator the engine ended up with.
    pub allocator: Allocator,
    /// The admin listener's address as bound at start (its port, when the config says 0): what
    /// guests' outgoing requests may not reach, whatever a reloaded config says.
    admin: std::net::SocketAddr,
}

impl Process {
    /// Creates the engine, its ticker and linker, the instance slots and the keyvalue stores
    /// `config` declares. `config.admin.listen` is the admin listener's bound address.
    pub fn start(config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<Process> {
        let stores = CapabilityStores {
            keyvalue: Stores::build(&config.keyvalue, |p| config.resolve(p), &metrics)?,
            blobstore: BlobStores::default().next(
                &config.blobstore,
                |p| config.resolve(p),
                &metrics,
            )?,
        };
        let tracing = Tracing::start(&config.tracing)?;
        Process::with_stores(config, metrics, stores, tracing)
    }

    /// A process for `wasmgate check`: like [`Process::start`], but no keyvalue store is opened
    /// or connected to (see `Stores::unopened`).
    pub fn for_check(config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<Process> {
        let stores = CapabilityStores {
            keyvalue: Stores::unopened(&config.keyvalue, &metrics),
            blobstore: BlobStores::unopened(&config.blobstore, &metrics),
        };
        Process::with_stores(config, metrics, stores, None)
    }

    fn with_stores(
        config: &Config,
        metrics: Arc<Metrics>,
        stores: CapabilityStores,
        tracing: Option<Arc<Tracing>>,
    ) -> anyhow::Result<Process> {
        let (pool, allocator) = Pool::build(&config.engine, &metrics)?;
        let instances = InstanceSlots::new(config.engine.max_instances);
        Ok(Process {
            pool: Arc::new(pool),
            own_pools: std::sync::Mutex::default(),
            engine_config: config.engine.clone(),
            wasi_p3: config.engine.wasi_p3,
            stores: std::sync::Mutex::new(Arc::new(stores)),
            metrics,
            tracing,
            instances,
            allocator,
            admin: config.admin.listen,
        })
    }

    /// The pool a route with `tuning` is served from: `[engine]`'s when the tuning changes
    /// none of its settings (or there is none), else a pool of its own: the one a live route
    /// with the same settings uses, else a new one (at most [`MAX_POOLS`] in all, `[engine]`'s
    /// included).
    fn pool(&self, tuning: Option<&PoolTuning>) -> anyhow::Result<Arc<Pool>> {
        let Some(tuned) = tuning.map(|tuning| tuning.apply(&self.engine_config)) else {
            return Ok(self.pool.clone());
        };
        let key = PoolKey::of(&tuned);
        if key == self.pool.key {
            return Ok(self.pool.clone());
        }
        if !self.engine_config.pooling {
            anyhow::bail!(
                "`pool` tunes the pooling allocator, and this process started with [engine] \
                 pooling = false (a restart applies [engine] changes)"
            );
        }
        let mut own = self.own_pools.lock().unwrap_or_else(|p| p.into_inner());
        own.retain(|pool| pool.strong_count() > 0);
        if let Some(pool) = own
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .find(|pool| pool.key == key)
        {
            return Ok(pool);
        }
        if own.len() + 1 >= MAX_POOLS {
            anyhow::bail!(
                "`pool` asks for a pool with {key}, and the process has {MAX_POOLS} already \
                 ([engine]'s and {} that routes use; each reserves address space for [engine] \
                 max_instances instances): give routes the same pool settings",
                own.len()
            );
        }
        let (pool, _) =
            Pool::build(&tuned, &self.metrics).context("cannot create the route's own pool")?;
        tracing::info!(pool = %key, "created an instance pool for routes' `pool` settings");
        let pool = Arc::new(pool);
        own.push(Arc::downgrade(&pool));
        Ok(pool)
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The tracer, when `[tracing]` turns tracing on.
    pub fn tracing(&self) -> Option<&Arc<Tracing>> {
        self.tracing.as_ref()
    }

    fn stores(&self) -> Arc<CapabilityStores> {
        match self.stores.lock() {
            Ok(stores) => stores.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set_stores(&self, stores: Arc<CapabilityStores>) {
        match self.stores.lock() {
            Ok(mut current) => *current = stores,
            Err(poisoned) => *poisoned.into_inner() = stores,
        }
    }
}

/// Builds the generation `config` describes on `process`; see the module docs. `self_handle`
/// is how its components reach the gateway at `http://self`; `previous` is the generation
/// serving now, whose admission state carries over to routes whose limits did not change.
/// Keyvalue stores that the config defines as before are kept (see `Stores::next`); the new
/// set replaces the process's only once the whole generation is built.
pub fn load(
    process: &Process,
    config: &Config,
    self_handle: &SelfHandle,
    previous: &Generation,
) -> anyhow::Result<Generation> {
    let current = process.stores();
    let stores = Arc::new(CapabilityStores {
        keyvalue: current.keyvalue.next(
            &config.keyvalue,
            |p| config.resolve(p),
            &process.metrics,
        )?,
        blobstore: current.blobstore.next(
            &config.blobstore,
            |p| config.resolve(p),
            &process.metrics,
        )?,
    });
    let generation = load_routes(process, &stores, config, self_handle, previous)?;
    process.set_stores(stores);
    Ok(generation)
}

fn load_routes(
    process: &Process,
    stores: &CapabilityStores,
    config: &Config,
    self_handle: &SelfHandle,
    previous: &Generation,
) -> anyhow::Result<Generation> {
    // The previous generation's admission state by route name, where the name is unique.
    let mut previous_admission: HashMap<&str, Option<&Arc<Admission>>> = HashMap::new();
    for (_, route) in previous.routes.targets() {
        previous_admission
            .entry(&route.metrics.route)
            .and_modify(|shared| *shared = None)
            .or_insert(Some(route.target.admission()));
    }
    let mut upstreams = HashMap::new();
    for (name, upstream) in &config.upstreams {
        let resolve = |p: &Path| config.resolve(p);
        let kept = previous
            .upstreams
            .get(name)
            .filter(|(before, built)| before == upstream && built.same_files(upstream, resolve));
        let built = match kept {
            Some((_, built)) => built.clone(),
            None => {
                let built = Upstream::build(name, upstream, resolve, process.metrics.clone())
                    .with_context(|| format!("[upstream.{name}]"))?;
                let built = Arc::new(built);
                built.watch_health();
                built.watch_idle();
                built
            }
        };
        upstreams.insert(name.clone(), (upstream.clone(), built));
    }
    for name in config.unused_components() {
        tracing::warn!(
            component = name,
            "[component.{name}] is declared but no route links to it, directly or through \
             other components; it is not loaded"
        );
    }
    let shared = Shared {
        process,
        stores,
        config,
        self_handle,
        outbound_tls: outbound_client::tls_config(config)?,
    };
    // Each distinct component file (with the same links) is loaded once, however many routes
    // use it.
    let mut loaded: Loaded = HashMap::new();
    let mut components = Vec::new();
    let mut specs = Vec::with_capacity(config.routes.len());
    // How many routes share each host and path (a lone route with `cors` also takes OPTIONS).
    let mut routes_at: HashMap<(&Option<String>, &String), usize> = HashMap::new();
    for route in &config.routes {
        *routes_at.entry((&route.host, &route.path)).or_default() += 1;
    }
    for (index, route) in config.routes.iter().enumerate() {
        let name = route.describe(index);
        let label = route.label();
        let admission = admission(
            route,
            previous_admission.get(label.as_str()).copied().flatten(),
        );
        let listeners = route
            .listeners
            .as_ref()
            .map(|names| names.iter().map(|n| Arc::from(n.as_str())).collect());
        let metrics = process.metrics.route(&label);
        let mut backend = |kind: SplitKind<'_>| -> anyhow::Result<Backend> {
            Ok(match kind {
                SplitKind::Upstream(upstream) => {
                    let upstream = upstreams
                        .get(upstream)
                        .map(|(_, built)| built.clone())
                        .with_context(|| format!("{name}: upstream `{upstream}` is not defined"))?;
                    Backend::Upstream(Arc::new(UpstreamRoute {
                        upstream,
                        strip_prefix: route.strip_prefix.clone(),
                        admission: admission.clone(),
                        metrics: metrics.clone(),
                    }))
                }
                SplitKind::Component(component) => {
                    Backend::Component(Arc::new(load_component_route(
                        &shared,
                        route,
                        component,
                        &name,
                        admission.clone(),
                        &mut loaded,
                        &mut components,
                    )?))
                }
            })
        };
        let target = match (&route.component, &route.upstream) {
            (Some(component), _) => Target::One(backend(SplitKind::Component(component))?),
            (None, Some(upstream)) => Target::One(backend(SplitKind::Upstream(upstream))?),
            (None, None) => {
                let mut backends = Vec::with_capacity(route.targets.len());
                for target in &route.targets {
                    let built = backend(target.kind().with_context(|| name.clone())?)?;
                    let name = target.label();
                    let requests = process.metrics.split_requests(&label, &name);
                    backends.push(SplitBackend {
                        backend: built,
                        weight: target.weight,
                        name,
                        requests,
                    });
                }
                let sticky = route
                    .sticky
                    .as_ref()
                    .map(|s| s.key())
                    .transpose()
                    .with_context(|| name.clone())?;
                Target::Split {
                    split: Split::new(backends, sticky),
                    admission: admission.clone(),
                }
            }
        };
        let target = Arc::new(target);
        let rate_limit = match &route.rate_limit {
            Some(limit) => {
                let limit = Arc::new(
                    RateLimit::new(limit, process.metrics.rate_limited(&label))
                        .with_context(|| name.clone())?,
                );
                limit.watch();
                Some(limit)
            }
            None => None,
        };
        specs.push(RouteSpec {
            host: route.host.clone(),
            path: route.path.clone(),
            methods: route.routed_methods(routes_at[&(&route.host, &route.path)] == 1),
            target: Arc::new(Route {
                metrics,
                private: route.private,
                listeners,
                layers: middleware::stack(route, crate::gateway::target_service(target.clone()))
                    .with_context(|| name.clone())?,
                target,
                rate_limit,
            }),
        });
    }
    let routes = RouteTable::new(specs)
        .map_err(|(index, e)| anyhow::anyhow!("{}: {e}", config.routes[index].describe(index)))?;
    Ok(Generation {
        routes,
        components,
        limits: RequestLimits {
            max_request_body: config.server.max_request_body,
            body_read_timeout: config.server.body_read_timeout,
            max_header_bytes: config.server.max_header_bytes,
        },
        client: ClientPolicy::new(
            &config.server.trusted_proxies,
            config.server.trust_request_id,
        )?,
        access_log: config.logging.access_log,
        upstreams,
    })
}

/// Components loaded so far in one generation, by file, links and pool: each is loaded once per
/// pool, however many routes use it.
type Loaded<'a> = HashMap<(PathBuf, &'a BTreeMap<String, String>, PoolKey), ComponentPre>;

/// What every component route of one generation is built with.
struct Shared<'g> {
    process: &'g Process,
    stores: &'g CapabilityStores,
    config: &'g Config,
    self_handle: &'g SelfHandle,
    /// The TLS settings of components' outgoing requests (`[server] outbound_ca` and the roots).
    outbound_tls: rustls::ClientConfig,
}

/// A component route: its component loaded (or taken from `loaded`), its grants and settings.
fn load_component_route<'a>(
    shared: &Shared<'_>,
    route: &'a RouteConfig,
    component: &Path,
    name: &str,
    admission: Arc<Admission>,
    loaded: &mut Loaded<'a>,
    components: &mut Vec<(PathBuf, Origin)>,
) -> anyhow::Result<ComponentRoute> {
    let Shared {
        process, config, ..
    } = shared;
    let path = config.resolve(component);
    let pool = process
        .pool(route.pool.as_ref())
        .with_context(|| name.to_string())?;
    let key = (path.clone(), &route.links, pool.key);
    let pre = match loaded.get(&key) {
        Some(pre) => pre.clone(),
        None => {
            let (pre, origin) = load_route_component(config, route, &path, &pool, process)
                .map_err(|e| with_build_hint(e, &path))
                .map_err(|e| with_p3_hint(e, process.wasi_p3))
                .with_context(|| name.to_string())?;
            // Once per file, whichever pools it is loaded into.
            if !components.iter().any(|(loaded, _)| *loaded == path) {
                components.push((path.clone(), origin));
            }
            loaded.insert(key, pre.clone());
            pre
        }
    };
    let grants = shared
        .stores
        .keyvalue
        .grants(&route.keyvalue)
        .with_context(|| name.to_string())?;
    // The pool is the route's own unless it is `[engine]`'s.
    let own_pool = (!Arc::ptr_eq(&pool, &process.pool)).then_some(pool);
    component_route(shared, route, component, pre, own_pool, grants, admission)
        .with_context(|| name.to_string())
}

/// The route's component, composed with the components it links to if it has `links`, compiled
/// and pre-instantiated.
fn load_route_component(
    config: &Config,
    route: &RouteConfig,
    path: &std::path::Path,
    pool: &Pool,
    process: &Process,
) -> anyhow::Result<(ComponentPre, Origin)> {
    let (engine, linker) = (&pool.engine, &pool.linker);
    let path = path.to_path_buf();
    let cache_dir = config.cache_dir();
    let in_context = |e: anyhow::Error| e.context(format!("component {}", path.display()));
    if route.links.is_empty() {
        let (component, origin) = component::load(engine, &path, cache_dir.as_deref())?;
        let pre = pre_instantiate(linker, &component, None, process.wasi_p3).map_err(in_context)?;
        return Ok((pre, origin));
    }
    let composition = linking::compose(&path, &route.links, &config.components, &|p| {
        config.resolve(p)
    })?;
    let providers: Vec<&str> = route.links.values().map(String::as_str).collect();
    let label = format!("{} linked to {}", path.display(), providers.join(", "));
    let (component, origin) =
        component::compile_cached(engine, &composition.bytes, &label, cache_dir.as_deref())?;
    let pre = pre_instantiate(linker, &component, Some(&composition), process.wasi_p3)
        .map_err(in_context)?;
    Ok((pre, origin))
}

/// Pre-instantiates a component; the errors say which import or export is the problem.
fn pre_instantiate(
    linker: &Linker<HostState>,
    component: &Component,
    composition: Option<&linking::Composition>,
    wasi_p3: bool,
) -> anyhow::Result<ComponentPre> {
    let exports_p3 = component
        .component_type()
        .exports(linker.engine())
        .any(|(name, _)| name.starts_with("wasi:http/handler@0.3"));
    if exports_p3 && !wasi_p3 {
        anyhow::bail!(
            "it is a WASI 0.3 component (it exports `wasi:http/handler@0.3.0`): set `wasi_p3 = \
             true` in [engine] to serve it (experimental; a restart applies it)"
        );
    }
    let pre = linker
        .instantiate_pre(component)
        .map_err(|e| unsupplied_import(component, linker.engine(), composition, &e))?;
    if let Ok(p2) = ProxyPre::new(pre.clone()) {
        return Ok(ComponentPre::P2(p2));
    }
    ServicePre::new(pre).map(ComponentPre::P3).map_err(|_| {
        let exports: Vec<String> = component
            .component_type()
            .exports(linker.engine())
            .map(|(name, _)| name.to_string())
            .collect();
        anyhow::anyhow!(
            "it exports neither `wasi:http/incoming-handler` (WASI 0.2) nor \
             `wasi:http/handler@0.3.0` (WASI 0.3), so it cannot serve HTTP (it exports: {})",
            if exports.is_empty() {
                "nothing".to_string()
            } else {
                exports.join(", ")
            }
        )
    })
}

/// Names the import that neither the host nor a link supplies, which component imports it, and
/// how to supply it.
fn unsupplied_import(
    component: &Component,
    engine: &wasmtime::Engine,
    composition: Option<&linking::Composition>,
    error: &wasmtime::Error,
) -> anyhow::Error {
    let text = format!("{error:#}");
    let import = component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name.to_string())
        .find(|name| text.contains(&format!("`{name}`")));
    let provided = "wasmgate provides WASI 0.2 and 0.3, wasi:http 0.2 and 0.3, wasi:keyvalue 0.2.0-draft and \
                    -draft2, wasi:blobstore 0.2.0-draft, wasi:logging 0.1.0-draft and \
                    wasi:config 0.2.0-draft";
    let Some(import) = import.filter(|_| text.contains("matching implementation was not found"))
    else {
        return anyhow::anyhow!(
            "it cannot be linked against what the gateway provides: {text} ({provided})"
        );
    };
    let importers = composition.map_or(&[][..], |c| c.importers_of(&import));
    let (who, add_to) = match importers {
        [] => ("it imports".to_string(), "the route".to_string()),
        [one] if one == linking::ROUTE_COMPONENT => {
            ("it imports".to_string(), "the route".to_string())
        }
        [one, ..] => (
            format!("{} imports", importers.join(" and ")),
            one.replace(linking::ROUTE_COMPONENT, "the route"),
        ),
    };
    anyhow::anyhow!(
        "{who} `{import}`, which neither the gateway nor a link supplies ({provided}; to link an \
         interface that another component exports, declare that one as [component.NAME] and \
         add `links = {{ \"{import}\" = \"NAME\" }}` to {add_to})"
    )
}

fn component_route(
    shared: &Shared<'_>,
    route: &RouteConfig,
    component: &Path,
    pre: ComponentPre,
    own_pool: Option<Arc<Pool>>,
    keyvalue: Grants,
    admission: Arc<Admission>,
) -> anyhow::Result<ComponentRoute> {
    let Shared {
        process,
        config,
        self_handle,
        outbound_tls,
        ..
    } = shared;
    if matches!(pre, ComponentPre::P2(_)) && route.max_concurrent_per_instance > 1 {
        anyhow::bail!(
            "max_concurrent_per_instance is for `wasi:http` 0.3 components, whose handler is \
             async; {} is a 0.2 component, whose instance runs one request at a time",
            component.display()
        );
    }
    let outbound = Allowlist {
        rules: route
            .allowed_outbound_hosts
            .iter()
            .map(|rule| OutboundRule::parse(rule).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<Vec<_>>>()?,
        admin: process.admin,
        private: if config.server.outbound_deny_private {
            PrivateAddresses::Deny
        } else {
            PrivateAddresses::Allow
        },
    };
    let max_memory = route
        .max_memory
        .unwrap_or(config.engine.max_instance_memory);
    let file = match config.pulled.get(&config.resolve(component)) {
        Some(reference) => reference.clone(),
        None => component.file_name().map_or_else(
            || component.display().to_string(),
            |f| f.to_string_lossy().into_owned(),
        ),
    };
    let providers: std::collections::BTreeSet<&String> = route.links.values().collect();
    let linked: String = providers.iter().map(|name| format!("+{name}")).collect();
    let settings = RouteSettings {
        name: route.label().into(),
        component: format!("{file}{linked}").into(),
        env: route
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        outbound: Arc::new(OutboundClient::new(
            Arc::new(outbound),
            outbound_tls.clone(),
        )),
        timeout: route.timeout.unwrap_or(config.server.request_timeout),
        max_memory: usize::try_from(max_memory).unwrap_or(usize::MAX),
        admission,
        instances: process.instances.clone(),
        keyvalue,
        blobstore: shared.stores.blobstore.grant(route.blobstore.as_deref())?,
        config: config_store::resolve(&route.config, |name| std::env::var(name).ok())?,
        self_handle: (*self_handle).clone(),
        log_budget: LogBudget::new(
            config.logging.max_guest_messages,
            config.logging.max_guest_bytes,
        ),
        reuse: route.reuse,
        max_concurrent_per_instance: route.max_concurrent_per_instance,
        own_pool,
    };
    let metrics = process.metrics.route(&route.label());
    Ok(ComponentRoute::new(settings, pre, metrics))
}

/// The route's admission state: the previous generation's, if its limits are the same (so a
/// reload does not double a route's concurrency while old requests finish), else a new one.
fn admission(route: &RouteConfig, previous: Option<&Arc<Admission>>) -> Arc<Admission> {
    let limits = AdmissionLimits {
        max_concurrency: route.max_concurrency,
        queue_size: route.queue_size.unwrap_or(route.max_concurrency),
        queue_timeout: route.queue_timeout,
    };
    match previous {
        Some(admission) if admission.limits() == limits => admission.clone(),
        _ => Arc::new(Admission::new(
            limits.max_concurrency,
            limits.queue_size,
            limits.queue_timeout,
        )),
    }
}

/// Names the setting that serves a WASI 0.3 component when it is off (the component does not
/// even compile without the component model's async features).
fn with_p3_hint(error: anyhow::Error, wasi_p3: bool) -> anyhow::Error {
    if !wasi_p3 && format!("{error:#}").contains("component model async feature") {
        error.context(
            "it is a WASI 0.3 component (it uses the component model's async features): set \
             `wasi_p3 = true` in [engine] to serve it (experimental; a restart applies it)",
        )
    } else {
        error
    }
}

/// Adds how to build the example guests to a "file not found" for one of them.
fn with_build_hint(error: anyhow::Error, path: &std::path::Path) -> anyhow::Error {
    let missing = error.chain().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::NotFound)
    });
    if missing && path.components().any(|c| c.as_os_str() == "wasm32-wasip2") {
        error.context(
            "the example guests are not built: run `rustup target add wasm32-wasip2` and then \
             `cargo build --release` in the guests/ directory (building wasmgate does this for you \
             once the target is installed)",
        )
    } else {
        error
    }
}
