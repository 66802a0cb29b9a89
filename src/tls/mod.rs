//! TLS termination on the listeners that have a `tls` table: certificates chosen by SNI,
//! ALPN, client certificates (mTLS), and certificates replaced without a restart.
//!
//! rustls with the `ring` provider: it builds with a C compiler alone, where `aws-lc-rs` needs
//! cmake and adds minutes to a cold build, and the gateway needs no FIPS mode. TLS 1.2 and 1.3
//! are on unless `min_version = "1.3"`; ALPN offers `h2` and `http/1.1` and the connection speaks
//! what was chosen; session resumption works with TLS 1.3 tickets and a TLS 1.2 session cache,
//! both kept across certificate reloads.
//!
//! Each listener's certificates are built into one rustls `ServerConfig` per certificate
//! ([`Acceptors`]). A connection's ClientHello is read first ([`ListenerTls::accept`]), its
//! server name picks the config by the same host patterns routes use (`host_pattern`: exact
//! beats wildcard, a longer wildcard beats a shorter one), and a name no entry has (or no name)
//! gets the default certificate or, with `unknown_sni = "refuse"`, a failed handshake.
//!
//! Certificates are replaced whole: on a config reload ([`TlsListeners::prepare`], applied only
//! if the whole reload builds) and when a certificate or key file changes
//! ([`TlsListeners::watch`], for renewals by cert-manager or certbot). New handshakes use the
//! new certificates; open connections keep theirs. A broken certificate keeps the old ones, is
//! logged, and counted in `wasmgate_tls_certificate_reloads_total{outcome="failure"}`.

pub mod certs;
pub mod client_cert;

use crate::config::Config;
use crate::config::listener::{TlsConfig, TlsVersion, UnknownSni};
use crate::connection_info::TlsInfo;
use crate::host_pattern::HostPattern;
use crate::metrics::Metrics;
use anyhow::Context;
use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ProducesTickets, StoresServerSessions, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;

/// Sessions a listener remembers for TLS 1.2 resumption.
const SESSION_CACHE_SIZE: usize = 4096;

/// What every TLS listener shares across rebuilds: the crypto provider and the session
/// resumption state, so a certificate reload does not end resumption.
#[derive(Clone)]
struct Shared {
    provider: Arc<CryptoProvider>,
    ticketer: Arc<dyn ProducesTickets>,
    sessions: Arc<dyn StoresServerSessions + Send + Sync>,
}

impl Shared {
    fn new() -> anyhow::Result<Shared> {
        Ok(Shared {
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            ticketer: rustls::crypto::ring::Ticketer::new()
                .context("cannot set up TLS session tickets")?,
            sessions: rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE_SIZE),
        })
    }
}

/// One listener's certificates, built: a server config per certificate.
pub struct Acceptors {
    /// SNI entries, most specific pattern first.
    by_name: Vec<(HostPattern, Arc<ServerConfig>)>,
    /// For names no entry has; `None` refuses them.
    default: Option<Arc<ServerConfig>>,
    /// Each certificate's expiry metric name and notAfter.
    expiry: Vec<(String, i64)>,
    /// Every file read, to notice changes.
    files: Vec<PathBuf>,
}

impl Acceptors {
    fn build(
        listener: &str,
        tls: &TlsConfig,
        config: &Config,
        shared: &Shared,
    ) -> anyhow::Result<Acceptors> {
        let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version {
            TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            TlsVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let mut files = Vec::new();
        let verifier = match &tls.client_auth {
            None => None,
            Some(auth) => {
                let ca = config.resolve(&auth.ca);
                let mut roots = RootCertStore::empty();
                for cert in certs::read_certificates(&ca)? {
                    roots.add(cert).with_context(|| {
                        format!("client_auth ca {}: not a CA certificate", ca.display())
                    })?;
                }
                let builder = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    shared.provider.clone(),
                );
                let builder = if auth.required {
                    builder
                } else {
                    builder.allow_unauthenticated()
                };
                files.push(ca.clone());
                Some(builder.build().with_context(|| {
                    format!(
                        "client_auth ca {}: cannot verify clients with it",
                        ca.display()
                    )
                })?)
            }
        };
        let server_config =
            |cert: &Path, key: &Path| -> anyhow::Result<(Arc<ServerConfig>, i64, Vec<String>)> {
                let loaded = certs::load(cert, key, &shared.provider)?;
                let builder = ServerConfig::builder_with_provider(shared.provider.clone())
                    .with_protocol_versions(versions)
                    .context("the TLS versions")?;
                let builder = match &verifier {
                    Some(verifier) => builder.with_client_cert_verifier(verifier.clone()),
                    None => builder.with_no_client_auth(),
                };
                let mut server = builder.with_cert_resolver(Arc::new(
                    rustls::sign::SingleCertAndKey::from(Arc::unwrap_or_clone(loaded.key)),
                ));
                server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
                server.ticketer = shared.ticketer.clone();
                server.session_storage = shared.sessions.clone();
                Ok((Arc::new(server), loaded.not_after, loaded.names))
            };

        let (cert, key) = (config.resolve(&tls.cert), config.resolve(&tls.key));
        let (default, not_after, default_names) = server_config(&cert, &key)?;
        let mut expiry = vec![(listener.to_string(), not_after)];
        files.extend([cert, key]);
        let mut by_name = Vec::new();
        for entry in &tls.sni {
            let (cert, key) = (config.resolve(&entry.cert), config.resolve(&entry.key));
            let (server, not_after, _) = server_config(&cert, &key)?;
            let first = entry.names.first().map_or("", String::as_str);
            expiry.push((format!("{listener}:{first}"), not_after));
            for name in &entry.names {
                // Checked when the config was parsed.
                let pattern = HostPattern::parse(name)
                    .with_context(|| format!("[[listener]] `{listener}` sni names"))?;
                by_name.push((pattern, server.clone()));
            }
            files.extend([cert, key]);
        }
        if tls.unknown_sni == UnknownSni::Refuse {
            // Refused are names no certificate has: the default certificate still serves its
            // own (after the SNI entries, which win a tie).
            for name in &default_names {
                if let Ok(pattern) = HostPattern::parse(name) {
                    by_name.push((pattern, default.clone()));
                }
            }
        }
        // Stable: among equally specific patterns, the first listed wins.
        by_name.sort_by_key(|(pattern, _)| std::cmp::Reverse(pattern.rank()));
        Ok(Acceptors {
            by_name,
            default: match tls.unknown_sni {
                UnknownSni::Default => Some(default),
                UnknownSni::Refuse => None,
            },
            expiry,
            files,
        })
    }

    /// The config for a client that asked for `server_name` (lower case).
    fn config_for(&self, server_name: Option<&str>) -> Option<&Arc<ServerConfig>> {
        let named = server_name.and_then(|name| {
            self.by_name
                .iter()
                .find(|(pattern, _)| pattern.matches(name))
                .map(|(_, config)| config)
        });
        named.or(self.default.as_ref())
    }
}

/// Why a TLS handshake failed: the `reason` of `wasmgate_tls_handshake_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// Not done within `header_read_timeout`.
    Timeout,
    /// A name no certificate has, with `unknown_sni = "refuse"`.
    UnknownSni,
    /// No TLS version, cipher suite, group or ALPN protocol in common.
    Incompatible,
    /// `client_auth` required and the client sent no certificate.
    ClientCertMissing,
    /// A client certificate that does not verify against the listener's client CA.
    ClientCertInvalid,
    /// The client refused the handshake (for example, it does not trust the certificate).
    ClientAlert,
    /// Bytes that are not TLS (say, plain HTTP on a TLS port).
    NotTls,
    /// The client closed or reset the connection mid-handshake.
    Closed,
    /// Anything else.
    Other,
}

impl HandshakeFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::UnknownSni => "unknown_sni",
            HandshakeFailure::Incompatible => "incompatible",
            HandshakeFailure::ClientCertMissing => "client_cert_missing",
            HandshakeFailure::ClientCertInvalid => "client_cert_invalid",
            HandshakeFailure::ClientAlert => "client_alert",
            HandshakeFailure::NotTls => "not_tls",
            HandshakeFailure::Closed => "closed",
            HandshakeFailure::Other => "other",
        }
    }

    fn of(error: &std::io::Error) -> HandshakeFailure {
        use std::io::ErrorKind;
        if let Some(tls) = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return match tls {
                rustls::Error::NoCertificatesPresented => HandshakeFailure::ClientCertMissing,
                rustls::Error::InvalidCertificate(_) => HandshakeFailure::ClientCertInvalid,
                rustls::Error::PeerIncompatible(_) | rustls::Error::NoApplicationProtocol => {
                    HandshakeFailure::Incompatible
                }
                rustls::Error::AlertReceived(_) => HandshakeFailure::ClientAlert,
                rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
                    HandshakeFailure::NotTls
                }
                _ => HandshakeFailure::Other,
            };
        }
        match error.kind() {
            ErrorKind::UnexpectedEof
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe => HandshakeFailure::Closed,
            ErrorKind::InvalidData => HandshakeFailure::NotTls,
            _ => HandshakeFailure::Other,
        }
    }
}

/// One TLS listener: its built certificates, replaced whole on reload.
pub struct ListenerTls {
    name: Arc<str>,
    shared: Shared,
    acceptors: ArcSwap<Acceptors>,
    /// What the live acceptors were built from, to build them again when a file changes.
    source: Mutex<(TlsConfig, Config)>,
}

impl ListenerTls {
    /// Reads `stream`'s ClientHello, picks the certificate and finishes the handshake.
    pub async fn accept<IO>(&self, stream: IO) -> Result<(TlsStream<IO>, TlsInfo), HandshakeFailure>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let start =
            tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream)
                .await
                .map_err(|e| HandshakeFailure::of(&e))?;
        let server_name = start
            .client_hello()
            .server_name()
            .map(str::to_ascii_lowercase);
        let config = {
            let acceptors = self.acceptors.load();
            acceptors
                .config_for(server_name.as_deref())
                .cloned()
                .ok_or(HandshakeFailure::UnknownSni)?
        };
        let stream = start
            .into_stream(config)
            .await
            .map_err(|e| HandshakeFailure::of(&e))?;
        let connection = stream.get_ref().1;
        let version = match connection.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "TLSv1.3",
        };
        let client_cert = connection
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(client_cert::identity);
        Ok((
            stream,
            TlsInfo {
                version,
                server_name,
                client_cert,
            },
        ))
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Every TLS listener of the process, for reloads and the expiry metric.
pub struct TlsListeners {
    listeners: Vec<Arc<ListenerTls>>,
    metrics: Arc<Metrics>,
}

/// New certificates for some listeners, built and checked, not yet in use.
pub struct PreparedTls {
    built: Vec<(Arc<ListenerTls>, Acceptors, TlsConfig)>,
}

impl TlsListeners {
    /// Builds the certificates of `config`'s TLS listeners. Any error names the listener and
    /// the file.
    pub fn start(config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<Arc<TlsListeners>> {
        let shared = Shared::new()?;
        let mut listeners = Vec::new();
        for listener in config.listeners() {
            let Some(tls) = &listener.tls else { continue };
            let acceptors = Acceptors::build(&listener.name, tls, config, &shared)
                .with_context(|| format!("[[listener]] `{}` tls", listener.name))?;
            listeners.push(Arc::new(ListenerTls {
                name: listener.name.as_str().into(),
                shared: shared.clone(),
                acceptors: ArcSwap::from_pointee(acceptors),
                source: Mutex::new((tls.clone(), config.clone())),
            }));
        }
        let all = Arc::new(TlsListeners { listeners, metrics });
        all.export_expiry();
        Ok(all)
    }

    /// Checks that every TLS listener of `config` can be built (`wasmgate check`).
    pub fn check(config: &Config) -> anyhow::Result<()> {
        TlsListeners::start(config, Metrics::new()).map(drop)
    }

    /// The TLS state of the listener named `name`, if it has TLS.
    pub fn listener(&self, name: &str) -> Option<Arc<ListenerTls>> {
        self.listeners.iter().find(|l| &*l.name == name).cloned()
    }

    /// Builds the certificates `config` gives the running TLS listeners (a listener that
    /// `config` no longer has, or has without TLS, keeps its own until a restart).
    pub fn prepare(&self, config: &Config) -> anyhow::Result<PreparedTls> {
        let mut built = Vec::new();
        let result = (|| {
            for listener in config.listeners() {
                let (Some(tls), Some(running)) = (&listener.tls, self.listener(&listener.name))
                else {
                    continue;
                };
                let acceptors = Acceptors::build(&listener.name, tls, config, &running.shared)
                    .with_context(|| format!("[[listener]] `{}` tls", listener.name))?;
                built.push((running, acceptors, tls.clone()));
            }
            anyhow::Ok(())
        })();
        if let Err(e) = result {
            self.metrics.tls_certificates_reloaded(false);
            return Err(e);
        }
        Ok(PreparedTls { built })
    }

    /// Puts prepared certificates in use; `config` is what they were built from.
    pub fn apply(&self, prepared: PreparedTls, config: &Config) {
        for (listener, acceptors, tls) in prepared.built {
            listener.acceptors.store(Arc::new(acceptors));
            *listener
                .source
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = (tls, config.clone());
            self.metrics.tls_certificates_reloaded(true);
        }
        self.export_expiry();
    }

    /// Builds one listener's certificates again from the config it has (its files changed).
    fn rebuild(&self, listener: &ListenerTls) -> anyhow::Result<()> {
        let (tls, config) = listener
            .source
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let built = Acceptors::build(&listener.name, &tls, &config, &listener.shared);
        self.metrics.tls_certificates_reloaded(built.is_ok());
        listener.acceptors.store(Arc::new(built?));
        self.export_expiry();
        Ok(())
    }

    fn export_expiry(&self) {
        let all: Vec<(String, i64)> = self
            .listeners
            .iter()
            .flat_map(|l| l.acceptors.load().expiry.clone())
            .collect();
        self.metrics.tls_certificate_expiry(&all);
    }

    /// Rebuilds a listener's certificates whenever one of its files changes and then holds
    /// still for one look (a renewal writes the certificate and the key one after the other).
    pub async fn watch(self: Arc<Self>) {
        if self.listeners.is_empty() {
            return;
        }
        let files = |listener: &ListenerTls| listener.acceptors.load().files.clone();
        let mut seen: Vec<_> = self
            .listeners
            .iter()
            .map(|l| crate::reload::fingerprint(&files(l)))
            .collect();
        let mut pending: Vec<Option<_>> = vec![None; self.listeners.len()];
        loop {
            tokio::time::sleep(crate::reload::WATCH_INTERVAL).await;
            for (index, listener) in self.listeners.iter().enumerate() {
                let now = crate::reload::fingerprint(&files(listener));
                if now == seen[index] {
                    pending[index] = None;
                    continue;
                }
                if pending[index].as_ref() != Some(&now) {
                    pending[index] = Some(now);
                    continue;
                }
                pending[index] = None;
                let this = self.clone();
                let rebuilt = {
                    let listener = listener.clone();
                    tokio::task::spawn_blocking(move || this.rebuild(&listener)).await
                };
                match rebuilt {
                    Ok(Ok(())) => tracing::info!(
                        listener = %listener.name,
                        "certificate files changed: new handshakes use the new certificates"
                    ),
                    Ok(Err(e)) => tracing::error!(
                        listener = %listener.name,
                        error = %format!("{e:#}"),
                        "certificate files changed but cannot be used; keeping the old certificates"
                    ),
                    Err(e) => {
                        tracing::error!(listener = %listener.name, error = %e, "rebuilding certificates panicked")
                    }
                }
                seen[index] = crate::reload::fingerprint(&files(listener));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The TOML examples of docs/tls.md are configs the gateway takes.
    #[test]
    fn the_documented_examples_parse() {
        let configs = crate::config::documented_configs(include_str!("../../docs/tls.md"));
        assert!(configs.len() >= 3, "{} examples", configs.len());
    }

    #[test]
    fn handshake_failures_are_classified_from_rustls_errors() {
        let io = |e: rustls::Error| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
        assert_eq!(
            HandshakeFailure::of(&io(rustls::Error::NoCertificatesPresented)),
            HandshakeFailure::ClientCertMissing
        );
        assert_eq!(
            HandshakeFailure::of(&io(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer
            ))),
            HandshakeFailure::ClientCertInvalid
        );
        assert_eq!(
            HandshakeFailure::of(&io(rustls::Error::NoApplicationProtocol)),
            HandshakeFailure::Incompatible
        );
        assert_eq!(
            HandshakeFailure::of(&std::io::ErrorKind::UnexpectedEof.into()),
            HandshakeFailure::Closed
        );
    }
}
