//! A component route's own pool tuning: `pool = { pagemap_scan = false,
//! linear_memory_keep_resident = "16MiB" }` on a `[[route]]`.
//!
//! The pooling allocator's knobs decide what resetting a used instance's memory costs, and the
//! best setting depends on the guest: a small Rust component dirties a few pages per request and
//! is served best with `PAGEMAP_SCAN` (only dirtied pages are reset), while an interpreter's
//! snapshot (componentize-py, componentize-js) dirties megabytes, and resetting a 16 MiB
//! resident range wholesale is cheaper than scanning it page by page (docs/perf.md, "Hello
//! components from other toolchains": 2.2-2.7x and 1.3-1.4x the requests/s in two runs).
//!
//! wasmtime applies these settings per engine, so routes whose tuning differs from
//! `[engine]`'s get an engine and a pool of their own (`runtime::loader::Pool`), one per
//! distinct tuning, each reserving the address space of `[engine] max_instances` slots, for as
//! long as a route of a live generation uses it. `[engine] max_instances` still counts every
//! live instance of every pool together.

use super::EngineConfig;
use super::units;
use serde::Deserialize;

/// Distinct pools a config may ask for, `[engine]`'s included: each reserves address space for
/// `[engine] max_instances` instances (16 TiB at the default 1,000).
pub const MAX_POOLS: usize = 4;

/// The `[engine]` pool settings a route may set for itself; what it leaves out is `[engine]`'s.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolTuning {
    pub pagemap_scan: Option<bool>,
    #[serde(default, deserialize_with = "units::opt_size")]
    pub linear_memory_keep_resident: Option<u64>,
    #[serde(default, deserialize_with = "units::opt_size")]
    pub table_keep_resident: Option<u64>,
    pub decommit_batch_size: Option<usize>,
    pub max_unused_warm_slots: Option<u32>,
}

impl PoolTuning {
    /// `engine` with this tuning's settings in place of its own.
    pub fn apply(&self, engine: &EngineConfig) -> EngineConfig {
        let mut tuned = engine.clone();
        if let Some(scan) = self.pagemap_scan {
            tuned.pagemap_scan = scan;
        }
        if let Some(bytes) = self.linear_memory_keep_resident {
            tuned.linear_memory_keep_resident = bytes;
        }
        if let Some(bytes) = self.table_keep_resident {
            tuned.table_keep_resident = bytes;
        }
        if let Some(batch) = self.decommit_batch_size {
            tuned.decommit_batch_size = batch;
        }
        if let Some(warm) = self.max_unused_warm_slots {
            tuned.max_unused_warm_slots = Some(warm);
        }
        tuned
    }
}

/// What tells one pool from another: the pool settings of an `[engine]`, with a route's tuning
/// applied or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pagemap_scan: bool,
    linear_memory_keep_resident: u64,
    table_keep_resident: u64,
    decommit_batch_size: usize,
    max_unused_warm_slots: Option<u32>,
}

impl PoolKey {
    pub fn of(engine: &EngineConfig) -> PoolKey {
        PoolKey {
            pagemap_scan: engine.pagemap_scan,
            linear_memory_keep_resident: engine.linear_memory_keep_resident,
            table_keep_resident: engine.table_keep_resident,
            // 0 is taken as 1 (`runtime::engine`): the same pool.
            decommit_batch_size: engine.decommit_batch_size.max(1),
            max_unused_warm_slots: engine.max_unused_warm_slots,
        }
    }
}

impl std::fmt::Display for PoolKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pagemap_scan = {}, linear_memory_keep_resident = {} KiB, table_keep_resident = {} \
             KiB, decommit_batch_size = {}",
            self.pagemap_scan,
            self.linear_memory_keep_resident >> 10,
            self.table_keep_resident >> 10,
            self.decommit_batch_size
        )?;
        if let Some(warm) = self.max_unused_warm_slots {
            write!(f, ", max_unused_warm_slots = {warm}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tuning_overrides_only_what_it_sets() {
        let engine = EngineConfig::default();
        let tuning = PoolTuning {
            pagemap_scan: Some(false),
            linear_memory_keep_resident: Some(16 << 20),
            ..PoolTuning::default()
        };
        let tuned = tuning.apply(&engine);
        assert!(!tuned.pagemap_scan);
        assert_eq!(tuned.linear_memory_keep_resident, 16 << 20);
        assert_eq!(tuned.table_keep_resident, engine.table_keep_resident);
        assert_ne!(PoolKey::of(&tuned), PoolKey::of(&engine));
        assert_eq!(
            PoolKey::of(&PoolTuning::default().apply(&engine)),
            PoolKey::of(&engine),
            "an empty tuning is [engine]'s pool"
        );
    }
}
