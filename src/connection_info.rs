//! What the gateway knows about the connection a request came on, for the request path.
//!
//! The server makes one [`ConnectionInfo`] per connection (after the TLS handshake and any
//! PROXY protocol header) and puts it in every request's extensions; the request stages read it
//! to choose routes by listener, to tell guests the scheme and the client's address, and to log.

use std::net::SocketAddr;
use std::sync::Arc;

/// The scheme a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

/// One connection, as the request path sees it.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// The listener's name (`[[listener]] name`, or `default`).
    pub listener: Arc<str>,
    pub scheme: Scheme,
    /// The TCP peer: a client, or a proxy or load balancer in front of the gateway.
    pub peer: SocketAddr,
    /// The client, as a PROXY protocol header from a trusted peer says; else the peer.
    pub client: SocketAddr,
    /// TLS details, on TLS listeners.
    pub tls: Option<TlsInfo>,
    /// On a cleartext listener with `http_redirect`: where requests no route on the listener
    /// serves are sent.
    pub redirect: Option<Arc<Redirect>>,
}

/// An `http_redirect` target: the scheme and port requests are sent to, with their own host,
/// path and query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    pub scheme: Scheme,
    /// `None`: the scheme's default port.
    pub port: Option<u16>,
}

impl Redirect {
    /// The `Location` for a request to `host` (normalised as the request guards do it: no
    /// port, IPv6 in brackets) and `path_and_query`.
    pub fn location(&self, host: &str, path_and_query: &str) -> String {
        match self.port {
            Some(port) => format!("{}://{host}:{port}{path_and_query}", self.scheme.as_str()),
            None => format!("{}://{host}{path_and_query}", self.scheme.as_str()),
        }
    }
}

/// What the TLS handshake settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: &'static str,
    /// The name the client asked for (SNI), if any.
    pub server_name: Option<String>,
    /// The client's verified certificate (mTLS), if it sent one.
    pub client_cert: Option<ClientCert>,
}

/// The identity in a verified client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    /// The subject's distinguished name, RFC 4514 style (`CN=client,O=Example`).
    pub subject: String,
    /// The subject alternative names: DNS names, IP addresses, URIs and e-mail addresses.
    pub san: Vec<String>,
}

impl ConnectionInfo {
    /// A cleartext connection from `peer` on listener `listener`.
    pub fn plain(listener: Arc<str>, peer: SocketAddr) -> ConnectionInfo {
        ConnectionInfo {
            listener,
            scheme: Scheme::Http,
            peer,
            client: peer,
            tls: None,
            redirect: None,
        }
    }
}
