//! The broker's configuration: `keel start --config FILE [--override KEY=VALUE]...`.
//!
//! Settings carry Kafka's own names (`node.id`, `listeners`, `log.retention.hours`, ...) so a
//! Kafka operator's `server.properties` translates line by line. The file is TOML; a setting may
//! be written flat and quoted (`"log.retention.hours" = 24`) or as TOML dotted keys
//! (`log.retention.hours = 24`, which TOML parses as nested tables, as does a `[log]` section
//! holding `retention.hours = 24`). The parsed document is flattened by joining nested table
//! keys with `.`, so every spelling means the same setting. Overrides (`KEY=VALUE` strings from
//! the command line) are applied on top of the file and typed by their key's type.
//!
//! This module owns the table of settings ([`SETTINGS`]: name, type, default, range), their
//! parsing and validation, and the typed [`BrokerConfig`]. It does no I/O other than reading the
//! file named to [`BrokerConfig::load`], once, at startup.
//!
//! What holds:
//! - A [`BrokerConfig`] is built only by [`BrokerConfig::parse`] (and the functions that call
//!   it), from input whose every key is in [`SETTINGS`] and whose every value passed that key's
//!   type and range check; cross-setting rules (listener names unique, advertised listeners
//!   named among the listeners, the heartbeat interval below the session timeout) hold too.
//! - The metadata quorum: with `controller.quorum.voters` set, every id among the voters and
//!   `keel.quorum.learners` together is unique, and `node.id` is one of them (so
//!   [`BrokerConfig::peer_address`] is this node's own entry). Learners without voters are
//!   refused; with neither, the broker runs alone.
//! - Strictness, unlike Kafka: Kafka logs a warning for an unknown key and starts anyway; keel
//!   refuses to start, naming the key and the closest known one, because a misspelt
//!   `log.retention.hours` silently keeping data for a week is worse than a failed start.
//! - Bad input is an error value ([`ConfigError`]), never a panic; each error names the key,
//!   the value as given, and what was expected.
//! - Retention and roll times resolve as Kafka's do: `log.retention.ms` over
//!   `log.retention.minutes` over `log.retention.hours`, and `log.roll.ms` over
//!   `log.roll.hours`, whichever source (file or override) set them.
//! - keel keeps one data directory: `log.dirs` must name exactly one path.
//! - Every listener's name is mapped to a security protocol by `listener.security.protocol.map`
//!   (Kafka's default maps PLAINTEXT, SSL, SASL_PLAINTEXT and SASL_SSL to themselves; another
//!   name such as INTERNAL must be mapped explicitly). An SSL or SASL_SSL listener needs a PEM
//!   keystore ([`BrokerConfig::tls`]); `ssl.client.auth` other than `none` needs a truststore; a
//!   SASL listener needs at least one mechanism and one user. `inter.broker.listener.name`, when
//!   set, names a listener. Files named by the TLS settings are read at startup, not here.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use keel_core::batch::TimestampType;

use crate::security::sasl::Mechanism;
use crate::security::tls::{Keystore, PemSource, TlsSettings};
use crate::security::{ClientAuth, SecurityProtocol, TlsVersion};
use keel_core::controller::config as topic;
use keel_core::controller::{TopicDefaults, UncleanElection};

/// `node.id`: this broker's id (INT, >= 0, required).
pub const NODE_ID: &str = "node.id";
/// `listeners`: where the broker listens, `NAME://HOST:PORT,...` (LIST).
pub const LISTENERS: &str = "listeners";
/// `advertised.listeners`: what clients are told to connect to (LIST; default derived from
/// `listeners`).
pub const ADVERTISED_LISTENERS: &str = "advertised.listeners";
/// `log.dirs`: the data directory (LIST of exactly one path in keel).
pub const LOG_DIRS: &str = "log.dirs";
/// `num.partitions`: partitions of an auto-created topic (INT, >= 1).
pub const NUM_PARTITIONS: &str = "num.partitions";
/// `default.replication.factor`: replicas of an auto-created topic (INT, 1..=32767).
pub const DEFAULT_REPLICATION_FACTOR: &str = "default.replication.factor";
/// `auto.create.topics.enable`: create a topic on its first Metadata or Produce (BOOLEAN).
pub const AUTO_CREATE_TOPICS_ENABLE: &str = "auto.create.topics.enable";
/// `min.insync.replicas`: the default of the topic setting (INT, >= 1).
pub const MIN_INSYNC_REPLICAS: &str = "min.insync.replicas";
/// `log.retention.ms`: time retention (LONG, >= -1; -1 keeps data forever).
pub const LOG_RETENTION_MS: &str = "log.retention.ms";
/// `log.retention.minutes`: used when `log.retention.ms` is not set (INT, >= -1).
pub const LOG_RETENTION_MINUTES: &str = "log.retention.minutes";
/// `log.retention.hours`: used when neither of the above is set (INT, >= -1).
pub const LOG_RETENTION_HOURS: &str = "log.retention.hours";
/// `log.retention.bytes`: size retention per partition (LONG, >= -1; -1 = no limit).
pub const LOG_RETENTION_BYTES: &str = "log.retention.bytes";
/// `log.segment.bytes`: roll a segment at this size (INT, >= 14).
pub const LOG_SEGMENT_BYTES: &str = "log.segment.bytes";
/// `log.roll.ms`: roll a segment at this age (LONG, >= 1).
pub const LOG_ROLL_MS: &str = "log.roll.ms";
/// `log.roll.hours`: used when `log.roll.ms` is not set (INT, >= 1).
pub const LOG_ROLL_HOURS: &str = "log.roll.hours";
/// `log.cleanup.policy`: the default `cleanup.policy` of topics (LIST of delete, compact).
pub const LOG_CLEANUP_POLICY: &str = "log.cleanup.policy";
/// `message.max.bytes`: the largest record batch accepted (INT, >= 0).
pub const MESSAGE_MAX_BYTES: &str = "message.max.bytes";
/// `log.message.timestamp.type`: `CreateTime` or `LogAppendTime` (STRING).
pub const LOG_MESSAGE_TIMESTAMP_TYPE: &str = "log.message.timestamp.type";
/// `socket.request.max.bytes`: the largest request frame accepted (INT, >= 1).
pub const SOCKET_REQUEST_MAX_BYTES: &str = "socket.request.max.bytes";
/// `queued.max.request.bytes`: the bytes of requests read but not yet answered, all
/// connections together, before no connection reads another (LONG; -1 or 0: unbounded, else
/// at least `socket.request.max.bytes`). Its default is 256 MiB, where Kafka's is unbounded
/// (-1, leaving the JVM heap as the bound): room for two requests of the default
/// `socket.request.max.bytes` (100 MiB) at once and far above what ordinary traffic (batches
/// of about 1 MB) holds, while a flood of large produces cannot take more of the machine.
pub const QUEUED_MAX_REQUEST_BYTES: &str = "queued.max.request.bytes";
/// `transaction.max.timeout.ms`: the longest `transaction.timeout.ms` a producer may ask (INT).
pub const TRANSACTION_MAX_TIMEOUT_MS: &str = "transaction.max.timeout.ms";
/// `transaction.state.log.num.partitions`: partitions of `__transaction_state` when it is
/// created (INT).
pub const TRANSACTION_STATE_LOG_NUM_PARTITIONS: &str = "transaction.state.log.num.partitions";
/// `transaction.state.log.replication.factor`: its replication factor, capped by the live
/// brokers (SHORT).
pub const TRANSACTION_STATE_LOG_REPLICATION_FACTOR: &str =
    "transaction.state.log.replication.factor";
/// `transactional.id.expiration.ms`: a transactional id idle this long is removed (INT).
pub const TRANSACTIONAL_ID_EXPIRATION_MS: &str = "transactional.id.expiration.ms";
/// `replica.lag.time.max.ms`: a follower this far behind leaves the ISR (LONG, >= 1).
pub const REPLICA_LAG_TIME_MAX_MS: &str = "replica.lag.time.max.ms";
/// `offsets.retention.minutes`: committed offsets of an empty group expire after (INT, >= 1).
pub const OFFSETS_RETENTION_MINUTES: &str = "offsets.retention.minutes";
/// `offsets.topic.num.partitions`: partitions of `__consumer_offsets` when it is created (INT).
pub const OFFSETS_TOPIC_NUM_PARTITIONS: &str = "offsets.topic.num.partitions";
/// `offsets.topic.replication.factor`: its replication factor, capped by the live brokers
/// (SHORT).
pub const OFFSETS_TOPIC_REPLICATION_FACTOR: &str = "offsets.topic.replication.factor";
/// `offsets.topic.segment.bytes`: `segment.bytes` of `__consumer_offsets` when it is created
/// (INT, >= 14).
pub const OFFSETS_TOPIC_SEGMENT_BYTES: &str = "offsets.topic.segment.bytes";
/// `group.initial.rebalance.delay.ms`: how long a new group's first rebalance waits (INT).
pub const GROUP_INITIAL_REBALANCE_DELAY_MS: &str = "group.initial.rebalance.delay.ms";
/// `log.cleaner.enable`: whether the log cleaner compacts `cleanup.policy=compact` topics
/// (BOOLEAN).
pub const LOG_CLEANER_ENABLE: &str = "log.cleaner.enable";
/// `log.cleaner.threads`: threads the log cleaner runs on (INT, >= 1).
pub const LOG_CLEANER_THREADS: &str = "log.cleaner.threads";
/// `log.cleaner.io.max.bytes.per.second`: the bound on the cleaner's reads and writes, all
/// threads together (DOUBLE, > 0; kept as whole bytes).
pub const LOG_CLEANER_IO_MAX_BYTES_PER_SECOND: &str = "log.cleaner.io.max.bytes.per.second";
/// `log.cleaner.backoff.ms`: how long a cleaner thread sleeps when no log is due (LONG, >= 0).
pub const LOG_CLEANER_BACKOFF_MS: &str = "log.cleaner.backoff.ms";
/// `log.retention.check.interval.ms`: how often retention runs (LONG, >= 1).
pub const LOG_RETENTION_CHECK_INTERVAL_MS: &str = "log.retention.check.interval.ms";
/// `controller.quorum.voters`: the metadata quorum, `ID@HOST:PORT,...` (LIST, optional).
pub const CONTROLLER_QUORUM_VOTERS: &str = "controller.quorum.voters";
/// `keel.quorum.learners`: the brokers that follow the metadata log without voting,
/// `ID@HOST:PORT,...` (LIST, optional; needs voters).
pub const KEEL_QUORUM_LEARNERS: &str = "keel.quorum.learners";
/// `broker.session.timeout.ms`: a broker without a heartbeat for this long is fenced (INT,
/// >= 1).
pub const BROKER_SESSION_TIMEOUT_MS: &str = "broker.session.timeout.ms";
/// `broker.heartbeat.interval.ms`: how often a broker heartbeats to the controller (INT, >= 1,
/// below `broker.session.timeout.ms`).
pub const BROKER_HEARTBEAT_INTERVAL_MS: &str = "broker.heartbeat.interval.ms";
/// `unclean.leader.election.enable`: a partition whose in-sync replicas are all down may elect
/// an out-of-sync replica, losing writes (BOOLEAN).
pub const UNCLEAN_LEADER_ELECTION_ENABLE: &str = "unclean.leader.election.enable";
/// `replica.fetch.max.bytes`: bytes a follower asks for per partition in one fetch (INT, >= 0;
/// the first batch comes whatever its size).
pub const REPLICA_FETCH_MAX_BYTES: &str = "replica.fetch.max.bytes";
/// `replica.fetch.backoff.ms`: how long a follower waits after a failed fetch (INT, >= 0).
pub const REPLICA_FETCH_BACKOFF_MS: &str = "replica.fetch.backoff.ms";
/// `keel.metrics.listener`: `HOST:PORT` of the Prometheus endpoint; empty disables it.
pub const KEEL_METRICS_LISTENER: &str = "keel.metrics.listener";
/// `auto.leader.rebalance.enable`: the controller moves leadership back to preferred replicas
/// (BOOLEAN).
pub const AUTO_LEADER_REBALANCE_ENABLE: &str = "auto.leader.rebalance.enable";
/// `leader.imbalance.check.interval.seconds`: how often the controller checks leader balance
/// (LONG, >= 1).
pub const LEADER_IMBALANCE_CHECK_INTERVAL_SECONDS: &str = "leader.imbalance.check.interval.seconds";
/// `leader.imbalance.per.broker.percentage`: the share of its preferred partitions a broker may
/// not lead before the controller rebalances (INT, 0 to 100).
pub const LEADER_IMBALANCE_PER_BROKER_PERCENTAGE: &str = "leader.imbalance.per.broker.percentage";
/// `keel.controlled.shutdown.max.wait.ms`: how long a stopping broker waits for the controller
/// to move its leaderships away before it stops anyway (LONG, >= 0; 0: no controlled shutdown).
pub const KEEL_CONTROLLED_SHUTDOWN_MAX_WAIT_MS: &str = "keel.controlled.shutdown.max.wait.ms";
/// `keel.log.flush.checkpoint.interval.ms`: how often recovery points are checkpointed
/// (LONG, >= 1).
pub const KEEL_LOG_FLUSH_CHECKPOINT_INTERVAL_MS: &str = "keel.log.flush.checkpoint.interval.ms";

/// `listener.security.protocol.map`: `NAME:PROTOCOL,...`, each listener's security protocol.
pub const LISTENER_SECURITY_PROTOCOL_MAP: &str = "listener.security.protocol.map";
/// `inter.broker.listener.name`: the listener brokers use for each other (STRING, optional).
pub const INTER_BROKER_LISTENER_NAME: &str = "inter.broker.listener.name";
/// `connection.failed.authentication.delay.ms`: how long a failed SASL authentication waits
/// before its answer and the close (INT, >= 0).
pub const CONNECTION_FAILED_AUTHENTICATION_DELAY_MS: &str =
    "connection.failed.authentication.delay.ms";
/// `connections.max.reauth.ms`: the lifetime of a SASL session, within which clients
/// re-authenticate (KIP-368; LONG, >= 0; 0: sessions never expire).
pub const CONNECTIONS_MAX_REAUTH_MS: &str = "connections.max.reauth.ms";
/// `connections.max.idle.ms`: a connection that completes no request for this long, with none
/// in flight, is closed (LONG, >= 0; 0: never).
pub const CONNECTIONS_MAX_IDLE_MS: &str = "connections.max.idle.ms";
/// `max.connections`: connections the broker holds at once, all listeners together (INT, >= 1).
pub const MAX_CONNECTIONS: &str = "max.connections";
/// `max.connections.per.ip`: connections one client address may hold at once (INT, >= 1).
pub const MAX_CONNECTIONS_PER_IP: &str = "max.connections.per.ip";
/// `sasl.enabled.mechanisms`: the SASL mechanisms SASL listeners offer (LIST).
pub const SASL_ENABLED_MECHANISMS: &str = "sasl.enabled.mechanisms";
/// `keel.sasl.users`: the users SASL authenticates, `NAME=PASSWORD,...` (LIST).
pub const KEEL_SASL_USERS: &str = "keel.sasl.users";
/// `sasl.mechanism.inter.broker.protocol`: the SASL mechanism brokers log in to each other
/// with on the peer transport, when the inter-broker listener uses SASL (STRING).
pub const SASL_MECHANISM_INTER_BROKER_PROTOCOL: &str = "sasl.mechanism.inter.broker.protocol";
/// `keel.inter.broker.sasl.username`: the user of `keel.sasl.users` a broker logs in to other
/// brokers as, when the inter-broker listener uses SASL (STRING).
pub const KEEL_INTER_BROKER_SASL_USERNAME: &str = "keel.inter.broker.sasl.username";
/// `ssl.keystore.type`: `PEM`, the only keystore type keel reads (STRING).
pub const SSL_KEYSTORE_TYPE: &str = "ssl.keystore.type";
/// `ssl.keystore.location`: a PEM file with the private key and the certificate chain.
pub const SSL_KEYSTORE_LOCATION: &str = "ssl.keystore.location";
/// `ssl.keystore.certificate.chain`: the certificate chain as PEM text.
pub const SSL_KEYSTORE_CERTIFICATE_CHAIN: &str = "ssl.keystore.certificate.chain";
/// `ssl.keystore.key`: the private key as PEM text.
pub const SSL_KEYSTORE_KEY: &str = "ssl.keystore.key";
/// `ssl.key.password`: the password of an encrypted key; keel reads unencrypted keys only.
pub const SSL_KEY_PASSWORD: &str = "ssl.key.password";
/// `ssl.truststore.type`: `PEM` (STRING).
pub const SSL_TRUSTSTORE_TYPE: &str = "ssl.truststore.type";
/// `ssl.truststore.location`: a PEM file of CA certificates for client certificates.
pub const SSL_TRUSTSTORE_LOCATION: &str = "ssl.truststore.location";
/// `ssl.truststore.certificates`: the same CA certificates as PEM text.
pub const SSL_TRUSTSTORE_CERTIFICATES: &str = "ssl.truststore.certificates";
/// `ssl.client.auth`: `none`, `requested` or `required` (STRING).
pub const SSL_CLIENT_AUTH: &str = "ssl.client.auth";
/// `ssl.enabled.protocols`: TLS versions offered, among `TLSv1.2` and `TLSv1.3` (LIST).
pub const SSL_ENABLED_PROTOCOLS: &str = "ssl.enabled.protocols";

/// `authorizer.class.name`: the authoriser; empty (the default): none, everything is allowed
/// (STRING: Kafka's StandardAuthorizer class name, or keel's short name `acl`).
pub const AUTHORIZER_CLASS_NAME: &str = "authorizer.class.name";
/// `super.users`: principals allowed everything, `User:alice;User:bob` (STRING).
pub const SUPER_USERS: &str = "super.users";
/// `allow.everyone.if.no.acl.found`: a resource without ACLs is open to all (BOOLEAN).
pub const ALLOW_EVERYONE_IF_NO_ACL_FOUND: &str = "allow.everyone.if.no.acl.found";
/// The values of `authorizer.class.name` that turn the authoriser on: Kafka's KRaft authoriser
/// class, and keel's short name for it.
pub const AUTHORIZER_NAMES: [&str; 2] = [
    "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
    "acl",
];

const MS_PER_MINUTE: i64 = 60 * 1000;
const MS_PER_HOUR: i64 = 60 * MS_PER_MINUTE;

/// A setting's type and the range its values must lie in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SettingType {
    /// A 32-bit integer in `min..=max` (Kafka's INT).
    Int {
        /// The smallest value accepted.
        min: i32,
        /// The largest value accepted.
        max: i32,
    },
    /// A 64-bit integer in `min..=max` (Kafka's LONG).
    Long {
        /// The smallest value accepted.
        min: i64,
        /// The largest value accepted.
        max: i64,
    },
    /// `true` or `false` (Kafka's BOOLEAN).
    Bool,
    /// A string (Kafka's STRING); the key's own check runs after.
    String,
    /// Comma-separated items (Kafka's LIST); a TOML array of strings is accepted too.
    List,
}

impl fmt::Display for SettingType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SettingType::Int { min, max } => write!(f, "an integer from {min} to {max}"),
            SettingType::Long { min, max } => write!(f, "an integer from {min} to {max}"),
            SettingType::Bool => f.write_str("true or false"),
            SettingType::String => f.write_str("a string"),
            SettingType::List => f.write_str("a comma-separated string or an array of strings"),
        }
    }
}

/// One setting keel knows: its Kafka name, type, default and meaning.
#[derive(Clone, Copy, Debug)]
pub struct Setting {
    /// The Kafka name.
    pub name: &'static str,
    /// Its type and range.
    pub setting_type: SettingType,
    /// The default as a string, or `None` when there is none (required, optional or derived
    /// from other settings: `doc` says which).
    pub default: Option<&'static str>,
    /// One line on what it does.
    pub doc: &'static str,
}

const INT_NON_NEGATIVE: SettingType = SettingType::Int {
    min: 0,
    max: i32::MAX,
};
const INT_POSITIVE: SettingType = SettingType::Int {
    min: 1,
    max: i32::MAX,
};
const INT_OR_FOREVER: SettingType = SettingType::Int {
    min: -1,
    max: i32::MAX,
};
const LONG_POSITIVE: SettingType = SettingType::Long {
    min: 1,
    max: i64::MAX,
};
const LONG_NON_NEGATIVE: SettingType = SettingType::Long {
    min: 0,
    max: i64::MAX,
};
const LONG_OR_FOREVER: SettingType = SettingType::Long {
    min: -1,
    max: i64::MAX,
};

/// Every setting keel accepts, in name order.
pub const SETTINGS: &[Setting] = &[
    Setting {
        name: ADVERTISED_LISTENERS,
        setting_type: SettingType::List,
        default: None,
        doc: "listeners clients are told to use; not set or empty: `listeners`, with an empty, \
              0.0.0.0 or :: host replaced by 127.0.0.1 (a port 0 is kept: the broker \
              advertises the port it bound)",
    },
    Setting {
        name: ALLOW_EVERYONE_IF_NO_ACL_FOUND,
        setting_type: SettingType::Bool,
        default: Some("false"),
        doc: "with the authoriser on, a resource that has no ACL at all is open to everyone",
    },
    Setting {
        name: AUTHORIZER_CLASS_NAME,
        setting_type: SettingType::String,
        default: Some(""),
        doc: "the authoriser: org.apache.kafka.metadata.authorizer.StandardAuthorizer or acl \
              (ACLs in the metadata log); empty: none, every request is allowed",
    },
    Setting {
        name: AUTO_CREATE_TOPICS_ENABLE,
        setting_type: SettingType::Bool,
        default: Some("true"),
        doc: "create a topic when a client first asks for it",
    },
    Setting {
        name: AUTO_LEADER_REBALANCE_ENABLE,
        setting_type: SettingType::Bool,
        default: Some("true"),
        doc: "the controller moves leadership back to each partition's preferred (first) \
              replica when a broker leads too few of the partitions it is preferred for",
    },
    Setting {
        name: BROKER_HEARTBEAT_INTERVAL_MS,
        setting_type: INT_POSITIVE,
        default: Some("2000"),
        doc: "how often a broker heartbeats to the controller; below broker.session.timeout.ms",
    },
    Setting {
        name: BROKER_SESSION_TIMEOUT_MS,
        setting_type: INT_POSITIVE,
        default: Some("9000"),
        doc: "the controller fences a broker that has not heartbeated for this long",
    },
    Setting {
        name: CONNECTION_FAILED_AUTHENTICATION_DELAY_MS,
        setting_type: INT_NON_NEGATIVE,
        default: Some("100"),
        doc: "how long a failed SASL authentication waits before its answer and the close",
    },
    Setting {
        name: CONNECTIONS_MAX_IDLE_MS,
        setting_type: LONG_NON_NEGATIVE,
        default: Some("600000"),
        doc: "a connection that completes no request for this long, with none in flight, is \
              closed (a quiet client, or one that sends a frame a byte at a time); 0: never",
    },
    Setting {
        name: CONNECTIONS_MAX_REAUTH_MS,
        setting_type: LONG_NON_NEGATIVE,
        default: Some("0"),
        doc: "the lifetime of a SASL session; clients re-authenticate within it on the same \
              connection (KIP-368); 0: sessions never expire",
    },
    Setting {
        name: CONTROLLER_QUORUM_VOTERS,
        setting_type: SettingType::List,
        default: Some(""),
        doc: "the metadata quorum's voters, ID@HOST:PORT,...; empty: none",
    },
    Setting {
        name: DEFAULT_REPLICATION_FACTOR,
        setting_type: SettingType::Int {
            min: 1,
            max: i16::MAX as i32,
        },
        default: Some("1"),
        doc: "replicas of an auto-created topic",
    },
    Setting {
        name: GROUP_INITIAL_REBALANCE_DELAY_MS,
        setting_type: INT_NON_NEGATIVE,
        default: Some("3000"),
        doc: "how long the first rebalance of an empty consumer group waits for more members",
    },
    Setting {
        name: INTER_BROKER_LISTENER_NAME,
        setting_type: SettingType::String,
        default: None,
        doc: "the listener whose security protocol the peer transport (quorum and replication, \
              on the quorum addresses) takes: TLS with certificates both ways for SSL and \
              SASL_SSL, a SASL login for SASL_PLAINTEXT and SASL_SSL (docs/security.md)",
    },
    Setting {
        name: KEEL_CONTROLLED_SHUTDOWN_MAX_WAIT_MS,
        setting_type: LONG_NON_NEGATIVE,
        default: Some("30000"),
        doc: "on SIGTERM, how long the broker waits for the controller to move every leadership \
              off it and take it out of every ISR (controlled shutdown) before it stops anyway; \
              0: stop at once, leaving its partitions to the session timeout",
    },
    Setting {
        name: KEEL_INTER_BROKER_SASL_USERNAME,
        setting_type: SettingType::String,
        default: None,
        doc: "the user of keel.sasl.users this broker logs in to other brokers as, on the peer \
              transport; needed when inter.broker.listener.name uses SASL",
    },
    Setting {
        name: KEEL_LOG_FLUSH_CHECKPOINT_INTERVAL_MS,
        setting_type: LONG_POSITIVE,
        default: Some("60000"),
        doc: "how often each partition's recovery point is checkpointed",
    },
    Setting {
        name: KEEL_METRICS_LISTENER,
        setting_type: SettingType::String,
        default: Some("127.0.0.1:9644"),
        doc: "HOST:PORT of the Prometheus endpoint (GET /metrics); empty disables it",
    },
    Setting {
        name: KEEL_QUORUM_LEARNERS,
        setting_type: SettingType::List,
        default: Some(""),
        doc: "brokers that follow the metadata log without voting, ID@HOST:PORT,...; ids \
              unique across voters and learners; needs controller.quorum.voters",
    },
    Setting {
        name: KEEL_SASL_USERS,
        setting_type: SettingType::List,
        default: Some(""),
        doc: "the users SASL listeners authenticate, NAME=PASSWORD,... (a password cannot \
              hold a comma); kept in memory as salted SCRAM credentials",
    },
    Setting {
        name: LEADER_IMBALANCE_CHECK_INTERVAL_SECONDS,
        setting_type: SettingType::Long {
            min: 1,
            max: i64::MAX / 1000,
        },
        default: Some("300"),
        doc: "how often the controller checks leader balance",
    },
    Setting {
        name: LEADER_IMBALANCE_PER_BROKER_PERCENTAGE,
        setting_type: SettingType::Int { min: 0, max: 100 },
        default: Some("10"),
        doc: "the share (percent) of the partitions a broker is preferred for that it may not \
              lead before the controller elects their preferred leaders",
    },
    Setting {
        name: LISTENER_SECURITY_PROTOCOL_MAP,
        setting_type: SettingType::List,
        default: Some(
            "PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL",
        ),
        doc: "each listener name's security protocol, NAME:PROTOCOL,... (PLAINTEXT, SSL, \
              SASL_PLAINTEXT or SASL_SSL)",
    },
    Setting {
        name: LISTENERS,
        setting_type: SettingType::List,
        default: Some("PLAINTEXT://127.0.0.1:9092"),
        doc: "where the broker listens, NAME://HOST:PORT,...; an empty host means every \
              interface",
    },
    Setting {
        name: LOG_CLEANER_BACKOFF_MS,
        setting_type: LONG_NON_NEGATIVE,
        default: Some("15000"),
        doc: "how long a log cleaner thread sleeps when no compacted log is due",
    },
    Setting {
        name: LOG_CLEANER_ENABLE,
        setting_type: SettingType::Bool,
        default: Some("true"),
        doc: "whether the log cleaner compacts topics with cleanup.policy compact",
    },
    Setting {
        name: LOG_CLEANER_IO_MAX_BYTES_PER_SECOND,
        setting_type: SettingType::String,
        default: Some("1.7976931348623157E308"),
        doc: "the bound on the log cleaner's disk reads and writes, in bytes per second (a \
              number above 0; Kafka's default, Double.MAX_VALUE, means no bound)",
    },
    Setting {
        name: LOG_CLEANER_THREADS,
        setting_type: INT_POSITIVE,
        default: Some("1"),
        doc: "threads the log cleaner runs on",
    },
    Setting {
        name: LOG_CLEANUP_POLICY,
        setting_type: SettingType::List,
        default: Some("delete"),
        doc: "the default cleanup.policy of topics: delete, compact or both",
    },
    Setting {
        name: LOG_DIRS,
        setting_type: SettingType::List,
        default: Some("./keel-data"),
        doc: "the data directory (keel keeps exactly one)",
    },
    Setting {
        name: LOG_MESSAGE_TIMESTAMP_TYPE,
        setting_type: SettingType::String,
        default: Some("CreateTime"),
        doc: "the default message.timestamp.type of topics: CreateTime or LogAppendTime",
    },
    Setting {
        name: LOG_RETENTION_BYTES,
        setting_type: LONG_OR_FOREVER,
        default: Some("-1"),
        doc: "delete old segments while a partition is larger; -1: no limit",
    },
    Setting {
        name: LOG_RETENTION_CHECK_INTERVAL_MS,
        setting_type: LONG_POSITIVE,
        default: Some("300000"),
        doc: "how often retention runs",
    },
    Setting {
        name: LOG_RETENTION_HOURS,
        setting_type: INT_OR_FOREVER,
        default: Some("168"),
        doc: "time retention when neither log.retention.ms nor log.retention.minutes is set",
    },
    Setting {
        name: LOG_RETENTION_MINUTES,
        setting_type: INT_OR_FOREVER,
        default: None,
        doc: "time retention when log.retention.ms is not set",
    },
    Setting {
        name: LOG_RETENTION_MS,
        setting_type: LONG_OR_FOREVER,
        default: None,
        doc: "time retention; -1 keeps data forever; wins over minutes and hours",
    },
    Setting {
        name: LOG_ROLL_HOURS,
        setting_type: INT_POSITIVE,
        default: Some("168"),
        doc: "roll a segment at this age when log.roll.ms is not set",
    },
    Setting {
        name: LOG_ROLL_MS,
        setting_type: LONG_POSITIVE,
        default: None,
        doc: "roll a segment at this age; wins over log.roll.hours",
    },
    Setting {
        name: LOG_SEGMENT_BYTES,
        setting_type: SettingType::Int {
            min: topic::SEGMENT_BYTES_MIN,
            max: i32::MAX,
        },
        default: Some("1073741824"),
        doc: "roll a segment at this size",
    },
    Setting {
        name: MAX_CONNECTIONS,
        setting_type: INT_POSITIVE,
        default: Some("2147483647"),
        doc: "connections the broker holds at once, all listeners together; at the limit it \
              accepts no more until one closes",
    },
    Setting {
        name: MAX_CONNECTIONS_PER_IP,
        setting_type: INT_POSITIVE,
        default: Some("2147483647"),
        doc: "connections one client address may hold at once; a further one is closed at once",
    },
    Setting {
        name: MESSAGE_MAX_BYTES,
        setting_type: INT_NON_NEGATIVE,
        default: Some("1048588"),
        doc: "the largest record batch the broker accepts",
    },
    Setting {
        name: MIN_INSYNC_REPLICAS,
        setting_type: INT_POSITIVE,
        default: Some("1"),
        doc: "acks=all needs this many in-sync replicas (topic default)",
    },
    Setting {
        name: NODE_ID,
        setting_type: INT_NON_NEGATIVE,
        default: None,
        doc: "this broker's id; required",
    },
    Setting {
        name: NUM_PARTITIONS,
        setting_type: INT_POSITIVE,
        default: Some("1"),
        doc: "partitions of an auto-created topic",
    },
    Setting {
        name: OFFSETS_RETENTION_MINUTES,
        setting_type: INT_POSITIVE,
        default: Some("10080"),
        doc: "committed offsets of an empty group expire after this long",
    },
    Setting {
        name: OFFSETS_TOPIC_NUM_PARTITIONS,
        setting_type: INT_POSITIVE,
        default: Some("50"),
        doc: "partitions of __consumer_offsets, when the first consumer group creates it",
    },
    Setting {
        name: OFFSETS_TOPIC_REPLICATION_FACTOR,
        setting_type: SettingType::Int {
            min: 1,
            max: i16::MAX as i32,
        },
        default: Some("3"),
        doc: "replication factor of __consumer_offsets (at most the live brokers at creation)",
    },
    Setting {
        name: OFFSETS_TOPIC_SEGMENT_BYTES,
        setting_type: SettingType::Int {
            min: keel_core::controller::config::SEGMENT_BYTES_MIN,
            max: i32::MAX,
        },
        default: Some("104857600"),
        doc: "segment.bytes of __consumer_offsets, when the first consumer group creates it",
    },
    Setting {
        name: QUEUED_MAX_REQUEST_BYTES,
        setting_type: LONG_OR_FOREVER,
        default: Some("268435456"),
        doc: "bytes of requests read but not yet answered, all connections together; at the \
              bound no connection reads its next request until answers free room (back-pressure); \
              at least socket.request.max.bytes; -1 or 0: unbounded",
    },
    Setting {
        name: REPLICA_FETCH_BACKOFF_MS,
        setting_type: INT_NON_NEGATIVE,
        default: Some("1000"),
        doc: "how long a follower waits after a failed fetch before the next",
    },
    Setting {
        name: REPLICA_FETCH_MAX_BYTES,
        setting_type: INT_NON_NEGATIVE,
        default: Some("1048576"),
        doc: "bytes a follower fetches per partition per request (the first batch comes \
              whatever its size)",
    },
    Setting {
        name: REPLICA_LAG_TIME_MAX_MS,
        setting_type: LONG_POSITIVE,
        default: Some("30000"),
        doc: "a follower that has not caught up for this long leaves the ISR",
    },
    Setting {
        name: SASL_ENABLED_MECHANISMS,
        setting_type: SettingType::List,
        default: Some("SCRAM-SHA-256,SCRAM-SHA-512"),
        doc: "the SASL mechanisms offered: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512",
    },
    Setting {
        name: SASL_MECHANISM_INTER_BROKER_PROTOCOL,
        setting_type: SettingType::String,
        default: Some("SCRAM-SHA-512"),
        doc: "the SASL mechanism brokers log in to each other with on the peer transport: \
              PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (Kafka's default, GSSAPI, is not served)",
    },
    Setting {
        name: SOCKET_REQUEST_MAX_BYTES,
        setting_type: INT_POSITIVE,
        default: Some("104857600"),
        doc: "the largest request frame the broker reads",
    },
    Setting {
        name: SSL_CLIENT_AUTH,
        setting_type: SettingType::String,
        default: Some("none"),
        doc: "client certificates on SSL listeners: none, requested or required",
    },
    Setting {
        name: SSL_ENABLED_PROTOCOLS,
        setting_type: SettingType::List,
        default: Some("TLSv1.2,TLSv1.3"),
        doc: "TLS versions offered: TLSv1.2, TLSv1.3 or both",
    },
    Setting {
        name: SSL_KEY_PASSWORD,
        setting_type: SettingType::String,
        default: None,
        doc: "refused when not empty: keel reads unencrypted private keys only",
    },
    Setting {
        name: SSL_KEYSTORE_CERTIFICATE_CHAIN,
        setting_type: SettingType::String,
        default: None,
        doc: "the server's certificate chain as PEM text (with ssl.keystore.key)",
    },
    Setting {
        name: SSL_KEYSTORE_KEY,
        setting_type: SettingType::String,
        default: None,
        doc: "the server's private key as PEM text (with ssl.keystore.certificate.chain)",
    },
    Setting {
        name: SSL_KEYSTORE_LOCATION,
        setting_type: SettingType::String,
        default: None,
        doc: "a PEM file holding the server's private key and certificate chain",
    },
    Setting {
        name: SSL_KEYSTORE_TYPE,
        setting_type: SettingType::String,
        default: Some("PEM"),
        doc: "PEM: the only keystore type keel reads",
    },
    Setting {
        name: SSL_TRUSTSTORE_CERTIFICATES,
        setting_type: SettingType::String,
        default: None,
        doc: "CA certificates client certificates must chain to, as PEM text",
    },
    Setting {
        name: SSL_TRUSTSTORE_LOCATION,
        setting_type: SettingType::String,
        default: None,
        doc: "a PEM file of CA certificates client certificates must chain to",
    },
    Setting {
        name: SSL_TRUSTSTORE_TYPE,
        setting_type: SettingType::String,
        default: Some("PEM"),
        doc: "PEM: the only truststore type keel reads",
    },
    Setting {
        name: SUPER_USERS,
        setting_type: SettingType::String,
        default: Some(""),
        doc: "principals the authoriser allows everything, separated by `;` (User:admin;User:ops)",
    },
    Setting {
        name: TRANSACTION_MAX_TIMEOUT_MS,
        setting_type: INT_POSITIVE,
        default: Some("900000"),
        doc: "the longest transaction.timeout.ms a transactional producer may ask",
    },
    Setting {
        name: TRANSACTION_STATE_LOG_NUM_PARTITIONS,
        setting_type: INT_POSITIVE,
        default: Some("50"),
        doc: "partitions of __transaction_state, when the first transactional producer creates it",
    },
    Setting {
        name: TRANSACTION_STATE_LOG_REPLICATION_FACTOR,
        setting_type: SettingType::Int {
            min: 1,
            max: i16::MAX as i32,
        },
        default: Some("3"),
        doc: "replication factor of __transaction_state (at most the live brokers at creation)",
    },
    Setting {
        name: TRANSACTIONAL_ID_EXPIRATION_MS,
        setting_type: INT_POSITIVE,
        default: Some("604800000"),
        doc: "a transactional id with no transaction for this long is removed",
    },
    Setting {
        name: UNCLEAN_LEADER_ELECTION_ENABLE,
        setting_type: SettingType::Bool,
        default: Some("false"),
        doc: "a partition whose in-sync replicas are all down may elect an out-of-sync \
              replica, losing the writes only the ISR had",
    },
];

/// The setting called `name`, if keel knows it.
pub fn setting(name: &str) -> Option<&'static Setting> {
    SETTINGS.iter().find(|s| s.name == name)
}

/// Why a configuration was refused. Each message names the key, the value as given and what
/// was expected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{}: not valid TOML: {message}", path.as_ref().map_or("config".into(), |p| p.display().to_string()))]
    Syntax {
        /// The file, when the text came from one.
        path: Option<PathBuf>,
        /// The TOML parser's message (it names the line and column).
        message: String,
    },
    /// A key keel does not know. Kafka would warn and go on; keel refuses.
    #[error("unknown setting {key:?}{}; keel refuses settings it does not know", suggestion.map_or(String::new(), |s| format!(" (did you mean {s:?}?)")))]
    UnknownKey {
        /// The key as given (flattened).
        key: String,
        /// The closest known key, if one is close.
        suggestion: Option<&'static str>,
    },
    /// A value of the wrong TOML type (a quoted number, a number for a string, ...).
    #[error("setting {key:?}: found {found}, expected {expected}")]
    WrongType {
        /// The key.
        key: String,
        /// What was found, with its type (`the string "3"`).
        found: String,
        /// What was expected.
        expected: String,
    },
    /// A value of the right type that the key refuses (out of range, bad format, conflict).
    #[error("setting {key:?}: invalid value {value}: expected {expected}")]
    InvalidValue {
        /// The key.
        key: String,
        /// The value as given, written as in TOML (strings quoted).
        value: String,
        /// What was expected.
        expected: String,
    },
    /// A required setting is missing.
    #[error(
        "setting {key:?} is required: set it in the config file or with --override {key}=VALUE"
    )]
    Missing {
        /// The key.
        key: &'static str,
    },
    /// The same setting is written twice in one file (say quoted and as dotted keys).
    #[error("setting {key:?} is given twice in the config file")]
    Duplicate {
        /// The key.
        key: String,
    },
    /// An override that is not `KEY=VALUE`.
    #[error("override {arg:?}: expected KEY=VALUE, e.g. log.retention.hours=24")]
    BadOverride {
        /// The argument as given.
        arg: String,
    },
}

/// One listener: `NAME://HOST:PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listener {
    /// The listener name, upper-cased (`PLAINTEXT`, `CONTROLLER`, ...).
    pub name: String,
    /// The host; empty means every interface. IPv6 addresses are kept without brackets.
    pub host: String,
    /// The port; 0 asks the OS for one (the broker then advertises the port it got).
    pub port: u16,
}

impl Listener {
    /// Parses `NAME://HOST:PORT` (`HOST` may be empty, or an IPv6 address in brackets).
    pub fn parse(text: &str) -> Result<Listener, String> {
        let text = text.trim();
        let (name, address) = text
            .split_once("://")
            .ok_or_else(|| format!("{text:?} is not NAME://HOST:PORT"))?;
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            return Err(format!(
                "listener name {name:?} must be letters, digits, '_' or '-'"
            ));
        }
        let name = name.to_ascii_uppercase();
        let HostPort { host, port } = HostPort::parse_allow_empty_host(address)?;
        Ok(Listener { name, host, port })
    }

    /// The address to bind, for `tokio::net::TcpListener::bind` (`0.0.0.0:PORT` for an empty
    /// host).
    pub fn bind_address(&self) -> String {
        if self.host.is_empty() {
            format!("0.0.0.0:{}", self.port)
        } else {
            host_port(&self.host, self.port)
        }
    }

    /// Whether the host is empty or the unspecified address (0.0.0.0 or ::), which clients
    /// cannot connect to.
    pub fn is_wildcard(&self) -> bool {
        matches!(self.host.as_str(), "" | "0.0.0.0" | "::")
    }
}

impl fmt::Display for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.name, host_port(&self.host, self.port))
    }
}

/// A `HOST:PORT` pair (the metrics listener, a quorum voter's address).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    /// The host name or address; IPv6 addresses are kept without brackets.
    pub host: String,
    /// The port.
    pub port: u16,
}

impl HostPort {
    /// Parses `HOST:PORT` with a non-empty host (IPv6 addresses in brackets).
    pub fn parse(text: &str) -> Result<HostPort, String> {
        let parsed = HostPort::parse_allow_empty_host(text)?;
        if parsed.host.is_empty() {
            return Err(format!("{:?} has no host: expected HOST:PORT", text.trim()));
        }
        Ok(parsed)
    }

    fn parse_allow_empty_host(text: &str) -> Result<HostPort, String> {
        let text = text.trim();
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("{text:?} has no port: expected HOST:PORT"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("port {port:?} in {text:?} is not a number from 0 to 65535"))?;
        let host = if let Some(inner) = host.strip_prefix('[') {
            let inner = inner
                .strip_suffix(']')
                .ok_or_else(|| format!("{text:?}: unclosed '[' around the host"))?;
            if inner.is_empty()
                || !inner
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
            {
                return Err(format!("{text:?}: {inner:?} is not an IPv6 address"));
            }
            inner
        } else {
            if host.contains(':') {
                return Err(format!(
                    "{text:?}: write an IPv6 host in brackets, e.g. [::1]:9092"
                ));
            }
            if !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
            {
                return Err(format!("{text:?}: {host:?} is not a host name or address"));
            }
            host
        };
        Ok(HostPort {
            host: host.to_string(),
            port,
        })
    }

    /// The address to bind or connect to, for tokio's `bind` and `connect` (which resolve
    /// names).
    pub fn address(&self) -> String {
        host_port(&self.host, self.port)
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&host_port(&self.host, self.port))
    }
}

/// `host:port`, with an IPv6 host in brackets.
fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// One member of the metadata quorum, a voter or a learner: `ID@HOST:PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuorumVoter {
    /// The member's `node.id`.
    pub id: i32,
    /// Where it listens for other brokers (quorum and replication traffic).
    pub address: HostPort,
}

impl QuorumVoter {
    /// Parses `ID@HOST:PORT` (Kafka's `controller.quorum.voters` item; `keel.quorum.learners`
    /// items too).
    pub fn parse(text: &str) -> Result<QuorumVoter, String> {
        let text = text.trim();
        let (id, address) = text
            .split_once('@')
            .ok_or_else(|| format!("{text:?} is not ID@HOST:PORT"))?;
        let id: i32 = id
            .parse()
            .ok()
            .filter(|id| *id >= 0)
            .ok_or_else(|| format!("voter id {id:?} in {text:?} is not a node id (>= 0)"))?;
        let address = HostPort::parse(address)?;
        if address.port == 0 {
            return Err(format!("{text:?}: a voter's port cannot be 0"));
        }
        Ok(QuorumVoter { id, address })
    }
}

impl fmt::Display for QuorumVoter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.id, self.address)
    }
}

/// The broker's typed configuration. Built only by [`BrokerConfig::parse`] and the functions
/// that call it, so every field holds a checked value; fields are public for reading (tests may
/// adjust them). Units are last in the names.
/// The log cleaner's broker settings (Kafka's `log.cleaner.*`, with its defaults).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CleanerSettings {
    /// `log.cleaner.enable`.
    pub enable: bool,
    /// `log.cleaner.threads`.
    pub threads: i32,
    /// `log.cleaner.io.max.bytes.per.second`, in whole bytes (`u64::MAX`: no bound).
    pub io_bytes_per_second_max: u64,
    /// `log.cleaner.backoff.ms`.
    pub backoff_ms: i64,
}

impl CleanerSettings {
    fn from_values(values: &Values) -> Result<CleanerSettings, ConfigError> {
        let io = values.string_or_default(LOG_CLEANER_IO_MAX_BYTES_PER_SECOND)?;
        let io: f64 = io.parse().ok().filter(|v: &f64| *v > 0.0).ok_or_else(|| {
            values.invalid(LOG_CLEANER_IO_MAX_BYTES_PER_SECOND, "a number above 0")
        })?;
        Ok(CleanerSettings {
            enable: values.bool_or_default(LOG_CLEANER_ENABLE)?,
            threads: values.int_or_default(LOG_CLEANER_THREADS)?,
            // `as` saturates: Double.MAX_VALUE becomes u64::MAX, "no bound".
            io_bytes_per_second_max: (io as u64).max(1),
            backoff_ms: values.long_or_default(LOG_CLEANER_BACKOFF_MS)?,
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerConfig {
    /// `node.id`.
    pub node_id: i32,
    /// `listeners`, in the order given (names unique).
    pub listeners: Vec<Listener>,
    /// `advertised.listeners`: each named among `listeners`, none with a wildcard host.
    pub advertised_listeners: Vec<Listener>,
    /// `log.dirs`: the one data directory.
    pub data_dir: PathBuf,
    /// `num.partitions`.
    pub num_partitions: i32,
    /// `default.replication.factor`.
    pub default_replication_factor: i16,
    /// `auto.create.topics.enable`.
    pub auto_create_topics: bool,
    /// `min.insync.replicas`.
    pub min_insync_replicas: i32,
    /// `log.retention.ms` (or minutes, or hours), resolved; -1: keep forever.
    pub retention_ms: i64,
    /// `log.retention.bytes`; -1: no limit.
    pub retention_bytes_max: i64,
    /// `log.segment.bytes`.
    pub segment_bytes_max: i32,
    /// `log.roll.ms` (or hours), resolved.
    pub segment_ms_max: i64,
    /// `log.cleanup.policy`, normalised (`delete`, `compact` or `compact,delete`).
    pub cleanup_policy: String,
    /// `message.max.bytes`.
    pub message_bytes_max: i32,
    /// `log.message.timestamp.type`.
    pub message_timestamp_type: TimestampType,
    /// `socket.request.max.bytes`.
    pub socket_request_bytes_max: i32,
    /// `queued.max.request.bytes`; `None`: unbounded (-1 or 0).
    pub queued_request_bytes_max: Option<u64>,
    /// `replica.lag.time.max.ms`.
    pub replica_lag_time_ms_max: i64,
    /// `offsets.retention.minutes`, in milliseconds.
    pub offsets_retention_ms: i64,
    /// `offsets.topic.num.partitions`.
    pub offsets_topic_partitions: i32,
    /// `offsets.topic.replication.factor`.
    pub offsets_topic_replication_factor: i16,
    /// `offsets.topic.segment.bytes`.
    pub offsets_topic_segment_bytes: i32,
    /// `transaction.state.log.num.partitions`, `transaction.state.log.replication.factor`,
    /// `transaction.max.timeout.ms`, `transactional.id.expiration.ms`.
    pub transactions: crate::broker::TxnSettings,
    /// `group.initial.rebalance.delay.ms`.
    pub group_initial_rebalance_delay_ms: i64,
    /// `log.retention.check.interval.ms`.
    pub retention_check_interval_ms: i64,
    /// `controller.quorum.voters` (ids unique); empty when not set.
    pub controller_quorum_voters: Vec<QuorumVoter>,
    /// `keel.quorum.learners` (ids unique across voters and learners); empty when not set,
    /// always empty without voters.
    pub quorum_learners: Vec<QuorumVoter>,
    /// `broker.session.timeout.ms`.
    pub broker_session_timeout_ms: i64,
    /// `broker.heartbeat.interval.ms`: below `broker_session_timeout_ms`.
    pub broker_heartbeat_interval_ms: i64,
    /// `unclean.leader.election.enable`.
    pub unclean_leader_election: bool,
    /// `log.cleaner.enable`, `log.cleaner.threads`, `log.cleaner.io.max.bytes.per.second`,
    /// `log.cleaner.backoff.ms`.
    pub cleaner: CleanerSettings,
    /// `replica.fetch.max.bytes`.
    pub replica_fetch_bytes_max: i32,
    /// `replica.fetch.backoff.ms`.
    pub replica_fetch_backoff_ms: i64,
    /// `keel.metrics.listener`; `None` when set empty (the endpoint is off).
    pub metrics_listener: Option<HostPort>,
    /// `keel.log.flush.checkpoint.interval.ms`.
    pub checkpoint_interval_ms: i64,
    /// `keel.controlled.shutdown.max.wait.ms`.
    pub controlled_shutdown_wait_ms_max: i64,
    /// `auto.leader.rebalance.enable`.
    pub auto_leader_rebalance: bool,
    /// `leader.imbalance.check.interval.seconds`.
    pub leader_imbalance_check_interval_s: i64,
    /// `leader.imbalance.per.broker.percentage`.
    pub leader_imbalance_per_broker_percentage: i32,
    /// `listener.security.protocol.map`: every name in `listeners` is a key.
    pub listener_security_protocols: BTreeMap<String, SecurityProtocol>,
    /// `inter.broker.listener.name`, upper case; one of `listeners` when set.
    pub inter_broker_listener_name: Option<String>,
    /// `connection.failed.authentication.delay.ms`.
    pub failed_authentication_delay_ms: i64,
    /// `connections.max.reauth.ms`; 0: SASL sessions never expire.
    pub connections_max_reauth_ms: i64,
    /// `connections.max.idle.ms`; 0: connections are never closed for idling.
    pub connections_max_idle_ms: i64,
    /// `max.connections`.
    pub max_connections: i32,
    /// `max.connections.per.ip`.
    pub max_connections_per_ip: i32,
    /// `sasl.enabled.mechanisms`, in the order given, without repeats; not empty when a
    /// listener uses SASL.
    pub sasl_enabled_mechanisms: Vec<Mechanism>,
    /// `keel.sasl.users`: names unique; not empty when a listener uses SASL.
    pub sasl_users: Vec<SaslUser>,
    /// How brokers log in to each other when the inter-broker listener uses SASL:
    /// `sasl.mechanism.inter.broker.protocol` and `keel.inter.broker.sasl.username` (one of
    /// `sasl_users`); `None` otherwise.
    pub inter_broker_sasl: Option<(Mechanism, String)>,
    /// The `ssl.*` settings, when a keystore is given; always there when a listener uses TLS.
    pub tls: Option<TlsSettings>,
    /// The authoriser (`authorizer.class.name`, `super.users`,
    /// `allow.everyone.if.no.acl.found`); `None` when `authorizer.class.name` is empty.
    pub authorizer: Option<keel_core::acl::AuthorizerConfig>,
    /// `super.users`, read with or without the authoriser: the peer transport accepts these
    /// principals as brokers too.
    pub super_users: std::collections::BTreeSet<String>,
}

/// One `keel.sasl.users` entry. Its password never appears in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct SaslUser {
    /// The user name (not empty, no `=` or `,`).
    pub name: String,
    /// The password (not empty, no `,`).
    pub password: String,
}

impl fmt::Debug for SaslUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SaslUser({:?}, password hidden)", self.name)
    }
}

/// A setting's value as given: from the TOML file (typed) or from an override (a string, typed
/// by the key's type).
#[derive(Clone, Debug)]
enum Raw {
    Toml(toml::Value),
    Text(String),
}

/// Splits `KEY=VALUE` at the first `=` (for `--override`). The key is trimmed and must not be
/// empty; the value is kept as given and may be empty (`keel.metrics.listener=` turns the
/// endpoint off). Whether the key is known is checked when the overrides are applied.
pub fn parse_override(arg: &str) -> Result<(String, String), ConfigError> {
    let bad = || ConfigError::BadOverride {
        arg: arg.to_string(),
    };
    let (key, value) = arg.split_once('=').ok_or_else(bad)?;
    let key = key.trim();
    if key.is_empty() {
        return Err(bad());
    }
    Ok((key.to_string(), value.to_string()))
}

impl BrokerConfig {
    /// Parses a TOML document with no overrides.
    pub fn from_toml_str(text: &str) -> Result<BrokerConfig, ConfigError> {
        BrokerConfig::parse(text, &[])
    }

    /// Reads the config file at `path` (if any; `None` means defaults only), applies
    /// `overrides` on top, and checks the result. The flags of `keel start` become overrides:
    /// `--node-id N` is `("node.id", "N")`, `--listeners L` is `("listeners", L)`,
    /// `--data-dir D` is `("log.dirs", D)`.
    pub fn load(
        path: Option<&Path>,
        overrides: &[(String, String)],
    ) -> Result<BrokerConfig, ConfigError> {
        let Some(path) = path else {
            return BrokerConfig::parse("", overrides);
        };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        BrokerConfig::parse(&text, overrides).map_err(|e| match e {
            ConfigError::Syntax {
                path: None,
                message,
            } => ConfigError::Syntax {
                path: Some(path.to_path_buf()),
                message,
            },
            other => other,
        })
    }

    /// Parses a TOML document, applies `overrides` (key, value) in order (a later one wins),
    /// and checks every setting.
    pub fn parse(text: &str, overrides: &[(String, String)]) -> Result<BrokerConfig, ConfigError> {
        let table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: None,
                    message: e.to_string().trim_end().to_string(),
                })?;
        let mut raw = BTreeMap::new();
        flatten("", table, &mut raw)?;
        for key in raw.keys() {
            known(key)?;
        }
        for (key, value) in overrides {
            known(key)?;
            raw.insert(key.clone(), Raw::Text(value.clone()));
        }
        BrokerConfig::build(&raw)
    }

    fn build(raw: &BTreeMap<String, Raw>) -> Result<BrokerConfig, ConfigError> {
        let values = Values { raw };
        let node_id = values
            .int(NODE_ID)?
            .ok_or(ConfigError::Missing { key: NODE_ID })?;

        let listeners = values.listeners(LISTENERS)?;
        if listeners.is_empty() {
            return Err(values.invalid(LISTENERS, "at least one NAME://HOST:PORT"));
        }
        for (i, l) in listeners.iter().enumerate() {
            for other in &listeners[..i] {
                if other.name == l.name {
                    return Err(values.invalid(LISTENERS, "each listener name at most once"));
                }
                if l.port != 0 && other.port == l.port {
                    return Err(values.invalid(LISTENERS, "each listener on a different port"));
                }
            }
        }
        // Not set, or set empty (an override can so restore the default): derived.
        let advertised = values.listeners(ADVERTISED_LISTENERS)?;
        let advertised_listeners = if advertised.is_empty() {
            listeners
                .iter()
                .map(|l| Listener {
                    host: if l.is_wildcard() {
                        "127.0.0.1".to_string()
                    } else {
                        l.host.clone()
                    },
                    ..l.clone()
                })
                .collect()
        } else {
            for (i, a) in advertised.iter().enumerate() {
                if a.is_wildcard() {
                    return Err(values.invalid(
                        ADVERTISED_LISTENERS,
                        "hosts clients can connect to (not empty, 0.0.0.0 or ::)",
                    ));
                }
                if a.port == 0 {
                    return Err(values
                        .invalid(ADVERTISED_LISTENERS, "ports clients can connect to (not 0)"));
                }
                if !listeners.iter().any(|l| l.name == a.name) {
                    return Err(values.invalid(
                        ADVERTISED_LISTENERS,
                        "listener names that `listeners` also has",
                    ));
                }
                if advertised[..i].iter().any(|b| b.name == a.name) {
                    return Err(
                        values.invalid(ADVERTISED_LISTENERS, "each listener name at most once")
                    );
                }
            }
            advertised
        };

        let dirs = values.list(LOG_DIRS)?.unwrap_or_default();
        let data_dir = match dirs.as_slice() {
            [one] => PathBuf::from(one),
            [] => return Err(values.invalid(LOG_DIRS, "one directory")),
            _ => {
                return Err(values.invalid(
                    LOG_DIRS,
                    "one directory (keel keeps a single data directory)",
                ))
            }
        };

        let retention_ms = match values.long(LOG_RETENTION_MS)? {
            Some(ms) => ms,
            None => match values.int(LOG_RETENTION_MINUTES)? {
                Some(minutes) if minutes < 0 => -1,
                Some(minutes) => i64::from(minutes) * MS_PER_MINUTE,
                None => match values.int_or_default(LOG_RETENTION_HOURS)? {
                    hours if hours < 0 => -1,
                    hours => i64::from(hours) * MS_PER_HOUR,
                },
            },
        };
        let segment_ms_max = match values.long(LOG_ROLL_MS)? {
            Some(ms) => ms,
            None => i64::from(values.int_or_default(LOG_ROLL_HOURS)?) * MS_PER_HOUR,
        };

        let cleanup_policy = {
            let items = values.list(LOG_CLEANUP_POLICY)?.unwrap_or_default();
            let joined = items.join(",");
            topic::TopicConfig::validate(topic::CLEANUP_POLICY, &joined)
                .map_err(|_| values.invalid(LOG_CLEANUP_POLICY, "delete, compact or both"))?;
            let compact = items.iter().any(|i| i == "compact");
            let delete = items.iter().any(|i| i == "delete");
            match (compact, delete) {
                (true, true) => "compact,delete",
                (true, false) => "compact",
                _ => "delete",
            }
            .to_string()
        };

        let message_timestamp_type = match values
            .string_or_default(LOG_MESSAGE_TIMESTAMP_TYPE)?
            .as_str()
        {
            "CreateTime" => TimestampType::CreateTime,
            "LogAppendTime" => TimestampType::LogAppendTime,
            _ => {
                return Err(
                    values.invalid(LOG_MESSAGE_TIMESTAMP_TYPE, "CreateTime or LogAppendTime")
                )
            }
        };

        let mut controller_quorum_voters: Vec<QuorumVoter> = Vec::new();
        for item in values.list(CONTROLLER_QUORUM_VOTERS)?.unwrap_or_default() {
            let voter = QuorumVoter::parse(&item).map_err(|why| {
                values.invalid(
                    CONTROLLER_QUORUM_VOTERS,
                    &format!("ID@HOST:PORT,... ({why})"),
                )
            })?;
            if controller_quorum_voters.iter().any(|v| v.id == voter.id) {
                return Err(values.invalid(
                    CONTROLLER_QUORUM_VOTERS,
                    &format!("each voter id at most once ({} repeats)", voter.id),
                ));
            }
            controller_quorum_voters.push(voter);
        }
        let mut quorum_learners: Vec<QuorumVoter> = Vec::new();
        for item in values.list(KEEL_QUORUM_LEARNERS)?.unwrap_or_default() {
            let learner = QuorumVoter::parse(&item).map_err(|why| {
                values.invalid(KEEL_QUORUM_LEARNERS, &format!("ID@HOST:PORT,... ({why})"))
            })?;
            if controller_quorum_voters
                .iter()
                .chain(&quorum_learners)
                .any(|m| m.id == learner.id)
            {
                return Err(values.invalid(
                    KEEL_QUORUM_LEARNERS,
                    &format!(
                        "ids unique across {CONTROLLER_QUORUM_VOTERS} and {KEEL_QUORUM_LEARNERS} \
                         ({} repeats)",
                        learner.id
                    ),
                ));
            }
            quorum_learners.push(learner);
        }
        if controller_quorum_voters.is_empty() && !quorum_learners.is_empty() {
            return Err(values.invalid(
                KEEL_QUORUM_LEARNERS,
                &format!(
                    "no learners while {CONTROLLER_QUORUM_VOTERS} is empty (learners follow \
                     the voters' log)"
                ),
            ));
        }
        if !controller_quorum_voters.is_empty()
            && !controller_quorum_voters
                .iter()
                .chain(&quorum_learners)
                .any(|m| m.id == node_id)
        {
            return Err(values.invalid(
                NODE_ID,
                &format!(
                    "an id listed in {CONTROLLER_QUORUM_VOTERS} or {KEEL_QUORUM_LEARNERS} \
                     (node {node_id} is in neither)"
                ),
            ));
        }

        let broker_session_timeout_ms =
            i64::from(values.int_or_default(BROKER_SESSION_TIMEOUT_MS)?);
        let broker_heartbeat_interval_ms =
            i64::from(values.int_or_default(BROKER_HEARTBEAT_INTERVAL_MS)?);
        if broker_heartbeat_interval_ms >= broker_session_timeout_ms {
            return Err(values.invalid(
                BROKER_HEARTBEAT_INTERVAL_MS,
                &format!(
                    "less than {BROKER_SESSION_TIMEOUT_MS} ({broker_session_timeout_ms}), or \
                     every session would expire between two heartbeats"
                ),
            ));
        }

        let metrics_listener = {
            let text = values.string_or_default(KEEL_METRICS_LISTENER)?;
            if text.trim().is_empty() {
                None
            } else {
                Some(HostPort::parse(&text).map_err(|why| {
                    values.invalid(
                        KEEL_METRICS_LISTENER,
                        &format!("HOST:PORT, or empty to turn the endpoint off ({why})"),
                    )
                })?)
            }
        };

        let security = Security::build(&values, &listeners)?;

        Ok(BrokerConfig {
            node_id,
            listeners,
            advertised_listeners,
            data_dir,
            num_partitions: values.int_or_default(NUM_PARTITIONS)?,
            // The range check (1..=i16::MAX) makes the conversion exact.
            default_replication_factor: values.int_or_default(DEFAULT_REPLICATION_FACTOR)? as i16,
            auto_create_topics: values.bool_or_default(AUTO_CREATE_TOPICS_ENABLE)?,
            min_insync_replicas: values.int_or_default(MIN_INSYNC_REPLICAS)?,
            retention_ms,
            retention_bytes_max: values.long_or_default(LOG_RETENTION_BYTES)?,
            segment_bytes_max: values.int_or_default(LOG_SEGMENT_BYTES)?,
            segment_ms_max,
            cleanup_policy,
            message_bytes_max: values.int_or_default(MESSAGE_MAX_BYTES)?,
            message_timestamp_type,
            socket_request_bytes_max: values.int_or_default(SOCKET_REQUEST_MAX_BYTES)?,
            queued_request_bytes_max: queued_request_bytes_max(&values)?,
            replica_lag_time_ms_max: values.long_or_default(REPLICA_LAG_TIME_MAX_MS)?,
            offsets_retention_ms: i64::from(values.int_or_default(OFFSETS_RETENTION_MINUTES)?)
                * MS_PER_MINUTE,
            offsets_topic_partitions: values.int_or_default(OFFSETS_TOPIC_NUM_PARTITIONS)?,
            // The range check (1..=i16::MAX) makes the conversion exact.
            offsets_topic_replication_factor: values
                .int_or_default(OFFSETS_TOPIC_REPLICATION_FACTOR)?
                as i16,
            offsets_topic_segment_bytes: values.int_or_default(OFFSETS_TOPIC_SEGMENT_BYTES)?,
            transactions: crate::broker::TxnSettings {
                partitions: values.int_or_default(TRANSACTION_STATE_LOG_NUM_PARTITIONS)?,
                // The range check (1..=i16::MAX) makes the conversion exact.
                replication_factor: values
                    .int_or_default(TRANSACTION_STATE_LOG_REPLICATION_FACTOR)?
                    as i16,
                config: keel_core::txn::TxnConfig {
                    transaction_max_timeout_ms: values
                        .int_or_default(TRANSACTION_MAX_TIMEOUT_MS)?,
                    transactional_id_expiration_ms: i64::from(
                        values.int_or_default(TRANSACTIONAL_ID_EXPIRATION_MS)?,
                    ),
                },
            },
            group_initial_rebalance_delay_ms: i64::from(
                values.int_or_default(GROUP_INITIAL_REBALANCE_DELAY_MS)?,
            ),
            retention_check_interval_ms: values.long_or_default(LOG_RETENTION_CHECK_INTERVAL_MS)?,
            controller_quorum_voters,
            quorum_learners,
            broker_session_timeout_ms,
            broker_heartbeat_interval_ms,
            unclean_leader_election: values.bool_or_default(UNCLEAN_LEADER_ELECTION_ENABLE)?,
            cleaner: CleanerSettings::from_values(&values)?,
            replica_fetch_bytes_max: values.int_or_default(REPLICA_FETCH_MAX_BYTES)?,
            replica_fetch_backoff_ms: i64::from(values.int_or_default(REPLICA_FETCH_BACKOFF_MS)?),
            metrics_listener,
            checkpoint_interval_ms: values
                .long_or_default(KEEL_LOG_FLUSH_CHECKPOINT_INTERVAL_MS)?,
            controlled_shutdown_wait_ms_max: values
                .long_or_default(KEEL_CONTROLLED_SHUTDOWN_MAX_WAIT_MS)?,
            auto_leader_rebalance: values.bool_or_default(AUTO_LEADER_REBALANCE_ENABLE)?,
            leader_imbalance_check_interval_s: values
                .long_or_default(LEADER_IMBALANCE_CHECK_INTERVAL_SECONDS)?,
            leader_imbalance_per_broker_percentage: values
                .int_or_default(LEADER_IMBALANCE_PER_BROKER_PERCENTAGE)?,
            listener_security_protocols: security.protocols,
            inter_broker_listener_name: security.inter_broker_listener_name,
            failed_authentication_delay_ms: i64::from(
                values.int_or_default(CONNECTION_FAILED_AUTHENTICATION_DELAY_MS)?,
            ),
            connections_max_reauth_ms: values.long_or_default(CONNECTIONS_MAX_REAUTH_MS)?,
            connections_max_idle_ms: values.long_or_default(CONNECTIONS_MAX_IDLE_MS)?,
            max_connections: values.int_or_default(MAX_CONNECTIONS)?,
            max_connections_per_ip: values.int_or_default(MAX_CONNECTIONS_PER_IP)?,
            sasl_enabled_mechanisms: security.mechanisms,
            sasl_users: security.users,
            inter_broker_sasl: security.inter_broker_sasl,
            tls: security.tls,
            authorizer: authorizer(&values)?,
            super_users: super_users(&values)?,
        })
    }

    /// The security protocol of the listener called `name` (upper case); `None` only for a
    /// name that is not a listener.
    pub fn listener_protocol(&self, name: &str) -> Option<SecurityProtocol> {
        self.listeners
            .iter()
            .any(|l| l.name == name)
            .then(|| self.listener_security_protocols.get(name).copied())
            .flatten()
    }

    /// The topic-level settings every topic inherits from this broker, keyed by their topic
    /// names (`retention.ms`, `segment.bytes`, ...; see `keel_core::controller::config`). A
    /// topic's own settings override these; `TopicConfig::from_map` accepts this map as is.
    pub fn topic_defaults(&self) -> BTreeMap<String, String> {
        let timestamp_type = match self.message_timestamp_type {
            TimestampType::CreateTime => "CreateTime",
            TimestampType::LogAppendTime => "LogAppendTime",
        };
        [
            (topic::RETENTION_MS, self.retention_ms.to_string()),
            (topic::RETENTION_BYTES, self.retention_bytes_max.to_string()),
            (topic::SEGMENT_BYTES, self.segment_bytes_max.to_string()),
            (topic::SEGMENT_MS, self.segment_ms_max.to_string()),
            (topic::MAX_MESSAGE_BYTES, self.message_bytes_max.to_string()),
            (
                topic::MIN_INSYNC_REPLICAS,
                self.min_insync_replicas.to_string(),
            ),
            (topic::MESSAGE_TIMESTAMP_TYPE, timestamp_type.to_string()),
            (topic::CLEANUP_POLICY, self.cleanup_policy.clone()),
            (
                topic::UNCLEAN_LEADER_ELECTION_ENABLE,
                self.unclean_leader_election.to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        // The cleaner's topic settings have no broker setting in keel yet (Kafka's
        // `log.cleaner.min.cleanable.ratio`, ...): Kafka's defaults.
        .chain(
            [
                topic::MIN_CLEANABLE_DIRTY_RATIO,
                topic::DELETE_RETENTION_MS,
                topic::MIN_COMPACTION_LAG_MS,
                topic::MAX_COMPACTION_LAG_MS,
            ]
            .into_iter()
            .map(|k| {
                let v = keel_core::controller::config::TopicConfig::default_value(k)
                    .expect("a topic key keel knows");
                (k.to_string(), v)
            }),
        )
        .collect()
    }

    /// `num.partitions` and `default.replication.factor`, as the controller takes them.
    pub fn topic_creation_defaults(&self) -> TopicDefaults {
        TopicDefaults {
            partitions: self.num_partitions,
            replication_factor: self.default_replication_factor,
        }
    }

    /// The advertised listener called `name` (upper case), if there is one.
    pub fn advertised_listener(&self, name: &str) -> Option<&Listener> {
        self.advertised_listeners.iter().find(|l| l.name == name)
    }

    /// This node's own entry among `controller.quorum.voters` and `keel.quorum.learners`: the
    /// address it listens on for other brokers. `None` without voters (a broker alone); never
    /// `None` with them (parsing checks that `node.id` is listed).
    pub fn peer_address(&self) -> Option<&HostPort> {
        self.controller_quorum_voters
            .iter()
            .chain(&self.quorum_learners)
            .find(|m| m.id == self.node_id)
            .map(|m| &m.address)
    }

    /// `unclean.leader.election.enable` as the controller takes it.
    pub fn unclean_election(&self) -> UncleanElection {
        if self.unclean_leader_election {
            UncleanElection::Enabled
        } else {
            UncleanElection::Disabled
        }
    }
}

/// The authoriser's settings: `None` without `authorizer.class.name`; each `super.users`
/// entry must be `Type:name`.
/// `super.users`, checked: `Type:name` each.
/// `queued.max.request.bytes`: `None` for unbounded (-1 or 0, Kafka's way of saying it); a
/// bound below `socket.request.max.bytes` is refused, as Kafka refuses it, since a frame the
/// bound could never admit would wait forever.
fn queued_request_bytes_max(values: &Values<'_>) -> Result<Option<u64>, ConfigError> {
    let bound = values.long_or_default(QUEUED_MAX_REQUEST_BYTES)?;
    if bound <= 0 {
        return Ok(None);
    }
    let frame_max = values.int_or_default(SOCKET_REQUEST_MAX_BYTES)?;
    if bound < i64::from(frame_max) {
        return Err(values.invalid(
            QUEUED_MAX_REQUEST_BYTES,
            &format!("-1, or at least socket.request.max.bytes ({frame_max})"),
        ));
    }
    // Positive, so exact.
    Ok(Some(bound as u64))
}

fn super_users(values: &Values<'_>) -> Result<std::collections::BTreeSet<String>, ConfigError> {
    let super_users: std::collections::BTreeSet<String> = values
        .string_or_default(SUPER_USERS)?
        .split(';')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect();
    if let Some(bad) = super_users
        .iter()
        .find(|u| u.split_once(':').is_none_or(|(kind, _)| kind.is_empty()))
    {
        return Err(values.invalid(
            SUPER_USERS,
            &format!("principals as Type:name separated by `;` (`{bad}` has no type)"),
        ));
    }
    Ok(super_users)
}

fn authorizer(
    values: &Values<'_>,
) -> Result<Option<keel_core::acl::AuthorizerConfig>, ConfigError> {
    let name = values.string_or_default(AUTHORIZER_CLASS_NAME)?;
    let super_users = super_users(values)?;
    if name.is_empty() {
        return Ok(None);
    }
    if !AUTHORIZER_NAMES.contains(&name.as_str()) {
        return Err(values.invalid(
            AUTHORIZER_CLASS_NAME,
            &format!("empty, or one of {}", AUTHORIZER_NAMES.join(", ")),
        ));
    }
    Ok(Some(keel_core::acl::AuthorizerConfig {
        super_users,
        allow_if_no_acl: values.bool_or_default(ALLOW_EVERYONE_IF_NO_ACL_FOUND)?,
    }))
}

/// The security settings, checked together.
struct Security {
    protocols: BTreeMap<String, SecurityProtocol>,
    inter_broker_listener_name: Option<String>,
    mechanisms: Vec<Mechanism>,
    users: Vec<SaslUser>,
    inter_broker_sasl: Option<(Mechanism, String)>,
    tls: Option<TlsSettings>,
}

impl Security {
    fn build(values: &Values<'_>, listeners: &[Listener]) -> Result<Security, ConfigError> {
        let mut protocols = BTreeMap::new();
        for item in values
            .list(LISTENER_SECURITY_PROTOCOL_MAP)?
            .unwrap_or_default()
        {
            let bad = |why: &str| {
                values.invalid(
                    LISTENER_SECURITY_PROTOCOL_MAP,
                    &format!("NAME:PROTOCOL,... with PROTOCOL one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL ({why})"),
                )
            };
            let (name, protocol) = item
                .split_once(':')
                .ok_or_else(|| bad(&format!("{item:?} has no ':'")))?;
            let name = name.trim().to_ascii_uppercase();
            if name.is_empty() {
                return Err(bad(&format!("{item:?} has no name")));
            }
            let protocol = SecurityProtocol::from_name(protocol.trim())
                .ok_or_else(|| bad(&format!("{:?} is not a protocol", protocol.trim())))?;
            if protocols.insert(name.clone(), protocol).is_some() {
                return Err(bad(&format!("{name} is mapped twice")));
            }
        }
        for l in listeners {
            if !protocols.contains_key(&l.name) {
                return Err(values.invalid(
                    LISTENERS,
                    &format!(
                        "listener names mapped in {LISTENER_SECURITY_PROTOCOL_MAP} ({} is not: \
                         add {}:PLAINTEXT, or SSL, SASL_PLAINTEXT, SASL_SSL)",
                        l.name, l.name
                    ),
                ));
            }
        }
        let protocol_of = |l: &Listener| protocols[&l.name];

        let inter_broker_listener_name = match values.string(INTER_BROKER_LISTENER_NAME)? {
            None => None,
            Some(name) if name.is_empty() => None,
            Some(name) => {
                let name = name.to_ascii_uppercase();
                if !listeners.iter().any(|l| l.name == name) {
                    return Err(values
                        .invalid(INTER_BROKER_LISTENER_NAME, "the name of one of `listeners`"));
                }
                Some(name)
            }
        };

        let mut mechanisms = Vec::new();
        for item in values.list(SASL_ENABLED_MECHANISMS)?.unwrap_or_default() {
            let m = Mechanism::from_name(&item.to_ascii_uppercase()).ok_or_else(|| {
                values.invalid(
                    SASL_ENABLED_MECHANISMS,
                    &format!(
                        "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 ({item:?} is not one keel serves)"
                    ),
                )
            })?;
            if !mechanisms.contains(&m) {
                mechanisms.push(m);
            }
        }
        let mut users: Vec<SaslUser> = Vec::new();
        for item in values.list(KEEL_SASL_USERS)?.unwrap_or_default() {
            // Never echo the value: it holds passwords.
            let bad = |why: String| ConfigError::InvalidValue {
                key: KEEL_SASL_USERS.to_string(),
                value: "(hidden: it holds passwords)".to_string(),
                expected: format!("NAME=PASSWORD,... ({why})"),
            };
            let (name, password) = item
                .split_once('=')
                .ok_or_else(|| bad("an entry has no '='".to_string()))?;
            let name = name.trim();
            if name.is_empty() || password.is_empty() {
                return Err(bad("an entry has an empty name or password".to_string()));
            }
            if users.iter().any(|u| u.name == name) {
                return Err(bad(format!("user {name:?} is given twice")));
            }
            users.push(SaslUser {
                name: name.to_string(),
                password: password.to_string(),
            });
        }
        if let Some(l) = listeners.iter().find(|l| protocol_of(l).uses_sasl()) {
            if mechanisms.is_empty() {
                return Err(values.invalid(
                    SASL_ENABLED_MECHANISMS,
                    &format!("at least one mechanism: listener {} uses SASL", l.name),
                ));
            }
            if users.is_empty() {
                return Err(ConfigError::InvalidValue {
                    key: KEEL_SASL_USERS.to_string(),
                    value: "\"\"".to_string(),
                    expected: format!(
                        "at least one NAME=PASSWORD: listener {} uses SASL and nobody could \
                         log in (keel has no default password)",
                        l.name
                    ),
                });
            }
        }

        let tls = Security::tls(values)?;
        if let Some(l) = listeners.iter().find(|l| protocol_of(l).uses_tls()) {
            if tls.is_none() {
                return Err(values.invalid(
                    SSL_KEYSTORE_LOCATION,
                    &format!(
                        "a PEM keystore: listener {} uses TLS (set {SSL_KEYSTORE_LOCATION}, or \
                         {SSL_KEYSTORE_CERTIFICATE_CHAIN} and {SSL_KEYSTORE_KEY})",
                        l.name
                    ),
                ));
            }
        }
        let inter_broker = inter_broker_listener_name
            .as_ref()
            .map(|name| (name.as_str(), protocols[name]));
        if let Some((name, protocol)) = inter_broker {
            let has_truststore = tls.as_ref().is_some_and(|t| t.truststore.is_some());
            if protocol.uses_tls() && !has_truststore {
                return Err(values.invalid(
                    SSL_TRUSTSTORE_LOCATION,
                    &format!(
                        "a PEM truststore: the inter-broker listener {name} uses TLS, and \
                         brokers verify each other's certificates against it"
                    ),
                ));
            }
        }
        let inter_broker_sasl = match inter_broker {
            Some((name, protocol)) if protocol.uses_sasl() => {
                let mechanism = values.string_or_default(SASL_MECHANISM_INTER_BROKER_PROTOCOL)?;
                let mechanism =
                    Mechanism::from_name(&mechanism.to_ascii_uppercase()).ok_or_else(|| {
                        values.invalid(
                            SASL_MECHANISM_INTER_BROKER_PROTOCOL,
                            "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
                        )
                    })?;
                let user = values
                    .string(KEEL_INTER_BROKER_SASL_USERNAME)?
                    .unwrap_or_default();
                if !users.iter().any(|u| u.name == user) {
                    return Err(values.invalid(
                        KEEL_INTER_BROKER_SASL_USERNAME,
                        &format!(
                            "the name of one of {KEEL_SASL_USERS}: the inter-broker listener \
                             {name} uses SASL, and brokers log in to each other as that user"
                        ),
                    ));
                }
                Some((mechanism, user))
            }
            _ => None,
        };
        Ok(Security {
            protocols,
            inter_broker_listener_name,
            mechanisms,
            users,
            inter_broker_sasl,
            tls,
        })
    }

    /// The `ssl.*` settings; `None` when no keystore is given.
    fn tls(values: &Values<'_>) -> Result<Option<TlsSettings>, ConfigError> {
        for key in [SSL_KEYSTORE_TYPE, SSL_TRUSTSTORE_TYPE] {
            if !values.string_or_default(key)?.eq_ignore_ascii_case("PEM") {
                return Err(values.invalid(
                    key,
                    "PEM (keel reads PEM only; convert a JKS or PKCS12 store with keytool or \
                     openssl)",
                ));
            }
        }
        if values
            .string(SSL_KEY_PASSWORD)?
            .is_some_and(|p| !p.is_empty())
        {
            return Err(ConfigError::InvalidValue {
                key: SSL_KEY_PASSWORD.to_string(),
                value: "(hidden)".to_string(),
                expected: "not set: keel reads unencrypted private keys only".to_string(),
            });
        }
        let client_auth = ClientAuth::from_name(&values.string_or_default(SSL_CLIENT_AUTH)?)
            .ok_or_else(|| values.invalid(SSL_CLIENT_AUTH, "none, requested or required"))?;
        let mut versions = Vec::new();
        for item in values.list(SSL_ENABLED_PROTOCOLS)?.unwrap_or_default() {
            let v = TlsVersion::from_name(&item).ok_or_else(|| {
                values.invalid(
                    SSL_ENABLED_PROTOCOLS,
                    &format!("TLSv1.2 and/or TLSv1.3 ({item:?} is not offered by keel)"),
                )
            })?;
            if !versions.contains(&v) {
                versions.push(v);
            }
        }
        if versions.is_empty() {
            return Err(values.invalid(SSL_ENABLED_PROTOCOLS, "TLSv1.2 and/or TLSv1.3"));
        }
        let nonempty = |key| -> Result<Option<String>, ConfigError> {
            Ok(values.string(key)?.filter(|v| !v.is_empty()))
        };
        let location = nonempty(SSL_KEYSTORE_LOCATION)?;
        let chain = nonempty(SSL_KEYSTORE_CERTIFICATE_CHAIN)?;
        let key = nonempty(SSL_KEYSTORE_KEY)?;
        let keystore = match (location, chain, key) {
            (None, None, None) => None,
            (Some(path), None, None) => Some(Keystore::File(PathBuf::from(path))),
            (None, Some(chain), Some(key)) => Some(Keystore::Inline {
                chain: PemSource::Inline(chain),
                key: PemSource::Inline(key),
            }),
            (Some(_), _, _) => {
                return Err(values.invalid(
                    SSL_KEYSTORE_LOCATION,
                    &format!(
                        "either {SSL_KEYSTORE_LOCATION} or {SSL_KEYSTORE_CERTIFICATE_CHAIN} with \
                         {SSL_KEYSTORE_KEY}, not both"
                    ),
                ))
            }
            (None, _, _) => {
                return Err(ConfigError::InvalidValue {
                    key: SSL_KEYSTORE_KEY.to_string(),
                    value: "(hidden)".to_string(),
                    expected: format!(
                        "{SSL_KEYSTORE_CERTIFICATE_CHAIN} and {SSL_KEYSTORE_KEY} together"
                    ),
                })
            }
        };
        let truststore = match (
            nonempty(SSL_TRUSTSTORE_LOCATION)?,
            nonempty(SSL_TRUSTSTORE_CERTIFICATES)?,
        ) {
            (None, None) => None,
            (Some(path), None) => Some(PemSource::File(PathBuf::from(path))),
            (None, Some(text)) => Some(PemSource::Inline(text)),
            (Some(_), Some(_)) => {
                return Err(values.invalid(
                    SSL_TRUSTSTORE_LOCATION,
                    &format!(
                    "either {SSL_TRUSTSTORE_LOCATION} or {SSL_TRUSTSTORE_CERTIFICATES}, not both"
                ),
                ))
            }
        };
        if client_auth != ClientAuth::None && truststore.is_none() {
            return Err(values.invalid(
                SSL_CLIENT_AUTH,
                &format!(
                    "none, unless a truststore ({SSL_TRUSTSTORE_LOCATION} or \
                     {SSL_TRUSTSTORE_CERTIFICATES}) says which client certificates to trust"
                ),
            ));
        }
        Ok(keystore.map(|keystore| TlsSettings {
            keystore,
            truststore,
            client_auth,
            versions,
        }))
    }
}

/// Flattens a TOML table into `out`, joining nested table keys with `.`.
fn flatten(
    prefix: &str,
    table: toml::Table,
    out: &mut BTreeMap<String, Raw>,
) -> Result<(), ConfigError> {
    for (key, value) in table {
        let name = if prefix.is_empty() {
            key
        } else {
            format!("{prefix}.{key}")
        };
        match value {
            toml::Value::Table(inner) => flatten(&name, inner, out)?,
            value => {
                if out.contains_key(&name) {
                    return Err(ConfigError::Duplicate { key: name });
                }
                out.insert(name, Raw::Toml(value));
            }
        }
    }
    Ok(())
}

/// Fails with [`ConfigError::UnknownKey`] unless `key` is a setting.
fn known(key: &str) -> Result<&'static Setting, ConfigError> {
    setting(key).ok_or_else(|| ConfigError::UnknownKey {
        key: key.to_string(),
        suggestion: closest(key),
    })
}

/// Old or mistaken names and the setting meant.
const RENAMES: [(&str, &str); 4] = [
    ("broker.id", NODE_ID),
    ("log.dir", LOG_DIRS),
    ("data.dir", LOG_DIRS),
    ("metrics.listener", KEEL_METRICS_LISTENER),
];

/// The known setting closest to `key` by edit distance, if it is close enough to be a typo.
fn closest(key: &str) -> Option<&'static str> {
    if let Some((_, to)) = RENAMES.iter().find(|(from, _)| *from == key) {
        return Some(to);
    }
    let normalised = key.replace(['_', '-'], ".").to_ascii_lowercase();
    let (best, distance) = SETTINGS
        .iter()
        .map(|s| (s.name, edit_distance(&normalised, s.name)))
        .min_by_key(|(_, d)| *d)?;
    let limit = (key.chars().count() / 3).max(2);
    (distance <= limit).then_some(best)
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    let mut current = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        current[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitute.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

/// The raw values of one parse, read by key with the key's type.
///
/// Its readers are called only with keys from [`SETTINGS`], each with the type and default the
/// table gives it; `BrokerConfig::build` reads every key on every parse, so the test that parses
/// the defaults (`every_default_parses_as_its_type`) reaches each `unreachable!` below that a
/// mismatch between the table and `build` could reach. Input never does.
struct Values<'a> {
    raw: &'a BTreeMap<String, Raw>,
}

impl Values<'_> {
    /// The value of `key` as given, for messages.
    fn shown(&self, key: &str) -> String {
        match self.raw.get(key) {
            Some(Raw::Text(s)) => format!("{s:?}"),
            Some(Raw::Toml(v)) => toml_text(v),
            None => format!("{:?}", setting(key).and_then(|s| s.default).unwrap_or("")),
        }
    }

    fn invalid(&self, key: &str, expected: &str) -> ConfigError {
        ConfigError::InvalidValue {
            key: key.to_string(),
            value: self.shown(key),
            expected: expected.to_string(),
        }
    }

    fn wrong_type(key: &str, value: &toml::Value) -> ConfigError {
        let expected = setting(key).map_or_else(String::new, |s| {
            let unquote = match (s.setting_type, value) {
                (
                    SettingType::Int { .. } | SettingType::Long { .. } | SettingType::Bool,
                    toml::Value::String(_),
                ) => " (write it without quotes)",
                _ => "",
            };
            format!("{}{unquote}", s.setting_type)
        });
        ConfigError::WrongType {
            key: key.to_string(),
            found: format!("{} {}", toml_type(value), toml_text(value)),
            expected,
        }
    }

    /// The value of `key` if given, else its default (`None` if it has none).
    fn get(&self, key: &str) -> Option<Raw> {
        self.raw.get(key).cloned().or_else(|| {
            setting(key)
                .and_then(|s| s.default)
                .map(|d| Raw::Text(d.to_string()))
        })
    }

    fn integer(&self, key: &str, min: i64, max: i64) -> Result<Option<i64>, ConfigError> {
        let n = match self.get(key) {
            None => return Ok(None),
            Some(Raw::Toml(toml::Value::Integer(n))) => n,
            Some(Raw::Toml(other)) => return Err(Values::wrong_type(key, &other)),
            Some(Raw::Text(s)) => s
                .trim()
                .parse::<i64>()
                .map_err(|_| self.invalid(key, &format!("an integer from {min} to {max}")))?,
        };
        if n < min || n > max {
            return Err(self.invalid(key, &format!("an integer from {min} to {max}")));
        }
        Ok(Some(n))
    }

    fn int(&self, key: &str) -> Result<Option<i32>, ConfigError> {
        let Some(Setting {
            setting_type: SettingType::Int { min, max },
            ..
        }) = setting(key)
        else {
            unreachable!("{key} is an INT setting");
        };
        // The range check keeps the value within i32.
        Ok(self
            .integer(key, i64::from(*min), i64::from(*max))?
            .map(|n| n as i32))
    }

    fn long(&self, key: &str) -> Result<Option<i64>, ConfigError> {
        let Some(Setting {
            setting_type: SettingType::Long { min, max },
            ..
        }) = setting(key)
        else {
            unreachable!("{key} is a LONG setting");
        };
        self.integer(key, *min, *max)
    }

    fn int_or_default(&self, key: &str) -> Result<i32, ConfigError> {
        Ok(self
            .int(key)?
            .unwrap_or_else(|| unreachable!("{key} has a default")))
    }

    fn long_or_default(&self, key: &str) -> Result<i64, ConfigError> {
        Ok(self
            .long(key)?
            .unwrap_or_else(|| unreachable!("{key} has a default")))
    }

    fn bool_or_default(&self, key: &str) -> Result<bool, ConfigError> {
        match self.get(key) {
            Some(Raw::Toml(toml::Value::Boolean(b))) => Ok(b),
            Some(Raw::Toml(other)) => Err(Values::wrong_type(key, &other)),
            Some(Raw::Text(s)) => match s.trim().to_ascii_lowercase().as_str() {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(self.invalid(key, "true or false")),
            },
            None => unreachable!("{key} has a default"),
        }
    }

    /// A STRING setting's value, trimmed; `None` when neither given nor defaulted.
    fn string(&self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.get(key) {
            Some(Raw::Toml(toml::Value::String(s))) | Some(Raw::Text(s)) => {
                Ok(Some(s.trim().to_string()))
            }
            Some(Raw::Toml(other)) => Err(Values::wrong_type(key, &other)),
            None => Ok(None),
        }
    }

    fn string_or_default(&self, key: &str) -> Result<String, ConfigError> {
        match self.get(key) {
            Some(Raw::Toml(toml::Value::String(s))) | Some(Raw::Text(s)) => {
                Ok(s.trim().to_string())
            }
            Some(Raw::Toml(other)) => Err(Values::wrong_type(key, &other)),
            None => unreachable!("{key} has a default"),
        }
    }

    /// The items of a LIST setting: a comma-separated string or an array of strings, items
    /// trimmed, empty items dropped.
    fn list(&self, key: &str) -> Result<Option<Vec<String>>, ConfigError> {
        let split = |s: &str| -> Vec<String> { topic::split_list(s).map(str::to_string).collect() };
        match self.get(key) {
            None => Ok(None),
            Some(Raw::Text(s)) | Some(Raw::Toml(toml::Value::String(s))) => Ok(Some(split(&s))),
            Some(Raw::Toml(toml::Value::Array(items))) => {
                let mut out = Vec::new();
                for item in &items {
                    match item {
                        toml::Value::String(s) => out.extend(split(s)),
                        other => {
                            return Err(ConfigError::WrongType {
                                key: key.to_string(),
                                found: format!(
                                    "an array holding {} {}",
                                    toml_type(other),
                                    toml_text(other)
                                ),
                                expected: SettingType::List.to_string(),
                            })
                        }
                    }
                }
                Ok(Some(out))
            }
            Some(Raw::Toml(other)) => Err(Values::wrong_type(key, &other)),
        }
    }

    fn listeners(&self, key: &str) -> Result<Vec<Listener>, ConfigError> {
        self.list(key)?
            .unwrap_or_default()
            .iter()
            .map(|item| {
                Listener::parse(item)
                    .map_err(|why| self.invalid(key, &format!("NAME://HOST:PORT,... ({why})")))
            })
            .collect()
    }
}

/// "a string", "an integer", ... for messages.
fn toml_type(value: &toml::Value) -> &'static str {
    match value {
        toml::Value::String(_) => "the string",
        toml::Value::Integer(_) => "the integer",
        toml::Value::Float(_) => "the float",
        toml::Value::Boolean(_) => "the boolean",
        toml::Value::Datetime(_) => "the datetime",
        toml::Value::Array(_) => "the array",
        toml::Value::Table(_) => "the table",
    }
}

/// A TOML value as it would be written, for messages (arrays and tables abridged).
fn toml_text(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => format!("{s:?}"),
        toml::Value::Integer(n) => n.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) => d.to_string(),
        toml::Value::Array(items) => {
            let shown: Vec<String> = items.iter().take(4).map(toml_text).collect();
            let more = if items.len() > 4 { ", ..." } else { "" };
            format!("[{}{more}]", shown.join(", "))
        }
        toml::Value::Table(_) => "{...}".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_in_name_order_and_unique() {
        for pair in SETTINGS.windows(2) {
            assert!(
                pair[0].name < pair[1].name,
                "{} before {}",
                pair[0].name,
                pair[1].name
            );
        }
    }

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("node.id", "node.id"), 0);
        assert_eq!(edit_distance("node_id", "node.id"), 1);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn every_default_parses_as_its_type() {
        // A config with only node.id set reads every default through its type's parser.
        let config = BrokerConfig::parse("", &[("node.id".into(), "0".into())]);
        assert!(config.is_ok(), "{config:?}");
    }
}
