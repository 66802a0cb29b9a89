//! The request guards: checks on a request's head that run before routing, for every target.
//!
//! They are pure functions of the head, so they can be unit-tested and fuzzed on their own, and
//! each refusal is a [`Rejection`] that knows its status code and the text the client gets:
//!
//! * the header section must fit `max_header_bytes` (431);
//! * the path must not be one that components or upstreams could read as a *different* path
//!   than the router did (400): `.` and `..` segments (literal or percent-encoded), encoded
//!   separators (`%2F`, `%5C`), a raw backslash, an encoded NUL, and broken percent-encoding.
//!   Such paths are refused rather than normalised, so a request always reaches the route its
//!   path names and nothing else;
//! * the host (`:authority`, or else the `Host` header) must be an RFC 3986 host: a reg-name,
//!   an IPv4 address or a bracketed IPv6 address, with an optional numeric port (400). One
//!   `Host` header at most. The host the router sees is lower-cased, without the port or a
//!   trailing dot, so `API.Example.com.:8080` and `api.example.com` route alike.

use http::header::HOST;
use http::{HeaderMap, StatusCode, Uri};
use std::net::Ipv6Addr;

/// Why a request was refused before routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("the request's headers are too large")]
    HeadersTooLarge,
    #[error("the path must not contain `.` or `..` segments")]
    DotSegment,
    #[error("the path must not contain encoded `/` or `\\` (%2F, %5C), a `\\`, or %00")]
    AmbiguousSeparator,
    #[error("the path has a `%` that is not followed by two hex digits")]
    BadPercentEncoding,
    #[error("the host is not a valid host name or address")]
    BadHost,
    #[error("the request has more than one Host header")]
    DuplicateHost,
}

impl Rejection {
    /// The status code the client gets.
    pub fn status(self) -> StatusCode {
        match self {
            Rejection::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Rejection::DotSegment
            | Rejection::AmbiguousSeparator
            | Rejection::BadPercentEncoding
            | Rejection::BadHost
            | Rejection::DuplicateHost => StatusCode::BAD_REQUEST,
        }
    }
}

/// Runs every guard on a request head; on success returns the normalised host (if the request
/// names one), which is what routing matches.
pub fn check(
    uri: &Uri,
    headers: &HeaderMap,
    max_header_bytes: u64,
) -> Result<Option<String>, Rejection> {
    if header_bytes(headers) > max_header_bytes {
        return Err(Rejection::HeadersTooLarge);
    }
    check_path(uri.path())?;
    request_host(uri, headers)
}

/// The size of a header section as HTTP/1.1 would send it.
pub fn header_bytes(headers: &HeaderMap) -> u64 {
    headers
        .iter()
        .map(|(name, value)| (name.as_str().len() + value.len() + 4) as u64)
        .sum()
}

/// Checks a request path; see the module docs for what is refused.
pub fn check_path(path: &str) -> Result<(), Rejection> {
    if path.contains('\\') {
        return Err(Rejection::AmbiguousSeparator);
    }
    for segment in path.split('/') {
        let decoded = decode_segment(segment)?;
        if decoded == "." || decoded == ".." {
            return Err(Rejection::DotSegment);
        }
    }
    Ok(())
}

/// Percent-decodes the characters the path checks care about; refuses encoded separators,
/// NUL and malformed escapes. Other escapes are kept as they are.
fn decode_segment(segment: &str) -> Result<String, Rejection> {
    let bytes = segment.as_bytes();
    let mut out = String::with_capacity(segment.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'%' {
            out.push(char::from(bytes[i]));
            i += 1;
            continue;
        }
        let hex = bytes
            .get(i + 1..i + 3)
            .ok_or(Rejection::BadPercentEncoding)?;
        let value = std::str::from_utf8(hex)
            .ok()
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .ok_or(Rejection::BadPercentEncoding)?;
        match value {
            b'/' | b'\\' | 0 => return Err(Rejection::AmbiguousSeparator),
            b'.' => out.push('.'),
            _ => out.push('%'), // anything else cannot make a dot segment
        }
        i += 3;
    }
    Ok(out)
}

/// The request's host: the URI's authority (HTTP/2 `:authority`, or an absolute-form request
/// target), or else the `Host` header; normalised. `None` when the request names no host.
pub fn request_host(uri: &Uri, headers: &HeaderMap) -> Result<Option<String>, Rejection> {
    let mut hosts = headers.get_all(HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err(Rejection::DuplicateHost);
    }
    let authority = match uri.authority() {
        Some(authority) => authority.as_str(),
        None => match header {
            Some(value) => value.to_str().map_err(|_| Rejection::BadHost)?,
            None => return Ok(None),
        },
    };
    // userinfo is not allowed in an HTTP authority (RFC 9110 4.2.4).
    if authority.contains('@') {
        return Err(Rejection::BadHost);
    }
    if authority.is_empty() {
        return Ok(None);
    }
    normalize_authority(authority).map(Some)
}

/// `host[:port]` ─► the lower-cased host without the port or one trailing dot; `None` if it is
/// not an RFC 3986 host (reg-name, IPv4, or `[IPv6]`) with an optional numeric port.
pub fn normalize_authority(authority: &str) -> Result<String, Rejection> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (literal, after) = rest.split_once(']').ok_or(Rejection::BadHost)?;
        literal
            .parse::<Ipv6Addr>()
            .map_err(|_| Rejection::BadHost)?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or(Rejection::BadHost)?),
        };
        (&authority[..literal.len() + 2], port)
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    if let Some(port) = port
        && (port.len() > 5
            || !port.bytes().all(|b| b.is_ascii_digit())
            || port.parse::<u32>().is_ok_and(|p| p > 65_535))
    {
        return Err(Rejection::BadHost);
    }
    if !host.starts_with('[') {
        let name = host.strip_suffix('.').unwrap_or(host);
        if name.is_empty()
            || name.len() > MAX_HOST_NAME
            || name.ends_with('.')
            || name.starts_with('.')
            || name.contains("..")
            || !name.bytes().all(is_reg_name_byte)
        {
            return Err(Rejection::BadHost);
        }
        return Ok(name.to_ascii_lowercase());
    }
    Ok(host.to_ascii_lowercase())
}

/// The longest host name DNS can carry (RFC 1035: 253 characters without the final dot). A
/// longer one names nothing that can be resolved, and only makes every host lookup longer.
const MAX_HOST_NAME: usize = 253;

/// RFC 3986 reg-name characters: unreserved and sub-delims (percent-encoding is not accepted in
/// a host here: no client needs it and it would let two spellings name one host).
fn is_reg_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host_of(authority: &str) -> Result<String, Rejection> {
        normalize_authority(authority)
    }

    #[test]
    fn hosts_are_normalised() {
        assert_eq!(
            host_of("API.Example.com:8080"),
            Ok("api.example.com".into())
        );
        assert_eq!(host_of("example.com."), Ok("example.com".into()));
        assert_eq!(host_of("127.0.0.1:80"), Ok("127.0.0.1".into()));
        assert_eq!(host_of("[::1]:8080"), Ok("[::1]".into()));
        assert_eq!(host_of("[FE80::1]"), Ok("[fe80::1]".into()));
        // RFC 3986 allows an empty port.
        assert_eq!(host_of("localhost:"), Ok("localhost".into()));
        assert_eq!(host_of("[::1]:"), Ok("[::1]".into()));
    }

    #[test]
    fn malformed_hosts_are_refused() {
        for bad in [
            "[",
            "]",
            "[::1",
            "[::1]x",
            "[not-v6]",
            "[v1.fe]",
            "evil/.example.com",
            "a b",
            "a%2eb",
            "host:80:80",
            "host:port",
            "host:999999",
            "host:65536",
            ":80",
            ".",
            "a..b",
            ".example.com",
            "example.com..",
            "ex\u{e9}.com",
        ] {
            assert_eq!(host_of(bad), Err(Rejection::BadHost), "{bad:?}");
        }
        // The longest DNS name, and one byte more.
        let longest = format!("{}.com", "a".repeat(249));
        assert_eq!(host_of(&format!("{longest}:443")), Ok(longest.clone()));
        assert_eq!(host_of(&format!("{longest}.")), Ok(longest.clone()));
        assert_eq!(host_of(&format!("a{longest}")), Err(Rejection::BadHost));
    }

    #[test]
    fn paths_that_could_be_read_two_ways_are_refused() {
        assert_eq!(check_path("/static/../admin"), Err(Rejection::DotSegment));
        assert_eq!(check_path("/a/%2E%2e/b"), Err(Rejection::DotSegment));
        assert_eq!(check_path("/a/.%2e"), Err(Rejection::DotSegment));
        assert_eq!(check_path("/./x"), Err(Rejection::DotSegment));
        assert_eq!(check_path("/a%2fb"), Err(Rejection::AmbiguousSeparator));
        assert_eq!(check_path("/a%5Cb"), Err(Rejection::AmbiguousSeparator));
        assert_eq!(check_path("/a\\b"), Err(Rejection::AmbiguousSeparator));
        assert_eq!(check_path("/a%00"), Err(Rejection::AmbiguousSeparator));
        assert_eq!(check_path("/a%zz"), Err(Rejection::BadPercentEncoding));
        assert_eq!(check_path("/a%2"), Err(Rejection::BadPercentEncoding));
        for ok in [
            "/",
            "/a.b/..c/x",
            "/%41%42",
            "/files/%20name",
            "/a/.../b",
            "/%e2%82%ac",
        ] {
            assert_eq!(check_path(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn the_host_comes_from_the_authority_or_one_host_header() {
        let mut headers = HeaderMap::new();
        let origin_form: Uri = "/x".parse().unwrap();
        assert_eq!(request_host(&origin_form, &headers), Ok(None));
        headers.insert(HOST, "Example.com:8080".parse().unwrap());
        assert_eq!(
            request_host(&origin_form, &headers),
            Ok(Some("example.com".into()))
        );
        let absolute: Uri = "http://other.example/x".parse().unwrap();
        assert_eq!(
            request_host(&absolute, &headers),
            Ok(Some("other.example".into()))
        );
        headers.append(HOST, "b.example".parse().unwrap());
        assert_eq!(
            request_host(&origin_form, &headers),
            Err(Rejection::DuplicateHost)
        );
        let mut headers = HeaderMap::new();
        headers.insert(HOST, "[".parse().unwrap());
        assert_eq!(
            request_host(&origin_form, &headers),
            Err(Rejection::BadHost)
        );
    }

    #[test]
    fn oversized_headers_are_431() {
        let mut headers = HeaderMap::new();
        headers.insert("x-a", "b".repeat(100).parse().unwrap());
        let uri: Uri = "/".parse().unwrap();
        assert_eq!(check(&uri, &headers, 50), Err(Rejection::HeadersTooLarge));
        assert_eq!(Rejection::HeadersTooLarge.status().as_u16(), 431);
        assert_eq!(check(&uri, &headers, 500), Ok(None));
    }
}
