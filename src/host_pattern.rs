//! Host names as the config writes them: exact (`api.example.com`) or a wildcard
//! (`*.example.com`). One grammar and one matcher for everything that picks by host: routes
//! (`router`) and the certificates of TLS listeners (`tls::sni`).
//!
//! A wildcard matches any name that ends in `.` and its suffix, with at least one label before
//! it: `*.example.com` matches `a.example.com` and `a.b.example.com`, never `example.com` nor
//! `evil/.example.com` (the request guards refuse such hosts before they get here). Patterns
//! and the hosts matched against them are lower case; a port, a trailing dot or an empty label
//! is refused, as the request guards refuse them in requests, so every pattern can match.

use std::fmt;

/// An exact host or a wildcard suffix.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum HostPattern {
    Exact(String),
    /// `*.example.com`, stored as `.example.com`.
    Suffix(String),
}

/// Why a host pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("host `{host}`: {problem}")]
pub struct InvalidHost {
    pub host: String,
    pub problem: &'static str,
}

impl HostPattern {
    pub fn parse(host: &str) -> Result<HostPattern, InvalidHost> {
        let err = |problem: &'static str| InvalidHost {
            host: host.to_string(),
            problem,
        };
        let lower = host.to_ascii_lowercase();
        let (name, wildcard) = match lower.strip_prefix("*.") {
            Some(rest) => (rest, true),
            None => (lower.as_str(), false),
        };
        if name.is_empty() {
            return Err(err("is empty"));
        }
        let valid = crate::guards::normalize_authority(name).is_ok_and(|n| n == name)
            && !name.contains(':')
            && !name.ends_with('.');
        if !valid {
            return Err(err(
                "must be a host name like `api.example.com` or `*.example.com` (no port, no scheme)",
            ));
        }
        Ok(if wildcard {
            HostPattern::Suffix(format!(".{name}"))
        } else {
            HostPattern::Exact(name.to_string())
        })
    }

    /// Whether `host` (lower case, no port) is one this pattern names.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(exact) => exact == host,
            HostPattern::Suffix(suffix) => suffix_matches(suffix, host),
        }
    }

    /// How specific the pattern is; larger is more specific: an exact host beats any
    /// wildcard, and a longer wildcard suffix beats a shorter one.
    pub fn rank(&self) -> (u8, usize) {
        match self {
            HostPattern::Exact(_) => (2, 0),
            HostPattern::Suffix(suffix) => (1, suffix.len()),
        }
    }
}

/// Whether `host` ends in `suffix` (`.example.com`) with at least one character before it.
pub fn suffix_matches(suffix: &str, host: &str) -> bool {
    host.len() > suffix.len() && host.ends_with(suffix)
}

impl fmt::Debug for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => write!(f, "{h}"),
            HostPattern::Suffix(s) => write!(f, "*{s}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_need_a_label_before_their_suffix() {
        let wildcard = HostPattern::parse("*.Example.com").unwrap();
        assert!(wildcard.matches("a.example.com"));
        assert!(wildcard.matches("a.b.example.com"));
        assert!(!wildcard.matches("example.com"));
        assert!(!wildcard.matches("badexample.com"));
        let exact = HostPattern::parse("api.example.com").unwrap();
        assert!(exact.matches("api.example.com"));
        assert!(!exact.matches("x.api.example.com"));
        assert!(exact.rank() > wildcard.rank());
        assert!(HostPattern::parse("*.a.example.com").unwrap().rank() > wildcard.rank());
    }

    #[test]
    fn hosts_requests_could_never_carry_are_refused() {
        for host in [
            "",
            "*.",
            "a..b",
            "a.b.",
            "a:80",
            "[::1]",
            "http://x.com",
            "a/b",
        ] {
            assert!(HostPattern::parse(host).is_err(), "{host}");
        }
    }
}
