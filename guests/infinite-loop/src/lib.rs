//! `infinite-loop`: spins forever, to test the gateway's execution time
//! limits (epoch/fuel interruption). By default it spins before sending any
//! response. With `?after_headers=1` it first sends a 200 and writes and
//! flushes `partial\n`, then spins.

use guest_util::{headers, query_flag, send_response};
use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{IncomingRequest, ResponseOutparam};

struct InfiniteLoop;

/// A busy loop the optimizer cannot remove: `black_box` hides the counter.
fn spin() -> ! {
    let mut counter: u64 = 0;
    loop {
        counter = std::hint::black_box(counter.wrapping_add(1));
    }
}

impl Guest for InfiniteLoop {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        if query_flag(&request, "after_headers") {
            let writer = send_response(out, 200, headers(&[("content-type", "text/plain")]));
            let _ = writer.write(b"partial\n");
            // `spin` never returns, so the body is never finished.
            spin();
        }
        spin();
    }
}

wasi::http::proxy::export!(InfiniteLoop);
