//! The group coordinator through a single in-process broker: FindCoordinator creates
//! `__consumer_offsets`, two members join, sync, heartbeat, commit and fetch offsets, and after
//! the broker is reopened on the same directory the coordinator reloads the committed offsets
//! and the group from the partition's log (Kafka's `GroupMetadataManager.loadGroupsAndOffsets`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use keel_core::controller::TopicDefaults;
use keel_core::error_code::COORDINATOR_LOAD_IN_PROGRESS;
use keel_node::broker::{group_partition_for, Broker, Settings, OFFSETS_TOPIC};
use keel_node::metrics::Metrics;
use keel_node::wire::{Handler, RequestContext};

#[allow(dead_code)] // shared with interop.rs and cluster.rs, which use the rest
mod common;

const GROUP: &str = "g";
const OFFSETS_PARTITIONS: i32 = 3;

fn s(x: &str) -> StrBytes {
    StrBytes::from_string(x.into())
}

async fn open(dir: &std::path::Path) -> Arc<Broker> {
    let mut settings = Settings {
        auto_create_topics: false,
        topic_defaults: TopicDefaults {
            partitions: 1,
            replication_factor: 1,
        },
        offsets_topic_partitions: OFFSETS_PARTITIONS,
        ..Settings::single(1, dir.to_path_buf())
    };
    settings.group.initial_rebalance_delay_ms = 0;
    Broker::open(settings, Arc::new(Metrics::new()))
        .await
        .unwrap()
}

/// Sends `$request` to `$broker` as API `$kind` at `$version` and unwraps the response of the
/// same kind (a panic names a response of another kind).
macro_rules! request {
    ($broker:expr, $kind:ident, $version:expr, $request:expr) => {{
        let ResponseKind::$kind(response) = call(
            $broker,
            ApiKey::$kind,
            $version,
            RequestKind::$kind($request),
        )
        .await
        else {
            panic!(concat!("no ", stringify!($kind), " response"))
        };
        response
    }};
}

async fn call(broker: &Arc<Broker>, key: ApiKey, version: i16, r: RequestKind) -> ResponseKind {
    let ctx = RequestContext {
        client_id: Some(s("test-client")),
        ..RequestContext::local(key, version)
    };
    broker.clone().handle(ctx, r).await.unwrap().unwrap()
}

async fn create_topic(broker: &Arc<Broker>, name: &str, partitions: i32) {
    let mut r = CreateTopicsRequest::default();
    r.topics = vec![CreatableTopic::default()
        .with_name(TopicName(s(name)))
        .with_num_partitions(partitions)
        .with_replication_factor(1)];
    let resp = request!(broker, CreateTopics, 7, r);
    assert_eq!(resp.topics[0].error_code, 0);
}

async fn find_coordinator(broker: &Arc<Broker>) -> FindCoordinatorResponse {
    let mut r = FindCoordinatorRequest::default();
    r.key = s(GROUP);
    let resp = request!(broker, FindCoordinator, 3, r);
    resp
}

async fn join(broker: &Arc<Broker>, member_id: &str, metadata: &[u8]) -> JoinGroupResponse {
    let mut r = JoinGroupRequest::default();
    r.group_id = GroupId(s(GROUP));
    r.session_timeout_ms = 10_000;
    r.rebalance_timeout_ms = 10_000;
    r.member_id = s(member_id);
    r.protocol_type = s("consumer");
    let mut p = join_group_request::JoinGroupRequestProtocol::default();
    p.name = s("range");
    p.metadata = Bytes::copy_from_slice(metadata);
    r.protocols = vec![p];
    let resp = request!(broker, JoinGroup, 5, r);
    resp
}

/// KIP-394: the first join gets MEMBER_ID_REQUIRED and an id; the caller joins with it.
/// Retries while the coordinator loads.
async fn new_member_id(broker: &Arc<Broker>) -> String {
    for _ in 0..100 {
        let r = join(broker, "", b"meta").await;
        if r.error_code == COORDINATOR_LOAD_IN_PROGRESS {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        assert_eq!(r.error_code, 79, "MEMBER_ID_REQUIRED");
        assert!(r.member_id.starts_with("test-client-"), "{}", r.member_id);
        return r.member_id.to_string();
    }
    panic!("the coordinator never loaded");
}

async fn sync(
    broker: &Arc<Broker>,
    generation: i32,
    member_id: &str,
    assignments: &[(&str, &[u8])],
) -> SyncGroupResponse {
    let mut r = SyncGroupRequest::default();
    r.group_id = GroupId(s(GROUP));
    r.generation_id = generation;
    r.member_id = s(member_id);
    r.assignments = assignments
        .iter()
        .map(|(m, a)| {
            let mut x = sync_group_request::SyncGroupRequestAssignment::default();
            x.member_id = s(m);
            x.assignment = Bytes::copy_from_slice(a);
            x
        })
        .collect();
    let resp = request!(broker, SyncGroup, 3, r);
    resp
}

async fn heartbeat(broker: &Arc<Broker>, generation: i32, member_id: &str) -> i16 {
    let mut r = HeartbeatRequest::default();
    r.group_id = GroupId(s(GROUP));
    r.generation_id = generation;
    r.member_id = s(member_id);
    let resp = request!(broker, Heartbeat, 3, r);
    resp.error_code
}

async fn commit(broker: &Arc<Broker>, generation: i32, member_id: &str, offset: i64) -> i16 {
    let mut p = offset_commit_request::OffsetCommitRequestPartition::default();
    p.partition_index = 0;
    p.committed_offset = offset;
    p.committed_metadata = Some(s("m"));
    let mut t = offset_commit_request::OffsetCommitRequestTopic::default();
    t.name = TopicName(s("t"));
    t.partitions = vec![p];
    let mut r = OffsetCommitRequest::default();
    r.group_id = GroupId(s(GROUP));
    r.generation_id_or_member_epoch = generation;
    r.member_id = s(member_id);
    r.topics = vec![t];
    let resp = request!(broker, OffsetCommit, 7, r);
    assert_eq!(resp.topics.len(), 1);
    assert_eq!(resp.topics[0].partitions.len(), 1);
    resp.topics[0].partitions[0].error_code
}

/// The committed offset and metadata of t-0 (OffsetFetch v5), retrying while loading.
async fn fetch_offset(broker: &Arc<Broker>) -> (i64, String) {
    for _ in 0..100 {
        let mut t = offset_fetch_request::OffsetFetchRequestTopic::default();
        t.name = TopicName(s("t"));
        t.partition_indexes = vec![0];
        let mut r = OffsetFetchRequest::default();
        r.group_id = GroupId(s(GROUP));
        r.topics = Some(vec![t]);
        let resp = request!(broker, OffsetFetch, 5, r);
        if resp.error_code == COORDINATOR_LOAD_IN_PROGRESS {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        assert_eq!(resp.error_code, 0);
        let p = &resp.topics[0].partitions[0];
        assert_eq!(p.error_code, 0);
        return (
            p.committed_offset,
            p.metadata
                .as_ref()
                .map(|m| m.to_string())
                .unwrap_or_default(),
        );
    }
    panic!("the coordinator never loaded");
}

async fn describe(broker: &Arc<Broker>) -> describe_groups_response::DescribedGroup {
    let mut r = DescribeGroupsRequest::default();
    r.groups = vec![GroupId(s(GROUP))];
    let mut resp = request!(broker, DescribeGroups, 4, r);
    resp.groups.pop().unwrap()
}

/// Reference: Kafka's `GroupCoordinator` join/sync/heartbeat protocol, KIP-394, and
/// `GroupMetadataManager` offset storage and loading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_rebalance_commit_and_offsets_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path()).await;
    create_topic(&broker, "t", 2).await;

    // FindCoordinator creates __consumer_offsets and names this broker.
    let fc = find_coordinator(&broker).await;
    assert_eq!(fc.error_code, 0, "{:?}", fc.error_message);
    assert_eq!(fc.node_id.0, 1);
    assert_eq!(fc.host.as_str(), "127.0.0.1");
    assert_eq!(fc.port, 9092);
    let partitions = broker.with_metadata(|m| m.topic(OFFSETS_TOPIC).map(|t| t.partitions.len()));
    assert_eq!(partitions, Some(OFFSETS_PARTITIONS as usize));
    let index = group_partition_for(GROUP, OFFSETS_PARTITIONS);

    // Member A joins alone and leads generation 1.
    let a = new_member_id(&broker).await;
    let ja = join(&broker, &a, b"meta-a").await;
    assert_eq!(ja.error_code, 0);
    assert_eq!(ja.generation_id, 1);
    assert_eq!(ja.leader.as_str(), a);
    assert_eq!(ja.members.len(), 1);
    let sa = sync(&broker, 1, &a, &[(&a, b"all")]).await;
    assert_eq!(sa.error_code, 0);
    assert_eq!(&sa.assignment[..], b"all");
    assert_eq!(heartbeat(&broker, 1, &a).await, 0);

    // Member B joins: a rebalance; A learns it from its heartbeat and rejoins.
    let b = new_member_id(&broker).await;
    let b_join = {
        let (broker, b) = (broker.clone(), b.clone());
        tokio::spawn(async move { join(&broker, &b, b"meta-b").await })
    };
    let mut rebalancing = false;
    for _ in 0..100 {
        if heartbeat(&broker, 1, &a).await == 27 {
            rebalancing = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(rebalancing, "A's heartbeat says REBALANCE_IN_PROGRESS");
    let ja = join(&broker, &a, b"meta-a").await;
    let jb = b_join.await.unwrap();
    assert_eq!((ja.error_code, jb.error_code), (0, 0));
    assert_eq!((ja.generation_id, jb.generation_id), (2, 2));
    assert_eq!(ja.leader.as_str(), a, "the old leader stays leader");
    assert_eq!(ja.members.len(), 2, "the leader sees every member");
    assert!(jb.members.is_empty(), "followers see none");

    // B's sync waits for the leader's; both get their own assignment.
    let b_sync = {
        let (broker, b) = (broker.clone(), b.clone());
        tokio::spawn(async move { sync(&broker, 2, &b, &[]).await })
    };
    let sa = sync(&broker, 2, &a, &[(&a, b"p0"), (&b, b"p1")]).await;
    let sb = b_sync.await.unwrap();
    assert_eq!((sa.error_code, sb.error_code), (0, 0));
    assert_eq!(
        (&sa.assignment[..], &sb.assignment[..]),
        (&b"p0"[..], &b"p1"[..])
    );
    assert_eq!(heartbeat(&broker, 2, &a).await, 0);
    assert_eq!(heartbeat(&broker, 2, &b).await, 0);
    assert_eq!(heartbeat(&broker, 1, &b).await, 22, "ILLEGAL_GENERATION");
    assert_eq!(
        heartbeat(&broker, 2, "nobody").await,
        25,
        "UNKNOWN_MEMBER_ID"
    );

    // Commits: answered once durable; a stale generation is refused.
    assert_eq!(commit(&broker, 2, &a, 42).await, 0);
    assert_eq!(fetch_offset(&broker).await, (42, "m".to_string()));
    assert_eq!(commit(&broker, 1, &b, 7).await, 22, "ILLEGAL_GENERATION");
    assert_eq!(fetch_offset(&broker).await, (42, "m".to_string()));
    let d = describe(&broker).await;
    assert_eq!((d.error_code, d.group_state.as_str()), (0, "Stable"));
    assert_eq!(d.members.len(), 2);
    assert_eq!(d.protocol_data.as_str(), "range");

    // The records are in the offsets partition's log.
    let p = broker.replica(OFFSETS_TOPIC, index).unwrap();
    assert!(
        p.high_watermark().0 >= 2,
        "group metadata and the offset are committed"
    );

    // Nobody else appends to __consumer_offsets.
    let batch = keel_core::batch::BatchBuilder::new(keel_core::batch::Compression::None)
        .record(0, Some(b"k"), Some(b"v"))
        .build()
        .unwrap();
    let mut pd = produce_request::PartitionProduceData::default();
    pd.index = index;
    pd.records = Some(batch.into_bytes());
    let mut td = produce_request::TopicProduceData::default();
    td.name = TopicName(s(OFFSETS_TOPIC));
    td.partition_data = vec![pd];
    let mut r = ProduceRequest::default();
    r.acks = -1;
    r.timeout_ms = 1000;
    r.topic_data = vec![td];
    let resp = request!(&broker, Produce, 8, r);
    assert_eq!(
        resp.responses[0].partition_responses[0].error_code, 17,
        "INVALID_TOPIC_EXCEPTION"
    );

    // Restart: the coordinator loads the group and its offsets from the log.
    drop(p);
    drop(broker);
    let broker = open(dir.path()).await;
    let fc = find_coordinator(&broker).await;
    assert_eq!(fc.error_code, 0);
    assert_eq!(fetch_offset(&broker).await, (42, "m".to_string()));
    let d = describe(&broker).await;
    assert_eq!(
        d.group_state.as_str(),
        "Stable",
        "a loaded group with members is Stable"
    );
    assert_eq!(d.members.len(), 2);
    // The members' sessions restarted at the load: they are still members of generation 2.
    assert_eq!(heartbeat(&broker, 2, &a).await, 0);
    assert_eq!(commit(&broker, 2, &b, 50).await, 0);
    assert_eq!(fetch_offset(&broker).await, (50, "m".to_string()));

    // Both leave; the group empties and can be deleted; its offsets go with it.
    let mut r = LeaveGroupRequest::default();
    r.group_id = GroupId(s(GROUP));
    r.members = [&a, &b]
        .iter()
        .map(|m| {
            let mut x = leave_group_request::MemberIdentity::default();
            x.member_id = s(m);
            x
        })
        .collect();
    let resp = request!(&broker, LeaveGroup, 3, r);
    assert_eq!(resp.error_code, 0);
    assert!(resp.members.iter().all(|m| m.error_code == 0));
    assert_eq!(describe(&broker).await.group_state.as_str(), "Empty");
    let mut r = ListGroupsRequest::default();
    r.states_filter = vec![s("Empty")];
    let resp = request!(&broker, ListGroups, 4, r);
    assert_eq!(resp.groups.len(), 1);
    assert_eq!(resp.groups[0].group_id.0.as_str(), GROUP);
    let mut r = DeleteGroupsRequest::default();
    r.groups_names = vec![GroupId(s(GROUP)), GroupId(s("never-existed"))];
    let resp = request!(&broker, DeleteGroups, 2, r);
    let codes: Vec<i16> = resp.results.iter().map(|r| r.error_code).collect();
    assert_eq!(codes, [0, 69], "deleted; GROUP_ID_NOT_FOUND");
    assert_eq!(
        fetch_offset(&broker).await.0,
        -1,
        "the offsets went with the group"
    );
}

/// FindCoordinator v4 batches keys; transaction keys are not served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_coordinator_v4_batches_keys() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path()).await;
    let mut r = FindCoordinatorRequest::default();
    r.coordinator_keys = vec![s("a"), s("b")];
    let resp = request!(&broker, FindCoordinator, 4, r);
    assert_eq!(resp.coordinators.len(), 2);
    for c in &resp.coordinators {
        assert_eq!((c.error_code, c.node_id.0), (0, 1), "{:?}", c.error_message);
    }
    let mut r = FindCoordinatorRequest::default();
    r.key_type = 1;
    r.coordinator_keys = vec![s("txn")];
    let resp = request!(&broker, FindCoordinator, 4, r);
    // Transactions (issue 15): key type 1 finds the transaction coordinator.
    assert_eq!(
        (
            resp.coordinators[0].error_code,
            resp.coordinators[0].node_id.0
        ),
        (0, 1),
        "{:?}",
        resp.coordinators[0].error_message
    );
}

/// The metrics endpoint reports the committed offsets of the groups this broker coordinates
/// and their lag against the partition's high watermark, and the partitions it leads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_report_a_groups_committed_offset_and_lag() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path()).await;
    create_topic(&broker, "t", 2).await;
    let mut builder = keel_core::batch::BatchBuilder::new(keel_core::batch::Compression::None);
    for i in 0..10 {
        builder = builder.record(i, None, Some(b"v"));
    }
    let mut pd = produce_request::PartitionProduceData::default();
    pd.index = 0;
    pd.records = Some(builder.build().unwrap().into_bytes());
    let mut td = produce_request::TopicProduceData::default();
    td.name = TopicName(s("t"));
    td.partition_data = vec![pd];
    let mut r = ProduceRequest::default();
    r.acks = -1;
    r.timeout_ms = 5000;
    r.topic_data = vec![td];
    let resp = request!(&broker, Produce, 8, r);
    assert_eq!(resp.responses[0].partition_responses[0].error_code, 0);

    assert_eq!(find_coordinator(&broker).await.error_code, 0);
    let a = new_member_id(&broker).await;
    assert_eq!(join(&broker, &a, b"meta-a").await.error_code, 0);
    assert_eq!(sync(&broker, 1, &a, &[(&a, b"all")]).await.error_code, 0);
    assert_eq!(commit(&broker, 1, &a, 4).await, 0);

    let rendered = broker.metrics().render();
    for line in [
        "keel_consumer_group_committed_offset{group=\"g\",topic=\"t\",partition=\"0\"} 4\n",
        "keel_consumer_group_lag{group=\"g\",topic=\"t\",partition=\"0\"} 6\n",
        // t's two partitions and __consumer_offsets' three, all led here, none short of replicas.
        "keel_leader_partitions 5\n",
        "keel_under_replicated_partitions 0\n",
        "keel_offline_partitions 0\n",
    ] {
        assert!(rendered.contains(line), "no {line:?} in\n{rendered}");
    }
    common::promtool_check(&rendered, "a broker's rendered metrics");
}
