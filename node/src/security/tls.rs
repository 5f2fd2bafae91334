//! TLS for the SSL and SASL_SSL listeners: a rustls server configuration built from PEM
//! (Kafka's `ssl.keystore.type=PEM` settings), and the mTLS principal read from a client
//! certificate's subject.
//!
//! What always holds:
//! - only TLS 1.2 and TLS 1.3 are offered (`ssl.enabled.protocols` picks among them), with
//!   rustls's ring provider and its default cipher suites;
//! - with `ssl.client.auth=required` a client without a certificate that chains to the
//!   truststore fails the handshake; with `requested` it may send none (and is `ANONYMOUS`),
//!   but a certificate it sends must chain to the truststore;
//! - [`principal_from_certificate`] reads only what it has bounds-checked: a certificate that
//!   rustls accepted but this reader cannot follow gives `None`, never a panic.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::{ClientAuth, TlsVersion};

/// Where PEM text comes from: a file (`*.location`) or the setting's own value (Kafka's inline
/// `ssl.keystore.certificate.chain`, `ssl.keystore.key`, `ssl.truststore.certificates`).
#[derive(Clone, PartialEq, Eq)]
pub enum PemSource {
    /// A file to read at startup.
    File(PathBuf),
    /// PEM text given in the configuration.
    Inline(String),
}

impl std::fmt::Debug for PemSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PemSource::File(p) => write!(f, "File({})", p.display()),
            // Inline text may be a private key: never in logs.
            PemSource::Inline(_) => f.write_str("Inline(..)"),
        }
    }
}

impl PemSource {
    fn read(&self) -> Result<Vec<u8>, TlsError> {
        match self {
            PemSource::File(path) => std::fs::read(path).map_err(|e| TlsError::Read {
                path: path.clone(),
                error: e.to_string(),
            }),
            PemSource::Inline(text) => Ok(text.as_bytes().to_vec()),
        }
    }

    fn describe(&self, setting: &str) -> String {
        match self {
            PemSource::File(p) => format!("{} ({setting})", p.display()),
            PemSource::Inline(_) => setting.to_string(),
        }
    }
}

/// The server's certificate chain and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keystore {
    /// `ssl.keystore.location`: one PEM file with the private key and the certificate chain.
    File(PathBuf),
    /// `ssl.keystore.certificate.chain` and `ssl.keystore.key`, each PEM text.
    Inline {
        /// The chain, leaf first.
        chain: PemSource,
        /// The private key (PKCS#8, PKCS#1 or SEC1, unencrypted).
        key: PemSource,
    },
}

/// Everything TLS needs, as configured (files not read yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// The server's chain and key.
    pub keystore: Keystore,
    /// CA certificates that client certificates must chain to (`ssl.truststore.*`); needed
    /// unless `client_auth` is `None`.
    pub truststore: Option<PemSource>,
    /// `ssl.client.auth`.
    pub client_auth: ClientAuth,
    /// `ssl.enabled.protocols`: a non-empty subset of TLS 1.2 and 1.3.
    pub versions: Vec<TlsVersion>,
}

/// Why TLS could not be set up (at startup: the broker does not start).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {}: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        error: String,
    },
    /// The PEM holds no usable item of the kind needed.
    #[error("{what}: {why}")]
    Pem {
        /// Which setting.
        what: String,
        /// What was wrong.
        why: String,
    },
    /// rustls refused the configuration (say, a key that does not match the certificate).
    #[error("TLS configuration: {0}")]
    Rustls(String),
}

fn certificates(bytes: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what: what.to_string(),
            why: format!("not valid PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what: what.to_string(),
            why: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

fn private_key(bytes: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    if std::str::from_utf8(bytes).is_ok_and(|t| t.contains("ENCRYPTED PRIVATE KEY")) {
        return Err(TlsError::Pem {
            what: what.to_string(),
            why: "the private key is encrypted; keel needs an unencrypted key (protect the \
                  file's permissions instead)"
                .into(),
        });
    }
    PrivateKeyDer::from_pem_slice(bytes).map_err(|e| TlsError::Pem {
        what: what.to_string(),
        why: format!("no unencrypted PRIVATE KEY block ({e})"),
    })
}

/// The keystore's certificate chain (leaf first) and private key.
fn keystore(
    settings: &TlsSettings,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    Ok(match &settings.keystore {
        Keystore::File(path) => {
            let source = PemSource::File(path.clone());
            let bytes = source.read()?;
            let what = source.describe("ssl.keystore.location");
            (certificates(&bytes, &what)?, private_key(&bytes, &what)?)
        }
        Keystore::Inline { chain, key } => (
            certificates(
                &chain.read()?,
                &chain.describe("ssl.keystore.certificate.chain"),
            )?,
            private_key(&key.read()?, &key.describe("ssl.keystore.key"))?,
        ),
    })
}

/// The truststore's CA certificates; `why_needed` says what needs one when it is missing.
fn truststore(settings: &TlsSettings, why_needed: &str) -> Result<RootCertStore, TlsError> {
    let Some(source) = &settings.truststore else {
        return Err(TlsError::Pem {
            what: "ssl.truststore".into(),
            why: why_needed.into(),
        });
    };
    let what = source.describe("ssl.truststore");
    let mut roots = RootCertStore::empty();
    for cert in certificates(&source.read()?, &what)? {
        roots.add(cert).map_err(|e| TlsError::Pem {
            what: what.clone(),
            why: format!("not a CA certificate rustls accepts: {e}"),
        })?;
    }
    Ok(roots)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    // ring, not aws-lc-rs: ring draws its randomness through getrandom 0.2, which the
    // simulator routes to madsim (docs/simulation.md), and builds with a C compiler alone.
    // rustls 0.23.48 deprecates ring's provider only because it has no post-quantum key
    // exchange; X25519 and the NIST curves remain.
    #[allow(deprecated)]
    Arc::new(rustls::crypto::ring::default_provider())
}

fn protocol_versions(settings: &TlsSettings) -> Vec<&'static rustls::SupportedProtocolVersion> {
    settings
        .versions
        .iter()
        .map(|v| match v {
            TlsVersion::Tls12 => &rustls::version::TLS12,
            TlsVersion::Tls13 => &rustls::version::TLS13,
        })
        .collect()
}

/// Reads the PEM files and builds the rustls configuration shared by every TLS listener.
pub fn server_config(settings: &TlsSettings) -> Result<Arc<ServerConfig>, TlsError> {
    let (chain, key) = keystore(settings)?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&protocol_versions(settings))
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    let builder = match settings.client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Requested | ClientAuth::Required => {
            let roots = truststore(settings, "ssl.client.auth needs a truststore")?;
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if settings.client_auth == ClientAuth::Requested {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| TlsError::Rustls(e.to_string()))?,
            )
        }
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    Ok(Arc::new(config))
}

/// The acceptor's and the dialler's TLS configurations between brokers, and the principal of
/// this broker's certificate.
pub type PeerConfigs = (Arc<ServerConfig>, Arc<rustls::ClientConfig>, Option<String>);

/// TLS between brokers, from the same PEM settings: the acceptor's configuration (a client
/// certificate chaining to the truststore required, whatever `ssl.client.auth` says), the
/// dialler's (the truststore, and the keystore's chain as its client certificate), and the
/// principal of this broker's own certificate (Kafka's form, `User:CN=...`).
pub fn peer_configs(settings: &TlsSettings) -> Result<PeerConfigs, TlsError> {
    let required = TlsSettings {
        client_auth: ClientAuth::Required,
        ..settings.clone()
    };
    let server = server_config(&required)?;
    let (chain, key) = keystore(settings)?;
    let own = chain
        .first()
        .and_then(|leaf| principal_from_certificate(leaf));
    let roots = truststore(
        settings,
        "the inter-broker listener uses TLS: brokers check each other's certificates against \
         a truststore",
    )?;
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&protocol_versions(settings))
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
    Ok((server, Arc::new(client), own))
}

/// The principal of a client certificate, as Kafka's default principal builder makes it:
/// `User:` and the subject in RFC 2253 form (Java's `X500Principal.getName()`), for example
/// `User:CN=alice,OU=eng,O=Example,C=US`. `None` if the certificate cannot be read.
pub fn principal_from_certificate(der: &[u8]) -> Option<String> {
    Some(format!("User:{}", subject_rfc2253(der)?))
}

/// One DER element: (tag, contents, the bytes after it).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;

/// The subject of an X.509 certificate in RFC 2253 form: RDNs last to first, attributes of
/// one RDN joined by `+`.
fn subject_rfc2253(der: &[u8]) -> Option<String> {
    let (SEQUENCE, certificate, _) = tlv(der)? else {
        return None;
    };
    let (SEQUENCE, tbs, _) = tlv(certificate)? else {
        return None;
    };
    let mut rest = tbs;
    // [0] EXPLICIT version, optional.
    if rest.first() == Some(&0xa0) {
        rest = tlv(rest)?.2;
    }
    // serialNumber, signature, issuer, validity, then subject.
    for _ in 0..4 {
        rest = tlv(rest)?.2;
    }
    let (SEQUENCE, mut name, _) = tlv(rest)? else {
        return None;
    };
    let mut rdns = Vec::new();
    while !name.is_empty() {
        let (SET, mut set, after) = tlv(name)? else {
            return None;
        };
        name = after;
        let mut attributes = Vec::new();
        while !set.is_empty() {
            let (SEQUENCE, attribute, after) = tlv(set)? else {
                return None;
            };
            set = after;
            let (OID, oid, value) = tlv(attribute)? else {
                return None;
            };
            let (value_tag, value_bytes, _) = tlv(value)?;
            let oid = oid_text(oid)?;
            let text = match attribute_name(&oid) {
                Some(short) => match string_value(value_tag, value_bytes) {
                    Some(s) => format!("{short}={}", escape_rfc2253(&s)),
                    None => format!("{short}=#{}", hex(value)),
                },
                None => format!("{oid}=#{}", hex(value)),
            };
            attributes.push(text);
        }
        rdns.push(attributes.join("+"));
    }
    rdns.reverse();
    Some(rdns.join(","))
}

/// An OID's dotted form.
fn oid_text(bytes: &[u8]) -> Option<String> {
    let (&first, rest) = bytes.split_first()?;
    let mut parts = vec![u64::from(first / 40).min(2), 0];
    parts[1] = u64::from(first) - parts[0] * 40;
    let mut value: u64 = 0;
    for &b in rest {
        value = value.checked_mul(128)? | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            parts.push(value);
            value = 0;
        }
    }
    Some(
        parts
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join("."),
    )
}

/// The keywords RFC 2253 (and Java's `X500Principal`) write by name.
fn attribute_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.3" => "CN",
        "2.5.4.6" => "C",
        "2.5.4.7" => "L",
        "2.5.4.8" => "ST",
        "2.5.4.9" => "STREET",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "0.9.2342.19200300.100.1.25" => "DC",
        "0.9.2342.19200300.100.1.1" => "UID",
        _ => return None,
    })
}

/// A directory string's text: UTF8String, PrintableString, IA5String, TeletexString (as
/// Latin-1) or BMPString.
fn string_value(tag: u8, bytes: &[u8]) -> Option<String> {
    match tag {
        0x0c | 0x13 | 0x16 => std::str::from_utf8(bytes).ok().map(str::to_string),
        0x14 => Some(bytes.iter().map(|b| char::from(*b)).collect()),
        0x1e if bytes.len() % 2 == 0 => {
            let units: Vec<u16> = bytes
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        _ => None,
    }
}

/// RFC 2253 section 2.4: `,+"\<>;` escaped, and a leading `#` or space and a trailing space.
fn escape_rfc2253(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        let edge = (i == 0 && (c == '#' || c == ' ')) || (i == last && c == ' ');
        if edge || matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate_with(subject: rcgen::DistinguishedName) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["client".into()]).unwrap();
        params.distinguished_name = subject;
        params.self_signed(&key).unwrap().der().to_vec()
    }

    /// Reference: Kafka's DefaultKafkaPrincipalBuilder (`User:` + X500Principal.getName(),
    /// RFC 2253: the last RDN first).
    #[test]
    fn principal_is_the_subject_in_rfc2253_order() {
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CountryName, "US");
        dn.push(rcgen::DnType::OrganizationName, "Example, Inc.");
        dn.push(rcgen::DnType::OrganizationalUnitName, "eng");
        dn.push(rcgen::DnType::CommonName, "alice");
        let der = certificate_with(dn);
        assert_eq!(
            principal_from_certificate(&der).as_deref(),
            Some("User:CN=alice,OU=eng,O=Example\\, Inc.,C=US")
        );
    }

    #[test]
    fn unknown_attributes_are_dotted_oids_with_hex_values() {
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, "bob");
        dn.push(
            rcgen::DnType::CustomDnType(vec![1, 2, 3, 4]),
            rcgen::DnValue::Utf8String("x".into()),
        );
        let der = certificate_with(dn);
        assert_eq!(
            principal_from_certificate(&der).as_deref(),
            Some("User:1.2.3.4=#0c0178,CN=bob")
        );
    }

    #[test]
    fn truncated_or_garbage_certificates_give_none() {
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, "carol");
        let der = certificate_with(dn);
        for cut in 0..der.len() {
            // Any prefix either parses (the subject lies before the cut) or gives None.
            let _ = principal_from_certificate(&der[..cut]);
        }
        assert_eq!(principal_from_certificate(&[0x30, 0x84, 0xff]), None);
        assert_eq!(principal_from_certificate(&[]), None);
    }

    /// Startup refuses a keystore rustls could not serve, saying which setting is wrong.
    #[test]
    fn bad_keystores_are_refused_at_startup() {
        let key = rcgen::KeyPair::generate().unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let settings = |chain: String, key: String| TlsSettings {
            keystore: Keystore::Inline {
                chain: PemSource::Inline(chain),
                key: PemSource::Inline(key),
            },
            truststore: None,
            client_auth: ClientAuth::None,
            versions: vec![TlsVersion::Tls12, TlsVersion::Tls13],
        };
        assert!(server_config(&settings(cert.pem(), key.serialize_pem())).is_ok());
        let cases = [
            (cert.pem(), other.serialize_pem(), "TLS configuration"),
            (String::new(), key.serialize_pem(), "no CERTIFICATE block"),
            (cert.pem(), cert.pem(), "no unencrypted PRIVATE KEY block"),
            (
                cert.pem(),
                "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n"
                    .into(),
                "is encrypted",
            ),
        ];
        for (chain, key, expected) in cases {
            let e = server_config(&settings(chain, key))
                .unwrap_err()
                .to_string();
            assert!(e.contains(expected), "{e}");
        }
        let missing = TlsSettings {
            keystore: Keystore::File("/nonexistent/keel.pem".into()),
            ..settings(cert.pem(), key.serialize_pem())
        };
        let e = server_config(&missing).unwrap_err().to_string();
        assert!(e.contains("cannot read /nonexistent/keel.pem"), "{e}");
    }

    #[test]
    fn escapes_special_characters() {
        assert_eq!(escape_rfc2253("#a b "), "\\#a b\\ ");
        assert_eq!(escape_rfc2253("a+b;c<d>\"e\\"), "a\\+b\\;c\\<d\\>\\\"e\\\\");
        assert_eq!(oid_text(&[0x55, 0x04, 0x03]).as_deref(), Some("2.5.4.3"));
        assert_eq!(
            oid_text(&[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19]).as_deref(),
            Some("0.9.2342.19200300.100.1.25")
        );
    }
}
