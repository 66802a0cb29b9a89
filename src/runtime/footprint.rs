//! What a component's linear memories start with, read from its binary: the bytes of its data
//! segments (an interpreter's snapshot, for componentize-py and componentize-js, is most of them)
//! and the memories' sizes at instantiation. `wasmgate check` prints them with the pool settings
//! measured to serve such a component best (`config::pool`, docs/perf.md "Hello components from
//! other toolchains").

use crate::config::EngineConfig;
use anyhow::Context;
use std::path::Path;
use wasmparser::{Parser, Payload};

/// The memories of every core module in a component, summed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    /// Bytes of data segments: what instantiation maps in, and a reset puts back.
    pub data: u64,
    /// Bytes of linear memory at instantiation.
    pub memory: u64,
}

impl Footprint {
    /// Reads the component (or core module) at `path`.
    pub fn read(path: &Path) -> anyhow::Result<Footprint> {
        let bytes = super::component::read_binary(path)?;
        Footprint::of(&bytes).with_context(|| format!("cannot read {}", path.display()))
    }

    pub fn of(bytes: &[u8]) -> anyhow::Result<Footprint> {
        let mut footprint = Footprint { data: 0, memory: 0 };
        for payload in Parser::new(0).parse_all(bytes) {
            match payload? {
                Payload::DataSection(reader) => {
                    for data in reader {
                        footprint.data += data?.data.len() as u64;
                    }
                }
                Payload::MemorySection(reader) => {
                    for memory in reader {
                        let memory = memory?;
                        let page = 1u64 << memory.page_size_log2.unwrap_or(16);
                        footprint.memory = footprint
                            .memory
                            .saturating_add(memory.initial.saturating_mul(page));
                    }
                }
                _ => {}
            }
        }
        Ok(footprint)
    }

    /// The `pool` setting to try for this component, when `[engine]`'s is not it: a component
    /// whose data is more than `[engine]` keeps resident (an interpreter's snapshot) was served
    /// 1.3x-2.7x faster by resetting a resident range that covers it wholesale than by
    /// `PAGEMAP_SCAN` (measured on componentize-py and componentize-js hellos); a small one is
    /// served best by `[engine]`'s defaults.
    pub fn suggested_pool(&self, engine: &EngineConfig) -> Option<String> {
        if !engine.pooling || self.data <= engine.linear_memory_keep_resident {
            return None;
        }
        let keep_mib = self.data.div_ceil(1 << 20).next_power_of_two().max(16);
        Some(format!(
            "pool = {{ pagemap_scan = false, linear_memory_keep_resident = \"{keep_mib}MiB\" }}"
        ))
    }
}

impl std::fmt::Display for Footprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
        write!(
            f,
            "data {:.1} MiB, memory at start {:.1} MiB",
            mib(self.data),
            mib(self.memory)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_and_memory_are_summed_over_nested_modules() {
        let component = wat::parse_str(
            r#"(component
                (core module (memory 2) (data (i32.const 0) "abcd") (data (i32.const 8) "xy"))
                (core module (memory 1))
            )"#,
        )
        .unwrap();
        let footprint = Footprint::of(&component).unwrap();
        assert_eq!(
            footprint,
            Footprint {
                data: 6,
                memory: 3 << 16
            }
        );
        let engine = EngineConfig::default();
        assert_eq!(footprint.suggested_pool(&engine), None);
        let snapshot = Footprint {
            data: 20 << 20,
            memory: 40 << 20,
        };
        assert_eq!(
            snapshot.suggested_pool(&engine).as_deref(),
            Some(r#"pool = { pagemap_scan = false, linear_memory_keep_resident = "32MiB" }"#)
        );
        let off = EngineConfig {
            pooling: false,
            ..engine
        };
        assert_eq!(snapshot.suggested_pool(&off), None);
    }
}
