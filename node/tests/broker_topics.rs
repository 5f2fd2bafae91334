//! Topic directories across deletion, recreation and restarts: a recreated topic never reuses
//! the old topic's data, and directories of topics deleted while the broker was down are
//! removed when it starts.

use std::sync::Arc;

use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use keel_core::controller::TopicDefaults;
use keel_node::broker::{Broker, Settings};
use keel_node::metrics::Metrics;
use keel_node::wire::{Handler, RequestContext};

fn ctx(api_key: ApiKey, api_version: i16) -> RequestContext {
    RequestContext::local(api_key, api_version)
}

async fn open(dir: &std::path::Path) -> Arc<Broker> {
    let settings = Settings {
        node_id: 1,
        data_dir: dir.to_path_buf(),
        advertised_host: "127.0.0.1".into(),
        advertised_port: 9092,
        auto_create_topics: false,
        topic_defaults: TopicDefaults {
            partitions: 1,
            replication_factor: 1,
        },
        topic_config_defaults: Default::default(),
        ..Settings::single(1, dir.to_path_buf())
    };
    Broker::open(settings, Arc::new(Metrics::new()))
        .await
        .unwrap()
}

async fn create(broker: &Arc<Broker>, name: &str) -> i16 {
    let mut r = CreateTopicsRequest::default();
    r.topics = vec![CreatableTopic::default()
        .with_name(TopicName(StrBytes::from_string(name.into())))
        .with_num_partitions(1)
        .with_replication_factor(1)];
    let Some(ResponseKind::CreateTopics(resp)) = broker
        .clone()
        .handle(ctx(ApiKey::CreateTopics, 7), RequestKind::CreateTopics(r))
        .await
        .unwrap()
    else {
        panic!("no CreateTopics response")
    };
    resp.topics[0].error_code
}

async fn delete(broker: &Arc<Broker>, name: &str) -> i16 {
    let mut r = DeleteTopicsRequest::default();
    r.topics =
        vec![DeleteTopicState::default()
            .with_name(Some(TopicName(StrBytes::from_string(name.into()))))];
    let Some(ResponseKind::DeleteTopics(resp)) = broker
        .clone()
        .handle(ctx(ApiKey::DeleteTopics, 6), RequestKind::DeleteTopics(r))
        .await
        .unwrap()
    else {
        panic!("no DeleteTopics response")
    };
    resp.responses[0].error_code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreated_topics_start_empty_and_orphans_are_removed_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path()).await;
    assert_eq!(create(&broker, "t").await, 0);
    let partition_dir = dir.path().join("t-0");
    let first_id = std::fs::read_to_string(partition_dir.join("partition.metadata")).unwrap();
    assert_eq!(delete(&broker, "t").await, 0);
    assert!(!partition_dir.exists(), "deletion removes the directory");
    assert_eq!(create(&broker, "t").await, 0);
    let second_id = std::fs::read_to_string(partition_dir.join("partition.metadata")).unwrap();
    assert_ne!(
        first_id, second_id,
        "the recreated topic has a new id in a new directory"
    );

    // A directory no topic owns (a topic deleted while the broker was down) goes at start.
    std::fs::create_dir(dir.path().join("gone-0")).unwrap();
    std::fs::write(
        dir.path().join("gone-0").join("00000000000000000000.log"),
        b"old",
    )
    .unwrap();
    drop(broker);
    let broker = open(dir.path()).await;
    assert!(
        !dir.path().join("gone-0").exists(),
        "the orphan directory is removed"
    );
    assert!(
        partition_dir.join("partition.metadata").exists(),
        "live partitions stay"
    );
    assert_eq!(
        broker.replica("t", 0).map(|p| p.topic_id.to_string()),
        Some(
            second_id
                .trim()
                .trim_start_matches("version: 0\ntopic_id: ")
                .to_string()
        )
    );
}

/// A replica that fails to open is not an orphan: the start-up sweep keeps its directory and
/// everything in it (its data may be the only copy), and the broker starts without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_fails_to_open_keeps_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path()).await;
    assert_eq!(create(&broker, "t").await, 0);
    drop(broker);
    let partition_dir = dir.path().join("t-0");
    let metadata = partition_dir.join("partition.metadata");
    // Unreadable as a file: opening the replica fails.
    std::fs::remove_file(&metadata).unwrap();
    std::fs::create_dir(&metadata).unwrap();
    let broker = open(dir.path()).await;
    assert!(broker.replica("t", 0).is_none(), "the replica did not open");
    assert!(
        partition_dir.join("00000000000000000000.log").exists(),
        "its log stays on disk"
    );
    assert!(metadata.is_dir());
}

/// The replication settings of the broker reach its replicas (`replica.lag.time.max.ms`,
/// `replica.fetch.max.bytes`, `replica.fetch.backoff.ms`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_take_the_brokers_replication_settings() {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        replica_lag_time_max_ms: 4_321,
        replica_fetch_bytes_max: 12_345,
        replica_fetch_backoff_ms: 678,
        ..Settings::single(1, dir.path().to_path_buf())
    };
    let broker = Broker::open(settings, Arc::new(Metrics::new()))
        .await
        .unwrap();
    assert_eq!(create(&broker, "t").await, 0);
    let config = broker
        .replica("t", 0)
        .expect("the replica is open")
        .with(|r| r.config().clone());
    assert_eq!(
        (
            config.lag_time_max_ms,
            config.fetch_bytes_max,
            config.fetch_backoff_ms
        ),
        (4_321, 12_345, 678)
    );
}
