//! The process's one wasmtime [`Engine`]: component model, async, epoch interruption, and the
//! pooling instance allocator sized from `[engine]`; and [`InstanceSlots`], the count that holds
//! every live instance to `[engine] max_instances`.
//!
//! The pool reserves address space for every slot up front: each linear memory slot is a 4 GiB
//! reservation plus a guard region (what lets compiled code skip bounds checks), and the pool has
//! [`MEMORIES_PER_INSTANCE`] of them per instance. Where that reservation fails (a `ulimit -v`, a
//! container's address-space limit) the start fails with a message that says how much was asked
//! for and which setting to lower. It used to fall back to allocating instances on demand, which
//! silently stopped enforcing `max_instances`; a gateway that is not what its config says should
//! not start.
//!
//! `max_instances` is enforced by [`InstanceSlots`] whatever the allocator: a request takes a
//! slot (without waiting) before its store is created and gives it back once the store is gone,
//! and a request that finds none gets the pool-exhaustion 503. With the pool this is the same
//! bound the pool has (the slot is given back after the pool's, so the pool's own limit is never
//! what answers); with `pooling = false` it is the only one.
//!
//! [`EpochTicker`] advances the engine's epoch on one thread. Every store asks to be interrupted
//! at the next tick, so a guest that computes without pause yields to the executor at least once
//! per tick and a request's deadline can take effect (see `runtime::instance`).

use super::reuse::IdleRegistry;
use crate::config::EngineConfig;
use anyhow::Context;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::{Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// Core instances (modules) one component may contain; a Rust `wasm32-wasip2` component has a
/// handful, components from other toolchains a few dozen, and a route's component composed with
/// the components it links to (`runtime::linking`) has the sum of theirs.
const MAX_CORE_INSTANCES_PER_COMPONENT: u32 = 100;
/// Memories and tables one component may define: one memory per linked component, usually.
const MAX_MEMORIES_PER_COMPONENT: u32 = 16;
const MAX_TABLES_PER_COMPONENT: u32 = 40;
/// Pool slots per instance slot, on average: a plain Rust component uses one memory and about
/// four core instances; a route linked to one other component twice that. The slots are
/// address space and bookkeeping, not committed memory.
const MEMORIES_PER_INSTANCE: u32 = 4;
const CORE_INSTANCES_PER_INSTANCE: u32 = 16;
const TABLES_PER_INSTANCE: u32 = 16;
/// Address space reserved for each linear memory, and the guard region after it: wasmtime's
/// defaults on 64-bit hosts, set explicitly so that the estimate in the pool's error is right.
/// A memory whose bounds are known to fit lets compiled code skip explicit bounds checks.
const MEMORY_RESERVATION: u64 = 4 << 30;
const MEMORY_GUARD: u64 = 32 << 20;

/// Which allocator the engine ended up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocator {
    Pooling,
    OnDemand,
}

/// Builds the engine: with the instance pool unless `[engine] pooling = false`. A pool that
/// cannot be created fails the start (module docs).
pub fn build_engine(config: &EngineConfig) -> anyhow::Result<(Engine, Allocator)> {
    if config.pooling {
        let engine = Engine::new(&wasmtime_config(
            Some(pooling_config(config)),
            config.wasi_p3,
        ))
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .with_context(|| pool_failure_hint(config))?;
        return Ok((engine, Allocator::Pooling));
    }
    let engine = Engine::new(&wasmtime_config(None, config.wasi_p3))
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .context("cannot create the wasm engine")?;
    Ok((engine, Allocator::OnDemand))
}

/// What the pool asks for and what to change when it cannot have it.
fn pool_failure_hint(config: &EngineConfig) -> String {
    if config.max_instance_memory > MEMORY_RESERVATION {
        return format!(
            "cannot create the instance pool: [engine] max_instance_memory = {} MiB is larger \
             than a pool slot (4 GiB): lower max_instance_memory to 4GiB or less, or set \
             [engine] pooling = false",
            config.max_instance_memory >> 20
        );
    }
    let memories = u64::from(config.max_instances).saturating_mul(MEMORIES_PER_INSTANCE.into());
    let total = memories.saturating_mul(MEMORY_RESERVATION + MEMORY_GUARD);
    format!(
        "cannot create the instance pool: [engine] max_instances = {} reserves about {} GiB of \
         address space up front ({memories} linear memory slots of 4 GiB and a 32 MiB guard \
         each, whatever max_instance_memory is, plus tables and stacks): lower [engine] \
         max_instances, raise the process's address-space limit (ulimit -v), or set [engine] \
         pooling = false to allocate instances on demand (max_instances is still enforced)",
        config.max_instances,
        total >> 30,
    )
}

fn wasmtime_config(pool: Option<PoolingAllocationConfig>, wasi_p3: bool) -> Config {
    let mut wasm = Config::new();
    wasm.wasm_component_model(true)
        .epoch_interruption(true)
        .memory_init_cow(true)
        .memory_reservation(MEMORY_RESERVATION)
        .memory_guard_size(MEMORY_GUARD)
        .parallel_compilation(true);
    if let Some(pool) = pool {
        wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    // `wasi:http` 0.3 components (`runtime::p3`): async exports and the streams and futures
    // their bodies are made of. Off, every store skips the bookkeeping of concurrent tasks
    // that each host call otherwise pays for.
    wasm.wasm_component_model_async(wasi_p3)
        .concurrency_support(wasi_p3);
    wasm
}

/// The slots of `[engine] max_instances`, shared by every route (module docs), and the idle
/// instances of routes with `reuse`, which keep theirs ([`super::reuse`]).
#[derive(Clone)]
pub struct InstanceSlots {
    free: Arc<Semaphore>,
    idle: IdleRegistry,
}

/// One live instance's slot; dropping it gives it back.
pub type InstanceSlot = OwnedSemaphorePermit;

impl InstanceSlots {
    pub fn new(max_instances: u32) -> InstanceSlots {
        let slots = usize::try_from(max_instances)
            .unwrap_or(usize::MAX)
            .min(Semaphore::MAX_PERMITS);
        InstanceSlots {
            free: Arc::new(Semaphore::new(slots)),
            idle: IdleRegistry::default(),
        }
    }

    /// A free slot, or `None` when `max_instances` instances are alive and none of them is
    /// idle; never waits. Idle instances are dropped, longest idle first, to free one.
    pub fn try_take(&self) -> Option<InstanceSlot> {
        loop {
            if let Ok(slot) = self.free.clone().try_acquire_owned() {
                return Some(slot);
            }
            if !self.idle.reclaim_one(None) {
                return None;
            }
        }
    }

    /// Whether `error` is the pool's own limit (memories, tables, core instances, which run out
    /// before `max_instances` does when idle instances hold some) and an idle instance in the
    /// same pool (`engine`'s) was dropped to make room: then creating the instance is worth one
    /// more try.
    pub fn reclaimed_after(&self, error: &wasmtime::Error, engine: &Engine) -> bool {
        error
            .downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
            .is_some()
            && self.idle.reclaim_one(Some(engine))
    }

    /// Where routes with `reuse` register their idle instances.
    pub fn idle(&self) -> &IdleRegistry {
        &self.idle
    }
}

fn pooling_config(config: &EngineConfig) -> PoolingAllocationConfig {
    let instances = config.max_instances;
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(instances)
        .total_core_instances(instances.saturating_mul(CORE_INSTANCES_PER_INSTANCE))
        .total_memories(instances.saturating_mul(MEMORIES_PER_INSTANCE))
        .total_tables(instances.saturating_mul(TABLES_PER_INSTANCE))
        .total_stacks(instances)
        .max_core_instances_per_component(MAX_CORE_INSTANCES_PER_COMPONENT)
        .max_memories_per_component(MAX_MEMORIES_PER_COMPONENT)
        .max_tables_per_component(MAX_TABLES_PER_COMPONENT)
        .max_memory_size(usize::try_from(config.max_instance_memory).unwrap_or(usize::MAX))
        .linear_memory_keep_resident(
            usize::try_from(config.linear_memory_keep_resident).unwrap_or(usize::MAX),
        )
        .table_keep_resident(usize::try_from(config.table_keep_resident).unwrap_or(usize::MAX))
        .decommit_batch_size(config.decommit_batch_size.max(1))
        .pagemap_scan(if config.pagemap_scan {
            Enabled::Auto
        } else {
            Enabled::No
        });
    if let Some(warm) = config.max_unused_warm_slots {
        pool.max_unused_warm_slots(warm);
    }
    pool
}

/// Advances an engine's epoch every `tick` on a dedicated thread until dropped.
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
}

impl EpochTicker {
    pub fn start(engine: Engine, tick: std::time::Duration) -> EpochTicker {
        let stop = Arc::new(AtomicBool::new(false));
        let started = std::thread::Builder::new()
            .name("wasmgate-epoch".into())
            .spawn({
                let stop = stop.clone();
                move || {
                    while !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(tick);
                        engine.increment_epoch();
                    }
                }
            })
            .is_ok();
        if !started {
            tracing::error!(
                "cannot start the epoch thread: guest timeouts will not interrupt busy guests"
            );
        }
        EpochTicker { stop }
    }
}

/// The thread ends at its next tick, and is not waited for: a route's own pool can be dropped
/// on a runtime thread, when the last generation using it ends.
impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_run_out_at_max_instances_and_come_back_when_dropped() {
        let slots = InstanceSlots::new(2);
        let a = slots.try_take().expect("first");
        let _b = slots.clone().try_take().expect("second, through a clone");
        assert!(slots.try_take().is_none());
        drop(a);
        assert!(slots.try_take().is_some());
    }

    #[test]
    fn the_pool_error_says_what_it_reserves_and_what_to_lower() {
        let config = EngineConfig {
            max_instances: 1000,
            ..EngineConfig::default()
        };
        let hint = pool_failure_hint(&config);
        assert!(hint.contains("max_instances = 1000"), "{hint}");
        assert!(hint.contains("about 16125 GiB"), "{hint}");
        assert!(hint.contains("4000 linear memory slots of 4 GiB"), "{hint}");
        assert!(hint.contains("lower [engine] max_instances"), "{hint}");
        assert!(hint.contains("pooling = false"), "{hint}");
        let large = EngineConfig {
            max_instance_memory: 8 << 30,
            ..config
        };
        let hint = pool_failure_hint(&large);
        assert!(
            hint.contains("lower max_instance_memory to 4GiB or less"),
            "{hint}"
        );
    }
}
