//! The access log: one line per request, written when its response has been sent (or cut off).
//!
//! On by default (`[logging] access_log = true`) at info level under the `wasmgate::access`
//! target. Field names follow OpenTelemetry's HTTP semantic conventions, so JSON lines can go
//! straight into a log pipeline: `client.address`, `http.request.method`, `url.path`,
//! `http.route`, `http.response.status_code`, `http.request.body.size`,
//! `http.response.body.size`, `network.protocol.version`, `server.address`,
//! `user_agent.original`, `tls.protocol.version`, plus `listener`, `request_id` and
//! `duration_ms` (from the request's arrival to the last byte of its response).
//!
//! The line is written by [`LoggedBody`] when hyper drops the response body, so the byte count
//! and the duration cover a streamed body too, and a response cut off midway says so
//! (`outcome = "aborted"`).

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

/// What the access log says about one request, gathered as it goes.
#[derive(Debug)]
pub struct Entry {
    pub started: Instant,
    pub request_id: std::sync::Arc<str>,
    pub client: Option<IpAddr>,
    pub listener: Option<std::sync::Arc<str>>,
    pub tls_version: Option<&'static str>,
    pub protocol: http::Version,
    pub method: http::Method,
    pub host: Option<String>,
    pub path: String,
    pub route: std::sync::Arc<str>,
    pub status: u16,
    pub request_body_size: Option<u64>,
    pub user_agent: Option<String>,
}

/// How a response body ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Complete,
    Aborted,
}

impl Entry {
    fn write(&self, response_bytes: u64, end: End) {
        let protocol = match self.protocol {
            http::Version::HTTP_2 => "2",
            http::Version::HTTP_10 => "1.0",
            _ => "1.1",
        };
        tracing::info!(
            target: "wasmgate::access",
            request_id = %self.request_id,
            client.address = self.client.map(tracing::field::display),
            listener = self.listener.as_deref(),
            tls.protocol.version = self.tls_version,
            network.protocol.version = protocol,
            http.request.method = %self.method,
            server.address = self.host.as_deref(),
            url.path = %self.path,
            http.route = %self.route,
            http.response.status_code = self.status,
            http.request.body.size = self.request_body_size,
            http.response.body.size = response_bytes,
            duration_ms = self.started.elapsed().as_secs_f64() * 1000.0,
            user_agent.original = self.user_agent.as_deref(),
            outcome = match end {
                End::Complete => "complete",
                End::Aborted => "aborted",
            },
        );
    }
}

/// Whether the log filter lets access-log lines through (`RUST_LOG=warn`, say, does not): when
/// it does not, the request path gathers nothing for them.
pub fn enabled() -> bool {
    tracing::enabled!(target: "wasmgate::access", tracing::Level::INFO)
}

/// A response body that counts what it sends and writes the access-log line when dropped.
pub struct LoggedBody<B> {
    inner: B,
    entry: Entry,
    sent: u64,
    end: End,
}

impl<B: Body> LoggedBody<B> {
    pub fn new(inner: B, entry: Entry) -> LoggedBody<B> {
        // Until the body reports its end, a drop means hyper gave up on it; an empty body is
        // complete without ever being polled.
        let end = if inner.is_end_stream() {
            End::Complete
        } else {
            End::Aborted
        };
        LoggedBody {
            inner,
            entry,
            sent: 0,
            end,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for LoggedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                self.sent += frame.data_ref().map_or(0, |d| d.len() as u64);
                if self.inner.is_end_stream() {
                    self.end = End::Complete;
                }
            }
            Poll::Ready(None) => self.end = End::Complete,
            Poll::Ready(Some(Err(_))) => self.end = End::Aborted,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for LoggedBody<B> {
    fn drop(&mut self) {
        self.entry.write(self.sent, self.end);
    }
}
