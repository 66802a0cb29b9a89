//! Instances kept between requests, for the routes that opt in with `reuse`
//! ([`crate::config::reuse`]).
//!
//! A route's instance that answered a request cleanly comes back here ([`IdleInstances::put`])
//! with its store, and the route's next request takes it ([`IdleInstances::take`]) instead of
//! instantiating: the most recently used first, since its memory is still warm in the caches.
//! An instance is retired (its store dropped) once it has served `max_requests` or lived
//! `max_age`, and, idle, after `idle_timeout`: a sweeper task per route drops those, so an idle
//! route gives its memory back without waiting for a request.
//!
//! "Cleanly" is decided by the request path (`runtime::instance`): the handler returned within
//! the deadline, without trapping and without the memory limit refusing a growth, and it left
//! nothing of the exchange in the store ([`super::response::Leftover`]). A guest that kept its
//! response body open, or its response-outparam unset, would otherwise hold its client until
//! the instance was retired; such an instance is dropped at once, which ends that response as it
//! does without reuse.
//!
//! An idle instance keeps its slot of `[engine] max_instances`. So that instances idling on one
//! route never turn away another route's requests, a request that finds no free slot has the
//! longest-idle instance of any route dropped ([`IdleRegistry::reclaim_one`]) and tries again;
//! one whose instantiation hit its pool's own limits has the longest-idle instance of the same
//! pool dropped (routes with a `pool` of their own have theirs).

use super::engine::InstanceSlot;
use super::instance::HostState;
use crate::config::reuse::ReuseConfig;
use crate::metrics::RouteMetrics;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Instant;
use wasmtime::Store;
use wasmtime_wasi_http::p2::bindings::Proxy;

/// An instance, and what decides when it retires.
pub struct Kept {
    pub proxy: Proxy,
    /// Requests it has served.
    pub served: u32,
    /// When it was instantiated.
    pub born: Instant,
}

/// An idle instance with its store and slot.
pub struct Warm {
    pub store: Store<HostState>,
    pub kept: Kept,
    /// Declared last, so it is given back only after the store is dropped.
    pub slot: InstanceSlot,
}

struct Idle {
    warm: Warm,
    since: Instant,
}

/// One route's idle instances.
pub struct IdleInstances {
    /// The engine (and so the pool) the instances live in.
    engine: wasmtime::Engine,
    policy: ReuseConfig,
    metrics: Arc<RouteMetrics>,
    /// Oldest first; taken from the back.
    idle: Mutex<Vec<Idle>>,
}

impl IdleInstances {
    pub fn new(
        engine: wasmtime::Engine,
        policy: ReuseConfig,
        metrics: Arc<RouteMetrics>,
    ) -> Arc<IdleInstances> {
        Arc::new(IdleInstances {
            engine,
            policy,
            metrics,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// The most recently used idle instance that may still serve, if there is one. Instances
    /// found expired on the way are dropped (after the lock is let go).
    pub fn take(&self) -> Option<Warm> {
        let now = Instant::now();
        let mut expired = Vec::new();
        let found = {
            let mut idle = self.lock();
            loop {
                match idle.pop() {
                    None => break None,
                    Some(entry) if self.usable(&entry, now) => break Some(entry.warm),
                    Some(entry) => expired.push(entry),
                }
            }
        };
        let removed = expired.len() + usize::from(found.is_some());
        self.metrics.instances_idle.sub(removed as i64);
        drop(expired);
        found
    }

    /// Keeps an instance that has answered a request cleanly, unless it has served
    /// `max_requests` or lived `max_age`: then it is dropped here.
    pub fn put(&self, mut warm: Warm) {
        let kept = &mut warm.kept;
        kept.served = kept.served.saturating_add(1);
        if kept.served >= self.policy.max_requests || kept.born.elapsed() >= self.policy.max_age {
            return;
        }
        let entry = Idle {
            warm,
            since: Instant::now(),
        };
        // Counted before it can be taken, so the gauge never dips below the truth.
        self.metrics.instances_idle.inc();
        self.lock().push(entry);
    }

    /// Drops the instances idle past `idle_timeout` or older than `max_age`.
    pub fn sweep(&self) {
        let now = Instant::now();
        let expired: Vec<Idle> = {
            let mut idle = self.lock();
            let (keep, expired) = std::mem::take(&mut *idle)
                .into_iter()
                .partition(|entry| self.usable(entry, now));
            *idle = keep;
            expired
        };
        self.metrics.instances_idle.sub(expired.len() as i64);
    }

    /// Since when the longest-idle instance has been idle.
    fn oldest(&self) -> Option<Instant> {
        self.lock().first().map(|entry| entry.since)
    }

    /// Drops the longest-idle instance; whether there was one.
    fn evict_oldest(&self) -> bool {
        let evicted = {
            let mut idle = self.lock();
            (!idle.is_empty()).then(|| idle.remove(0))
        };
        if evicted.is_some() {
            self.metrics.instances_idle.dec();
        }
        evicted.is_some()
    }

    fn usable(&self, entry: &Idle, now: Instant) -> bool {
        now.duration_since(entry.since) < self.policy.idle_timeout
            && now.duration_since(entry.warm.kept.born) < self.policy.max_age
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Idle>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sweeps the route's idle instances every half `idle_timeout` while the route lives (it
    /// holds only a weak reference). Outside a runtime (`wasmgate check`) nothing is started:
    /// nothing is served there either.
    pub fn start_sweeper(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let period = (self.policy.idle_timeout / 2).max(std::time::Duration::from_millis(10));
        let idle = Arc::downgrade(self);
        runtime.spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Some(idle) = idle.upgrade() else { break };
                idle.sweep();
            }
        });
    }
}

impl Drop for IdleInstances {
    fn drop(&mut self) {
        let left = self
            .idle
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        self.metrics.instances_idle.sub(left as i64);
    }
}

/// Every route's idle instances, so a request short of a slot can free one.
#[derive(Clone, Default)]
pub struct IdleRegistry(Arc<Mutex<Vec<Weak<IdleInstances>>>>);

impl IdleRegistry {
    pub fn register(&self, idle: &Arc<IdleInstances>) {
        let mut routes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        routes.retain(|route| route.strong_count() > 0);
        routes.push(Arc::downgrade(idle));
    }

    /// Drops the longest-idle instance of every route's, or of the routes whose instances live
    /// in `engine`'s pool when it is given (what frees room in that pool); whether one was
    /// dropped (and its slot of `max_instances` given back).
    pub fn reclaim_one(&self, engine: Option<&wasmtime::Engine>) -> bool {
        let routes: Vec<Arc<IdleInstances>> = {
            let mut routes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            routes.retain(|route| route.strong_count() > 0);
            routes
                .iter()
                .filter_map(Weak::upgrade)
                .filter(|route| {
                    engine.is_none_or(|engine| wasmtime::Engine::same(engine, &route.engine))
                })
                .collect()
        };
        let mut by_idleness: Vec<(Instant, &Arc<IdleInstances>)> = routes
            .iter()
            .filter_map(|route| Some((route.oldest()?, route)))
            .collect();
        by_idleness.sort_by_key(|(since, _)| *since);
        // Another request may take the one found first: then the next one.
        by_idleness.iter().any(|(_, route)| route.evict_oldest())
    }
}
