//! `not-a-proxy`: an ordinary `wasi:cli` command. Its component exports
//! `wasi:cli/run` and not `wasi:http/incoming-handler`, so the gateway must
//! refuse to serve it.

fn main() {
    println!("I am a command, not an HTTP handler");
}
