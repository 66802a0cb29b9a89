//! wasmgate: an edge HTTP gateway that serves WebAssembly components.
//!
//! The binary (`main.rs`) is a thin CLI over this library, which the integration tests share.
//! A request travels: [`server`] (TCP, HTTP/1.1 and HTTP/2) ─► [`gateway`] (limits, routing via
//! [`router`]) ─► [`runtime`] (admission, a fresh instance per request) ─► the component, which
//! reaches the outside world only through [`capabilities`]. [`admin`] and [`metrics`] are the
//! operator's view.

pub mod admin;
pub mod body;
pub mod capabilities;
pub mod config;
pub mod gateway;
pub mod generation;
pub mod guards;
pub mod metrics;
pub mod router;
pub mod runtime;
pub mod server;
