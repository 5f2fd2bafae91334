//! Client quotas through an in-process broker (KIP-13, KIP-546; docs/operations.md, "Client
//! quotas"): AlterClientQuotas stores them in the metadata log and refuses what Kafka refuses,
//! DescribeClientQuotas filters them, and a client over its byte rate is answered with
//! `throttle_time_ms` while another client id is not.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use keel_core::batch::{BatchBuilder, Compression};
use keel_core::controller::TopicDefaults;
use keel_core::error_code as code;
use keel_core::quota::THROTTLE_MS_MAX;
use keel_node::broker::{Broker, Settings};
use keel_node::metrics::Metrics;
use keel_node::wire::{Handler, RequestContext};

fn s(x: &str) -> StrBytes {
    StrBytes::from_string(x.into())
}

async fn open(dir: &std::path::Path) -> Arc<Broker> {
    let settings = Settings {
        topic_defaults: TopicDefaults {
            partitions: 1,
            replication_factor: 1,
        },
        offsets_topic_partitions: 1,
        ..Settings::single(1, dir.to_path_buf())
    };
    Broker::open(settings, Arc::new(Metrics::new()))
        .await
        .unwrap()
}

async fn call(
    broker: &Arc<Broker>,
    client_id: &str,
    key: ApiKey,
    v: i16,
    r: RequestKind,
) -> ResponseKind {
    let ctx = RequestContext {
        client_id: Some(s(client_id)),
        ..RequestContext::local(key, v)
    };
    match broker.clone().handle(ctx, r).await {
        Ok(Some(response)) => response,
        other => panic!("{key:?}: no response: {:?}", other.err()),
    }
}

fn entity(kind: &str, name: Option<&str>) -> alter_client_quotas_request::EntityData {
    alter_client_quotas_request::EntityData::default()
        .with_entity_type(s(kind))
        .with_entity_name(name.map(s))
}

fn op(key: &str, value: f64) -> alter_client_quotas_request::OpData {
    alter_client_quotas_request::OpData::default()
        .with_key(s(key))
        .with_value(value)
}

async fn alter(
    broker: &Arc<Broker>,
    entries: Vec<alter_client_quotas_request::EntryData>,
) -> Vec<i16> {
    let r = AlterClientQuotasRequest::default().with_entries(entries);
    let ResponseKind::AlterClientQuotas(resp) = call(
        broker,
        "admin",
        ApiKey::AlterClientQuotas,
        1,
        RequestKind::AlterClientQuotas(r),
    )
    .await
    else {
        panic!("not an AlterClientQuotas response")
    };
    resp.entries.iter().map(|e| e.error_code).collect()
}

/// A produce of one batch whose record value is `value_bytes` long.
fn produce_request(value_bytes: usize) -> ProduceRequest {
    let value = vec![7u8; value_bytes];
    let batch = BatchBuilder::new(Compression::None)
        .record(1000, Some(b"k"), Some(&value))
        .build()
        .unwrap()
        .into_bytes();
    ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![produce_request::TopicProduceData::default()
            .with_name(TopicName(s("t")))
            .with_partition_data(vec![
                produce_request::PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(batch)),
            ])])
}

async fn produce(broker: &Arc<Broker>, client_id: &str, value_bytes: usize) -> (i16, i32) {
    let ResponseKind::Produce(resp) = call(
        broker,
        client_id,
        ApiKey::Produce,
        9,
        RequestKind::Produce(produce_request(value_bytes)),
    )
    .await
    else {
        panic!("not a Produce response")
    };
    (
        resp.responses[0].partition_responses[0].error_code,
        resp.throttle_time_ms,
    )
}

async fn fetch(broker: &Arc<Broker>, client_id: &str) -> (usize, i32) {
    let r = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![fetch_request::FetchTopic::default()
            .with_topic(TopicName(s("t")))
            .with_partitions(vec![fetch_request::FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)])]);
    let ResponseKind::Fetch(resp) =
        call(broker, client_id, ApiKey::Fetch, 12, RequestKind::Fetch(r)).await
    else {
        panic!("not a Fetch response")
    };
    let p = &resp.responses[0].partitions[0];
    (
        p.records.as_ref().map_or(0, Bytes::len),
        resp.throttle_time_ms,
    )
}

/// Reference: KIP-546 (ClientQuotaControlManager: entity and key validation), KIP-13 (the
/// throttle time), KIP-219 (throttle_time_ms in the answer given at once).
#[tokio::test]
async fn quotas_are_stored_described_and_throttle_only_their_clients() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path()).await;
    let create = CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
        .with_name(TopicName(s("t")))
        .with_num_partitions(1)
        .with_replication_factor(1)]);
    call(
        &broker,
        "admin",
        ApiKey::CreateTopics,
        7,
        RequestKind::CreateTopics(create),
    )
    .await;

    let codes = alter(
        &broker,
        vec![
            alter_client_quotas_request::EntryData::default()
                .with_entity(vec![entity("client-id", Some("slow"))])
                .with_ops(vec![
                    op("producer_byte_rate", 10_000.0),
                    op("consumer_byte_rate", 10_000.0),
                ]),
            alter_client_quotas_request::EntryData::default()
                .with_entity(vec![entity("user", None)])
                .with_ops(vec![op("request_percentage", 50.0)]),
            alter_client_quotas_request::EntryData::default()
                .with_entity(vec![entity("client-id", Some("x"))])
                .with_ops(vec![op("producer_byte_rate", 0.5)]),
        ],
    )
    .await;
    assert_eq!(
        codes,
        [code::NONE, code::INVALID_REQUEST, code::INVALID_REQUEST]
    );

    let describe = DescribeClientQuotasRequest::default().with_components(vec![
        describe_client_quotas_request::ComponentData::default()
            .with_entity_type(s("client-id"))
            .with_match_type(0)
            .with_match(Some(s("slow"))),
    ]);
    let ResponseKind::DescribeClientQuotas(described) = call(
        &broker,
        "admin",
        ApiKey::DescribeClientQuotas,
        1,
        RequestKind::DescribeClientQuotas(describe),
    )
    .await
    else {
        panic!("not a DescribeClientQuotas response")
    };
    assert_eq!(described.error_code, code::NONE);
    let entries = described.entries.expect("entries");
    assert_eq!(entries.len(), 1);
    let mut values: Vec<(String, f64)> = entries[0]
        .values
        .iter()
        .map(|v| (v.key.to_string(), v.value))
        .collect();
    values.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        values,
        [
            ("consumer_byte_rate".to_string(), 10_000.0),
            ("producer_byte_rate".to_string(), 10_000.0)
        ]
    );

    // 200 KB at once is 20 KB/s over the 10 s minimum window: twice the quota.
    let (error, throttle) = produce(&broker, "slow", 200_000).await;
    assert_eq!(error, code::NONE, "a throttled produce is still appended");
    assert!(
        (9_000..=THROTTLE_MS_MAX as i32).contains(&throttle),
        "throttle {throttle}"
    );
    // Another client id has no quota.
    assert_eq!(produce(&broker, "fast", 200_000).await, (code::NONE, 0));
    // The fetch quota is counted apart from the produce quota.
    let (bytes, throttle) = fetch(&broker, "slow").await;
    assert!(bytes > 400_000, "fetched {bytes}");
    assert!(
        throttle > 0,
        "a fetch of {bytes} bytes over 10 KB/s is throttled"
    );
    assert_eq!(fetch(&broker, "fast").await.1, 0);
}
