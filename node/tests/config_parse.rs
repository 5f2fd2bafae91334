//! node::config: the broker's settings, their defaults (Kafka 3.x `KafkaConfig`,
//! `ServerLogConfigs`, `ReplicationConfigs`), the precedence rules Kafka applies
//! (`LogConfig`: retention ms > minutes > hours, roll ms > hours), overrides, and a clear error
//! for each way a config can be wrong.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use keel_core::batch::TimestampType;
use keel_core::controller::config::{self as topic_config, TopicConfig};
use keel_core::controller::UncleanElection;
use keel_node::config::{
    parse_override, BrokerConfig, ConfigError, HostPort, Listener, QuorumVoter,
    INTER_BROKER_LISTENER_NAME, KEEL_SASL_USERS, LISTENER_SECURITY_PROTOCOL_MAP,
    SASL_ENABLED_MECHANISMS, SETTINGS, SSL_CLIENT_AUTH, SSL_ENABLED_PROTOCOLS,
    SSL_KEYSTORE_LOCATION, SSL_KEYSTORE_TYPE, SSL_KEY_PASSWORD,
};

fn ov(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn parse(text: &str) -> BrokerConfig {
    match BrokerConfig::from_toml_str(text) {
        Ok(c) => c,
        Err(e) => panic!("config should parse: {e}\n{text}"),
    }
}

fn error(text: &str) -> ConfigError {
    match BrokerConfig::from_toml_str(text) {
        Ok(c) => panic!("config should be refused: {c:?}\n{text}"),
        Err(e) => e,
    }
}

fn override_error(pairs: &[(&str, &str)]) -> ConfigError {
    match BrokerConfig::parse("node.id = 1", &ov(pairs)) {
        Ok(c) => panic!("overrides should be refused: {c:?}"),
        Err(e) => e,
    }
}

#[test]
fn flat_quoted_dotted_and_sectioned_keys_mean_the_same() {
    let flat = parse(
        r#"
        "node.id" = 7
        "log.retention.hours" = 24
        "log.dirs" = "/var/lib/keel"
        "auto.create.topics.enable" = false
        "keel.metrics.listener" = "0.0.0.0:9100"
        "#,
    );
    let dotted = parse(
        r#"
        node.id = 7
        log.retention.hours = 24
        log.dirs = "/var/lib/keel"
        auto.create.topics.enable = false
        keel.metrics.listener = "0.0.0.0:9100"
        "#,
    );
    let sectioned = parse(
        r#"
        node.id = 7
        auto.create.topics.enable = false
        [log]
        retention.hours = 24
        dirs = "/var/lib/keel"
        [keel.metrics]
        listener = "0.0.0.0:9100"
        "#,
    );
    assert_eq!(flat, dotted);
    assert_eq!(flat, sectioned);
    assert_eq!(flat.node_id, 7);
    assert_eq!(flat.retention_ms, 24 * 3_600_000);
    assert_eq!(flat.data_dir, PathBuf::from("/var/lib/keel"));
    assert!(!flat.auto_create_topics);
}

/// Reference: Kafka 3.x defaults (`ServerLogConfigs`, `KafkaConfig`, `ReplicationConfigs`,
/// `GroupCoordinatorConfig`), except where keel says otherwise (data directory, metrics).
#[test]
fn only_node_id_gives_kafka_defaults() {
    let c = parse("node.id = 0");
    assert_eq!(c.node_id, 0);
    assert_eq!(
        c.listeners,
        vec![Listener {
            name: "PLAINTEXT".into(),
            host: "127.0.0.1".into(),
            port: 9092
        }]
    );
    assert_eq!(c.advertised_listeners, c.listeners);
    assert_eq!(c.data_dir, PathBuf::from("./keel-data"));
    assert_eq!(c.num_partitions, 1);
    assert_eq!(c.default_replication_factor, 1);
    assert!(c.auto_create_topics);
    assert_eq!(c.min_insync_replicas, 1);
    assert_eq!(c.retention_ms, 168 * 3_600_000);
    assert_eq!(c.retention_bytes_max, -1);
    assert_eq!(c.segment_bytes_max, 1 << 30);
    assert_eq!(c.segment_ms_max, 168 * 3_600_000);
    assert_eq!(c.cleanup_policy, "delete");
    assert_eq!(c.message_bytes_max, 1_048_588);
    assert_eq!(c.message_timestamp_type, TimestampType::CreateTime);
    assert_eq!(c.socket_request_bytes_max, 104_857_600);
    assert_eq!(c.replica_lag_time_ms_max, 30_000);
    assert_eq!(c.offsets_retention_ms, 10_080 * 60_000);
    assert_eq!(c.retention_check_interval_ms, 300_000);
    assert!(c.controller_quorum_voters.is_empty());
    assert!(c.quorum_learners.is_empty());
    assert_eq!(c.peer_address(), None, "no quorum: a broker alone");
    assert_eq!(c.broker_session_timeout_ms, 9_000);
    assert_eq!(c.broker_heartbeat_interval_ms, 2_000);
    assert!(!c.unclean_leader_election);
    assert_eq!(c.unclean_election(), UncleanElection::Disabled);
    assert_eq!(c.replica_fetch_bytes_max, 1_048_576);
    assert_eq!(c.replica_fetch_backoff_ms, 1_000);
    assert_eq!(
        c.metrics_listener,
        Some(HostPort {
            host: "127.0.0.1".into(),
            port: 9644
        })
    );
    assert_eq!(c.checkpoint_interval_ms, 60_000);
}

#[test]
fn every_setting_has_a_doc_and_a_default_that_parses() {
    for s in SETTINGS {
        assert!(!s.doc.is_empty(), "{} has no doc", s.name);
        if let Some(default) = s.default {
            let mut pairs = ov(&[(s.name, default)]);
            if s.name != "node.id" {
                pairs.push(("node.id".into(), "1".into()));
            }
            let result = BrokerConfig::load(None, &pairs);
            assert!(
                result.is_ok(),
                "{} = {default:?}: {:?}",
                s.name,
                result.err()
            );
        }
    }
}

/// Reference: Kafka `LogConfig`/`KafkaConfig.logRetentionTimeMillis`: ms, else minutes, else
/// hours; any negative value means unlimited (-1).
#[test]
fn retention_time_prefers_ms_then_minutes_then_hours() {
    let c = parse("node.id = 1\nlog.retention.hours = 2\nlog.retention.minutes = 3");
    assert_eq!(c.retention_ms, 3 * 60_000);
    let c = parse(
        "node.id = 1\nlog.retention.hours = 2\nlog.retention.minutes = 3\nlog.retention.ms = 5",
    );
    assert_eq!(c.retention_ms, 5);
    let c = parse("node.id = 1\nlog.retention.hours = 2");
    assert_eq!(c.retention_ms, 2 * 3_600_000);
    let c = parse("node.id = 1\nlog.retention.minutes = -1");
    assert_eq!(c.retention_ms, -1);
    let c = parse("node.id = 1\nlog.retention.hours = -1");
    assert_eq!(c.retention_ms, -1);
    // An override of a weaker unit does not beat a stronger unit set in the file.
    let c = BrokerConfig::parse(
        "node.id = 1\nlog.retention.ms = 1000",
        &ov(&[("log.retention.hours", "1")]),
    )
    .expect("parses");
    assert_eq!(c.retention_ms, 1000);
}

/// Reference: Kafka `KafkaConfig.logRollTimeMillis`: log.roll.ms, else log.roll.hours.
#[test]
fn roll_time_prefers_ms_over_hours() {
    assert_eq!(
        parse("node.id = 1\nlog.roll.hours = 1").segment_ms_max,
        3_600_000
    );
    assert_eq!(
        parse("node.id = 1\nlog.roll.hours = 1\nlog.roll.ms = 10").segment_ms_max,
        10
    );
}

#[test]
fn overrides_are_typed_by_their_key_and_win_over_the_file() {
    let text = "node.id = 1\nnum.partitions = 3\nauto.create.topics.enable = true";
    let c = BrokerConfig::parse(
        text,
        &ov(&[
            ("node.id", "5"),
            ("num.partitions", " 12 "),
            ("auto.create.topics.enable", "FALSE"),
            ("log.dirs", "/data/a"),
            ("listeners", "PLAINTEXT://:9093"),
            ("log.message.timestamp.type", "LogAppendTime"),
            ("keel.metrics.listener", ""),
            ("num.partitions", "4"),
        ]),
    )
    .expect("parses");
    assert_eq!(c.node_id, 5);
    assert_eq!(c.num_partitions, 4, "a later override wins");
    assert!(!c.auto_create_topics);
    assert_eq!(c.data_dir, PathBuf::from("/data/a"));
    assert_eq!(c.listeners[0].port, 9093);
    assert_eq!(c.message_timestamp_type, TimestampType::LogAppendTime);
    assert_eq!(
        c.metrics_listener, None,
        "an empty listener turns metrics off"
    );
}

#[test]
fn load_without_a_file_takes_defaults_and_overrides() {
    let c = BrokerConfig::load(None, &ov(&[("node.id", "3")])).expect("loads");
    assert_eq!(c.node_id, 3);
    assert_eq!(c.num_partitions, 1);
}

#[test]
fn load_reads_the_file_then_applies_overrides() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("keel.toml");
    std::fs::write(&path, "node.id = 2\nnum.partitions = 6\n").expect("write");
    let c = BrokerConfig::load(Some(&path), &ov(&[("node.id", "9")])).expect("loads");
    assert_eq!((c.node_id, c.num_partitions), (9, 6));
}

#[test]
fn parse_override_splits_at_the_first_equals_sign() {
    assert_eq!(
        parse_override("log.dirs=/a=b").expect("valid"),
        ("log.dirs".to_string(), "/a=b".to_string())
    );
    assert_eq!(
        parse_override(" keel.metrics.listener =").expect("valid"),
        ("keel.metrics.listener".to_string(), String::new())
    );
    for bad in ["", "node.id", "=5", " =5"] {
        let e = parse_override(bad).expect_err(bad);
        assert!(
            matches!(e, ConfigError::BadOverride { .. }),
            "{bad:?}: {e:?}"
        );
        assert!(e.to_string().contains("KEY=VALUE"), "{e}");
    }
}

#[test]
fn advertised_listeners_default_to_listeners_with_wildcards_made_loopback() {
    let c = parse(
        r#"
        node.id = 1
        listeners = "PLAINTEXT://:9092,internal://0.0.0.0:9093,EXTERNAL://[::]:9094,HOSTED://kafka.local:9095"
        listener.security.protocol.map = "PLAINTEXT:PLAINTEXT,INTERNAL:PLAINTEXT,external:PLAINTEXT,HOSTED:PLAINTEXT"
        "#,
    );
    let shown: Vec<String> = c.listeners.iter().map(ToString::to_string).collect();
    assert_eq!(
        shown,
        [
            "PLAINTEXT://:9092",
            "INTERNAL://0.0.0.0:9093",
            "EXTERNAL://[::]:9094",
            "HOSTED://kafka.local:9095"
        ]
    );
    assert_eq!(c.listeners[0].bind_address(), "0.0.0.0:9092");
    assert_eq!(c.listeners[2].bind_address(), "[::]:9094");
    let advertised: Vec<String> = c
        .advertised_listeners
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        advertised,
        [
            "PLAINTEXT://127.0.0.1:9092",
            "INTERNAL://127.0.0.1:9093",
            "EXTERNAL://127.0.0.1:9094",
            "HOSTED://kafka.local:9095"
        ]
    );
    assert_eq!(
        c.advertised_listener("INTERNAL").map(|l| l.port),
        Some(9093)
    );
}

#[test]
fn explicit_advertised_listeners_are_kept() {
    let c = parse(
        r#"
        node.id = 1
        listeners = ["PLAINTEXT://:9092", "CONTROLLER://:9093"]
        listener.security.protocol.map = "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
        advertised.listeners = "PLAINTEXT://broker1.example.com:19092"
        "#,
    );
    assert_eq!(c.listeners.len(), 2, "an array of strings is a list too");
    assert_eq!(
        c.advertised_listeners,
        vec![Listener {
            name: "PLAINTEXT".into(),
            host: "broker1.example.com".into(),
            port: 19092
        }]
    );
}

#[test]
fn an_empty_advertised_listeners_means_the_default() {
    let c = BrokerConfig::parse(
        "node.id = 1\nadvertised.listeners = \"PLAINTEXT://h:1\"",
        &ov(&[("advertised.listeners", "")]),
    )
    .expect("parses");
    assert_eq!(c.advertised_listeners, c.listeners);
    // Port 0 (the OS picks one) is kept; the broker advertises the port it got.
    let c = parse("node.id = 1\nlisteners = \"PLAINTEXT://:0\"");
    assert_eq!(
        c.advertised_listeners[0].to_string(),
        "PLAINTEXT://127.0.0.1:0"
    );
}

#[test]
fn quorum_voters_parse() {
    let c = parse(
        r#"
        node.id = 1
        controller.quorum.voters = "1@kafka-1:9093, 2@10.0.0.2:9093,3@[::1]:9093"
        "#,
    );
    let shown: Vec<String> = c
        .controller_quorum_voters
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(shown, ["1@kafka-1:9093", "2@10.0.0.2:9093", "3@[::1]:9093"]);
    assert_eq!(
        c.controller_quorum_voters[2],
        QuorumVoter {
            id: 3,
            address: HostPort {
                host: "::1".into(),
                port: 9093
            }
        }
    );
}

/// Learners take the voters' format; a node's peer address is its own entry, whether it votes
/// or learns. Reference: Kafka `controller.quorum.voters` (`QuorumConfig.parseVoterConnections`);
/// KIP-595 (observers follow the log without voting).
#[test]
fn quorum_learners_parse_and_peer_address_is_this_nodes_entry() {
    let text = |node: i32| {
        format!(
            "node.id = {node}
             controller.quorum.voters = \"1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093\"
             keel.quorum.learners = \"4@kafka-4:9093, 5@[::1]:9094\""
        )
    };
    let learner = parse(&text(5));
    let shown: Vec<String> = learner
        .quorum_learners
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(shown, ["4@kafka-4:9093", "5@[::1]:9094"]);
    assert_eq!(
        learner.peer_address(),
        Some(&HostPort {
            host: "::1".into(),
            port: 9094
        })
    );
    let voter = parse(&text(2));
    assert_eq!(voter.quorum_learners, learner.quorum_learners);
    assert_eq!(
        voter.peer_address().map(ToString::to_string).as_deref(),
        Some("kafka-2:9093")
    );
    // Written as an array, through an override, or as a section: the same setting.
    let array = parse(
        r#"
        node.id = 4
        controller.quorum.voters = ["1@kafka-1:9093", "2@kafka-2:9093", "3@kafka-3:9093"]
        [keel.quorum]
        learners = ["4@kafka-4:9093", "5@[::1]:9094"]
        "#,
    );
    assert_eq!(array.quorum_learners, learner.quorum_learners);
    let overridden = BrokerConfig::parse(
        "node.id = 4
controller.quorum.voters = \"1@kafka-1:9093\"",
        &ov(&[("keel.quorum.learners", "4@kafka-4:9093")]),
    )
    .expect("parses");
    assert_eq!(overridden.peer_address().map(|a| a.port), Some(9093));
}

/// With voters, every id is listed once across voters and learners and this node is one of
/// them; learners need voters. Each error names the setting, the value and the id.
#[test]
fn quorum_membership_is_checked() {
    let voters = "controller.quorum.voters = \"1@a:9093,2@b:9093,3@c:9093\"";
    for (text, key, value, why) in [
        (
            format!(
                "node.id = 1
{voters}
keel.quorum.learners = \"2@d:9093\""
            ),
            "keel.quorum.learners",
            "2@d:9093",
            "ids unique across controller.quorum.voters and keel.quorum.learners (2 repeats)",
        ),
        (
            format!(
                "node.id = 1
{voters}
keel.quorum.learners = \"4@d:9093,4@e:9093\""
            ),
            "keel.quorum.learners",
            "4@e:9093",
            "(4 repeats)",
        ),
        (
            "node.id = 1
keel.quorum.learners = \"1@d:9093\""
                .to_string(),
            "keel.quorum.learners",
            "1@d:9093",
            "no learners while controller.quorum.voters is empty",
        ),
        (
            format!(
                "node.id = 7
{voters}
keel.quorum.learners = \"4@d:9093\""
            ),
            "node.id",
            "7",
            "an id listed in controller.quorum.voters or keel.quorum.learners (node 7 is in \
             neither)",
        ),
        (
            format!(
                "node.id = 1
{voters}
keel.quorum.learners = \"4@d\""
            ),
            "keel.quorum.learners",
            "4@d",
            "has no port",
        ),
        (
            format!(
                "node.id = 1
{voters}
keel.quorum.learners = \"4@d:0\""
            ),
            "keel.quorum.learners",
            "4@d:0",
            "port cannot be 0",
        ),
        (
            format!(
                "node.id = 1
{voters}
keel.quorum.learners = \"d:9093\""
            ),
            "keel.quorum.learners",
            "d:9093",
            "is not ID@HOST:PORT",
        ),
    ] {
        let e = error(&text);
        assert!(
            matches!(&e, ConfigError::InvalidValue { key: k, .. } if k == key),
            "{text}: {e:?}"
        );
        let message = e.to_string();
        assert!(
            message.contains(value),
            "{text}: {message} should show {value}"
        );
        assert!(message.contains(why), "{text}: {message} should say {why}");
    }
    // Without voters, node.id is free: the broker runs alone.
    assert_eq!(parse("node.id = 7").peer_address(), None);
}

/// Reference: Kafka `KafkaConfig` (`broker.session.timeout.ms` 9000, `broker.heartbeat.interval.ms`
/// 2000; KIP-631), `ReplicationConfigs` (`unclean.leader.election.enable` false,
/// `replica.fetch.max.bytes` 1048576, `replica.fetch.backoff.ms` 1000). keel refuses a heartbeat
/// interval that is not below the session timeout (Kafka does not check; such a broker is
/// fenced between heartbeats).
#[test]
fn broker_session_and_replication_settings() {
    let c = parse(
        r#"
        node.id = 1
        broker.session.timeout.ms = 18000
        broker.heartbeat.interval.ms = 3000
        unclean.leader.election.enable = true
        replica.fetch.max.bytes = 0
        replica.fetch.backoff.ms = 0
        "#,
    );
    assert_eq!(c.broker_session_timeout_ms, 18_000);
    assert_eq!(c.broker_heartbeat_interval_ms, 3_000);
    assert!(c.unclean_leader_election);
    assert_eq!(c.unclean_election(), UncleanElection::Enabled);
    assert_eq!(c.replica_fetch_bytes_max, 0);
    assert_eq!(c.replica_fetch_backoff_ms, 0);
    for (pairs, key, why) in [
        (
            [("broker.heartbeat.interval.ms", "9000")].as_slice(),
            "broker.heartbeat.interval.ms",
            "less than broker.session.timeout.ms (9000)",
        ),
        (
            &[
                ("broker.session.timeout.ms", "1000"),
                ("broker.heartbeat.interval.ms", "1500"),
            ],
            "broker.heartbeat.interval.ms",
            "less than broker.session.timeout.ms (1000)",
        ),
        (
            &[("broker.session.timeout.ms", "0")],
            "broker.session.timeout.ms",
            "an integer from 1 to",
        ),
        (
            &[("broker.heartbeat.interval.ms", "0")],
            "broker.heartbeat.interval.ms",
            "an integer from 1 to",
        ),
        (
            &[("replica.fetch.max.bytes", "-1")],
            "replica.fetch.max.bytes",
            "an integer from 0 to",
        ),
        (
            &[("replica.fetch.backoff.ms", "-1")],
            "replica.fetch.backoff.ms",
            "an integer from 0 to",
        ),
        (
            &[("unclean.leader.election.enable", "sometimes")],
            "unclean.leader.election.enable",
            "true or false",
        ),
    ] {
        let e = override_error(pairs);
        assert!(
            matches!(&e, ConfigError::InvalidValue { key: k, .. } if k == key),
            "{pairs:?}: {e:?}"
        );
        assert!(
            e.to_string().contains(why),
            "{pairs:?}: {e} should say {why}"
        );
    }
}

/// Topics inherit the broker's settings: the map holds exactly the topic keys keel honours,
/// under their topic names (Kafka `LogConfig.extractLogConfigMap`), and core accepts it.
#[test]
fn topic_defaults_carry_broker_settings_under_topic_names() {
    let c = parse(
        r#"
        node.id = 1
        log.retention.minutes = 30
        log.retention.bytes = 1000000
        log.segment.bytes = 65536
        log.roll.ms = 60000
        message.max.bytes = 5000
        min.insync.replicas = 2
        log.message.timestamp.type = "LogAppendTime"
        log.cleanup.policy = "delete, compact"
        unclean.leader.election.enable = true
        "#,
    );
    let defaults = c.topic_defaults();
    let keys: Vec<&str> = defaults.keys().map(String::as_str).collect();
    // The topic configs a broker setting (or keel's cleaner defaults) stands behind: the ones
    // keel had before Kafka 4's full list; every one a topic key keel accepts.
    assert_eq!(keys.len(), 13, "{keys:?}");
    let accepted = topic_config::keys();
    assert!(keys.iter().all(|k| accepted.contains(k)), "{keys:?}");
    let expected: BTreeMap<String, String> = [
        ("cleanup.policy", "compact,delete"),
        ("max.message.bytes", "5000"),
        ("message.timestamp.type", "LogAppendTime"),
        ("min.insync.replicas", "2"),
        ("retention.bytes", "1000000"),
        ("retention.ms", "1800000"),
        ("segment.bytes", "65536"),
        ("segment.ms", "60000"),
        ("unclean.leader.election.enable", "true"),
        ("min.cleanable.dirty.ratio", "0.5"),
        ("delete.retention.ms", "86400000"),
        ("min.compaction.lag.ms", "0"),
        ("max.compaction.lag.ms", "9223372036854775807"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(defaults, expected);
    let topic = TopicConfig::from_map(&defaults).expect("core accepts the broker's defaults");
    assert_eq!(topic.retention_ms(), 1_800_000);
    assert_eq!(topic.segment_bytes(), 65536);
    assert_eq!(topic.unclean_leader_election(), Some(true));
    let creation = c.topic_creation_defaults();
    assert_eq!((creation.partitions, creation.replication_factor), (1, 1));
    // The defaults of a default config are Kafka's topic defaults.
    let kafka = TopicConfig::from_map(&parse("node.id = 1").topic_defaults()).expect("valid");
    for default in TopicConfig::default().describe() {
        let ours = kafka
            .describe()
            .into_iter()
            .find(|e| e.name == default.name);
        assert_eq!(
            ours.map(|e| e.value),
            Some(default.value),
            "{}",
            default.name
        );
    }
}

#[test]
fn example_file_parses_and_names_every_setting() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/keel.example.toml");
    let c = BrokerConfig::load(Some(&path), &[]).expect("docs/keel.example.toml parses");
    assert_eq!(c.node_id, 1);
    let defaults = BrokerConfig::load(None, &ov(&[("node.id", "1")])).expect("defaults");
    assert_eq!(c, defaults, "the example spells out the defaults");
    let text = std::fs::read_to_string(&path).expect("read");
    for s in SETTINGS {
        assert!(
            text.contains(s.name),
            "the example does not mention {}",
            s.name
        );
    }
}

// Errors: each names the key, the value and what was expected.

#[test]
fn unknown_key_is_refused_with_the_closest_known_one() {
    let cases = [
        (
            "log.retention.hour = 5",
            "log.retention.hour",
            Some("log.retention.hours"),
        ),
        ("node_id = 5", "node_id", Some("node.id")),
        ("broker.id = 5", "broker.id", Some("node.id")),
        ("log.dir = \"/x\"", "log.dir", Some("log.dirs")),
        ("num.partition = 5", "num.partition", Some("num.partitions")),
        ("zookeeper.connect = \"zk:2181\"", "zookeeper.connect", None),
        (
            "[log.retention]\nhourz = 5",
            "log.retention.hourz",
            Some("log.retention.hours"),
        ),
    ];
    for (text, key, suggestion) in cases {
        let e = error(&format!("node.id = 1\n{text}"));
        match &e {
            ConfigError::UnknownKey {
                key: k,
                suggestion: s,
            } => {
                assert_eq!(k, key, "{text}");
                assert_eq!(*s, suggestion, "{text}");
            }
            other => panic!("{text}: expected UnknownKey, got {other:?}"),
        }
        let message = e.to_string();
        assert!(message.contains(&format!("{key:?}")), "{message}");
        if let Some(s) = suggestion {
            assert!(
                message.contains(&format!("did you mean {s:?}")),
                "{message}"
            );
        }
    }
    assert_eq!(
        error("node.id = 1\nlog.retention.hour = 5").to_string(),
        "unknown setting \"log.retention.hour\" (did you mean \"log.retention.hours\"?); \
         keel refuses settings it does not know"
    );
    let e = override_error(&[("log.retension.ms", "5")]);
    assert!(
        matches!(
            &e,
            ConfigError::UnknownKey {
                suggestion: Some("log.retention.ms"),
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn wrong_toml_type_names_key_value_and_expectation() {
    let e = error("node.id = 1\nnum.partitions = \"3\"");
    assert!(matches!(e, ConfigError::WrongType { .. }), "{e:?}");
    assert_eq!(
        e.to_string(),
        "setting \"num.partitions\": found the string \"3\", expected an integer from 1 to \
         2147483647 (write it without quotes)"
    );
    let e = error("node.id = 1\nauto.create.topics.enable = 1");
    assert_eq!(
        e.to_string(),
        "setting \"auto.create.topics.enable\": found the integer 1, expected true or false"
    );
    let e = error("node.id = 1\nlog.dirs = 5");
    assert!(e.to_string().contains("found the integer 5"), "{e}");
    let e = error("node.id = 1\nlisteners = [\"PLAINTEXT://:1\", 2]");
    assert!(
        e.to_string().contains("an array holding the integer 2"),
        "{e}"
    );
    let e = error("node.id = 1.5");
    assert!(e.to_string().contains("found the float 1.5"), "{e}");
    let e = error("node.id = 1\nkeel.metrics.listener = 9644");
    assert!(e.to_string().contains("expected a string"), "{e}");
}

#[test]
fn out_of_range_and_malformed_values_name_key_value_and_expectation() {
    let cases: [(&str, &str, &str); 15] = [
        ("node.id = -1", "-1", "an integer from 0 to 2147483647"),
        (
            "node.id = 1\nnum.partitions = 0",
            "0",
            "an integer from 1 to",
        ),
        (
            "node.id = 1\ndefault.replication.factor = 40000",
            "40000",
            "from 1 to 32767",
        ),
        (
            "node.id = 2147483648",
            "2147483648",
            "an integer from 0 to 2147483647",
        ),
        ("node.id = 1\nlog.segment.bytes = 13", "13", "from 14 to"),
        ("node.id = 1\nlog.retention.ms = -2", "-2", "from -1 to"),
        (
            "node.id = 1\nlog.message.timestamp.type = \"Now\"",
            "\"Now\"",
            "CreateTime or LogAppendTime",
        ),
        (
            "node.id = 1\nlog.cleanup.policy = \"shred\"",
            "\"shred\"",
            "delete, compact or both",
        ),
        (
            "node.id = 1\nlog.dirs = \"/a,/b\"",
            "\"/a,/b\"",
            "one directory (keel keeps a single",
        ),
        (
            "node.id = 1\nlisteners = \"SSL://:9093\"",
            "\"\"",
            "a PEM keystore: listener SSL uses TLS",
        ),
        (
            "node.id = 1\nlisteners = \"PLAINTEXT://:9092,INTERNAL://:9093\"",
            "\"PLAINTEXT://:9092,INTERNAL://:9093\"",
            "INTERNAL is not: add INTERNAL:PLAINTEXT",
        ),
        (
            "node.id = 1\nlisteners = \"PLAINTEXT://:9092,PLAINTEXT://:9093\"",
            "PLAINTEXT://:9092",
            "each listener name at most once",
        ),
        (
            "node.id = 1\nlisteners = \"PLAINTEXT://host\"",
            "\"PLAINTEXT://host\"",
            "NAME://HOST:PORT",
        ),
        (
            "node.id = 1\nkeel.metrics.listener = \"nohost\"",
            "\"nohost\"",
            "HOST:PORT, or empty",
        ),
        (
            "node.id = 1\nlisteners = \"PLAINTEXT://::1:9092\"",
            "::1:9092",
            "IPv6 host in brackets",
        ),
    ];
    for (text, value, expected) in cases {
        let e = error(text);
        assert!(
            matches!(e, ConfigError::InvalidValue { .. }),
            "{text}: {e:?}"
        );
        let message = e.to_string();
        assert!(message.starts_with("setting \""), "{message}");
        assert!(
            message.contains(value),
            "{text}: {message} should show {value}"
        );
        assert!(
            message.contains(expected),
            "{text}: {message} should say {expected}"
        );
    }
    assert_eq!(
        error("node.id = -1").to_string(),
        "setting \"node.id\": invalid value -1: expected an integer from 0 to 2147483647"
    );
    let e = override_error(&[("num.partitions", "three")]);
    assert_eq!(
        e.to_string(),
        "setting \"num.partitions\": invalid value \"three\": expected an integer from 1 to \
         2147483647"
    );
    let e = override_error(&[("auto.create.topics.enable", "yes")]);
    assert!(e.to_string().contains("expected true or false"), "{e}");
}

#[test]
fn advertised_listeners_must_be_reachable_and_among_the_listeners() {
    let e = error("node.id = 1\nadvertised.listeners = \"PLAINTEXT://0.0.0.0:9092\"");
    assert!(
        e.to_string().contains("hosts clients can connect to"),
        "{e}"
    );
    let e = error("node.id = 1\nadvertised.listeners = \"PLAINTEXT://:9092\"");
    assert!(
        e.to_string().contains("hosts clients can connect to"),
        "{e}"
    );
    let e = error("node.id = 1\nadvertised.listeners = \"OTHER://h:9092\"");
    assert!(
        e.to_string()
            .contains("listener names that `listeners` also has"),
        "{e}"
    );
    let e = error("node.id = 1\nadvertised.listeners = \"PLAINTEXT://h:0\"");
    assert!(
        e.to_string().contains("ports clients can connect to"),
        "{e}"
    );
    let e = error("node.id = 1\nlisteners = \"A://:9092,B://:9092\"");
    assert!(
        e.to_string().contains("each listener on a different port"),
        "{e}"
    );
}

#[test]
fn quorum_voters_format_is_checked() {
    for (voters, why) in [
        ("1@host", "has no port"),
        ("x@host:9093", "is not a node id"),
        ("-1@host:9093", "is not a node id"),
        ("host:9093", "is not ID@HOST:PORT"),
        ("1@:9093", "has no host"),
        ("1@host:0", "port cannot be 0"),
        ("1@host:70000", "not a number from 0 to 65535"),
        ("1@a:1,1@b:1", "each voter id at most once"),
    ] {
        let e = error(&format!(
            "node.id = 1\ncontroller.quorum.voters = \"{voters}\""
        ));
        let message = e.to_string();
        assert!(message.contains("controller.quorum.voters"), "{message}");
        assert!(
            message.contains(why),
            "{voters}: {message} should say {why}"
        );
    }
}

#[test]
fn node_id_is_required() {
    let e = error("num.partitions = 2");
    assert!(
        matches!(e, ConfigError::Missing { key: "node.id" }),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "setting \"node.id\" is required: set it in the config file or with --override \
         node.id=VALUE"
    );
}

#[test]
fn a_setting_written_twice_is_refused() {
    let e = error("node.id = 1\n\"log.dirs\" = \"/a\"\nlog.dirs = \"/b\"");
    assert!(
        matches!(&e, ConfigError::Duplicate { key } if key == "log.dirs"),
        "{e:?}"
    );
    assert!(e.to_string().contains("\"log.dirs\" is given twice"), "{e}");
}

#[test]
fn toml_syntax_and_io_errors_name_the_file() {
    let e = error("node.id = = 1");
    assert!(matches!(e, ConfigError::Syntax { .. }), "{e:?}");
    assert!(e.to_string().starts_with("config: not valid TOML"), "{e}");

    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "node.id = 1\n[log\n").expect("write");
    let e = BrokerConfig::load(Some(&path), &[]).expect_err("bad TOML");
    let message = e.to_string();
    assert!(
        message.starts_with(&format!("{}: not valid TOML", path.display())),
        "{message}"
    );
    assert!(
        message.contains("line 2"),
        "the parser's position is kept: {message}"
    );

    let missing = dir.path().join("missing.toml");
    let e = BrokerConfig::load(Some(&missing), &[]).expect_err("no such file");
    assert!(matches!(e, ConfigError::Io { .. }), "{e:?}");
    assert!(e.to_string().contains("missing.toml"), "{e}");
}

mod never_panics {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any text and any overrides give a config or an error, never a panic.
        #[test]
        fn on_any_text(text in "[ -~\n]{0,200}") {
            let _ = BrokerConfig::from_toml_str(&text);
        }

        #[test]
        fn on_any_value_of_a_known_key(
            index in 0..SETTINGS.len(),
            value in "[ -~]{0,40}",
            as_toml_string in any::<bool>(),
        ) {
            let key = SETTINGS[index].name;
            let _ = BrokerConfig::load(None, &[("node.id".into(), "1".into()), (key.into(), value.clone())]);
            if as_toml_string {
                let text = format!("node.id = 1\n\"{key}\" = {value:?}");
                let _ = BrokerConfig::from_toml_str(&text);
            } else {
                let _ = BrokerConfig::from_toml_str(&format!("node.id = 1\n\"{key}\" = {value}"));
            }
        }
    }
}

// Security settings (docs/security.md).

const SECURED: &str = r#"
node.id = 1
listeners = "PLAINTEXT://:9092,SSL://:9093,SASL_PLAINTEXT://:9094,SASL_SSL://:9095,internal://:9096"
listener.security.protocol.map = "PLAINTEXT:PLAINTEXT,SSL:SSL,SASL_PLAINTEXT:SASL_PLAINTEXT,SASL_SSL:SASL_SSL,INTERNAL:sasl_ssl"
inter.broker.listener.name = "internal"
ssl.keystore.location = "/etc/keel/broker.pem"
ssl.truststore.location = "/etc/keel/ca.pem"
ssl.client.auth = "required"
ssl.enabled.protocols = "TLSv1.3"
sasl.enabled.mechanisms = "PLAIN,SCRAM-SHA-512"
"keel.sasl.users" = "admin=s3cret=x,alice=pw"
"keel.inter.broker.sasl.username" = "admin"
"#;

/// Reference: Kafka's `listener.security.protocol.map` (names upper-cased, protocols
/// case-insensitive) and its PEM keystore settings.
#[test]
fn security_settings_parse_with_kafkas_names() {
    use keel_node::security::sasl::Mechanism;
    use keel_node::security::scram::ScramMechanism;
    use keel_node::security::tls::{Keystore, PemSource};
    use keel_node::security::{ClientAuth, SecurityProtocol, TlsVersion};
    let c = parse(SECURED);
    let protocols: Vec<_> = c
        .listeners
        .iter()
        .map(|l| c.listener_protocol(&l.name).unwrap())
        .collect();
    assert_eq!(
        protocols,
        [
            SecurityProtocol::Plaintext,
            SecurityProtocol::Ssl,
            SecurityProtocol::SaslPlaintext,
            SecurityProtocol::SaslSsl,
            SecurityProtocol::SaslSsl
        ]
    );
    assert_eq!(c.inter_broker_listener_name.as_deref(), Some("INTERNAL"));
    let tls = c.tls.expect("TLS settings");
    assert_eq!(tls.keystore, Keystore::File("/etc/keel/broker.pem".into()));
    assert_eq!(
        tls.truststore,
        Some(PemSource::File("/etc/keel/ca.pem".into()))
    );
    assert_eq!(tls.client_auth, ClientAuth::Required);
    assert_eq!(tls.versions, [TlsVersion::Tls13]);
    assert_eq!(
        c.sasl_enabled_mechanisms,
        [Mechanism::Plain, Mechanism::Scram(ScramMechanism::Sha512)]
    );
    let users: Vec<(&str, &str)> = c
        .sasl_users
        .iter()
        .map(|u| (u.name.as_str(), u.password.as_str()))
        .collect();
    assert_eq!(users, [("admin", "s3cret=x"), ("alice", "pw")]);
    assert!(
        !format!("{:?}", c.sasl_users).contains("s3cret"),
        "passwords never in Debug output"
    );
}

#[test]
fn inline_pem_keystore_is_accepted() {
    use keel_node::security::tls::{Keystore, PemSource};
    let c = parse(
        "node.id = 1\nlisteners = \"SSL://:9093\"\n\
         ssl.keystore.certificate.chain = \"-----BEGIN CERTIFICATE-----\"\n\
         ssl.keystore.key = \"-----BEGIN PRIVATE KEY-----\"",
    );
    assert_eq!(
        c.tls.unwrap().keystore,
        Keystore::Inline {
            chain: PemSource::Inline("-----BEGIN CERTIFICATE-----".into()),
            key: PemSource::Inline("-----BEGIN PRIVATE KEY-----".into()),
        }
    );
}

/// Bad security settings are refused at startup with a message that names the key and says
/// what was expected, and never echoes a password.
#[test]
fn bad_security_settings_are_refused_clearly() {
    let sasl = "node.id = 1\nlisteners = \"SASL_PLAINTEXT://:9094\"\n";
    let ssl = "node.id = 1\nlisteners = \"SSL://:9093\"\nssl.keystore.location = \"/k.pem\"\n";
    let cases: Vec<(String, &str, &str)> = vec![
        (
            "node.id = 1\nlistener.security.protocol.map = \"PLAINTEXT:TLS\"".into(),
            LISTENER_SECURITY_PROTOCOL_MAP,
            "\"TLS\" is not a protocol",
        ),
        (
            "node.id = 1\nlistener.security.protocol.map = \"PLAINTEXT\"".into(),
            LISTENER_SECURITY_PROTOCOL_MAP,
            "has no ':'",
        ),
        (
            "node.id = 1\ninter.broker.listener.name = \"INTERNAL\"".into(),
            INTER_BROKER_LISTENER_NAME,
            "the name of one of `listeners`",
        ),
        (sasl.to_string(), KEEL_SASL_USERS, "no default password"),
        (
            format!("{sasl}\"keel.sasl.users\" = \"alice\""),
            KEEL_SASL_USERS,
            "an entry has no '='",
        ),
        (
            format!("{sasl}\"keel.sasl.users\" = \"alice=pw,alice=pw2\""),
            KEEL_SASL_USERS,
            "user \"alice\" is given twice",
        ),
        (
            format!("{sasl}\"keel.sasl.users\" = \"a=b\"\nsasl.enabled.mechanisms = \"GSSAPI\""),
            SASL_ENABLED_MECHANISMS,
            "\"GSSAPI\" is not one keel serves",
        ),
        (
            format!("{sasl}\"keel.sasl.users\" = \"a=b\"\nsasl.enabled.mechanisms = \"\""),
            SASL_ENABLED_MECHANISMS,
            "at least one mechanism",
        ),
        (
            format!("{ssl}ssl.keystore.type = \"JKS\""),
            SSL_KEYSTORE_TYPE,
            "PEM (keel reads PEM only",
        ),
        (
            format!("{ssl}ssl.client.auth = \"required\""),
            SSL_CLIENT_AUTH,
            "unless a truststore",
        ),
        (
            format!("{ssl}ssl.client.auth = \"always\""),
            SSL_CLIENT_AUTH,
            "none, requested or required",
        ),
        (
            format!("{ssl}ssl.enabled.protocols = \"TLSv1.1\""),
            SSL_ENABLED_PROTOCOLS,
            "\"TLSv1.1\" is not offered by keel",
        ),
        (
            format!("{ssl}ssl.keystore.key = \"-----BEGIN PRIVATE KEY-----\""),
            SSL_KEYSTORE_LOCATION,
            "not both",
        ),
        (
            format!("{ssl}ssl.key.password = \"hunter2\""),
            SSL_KEY_PASSWORD,
            "unencrypted private keys only",
        ),
    ];
    for (text, key, expected) in cases {
        let e = error(&text);
        let ConfigError::InvalidValue { key: k, .. } = &e else {
            panic!("{text}: {e:?}");
        };
        assert_eq!(k, key, "{text}: {e}");
        let shown = e.to_string();
        assert!(shown.contains(expected), "{text}: {shown}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("pw2"),
            "a password in {shown}"
        );
    }
}

/// The log cleaner's broker settings, with Kafka's defaults (`CleanerConfig`:
/// `log.cleaner.enable` true, one thread, `Double.MAX_VALUE` bytes per second, 15 s backoff).
#[test]
fn log_cleaner_settings_have_kafkas_defaults_and_are_checked() {
    let c = parse("node.id = 1");
    assert!(c.cleaner.enable);
    assert_eq!(c.cleaner.threads, 1);
    assert_eq!(c.cleaner.io_bytes_per_second_max, u64::MAX);
    assert_eq!(c.cleaner.backoff_ms, 15_000);
    let c = parse(
        r#"
        node.id = 1
        log.cleaner.enable = false
        log.cleaner.threads = 2
        log.cleaner.io.max.bytes.per.second = "1048576.5"
        log.cleaner.backoff.ms = 100
        "#,
    );
    assert!(!c.cleaner.enable);
    assert_eq!(c.cleaner.threads, 2);
    assert_eq!(c.cleaner.io_bytes_per_second_max, 1_048_576);
    assert_eq!(c.cleaner.backoff_ms, 100);
    for bad in [
        ("log.cleaner.threads", "0"),
        ("log.cleaner.io.max.bytes.per.second", "0"),
        ("log.cleaner.io.max.bytes.per.second", "fast"),
        ("log.cleaner.backoff.ms", "-1"),
    ] {
        let e = override_error(&[bad]);
        assert!(e.to_string().contains(bad.0), "{e}");
    }
}
