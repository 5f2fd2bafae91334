//! Kafka's error codes: the one table of every code keel answers with or looks at.
//!
//! Names and numbers are Kafka's (`org.apache.kafka.common.protocol.Errors`, the protocol
//! guide's error code table). Every other module and crate takes its codes from here; a test
//! checks the table against kafka-protocol's `ResponseError` (generated from `Errors.java`).
//! core stays free of kafka-protocol, so the codes are plain `i16`s, as the wire carries them.

use std::fmt;

/// A Kafka error code, as the protocol carries it. [`NONE`] (0) is success.
pub type ErrorCode = i16;

macro_rules! error_codes {
    ($($(#[doc = $doc:literal])* $name:ident = $code:literal;)*) => {
        $(
            $(#[doc = $doc])*
            pub const $name: ErrorCode = $code;
        )*

        /// Every code of this table with its Kafka name, in code order.
        pub const ALL: &[(ErrorCode, &str)] = &[$(($name, stringify!($name))),*];
    };
}

error_codes! {
    /// An unexpected error on the server (keel: a poisoned quorum node, a command that kept
    /// meeting changed metadata).
    UNKNOWN_SERVER_ERROR = -1;
    /// No error.
    NONE = 0;
    /// The requested offset is outside the log.
    OFFSET_OUT_OF_RANGE = 1;
    /// A batch fails its CRC or does not parse (keel also answers it to a follower's
    /// malformed fetch).
    CORRUPT_MESSAGE = 2;
    /// The topic or partition does not exist (on this broker).
    UNKNOWN_TOPIC_OR_PARTITION = 3;
    /// The partition has no leader just now.
    LEADER_NOT_AVAILABLE = 5;
    /// This broker is not the partition's leader (or not a replica of it).
    NOT_LEADER_OR_FOLLOWER = 6;
    /// The request timed out (keel: also too many quorum proposals pending; the client
    /// retries).
    REQUEST_TIMED_OUT = 7;
    /// A batch larger than `max.message.bytes`.
    MESSAGE_TOO_LARGE = 10;
    /// An OffsetCommit's metadata string is over the configured maximum.
    OFFSET_METADATA_TOO_LARGE = 12;
    /// The group coordinator is still loading the group's partition.
    COORDINATOR_LOAD_IN_PROGRESS = 14;
    /// The group is being removed (Dead), or no coordinator can be found: find the
    /// coordinator again.
    COORDINATOR_NOT_AVAILABLE = 15;
    /// This broker does not (or no longer) coordinate the group.
    NOT_COORDINATOR = 16;
    /// An invalid topic name (or an operation on an internal topic that is not allowed).
    INVALID_TOPIC_EXCEPTION = 17;
    /// Fewer in-sync replicas than `min.insync.replicas`: the produce was not appended.
    NOT_ENOUGH_REPLICAS = 19;
    /// Appended, but the ISR shrank below `min.insync.replicas` before it was committed.
    NOT_ENOUGH_REPLICAS_AFTER_APPEND = 20;
    /// A produce's `acks` is not -1, 0 or 1.
    INVALID_REQUIRED_ACKS = 21;
    /// The request's generation is not the group's.
    ILLEGAL_GENERATION = 22;
    /// The member's protocol type or protocols do not fit the group's.
    INCONSISTENT_GROUP_PROTOCOL = 23;
    /// The group id is empty where a non-empty one is needed.
    INVALID_GROUP_ID = 24;
    /// The member id is not a member of the group.
    UNKNOWN_MEMBER_ID = 25;
    /// The session timeout is outside the broker's allowed range.
    INVALID_SESSION_TIMEOUT = 26;
    /// The group is rebalancing: rejoin.
    REBALANCE_IN_PROGRESS = 27;
    /// An offset commit's records are too large for `__consumer_offsets`.
    INVALID_COMMIT_OFFSET_SIZE = 28;
    /// The principal may not do this to the topic (ACLs, docs/security.md).
    TOPIC_AUTHORIZATION_FAILED = 29;
    /// The principal may not do this to the group.
    GROUP_AUTHORIZATION_FAILED = 30;
    /// The principal may not do this to the cluster.
    CLUSTER_AUTHORIZATION_FAILED = 31;
    /// A record's timestamp is outside the topic's `message.timestamp.before.max.ms` /
    /// `message.timestamp.after.max.ms` bounds around the broker's clock.
    INVALID_TIMESTAMP = 32;
    /// A SASL mechanism this broker does not offer.
    UNSUPPORTED_SASL_MECHANISM = 33;
    /// CreateTopics: a topic of that name exists.
    TOPIC_ALREADY_EXISTS = 36;
    /// An invalid partition count.
    INVALID_PARTITIONS = 37;
    /// An invalid replication factor.
    INVALID_REPLICATION_FACTOR = 38;
    /// A replica assignment that names no broker, a broker twice, or one that is not
    /// registered (AlterPartitionReassignments).
    INVALID_REPLICA_ASSIGNMENT = 39;
    /// An invalid config name or value.
    INVALID_CONFIG = 40;
    /// This broker is not the active controller.
    NOT_CONTROLLER = 41;
    /// A malformed or unsupported request.
    INVALID_REQUEST = 42;
    /// The request breaks a policy (keel: a quorum command over the size limit).
    POLICY_VIOLATION = 44;
    /// An idempotent producer's batch out of sequence.
    OUT_OF_ORDER_SEQUENCE_NUMBER = 45;
    /// A producer epoch older than the partition's.
    INVALID_PRODUCER_EPOCH = 47;
    /// A transactional request that does not fit the transaction's state (EndTxn with no
    /// transaction, or the opposite result of one already decided).
    INVALID_TXN_STATE = 48;
    /// The producer id is not the one the transactional id holds.
    INVALID_PRODUCER_ID_MAPPING = 49;
    /// `transaction.timeout.ms` is not positive or is over the broker's
    /// `transaction.max.timeout.ms`.
    INVALID_TRANSACTION_TIMEOUT = 50;
    /// The transaction is completing (or its state is being written): retry.
    CONCURRENT_TRANSACTIONS = 51;
    /// A transaction marker from a coordinator older than the partition has seen.
    TRANSACTION_COORDINATOR_FENCED = 52;
    /// The principal may not use the transactional id.
    TRANSACTIONAL_ID_AUTHORIZATION_FAILED = 53;
    /// The ACL APIs without an authoriser (`authorizer.class.name` not set).
    SECURITY_DISABLED = 54;
    /// Another part of the same request failed, so this part was not attempted.
    OPERATION_NOT_ATTEMPTED = 55;
    /// A disk error on the broker.
    KAFKA_STORAGE_ERROR = 56;
    /// SASL authentication failed (a wrong password, an unknown user, a malformed exchange).
    SASL_AUTHENTICATION_FAILED = 58;
    /// The partition no longer knows the producer id (its state expired or was removed).
    UNKNOWN_PRODUCER_ID = 59;
    /// DeleteGroups on a group that still has members.
    NON_EMPTY_GROUP = 68;
    /// DeleteGroups on a group that does not exist.
    GROUP_ID_NOT_FOUND = 69;
    /// The leader has no such fetch session (it restarted, or the follower's was replaced);
    /// the follower starts a new one.
    FETCH_SESSION_ID_NOT_FOUND = 70;
    /// A fetch session request was lost or repeated; the follower starts a new session.
    INVALID_FETCH_SESSION_EPOCH = 71;
    /// The request's leader epoch is older than the partition's.
    FENCED_LEADER_EPOCH = 74;
    /// The request's leader epoch is newer than the partition's.
    UNKNOWN_LEADER_EPOCH = 75;
    /// The topic's compression type is not allowed for the request's version.
    UNSUPPORTED_COMPRESSION_TYPE = 76;
    /// A broker epoch older than the broker's registration.
    STALE_BROKER_EPOCH = 77;
    /// KIP-394: join again with the member id given in this response.
    MEMBER_ID_REQUIRED = 79;
    /// ElectLeaders (KIP-460): the preferred replica is fenced or out of the ISR.
    PREFERRED_LEADER_NOT_AVAILABLE = 80;
    /// KIP-345: another member now holds this `group.instance.id`.
    FENCED_INSTANCE_ID = 82;
    /// ElectLeaders (KIP-460): no replica of the partition can lead.
    ELIGIBLE_LEADERS_NOT_AVAILABLE = 83;
    /// ElectLeaders (KIP-460): the partition already has the leader asked for.
    ELECTION_NOT_NEEDED = 84;
    /// A cancellation of a partition reassignment when none is in progress.
    NO_REASSIGNMENT_IN_PROGRESS = 85;
    /// OffsetDelete: a member of the (non-empty) group is subscribed to the partition's topic.
    GROUP_SUBSCRIBED_TO_TOPIC = 86;
    /// A record or batch that fails validation.
    INVALID_RECORD = 87;
    /// OffsetFetch with `require_stable`: a transaction holds an offset of the partition that
    /// is not decided yet (KIP-447); the client retries.
    UNSTABLE_OFFSET_COMMIT = 88;
    /// A newer producer with the same transactional id exists: this one is fenced.
    PRODUCER_FENCED = 90;
    /// DescribeUserScramCredentials: the user has no SCRAM credential; AlterUserScram-
    /// Credentials: a deletion of a credential that does not exist.
    RESOURCE_NOT_FOUND = 91;
    /// A user named twice in one DescribeUserScramCredentials or AlterUserScramCredentials.
    DUPLICATE_RESOURCE = 92;
    /// A SCRAM credential the broker will not store (iterations out of range, an empty user).
    UNACCEPTABLE_CREDENTIAL = 93;
    /// AlterPartition: the partition epoch is not the current one.
    INVALID_UPDATE_VERSION = 95;
    /// No topic has this id.
    UNKNOWN_TOPIC_ID = 100;
    /// The broker id is not registered.
    BROKER_ID_NOT_REGISTERED = 102;
    /// DescribeTransactions: the coordinator holds no such transactional id.
    TRANSACTIONAL_ID_NOT_FOUND = 105;
    /// AlterPartition: the new ISR holds a broker that cannot be in it.
    INELIGIBLE_REPLICA = 107;
    /// DescribeCluster v1+: a broker asked for controller endpoints (KIP-919).
    MISMATCHED_ENDPOINT_TYPE = 114;
    /// DescribeCluster: an endpoint type that is neither brokers (1) nor controllers (2).
    UNSUPPORTED_ENDPOINT_TYPE = 115;
    /// KIP-890: the transaction cannot go on (a partition was never added): abort it.
    TRANSACTION_ABORTABLE = 120;
}

/// Kafka's name of `code` (`"NOT_LEADER_OR_FOLLOWER"`), if this table has it.
pub fn name(code: ErrorCode) -> Option<&'static str> {
    ALL.iter().find(|(c, _)| *c == code).map(|(_, name)| *name)
}

/// Shows a code as its number and name, for logs: `6 (NOT_LEADER_OR_FOLLOWER)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Named(pub ErrorCode);

impl fmt::Display for Named {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match name(self.0) {
            Some(name) => write!(f, "{} ({name})", self.0),
            None => write!(f, "{}", self.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every entry is Kafka's: the number and the name match kafka-protocol's `ResponseError`
    /// (generated from `Errors.java`), so that a typo in the table fails here.
    #[test]
    fn table_matches_kafka() {
        use kafka_protocol::error::ResponseError;
        for &(code, ours) in ALL {
            let camel: String = ours
                .split('_')
                .map(|word| {
                    let mut chars = word.chars();
                    let first = chars.next().expect("no empty word in a code's name");
                    first.to_string() + &chars.as_str().to_lowercase()
                })
                .collect();
            match ResponseError::try_from_code(code) {
                None => assert_eq!((code, ours), (0, "NONE")),
                Some(ResponseError::Unknown(_)) => panic!("{ours} = {code}: not a Kafka code"),
                Some(kafka) => assert_eq!(kafka.to_string(), camel, "{ours} = {code}"),
            }
        }
    }

    /// One name per code and one code per name, in code order.
    #[test]
    fn table_is_ordered_and_unique() {
        for pair in ALL.windows(2) {
            assert!(pair[0].0 < pair[1].0, "{:?} then {:?}", pair[0], pair[1]);
        }
        let mut names: Vec<&str> = ALL.iter().map(|(_, name)| *name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len());
    }

    #[test]
    fn named_shows_number_and_name() {
        assert_eq!(name(NOT_LEADER_OR_FOLLOWER), Some("NOT_LEADER_OR_FOLLOWER"));
        assert_eq!(name(4), None);
        assert_eq!(Named(70).to_string(), "70 (FETCH_SESSION_ID_NOT_FOUND)");
        assert_eq!(Named(1000).to_string(), "1000");
    }
}
