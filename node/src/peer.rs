//! The peer transport: messages between brokers over TCP (raft messages, replica fetches,
//! requests forwarded to the controller).
//!
//! What it owns: one outgoing connection per peer (dialled lazily, redialled with exponential
//! backoff after a failure), the accept loop for incoming connections, framing, and the
//! correlation of requests with responses.
//!
//! Wire format: a connection starts with a hello frame naming the sender; then each frame is
//! `length: u32 BE | crc32c: u32 BE | body` where the body is a prost [`Envelope`]. The length
//! counts the CRC and the body and is bounded by [`FRAME_BYTES_MAX`]; a bad length, a CRC
//! mismatch or a body that does not decode closes that connection (the peer redials), never
//! the broker.
//!
//! What always holds:
//! - the queue of frames waiting for each peer is bounded ([`PEER_QUEUE_MAX`]); when it is full,
//!   `send` drops the message and says so (raft and replica fetches retry on their own);
//! - a `call` always ends: with the response, or with an error when the connection drops or
//!   [`PeerTransport::call`]'s timeout passes;
//! - nothing from the network makes this module panic.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

/// The largest frame accepted (a replica fetch response carries up to this many batch bytes).
pub const FRAME_BYTES_MAX: usize = 64 << 20;
/// Frames queued for one peer before `send` starts dropping.
pub const PEER_QUEUE_MAX: usize = 1024;
/// First and last delay between redials of an unreachable peer.
pub const REDIAL_BACKOFF_MIN: Duration = Duration::from_millis(50);
pub const REDIAL_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// The hello frame's magic, so that a stray client is refused at once.
const HELLO_MAGIC: u32 = 0x6b65_656c; // "keel"

/// One message between brokers. `correlation_id` 0 is a one-way message; a request carries a
/// fresh id and its response the same id with `is_response` set.
#[derive(Clone, PartialEq, Message)]
pub struct Envelope {
    #[prost(uint64, tag = "1")]
    pub correlation_id: u64,
    #[prost(bool, tag = "2")]
    pub is_response: bool,
    /// What kind of message the body is (the broker's own numbering).
    #[prost(uint32, tag = "3")]
    pub kind: u32,
    /// The message itself (a prost message the broker decodes by `kind`).
    #[prost(bytes = "bytes", tag = "4")]
    pub body: Bytes,
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    #[error("unknown peer {0}")]
    UnknownPeer(i32),
    #[error("queue to peer {0} is full")]
    QueueFull(i32),
    #[error("no response from peer {0} in time")]
    Timeout(i32),
    #[error("connection to peer {0} dropped")]
    Disconnected(i32),
}

type Pending = Arc<Mutex<BTreeMap<u64, oneshot::Sender<Envelope>>>>;

/// A message from a peer: who sent it, and the envelope. Requests are answered with
/// [`PeerTransport::respond`].
#[derive(Debug)]
pub struct Incoming {
    pub from: i32,
    pub envelope: Envelope,
}

/// The transport of one broker.
pub struct PeerTransport {
    node_id: i32,
    queues: BTreeMap<i32, mpsc::Sender<Bytes>>,
    pending: Pending,
    next_id: AtomicU64,
}

fn encode_frame(envelope: &Envelope) -> Bytes {
    let body = envelope.encode_to_vec();
    let mut frame = BytesMut::with_capacity(8 + body.len());
    frame.put_u32((4 + body.len()) as u32);
    frame.put_u32(crc32c::crc32c(&body));
    frame.put_slice(&body);
    frame.freeze()
}

/// Reads one frame; `Err` for a bad length, a CRC mismatch or a body that does not decode.
async fn read_frame(stream: &mut TcpStream) -> std::io::Result<Envelope> {
    let len = stream.read_u32().await? as usize;
    if !(4..=FRAME_BYTES_MAX).contains(&len) {
        return Err(std::io::Error::other(format!(
            "frame length {len} out of range"
        )));
    }
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).await?;
    let mut buf = Bytes::from(buf);
    let crc = buf.get_u32();
    if crc32c::crc32c(&buf) != crc {
        return Err(std::io::Error::other("frame CRC mismatch"));
    }
    Envelope::decode(buf).map_err(std::io::Error::other)
}

impl PeerTransport {
    /// Starts the transport: accepts peers on `listener` and dials `peers` (id → address) on
    /// demand. Incoming messages arrive on the returned receiver.
    pub fn start(
        node_id: i32,
        listener: TcpListener,
        peers: BTreeMap<i32, SocketAddr>,
    ) -> (Arc<PeerTransport>, mpsc::Receiver<Incoming>) {
        let (incoming_tx, incoming_rx) = mpsc::channel(PEER_QUEUE_MAX);
        let pending: Pending = Arc::default();
        let mut queues = BTreeMap::new();
        for (&id, &addr) in peers.iter().filter(|(&id, _)| id != node_id) {
            let (tx, rx) = mpsc::channel(PEER_QUEUE_MAX);
            queues.insert(id, tx);
            tokio::spawn(dial_loop(node_id, id, addr, rx));
        }
        tokio::spawn(accept_loop(listener, incoming_tx, pending.clone()));
        let transport = Arc::new(PeerTransport {
            node_id,
            queues,
            pending,
            next_id: AtomicU64::new(1),
        });
        (transport, incoming_rx)
    }

    pub fn node_id(&self) -> i32 {
        self.node_id
    }

    fn enqueue(&self, to: i32, envelope: &Envelope) -> Result<(), PeerError> {
        let queue = self.queues.get(&to).ok_or(PeerError::UnknownPeer(to))?;
        queue
            .try_send(encode_frame(envelope))
            .map_err(|_| PeerError::QueueFull(to))
    }

    /// Sends a one-way message. Dropped (with an error) if the peer's queue is full.
    pub fn send(&self, to: i32, kind: u32, body: Bytes) -> Result<(), PeerError> {
        self.enqueue(
            to,
            &Envelope {
                correlation_id: 0,
                is_response: false,
                kind,
                body,
            },
        )
    }

    /// Sends a request and waits for its response, at most `timeout`.
    pub async fn call(
        &self,
        to: i32,
        kind: u32,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Envelope, PeerError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .expect("pending map poisoned")
            .insert(id, tx);
        let result = match self.enqueue(
            to,
            &Envelope {
                correlation_id: id,
                is_response: false,
                kind,
                body,
            },
        ) {
            Err(e) => Err(e),
            Ok(()) => match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(envelope)) => Ok(envelope),
                Ok(Err(_)) => Err(PeerError::Disconnected(to)),
                Err(_) => Err(PeerError::Timeout(to)),
            },
        };
        self.pending
            .lock()
            .expect("pending map poisoned")
            .remove(&id);
        result
    }

    /// Answers a request received as `incoming`.
    pub fn respond(&self, incoming: &Incoming, kind: u32, body: Bytes) -> Result<(), PeerError> {
        let envelope = Envelope {
            correlation_id: incoming.envelope.correlation_id,
            is_response: true,
            kind,
            body,
        };
        self.enqueue(incoming.from, &envelope)
    }
}

/// Keeps one outgoing connection to a peer, redialling with backoff, and writes its queue.
async fn dial_loop(node_id: i32, peer: i32, addr: SocketAddr, mut queue: mpsc::Receiver<Bytes>) {
    let mut backoff = REDIAL_BACKOFF_MIN;
    let mut carried: Option<Bytes> = None;
    loop {
        let mut stream = match TcpStream::connect(addr).await {
            Ok(s) => s,
            Err(_) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(REDIAL_BACKOFF_MAX);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let mut hello = BytesMut::with_capacity(8);
        hello.put_u32(HELLO_MAGIC);
        hello.put_i32(node_id);
        if stream.write_all(&hello).await.is_err() || stream.flush().await.is_err() {
            tokio::time::sleep(backoff).await;
            continue;
        }
        backoff = REDIAL_BACKOFF_MIN;
        loop {
            let frame = match carried.take() {
                Some(f) => f,
                None => match queue.recv().await {
                    Some(f) => f,
                    None => return, // the transport is gone
                },
            };
            // madsim's TCP sends on flush; real tokio's flush is free.
            if stream.write_all(&frame).await.is_err() || stream.flush().await.is_err() {
                carried = Some(frame);
                tracing::debug!(peer, "connection to peer dropped; redialling");
                break;
            }
        }
    }
}

async fn accept_loop(listener: TcpListener, incoming: mpsc::Sender<Incoming>, pending: Pending) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(read_loop(stream, incoming.clone(), pending.clone()));
            }
            Err(e) => {
                tracing::warn!("peer accept failed: {e}");
                tokio::time::sleep(REDIAL_BACKOFF_MIN).await;
            }
        }
    }
}

/// Reads one incoming connection: the hello, then frames until EOF or a bad frame.
async fn read_loop(mut stream: TcpStream, incoming: mpsc::Sender<Incoming>, pending: Pending) {
    let from = match (stream.read_u32().await, stream.read_i32().await) {
        (Ok(HELLO_MAGIC), Ok(id)) => id,
        _ => return,
    };
    loop {
        let envelope = match read_frame(&mut stream).await {
            Ok(e) => e,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::UnexpectedEof {
                    tracing::warn!(peer = from, "closing peer connection: {e}");
                }
                return;
            }
        };
        if envelope.is_response {
            if let Some(waiter) = pending
                .lock()
                .expect("pending map poisoned")
                .remove(&envelope.correlation_id)
            {
                let _ = waiter.send(envelope);
            }
        } else if incoming.send(Incoming { from, envelope }).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair() -> (
        (Arc<PeerTransport>, mpsc::Receiver<Incoming>),
        (Arc<PeerTransport>, mpsc::Receiver<Incoming>),
        SocketAddr,
    ) {
        let l1 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let l2 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (a1, a2) = (l1.local_addr().unwrap(), l2.local_addr().unwrap());
        let peers: BTreeMap<i32, SocketAddr> = [(1, a1), (2, a2)].into();
        (
            PeerTransport::start(1, l1, peers.clone()),
            PeerTransport::start(2, l2, peers),
            a2,
        )
    }

    #[tokio::test]
    async fn messages_and_calls_cross_between_two_brokers() {
        let ((t1, _r1), (t2, mut r2), _) = pair().await;
        t1.send(2, 7, Bytes::from_static(b"one-way")).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), r2.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (got.from, got.envelope.kind, &got.envelope.body[..]),
            (1, 7, &b"one-way"[..])
        );
        let server = tokio::spawn(async move {
            let req = r2.recv().await.unwrap();
            let mut reply = req.envelope.body.to_vec();
            reply.reverse();
            t2.respond(&req, 8, Bytes::from(reply)).unwrap();
        });
        let reply = t1
            .call(2, 9, Bytes::from_static(b"abc"), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!((reply.kind, &reply.body[..]), (8, &b"cba"[..]));
        server.await.unwrap();
        assert_eq!(t1.send(5, 1, Bytes::new()), Err(PeerError::UnknownPeer(5)));
    }

    #[tokio::test]
    async fn a_call_to_a_silent_peer_times_out() {
        let ((t1, _r1), (_t2, _r2), _) = pair().await;
        let err = t1
            .call(2, 1, Bytes::new(), Duration::from_millis(100))
            .await
            .unwrap_err();
        assert_eq!(err, PeerError::Timeout(2));
    }

    /// A peer that comes up late (or restarts) is reached once it listens: the dial loop
    /// redials with backoff and the queued message is delivered.
    #[tokio::test]
    async fn messages_wait_for_a_peer_that_starts_late() {
        let l1 = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let reserved = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a2 = reserved.local_addr().unwrap();
        drop(reserved);
        let peers: BTreeMap<i32, SocketAddr> = [(1, l1.local_addr().unwrap()), (2, a2)].into();
        let (t1, _r1) = PeerTransport::start(1, l1, peers.clone());
        t1.send(2, 3, Bytes::from_static(b"early")).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (_t2, mut r2) = PeerTransport::start(2, TcpListener::bind(a2).await.unwrap(), peers);
        let got = tokio::time::timeout(Duration::from_secs(5), r2.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got.envelope.body[..], b"early");
    }

    /// Garbage, a stray client without the hello, a bad CRC and an oversized length each close
    /// only their own connection; the peer keeps receiving from real peers.
    #[tokio::test]
    async fn bad_frames_close_only_their_connection() {
        let ((t1, _r1), (_t2, mut r2), a2) = pair().await;
        let mut stray = TcpStream::connect(a2).await.unwrap();
        stray.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut bad_crc = TcpStream::connect(a2).await.unwrap();
        let mut frame = BytesMut::new();
        frame.put_u32(HELLO_MAGIC);
        frame.put_i32(9);
        frame.put_u32(8);
        frame.put_u32(0xdead_beef);
        frame.put_u32(1);
        bad_crc.write_all(&frame).await.unwrap();
        let mut huge = TcpStream::connect(a2).await.unwrap();
        let mut frame = BytesMut::new();
        frame.put_u32(HELLO_MAGIC);
        frame.put_i32(9);
        frame.put_u32(u32::MAX);
        huge.write_all(&frame).await.unwrap();
        for s in [&mut stray, &mut bad_crc, &mut huge] {
            let mut byte = [0u8; 1];
            let closed = tokio::time::timeout(Duration::from_secs(5), s.read(&mut byte))
                .await
                .unwrap();
            assert!(matches!(closed, Ok(0) | Err(_)), "bad connection closed");
        }
        t1.send(2, 4, Bytes::from_static(b"still here")).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), r2.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&got.envelope.body[..], b"still here");
    }
}
