//! Guest stdout and stderr, as log lines.
//!
//! A guest's `println!` becomes one `tracing` event per line, tagged with the route, the request
//! id and the stream, on the same pipeline as the gateway's own logs. Lines are cut at
//! [`MAX_LINE`] bytes so a guest that never writes a newline cannot grow the buffer without
//! bound; whatever is left when the stream is dropped is logged as a last line.
//!
//! Every line is taken from the request's log budget ([`RequestLog`]), the same one
//! `wasi:logging` uses: past it, lines are dropped and counted (stdout as level `info`, stderr
//! as `warn`), so a guest printing in a loop costs the host a line split, not a log write.

use super::logging::{Admit, RequestLog};
use crate::metrics::GUEST_LOG_LEVELS;
use bytes::Bytes;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

/// The longest line logged as one event; longer output is split.
pub const MAX_LINE: usize = 4096;

/// Which of the guest's streams this is.
#[derive(Clone, Copy, Debug)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    /// The guest log level its lines are counted under, an index into [`GUEST_LOG_LEVELS`].
    fn level(self) -> usize {
        let name = match self {
            Stream::Stdout => "info",
            Stream::Stderr => "warn",
        };
        GUEST_LOG_LEVELS
            .iter()
            .position(|level| *level == name)
            .unwrap_or(0)
    }
}

/// A guest output stream that becomes log lines; cheap to clone (one per request).
#[derive(Clone)]
pub struct GuestOutput {
    stream: Stream,
    log: RequestLog,
}

impl GuestOutput {
    pub fn new(stream: Stream, log: RequestLog) -> GuestOutput {
        GuestOutput { stream, log }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineLogger::new(self.clone()))
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LineLogger::new(self.clone()))
    }
}

/// Buffers partial lines and logs complete ones.
struct LineLogger {
    output: GuestOutput,
    line: Vec<u8>,
}

impl LineLogger {
    fn new(output: GuestOutput) -> LineLogger {
        LineLogger {
            output,
            line: Vec::new(),
        }
    }

    fn write_bytes(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let room = MAX_LINE - self.line.len();
            let newline = bytes[..bytes.len().min(room)]
                .iter()
                .position(|&b| b == b'\n');
            match newline {
                Some(at) => {
                    self.line.extend_from_slice(&bytes[..at]);
                    self.emit();
                    bytes = &bytes[at + 1..];
                }
                None => {
                    let take = bytes.len().min(room);
                    self.line.extend_from_slice(&bytes[..take]);
                    bytes = &bytes[take..];
                    if self.line.len() >= MAX_LINE {
                        self.emit();
                    }
                }
            }
        }
    }

    fn emit(&mut self) {
        let GuestOutput { stream, log } = &self.output;
        if log.admit(self.line.len(), stream.level()) == Admit::Drop {
            self.line.clear();
            return;
        }
        let text = String::from_utf8_lossy(&self.line);
        let text = text.strip_suffix('\r').unwrap_or(&text);
        let (route, component, request_id) = (log.route(), log.component(), &*log.request_id());
        match stream {
            Stream::Stdout => tracing::info!(
                target: "wasmgate::guest",
                route = %route, component = %component, request_id = %request_id,
                stream = "stdout", "{text}"
            ),
            Stream::Stderr => tracing::warn!(
                target: "wasmgate::guest",
                route = %route, component = %component, request_id = %request_id,
                stream = "stderr", "{text}"
            ),
        }
        self.line.clear();
    }
}

impl Drop for LineLogger {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.emit();
        }
    }
}

#[async_trait::async_trait]
impl Pollable for LineLogger {
    async fn ready(&mut self) {}
}

impl OutputStream for LineLogger {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl AsyncWrite for LineLogger {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
