//! A small Kafka client for the simulator's workload, over the kafka-protocol crate: just what
//! Jepsen's Kafka workload needs, with outcomes that map straight into [`crate::checker`].
//!
//! What it owns: one TCP connection per broker (one request in flight on each, so responses
//! match requests in order), the cluster metadata it last saw, and one idempotent producer
//! (producer id, epoch, a sequence number per partition).
//!
//! What always holds:
//! - Only APIs madsim-tokio simulates are used (`TcpStream` connect/read/write, `time::sleep`,
//!   `time::timeout`), and no hash maps or OS randomness: under the simulator a seed replays.
//! - A request that timed out, or whose connection broke after it was written, drops that
//!   connection: a late response can never be taken for the answer to a later request.
//!   [`ConnectionFaults`] lets the simulator break connections that way on purpose; the
//!   operation then retries on a new connection, as after a real break.
//! - [`Client::produce`] sends one record batch per value with acks=all and idempotence, and
//!   retries the *same* batch (same producer id, epoch and sequence) after refreshing metadata,
//!   so a retry of a batch that was in fact appended is answered with the original offset
//!   instead of writing the value twice (Kafka's `ProducerStateManager`; docs/protocol.md, Produce).
//! - [`SendOutcome::Fail`] only when no attempt can have been appended: every attempt either
//!   never left the client or was refused by an error the broker returns before appending.
//!   Anything else that does not end in an acknowledgement is [`SendOutcome::Indefinite`], and
//!   the producer then starts over with a new producer id, so that its next sequence numbers
//!   do not depend on whether the indefinite batch landed.
//!
//! Versions: ApiVersions v3 first on every connection, then for each API the highest version
//! both the client's range ([`CLIENT_VERSIONS`]) and the broker's advertised range contain.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::elect_leaders_request::TopicPartitions;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, ApiKey, ApiVersionsRequest, BrokerId, CreateTopicsRequest,
    ElectLeadersRequest, FetchRequest, FindCoordinatorRequest, GroupId, HeartbeatRequest,
    InitProducerIdRequest, JoinGroupRequest, ListOffsetsRequest, MetadataRequest,
    OffsetCommitRequest, OffsetFetchRequest, ProduceRequest, RequestHeader, RequestKind,
    ResponseHeader, ResponseKind, SyncGroupRequest, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use keel_core::batch::{Batch, BatchBuilder, BatchError, Compression};
use keel_core::types::{Offset, ProducerId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::checker::{Key, SendOutcome, Value};

/// The version range the client can speak, per API: the lowest is the first version that has
/// every field the client sets (Fetch v9: current_leader_epoch; ListOffsets v4: the same;
/// Metadata v4: allow_auto_topic_creation); the highest is keel's (node/src/wire/versions.rs).
pub const CLIENT_VERSIONS: [(ApiKey, i16, i16); 17] = [
    (ApiKey::FindCoordinator, 1, 3),
    (ApiKey::JoinGroup, 5, 5),
    (ApiKey::SyncGroup, 3, 3),
    (ApiKey::Heartbeat, 3, 3),
    (ApiKey::OffsetCommit, 7, 7),
    (ApiKey::OffsetFetch, 7, 7),
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 9, 12),
    (ApiKey::ListOffsets, 4, 7),
    (ApiKey::Metadata, 4, 12),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::AddPartitionsToTxn, 0, 3),
    (ApiKey::EndTxn, 0, 3),
    (ApiKey::ElectLeaders, 1, 2),
    (ApiKey::AlterPartitionReassignments, 0, 1),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
];

/// The versions a client raised to transaction version 2 ([`Client::use_transaction_version_2`])
/// sends, when the broker serves them: EndTxn v5 (the coordinator bumps the epoch and answers
/// it) and Produce v12 (a transactional batch adds its partition to the transaction).
pub const TXN_V2_VERSIONS: [(ApiKey, i16); 2] = [(ApiKey::EndTxn, 5), (ApiKey::Produce, 12)];

/// The ApiVersions version sent first on each connection.
pub const API_VERSIONS_VERSION: i16 = 3;

/// Tunables. Durations are the client's own clock (madsim's under the simulator).
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Where to ask for metadata before any broker is known.
    pub bootstrap: Vec<SocketAddr>,
    pub client_id: String,
    /// The longest the client waits for one response (connecting included).
    pub request_timeout: Duration,
    /// How long the broker may wait for the in-sync replicas on an acks=all produce. Below
    /// `request_timeout`, so that the broker's REQUEST_TIMED_OUT arrives before the client's.
    pub produce_timeout_ms: i32,
    /// Attempts per operation (the first included).
    pub attempts_max: u32,
    /// Pause before each retry.
    pub retry_backoff: Duration,
    /// Fetch: how long the broker may wait for data.
    pub fetch_max_wait_ms: i32,
    /// Fetch: the most bytes one response may carry.
    pub fetch_bytes_max: i32,
    /// Responses larger than this are a protocol violation (and close the connection).
    pub response_bytes_max: usize,
    /// Connection breaks the simulator injects (none unless switched on).
    pub faults: ConnectionFaults,
    /// Seeds the client's own random draws (which requests a [`ConnectionFaults`] breaks).
    pub seed: u64,
}

impl ClientConfig {
    pub fn new(bootstrap: Vec<SocketAddr>) -> ClientConfig {
        ClientConfig {
            bootstrap,
            client_id: "keel-sim".into(),
            request_timeout: Duration::from_secs(5),
            produce_timeout_ms: 3_000,
            attempts_max: 5,
            retry_backoff: Duration::from_millis(100),
            fetch_max_wait_ms: 100,
            fetch_bytes_max: 1 << 20,
            response_bytes_max: 64 << 20,
            faults: ConnectionFaults::default(),
            seed: 0,
        }
    }
}

/// The longest an injected break waits after writing the request: long enough for a broker to
/// have appended a produce (and often answered it), so the break falls before, during or after
/// the broker's work.
pub const BREAK_DELAY_MS_MAX: u64 = 20;

/// A switch the simulator flips while clients run: with probability
/// [`ConnectionFaults::break_probability`] per request, the client writes the request, waits up
/// to [`BREAK_DELAY_MS_MAX`], then drops the connection without reading the answer, as when a
/// connection breaks mid-request. The request may or may not have taken effect; the client
/// sees [`ClientError::NoResponse`] and retries on a new connection. Clones share the switch.
#[derive(Clone, Debug, Default)]
pub struct ConnectionFaults {
    /// The probability, as `f64` bits (0.0 is all zero bits: off).
    break_probability_bits: Arc<AtomicU64>,
    /// Connections broken so far.
    breaks: Arc<AtomicU64>,
}

impl ConnectionFaults {
    /// Sets the probability (0 to 1) that a request's connection breaks; 0 switches it off.
    pub fn set_break_probability(&self, p: f64) {
        let p = if p.is_finite() {
            p.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.break_probability_bits
            .store(p.to_bits(), Ordering::SeqCst);
    }

    pub fn break_probability(&self) -> f64 {
        f64::from_bits(self.break_probability_bits.load(Ordering::SeqCst))
    }

    /// How many connections were broken so far, by every client sharing the switch.
    pub fn breaks(&self) -> u64 {
        self.breaks.load(Ordering::SeqCst)
    }
}

/// Why an operation did not succeed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientError {
    /// No connection to `addr` could be set up; nothing of the request was sent.
    Connect { addr: String, reason: String },
    /// The request may have reached the broker, but no answer came (timeout, connection
    /// lost): its effect is unknown.
    NoResponse { addr: String, reason: String },
    /// The broker answered with a Kafka error.
    Kafka {
        error: ResponseError,
        message: Option<String>,
    },
    /// The broker's answer broke the protocol (undecodable, wrong correlation id, a partition
    /// missing from the response, a corrupt record batch).
    Protocol(String),
    /// The broker does not advertise a version of `api` the client can speak.
    UnsupportedVersion { api: ApiKey },
    /// No live broker is known to lead the partition, even after refreshing metadata.
    NoLeader(Key),
    /// A record whose value is not a decimal u64: not something this workload wrote.
    BadRecord {
        key: Key,
        offset: Offset,
        reason: String,
    },
    /// [`Consumer::poll`] of a key that is not assigned.
    NotAssigned(Key),
    /// A fetched batch's CRC does not match: the broker served damaged bytes.
    Corrupt { key: Key, reason: String },
}

impl ClientError {
    fn kafka(code: i16, message: Option<&StrBytes>) -> Option<ClientError> {
        ResponseError::try_from_code(code).map(|error| ClientError::Kafka {
            error,
            message: message.map(|m| m.to_string()),
        })
    }

    /// Whether trying again (after refreshing metadata) may succeed.
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Connect { .. }
            | ClientError::NoResponse { .. }
            | ClientError::NoLeader(_) => true,
            ClientError::Kafka { error, .. } => error.is_retriable(),
            ClientError::Protocol(_)
            | ClientError::UnsupportedVersion { .. }
            | ClientError::BadRecord { .. }
            | ClientError::Corrupt { .. }
            | ClientError::NotAssigned(_) => false,
        }
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Connect { addr, reason } => {
                write!(f, "cannot connect to {addr}: {reason}")
            }
            ClientError::NoResponse { addr, reason } => {
                write!(f, "no response from {addr}: {reason}")
            }
            ClientError::Kafka {
                error,
                message: Some(m),
            } => write!(f, "{error:?}: {m}"),
            ClientError::Kafka {
                error,
                message: None,
            } => write!(f, "{error:?}"),
            ClientError::Protocol(m) => write!(f, "protocol violation: {m}"),
            ClientError::UnsupportedVersion { api } => {
                write!(
                    f,
                    "the broker supports no version of {api:?} the client speaks"
                )
            }
            ClientError::NoLeader(key) => write!(f, "no leader known for {key}"),
            ClientError::BadRecord {
                key,
                offset,
                reason,
            } => write!(f, "{key} offset {offset}: {reason}"),
            ClientError::NotAssigned(key) => write!(f, "{key} is not assigned"),
            ClientError::Corrupt { key, reason } => write!(f, "{key}: a damaged batch: {reason}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// What a produce error says about the batch it answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProduceErrorEffect {
    /// Refused before appending; another attempt may succeed.
    NotAppendedRetriable,
    /// Refused before appending; trying again cannot help.
    NotAppendedFatal,
    /// May have been appended (and may still be committed or truncated); retriable.
    MaybeAppended,
}

/// Classifies a Produce partition error, by where keel (and Kafka) return it: before the
/// append (validation, leadership check, NOT_ENOUGH_REPLICAS) or after it (waiting for the
/// in-sync replicas: REQUEST_TIMED_OUT, NOT_ENOUGH_REPLICAS_AFTER_APPEND, and
/// NOT_LEADER_OR_FOLLOWER when leadership moved before the write was committed; keel's
/// node/src/broker/handler.rs, Kafka's DelayedProduce). Unknown errors count as maybe appended.
pub fn produce_error_effect(error: ResponseError) -> ProduceErrorEffect {
    use ProduceErrorEffect::*;
    match error {
        ResponseError::UnknownTopicOrPartition
        | ResponseError::LeaderNotAvailable
        | ResponseError::NotEnoughReplicas
        | ResponseError::BrokerNotAvailable
        | ResponseError::ReplicaNotAvailable => NotAppendedRetriable,
        ResponseError::CorruptMessage
        | ResponseError::MessageTooLarge
        | ResponseError::RecordListTooLarge
        | ResponseError::InvalidRecord
        | ResponseError::InvalidRequiredAcks
        | ResponseError::InvalidTimestamp
        | ResponseError::InvalidTopicException
        | ResponseError::UnsupportedForMessageFormat
        | ResponseError::UnsupportedCompressionType
        | ResponseError::UnsupportedVersion
        | ResponseError::InvalidRequest
        | ResponseError::OutOfOrderSequenceNumber
        | ResponseError::InvalidProducerEpoch
        | ResponseError::UnknownProducerId
        | ResponseError::InvalidProducerIdMapping
        | ResponseError::TopicAuthorizationFailed
        | ResponseError::ClusterAuthorizationFailed
        | ResponseError::TransactionalIdAuthorizationFailed => NotAppendedFatal,
        _ => MaybeAppended,
    }
}

/// Where a broker listens.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl From<SocketAddr> for Endpoint {
    fn from(addr: SocketAddr) -> Endpoint {
        Endpoint {
            host: addr.ip().to_string(),
            port: addr.port(),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// One partition as the last Metadata response described it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionMetadata {
    /// `None` while the partition has no leader.
    pub leader: Option<i32>,
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
}

/// The cluster as the client last saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterMetadata {
    pub brokers: BTreeMap<i32, Endpoint>,
    pub controller: Option<i32>,
    pub partitions: BTreeMap<Key, PartitionMetadata>,
}

/// A topic to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i16,
    /// Topic configs, e.g. `("min.insync.replicas", "2")`.
    pub configs: Vec<(String, String)>,
}

/// What [`Client::create_topic`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TopicCreated {
    Created,
    /// TOPIC_ALREADY_EXISTS (possibly created by an earlier attempt of the same call).
    AlreadyExisted,
}

/// The records a fetch returned from the fetch offset on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fetched {
    pub records: Vec<(Offset, Value)>,
    pub high_watermark: Offset,
}

/// ListOffsets' special timestamps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffsetSpec {
    /// The log start offset (timestamp -2).
    Earliest,
    /// The end offset a consumer can read to: the high watermark (timestamp -1).
    Latest,
}

/// How one produce attempt failed.
enum Attempt {
    /// Before a request to the leader was attempted (finding the leader failed).
    NotSent(ClientError),
    /// Sending to the leader failed, or it answered with an error.
    Sent(ClientError),
}

/// The idempotent producer's identity and next sequence per partition.
#[derive(Clone, Debug)]
struct Producer {
    id: ProducerId,
    epoch: i16,
    sequences: BTreeMap<Key, i32>,
}

/// One broker connection; one request in flight at a time.
struct Connection {
    stream: TcpStream,
    /// api key -> (min, max) the broker advertises.
    versions: BTreeMap<i16, (i16, i16)>,
}

impl Connection {
    /// The version to use for `api`.
    fn version(&self, api: ApiKey) -> Result<i16, ClientError> {
        negotiate_version(api, self.versions.get(&(api as i16)).copied())
    }

    /// Whether the broker advertises `version` of `api`.
    fn serves(&self, api: ApiKey, version: i16) -> bool {
        self.versions
            .get(&(api as i16))
            .is_some_and(|&(lo, hi)| (lo..=hi).contains(&version))
    }

    /// Writes one request and reads its response; an error says why, and the request may
    /// have been sent.
    async fn round_trip(
        &mut self,
        api: ApiKey,
        version: i16,
        correlation_id: i32,
        client_id: &str,
        body: &RequestKind,
        response_bytes_max: usize,
    ) -> Result<ResponseKind, String> {
        self.send(api, version, correlation_id, client_id, body)
            .await?;
        self.receive(api, version, correlation_id, response_bytes_max)
            .await
    }

    /// Writes one request; on an error it may have been sent in part or whole.
    async fn send(
        &mut self,
        api: ApiKey,
        version: i16,
        correlation_id: i32,
        client_id: &str,
        body: &RequestKind,
    ) -> Result<(), String> {
        let frame = encode_request(api, version, correlation_id, client_id, body)?;
        self.stream
            .write_all(&frame)
            .await
            .map_err(|e| format!("write: {e}"))?;
        // madsim sends on flush.
        self.stream.flush().await.map_err(|e| format!("flush: {e}"))
    }

    /// Reads the response to the request [`Connection::send`] wrote.
    async fn receive(
        &mut self,
        api: ApiKey,
        version: i16,
        correlation_id: i32,
        response_bytes_max: usize,
    ) -> Result<ResponseKind, String> {
        let size = self
            .stream
            .read_i32()
            .await
            .map_err(|e| format!("read: {e}"))?;
        let size = usize::try_from(size)
            .ok()
            .filter(|s| *s <= response_bytes_max)
            .ok_or_else(|| format!("response size {size} out of bounds"))?;
        let mut buf = vec![0; size];
        self.stream
            .read_exact(&mut buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        let mut buf = Bytes::from(buf);
        let header = ResponseHeader::decode(&mut buf, api.response_header_version(version))
            .map_err(|e| format!("response header: {e}"))?;
        if header.correlation_id != correlation_id {
            return Err(format!(
                "correlation id {} answers request {correlation_id}",
                header.correlation_id
            ));
        }
        let body = ResponseKind::decode(api, &mut buf, version)
            .map_err(|e| format!("{api:?} v{version} response: {e}"))?;
        if buf.has_remaining() {
            return Err(format!(
                "{} bytes after the {api:?} response",
                buf.remaining()
            ));
        }
        Ok(body)
    }
}

/// Runs a read-only operation (an expression on `$client`) up to `attempts_max` times while
/// it fails retriably, backing off and refreshing metadata between attempts.
macro_rules! retrying {
    ($client:ident, $once:expr) => {{
        let mut last = None;
        for attempt in 0..$client.config.attempts_max.max(1) {
            if attempt > 0 {
                $client.backoff().await;
            }
            match $once.await {
                Ok(t) => return Ok(t),
                Err(e) if e.is_retriable() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("at least one attempt"))
    }};
}

/// The highest version of `api` in both the client's range ([`CLIENT_VERSIONS`]) and the
/// broker's advertised `(min, max)`.
pub fn negotiate_version(api: ApiKey, broker: Option<(i16, i16)>) -> Result<i16, ClientError> {
    let unsupported = ClientError::UnsupportedVersion { api };
    let (_, lo, hi) = CLIENT_VERSIONS
        .iter()
        .find(|(k, _, _)| *k == api)
        .copied()
        .ok_or(unsupported.clone())?;
    let (broker_lo, broker_hi) = broker.ok_or(unsupported.clone())?;
    let version = hi.min(broker_hi);
    if version < lo.max(broker_lo) {
        return Err(unsupported);
    }
    Ok(version)
}

/// A request frame, size prefix included.
fn encode_request(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    client_id: &str,
    body: &RequestKind,
) -> Result<Bytes, String> {
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_string(client_id.to_owned())))
        .encode(&mut buf, api.request_header_version(version))
        .map_err(|e| format!("encode {api:?} header: {e}"))?;
    body.encode(&mut buf, version)
        .map_err(|e| format!("encode {api:?} v{version}: {e}"))?;
    let size = i32::try_from(buf.len() - 4).map_err(|_| "request too large".to_string())?;
    buf[..4].copy_from_slice(&size.to_be_bytes());
    Ok(buf.freeze())
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Decodes a fetched records section: every record at or after `from`, skipping control
/// batches, as (offset, value). A trailing partial batch (Kafka may cut the last one) is
/// ignored.
pub fn decode_records(
    key: &Key,
    records: &Bytes,
    from: Offset,
) -> Result<Vec<(Offset, Value)>, ClientError> {
    let mut rest = records.clone();
    let mut out = Vec::new();
    while let Some(batch) = Batch::parse_prefix(&rest).map_err(|e| match e {
        BatchError::CrcMismatch { .. } => ClientError::Corrupt {
            key: key.clone(),
            reason: e.to_string(),
        },
        e => ClientError::Protocol(format!("{key}: fetched batch: {e}")),
    })? {
        rest = rest.slice(batch.size()..);
        if batch.is_control() {
            continue;
        }
        let decoded = batch
            .records()
            .map_err(|e| ClientError::Protocol(format!("{key}: fetched records: {e}")))?;
        for record in decoded {
            if record.offset < from {
                continue;
            }
            let value = record
                .value
                .as_deref()
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| ClientError::BadRecord {
                    key: key.clone(),
                    offset: record.offset,
                    reason: format!("value {:?} is not a decimal u64", record.value),
                })?;
            out.push((record.offset, Value(value)));
        }
    }
    Ok(out)
}

/// A record of a compacted topic as a fetch returned it: offset, record key, value (`None`:
/// a tombstone).
pub type KeyedRecord = (Offset, Vec<u8>, Option<Value>);

/// What [`Client::fetch_keyed`] returned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyedFetched {
    pub records: Vec<KeyedRecord>,
    /// The offset after the last whole batch returned (the fetch offset if none): where the
    /// next fetch starts, past empty batches too.
    pub next: Offset,
    pub high_watermark: Offset,
}

/// [`decode_records`] for a compacted topic: every record at or after `from` with its key, a
/// null value as `None`; and the offset after the last whole batch.
pub fn decode_keyed_records(
    key: &Key,
    records: &Bytes,
    from: Offset,
) -> Result<(Vec<KeyedRecord>, Offset), ClientError> {
    let mut rest = records.clone();
    let mut out = Vec::new();
    let mut next = from;
    while let Some(batch) = Batch::parse_prefix(&rest).map_err(|e| match e {
        BatchError::CrcMismatch { .. } => ClientError::Corrupt {
            key: key.clone(),
            reason: e.to_string(),
        },
        e => ClientError::Protocol(format!("{key}: fetched batch: {e}")),
    })? {
        rest = rest.slice(batch.size()..);
        next = next.max(batch.next_offset());
        if batch.is_control() {
            continue;
        }
        let decoded = batch
            .records()
            .map_err(|e| ClientError::Protocol(format!("{key}: fetched records: {e}")))?;
        for record in decoded {
            if record.offset < from {
                continue;
            }
            let value = match record.value.as_deref() {
                None => None,
                Some(v) => Some(
                    std::str::from_utf8(v)
                        .ok()
                        .and_then(|v| v.parse::<u64>().ok())
                        .map(Value)
                        .ok_or_else(|| ClientError::BadRecord {
                            key: key.clone(),
                            offset: record.offset,
                            reason: format!("value {:?} is not a decimal u64", record.value),
                        })?,
                ),
            };
            let record_key = record.key.as_deref().unwrap_or_default().to_vec();
            out.push((record.offset, record_key, value));
        }
    }
    Ok((out, next))
}

/// How a record carries a [`Value`]: its decimal digits (readable with any Kafka tool).
pub fn encode_value(value: Value) -> Vec<u8> {
    value.0.to_string().into_bytes()
}

/// A Kafka client: metadata, connections and one idempotent producer. Each method runs one
/// operation to completion; run one per task (a process in the checker's sense).
pub struct Client {
    config: ClientConfig,
    connections: BTreeMap<Endpoint, Connection>,
    metadata: ClusterMetadata,
    /// Topics whose metadata every refresh asks for.
    topics: BTreeSet<String>,
    producer: Option<Producer>,
    correlation_id: i32,
    /// Rotates the broker asked first for metadata, so a dead broker is not always first.
    rotation: usize,
    /// Draws which requests [`ConnectionFaults`] breaks, from [`ClientConfig::seed`].
    rng: StdRng,
    /// Speaks transaction version 2 ([`TXN_V2_VERSIONS`]).
    transaction_version_2: bool,
}

impl Client {
    /// A client that connects lazily, on its first operation.
    pub fn new(config: ClientConfig) -> Client {
        Client {
            rng: StdRng::seed_from_u64(config.seed),
            config,
            connections: BTreeMap::new(),
            metadata: ClusterMetadata::default(),
            topics: BTreeSet::new(),
            producer: None,
            correlation_id: 0,
            rotation: 0,
            transaction_version_2: false,
        }
    }

    /// From now on sends EndTxn and Produce at transaction version 2's versions
    /// ([`TXN_V2_VERSIONS`]) to brokers that serve them, as a Java producer does once the
    /// cluster finalizes `transaction.version` 2.
    pub fn use_transaction_version_2(&mut self) {
        self.transaction_version_2 = true;
    }

    /// Whether the client speaks transaction version 2.
    pub fn transaction_version_2(&self) -> bool {
        self.transaction_version_2
    }

    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The metadata last seen.
    pub fn metadata(&self) -> &ClusterMetadata {
        &self.metadata
    }

    /// The current producer id and epoch, if one was obtained and not given up.
    pub fn producer_id(&self) -> Option<(ProducerId, i16)> {
        self.producer.as_ref().map(|p| (p.id, p.epoch))
    }

    /// Drops every connection (the next request reconnects); keeps metadata and producer.
    pub fn disconnect(&mut self) {
        self.connections.clear();
    }

    /// Connects and negotiates versions. Takes the config, not `&self`: a `&Client` held
    /// across an await would make the future `!Send` (madsim's streams are not `Sync`).
    async fn connect(
        config: &ClientConfig,
        endpoint: &Endpoint,
    ) -> Result<Connection, ClientError> {
        let addr = endpoint.to_string();
        let connect = |reason: String| ClientError::Connect {
            addr: addr.clone(),
            reason,
        };
        let stream = tokio::time::timeout(
            config.request_timeout,
            TcpStream::connect((endpoint.host.clone(), endpoint.port)),
        )
        .await
        .map_err(|_| connect("timed out".into()))?
        .map_err(|e| connect(e.to_string()))?;
        let mut connection = Connection {
            stream,
            versions: BTreeMap::new(),
        };
        let mut request = ApiVersionsRequest::default();
        request.client_software_name = str_bytes("keel-sim");
        request.client_software_version = str_bytes(env!("CARGO_PKG_VERSION"));
        // Correlation id 0 is never used by later requests on the connection (they count
        // from 1), and ApiVersions answers with response header v0 whatever the version.
        let response = tokio::time::timeout(
            config.request_timeout,
            connection.round_trip(
                ApiKey::ApiVersions,
                API_VERSIONS_VERSION,
                0,
                &config.client_id,
                &RequestKind::ApiVersions(request),
                config.response_bytes_max,
            ),
        )
        .await
        .map_err(|_| connect("ApiVersions timed out".into()))?
        .map_err(connect)?;
        let ResponseKind::ApiVersions(response) = response else {
            return Err(connect("not an ApiVersions response".into()));
        };
        if let Some(e) = ClientError::kafka(response.error_code, None) {
            return Err(connect(format!("ApiVersions: {e}")));
        }
        connection.versions = response
            .api_keys
            .iter()
            .map(|v| (v.api_key, (v.min_version, v.max_version)))
            .collect();
        Ok(connection)
    }

    /// One request to `endpoint` and its response. A connection is set up first if needed;
    /// `Connect` and `UnsupportedVersion` errors mean nothing was sent.
    async fn call(
        &mut self,
        endpoint: &Endpoint,
        api: ApiKey,
        body: RequestKind,
    ) -> Result<ResponseKind, ClientError> {
        if !self.connections.contains_key(endpoint) {
            let connection = Self::connect(&self.config, endpoint).await?;
            self.connections.insert(endpoint.clone(), connection);
        }
        self.correlation_id = self.correlation_id.wrapping_add(1).max(1);
        let correlation_id = self.correlation_id;
        let connection = self
            .connections
            .get_mut(endpoint)
            .expect("connected just above");
        let mut version = connection.version(api)?;
        if self.transaction_version_2 {
            let v2 = TXN_V2_VERSIONS.iter().find(|(k, _)| *k == api);
            if let Some(&(_, v)) = v2.filter(|(_, v)| connection.serves(api, *v)) {
                version = v;
            }
        }
        // Drawn only while breaks are on, so that they change nothing else.
        let p = self.config.faults.break_probability();
        let break_after_ms =
            (p > 0.0 && self.rng.gen_bool(p)).then(|| self.rng.gen_range(0..=BREAK_DELAY_MS_MAX));
        let (client_id, response_bytes_max, faults) = (
            &self.config.client_id,
            self.config.response_bytes_max,
            &self.config.faults,
        );
        let result = tokio::time::timeout(self.config.request_timeout, async {
            match break_after_ms {
                None => {
                    connection
                        .round_trip(
                            api,
                            version,
                            correlation_id,
                            client_id,
                            &body,
                            response_bytes_max,
                        )
                        .await
                }
                Some(ms) => {
                    connection
                        .send(api, version, correlation_id, client_id, &body)
                        .await?;
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    faults.breaks.fetch_add(1, Ordering::SeqCst);
                    Err(format!(
                        "connection broken {ms} ms after the request was written (injected)"
                    ))
                }
            }
        })
        .await;
        let reason = match result {
            Ok(Ok(response)) => return Ok(response),
            Ok(Err(reason)) => reason,
            Err(_) => format!("{api:?} timed out after {:?}", self.config.request_timeout),
        };
        // The stream may hold a late response now: never reuse it.
        self.connections.remove(endpoint);
        Err(ClientError::NoResponse {
            addr: endpoint.to_string(),
            reason,
        })
    }

    /// Brokers to try for requests any broker can answer: known brokers (rotating), then the
    /// bootstrap addresses.
    fn any_broker_order(&mut self) -> Vec<Endpoint> {
        let mut known: Vec<Endpoint> = self.metadata.brokers.values().cloned().collect();
        if !known.is_empty() {
            let n = self.rotation % known.len();
            known.rotate_left(n);
        }
        self.rotation = self.rotation.wrapping_add(1);
        for addr in &self.config.bootstrap {
            let e = Endpoint::from(*addr);
            if !known.contains(&e) {
                known.push(e);
            }
        }
        known
    }

    /// Sends a request any broker can answer to the first broker that answers.
    async fn call_any(
        &mut self,
        api: ApiKey,
        body: RequestKind,
    ) -> Result<ResponseKind, ClientError> {
        let mut last = None;
        for endpoint in self.any_broker_order() {
            match self.call(&endpoint, api, body.clone()).await {
                Ok(response) => return Ok(response),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(ClientError::Connect {
            addr: "(no bootstrap address)".into(),
            reason: "nothing to connect to".into(),
        }))
    }

    async fn backoff(&mut self) {
        tokio::time::sleep(self.config.retry_backoff).await;
        // Best effort: the next attempt reports what still fails.
        let _ = self.refresh_metadata().await;
    }

    /// Refreshes brokers, the controller and the partitions of every topic the client has
    /// used (Metadata, from any broker).
    pub async fn refresh_metadata(&mut self) -> Result<(), ClientError> {
        let mut request = MetadataRequest::default();
        request.topics = Some(
            self.topics
                .iter()
                .map(|t| MetadataRequestTopic::default().with_name(Some(TopicName(str_bytes(t)))))
                .collect(),
        );
        request.allow_auto_topic_creation = false;
        let ResponseKind::Metadata(response) = self
            .call_any(ApiKey::Metadata, RequestKind::Metadata(request))
            .await?
        else {
            return Err(ClientError::Protocol("not a Metadata response".into()));
        };
        let mut metadata = ClusterMetadata {
            brokers: BTreeMap::new(),
            controller: (response.controller_id.0 >= 0).then_some(response.controller_id.0),
            partitions: BTreeMap::new(),
        };
        for b in &response.brokers {
            if let Ok(port) = u16::try_from(b.port) {
                metadata.brokers.insert(
                    b.node_id.0,
                    Endpoint {
                        host: b.host.to_string(),
                        port,
                    },
                );
            }
        }
        for t in &response.topics {
            let Some(name) = &t.name else { continue };
            if t.error_code != 0 {
                continue;
            }
            for p in &t.partitions {
                metadata.partitions.insert(
                    Key::new(name.0.to_string(), p.partition_index),
                    PartitionMetadata {
                        leader: (p.leader_id.0 >= 0 && p.error_code == 0).then_some(p.leader_id.0),
                        leader_epoch: p.leader_epoch,
                        replicas: p.replica_nodes.iter().map(|b| b.0).collect(),
                        isr: p.isr_nodes.iter().map(|b| b.0).collect(),
                    },
                );
            }
        }
        self.metadata = metadata;
        Ok(())
    }

    /// The leader of `key` and its epoch: from the metadata, refreshed once if unknown.
    async fn leader(&mut self, key: &Key) -> Result<(Endpoint, i32), ClientError> {
        if self.topics.insert(key.topic.clone()) || !self.has_leader(key) {
            self.refresh_metadata().await?;
        }
        let p = self
            .metadata
            .partitions
            .get(key)
            .ok_or_else(|| ClientError::NoLeader(key.clone()))?;
        let endpoint = p
            .leader
            .and_then(|id| self.metadata.brokers.get(&id))
            .ok_or_else(|| ClientError::NoLeader(key.clone()))?;
        Ok((endpoint.clone(), p.leader_epoch))
    }

    fn has_leader(&self, key: &Key) -> bool {
        self.metadata
            .partitions
            .get(key)
            .and_then(|p| p.leader)
            .is_some_and(|id| self.metadata.brokers.contains_key(&id))
    }

    /// Creates a topic (CreateTopics, to the controller if known, else any broker), retrying
    /// retriable errors. TOPIC_ALREADY_EXISTS is `Ok(AlreadyExisted)`.
    pub async fn create_topic(&mut self, spec: &TopicSpec) -> Result<TopicCreated, ClientError> {
        self.topics.insert(spec.name.clone());
        let mut request = CreateTopicsRequest::default();
        request.timeout_ms = self.config.produce_timeout_ms;
        request.topics = vec![CreatableTopic::default()
            .with_name(TopicName(str_bytes(&spec.name)))
            .with_num_partitions(spec.partitions)
            .with_replication_factor(spec.replication_factor)
            .with_configs(
                spec.configs
                    .iter()
                    .map(|(k, v)| {
                        CreatableTopicConfig::default()
                            .with_name(str_bytes(k))
                            .with_value(Some(str_bytes(v)))
                    })
                    .collect(),
            )];
        let mut last = None;
        for attempt in 0..self.config.attempts_max.max(1) {
            if attempt > 0 {
                self.backoff().await;
            }
            let controller = self
                .metadata
                .controller
                .and_then(|id| self.metadata.brokers.get(&id).cloned());
            let body = RequestKind::CreateTopics(request.clone());
            let response = match controller {
                Some(endpoint) => self.call(&endpoint, ApiKey::CreateTopics, body).await,
                None => self.call_any(ApiKey::CreateTopics, body).await,
            };
            let result = match response {
                Ok(ResponseKind::CreateTopics(r)) => match r.topics.first() {
                    None => Err(ClientError::Protocol(
                        "CreateTopics: no topic result".into(),
                    )),
                    Some(t) => match ClientError::kafka(t.error_code, t.error_message.as_ref()) {
                        None => Ok(TopicCreated::Created),
                        Some(ClientError::Kafka {
                            error: ResponseError::TopicAlreadyExists,
                            ..
                        }) => Ok(TopicCreated::AlreadyExisted),
                        Some(e) => Err(e),
                    },
                },
                Ok(_) => Err(ClientError::Protocol("not a CreateTopics response".into())),
                Err(e) => Err(e),
            };
            match result {
                Ok(created) => return Ok(created),
                Err(e) if e.is_retriable() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("at least one attempt"))
    }

    /// Refreshes metadata until every partition of `topic` up to `partitions` has a leader
    /// (or the attempts run out).
    pub async fn await_leaders(&mut self, topic: &str, partitions: i32) -> Result<(), ClientError> {
        self.topics.insert(topic.to_owned());
        let mut last = None;
        for attempt in 0..self.config.attempts_max.max(1) * 4 {
            if attempt > 0 {
                tokio::time::sleep(self.config.retry_backoff).await;
            }
            match self.refresh_metadata().await {
                Ok(()) => {
                    let missing = (0..partitions).find(|p| !self.has_leader(&Key::new(topic, *p)));
                    match missing {
                        None => return Ok(()),
                        Some(p) => last = Some(ClientError::NoLeader(Key::new(topic, p))),
                    }
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("at least one attempt"))
    }

    /// Obtains a new idempotent producer id and epoch (InitProducerId without a
    /// transactional id, from any broker); sequences restart at 0.
    pub async fn init_producer(&mut self) -> Result<(ProducerId, i16), ClientError> {
        let mut request = InitProducerIdRequest::default();
        request.transactional_id = None;
        request.transaction_timeout_ms = -1;
        let mut last = None;
        for attempt in 0..self.config.attempts_max.max(1) {
            if attempt > 0 {
                self.backoff().await;
            }
            let result = match self
                .call_any(
                    ApiKey::InitProducerId,
                    RequestKind::InitProducerId(request.clone()),
                )
                .await
            {
                Ok(ResponseKind::InitProducerId(r)) => match ClientError::kafka(r.error_code, None)
                {
                    None => Ok((ProducerId(r.producer_id.0), r.producer_epoch)),
                    Some(e) => Err(e),
                },
                Ok(_) => Err(ClientError::Protocol(
                    "not an InitProducerId response".into(),
                )),
                Err(e) => Err(e),
            };
            match result {
                Ok((id, epoch)) => {
                    self.producer = Some(Producer {
                        id,
                        epoch,
                        sequences: BTreeMap::new(),
                    });
                    return Ok((id, epoch));
                }
                Err(e) if e.is_retriable() => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("at least one attempt"))
    }

    /// Sends `value` to `key` as one idempotent record batch with acks=all, retrying the same
    /// batch after refreshing metadata, and says what came of it (see the module doc for when
    /// the outcome is `Fail` and when `Indefinite`).
    pub async fn produce(&mut self, key: &Key, value: Value) -> SendOutcome {
        self.produce_record(key, None, Some(value)).await
    }

    /// [`Client::produce`] of one record with a record key (a compacted topic's): `value`
    /// `None` is a tombstone.
    pub async fn produce_keyed(
        &mut self,
        key: &Key,
        record_key: &[u8],
        value: Option<Value>,
    ) -> SendOutcome {
        self.produce_record(key, Some(record_key), value).await
    }

    async fn produce_record(
        &mut self,
        key: &Key,
        record_key: Option<&[u8]>,
        value: Option<Value>,
    ) -> SendOutcome {
        if self.producer.is_none() {
            if let Err(e) = self.init_producer().await {
                return SendOutcome::Fail {
                    reason: format!("no producer id: {e}"),
                };
            }
        }
        let producer = self.producer.as_ref().expect("initialized above");
        let sequence = producer.sequences.get(key).copied().unwrap_or(0);
        let batch = match BatchBuilder::new(Compression::None)
            .record(now_ms(), record_key, value.map(encode_value).as_deref())
            .idempotent(producer.id, producer.epoch, sequence)
            .build()
        {
            Ok(batch) => batch.into_bytes(),
            Err(e) => {
                return SendOutcome::Fail {
                    reason: format!("cannot build the batch: {e}"),
                }
            }
        };
        let mut request = ProduceRequest::default();
        request.acks = -1;
        request.timeout_ms = self.config.produce_timeout_ms;
        request.topic_data = vec![TopicProduceData::default()
            .with_name(TopicName(str_bytes(&key.topic)))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(key.partition)
                .with_records(Some(batch))])];

        let mut maybe_appended = false;
        let mut reasons = Vec::new();
        let mut producer_fenced = false;
        for attempt in 0..self.config.attempts_max.max(1) {
            if attempt > 0 {
                self.backoff().await;
            }
            let (effect, e) = match self.produce_once(key, &request).await {
                Ok(offset) => {
                    let producer = self.producer.as_mut().expect("still set");
                    // Kafka's sequences wrap from i32::MAX to 0.
                    let next = sequence.checked_add(1).unwrap_or(0);
                    producer.sequences.insert(key.clone(), next);
                    return SendOutcome::Ok { offset };
                }
                // No leader known, or the metadata refresh before the request failed.
                Err(Attempt::NotSent(e)) => (ProduceErrorEffect::NotAppendedRetriable, e),
                Err(Attempt::Sent(e)) => {
                    let effect = match &e {
                        // Failed before the request left the client.
                        ClientError::Connect { .. } | ClientError::UnsupportedVersion { .. } => {
                            ProduceErrorEffect::NotAppendedRetriable
                        }
                        ClientError::Kafka { error, .. } => {
                            producer_fenced |= matches!(
                                error,
                                ResponseError::OutOfOrderSequenceNumber
                                    | ResponseError::InvalidProducerEpoch
                                    | ResponseError::UnknownProducerId
                            );
                            produce_error_effect(*error)
                        }
                        _ => ProduceErrorEffect::MaybeAppended,
                    };
                    (effect, e)
                }
            };
            reasons.push(format!("attempt {}: {e}", attempt + 1));
            match effect {
                ProduceErrorEffect::NotAppendedRetriable => {}
                ProduceErrorEffect::MaybeAppended => maybe_appended = true,
                ProduceErrorEffect::NotAppendedFatal => break,
            }
        }
        if maybe_appended || producer_fenced {
            // The broker's next expected sequence is unknown now: start over.
            self.producer = None;
        }
        let reason = reasons.join("; ");
        if maybe_appended {
            SendOutcome::Indefinite { reason }
        } else {
            SendOutcome::Fail { reason }
        }
    }

    /// One produce attempt to the current leader: the acknowledged base offset.
    async fn produce_once(
        &mut self,
        key: &Key,
        request: &ProduceRequest,
    ) -> Result<Offset, Attempt> {
        let (leader, _) = self.leader(key).await.map_err(Attempt::NotSent)?;
        self.produce_to(&leader, key, request)
            .await
            .map_err(Attempt::Sent)
    }

    /// Sends the produce request to `leader`. Errors may or may not mean it was sent: see
    /// [`Client::call`].
    async fn produce_to(
        &mut self,
        leader: &Endpoint,
        key: &Key,
        request: &ProduceRequest,
    ) -> Result<Offset, ClientError> {
        let response = self
            .call(
                leader,
                ApiKey::Produce,
                RequestKind::Produce(request.clone()),
            )
            .await?;
        let ResponseKind::Produce(response) = response else {
            return Err(ClientError::Protocol("not a Produce response".into()));
        };
        let partition = response
            .responses
            .iter()
            .filter(|t| t.name.0.as_str() == key.topic)
            .flat_map(|t| t.partition_responses.iter())
            .find(|p| p.index == key.partition)
            .ok_or_else(|| ClientError::Protocol(format!("Produce: no result for {key}")))?;
        match ClientError::kafka(partition.error_code, partition.error_message.as_ref()) {
            Some(e) => Err(e),
            None if partition.base_offset < 0 => Err(ClientError::Protocol(format!(
                "Produce: {key} acknowledged at offset {}",
                partition.base_offset
            ))),
            None => Ok(Offset(partition.base_offset)),
        }
    }

    /// Fetches `key` from its leader from `offset` on, retrying retriable errors.
    pub async fn fetch(&mut self, key: &Key, offset: Offset) -> Result<Fetched, ClientError> {
        retrying!(self, self.fetch_once(key, offset))
    }

    async fn fetch_once(&mut self, key: &Key, offset: Offset) -> Result<Fetched, ClientError> {
        let (leader, epoch) = self.leader(key).await?;
        let mut request = FetchRequest::default();
        request.replica_id = BrokerId(-1);
        request.max_wait_ms = self.config.fetch_max_wait_ms;
        request.min_bytes = 1;
        request.max_bytes = self.config.fetch_bytes_max;
        request.isolation_level = 0;
        request.topics = vec![FetchTopic::default()
            .with_topic(TopicName(str_bytes(&key.topic)))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(key.partition)
                .with_current_leader_epoch(epoch)
                .with_fetch_offset(offset.0)
                .with_partition_max_bytes(self.config.fetch_bytes_max)])];
        let response = self
            .call(&leader, ApiKey::Fetch, RequestKind::Fetch(request))
            .await?;
        let ResponseKind::Fetch(response) = response else {
            return Err(ClientError::Protocol("not a Fetch response".into()));
        };
        if let Some(e) = ClientError::kafka(response.error_code, None) {
            return Err(e);
        }
        let partition = response
            .responses
            .iter()
            .filter(|t| t.topic.0.as_str() == key.topic)
            .flat_map(|t| t.partitions.iter())
            .find(|p| p.partition_index == key.partition)
            .ok_or_else(|| ClientError::Protocol(format!("Fetch: no result for {key}")))?;
        if let Some(e) = ClientError::kafka(partition.error_code, None) {
            return Err(e);
        }
        let records = match &partition.records {
            Some(records) => decode_records(key, records, offset)?,
            None => Vec::new(),
        };
        Ok(Fetched {
            records,
            high_watermark: Offset(partition.high_watermark),
        })
    }

    /// Fetches `key` from its leader from `offset` on, with each record's key, a tombstone's
    /// value as `None`, and the offset after the last batch returned (empty batches included,
    /// which a cleaned log has), retrying retriable errors.
    pub async fn fetch_keyed(
        &mut self,
        key: &Key,
        offset: Offset,
    ) -> Result<KeyedFetched, ClientError> {
        retrying!(self, self.fetch_keyed_once(key, offset))
    }

    async fn fetch_keyed_once(
        &mut self,
        key: &Key,
        offset: Offset,
    ) -> Result<KeyedFetched, ClientError> {
        let (leader, epoch) = self.leader(key).await?;
        let mut request = FetchRequest::default();
        request.replica_id = BrokerId(-1);
        request.max_wait_ms = self.config.fetch_max_wait_ms;
        request.min_bytes = 1;
        request.max_bytes = self.config.fetch_bytes_max;
        request.isolation_level = 0;
        request.topics = vec![FetchTopic::default()
            .with_topic(TopicName(str_bytes(&key.topic)))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(key.partition)
                .with_current_leader_epoch(epoch)
                .with_fetch_offset(offset.0)
                .with_partition_max_bytes(self.config.fetch_bytes_max)])];
        let response = self
            .call(&leader, ApiKey::Fetch, RequestKind::Fetch(request))
            .await?;
        let ResponseKind::Fetch(response) = response else {
            return Err(ClientError::Protocol("not a Fetch response".into()));
        };
        if let Some(e) = ClientError::kafka(response.error_code, None) {
            return Err(e);
        }
        let partition = response
            .responses
            .iter()
            .filter(|t| t.topic.0.as_str() == key.topic)
            .flat_map(|t| t.partitions.iter())
            .find(|p| p.partition_index == key.partition)
            .ok_or_else(|| ClientError::Protocol(format!("Fetch: no result for {key}")))?;
        if let Some(e) = ClientError::kafka(partition.error_code, None) {
            return Err(e);
        }
        let (records, next) = match &partition.records {
            Some(records) => decode_keyed_records(key, records, offset)?,
            None => (Vec::new(), offset),
        };
        Ok(KeyedFetched {
            records,
            next,
            high_watermark: Offset(partition.high_watermark),
        })
    }

    /// ListOffsets on `key`'s leader, retrying retriable errors.
    pub async fn list_offset(
        &mut self,
        key: &Key,
        spec: OffsetSpec,
    ) -> Result<Offset, ClientError> {
        retrying!(self, self.list_offset_once(key, spec))
    }

    /// One ListOffsets(latest) to the leader `key`'s last produce went to, at the leader epoch
    /// it was sent at (no retry, no metadata refresh): the read-after-ack probe. A leader that
    /// moved on answers an error instead.
    pub async fn latest_at_leader(&mut self, key: &Key) -> Result<Offset, ClientError> {
        self.list_offset_once(key, OffsetSpec::Latest).await
    }

    /// The offset after the last record a consumer can read (the high watermark).
    pub async fn end_offset(&mut self, key: &Key) -> Result<Offset, ClientError> {
        self.list_offset(key, OffsetSpec::Latest).await
    }

    async fn list_offset_once(
        &mut self,
        key: &Key,
        spec: OffsetSpec,
    ) -> Result<Offset, ClientError> {
        let (leader, epoch) = self.leader(key).await?;
        let mut request = ListOffsetsRequest::default();
        request.replica_id = BrokerId(-1);
        request.isolation_level = 0;
        request.topics = vec![ListOffsetsTopic::default()
            .with_name(TopicName(str_bytes(&key.topic)))
            .with_partitions(vec![ListOffsetsPartition::default()
                .with_partition_index(key.partition)
                .with_current_leader_epoch(epoch)
                .with_timestamp(match spec {
                    OffsetSpec::Earliest => -2,
                    OffsetSpec::Latest => -1,
                })])];
        let response = self
            .call(
                &leader,
                ApiKey::ListOffsets,
                RequestKind::ListOffsets(request),
            )
            .await?;
        let ResponseKind::ListOffsets(response) = response else {
            return Err(ClientError::Protocol("not a ListOffsets response".into()));
        };
        let partition = response
            .topics
            .iter()
            .filter(|t| t.name.0.as_str() == key.topic)
            .flat_map(|t| t.partitions.iter())
            .find(|p| p.partition_index == key.partition)
            .ok_or_else(|| ClientError::Protocol(format!("ListOffsets: no result for {key}")))?;
        if let Some(e) = ClientError::kafka(partition.error_code, None) {
            return Err(e);
        }
        if partition.offset < 0 {
            return Err(ClientError::Protocol(format!(
                "ListOffsets: {key} offset {}",
                partition.offset
            )));
        }
        Ok(Offset(partition.offset))
    }

    /// ElectLeaders (KIP-460) of `election_type` (0 preferred, 1 unclean) for `partitions` of
    /// `topic`, sent once to any broker: each partition's error code, in the answer's order.
    pub async fn elect_leaders(
        &mut self,
        election_type: i8,
        topic: &str,
        partitions: &[i32],
    ) -> Result<Vec<(i32, i16)>, ClientError> {
        let mut request = ElectLeadersRequest::default();
        request.election_type = election_type;
        request.timeout_ms = self.config.produce_timeout_ms;
        request.topic_partitions = Some(vec![TopicPartitions::default()
            .with_topic(TopicName(str_bytes(topic)))
            .with_partitions(partitions.to_vec())]);
        let response = self
            .call_any(ApiKey::ElectLeaders, RequestKind::ElectLeaders(request))
            .await?;
        let ResponseKind::ElectLeaders(response) = response else {
            return Err(ClientError::Protocol("not an ElectLeaders response".into()));
        };
        if let Some(e) = ClientError::kafka(response.error_code, None) {
            return Err(e);
        }
        Ok(response
            .replica_election_results
            .iter()
            .flat_map(|t| t.partition_result.iter())
            .map(|p| (p.partition_id, p.error_code))
            .collect())
    }

    /// IncrementalAlterConfigs on the BROKER resource `resource` (a broker id, or `""` for
    /// the cluster default): sets each key to its value, or deletes it (`None`), sent once to
    /// any broker: the resource's error code.
    pub async fn alter_broker_configs(
        &mut self,
        resource: &str,
        configs: &[(&str, Option<u64>)],
    ) -> Result<i16, ClientError> {
        use kafka_protocol::messages::incremental_alter_configs_request::{
            AlterConfigsResource, AlterableConfig,
        };
        use kafka_protocol::messages::IncrementalAlterConfigsRequest;
        let mut request = IncrementalAlterConfigsRequest::default();
        request.resources = vec![AlterConfigsResource::default()
            .with_resource_type(4)
            .with_resource_name(str_bytes(resource))
            .with_configs(
                configs
                    .iter()
                    .map(|(key, value)| {
                        AlterableConfig::default()
                            .with_name(str_bytes(key))
                            .with_config_operation(if value.is_some() { 0 } else { 1 })
                            .with_value(value.map(|v| str_bytes(&v.to_string())))
                    })
                    .collect(),
            )];
        let response = self
            .call_any(
                ApiKey::IncrementalAlterConfigs,
                RequestKind::IncrementalAlterConfigs(request),
            )
            .await?;
        let ResponseKind::IncrementalAlterConfigs(response) = response else {
            return Err(ClientError::Protocol(
                "not an IncrementalAlterConfigs response".into(),
            ));
        };
        response
            .responses
            .first()
            .map(|r| r.error_code)
            .ok_or_else(|| ClientError::Protocol("no answer for the resource".into()))
    }

    /// AlterPartitionReassignments (KIP-455) of one partition of `topic` to `target` (`None`
    /// cancels), sent once to any broker: the partition's error code.
    pub async fn alter_partition_reassignment(
        &mut self,
        topic: &str,
        partition: i32,
        target: Option<&[i32]>,
    ) -> Result<i16, ClientError> {
        use kafka_protocol::messages::alter_partition_reassignments_request::{
            ReassignablePartition, ReassignableTopic,
        };
        let mut request = AlterPartitionReassignmentsRequest::default();
        request.timeout_ms = self.config.produce_timeout_ms;
        request.topics = vec![ReassignableTopic::default()
            .with_name(TopicName(str_bytes(topic)))
            .with_partitions(vec![ReassignablePartition::default()
                .with_partition_index(partition)
                .with_replicas(target.map(|t| t.iter().map(|&b| BrokerId(b)).collect()))])];
        let response = self
            .call_any(
                ApiKey::AlterPartitionReassignments,
                RequestKind::AlterPartitionReassignments(request),
            )
            .await?;
        let ResponseKind::AlterPartitionReassignments(response) = response else {
            return Err(ClientError::Protocol(
                "not an AlterPartitionReassignments response".into(),
            ));
        };
        if let Some(e) = ClientError::kafka(response.error_code, None) {
            return Err(e);
        }
        response
            .responses
            .iter()
            .flat_map(|t| t.partitions.iter())
            .find(|p| p.partition_index == partition)
            .map(|p| p.error_code)
            .ok_or_else(|| ClientError::Protocol("no answer for the partition".into()))
    }
}

/// A consumer by assign (no group): a position per assigned key, starting at offset 0
/// (auto.offset.reset=earliest), advanced past the last record each poll returns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Consumer {
    positions: BTreeMap<Key, Offset>,
}

impl Consumer {
    pub fn new() -> Consumer {
        Consumer::default()
    }

    /// Assigns exactly `keys`: keys that stay assigned keep their positions (as Kafka's
    /// `assign` does), new ones start at 0.
    pub fn assign(&mut self, keys: &[Key]) {
        let positions = keys
            .iter()
            .map(|k| {
                (
                    k.clone(),
                    self.positions.get(k).copied().unwrap_or(Offset::ZERO),
                )
            })
            .collect();
        self.positions = positions;
    }

    pub fn assignment(&self) -> Vec<Key> {
        self.positions.keys().cloned().collect()
    }

    pub fn position(&self, key: &Key) -> Option<Offset> {
        self.positions.get(key).copied()
    }

    pub fn seek(&mut self, key: &Key, offset: Offset) -> Result<(), ClientError> {
        let position = self
            .positions
            .get_mut(key)
            .ok_or_else(|| ClientError::NotAssigned(key.clone()))?;
        *position = offset;
        Ok(())
    }

    /// One fetch of `key` from the consumer's position; moves the position past what it read.
    pub async fn poll(&mut self, client: &mut Client, key: &Key) -> Result<Fetched, ClientError> {
        let position = self
            .position(key)
            .ok_or_else(|| ClientError::NotAssigned(key.clone()))?;
        let fetched = client.fetch(key, position).await?;
        if let Some((last, _)) = fetched.records.last() {
            self.positions.insert(key.clone(), last.plus(1));
        }
        Ok(fetched)
    }
}

/// The group protocol name this workload's members agree on. The broker does not interpret
/// assignments: the leader's is a list of partition numbers (i32, big-endian).
pub const GROUP_PROTOCOL: &str = "keelsim-roundrobin";

fn group_error(code: i16) -> Result<(), ClientError> {
    match ClientError::kafka(code, None) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Whether `e` means the coordinator must be found again.
pub fn coordinator_lost(e: &ClientError) -> bool {
    use kafka_protocol::error::ResponseError as R;
    match e {
        ClientError::Connect { .. } | ClientError::NoResponse { .. } => true,
        ClientError::Kafka { error, .. } => matches!(
            error,
            R::NotCoordinator | R::CoordinatorNotAvailable | R::CoordinatorLoadInProgress
        ),
        _ => false,
    }
}

/// Whether `e` means the member must join again.
pub fn must_rejoin(e: &ClientError) -> bool {
    use kafka_protocol::error::ResponseError as R;
    matches!(
        e,
        ClientError::Kafka {
            error: R::RebalanceInProgress | R::IllegalGeneration | R::UnknownMemberId,
            ..
        }
    )
}

/// A subscribe-mode consumer in a classic consumer group: all partitions of one topic,
/// spread round-robin over the members by the leader.
#[derive(Clone, Debug)]
pub struct GroupConsumer {
    pub group: String,
    pub topic: String,
    pub partitions: i32,
    coordinator: Option<(i32, Endpoint)>,
    last_coordinator: Option<i32>,
    member_id: String,
    generation: Option<i32>,
    assignment: Vec<Key>,
    /// Coordinator changes seen (a different broker than the one found before).
    pub coordinator_moves: u64,
    /// Generations joined.
    pub rebalances: u64,
}

impl GroupConsumer {
    pub fn new(group: &str, topic: &str, partitions: i32) -> GroupConsumer {
        GroupConsumer {
            group: group.into(),
            topic: topic.into(),
            partitions,
            coordinator: None,
            last_coordinator: None,
            member_id: String::new(),
            generation: None,
            assignment: Vec::new(),
            coordinator_moves: 0,
            rebalances: 0,
        }
    }

    /// In a generation (joined and synced).
    pub fn is_member(&self) -> bool {
        self.generation.is_some()
    }

    pub fn assignment(&self) -> &[Key] {
        &self.assignment
    }

    /// Forgets the generation: the next round joins again.
    pub fn leave_generation(&mut self) {
        self.generation = None;
    }

    /// Forgets the generation (after an error that needs a rejoin).
    pub fn reset(&mut self, e: &ClientError) {
        if coordinator_lost(e) {
            self.coordinator = None;
        }
        if must_rejoin(e) {
            self.generation = None;
            if matches!(
                e,
                ClientError::Kafka {
                    error: ResponseError::UnknownMemberId,
                    ..
                }
            ) {
                self.member_id.clear();
            }
        }
    }

    async fn coordinator(&mut self, client: &mut Client) -> Result<Endpoint, ClientError> {
        if let Some((_, e)) = &self.coordinator {
            return Ok(e.clone());
        }
        let mut last = None;
        for attempt in 0..10 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let mut request = FindCoordinatorRequest::default();
            request.key = str_bytes(&self.group);
            request.key_type = 0;
            let response = match client
                .call_any(
                    ApiKey::FindCoordinator,
                    RequestKind::FindCoordinator(request),
                )
                .await
            {
                Ok(ResponseKind::FindCoordinator(r)) => r,
                Ok(_) => {
                    return Err(ClientError::Protocol(
                        "not a FindCoordinator response".into(),
                    ))
                }
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            if let Some(e) =
                ClientError::kafka(response.error_code, response.error_message.as_ref())
            {
                last = Some(e);
                continue;
            }
            let Ok(port) = u16::try_from(response.port) else {
                return Err(ClientError::Protocol("FindCoordinator: bad port".into()));
            };
            let endpoint = Endpoint {
                host: response.host.to_string(),
                port,
            };
            let id = response.node_id.0;
            if self.last_coordinator.is_some_and(|l| l != id) {
                self.coordinator_moves += 1;
            }
            self.last_coordinator = Some(id);
            self.coordinator = Some((id, endpoint.clone()));
            return Ok(endpoint);
        }
        Err(last.expect("attempted"))
    }

    /// One call to the coordinator; forgets it when it is lost.
    async fn call(
        &mut self,
        client: &mut Client,
        api: ApiKey,
        body: RequestKind,
    ) -> Result<ResponseKind, ClientError> {
        let coordinator = self.coordinator(client).await?;
        let result = client.call(&coordinator, api, body).await;
        if let Err(e) = &result {
            self.reset(e);
        }
        result
    }

    fn checked<T>(&mut self, code: i16, t: T) -> Result<T, ClientError> {
        match group_error(code) {
            Ok(()) => Ok(t),
            Err(e) => {
                self.reset(&e);
                Err(e)
            }
        }
    }

    /// Joins and syncs a new generation; on success, [`GroupConsumer::assignment`] is its
    /// partitions.
    pub async fn join(&mut self, client: &mut Client) -> Result<(), ClientError> {
        self.generation = None;
        let response = loop {
            let mut request = JoinGroupRequest::default();
            request.group_id = GroupId(str_bytes(&self.group));
            request.session_timeout_ms = 6_000;
            request.rebalance_timeout_ms = 4_000;
            request.member_id = str_bytes(&self.member_id);
            request.protocol_type = str_bytes("consumer");
            let mut protocol =
                kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol::default();
            protocol.name = str_bytes(GROUP_PROTOCOL);
            protocol.metadata = Bytes::from(self.topic.clone().into_bytes());
            request.protocols = vec![protocol];
            let ResponseKind::JoinGroup(response) = self
                .call(client, ApiKey::JoinGroup, RequestKind::JoinGroup(request))
                .await?
            else {
                return Err(ClientError::Protocol("not a JoinGroup response".into()));
            };
            if response.error_code == ResponseError::MemberIdRequired.code() {
                // KIP-394: join again with the member id the coordinator gave.
                self.member_id = response.member_id.to_string();
                continue;
            }
            break self.checked(response.error_code, response)?;
        };
        self.member_id = response.member_id.to_string();
        let generation = response.generation_id;
        let mut assignments = Vec::new();
        if response.leader == response.member_id {
            let mut members: Vec<String> = response
                .members
                .iter()
                .map(|m| m.member_id.to_string())
                .collect();
            members.sort();
            let mut per: Vec<BytesMut> = members.iter().map(|_| BytesMut::new()).collect();
            for p in 0..self.partitions {
                per[p as usize % members.len().max(1)].put_i32(p);
            }
            for (m, bytes) in members.iter().zip(per) {
                let mut a =
                    kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment::default();
                a.member_id = str_bytes(m);
                a.assignment = bytes.freeze();
                assignments.push(a);
            }
        }
        let mut request = SyncGroupRequest::default();
        request.group_id = GroupId(str_bytes(&self.group));
        request.generation_id = generation;
        request.member_id = str_bytes(&self.member_id);
        request.assignments = assignments;
        let ResponseKind::SyncGroup(response) = self
            .call(client, ApiKey::SyncGroup, RequestKind::SyncGroup(request))
            .await?
        else {
            return Err(ClientError::Protocol("not a SyncGroup response".into()));
        };
        let response = self.checked(response.error_code, response)?;
        let mut bytes = response.assignment.clone();
        let mut assignment = Vec::new();
        while bytes.remaining() >= 4 {
            assignment.push(Key::new(self.topic.clone(), bytes.get_i32()));
        }
        self.assignment = assignment;
        self.generation = Some(generation);
        self.rebalances += 1;
        Ok(())
    }

    /// Heartbeat; an error that needs a rejoin leaves the generation.
    pub async fn heartbeat(&mut self, client: &mut Client) -> Result<(), ClientError> {
        let mut request = HeartbeatRequest::default();
        request.group_id = GroupId(str_bytes(&self.group));
        request.generation_id = self.generation.unwrap_or(-1);
        request.member_id = str_bytes(&self.member_id);
        let ResponseKind::Heartbeat(response) = self
            .call(client, ApiKey::Heartbeat, RequestKind::Heartbeat(request))
            .await?
        else {
            return Err(ClientError::Protocol("not a Heartbeat response".into()));
        };
        self.checked(response.error_code, ())
    }

    /// The committed offsets of the assigned keys (`None`: no commit).
    pub async fn fetch_offsets(
        &mut self,
        client: &mut Client,
    ) -> Result<BTreeMap<Key, Option<Offset>>, ClientError> {
        let mut topic =
            kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic::default();
        topic.name = TopicName(str_bytes(&self.topic));
        topic.partition_indexes = self.assignment.iter().map(|k| k.partition).collect();
        let mut request = OffsetFetchRequest::default();
        request.group_id = GroupId(str_bytes(&self.group));
        request.topics = Some(vec![topic]);
        let ResponseKind::OffsetFetch(response) = self
            .call(
                client,
                ApiKey::OffsetFetch,
                RequestKind::OffsetFetch(request),
            )
            .await?
        else {
            return Err(ClientError::Protocol("not an OffsetFetch response".into()));
        };
        let response = self.checked(response.error_code, response)?;
        let mut out = BTreeMap::new();
        for t in &response.topics {
            for p in &t.partitions {
                self.checked(p.error_code, ())?;
                out.insert(
                    Key::new(t.name.0.to_string(), p.partition_index),
                    (p.committed_offset >= 0).then_some(Offset(p.committed_offset)),
                );
            }
        }
        for k in &self.assignment {
            if !out.contains_key(k) {
                return Err(ClientError::Protocol(format!(
                    "OffsetFetch: no result for {k}"
                )));
            }
        }
        Ok(out)
    }

    /// Commits `offsets` in the current generation; Ok only when every partition is.
    pub async fn commit(
        &mut self,
        client: &mut Client,
        offsets: &BTreeMap<Key, Offset>,
    ) -> Result<(), ClientError> {
        let mut topic =
            kafka_protocol::messages::offset_commit_request::OffsetCommitRequestTopic::default();
        topic.name = TopicName(str_bytes(&self.topic));
        for (k, o) in offsets {
            let mut p = kafka_protocol::messages::offset_commit_request::OffsetCommitRequestPartition::default();
            p.partition_index = k.partition;
            p.committed_offset = o.0;
            p.committed_leader_epoch = -1;
            topic.partitions.push(p);
        }
        let mut request = OffsetCommitRequest::default();
        request.group_id = GroupId(str_bytes(&self.group));
        request.generation_id_or_member_epoch = self.generation.unwrap_or(-1);
        request.member_id = str_bytes(&self.member_id);
        request.retention_time_ms = -1;
        request.topics = vec![topic];
        let ResponseKind::OffsetCommit(response) = self
            .call(
                client,
                ApiKey::OffsetCommit,
                RequestKind::OffsetCommit(request),
            )
            .await?
        else {
            return Err(ClientError::Protocol("not an OffsetCommit response".into()));
        };
        for t in &response.topics {
            for p in &t.partitions {
                self.checked(p.error_code, ())?;
            }
        }
        Ok(())
    }
}

pub mod txn;

#[cfg(test)]
mod tests;
