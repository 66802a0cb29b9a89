//! What components can import, beyond computing: each capability is one module.
pub mod blobstore;
pub mod config_store;
pub mod keyvalue;
pub mod logging;
pub mod outbound_client;
pub mod outbound_http;
pub mod stdio;
pub mod wasi;
