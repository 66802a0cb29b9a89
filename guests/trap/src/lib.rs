//! `trap`: a guest that panics, which the host sees as a wasm trap.
//! By default it panics before sending any response. With
//! `?after_headers=1` it first sends a 200 and writes and flushes `partial\n`,
//! then (after `?delay_ms=N` milliseconds, default 0) panics before finishing the body.

use guest_util::{headers, query_flag, query_number, send_response};
use wasi::clocks::monotonic_clock::subscribe_duration;
use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{IncomingRequest, ResponseOutparam};

struct Trap;

impl Guest for Trap {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        if query_flag(&request, "after_headers") {
            let writer = send_response(out, 200, headers(&[("content-type", "text/plain")]));
            let _ = writer.write(b"partial\n");
            let delay_ms = query_number::<u64>(&request, "delay_ms", 0).unwrap_or(0);
            if delay_ms > 0 {
                subscribe_duration(delay_ms * 1_000_000).block();
            }
            panic!("guest panicked on purpose");
        }
        panic!("guest panicked on purpose");
    }
}

wasi::http::proxy::export!(Trap);
