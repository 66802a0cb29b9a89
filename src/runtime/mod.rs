//! Running components: the engine, loading and caching, admission, and per-request instances.
pub mod admission;
pub mod component;
pub mod engine;
pub mod instance;
pub mod response;
