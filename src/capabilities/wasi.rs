//! The WASI 0.2 policy every component runs under.
//!
//! * cli: the route's `env`, no arguments, stdin empty, stdout and stderr into the log under
//!   the request's log budget ([`super::stdio`]);
//! * filesystem: no preopened directories, so there is no file a guest can open;
//! * sockets: every address is denied and name lookup is off, so a guest reaches the network
//!   only through `wasi:http`, under the route's allow-list;
//! * clocks and random: the host's.

use super::logging::RequestLog;
use super::stdio::{GuestOutput, Stream};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder};

/// Builds the WASI context for one request of one route; its stdout and stderr log under the
/// request's log budget.
pub fn guest_context(env: &[(String, String)], log: &RequestLog) -> WasiCtx {
    let mut builder = WasiCtxBuilder::new();
    builder
        .envs(env)
        .stdout(GuestOutput::new(Stream::Stdout, log.clone()))
        .stderr(GuestOutput::new(Stream::Stderr, log.clone()))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .socket_addr_check(|_, _| Box::pin(async { false }));
    builder.build()
}
