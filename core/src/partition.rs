//! One partition replica: the leader and follower roles of Kafka's ISR replication
//! (`Partition.scala`, `Replica.scala`, `ReplicaFetcherThread.scala`, KIP-101, KIP-279, KIP-320,
//! KIP-497, KIP-966), produce validation (`LogValidator`), idempotent producer checks, the log,
//! the high watermark, and the replica's own persistent state ([`state`]).
//!
//! It owns the partition's [`Log`] and [`ProducerStateTable`]; the shell owns the clock, the
//! disk threads, the network and the controller connection. Inputs are `handle_*(now_ms, ..)`
//! and `on_*` calls; outputs are return values and the [`Effect`]s the shell drains with
//! [`PartitionReplica::poll_effect`] after every input: an ISR change to send, a sync round to
//! run, a new high watermark to publish, the next deadline.
//!
//! # Roles
//! A replica starts [`Role::Offline`] after [`PartitionReplica::recover`], and takes the role
//! the controller's committed partition state gives it through
//! [`PartitionReplica::on_partition_change`] (or the explicit
//! [`PartitionReplica::become_leader`] / [`PartitionReplica::become_follower`]). A new leader
//! epoch is written to the `replica.epoch` file, synchronously, before the call returns: the
//! role is in effect, and the epoch persisted, when it returns `Ok`. A replica never leads an
//! epoch it may have led before a restart (the controller bumps the epoch when a broker comes
//! back), except a partition whose only replica is this broker, which has no follower to
//! confuse.
//!
//! # keel's durable high watermark
//! Kafka's high watermark is the smallest log end offset in the ISR. keel's is the smallest
//! *durable* end offset in the ISR: followers report, in every fetch, the offset below which
//! they have synced their log ([`FetchRequest::durable_end`]), and the leader counts its own
//! [`Log::durable_end`]. An acks=all write is acknowledged only once every ISR member has it on
//! disk, so it survives the whole cluster losing power at once. The high watermark is also
//! persisted before it is exposed (two small slot files, one sync per write, any number of
//! advances per write): no replica's high watermark ever goes backwards, restarts included.
//! The one exception is a partition whose only replica is this broker: its high watermark is
//! its durable end, which recovery finds again, so nothing is written.
//!
//! # Leader: call order for the shell
//! After every step below, drain [`PartitionReplica::poll_effect`] until `None` and carry out
//! each [`Effect`] in the order given:
//! - [`Effect::AlterPartition`]: send it to the controller; the answer comes back as
//!   [`PartitionReplica::on_partition_change`] (committed) or
//!   [`PartitionReplica::on_alter_partition_failed`] (rejected, or no answer in time).
//! - [`Effect::Sync`]: queue the partition for a sync round (2).
//! - [`Effect::WriteHighWatermark`]: queue the partition for a high watermark write (2b).
//! - [`Effect::HighWatermark`]: for each waiting acks=all produce,
//!   [`PartitionReplica::produce_status`] with the epoch and last offset from its
//!   [`Appended`]: answer on `Acked` or `Failed`, keep waiting on `Waiting`, time out with
//!   REQUEST_TIMED_OUT. Wake long-polling fetches (followers learn the high watermark from
//!   fetch responses, so answer a follower's waiting fetch when it moves).
//! - [`Effect::Deadline`]: sleep until then, and call [`PartitionReplica::handle_timeout`]
//!   (ISR shrink after `replica.lag.time.max.ms`).
//!
//! 1. A produce: for acks=all, [`PartitionReplica::check_enough_replicas`] first
//!    (NOT_ENOUGH_REPLICAS); then [`PartitionReplica::append`]; answer acks=1 now.
//! 2. A sync round (group commit), on the I/O thread: [`PartitionReplica::prepare_sync`] under
//!    the lock, the sync outside it, [`PartitionReplica::complete_sync`] under it.
//!
//!    2b. A high watermark write, on an I/O thread, possibly while a sync round of the same
//!    partition runs: [`PartitionReplica::prepare_state_write`] under the lock,
//!    [`StateWrite::write_to`] outside it and [`PartitionReplica::complete_state_write`] (or
//!    [`PartitionReplica::fail_state_write`]) under it. The write covers only a high watermark
//!    that earlier syncs made durable on every ISR member, so it needs nothing from a round in
//!    flight.
//! 3. A follower's fetch: [`PartitionReplica::handle_follower_fetch`]; send back the response.
//! 4. A deadline: [`PartitionReplica::handle_timeout`].
//!
//! # Follower: call order for the shell
//! 1. [`PartitionReplica::discard_pending_damage`] (runtime damage, below), then
//!    [`PartitionReplica::next_fetch`] (`None` while one is in flight, backing off, or without a
//!    leader); send it to [`PartitionReplica::fetch_leader`].
//! 2. The answer: [`PartitionReplica::handle_fetch_response`]; an error or no answer in time:
//!    [`PartitionReplica::handle_fetch_error`] (backs off).
//! 3. Effects as for the leader: an append reports [`Effect::Sync`]. The durable end reaches
//!    the leader only in the next fetch, so send the next fetch after the sync completes when a
//!    response appended data (the leader's high watermark waits for it).
//!
//! # Damaged replicas
//! A replica that may lack committed data ([`damage`]: recovery found its log below its
//! persisted high watermark, its epoch file damaged, or the damage mark; the shell found it
//! unopenable before, [`PartitionReplica::mark_damaged`]; or a read met a damaged batch,
//! [`PartitionReplica::on_read_failed`], which the shell calls for every failed read) refuses
//! the leader role, shrinks no ISR while it still leads, discards runtime damage only as a
//! follower with a leader, and is repaired by [`PartitionReplica::repair_if_due`] (which the
//! shell calls when it looks at [`PartitionReplica::is_damaged`]). The mark file is written and
//! removed through `snapshots`, synchronously, like the epoch file.
//!
//! # Invariants
//! The numbering is docs/replication.md's ("Invariants"); each is asserted where it is
//! kept, with a message naming it:
//! 2. The leader epoch ([`PartitionReplica::leader_epoch`]) and the high watermark never
//!    decrease, across restarts too (epoch written before use, high watermark before exposure).
//! 3. The high watermark never exceeds this replica's durable end, nor, on a leader, the durable
//!    end any member of the maximal ISR reported.
//! 6. No truncation below the high watermark, nor below any high watermark this replica has
//!    persisted or asked to persist.
//!
//! And: the log start offset never exceeds the high watermark; a duplicate batch from an
//! idempotent producer is never appended twice; the leader is in its ISR and every ISR is within
//! the assignment. Invariants 1 (one leader per epoch), 4 (acknowledged writes survive) and 5
//! (identical batches below the high watermark) are properties of the whole cluster: the
//! scenario tests check them after every step.

pub mod checkpoint;
pub mod damage;
mod leader;
pub mod state;
mod txn;

use std::cmp::Ordering;

pub use damage::{Damage, DamageState};
pub use leader::{AlterPartition, FollowerProgress};
pub use state::{StateReport, StateWrite};

use crate::batch::{Batch, BatchError, BatchHeader, Compression, TimestampType};
use crate::controller::{BrokerId, Partition};
use crate::error_code::{self as code, ErrorCode};
use crate::log::{EpochEntry, Log, LogConfig, LogError, PendingSync};
use crate::planted::{self, Bug};
use crate::producer::{self, ProducerCheck, ProducerError, ProducerStateTable};
use crate::storage::{Storage, StorageError};
use crate::types::{LeaderEpoch, Offset};
use leader::LeaderState;

/// Kafka's default `replica.lag.time.max.ms`.
pub const REPLICA_LAG_TIME_MAX_MS_DEFAULT: i64 = 30_000;
/// Kafka's default `replica.fetch.backoff.ms`.
pub const REPLICA_FETCH_BACKOFF_MS_DEFAULT: i64 = 1_000;
/// Kafka's default `replica.fetch.max.bytes`.
pub const REPLICA_FETCH_BYTES_MAX_DEFAULT: usize = 1_048_576;
/// How long a leader waits after a failed AlterPartition before proposing again.
pub const ALTER_PARTITION_BACKOFF_MS_DEFAULT: i64 = 500;

/// The topic settings a partition enforces on produce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProduceRules {
    /// `max.message.bytes`: the largest batch accepted.
    pub max_message_bytes: usize,
    /// `message.timestamp.type=LogAppendTime`: the broker sets batch timestamps.
    pub log_append_time: bool,
    /// `cleanup.policy` includes compact: every record needs a key.
    pub compacted: bool,
    /// `compression.type` and its level: the codec the leader stores every batch in (a batch
    /// in another codec is recompressed); `None` for `producer`, batches stored as sent.
    pub compression: Option<(Compression, i32)>,
    /// `message.timestamp.before.max.ms`: how far before the broker's clock a CreateTime
    /// record's timestamp may be.
    pub timestamp_before_max_ms: i64,
    /// `message.timestamp.after.max.ms`: how far after it.
    pub timestamp_after_max_ms: i64,
}

impl Default for ProduceRules {
    /// Kafka's topic defaults, except the timestamp bounds, which are open (the broker
    /// passes the topic's: Kafka 4's default refuses timestamps more than an hour ahead).
    fn default() -> Self {
        ProduceRules {
            max_message_bytes: 1_048_588,
            log_append_time: false,
            compacted: false,
            compression: None,
            timestamp_before_max_ms: i64::MAX,
            timestamp_after_max_ms: i64::MAX,
        }
    }
}

/// The replication settings of one replica, with Kafka's names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaConfig {
    /// This broker (`node.id`).
    pub broker_id: BrokerId,
    /// `replica.lag.time.max.ms`: an ISR follower not caught up for longer leaves the ISR.
    pub lag_time_max_ms: i64,
    /// The topic's `min.insync.replicas`.
    pub min_insync_replicas: usize,
    /// `replica.fetch.backoff.ms`: the wait after a failed fetch.
    pub fetch_backoff_ms: i64,
    /// `replica.fetch.max.bytes`: the most a follower asks for (at least one batch is sent).
    pub fetch_bytes_max: usize,
    /// The wait after a failed AlterPartition before the next proposal.
    pub alter_partition_backoff_ms: i64,
}

impl ReplicaConfig {
    /// Kafka's defaults for broker `broker_id`, `min.insync.replicas` 1.
    pub fn new(broker_id: BrokerId) -> Self {
        ReplicaConfig {
            broker_id,
            lag_time_max_ms: REPLICA_LAG_TIME_MAX_MS_DEFAULT,
            min_insync_replicas: 1,
            fetch_backoff_ms: REPLICA_FETCH_BACKOFF_MS_DEFAULT,
            fetch_bytes_max: REPLICA_FETCH_BYTES_MAX_DEFAULT,
            alter_partition_backoff_ms: ALTER_PARTITION_BACKOFF_MS_DEFAULT,
        }
    }
}

/// Why a produce to this partition failed; each maps to a Kafka error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProduceError {
    #[error("corrupt batch: {0}")]
    Corrupt(BatchError),
    #[error("batch of {size} bytes exceeds max.message.bytes {max}")]
    TooLarge { size: usize, max: usize },
    #[error("invalid record: {0}")]
    InvalidRecord(String),
    #[error("{0}")]
    Producer(#[from] ProducerError),
    #[error("storage: {0}")]
    Storage(#[from] LogError),
    #[error("this replica is not the leader")]
    NotLeaderOrFollower,
    #[error("{isr} in-sync replicas, fewer than the {min} required")]
    NotEnoughReplicas { isr: usize, min: usize },
    #[error("invalid timestamp: {0}")]
    InvalidTimestamp(String),
    #[error("{0}")]
    Txn(crate::producer::txn::TxnStateError),
    #[error("producer {producer_id} at epoch {producer_epoch}: the transaction coordinator has not confirmed that this partition is in its transaction")]
    TxnNotVerified {
        producer_id: crate::types::ProducerId,
        producer_epoch: i16,
    },
}

impl ProduceError {
    /// Kafka's error code (Errors.java).
    pub fn code(&self) -> ErrorCode {
        match self {
            ProduceError::Corrupt(_) => code::CORRUPT_MESSAGE,
            ProduceError::TooLarge { .. } => code::MESSAGE_TOO_LARGE,
            ProduceError::InvalidRecord(_) => code::INVALID_RECORD,
            ProduceError::Producer(e) => e.code(),
            ProduceError::Storage(_) => code::KAFKA_STORAGE_ERROR,
            ProduceError::NotLeaderOrFollower => code::NOT_LEADER_OR_FOLLOWER,
            ProduceError::NotEnoughReplicas { .. } => code::NOT_ENOUGH_REPLICAS,
            ProduceError::InvalidTimestamp(_) => code::INVALID_TIMESTAMP,
            ProduceError::Txn(e) => e.code(),
            ProduceError::TxnNotVerified { .. } => code::INVALID_TXN_STATE,
        }
    }
}

/// A produce that succeeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: Offset,
    pub last_offset: Offset,
    /// The broker's timestamp for LogAppendTime topics, else -1.
    pub log_append_time_ms: i64,
    /// True if the batch was a duplicate of one already appended (answered with its offsets).
    pub duplicate: bool,
    /// The leader epoch the produce was answered in: pass it to
    /// [`PartitionReplica::produce_status`].
    pub leader_epoch: LeaderEpoch,
}

/// Where a waiting acks=all produce stands (Kafka's `Partition.checkEnoughReplicasReachOffset`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AckStatus {
    /// The high watermark has not reached it yet.
    Waiting,
    /// Committed: every member of the ISR has it on disk. Answer success.
    Acked,
    /// Answer with this error code: NOT_LEADER_OR_FOLLOWER if leadership moved since the
    /// append (the write may or may not survive), NOT_ENOUGH_REPLICAS_AFTER_APPEND if the ISR
    /// is below `min.insync.replicas` (the high watermark cannot move, or moved without it).
    Failed(ErrorCode),
}

/// What the replica asks of its shell, drained with [`PartitionReplica::poll_effect`] after
/// every input, in this order (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Send this ISR change to the controller. Its answer comes back as
    /// [`PartitionReplica::on_partition_change`] (committed) or
    /// [`PartitionReplica::on_alter_partition_failed`] (rejected, or no answer in time).
    AlterPartition(AlterPartition),
    /// The log holds unsynced data: run a sync round on the I/O thread
    /// ([`PartitionReplica::prepare_sync`], the sync, [`PartitionReplica::complete_sync`]).
    /// Reported once until the round's `prepare_sync`.
    Sync,
    /// A high watermark write is wanted: run it on the I/O thread
    /// ([`PartitionReplica::prepare_state_write`], [`StateWrite::write_to`],
    /// [`PartitionReplica::complete_state_write`]). Reported once until that
    /// `prepare_state_write`. It is independent of [`Effect::Sync`]: the shell may run the two
    /// at once (the write covers only what an earlier sync made durable), so that neither
    /// waits behind the other.
    WriteHighWatermark,
    /// The exposed high watermark is now this: answer the acks=all produces it covers
    /// ([`PartitionReplica::produce_status`]), wake long-polling fetches and the followers'
    /// fetches.
    HighWatermark(Offset),
    /// Call [`PartitionReplica::handle_timeout`] at this time (ms) unless an earlier one is
    /// due; reported when it changes, and again after each `handle_timeout`.
    Deadline(i64),
}

/// What the replica last reported through [`PartitionReplica::poll_effect`].
#[derive(Clone, Debug, Default)]
struct Reported {
    /// [`Effect::Sync`] was reported and its round has not begun.
    sync: bool,
    /// [`Effect::WriteHighWatermark`] was reported and its write has not been handed out.
    state_write: bool,
    high_watermark: Offset,
    deadline: Option<i64>,
}

/// A follower's fetch from its leader (Kafka's Fetch request from a replica, v12+).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchRequest {
    /// The fetching follower.
    pub replica: BrokerId,
    /// The follower's current leader epoch (KIP-320's currentLeaderEpoch).
    pub leader_epoch: LeaderEpoch,
    /// The follower's log end offset.
    pub fetch_offset: Offset,
    /// The epoch of the follower's last batch, [`LeaderEpoch::NONE`] if its log is empty.
    pub last_fetched_epoch: LeaderEpoch,
    /// keel: the offset below which the follower's log is synced.
    pub durable_end: Offset,
    /// keel: how far the follower's log cleaner has cleaned its log ([`Log::cleaned_end`]):
    /// the leader removes no tombstone at or above it.
    pub cleaned_end: Offset,
    /// The most bytes to return (at least one batch is returned).
    pub max_bytes: usize,
}

/// What a leader answers a follower's fetch with.
#[derive(Clone, Debug)]
pub struct FetchResponse {
    /// The leader epoch it was served at.
    pub leader_epoch: LeaderEpoch,
    pub high_watermark: Offset,
    pub log_start: Offset,
    pub log_end: Offset,
    pub payload: FetchPayload,
}

/// The body of a [`FetchResponse`].
#[derive(Clone, Debug)]
pub enum FetchPayload {
    /// Whole batches from the fetch offset, up to the leader's log end offset.
    Records(Vec<Batch>),
    /// KIP-279's divergingEpoch: the follower's log diverged from the leader's; `epoch` is the
    /// largest epoch at or below the follower's last fetched epoch that the leader has, and
    /// `end_offset` where it ends on the leader.
    Diverging {
        epoch: LeaderEpoch,
        end_offset: Offset,
    },
    /// The fetch offset is outside the leader's log (OFFSET_OUT_OF_RANGE).
    OffsetOutOfRange,
}

/// Why a leader refused a follower's fetch. Each maps to a Kafka error code for the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    #[error("this replica is not the leader")]
    NotLeader,
    #[error("the follower's leader epoch {got} is older than {current}")]
    FencedLeaderEpoch {
        current: LeaderEpoch,
        got: LeaderEpoch,
    },
    #[error("the follower's leader epoch {got} is newer than {current}")]
    UnknownLeaderEpoch {
        current: LeaderEpoch,
        got: LeaderEpoch,
    },
    #[error("broker {0} is not a follower of this partition")]
    NotAFollower(BrokerId),
    #[error("protocol violation by the follower: {0}")]
    Protocol(String),
    #[error("log: {0}")]
    Log(#[from] LogError),
}

impl FetchError {
    /// Kafka's error code (Errors.java).
    pub fn code(&self) -> ErrorCode {
        match self {
            FetchError::NotLeader | FetchError::NotAFollower(_) => code::NOT_LEADER_OR_FOLLOWER,
            FetchError::FencedLeaderEpoch { .. } => code::FENCED_LEADER_EPOCH,
            FetchError::UnknownLeaderEpoch { .. } => code::UNKNOWN_LEADER_EPOCH,
            FetchError::Protocol(_) => code::CORRUPT_MESSAGE,
            FetchError::Log(_) => code::KAFKA_STORAGE_ERROR,
        }
    }
}

/// Why a role change was refused. The replica is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    #[error("leader epoch {got} is older than this replica's {current}")]
    StaleLeaderEpoch {
        current: LeaderEpoch,
        got: LeaderEpoch,
    },
    #[error("leader epoch {epoch} was already in use by this replica in another role (a role change needs a new epoch)")]
    EpochReused { epoch: LeaderEpoch },
    #[error("broker {0} is not a replica of this partition")]
    NotAReplica(BrokerId),
    #[error("invalid partition state: {0}")]
    InvalidPartition(String),
    #[error("this replica is damaged: it leads nothing until it has fetched back from its leader what it may lack")]
    Damaged,
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
}

/// Why opening a replica or applying a leader's fetch response failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaError {
    #[error("log: {0}")]
    Log(#[from] LogError),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("protocol violation by the leader: {0}")]
    Protocol(String),
}

impl From<producer::RecoverError> for ReplicaError {
    fn from(e: producer::RecoverError) -> Self {
        match e {
            producer::RecoverError::Log(e) => ReplicaError::Log(e),
            producer::RecoverError::Storage(e) => ReplicaError::Storage(e),
        }
    }
}

/// What a fetch response did to a follower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FetchOutcome {
    /// Not for the fetch in flight (an older epoch or request): ignored.
    Stale,
    /// Appended this many batches (maybe none).
    Appended(usize),
    /// Truncated a diverged suffix; the log now ends here. Fetch again (KIP-279 may take
    /// several rounds).
    Truncated(Offset),
    /// The log was emptied and restarted at the leader's log start offset.
    Restarted(Offset),
}

/// The replica's role, as others may see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Recovered, no role yet: serves nothing, fetches nothing.
    Offline,
    Leader,
    /// Follows `leader` ([`BrokerId::NONE`]: the partition has no leader; wait).
    Follower {
        leader: BrokerId,
    },
}

#[derive(Clone, Debug)]
struct FollowerState {
    leader: BrokerId,
    /// The high watermark the leader last sent.
    leader_hw: Offset,
    in_flight: Option<FetchRequest>,
    backoff_until_ms: i64,
}

#[derive(Clone, Debug)]
enum RoleState {
    Offline,
    Leader(LeaderState),
    Follower(FollowerState),
}

/// One partition replica. See the module documentation for the roles, the order in which the
/// shell calls it, and what always holds.
pub struct PartitionReplica<S: Storage> {
    config: ReplicaConfig,
    log: Log<S>,
    producers: ProducerStateTable,
    rules: ProduceRules,
    /// The newest leader epoch this replica accepted; persisted before it was set.
    leader_epoch: LeaderEpoch,
    /// The partition epoch of the last state applied (-1 before any).
    partition_epoch: i32,
    role: RoleState,
    /// The exposed high watermark.
    high_watermark: Offset,
    /// The partition's only replica is this broker (persisted with the epoch): the high
    /// watermark is the durable end and is not written. Otherwise it is persisted before it is
    /// exposed.
    sole: bool,
    /// The largest high watermark known persisted.
    hw_persisted: Offset,
    /// The high watermark the ISR (leader) or the leader (follower) last allowed.
    hw_wanted: Offset,
    hw_seq: u64,
    hw_write_in_flight: Option<StateWrite>,
    state_report: StateReport,
    /// The end of the last producer snapshot [`PartitionReplica::checkpoint`] wrote: a
    /// checkpoint with nothing new writes none.
    snapshot_written: Option<Offset>,
    /// Whether this replica may lack committed data, and what it still has to do about it
    /// ([`damage`]).
    damage: Damage,
    /// What [`PartitionReplica::poll_effect`] reported last.
    reported: Reported,
    /// Every batch of the log, as transactions see them ([`txn`]).
    txns: crate::producer::txn::TxnTracker,
    /// Producers the transaction coordinator verified for their next transaction here.
    verified: txn::Verified,
    /// The `.txnindex` files of the log, kept in line with `txns` ([`txn`]).
    txn_index: txn::IndexState,
    /// Only with the planted bug [`Bug::AddedWithStaleEpoch`]: this replica was opened as a
    /// replica a reassignment adds.
    planted_added: bool,
}

impl<S: Storage> PartitionReplica<S> {
    /// Opens a partition whose only replica is this broker and leads it at `leader_epoch`:
    /// [`PartitionReplica::recover`] then [`PartitionReplica::become_leader`] with the ISR
    /// `[BrokerId::NONE]` (the broker's id does not matter to a partition with no followers).
    /// Everything recovery kept was synced, and the leader is the whole ISR, so the high
    /// watermark is the durable end.
    pub fn open<T: Storage>(
        log_storage: S,
        snapshots: &mut T,
        config: LogConfig,
        rules: ProduceRules,
        leader_epoch: LeaderEpoch,
        now_ms: i64,
    ) -> Result<Self, LogError> {
        let me = BrokerId::NONE;
        let mut replica = Self::recover(
            log_storage,
            snapshots,
            config,
            rules,
            ReplicaConfig::new(me),
            now_ms,
        )
        .map_err(|e| match e {
            ReplicaError::Log(e) => e,
            ReplicaError::Storage(e) => LogError::Storage(e),
            ReplicaError::Protocol(m) => unreachable!("recovery talks to no peer: {m}"),
        })?;
        let sole = Partition {
            replicas: vec![me],
            isr: vec![me],
            leader: me,
            leader_epoch,
            partition_epoch: 0,
            elr: Vec::new(),
            adding: Vec::new(),
            removing: Vec::new(),
        };
        replica
            .become_leader(now_ms, snapshots, &sole)
            .map_err(|e| match e {
                RoleError::Storage(e) => LogError::Storage(e),
                e => LogError::Storage(StorageError::Io {
                    file: state::EPOCH_FILE.into(),
                    message: e.to_string(),
                }),
            })?;
        Ok(replica)
    }

    /// Opens (recovering) the log in `log_storage`, the producer state from the snapshots in
    /// `snapshots` plus the log, and the replica state (leader epoch, high watermark) from
    /// `snapshots`. The replica is [`Role::Offline`] until it is given a role.
    pub fn recover<T: Storage>(
        log_storage: S,
        snapshots: &mut T,
        config: LogConfig,
        rules: ProduceRules,
        replica: ReplicaConfig,
        now_ms: i64,
    ) -> Result<Self, ReplicaError> {
        Self::recover_with_checkpoint(log_storage, snapshots, config, rules, replica, now_ms, None)
    }

    /// [`PartitionReplica::recover`], with the high watermark the broker's checkpoint
    /// ([`checkpoint`]) holds for this replica: the persisted high watermark is the larger of
    /// it and the replica's own slots (each was persisted before it was exposed; a replica
    /// written by an older keel has only the slots).
    pub fn recover_with_checkpoint<T: Storage>(
        log_storage: S,
        snapshots: &mut T,
        config: LogConfig,
        rules: ProduceRules,
        replica: ReplicaConfig,
        now_ms: i64,
        checkpointed_hw: Option<Offset>,
    ) -> Result<Self, ReplicaError> {
        let mut log = Log::open(log_storage, config, now_ms)?;
        let mut cut_at_open = false;
        let producers = match producer::recover(snapshots, &log) {
            Ok((producers, _report)) => producers,
            Err(producer::RecoverError::Log(LogError::Corrupt { .. })) => {
                // Damage below the recovery point, which the open trusts and does not read
                // again, met by the producer state's replay: cut the log there as recovery
                // cuts damage above it, and mark the replica damaged, so that it opens, leads
                // nothing and fetches the rest back (the simulator's seed 507: a replica that
                // failed to open at every try kept its broker fenced for good).
                cut_at_open = true;
                cut_damaged_log(now_ms, &mut log, snapshots)?
            }
            Err(e) => return Err(e.into()),
        };
        let txns = txn::tracker_from_log(&log)
            .unwrap_or_else(|_| crate::producer::txn::TxnTracker::new(log.end()));
        let txn_index = txn::IndexState::recover(&log);
        let persisted = state::read(snapshots)?;
        let mut state_report = persisted.report;
        let mut high_watermark = persisted
            .high_watermark
            .max(checkpointed_hw)
            .unwrap_or(Offset::ZERO);
        if high_watermark > log.durable_end() {
            state_report.hw_above_log = Some(high_watermark);
            high_watermark = log.durable_end();
        }
        if persisted.sole {
            // Everything recovery kept is synced, and this replica is the whole ISR.
            high_watermark = log.durable_end();
        }
        // A follower that restarted its log at its leader's log start persisted that start
        // (the log's checkpoint), not a high watermark: everything below it is committed.
        high_watermark = high_watermark.max(log.log_start());
        // Every epoch in the log was accepted before its batches were appended: a damaged or
        // missing epoch file reads as an older epoch than the log proves.
        let leader_epoch = log.epochs().latest().map_or(persisted.leader_epoch, |e| {
            e.epoch.max(persisted.leader_epoch)
        });
        // A cut at the log's end alone is a crash's torn tail (unsynced, never committed):
        // damage is committed data gone (the log below its persisted high watermark), a damaged
        // epoch file, or the mark an earlier run left.
        if cut_at_open {
            state_report.damage_mark_error = damage::write_mark(snapshots).err();
        }
        state_report.damage_marked = damage::is_marked(snapshots);
        let damage = Damage::recovered(
            state_report.damage_marked,
            state_report.epoch_corrupt,
            state_report.hw_above_log,
        );
        if damage.is_damaged() && !state_report.damage_marked {
            state_report.damage_mark_error = damage::write_mark(snapshots).err();
        }
        let mut replica = PartitionReplica {
            config: replica,
            log,
            producers,
            rules,
            leader_epoch,
            partition_epoch: -1,
            role: RoleState::Offline,
            high_watermark,
            sole: persisted.sole,
            hw_persisted: high_watermark,
            hw_wanted: high_watermark,
            hw_seq: persisted.hw_seq,
            hw_write_in_flight: None,
            state_report,
            snapshot_written: None,
            damage,
            reported: Reported {
                high_watermark,
                ..Reported::default()
            },
            txns,
            verified: txn::Verified::new(),
            txn_index,
            planted_added: false,
        };
        replica.sync_txn_index();
        replica.check_invariants();
        Ok(replica)
    }

    pub fn log(&self) -> &Log<S> {
        &self.log
    }

    /// The log, for the shell's split sync ([`Log::prepare_sync`], [`Log::complete_sync`]),
    /// reads and retention. Appends go through [`PartitionReplica::append`] (leader) and
    /// [`PartitionReplica::handle_fetch_response`] (follower); truncations only through the
    /// latter.
    pub fn log_mut(&mut self) -> &mut Log<S> {
        &mut self.log
    }

    /// Installs a cleaning of the log ([`Log::install_cleaned`]) and brings the `.txnindex`
    /// files in line with the segments it left.
    pub fn install_cleaned(
        &mut self,
        cleaned: crate::log::cleaner::Cleaned,
    ) -> Result<Option<crate::log::cleaner::CleanStats>, LogError> {
        let stats = self.log.install_cleaned(cleaned)?;
        if stats.is_some() {
            self.sync_txn_index();
        }
        Ok(stats)
    }

    /// Gives the log's storage back (shutdown, or a crash in tests).
    pub fn into_log_storage(self) -> S {
        self.log.into_storage()
    }

    pub fn producers(&self) -> &ProducerStateTable {
        &self.producers
    }

    pub fn config(&self) -> &ReplicaConfig {
        &self.config
    }

    /// The newest leader epoch this replica accepted (persisted).
    pub fn leader_epoch(&self) -> LeaderEpoch {
        self.leader_epoch
    }

    /// The partition epoch of the last partition state applied, -1 before any.
    pub fn partition_epoch(&self) -> i32 {
        self.partition_epoch
    }

    pub fn high_watermark(&self) -> Offset {
        self.high_watermark
    }

    /// On a leader, the end of what every member of the ISR (at least min.insync.replicas of
    /// them) holds on disk. It runs ahead of the exposed [`high_watermark`](Self::high_watermark)
    /// while the high watermark file is written. acks=all is answered only once the exposed
    /// high watermark covers the write (read-after-ack: a read sent to this leader after the
    /// answer sees it), so this is what the high watermark is about to become.
    pub fn committed_end(&self) -> Offset {
        match &self.role {
            RoleState::Leader(_) => self.hw_wanted.max(self.high_watermark),
            RoleState::Follower(_) | RoleState::Offline => self.high_watermark,
        }
    }

    /// What reading the replica state on open found.
    pub fn state_report(&self) -> &StateReport {
        &self.state_report
    }

    pub fn role(&self) -> Role {
        match &self.role {
            RoleState::Offline => Role::Offline,
            RoleState::Leader(_) => Role::Leader,
            RoleState::Follower(f) => Role::Follower { leader: f.leader },
        }
    }

    pub fn is_leader(&self) -> bool {
        matches!(self.role, RoleState::Leader(_))
    }

    /// Where a follower sends its fetches, if it has a leader.
    pub fn fetch_leader(&self) -> Option<BrokerId> {
        match &self.role {
            RoleState::Follower(f) if f.leader != BrokerId::NONE => Some(f.leader),
            _ => None,
        }
    }

    /// The committed ISR, on a leader (empty otherwise: followers do not track it).
    pub fn isr(&self) -> Vec<BrokerId> {
        match &self.role {
            RoleState::Leader(l) => l.isr.clone(),
            _ => Vec::new(),
        }
    }

    /// The ISR the high watermark waits for, on a leader: the committed ISR and any member a
    /// pending AlterPartition adds (see [`leader`]'s documentation on Kafka's maximal ISR).
    pub fn maximal_isr(&self) -> Vec<BrokerId> {
        match &self.role {
            RoleState::Leader(l) => l.maximal_isr(),
            _ => Vec::new(),
        }
    }

    /// What a leader knows of `follower`.
    pub fn follower_progress(&self, follower: BrokerId) -> Option<&FollowerProgress> {
        match &self.role {
            RoleState::Leader(l) => l.followers.get(&follower),
            _ => None,
        }
    }

    /// The offset below which every assigned replica is known to hold the log durably and to
    /// have cleaned it: on a leader, the smallest of its own durable end and each follower's
    /// last reported durable end and cleaned end (a follower not heard from in this leader
    /// epoch counts as holding nothing); elsewhere nothing (a follower does not know the
    /// others). The log cleaner removes no tombstone at or above it. A replica that lacks the
    /// tombstone would fetch the cleaned log without it and keep the key's older value; one
    /// that holds it but has not cleaned past it still holds the older value, which a later
    /// truncation (damage found, a restart's recovery) below the tombstone would leave alive
    /// once the tombstone fetched again is gone. A replica that cleaned past it has removed
    /// every older value of the key.
    pub fn tombstone_bound(&self) -> Offset {
        match &self.role {
            RoleState::Leader(l) => l
                .replicas
                .iter()
                .filter(|r| **r != l.me)
                .map(|r| {
                    l.followers.get(r).map_or(Offset::ZERO, |f| {
                        let durable = f.durable_end.unwrap_or(Offset::ZERO);
                        durable.min(f.cleaned_end.unwrap_or(Offset::ZERO))
                    })
                })
                .fold(self.log.durable_end(), Offset::min),
            RoleState::Follower(_) | RoleState::Offline => Offset::ZERO,
        }
    }

    /// The offset where this leader's epoch began (Kafka's leaderEpochStartOffset).
    pub fn epoch_start(&self) -> Option<Offset> {
        match &self.role {
            RoleState::Leader(l) => Some(l.epoch_start),
            _ => None,
        }
    }

    pub fn set_rules(&mut self, rules: ProduceRules, config: LogConfig) {
        self.rules = rules;
        self.log.set_config(config);
    }

    /// Changes `min.insync.replicas` (a topic config change).
    pub fn set_min_insync_replicas(&mut self, min_insync_replicas: usize) {
        self.config.min_insync_replicas = min_insync_replicas;
        self.advance_high_watermark();
    }

    // ---------------------------------------------------------------------------------------
    // Roles

    /// Applies a committed partition state from the controller (metadata, or the answer to an
    /// AlterPartition): leads if it names this broker leader, follows otherwise. States older
    /// than the one applied (by leader epoch, then partition epoch) are ignored: returns
    /// `Ok(false)`. The new epoch is persisted through `snapshots` before this returns.
    pub fn on_partition_change<T: Storage>(
        &mut self,
        now_ms: i64,
        snapshots: &mut T,
        partition: &Partition,
    ) -> Result<bool, RoleError> {
        let applied = !matches!(self.role, RoleState::Offline);
        let stale = partition.leader_epoch < self.leader_epoch
            || (applied
                && partition.leader_epoch == self.leader_epoch
                && partition.partition_epoch <= self.partition_epoch);
        if stale {
            return Ok(false);
        }
        if partition.leader == self.config.broker_id {
            self.become_leader(now_ms, snapshots, partition)?;
        } else {
            self.become_follower(now_ms, snapshots, partition)?;
        }
        Ok(true)
    }

    /// Leads the partition (Kafka's `Partition.makeLeader`). At a new leader epoch: persists
    /// the epoch, records the epoch's start offset (the log end offset), and forgets what
    /// followers reported to earlier leaders (ISR followers count as caught up now). At the
    /// current epoch, as leader already: applies the newer assignment and ISR.
    pub fn become_leader<T: Storage>(
        &mut self,
        now_ms: i64,
        snapshots: &mut T,
        partition: &Partition,
    ) -> Result<(), RoleError> {
        let me = self.config.broker_id;
        self.check_partition(partition)?;
        if partition.leader != me {
            return Err(RoleError::InvalidPartition(format!(
                "asked to lead a partition whose leader is {}",
                partition.leader
            )));
        }
        // A damaged replica may lack committed data its followers hold: leading would serve
        // less than was acknowledged, and tell followers to cut committed data. The partition
        // waits instead (its broker stays fenced meanwhile, so that the controller elects a
        // sound ISR member).
        self.repair_if_due(snapshots)?;
        if self.damage.is_damaged() {
            return Err(RoleError::Damaged);
        }
        let sole = partition.replicas == [me];
        match partition.leader_epoch.cmp(&self.leader_epoch) {
            Ordering::Less => {
                return Err(RoleError::StaleLeaderEpoch {
                    current: self.leader_epoch,
                    got: partition.leader_epoch,
                })
            }
            Ordering::Equal => match &mut self.role {
                RoleState::Leader(_) => {
                    if partition.partition_epoch > self.partition_epoch {
                        self.set_sole(snapshots, sole)?;
                        if let RoleState::Leader(l) = &mut self.role {
                            l.apply_committed(now_ms, &partition.replicas, &partition.isr);
                        }
                        self.partition_epoch = partition.partition_epoch;
                        self.advance_high_watermark();
                        self.check_invariants();
                    }
                    return Ok(());
                }
                // A restarted single-replica partition: no follower can hold batches of this
                // epoch that the restart lost, so leading it again is safe.
                RoleState::Offline if sole && self.sole => {}
                _ => {
                    return Err(RoleError::EpochReused {
                        epoch: partition.leader_epoch,
                    })
                }
            },
            Ordering::Greater => self.persist_epoch(snapshots, partition.leader_epoch, sole)?,
        }
        self.partition_epoch = partition.partition_epoch;
        self.role = RoleState::Leader(LeaderState::new(
            now_ms,
            me,
            &partition.replicas,
            &partition.isr,
            self.log.end(),
        ));
        self.advance_high_watermark();
        self.check_invariants();
        Ok(())
    }

    /// Follows `partition.leader` (Kafka's `Partition.makeFollower`;
    /// [`BrokerId::NONE`]: no leader, wait). At a new leader epoch: persists the epoch and
    /// starts fetching from scratch; the log is not truncated now: the first fetch finds any
    /// divergence (KIP-279). A restarted replica may follow at the epoch it knew.
    pub fn become_follower<T: Storage>(
        &mut self,
        now_ms: i64,
        snapshots: &mut T,
        partition: &Partition,
    ) -> Result<(), RoleError> {
        let _ = now_ms;
        self.check_partition(partition)?;
        let sole = partition.replicas == [self.config.broker_id];
        if partition.leader == self.config.broker_id {
            return Err(RoleError::InvalidPartition(
                "asked to follow itself".to_string(),
            ));
        }
        match partition.leader_epoch.cmp(&self.leader_epoch) {
            Ordering::Less => {
                return Err(RoleError::StaleLeaderEpoch {
                    current: self.leader_epoch,
                    got: partition.leader_epoch,
                })
            }
            Ordering::Equal => match &self.role {
                RoleState::Follower(f) if f.leader == partition.leader => {
                    self.partition_epoch = self.partition_epoch.max(partition.partition_epoch);
                    return Ok(());
                }
                RoleState::Offline => self.set_sole(snapshots, sole)?,
                _ => {
                    return Err(RoleError::EpochReused {
                        epoch: partition.leader_epoch,
                    })
                }
            },
            Ordering::Greater => self.persist_epoch(snapshots, partition.leader_epoch, sole)?,
        }
        if planted::active(Bug::AddedWithStaleEpoch)
            && partition.adding.contains(&self.config.broker_id)
        {
            self.planted_added = true;
        }
        self.partition_epoch = partition.partition_epoch;
        self.role = RoleState::Follower(FollowerState {
            leader: partition.leader,
            leader_hw: self.high_watermark,
            in_flight: None,
            backoff_until_ms: i64::MIN,
        });
        self.check_invariants();
        Ok(())
    }

    fn check_partition(&self, p: &Partition) -> Result<(), RoleError> {
        let me = self.config.broker_id;
        if !p.replicas.contains(&me) {
            return Err(RoleError::NotAReplica(me));
        }
        let mut replicas = p.replicas.clone();
        replicas.sort();
        replicas.dedup();
        let mut isr = p.isr.clone();
        isr.sort();
        isr.dedup();
        let problem = if replicas.len() != p.replicas.len() || isr.len() != p.isr.len() {
            Some("duplicate broker ids")
        } else if !p.isr.iter().all(|b| p.replicas.contains(b)) {
            Some("ISR outside the assignment")
        } else if p.leader != BrokerId::NONE && !p.isr.contains(&p.leader) {
            Some("leader outside the ISR")
        } else if p.leader_epoch.0 < 0 {
            Some("negative leader epoch")
        } else {
            None
        };
        match problem {
            Some(problem) => Err(RoleError::InvalidPartition(format!("{problem}: {p:?}"))),
            None => Ok(()),
        }
    }

    /// Writes a newer leader epoch durably, then adopts it.
    fn persist_epoch<T: Storage>(
        &mut self,
        snapshots: &mut T,
        epoch: LeaderEpoch,
        sole: bool,
    ) -> Result<(), RoleError> {
        assert!(
            epoch > self.leader_epoch,
            "invariant 2: leader epochs never go backwards ({} -> {epoch})",
            self.leader_epoch
        );
        if self.sole && !sole {
            self.write_high_watermark_now(snapshots)?;
        }
        state::write_epoch(snapshots, epoch, sole)?;
        self.leader_epoch = epoch;
        self.sole = sole;
        Ok(())
    }

    /// Records a change between a single-replica assignment and a larger one at the current
    /// epoch (a reassignment). Leaving the single-replica state persists the high watermark
    /// first: it was never written, and is not the durable end any more after a restart.
    fn set_sole<T: Storage>(&mut self, snapshots: &mut T, sole: bool) -> Result<(), RoleError> {
        if sole == self.sole {
            return Ok(());
        }
        if !sole {
            self.write_high_watermark_now(snapshots)?;
        }
        state::write_epoch(snapshots, self.leader_epoch, sole)?;
        self.sole = sole;
        Ok(())
    }

    /// Persists the exposed high watermark synchronously (a single-replica partition, which
    /// never has a state write in flight, gaining replicas).
    fn write_high_watermark_now<T: Storage>(
        &mut self,
        snapshots: &mut T,
    ) -> Result<(), StorageError> {
        assert!(
            self.hw_write_in_flight.is_none(),
            "a single-replica partition writes no high watermark"
        );
        self.hw_seq += 1;
        StateWrite {
            seq: self.hw_seq,
            high_watermark: self.high_watermark,
        }
        .write_to(snapshots)?;
        self.hw_persisted = self.hw_persisted.max(self.high_watermark);
        self.hw_wanted = self.hw_wanted.max(self.high_watermark);
        Ok(())
    }

    // ---------------------------------------------------------------------------------------
    // Leader: produce

    /// Kafka's LogValidator for one client batch (magic, length and CRC were checked when the
    /// `Batch` was parsed).
    pub fn validate(&self, now_ms: i64, batch: &Batch) -> Result<(), ProduceError> {
        if batch.size() > self.rules.max_message_bytes {
            return Err(ProduceError::TooLarge {
                size: batch.size(),
                max: self.rules.max_message_bytes,
            });
        }
        if batch.is_control() {
            return Err(ProduceError::InvalidRecord(
                "clients may not write control batches".into(),
            ));
        }
        if batch.records_count() != batch.last_offset_delta().wrapping_add(1) {
            return Err(ProduceError::InvalidRecord(format!(
                "record count {} does not match lastOffsetDelta {}",
                batch.records_count(),
                batch.last_offset_delta()
            )));
        }
        batch.compression().map_err(ProduceError::Corrupt)?;
        // Decoding every record checks varints, lengths and offset deltas, as Kafka's
        // validator does, so that no consumer is ever served a batch it cannot read.
        let records = batch.records().map_err(ProduceError::Corrupt)?;
        for (i, r) in records.iter().enumerate() {
            if r.offset != batch.base_offset().plus(i as i64) {
                return Err(ProduceError::InvalidRecord(format!(
                    "record {i} has a non-sequential offset delta"
                )));
            }
            if self.rules.compacted && r.key.is_none() {
                return Err(ProduceError::InvalidRecord(
                    "compacted topics need a key on every record".into(),
                ));
            }
            self.check_timestamp(now_ms, batch, r.timestamp)?;
        }
        Ok(())
    }

    /// Kafka's `message.timestamp.before.max.ms` and `message.timestamp.after.max.ms`: a
    /// CreateTime record's timestamp within those bounds of the broker's clock `now_ms`. A
    /// topic with LogAppendTime stamps the batch itself, and a LogAppendTime batch from a
    /// client carries the time it was appended elsewhere: neither is checked.
    fn check_timestamp(
        &self,
        now_ms: i64,
        batch: &Batch,
        timestamp: i64,
    ) -> Result<(), ProduceError> {
        if self.rules.log_append_time || batch.timestamp_type() == TimestampType::LogAppendTime {
            return Ok(());
        }
        let (before, after) = (
            self.rules.timestamp_before_max_ms,
            self.rules.timestamp_after_max_ms,
        );
        if timestamp < now_ms.saturating_sub(before) {
            return Err(ProduceError::InvalidTimestamp(format!(
                "timestamp {timestamp} is more than message.timestamp.before.max.ms={before} before the broker's time {now_ms}"
            )));
        }
        if timestamp > now_ms.saturating_add(after) {
            return Err(ProduceError::InvalidTimestamp(format!(
                "timestamp {timestamp} is more than message.timestamp.after.max.ms={after} after the broker's time {now_ms}"
            )));
        }
        Ok(())
    }

    /// The batch as the log stores it: recompressed into the topic's `compression.type`
    /// unless that is `producer`; refused if that makes it larger than `max.message.bytes`.
    fn stored_form(&self, batch: Batch) -> Result<Batch, ProduceError> {
        let Some((codec, level)) = self.rules.compression else {
            return Ok(batch);
        };
        let batch = batch
            .recompressed(codec, level)
            .map_err(ProduceError::Corrupt)?;
        if batch.size() > self.rules.max_message_bytes {
            return Err(ProduceError::TooLarge {
                size: batch.size(),
                max: self.rules.max_message_bytes,
            });
        }
        Ok(batch)
    }

    /// For acks=all, before appending (Kafka's `Partition.appendRecordsToLeader`):
    /// NOT_ENOUGH_REPLICAS when the committed ISR is smaller than `min.insync.replicas` (at
    /// most the number of replicas); NOT_LEADER_OR_FOLLOWER on a non-leader.
    pub fn check_enough_replicas(&self) -> Result<(), ProduceError> {
        let RoleState::Leader(l) = &self.role else {
            return Err(ProduceError::NotLeaderOrFollower);
        };
        let min = l.effective_min_isr(self.config.min_insync_replicas);
        let refuse = planted::active(Bug::RefuseAfterFailover)
            && self.epoch_start().is_some_and(|start| start > Offset::ZERO);
        if l.isr.len() < min || refuse {
            return Err(ProduceError::NotEnoughReplicas {
                isr: l.isr.len(),
                min,
            });
        }
        Ok(())
    }

    /// Validates, checks idempotence and appends a client batch at the log end offset. A
    /// duplicate of one of the producer's last five batches is not appended and is answered
    /// with the original offsets. Not durable until synced; not committed until the high
    /// watermark passes it ([`PartitionReplica::produce_status`]).
    pub fn append(&mut self, now_ms: i64, batch: Batch) -> Result<Appended, ProduceError> {
        if !self.is_leader() {
            return Err(ProduceError::NotLeaderOrFollower);
        }
        self.validate(now_ms, &batch)?;
        self.check_txn_produce(&batch)?;
        if let ProducerCheck::Duplicate {
            base_offset,
            last_offset,
        } = self.producers.check(&batch.header())?
        {
            return Ok(Appended {
                base_offset,
                last_offset,
                log_append_time_ms: -1,
                duplicate: true,
                leader_epoch: self.leader_epoch,
            });
        }
        let mut batch = self.stored_form(batch)?;
        let mut log_append_time_ms = -1;
        if self.rules.log_append_time {
            batch.set_log_append_time(now_ms);
            log_append_time_ms = now_ms;
        } else if batch.timestamp_type() == TimestampType::LogAppendTime {
            log_append_time_ms = batch.max_timestamp();
        }
        let mut header: BatchHeader = batch.header();
        let info = self.log.append(now_ms, batch, self.leader_epoch)?;
        header.base_offset = info.base_offset;
        header.partition_leader_epoch = self.leader_epoch;
        self.producers.record(&header);
        self.track_data(&header);
        Ok(Appended {
            base_offset: info.base_offset,
            last_offset: info.last_offset,
            log_append_time_ms,
            duplicate: false,
            leader_epoch: self.leader_epoch,
        })
    }

    /// Where an acks=all produce appended at `leader_epoch` up to `last_offset` stands (Kafka's
    /// `checkEnoughReplicasReachOffset`, plus an early NOT_ENOUGH_REPLICAS_AFTER_APPEND: under
    /// KIP-966's strict rule the high watermark cannot move while the ISR is below
    /// `min.insync.replicas`, so waiting would only end in a timeout). Acked once the exposed
    /// high watermark passes `last_offset`: every ISR member has the write on disk, and a
    /// ListOffsets or Fetch this leader serves after the answer sees it (read-after-ack).
    pub fn produce_status(&self, leader_epoch: LeaderEpoch, last_offset: Offset) -> AckStatus {
        let RoleState::Leader(l) = &self.role else {
            return AckStatus::Failed(code::NOT_LEADER_OR_FOLLOWER);
        };
        if leader_epoch != self.leader_epoch {
            return AckStatus::Failed(code::NOT_LEADER_OR_FOLLOWER);
        }
        if planted::active(Bug::AckBeforeIsr) && self.log.end() > last_offset {
            return AckStatus::Acked;
        }
        let enough = l.maximal_isr().len() >= l.effective_min_isr(self.config.min_insync_replicas);
        match (self.high_watermark > last_offset, enough) {
            (true, true) => AckStatus::Acked,
            (_, false) => AckStatus::Failed(code::NOT_ENOUGH_REPLICAS_AFTER_APPEND),
            (false, true) => AckStatus::Waiting,
        }
    }

    // ---------------------------------------------------------------------------------------
    // Leader: followers and the ISR

    /// Serves a follower's fetch (Kafka's `Partition.fetchRecords` for a replica): checks the
    /// follower's epoch (KIP-320), finds a diverged log from its last fetched epoch (KIP-279:
    /// the answer is [`FetchPayload::Diverging`], and nothing about the follower is recorded),
    /// else reads batches from the fetch offset up to the log end offset, records the
    /// follower's log end and durable end, proposes adding it to the ISR if it qualifies, and
    /// moves the high watermark. The response carries the high watermark after this fetch.
    pub fn handle_follower_fetch(
        &mut self,
        now_ms: i64,
        request: &FetchRequest,
    ) -> Result<FetchResponse, FetchError> {
        let RoleState::Leader(l) = &self.role else {
            return Err(FetchError::NotLeader);
        };
        match request.leader_epoch.cmp(&self.leader_epoch) {
            Ordering::Less => {
                return Err(FetchError::FencedLeaderEpoch {
                    current: self.leader_epoch,
                    got: request.leader_epoch,
                })
            }
            Ordering::Greater => {
                return Err(FetchError::UnknownLeaderEpoch {
                    current: self.leader_epoch,
                    got: request.leader_epoch,
                })
            }
            Ordering::Equal => {}
        }
        if request.replica == self.config.broker_id || !l.replicas.contains(&request.replica) {
            return Err(FetchError::NotAFollower(request.replica));
        }
        if request.last_fetched_epoch > self.leader_epoch {
            return Err(FetchError::Protocol(format!(
                "last fetched epoch {} is newer than the current epoch {}",
                request.last_fetched_epoch, self.leader_epoch
            )));
        }
        if request.durable_end > request.fetch_offset || request.durable_end.0 < 0 {
            return Err(FetchError::Protocol(format!(
                "durable end {} is not within the log end {}",
                request.durable_end, request.fetch_offset
            )));
        }
        let (log_start, log_end) = (self.log.log_start(), self.log.end());
        let epoch_start = l.epoch_start;
        let payload = if request.fetch_offset < log_start {
            FetchPayload::OffsetOutOfRange
        } else if let Some((epoch, end_offset)) = self
            .diverging(request, epoch_start)
            .filter(|_| !planted::active(Bug::SkipTruncation))
        {
            FetchPayload::Diverging { epoch, end_offset }
        } else if request.fetch_offset > log_end {
            FetchPayload::OffsetOutOfRange
        } else {
            let max_bytes = request.max_bytes.min(self.config.fetch_bytes_max);
            let batches = self.log.read(request.fetch_offset, max_bytes, log_end)?;
            let RoleState::Leader(l) = &mut self.role else {
                unreachable!("checked above")
            };
            l.record_fetch(
                now_ms,
                request.replica,
                request.fetch_offset,
                request.durable_end,
                request.cleaned_end,
                log_end,
            );
            self.maybe_expand_isr(now_ms, request.replica);
            self.advance_high_watermark();
            FetchPayload::Records(batches)
        };
        Ok(FetchResponse {
            leader_epoch: self.leader_epoch,
            high_watermark: self.high_watermark,
            log_start,
            log_end,
            payload,
        })
    }

    /// KIP-279 on the leader (`Partition.readFromLocalLog`): the follower's last fetched epoch
    /// ends here before its fetch offset, or is unknown here: it diverged.
    fn diverging(
        &self,
        request: &FetchRequest,
        epoch_start: Offset,
    ) -> Option<(LeaderEpoch, Offset)> {
        if request.last_fetched_epoch.0 < 0 {
            return None;
        }
        let current = EpochEntry {
            epoch: self.leader_epoch,
            start_offset: epoch_start,
        };
        let (epoch, end) = end_offset_for(
            self.log.epochs().entries(),
            Some(current),
            request.last_fetched_epoch,
            self.log.end(),
        )
        .expect("the leader knows its own epoch, and the requested one is not newer");
        (epoch < request.last_fetched_epoch || end < request.fetch_offset).then_some((epoch, end))
    }

    /// The highest high watermark this replica exposed, persisted or asked to persist: a new
    /// ISR member must have at least this much on disk, and no truncation may go below it.
    fn hw_floor(&self) -> Offset {
        let in_flight = self
            .hw_write_in_flight
            .as_ref()
            .map_or(Offset::ZERO, |w| w.high_watermark);
        self.high_watermark
            .max(self.hw_persisted)
            .max(self.hw_wanted)
            .max(in_flight)
    }

    fn maybe_expand_isr(&mut self, now_ms: i64, follower: BrokerId) {
        let floor = self.hw_floor();
        let (epoch, partition_epoch) = (self.leader_epoch, self.partition_epoch);
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        if l.pending.is_none() && l.may_join(follower, floor) {
            let isr = l.isr_with(Some(follower), &[]);
            l.propose(now_ms, isr, epoch, partition_epoch);
        }
    }

    fn maybe_shrink_isr(&mut self, now_ms: i64) {
        let (epoch, partition_epoch) = (self.leader_epoch, self.partition_epoch);
        let (log_end, lag_max_ms) = (self.log.end(), self.config.lag_time_max_ms);
        let RoleState::Leader(l) = &mut self.role else {
            return;
        };
        if l.pending.is_some() {
            return;
        }
        let out = l.out_of_sync(now_ms, log_end, lag_max_ms);
        if !out.is_empty() {
            let isr = l.isr_with(None, &out);
            l.propose(now_ms, isr, epoch, partition_epoch);
        }
    }

    /// The ISR change to send to the controller, once (at most one is in flight).
    pub fn poll_alter_partition(&mut self) -> Option<AlterPartition> {
        match &mut self.role {
            RoleState::Leader(l) => l.outbox.take(),
            _ => None,
        }
    }

    /// The controller rejected AlterPartition `id`, or it got no answer in time: forget it; a
    /// later check proposes again (after `alter_partition_backoff_ms`).
    pub fn on_alter_partition_failed(&mut self, now_ms: i64, id: u64) {
        let retry = now_ms.saturating_add(self.config.alter_partition_backoff_ms);
        if let RoleState::Leader(l) = &mut self.role {
            l.proposal_failed(id, retry);
        }
        self.advance_high_watermark();
    }

    /// The next time [`PartitionReplica::handle_timeout`] has work: an ISR follower falling out
    /// of sync (leader; a damaged one looks again every
    /// [`damage::DAMAGED_LEADER_RECHECK_MS`]), the end of the backoff after a failed proposal
    /// when a replica may join the ISR (leader), or the end of a fetch backoff (follower).
    pub fn poll_timeout(&self) -> Option<i64> {
        match &self.role {
            RoleState::Leader(l) => {
                let shrink = l
                    .shrink_deadline(self.config.lag_time_max_ms, self.log.end())
                    .map(|at| match self.damage.is_damaged() {
                        true => self.damage.leader_deadline(at),
                        false => at,
                    });
                // A replica that may join, after a failed proposal (not on a damaged leader,
                // which adds nobody).
                let expand = (!self.damage.is_damaged())
                    .then(|| l.expand_deadline(self.hw_floor()))
                    .flatten();
                shrink.into_iter().chain(expand).min()
            }
            RoleState::Follower(f) if f.in_flight.is_none() && f.backoff_until_ms > i64::MIN => {
                Some(f.backoff_until_ms)
            }
            _ => None,
        }
    }

    /// Timer work: proposes removing out-of-sync followers from the ISR (Kafka's
    /// `maybeShrinkIsr`; not on a damaged leader), or adding one that may join whose earlier
    /// proposal failed; ends a follower's fetch backoff.
    pub fn handle_timeout(&mut self, now_ms: i64) {
        // The shell's timer fired: the next deadline is reported again, even if unchanged.
        self.reported.deadline = None;
        if self.is_leader() && self.damage.is_damaged() {
            // Its followers lag because it cannot serve them, and it is stepping down to the
            // sound ones: no shrink. It looks again after a while.
            self.damage.defer_leader_timeout(now_ms);
        } else if self.is_leader() {
            self.maybe_shrink_isr(now_ms);
            // A replica whose proposal failed earlier, proposed again (see
            // `LeaderState::expand_deadline`).
            let joiner = match &self.role {
                RoleState::Leader(l) => l.joiner(self.hw_floor()),
                _ => None,
            };
            if let Some(follower) = joiner {
                self.maybe_expand_isr(now_ms, follower);
            }
        } else if let RoleState::Follower(f) = &mut self.role {
            if now_ms >= f.backoff_until_ms {
                f.backoff_until_ms = i64::MIN;
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Follower

    /// Forgets the fetch in flight without backing off: the shell sends a fresh one from
    /// [`PartitionReplica::next_fetch`] (its durable end moved while the leader held the old
    /// one, or the fetch session that carried it was lost). An answer to the old one still
    /// applies to the new one if it is for the same epoch and log end.
    pub fn cancel_fetch(&mut self) {
        if let RoleState::Follower(f) = &mut self.role {
            f.in_flight = None;
        }
    }

    /// The next fetch to send to the leader, recorded as in flight: from the log end offset,
    /// with the epoch of the last batch (KIP-279) and the durable end (keel). `None` while one
    /// is in flight or backing off, without a leader, or on a non-follower.
    pub fn next_fetch(&mut self, now_ms: i64) -> Option<FetchRequest> {
        let request = FetchRequest {
            replica: self.config.broker_id,
            leader_epoch: self.leader_epoch,
            fetch_offset: self.log.end(),
            last_fetched_epoch: if self.planted_added && self.log.end() > self.log.log_start() {
                // The planted bug: the epoch the replica follows at, not its last batch's.
                self.leader_epoch
            } else {
                self.log
                    .epochs()
                    .latest()
                    .map_or(LeaderEpoch::NONE, |e| e.epoch)
            },
            durable_end: self.durable_end(),
            cleaned_end: self.log.cleaned_end(),
            max_bytes: self.config.fetch_bytes_max,
        };
        let RoleState::Follower(f) = &mut self.role else {
            return None;
        };
        if f.leader == BrokerId::NONE || f.in_flight.is_some() || now_ms < f.backoff_until_ms {
            return None;
        }
        f.in_flight = Some(request.clone());
        Some(request)
    }

    /// The fetch in flight failed (an error from the leader, or no answer in time): back off
    /// for `replica.fetch.backoff.ms`.
    pub fn handle_fetch_error(&mut self, now_ms: i64) {
        if let RoleState::Follower(f) = &mut self.role {
            f.in_flight = None;
            f.backoff_until_ms = now_ms.saturating_add(self.config.fetch_backoff_ms);
        }
    }

    /// Applies the leader's answer to the fetch in flight (`ReplicaFetcherThread`): appends
    /// batches keeping their offsets and epochs, truncates a diverged suffix (KIP-279's
    /// `getOffsetTruncationState`; the next fetch carries the new last epoch, so several rounds
    /// may be needed), or restarts the log at the leader's log start offset. Then the high
    /// watermark: the smallest of the leader's and this log's durable end. `snapshots` holds
    /// the producer snapshots, which a truncation rebuilds from.
    ///
    /// A response to anything but the fetch in flight, at this epoch, from this log end, is
    /// [`FetchOutcome::Stale`]. Errors are the leader's protocol violations (nothing is applied
    /// from that batch on; back off and fetch again) and storage failures.
    pub fn handle_fetch_response<T: Storage>(
        &mut self,
        now_ms: i64,
        snapshots: &mut T,
        response: FetchResponse,
    ) -> Result<FetchOutcome, ReplicaError> {
        self.damage.heard_leader_hw(response.high_watermark);
        let RoleState::Follower(f) = &mut self.role else {
            return Ok(FetchOutcome::Stale);
        };
        let Some(request) = f.in_flight.take() else {
            return Ok(FetchOutcome::Stale);
        };
        if response.leader_epoch != self.leader_epoch || request.fetch_offset != self.log.end() {
            return Ok(FetchOutcome::Stale);
        }
        if response.log_start > response.log_end
            || response.high_watermark > response.log_end
            || response.high_watermark < response.log_start
        {
            return Err(ReplicaError::Protocol(format!(
                "log start {}, high watermark {}, log end {} out of order",
                response.log_start, response.high_watermark, response.log_end
            )));
        }
        let outcome = match response.payload {
            FetchPayload::Records(batches) => {
                let end = self.log.end();
                if let Some(first) = batches.first() {
                    if first.base_offset() < end && end > self.log.log_start() {
                        // The leader's batch holding this log's end offset starts before it:
                        // this log's last batch is not the leader's, a divergence the leader
                        // could not see because the epochs that show it are below its log
                        // start (DeleteRecords, retention). Cut the batch that holds the
                        // leader's batch start and fetch again. Batches below the high
                        // watermark are the leader's, so this never cuts below it.
                        let to = first.base_offset();
                        let outcome = FetchOutcome::Truncated(self.truncate_log(snapshots, to)?);
                        self.check_invariants();
                        return Ok(outcome);
                    }
                }
                let mut appended = 0;
                for batch in batches {
                    self.append_from_leader(now_ms, snapshots, batch)?;
                    appended += 1;
                }
                self.follow_leader_log_start(response.log_start)?;
                self.follow_leader_hw(response.high_watermark);
                FetchOutcome::Appended(appended)
            }
            FetchPayload::Diverging { epoch, end_offset } => {
                if epoch > request.last_fetched_epoch
                    || (epoch == request.last_fetched_epoch && end_offset >= request.fetch_offset)
                {
                    return Err(ReplicaError::Protocol(format!(
                        "diverging epoch {epoch} ending at {end_offset} does not diverge from \
                         epoch {} at {}",
                        request.last_fetched_epoch, request.fetch_offset
                    )));
                }
                let to = if planted::active(Bug::FollowerSkipsTruncation) {
                    self.log.end()
                } else {
                    self.divergence_truncation_offset(epoch, end_offset)
                };
                FetchOutcome::Truncated(self.truncate_log(snapshots, to)?)
            }
            FetchPayload::OffsetOutOfRange => {
                if self.log.end() < response.log_start {
                    // Behind the leader's log start (Kafka's `handleOutOfRangeOffset`): start
                    // over there. Everything below it is committed (a leader's log start never
                    // passes its high watermark), and the new start is durable (the log's
                    // checkpoint), so the high watermark may move there unpersisted: recovery
                    // takes the larger of the persisted high watermark and the log start.
                    self.log
                        .truncate_fully_and_start_at(now_ms, response.log_start)?;
                    producer::remove_all_snapshots(snapshots)?;
                    self.producers = ProducerStateTable::new(response.log_start);
                    self.rebuild_txns();
                    self.set_high_watermark(self.high_watermark.max(response.log_start));
                    self.follow_leader_hw(response.high_watermark);
                    FetchOutcome::Restarted(response.log_start)
                } else if self.log.end() > response.log_end {
                    // Ahead of the leader with no epoch to compare (an empty epoch cache).
                    FetchOutcome::Truncated(self.truncate_log(snapshots, response.log_end)?)
                } else {
                    return Err(ReplicaError::Protocol(format!(
                        "offset {} is out of range, yet within the leader's log [{}, {}]",
                        request.fetch_offset, response.log_start, response.log_end
                    )));
                }
            }
        };
        self.check_invariants();
        Ok(outcome)
    }

    /// Moves the log start up to the leader's (Kafka's `maybeIncrementLogStartOffset` on a
    /// follower), as far as this log is durable, before the high watermark moves: what lies
    /// below the leader's log start is committed and deleted there, and may be a diverged
    /// suffix here that no epoch check can find any more (the leader's epochs for it are gone).
    /// The high watermark comes up with it: recovery takes the larger of the persisted high
    /// watermark and the (durable) log start.
    fn follow_leader_log_start(&mut self, leader_log_start: Offset) -> Result<(), LogError> {
        if leader_log_start > self.log.log_start() {
            let start = self
                .log
                .advance_log_start(leader_log_start, self.log.durable_end())?;
            self.txns.log_start_moved(start);
            self.sync_txn_index();
            if start > self.high_watermark {
                self.set_high_watermark(start);
            }
        }
        Ok(())
    }

    fn follow_leader_hw(&mut self, leader_hw: Offset) {
        if let RoleState::Follower(f) = &mut self.role {
            f.leader_hw = f.leader_hw.max(leader_hw);
        }
        self.advance_high_watermark();
    }

    /// Appends one batch from the leader, keeping its offsets and epoch.
    fn append_from_leader<T: Storage>(
        &mut self,
        now_ms: i64,
        snapshots: &mut T,
        batch: Batch,
    ) -> Result<(), ReplicaError> {
        let epoch = batch.partition_leader_epoch();
        let latest = self.log.epochs().latest().map(|e| e.epoch);
        if epoch.0 < 0 || epoch > self.leader_epoch || latest.is_some_and(|l| epoch < l) {
            return Err(ReplicaError::Protocol(format!(
                "batch at {} has epoch {epoch}, outside [{}, {}]",
                batch.base_offset(),
                latest.unwrap_or(LeaderEpoch::NONE),
                self.leader_epoch
            )));
        }
        let end = self.log.end();
        if batch.base_offset() < end && end == self.log.log_start() && batch.last_offset() >= end {
            // The leader's log start is inside this batch (DeleteRecords) and this log is
            // empty: take the whole batch (Kafka's UnexpectedAppendOffsetException handling in
            // `Partition.appendRecordsToFollowerOrFutureReplica`). Nothing is cut; the log
            // start moves back to the batch's base. Synced at once, so that the high
            // watermark (at most the old start) stays within the durable end.
            let base = batch.base_offset();
            self.log.truncate_fully_and_start_at(now_ms, base)?;
            producer::remove_all_snapshots(snapshots)?;
            self.producers = ProducerStateTable::new(base);
            let header = batch.header();
            self.log.append_replicated(now_ms, batch.clone())?;
            self.producers.record(&header);
            self.rebuild_txns();
            self.log.sync()?;
            return Ok(());
        }
        if batch.base_offset() != end {
            return Err(ReplicaError::Protocol(format!(
                "batch at {} does not follow the log end offset {end}",
                batch.base_offset()
            )));
        }
        let header = batch.header();
        self.log.append_replicated(now_ms, batch.clone())?;
        self.producers.record(&header);
        self.track_batch(&batch);
        Ok(())
    }

    /// Kafka's `AbstractFetcherThread.getOffsetTruncationState` for a divergingEpoch answer.
    fn divergence_truncation_offset(&self, epoch: LeaderEpoch, end_offset: Offset) -> Offset {
        let end = self.log.end();
        match end_offset_for(self.log.epochs().entries(), None, epoch, end) {
            // This log does not know the leader's epoch: cut to where its own largest earlier
            // epoch ends, and ask again.
            Some((own, own_end)) if own != epoch => own_end.min(end),
            Some((_, own_end)) => own_end.min(end_offset).min(end),
            None => end_offset.min(end),
        }
    }

    /// Truncates the log at `to` (the batch containing it goes too) and rebuilds the producer
    /// state. Invariant 6: never below the high watermark, nor any this replica persisted.
    fn truncate_log<T: Storage>(
        &mut self,
        snapshots: &mut T,
        to: Offset,
    ) -> Result<Offset, ReplicaError> {
        let end = self.log.end();
        if to >= end {
            return Ok(end);
        }
        let floor = self.hw_floor();
        let cut = if to < self.log.log_start() {
            to
        } else {
            self.log
                .read(to, 1, end)?
                .first()
                .map_or(to, Batch::base_offset)
        };
        if cut < floor {
            // Only a leader that lacks committed data asks this (its disk lost it, or it was
            // elected outside the fault model): keep the data, refuse, and let the shell back
            // off. Truncating would destroy the last copies of acknowledged records.
            return Err(ReplicaError::Protocol(format!(
                "invariant 6: the leader asks to truncate at {cut}, below the high watermark \
                 {floor}; it lacks committed data this replica holds, so this replica refuses"
            )));
        }
        // A failed truncation or replay (damage on disk) leaves no producer state past the log:
        // a stale entry would answer a retried send as a duplicate at offsets that are gone.
        let new_end = match self.log.truncate_to(to) {
            Ok(end) => end,
            Err(e) => {
                self.producers.truncate_from(self.log.end());
                return Err(e.into());
            }
        };
        assert!(
            new_end >= floor && new_end == cut,
            "invariant 6: truncation ended the log at {new_end}, expected {cut} >= {floor}"
        );
        self.txns.truncate_from(new_end);
        self.sync_txn_index();
        match producer::recover(snapshots, &self.log) {
            Ok((producers, _report)) => self.producers = producers,
            Err(e) => {
                self.producers.truncate_from(self.log.end());
                return Err(e.into());
            }
        }
        Ok(new_end)
    }

    /// The first offset whose batch fails to read (its CRC or the fields outside it), scanning
    /// the log from its start: runtime damage, such as a sector that rotted after recovery
    /// read it. `None` if every batch reads.
    pub fn find_damage(&self) -> Result<Option<Offset>, LogError> {
        first_damaged(&self.log)
    }

    /// Discards the log from `from` (the first damaged offset, [`Self::find_damage`]) so that
    /// it can be fetched again from the leader, and rebuilds the producer state. Only a
    /// replica that does not lead: its copy below `from` stays, the rest comes back from a
    /// sound one. The cut goes back one batch, to the start of the last sound batch, so that
    /// the cut point is found through sound headers only. Unlike a divergence truncation this
    /// may go below the high watermark, which is lowered to the new end (as recovery lowers
    /// it when the disk lost synced data, [`StateReport::hw_above_log`]): the broker keeps
    /// such a replica out of leadership until it has fetched back.
    pub fn discard_damaged<T: Storage>(
        &mut self,
        now_ms: i64,
        snapshots: &mut T,
        from: Offset,
    ) -> Result<Offset, ReplicaError> {
        if matches!(self.role, RoleState::Leader(_)) {
            return Err(ReplicaError::Protocol(
                "a leader does not discard its log: it steps down first".into(),
            ));
        }
        let cut = self.cut_damaged(now_ms, snapshots, from);
        // However far the cut got (a failed write may leave it part done), the high watermark
        // follows the log down, and the producer state goes no further than the log.
        let floor = self.log.durable_end().max(self.log.log_start());
        let old = self.high_watermark;
        if old > floor {
            self.state_report.hw_above_log = Some(old);
            self.high_watermark = floor;
            self.hw_persisted = self.hw_persisted.min(floor);
            self.hw_wanted = self.hw_wanted.min(floor);
        }
        if cut.is_err() {
            self.producers.truncate_from(self.log.end());
        }
        self.rebuild_txns();
        self.check_invariants();
        cut
    }

    /// A replica with runtime damage pending ([`PartitionReplica::on_read_failed`]), as a
    /// follower with a leader to fetch from: finds the first damaged batch and discards the
    /// log from there ([`PartitionReplica::discard_damaged`]), so that the fetches that follow
    /// bring it back. Returns the new log end if it discarded (or found nothing damaged any
    /// more); `None` with nothing pending, or without a leader: then this copy, damaged or
    /// not, may be the only one of what lies around the damage. Call before naming the next
    /// fetch. A failure leaves the discard pending and backs the follower off: its next fetch,
    /// and the next try, wait for the backoff's deadline ([`PartitionReplica::poll_timeout`]).
    pub fn discard_pending_damage<T: Storage>(
        &mut self,
        now_ms: i64,
        snapshots: &mut T,
    ) -> Result<Option<Offset>, ReplicaError> {
        if !self.damage.discard_pending() || self.fetch_leader().is_none() {
            return Ok(None);
        }
        let discarded = match self.find_damage() {
            Ok(Some(at)) => self.discard_damaged(now_ms, snapshots, at),
            Ok(None) => Ok(self.log.end()),
            Err(e) => Err(e.into()),
        };
        match discarded {
            Ok(end) => {
                self.damage.discarded();
                Ok(Some(end))
            }
            Err(e) => {
                // Tried again after the fetch backoff (its deadline): the discard stays
                // pending, and nothing else would bring this follower back to it (its leader
                // answers only when it has news, which an idle partition never has).
                self.handle_fetch_error(now_ms);
                Err(e)
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Damage ([`damage`])

    /// Whether this replica may lack committed data: it leads nothing until repaired.
    pub fn is_damaged(&self) -> bool {
        self.damage.is_damaged()
    }

    pub fn damage(&self) -> &Damage {
        &self.damage
    }

    /// Counts this replica damaged (the shell found it failed to open before, on damage this
    /// open may not have seen) and writes the mark through `snapshots`. On an error it counts
    /// as damaged all the same.
    pub fn mark_damaged<T: Storage>(&mut self, snapshots: &mut T) -> Result<(), StorageError> {
        self.damage.mark();
        damage::write_mark(snapshots)
    }

    /// A read of this replica's log failed with `e`. Damage (a batch whose CRC or unchecked
    /// fields are wrong: bit rot, a misdirected write) makes the replica damaged, writes the
    /// mark, and leaves a discard pending ([`PartitionReplica::discard_pending_damage`]).
    /// Other errors (a failed I/O) change nothing: the reader answers them and tries again.
    /// Returns whether this made a sound replica damaged (also when the mark's write failed,
    /// the error).
    pub fn on_read_failed<T: Storage>(
        &mut self,
        e: &LogError,
        snapshots: &mut T,
    ) -> Result<bool, StorageError> {
        if !matches!(e, LogError::Corrupt { .. }) {
            return Ok(false);
        }
        if !self.damage.read_failed() {
            return Ok(false);
        }
        damage::write_mark(snapshots)?;
        Ok(true)
    }

    /// Removes the damage mark and counts the replica sound once the repair rule holds (no
    /// discard pending, the log at the first high watermark heard from a leader). Returns
    /// whether it was repaired now; on an error it stays damaged and a later call tries again.
    pub fn repair_if_due<T: Storage>(&mut self, snapshots: &mut T) -> Result<bool, StorageError> {
        self.damage.repair_if_due(self.log.end(), snapshots)
    }

    /// The log and producer state work of [`Self::discard_damaged`]. More damage below the cut
    /// (sound-looking headers that lead astray, or a batch rotted since it was read) starts
    /// the log over at its start.
    fn cut_damaged<T: Storage>(
        &mut self,
        now_ms: i64,
        snapshots: &mut T,
        from: Offset,
    ) -> Result<Offset, ReplicaError> {
        let start = self.log.log_start();
        let mut whole = from <= start;
        if !whole {
            match self.log.truncate_to(Offset(from.0 - 1)) {
                Ok(_) => {}
                Err(LogError::Corrupt { .. }) => whole = true,
                Err(e) => return Err(e.into()),
            }
        }
        let rebuilt = if whole {
            None
        } else {
            match producer::recover(snapshots, &self.log) {
                Ok((producers, _report)) => Some(producers),
                Err(producer::RecoverError::Log(LogError::Corrupt { .. })) => None,
                Err(e) => return Err(e.into()),
            }
        };
        self.producers = match rebuilt {
            Some(producers) => producers,
            None => {
                self.log.truncate_fully_and_start_at(now_ms, start)?;
                producer::recover(snapshots, &self.log)?.0
            }
        };
        Ok(self.log.end())
    }

    // ---------------------------------------------------------------------------------------
    // High watermark

    /// Syncs the log in place (tests and shutdown; the broker syncs off-thread) and moves the
    /// high watermark.
    pub fn sync(&mut self) -> Result<Offset, LogError> {
        self.log.sync()?;
        Ok(self.update_high_watermark())
    }

    /// Recomputes the high watermark after the log's durable end moved (a completed sync).
    /// Returns the exposed high watermark.
    pub fn update_high_watermark(&mut self) -> Offset {
        self.advance_high_watermark();
        self.high_watermark
    }

    /// The offset below which this replica's log is synced ([`Log::durable_end`]).
    fn durable_end(&self) -> Offset {
        if planted::active(Bug::HighWatermarkWithoutSync) {
            return self.log.end();
        }
        self.log.durable_end()
    }

    /// Moves the high watermark as far as the ISR (leader) or the leader (follower) allows,
    /// and, where it must be persisted first, as far as the persisted value allows.
    fn advance_high_watermark(&mut self) {
        let durable = self.durable_end();
        let bound = match &self.role {
            RoleState::Leader(l) => l.hw_bound(durable, self.config.min_insync_replicas),
            RoleState::Follower(f) => Some(f.leader_hw.min(durable)),
            RoleState::Offline => None,
        };
        let Some(bound) = bound else {
            return;
        };
        if bound <= self.high_watermark {
            return;
        }
        self.hw_wanted = bound;
        // The planted bug exposes it before the sync that persists it (and so before the
        // log sync that precedes that).
        let exposed = if self.sole || planted::active(Bug::HighWatermarkWithoutSync) {
            bound
        } else {
            bound.min(self.hw_persisted)
        };
        if exposed > self.high_watermark {
            self.set_high_watermark(exposed);
        }
    }

    fn set_high_watermark(&mut self, hw: Offset) {
        assert!(
            hw >= self.high_watermark,
            "invariant 2: the high watermark never decreases ({} -> {hw})",
            self.high_watermark
        );
        assert!(
            hw <= self.durable_end(),
            "invariant 3: the high watermark {hw} exceeds this replica's durable end {}",
            self.log.durable_end()
        );
        if let RoleState::Leader(l) = &self.role {
            for member in l.maximal_isr() {
                if let Some(d) = l.followers.get(&member).and_then(|p| p.durable_end) {
                    assert!(
                        hw <= d,
                        "invariant 3: the high watermark {hw} exceeds the durable end {d} of ISR \
                         member {member}"
                    );
                }
            }
        }
        self.high_watermark = hw;
    }

    /// The next thing the shell must do for this replica, in the order of [`Effect`]'s
    /// variants; `None` when there is nothing. Call until `None` after every input (a produce,
    /// a follower's fetch, a fetch answer, a sync round, a role change, a timeout, an
    /// AlterPartition answer). Each effect is reported once: an unsynced log or a wanted high
    /// watermark write until the write is handed out, a high watermark or a deadline when it
    /// changed.
    pub fn poll_effect(&mut self) -> Option<Effect> {
        if let Some(alter) = self.poll_alter_partition() {
            return Some(Effect::AlterPartition(alter));
        }
        let unsynced = self.log.durable_end() < self.log.end();
        if !self.reported.sync && unsynced {
            self.reported.sync = true;
            return Some(Effect::Sync);
        }
        if !self.reported.state_write && self.state_write_wanted() {
            self.reported.state_write = true;
            return Some(Effect::WriteHighWatermark);
        }
        if self.high_watermark != self.reported.high_watermark {
            self.reported.high_watermark = self.high_watermark;
            return Some(Effect::HighWatermark(self.high_watermark));
        }
        let deadline = self.poll_timeout();
        if deadline != self.reported.deadline {
            self.reported.deadline = deadline;
            if let Some(at) = deadline {
                return Some(Effect::Deadline(at));
            }
        }
        None
    }

    /// Every effect [`PartitionReplica::poll_effect`] has now, in order.
    pub fn poll_effects(&mut self) -> Vec<Effect> {
        std::iter::from_fn(|| self.poll_effect()).collect()
    }

    /// The first half of a sync round ([`Effect::Sync`]): the file to sync outside the lock, if
    /// the log has unsynced data ([`Log::prepare_sync`]). Appends from here on are reported as
    /// a new [`Effect::Sync`].
    pub fn prepare_sync(&mut self) -> Option<PendingSync> {
        self.reported.sync = false;
        self.log.prepare_sync()
    }

    /// The second half: `pending`'s file is synced. Moves the log's durable end and the high
    /// watermark as far as they may go; returns the durable end.
    pub fn complete_sync(&mut self, pending: PendingSync) -> Offset {
        let durable = self.log.complete_sync(pending);
        self.advance_high_watermark();
        durable
    }

    /// Whether [`PartitionReplica::prepare_state_write`] has a write to hand out.
    pub fn state_write_wanted(&self) -> bool {
        !self.sole && self.hw_write_in_flight.is_none() && self.hw_wanted > self.hw_persisted
    }

    /// The next high watermark write for the shell to run, if one is wanted and none is in
    /// flight. Run [`StateWrite::write_to`] on the partition's side storage (where
    /// `snapshots` live), then [`PartitionReplica::complete_state_write`].
    pub fn prepare_state_write(&mut self) -> Option<StateWrite> {
        self.reported.state_write = false;
        if self.sole || self.hw_write_in_flight.is_some() || self.hw_wanted <= self.hw_persisted {
            return None;
        }
        self.hw_seq += 1;
        let write = StateWrite {
            seq: self.hw_seq,
            high_watermark: self.hw_wanted,
        };
        self.hw_write_in_flight = Some(write.clone());
        Some(write)
    }

    /// `write` is durable: the high watermark may now be exposed up to it. Returns the exposed
    /// high watermark.
    pub fn complete_state_write(&mut self, write: StateWrite) -> Offset {
        if self.hw_write_in_flight.as_ref() == Some(&write) {
            self.hw_write_in_flight = None;
            self.hw_persisted = self.hw_persisted.max(write.high_watermark);
            self.advance_high_watermark();
        }
        self.high_watermark
    }

    /// `write` failed: a later [`PartitionReplica::prepare_state_write`] tries again (in the
    /// other slot, so the last good value stays readable).
    pub fn fail_state_write(&mut self, write: StateWrite) {
        if self.hw_write_in_flight.as_ref() == Some(&write) {
            self.hw_write_in_flight = None;
        }
    }

    /// Runs every wanted high watermark write in place (tests and shutdown). Returns the
    /// exposed high watermark.
    pub fn persist_state<T: Storage + ?Sized>(
        &mut self,
        storage: &mut T,
    ) -> Result<Offset, StorageError> {
        while let Some(write) = self.prepare_state_write() {
            if let Err(e) = write.write_to(storage) {
                self.fail_state_write(write);
                return Err(e);
            }
            self.complete_state_write(write);
        }
        Ok(self.high_watermark)
    }

    // ---------------------------------------------------------------------------------------
    // Client requests served by the leader, retention, checkpoints

    /// Kafka's OffsetForLeaderEpoch on the leader: the largest epoch at or below `epoch` and
    /// where it ends (`LeaderEpochFileCache.endOffsetFor`, with the leader's current epoch in
    /// the cache from its start offset). A client epoch above ours is UNKNOWN_LEADER_EPOCH;
    /// `None` when the log knows no epoch at all.
    pub fn end_offset_for_epoch(
        &self,
        epoch: LeaderEpoch,
    ) -> Result<Option<(LeaderEpoch, Offset)>, ErrorCode> {
        let RoleState::Leader(l) = &self.role else {
            return Err(code::NOT_LEADER_OR_FOLLOWER);
        };
        if epoch > self.leader_epoch {
            return Err(code::UNKNOWN_LEADER_EPOCH);
        }
        let current = EpochEntry {
            epoch: self.leader_epoch,
            start_offset: l.epoch_start,
        };
        Ok(end_offset_for(
            self.log.epochs().entries(),
            Some(current),
            epoch,
            self.log.end(),
        ))
    }

    /// Checks a client's current leader epoch (KIP-320): older is FENCED_LEADER_EPOCH, newer
    /// is UNKNOWN_LEADER_EPOCH, -1 means the client does not know it. The shell also checks
    /// [`PartitionReplica::is_leader`] (NOT_LEADER_OR_FOLLOWER).
    pub fn check_client_epoch(&self, epoch: i32) -> Result<(), ErrorCode> {
        match epoch {
            -1 => Ok(()),
            e if e < self.leader_epoch.0 => Err(code::FENCED_LEADER_EPOCH),
            e if e > self.leader_epoch.0 => Err(code::UNKNOWN_LEADER_EPOCH),
            _ => Ok(()),
        }
    }

    /// Kafka's DeleteRecords, on the leader: moves the log start offset to `offset` (-1 means
    /// the high watermark), never past the high watermark. OFFSET_OUT_OF_RANGE beyond it.
    /// Followers follow the leader's log start from fetch responses.
    pub fn delete_records(&mut self, offset: i64) -> Result<Offset, ProduceError> {
        if !self.is_leader() {
            return Err(ProduceError::NotLeaderOrFollower);
        }
        let target = if offset == -1 {
            self.high_watermark
        } else {
            Offset(offset)
        };
        if target > self.high_watermark || target.0 < 0 {
            return Err(ProduceError::InvalidRecord(format!(
                "offset {target} is beyond the high watermark {}",
                self.high_watermark
            )));
        }
        let start = self.log.advance_log_start(target, self.high_watermark)?;
        self.txns.log_start_moved(start);
        self.sync_txn_index();
        assert!(
            start <= self.high_watermark,
            "log start never passes the high watermark"
        );
        Ok(start)
    }

    /// Applies retention, bounded by the high watermark.
    pub fn apply_retention(&mut self, now_ms: i64) -> Result<usize, LogError> {
        let removed = self.log.apply_retention(now_ms, self.high_watermark)?;
        if removed > 0 {
            self.txns.log_start_moved(self.log.log_start());
            self.sync_txn_index();
        }
        self.producers
            .expire(now_ms, producer::PRODUCER_ID_EXPIRATION_MS_DEFAULT);
        Ok(removed)
    }

    /// Syncs, writes a producer state snapshot at the durable end, the log's checkpoint, and
    /// the wanted high watermark if no write is in flight, so that the next open replays and
    /// re-validates less. Call on clean shutdown and periodically.
    pub fn checkpoint<T: Storage>(&mut self, snapshots: &mut T) -> Result<(), LogError> {
        self.log.sync()?;
        self.update_high_watermark();
        self.persist_state(snapshots)?;
        self.log.checkpoint()?;
        if self.producers.end() == self.log.end()
            && self.snapshot_written != Some(self.producers.end())
        {
            producer::write_snapshot(snapshots, &self.producers)?;
            producer::prune_snapshots(snapshots, 2)?;
            self.snapshot_written = Some(self.producers.end());
        }
        Ok(())
    }

    /// Asserts what holds between calls (see the module documentation).
    pub fn check_invariants(&self) {
        self.log.check_invariants();
        assert!(
            self.log.log_start() <= self.high_watermark,
            "the log start {} never passes the high watermark {}",
            self.log.log_start(),
            self.high_watermark
        );
        assert!(
            self.high_watermark <= self.durable_end(),
            "invariant 3: the high watermark {} exceeds this replica's durable end {}",
            self.high_watermark,
            self.log.durable_end()
        );
        if let Some(latest) = self.log.epochs().latest() {
            assert!(
                latest.epoch <= self.leader_epoch,
                "invariant 2: the log holds epoch {} above the accepted epoch {}",
                latest.epoch,
                self.leader_epoch
            );
        }
        if let RoleState::Leader(l) = &self.role {
            let me = self.config.broker_id;
            assert!(l.isr.contains(&me), "the leader is in its ISR");
            assert!(
                l.isr.iter().all(|r| l.replicas.contains(r)),
                "the ISR is within the assignment"
            );
            if let Some(p) = &l.pending {
                assert!(p.proposed.contains(&me), "a proposed ISR keeps the leader");
            }
        }
    }
}

/// Kafka's `LeaderEpochFileCache.endOffsetFor` over `entries`, followed by `current` when it is
/// newer than all of them (a leader's own epoch before its first append; Kafka writes it into
/// the cache on `makeLeader`): the largest epoch at or below `requested` and the start offset
/// of the next epoch (`log_end` for the latest). Unlike [`crate::log::EpochCache::end_offset_for`],
/// an epoch older than every known one answers `(requested, first start offset)`, as Kafka does.
/// `None` for a negative or unknown-newer `requested`, or no epochs at all.
fn end_offset_for(
    entries: &[EpochEntry],
    current: Option<EpochEntry>,
    requested: LeaderEpoch,
    log_end: Offset,
) -> Option<(LeaderEpoch, Offset)> {
    if requested.0 < 0 {
        return None;
    }
    let extra = current.filter(|c| entries.last().is_none_or(|l| l.epoch < c.epoch));
    let latest = extra.or_else(|| entries.last().copied())?;
    if latest.epoch == requested {
        return Some((requested, log_end));
    }
    let i = entries.partition_point(|e| e.epoch <= requested);
    let higher = entries.get(i).copied().or(extra)?;
    if higher.epoch <= requested {
        return None;
    }
    Some(match i.checked_sub(1).map(|j| entries[j]) {
        None => (requested, higher.start_offset),
        Some(floor) => (floor.epoch, higher.start_offset),
    })
}

/// Compression codecs a Produce request version may carry: zstd needs Produce v7+.
pub fn compression_allowed(codec: Compression, produce_version: i16) -> bool {
    codec != Compression::Zstd || produce_version >= 7
}

#[cfg(test)]
mod harness;
#[cfg(test)]
mod scenarios;
/// The first offset of `log` whose batch fails to read (its CRC or the fields outside it),
/// scanning from the log start; `None` if every batch reads.
fn first_damaged<S: Storage>(log: &Log<S>) -> Result<Option<Offset>, LogError> {
    let end = log.end();
    let mut at = log.log_start();
    while at < end {
        match log.read(at, 1, end) {
            Ok(batches) => match batches.last() {
                Some(b) => at = b.next_offset(),
                None => return Ok(None),
            },
            Err(LogError::Corrupt { .. }) => return Ok(Some(at)),
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// On open: cuts `log` at its first damaged batch (back one batch, as
/// [`PartitionReplica::discard_damaged`] does, or whole if that fails too) and rebuilds the
/// producer state from what is left.
fn cut_damaged_log<S: Storage, T: Storage>(
    now_ms: i64,
    log: &mut Log<S>,
    snapshots: &mut T,
) -> Result<ProducerStateTable, ReplicaError> {
    let start = log.log_start();
    if let Some(from) = first_damaged(log)? {
        let mut whole = from <= start;
        if !whole {
            match log.truncate_to(Offset(from.0 - 1)) {
                Ok(_) => {}
                Err(LogError::Corrupt { .. }) => whole = true,
                Err(e) => return Err(e.into()),
            }
        }
        if !whole {
            match producer::recover(snapshots, log) {
                Ok((producers, _report)) => return Ok(producers),
                Err(producer::RecoverError::Log(LogError::Corrupt { .. })) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    log.truncate_fully_and_start_at(now_ms, start)?;
    Ok(producer::recover(snapshots, log)?.0)
}

#[cfg(test)]
mod tests;
