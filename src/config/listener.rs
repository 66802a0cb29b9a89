//! `[[listener]]`: the addresses the gateway serves on, each cleartext or TLS.
//!
//! Without any `[[listener]]` table, `[server] listen` is one cleartext listener named
//! `default` ([`Config::listeners`](super::Config::listeners)).

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

/// One `[[listener]]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// Routes name the listeners they serve on (`listeners = ["public-tls"]`).
    pub name: String,
    pub address: SocketAddr,
    /// Expect a PROXY protocol (v1 or v2) header before each connection's first byte.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Terminate TLS on this listener.
    pub tls: Option<TlsConfig>,
    /// On a cleartext listener: answer every request no route on this listener serves with a
    /// 308 to the same host and path on this scheme and port, e.g. `"https://:8443"`.
    pub http_redirect: Option<String>,
}

/// `tls = { ... }` of a listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The default certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1; RSA, ECDSA or Ed25519).
    pub key: PathBuf,
    /// The oldest TLS version accepted.
    #[serde(default)]
    pub min_version: TlsVersion,
    /// More certificates, chosen by the name the client asks for (SNI): exact names and
    /// `*.example.com`.
    #[serde(default)]
    pub sni: Vec<SniCertConfig>,
    /// What a client gets that asks for a name no `sni` entry has (or none).
    #[serde(default)]
    pub unknown_sni: UnknownSni,
    /// Ask clients for a certificate (mTLS).
    pub client_auth: Option<ClientAuthConfig>,
}

/// The oldest TLS version a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

/// What a client that asks for an unknown name gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownSni {
    /// The default certificate.
    #[default]
    Default,
    /// A failed handshake.
    Refuse,
}

/// One `sni` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SniCertConfig {
    pub names: Vec<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `client_auth = { ca = "...", required = true }`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientAuthConfig {
    /// The CA certificates (PEM) client certificates must chain to.
    pub ca: PathBuf,
    /// `true`: a client without a valid certificate is refused; `false`: it is served, and only
    /// a valid certificate's identity reaches the guest.
    #[serde(default = "default_true")]
    pub required: bool,
}

fn default_true() -> bool {
    true
}
