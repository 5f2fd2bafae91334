//! Shared by the wire tests: a scriptable test [`Handler`], a listener on 127.0.0.1:0 and a
//! raw Kafka client that speaks frames.
#![allow(dead_code)] // each test binary uses its own subset

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, MetadataResponse, ProduceResponse, RequestHeader, RequestKind, ResponseHeader,
    ResponseKind,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use keel_node::wire::{
    Handler, HandlerError, HandlerResult, RequestContext, SupportedApis, WireConfig, WireServer,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

/// Upper bound on any single wait in these tests, so that a bug shows as a failure, not a hang.
pub const TEST_WAIT: Duration = Duration::from_secs(10);

/// The throttle the `"throttle"` script answers with, in milliseconds.
pub const THROTTLE_MS: i32 = 300;

/// What the test handler saw and did, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Start(i32),
    End(i32),
}

/// A handler scripted by the request's client id:
/// - `"fail"`: returns a HandlerError;
/// - `"none"`: returns no response (a bug for anything but acks=0);
/// - `"gate"`: waits for a permit of `gate` before answering;
/// - `"throttle"`: answers a Produce with `throttle_time_ms` [`THROTTLE_MS`];
/// - anything else: answers after the delay set for its correlation id in `delays` (none by
///   default).
///
/// Produce gets an empty ProduceResponse (nothing for acks=0); every other API an empty
/// MetadataResponse (which is a mismatch unless the request was a Metadata).
#[derive(Debug)]
pub struct TestHandler {
    pub delays: Mutex<HashMap<i32, Duration>>,
    pub events: Mutex<Vec<Event>>,
    pub handled: Mutex<Vec<(ApiKey, i16, i32)>>,
    pub gate: Arc<Semaphore>,
    pub calls: AtomicUsize,
}

impl TestHandler {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            delays: Mutex::default(),
            events: Mutex::default(),
            handled: Mutex::default(),
            gate: Arc::new(Semaphore::new(0)),
            calls: AtomicUsize::new(0),
        })
    }

    pub fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    pub fn handled(&self) -> Vec<(ApiKey, i16, i32)> {
        self.handled.lock().unwrap().clone()
    }
}

impl Handler for TestHandler {
    fn handle(
        self: Arc<Self>,
        ctx: RequestContext,
        request: RequestKind,
    ) -> impl Future<Output = HandlerResult> + Send + 'static {
        // The synchronous part runs in request order.
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.handled
            .lock()
            .unwrap()
            .push((ctx.api_key, ctx.api_version, ctx.correlation_id));
        let delay = self
            .delays
            .lock()
            .unwrap()
            .get(&ctx.correlation_id)
            .copied();
        async move {
            let corr = ctx.correlation_id;
            self.events.lock().unwrap().push(Event::Start(corr));
            let script = ctx.client_id.as_ref().map(|c| c.as_str().to_owned());
            match script.as_deref() {
                Some("fail") => return Err(HandlerError::new("scripted failure")),
                Some("none") => return Ok(None),
                Some("gate") => {
                    let permit = self.gate.acquire().await.expect("gate open");
                    permit.forget();
                }
                _ => {}
            }
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            self.events.lock().unwrap().push(Event::End(corr));
            Ok(match request {
                RequestKind::Produce(p) if p.acks == 0 => None,
                RequestKind::Produce(_) if script.as_deref() == Some("throttle") => {
                    Some(ResponseKind::Produce(
                        ProduceResponse::default().with_throttle_time_ms(THROTTLE_MS),
                    ))
                }
                RequestKind::Produce(_) => Some(ResponseKind::Produce(ProduceResponse::default())),
                _ => Some(ResponseKind::Metadata(MetadataResponse::default())),
            })
        }
    }
}

/// Starts a listener on 127.0.0.1:0 serving `apis` with `handler`.
pub async fn start(
    handler: Arc<TestHandler>,
    apis: SupportedApis,
    config: WireConfig,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let server = WireServer::new(handler, apis, config);
    tokio::spawn(server.serve(listener));
    addr
}

/// Starts a listener serving every API with the default settings.
pub async fn start_default(handler: Arc<TestHandler>) -> SocketAddr {
    start(handler, SupportedApis::all(), WireConfig::default()).await
}

/// Encodes a request frame (size prefix included) with kafka-protocol.
pub fn request_frame(
    api_key: ApiKey,
    version: i16,
    correlation_id: i32,
    client_id: &str,
    body: &RequestKind,
) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    RequestHeader::default()
        .with_request_api_key(api_key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_string(client_id.to_owned())))
        .encode(&mut buf, api_key.request_header_version(version))
        .expect("encode header");
    body.encode(&mut buf, version).expect("encode body");
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    buf.freeze()
}

/// A raw Kafka client over one TCP connection.
pub struct Client {
    pub stream: TcpStream,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = tokio::time::timeout(TEST_WAIT, TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        Self { stream }
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
        self.stream.flush().await.expect("flush"); // madsim sends on flush
    }

    pub async fn send(
        &mut self,
        api_key: ApiKey,
        version: i16,
        correlation_id: i32,
        client_id: &str,
        body: &RequestKind,
    ) {
        let frame = request_frame(api_key, version, correlation_id, client_id, body);
        self.send_raw(&frame).await;
    }

    /// The next response frame without its size prefix.
    pub async fn recv_frame(&mut self) -> Bytes {
        tokio::time::timeout(TEST_WAIT, self.read_frame())
            .await
            .expect("response in time")
            .expect("response frame")
    }

    async fn read_frame(&mut self) -> std::io::Result<Bytes> {
        let size = self.stream.read_i32().await?;
        let mut frame = vec![0; usize::try_from(size).expect("non-negative response size")];
        self.stream.read_exact(&mut frame).await?;
        Ok(Bytes::from(frame))
    }

    /// The correlation id of the next response (header v0 or v1 start the same way).
    pub async fn recv_correlation_id(&mut self) -> i32 {
        let mut frame = self.recv_frame().await;
        frame.get_i32()
    }

    /// Decodes the next response, expecting `correlation_id`.
    pub async fn recv_response(
        &mut self,
        api_key: ApiKey,
        version: i16,
        correlation_id: i32,
    ) -> ResponseKind {
        let mut frame = self.recv_frame().await;
        let header = ResponseHeader::decode(&mut frame, api_key.response_header_version(version))
            .expect("response header");
        assert_eq!(header.correlation_id, correlation_id);
        let body = ResponseKind::decode(api_key, &mut frame, version).expect("response body");
        assert!(!frame.has_remaining(), "{} bytes left", frame.remaining());
        body
    }

    /// Asserts that the server closes the connection without sending anything (more).
    pub async fn expect_closed(&mut self) {
        let mut byte = [0u8; 1];
        match tokio::time::timeout(TEST_WAIT, self.stream.read(&mut byte)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            Ok(Ok(_)) => panic!("expected the connection to close, got data"),
            Err(_) => panic!("the server did not close the connection"),
        }
    }

    /// Asserts that nothing arrives within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        let mut byte = [0u8; 1];
        if let Ok(r) = tokio::time::timeout(wait, self.stream.read(&mut byte)).await {
            panic!("expected silence, got {r:?}");
        }
    }
}
