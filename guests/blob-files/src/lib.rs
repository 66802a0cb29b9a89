//! `blob-files`: files over HTTP in `wasi:blobstore@0.2.0-draft` containers, streamed both ways
//! (a body is never held whole in the guest's memory).
//!
//! * `PUT /files/CONTAINER/NAME`: streams the request body into the object (the container is
//!   created if missing); 201 with `stored N bytes\n`.
//! * `GET /files/CONTAINER/NAME`: 200 with the object, streamed, and its `content-length`; a
//!   `Range: bytes=A-B` (or `A-`, or `-N`) header reads only that range through `get-data`, 206
//!   with `content-range`, or 416 when the range starts past the end.
//! * `HEAD /files/CONTAINER/NAME`: the headers of `GET`, the length as `x-object-size`.
//! * `DELETE /files/CONTAINER/NAME`: 204 (also when the object was absent).
//! * `GET /files/CONTAINER`: the container's object names, one per line, sorted.
//! * `DELETE /files/CONTAINER`: deletes the container and its objects; 204.
//!
//! The rest of the interface: `GET /files/CONTAINER/NAME?exists=1` (`has-object`),
//! `POST /files/CONTAINER/NAME?copy-to=C2/N2` or `?move-to=C2/N2`, `POST
//! /files/CONTAINER?delete=A,B` (`delete-objects`), `DELETE /files/CONTAINER?clear=1`,
//! `GET /files/CONTAINER?info=1` (`name`, `info`) and `GET /files/CONTAINER?skip=N`
//! (`skip-stream-object-names`).
//!
//! For the tests of the host's side: `PUT ...?mode=data-last` writes the bytes before
//! `write-data`, `PUT ...?mode=abandon` drops the value without `finish` while its stream is
//! still open (202), `GET ...?sync=1` reads with `consume-sync`, and
//! `POST /files/CONTAINER?values=N` holds N outgoing values at once.
//!
//! CONTAINER and NAME are percent-decoded. A missing container or object is 404, a request body
//! that breaks off 400 (nothing is stored: the value is dropped without `finish`), any other
//! blobstore error 503 with `blobstore error: MESSAGE\n`; a route without a blob store
//! therefore answers 503 `blobstore error: access denied: ...`.

use guest_util::{
    headers, percent_decode, query_flag, query_number, request_query_param, respond_text,
    send_response,
};
use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{IncomingRequest, Method, ResponseOutparam};
use wasi::io::streams::{InputStream, OutputStream, StreamError};

use bindings::wasi::blobstore::{blobstore, container::Container, types};

mod bindings {
    // In a module of its own, so that the generated `wasi` module does not
    // shadow the `wasi` crate. The blobstore's streams are the `wasi` crate's.
    wit_bindgen::generate!({
        world: "wasmgate:blob-files/guest",
        path: [
            "../../wit/deps/io-0.2.2",
            "../../wit/deps/blobstore-0.2.0-draft",
            "wit",
        ],
        with: {
            "wasi:io/streams@0.2.2": ::wasi::io::streams,
            "wasi:io/error@0.2.2": ::wasi::io::error,
            "wasi:io/poll@0.2.2": ::wasi::io::poll,
        },
        generate_all,
    });
}

/// How much of a request body is read and dropped after a failed upload, at most.
const DRAIN_LIMIT: usize = 16 << 20;

/// How much to ask for per read.
const READ_SIZE: u64 = 64 * 1024;

/// What went wrong, as the status it is answered with.
enum Failure {
    NotFound(String),
    BadRequest(String),
    Blobstore(String),
}

impl Failure {
    /// A blobstore error: "does not exist" is 404, anything else 503.
    fn from_store(message: String) -> Failure {
        if message.contains("does not exist") {
            Failure::NotFound(message)
        } else {
            Failure::Blobstore(message)
        }
    }

    fn respond(self, out: ResponseOutparam) {
        match self {
            Failure::NotFound(m) => respond_text(out, 404, &format!("{m}\n")),
            Failure::BadRequest(m) => respond_text(out, 400, &format!("{m}\n")),
            Failure::Blobstore(m) => respond_text(out, 503, &format!("blobstore error: {m}\n")),
        }
    }
}

type Result<T> = std::result::Result<T, Failure>;

fn store<T>(result: std::result::Result<T, String>) -> Result<T> {
    result.map_err(Failure::from_store)
}

/// The container, created if it does not exist (another request may create it at the same
/// time: then it is opened).
fn open_or_create(name: &str) -> Result<Container> {
    let name = name.to_string();
    if store(blobstore::container_exists(&name))? {
        return store(blobstore::get_container(&name));
    }
    match blobstore::create_container(&name) {
        Ok(container) => Ok(container),
        Err(e) if e.contains("already exists") => store(blobstore::get_container(&name)),
        Err(e) => Err(Failure::from_store(e)),
    }
}

/// Writes all of `data` to `stream`, as fast as the stream takes it.
fn write_all(stream: &OutputStream, mut data: &[u8]) -> std::result::Result<(), StreamError> {
    while !data.is_empty() {
        let room = stream.check_write()? as usize;
        if room == 0 {
            stream.subscribe().block();
            continue;
        }
        let (now, rest) = data.split_at(room.min(data.len()));
        stream.write(now)?;
        data = rest;
    }
    Ok(())
}

/// Reads the next chunk of `input`; `None` at its end.
fn read_chunk(input: &InputStream) -> std::result::Result<Option<Vec<u8>>, String> {
    match input.blocking_read(READ_SIZE) {
        Ok(chunk) => Ok(Some(chunk)),
        Err(StreamError::Closed) => Ok(None),
        Err(StreamError::LastOperationFailed(e)) => Err(e.to_debug_string()),
    }
}

/// What to answer with.
enum Answer {
    Text(u16, String),
    /// Status and headers without a body.
    Headers(u16, Vec<(&'static str, String)>),
    /// Status, headers and a body read whole (`consume-sync`).
    Bytes(u16, Vec<(&'static str, String)>, Vec<u8>),
    /// Status and headers, then the body streamed from the store.
    Stream(u16, Vec<(&'static str, String)>, InputStream),
}

impl Answer {
    fn send(self, out: ResponseOutparam) {
        match self {
            Answer::Text(status, text) => respond_text(out, status, &text),
            Answer::Headers(status, fields) => {
                guest_util::respond(out, status, fields_of(&fields), b"");
            }
            Answer::Bytes(status, fields, data) => {
                guest_util::respond(out, status, fields_of(&fields), &data);
            }
            Answer::Stream(status, fields, input) => {
                let writer = send_response(out, status, fields_of(&fields));
                // The headers are out: a failure from here on can only cut the body short,
                // which the client sees against content-length.
                loop {
                    match read_chunk(&input) {
                        Ok(Some(chunk)) => {
                            if writer.write(&chunk).is_err() {
                                return;
                            }
                        }
                        Ok(None) => break,
                        Err(_) => return,
                    }
                }
                drop(input);
                writer.finish();
            }
        }
    }
}

fn fields_of(fields: &[(&'static str, String)]) -> wasi::http::types::Fields {
    let pairs: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    headers(&pairs)
}

/// How a `PUT` drives the value, for the tests of the host's side (`?mode=`).
#[derive(PartialEq)]
enum WriteMode {
    /// `write-data`, then the bytes, then `finish`: the usual order.
    Usual,
    /// The bytes first, then `write-data` (as an early wasmCloud example did).
    DataLast,
    /// The bytes after `write-data`, then the value dropped without `finish`, its stream still
    /// open: nothing may be stored. Answers 202.
    Abandon,
}

fn put(request: IncomingRequest, container: &str, name: &str) -> Result<Answer> {
    let mode = match request_query_param(&request, "mode").as_deref() {
        None => WriteMode::Usual,
        Some("data-last") => WriteMode::DataLast,
        Some("abandon") => WriteMode::Abandon,
        Some(other) => return Err(Failure::BadRequest(format!("unknown mode {other}"))),
    };
    let container = open_or_create(container)?;
    let body = request
        .consume()
        .map_err(|()| Failure::BadRequest("the request body was already taken".into()))?;
    let input = body
        .stream()
        .map_err(|()| Failure::BadRequest("the request body has no stream".into()))?;
    let value = types::OutgoingValue::new_outgoing_value();
    let stream = value
        .outgoing_value_write_body()
        .map_err(|()| Failure::Blobstore("the value's stream was already taken".into()))?;
    if mode != WriteMode::DataLast {
        store(container.write_data(&name.to_string(), &value))?;
    }
    let mut size = 0u64;
    loop {
        let chunk = match read_chunk(&input) {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            // The client went away or sent a broken body: dropping the value without
            // `finish` stores nothing.
            Err(e) => {
                return Err(Failure::BadRequest(format!(
                    "the request body broke off: {e}"
                )));
            }
        };
        size += chunk.len() as u64;
        if let Err(e) = write_all(&stream, &chunk) {
            let e = match e {
                StreamError::LastOperationFailed(e) => e.to_debug_string(),
                StreamError::Closed => "closed".to_string(),
            };
            drop(stream);
            // Read the rest of a short body (and drop it) before answering, so the client
            // hears the answer rather than a connection closed under its upload.
            let mut drained = 0;
            while drained < DRAIN_LIMIT
                && let Ok(Some(chunk)) = read_chunk(&input)
            {
                drained += chunk.len();
            }
            if mode == WriteMode::DataLast {
                return Err(Failure::Blobstore(e));
            }
            // The write stopped at the store; `finish` says why.
            let why = types::OutgoingValue::finish(value).err();
            return Err(Failure::Blobstore(why.unwrap_or(e)));
        }
    }
    if mode == WriteMode::Abandon {
        drop(value);
        // The stream outlives its value: writing on must fail, not reach the store.
        let refused = stream.check_write().is_err();
        drop(stream);
        return Ok(Answer::Text(
            202,
            format!("abandoned, stream refused: {refused}\n"),
        ));
    }
    if mode == WriteMode::DataLast {
        store(container.write_data(&name.to_string(), &value))?;
    }
    drop(stream);
    store(types::OutgoingValue::finish(value))?;
    Ok(Answer::Text(201, format!("stored {size} bytes\n")))
}

/// A `Range: bytes=...` header as an inclusive range in an object of `size` bytes: `Ok(None)`
/// without one (or one this guest does not handle, like several ranges: the whole object is
/// sent), `Err(())` when it starts past the end.
fn range(request: &IncomingRequest, size: u64) -> std::result::Result<Option<(u64, u64)>, ()> {
    let values = request.headers().get("range");
    let Some(value) = values.first() else {
        return Ok(None);
    };
    let Some(spec) = std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.strip_prefix("bytes="))
    else {
        return Ok(None);
    };
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (start, end) = match (first.parse::<u64>(), last.parse::<u64>()) {
        (Ok(start), Ok(end)) if start <= end => (start, end.min(size.saturating_sub(1))),
        (Ok(start), Err(_)) if last.is_empty() => (start, size.saturating_sub(1)),
        (Err(_), Ok(suffix)) if first.is_empty() && suffix > 0 => {
            (size.saturating_sub(suffix), size.saturating_sub(1))
        }
        _ => return Ok(None),
    };
    if start >= size {
        return Err(());
    }
    Ok(Some((start, end)))
}

fn get(request: IncomingRequest, container: &str, name: &str) -> Result<Answer> {
    let head = matches!(request.method(), Method::Head);
    let container = store(blobstore::get_container(&container.to_string()))?;
    if query_flag(&request, "exists") {
        let exists = store(container.has_object(&name.to_string()))?;
        return Ok(Answer::Text(200, format!("{exists}\n")));
    }
    let info = store(container.object_info(&name.to_string()))?;
    let (status, start, end) = match range(&request, info.size) {
        Ok(None) => (200, 0, info.size.saturating_sub(1)),
        Ok(Some((start, end))) => (206, start, end),
        Err(()) => {
            let fields = vec![("content-range", format!("bytes */{}", info.size))];
            return Ok(Answer::Headers(416, fields));
        }
    };
    let value = store(container.get_data(&name.to_string(), start, end))?;
    let mut fields = vec![
        ("content-type", "application/octet-stream".to_string()),
        ("content-length", value.size().to_string()),
    ];
    if status == 206 {
        fields.push((
            "content-range",
            format!("bytes {start}-{end}/{}", info.size),
        ));
    }
    if head {
        // No content-length without the body it announces: the size goes in a header of its
        // own.
        fields[1].0 = "x-object-size";
        return Ok(Answer::Headers(status, fields));
    }
    if query_flag(&request, "sync") {
        let data = store(types::IncomingValue::incoming_value_consume_sync(value))?;
        return Ok(Answer::Bytes(status, fields, data));
    }
    let input = store(types::IncomingValue::incoming_value_consume_async(value))?;
    Ok(Answer::Stream(status, fields, input))
}

fn list(request: &IncomingRequest, container: &str) -> Result<Answer> {
    let container = store(blobstore::get_container(&container.to_string()))?;
    if query_flag(request, "info") {
        let info = store(container.info())?;
        let name = store(container.name())?;
        return Ok(Answer::Text(
            200,
            format!(
                "container {name} ({}), created at {}\n",
                info.name, info.created_at
            ),
        ));
    }
    let names = store(container.list_objects())?;
    let skip: u64 = query_number(request, "skip", 0).map_err(Failure::BadRequest)?;
    if skip > 0 {
        let (skipped, _) = store(names.skip_stream_object_names(skip))?;
        // The order is the store's: the names after the skipped ones, as they come.
        let mut rest = Vec::new();
        loop {
            let (page, end) = store(names.read_stream_object_names(1000))?;
            rest.extend(page);
            if end {
                break;
            }
        }
        return Ok(Answer::Text(
            200,
            format!("skipped {skipped}, then {}\n", rest.len()),
        ));
    }
    let mut all = Vec::new();
    loop {
        let (page, end) = store(names.read_stream_object_names(1000))?;
        all.extend(page);
        if end {
            break;
        }
    }
    all.sort();
    let mut body = all.join("\n");
    if !body.is_empty() {
        body.push('\n');
    }
    Ok(Answer::Text(200, body))
}

/// `POST /files/CONTAINER/NAME?copy-to=C2/N2` (or `move-to`): copies (moves) the object.
fn copy(request: &IncomingRequest, container: &str, name: &str) -> Result<Answer> {
    let (target, moving) = match (
        request_query_param(request, "copy-to"),
        request_query_param(request, "move-to"),
    ) {
        (Some(target), None) => (target, false),
        (None, Some(target)) => (target, true),
        _ => return Err(Failure::BadRequest("give copy-to or move-to".into())),
    };
    let Some((to_container, to_name)) = target.split_once('/') else {
        return Err(Failure::BadRequest("the target is CONTAINER/NAME".into()));
    };
    let src = types::ObjectId {
        container: container.to_string(),
        object: name.to_string(),
    };
    let dest = types::ObjectId {
        container: to_container.to_string(),
        object: to_name.to_string(),
    };
    if moving {
        store(blobstore::move_object(&src, &dest))?;
    } else {
        store(blobstore::copy_object(&src, &dest))?;
    }
    Ok(Answer::Text(204, String::new()))
}

/// `POST /files/CONTAINER?delete=A,B`: `delete-objects`; `?values=N`: see [`hold_values`].
fn post_container(request: &IncomingRequest, container: &str) -> Result<Answer> {
    let Some(names) = request_query_param(request, "delete") else {
        return hold_values(request);
    };
    let container = store(blobstore::get_container(&container.to_string()))?;
    let names: Vec<String> = names.split(',').map(str::to_string).collect();
    store(container.delete_objects(&names))?;
    Ok(Answer::Text(204, String::new()))
}

/// `DELETE /files/CONTAINER`: deletes it; with `?clear=1`, empties it instead.
fn delete_container(request: &IncomingRequest, container: &str) -> Result<Answer> {
    if query_flag(request, "clear") {
        let found = store(blobstore::get_container(&container.to_string()))?;
        store(found.clear())?;
    } else {
        store(blobstore::delete_container(&container.to_string()))?;
    }
    Ok(Answer::Text(204, String::new()))
}

/// `POST /files/CONTAINER?values=N`: makes N outgoing values and holds them all until the
/// response (the host allows a request 16; one more traps the guest).
fn hold_values(request: &IncomingRequest) -> Result<Answer> {
    let count: usize = query_number(request, "values", 1).map_err(Failure::BadRequest)?;
    let held: Vec<types::OutgoingValue> = (0..count)
        .map(|_| types::OutgoingValue::new_outgoing_value())
        .collect();
    Ok(Answer::Text(200, format!("held {}\n", held.len())))
}

struct BlobFiles;

impl Guest for BlobFiles {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path_with_query = request.path_with_query().unwrap_or_default();
        let path = path_with_query.split('?').next().unwrap_or_default();
        let parts: Vec<String> = path
            .strip_prefix("/files/")
            .unwrap_or_default()
            .splitn(2, '/')
            .filter(|part| !part.is_empty())
            .map(percent_decode)
            .collect();
        let method = request.method();
        let result = match (&method, parts.as_slice()) {
            (Method::Put, [container, name]) => put(request, container, name),
            (Method::Get | Method::Head, [container, name]) => get(request, container, name),
            (Method::Delete, [container, name]) => store(blobstore::get_container(container))
                .and_then(|c| store(c.delete_object(name)))
                .map(|()| Answer::Text(204, String::new())),
            (Method::Get, [container]) => list(&request, container),
            (Method::Post, [container]) => post_container(&request, container),
            (Method::Post, [container, name]) => copy(&request, container, name),
            (Method::Delete, [container]) => delete_container(&request, container),
            _ => Ok(Answer::Text(404, "not found\n".into())),
        };
        match result {
            Ok(answer) => answer.send(out),
            Err(failure) => failure.respond(out),
        }
    }
}

wasi::http::proxy::export!(BlobFiles);
