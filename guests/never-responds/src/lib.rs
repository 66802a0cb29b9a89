//! `never-responds`: returns from the handler without ever setting a
//! response, to test how the gateway reports a guest that gives no answer.

use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{IncomingRequest, ResponseOutparam};

struct NeverResponds;

impl Guest for NeverResponds {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        // Dropping the outparam unset is the whole point.
        drop(out);
    }
}

wasi::http::proxy::export!(NeverResponds);
