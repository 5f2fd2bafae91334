//! Read-only descriptions for admin tools: DescribeTopicPartitions (KIP-966), served from the
//! applied metadata; DescribeLogDirs, served from this broker's replicas; DescribeQuorum
//! (KIP-595), asked of the controller.
//!
//! What holds:
//! - DescribeTopicPartitions lists topics in name order and partitions in index order, at
//!   most `response_partition_limit` partitions per answer (capped at
//!   [`PARTITION_LIMIT_MAX`]); when it stops early, `next_cursor` names the first partition
//!   left out, and a request with that cursor resumes there. A request naming no topic lists
//!   every topic; a named topic that does not exist gets UNKNOWN_TOPIC_OR_PARTITION.
//! - DescribeLogDirs reports the one log directory keel keeps per broker (`log.dirs` is a
//!   single directory): every replica held here, or those the request names, with its size on
//!   disk and how far its log end is behind its high watermark (Kafka's `offsetLag`,
//!   `max(high watermark - log end, 0)`), and from v4 the volume's total and usable bytes.
//! - DescribeQuorum describes the metadata quorum (`__cluster_metadata`, partition 0) as its
//!   leader, the controller, sees it: any broker asks the controller and answers; offsets are
//!   raft indexes; without a controller it answers NOT_LEADER_OR_FOLLOWER.
//! - Authorisation is applied by `broker::authz` before and after: these functions see every
//!   topic.

use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::describe_topic_partitions_response::{
    Cursor, DescribeTopicPartitionsResponsePartition, DescribeTopicPartitionsResponseTopic,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use keel_core::controller::{ControllerError, MetadataState, Partition};
use keel_core::error_code as code;
use keel_core::quorum::ReplicaProgress;

use super::Broker;

/// The metadata quorum's topic name in DescribeQuorum, as in KRaft.
pub const METADATA_TOPIC: &str = "__cluster_metadata";

/// The most partitions one DescribeTopicPartitions answer holds, whatever the request asks
/// (Kafka's `max.request.partition.size.limit` default).
pub const PARTITION_LIMIT_MAX: i32 = 2000;

fn s(text: impl Into<String>) -> StrBytes {
    StrBytes::from_string(text.into())
}

fn ids(brokers: &[keel_core::controller::BrokerId]) -> Vec<BrokerId> {
    brokers.iter().map(|b| BrokerId(b.0)).collect()
}

/// One partition as DescribeTopicPartitions describes it. Offline replicas are those whose
/// broker is not registered or is fenced.
fn describe_partition(
    m: &MetadataState,
    index: i32,
    p: &Partition,
) -> DescribeTopicPartitionsResponsePartition {
    let offline: Vec<_> = p
        .replicas
        .iter()
        .copied()
        .filter(|b| m.broker(*b).is_none_or(|broker| broker.fenced))
        .collect();
    DescribeTopicPartitionsResponsePartition::default()
        .with_error_code(if p.leader == keel_core::controller::BrokerId::NONE {
            code::LEADER_NOT_AVAILABLE
        } else {
            0
        })
        .with_partition_index(index)
        .with_leader_id(BrokerId(p.leader.0))
        .with_leader_epoch(p.leader_epoch.0)
        .with_replica_nodes(ids(&p.replicas))
        .with_isr_nodes(ids(&p.isr))
        .with_eligible_leader_replicas(Some(ids(&p.elr)))
        .with_last_known_elr(Some(Vec::new()))
        .with_offline_replicas(ids(&offline))
}

impl Broker {
    /// DescribeTopicPartitions v0 (KIP-966).
    pub(super) fn describe_topic_partitions(
        &self,
        request: DescribeTopicPartitionsRequest,
    ) -> DescribeTopicPartitionsResponse {
        let limit = request
            .response_partition_limit
            .clamp(1, PARTITION_LIMIT_MAX) as usize;
        let (start_topic, start_partition) =
            request.cursor.as_ref().map_or((String::new(), 0), |c| {
                (c.topic_name.0.to_string(), c.partition_index.max(0))
            });
        self.with_metadata(|m| {
            let mut names: Vec<String> = if request.topics.is_empty() {
                m.topics().map(|t| t.name.clone()).collect()
            } else {
                request.topics.iter().map(|t| t.name.to_string()).collect()
            };
            names.sort();
            names.dedup();
            let mut response = DescribeTopicPartitionsResponse::default();
            let mut left = limit;
            for name in names.into_iter().filter(|n| *n >= start_topic) {
                let first = if name == start_topic {
                    start_partition
                } else {
                    0
                };
                let Some(topic) = m.topic(&name) else {
                    response.topics.push(
                        DescribeTopicPartitionsResponseTopic::default()
                            .with_error_code(code::UNKNOWN_TOPIC_OR_PARTITION)
                            .with_name(Some(TopicName(s(name)))),
                    );
                    continue;
                };
                if left == 0 {
                    response.next_cursor = Some(
                        Cursor::default()
                            .with_topic_name(TopicName(s(name)))
                            .with_partition_index(first),
                    );
                    break;
                }
                let mut t = DescribeTopicPartitionsResponseTopic::default()
                    .with_name(Some(TopicName(s(name.clone()))))
                    .with_topic_id(uuid::Uuid::from_bytes(topic.id.0))
                    .with_is_internal(super::is_internal_topic(&name));
                let mut index = first;
                while let Some(p) = usize::try_from(index)
                    .ok()
                    .and_then(|i| topic.partitions.get(i))
                {
                    if left == 0 {
                        response.next_cursor = Some(
                            Cursor::default()
                                .with_topic_name(TopicName(s(name.clone())))
                                .with_partition_index(index),
                        );
                        break;
                    }
                    t.partitions.push(describe_partition(m, index, p));
                    left -= 1;
                    index += 1;
                }
                response.topics.push(t);
                if response.next_cursor.is_some() {
                    break;
                }
            }
            response
        })
    }

    /// DescribeLogDirs v1-v4: this broker's one log directory and the replicas in it.
    pub(super) fn describe_log_dirs(
        &self,
        version: i16,
        request: DescribeLogDirsRequest,
    ) -> DescribeLogDirsResponse {
        let wanted = |topic: &str, partition: i32| match &request.topics {
            None => true,
            Some(topics) => topics
                .iter()
                .any(|t| t.topic.0.as_str() == topic && t.partitions.contains(&partition)),
        };
        let mut replicas: Vec<(String, i32, i64, i64)> = self
            .all_partitions()
            .iter()
            .filter(|p| wanted(&p.topic, p.index))
            .map(|p| {
                p.with(|r| {
                    let size = i64::try_from(r.log().size_bytes()).unwrap_or(i64::MAX);
                    let lag = (r.high_watermark().0 - r.log().end().0).max(0);
                    (p.topic.clone(), p.index, size, lag)
                })
            })
            .collect();
        replicas.sort();
        let mut result = DescribeLogDirsResult::default().with_log_dir(s(self
            .settings()
            .data_dir
            .display()
            .to_string()));
        for (topic, index, size, lag) in replicas {
            let partition = DescribeLogDirsPartition::default()
                .with_partition_index(index)
                .with_partition_size(size)
                .with_offset_lag(lag);
            match result.topics.last_mut() {
                Some(t) if t.name.0.as_str() == topic => t.partitions.push(partition),
                _ => result.topics.push(
                    DescribeLogDirsTopic::default()
                        .with_name(TopicName(s(topic)))
                        .with_partitions(vec![partition]),
                ),
            }
        }
        if version >= 4 {
            if let Some((total, usable)) = volume_bytes(&self.settings().data_dir) {
                result.total_bytes = total;
                result.usable_bytes = usable;
            }
        }
        DescribeLogDirsResponse::default().with_results(vec![result])
    }
}

impl Broker {
    /// DescribeQuorum v0-2 (KIP-595; v2: the voters' endpoints, KIP-853).
    pub(super) async fn describe_quorum(
        &self,
        version: i16,
        request: DescribeQuorumRequest,
    ) -> DescribeQuorumResponse {
        use describe_quorum_response::{Listener, Node, PartitionData, ReplicaState, TopicData};
        let asks_for_the_quorum = request.topics.len() == 1
            && request.topics[0].topic_name.0.as_str() == METADATA_TOPIC
            && request.topics[0].partitions.len() == 1
            && request.topics[0].partitions[0].partition_index == 0;
        if !asks_for_the_quorum {
            let mut response =
                DescribeQuorumResponse::default().with_error_code(code::UNKNOWN_TOPIC_OR_PARTITION);
            if version >= 2 {
                response.error_message = Some(s(format!(
                    "only the metadata quorum, {METADATA_TOPIC} partition 0, can be described"
                )));
            }
            return response;
        }
        let mut partition = PartitionData::default().with_partition_index(0);
        let mut nodes = Vec::new();
        match self.cluster().describe_quorum().await {
            Ok(d) => {
                let states = |replicas: &[ReplicaProgress]| -> Vec<ReplicaState> {
                    replicas
                        .iter()
                        .map(|r| {
                            ReplicaState::default()
                                .with_replica_id(BrokerId(r.node.0))
                                .with_log_end_offset(i64::try_from(r.log_end).unwrap_or(i64::MAX))
                                .with_last_fetch_timestamp(-1)
                                .with_last_caught_up_timestamp(-1)
                        })
                        .collect()
                };
                partition = partition
                    .with_leader_id(BrokerId(d.leader.0))
                    .with_leader_epoch(i32::try_from(d.term).unwrap_or(i32::MAX))
                    .with_high_watermark(i64::try_from(d.high_watermark).unwrap_or(i64::MAX))
                    .with_current_voters(states(&d.voters))
                    .with_observers(states(&d.observers));
                if version >= 2 {
                    nodes = self.with_metadata(|m| {
                        d.voters
                            .iter()
                            .filter_map(|v| m.broker(v.node))
                            .map(|b| {
                                Node::default()
                                    .with_node_id(BrokerId(b.id.0))
                                    .with_listeners(
                                        b.endpoints
                                            .iter()
                                            .map(|e| {
                                                Listener::default()
                                                    .with_name(s(e.name.clone()))
                                                    .with_host(s(e.host.clone()))
                                                    .with_port(u16::try_from(e.port).unwrap_or(0))
                                            })
                                            .collect(),
                                    )
                            })
                            .collect()
                    });
                }
            }
            Err(e) => {
                partition.error_code = match e {
                    ControllerError::NotController(_) => code::NOT_LEADER_OR_FOLLOWER,
                    ref other => other.code(),
                };
                if version >= 2 {
                    partition.error_message = Some(s(e.to_string()));
                }
            }
        }
        DescribeQuorumResponse::default()
            .with_topics(vec![TopicData::default()
                .with_topic_name(TopicName(s(METADATA_TOPIC)))
                .with_partitions(vec![partition])])
            .with_nodes(nodes)
    }
}

/// The total and available bytes of the file system holding `dir`, if it can be asked.
fn volume_bytes(dir: &std::path::Path) -> Option<(i64, i64)> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: `path` is a NUL-terminated string that outlives the call, and `stat` is a
    // zeroed plain C struct that statvfs fills in.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    let block = stat.f_frsize as i64;
    Some((
        (stat.f_blocks as i64).saturating_mul(block),
        (stat.f_bavail as i64).saturating_mul(block),
    ))
}
