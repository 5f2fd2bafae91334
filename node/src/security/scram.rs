//! SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, RFC 7677), the server side as Kafka speaks it
//! (`ScramSaslServer`, `ScramMessages`, `ScramFormatter`), and a client ([`ScramClient`]) for
//! the brokers' logins to each other on the peer transport.
//!
//! Pure: no clock, no randomness, no I/O. The caller hands in the server's nonce and the salt,
//! so every exchange can be replayed in a test (RFC 7677's example is one, below).
//!
//! The exchange, driven by [`ScramServer`]:
//! ```text
//!  client-first  n,[a=authzid],n=<name>,r=<cnonce>[,ext]*   ─► client_first(..) ─► server-first
//!  server-first  r=<cnonce><snonce>,s=<b64 salt>,i=<iterations>
//!  client-final  c=<b64 gs2 header>,r=<nonce>[,ext]*,p=<b64 proof>  ─► client_final(..)
//!  server-final  v=<b64 ServerSignature>                        ◄─ (user name on success)
//! ```
//!
//! What always holds:
//! - the server stores only `StoredKey = H(HMAC(SaltedPassword, "Client Key"))` and
//!   `ServerKey = HMAC(SaltedPassword, "Server Key")` with the salt and iteration count
//!   ([`ScramCredential`]); a password never lives past [`ScramCredential::derive`];
//! - a proof is accepted only if `H(proof XOR HMAC(StoredKey, AuthMessage)) == StoredKey`,
//!   compared in constant time, the final nonce ends with the one sent in server-first (Kafka's
//!   check, which librdkafka 2.0 needs), and the channel binding repeats the client-first gs2
//!   header;
//! - malformed input is an error, never a panic: the parser slices only at positions it found.
//!
//! Like Kafka: the gs2 flag must be `n` (no channel binding), an authzid must equal the user
//! name, `=2C` and `=3D` are the only escapes in a name, no SASLprep, and the extension
//! `tokenauth` (delegation tokens) is refused; other extensions are ignored.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ring::{digest, hmac, pbkdf2};
use subtle::ConstantTimeEq;

/// The fewest iterations a credential may have; Kafka refuses logins below it
/// (`ScramMechanism.minIterations`), and so do the clients.
pub const ITERATIONS_MIN: u32 = 4096;
/// The most iterations Kafka accepts (AlterUserScramCredentials; KIP-554).
pub const ITERATIONS_MAX: u32 = 16384;
/// Bytes of salt keel draws for a new credential.
pub const SALT_BYTES: usize = 32;

/// The two SCRAM mechanisms keel serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ScramMechanism {
    /// `SCRAM-SHA-256` (RFC 7677).
    Sha256,
    /// `SCRAM-SHA-512`.
    Sha512,
}

impl ScramMechanism {
    /// Kafka's code of the mechanism (`ScramMechanism.type`: 1 SHA-256, 2 SHA-512), as
    /// AlterUserScramCredentials and the metadata records carry it.
    pub fn code(self) -> i8 {
        match self {
            ScramMechanism::Sha256 => 1,
            ScramMechanism::Sha512 => 2,
        }
    }

    /// The mechanism with Kafka's code `code`.
    pub fn from_code(code: i8) -> Option<ScramMechanism> {
        match code {
            1 => Some(ScramMechanism::Sha256),
            2 => Some(ScramMechanism::Sha512),
            _ => None,
        }
    }

    /// The SASL mechanism name.
    pub fn name(self) -> &'static str {
        match self {
            ScramMechanism::Sha256 => "SCRAM-SHA-256",
            ScramMechanism::Sha512 => "SCRAM-SHA-512",
        }
    }

    fn hmac(self) -> hmac::Algorithm {
        match self {
            ScramMechanism::Sha256 => hmac::HMAC_SHA256,
            ScramMechanism::Sha512 => hmac::HMAC_SHA512,
        }
    }

    fn digest(self) -> &'static digest::Algorithm {
        match self {
            ScramMechanism::Sha256 => &digest::SHA256,
            ScramMechanism::Sha512 => &digest::SHA512,
        }
    }

    fn pbkdf2(self) -> pbkdf2::Algorithm {
        match self {
            ScramMechanism::Sha256 => pbkdf2::PBKDF2_HMAC_SHA256,
            ScramMechanism::Sha512 => pbkdf2::PBKDF2_HMAC_SHA512,
        }
    }

    /// Bytes of the hash's output: the length of keys, proofs and signatures.
    pub fn output_bytes(self) -> usize {
        self.digest().output_len()
    }
}

/// What the server keeps for one user and mechanism (RFC 5802 section 3).
#[derive(Clone, PartialEq, Eq)]
pub struct ScramCredential {
    /// The mechanism these keys are for.
    pub mechanism: ScramMechanism,
    /// The salt.
    pub salt: Vec<u8>,
    /// PBKDF2 iterations, in `ITERATIONS_MIN..=ITERATIONS_MAX`.
    pub iterations: u32,
    /// `H(ClientKey)`.
    pub stored_key: Vec<u8>,
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: Vec<u8>,
}

impl std::fmt::Debug for ScramCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys are secrets: never in logs.
        f.debug_struct("ScramCredential")
            .field("mechanism", &self.mechanism)
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl ScramCredential {
    /// The credential for `password` with `salt` and `iterations` (which the caller has
    /// checked against [`ITERATIONS_MIN`] and [`ITERATIONS_MAX`]).
    pub fn derive(
        mechanism: ScramMechanism,
        password: &[u8],
        salt: &[u8],
        iterations: u32,
    ) -> ScramCredential {
        let salted = salted_password(mechanism, password, salt, iterations);
        ScramCredential::from_salted_password(mechanism, &salted, salt, iterations)
    }

    /// The credential of a salted password `Hi(password, salt, iterations)`, as a client
    /// sends it in AlterUserScramCredentials (KIP-554): the keys are derived from it and it is
    /// not kept.
    pub fn from_salted_password(
        mechanism: ScramMechanism,
        salted: &[u8],
        salt: &[u8],
        iterations: u32,
    ) -> ScramCredential {
        let key = hmac::Key::new(mechanism.hmac(), salted);
        let client_key = hmac::sign(&key, b"Client Key");
        let server_key = hmac::sign(&key, b"Server Key");
        ScramCredential {
            mechanism,
            salt: salt.to_vec(),
            iterations,
            stored_key: digest::digest(mechanism.digest(), client_key.as_ref())
                .as_ref()
                .to_vec(),
            server_key: server_key.as_ref().to_vec(),
        }
    }

    /// Whether `password` is this credential's password (SASL/PLAIN checks passwords against
    /// the SCRAM credentials): derives the stored key again and compares in constant time.
    pub fn matches_password(&self, password: &[u8]) -> bool {
        let again = ScramCredential::derive(self.mechanism, password, &self.salt, self.iterations);
        bool::from(again.stored_key.ct_eq(&self.stored_key))
    }
}

/// `Hi(password, salt, i)`: PBKDF2 with the mechanism's HMAC, output as long as the hash.
fn salted_password(
    mechanism: ScramMechanism,
    password: &[u8],
    salt: &[u8],
    iterations: u32,
) -> Vec<u8> {
    let mut out = vec![0; mechanism.output_bytes()];
    // A zero count cannot be: credentials are built with at least ITERATIONS_MIN.
    let count = std::num::NonZeroU32::new(iterations.max(1)).expect("max(1) is non-zero");
    pbkdf2::derive(mechanism.pbkdf2(), count, salt, password, &mut out);
    out
}

/// Why an exchange failed. The client is told only that authentication failed; the log line
/// may say which of these it was (never a secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    /// The message does not follow RFC 5802's grammar.
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    /// Channel binding was asked for (`p=`) or offered (`y`): Kafka supports neither.
    #[error("channel binding is not supported")]
    ChannelBinding,
    /// An authzid other than the user name.
    #[error("authorization id differs from the user name")]
    Authzid,
    /// The `tokenauth` extension (delegation tokens), which keel does not have.
    #[error("delegation tokens are not supported")]
    TokenAuth,
    /// No credential for this user and mechanism.
    #[error("unknown user")]
    UnknownUser,
    /// The credential's iteration count is below [`ITERATIONS_MIN`].
    #[error("credential has too few iterations")]
    Iterations,
    /// The final message's nonce is not the one server-first sent.
    #[error("nonce mismatch")]
    Nonce,
    /// The final message's channel binding does not repeat the gs2 header.
    #[error("channel binding mismatch")]
    Binding,
    /// The proof is wrong: a wrong password.
    #[error("invalid proof")]
    Proof,
    /// A message arrived after the exchange ended.
    #[error("message after the exchange ended")]
    Finished,
}

/// Where one exchange stands.
#[derive(Debug)]
enum State {
    /// Waiting for client-first.
    Start,
    /// Server-first sent; waiting for client-final.
    Sent {
        user: String,
        gs2_header: String,
        nonce: String,
        credential: ScramCredential,
        /// `client-first-message-bare "," server-first-message`.
        auth_message_head: String,
    },
    /// Over (succeeded or failed): nothing more is accepted.
    Done,
}

/// The server's side of one SCRAM exchange. Call [`client_first`](Self::client_first), send
/// its answer, then [`client_final`](Self::client_final); any error ends the exchange.
#[derive(Debug)]
pub struct ScramServer {
    mechanism: ScramMechanism,
    state: State,
}

impl ScramServer {
    /// A new exchange for `mechanism`.
    pub fn new(mechanism: ScramMechanism) -> ScramServer {
        ScramServer {
            mechanism,
            state: State::Start,
        }
    }

    /// The mechanism.
    pub fn mechanism(&self) -> ScramMechanism {
        self.mechanism
    }

    /// Whether the next message expected is client-first (nothing taken yet).
    pub fn expects_client_first(&self) -> bool {
        matches!(self.state, State::Start)
    }

    /// Takes client-first; looks the user up with `credential_of`; returns server-first.
    /// `server_nonce` is appended to the client's nonce: printable ASCII without `,`, fresh
    /// and unpredictable per exchange (the caller draws it).
    pub fn client_first(
        &mut self,
        message: &[u8],
        server_nonce: &str,
        credential_of: impl FnOnce(&str) -> Option<ScramCredential>,
    ) -> Result<Vec<u8>, ScramError> {
        if !matches!(self.state, State::Start) {
            self.state = State::Done;
            return Err(ScramError::Finished);
        }
        self.state = State::Done;
        debug_assert!(
            is_printable_nonce(server_nonce),
            "server nonce is printable"
        );
        let text = std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let first = ClientFirst::parse(text)?;
        if first.token_auth {
            return Err(ScramError::TokenAuth);
        }
        let credential = credential_of(&first.user)
            .filter(|c| c.mechanism == self.mechanism)
            .ok_or(ScramError::UnknownUser)?;
        if credential.iterations < ITERATIONS_MIN {
            return Err(ScramError::Iterations);
        }
        let nonce = format!("{}{server_nonce}", first.client_nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&credential.salt),
            credential.iterations
        );
        self.state = State::Sent {
            user: first.user,
            gs2_header: first.gs2_header.to_string(),
            nonce,
            credential,
            auth_message_head: format!("{},{server_first}", first.bare),
        };
        Ok(server_first.into_bytes())
    }

    /// Takes client-final; on a valid proof returns server-final and the user name.
    pub fn client_final(&mut self, message: &[u8]) -> Result<(Vec<u8>, String), ScramError> {
        let State::Sent {
            user,
            gs2_header,
            nonce,
            credential,
            auth_message_head,
        } = std::mem::replace(&mut self.state, State::Done)
        else {
            return Err(ScramError::Finished);
        };
        let text = std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let last = ClientFinal::parse(text)?;
        // Kafka checks that the final nonce *ends with* the server-first nonce
        // (ScramSaslServer), and librdkafka before 2.1 relies on it: it sends the client nonce
        // followed by the whole server-first nonce, so the client nonce appears twice. The
        // server's fresh part is still there, and the proof covers the message as sent.
        if !last.nonce.ends_with(&nonce) {
            return Err(ScramError::Nonce);
        }
        let binding = B64
            .decode(last.channel_binding)
            .map_err(|_| ScramError::Malformed("c= is not base64"))?;
        if binding != gs2_header.as_bytes() {
            return Err(ScramError::Binding);
        }
        let proof = B64
            .decode(last.proof)
            .map_err(|_| ScramError::Malformed("p= is not base64"))?;
        let mechanism = self.mechanism;
        if proof.len() != mechanism.output_bytes() {
            return Err(ScramError::Proof);
        }
        let auth_message = format!("{auth_message_head},{}", last.without_proof);
        let stored = hmac::Key::new(mechanism.hmac(), &credential.stored_key);
        let client_signature = hmac::sign(&stored, auth_message.as_bytes());
        let client_key: Vec<u8> = proof
            .iter()
            .zip(client_signature.as_ref())
            .map(|(p, s)| p ^ s)
            .collect();
        let computed = digest::digest(mechanism.digest(), &client_key);
        if !bool::from(computed.as_ref().ct_eq(&credential.stored_key)) {
            return Err(ScramError::Proof);
        }
        let server = hmac::Key::new(mechanism.hmac(), &credential.server_key);
        let server_signature = hmac::sign(&server, auth_message.as_bytes());
        let server_final = format!("v={}", B64.encode(server_signature.as_ref()));
        Ok((server_final.into_bytes(), user))
    }
}

/// Whether `nonce` is RFC 5802's `printable`: `%x21-2B / %x2D-7E`.
pub fn is_printable_nonce(nonce: &str) -> bool {
    !nonce.is_empty()
        && nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// A parsed client-first message; `bare` and `gs2_header` are slices of the input.
#[derive(Debug, PartialEq, Eq)]
struct ClientFirst<'a> {
    gs2_header: &'a str,
    bare: &'a str,
    user: String,
    client_nonce: &'a str,
    token_auth: bool,
}

impl<'a> ClientFirst<'a> {
    fn parse(text: &'a str) -> Result<ClientFirst<'a>, ScramError> {
        // gs2-header: cbind-flag "," [authzid] ","
        let (flag, rest) = text
            .split_once(',')
            .ok_or(ScramError::Malformed("no gs2 header"))?;
        match flag {
            "n" => {}
            "y" => return Err(ScramError::ChannelBinding),
            f if f.starts_with("p=") => return Err(ScramError::ChannelBinding),
            _ => return Err(ScramError::Malformed("gs2 flag is not n, y or p=")),
        }
        let (authzid, bare) = rest
            .split_once(',')
            .ok_or(ScramError::Malformed("gs2 header not closed"))?;
        let gs2_header = &text[..text.len() - bare.len()];
        let authzid = match authzid {
            "" => None,
            a => Some(unescape_name(
                a.strip_prefix("a=")
                    .ok_or(ScramError::Malformed("authzid without a="))?,
            )?),
        };
        let mut fields = bare.split(',');
        let user = match fields.next() {
            Some(f) if f.starts_with("m=") => return Err(ScramError::Malformed("m= is reserved")),
            Some(f) => unescape_name(
                f.strip_prefix("n=")
                    .ok_or(ScramError::Malformed("no n= user name"))?,
            )?,
            None => return Err(ScramError::Malformed("empty message")),
        };
        if user.is_empty() {
            return Err(ScramError::Malformed("empty user name"));
        }
        let client_nonce = fields
            .next()
            .and_then(|f| f.strip_prefix("r="))
            .ok_or(ScramError::Malformed("no r= nonce"))?;
        if !is_printable_nonce(client_nonce) {
            return Err(ScramError::Malformed("nonce is not printable ASCII"));
        }
        let mut token_auth = false;
        for extension in fields {
            let (key, value) = extension
                .split_once('=')
                .ok_or(ScramError::Malformed("extension without ="))?;
            if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(ScramError::Malformed("extension name"));
            }
            if key == "tokenauth" && value.eq_ignore_ascii_case("true") {
                token_auth = true;
            }
        }
        if authzid.as_ref().is_some_and(|a| *a != user) {
            return Err(ScramError::Authzid);
        }
        Ok(ClientFirst {
            gs2_header,
            bare,
            user,
            client_nonce,
            token_auth,
        })
    }
}

/// A parsed client-final message; every field is a slice of the input.
#[derive(Debug, PartialEq, Eq)]
struct ClientFinal<'a> {
    channel_binding: &'a str,
    nonce: &'a str,
    proof: &'a str,
    /// `client-final-message-without-proof`, part of the AuthMessage.
    without_proof: &'a str,
}

impl<'a> ClientFinal<'a> {
    fn parse(text: &'a str) -> Result<ClientFinal<'a>, ScramError> {
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no p= proof"))?;
        let mut fields = without_proof.split(',');
        let channel_binding = fields
            .next()
            .and_then(|f| f.strip_prefix("c="))
            .ok_or(ScramError::Malformed("no c= channel binding"))?;
        let nonce = fields
            .next()
            .and_then(|f| f.strip_prefix("r="))
            .ok_or(ScramError::Malformed("no r= nonce"))?;
        for extension in fields {
            if !extension.contains('=') {
                return Err(ScramError::Malformed("extension without ="));
            }
        }
        if proof.is_empty() || proof.contains(',') {
            return Err(ScramError::Malformed("p= is not the last field"));
        }
        Ok(ClientFinal {
            channel_binding,
            nonce,
            proof,
            without_proof,
        })
    }
}

/// A `saslname` with `=2C` and `=3D` decoded; any other `=` is an error (RFC 5802 section 5.1).
fn unescape_name(name: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(at) = rest.find('=') {
        out.push_str(&rest[..at]);
        let code = rest.get(at + 1..at + 3);
        match code {
            Some("2C") => out.push(','),
            Some("3D") => out.push('='),
            _ => return Err(ScramError::Malformed("bad = escape in a name")),
        }
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The client's side of one SCRAM exchange, for the peer transport's broker logins (a broker
/// logs in to another as its `keel.inter.broker.sasl.username`). [`ScramClient::new`] gives
/// client-first; [`server_first`](Self::server_first) takes the server's challenge and gives
/// client-final; [`server_final`](Self::server_final) checks the server's signature, so the
/// client knows the server holds the credential too.
pub struct ScramClient {
    mechanism: ScramMechanism,
    password: Vec<u8>,
    client_first_bare: String,
    client_nonce: String,
    /// After server-first: the AuthMessage and the salted password.
    sent: Option<(String, Vec<u8>)>,
}

impl std::fmt::Debug for ScramClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password is a secret: never in logs.
        f.debug_struct("ScramClient")
            .field("mechanism", &self.mechanism)
            .finish_non_exhaustive()
    }
}

impl ScramClient {
    /// A client for `user` and `password`, with `client_nonce` (printable, without `,`,
    /// fresh per exchange: the caller draws it). Returns it and client-first.
    pub fn new(
        mechanism: ScramMechanism,
        user: &str,
        password: &[u8],
        client_nonce: &str,
    ) -> (ScramClient, Vec<u8>) {
        debug_assert!(
            is_printable_nonce(client_nonce),
            "client nonce is printable"
        );
        let name = user.replace('=', "=3D").replace(',', "=2C");
        let bare = format!("n={name},r={client_nonce}");
        let first = format!("n,,{bare}").into_bytes();
        let client = ScramClient {
            mechanism,
            password: password.to_vec(),
            client_first_bare: bare,
            client_nonce: client_nonce.to_string(),
            sent: None,
        };
        (client, first)
    }

    /// Takes server-first (`r=..,s=..,i=..`) and returns client-final with the proof. The
    /// nonce must extend the client's, and the iterations lie within Kafka's bounds (a server
    /// cannot make the client spin).
    pub fn server_first(&mut self, message: &[u8]) -> Result<Vec<u8>, ScramError> {
        if self.sent.is_some() {
            return Err(ScramError::Finished);
        }
        let text = std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let mut fields = text.split(',');
        let nonce = fields
            .next()
            .and_then(|f| f.strip_prefix("r="))
            .ok_or(ScramError::Malformed("server-first has no r="))?;
        let salt = fields
            .next()
            .and_then(|f| f.strip_prefix("s="))
            .and_then(|s| B64.decode(s).ok())
            .ok_or(ScramError::Malformed("server-first has no base64 s="))?;
        let iterations: u32 = fields
            .next()
            .and_then(|f| f.strip_prefix("i="))
            .and_then(|i| i.parse().ok())
            .ok_or(ScramError::Malformed("server-first has no i="))?;
        if !(ITERATIONS_MIN..=ITERATIONS_MAX).contains(&iterations) {
            return Err(ScramError::Iterations);
        }
        if nonce.len() <= self.client_nonce.len() || !nonce.starts_with(&self.client_nonce) {
            return Err(ScramError::Nonce);
        }
        let mechanism = self.mechanism;
        let salted = salted_password(mechanism, &self.password, &salt, iterations);
        let key = hmac::Key::new(mechanism.hmac(), &salted);
        let client_key = hmac::sign(&key, b"Client Key");
        let stored_key = digest::digest(mechanism.digest(), client_key.as_ref());
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{text},{without_proof}", self.client_first_bare);
        let signature = hmac::sign(
            &hmac::Key::new(mechanism.hmac(), stored_key.as_ref()),
            auth_message.as_bytes(),
        );
        let proof: Vec<u8> = client_key
            .as_ref()
            .iter()
            .zip(signature.as_ref())
            .map(|(k, s)| k ^ s)
            .collect();
        self.sent = Some((auth_message, salted));
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Checks server-final (`v=<ServerSignature>`), in constant time.
    pub fn server_final(&mut self, message: &[u8]) -> Result<(), ScramError> {
        let (auth_message, salted) = self.sent.take().ok_or(ScramError::Finished)?;
        let text = std::str::from_utf8(message).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let signature = text
            .strip_prefix("v=")
            .and_then(|v| B64.decode(v).ok())
            .ok_or(ScramError::Malformed("server-final has no base64 v="))?;
        let key = hmac::Key::new(self.mechanism.hmac(), &salted);
        let server_key = hmac::sign(&key, b"Server Key");
        let expected = hmac::sign(
            &hmac::Key::new(self.mechanism.hmac(), server_key.as_ref()),
            auth_message.as_bytes(),
        );
        if bool::from(expected.as_ref().ct_eq(&signature)) {
            Ok(())
        } else {
            Err(ScramError::Proof)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677 section 3: user "user", password "pencil", SCRAM-SHA-256.
    const RFC7677_CLIENT_FIRST: &str = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const RFC7677_SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const RFC7677_SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const RFC7677_CLIENT_FINAL: &str =
        "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                                        p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const RFC7677_SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc7677_credential() -> ScramCredential {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        ScramCredential::derive(ScramMechanism::Sha256, b"pencil", &salt, 4096)
    }

    fn server_after_first(credential: ScramCredential) -> ScramServer {
        let mut server = ScramServer::new(ScramMechanism::Sha256);
        let first = server
            .client_first(RFC7677_CLIENT_FIRST.as_bytes(), RFC7677_SERVER_NONCE, |u| {
                (u == "user").then_some(credential)
            })
            .unwrap();
        assert_eq!(std::str::from_utf8(&first).unwrap(), RFC7677_SERVER_FIRST);
        server
    }

    /// Reference: RFC 7677 section 3, the SCRAM-SHA-256 example exchange, byte for byte.
    #[test]
    fn rfc7677_example_exchange() {
        let mut server = server_after_first(rfc7677_credential());
        let (last, user) = server
            .client_final(RFC7677_CLIENT_FINAL.as_bytes())
            .unwrap();
        assert_eq!(std::str::from_utf8(&last).unwrap(), RFC7677_SERVER_FINAL);
        assert_eq!(user, "user");
        // Nothing more is accepted once the exchange is over.
        assert_eq!(
            server.client_final(RFC7677_CLIENT_FINAL.as_bytes()),
            Err(ScramError::Finished)
        );
    }

    #[test]
    fn wrong_password_fails_the_proof() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let wrong = ScramCredential::derive(ScramMechanism::Sha256, b"pencil2", &salt, 4096);
        let mut server = server_after_first(wrong);
        assert_eq!(
            server.client_final(RFC7677_CLIENT_FINAL.as_bytes()),
            Err(ScramError::Proof)
        );
    }

    #[test]
    fn final_nonce_must_end_with_the_servers() {
        let mut server = server_after_first(rfc7677_credential());
        let tampered = RFC7677_CLIENT_FINAL.replace("$k0,", "$k1,");
        assert_eq!(
            server.client_final(tampered.as_bytes()),
            Err(ScramError::Nonce)
        );
    }

    #[test]
    fn channel_binding_must_repeat_the_gs2_header() {
        let mut server = server_after_first(rfc7677_credential());
        // "eSws" is base64 of "y,,".
        let tampered = RFC7677_CLIENT_FINAL.replace("c=biws", "c=eSws");
        assert_eq!(
            server.client_final(tampered.as_bytes()),
            Err(ScramError::Binding)
        );
    }

    #[test]
    fn truncated_or_flipped_proof_is_refused() {
        for proof in [
            "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
            "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVA=",
            "p=dHzb",
            "p=!!!",
        ] {
            let mut server = server_after_first(rfc7677_credential());
            let message = RFC7677_CLIENT_FINAL
                .replace("p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=", proof);
            let result = server.client_final(message.as_bytes());
            if proof.ends_with("VQ=") {
                assert!(result.is_ok());
            } else {
                assert!(
                    matches!(result, Err(ScramError::Proof | ScramError::Malformed(_))),
                    "{proof}: {result:?}"
                );
            }
        }
    }

    #[test]
    fn unknown_user_and_mechanism_mismatch_are_refused() {
        let mut server = ScramServer::new(ScramMechanism::Sha256);
        assert_eq!(
            server.client_first(RFC7677_CLIENT_FIRST.as_bytes(), "x", |_| None),
            Err(ScramError::UnknownUser)
        );
        let mut server = ScramServer::new(ScramMechanism::Sha512);
        assert_eq!(
            server.client_first(RFC7677_CLIENT_FIRST.as_bytes(), "x", |_| Some(
                rfc7677_credential()
            )),
            Err(ScramError::UnknownUser)
        );
    }

    /// Kafka refuses logins with fewer than 4096 iterations (ScramMechanism.minIterations).
    #[test]
    fn too_few_iterations_are_refused() {
        let low = ScramCredential::derive(ScramMechanism::Sha256, b"pencil", b"salt", 4095);
        let mut server = ScramServer::new(ScramMechanism::Sha256);
        assert_eq!(
            server.client_first(RFC7677_CLIENT_FIRST.as_bytes(), "x", |_| Some(low)),
            Err(ScramError::Iterations)
        );
    }

    /// Reference: Kafka's ScramMessages.ClientFirstMessage and RFC 5802 section 7.
    #[test]
    fn client_first_grammar() {
        let ok = ClientFirst::parse("n,a=us=2Cer,n=us=2Cer,r=abc,ext=1").unwrap();
        assert_eq!(ok.user, "us,er");
        assert_eq!(ok.gs2_header, "n,a=us=2Cer,");
        assert_eq!(ok.bare, "n=us=2Cer,r=abc,ext=1");
        assert!(!ok.token_auth);
        assert!(
            ClientFirst::parse("n,,n=a=3Db,r=x,tokenauth=true")
                .unwrap()
                .token_auth
        );
        assert_eq!(ClientFirst::parse("n,,n=a=3Db,r=x").unwrap().user, "a=b");
        let cases: [(&str, ScramError); 12] = [
            ("", ScramError::Malformed("no gs2 header")),
            ("n", ScramError::Malformed("no gs2 header")),
            ("n,", ScramError::Malformed("gs2 header not closed")),
            ("y,,n=u,r=x", ScramError::ChannelBinding),
            ("p=tls-unique,,n=u,r=x", ScramError::ChannelBinding),
            (
                "q,,n=u,r=x",
                ScramError::Malformed("gs2 flag is not n, y or p="),
            ),
            ("n,,m=x,n=u,r=x", ScramError::Malformed("m= is reserved")),
            ("n,,n=u", ScramError::Malformed("no r= nonce")),
            ("n,,n=,r=x", ScramError::Malformed("empty user name")),
            (
                "n,,n=u=2,r=x",
                ScramError::Malformed("bad = escape in a name"),
            ),
            (
                "n,,n=u,r=a b",
                ScramError::Malformed("nonce is not printable ASCII"),
            ),
            ("n,a=other,n=u,r=x", ScramError::Authzid),
        ];
        for (text, error) in cases {
            assert_eq!(ClientFirst::parse(text), Err(error), "{text:?}");
        }
    }

    #[test]
    fn client_final_grammar() {
        let f = ClientFinal::parse("c=biws,r=abc,x=1,p=cHJvb2Y=").unwrap();
        assert_eq!(f.without_proof, "c=biws,r=abc,x=1");
        assert_eq!(f.proof, "cHJvb2Y=");
        for bad in [
            "",
            "c=biws,r=abc",
            "r=abc,c=biws,p=x",
            "c=biws,p=x",
            "c=biws,r=a,x,p=y",
        ] {
            assert!(ClientFinal::parse(bad).is_err(), "{bad:?}");
        }
    }

    /// Bytes from outside never panic the parser, whatever they are.
    #[test]
    fn arbitrary_bytes_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let alphabet = b"nyp,=a23CDrcsi\xff\x00";
        let credential = ScramCredential::derive(ScramMechanism::Sha512, b"p", b"s", 4096);
        let rfc = rfc7677_credential();
        for _ in 0..5000 {
            let len = rng.gen_range(0..24);
            let bytes: Vec<u8> = (0..len)
                .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
                .collect();
            let mut server = ScramServer::new(ScramMechanism::Sha512);
            let _ = server.client_first(&bytes, "n", |_| Some(credential.clone()));
            let _ = server.client_final(&bytes);
            let mut server = server_after_first(rfc.clone());
            let _ = server.client_final(&bytes);
        }
    }

    #[test]
    fn plain_checks_the_scram_credential() {
        let c = rfc7677_credential();
        assert!(c.matches_password(b"pencil"));
        assert!(!c.matches_password(b"pencil "));
        assert!(!c.matches_password(b""));
    }
    /// keel's own client against keel's server: both directions of RFC 5802's proof (the
    /// client's proof, then the server's signature), and a wrong password refused.
    #[test]
    fn client_and_server_agree_and_a_wrong_password_fails() {
        for mechanism in [ScramMechanism::Sha256, ScramMechanism::Sha512] {
            let credential = ScramCredential::derive(mechanism, b"pw", b"salty", ITERATIONS_MIN);
            for (password, ok) in [(&b"pw"[..], true), (&b"nope"[..], false)] {
                let (mut client, first) =
                    ScramClient::new(mechanism, "bro,ker", password, "cnonce");
                let mut server = ScramServer::new(mechanism);
                let challenge = server
                    .client_first(&first, "snonce", |u| {
                        (u == "bro,ker").then(|| credential.clone())
                    })
                    .unwrap();
                let last = client.server_first(&challenge).unwrap();
                match server.client_final(&last) {
                    Ok((server_final, user)) => {
                        assert!(ok, "{mechanism:?}: a wrong password was accepted");
                        assert_eq!(user, "bro,ker");
                        client.server_final(&server_final).unwrap();
                    }
                    Err(e) => {
                        assert!(!ok, "{mechanism:?}: the right password was refused");
                        assert_eq!(e, ScramError::Proof);
                    }
                }
            }
        }
    }

    /// A server that does not extend the client's nonce, asks for too few iterations or
    /// signs with another key is refused by the client.
    #[test]
    fn client_refuses_a_bad_server() {
        let m = ScramMechanism::Sha256;
        let (mut c, _) = ScramClient::new(m, "u", b"pw", "cnonce");
        assert_eq!(
            c.server_first(b"r=other,s=AAAA,i=4096"),
            Err(ScramError::Nonce)
        );
        let (mut c, _) = ScramClient::new(m, "u", b"pw", "cnonce");
        assert_eq!(
            c.server_first(b"r=cnonceX,s=AAAA,i=1"),
            Err(ScramError::Iterations)
        );
        let (mut c, _) = ScramClient::new(m, "u", b"pw", "cnonce");
        c.server_first(b"r=cnonceX,s=AAAA,i=4096").unwrap();
        assert_eq!(c.server_final(b"v=AAAA"), Err(ScramError::Proof));
        assert_eq!(c.server_final(b"v=AAAA"), Err(ScramError::Finished));
        let (mut c, _) = ScramClient::new(m, "u", b"pw", "cnonce");
        assert!(matches!(
            c.server_first(b"\xff"),
            Err(ScramError::Malformed(_))
        ));
    }
}
