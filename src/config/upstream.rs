//! `[upstream.NAME]`: HTTP services that routes forward to (`upstream = "NAME"` on a route).

use super::units;
use anyhow::{Context, bail};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// One `[upstream.NAME]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `http://host:port` or `https://host:port`, one or more.
    pub targets: Vec<String>,
    /// How a request picks its target.
    #[serde(default)]
    pub balance: Balance,
    /// With `balance = "hash"`: what a request is hashed by, `client_ip` (the default),
    /// `header:NAME` or `cookie:NAME`.
    pub hash_key: Option<String>,
    /// How long connecting to a target may take; then the next target is tried (a retry), or
    /// the client gets 502.
    #[serde(
        default = "default_connect_timeout",
        deserialize_with = "units::duration"
    )]
    pub connect_timeout: Duration,
    /// How long a target may take to send its response headers: 504.
    #[serde(default = "default_timeout", deserialize_with = "units::duration")]
    pub timeout: Duration,
    /// The `Host` the target sees.
    #[serde(default)]
    pub host_header: HostHeader,
    /// How long a WebSocket (or other protocol switch) may carry nothing either way before the
    /// gateway closes it.
    #[serde(
        default = "default_tunnel_idle_timeout",
        deserialize_with = "units::duration"
    )]
    pub tunnel_idle_timeout: Duration,
    /// Speak HTTP/2 to every target, without TLS to `http://` ones (prior knowledge, as gRPC
    /// services over cleartext expect); `https://` targets choose by ALPN without it.
    #[serde(default)]
    pub h2c: bool,
    /// Sending a request again to another target.
    #[serde(default)]
    pub retries: Retries,
    /// Consecutive failures (connect errors, 502, 503, 504) that take a target out of rotation.
    #[serde(default = "default_eject_after")]
    pub eject_after: u32,
    /// How long an ejected target stays out before it is tried again.
    #[serde(default = "default_eject_for", deserialize_with = "units::duration")]
    pub eject_for: Duration,
    /// For `https://` targets: a CA (PEM) to trust besides the public roots, and the name to
    /// verify when it is not the target's host.
    pub tls: Option<UpstreamTls>,
    /// Active health checks: a GET to each target every `interval`.
    pub health: Option<HealthCheck>,
}

/// `health = { path = "/healthz", interval = "5s", unhealthy_after = 3, healthy_after = 2 }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// Answered with 2xx or 3xx by a healthy target.
    pub path: String,
    #[serde(
        default = "default_health_interval",
        deserialize_with = "units::duration"
    )]
    pub interval: Duration,
    /// How long one check may take.
    #[serde(
        default = "default_health_timeout",
        deserialize_with = "units::duration"
    )]
    pub timeout: Duration,
    /// Failed checks in a row that take a target out of rotation.
    #[serde(default = "default_unhealthy_after")]
    pub unhealthy_after: u32,
    /// Passed checks in a row that bring it back.
    #[serde(default = "default_healthy_after")]
    pub healthy_after: u32,
}

fn default_health_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_health_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_unhealthy_after() -> u32 {
    3
}

fn default_healthy_after() -> u32 {
    2
}

/// How a request picks its target among the healthy ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Each target in turn.
    #[default]
    RoundRobin,
    /// The less busy of two targets picked at random (power of two choices).
    LeastRequest,
    /// The same key (`hash_key`) to the same target while it is healthy (rendezvous hashing:
    /// a target that leaves moves only its own keys).
    Hash,
}

/// What `balance = "hash"` hashes a request by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// The client's address (after `trusted_proxies`).
    ClientIp,
    Header(http::HeaderName),
    Cookie(String),
}

impl HashKey {
    /// Parses `client_ip`, `header:NAME` or `cookie:NAME`.
    pub fn parse(text: &str) -> anyhow::Result<HashKey> {
        if text == "client_ip" {
            return Ok(HashKey::ClientIp);
        }
        if let Some(name) = text.strip_prefix("header:") {
            return http::HeaderName::try_from(name)
                .map(HashKey::Header)
                .with_context(|| format!("hash_key: `{name}` is not a header name"));
        }
        if let Some(name) = text.strip_prefix("cookie:")
            && !name.is_empty()
        {
            return Ok(HashKey::Cookie(name.to_string()));
        }
        bail!("hash_key is `client_ip`, `header:NAME` or `cookie:NAME`, not `{text}`")
    }
}

/// The `Host` header a target sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostHeader {
    /// The client's.
    #[default]
    Client,
    /// The target's own `host:port`.
    Target,
}

/// `retries = { attempts = 2, on = ["connect-failure", "502", "503"] }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retries {
    /// Further tries after the first, each on another target. Only requests without a body and
    /// with an idempotent method are retried.
    #[serde(default)]
    pub attempts: u32,
    #[serde(default = "default_retry_on")]
    pub on: Vec<RetryOn>,
}

impl Default for Retries {
    fn default() -> Self {
        Retries {
            attempts: 0,
            on: default_retry_on(),
        }
    }
}

/// What a retry is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum RetryOn {
    #[serde(rename = "connect-failure")]
    ConnectFailure,
    #[serde(rename = "502")]
    BadGateway,
    #[serde(rename = "503")]
    Unavailable,
    #[serde(rename = "504")]
    Timeout,
}

/// `tls = { ca = "internal-ca.pem", server_name = "api.internal" }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTls {
    pub ca: Option<PathBuf>,
    pub server_name: Option<String>,
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

fn default_tunnel_idle_timeout() -> Duration {
    Duration::from_secs(300)
}

fn default_eject_after() -> u32 {
    5
}

fn default_eject_for() -> Duration {
    Duration::from_secs(30)
}

fn default_retry_on() -> Vec<RetryOn> {
    vec![RetryOn::ConnectFailure]
}

impl UpstreamConfig {
    /// Checks the targets and limits; an error names the upstream.
    pub fn check(&self, name: &str) -> anyhow::Result<()> {
        let what = || format!("[upstream.{name}]");
        if self.targets.is_empty() {
            bail!(
                "{}: `targets` needs at least one `http://host:port`",
                what()
            );
        }
        for target in &self.targets {
            target_uri(target).with_context(|| format!("{}: target `{target}`", what()))?;
        }
        if self.connect_timeout.is_zero()
            || self.timeout.is_zero()
            || self.tunnel_idle_timeout.is_zero()
        {
            bail!(
                "{}: connect_timeout, timeout and tunnel_idle_timeout must be longer than zero",
                what()
            );
        }
        if self.eject_after == 0 {
            bail!("{}: eject_after must be at least 1", what());
        }
        if self.retries.attempts > crate::proxy::MAX_RETRIES {
            bail!(
                "{}: retries.attempts is at most {}",
                what(),
                crate::proxy::MAX_RETRIES
            );
        }
        match (&self.hash_key, self.balance) {
            (Some(key), Balance::Hash) => {
                HashKey::parse(key).with_context(what)?;
            }
            (Some(_), _) => bail!("{}: hash_key is for balance = \"hash\"", what()),
            (None, _) => {}
        }
        if let Some(health) = &self.health {
            if !health.path.starts_with('/')
                || health.path.parse::<http::uri::PathAndQuery>().is_err()
            {
                bail!(
                    "{}: health path `{}` must be a path like `/healthz`",
                    what(),
                    health.path
                );
            }
            if health.interval.is_zero() || health.timeout.is_zero() {
                bail!(
                    "{}: health interval and timeout must be longer than zero",
                    what()
                );
            }
            if health.unhealthy_after == 0 || health.healthy_after == 0 {
                bail!(
                    "{}: unhealthy_after and healthy_after must be at least 1",
                    what()
                );
            }
        }
        Ok(())
    }
}

/// A target as a URI: `http` or `https`, a host, an optional port, no path, query or user.
pub fn target_uri(text: &str) -> anyhow::Result<http::Uri> {
    let uri: http::Uri = text
        .parse()
        .context("must look like `http://10.0.0.5:8000`")?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => bail!("the scheme must be http or https"),
    }
    let authority = uri.authority().context("needs a host")?;
    if authority.as_str().contains('@') {
        bail!("must not carry credentials");
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        bail!("must not have a path or query (use the route's strip_prefix to rewrite paths)");
    }
    Ok(uri)
}

#[cfg(test)]
mod tests {
    /// The TOML examples of docs/upstreams.md are configs the gateway takes.
    #[test]
    fn the_documented_examples_parse() {
        let configs = crate::config::documented_configs(include_str!("../../docs/upstreams.md"));
        assert!(!configs.is_empty());
        assert!(configs.iter().all(|c| !c.upstreams.is_empty()));
    }
}
