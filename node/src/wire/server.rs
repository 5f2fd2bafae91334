//! The listener and the per-connection tasks.
//!
//! One accept loop per listener ([`WireServer::serve`]); per connection, one task that runs
//! a reader and a writer side by side:
//!
//! ```text
//!  socket ──► reader: frame, classify ──► handler.handle() (in order) ──► spawned future ─┐
//!                 │                                                                        │
//!                 └─► slot queue (request order, ≤ in_flight_per_connection_max) ◄─ oneshot ┘
//!                                   │
//!                       writer: await the head slot, write it ──► socket
//! ```
//!
//! What always holds, per connection:
//! - at most `in_flight_per_connection_max` requests are between "frame read" and "response
//!   written" (or, for acks=0, "handler finished"); when that many are in flight the reader
//!   stops reading, which back-pressures the client through TCP;
//! - responses are written in request order, whatever order the handler futures finish in;
//!   a Produce with acks=0 gets no response and no slot in that order;
//! - a size prefix that is negative or above `socket_request_max_bytes` closes the connection
//!   before anything is allocated for the frame; the read buffer grows by at most
//!   [`READ_CHUNK_BYTES`] beyond the bytes actually received;
//! - a frame's body is read only once the broker-wide bound on queued request bytes
//!   (`queued.max.request.bytes`, [`ConnectionLimits::with_queued_request_bytes`]) admits its
//!   whole size; until then the connection reads nothing more (back-pressure through TCP),
//!   and the admitted bytes stay counted until the request is answered (for acks=0, until
//!   its handler finished). Waiting for admission is not idling;
//! - a Produce or Fetch answered with `throttle_time_ms` (a client over its quota) is written
//!   at once, and the connection's next request is neither served nor followed by further
//!   reads until that time has passed (KIP-219's muted channel);
//! - a malformed frame, an unknown API, an unsupported version, a handler error or a missing or
//!   mismatched response closes this connection only, discarding responses not yet written;
//!   other connections and the listener carry on. A clean EOF from the client lets the
//!   responses already owed be written before the connection closes.
//!
//! Security, per listener ([`ListenerSecurity`]; docs/security.md):
//! - on a TLS listener (SSL, SASL_SSL) the connection's first byte must open a TLS record
//!   (0x16); otherwise the client speaks plaintext to a TLS port and the connection is closed
//!   with one log line. The handshake must finish within
//!   [`WireConfig::tls_handshake_timeout`]. A client
//!   certificate, when one is sent and verified, gives the connection its principal;
//! - on a plaintext listener (PLAINTEXT, SASL_PLAINTEXT) a first frame whose size prefix starts
//!   `0x16 0x03` is a TLS ClientHello: closed with one log line, not read as a request;
//! - on a SASL listener, until the exchange succeeds, only ApiVersions, SaslHandshake and
//!   SaslAuthenticate are read (anything else closes the connection), frames are bounded by
//!   [`SASL_FRAME_BYTES_MAX`], and after SaslHandshake v0 the tokens travel as bare
//!   size-prefixed frames (Kafka's unframed v0 form). A failed exchange waits
//!   [`WireConfig::failed_authentication_delay`], writes its SASL_AUTHENTICATION_FAILED
//!   response (none after handshake v0) and closes. With
//!   [`WireConfig::connections_max_reauth`] set, SaslAuthenticate v1+ tells the client its
//!   session's lifetime, a SaslHandshake v1 with the same mechanism re-authenticates on the
//!   same connection (KIP-368; the user must stay the same), and the first request after the
//!   session expired closes the connection; without it, SaslHandshake or SaslAuthenticate
//!   after success closes the connection;
//! - every request's [`RequestContext`] carries the listener's name and the connection's
//!   principal.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{
    ApiKey, RequestKind, ResponseKind, SaslAuthenticateResponse, SaslHandshakeResponse,
};
use kafka_protocol::protocol::StrBytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, error, info, warn};

use super::codec::{
    classify, encode_response, frame_size, header_prefix, DecodeError, DecodedRequest, EncodeError,
    FrameSizeError, Inbound, SIZE_PREFIX_BYTES, SOCKET_REQUEST_MAX_BYTES_DEFAULT,
};
use super::handler::{Handler, HandlerError, HandlerResult, RequestContext};
use super::versions::SupportedApis;
use crate::security::sasl::{Mechanism, SaslConfig, SaslError, SaslExchange, Step};
use crate::security::{tls, ListenerSecurity, Principal};

/// Default bound on requests in flight per connection (read but not yet answered).
pub const IN_FLIGHT_PER_CONNECTION_MAX_DEFAULT: usize = 32;

/// Most bytes the read buffer grows by per read: a frame's memory follows the bytes that have
/// arrived, not the size its prefix announced. 1 MiB, so that a produce of up to a
/// `batch.size` of 1 MB is read into one allocation: growing by less copies what has arrived
/// into each larger buffer.
pub const READ_CHUNK_BYTES: usize = 1024 * 1024;

/// Pause after a failed `accept` (for example out of file descriptors) before trying again.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Default of [`WireConfig::tls_handshake_timeout`].
pub const TLS_HANDSHAKE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

/// Default of [`WireConfig::failed_authentication_delay`] (Kafka's default, 100 ms).
pub const FAILED_AUTHENTICATION_DELAY_DEFAULT: Duration = Duration::from_millis(100);

/// The largest frame read on a SASL listener before authentication (Kafka's
/// `sasl.server.max.receive.size` default, 512 KiB): a SASL token is a few hundred bytes.
pub const SASL_FRAME_BYTES_MAX: usize = 512 * 1024;

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// The first byte of a TLS record's version (3 for SSL 3.0 and every TLS version).
const TLS_VERSION_MAJOR: u8 = 0x03;

/// Settings of one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireConfig {
    /// Largest request frame accepted (Kafka's `socket.request.max.bytes`, default 100 MiB).
    pub socket_request_max_bytes: usize,
    /// Requests in flight per connection before the reader stops reading (at least 1).
    pub in_flight_per_connection_max: usize,
    /// How long a TLS client has to send its first byte and finish the handshake.
    pub tls_handshake_timeout: Duration,
    /// How long a failed SASL authentication waits before its answer and the close (Kafka's
    /// `connection.failed.authentication.delay.ms`): a client that retries at once (librdkafka
    /// reconnects within 50 ms) is slowed to this pace per connection.
    pub failed_authentication_delay: Duration,
    /// Kafka's `connections.max.reauth.ms` (KIP-368): the lifetime of a SASL session told to
    /// clients in SaslAuthenticate v1+, within which they re-authenticate on the same
    /// connection; a request after it closes the connection. `None`: sessions never expire and
    /// re-authentication is refused.
    pub connections_max_reauth: Option<Duration>,
    /// Kafka's `connections.max.idle.ms`: a connection with no request in flight that
    /// completes no request for this long is closed (a client gone quiet, or one that trickles
    /// a frame a byte at a time). `None`: never.
    pub connections_max_idle: Option<Duration>,
    /// How many connections the broker and each client address may hold
    /// (`max.connections`, `max.connections.per.ip`); shared by every listener that clones
    /// this configuration.
    pub limits: Arc<ConnectionLimits>,
}

/// Two configurations are equal when their limits are the same object (shared by the same
/// listeners).
impl PartialEq for ConnectionLimits {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for ConnectionLimits {}

/// The broker's connection limits, shared by its listeners. At `max.connections` the accept
/// loops stop accepting until a connection closes (Kafka's acceptor does the same: new
/// clients wait in the TCP backlog); a client address at `max.connections.per.ip` has its new
/// connection closed at once.
///
/// They also hold `queued.max.request.bytes`: the bytes of requests read and not yet answered,
/// all connections together. A connection whose next frame does not fit waits, reading
/// nothing, until answers free room (Kafka's memory pool mutes such a channel the same way).
/// A frame is admitted as soon as it fits: a small request (a well-behaved client's) passes
/// large ones waiting for room, as in Kafka, where each muted channel tries again on its own.
#[derive(Debug)]
pub struct ConnectionLimits {
    total: Arc<Semaphore>,
    per_ip_max: usize,
    per_ip: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    /// `queued.max.request.bytes`; `None`: unbounded.
    queued: Option<QueuedBytesBound>,
}

/// The bytes admitted and not yet answered, at most `bytes_max`.
#[derive(Debug)]
struct QueuedBytesBound {
    bytes: std::sync::Mutex<usize>,
    bytes_max: usize,
    /// Signalled whenever admitted bytes are released.
    freed: Notify,
}

impl ConnectionLimits {
    /// At most `max_connections` open in all, `max_per_ip` from one address (each at least 1).
    pub fn new(max_connections: usize, max_per_ip: usize) -> ConnectionLimits {
        ConnectionLimits {
            total: Arc::new(Semaphore::new(
                max_connections.clamp(1, Semaphore::MAX_PERMITS),
            )),
            per_ip_max: max_per_ip.max(1),
            per_ip: std::sync::Mutex::new(std::collections::HashMap::new()),
            queued: None,
        }
    }

    /// The same limits, with at most `bytes_max` bytes of requests read and not yet answered
    /// (`queued.max.request.bytes`; `None`: unbounded). A frame larger than the bound (which
    /// `keel start`'s settings refuse: the bound is at least `socket.request.max.bytes`) is
    /// admitted alone, taking the whole bound.
    pub fn with_queued_request_bytes(mut self, bytes_max: Option<usize>) -> ConnectionLimits {
        self.queued = bytes_max.map(|bytes_max| QueuedBytesBound {
            bytes: std::sync::Mutex::new(0),
            bytes_max: bytes_max.max(1),
            freed: Notify::new(),
        });
        self
    }

    /// Bytes of requests admitted under `queued.max.request.bytes` and not yet answered; 0
    /// when unbounded. Never above the bound.
    pub fn queued_request_bytes(&self) -> usize {
        self.queued
            .as_ref()
            .map_or(0, |q| *q.bytes.lock().expect("queued bytes poisoned"))
    }

    /// Waits until `bytes` more fit under `queued.max.request.bytes`, and counts them until the
    /// returned value drops.
    async fn admit_request(
        self: &Arc<Self>,
        bytes: usize,
        metrics: Option<&Arc<crate::metrics::Metrics>>,
    ) -> QueuedRequest {
        let mut counted = 0;
        if let Some(bound) = &self.queued {
            // At most the bound, so that an oversized frame waits for an empty pool rather
            // than forever.
            let want = bytes.min(bound.bytes_max);
            loop {
                // Registered before the check, so that a release between the two wakes it.
                let freed = bound.freed.notified();
                tokio::pin!(freed);
                freed.as_mut().enable();
                {
                    let mut queued = bound.bytes.lock().expect("queued bytes poisoned");
                    if *queued + want <= bound.bytes_max {
                        *queued += want;
                        break;
                    }
                }
                freed.await;
            }
            counted = want;
        }
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        if let Some(metrics) = metrics {
            metrics.add_request_queue_bytes(bytes);
        }
        QueuedRequest {
            limits: self.clone(),
            counted,
            bytes,
            metrics: metrics.cloned(),
        }
    }

    /// No limit but the machine's.
    pub fn unlimited() -> ConnectionLimits {
        ConnectionLimits::new(usize::MAX, usize::MAX)
    }

    /// Counts a connection from `ip`, or `None` if that address is at its limit.
    fn admit(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<IpSlot> {
        let mut per_ip = self.per_ip.lock().expect("connection counts poisoned");
        let open = per_ip.entry(ip).or_insert(0);
        if *open >= self.per_ip_max {
            return None;
        }
        *open += 1;
        Some(IpSlot {
            limits: self.clone(),
            ip,
        })
    }
}

/// The bytes of one request, counted against `queued.max.request.bytes` and in
/// `keel_request_queue_bytes` from its admission until it is answered (dropped).
struct QueuedRequest {
    limits: Arc<ConnectionLimits>,
    /// The bytes counted against the bound (0 when unbounded).
    counted: usize,
    /// The frame's bytes, as `keel_request_queue_bytes` counts them.
    bytes: i64,
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl Drop for QueuedRequest {
    fn drop(&mut self) {
        if let Some(bound) = &self.limits.queued {
            let mut queued = bound.bytes.lock().expect("queued bytes poisoned");
            assert!(
                *queued >= self.counted,
                "queued request bytes: releases never exceed admissions"
            );
            *queued -= self.counted;
            drop(queued);
            bound.freed.notify_waiters();
        }
        if let Some(metrics) = &self.metrics {
            metrics.add_request_queue_bytes(-self.bytes);
        }
    }
}

/// What a request holds from its frame being read until it is answered: its place among the
/// connection's requests in flight, and its bytes under `queued.max.request.bytes`.
struct Held {
    _in_flight: OwnedSemaphorePermit,
    _queued: QueuedRequest,
}

/// One connection counted against its address; uncounted when dropped.
struct IpSlot {
    limits: Arc<ConnectionLimits>,
    ip: std::net::IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut per_ip = self
            .limits
            .per_ip
            .lock()
            .expect("connection counts poisoned");
        if let Some(open) = per_ip.get_mut(&self.ip) {
            *open -= 1;
            if *open == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

impl Default for WireConfig {
    fn default() -> Self {
        Self {
            socket_request_max_bytes: SOCKET_REQUEST_MAX_BYTES_DEFAULT,
            in_flight_per_connection_max: IN_FLIGHT_PER_CONNECTION_MAX_DEFAULT,
            tls_handshake_timeout: TLS_HANDSHAKE_TIMEOUT_DEFAULT,
            failed_authentication_delay: FAILED_AUTHENTICATION_DELAY_DEFAULT,
            connections_max_reauth: None,
            connections_max_idle: None,
            limits: Arc::new(ConnectionLimits::unlimited()),
        }
    }
}

/// Why a connection closed. Logged, never returned to the client.
#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    FrameSize(#[from] FrameSizeError),
    #[error("client closed the connection inside a frame")]
    EofInsideFrame,
    #[error("idle for {idle:?} (connections.max.idle.ms)")]
    Idle { idle: Duration },
    /// A TLS ClientHello where a frame should start; reported as [`Self::TlsOnPlaintext`].
    #[error("a TLS handshake on a listener without TLS")]
    TlsHello,
    #[error("{0}")]
    Decode(#[from] DecodeError),
    #[error("{0}")]
    Encode(#[from] EncodeError),
    #[error("handler failed on {api_key:?} v{api_version}: {error}")]
    Handler {
        api_key: ApiKey,
        api_version: i16,
        error: HandlerError,
    },
    #[error(
        "handler gave no response to {api_key:?} v{api_version} (correlation id {correlation_id})"
    )]
    MissingResponse {
        api_key: ApiKey,
        api_version: i16,
        correlation_id: i32,
    },
    #[error("handler task ended without a result (panicked?)")]
    HandlerTaskLost,
    #[error("handler failed on an acks=0 produce")]
    AcksZeroHandlerFailed,
    #[error("response writer stopped")]
    WriterStopped,
    #[error(
        "a TLS handshake arrived on the plaintext listener {listener}: the client speaks TLS \
         (security.protocol SSL or SASL_SSL) to a port without it"
    )]
    TlsOnPlaintext { listener: Arc<str> },
    #[error(
        "the client sent plaintext (first byte {first:#04x}) to the TLS listener {listener}: \
         it should use security.protocol SSL or SASL_SSL"
    )]
    PlaintextOnTls { listener: Arc<str>, first: u8 },
    #[error("TLS handshake on listener {listener} failed: {error}")]
    TlsHandshake {
        listener: Arc<str>,
        error: std::io::Error,
    },
    #[error("TLS handshake on listener {listener} did not finish within {timeout:?}")]
    TlsHandshakeTimeout {
        listener: Arc<str>,
        timeout: Duration,
    },
    #[error("{request} before SASL authentication on listener {listener}")]
    Unauthenticated {
        listener: Arc<str>,
        /// The API's name, or its raw key when keel does not know it.
        request: String,
    },
    #[error("SASL mechanism {mechanism:?} is not enabled on listener {listener}")]
    UnsupportedMechanism {
        listener: Arc<str>,
        mechanism: String,
    },
    #[error("SASL/{mechanism} authentication failed on listener {listener}: {error}")]
    AuthenticationFailed {
        listener: Arc<str>,
        mechanism: Mechanism,
        error: SaslError,
    },
    #[error(
        "{api_key:?} after SASL authentication (re-authentication needs \
         connections.max.reauth.ms and SaslHandshake v1)"
    )]
    Reauthentication { api_key: ApiKey },
    #[error(
        "the SASL session of User:{user} on listener {listener} expired without \
         re-authentication"
    )]
    SessionExpired { listener: Arc<str>, user: String },
}

impl ConnectionError {
    /// Whether this closes the connection because of keel (logged as an error) rather than
    /// because of the client.
    fn is_keel_side(&self) -> bool {
        matches!(
            self,
            ConnectionError::Encode(_)
                | ConnectionError::Handler { .. }
                | ConnectionError::MissingResponse { .. }
                | ConnectionError::HandlerTaskLost
                | ConnectionError::AcksZeroHandlerFailed
        )
    }
}

/// A Kafka listener: accepts connections and serves them with a [`Handler`].
#[derive(Debug)]
pub struct WireServer<H> {
    handler: Arc<H>,
    apis: SupportedApis,
    config: WireConfig,
    listener: ListenerSecurity,
    next_connection_id: AtomicU64,
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl<H: Handler> WireServer<H> {
    /// A PLAINTEXT listener called `PLAINTEXT` for `handler`, advertising and accepting `apis`.
    /// An `in_flight_per_connection_max` of 0 is taken as 1.
    pub fn new(handler: Arc<H>, apis: SupportedApis, config: WireConfig) -> Arc<Self> {
        Self::for_listener(handler, apis, config, None, ListenerSecurity::default())
    }

    /// The same server, counting its open connections in `metrics` (`keel_connections`).
    pub fn with_metrics(
        handler: Arc<H>,
        apis: SupportedApis,
        config: WireConfig,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Arc<Self> {
        Self::for_listener(
            handler,
            apis,
            config,
            Some(metrics),
            ListenerSecurity::default(),
        )
    }

    /// A server for one listener of `keel start`: its name and security protocol come from
    /// `listener`, which also holds the TLS and SASL configurations the protocol needs.
    pub fn for_listener(
        handler: Arc<H>,
        apis: SupportedApis,
        mut config: WireConfig,
        metrics: Option<Arc<crate::metrics::Metrics>>,
        listener: ListenerSecurity,
    ) -> Arc<Self> {
        config.in_flight_per_connection_max = config.in_flight_per_connection_max.max(1);
        Arc::new(Self {
            handler,
            apis,
            config,
            listener,
            next_connection_id: AtomicU64::new(0),
            metrics,
        })
    }

    /// The listener this server serves.
    pub fn listener(&self) -> &ListenerSecurity {
        &self.listener
    }

    /// The APIs this server advertises.
    pub fn apis(&self) -> &SupportedApis {
        &self.apis
    }

    /// The settings in force.
    pub fn config(&self) -> &WireConfig {
        &self.config
    }

    /// Accepts connections from `listener` forever, one task per connection. Failed accepts
    /// are logged and retried after [`ACCEPT_ERROR_BACKOFF`]. Stop it by dropping (aborting)
    /// the task that runs it; connections already accepted keep running until they close.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            // At max.connections, nothing is accepted until a connection closes.
            let permit = self
                .config
                .limits
                .total
                .clone()
                .acquire_owned()
                .await
                .expect("the connection semaphore is never closed");
            match listener.accept().await {
                Ok((stream, peer)) => {
                    let server = self.clone();
                    tokio::spawn(async move {
                        server.serve_connection(stream, peer).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            }
        }
    }

    /// Serves one accepted connection until it closes.
    pub async fn serve_connection(self: Arc<Self>, stream: TcpStream, peer: SocketAddr) {
        let connection_id = self.next_connection_id.fetch_add(1, Ordering::Relaxed);
        let Some(_ip_slot) = self.config.limits.admit(peer.ip()) else {
            info!(connection_id, %peer, listener = %self.listener.name(), "closing connection: max.connections.per.ip ({}) reached for this address", self.config.limits.per_ip_max);
            return;
        };
        let _open = self.metrics.as_ref().map(|m| m.connection_opened());
        if let Err(e) = stream.set_nodelay(true) {
            debug!(connection_id, %peer, error = %e, "set_nodelay failed");
        }
        debug!(connection_id, %peer, listener = %self.listener.name(), "connection accepted");
        let served = match self.listener.tls().cloned() {
            None => {
                self.run_connection(stream, peer, connection_id, Principal::anonymous())
                    .await
            }
            Some(config) => match self.accept_tls(stream, config).await {
                Ok((stream, principal)) => {
                    self.run_connection(stream, peer, connection_id, principal)
                        .await
                }
                Err(e) => Err(e),
            },
        };
        match served {
            Ok(()) => debug!(connection_id, %peer, "connection closed by client"),
            Err(e) if e.is_keel_side() => {
                error!(connection_id, %peer, error = %e, "closing connection")
            }
            Err(ConnectionError::Io(e)) => {
                debug!(connection_id, %peer, error = %e, "connection lost")
            }
            Err(e) => info!(connection_id, %peer, error = %e, "closing connection"),
        }
    }

    /// The TLS handshake, bounded by [`WireConfig::tls_handshake_timeout`]: the stream and the principal
    /// of the client certificate (ANONYMOUS without one).
    async fn accept_tls(
        &self,
        mut stream: TcpStream,
        config: Arc<rustls::ServerConfig>,
    ) -> Result<
        (
            tokio_rustls::server::TlsStream<Rewind<TcpStream>>,
            Principal,
        ),
        ConnectionError,
    > {
        let listener = self.listener.name().clone();
        let handshake = async {
            let mut first = [0u8; 1];
            if stream.read(&mut first).await? == 0 {
                return Err(ConnectionError::Io(
                    std::io::ErrorKind::UnexpectedEof.into(),
                ));
            }
            if first[0] != TLS_HANDSHAKE_RECORD {
                return Err(ConnectionError::PlaintextOnTls {
                    listener: listener.clone(),
                    first: first[0],
                });
            }
            let rewound = Rewind {
                first: Some(first[0]),
                inner: stream,
            };
            tokio_rustls::TlsAcceptor::from(config)
                .accept(rewound)
                .await
                .map_err(|error| ConnectionError::TlsHandshake {
                    listener: listener.clone(),
                    error,
                })
        };
        let timeout = self.config.tls_handshake_timeout;
        let tls = tokio::time::timeout(timeout, handshake)
            .await
            .map_err(|_| ConnectionError::TlsHandshakeTimeout {
                listener: listener.clone(),
                timeout,
            })??;
        let principal = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| tls::principal_from_certificate(leaf))
            .map_or_else(Principal::anonymous, Principal::from_text);
        Ok((tls, principal))
    }

    async fn run_connection<S: AsyncRead + AsyncWrite>(
        &self,
        stream: S,
        peer: SocketAddr,
        connection_id: u64,
        principal: Principal,
    ) -> Result<(), ConnectionError> {
        let (rd, wr) = tokio::io::split(stream);
        let in_flight_max = self.config.in_flight_per_connection_max;
        let (slots_tx, slots_rx) = mpsc::channel(in_flight_max);
        let auth = match self.listener.sasl() {
            Some(sasl) => Auth::Handshake(sasl.clone()),
            None => Auth::Open,
        };
        let conn = Connection {
            server: self,
            peer,
            connection_id,
            principal,
            auth,
            in_flight: Arc::new(Semaphore::new(in_flight_max)),
            slots: slots_tx,
            acks_zero_failed: Arc::new(Notify::new()),
            muted_until: Arc::default(),
        };
        let acks_zero_failed = conn.acks_zero_failed.clone();
        let reader = conn.read_loop(rd);
        let writer = write_loop(wr, slots_rx);
        tokio::pin!(reader, writer);
        tokio::select! {
            read = &mut reader => {
                let close = read?;
                // Clean EOF, or a close the protocol asks for after the last response (a
                // failed authentication): the reader has dropped its end of the slot queue;
                // write what is owed, then close.
                writer.await?;
                close.map_or(Ok(()), Err)
            }
            written = &mut writer => written,
            () = acks_zero_failed.notified() => Err(ConnectionError::AcksZeroHandlerFailed),
        }
    }
}

/// A stream whose first byte, already read to tell TLS from plaintext, is read again.
struct Rewind<S> {
    first: Option<u8>,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if buf.remaining() > 0 {
            if let Some(b) = self.first.take() {
                buf.put_slice(&[b]);
                return std::task::Poll::Ready(Ok(()));
            }
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Where a connection stands with SASL.
enum Auth {
    /// Not a SASL listener: requests go to the handler.
    Open,
    /// A SASL listener before SaslHandshake.
    Handshake(Arc<SaslConfig>),
    /// After SaslHandshake v1: tokens come in SaslAuthenticate requests. With a session, this
    /// is a re-authentication (KIP-368) and the session stays in force until it ends.
    Framed(Arc<SaslConfig>, SaslExchange, Option<Session>),
    /// After SaslHandshake v0: tokens come as bare size-prefixed frames.
    Unframed(Arc<SaslConfig>, SaslExchange),
    /// Authenticated by SASL: requests go to the handler until the session expires.
    Authenticated(Session),
}

/// An authenticated SASL session.
struct Session {
    sasl: Arc<SaslConfig>,
    user: String,
    mechanism: Mechanism,
    /// When the session ends unless the client re-authenticates (`connections.max.reauth.ms`
    /// told it in SaslAuthenticate v1+); `None`: never.
    expires: Option<tokio::time::Instant>,
}

impl Auth {
    /// Whether requests other than ApiVersions and SASL's may be served.
    fn authenticated(&self) -> bool {
        matches!(
            self,
            Auth::Open | Auth::Authenticated(_) | Auth::Framed(_, _, Some(_))
        )
    }

    /// The session in force, if it has expired at `now`.
    fn expired(&self, now: tokio::time::Instant) -> Option<&Session> {
        match self {
            Auth::Authenticated(s) | Auth::Framed(_, _, Some(s)) => {
                s.expires.filter(|e| now >= *e).map(|_| s)
            }
            _ => None,
        }
    }
}

/// A fresh SCRAM server nonce: 32 alphanumeric characters (190 bits; Kafka draws 130).
fn server_nonce() -> String {
    use rand::distributions::{Alphanumeric, DistString};
    Alphanumeric.sample_string(&mut rand::thread_rng(), 32)
}

/// The reader's side of one connection.
struct Connection<'a, H> {
    server: &'a WireServer<H>,
    peer: SocketAddr,
    connection_id: u64,
    /// Who the connection acts as (from its certificate, then from SASL).
    principal: Principal,
    /// Where the connection stands with SASL.
    auth: Auth,
    /// One permit per request in flight.
    in_flight: Arc<Semaphore>,
    /// Responses in request order, to the writer.
    slots: mpsc::Sender<Slot>,
    /// Signalled by an acks=0 request whose handler failed.
    acks_zero_failed: Arc<Notify>,
    /// Until when the reader reads nothing: a Produce or Fetch answer told the client to wait
    /// (`throttle_time_ms`, a client over its quota), and the broker mutes the connection for
    /// as long (KIP-219).
    muted_until: Arc<std::sync::Mutex<Option<tokio::time::Instant>>>,
}

impl<H: Handler> Connection<'_, H> {
    /// Reads and dispatches frames until EOF (`Ok(None)`), a protocol error (`Err`), or a
    /// close that must wait for the responses owed (`Ok(Some(reason))`).
    async fn read_loop<R: AsyncRead + Unpin>(
        mut self,
        rd: R,
    ) -> Result<Option<ConnectionError>, ConnectionError> {
        let request_max = self.server.config.socket_request_max_bytes;
        let mut frames = FrameReader::new(
            rd,
            request_max,
            self.server.config.limits.clone(),
            self.server.metrics.clone(),
        );
        frames.detect_tls_hello = self.server.listener.tls().is_none();
        loop {
            frames.bytes_max = if self.auth.authenticated() {
                request_max
            } else {
                request_max.min(SASL_FRAME_BYTES_MAX)
            };
            // Taken before reading, so that a full window stops reading (back-pressure).
            let permit = self
                .in_flight
                .clone()
                .acquire_owned()
                .await
                .expect("the in-flight semaphore is never closed");
            let next = self
                .next_frame_or_idle(&mut frames)
                .await
                .map_err(|e| match e {
                    ConnectionError::TlsHello => ConnectionError::TlsOnPlaintext {
                        listener: self.server.listener.name().clone(),
                    },
                    e => e,
                });
            let Some((frame, queued)) = next? else {
                return Ok(None);
            };
            // KIP-219: a throttled client's next request waits until its throttle has passed,
            // and meanwhile its socket is not read (this reader is the only one).
            let muted = *self.muted_until.lock().expect("mute poisoned");
            if let Some(until) = muted {
                tokio::time::sleep_until(until).await;
            }
            let permit = Held {
                _in_flight: permit,
                _queued: queued,
            };
            if let Auth::Unframed(..) = self.auth {
                if let Some(close) = self.unframed_token(&frame, permit).await? {
                    return Ok(Some(close));
                }
                continue;
            }
            if !self.auth.authenticated() {
                let raw = header_prefix(&frame)?.api_key;
                let api_key = ApiKey::try_from(raw).ok();
                if !matches!(
                    api_key,
                    Some(ApiKey::ApiVersions | ApiKey::SaslHandshake | ApiKey::SaslAuthenticate)
                ) {
                    return Err(ConnectionError::Unauthenticated {
                        listener: self.server.listener.name().clone(),
                        request: api_key
                            .map_or_else(|| format!("api key {raw}"), |k| format!("{k:?}")),
                    });
                }
            }
            // One line per request at debug level (`KEEL_LOG=keel_node::wire::server=debug`):
            // which API and version each client sends, those the wire layer answers itself
            // (ApiVersions) included; the interop tests read it.
            if let Ok(prefix) = header_prefix(&frame) {
                match ApiKey::try_from(prefix.api_key) {
                    Ok(api) => debug!(
                        connection_id = self.connection_id,
                        api = ?api,
                        version = prefix.api_version,
                        "request"
                    ),
                    Err(()) => debug!(
                        connection_id = self.connection_id,
                        api = prefix.api_key,
                        version = prefix.api_version,
                        "request"
                    ),
                }
            }
            match classify(frame, &self.server.apis)? {
                Inbound::Reply(reply) => {
                    self.push(SlotResponse::Ready(reply.encode()?), permit)
                        .await?
                }
                Inbound::Request(request)
                    if matches!(
                        request.api_key,
                        ApiKey::SaslHandshake | ApiKey::SaslAuthenticate
                    ) && !matches!(self.auth, Auth::Open) =>
                {
                    if let Some(close) = self.sasl_request(request, permit).await? {
                        return Ok(Some(close));
                    }
                }
                Inbound::Request(request) => {
                    // Kafka closes a connection whose session expired when its next request
                    // arrives (KIP-368).
                    if let Some(session) = self.auth.expired(tokio::time::Instant::now()) {
                        return Err(ConnectionError::SessionExpired {
                            listener: self.server.listener.name().clone(),
                            user: session.user.clone(),
                        });
                    }
                    self.dispatch(request, permit).await?
                }
            }
        }
    }

    /// The next frame, or [`ConnectionError::Idle`] once `connections.max.idle.ms` passed with
    /// no request in flight and no frame completed (`next_frame` keeps what it read, so
    /// waiting again after a timeout loses nothing).
    async fn next_frame_or_idle<R: AsyncRead + Unpin>(
        &self,
        frames: &mut FrameReader<R>,
    ) -> Result<Option<(Bytes, QueuedRequest)>, ConnectionError> {
        let Some(idle) = self.server.config.connections_max_idle else {
            return frames.next_frame().await;
        };
        loop {
            if let Ok(next) = tokio::time::timeout(idle, frames.next_frame()).await {
                return next;
            }
            // Waiting for queued.max.request.bytes to admit a frame is the broker's wait.
            if frames.awaiting_admission {
                continue;
            }
            // This reader holds one permit; any other is a request not yet answered.
            let in_flight_max = self.server.config.in_flight_per_connection_max;
            if self.in_flight.available_permits() + 1 >= in_flight_max {
                return Err(ConnectionError::Idle { idle });
            }
        }
    }

    /// SaslHandshake and SaslAuthenticate on a SASL listener. `Ok(Some(reason))`: close once
    /// the response is written.
    async fn sasl_request(
        &mut self,
        request: DecodedRequest,
        permit: Held,
    ) -> Result<Option<ConnectionError>, ConnectionError> {
        let DecodedRequest {
            api_key,
            header,
            body,
        } = request;
        let version = header.request_api_version;
        let listener = self.server.listener.name().clone();
        let auth = std::mem::replace(&mut self.auth, Auth::Open);
        let (response, close) = match (auth, body) {
            (Auth::Handshake(sasl), RequestKind::SaslHandshake(r)) => {
                let mut response = SaslHandshakeResponse::default();
                response.mechanisms = sasl
                    .mechanisms
                    .iter()
                    .map(|m| StrBytes::from_static_str(m.name()))
                    .collect();
                let requested = r.mechanism.to_string();
                match Mechanism::from_name(&requested).filter(|m| sasl.mechanisms.contains(m)) {
                    Some(m) => {
                        let exchange = SaslExchange::new(m);
                        self.auth = if version == 0 {
                            Auth::Unframed(sasl, exchange)
                        } else {
                            Auth::Framed(sasl, exchange, None)
                        };
                        (ResponseKind::SaslHandshake(response), None)
                    }
                    None => {
                        // Kafka answers, then closes.
                        response.error_code = ResponseError::UnsupportedSaslMechanism.code();
                        let close = ConnectionError::UnsupportedMechanism {
                            listener,
                            mechanism: requested.chars().take(64).collect(),
                        };
                        (ResponseKind::SaslHandshake(response), Some(close))
                    }
                }
            }
            // KIP-368: a new SaslHandshake v1+ on an authenticated connection re-authenticates,
            // when connections.max.reauth.ms is set; with the same mechanism only.
            (Auth::Authenticated(session), RequestKind::SaslHandshake(r))
                if version >= 1 && self.server.config.connections_max_reauth.is_some() =>
            {
                let mut response = SaslHandshakeResponse::default();
                response.mechanisms = vec![StrBytes::from_static_str(session.mechanism.name())];
                if r.mechanism.as_str() == session.mechanism.name() {
                    let sasl = session.sasl.clone();
                    let exchange = SaslExchange::new(session.mechanism);
                    self.auth = Auth::Framed(sasl, exchange, Some(session));
                    (ResponseKind::SaslHandshake(response), None)
                } else {
                    response.error_code = ResponseError::UnsupportedSaslMechanism.code();
                    let close = ConnectionError::UnsupportedMechanism {
                        listener,
                        mechanism: format!(
                            "{} (re-authentication must keep {})",
                            r.mechanism.chars().take(64).collect::<String>(),
                            session.mechanism
                        ),
                    };
                    (ResponseKind::SaslHandshake(response), Some(close))
                }
            }
            (Auth::Framed(sasl, mut exchange, previous), RequestKind::SaslAuthenticate(r)) => {
                let mut response = SaslAuthenticateResponse::default();
                let step = exchange
                    .step(&r.auth_bytes, &sasl.users, &server_nonce())
                    .and_then(|step| match (&step, &previous) {
                        (Step::Done { user, .. }, Some(p)) if *user != p.user => {
                            Err(SaslError::PrincipalChanged)
                        }
                        _ => Ok(step),
                    });
                match step {
                    Ok(Step::Challenge(token)) => {
                        response.auth_bytes = Bytes::from(token);
                        self.auth = Auth::Framed(sasl, exchange, previous);
                        (ResponseKind::SaslAuthenticate(response), None)
                    }
                    Ok(Step::Done { token, user }) => {
                        response.auth_bytes = Bytes::from(token);
                        // Only v1+ can tell the client its session's lifetime; a v0 client
                        // cannot re-authenticate, so its session does not expire.
                        let lifetime = self
                            .server
                            .config
                            .connections_max_reauth
                            .filter(|_| version >= 1);
                        if let Some(lifetime) = lifetime {
                            response.session_lifetime_ms =
                                i64::try_from(lifetime.as_millis()).unwrap_or(i64::MAX);
                        }
                        let mechanism = exchange.mechanism();
                        let reauthenticated = previous.is_some();
                        self.authenticated(sasl, user, mechanism, lifetime, reauthenticated);
                        (ResponseKind::SaslAuthenticate(response), None)
                    }
                    Err(error) => {
                        let mechanism = exchange.mechanism();
                        if let Some(metrics) = &self.server.metrics {
                            metrics.record_authentication(mechanism.name(), false);
                        }
                        tokio::time::sleep(self.server.config.failed_authentication_delay).await;
                        response.error_code = ResponseError::SaslAuthenticationFailed.code();
                        response.error_message =
                            Some(StrBytes::from_string(error.client_message(mechanism)));
                        let close = ConnectionError::AuthenticationFailed {
                            listener,
                            mechanism,
                            error,
                        };
                        (ResponseKind::SaslAuthenticate(response), Some(close))
                    }
                }
            }
            (Auth::Authenticated(_), _) => {
                return Err(ConnectionError::Reauthentication { api_key })
            }
            // SaslAuthenticate before SaslHandshake, or SaslHandshake twice.
            (_, _) => {
                return Err(ConnectionError::Unauthenticated {
                    listener,
                    request: format!("{api_key:?} out of order"),
                });
            }
        };
        let frame = encode_response(header.correlation_id, api_key, version, &response)?;
        self.push(SlotResponse::Ready(frame), permit).await?;
        Ok(close)
    }

    /// One bare token after SaslHandshake v0. A failure closes the connection at once, with
    /// no response (Kafka's v0 behaviour).
    async fn unframed_token(
        &mut self,
        token: &[u8],
        permit: Held,
    ) -> Result<Option<ConnectionError>, ConnectionError> {
        let Auth::Unframed(sasl, mut exchange) = std::mem::replace(&mut self.auth, Auth::Open)
        else {
            unreachable!("called only in the unframed state");
        };
        let reply = match exchange.step(token, &sasl.users, &server_nonce()) {
            Ok(Step::Challenge(reply)) => {
                self.auth = Auth::Unframed(sasl, exchange);
                reply
            }
            Ok(Step::Done { token, user }) => {
                let mechanism = exchange.mechanism();
                self.authenticated(sasl, user, mechanism, None, false);
                // PLAIN's empty answer is sent too: clients wait for the 4-byte zero frame.
                token
            }
            Err(error) => {
                if let Some(metrics) = &self.server.metrics {
                    metrics.record_authentication(exchange.mechanism().name(), false);
                }
                tokio::time::sleep(self.server.config.failed_authentication_delay).await;
                return Err(ConnectionError::AuthenticationFailed {
                    listener: self.server.listener.name().clone(),
                    mechanism: exchange.mechanism(),
                    error,
                });
            }
        };
        let mut frame = BytesMut::with_capacity(SIZE_PREFIX_BYTES + reply.len());
        // A token is a few hundred bytes, far below i32::MAX.
        frame.put_i32(reply.len() as i32);
        frame.put_slice(&reply);
        self.push(SlotResponse::Ready(frame.freeze()), permit)
            .await?;
        Ok(None)
    }

    fn authenticated(
        &mut self,
        sasl: Arc<SaslConfig>,
        user: String,
        mechanism: Mechanism,
        lifetime: Option<Duration>,
        reauthenticated: bool,
    ) {
        if let Some(metrics) = &self.server.metrics {
            metrics.record_authentication(mechanism.name(), true);
        }
        self.principal = Principal::user(&user);
        debug!(
            connection_id = self.connection_id,
            peer = %self.peer,
            principal = %self.principal,
            %mechanism,
            session_lifetime = ?lifetime,
            "SASL {} succeeded",
            if reauthenticated { "re-authentication" } else { "authentication" }
        );
        self.auth = Auth::Authenticated(Session {
            sasl,
            user,
            mechanism,
            expires: lifetime.map(|l| tokio::time::Instant::now() + l),
        });
    }

    /// Calls the handler (in request order) and queues or detaches its future.
    async fn dispatch(&self, request: DecodedRequest, permit: Held) -> Result<(), ConnectionError> {
        let DecodedRequest {
            api_key,
            header,
            body,
        } = request;
        let ctx = RequestContext {
            connection_id: self.connection_id,
            peer: self.peer,
            listener: self.server.listener.name().clone(),
            principal: self.principal.clone(),
            api_key,
            api_version: header.request_api_version,
            correlation_id: header.correlation_id,
            client_id: header.client_id,
        };
        let acks_zero = matches!(&body, RequestKind::Produce(p) if p.acks == 0);
        let future = self.server.handler.clone().handle(ctx.clone(), body);
        if acks_zero {
            let failed = self.acks_zero_failed.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match future.await {
                    Ok(None) => {}
                    Ok(Some(_)) => warn!(
                        connection_id = ctx.connection_id,
                        peer = %ctx.peer,
                        "handler answered an acks=0 produce; response dropped"
                    ),
                    Err(e) => {
                        error!(
                            connection_id = ctx.connection_id,
                            peer = %ctx.peer,
                            error = %e,
                            "handler failed on an acks=0 produce"
                        );
                        failed.notify_one();
                    }
                }
            });
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        tokio::spawn(respond(ctx, future, tx, self.muted_until.clone()));
        self.push(SlotResponse::Pending(rx), permit).await
    }

    async fn push(&self, response: SlotResponse, permit: Held) -> Result<(), ConnectionError> {
        let slot = Slot {
            response,
            _permit: permit,
        };
        // The queue holds as many slots as there are permits, so this does not wait; it fails
        // only when the writer has stopped, and then the connection is closing anyway.
        self.slots
            .send(slot)
            .await
            .map_err(|_| ConnectionError::WriterStopped)
    }
}

/// One response owed to the client, in request order.
struct Slot {
    response: SlotResponse,
    /// Released once the response is written.
    _permit: Held,
}

enum SlotResponse {
    /// Encoded by the wire layer (ApiVersions, UNSUPPORTED_VERSION fallbacks).
    Ready(Bytes),
    /// Encoded by the task running the handler's future.
    Pending(oneshot::Receiver<Result<Bytes, ConnectionError>>),
}

/// Runs one handler future, encodes its response and hands it to the writer. Drops the future
/// unfinished if the connection closes first.
async fn respond(
    ctx: RequestContext,
    future: impl std::future::Future<Output = HandlerResult>,
    mut tx: oneshot::Sender<Result<Bytes, ConnectionError>>,
    muted_until: Arc<std::sync::Mutex<Option<tokio::time::Instant>>>,
) {
    let result = {
        let closed = tx.closed();
        tokio::pin!(future, closed);
        tokio::select! {
            result = &mut future => result,
            () = &mut closed => return,
        }
    };
    let throttle_ms = match &result {
        Ok(Some(ResponseKind::Produce(r))) => r.throttle_time_ms,
        Ok(Some(ResponseKind::Fetch(r))) => r.throttle_time_ms,
        _ => 0,
    };
    if throttle_ms > 0 {
        let until = tokio::time::Instant::now() + Duration::from_millis(throttle_ms as u64);
        let mut muted = muted_until.lock().expect("mute poisoned");
        *muted = Some(muted.map_or(until, |m| m.max(until)));
    }
    let frame = match result {
        Ok(Some(body)) => encode_response(ctx.correlation_id, ctx.api_key, ctx.api_version, &body)
            .map_err(ConnectionError::Encode),
        Ok(None) => Err(ConnectionError::MissingResponse {
            api_key: ctx.api_key,
            api_version: ctx.api_version,
            correlation_id: ctx.correlation_id,
        }),
        Err(error) => Err(ConnectionError::Handler {
            api_key: ctx.api_key,
            api_version: ctx.api_version,
            error,
        }),
    };
    // The writer may have gone meanwhile; then nobody needs the response.
    let _ = tx.send(frame);
}

/// Writes responses in slot order until the reader is done and every slot is written.
async fn write_loop<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut slots: mpsc::Receiver<Slot>,
) -> Result<(), ConnectionError> {
    while let Some(slot) = slots.recv().await {
        let frame = match slot.response {
            SlotResponse::Ready(frame) => frame,
            SlotResponse::Pending(rx) => {
                rx.await.map_err(|_| ConnectionError::HandlerTaskLost)??
            }
        };
        wr.write_all(&frame).await?;
        // A no-op on a real socket; madsim's simulated TCP sends buffered bytes only on flush.
        wr.flush().await?;
    }
    wr.shutdown().await?;
    Ok(())
}

/// Splits the byte stream into request frames, bounded by `socket_request_max_bytes`, each
/// admitted under `queued.max.request.bytes` before its body is read.
struct FrameReader<R> {
    rd: R,
    buf: BytesMut,
    /// The largest frame accepted now (`socket.request.max.bytes`, less before SASL
    /// authentication).
    bytes_max: usize,
    /// Whether a first frame that starts like a TLS ClientHello is refused as one (on
    /// listeners without TLS); cleared after the first frame.
    detect_tls_hello: bool,
    /// The broker's limits, whose queued-bytes bound admits each frame.
    limits: Arc<ConnectionLimits>,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    /// The admission of the frame being read, kept if `next_frame` is cancelled (by the idle
    /// timeout) while its body arrives.
    admitted: Option<QueuedRequest>,
    /// Set while `next_frame` waits for admission: the broker is full, the client is not idle.
    awaiting_admission: bool,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    fn new(
        rd: R,
        bytes_max: usize,
        limits: Arc<ConnectionLimits>,
        metrics: Option<Arc<crate::metrics::Metrics>>,
    ) -> Self {
        Self {
            rd,
            buf: BytesMut::new(),
            bytes_max,
            detect_tls_hello: false,
            limits,
            metrics,
            admitted: None,
            awaiting_admission: false,
        }
    }

    /// The next frame without its size prefix and its admission, or `None` on EOF between
    /// frames. Cancellation-safe: what was read and admitted is kept for the next call.
    async fn next_frame(&mut self) -> Result<Option<(Bytes, QueuedRequest)>, ConnectionError> {
        if !self.fill(SIZE_PREFIX_BYTES).await? {
            return if self.buf.is_empty() {
                Ok(None)
            } else {
                Err(ConnectionError::EofInsideFrame)
            };
        }
        let prefix = [self.buf[0], self.buf[1], self.buf[2], self.buf[3]];
        if std::mem::take(&mut self.detect_tls_hello)
            && prefix[0] == TLS_HANDSHAKE_RECORD
            && prefix[1] == TLS_VERSION_MAJOR
        {
            return Err(ConnectionError::TlsHello);
        }
        let size = frame_size(prefix, self.bytes_max)?;
        if self.admitted.is_none() {
            self.awaiting_admission = true;
            let admitted = self
                .limits
                .admit_request(SIZE_PREFIX_BYTES + size, self.metrics.as_ref())
                .await;
            self.awaiting_admission = false;
            self.admitted = Some(admitted);
        }
        if !self.fill(SIZE_PREFIX_BYTES + size).await? {
            return Err(ConnectionError::EofInsideFrame);
        }
        self.buf.advance(SIZE_PREFIX_BYTES);
        let admitted = self.admitted.take().expect("admitted above");
        Ok(Some((self.buf.split_to(size).freeze(), admitted)))
    }

    /// Reads until the buffer holds `n` bytes, growing it by at most [`READ_CHUNK_BYTES`] per
    /// read. `false` if the stream ends first.
    async fn fill(&mut self, n: usize) -> std::io::Result<bool> {
        while self.buf.len() < n {
            self.buf.reserve((n - self.buf.len()).min(READ_CHUNK_BYTES));
            if self.rd.read_buf(&mut self.buf).await? == 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }
}
