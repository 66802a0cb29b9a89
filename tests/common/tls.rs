//! TLS scaffolding for the integration tests: certificates made per run, TLS clients, and
//! PROXY protocol headers.
//!
//! - [`Pki`] is a throw-away certificate authority. It writes its CA certificate into a test
//!   directory and issues server certificates ([`Pki::server_cert`]: ECDSA, Ed25519 or RSA
//!   keys, wildcard and IP names, a chosen serial number, optionally expired or issued through
//!   an intermediate CA) and client certificates for mTLS ([`Pki::client_cert`]). Every
//!   certificate and key is written as a PEM file whose path is returned, ready to be put in a
//!   gateway config. [`mismatched_key`] writes a key that belongs to no certificate.
//! - [`client_config`] builds a rustls client (trusting one CA, with chosen ALPN protocols,
//!   TLS versions and an optional client certificate); [`connect`] opens a TLS connection;
//!   [`negotiated`] reports what was agreed (ALPN, version, and the serial and DNS names of the
//!   certificate the server presented); [`https_request`] and [`https_get`] send one request
//!   over HTTP/2 or HTTP/1.1, whichever ALPN chose.
//! - [`proxy_v1_header`] and [`proxy_v2_header`] encode PROXY protocol headers by hand from
//!   the specification (no parser crate involved), to be written before the TLS handshake
//!   ([`connect_with_preface`], [`send_request`]).
//!
//! Everything uses the `ring` provider explicitly: the test process installs no default
//! crypto provider.

use super::BoxError;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// The kind of key a certificate is made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyKind {
    /// ECDSA P-256 with SHA-256.
    #[default]
    Ecdsa,
    /// Ed25519.
    Ed25519,
    /// RSA 2048 with SHA-256 (the key is made by the `openssl` command: ring cannot make RSA keys).
    Rsa,
}

/// How [`Pki::server_cert`] makes a certificate.
#[derive(Debug, Clone, Copy)]
pub struct CertOptions {
    pub key: KeyKind,
    /// The certificate's serial number, exactly (see [`Negotiated::peer_serial`]). Must not be 0.
    pub serial: u64,
    /// Valid from 30 days ago until yesterday, instead of from yesterday for a year.
    pub expired: bool,
    /// Signed by the PKI's intermediate CA; the chain file then holds the leaf, then the
    /// intermediate.
    pub intermediate: bool,
}

impl Default for CertOptions {
    /// An ECDSA certificate with a fresh random serial, valid now, signed by the root CA.
    fn default() -> Self {
        CertOptions {
            key: KeyKind::Ecdsa,
            serial: fresh_serial(),
            expired: false,
            intermediate: false,
        }
    }
}

/// A random serial number, different on every call, in 1..2^63.
pub fn fresh_serial() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    (RandomState::new().hash_one(n) >> 1).max(1)
}

/// A throw-away certificate authority: a self-signed root CA and an intermediate CA it signed.
pub struct Pki {
    dir: PathBuf,
    ca_path: PathBuf,
    root: Issuer<'static, KeyPair>,
    intermediate: Issuer<'static, KeyPair>,
    intermediate_pem: String,
}

impl Pki {
    /// Makes a root CA whose common name is `name` and writes its certificate to
    /// `dir/<name>-ca.pem`; every file this PKI writes later goes to `dir` too.
    pub fn new(dir: &Path, name: &str) -> Pki {
        let root_key = KeyPair::generate().expect("generate CA key");
        let root_params = ca_params(name, None);
        let root_cert = root_params
            .self_signed(&root_key)
            .expect("self-sign CA certificate");
        let ca_path = dir.join(format!("{name}-ca.pem"));
        write(&ca_path, &root_cert.pem());
        let root = Issuer::new(root_params, root_key);

        let intermediate_key = KeyPair::generate().expect("generate intermediate CA key");
        let intermediate_params = ca_params(&format!("{name} intermediate"), Some(0));
        let intermediate_cert = intermediate_params
            .signed_by(&intermediate_key, &root)
            .expect("sign intermediate CA certificate");
        let intermediate_pem = intermediate_cert.pem();
        let intermediate = Issuer::new(intermediate_params, intermediate_key);

        Pki {
            dir: dir.to_path_buf(),
            ca_path,
            root,
            intermediate,
            intermediate_pem,
        }
    }

    /// The root CA certificate (PEM), the one clients and mTLS verifiers trust.
    pub fn ca_path(&self) -> &Path {
        &self.ca_path
    }

    /// A server certificate for `names` (DNS names, wildcards such as `*.apps.example.com`, or
    /// IP addresses, which go in IP SANs), with extended key usage serverAuth. The first name
    /// is also the subject's common name. Writes `dir/<file_stem>-cert.pem` (the chain: the
    /// leaf, then the intermediate if [`CertOptions::intermediate`]) and
    /// `dir/<file_stem>-key.pem` (PKCS#8), and returns (chain path, key path).
    pub fn server_cert(
        &self,
        file_stem: &str,
        names: &[&str],
        opts: CertOptions,
    ) -> (PathBuf, PathBuf) {
        assert!(opts.serial != 0, "a certificate serial must be positive");
        let key = new_key(opts.key);
        let mut params = CertificateParams::default();
        params.subject_alt_names = san_list(names);
        params.distinguished_name = DistinguishedName::new();
        if let Some(first) = names.first() {
            params
                .distinguished_name
                .push(DnType::CommonName, first.to_string());
        }
        params.serial_number = Some(SerialNumber::from_slice(&opts.serial.to_be_bytes()));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, opts.expired);

        let issuer = if opts.intermediate {
            &self.intermediate
        } else {
            &self.root
        };
        let cert = params
            .signed_by(&key, issuer)
            .expect("sign server certificate");
        let mut chain = cert.pem();
        if opts.intermediate {
            chain.push_str(&self.intermediate_pem);
        }
        self.write_pair(file_stem, &chain, &key)
    }

    /// A client certificate for mTLS (ECDSA, extended key usage clientAuth) signed by the root
    /// CA, with subject CN = `common_name` (and O = `organization`), and `sans` as DNS SANs (IP
    /// SANs for IP addresses). Writes `dir/<file_stem>-cert.pem` and `dir/<file_stem>-key.pem`
    /// and returns (certificate path, key path).
    pub fn client_cert(
        &self,
        file_stem: &str,
        common_name: &str,
        organization: Option<&str>,
        sans: &[&str],
    ) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().expect("generate client key");
        let mut params = CertificateParams::default();
        params.subject_alt_names = san_list(sans);
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        if let Some(organization) = organization {
            params
                .distinguished_name
                .push(DnType::OrganizationName, organization);
        }
        params.serial_number = Some(SerialNumber::from_slice(&fresh_serial().to_be_bytes()));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, false);
        let cert = params
            .signed_by(&key, &self.root)
            .expect("sign client certificate");
        self.write_pair(file_stem, &cert.pem(), &key)
    }

    fn write_pair(&self, file_stem: &str, chain: &str, key: &KeyPair) -> (PathBuf, PathBuf) {
        let cert_path = self.dir.join(format!("{file_stem}-cert.pem"));
        let key_path = self.dir.join(format!("{file_stem}-key.pem"));
        write(&cert_path, chain);
        write(&key_path, &key.serialize_pem());
        (cert_path, key_path)
    }
}

/// Writes a fresh ECDSA private key that belongs to no certificate, to
/// `dir/<file_stem>-key.pem`, and returns its path.
pub fn mismatched_key(dir: &Path, file_stem: &str) -> PathBuf {
    let key = KeyPair::generate().expect("generate key");
    let path = dir.join(format!("{file_stem}-key.pem"));
    write(&path, &key.serialize_pem());
    path
}

/// The CA parameters: `path_len` None for a root, Some(n) for an intermediate.
fn ca_params(common_name: &str, path_len: Option<u8>) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = match path_len {
        None => IsCa::Ca(BasicConstraints::Unconstrained),
        Some(n) => IsCa::Ca(BasicConstraints::Constrained(n)),
    };
    params.serial_number = Some(SerialNumber::from_slice(&fresh_serial().to_be_bytes()));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = path_len.is_some();
    let now = x509_parser::time::ASN1Time::now().to_datetime();
    params.not_before = now - DAY;
    params.not_after = now + 3650 * DAY;
    params
}

/// Valid from yesterday for a year; or, if `expired`, from 30 days ago until yesterday.
fn set_validity(params: &mut CertificateParams, expired: bool) {
    // rcgen's times are `time::OffsetDateTime`; x509-parser gives us "now" in that type, and
    // it subtracts std Durations, so no direct dependency on `time` is needed.
    let now = x509_parser::time::ASN1Time::now().to_datetime();
    if expired {
        params.not_before = now - 30 * DAY;
        params.not_after = now - DAY;
    } else {
        params.not_before = now - DAY;
        params.not_after = now + 365 * DAY;
    }
}

/// Subject alternative names: IP SANs for IP addresses, DNS SANs for the rest.
fn san_list(names: &[&str]) -> Vec<SanType> {
    names
        .iter()
        .map(|name| match name.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                name.to_string()
                    .try_into()
                    .unwrap_or_else(|e| panic!("bad DNS name {name:?}: {e}")),
            ),
        })
        .collect()
}

fn new_key(kind: KeyKind) -> KeyPair {
    match kind {
        KeyKind::Ecdsa => {
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("generate ECDSA key")
        }
        KeyKind::Ed25519 => {
            KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("generate Ed25519 key")
        }
        KeyKind::Rsa => {
            let output = Command::new("openssl")
                .args([
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                ])
                .output()
                .expect("run `openssl genpkey` (needed for RSA keys)");
            assert!(
                output.status.success(),
                "openssl genpkey failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            let pem = String::from_utf8(output.stdout).expect("openssl prints PEM");
            KeyPair::from_pem(&pem).expect("load the RSA key made by openssl")
        }
    }
}

fn write(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Every certificate in a PEM file, in order.
pub fn load_certs(path: &Path) -> Vec<CertificateDer<'static>> {
    let pem = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_else(|e| panic!("parse certificates in {}: {e}", path.display()));
    assert!(!certs.is_empty(), "no certificate in {}", path.display());
    certs
}

/// The first private key in a PEM file.
pub fn load_key(path: &Path) -> PrivateKeyDer<'static> {
    let pem = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    PrivateKeyDer::from_pem_slice(&pem)
        .unwrap_or_else(|e| panic!("parse private key in {}: {e}", path.display()))
}

/// A root store holding every certificate in a PEM file.
pub fn root_store(ca: &Path) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca) {
        roots.add(cert).expect("add CA certificate to root store");
    }
    roots
}

/// How [`client_config`] makes a client.
#[derive(Debug, Clone)]
pub struct ClientOptions<'a> {
    /// The only CA the client trusts (a PEM file).
    pub ca: &'a Path,
    /// ALPN protocols offered, e.g. `vec![b"h2".to_vec()]`; empty offers none.
    pub alpn: Vec<Vec<u8>>,
    pub tls12_only: bool,
    pub tls13_only: bool,
    /// (certificate chain PEM, key PEM) presented if the server asks for one.
    pub client_cert: Option<(&'a Path, &'a Path)>,
}

impl<'a> ClientOptions<'a> {
    /// Trusts `ca`, offers ALPN `h2` and `http/1.1`, TLS 1.2 and 1.3, no client certificate.
    pub fn new(ca: &'a Path) -> Self {
        ClientOptions {
            ca,
            alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            tls12_only: false,
            tls13_only: false,
            client_cert: None,
        }
    }
}

/// A rustls client config (ring provider) from `opts`.
pub fn client_config(opts: &ClientOptions) -> Arc<ClientConfig> {
    let versions: &[&'static rustls::SupportedProtocolVersion] =
        match (opts.tls12_only, opts.tls13_only) {
            (true, true) => panic!("tls12_only and tls13_only are exclusive"),
            (true, false) => &[&rustls::version::TLS12],
            (false, true) => &[&rustls::version::TLS13],
            (false, false) => &[&rustls::version::TLS13, &rustls::version::TLS12],
        };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .expect("ring supports these TLS versions")
        .with_root_certificates(root_store(opts.ca));
    let mut config = match opts.client_cert {
        Some((cert, key)) => builder
            .with_client_auth_cert(load_certs(cert), load_key(key))
            .expect("client certificate and key"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = opts.alpn.clone();
    Arc::new(config)
}

/// Opens a TCP connection to `addr` and does a TLS handshake, sending `server_name` as SNI
/// (an IP address string is verified against IP SANs and sends no SNI).
///
/// With TLS 1.3 the client finishes its handshake before the server has checked the client
/// certificate: a server refusing the client certificate shows up as an error on the first
/// read (e.g. in [`send_request`]), not here.
pub async fn connect(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    connect_with_preface(addr, &[], server_name, config).await
}

/// Like [`connect`], but first writes `preface` (e.g. a PROXY protocol header) on the TCP
/// connection, before the TLS handshake.
pub async fn connect_with_preface(
    addr: SocketAddr,
    preface: &[u8],
    server_name: &str,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let name = ServerName::try_from(server_name.to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    if !preface.is_empty() {
        tcp.write_all(preface).await?;
    }
    TlsConnector::from(config).connect(name, tcp).await
}

/// What a TLS handshake agreed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// The ALPN protocol the server chose, if any.
    pub alpn: Option<Vec<u8>>,
    pub version: Option<rustls::ProtocolVersion>,
    /// The serial number of the server's leaf certificate (0 if none; the low 64 bits if the
    /// serial is longer than that).
    pub peer_serial: u64,
    /// The DNS SANs of the server's leaf certificate.
    pub peer_names: Vec<String>,
}

/// What the handshake on `stream` agreed on.
pub fn negotiated(stream: &TlsStream<TcpStream>) -> Negotiated {
    let (_, conn) = stream.get_ref();
    let (peer_serial, peer_names) = match conn.peer_certificates().and_then(|c| c.first()) {
        Some(leaf) => leaf_identity(leaf),
        None => (0, Vec::new()),
    };
    Negotiated {
        alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
        version: conn.protocol_version(),
        peer_serial,
        peer_names,
    }
}

/// The serial number and DNS SANs of a certificate.
pub fn leaf_identity(der: &[u8]) -> (u64, Vec<String>) {
    let (_, cert) = x509_parser::parse_x509_certificate(der).expect("parse peer certificate");
    let serial = cert
        .raw_serial()
        .iter()
        .fold(0u64, |acc, byte| (acc << 8) | u64::from(*byte));
    let names = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    (serial, names)
}

/// A response: what the handshake agreed on, the status, the headers and the body (lossy
/// UTF-8).
pub type HttpsResponse = (Negotiated, StatusCode, HeaderMap, String);

/// Connects to `addr` as [`connect`] does and sends `request` with [`send_request`]. A request
/// URI without an authority (`/path`) is sent to `https://{server_name}/path`.
pub async fn https_request(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<ClientConfig>,
    mut request: Request<String>,
) -> Result<HttpsResponse, BoxError> {
    if request.uri().authority().is_none() {
        let path = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        *request.uri_mut() = format!("https://{}{path}", host_for_uri(server_name)).parse()?;
    }
    let stream = connect(addr, server_name, config).await?;
    send_request(stream, request).await
}

/// GET `https://{server_name}{path}` (see [`https_request`]).
pub async fn https_get(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<ClientConfig>,
    path: &str,
) -> Result<HttpsResponse, BoxError> {
    let uri = format!("https://{}{path}", host_for_uri(server_name));
    let request = Request::get(uri).body(String::new())?;
    https_request(addr, server_name, config, request).await
}

/// Sends one request on an established TLS connection and reads the whole response: over
/// HTTP/2 if ALPN chose `h2`, else over HTTP/1.1. `request`'s URI should be absolute
/// (`https://api.example.com/path`): HTTP/2 takes `:authority` from it; for HTTP/1.1 its
/// authority becomes the `Host` header (unless one is set) and the request line carries only
/// the path and query.
pub async fn send_request(
    stream: TlsStream<TcpStream>,
    request: Request<String>,
) -> Result<HttpsResponse, BoxError> {
    let negotiated = negotiated(&stream);
    let io = TokioIo::new(stream);
    let mut request = request.map(|body| Full::new(Bytes::from(body)));
    let response = if negotiated.alpn.as_deref() == Some(b"h2") {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        sender.send_request(request).await?
    } else {
        if let Some(authority) = request.uri().authority().cloned()
            && !request.headers().contains_key(http::header::HOST)
        {
            request.headers_mut().insert(
                http::header::HOST,
                HeaderValue::from_str(authority.as_str())?,
            );
        }
        let origin_form: Uri = request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .parse()?;
        *request.uri_mut() = origin_form;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        sender.send_request(request).await?
    };
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok((
        negotiated,
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    ))
}

/// `server_name` as it goes in a URI: IPv6 addresses in brackets.
fn host_for_uri(server_name: &str) -> String {
    match server_name.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => format!("[{ip}]"),
        _ => server_name.to_string(),
    }
}

/// Both addresses in one family: IPv4 if both are IPv4, else both as IPv6 (IPv4-mapped).
fn same_family(src: SocketAddr, dst: SocketAddr) -> Option<(SocketAddr, SocketAddr)> {
    match (src, dst) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) => None,
        _ => {
            let v6 = |a: SocketAddr| match a.ip() {
                IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), a.port()),
                IpAddr::V6(_) => a,
            };
            Some((v6(src), v6(dst)))
        }
    }
}

/// A PROXY protocol version 1 (text) header, e.g.
/// `PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n`; `TCP6` if either address is IPv6 (an IPv4
/// address is then written IPv4-mapped).
pub fn proxy_v1_header(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let (family, src, dst) = match same_family(src, dst) {
        None => ("TCP4", src, dst),
        Some((src, dst)) => ("TCP6", src, dst),
    };
    format!(
        "PROXY {family} {} {} {} {}\r\n",
        src.ip(),
        dst.ip(),
        src.port(),
        dst.port()
    )
    .into_bytes()
}

/// The 12-byte signature that starts every PROXY protocol version 2 header.
pub const PROXY_V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// A PROXY protocol version 2 (binary) header for a proxied TCP connection: the signature,
/// 0x21 (version 2, command PROXY), 0x11 (TCP over IPv4) or 0x21 (TCP over IPv6, used if
/// either address is IPv6), the big-endian length of what follows, then source address,
/// destination address, source port, destination port.
pub fn proxy_v2_header(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut header = PROXY_V2_SIGNATURE.to_vec();
    header.push(0x21);
    let (src, dst) = match same_family(src, dst) {
        None => {
            header.push(0x11);
            (src, dst)
        }
        Some(pair) => {
            header.push(0x21);
            pair
        }
    };
    let mut addresses = Vec::new();
    for addr in [src, dst] {
        match addr.ip() {
            IpAddr::V4(ip) => addresses.extend_from_slice(&ip.octets()),
            IpAddr::V6(ip) => addresses.extend_from_slice(&ip.octets()),
        }
    }
    addresses.extend_from_slice(&src.port().to_be_bytes());
    addresses.extend_from_slice(&dst.port().to_be_bytes());
    let len = u16::try_from(addresses.len()).expect("address block fits in u16");
    header.extend_from_slice(&len.to_be_bytes());
    header.extend_from_slice(&addresses);
    header
}

/// A test server over TLS (HTTP/1.1 or h2 by ALPN) with a certificate for `name` (a DNS name
/// or an IP address) from `pki`; it answers every request with its HTTP version (`HTTP/2.0`).
pub async fn https_test_server(pki: &Pki, name: &str) -> std::net::SocketAddr {
    let (cert, key) = pki.server_cert(name, &[name], CertOptions::default());
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(load_certs(&cert), load_key(&key))
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(stream).await else {
                    return;
                };
                let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                let service = hyper::service::service_fn(
                    |request: http::Request<hyper::body::Incoming>| async move {
                        let version = format!("{:?}", request.version());
                        let mut response = http::Response::new(super::server_text(version));
                        response
                            .headers_mut()
                            .insert("x-server", "tls".parse().unwrap());
                        Ok::<_, std::convert::Infallible>(response)
                    },
                );
                let io = hyper_util::rt::TokioIo::new(stream);
                if h2 {
                    let _ = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(io, service)
                    .await;
                } else {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                }
            });
        }
    });
    addr
}
