//! `greet-http`: serves greetings over HTTP from a greeter it does not contain.
//! It imports `local:greeter-demo/greet` (see `wit/greeter-demo/`), which the
//! gateway links to a component that exports it (the route's `links`).
//!
//! Each path uses a different kind of value across the link:
//!
//! * `GET /greet?name=X`: `greet` (a string), 200 `Hello, X!\n`; the name
//!   defaults to `world`.
//! * `GET /greet/all?names=a,b`: `greet-all` (a list of records), 200 with one
//!   `TEXT (N chars)` line per name.
//! * `GET /greet/checked?name=X`: `checked-greet` (a result), 200 with the
//!   greeting, or 400 `refused: REASON\n`.
//! * `GET /greet/counter?names=a,b&prefix=P`: a `counter` resource, 200 with
//!   one numbered greeting per line and then `count: N`.
//! * `GET /greet/local`: 200 `hello without the greeter\n`, calling nothing
//!   across the link (the baseline that `loadtests/linked.sh` measures a
//!   linked call against).
//!
//! Other paths get 404 `not found\n`, other methods 405.

use guest_util::{query_param, respond_text};
use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{IncomingRequest, Method, ResponseOutparam};

use bindings::local::greeter_demo::greet;

mod bindings {
    // In a module of its own, so that generated names do not clash with the
    // `wasi` crate.
    wit_bindgen::generate!({
        world: "local:greeter-demo/greet-http",
        path: "../../wit/greeter-demo",
    });
}

struct GreetHttp;

impl Guest for GreetHttp {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        if !matches!(request.method(), Method::Get) {
            return respond_text(out, 405, "method not allowed\n");
        }
        let target = request.path_with_query().unwrap_or_else(|| "/".to_string());
        let path = target.split_once('?').map_or(target.as_str(), |(p, _)| p);
        let param = |name: &str| query_param(&target, name);
        let names = || -> Vec<String> {
            param("names")
                .map(|list| list.split(',').map(str::to_string).collect())
                .unwrap_or_default()
        };
        match path.trim_end_matches('/') {
            "/greet" => {
                let name = param("name").unwrap_or_else(|| "world".to_string());
                respond_text(out, 200, &format!("{}\n", greet::greet(&name)));
            }
            "/greet/all" => {
                let body: String = greet::greet_all(&names())
                    .into_iter()
                    .map(|g| format!("{} ({} chars)\n", g.text, g.chars))
                    .collect();
                respond_text(out, 200, &body);
            }
            "/greet/checked" => {
                match greet::checked_greet(&param("name").unwrap_or_default()) {
                    Ok(text) => respond_text(out, 200, &format!("{text}\n")),
                    Err(reason) => respond_text(out, 400, &format!("refused: {reason}\n")),
                }
            }
            "/greet/counter" => {
                let counter = greet::Counter::new(&param("prefix").unwrap_or_default());
                let mut body = String::new();
                for name in names() {
                    body.push_str(&counter.next(&name));
                    body.push('\n');
                }
                body.push_str(&format!("count: {}\n", counter.count()));
                respond_text(out, 200, &body);
            }
            "/greet/local" => respond_text(out, 200, "hello without the greeter\n"),
            _ => respond_text(out, 404, "not found\n"),
        }
    }
}

wasi::http::proxy::export!(GreetHttp);
