//! `visits`: a guest that remembers, to show what a route's `reuse` keeps between requests.
//! Every request adds one to a counter in the instance's memory and answers with it
//! (`visit N`), so a fresh instance per request always says `visit 1`.
//!
//! * `?delay_ms=N` first waits N milliseconds;
//! * `?print=N` first prints N lines to stdout (`line K of visit V`);
//! * `?leak=body` answers 200, writes `partial\n` and keeps the response body in a global
//!   instead of finishing it: the handler returns with the response still open;
//! * `?leak=request` answers, and keeps the request in a global;
//! * `?leak=outparam` keeps the response-outparam in a global without setting it;
//! * `?trap=1` traps after counting.

use guest_util::{BodyWriter, headers, query_number, request_query_param, respond_text, send_response};
use std::cell::RefCell;
use wasi::clocks::monotonic_clock::subscribe_duration;
use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{IncomingRequest, ResponseOutparam};

thread_local! {
    static VISITS: RefCell<u64> = const { RefCell::new(0) };
    static LEAKED: RefCell<Vec<Leaked>> = const { RefCell::new(Vec::new()) };
}

/// What a request kept past its handler's return, on purpose.
#[allow(dead_code)]
enum Leaked {
    Body(BodyWriter),
    Outparam(ResponseOutparam),
    Request(IncomingRequest),
}

struct Visits;

impl Guest for Visits {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let visit = VISITS.with(|visits| {
            let mut visits = visits.borrow_mut();
            *visits += 1;
            *visits
        });
        let params = query_number::<u32>(&request, "print", 0)
            .and_then(|lines| Ok((lines, query_number::<u64>(&request, "delay_ms", 0)?)));
        let (lines, delay_ms) = match params {
            Ok(params) => params,
            Err(message) => return respond_text(out, 400, &message),
        };
        if delay_ms > 0 {
            subscribe_duration(delay_ms.saturating_mul(1_000_000)).block();
        }
        for line in 1..=lines {
            println!("line {line} of visit {visit}");
        }
        match request_query_param(&request, "leak").as_deref() {
            Some("body") => {
                let writer = send_response(out, 200, headers(&[("content-type", "text/plain")]));
                let _ = writer.write(b"partial\n");
                LEAKED.with(|leaked| leaked.borrow_mut().push(Leaked::Body(writer)));
                return;
            }
            Some("request") => {
                respond_text(out, 200, &format!("visit {visit}\n"));
                LEAKED.with(|leaked| leaked.borrow_mut().push(Leaked::Request(request)));
                return;
            }
            Some("outparam") => {
                LEAKED.with(|leaked| leaked.borrow_mut().push(Leaked::Outparam(out)));
                return;
            }
            _ => {}
        }
        if request_query_param(&request, "trap").is_some() {
            panic!("trapping on purpose at visit {visit}");
        }
        respond_text(out, 200, &format!("visit {visit}\n"));
    }
}

wasi::http::proxy::export!(Visits);
