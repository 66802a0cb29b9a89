//! wasmgate: an edge HTTP gateway that serves WebAssembly components.
//!
//! The binary (`main.rs`) is a thin CLI over this library, which the integration tests share.
//! A request travels: [`server`] (TCP, HTTP/1.1 and HTTP/2) ─► [`gateway`] (limits, routing via
//! [`router`]) ─► [`runtime`] (admission, a fresh instance per request) ─► the component, which
//! reaches the outside world only through [`capabilities`]. [`admin`] and [`metrics`] are the
//! operator's view.

pub mod access_log;
pub mod admin;
pub mod body;
pub mod capabilities;
pub mod client_identity;
pub mod config;
pub mod connection_info;
pub mod gateway;
pub mod generation;
pub mod guards;
pub mod host_pattern;
pub mod metrics;
pub mod middleware;
pub mod otel;
pub mod proxy;
pub mod reload;
pub mod router;
pub mod runtime;
pub mod server;
pub mod split;
pub mod tls;
