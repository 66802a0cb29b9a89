//! Fuzzes the request guards on arbitrary request heads: a URI (origin or absolute form),
//! headers (with any number of `Host`s) and a header budget. Nothing may panic, and:
//!
//! * a path the guards accept has no `\`, and no segment that decodes (every `%XX`) to `.`,
//!   `..`, or something with `/`, `\` or NUL in it: checked against a decoder written here;
//! * an accepted host is lower case, and normalising it again gives it back (one spelling);
//! * the host's ASCII case does not change the verdict;
//! * a header section larger than the budget is refused with 431.

#![no_main]

use arbitrary::Arbitrary;
use http::header::{HOST, HeaderName, HeaderValue};
use http::{HeaderMap, Uri};
use libfuzzer_sys::fuzz_target;
use wasmgate::guards::{self, Rejection};

#[derive(Arbitrary, Debug)]
struct Head {
    uri: String,
    /// Values for `Host` headers (none, one, or several).
    hosts: Vec<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
    max_header_bytes: u16,
}

fuzz_target!(|head: Head| {
    let Ok(uri) = Uri::try_from(head.uri.as_str()) else {
        return;
    };
    let mut headers = HeaderMap::new();
    for value in head.hosts.iter().take(4) {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(HOST, value);
        }
    }
    for (name, value) in head.headers.iter().take(16) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(name, value);
        }
    }
    let max = u64::from(head.max_header_bytes);
    let verdict = guards::check(&uri, &headers, max);

    if guards::header_bytes(&headers) > max {
        assert_eq!(verdict, Err(Rejection::HeadersTooLarge));
    }
    if guards::check_path(uri.path()).is_ok() {
        check_accepted_path(uri.path());
    }
    if let Ok(Some(host)) = &verdict {
        assert_eq!(
            *host,
            host.to_ascii_lowercase(),
            "host {host:?} is not lower case"
        );
        assert_eq!(
            guards::normalize_authority(host).as_ref(),
            Ok(host),
            "normalising {host:?} again changes it"
        );
    }
    for value in &head.hosts {
        if let Ok(authority) = std::str::from_utf8(value) {
            let once = guards::normalize_authority(authority);
            let upper = guards::normalize_authority(&authority.to_ascii_uppercase());
            assert_eq!(once, upper, "the case of {authority:?} changes the verdict");
        }
    }
});

/// What an accepted path must not contain, by full percent-decoding of each segment.
fn check_accepted_path(path: &str) {
    assert!(!path.contains('\\'), "accepted a `\\` in {path:?}");
    for segment in path.split('/') {
        let decoded = percent_decode(segment);
        assert!(
            decoded != b"." && decoded != b"..",
            "accepted a dot segment {segment:?} in {path:?}"
        );
        assert!(
            !decoded.iter().any(|b| matches!(b, b'/' | b'\\' | 0)),
            "accepted an encoded separator or NUL {segment:?} in {path:?}"
        );
    }
}

/// Decodes every valid `%XX`; leaves anything else as it is.
fn percent_decode(segment: &str) -> Vec<u8> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    out
}
