//! Fuzzes the route table: building it from arbitrary route specs, and looking up arbitrary
//! hosts, methods and paths in it, the way the gateway does: the host goes through
//! `guards::normalize_authority` first (a refused host is a 400 and never reaches the table).
//! Nothing may panic, and a lookup must be consistent:
//!
//! * a found route's `path_info` is the end of the request path and its params are non-empty
//!   segments of it, one per `:param` in its template;
//! * a route that is not visible (a private route, to a client) is never found;
//! * the host's ASCII case does not change the outcome;
//! * a request built to match a visible route (its host, its template with params and the
//!   wildcard filled in, one of its methods) is found (by that route or a more specific one),
//!   never 404 or 405.

#![no_main]

use arbitrary::Arbitrary;
use http::Method;
use libfuzzer_sys::fuzz_target;
use wasmgate::guards::normalize_authority;
use wasmgate::router::{Lookup, RouteSpec, RouteTable};

#[derive(Arbitrary, Debug)]
struct Route {
    host: Option<String>,
    path: String,
    methods: Option<Vec<String>>,
}

#[derive(Arbitrary, Debug)]
struct Request {
    host: Option<String>,
    method: String,
    path: String,
}

/// A request derived from route `route` (modulo the number of routes).
#[derive(Arbitrary, Debug)]
struct Derived {
    route: u8,
    /// Values for the route's `:param` segments (used when non-empty and without `/`).
    params: Vec<String>,
    /// What the trailing `/...` matches (prefixed with `/` when used).
    rest: Option<String>,
    /// The host for routes that take any host; the label in front of a `*.suffix` host.
    host: Option<String>,
    /// Which of the route's methods, or the method for a route that takes any.
    method: u8,
}

#[derive(Arbitrary, Debug)]
struct Input {
    routes: Vec<Route>,
    /// Bit `i` set: route `i` is private (not visible to the lookup).
    private: u32,
    requests: Vec<Request>,
    derived: Vec<Derived>,
}

const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::DELETE,
    Method::OPTIONS,
];

fuzz_target!(|input: Input| {
    if input.routes.len() > 32 {
        return;
    }
    let specs: Vec<RouteSpec<usize>> = input
        .routes
        .iter()
        .enumerate()
        .map(|(index, route)| RouteSpec {
            host: route.host.clone(),
            path: route.path.clone(),
            methods: route.methods.clone(),
            target: index,
        })
        .collect();
    let Ok(table) = RouteTable::new(specs) else {
        return;
    };
    let visible = |index: usize| index >= 32 || input.private & (1 << index) == 0;
    for request in input.requests.iter().take(16) {
        let Ok(method) = Method::from_bytes(request.method.as_bytes()) else {
            continue;
        };
        check_lookup(
            &table,
            &visible,
            request.host.as_deref(),
            &method,
            &request.path,
        );
    }
    let derived = if input.routes.is_empty() {
        &[][..]
    } else {
        &input.derived[..]
    };
    for derived in derived.iter().take(16) {
        let index = usize::from(derived.route) % input.routes.len();
        let route = &input.routes[index];
        if !visible(index) {
            continue;
        }
        let Some((host, method, path)) = build(route, derived) else {
            continue;
        };
        // A route host the table accepts but the guards refuse (e.g. `a..b`) can never be
        // reached; that is a config check, not a routing bug, so it is skipped here.
        if host
            .as_deref()
            .is_some_and(|h| normalize_authority(h).is_err())
        {
            continue;
        }
        let outcome = check_lookup(&table, &visible, host.as_deref(), &method, &path);
        assert!(
            outcome.is_some(),
            "route {index} ({route:?}) does not serve {host:?} {method} {path:?}, built from it"
        );
    }
});

/// Normalises the host as the guards do and looks the request up, twice (the host as given
/// and upper-cased); checks the result and returns the found route's index. `None` too when
/// the guards refuse the host.
fn check_lookup(
    table: &RouteTable<usize>,
    visible: &impl Fn(usize) -> bool,
    host: Option<&str>,
    method: &Method,
    path: &str,
) -> Option<usize> {
    let lookup = |host: Option<&str>| -> Option<Outcome> {
        let host = match host {
            Some(host) => Some(normalize_authority(host).ok()?),
            None => None,
        };
        let found = table.lookup(host.as_deref(), method, path, |t| visible(*t));
        Some(summarize(found, path))
    };
    let outcome = lookup(host);
    let upper = host.map(str::to_ascii_uppercase);
    let again = lookup(upper.as_deref());
    assert_eq!(
        outcome, again,
        "the host's case changed the route: {host:?}"
    );
    match outcome? {
        Outcome::Found(index) => {
            assert!(
                visible(index),
                "private route {index} found for {host:?} {path:?}"
            );
            Some(index)
        }
        _ => None,
    }
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Found(usize),
    MethodNotAllowed(Vec<Method>),
    NotFound,
}

fn summarize(lookup: Lookup<'_, usize>, path: &str) -> Outcome {
    match lookup {
        Lookup::Found(found) => {
            assert!(
                path.ends_with(found.path_info),
                "path_info {:?} is not the end of {path:?}",
                found.path_info
            );
            let params = found
                .template
                .split('/')
                .filter(|s| s.starts_with(':'))
                .count();
            assert_eq!(found.params.len(), params, "{path:?} in {}", found.template);
            for (_, value) in &found.params {
                assert!(!value.is_empty() && !value.contains('/'), "param {value:?}");
                assert!(path.contains(value), "param {value:?} not in {path:?}");
            }
            Outcome::Found(*found.target)
        }
        Lookup::MethodNotAllowed { allow } => {
            assert!(!allow.is_empty(), "405 without an Allow list for {path:?}");
            Outcome::MethodNotAllowed(allow)
        }
        Lookup::NotFound => Outcome::NotFound,
    }
}

/// A request that `route` matches: `None` when the fuzzed parts cannot fill it in.
fn build(route: &Route, derived: &Derived) -> Option<(Option<String>, Method, String)> {
    let host = match route.host.as_deref() {
        None => derived.host.clone(),
        Some(pattern) => match pattern.strip_prefix("*.") {
            Some(suffix) => {
                let label = derived.host.as_deref().unwrap_or("x");
                if label.is_empty() || !label.bytes().all(|b| b.is_ascii_alphanumeric()) {
                    return None;
                }
                Some(format!("{label}.{suffix}"))
            }
            None => Some(pattern.to_string()),
        },
    };
    let method = match &route.methods {
        Some(methods) if !methods.is_empty() => {
            let name = &methods[usize::from(derived.method) % methods.len()];
            Method::from_bytes(name.to_ascii_uppercase().as_bytes()).ok()?
        }
        Some(_) => return None,
        None => METHODS[usize::from(derived.method) % METHODS.len()].clone(),
    };
    let (base, wildcard) = match route.path.strip_suffix("/...") {
        Some(base) => (base, true),
        None => (route.path.as_str(), false),
    };
    let mut params = derived.params.iter();
    let mut path = String::new();
    for (i, segment) in base.split('/').enumerate() {
        if i > 0 {
            path.push('/');
        }
        if segment.starts_with(':') {
            let value = params.next()?;
            if value.is_empty() || value.contains('/') {
                return None;
            }
            path.push_str(value);
        } else {
            path.push_str(segment);
        }
    }
    if wildcard {
        match &derived.rest {
            Some(rest) => {
                path.push('/');
                path.push_str(rest);
            }
            None if path.is_empty() => path.push('/'),
            None => {}
        }
    }
    Some((host, method, path))
}
