//! A component route's `reuse`: serving more than one request from one instance.
//!
//! Off by default: every request gets a fresh instance, and nothing a guest leaves behind
//! (globals, caches, leaked resources) reaches the next request. With `reuse`, a route's
//! instance that answered a request cleanly goes back to an idle list and serves later requests
//! of the same route, one at a time, until it has served `max_requests`, lived `max_age`, or
//! sat idle for `idle_timeout`. That skips instantiation (and the guest's start-up work, which
//! for an interpreted guest is most of a request), at the cost of isolation between requests.

use super::units;
use anyhow::bail;
use serde::Deserialize;
use std::time::Duration;

/// `reuse = { max_requests = 1000, max_age = "60s", idle_timeout = "10s" }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReuseConfig {
    /// Requests one instance serves before it is dropped.
    #[serde(default = "default_max_requests")]
    pub max_requests: u32,
    /// How long after its instantiation an instance is dropped (once it is idle).
    #[serde(default = "default_max_age", deserialize_with = "units::duration")]
    pub max_age: Duration,
    /// How long an idle instance waits for a request before it is dropped, giving back its
    /// slot of `[engine] max_instances`.
    #[serde(default = "default_idle_timeout", deserialize_with = "units::duration")]
    pub idle_timeout: Duration,
}

fn default_max_requests() -> u32 {
    1000
}

fn default_max_age() -> Duration {
    Duration::from_secs(60)
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(10)
}

impl ReuseConfig {
    pub fn check(&self, route: &str) -> anyhow::Result<()> {
        if self.max_requests < 2 {
            bail!(
                "{route}: reuse.max_requests must be at least 2 (1 is a fresh instance per \
                 request: leave `reuse` out)"
            );
        }
        if self.max_age.is_zero() {
            bail!("{route}: reuse.max_age must be longer than zero");
        }
        if self.idle_timeout.is_zero() {
            bail!("{route}: reuse.idle_timeout must be longer than zero");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Holder {
        reuse: ReuseConfig,
    }

    fn parse(text: &str) -> anyhow::Result<ReuseConfig> {
        let holder: Holder = toml::from_str(text)?;
        holder.reuse.check("route 1 (/)")?;
        Ok(holder.reuse)
    }

    #[test]
    fn defaults_fill_what_is_left_out() {
        let reuse = parse("reuse = { max_requests = 50 }").unwrap();
        assert_eq!(reuse.max_requests, 50);
        assert_eq!(reuse.max_age, Duration::from_secs(60));
        assert_eq!(reuse.idle_timeout, Duration::from_secs(10));
        let reuse = parse("reuse = { max_age = \"5m\", idle_timeout = \"250ms\" }").unwrap();
        assert_eq!(reuse.max_requests, 1000);
        assert_eq!(reuse.max_age, Duration::from_secs(300));
        assert_eq!(reuse.idle_timeout, Duration::from_millis(250));
    }

    #[test]
    fn nonsense_is_refused_with_the_setting_named() {
        for (text, expected) in [
            (
                "reuse = { max_requests = 1 }",
                "reuse.max_requests must be at least 2",
            ),
            (
                "reuse = { max_requests = 0 }",
                "reuse.max_requests must be at least 2",
            ),
            ("reuse = { max_age = \"0s\" }", "reuse.max_age"),
            ("reuse = { idle_timeout = \"0ms\" }", "reuse.idle_timeout"),
            ("reuse = { max_request = 5 }", "unknown field `max_request`"),
        ] {
            let error = format!("{:#}", parse(text).unwrap_err());
            assert!(error.contains(expected), "{text}: {error}");
        }
    }
}
