//! The metadata records: prost messages, written by hand with prost's derive (no .proto file,
//! no protoc). They mirror KRaft's records (`metadata/src/main/resources/common/metadata/*.json`)
//! so that replication through raft and the missing KRaft records slot in without a redesign.
//!
//! Wire compatibility rules (protobuf's): a field's tag never changes and is never reused; new
//! fields take new tags and must mean "as before" when absent; [`Record`] variants likewise.
//! Tags reserved for what KRaft has and keel does not yet:
//! `PartitionRecord` 9 last known ELR, 10 leader recovery state. `Record` tags 20 to 29 belong to security (ACLs, SCRAM credentials, client quotas), apart from the
//! others so that records added meanwhile elsewhere take the next free tag below them.
//!
//! Topic ids are KRaft's 16-byte UUIDs carried as `bytes`; a record whose id is not 16 bytes
//! is rejected by [`super::MetadataState::apply`].

use std::collections::BTreeMap;

/// One metadata record: exactly one of [`Record`] (a record with none is rejected by apply).
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetadataRecord {
    /// The record; `None` only for bytes from a newer writer or garbage.
    #[prost(
        oneof = "Record",
        tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 20, 21, 22, 23, 24"
    )]
    pub record: Option<Record>,
}

/// The kinds of metadata record.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Record {
    /// A new topic (KRaft's TopicRecord, with its initial configs folded in so that a topic and
    /// its configs appear together).
    #[prost(message, tag = "1")]
    Topic(TopicRecord),
    /// A new partition's whole state (KRaft's PartitionRecord). Apply refuses one for a
    /// partition that exists: changes come as [`Record::PartitionChange`].
    #[prost(message, tag = "2")]
    Partition(PartitionRecord),
    /// Removes a topic and its partitions (KRaft's RemoveTopicRecord).
    #[prost(message, tag = "3")]
    RemoveTopic(RemoveTopicRecord),
    /// Sets or deletes one topic config (KRaft's ConfigRecord for a topic resource).
    #[prost(message, tag = "4")]
    TopicConfig(TopicConfigRecord),
    /// Hands a block of producer ids to a broker (KRaft's ProducerIdsRecord).
    #[prost(message, tag = "5")]
    ProducerIds(ProducerIdsRecord),
    /// Registers (or re-registers) a broker (KRaft's RegisterBrokerRecord).
    #[prost(message, tag = "6")]
    RegisterBroker(RegisterBrokerRecord),
    /// Changes a partition's leader, ISR and/or replicas: elections, fencing, AlterPartition,
    /// reassignments (KRaft's PartitionChangeRecord).
    #[prost(message, tag = "7")]
    PartitionChange(PartitionChangeRecord),
    /// Fences a broker: its session expired (KRaft's FenceBrokerRecord).
    #[prost(message, tag = "8")]
    FenceBroker(FenceBrokerRecord),
    /// Unfences a broker: it heartbeats again and caught up (KRaft's UnfenceBrokerRecord).
    #[prost(message, tag = "9")]
    UnfenceBroker(UnfenceBrokerRecord),
    /// Removes a broker's registration (KRaft's UnregisterBrokerRecord, KIP-631's
    /// UnregisterBroker): apply refuses it while the broker holds a replica.
    #[prost(message, tag = "10")]
    UnregisterBroker(UnregisterBrokerRecord),
    /// Sets or removes one dynamic broker config, of one broker or the cluster default
    /// (KRaft's ConfigRecord for a BROKER resource; [`super::broker_config`]).
    #[prost(message, tag = "11")]
    BrokerConfig(BrokerConfigRecord),
    /// Adds one ACL binding (KRaft's AccessControlEntryRecord); apply refuses one that exists.
    #[prost(message, tag = "20")]
    Acl(AclRecord),
    /// Removes one ACL binding (KRaft's RemoveAccessControlEntryRecord, which names the ACL by
    /// an id; keel names it by its content); apply refuses one that does not exist.
    #[prost(message, tag = "21")]
    RemoveAcl(AclRecord),
    /// Stores (or replaces) one user's SCRAM credential for one mechanism (KRaft's
    /// UserScramCredentialRecord, KIP-554).
    #[prost(message, tag = "22")]
    ScramCredential(ScramCredentialRecord),
    /// Removes one (KRaft's RemoveUserScramCredentialRecord); apply refuses a missing one.
    #[prost(message, tag = "23")]
    RemoveScramCredential(RemoveScramCredentialRecord),
    /// Sets or removes one client quota of one entity (KRaft's ClientQuotaRecord, KIP-13 and
    /// KIP-546).
    #[prost(message, tag = "24")]
    ClientQuota(ClientQuotaRecord),
}

/// A new topic.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TopicRecord {
    /// The topic name (Kafka's rules: 1 to 249 of `[a-zA-Z0-9._-]`, not `.` or `..`).
    #[prost(string, tag = "1")]
    pub name: String,
    /// The topic id: 16 bytes, not all zero.
    #[prost(bytes = "vec", tag = "2")]
    pub topic_id: Vec<u8>,
    /// Topic-level config overrides, by Kafka key.
    #[prost(btree_map = "string, string", tag = "3")]
    pub configs: BTreeMap<String, String>,
}

/// One partition's replicas, ISR, leader and epochs.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PartitionRecord {
    /// The topic's id.
    #[prost(bytes = "vec", tag = "1")]
    pub topic_id: Vec<u8>,
    /// The partition index.
    #[prost(int32, tag = "2")]
    pub partition: i32,
    /// The assigned replicas, preferred leader first.
    #[prost(int32, repeated, tag = "3")]
    pub replicas: Vec<i32>,
    /// The in-sync replicas: a subset of `replicas`.
    #[prost(int32, repeated, tag = "4")]
    pub isr: Vec<i32>,
    /// The leader, a member of `isr`, or -1 for none.
    #[prost(int32, tag = "5")]
    pub leader: i32,
    /// Bumps on every leader change.
    #[prost(int32, tag = "6")]
    pub leader_epoch: i32,
    /// Bumps on every change of the partition's state.
    #[prost(int32, tag = "7")]
    pub partition_epoch: i32,
    /// Eligible leader replicas (KIP-966): outside `isr`, within `replicas`.
    #[prost(int32, repeated, tag = "8")]
    pub elr: Vec<i32>,
    /// The replicas a reassignment adds (KIP-455): within `replicas`, disjoint from `removing`.
    #[prost(int32, repeated, tag = "11")]
    pub adding: Vec<i32>,
    /// The replicas a reassignment removes (KIP-455): within `replicas`, not all of them.
    #[prost(int32, repeated, tag = "12")]
    pub removing: Vec<i32>,
}

/// Removes a topic.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RemoveTopicRecord {
    /// The topic's id.
    #[prost(bytes = "vec", tag = "1")]
    pub topic_id: Vec<u8>,
}

/// Sets (`value` present) or deletes (`value` absent) one topic config.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TopicConfigRecord {
    /// The topic's id.
    #[prost(bytes = "vec", tag = "1")]
    pub topic_id: Vec<u8>,
    /// The Kafka config key.
    #[prost(string, tag = "2")]
    pub key: String,
    /// The new value, or `None` to fall back to the default.
    #[prost(string, optional, tag = "3")]
    pub value: Option<String>,
}

/// Sets or removes one dynamic broker config.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BrokerConfigRecord {
    /// The broker's id in decimal, or empty for the cluster default (Kafka's BROKER resource
    /// name).
    #[prost(string, tag = "1")]
    pub resource: String,
    /// The Kafka config key.
    #[prost(string, tag = "2")]
    pub key: String,
    /// The new value, or `None` to remove it.
    #[prost(string, optional, tag = "3")]
    pub value: Option<String>,
}

/// The next producer id block starts at `next_producer_id`, exactly one block past the
/// previous; the block before it went to `broker_id`. With `broker_id` -1 it is a snapshot's
/// restatement of the counter instead, which applies only to a state that handed out no id.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProducerIdsRecord {
    /// The broker that was given the block.
    #[prost(int32, tag = "1")]
    pub broker_id: i32,
    /// That broker's epoch when it asked.
    #[prost(int64, tag = "2")]
    pub broker_epoch: i64,
    /// The first producer id not yet handed out.
    #[prost(int64, tag = "3")]
    pub next_producer_id: i64,
}

/// A listener a broker serves clients on.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Endpoint {
    /// The listener name, e.g. `PLAINTEXT`.
    #[prost(string, tag = "1")]
    pub name: String,
    /// The advertised host.
    #[prost(string, tag = "2")]
    pub host: String,
    /// The advertised port (0 to 65535).
    #[prost(int32, tag = "3")]
    pub port: i32,
    /// Kafka's security protocol id: 0 PLAINTEXT, 1 SSL, 2 SASL_PLAINTEXT, 3 SASL_SSL.
    #[prost(int32, tag = "4")]
    pub security_protocol: i32,
}

/// A broker's registration.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RegisterBrokerRecord {
    /// The broker id.
    #[prost(int32, tag = "1")]
    pub broker_id: i32,
    /// A random id of this run of the broker process (16 bytes).
    #[prost(bytes = "vec", tag = "2")]
    pub incarnation_id: Vec<u8>,
    /// The broker epoch: greater than any broker epoch before it, of any broker.
    #[prost(int64, tag = "3")]
    pub broker_epoch: i64,
    /// The listeners clients reach the broker on.
    #[prost(message, repeated, tag = "4")]
    pub endpoints: Vec<Endpoint>,
    /// The rack, if configured.
    #[prost(string, optional, tag = "5")]
    pub rack: Option<String>,
    /// Whether the broker starts fenced. A registration always does (as in KRaft): its
    /// heartbeat unfences it once its metadata caught up. Only a snapshot, which restates every
    /// broker as it is, registers an unfenced broker.
    #[prost(bool, tag = "6")]
    pub fenced: bool,
}

/// A list of broker ids (wrapped so that "absent" and "empty" differ).
#[derive(Clone, PartialEq, prost::Message)]
pub struct BrokerList {
    /// The broker ids, in order.
    #[prost(int32, repeated, tag = "1")]
    pub brokers: Vec<i32>,
}

/// A change of one partition's leader, ISR and/or replicas. Applying it bumps the partition epoch by one,
/// and the leader epoch by one if the leader changes (KRaft's PartitionChangeRecord rules).
///
/// Unlike KRaft's record it names the partition epoch it was computed from, and apply refuses it
/// unless the partition is still at that epoch: a change computed from a state that moved on
/// meanwhile (a second election, an AlterPartition that raced it) never lands. This makes a
/// command proposed through raft from a leader's not-yet-current state safe to commit.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PartitionChangeRecord {
    /// The topic's id.
    #[prost(bytes = "vec", tag = "1")]
    pub topic_id: Vec<u8>,
    /// The partition index.
    #[prost(int32, tag = "2")]
    pub partition: i32,
    /// The partition epoch the change applies to.
    #[prost(int32, tag = "3")]
    pub expected_partition_epoch: i32,
    /// The new leader (-1: none); absent: unchanged.
    #[prost(int32, optional, tag = "4")]
    pub leader: Option<i32>,
    /// The new ISR; absent: unchanged.
    #[prost(message, optional, tag = "5")]
    pub isr: Option<BrokerList>,
    /// The new eligible leader replicas; absent: unchanged.
    #[prost(message, optional, tag = "6")]
    pub elr: Option<BrokerList>,
    /// The new replicas (a reassignment starts, completes or is cancelled); absent: unchanged.
    #[prost(message, optional, tag = "7")]
    pub replicas: Option<BrokerList>,
    /// The new adding replicas (KIP-455); absent: unchanged.
    #[prost(message, optional, tag = "8")]
    pub adding: Option<BrokerList>,
    /// The new removing replicas (KIP-455); absent: unchanged.
    #[prost(message, optional, tag = "9")]
    pub removing: Option<BrokerList>,
}

/// Fences a broker at its current epoch.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FenceBrokerRecord {
    /// The broker id.
    #[prost(int32, tag = "1")]
    pub broker_id: i32,
    /// Its broker epoch: apply refuses the record for any other.
    #[prost(int64, tag = "2")]
    pub broker_epoch: i64,
}

/// Unfences a broker at its current epoch.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UnfenceBrokerRecord {
    /// The broker id.
    #[prost(int32, tag = "1")]
    pub broker_id: i32,
    /// Its broker epoch: apply refuses the record for any other.
    #[prost(int64, tag = "2")]
    pub broker_epoch: i64,
}

/// Removes a broker's registration at its current epoch.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UnregisterBrokerRecord {
    /// The broker id.
    #[prost(int32, tag = "1")]
    pub broker_id: i32,
    /// Its broker epoch: apply refuses the record for any other.
    #[prost(int64, tag = "2")]
    pub broker_epoch: i64,
}

/// One ACL binding, with Kafka's codes (`core::acl`). A binding is its own identity: the set
/// of bindings holds each at most once.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct AclRecord {
    /// The resource type's code (2 TOPIC to 7 USER).
    #[prost(int32, tag = "1")]
    pub resource_type: i32,
    /// The resource name or prefix (not empty; `kafka-cluster` for the CLUSTER).
    #[prost(string, tag = "2")]
    pub resource_name: String,
    /// The pattern type's code (3 LITERAL, 4 PREFIXED).
    #[prost(int32, tag = "3")]
    pub pattern_type: i32,
    /// `Type:name`.
    #[prost(string, tag = "4")]
    pub principal: String,
    /// The host, or `*`.
    #[prost(string, tag = "5")]
    pub host: String,
    /// The operation's code (2 ALL to 14 DESCRIBE_TOKENS).
    #[prost(int32, tag = "6")]
    pub operation: i32,
    /// The permission's code (2 DENY, 3 ALLOW).
    #[prost(int32, tag = "7")]
    pub permission: i32,
}

/// A user's SCRAM credential for one mechanism: what the server keeps of a password.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ScramCredentialRecord {
    /// The user name (not empty).
    #[prost(string, tag = "1")]
    pub name: String,
    /// Kafka's mechanism code: 1 SCRAM-SHA-256, 2 SCRAM-SHA-512.
    #[prost(int32, tag = "2")]
    pub mechanism: i32,
    /// The salt.
    #[prost(bytes = "vec", tag = "3")]
    pub salt: Vec<u8>,
    /// `H(ClientKey)`.
    #[prost(bytes = "vec", tag = "4")]
    pub stored_key: Vec<u8>,
    /// `HMAC(SaltedPassword, "Server Key")`.
    #[prost(bytes = "vec", tag = "5")]
    pub server_key: Vec<u8>,
    /// PBKDF2 iterations, 4096 to 16384.
    #[prost(int32, tag = "6")]
    pub iterations: i32,
}

/// Removes a user's SCRAM credential for one mechanism.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct RemoveScramCredentialRecord {
    /// The user name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Kafka's mechanism code.
    #[prost(int32, tag = "2")]
    pub mechanism: i32,
}

/// One part of a quota entity.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct QuotaEntityPart {
    /// `user` or `client-id`.
    #[prost(string, tag = "1")]
    pub entity_type: String,
    /// The name; absent for the default entity of the type.
    #[prost(string, optional, tag = "2")]
    pub entity_name: Option<String>,
}

/// Sets (or with `remove`, deletes) one quota key of one entity.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ClientQuotaRecord {
    /// The entity's parts, at most one per type.
    #[prost(message, repeated, tag = "1")]
    pub entity: Vec<QuotaEntityPart>,
    /// The quota key (`producer_byte_rate`, `consumer_byte_rate`).
    #[prost(string, tag = "2")]
    pub key: String,
    /// The value, bytes per second (a whole number).
    #[prost(double, tag = "3")]
    pub value: f64,
    /// Whether the key is removed rather than set.
    #[prost(bool, tag = "4")]
    pub remove: bool,
}

/// The records of one command, stored as one frame so that they apply all or none (KRaft
/// appends a command's records as one atomic batch).
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetadataBatch {
    /// The records, applied in order.
    #[prost(message, repeated, tag = "1")]
    pub records: Vec<MetadataRecord>,
}

macro_rules! into_record {
    ($($variant:ident($ty:ty)),* $(,)?) => {
        $(impl From<$ty> for MetadataRecord {
            fn from(r: $ty) -> MetadataRecord {
                MetadataRecord { record: Some(Record::$variant(r)) }
            }
        })*
    };
}

into_record!(
    Topic(TopicRecord),
    Partition(PartitionRecord),
    RemoveTopic(RemoveTopicRecord),
    TopicConfig(TopicConfigRecord),
    ProducerIds(ProducerIdsRecord),
    RegisterBroker(RegisterBrokerRecord),
    PartitionChange(PartitionChangeRecord),
    FenceBroker(FenceBrokerRecord),
    UnfenceBroker(UnfenceBrokerRecord),
    UnregisterBroker(UnregisterBrokerRecord),
    BrokerConfig(BrokerConfigRecord),
    ClientQuota(ClientQuotaRecord),
);
