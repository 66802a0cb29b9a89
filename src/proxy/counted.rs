//! Connection counts for an upstream's pool: hyper-util's pool keeps its counts to itself, so the
//! connector counts instead. Every connection it makes is wrapped in [`Counted`], which adds
//! one to its target's open-connections gauge and opened counter, and takes one off the gauge
//! when the pool drops the connection. `opened / requests` is how well keep-alive works.

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::net::TcpStream;

/// One target's connection metrics, found by its `host:port`.
pub struct TargetConnections {
    pub authority: http::uri::Authority,
    /// `wasmgate_upstream_connections{upstream, target}`: open now.
    pub open: prometheus::IntGauge,
    /// `wasmgate_upstream_connections_opened_total{upstream, target}`.
    pub opened: prometheus::IntCounter,
}

/// An `HttpConnector` whose connections are counted per target.
#[derive(Clone)]
pub struct CountingConnector {
    inner: HttpConnector,
    targets: Arc<[TargetConnections]>,
}

impl CountingConnector {
    pub fn new(inner: HttpConnector, targets: Vec<TargetConnections>) -> CountingConnector {
        CountingConnector {
            inner,
            targets: targets.into(),
        }
    }
}

impl tower::Service<http::Uri> for CountingConnector {
    type Response = Counted;
    type Error = <HttpConnector as tower::Service<http::Uri>>::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Counted, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let targets = self.targets.clone();
        let connecting = self.inner.call(uri.clone());
        Box::pin(async move {
            let io = connecting.await?;
            let gauge = targets
                .iter()
                .find(|t| Some(&t.authority) == uri.authority())
                .map(|target| {
                    target.opened.inc();
                    target.open.inc();
                    target.open.clone()
                });
            Ok(Counted { io, gauge })
        })
    }
}

/// A connection on an upstream's gauge until it is dropped.
pub struct Counted {
    io: TokioIo<TcpStream>,
    gauge: Option<prometheus::IntGauge>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(gauge) = &self.gauge {
            gauge.dec();
        }
    }
}

impl Connection for Counted {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

impl Read for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl Write for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
}
