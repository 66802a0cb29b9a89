//! The client's identity at the edge: who sent a request, over what, and how to trace it.
//!
//! For every request from outside, [`ClientPolicy::apply`] rewrites the headers a guest (or,
//! later, an upstream) reads to learn about the client:
//!
//! * `forwarded` (RFC 7239) and `x-forwarded-for`, `-proto`, `-host`: from a peer that is not
//!   in `[server] trusted_proxies` whatever it sent is replaced by what the gateway saw; from a
//!   trusted proxy the chain is kept and the peer is appended, and the client's address is the
//!   nearest address in the chain that is not a trusted proxy;
//! * `x-request-id`: a new one for every request, unless `[server] trust_request_id` is on and
//!   a trusted proxy sent a well-formed one;
//! * `traceparent` (W3C Trace Context): kept when well-formed, so guests' outgoing calls can
//!   carry it; a new one is made when it is missing or malformed;
//! * `x-wasmgate-client-cert-subject` and `-san`: the verified client certificate's identity on
//!   an mTLS listener (copies a client sent are removed with every other `x-wasmgate-*`).
//!
//! This runs on every request, so the values are built without `format!` (whose machinery cost
//! more than the rest of the stage together; `cargo bench --bench request_path`), each in one
//! buffer that becomes its header value without a copy.

use crate::config::parse_cidr;
use crate::connection_info::ConnectionInfo;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

pub const FORWARDED: HeaderName = HeaderName::from_static("forwarded");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const CLIENT_CERT_SUBJECT: HeaderName =
    HeaderName::from_static("x-wasmgate-client-cert-subject");
pub const CLIENT_CERT_SAN: HeaderName = HeaderName::from_static("x-wasmgate-client-cert-san");

/// A CIDR block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    fn contains(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        match (canonical(self.network), address) {
            (IpAddr::V4(network), IpAddr::V4(address)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(network) & mask == u32::from(address) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(address)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(network) & mask == u128::from(address) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4 address inside IPv6 (`::ffff:a.b.c.d`) as the IPv4 address.
fn canonical(address: IpAddr) -> IpAddr {
    match address {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(address, IpAddr::V4),
        v4 => v4,
    }
}

/// What the request path needs to know about the client, from `[server]`.
#[derive(Debug, Clone, Default)]
pub struct ClientPolicy {
    trusted: Vec<Cidr>,
    trust_request_id: bool,
}

/// What [`ClientPolicy::apply`] settled about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// The client's address (from a trusted chain, a PROXY header, or the TCP peer).
    pub address: IpAddr,
    /// The request id the request and its response carry.
    pub request_id: Arc<str>,
}

impl ClientPolicy {
    /// From `[server] trusted_proxies` and `trust_request_id`; the entries were checked when
    /// the config was parsed.
    pub fn new(trusted_proxies: &[String], trust_request_id: bool) -> anyhow::Result<ClientPolicy> {
        let trusted = trusted_proxies
            .iter()
            .map(|entry| parse_cidr(entry).map(|(network, prefix)| Cidr { network, prefix }))
            .collect::<anyhow::Result<_>>()?;
        Ok(ClientPolicy {
            trusted,
            trust_request_id,
        })
    }

    /// Whether `address` is in `[server] trusted_proxies` (a PROXY protocol header is taken
    /// only from such a peer).
    pub fn trusts(&self, address: IpAddr) -> bool {
        self.is_trusted(canonical(address))
    }

    fn is_trusted(&self, address: IpAddr) -> bool {
        self.trusted.iter().any(|cidr| cidr.contains(address))
    }

    /// Rewrites the client-identity headers of a request that came on `connection` for `host`
    /// (the request's normalised host, if any); see the module docs.
    pub fn apply(
        &self,
        headers: &mut HeaderMap,
        connection: &ConnectionInfo,
        host: Option<&str>,
    ) -> Client {
        let peer = canonical(connection.client.ip());
        let trusted_peer = self.is_trusted(peer);
        let scheme = connection.scheme.as_str();
        // Up to six headers are added below: grow the map once, not as each arrives.
        headers.reserve(6);

        let address = if trusted_peer {
            let chain = forwarded_for_chain(headers);
            chain
                .iter()
                .rev()
                .copied()
                .find(|hop| !self.is_trusted(*hop))
                .or_else(|| chain.first().copied())
                .unwrap_or(peer)
        } else {
            peer
        };

        let request_id: Arc<str> = match headers.get(&REQUEST_ID).and_then(|v| v.to_str().ok()) {
            Some(id) if trusted_peer && self.trust_request_id && is_request_id(id) => id.into(),
            _ => new_request_id(),
        };

        let mut peer_text = String::with_capacity(48);
        push_address(&mut peer_text, peer);
        if trusted_peer {
            append(headers, X_FORWARDED_FOR, &peer_text);
            append(headers, FORWARDED, &forwarded_element(peer, scheme, host));
            if !headers.contains_key(&X_FORWARDED_PROTO) {
                headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
            }
            if let Some(host) = host
                && !headers.contains_key(&X_FORWARDED_HOST)
            {
                set(headers, X_FORWARDED_HOST, host);
            }
        } else {
            set_owned(headers, X_FORWARDED_FOR, peer_text);
            set_owned(headers, FORWARDED, forwarded_element(peer, scheme, host));
            headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(scheme));
            match host {
                Some(host) => set(headers, X_FORWARDED_HOST, host),
                None => {
                    headers.remove(&X_FORWARDED_HOST);
                }
            }
        }
        set(headers, REQUEST_ID, &request_id);

        let traceparent_ok = headers
            .get(&TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(is_traceparent);
        if !traceparent_ok {
            headers.insert(TRACEPARENT, new_traceparent());
        }

        if let Some(cert) = connection
            .tls
            .as_ref()
            .and_then(|tls| tls.client_cert.as_ref())
        {
            set(headers, CLIENT_CERT_SUBJECT, &cert.subject);
            set(headers, CLIENT_CERT_SAN, &cert.san.join(", "));
        }
        Client {
            address,
            request_id,
        }
    }
}

/// The addresses of every `x-forwarded-for` header, in order; unparsable entries end the
/// chain there (nothing before them can be trusted).
fn forwarded_for_chain(headers: &HeaderMap) -> Vec<IpAddr> {
    let mut chain = Vec::new();
    for value in headers.get_all(&X_FORWARDED_FOR) {
        let Ok(text) = value.to_str() else {
            chain.clear();
            continue;
        };
        for hop in text.split(',') {
            match parse_hop(hop.trim()) {
                Some(address) => chain.push(canonical(address)),
                None => chain.clear(),
            }
        }
    }
    chain
}

/// `1.2.3.4`, `1.2.3.4:567`, `2001:db8::1`, `[2001:db8::1]:567`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(address) = hop.parse() {
        return Some(address);
    }
    if let Some(rest) = hop.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    hop.rsplit_once(':')?.0.parse().ok()
}

/// One RFC 7239 `forwarded` element.
fn forwarded_element(peer: IpAddr, scheme: &str, host: Option<&str>) -> String {
    let mut element = String::with_capacity(64 + host.map_or(0, str::len));
    element.push_str("for=");
    match peer {
        IpAddr::V4(_) => push_address(&mut element, peer),
        IpAddr::V6(_) => {
            element.push_str("\"[");
            push_address(&mut element, peer);
            element.push_str("]\"");
        }
    }
    element.push_str(";proto=");
    element.push_str(scheme);
    if let Some(host) = host {
        element.push_str(";host=\"");
        element.push_str(host);
        element.push('"');
    }
    element
}

/// Appends `address` as text: IPv4 (what nearly every request has) digit by digit, IPv6
/// through `Display`.
fn push_address(out: &mut String, address: IpAddr) {
    match address {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

fn set(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    } else {
        headers.remove(name);
    }
}

/// [`set`] for a value built for the header: its buffer becomes the value, uncopied.
fn set_owned(headers: &mut HeaderMap, name: HeaderName, value: String) {
    if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(value)) {
        headers.insert(name, value);
    } else {
        headers.remove(name);
    }
}

/// Appends `value` to the `name` headers' comma-separated list, as one header.
fn append(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    let mut all: Vec<&str> = headers
        .get_all(&name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    all.push(value);
    let joined = all.join(", ");
    set_owned(headers, name, joined);
}

/// 1 to 200 characters of letters, digits, `-`, `_`, `.`.
fn is_request_id(id: &str) -> bool {
    (1..=200).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// `00-<32 hex>-<16 hex>-<2 hex>`, lower-case, ids not all zero (W3C Trace Context, version 00;
/// a later version's extra fields are accepted as the spec asks).
pub fn is_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    if parts.len() < 4 {
        return false;
    }
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let (version, trace, parent, flags) = (parts[0], parts[1], parts[2], parts[3]);
    hex(version, 2)
        && version != "ff"
        && (version != "00" || parts.len() == 4)
        && hex(trace, 32)
        && trace.bytes().any(|b| b != b'0')
        && hex(parent, 16)
        && parent.bytes().any(|b| b != b'0')
        && hex(flags, 2)
}

/// A new request id: a random (v4) UUID's 32 hex digits.
pub fn new_request_id() -> Arc<str> {
    let mut buffer = uuid::Uuid::encode_buffer();
    Arc::from(&*uuid::Uuid::new_v4().simple().encode_lower(&mut buffer))
}

/// A new sampled `traceparent` with random ids: `00-<trace id>-<parent id>-01`.
fn new_traceparent() -> HeaderValue {
    const TRACE: std::ops::Range<usize> = 3..35;
    const PARENT: std::ops::Range<usize> = 36..52;
    let mut text = *b"00-________________________________-________________-01";
    uuid::Uuid::new_v4().simple().encode_lower(&mut text[TRACE]);
    let mut parent = uuid::Uuid::encode_buffer();
    let parent = uuid::Uuid::new_v4().simple().encode_lower(&mut parent);
    text[PARENT].copy_from_slice(&parent.as_bytes()[..PARENT.len()]);
    HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connection_info::{ClientCert, Scheme, TlsInfo};

    fn connection(peer: &str, scheme: Scheme) -> ConnectionInfo {
        let peer = peer.parse().unwrap();
        ConnectionInfo {
            listener: "l".into(),
            scheme,
            peer,
            client: peer,
            tls: None,
            redirect: None,
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    fn get<'a>(map: &'a HeaderMap, name: &str) -> &'a str {
        map.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    #[test]
    fn an_untrusted_peer_cannot_spoof_its_address() {
        let policy = ClientPolicy::new(&["10.0.0.0/8".into()], true).unwrap();
        let mut map = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("forwarded", "for=1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("x-request-id", "client-chosen"),
        ]);
        let client = policy.apply(
            &mut map,
            &connection("203.0.113.9:5000", Scheme::Http),
            Some("a.example"),
        );
        assert_eq!(client.address, "203.0.113.9".parse::<IpAddr>().unwrap());
        assert_eq!(get(&map, "x-forwarded-for"), "203.0.113.9");
        assert_eq!(
            get(&map, "forwarded"),
            "for=203.0.113.9;proto=http;host=\"a.example\""
        );
        assert_eq!(get(&map, "x-forwarded-proto"), "http");
        assert_eq!(get(&map, "x-forwarded-host"), "a.example");
        assert_ne!(&*client.request_id, "client-chosen");
        assert_eq!(get(&map, "x-request-id"), &*client.request_id);
    }

    #[test]
    fn a_trusted_proxy_chain_is_kept_and_names_the_client() {
        let policy = ClientPolicy::new(&["10.0.0.0/8".into(), "192.168.1.1".into()], true).unwrap();
        let mut map = headers(&[
            ("x-forwarded-for", "198.51.100.7, 192.168.1.1"),
            ("x-forwarded-proto", "https"),
            ("x-request-id", "abc-123"),
        ]);
        let client = policy.apply(&mut map, &connection("10.1.2.3:5000", Scheme::Http), None);
        assert_eq!(client.address, "198.51.100.7".parse::<IpAddr>().unwrap());
        assert_eq!(
            get(&map, "x-forwarded-for"),
            "198.51.100.7, 192.168.1.1, 10.1.2.3"
        );
        assert_eq!(
            get(&map, "x-forwarded-proto"),
            "https",
            "the proxy's proto is kept"
        );
        assert_eq!(&*client.request_id, "abc-123");
        // A malformed id from a trusted proxy is replaced.
        let mut map = headers(&[("x-request-id", "has spaces")]);
        let client = policy.apply(&mut map, &connection("10.1.2.3:5000", Scheme::Http), None);
        assert_ne!(&*client.request_id, "has spaces");
    }

    #[test]
    fn traceparent_is_kept_when_valid_and_made_otherwise() {
        let policy = ClientPolicy::default();
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut map = headers(&[("traceparent", valid)]);
        policy.apply(&mut map, &connection("127.0.0.1:1", Scheme::Https), None);
        assert_eq!(get(&map, "traceparent"), valid);
        for bad in [
            "",
            "00-0000",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let mut map = headers(&[("traceparent", bad)]);
            policy.apply(&mut map, &connection("127.0.0.1:1", Scheme::Https), None);
            let made = get(&map, "traceparent");
            assert!(is_traceparent(made) && made != bad, "{bad:?} -> {made}");
        }
        let mut map = HeaderMap::new();
        policy.apply(&mut map, &connection("[::1]:1", Scheme::Https), None);
        assert!(is_traceparent(get(&map, "traceparent")));
        assert_eq!(get(&map, "forwarded"), "for=\"[::1]\";proto=https");
    }

    #[test]
    fn addresses_and_ids_are_written_as_display_would() {
        for address in [
            "0.0.0.0",
            "1.2.3.4",
            "10.20.255.9",
            "199.99.100.250",
            "2001:db8::1",
        ] {
            let address: IpAddr = address.parse().unwrap();
            let mut text = String::new();
            push_address(&mut text, address);
            assert_eq!(text, address.to_string());
        }
        let mut map = HeaderMap::new();
        policy_apply(&mut map, "[::ffff:192.0.2.10]:1");
        assert_eq!(get(&map, "x-forwarded-for"), "192.0.2.10");
        let ids: Vec<Arc<str>> = (0..3).map(|_| new_request_id()).collect();
        for id in &ids {
            assert!(
                id.len() == 32
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
        }
        assert!(ids[0] != ids[1] && ids[1] != ids[2]);
        let made = new_traceparent();
        let made = made.to_str().unwrap();
        assert!(is_traceparent(made), "{made}");
        assert_ne!(made, new_traceparent().to_str().unwrap());
    }

    fn policy_apply(map: &mut HeaderMap, peer: &str) -> Client {
        ClientPolicy::default().apply(map, &connection(peer, Scheme::Http), None)
    }

    #[test]
    fn the_client_certificate_reaches_the_guest() {
        let mut info = connection("127.0.0.1:1", Scheme::Https);
        info.tls = Some(TlsInfo {
            version: "TLSv1.3",
            server_name: None,
            client_cert: Some(ClientCert {
                subject: "CN=client".into(),
                san: vec!["client.example".into(), "10.0.0.1".into()],
            }),
        });
        let mut map = HeaderMap::new();
        ClientPolicy::default().apply(&mut map, &info, None);
        assert_eq!(get(&map, "x-wasmgate-client-cert-subject"), "CN=client");
        assert_eq!(
            get(&map, "x-wasmgate-client-cert-san"),
            "client.example, 10.0.0.1"
        );
    }

    #[test]
    fn cidr_matching() {
        let cidr = |text: &str| {
            let (network, prefix) = parse_cidr(text).unwrap();
            Cidr { network, prefix }
        };
        assert!(cidr("10.0.0.0/8").contains("10.255.0.1".parse().unwrap()));
        assert!(!cidr("10.0.0.0/8").contains("11.0.0.1".parse().unwrap()));
        assert!(cidr("10.0.0.0/8").contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(cidr("0.0.0.0/0").contains("8.8.8.8".parse().unwrap()));
        assert!(cidr("fd00::/8").contains("fd12::1".parse().unwrap()));
        assert!(!cidr("fd00::/8").contains("fe80::1".parse().unwrap()));
        assert!(cidr("127.0.0.1").contains("127.0.0.1".parse().unwrap()));
        assert!(!cidr("127.0.0.1").contains("127.0.0.2".parse().unwrap()));
    }
}
