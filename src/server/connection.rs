//! One client connection's life: the limits that keep idle, silent and slow peers from holding
//! the gateway's connection slots.
//!
//! Every connection is in one of two states, as the requests in flight on it say:
//!
//! * **busy**, with at least one request whose response has not been fully sent;
//! * **idle**, with none: before its first request (the protocol sniff, the HTTP/2 preface and
//!   SETTINGS, the first request's headers) or between requests (keep-alive).
//!
//! An idle connection is closed when it stays idle too long: `header_read_timeout` before its
//! first request, `idle_timeout` after that (HTTP/1.1 is also bounded by hyper's own
//! `header_read_timeout` while it waits for the next request's headers). It is also the first to
//! go when the listener is full: a new client asks for room ([`Room`]) and the connection that
//! has been idle longest closes, so sockets that send nothing cannot lock clients out however
//! many there are. A busy connection is never evicted. (Idle connections queue for eviction in
//! the order their tasks saw them idle, which for one that was busy is up to [`STALL_CHECK`]
//! after its last response: see [`drive`].)
//!
//! Closing is graceful first (HTTP/2 GOAWAY, HTTP/1.1 closes after the current response) and
//! forced [`FORCE_CLOSE_AFTER`] later. A peer that does not take what it is sent fails the
//! connection: at the socket, writes it does not read ([`SendTimeout`]); per response, a frame
//! that waits for it past `send_timeout` per 16 KiB ([`InFlightBody`]), which also catches
//! HTTP/2 clients that keep their flow-control window shut (no socket write ever waits then).

use crate::body::BoxError;
use crate::body::Observation;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper_util::server::graceful::GracefulConnection;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, futures::OwnedNotified};
use tokio::time::{Instant, Sleep};

/// How often a busy connection looks for responses its peer has stopped taking.
const STALL_CHECK: Duration = Duration::from_secs(1);

/// How long a connection asked to close may take to finish gracefully before it is dropped.
pub const FORCE_CLOSE_AFTER: Duration = Duration::from_secs(1);

/// The idle-connection limits.
#[derive(Debug, Clone, Copy)]
pub struct IdleLimits {
    /// Before the first request.
    pub first_request: Duration,
    /// Between requests.
    pub between_requests: Duration,
}

/// Where new clients ask idle connections to make room; the longest-idle connection answers.
#[derive(Default)]
pub struct Room(Arc<Notify>);

impl Room {
    /// Asks the longest-idle connection to close. With no idle connection, the next one to
    /// become idle closes.
    pub fn ask(&self) {
        self.0.notify_one();
    }

    pub(crate) fn wait(&self) -> OwnedNotified {
        self.0.clone().notified_owned()
    }
}

/// What the connection task and its requests share.
///
/// Requests start and end without waking the connection task: it looks at the counts and
/// timestamps here when one of its own timers fires. The one exception is the start of a
/// request while the task sleeps through an idle connection's deadline (`wake_on_start`): it
/// then wakes once, to watch the now busy connection's responses ([`drive`]). A connection
/// serving back-to-back keep-alive requests so costs its task no wake-up per request.
pub struct Activity {
    in_flight: AtomicUsize,
    /// Requests started so far: a request that starts and ends between two looks at
    /// `in_flight` still counts.
    started: AtomicUsize,
    /// When the latest request ended, in nanoseconds since `born` (0 before the first): with
    /// nothing in flight, when the connection became idle.
    last_end: AtomicU64,
    born: Instant,
    /// Whether the next request to start wakes the connection task.
    wake_on_start: AtomicBool,
    changed: Notify,
    /// `send_timeout`: how long the peer may take to accept each 16 KiB of a response frame.
    send_timeout: Duration,
    /// Response bodies whose last frame the peer has not taken yet, and until when it may take.
    peer_waits: Mutex<Vec<(u64, Instant)>>,
    next_body: AtomicU64,
}

/// What the connection task saw when it looked at its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// At least one response not fully sent.
    Busy,
    /// Nothing in flight since `since`; `served` says whether any request came before.
    Idle { since: Instant, served: bool },
}

impl Activity {
    pub fn new(send_timeout: Duration) -> Activity {
        Activity {
            in_flight: AtomicUsize::new(0),
            started: AtomicUsize::new(0),
            last_end: AtomicU64::new(0),
            born: Instant::now(),
            wake_on_start: AtomicBool::new(true),
            changed: Notify::new(),
            send_timeout,
            peer_waits: Mutex::new(Vec::new()),
            next_body: AtomicU64::new(0),
        }
    }

    /// Marks a request as in flight until the returned guard is dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        // SeqCst with `look`: either the task sees this request in flight, or this sees the
        // task's `wake_on_start`.
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.started.fetch_add(1, Ordering::AcqRel);
        if self.wake_on_start.load(Ordering::SeqCst)
            && self.wake_on_start.swap(false, Ordering::SeqCst)
        {
            self.changed.notify_one();
        }
        InFlight(self.clone())
    }

    /// Whether nothing is in flight, as of now.
    fn idle(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) == 0
    }

    fn started(&self) -> usize {
        self.started.load(Ordering::Acquire)
    }

    /// How the connection is now. An idle connection also asks to be told when its next
    /// request starts.
    fn look(&self) -> Seen {
        if !self.idle() {
            return Seen::Busy;
        }
        self.wake_on_start.store(true, Ordering::SeqCst);
        // A request that started before the flag was up did not wake the task: look again.
        if !self.idle() {
            return Seen::Busy;
        }
        let ended = Duration::from_nanos(self.last_end.load(Ordering::SeqCst));
        Seen::Idle {
            since: self.born + ended,
            served: self.started() > 0,
        }
    }

    /// Body `id` gave hyper a frame of `bytes` bytes: the peer must take it within
    /// `send_timeout` per [`MIN_SEND_PROGRESS`] bytes (at least one `send_timeout`).
    fn wait_for_peer(&self, id: u64, bytes: usize) {
        let chunks = u32::try_from(bytes.div_ceil(MIN_SEND_PROGRESS).max(1)).unwrap_or(u32::MAX);
        let allowed = self
            .send_timeout
            .checked_mul(chunks)
            .unwrap_or(Duration::from_secs(365 * 24 * 3600));
        self.peer_waits
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((id, Instant::now() + allowed));
    }

    /// Body `id` was asked for its next frame (so the last one was taken), or is gone.
    fn peer_took(&self, id: u64) {
        self.peer_waits
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(waiting, _)| *waiting != id);
    }

    /// Whether a response has waited for the peer past its allowance: an HTTP/2 client that
    /// keeps its flow-control window shut, or an HTTP/1.1 client that stopped reading.
    fn stalled(&self) -> bool {
        let now = Instant::now();
        self.peer_waits
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .any(|(_, deadline)| *deadline <= now)
    }
}

/// A request in flight on a connection; see [`Activity::start`].
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        // Stamped before the count drops, so whoever sees the connection idle sees when it
        // became so.
        let ended = u64::try_from(activity.born.elapsed().as_nanos()).unwrap_or(u64::MAX);
        activity.last_end.fetch_max(ended, Ordering::SeqCst);
        activity.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its request in flight until hyper has sent it or dropped it, and
/// tells the connection how long each frame waits for the peer to take it.
///
/// hyper asks for the next frame only once the last one is on its way: over HTTP/1.1 once the
/// socket took it, over HTTP/2 once the stream's flow-control window let it go. So a frame that
/// hyper has not come back for means the peer is not taking data, and a wait past the
/// allowance ([`Activity::wait_for_peer`]) fails the connection ([`drive`]), freeing the
/// instances its requests hold. A guest that is slow to write does not count: the body is then
/// being asked and has nothing yet.
pub struct InFlightBody<B> {
    inner: B,
    in_flight: InFlight,
    id: u64,
    waiting: bool,
    /// Recorded in the metrics when the body ends: here rather than in a wrapper of its own,
    /// which would box every streamed response once more.
    observation: Option<Observation>,
}

impl<B> InFlightBody<B> {
    pub fn new(inner: B, in_flight: InFlight, observation: Option<Observation>) -> InFlightBody<B> {
        let id = in_flight.0.next_body.fetch_add(1, Ordering::Relaxed);
        InFlightBody {
            inner,
            in_flight,
            id,
            waiting: false,
            observation,
        }
    }

    /// The body ended (sent, failed, or dropped): the request is recorded.
    fn ended(&mut self) {
        if let Some(observation) = self.observation.take() {
            observation.record();
        }
    }
}

impl<B> Drop for InFlightBody<B> {
    fn drop(&mut self) {
        if self.waiting {
            self.in_flight.0.peer_took(self.id);
        }
        self.ended();
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for InFlightBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        if this.waiting {
            this.in_flight.0.peer_took(this.id);
            this.waiting = false;
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                let bytes = frame.data_ref().map_or(0, Bytes::len);
                this.in_flight.0.wait_for_peer(this.id, bytes);
                this.waiting = true;
                if this.inner.is_end_stream() {
                    this.ended();
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.ended(),
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

/// Why a connection was asked to close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Idle past its limit.
    Idle,
    /// Evicted to make room for a new client.
    Room,
    /// The gateway is shutting down.
    Shutdown,
    /// A response waited for the peer to take it past `send_timeout` per 16 KiB.
    Stalled,
}

impl CloseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Idle => "idle",
            CloseReason::Room => "room",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Stalled => "stalled",
        }
    }
}

/// A connection being served, as [`drive`] sees it: a future that can be asked to close.
///
/// A trait object, made where the connection's concrete type is known: generic code over
/// hyper-util's connection bounds inside an `async fn` trips the compiler's higher-ranked
/// lifetime checks when the future is spawned.
pub trait Serving: Future<Output = Result<(), BoxError>> + Send {
    fn close_gracefully(self: Pin<&mut Self>);
}

impl<C> Serving for C
where
    C: GracefulConnection<Error = BoxError> + Send,
{
    fn close_gracefully(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// How a connection ended.
pub enum Ending<T> {
    /// It ran to its end (by itself, or after being asked to close).
    Finished(T),
    /// It was asked to close and did not within [`FORCE_CLOSE_AFTER`]; it was dropped.
    Dropped,
}

/// Drives `connection` to its end, closing it gracefully when it idles too long,
/// when a new client needs room, or when `shutdown` turns true. Returns how it ended and why it
/// was asked to close, if it was.
///
/// The task sleeps between looks at the connection ([`Activity`]): while idle, until its idle
/// deadline or its next request's start; while busy, for [`STALL_CHECK`] at a time, looking
/// for stalled responses. Requests that come and go meanwhile cost it nothing.
pub async fn drive(
    connection: &mut Pin<Box<dyn Serving>>,
    activity: Arc<Activity>,
    limits: IdleLimits,
    room: &Room,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> (Ending<Result<(), BoxError>>, Option<CloseReason>) {
    let mut close: Option<CloseReason> = None;
    let mut ask_to_close: Option<CloseReason> = None;
    // While open: when it will have idled too long (none while busy). Once asked to close: when
    // it is dropped if it has not closed (none for a shutdown, which has its own grace period).
    let mut deadline: Option<Instant> = None;
    // Queued for eviction, with the requests started when it queued: one started since means
    // the connection has not been idle all that time.
    let mut room_wait: Option<(Pin<Box<OwnedNotified>>, usize)> = None;
    // As last seen: busy connections are looked at every STALL_CHECK (and nothing else wakes
    // the task when they turn idle).
    let mut busy = false;
    let timer = std::pin::pin!(tokio::time::sleep(limits.first_request));
    let mut timer: Pin<&mut Sleep> = timer;
    let stall_check = std::pin::pin!(tokio::time::sleep(STALL_CHECK));
    let mut stall_check: Pin<&mut Sleep> = stall_check;
    loop {
        if let Some(reason) = ask_to_close.take() {
            close = Some(reason);
            room_wait = None;
            deadline = match reason {
                CloseReason::Shutdown => None,
                CloseReason::Idle | CloseReason::Room | CloseReason::Stalled => {
                    Some(Instant::now() + FORCE_CLOSE_AFTER)
                }
            };
            connection.as_mut().close_gracefully();
        }
        if close.is_none() {
            match activity.look() {
                Seen::Busy => {
                    busy = true;
                    deadline = None;
                    // Busy connections leave the eviction queue; it comes back when idle.
                    room_wait = None;
                }
                Seen::Idle { since, served } => {
                    busy = false;
                    let limit = if served {
                        limits.between_requests
                    } else {
                        limits.first_request
                    };
                    let due = since + limit;
                    if due <= Instant::now() {
                        ask_to_close = Some(CloseReason::Idle);
                        continue;
                    }
                    deadline = Some(due);
                    if room_wait.is_none() {
                        // Queue for eviction, in the order connections became idle.
                        room_wait = Some((Box::pin(room.wait()), activity.started()));
                    }
                }
            }
        }
        if let Some(deadline) = deadline {
            timer.as_mut().reset(deadline);
        }
        tokio::select! {
            output = connection.as_mut() => return (Ending::Finished(output), close),
            // A request started on an idle connection: look again.
            _ = activity.changed.notified() => {}
            _ = timer.as_mut(), if deadline.is_some() => {
                if close.is_some() {
                    return (Ending::Dropped, close);
                }
                // Open: the next look tells whether it is still idle, and since when.
            }
            _ = async { if let Some((wait, _)) = room_wait.as_mut() { wait.await } }, if room_wait.is_some() && close.is_none() => {
                let queued_with = room_wait.take().map_or(0, |(_, started)| started);
                let started = activity.started();
                if activity.idle() && started == 0 {
                    // Not one request yet (silent, or mid-handshake): nothing to finish.
                    return (Ending::Dropped, Some(CloseReason::Room));
                } else if activity.idle() && started == queued_with {
                    ask_to_close = Some(CloseReason::Room);
                } else {
                    // Busy, or busy since it queued: not the longest idle. Pass the request for
                    // room on; it queues again at the back once seen idle.
                    room.ask();
                }
            }
            _ = shutdown.changed(), if close.is_none() => ask_to_close = Some(CloseReason::Shutdown),
            _ = stall_check.as_mut(), if busy || close.is_some() => {
                if activity.stalled() {
                    // Nothing the peer would take can finish gracefully: drop it now.
                    return (Ending::Dropped, Some(CloseReason::Stalled));
                }
                stall_check.as_mut().reset(Instant::now() + STALL_CHECK);
            }
        }
    }
}

/// Fails the connection when the peer, once it has made a write wait, does not take
/// [`MIN_SEND_PROGRESS`] bytes within `timeout`: a client that stops reading its response, or
/// reads a few bytes now and then (slow read), cannot hold the connection and the instance
/// streaming to it for longer than that.
pub struct SendTimeout<T> {
    inner: T,
    timeout: Duration,
    /// Running from the first write that had to wait until the peer has taken
    /// `MIN_SEND_PROGRESS` bytes.
    waiting: Option<Pin<Box<Sleep>>>,
    /// Bytes written since `waiting` started.
    progress: usize,
    /// Whether the last write had to wait.
    blocked: bool,
}

/// How much a slow peer must read per `send_timeout` to keep its connection: 16 KiB (about
/// 550 bytes/s at the default 30 s).
pub const MIN_SEND_PROGRESS: usize = 16 << 10;

impl<T> SendTimeout<T> {
    pub fn new(inner: T, timeout: Duration) -> SendTimeout<T> {
        SendTimeout {
            inner,
            timeout,
            waiting: None,
            progress: 0,
            blocked: false,
        }
    }

    /// After the inner write took `written` bytes and returned
    /// `result`: start, extend or end the window, or fail the connection.
    fn check<R>(
        &mut self,
        cx: &mut Context<'_>,
        written: usize,
        result: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        let was_blocked = std::mem::replace(&mut self.blocked, result.is_pending());
        let expired = self
            .waiting
            .as_ref()
            .is_some_and(|sleep| sleep.is_elapsed());
        if result.is_ready() {
            if self.waiting.is_none() {
                return result;
            }
            self.progress = self.progress.saturating_add(written);
            if self.progress >= MIN_SEND_PROGRESS || (expired && !was_blocked) {
                // The peer kept up, or the window is left over from before an idle time.
                self.waiting = None;
                self.progress = 0;
            } else if expired {
                return too_slow();
            }
            return result;
        }
        if expired {
            if self.progress < MIN_SEND_PROGRESS {
                return too_slow();
            }
            self.waiting = None;
            self.progress = 0;
        }
        let timeout = self.timeout;
        let waiting = self
            .waiting
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match waiting.as_mut().poll(cx) {
            Poll::Ready(()) if self.progress < MIN_SEND_PROGRESS => too_slow(),
            _ => Poll::Pending,
        }
    }
}

fn too_slow<R>() -> Poll<io::Result<R>> {
    Poll::Ready(Err(io::Error::new(
        io::ErrorKind::TimedOut,
        "the client did not read enough of the response within send_timeout",
    )))
}

impl<T: AsyncRead + Unpin> AsyncRead for SendTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SendTimeout<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        let written = written(&result);
        self.check(cx, written, result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        let written = written(&result);
        self.check(cx, written, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A socket's flush does not wait for the peer; only writes count.
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn written(result: &Poll<io::Result<usize>>) -> usize {
    match result {
        Poll::Ready(Ok(n)) => *n,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt as _;

    fn woken(activity: &Activity) -> bool {
        activity.changed.notified().now_or_never().is_some()
    }

    /// A connection that serves nothing and ends as soon as it is asked to close.
    #[derive(Default)]
    struct Closable {
        asked: bool,
        waker: Option<std::task::Waker>,
    }

    impl Future for Closable {
        type Output = Result<(), BoxError>;

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
            if self.asked {
                return Poll::Ready(Ok(()));
            }
            self.waker = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    impl Serving for Closable {
        fn close_gracefully(mut self: Pin<&mut Self>) {
            self.asked = true;
            if let Some(waker) = self.waker.take() {
                waker.wake();
            }
        }
    }

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    /// A queued first, B second; then A serves a request, and a new client asks for room
    /// before A's task has looked again. A has not been idle all that time, so it passes the
    /// request on, and B, idle longest, closes.
    #[tokio::test(start_paused = true)]
    async fn a_connection_busy_since_it_queued_passes_the_eviction_on() {
        let room = Arc::new(Room::default());
        let limits = IdleLimits {
            first_request: Duration::from_secs(60),
            between_requests: Duration::from_secs(60),
        };
        let (_shutdown, shutdown) = tokio::sync::watch::channel(false);
        let serve = |activity: Arc<Activity>| {
            let room = room.clone();
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                let mut connection: Pin<Box<dyn Serving>> = Box::pin(Closable::default());
                drive(&mut connection, activity, limits, &room, shutdown)
                    .await
                    .1
            })
        };
        let a = Arc::new(Activity::new(Duration::from_secs(30)));
        let b = Arc::new(Activity::new(Duration::from_secs(30)));
        drop(a.start());
        let a_task = serve(a.clone());
        settle().await;
        drop(b.start());
        let b_task = serve(b.clone());
        settle().await;
        drop(a.start());
        room.ask();
        assert_eq!(b_task.await.unwrap(), Some(CloseReason::Room));
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!a_task.is_finished(), "A served a request after B's last");
    }

    #[test]
    fn a_request_wakes_the_task_only_on_a_connection_it_last_saw_idle() {
        let activity = Arc::new(Activity::new(Duration::from_secs(30)));
        let born = Instant::now();
        assert!(matches!(activity.look(), Seen::Idle { served: false, since } if since <= born));
        let first = activity.start();
        assert!(woken(&activity), "the first request wakes the task");
        assert_eq!(activity.look(), Seen::Busy);
        // Seen busy: requests come and go without waking it.
        let second = activity.start();
        drop(first);
        let ended = Instant::now();
        drop(second);
        assert!(!woken(&activity));
        let third = activity.start();
        assert!(!woken(&activity));
        drop(third);
        match activity.look() {
            Seen::Idle { since, served } => {
                assert!(served);
                assert!(since >= ended, "idle since the last request ended");
                assert!(since <= Instant::now());
            }
            Seen::Busy => panic!("nothing is in flight"),
        }
        // Seen idle: the next request wakes it again.
        let fourth = activity.start();
        assert!(woken(&activity));
        drop(fourth);
    }
}
