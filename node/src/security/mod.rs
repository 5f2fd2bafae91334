//! Security of the client listeners and of the peer transport: security protocols, TLS and SASL
//! (docs/security.md).
//!
//! What this module owns:
//! - the security protocols of Kafka's `listener.security.protocol.map` ([`SecurityProtocol`])
//!   and what one listener needs to serve its protocol ([`ListenerSecurity`]);
//! - TLS from PEM files and the mTLS principal ([`tls`]);
//! - the SASL mechanisms and the users they check ([`sasl`]), over the pure SCRAM exchange
//!   ([`scram`]).
//! - how brokers open peer connections to each other as `inter.broker.listener.name` says:
//!   TLS both ways, a SASL login, the principal's check ([`peer`]).
//!
//! The wire layer (`wire::server`) runs the TLS handshake and the SASL exchange on each
//! connection before any request reaches the broker, and keeps the connection's [`Principal`]
//! in every request's context.
//!
//! What always holds:
//! - a [`ListenerSecurity`] has a TLS configuration exactly when its protocol is SSL or
//!   SASL_SSL, and a SASL configuration with at least one mechanism and one user exactly when
//!   its protocol is SASL_PLAINTEXT or SASL_SSL ([`ListenerSecurity::new`] checks it);
//! - on a SASL listener nothing but ApiVersions, SaslHandshake and SaslAuthenticate is served
//!   before the exchange succeeds.

pub mod peer;
pub mod sasl;
pub mod scram;
#[doc(hidden)]
pub mod testing;
pub mod tls;

use std::fmt;
use std::sync::Arc;

/// Kafka's security protocols, with the ids Kafka gives them (`SecurityProtocol.id`, also the
/// `security_protocol` of a broker registration's endpoint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SecurityProtocol {
    /// No TLS, no authentication.
    Plaintext,
    /// TLS; the principal is the client certificate's subject, or ANONYMOUS.
    Ssl,
    /// SASL without TLS.
    SaslPlaintext,
    /// SASL inside TLS.
    SaslSsl,
}

impl SecurityProtocol {
    /// Every protocol.
    pub const ALL: [SecurityProtocol; 4] = [
        SecurityProtocol::Plaintext,
        SecurityProtocol::Ssl,
        SecurityProtocol::SaslPlaintext,
        SecurityProtocol::SaslSsl,
    ];

    /// Kafka's name.
    pub fn name(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "PLAINTEXT",
            SecurityProtocol::Ssl => "SSL",
            SecurityProtocol::SaslPlaintext => "SASL_PLAINTEXT",
            SecurityProtocol::SaslSsl => "SASL_SSL",
        }
    }

    /// The protocol called `name` (case-insensitive, as Kafka parses it).
    pub fn from_name(name: &str) -> Option<SecurityProtocol> {
        SecurityProtocol::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(name))
    }

    /// Kafka's id.
    pub fn id(self) -> i16 {
        match self {
            SecurityProtocol::Plaintext => 0,
            SecurityProtocol::Ssl => 1,
            SecurityProtocol::SaslPlaintext => 2,
            SecurityProtocol::SaslSsl => 3,
        }
    }

    /// Whether connections are inside TLS.
    pub fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    /// Whether clients authenticate with SASL.
    pub fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

impl fmt::Display for SecurityProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `ssl.client.auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificate is asked for.
    None,
    /// A certificate is asked for; a client may send none.
    Requested,
    /// A client without a valid certificate fails the handshake.
    Required,
}

impl ClientAuth {
    /// The setting's value called `name` (Kafka's: `none`, `requested`, `required`).
    pub fn from_name(name: &str) -> Option<ClientAuth> {
        match name.to_ascii_lowercase().as_str() {
            "none" => Some(ClientAuth::None),
            "requested" => Some(ClientAuth::Requested),
            "required" => Some(ClientAuth::Required),
            _ => None,
        }
    }
}

/// A TLS version keel may offer (`ssl.enabled.protocols`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    /// `TLSv1.2`.
    Tls12,
    /// `TLSv1.3`.
    Tls13,
}

impl TlsVersion {
    /// The version called `name` in Kafka's spelling (`TLSv1.2`, `TLSv1.3`).
    pub fn from_name(name: &str) -> Option<TlsVersion> {
        match name {
            "TLSv1.2" => Some(TlsVersion::Tls12),
            "TLSv1.3" => Some(TlsVersion::Tls13),
            _ => None,
        }
    }
}

/// Who a connection acts as, in Kafka's `Type:name` form: `User:alice` after SASL,
/// `User:CN=alice,O=Example` from a client certificate, `User:ANONYMOUS` otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal(Arc<str>);

impl Principal {
    /// The principal of a connection that did not authenticate (Kafka's
    /// `KafkaPrincipal.ANONYMOUS`).
    pub fn anonymous() -> Principal {
        Principal(Arc::from("User:ANONYMOUS"))
    }

    /// `User:<name>`.
    pub fn user(name: &str) -> Principal {
        Principal(Arc::from(format!("User:{name}")))
    }

    /// A principal already in `Type:name` form.
    pub fn from_text(text: String) -> Principal {
        Principal(Arc::from(text))
    }

    /// `Type:name`.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What one listener serves: its name, protocol, and the TLS and SASL configurations its
/// protocol needs.
#[derive(Clone)]
pub struct ListenerSecurity {
    name: Arc<str>,
    protocol: SecurityProtocol,
    tls: Option<Arc<rustls::ServerConfig>>,
    sasl: Option<Arc<sasl::SaslConfig>>,
}

impl fmt::Debug for ListenerSecurity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenerSecurity")
            .field("name", &self.name)
            .field("protocol", &self.protocol)
            .field("tls", &self.tls.is_some())
            .field("sasl", &self.sasl.as_ref().map(|s| &s.mechanisms))
            .finish()
    }
}

impl ListenerSecurity {
    /// A PLAINTEXT listener called `name`.
    pub fn plaintext(name: &str) -> ListenerSecurity {
        ListenerSecurity {
            name: Arc::from(name),
            protocol: SecurityProtocol::Plaintext,
            tls: None,
            sasl: None,
        }
    }

    /// A listener called `name` serving `protocol`, with the TLS and SASL configurations it
    /// needs (extra ones are dropped). Fails, saying what is missing, if the protocol needs
    /// TLS without `tls`, or SASL without `sasl` or with no mechanism or no user.
    pub fn new(
        name: &str,
        protocol: SecurityProtocol,
        tls: Option<Arc<rustls::ServerConfig>>,
        sasl: Option<Arc<sasl::SaslConfig>>,
    ) -> Result<ListenerSecurity, String> {
        let tls = if protocol.uses_tls() {
            Some(tls.ok_or_else(|| {
                format!("listener {name} ({protocol}) needs TLS settings (ssl.keystore.*)")
            })?)
        } else {
            None
        };
        let sasl = if protocol.uses_sasl() {
            let sasl = sasl.ok_or_else(|| {
                format!("listener {name} ({protocol}) needs SASL settings (keel.sasl.users)")
            })?;
            if sasl.mechanisms.is_empty() {
                return Err(format!(
                    "listener {name} ({protocol}): sasl.enabled.mechanisms is empty"
                ));
            }
            if sasl.users.is_empty() {
                return Err(format!(
                    "listener {name} ({protocol}): no SASL users (keel.sasl.users), so nobody \
                     could log in"
                ));
            }
            Some(sasl)
        } else {
            None
        };
        Ok(ListenerSecurity {
            name: Arc::from(name),
            protocol,
            tls,
            sasl,
        })
    }

    /// The listener's name (upper case).
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// Its security protocol.
    pub fn protocol(&self) -> SecurityProtocol {
        self.protocol
    }

    /// The TLS configuration, exactly for SSL and SASL_SSL.
    pub fn tls(&self) -> Option<&Arc<rustls::ServerConfig>> {
        self.tls.as_ref()
    }

    /// The SASL configuration, exactly for SASL_PLAINTEXT and SASL_SSL.
    pub fn sasl(&self) -> Option<&Arc<sasl::SaslConfig>> {
        self.sasl.as_ref()
    }
}

impl Default for ListenerSecurity {
    fn default() -> Self {
        ListenerSecurity::plaintext("PLAINTEXT")
    }
}
