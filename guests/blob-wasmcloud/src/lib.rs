//! `blob-wasmcloud`: a component written the way wasmCloud's components are, with the
//! `wasmcloud-component` SDK's `wasi:blobstore` bindings and its `http::Server`, to show that
//! such a component runs on wasmgate unchanged.
//!
//! * `PUT /wc/NAME`: stores the request body as object NAME in the container `wasmcloud`
//!   (created on first use), in the order wasmCloud's own examples write: `write-data` first,
//!   then the bytes with `std::io::copy`, then `finish` with the stream still open; 200
//!   `stored\n`.
//! * `GET /wc/NAME`: the object, read with `get-data(0, u64::MAX)` and `consume-sync`.
//! * `GET /wc/`: the container's object names, one per line, sorted.
//!
//! Any blobstore error is a 500 carrying its message (the SDK's `ErrorCode::InternalError`).

use std::io::Read;

use wasmcloud_component::http::{self, ErrorCode};
use wasmcloud_component::wasi::blobstore::{blobstore, container::Container, types};

const CONTAINER: &str = "wasmcloud";

struct Component;

http::export!(Component);

fn internal(e: impl std::fmt::Display) -> ErrorCode {
    ErrorCode::InternalError(Some(e.to_string()))
}

fn container() -> Result<Container, String> {
    let name = CONTAINER.to_string();
    if blobstore::container_exists(&name)? {
        blobstore::get_container(&name)
    } else {
        blobstore::create_container(&name)
    }
}

fn store(container: &Container, name: &str, body: &mut impl Read) -> Result<(), String> {
    let value = types::OutgoingValue::new_outgoing_value();
    let mut stream = value
        .outgoing_value_write_body()
        .map_err(|()| "the value's stream was already taken".to_string())?;
    container.write_data(&name.to_string(), &value)?;
    std::io::copy(body, &mut stream).map_err(|e| e.to_string())?;
    types::OutgoingValue::finish(value)
}

fn load(container: &Container, name: &str) -> Result<Vec<u8>, String> {
    let value = container.get_data(&name.to_string(), 0, u64::MAX)?;
    types::IncomingValue::incoming_value_consume_sync(value)
}

fn list(container: &Container) -> Result<Vec<u8>, String> {
    let names = container.list_objects()?;
    let mut all = Vec::new();
    loop {
        let (page, end) = names.read_stream_object_names(100)?;
        all.extend(page);
        if end {
            break;
        }
    }
    all.sort();
    Ok(all
        .iter()
        .map(|name| format!("{name}\n"))
        .collect::<String>()
        .into_bytes())
}

impl http::Server for Component {
    fn handle(
        request: http::IncomingRequest,
    ) -> http::Result<http::Response<impl http::OutgoingBody>> {
        let (parts, mut body) = request.into_parts();
        let name = parts
            .uri
            .path()
            .strip_prefix("/wc/")
            .unwrap_or_default()
            .to_string();
        let container = container().map_err(internal)?;
        let answer = match (parts.method, name.is_empty()) {
            (http::Method::PUT, false) => {
                store(&container, &name, &mut body).map_err(internal)?;
                b"stored\n".to_vec()
            }
            (http::Method::GET, false) => load(&container, &name).map_err(internal)?,
            (http::Method::GET, true) => list(&container).map_err(internal)?,
            _ => return Err(ErrorCode::HttpRequestMethodInvalid),
        };
        Ok(http::Response::new(answer))
    }
}
