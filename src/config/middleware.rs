//! A route's middleware settings: `compression`, `cors`, `headers` and `rate_limit`. They apply
//! to every kind of route; `crate::middleware` builds them.

use anyhow::{Context, bail};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

use super::units;

/// `cors = { allow_origins = ["https://app.example.com"], ... }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CorsConfig {
    /// Exact origins (`https://app.example.com`), or `["*"]` for any.
    pub allow_origins: Vec<String>,
    /// Methods a preflight allows; absent, `GET, HEAD, POST`. `["*"]` allows any.
    pub allow_methods: Option<Vec<String>>,
    /// Request headers a preflight allows; `["*"]` allows any.
    #[serde(default)]
    pub allow_headers: Vec<String>,
    /// Response headers the page's script may read.
    #[serde(default)]
    pub expose_headers: Vec<String>,
    /// Whether cookies and credentials may be sent (not with a `*` anywhere).
    #[serde(default)]
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight's answer.
    #[serde(default, deserialize_with = "units::opt_duration")]
    pub max_age: Option<Duration>,
}

impl CorsConfig {
    /// Checks what tower-http would otherwise refuse at run time: valid names and origins, and
    /// no wildcard together with credentials.
    pub fn check(&self) -> anyhow::Result<()> {
        let wildcard = |list: &[String]| list.iter().any(|v| v == "*");
        if self.allow_origins.is_empty() {
            bail!("cors: allow_origins needs at least one origin (or \"*\")");
        }
        if wildcard(&self.allow_origins) && self.allow_origins.len() > 1 {
            bail!("cors: allow_origins is either [\"*\"] or a list of origins");
        }
        for origin in self.allow_origins.iter().filter(|o| *o != "*") {
            let uri: http::Uri = origin
                .parse()
                .with_context(|| format!("cors: origin `{origin}` is not a URL"))?;
            if uri.scheme().is_none()
                || uri.host().is_none()
                || uri.path_and_query().is_some_and(|p| p.as_str() != "/")
                || origin.ends_with('/')
            {
                bail!(
                    "cors: origin `{origin}` must be scheme://host[:port], like https://app.example.com"
                );
            }
        }
        for method in self.allow_methods.iter().flatten().filter(|m| *m != "*") {
            http::Method::from_bytes(method.as_bytes())
                .with_context(|| format!("cors: `{method}` is not an HTTP method"))?;
        }
        for header in self
            .allow_headers
            .iter()
            .chain(&self.expose_headers)
            .filter(|h| *h != "*")
        {
            http::HeaderName::try_from(header.as_str())
                .with_context(|| format!("cors: `{header}` is not a header name"))?;
        }
        let any_wildcard = wildcard(&self.allow_origins)
            || wildcard(&self.allow_headers)
            || wildcard(&self.expose_headers)
            || self.allow_methods.as_deref().is_some_and(wildcard);
        if self.allow_credentials && any_wildcard {
            bail!(
                "cors: allow_credentials cannot go with \"*\" (browsers refuse it); list the origins, methods and headers"
            );
        }
        Ok(())
    }
}

/// `headers = { request_set = { ... }, response_set = { ... }, response_remove = [...] }`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeadersConfig {
    /// Set on the request before the target sees it, replacing the client's.
    #[serde(default)]
    pub request_set: BTreeMap<String, String>,
    /// Set on every response, replacing the target's.
    #[serde(default)]
    pub response_set: BTreeMap<String, String>,
    /// Removed from every response.
    #[serde(default)]
    pub response_remove: Vec<String>,
}

impl HeadersConfig {
    pub fn is_empty(&self) -> bool {
        self.request_set.is_empty()
            && self.response_set.is_empty()
            && self.response_remove.is_empty()
    }

    /// The headers, parsed: every name and value must be valid.
    pub fn parsed(&self) -> anyhow::Result<ParsedHeaders> {
        let pairs = |map: &BTreeMap<String, String>, what: &str| {
            map.iter()
                .map(|(name, value)| {
                    let name = http::HeaderName::try_from(name.as_str()).with_context(|| {
                        format!("headers.{what}: `{name}` is not a header name")
                    })?;
                    let value = http::HeaderValue::try_from(value.as_str()).with_context(|| {
                        format!("headers.{what}: the value of `{name}` is not a valid header value")
                    })?;
                    Ok((name, value))
                })
                .collect::<anyhow::Result<Vec<_>>>()
        };
        let request_set = pairs(&self.request_set, "request_set")?;
        if let Some((name, _)) = request_set.iter().find(|(name, _)| {
            name.as_str().starts_with("x-wasmgate-") || name == http::header::HOST
        }) {
            bail!("headers.request_set: `{name}` is set by the gateway");
        }
        Ok(ParsedHeaders {
            request_set,
            response_set: pairs(&self.response_set, "response_set")?,
            response_remove: self
                .response_remove
                .iter()
                .map(|name| {
                    http::HeaderName::try_from(name.as_str()).with_context(|| {
                        format!("headers.response_remove: `{name}` is not a header name")
                    })
                })
                .collect::<anyhow::Result<_>>()?,
        })
    }
}

/// [`HeadersConfig`], parsed.
pub struct ParsedHeaders {
    pub request_set: Vec<(http::HeaderName, http::HeaderValue)>,
    pub response_set: Vec<(http::HeaderName, http::HeaderValue)>,
    pub response_remove: Vec<http::HeaderName>,
}

/// `rate_limit = { per_second = 100, burst = 200, key = "client_ip" }`: a token bucket per key,
/// in each gateway process.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests per second one key may make, sustained.
    pub per_second: u32,
    /// Requests one key may make at once after a quiet spell; defaults to `per_second`.
    pub burst: Option<u32>,
    /// What a client is: `client_ip` (the client's address, after `trusted_proxies`) or
    /// `header:NAME` (requests without the header count by their address).
    #[serde(default = "default_rate_key")]
    pub key: String,
}

fn default_rate_key() -> String {
    "client_ip".into()
}

/// What a rate limit counts by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateKey {
    ClientIp,
    Header(http::HeaderName),
}

impl RateLimitConfig {
    pub fn check(&self) -> anyhow::Result<RateKey> {
        if self.per_second == 0 {
            bail!("rate_limit: per_second must be at least 1");
        }
        if self.burst == Some(0) {
            bail!("rate_limit: burst must be at least 1");
        }
        match self.key.as_str() {
            "client_ip" => Ok(RateKey::ClientIp),
            key => match key.strip_prefix("header:") {
                Some(name) => http::HeaderName::try_from(name)
                    .map(RateKey::Header)
                    .with_context(|| format!("rate_limit: `{name}` is not a header name")),
                None => bail!("rate_limit: key is `client_ip` or `header:NAME`, not `{key}`"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    /// The TOML examples of docs/middleware.md are configs the gateway takes.
    #[test]
    fn the_documented_examples_parse() {
        let configs = crate::config::documented_configs(include_str!("../../docs/middleware.md"));
        assert_eq!(configs.len(), 1);
        let route = &configs[0].routes[0];
        assert!(route.compression && route.cors.is_some() && route.rate_limit.is_some());
        assert!(!route.headers.is_empty());
    }
}
