//! Traffic splitting: a route whose requests are shared by weight between several backends
//! (component versions, or a component and an upstream), optionally sticky.
//!
//! Each request maps to a point in `0..total weight`; the backend whose cumulative range holds
//! the point serves it. Without stickiness the point comes from a counter scrambled by
//! splitmix64, so shares converge on the weights quickly and no lock is taken. With stickiness
//! the point is a hash of the client's cookie or header value: the same value always lands on
//! the same backend, and raising one backend's weight only moves clients towards it (the
//! ranges' boundaries move, nothing else does), which is what a canary ramp wants. A sticky
//! cookie the client does not have yet is made up (a random value) and set on the response.

use crate::config::split::StickyKey;
use crate::generation::Backend;
use http::{HeaderMap, HeaderValue};
use sha2::Digest;
use std::sync::atomic::{AtomicU64, Ordering};

/// One split route's backends and how requests pick one.
pub struct Split {
    backends: Vec<Weighted>,
    /// The sum of the weights (at least 1).
    total: u64,
    sticky: Option<StickyKey>,
    next: AtomicU64,
}

/// A backend, the end of its range of points, and its request counter.
pub struct Weighted {
    pub backend: Backend,
    /// The points below this (and at or above the previous backend's `upto`) are this one's.
    upto: u64,
    /// `wasmgate_split_requests_total{route, target}`.
    requests: prometheus::IntCounter,
}

/// What the split chose for one request.
pub struct Choice<'a> {
    pub backend: &'a Backend,
    /// A new sticky cookie for the response, for a client that had none.
    pub set_cookie: Option<HeaderValue>,
}

impl Split {
    /// A split over `backends`, each with its weight and request counter (weights add up to
    /// more than zero: the config checks it).
    pub fn new(
        backends: Vec<(Backend, u32, prometheus::IntCounter)>,
        sticky: Option<StickyKey>,
    ) -> Split {
        let mut upto = 0;
        let backends = backends
            .into_iter()
            .map(|(backend, weight, requests)| {
                upto += u64::from(weight);
                Weighted {
                    backend,
                    upto,
                    requests,
                }
            })
            .collect();
        Split {
            backends,
            total: upto.max(1),
            sticky,
            next: AtomicU64::new(0),
        }
    }

    /// The backends, in config order.
    pub fn backends(&self) -> impl Iterator<Item = &Backend> {
        self.backends.iter().map(|w| &w.backend)
    }

    /// Picks the backend for a request with `headers` (`None` only for a split without
    /// backends, which the config refuses).
    pub fn choose(&self, headers: &HeaderMap) -> Option<Choice<'_>> {
        let (point, set_cookie) = match &self.sticky {
            None => (self.spread(), None),
            Some(StickyKey::Header(name)) => match headers.get(name) {
                Some(value) => (self.hashed(value.as_bytes()), None),
                None => (self.spread(), None),
            },
            Some(StickyKey::Cookie { name, max_age }) => match cookie(headers, name) {
                Some(value) => (self.hashed(value.as_bytes()), None),
                None => {
                    let value = uuid::Uuid::new_v4().simple().to_string();
                    let point = self.hashed(value.as_bytes());
                    let mut text = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax");
                    if let Some(max_age) = max_age {
                        text.push_str(&format!("; Max-Age={}", max_age.as_secs()));
                    }
                    (point, HeaderValue::try_from(text).ok())
                }
            },
        };
        // `point < total`, and the last backend's `upto` is `total`: one always matches.
        let chosen = self
            .backends
            .iter()
            .find(|w| point < w.upto)
            .or(self.backends.last())?;
        chosen.requests.inc();
        Some(Choice {
            backend: &chosen.backend,
            set_cookie,
        })
    }

    /// The next point of the spread: a counter, scrambled (splitmix64) so consecutive requests
    /// land far apart and every window of requests is shared close to the weights.
    fn spread(&self) -> u64 {
        point(
            scramble(self.next.fetch_add(1, Ordering::Relaxed)),
            self.total,
        )
    }

    /// A sticky value's point: the same in every process and every version of the gateway.
    fn hashed(&self, value: &[u8]) -> u64 {
        point(stable_hash(value), self.total)
    }
}

/// Where `hash` falls in `0..total`: the same fraction of the range as `hash` is of all u64
/// (not `hash % total`, which reshuffles every client whenever the total changes). Raising one
/// weight then only moves the boundaries next to its range, by its share.
fn point(hash: u64, total: u64) -> u64 {
    ((u128::from(hash) * u128::from(total)) >> 64) as u64
}

/// A hash of `value` that every gateway process and version agrees on (SHA-256's first 8
/// bytes), for choices that must not move between replicas.
pub(crate) fn stable_hash(value: &[u8]) -> u64 {
    let digest = sha2::Sha256::digest(value);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// splitmix64's finaliser: a bijective scramble of `z`.
pub(crate) fn scramble(mut z: u64) -> u64 {
    z = z.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub(crate) fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim_matches('"'))
        .filter(|value| !value.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ramp_moves_clients_only_towards_the_raised_target() {
        // 10/90, then 20/90: the first target's range grows from 10 of 100 to 20 of 110.
        let (mut stayed, mut moved) = (0, 0);
        for client in 0..10_000u64 {
            let hash = stable_hash(&client.to_be_bytes());
            let before = point(hash, 100) < 10;
            let after = point(hash, 110) < 20;
            assert!(!before || after, "client {client} left the raised target");
            if before {
                stayed += 1;
            } else if after {
                moved += 1;
            }
        }
        // About 10% were on it, and about 8% more (20/110 - 10/100) joined.
        assert!((900..1100).contains(&stayed), "{stayed}");
        assert!((650..1000).contains(&moved), "{moved}");
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.append(http::header::COOKIE, HeaderValue::from_static("a=1; b=2"));
        headers.append(
            http::header::COOKIE,
            HeaderValue::from_static("canary=\"xyz\""),
        );
        assert_eq!(cookie(&headers, "b"), Some("2"));
        assert_eq!(cookie(&headers, "canary"), Some("xyz"));
        assert_eq!(cookie(&headers, "c"), None);
    }
}
