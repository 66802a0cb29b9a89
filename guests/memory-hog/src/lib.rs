//! `memory-hog`: allocates and touches `?mb=N` MiB (default 256), to test the
//! gateway's memory limits. The allocation uses `try_reserve_exact`, so a
//! refused `memory.grow` becomes a 507 response instead of an abort.

use guest_util::{query_number, respond_text};
use wasi::exports::http::incoming_handler::Guest;
use wasi::http::types::{IncomingRequest, ResponseOutparam};

const MIB: usize = 1024 * 1024;
const PAGE: usize = 4096;

struct MemoryHog;

/// Allocates `bytes` bytes and writes one byte in every 4 KiB page of them.
fn allocate_and_touch(bytes: usize) -> Option<Vec<u8>> {
    let mut buffer: Vec<u8> = Vec::new();
    buffer.try_reserve_exact(bytes).ok()?;
    for byte in buffer.spare_capacity_mut().iter_mut().step_by(PAGE) {
        byte.write(1);
    }
    // Let the pointer escape so the writes above cannot be optimized away.
    std::hint::black_box(buffer.as_mut_ptr());
    Some(buffer)
}

impl Guest for MemoryHog {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let mb = match query_number::<usize>(&request, "mb", 256) {
            Ok(mb) => mb,
            Err(message) => return respond_text(out, 400, &message),
        };
        match mb.checked_mul(MIB).and_then(allocate_and_touch) {
            Some(buffer) => {
                drop(buffer);
                respond_text(out, 200, &format!("allocated {mb} MiB\n"));
            }
            None => respond_text(out, 507, &format!("allocation of {mb} MiB failed\n")),
        }
    }
}

wasi::http::proxy::export!(MemoryHog);
