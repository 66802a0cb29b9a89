//! Router benchmark: the cost of one lookup as the route table grows from 10 to 10,000 routes,
//! in the two shapes a large config takes (many hosts with a few routes each; one host with
//! many paths), for a request that matches and one that matches nothing. No sockets, no
//! components: `RouteTable::lookup` alone.
//!
//! Run with `cargo bench --bench router`. Prints nanoseconds per lookup (the median of several
//! rounds) and how long building the table took.

use http::Method;
use std::hint::black_box;
use std::time::{Duration, Instant};
use wasmgate::router::{Lookup, RouteSpec, RouteTable};

const ROUNDS: usize = 7;
const LOOKUPS_PER_ROUND: usize = 200_000;

/// `routes` routes, ten per host (`host{h}.example.com`), each under its own first segment.
fn many_hosts(routes: usize) -> Vec<RouteSpec<usize>> {
    (0..routes)
        .map(|i| RouteSpec {
            host: Some(format!("host{}.example.com", i / 10)),
            path: format!("/svc{}/items/:id", i % 10),
            methods: Some(vec!["GET".into()]),
            target: i,
        })
        .collect()
}

/// `routes` routes on one host, each under its own first segment, plus a wildcard host and a
/// catch-all so that every lookup has fallbacks to rank against.
fn one_host(routes: usize) -> Vec<RouteSpec<usize>> {
    let mut specs: Vec<RouteSpec<usize>> = (0..routes)
        .map(|i| RouteSpec {
            host: Some("api.example.com".into()),
            path: format!("/svc{i}/items/:id"),
            methods: None,
            target: i,
        })
        .collect();
    specs.push(RouteSpec {
        host: Some("*.example.com".into()),
        path: "/...".into(),
        methods: None,
        target: routes,
    });
    specs.push(RouteSpec {
        host: None,
        path: "/...".into(),
        methods: None,
        target: routes + 1,
    });
    specs
}

/// Median nanoseconds per lookup of (`host`, `path`) in `table`.
fn time_lookups(table: &RouteTable<usize>, host: &str, path: &str) -> f64 {
    let mut rounds: Vec<Duration> = (0..ROUNDS)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..LOOKUPS_PER_ROUND {
                let found =
                    table.lookup(Some(black_box(host)), &Method::GET, black_box(path), |_| {
                        true
                    });
                black_box(matches!(found, Lookup::Found(_)));
            }
            started.elapsed()
        })
        .collect();
    rounds.sort();
    rounds[ROUNDS / 2].as_nanos() as f64 / LOOKUPS_PER_ROUND as f64
}

fn main() {
    println!("| shape | routes | build | hit ns/lookup | miss ns/lookup |");
    println!("|---|---:|---:|---:|---:|");
    for routes in [10, 100, 1_000, 10_000] {
        let started = Instant::now();
        let table = RouteTable::new(many_hosts(routes)).expect("a valid table");
        let built = started.elapsed();
        let last_host = format!("host{}.example.com", (routes - 1) / 10);
        let hit = time_lookups(&table, &last_host, "/svc9/items/42");
        let miss = time_lookups(&table, &last_host, "/nothing/here");
        println!(
            "| many hosts, 10 routes each | {routes} | {:.1} ms | {hit:.0} | {miss:.0} |",
            built.as_secs_f64() * 1e3
        );
    }
    for routes in [10, 100, 1_000, 10_000] {
        let started = Instant::now();
        let table = RouteTable::new(one_host(routes)).expect("a valid table");
        let built = started.elapsed();
        let hit = time_lookups(
            &table,
            "api.example.com",
            &format!("/svc{}/items/42", routes - 1),
        );
        // Falls through to the wildcard host's catch-all.
        let miss = time_lookups(&table, "api.example.com", "/nothing/here");
        println!(
            "| one host, many paths | {routes} | {:.1} ms | {hit:.0} | {miss:.0} |",
            built.as_secs_f64() * 1e3
        );
    }
}
