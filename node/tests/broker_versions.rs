//! Every API the broker serves, at every version it advertises, on success and error paths:
//! the response must encode at the request's version. kafka-protocol refuses to encode a
//! field the version does not have, and a response that fails to encode closes the client's
//! connection (seen with kcat: ListOffsets v2 with a leader epoch set).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_records_request::{
    DeleteRecordsPartition, DeleteRecordsTopic,
};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use keel_core::batch::{BatchBuilder, Compression};
use keel_core::controller::TopicDefaults;
use keel_node::broker::{Broker, Settings};
use keel_node::wire::{encode_response, Handler, RequestContext, API_SUPPORT_TABLE};

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn name(v: &str) -> TopicName {
    TopicName(s(v))
}

fn ctx(api_key: ApiKey, api_version: i16) -> RequestContext {
    RequestContext::local(api_key, api_version)
}

fn batch() -> Bytes {
    BatchBuilder::new(Compression::None)
        .record(1000, Some(b"k"), Some(b"v"))
        .build()
        .unwrap()
        .into_bytes()
}

/// The id a request names topic `t` by from Produce v13 and Fetch v13 (KIP-516): the success
/// topic's real id, and for "missing" an id no topic has.
fn topic_id(t: &str, t_id: uuid::Uuid) -> uuid::Uuid {
    if t == "t" {
        t_id
    } else {
        uuid::Uuid::from_u128(0x006d_6973_7369_6e67)
    }
}

/// Every request variant the test sends for one API at one version; `t_id` is the id of the
/// success topic "t".
fn requests(api: ApiKey, v: i16, round: usize, t_id: uuid::Uuid) -> Vec<RequestKind> {
    let topics = ["t", "missing"];
    match api {
        ApiKey::Metadata => {
            let mut all = MetadataRequest::default();
            all.topics = None;
            all.allow_auto_topic_creation = v >= 4;
            let mut some = MetadataRequest::default();
            some.topics = Some(
                topics
                    .iter()
                    .map(|t| MetadataRequestTopic::default().with_name(Some(name(t))))
                    .collect(),
            );
            vec![RequestKind::Metadata(all), RequestKind::Metadata(some)]
        }
        ApiKey::Produce => [1i16, -1, 0]
            .iter()
            .flat_map(|&acks| {
                topics.iter().map(move |t| {
                    let mut r = ProduceRequest::default();
                    r.acks = acks;
                    r.timeout_ms = 5000;
                    let data = if v >= 13 {
                        TopicProduceData::default().with_topic_id(topic_id(t, t_id))
                    } else {
                        TopicProduceData::default().with_name(name(t))
                    };
                    r.topic_data = vec![data.with_partition_data(vec![
                        PartitionProduceData::default()
                            .with_index(0)
                            .with_records(Some(batch())),
                    ])];
                    RequestKind::Produce(r)
                })
            })
            .chain(std::iter::once({
                // A corrupt batch: an error on the success topic.
                let mut r = ProduceRequest::default();
                r.acks = 1;
                r.timeout_ms = 1000;
                let data = if v >= 13 {
                    TopicProduceData::default().with_topic_id(t_id)
                } else {
                    TopicProduceData::default().with_name(name("t"))
                };
                r.topic_data = vec![data.with_partition_data(vec![PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(Bytes::from_static(b"garbage")))])];
                RequestKind::Produce(r)
            }))
            .collect(),
        ApiKey::Fetch => [0i64, 1_000_000]
            .iter()
            .map(|&offset| {
                let mut r = FetchRequest::default();
                r.max_wait_ms = 0;
                r.max_bytes = 1 << 20;
                r.topics = topics
                    .iter()
                    .map(|t| {
                        let topic = if v >= 13 {
                            FetchTopic::default().with_topic_id(topic_id(t, t_id))
                        } else {
                            FetchTopic::default().with_topic(name(t))
                        };
                        topic
                            .with_partitions(vec![FetchPartition::default()
                                .with_partition(0)
                                .with_fetch_offset(offset)
                                .with_partition_max_bytes(1 << 20)])
                    })
                    .collect();
                RequestKind::Fetch(r)
            })
            .collect(),
        ApiKey::ListOffsets => [-1i64, -2, -3, 0]
            .iter()
            .map(|&ts| {
                let mut r = ListOffsetsRequest::default();
                r.topics = topics
                    .iter()
                    .map(|t| {
                        ListOffsetsTopic::default()
                            .with_name(name(t))
                            .with_partitions(vec![
                                ListOffsetsPartition::default().with_timestamp(ts)
                            ])
                    })
                    .collect();
                RequestKind::ListOffsets(r)
            })
            .collect(),
        ApiKey::OffsetForLeaderEpoch => {
            let mut r = OffsetForLeaderEpochRequest::default();
            r.topics = topics
                .iter()
                .map(|t| {
                    OffsetForLeaderTopic::default()
                        .with_topic(name(t))
                        .with_partitions(vec![
                            OffsetForLeaderPartition::default().with_leader_epoch(0)
                        ])
                })
                .collect();
            vec![RequestKind::OffsetForLeaderEpoch(r)]
        }
        ApiKey::DeleteRecords => {
            let mut r = DeleteRecordsRequest::default();
            r.topics = topics
                .iter()
                .map(|t| {
                    DeleteRecordsTopic::default()
                        .with_name(name(t))
                        .with_partitions(vec![DeleteRecordsPartition::default().with_offset(0)])
                })
                .collect();
            vec![RequestKind::DeleteRecords(r)]
        }
        ApiKey::InitProducerId => {
            let mut r = InitProducerIdRequest::default();
            r.producer_id = ProducerId(-1);
            r.producer_epoch = -1;
            let mut txn = r.clone();
            txn.transactional_id = Some(TransactionalId(s("txn-a")));
            txn.transaction_timeout_ms = 60_000;
            vec![
                RequestKind::InitProducerId(r),
                RequestKind::InitProducerId(txn),
            ]
        }
        ApiKey::AddPartitionsToTxn => {
            let mut r = AddPartitionsToTxnRequest::default();
            let topics = vec![
                add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
                    .with_name(name("t"))
                    .with_partitions(vec![0]),
            ];
            if v >= 4 {
                r.transactions = vec![
                    add_partitions_to_txn_request::AddPartitionsToTxnTransaction::default()
                        .with_transactional_id(TransactionalId(s("txn-a")))
                        .with_producer_id(ProducerId(5))
                        .with_verify_only(true)
                        .with_topics(topics.clone()),
                ];
                if v >= 5 {
                    // v5's add for a transaction-version-2 write, as a partition leader sends it.
                    r.transactions.push(
                        add_partitions_to_txn_request::AddPartitionsToTxnTransaction::default()
                            .with_transactional_id(TransactionalId(s("txn-b")))
                            .with_producer_id(ProducerId(6))
                            .with_topics(topics),
                    );
                }
            } else {
                r.v3_and_below_transactional_id = TransactionalId(s("txn-a"));
                r.v3_and_below_producer_id = ProducerId(5);
                r.v3_and_below_topics = topics;
            }
            vec![RequestKind::AddPartitionsToTxn(r)]
        }
        ApiKey::AddOffsetsToTxn => {
            let mut r = AddOffsetsToTxnRequest::default();
            r.transactional_id = TransactionalId(s("txn-a"));
            r.group_id = GroupId(s("group-a"));
            vec![RequestKind::AddOffsetsToTxn(r)]
        }
        ApiKey::TxnOffsetCommit => {
            let mut r = TxnOffsetCommitRequest::default();
            r.transactional_id = TransactionalId(s("txn-a"));
            r.group_id = GroupId(s("group-a"));
            r.producer_id = ProducerId(5);
            r.generation_id = -1;
            r.topics = vec![
                txn_offset_commit_request::TxnOffsetCommitRequestTopic::default()
                    .with_name(name("t"))
                    .with_partitions(vec![
                        txn_offset_commit_request::TxnOffsetCommitRequestPartition::default()
                            .with_partition_index(0)
                            .with_committed_offset(1),
                        txn_offset_commit_request::TxnOffsetCommitRequestPartition::default()
                            .with_partition_index(7)
                            .with_committed_offset(1),
                    ]),
            ];
            vec![
                RequestKind::TxnOffsetCommit(r),
                RequestKind::TxnOffsetCommit(TxnOffsetCommitRequest::default()),
            ]
        }
        ApiKey::EndTxn => {
            let mut r = EndTxnRequest::default();
            r.transactional_id = TransactionalId(s("txn-a"));
            vec![RequestKind::EndTxn(r)]
        }
        ApiKey::DescribeProducers => {
            let mut r = DescribeProducersRequest::default();
            r.topics = vec![describe_producers_request::TopicRequest::default()
                .with_name(name("t"))
                .with_partition_indexes(vec![0, 7])];
            vec![RequestKind::DescribeProducers(r)]
        }
        ApiKey::DescribeTransactions => {
            let mut r = DescribeTransactionsRequest::default();
            r.transactional_ids = vec![TransactionalId(s("txn-a")), TransactionalId(s("none"))];
            vec![RequestKind::DescribeTransactions(r)]
        }
        ApiKey::ListTransactions => {
            let mut r = ListTransactionsRequest::default();
            r.state_filters = vec![s("Ongoing"), s("Nonsense")];
            let mut requests = vec![
                RequestKind::ListTransactions(ListTransactionsRequest::default()),
                RequestKind::ListTransactions(r),
            ];
            if v >= 2 {
                // KIP-1152's pattern, and one that does not compile.
                for pattern in ["txn-.*", "("] {
                    requests.push(RequestKind::ListTransactions(
                        ListTransactionsRequest::default()
                            .with_transactional_id_pattern(Some(s(pattern))),
                    ));
                }
            }
            requests
        }
        ApiKey::CreateTopics => {
            let mut r = CreateTopicsRequest::default();
            r.timeout_ms = 1000;
            r.topics = vec![
                CreatableTopic::default()
                    .with_name(name(&format!("created-{v}-{round}")))
                    .with_num_partitions(2)
                    .with_replication_factor(1)
                    .with_configs(vec![CreatableTopicConfig::default()
                        .with_name(s("retention.ms"))
                        .with_value(Some(s("1000")))]),
                CreatableTopic::default()
                    .with_name(name("t"))
                    .with_num_partitions(1)
                    .with_replication_factor(1),
                CreatableTopic::default()
                    .with_name(name("bad name!"))
                    .with_num_partitions(1)
                    .with_replication_factor(1),
            ];
            vec![RequestKind::CreateTopics(r)]
        }
        ApiKey::DeleteTopics => {
            let mut r = DeleteTopicsRequest::default();
            let targets = [format!("created-{v}-{round}"), "missing".to_string()];
            if v >= 6 {
                r.topics = targets
                    .iter()
                    .map(|t| DeleteTopicState::default().with_name(Some(name(t))))
                    .collect();
            } else {
                r.topic_names = targets.iter().map(|t| name(t)).collect();
            }
            vec![RequestKind::DeleteTopics(r)]
        }
        ApiKey::CreatePartitions => {
            let mut r = CreatePartitionsRequest::default();
            r.topics = vec![
                CreatePartitionsTopic::default()
                    .with_name(name("t"))
                    .with_count(2 + round as i32),
                CreatePartitionsTopic::default()
                    .with_name(name("missing"))
                    .with_count(3),
            ];
            vec![RequestKind::CreatePartitions(r)]
        }
        ApiKey::DescribeConfigs => [2i8, 4, 1]
            .iter()
            .map(|&kind| {
                let mut r = DescribeConfigsRequest::default();
                r.resources = ["t", "missing", "1"]
                    .iter()
                    .map(|n| {
                        DescribeConfigsResource::default()
                            .with_resource_type(kind)
                            .with_resource_name(s(n))
                            .with_configuration_keys(None)
                    })
                    .collect();
                RequestKind::DescribeConfigs(r)
            })
            .collect(),
        ApiKey::IncrementalAlterConfigs => {
            let mut r = IncrementalAlterConfigsRequest::default();
            r.resources = ["t", "missing"]
                .iter()
                .map(|n| {
                    AlterConfigsResource::default()
                        .with_resource_type(2)
                        .with_resource_name(s(n))
                        .with_configs(vec![AlterableConfig::default()
                            .with_name(s("retention.ms"))
                            .with_config_operation(0)
                            .with_value(Some(s("5000")))])
                })
                .collect();
            vec![RequestKind::IncrementalAlterConfigs(r)]
        }
        ApiKey::AlterConfigs => {
            let mut r = AlterConfigsRequest::default();
            r.resources = ["t", "missing"]
                .iter()
                .map(|n| {
                    alter_configs_request::AlterConfigsResource::default()
                        .with_resource_type(2)
                        .with_resource_name(s(n))
                        .with_configs(vec![alter_configs_request::AlterableConfig::default()
                            .with_name(s("retention.ms"))
                            .with_value(Some(s("6000")))])
                })
                .collect();
            vec![RequestKind::AlterConfigs(r)]
        }
        ApiKey::DescribeCluster => vec![RequestKind::DescribeCluster(
            DescribeClusterRequest::default(),
        )],
        ApiKey::DescribeLogDirs => vec![
            RequestKind::DescribeLogDirs(DescribeLogDirsRequest::default().with_topics(None)),
            RequestKind::DescribeLogDirs(DescribeLogDirsRequest::default().with_topics(Some(
                vec![describe_log_dirs_request::DescribableLogDirTopic::default()
                    .with_topic(name("t"))
                    .with_partitions(vec![0, 5])],
            ))),
        ],
        ApiKey::DescribeTopicPartitions => vec![
            RequestKind::DescribeTopicPartitions(
                DescribeTopicPartitionsRequest::default().with_response_partition_limit(1),
            ),
            RequestKind::DescribeTopicPartitions(
                DescribeTopicPartitionsRequest::default().with_topics(vec![
                    describe_topic_partitions_request::TopicRequest::default().with_name(name("t")),
                    describe_topic_partitions_request::TopicRequest::default()
                        .with_name(name("missing")),
                ]),
            ),
        ],
        ApiKey::DescribeQuorum => vec![
            RequestKind::DescribeQuorum(DescribeQuorumRequest::default().with_topics(vec![
                describe_quorum_request::TopicData::default()
                    .with_topic_name(name("__cluster_metadata"))
                    .with_partitions(vec![describe_quorum_request::PartitionData::default()]),
            ])),
            RequestKind::DescribeQuorum(DescribeQuorumRequest::default()),
        ],
        ApiKey::OffsetDelete => vec![RequestKind::OffsetDelete(
            OffsetDeleteRequest::default()
                .with_group_id(GroupId(s("g")))
                .with_topics(vec![
                    offset_delete_request::OffsetDeleteRequestTopic::default()
                        .with_name(name("t"))
                        .with_partitions(vec![
                            offset_delete_request::OffsetDeleteRequestPartition::default(),
                        ]),
                ]),
        )],
        ApiKey::FindCoordinator => {
            let mut r = FindCoordinatorRequest::default();
            if v >= 4 {
                r.coordinator_keys = vec![s("group-a"), s("group-b")];
            } else {
                r.key = s("group-a");
            }
            let mut txn = r.clone();
            if v >= 1 {
                txn.key_type = 1;
                if v >= 4 {
                    txn.coordinator_keys = vec![s("txn-a"), s("txn-b")];
                } else {
                    txn.key = s("txn-a");
                }
            }
            let mut unknown = txn.clone();
            if v >= 1 {
                unknown.key_type = 9;
            }
            vec![
                RequestKind::FindCoordinator(r),
                RequestKind::FindCoordinator(txn),
                RequestKind::FindCoordinator(unknown),
            ]
        }
        ApiKey::JoinGroup => {
            let mut r = JoinGroupRequest::default();
            r.group_id = GroupId(s("group-a"));
            r.protocol_type = s("consumer");
            r.protocols = vec![join_group_request::JoinGroupRequestProtocol::default()
                .with_name(s("range"))
                .with_metadata(Bytes::from_static(b"m"))];
            // Session timeout 0: INVALID_SESSION_TIMEOUT (or NOT_COORDINATOR, or
            // COORDINATOR_LOAD_IN_PROGRESS), answered at once.
            vec![RequestKind::JoinGroup(r)]
        }
        ApiKey::SyncGroup => {
            let mut r = SyncGroupRequest::default();
            r.group_id = GroupId(s("group-a"));
            r.member_id = s("nobody");
            vec![RequestKind::SyncGroup(r)]
        }
        ApiKey::Heartbeat => {
            let mut r = HeartbeatRequest::default();
            r.group_id = GroupId(s("group-a"));
            r.member_id = s("nobody");
            vec![RequestKind::Heartbeat(r)]
        }
        ApiKey::LeaveGroup => {
            let mut r = LeaveGroupRequest::default();
            r.group_id = GroupId(s("group-a"));
            if v >= 3 {
                r.members = vec![
                    leave_group_request::MemberIdentity::default().with_member_id(s("nobody"))
                ];
            } else {
                r.member_id = s("nobody");
            }
            vec![RequestKind::LeaveGroup(r)]
        }
        ApiKey::OffsetCommit => {
            let mut r = OffsetCommitRequest::default();
            r.group_id = GroupId(s("group-c"));
            r.generation_id_or_member_epoch = -1;
            r.topics = vec![offset_commit_request::OffsetCommitRequestTopic::default()
                .with_name(name("t"))
                .with_partitions(vec![
                    offset_commit_request::OffsetCommitRequestPartition::default()
                        .with_committed_offset(round as i64),
                ])];
            vec![RequestKind::OffsetCommit(r)]
        }
        ApiKey::OffsetFetch => {
            let mut all = OffsetFetchRequest::default();
            let mut some = OffsetFetchRequest::default();
            let topics = vec![offset_fetch_request::OffsetFetchRequestTopic::default()
                .with_name(name("t"))
                .with_partition_indexes(vec![0])];
            if v >= 8 {
                all.groups = vec![offset_fetch_request::OffsetFetchRequestGroup::default()
                    .with_group_id(GroupId(s("group-c")))
                    .with_topics(None)];
                some.groups = vec![offset_fetch_request::OffsetFetchRequestGroup::default()
                    .with_group_id(GroupId(s("group-c")))
                    .with_topics(Some(vec![
                        offset_fetch_request::OffsetFetchRequestTopics::default()
                            .with_name(name("t"))
                            .with_partition_indexes(vec![0]),
                    ]))];
            } else {
                all.group_id = GroupId(s("group-c"));
                all.topics = if v >= 2 { None } else { Some(topics.clone()) };
                some.group_id = GroupId(s("group-c"));
                some.topics = Some(topics);
            }
            vec![
                RequestKind::OffsetFetch(all),
                RequestKind::OffsetFetch(some),
            ]
        }
        ApiKey::DescribeGroups => {
            let mut r = DescribeGroupsRequest::default();
            r.groups = vec![GroupId(s("group-c")), GroupId(s("unknown"))];
            vec![RequestKind::DescribeGroups(r)]
        }
        ApiKey::ListGroups => vec![RequestKind::ListGroups(ListGroupsRequest::default())],
        ApiKey::DeleteGroups => {
            let mut r = DeleteGroupsRequest::default();
            r.groups_names = vec![GroupId(s("unknown"))];
            vec![RequestKind::DeleteGroups(r)]
        }
        ApiKey::DescribeAcls => vec![RequestKind::DescribeAcls(
            DescribeAclsRequest::default()
                .with_resource_type_filter(1)
                .with_resource_name_filter(None)
                .with_pattern_type_filter(1)
                .with_principal_filter(None)
                .with_host_filter(None)
                .with_operation(1)
                .with_permission_type(1),
        )],
        ApiKey::CreateAcls => vec![RequestKind::CreateAcls(
            CreateAclsRequest::default().with_creations(vec![
                create_acls_request::AclCreation::default()
                    .with_resource_type(2)
                    .with_resource_name(s("t"))
                    .with_resource_pattern_type(3)
                    .with_principal(s("User:alice"))
                    .with_host(s("*"))
                    .with_operation(3)
                    .with_permission_type(3),
            ]),
        )],
        ApiKey::DeleteAcls => vec![RequestKind::DeleteAcls(
            DeleteAclsRequest::default().with_filters(vec![
                delete_acls_request::DeleteAclsFilter::default()
                    .with_resource_type_filter(1)
                    .with_pattern_type_filter(1)
                    .with_operation(1)
                    .with_permission_type(1),
            ]),
        )],
        ApiKey::DescribeUserScramCredentials => vec![
            RequestKind::DescribeUserScramCredentials(
                DescribeUserScramCredentialsRequest::default().with_users(None),
            ),
            RequestKind::DescribeUserScramCredentials(
                DescribeUserScramCredentialsRequest::default().with_users(Some(vec![
                    describe_user_scram_credentials_request::UserName::default()
                        .with_name(s("nobody")),
                ])),
            ),
        ],
        ApiKey::AlterUserScramCredentials => vec![RequestKind::AlterUserScramCredentials(
            AlterUserScramCredentialsRequest::default()
                .with_upsertions(vec![
                    alter_user_scram_credentials_request::ScramCredentialUpsertion::default()
                        .with_name(s("carol"))
                        .with_mechanism(1)
                        .with_iterations(4096)
                        .with_salt(Bytes::from_static(b"salt"))
                        .with_salted_password(Bytes::from_static(&[7; 32])),
                ])
                .with_deletions(vec![
                    alter_user_scram_credentials_request::ScramCredentialDeletion::default()
                        .with_name(s("ghost"))
                        .with_mechanism(2),
                ]),
        )],
        ApiKey::DescribeClientQuotas => vec![
            RequestKind::DescribeClientQuotas(DescribeClientQuotasRequest::default()),
            RequestKind::DescribeClientQuotas(
                DescribeClientQuotasRequest::default()
                    .with_components(vec![describe_client_quotas_request::ComponentData::default()
                        .with_entity_type(s("client-id"))
                        .with_match_type(2)])
                    .with_strict(true),
            ),
        ],
        ApiKey::AlterClientQuotas => vec![RequestKind::AlterClientQuotas(
            AlterClientQuotasRequest::default().with_entries(vec![
                alter_client_quotas_request::EntryData::default()
                    .with_entity(vec![alter_client_quotas_request::EntityData::default()
                        .with_entity_type(s("user"))
                        .with_entity_name(None)])
                    .with_ops(vec![alter_client_quotas_request::OpData::default()
                        .with_key(s("consumer_byte_rate"))
                        .with_value(4096.0)]),
            ]),
        )],
        ApiKey::ElectLeaders => vec![
            RequestKind::ElectLeaders(ElectLeadersRequest::default().with_topic_partitions(None)),
            RequestKind::ElectLeaders(ElectLeadersRequest::default().with_topic_partitions(
                Some(
                    topics
                        .iter()
                        .map(|t| {
                            elect_leaders_request::TopicPartitions::default()
                                .with_topic(name(t))
                                .with_partitions(vec![0])
                        })
                        .collect(),
                ),
            )),
        ],
        ApiKey::AlterPartitionReassignments => {
            // The current replica (no change), an empty target, a cancellation with none in
            // progress, a partition that does not exist.
            let partition = |index: i32, replicas: Option<Vec<i32>>| {
                alter_partition_reassignments_request::ReassignablePartition::default()
                    .with_partition_index(index)
                    .with_replicas(replicas.map(|r| r.into_iter().map(BrokerId).collect()))
            };
            let topic = |t: &str, partitions| {
                alter_partition_reassignments_request::ReassignableTopic::default()
                    .with_name(name(t))
                    .with_partitions(partitions)
            };
            vec![RequestKind::AlterPartitionReassignments(
                AlterPartitionReassignmentsRequest::default()
                    .with_allow_replication_factor_change(v < 1 || round % 2 == 0)
                    .with_topics(vec![
                        topic("t", vec![partition(0, Some(vec![1]))]),
                        topic("t", vec![partition(0, Some(vec![]))]),
                        topic("t", vec![partition(0, None)]),
                        topic("missing", vec![partition(0, Some(vec![1]))]),
                    ]),
            )]
        }
        ApiKey::ListPartitionReassignments => vec![
            RequestKind::ListPartitionReassignments(
                ListPartitionReassignmentsRequest::default().with_topics(None),
            ),
            RequestKind::ListPartitionReassignments(
                ListPartitionReassignmentsRequest::default().with_topics(Some(
                    topics
                        .iter()
                        .map(|t| {
                            list_partition_reassignments_request::ListPartitionReassignmentsTopics::default()
                                .with_name(name(t))
                                .with_partition_indexes(vec![0])
                        })
                        .collect(),
                )),
            ),
        ],
        // A broker that is not registered, and this broker, which holds replicas: both
        // refused, so the broker stays registered for the rounds after.
        ApiKey::UnregisterBroker => vec![
            RequestKind::UnregisterBroker(
                UnregisterBrokerRequest::default().with_broker_id(BrokerId(77)),
            ),
            RequestKind::UnregisterBroker(
                UnregisterBrokerRequest::default().with_broker_id(BrokerId(1)),
            ),
        ],
        ApiKey::SaslHandshake => vec![RequestKind::SaslHandshake(
            SaslHandshakeRequest::default().with_mechanism(s("PLAIN")),
        )],
        ApiKey::SaslAuthenticate => vec![RequestKind::SaslAuthenticate(
            SaslAuthenticateRequest::default(),
        )],
        _ => Vec::new(),
    }
}

/// A single broker in `dir` with the success topic "t" (one partition).
async fn broker_with_topic_t(dir: &std::path::Path) -> Arc<Broker> {
    let broker: Arc<Broker> = Broker::open(
        Settings {
            node_id: 1,
            data_dir: dir.to_path_buf(),
            advertised_host: "127.0.0.1".into(),
            advertised_port: 9092,
            auto_create_topics: true,
            topic_defaults: TopicDefaults {
                partitions: 1,
                replication_factor: 1,
            },
            topic_config_defaults: Default::default(),
            ..Settings::single(1, dir.to_path_buf())
        },
        Arc::new(keel_node::metrics::Metrics::new()),
    )
    .await
    .unwrap();
    let mut create = CreateTopicsRequest::default();
    create.topics = vec![CreatableTopic::default()
        .with_name(name("t"))
        .with_num_partitions(1)
        .with_replication_factor(1)];
    broker
        .clone()
        .handle(
            ctx(ApiKey::CreateTopics, 5),
            RequestKind::CreateTopics(create),
        )
        .await
        .unwrap();
    broker
}

/// The id of `topic`, from Metadata v12.
async fn topic_id_of(broker: &Arc<Broker>, topic: &str) -> uuid::Uuid {
    let request = MetadataRequest::default().with_topics(Some(vec![
        MetadataRequestTopic::default().with_name(Some(name(topic))),
    ]));
    let Ok(Some(ResponseKind::Metadata(r))) = broker
        .clone()
        .handle(ctx(ApiKey::Metadata, 12), RequestKind::Metadata(request))
        .await
    else {
        panic!("no Metadata answer");
    };
    let id = r.topics[0].topic_id;
    assert!(!id.is_nil(), "{topic} has an id");
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_encodes_at_every_advertised_version() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker_with_topic_t(dir.path()).await;
    let t_id = topic_id_of(&broker, "t").await;

    let mut checked = BTreeMap::new();
    for (round, row) in API_SUPPORT_TABLE.iter().enumerate() {
        let api = row.api_key;
        for v in row.min_implemented..=row.max_advertised {
            for request in requests(api, v, round * 100 + v as usize, t_id) {
                let response = broker
                    .clone()
                    .handle(ctx(api, v), request)
                    .await
                    .unwrap_or_else(|e| panic!("{api:?} v{v}: {e}"));
                let Some(response) = response else { continue };
                encode_response(7, api, v, &response)
                    .unwrap_or_else(|e| panic!("{api:?} v{v} does not encode: {e}"));
                *checked.entry(format!("{api:?}")).or_insert(0) += 1;
            }
        }
    }
    // Every API in the table but ApiVersions (answered by the wire layer).
    for row in API_SUPPORT_TABLE {
        let api = format!("{:?}", row.api_key);
        if api == "ApiVersions" {
            continue;
        }
        assert!(
            checked.get(&api).copied().unwrap_or(0) > 0,
            "{api} was not exercised: {checked:?}"
        );
    }
}

/// Sends `request` at `version` and returns the answer, checked to encode at that version.
async fn call(
    broker: &Arc<Broker>,
    api: ApiKey,
    version: i16,
    request: RequestKind,
) -> ResponseKind {
    let response = broker
        .clone()
        .handle(ctx(api, version), request)
        .await
        .unwrap_or_else(|e| panic!("{api:?} v{version}: {e}"))
        .unwrap_or_else(|| panic!("{api:?} v{version}: no answer"));
    encode_response(7, api, version, &response)
        .unwrap_or_else(|e| panic!("{api:?} v{version} does not encode: {e}"));
    response
}

fn produce_by_id(id: uuid::Uuid, records: Bytes, transactional: bool) -> RequestKind {
    let mut r = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_topic_id(id)
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(records))])]);
    if transactional {
        r.transactional_id = Some(TransactionalId(s("txn")));
    }
    RequestKind::Produce(r)
}

/// Produce v13 and Fetch v13 name topics by id (KIP-516): a known id is written and read back
/// and answered by id; an id no topic has is UNKNOWN_TOPIC_ID, echoed back. A transactional
/// Produce v12+ adds its partition to the transaction (transaction version 2's implicit
/// AddPartitionsToTxn, KIP-890 part 2): a producer the coordinator does not know is
/// INVALID_PRODUCER_ID_MAPPING once the coordinator is up, and nothing is appended
/// (node/tests/transactions.rs drives a whole transaction). OffsetCommit v9 with a
/// generation to a group that does not exist is GROUP_ID_NOT_FOUND, below v9
/// ILLEGAL_GENERATION (Kafka's `OffsetMetadataManager.validateOffsetCommit`). ListTransactions
/// v2 lists the ids its pattern matches whole (KIP-1152).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_versions_keep_their_meaning() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker_with_topic_t(dir.path()).await;
    let t_id = topic_id_of(&broker, "t").await;
    let unknown = topic_id("missing", t_id);

    for v in [13, 12, 11] {
        let request = if v >= 13 {
            produce_by_id(t_id, batch(), false)
        } else {
            let mut r = ProduceRequest::default()
                .with_acks(-1)
                .with_timeout_ms(5000);
            r.topic_data = vec![TopicProduceData::default()
                .with_name(name("t"))
                .with_partition_data(vec![PartitionProduceData::default()
                    .with_index(0)
                    .with_records(Some(batch()))])];
            RequestKind::Produce(r)
        };
        let ResponseKind::Produce(r) = call(&broker, ApiKey::Produce, v, request).await else {
            panic!("not a Produce answer");
        };
        let topic = &r.responses[0];
        if v >= 13 {
            assert_eq!((topic.topic_id, topic.name.0.as_str()), (t_id, ""));
        } else {
            assert_eq!(
                (topic.topic_id, topic.name.0.as_str()),
                (uuid::Uuid::nil(), "t")
            );
        }
        let p = &topic.partition_responses[0];
        assert_eq!(p.error_code, 0, "Produce v{v}: {:?}", p.error_message);
        assert_eq!(p.base_offset, i64::from(13 - v), "Produce v{v}");
    }

    let ResponseKind::Produce(r) = call(
        &broker,
        ApiKey::Produce,
        13,
        produce_by_id(unknown, batch(), false),
    )
    .await
    else {
        panic!("not a Produce answer");
    };
    assert_eq!(r.responses[0].topic_id, unknown);
    assert_eq!(r.responses[0].partition_responses[0].error_code, 100); // UNKNOWN_TOPIC_ID

    let txn_batch = BatchBuilder::new(Compression::None)
        .transactional(keel_core::ProducerId(7), 0)
        .record(1000, Some(b"k"), Some(b"v"))
        .build()
        .unwrap()
        .into_bytes();
    let mut find = FindCoordinatorRequest::default().with_key_type(1);
    find.key = s("txn");
    call(
        &broker,
        ApiKey::FindCoordinator,
        3,
        RequestKind::FindCoordinator(find),
    )
    .await;
    for v in [12, 13] {
        let request = |v: i16| {
            if v >= 13 {
                produce_by_id(t_id, txn_batch.clone(), true)
            } else {
                let mut r = ProduceRequest::default()
                    .with_acks(-1)
                    .with_timeout_ms(5000);
                r.transactional_id = Some(TransactionalId(s("txn")));
                r.topic_data = vec![TopicProduceData::default()
                    .with_name(name("t"))
                    .with_partition_data(vec![PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(txn_batch.clone()))])];
                RequestKind::Produce(r)
            }
        };
        // NOT_ENOUGH_REPLICAS (retriable) while the coordinator loads.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let p = loop {
            let ResponseKind::Produce(r) = call(&broker, ApiKey::Produce, v, request(v)).await
            else {
                panic!("not a Produce answer");
            };
            let p = r.responses[0].partition_responses[0].clone();
            if p.error_code != 19 || std::time::Instant::now() > deadline {
                break p;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        assert_eq!(
            p.error_code, 49,
            "transactional Produce v{v}: {:?}",
            p.error_message
        ); // INVALID_PRODUCER_ID_MAPPING
    }

    // Fetch v13 by id reads back the three records written above; an unknown id is
    // UNKNOWN_TOPIC_ID.
    let fetch = FetchRequest::default()
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_topics(
            [t_id, unknown]
                .iter()
                .map(|&id| {
                    FetchTopic::default()
                        .with_topic_id(id)
                        .with_partitions(vec![FetchPartition::default()
                            .with_partition(0)
                            .with_fetch_offset(0)
                            .with_partition_max_bytes(1 << 20)])
                })
                .collect(),
        );
    let ResponseKind::Fetch(r) = call(&broker, ApiKey::Fetch, 18, RequestKind::Fetch(fetch)).await
    else {
        panic!("not a Fetch answer");
    };
    assert_eq!(r.responses[0].topic_id, t_id);
    let read = &r.responses[0].partitions[0];
    assert_eq!((read.error_code, read.high_watermark), (0, 3));
    let records = read.records.clone().unwrap_or_default();
    let mut offset = 0usize;
    let mut batches = 0;
    while let Ok(Some(b)) = keel_core::batch::Batch::parse_prefix(&records.slice(offset..)) {
        offset += b.size();
        batches += 1;
    }
    assert_eq!(batches, 3, "three batches read back by topic id");
    assert_eq!(r.responses[1].topic_id, unknown);
    assert_eq!(r.responses[1].partitions[0].error_code, 100);

    // OffsetCommit with a generation to a group that does not exist, once the group
    // coordinator is up (FindCoordinator creates __consumer_offsets).
    call(
        &broker,
        ApiKey::FindCoordinator,
        3,
        RequestKind::FindCoordinator(
            FindCoordinatorRequest::default().with_key(s("no-such-group")),
        ),
    )
    .await;
    for (v, want) in [(9, 69), (8, 22)] {
        // 69 GROUP_ID_NOT_FOUND, 22 ILLEGAL_GENERATION
        let mut r = OffsetCommitRequest::default();
        r.group_id = GroupId(s("no-such-group"));
        r.generation_id_or_member_epoch = 3;
        r.member_id = s("m");
        r.topics = vec![offset_commit_request::OffsetCommitRequestTopic::default()
            .with_name(name("t"))
            .with_partitions(vec![
                offset_commit_request::OffsetCommitRequestPartition::default()
                    .with_committed_offset(1),
            ])];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let code = loop {
            let ResponseKind::OffsetCommit(answer) = call(
                &broker,
                ApiKey::OffsetCommit,
                v,
                RequestKind::OffsetCommit(r.clone()),
            )
            .await
            else {
                panic!("not an OffsetCommit answer");
            };
            let code = answer.topics[0].partitions[0].error_code;
            // 14 COORDINATOR_LOAD_IN_PROGRESS, 15 COORDINATOR_NOT_AVAILABLE, 16 NOT_COORDINATOR:
            // the offsets partition is still being created or loaded.
            if !matches!(code, 14..=16) || std::time::Instant::now() > deadline {
                break code;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        assert_eq!(code, want, "OffsetCommit v{v}");
    }

    // Two transactional ids, then ListTransactions v2 by pattern.
    call(
        &broker,
        ApiKey::FindCoordinator,
        3,
        RequestKind::FindCoordinator(
            FindCoordinatorRequest::default()
                .with_key(s("tx-a"))
                .with_key_type(1),
        ),
    )
    .await;
    for id in ["tx-a", "tx-ab", "tx-b"] {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let request = InitProducerIdRequest::default()
                .with_transactional_id(Some(TransactionalId(s(id))))
                .with_transaction_timeout_ms(60_000)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1);
            let ResponseKind::InitProducerId(answer) = call(
                &broker,
                ApiKey::InitProducerId,
                5,
                RequestKind::InitProducerId(request),
            )
            .await
            else {
                panic!("not an InitProducerId answer");
            };
            if answer.error_code == 0 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "InitProducerId {id}: {}",
                answer.error_code
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    let listed = |pattern: Option<&str>| {
        RequestKind::ListTransactions(
            ListTransactionsRequest::default().with_transactional_id_pattern(pattern.map(s)),
        )
    };
    for (pattern, want) in [
        (None, vec!["tx-a", "tx-ab", "tx-b"]),
        (Some(""), vec!["tx-a", "tx-ab", "tx-b"]),
        (Some("tx-a"), vec!["tx-a"]),
        (Some("tx-a.*"), vec!["tx-a", "tx-ab"]),
        (Some("b"), vec![]),
    ] {
        let ResponseKind::ListTransactions(r) =
            call(&broker, ApiKey::ListTransactions, 2, listed(pattern)).await
        else {
            panic!("not a ListTransactions answer");
        };
        assert_eq!(r.error_code, 0);
        let mut ids: Vec<String> = r
            .transaction_states
            .iter()
            .map(|t| t.transactional_id.0.to_string())
            .collect();
        ids.sort();
        assert_eq!(ids, want, "pattern {pattern:?}");
    }
    let ResponseKind::ListTransactions(r) =
        call(&broker, ApiKey::ListTransactions, 2, listed(Some("tx-("))).await
    else {
        panic!("not a ListTransactions answer");
    };
    assert_eq!(r.error_code, 128, "INVALID_REGULAR_EXPRESSION");
}
