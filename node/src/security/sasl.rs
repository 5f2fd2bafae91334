//! SASL mechanisms and the credentials they check: PLAIN (RFC 4616) and SCRAM-SHA-256/512
//! ([`super::scram`]).
//!
//! Pure: the caller draws salts and nonces and hands them in. The wire layer drives one
//! [`SaslExchange`] per connection (`wire::server`, "SASL").
//!
//! What always holds:
//! - credentials are kept only as SCRAM stored and server keys ([`SaslUsers`]); PLAIN checks a
//!   password by deriving the SHA-256 credential again with the stored salt and comparing in
//!   constant time, so PLAIN and SCRAM accept exactly the same passwords;
//! - a failed exchange reports a [`SaslError`] for the log and nothing else: the client is
//!   told only that authentication failed.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

use super::scram::{ScramCredential, ScramError, ScramMechanism, ScramServer};

/// A SASL mechanism keel serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mechanism {
    /// `PLAIN`: user name and password in the clear (use it over TLS).
    Plain,
    /// `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    Scram(ScramMechanism),
}

impl Mechanism {
    /// Every mechanism keel serves, in the order Kafka lists them.
    pub const ALL: [Mechanism; 3] = [
        Mechanism::Plain,
        Mechanism::Scram(ScramMechanism::Sha256),
        Mechanism::Scram(ScramMechanism::Sha512),
    ];

    /// The mechanism called `name` (exact, upper case, as clients send it).
    pub fn from_name(name: &str) -> Option<Mechanism> {
        Mechanism::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The SASL name.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Scram(s) => s.name(),
        }
    }
}

impl fmt::Display for Mechanism {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One user's credentials, one per SCRAM mechanism.
#[derive(Debug, Clone)]
struct UserCredentials {
    sha256: ScramCredential,
    sha512: ScramCredential,
}

/// Where the credentials kept in the metadata log are looked up (KIP-554): given a user and a
/// mechanism, the stored credential, if there is one. The broker attaches it once it is open
/// ([`SaslUsers::attach_metadata`]).
pub type MetadataCredentials =
    dyn Fn(&str, ScramMechanism) -> Option<ScramCredential> + Send + Sync;

/// The attached lookup (a newtype only so that `SaslUsers` can print itself).
#[derive(Clone, Default)]
struct Attached(Arc<OnceLock<Arc<MetadataCredentials>>>);

impl fmt::Debug for Attached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "metadata credentials attached: {}",
            self.0.get().is_some()
        )
    }
}

/// The users SASL authenticates: the SCRAM credentials kept in the metadata log (once the
/// broker attached them), then the users of `keel.sasl.users`, as SCRAM credentials in memory.
/// A user's credential in the metadata log for a mechanism wins over the configured password
/// for that mechanism; PLAIN checks a password against the user's metadata credentials if it
/// has any (SHA-256 first), else against the configured one.
#[derive(Debug, Clone, Default)]
pub struct SaslUsers {
    users: BTreeMap<String, UserCredentials>,
    metadata: Attached,
}

impl SaslUsers {
    /// Salts and derives the credentials of `(name, password)` pairs, drawing one salt per
    /// user and mechanism from `salt`. A later pair for the same name replaces an earlier one.
    pub fn from_passwords<'a>(
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
        iterations: u32,
        mut salt: impl FnMut() -> Vec<u8>,
    ) -> SaslUsers {
        let mut users = BTreeMap::new();
        for (name, password) in pairs {
            let derive = |m, salt: Vec<u8>| {
                ScramCredential::derive(m, password.as_bytes(), &salt, iterations)
            };
            let credentials = UserCredentials {
                sha256: derive(ScramMechanism::Sha256, salt()),
                sha512: derive(ScramMechanism::Sha512, salt()),
            };
            users.insert(name.to_string(), credentials);
        }
        SaslUsers {
            users,
            metadata: Attached::default(),
        }
    }

    /// Looks credentials up in the metadata too, from now on (every copy of this value shares
    /// the attachment). The first attachment stays: a second one is ignored.
    pub fn attach_metadata(&self, lookup: Arc<MetadataCredentials>) {
        let _ = self.metadata.0.set(lookup);
    }

    fn in_metadata(&self, user: &str, mechanism: ScramMechanism) -> Option<ScramCredential> {
        self.metadata
            .0
            .get()
            .and_then(|lookup| lookup(user, mechanism))
    }

    /// How many users there are.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The SCRAM credential of `user` for `mechanism`: the metadata's, else the configured.
    pub fn scram(&self, user: &str, mechanism: ScramMechanism) -> Option<ScramCredential> {
        if let Some(c) = self.in_metadata(user, mechanism) {
            return Some(c);
        }
        let c = self.users.get(user)?;
        Some(match mechanism {
            ScramMechanism::Sha256 => c.sha256.clone(),
            ScramMechanism::Sha512 => c.sha512.clone(),
        })
    }

    /// Whether `password` is `user`'s password (for PLAIN).
    pub fn check_password(&self, user: &str, password: &[u8]) -> bool {
        let stored = self
            .in_metadata(user, ScramMechanism::Sha256)
            .or_else(|| self.in_metadata(user, ScramMechanism::Sha512));
        if let Some(c) = stored {
            return c.matches_password(password);
        }
        self.users
            .get(user)
            .is_some_and(|c| c.sha256.matches_password(password))
    }
}

/// What a SASL listener needs: the mechanisms it offers and the users it knows.
#[derive(Debug, Clone)]
pub struct SaslConfig {
    /// `sasl.enabled.mechanisms`, in the order given: SaslHandshake lists them all.
    pub mechanisms: Vec<Mechanism>,
    /// The users.
    pub users: SaslUsers,
}

/// Why an exchange failed (for the broker's log; the client only hears that it failed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// A malformed PLAIN message.
    #[error("malformed PLAIN message: {0}")]
    PlainMalformed(&'static str),
    /// PLAIN with an authzid other than the user.
    #[error("PLAIN authorization id differs from the user name")]
    PlainAuthzid,
    /// PLAIN with an unknown user or a wrong password.
    #[error("invalid user name or password")]
    PlainCredentials,
    /// A SCRAM failure.
    #[error("{0}")]
    Scram(#[from] ScramError),
    /// A token after the exchange ended.
    #[error("SASL token after the exchange ended")]
    Finished,
    /// A re-authentication (KIP-368) as another user.
    #[error("re-authentication as another user")]
    PrincipalChanged,
}

impl SaslError {
    /// The message Kafka sends for this failure (`SaslAuthenticate.error_message`): generic,
    /// so that it tells nothing about which users exist.
    pub fn client_message(&self, mechanism: Mechanism) -> String {
        match self {
            SaslError::PlainMalformed(_) | SaslError::PlainAuthzid | SaslError::Finished => {
                format!("Authentication failed: invalid SASL/{mechanism} request")
            }
            SaslError::PlainCredentials => {
                "Authentication failed: Invalid username or password".to_string()
            }
            SaslError::PrincipalChanged => {
                "Cannot change principals during re-authentication".to_string()
            }
            SaslError::Scram(_) => format!(
                "Authentication failed during authentication due to invalid credentials with \
                 SASL mechanism {mechanism}"
            ),
        }
    }
}

/// The outcome of one token.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this token and wait for the client's next.
    Challenge(Vec<u8>),
    /// Authenticated as `user`; send `token` (possibly empty) as the last server message.
    Done {
        /// The server's last token.
        token: Vec<u8>,
        /// The authenticated user name.
        user: String,
    },
}

/// One connection's SASL exchange, for the mechanism chosen in SaslHandshake.
#[derive(Debug)]
pub enum SaslExchange {
    /// PLAIN: one token, then done.
    Plain {
        /// Whether the token has been taken.
        done: bool,
    },
    /// SCRAM: two tokens.
    Scram(ScramServer),
}

impl SaslExchange {
    /// A new exchange for `mechanism`.
    pub fn new(mechanism: Mechanism) -> SaslExchange {
        match mechanism {
            Mechanism::Plain => SaslExchange::Plain { done: false },
            Mechanism::Scram(s) => SaslExchange::Scram(ScramServer::new(s)),
        }
    }

    /// The mechanism.
    pub fn mechanism(&self) -> Mechanism {
        match self {
            SaslExchange::Plain { .. } => Mechanism::Plain,
            SaslExchange::Scram(s) => Mechanism::Scram(s.mechanism()),
        }
    }

    /// Takes the client's next token. `server_nonce` is used only by SCRAM's first step
    /// (printable ASCII without `,`, fresh per exchange). Any error ends the exchange.
    pub fn step(
        &mut self,
        token: &[u8],
        users: &SaslUsers,
        server_nonce: &str,
    ) -> Result<Step, SaslError> {
        match self {
            SaslExchange::Plain { done } => {
                if std::mem::replace(done, true) {
                    return Err(SaslError::Finished);
                }
                let (user, password) = parse_plain(token)?;
                if !users.check_password(user, password) {
                    return Err(SaslError::PlainCredentials);
                }
                Ok(Step::Done {
                    token: Vec::new(),
                    user: user.to_string(),
                })
            }
            SaslExchange::Scram(server) => {
                let mechanism = server.mechanism();
                if server.expects_client_first() {
                    let challenge =
                        server.client_first(token, server_nonce, |u| users.scram(u, mechanism))?;
                    Ok(Step::Challenge(challenge))
                } else {
                    let (token, user) = server.client_final(token)?;
                    Ok(Step::Done { token, user })
                }
            }
        }
    }
}

/// Splits a PLAIN message, `[authzid] NUL authcid NUL passwd` (RFC 4616), as Kafka's
/// `PlainSaslServer` does: exactly three parts, user and password not empty, an authzid only if
/// it is the user.
pub fn parse_plain(token: &[u8]) -> Result<(&str, &[u8]), SaslError> {
    let mut parts = token.split(|b| *b == 0);
    let (Some(authzid), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::PlainMalformed("expected 3 NUL-separated parts"));
    };
    let user =
        std::str::from_utf8(user).map_err(|_| SaslError::PlainMalformed("user not UTF-8"))?;
    if user.is_empty() {
        return Err(SaslError::PlainMalformed("empty user name"));
    }
    if password.is_empty() {
        return Err(SaslError::PlainMalformed("empty password"));
    }
    if !authzid.is_empty() && authzid != user.as_bytes() {
        return Err(SaslError::PlainAuthzid);
    }
    Ok((user, password))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> SaslUsers {
        let mut n = 0u8;
        SaslUsers::from_passwords([("alice", "secret"), ("bob", "hunter2")], 4096, || {
            n += 1;
            vec![n; 16]
        })
    }

    /// Reference: Kafka's PlainSaslServer.evaluateResponse.
    #[test]
    fn plain_accepts_exactly_the_right_password() {
        let users = users();
        let mut ok = SaslExchange::new(Mechanism::Plain);
        assert_eq!(
            ok.step(b"\0alice\0secret", &users, "n"),
            Ok(Step::Done {
                token: vec![],
                user: "alice".into()
            })
        );
        assert_eq!(
            ok.step(b"\0alice\0secret", &users, "n"),
            Err(SaslError::Finished)
        );
        let cases: [(&[u8], SaslError); 7] = [
            (b"\0alice\0wrong", SaslError::PlainCredentials),
            (b"\0carol\0secret", SaslError::PlainCredentials),
            (b"bob\0alice\0secret", SaslError::PlainAuthzid),
            (
                b"alice\0secret",
                SaslError::PlainMalformed("expected 3 NUL-separated parts"),
            ),
            (
                b"\0alice\0secret\0",
                SaslError::PlainMalformed("expected 3 NUL-separated parts"),
            ),
            (b"\0\0secret", SaslError::PlainMalformed("empty user name")),
            (b"\0alice\0", SaslError::PlainMalformed("empty password")),
        ];
        for (token, error) in cases {
            let mut exchange = SaslExchange::new(Mechanism::Plain);
            assert_eq!(exchange.step(token, &users, "n"), Err(error), "{token:?}");
        }
        let mut authzid = SaslExchange::new(Mechanism::Plain);
        assert!(authzid.step(b"alice\0alice\0secret", &users, "n").is_ok());
    }

    #[test]
    fn mechanism_names_round_trip() {
        for m in Mechanism::ALL {
            assert_eq!(Mechanism::from_name(m.name()), Some(m));
        }
        assert_eq!(Mechanism::from_name("GSSAPI"), None);
        assert_eq!(Mechanism::from_name("plain"), None);
    }

    /// A whole SCRAM-SHA-512 exchange against the stored credential, with the client side
    /// computed here from the password (RFC 5802 section 3).
    #[test]
    fn scram_exchange_through_the_session() {
        scram_sha512_exchange(|nonce| nonce.to_string());
    }

    /// librdkafka before 2.1 (Debian's 2.0.2) sends the client nonce, then the whole
    /// server-first nonce; Kafka accepts a final nonce that ends with the server's
    /// (ScramSaslServer: `nonce().endsWith(...)`), and so must keel.
    #[test]
    fn scram_accepts_librdkafka_2_0_final_nonce() {
        scram_sha512_exchange(|nonce| format!("clientnonce{nonce}"));
    }

    fn scram_sha512_exchange(final_nonce: impl Fn(&str) -> String) {
        use base64::engine::general_purpose::STANDARD as B64;
        use base64::Engine as _;
        use ring::{digest, hmac, pbkdf2};
        let users = users();
        let mut exchange = SaslExchange::new(Mechanism::Scram(ScramMechanism::Sha512));
        let first_bare = "n=alice,r=clientnonce";
        let Ok(Step::Challenge(server_first)) =
            exchange.step(format!("n,,{first_bare}").as_bytes(), &users, "SERVER")
        else {
            panic!("expected a challenge");
        };
        let server_first = String::from_utf8(server_first).unwrap();
        let mut fields = server_first.split(',');
        let nonce = fields.next().unwrap().strip_prefix("r=").unwrap();
        assert_eq!(nonce, "clientnonceSERVER");
        let salt = B64
            .decode(fields.next().unwrap().strip_prefix("s=").unwrap())
            .unwrap();
        let iterations: u32 = fields
            .next()
            .unwrap()
            .strip_prefix("i=")
            .unwrap()
            .parse()
            .unwrap();
        let mut salted = [0u8; 64];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA512,
            std::num::NonZeroU32::new(iterations).unwrap(),
            &salt,
            b"secret",
            &mut salted,
        );
        let key = hmac::Key::new(hmac::HMAC_SHA512, &salted);
        let client_key = hmac::sign(&key, b"Client Key");
        let stored_key = digest::digest(&digest::SHA512, client_key.as_ref());
        let without_proof = format!("c=biws,r={}", final_nonce(nonce));
        let auth_message = format!("{first_bare},{server_first},{without_proof}");
        let signature = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA512, stored_key.as_ref()),
            auth_message.as_bytes(),
        );
        let proof: Vec<u8> = client_key
            .as_ref()
            .iter()
            .zip(signature.as_ref())
            .map(|(a, b)| a ^ b)
            .collect();
        let last = format!("{without_proof},p={}", B64.encode(proof));
        let Ok(Step::Done { token, user }) = exchange.step(last.as_bytes(), &users, "unused")
        else {
            panic!("expected success");
        };
        assert_eq!(user, "alice");
        let server_key = hmac::sign(&key, b"Server Key");
        let expected = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA512, server_key.as_ref()),
            auth_message.as_bytes(),
        );
        assert_eq!(
            String::from_utf8(token).unwrap(),
            format!("v={}", B64.encode(expected.as_ref()))
        );
    }
}
