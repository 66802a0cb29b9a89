//! Shared helpers for the wasmgate test guests: sending responses, writing
//! bodies in pieces the host accepts, and reading query parameters.
//!
//! Every guest is a `wasi:http/incoming-handler` component built on the
//! pre-generated bindings of the `wasi` crate; this crate only removes the
//! boilerplate that each of them would otherwise repeat.

#![forbid(unsafe_code)]

use std::str::FromStr;

use wasi::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasi::io::streams::{OutputStream, StreamError};

/// The most bytes one `blocking-write-and-flush` call may be given
/// (`check-write` never grants less than this, and the call traps on more).
pub const MAX_WRITE: usize = 4096;

/// Builds a header list from `(name, value)` pairs.
///
/// Panics if the host rejects a name or value: the guests only pass fixed,
/// valid headers here.
pub fn headers(list: &[(&str, &str)]) -> Fields {
    let fields = Fields::new();
    for (name, value) in list {
        fields
            .append(name, value.as_bytes())
            .unwrap_or_else(|e| panic!("header {name}: {e:?}"));
    }
    fields
}

/// A response whose status and headers have been handed to the host and whose
/// body is being written.
///
/// Dropping it without [`BodyWriter::finish`] tells the host the body is
/// incomplete.
pub struct BodyWriter {
    // Field order matters: the stream is a child of the body and must be
    // dropped first.
    stream: OutputStream,
    body: OutgoingBody,
}

impl BodyWriter {
    /// Writes all of `data`, flushing it to the client, in pieces of at most
    /// [`MAX_WRITE`] bytes.
    pub fn write(&self, data: &[u8]) -> Result<(), StreamError> {
        for piece in data.chunks(MAX_WRITE) {
            self.stream.blocking_write_and_flush(piece)?;
        }
        Ok(())
    }

    /// Ends the body (without trailers).
    pub fn finish(self) {
        let BodyWriter { stream, body } = self;
        drop(stream);
        // An error here means the host already gave up on the response
        // (e.g. the client went away); there is no one left to tell.
        let _ = OutgoingBody::finish(body, None);
    }
}

/// Sends the status and headers of a response now and returns a writer for
/// its body, so that the client sees the headers before the body is written.
///
/// Panics if `status` is not a valid HTTP status code (100..=999).
pub fn send_response(out: ResponseOutparam, status: u16, headers: Fields) -> BodyWriter {
    let response = OutgoingResponse::new(headers);
    response
        .set_status_code(status)
        .unwrap_or_else(|()| panic!("invalid status code {status}"));
    let body = response.body().expect("response body taken twice");
    ResponseOutparam::set(out, Ok(response));
    let stream = body.write().expect("body stream taken twice");
    BodyWriter { stream, body }
}

/// Sends a whole response at once.
pub fn respond(out: ResponseOutparam, status: u16, headers: Fields, body: &[u8]) {
    let writer = send_response(out, status, headers);
    // A failed write means the client is gone; finishing is still harmless.
    let _ = writer.write(body);
    writer.finish();
}

/// Sends a whole `text/plain` response at once.
pub fn respond_text(out: ResponseOutparam, status: u16, body: &str) {
    respond(
        out,
        status,
        headers(&[("content-type", "text/plain")]),
        body.as_bytes(),
    );
}

/// The method as it is written on the wire, e.g. `POST`.
pub fn method_str(method: &Method) -> &str {
    match method {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Connect => "CONNECT",
        Method::Options => "OPTIONS",
        Method::Trace => "TRACE",
        Method::Patch => "PATCH",
        Method::Other(other) => other,
    }
}

/// Decodes `%XX` escapes (and only those: `+` stays `+`). A `%` not followed
/// by two hex digits is kept as it is; invalid UTF-8 is replaced.
pub fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push(hi << 4 | lo);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The percent-decoded value of the first query parameter called `name` in a
/// path-with-query such as `/x?a=1&b=2`. A parameter without `=` has the
/// value `""`.
pub fn query_param(path_with_query: &str, name: &str) -> Option<String> {
    let (_, query) = path_with_query.split_once('?')?;
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| pair.split_once('=').unwrap_or((pair, "")))
        .find(|(key, _)| percent_decode(key) == name)
        .map(|(_, value)| percent_decode(value))
}

/// [`query_param`] of the request's path-with-query.
pub fn request_query_param(request: &IncomingRequest, name: &str) -> Option<String> {
    query_param(&request.path_with_query()?, name)
}

/// A numeric query parameter: `default` when absent, and an error message
/// (`invalid NAME: VALUE\n`, for a 400 response) when it does not parse.
pub fn query_number<T: FromStr>(
    request: &IncomingRequest,
    name: &str,
    default: T,
) -> Result<T, String> {
    match request_query_param(request, name) {
        None => Ok(default),
        Some(value) => value
            .parse()
            .map_err(|_| format!("invalid {name}: {value}\n")),
    }
}

/// Whether a flag such as `after_headers=1` is on (`1` or `true`).
pub fn query_flag(request: &IncomingRequest, name: &str) -> bool {
    matches!(
        request_query_param(request, name).as_deref(),
        Some("1" | "true")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_escapes_but_not_plus() {
        assert_eq!(
            percent_decode("http%3A%2F%2Fh%3A1%2Fp%3Fa%3Db%26c+d%2"),
            "http://h:1/p?a=b&c+d%2"
        );
    }

    #[test]
    fn finds_query_params() {
        let pq = "/p?chunks=3&flag&url=http%3A%2F%2Fx%2F&chunks=9";
        assert_eq!(query_param(pq, "chunks").as_deref(), Some("3"));
        assert_eq!(query_param(pq, "flag").as_deref(), Some(""));
        assert_eq!(query_param(pq, "url").as_deref(), Some("http://x/"));
        assert_eq!(query_param(pq, "missing"), None);
        assert_eq!(query_param("/p", "chunks"), None);
    }
}
