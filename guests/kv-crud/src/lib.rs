//! `kv-crud`: a small HTTP API over a `wasi:keyvalue@0.2.0-draft2` store,
//! the one named by the `KV_STORE` environment variable (default `default`).
//! KEY is the percent-decoded rest of the path after `/kv/` (it may contain
//! `/`); queries are ignored when routing.
//!
//! * `GET /kv/KEY`: 200 `application/octet-stream` with the value, or 404.
//! * `PUT /kv/KEY`: stores the request body; 204.
//! * `DELETE /kv/KEY`: 204 (also when the key was absent).
//! * `HEAD /kv/KEY`: 200 if the key exists, else 404.
//! * `GET /kv` or `/kv/`: the keys of one `list-keys` page, one per line,
//!   starting at `?cursor=`; `x-next-cursor` when there is another page.
//! * `POST /kv/KEY/increment?by=N` (an `s64`, default 1): 200 with the new
//!   value; 400 `invalid by: N\n` if N does not parse.
//! * `POST /kv/KEY/swap`: compare-and-swap. The body is the new value and
//!   `x-expected` the current one (no header: the key must be absent). 200
//!   `swapped\n`, or 409 `conflict\n` when the value is not as expected.
//! * `GET /kv/KEY?copies=N`: one `get-many` that names KEY N times; 200
//!   `N values, B bytes\n` (B: the bytes of the values returned).
//! * `POST /kv/KEY/cas?handles=N`: makes N `cas` handles on KEY and holds them
//!   all until the response; 200 `held N\n`.
//!
//! Other paths get 404 `not found\n`, other methods on these paths 405
//! (`POST` only with `/increment` or `/swap`). A request body that breaks off
//! gets 400. Store errors never trap: an `open` that is denied gets 403
//! `keyvalue error: access denied\n`, any other error 503
//! `keyvalue error: MESSAGE\n`.

use guest_util::{percent_decode, query_number, request_query_param, respond, respond_text};
use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{Fields, IncomingBody, IncomingRequest, Method, ResponseOutparam};
use wasi::io::streams::StreamError;

use bindings::wasi::keyvalue::atomics::{self, Cas, CasError};
use bindings::wasi::keyvalue::batch;
use bindings::wasi::keyvalue::store::{self, Bucket};

mod bindings {
    // In a module of its own, so that the generated `wasi` module does not
    // shadow the `wasi` crate.
    wit_bindgen::generate!({
        world: "wasmgate:kv-crud/guest",
        path: ["../../wit/deps/keyvalue-0.2.0-draft2", "wit"],
        generate_all,
    });
}

/// How much to ask for per read of the request body.
const READ_SIZE: u64 = 64 * 1024;

/// What a request asks for.
enum Route {
    List,
    Get(String),
    Head(String),
    Put(String),
    Delete(String),
    Increment(String),
    Swap(String),
    HoldCas(String),
}

/// A response to send: status, headers and body.
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn empty(status: u16) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    fn with_body(status: u16, content_type: &str, body: Vec<u8>) -> Self {
        let headers = vec![("content-type", content_type.to_string())];
        Reply {
            status,
            headers,
            body,
        }
    }

    fn text(status: u16, body: impl Into<String>) -> Self {
        Reply::with_body(status, "text/plain", body.into().into_bytes())
    }
}

struct KvCrud;

impl Guest for KvCrud {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_else(|| "/".to_string());
        let path = path_with_query
            .split_once('?')
            .map_or(path_with_query.as_str(), |(path, _)| path);
        let route = match route(&request.method(), path) {
            Ok(route) => route,
            Err(reply) => return send(out, reply),
        };

        let bucket = match store::open(&store_name()) {
            Ok(bucket) => bucket,
            Err(store::Error::AccessDenied) => {
                return respond_text(out, 403, "keyvalue error: access denied\n");
            }
            Err(e) => return send(out, store_error(&e)),
        };

        let result = match route {
            Route::List => list(&request, &bucket),
            Route::Get(key) => match request_query_param(&request, "copies") {
                Some(_) => match query_number::<usize>(&request, "copies", 1) {
                    Ok(copies) => get_many(&bucket, &key, copies),
                    Err(message) => Ok(Reply::text(400, message)),
                },
                None => bucket.get(&key).map(|value| match value {
                    Some(value) => Reply::with_body(200, "application/octet-stream", value),
                    None => Reply::text(404, "not found\n"),
                }),
            },
            Route::Head(key) => bucket
                .exists(&key)
                .map(|exists| Reply::empty(if exists { 200 } else { 404 })),
            Route::Put(key) => match read_body(&request) {
                Some(value) => bucket.set(&key, &value).map(|()| Reply::empty(204)),
                None => Ok(Reply::text(400, "incomplete request body\n")),
            },
            Route::Delete(key) => bucket.delete(&key).map(|()| Reply::empty(204)),
            Route::Increment(key) => match query_number::<i64>(&request, "by", 1) {
                Ok(delta) => atomics::increment(&bucket, &key, delta)
                    .map(|value| Reply::text(200, format!("{value}\n"))),
                Err(message) => Ok(Reply::text(400, message)),
            },
            Route::Swap(key) => Ok(swap(&request, &bucket, &key)),
            Route::HoldCas(key) => match query_number::<usize>(&request, "handles", 1) {
                Ok(handles) => hold_cas(&bucket, &key, handles),
                Err(message) => Ok(Reply::text(400, message)),
            },
        };
        send(out, result.unwrap_or_else(|e| store_error(&e)));
    }
}

/// Maps a method and path (without the query) to a route, or to the 404 or
/// 405 reply for it.
fn route(method: &Method, path: &str) -> Result<Route, Reply> {
    if path == "/kv" || path == "/kv/" {
        return match method {
            Method::Get => Ok(Route::List),
            _ => Err(Reply::text(405, "method not allowed\n")),
        };
    }
    let Some(rest) = path.strip_prefix("/kv/") else {
        return Err(Reply::text(404, "not found\n"));
    };
    match method {
        Method::Get => Ok(Route::Get(percent_decode(rest))),
        Method::Head => Ok(Route::Head(percent_decode(rest))),
        Method::Put => Ok(Route::Put(percent_decode(rest))),
        Method::Delete => Ok(Route::Delete(percent_decode(rest))),
        Method::Post => {
            if let Some(key) = rest.strip_suffix("/increment") {
                Ok(Route::Increment(percent_decode(key)))
            } else if let Some(key) = rest.strip_suffix("/swap") {
                Ok(Route::Swap(percent_decode(key)))
            } else if let Some(key) = rest.strip_suffix("/cas") {
                Ok(Route::HoldCas(percent_decode(key)))
            } else {
                Err(Reply::text(405, "method not allowed\n"))
            }
        }
        _ => Err(Reply::text(405, "method not allowed\n")),
    }
}

/// `GET /kv`: one page of keys, and `x-next-cursor` if there are more.
fn list(request: &IncomingRequest, bucket: &Bucket) -> Result<Reply, store::Error> {
    let cursor = request_query_param(request, "cursor");
    let page = bucket.list_keys(cursor.as_deref())?;
    let mut body = String::new();
    for key in &page.keys {
        body.push_str(key);
        body.push('\n');
    }
    let mut reply = Reply::text(200, body);
    if let Some(next) = page.cursor {
        reply.headers.push(("x-next-cursor", next));
    }
    Ok(reply)
}

/// `GET /kv/KEY?copies=N`: one `get-many` naming KEY N times.
fn get_many(bucket: &Bucket, key: &str, copies: usize) -> Result<Reply, store::Error> {
    let keys = vec![key.to_string(); copies];
    let values = batch::get_many(bucket, &keys)?;
    let bytes: usize = values
        .iter()
        .map(|(_, value)| value.as_ref().map_or(0, Vec::len))
        .sum();
    Ok(Reply::text(200, format!("{} values, {bytes} bytes\n", values.len())))
}

/// `POST /kv/KEY/cas?handles=N`: N `cas` handles on KEY, all held at once.
fn hold_cas(bucket: &Bucket, key: &str, handles: usize) -> Result<Reply, store::Error> {
    let mut held = Vec::new();
    for _ in 0..handles {
        held.push(Cas::new(bucket, key)?);
    }
    Ok(Reply::text(200, format!("held {}\n", held.len())))
}

/// `POST /kv/KEY/swap`: replaces the value only if it is the one in
/// `x-expected` (or absent, without that header).
fn swap(request: &IncomingRequest, bucket: &Bucket, key: &str) -> Reply {
    let expected = request.headers().get("x-expected").into_iter().next();
    let Some(new) = read_body(request) else {
        return Reply::text(400, "incomplete request body\n");
    };
    let conflict = || Reply::text(409, "conflict\n");

    let cas = match Cas::new(bucket, key) {
        Ok(cas) => cas,
        Err(e) => return store_error(&e),
    };
    match cas.current() {
        Ok(current) if current == expected => {}
        Ok(_) => return conflict(),
        Err(e) => return store_error(&e),
    }
    match atomics::swap(cas, &new) {
        Ok(()) => Reply::text(200, "swapped\n"),
        Err(CasError::CasFailed(_)) => conflict(),
        Err(CasError::StoreError(e)) => store_error(&e),
    }
}

/// The whole request body; `None` if it broke off.
fn read_body(request: &IncomingRequest) -> Option<Vec<u8>> {
    let body = request.consume().ok()?;
    let input = body.stream().ok()?;
    let mut whole = Vec::new();
    loop {
        match input.blocking_read(READ_SIZE) {
            Ok(chunk) => whole.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(_)) => return None,
        }
    }
    drop(input);
    drop(IncomingBody::finish(body));
    Some(whole)
}

/// Sends `reply`. A header value the host refuses (only possible for a
/// cursor from the store) turns it into a 503 instead of a trap.
fn send(out: ResponseOutparam, reply: Reply) {
    let fields = Fields::new();
    for (name, value) in &reply.headers {
        if fields.append(name, value.as_bytes()).is_err() {
            let message = format!("keyvalue error: invalid {name} from the store\n");
            return respond_text(out, 503, &message);
        }
    }
    respond(out, reply.status, fields, &reply.body);
}

/// The value of `KV_STORE`, or `default`.
fn store_name() -> String {
    wasi::cli::environment::get_environment()
        .into_iter()
        .find_map(|(name, value)| (name == "KV_STORE").then_some(value))
        .unwrap_or_else(|| "default".to_string())
}

/// 503 `keyvalue error: MESSAGE\n`.
fn store_error(error: &store::Error) -> Reply {
    let message = match error {
        store::Error::NoSuchStore => "no such store",
        store::Error::AccessDenied => "access denied",
        store::Error::Other(message) => message,
    };
    Reply::text(503, format!("keyvalue error: {message}\n"))
}

wasi::http::proxy::export!(KvCrud);
