//! `kv-counter`: counts requests per path in a `wasi:keyvalue@0.2.0-draft`
//! store. Any method on any path opens the store named by the `KV_STORE`
//! environment variable (default `default`), increments the key equal to the
//! path (without the query) by 1 with `atomics.increment`, and answers 200
//! with the new value, e.g. `1\n`. Store errors never trap: an `open` that is
//! denied gets 403 `keyvalue error: access denied\n`, any other error 503
//! `keyvalue error: MESSAGE\n`.

use guest_util::respond_text;
use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{IncomingRequest, ResponseOutparam};

use bindings::wasi::keyvalue::{atomics, store};

mod bindings {
    // In a module of its own, so that the generated `wasi` module does not
    // shadow the `wasi` crate.
    wit_bindgen::generate!({
        world: "wasmgate:kv-counter/guest",
        path: ["../../wit/deps/keyvalue-0.2.0-draft", "wit"],
        generate_all,
    });
}

struct KvCounter;

impl Guest for KvCounter {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_else(|| "/".to_string());
        let key = path_with_query
            .split_once('?')
            .map_or(path_with_query.as_str(), |(path, _)| path);

        let bucket = match store::open(&store_name()) {
            Ok(bucket) => bucket,
            Err(store::Error::AccessDenied) => {
                return respond_text(out, 403, "keyvalue error: access denied\n");
            }
            Err(e) => return respond_text(out, 503, &error_body(&e)),
        };
        match atomics::increment(&bucket, key, 1) {
            Ok(value) => respond_text(out, 200, &format!("{value}\n")),
            Err(e) => respond_text(out, 503, &error_body(&e)),
        }
    }
}

/// The value of `KV_STORE`, or `default`.
fn store_name() -> String {
    wasi::cli::environment::get_environment()
        .into_iter()
        .find_map(|(name, value)| (name == "KV_STORE").then_some(value))
        .unwrap_or_else(|| "default".to_string())
}

/// `keyvalue error: MESSAGE\n`.
fn error_body(error: &store::Error) -> String {
    let message = match error {
        store::Error::NoSuchStore => "no such store",
        store::Error::AccessDenied => "access denied",
        store::Error::Other(message) => message,
    };
    format!("keyvalue error: {message}\n")
}

wasi::http::proxy::export!(KvCounter);
