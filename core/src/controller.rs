//! The metadata state machine: KRaft's controller state (topics, partitions, brokers, topic
//! configs, producer-id blocks, ACLs, SCRAM credentials), replicated through the metadata quorum ([`crate::quorum`]).
//!
//! # Shape
//! Commands (`create_topic`, `delete_topic`, `create_partitions`, `incremental_alter_configs`,
//! `allocate_producer_ids`, `register_broker`, `unregister_broker`, and for the quorum `fence_broker`, `unfence_broker`,
//! `elect_leaders`, `alter_partition`; `create_acls` and `delete_acls` in [`acls`], `alter_user_scram_credentials` in [`scram`], `alter_partition_reassignments` in [`reassignment`]) take `&self`: they validate a request against the
//! current [`MetadataState`] with Kafka's rules and return the [`MetadataRecord`]s that carry it
//! out, or a [`ControllerError`] with Kafka's error code. They change nothing.
//! [`MetadataState::apply`] is the only mutation: deterministic, total (it never panics on any
//! record, decoded from anywhere), and it leaves the state unchanged and returns an
//! [`ApplyError`] for a record that does not fit the state. Replaying the same records from the
//! same state always gives the same state and the same errors, which is what replication of the
//! records through raft needs.
//!
//! Commands may run on a stale copy of the state (a broker that is not the controller computes
//! them and forwards the records to the raft leader), so `apply` checks each record against the
//! state it lands on, not the one it was computed from: a partition change names the partition
//! epoch it expects, a fence or unfence the broker epoch, a producer-id block the exact next
//! block, a registration an epoch above every earlier one, a new partition an index not yet
//! taken. A command whose records no longer fit is rejected as a whole and recomputed.
//!
//! # Broker lifecycle (KIP-631)
//! A broker registers fenced ([`MetadataState::register_broker`]) and is unfenced by its
//! heartbeat once its metadata caught up ([`crate::quorum::sessions::BrokerSessions`]), which
//! also elects it where a partition has no leader. A broker that holds no replica may be
//! unregistered ([`MetadataState::unregister_broker`]): it leaves the metadata, its epoch is
//! never handed out again. A broker that registers again while its
//! old registration is still unfenced (a restart inside its session) is fenced first, in the
//! same command, so that it loses leadership with its old epoch: it never leads again at a
//! leader epoch it led before the restart. A session that expires fences it too.
//!
//! The broker runs these commands through the quorum ([`crate::quorum::QuorumNode`]), whose raft
//! log holds the records. [`MetadataStore`], the single-node store that came before it, is no
//! longer used by the broker (its tests still run): open it (replays the stored records), then
//! for each request: run the command; on `Ok(records)`, [`MetadataStore::commit`] them (appended
//! and synced first, applied after, so nothing is visible before it is durable); answer.
//!
//! # Invariants (checked by [`MetadataState::check_invariants`], kept by `apply`)
//! 1. Topic names and topic ids are each unique, and the name index matches the topics.
//! 2. Every topic name is valid (1 to 249 of `[a-zA-Z0-9._-]`, not `.` or `..`) and every topic id
//!    is 16 bytes, not all zero.
//! 3. Every partition has at least one replica, no replica twice, no negative broker id; its ISR
//!    is a duplicate-free subset of its replicas; its leader is -1 or a member of the ISR; its
//!    epochs are >= 0; its adding and removing replicas (a reassignment in progress, KIP-455)
//!    are disjoint duplicate-free subsets of its replicas, and the removing ones are never all
//!    of them. A partition record only adds a partition; it never replaces one.
//! 4. Partitions of a topic are numbered densely from 0.
//! 5. Every topic's configs passed [`TopicConfig::from_map`].
//! 6. The next producer id moves by exactly one block per allocation (a snapshot restores it
//!    once, on a state that handed out none). Every registration's broker epoch is above every
//!    epoch registered before it, by any broker, and replaces only a fenced registration.
//!    An unregistration removes a broker that no partition has among its replicas.
//! 7. A partition change applies only at the partition epoch it was computed from; it bumps the
//!    partition epoch by one, and the leader epoch by one exactly when the leader changes. A
//!    new leader comes from the ISR (unless unclean election was chosen). A fence or unfence
//!    applies only at the broker's current epoch and only if it changes the fenced flag.
//! 8. Every ACL binding passes `AclBinding::validate` (known codes, a name, a `Type:name`
//!    principal, a host; `kafka-cluster` for the CLUSTER), and none is held twice.
//!
//! # Kafka sources
//! `ReplicationControlManager` (topic creation and deletion, partitions, name collisions),
//! `ConfigurationControlManager` (incremental alter configs), `ProducerIdControlManager`
//! (blocks of 1000), `ClusterControlManager` (broker registration), `Topic.validate` (names),
//! `Errors.java` (codes), `QuorumController.MAX_RECORDS_PER_USER_OP` (the record bound).

#![warn(missing_docs)]

pub mod acls;
pub mod broker_config;
pub mod config;
pub mod elections;
pub mod plan;
pub mod quotas;
pub mod reassignment;
pub mod records;
pub mod scram;
pub mod store;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

pub use config::{ConfigEntry, ConfigError, ConfigSource, ConfigType, TopicConfig};
pub use elections::{ElectionResult, ElectionType, LeaderBalance};
pub use reassignment::{OngoingReassignment, ReassignmentRequest, ReassignmentResult};
pub use records::{Endpoint, MetadataRecord, Record};
pub use store::{MetadataStore, OpenReport, StoreError};

use records::{
    FenceBrokerRecord, PartitionChangeRecord, PartitionRecord, ProducerIdsRecord,
    RegisterBrokerRecord, RemoveTopicRecord, TopicConfigRecord, TopicRecord, UnfenceBrokerRecord,
    UnregisterBrokerRecord,
};

use crate::error_code::{self as code, ErrorCode};
use crate::types::{LeaderEpoch, ProducerId};

/// The longest topic name Kafka allows (`Topic.MAX_NAME_LENGTH`).
pub const TOPIC_NAME_LENGTH_MAX: usize = 249;
/// The most records one command may produce (KRaft's `MAX_RECORDS_PER_USER_OP`); past it a
/// command fails with POLICY_VIOLATION.
pub const RECORDS_PER_COMMAND_MAX: usize = 10_000;
/// The size of a producer id block (KRaft's `ProducerIdsBlock.PRODUCER_ID_BLOCK_SIZE`).
pub const PRODUCER_ID_BLOCK_SIZE: i64 = 1000;

/// A broker's id (Kafka's `node.id`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BrokerId(pub i32);

impl BrokerId {
    /// No broker: a partition without a leader (KRaft's `NO_LEADER`).
    pub const NONE: BrokerId = BrokerId(-1);
}

impl fmt::Display for BrokerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A topic id: Kafka's 16-byte UUID.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicId(pub [u8; 16]);

impl TopicId {
    /// The all-zero id, which Kafka reserves to mean "no id" (`Uuid.ZERO_UUID`).
    pub const ZERO: TopicId = TopicId([0; 16]);

    /// The id in `bytes`, if they are exactly 16 and not all zero.
    pub fn from_slice(bytes: &[u8]) -> Option<TopicId> {
        let id = TopicId(bytes.try_into().ok()?);
        (id != TopicId::ZERO).then_some(id)
    }
}

impl fmt::Display for TopicId {
    /// Kafka's text form of a UUID: URL-safe base64 without padding (`Uuid.toString`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::with_capacity(22);
        for chunk in self.0.chunks(3) {
            let mut n = 0u32;
            for (i, &b) in chunk.iter().enumerate() {
                n |= (b as u32) << (16 - 8 * i);
            }
            for i in 0..=chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        f.write_str(&out)
    }
}

impl fmt::Debug for TopicId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicId({self})")
    }
}

/// One partition's assignment and leadership.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// The assigned replicas, preferred leader first.
    pub replicas: Vec<BrokerId>,
    /// The in-sync replicas.
    pub isr: Vec<BrokerId>,
    /// The leader, or [`BrokerId::NONE`].
    pub leader: BrokerId,
    /// Bumps on every leader change.
    pub leader_epoch: LeaderEpoch,
    /// Bumps on every change of this partition's state.
    pub partition_epoch: i32,
    /// Eligible leader replicas (KIP-966): replicas that left the ISR while it was smaller
    /// than `min.insync.replicas`. The high watermark cannot move while the ISR is that small,
    /// so each of them still holds everything committed, and may lead when no ISR member can.
    /// Empty whenever the ISR has `min.insync.replicas` members. Disjoint from `isr`.
    pub elr: Vec<BrokerId>,
    /// The replicas an ongoing reassignment adds (KIP-455): members of `replicas` that are
    /// not among the original ones. Empty when no reassignment is in progress.
    pub adding: Vec<BrokerId>,
    /// The replicas an ongoing reassignment removes (KIP-455): members of `replicas` that
    /// are not among the target ones. Disjoint from `adding`; never all of `replicas`.
    pub removing: Vec<BrokerId>,
}

impl Partition {
    /// Whether a reassignment is in progress (KIP-455: it adds or removes a replica).
    pub fn is_reassigning(&self) -> bool {
        !self.adding.is_empty() || !self.removing.is_empty()
    }

    /// The replicas the partition will have once its reassignment completes (all of them
    /// when none is in progress): `replicas` less `removing`.
    pub fn target_replicas(&self) -> Vec<BrokerId> {
        self.replicas
            .iter()
            .copied()
            .filter(|r| !self.removing.contains(r))
            .collect()
    }

    /// The replicas it had before its reassignment started: `replicas` less `adding`.
    pub fn original_replicas(&self) -> Vec<BrokerId> {
        self.replicas
            .iter()
            .copied()
            .filter(|r| !self.adding.contains(r))
            .collect()
    }
}

/// A topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topic {
    /// Its name.
    pub name: String,
    /// Its id.
    pub id: TopicId,
    /// Its partitions, indexed by partition number.
    pub partitions: Vec<Partition>,
    /// Its configs (defaults plus the topic's overrides).
    pub config: TopicConfig,
}

/// A registered broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broker {
    /// Its id.
    pub id: BrokerId,
    /// The id of the process run that registered.
    pub incarnation_id: [u8; 16],
    /// Its broker epoch.
    pub epoch: i64,
    /// Its client listeners.
    pub endpoints: Vec<Endpoint>,
    /// Its rack.
    pub rack: Option<String>,
    /// Whether it is fenced (not live).
    pub fenced: bool,
}

/// A block of producer ids handed to one broker: `first` to `first + size - 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProducerIdBlock {
    /// The first id of the block.
    pub first: ProducerId,
    /// How many ids ([`PRODUCER_ID_BLOCK_SIZE`]).
    pub size: i64,
}

impl ProducerIdBlock {
    /// The last id of the block.
    pub fn last(&self) -> ProducerId {
        ProducerId(self.first.0 + self.size - 1)
    }
}

/// A CreateTopics request for one topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewTopic {
    /// The name.
    pub name: String,
    /// The partition count, or -1 for the broker default.
    pub partitions: i32,
    /// The replication factor, or -1 for the broker default.
    pub replication_factor: i16,
    /// Topic config overrides.
    pub configs: BTreeMap<String, String>,
    /// A fresh random id from the caller (core draws no randomness).
    pub topic_id: TopicId,
}

/// The broker's defaults for CreateTopics' -1 values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopicDefaults {
    /// `num.partitions` (Kafka's default 1).
    pub partitions: i32,
    /// `default.replication.factor` (Kafka's default 1).
    pub replication_factor: i16,
}

impl Default for TopicDefaults {
    fn default() -> Self {
        TopicDefaults {
            partitions: 1,
            replication_factor: 1,
        }
    }
}

/// IncrementalAlterConfigs' operation types, with Kafka's ids (`AlterConfigOp.OpType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlterOp {
    /// Set the value.
    Set = 0,
    /// Remove the topic's value (back to the default).
    Delete = 1,
    /// Add items to a LIST value.
    Append = 2,
    /// Remove items from a LIST value.
    Subtract = 3,
}

impl AlterOp {
    /// The operation with Kafka's id `code`, if there is one.
    pub fn from_code(code: i8) -> Option<AlterOp> {
        Some(match code {
            0 => AlterOp::Set,
            1 => AlterOp::Delete,
            2 => AlterOp::Append,
            3 => AlterOp::Subtract,
            _ => return None,
        })
    }
}

/// One config change of an IncrementalAlterConfigs request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlterConfigOp {
    /// The Kafka key.
    pub key: String,
    /// What to do.
    pub op: AlterOp,
    /// The value (required by every op but DELETE).
    pub value: Option<String>,
}

/// A BrokerRegistration request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerRegistration {
    /// The broker id.
    pub broker_id: BrokerId,
    /// A fresh random id of this process run, from the caller.
    pub incarnation_id: [u8; 16],
    /// The client listeners.
    pub endpoints: Vec<Endpoint>,
    /// The rack.
    pub rack: Option<String>,
}

/// Whether a partition whose in-sync replicas are all fenced may elect a replica outside the ISR
/// (Kafka's `unclean.leader.election.enable`, off by default): availability at the price of
/// losing the writes only the ISR had.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UncleanElection {
    /// Only ISR members become leaders; a partition with no live ISR member stays leaderless.
    #[default]
    Disabled,
    /// When no ISR member is live, the first live assigned replica leads, alone in the ISR.
    Enabled,
}

/// An AlterPartition request for one partition (KIP-497), sent by its leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlterPartitionRequest {
    /// The leader that sends it.
    pub broker_id: BrokerId,
    /// That broker's epoch.
    pub broker_epoch: i64,
    /// The topic.
    pub topic_id: TopicId,
    /// The partition.
    pub partition: i32,
    /// The leader epoch the leader holds.
    pub leader_epoch: LeaderEpoch,
    /// The partition epoch the leader last saw.
    pub partition_epoch: i32,
    /// The ISR it wants.
    pub new_isr: Vec<BrokerId>,
}

/// Why a command was refused, with Kafka's error code ([`ControllerError::code`]) and a message
/// for the response's error message field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ControllerError {
    /// UNKNOWN_SERVER_ERROR (-1).
    #[error("{0}")]
    UnknownServerError(String),
    /// UNKNOWN_TOPIC_OR_PARTITION (3).
    #[error("{0}")]
    UnknownTopicOrPartition(String),
    /// INVALID_TOPIC_EXCEPTION (17).
    #[error("{0}")]
    InvalidTopic(String),
    /// TOPIC_ALREADY_EXISTS (36).
    #[error("{0}")]
    TopicAlreadyExists(String),
    /// INVALID_PARTITIONS (37).
    #[error("{0}")]
    InvalidPartitions(String),
    /// INVALID_REPLICATION_FACTOR (38).
    #[error("{0}")]
    InvalidReplicationFactor(String),
    /// INVALID_CONFIG (40).
    #[error("{0}")]
    InvalidConfig(String),
    /// NOT_CONTROLLER (41).
    #[error("{0}")]
    NotController(String),
    /// INVALID_REQUEST (42).
    #[error("{0}")]
    InvalidRequest(String),
    /// POLICY_VIOLATION (44).
    #[error("{0}")]
    PolicyViolation(String),
    /// FENCED_LEADER_EPOCH (74).
    #[error("{0}")]
    FencedLeaderEpoch(String),
    /// STALE_BROKER_EPOCH (77).
    #[error("{0}")]
    StaleBrokerEpoch(String),
    /// INVALID_UPDATE_VERSION (95).
    #[error("{0}")]
    InvalidUpdateVersion(String),
    /// UNKNOWN_TOPIC_ID (100).
    #[error("{0}")]
    UnknownTopicId(String),
    /// BROKER_ID_NOT_REGISTERED (102).
    #[error("{0}")]
    BrokerIdNotRegistered(String),
    /// INELIGIBLE_REPLICA (107).
    #[error("{0}")]
    IneligibleReplica(String),
    /// PREFERRED_LEADER_NOT_AVAILABLE (80).
    #[error("{0}")]
    PreferredLeaderNotAvailable(String),
    /// ELIGIBLE_LEADERS_NOT_AVAILABLE (83).
    #[error("{0}")]
    EligibleLeadersNotAvailable(String),
    /// ELECTION_NOT_NEEDED (84).
    #[error("{0}")]
    ElectionNotNeeded(String),
    /// INVALID_REPLICA_ASSIGNMENT (39).
    #[error("{0}")]
    InvalidReplicaAssignment(String),
    /// NO_REASSIGNMENT_IN_PROGRESS (85).
    #[error("{0}")]
    NoReassignmentInProgress(String),
}

impl ControllerError {
    /// Kafka's error code (Errors.java).
    pub fn code(&self) -> ErrorCode {
        match self {
            ControllerError::UnknownServerError(_) => code::UNKNOWN_SERVER_ERROR,
            ControllerError::UnknownTopicOrPartition(_) => code::UNKNOWN_TOPIC_OR_PARTITION,
            ControllerError::InvalidTopic(_) => code::INVALID_TOPIC_EXCEPTION,
            ControllerError::TopicAlreadyExists(_) => code::TOPIC_ALREADY_EXISTS,
            ControllerError::InvalidPartitions(_) => code::INVALID_PARTITIONS,
            ControllerError::InvalidReplicationFactor(_) => code::INVALID_REPLICATION_FACTOR,
            ControllerError::InvalidConfig(_) => code::INVALID_CONFIG,
            ControllerError::NotController(_) => code::NOT_CONTROLLER,
            ControllerError::InvalidRequest(_) => code::INVALID_REQUEST,
            ControllerError::PolicyViolation(_) => code::POLICY_VIOLATION,
            ControllerError::FencedLeaderEpoch(_) => code::FENCED_LEADER_EPOCH,
            ControllerError::StaleBrokerEpoch(_) => code::STALE_BROKER_EPOCH,
            ControllerError::InvalidUpdateVersion(_) => code::INVALID_UPDATE_VERSION,
            ControllerError::UnknownTopicId(_) => code::UNKNOWN_TOPIC_ID,
            ControllerError::BrokerIdNotRegistered(_) => code::BROKER_ID_NOT_REGISTERED,
            ControllerError::IneligibleReplica(_) => code::INELIGIBLE_REPLICA,
            ControllerError::PreferredLeaderNotAvailable(_) => code::PREFERRED_LEADER_NOT_AVAILABLE,
            ControllerError::EligibleLeadersNotAvailable(_) => code::ELIGIBLE_LEADERS_NOT_AVAILABLE,
            ControllerError::ElectionNotNeeded(_) => code::ELECTION_NOT_NEEDED,
            ControllerError::InvalidReplicaAssignment(_) => code::INVALID_REPLICA_ASSIGNMENT,
            ControllerError::NoReassignmentInProgress(_) => code::NO_REASSIGNMENT_IN_PROGRESS,
        }
    }
}

/// Why [`MetadataState::apply`] did not apply a record. The state is unchanged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The record holds none of the record kinds (or one this code does not know).
    #[error("the record holds no record kind")]
    Empty,
    /// A topic id that is not 16 bytes, or is all zero.
    #[error("invalid topic id {0:?}: not 16 bytes, or all zero")]
    InvalidTopicId(Vec<u8>),
    /// No topic has this id.
    #[error("no topic with id {0}")]
    UnknownTopic(TopicId),
    /// A new topic's name is taken.
    #[error("a topic named {0:?} already exists")]
    TopicNameInUse(String),
    /// A new topic's id is taken.
    #[error("a topic with id {0} already exists")]
    TopicIdInUse(TopicId),
    /// A new topic's name breaks Kafka's rules.
    #[error("invalid topic name: {0}")]
    InvalidTopicName(String),
    /// A config key or value that does not validate.
    #[error("invalid config: {0}")]
    InvalidConfig(#[from] ConfigError),
    /// A partition record that is malformed, leaves a gap, or names a partition that exists; a
    /// partition change for a partition that is not at its expected partition epoch.
    #[error("invalid partition record: {0}")]
    InvalidPartition(String),
    /// A producer ids record that is not exactly the next block.
    #[error("invalid producer ids record: {0}")]
    InvalidProducerIds(String),
    /// A broker registration that is malformed, does not grow the broker epoch, or replaces an
    /// unfenced registration; or a fence or unfence that does not fit the broker.
    #[error("invalid broker registration: {0}")]
    InvalidBroker(String),
    /// An ACL record with an unknown code or a binding that does not validate; an ACL added
    /// that exists or removed that does not ([`acls`]).
    #[error("invalid ACL record: {0}")]
    InvalidAcl(String),
    /// A SCRAM credential record that does not validate, or a removal of a credential that
    /// does not exist ([`scram`]).
    #[error("invalid SCRAM credential record: {0}")]
    InvalidScram(String),
    /// A client quota record that does not validate, or a removal of a quota that is not set
    /// ([`quotas`]).
    #[error("invalid client quota record: {0}")]
    InvalidQuota(String),
    /// A broker config record that does not validate ([`broker_config`]).
    #[error("invalid broker config record: {0}")]
    InvalidBrokerConfig(String),
}

/// The controller's metadata state. See the module documentation for its invariants.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetadataState {
    topics: BTreeMap<TopicId, Topic>,
    names: BTreeMap<String, TopicId>,
    brokers: BTreeMap<BrokerId, Broker>,
    /// The first producer id not yet handed out.
    next_producer_id: i64,
    /// The largest broker epoch ever registered.
    last_broker_epoch: i64,
    /// The ACL bindings ([`acls`]).
    acls: crate::acl::Acls,
    /// The SCRAM credentials by user and mechanism code ([`scram`]).
    scram: BTreeMap<(String, i8), scram::StoredScram>,
    /// The client quotas by entity, then key ([`quotas`]).
    quotas: BTreeMap<crate::quota::QuotaEntity, BTreeMap<String, i64>>,
    /// The dynamic broker configs by BROKER resource (a broker id, `""` for the cluster
    /// default), then key ([`broker_config`]).
    broker_configs: BTreeMap<String, BTreeMap<String, String>>,
}

impl MetadataState {
    /// An empty state: no topics, no brokers, producer ids from 0.
    pub fn new() -> Self {
        Self::default()
    }

    // --- Queries --------------------------------------------------------------------------

    /// The topic named `name`.
    pub fn topic(&self, name: &str) -> Option<&Topic> {
        self.names.get(name).and_then(|id| self.topics.get(id))
    }

    /// The topic with id `id`.
    pub fn topic_by_id(&self, id: TopicId) -> Option<&Topic> {
        self.topics.get(&id)
    }

    /// Every topic, in name order.
    pub fn topics(&self) -> impl Iterator<Item = &Topic> {
        self.names.values().filter_map(|id| self.topics.get(id))
    }

    /// The number of topics.
    pub fn topic_count(&self) -> usize {
        self.topics.len()
    }

    /// Partition `partition` of the topic named `name`.
    pub fn partition(&self, name: &str, partition: i32) -> Option<&Partition> {
        let index = usize::try_from(partition).ok()?;
        self.topic(name)?.partitions.get(index)
    }

    /// The configs of the topic named `name`.
    pub fn topic_config(&self, name: &str) -> Option<&TopicConfig> {
        self.topic(name).map(|t| &t.config)
    }

    /// The broker with id `id`, if registered.
    pub fn broker(&self, id: BrokerId) -> Option<&Broker> {
        self.brokers.get(&id)
    }

    /// Every registered broker, in id order.
    pub fn brokers(&self) -> impl Iterator<Item = &Broker> {
        self.brokers.values()
    }

    /// The registered, unfenced brokers, in id order.
    pub fn live_brokers(&self) -> Vec<BrokerId> {
        self.brokers
            .values()
            .filter(|b| !b.fenced)
            .map(|b| b.id)
            .collect()
    }

    /// How many partitions `broker` leads.
    pub fn led_partitions(&self, broker: BrokerId) -> usize {
        self.topics
            .values()
            .flat_map(|t| &t.partitions)
            .filter(|p| p.leader == broker)
            .count()
    }

    /// The largest broker epoch ever registered, by any broker (registered now or not).
    pub fn last_broker_epoch(&self) -> i64 {
        self.last_broker_epoch
    }

    /// The partitions that have `broker` among their replicas (adding and removing ones
    /// included), as (topic, partition), in topic name order, then index.
    pub fn partitions_on(&self, broker: BrokerId) -> Vec<(String, i32)> {
        self.names
            .values()
            .filter_map(|id| self.topics.get(id))
            .flat_map(|t| {
                t.partitions
                    .iter()
                    .enumerate()
                    .filter(move |(_, p)| p.replicas.contains(&broker))
                    .map(move |(i, _)| (t.name.clone(), i as i32))
            })
            .collect()
    }

    /// The first producer id the next block will hand out.
    pub fn next_producer_id(&self) -> ProducerId {
        ProducerId(self.next_producer_id)
    }

    // --- Commands -------------------------------------------------------------------------

    /// CreateTopics for one topic (KRaft's `ReplicationControlManager.createTopic`), checks in
    /// Kafka's order: name (INVALID_TOPIC_EXCEPTION), existence (TOPIC_ALREADY_EXISTS), a
    /// `.`/`_` collision with another topic (INVALID_TOPIC_EXCEPTION), configs (INVALID_CONFIG),
    /// partitions (INVALID_PARTITIONS), replication factor against `live_brokers`
    /// (INVALID_REPLICATION_FACTOR). -1 partitions or replication factor means `defaults`.
    ///
    /// Replicas are spread round-robin over the sorted live brokers: partition `p`'s replicas
    /// are brokers `(start + p + i) % n` for `i` in `0..rf`, the first being the leader, where
    /// `start` comes from the topic id (core has no randomness; the id is random).
    pub fn create_topic(
        &self,
        topic: &NewTopic,
        live_brokers: &[BrokerId],
        defaults: &TopicDefaults,
    ) -> Result<Vec<MetadataRecord>, ControllerError> {
        let name = topic.name.as_str();
        validate_topic_name(name).map_err(ControllerError::InvalidTopic)?;
        if self.names.contains_key(name) {
            return Err(ControllerError::TopicAlreadyExists(format!(
                "Topic '{name}' already exists."
            )));
        }
        if let Some(existing) = self.colliding_topic(name) {
            return Err(ControllerError::InvalidTopic(format!(
                "Topic '{name}' collides with existing topic: {existing}"
            )));
        }
        if topic.topic_id == TopicId::ZERO || self.topics.contains_key(&topic.topic_id) {
            return Err(ControllerError::InvalidRequest(format!(
                "topic id {} is reserved or in use",
                topic.topic_id
            )));
        }
        TopicConfig::from_map(&topic.configs)
            .map_err(|e| ControllerError::InvalidConfig(e.to_string()))?;
        let partitions = match topic.partitions {
            -1 => defaults.partitions,
            n => n,
        };
        if partitions <= 0 {
            return Err(ControllerError::InvalidPartitions(
                "Number of partitions was set to an invalid non-positive value.".into(),
            ));
        }
        if partitions as usize >= RECORDS_PER_COMMAND_MAX {
            return Err(too_many_records());
        }
        let rf = match topic.replication_factor {
            -1 => defaults.replication_factor,
            n => n,
        };
        if rf <= 0 {
            return Err(ControllerError::InvalidReplicationFactor(
                "Replication factor must be larger than 0, or -1 to use the default value.".into(),
            ));
        }
        let brokers = sorted_brokers(live_brokers);
        check_replication_factor(rf as usize, brokers.len())?;
        let mut records = Vec::with_capacity(1 + partitions as usize);
        records.push(MetadataRecord::from(TopicRecord {
            name: name.to_string(),
            topic_id: topic.topic_id.0.to_vec(),
            configs: topic.configs.clone(),
        }));
        records.extend(new_partition_records(
            topic.topic_id,
            0..partitions,
            rf as usize,
            &brokers,
        ));
        Ok(records)
    }

    /// DeleteTopics by name: UNKNOWN_TOPIC_OR_PARTITION if there is no such topic.
    pub fn delete_topic(&self, name: &str) -> Result<Vec<MetadataRecord>, ControllerError> {
        let topic = self.topic(name).ok_or_else(unknown_topic)?;
        Ok(vec![RemoveTopicRecord {
            topic_id: topic.id.0.to_vec(),
        }
        .into()])
    }

    /// DeleteTopics by id (v6+): UNKNOWN_TOPIC_ID if there is no such topic.
    pub fn delete_topic_by_id(&self, id: TopicId) -> Result<Vec<MetadataRecord>, ControllerError> {
        if !self.topics.contains_key(&id) {
            return Err(ControllerError::UnknownTopicId(format!(
                "Topic id {id} does not exist."
            )));
        }
        Ok(vec![RemoveTopicRecord {
            topic_id: id.0.to_vec(),
        }
        .into()])
    }

    /// CreatePartitions: grows the topic to `new_total` partitions, placed like
    /// [`create_topic`](Self::create_topic) with the replication factor of partition 0.
    /// UNKNOWN_TOPIC_OR_PARTITION, INVALID_PARTITIONS if `new_total` is not larger,
    /// INVALID_REPLICATION_FACTOR if too few brokers are live.
    pub fn create_partitions(
        &self,
        name: &str,
        new_total: i32,
        live_brokers: &[BrokerId],
    ) -> Result<Vec<MetadataRecord>, ControllerError> {
        let topic = self.topic(name).ok_or_else(unknown_topic)?;
        let current = topic.partitions.len() as i32;
        if new_total < current {
            return Err(ControllerError::InvalidPartitions(format!(
                "The topic {name} currently has {current} partition(s); {new_total} would not be an increase."
            )));
        }
        if new_total == current {
            return Err(ControllerError::InvalidPartitions(format!(
                "Topic already has {current} partition(s)."
            )));
        }
        if (new_total - current) as usize > RECORDS_PER_COMMAND_MAX {
            return Err(too_many_records());
        }
        let rf = topic.partitions.first().map_or(1, |p| p.replicas.len());
        let brokers = sorted_brokers(live_brokers);
        check_replication_factor(rf, brokers.len())?;
        Ok(new_partition_records(topic.id, current..new_total, rf, &brokers).collect())
    }

    /// IncrementalAlterConfigs on a topic (KRaft's `ConfigurationControlManager`): applies
    /// `ops` in order to the topic's overrides and returns a record per key whose value
    /// changed (none when nothing changes). UNKNOWN_TOPIC_OR_PARTITION; INVALID_REQUEST for a
    /// key given twice or a missing value; INVALID_CONFIG for an unknown key, APPEND or SUBTRACT
    /// on a non-LIST key, or a resulting value that does not validate.
    pub fn incremental_alter_configs(
        &self,
        name: &str,
        ops: &[AlterConfigOp],
    ) -> Result<Vec<MetadataRecord>, ControllerError> {
        let topic = self.topic(name).ok_or_else(unknown_topic)?;
        let mut seen = BTreeSet::new();
        let mut overrides = topic.config.overrides().clone();
        for op in ops {
            let key = op.key.as_str();
            if !seen.insert(key) {
                return Err(ControllerError::InvalidRequest(format!(
                    "Error due to duplicate config keys: {key}"
                )));
            }
            let Some(default) = TopicConfig::default_value(key) else {
                return Err(ControllerError::InvalidConfig(format!(
                    "Unknown topic config name: {key}"
                )));
            };
            let value = match (op.op, &op.value) {
                (AlterOp::Delete, _) => {
                    overrides.remove(key);
                    continue;
                }
                (_, None) => {
                    return Err(ControllerError::InvalidRequest(format!(
                        "Null value not supported for: {key}"
                    )))
                }
                (_, Some(value)) => value,
            };
            if matches!(op.op, AlterOp::Append | AlterOp::Subtract) && !TopicConfig::is_list(key) {
                return Err(ControllerError::InvalidConfig(format!(
                    "Can't {:?} to key {key} because its type is not LIST.",
                    op.op
                )));
            }
            let current = overrides.get(key).cloned().unwrap_or(default);
            let mut items: Vec<&str> = config::split_list(&current).collect();
            let new_value = match op.op {
                AlterOp::Append => {
                    for item in config::split_list(value) {
                        if !items.contains(&item) {
                            items.push(item);
                        }
                    }
                    items.join(",")
                }
                AlterOp::Subtract => {
                    let removed: Vec<&str> = config::split_list(value).collect();
                    items.retain(|item| !removed.contains(item));
                    items.join(",")
                }
                _ => value.clone(),
            };
            overrides.insert(key.to_string(), new_value);
        }
        TopicConfig::from_map(&overrides)
            .map_err(|e| ControllerError::InvalidConfig(e.to_string()))?;
        let old = topic.config.overrides();
        let keys: BTreeSet<&String> = old.keys().chain(overrides.keys()).collect();
        Ok(keys
            .into_iter()
            .filter(|k| old.get(*k) != overrides.get(*k))
            .map(|k| {
                TopicConfigRecord {
                    topic_id: topic.id.0.to_vec(),
                    key: k.clone(),
                    value: overrides.get(k).cloned(),
                }
                .into()
            })
            .collect())
    }

    /// AllocateProducerIds (KRaft's `ProducerIdControlManager.generateNextProducerId`): the next
    /// block of [`PRODUCER_ID_BLOCK_SIZE`] ids for a registered broker at its current epoch
    /// (STALE_BROKER_EPOCH otherwise). UNKNOWN_SERVER_ERROR when the ids are exhausted.
    pub fn allocate_producer_ids(
        &self,
        broker_id: BrokerId,
        broker_epoch: i64,
    ) -> Result<(ProducerIdBlock, Vec<MetadataRecord>), ControllerError> {
        match self.brokers.get(&broker_id) {
            Some(b) if b.epoch == broker_epoch => {}
            _ => {
                return Err(ControllerError::StaleBrokerEpoch(format!(
                    "Expected broker epoch of broker {broker_id} to match {broker_epoch}"
                )))
            }
        }
        let first = self.next_producer_id;
        let Some(next) = first.checked_add(PRODUCER_ID_BLOCK_SIZE) else {
            return Err(ControllerError::UnknownServerError(
                "Exhausted all producerIds as the next block's end producerId is greater than Long.MAX_VALUE".into(),
            ));
        };
        let block = ProducerIdBlock {
            first: ProducerId(first),
            size: PRODUCER_ID_BLOCK_SIZE,
        };
        let record = ProducerIdsRecord {
            broker_id: broker_id.0,
            broker_epoch,
            next_producer_id: next,
        };
        Ok((block, vec![record.into()]))
    }

    /// BrokerRegistration (KRaft's `ClusterControlManager.registerBroker`): registers the broker
    /// (again, after a restart) with a new broker epoch, greater than every epoch before it,
    /// which it returns. The broker registers fenced: its heartbeat unfences it once it caught
    /// up ([`crate::quorum::sessions::BrokerSessions::heartbeat`]), electing it where a
    /// partition has no leader. If its current registration is unfenced (it restarted before
    /// its session expired), the records first fence that registration as
    /// [`fence_broker`](Self::fence_broker) does with `unclean` (FenceBroker at the old epoch,
    /// then the partition changes that move leadership off it and shrink the ISRs), then
    /// register it: a restarted broker never leads at a leader epoch it led before. (Kafka
    /// refuses such a registration with DUPLICATE_BROKER_REGISTRATION until the old session
    /// expires; keel takes the restart as the end of the old session.)
    ///
    /// INVALID_REQUEST for a negative id or an endpoint port outside 0..=65535;
    /// UNKNOWN_SERVER_ERROR when broker epochs are exhausted.
    pub fn register_broker(
        &self,
        registration: &BrokerRegistration,
        unclean: UncleanElection,
    ) -> Result<(i64, Vec<MetadataRecord>), ControllerError> {
        if registration.broker_id.0 < 0 {
            return Err(ControllerError::InvalidRequest(format!(
                "invalid broker id {}",
                registration.broker_id
            )));
        }
        if let Some(e) = registration
            .endpoints
            .iter()
            .find(|e| !(0..=65535).contains(&e.port))
        {
            return Err(ControllerError::InvalidRequest(format!(
                "invalid port {} for listener {}",
                e.port, e.name
            )));
        }
        let Some(epoch) = self.last_broker_epoch.checked_add(1) else {
            return Err(ControllerError::UnknownServerError(
                "broker epochs exhausted".into(),
            ));
        };
        let mut records = match self.brokers.get(&registration.broker_id) {
            Some(old) if !old.fenced => self.fence_restarted(old, unclean),
            _ => Vec::new(),
        };
        records.push(
            RegisterBrokerRecord {
                broker_id: registration.broker_id.0,
                incarnation_id: registration.incarnation_id.to_vec(),
                broker_epoch: epoch,
                endpoints: registration.endpoints.clone(),
                rack: registration.rack.clone(),
                fenced: true,
            }
            .into(),
        );
        Ok((epoch, records))
    }

    /// Fences the live registration `old` of a broker that registers again (it restarted):
    /// a FenceBroker record, and its leaderships move to live ISR members, but it stays in
    /// every ISR. keel acknowledges only writes every ISR member has synced, so a restart
    /// loses nothing committed: the restarted broker is as eligible as before (the guarantee
    /// KIP-966's eligible leader replicas give Kafka). Were it dropped, a whole-cluster
    /// restart would leave each ISR with whichever broker registered last, and a partition
    /// without a leader if that one came back damaged. A broker whose disk did lose data
    /// finds it on recovery and stays fenced until repaired; its leaders shrink it out of
    /// their ISRs after replica.lag.time.max.ms.
    fn fence_restarted(&self, old: &Broker, unclean: UncleanElection) -> Vec<MetadataRecord> {
        let mut records = vec![MetadataRecord::from(FenceBrokerRecord {
            broker_id: old.id.0,
            broker_epoch: old.epoch,
        })];
        let live: BTreeSet<BrokerId> = self
            .brokers
            .values()
            .filter(|b| !b.fenced && b.id != old.id)
            .map(|b| b.id)
            .collect();
        records.extend(self.partition_changes(None, &live, unclean));
        records
    }

    /// Fences `broker` (its session expired, KRaft's `ClusterControlManager` with
    /// `ReplicationControlManager.handleBrokerFenced`): a FenceBroker record, then
    /// [`elect_leaders`](Self::elect_leaders) for it. BROKER_ID_NOT_REGISTERED for an unknown
    /// broker; no records for one already fenced.
    pub fn fence_broker(
        &self,
        broker: BrokerId,
        unclean: UncleanElection,
    ) -> Result<Vec<MetadataRecord>, ControllerError> {
        let b = self.registered(broker)?;
        if b.fenced {
            return Ok(Vec::new());
        }
        let mut records = vec![MetadataRecord::from(FenceBrokerRecord {
            broker_id: broker.0,
            broker_epoch: b.epoch,
        })];
        records.extend(self.elect_leaders(broker, unclean));
        Ok(records)
    }

    /// The partition changes that fencing `fenced` calls for: it leaves every ISR (except where
    /// it is the last member: KRaft keeps that one so the partition can elect it cleanly when
    /// it returns, leaderless until then), and every partition it led, or that has no live
    /// leader, elects the first assigned replica that is in the ISR and live (registered,
    /// unfenced, not `fenced`). Only with [`UncleanElection::Enabled`] may a partition without
    /// a live ISR member elect a live replica outside it, which becomes the whole ISR; a
    /// topic's own `unclean.leader.election.enable`, when it sets one, decides for its
    /// partitions instead. The leader epoch bumps with every leader change, the partition epoch with every change
    /// (on apply). Partitions in topic name order, then index.
    pub fn elect_leaders(&self, fenced: BrokerId, unclean: UncleanElection) -> Vec<MetadataRecord> {
        let live: BTreeSet<BrokerId> = self
            .brokers
            .values()
            .filter(|b| !b.fenced && b.id != fenced)
            .map(|b| b.id)
            .collect();
        self.partition_changes(Some(fenced), &live, unclean)
    }

    /// Unfences `broker` at `broker_epoch` (its heartbeat shows it caught up, KRaft's
    /// `handleBrokerUnfenced`): an UnfenceBroker record, then elections for the leaderless
    /// partitions it can now lead. BROKER_ID_NOT_REGISTERED, STALE_BROKER_EPOCH; no records for
    /// a broker that is not fenced.
    pub fn unfence_broker(
        &self,
        broker: BrokerId,
        broker_epoch: i64,
        unclean: UncleanElection,
    ) -> Result<Vec<MetadataRecord>, ControllerError> {
        let b = self.registered(broker)?;
        if b.epoch != broker_epoch {
            return Err(ControllerError::StaleBrokerEpoch(format!(
                "Expected broker epoch of broker {broker} to match {broker_epoch}"
            )));
        }
        if !b.fenced {
            return Ok(Vec::new());
        }
        let mut records = vec![MetadataRecord::from(UnfenceBrokerRecord {
            broker_id: broker.0,
            broker_epoch,
        })];
        let live: BTreeSet<BrokerId> = self
            .brokers
            .values()
            .filter(|b| !b.fenced || b.id == broker)
            .map(|b| b.id)
            .collect();
        records.extend(self.partition_changes(None, &live, unclean));
        Ok(records)
    }

    /// UnregisterBroker (KIP-631, API 64; KRaft's `ClusterControlManager.unregisterBroker`):
    /// removes `broker`'s registration, so that it leaves the cluster's metadata (Metadata,
    /// DescribeCluster) for good, unless it registers again. BROKER_ID_NOT_REGISTERED for a
    /// broker that is not registered. Unlike Kafka, which unregisters whatever it is asked to,
    /// keel refuses (INVALID_REQUEST, naming a partition) while any partition still has the
    /// broker among its replicas: reassign them away first (`keel broker decommission` does
    /// both). The broker epoch it had is never handed out again.
    pub fn unregister_broker(
        &self,
        broker: BrokerId,
    ) -> Result<Vec<MetadataRecord>, ControllerError> {
        let b = self.registered(broker)?;
        let held = self.partitions_on(broker);
        if let Some((topic, partition)) = held.first() {
            return Err(ControllerError::InvalidRequest(format!(
                "Broker {broker} still holds {} replica(s), among them {topic}-{partition}; \
                 reassign them to other brokers before unregistering it",
                held.len()
            )));
        }
        Ok(vec![UnregisterBrokerRecord {
            broker_id: broker.0,
            broker_epoch: b.epoch,
        }
        .into()])
    }

    /// AlterPartition for one partition (KIP-497; KRaft's
    /// `ReplicationControlManager.alterPartition` and `validateAlterPartitionData`), checks in
    /// Kafka's order: the sender's broker epoch (STALE_BROKER_EPOCH), the topic
    /// (UNKNOWN_TOPIC_ID) and partition (UNKNOWN_TOPIC_OR_PARTITION); epochs newer than this
    /// controller knows (NOT_CONTROLLER: it is likely no longer the active controller); an older
    /// leader epoch (FENCED_LEADER_EPOCH); a sender that is not the leader (INVALID_REQUEST); an
    /// older partition epoch (INVALID_UPDATE_VERSION); an ISR with a duplicate or outside the
    /// assignment, or without the leader (INVALID_REQUEST); an ISR member that is fenced or not
    /// registered (INELIGIBLE_REPLICA). Returns the partition as it will be and the record that
    /// makes it so (none when the ISR does not change). The leader epoch never changes here.
    pub fn alter_partition(
        &self,
        request: &AlterPartitionRequest,
    ) -> Result<(Partition, Vec<MetadataRecord>), ControllerError> {
        match self.brokers.get(&request.broker_id) {
            Some(b) if b.epoch == request.broker_epoch => {}
            _ => {
                return Err(ControllerError::StaleBrokerEpoch(format!(
                    "Expected broker epoch of broker {} to match {}",
                    request.broker_id, request.broker_epoch
                )))
            }
        }
        let topic = self.topics.get(&request.topic_id).ok_or_else(|| {
            ControllerError::UnknownTopicId(format!(
                "Topic id {} does not exist.",
                request.topic_id
            ))
        })?;
        let p = usize::try_from(request.partition)
            .ok()
            .and_then(|i| topic.partitions.get(i))
            .ok_or_else(unknown_topic)?;
        let name = format!("{}-{}", topic.name, request.partition);
        if request.leader_epoch > p.leader_epoch || request.partition_epoch > p.partition_epoch {
            return Err(ControllerError::NotController(format!(
                "{name}: the request's epochs (leader {}, partition {}) are newer than this controller's (leader {}, partition {})",
                request.leader_epoch, request.partition_epoch, p.leader_epoch, p.partition_epoch
            )));
        }
        if request.leader_epoch < p.leader_epoch {
            return Err(ControllerError::FencedLeaderEpoch(format!(
                "{name}: leader epoch {} is older than the current {}",
                request.leader_epoch, p.leader_epoch
            )));
        }
        if request.broker_id != p.leader {
            return Err(ControllerError::InvalidRequest(format!(
                "{name}: broker {} is not the leader ({})",
                request.broker_id, p.leader
            )));
        }
        if request.partition_epoch < p.partition_epoch {
            return Err(ControllerError::InvalidUpdateVersion(format!(
                "{name}: partition epoch {} is older than the current {}",
                request.partition_epoch, p.partition_epoch
            )));
        }
        let unique: BTreeSet<BrokerId> = request.new_isr.iter().copied().collect();
        if unique.len() != request.new_isr.len()
            || !request.new_isr.iter().all(|b| p.replicas.contains(b))
        {
            return Err(ControllerError::InvalidRequest(format!(
                "{name}: the new ISR {:?} has a duplicate or a broker outside the replicas {:?}",
                request.new_isr, p.replicas
            )));
        }
        if !unique.contains(&p.leader) {
            return Err(ControllerError::InvalidRequest(format!(
                "{name}: the new ISR {:?} does not contain the leader {}",
                request.new_isr, p.leader
            )));
        }
        if let Some(b) = request
            .new_isr
            .iter()
            .find(|b| self.brokers.get(b).is_none_or(|r| r.fenced))
        {
            return Err(ControllerError::IneligibleReplica(format!(
                "{name}: broker {b} in the new ISR is fenced or not registered"
            )));
        }
        let min_insync = topic.config.min_insync_replicas();
        let mut next = p.clone();
        next.isr = request.new_isr.clone();
        next.elr = next_elr(p, &request.new_isr, min_insync);
        // The change that brings the last adding replica into the ISR completes the
        // reassignment (KRaft's `PartitionChangeBuilder.tryCompleteReassignment`).
        let live = |b: BrokerId| self.brokers.get(&b).is_some_and(|r| !r.fenced);
        if let Some(done) =
            reassignment::completion(p, &request.new_isr, p.leader, min_insync, live)
        {
            reassignment::finish(&mut next, done, min_insync);
        }
        if next.isr == p.isr && next.replicas == p.replicas {
            return Ok((p.clone(), Vec::new()));
        }
        let record = reassignment::change_record(topic.id, request.partition, p, &next);
        next.partition_epoch += 1;
        if next.leader != p.leader {
            next.leader_epoch = LeaderEpoch(p.leader_epoch.0.saturating_add(1));
        }
        Ok((next, vec![record]))
    }

    /// [`alter_partition`](Self::alter_partition) with KIP-903's check: `member_epochs`, in
    /// the order of `new_isr` (or empty when the sender knows none), are the broker epochs of
    /// the incarnations whose fetches the leader judged; a member being added whose epoch is
    /// known (above 0) and is not the one registered now is INELIGIBLE_REPLICA. Without it, a
    /// proposal computed from a broker's fetches before it restarted (its log then reached
    /// the high watermark) could be committed after the restart, when its log may lack what
    /// was acknowledged meanwhile (simulator seed 342: the proposal waited for a controller
    /// that was itself restarting). Members already in the ISR are not checked: keel keeps a
    /// restarted broker in its ISRs, and a shrink must not wait for its first fetch.
    pub fn alter_partition_with_epochs(
        &self,
        request: &AlterPartitionRequest,
        member_epochs: &[i64],
    ) -> Result<(Partition, Vec<MetadataRecord>), ControllerError> {
        let outcome = self.alter_partition(request)?;
        let current = self
            .topics
            .get(&request.topic_id)
            .and_then(|t| t.partitions.get(usize::try_from(request.partition).ok()?));
        for (member, &epoch) in request.new_isr.iter().zip(member_epochs) {
            if epoch <= 0 || current.is_some_and(|p| p.isr.contains(member)) {
                continue;
            }
            let registered = self.brokers.get(member).map(|b| b.epoch);
            if registered != Some(epoch) {
                return Err(ControllerError::IneligibleReplica(format!(
                    "broker {member} in the new ISR was judged at broker epoch {epoch}, but is \
                     registered at {registered:?}: it restarted since (KIP-903)"
                )));
            }
        }
        Ok(outcome)
    }

    fn registered(&self, broker: BrokerId) -> Result<&Broker, ControllerError> {
        self.brokers.get(&broker).ok_or_else(|| {
            ControllerError::BrokerIdNotRegistered(format!("Broker {broker} is not registered."))
        })
    }

    /// The changes for every partition that has `remove` in its ISR or as leader, or no leader
    /// in `live` (see [`elect_leaders`](Self::elect_leaders)).
    pub(crate) fn partition_changes(
        &self,
        remove: Option<BrokerId>,
        live: &BTreeSet<BrokerId>,
        unclean: UncleanElection,
    ) -> Vec<MetadataRecord> {
        let mut records = Vec::new();
        for topic in self.topics() {
            for (index, p) in topic.partitions.iter().enumerate() {
                let mut isr = p.isr.clone();
                if let Some(b) = remove {
                    if isr.contains(&b) && isr.len() > 1 {
                        isr.retain(|&r| r != b);
                    }
                }
                let leader_stays = p.leader != BrokerId::NONE
                    && live.contains(&p.leader)
                    && isr.contains(&p.leader);
                let mut leader = p.leader;
                if !leader_stays {
                    leader = BrokerId::NONE;
                    let outside_isr = crate::planted::active(crate::planted::Bug::ElectOutsideIsr);
                    let eligible =
                        |r: &&BrokerId| (outside_isr || isr.contains(r)) && live.contains(r);
                    // No live ISR member: a live eligible leader replica holds everything
                    // committed too (KIP-966), and joins the ISR.
                    let from_elr = |r: &&BrokerId| p.elr.contains(r) && live.contains(r);
                    if let Some(&r) = p
                        .replicas
                        .iter()
                        .find(eligible)
                        .or_else(|| p.replicas.iter().find(from_elr))
                    {
                        leader = r;
                        if !isr.contains(&r) {
                            isr.push(r);
                        }
                    } else if topic
                        .config
                        .unclean_leader_election()
                        .map_or(unclean == UncleanElection::Enabled, |on| on)
                    {
                        if let Some(&r) = p.replicas.iter().find(|r| live.contains(r)) {
                            leader = r;
                            isr = vec![r];
                        }
                    }
                }
                let min_insync = topic.config.min_insync_replicas();
                let mut next = p.clone();
                next.leader = leader;
                if isr != p.isr {
                    next.elr = next_elr(p, &isr, min_insync);
                }
                next.isr = isr;
                // A reassignment that waited for a live leader (or whose ISR changed) may
                // complete now.
                let is_live = |b: BrokerId| live.contains(&b);
                if let Some(done) =
                    reassignment::completion(p, &next.isr, next.leader, min_insync, is_live)
                {
                    reassignment::finish(&mut next, done, min_insync);
                }
                if next == *p {
                    continue;
                }
                records.push(reassignment::change_record(
                    topic.id,
                    index as i32,
                    p,
                    &next,
                ));
            }
        }
        records
    }

    // --- Apply ----------------------------------------------------------------------------

    /// Applies one record: the only way the state changes. Deterministic and total: never
    /// panics; a record that does not fit the state (see [`ApplyError`]) leaves it unchanged.
    pub fn apply(&mut self, record: &MetadataRecord) -> Result<(), ApplyError> {
        match &record.record {
            None => Err(ApplyError::Empty),
            Some(Record::Topic(r)) => self.apply_topic(r),
            Some(Record::Partition(r)) => self.apply_partition(r),
            Some(Record::RemoveTopic(r)) => {
                let id = topic_id(&r.topic_id)?;
                let topic = self
                    .topics
                    .remove(&id)
                    .ok_or(ApplyError::UnknownTopic(id))?;
                self.names.remove(&topic.name);
                Ok(())
            }
            Some(Record::TopicConfig(r)) => {
                let id = topic_id(&r.topic_id)?;
                let topic = self
                    .topics
                    .get_mut(&id)
                    .ok_or(ApplyError::UnknownTopic(id))?;
                let mut overrides = topic.config.overrides().clone();
                match &r.value {
                    Some(value) => overrides.insert(r.key.clone(), value.clone()),
                    None => overrides.remove(&r.key),
                };
                topic.config = TopicConfig::from_map(&overrides)?;
                Ok(())
            }
            Some(Record::ProducerIds(r)) => self.apply_producer_ids(r),
            Some(Record::RegisterBroker(r)) => self.apply_register_broker(r),
            Some(Record::PartitionChange(r)) => self.apply_partition_change(r),
            Some(Record::FenceBroker(r)) => self.apply_fencing(r.broker_id, r.broker_epoch, true),
            Some(Record::UnfenceBroker(r)) => {
                self.apply_fencing(r.broker_id, r.broker_epoch, false)
            }
            Some(Record::UnregisterBroker(r)) => self.apply_unregister_broker(r),
            Some(Record::Acl(r)) => self.apply_acl(r, true),
            Some(Record::RemoveAcl(r)) => self.apply_acl(r, false),
            Some(Record::ScramCredential(r)) => self.apply_scram(r),
            Some(Record::RemoveScramCredential(r)) => self.apply_remove_scram(r),
            Some(Record::ClientQuota(r)) => self.apply_client_quota(r),
            Some(Record::BrokerConfig(r)) => self.apply_broker_config(r),
        }
    }

    /// An allocation ([`allocate_producer_ids`](Self::allocate_producer_ids)) moves the next
    /// producer id by exactly one block: two allocations computed from the same state hand out
    /// the same block, so only the first may apply. A snapshot's record (broker -1, see
    /// `quorum::snapshot`) restores the counter, only on a state that handed out no id yet.
    fn apply_producer_ids(&mut self, r: &ProducerIdsRecord) -> Result<(), ApplyError> {
        let invalid = |why: String| Err(ApplyError::InvalidProducerIds(why));
        if r.broker_id == BrokerId::NONE.0 {
            if self.next_producer_id != 0 {
                return invalid(format!(
                    "a snapshot's producer id counter on a state that handed out ids up to {}",
                    self.next_producer_id
                ));
            }
            if r.next_producer_id < 0 {
                return invalid(format!("negative next producer id {}", r.next_producer_id));
            }
            self.next_producer_id = r.next_producer_id;
            return Ok(());
        }
        let expected = self.next_producer_id.checked_add(PRODUCER_ID_BLOCK_SIZE);
        if expected != Some(r.next_producer_id) {
            return invalid(format!(
                "next producer id {} is not one block past the current {}",
                r.next_producer_id, self.next_producer_id
            ));
        }
        self.next_producer_id = r.next_producer_id;
        Ok(())
    }

    fn apply_partition_change(&mut self, r: &PartitionChangeRecord) -> Result<(), ApplyError> {
        let id = topic_id(&r.topic_id)?;
        let topic = self
            .topics
            .get_mut(&id)
            .ok_or(ApplyError::UnknownTopic(id))?;
        let Some(old) = usize::try_from(r.partition)
            .ok()
            .and_then(|i| topic.partitions.get(i))
        else {
            return Err(ApplyError::InvalidPartition(format!(
                "partition change for unknown partition {} of {id}",
                r.partition
            )));
        };
        if old.partition_epoch != r.expected_partition_epoch {
            return Err(ApplyError::InvalidPartition(format!(
                "partition change computed at partition epoch {}, partition is at {}",
                r.expected_partition_epoch, old.partition_epoch
            )));
        }
        let mut record = partition_record(id, r.partition, old);
        if let Some(leader) = r.leader {
            if leader != old.leader.0 {
                record.leader = leader;
                record.leader_epoch =
                    old.leader_epoch.0.checked_add(1).ok_or_else(|| {
                        ApplyError::InvalidPartition("leader epoch overflow".into())
                    })?;
            }
        }
        if let Some(isr) = &r.isr {
            record.isr = isr.brokers.clone();
        }
        if let Some(elr) = &r.elr {
            record.elr = elr.brokers.clone();
        }
        if let Some(replicas) = &r.replicas {
            record.replicas = replicas.brokers.clone();
        }
        if let Some(adding) = &r.adding {
            record.adding = adding.brokers.clone();
        }
        if let Some(removing) = &r.removing {
            record.removing = removing.brokers.clone();
        }
        record.partition_epoch = old
            .partition_epoch
            .checked_add(1)
            .ok_or_else(|| ApplyError::InvalidPartition("partition epoch overflow".into()))?;
        let new = partition_from_record(&record)?;
        topic.partitions[r.partition as usize] = new;
        Ok(())
    }

    fn apply_fencing(&mut self, broker: i32, epoch: i64, fence: bool) -> Result<(), ApplyError> {
        let id = BrokerId(broker);
        let Some(b) = self.brokers.get_mut(&id) else {
            return Err(ApplyError::InvalidBroker(format!(
                "broker {id} is not registered"
            )));
        };
        if b.epoch != epoch {
            return Err(ApplyError::InvalidBroker(format!(
                "broker {id} is at epoch {}, not {epoch}",
                b.epoch
            )));
        }
        if b.fenced == fence {
            return Err(ApplyError::InvalidBroker(format!(
                "broker {id} is already {}",
                if fence { "fenced" } else { "unfenced" }
            )));
        }
        b.fenced = fence;
        Ok(())
    }

    fn apply_topic(&mut self, r: &TopicRecord) -> Result<(), ApplyError> {
        let id = topic_id(&r.topic_id)?;
        validate_topic_name(&r.name).map_err(ApplyError::InvalidTopicName)?;
        if self.names.contains_key(&r.name) {
            return Err(ApplyError::TopicNameInUse(r.name.clone()));
        }
        if self.topics.contains_key(&id) {
            return Err(ApplyError::TopicIdInUse(id));
        }
        let config = TopicConfig::from_map(&r.configs)?;
        self.names.insert(r.name.clone(), id);
        self.topics.insert(
            id,
            Topic {
                name: r.name.clone(),
                id,
                partitions: Vec::new(),
                config,
            },
        );
        Ok(())
    }

    fn apply_partition(&mut self, r: &PartitionRecord) -> Result<(), ApplyError> {
        let id = topic_id(&r.topic_id)?;
        let partition = partition_from_record(r)?;
        let topic = self
            .topics
            .get_mut(&id)
            .ok_or(ApplyError::UnknownTopic(id))?;
        let index = usize::try_from(r.partition).map_err(|_| {
            ApplyError::InvalidPartition(format!("negative partition {}", r.partition))
        })?;
        match index.cmp(&topic.partitions.len()) {
            std::cmp::Ordering::Greater => Err(ApplyError::InvalidPartition(format!(
                "partition {index} would leave a gap after {}",
                topic.partitions.len()
            ))),
            std::cmp::Ordering::Equal => {
                topic.partitions.push(partition);
                Ok(())
            }
            // Only new partitions come as partition records (CreateTopics, CreatePartitions, a
            // snapshot on a fresh state); changes come as PartitionChange. A record for a taken
            // index is a CreatePartitions computed before another one added it.
            std::cmp::Ordering::Less => Err(ApplyError::InvalidPartition(format!(
                "partition {index} already exists"
            ))),
        }
    }

    fn apply_register_broker(&mut self, r: &RegisterBrokerRecord) -> Result<(), ApplyError> {
        let invalid = |why: String| Err(ApplyError::InvalidBroker(why));
        if r.broker_id < 0 {
            return invalid(format!("negative broker id {}", r.broker_id));
        }
        let Ok(incarnation_id) = <[u8; 16]>::try_from(r.incarnation_id.as_slice()) else {
            return invalid("incarnation id is not 16 bytes".into());
        };
        if r.endpoints.iter().any(|e| !(0..=65535).contains(&e.port)) {
            return invalid("endpoint port outside 0..=65535".into());
        }
        let id = BrokerId(r.broker_id);
        // Broker epochs are unique across brokers: two registrations computed from the same
        // state (of the same broker or two) carry the same epoch, so only the first applies.
        if r.broker_epoch <= self.last_broker_epoch {
            return invalid(format!(
                "broker {id} epoch {} is not above the last broker epoch {}",
                r.broker_epoch, self.last_broker_epoch
            ));
        }
        // A live registration is fenced first (by the same command, see `register_broker`);
        // replacing it directly would keep the restarted broker leading at its old epochs.
        if self.brokers.get(&id).is_some_and(|b| !b.fenced) {
            return invalid(format!(
                "broker {id} is registered unfenced; its registration must be fenced first"
            ));
        }
        self.last_broker_epoch = r.broker_epoch;
        self.brokers.insert(
            id,
            Broker {
                id,
                incarnation_id,
                epoch: r.broker_epoch,
                endpoints: r.endpoints.clone(),
                rack: r.rack.clone(),
                fenced: r.fenced,
            },
        );
        Ok(())
    }

    /// An unregistration applies only at the broker's current epoch (a registration that came
    /// since wins) and only while no partition has the broker among its replicas, so that a
    /// replica never names a broker the metadata does not know.
    fn apply_unregister_broker(&mut self, r: &UnregisterBrokerRecord) -> Result<(), ApplyError> {
        let id = BrokerId(r.broker_id);
        let invalid = |why: String| Err(ApplyError::InvalidBroker(why));
        match self.brokers.get(&id) {
            None => return invalid(format!("broker {id} is not registered")),
            Some(b) if b.epoch != r.broker_epoch => {
                return invalid(format!(
                    "broker {id} is at epoch {}, not {}",
                    b.epoch, r.broker_epoch
                ))
            }
            Some(_) => {}
        }
        if let Some((topic, partition)) = self.partitions_on(id).first() {
            return invalid(format!(
                "broker {id} still holds a replica of {topic}-{partition}"
            ));
        }
        self.brokers.remove(&id);
        Ok(())
    }

    /// Asserts every invariant in the module documentation. For tests and the simulator.
    pub fn check_invariants(&self) {
        assert_eq!(
            self.names.len(),
            self.topics.len(),
            "invariant 1: one name per topic"
        );
        for (name, id) in &self.names {
            let topic = self.topics.get(id);
            assert!(
                topic.is_some_and(|t| &t.name == name && t.id == *id),
                "invariant 1: the name index matches the topics ({name})"
            );
        }
        for topic in self.topics.values() {
            assert!(
                validate_topic_name(&topic.name).is_ok(),
                "invariant 2: valid topic name {:?}",
                topic.name
            );
            assert!(
                topic.id != TopicId::ZERO,
                "invariant 2: topic ids are not zero"
            );
            for (i, p) in topic.partitions.iter().enumerate() {
                let record = partition_record(topic.id, i as i32, p);
                assert!(
                    partition_from_record(&record).as_ref() == Ok(p),
                    "invariant 3: partition {i} of {} is well formed: {p:?}",
                    topic.name
                );
            }
            assert!(
                TopicConfig::from_map(topic.config.overrides()).as_ref() == Ok(&topic.config),
                "invariant 5: the configs of {} validate",
                topic.name
            );
        }
        assert!(
            self.next_producer_id >= 0,
            "invariant 6: producer ids are not negative"
        );
        let mut epochs = BTreeSet::new();
        for broker in self.brokers.values() {
            assert!(
                broker.epoch <= self.last_broker_epoch,
                "invariant 6: broker epochs are at most the last one"
            );
            assert!(
                epochs.insert(broker.epoch),
                "invariant 6: broker epochs are unique across brokers ({})",
                broker.epoch
            );
        }
        for binding in self.acls.iter() {
            assert!(
                binding.validate().is_ok(),
                "invariant 8: every ACL binding validates: {binding}"
            );
        }
    }

    /// The existing topic whose name equals `name` once `.` is read as `_` (Kafka refuses such
    /// pairs because metric names would collide), least name first for a deterministic message.
    fn colliding_topic(&self, name: &str) -> Option<&str> {
        if !name.contains(['.', '_']) {
            return None;
        }
        let unified = name.replace('.', "_");
        self.names
            .keys()
            .find(|existing| *existing != name && existing.replace('.', "_") == unified)
            .map(String::as_str)
    }
}

/// Kafka's topic name rules (`Topic.validate`), with its messages.
pub fn validate_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("Topic name is illegal, it can't be empty".into());
    }
    if name == "." || name == ".." {
        return Err("Topic name cannot be \".\" or \"..\"".into());
    }
    if name.len() > TOPIC_NAME_LENGTH_MAX {
        return Err(format!(
            "Topic name is illegal, it can't be longer than {TOPIC_NAME_LENGTH_MAX} characters, topic name: {name}"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return Err(format!(
            "Topic name \"{name}\" is illegal, it contains a character other than ASCII alphanumerics, '.', '_' and '-'"
        ));
    }
    Ok(())
}

fn topic_id(bytes: &[u8]) -> Result<TopicId, ApplyError> {
    TopicId::from_slice(bytes).ok_or_else(|| ApplyError::InvalidTopicId(bytes.to_vec()))
}

/// Checks a partition record's own consistency (invariant 3) and converts it.
fn partition_from_record(r: &PartitionRecord) -> Result<Partition, ApplyError> {
    let invalid = |why: &str| Err(ApplyError::InvalidPartition(format!("{why}: {r:?}")));
    let replicas: BTreeSet<i32> = r.replicas.iter().copied().collect();
    let isr: BTreeSet<i32> = r.isr.iter().copied().collect();
    if replicas.is_empty() {
        return invalid("no replicas");
    }
    if replicas.len() != r.replicas.len() || isr.len() != r.isr.len() {
        return invalid("a replica listed twice");
    }
    if replicas.first().is_some_and(|&b| b < 0) {
        return invalid("a negative broker id");
    }
    if !isr.is_subset(&replicas) {
        return invalid("ISR outside the replicas");
    }
    if r.leader != BrokerId::NONE.0 && !isr.contains(&r.leader) {
        return invalid("leader outside the ISR");
    }
    if r.leader_epoch < 0 || r.partition_epoch < 0 {
        return invalid("negative epoch");
    }
    let elr: BTreeSet<i32> = r.elr.iter().copied().collect();
    if elr.len() != r.elr.len() || !elr.is_subset(&replicas) || !elr.is_disjoint(&isr) {
        return invalid("ELR listed twice, outside the replicas or inside the ISR");
    }
    let adding: BTreeSet<i32> = r.adding.iter().copied().collect();
    let removing: BTreeSet<i32> = r.removing.iter().copied().collect();
    if adding.len() != r.adding.len()
        || removing.len() != r.removing.len()
        || !adding.is_subset(&replicas)
        || !removing.is_subset(&replicas)
        || !adding.is_disjoint(&removing)
        || removing.len() == replicas.len()
    {
        return invalid(
            "adding or removing replicas listed twice, outside the replicas, in both, or \
             removing every replica",
        );
    }
    Ok(Partition {
        replicas: r.replicas.iter().map(|&b| BrokerId(b)).collect(),
        isr: r.isr.iter().map(|&b| BrokerId(b)).collect(),
        leader: BrokerId(r.leader),
        leader_epoch: LeaderEpoch(r.leader_epoch),
        partition_epoch: r.partition_epoch,
        elr: r.elr.iter().map(|&b| BrokerId(b)).collect(),
        adding: r.adding.iter().map(|&b| BrokerId(b)).collect(),
        removing: r.removing.iter().map(|&b| BrokerId(b)).collect(),
    })
}

/// The record that states `partition` of `topic` as it is.
pub(crate) fn partition_record(topic: TopicId, index: i32, p: &Partition) -> PartitionRecord {
    PartitionRecord {
        topic_id: topic.0.to_vec(),
        partition: index,
        replicas: p.replicas.iter().map(|b| b.0).collect(),
        isr: p.isr.iter().map(|b| b.0).collect(),
        leader: p.leader.0,
        leader_epoch: p.leader_epoch.0,
        partition_epoch: p.partition_epoch,
        elr: p.elr.iter().map(|b| b.0).collect(),
        adding: p.adding.iter().map(|b| b.0).collect(),
        removing: p.removing.iter().map(|b| b.0).collect(),
    }
}

/// The ELR after `old`'s ISR becomes `new_isr` (KIP-966): empty once the ISR has
/// `min_insync` members (clamped to 1..=replicas); otherwise the ELR so far plus the members
/// that left the ISR, less those in it now, in replica order.
pub(crate) fn next_elr(old: &Partition, new_isr: &[BrokerId], min_insync: i32) -> Vec<BrokerId> {
    let min = (min_insync.max(1) as usize).min(old.replicas.len().max(1));
    if new_isr.len() >= min {
        return Vec::new();
    }
    old.replicas
        .iter()
        .copied()
        .filter(|r| !new_isr.contains(r))
        .filter(|r| old.elr.contains(r) || old.isr.contains(r))
        .collect()
}

/// New partitions `range` of `topic`, round-robin over `brokers` (sorted, nonempty, at least
/// `rf` of them): every replica in the ISR, the first replica leading, epochs 0.
fn new_partition_records(
    topic: TopicId,
    range: std::ops::Range<i32>,
    rf: usize,
    brokers: &[BrokerId],
) -> impl Iterator<Item = MetadataRecord> + '_ {
    assert!(
        rf >= 1 && rf <= brokers.len(),
        "placement needs 1 <= replication factor ({rf}) <= live brokers ({})",
        brokers.len()
    );
    let n = brokers.len();
    let start = u32::from_be_bytes([topic.0[0], topic.0[1], topic.0[2], topic.0[3]]) as usize % n;
    range.map(move |p| {
        let replicas: Vec<BrokerId> = (0..rf)
            .map(|i| brokers[(start + p as usize + i) % n])
            .collect();
        let partition = Partition {
            leader: replicas[0],
            isr: replicas.clone(),
            replicas,
            leader_epoch: LeaderEpoch(0),
            partition_epoch: 0,
            elr: Vec::new(),
            adding: Vec::new(),
            removing: Vec::new(),
        };
        partition_record(topic, p, &partition).into()
    })
}

fn sorted_brokers(live: &[BrokerId]) -> Vec<BrokerId> {
    let set: BTreeSet<BrokerId> = live.iter().copied().filter(|b| b.0 >= 0).collect();
    set.into_iter().collect()
}

fn check_replication_factor(rf: usize, live: usize) -> Result<(), ControllerError> {
    if rf > live {
        return Err(ControllerError::InvalidReplicationFactor(format!(
            "Unable to replicate the partition {rf} time(s): The target replication factor of {rf} cannot be reached because only {live} broker(s) are registered."
        )));
    }
    Ok(())
}

fn unknown_topic() -> ControllerError {
    ControllerError::UnknownTopicOrPartition(
        "This server does not host this topic-partition.".into(),
    )
}

fn too_many_records() -> ControllerError {
    ControllerError::PolicyViolation("Unable to perform excessively large batch operation.".into())
}
