//! Traffic splitting: a route whose requests are shared by weight between several backends
//! (component versions, or a component and an upstream), optionally sticky.
//!
//! Without stickiness, each request maps to a point in `0..total weight` taken from a counter
//! scrambled by splitmix64, and the backend whose cumulative range holds the point serves it:
//! shares converge on the weights quickly and no lock is taken. With stickiness, the backend is
//! chosen by weighted rendezvous hashing of the client's cookie or header value: every backend
//! scores `weight / -ln(u)`, `u` a hash of the value and the backend's name, and the highest
//! score wins. The same value always lands on the same backend, in every process; changing one
//! backend's weight moves clients only to or from that backend (none move between the others),
//! and the order of the targets does not matter, which is what a canary ramp wants. A sticky
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

/// A backend, its weight and the end of its range of points, and its request counter.
pub struct Weighted {
    pub backend: Backend,
    weight: u32,
    /// The points below this (and at or above the previous backend's `upto`) are this one's.
    upto: u64,
    /// The backend's own seed for rendezvous hashing (a hash of its name).
    seed: u64,
    /// `wasmgate_split_requests_total{route, target}`.
    requests: prometheus::IntCounter,
}

/// One backend of a split, as the loader hands it over.
pub struct SplitBackend {
    pub backend: Backend,
    pub weight: u32,
    /// The target's name (its `target` label): what sticky clients are hashed with.
    pub name: String,
    pub requests: prometheus::IntCounter,
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
    pub fn new(backends: Vec<SplitBackend>, sticky: Option<StickyKey>) -> Split {
        let mut upto = 0;
        let backends = backends
            .into_iter()
            .map(|split| {
                upto += u64::from(split.weight);
                Weighted {
                    backend: split.backend,
                    weight: split.weight,
                    upto,
                    seed: stable_hash(split.name.as_bytes()),
                    requests: split.requests,
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
        // The sticky key's hash, if the request has one (a new cookie's, if it gets one).
        let (key, set_cookie) = match &self.sticky {
            None => (None, None),
            Some(StickyKey::Header(name)) => {
                (headers.get(name).map(|v| stable_hash(v.as_bytes())), None)
            }
            Some(StickyKey::Cookie { name, max_age }) => match cookie(headers, name) {
                Some(value) => (Some(stable_hash(value.as_bytes())), None),
                None => {
                    let value = uuid::Uuid::new_v4().simple().to_string();
                    let mut text = format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax");
                    if let Some(max_age) = max_age {
                        text.push_str(&format!("; Max-Age={}", max_age.as_secs()));
                    }
                    (
                        Some(stable_hash(value.as_bytes())),
                        HeaderValue::try_from(text).ok(),
                    )
                }
            },
        };
        let chosen = match key {
            Some(key) => rendezvous(key, self.backends.iter().map(|w| (w.weight, w.seed)))
                .and_then(|i| self.backends.get(i)),
            None => {
                let point = self.spread();
                // `point < total`, and the last backend's `upto` is `total`: one matches.
                self.backends
                    .iter()
                    .find(|w| point < w.upto)
                    .or(self.backends.last())
            }
        }?;
        chosen.requests.inc();
        Some(Choice {
            backend: &chosen.backend,
            set_cookie,
        })
    }

    /// The next point of the spread: a counter, scrambled (splitmix64) so consecutive requests
    /// land far apart and every window of requests is shared close to the weights.
    fn spread(&self) -> u64 {
        let hash = scramble(self.next.fetch_add(1, Ordering::Relaxed));
        ((u128::from(hash) * u128::from(self.total)) >> 64) as u64
    }
}

/// Weighted rendezvous hashing: the index of the `(weight, seed)` that scores highest for
/// `key` (`weight / -ln(u)`, `u` uniform in (0, 1) from the key and the seed); weight 0 never
/// wins. Each entry wins with probability weight / sum of weights.
fn rendezvous(key: u64, weights: impl Iterator<Item = (u32, u64)>) -> Option<usize> {
    weights
        .enumerate()
        .filter(|(_, (weight, _))| *weight > 0)
        .map(|(i, (weight, seed))| {
            // 53 random bits, centred in their interval: never 0, never 1.
            let u = ((scramble(key ^ seed) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            (i, f64::from(weight) / -u.ln())
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(i, _)| i)
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
    fn a_ramp_moves_clients_only_to_the_raised_target() {
        // A 10 / B 45 / C 45, then A 20: clients move only to A, none between B and C.
        let before = [(10, 1), (45, 2), (45, 3)];
        let after = [(20, 1), (45, 2), (45, 3)];
        let mut counts = [[0u32; 3]; 2];
        for client in 0..20_000u64 {
            let key = stable_hash(&client.to_be_bytes());
            let (b, a) = (
                rendezvous(key, before.into_iter()).unwrap(),
                rendezvous(key, after.into_iter()).unwrap(),
            );
            assert!(b == a || a == 0, "client {client} moved from {b} to {a}");
            counts[0][b] += 1;
            counts[1][a] += 1;
        }
        // Shares follow the weights: 10% then 20 / 110 = 18.2% for A.
        let share = |n: u32| f64::from(n) / 20_000.0;
        assert!((share(counts[0][0]) - 0.10).abs() < 0.01, "{counts:?}");
        assert!(
            (share(counts[1][0]) - 20.0 / 110.0).abs() < 0.01,
            "{counts:?}"
        );
        assert!((share(counts[0][1]) - 0.45).abs() < 0.015, "{counts:?}");
        // Weight 0 never wins.
        assert_eq!(rendezvous(7, [(0, 1), (1, 2)].into_iter()), Some(1));
        assert_eq!(rendezvous(7, [(0, 1)].into_iter()), None);
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
