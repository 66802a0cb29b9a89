//! A guest's response body, and how the guest's handler ended.
//!
//! wasmtime ends a guest's response body cleanly when the guest's store goes away, even when the
//! guest trapped or ran out of time halfway through writing it, or returned from its handler
//! with the body neither finished nor dropped (kept in a global: [`Leftover`]). [`GuestBody`] turns that end into
//! an error, so hyper aborts the response (HTTP/1.1 closes the connection without the last chunk,
//! HTTP/2 resets the stream) and a client never takes a truncated body for a complete one. The
//! same goes for a response written while the gateway cut the *request* body off (it was over
//! `max_request_body`, or arrived too slowly): the guest saw a broken request, so its answer cannot be trusted whole.

use crate::body::{BoxError, CutFlag};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::watch;
use wasmtime::component::ResourceTable;
use wasmtime_wasi_http::p2::body::{HostFutureTrailers, HostIncomingBody, HostOutgoingBody};
use wasmtime_wasi_http::p2::types::{
    HostFutureIncomingResponse, HostIncomingRequest, HostIncomingResponse, HostOutgoingRequest,
    HostOutgoingResponse, HostResponseOutparam,
};

/// How a guest's handler ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestEnd {
    /// Still running.
    Running,
    /// Returned normally.
    Returned,
    /// Trapped (or was refused memory and then trapped).
    Trapped,
    /// Ran past the route's timeout and was stopped.
    TimedOut,
    /// No instance could be created: the pool is exhausted.
    PoolExhausted,
    /// No instance could be created for another reason.
    InstantiationFailed,
    /// Returned with its response unfinished: the response-outparam never set, or a body
    /// neither finished nor dropped ([`Leftover::ResponseUnfinished`]).
    ReturnedUnfinished,
}

impl GuestEnd {
    /// Whether the guest stopped without finishing its work.
    pub fn failed(self) -> bool {
        !matches!(self, GuestEnd::Running | GuestEnd::Returned)
    }
}

/// What a guest's handler left of its HTTP exchange in its store when it returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Leftover {
    /// Nothing: every resource of the exchange was finished or dropped.
    Nothing,
    /// Another `wasi:http` resource is still held (in a global): the request, its body or its
    /// trailers (which own the body still), an outgoing request or its response. The client's
    /// response may be complete, but the store must not serve another request: a client's
    /// request body left unread stalls the next request on its connection.
    HttpResourceHeld,
    /// A response-outparam never set, or an outgoing body (the response's, or that of a request
    /// the guest sent) neither finished nor dropped. Dropping the store would end such a body
    /// as if it were complete.
    ResponseUnfinished,
}

impl Leftover {
    /// Looks through the store's resource table; a handful of entries once a handler returned.
    pub fn find(table: &mut ResourceTable) -> Leftover {
        table
            .iter_mut()
            .map(|entry| {
                if entry.is::<HostResponseOutparam>() || entry.is::<HostOutgoingBody>() {
                    Leftover::ResponseUnfinished
                } else if entry.is::<HostIncomingRequest>()
                    || entry.is::<HostIncomingBody>()
                    || entry.is::<HostFutureTrailers>()
                    || entry.is::<HostOutgoingResponse>()
                    || entry.is::<HostOutgoingRequest>()
                    || entry.is::<HostFutureIncomingResponse>()
                    || entry.is::<HostIncomingResponse>()
                {
                    Leftover::HttpResourceHeld
                } else {
                    Leftover::Nothing
                }
            })
            .max()
            .unwrap_or(Leftover::Nothing)
    }
}

/// Why a guest's response body was cut off.
#[derive(Debug, thiserror::Error)]
#[error("the component failed before it finished the response body")]
pub struct GuestBodyAborted;

/// A guest's response body; see the module docs.
pub struct GuestBody<B> {
    inner: B,
    end: watch::Receiver<GuestEnd>,
    request_cut: CutFlag,
}

impl<B> GuestBody<B> {
    /// `end` is how the guest ended; `request_cut` is set if the request body was cut off.
    pub fn new(inner: B, end: watch::Receiver<GuestEnd>, request_cut: CutFlag) -> GuestBody<B> {
        GuestBody {
            inner,
            end,
            request_cut,
        }
    }
}

impl<B> Body for GuestBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::error::Error + Send + Sync + 'static,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                // The guest's task publishes its end before it drops the store, so a body that
                // ended because the store went away always sees `Failed` here.
                if self.end.borrow().failed() || self.request_cut.get().is_some() {
                    Poll::Ready(Some(Err(Box::new(GuestBodyAborted))))
                } else {
                    Poll::Ready(None)
                }
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            other => other.map(|f| f.map(|r| r.map_err(|e| -> BoxError { Box::new(e) }))),
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
