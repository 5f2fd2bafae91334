//! Typed topic configs: every topic config key of Kafka 4.1, with Kafka's names, types,
//! defaults and validators (`LogConfig`), parsed from the string map that the metadata records
//! carry. keel acts on most of them; the rest ([`is_honoured`] says which) are stored and
//! reported only, each for a reason docs/protocol.md gives.
//!
//! Invariants: a [`TopicConfig`] exists only for a map whose every key is one of [`keys`] and
//! whose every value passed that key's validator (parse, don't validate); the typed fields
//! always agree with the overrides map.

use std::collections::BTreeMap;

use crate::batch::{Compression, TimestampType};
use crate::log::cleaner::CleanerConfig;
use crate::log::LogConfig;

/// `retention.ms`: delete segments whose newest record is older (LONG, >= -1, -1 = forever).
pub const RETENTION_MS: &str = "retention.ms";
/// `retention.bytes`: delete old segments while the partition is larger (LONG, -1 = no limit).
pub const RETENTION_BYTES: &str = "retention.bytes";
/// `segment.bytes`: roll a segment at this size (INT, >= 14; Kafka 4.0 raised it to 1 MiB).
pub const SEGMENT_BYTES: &str = "segment.bytes";
/// `segment.ms`: roll a segment at this age (LONG, >= 1).
pub const SEGMENT_MS: &str = "segment.ms";
/// `max.message.bytes`: the largest batch a producer may send (INT, >= 0).
pub const MAX_MESSAGE_BYTES: &str = "max.message.bytes";
/// `min.insync.replicas`: acks=all needs this many in-sync replicas (INT, >= 1).
pub const MIN_INSYNC_REPLICAS: &str = "min.insync.replicas";
/// `cleanup.policy`: `delete`, `compact` or both (LIST).
pub const CLEANUP_POLICY: &str = "cleanup.policy";
/// `message.timestamp.type`: `CreateTime` or `LogAppendTime` (STRING).
pub const MESSAGE_TIMESTAMP_TYPE: &str = "message.timestamp.type";
/// `unclean.leader.election.enable`: a partition whose ISR members are all down may elect
/// another replica, losing the writes only the ISR had (BOOLEAN). Unset on a topic, the
/// broker's setting of the same name applies.
pub const UNCLEAN_LEADER_ELECTION_ENABLE: &str = "unclean.leader.election.enable";

/// `min.cleanable.dirty.ratio`: the log cleaner cleans a compacted log once its dirty share
/// of bytes exceeds this (DOUBLE, 0 to 1).
pub const MIN_CLEANABLE_DIRTY_RATIO: &str = "min.cleanable.dirty.ratio";
/// `delete.retention.ms`: how long a tombstone outlives its first cleaning (LONG, >= 0).
pub const DELETE_RETENTION_MS: &str = "delete.retention.ms";
/// `min.compaction.lag.ms`: records younger than this are not compacted (LONG, >= 0).
pub const MIN_COMPACTION_LAG_MS: &str = "min.compaction.lag.ms";
/// `max.compaction.lag.ms`: a record older than this makes its log due for cleaning
/// (LONG, >= 1).
pub const MAX_COMPACTION_LAG_MS: &str = "max.compaction.lag.ms";

/// `compression.type`: the codec the leader stores batches in: `producer` keeps the producer's,
/// `uncompressed`, `gzip`, `snappy`, `lz4` or `zstd` recompresses every other batch (STRING).
pub const COMPRESSION_TYPE: &str = "compression.type";
/// `compression.gzip.level`: gzip's level when the leader recompresses (INT, 1 to 9, or -1 for
/// the codec's default).
pub const COMPRESSION_GZIP_LEVEL: &str = "compression.gzip.level";
/// `compression.lz4.level`: lz4's level when the leader recompresses (INT, 1 to 17).
pub const COMPRESSION_LZ4_LEVEL: &str = "compression.lz4.level";
/// `compression.zstd.level`: zstd's level when the leader recompresses (INT, -131072 to 22).
pub const COMPRESSION_ZSTD_LEVEL: &str = "compression.zstd.level";
/// `message.timestamp.before.max.ms`: how far before the broker's clock a CreateTime record's
/// timestamp may be (LONG, >= 0).
pub const MESSAGE_TIMESTAMP_BEFORE_MAX_MS: &str = "message.timestamp.before.max.ms";
/// `message.timestamp.after.max.ms`: how far after the broker's clock a CreateTime record's
/// timestamp may be (LONG, >= 0; Kafka 4.0's default is one hour).
pub const MESSAGE_TIMESTAMP_AFTER_MAX_MS: &str = "message.timestamp.after.max.ms";
/// `segment.jitter.ms`: the most a segment's age-based roll is brought forward, so that the
/// partitions of a topic created together do not all roll at once (LONG, >= 0).
pub const SEGMENT_JITTER_MS: &str = "segment.jitter.ms";
/// `index.interval.bytes`: bytes appended between two entries of a segment's sparse offset
/// and time indexes (INT, >= 0).
pub const INDEX_INTERVAL_BYTES: &str = "index.interval.bytes";
/// `remote.storage.enable`: tiered storage. keel has none: only `false` is accepted (BOOLEAN).
pub const REMOTE_STORAGE_ENABLE: &str = "remote.storage.enable";

/// The topic config keys keel stores and reports but does not act on, with Kafka's type,
/// default and bounds: each has no meaning in keel, or one keel always gives it (docs/protocol.md
/// says which for each). They are accepted so that a configuration written for Kafka carries
/// over.
const PASSIVE: [Passive; 13] = [
    Passive::new(
        "file.delete.delay.ms",
        ConfigType::Long,
        "60000",
        Bounds::Long(0),
    ),
    Passive::new(
        "flush.messages",
        ConfigType::Long,
        LONG_MAX,
        Bounds::Long(1),
    ),
    Passive::new("flush.ms", ConfigType::Long, LONG_MAX, Bounds::Long(0)),
    Passive::new(
        "follower.replication.throttled.replicas",
        ConfigType::List,
        "",
        Bounds::Replicas,
    ),
    Passive::new(
        "leader.replication.throttled.replicas",
        ConfigType::List,
        "",
        Bounds::Replicas,
    ),
    Passive::new(
        "local.retention.bytes",
        ConfigType::Long,
        "-2",
        Bounds::Long(-2),
    ),
    Passive::new(
        "local.retention.ms",
        ConfigType::Long,
        "-2",
        Bounds::Long(-2),
    ),
    Passive::new(
        "message.downconversion.enable",
        ConfigType::Boolean,
        "true",
        Bounds::Boolean,
    ),
    Passive::new("preallocate", ConfigType::Boolean, "false", Bounds::Boolean),
    Passive::new(
        "remote.log.copy.disable",
        ConfigType::Boolean,
        "false",
        Bounds::Boolean,
    ),
    Passive::new(
        "remote.log.delete.on.disable",
        ConfigType::Boolean,
        "false",
        Bounds::Boolean,
    ),
    Passive::new(
        "segment.index.bytes",
        ConfigType::Int,
        "10485760",
        Bounds::Int(4),
    ),
    // Only false: a topic asking for tiered storage is refused rather than silently local.
    Passive::new(
        REMOTE_STORAGE_ENABLE,
        ConfigType::Boolean,
        "false",
        Bounds::False,
    ),
];

const LONG_MAX: &str = "9223372036854775807";

/// The topic config keys keel acts on.
const HONOURED: [&str; 21] = [
    CLEANUP_POLICY,
    COMPRESSION_GZIP_LEVEL,
    COMPRESSION_LZ4_LEVEL,
    COMPRESSION_TYPE,
    COMPRESSION_ZSTD_LEVEL,
    DELETE_RETENTION_MS,
    INDEX_INTERVAL_BYTES,
    MAX_COMPACTION_LAG_MS,
    MAX_MESSAGE_BYTES,
    MESSAGE_TIMESTAMP_AFTER_MAX_MS,
    MESSAGE_TIMESTAMP_BEFORE_MAX_MS,
    MESSAGE_TIMESTAMP_TYPE,
    MIN_CLEANABLE_DIRTY_RATIO,
    MIN_COMPACTION_LAG_MS,
    MIN_INSYNC_REPLICAS,
    RETENTION_BYTES,
    RETENTION_MS,
    SEGMENT_BYTES,
    SEGMENT_JITTER_MS,
    SEGMENT_MS,
    UNCLEAN_LEADER_ELECTION_ENABLE,
];

/// Every topic config key keel accepts (Kafka 4.1's topic configs), in name order, as
/// DescribeConfigs lists them.
pub fn keys() -> Vec<&'static str> {
    let mut keys: Vec<&'static str> = HONOURED
        .iter()
        .copied()
        .chain(PASSIVE.iter().map(|p| p.name))
        .collect();
    keys.sort_unstable();
    keys
}

/// Whether keel acts on `key` (as opposed to storing and reporting it only).
pub fn is_honoured(key: &str) -> bool {
    HONOURED.contains(&key)
}

/// A key keel accepts without acting on it: its type, Kafka's default and what is valid.
struct Passive {
    name: &'static str,
    config_type: ConfigType,
    default: &'static str,
    bounds: Bounds,
}

impl Passive {
    const fn new(
        name: &'static str,
        config_type: ConfigType,
        default: &'static str,
        bounds: Bounds,
    ) -> Passive {
        Passive {
            name,
            config_type,
            default,
            bounds,
        }
    }

    fn find(key: &str) -> Option<&'static Passive> {
        PASSIVE.iter().find(|p| p.name == key)
    }
}

/// What a passive key's value must be.
#[derive(Clone, Copy)]
enum Bounds {
    /// A LONG of at least this (every passive LONG is unbounded above, as parsing bounds it).
    Long(i64),
    /// An INT of at least this.
    Int(i32),
    Boolean,
    /// `false` only (a feature keel does not have).
    False,
    /// Kafka's throttled-replicas list: empty, `*`, or `partition:broker` pairs.
    Replicas,
}

impl Bounds {
    fn check(self, value: &str) -> Result<(), String> {
        match self {
            Bounds::Long(min) => parse_long(value, min).map(|_| ()),
            Bounds::Int(min) => parse_int(value, min).map(|_| ()),
            Bounds::Boolean => parse_bool(value).map(|_| ()),
            Bounds::False => match parse_bool(value)? {
                false => Ok(()),
                true => Err("keel has no tiered storage: only false is accepted".into()),
            },
            Bounds::Replicas => {
                if value.trim() == "*" {
                    return Ok(());
                }
                for item in split_list(value) {
                    let pair = item.split_once(':').and_then(|(p, b)| {
                        Some((p.trim().parse::<i32>().ok()?, b.trim().parse::<i32>().ok()?))
                    });
                    if !pair.is_some_and(|(p, b)| p >= 0 && b >= 0) {
                        return Err(format!(
                            "{item:?} is not partitionId:brokerId (the list is empty, *, or such pairs)"
                        ));
                    }
                }
                Ok(())
            }
        }
    }
}

/// The smallest `segment.bytes` (Kafka 3.x: `LegacyRecord.RECORD_OVERHEAD_V0`).
pub const SEGMENT_BYTES_MIN: i32 = 14;

/// `cleanup.policy`: which cleanups run on the topic's segments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CleanupPolicy {
    /// `delete`: retention by time and size.
    pub delete: bool,
    /// `compact`: keep the last record per key.
    pub compact: bool,
}

/// A config's type, as DescribeConfigs v3+ reports it (`DescribeConfigsResponse.ConfigType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigType {
    /// BOOLEAN (1).
    Boolean = 1,
    /// STRING (2).
    String = 2,
    /// INT (3).
    Int = 3,
    /// LONG (5).
    Long = 5,
    /// DOUBLE (6).
    Double = 6,
    /// LIST (7).
    List = 7,
}

impl ConfigType {
    /// Kafka's id of the type.
    pub fn code(self) -> i8 {
        self as i8
    }
}

/// Where a described value comes from (`DescribeConfigsResponse.ConfigSource`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    /// Set on the topic (TOPIC_CONFIG, 1).
    Topic = 1,
    /// Kafka's default (DEFAULT_CONFIG, 5).
    Default = 5,
}

impl ConfigSource {
    /// Kafka's id of the source.
    pub fn code(self) -> i8 {
        self as i8
    }
}

/// One line of a DescribeConfigs answer for a topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigEntry {
    /// The Kafka key.
    pub name: &'static str,
    /// The value in force, as a string (the topic's own string when it was set).
    pub value: String,
    /// Whether the value was set on the topic or is the default.
    pub source: ConfigSource,
    /// The value's type.
    pub config_type: ConfigType,
}

/// Why a config key or value is not accepted (INVALID_CONFIG).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A key keel does not know (Kafka: "Unknown topic config name").
    #[error("unknown topic config name: {0}")]
    UnknownKey(String),
    /// A value the key's validator refuses.
    #[error("invalid value {value:?} for configuration {key}: {reason}")]
    InvalidValue {
        /// The key.
        key: String,
        /// The refused value.
        value: String,
        /// Why.
        reason: String,
    },
}

/// The typed configs of one topic: Kafka's defaults, overridden by the topic's own settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicConfig {
    retention_ms: i64,
    retention_bytes: i64,
    segment_bytes: i32,
    segment_ms: i64,
    max_message_bytes: i32,
    min_insync_replicas: i32,
    cleanup_policy: CleanupPolicy,
    message_timestamp_type: TimestampType,
    unclean_leader_election_enable: bool,
    cleaner: CleanerSettings,
    /// `compression.type`: `None` for `producer`.
    compression: Option<Compression>,
    /// `compression.gzip.level`, `compression.lz4.level`, `compression.zstd.level`.
    gzip_level: i32,
    lz4_level: i32,
    zstd_level: i32,
    timestamp_before_max_ms: i64,
    timestamp_after_max_ms: i64,
    segment_jitter_ms: i64,
    index_interval_bytes: i32,
    /// The topic-level settings, as given.
    overrides: BTreeMap<String, String>,
}

impl Default for TopicConfig {
    /// Kafka's defaults (`LogConfig`, `ServerLogConfigs`).
    fn default() -> Self {
        TopicConfig {
            retention_ms: 7 * 24 * 60 * 60 * 1000,
            retention_bytes: -1,
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 60 * 60 * 1000,
            max_message_bytes: 1024 * 1024 + 12,
            min_insync_replicas: 1,
            cleanup_policy: CleanupPolicy {
                delete: true,
                compact: false,
            },
            message_timestamp_type: TimestampType::CreateTime,
            unclean_leader_election_enable: false,
            cleaner: CleanerSettings::default(),
            compression: None,
            gzip_level: -1,
            lz4_level: 9,
            zstd_level: 3,
            timestamp_before_max_ms: i64::MAX,
            timestamp_after_max_ms: 60 * 60 * 1000,
            segment_jitter_ms: 0,
            index_interval_bytes: 4096,
            overrides: BTreeMap::new(),
        }
    }
}

impl TopicConfig {
    /// Parses a topic's overrides: every key must be one of [`keys`] and every value valid.
    pub fn from_map(overrides: &BTreeMap<String, String>) -> Result<TopicConfig, ConfigError> {
        let mut config = TopicConfig::default();
        for (key, value) in overrides {
            config.set(key, value)?;
        }
        config.overrides = overrides.clone();
        Ok(config)
    }

    /// Checks one key and value without building a config.
    pub fn validate(key: &str, value: &str) -> Result<(), ConfigError> {
        TopicConfig::default().set(key, value)
    }

    /// Whether `key` is a LIST config (the only kind APPEND and SUBTRACT apply to).
    pub fn is_list(key: &str) -> bool {
        key == CLEANUP_POLICY
    }

    /// Kafka's default value of `key` as a string, if keel knows the key.
    pub fn default_value(key: &str) -> Option<String> {
        TopicConfig::default().value_of(key)
    }

    /// `compression.type` with its level: the codec and level the leader recompresses every
    /// batch of another codec into, `None` for `producer` (batches stored as sent).
    pub fn compression(&self) -> Option<(Compression, i32)> {
        self.compression.map(|codec| {
            let level = match codec {
                Compression::Gzip => self.gzip_level,
                Compression::Lz4 => self.lz4_level,
                Compression::Zstd => self.zstd_level,
                Compression::None | Compression::Snappy => 0,
            };
            (codec, level)
        })
    }

    /// `message.timestamp.before.max.ms` and `message.timestamp.after.max.ms`: how far before
    /// and after the broker's clock a CreateTime record's timestamp may be.
    pub fn timestamp_bounds_ms(&self) -> (i64, i64) {
        (self.timestamp_before_max_ms, self.timestamp_after_max_ms)
    }

    /// The topic-level settings, as given.
    pub fn overrides(&self) -> &BTreeMap<String, String> {
        &self.overrides
    }

    /// `retention.ms` (-1: keep forever).
    pub fn retention_ms(&self) -> i64 {
        self.retention_ms
    }

    /// `retention.bytes` (-1: no limit).
    pub fn retention_bytes(&self) -> i64 {
        self.retention_bytes
    }

    /// `segment.bytes`.
    pub fn segment_bytes(&self) -> i32 {
        self.segment_bytes
    }

    /// `segment.ms`.
    pub fn segment_ms(&self) -> i64 {
        self.segment_ms
    }

    /// `max.message.bytes`.
    pub fn max_message_bytes(&self) -> i32 {
        self.max_message_bytes
    }

    /// `min.insync.replicas`.
    pub fn min_insync_replicas(&self) -> i32 {
        self.min_insync_replicas
    }

    /// `cleanup.policy`.
    pub fn cleanup_policy(&self) -> CleanupPolicy {
        self.cleanup_policy
    }

    /// `message.timestamp.type`.
    pub fn message_timestamp_type(&self) -> TimestampType {
        self.message_timestamp_type
    }

    /// `unclean.leader.election.enable` if the topic sets it (else the broker's setting
    /// applies).
    pub fn unclean_leader_election(&self) -> Option<bool> {
        self.overrides
            .contains_key(UNCLEAN_LEADER_ELECTION_ENABLE)
            .then_some(self.unclean_leader_election_enable)
    }

    /// Every key with its value in force and where it comes from, in name order: the body of a
    /// DescribeConfigs answer.
    pub fn describe(&self) -> Vec<ConfigEntry> {
        keys()
            .into_iter()
            .map(|name| {
                let (value, source) = match self.overrides.get(name) {
                    Some(v) => (v.clone(), ConfigSource::Topic),
                    None => (
                        self.value_of(name)
                            .expect("every key keel accepts has a value"),
                        ConfigSource::Default,
                    ),
                };
                ConfigEntry {
                    name,
                    value,
                    source,
                    config_type: config_type(name),
                }
            })
            .collect()
    }

    /// The log settings these configs imply (the ones [`LogConfig`] has; the rest keep its
    /// defaults). Retention applies only with `cleanup.policy` `delete`: a `compact`-only topic
    /// keeps every key's latest record however old (Kafka's `LogManager.cleanupLogs` deletes
    /// only for the delete policy).
    pub fn to_log_config(&self) -> LogConfig {
        let delete = self.cleanup_policy.delete;
        LogConfig {
            segment_bytes_max: self.segment_bytes as u64,
            segment_ms_max: self.segment_ms,
            retention_bytes_max: if delete { self.retention_bytes } else { -1 },
            retention_ms_max: if delete { self.retention_ms } else { -1 },
            segment_jitter_ms_max: self.segment_jitter_ms,
            index_interval_bytes: self.index_interval_bytes as u64,
            ..LogConfig::default()
        }
    }

    /// The log cleaner's settings for the topic (docs/compaction.md); the dedupe buffer bound
    /// is the broker's and keeps its default here.
    pub fn to_cleaner_config(&self) -> CleanerConfig {
        let c = &self.cleaner;
        CleanerConfig {
            dirty_ratio_min: f64::from_bits(c.dirty_ratio_min_bits),
            delete_retention_ms: c.delete_retention_ms,
            compaction_lag_ms_min: c.compaction_lag_ms_min,
            compaction_lag_ms_max: c.compaction_lag_ms_max,
            ..CleanerConfig::default()
        }
    }

    /// The value in force of `key`, formatted as Kafka would.
    fn value_of(&self, key: &str) -> Option<String> {
        Some(match key {
            // Kafka prints a double with its fraction ("0.5", "1.0"), as Debug does.
            MIN_CLEANABLE_DIRTY_RATIO => {
                format!("{:?}", f64::from_bits(self.cleaner.dirty_ratio_min_bits))
            }
            DELETE_RETENTION_MS => self.cleaner.delete_retention_ms.to_string(),
            MIN_COMPACTION_LAG_MS => self.cleaner.compaction_lag_ms_min.to_string(),
            MAX_COMPACTION_LAG_MS => self.cleaner.compaction_lag_ms_max.to_string(),
            RETENTION_MS => self.retention_ms.to_string(),
            RETENTION_BYTES => self.retention_bytes.to_string(),
            SEGMENT_BYTES => self.segment_bytes.to_string(),
            SEGMENT_MS => self.segment_ms.to_string(),
            MAX_MESSAGE_BYTES => self.max_message_bytes.to_string(),
            MIN_INSYNC_REPLICAS => self.min_insync_replicas.to_string(),
            CLEANUP_POLICY => {
                let CleanupPolicy { delete, compact } = self.cleanup_policy;
                match (compact, delete) {
                    (true, true) => "compact,delete",
                    (true, false) => "compact",
                    _ => "delete",
                }
                .to_string()
            }
            MESSAGE_TIMESTAMP_TYPE => match self.message_timestamp_type {
                TimestampType::CreateTime => "CreateTime",
                TimestampType::LogAppendTime => "LogAppendTime",
            }
            .to_string(),
            UNCLEAN_LEADER_ELECTION_ENABLE => self.unclean_leader_election_enable.to_string(),
            COMPRESSION_TYPE => match self.compression {
                None => "producer",
                Some(Compression::None) => "uncompressed",
                Some(codec) => codec.name(),
            }
            .to_string(),
            COMPRESSION_GZIP_LEVEL => self.gzip_level.to_string(),
            COMPRESSION_LZ4_LEVEL => self.lz4_level.to_string(),
            COMPRESSION_ZSTD_LEVEL => self.zstd_level.to_string(),
            MESSAGE_TIMESTAMP_BEFORE_MAX_MS => self.timestamp_before_max_ms.to_string(),
            MESSAGE_TIMESTAMP_AFTER_MAX_MS => self.timestamp_after_max_ms.to_string(),
            SEGMENT_JITTER_MS => self.segment_jitter_ms.to_string(),
            INDEX_INTERVAL_BYTES => self.index_interval_bytes.to_string(),
            other => {
                let passive = Passive::find(other)?;
                self.overrides
                    .get(other)
                    .cloned()
                    .unwrap_or_else(|| passive.default.to_string())
            }
        })
    }

    /// Parses and validates `value` for `key` into the typed field.
    fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let invalid = |reason: String| ConfigError::InvalidValue {
            key: key.to_string(),
            value: value.to_string(),
            reason,
        };
        match key {
            RETENTION_MS => self.retention_ms = parse_long(value, -1).map_err(invalid)?,
            RETENTION_BYTES => {
                self.retention_bytes = parse_long(value, i64::MIN).map_err(invalid)?
            }
            SEGMENT_BYTES => {
                self.segment_bytes = parse_int(value, SEGMENT_BYTES_MIN).map_err(invalid)?
            }
            SEGMENT_MS => self.segment_ms = parse_long(value, 1).map_err(invalid)?,
            MAX_MESSAGE_BYTES => self.max_message_bytes = parse_int(value, 0).map_err(invalid)?,
            MIN_INSYNC_REPLICAS => {
                self.min_insync_replicas = parse_int(value, 1).map_err(invalid)?
            }
            CLEANUP_POLICY => {
                let mut policy = CleanupPolicy {
                    delete: false,
                    compact: false,
                };
                for item in split_list(value) {
                    match item {
                        "delete" => policy.delete = true,
                        "compact" => policy.compact = true,
                        other => {
                            return Err(invalid(format!(
                                "{other:?} is not one of [compact, delete]"
                            )))
                        }
                    }
                }
                if !policy.delete && !policy.compact {
                    return Err(invalid("expected compact, delete or both".into()));
                }
                self.cleanup_policy = policy;
            }
            MESSAGE_TIMESTAMP_TYPE => {
                self.message_timestamp_type = match value.trim() {
                    "CreateTime" => TimestampType::CreateTime,
                    "LogAppendTime" => TimestampType::LogAppendTime,
                    _ => {
                        return Err(invalid(
                            "string must be one of: CreateTime, LogAppendTime".into(),
                        ))
                    }
                }
            }
            UNCLEAN_LEADER_ELECTION_ENABLE => {
                self.unclean_leader_election_enable = parse_bool(value).map_err(invalid)?
            }
            COMPRESSION_TYPE => {
                self.compression = match value.trim() {
                    "producer" => None,
                    "uncompressed" => Some(Compression::None),
                    "gzip" => Some(Compression::Gzip),
                    "snappy" => Some(Compression::Snappy),
                    "lz4" => Some(Compression::Lz4),
                    "zstd" => Some(Compression::Zstd),
                    _ => return Err(invalid(
                        "string must be one of: uncompressed, zstd, lz4, snappy, gzip, producer"
                            .into(),
                    )),
                }
            }
            COMPRESSION_GZIP_LEVEL => {
                let level = parse_int(value, -1).map_err(invalid)?;
                if level == 0 || level > 9 {
                    return Err(invalid("value must be -1 or between 1 and 9".into()));
                }
                self.gzip_level = level;
            }
            COMPRESSION_LZ4_LEVEL => {
                self.lz4_level = parse_int_in(value, 1, 17).map_err(invalid)?
            }
            COMPRESSION_ZSTD_LEVEL => {
                self.zstd_level = parse_int_in(value, -131_072, 22).map_err(invalid)?
            }
            MESSAGE_TIMESTAMP_BEFORE_MAX_MS => {
                self.timestamp_before_max_ms = parse_long(value, 0).map_err(invalid)?
            }
            MESSAGE_TIMESTAMP_AFTER_MAX_MS => {
                self.timestamp_after_max_ms = parse_long(value, 0).map_err(invalid)?
            }
            SEGMENT_JITTER_MS => self.segment_jitter_ms = parse_long(value, 0).map_err(invalid)?,
            INDEX_INTERVAL_BYTES => {
                self.index_interval_bytes = parse_int(value, 0).map_err(invalid)?
            }
            MIN_CLEANABLE_DIRTY_RATIO => {
                let ratio: f64 = value
                    .trim()
                    .parse()
                    .map_err(|_| invalid("expected a number".into()))?;
                if !(0.0..=1.0).contains(&ratio) {
                    return Err(invalid("value must be between 0 and 1".into()));
                }
                self.cleaner.dirty_ratio_min_bits = ratio.to_bits();
            }
            DELETE_RETENTION_MS => {
                self.cleaner.delete_retention_ms = parse_long(value, 0).map_err(invalid)?
            }
            MIN_COMPACTION_LAG_MS => {
                self.cleaner.compaction_lag_ms_min = parse_long(value, 0).map_err(invalid)?
            }
            MAX_COMPACTION_LAG_MS => {
                self.cleaner.compaction_lag_ms_max = parse_long(value, 1).map_err(invalid)?
            }
            other => match Passive::find(other) {
                Some(passive) => passive.bounds.check(value).map_err(invalid)?,
                None => return Err(ConfigError::UnknownKey(key.to_string())),
            },
        }
        Ok(())
    }
}

/// The log cleaner's topic settings (Kafka's defaults). The ratio is kept as its bits so the
/// config stays `Eq`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct CleanerSettings {
    dirty_ratio_min_bits: u64,
    delete_retention_ms: i64,
    compaction_lag_ms_min: i64,
    compaction_lag_ms_max: i64,
}

impl Default for CleanerSettings {
    fn default() -> Self {
        let c = CleanerConfig::default();
        CleanerSettings {
            dirty_ratio_min_bits: c.dirty_ratio_min.to_bits(),
            delete_retention_ms: c.delete_retention_ms,
            compaction_lag_ms_min: c.compaction_lag_ms_min,
            compaction_lag_ms_max: c.compaction_lag_ms_max,
        }
    }
}

/// The type of a known key.
fn config_type(key: &str) -> ConfigType {
    match key {
        RETENTION_MS | RETENTION_BYTES | SEGMENT_MS | SEGMENT_JITTER_MS => ConfigType::Long,
        DELETE_RETENTION_MS | MIN_COMPACTION_LAG_MS | MAX_COMPACTION_LAG_MS => ConfigType::Long,
        MESSAGE_TIMESTAMP_BEFORE_MAX_MS | MESSAGE_TIMESTAMP_AFTER_MAX_MS => ConfigType::Long,
        MIN_CLEANABLE_DIRTY_RATIO => ConfigType::Double,
        SEGMENT_BYTES | MAX_MESSAGE_BYTES | MIN_INSYNC_REPLICAS => ConfigType::Int,
        INDEX_INTERVAL_BYTES => ConfigType::Int,
        COMPRESSION_GZIP_LEVEL | COMPRESSION_LZ4_LEVEL | COMPRESSION_ZSTD_LEVEL => ConfigType::Int,
        CLEANUP_POLICY => ConfigType::List,
        UNCLEAN_LEADER_ELECTION_ENABLE => ConfigType::Boolean,
        other => Passive::find(other).map_or(ConfigType::String, |p| p.config_type),
    }
}

/// The items of a LIST value: split at commas, trimmed, empty items dropped (Kafka's
/// `ConfigDef.parseType` for LIST).
pub fn split_list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn parse_long(value: &str, min: i64) -> Result<i64, String> {
    let n: i64 = value
        .trim()
        .parse()
        .map_err(|_| "expected a 64-bit integer".to_string())?;
    if n < min {
        return Err(format!("value must be at least {min}"));
    }
    Ok(n)
}

/// Kafka's BOOLEAN: true or false, any case.
fn parse_bool(value: &str) -> Result<bool, String> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

fn parse_int_in(value: &str, min: i32, max: i32) -> Result<i32, String> {
    let n = parse_int(value, min)?;
    if n > max {
        return Err(format!("value must be at most {max}"));
    }
    Ok(n)
}

fn parse_int(value: &str, min: i32) -> Result<i32, String> {
    let n: i32 = value
        .trim()
        .parse()
        .map_err(|_| "expected a 32-bit integer".to_string())?;
    if n < min {
        return Err(format!("value must be at least {min}"));
    }
    Ok(n)
}
