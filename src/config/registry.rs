//! `[registry]`: how components named `oci://...` are pulled from OCI registries (see
//! `runtime::oci`): which registries speak plain HTTP, credentials per registry, and the bounds
//! on a pull.

use super::units;
use anyhow::bail;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// `[registry]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// Registries (`host[:port]`) reached over plain HTTP; every other one over HTTPS. For a
    /// registry on loopback or a private network only.
    pub insecure: Vec<String>,
    /// How long the registry may take to resolve one reference, and again to send its
    /// component.
    #[serde(deserialize_with = "units::duration")]
    pub timeout: Duration,
    /// The largest component a registry may hand over; a larger layer is refused before it is
    /// downloaded.
    #[serde(deserialize_with = "units::size")]
    pub max_component_size: u64,
    /// Credentials per registry (`[registry.auth."ghcr.io"]`), ahead of the docker config file.
    pub auth: BTreeMap<String, RegistryCredentials>,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            insecure: Vec::new(),
            timeout: Duration::from_secs(120),
            max_component_size: 256 << 20,
            auth: BTreeMap::new(),
        }
    }
}

/// `[registry.auth."HOST"]`: a user name and password (or token) for one registry; `${VAR}`
/// reads the gateway's environment, so secrets stay out of the file.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryCredentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl RegistryConfig {
    /// Checks what serde cannot.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.timeout.is_zero() {
            bail!("[registry] timeout must be more than 0");
        }
        if self.max_component_size == 0 {
            bail!("[registry] max_component_size must be more than 0");
        }
        for host in self.insecure.iter().chain(self.auth.keys()) {
            if host.is_empty() || host.contains('/') {
                bail!(
                    "[registry] `{host}` is not a registry: give its host and optional port, \
                     as in `registry.example.com` or `127.0.0.1:5000`"
                );
            }
        }
        Ok(())
    }
}
