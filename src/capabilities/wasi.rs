//! The WASI 0.2 policy every component runs under.
//!
//! * cli: the route's `env`, no arguments, stdin empty, stdout and stderr into the log
//!   ([`super::stdio`]);
//! * filesystem: no preopened directories, so there is no file a guest can open;
//! * sockets: every address is denied and name lookup is off, so a guest reaches the network
//!   only through `wasi:http`, under the route's allow-list;
//! * clocks and random: the host's.

use super::stdio::{GuestOutput, Stream};
use std::sync::Arc;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder};

/// Builds the WASI context for one request of one route.
pub fn guest_context(
    env: &[(String, String)],
    route: &Arc<str>,
    component: &Arc<str>,
    request_id: &Arc<str>,
) -> WasiCtx {
    let mut builder = WasiCtxBuilder::new();
    builder
        .envs(env)
        .stdout(GuestOutput::new(
            Stream::Stdout,
            route.clone(),
            component.clone(),
            request_id.clone(),
        ))
        .stderr(GuestOutput::new(
            Stream::Stderr,
            route.clone(),
            component.clone(),
            request_id.clone(),
        ))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false)
        .socket_addr_check(|_, _| Box::pin(async { false }));
    builder.build()
}
