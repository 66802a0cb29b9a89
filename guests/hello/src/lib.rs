//! `hello`: the smallest useful guest. Greets the name passed in the
//! `x-wasmgate-param-name` request header (`Hello, NAME!`), or says
//! `Hello from wasmgate!` when there is none.

use guest_util::respond_text;
use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{IncomingRequest, ResponseOutparam};

struct Hello;

impl Guest for Hello {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let names = request.headers().get("x-wasmgate-param-name");
        let body = match names.first() {
            Some(name) => format!("Hello, {}!\n", String::from_utf8_lossy(name)),
            None => "Hello from wasmgate!\n".to_string(),
        };
        respond_text(out, 200, &body);
    }
}

wasi::http::proxy::export!(Hello);
