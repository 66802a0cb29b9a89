//! `config-echo`: reads `wasi:config@0.2.0-draft` values. Queries are
//! ignored when routing.
//!
//! * `GET /config`: `get-all`, answered as 200 `KEY=VALUE\n` lines sorted by
//!   key.
//! * `GET /config/KEY` (KEY is the percent-decoded rest of the path): `get`,
//!   answered as 200 with the bare value, or 404 `not set\n`.
//!
//! Other paths get 404 `not found\n`, other methods on these paths 405
//! `method not allowed\n`. Store errors never trap: they get 500
//! `config error: MESSAGE\n`.

use guest_util::{percent_decode, respond_text};
use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{IncomingRequest, Method, ResponseOutparam};

use bindings::wasi::config::store;

mod bindings {
    // In a module of its own, so that the generated `wasi` module does not
    // shadow the `wasi` crate.
    wit_bindgen::generate!({
        world: "wasmgate:config-echo/guest",
        path: ["../../wit/deps/config-0.2.0-draft", "wit"],
        generate_all,
    });
}

struct ConfigEcho;

impl Guest for ConfigEcho {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_else(|| "/".to_string());
        let path = path_with_query
            .split_once('?')
            .map_or(path_with_query.as_str(), |(path, _)| path);

        let key = if path == "/config" {
            None
        } else if let Some(rest) = path.strip_prefix("/config/") {
            Some(percent_decode(rest))
        } else {
            return respond_text(out, 404, "not found\n");
        };
        if !matches!(request.method(), Method::Get) {
            return respond_text(out, 405, "method not allowed\n");
        }

        let result = match key {
            None => store::get_all().map(|pairs| (200, all_body(pairs))),
            Some(key) => store::get(&key).map(|value| match value {
                Some(value) => (200, value),
                None => (404, "not set\n".to_string()),
            }),
        };
        match result {
            Ok((status, body)) => respond_text(out, status, &body),
            Err(e) => respond_text(out, 500, &error_body(&e)),
        }
    }
}

/// `KEY=VALUE\n` lines, sorted by key.
fn all_body(mut pairs: Vec<(String, String)>) -> String {
    pairs.sort();
    pairs
        .iter()
        .map(|(key, value)| format!("{key}={value}\n"))
        .collect()
}

/// `config error: MESSAGE\n`.
fn error_body(error: &store::Error) -> String {
    let (store::Error::Upstream(message) | store::Error::Io(message)) = error;
    format!("config error: {message}\n")
}

wasi::http::proxy::export!(ConfigEcho);
