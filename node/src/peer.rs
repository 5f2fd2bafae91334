//! The peer transport: messages between brokers over TCP (raft messages, replica fetches,
//! requests forwarded to the controller).
//!
//! What it owns: one outgoing connection per peer (dialled lazily, redialled with exponential
//! backoff after a failure), the accept loop for incoming connections, framing, and the
//! correlation of requests with responses.
//!
//! Wire format: a connection starts with a hello naming the sender (8 bytes: the magic
//! "keel" and the node id, big-endian), inside TLS and followed by a login when the
//! inter-broker listener is secured ([`PeerSecurity`]), and carries frames one way, from the dialler: a
//! broker's requests, one-way messages and responses to a peer all go on its own connection
//! to that peer. Each frame is `length: u32 BE | crc32c: u32 BE | body` where the body is a
//! prost [`Envelope`]; docs/design.md lists the message kinds and their fields. The length
//! counts the CRC and the body and is bounded by [`FRAME_BYTES_MAX`]; a bad length, a CRC
//! mismatch or a body that does not decode closes that connection (the peer redials), never
//! the broker.
//!
//! A frame is sent as the byte strings it is made of ([`Body`]): its header, then the message's
//! parts (a replica fetch answer's batches are the log's read buffers), written with one
//! vectored write for the frames queued together, never copied into one buffer; the receiver
//! reads a frame into one buffer and decodes the message as slices of it.
//!
//! What always holds:
//! - the queue of frames waiting for each peer is bounded ([`PEER_QUEUE_MAX`]); when it is full,
//!   `send` drops the message and says so (raft and replica fetches retry on their own);
//! - a `call` always ends: with the response, or with an error when the connection drops or
//!   [`PeerTransport::call`]'s timeout passes;
//! - nothing from the network makes this module panic;
//! - a connection is read only once [`PeerSecurity::accept`] has opened it: with security on,
//!   a peer that did not authenticate as a broker never has a frame read.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

pub use crate::security::peer::PeerSecurity;
use crate::security::peer::PeerStream;

/// The largest frame accepted (a replica fetch response carries up to this many batch bytes).
pub const FRAME_BYTES_MAX: usize = 64 << 20;
/// Frames queued for one peer before `send` starts dropping.
pub const PEER_QUEUE_MAX: usize = 1024;
/// Parts of a [`Body`] shorter than this are copied together rather than sent on their own.
const BODY_PART_COPY_BELOW: usize = 4096;
/// Byte strings per vectored write (Linux's IOV_MAX is 1024).
const WRITE_PARTS_MAX: usize = 256;
/// Frames the writer takes from the queue for one vectored write, at most.
const WRITE_FRAMES_MAX: usize = 64;
/// Incoming connections being opened (TLS, login) at once; more are closed unread, so a flood
/// of connections that never finish their opening cannot pile up tasks.
pub const OPENINGS_MAX: usize = 64;
/// First and last delay between redials of an unreachable peer.
pub const REDIAL_BACKOFF_MIN: Duration = Duration::from_millis(50);
pub const REDIAL_BACKOFF_MAX: Duration = Duration::from_secs(2);

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

/// A message body to send, as byte strings sent one after another (see the module
/// documentation): what the receiver gets as [`Envelope::body`] is their concatenation.
#[derive(Clone, Debug, Default)]
pub struct Body {
    parts: Vec<Bytes>,
    /// Small parts, copied together, not yet in `parts`.
    small: BytesMut,
    len: usize,
}

impl Body {
    pub fn new() -> Body {
        Body::default()
    }

    /// Appends `bytes`: as a part of its own, or copied with its neighbours if it is short.
    pub fn push(&mut self, bytes: Bytes) {
        self.len += bytes.len();
        if bytes.len() < BODY_PART_COPY_BELOW {
            self.small.extend_from_slice(&bytes);
        } else {
            self.flush_small();
            self.parts.push(bytes);
        }
    }

    /// Appends a copy of `bytes`.
    pub fn push_slice(&mut self, bytes: &[u8]) {
        self.len += bytes.len();
        self.small.extend_from_slice(bytes);
    }

    /// The body's length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn flush_small(&mut self) {
        if !self.small.is_empty() {
            self.parts.push(self.small.split().freeze());
        }
    }

    fn into_parts(mut self) -> Vec<Bytes> {
        self.flush_small();
        self.parts
    }

    /// The body as one buffer (a copy; tests).
    #[cfg(test)]
    pub fn concat(self) -> Bytes {
        self.into_parts().concat().into()
    }
}

impl From<Bytes> for Body {
    fn from(bytes: Bytes) -> Body {
        let mut body = Body::new();
        body.push(bytes);
        body
    }
}

/// A frame ready to send: byte strings to write one after another.
type Frame = Vec<Bytes>;

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
    queues: BTreeMap<i32, mpsc::Sender<Frame>>,
    pending: Pending,
    next_id: AtomicU64,
}

/// The frame of an [`Envelope`] whose body is `body`: the same bytes as prost's encoding of
/// the envelope behind the length and CRC (the body is its last field), with the body's parts
/// left as they are.
fn encode_frame(correlation_id: u64, is_response: bool, kind: u32, body: Body) -> Frame {
    let head = Envelope {
        correlation_id,
        is_response,
        kind,
        body: Bytes::new(),
    };
    let mut prefix = BytesMut::with_capacity(8 + head.encoded_len() + 11);
    prefix.put_u64(0); // length and CRC, patched below
    head.encode(&mut prefix)
        .expect("a BytesMut grows to fit an envelope");
    let body_len = body.len();
    if body_len > 0 {
        // prost leaves an empty body out, as the empty `head.body` above was.
        prost::encoding::encode_key(4, prost::encoding::WireType::LengthDelimited, &mut prefix);
        prost::encoding::encode_varint(body_len as u64, &mut prefix);
    }
    let parts = body.into_parts();
    let mut crc = crc32c::crc32c(&prefix[8..]);
    for part in &parts {
        crc = crc32c::crc32c_append(crc, part);
    }
    let length = 4 + prefix.len() - 8 + body_len;
    prefix[..4].copy_from_slice(&(length as u32).to_be_bytes());
    prefix[4..8].copy_from_slice(&crc.to_be_bytes());
    let mut frame = Vec::with_capacity(1 + parts.len());
    frame.push(prefix.freeze());
    frame.extend(parts);
    frame
}

/// Reads one frame; `Err` for a bad length, a CRC mismatch or a body that does not decode.
async fn read_frame<S: AsyncRead + Unpin>(stream: &mut S) -> std::io::Result<Envelope> {
    let len = stream.read_u32().await? as usize;
    if !(4..=FRAME_BYTES_MAX).contains(&len) {
        return Err(std::io::Error::other(format!(
            "frame length {len} out of range"
        )));
    }
    // Read into spare capacity: nothing is zeroed first.
    let mut buf = BytesMut::with_capacity(len);
    while buf.len() < len {
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    let mut buf = buf.freeze();
    let crc = buf.get_u32();
    if crc32c::crc32c(&buf) != crc {
        return Err(std::io::Error::other("frame CRC mismatch"));
    }
    Envelope::decode(buf).map_err(std::io::Error::other)
}

impl PeerTransport {
    /// Starts the transport: accepts peers on `listener` and dials `peers` (id → address) on
    /// demand, opening connections as `security` says. Incoming messages arrive on the
    /// returned receiver.
    pub fn start(
        node_id: i32,
        listener: TcpListener,
        peers: BTreeMap<i32, SocketAddr>,
        security: Arc<PeerSecurity>,
    ) -> (Arc<PeerTransport>, mpsc::Receiver<Incoming>) {
        let (incoming_tx, incoming_rx) = mpsc::channel(PEER_QUEUE_MAX);
        let pending: Pending = Arc::default();
        let mut queues = BTreeMap::new();
        for (&id, &addr) in peers.iter().filter(|(&id, _)| id != node_id) {
            let (tx, rx) = mpsc::channel(PEER_QUEUE_MAX);
            queues.insert(id, tx);
            tokio::spawn(dial_loop(node_id, id, addr, rx, security.clone()));
        }
        tokio::spawn(accept_loop(
            listener,
            incoming_tx,
            pending.clone(),
            security,
        ));
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

    fn enqueue(&self, to: i32, frame: Frame) -> Result<(), PeerError> {
        let queue = self.queues.get(&to).ok_or(PeerError::UnknownPeer(to))?;
        queue.try_send(frame).map_err(|_| PeerError::QueueFull(to))
    }

    /// Sends a one-way message. Dropped (with an error) if the peer's queue is full.
    pub fn send(&self, to: i32, kind: u32, body: Bytes) -> Result<(), PeerError> {
        self.enqueue(to, encode_frame(0, false, kind, body.into()))
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
        let result = match self.enqueue(to, encode_frame(id, false, kind, body.into())) {
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
        self.respond_body(incoming, kind, body.into())
    }

    /// Answers a request received as `incoming` with a body in parts.
    pub fn respond_body(
        &self,
        incoming: &Incoming,
        kind: u32,
        body: Body,
    ) -> Result<(), PeerError> {
        let frame = encode_frame(incoming.envelope.correlation_id, true, kind, body);
        self.enqueue(incoming.from, frame)
    }
}

/// Keeps one outgoing connection to a peer, redialling with backoff, and writes its queue.
async fn dial_loop(
    node_id: i32,
    peer: i32,
    addr: SocketAddr,
    mut queue: mpsc::Receiver<Frame>,
    security: Arc<PeerSecurity>,
) {
    let mut backoff = REDIAL_BACKOFF_MIN;
    // Frames taken from the queue and not yet written whole.
    let mut carried: Vec<Frame> = Vec::new();
    loop {
        let opened = match TcpStream::connect(addr).await {
            Ok(s) => security.dial(s, node_id, peer).await,
            Err(e) => Err(e.into()),
        };
        let mut stream = match opened {
            Ok(s) => s,
            Err(e) => {
                use crate::security::peer::PeerAuthError;
                // Refusals and TLS failures are configuration faults worth a line; an
                // unreachable peer is not (it is down, or not started yet).
                if !matches!(e, PeerAuthError::Io(_)) {
                    tracing::warn!(peer, %addr, "cannot open a connection to peer: {e}");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(REDIAL_BACKOFF_MAX);
                continue;
            }
        };
        backoff = REDIAL_BACKOFF_MIN;
        loop {
            if carried.is_empty() {
                match queue.recv().await {
                    Some(f) => carried.push(f),
                    None => return, // the transport is gone
                }
            }
            // What else is queued goes out in the same write.
            while carried.len() < WRITE_FRAMES_MAX {
                match queue.try_recv() {
                    Ok(f) => carried.push(f),
                    Err(_) => break,
                }
            }
            // madsim's TCP sends on flush; real tokio's flush is free.
            if write_parts(&mut stream, carried.iter().flatten())
                .await
                .is_err()
                || stream.flush().await.is_err()
            {
                tracing::debug!(peer, "connection to peer dropped; redialling");
                break;
            }
            carried.clear();
        }
    }
}

/// Writes `parts` one after another, with vectored writes.
async fn write_parts<'a, S: AsyncWrite + Unpin>(
    stream: &mut S,
    parts: impl Iterator<Item = &'a Bytes>,
) -> std::io::Result<()> {
    let mut parts: std::collections::VecDeque<&[u8]> =
        parts.filter(|p| !p.is_empty()).map(|p| &p[..]).collect();
    while !parts.is_empty() {
        let slices: Vec<std::io::IoSlice> = parts
            .iter()
            .take(WRITE_PARTS_MAX)
            .map(|p| std::io::IoSlice::new(p))
            .collect();
        let mut written = stream.write_vectored(&slices).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while written > 0 {
            let first = parts.front_mut().expect("written no more than the parts");
            if written >= first.len() {
                written -= first.len();
                parts.pop_front();
            } else {
                *first = &first[written..];
                written = 0;
            }
        }
    }
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    incoming: mpsc::Sender<Incoming>,
    pending: Pending,
    security: Arc<PeerSecurity>,
) {
    let openings = Arc::new(tokio::sync::Semaphore::new(OPENINGS_MAX));
    loop {
        match listener.accept().await {
            Ok((stream, address)) => {
                let Ok(opening) = openings.clone().try_acquire_owned() else {
                    tracing::warn!(%address, "closed a peer connection: {OPENINGS_MAX} openings in progress");
                    continue;
                };
                let (incoming, pending, security) =
                    (incoming.clone(), pending.clone(), security.clone());
                tokio::spawn(async move {
                    let opened = security.accept(stream).await;
                    drop(opening);
                    match opened {
                        Ok((stream, from, _principal)) => {
                            read_loop(stream, from, incoming, pending).await
                        }
                        // One line per refused connection; nothing of it was read.
                        Err(e) => tracing::warn!(
                            %address,
                            protocol = %security.protocol(),
                            "refused a peer connection: {e}"
                        ),
                    }
                });
            }
            Err(e) => {
                tracing::warn!("peer accept failed: {e}");
                tokio::time::sleep(REDIAL_BACKOFF_MIN).await;
            }
        }
    }
}

/// Reads one opened connection from peer `from`: frames until EOF or a bad frame.
async fn read_loop(
    mut stream: PeerStream,
    from: i32,
    incoming: mpsc::Sender<Incoming>,
    pending: Pending,
) {
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
    use crate::security::peer::HELLO_MAGIC;

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
            PeerTransport::start(1, l1, peers.clone(), Arc::default()),
            PeerTransport::start(2, l2, peers, Arc::default()),
            a2,
        )
    }

    /// A frame is the length, the CRC and prost's encoding of the envelope, whatever parts
    /// its body was given in (small ones copied together, large ones left as they are).
    #[test]
    fn frames_of_bodies_in_parts_are_prosts_encoding() {
        for sizes in [
            vec![],
            vec![3],
            vec![5000],
            vec![10, 5000, 7, 7, 9000, 1],
            vec![0, 0],
        ] {
            let mut body = Body::new();
            let mut whole = Vec::new();
            for (i, n) in sizes.iter().enumerate() {
                let part: Vec<u8> = (0..*n).map(|j| (i * 31 + j) as u8).collect();
                whole.extend_from_slice(&part);
                body.push(Bytes::from(part));
            }
            let frame: Vec<u8> = encode_frame(7, true, 3, body).concat();
            let envelope = Envelope {
                correlation_id: 7,
                is_response: true,
                kind: 3,
                body: Bytes::from(whole),
            }
            .encode_to_vec();
            assert_eq!(&frame[8..], &envelope[..], "sizes {sizes:?}");
            assert_eq!(
                u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize,
                4 + envelope.len()
            );
            assert_eq!(
                u32::from_be_bytes(frame[4..8].try_into().unwrap()),
                crc32c::crc32c(&envelope)
            );
        }
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
        let (t1, _r1) = PeerTransport::start(1, l1, peers.clone(), Arc::default());
        t1.send(2, 3, Bytes::from_static(b"early")).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (_t2, mut r2) = PeerTransport::start(
            2,
            TcpListener::bind(a2).await.unwrap(),
            peers,
            Arc::default(),
        );
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
