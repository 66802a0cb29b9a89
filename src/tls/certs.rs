//! Certificates and their keys, read from PEM files and checked before a listener uses them.
//!
//! A certificate that cannot serve is an error naming its file, at start-up, on reload and on
//! rotation alike: a file without a certificate, a key of a kind the crypto provider cannot
//! sign with, a key that is not the certificate's, a leaf certificate that has expired or is not
//! yet valid. The chain is sent as the file has it, leaf first. Also here: the roots and TLS
//! settings of the gateway's own clients ([`client_roots`], [`client_config`]).

use anyhow::{Context, bail};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

/// A certificate chain and its key, ready to serve.
pub struct LoadedCert {
    pub key: Arc<CertifiedKey>,
    /// The leaf's notAfter, in seconds since the Unix epoch.
    pub not_after: i64,
    /// The chain's file, for logs and the expiry metric.
    pub file: PathBuf,
    /// The leaf's DNS names (subject alternative names), lower case.
    pub names: Vec<String>,
}

/// Reads the chain in `cert` and the private key in `key`; see the module docs.
pub fn load(cert: &Path, key: &Path, provider: &CryptoProvider) -> anyhow::Result<LoadedCert> {
    let chain = read_certificates(cert)?;
    let key_text =
        std::fs::read(key).with_context(|| format!("cannot read key file {}", key.display()))?;
    let private_key = PrivateKeyDer::from_pem_slice(&key_text).map_err(|e| {
        anyhow::anyhow!(
            "key file {}: no usable private key (PEM: PKCS#8, PKCS#1 or SEC1): {e}",
            key.display()
        )
    })?;
    let leaf = chain[0].clone();
    let certified = CertifiedKey::from_der(chain, private_key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => anyhow::anyhow!(
            "key file {} does not belong to the certificate in {}",
            key.display(),
            cert.display()
        ),
        other => anyhow::anyhow!(
            "key file {}: cannot sign with this key (RSA, ECDSA P-256/P-384 and Ed25519 are supported): {other}",
            key.display()
        ),
    })?;
    let (not_before, not_after, names) = leaf_facts(&leaf)
        .with_context(|| format!("certificate file {}: the leaf certificate", cert.display()))?;
    let now = unix_now();
    if now > not_after {
        bail!(
            "certificate file {}: the certificate expired at {} (it is {} now)",
            cert.display(),
            timestamp(not_after),
            timestamp(now)
        );
    }
    if now < not_before {
        bail!(
            "certificate file {}: the certificate is not valid before {}",
            cert.display(),
            timestamp(not_before)
        );
    }
    Ok(LoadedCert {
        key: Arc::new(certified),
        not_after,
        file: cert.to_path_buf(),
        names,
    })
}

/// Every certificate in a PEM file, in order; at least one.
pub fn read_certificates(file: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let text = std::fs::read(file)
        .with_context(|| format!("cannot read certificate file {}", file.display()))?;
    let chain = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("certificate file {}: {e}", file.display()))?;
    if chain.is_empty() {
        bail!(
            "certificate file {} holds no certificate (expected PEM `BEGIN CERTIFICATE` blocks)",
            file.display()
        );
    }
    Ok(chain)
}

/// The notBefore and notAfter of a certificate, in seconds since the Unix epoch, and its DNS
/// names.
fn leaf_facts(der: &CertificateDer<'_>) -> anyhow::Result<(i64, i64, Vec<String>)> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| anyhow::anyhow!("is not a valid X.509 certificate: {e}"))?;
    let validity = cert.validity();
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    Ok((
        validity.not_before.timestamp(),
        validity.not_after.timestamp(),
        names,
    ))
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A timestamp as an RFC 3339 date for messages.
fn timestamp(seconds: i64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(seconds.max(0) as u64);
    humantime::format_rfc3339_seconds(time).to_string()
}

/// The machine's root certificates, read once per process: reading and parsing the system's
/// bundle and certificate directory takes 10-20 ms, which every generation and every upstream
/// would otherwise pay again. [`prefetch_system_roots`] starts the read on a thread of its own
/// at start, so it overlaps loading the components.
static SYSTEM_ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();

/// Starts reading the machine's roots in the background; [`client_roots`] waits for them.
pub fn prefetch_system_roots() {
    if SYSTEM_ROOTS.get().is_none() {
        std::thread::spawn(system_roots);
    }
}

fn system_roots() -> &'static [CertificateDer<'static>] {
    SYSTEM_ROOTS.get_or_init(|| {
        let native = rustls_native_certs::load_native_certs();
        for error in &native.errors {
            tracing::debug!(error = %error, "a system root certificate could not be read");
        }
        native.certs
    })
}

/// The roots the gateway's clients (upstream routes, components' outgoing requests) trust: the
/// public (webpki) roots, the machine's own (read once, when the process starts), and
/// `extra_ca` if given (`what` names the setting in errors).
pub fn client_roots(extra_ca: Option<&Path>, what: &str) -> anyhow::Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.into(),
    };
    let (_added, _ignored) = roots.add_parsable_certificates(system_roots().iter().cloned());
    if let Some(ca) = extra_ca {
        for cert in read_certificates(ca).with_context(|| format!("{what} {}", ca.display()))? {
            roots
                .add(cert)
                .with_context(|| format!("{what} {}: not a CA certificate", ca.display()))?;
        }
    }
    Ok(roots)
}

/// A TLS client config over `roots`: rustls with the ring provider, TLS 1.2 and 1.3.
pub fn client_config(roots: rustls::RootCertStore) -> anyhow::Result<rustls::ClientConfig> {
    Ok(rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS versions")?
    .with_root_certificates(roots)
    .with_no_client_auth())
}
