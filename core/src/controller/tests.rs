use std::collections::BTreeMap;

use proptest::prelude::*;
use prost::Message;
use rand::{rngs::StdRng, SeedableRng};

use super::config::{self, CleanupPolicy};
use super::records::{MetadataBatch, ProducerIdsRecord};
use super::store::METADATA_LOG_FILE;
use super::*;
use crate::batch::TimestampType;
use crate::storage::{MemStorage, Storage};

fn id(n: u8) -> TopicId {
    let mut bytes = [0u8; 16];
    bytes[15] = n;
    bytes[0] = n.wrapping_mul(37);
    TopicId(bytes)
}

fn brokers(n: i32) -> Vec<BrokerId> {
    (0..n).map(BrokerId).collect()
}

fn new_topic(name: &str, partitions: i32, rf: i16, topic_id: TopicId) -> NewTopic {
    NewTopic {
        name: name.to_string(),
        partitions,
        replication_factor: rf,
        configs: BTreeMap::new(),
        topic_id,
    }
}

fn registration(broker: i32, incarnation: u8) -> BrokerRegistration {
    BrokerRegistration {
        broker_id: BrokerId(broker),
        incarnation_id: [incarnation; 16],
        endpoints: vec![Endpoint {
            name: "PLAINTEXT".into(),
            host: "127.0.0.1".into(),
            port: 9092 + broker,
            security_protocol: 0,
        }],
        rack: None,
    }
}

/// Registers `broker` (fenced, as every registration) and unfences it, as its first caught-up
/// heartbeat would; returns its broker epoch.
fn register_unfenced(state: &mut MetadataState, broker: i32, incarnation: u8) -> i64 {
    let (epoch, records) = state
        .register_broker(
            &registration(broker, incarnation),
            UncleanElection::Disabled,
        )
        .unwrap();
    apply_all(state, &records);
    let records = state
        .unfence_broker(BrokerId(broker), epoch, UncleanElection::Disabled)
        .unwrap();
    apply_all(state, &records);
    epoch
}

/// Applies a command's records directly (no store), asserting they apply.
fn apply_all(state: &mut MetadataState, records: &[MetadataRecord]) {
    for r in records {
        state.apply(r).expect("command records apply");
    }
    state.check_invariants();
}

fn state_with_topic(name: &str, partitions: i32, rf: i16) -> MetadataState {
    let mut state = MetadataState::new();
    let records = state
        .create_topic(
            &new_topic(name, partitions, rf, id(1)),
            &brokers(3),
            &TopicDefaults::default(),
        )
        .unwrap();
    apply_all(&mut state, &records);
    state
}

/// Topic names follow Kafka's Topic.validate: 1 to 249 of [a-zA-Z0-9._-], not "." or "..";
/// anything else is INVALID_TOPIC_EXCEPTION (17).
#[test]
fn topic_names_are_validated_like_kafka() {
    let state = MetadataState::new();
    let long_ok = "a".repeat(249);
    let too_long = "a".repeat(250);
    for (name, ok) in [
        ("orders", true),
        ("my.topic_1-X", true),
        (long_ok.as_str(), true),
        ("", false),
        (".", false),
        ("..", false),
        ("...", true),
        (too_long.as_str(), false),
        ("a b", false),
        ("a/b", false),
        ("tópico", false),
        ("a\0", false),
    ] {
        let result = state.create_topic(
            &new_topic(name, 1, 1, id(1)),
            &brokers(1),
            &TopicDefaults::default(),
        );
        assert_eq!(result.is_ok(), ok, "{name:?}: {result:?}");
        if let Err(e) = result {
            assert_eq!(e.code(), 17, "{name:?}");
        }
    }
}

/// CreateTopics errors with Kafka's codes. Reference: KRaft ReplicationControlManager.createTopic.
#[test]
fn create_topic_rejects_like_kafka() {
    let state = state_with_topic("a.b", 1, 1);
    let defaults = TopicDefaults::default();
    let live = brokers(3);
    let create = |t: NewTopic| state.create_topic(&t, &live, &defaults).map(|_| ());
    let code = |r: Result<(), ControllerError>| r.unwrap_err().code();

    assert_eq!(code(create(new_topic("a.b", 1, 1, id(2)))), 36);
    // '.' and '_' collide in metric names.
    let collision = create(new_topic("a_b", 1, 1, id(2))).unwrap_err();
    assert_eq!(collision.code(), 17);
    assert!(collision
        .to_string()
        .contains("collides with existing topic: a.b"));
    assert_eq!(code(create(new_topic("t", 0, 1, id(2)))), 37);
    assert_eq!(code(create(new_topic("t", -2, 1, id(2)))), 37);
    assert_eq!(code(create(new_topic("t", 1, 0, id(2)))), 38);
    assert_eq!(code(create(new_topic("t", 1, -2, id(2)))), 38);
    assert_eq!(code(create(new_topic("t", 1, 4, id(2)))), 38);
    assert_eq!(
        state
            .create_topic(&new_topic("t", 1, 1, id(2)), &[], &defaults)
            .unwrap_err()
            .code(),
        38,
        "no live broker"
    );
    assert_eq!(
        code(create(new_topic(
            "t",
            RECORDS_PER_COMMAND_MAX as i32,
            1,
            id(2)
        ))),
        44
    );
    let mut bad_config = new_topic("t", 1, 1, id(2));
    bad_config.configs.insert("no.such.key".into(), "1".into());
    assert_eq!(code(create(bad_config.clone())), 40);
    bad_config.configs.clear();
    bad_config
        .configs
        .insert("retention.ms".into(), "-2".into());
    assert_eq!(code(create(bad_config)), 40);
    assert_eq!(code(create(new_topic("t", 1, 1, TopicId::ZERO))), 42);
    assert_eq!(code(create(new_topic("t", 1, 1, id(1)))), 42, "id in use");
    assert!(create(new_topic("t", 1, 1, id(2))).is_ok());
}

/// -1 partitions and -1 replication factor take the broker defaults (CreateTopics v4+).
#[test]
fn minus_one_takes_the_broker_defaults() {
    let mut state = MetadataState::new();
    let defaults = TopicDefaults {
        partitions: 3,
        replication_factor: 2,
    };
    let records = state
        .create_topic(&new_topic("t", -1, -1, id(1)), &brokers(3), &defaults)
        .unwrap();
    apply_all(&mut state, &records);
    let topic = state.topic("t").unwrap();
    assert_eq!(topic.partitions.len(), 3);
    assert!(topic.partitions.iter().all(|p| p.replicas.len() == 2));
}

/// Replicas are spread round-robin: partition p's leader is broker (start + p) % n, its
/// followers the next brokers; every partition starts with the full ISR and epochs 0.
#[test]
fn assignment_spreads_leaders_and_replicas_round_robin() {
    let state = state_with_topic("t", 6, 2);
    let topic = state.topic("t").unwrap();
    let start = topic.partitions[0].leader.0;
    let mut leaders = BTreeMap::new();
    let mut replicas = BTreeMap::new();
    for (p, partition) in topic.partitions.iter().enumerate() {
        let expect_leader = BrokerId((start + p as i32) % 3);
        assert_eq!(partition.leader, expect_leader, "partition {p}");
        assert_eq!(partition.replicas[0], expect_leader);
        assert_eq!(partition.replicas[1], BrokerId((expect_leader.0 + 1) % 3));
        assert_eq!(partition.isr, partition.replicas);
        assert_eq!(partition.leader_epoch, LeaderEpoch(0));
        assert_eq!(partition.partition_epoch, 0);
        *leaders.entry(partition.leader).or_insert(0) += 1;
        for r in &partition.replicas {
            *replicas.entry(*r).or_insert(0) += 1;
        }
    }
    assert_eq!(leaders.values().copied().collect::<Vec<_>>(), vec![2, 2, 2]);
    assert_eq!(
        replicas.values().copied().collect::<Vec<_>>(),
        vec![4, 4, 4]
    );
    // Live brokers are used sorted and deduplicated, whatever order they come in.
    let a = state.create_topic(
        &new_topic("u", 4, 2, id(9)),
        &[BrokerId(2), BrokerId(0), BrokerId(1), BrokerId(0)],
        &TopicDefaults::default(),
    );
    let b = state.create_topic(
        &new_topic("u", 4, 2, id(9)),
        &brokers(3),
        &TopicDefaults::default(),
    );
    assert_eq!(a, b);
}

/// CreatePartitions adds partitions continuing the spread; not growing is INVALID_PARTITIONS.
/// Reference: KRaft ReplicationControlManager.createPartitions.
#[test]
fn create_partitions_grows_only() {
    let mut state = state_with_topic("t", 2, 2);
    let live = brokers(3);
    assert_eq!(
        state.create_partitions("t", 2, &live).unwrap_err().code(),
        37
    );
    assert_eq!(
        state.create_partitions("t", 1, &live).unwrap_err().code(),
        37
    );
    assert_eq!(
        state.create_partitions("x", 5, &live).unwrap_err().code(),
        3
    );
    assert_eq!(
        state
            .create_partitions("t", 5, &live[..1])
            .unwrap_err()
            .code(),
        38
    );
    let records = state.create_partitions("t", 5, &live).unwrap();
    assert_eq!(records.len(), 3);
    apply_all(&mut state, &records);
    let topic = state.topic("t").unwrap();
    assert_eq!(topic.partitions.len(), 5);
    let start = topic.partitions[0].leader.0;
    for (p, partition) in topic.partitions.iter().enumerate() {
        assert_eq!(partition.leader, BrokerId((start + p as i32) % 3));
        assert_eq!(partition.replicas.len(), 2);
    }
}

/// DeleteTopics removes the topic; its name is free again; unknown names and ids fail.
#[test]
fn delete_topic_by_name_and_id() {
    let mut state = state_with_topic("t", 2, 1);
    assert_eq!(state.delete_topic("x").unwrap_err().code(), 3);
    assert_eq!(state.delete_topic_by_id(id(7)).unwrap_err().code(), 100);
    let by_id = state.delete_topic_by_id(id(1)).unwrap();
    assert_eq!(state.delete_topic("t").unwrap(), by_id);
    apply_all(&mut state, &by_id);
    assert!(state.topic("t").is_none());
    assert_eq!(state.topic_count(), 0);
    let again = state
        .create_topic(
            &new_topic("t", 1, 1, id(2)),
            &brokers(1),
            &TopicDefaults::default(),
        )
        .unwrap();
    apply_all(&mut state, &again);
    assert_eq!(state.topic("t").unwrap().id, id(2));
}

fn op(key: &str, op: AlterOp, value: Option<&str>) -> AlterConfigOp {
    AlterConfigOp {
        key: key.into(),
        op,
        value: value.map(String::from),
    }
}

/// IncrementalAlterConfigs: SET, DELETE, APPEND and SUBTRACT (LIST keys only), with Kafka's
/// errors. Reference: KRaft ConfigurationControlManager.incrementalAlterConfigResource.
#[test]
fn incremental_alter_configs_like_kafka() {
    let mut state = state_with_topic("t", 1, 1);
    let alter =
        |state: &MetadataState, ops: &[AlterConfigOp]| state.incremental_alter_configs("t", ops);
    let records = alter(
        &state,
        &[
            op("retention.ms", AlterOp::Set, Some("1000")),
            op("cleanup.policy", AlterOp::Append, Some("compact")),
        ],
    )
    .unwrap();
    assert_eq!(records.len(), 2);
    apply_all(&mut state, &records);
    let config = state.topic_config("t").unwrap();
    assert_eq!(config.retention_ms(), 1000);
    assert_eq!(
        config.cleanup_policy(),
        CleanupPolicy {
            delete: true,
            compact: true
        }
    );
    assert_eq!(config.overrides()["cleanup.policy"], "delete,compact");
    // Setting what is already set changes nothing.
    assert!(
        alter(&state, &[op("retention.ms", AlterOp::Set, Some("1000"))])
            .unwrap()
            .is_empty()
    );
    let records = alter(
        &state,
        &[
            op("cleanup.policy", AlterOp::Subtract, Some("delete")),
            op("retention.ms", AlterOp::Delete, None),
        ],
    )
    .unwrap();
    apply_all(&mut state, &records);
    let config = state.topic_config("t").unwrap();
    assert_eq!(config.retention_ms(), 604_800_000);
    assert_eq!(config.overrides().get("retention.ms"), None);
    assert_eq!(config.overrides()["cleanup.policy"], "compact");

    let code = |ops: &[AlterConfigOp]| alter(&state, ops).unwrap_err().code();
    assert_eq!(code(&[op("segment.ms", AlterOp::Append, Some("5"))]), 40);
    assert_eq!(code(&[op("no.such", AlterOp::Set, Some("5"))]), 40);
    assert_eq!(code(&[op("no.such", AlterOp::Delete, None)]), 40);
    assert_eq!(code(&[op("segment.bytes", AlterOp::Set, Some("13"))]), 40);
    assert_eq!(
        code(&[op("cleanup.policy", AlterOp::Subtract, Some("compact"))]),
        40,
        "an empty cleanup.policy"
    );
    assert_eq!(code(&[op("segment.ms", AlterOp::Set, None)]), 42);
    assert_eq!(
        code(&[
            op("segment.ms", AlterOp::Set, Some("5")),
            op("segment.ms", AlterOp::Delete, None)
        ]),
        42
    );
    assert_eq!(
        state
            .incremental_alter_configs("x", &[op("segment.ms", AlterOp::Set, Some("5"))])
            .unwrap_err()
            .code(),
        3
    );
    assert_eq!(AlterOp::from_code(3), Some(AlterOp::Subtract));
    assert_eq!(AlterOp::from_code(4), None);
}

/// Topic configs: Kafka's names, defaults and validators (LogConfig), DescribeConfigs sources.
#[test]
fn topic_config_defaults_validation_and_describe() {
    let default = TopicConfig::default();
    assert_eq!(default.retention_ms(), 604_800_000);
    assert_eq!(default.retention_bytes(), -1);
    assert_eq!(default.segment_bytes(), 1_073_741_824);
    assert_eq!(default.segment_ms(), 604_800_000);
    assert_eq!(default.max_message_bytes(), 1_048_588);
    assert_eq!(default.min_insync_replicas(), 1);
    assert_eq!(
        default.cleanup_policy(),
        CleanupPolicy {
            delete: true,
            compact: false
        }
    );
    assert_eq!(default.message_timestamp_type(), TimestampType::CreateTime);
    for (key, value, ok) in [
        ("retention.ms", "-1", true),
        ("retention.ms", "-2", false),
        ("retention.ms", "1e3", false),
        ("retention.ms", " 5 ", true),
        ("retention.bytes", "-5", true),
        ("segment.bytes", "14", true),
        ("segment.bytes", "13", false),
        ("segment.bytes", "2147483648", false),
        ("segment.ms", "0", false),
        ("segment.ms", "1", true),
        ("max.message.bytes", "0", true),
        ("max.message.bytes", "-1", false),
        ("min.insync.replicas", "0", false),
        ("min.insync.replicas", "2", true),
        ("cleanup.policy", "compact", true),
        ("cleanup.policy", "compact, delete", true),
        ("cleanup.policy", "delete,compact", true),
        ("cleanup.policy", "", false),
        ("cleanup.policy", "compact,nothing", false),
        ("message.timestamp.type", "LogAppendTime", true),
        ("message.timestamp.type", "logappendtime", false),
        ("compression.type", "lz4", true),
        ("compression.type", "uncompressed", true),
        ("compression.type", "producer", true),
        ("compression.type", "none", false),
        ("compression.gzip.level", "-1", true),
        ("compression.gzip.level", "0", false),
        ("compression.gzip.level", "10", false),
        ("compression.lz4.level", "17", true),
        ("compression.lz4.level", "18", false),
        ("compression.zstd.level", "-131072", true),
        ("compression.zstd.level", "23", false),
        ("message.timestamp.after.max.ms", "0", true),
        ("message.timestamp.before.max.ms", "-1", false),
        ("segment.jitter.ms", "100", true),
        ("index.interval.bytes", "-1", false),
        // Accepted and stored, with Kafka's bounds.
        ("flush.messages", "1", true),
        ("flush.messages", "0", false),
        ("preallocate", "TRUE", true),
        ("preallocate", "yes", false),
        ("segment.index.bytes", "3", false),
        ("local.retention.ms", "-2", true),
        ("local.retention.ms", "-3", false),
        ("leader.replication.throttled.replicas", "*", true),
        ("leader.replication.throttled.replicas", "0:1, 1:2", true),
        ("leader.replication.throttled.replicas", "0-1", false),
        ("follower.replication.throttled.replicas", "", true),
        // keel has no tiered storage: asking for it is refused.
        ("remote.storage.enable", "false", true),
        ("remote.storage.enable", "true", false),
        ("no.such.config", "1", false),
    ] {
        assert_eq!(
            TopicConfig::validate(key, value).is_ok(),
            ok,
            "{key}={value:?}"
        );
    }
    let overrides = BTreeMap::from([
        ("retention.ms".to_string(), "1000".to_string()),
        ("segment.bytes".to_string(), "4096".to_string()),
        (
            "message.timestamp.type".to_string(),
            "LogAppendTime".to_string(),
        ),
    ]);
    let config = TopicConfig::from_map(&overrides).unwrap();
    let described = config.describe();
    // Kafka 4.1's 34 topic configs.
    assert_eq!(described.len(), config::keys().len());
    assert_eq!(described.len(), 34);
    let names: Vec<&str> = described.iter().map(|e| e.name).collect();
    assert!(names.windows(2).all(|w| w[0] < w[1]), "sorted by name");
    let entry = |name: &str| described.iter().find(|e| e.name == name).unwrap().clone();
    assert_eq!(entry("retention.ms").value, "1000");
    assert_eq!(entry("retention.ms").source, ConfigSource::Topic);
    assert_eq!(entry("retention.ms").source.code(), 1);
    assert_eq!(entry("retention.ms").config_type.code(), 5);
    assert_eq!(entry("retention.bytes").value, "-1");
    assert_eq!(entry("retention.bytes").source, ConfigSource::Default);
    assert_eq!(entry("retention.bytes").source.code(), 5);
    assert_eq!(entry("cleanup.policy").value, "delete");
    assert_eq!(entry("cleanup.policy").config_type.code(), 7);
    assert_eq!(entry("max.message.bytes").value, "1048588");
    // Kafka 4.0's defaults for the timestamp bounds, and the stored-only keys' defaults.
    assert_eq!(entry("message.timestamp.after.max.ms").value, "3600000");
    assert_eq!(
        entry("message.timestamp.before.max.ms").value,
        "9223372036854775807"
    );
    assert_eq!(entry("compression.type").value, "producer");
    assert_eq!(
        entry("flush.messages").config_type,
        config::ConfigType::Long
    );
    assert_eq!(entry("preallocate").value, "false");
    assert_eq!(entry("preallocate").config_type.code(), 1);
    assert_eq!(entry("local.retention.bytes").value, "-2");
    assert_eq!(entry("message.downconversion.enable").value, "true");
    let stored = TopicConfig::from_map(&BTreeMap::from([
        ("preallocate".to_string(), "true".to_string()),
        ("compression.type".to_string(), "zstd".to_string()),
        ("compression.zstd.level".to_string(), "7".to_string()),
        (
            "message.timestamp.before.max.ms".to_string(),
            "1000".to_string(),
        ),
    ]))
    .unwrap();
    let described = stored.describe();
    let entry = |name: &str| described.iter().find(|e| e.name == name).unwrap().clone();
    assert_eq!(
        (entry("preallocate").value, entry("preallocate").source),
        ("true".to_string(), ConfigSource::Topic)
    );
    assert_eq!(
        stored.compression(),
        Some((crate::batch::Compression::Zstd, 7))
    );
    assert_eq!(stored.timestamp_bounds_ms(), (1000, 3_600_000));
    assert_eq!(TopicConfig::default().compression(), None);
    assert!(config::is_honoured("compression.type") && !config::is_honoured("preallocate"));
    let log = config.to_log_config();
    assert_eq!(log.retention_ms_max, 1000);
    assert_eq!(log.segment_bytes_max, 4096);
    assert_eq!(log.retention_bytes_max, -1);
    assert_eq!(log.segment_ms_max, 604_800_000);
    assert_eq!(
        TopicConfig::default().to_log_config(),
        crate::log::LogConfig::default()
    );
}

/// Producer ids come in blocks of 1000, to a registered broker at its current epoch.
/// Reference: KRaft ProducerIdControlManager.generateNextProducerId.
#[test]
fn producer_id_blocks_of_1000() {
    let mut state = MetadataState::new();
    assert_eq!(
        state
            .allocate_producer_ids(BrokerId(0), 1)
            .unwrap_err()
            .code(),
        77
    );
    let (epoch, records) = state
        .register_broker(&registration(0, 1), UncleanElection::Disabled)
        .unwrap();
    apply_all(&mut state, &records);
    assert_eq!(
        state
            .allocate_producer_ids(BrokerId(0), epoch + 1)
            .unwrap_err()
            .code(),
        77
    );
    let mut expected_first = 0;
    for _ in 0..3 {
        let (block, records) = state.allocate_producer_ids(BrokerId(0), epoch).unwrap();
        assert_eq!(block.first, ProducerId(expected_first));
        assert_eq!(block.last(), ProducerId(expected_first + 999));
        apply_all(&mut state, &records);
        expected_first += PRODUCER_ID_BLOCK_SIZE;
        assert_eq!(state.next_producer_id(), ProducerId(expected_first));
    }
    // Exhaustion is an error, not an overflow. (The counter is restored as a snapshot does.)
    let mut near_end = MetadataState::new();
    near_end
        .apply(
            &ProducerIdsRecord {
                broker_id: -1,
                broker_epoch: -1,
                next_producer_id: i64::MAX - 10,
            }
            .into(),
        )
        .unwrap();
    let (epoch, records) = near_end
        .register_broker(&registration(0, 1), UncleanElection::Disabled)
        .unwrap();
    apply_all(&mut near_end, &records);
    assert_eq!(
        near_end
            .allocate_producer_ids(BrokerId(0), epoch)
            .unwrap_err()
            .code(),
        -1
    );
}

/// Registration gives each registration a larger broker epoch; re-registering replaces the old
/// registration. Every registration is fenced until a heartbeat unfences it.
/// Reference: KRaft ClusterControlManager.registerBroker (epochs only grow; brokers register
/// fenced); KIP-631.
#[test]
fn broker_registration_epochs_grow() {
    let mut state = MetadataState::new();
    let register = |state: &MetadataState, r: &BrokerRegistration| {
        state.register_broker(r, UncleanElection::Disabled)
    };
    let (e0, r) = register(&state, &registration(0, 1)).unwrap();
    apply_all(&mut state, &r);
    let (e1, r) = register(&state, &registration(1, 2)).unwrap();
    apply_all(&mut state, &r);
    let (e0b, r) = register(&state, &registration(0, 3)).unwrap();
    assert_eq!(
        r.len(),
        1,
        "a fenced registration is replaced without a fence"
    );
    apply_all(&mut state, &r);
    assert!(e0 < e1 && e1 < e0b);
    assert_eq!(state.broker(BrokerId(0)).unwrap().epoch, e0b);
    assert_eq!(state.broker(BrokerId(0)).unwrap().incarnation_id, [3; 16]);
    assert!(state.brokers().all(|b| b.fenced), "registered fenced");
    assert_eq!(state.live_brokers(), vec![]);
    assert_eq!(
        register(&state, &registration(-1, 1)).unwrap_err().code(),
        42
    );
    let mut bad_port = registration(2, 1);
    bad_port.endpoints[0].port = 70000;
    assert_eq!(register(&state, &bad_port).unwrap_err().code(), 42);
    // Replaying an old registration is rejected: epochs never go back.
    let stale = state.clone();
    assert!(state.apply(&r[0]).is_err());
    assert_eq!(state, stale);
}

/// apply is total: records that do not fit are refused with an error and change nothing.
#[test]
fn apply_rejects_inapplicable_records_without_change() {
    let state = state_with_topic("t", 2, 2);
    let tid = id(1).0.to_vec();
    let partition = |p: i32, replicas: Vec<i32>, isr: Vec<i32>, leader: i32, epoch: i32| {
        MetadataRecord::from(PartitionRecord {
            topic_id: tid.clone(),
            partition: p,
            replicas,
            isr,
            leader,
            leader_epoch: epoch,
            partition_epoch: epoch,
            elr: Vec::new(),
            adding: Vec::new(),
            removing: Vec::new(),
        })
    };
    let bad: Vec<MetadataRecord> = vec![
        MetadataRecord { record: None },
        TopicRecord {
            name: "t".into(),
            topic_id: id(5).0.to_vec(),
            configs: BTreeMap::new(),
        }
        .into(),
        TopicRecord {
            name: "u".into(),
            topic_id: tid.clone(),
            configs: BTreeMap::new(),
        }
        .into(),
        TopicRecord {
            name: "u".into(),
            topic_id: vec![1, 2, 3],
            configs: BTreeMap::new(),
        }
        .into(),
        TopicRecord {
            name: "bad name".into(),
            topic_id: id(5).0.to_vec(),
            configs: BTreeMap::new(),
        }
        .into(),
        TopicRecord {
            name: "u".into(),
            topic_id: id(5).0.to_vec(),
            configs: BTreeMap::from([("segment.bytes".into(), "1".into())]),
        }
        .into(),
        partition(3, vec![0], vec![0], 0, 0),
        partition(-1, vec![0], vec![0], 0, 0),
        partition(2, vec![], vec![], -1, 0),
        partition(2, vec![0, 0], vec![0], 0, 0),
        partition(2, vec![0, 1], vec![2], -1, 0),
        partition(2, vec![0, 1], vec![0], 1, 0),
        partition(2, vec![-3], vec![], -1, 0),
        partition(2, vec![0], vec![0], 0, -1),
        RemoveTopicRecord {
            topic_id: id(9).0.to_vec(),
        }
        .into(),
        TopicConfigRecord {
            topic_id: tid.clone(),
            key: "nope".into(),
            value: Some("1".into()),
        }
        .into(),
        TopicConfigRecord {
            topic_id: tid.clone(),
            key: "retention.ms".into(),
            value: Some("x".into()),
        }
        .into(),
        ProducerIdsRecord {
            broker_id: 0,
            broker_epoch: 0,
            next_producer_id: -1,
        }
        .into(),
        RegisterBrokerRecord {
            broker_id: 0,
            incarnation_id: vec![0; 3],
            broker_epoch: 1,
            endpoints: vec![],
            rack: None,
            fenced: false,
        }
        .into(),
    ];
    for record in &bad {
        let mut s = state.clone();
        assert!(s.apply(record).is_err(), "{record:?}");
        assert_eq!(s, state, "{record:?} changed the state");
    }
}

/// A partition record only adds a partition: one for an index that exists is refused, even with
/// newer epochs, so that a CreatePartitions computed from a stale state cannot overwrite the
/// partition another one added meanwhile (changes come as PartitionChange records).
/// Reference: KRaft ReplicationControlManager.replay(PartitionRecord) (new partitions only).
#[test]
fn stale_create_partitions_cannot_overwrite_a_new_partition() {
    let mut state = state_with_topic("t", 2, 1);
    let first = state.create_partitions("t", 3, &brokers(3)).unwrap();
    let second = state.create_partitions("t", 4, &brokers(3)[1..]).unwrap();
    apply_all(&mut state, &first);
    let before = state.clone();
    assert_eq!(
        state.apply(&second[0]),
        Err(ApplyError::InvalidPartition(
            "partition 2 already exists".into()
        ))
    );
    assert_eq!(state, before);
    let tid = id(1).0.to_vec();
    let newer = PartitionRecord {
        topic_id: tid,
        partition: 0,
        replicas: vec![0, 1, 2],
        isr: vec![0, 1],
        leader: 1,
        leader_epoch: 3,
        partition_epoch: 3,
        elr: Vec::new(),
        adding: Vec::new(),
        removing: Vec::new(),
    };
    assert!(state.apply(&newer.into()).is_err());
    assert_eq!(state, before);
}

/// Two AllocateProducerIds computed from the same state compute the same block: only the first
/// applies, so no two brokers ever hold the same ids. A block that skips ahead is refused too,
/// and a snapshot's restatement of the counter applies only to a state that handed out none.
/// Reference: KRaft ProducerIdControlManager (one block of 1000 per allocation).
#[test]
fn producer_ids_from_a_stale_state_apply_once() {
    let mut state = MetadataState::new();
    let e0 = register_unfenced(&mut state, 0, 1);
    let e1 = register_unfenced(&mut state, 1, 2);
    let (block0, first) = state.allocate_producer_ids(BrokerId(0), e0).unwrap();
    let (block1, second) = state.allocate_producer_ids(BrokerId(1), e1).unwrap();
    assert_eq!(block0, block1, "computed from the same state");
    apply_all(&mut state, &first);
    let before = state.clone();
    assert!(matches!(
        state.apply(&second[0]),
        Err(ApplyError::InvalidProducerIds(_))
    ));
    assert_eq!(state, before);
    let record = |broker_id: i32, next_producer_id: i64| {
        MetadataRecord::from(ProducerIdsRecord {
            broker_id,
            broker_epoch: e0,
            next_producer_id,
        })
    };
    for bad in [
        record(0, 3 * PRODUCER_ID_BLOCK_SIZE),
        record(0, PRODUCER_ID_BLOCK_SIZE + 1),
        record(0, PRODUCER_ID_BLOCK_SIZE),
        record(-1, 5 * PRODUCER_ID_BLOCK_SIZE),
    ] {
        assert!(state.apply(&bad).is_err(), "{bad:?}");
        assert_eq!(state, before);
    }
    state.apply(&record(1, 2 * PRODUCER_ID_BLOCK_SIZE)).unwrap();
    assert_eq!(
        state.next_producer_id(),
        ProducerId(2 * PRODUCER_ID_BLOCK_SIZE)
    );
    // A snapshot restores the counter on a fresh state (not below zero).
    let mut fresh = MetadataState::new();
    assert!(fresh.apply(&record(-1, -1)).is_err());
    fresh
        .apply(&record(-1, 7 * PRODUCER_ID_BLOCK_SIZE))
        .unwrap();
    assert_eq!(
        fresh.next_producer_id(),
        ProducerId(7 * PRODUCER_ID_BLOCK_SIZE)
    );
}

/// Broker epochs are unique across brokers: two registrations (of two brokers) computed from the
/// same state carry the same epoch, and only the first applies. A registration computed while
/// the broker was fenced does not apply once it is unfenced: it would replace the live
/// registration without the fence that takes leadership away from the old incarnation.
/// Reference: KRaft ClusterControlManager (broker epochs are the offsets of the registration
/// records, so unique and growing); KIP-631.
#[test]
fn registrations_from_a_stale_state_apply_once() {
    let mut state = MetadataState::new();
    let (e0, first) = state
        .register_broker(&registration(0, 1), UncleanElection::Disabled)
        .unwrap();
    let (e1, second) = state
        .register_broker(&registration(1, 2), UncleanElection::Disabled)
        .unwrap();
    assert_eq!(e0, e1, "computed from the same state");
    apply_all(&mut state, &first);
    let before = state.clone();
    assert!(matches!(
        state.apply(&second[0]),
        Err(ApplyError::InvalidBroker(_))
    ));
    assert_eq!(state, before);
    // Computed while broker 0 is fenced, applied after its heartbeat unfenced it.
    let (_, restart) = state
        .register_broker(&registration(0, 3), UncleanElection::Disabled)
        .unwrap();
    assert_eq!(restart.len(), 1);
    let records = state
        .unfence_broker(BrokerId(0), e0, UncleanElection::Disabled)
        .unwrap();
    apply_all(&mut state, &records);
    let before = state.clone();
    assert!(matches!(
        state.apply(&restart[0]),
        Err(ApplyError::InvalidBroker(_))
    ));
    assert_eq!(state, before);
    // Recomputed on the current state, it fences the old registration first and applies.
    let (e0b, restart) = state
        .register_broker(&registration(0, 3), UncleanElection::Disabled)
        .unwrap();
    assert!(matches!(
        &restart[0].record,
        Some(Record::FenceBroker(f)) if f.broker_id == 0 && f.broker_epoch == e0
    ));
    apply_all(&mut state, &restart);
    let broker = state.broker(BrokerId(0)).unwrap();
    assert_eq!((broker.epoch, broker.fenced), (e0b, true));
}

/// A snapshot rebuilds a state whose broker epochs are not in broker id order (broker 0
/// registered again after broker 1) and whose producer-id counter moved: the registrations are
/// restated in epoch order and the counter is restored, not allocated.
/// Reference: `quorum::snapshot` (the records rebuild the state exactly).
#[test]
fn snapshot_rebuilds_reregistered_brokers_and_the_producer_id_counter() {
    use crate::quorum::snapshot::{decode_state, encode_state};

    let mut state = MetadataState::new();
    register_unfenced(&mut state, 0, 1);
    let e1 = register_unfenced(&mut state, 1, 2);
    register_unfenced(&mut state, 0, 3);
    let (_, records) = state.allocate_producer_ids(BrokerId(1), e1).unwrap();
    apply_all(&mut state, &records);
    assert!(state.broker(BrokerId(0)).unwrap().epoch > e1);
    let bytes = encode_state(&state);
    assert_eq!(decode_state(&bytes).as_ref(), Ok(&state));
}

/// A broker that registers again while its old registration is live (a restart inside its
/// session) loses leadership first, in the same command: each partition it led elects the next
/// ISR member with a bumped leader epoch; then it is registered fenced at a new broker epoch.
/// Unlike KRaft, it stays in every ISR: keel acknowledges only writes every ISR member synced,
/// so a restart loses nothing committed (KIP-966's eligible leader replicas give Kafka the same
/// guarantee). Reference: KRaft ReplicationControlManager.handleBrokerFenced and
/// PartitionChangeBuilder (a leader change bumps the leader epoch); KIP-631.
#[test]
fn reregistering_a_live_broker_moves_its_leadership_to_the_isr() {
    let mut state = MetadataState::new();
    for n in 0..3 {
        register_unfenced(&mut state, n, n as u8);
    }
    let records = state
        .create_topic(
            &new_topic("t", 3, 3, id(1)),
            &state.live_brokers(),
            &TopicDefaults::default(),
        )
        .unwrap();
    apply_all(&mut state, &records);
    let before: Vec<Partition> = state.topic("t").unwrap().partitions.clone();
    let restarted = before[0].leader;
    let old_epoch = state.broker(restarted).unwrap().epoch;
    let (epoch, records) = state
        .register_broker(&registration(restarted.0, 9), UncleanElection::Disabled)
        .unwrap();
    assert!(matches!(
        records.first().and_then(|r| r.record.as_ref()),
        Some(Record::FenceBroker(f)) if f.broker_epoch == old_epoch
    ));
    assert!(matches!(
        records.last().and_then(|r| r.record.as_ref()),
        Some(Record::RegisterBroker(r)) if r.fenced && r.broker_epoch == epoch
    ));
    apply_all(&mut state, &records);
    let broker = state.broker(restarted).unwrap();
    assert_eq!((broker.epoch, broker.fenced), (epoch, true));
    assert!(epoch > old_epoch);
    for (p, old) in before.iter().enumerate() {
        let new = &state.topic("t").unwrap().partitions[p];
        assert_eq!(new.isr, old.isr, "p{p}: it stays in the ISR");
        assert_ne!(new.leader, restarted, "p{p}");
        if old.leader == restarted {
            let next = *old.replicas.iter().find(|r| **r != restarted).unwrap();
            assert_eq!(new.leader, next, "p{p}: the next ISR member leads");
            assert_eq!(
                new.leader_epoch,
                LeaderEpoch(old.leader_epoch.0 + 1),
                "p{p}"
            );
        } else {
            assert_eq!(new.leader, old.leader, "p{p}");
            assert_eq!(new.leader_epoch, old.leader_epoch, "p{p}");
        }
    }
}

/// A partition whose only ISR member restarts and registers again goes leaderless (its leader
/// epoch bumps); once the broker's heartbeat shows it caught up, the controller unfences it and
/// it leads again, at a leader epoch above any it led before the restart. Reference: KIP-631
/// (BrokerHeartbeat unfences a caught-up broker); KRaft ReplicationControlManager
/// .handleBrokerUnfenced; Kafka's leader epoch (KIP-101) never repeats for a new leadership.
#[test]
fn sole_isr_partition_returns_to_the_restarted_broker_at_a_higher_epoch() {
    use crate::quorum::sessions::{BrokerSessions, Heartbeat};

    let mut state = MetadataState::new();
    register_unfenced(&mut state, 0, 1);
    let records = state
        .create_topic(
            &new_topic("t", 1, 1, id(1)),
            &state.live_brokers(),
            &TopicDefaults::default(),
        )
        .unwrap();
    apply_all(&mut state, &records);
    let before = state.partition("t", 0).unwrap().clone();
    assert_eq!(before.leader, BrokerId(0));
    let (epoch, records) = state
        .register_broker(&registration(0, 2), UncleanElection::Disabled)
        .unwrap();
    apply_all(&mut state, &records);
    let leaderless = state.partition("t", 0).unwrap().clone();
    assert_eq!(leaderless.leader, BrokerId::NONE);
    assert_eq!(
        leaderless.isr,
        vec![BrokerId(0)],
        "the last ISR member stays"
    );
    assert!(leaderless.leader_epoch > before.leader_epoch);

    let mut sessions = BrokerSessions::new(UncleanElection::Disabled);
    let heartbeat = |offset: u64| Heartbeat {
        broker_id: BrokerId(0),
        broker_epoch: epoch,
        metadata_offset: offset,
        want_fence: false,
        want_shut_down: false,
    };
    let reply = sessions.heartbeat(0, &heartbeat(7), &state, 10).unwrap();
    assert!(reply.is_fenced && !reply.is_caught_up && reply.records.is_empty());
    let reply = sessions
        .heartbeat(2_000, &heartbeat(10), &state, 11)
        .unwrap();
    assert!(reply.is_fenced && reply.is_caught_up);
    apply_all(&mut state, &reply.records);
    assert!(!state.broker(BrokerId(0)).unwrap().fenced);
    let after = state.partition("t", 0).unwrap();
    assert_eq!(after.leader, BrokerId(0));
    assert_eq!(after.isr, vec![BrokerId(0)]);
    assert_eq!(
        after.leader_epoch,
        LeaderEpoch(leaderless.leader_epoch.0 + 1)
    );
    assert!(after.leader_epoch > before.leader_epoch);
}

/// KIP-966's eligible leader replicas: with min.insync.replicas=2, a replica the leader shrinks
/// out of an ISR that then has fewer than 2 members joins the ELR (the high watermark cannot
/// move meanwhile, so it holds everything committed). When the last ISR member is fenced, a
/// live ELR member is elected and joins the ISR; an ISR back at min.insync.replicas empties the
/// ELR. With min.insync.replicas=1 nothing is eligible outside the ISR.
#[test]
fn eligible_leader_replicas_lead_when_the_isr_cannot() {
    for min_insync in [2, 1] {
        let mut state = MetadataState::new();
        for n in 0..3 {
            register_unfenced(&mut state, n, n as u8);
        }
        let mut topic = new_topic("t", 1, 3, id(1));
        topic
            .configs
            .insert("min.insync.replicas".into(), min_insync.to_string());
        let records = state
            .create_topic(&topic, &state.live_brokers(), &TopicDefaults::default())
            .unwrap();
        apply_all(&mut state, &records);
        let alter = |state: &mut MetadataState, isr: Vec<BrokerId>| {
            let p = state.partition("t", 0).unwrap().clone();
            let request = AlterPartitionRequest {
                broker_id: p.leader,
                broker_epoch: state.broker(p.leader).unwrap().epoch,
                topic_id: id(1),
                partition: 0,
                leader_epoch: p.leader_epoch,
                partition_epoch: p.partition_epoch,
                new_isr: isr,
            };
            let (next, records) = state.alter_partition(&request).unwrap();
            apply_all(state, &records);
            assert_eq!(state.partition("t", 0).unwrap(), &next);
        };
        let p = state.partition("t", 0).unwrap().clone();
        let (leader, second, third) = (p.replicas[0], p.replicas[1], p.replicas[2]);
        // Down to 2 members: still min.insync.replicas for both settings, no ELR.
        alter(&mut state, vec![leader, second]);
        assert!(state.partition("t", 0).unwrap().elr.is_empty());
        // Down to the leader alone.
        alter(&mut state, vec![leader]);
        let shrunk = state.partition("t", 0).unwrap().clone();
        if min_insync == 2 {
            assert_eq!(shrunk.elr, vec![second], "left below min.insync.replicas");
        } else {
            assert!(shrunk.elr.is_empty());
        }
        // The leader is fenced: the ELR member leads (min.insync 2), or no one does.
        let records = state
            .fence_broker(leader, UncleanElection::Disabled)
            .unwrap();
        apply_all(&mut state, &records);
        let after = state.partition("t", 0).unwrap().clone();
        if min_insync == 2 {
            assert_eq!(after.leader, second, "{after:?}");
            assert_eq!(after.isr, vec![leader, second]);
            assert!(after.leader_epoch > shrunk.leader_epoch);
            assert!(after.elr.is_empty(), "the ISR is back at 2: {after:?}");
        } else {
            assert_eq!(after.leader, BrokerId::NONE, "{after:?}");
            assert_eq!(after.isr, vec![leader]);
        }
        assert!(!after.isr.contains(&third) && !after.elr.contains(&third));
    }
}

/// KIP-966: with no live ISR member, only a *live* eligible leader replica may be elected; a
/// fenced one would lead from a broker that is down, and the partition would stay offline
/// while a later live one could have been chosen. Pins sim/mutants' `elect-dead-elr-member`,
/// which the simulator does not reach in 200 seeds (it needs the last ISR member fenced while
/// every ELR member is fenced too, and then the ELR member's broker to stay down).
#[test]
fn a_fenced_eligible_leader_replica_is_not_elected() {
    let mut state = MetadataState::new();
    for n in 0..3 {
        register_unfenced(&mut state, n, n as u8);
    }
    let mut topic = new_topic("t", 1, 3, id(1));
    topic
        .configs
        .insert("min.insync.replicas".into(), "2".into());
    let records = state
        .create_topic(&topic, &state.live_brokers(), &TopicDefaults::default())
        .unwrap();
    apply_all(&mut state, &records);
    let p = state.partition("t", 0).unwrap().clone();
    let (leader, second, third) = (p.replicas[0], p.replicas[1], p.replicas[2]);
    let request = AlterPartitionRequest {
        broker_id: leader,
        broker_epoch: state.broker(leader).unwrap().epoch,
        topic_id: id(1),
        partition: 0,
        leader_epoch: p.leader_epoch,
        partition_epoch: p.partition_epoch,
        new_isr: vec![leader],
    };
    let (_, records) = state.alter_partition(&request).unwrap();
    apply_all(&mut state, &records);
    let shrunk = state.partition("t", 0).unwrap().clone();
    assert!(shrunk.elr.contains(&second) && shrunk.elr.contains(&third));
    for b in [second, third, leader] {
        let records = state.fence_broker(b, UncleanElection::Disabled).unwrap();
        apply_all(&mut state, &records);
    }
    let after = state.partition("t", 0).unwrap();
    assert_eq!(after.leader, BrokerId::NONE, "{after:?}");
}

/// KIP-497: an AlterPartition is based on the partition epoch it read; one based on any
/// older epoch (here, the one just before the current) is refused with
/// INVALID_UPDATE_VERSION and changes nothing. Pins sim/mutants' `alter-partition-stale-
/// partition-epoch`, which the simulator cannot see: a leader has one proposal in flight and
/// learns every committed state before proposing again, so it never sends a stale one.
#[test]
fn alter_partition_based_on_an_older_partition_epoch_is_refused() {
    let mut state = MetadataState::new();
    for n in 0..3 {
        register_unfenced(&mut state, n, n as u8);
    }
    let records = state
        .create_topic(
            &new_topic("t", 1, 3, id(1)),
            &state.live_brokers(),
            &TopicDefaults::default(),
        )
        .unwrap();
    apply_all(&mut state, &records);
    let request = |state: &MetadataState, partition_epoch: i32, isr: Vec<BrokerId>| {
        let p = state.partition("t", 0).unwrap();
        AlterPartitionRequest {
            broker_id: p.leader,
            broker_epoch: state.broker(p.leader).unwrap().epoch,
            topic_id: id(1),
            partition: 0,
            leader_epoch: p.leader_epoch,
            partition_epoch,
            new_isr: isr,
        }
    };
    let p = state.partition("t", 0).unwrap().clone();
    let shrunk = vec![p.replicas[0], p.replicas[1]];
    let (_, records) = state
        .alter_partition(&request(&state, p.partition_epoch, shrunk))
        .unwrap();
    apply_all(&mut state, &records);
    let current = state.partition("t", 0).unwrap().clone();
    assert_eq!(current.partition_epoch, p.partition_epoch + 1);
    let stale = request(&state, p.partition_epoch, p.replicas.clone());
    let err = state.alter_partition(&stale).unwrap_err();
    assert_eq!(err.code(), 95, "INVALID_UPDATE_VERSION: {err:?}");
    assert_eq!(state.partition("t", 0).unwrap(), &current);
}

/// The error codes are Kafka's (checked against kafka-protocol's table, from Errors.java).
#[test]
fn error_codes_match_kafka() {
    use kafka_protocol::error::ResponseError as K;
    let m = String::new;
    let cases = [
        (
            ControllerError::UnknownServerError(m()),
            K::UnknownServerError,
        ),
        (
            ControllerError::UnknownTopicOrPartition(m()),
            K::UnknownTopicOrPartition,
        ),
        (ControllerError::InvalidTopic(m()), K::InvalidTopicException),
        (
            ControllerError::TopicAlreadyExists(m()),
            K::TopicAlreadyExists,
        ),
        (
            ControllerError::InvalidPartitions(m()),
            K::InvalidPartitions,
        ),
        (
            ControllerError::InvalidReplicationFactor(m()),
            K::InvalidReplicationFactor,
        ),
        (ControllerError::InvalidConfig(m()), K::InvalidConfig),
        (ControllerError::InvalidRequest(m()), K::InvalidRequest),
        (ControllerError::PolicyViolation(m()), K::PolicyViolation),
        (ControllerError::StaleBrokerEpoch(m()), K::StaleBrokerEpoch),
        (ControllerError::UnknownTopicId(m()), K::UnknownTopicId),
    ];
    for (ours, kafka) in cases {
        assert_eq!(ours.code(), kafka.code(), "{ours:?}");
    }
}

#[test]
fn topic_id_displays_as_kafka_base64() {
    // Kafka's Uuid.toString of new Uuid(0, 1) is "AAAAAAAAAAAAAAAAAAAAAQ".
    let mut one = [0u8; 16];
    one[15] = 1;
    assert_eq!(TopicId(one).to_string(), "AAAAAAAAAAAAAAAAAAAAAQ");
    assert_eq!(TopicId([0xff; 16]).to_string(), "_____________________w");
    assert_eq!(TopicId::from_slice(&[0; 16]), None);
    assert_eq!(TopicId::from_slice(&one[..15]), None);
}

// --- The store -----------------------------------------------------------------------------

fn open(storage: MemStorage) -> (MetadataStore<MemStorage>, MetadataState, OpenReport) {
    MetadataStore::open(storage).expect("open")
}

/// A fixed script of commands against a store: registers brokers, creates, alters, grows and
/// deletes topics, allocates producer ids. Returns the state after each commit.
fn run_script(
    store: &mut MetadataStore<MemStorage>,
    state: &mut MetadataState,
) -> Vec<MetadataState> {
    let mut states = Vec::new();
    let mut commit = |store: &mut MetadataStore<MemStorage>,
                      state: &mut MetadataState,
                      records: Vec<MetadataRecord>| {
        store.commit(state, &records).unwrap();
        state.check_invariants();
        states.push(state.clone());
    };
    for b in 0..3 {
        let (epoch, r) = state
            .register_broker(&registration(b, b as u8), UncleanElection::Disabled)
            .unwrap();
        commit(store, state, r);
        let r = state
            .unfence_broker(BrokerId(b), epoch, UncleanElection::Disabled)
            .unwrap();
        commit(store, state, r);
    }
    let live = state.live_brokers();
    for i in 0..4u8 {
        let r = state
            .create_topic(
                &new_topic(&format!("topic-{i}"), 1 + i as i32, 2, id(10 + i)),
                &live,
                &TopicDefaults::default(),
            )
            .unwrap();
        commit(store, state, r);
    }
    let r = state
        .incremental_alter_configs(
            "topic-1",
            &[op("retention.ms", AlterOp::Set, Some("60000"))],
        )
        .unwrap();
    commit(store, state, r);
    let r = state.create_partitions("topic-2", 6, &live).unwrap();
    commit(store, state, r);
    let r = state.delete_topic("topic-0").unwrap();
    commit(store, state, r);
    let epoch = state.broker(BrokerId(1)).unwrap().epoch;
    let (_, r) = state.allocate_producer_ids(BrokerId(1), epoch).unwrap();
    commit(store, state, r);
    states
}

/// Every committed command survives every crash: the replayed state equals the live one.
#[test]
fn committed_records_survive_every_crash() {
    for seed in 0..100 {
        let mut rng = StdRng::seed_from_u64(seed);
        let (mut store, mut state, report) = open(MemStorage::new());
        assert_eq!(report, OpenReport::default());
        run_script(&mut store, &mut state);
        let frames = store.frames();
        let mut storage = store.into_storage();
        storage.crash(&mut rng);
        let (store, replayed, report) = open(storage);
        assert_eq!(replayed, state, "seed {seed}");
        assert_eq!(report.frames, frames);
        assert_eq!(report.truncated, None);
        assert!(report.rejected.is_empty());
        assert_eq!(store.frames(), frames);
    }
}

/// A frame cut anywhere (a torn write) never applies: the state is the one before it, the tail
/// is truncated durably and reported, and the next command lands after the last good frame.
#[test]
fn half_written_frame_never_applies() {
    let (mut store, mut state, _) = open(MemStorage::new());
    let states = run_script(&mut store, &mut state);
    let good_len = store.len_bytes();
    let records = state.delete_topic("topic-3").unwrap();
    let payload = MetadataBatch {
        records: records.clone(),
    }
    .encode_to_vec();
    let mut frame = (payload.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&crc32c::crc32c(&payload).to_be_bytes());
    frame.extend_from_slice(&payload);
    let base = store.into_storage();
    for cut in 1..frame.len() {
        let mut storage = base.clone();
        storage.append(METADATA_LOG_FILE, &frame[..cut]).unwrap();
        storage.sync(METADATA_LOG_FILE).unwrap();
        let (mut store, mut replayed, report) = open(storage);
        assert_eq!(&replayed, states.last().unwrap(), "cut at {cut}");
        let tail = report.truncated.expect("reported");
        assert_eq!((tail.position, tail.bytes), (good_len, cut as u64));
        assert_eq!(store.storage().len(METADATA_LOG_FILE).unwrap(), good_len);
        // The next commit follows the good frames and survives.
        store.commit(&mut replayed, &records).unwrap();
        let (_, again, report) = open(store.into_storage());
        assert_eq!(again, replayed);
        assert_eq!(report.truncated, None);
    }
    // A zero-filled tail (space allocated, never written) is cut too.
    let mut storage = base.clone();
    storage.append(METADATA_LOG_FILE, &[0; 64]).unwrap();
    let (_, replayed, report) = open(storage);
    assert_eq!(&replayed, states.last().unwrap());
    assert!(report.truncated.is_some());
}

/// A flipped bit in a frame ends the log there: the frame and what follows do not apply.
#[test]
fn corrupt_frame_is_truncated_and_reported() {
    let (mut store, mut state, _) = open(MemStorage::new());
    let states = run_script(&mut store, &mut state);
    let mut storage = store.into_storage();
    let len = storage.len(METADATA_LOG_FILE).unwrap() as usize;
    storage.flip_bit(METADATA_LOG_FILE, len - 3, 4).unwrap();
    let (_, replayed, report) = open(storage);
    assert_eq!(&replayed, &states[states.len() - 2]);
    assert!(report.truncated.unwrap().reason.contains("CRC"));
}

/// A failed append (disk full) commits nothing, applies nothing, and leaves no partial frame.
#[test]
fn failed_append_commits_nothing() {
    let (mut store, mut state, _) = open(MemStorage::new());
    run_script(&mut store, &mut state);
    let before = state.clone();
    let mut storage = store.into_storage();
    storage.capacity_bytes = Some(storage.used_bytes() + 10);
    let (mut store, mut state, _) = open(storage);
    assert_eq!(state, before);
    let records = state
        .create_topic(
            &new_topic("big", 50, 1, id(99)),
            &state.live_brokers(),
            &TopicDefaults::default(),
        )
        .unwrap();
    assert!(store.commit(&mut state, &records).is_err());
    assert_eq!(state, before);
    let small = state.delete_topic("topic-1").unwrap();
    let mut storage = store.into_storage();
    storage.capacity_bytes = None;
    let (mut store, mut state, report) = open(storage);
    assert_eq!(report.truncated, None, "no partial frame left behind");
    store.commit(&mut state, &small).unwrap();
    let (_, replayed, _) = open(store.into_storage());
    assert_eq!(replayed, state);
}

// --- Properties ----------------------------------------------------------------------------

/// A command for the property test, with small domains so that commands collide.
#[derive(Clone, Debug)]
enum Cmd {
    Register {
        broker: i32,
        incarnation: u8,
    },
    Create {
        name: u8,
        partitions: i32,
        rf: i16,
        id: u8,
    },
    Delete {
        name: u8,
    },
    Grow {
        name: u8,
        total: i32,
    },
    Alter {
        name: u8,
        key: u8,
        op: u8,
        value: u8,
    },
    ProducerIds {
        broker: i32,
    },
    /// A heartbeat that unfences (at the broker's epoch, or one behind: a stale heartbeat).
    Unfence {
        broker: i32,
        stale: bool,
    },
    /// A session that expires.
    Fence {
        broker: i32,
    },
    Crash {
        seed: u64,
    },
}

const NAMES: [&str; 4] = ["a.b", "a_b", "c", "d-1"];
const ALTER_KEYS: [&str; 4] = ["retention.ms", "cleanup.policy", "segment.bytes", "nope"];
const ALTER_VALUES: [&str; 5] = ["1000", "compact", "delete", "10", "-7"];

fn cmd() -> impl Strategy<Value = Cmd> {
    prop_oneof![
        (0i32..4, any::<u8>()).prop_map(|(broker, incarnation)| Cmd::Register {
            broker,
            incarnation
        }),
        (0u8..4, -2i32..5, -1i16..4, 1u8..6).prop_map(|(name, partitions, rf, id)| {
            Cmd::Create {
                name,
                partitions,
                rf,
                id,
            }
        }),
        (0u8..4).prop_map(|name| Cmd::Delete { name }),
        (0u8..4, 0i32..8).prop_map(|(name, total)| Cmd::Grow { name, total }),
        (0u8..4, 0u8..4, 0u8..4, 0u8..5).prop_map(|(name, key, op, value)| Cmd::Alter {
            name,
            key,
            op,
            value
        }),
        (0i32..4).prop_map(|broker| Cmd::ProducerIds { broker }),
        (0i32..4, any::<bool>()).prop_map(|(broker, stale)| Cmd::Unfence { broker, stale }),
        (0i32..4).prop_map(|broker| Cmd::Fence { broker }),
        any::<u64>().prop_map(|seed| Cmd::Crash { seed }),
    ]
}

/// Runs one command against the state; the records if it succeeded.
fn run_cmd(state: &MetadataState, cmd: &Cmd) -> Option<Vec<MetadataRecord>> {
    let live = state.live_brokers();
    let result = match cmd {
        Cmd::Register {
            broker,
            incarnation,
        } => state
            .register_broker(
                &registration(*broker, *incarnation),
                UncleanElection::Disabled,
            )
            .map(|(_, r)| r),
        Cmd::Create {
            name,
            partitions,
            rf,
            id: n,
        } => state.create_topic(
            &new_topic(NAMES[*name as usize], *partitions, *rf, id(*n)),
            &live,
            &TopicDefaults::default(),
        ),
        Cmd::Delete { name } => state.delete_topic(NAMES[*name as usize]),
        Cmd::Grow { name, total } => state.create_partitions(NAMES[*name as usize], *total, &live),
        Cmd::Alter {
            name,
            key,
            op: o,
            value,
        } => state.incremental_alter_configs(
            NAMES[*name as usize],
            &[op(
                ALTER_KEYS[*key as usize],
                AlterOp::from_code(*o as i8).expect("0..4"),
                Some(ALTER_VALUES[*value as usize]),
            )],
        ),
        Cmd::ProducerIds { broker } => {
            let epoch = state.broker(BrokerId(*broker)).map_or(0, |b| b.epoch);
            state
                .allocate_producer_ids(BrokerId(*broker), epoch)
                .map(|(_, r)| r)
        }
        Cmd::Unfence { broker, stale } => {
            let epoch = state.broker(BrokerId(*broker)).map_or(0, |b| b.epoch);
            state.unfence_broker(
                BrokerId(*broker),
                epoch - i64::from(*stale),
                UncleanElection::Disabled,
            )
        }
        Cmd::Fence { broker } => state.fence_broker(BrokerId(*broker), UncleanElection::Disabled),
        Cmd::Crash { .. } => return None,
    };
    result.ok()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Random command sequences, committed through the store with crashes in between: the
    /// state replayed from the store always equals the live state, applying the same records
    /// to a fresh state gives the same state (determinism), and the invariants hold throughout.
    #[test]
    fn replayed_state_equals_live_state(cmds in proptest::collection::vec(cmd(), 1..60)) {
        let (mut store, mut state, _) = open(MemStorage::new());
        let mut all_records = Vec::new();
        for cmd in &cmds {
            if let Cmd::Crash { seed } = cmd {
                let mut storage = store.into_storage();
                storage.crash(&mut StdRng::seed_from_u64(*seed));
                let (reopened, replayed, report) = open(storage);
                prop_assert_eq!(&replayed, &state);
                prop_assert_eq!(report.truncated, None);
                store = reopened;
                continue;
            }
            if let Some(records) = run_cmd(&state, cmd) {
                store.commit(&mut state, &records).unwrap();
                all_records.extend(records);
            }
            state.check_invariants();
        }
        let mut fresh = MetadataState::new();
        for r in &all_records {
            fresh.apply(r).unwrap();
        }
        prop_assert_eq!(&fresh, &state);
        let (_, replayed, _) = open(store.into_storage());
        prop_assert_eq!(replayed, state);
    }

    /// apply never panics on a record decoded from arbitrary bytes, and never breaks an
    /// invariant.
    #[test]
    fn apply_is_total_on_arbitrary_records(
        blobs in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..20)
    ) {
        let mut state = state_with_topic("t", 2, 2);
        for blob in blobs {
            if let Ok(record) = MetadataRecord::decode(blob.as_slice()) {
                let before = state.clone();
                if state.apply(&record).is_err() {
                    prop_assert_eq!(&state, &before);
                }
                state.check_invariants();
            }
        }
    }

    /// The store's open never panics on arbitrary file contents.
    #[test]
    fn open_survives_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut storage = MemStorage::new();
        storage.create(METADATA_LOG_FILE).unwrap();
        storage.append(METADATA_LOG_FILE, &bytes).unwrap();
        let (_, state, _) = open(storage);
        state.check_invariants();
    }
}

/// KIP-903: a leader's ISR expansion names the broker epoch of the incarnation whose fetches
/// it judged; once that broker has registered again (it restarted, and its log may lack what
/// was acknowledged since), the expansion is INELIGIBLE_REPLICA and changes nothing. The
/// current epoch, or none known, passes; members already in the ISR are not checked.
/// Reference: KIP-903, ReplicationControlManager.validateAlterPartitionData (brokerEpoch).
#[test]
fn an_isr_expansion_judged_on_a_previous_incarnation_is_refused() {
    let mut state = MetadataState::new();
    for n in 0..3 {
        register_unfenced(&mut state, n, n as u8);
    }
    let records = state
        .create_topic(
            &new_topic("t", 1, 3, id(1)),
            &state.live_brokers(),
            &TopicDefaults::default(),
        )
        .unwrap();
    apply_all(&mut state, &records);
    let p = state.partition("t", 0).unwrap().clone();
    let out = p.replicas[2];
    let request = |state: &MetadataState, isr: Vec<BrokerId>| {
        let p = state.partition("t", 0).unwrap();
        AlterPartitionRequest {
            broker_id: p.leader,
            broker_epoch: state.broker(p.leader).unwrap().epoch,
            topic_id: id(1),
            partition: 0,
            leader_epoch: p.leader_epoch,
            partition_epoch: p.partition_epoch,
            new_isr: isr,
        }
    };
    // Shrink `out` away, remembering the epoch its fetches had.
    let judged_epoch = state.broker(out).unwrap().epoch;
    let shrunk: Vec<BrokerId> = p.isr.iter().copied().filter(|&b| b != out).collect();
    let (_, records) = state
        .alter_partition(&request(&state, shrunk.clone()))
        .unwrap();
    apply_all(&mut state, &records);
    // It restarts: a new registration, unfenced once caught up.
    register_unfenced(&mut state, out.0, 9);
    assert_ne!(state.broker(out).unwrap().epoch, judged_epoch);
    let before = state.partition("t", 0).unwrap().clone();
    let grown = p.replicas.clone();
    let epochs_of = |state: &MetadataState, stale: bool| -> Vec<i64> {
        grown
            .iter()
            .map(|&b| {
                if b == out && stale {
                    judged_epoch
                } else {
                    state.broker(b).unwrap().epoch
                }
            })
            .collect()
    };
    let err = state
        .alter_partition_with_epochs(&request(&state, grown.clone()), &epochs_of(&state, true))
        .unwrap_err();
    assert_eq!(err.code(), 107, "INELIGIBLE_REPLICA: {err:?}");
    assert_eq!(state.partition("t", 0).unwrap(), &before);
    // Unknown epochs (an older leader) and the current ones pass.
    let unknown = vec![-1; grown.len()];
    assert!(state
        .alter_partition_with_epochs(&request(&state, grown.clone()), &unknown)
        .is_ok());
    let (_, records) = state
        .alter_partition_with_epochs(&request(&state, grown.clone()), &epochs_of(&state, false))
        .unwrap();
    apply_all(&mut state, &records);
    assert_eq!(state.partition("t", 0).unwrap().isr.len(), 3);
    // A shrink naming a stale epoch for a member that stays is not refused.
    let smaller: Vec<BrokerId> = grown
        .iter()
        .copied()
        .filter(|&b| b != p.replicas[1])
        .collect();
    let stale: Vec<i64> = smaller
        .iter()
        .map(|&b| if b == out { judged_epoch } else { 0 })
        .collect();
    assert!(state
        .alter_partition_with_epochs(&request(&state, smaller), &stale)
        .is_ok());
}

/// The log cleaner's topic configs (Kafka's `TopicConfig`: `min.cleanable.dirty.ratio` a
/// DOUBLE in [0, 1] defaulting to 0.5, `delete.retention.ms` 1 day, `min.compaction.lag.ms` 0,
/// `max.compaction.lag.ms` Long.MAX_VALUE) are validated, described and reach the cleaner.
#[test]
fn cleaner_topic_configs_are_validated_described_and_applied() {
    for (key, value, ok) in [
        ("min.cleanable.dirty.ratio", "0.01", true),
        ("min.cleanable.dirty.ratio", "1", true),
        ("min.cleanable.dirty.ratio", "1.5", false),
        ("min.cleanable.dirty.ratio", "-0.1", false),
        ("min.cleanable.dirty.ratio", "half", false),
        ("delete.retention.ms", "0", true),
        ("delete.retention.ms", "-1", false),
        ("min.compaction.lag.ms", "0", true),
        ("min.compaction.lag.ms", "-1", false),
        ("max.compaction.lag.ms", "0", false),
        ("max.compaction.lag.ms", "1", true),
    ] {
        assert_eq!(
            TopicConfig::validate(key, value).is_ok(),
            ok,
            "{key}={value:?}"
        );
    }
    let defaults = TopicConfig::default().describe();
    let value = |d: &[config::ConfigEntry], name: &str| {
        let e = d.iter().find(|e| e.name == name).unwrap();
        (e.value.clone(), e.source, e.config_type.code())
    };
    assert_eq!(
        value(&defaults, "min.cleanable.dirty.ratio"),
        ("0.5".into(), ConfigSource::Default, 6)
    );
    assert_eq!(
        value(&defaults, "delete.retention.ms"),
        ("86400000".into(), ConfigSource::Default, 5)
    );
    assert_eq!(
        value(&defaults, "max.compaction.lag.ms"),
        (i64::MAX.to_string(), ConfigSource::Default, 5)
    );
    let overrides = BTreeMap::from([
        ("min.cleanable.dirty.ratio".to_string(), "0.01".to_string()),
        ("delete.retention.ms".to_string(), "100".to_string()),
        ("min.compaction.lag.ms".to_string(), "5".to_string()),
        ("max.compaction.lag.ms".to_string(), "6000".to_string()),
    ]);
    let config = TopicConfig::from_map(&overrides).unwrap();
    assert_eq!(
        value(&config.describe(), "min.cleanable.dirty.ratio"),
        ("0.01".into(), ConfigSource::Topic, 6)
    );
    let cleaner = config.to_cleaner_config();
    assert_eq!(cleaner.dirty_ratio_min, 0.01);
    assert_eq!(cleaner.delete_retention_ms, 100);
    assert_eq!(cleaner.compaction_lag_ms_min, 5);
    assert_eq!(cleaner.compaction_lag_ms_max, 6000);
}

/// A `compact`-only topic is never cut by retention (Kafka's `LogManager.cleanupLogs` deletes
/// only logs whose policy includes delete); `compact,delete` keeps both.
#[test]
fn retention_applies_only_with_the_delete_policy() {
    let with = |policy: &str| {
        TopicConfig::from_map(&BTreeMap::from([
            ("cleanup.policy".to_string(), policy.to_string()),
            ("retention.ms".to_string(), "1000".to_string()),
            ("retention.bytes".to_string(), "5000".to_string()),
        ]))
        .unwrap()
        .to_log_config()
    };
    let compact = with("compact");
    assert_eq!(
        (compact.retention_ms_max, compact.retention_bytes_max),
        (-1, -1)
    );
    let both = with("compact,delete");
    assert_eq!(
        (both.retention_ms_max, both.retention_bytes_max),
        (1000, 5000)
    );
}

/// UnregisterBroker (KIP-631, API 64): an unknown broker is BROKER_ID_NOT_REGISTERED (102);
/// a broker that still holds a replica is refused (keel's rule, INVALID_REQUEST) with
/// nothing changed; one that holds none leaves the metadata, and its broker epoch is never
/// handed out again, not even after a snapshot. Reference: KRaft
/// ClusterControlManager.unregisterBroker.
#[test]
fn unregistering_a_broker_needs_it_to_hold_no_replica() {
    use crate::quorum::snapshot::{decode_state, encode_state};

    let mut state = MetadataState::new();
    for b in 0..4 {
        register_unfenced(&mut state, b, b as u8 + 1);
    }
    let records = state
        .create_topic(
            &new_topic("t", 3, 3, id(1)),
            &brokers(3),
            &TopicDefaults::default(),
        )
        .unwrap();
    apply_all(&mut state, &records);

    let unknown = state.unregister_broker(BrokerId(9)).unwrap_err();
    assert_eq!(unknown.code(), code::BROKER_ID_NOT_REGISTERED);
    let busy = state.unregister_broker(BrokerId(0)).unwrap_err();
    assert_eq!(busy.code(), code::INVALID_REQUEST);
    assert!(busy.to_string().contains("t-0"), "{busy}");
    assert_eq!(state.partitions_on(BrokerId(0)).len(), 3);
    assert!(state.broker(BrokerId(0)).is_some());

    // Broker 3, the last to register, holds nothing.
    let e3 = state.broker(BrokerId(3)).unwrap().epoch;
    assert_eq!(state.last_broker_epoch(), e3);
    let records = state.unregister_broker(BrokerId(3)).unwrap();
    let before = state.clone();
    apply_all(&mut state, &records);
    assert!(state.broker(BrokerId(3)).is_none());
    assert!(!state.live_brokers().contains(&BrokerId(3)));
    // The same record again (the broker is gone) does not apply.
    let mut again = state.clone();
    assert!(again.apply(&records[0]).is_err());
    assert_eq!(again, state);
    // A stale unregistration (the broker registered again since) does not apply either.
    let mut stale = before.clone();
    let (_, rereg) = stale
        .register_broker(&registration(3, 9), UncleanElection::Disabled)
        .unwrap();
    apply_all(&mut stale, &rereg);
    let restale = stale.clone();
    assert!(stale.apply(&records[0]).is_err());
    assert_eq!(stale, restale);

    // The snapshot keeps the epoch counter past the unregistered broker's epoch.
    let rebuilt = decode_state(&encode_state(&state)).unwrap();
    assert_eq!(rebuilt, state);
    assert_eq!(rebuilt.last_broker_epoch(), e3);
    let (epoch, _) = rebuilt
        .register_broker(&registration(3, 10), UncleanElection::Disabled)
        .unwrap();
    assert!(epoch > e3, "epoch {epoch} reused");
}
