//! `streaming`: a slow, chunked `text/plain` body, to test that the gateway
//! streams responses instead of buffering them. Sends the headers first, then
//! writes and flushes `chunk 0\n`, `chunk 1\n`, ... (`?chunks=N`, default 5),
//! sleeping `?delay_ms=N` milliseconds (default 200) between chunks.

use guest_util::{headers, query_number, respond_text, send_response};
use wasi::clocks::monotonic_clock::subscribe_duration;
use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{IncomingRequest, ResponseOutparam};

struct Streaming;

impl Guest for Streaming {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let params = query_number::<u32>(&request, "chunks", 5)
            .and_then(|chunks| Ok((chunks, query_number::<u64>(&request, "delay_ms", 200)?)));
        let (chunks, delay_ms) = match params {
            Ok(params) => params,
            Err(message) => return respond_text(out, 400, &message),
        };
        let delay_ns = delay_ms.saturating_mul(1_000_000);

        // Headers go out now, before the first chunk is written.
        let writer = send_response(out, 200, headers(&[("content-type", "text/plain")]));
        for i in 0..chunks {
            if i > 0 && delay_ns > 0 {
                subscribe_duration(delay_ns).block();
            }
            if writer.write(format!("chunk {i}\n").as_bytes()).is_err() {
                return; // the client went away
            }
        }
        writer.finish();
    }
}

wasi::http::proxy::export!(Streaming);
