//! Fuzzes the config parser: any text must give a config or an error, never a panic.
//!
//! A config that parses is also turned into a route table, as `Gateway::build` does before it
//! loads components, since route hosts, paths and methods are checked there.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use wasmgate::config::Config;
use wasmgate::router::{RouteSpec, RouteTable};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A base directory that does not exist: parsing must not touch the file system.
    let Ok(config) = Config::parse(text, PathBuf::from("/nonexistent/wasmgate-fuzz")) else {
        return;
    };
    let specs = config
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
    let _ = RouteTable::new(specs);
});
