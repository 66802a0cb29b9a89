//! `[blobstore.NAME]`: named blob stores that routes' components keep containers of objects in
//! (`wasi:blobstore`), and the checks their settings get when the config loads.

use super::units;
use anyhow::bail;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// Which backend a blob store lives on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlobBackend {
    /// In the gateway's memory, shared by every route granted the store, gone on restart.
    Memory,
    /// A directory: one subdirectory per container, one file per object.
    Fs,
    /// NATS JetStream object stores: one bucket per container.
    Nats,
    /// An S3-compatible service: one bucket, one key prefix per container.
    S3,
}

/// `[blobstore.NAME]`: one named store.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobStoreConfig {
    pub backend: BlobBackend,
    /// fs: the directory (created if missing).
    pub path: Option<PathBuf>,
    /// nats: the server, e.g. `nats://127.0.0.1:4222`.
    pub url: Option<String>,
    /// s3: the service's URL, e.g. `http://127.0.0.1:8333`; absent, AWS's endpoint for `region`.
    pub endpoint: Option<String>,
    /// s3: the region (default `us-east-1`).
    pub region: Option<String>,
    /// s3: the bucket every container of the store lives in (it must exist).
    pub bucket: Option<String>,
    /// s3: a key prefix for the store's containers; nats: the object store buckets' name prefix
    /// (default `wasmgate-NAME`).
    pub prefix: Option<String>,
    /// s3: the access key; `${VAR}` reads the gateway's environment. Absent, the standard AWS
    /// environment variables (`AWS_ACCESS_KEY_ID`, ...) are used.
    pub access_key_id: Option<String>,
    /// s3: the secret key, as `access_key_id`.
    pub secret_access_key: Option<String>,
    /// The largest object a guest may write.
    #[serde(default = "default_max_object_size", deserialize_with = "units::size")]
    pub max_object_size: u64,
    /// The most containers the store may hold.
    #[serde(default = "default_max_containers")]
    pub max_containers: u64,
    /// The longest container or object name, in bytes.
    #[serde(default = "default_max_name_length")]
    pub max_name_length: usize,
    /// memory: the most bytes the store's objects may take together.
    #[serde(default, deserialize_with = "units::opt_size")]
    pub max_total_size: Option<u64>,
    /// How long one backend call may take before the guest gets an error (a streamed read or
    /// write is bounded per chunk, not as a whole).
    #[serde(default = "default_timeout", deserialize_with = "units::duration")]
    pub timeout: Duration,
}

fn default_max_object_size() -> u64 {
    1 << 30
}

fn default_max_containers() -> u64 {
    1000
}

fn default_max_name_length() -> usize {
    255
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// `[blobstore.NAME] max_total_size` of a memory store when it is absent.
pub const DEFAULT_MEMORY_MAX_TOTAL_SIZE: u64 = 256 << 20;

impl BlobStoreConfig {
    /// Checks that the store has the settings its backend needs and none it ignores.
    pub fn check(&self, name: &str) -> anyhow::Result<()> {
        use BlobBackend::*;
        let backend = self.backend;
        let needs = |key: &str, present: bool, required: bool, allowed: bool| {
            if required && !present {
                bail!("[blobstore.{name}]: a {backend:?} store needs `{key}`");
            }
            if present && !allowed {
                bail!("[blobstore.{name}]: `{key}` does not apply to a {backend:?} store");
            }
            Ok(())
        };
        needs("path", self.path.is_some(), backend == Fs, backend == Fs)?;
        needs("url", self.url.is_some(), backend == Nats, backend == Nats)?;
        needs(
            "bucket",
            self.bucket.is_some(),
            backend == S3,
            backend == S3,
        )?;
        for (key, present) in [
            ("endpoint", self.endpoint.is_some()),
            ("region", self.region.is_some()),
            ("access_key_id", self.access_key_id.is_some()),
            ("secret_access_key", self.secret_access_key.is_some()),
        ] {
            needs(key, present, false, backend == S3)?;
        }
        needs(
            "prefix",
            self.prefix.is_some(),
            false,
            matches!(backend, S3 | Nats),
        )?;
        needs(
            "max_total_size",
            self.max_total_size.is_some(),
            false,
            backend == Memory,
        )?;
        if self.access_key_id.is_some() != self.secret_access_key.is_some() {
            bail!("[blobstore.{name}]: give both access_key_id and secret_access_key, or neither");
        }
        if self.max_object_size == 0 || self.max_containers == 0 || self.max_name_length == 0 {
            bail!(
                "[blobstore.{name}]: max_object_size, max_containers and max_name_length must \
                 be at least 1"
            );
        }
        if self.max_total_size == Some(0) {
            bail!("[blobstore.{name}]: max_total_size must be at least 1");
        }
        if self.timeout.is_zero() {
            bail!("[blobstore.{name}]: timeout must be longer than zero");
        }
        if backend == Nats
            && let Some(prefix) = &self.prefix
            && !prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            bail!(
                "[blobstore.{name}]: a nats prefix may hold only letters, digits, `-` and `_` \
                 (it starts object store bucket names)"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> anyhow::Result<BlobStoreConfig> {
        let store: BlobStoreConfig = toml::from_str(text)?;
        store.check("b")?;
        Ok(store)
    }

    #[test]
    fn each_backend_needs_its_own_settings() {
        assert!(parse("backend = \"memory\"").is_ok());
        assert!(parse("backend = \"fs\"").is_err());
        assert!(parse("backend = \"fs\"\npath = \"blobs\"").is_ok());
        assert!(parse("backend = \"nats\"\nurl = \"nats://127.0.0.1\"").is_ok());
        assert!(parse("backend = \"s3\"\nbucket = \"b\"").is_ok());
        let wrong = parse("backend = \"memory\"\nbucket = \"b\"").unwrap_err();
        assert!(
            wrong.to_string().contains("`bucket` does not apply"),
            "{wrong}"
        );
        let half = parse("backend = \"s3\"\nbucket = \"b\"\naccess_key_id = \"k\"").unwrap_err();
        assert!(half.to_string().contains("both"), "{half}");
        let prefix = parse("backend = \"nats\"\nurl = \"nats://x\"\nprefix = \"a.b\"").unwrap_err();
        assert!(prefix.to_string().contains("prefix"), "{prefix}");
    }

    #[test]
    fn limits_have_defaults_and_must_be_positive() {
        let store = parse("backend = \"memory\"").unwrap();
        assert_eq!(store.max_object_size, 1 << 30);
        assert_eq!(store.max_name_length, 255);
        assert!(parse("backend = \"memory\"\nmax_containers = 0").is_err());
        assert!(parse("backend = \"memory\"\ntimeout = \"0s\"").is_err());
        assert!(parse("backend = \"memory\"\nmax_object_size = \"64MiB\"").is_ok());
    }
}
