//! `wasi:logging/logging@0.1.0-draft`: a guest's log calls become the gateway's log events.
//!
//! Each `log(level, context, message)` is one `tracing` event under the `wasmgate::guest` target,
//! with the route, the request id, the context and the level, on the same pipeline (and in the
//! same format) as the gateway's own logs and the guest's stdout and stderr. `critical` is logged
//! at error level with `critical = true`.
//!
//! A per-request budget (messages and bytes, `[logging]` in the config) keeps one guest from
//! flooding the logs: past it, messages are dropped and counted in
//! `wasmgate_guest_log_messages_total{outcome="dropped"}`, and one warning says so.

use crate::metrics::{GUEST_LOG_LEVELS, RouteMetrics};
use wasmtime::component::{HasData, Linker};

mod bindings {
    wasmtime::component::bindgen!({
        path: "wit/deps/logging-0.1.0-draft",
        world: "wasi:logging/imports",
    });
}

use bindings::wasi::logging::logging::{self, Level};

/// What one request may still log.
#[derive(Debug, Clone)]
pub struct LogBudget {
    messages: u32,
    bytes: u64,
    dropped: u32,
}

impl LogBudget {
    pub fn new(messages: u32, bytes: u64) -> LogBudget {
        LogBudget {
            messages,
            bytes,
            dropped: 0,
        }
    }

    /// Takes a message of `len` bytes from the budget; false if it does not fit.
    fn take(&mut self, len: usize) -> bool {
        let len = len as u64;
        if self.messages == 0 || len > self.bytes {
            self.dropped += 1;
            return false;
        }
        self.messages -= 1;
        self.bytes -= len;
        true
    }
}

/// What the host function sees of a request.
pub struct LoggingView<'a> {
    /// The route's metric handles; also its name.
    pub metrics: &'a RouteMetrics,
    /// The route's component, as [`RouteSettings::component`](crate::runtime::instance::RouteSettings) names it.
    pub component: &'a str,
    pub request_id: &'a str,
    pub budget: &'a mut LogBudget,
}

struct Logging;

impl HasData for Logging {
    type Data<'a> = LoggingView<'a>;
}

pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    view: fn(&mut T) -> LoggingView<'_>,
) -> anyhow::Result<()> {
    logging::add_to_linker::<T, Logging>(linker, view)?;
    Ok(())
}

/// The level's index in [`GUEST_LOG_LEVELS`], which also holds its name.
fn level_index(level: Level) -> usize {
    match level {
        Level::Trace => 0,
        Level::Debug => 1,
        Level::Info => 2,
        Level::Warn => 3,
        Level::Error => 4,
        Level::Critical => 5,
    }
}

impl logging::Host for LoggingView<'_> {
    fn log(&mut self, level: Level, context: String, message: String) {
        let index = level_index(level);
        let name = GUEST_LOG_LEVELS[index];
        let route: &str = &self.metrics.route;
        if !self.budget.take(context.len() + message.len()) {
            self.metrics.guest_log(index, false);
            if self.budget.dropped == 1 {
                tracing::warn!(
                    target: "wasmgate::guest",
                    route, component = self.component, request_id = self.request_id,
                    "the component used up its log budget for this request; further messages are dropped"
                );
            }
            return;
        }
        self.metrics.guest_log(index, true);
        let (component, request_id, context) = (self.component, self.request_id, context.as_str());
        match level {
            Level::Trace => {
                tracing::trace!(target: "wasmgate::guest", route, component, request_id, context, level = name, "{message}")
            }
            Level::Debug => {
                tracing::debug!(target: "wasmgate::guest", route, component, request_id, context, level = name, "{message}")
            }
            Level::Info => {
                tracing::info!(target: "wasmgate::guest", route, component, request_id, context, level = name, "{message}")
            }
            Level::Warn => {
                tracing::warn!(target: "wasmgate::guest", route, component, request_id, context, level = name, "{message}")
            }
            Level::Error => {
                tracing::error!(target: "wasmgate::guest", route, component, request_id, context, level = name, "{message}")
            }
            Level::Critical => {
                tracing::error!(target: "wasmgate::guest", route, component, request_id, context, level = name, critical = true, "{message}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_counts_messages_and_bytes() {
        let mut budget = LogBudget::new(2, 10);
        assert!(budget.take(4));
        assert!(!budget.take(7), "over the bytes left");
        assert!(budget.take(6));
        assert!(!budget.take(0), "over the messages");
        assert_eq!(budget.dropped, 2);
    }
}
