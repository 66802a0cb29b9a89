//! `env`: shows what the gateway gives a guest. Prints a line to stdout and
//! one to stderr (to test log capture), then answers with `args=N` (the
//! number of command-line arguments) followed by every environment variable
//! as `KEY=VALUE`, one per line, sorted by key.

use std::fmt::Write as _;

use guest_util::respond_text;
use wasi::cli::environment::{get_arguments, get_environment};
use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{IncomingRequest, ResponseOutparam};

struct Env;

impl Guest for Env {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        println!("env guest says hello on stdout");
        eprintln!("env guest says hello on stderr");

        let mut body = format!("args={}\n", get_arguments().len());
        let mut vars = get_environment();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        for (key, value) in vars {
            let _ = writeln!(body, "{key}={value}");
        }
        respond_text(out, 200, &body);
    }
}

wasi::http::proxy::export!(Env);
