//! The listeners: a socket each, accepting connections into the slots they share, and the
//! stages every connection goes through before its first request.
//!
//! A connection is **established** within `header_read_timeout`: the PROXY protocol header on
//! listeners that take one (`proxy_protocol`), then the TLS handshake on TLS listeners. While
//! it is being established it holds a connection slot and is idle, so a new client at
//! `max_connections` may evict it like any idle connection ([`Room`]); a shutdown drops it.
//! Then hyper serves it: HTTP/1.1 or HTTP/2 as ALPN chose on TLS, either by sniffing on
//! cleartext, with the limits of [`connection`](super::connection).

use super::connection::{
    self, Activity, CloseReason, Ending, IdleLimits, InFlightBody, Room, SendTimeout, Serving,
};
use super::linger::{self, Lingering};
use super::proxy_protocol::{self, ProxyHeaderError};
use super::workers::Scheduler;
use crate::config::{ListenerConfig, redirect_target};
use crate::connection_info::{ConnectionInfo, Redirect, Scheme};
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::tls::{HandshakeFailure, ListenerTls, TlsListeners};
use anyhow::Context;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

/// One bound listener.
pub struct Listener {
    socket: TcpListener,
    setup: Arc<ListenerSetup>,
}

/// What a listener's connections need to know about it.
struct ListenerSetup {
    name: Arc<str>,
    scheme: Scheme,
    proxy_protocol: bool,
    tls: Option<Arc<ListenerTls>>,
    redirect: Option<Arc<Redirect>>,
}

impl Listener {
    /// Binds `config`'s address; a TLS listener's certificates come from `tls`.
    pub async fn bind(config: &ListenerConfig, tls: &TlsListeners) -> anyhow::Result<Listener> {
        let socket = TcpListener::bind(config.address).await.with_context(|| {
            format!(
                "cannot listen on {} ([[listener]] `{}`)",
                config.address, config.name
            )
        })?;
        let redirect = match &config.http_redirect {
            Some(text) => Some(Arc::new(redirect_target(text)?)),
            None => None,
        };
        Ok(Listener {
            socket,
            setup: Arc::new(ListenerSetup {
                name: config.name.as_str().into(),
                scheme: if config.tls.is_some() {
                    Scheme::Https
                } else {
                    Scheme::Http
                },
                proxy_protocol: config.proxy_protocol,
                tls: tls.listener(&config.name),
                redirect,
            }),
        })
    }

    /// `https://127.0.0.1:8443 [name]`, for the start-up line.
    pub fn describe(&self) -> anyhow::Result<String> {
        Ok(format!(
            "{}://{} [{}]",
            self.setup.scheme.as_str(),
            self.socket.local_addr()?,
            self.setup.name
        ))
    }
}

/// What every connection of every listener shares.
pub struct Connections {
    pub gateway: Arc<Gateway>,
    pub metrics: Arc<Metrics>,
    pub builders: Builders,
    pub slots: Arc<Semaphore>,
    pub room: Room,
    pub idle: IdleLimits,
    pub send_timeout: Duration,
    /// Room for the sockets that linger after their connection ended.
    pub lingering: linger::Budget,
    /// `[server] send_buffer`: `SO_SNDBUF` of each connection, 0 for the kernel's default.
    pub send_buffer: usize,
    /// Turns true when the gateway shuts down. Every connection task holds a receiver, so the
    /// sender sees them all gone once every connection has closed.
    pub shutdown: watch::Receiver<bool>,
    /// Where connections run (`[server] scheduler`).
    pub scheduler: Scheduler,
}

/// hyper's connection builders: the auto-detecting one for cleartext, one per protocol for
/// TLS, where ALPN has chosen.
pub struct Builders {
    pub auto: auto::Builder<TokioExecutor>,
    pub http1: auto::Builder<TokioExecutor>,
    pub http2: auto::Builder<TokioExecutor>,
}

/// Accepts connections on `listener` until `stop` turns true.
pub async fn accept_loop(
    listener: Listener,
    connections: Arc<Connections>,
    mut stop: watch::Receiver<bool>,
) {
    let open = connections.metrics.connections_open(&listener.setup.name);
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.socket.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(listener = %listener.setup.name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let slot = match connections.slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                connections.room.ask();
                tokio::select! {
                    _ = stop.changed() => break,
                    slot = connections.slots.clone().acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => break,
                    },
                }
            }
        };
        let _ = stream.set_nodelay(true);
        if connections.send_buffer > 0 {
            // A bounded buffer makes a slow reader's writes wait early, so send_timeout applies.
            let _ = socket2::SockRef::from(&stream).set_send_buffer_size(connections.send_buffer);
        }
        let setup = listener.setup.clone();
        let all = connections.clone();
        let mut counted = Counted::new(
            open.clone(),
            connections.metrics.clone(),
            setup.name.clone(),
        );
        connections
            .scheduler
            .spawn(stream, move |stream| async move {
                counted.closed = serve(stream, peer, &setup, &all).await;
                drop(slot);
                drop(counted);
            });
    }
}

/// A connection on `wasmgate_connections_open` from its accept, and on
/// `wasmgate_connections_closed_total` once it ends: with how it ended, or as an error when it
/// never got to be served (its hand-over to a worker failed).
struct Counted {
    open: prometheus::IntGauge,
    metrics: Arc<Metrics>,
    listener: Arc<str>,
    closed: Closed,
}

impl Counted {
    fn new(open: prometheus::IntGauge, metrics: Arc<Metrics>, listener: Arc<str>) -> Counted {
        open.inc();
        Counted {
            open,
            metrics,
            listener,
            closed: Closed::Error,
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.open.dec();
        self.metrics
            .connection_closed(&self.listener, self.closed.as_str());
    }
}

/// An accepted socket: it lingers when the gateway closes it ([`linger`]), and its writes are
/// bounded by `send_timeout`.
type Socket = Lingering<SendTimeout<TcpStream>>;

/// A connection once established, before hyper serves it.
enum Io {
    Plain(Socket),
    Tls(Box<tokio_rustls::server::TlsStream<Socket>>),
}

/// Why a connection was not established.
#[derive(Debug, thiserror::Error)]
enum NotEstablished {
    #[error("{0}")]
    ProxyHeader(#[from] ProxyHeaderError),
    #[error("TLS handshake failed: {}", .0.as_str())]
    Tls(HandshakeFailure),
}

/// How a connection ended, as `wasmgate_connections_closed_total` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closed {
    /// The client closed it, or HTTP did (an HTTP/1.1 exchange that ends the connection).
    Finished,
    /// A protocol or socket error, `send_timeout` included.
    Error,
    /// The PROXY header or the TLS handshake failed or timed out.
    NotEstablished,
    /// The gateway asked it to close.
    Asked(CloseReason),
}

impl Closed {
    fn as_str(self) -> &'static str {
        match self {
            Closed::Finished => "finished",
            Closed::Error => "error",
            Closed::NotEstablished => "not_established",
            Closed::Asked(reason) => reason.as_str(),
        }
    }
}

/// Establishes and serves one connection to its end; says how it ended.
async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    setup: &ListenerSetup,
    all: &Connections,
) -> Closed {
    let mut shutdown = all.shutdown.clone();
    let io = Lingering::new(
        SendTimeout::new(stream, all.send_timeout),
        all.lingering.clone(),
    );
    let linger = io.switch();
    let established = tokio::select! {
        result = tokio::time::timeout(all.idle.first_request, establish(io, peer, setup, &all.gateway)) => result,
        // Idle until established: the first to make room for a new client.
        _ = all.room.wait() => return Closed::Asked(CloseReason::Room),
        _ = shutdown.changed() => return Closed::Asked(CloseReason::Shutdown),
    };
    let (io, info) = match established {
        Ok(Ok(established)) => {
            linger.arm();
            established
        }
        Ok(Err(failure)) => {
            if let NotEstablished::Tls(reason) = &failure {
                all.metrics.tls_handshake_failed(*reason);
            }
            tracing::debug!(listener = %setup.name, peer = %peer, error = %failure, "connection not established");
            return Closed::NotEstablished;
        }
        Err(_) => {
            if setup.tls.is_some() {
                all.metrics.tls_handshake_failed(HandshakeFailure::Timeout);
            }
            tracing::debug!(listener = %setup.name, peer = %peer, "connection not established within header_read_timeout");
            return Closed::NotEstablished;
        }
    };
    let info = Arc::new(info);
    let activity = Arc::new(Activity::new(all.send_timeout));
    let service = {
        let gateway = all.gateway.clone();
        let activity = activity.clone();
        service_fn(move |mut request: http::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(info.clone());
            let gateway = gateway.clone();
            let in_flight = activity.start();
            async move {
                let (response, observation) = gateway.handle_observed(request).await;
                Ok::<_, Infallible>(
                    response.map(|body| InFlightBody::new(body, in_flight, observation)),
                )
            }
        })
    };
    let mut connection: Pin<Box<dyn Serving>> = match io {
        Io::Plain(io) => Box::pin(
            all.builders
                .auto
                .serve_connection_with_upgrades(TokioIo::new(io), service)
                .into_owned(),
        ),
        Io::Tls(stream) => {
            let builder = if stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                &all.builders.http2
            } else {
                &all.builders.http1
            };
            Box::pin(
                builder
                    .serve_connection_with_upgrades(TokioIo::new(*stream), service)
                    .into_owned(),
            )
        }
    };
    let (ending, closed) =
        connection::drive(&mut connection, activity, all.idle, &all.room, shutdown).await;
    if let Ending::Dropped = ending {
        // Cut off, not closed: the client must see a reset, not an orderly end.
        linger.abort();
    }
    drop(connection);
    let asked = closed.map(CloseReason::as_str);
    let by_itself = match ending {
        Ending::Finished(Ok(())) => Closed::Finished,
        Ending::Finished(Err(e)) => {
            tracing::debug!(peer = %peer, error = %e, closed = asked, "connection ended with an error");
            Closed::Error
        }
        Ending::Dropped => {
            tracing::debug!(peer = %peer, closed = asked, "connection did not close in time; dropped");
            Closed::Error
        }
    };
    closed.map_or(by_itself, Closed::Asked)
}

/// The PROXY header, then the TLS handshake, as the listener asks.
async fn establish(
    mut io: Socket,
    peer: SocketAddr,
    setup: &ListenerSetup,
    gateway: &Gateway,
) -> Result<(Io, ConnectionInfo), NotEstablished> {
    let mut client = peer;
    if setup.proxy_protocol {
        if !gateway.generation().client.trusts(peer.ip()) {
            return Err(ProxyHeaderError::UntrustedPeer.into());
        }
        if let Some(address) = proxy_protocol::read_header(&mut io).await? {
            client = address;
        }
    }
    let mut info = ConnectionInfo {
        listener: setup.name.clone(),
        scheme: setup.scheme,
        peer,
        client,
        tls: None,
        redirect: setup.redirect.clone(),
    };
    match &setup.tls {
        None => Ok((Io::Plain(io), info)),
        Some(tls) => {
            let (stream, tls_info) = tls.accept(io).await.map_err(NotEstablished::Tls)?;
            info.tls = Some(tls_info);
            Ok((Io::Tls(Box::new(stream)), info))
        }
    }
}
