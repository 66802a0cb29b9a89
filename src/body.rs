//! The HTTP bodies that cross the gateway.
//!
//! * [`ResponseBody`]: what every response carries, whether a guest or the gateway wrote it.
//! * [`ObservedBody`]: a response body that records its request in the metrics when it ends
//!   (sent, failed or dropped), so a streamed response's duration covers its whole body.
//! * [`LimitedBody`]: a request body that fails once it passes `max_request_body` or takes
//!   longer than `body_read_timeout` to arrive, and records why in a [`CutFlag`], so the caller
//!   can answer 413 or 408 instead of whatever the guest made of the error.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;

/// Any error a body can end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body type of every response the gateway sends.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// A complete response body from bytes.
pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    http_body_util::Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Why the gateway cut a request body off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyCut {
    /// More than `max_request_body` bytes: 413.
    TooLarge,
    /// Not complete within `body_read_timeout`: 408.
    TooSlow,
}

/// Whether (and why) a request's body was cut off; shared by the body and the request path.
#[derive(Debug, Clone, Default)]
pub struct CutFlag(Arc<AtomicU8>);

impl CutFlag {
    fn set(&self, cut: BodyCut) {
        let value = match cut {
            BodyCut::TooLarge => 1,
            BodyCut::TooSlow => 2,
        };
        let _ = self
            .0
            .compare_exchange(0, value, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The first reason the body was cut off, if it was.
    pub fn get(&self) -> Option<BodyCut> {
        match self.0.load(Ordering::Acquire) {
            1 => Some(BodyCut::TooLarge),
            2 => Some(BodyCut::TooSlow),
            _ => None,
        }
    }
}

/// A request body with a size limit and a time limit.
pub struct LimitedBody<B> {
    inner: B,
    remaining: u64,
    limit: u64,
    read_timeout: Duration,
    /// Started when the body first makes the reader wait.
    deadline: Option<Pin<Box<Sleep>>>,
    cut: CutFlag,
}

impl<B> LimitedBody<B> {
    /// Wraps `inner`: more than `limit` bytes, or a body still incomplete `read_timeout` after
    /// it first kept its reader waiting, fail the read and set `cut`.
    pub fn new(inner: B, limit: u64, read_timeout: Duration, cut: CutFlag) -> LimitedBody<B> {
        LimitedBody {
            inner,
            remaining: limit,
            limit,
            read_timeout,
            deadline: None,
            cut,
        }
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<wasmtime_wasi_http::Error>,
{
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let len = data.len() as u64;
                    if len > this.remaining {
                        this.cut.set(BodyCut::TooLarge);
                        return Poll::Ready(Some(Err(
                            wasmtime_wasi_http::Error::HttpRequestBodySize(Some(this.limit)),
                        )));
                    }
                    this.remaining -= len;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let read_timeout = this.read_timeout;
                let deadline = this
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(read_timeout)));
                if deadline.as_mut().poll(cx).is_ready() {
                    this.cut.set(BodyCut::TooSlow);
                    return Poll::Ready(Some(Err(
                        wasmtime_wasi_http::Error::ConnectionReadTimeout,
                    )));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request in flight, counted in `http_server_active_requests` until this is dropped.
pub struct ActiveRequest(prometheus::IntGauge);

impl ActiveRequest {
    pub fn start(gauge: &prometheus::IntGauge) -> ActiveRequest {
        gauge.inc();
        ActiveRequest(gauge.clone())
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What is recorded of a request when its response ends.
pub struct Observation {
    pub metrics: Arc<crate::metrics::Metrics>,
    pub route: Arc<str>,
    pub method: http::Method,
    pub status: u16,
    pub started: std::time::Instant,
    /// Counted as active until the response ends.
    pub active: Option<ActiveRequest>,
    /// The request's server span, when tracing is on: it ends with the response, too.
    pub trace: Option<crate::otel::RequestTrace>,
}

impl Observation {
    /// Records the request, at the end of its response (or when that was dropped).
    pub fn record(self) {
        self.metrics.observe_request(
            &self.route,
            &self.method,
            self.status,
            self.started.elapsed().as_secs_f64(),
        );
        if let Some(trace) = self.trace {
            trace.finish(&self.route, self.status);
        }
    }

    /// Records the request now if `response`'s body is already complete; otherwise gives the
    /// observation back, for whoever wraps the body to record when it ends.
    pub fn unless_complete(self, response: &http::Response<ResponseBody>) -> Option<Observation> {
        if response.body().is_end_stream() {
            self.record();
            return None;
        }
        Some(self)
    }

    /// `response` with its body wrapped in an [`ObservedBody`] for `observation`, if any.
    pub fn attach(
        observation: Option<Observation>,
        response: http::Response<ResponseBody>,
    ) -> http::Response<ResponseBody> {
        match observation {
            None => response,
            Some(observation) => response.map(|inner| {
                ObservedBody {
                    inner,
                    observation: Some(observation),
                }
                .boxed_unsync()
            }),
        }
    }
}

/// A response body that records its request when it ends: sent whole, failed, or dropped by a
/// client that went away.
pub struct ObservedBody {
    inner: ResponseBody,
    observation: Option<Observation>,
}

impl ObservedBody {
    fn end(&mut self) {
        if let Some(observation) = self.observation.take() {
            observation.record();
        }
    }
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => self.end(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.end(),
            _ => {}
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

impl Drop for ObservedBody {
    fn drop(&mut self) {
        self.end();
    }
}
