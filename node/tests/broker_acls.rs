//! Authorisation through an in-process broker with the authoriser on (docs/security.md,
//! "Authorisation"): the ACL APIs (CreateAcls, DescribeAcls, DeleteAcls: Kafka's `AclApis`),
//! produce and consume refused, granted and refused again, super users, prefixed ACLs, DENY
//! over ALLOW, Metadata that hides topics, every served API tried by a principal without
//! rights (nothing read or changed), the denial counter, SECURITY_DISABLED without an
//! authoriser, and ACLs that survive a restart.

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use keel_core::acl::{AuthorizerConfig, Operation, ResourceType};
use keel_core::batch::{BatchBuilder, Compression};
use keel_core::controller::TopicDefaults;
use keel_core::error_code as code;
use keel_node::broker::{Broker, Settings};
use keel_node::metrics::Metrics;
use keel_node::security::Principal;
use keel_node::wire::{Handler, HandlerResult, RequestContext, API_SUPPORT_TABLE};

const ADMIN: &str = "admin";
const ALICE: &str = "alice";

fn s(x: &str) -> StrBytes {
    StrBytes::from_string(x.into())
}

async fn open(dir: &std::path::Path, authorizer: Option<AuthorizerConfig>) -> Arc<Broker> {
    let mut settings = Settings {
        auto_create_topics: true,
        topic_defaults: TopicDefaults {
            partitions: 1,
            replication_factor: 1,
        },
        offsets_topic_partitions: 1,
        authorizer,
        ..Settings::single(1, dir.to_path_buf())
    };
    settings.group.initial_rebalance_delay_ms = 0;
    settings.transactions.partitions = 1;
    Broker::open(settings, Arc::new(Metrics::new()))
        .await
        .unwrap()
}

fn authorizer() -> Option<AuthorizerConfig> {
    Some(AuthorizerConfig {
        super_users: BTreeSet::from(["User:admin".to_string()]),
        allow_if_no_acl: false,
    })
}

async fn call(
    broker: &Arc<Broker>,
    user: &str,
    key: ApiKey,
    v: i16,
    r: RequestKind,
) -> HandlerResult {
    let ctx = RequestContext {
        principal: Principal::user(user),
        ..RequestContext::local(key, v)
    };
    broker.clone().handle(ctx, r).await
}

/// Sends `$request` as `$user`, API `$kind` at `$v`, and unwraps the response of that kind.
macro_rules! request {
    ($broker:expr, $user:expr, $kind:ident, $v:expr, $request:expr) => {{
        let result = call(
            $broker,
            $user,
            ApiKey::$kind,
            $v,
            RequestKind::$kind($request),
        )
        .await;
        let Ok(Some(ResponseKind::$kind(response))) = result else {
            panic!(
                concat!("no ", stringify!($kind), " response: {:?}"),
                result.err()
            )
        };
        response
    }};
}

fn acl(
    resource_type: ResourceType,
    name: &str,
    pattern: i8,
    principal: &str,
    operation: Operation,
    permission: i8,
) -> create_acls_request::AclCreation {
    create_acls_request::AclCreation::default()
        .with_resource_type(resource_type.code())
        .with_resource_name(s(name))
        .with_resource_pattern_type(pattern)
        .with_principal(s(principal))
        .with_host(s("*"))
        .with_operation(operation.code())
        .with_permission_type(permission)
}

const LITERAL: i8 = 3;
const PREFIXED: i8 = 4;
const ALLOW: i8 = 3;
const DENY: i8 = 2;

async fn create_acls(broker: &Arc<Broker>, acls: Vec<create_acls_request::AclCreation>) {
    let resp = request!(
        broker,
        ADMIN,
        CreateAcls,
        3,
        CreateAclsRequest::default().with_creations(acls)
    );
    for r in &resp.results {
        assert_eq!(r.error_code, 0, "{:?}", r.error_message);
    }
}

fn any_filter() -> DeleteAclsRequest {
    let filter = delete_acls_request::DeleteAclsFilter::default()
        .with_resource_type_filter(1)
        .with_resource_name_filter(None)
        .with_pattern_type_filter(1)
        .with_principal_filter(None)
        .with_host_filter(None)
        .with_operation(1)
        .with_permission_type(1);
    DeleteAclsRequest::default().with_filters(vec![filter])
}

/// A DescribeAcls filter with no name, principal or host (kafka-protocol's defaults are "").
fn describe_any() -> DescribeAclsRequest {
    DescribeAclsRequest::default()
        .with_resource_name_filter(None)
        .with_principal_filter(None)
        .with_host_filter(None)
}

async fn create_topic(broker: &Arc<Broker>, name: &str) {
    let r = CreateTopicsRequest::default().with_topics(vec![CreatableTopic::default()
        .with_name(TopicName(s(name)))
        .with_num_partitions(1)
        .with_replication_factor(1)]);
    let resp = request!(broker, ADMIN, CreateTopics, 7, r);
    assert_eq!(resp.topics[0].error_code, 0);
}

fn produce_request(topic: &str) -> ProduceRequest {
    let batch = BatchBuilder::new(Compression::None)
        .record(1000, Some(b"k"), Some(b"v"))
        .build()
        .unwrap()
        .into_bytes();
    ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![produce_request::TopicProduceData::default()
            .with_name(TopicName(s(topic)))
            .with_partition_data(vec![
                produce_request::PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(batch)),
            ])])
}

/// The produce's error for each partition, in response order.
async fn produce(broker: &Arc<Broker>, user: &str, topic: &str) -> i16 {
    let resp = request!(broker, user, Produce, 9, produce_request(topic));
    resp.responses[0].partition_responses[0].error_code
}

async fn fetch(broker: &Arc<Broker>, user: &str, topic: &str) -> (i16, usize) {
    let r = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![fetch_request::FetchTopic::default()
            .with_topic(TopicName(s(topic)))
            .with_partitions(vec![fetch_request::FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)])]);
    let resp = request!(broker, user, Fetch, 12, r);
    let p = &resp.responses[0].partitions[0];
    (p.error_code, p.records.as_ref().map_or(0, Bytes::len))
}

async fn log_end(broker: &Arc<Broker>, topic: &str) -> i64 {
    let r = ListOffsetsRequest::default().with_topics(vec![
        list_offsets_request::ListOffsetsTopic::default()
            .with_name(TopicName(s(topic)))
            .with_partitions(vec![list_offsets_request::ListOffsetsPartition::default()
                .with_partition_index(0)
                .with_timestamp(-1)]),
    ]);
    let resp = request!(broker, ADMIN, ListOffsets, 7, r);
    resp.topics[0].partitions[0].offset
}

/// Reference: KafkaApis.handleProduceRequest and handleFetchRequest (TOPIC WRITE and READ),
/// AclApis (CreateAcls, DeleteAcls); StandardAuthorizer (no ACL: denied; super users).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_and_fetch_are_refused_granted_and_refused_again() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path(), authorizer()).await;
    create_topic(&broker, "orders").await;

    // No ACL: refused, and nothing appended.
    assert_eq!(
        produce(&broker, ALICE, "orders").await,
        code::TOPIC_AUTHORIZATION_FAILED
    );
    assert_eq!(log_end(&broker, "orders").await, 0);
    assert_eq!(
        fetch(&broker, ALICE, "orders").await.0,
        code::TOPIC_AUTHORIZATION_FAILED
    );
    // The super user passes without any ACL.
    assert_eq!(produce(&broker, ADMIN, "orders").await, 0);
    assert_eq!(log_end(&broker, "orders").await, 1);
    assert!(
        broker
            .metrics()
            .denials(ResourceType::Topic, Operation::Write)
            >= 1
    );
    assert!(broker
        .metrics()
        .render()
        .contains("keel_authorization_denials_total{resource_type=\"TOPIC\",operation=\"WRITE\"}"));

    // Granted.
    create_acls(
        &broker,
        vec![
            acl(
                ResourceType::Topic,
                "orders",
                LITERAL,
                "User:alice",
                Operation::Write,
                ALLOW,
            ),
            acl(
                ResourceType::Topic,
                "orders",
                LITERAL,
                "User:alice",
                Operation::Read,
                ALLOW,
            ),
        ],
    )
    .await;
    assert_eq!(produce(&broker, ALICE, "orders").await, 0);
    assert_eq!(log_end(&broker, "orders").await, 2);
    let (e, bytes) = fetch(&broker, ALICE, "orders").await;
    assert_eq!((e, bytes > 0), (0, true));

    // DescribeAcls sees both, grouped under one resource.
    let describe = describe_any()
        .with_resource_type_filter(ResourceType::Topic.code())
        .with_resource_name_filter(Some(s("orders")))
        .with_pattern_type_filter(2)
        .with_operation(1)
        .with_permission_type(1);
    let resp = request!(&broker, ADMIN, DescribeAcls, 3, describe.clone());
    assert_eq!(resp.error_code, 0);
    assert_eq!(resp.resources.len(), 1);
    assert_eq!(resp.resources[0].acls.len(), 2);

    // Revoked: refused again.
    let resp = request!(&broker, ADMIN, DeleteAcls, 3, any_filter());
    assert_eq!(resp.filter_results[0].error_code, 0);
    assert_eq!(resp.filter_results[0].matching_acls.len(), 2);
    assert_eq!(
        produce(&broker, ALICE, "orders").await,
        code::TOPIC_AUTHORIZATION_FAILED
    );
    assert_eq!(
        fetch(&broker, ALICE, "orders").await.0,
        code::TOPIC_AUTHORIZATION_FAILED
    );
    assert_eq!(log_end(&broker, "orders").await, 2);
    let resp = request!(&broker, ADMIN, DescribeAcls, 3, describe);
    assert!(resp.resources.is_empty());
}

/// Reference: StandardAuthorizerData (PREFIXED patterns; a DENY wins over an ALLOW).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefixed_acls_and_deny_over_allow() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path(), authorizer()).await;
    for t in ["team-a.orders", "team-a.audit", "team-b.orders"] {
        create_topic(&broker, t).await;
    }
    create_acls(
        &broker,
        vec![
            acl(
                ResourceType::Topic,
                "team-a.",
                PREFIXED,
                "User:alice",
                Operation::Write,
                ALLOW,
            ),
            acl(
                ResourceType::Topic,
                "team-a.audit",
                LITERAL,
                "User:alice",
                Operation::Write,
                DENY,
            ),
        ],
    )
    .await;
    assert_eq!(produce(&broker, ALICE, "team-a.orders").await, 0);
    assert_eq!(
        produce(&broker, ALICE, "team-a.audit").await,
        code::TOPIC_AUTHORIZATION_FAILED,
        "DENY beats the prefixed ALLOW"
    );
    assert_eq!(
        produce(&broker, ALICE, "team-b.orders").await,
        code::TOPIC_AUTHORIZATION_FAILED
    );
    // A request mixing allowed and denied topics: each answered for itself.
    let mut r = produce_request("team-a.orders");
    r.topic_data
        .extend(produce_request("team-b.orders").topic_data);
    let resp = request!(&broker, ALICE, Produce, 9, r);
    let errors: Vec<(String, i16)> = resp
        .responses
        .iter()
        .map(|t| (t.name.0.to_string(), t.partition_responses[0].error_code))
        .collect();
    assert_eq!(
        errors,
        vec![
            ("team-a.orders".to_string(), 0),
            (
                "team-b.orders".to_string(),
                code::TOPIC_AUTHORIZATION_FAILED
            )
        ]
    );

    // Metadata: all topics shows only what alice may describe (WRITE implies DESCRIBE; the
    // DENY of WRITE does not deny DESCRIBE); a named topic without it gets the error.
    let resp = request!(
        &broker,
        ALICE,
        Metadata,
        12,
        MetadataRequest::default().with_topics(None)
    );
    let names: BTreeSet<String> = resp
        .topics
        .iter()
        .filter_map(|t| t.name.as_ref().map(|n| n.0.to_string()))
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["team-a.orders".to_string(), "team-a.audit".to_string()])
    );
    let named = MetadataRequest::default()
        .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
        )
        .with_name(Some(TopicName(s("team-b.orders"))))]))
        .with_allow_auto_topic_creation(false);
    let resp = request!(&broker, ALICE, Metadata, 12, named);
    assert_eq!(resp.topics[0].error_code, code::TOPIC_AUTHORIZATION_FAILED);
    assert!(resp.topics[0].partitions.is_empty());
    // Auto-creation needs CREATE: a describable missing topic is refused, and not created.
    let auto = MetadataRequest::default()
        .with_topics(Some(vec![metadata_request::MetadataRequestTopic::default(
        )
        .with_name(Some(TopicName(s("team-a.new"))))]))
        .with_allow_auto_topic_creation(true);
    let resp = request!(&broker, ALICE, Metadata, 12, auto);
    assert_eq!(resp.topics[0].error_code, code::TOPIC_AUTHORIZATION_FAILED);
    assert!(broker.with_metadata(|m| m.topic("team-a.new").is_none()));
}

/// Reference: AclApis (ALTER and DESCRIBE on the cluster; UNKNOWN elements fail parsing, which
/// closes the connection; SECURITY_DISABLED without an authoriser); AclControlManager
/// (INVALID_REQUEST for a bad binding).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_acl_apis_check_the_cluster_and_their_input() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path(), authorizer()).await;
    let create = CreateAclsRequest::default().with_creations(vec![acl(
        ResourceType::Topic,
        "orders",
        LITERAL,
        "User:alice",
        Operation::Read,
        ALLOW,
    )]);
    let resp = request!(&broker, ALICE, CreateAcls, 3, create.clone());
    assert_eq!(
        resp.results[0].error_code,
        code::CLUSTER_AUTHORIZATION_FAILED
    );
    let resp = request!(&broker, ALICE, DeleteAcls, 3, any_filter());
    assert_eq!(
        resp.filter_results[0].error_code,
        code::CLUSTER_AUTHORIZATION_FAILED
    );
    let describe = describe_any()
        .with_resource_type_filter(1)
        .with_pattern_type_filter(1)
        .with_operation(1)
        .with_permission_type(1);
    let resp = request!(&broker, ALICE, DescribeAcls, 3, describe.clone());
    assert_eq!(resp.error_code, code::CLUSTER_AUTHORIZATION_FAILED);
    assert!(broker.with_metadata(|m| m.acls().is_empty()));

    // ALTER on the cluster for alice: she may manage ACLs (ALTER implies DESCRIBE).
    create_acls(
        &broker,
        vec![acl(
            ResourceType::Cluster,
            "kafka-cluster",
            LITERAL,
            "User:alice",
            Operation::Alter,
            ALLOW,
        )],
    )
    .await;
    let resp = request!(&broker, ALICE, CreateAcls, 3, create);
    assert_eq!(resp.results[0].error_code, 0);
    let resp = request!(&broker, ALICE, DescribeAcls, 3, describe);
    assert_eq!(resp.error_code, 0);
    assert_eq!(resp.resources.len(), 2);

    // Bad bindings: INVALID_REQUEST each, the good one in the same request is created.
    let resp = request!(
        &broker,
        ADMIN,
        CreateAcls,
        3,
        CreateAclsRequest::default().with_creations(vec![
            acl(
                ResourceType::Cluster,
                "other",
                LITERAL,
                "User:bob",
                Operation::Alter,
                ALLOW
            ),
            acl(
                ResourceType::Topic,
                "",
                LITERAL,
                "User:bob",
                Operation::Read,
                ALLOW
            ),
            acl(
                ResourceType::Topic,
                "t",
                LITERAL,
                "bob",
                Operation::Read,
                ALLOW
            ),
            acl(
                ResourceType::Topic,
                "t",
                LITERAL,
                "User:bob",
                Operation::Read,
                ALLOW
            ),
        ])
    );
    let codes: Vec<i16> = resp.results.iter().map(|r| r.error_code).collect();
    assert_eq!(
        codes,
        vec![
            code::INVALID_REQUEST,
            code::INVALID_REQUEST,
            code::INVALID_REQUEST,
            0
        ]
    );

    // UNKNOWN or ANY where Kafka's parser refuses them: the connection is closed.
    let mut any_op = acl(
        ResourceType::Topic,
        "t",
        LITERAL,
        "User:bob",
        Operation::Read,
        ALLOW,
    );
    any_op.operation = 1;
    let mut match_pattern = any_op.clone();
    match_pattern.operation = Operation::Read.code();
    match_pattern.resource_pattern_type = 2;
    for bad in [any_op, match_pattern] {
        let r = CreateAclsRequest::default().with_creations(vec![bad]);
        let result = call(
            &broker,
            ADMIN,
            ApiKey::CreateAcls,
            3,
            RequestKind::CreateAcls(r),
        )
        .await;
        assert!(result.is_err(), "closed");
    }
    let mut unknown = any_filter();
    unknown.filters[0].permission_type = 0;
    let result = call(
        &broker,
        ADMIN,
        ApiKey::DeleteAcls,
        3,
        RequestKind::DeleteAcls(unknown),
    )
    .await;
    assert!(result.is_err(), "closed");
    let unknown = describe_any()
        .with_resource_type_filter(9)
        .with_pattern_type_filter(1)
        .with_operation(1)
        .with_permission_type(1);
    let result = call(
        &broker,
        ADMIN,
        ApiKey::DescribeAcls,
        3,
        RequestKind::DescribeAcls(unknown),
    )
    .await;
    assert!(result.is_err(), "closed");
    assert_eq!(broker.with_metadata(|m| m.acls().len()), 3);
}

/// Without `authorizer.class.name`, everything is allowed as before and the ACL APIs answer
/// SECURITY_DISABLED (Kafka's AclApis without an authoriser).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_authoriser_everything_is_allowed_and_acl_apis_are_disabled() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path(), None).await;
    create_topic(&broker, "orders").await;
    assert_eq!(produce(&broker, ALICE, "orders").await, 0);
    let resp = request!(
        &broker,
        ADMIN,
        CreateAcls,
        3,
        CreateAclsRequest::default().with_creations(vec![acl(
            ResourceType::Topic,
            "orders",
            LITERAL,
            "User:alice",
            Operation::Read,
            ALLOW
        )])
    );
    assert_eq!(resp.results[0].error_code, code::SECURITY_DISABLED);
    let resp = request!(&broker, ADMIN, DeleteAcls, 3, any_filter());
    assert_eq!(resp.filter_results[0].error_code, code::SECURITY_DISABLED);
    assert!(broker.with_metadata(|m| m.acls().is_empty()));
}

/// ACLs are metadata records: a broker reopened on the same directory replays them from its
/// metadata log and authorises as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acls_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let broker = open(dir.path(), authorizer()).await;
        create_topic(&broker, "orders").await;
        create_acls(
            &broker,
            vec![acl(
                ResourceType::Topic,
                "orders",
                LITERAL,
                "User:alice",
                Operation::Write,
                ALLOW,
            )],
        )
        .await;
        assert_eq!(produce(&broker, ALICE, "orders").await, 0);
        broker.checkpoint_all();
    }
    let broker = open(dir.path(), authorizer()).await;
    assert_eq!(broker.with_metadata(|m| m.acls().len()), 1);
    assert_eq!(produce(&broker, ALICE, "orders").await, 0);
    assert_eq!(
        produce(&broker, "bob", "orders").await,
        code::TOPIC_AUTHORIZATION_FAILED
    );
}

/// Every API the broker serves, tried by a principal without any ACL: each is refused with an
/// authorisation error, answers an empty listing, or closes the connection; afterwards
/// nothing was created, appended, committed or deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_api_without_rights_reads_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path(), authorizer()).await;
    create_topic(&broker, "orders").await;
    assert_eq!(produce(&broker, ADMIN, "orders").await, 0);
    let before = broker.with_metadata(|m| m.clone());
    let t = || TopicName(s("orders"));
    let requests: Vec<(ApiKey, i16, RequestKind)> = vec![
        (
            ApiKey::Produce,
            9,
            RequestKind::Produce(produce_request("orders")),
        ),
        (
            ApiKey::Produce,
            9,
            RequestKind::Produce(produce_request("missing")),
        ),
        (
            ApiKey::Fetch,
            12,
            RequestKind::Fetch(
                FetchRequest::default()
                    .with_replica_id(BrokerId(-1))
                    .with_topics(vec![fetch_request::FetchTopic::default()
                        .with_topic(t())
                        .with_partitions(vec![fetch_request::FetchPartition::default()
                            .with_partition_max_bytes(1 << 20)])]),
            ),
        ),
        (
            ApiKey::ListOffsets,
            7,
            RequestKind::ListOffsets(ListOffsetsRequest::default().with_topics(vec![
                list_offsets_request::ListOffsetsTopic::default()
                    .with_name(t())
                    .with_partitions(vec![list_offsets_request::ListOffsetsPartition::default()]),
            ])),
        ),
        (
            ApiKey::Metadata,
            12,
            RequestKind::Metadata(MetadataRequest::default().with_topics(None)),
        ),
        (
            ApiKey::OffsetForLeaderEpoch,
            4,
            RequestKind::OffsetForLeaderEpoch(
                OffsetForLeaderEpochRequest::default()
                    .with_replica_id(BrokerId(-1))
                    .with_topics(vec![
                        offset_for_leader_epoch_request::OffsetForLeaderTopic::default()
                            .with_topic(t())
                            .with_partitions(vec![
                                offset_for_leader_epoch_request::OffsetForLeaderPartition::default(
                                ),
                            ]),
                    ]),
            ),
        ),
        (
            ApiKey::DeleteRecords,
            2,
            RequestKind::DeleteRecords(DeleteRecordsRequest::default().with_topics(vec![
                delete_records_request::DeleteRecordsTopic::default()
                    .with_name(t())
                    .with_partitions(vec![delete_records_request::DeleteRecordsPartition::default()
                        .with_offset(1)]),
            ])),
        ),
        (
            ApiKey::InitProducerId,
            4,
            RequestKind::InitProducerId(
                InitProducerIdRequest::default().with_transactional_id(None),
            ),
        ),
        (
            ApiKey::InitProducerId,
            4,
            RequestKind::InitProducerId(
                InitProducerIdRequest::default()
                    .with_transactional_id(Some(TransactionalId(s("tx"))))
                    .with_transaction_timeout_ms(10_000),
            ),
        ),
        (
            ApiKey::AddPartitionsToTxn,
            3,
            RequestKind::AddPartitionsToTxn(
                AddPartitionsToTxnRequest::default()
                    .with_v3_and_below_transactional_id(TransactionalId(s("tx")))
                    .with_v3_and_below_topics(vec![
                        add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
                            .with_name(t())
                            .with_partitions(vec![0]),
                    ]),
            ),
        ),
        (
            ApiKey::AddOffsetsToTxn,
            4,
            RequestKind::AddOffsetsToTxn(
                AddOffsetsToTxnRequest::default()
                    .with_transactional_id(TransactionalId(s("tx")))
                    .with_group_id(GroupId(s("g"))),
            ),
        ),
        (
            ApiKey::EndTxn,
            4,
            RequestKind::EndTxn(
                EndTxnRequest::default().with_transactional_id(TransactionalId(s("tx"))),
            ),
        ),
        (
            ApiKey::DescribeTransactions,
            0,
            RequestKind::DescribeTransactions(
                DescribeTransactionsRequest::default()
                    .with_transactional_ids(vec![TransactionalId(s("tx"))]),
            ),
        ),
        (
            ApiKey::ListTransactions,
            1,
            RequestKind::ListTransactions(ListTransactionsRequest::default()),
        ),
        (
            ApiKey::DescribeProducers,
            0,
            RequestKind::DescribeProducers(DescribeProducersRequest::default().with_topics(vec![
                describe_producers_request::TopicRequest::default()
                    .with_name(t())
                    .with_partition_indexes(vec![0]),
            ])),
        ),
        (
            ApiKey::CreateTopics,
            7,
            RequestKind::CreateTopics(CreateTopicsRequest::default().with_topics(vec![
                CreatableTopic::default()
                    .with_name(TopicName(s("new")))
                    .with_num_partitions(1)
                    .with_replication_factor(1),
            ])),
        ),
        (
            ApiKey::DeleteTopics,
            6,
            RequestKind::DeleteTopics(DeleteTopicsRequest::default().with_topics(vec![
                delete_topics_request::DeleteTopicState::default().with_name(Some(t())),
            ])),
        ),
        (
            ApiKey::CreatePartitions,
            3,
            RequestKind::CreatePartitions(CreatePartitionsRequest::default().with_topics(vec![
                create_partitions_request::CreatePartitionsTopic::default()
                    .with_name(t())
                    .with_count(3),
            ])),
        ),
        (
            ApiKey::DescribeConfigs,
            4,
            RequestKind::DescribeConfigs(DescribeConfigsRequest::default().with_resources(vec![
                describe_configs_request::DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(s("orders")),
                describe_configs_request::DescribeConfigsResource::default()
                    .with_resource_type(4)
                    .with_resource_name(s("1")),
            ])),
        ),
        (
            ApiKey::IncrementalAlterConfigs,
            1,
            RequestKind::IncrementalAlterConfigs(
                IncrementalAlterConfigsRequest::default().with_resources(vec![
                    incremental_alter_configs_request::AlterConfigsResource::default()
                        .with_resource_type(2)
                        .with_resource_name(s("orders"))
                        .with_configs(vec![
                            incremental_alter_configs_request::AlterableConfig::default()
                                .with_name(s("retention.ms"))
                                .with_value(Some(s("1000"))),
                        ]),
                ]),
            ),
        ),
        (
            ApiKey::AlterConfigs,
            2,
            RequestKind::AlterConfigs(AlterConfigsRequest::default().with_resources(vec![
                alter_configs_request::AlterConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(s("orders"))
                    .with_configs(vec![alter_configs_request::AlterableConfig::default()
                        .with_name(s("retention.ms"))
                        .with_value(Some(s("1000")))]),
            ])),
        ),
        (
            ApiKey::FindCoordinator,
            3,
            RequestKind::FindCoordinator(FindCoordinatorRequest::default().with_key(s("g"))),
        ),
        (
            ApiKey::FindCoordinator,
            4,
            RequestKind::FindCoordinator(
                FindCoordinatorRequest::default()
                    .with_key_type(1)
                    .with_coordinator_keys(vec![s("tx")]),
            ),
        ),
        (
            ApiKey::JoinGroup,
            7,
            RequestKind::JoinGroup(
                JoinGroupRequest::default()
                    .with_group_id(GroupId(s("g")))
                    .with_session_timeout_ms(10_000)
                    .with_rebalance_timeout_ms(10_000)
                    .with_protocol_type(s("consumer")),
            ),
        ),
        (
            ApiKey::SyncGroup,
            5,
            RequestKind::SyncGroup(SyncGroupRequest::default().with_group_id(GroupId(s("g")))),
        ),
        (
            ApiKey::Heartbeat,
            4,
            RequestKind::Heartbeat(HeartbeatRequest::default().with_group_id(GroupId(s("g")))),
        ),
        (
            ApiKey::LeaveGroup,
            4,
            RequestKind::LeaveGroup(LeaveGroupRequest::default().with_group_id(GroupId(s("g")))),
        ),
        (
            ApiKey::OffsetCommit,
            8,
            RequestKind::OffsetCommit(
                OffsetCommitRequest::default()
                    .with_group_id(GroupId(s("g")))
                    .with_generation_id_or_member_epoch(-1)
                    .with_topics(vec![
                        offset_commit_request::OffsetCommitRequestTopic::default()
                            .with_name(t())
                            .with_partitions(vec![
                                offset_commit_request::OffsetCommitRequestPartition::default()
                                    .with_committed_offset(1),
                            ]),
                    ]),
            ),
        ),
        (
            ApiKey::OffsetFetch,
            7,
            RequestKind::OffsetFetch(OffsetFetchRequest::default().with_group_id(GroupId(s("g")))),
        ),
        (
            ApiKey::OffsetFetch,
            8,
            RequestKind::OffsetFetch(OffsetFetchRequest::default().with_groups(vec![
                    offset_fetch_request::OffsetFetchRequestGroup::default()
                        .with_group_id(GroupId(s("g"))),
                ])),
        ),
        (
            ApiKey::DescribeGroups,
            5,
            RequestKind::DescribeGroups(
                DescribeGroupsRequest::default().with_groups(vec![GroupId(s("g"))]),
            ),
        ),
        (
            ApiKey::ListGroups,
            4,
            RequestKind::ListGroups(ListGroupsRequest::default()),
        ),
        (
            ApiKey::DeleteGroups,
            2,
            RequestKind::DeleteGroups(
                DeleteGroupsRequest::default().with_groups_names(vec![GroupId(s("g"))]),
            ),
        ),
        (
            ApiKey::DescribeCluster,
            1,
            RequestKind::DescribeCluster(DescribeClusterRequest::default()),
        ),
        (
            ApiKey::ElectLeaders,
            2,
            RequestKind::ElectLeaders(ElectLeadersRequest::default()),
        ),
        (
            ApiKey::TxnOffsetCommit,
            3,
            RequestKind::TxnOffsetCommit(
                TxnOffsetCommitRequest::default()
                    .with_transactional_id(TransactionalId(s("t")))
                    .with_group_id(GroupId(s("g")))
                    .with_topics(vec![
                        txn_offset_commit_request::TxnOffsetCommitRequestTopic::default()
                            .with_name(TopicName(s("orders")))
                            .with_partitions(vec![
                                txn_offset_commit_request::TxnOffsetCommitRequestPartition::default()
                                    .with_partition_index(0)
                                    .with_committed_offset(1),
                            ]),
                    ]),
            ),
        ),
        (
            ApiKey::CreateAcls,
            3,
            RequestKind::CreateAcls(CreateAclsRequest::default().with_creations(vec![acl(
                ResourceType::Topic,
                "orders",
                LITERAL,
                "User:alice",
                Operation::All,
                ALLOW,
            )])),
        ),
        (ApiKey::DeleteAcls, 3, RequestKind::DeleteAcls(any_filter())),
        (
            ApiKey::AlterUserScramCredentials,
            0,
            RequestKind::AlterUserScramCredentials(
                AlterUserScramCredentialsRequest::default()
                    .with_upsertions(vec![upsertion("alice", 1, "mine", 4096)]),
            ),
        ),
        (
            ApiKey::DescribeUserScramCredentials,
            0,
            RequestKind::DescribeUserScramCredentials(
                DescribeUserScramCredentialsRequest::default(),
            ),
        ),
        (
            ApiKey::OffsetDelete,
            0,
            RequestKind::OffsetDelete(
                OffsetDeleteRequest::default()
                    .with_group_id(GroupId(s("g")))
                    .with_topics(vec![offset_delete_request::OffsetDeleteRequestTopic::default()
                        .with_name(t())
                        .with_partitions(vec![
                            offset_delete_request::OffsetDeleteRequestPartition::default(),
                        ])]),
            ),
        ),
        (
            ApiKey::DescribeQuorum,
            2,
            RequestKind::DescribeQuorum(DescribeQuorumRequest::default().with_topics(vec![
                describe_quorum_request::TopicData::default()
                    .with_topic_name(TopicName(s("__cluster_metadata")))
                    .with_partitions(vec![describe_quorum_request::PartitionData::default()]),
            ])),
        ),
        (
            ApiKey::DescribeLogDirs,
            4,
            RequestKind::DescribeLogDirs(DescribeLogDirsRequest::default().with_topics(None)),
        ),
        (
            ApiKey::DescribeTopicPartitions,
            0,
            RequestKind::DescribeTopicPartitions(DescribeTopicPartitionsRequest::default().with_topics(
                vec![describe_topic_partitions_request::TopicRequest::default().with_name(t())],
            )),
        ),
        (
            ApiKey::DescribeTopicPartitions,
            0,
            RequestKind::DescribeTopicPartitions(DescribeTopicPartitionsRequest::default()),
        ),
        (
            ApiKey::AlterPartitionReassignments,
            1,
            RequestKind::AlterPartitionReassignments(
                AlterPartitionReassignmentsRequest::default().with_topics(vec![
                    alter_partition_reassignments_request::ReassignableTopic::default()
                        .with_name(t())
                        .with_partitions(vec![
                            alter_partition_reassignments_request::ReassignablePartition::default()
                                .with_replicas(Some(vec![BrokerId(1), BrokerId(2)])),
                        ]),
                ]),
            ),
        ),
        (
            ApiKey::UnregisterBroker,
            0,
            RequestKind::UnregisterBroker(
                UnregisterBrokerRequest::default().with_broker_id(BrokerId(1)),
            ),
        ),
        (
            ApiKey::ListPartitionReassignments,
            0,
            RequestKind::ListPartitionReassignments(
                ListPartitionReassignmentsRequest::default().with_topics(None),
            ),
        ),
        (
            ApiKey::DescribeAcls,
            3,
            RequestKind::DescribeAcls(
                describe_any()
                    .with_resource_type_filter(1)
                    .with_pattern_type_filter(1)
                    .with_operation(1)
                    .with_permission_type(1),
            ),
        ),
    ];
    let denied = [
        code::TOPIC_AUTHORIZATION_FAILED,
        code::GROUP_AUTHORIZATION_FAILED,
        code::CLUSTER_AUTHORIZATION_FAILED,
        code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
    ];
    let mut tried = BTreeSet::new();
    for (api, v, request) in requests {
        tried.insert(format!("{api:?}"));
        let result = call(&broker, ALICE, api, v, request).await;
        let response = match result {
            Err(_) => continue,
            Ok(None) => panic!("{api:?}: no response"),
            Ok(Some(r)) => r,
        };
        let text = format!("{response:?}");
        // Listings answer without what alice may not see: nothing at all here.
        let empty_listing = match &response {
            ResponseKind::Metadata(r) => r.topics.is_empty(),
            ResponseKind::ListGroups(r) => r.groups.is_empty(),
            ResponseKind::ListTransactions(r) => r.transaction_states.is_empty(),
            ResponseKind::DescribeCluster(r) => r.error_code == 0,
            ResponseKind::DescribeTopicPartitions(r) => r.topics.is_empty(),
            _ => false,
        };
        let refused = denied.iter().any(|e| {
            text.contains(&format!("error_code: {e},"))
                || text.contains(&format!("partition_error_code: {e},"))
        });
        assert!(
            refused || empty_listing,
            "{api:?} v{v} was not refused: {text}"
        );
    }
    // Every served API but the authentication ones was tried.
    for row in API_SUPPORT_TABLE {
        let name = format!("{:?}", row.api_key);
        if !["ApiVersions", "SaslHandshake", "SaslAuthenticate"].contains(&name.as_str()) {
            assert!(tried.contains(&name), "{name} was not tried");
        }
    }
    // Nothing changed: no topic, partition, config or ACL; no record appended.
    let after = broker.with_metadata(|m| m.clone());
    assert_eq!(
        after.topics().collect::<Vec<_>>(),
        before.topics().collect::<Vec<_>>()
    );
    assert!(after.acls().is_empty());
    assert_eq!(after.scram_credentials().count(), 0);
    assert_eq!(log_end(&broker, "orders").await, 1);
}

/// `Hi(password, salt, iterations)` for SCRAM-SHA-256, as a client computes it for
/// AlterUserScramCredentials.
fn salted_sha256(password: &str, salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut out = vec![0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(iterations).unwrap(),
        salt,
        password.as_bytes(),
        &mut out,
    );
    out
}

fn upsertion(
    user: &str,
    mechanism: i8,
    password: &str,
    iterations: i32,
) -> alter_user_scram_credentials_request::ScramCredentialUpsertion {
    let salt = b"0123456789abcdef".to_vec();
    let salted = if mechanism == 1 {
        salted_sha256(password, &salt, iterations.max(1) as u32)
    } else {
        let mut out = vec![0u8; 64];
        ring::pbkdf2::derive(
            ring::pbkdf2::PBKDF2_HMAC_SHA512,
            std::num::NonZeroU32::new(iterations.max(1) as u32).unwrap(),
            &salt,
            password.as_bytes(),
            &mut out,
        );
        out
    };
    alter_user_scram_credentials_request::ScramCredentialUpsertion::default()
        .with_name(s(user))
        .with_mechanism(mechanism)
        .with_iterations(iterations)
        .with_salt(Bytes::from(salt))
        .with_salted_password(Bytes::from(salted))
}

fn plain_login(users: &keel_node::security::sasl::SaslUsers, user: &str, password: &str) -> bool {
    use keel_node::security::sasl::{Mechanism, SaslExchange};
    let token = format!("\0{user}\0{password}");
    SaslExchange::new(Mechanism::Plain)
        .step(token.as_bytes(), users, "nonce")
        .is_ok()
}

/// Reference: KIP-554, ScramControlManager (AlterUserScramCredentials), KafkaApis
/// (DescribeUserScramCredentials; ALTER and DESCRIBE on the cluster). The credentials are
/// metadata records: SASL authenticates with them, and they survive a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_credentials_are_managed_in_the_metadata_log() {
    let dir = tempfile::tempdir().unwrap();
    let configured = || {
        keel_node::security::sasl::SaslUsers::from_passwords(
            [("admin", "admin-secret")],
            4096,
            || vec![7; 16],
        )
    };
    {
        let broker = open(dir.path(), authorizer()).await;
        let users = configured();
        users.attach_metadata(keel_node::broker::scram_lookup(&broker));
        assert!(!plain_login(&users, "carol", "carol-1"));

        // alice may not; admin (a super user) may.
        let alter = AlterUserScramCredentialsRequest::default()
            .with_upsertions(vec![upsertion("carol", 1, "carol-1", 4096)]);
        let resp = request!(&broker, ALICE, AlterUserScramCredentials, 0, alter.clone());
        assert_eq!(
            resp.results[0].error_code,
            code::CLUSTER_AUTHORIZATION_FAILED
        );
        let resp = request!(
            &broker,
            ALICE,
            DescribeUserScramCredentials,
            0,
            DescribeUserScramCredentialsRequest::default()
        );
        assert_eq!(resp.error_code, code::CLUSTER_AUTHORIZATION_FAILED);
        let resp = request!(&broker, ADMIN, AlterUserScramCredentials, 0, alter);
        assert_eq!(
            (resp.results[0].user.as_str(), resp.results[0].error_code),
            ("carol", 0)
        );
        assert!(
            plain_login(&users, "carol", "carol-1"),
            "PLAIN checks the stored credential"
        );
        assert!(!plain_login(&users, "carol", "wrong"));
        assert!(
            plain_login(&users, "admin", "admin-secret"),
            "configured users still log in"
        );

        // Kafka's refusals, one result per user.
        let resp = request!(
            &broker,
            ADMIN,
            AlterUserScramCredentials,
            0,
            AlterUserScramCredentialsRequest::default()
                .with_deletions(vec![
                    alter_user_scram_credentials_request::ScramCredentialDeletion::default()
                        .with_name(s("ghost"))
                        .with_mechanism(1)
                ])
                .with_upsertions(vec![
                    upsertion("dave", 1, "x", 100),
                    upsertion("erin", 1, "x", 4096),
                    upsertion("erin", 2, "x", 4096),
                    upsertion("frank", 9, "x", 4096),
                ])
        );
        let got: Vec<(String, i16)> = resp
            .results
            .iter()
            .map(|r| (r.user.to_string(), r.error_code))
            .collect();
        assert_eq!(
            got,
            vec![
                ("ghost".to_string(), code::RESOURCE_NOT_FOUND),
                ("dave".to_string(), code::UNACCEPTABLE_CREDENTIAL),
                ("erin".to_string(), code::DUPLICATE_RESOURCE),
                ("frank".to_string(), code::UNSUPPORTED_SASL_MECHANISM),
            ]
        );

        // A second mechanism, then describe: mechanisms and iterations only.
        let resp = request!(
            &broker,
            ADMIN,
            AlterUserScramCredentials,
            0,
            AlterUserScramCredentialsRequest::default()
                .with_upsertions(vec![upsertion("carol", 2, "carol-1", 8192)])
        );
        assert_eq!(resp.results[0].error_code, 0);
        let describe = DescribeUserScramCredentialsRequest::default().with_users(Some(vec![
            describe_user_scram_credentials_request::UserName::default().with_name(s("carol")),
            describe_user_scram_credentials_request::UserName::default().with_name(s("nobody")),
        ]));
        let resp = request!(&broker, ADMIN, DescribeUserScramCredentials, 0, describe);
        assert_eq!(resp.results[0].error_code, 0);
        let infos: Vec<(i8, i32)> = resp.results[0]
            .credential_infos
            .iter()
            .map(|c| (c.mechanism, c.iterations))
            .collect();
        assert_eq!(infos, vec![(1, 4096), (2, 8192)]);
        assert_eq!(resp.results[1].error_code, code::RESOURCE_NOT_FOUND);
        broker.checkpoint_all();
    }
    // Reopened: the credentials are replayed from the metadata log.
    let broker = open(dir.path(), authorizer()).await;
    let users = configured();
    users.attach_metadata(keel_node::broker::scram_lookup(&broker));
    assert!(plain_login(&users, "carol", "carol-1"));
    // A new password replaces the old; a deletion of both mechanisms ends the logins.
    let resp = request!(
        &broker,
        ADMIN,
        AlterUserScramCredentials,
        0,
        AlterUserScramCredentialsRequest::default()
            .with_upsertions(vec![upsertion("carol", 1, "carol-2", 4096)])
    );
    assert_eq!(resp.results[0].error_code, 0);
    assert!(!plain_login(&users, "carol", "carol-1"));
    assert!(plain_login(&users, "carol", "carol-2"));
    for mechanism in [1, 2] {
        let resp = request!(
            &broker,
            ADMIN,
            AlterUserScramCredentials,
            0,
            AlterUserScramCredentialsRequest::default().with_deletions(vec![
                alter_user_scram_credentials_request::ScramCredentialDeletion::default()
                    .with_name(s("carol"))
                    .with_mechanism(mechanism)
            ])
        );
        assert_eq!(resp.results[0].error_code, 0);
    }
    assert!(!plain_login(&users, "carol", "carol-2"));
    let resp = request!(
        &broker,
        ADMIN,
        DescribeUserScramCredentials,
        0,
        DescribeUserScramCredentialsRequest::default()
    );
    assert!(resp.results.is_empty());
}

/// Reference: KafkaApis.handleProduceRequest (transactional batches need WRITE on the
/// transactional id, else the whole request gets TRANSACTIONAL_ID_AUTHORIZATION_FAILED);
/// InitProducerId (WRITE on the transactional id; without one IDEMPOTENT_WRITE on the cluster
/// or WRITE on some topic, KIP-679).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactional_and_idempotent_producers_need_their_rights() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path(), authorizer()).await;
    create_topic(&broker, "orders").await;
    create_acls(
        &broker,
        vec![acl(
            ResourceType::Topic,
            "orders",
            LITERAL,
            "User:alice",
            Operation::Write,
            ALLOW,
        )],
    )
    .await;
    // A transactional batch (attribute bit 4) from a producer without WRITE on its id.
    let mut r = produce_request("orders");
    let records = r.topic_data[0].partition_data[0].records.take().unwrap();
    let mut bytes = records.to_vec();
    bytes[22] |= 0x10;
    r.topic_data[0].partition_data[0].records = Some(Bytes::from(bytes));
    r.transactional_id = Some(TransactionalId(s("tx")));
    let resp = request!(&broker, ALICE, Produce, 9, r);
    assert_eq!(
        resp.responses[0].partition_responses[0].error_code,
        code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED
    );
    assert_eq!(log_end(&broker, "orders").await, 0);

    // Idempotent: WRITE on a topic is enough (KIP-679); bob has nothing.
    let init = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(-1);
    let resp = request!(&broker, ALICE, InitProducerId, 4, init.clone());
    assert_eq!(resp.error_code, 0);
    let resp = request!(&broker, "bob", InitProducerId, 4, init);
    assert_eq!(resp.error_code, code::CLUSTER_AUTHORIZATION_FAILED);
    let txn = InitProducerIdRequest::default()
        .with_transactional_id(Some(TransactionalId(s("tx"))))
        .with_transaction_timeout_ms(10_000);
    let resp = request!(&broker, ALICE, InitProducerId, 4, txn);
    assert_eq!(resp.error_code, code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED);
}

/// DescribeGroups v3+ with `include_authorized_operations`: the operations the principal may
/// do on each group (READ implies DESCRIBE, as in Kafka), not DELETE without its ACL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_groups_reports_the_authorized_operations() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path(), authorizer()).await;
    create_acls(
        &broker,
        vec![acl(
            ResourceType::Group,
            "g",
            LITERAL,
            "User:alice",
            Operation::Read,
            ALLOW,
        )],
    )
    .await;
    let found = request!(
        &broker,
        ADMIN,
        FindCoordinator,
        3,
        FindCoordinatorRequest::default().with_key(s("g"))
    );
    assert_eq!(found.error_code, 0);
    let describe = |user: &'static str| {
        let broker = broker.clone();
        async move {
            for _ in 0..100 {
                let resp = request!(
                    &broker,
                    user,
                    DescribeGroups,
                    5,
                    DescribeGroupsRequest::default()
                        .with_groups(vec![GroupId(s("g"))])
                        .with_include_authorized_operations(true)
                );
                let g = resp.groups[0].clone();
                if g.error_code != code::COORDINATOR_LOAD_IN_PROGRESS {
                    return g;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            panic!("the coordinator never loaded")
        }
    };
    let g = describe(ALICE).await;
    assert_eq!(g.error_code, 0);
    assert_eq!(
        g.authorized_operations,
        Operation::Read.bit() | Operation::Describe.bit()
    );
    let g = describe(ADMIN).await;
    assert_eq!(
        g.authorized_operations,
        Operation::Read.bit() | Operation::Describe.bit() | Operation::Delete.bit(),
        "a super user may do everything"
    );
}
