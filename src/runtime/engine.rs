//! The process's one wasmtime [`Engine`]: component model, async, epoch interruption, and the
//! pooling instance allocator sized from `[engine]`.
//!
//! The pool reserves address space for every slot up front. Where that reservation fails (a
//! `ulimit -v`, a small 32-bit-like address space) the engine falls back to allocating instances
//! on demand and says so in the log: slower, but serving.
//!
//! [`EpochTicker`] advances the engine's epoch on one thread. Every store asks to be interrupted
//! at the next tick, so a guest that computes without pause yields to the executor at least once
//! per tick and a request's deadline can take effect (see `runtime::instance`).

use crate::config::EngineConfig;
use anyhow::Context;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
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

/// Which allocator the engine ended up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocator {
    Pooling,
    OnDemand,
}

/// Builds the engine; falls back to on-demand allocation if the pool cannot be reserved.
pub fn build_engine(config: &EngineConfig) -> anyhow::Result<(Engine, Allocator)> {
    if config.pooling {
        match Engine::new(&wasmtime_config(Some(pooling_config(config)))) {
            Ok(engine) => return Ok((engine, Allocator::Pooling)),
            Err(e) => tracing::warn!(
                error = %format!("{e:#}"),
                "cannot reserve the pooling allocator's address space; allocating instances on \
                 demand instead (lower [engine] max_instances or max_instance_memory to use the pool)"
            ),
        }
    }
    let engine = Engine::new(&wasmtime_config(None))
        .map_err(|e| anyhow::anyhow!("{e:#}"))
        .context("cannot create the wasm engine")?;
    Ok((engine, Allocator::OnDemand))
}

fn wasmtime_config(pool: Option<PoolingAllocationConfig>) -> Config {
    let mut wasm = Config::new();
    wasm.wasm_component_model(true)
        .epoch_interruption(true)
        .memory_init_cow(true)
        .parallel_compilation(true);
    if let Some(pool) = pool {
        wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    wasm
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
    thread: Option<JoinHandle<()>>,
}

impl EpochTicker {
    pub fn start(engine: Engine, tick: std::time::Duration) -> EpochTicker {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::Builder::new()
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
            .ok();
        if thread.is_none() {
            tracing::error!(
                "cannot start the epoch thread: guest timeouts will not interrupt busy guests"
            );
        }
        EpochTicker { stop, thread }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
