//! Lingering close: a connection the gateway ends is drained before its socket is closed.
//!
//! The gateway often answers before it has read the whole request: a 413 for a body declared
//! too large, a 503 from a guest whose backend failed mid-upload, any guest that answers
//! without reading the body. hyper then ends the connection while the client may still be
//! sending. Closing a socket with unread bytes in it, or with bytes still arriving, makes the
//! kernel reset the connection instead of closing it in order, and the reset throws away what
//! the client has not received yet: it sees "connection reset" part-way through the answer.
//! RFC 9112 section 9.6 describes the cure, and nginx applies it as `lingering_close`: close
//! the sending side only, then read and discard what still comes until the client closes too.
//!
//! [`Lingering`] wraps each accepted socket, below TLS and hyper. Dropped while the client may
//! still send, it hands the socket to a small task ([`linger`]) that shuts down the sending
//! side (the client reads the answer to its end), then reads and discards until the client
//! closes, until nothing has come for [`QUIET`], or for [`AT_MOST`] in all. It does not linger
//!
//! - when a read has seen the client's end of stream (the usual end of a keep-alive
//!   connection: it closes at once, as before; on TLS, where the client's `close_notify` ends
//!   the reading first, the task finds the end at once);
//! - when a read or a write failed (the peer is gone, or `send_timeout` cut it off): lingering
//!   would not reach it;
//! - unless the connection was established ([`Switch::arm`]): a failed TLS handshake or
//!   PROXY header has no answer to protect;
//! - when the connection is cut off rather than closed ([`Switch::abort`]: dropped after the
//!   graceful close did not finish, stalled): the reset then tells the client its answer is
//!   incomplete, where an orderly close could pass a truncated answer off as whole;
//! - when [`Budget`] has no room: lingering sockets hold no connection slot, so their number
//!   is bounded on its own (by `max_connections`), and past it a socket closes at once.
//!
//! A lingering task ends with the process: connections closed by a shutdown linger only until
//! the process exits.

use prometheus::IntGauge;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// How long a lingering socket waits for the client's next bytes or its close.
pub const QUIET: Duration = Duration::from_secs(1);

/// How long a socket lingers at most, however steadily the client keeps sending.
pub const AT_MOST: Duration = Duration::from_secs(5);

/// What each lingering read takes (and throws away) at a time.
const DISCARD_BUFFER: usize = 4096;

/// How many sockets may linger at once, shared by every listener, and the gauge that shows
/// how many do (`wasmgate_connections_lingering`).
#[derive(Clone)]
pub struct Budget {
    room: Arc<Semaphore>,
    lingering: IntGauge,
}

impl Budget {
    pub fn new(sockets: usize, lingering: IntGauge) -> Budget {
        Budget {
            room: Arc::new(Semaphore::new(sockets)),
            lingering,
        }
    }

    /// A place for one more lingering socket, counted until it is dropped; none if the budget
    /// is spent.
    fn take(&self) -> Option<Place> {
        let permit = self.room.clone().try_acquire_owned().ok()?;
        self.lingering.inc();
        Some(Place {
            _permit: permit,
            lingering: self.lingering.clone(),
        })
    }
}

/// One lingering socket's share of the [`Budget`].
struct Place {
    _permit: OwnedSemaphorePermit,
    lingering: IntGauge,
}

impl Drop for Place {
    fn drop(&mut self) {
        self.lingering.dec();
    }
}

/// Whether a connection lingers when its socket is dropped, as the connection's task decides.
#[derive(Clone)]
pub struct Switch(Arc<AtomicU8>);

const UNARMED: u8 = 0;
const ARMED: u8 = 1;
const ABORTED: u8 = 2;

impl Switch {
    /// The connection is established: from now on it lingers when it ends.
    pub fn arm(&self) {
        let _ = self
            .0
            .compare_exchange(UNARMED, ARMED, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The connection is being cut off, not closed: its socket closes at once.
    pub fn abort(&self) {
        self.0.store(ABORTED, Ordering::Relaxed);
    }

    fn armed(&self) -> bool {
        self.0.load(Ordering::Relaxed) == ARMED
    }
}

/// What the socket's own reads and writes have shown of the peer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Peer {
    /// It may still be sending.
    Open,
    /// A read saw its end of stream.
    Closed,
    /// A read or write failed.
    Failed,
}

/// An accepted socket that lingers when it is dropped before the client closed its side.
pub struct Lingering<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> {
    /// Taken by the drop that hands the socket to the lingering task.
    io: Option<T>,
    peer: Peer,
    switch: Switch,
    budget: Budget,
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Lingering<T> {
    /// Wraps `io`, unarmed: it lingers only once [`Switch::arm`] is called.
    pub fn new(io: T, budget: Budget) -> Self {
        Self {
            io: Some(io),
            peer: Peer::Open,
            switch: Switch(Arc::new(AtomicU8::new(UNARMED))),
            budget,
        }
    }

    /// The switch that arms or aborts this socket's lingering.
    pub fn switch(&self) -> Switch {
        self.switch.clone()
    }

    fn io(&mut self) -> Pin<&mut T> {
        // Only `drop` takes it, so it is here while the wrapper is in use.
        Pin::new(
            self.io
                .as_mut()
                .expect("the socket is taken only when the wrapper is dropped"),
        )
    }

    /// Notes a failed read or write.
    fn watch<R>(&mut self, result: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if let Poll::Ready(Err(_)) = &result {
            self.peer = Peer::Failed;
        }
        result
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Drop for Lingering<T> {
    fn drop(&mut self) {
        if self.peer != Peer::Open || !self.switch.armed() {
            return;
        }
        let (Some(io), Some(place)) = (self.io.take(), self.budget.take()) else {
            return;
        };
        // Outside a runtime (or while it shuts down) the socket just closes.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(linger(io, place));
        }
    }
}

/// Shuts down the sending side, then reads and discards until the client closes, goes quiet
/// for [`QUIET`], or [`AT_MOST`] has passed; dropping the socket then closes it.
async fn linger<T: AsyncRead + AsyncWrite + Unpin>(mut io: T, _place: Place) {
    if io.shutdown().await.is_err() {
        return;
    }
    let give_up = Instant::now() + AT_MOST;
    let mut discard = [0u8; DISCARD_BUFFER];
    loop {
        let until = give_up.min(Instant::now() + QUIET);
        match tokio::time::timeout_at(until, io.read(&mut discard)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
            Ok(Ok(_)) => {}
        }
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncRead for Lingering<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let asked = buf.remaining() > 0;
        let result = self.io().poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && asked && buf.filled().len() == before {
            self.peer = Peer::Closed;
        }
        self.watch(result)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for Lingering<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = self.io().poll_write(cx, buf);
        self.watch(result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = self.io().poll_write_vectored(cx, bufs);
        self.watch(result)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(T::is_write_vectored)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = self.io().poll_flush(cx);
        self.watch(result)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let result = self.io().poll_shutdown(cx);
        self.watch(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::{TcpListener, TcpStream};

    /// A server socket, armed, and its client, whose receive buffer is small so that most of
    /// an answer is still in the server's send buffer when the server closes.
    async fn pair() -> (Lingering<TcpStream>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let client = socket
            .connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        // Room for the whole answer: the server's writes finish before the client reads.
        socket2::SockRef::from(&server)
            .set_send_buffer_size(1 << 20)
            .unwrap();
        let server = Lingering::new(
            server,
            Budget::new(1, IntGauge::new("lingering", "-").unwrap()),
        );
        server.switch().arm();
        (server, client)
    }

    /// The server answers without reading what the client sent, and closes; the client reads
    /// the whole answer, then an orderly end.
    async fn answer_and_close(
        mut server: Lingering<TcpStream>,
        mut client: TcpStream,
    ) -> io::Result<usize> {
        client.write_all(&[b'x'; 16 * 1024]).await.unwrap();
        // Most of the answer waits in the server's send buffer: the client does not read yet.
        let answer = vec![b'a'; 256 * 1024];
        tokio::time::timeout(Duration::from_secs(5), server.write_all(&answer))
            .await
            .expect("the answer fits the send buffer")
            .unwrap();
        drop(server);
        let mut read = Vec::new();
        client.read_to_end(&mut read).await.map(|_| read.len())
    }

    #[tokio::test]
    async fn a_close_with_unread_bytes_lets_the_client_read_the_whole_answer() {
        let (server, client) = pair().await;
        let lingering = server.budget.lingering.clone();
        let read = answer_and_close(server, client).await;
        assert_eq!(read.expect("an orderly end, no reset"), 256 * 1024);
        // Counted while it lingers (the client has not closed yet).
        assert_eq!(lingering.get(), 1);
    }

    #[tokio::test]
    async fn an_unarmed_or_aborted_socket_closes_at_once() {
        let unarmed_or_aborted: [fn(&Switch); 2] = [|_| {}, |switch| switch.abort()];
        for set in unarmed_or_aborted {
            let (server, client) = pair().await;
            let switch = server.switch();
            // Unarmed again (as a new socket is) or aborted.
            switch.0.store(UNARMED, Ordering::Relaxed);
            set(&switch);
            let read = answer_and_close(server, client).await;
            assert!(read.is_err(), "reset, not lingered: {read:?}");
        }
    }

    #[tokio::test]
    async fn with_no_budget_left_a_socket_closes_at_once() {
        let (server, client) = pair().await;
        let _taken = server.budget.take().unwrap();
        let read = answer_and_close(server, client).await;
        assert!(read.is_err(), "reset, not lingered: {read:?}");
    }

    #[tokio::test]
    async fn the_client_closing_first_needs_no_lingering() {
        let (mut server, client) = pair().await;
        drop(client);
        let mut buf = [0u8; 16];
        assert_eq!(server.read(&mut buf).await.unwrap(), 0);
        assert_eq!(server.peer, Peer::Closed);
    }
}
