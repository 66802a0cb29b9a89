//! The pooled client a route's components send their outgoing HTTP requests on.
//!
//! Each component route has one hyper-util client per worker thread (`[server] scheduler`),
//! shared by all the requests and instances of the route on that worker: connections stay open
//! between requests (keep-alive), `https://` hosts speak HTTP/2 or
//! HTTP/1.1 by ALPN, and TLS trusts the public (webpki) roots, the system's roots and the
//! operator's `[server] outbound_ca`.
//!
//! The allow-list's address rules (see `outbound_http`) live in the client's connector
//! ([`PolicyConnector`]): a new connection is made only after the connector has resolved the
//! host itself, checked every address, connected to a checked one and checked the peer again.
//! A pooled connection was checked when it was made, against the same rules: pools are per
//! route, and a host's grants depend only on the route's rules and the request's scheme, host
//! and port, which are the pool's key. Whether a request may go out at all (a rule matches it)
//! is decided before it reaches the client, for every request.

use super::outbound_http::{Allowlist, Decision, Refusal as ConnectRefused, decide};
use crate::config::Config;
use crate::server::workers::PerWorker;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::error::Error as _;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use wasmtime_wasi_http::{Error, WasiBody};

/// How long connecting to a host may take (resolving included).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long an idle pooled connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// One route's client: its allow-list and its connection pool.
pub struct OutboundClient {
    pub allowlist: Arc<Allowlist>,
    /// A pool for each worker thread (`crate::server::workers`): a connection serves the
    /// requests of the worker whose event loop it is on.
    clients: PerWorker<Client<HttpsConnector<PolicyConnector>, WasiBody>>,
}

impl OutboundClient {
    /// A client for a route with `allowlist`, trusting `tls`'s roots.
    pub fn new(allowlist: Arc<Allowlist>, tls: rustls::ClientConfig) -> OutboundClient {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_all_versions()
            .wrap_connector(PolicyConnector {
                allowlist: allowlist.clone(),
            });
        let clients = PerWorker::new(|_| {
            Client::builder(TokioExecutor::new())
                .pool_idle_timeout(IDLE_TIMEOUT)
                // Without a timer the pool drops an idle connection only when its host is
                // asked for again.
                .pool_timer(TokioTimer::new())
                .build(connector.clone())
        });
        OutboundClient { allowlist, clients }
    }

    /// Sends `request` (absolute URI), on a pooled connection or a new, checked one.
    pub async fn send(
        &self,
        request: http::Request<WasiBody>,
    ) -> Result<http::Response<hyper::body::Incoming>, Failure> {
        let https = request.uri().scheme() == Some(&http::uri::Scheme::HTTPS);
        self.clients
            .here()
            .request(request)
            .await
            .map_err(|error| failure(error, https))
    }
}

/// Why a request got no response.
pub enum Failure {
    /// The connector refused every address the host resolved to (logged and counted as
    /// denied by the caller, which knows the request).
    Refused(ConnectRefused),
    /// The network, TLS or the peer failed.
    Failed(Error),
}

/// What a failed request's error chain says, the most telling cause first: the connector's
/// own error, then TLS's, then hyper's, then an I/O error. The policy connector reports all of
/// its failures as [`ConnectError`], so any other failure to connect an `https` request is the
/// TLS handshake's (a peer that closes instead of answering it, say).
fn failure(error: hyper_util::client::legacy::Error, https: bool) -> Failure {
    let mut chain: Vec<&(dyn std::error::Error + 'static)> = Vec::new();
    let mut source = error.source();
    while let Some(cause) = source {
        chain.push(cause);
        source = cause.source();
    }
    // I/O errors may carry TLS's error, wrapped more than once, without naming it as their
    // source.
    let tls = chain.iter().find_map(|cause| {
        let mut cause: &(dyn std::error::Error + 'static) = *cause;
        loop {
            if let Some(tls) = cause.downcast_ref::<rustls::Error>() {
                return Some(tls);
            }
            let inner = cause.downcast_ref::<std::io::Error>()?.get_ref()?;
            cause = inner;
        }
    });
    if let Some(connect) = chain.iter().find_map(|c| c.downcast_ref::<ConnectError>()) {
        return match connect {
            ConnectError::Refused(refused) => Failure::Refused(*refused),
            ConnectError::Failed(failed) => Failure::Failed(failed.to_error()),
        };
    }
    if let Some(tls) = tls {
        return Failure::Failed(match tls {
            rustls::Error::InvalidCertificate(_) => Error::TlsCertificateError,
            rustls::Error::AlertReceived(alert) => Error::TlsAlertReceived {
                alert_id: Some(u8::from(*alert)),
                alert_message: Some(format!("{alert:?}")),
            },
            _ => Error::TlsProtocolError,
        });
    }
    if let Some(hyper) = chain.iter().find_map(|c| c.downcast_ref::<hyper::Error>()) {
        return Failure::Failed(if hyper.is_timeout() {
            Error::ConnectionReadTimeout
        } else if hyper.is_incomplete_message() {
            Error::HttpResponseIncomplete
        } else if hyper.is_closed() || hyper.is_canceled() {
            Error::ConnectionTerminated
        } else {
            Error::HttpProtocolError
        });
    }
    if let Some(io) = chain
        .iter()
        .find_map(|c| c.downcast_ref::<std::io::Error>())
    {
        let io = std::io::Error::new(io.kind(), io.to_string());
        return Failure::Failed(if https && error.is_connect() {
            Error::Tls(io)
        } else {
            Error::Connect(io)
        });
    }
    Failure::Failed(if error.is_connect() {
        Error::ConnectionRefused
    } else {
        Error::HttpProtocolError
    })
}

/// The TLS settings guests' requests use: the webpki roots, the system's roots (read once, when
/// the process starts) and `[server] outbound_ca` (read when the generation is built).
pub fn tls_config(config: &Config) -> anyhow::Result<rustls::ClientConfig> {
    let ca = config
        .server
        .outbound_ca
        .as_ref()
        .map(|ca| config.resolve(ca));
    let roots = crate::tls::certs::client_roots(ca.as_deref(), "[server] outbound_ca")?;
    crate::tls::certs::client_config(roots)
}

/// The client's connector: resolves, checks and connects as the module docs say.
#[derive(Clone)]
struct PolicyConnector {
    allowlist: Arc<Allowlist>,
}

/// Why the connector made no connection.
#[derive(Debug)]
enum ConnectError {
    Refused(ConnectRefused),
    Failed(ConnectFailed),
}

/// A connection that the rules allowed but the network did not make.
#[derive(Debug)]
enum ConnectFailed {
    DnsTimeout,
    DnsError(String),
    Timeout,
    Io(std::io::Error),
    UriInvalid,
    /// A request that no rule allows (the caller checks before sending; this is a second look).
    Denied,
}

impl ConnectFailed {
    fn to_error(&self) -> Error {
        match self {
            ConnectFailed::DnsTimeout => Error::DnsTimeout,
            ConnectFailed::DnsError(what) => Error::DnsError {
                rcode: Some(what.clone()),
                info_code: None,
            },
            ConnectFailed::Timeout => Error::ConnectionTimeout,
            ConnectFailed::Io(io) => Error::Connect(std::io::Error::new(io.kind(), io.to_string())),
            ConnectFailed::UriInvalid => Error::HttpRequestUriInvalid,
            ConnectFailed::Denied => Error::HttpRequestDenied,
        }
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Refused(refused) => {
                write!(f, "refused by the route's rules: {refused:?}")
            }
            ConnectError::Failed(failed) => write!(f, "could not connect: {failed:?}"),
        }
    }
}

impl std::error::Error for ConnectError {}

impl tower::Service<http::Uri> for PolicyConnector {
    type Response = TokioIo<TcpStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let allowlist = self.allowlist.clone();
        Box::pin(async move {
            let grants = match decide(&allowlist.rules, &uri) {
                Decision::Network(grants) => grants,
                Decision::Denied | Decision::SelfCall => {
                    return Err(ConnectError::Failed(ConnectFailed::Denied));
                }
            };
            let https = uri.scheme() == Some(&http::uri::Scheme::HTTPS);
            let host = uri
                .host()
                .ok_or(ConnectError::Failed(ConnectFailed::UriInvalid))?;
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            let stream = super::outbound_http::connect_checked(
                &allowlist,
                &grants,
                host,
                port,
                CONNECT_TIMEOUT,
            )
            .await
            .map_err(|e| match e {
                super::outbound_http::ConnectOutcome::Refused(refused) => {
                    ConnectError::Refused(refused)
                }
                super::outbound_http::ConnectOutcome::DnsTimeout => {
                    ConnectError::Failed(ConnectFailed::DnsTimeout)
                }
                super::outbound_http::ConnectOutcome::DnsError(what) => {
                    ConnectError::Failed(ConnectFailed::DnsError(what))
                }
                super::outbound_http::ConnectOutcome::Timeout => {
                    ConnectError::Failed(ConnectFailed::Timeout)
                }
                super::outbound_http::ConnectOutcome::Io(io) => {
                    ConnectError::Failed(ConnectFailed::Io(io))
                }
            })?;
            let _ = stream.set_nodelay(true);
            Ok(TokioIo::new(stream))
        })
    }
}
