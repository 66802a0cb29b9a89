//! Keep-alive HTTP/1.1 connections to an upstream's plain `http://` targets, over hyper's
//! `client::conn`, driven by the task of the request that uses them.
//!
//! hyper-util's pooled client gives every connection a task of its own: a proxied request
//! crosses from the client connection's task to that task and back, and every HTTP/1.1 request
//! spawns one more task, to put the connection back in the pool once it may take the next
//! request. Here nothing is spawned per request and no other task is woken: the request's own
//! task (the client connection's, in the end) polls the upstream connection itself, while it
//! waits for the response headers ([`send`]) and then with every frame of the response body
//! ([`PooledBody`]), as nginx does in its event loop.
//!
//! A connection is taken from its target's idle list ([`IdleConnections`], one per worker
//! thread, since a socket's readiness is delivered by the thread that opened it), the most
//! recently used first, and goes back from the response body once the body has ended and the connection
//! may take the next request. Idle, nobody polls it: a connection is looked at when taken, so
//! one that its target closed meanwhile is found closed and dropped, and a request that a
//! connection could not send (closed under it before the request went out) goes to the next
//! one, or a new one. The upstream's sweep ([`IdleConnections::sweep`], every
//! [`SWEEP_EVERY`]) looks at the idle ones too, and drops those their target closed and those
//! idle past [`IDLE_TIMEOUT`], so a quiet target's closed sockets do not linger. A connection
//! whose response body did not end (the client went away mid-body) is dropped, which closes
//! it. One that is not yet ready for the next request when its body ends (rare: the last bytes
//! of the request body still going out) is driven that far by a task of its own, for at most
//! [`READY_WITHIN`].
//!
//! TLS targets, HTTP/2 (`h2c`) and protocol switches (WebSocket) stay on hyper-util's client.

use super::ProxyBody;
use super::counted::{Counted, CountingConnector};
use crate::body::BoxError;
use crate::server::workers::PerWorker;
use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{Connection, SendRequest};
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tower::Service as _;

/// How long a connection may idle in the pool before it is dropped (as hyper-util's client
/// here).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// How often idle connections are looked at ([`IdleConnections::sweep`]).
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// How long a connection whose response body has ended may take to be ready for the next
/// request (the rest of a request body still going out) before it is closed instead.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// Why a request got no response from its target.
#[derive(Debug, thiserror::Error)]
pub enum SendFailure {
    /// No connection could be opened (refused, unreachable, past `connect_timeout`).
    #[error("cannot connect: {0}")]
    Connect(#[source] BoxError),
    /// The connection failed after the request went out, before the response headers.
    #[error("{0}")]
    Send(#[source] BoxError),
}

/// An open connection: what sends on it, and the connection itself, which must be polled for
/// anything to move.
struct Live {
    sender: SendRequest<ProxyBody>,
    /// None once the connection has ended (closed or failed). It is dropped then: a request
    /// queued on it comes back unsent ([`send`] tries the next connection) rather than waiting
    /// on a connection that will never take it.
    connection: Option<Pin<Box<Connection<Counted, ProxyBody>>>>,
    /// The idle list it goes back to: that of the worker thread that opened it.
    shard: usize,
}

impl Live {
    fn new(
        sender: SendRequest<ProxyBody>,
        connection: Connection<Counted, ProxyBody>,
        shard: usize,
    ) -> Live {
        Live {
            sender,
            connection: Some(Box::pin(connection)),
            shard,
        }
    }

    /// Lets the connection read and write what it can; whether it is still open.
    fn drive(&mut self, cx: &mut Context<'_>) -> bool {
        if let Some(connection) = &mut self.connection
            && let Poll::Ready(ended) = connection.as_mut().poll(cx)
        {
            self.connection = None;
            if let Err(error) = ended {
                tracing::debug!(error = %error, "upstream connection ended with an error");
            }
        }
        self.connection.is_some()
    }
}

/// One target's idle connections, in one list per worker thread (`[server] scheduler =
/// "per_core"`, `crate::server::workers`) plus one for every other thread, each the most
/// recently used last.
///
/// A connection's socket is registered with the event loop of the thread that opened it; used
/// by another worker, each of its reads would wake that thread first. So a connection goes
/// back to its own worker's list, and a request takes only from its worker's list.
pub struct IdleConnections {
    shards: PerWorker<Mutex<IdleList>>,
}

/// Idle connections with the time each went idle, the most recently used last.
type IdleList = Vec<(Live, Instant)>;

impl Default for IdleConnections {
    fn default() -> Self {
        IdleConnections {
            shards: PerWorker::new(|_| Mutex::default()),
        }
    }
}

impl IdleConnections {
    fn lock(list: &Mutex<IdleList>) -> std::sync::MutexGuard<'_, IdleList> {
        list.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used idle connection of the calling thread's list; those idle too
    /// long are dropped on the way.
    fn take(&self) -> Option<Live> {
        let mut idle = Self::lock(self.shards.here());
        Self::prune(&mut idle);
        idle.pop().map(|(live, _)| live)
    }

    fn put(&self, live: Live) {
        let mut idle = Self::lock(self.shards.get(live.shard));
        Self::prune(&mut idle);
        idle.push((live, Instant::now()));
    }

    /// Drops the idle connections that their target has closed, or that have idled past
    /// [`IDLE_TIMEOUT`]. Nobody polls an idle connection, so without this one closed by its
    /// target would keep its socket (and its place in the open-connections gauge) until the
    /// target's next request, which may never come.
    pub fn sweep(&self) {
        let mut cx = Context::from_waker(Waker::noop());
        for list in self.shards.iter() {
            let mut idle = Self::lock(list);
            Self::prune(&mut idle);
            idle.retain_mut(|(live, _)| live.drive(&mut cx));
        }
    }

    /// Drops the connections idle past [`IDLE_TIMEOUT`] (the oldest are first).
    fn prune(idle: &mut IdleList) {
        let stale = idle
            .iter()
            .take_while(|(_, since)| since.elapsed() >= IDLE_TIMEOUT)
            .count();
        if stale > 0 {
            idle.drain(..stale);
        }
    }

    /// How many connections are idle now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|list| Self::lock(list).len()).sum()
    }
}

/// Sends `request` (origin-form, with its `Host`) to the target at `address` (`http://host:port`)
/// on an idle connection of `idle`, or on a new one made by `connector`, and drives the
/// connection until the response headers are in.
pub async fn send(
    connector: &CountingConnector,
    idle: &Arc<IdleConnections>,
    address: &Uri,
    mut request: Request<ProxyBody>,
) -> Result<Response<PooledBody>, SendFailure> {
    while let Some(mut live) = idle.take() {
        // Its first look since it went idle: a connection the target closed ends here.
        let open = poll_fn(|cx| Poll::Ready(live.drive(cx))).await;
        if !open || !live.sender.is_ready() {
            continue;
        }
        match exchange(&mut live, request).await {
            Ok(response) => return Ok(PooledBody::wrap(response, live, idle)),
            Err(mut failed) => match failed.take_message() {
                // Not sent: the connection closed under it. Try the next.
                Some(unsent) => request = unsent,
                None => return Err(SendFailure::Send(failed.into_error().into())),
            },
        }
    }
    let io = connector
        .clone()
        .call(address.clone())
        .await
        .map_err(|error| SendFailure::Connect(error.into()))?;
    let (sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|error| SendFailure::Connect(error.into()))?;
    let mut live = Live::new(sender, connection, idle.shards.index_here());
    match exchange(&mut live, request).await {
        Ok(response) => Ok(PooledBody::wrap(response, live, idle)),
        Err(failed) => Err(SendFailure::Send(failed.into_error().into())),
    }
}

/// Sends `request` on `live` and drives the connection (writing the request and its body,
/// reading the response) until the response headers are in.
async fn exchange(
    live: &mut Live,
    request: Request<ProxyBody>,
) -> Result<Response<Incoming>, hyper::client::conn::TrySendError<Request<ProxyBody>>> {
    let mut response = std::pin::pin!(live.sender.try_send_request(request));
    poll_fn(|cx| {
        // A connection that ends fails the response, which then says so.
        live.drive(cx);
        response.as_mut().poll(cx)
    })
    .await
}

/// A target's response body. Polling it drives the connection it comes on, which goes back to
/// the pool once the body has ended.
pub struct PooledBody {
    inner: Incoming,
    /// The connection and its pool; none for a response from hyper-util's client, or once the
    /// connection has gone back or ended.
    live: Option<(Live, Arc<IdleConnections>)>,
}

impl PooledBody {
    /// A body whose connection is not this pool's.
    pub fn unpooled(inner: Incoming) -> PooledBody {
        PooledBody { inner, live: None }
    }

    fn wrap(
        response: Response<Incoming>,
        live: Live,
        idle: &Arc<IdleConnections>,
    ) -> Response<PooledBody> {
        response.map(|inner| PooledBody {
            inner,
            live: Some((live, idle.clone())),
        })
    }

    /// The body has ended: the connection goes back to the pool once it may take the next
    /// request, at once if it can (most of the time), else from a task that drives it there.
    fn give_back(&mut self, cx: Option<&mut Context<'_>>) {
        let Some((mut live, idle)) = self.live.take() else {
            return;
        };
        let open = match cx {
            Some(cx) => live.drive(cx),
            None => live.connection.is_some(),
        };
        if !open {
            return;
        }
        if live.sender.is_ready() {
            idle.put(live);
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let ready = poll_fn(|cx| {
                if !live.drive(cx) {
                    return Poll::Ready(false);
                }
                live.sender.poll_ready(cx).map(|ready| ready.is_ok())
            });
            if let Ok(true) = tokio::time::timeout(READY_WITHIN, ready).await {
                idle.put(live);
            }
        });
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body with nothing to read (HEAD, 204, 304, `content-length: 0`) is never polled.
        // One dropped before its end takes its connection with it, which closes it.
        if self.live.is_some() && self.inner.is_end_stream() {
            self.give_back(None);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let mut polled = Pin::new(&mut this.inner).poll_frame(cx);
        if polled.is_pending()
            && let Some((live, _)) = &mut this.live
        {
            // Nothing read yet: have the connection read what the target sent (one that ends
            // fails `inner`), then look again.
            live.drive(cx);
            polled = Pin::new(&mut this.inner).poll_frame(cx);
        }
        match &polled {
            Poll::Ready(None) => this.give_back(Some(cx)),
            // Trailers are a body's last frame; a chunked body never says it has ended.
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() || this.inner.is_end_stream() => {
                this.give_back(Some(cx))
            }
            Poll::Ready(Some(Err(_))) => this.live = None,
            Poll::Ready(Some(Ok(_))) | Poll::Pending => {}
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

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use hyper_util::client::legacy::connect::HttpConnector;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A server that hands each connection to `serve` and counts them.
    async fn counting_server<F, Fut>(serve: F) -> (std::net::SocketAddr, Arc<AtomicUsize>)
    where
        F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream));
            }
        });
        (address, accepted)
    }

    /// Answers every request on the connection with `hello`.
    async fn serve_hello(stream: tokio::net::TcpStream) {
        let service = hyper::service::service_fn(|_request| async {
            Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                Bytes::from_static(b"hello"),
            )))
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
            .await;
    }

    fn request(address: std::net::SocketAddr) -> Request<ProxyBody> {
        Request::builder()
            .uri("/")
            .header(http::header::HOST, address.to_string())
            .body(
                http_body_util::Empty::new()
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
            .unwrap()
    }

    /// A connector, an empty idle list, and the target's address.
    fn pool_for(address: std::net::SocketAddr) -> (CountingConnector, Arc<IdleConnections>, Uri) {
        let connector = CountingConnector::new(HttpConnector::new(), Vec::new());
        let uri = format!("http://{address}").parse().unwrap();
        (connector, Arc::default(), uri)
    }

    /// One request through the pool, read to its end.
    async fn fetch_hello(
        connector: &CountingConnector,
        idle: &Arc<IdleConnections>,
        uri: &Uri,
        address: std::net::SocketAddr,
    ) {
        let response = send(connector, idle, uri, request(address)).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "hello");
    }

    #[tokio::test]
    async fn a_connection_goes_back_to_the_idle_list_of_the_worker_that_opened_it() {
        let metrics = crate::metrics::Metrics::new();
        let workers = crate::server::workers::Workers::start(2, &metrics).unwrap();
        let (address, accepted) = counting_server(serve_hello).await;
        let (connector, idle, uri) = pool_for(address);
        let on_worker = |index: usize| workers.handle(index).unwrap().clone();
        {
            let (connector, idle, uri) = (connector.clone(), idle.clone(), uri.clone());
            on_worker(0)
                .spawn(async move { fetch_hello(&connector, &idle, &uri, address).await })
                .await
                .unwrap();
        }
        assert_eq!(idle.len(), 1);
        // Neither another worker nor a thread of the shared runtime takes it.
        assert!(idle.take().is_none());
        let other = idle.clone();
        assert!(
            on_worker(1)
                .spawn(async move { other.take().is_none() })
                .await
                .unwrap()
        );
        // Its own worker reuses it.
        for _ in 0..3 {
            let (connector, idle, uri) = (connector.clone(), idle.clone(), uri.clone());
            on_worker(0)
                .spawn(async move { fetch_hello(&connector, &idle, &uri, address).await })
                .await
                .unwrap();
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(idle.len(), 1);
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_response_body_has_ended() {
        let (address, accepted) = counting_server(serve_hello).await;
        let (connector, idle, uri) = pool_for(address);
        for _ in 0..20 {
            fetch_hello(&connector, &idle, &uri, address).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "one connection for all");
        assert_eq!(idle.len(), 1);
    }

    #[tokio::test]
    async fn a_response_dropped_mid_body_does_not_give_its_connection_back() {
        let (address, accepted) = counting_server(serve_hello).await;
        let (connector, idle, uri) = pool_for(address);
        let unread = send(&connector, &idle, &uri, request(address))
            .await
            .unwrap();
        drop(unread);
        assert_eq!(idle.len(), 0);
        let read = send(&connector, &idle, &uri, request(address))
            .await
            .unwrap();
        read.into_body().collect().await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(idle.len(), 1);
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_failure() {
        let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = unused.local_addr().unwrap();
        drop(unused);
        let (connector, idle, uri) = pool_for(address);
        let failed = send(&connector, &idle, &uri, request(address)).await.err();
        assert!(
            matches!(failed, Some(SendFailure::Connect(_))),
            "{failed:?}"
        );
    }

    #[tokio::test]
    async fn a_connection_its_target_closed_while_idle_is_not_used() {
        let (address, accepted) = counting_server(answer_once_then_close).await;
        let (connector, idle, uri) = pool_for(address);
        for _ in 0..3 {
            fetch_hello(&connector, &idle, &uri, address).await;
            // Time for the close to arrive before the next request.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn the_sweep_drops_idle_connections_their_target_closed() {
        let (address, _) = counting_server(|mut stream| async move {
            answer_once(&mut stream).await;
            // Closed once the connection is back in the idle list.
            tokio::time::sleep(Duration::from_millis(100)).await;
        })
        .await;
        let open = prometheus::IntGauge::new("open", "open").unwrap();
        let counts = crate::proxy::counted::TargetConnections {
            authority: address.to_string().parse().unwrap(),
            open: open.clone(),
            opened: prometheus::IntCounter::new("opened", "opened").unwrap(),
        };
        let connector = CountingConnector::new(HttpConnector::new(), vec![counts]);
        let idle = Arc::new(IdleConnections::default());
        let uri: Uri = format!("http://{address}").parse().unwrap();
        fetch_hello(&connector, &idle, &uri, address).await;
        assert_eq!((idle.len(), open.get()), (1, 1));
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Closed by the target, but nobody has looked: still counted open.
        assert_eq!((idle.len(), open.get()), (1, 1));
        idle.sweep();
        assert_eq!((idle.len(), open.get()), (0, 0));
    }

    /// Answers one request with keep-alive, then closes the connection unannounced.
    async fn answer_once_then_close(mut stream: tokio::net::TcpStream) {
        answer_once(&mut stream).await;
    }

    /// Answers one request with keep-alive.
    async fn answer_once(stream: &mut tokio::net::TcpStream) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buffer = [0u8; 4096];
        let _ = stream.read(&mut buffer).await;
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
            .await;
    }

    #[tokio::test]
    async fn a_body_dropped_right_after_its_trailers_gives_its_connection_back() {
        let (address, accepted) = counting_server(|mut stream| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut buffer = [0u8; 4096];
            while let Ok(1..) = stream.read(&mut buffer).await {
                let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
                    5\r\nhello\r\n0\r\nx-check: 1\r\n\r\n";
                if stream.write_all(chunked).await.is_err() {
                    return;
                }
            }
        })
        .await;
        let (connector, idle, uri) = pool_for(address);
        for _ in 0..2 {
            let response = send(&connector, &idle, &uri, request(address))
                .await
                .unwrap();
            let mut body = response.into_body();
            let data = body.frame().await.unwrap().unwrap();
            assert_eq!(data.into_data().unwrap(), "hello");
            let trailers = body.frame().await.unwrap().unwrap();
            assert!(trailers.is_trailers());
            // As hyper's server does: the trailers were the last frame; the body is dropped.
            drop(body);
            assert_eq!(idle.len(), 1);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }
}
