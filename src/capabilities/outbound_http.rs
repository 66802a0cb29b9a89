//! Outgoing HTTP from components, limited to the hosts a route allows.
//!
//! A route's `allowed_outbound_hosts` is a list of rules `scheme://host[:port]`:
//!
//! * `scheme` is `http`, `https` or `*`;
//! * `host` is a name or address, `*.example.com` for any subdomain, or `*` for any host;
//! * `port` is a number or `*`; without one, only the scheme's default port (80, 443) matches.
//!
//! [`OutboundPolicy`] is the store's [`WasiHttpHooks`]: a request no rule allows never leaves
//! the gateway; the guest sees `HTTP-request-denied` and the gateway logs and counts it. Allowed
//! requests go out through wasmtime's default client, with connect and first-byte timeouts so a
//! slow upstream cannot hold an instance past the route's deadline.
//!
//! `http://self/...` is the gateway itself: when a route allows `http://self`, such a request is
//! dispatched to the gateway's own router in process, without a socket, and may reach routes
//! marked `private`. Self-calls nest at most [`MAX_SELF_DEPTH`] deep (`loop-detected` beyond).

use crate::metrics::RouteMetrics;
use std::sync::Arc;
use std::time::Duration;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

/// How deep requests to `http://self` may nest.
pub const MAX_SELF_DEPTH: u32 = 8;

/// The gateway's router, as outgoing requests to `http://self` reach it.
pub trait SelfDispatch: Send + Sync {
    /// Serves a request made by a component `depth` self-calls deep.
    fn dispatch(
        &self,
        request: http::Request<WasiBody>,
        depth: u32,
    ) -> std::pin::Pin<Box<dyn Future<Output = http::Response<WasiBody>> + Send + 'static>>;
}

/// Set once the gateway is built and shared; weak, so routes do not keep the gateway alive.
pub type SelfHandle = Arc<std::sync::OnceLock<std::sync::Weak<dyn SelfDispatch>>>;

/// How long an outgoing connection may take to establish when the guest does not say.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// One `allowed_outbound_hosts` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundRule {
    scheme: Option<String>,
    host: HostRule,
    port: PortRule,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostRule {
    Any,
    Exact(String),
    /// `*.example.com`, stored as `.example.com`.
    Suffix(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PortRule {
    Any,
    Default,
    Exact(u16),
}

impl OutboundRule {
    /// Parses `scheme://host[:port]`; the error says what is wrong with it.
    pub fn parse(rule: &str) -> Result<OutboundRule, String> {
        let bad = |why: &str| format!("allowed_outbound_hosts entry `{rule}`: {why}");
        let (scheme, rest) = rule
            .split_once("://")
            .ok_or_else(|| bad("must look like `https://api.example.com` (a scheme and a host)"))?;
        let scheme = match scheme.to_ascii_lowercase().as_str() {
            "*" => None,
            s @ ("http" | "https") => Some(s.to_string()),
            _ => return Err(bad("the scheme must be `http`, `https` or `*`")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') || rest.contains('?') || rest.contains('@') {
            return Err(bad("give only a scheme, a host and a port, without a path"));
        }
        let (host, port) = if let Some(stripped) = rest.strip_prefix('[') {
            // [::1]:8080
            let (addr, after) = stripped
                .split_once(']')
                .ok_or_else(|| bad("an IPv6 address needs its closing `]`"))?;
            (format!("[{addr}]"), after.strip_prefix(':'))
        } else {
            match rest.rsplit_once(':') {
                Some((host, port)) => (host.to_string(), Some(port)),
                None => (rest.to_string(), None),
            }
        };
        let port = match port {
            None => PortRule::Default,
            Some("*") => PortRule::Any,
            Some(p) => PortRule::Exact(
                p.parse()
                    .map_err(|_| bad("the port must be a number or `*`"))?,
            ),
        };
        let host = host.to_ascii_lowercase();
        let host = if host == "*" {
            HostRule::Any
        } else if let Some(suffix) = host.strip_prefix("*.") {
            HostRule::Suffix(format!(".{suffix}"))
        } else if host.is_empty() || host.contains('*') {
            return Err(bad("the host must be a name, `*.domain` or `*`"));
        } else {
            HostRule::Exact(host)
        };
        Ok(OutboundRule { scheme, host, port })
    }

    /// Whether a request to `scheme://host:port` is allowed by this rule.
    fn allows(&self, scheme: &str, host: &str, port: Option<u16>) -> bool {
        if self.scheme.as_deref().is_some_and(|s| s != scheme) {
            return false;
        }
        let host_ok = match &self.host {
            HostRule::Any => true,
            HostRule::Exact(h) => h == host,
            HostRule::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        };
        let default_port = if scheme == "https" { 443 } else { 80 };
        let port = port.unwrap_or(default_port);
        let port_ok = match self.port {
            PortRule::Any => true,
            PortRule::Default => port == default_port,
            PortRule::Exact(p) => p == port,
        };
        host_ok && port_ok
    }
}

/// Whether any rule allows `uri`.
pub fn is_allowed(rules: &[OutboundRule], uri: &http::Uri) -> bool {
    let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) else {
        return false;
    };
    let scheme = scheme.to_ascii_lowercase();
    let host = host.to_ascii_lowercase();
    rules
        .iter()
        .any(|r| r.allows(&scheme, &host, uri.port_u16()))
}

/// The `wasi:http` hooks of one request's store: the allow-list and outgoing timeouts.
pub struct OutboundPolicy {
    pub rules: Arc<[OutboundRule]>,
    pub route: Arc<str>,
    pub request_id: Arc<str>,
    /// The default first-byte timeout of outgoing requests: the route's timeout.
    pub response_timeout: Duration,
    pub metrics: Arc<RouteMetrics>,
    /// The gateway, for requests to `http://self`.
    pub self_handle: SelfHandle,
    /// How many self-calls deep the current request is (0 from outside).
    pub depth: u32,
}

type SendFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), Error>> + Send>,
                ),
                Error,
            >,
        > + Send,
>;

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> SendFuture {
        if !is_allowed(&self.rules, request.uri()) {
            tracing::warn!(
                route = %self.route,
                request_id = %self.request_id,
                uri = %request.uri(),
                "outgoing request denied: no allowed_outbound_hosts entry matches"
            );
            self.metrics.outbound("denied");
            return Box::new(async { Err(Error::HttpRequestDenied) });
        }
        self.metrics.outbound("allowed");
        if request.uri().host() == Some("self") {
            return self.dispatch_to_self(request);
        }
        let mut options = options.unwrap_or_default();
        options
            .connect_timeout
            .get_or_insert(DEFAULT_CONNECT_TIMEOUT);
        options
            .first_byte_timeout
            .get_or_insert(self.response_timeout);
        options
            .between_bytes_timeout
            .get_or_insert(self.response_timeout);
        Box::new(async move {
            use http_body_util::BodyExt;
            let (response, io) =
                wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = Result<(), Error>> + Send>,
            ))
        })
    }
}

impl OutboundPolicy {
    /// Serves a request to `http://self` through the gateway's own router, in process.
    fn dispatch_to_self(&self, request: http::Request<WasiBody>) -> SendFuture {
        let depth = self.depth + 1;
        if depth > MAX_SELF_DEPTH {
            tracing::warn!(route = %self.route, request_id = %self.request_id, depth, "self-calls nest too deep");
            return Box::new(async { Err(Error::LoopDetected) });
        }
        let gateway = self.self_handle.get().and_then(std::sync::Weak::upgrade);
        Box::new(async move {
            let Some(gateway) = gateway else {
                return Err(Error::InternalError(Some(
                    "the gateway is not serving".into(),
                )));
            };
            let response = gateway.dispatch(request, depth).await;
            Ok((
                response,
                Box::new(async { Ok(()) }) as Box<dyn Future<Output = Result<(), Error>> + Send>,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(rules: &[&str], uri: &str) -> bool {
        let rules: Vec<_> = rules
            .iter()
            .map(|r| OutboundRule::parse(r).unwrap())
            .collect();
        is_allowed(&rules, &uri.parse().unwrap())
    }

    #[test]
    fn default_ports_are_implied() {
        assert!(allowed(
            &["https://api.example.com"],
            "https://api.example.com/x"
        ));
        assert!(allowed(
            &["https://api.example.com"],
            "https://api.example.com:443/x"
        ));
        assert!(!allowed(
            &["https://api.example.com"],
            "https://api.example.com:8443/x"
        ));
        assert!(!allowed(
            &["https://api.example.com"],
            "http://api.example.com/x"
        ));
    }

    #[test]
    fn wildcards_for_host_port_and_scheme() {
        assert!(allowed(&["http://127.0.0.1:*"], "http://127.0.0.1:3000/"));
        assert!(allowed(
            &["https://*.example.com"],
            "https://a.b.example.com/"
        ));
        assert!(!allowed(&["https://*.example.com"], "https://example.com/"));
        assert!(allowed(&["*://*:*"], "http://anything:1/"));
        assert!(!allowed(&[], "http://127.0.0.1/"));
        assert!(allowed(&["http://[::1]:8080"], "http://[::1]:8080/"));
        assert!(allowed(&["http://self"], "http://self/internal"));
        assert!(!allowed(&["http://127.0.0.1:*"], "http://self/internal"));
    }

    #[test]
    fn malformed_rules_say_why() {
        assert!(
            OutboundRule::parse("api.example.com")
                .unwrap_err()
                .contains("scheme")
        );
        assert!(
            OutboundRule::parse("ftp://x")
                .unwrap_err()
                .contains("scheme must be")
        );
        assert!(
            OutboundRule::parse("http://x:port")
                .unwrap_err()
                .contains("port")
        );
        assert!(
            OutboundRule::parse("http://x/path")
                .unwrap_err()
                .contains("without a path")
        );
        assert!(
            OutboundRule::parse("http://a*b")
                .unwrap_err()
                .contains("host")
        );
    }
}
