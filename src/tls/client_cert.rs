//! The identity in a verified client certificate (mTLS), as guests see it.
//!
//! rustls has already checked the chain against the listener's client CA; this only reads the
//! leaf's subject, as an RFC 4514 distinguished name (`CN=client,O=Example`), and its subject
//! alternative names (DNS names, IP addresses, URIs and e-mail addresses). Both reach the guest
//! as `x-wasmgate-client-cert-subject` and `-san` (`client_identity`), so values that could not
//! be a header value are left out there.

use crate::connection_info::ClientCert;
use rustls::pki_types::CertificateDer;
use std::fmt::Write;
use std::net::IpAddr;
use x509_parser::extensions::GeneralName;
use x509_parser::objects::{oid_registry, oid2abbrev};

/// The identity in `leaf`; `None` if it cannot be parsed (rustls accepted it, so that would
/// be a certificate only webpki reads).
pub fn identity(leaf: &CertificateDer<'_>) -> Option<ClientCert> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let mut subject = String::new();
    // RFC 4514 writes the last RDN of the sequence first.
    let rdns: Vec<_> = cert.subject().iter_rdn().collect();
    for rdn in rdns.into_iter().rev() {
        for (i, attribute) in rdn.iter().enumerate() {
            if !subject.is_empty() {
                subject.push(if i == 0 { ',' } else { '+' });
            }
            match oid2abbrev(attribute.attr_type(), oid_registry()) {
                Ok(name) => subject.push_str(name),
                Err(_) => subject.push_str(&attribute.attr_type().to_id_string()),
            }
            subject.push('=');
            match attribute.as_str() {
                Ok(value) => escape_into(&mut subject, value),
                Err(_) => {
                    subject.push('#');
                    for byte in attribute.as_slice() {
                        let _ = write!(subject, "{byte:02x}");
                    }
                }
            }
        }
    }
    let mut san = Vec::new();
    if let Ok(Some(names)) = cert.subject_alternative_name() {
        for name in &names.value.general_names {
            match name {
                GeneralName::DNSName(dns) => san.push(format!("DNS:{dns}")),
                GeneralName::RFC822Name(mail) => san.push(format!("email:{mail}")),
                GeneralName::URI(uri) => san.push(format!("URI:{uri}")),
                GeneralName::IPAddress(bytes) => {
                    let ip = match bytes.len() {
                        4 => <[u8; 4]>::try_from(*bytes).ok().map(IpAddr::from),
                        16 => <[u8; 16]>::try_from(*bytes).ok().map(IpAddr::from),
                        _ => None,
                    };
                    if let Some(ip) = ip {
                        san.push(format!("IP:{ip}"));
                    }
                }
                _ => {}
            }
        }
    }
    Some(ClientCert { subject, san })
}

/// An attribute value with RFC 4514's special characters escaped.
fn escape_into(out: &mut String, value: &str) {
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_characters_are_escaped() {
        let mut out = String::new();
        escape_into(&mut out, " a,b+c=\"d\" ");
        assert_eq!(out, "\\ a\\,b\\+c\\=\\\"d\\\"\\ ");
    }
}
