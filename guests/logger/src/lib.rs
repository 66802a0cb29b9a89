//! `logger`: emits `wasi:logging@0.1.0-draft` messages. Any method on any
//! path logs one message per level, in the order trace, debug, info, warn,
//! error, critical, each with context `logger-guest` and message
//! `message at LEVEL`. `?repeat=N` (default 1) logs that whole sequence N
//! times; `?big=N` then logs one more `info` message of N bytes of `x`.
//! `?text=T` (percent-decoded) then logs T as one more `info` message and
//! prints it to stdout and to stderr, as it is (newlines included).
//! `?stdout=N` and `?stderr=N` then print N lines `stdout line I` (`stderr
//! line I`) to that stream.
//! Answers 200 `logged\n`; a malformed number gets 400
//! `invalid NAME: VALUE\n` before anything is logged.

use std::io::Write;

use guest_util::{query_number, request_query_param, respond_text};
use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{IncomingRequest, ResponseOutparam};

use bindings::wasi::logging::logging::{Level, log};

mod bindings {
    // In a module of its own, so that the generated `wasi` module does not
    // shadow the `wasi` crate.
    wit_bindgen::generate!({
        world: "wasmgate:logger/guest",
        path: ["../../wit/deps/logging-0.1.0-draft", "wit"],
        generate_all,
    });
}

/// The context of every message.
const CONTEXT: &str = "logger-guest";

/// The levels in the order they are logged, with their names.
const LEVELS: [(Level, &str); 6] = [
    (Level::Trace, "trace"),
    (Level::Debug, "debug"),
    (Level::Info, "info"),
    (Level::Warn, "warn"),
    (Level::Error, "error"),
    (Level::Critical, "critical"),
];

struct Logger;

impl Guest for Logger {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let repeat = match query_number::<u32>(&request, "repeat", 1) {
            Ok(repeat) => repeat,
            Err(message) => return respond_text(out, 400, &message),
        };
        let (stdout, stderr) = match (
            query_number::<u32>(&request, "stdout", 0),
            query_number::<u32>(&request, "stderr", 0),
        ) {
            (Ok(stdout), Ok(stderr)) => (stdout, stderr),
            (Err(message), _) | (_, Err(message)) => return respond_text(out, 400, &message),
        };
        let text = request_query_param(&request, "text");
        let big = match request_query_param(&request, "big") {
            None => None,
            Some(value) => match value.parse::<u32>() {
                Ok(size) => Some(size),
                Err(_) => return respond_text(out, 400, &format!("invalid big: {value}\n")),
            },
        };

        for _ in 0..repeat {
            for (level, name) in LEVELS {
                log(level, CONTEXT, &format!("message at {name}"));
            }
        }
        if let Some(size) = big {
            log(Level::Info, CONTEXT, &"x".repeat(size as usize));
        }
        if let Some(text) = text {
            log(Level::Info, CONTEXT, &text);
            print!("{text}\n");
            eprint!("{text}\n");
        }
        print_lines(&mut std::io::stdout().lock(), "stdout", stdout);
        print_lines(&mut std::io::stderr().lock(), "stderr", stderr);
        respond_text(out, 200, "logged\n");
    }
}

/// Prints `count` lines `NAME line I`; a failed write stops it.
fn print_lines(out: &mut impl Write, name: &str, count: u32) {
    for i in 0..count {
        if writeln!(out, "{name} line {i}").is_err() {
            return;
        }
    }
    let _ = out.flush();
}

wasi::http::proxy::export!(Logger);
