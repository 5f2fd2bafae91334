//! The wire layer's security, in process against a recording handler: SASL (SaslHandshake
//! v0 and v1, SaslAuthenticate, PLAIN and SCRAM), what is served before authentication, TLS
//! with and without client certificates, and clients that speak the wrong protocol to a port.
//!
//! Reference: Kafka's `SaslServerAuthenticator` (handshake versions, the unframed v0 tokens,
//! only ApiVersions and SaslHandshake before authentication, SASL_AUTHENTICATION_FAILED then
//! close) and `SslTransportLayer`; the principals are `DefaultKafkaPrincipalBuilder`'s.

mod security_support;
mod wire_support;

use std::future::Future;
use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, StrBytes};
use keel_node::security::sasl::{Mechanism, SaslConfig, SaslUsers};
use keel_node::security::scram::ScramMechanism;
use keel_node::security::tls::{Keystore, PemSource, TlsSettings};
use keel_node::security::{tls, ClientAuth, ListenerSecurity, SecurityProtocol, TlsVersion};
use keel_node::wire::{
    Handler, HandlerResult, RequestContext, SupportedApis, WireConfig, WireServer,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use security_support::{TestPki, CLIENT_PRINCIPAL};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use wire_support::{request_frame, Client, TEST_WAIT};

/// Answers Metadata with an empty body and remembers each request's listener and principal.
#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<(String, String)>>,
}

impl Handler for Recorder {
    fn handle(
        self: Arc<Self>,
        ctx: RequestContext,
        _request: RequestKind,
    ) -> impl Future<Output = HandlerResult> + Send + 'static {
        self.seen
            .lock()
            .unwrap()
            .push((ctx.listener.to_string(), ctx.principal.to_string()));
        async { Ok(Some(ResponseKind::Metadata(MetadataResponse::default()))) }
    }
}

fn sasl_config(mechanisms: &[Mechanism]) -> Arc<SaslConfig> {
    let mut n = 0u8;
    Arc::new(SaslConfig {
        mechanisms: mechanisms.to_vec(),
        users: SaslUsers::from_passwords(
            [("alice", "alice-secret"), ("bob", "bob-secret")],
            4096,
            || {
                n += 1;
                vec![n; 32]
            },
        ),
    })
}

async fn serve(listener: ListenerSecurity) -> (std::net::SocketAddr, Arc<Recorder>) {
    serve_with(listener, WireConfig::default()).await
}

async fn serve_with(
    listener: ListenerSecurity,
    config: WireConfig,
) -> (std::net::SocketAddr, Arc<Recorder>) {
    let socket = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = socket.local_addr().expect("addr");
    let recorder = Arc::new(Recorder::default());
    let server = WireServer::for_listener(
        recorder.clone(),
        SupportedApis::all(),
        config,
        None,
        listener,
    );
    tokio::spawn(server.serve(socket));
    (addr, recorder)
}

async fn sasl_listener(mechanisms: &[Mechanism]) -> (std::net::SocketAddr, Arc<Recorder>) {
    let security = ListenerSecurity::new(
        "SASL_PLAINTEXT",
        SecurityProtocol::SaslPlaintext,
        None,
        Some(sasl_config(mechanisms)),
    )
    .expect("listener");
    serve(security).await
}

fn handshake(mechanism: &str) -> RequestKind {
    RequestKind::SaslHandshake(
        SaslHandshakeRequest::default().with_mechanism(StrBytes::from_string(mechanism.into())),
    )
}

fn authenticate(token: &[u8]) -> RequestKind {
    RequestKind::SaslAuthenticate(
        SaslAuthenticateRequest::default().with_auth_bytes(Bytes::copy_from_slice(token)),
    )
}

fn metadata() -> RequestKind {
    RequestKind::Metadata(MetadataRequest::default())
}

#[tokio::test]
async fn plain_over_handshake_v1_authenticates_and_the_principal_reaches_the_handler() {
    let (addr, recorder) = sasl_listener(&[Mechanism::Plain]).await;
    let mut c = Client::connect(addr).await;
    // ApiVersions is served before authentication.
    c.send(
        ApiKey::ApiVersions,
        3,
        1,
        "t",
        &RequestKind::ApiVersions(ApiVersionsRequest::default()),
    )
    .await;
    let ResponseKind::ApiVersions(v) = c.recv_response(ApiKey::ApiVersions, 3, 1).await else {
        panic!("ApiVersions");
    };
    assert_eq!(v.error_code, 0);
    c.send(ApiKey::SaslHandshake, 1, 2, "t", &handshake("PLAIN"))
        .await;
    let ResponseKind::SaslHandshake(h) = c.recv_response(ApiKey::SaslHandshake, 1, 2).await else {
        panic!("SaslHandshake");
    };
    assert_eq!(h.error_code, 0);
    assert_eq!(h.mechanisms, vec![StrBytes::from_static_str("PLAIN")]);
    c.send(
        ApiKey::SaslAuthenticate,
        2,
        3,
        "t",
        &authenticate(b"\0alice\0alice-secret"),
    )
    .await;
    let ResponseKind::SaslAuthenticate(a) = c.recv_response(ApiKey::SaslAuthenticate, 2, 3).await
    else {
        panic!("SaslAuthenticate");
    };
    assert_eq!(a.error_code, 0, "{:?}", a.error_message);
    assert_eq!(
        a.session_lifetime_ms, 0,
        "no re-authentication (KIP-368) yet"
    );
    c.send(ApiKey::Metadata, 12, 4, "t", &metadata()).await;
    c.recv_response(ApiKey::Metadata, 12, 4).await;
    assert_eq!(
        recorder.seen.lock().unwrap().clone(),
        vec![("SASL_PLAINTEXT".to_string(), "User:alice".to_string())]
    );
}

/// Reference: Kafka's SaslServerAuthenticator: a failed SaslAuthenticate is answered with
/// SASL_AUTHENTICATION_FAILED (58), then the connection is closed.
#[tokio::test]
async fn a_wrong_password_gets_sasl_authentication_failed_then_the_connection_closes() {
    let (addr, recorder) = sasl_listener(&[Mechanism::Plain]).await;
    let mut c = Client::connect(addr).await;
    c.send(ApiKey::SaslHandshake, 1, 1, "t", &handshake("PLAIN"))
        .await;
    c.recv_response(ApiKey::SaslHandshake, 1, 1).await;
    c.send(
        ApiKey::SaslAuthenticate,
        0,
        2,
        "t",
        &authenticate(b"\0alice\0wrong"),
    )
    .await;
    let ResponseKind::SaslAuthenticate(a) = c.recv_response(ApiKey::SaslAuthenticate, 0, 2).await
    else {
        panic!("SaslAuthenticate");
    };
    assert_eq!(a.error_code, 58);
    assert_eq!(
        a.error_message.as_deref(),
        Some("Authentication failed: Invalid username or password")
    );
    c.expect_closed().await;
    assert!(recorder.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn a_request_before_authentication_closes_the_connection_unanswered() {
    let (addr, recorder) = sasl_listener(&[Mechanism::Plain]).await;
    let mut c = Client::connect(addr).await;
    c.send(ApiKey::Metadata, 12, 1, "t", &metadata()).await;
    c.expect_closed().await;
    // Also after a handshake, before the token.
    let mut c = Client::connect(addr).await;
    c.send(ApiKey::SaslHandshake, 1, 1, "t", &handshake("PLAIN"))
        .await;
    c.recv_response(ApiKey::SaslHandshake, 1, 1).await;
    c.send(ApiKey::Metadata, 12, 2, "t", &metadata()).await;
    c.expect_closed().await;
    assert!(
        recorder.seen.lock().unwrap().is_empty(),
        "nothing reached the broker"
    );
}

#[tokio::test]
async fn an_unsupported_mechanism_is_answered_with_the_enabled_ones_then_closed() {
    let mechanisms = [
        Mechanism::Scram(ScramMechanism::Sha256),
        Mechanism::Scram(ScramMechanism::Sha512),
    ];
    let (addr, _) = sasl_listener(&mechanisms).await;
    let mut c = Client::connect(addr).await;
    c.send(ApiKey::SaslHandshake, 1, 1, "t", &handshake("PLAIN"))
        .await;
    let ResponseKind::SaslHandshake(h) = c.recv_response(ApiKey::SaslHandshake, 1, 1).await else {
        panic!("SaslHandshake");
    };
    assert_eq!(h.error_code, 33, "UNSUPPORTED_SASL_MECHANISM");
    assert_eq!(
        h.mechanisms,
        vec![
            StrBytes::from_static_str("SCRAM-SHA-256"),
            StrBytes::from_static_str("SCRAM-SHA-512")
        ]
    );
    c.expect_closed().await;
}

/// Reference: SaslServerAuthenticator, handshake v0: the tokens that follow are bare
/// size-prefixed frames, and PLAIN's success is an empty frame (which librdkafka waits for).
#[tokio::test]
async fn handshake_v0_takes_unframed_tokens() {
    let (addr, recorder) = sasl_listener(&[Mechanism::Plain]).await;
    let mut c = Client::connect(addr).await;
    c.send(ApiKey::SaslHandshake, 0, 1, "t", &handshake("PLAIN"))
        .await;
    c.recv_response(ApiKey::SaslHandshake, 0, 1).await;
    let token = b"\0alice\0alice-secret";
    let mut frame = BytesMut::new();
    frame.put_i32(token.len() as i32);
    frame.put_slice(token);
    c.send_raw(&frame).await;
    assert!(c.recv_frame().await.is_empty(), "an empty frame on success");
    c.send(ApiKey::Metadata, 12, 2, "t", &metadata()).await;
    c.recv_response(ApiKey::Metadata, 12, 2).await;
    assert_eq!(recorder.seen.lock().unwrap()[0].1, "User:alice");

    // A wrong password on the v0 path: closed, no answer.
    let mut c = Client::connect(addr).await;
    c.send(ApiKey::SaslHandshake, 0, 1, "t", &handshake("PLAIN"))
        .await;
    c.recv_response(ApiKey::SaslHandshake, 0, 1).await;
    let token = b"\0alice\0nope";
    let mut frame = BytesMut::new();
    frame.put_i32(token.len() as i32);
    frame.put_slice(token);
    c.send_raw(&frame).await;
    c.expect_closed().await;
}

/// A frame larger than Kafka's `sasl.server.max.receive.size` (512 KiB) before
/// authentication closes the connection before anything is allocated for it.
#[tokio::test]
async fn a_10_mib_frame_before_authentication_is_refused() {
    let (addr, _) = sasl_listener(&[Mechanism::Plain]).await;
    let mut c = Client::connect(addr).await;
    c.send_raw(&(10i32 << 20).to_be_bytes()).await;
    c.expect_closed().await;
    // The listener still serves others.
    let mut c = Client::connect(addr).await;
    c.send(ApiKey::SaslHandshake, 1, 1, "t", &handshake("PLAIN"))
        .await;
    c.recv_response(ApiKey::SaslHandshake, 1, 1).await;
}

#[tokio::test]
async fn garbage_and_truncated_scram_messages_fail_cleanly() {
    let (addr, _) = sasl_listener(&[Mechanism::Scram(ScramMechanism::Sha256)]).await;
    for token in [
        &b"\xff\xfe"[..],
        b"n,,n=alice",
        b"n,,n=alice,r=",
        b"",
        b"y,,n=a,r=x",
    ] {
        let mut c = Client::connect(addr).await;
        c.send(
            ApiKey::SaslHandshake,
            1,
            1,
            "t",
            &handshake("SCRAM-SHA-256"),
        )
        .await;
        c.recv_response(ApiKey::SaslHandshake, 1, 1).await;
        c.send(ApiKey::SaslAuthenticate, 1, 2, "t", &authenticate(token))
            .await;
        let ResponseKind::SaslAuthenticate(a) =
            c.recv_response(ApiKey::SaslAuthenticate, 1, 2).await
        else {
            panic!("SaslAuthenticate");
        };
        assert_eq!(a.error_code, 58, "{token:?}");
        c.expect_closed().await;
    }
}

/// A TLS ClientHello on a plaintext port is refused as such, not read as a 369 MB request.
#[tokio::test]
async fn a_tls_hello_on_a_plaintext_listener_is_closed() {
    let (addr, recorder) = serve(ListenerSecurity::plaintext("PLAINTEXT")).await;
    let mut c = Client::connect(addr).await;
    c.send_raw(&[
        0x16, 0x03, 0x01, 0x00, 0xf0, 0x01, 0x00, 0x00, 0xec, 0x03, 0x03,
    ])
    .await;
    c.expect_closed().await;
    assert!(recorder.seen.lock().unwrap().is_empty());
}

fn tls_settings(pki: &TestPki, client_auth: ClientAuth) -> TlsSettings {
    TlsSettings {
        keystore: Keystore::Inline {
            chain: PemSource::Inline(pki.server_chain_pem.clone()),
            key: PemSource::Inline(pki.server_key_pem.clone()),
        },
        truststore: Some(PemSource::Inline(pki.ca_pem.clone())),
        client_auth,
        versions: vec![TlsVersion::Tls12, TlsVersion::Tls13],
    }
}

async fn tls_listener(
    pki: &TestPki,
    client_auth: ClientAuth,
) -> (std::net::SocketAddr, Arc<Recorder>) {
    let config = tls::server_config(&tls_settings(pki, client_auth)).expect("TLS config");
    let security =
        ListenerSecurity::new("SSL", SecurityProtocol::Ssl, Some(config), None).expect("listener");
    serve(security).await
}

async fn tls_connect(
    addr: std::net::SocketAddr,
    pki: &TestPki,
    with_certificate: bool,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pki.ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("CA");
    }
    #[allow(deprecated)] // ring's provider, as the broker uses
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = if with_certificate {
        let chain = CertificateDer::pem_slice_iter(pki.client_chain_pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .expect("client chain");
        let key = PrivateKeyDer::from_pem_slice(pki.client_key_pem.as_bytes()).expect("key");
        builder
            .with_client_auth_cert(chain, key)
            .expect("client cert")
    } else {
        builder.with_no_client_auth()
    };
    let tcp = TcpStream::connect(addr).await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut tls = connector
        .connect(ServerName::try_from("localhost").expect("name"), tcp)
        .await?;
    // TLS 1.3 reports a refused client certificate only at the first read: make one round
    // trip here so that every failure shows up in this function.
    exchange(&mut tls, ApiKey::ApiVersions, 3, 1).await?;
    Ok(tls)
}

/// Sends one request (an empty body of `api_key`) and reads one response frame.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
) -> std::io::Result<Bytes> {
    let body = match api_key {
        ApiKey::ApiVersions => RequestKind::ApiVersions(ApiVersionsRequest::default()),
        _ => metadata(),
    };
    stream
        .write_all(&request_frame(api_key, version, correlation_id, "t", &body))
        .await?;
    stream.flush().await?;
    let read = async {
        let size = stream.read_i32().await?;
        let mut frame = vec![0; size.max(0) as usize];
        stream.read_exact(&mut frame).await?;
        Ok::<_, std::io::Error>(Bytes::from(frame))
    };
    tokio::time::timeout(TEST_WAIT, read)
        .await
        .map_err(|_| std::io::Error::other("no response in time"))?
}

/// Reference: Kafka's DefaultKafkaPrincipalBuilder: an SSL client's principal is `User:` and
/// its certificate's subject in RFC 2253 form.
#[tokio::test]
async fn a_client_certificate_gives_the_connection_its_subject_as_principal() {
    let pki = TestPki::new();
    let (addr, recorder) = tls_listener(&pki, ClientAuth::Required).await;
    let mut tls = tls_connect(addr, &pki, true)
        .await
        .expect("TLS with a cert");
    let mut frame = exchange(&mut tls, ApiKey::Metadata, 12, 2)
        .await
        .expect("metadata");
    let header = ResponseHeader::decode(&mut frame, 1).expect("header");
    assert_eq!(header.correlation_id, 2);
    assert_eq!(
        recorder.seen.lock().unwrap().clone(),
        vec![("SSL".to_string(), CLIENT_PRINCIPAL.to_string())]
    );
}

#[tokio::test]
async fn required_client_auth_refuses_a_client_without_a_certificate() {
    let pki = TestPki::new();
    let (addr, recorder) = tls_listener(&pki, ClientAuth::Required).await;
    assert!(tls_connect(addr, &pki, false).await.is_err());
    assert!(recorder.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn requested_client_auth_lets_a_client_without_a_certificate_in_as_anonymous() {
    let pki = TestPki::new();
    let (addr, recorder) = tls_listener(&pki, ClientAuth::Requested).await;
    let mut tls = tls_connect(addr, &pki, false)
        .await
        .expect("TLS without a cert");
    exchange(&mut tls, ApiKey::Metadata, 12, 2)
        .await
        .expect("metadata");
    assert_eq!(recorder.seen.lock().unwrap()[0].1, "User:ANONYMOUS");
}

#[tokio::test]
async fn plaintext_on_a_tls_listener_is_closed() {
    let pki = TestPki::new();
    let (addr, recorder) = tls_listener(&pki, ClientAuth::None).await;
    let mut c = Client::connect(addr).await;
    c.send(
        ApiKey::ApiVersions,
        3,
        1,
        "t",
        &RequestKind::ApiVersions(ApiVersionsRequest::default()),
    )
    .await;
    c.expect_closed().await;
    assert!(recorder.seen.lock().unwrap().is_empty());
    // And TLS still works for the next client.
    tls_connect(addr, &pki, false).await.expect("TLS");
}

#[tokio::test]
async fn sasl_ssl_runs_sasl_inside_tls() {
    let pki = TestPki::new();
    let config = tls::server_config(&tls_settings(&pki, ClientAuth::None)).expect("TLS config");
    let security = ListenerSecurity::new(
        "SASL_SSL",
        SecurityProtocol::SaslSsl,
        Some(config),
        Some(sasl_config(&[Mechanism::Plain])),
    )
    .expect("listener");
    let (addr, recorder) = serve(security).await;
    let mut tls = tls_connect(addr, &pki, false).await.expect("TLS");
    // Before SASL, Metadata closes the connection even inside TLS.
    assert!(exchange(&mut tls, ApiKey::Metadata, 12, 2).await.is_err());
    assert!(recorder.seen.lock().unwrap().is_empty());
}

/// The listener checks its own consistency: a SASL protocol without users, or TLS without a
/// configuration, is refused when the listener is built.
#[test]
fn listener_security_refuses_missing_pieces() {
    let empty = Arc::new(SaslConfig {
        mechanisms: vec![Mechanism::Plain],
        users: SaslUsers::default(),
    });
    let e =
        ListenerSecurity::new("X", SecurityProtocol::SaslPlaintext, None, Some(empty)).unwrap_err();
    assert!(e.contains("no SASL users"), "{e}");
    let e = ListenerSecurity::new("X", SecurityProtocol::Ssl, None, None).unwrap_err();
    assert!(e.contains("needs TLS settings"), "{e}");
}

/// A TLS client that connects and never finishes the handshake (or never starts it) is closed
/// after the handshake timeout; the listener keeps serving others.
#[tokio::test]
async fn a_tls_handshake_that_never_finishes_is_closed_after_the_timeout() {
    let pki = TestPki::new();
    let config = tls::server_config(&tls_settings(&pki, ClientAuth::None)).expect("TLS config");
    let security =
        ListenerSecurity::new("SSL", SecurityProtocol::Ssl, Some(config), None).expect("listener");
    let wire = WireConfig {
        tls_handshake_timeout: std::time::Duration::from_millis(300),
        ..WireConfig::default()
    };
    let (addr, _) = serve_with(security, wire).await;
    for start in [&[][..], &[0x16, 0x03, 0x01][..]] {
        let mut c = Client::connect(addr).await;
        c.send_raw(start).await;
        let began = std::time::Instant::now();
        c.expect_closed().await;
        assert!(began.elapsed() < std::time::Duration::from_secs(5));
    }
    tls_connect(addr, &pki, false)
        .await
        .expect("TLS still served");
}

/// Reference: Kafka's `connection.failed.authentication.delay.ms`: the failure's answer
/// comes only after the delay.
#[tokio::test]
async fn a_failed_authentication_is_answered_after_the_delay() {
    let security = ListenerSecurity::new(
        "SASL_PLAINTEXT",
        SecurityProtocol::SaslPlaintext,
        None,
        Some(sasl_config(&[Mechanism::Plain])),
    )
    .expect("listener");
    let delay = std::time::Duration::from_millis(400);
    let wire = WireConfig {
        failed_authentication_delay: delay,
        ..WireConfig::default()
    };
    let (addr, _) = serve_with(security, wire).await;
    let mut c = Client::connect(addr).await;
    c.send(ApiKey::SaslHandshake, 1, 1, "t", &handshake("PLAIN"))
        .await;
    c.recv_response(ApiKey::SaslHandshake, 1, 1).await;
    let began = std::time::Instant::now();
    c.send(
        ApiKey::SaslAuthenticate,
        1,
        2,
        "t",
        &authenticate(b"\0alice\0bad"),
    )
    .await;
    let ResponseKind::SaslAuthenticate(a) = c.recv_response(ApiKey::SaslAuthenticate, 1, 2).await
    else {
        panic!("SaslAuthenticate");
    };
    assert_eq!(a.error_code, 58);
    assert!(began.elapsed() >= delay, "{:?}", began.elapsed());
    c.expect_closed().await;
}

/// Logs in with PLAIN over handshake v1 and SaslAuthenticate v2; the response's
/// `session_lifetime_ms`.
async fn plain_login(
    c: &mut Client,
    token: &[u8],
    correlation_id: i32,
) -> SaslAuthenticateResponse {
    c.send(
        ApiKey::SaslHandshake,
        1,
        correlation_id,
        "t",
        &handshake("PLAIN"),
    )
    .await;
    let ResponseKind::SaslHandshake(h) = c
        .recv_response(ApiKey::SaslHandshake, 1, correlation_id)
        .await
    else {
        panic!("SaslHandshake");
    };
    assert_eq!(h.error_code, 0);
    c.send(
        ApiKey::SaslAuthenticate,
        2,
        correlation_id + 1,
        "t",
        &authenticate(token),
    )
    .await;
    let ResponseKind::SaslAuthenticate(a) = c
        .recv_response(ApiKey::SaslAuthenticate, 2, correlation_id + 1)
        .await
    else {
        panic!("SaslAuthenticate");
    };
    a
}

async fn reauth_listener(lifetime_ms: u64) -> (std::net::SocketAddr, Arc<Recorder>) {
    let security = ListenerSecurity::new(
        "SASL_PLAINTEXT",
        SecurityProtocol::SaslPlaintext,
        None,
        Some(sasl_config(&[
            Mechanism::Plain,
            Mechanism::Scram(ScramMechanism::Sha256),
        ])),
    )
    .expect("listener");
    let wire = WireConfig {
        connections_max_reauth: Some(std::time::Duration::from_millis(lifetime_ms)),
        ..WireConfig::default()
    };
    serve_with(security, wire).await
}

/// Reference: KIP-368: SaslAuthenticate v1+ carries the session's lifetime; the client
/// re-authenticates on the same connection (SaslHandshake, SaslAuthenticate) before it ends.
#[tokio::test]
async fn reauthentication_renews_the_session_on_the_same_connection() {
    let (addr, recorder) = reauth_listener(800).await;
    let mut c = Client::connect(addr).await;
    let a = plain_login(&mut c, b"\0alice\0alice-secret", 1).await;
    assert_eq!((a.error_code, a.session_lifetime_ms), (0, 800));
    c.send(ApiKey::Metadata, 12, 3, "t", &metadata()).await;
    c.recv_response(ApiKey::Metadata, 12, 3).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let a = plain_login(&mut c, b"\0alice\0alice-secret", 4).await;
    assert_eq!((a.error_code, a.session_lifetime_ms), (0, 800));
    // 1 s after the first login, past its lifetime but within the renewed one.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    c.send(ApiKey::Metadata, 12, 6, "t", &metadata()).await;
    c.recv_response(ApiKey::Metadata, 12, 6).await;
    let seen = recorder.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|(_, p)| p == "User:alice"), "{seen:?}");
}

/// Reference: KIP-368: a request after the session expired closes the connection.
#[tokio::test]
async fn a_request_after_the_session_expired_closes_the_connection() {
    let (addr, recorder) = reauth_listener(300).await;
    let mut c = Client::connect(addr).await;
    plain_login(&mut c, b"\0alice\0alice-secret", 1).await;
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    c.send(ApiKey::Metadata, 12, 3, "t", &metadata()).await;
    c.expect_closed().await;
    assert!(recorder.seen.lock().unwrap().is_empty());
}

/// Reference: KIP-368 (and Kafka's SaslServerAuthenticator): re-authentication keeps the
/// principal and the mechanism.
#[tokio::test]
async fn reauthentication_as_another_user_or_mechanism_is_refused() {
    let (addr, _) = reauth_listener(5000).await;
    let mut c = Client::connect(addr).await;
    plain_login(&mut c, b"\0alice\0alice-secret", 1).await;
    let a = plain_login(&mut c, b"\0bob\0bob-secret", 3).await;
    assert_eq!(a.error_code, 58);
    assert_eq!(
        a.error_message.as_deref(),
        Some("Cannot change principals during re-authentication")
    );
    c.expect_closed().await;

    let mut c = Client::connect(addr).await;
    plain_login(&mut c, b"\0alice\0alice-secret", 1).await;
    c.send(
        ApiKey::SaslHandshake,
        1,
        3,
        "t",
        &handshake("SCRAM-SHA-256"),
    )
    .await;
    let ResponseKind::SaslHandshake(h) = c.recv_response(ApiKey::SaslHandshake, 1, 3).await else {
        panic!("SaslHandshake");
    };
    assert_eq!(h.error_code, 33);
    c.expect_closed().await;
}

/// Without `connections.max.reauth.ms`, sessions never expire and a second SaslHandshake
/// closes the connection.
#[tokio::test]
async fn without_reauthentication_a_second_handshake_closes_the_connection() {
    let (addr, _) = sasl_listener(&[Mechanism::Plain]).await;
    let mut c = Client::connect(addr).await;
    let a = plain_login(&mut c, b"\0alice\0alice-secret", 1).await;
    assert_eq!((a.error_code, a.session_lifetime_ms), (0, 0));
    c.send(ApiKey::SaslHandshake, 1, 3, "t", &handshake("PLAIN"))
        .await;
    c.expect_closed().await;
}

/// A thousand failed logins in a row (PLAIN with an unknown user, a wrong password, garbage
/// SCRAM): each is answered SASL_AUTHENTICATION_FAILED and closed, and a good login works
/// after them, and during them.
#[tokio::test]
async fn a_thousand_failed_logins_leave_the_listener_serving() {
    let security = ListenerSecurity::new(
        "SASL_PLAINTEXT",
        SecurityProtocol::SaslPlaintext,
        None,
        Some(sasl_config(&[
            Mechanism::Plain,
            Mechanism::Scram(ScramMechanism::Sha512),
        ])),
    )
    .expect("listener");
    let wire = WireConfig {
        failed_authentication_delay: std::time::Duration::ZERO,
        ..WireConfig::default()
    };
    let (addr, recorder) = serve_with(security, wire).await;
    let mut good = Client::connect(addr).await;
    assert_eq!(
        plain_login(&mut good, b"\0alice\0alice-secret", 1)
            .await
            .error_code,
        0
    );
    const ROUNDS: usize = 20;
    const PER_ROUND: usize = 50;
    for round in 0..ROUNDS {
        let attempts = (0..PER_ROUND).map(|i| async move {
            let mut c = Client::connect(addr).await;
            let (mechanism, token): (&str, &[u8]) = match i % 3 {
                0 => ("PLAIN", b"\0mallory\0guess"),
                1 => ("PLAIN", b"\0alice\0guess"),
                _ => ("SCRAM-SHA-512", b"n,,n=alice,r=\xff"),
            };
            c.send(ApiKey::SaslHandshake, 1, 1, "t", &handshake(mechanism))
                .await;
            c.recv_response(ApiKey::SaslHandshake, 1, 1).await;
            c.send(ApiKey::SaslAuthenticate, 1, 2, "t", &authenticate(token))
                .await;
            let ResponseKind::SaslAuthenticate(a) =
                c.recv_response(ApiKey::SaslAuthenticate, 1, 2).await
            else {
                panic!("SaslAuthenticate");
            };
            assert_eq!(a.error_code, 58);
            c.expect_closed().await;
        });
        futures_join_all(attempts).await;
        // The authenticated connection is served between rounds.
        let correlation_id = 10 + round as i32;
        good.send(ApiKey::Metadata, 12, correlation_id, "t", &metadata())
            .await;
        good.recv_response(ApiKey::Metadata, 12, correlation_id)
            .await;
    }
    let mut late = Client::connect(addr).await;
    assert_eq!(
        plain_login(&mut late, b"\0alice\0alice-secret", 1)
            .await
            .error_code,
        0
    );
    assert_eq!(recorder.seen.lock().unwrap().len(), ROUNDS);
}

/// Runs the futures as tasks and waits for all; a panic in one fails the test.
async fn futures_join_all<F: Future<Output = ()> + Send + 'static>(
    futures: impl Iterator<Item = F>,
) {
    let tasks: Vec<_> = futures.map(tokio::spawn).collect();
    for task in tasks {
        task.await.expect("a login attempt failed");
    }
}

/// `keel_authentications_total` counts each SASL login by mechanism and result.
#[tokio::test]
async fn logins_are_counted_by_mechanism_and_result() {
    let security = ListenerSecurity::new(
        "SASL_PLAINTEXT",
        SecurityProtocol::SaslPlaintext,
        None,
        Some(sasl_config(&[Mechanism::Plain])),
    )
    .expect("listener");
    let socket = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = socket.local_addr().expect("addr");
    let metrics = Arc::new(keel_node::metrics::Metrics::new());
    let server = WireServer::for_listener(
        Arc::new(Recorder::default()),
        SupportedApis::all(),
        WireConfig::default(),
        Some(metrics.clone()),
        security,
    );
    tokio::spawn(server.serve(socket));
    for (password, error) in [("alice-secret", 0), ("wrong", 58), ("wrong", 58)] {
        let mut c = Client::connect(addr).await;
        c.send(ApiKey::SaslHandshake, 1, 1, "t", &handshake("PLAIN"))
            .await;
        c.recv_response(ApiKey::SaslHandshake, 1, 1).await;
        let token = format!("\0alice\0{password}");
        c.send(
            ApiKey::SaslAuthenticate,
            2,
            2,
            "t",
            &authenticate(token.as_bytes()),
        )
        .await;
        let ResponseKind::SaslAuthenticate(a) =
            c.recv_response(ApiKey::SaslAuthenticate, 2, 2).await
        else {
            panic!("SaslAuthenticate");
        };
        assert_eq!(a.error_code, error);
    }
    let rendered = metrics.render();
    for line in [
        "keel_authentications_total{mechanism=\"PLAIN\",result=\"success\"} 1\n",
        "keel_authentications_total{mechanism=\"PLAIN\",result=\"failure\"} 2\n",
        "keel_authentications_total{mechanism=\"SCRAM-SHA-256\",result=\"failure\"} 0\n",
    ] {
        assert!(rendered.contains(line), "no {line:?} in\n{rendered}");
    }
}
