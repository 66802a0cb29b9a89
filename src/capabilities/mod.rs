//! What components can import, beyond computing: each capability is one module.
pub mod keyvalue;
pub mod outbound_http;
pub mod stdio;
pub mod wasi;
