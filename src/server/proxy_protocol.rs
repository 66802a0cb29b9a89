//! The PROXY protocol (v1 text and v2 binary) that TCP load balancers put before a
//! connection's first byte to say whose connection it is.
//!
//! On a listener with `proxy_protocol = true` every connection must start with a header, and
//! only peers in `[server] trusted_proxies` may send one: anyone else could claim any address.
//! The header is read exactly (v1 up to its CRLF, at most 107 bytes; v2 its 16-byte prefix and
//! the length it gives), so nothing after it is consumed and TLS or HTTP follows on the same
//! stream. `ppp` parses what was read. A `LOCAL` header (a load balancer's own health check)
//! or an `UNKNOWN` one leaves the peer as the client.

use std::net::SocketAddr;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The v2 signature, the first 12 bytes of every v2 header.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 header, CRLF included (the spec's bound).
const V1_MAX: usize = 107;
/// The most a v2 header may carry after its prefix: addresses and TLVs. Load balancers send
/// far less; this bounds what a peer can make the gateway hold.
const V2_MAX_BODY: usize = 4096;

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("the peer is not in [server] trusted_proxies")]
    UntrustedPeer,
    #[error("the connection does not start with a PROXY protocol header")]
    Missing,
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(String),
    #[error("reading the PROXY protocol header: {0}")]
    Io(#[from] std::io::Error),
}

/// Reads one PROXY header from `stream`; returns the client's address it names, if any.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    let mut first = [0u8; 1];
    stream.read_exact(&mut first).await?;
    let mut header = Vec::with_capacity(64);
    header.push(first[0]);
    match first[0] {
        b'P' => {
            let mut byte = [0u8; 1];
            while !header.ends_with(b"\r\n") {
                if header.len() >= V1_MAX {
                    return Err(ProxyHeaderError::Malformed(
                        "v1 header longer than 107 bytes".into(),
                    ));
                }
                stream.read_exact(&mut byte).await?;
                header.push(byte[0]);
            }
        }
        b'\r' => {
            let mut prefix = [0u8; 15];
            stream.read_exact(&mut prefix).await?;
            header.extend_from_slice(&prefix);
            if &header[..12] != V2_SIGNATURE {
                return Err(ProxyHeaderError::Missing);
            }
            let length = usize::from(u16::from_be_bytes([header[14], header[15]]));
            if length > V2_MAX_BODY {
                return Err(ProxyHeaderError::Malformed(format!(
                    "v2 header says {length} bytes follow (at most {V2_MAX_BODY} taken)"
                )));
            }
            let start = header.len();
            header.resize(start + length, 0);
            stream.read_exact(&mut header[start..]).await?;
        }
        _ => return Err(ProxyHeaderError::Missing),
    }
    parse(&header)
}

/// The client address in a whole header.
fn parse(header: &[u8]) -> Result<Option<SocketAddr>, ProxyHeaderError> {
    use ppp::{HeaderResult, v1, v2};
    match HeaderResult::parse(header) {
        HeaderResult::V1(Ok(header)) => Ok(match header.addresses {
            v1::Addresses::Tcp4(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
            v1::Addresses::Tcp6(a) => Some(SocketAddr::from((a.source_address, a.source_port))),
            v1::Addresses::Unknown => None,
        }),
        HeaderResult::V2(Ok(header)) => Ok(match (header.command, header.addresses) {
            (v2::Command::Local, _) => None,
            (v2::Command::Proxy, v2::Addresses::IPv4(a)) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            (v2::Command::Proxy, v2::Addresses::IPv6(a)) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            (v2::Command::Proxy, _) => None,
        }),
        HeaderResult::V1(Err(e)) => Err(ProxyHeaderError::Malformed(e.to_string())),
        HeaderResult::V2(Err(e)) => Err(ProxyHeaderError::Malformed(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8]) -> (Result<Option<SocketAddr>, ProxyHeaderError>, Vec<u8>) {
        let mut stream = bytes;
        let result = read_header(&mut stream).await;
        (result, stream.to_vec())
    }

    #[tokio::test]
    async fn v1_and_v2_give_the_client_and_leave_the_rest_unread() {
        let (client, rest) = read(b"PROXY TCP4 192.0.2.7 198.51.100.1 40000 443\r\nGET /").await;
        assert_eq!(client.unwrap(), Some("192.0.2.7:40000".parse().unwrap()));
        assert_eq!(rest, b"GET /");

        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[
            0x21, 0x11, 0, 12, 192, 0, 2, 9, 198, 51, 100, 1, 0x9c, 0x40, 1, 187,
        ]);
        v2.extend_from_slice(b"\x16\x03\x01");
        let (client, rest) = read(&v2).await;
        assert_eq!(client.unwrap(), Some("192.0.2.9:40000".parse().unwrap()));
        assert_eq!(rest, b"\x16\x03\x01");

        let (client, _) = read(b"PROXY UNKNOWN\r\n").await;
        assert_eq!(client.unwrap(), None);
    }

    #[tokio::test]
    async fn anything_else_is_refused() {
        for bytes in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"PROXY TCP4 nonsense\r\n",
            b"\r\n\r\n\0\r\nQUIT\n\x21\x11\xff\xff",
            &[b'P'; 200],
            b"PROXY TCP4 1.2.3.4",
        ] {
            assert!(read(bytes).await.0.is_err(), "{bytes:?}");
        }
    }
}
