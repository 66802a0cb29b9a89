//! The route table: which route serves a request, by host, path and method.
//!
//! Matching picks the most specific route, whatever the order of the config:
//!
//! * host: an exact host beats a wildcard host (`*.example.com`; a longer suffix beats a shorter
//!   one) beats a route without a host;
//! * path, segment by segment from the left: a literal segment beats a `:param`, which beats the
//!   trailing `/...` wildcard; a path that ends where the request ends beats a wildcard;
//! * method: a route that lists methods beats one that takes any method.
//!
//! A request whose host and path match some routes but whose method matches none gets a
//! [`Lookup::MethodNotAllowed`] with the methods that would have matched. Two routes that rank
//! equally and could match the same request make [`RouteTable::new`] fail: the table is never
//! ambiguous.
//!
//! The table is immutable once built and generic over what a route leads to, so it can be tested
//! on its own and swapped whole on reload.
//!
//! Lookups do not scan the table: routes are indexed by host (a hash of exact hosts; wildcard
//! suffixes found by looking up each of the request host's parent domains) and, within a host,
//! by the path's first segment, so a request is compared only with the routes that could match
//! it. Building is linear too: conflicts are found among routes of the same host and shape.

use crate::host_pattern::{HostPattern, suffix_matches};
use http::Method;
use std::collections::{BTreeSet, HashMap};
use std::fmt;

/// A route as the table sees it: where it applies and what it leads to.
pub struct RouteSpec<T> {
    pub host: Option<String>,
    pub path: String,
    pub methods: Option<Vec<String>>,
    pub target: T,
}

/// Why a route definition was rejected.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RouteError {
    #[error("path `{path}`: {problem}")]
    Path { path: String, problem: String },
    #[error("host `{host}`: {problem}")]
    Host { host: String, problem: String },
    #[error("method `{0}` is not a valid HTTP method")]
    Method(String),
    #[error("routes {first} and {second} match the same requests with the same priority")]
    Conflict { first: usize, second: usize },
}

/// The result of looking a request up.
pub enum Lookup<'a, T> {
    Found(Match<'a, T>),
    /// Host and path match, the method does not; `allow` is what would.
    MethodNotAllowed {
        allow: Vec<Method>,
    },
    NotFound,
}

/// A matched route and what the match captured.
pub struct Match<'a, T> {
    pub target: &'a T,
    /// The route's path template, for logs and metric labels.
    pub template: &'a str,
    /// `:param` captures, in the template's order.
    pub params: Vec<(&'a str, &'a str)>,
    /// What the trailing `/...` matched (with its leading `/`), empty for other routes.
    pub path_info: &'a str,
}

/// A route's host: a pattern, or any host.
#[derive(Clone, PartialEq, Eq, Hash)]
enum RouteHost {
    Pattern(HostPattern),
    Any,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

#[derive(Debug, Clone)]
struct PathPattern {
    segments: Vec<Segment>,
    wildcard: bool,
}

struct Route<T> {
    host: RouteHost,
    path: PathPattern,
    template: String,
    methods: Option<Vec<Method>>,
    target: T,
}

/// A path's literal segments (`None` for a `:param`) and whether it ends in `/...`: two
/// patterns of one shape and rank match the same requests.
type Shape<'a> = (Vec<Option<&'a str>>, bool);

/// An immutable, validated set of routes.
pub struct RouteTable<T> {
    routes: Vec<Route<T>>,
    /// Routes per exact host.
    exact: HashMap<String, PathIndex>,
    /// Routes per wildcard host suffix (`.example.com`).
    suffixes: HashMap<String, PathIndex>,
    /// The longest of those suffixes: only a request host's last this-many bytes are looked
    /// at for them, so a host of thousands of labels costs no more than a short one.
    longest_suffix: usize,
    any_host: PathIndex,
}

/// The routes of one host pattern, by the first segment of their path.
#[derive(Default)]
struct PathIndex {
    /// Routes whose path starts with a literal segment, by that segment (`""` for `/`).
    by_first: HashMap<String, Vec<usize>>,
    /// Routes whose path starts with a `:param`, and `/...`: any first segment may match.
    any_first: Vec<usize>,
}

impl PathIndex {
    fn insert(&mut self, index: usize, path: &PathPattern) {
        match path.segments.first() {
            Some(Segment::Literal(first)) => {
                self.by_first.entry(first.clone()).or_default().push(index)
            }
            Some(Segment::Param(_)) | None => self.any_first.push(index),
        }
    }

    /// The routes that may match a path whose first segment is `first`.
    fn candidates<'s>(&'s self, first: &str, into: &mut Vec<&'s [usize]>) {
        if let Some(indexes) = self.by_first.get(first) {
            into.push(indexes);
        }
        into.push(&self.any_first);
    }
}

/// How specific a match is; larger is better. Compared field by field.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct Rank {
    host: (u8, usize),
    path: Vec<u8>,
    method_specific: bool,
}

const RANK_WILDCARD: u8 = 0;
const RANK_PARAM: u8 = 1;
const RANK_LITERAL: u8 = 2;
const RANK_END: u8 = 3;

impl RouteHost {
    fn parse(host: Option<&str>) -> Result<RouteHost, RouteError> {
        match host {
            None => Ok(RouteHost::Any),
            Some(host) => HostPattern::parse(host)
                .map(RouteHost::Pattern)
                .map_err(|e| RouteError::Host {
                    host: e.host,
                    problem: e.problem.to_string(),
                }),
        }
    }

    fn rank(&self) -> (u8, usize) {
        match self {
            RouteHost::Pattern(pattern) => pattern.rank(),
            RouteHost::Any => (0, 0),
        }
    }
}

impl PathPattern {
    fn parse(path: &str) -> Result<PathPattern, RouteError> {
        let err = |problem: &str| RouteError::Path {
            path: path.to_string(),
            problem: problem.to_string(),
        };
        let Some(rest) = path.strip_prefix('/') else {
            return Err(err("must start with `/`"));
        };
        let mut parts: Vec<&str> = rest.split('/').collect();
        let wildcard = parts.last() == Some(&"...");
        if wildcard {
            parts.pop();
        }
        let mut segments = Vec::with_capacity(parts.len());
        let mut names = BTreeSet::new();
        let last = parts.len().saturating_sub(1);
        for (i, part) in parts.into_iter().enumerate() {
            if part.is_empty() && (wildcard || i != last) {
                return Err(err("has an empty segment (`//`)"));
            }
            if part == "..." {
                return Err(err("`...` may only be the last segment"));
            }
            if part == "." || part == ".." {
                return Err(err("must not contain `.` or `..` segments"));
            }
            if let Some(name) = part.strip_prefix(':') {
                if name.is_empty()
                    || !name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                {
                    return Err(err(
                        "a parameter is `:` and a name of letters, digits, `_` or `-`",
                    ));
                }
                let name = name.to_ascii_lowercase();
                if !names.insert(name.clone()) {
                    return Err(err(&format!("parameter `:{name}` appears twice")));
                }
                segments.push(Segment::Param(name));
            } else {
                if part
                    .chars()
                    .any(|c| c.is_ascii_control() || c.is_whitespace() || "?#*".contains(c))
                {
                    return Err(err(
                        "a literal segment must not contain `?`, `#`, `*` or spaces",
                    ));
                }
                segments.push(Segment::Literal(part.to_string()));
            }
        }
        Ok(PathPattern { segments, wildcard })
    }

    /// Matches the request path; on success returns the params and the wildcard remainder.
    fn matches<'a>(&'a self, path: &'a str) -> Option<(Vec<(&'a str, &'a str)>, &'a str)> {
        let mut parts = path.strip_prefix('/')?.split('/');
        let mut params = Vec::new();
        // Byte offset in `path` just past the separator that follows the last matched segment.
        let mut consumed = 1;
        for segment in &self.segments {
            let part = parts.next()?;
            match segment {
                Segment::Literal(literal) if literal == part => {}
                Segment::Literal(_) => return None,
                Segment::Param(_) if part.is_empty() => return None,
                Segment::Param(name) => params.push((name.as_str(), part)),
            }
            consumed += part.len() + 1;
        }
        if self.wildcard {
            let info = path.get(consumed - 1..).unwrap_or("");
            Some((params, info))
        } else {
            parts.next().is_none().then_some((params, ""))
        }
    }

    fn rank(&self) -> Vec<u8> {
        let mut rank: Vec<u8> = self
            .segments
            .iter()
            .map(|s| match s {
                Segment::Literal(_) => RANK_LITERAL,
                Segment::Param(_) => RANK_PARAM,
            })
            .collect();
        rank.push(if self.wildcard {
            RANK_WILDCARD
        } else {
            RANK_END
        });
        rank
    }

    /// The shape two equally ranked patterns share when they match the same requests.
    fn shape(&self) -> Shape<'_> {
        let literals = self
            .segments
            .iter()
            .map(|s| match s {
                Segment::Literal(l) => Some(l.as_str()),
                Segment::Param(_) => None,
            })
            .collect();
        (literals, self.wildcard)
    }
}

impl<T> RouteTable<T> {
    /// Validates and indexes routes. Errors carry the 0-based index of the offending route.
    pub fn new(specs: Vec<RouteSpec<T>>) -> Result<RouteTable<T>, (usize, RouteError)> {
        let mut routes = Vec::with_capacity(specs.len());
        for (index, spec) in specs.into_iter().enumerate() {
            let host = RouteHost::parse(spec.host.as_deref()).map_err(|e| (index, e))?;
            let path = PathPattern::parse(&spec.path).map_err(|e| (index, e))?;
            let methods = match spec.methods {
                None => None,
                Some(list) if list.is_empty() => {
                    return Err((
                        index,
                        RouteError::Method(
                            "(an empty list: leave `methods` out for every method)".into(),
                        ),
                    ));
                }
                Some(list) => Some(
                    list.iter()
                        .map(|m| {
                            Method::from_bytes(m.to_ascii_uppercase().as_bytes())
                                .map_err(|_| (index, RouteError::Method(m.clone())))
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                ),
            };
            routes.push(Route {
                host,
                path,
                template: spec.path,
                methods,
                target: spec.target,
            });
        }
        if let Some((i, j)) = first_conflict(&routes) {
            return Err((
                j,
                RouteError::Conflict {
                    first: i + 1,
                    second: j + 1,
                },
            ));
        }
        let mut exact: HashMap<String, PathIndex> = HashMap::new();
        let mut suffixes: HashMap<String, PathIndex> = HashMap::new();
        let mut any_host = PathIndex::default();
        for (index, route) in routes.iter().enumerate() {
            let by_host = match &route.host {
                RouteHost::Pattern(HostPattern::Exact(host)) => {
                    exact.entry(host.clone()).or_default()
                }
                RouteHost::Pattern(HostPattern::Suffix(suffix)) => {
                    suffixes.entry(suffix.clone()).or_default()
                }
                RouteHost::Any => &mut any_host,
            };
            by_host.insert(index, &route.path);
        }
        let longest_suffix = suffixes.keys().map(String::len).max().unwrap_or(0);
        Ok(RouteTable {
            routes,
            exact,
            suffixes,
            longest_suffix,
            any_host,
        })
    }

    /// A table with no routes.
    pub fn empty() -> RouteTable<T> {
        RouteTable {
            routes: Vec::new(),
            exact: HashMap::new(),
            suffixes: HashMap::new(),
            longest_suffix: 0,
            any_host: PathIndex::default(),
        }
    }

    /// Every route's target with its template, in config order.
    pub fn targets(&self) -> impl Iterator<Item = (&str, &T)> {
        self.routes.iter().map(|r| (r.template.as_str(), &r.target))
    }

    /// Finds the route for a request. `host` is normalised as `guards::request_host` does it
    /// (lower case, no port). Routes for which `visible` is false are as absent as no route: they
    /// neither match nor show in a 405's `Allow` (private routes, to a client).
    pub fn lookup<'a>(
        &'a self,
        host: Option<&str>,
        method: &Method,
        path: &'a str,
        visible: impl Fn(&T) -> bool,
    ) -> Lookup<'a, T> {
        let first = path
            .strip_prefix('/')
            .map_or("", |rest| rest.split('/').next().unwrap_or(""));
        let mut candidates: Vec<&[usize]> = Vec::with_capacity(6);
        if let Some(host) = host {
            if let Some(routes) = self.exact.get(host) {
                routes.candidates(first, &mut candidates);
            }
            if !self.suffixes.is_empty() {
                // Every parent domain of the host no longer than the longest wildcard suffix
                // is one a wildcard route may have.
                let from = host.len().saturating_sub(self.longest_suffix);
                let dots = (from..host.len()).filter(|&at| host.as_bytes()[at] == b'.');
                for at in dots {
                    let suffix = &host[at..];
                    if let Some(routes) = self.suffixes.get(suffix)
                        && suffix_matches(suffix, host)
                    {
                        routes.candidates(first, &mut candidates);
                    }
                }
            }
        }
        self.any_host.candidates(first, &mut candidates);

        let mut best: Option<(Rank, Match<'a, T>)> = None;
        let mut allow: Vec<Method> = Vec::new();
        let mut path_matched = false;
        for &index in candidates.iter().flat_map(|c| c.iter()) {
            let route = &self.routes[index];
            if !visible(&route.target) {
                continue;
            }
            let Some((params, path_info)) = route.path.matches(path) else {
                continue;
            };
            path_matched = true;
            match &route.methods {
                Some(methods) if !methods.contains(method) => {
                    allow.extend(methods.iter().cloned());
                    continue;
                }
                _ => {}
            }
            let rank = Rank {
                host: route.host.rank(),
                path: route.path.rank(),
                method_specific: route.methods.is_some(),
            };
            if best.as_ref().is_none_or(|(b, _)| rank > *b) {
                let found = Match {
                    target: &route.target,
                    template: &route.template,
                    params,
                    path_info,
                };
                best = Some((rank, found));
            }
        }
        match best {
            Some((_, found)) => Lookup::Found(found),
            None if path_matched => {
                allow.sort_by(|a, b| a.as_str().cmp(b.as_str()));
                allow.dedup();
                Lookup::MethodNotAllowed { allow }
            }
            None => Lookup::NotFound,
        }
    }
}

/// The first pair of routes (by index) that rank equally and could match the same requests:
/// the same host, the same shape, overlapping methods. Only routes of one host and shape are
/// compared with each other.
fn first_conflict<T>(routes: &[Route<T>]) -> Option<(usize, usize)> {
    let mut groups: HashMap<(&RouteHost, Shape<'_>), Vec<usize>> = HashMap::new();
    for (index, route) in routes.iter().enumerate() {
        groups
            .entry((&route.host, route.path.shape()))
            .or_default()
            .push(index);
    }
    groups
        .values()
        .flat_map(|group| {
            group.iter().enumerate().flat_map(move |(n, &i)| {
                group[n + 1..]
                    .iter()
                    .filter(move |&&j| methods_overlap(&routes[i].methods, &routes[j].methods))
                    .map(move |&j| (i, j))
            })
        })
        .min()
}

fn methods_overlap(a: &Option<Vec<Method>>, b: &Option<Vec<Method>>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => a.iter().any(|m| b.contains(m)),
        _ => false,
    }
}

impl fmt::Debug for RouteHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteHost::Pattern(pattern) => pattern.fmt(f),
            RouteHost::Any => write!(f, "*"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(
        host: Option<&str>,
        path: &str,
        methods: Option<&[&str]>,
        name: &str,
    ) -> RouteSpec<String> {
        RouteSpec {
            host: host.map(str::to_string),
            path: path.to_string(),
            methods: methods.map(|m| m.iter().map(|s| s.to_string()).collect()),
            target: name.to_string(),
        }
    }

    fn table(specs: Vec<RouteSpec<String>>) -> RouteTable<String> {
        RouteTable::new(specs).unwrap_or_else(|(i, e)| panic!("route {i}: {e}"))
    }

    fn found(table: &RouteTable<String>, host: Option<&str>, method: Method, path: &str) -> String {
        let host = host.map(|h| crate::guards::normalize_authority(h).unwrap());
        match table.lookup(host.as_deref(), &method, path, |_| true) {
            Lookup::Found(m) => m.target.clone(),
            Lookup::MethodNotAllowed { allow } => format!("405 {allow:?}"),
            Lookup::NotFound => "404".to_string(),
        }
    }

    impl RouteTable<String> {
        fn lookup_all<'a>(
            &'a self,
            host: Option<&str>,
            m: &Method,
            p: &'a str,
        ) -> Lookup<'a, String> {
            self.lookup(host, m, p, |_| true)
        }
    }

    #[test]
    fn hidden_routes_neither_match_nor_show_in_allow() {
        let t = table(vec![
            spec(None, "/p", Some(&["GET"]), "private"),
            spec(None, "/q/...", None, "public"),
            spec(None, "/q/x", Some(&["PUT"]), "private"),
        ]);
        let public = |target: &String| target != "private";
        assert!(matches!(
            t.lookup(None, &Method::POST, "/p", public),
            Lookup::NotFound
        ));
        assert!(matches!(
            t.lookup(None, &Method::GET, "/p", public),
            Lookup::NotFound
        ));
        let Lookup::Found(m) = t.lookup(None, &Method::GET, "/q/x", public) else {
            panic!("the public wildcard must serve /q/x when the private route is hidden");
        };
        assert_eq!(m.target, "public");
        assert_eq!(found(&t, None, Method::POST, "/p"), "405 [GET]");
    }

    #[test]
    fn wildcard_hosts_match_whole_labels_only() {
        let t = table(vec![spec(Some("*.example.com"), "/", None, "wild")]);
        assert_eq!(found(&t, Some("a.example.com"), Method::GET, "/"), "wild");
        assert_eq!(found(&t, Some("aexample.com"), Method::GET, "/"), "404");
    }

    #[test]
    fn literal_beats_param_beats_wildcard_whatever_the_order() {
        let t = table(vec![
            spec(None, "/a/...", None, "wild"),
            spec(None, "/a/:x", None, "param"),
            spec(None, "/a/b", None, "literal"),
            spec(None, "/a", None, "exact-a"),
        ]);
        assert_eq!(found(&t, None, Method::GET, "/a/b"), "literal");
        assert_eq!(found(&t, None, Method::GET, "/a/c"), "param");
        assert_eq!(found(&t, None, Method::GET, "/a/c/d"), "wild");
        assert_eq!(found(&t, None, Method::GET, "/a"), "exact-a");
        assert_eq!(found(&t, None, Method::GET, "/b"), "404");
    }

    #[test]
    fn wildcard_matches_its_prefix_and_reports_the_rest() {
        let t = table(vec![
            spec(None, "/static/...", None, "s"),
            spec(None, "/...", None, "all"),
        ]);
        let Lookup::Found(m) = t.lookup_all(None, &Method::GET, "/static/css/site.css") else {
            panic!("no match");
        };
        assert_eq!((m.target.as_str(), m.path_info), ("s", "/css/site.css"));
        let Lookup::Found(m) = t.lookup_all(None, &Method::GET, "/static") else {
            panic!()
        };
        assert_eq!((m.target.as_str(), m.path_info), ("s", ""));
        let Lookup::Found(m) = t.lookup_all(None, &Method::GET, "/staticky") else {
            panic!()
        };
        assert_eq!((m.target.as_str(), m.path_info), ("all", "/staticky"));
        let Lookup::Found(m) = t.lookup_all(None, &Method::GET, "/") else {
            panic!()
        };
        assert_eq!((m.target.as_str(), m.path_info), ("all", "/"));
    }

    #[test]
    fn params_are_captured_in_order() {
        let t = table(vec![spec(None, "/users/:id/posts/:Post", None, "p")]);
        let Lookup::Found(m) = t.lookup_all(None, &Method::GET, "/users/42/posts/abc") else {
            panic!()
        };
        assert_eq!(m.params, vec![("id", "42"), ("post", "abc")]);
        assert_eq!(found(&t, None, Method::GET, "/users//posts/abc"), "404");
        assert_eq!(found(&t, None, Method::GET, "/users/42/posts"), "404");
        assert_eq!(
            found(&t, None, Method::GET, "/users/42/posts/abc/more"),
            "404"
        );
    }

    #[test]
    fn exact_host_beats_wildcard_beats_any() {
        let t = table(vec![
            spec(None, "/", None, "any"),
            spec(Some("*.example.com"), "/", None, "wild"),
            spec(Some("*.api.example.com"), "/", None, "deeper-wild"),
            spec(Some("api.example.com"), "/", None, "exact"),
        ]);
        assert_eq!(
            found(&t, Some("API.example.com:8080"), Method::GET, "/"),
            "exact"
        );
        assert_eq!(found(&t, Some("www.example.com"), Method::GET, "/"), "wild");
        assert_eq!(
            found(&t, Some("v1.api.example.com"), Method::GET, "/"),
            "deeper-wild"
        );
        assert_eq!(found(&t, Some("example.com"), Method::GET, "/"), "any");
        assert_eq!(found(&t, None, Method::GET, "/"), "any");
    }

    #[test]
    fn method_specific_beats_any_method_and_405_lists_allowed() {
        let t = table(vec![
            spec(None, "/item", Some(&["GET", "head"]), "read"),
            spec(None, "/item", Some(&["PUT"]), "write"),
            spec(None, "/open", None, "any"),
            spec(None, "/open", Some(&["DELETE"]), "delete"),
        ]);
        assert_eq!(found(&t, None, Method::HEAD, "/item"), "read");
        assert_eq!(found(&t, None, Method::PUT, "/item"), "write");
        assert_eq!(
            found(&t, None, Method::POST, "/item"),
            "405 [GET, HEAD, PUT]"
        );
        assert_eq!(found(&t, None, Method::DELETE, "/open"), "delete");
        assert_eq!(found(&t, None, Method::POST, "/open"), "any");
    }

    #[test]
    fn equal_rank_overlaps_are_conflicts() {
        let conflict = |specs| RouteTable::new(specs).err().map(|(_, e)| e);
        assert_eq!(
            conflict(vec![
                spec(None, "/u/:id", None, "a"),
                spec(None, "/u/:name", None, "b")
            ]),
            Some(RouteError::Conflict {
                first: 1,
                second: 2
            })
        );
        assert!(
            conflict(vec![
                spec(None, "/u", Some(&["GET", "PUT"]), "a"),
                spec(None, "/u", Some(&["PUT"]), "b")
            ])
            .is_some()
        );
        // Different host, different methods, or different rank: no conflict.
        assert!(
            conflict(vec![
                spec(Some("a.com"), "/u", None, "a"),
                spec(None, "/u", None, "b")
            ])
            .is_none()
        );
        assert!(
            conflict(vec![
                spec(None, "/u", Some(&["GET"]), "a"),
                spec(None, "/u", Some(&["PUT"]), "b")
            ])
            .is_none()
        );
        assert!(
            conflict(vec![
                spec(None, "/u/:id", None, "a"),
                spec(None, "/u/x", None, "b")
            ])
            .is_none()
        );
    }

    /// The lookup every route is compared in, with no index: what the indexed lookup must
    /// agree with.
    fn lookup_by_scan(
        table: &RouteTable<String>,
        host: Option<&str>,
        method: &Method,
        path: &str,
    ) -> String {
        let mut best: Option<(Rank, &str)> = None;
        let mut allow: Vec<Method> = Vec::new();
        let mut path_matched = false;
        for route in &table.routes {
            let host_matches = match (&route.host, host) {
                (RouteHost::Any, _) => true,
                (RouteHost::Pattern(pattern), Some(host)) => pattern.matches(host),
                (RouteHost::Pattern(_), None) => false,
            };
            if !host_matches || route.path.matches(path).is_none() {
                continue;
            }
            path_matched = true;
            if let Some(methods) = &route.methods
                && !methods.contains(method)
            {
                allow.extend(methods.iter().cloned());
                continue;
            }
            let rank = Rank {
                host: route.host.rank(),
                path: route.path.rank(),
                method_specific: route.methods.is_some(),
            };
            if best.as_ref().is_none_or(|(b, _)| rank > *b) {
                best = Some((rank, &route.target));
            }
        }
        match best {
            Some((_, target)) => target.to_string(),
            None if path_matched => {
                allow.sort_by(|a, b| a.as_str().cmp(b.as_str()));
                allow.dedup();
                format!("405 {allow:?}")
            }
            None => "404".to_string(),
        }
    }

    #[test]
    fn the_indexed_lookup_agrees_with_a_scan_of_every_route() {
        // A small deterministic generator: routes and requests from the same few pieces, so
        // that many of them overlap.
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let hosts = [
            None,
            Some("a.example.com"),
            Some("*.example.com"),
            Some("*.b.example.com"),
            Some("x.b.example.com"),
        ];
        let segments = ["api", "v1", ":id", "items", ""];
        let methods: [Option<&[&str]>; 3] = [None, Some(&["GET"]), Some(&["POST", "PUT"])];
        let mut specs = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for i in 0..300 {
            let depth = 1 + next(3);
            let mut path = String::new();
            for _ in 0..depth {
                path.push('/');
                path.push_str(segments[next(segments.len())]);
            }
            if next(3) == 0 {
                path.push_str("/...");
            }
            let host = hosts[next(hosts.len())];
            let methods = methods[next(methods.len())];
            let candidate = spec(host, &path, methods, &format!("r{i}"));
            // Keep the route only if the table stays unambiguous with it.
            let key = (host, path.clone(), methods);
            if !seen.insert(key) {
                continue;
            }
            specs.push(candidate);
            let rebuilt: Vec<RouteSpec<String>> = specs
                .iter()
                .map(|s| RouteSpec {
                    host: s.host.clone(),
                    path: s.path.clone(),
                    methods: s.methods.clone(),
                    target: s.target.clone(),
                })
                .collect();
            if RouteTable::new(rebuilt).is_err() {
                specs.pop();
            }
        }
        assert!(specs.len() > 50, "only {} routes", specs.len());
        let table = table(specs);
        let request_hosts = [
            None,
            Some("a.example.com"),
            Some("x.b.example.com"),
            Some("y.b.example.com"),
            Some("b.example.com"),
            Some("other.org"),
        ];
        let request_segments = ["api", "v1", "42", "items", "", "zzz"];
        let indexed = |host: Option<&str>, method: &Method, path: &str| match table.lookup(
            host,
            method,
            path,
            |_| true,
        ) {
            Lookup::Found(m) => m.target.clone(),
            Lookup::MethodNotAllowed { allow } => format!("405 {allow:?}"),
            Lookup::NotFound => "404".to_string(),
        };
        // A host of thousands of labels is looked at only as far as the longest suffix, and
        // still matches the wildcards it ends with.
        let long_host = format!("{}x.b.example.com", "a.".repeat(30_000));
        for path in ["/api", "/v1/items", "/"] {
            assert_eq!(
                indexed(Some(&long_host), &Method::GET, path),
                lookup_by_scan(&table, Some(&long_host), &Method::GET, path),
                "{path}"
            );
        }
        for _ in 0..5_000 {
            let mut path = String::new();
            for _ in 0..1 + next(4) {
                path.push('/');
                path.push_str(request_segments[next(request_segments.len())]);
            }
            let host = request_hosts[next(request_hosts.len())];
            let method = [Method::GET, Method::POST, Method::DELETE][next(3)].clone();
            assert_eq!(
                indexed(host, &method, &path),
                lookup_by_scan(&table, host, &method, &path),
                "{method} {host:?} {path}"
            );
        }
    }

    #[test]
    fn building_ten_thousand_routes_finds_the_first_conflict() {
        let mut specs: Vec<RouteSpec<String>> = (0..10_000)
            .map(|i| {
                spec(
                    Some(&format!("h{}.example.com", i % 1000)),
                    &format!("/s{i}/:id"),
                    None,
                    "x",
                )
            })
            .collect();
        assert!(
            RouteTable::new(
                specs
                    .iter()
                    .map(|s| spec(s.host.as_deref(), &s.path, None, "x"))
                    .collect()
            )
            .is_ok()
        );
        // Two conflicts; the first pair in config order is reported.
        specs.push(spec(Some("h7.example.com"), "/s7/:other", None, "y"));
        specs.push(spec(Some("h3.example.com"), "/s3/:other", None, "z"));
        match RouteTable::new(specs) {
            Err((_, RouteError::Conflict { first, second })) => {
                assert_eq!((first, second), (4, 10_002))
            }
            _ => panic!("the conflicts were not found"),
        }
    }

    #[test]
    fn bad_patterns_are_rejected_with_a_reason() {
        let reject = |path: &str| match RouteTable::new(vec![spec(None, path, None, "x")]) {
            Err((0, RouteError::Path { problem, .. })) => problem,
            _ => panic!("{path} was accepted"),
        };
        assert!(reject("hello").contains("start with"));
        assert!(reject("/a/.../b").contains("last segment"));
        assert!(reject("/a/:").contains("parameter"));
        assert!(reject("/a/:x/:x").contains("twice"));
        assert!(reject("/a//b").contains("empty segment"));
        assert!(reject("/a/../b").contains("`..`"));
        assert!(matches!(
            RouteTable::new(vec![spec(Some("http://x.com"), "/", None, "x")]),
            Err((0, RouteError::Host { .. }))
        ));
        assert!(matches!(
            RouteTable::new(vec![spec(None, "/", Some(&["GE T"]), "x")]),
            Err((0, RouteError::Method(_)))
        ));
        // Found by fuzzing (fuzz/regressions/router): an empty list made a route that answers
        // 405 with an empty Allow; a host the request guards refuse made an unreachable route.
        assert!(matches!(
            RouteTable::new(vec![spec(None, "/", Some(&[]), "x")]),
            Err((0, RouteError::Method(_)))
        ));
        for host in ["a..b", "a.b.", "a:80", "[::1]"] {
            assert!(
                matches!(
                    RouteTable::new(vec![spec(Some(host), "/", None, "x")]),
                    Err((0, RouteError::Host { .. }))
                ),
                "{host}"
            );
        }
    }
}
