//! DescribeTopicPartitions (KIP-966) and DescribeLogDirs through an in-process broker:
//! pagination with a cursor, unknown topics, and the replicas of the log directory with their
//! sizes.

use std::sync::Arc;

use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::describe_topic_partitions_request::{Cursor, TopicRequest};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use keel_core::controller::TopicDefaults;
use keel_core::error_code as code;
use keel_node::broker::{Broker, Settings};
use keel_node::metrics::Metrics;
use keel_node::wire::{Handler, RequestContext};

fn name(x: &str) -> TopicName {
    TopicName(StrBytes::from_string(x.into()))
}

async fn call(broker: &Arc<Broker>, key: ApiKey, version: i16, r: RequestKind) -> ResponseKind {
    broker
        .clone()
        .handle(RequestContext::local(key, version), r)
        .await
        .unwrap()
        .unwrap()
}

async fn open(dir: &std::path::Path) -> Arc<Broker> {
    let settings = Settings {
        auto_create_topics: false,
        topic_defaults: TopicDefaults {
            partitions: 1,
            replication_factor: 1,
        },
        ..Settings::single(1, dir.to_path_buf())
    };
    Broker::open(settings, Arc::new(Metrics::new()))
        .await
        .unwrap()
}

async fn create(broker: &Arc<Broker>, topic: &str, partitions: i32) {
    let r = CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
        .with_name(name(topic))
        .with_num_partitions(partitions)
        .with_replication_factor(1)]);
    let ResponseKind::CreateTopics(resp) = call(
        broker,
        ApiKey::CreateTopics,
        7,
        RequestKind::CreateTopics(r),
    )
    .await
    else {
        panic!("no CreateTopics response")
    };
    assert_eq!(resp.topics[0].error_code, 0);
}

async fn produce(broker: &Arc<Broker>, topic: &str, partition: i32, records: i64) {
    let mut builder = keel_core::batch::BatchBuilder::new(keel_core::batch::Compression::None);
    for i in 0..records {
        builder = builder.record(i, None, Some(b"a value of some bytes"));
    }
    let r = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![produce_request::TopicProduceData::default()
            .with_name(name(topic))
            .with_partition_data(vec![
                produce_request::PartitionProduceData::default()
                    .with_index(partition)
                    .with_records(Some(builder.build().unwrap().into_bytes())),
            ])]);
    let ResponseKind::Produce(resp) =
        call(broker, ApiKey::Produce, 9, RequestKind::Produce(r)).await
    else {
        panic!("no Produce response")
    };
    assert_eq!(resp.responses[0].partition_responses[0].error_code, 0);
}

async fn describe(
    broker: &Arc<Broker>,
    r: DescribeTopicPartitionsRequest,
) -> DescribeTopicPartitionsResponse {
    let ResponseKind::DescribeTopicPartitions(resp) = call(
        broker,
        ApiKey::DescribeTopicPartitions,
        0,
        RequestKind::DescribeTopicPartitions(r),
    )
    .await
    else {
        panic!("no DescribeTopicPartitions response")
    };
    resp
}

/// (topic, [partition indexes]) of an answer.
fn listed(resp: &DescribeTopicPartitionsResponse) -> Vec<(String, i16, Vec<i32>)> {
    resp.topics
        .iter()
        .map(|t| {
            (
                t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default(),
                t.error_code,
                t.partitions.iter().map(|p| p.partition_index).collect(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_topic_partitions_pages_with_a_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path()).await;
    create(&broker, "b", 1).await;
    create(&broker, "a", 3).await;

    // Every topic, two partitions at a time, in name order.
    let first = describe(
        &broker,
        DescribeTopicPartitionsRequest::default().with_response_partition_limit(2),
    )
    .await;
    assert_eq!(listed(&first), [("a".to_string(), 0, vec![0, 1])]);
    let cursor = first
        .next_cursor
        .expect("a cursor after a page that stopped early");
    assert_eq!(
        (cursor.topic_name.0.as_str(), cursor.partition_index),
        ("a", 2)
    );
    let p = &first.topics[0].partitions[0];
    assert_eq!((p.leader_id.0, p.leader_epoch), (1, 0));
    assert_eq!(p.replica_nodes, vec![BrokerId(1)]);
    assert_eq!(p.isr_nodes, vec![BrokerId(1)]);
    assert!(p.offline_replicas.is_empty());
    assert!(!first.topics[0].is_internal);

    let second = describe(
        &broker,
        DescribeTopicPartitionsRequest::default()
            .with_response_partition_limit(2)
            .with_cursor(Some(
                Cursor::default()
                    .with_topic_name(cursor.topic_name)
                    .with_partition_index(cursor.partition_index),
            )),
    )
    .await;
    assert_eq!(
        listed(&second),
        [("a".to_string(), 0, vec![2]), ("b".to_string(), 0, vec![0])]
    );
    assert!(second.next_cursor.is_none(), "the listing is complete");

    // Named topics: an unknown one is reported as such.
    let named = describe(
        &broker,
        DescribeTopicPartitionsRequest::default().with_topics(vec![
            TopicRequest::default().with_name(name("zzz")),
            TopicRequest::default().with_name(name("b")),
        ]),
    )
    .await;
    assert_eq!(
        listed(&named),
        [
            ("b".to_string(), 0, vec![0]),
            ("zzz".to_string(), code::UNKNOWN_TOPIC_OR_PARTITION, vec![])
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_log_dirs_lists_the_replicas_with_their_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path()).await;
    create(&broker, "a", 2).await;
    produce(&broker, "a", 1, 20).await;

    let ResponseKind::DescribeLogDirs(all) = call(
        &broker,
        ApiKey::DescribeLogDirs,
        4,
        RequestKind::DescribeLogDirs(DescribeLogDirsRequest::default().with_topics(None)),
    )
    .await
    else {
        panic!("no DescribeLogDirs response")
    };
    assert_eq!(all.error_code, 0);
    assert_eq!(all.results.len(), 1, "one log directory");
    let result = &all.results[0];
    assert_eq!(result.log_dir.as_str(), dir.path().display().to_string());
    assert!(result.total_bytes > 0, "{}", result.total_bytes);
    assert!((0..=result.total_bytes).contains(&result.usable_bytes));
    let a = result
        .topics
        .iter()
        .find(|t| t.name.0.as_str() == "a")
        .expect("topic a is listed");
    let sizes: Vec<(i32, i64, i64)> = a
        .partitions
        .iter()
        .map(|p| (p.partition_index, p.partition_size, p.offset_lag))
        .collect();
    assert_eq!(sizes.len(), 2);
    assert_eq!((sizes[0].0, sizes[0].1), (0, 0), "partition 0 is empty");
    assert_eq!(sizes[1].0, 1);
    assert!(
        sizes[1].1 > 20 * 21,
        "partition 1 holds the records: {sizes:?}"
    );
    assert!(
        sizes.iter().all(|s| s.2 == 0),
        "no lag on a leader: {sizes:?}"
    );

    // Named partitions: only those held here are listed.
    let ResponseKind::DescribeLogDirs(named) = call(
        &broker,
        ApiKey::DescribeLogDirs,
        2,
        RequestKind::DescribeLogDirs(DescribeLogDirsRequest::default().with_topics(Some(vec![
            describe_log_dirs_request::DescribableLogDirTopic::default()
                .with_topic(name("a"))
                .with_partitions(vec![1, 9]),
        ]))),
    )
    .await
    else {
        panic!("no DescribeLogDirs response")
    };
    let topics: Vec<(String, Vec<i32>)> = named.results[0]
        .topics
        .iter()
        .map(|t| {
            (
                t.name.0.to_string(),
                t.partitions.iter().map(|p| p.partition_index).collect(),
            )
        })
        .collect();
    assert_eq!(topics, [("a".to_string(), vec![1])]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_quorum_names_the_controller_and_its_voters() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path()).await;
    create(&broker, "a", 1).await;
    let quorum = |topic: &str, partition: i32| {
        RequestKind::DescribeQuorum(DescribeQuorumRequest::default().with_topics(vec![
            describe_quorum_request::TopicData::default()
                .with_topic_name(name(topic))
                .with_partitions(vec![
                    describe_quorum_request::PartitionData::default()
                        .with_partition_index(partition),
                ]),
        ]))
    };
    let ResponseKind::DescribeQuorum(resp) = call(
        &broker,
        ApiKey::DescribeQuorum,
        2,
        quorum("__cluster_metadata", 0),
    )
    .await
    else {
        panic!("no DescribeQuorum response")
    };
    assert_eq!(resp.error_code, 0);
    let p = &resp.topics[0].partitions[0];
    assert_eq!((p.error_code, p.leader_id.0), (0, 1), "{resp:?}");
    assert!(p.leader_epoch >= 1, "a raft term: {resp:?}");
    assert!(
        p.high_watermark >= 2,
        "registration and the topic committed: {resp:?}"
    );
    let voters: Vec<(i32, i64)> = p
        .current_voters
        .iter()
        .map(|v| (v.replica_id.0, v.log_end_offset))
        .collect();
    assert_eq!(
        voters,
        [(1, p.high_watermark)],
        "the only voter holds everything"
    );
    assert!(p.observers.is_empty());
    assert_eq!(resp.nodes.len(), 1, "v2 names the voters' endpoints");
    assert_eq!(resp.nodes[0].node_id.0, 1);
    assert!(!resp.nodes[0].listeners.is_empty());

    // Anything but the metadata quorum's one partition is refused as a whole.
    for (topic, partition) in [("a", 0), ("__cluster_metadata", 1)] {
        let ResponseKind::DescribeQuorum(resp) =
            call(&broker, ApiKey::DescribeQuorum, 2, quorum(topic, partition)).await
        else {
            panic!("no DescribeQuorum response")
        };
        assert_eq!(
            resp.error_code,
            code::UNKNOWN_TOPIC_OR_PARTITION,
            "{topic}-{partition}"
        );
        assert!(resp.topics.is_empty());
    }
}

/// The newest versions' additions: ListOffsets -4 and -5 (KIP-405, KIP-1005; nothing is
/// tiered), DescribeCluster v2's endpoint types, ListGroups v5's type filter and DescribeGroups
/// v6's GROUP_ID_NOT_FOUND for a group that does not exist (KIP-1043).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_newest_versions_answer_as_kafka() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path()).await;
    create(&broker, "a", 1).await;
    produce(&broker, "a", 0, 5).await;
    let mut r = DeleteRecordsRequest::default();
    r.topics = vec![delete_records_request::DeleteRecordsTopic::default()
        .with_name(name("a"))
        .with_partitions(vec![
            delete_records_request::DeleteRecordsPartition::default()
                .with_partition_index(0)
                .with_offset(2),
        ])];
    r.timeout_ms = 5000;
    let ResponseKind::DeleteRecords(resp) = call(
        &broker,
        ApiKey::DeleteRecords,
        2,
        RequestKind::DeleteRecords(r),
    )
    .await
    else {
        panic!("no DeleteRecords response")
    };
    assert_eq!(resp.topics[0].partitions[0].error_code, 0);

    let list = |timestamp: i64| {
        RequestKind::ListOffsets(ListOffsetsRequest::default().with_topics(vec![
            list_offsets_request::ListOffsetsTopic::default()
                .with_name(name("a"))
                .with_partitions(vec![list_offsets_request::ListOffsetsPartition::default()
                    .with_timestamp(timestamp)]),
        ]))
    };
    let mut offsets = Vec::new();
    for timestamp in [-1, -2, -4, -5] {
        let ResponseKind::ListOffsets(resp) =
            call(&broker, ApiKey::ListOffsets, 10, list(timestamp)).await
        else {
            panic!("no ListOffsets response")
        };
        let p = &resp.topics[0].partitions[0];
        assert_eq!(p.error_code, 0, "{timestamp}");
        offsets.push((timestamp, p.offset));
    }
    assert_eq!(offsets, [(-1, 5), (-2, 2), (-4, 2), (-5, -1)]);

    let cluster = |endpoint_type: i8, include_fenced_brokers: bool| {
        RequestKind::DescribeCluster(
            DescribeClusterRequest::default()
                .with_endpoint_type(endpoint_type)
                .with_include_fenced_brokers(include_fenced_brokers),
        )
    };
    let ResponseKind::DescribeCluster(resp) =
        call(&broker, ApiKey::DescribeCluster, 2, cluster(1, true)).await
    else {
        panic!("no DescribeCluster response")
    };
    assert_eq!((resp.error_code, resp.controller_id.0), (0, 1));
    let brokers: Vec<(i32, bool)> = resp
        .brokers
        .iter()
        .map(|b| (b.broker_id.0, b.is_fenced))
        .collect();
    assert_eq!(brokers, [(1, false)]);
    for (endpoint_type, error) in [
        (2, code::MISMATCHED_ENDPOINT_TYPE),
        (3, code::UNSUPPORTED_ENDPOINT_TYPE),
    ] {
        let ResponseKind::DescribeCluster(resp) = call(
            &broker,
            ApiKey::DescribeCluster,
            2,
            cluster(endpoint_type, false),
        )
        .await
        else {
            panic!("no DescribeCluster response")
        };
        assert_eq!(resp.error_code, error, "endpoint type {endpoint_type}");
        assert!(resp.brokers.is_empty() && resp.error_message.is_some());
    }

    // No group exists: v6 says so per group; v5 answers the Dead state as before.
    let describe = |v| {
        let broker = broker.clone();
        async move {
            let ResponseKind::DescribeGroups(resp) = call(
                &broker,
                ApiKey::DescribeGroups,
                v,
                RequestKind::DescribeGroups(
                    DescribeGroupsRequest::default()
                        .with_groups(vec![GroupId(StrBytes::from_static_str("nobody"))]),
                ),
            )
            .await
            else {
                panic!("no DescribeGroups response")
            };
            resp.groups[0].clone()
        }
    };
    let ResponseKind::FindCoordinator(found) = call(
        &broker,
        ApiKey::FindCoordinator,
        3,
        RequestKind::FindCoordinator(
            FindCoordinatorRequest::default().with_key(StrBytes::from_static_str("nobody")),
        ),
    )
    .await
    else {
        panic!("no FindCoordinator response")
    };
    assert_eq!(found.error_code, 0, "{found:?}");
    // Metadata flags Kafka's internal topics.
    let ResponseKind::Metadata(md) = call(
        &broker,
        ApiKey::Metadata,
        12,
        RequestKind::Metadata(MetadataRequest::default().with_topics(None)),
    )
    .await
    else {
        panic!("no Metadata response")
    };
    let mut internal: Vec<(String, bool)> = md
        .topics
        .iter()
        .map(|t| (t.name.as_ref().unwrap().0.to_string(), t.is_internal))
        .collect();
    internal.sort();
    assert_eq!(
        internal,
        [
            ("__consumer_offsets".to_string(), true),
            ("a".to_string(), false)
        ]
    );
    let mut v6 = describe(6).await;
    for _ in 0..100 {
        if v6.error_code != code::COORDINATOR_LOAD_IN_PROGRESS {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        v6 = describe(6).await;
    }
    assert_eq!(v6.error_code, code::GROUP_ID_NOT_FOUND, "{v6:?}");
    assert!(v6.error_message.is_some());
    let v5 = describe(5).await;
    assert_eq!(
        (v5.error_code, v5.group_state.as_str()),
        (0, "Dead"),
        "{v5:?}"
    );
}
