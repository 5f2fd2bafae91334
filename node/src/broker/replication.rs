//! Replication between brokers, batched per pair of brokers: the leader's side of fetch
//! sessions, the peer messages they travel in, AlterPartition requests to the controller, and
//! the replica deadlines (ISR shrink, fetch backoff). The rules are core's
//! ([`keel_core::partition`], whose call order this follows); the follower's side is
//! [`super::fetcher`].
//!
//! A follower broker keeps one fetch session with each broker it follows partitions of (Kafka's
//! replica fetcher per source broker, with KIP-227's incremental fetch sessions). A request
//! names a partition only when the follower has a new fetch for it (a new position, a new
//! durable end, a new epoch); the leader keeps each named fetch in the session until it has
//! something to answer it with: batches, a newer high watermark, a divergence, an error. So an
//! idle partition costs nothing on the wire, and a request carries only what changed.
//!
//! The leader evaluates the partitions whose state changed since it last looked (an append, a
//! high watermark move, a role change: [`LeaderSessions::mark`]) and, every quarter of
//! `replica.lag.time.max.ms` (at most [`FULL_EVALUATION_INTERVAL_MAX`]), every partition of
//! the session, so that idle caught-up followers stay caught up (`lastCaughtUpTime`). It answers at once when anything has news
//! and otherwise holds the request up to [`REPLICA_FETCH_WAIT`]; one request per session is
//! held, not one per partition. A follower whose own state changed while its request is held
//! (a sync completed) sends a one-way wake, which makes the leader answer the held request now,
//! so that the follower's next request, naming its new durable end, goes out at once.
//!
//! Deadlines are data: each partition reports its next one (`Effect::Deadline`, from
//! `PartitionReplica::poll_effect`), [`Deadlines`] keeps them ordered, and one task sleeps until
//! the earliest. Nothing scans every partition on an interval.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use keel_core::batch::{Batch, BatchError};
use keel_core::controller::broker_config::{
    FOLLOWER_REPLICATION_THROTTLED_RATE, LEADER_REPLICATION_THROTTLED_RATE,
};
use keel_core::controller::{AlterPartitionRequest, BrokerId, TopicId};
use keel_core::error_code::{self as code, ErrorCode};
use keel_core::partition::{AlterPartition, FetchError, FetchPayload, FetchRequest, FetchResponse};
use keel_core::throttle::{is_throttled, TokenBucket};
use keel_core::{LeaderEpoch, Offset};
use prost::Message as _;
use tokio::sync::{mpsc, Notify};

use super::{Broker, PartitionHandle};
use crate::cluster::{kind, Cluster, Proposed};
use crate::peer::{Body, Incoming};

/// The longest a leader holds a session's request that has nothing new (Kafka's
/// `replica.fetch.wait.max.ms`).
pub const REPLICA_FETCH_WAIT: Duration = Duration::from_millis(500);
/// How often, at most, a leader evaluates every partition of a session, changed or not: a
/// quarter of `replica.lag.time.max.ms` within these bounds. An idle follower counts as caught
/// up as of its partition's last evaluation, so a follower may leave the ISR after three
/// quarters of `replica.lag.time.max.ms` without fetching instead of the whole of it.
pub const FULL_EVALUATION_INTERVAL_MAX: Duration = Duration::from_secs(5);
const FULL_EVALUATION_INTERVAL_MIN: Duration = Duration::from_millis(100);
/// The most record bytes one answer carries (Kafka's `replica.fetch.response.max.bytes`).
pub const RESPONSE_BYTES_MAX: usize = 10 << 20;

/// A partition, as fetch sessions name it.
pub type PartitionKey = (TopicId, i32);

// ---------------------------------------------------------------------------------------------
// Messages

/// One partition's fetch in a session request: core's [`FetchRequest`] and the partition.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PartitionFetch {
    #[prost(string, tag = "1")]
    pub topic: String,
    #[prost(bytes = "vec", tag = "2")]
    pub topic_id: Vec<u8>,
    #[prost(int32, tag = "3")]
    pub partition: i32,
    #[prost(int32, tag = "5")]
    pub leader_epoch: i32,
    #[prost(int64, tag = "6")]
    pub fetch_offset: i64,
    #[prost(int32, tag = "7")]
    pub last_fetched_epoch: i32,
    #[prost(int64, tag = "8")]
    pub durable_end: i64,
    #[prost(uint64, tag = "9")]
    pub max_bytes: u64,
    /// How far the follower's log cleaner has cleaned its log (0 from a broker that does
    /// not send it: the leader then removes no tombstone).
    #[prost(int64, tag = "10")]
    pub cleaned_end: i64,
}

/// A partition the follower no longer fetches in this session.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PartitionRef {
    #[prost(bytes = "vec", tag = "1")]
    pub topic_id: Vec<u8>,
    #[prost(int32, tag = "2")]
    pub partition: i32,
}

/// A follower's request in a fetch session (peer message kind `REPLICA_FETCH`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionFetch {
    /// 0: a new session, which replaces any the follower had with this leader; `named` then
    /// lists every partition it fetches.
    #[prost(uint64, tag = "1")]
    pub session_id: u64,
    /// 0 for a new session, then one more with each request.
    #[prost(uint32, tag = "2")]
    pub epoch: u32,
    /// The fetching broker.
    #[prost(int32, tag = "3")]
    pub replica: i32,
    /// Partitions with a new fetch; the others keep the one the session holds.
    #[prost(message, repeated, tag = "4")]
    pub named: Vec<PartitionFetch>,
    #[prost(message, repeated, tag = "5")]
    pub forgotten: Vec<PartitionRef>,
    /// The follower's broker epoch (KIP-903's ReplicaState.ReplicaEpoch; 0 unknown): the
    /// leader tells the controller which incarnation it judged when it proposes the follower
    /// into an ISR.
    #[prost(int64, tag = "6")]
    pub replica_epoch: i64,
}

/// The leader's answer to one partition's fetch: core's [`FetchResponse`] or an error.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PartitionAnswer {
    /// A Kafka error code; 0: none.
    #[prost(int32, tag = "1")]
    pub error_code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(int32, tag = "3")]
    pub leader_epoch: i32,
    #[prost(int64, tag = "4")]
    pub high_watermark: i64,
    #[prost(int64, tag = "5")]
    pub log_start: i64,
    #[prost(int64, tag = "6")]
    pub log_end: i64,
    /// Whole batches, as stored, one after another. Encoded last (see [`answer_body`]).
    #[prost(bytes = "bytes", tag = "7")]
    pub records: Bytes,
    #[prost(bool, tag = "8")]
    pub diverging: bool,
    #[prost(int32, tag = "9")]
    pub diverging_epoch: i32,
    #[prost(int64, tag = "10")]
    pub diverging_end_offset: i64,
    #[prost(bool, tag = "11")]
    pub offset_out_of_range: bool,
    #[prost(bytes = "vec", tag = "12")]
    pub topic_id: Vec<u8>,
    #[prost(int32, tag = "13")]
    pub partition: i32,
    /// The leader epoch of the fetch this answers (the follower backs off only if it still
    /// fetches at that epoch).
    #[prost(int32, tag = "14")]
    pub fetch_epoch: i32,
}

/// The leader's answer to a session request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionAnswer {
    /// A session-level error; 0: none. The follower starts a new session.
    /// [`code::FETCH_SESSION_ID_NOT_FOUND`]: the leader has no such session (it restarted, or
    /// the follower's was replaced). [`code::INVALID_FETCH_SESSION_EPOCH`]: a request was lost
    /// or repeated. Or a malformed request.
    #[prost(int32, tag = "1")]
    pub error_code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(uint64, tag = "3")]
    pub session_id: u64,
    /// Only the partitions with something new. Encoded last (see [`answer_body`]).
    #[prost(message, repeated, tag = "4")]
    pub entries: Vec<PartitionAnswer>,
}

pub fn partition_key(topic_id: &[u8], partition: i32) -> Option<PartitionKey> {
    let id: [u8; 16] = topic_id.try_into().ok()?;
    Some((TopicId(id), partition))
}

impl PartitionFetch {
    pub fn new(topic: &str, key: PartitionKey, request: &FetchRequest) -> PartitionFetch {
        PartitionFetch {
            topic: topic.to_string(),
            topic_id: key.0 .0.to_vec(),
            partition: key.1,
            leader_epoch: request.leader_epoch.0,
            fetch_offset: request.fetch_offset.0,
            last_fetched_epoch: request.last_fetched_epoch.0,
            durable_end: request.durable_end.0,
            max_bytes: request.max_bytes as u64,
            cleaned_end: request.cleaned_end.0,
        }
    }

    fn request(&self, replica: BrokerId) -> FetchRequest {
        FetchRequest {
            replica,
            leader_epoch: LeaderEpoch(self.leader_epoch),
            fetch_offset: Offset(self.fetch_offset),
            last_fetched_epoch: LeaderEpoch(self.last_fetched_epoch),
            durable_end: Offset(self.durable_end),
            cleaned_end: Offset(self.cleaned_end.max(0)),
            max_bytes: self.max_bytes.min(crate::peer::FRAME_BYTES_MAX as u64 / 4) as usize,
        }
    }
}

fn error_answer(
    key: PartitionKey,
    fetch_epoch: LeaderEpoch,
    code: ErrorCode,
    message: String,
) -> PartitionAnswer {
    PartitionAnswer {
        error_code: code as i32,
        message,
        topic_id: key.0 .0.to_vec(),
        partition: key.1,
        fetch_epoch: fetch_epoch.0,
        ..PartitionAnswer::default()
    }
}

/// The answer to send for `key`: everything but the batches, and the batches (as stored) to
/// send as its `records` field (see [`answer_body`]).
fn encode_response(
    key: PartitionKey,
    fetch_epoch: LeaderEpoch,
    response: FetchResponse,
) -> (PartitionAnswer, Vec<Bytes>) {
    let mut answer = PartitionAnswer {
        leader_epoch: response.leader_epoch.0,
        high_watermark: response.high_watermark.0,
        log_start: response.log_start.0,
        log_end: response.log_end.0,
        topic_id: key.0 .0.to_vec(),
        partition: key.1,
        fetch_epoch: fetch_epoch.0,
        ..PartitionAnswer::default()
    };
    let mut records = Vec::new();
    match response.payload {
        FetchPayload::Records(batches) => {
            records = batches.into_iter().map(|b| b.bytes().clone()).collect();
        }
        FetchPayload::Diverging { epoch, end_offset } => {
            answer.diverging = true;
            answer.diverging_epoch = epoch.0;
            answer.diverging_end_offset = end_offset.0;
        }
        FetchPayload::OffsetOutOfRange => answer.offset_out_of_range = true,
    }
    (answer, records)
}

fn length_delimited_key(tag: u32, len: usize) -> Vec<u8> {
    let mut key = Vec::with_capacity(16);
    prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, &mut key);
    prost::encoding::encode_varint(len as u64, &mut key);
    key
}

/// The peer message body of `answer` with `entries` as its entries, each with its batches as
/// its `records` field: prost's encoding of the whole answer, the batches sent from the buffers
/// they were read into. `answer`'s own entries, and each entry's own `records`, must be empty.
/// Protobuf lets fields come in any order, so each entry's records go last.
pub fn answer_body(answer: &SessionAnswer, entries: Vec<(PartitionAnswer, Vec<Bytes>)>) -> Body {
    debug_assert!(answer.entries.is_empty());
    let mut body = Body::new();
    body.push_slice(&answer.encode_to_vec());
    for (entry, records) in entries {
        debug_assert!(entry.records.is_empty());
        let head = entry.encode_to_vec();
        let records_len: usize = records.iter().map(Bytes::len).sum();
        let records_key = (records_len > 0).then(|| length_delimited_key(7, records_len));
        let entry_len = head.len() + records_key.as_ref().map_or(0, Vec::len) + records_len;
        body.push_slice(&length_delimited_key(4, entry_len));
        body.push_slice(&head);
        if let Some(key) = records_key {
            body.push_slice(&key);
            for r in records {
                body.push(r);
            }
        }
    }
    body
}

/// Why a partition's answer from the leader is not a [`FetchResponse`].
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    /// The leader answered with a Kafka error code.
    #[error("error {code}: {message}")]
    Code { code: i32, message: String },
    #[error("a truncated batch from the leader")]
    Truncated,
    #[error("a batch from the leader: {0}")]
    Batch(#[from] BatchError),
}

/// One partition's answer as core's [`FetchResponse`]; `Err` for an error code or batches that
/// do not parse (a protocol violation: the follower backs off and fetches again).
pub fn decode_entry(answer: PartitionAnswer) -> Result<FetchResponse, AnswerError> {
    if answer.error_code != 0 {
        return Err(AnswerError::Code {
            code: answer.error_code,
            message: answer.message,
        });
    }
    let payload = if answer.diverging {
        FetchPayload::Diverging {
            epoch: LeaderEpoch(answer.diverging_epoch),
            end_offset: Offset(answer.diverging_end_offset),
        }
    } else if answer.offset_out_of_range {
        FetchPayload::OffsetOutOfRange
    } else {
        let mut batches = Vec::new();
        let mut rest = answer.records;
        while !rest.is_empty() {
            match Batch::parse_prefix(&rest) {
                Ok(Some(batch)) => {
                    let _ = rest.split_to(batch.size());
                    batches.push(batch);
                }
                Ok(None) => return Err(AnswerError::Truncated),
                Err(e) => return Err(e.into()),
            }
        }
        FetchPayload::Records(batches)
    };
    Ok(FetchResponse {
        leader_epoch: LeaderEpoch(answer.leader_epoch),
        high_watermark: Offset(answer.high_watermark),
        log_start: Offset(answer.log_start),
        log_end: Offset(answer.log_end),
        payload,
    })
}

// ---------------------------------------------------------------------------------------------
// The leader's sessions

/// The fetch sessions followers hold with this broker as leader, one per follower broker.
#[derive(Default)]
pub struct LeaderSessions {
    sessions: Mutex<BTreeMap<BrokerId, Arc<Session>>>,
    next_id: AtomicU64,
    /// The request each follower last asked to have answered now, as it sent it (session id,
    /// 0 for a new session, and epoch). Kept apart from the sessions: a wake can overtake the
    /// request it names (requests are served on tasks of their own, wakes in order of
    /// arrival), and must still answer that request when it is served.
    wakes: Mutex<BTreeMap<BrokerId, WakeTarget>>,
    /// Per partition and follower, the broker epoch of the follower's last fetch the
    /// partition recorded (KIP-903): an ISR proposal names it for each member.
    fetch_epochs: Mutex<BTreeMap<(PartitionKey, BrokerId), i64>>,
    /// The replication throttle's budgets ([`Throttles`]).
    throttles: Mutex<Throttles>,
}

/// The replication throttle's budgets on this leader ([`keel_core::throttle`]): one for
/// everything it sends to replicas being added (its `leader.replication.throttled.rate`), and
/// one per follower broker for what that follower is sent (the follower's
/// `follower.replication.throttled.rate`, enforced here, by each leader it fetches from).
/// Only reassignment catch-up traffic counts ([`keel_core::throttle::is_throttled`]).
#[derive(Default)]
struct Throttles {
    leader: Option<TokenBucket>,
    followers: BTreeMap<BrokerId, TokenBucket>,
    stats: ThrottleStats,
}

/// What the replication throttle did on a leader, since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ThrottleStats {
    /// Fetches of throttled partitions held back because a budget was spent.
    pub held_back: u64,
    /// Record bytes sent to throttled fetches.
    pub throttled_bytes: u64,
}

/// `bucket` brought to `rate` (created, re-rated or dropped).
fn rated(bucket: &mut Option<TokenBucket>, rate: Option<u64>, now_ms: i64) {
    match (bucket.as_mut(), rate) {
        (_, None) => *bucket = None,
        (None, Some(r)) => *bucket = Some(TokenBucket::new(r, now_ms)),
        (Some(b), Some(r)) if b.rate() != r => b.set_rate(r, now_ms),
        (Some(_), Some(_)) => {}
    }
}

/// The request a wake names: (session id as sent, 0 for a new session; session epoch).
type WakeTarget = (u64, u32);

/// A wake's body: the session id and epoch of the request to answer (big-endian u64, u32).
pub(super) fn encode_wake(target: WakeTarget) -> Bytes {
    let mut body = Vec::with_capacity(12);
    body.extend_from_slice(&target.0.to_be_bytes());
    body.extend_from_slice(&target.1.to_be_bytes());
    Bytes::from(body)
}

fn decode_wake(body: &[u8]) -> Option<WakeTarget> {
    let id = u64::from_be_bytes(body.get(..8)?.try_into().ok()?);
    let epoch = u32::from_be_bytes(body.get(8..12)?.try_into().ok()?);
    (body.len() == 12).then_some((id, epoch))
}

/// One follower broker's session.
pub struct Session {
    id: u64,
    inner: Mutex<SessionInner>,
    /// Wakes the held request: a partition of the session changed, the follower asked, or the
    /// session was replaced.
    notify: Notify,
}

#[derive(Default)]
struct SessionInner {
    /// The epoch of the last request.
    epoch: u32,
    /// The follower's broker epoch, as its last request gave it.
    replica_epoch: i64,
    /// Replaced by a newer session of the same follower: its held request answers at once.
    closed: bool,
    entries: BTreeMap<PartitionKey, Entry>,
    /// Partitions whose state changed since the leader last evaluated them.
    dirty: BTreeSet<PartitionKey>,
    /// When every partition was last evaluated (ms, the broker's clock).
    last_full_ms: i64,
}

struct Entry {
    p: Arc<PartitionHandle>,
    /// The follower's fetch, until it is answered (then the follower names the next one).
    request: Option<FetchRequest>,
    /// The high watermark last sent to the follower for this partition.
    hw_sent: Offset,
}

impl LeaderSessions {
    pub fn new(first_id: u64) -> LeaderSessions {
        LeaderSessions {
            sessions: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(first_id.max(1)),
            wakes: Mutex::new(BTreeMap::new()),
            fetch_epochs: Mutex::new(BTreeMap::new()),
            throttles: Mutex::new(Throttles::default()),
        }
    }

    /// What the replication throttle did here so far.
    pub fn throttle_stats(&self) -> ThrottleStats {
        self.throttles.lock().expect("throttles poisoned").stats
    }

    /// With the rates `leader_rate` (this broker's) and `follower_rate` (`follower`'s), the
    /// milliseconds before a throttled fetch by `follower` may be answered: 0 now.
    fn throttle_wait(
        &self,
        follower: BrokerId,
        leader_rate: Option<u64>,
        follower_rate: Option<u64>,
        now_ms: i64,
    ) -> i64 {
        let mut t = self.throttles.lock().expect("throttles poisoned");
        rated(&mut t.leader, leader_rate, now_ms);
        let mut own = t.followers.remove(&follower);
        rated(&mut own, follower_rate, now_ms);
        let wait = [t.leader.as_mut(), own.as_mut()]
            .into_iter()
            .flatten()
            .map(|b| b.wait_ms(now_ms))
            .max()
            .unwrap_or(0);
        if let Some(own) = own {
            t.followers.insert(follower, own);
        }
        if wait > 0 {
            t.stats.held_back += 1;
        }
        wait
    }

    /// Counts `bytes` sent to `follower`'s throttled fetch.
    fn throttle_record(&self, follower: BrokerId, bytes: u64, now_ms: i64) {
        let mut t = self.throttles.lock().expect("throttles poisoned");
        t.stats.throttled_bytes += bytes;
        if let Some(b) = t.leader.as_mut() {
            b.record(now_ms, bytes);
        }
        if let Some(b) = t.followers.get_mut(&follower) {
            b.record(now_ms, bytes);
        }
    }

    /// The partition `key` changed (an append, a high watermark move, a role change): the
    /// sessions that fetch it evaluate it again. Never called under a partition lock.
    pub fn mark(&self, key: &PartitionKey) {
        let sessions = self.sessions.lock().expect("sessions poisoned");
        for session in sessions.values() {
            let mut inner = session.inner.lock().expect("session poisoned");
            if inner.entries.contains_key(key) {
                inner.dirty.insert(*key);
                drop(inner);
                session.notify.notify_one();
            }
        }
    }

    /// The follower asks for its request `target` to be answered now (held, or not yet
    /// served). A wake that names no request (an empty body) names the session's latest.
    fn wake(&self, follower: BrokerId, target: Option<WakeTarget>) {
        let session = self
            .sessions
            .lock()
            .expect("sessions poisoned")
            .get(&follower)
            .cloned();
        let target = match (target, &session) {
            (Some(t), _) => t,
            (None, Some(s)) => (s.id, s.inner.lock().expect("session poisoned").epoch),
            (None, None) => return,
        };
        self.wakes
            .lock()
            .expect("wakes poisoned")
            .insert(follower, target);
        if let Some(session) = session {
            session.notify.notify_one();
        }
    }

    /// Whether the follower asked for its request `sent` to be answered now (once).
    fn take_wake(&self, follower: BrokerId, sent: WakeTarget) -> bool {
        let mut wakes = self.wakes.lock().expect("wakes poisoned");
        if wakes.get(&follower) == Some(&sent) {
            wakes.remove(&follower);
            return true;
        }
        false
    }

    /// A new session for `follower`, replacing (and closing) the one it had.
    /// Records that `follower`'s fetch of `key` was taken at broker epoch `epoch`.
    fn note_fetch_epoch(&self, key: PartitionKey, follower: BrokerId, epoch: i64) {
        self.fetch_epochs
            .lock()
            .expect("fetch epochs poisoned")
            .insert((key, follower), epoch);
    }

    /// The broker epoch of `follower`'s last recorded fetch of `key`.
    fn fetch_epoch(&self, key: PartitionKey, follower: BrokerId) -> Option<i64> {
        self.fetch_epochs
            .lock()
            .expect("fetch epochs poisoned")
            .get(&(key, follower))
            .copied()
            .filter(|&e| e > 0)
    }

    fn open(&self, follower: BrokerId) -> Arc<Session> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let session = Arc::new(Session {
            id,
            inner: Mutex::new(SessionInner::default()),
            notify: Notify::new(),
        });
        let old = self
            .sessions
            .lock()
            .expect("sessions poisoned")
            .insert(follower, session.clone());
        if let Some(old) = old {
            old.inner.lock().expect("session poisoned").closed = true;
            old.notify.notify_one();
        }
        session
    }

    fn get(&self, follower: BrokerId, id: u64) -> Option<Arc<Session>> {
        self.sessions
            .lock()
            .expect("sessions poisoned")
            .get(&follower)
            .filter(|s| s.id == id)
            .cloned()
    }

    /// How many partitions each follower's session holds (tests and metrics).
    pub fn sizes(&self) -> BTreeMap<BrokerId, usize> {
        self.sessions
            .lock()
            .expect("sessions poisoned")
            .iter()
            .map(|(b, s)| (*b, s.inner.lock().expect("session poisoned").entries.len()))
            .collect()
    }
}

fn session_error(code: ErrorCode, message: String) -> Body {
    let answer = SessionAnswer {
        error_code: code as i32,
        message,
        ..SessionAnswer::default()
    };
    answer_body(&answer, Vec::new())
}

impl Broker {
    /// The leader's side of a session request: applies what it names and forgets, then answers
    /// the partitions with news, holding the request up to [`REPLICA_FETCH_WAIT`] while there
    /// is none.
    async fn serve_session(&self, from: i32, body: Bytes) -> Body {
        let m = match SessionFetch::decode(body) {
            Ok(m) => m,
            Err(e) => return session_error(code::CORRUPT_MESSAGE, format!("undecodable: {e}")),
        };
        let follower = BrokerId(m.replica);
        if m.replica != from {
            return session_error(
                code::CORRUPT_MESSAGE,
                format!("broker {from} fetches as broker {}", m.replica),
            );
        }
        let mut answers: Vec<(PartitionAnswer, Vec<Bytes>)> = Vec::new();
        // Look the named partitions up before taking the session's lock (the partition map's
        // lock is taken before a session's elsewhere).
        let mut named = Vec::with_capacity(m.named.len());
        for n in &m.named {
            let Some(key) = partition_key(&n.topic_id, n.partition) else {
                return session_error(code::CORRUPT_MESSAGE, "a topic id of the wrong size".into());
            };
            let request = n.request(follower);
            match self
                .replica(&n.topic, n.partition)
                .filter(|p| p.topic_id == key.0 && !p.is_deleted())
            {
                Some(p) => named.push((key, p, request)),
                None => answers.push((
                    error_answer(
                        key,
                        request.leader_epoch,
                        code::NOT_LEADER_OR_FOLLOWER,
                        format!("no replica of {}-{} here", n.topic, n.partition),
                    ),
                    Vec::new(),
                )),
            }
        }
        let session = if m.session_id == 0 {
            self.sessions.open(follower)
        } else {
            match self.sessions.get(follower, m.session_id) {
                Some(s) => s,
                None => {
                    return session_error(
                        code::FETCH_SESSION_ID_NOT_FOUND,
                        format!("no fetch session {} here", m.session_id),
                    )
                }
            }
        };
        {
            let mut inner = session.inner.lock().expect("session poisoned");
            if m.session_id != 0 && m.epoch != inner.epoch.wrapping_add(1) {
                return session_error(
                    code::INVALID_FETCH_SESSION_EPOCH,
                    format!("session epoch {} after {}", m.epoch, inner.epoch),
                );
            }
            inner.epoch = m.epoch;
            inner.replica_epoch = m.replica_epoch;
            for f in &m.forgotten {
                if let Some(key) = partition_key(&f.topic_id, f.partition) {
                    inner.entries.remove(&key);
                    inner.dirty.remove(&key);
                }
            }
            for (key, p, request) in named {
                if keel_core::planted::active(keel_core::planted::Bug::SessionDropsPosition)
                    && m.session_id != 0
                    && inner.entries.get(&key).is_some_and(|e| e.request.is_none())
                    && request.fetch_offset.0 % 2 == 1
                {
                    // The planted bug: a new position for a partition the session answered is
                    // dropped (at odd offsets), so the follower waits for an answer that never
                    // comes.
                    continue;
                }
                let hw_sent = inner.entries.get(&key).map_or(Offset(-1), |e| e.hw_sent);
                inner.entries.insert(
                    key,
                    Entry {
                        p,
                        request: Some(request),
                        hw_sent,
                    },
                );
                inner.dirty.insert(key);
            }
        }
        let deadline = tokio::time::Instant::now() + REPLICA_FETCH_WAIT;
        let full_interval = (self.settings.replica_lag_time_max_ms / 4).clamp(
            FULL_EVALUATION_INTERVAL_MIN.as_millis() as i64,
            FULL_EVALUATION_INTERVAL_MAX.as_millis() as i64,
        );
        let mut budget = RESPONSE_BYTES_MAX;
        loop {
            let now = self.clock.now_ms();
            let (work, closed, replica_epoch) = {
                let mut inner = session.inner.lock().expect("session poisoned");
                let full = now.saturating_sub(inner.last_full_ms) >= full_interval;
                let keys: Vec<PartitionKey> = if full {
                    inner.last_full_ms = now;
                    inner.dirty.clear();
                    inner.entries.keys().copied().collect()
                } else {
                    std::mem::take(&mut inner.dirty).into_iter().collect()
                };
                let work: Vec<_> = keys
                    .into_iter()
                    .filter_map(|k| {
                        let e = inner.entries.get(&k)?;
                        Some((k, e.p.clone(), e.request.clone()?, e.hw_sent))
                    })
                    .collect();
                (work, inner.closed, inner.replica_epoch)
            };
            if closed {
                break;
            }
            let mut results = Vec::new();
            let mut left_over = Vec::new();
            // The soonest a fetch the replication throttle held back may be answered.
            let mut throttled_wait: Option<i64> = None;
            // One look at the metadata per round, not one per partition.
            let metadata = self.cluster.state();
            for (key, p, request, hw_sent) in work {
                if budget == 0 {
                    left_over.push(key);
                    continue;
                }
                let throttled = self.throttled(&metadata, &p, follower);
                if let Some((leader_rate, follower_rate)) = throttled {
                    let wait =
                        self.sessions
                            .throttle_wait(follower, leader_rate, follower_rate, now);
                    if wait > 0 {
                        // Held back: evaluated again once the budget allows.
                        left_over.push(key);
                        throttled_wait = Some(throttled_wait.map_or(wait, |w| w.min(wait)));
                        continue;
                    }
                }
                if let Some((answer, records)) =
                    self.evaluate(&p, key, &request, hw_sent, replica_epoch)
                {
                    let len: usize = records.iter().map(Bytes::len).sum();
                    if throttled.is_some() && len > 0 {
                        self.sessions.throttle_record(follower, len as u64, now);
                    }
                    budget = budget.saturating_sub(len.max(1));
                    results.push((key, request, answer, records));
                }
            }
            let woken = {
                let mut inner = session.inner.lock().expect("session poisoned");
                inner.dirty.extend(left_over);
                for (key, request, answer, records) in results {
                    // Answered only if the session still holds that fetch (a newer request may
                    // have named a new one meanwhile: that one is evaluated in its turn).
                    let Some(e) = inner.entries.get_mut(&key) else {
                        continue;
                    };
                    if e.request.as_ref() != Some(&request) {
                        continue;
                    }
                    e.request = None;
                    if answer.error_code == 0 {
                        e.hw_sent = Offset(answer.high_watermark);
                    }
                    answers.push((answer, records));
                }
                inner.closed
            } || self.sessions.take_wake(follower, (m.session_id, m.epoch));
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if !answers.is_empty() || woken || left.is_zero() || budget == 0 {
                break;
            }
            let pause = throttled_wait.map_or(left, |w| left.min(Duration::from_millis(w as u64)));
            let _ = tokio::time::timeout(pause, session.notify.notified()).await;
        }
        let answer = SessionAnswer {
            session_id: session.id,
            ..SessionAnswer::default()
        };
        answer_body(&answer, answers)
    }

    /// What the replication throttle did on this broker as a leader so far (the simulator's
    /// coverage, tests).
    pub fn replication_throttle_stats(&self) -> ThrottleStats {
        self.sessions.throttle_stats()
    }

    /// The replication throttle's rates (this broker's leader rate, `follower`'s follower
    /// rate) if `follower`'s fetch of `p` is throttled: a rate is set and the fetch is
    /// reassignment catch-up traffic (the applied metadata has the partition adding `follower`,
    /// outside its ISR: [`keel_core::throttle::is_throttled`]). `None`: not throttled.
    fn throttled(
        &self,
        m: &keel_core::controller::MetadataState,
        p: &PartitionHandle,
        follower: BrokerId,
    ) -> Option<(Option<u64>, Option<u64>)> {
        let leader_rate = m.broker_rate(self.me(), LEADER_REPLICATION_THROTTLED_RATE);
        let follower_rate = m.broker_rate(follower, FOLLOWER_REPLICATION_THROTTLED_RATE);
        if leader_rate.is_none() && follower_rate.is_none() {
            return None;
        }
        let part = m.partition(&p.topic, p.index)?;
        is_throttled(&part.adding, &part.isr, follower).then_some((leader_rate, follower_rate))
    }

    /// Evaluates one partition's held fetch: its answer if it has news for the follower
    /// (batches, a divergence, an error, a high watermark other than the one last sent).
    fn evaluate(
        &self,
        p: &Arc<PartitionHandle>,
        key: PartitionKey,
        request: &FetchRequest,
        hw_sent: Offset,
        replica_epoch: i64,
    ) -> Option<(PartitionAnswer, Vec<Bytes>)> {
        if p.is_deleted() {
            return Some((
                error_answer(
                    key,
                    request.leader_epoch,
                    code::NOT_LEADER_OR_FOLLOWER,
                    "the partition was deleted".into(),
                ),
                Vec::new(),
            ));
        }
        let result = p.with(|r| r.handle_follower_fetch(self.clock.now_ms(), request));
        if result.is_ok() {
            // Before the effects: an ISR proposal this fetch led to names this incarnation.
            self.sessions
                .note_fetch_epoch(key, request.replica, replica_epoch);
        }
        // The follower's durable end may move the high watermark (persisted and exposed on the
        // sync thread; the planted bug exposes it at once), or its ISR membership.
        p.drain_effects();
        match result {
            Err(e) => {
                if let FetchError::Log(e) = &e {
                    p.read_failed(e);
                }
                Some((
                    error_answer(key, request.leader_epoch, e.code(), e.to_string()),
                    Vec::new(),
                ))
            }
            Ok(response) => {
                let nothing_new = matches!(&response.payload, FetchPayload::Records(b) if b.is_empty())
                    && response.high_watermark == hw_sent;
                (!nothing_new).then(|| encode_response(key, request.leader_epoch, response))
            }
        }
    }

    /// Sends an AlterPartition the partition asked for ([`keel_core::partition::Effect`]) to
    /// the controller.
    pub(super) fn send_alter_partition(&self, p: &Arc<PartitionHandle>, alter: AlterPartition) {
        let Some(broker) = self.this.upgrade() else {
            return;
        };
        let request = AlterPartitionRequest {
            broker_id: self.me(),
            broker_epoch: self.broker_epoch(),
            topic_id: p.topic_id,
            partition: p.index,
            leader_epoch: alter.leader_epoch,
            partition_epoch: alter.partition_epoch,
            new_isr: alter.isr.clone(),
        };
        let member_epochs: Vec<i64> = alter
            .isr
            .iter()
            .map(|&b| {
                if b == self.me() {
                    self.broker_epoch()
                } else {
                    self.sessions
                        .fetch_epoch((p.topic_id, p.index), b)
                        .unwrap_or(-1)
                }
            })
            .collect();
        tracing::info!(topic = %p.topic, partition = p.index, "proposing ISR {:?}", alter.isr);
        let before = p.with(|r| r.isr());
        let p = p.clone();
        // From any thread: the sync threads drain effects too.
        self.spawn(async move {
            match broker.cluster.alter_partition(request, member_epochs).await {
                Ok(Proposed::Committed(index)) => {
                    broker.metrics.record_isr_change(&before, &alter.isr);
                    broker.cluster.wait_applied(index).await;
                    broker.reconcile_partitions();
                }
                Ok(Proposed::Rejected(_, why)) => {
                    tracing::info!(topic = %p.topic, partition = p.index, "ISR change rejected: {why}");
                    p.with(|r| r.on_alter_partition_failed(broker.clock.now_ms(), alter.id));
                }
                Err(e) => {
                    tracing::info!(topic = %p.topic, partition = p.index, "ISR change refused: {e}");
                    p.with(|r| r.on_alter_partition_failed(broker.clock.now_ms(), alter.id));
                }
            }
            // Either way the partition has a new deadline (the retry backoff, or a shrink
            // deadline the pending change held back).
            p.drain_effects();
        });
    }
}

/// Dispatches messages from peers: the quorum's to the cluster, fetch sessions to the
/// partitions.
pub async fn dispatch_peers(
    broker: Weak<Broker>,
    cluster: Arc<Cluster>,
    mut incoming: mpsc::Receiver<Incoming>,
) {
    while let Some(message) = incoming.recv().await {
        let Some(message) = cluster.handle_peer(message) else {
            continue;
        };
        let Some(broker) = broker.upgrade() else {
            return;
        };
        let Some(message) = super::txn::dispatch_txn_peer(&broker, message) else {
            continue;
        };
        match message.envelope.kind {
            kind::REPLICA_FETCH => {
                tokio::spawn(async move {
                    let body = broker
                        .serve_session(message.from, message.envelope.body.clone())
                        .await;
                    if let Some(peers) = broker.cluster.peers() {
                        let _ = peers.respond_body(&message, kind::REPLICA_FETCH, body);
                    }
                });
            }
            kind::REPLICA_FETCH_WAKE => broker
                .sessions
                .wake(BrokerId(message.from), decode_wake(&message.envelope.body)),
            other => tracing::warn!(
                from = message.from,
                "a peer message of unknown kind {other}"
            ),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Deadlines

/// Every partition's next deadline (`Effect::Deadline`: an ISR follower falling out of sync on
/// a leader, a damaged leader's recheck, the end of a fetch backoff on a follower), in order. A
/// partition is in the queue at most once, at its earliest deadline; one task
/// ([`run_deadlines`]) sleeps until the first.
#[derive(Default)]
pub struct Deadlines {
    queue: Mutex<DeadlineQueue>,
    notify: Notify,
}

#[derive(Default)]
struct DeadlineQueue {
    by_time: BTreeMap<(i64, u64), Weak<PartitionHandle>>,
    next_seq: u64,
}

impl Deadlines {
    /// Schedules `p` at `at` (ms, the broker's clock) unless it is already due earlier.
    pub fn schedule(&self, p: &Arc<PartitionHandle>, at: i64) {
        let mut queue = self.queue.lock().expect("deadlines poisoned");
        let current = p.timer_at.load(Ordering::SeqCst);
        if current <= at {
            return;
        }
        p.timer_at.store(at, Ordering::SeqCst);
        let seq = queue.next_seq;
        queue.next_seq += 1;
        let first = queue.by_time.keys().next().is_none_or(|&(t, _)| at < t);
        queue.by_time.insert((at, seq), Arc::downgrade(p));
        drop(queue);
        if first {
            self.notify.notify_one();
        }
    }

    /// The partitions due at `now`, taken out of the queue.
    fn take_due(&self, now: i64) -> Vec<Arc<PartitionHandle>> {
        let mut queue = self.queue.lock().expect("deadlines poisoned");
        let mut due = Vec::new();
        while let Some(entry) = queue.by_time.first_entry() {
            let (at, _) = *entry.key();
            if at > now {
                break;
            }
            let weak = entry.remove();
            let Some(p) = weak.upgrade() else {
                continue;
            };
            // A stale entry: the partition was scheduled earlier since (and fired then).
            if p.timer_at.load(Ordering::SeqCst) == at {
                p.timer_at.store(i64::MAX, Ordering::SeqCst);
                due.push(p);
            }
        }
        due
    }

    fn first(&self) -> Option<i64> {
        let queue = self.queue.lock().expect("deadlines poisoned");
        queue.by_time.keys().next().map(|&(t, _)| t)
    }

    /// How many entries the queue holds (tests).
    pub fn len(&self) -> usize {
        self.queue.lock().expect("deadlines poisoned").by_time.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Runs the replica deadlines: ISR shrink on leaders (`replica.lag.time.max.ms`), the end of a
/// follower's fetch backoff.
pub async fn run_deadlines(broker: Weak<Broker>, deadlines: Arc<Deadlines>) {
    let Some(clock) = broker.upgrade().map(|b| b.clock) else {
        return;
    };
    loop {
        // At least a millisecond: a deadline that is due again at once (a partition whose
        // timeout work cannot run yet) must not spin this loop without time passing.
        let wait = deadlines.first().map(|at| {
            Duration::from_millis(at.saturating_sub(clock.now_ms()).clamp(1, 60_000) as u64)
        });
        let notified = deadlines.notify.notified();
        match wait {
            Some(w) => {
                let _ = tokio::time::timeout(w, notified).await;
            }
            None => notified.await,
        }
        let Some(b) = broker.upgrade() else {
            return;
        };
        let now = clock.now_ms();
        for p in deadlines.take_due(now) {
            if p.is_deleted() {
                continue;
            }
            // (A damaged leader shrinks no ISR and looks again later: core's rule.)
            p.with(|r| r.handle_timeout(now));
            p.drain_effects();
            // A follower whose backoff ended fetches again.
            p.fetch_ready();
        }
        drop(b);
        // A partition due again at once (its timeout work could not run yet) waits for time to
        // pass: this loop never spins at one instant.
        if deadlines.first().is_some_and(|at| at <= now) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_core::batch::{BatchBuilder, Compression};

    fn batch(base: i64, records: usize) -> Batch {
        let mut builder = BatchBuilder::new(Compression::None);
        builder.base_offset = Offset(base);
        for i in 0..records {
            builder = builder.record(0, None, Some(format!("v{i}").as_bytes()));
        }
        builder.build().unwrap()
    }

    const KEY: PartitionKey = (TopicId([7; 16]), 3);

    fn answer_of(entries: Vec<(PartitionAnswer, Vec<Bytes>)>) -> SessionAnswer {
        let head = SessionAnswer {
            session_id: 9,
            ..SessionAnswer::default()
        };
        SessionAnswer::decode(answer_body(&head, entries).concat()).unwrap()
    }

    #[test]
    fn session_answers_round_trip() {
        let batches: Vec<Batch> = (0..3).map(|i| batch(i * 2, 2)).collect();
        let response = FetchResponse {
            leader_epoch: LeaderEpoch(4),
            high_watermark: Offset(2),
            log_start: Offset(0),
            log_end: Offset(6),
            payload: FetchPayload::Records(batches.clone()),
        };
        let (entry, records) = encode_response(KEY, LeaderEpoch(4), response);
        let other = (TopicId([8; 16]), 0);
        let empty = encode_response(
            other,
            LeaderEpoch(1),
            FetchResponse {
                leader_epoch: LeaderEpoch(1),
                high_watermark: Offset(5),
                log_start: Offset(0),
                log_end: Offset(5),
                payload: FetchPayload::Records(Vec::new()),
            },
        );
        let head = SessionAnswer {
            session_id: 9,
            ..SessionAnswer::default()
        };
        let bytes =
            answer_body(&head, vec![(entry.clone(), records.clone()), empty.clone()]).concat();
        // The same bytes as prost's encoding of the whole answer, up to field order.
        let whole = SessionAnswer {
            entries: vec![
                PartitionAnswer {
                    records: records.concat().into(),
                    ..entry
                },
                empty.0,
            ],
            ..head
        };
        let back = SessionAnswer::decode(bytes).unwrap();
        assert_eq!(back, whole);
        assert_eq!(back.session_id, 9);
        let first = back.entries[0].clone();
        assert_eq!(partition_key(&first.topic_id, first.partition), Some(KEY));
        let first = decode_entry(first).unwrap();
        assert_eq!(first.leader_epoch, LeaderEpoch(4));
        assert_eq!(
            (first.high_watermark, first.log_end),
            (Offset(2), Offset(6))
        );
        match first.payload {
            FetchPayload::Records(got) => {
                assert_eq!(got.len(), 3);
                for (a, b) in got.iter().zip(&batches) {
                    assert_eq!(a.bytes(), b.bytes());
                }
            }
            other => panic!("expected records, got {other:?}"),
        }
        let second = back.entries[1].clone();
        assert_eq!(
            partition_key(&second.topic_id, second.partition),
            Some(other)
        );
        assert_eq!(decode_entry(second).unwrap().high_watermark, Offset(5));
    }

    #[test]
    fn a_truncated_batch_from_the_leader_is_refused() {
        let batch = batch(0, 3);
        let (entry, records) = encode_response(
            KEY,
            LeaderEpoch(0),
            FetchResponse {
                leader_epoch: LeaderEpoch(0),
                high_watermark: Offset(0),
                log_start: Offset(0),
                log_end: Offset(3),
                payload: FetchPayload::Records(vec![batch]),
            },
        );
        let records = records.concat();
        let cut = Bytes::copy_from_slice(&records[..records.len() - 1]);
        let back = answer_of(vec![(entry, vec![cut])]);
        assert!(decode_entry(back.entries[0].clone()).is_err());
    }

    #[test]
    fn diverging_and_errors_survive_the_wire() {
        let (entry, _) = encode_response(
            KEY,
            LeaderEpoch(3),
            FetchResponse {
                leader_epoch: LeaderEpoch(3),
                high_watermark: Offset(5),
                log_start: Offset(0),
                log_end: Offset(9),
                payload: FetchPayload::Diverging {
                    epoch: LeaderEpoch(2),
                    end_offset: Offset(7),
                },
            },
        );
        let error = error_answer(KEY, LeaderEpoch(3), code::FENCED_LEADER_EPOCH, "old".into());
        let back = answer_of(vec![(entry, Vec::new()), (error, Vec::new())]);
        match decode_entry(back.entries[0].clone()).unwrap().payload {
            FetchPayload::Diverging { epoch, end_offset } => {
                assert_eq!((epoch, end_offset), (LeaderEpoch(2), Offset(7)))
            }
            other => panic!("expected diverging, got {other:?}"),
        }
        let err = decode_entry(back.entries[1].clone());
        assert!(matches!(
            err,
            Err(AnswerError::Code { code: c, .. }) if c == i32::from(code::FENCED_LEADER_EPOCH)
        ));
        assert_eq!(back.entries[1].fetch_epoch, 3);
    }

    #[test]
    fn a_topic_id_of_the_wrong_size_names_no_partition() {
        assert_eq!(partition_key(&[1; 15], 0), None);
        assert_eq!(partition_key(&[7; 16], 3), Some(KEY));
    }

    /// A wake that arrives before the request it names (the leader serves requests on tasks
    /// of their own) still answers that request, once; it answers no other.
    #[test]
    fn a_wake_answers_the_request_it_names_even_before_it_is_served() {
        let sessions = LeaderSessions::new(1);
        let follower = BrokerId(2);
        sessions.wake(follower, decode_wake(&encode_wake((0, 0))));
        let session = sessions.open(follower);
        assert!(
            !sessions.take_wake(follower, (session.id, 1)),
            "another request"
        );
        assert!(sessions.take_wake(follower, (0, 0)), "the request it named");
        assert!(!sessions.take_wake(follower, (0, 0)), "only once");
        // An empty body names the session's latest request.
        session.inner.lock().unwrap().epoch = 4;
        sessions.wake(follower, decode_wake(&[]));
        assert!(sessions.take_wake(follower, (session.id, 4)));
        assert_eq!(decode_wake(&[0; 13]), None, "a body of the wrong size");
    }
}
