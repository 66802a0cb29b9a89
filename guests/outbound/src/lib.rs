//! `outbound`: fetches `?url=...` (percent-encoded) with an outgoing GET
//! through `wasi:http/outgoing-handler`, to test the gateway's outbound HTTP
//! policy. On success: 200, `x-upstream-status: NNN` and the upstream body.
//! On any error: 502 and `outbound error: CODE\n`, CODE being the
//! `wasi:http` error code (e.g. `HttpRequestDenied`). No `url`: 400.
//! `?delay_ms=N` waits N milliseconds before fetching.

use guest_util::{headers, request_query_param, respond, respond_text};
use wasi::exports::http::incoming_handler::Guest;
use wasi::http::outgoing_handler;
use wasi::http::types::{
    ErrorCode, Fields, IncomingBody, IncomingRequest, Method, OutgoingRequest,
    ResponseOutparam, Scheme,
};
use wasi::io::streams::StreamError;

struct Outbound;

impl Guest for Outbound {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let Some(url) = request_query_param(&request, "url") else {
            return respond_text(out, 400, "missing url\n");
        };
        if let Some(delay) = request_query_param(&request, "delay_ms").and_then(|d| d.parse().ok())
        {
            std::thread::sleep(std::time::Duration::from_millis(delay));
        }
        match get(&url) {
            Ok((status, body)) => respond(
                out,
                200,
                headers(&[("x-upstream-status", &status.to_string())]),
                &body,
            ),
            Err(code) => respond_text(out, 502, &format!("outbound error: {}\n", describe(&code))),
        }
    }
}

/// The error code's `Debug` form without the `ErrorCode::` type prefix that
/// the generated `Debug` puts first, e.g. `HttpRequestDenied` or
/// `DnsError(DnsErrorPayload { .. })`.
fn describe(code: &ErrorCode) -> String {
    let debug = format!("{code:?}");
    match debug.strip_prefix("ErrorCode::") {
        Some(rest) => rest.to_string(),
        None => debug,
    }
}

fn internal(message: &str) -> ErrorCode {
    ErrorCode::InternalError(Some(message.to_string()))
}

/// GETs `url` and returns the upstream status and whole body.
fn get(url: &str) -> Result<(u16, Vec<u8>), ErrorCode> {
    let (scheme, rest) = url.split_once("://").ok_or(ErrorCode::HttpRequestUriInvalid)?;
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    let path_with_query = match path {
        "" => "/".to_string(),
        p if p.starts_with('?') => format!("/{p}"),
        p => p.to_string(),
    };
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => Scheme::Other(other.to_string()),
    };

    let outgoing = OutgoingRequest::new(Fields::new());
    let invalid = |()| ErrorCode::HttpRequestUriInvalid;
    outgoing.set_method(&Method::Get).map_err(|()| ErrorCode::HttpRequestMethodInvalid)?;
    outgoing.set_scheme(Some(&scheme)).map_err(invalid)?;
    outgoing.set_authority(Some(authority)).map_err(invalid)?;
    outgoing.set_path_with_query(Some(&path_with_query)).map_err(invalid)?;

    let future = outgoing_handler::handle(outgoing, None)?;
    let pollable = future.subscribe();
    pollable.block();
    drop(pollable);
    let response = match future.get() {
        Some(Ok(result)) => result?,
        Some(Err(())) => return Err(internal("response already taken")),
        None => return Err(internal("response not ready after block")),
    };

    let status = response.status();
    let body = response.consume().map_err(|()| internal("body already consumed"))?;
    let stream = body.stream().map_err(|()| internal("body stream already taken"))?;
    let mut data = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => data.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(error)) => {
                return Err(wasi::http::types::http_error_code(&error)
                    .unwrap_or_else(|| internal(&error.to_debug_string())));
            }
        }
    }
    drop(stream);
    drop(IncomingBody::finish(body));
    Ok((status, data))
}

wasi::http::proxy::export!(Outbound);
