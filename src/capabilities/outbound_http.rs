//! Outgoing HTTP from components, limited to the hosts a route allows.
//!
//! A route's `allowed_outbound_hosts` is a list of rules `scheme://host[:port]`:
//!
//! * `scheme` is `http`, `https` or `*`;
//! * `host` is a name or address, `*.example.com` for any subdomain, or `*` for any host;
//! * `port` is a number or `*`; without one, only the scheme's default port (80, 443) matches.
//!
//! [`OutboundPolicy`] is the store's [`WasiHttpHooks`]: a request no rule allows never leaves
//! the gateway; the guest sees `HTTP-request-denied` and the gateway logs and counts it.
//!
//! # Where an allowed request may connect
//!
//! The gateway resolves the host itself, checks every address it resolves to, and connects to a
//! checked address (it never lets a client library resolve the name again, which a DNS
//! rebinding attack would answer differently):
//!
//! * a host that only a wildcard rule allows (`*`, `*.example.com`) must not resolve to a
//!   loopback, private, unique-local, link-local or unspecified address ([`classify`]) while
//!   `[server] outbound_deny_private` is on (the default); a rule naming the host or IP itself
//!   allows those;
//! * the admin listener (`[admin] listen`; with a `0.0.0.0` or `[::]` bind, that port on any
//!   address of this machine) is reached only through a rule that names its port.
//!
//! A refused address fails inside the component with `destination-IP-prohibited`, and is logged
//! and counted as denied. Allowed requests go out with connect and first-byte timeouts, so a
//! slow upstream cannot hold an instance past the route's deadline, on the route's pooled client
//! (`outbound_client`), whose connector makes these checks for every connection it opens.
//!
//! # The gateway itself
//!
//! `http://self/...` (the name in any case) is the gateway itself: when a rule names
//! `http://self` (a wildcard host never matches it), such a request is dispatched to the
//! gateway's own router in process, without a socket, and may reach routes marked `private`.
//! Self-calls nest at most [`MAX_SELF_DEPTH`] deep (`loop-detected` beyond).

use super::outbound_client::{Failure, OutboundClient};
use crate::metrics::RouteMetrics;
use crate::otel::{CallTarget, ClientSpan, RequestTrace};
use bytes::Bytes;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::net::TcpStream;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks};

/// Whether the allow-list let an outgoing request go (the `outcome` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboundOutcome {
    Allowed,
    Denied,
}

/// How deep requests to `http://self` may nest.
pub const MAX_SELF_DEPTH: u32 = 8;

/// The host name that means the gateway itself, compared without case.
const SELF_HOST: &str = "self";

/// Where a request stands among self-calls: how deep it is (0 from outside), and the
/// generation its outermost request started on, which every self-call it makes is routed by
/// (opaque here; the gateway knows it). A reload in between changes nothing for them.
#[derive(Clone, Default)]
pub struct SelfCalls {
    pub depth: u32,
    pub pinned: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

/// The gateway's router, as outgoing requests to `http://self` reach it.
pub trait SelfDispatch: Send + Sync {
    /// Serves a request made by a component, one self-call deeper than `calls` says.
    fn dispatch(
        &self,
        request: http::Request<WasiBody>,
        calls: SelfCalls,
    ) -> std::pin::Pin<Box<dyn Future<Output = http::Response<WasiBody>> + Send + 'static>>;
}

/// Set once the gateway is built and shared; weak, so routes do not keep the gateway alive.
pub type SelfHandle = Arc<std::sync::OnceLock<std::sync::Weak<dyn SelfDispatch>>>;

/// How long an outgoing connection (name lookup included) may take when the guest does not say.
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

/// How a rule that allows a request names its host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostGrant {
    /// The host or IP itself: any address it resolves to may be reached.
    Named,
    /// `*` or `*.domain`: only public addresses, while private ones are denied.
    Wildcard,
}

/// How a rule that allows a request names its port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortGrant {
    /// A number, or the scheme's default: the admin port is reachable if it is this one.
    Named,
    /// `*`: never the admin port.
    Wildcard,
}

/// What one rule that matches a request lets it reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    host: HostGrant,
    port: PortGrant,
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

    /// What this rule grants a request to `scheme://host:port` (`host` in lower case), if it
    /// matches it at all.
    fn grant(&self, scheme: &str, host: &str, port: Option<u16>) -> Option<Grant> {
        if self.scheme.as_deref().is_some_and(|s| s != scheme) {
            return None;
        }
        let host_grant = match &self.host {
            // `self` is never one of "any host": only `http://self` grants it.
            HostRule::Any if host == SELF_HOST => return None,
            HostRule::Any => HostGrant::Wildcard,
            HostRule::Exact(h) if h == host => HostGrant::Named,
            HostRule::Suffix(s) if host.len() > s.len() && host.ends_with(s.as_str()) => {
                HostGrant::Wildcard
            }
            HostRule::Exact(_) | HostRule::Suffix(_) => return None,
        };
        let default_port = if scheme == "https" { 443 } else { 80 };
        let port = port.unwrap_or(default_port);
        let port_grant = match self.port {
            PortRule::Any => PortGrant::Wildcard,
            PortRule::Default if port == default_port => PortGrant::Named,
            PortRule::Exact(p) if p == port => PortGrant::Named,
            PortRule::Default | PortRule::Exact(_) => return None,
        };
        Some(Grant {
            host: host_grant,
            port: port_grant,
        })
    }
}

/// Where the rules let a request go, before any name is resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// No rule matches.
    Denied,
    /// `http://self`, named by a rule: the gateway's own router.
    SelfCall,
    /// Over the network, under what the matching rules grant (never empty).
    Network(Vec<Grant>),
}

/// What the rules make of a request to `uri`.
pub fn decide(rules: &[OutboundRule], uri: &http::Uri) -> Decision {
    let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) else {
        return Decision::Denied;
    };
    let scheme = scheme.to_ascii_lowercase();
    let host = host.to_ascii_lowercase();
    let grants: Vec<Grant> = rules
        .iter()
        .filter_map(|r| r.grant(&scheme, &host, uri.port_u16()))
        .collect();
    if grants.is_empty() {
        Decision::Denied
    } else if host == SELF_HOST {
        Decision::SelfCall
    } else {
        Decision::Network(grants)
    }
}

/// Whether any rule allows `uri` (before its addresses are checked).
pub fn is_allowed(rules: &[OutboundRule], uri: &http::Uri) -> bool {
    decide(rules, uri) != Decision::Denied
}

/// What kind of address an IP is, as the outbound policy sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    Public,
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// 0.0.0.0/8, :: (connecting to them reaches this machine).
    Unspecified,
    /// 10/8, 172.16/12, 192.168/16, the shared 100.64/10, IPv6 unique-local fc00::/7 and the
    /// deprecated site-local fec0::/10.
    Private,
    /// 169.254/16, fe80::/10.
    LinkLocal,
}

impl AddressClass {
    /// Whether a name allowed only by a wildcard may not resolve to it.
    pub fn is_internal(self) -> bool {
        self != AddressClass::Public
    }
}

/// The class of an address; IPv4 addresses inside IPv6 (mapped `::ffff:a.b.c.d` and the NAT64
/// prefix `64:ff9b::/96`) are classed as the IPv4 address they carry.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        AddressClass::Loopback
    } else if a == 0 {
        AddressClass::Unspecified
    } else if ip.is_private() || (a == 100 && (64..128).contains(&b)) {
        AddressClass::Private
    } else if ip.is_link_local() {
        AddressClass::LinkLocal
    } else {
        AddressClass::Public
    }
}

fn classify_v6(ip: Ipv6Addr) -> AddressClass {
    if let Some(v4) = embedded_v4(ip) {
        return classify_v4(v4);
    }
    let first = ip.segments()[0];
    if ip.is_loopback() {
        AddressClass::Loopback
    } else if ip.is_unspecified() {
        AddressClass::Unspecified
    } else if first & 0xfe00 == 0xfc00 || first & 0xffc0 == 0xfec0 {
        AddressClass::Private
    } else if first & 0xffc0 == 0xfe80 {
        AddressClass::LinkLocal
    } else {
        AddressClass::Public
    }
}

/// The IPv4 address an IPv6 one carries: mapped (`::ffff:0:0/96`) or NAT64 (`64:ff9b::/96`).
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = ip.segments();
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [.., a, b, c, d] = ip.octets();
        return Some(Ipv4Addr::new(a, b, c, d));
    }
    None
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether a wildcard rule may reach private addresses (`[server] outbound_deny_private`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrivateAddresses {
    /// Only through a rule that names the host or IP.
    Deny,
    /// Through any rule.
    Allow,
}

/// Everything a route's outgoing requests are checked against: its rules, and the process-wide
/// settings they are read with.
#[derive(Debug, Clone)]
pub struct Allowlist {
    pub rules: Vec<OutboundRule>,
    /// The admin listener (`[admin] listen`).
    pub admin: SocketAddr,
    pub private: PrivateAddresses,
}

impl Allowlist {
    /// Whether a connection to `dest` may reach the admin listener. `same_host` says the
    /// connection, once made, was seen to go to this machine.
    fn reaches_admin(&self, dest: SocketAddr, same_host: bool) -> bool {
        let admin = self.admin;
        if admin.port() == 0 || dest.port() != admin.port() {
            return false;
        }
        let (dest_ip, admin_ip) = (canonical(dest.ip()), canonical(admin.ip()));
        if dest_ip.is_unspecified() || dest_ip == admin_ip {
            return true;
        }
        // Bound to every address: any address of this machine reaches it.
        admin_ip.is_unspecified() && (dest_ip.is_loopback() || same_host)
    }

    /// Checks the addresses a request would connect to against what its rules grant.
    fn check(
        &self,
        grants: &[Grant],
        addresses: &[SocketAddr],
        same_host: bool,
    ) -> Result<(), Refusal> {
        let internal = match self.private {
            PrivateAddresses::Deny => addresses
                .iter()
                .find(|a| classify(a.ip()).is_internal())
                .copied(),
            PrivateAddresses::Allow => None,
        };
        let admin = addresses
            .iter()
            .find(|a| self.reaches_admin(**a, same_host))
            .copied();
        let fits = |g: &&Grant| {
            (internal.is_none() || g.host == HostGrant::Named)
                && (admin.is_none() || g.port == PortGrant::Named)
        };
        if grants.iter().any(|g| fits(&g)) {
            return Ok(());
        }
        let named_host = grants.iter().any(|g| g.host == HostGrant::Named);
        match (internal, admin) {
            (Some(internal), _) if !named_host => Err(Refusal::Internal(internal)),
            (_, Some(admin)) => Err(Refusal::Admin(admin)),
            (Some(internal), None) => Err(Refusal::Internal(internal)),
            (None, None) => Ok(()),
        }
    }
}

/// Why an allowed host's address was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Only a wildcard rule allows the host, and it resolved to an internal address.
    Internal(SocketAddr),
    /// The address is the admin listener's, and no rule names its port.
    Admin(SocketAddr),
}

impl Refusal {
    fn log(self, route: &str, request_id: &str, uri: &http::Uri) {
        match self {
            Refusal::Internal(address) => tracing::warn!(
                route, request_id, uri = %uri, address = %address, class = ?classify(address.ip()),
                "outgoing request denied: only a wildcard allowed_outbound_hosts entry matches, and \
                 the host resolves to a non-public address (name the host in an entry to allow it)"
            ),
            Refusal::Admin(address) => tracing::warn!(
                route, request_id, uri = %uri, address = %address,
                "outgoing request denied: the address is the admin listener's, which only an \
                 allowed_outbound_hosts entry naming its port reaches"
            ),
        }
    }
}

/// The `wasi:http` hooks of one request's store: the allow-list and outgoing timeouts.
pub struct OutboundPolicy {
    /// The route's allow-list and pooled client.
    pub client: Arc<OutboundClient>,
    pub route: Arc<str>,
    pub request_id: Arc<str>,
    /// The default first-byte timeout of outgoing requests: the route's timeout.
    pub response_timeout: Duration,
    pub metrics: Arc<RouteMetrics>,
    /// The gateway, for requests to `http://self`.
    pub self_handle: SelfHandle,
    /// How many self-calls deep the current request is, and the generation they keep.
    pub self_calls: SelfCalls,
    /// The request's server span, when tracing is on: each outgoing call gets a child span.
    pub trace: Option<RequestTrace>,
}

type IoFuture = Box<dyn Future<Output = Result<(), Error>> + Send>;
type SendFuture =
    Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), Error>> + Send>;

impl WasiHttpHooks for OutboundPolicy {
    /// The default's answer without its cost: the default makes an `Arc`'d closure
    /// (`forbidden_header_filter`) for every header of every request and asks it once. WASI 0.3
    /// trailers still go through `forbidden_header_filter`'s default: a header added here must
    /// be added there too.
    fn is_forbidden_header(&mut self, name: &http::HeaderName) -> bool {
        wasmtime_wasi_http::DEFAULT_FORBIDDEN_HEADERS.contains(name)
    }

    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: IoFuture,
    ) -> SendFuture {
        match decide(&self.client.allowlist.rules, request.uri()) {
            Decision::Denied => {
                tracing::warn!(
                    route = %self.route,
                    request_id = %self.request_id,
                    uri = %request.uri(),
                    "outgoing request denied: no allowed_outbound_hosts entry matches"
                );
                self.metrics.outbound(OutboundOutcome::Denied);
                return Box::new(async { Err(Error::HttpRequestDenied) });
            }
            Decision::SelfCall => {
                self.metrics.outbound(OutboundOutcome::Allowed);
                let span = self.trace_call(&mut request);
                return traced(span, self.dispatch_to_self(request));
            }
            Decision::Network(_) => {}
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
        let outgoing = Outgoing {
            client: self.client.clone(),
            route: self.route.clone(),
            request_id: self.request_id.clone(),
            metrics: self.metrics.clone(),
        };
        let span = self.trace_call(&mut request);
        traced(span, outgoing.send(request, options))
    }
}

/// `send` as a [`SendFuture`] that ends `span` (if any) when the response's headers arrive or
/// the call fails.
fn traced<F>(span: Option<ClientSpan>, send: F) -> SendFuture
where
    F: Future<Output = Result<(http::Response<WasiBody>, IoFuture), Error>> + Send + 'static,
{
    let Some(span) = span else {
        return Box::new(send);
    };
    Box::new(async move {
        let result = send.await;
        match &result {
            Ok((response, _)) => span.responded(response.status().as_u16()),
            Err(error) => span.failed(&format_args!("{error:?}")),
        }
        result
    })
}

impl OutboundPolicy {
    /// A client span for an allowed outgoing request, when tracing is on; the request's
    /// `traceparent` names it (see `crate::otel`).
    fn trace_call(&self, request: &mut http::Request<WasiBody>) -> Option<ClientSpan> {
        let trace = self.trace.as_ref()?;
        let method = request.method().clone();
        let uri = request.uri().clone();
        Some(trace.client_call(&method, CallTarget::Url(&uri), request.headers_mut()))
    }

    /// Serves a request to `http://self` through the gateway's own router, in process.
    fn dispatch_to_self(
        &self,
        request: http::Request<WasiBody>,
    ) -> impl Future<Output = Result<(http::Response<WasiBody>, IoFuture), Error>> + Send + 'static
    {
        let depth = self.self_calls.depth + 1;
        let too_deep = depth > MAX_SELF_DEPTH;
        if too_deep {
            tracing::warn!(route = %self.route, request_id = %self.request_id, depth, "self-calls nest too deep");
        }
        let gateway = self.self_handle.get().and_then(std::sync::Weak::upgrade);
        let calls = SelfCalls {
            depth,
            pinned: self.self_calls.pinned.clone(),
        };
        async move {
            if too_deep {
                return Err(Error::LoopDetected);
            }
            let Some(gateway) = gateway else {
                return Err(Error::InternalError(Some(
                    "the gateway is not serving".into(),
                )));
            };
            // On a task of its own: the caller may be a WASI 0.3 guest's host call, polled
            // inside its store's event loop, and a WASI 0.2 route served inline there would
            // start a second event loop on the same thread (which wasmtime refuses with a
            // panic). Dropped with the caller, the task is aborted.
            let response = wasmtime_wasi::runtime::spawn(gateway.dispatch(request, calls)).await;
            Ok((response, Box::new(async { Ok(()) }) as IoFuture))
        }
    }
}

/// One allowed request on its way out, on the route's pooled client.
struct Outgoing {
    client: Arc<OutboundClient>,
    route: Arc<str>,
    request_id: Arc<str>,
    metrics: Arc<RouteMetrics>,
}

impl Outgoing {
    fn refuse(&self, refusal: Refusal, uri: &http::Uri) -> Error {
        refusal.log(&self.route, &self.request_id, uri);
        self.metrics.outbound(OutboundOutcome::Denied);
        Error::DestinationIpProhibited
    }

    /// Sends an allowed request on the route's pooled client (whose connector resolves, checks
    /// and connects: `outbound_client`), within the request's timeouts: the first byte of the
    /// response within `first_byte_timeout` (connecting included), each later frame within
    /// `between_bytes_timeout`.
    async fn send(
        self,
        request: http::Request<WasiBody>,
        options: RequestOptions,
    ) -> Result<(http::Response<WasiBody>, IoFuture), Error> {
        let uri = request.uri().clone();
        let first_byte_timeout = options
            .first_byte_timeout
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let between_bytes_timeout = options
            .between_bytes_timeout
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let sent = tokio::time::timeout(first_byte_timeout, self.client.send(request)).await;
        let response = match sent {
            Err(_) => {
                self.metrics.outbound(OutboundOutcome::Allowed);
                return Err(Error::ConnectionReadTimeout);
            }
            Ok(Err(Failure::Refused(refusal))) => return Err(self.refuse(refusal, &uri)),
            Ok(Err(Failure::Failed(error))) => {
                // The policy let it go; the network did not.
                self.metrics.outbound(OutboundOutcome::Allowed);
                return Err(error);
            }
            Ok(Ok(response)) => response,
        };
        self.metrics.outbound(OutboundOutcome::Allowed);
        // Tokio panics on a zero interval: 1 ns is as good as zero.
        let between = between_bytes_timeout.max(Duration::from_nanos(1));
        let mut timeout = tokio::time::interval(between);
        timeout.reset();
        use http_body_util::BodyExt;
        let response = response.map(|incoming| TimedBody { incoming, timeout }.boxed_unsync());
        // The pooled client drives its connections itself.
        Ok((response, Box::new(async { Ok(()) }) as IoFuture))
    }
}

/// How connecting to an allowed host ended without a connection.
pub enum ConnectOutcome {
    Refused(Refusal),
    DnsTimeout,
    DnsError(String),
    Timeout,
    Io(std::io::Error),
}

/// Resolves `host`, checks every address against `grants`, connects to a checked address within
/// `timeout`, and checks the peer once more (an address of this machine that no class gives
/// away is still this machine: the admin listener may be behind it).
pub async fn connect_checked(
    allowlist: &Allowlist,
    grants: &[Grant],
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<TcpStream, ConnectOutcome> {
    let addresses = resolve(host, port, timeout).await?;
    allowlist
        .check(grants, &addresses, false)
        .map_err(ConnectOutcome::Refused)?;
    let stream = connect(&addresses, timeout).await?;
    if let (Ok(peer), Ok(local)) = (stream.peer_addr(), stream.local_addr()) {
        let same_host = canonical(peer.ip()) == canonical(local.ip());
        allowlist
            .check(grants, &[peer], same_host)
            .map_err(ConnectOutcome::Refused)?;
    }
    Ok(stream)
}

/// The addresses of `host` (a name, an IPv4 address or a bracketed IPv6 one), every one of them,
/// within `timeout`.
async fn resolve(
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<Vec<SocketAddr>, ConnectOutcome> {
    let literal = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = literal.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let not_found = || ConnectOutcome::DnsError("address not available".into());
    let addresses: Vec<SocketAddr> =
        match tokio::time::timeout(timeout, tokio::net::lookup_host((host, port))).await {
            Err(_) => return Err(ConnectOutcome::DnsTimeout),
            Ok(Err(_)) => return Err(not_found()),
            Ok(Ok(addresses)) => addresses.collect(),
        };
    if addresses.is_empty() {
        return Err(not_found());
    }
    Ok(addresses)
}

/// Connects to the first of `addresses` that accepts, within `timeout` for all of them.
async fn connect(addresses: &[SocketAddr], timeout: Duration) -> Result<TcpStream, ConnectOutcome> {
    let attempts = async {
        let mut last = None;
        for address in addresses {
            match TcpStream::connect(address).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last = Some(e),
            }
        }
        Err(ConnectOutcome::Io(last.unwrap_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::AddrNotAvailable,
                "no address to connect to",
            )
        })))
    };
    tokio::time::timeout(timeout, attempts)
        .await
        .map_err(|_| ConnectOutcome::Timeout)?
}

/// A response body whose frames must come within the between-bytes timeout.
struct TimedBody {
    incoming: hyper::body::Incoming,
    timeout: tokio::time::Interval,
}

impl http_body::Body for TimedBody {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Error>>> {
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(if e.is_timeout() {
                Error::HttpResponseTimeout
            } else {
                Error::from(e)
            }))),
            Poll::Ready(Some(Ok(frame))) => {
                self.timeout.reset();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => {
                ready!(self.timeout.poll_tick(cx));
                Poll::Ready(Some(Err(Error::ConnectionReadTimeout)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.incoming.size_hint()
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

    fn decision(rules: &[&str], uri: &str) -> Decision {
        let rules: Vec<_> = rules
            .iter()
            .map(|r| OutboundRule::parse(r).unwrap())
            .collect();
        decide(&rules, &uri.parse().unwrap())
    }

    #[test]
    fn self_is_reached_in_any_case_and_only_through_a_rule_naming_it() {
        for uri in ["http://self/x", "http://SELF/x", "http://Self/x"] {
            assert_eq!(decision(&["http://self"], uri), Decision::SelfCall, "{uri}");
            assert_eq!(decision(&["http://SELF"], uri), Decision::SelfCall, "{uri}");
            for wildcard in ["http://*", "*://*:*", "http://*:80"] {
                assert_eq!(
                    decision(&[wildcard], uri),
                    Decision::Denied,
                    "{wildcard} {uri}"
                );
            }
        }
        assert_eq!(
            decision(&["http://self"], "http://self:8080/x"),
            Decision::Denied
        );
    }

    #[test]
    fn rules_say_how_they_name_host_and_port() {
        let grant = |host, port| Grant { host, port };
        use HostGrant as H;
        use PortGrant as P;
        assert_eq!(
            decision(&["http://127.0.0.1:*"], "http://127.0.0.1:9090/"),
            Decision::Network(vec![grant(H::Named, P::Wildcard)])
        );
        assert_eq!(
            decision(
                &["https://*.example.com", "*://*:*"],
                "https://a.example.com/"
            ),
            Decision::Network(vec![
                grant(H::Wildcard, P::Named),
                grant(H::Wildcard, P::Wildcard)
            ])
        );
        assert_eq!(
            decision(&["http://LocalHost:8080"], "http://localhost:8080/"),
            Decision::Network(vec![grant(H::Named, P::Named)])
        );
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn addresses_are_classified() {
        use AddressClass::*;
        for (address, class) in [
            ("127.0.0.1", Loopback),
            ("127.255.0.9", Loopback),
            ("::1", Loopback),
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", Unspecified),
            ("::", Unspecified),
            ("10.1.2.3", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("192.168.1.1", Private),
            ("100.64.0.1", Private),
            ("169.254.169.254", LinkLocal),
            ("fe80::1", LinkLocal),
            ("fc00::1", Private),
            ("fd12:3456::1", Private),
            ("fec0::1", Private),
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:10.0.0.1", Private),
            ("::ffff:169.254.1.1", LinkLocal),
            ("64:ff9b::a9fe:a9fe", LinkLocal),
            ("::ffff:93.184.216.34", Public),
            ("93.184.216.34", Public),
            ("172.32.0.1", Public),
            ("100.128.0.1", Public),
            ("2606:4700::1111", Public),
        ] {
            assert_eq!(classify(ip(address)), class, "{address}");
        }
    }

    fn allowlist(private: PrivateAddresses, admin: &str) -> Allowlist {
        Allowlist {
            rules: Vec::new(),
            admin: admin.parse().unwrap(),
            private,
        }
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    const NAMED: Grant = Grant {
        host: HostGrant::Named,
        port: PortGrant::Wildcard,
    };
    const WILDCARD: Grant = Grant {
        host: HostGrant::Wildcard,
        port: PortGrant::Wildcard,
    };
    const NAMED_PORT: Grant = Grant {
        host: HostGrant::Named,
        port: PortGrant::Named,
    };

    #[test]
    fn wildcards_reach_only_public_addresses_while_private_ones_are_denied() {
        let list = allowlist(PrivateAddresses::Deny, "127.0.0.1:9090");
        let public = addr("93.184.216.34:443");
        let private = addr("10.0.0.1:443");
        assert_eq!(list.check(&[WILDCARD], &[public], false), Ok(()));
        assert_eq!(
            list.check(&[WILDCARD], &[public, private], false),
            Err(Refusal::Internal(private)),
            "every address is checked"
        );
        assert_eq!(list.check(&[WILDCARD, NAMED], &[private], false), Ok(()));
        let open = allowlist(PrivateAddresses::Allow, "127.0.0.1:9090");
        assert_eq!(open.check(&[WILDCARD], &[private], false), Ok(()));
    }

    #[test]
    fn the_admin_listener_needs_a_rule_naming_its_port() {
        let list = allowlist(PrivateAddresses::Deny, "127.0.0.1:9090");
        let admin = addr("127.0.0.1:9090");
        assert_eq!(
            list.check(&[NAMED], &[admin], false),
            Err(Refusal::Admin(admin))
        );
        assert_eq!(list.check(&[NAMED_PORT], &[admin], false), Ok(()));
        assert_eq!(
            list.check(&[NAMED], &[addr("127.0.0.1:9091")], false),
            Ok(())
        );
        let unspecified = addr("0.0.0.0:9090");
        assert_eq!(
            list.check(&[NAMED], &[unspecified], false),
            Err(Refusal::Admin(unspecified))
        );
        let mapped = addr("[::ffff:127.0.0.1]:9090");
        assert_eq!(
            list.check(&[NAMED], &[mapped], false),
            Err(Refusal::Admin(mapped))
        );
        // Another loopback address is another listener.
        assert_eq!(
            list.check(&[NAMED], &[addr("127.0.0.2:9090")], false),
            Ok(())
        );
    }

    #[test]
    fn an_admin_bound_to_every_address_is_behind_any_local_one() {
        let list = allowlist(PrivateAddresses::Allow, "0.0.0.0:9090");
        for local in ["127.0.0.1:9090", "127.0.0.5:9090", "[::1]:9090"] {
            let local = addr(local);
            assert_eq!(
                list.check(&[NAMED], &[local], false),
                Err(Refusal::Admin(local))
            );
        }
        // This machine's own public address, seen once connected.
        let own = addr("203.0.113.7:9090");
        assert_eq!(list.check(&[NAMED], &[own], false), Ok(()));
        assert_eq!(list.check(&[NAMED], &[own], true), Err(Refusal::Admin(own)));
        assert_eq!(list.check(&[NAMED_PORT], &[own], true), Ok(()));
        let v6 = allowlist(PrivateAddresses::Allow, "[::]:9090");
        assert_eq!(
            v6.check(&[NAMED], &[addr("127.0.0.1:9090")], false),
            Err(Refusal::Admin(addr("127.0.0.1:9090")))
        );
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
