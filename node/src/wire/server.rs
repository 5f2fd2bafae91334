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
//! - a malformed frame, an unknown API, an unsupported version, a handler error or a missing or
//!   mismatched response closes this connection only, discarding responses not yet written;
//!   other connections and the listener carry on. A clean EOF from the client lets the
//!   responses already owed be written before the connection closes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestKind};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, error, info, warn};

use super::codec::{
    classify, encode_response, frame_size, DecodeError, DecodedRequest, EncodeError,
    FrameSizeError, Inbound, SIZE_PREFIX_BYTES, SOCKET_REQUEST_MAX_BYTES_DEFAULT,
};
use super::handler::{Handler, HandlerError, HandlerResult, RequestContext};
use super::versions::SupportedApis;

/// Default bound on requests in flight per connection (read but not yet answered).
pub const IN_FLIGHT_PER_CONNECTION_MAX_DEFAULT: usize = 32;

/// Most bytes the read buffer grows by per read: a frame's memory follows the bytes that have
/// arrived, not the size its prefix announced. 1 MiB, so that a produce of up to a
/// `batch.size` of 1 MB is read into one allocation: growing by less copies what has arrived
/// into each larger buffer.
pub const READ_CHUNK_BYTES: usize = 1024 * 1024;

/// Pause after a failed `accept` (for example out of file descriptors) before trying again.
pub const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Settings of one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireConfig {
    /// Largest request frame accepted (Kafka's `socket.request.max.bytes`, default 100 MiB).
    pub socket_request_max_bytes: usize,
    /// Requests in flight per connection before the reader stops reading (at least 1).
    pub in_flight_per_connection_max: usize,
}

impl Default for WireConfig {
    fn default() -> Self {
        Self {
            socket_request_max_bytes: SOCKET_REQUEST_MAX_BYTES_DEFAULT,
            in_flight_per_connection_max: IN_FLIGHT_PER_CONNECTION_MAX_DEFAULT,
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
    next_connection_id: AtomicU64,
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl<H: Handler> WireServer<H> {
    /// A server for `handler`, advertising and accepting `apis`. An
    /// `in_flight_per_connection_max` of 0 is taken as 1.
    pub fn new(handler: Arc<H>, apis: SupportedApis, mut config: WireConfig) -> Arc<Self> {
        config.in_flight_per_connection_max = config.in_flight_per_connection_max.max(1);
        Arc::new(Self {
            handler,
            apis,
            config,
            next_connection_id: AtomicU64::new(0),
            metrics: None,
        })
    }

    /// The same server, counting its open connections in `metrics` (`keel_connections`).
    pub fn with_metrics(
        handler: Arc<H>,
        apis: SupportedApis,
        config: WireConfig,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Arc<Self> {
        let mut server = Arc::into_inner(Self::new(handler, apis, config)).expect("just created");
        server.metrics = Some(metrics);
        Arc::new(server)
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
            match listener.accept().await {
                Ok((stream, peer)) => {
                    tokio::spawn(self.clone().serve_connection(stream, peer));
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
        let _open = self.metrics.as_ref().map(|m| m.connection_opened());
        if let Err(e) = stream.set_nodelay(true) {
            debug!(connection_id, %peer, error = %e, "set_nodelay failed");
        }
        debug!(connection_id, %peer, "connection accepted");
        match self.run_connection(stream, peer, connection_id).await {
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

    async fn run_connection(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        connection_id: u64,
    ) -> Result<(), ConnectionError> {
        let (rd, wr) = tokio::io::split(stream);
        let in_flight_max = self.config.in_flight_per_connection_max;
        let (slots_tx, slots_rx) = mpsc::channel(in_flight_max);
        let conn = Connection {
            server: self,
            peer,
            connection_id,
            in_flight: Arc::new(Semaphore::new(in_flight_max)),
            slots: slots_tx,
            acks_zero_failed: Arc::new(Notify::new()),
        };
        let acks_zero_failed = conn.acks_zero_failed.clone();
        let reader = conn.read_loop(rd);
        let writer = write_loop(wr, slots_rx);
        tokio::pin!(reader, writer);
        tokio::select! {
            read = &mut reader => {
                read?;
                // Clean EOF: the reader has dropped its end of the slot queue; write what is
                // owed, then close.
                writer.await
            }
            written = &mut writer => written,
            () = acks_zero_failed.notified() => Err(ConnectionError::AcksZeroHandlerFailed),
        }
    }
}

/// The reader's side of one connection.
struct Connection<'a, H> {
    server: &'a WireServer<H>,
    peer: SocketAddr,
    connection_id: u64,
    /// One permit per request in flight.
    in_flight: Arc<Semaphore>,
    /// Responses in request order, to the writer.
    slots: mpsc::Sender<Slot>,
    /// Signalled by an acks=0 request whose handler failed.
    acks_zero_failed: Arc<Notify>,
}

impl<H: Handler> Connection<'_, H> {
    async fn read_loop<R: AsyncRead + Unpin>(self, rd: R) -> Result<(), ConnectionError> {
        let mut frames = FrameReader::new(rd, self.server.config.socket_request_max_bytes);
        loop {
            // Taken before reading, so that a full window stops reading (back-pressure).
            let permit = self
                .in_flight
                .clone()
                .acquire_owned()
                .await
                .expect("the in-flight semaphore is never closed");
            let Some(frame) = frames.next_frame().await? else {
                return Ok(());
            };
            match classify(frame, &self.server.apis)? {
                Inbound::Reply(reply) => {
                    self.push(SlotResponse::Ready(reply.encode()?), permit)
                        .await?
                }
                Inbound::Request(request) => self.dispatch(request, permit).await?,
            }
        }
    }

    /// Calls the handler (in request order) and queues or detaches its future.
    async fn dispatch(
        &self,
        request: DecodedRequest,
        permit: OwnedSemaphorePermit,
    ) -> Result<(), ConnectionError> {
        let DecodedRequest {
            api_key,
            header,
            body,
        } = request;
        let ctx = RequestContext {
            connection_id: self.connection_id,
            peer: self.peer,
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
        tokio::spawn(respond(ctx, future, tx));
        self.push(SlotResponse::Pending(rx), permit).await
    }

    async fn push(
        &self,
        response: SlotResponse,
        permit: OwnedSemaphorePermit,
    ) -> Result<(), ConnectionError> {
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
    _permit: OwnedSemaphorePermit,
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
) {
    let result = {
        let closed = tx.closed();
        tokio::pin!(future, closed);
        tokio::select! {
            result = &mut future => result,
            () = &mut closed => return,
        }
    };
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

/// Splits the byte stream into request frames, bounded by `socket_request_max_bytes`.
struct FrameReader<R> {
    rd: R,
    buf: BytesMut,
    socket_request_max_bytes: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    fn new(rd: R, socket_request_max_bytes: usize) -> Self {
        Self {
            rd,
            buf: BytesMut::new(),
            socket_request_max_bytes,
        }
    }

    /// The next frame without its size prefix, or `None` on EOF between frames.
    async fn next_frame(&mut self) -> Result<Option<Bytes>, ConnectionError> {
        if !self.fill(SIZE_PREFIX_BYTES).await? {
            return if self.buf.is_empty() {
                Ok(None)
            } else {
                Err(ConnectionError::EofInsideFrame)
            };
        }
        let prefix = [self.buf[0], self.buf[1], self.buf[2], self.buf[3]];
        let size = frame_size(prefix, self.socket_request_max_bytes)?;
        if !self.fill(SIZE_PREFIX_BYTES + size).await? {
            return Err(ConnectionError::EofInsideFrame);
        }
        self.buf.advance(SIZE_PREFIX_BYTES);
        Ok(Some(self.buf.split_to(size).freeze()))
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
