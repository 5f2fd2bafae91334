//! The consumer group coordinator, classic protocol: Kafka's `GroupCoordinator`,
//! `GroupMetadata`, `MemberMetadata` and the group half of `GroupMetadataManager`, as a pure
//! state machine.
//!
//! A [`GroupCoordinator`] owns every [`Group`] of one `__consumer_offsets` partition that this
//! broker leads. It handles JoinGroup, SyncGroup, Heartbeat, LeaveGroup, OffsetCommit,
//! OffsetFetch, DescribeGroups, ListGroups and DeleteGroups with Kafka's rules and error codes
//! ([`code`]), and it is driven by time only through `now_ms` arguments and [`GroupCoordinator::poll`].
//! Its types do not depend on the wire crate: node translates kafka-protocol messages to them.
//!
//! # Shape and the order in which the shell drains outputs
//! Each `handle_*` call answers either at once ([`Reply::Now`]) or later ([`Reply::Pending`]):
//! a JoinGroup waits for the rebalance, a follower's SyncGroup for the leader's, and any answer
//! that depends on a write waits for that write to be durable. Late answers come out of
//! [`GroupCoordinator::poll_responses`] as `(RequestId, Response)`, addressed by the
//! [`RequestId`] the shell gave with the request (a pending answer may already be there when
//! the call returns). After every call (`handle_*`, [`GroupCoordinator::poll`],
//! [`GroupCoordinator::records_committed`]) the shell:
//! 1. drains [`GroupCoordinator::poll_records`] and appends them, in sequence order, to the
//!    replicated `__consumer_offsets` partition (a [`GroupRecord`] is a Kafka-style key and
//!    value, or a tombstone); a record of a transaction ([`OutRecord::txn`]) goes in a
//!    transactional batch of its producer;
//! 2. drains [`GroupCoordinator::poll_responses`] and sends them;
//! 3. once the records up to sequence `n` are durable (committed by the partition's high
//!    watermark), calls [`GroupCoordinator::records_committed`]`(n)` and drains again;
//! 4. sleeps until [`GroupCoordinator::next_deadline_ms`] or the next request, then calls
//!    [`GroupCoordinator::poll`].
//!
//! # Durability (Kafka's `GroupMetadataManager.storeGroup` and `storeOffsets`)
//! Every state change Kafka writes to `__consumer_offsets` is emitted as a [`GroupRecord`]:
//! the group's metadata when the leader's SyncGroup completes a rebalance and when a rebalance
//! ends with no members (the group empties), a static member's replacement, each committed
//! offset, and tombstones when offsets expire or a group is deleted or dies. Records are
//! numbered from 1. Answers that depend on them are *held* until the shell reports them durable:
//! - an OffsetCommit's answer, and the committed offset itself: OffsetFetch does not see it
//!   before [`GroupCoordinator::records_committed`] covers its record (Kafka's
//!   `pendingOffsetCommits`); an offset with a commit in flight never expires;
//! - a TxnOffsetCommit's answer likewise; its offsets are then held pending for the producer
//!   (Kafka's `pendingTransactionalOffsetCommits`) until the shell reports the transaction's
//!   marker durable on this partition ([`GroupCoordinator::complete_txn`]): a COMMIT makes them
//!   visible, an ABORT drops them. [`GroupCoordinator::load`] applies the same rule to the
//!   transactional records and markers it reads, so a coordinator that moves keeps them;
//! - the SyncGroup answers of the generation the leader assigned (Kafka propagates the
//!   assignment only from the `storeGroup` callback), and a static member's JoinGroup answer
//!   when its replacement needs no rebalance.
//!
//! Group state transitions themselves apply at once. A coordinator that loses the partition is
//! dropped ([`GroupCoordinator::resign`] answers whatever still waits with NOT_COORDINATOR); the
//! next leader rebuilds the durable state with [`GroupCoordinator::load`] from the records the
//! partition holds, and members that had not been answered rejoin.
//!
//! # Group states (`GroupState.scala`)
//! ```text
//! Empty ──join──> PreparingRebalance ──all rejoined / timeout──> CompletingRebalance
//!   ^                 ^     │ (no member left)                       │ leader's SyncGroup
//!   └─────────────────┼─────┘                                        v
//!                     └──── member joins/leaves/expires, leader rejoins ─── Stable
//! any state ──DeleteGroups (Empty only) / expiry (Empty, no offsets)──> Dead (removed)
//! ```
//!
//! # Invariants (always-on assertions where they live)
//! - State transitions follow Kafka's `validPreviousStates` ([`Group::transition`]).
//! - A group's generation never decreases; it bumps by one at the end of every rebalance,
//!   also one that leaves no member.
//! - The leader is a member, and a group with members has a leader.
//! - The static-member index maps each `group.instance.id` to exactly one current member.
//! - A Stable group's members all have an assignment (possibly empty bytes) given by the
//!   generation's leader.
//! - Committed offsets change only when a commit's record is durable, or by expiry or deletion
//!   (which emit tombstones): replaying the durable records gives the same offsets.
//!
//! # Differences from Kafka, on purpose
//! - Member ids are `{client_id or group.instance.id}-{prefix}{counter}` (the prefix given to
//!   [`GroupCoordinator::new`], unique per coordinator incarnation) instead of a random UUID.
//! - A second JoinGroup or SyncGroup from a member that already waits supersedes the first,
//!   which is answered REBALANCE_IN_PROGRESS so that the shell never leaks a request.
//! - Offsets of a Stable `consumer` group are not expired by subscription (Kafka expires those of
//!   topics no member subscribes to, which needs the consumer protocol's metadata parsed).
//! - Unknown topics (UNKNOWN_TOPIC_OR_PARTITION) are the shell's check, against metadata.
//! - No `group.max.size`, no KIP-814 `skip_assignment`, no pending-sync timeout.

#![warn(missing_docs)]

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use prost::Message as _;

use crate::error_code::{self as code, ErrorCode};
use crate::types::ProducerId;

/// Kafka's default `group.initial.rebalance.delay.ms`.
pub const INITIAL_REBALANCE_DELAY_MS_DEFAULT: i64 = 3_000;
/// Kafka's default `group.min.session.timeout.ms`.
pub const SESSION_TIMEOUT_MIN_MS_DEFAULT: i32 = 6_000;
/// Kafka's default `group.max.session.timeout.ms`.
pub const SESSION_TIMEOUT_MAX_MS_DEFAULT: i32 = 1_800_000;
/// Kafka's default `offset.metadata.max.bytes`.
pub const OFFSET_METADATA_BYTES_MAX_DEFAULT: usize = 4_096;
/// Kafka's default `offsets.retention.minutes` (7 days), in milliseconds.
pub const OFFSETS_RETENTION_MS_DEFAULT: i64 = 7 * 24 * 60 * 60 * 1000;
/// Kafka's default `offsets.retention.check.interval.ms`.
pub const OFFSETS_RETENTION_CHECK_INTERVAL_MS_DEFAULT: i64 = 600_000;

/// Java's `String.hashCode`: over UTF-16 code units, `h = 31 * h + c`, wrapping.
pub fn java_string_hash(s: &str) -> i32 {
    s.encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)))
}

/// The partition of an internal coordinator topic that owns `key`: a group id's
/// `__consumer_offsets` partition or a transactional id's `__transaction_state` partition
/// (Kafka's `Utils.abs(key.hashCode) % partitionCount` in `GroupMetadataManager.partitionFor`
/// and `TransactionStateManager.partitionFor`; `Utils.abs(MIN_VALUE)` is 0), so that keel and
/// Kafka's tools agree on where a key lives.
pub fn partition_for(key: &str, partitions: i32) -> i32 {
    assert!(partitions > 0, "a coordinator topic has partitions");
    let h = java_string_hash(key);
    let abs = if h == i32::MIN { 0 } else { h.abs() };
    abs % partitions
}

/// The coordinator's settings (Kafka's broker configs of the same names).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupConfig {
    /// `group.initial.rebalance.delay.ms`: how long the first rebalance of an Empty group
    /// waits for more members, extended while members keep arriving (0: no delay).
    pub initial_rebalance_delay_ms: i64,
    /// `group.min.session.timeout.ms`.
    pub session_timeout_min_ms: i32,
    /// `group.max.session.timeout.ms`.
    pub session_timeout_max_ms: i32,
    /// `offset.metadata.max.bytes`.
    pub offset_metadata_bytes_max: usize,
    /// `offsets.retention.minutes`, in milliseconds.
    pub offsets_retention_ms: i64,
    /// `offsets.retention.check.interval.ms`: how often expiry runs.
    pub offsets_retention_check_interval_ms: i64,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            initial_rebalance_delay_ms: INITIAL_REBALANCE_DELAY_MS_DEFAULT,
            session_timeout_min_ms: SESSION_TIMEOUT_MIN_MS_DEFAULT,
            session_timeout_max_ms: SESSION_TIMEOUT_MAX_MS_DEFAULT,
            offset_metadata_bytes_max: OFFSET_METADATA_BYTES_MAX_DEFAULT,
            offsets_retention_ms: OFFSETS_RETENTION_MS_DEFAULT,
            offsets_retention_check_interval_ms: OFFSETS_RETENTION_CHECK_INTERVAL_MS_DEFAULT,
        }
    }
}

/// A group's state (Kafka's `GroupState`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum GroupState {
    /// No members; offsets may remain. New groups start here.
    Empty,
    /// A rebalance is collecting JoinGroups.
    PreparingRebalance,
    /// Members have their join answers; waiting for the leader's SyncGroup.
    CompletingRebalance,
    /// Every member has the generation's assignment.
    Stable,
    /// Removed (deleted or expired); never seen in a coordinator's map.
    Dead,
}

impl GroupState {
    /// Kafka's name for the state, as DescribeGroups and ListGroups show it.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }

    /// The state with Kafka's name `name`, ignoring case (ListGroups' states filter).
    pub fn parse(name: &str) -> Option<GroupState> {
        [
            GroupState::Empty,
            GroupState::PreparingRebalance,
            GroupState::CompletingRebalance,
            GroupState::Stable,
            GroupState::Dead,
        ]
        .into_iter()
        .find(|s| s.name().eq_ignore_ascii_case(name))
    }

    /// Kafka's `validPreviousStates`: may a group in `self` move to `next`?
    fn may_become(self, next: GroupState) -> bool {
        use GroupState::*;
        match next {
            Dead => true,
            CompletingRebalance => self == PreparingRebalance,
            Stable => self == CompletingRebalance,
            PreparingRebalance => matches!(self, Stable | CompletingRebalance | Empty),
            Empty => self == PreparingRebalance,
        }
    }
}

/// The shell's handle on a request whose answer may come later through
/// [`GroupCoordinator::poll_responses`] (or the transaction coordinator's). Opaque to the
/// coordinator; the shell keeps them unique among requests in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

/// An answer now, or later through the coordinator's `poll_responses`
/// ([`GroupCoordinator::poll_responses`], and the transaction coordinator's too).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply<T> {
    /// The answer.
    Now(T),
    /// The answer will come out of the coordinator's `poll_responses` under the request's
    /// [`RequestId`] (it may already be there).
    Pending,
}

impl<T> Reply<T> {
    /// The answer, if it came at once.
    pub fn now(self) -> Option<T> {
        match self {
            Reply::Now(t) => Some(t),
            Reply::Pending => None,
        }
    }
}

/// An answer that came late.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// A JoinGroup's answer.
    Join(JoinResponse),
    /// A SyncGroup's answer.
    Sync(SyncResponse),
    /// An OffsetCommit's answer.
    OffsetCommit(OffsetCommitResponse),
}

impl Response {
    /// The same answer carrying `error` instead (partitions keep their names).
    fn with_error(self, error: ErrorCode) -> Response {
        match self {
            Response::Join(j) => Response::Join(JoinResponse::error(error, j.member_id)),
            Response::Sync(_) => Response::Sync(SyncResponse::error(error)),
            Response::OffsetCommit(c) => Response::OffsetCommit(OffsetCommitResponse {
                partitions: c
                    .partitions
                    .into_iter()
                    .map(|(tp, _)| (tp, error))
                    .collect(),
            }),
        }
    }
}

/// One protocol a member supports (for consumers: an assignor and its subscription bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Protocol {
    /// The protocol name, e.g. `range`.
    pub name: String,
    /// Opaque metadata (the consumer's subscription).
    pub metadata: Vec<u8>,
}

/// A JoinGroup request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinRequest {
    /// The group.
    pub group_id: String,
    /// Empty for a member that has none yet.
    pub member_id: String,
    /// KIP-345 `group.instance.id` (static membership).
    pub group_instance_id: Option<String>,
    /// The client's `client.id` (used in generated member ids).
    pub client_id: String,
    /// The client's host, as DescribeGroups shows it.
    pub client_host: String,
    /// `session.timeout.ms`.
    pub session_timeout_ms: i32,
    /// `max.poll.interval.ms` (JoinGroup v0 sends the session timeout here).
    pub rebalance_timeout_ms: i32,
    /// e.g. `consumer`.
    pub protocol_type: String,
    /// Supported protocols, most preferred first.
    pub protocols: Vec<Protocol>,
    /// JoinGroup v4+ (KIP-394): a first join without member id gets MEMBER_ID_REQUIRED.
    pub require_known_member_id: bool,
}

/// One member in the leader's JoinGroup answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinMember {
    /// The member id.
    pub member_id: String,
    /// Its `group.instance.id`.
    pub group_instance_id: Option<String>,
    /// Its metadata for the selected protocol.
    pub metadata: Vec<u8>,
}

/// A JoinGroup answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinResponse {
    /// An error code from [`code`].
    pub error_code: ErrorCode,
    /// The new generation, or -1 on error.
    pub generation_id: i32,
    /// The group's protocol type.
    pub protocol_type: Option<String>,
    /// The selected protocol.
    pub protocol_name: Option<String>,
    /// The leader's member id (empty on error).
    pub leader: String,
    /// The member's id: the one it gave, or (new members, MEMBER_ID_REQUIRED) the generated one.
    pub member_id: String,
    /// Every member's metadata, for the leader only; empty for followers.
    pub members: Vec<JoinMember>,
}

impl JoinResponse {
    fn error(error_code: ErrorCode, member_id: String) -> JoinResponse {
        JoinResponse {
            error_code,
            generation_id: -1,
            protocol_type: None,
            protocol_name: None,
            leader: String::new(),
            member_id,
            members: Vec::new(),
        }
    }
}

/// A SyncGroup request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncRequest {
    /// The group.
    pub group_id: String,
    /// The generation the member joined.
    pub generation_id: i32,
    /// The member.
    pub member_id: String,
    /// Its `group.instance.id`.
    pub group_instance_id: Option<String>,
    /// v5+: must equal the group's when given.
    pub protocol_type: Option<String>,
    /// v5+: must equal the group's when given.
    pub protocol_name: Option<String>,
    /// The leader's assignment, by member id; empty from followers.
    pub assignments: Vec<(String, Vec<u8>)>,
}

/// A SyncGroup answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncResponse {
    /// An error code from [`code`].
    pub error_code: ErrorCode,
    /// The group's protocol type.
    pub protocol_type: Option<String>,
    /// The group's protocol.
    pub protocol_name: Option<String>,
    /// This member's assignment.
    pub assignment: Vec<u8>,
}

impl SyncResponse {
    fn error(error_code: ErrorCode) -> SyncResponse {
        SyncResponse {
            error_code,
            protocol_type: None,
            protocol_name: None,
            assignment: Vec::new(),
        }
    }
}

/// A Heartbeat request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatRequest {
    /// The group.
    pub group_id: String,
    /// The member's generation.
    pub generation_id: i32,
    /// The member.
    pub member_id: String,
    /// Its `group.instance.id`.
    pub group_instance_id: Option<String>,
}

/// One member leaving (LeaveGroup v3+ carries several).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeavingMember {
    /// The member id (may be empty for a static member named by instance id).
    pub member_id: String,
    /// Its `group.instance.id`.
    pub group_instance_id: Option<String>,
}

/// A LeaveGroup answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaveResponse {
    /// The request-level error.
    pub error_code: ErrorCode,
    /// Per member, in request order: the member and its error code.
    pub members: Vec<(LeavingMember, ErrorCode)>,
}

/// A topic partition.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    /// The topic name.
    pub topic: String,
    /// The partition index.
    pub partition: i32,
}

/// One committed offset (Kafka's `OffsetAndMetadata`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedOffset {
    /// The next offset to consume.
    pub offset: i64,
    /// The leader epoch of the last consumed record, or -1.
    pub leader_epoch: i32,
    /// The client's metadata string.
    pub metadata: String,
    /// When the coordinator accepted the commit.
    pub commit_timestamp_ms: i64,
}

/// One partition of an OffsetCommit request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionCommit {
    /// The partition.
    pub partition: TopicPartition,
    /// The offset.
    pub offset: i64,
    /// The leader epoch, or -1.
    pub leader_epoch: i32,
    /// The metadata string; `None` is stored as empty (Kafka's `NO_METADATA`).
    pub metadata: Option<String>,
}

/// An OffsetCommit request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetCommitRequest {
    /// The group.
    pub group_id: String,
    /// The member's generation, or -1 for a commit outside group management.
    pub generation_id: i32,
    /// The member, or empty.
    pub member_id: String,
    /// Its `group.instance.id`.
    pub group_instance_id: Option<String>,
    /// The offsets.
    pub partitions: Vec<PartitionCommit>,
}

/// An OffsetCommit answer: an error code per partition, in request order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OffsetCommitResponse {
    /// Each partition and its error code.
    pub partitions: Vec<(TopicPartition, ErrorCode)>,
}

/// A TxnOffsetCommit request (Kafka's `TxnOffsetCommitRequest`): offsets committed inside
/// the transaction of `producer_id` at `producer_epoch`. v0-2 carry no member: `generation_id`
/// -1, `member_id` empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnOffsetCommitRequest {
    /// The group.
    pub group_id: String,
    /// The transaction's producer.
    pub producer: TxnProducer,
    /// The member's generation, or -1.
    pub generation_id: i32,
    /// The member, or empty.
    pub member_id: String,
    /// Its `group.instance.id`.
    pub group_instance_id: Option<String>,
    /// The offsets.
    pub partitions: Vec<PartitionCommit>,
}

/// The producer whose transaction a record belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TxnProducer {
    /// The producer id.
    pub producer_id: ProducerId,
    /// Its epoch.
    pub producer_epoch: i16,
}

/// A record for the shell to append, with its sequence number. A record with `txn` is part of
/// that producer's transaction: the shell appends it in a transactional batch of the producer
/// (and never in one batch with records of another producer or none).
#[derive(Clone, Debug, PartialEq)]
pub struct OutRecord {
    /// The record's sequence number, from 1.
    pub seq: u64,
    /// The record.
    pub record: GroupRecord,
    /// The transaction it belongs to, if any.
    pub txn: Option<TxnProducer>,
}

/// One entry of a `__consumer_offsets` partition's log, as [`GroupCoordinator::load`] reads
/// it: a record outside transactions, a record inside a producer's transaction, or the
/// COMMIT/ABORT marker that ends one.
#[derive(Clone, Debug, PartialEq)]
pub enum LogEntry {
    /// A record of a non-transactional batch.
    Record(GroupRecord),
    /// A record of a transactional batch of `producer_id`.
    Txn {
        /// The producer.
        producer_id: ProducerId,
        /// The record.
        record: GroupRecord,
    },
    /// A transaction marker of `producer_id`.
    Marker {
        /// The producer.
        producer_id: ProducerId,
        /// COMMIT (true) or ABORT.
        commit: bool,
    },
}

impl From<GroupRecord> for LogEntry {
    fn from(record: GroupRecord) -> LogEntry {
        LogEntry::Record(record)
    }
}

/// One partition of an OffsetFetch answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchedOffset {
    /// The partition.
    pub partition: TopicPartition,
    /// The committed offset, or -1 for none.
    pub offset: i64,
    /// Its leader epoch, or -1.
    pub leader_epoch: i32,
    /// Its metadata (empty for none).
    pub metadata: String,
    /// An error code from [`code`].
    pub error_code: ErrorCode,
}

/// One group in a DescribeGroups answer (Kafka's `GroupSummary`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DescribedGroup {
    /// The group.
    pub group_id: String,
    /// An error code from [`code`].
    pub error_code: ErrorCode,
    /// Kafka's state name ([`GroupState::name`]); `Dead` for an unknown group.
    pub state: String,
    /// The protocol type, or empty.
    pub protocol_type: String,
    /// The protocol, when Stable; else empty.
    pub protocol_name: String,
    /// The members; metadata and assignment only when Stable.
    pub members: Vec<DescribedMember>,
}

/// One member in a DescribeGroups answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DescribedMember {
    /// The member id.
    pub member_id: String,
    /// Its `group.instance.id`.
    pub group_instance_id: Option<String>,
    /// Its client id.
    pub client_id: String,
    /// Its host.
    pub client_host: String,
    /// Its metadata for the selected protocol (Stable only).
    pub metadata: Vec<u8>,
    /// Its assignment (Stable only).
    pub assignment: Vec<u8>,
}

/// One group in a ListGroups answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedGroup {
    /// The group.
    pub group_id: String,
    /// The protocol type, or empty.
    pub protocol_type: String,
    /// Its state.
    pub state: GroupState,
}

// ---------------------------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------------------------

/// The key of a [`GroupRecord`] (Kafka's `OffsetCommitKey` and `GroupMetadataKey`). Its prost
/// encoding is deterministic, so equal keys have equal bytes: a compacted partition keeps the
/// last value per key.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum RecordKey {
    /// One group's committed offset of one partition.
    Offset {
        /// The group.
        group_id: String,
        /// The partition.
        partition: TopicPartition,
    },
    /// One group's metadata.
    Group {
        /// The group.
        group_id: String,
    },
}

/// One write to `__consumer_offsets`: a key and its value, or a tombstone (`value` `None`).
/// A value's kind always matches its key's.
#[derive(Clone, PartialEq, Debug)]
pub struct GroupRecord {
    /// What the record is about.
    pub key: RecordKey,
    /// The new value, or `None` to delete the key.
    pub value: Option<RecordValue>,
}

/// The value of a [`GroupRecord`].
#[derive(Clone, PartialEq, Debug)]
pub enum RecordValue {
    /// A committed offset (Kafka's `OffsetCommitValue`).
    Offset(OffsetValue),
    /// A group's metadata (Kafka's `GroupMetadataValue`).
    Group(GroupMetadataValue),
}

/// The prost form of a [`RecordKey`].
#[derive(Clone, PartialEq, prost::Message)]
struct KeyMessage {
    /// 1: offset key, 2: group key (Kafka's key versions 0-1 and 2).
    #[prost(int32, tag = "1")]
    kind: i32,
    #[prost(string, tag = "2")]
    group_id: String,
    #[prost(string, tag = "3")]
    topic: String,
    #[prost(int32, tag = "4")]
    partition: i32,
}

const KEY_KIND_OFFSET: i32 = 1;
const KEY_KIND_GROUP: i32 = 2;

/// A committed offset as stored.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct OffsetValue {
    /// The offset.
    #[prost(int64, tag = "1")]
    pub offset: i64,
    /// The leader epoch, or -1.
    #[prost(int32, tag = "2")]
    pub leader_epoch: i32,
    /// The metadata string.
    #[prost(string, tag = "3")]
    pub metadata: String,
    /// When the commit was accepted.
    #[prost(int64, tag = "4")]
    pub commit_timestamp_ms: i64,
}

/// A group's metadata as stored: written when a rebalance's assignment is set (Stable) or the
/// group empties. A loaded group with members is Stable, without is Empty.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct GroupMetadataValue {
    /// The protocol type (empty: none).
    #[prost(string, tag = "1")]
    pub protocol_type: String,
    /// The generation.
    #[prost(int32, tag = "2")]
    pub generation: i32,
    /// The selected protocol (absent when Empty).
    #[prost(string, optional, tag = "3")]
    pub protocol_name: Option<String>,
    /// The leader (absent when Empty).
    #[prost(string, optional, tag = "4")]
    pub leader: Option<String>,
    /// When the group entered its current state (KIP-211's base for offset expiry).
    #[prost(int64, tag = "5")]
    pub current_state_timestamp_ms: i64,
    /// The members, in join order.
    #[prost(message, repeated, tag = "6")]
    pub members: Vec<MemberValue>,
}

/// One member as stored (Kafka's `MemberMetadata` value schema).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct MemberValue {
    /// The member id.
    #[prost(string, tag = "1")]
    pub member_id: String,
    /// Its `group.instance.id`.
    #[prost(string, optional, tag = "2")]
    pub group_instance_id: Option<String>,
    /// Its client id.
    #[prost(string, tag = "3")]
    pub client_id: String,
    /// Its host.
    #[prost(string, tag = "4")]
    pub client_host: String,
    /// Its rebalance timeout.
    #[prost(int32, tag = "5")]
    pub rebalance_timeout_ms: i32,
    /// Its session timeout.
    #[prost(int32, tag = "6")]
    pub session_timeout_ms: i32,
    /// Its metadata for the selected protocol.
    #[prost(bytes = "vec", tag = "7")]
    pub subscription: Vec<u8>,
    /// Its assignment.
    #[prost(bytes = "vec", tag = "8")]
    pub assignment: Vec<u8>,
}

/// A record that cannot be decoded, or that does not fit the state being loaded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The bytes are not a record of this format.
    #[error("undecodable {what}: {detail}")]
    Undecodable {
        /// Key or value.
        what: &'static str,
        /// The decoder's message.
        detail: String,
    },
    /// The value's kind is not the key's (only a record built by hand; decode never makes one).
    #[error("the value's kind does not match the key's")]
    KindMismatch,
    /// The key's kind is not one this code knows.
    #[error("unknown key kind {0}")]
    UnknownKeyKind(i32),
    /// The group metadata breaks an invariant (leader not a member, duplicate member).
    #[error("group {group_id}: {detail}")]
    InvalidGroup {
        /// The group.
        group_id: String,
        /// What is wrong.
        detail: String,
    },
}

impl GroupRecord {
    /// The record as key bytes and value bytes (`None`: tombstone).
    pub fn encode(&self) -> (Vec<u8>, Option<Vec<u8>>) {
        let key = match &self.key {
            RecordKey::Offset {
                group_id,
                partition,
            } => KeyMessage {
                kind: KEY_KIND_OFFSET,
                group_id: group_id.clone(),
                topic: partition.topic.clone(),
                partition: partition.partition,
            },
            RecordKey::Group { group_id } => KeyMessage {
                kind: KEY_KIND_GROUP,
                group_id: group_id.clone(),
                topic: String::new(),
                partition: 0,
            },
        };
        let value = self.value.as_ref().map(|v| match v {
            RecordValue::Offset(o) => o.encode_to_vec(),
            RecordValue::Group(g) => g.encode_to_vec(),
        });
        (key.encode_to_vec(), value)
    }

    /// Decodes what [`GroupRecord::encode`] wrote; the key decides the value's kind. Never
    /// panics on any bytes.
    pub fn decode(key: &[u8], value: Option<&[u8]>) -> Result<GroupRecord, RecordError> {
        let undecodable = |what, e: prost::DecodeError| RecordError::Undecodable {
            what,
            detail: e.to_string(),
        };
        let k = KeyMessage::decode(key).map_err(|e| undecodable("key", e))?;
        let (key, value) = match k.kind {
            KEY_KIND_OFFSET => (
                RecordKey::Offset {
                    group_id: k.group_id,
                    partition: TopicPartition {
                        topic: k.topic,
                        partition: k.partition,
                    },
                },
                value
                    .map(|v| OffsetValue::decode(v).map(RecordValue::Offset))
                    .transpose()
                    .map_err(|e| undecodable("offset value", e))?,
            ),
            KEY_KIND_GROUP => (
                RecordKey::Group {
                    group_id: k.group_id,
                },
                value
                    .map(|v| GroupMetadataValue::decode(v).map(RecordValue::Group))
                    .transpose()
                    .map_err(|e| undecodable("group value", e))?,
            ),
            other => return Err(RecordError::UnknownKeyKind(other)),
        };
        Ok(GroupRecord { key, value })
    }

    fn offset(group_id: &str, partition: &TopicPartition, value: Option<OffsetValue>) -> Self {
        GroupRecord {
            key: RecordKey::Offset {
                group_id: group_id.to_string(),
                partition: partition.clone(),
            },
            value: value.map(RecordValue::Offset),
        }
    }

    fn group(group_id: &str, value: Option<GroupMetadataValue>) -> Self {
        GroupRecord {
            key: RecordKey::Group {
                group_id: group_id.to_string(),
            },
            value: value.map(RecordValue::Group),
        }
    }
}

impl From<&CommittedOffset> for OffsetValue {
    fn from(c: &CommittedOffset) -> OffsetValue {
        OffsetValue {
            offset: c.offset,
            leader_epoch: c.leader_epoch,
            metadata: c.metadata.clone(),
            commit_timestamp_ms: c.commit_timestamp_ms,
        }
    }
}

impl From<&OffsetValue> for CommittedOffset {
    fn from(v: &OffsetValue) -> CommittedOffset {
        CommittedOffset {
            offset: v.offset,
            leader_epoch: v.leader_epoch,
            metadata: v.metadata.clone(),
            commit_timestamp_ms: v.commit_timestamp_ms,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Members and groups
// ---------------------------------------------------------------------------------------------

/// One member of a group (Kafka's `MemberMetadata`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    member_id: String,
    group_instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout_ms: i32,
    rebalance_timeout_ms: i32,
    protocols: Vec<Protocol>,
    assignment: Option<Vec<u8>>,
    /// The JoinGroup waiting for the rebalance to end.
    awaiting_join: Option<RequestId>,
    /// The SyncGroup waiting for the leader's.
    awaiting_sync: Option<RequestId>,
    /// When the member's session ends unless it is heard from (ignored while it waits).
    session_deadline_ms: i64,
    /// Order of arrival in the group: the leader falls to the earliest.
    joined_seq: u64,
}

impl Member {
    /// The member id.
    pub fn member_id(&self) -> &str {
        &self.member_id
    }
    /// Its `group.instance.id`.
    pub fn group_instance_id(&self) -> Option<&str> {
        self.group_instance_id.as_deref()
    }
    /// Its client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }
    /// Its session timeout.
    pub fn session_timeout_ms(&self) -> i32 {
        self.session_timeout_ms
    }
    /// Its rebalance timeout.
    pub fn rebalance_timeout_ms(&self) -> i32 {
        self.rebalance_timeout_ms
    }
    /// Its assignment in the current generation, once the leader gave one.
    pub fn assignment(&self) -> Option<&[u8]> {
        self.assignment.as_deref()
    }
    /// Its metadata for protocol `name`.
    pub fn metadata(&self, name: &str) -> Option<&[u8]> {
        self.protocols
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.metadata.as_slice())
    }
    /// Whether a JoinGroup of this member waits for the rebalance.
    pub fn is_awaiting_join(&self) -> bool {
        self.awaiting_join.is_some()
    }
    fn supports(&self, name: &str) -> bool {
        self.protocols.iter().any(|p| p.name == name)
    }
    /// Kafka's `shouldKeepAlive`: a member with a request waiting does not expire.
    fn keeps_alive(&self) -> bool {
        self.awaiting_join.is_some() || self.awaiting_sync.is_some()
    }
}

/// The first rebalance of an Empty group (Kafka's `InitialDelayedJoin`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct InitialDelay {
    /// What remains of the rebalance timeout after the current delay.
    remaining_ms: i64,
    /// A member joined during the current delay: wait once more.
    new_member_added: bool,
}

/// A commit accepted but not yet durable (Kafka's `pendingOffsetCommits`).
#[derive(Clone, Debug, PartialEq, Eq)]
struct PendingCommit {
    seq: u64,
    partition: TopicPartition,
    offset: CommittedOffset,
}

/// One consumer group (Kafka's `GroupMetadata`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Group {
    group_id: String,
    state: GroupState,
    /// Bumped at the end of every rebalance; 0 before the first.
    generation: i32,
    protocol_type: Option<String>,
    protocol_name: Option<String>,
    leader: Option<String>,
    members: BTreeMap<String, Member>,
    /// `group.instance.id` to member id.
    static_members: BTreeMap<String, String>,
    /// KIP-394: ids handed out with MEMBER_ID_REQUIRED, to their expiry.
    pending_members: BTreeMap<String, i64>,
    /// When a PreparingRebalance ends whoever has rejoined.
    join_deadline_ms: Option<i64>,
    initial_delay: Option<InitialDelay>,
    /// When the group entered its state; `None` for a group that never changed state (a group
    /// created by a simple commit).
    state_since_ms: Option<i64>,
    offsets: BTreeMap<TopicPartition, CommittedOffset>,
    /// Where each committed offset was written: its record's position (the sequence number,
    /// or the entry's index in the loaded log). A commit older than the offset it would
    /// replace does not replace it (Kafka's `CommitRecordMetadataAndOffset.olderThan`).
    positions: BTreeMap<TopicPartition, u64>,
    pending_commits: Vec<PendingCommit>,
    /// Offsets committed inside transactions not yet decided, by producer (Kafka's
    /// `pendingTransactionalOffsetCommits`): each with its record's position.
    pending_txn: BTreeMap<ProducerId, BTreeMap<TopicPartition, (u64, CommittedOffset)>>,
    /// The sequence of the last group metadata record written.
    metadata_seq: u64,
    next_joined_seq: u64,
}

/// What a `handle_*` call needs besides the group: settings, time and the outbox.
struct Ctx<'a> {
    config: &'a GroupConfig,
    now_ms: i64,
    out: &'a mut Outbox,
}

/// Records to write and answers to send.
#[derive(Clone, Debug, Default, PartialEq)]
struct Outbox {
    next_seq: u64,
    committed_seq: u64,
    records: Vec<OutRecord>,
    /// Answers waiting for the record of their sequence to be durable.
    held: VecDeque<(u64, RequestId, Response)>,
    ready: Vec<(RequestId, Response)>,
}

impl Outbox {
    fn write(&mut self, record: GroupRecord) -> u64 {
        self.write_in(record, None)
    }

    fn write_in(&mut self, record: GroupRecord, txn: Option<TxnProducer>) -> u64 {
        self.next_seq += 1;
        self.records.push(OutRecord {
            seq: self.next_seq,
            record,
            txn,
        });
        self.next_seq
    }

    /// Sends `response` once record `seq` is durable (at once if it is, or for `seq` 0).
    fn send_after(&mut self, seq: u64, id: RequestId, response: Response) {
        if seq <= self.committed_seq {
            self.ready.push((id, response));
        } else {
            self.held.push_back((seq, id, response));
        }
    }

    fn send(&mut self, id: RequestId, response: Response) {
        self.ready.push((id, response));
    }
}

impl Group {
    fn new(group_id: String) -> Group {
        Group {
            group_id,
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol_name: None,
            leader: None,
            members: BTreeMap::new(),
            static_members: BTreeMap::new(),
            pending_members: BTreeMap::new(),
            join_deadline_ms: None,
            initial_delay: None,
            state_since_ms: None,
            offsets: BTreeMap::new(),
            positions: BTreeMap::new(),
            pending_commits: Vec::new(),
            pending_txn: BTreeMap::new(),
            metadata_seq: 0,
            next_joined_seq: 0,
        }
    }

    /// The group id.
    pub fn group_id(&self) -> &str {
        &self.group_id
    }
    /// Its state.
    pub fn state(&self) -> GroupState {
        self.state
    }
    /// Its generation.
    pub fn generation(&self) -> i32 {
        self.generation
    }
    /// Its protocol type.
    pub fn protocol_type(&self) -> Option<&str> {
        self.protocol_type.as_deref()
    }
    /// The current generation's protocol.
    pub fn protocol_name(&self) -> Option<&str> {
        self.protocol_name.as_deref()
    }
    /// The leader's member id.
    pub fn leader(&self) -> Option<&str> {
        self.leader.as_deref()
    }
    /// The members, by member id.
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.members.values()
    }
    /// The member `member_id`.
    pub fn member(&self, member_id: &str) -> Option<&Member> {
        self.members.get(member_id)
    }
    /// The durable committed offsets.
    pub fn offsets(&self) -> &BTreeMap<TopicPartition, CommittedOffset> {
        &self.offsets
    }
    /// When the group entered its state.
    pub fn state_since_ms(&self) -> Option<i64> {
        self.state_since_ms
    }

    /// Checks the group's invariants; panics naming the one broken.
    pub fn check_invariants(&self) {
        if let Some(leader) = &self.leader {
            assert!(
                self.members.contains_key(leader),
                "group {}: the leader is a member",
                self.group_id
            );
        }
        assert_eq!(
            self.members.is_empty(),
            self.leader.is_none(),
            "group {}: a group with members has a leader, and only then",
            self.group_id
        );
        for (instance, member_id) in &self.static_members {
            let member = self.members.get(member_id);
            assert!(
                member.is_some_and(|m| m.group_instance_id.as_deref() == Some(instance.as_str())),
                "group {}: the static index points at the member with the instance id",
                self.group_id
            );
        }
        let statics = self
            .members
            .values()
            .filter(|m| m.group_instance_id.is_some());
        assert_eq!(
            statics.count(),
            self.static_members.len(),
            "group {}: every static member is indexed once",
            self.group_id
        );
        if self.state == GroupState::Stable {
            assert!(
                self.members.values().all(|m| m.assignment.is_some()),
                "group {}: a Stable group's members all have an assignment",
                self.group_id
            );
        }
        if self.state == GroupState::Empty {
            assert!(
                self.members.is_empty(),
                "group {}: an Empty group has no members",
                self.group_id
            );
        }
        assert_eq!(
            self.state == GroupState::PreparingRebalance,
            self.join_deadline_ms.is_some(),
            "group {}: a join deadline exactly while PreparingRebalance",
            self.group_id
        );
        assert!(self.generation >= 0, "generations are not negative");
    }

    fn transition(&mut self, next: GroupState, now_ms: i64) {
        assert!(
            self.state.may_become(next),
            "group {}: no transition from {:?} to {:?} (Kafka's validPreviousStates)",
            self.group_id,
            self.state,
            next
        );
        self.state = next;
        self.state_since_ms = Some(now_ms);
    }

    fn metadata_value(&self) -> GroupMetadataValue {
        let mut members: Vec<&Member> = self.members.values().collect();
        members.sort_by_key(|m| m.joined_seq);
        let protocol = self.protocol_name.as_deref().unwrap_or("");
        GroupMetadataValue {
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            generation: self.generation,
            protocol_name: self.protocol_name.clone(),
            leader: self.leader.clone(),
            current_state_timestamp_ms: self.state_since_ms.unwrap_or(-1),
            members: members
                .into_iter()
                .map(|m| MemberValue {
                    member_id: m.member_id.clone(),
                    group_instance_id: m.group_instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    session_timeout_ms: m.session_timeout_ms,
                    subscription: m.metadata(protocol).unwrap_or_default().to_vec(),
                    assignment: m.assignment.clone().unwrap_or_default(),
                })
                .collect(),
        }
    }

    /// Writes the group's metadata (Kafka's `storeGroup`).
    fn store(&mut self, out: &mut Outbox) -> u64 {
        let seq = out.write(GroupRecord::group(
            &self.group_id,
            Some(self.metadata_value()),
        ));
        self.metadata_seq = seq;
        seq
    }

    /// Kafka's `supportsProtocols`.
    fn supports_protocols(&self, protocol_type: &str, protocols: &[Protocol]) -> bool {
        if self.members.is_empty() {
            !protocol_type.is_empty() && !protocols.is_empty()
        } else {
            self.protocol_type.as_deref() == Some(protocol_type)
                && protocols
                    .iter()
                    .any(|p| self.members.values().all(|m| m.supports(&p.name)))
        }
    }

    /// Kafka's `selectProtocol`: among the protocols every member supports, each member votes
    /// for the first it lists; the most votes win, ties going to the leader's preference.
    fn select_protocol(&self) -> String {
        let leader = &self.members[self
            .leader
            .as_ref()
            .expect("invariant: members, so a leader")];
        let candidates: Vec<&str> = leader
            .protocols
            .iter()
            .map(|p| p.name.as_str())
            .filter(|name| self.members.values().all(|m| m.supports(name)))
            .collect();
        assert!(
            !candidates.is_empty(),
            "group {}: members share a protocol (supportsProtocols admitted each)",
            self.group_id
        );
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for m in self.members.values() {
            let vote = m
                .protocols
                .iter()
                .map(|p| p.name.as_str())
                .find(|name| candidates.contains(name))
                .expect("invariant: every member supports every candidate");
            *votes.entry(vote).or_default() += 1;
        }
        let best = votes.values().copied().max().unwrap_or(0);
        candidates
            .into_iter()
            .find(|c| votes.get(c) == Some(&best))
            .expect("invariant: the winner is a candidate")
            .to_string()
    }

    fn earliest_member(&self) -> Option<String> {
        self.members
            .values()
            .min_by_key(|m| m.joined_seq)
            .map(|m| m.member_id.clone())
    }

    /// The join answer for `member_id` in the current generation.
    fn join_answer(&self, member_id: &str, leader_shown: Option<&str>) -> JoinResponse {
        let protocol = self.protocol_name.clone().unwrap_or_default();
        let leader = leader_shown.or(self.leader.as_deref()).unwrap_or("");
        let members = if leader == member_id {
            let mut ms: Vec<&Member> = self.members.values().collect();
            ms.sort_by_key(|m| m.joined_seq);
            ms.into_iter()
                .map(|m| JoinMember {
                    member_id: m.member_id.clone(),
                    group_instance_id: m.group_instance_id.clone(),
                    metadata: m.metadata(&protocol).unwrap_or_default().to_vec(),
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinResponse {
            error_code: code::NONE,
            generation_id: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            leader: leader.to_string(),
            member_id: member_id.to_string(),
            members,
        }
    }

    /// Kafka's `validateCurrentMember`.
    fn validate_member(&self, member_id: &str, instance: Option<&str>) -> Result<(), ErrorCode> {
        if let Some(instance) = instance {
            if let Some(holder) = self.static_members.get(instance) {
                if holder != member_id {
                    return Err(code::FENCED_INSTANCE_ID);
                }
            }
        }
        if !self.members.contains_key(member_id) {
            return Err(code::UNKNOWN_MEMBER_ID);
        }
        Ok(())
    }

    fn join(
        &mut self,
        ctx: &mut Ctx,
        id: RequestId,
        req: JoinRequest,
        new_id: impl FnOnce(&Group) -> String,
    ) -> Reply<JoinResponse> {
        let fail =
            |error, member_id: &str| Reply::Now(JoinResponse::error(error, member_id.to_string()));
        if self.state == GroupState::Dead {
            return fail(code::COORDINATOR_NOT_AVAILABLE, &req.member_id);
        }
        if !self.supports_protocols(&req.protocol_type, &req.protocols) {
            return fail(code::INCONSISTENT_GROUP_PROTOCOL, &req.member_id);
        }
        if req.member_id.is_empty() {
            let member_id = new_id(self);
            return match req.group_instance_id.clone() {
                Some(instance) => match self.static_members.get(&instance).cloned() {
                    Some(old) => self.replace_static_member(ctx, id, old, member_id, req),
                    None => self.add_member_and_rebalance(ctx, id, member_id, req),
                },
                None if req.require_known_member_id => {
                    let deadline = ctx.now_ms + i64::from(req.session_timeout_ms);
                    self.pending_members.insert(member_id.clone(), deadline);
                    fail(code::MEMBER_ID_REQUIRED, &member_id)
                }
                None => self.add_member_and_rebalance(ctx, id, member_id, req),
            };
        }
        if self.pending_members.contains_key(&req.member_id) {
            let member_id = req.member_id.clone();
            return self.add_member_and_rebalance(ctx, id, member_id, req);
        }
        if let Err(error) = self.validate_member(&req.member_id, req.group_instance_id.as_deref()) {
            return fail(error, &req.member_id);
        }
        let member = &self.members[&req.member_id];
        let same_protocols = member.protocols == req.protocols;
        let is_leader = self.leader.as_deref() == Some(req.member_id.as_str());
        match self.state {
            GroupState::PreparingRebalance => self.update_member_and_rebalance(ctx, id, req),
            GroupState::CompletingRebalance if same_protocols => {
                // The member lost its join answer: give it again (Kafka does the same).
                let answer = self.join_answer(&req.member_id, None);
                self.touch(&req.member_id, ctx.now_ms);
                Reply::Now(answer)
            }
            GroupState::Stable if same_protocols && !is_leader => {
                let answer = self.join_answer(&req.member_id, None);
                self.touch(&req.member_id, ctx.now_ms);
                Reply::Now(answer)
            }
            GroupState::CompletingRebalance | GroupState::Stable => {
                self.update_member_and_rebalance(ctx, id, req)
            }
            GroupState::Empty | GroupState::Dead => fail(code::UNKNOWN_MEMBER_ID, &req.member_id),
        }
    }

    /// Resets a member's session (Kafka's `completeAndScheduleNextHeartbeatExpiration`).
    fn touch(&mut self, member_id: &str, now_ms: i64) {
        if let Some(m) = self.members.get_mut(member_id) {
            m.session_deadline_ms = now_ms + i64::from(m.session_timeout_ms);
        }
    }

    /// Sets a member's waiting JoinGroup, answering one it supersedes.
    fn await_join(&mut self, ctx: &mut Ctx, member_id: &str, id: RequestId) {
        let m = self
            .members
            .get_mut(member_id)
            .expect("caller checked membership");
        if let Some(old) = m.awaiting_join.replace(id) {
            if old != id {
                let error = JoinResponse::error(code::REBALANCE_IN_PROGRESS, member_id.to_string());
                ctx.out.send(old, Response::Join(error));
            }
        }
    }

    fn add_member_and_rebalance(
        &mut self,
        ctx: &mut Ctx,
        id: RequestId,
        member_id: String,
        req: JoinRequest,
    ) -> Reply<JoinResponse> {
        if self.members.is_empty() {
            self.protocol_type = Some(req.protocol_type.clone());
        }
        self.pending_members.remove(&member_id);
        self.next_joined_seq += 1;
        let member = Member {
            member_id: member_id.clone(),
            group_instance_id: req.group_instance_id.clone(),
            client_id: req.client_id,
            client_host: req.client_host,
            session_timeout_ms: req.session_timeout_ms,
            rebalance_timeout_ms: req.rebalance_timeout_ms,
            protocols: req.protocols,
            assignment: None,
            awaiting_join: Some(id),
            awaiting_sync: None,
            session_deadline_ms: ctx.now_ms + i64::from(req.session_timeout_ms),
            joined_seq: self.next_joined_seq,
        };
        if let Some(instance) = &req.group_instance_id {
            self.static_members
                .insert(instance.clone(), member_id.clone());
        }
        self.members.insert(member_id.clone(), member);
        if self.leader.is_none() {
            self.leader = Some(member_id);
        }
        if let Some(delay) = self.initial_delay.as_mut() {
            delay.new_member_added = true;
        }
        self.maybe_prepare_rebalance(ctx);
        self.try_complete_join(ctx);
        Reply::Pending
    }

    fn update_member_and_rebalance(
        &mut self,
        ctx: &mut Ctx,
        id: RequestId,
        req: JoinRequest,
    ) -> Reply<JoinResponse> {
        let m = self
            .members
            .get_mut(&req.member_id)
            .expect("caller checked membership");
        m.protocols = req.protocols;
        m.session_timeout_ms = req.session_timeout_ms;
        m.rebalance_timeout_ms = req.rebalance_timeout_ms;
        self.await_join(ctx, &req.member_id, id);
        self.maybe_prepare_rebalance(ctx);
        self.try_complete_join(ctx);
        Reply::Pending
    }

    /// KIP-345: a static member rejoins without its member id; the new id replaces the old
    /// one (Kafka's `updateStaticMemberAndRebalance`).
    fn replace_static_member(
        &mut self,
        ctx: &mut Ctx,
        id: RequestId,
        old_id: String,
        new_id: String,
        req: JoinRequest,
    ) -> Reply<JoinResponse> {
        let leader_before = self.leader.clone();
        let mut member = self
            .members
            .remove(&old_id)
            .expect("invariant: the static index points at a member");
        if let Some(old) = member.awaiting_join.take() {
            let error = JoinResponse::error(code::FENCED_INSTANCE_ID, old_id.clone());
            ctx.out.send(old, Response::Join(error));
        }
        if let Some(old) = member.awaiting_sync.take() {
            ctx.out.send(
                old,
                Response::Sync(SyncResponse::error(code::FENCED_INSTANCE_ID)),
            );
        }
        member.member_id = new_id.clone();
        member.protocols = req.protocols;
        member.session_timeout_ms = req.session_timeout_ms;
        member.rebalance_timeout_ms = req.rebalance_timeout_ms;
        member.session_deadline_ms = ctx.now_ms + i64::from(req.session_timeout_ms);
        let instance = req.group_instance_id.expect("static join");
        self.static_members.insert(instance, new_id.clone());
        self.members.insert(new_id.clone(), member);
        if self.leader.as_deref() == Some(old_id.as_str()) {
            self.leader = Some(new_id.clone());
        }
        match self.state {
            GroupState::Stable
                if self.protocol_name.as_deref() == Some(self.select_protocol().as_str()) =>
            {
                // No rebalance: persist the new member id, then answer with the current
                // generation. The leader shown is the one before the replacement, so that a
                // rejoining static leader does not compute a new assignment (KIP-345).
                let seq = self.store(ctx.out);
                let answer = self.join_answer(&new_id, leader_before.as_deref());
                ctx.out.send_after(seq, id, Response::Join(answer));
                Reply::Pending
            }
            GroupState::Stable
            | GroupState::CompletingRebalance
            | GroupState::PreparingRebalance => {
                self.await_join(ctx, &new_id, id);
                self.maybe_prepare_rebalance(ctx);
                self.try_complete_join(ctx);
                Reply::Pending
            }
            GroupState::Empty | GroupState::Dead => {
                unreachable!("a group with a static member has members")
            }
        }
    }

    fn maybe_prepare_rebalance(&mut self, ctx: &mut Ctx) {
        if matches!(
            self.state,
            GroupState::Stable | GroupState::CompletingRebalance | GroupState::Empty
        ) {
            self.prepare_rebalance(ctx);
        }
    }

    /// Kafka's `prepareRebalance`.
    fn prepare_rebalance(&mut self, ctx: &mut Ctx) {
        if self.state == GroupState::CompletingRebalance {
            for m in self.members.values_mut() {
                m.assignment = None;
                if let Some(waiting) = m.awaiting_sync.take() {
                    let error = SyncResponse::error(code::REBALANCE_IN_PROGRESS);
                    ctx.out.send(waiting, Response::Sync(error));
                }
            }
        }
        let rebalance_timeout_ms = self
            .members
            .values()
            .map(|m| i64::from(m.rebalance_timeout_ms))
            .max()
            .unwrap_or(0);
        let delay_ms = ctx.config.initial_rebalance_delay_ms;
        if self.state == GroupState::Empty && delay_ms > 0 {
            self.join_deadline_ms = Some(ctx.now_ms + delay_ms);
            self.initial_delay = Some(InitialDelay {
                remaining_ms: (rebalance_timeout_ms - delay_ms).max(0),
                new_member_added: false,
            });
        } else {
            self.join_deadline_ms = Some(ctx.now_ms + rebalance_timeout_ms);
            self.initial_delay = None;
        }
        self.transition(GroupState::PreparingRebalance, ctx.now_ms);
    }

    /// Kafka's `DelayedJoin.tryComplete`: every member rejoined and no KIP-394 member is
    /// still expected. The initial delay never completes early.
    fn try_complete_join(&mut self, ctx: &mut Ctx) {
        if self.state == GroupState::PreparingRebalance
            && self.initial_delay.is_none()
            && self.pending_members.is_empty()
            && self.members.values().all(|m| m.awaiting_join.is_some())
        {
            self.complete_join(ctx);
        }
    }

    /// The join deadline passed.
    fn on_join_deadline(&mut self, ctx: &mut Ctx) {
        if let Some(delay) = self.initial_delay {
            if delay.new_member_added && delay.remaining_ms > 0 {
                let next_ms = ctx
                    .config
                    .initial_rebalance_delay_ms
                    .min(delay.remaining_ms);
                self.initial_delay = Some(InitialDelay {
                    remaining_ms: (delay.remaining_ms - next_ms).max(0),
                    new_member_added: false,
                });
                self.join_deadline_ms = Some(ctx.now_ms + next_ms);
                return;
            }
        }
        self.complete_join(ctx);
    }

    /// Kafka's `onCompleteJoin`: members that did not rejoin are removed, the generation
    /// bumps, and each rejoined member gets its answer (the leader with every member's metadata).
    fn complete_join(&mut self, ctx: &mut Ctx) {
        let gone: Vec<String> = self
            .members
            .values()
            .filter(|m| m.awaiting_join.is_none())
            .map(|m| m.member_id.clone())
            .collect();
        for member_id in gone {
            self.remove_member_only(ctx, &member_id);
        }
        self.join_deadline_ms = None;
        self.initial_delay = None;
        self.generation += 1;
        if self.members.is_empty() {
            self.protocol_name = None;
            self.transition(GroupState::Empty, ctx.now_ms);
            self.store(ctx.out);
            return;
        }
        self.protocol_name = Some(self.select_protocol());
        self.transition(GroupState::CompletingRebalance, ctx.now_ms);
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for member_id in ids {
            let answer = self.join_answer(&member_id, None);
            let m = self.members.get_mut(&member_id).expect("listed above");
            let waiting = m
                .awaiting_join
                .take()
                .expect("every remaining member rejoined");
            m.session_deadline_ms = ctx.now_ms + i64::from(m.session_timeout_ms);
            ctx.out.send(waiting, Response::Join(answer));
        }
    }

    /// Removes a member, answering what it waits for with UNKNOWN_MEMBER_ID and moving the
    /// leadership to the earliest member left. No state change.
    fn remove_member_only(&mut self, ctx: &mut Ctx, member_id: &str) {
        let Some(mut m) = self.members.remove(member_id) else {
            return;
        };
        if let Some(waiting) = m.awaiting_join.take() {
            let error = JoinResponse::error(code::UNKNOWN_MEMBER_ID, member_id.to_string());
            ctx.out.send(waiting, Response::Join(error));
        }
        if let Some(waiting) = m.awaiting_sync.take() {
            ctx.out.send(
                waiting,
                Response::Sync(SyncResponse::error(code::UNKNOWN_MEMBER_ID)),
            );
        }
        if let Some(instance) = &m.group_instance_id {
            self.static_members.remove(instance);
        }
        if self.leader.as_deref() == Some(member_id) {
            self.leader = self.earliest_member();
        }
    }

    /// Kafka's `removeMemberAndUpdateGroup`: leave or session expiry.
    fn remove_member(&mut self, ctx: &mut Ctx, member_id: &str) {
        self.remove_member_only(ctx, member_id);
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                // Kafka's prepareRebalance tries to complete the join at once: with the last
                // member gone the group empties right away.
                self.maybe_prepare_rebalance(ctx);
                self.try_complete_join(ctx);
            }
            GroupState::PreparingRebalance => self.try_complete_join(ctx),
            GroupState::Empty | GroupState::Dead => {}
        }
    }

    fn sync(&mut self, ctx: &mut Ctx, id: RequestId, req: SyncRequest) -> Reply<SyncResponse> {
        let fail = |error| Reply::Now(SyncResponse::error(error));
        if self.state == GroupState::Dead {
            return fail(code::COORDINATOR_NOT_AVAILABLE);
        }
        if let Err(error) = self.validate_member(&req.member_id, req.group_instance_id.as_deref()) {
            return fail(error);
        }
        if req.generation_id != self.generation {
            return fail(code::ILLEGAL_GENERATION);
        }
        let type_differs = req
            .protocol_type
            .as_ref()
            .is_some_and(|t| Some(t) != self.protocol_type.as_ref());
        let name_differs = req
            .protocol_name
            .as_ref()
            .is_some_and(|n| Some(n) != self.protocol_name.as_ref());
        if type_differs || name_differs {
            return fail(code::INCONSISTENT_GROUP_PROTOCOL);
        }
        match self.state {
            GroupState::Empty | GroupState::Dead => fail(code::UNKNOWN_MEMBER_ID),
            GroupState::PreparingRebalance => fail(code::REBALANCE_IN_PROGRESS),
            GroupState::CompletingRebalance => {
                self.touch(&req.member_id, ctx.now_ms);
                let m = self.members.get_mut(&req.member_id).expect("validated");
                if let Some(old) = m.awaiting_sync.replace(id) {
                    if old != id {
                        let error = SyncResponse::error(code::REBALANCE_IN_PROGRESS);
                        ctx.out.send(old, Response::Sync(error));
                    }
                }
                if self.leader.as_deref() == Some(req.member_id.as_str()) {
                    let mut given: BTreeMap<String, Vec<u8>> =
                        req.assignments.into_iter().collect();
                    for m in self.members.values_mut() {
                        m.assignment = Some(given.remove(&m.member_id).unwrap_or_default());
                    }
                    self.transition(GroupState::Stable, ctx.now_ms);
                    let seq = self.store(ctx.out);
                    let ids: Vec<String> = self.members.keys().cloned().collect();
                    for member_id in ids {
                        let answer = self.sync_answer(&member_id);
                        let m = self.members.get_mut(&member_id).expect("listed above");
                        if let Some(waiting) = m.awaiting_sync.take() {
                            m.session_deadline_ms = ctx.now_ms + i64::from(m.session_timeout_ms);
                            ctx.out.send_after(seq, waiting, Response::Sync(answer));
                        }
                    }
                }
                Reply::Pending
            }
            GroupState::Stable => {
                self.touch(&req.member_id, ctx.now_ms);
                let answer = self.sync_answer(&req.member_id);
                if self.metadata_seq <= ctx.out.committed_seq {
                    Reply::Now(answer)
                } else {
                    ctx.out
                        .send_after(self.metadata_seq, id, Response::Sync(answer));
                    Reply::Pending
                }
            }
        }
    }

    fn sync_answer(&self, member_id: &str) -> SyncResponse {
        SyncResponse {
            error_code: code::NONE,
            protocol_type: self.protocol_type.clone(),
            protocol_name: self.protocol_name.clone(),
            assignment: self.members[member_id]
                .assignment
                .clone()
                .unwrap_or_default(),
        }
    }

    fn heartbeat(&mut self, now_ms: i64, req: &HeartbeatRequest) -> ErrorCode {
        if self.state == GroupState::Dead {
            return code::COORDINATOR_NOT_AVAILABLE;
        }
        if let Err(error) = self.validate_member(&req.member_id, req.group_instance_id.as_deref()) {
            return error;
        }
        if req.generation_id != self.generation {
            return code::ILLEGAL_GENERATION;
        }
        match self.state {
            GroupState::Empty | GroupState::Dead => code::UNKNOWN_MEMBER_ID,
            GroupState::CompletingRebalance | GroupState::Stable => {
                self.touch(&req.member_id, now_ms);
                code::NONE
            }
            GroupState::PreparingRebalance => {
                self.touch(&req.member_id, now_ms);
                code::REBALANCE_IN_PROGRESS
            }
        }
    }

    fn leave(&mut self, ctx: &mut Ctx, leaving: &LeavingMember) -> ErrorCode {
        let member_id = match &leaving.group_instance_id {
            Some(instance) => match self.static_members.get(instance) {
                None => return code::UNKNOWN_MEMBER_ID,
                Some(holder) if !leaving.member_id.is_empty() && *holder != leaving.member_id => {
                    return code::FENCED_INSTANCE_ID;
                }
                Some(holder) => holder.clone(),
            },
            None => {
                if self.pending_members.remove(&leaving.member_id).is_some() {
                    self.try_complete_join(ctx);
                    return code::NONE;
                }
                if !self.members.contains_key(&leaving.member_id) {
                    return code::UNKNOWN_MEMBER_ID;
                }
                leaving.member_id.clone()
            }
        };
        self.remove_member(ctx, &member_id);
        code::NONE
    }

    /// Time-driven work: KIP-394 pending members and sessions expire, the join deadline fires.
    fn poll(&mut self, ctx: &mut Ctx) {
        let now = ctx.now_ms;
        let before = self.pending_members.len();
        self.pending_members.retain(|_, deadline| *deadline > now);
        if self.pending_members.len() != before {
            self.try_complete_join(ctx);
        }
        let expired: Vec<String> = self
            .members
            .values()
            .filter(|m| !m.keeps_alive() && m.session_deadline_ms <= now)
            .map(|m| m.member_id.clone())
            .collect();
        for member_id in expired {
            self.remove_member(ctx, &member_id);
        }
        if self.join_deadline_ms.is_some_and(|d| d <= now) {
            self.on_join_deadline(ctx);
        }
    }

    fn next_deadline_ms(&self) -> Option<i64> {
        let sessions = self
            .members
            .values()
            .filter(|m| !m.keeps_alive())
            .map(|m| m.session_deadline_ms);
        sessions
            .chain(self.pending_members.values().copied())
            .chain(self.join_deadline_ms)
            .min()
    }

    fn commit(
        &mut self,
        ctx: &mut Ctx,
        id: RequestId,
        req: OffsetCommitRequest,
    ) -> Reply<OffsetCommitResponse> {
        let all = |error: ErrorCode, req: &OffsetCommitRequest| {
            Reply::Now(OffsetCommitResponse {
                partitions: req
                    .partitions
                    .iter()
                    .map(|p| (p.partition.clone(), error))
                    .collect(),
            })
        };
        if self.state == GroupState::Dead {
            return all(code::COORDINATOR_NOT_AVAILABLE, &req);
        }
        // Kafka's validateOffsetCommit.
        if req.generation_id >= 0 || !req.member_id.is_empty() || req.group_instance_id.is_some() {
            if let Err(error) =
                self.validate_member(&req.member_id, req.group_instance_id.as_deref())
            {
                return all(error, &req);
            }
            if req.generation_id != self.generation {
                return all(code::ILLEGAL_GENERATION, &req);
            }
        } else if self.state != GroupState::Empty {
            // A non-empty group takes commits only from its members.
            return all(code::UNKNOWN_MEMBER_ID, &req);
        }
        if self.state == GroupState::CompletingRebalance {
            return all(code::REBALANCE_IN_PROGRESS, &req);
        }
        if !req.member_id.is_empty() {
            self.touch(&req.member_id, ctx.now_ms);
        }
        let mut answers = Vec::with_capacity(req.partitions.len());
        let mut last_seq = 0;
        for p in req.partitions {
            let metadata = p.metadata.unwrap_or_default();
            if metadata.len() > ctx.config.offset_metadata_bytes_max {
                answers.push((p.partition, code::OFFSET_METADATA_TOO_LARGE));
                continue;
            }
            let offset = CommittedOffset {
                offset: p.offset,
                leader_epoch: p.leader_epoch,
                metadata,
                commit_timestamp_ms: ctx.now_ms,
            };
            let record = GroupRecord::offset(&self.group_id, &p.partition, Some((&offset).into()));
            last_seq = ctx.out.write(record);
            self.pending_commits.push(PendingCommit {
                seq: last_seq,
                partition: p.partition.clone(),
                offset,
            });
            answers.push((p.partition, code::NONE));
        }
        let response = OffsetCommitResponse {
            partitions: answers,
        };
        if last_seq == 0 {
            return Reply::Now(response);
        }
        if crate::planted::active(crate::planted::Bug::CommitBeforeDurable) {
            self.commits_durable(last_seq);
            return Reply::Now(response);
        }
        ctx.out
            .send_after(last_seq, id, Response::OffsetCommit(response));
        Reply::Pending
    }

    /// Applies the commits whose records are durable up to `seq`.
    fn commits_durable(&mut self, seq: u64) {
        let split = self.pending_commits.partition_point(|c| c.seq <= seq);
        let durable: Vec<PendingCommit> = self.pending_commits.drain(..split).collect();
        for c in durable {
            self.set_offset(c.partition, c.offset, c.seq);
        }
    }

    /// Sets the committed offset of `tp` written at `position`, unless the one it holds was
    /// written later.
    fn set_offset(&mut self, tp: TopicPartition, offset: CommittedOffset, position: u64) {
        if self.positions.get(&tp).is_some_and(|&p| p > position) {
            return;
        }
        self.positions.insert(tp.clone(), position);
        self.offsets.insert(tp, offset);
    }

    /// The topics the members subscribe to, from their `consumer` protocol metadata (Kafka's
    /// ConsumerProtocolSubscription: a version, then an array of topic names); `None` if the
    /// group does not use the `consumer` protocol type or a member's metadata does not parse.
    fn subscribed_topics(&self) -> Option<BTreeSet<String>> {
        if self.protocol_type.as_deref() != Some("consumer") {
            return None;
        }
        let protocol = self.protocol_name.as_deref()?;
        let mut topics = BTreeSet::new();
        for member in self.members.values() {
            topics.extend(subscription_topics(member.metadata(protocol)?)?);
        }
        Some(topics)
    }

    fn remove_offset(&mut self, tp: &TopicPartition) {
        self.offsets.remove(tp);
        self.positions.remove(tp);
    }

    /// Whether a commit of `tp` is not decided yet: one in flight, or one inside an open
    /// transaction (Kafka's `hasPendingOffsetCommitsForTopicPartition`).
    fn has_pending(&self, tp: &TopicPartition) -> bool {
        self.pending_commits.iter().any(|c| &c.partition == tp)
            || self.pending_txn.values().any(|m| m.contains_key(tp))
    }

    /// TxnOffsetCommit (Kafka's `doTxnCommitOffsets`): validated as Kafka's
    /// `validateOffsetCommit` with `isTransactional`, which unlike OffsetCommit accepts a
    /// commit without member from a non-empty group (v0-2 carry no member) and does not look
    /// at the group's state. The offsets are held pending for the producer until its marker.
    fn txn_commit(
        &mut self,
        ctx: &mut Ctx,
        id: RequestId,
        req: TxnOffsetCommitRequest,
    ) -> Reply<OffsetCommitResponse> {
        let all = |error: ErrorCode, req: &TxnOffsetCommitRequest| {
            Reply::Now(OffsetCommitResponse {
                partitions: req
                    .partitions
                    .iter()
                    .map(|p| (p.partition.clone(), error))
                    .collect(),
            })
        };
        if self.state == GroupState::Dead {
            return all(code::COORDINATOR_NOT_AVAILABLE, &req);
        }
        let outside = req.generation_id < 0 && self.state == GroupState::Empty;
        let as_member =
            req.generation_id >= 0 || !req.member_id.is_empty() || req.group_instance_id.is_some();
        if !outside && as_member {
            if let Err(error) =
                self.validate_member(&req.member_id, req.group_instance_id.as_deref())
            {
                return all(error, &req);
            }
            if req.generation_id != self.generation {
                return all(code::ILLEGAL_GENERATION, &req);
            }
        }
        let mut answers = Vec::with_capacity(req.partitions.len());
        let mut last_seq = 0;
        for p in req.partitions {
            let metadata = p.metadata.unwrap_or_default();
            if metadata.len() > ctx.config.offset_metadata_bytes_max {
                answers.push((p.partition, code::OFFSET_METADATA_TOO_LARGE));
                continue;
            }
            let offset = CommittedOffset {
                offset: p.offset,
                leader_epoch: p.leader_epoch,
                metadata,
                commit_timestamp_ms: ctx.now_ms,
            };
            let record = GroupRecord::offset(&self.group_id, &p.partition, Some((&offset).into()));
            last_seq = ctx.out.write_in(record, Some(req.producer));
            self.pending_txn
                .entry(req.producer.producer_id)
                .or_default()
                .insert(p.partition.clone(), (last_seq, offset));
            answers.push((p.partition, code::NONE));
        }
        let response = OffsetCommitResponse {
            partitions: answers,
        };
        if last_seq == 0 {
            return Reply::Now(response);
        }
        ctx.out
            .send_after(last_seq, id, Response::OffsetCommit(response));
        Reply::Pending
    }

    /// The marker of `producer_id`'s transaction is durable: on COMMIT its pending offsets
    /// become the committed ones (each unless a later commit replaced it), on ABORT they are
    /// dropped (Kafka's `completePendingTxnOffsetCommit`).
    fn complete_txn(&mut self, producer_id: ProducerId, commit: bool) {
        let Some(pending) = self.pending_txn.remove(&producer_id) else {
            return;
        };
        if commit {
            for (tp, (position, offset)) in pending {
                self.set_offset(tp, offset, position);
            }
        }
    }

    /// Kafka's offset expiry (KIP-211): an Empty group's offsets expire `offsets_retention_ms`
    /// after it became Empty; a group without protocol type (only simple commits) expires each
    /// offset that long after its commit; a group with members keeps its offsets. A partition
    /// with a commit in flight is kept. Returns whether the group is now Dead (Empty, no offsets).
    fn expire_offsets(&mut self, ctx: &mut Ctx) -> bool {
        let retention = ctx.config.offsets_retention_ms;
        let base = |c: &CommittedOffset| -> Option<i64> {
            match (&self.protocol_type, self.state) {
                (None, _) => Some(c.commit_timestamp_ms),
                (Some(_), GroupState::Empty) => {
                    Some(self.state_since_ms.unwrap_or(c.commit_timestamp_ms))
                }
                _ => None,
            }
        };
        let in_flight: BTreeSet<&TopicPartition> =
            self.pending_commits.iter().map(|c| &c.partition).collect();
        let expired: Vec<TopicPartition> = self
            .offsets
            .iter()
            .filter(|(tp, c)| {
                !in_flight.contains(tp)
                    && base(c).is_some_and(|b| b.saturating_add(retention) <= ctx.now_ms)
            })
            .map(|(tp, _)| tp.clone())
            .collect();
        for tp in expired {
            self.remove_offset(&tp);
            ctx.out
                .write(GroupRecord::offset(&self.group_id, &tp, None));
        }
        if self.state == GroupState::Empty
            && self.offsets.is_empty()
            && self.pending_commits.is_empty()
            && self.pending_txn.is_empty()
        {
            self.transition(GroupState::Dead, ctx.now_ms);
            ctx.out.write(GroupRecord::group(&self.group_id, None));
            return true;
        }
        false
    }

    fn describe(&self) -> DescribedGroup {
        let stable = self.state == GroupState::Stable;
        let protocol = self.protocol_name.clone().unwrap_or_default();
        let mut members: Vec<&Member> = self.members.values().collect();
        members.sort_by_key(|m| m.joined_seq);
        DescribedGroup {
            group_id: self.group_id.clone(),
            error_code: code::NONE,
            state: self.state.name().to_string(),
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            protocol_name: if stable {
                protocol.clone()
            } else {
                String::new()
            },
            members: members
                .into_iter()
                .map(|m| DescribedMember {
                    member_id: m.member_id.clone(),
                    group_instance_id: m.group_instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: if stable {
                        m.metadata(&protocol).unwrap_or_default().to_vec()
                    } else {
                        Vec::new()
                    },
                    assignment: if stable {
                        m.assignment.clone().unwrap_or_default()
                    } else {
                        Vec::new()
                    },
                })
                .collect(),
        }
    }

    /// Every request waiting on this group, answered with `error`.
    fn drain_waiting(&mut self, error: ErrorCode, into: &mut Vec<(RequestId, Response)>) {
        for m in self.members.values_mut() {
            if let Some(id) = m.awaiting_join.take() {
                into.push((
                    id,
                    Response::Join(JoinResponse::error(error, m.member_id.clone())),
                ));
            }
            if let Some(id) = m.awaiting_sync.take() {
                into.push((id, Response::Sync(SyncResponse::error(error))));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The coordinator
// ---------------------------------------------------------------------------------------------

/// Every group of one `__consumer_offsets` partition. See the module doc for the drain order.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupCoordinator {
    config: GroupConfig,
    member_id_prefix: String,
    next_member_id: u64,
    groups: BTreeMap<String, Group>,
    out: Outbox,
    next_expiry_ms: i64,
}

impl GroupCoordinator {
    /// An empty coordinator. `member_id_prefix` makes the member ids it generates unique across
    /// coordinators: give each incarnation a distinct one (e.g. broker id and the partition's
    /// leader epoch).
    pub fn new(config: GroupConfig, member_id_prefix: impl Into<String>, now_ms: i64) -> Self {
        GroupCoordinator {
            next_expiry_ms: now_ms + config.offsets_retention_check_interval_ms,
            config,
            member_id_prefix: member_id_prefix.into(),
            next_member_id: 0,
            groups: BTreeMap::new(),
            out: Outbox::default(),
        }
    }

    /// A coordinator rebuilt from the durable entries of its partition, in log order (Kafka's
    /// `GroupMetadataManager.loadGroupsAndOffsets`): the last value per key wins, tombstones
    /// delete. A group with members is Stable, without is Empty; every member's session starts
    /// at `now_ms`. The records count as durable: nothing loaded is written again.
    ///
    /// Transactions: an offset record inside a producer's transaction is held pending for the
    /// producer; its COMMIT marker makes it the committed offset (unless an offset written
    /// after it is there), its ABORT marker drops it, and one with no marker yet stays pending
    /// for [`GroupCoordinator::complete_txn`]. A group's tombstone drops its pending offsets.
    /// Live commits are numbered after the loaded entries, so that positions stay ordered.
    pub fn load(
        config: GroupConfig,
        member_id_prefix: impl Into<String>,
        now_ms: i64,
        entries: impl IntoIterator<Item = impl Into<LogEntry>>,
    ) -> Result<Self, RecordError> {
        let mut coordinator = GroupCoordinator::new(config, member_id_prefix, now_ms);
        let mut position = 0;
        for entry in entries {
            position += 1;
            match entry.into() {
                LogEntry::Record(record) => coordinator.replay(record, None, position, now_ms)?,
                LogEntry::Txn {
                    producer_id,
                    record,
                } => coordinator.replay(record, Some(producer_id), position, now_ms)?,
                LogEntry::Marker {
                    producer_id,
                    commit,
                } => coordinator.complete_txn(producer_id, commit),
            }
        }
        coordinator.out.next_seq = position;
        coordinator.out.committed_seq = position;
        for group in coordinator.groups.values() {
            group.check_invariants();
        }
        Ok(coordinator)
    }

    fn replay(
        &mut self,
        record: GroupRecord,
        txn: Option<ProducerId>,
        position: u64,
        now_ms: i64,
    ) -> Result<(), RecordError> {
        match (record.key, record.value) {
            (
                RecordKey::Offset {
                    group_id,
                    partition,
                },
                value,
            ) => {
                let group = self
                    .groups
                    .entry(group_id.clone())
                    .or_insert_with(|| Group::new(group_id));
                match (value, txn) {
                    (Some(RecordValue::Offset(v)), None) => {
                        group.positions.insert(partition.clone(), position);
                        group.offsets.insert(partition, (&v).into());
                    }
                    (Some(RecordValue::Offset(v)), Some(producer_id)) => {
                        group
                            .pending_txn
                            .entry(producer_id)
                            .or_default()
                            .insert(partition, (position, (&v).into()));
                    }
                    (None, None) => group.remove_offset(&partition),
                    (None, Some(producer_id)) => {
                        if let Some(pending) = group.pending_txn.get_mut(&producer_id) {
                            pending.remove(&partition);
                        }
                    }
                    (Some(RecordValue::Group(_)), _) => return Err(RecordError::KindMismatch),
                }
            }
            (RecordKey::Group { group_id }, None) => {
                if let Some(group) = self.groups.get(&group_id) {
                    if group.offsets.is_empty() {
                        self.groups.remove(&group_id);
                    } else {
                        // Kafka writes offset tombstones before the group's; keep the offsets
                        // as a simple group rather than lose them.
                        let mut fresh = Group::new(group_id.clone());
                        fresh.offsets = group.offsets.clone();
                        fresh.positions = group.positions.clone();
                        self.groups.insert(group_id, fresh);
                    }
                }
            }
            (RecordKey::Group { group_id }, Some(RecordValue::Group(v))) => {
                let old = self.groups.remove(&group_id);
                let mut group = Self::group_from_value(group_id.clone(), v, now_ms)?;
                if let Some(old) = old {
                    group.offsets = old.offsets;
                    group.positions = old.positions;
                    group.pending_txn = old.pending_txn;
                }
                self.groups.insert(group_id, group);
            }
            (RecordKey::Group { .. }, Some(RecordValue::Offset(_))) => {
                return Err(RecordError::KindMismatch)
            }
        }
        Ok(())
    }

    fn group_from_value(
        group_id: String,
        v: GroupMetadataValue,
        now_ms: i64,
    ) -> Result<Group, RecordError> {
        let invalid = |detail: &str| RecordError::InvalidGroup {
            group_id: group_id.clone(),
            detail: detail.to_string(),
        };
        let mut g = Group::new(group_id.clone());
        g.generation = v.generation;
        g.protocol_type = (!v.protocol_type.is_empty()).then_some(v.protocol_type);
        g.protocol_name = v.protocol_name;
        g.leader = v.leader;
        g.state_since_ms =
            (v.current_state_timestamp_ms >= 0).then_some(v.current_state_timestamp_ms);
        g.state = if v.members.is_empty() {
            GroupState::Empty
        } else {
            GroupState::Stable
        };
        let protocol = g.protocol_name.clone().unwrap_or_default();
        for m in v.members {
            g.next_joined_seq += 1;
            if let Some(instance) = &m.group_instance_id {
                if g.static_members
                    .insert(instance.clone(), m.member_id.clone())
                    .is_some()
                {
                    return Err(invalid("an instance id held by two members"));
                }
            }
            let member = Member {
                member_id: m.member_id.clone(),
                group_instance_id: m.group_instance_id,
                client_id: m.client_id,
                client_host: m.client_host,
                session_timeout_ms: m.session_timeout_ms,
                rebalance_timeout_ms: m.rebalance_timeout_ms,
                protocols: vec![Protocol {
                    name: protocol.clone(),
                    metadata: m.subscription,
                }],
                assignment: Some(m.assignment),
                awaiting_join: None,
                awaiting_sync: None,
                session_deadline_ms: now_ms + i64::from(m.session_timeout_ms),
                joined_seq: g.next_joined_seq,
            };
            if g.members.insert(m.member_id, member).is_some() {
                return Err(invalid("a member id twice"));
            }
        }
        let leader_ok = match &g.leader {
            Some(l) => g.members.contains_key(l),
            None => g.members.is_empty(),
        };
        if !leader_ok
            || g.generation < 0
            || (g.state == GroupState::Stable && g.protocol_name.is_none())
        {
            return Err(invalid(
                "leader, generation or protocol does not fit the members",
            ));
        }
        Ok(g)
    }

    /// The group `group_id`.
    pub fn group(&self, group_id: &str) -> Option<&Group> {
        self.groups.get(group_id)
    }

    /// Every group, by id.
    pub fn groups(&self) -> impl Iterator<Item = &Group> {
        self.groups.values()
    }

    /// Checks every group's invariants; panics naming the one broken.
    pub fn check_invariants(&self) {
        for g in self.groups.values() {
            g.check_invariants();
            assert_ne!(g.state, GroupState::Dead, "Dead groups are removed at once");
        }
    }

    fn ctx(&mut self, now_ms: i64) -> (&mut BTreeMap<String, Group>, Ctx<'_>) {
        (
            &mut self.groups,
            Ctx {
                config: &self.config,
                now_ms,
                out: &mut self.out,
            },
        )
    }

    /// JoinGroup (Kafka's `handleJoinGroup`). A new group is created by a join without member id.
    pub fn handle_join(
        &mut self,
        now_ms: i64,
        id: RequestId,
        req: JoinRequest,
    ) -> Reply<JoinResponse> {
        let fail = |error, req: &JoinRequest| {
            Reply::Now(JoinResponse::error(error, req.member_id.clone()))
        };
        if req.group_id.is_empty() {
            return fail(code::INVALID_GROUP_ID, &req);
        }
        if req.session_timeout_ms < self.config.session_timeout_min_ms
            || req.session_timeout_ms > self.config.session_timeout_max_ms
        {
            return fail(code::INVALID_SESSION_TIMEOUT, &req);
        }
        if !self.groups.contains_key(&req.group_id) {
            if !req.member_id.is_empty() {
                return fail(code::UNKNOWN_MEMBER_ID, &req);
            }
            self.groups
                .insert(req.group_id.clone(), Group::new(req.group_id.clone()));
        }
        let prefix = self.member_id_prefix.clone();
        let counter = &mut self.next_member_id;
        let base = req
            .group_instance_id
            .clone()
            .unwrap_or_else(|| req.client_id.clone());
        let new_id = |g: &Group| loop {
            *counter += 1;
            let candidate = format!("{base}-{prefix}{counter}");
            if !g.members.contains_key(&candidate) && !g.pending_members.contains_key(&candidate) {
                break candidate;
            }
        };
        let mut ctx = Ctx {
            config: &self.config,
            now_ms,
            out: &mut self.out,
        };
        let group = self.groups.get_mut(&req.group_id).expect("created above");
        let reply = group.join(&mut ctx, id, req, new_id);
        group.check_invariants();
        reply
    }

    /// SyncGroup (Kafka's `handleSyncGroup`).
    pub fn handle_sync(
        &mut self,
        now_ms: i64,
        id: RequestId,
        req: SyncRequest,
    ) -> Reply<SyncResponse> {
        if req.group_id.is_empty() {
            return Reply::Now(SyncResponse::error(code::INVALID_GROUP_ID));
        }
        let (groups, mut ctx) = self.ctx(now_ms);
        let Some(group) = groups.get_mut(&req.group_id) else {
            return Reply::Now(SyncResponse::error(code::UNKNOWN_MEMBER_ID));
        };
        let reply = group.sync(&mut ctx, id, req);
        group.check_invariants();
        reply
    }

    /// Heartbeat (Kafka's `handleHeartbeat`): the error code to answer.
    pub fn handle_heartbeat(&mut self, now_ms: i64, req: &HeartbeatRequest) -> ErrorCode {
        if req.group_id.is_empty() {
            return code::INVALID_GROUP_ID;
        }
        match self.groups.get_mut(&req.group_id) {
            None => code::UNKNOWN_MEMBER_ID,
            Some(group) => group.heartbeat(now_ms, req),
        }
    }

    /// LeaveGroup (Kafka's `handleLeaveGroup`, v3+ batches).
    pub fn handle_leave(
        &mut self,
        now_ms: i64,
        group_id: &str,
        members: Vec<LeavingMember>,
    ) -> LeaveResponse {
        if group_id.is_empty() {
            return LeaveResponse {
                error_code: code::INVALID_GROUP_ID,
                members: Vec::new(),
            };
        }
        let (groups, mut ctx) = self.ctx(now_ms);
        let Some(group) = groups.get_mut(group_id) else {
            return LeaveResponse {
                error_code: code::NONE,
                members: members
                    .into_iter()
                    .map(|m| (m, code::UNKNOWN_MEMBER_ID))
                    .collect(),
            };
        };
        if group.state == GroupState::Dead {
            return LeaveResponse {
                error_code: code::COORDINATOR_NOT_AVAILABLE,
                members: Vec::new(),
            };
        }
        let answers = members
            .into_iter()
            .map(|m| {
                let error = group.leave(&mut ctx, &m);
                (m, error)
            })
            .collect();
        group.check_invariants();
        LeaveResponse {
            error_code: code::NONE,
            members: answers,
        }
    }

    /// OffsetCommit (Kafka's `handleCommitOffsets`). A commit with generation -1 to a group
    /// that does not exist creates it (a group outside group management); with a generation of
    /// 0 or more it is GROUP_ID_NOT_FOUND, which the shell answers as ILLEGAL_GENERATION to
    /// OffsetCommit below v9 (Kafka's `OffsetMetadataManager.validateOffsetCommit`). The answer
    /// is held until the commit's records are durable; the offsets become visible then too.
    pub fn handle_offset_commit(
        &mut self,
        now_ms: i64,
        id: RequestId,
        req: OffsetCommitRequest,
    ) -> Reply<OffsetCommitResponse> {
        if !self.groups.contains_key(&req.group_id) {
            if req.generation_id >= 0 {
                return Reply::Now(OffsetCommitResponse {
                    partitions: req
                        .partitions
                        .iter()
                        .map(|p| (p.partition.clone(), code::GROUP_ID_NOT_FOUND))
                        .collect(),
                });
            }
            self.groups
                .insert(req.group_id.clone(), Group::new(req.group_id.clone()));
        }
        let (groups, mut ctx) = self.ctx(now_ms);
        let group = groups.get_mut(&req.group_id).expect("created above");
        group.commit(&mut ctx, id, req)
    }

    /// TxnOffsetCommit (Kafka's `handleTxnCommitOffsets`): offsets committed inside the
    /// transaction of `req.producer`. A group that does not exist is created (Empty), as Kafka
    /// does. The answer is held until the records are durable; the offsets stay pending
    /// (invisible to OffsetFetch, UNSTABLE_OFFSET_COMMIT to one that requires stable offsets)
    /// until [`GroupCoordinator::complete_txn`]. The shell checks the producer's epoch and
    /// that the transaction holds this partition (KIP-890) before it calls this.
    pub fn handle_txn_offset_commit(
        &mut self,
        now_ms: i64,
        id: RequestId,
        req: TxnOffsetCommitRequest,
    ) -> Reply<OffsetCommitResponse> {
        self.groups
            .entry(req.group_id.clone())
            .or_insert_with(|| Group::new(req.group_id.clone()));
        let (groups, mut ctx) = self.ctx(now_ms);
        let group = groups.get_mut(&req.group_id).expect("created above");
        group.txn_commit(&mut ctx, id, req)
    }

    /// The COMMIT (`commit`) or ABORT marker of `producer_id` is durable on this partition
    /// (Kafka's `handleTxnCompletion`): the offsets its transaction committed here become
    /// visible, or are dropped. Nothing for a producer with no pending offsets (a marker sent
    /// again).
    pub fn complete_txn(&mut self, producer_id: ProducerId, commit: bool) {
        for group in self.groups.values_mut() {
            group.complete_txn(producer_id, commit);
        }
    }

    /// OffsetFetch (Kafka's `handleFetchOffsets`): the durable offsets of `partitions`, or of
    /// every partition with one (`None`); -1 for a partition without. With `require_stable`
    /// (KIP-447, OffsetFetch v7+), a partition with a commit not yet decided (in flight, or in
    /// an open transaction) is UNSTABLE_OFFSET_COMMIT instead.
    pub fn handle_offset_fetch(
        &self,
        group_id: &str,
        partitions: Option<&[TopicPartition]>,
        require_stable: bool,
    ) -> Vec<FetchedOffset> {
        let group = self.groups.get(group_id);
        let offsets = group.map(|g| &g.offsets);
        let fetched = |tp: &TopicPartition, c: Option<&CommittedOffset>| {
            if require_stable && group.is_some_and(|g| g.has_pending(tp)) {
                return FetchedOffset {
                    partition: tp.clone(),
                    offset: -1,
                    leader_epoch: -1,
                    metadata: String::new(),
                    error_code: code::UNSTABLE_OFFSET_COMMIT,
                };
            }
            FetchedOffset {
                partition: tp.clone(),
                offset: c.map_or(-1, |c| c.offset),
                leader_epoch: c.map_or(-1, |c| c.leader_epoch),
                metadata: c.map(|c| c.metadata.clone()).unwrap_or_default(),
                error_code: code::NONE,
            }
        };
        match partitions {
            Some(tps) => tps
                .iter()
                .map(|tp| fetched(tp, offsets.and_then(|o| o.get(tp))))
                .collect(),
            None => offsets
                .into_iter()
                .flatten()
                .map(|(tp, c)| fetched(tp, Some(c)))
                .collect(),
        }
    }

    /// DescribeGroups: an unknown group is described as Dead with no error (classic protocol).
    pub fn describe_groups(&self, group_ids: &[String]) -> Vec<DescribedGroup> {
        group_ids
            .iter()
            .map(|id| match self.groups.get(id) {
                Some(g) => g.describe(),
                None => DescribedGroup {
                    group_id: id.clone(),
                    error_code: code::NONE,
                    state: GroupState::Dead.name().to_string(),
                    protocol_type: String::new(),
                    protocol_name: String::new(),
                    members: Vec::new(),
                },
            })
            .collect()
    }

    /// ListGroups: every group in one of `states` (all groups if `states` is empty).
    pub fn list_groups(&self, states: &[GroupState]) -> Vec<ListedGroup> {
        self.groups
            .values()
            .filter(|g| states.is_empty() || states.contains(&g.state))
            .map(|g| ListedGroup {
                group_id: g.group_id.clone(),
                protocol_type: g.protocol_type.clone().unwrap_or_default(),
                state: g.state,
            })
            .collect()
    }

    /// DeleteGroups (Kafka's `handleDeleteGroups`): only an Empty group is deleted (its offsets,
    /// including commits in flight and in open transactions, and its metadata get tombstones); NON_EMPTY_GROUP otherwise,
    /// GROUP_ID_NOT_FOUND for an unknown group. Answered at once, as Kafka does not wait for
    /// the tombstones either.
    pub fn delete_groups(&mut self, now_ms: i64, group_ids: &[String]) -> Vec<(String, ErrorCode)> {
        group_ids
            .iter()
            .map(|id| {
                let error = match self.groups.get_mut(id) {
                    None => code::GROUP_ID_NOT_FOUND,
                    Some(g) if g.state != GroupState::Empty => code::NON_EMPTY_GROUP,
                    Some(g) => {
                        g.transition(GroupState::Dead, now_ms);
                        let mut partitions: BTreeSet<TopicPartition> =
                            g.offsets.keys().cloned().collect();
                        partitions.extend(g.pending_commits.iter().map(|c| c.partition.clone()));
                        partitions.extend(g.pending_txn.values().flat_map(|m| m.keys().cloned()));
                        for tp in &partitions {
                            self.out.write(GroupRecord::offset(id, tp, None));
                        }
                        self.out.write(GroupRecord::group(id, None));
                        self.groups.remove(id);
                        code::NONE
                    }
                };
                (id.clone(), error)
            })
            .collect()
    }

    /// OffsetDelete (KIP-496, Kafka's `GroupMetadataManager.handleDeleteOffsets`): deletes the
    /// group's committed offsets of `partitions` (a tombstone each). An Empty group loses any;
    /// a group with members using the `consumer` protocol keeps those of the topics a member
    /// subscribes to (GROUP_SUBSCRIBED_TO_TOPIC for each); any other group with members is
    /// NON_EMPTY_GROUP, a group that does not exist GROUP_ID_NOT_FOUND. A partition without an
    /// offset is answered without error.
    pub fn delete_offsets(
        &mut self,
        group_id: &str,
        partitions: &[TopicPartition],
    ) -> Result<Vec<(TopicPartition, ErrorCode)>, ErrorCode> {
        let group = match self.groups.get_mut(group_id) {
            None => return Err(code::GROUP_ID_NOT_FOUND),
            Some(g) if g.state == GroupState::Dead => return Err(code::GROUP_ID_NOT_FOUND),
            Some(g) => g,
        };
        let subscribed = if group.state == GroupState::Empty {
            BTreeSet::new()
        } else {
            group.subscribed_topics().ok_or(code::NON_EMPTY_GROUP)?
        };
        let mut results = Vec::with_capacity(partitions.len());
        for tp in partitions {
            if subscribed.contains(&tp.topic) {
                results.push((tp.clone(), code::GROUP_SUBSCRIBED_TO_TOPIC));
                continue;
            }
            if group.offsets.contains_key(tp) {
                group.remove_offset(tp);
                self.out.write(GroupRecord::offset(group_id, tp, None));
            }
            results.push((tp.clone(), code::NONE));
        }
        self.check_invariants();
        Ok(results)
    }

    /// Runs what is due at `now_ms`: expired KIP-394 member ids and sessions (the member is
    /// removed and the group rebalances), join deadlines (the rebalance ends with whoever
    /// rejoined), and every `offsets_retention_check_interval_ms` offset expiry and the removal
    /// of Empty groups without offsets.
    pub fn poll(&mut self, now_ms: i64) {
        let (groups, mut ctx) = self.ctx(now_ms);
        for group in groups.values_mut() {
            group.poll(&mut ctx);
        }
        if now_ms >= self.next_expiry_ms {
            self.next_expiry_ms = now_ms + self.config.offsets_retention_check_interval_ms;
            let (groups, mut ctx) = self.ctx(now_ms);
            groups.retain(|_, g| !g.expire_offsets(&mut ctx));
        }
        self.check_invariants();
    }

    /// When [`GroupCoordinator::poll`] next has work: the earliest session, KIP-394 member,
    /// join deadline or expiry check.
    pub fn next_deadline_ms(&self) -> i64 {
        self.groups
            .values()
            .filter_map(Group::next_deadline_ms)
            .fold(self.next_expiry_ms, i64::min)
    }

    /// Records to append, with their sequence numbers, in order.
    pub fn poll_records(&mut self) -> Vec<OutRecord> {
        std::mem::take(&mut self.out.records)
    }

    /// Answers to send.
    pub fn poll_responses(&mut self) -> Vec<(RequestId, Response)> {
        std::mem::take(&mut self.out.ready)
    }

    /// The records up to sequence `seq` are durable: committed offsets they carry become
    /// visible and the answers held for them are released.
    pub fn records_committed(&mut self, seq: u64) {
        assert!(
            seq <= self.out.next_seq,
            "records_committed({seq}) past the last record written ({})",
            self.out.next_seq
        );
        if seq <= self.out.committed_seq {
            return;
        }
        self.out.committed_seq = seq;
        for g in self.groups.values_mut() {
            g.commits_durable(seq);
        }
        let held = std::mem::take(&mut self.out.held);
        for (s, id, response) in held {
            if s <= seq {
                self.out.ready.push((id, response));
            } else {
                self.out.held.push_back((s, id, response));
            }
        }
    }

    /// The sequence of the last record written (0: none).
    pub fn last_record_seq(&self) -> u64 {
        self.out.next_seq
    }

    /// The coordinator lost its partition: every request still waiting (joins, syncs, answers
    /// held for durability) is answered NOT_COORDINATOR, and the answers already released.
    pub fn resign(mut self) -> Vec<(RequestId, Response)> {
        let mut out = std::mem::take(&mut self.out.ready);
        for (_, id, response) in self.out.held.drain(..) {
            out.push((id, response.with_error(code::NOT_COORDINATOR)));
        }
        for g in self.groups.values_mut() {
            g.drain_waiting(code::NOT_COORDINATOR, &mut out);
        }
        out
    }
}

/// The topic names of a ConsumerProtocolSubscription (any version: each starts with an int16
/// version and an array of int16-length strings; later fields are not read); `None` if it does
/// not parse.
fn subscription_topics(metadata: &[u8]) -> Option<Vec<String>> {
    let mut rest = metadata.get(2..)?; // the version
    let count = i32::from_be_bytes(rest.get(..4)?.try_into().ok()?);
    rest = &rest[4..];
    let mut topics = Vec::with_capacity(usize::try_from(count).ok()?.min(rest.len() / 2));
    for _ in 0..count {
        let len = usize::try_from(i16::from_be_bytes(rest.get(..2)?.try_into().ok()?)).ok()?;
        let name = rest.get(2..2 + len)?;
        topics.push(String::from_utf8(name.to_vec()).ok()?);
        rest = &rest[2 + len..];
    }
    Some(topics)
}
