//! Security of the peer transport (`crate::peer`): how two brokers open a connection to each
//! other, as `inter.broker.listener.name`'s security protocol says (docs/security.md, "Between
//! brokers").
//!
//! The opening of a connection, dialler (D) to acceptor (A):
//! ```text
//!  TLS handshake, both sides present certificates      (SSL, SASL_SSL)
//!  D ─► A  hello: magic "keel" u32, node id i32        (always)
//!  D ─► A  token: len u32 | bytes                      ┐ (SASL_PLAINTEXT, SASL_SSL: one for
//!  A ─► D  reply: status u8 | len u32 | bytes          ┘  PLAIN, two for SCRAM)
//!  A ─► D  reply: status u8 | len u32 (0)              (SSL: the certificate's verdict)
//! ```
//! A reply's status is 0 (accepted: the last reply, carrying SCRAM's server-final), 1 (a
//! challenge: SCRAM's server-first) or 2 (refused: the acceptor closes).
//! then frames from D to A only (`crate::peer`). Without security (PLAINTEXT, or no
//! inter-broker listener) only the hello is sent and A answers nothing, as before this
//! module existed.
//!
//! What always holds:
//! - with TLS, both certificates chain to the truststore (rustls's verifiers; the dialler also
//!   checks the acceptor's name, the host of its quorum address), and only TLS 1.2 and 1.3 run;
//! - the acceptor hands a connection on (and so reads a frame from it) only after the peer's
//!   principal is accepted: the broker's own inter-broker principal or a principal in
//!   `super.users`. Anything else is refused before a frame is read, so it changes nothing;
//! - a handshake that does not finish in [`PEER_HANDSHAKE_TIMEOUT`] is dropped, and no token
//!   above [`PEER_TOKEN_BYTES_MAX`] is read;
//! - peers authenticate against the users of `keel.sasl.users` only, never the SCRAM
//!   credentials of the metadata log: that log travels over these connections, so a broker
//!   that is catching up must be able to log in before it has read it.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::sasl::{Mechanism, SaslExchange, SaslUsers, Step};
use super::scram::ScramClient;
use super::{tls, Principal, SecurityProtocol};

/// How long the whole opening of a peer connection may take (TLS and login).
pub const PEER_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest login token either side reads (SCRAM's messages are a few hundred bytes).
pub const PEER_TOKEN_BYTES_MAX: usize = 16 << 10;
/// The hello's magic, so that a stray client is refused at once.
pub const HELLO_MAGIC: u32 = 0x6b65_656c; // "keel"

/// The acceptor's verdict: the peer is in.
const ACCEPTED: u8 = 0;
/// The acceptor's SCRAM challenge: another token is expected.
const CHALLENGE: u8 = 1;
/// The acceptor's verdict: the peer is not; the connection closes.
const REFUSED: u8 = 2;

/// A stream the peer transport reads or writes: a TCP stream, or TLS over one.
pub trait PeerIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> PeerIo for T {}

/// A peer connection once opened.
pub type PeerStream = Box<dyn PeerIo>;

/// TLS between brokers: the acceptor's configuration (client certificates required) and the
/// dialler's (its own certificate, the truststore, and the name to check for each peer).
pub struct PeerTls {
    /// The acceptor's configuration: client certificates required.
    pub server: Arc<rustls::ServerConfig>,
    /// The dialler's configuration: the truststore and this broker's certificate.
    pub client: Arc<rustls::ClientConfig>,
    /// The name each peer's certificate must carry: the host of its quorum address.
    pub server_names: BTreeMap<i32, ServerName<'static>>,
}

/// A SASL login between brokers.
pub struct PeerSasl {
    /// `sasl.mechanism.inter.broker.protocol`.
    pub mechanism: Mechanism,
    /// `keel.inter.broker.sasl.username`.
    pub user: String,
    /// Its password, from `keel.sasl.users`.
    pub password: String,
    /// The users a peer may log in as (`keel.sasl.users`, not the metadata log's).
    pub users: SaslUsers,
}

/// The security of one broker's peer transport.
#[derive(Default)]
pub struct PeerSecurity {
    /// The inter-broker listener's name and protocol; `None`: plaintext.
    listener: Option<(String, SecurityProtocol)>,
    tls: Option<PeerTls>,
    sasl: Option<PeerSasl>,
    /// The principals a peer may be.
    accepted: BTreeSet<String>,
}

impl fmt::Debug for PeerSecurity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the password.
        f.debug_struct("PeerSecurity")
            .field("listener", &self.listener)
            .field("tls", &self.tls.is_some())
            .field("sasl", &self.sasl.as_ref().map(|s| (s.mechanism, &s.user)))
            .field("accepted", &self.accepted)
            .finish()
    }
}

/// Why a peer connection could not be opened. The acceptor logs one line with it; the
/// dialler redials with backoff.
#[derive(Debug, thiserror::Error)]
pub enum PeerAuthError {
    /// The connection failed or closed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The TLS handshake failed: a plaintext peer, or a certificate the truststore does not
    /// vouch for.
    #[error("TLS handshake failed (a plaintext peer, or an untrusted certificate?): {0}")]
    Tls(std::io::Error),
    /// The opening did not finish in time.
    #[error("the handshake did not finish within {PEER_HANDSHAKE_TIMEOUT:?}")]
    Timeout,
    /// The first bytes were not a hello.
    #[error("no hello (not a keel broker, or TLS expected by the peer)")]
    Hello,
    /// The login failed (the reason, never a secret).
    #[error("SASL {mechanism} login failed: {reason}")]
    Sasl {
        /// The mechanism.
        mechanism: Mechanism,
        /// Why.
        reason: String,
    },
    /// The peer authenticated as a principal that is not a broker.
    #[error("{0} is neither this broker's inter-broker principal nor in super.users")]
    NotABroker(Principal),
    /// A TLS peer without a certificate (cannot happen with rustls's required client auth).
    #[error("no client certificate")]
    NoCertificate,
    /// The acceptor refused this broker.
    #[error("the peer refused this broker's login")]
    Refused,
    /// No name to check the peer's certificate against.
    #[error("no TLS server name for peer {0}")]
    NoServerName(i32),
    /// A message that breaks the opening's protocol.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
}

impl PeerSecurity {
    /// No security: hello, then frames (the simulator's and a plaintext cluster's transport).
    pub fn plaintext() -> PeerSecurity {
        PeerSecurity::default()
    }

    /// The security of the inter-broker listener `listener` with `protocol`: `tls` exactly
    /// when it uses TLS, `sasl` exactly when it uses SASL; `super_users` are accepted as peers
    /// besides this broker's own principal (its SASL user, else its certificate's subject).
    pub fn new(
        listener: &str,
        protocol: SecurityProtocol,
        tls: Option<PeerTls>,
        sasl: Option<PeerSasl>,
        own_certificate_principal: Option<Principal>,
        super_users: &BTreeSet<String>,
    ) -> Result<PeerSecurity, String> {
        if protocol.uses_tls() != tls.is_some() || protocol.uses_sasl() != sasl.is_some() {
            return Err(format!(
                "the inter-broker listener {listener} ({protocol}) needs TLS settings exactly \
                 when it uses TLS and a SASL login exactly when it uses SASL"
            ));
        }
        let own = match (&sasl, own_certificate_principal) {
            (Some(s), _) => Some(Principal::user(&s.user)),
            (None, own) => own,
        };
        let mut accepted = super_users.clone();
        if protocol != SecurityProtocol::Plaintext {
            let own = own.ok_or_else(|| {
                format!(
                    "the inter-broker listener {listener} ({protocol}): this broker's \
                     certificate has no readable subject to be its principal"
                )
            })?;
            accepted.insert(own.as_str().to_string());
        }
        Ok(PeerSecurity {
            listener: Some((listener.to_string(), protocol)),
            tls,
            sasl,
            accepted,
        })
    }

    /// The inter-broker protocol (PLAINTEXT without an inter-broker listener).
    pub fn protocol(&self) -> SecurityProtocol {
        self.listener
            .as_ref()
            .map_or(SecurityProtocol::Plaintext, |(_, p)| *p)
    }

    /// Opens a connection to peer `peer` on `stream` as broker `node_id`: TLS, the hello, the
    /// login; within [`PEER_HANDSHAKE_TIMEOUT`].
    pub async fn dial(
        &self,
        stream: TcpStream,
        node_id: i32,
        peer: i32,
    ) -> Result<PeerStream, PeerAuthError> {
        tokio::time::timeout(
            PEER_HANDSHAKE_TIMEOUT,
            self.dial_inner(stream, node_id, peer),
        )
        .await
        .map_err(|_| PeerAuthError::Timeout)?
    }

    async fn dial_inner(
        &self,
        stream: TcpStream,
        node_id: i32,
        peer: i32,
    ) -> Result<PeerStream, PeerAuthError> {
        let _ = stream.set_nodelay(true);
        let mut stream: PeerStream = match &self.tls {
            None => Box::new(stream),
            Some(t) => {
                let name = t
                    .server_names
                    .get(&peer)
                    .cloned()
                    .ok_or(PeerAuthError::NoServerName(peer))?;
                let tls = tokio_rustls::TlsConnector::from(t.client.clone())
                    .connect(name, stream)
                    .await
                    .map_err(PeerAuthError::Tls)?;
                Box::new(tls)
            }
        };
        let mut hello = [0u8; 8];
        hello[..4].copy_from_slice(&HELLO_MAGIC.to_be_bytes());
        hello[4..].copy_from_slice(&node_id.to_be_bytes());
        stream.write_all(&hello).await?;
        stream.flush().await?;
        match &self.sasl {
            Some(sasl) => login(&mut stream, sasl).await?,
            None if self.tls.is_some() => match read_reply(&mut stream).await? {
                (ACCEPTED, _) => {}
                (REFUSED, _) => return Err(PeerAuthError::Refused),
                _ => return Err(PeerAuthError::Protocol("unexpected reply to a TLS hello")),
            },
            None => {}
        }
        Ok(stream)
    }

    /// Opens a connection a peer dialled: TLS, the hello, the login, the principal's check;
    /// within [`PEER_HANDSHAKE_TIMEOUT`]. Returns the stream, the peer's node id and its
    /// principal. On `Err` nothing was read past the opening.
    pub async fn accept(
        &self,
        stream: TcpStream,
    ) -> Result<(PeerStream, i32, Principal), PeerAuthError> {
        tokio::time::timeout(PEER_HANDSHAKE_TIMEOUT, self.accept_inner(stream))
            .await
            .map_err(|_| PeerAuthError::Timeout)?
    }

    async fn accept_inner(
        &self,
        stream: TcpStream,
    ) -> Result<(PeerStream, i32, Principal), PeerAuthError> {
        let (mut stream, certificate): (PeerStream, Option<Principal>) = match &self.tls {
            None => (Box::new(stream), None),
            Some(t) => {
                let tls = tokio_rustls::TlsAcceptor::from(t.server.clone())
                    .accept(stream)
                    .await
                    .map_err(PeerAuthError::Tls)?;
                let principal = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(|leaf| tls::principal_from_certificate(leaf))
                    .map(Principal::from_text)
                    .ok_or(PeerAuthError::NoCertificate)?;
                (Box::new(tls), Some(principal))
            }
        };
        let mut hello = [0u8; 8];
        stream
            .read_exact(&mut hello)
            .await
            .map_err(|_| PeerAuthError::Hello)?;
        let (magic, id) = hello.split_at(4);
        if magic != HELLO_MAGIC.to_be_bytes() {
            return Err(PeerAuthError::Hello);
        }
        let from = i32::from_be_bytes(id.try_into().expect("4 bytes"));
        let (principal, last_token) = match (&self.sasl, certificate) {
            (Some(sasl), _) => match authenticate(&mut stream, sasl).await {
                Ok(done) => done,
                Err(e) => {
                    let _ = write_reply(&mut stream, REFUSED, &[]).await;
                    return Err(e);
                }
            },
            (None, Some(p)) => (p, Vec::new()),
            (None, None) => return Ok((stream, from, Principal::anonymous())),
        };
        if !self.accepted.contains(principal.as_str()) {
            let _ = write_reply(&mut stream, REFUSED, &[]).await;
            return Err(PeerAuthError::NotABroker(principal));
        }
        write_reply(&mut stream, ACCEPTED, &last_token).await?;
        Ok((stream, from, principal))
    }
}

/// The dialler's login: PLAIN's one token, or SCRAM's two with the server's signature checked.
async fn login(stream: &mut PeerStream, sasl: &PeerSasl) -> Result<(), PeerAuthError> {
    let failed = |reason: String| PeerAuthError::Sasl {
        mechanism: sasl.mechanism,
        reason,
    };
    match sasl.mechanism {
        Mechanism::Plain => {
            let token = format!("\0{}\0{}", sasl.user, sasl.password);
            write_token(stream, token.as_bytes()).await?;
            match read_reply(stream).await? {
                (ACCEPTED, _) => Ok(()),
                (REFUSED, _) => Err(PeerAuthError::Refused),
                _ => Err(PeerAuthError::Protocol("PLAIN answered with a challenge")),
            }
        }
        Mechanism::Scram(mechanism) => {
            let nonce = {
                use rand::distributions::{Alphanumeric, DistString};
                Alphanumeric.sample_string(&mut rand::thread_rng(), 32)
            };
            let (mut client, first) =
                ScramClient::new(mechanism, &sasl.user, sasl.password.as_bytes(), &nonce);
            write_token(stream, &first).await?;
            let challenge = match read_reply(stream).await? {
                (CHALLENGE, c) => c,
                (REFUSED, _) => return Err(PeerAuthError::Refused),
                _ => return Err(PeerAuthError::Protocol("SCRAM expected a challenge")),
            };
            let last = client
                .server_first(&challenge)
                .map_err(|e| failed(e.to_string()))?;
            write_token(stream, &last).await?;
            match read_reply(stream).await? {
                (ACCEPTED, server_final) => client
                    .server_final(&server_final)
                    .map_err(|e| failed(format!("the peer's signature: {e}"))),
                (REFUSED, _) => Err(PeerAuthError::Refused),
                _ => Err(PeerAuthError::Protocol("SCRAM expected the final answer")),
            }
        }
    }
}

/// The acceptor's side of the login, up to its verdict: the principal of the user that
/// logged in and the final token to send with ACCEPTED (SCRAM's server-final, the acceptor's
/// own proof; empty for PLAIN). The caller checks the principal before sending it.
async fn authenticate(
    stream: &mut PeerStream,
    sasl: &PeerSasl,
) -> Result<(Principal, Vec<u8>), PeerAuthError> {
    let mut exchange = SaslExchange::new(sasl.mechanism);
    let nonce = {
        use rand::distributions::{Alphanumeric, DistString};
        Alphanumeric.sample_string(&mut rand::thread_rng(), 32)
    };
    loop {
        let token = read_token(stream).await?;
        match exchange.step(&token, &sasl.users, &nonce) {
            Ok(Step::Challenge(challenge)) => write_reply(stream, CHALLENGE, &challenge).await?,
            Ok(Step::Done { token, user }) => return Ok((Principal::user(&user), token)),
            Err(e) => {
                return Err(PeerAuthError::Sasl {
                    mechanism: sasl.mechanism,
                    reason: e.to_string(),
                })
            }
        }
    }
}

async fn write_token(stream: &mut PeerStream, token: &[u8]) -> std::io::Result<()> {
    let mut frame = Vec::with_capacity(4 + token.len());
    frame.extend_from_slice(&(token.len() as u32).to_be_bytes());
    frame.extend_from_slice(token);
    stream.write_all(&frame).await?;
    stream.flush().await
}

async fn read_token(stream: &mut PeerStream) -> Result<Vec<u8>, PeerAuthError> {
    let len = stream.read_u32().await? as usize;
    if len > PEER_TOKEN_BYTES_MAX {
        return Err(PeerAuthError::Protocol("login token above 16 KiB"));
    }
    let mut token = vec![0; len];
    stream.read_exact(&mut token).await?;
    Ok(token)
}

async fn write_reply(stream: &mut PeerStream, status: u8, token: &[u8]) -> std::io::Result<()> {
    let mut frame = Vec::with_capacity(5 + token.len());
    frame.push(status);
    frame.extend_from_slice(&(token.len() as u32).to_be_bytes());
    frame.extend_from_slice(token);
    stream.write_all(&frame).await?;
    stream.flush().await
}

async fn read_reply(stream: &mut PeerStream) -> Result<(u8, Vec<u8>), PeerAuthError> {
    let status = stream.read_u8().await?;
    let token = read_token(stream).await?;
    Ok((status, token))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::tls::{Keystore, PemSource, TlsSettings};
    use crate::security::{ClientAuth, TlsVersion};
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    };
    use tokio::net::TcpListener;

    /// A CA that signs broker certificates (serving and dialling: both key usages).
    struct Ca {
        cert: rcgen::Certificate,
        key: KeyPair,
    }

    impl Ca {
        fn new(name: &str) -> Ca {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, name);
            let cert = params.self_signed(&key).unwrap();
            Ca { cert, key }
        }

        /// TLS settings with a certificate for `cn` signed by this CA, trusting `trusted`.
        fn settings(&self, cn: &str, trusted: &Ca) -> TlsSettings {
            let key = KeyPair::generate().unwrap();
            let mut params =
                CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
            params.distinguished_name.push(DnType::CommonName, cn);
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
            TlsSettings {
                keystore: Keystore::Inline {
                    chain: PemSource::Inline(cert.pem()),
                    key: PemSource::Inline(key.serialize_pem()),
                },
                truststore: Some(PemSource::Inline(trusted.cert.pem())),
                client_auth: ClientAuth::None,
                versions: vec![TlsVersion::Tls12, TlsVersion::Tls13],
            }
        }
    }

    fn users() -> SaslUsers {
        SaslUsers::from_passwords(
            [("broker", "broker-secret"), ("alice", "alice-secret")],
            crate::security::scram::ITERATIONS_MIN,
            || vec![7; 32],
        )
    }

    /// A broker's peer security for `protocol`, with `tls` settings and a login as `login`
    /// (mechanism, user, password); `super.users` holds `super_users`.
    fn security(
        protocol: SecurityProtocol,
        tls: Option<&TlsSettings>,
        login: Option<(Mechanism, &str, &str)>,
        super_users: &[&str],
    ) -> PeerSecurity {
        let mut own = None;
        let tls = tls.map(|settings| {
            let (server, client, principal) = tls::peer_configs(settings).unwrap();
            own = principal.map(Principal::from_text);
            let name = ServerName::try_from("127.0.0.1").unwrap();
            PeerTls {
                server,
                client,
                server_names: [(1, name)].into(),
            }
        });
        let sasl = login.map(|(mechanism, user, password)| PeerSasl {
            mechanism,
            user: user.into(),
            password: password.into(),
            users: users(),
        });
        let super_users = super_users.iter().map(|s| s.to_string()).collect();
        PeerSecurity::new("INTERNAL", protocol, tls, sasl, own, &super_users).unwrap()
    }

    /// One connection from `dialler` (as broker 7) to `acceptor` (broker 1): each side's
    /// result; on success the dialler's first bytes after the opening reach the acceptor.
    async fn open(
        dialler: PeerSecurity,
        acceptor: PeerSecurity,
    ) -> (Result<(), String>, Result<(i32, String), String>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let accepted = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let (mut stream, from, principal) =
                acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
            let mut ping = [0u8; 4];
            stream
                .read_exact(&mut ping)
                .await
                .map_err(|e| e.to_string())?;
            assert_eq!(&ping, b"ping", "the first bytes after the opening");
            Ok((from, principal.to_string()))
        });
        let tcp = TcpStream::connect(address).await.unwrap();
        let dialled = match dialler.dial(tcp, 7, 1).await {
            Ok(mut stream) => {
                let _ = stream.write_all(b"ping").await;
                let _ = stream.flush().await;
                // Keep the stream open until the acceptor has read.
                let result = accepted.await.unwrap();
                return (Ok(()), result);
            }
            Err(e) => Err(e.to_string()),
        };
        (dialled, accepted.await.unwrap())
    }

    const SCRAM_512: Mechanism = Mechanism::Scram(crate::security::scram::ScramMechanism::Sha512);

    #[tokio::test]
    async fn brokers_open_tls_with_each_login_mechanism() {
        let ca = Ca::new("peer CA");
        let (a, b) = (
            ca.settings("keel-broker-1", &ca),
            ca.settings("keel-broker-2", &ca),
        );
        for mechanism in [
            Mechanism::Plain,
            Mechanism::Scram(crate::security::scram::ScramMechanism::Sha256),
            SCRAM_512,
        ] {
            let login = Some((mechanism, "broker", "broker-secret"));
            let (d, acc) = open(
                security(SecurityProtocol::SaslSsl, Some(&a), login, &[]),
                security(SecurityProtocol::SaslSsl, Some(&b), login, &[]),
            )
            .await;
            assert_eq!(d, Ok(()), "{mechanism:?}");
            assert_eq!(acc, Ok((7, "User:broker".to_string())), "{mechanism:?}");
        }
        // SASL_PLAINTEXT: the login without TLS.
        let login = Some((SCRAM_512, "broker", "broker-secret"));
        let (d, acc) = open(
            security(SecurityProtocol::SaslPlaintext, None, login, &[]),
            security(SecurityProtocol::SaslPlaintext, None, login, &[]),
        )
        .await;
        assert_eq!((d, acc), (Ok(()), Ok((7, "User:broker".to_string()))));
    }

    /// SSL: the certificate is the login. Brokers with the same subject accept each other;
    /// another subject needs super.users.
    #[tokio::test]
    async fn ssl_peers_are_their_certificates_subjects() {
        let ca = Ca::new("peer CA");
        let (a, b) = (
            ca.settings("keel-broker", &ca),
            ca.settings("keel-broker", &ca),
        );
        let (d, acc) = open(
            security(SecurityProtocol::Ssl, Some(&a), None, &[]),
            security(SecurityProtocol::Ssl, Some(&b), None, &[]),
        )
        .await;
        assert_eq!(d, Ok(()));
        assert_eq!(acc, Ok((7, "User:CN=keel-broker".to_string())));
        let other = ca.settings("someone-else", &ca);
        let (d, acc) = open(
            security(SecurityProtocol::Ssl, Some(&other), None, &[]),
            security(SecurityProtocol::Ssl, Some(&b), None, &[]),
        )
        .await;
        assert!(d.unwrap_err().contains("refused"));
        assert!(acc.unwrap_err().contains("User:CN=someone-else is neither"));
        let (d, acc) = open(
            security(SecurityProtocol::Ssl, Some(&other), None, &[]),
            security(
                SecurityProtocol::Ssl,
                Some(&b),
                None,
                &["User:CN=someone-else"],
            ),
        )
        .await;
        assert_eq!(d, Ok(()));
        assert_eq!(acc, Ok((7, "User:CN=someone-else".to_string())));
    }

    /// A plaintext peer, a certificate from another CA, a wrong password and a user that is
    /// not a broker are each refused before a byte after the opening is read.
    #[tokio::test]
    async fn unauthenticated_peers_are_refused() {
        let ca = Ca::new("peer CA");
        let rogue = Ca::new("rogue CA");
        let good = ca.settings("keel-broker", &ca);
        let login = Some((SCRAM_512, "broker", "broker-secret"));
        let acceptor = || security(SecurityProtocol::SaslSsl, Some(&good), login, &[]);

        // Plaintext to the TLS port: the dialler has no way to know, the acceptor refuses.
        let (_, acc) = open(PeerSecurity::plaintext(), acceptor()).await;
        assert!(acc.unwrap_err().contains("TLS handshake failed"));

        // A certificate the truststore does not vouch for (the rogue trusts our CA).
        let (d, acc) = open(
            security(
                SecurityProtocol::SaslSsl,
                Some(&rogue.settings("keel-broker", &ca)),
                login,
                &[],
            ),
            acceptor(),
        )
        .await;
        assert!(d.is_err());
        assert!(acc.unwrap_err().contains("TLS handshake failed"));

        // The dialler does not trust the acceptor's certificate either way round.
        let (d, _) = open(
            security(
                SecurityProtocol::SaslSsl,
                Some(&ca.settings("keel-broker", &rogue)),
                login,
                &[],
            ),
            acceptor(),
        )
        .await;
        assert!(d.unwrap_err().contains("TLS handshake failed"));

        // A wrong password, with each mechanism.
        for mechanism in [Mechanism::Plain, SCRAM_512] {
            let (d, acc) = open(
                security(
                    SecurityProtocol::SaslSsl,
                    Some(&good),
                    Some((mechanism, "broker", "wrong")),
                    &[],
                ),
                acceptor(),
            )
            .await;
            assert!(d.unwrap_err().contains("refused"), "{mechanism:?}");
            assert!(acc.unwrap_err().contains("login failed"), "{mechanism:?}");
        }

        // A real user that is not a broker (nor a super user).
        let (d, acc) = open(
            security(
                SecurityProtocol::SaslSsl,
                Some(&good),
                Some((SCRAM_512, "alice", "alice-secret")),
                &[],
            ),
            acceptor(),
        )
        .await;
        assert!(d.unwrap_err().contains("refused"));
        assert!(acc.unwrap_err().contains("User:alice is neither"));
    }

    /// A dialler that never finishes its hello is dropped after the timeout (10 s).
    #[tokio::test]
    async fn a_stalled_opening_times_out() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let login = Some((SCRAM_512, "broker", "broker-secret"));
        let acceptor = security(SecurityProtocol::SaslPlaintext, None, login, &[]);
        let accepted = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            acceptor.accept(tcp).await.map(|_| ())
        });
        let mut tcp = TcpStream::connect(address).await.unwrap();
        tcp.write_all(&HELLO_MAGIC.to_be_bytes()).await.unwrap();
        let result = accepted.await.unwrap();
        assert!(matches!(result, Err(PeerAuthError::Timeout)), "{result:?}");
    }
}
