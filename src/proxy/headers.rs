//! Proxy hygiene for headers: what must not cross a proxy (hop-by-hop headers, RFC 9110
//! section 7.6.1, and any a `Connection` header names), and the `via` a proxy adds.

use http::header::{CONNECTION, EXPECT, HeaderName, TE, TRANSFER_ENCODING, UPGRADE, VIA};
use http::{HeaderMap, HeaderValue, Version};

/// Hop-by-hop headers, besides those `Connection` names.
const HOP_BY_HOP: [&str; 5] = [
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "http2-settings",
];

/// Removes the headers `Connection` names (they were for the hop that ends here), but for
/// `upgrade` and `te`, which the request stages still read (a client that sends `te: trailers`
/// must name `te` in `Connection`). The gateway does this to a client's request
/// as it arrives, before it adds headers of its own (`x-forwarded-for`, `x-request-id`, a
/// route's `request_set`), so a client cannot name those to have them dropped.
pub fn remove_connection_named(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .filter(|name| *name != UPGRADE && *name != TE)
        .collect();
    for name in named {
        headers.remove(name);
    }
}

/// Removes the hop-by-hop headers that are always such (not those `Connection` names).
fn remove_fixed_hop_by_hop(headers: &mut HeaderMap) {
    // `trailer` is not one: it names the trailers to come, which HTTP/1.1 senders need.
    for name in [CONNECTION, TE, TRANSFER_ENCODING, UPGRADE] {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Removes the hop-by-hop headers, the ones `Connection` names included.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    remove_connection_named(headers);
    remove_fixed_hop_by_hop(headers);
}

/// The protocol an HTTP/1.1 request asks to switch to (`Connection: upgrade` and `Upgrade`,
/// such as `websocket`), if it asks.
pub fn requested_upgrade(headers: &HeaderMap, version: Version) -> Option<HeaderValue> {
    let asks = version == Version::HTTP_11
        && headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    if asks {
        headers.get(UPGRADE).cloned()
    } else {
        None
    }
}

/// A request on its way to a target (its `Connection`-named headers already removed on
/// arrival): hop-by-hop headers removed (but `te: trailers`), `Expect` too (the gateway
/// itself answers `100 Continue` as it starts reading the body, and a target gets the body
/// straight away), and this hop in `via`. A request that asks for `upgrade` keeps asking.
pub fn prepare_request(headers: &mut HeaderMap, version: Version, upgrade: Option<&HeaderValue>) {
    // `te: trailers` says the client takes trailers (gRPC needs it); it is all of TE that may
    // cross, and HTTP/1.1 targets send trailers only to a request that carries it.
    let trailers = headers
        .get_all(TE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("trailers"));
    remove_fixed_hop_by_hop(headers);
    if trailers {
        headers.insert(TE, HeaderValue::from_static("trailers"));
    }
    headers.remove(EXPECT);
    add_via(headers, version);
    if let Some(protocol) = upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, protocol.clone());
    }
}

/// A target's response on its way to the client; a `101 Switching Protocols` keeps the
/// protocol it switches to.
pub fn prepare_response(headers: &mut HeaderMap, switching: bool) {
    let upgrade = switching.then(|| headers.get(UPGRADE).cloned()).flatten();
    remove_hop_by_hop(headers);
    if let Some(protocol) = upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, protocol);
    }
}

fn add_via(headers: &mut HeaderMap, version: Version) {
    let via = match version {
        Version::HTTP_10 => "1.0 wasmgate",
        Version::HTTP_2 => "2 wasmgate",
        Version::HTTP_3 => "3 wasmgate",
        _ => "1.1 wasmgate",
    };
    headers.append(VIA, HeaderValue::from_static(via));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "gzip"),
            ("upgrade", "h2c"),
            ("transfer-encoding", "chunked"),
            ("proxy-authorization", "Basic x"),
            ("x-kept", "yes"),
            ("expect", "100-continue"),
        ] {
            headers.append(name, HeaderValue::from_static(value));
        }
        assert_eq!(requested_upgrade(&headers, Version::HTTP_11), None);
        remove_connection_named(&mut headers);
        prepare_request(&mut headers, Version::HTTP_11, None);
        let left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept", "via"]);
        assert_eq!(headers["via"], "1.1 wasmgate");
    }

    #[test]
    fn an_upgrade_keeps_asking_and_a_switch_keeps_its_protocol() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "connection",
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        headers.insert("upgrade", HeaderValue::from_static("websocket"));
        headers.insert("sec-websocket-key", HeaderValue::from_static("abc"));
        let upgrade = requested_upgrade(&headers, Version::HTTP_11);
        assert_eq!(upgrade, Some(HeaderValue::from_static("websocket")));
        assert_eq!(requested_upgrade(&headers, Version::HTTP_10), None);
        prepare_request(&mut headers, Version::HTTP_11, upgrade.as_ref());
        assert_eq!(headers["connection"], "upgrade");
        assert_eq!(headers["upgrade"], "websocket");
        assert_eq!(headers["sec-websocket-key"], "abc");

        let mut response = HeaderMap::new();
        response.insert("connection", HeaderValue::from_static("Upgrade"));
        response.insert("upgrade", HeaderValue::from_static("websocket"));
        let mut kept = response.clone();
        prepare_response(&mut kept, true);
        assert_eq!(kept["upgrade"], "websocket");
        prepare_response(&mut response, false);
        assert!(response.get("upgrade").is_none());
    }
}
