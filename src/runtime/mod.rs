//! Running components: the engine, loading and caching, pulling from OCI registries, linking
//! components to each other, admission, and per-request instances.
pub mod admission;
pub mod component;
pub mod engine;
pub mod footprint;
pub mod instance;
pub mod linking;
pub mod loader;
pub mod oci;
pub mod p3;
pub mod response;
pub mod reuse;
