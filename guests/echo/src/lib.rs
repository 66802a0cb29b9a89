//! `echo`: reflects the request back. The response carries the method, the
//! path-with-query, the authority and the scheme as the guest saw them (`x-echo-method`,
//! `x-echo-uri`, `x-echo-authority`, `x-echo-scheme`) and every request header NAME as
//! `x-echo-header-NAME`; its body is the request body, streamed back chunk by
//! chunk as it arrives, so large bodies are never buffered whole.
//! `?status=NNN` sets the response status (default 200). `?buffer=1` reads the whole request
//! body before it responds (and does not respond at all if the body breaks off).

use guest_util::{method_str, query_flag, query_number, respond_text, send_response};
use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{Fields, IncomingBody, IncomingRequest, ResponseOutparam, Scheme};
use wasi::io::streams::StreamError;

/// How much to ask for per read; each chunk is written back in pieces of at
/// most `guest_util::MAX_WRITE` bytes.
const READ_SIZE: u64 = 64 * 1024;

struct Echo;

fn scheme_str(scheme: Option<Scheme>) -> String {
    match scheme {
        Some(Scheme::Http) => "http".into(),
        Some(Scheme::Https) => "https".into(),
        Some(Scheme::Other(other)) => other,
        None => String::new(),
    }
}

impl Guest for Echo {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let status = match query_number::<u16>(&request, "status", 200) {
            Ok(status @ 100..=999) => status,
            Ok(status) => return respond_text(out, 400, &format!("invalid status: {status}\n")),
            Err(message) => return respond_text(out, 400, &message),
        };

        let headers = Fields::new();
        let echoed = [
            ("x-echo-method", method_str(&request.method()).to_string()),
            ("x-echo-uri", request.path_with_query().unwrap_or_default()),
            ("x-echo-authority", request.authority().unwrap_or_default()),
            ("x-echo-scheme", scheme_str(request.scheme())),
        ];
        for (name, value) in echoed {
            let _ = headers.append(name, value.as_bytes());
        }
        for (name, value) in request.headers().entries() {
            // Repeated headers arrive as separate entries and are appended as
            // separate values. A header the host refuses is left out.
            let _ = headers.append(&format!("x-echo-header-{name}"), &value);
        }

        let body = request.consume().expect("request body consumed twice");
        if query_flag(&request, "buffer") {
            let Some(whole) = read_all(&body) else {
                // The body broke off: send nothing, so the host decides what the client gets.
                return;
            };
            let writer = send_response(out, status, headers);
            if writer.write(&whole).is_ok() {
                writer.finish();
            }
            return;
        }
        let writer = send_response(out, status, headers);

        let input = body.stream().expect("request body stream taken twice");
        loop {
            match input.blocking_read(READ_SIZE) {
                Ok(chunk) => {
                    if writer.write(&chunk).is_err() {
                        // The client is gone: nobody to echo to.
                        return;
                    }
                }
                Err(StreamError::Closed) => break,
                // The request body broke off: leave the response body
                // unfinished so the client sees it truncated, not complete.
                Err(StreamError::LastOperationFailed(_)) => return,
            }
        }
        drop(input);
        drop(IncomingBody::finish(body));
        writer.finish();
    }
}

/// Reads a whole request body; `None` if it broke off.
fn read_all(body: &IncomingBody) -> Option<Vec<u8>> {
    let input = body.stream().ok()?;
    let mut whole = Vec::new();
    loop {
        match input.blocking_read(READ_SIZE) {
            Ok(chunk) => whole.extend_from_slice(&chunk),
            Err(StreamError::Closed) => return Some(whole),
            Err(StreamError::LastOperationFailed(_)) => return None,
        }
    }
}

wasi::http::proxy::export!(Echo);
