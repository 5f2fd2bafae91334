//! The group APIs on the wire: FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup,
//! OffsetCommit, OffsetFetch, DescribeGroups, ListGroups and DeleteGroups, translated between
//! kafka-protocol messages and `keel_core::group` types.
//!
//! Each `start_*` does its coordinator call at once (in the connection's request order, as the
//! wire contract asks) and returns a future that waits, with no lock held, for an answer that
//! comes late (a join waiting for the rebalance, a commit waiting for its record to be durable).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use keel_core::controller::ControllerError;
use keel_core::error_code::{self as code, ErrorCode};
use keel_core::group::{self, GroupState, Response, TopicPartition};

use super::groups::{partition_for, Call, OFFSETS_TOPIC};
use super::Broker;
use crate::wire::RequestContext;

/// A response to come.
pub type Later = Pin<Box<dyn Future<Output = ResponseKind> + Send>>;

/// FindCoordinator key types.
const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;

fn s(x: impl Into<String>) -> StrBytes {
    StrBytes::from_string(x.into())
}

fn opt(x: &Option<StrBytes>) -> Option<String> {
    x.as_ref().map(|v| v.to_string())
}

impl Broker {
    // -----------------------------------------------------------------------------------------
    // FindCoordinator
    // -----------------------------------------------------------------------------------------

    /// FindCoordinator v0-4: creates `__consumer_offsets` on first use, then names the leader
    /// of the group's partition.
    pub(super) async fn find_coordinator(
        self: Arc<Self>,
        version: i16,
        request: FindCoordinatorRequest,
    ) -> FindCoordinatorResponse {
        let keys: Vec<StrBytes> = if version >= 4 {
            request.coordinator_keys.clone()
        } else {
            vec![request.key.clone()]
        };
        let mut found = Vec::new();
        for key in keys {
            let answer = self.coordinator_for(request.key_type, &key).await;
            found.push((key, answer));
        }
        let mut response = FindCoordinatorResponse::default();
        if version >= 4 {
            for (key, answer) in found {
                let mut c = find_coordinator_response::Coordinator::default();
                c.key = key;
                match answer {
                    Ok((node, host, port)) => {
                        c.node_id = BrokerId(node);
                        c.host = s(host);
                        c.port = port;
                    }
                    Err((error, message)) => {
                        c.node_id = BrokerId(-1);
                        c.port = -1;
                        c.error_code = error;
                        c.error_message = Some(s(message));
                    }
                }
                response.coordinators.push(c);
            }
        } else if let Some((_, answer)) = found.pop() {
            match answer {
                Ok((node, host, port)) => {
                    response.node_id = BrokerId(node);
                    response.host = s(host);
                    response.port = port;
                }
                Err((error, message)) => {
                    response.error_code = error;
                    response.node_id = BrokerId(-1);
                    response.port = -1;
                    if version >= 1 {
                        response.error_message = Some(s(message));
                    }
                }
            }
        }
        response
    }

    async fn coordinator_for(
        &self,
        key_type: i8,
        key: &str,
    ) -> Result<(i32, String, i32), (ErrorCode, String)> {
        match key_type {
            KEY_TYPE_GROUP => {}
            KEY_TYPE_TRANSACTION => return self.txn_coordinator_for(key).await,
            other => return Err((code::INVALID_REQUEST, format!("unknown key type {other}"))),
        }
        let n = match self.offsets_partitions() {
            Some(n) => n,
            None => self.create_offsets_topic().await.map_err(|e| {
                (
                    code::COORDINATOR_NOT_AVAILABLE,
                    format!("creating {OFFSETS_TOPIC}: {e}"),
                )
            })?,
        };
        self.coordinator_at(OFFSETS_TOPIC, partition_for(key, n))
    }

    /// The leader of `topic`-`index`, a coordinator topic's partition, with its address (the
    /// handler rewrites it to the request's listener): COORDINATOR_NOT_AVAILABLE without one.
    pub(super) fn coordinator_at(
        &self,
        topic: &str,
        index: i32,
    ) -> Result<(i32, String, i32), (ErrorCode, String)> {
        let leader = self.with_metadata(|m| m.partition(topic, index).map(|p| p.leader));
        let Some(leader) = leader.filter(|l| *l != keel_core::controller::BrokerId::NONE) else {
            return Err((
                code::COORDINATOR_NOT_AVAILABLE,
                format!("{topic}-{index} has no leader"),
            ));
        };
        self.broker_list()
            .into_iter()
            .find(|(id, _, _)| *id == leader.0)
            .ok_or((
                code::COORDINATOR_NOT_AVAILABLE,
                format!("the coordinator, broker {}, is not available", leader.0),
            ))
    }

    /// Creates `__consumer_offsets` (an existing one is fine); its partition count.
    async fn create_offsets_topic(&self) -> Result<i32, ControllerError> {
        let live = self.with_metadata(|m| m.live_brokers().len()).max(1);
        let rf = self
            .settings()
            .offsets_topic_replication_factor
            .min(i16::try_from(live).unwrap_or(i16::MAX));
        let partitions = self.settings().offsets_topic_partitions;
        let configs = BTreeMap::from([
            ("cleanup.policy".to_string(), "compact".to_string()),
            (
                "segment.bytes".to_string(),
                self.settings().offsets_topic_segment_bytes.to_string(),
            ),
        ]);
        match self
            .create_topic_now(OFFSETS_TOPIC, partitions, rf, configs, false)
            .await
        {
            Ok(_) | Err(ControllerError::TopicAlreadyExists(_)) => {}
            Err(e) => return Err(e),
        }
        tracing::info!("created {OFFSETS_TOPIC} ({partitions} partitions, replication {rf})");
        self.offsets_partitions()
            .ok_or_else(|| ControllerError::UnknownServerError(format!("{OFFSETS_TOPIC} vanished")))
    }

    // -----------------------------------------------------------------------------------------
    // Membership
    // -----------------------------------------------------------------------------------------

    pub(super) fn start_join_group(&self, ctx: &RequestContext, r: JoinGroupRequest) -> Later {
        let v = ctx.api_version;
        let req = group::JoinRequest {
            group_id: r.group_id.0.to_string(),
            member_id: r.member_id.to_string(),
            group_instance_id: opt(&r.group_instance_id),
            client_id: ctx
                .client_id
                .as_ref()
                .map(|c| c.to_string())
                .unwrap_or_default(),
            client_host: format!("/{}", ctx.peer.ip()),
            session_timeout_ms: r.session_timeout_ms,
            rebalance_timeout_ms: if v == 0 {
                r.session_timeout_ms
            } else {
                r.rebalance_timeout_ms
            },
            protocol_type: r.protocol_type.to_string(),
            protocols: r
                .protocols
                .iter()
                .map(|p| group::Protocol {
                    name: p.name.to_string(),
                    metadata: p.metadata.to_vec(),
                })
                .collect(),
            require_known_member_id: v >= 4,
        };
        let member_id = req.member_id.clone();
        let call = self.call_group(&req.group_id.clone(), move |c, now, id| {
            c.handle_join(now, id, req)
        });
        Box::pin(async move {
            let answer = call
                .finish(|r| match r {
                    Response::Join(j) => Some(j),
                    _ => None,
                })
                .await;
            let mut out = JoinGroupResponse::default();
            match answer {
                Err(error) => {
                    out.error_code = error;
                    out.generation_id = -1;
                    out.member_id = s(member_id);
                    if v < 7 {
                        out.protocol_name = Some(s(""));
                    }
                }
                Ok(j) => {
                    out.error_code = j.error_code;
                    out.generation_id = j.generation_id;
                    out.protocol_type = j.protocol_type.map(s);
                    out.protocol_name = if v < 7 {
                        Some(s(j.protocol_name.unwrap_or_default()))
                    } else {
                        j.protocol_name.map(s)
                    };
                    out.leader = s(j.leader);
                    out.member_id = s(j.member_id);
                    out.members = j
                        .members
                        .into_iter()
                        .map(|m| {
                            let mut jm = join_group_response::JoinGroupResponseMember::default();
                            jm.member_id = s(m.member_id);
                            jm.group_instance_id = m.group_instance_id.map(s);
                            jm.metadata = Bytes::from(m.metadata);
                            jm
                        })
                        .collect();
                }
            }
            ResponseKind::JoinGroup(out)
        })
    }

    pub(super) fn start_sync_group(&self, ctx: &RequestContext, r: SyncGroupRequest) -> Later {
        let v = ctx.api_version;
        let req = group::SyncRequest {
            group_id: r.group_id.0.to_string(),
            generation_id: r.generation_id,
            member_id: r.member_id.to_string(),
            group_instance_id: opt(&r.group_instance_id),
            protocol_type: opt(&r.protocol_type),
            protocol_name: opt(&r.protocol_name),
            assignments: r
                .assignments
                .iter()
                .map(|a| (a.member_id.to_string(), a.assignment.to_vec()))
                .collect(),
        };
        let call = self.call_group(&req.group_id.clone(), move |c, now, id| {
            c.handle_sync(now, id, req)
        });
        Box::pin(async move {
            let answer = call
                .finish(|r| match r {
                    Response::Sync(x) => Some(x),
                    _ => None,
                })
                .await;
            let mut out = SyncGroupResponse::default();
            match answer {
                Err(error) => out.error_code = error,
                Ok(x) => {
                    out.error_code = x.error_code;
                    if v >= 5 {
                        out.protocol_type = x.protocol_type.map(s);
                        out.protocol_name = x.protocol_name.map(s);
                    }
                    out.assignment = Bytes::from(x.assignment);
                }
            }
            ResponseKind::SyncGroup(out)
        })
    }

    pub(super) fn heartbeat(&self, r: HeartbeatRequest) -> HeartbeatResponse {
        let req = group::HeartbeatRequest {
            group_id: r.group_id.0.to_string(),
            generation_id: r.generation_id,
            member_id: r.member_id.to_string(),
            group_instance_id: opt(&r.group_instance_id),
        };
        let mut out = HeartbeatResponse::default();
        out.error_code = self
            .with_group(&req.group_id, |c, now| c.handle_heartbeat(now, &req))
            .unwrap_or_else(|e| e);
        out
    }

    pub(super) fn leave_group(&self, version: i16, r: LeaveGroupRequest) -> LeaveGroupResponse {
        let group_id = r.group_id.0.to_string();
        let members: Vec<group::LeavingMember> = if version >= 3 {
            r.members
                .iter()
                .map(|m| group::LeavingMember {
                    member_id: m.member_id.to_string(),
                    group_instance_id: opt(&m.group_instance_id),
                })
                .collect()
        } else {
            vec![group::LeavingMember {
                member_id: r.member_id.to_string(),
                group_instance_id: None,
            }]
        };
        let mut out = LeaveGroupResponse::default();
        match self.with_group(&group_id, |c, now| c.handle_leave(now, &group_id, members)) {
            Err(error) => out.error_code = error,
            Ok(answer) => {
                if version >= 3 {
                    out.error_code = answer.error_code;
                    out.members = answer
                        .members
                        .into_iter()
                        .map(|(m, error)| {
                            let mut mr = leave_group_response::MemberResponse::default();
                            mr.member_id = s(m.member_id);
                            mr.group_instance_id = m.group_instance_id.map(s);
                            mr.error_code = error;
                            mr
                        })
                        .collect();
                } else {
                    // One member: its error is the request's.
                    out.error_code = if answer.error_code != code::NONE {
                        answer.error_code
                    } else {
                        answer.members.first().map_or(code::NONE, |(_, e)| *e)
                    };
                }
            }
        }
        out
    }

    // -----------------------------------------------------------------------------------------
    // Offsets
    // -----------------------------------------------------------------------------------------

    pub(super) fn partition_exists(&self, topic: &str, index: i32) -> bool {
        self.with_metadata(|m| m.partition(topic, index).is_some())
    }

    /// OffsetCommit. v9 (the first version KIP-848's consumers use) is v8 for classic groups,
    /// but for one difference Kafka makes: a commit with a generation to a group that does not
    /// exist is GROUP_ID_NOT_FOUND from v9, ILLEGAL_GENERATION below (`validateOffsetCommit`).
    pub(super) fn start_offset_commit(&self, version: i16, r: OffsetCommitRequest) -> Later {
        let group_id = r.group_id.0.to_string();
        let order: Vec<(String, Vec<i32>)> = r
            .topics
            .iter()
            .map(|t| {
                (
                    t.name.0.to_string(),
                    t.partitions.iter().map(|p| p.partition_index).collect(),
                )
            })
            .collect();
        let mut errors: BTreeMap<TopicPartition, ErrorCode> = BTreeMap::new();
        let mut commits = Vec::new();
        for t in &r.topics {
            for p in &t.partitions {
                let tp = TopicPartition {
                    topic: t.name.0.to_string(),
                    partition: p.partition_index,
                };
                if !self.partition_exists(&tp.topic, tp.partition) {
                    errors.insert(tp, code::UNKNOWN_TOPIC_OR_PARTITION);
                    continue;
                }
                commits.push(group::PartitionCommit {
                    partition: tp,
                    offset: p.committed_offset,
                    leader_epoch: p.committed_leader_epoch,
                    metadata: opt(&p.committed_metadata),
                });
            }
        }
        let call = if commits.is_empty() {
            Call::Done(Ok(group::OffsetCommitResponse {
                partitions: Vec::new(),
            }))
        } else {
            let req = group::OffsetCommitRequest {
                group_id: group_id.clone(),
                generation_id: r.generation_id_or_member_epoch,
                member_id: r.member_id.to_string(),
                group_instance_id: opt(&r.group_instance_id),
                partitions: commits.clone(),
            };
            self.call_group(&group_id, move |c, now, id| {
                c.handle_offset_commit(now, id, req)
            })
        };
        Box::pin(async move {
            let answer = call
                .finish(|r| match r {
                    Response::OffsetCommit(x) => Some(x),
                    _ => None,
                })
                .await;
            match answer {
                Ok(a) => errors.extend(a.partitions.into_iter().map(|(tp, e)| {
                    if e == code::GROUP_ID_NOT_FOUND && version < 9 {
                        (tp, code::ILLEGAL_GENERATION)
                    } else {
                        (tp, e)
                    }
                })),
                Err(error) => errors.extend(commits.into_iter().map(|c| (c.partition, error))),
            }
            let mut out = OffsetCommitResponse::default();
            for (topic, partitions) in order {
                let mut tr = offset_commit_response::OffsetCommitResponseTopic::default();
                tr.name = TopicName(s(topic.clone()));
                for index in partitions {
                    let mut pr = offset_commit_response::OffsetCommitResponsePartition::default();
                    pr.partition_index = index;
                    pr.error_code = errors
                        .get(&TopicPartition {
                            topic: topic.clone(),
                            partition: index,
                        })
                        .copied()
                        .unwrap_or(code::NOT_COORDINATOR);
                    tr.partitions.push(pr);
                }
                out.topics.push(tr);
            }
            ResponseKind::OffsetCommit(out)
        })
    }

    /// One group's committed offsets, grouped by topic in request order (or topic order for
    /// all). Err: the group is not coordinated here.
    #[allow(clippy::type_complexity)]
    fn fetch_group_offsets(
        &self,
        group_id: &str,
        topics: Option<Vec<(String, Vec<i32>)>>,
        require_stable: bool,
    ) -> Result<Vec<(String, Vec<group::FetchedOffset>)>, ErrorCode> {
        let partitions: Option<Vec<TopicPartition>> = topics.as_ref().map(|ts| {
            ts.iter()
                .flat_map(|(t, ps)| {
                    ps.iter().map(|&p| TopicPartition {
                        topic: t.clone(),
                        partition: p,
                    })
                })
                .collect()
        });
        let fetched = self.with_group(group_id, |c, _| {
            c.handle_offset_fetch(group_id, partitions.as_deref(), require_stable)
        })?;
        let mut by_topic: Vec<(String, Vec<group::FetchedOffset>)> = Vec::new();
        for f in fetched {
            match by_topic.iter_mut().find(|(t, _)| *t == f.partition.topic) {
                Some((_, list)) => list.push(f),
                None => by_topic.push((f.partition.topic.clone(), vec![f])),
            }
        }
        Ok(by_topic)
    }

    /// OffsetFetch. v9's `member_id` and `member_epoch` (KIP-848) are checked by Kafka only
    /// for groups of the consumer protocol; every keel group is classic, whose check
    /// (`ClassicGroup.validateOffsetFetch`) looks at neither, so v9 is served as v8.
    pub(super) fn offset_fetch(&self, version: i16, r: OffsetFetchRequest) -> OffsetFetchResponse {
        let mut out = OffsetFetchResponse::default();
        // KIP-447 (v7+): offsets of undecided transactions are UNSTABLE_OFFSET_COMMIT.
        let require_stable = version >= 7 && r.require_stable;
        if version >= 8 {
            for g in r.groups {
                let group_id = g.group_id.0.to_string();
                let topics = g.topics.map(|ts| {
                    ts.into_iter()
                        .map(|t| (t.name.0.to_string(), t.partition_indexes))
                        .collect()
                });
                let mut gr = offset_fetch_response::OffsetFetchResponseGroup::default();
                gr.group_id = g.group_id;
                match self.fetch_group_offsets(&group_id, topics, require_stable) {
                    Err(error) => gr.error_code = error,
                    Ok(by_topic) => {
                        for (topic, list) in by_topic {
                            let mut tr =
                                offset_fetch_response::OffsetFetchResponseTopics::default();
                            tr.name = TopicName(s(topic));
                            for f in list {
                                let mut pr =
                                    offset_fetch_response::OffsetFetchResponsePartitions::default();
                                pr.partition_index = f.partition.partition;
                                pr.committed_offset = f.offset;
                                pr.committed_leader_epoch = f.leader_epoch;
                                pr.metadata = Some(s(f.metadata));
                                pr.error_code = f.error_code;
                                tr.partitions.push(pr);
                            }
                            gr.topics.push(tr);
                        }
                    }
                }
                out.groups.push(gr);
            }
            return out;
        }
        let group_id = r.group_id.0.to_string();
        let topics: Option<Vec<(String, Vec<i32>)>> = r.topics.map(|ts| {
            ts.into_iter()
                .map(|t| (t.name.0.to_string(), t.partition_indexes))
                .collect()
        });
        let partition =
            |index: i32, offset: i64, epoch: i32, metadata: String, error: ErrorCode| {
                let mut pr = offset_fetch_response::OffsetFetchResponsePartition::default();
                pr.partition_index = index;
                pr.committed_offset = offset;
                pr.committed_leader_epoch = epoch;
                pr.metadata = Some(s(metadata));
                pr.error_code = error;
                pr
            };
        match self.fetch_group_offsets(&group_id, topics.clone(), require_stable) {
            Err(error) => {
                if version >= 2 {
                    out.error_code = error;
                } else {
                    // v0-1 have no top-level error: each partition carries it.
                    for (topic, indexes) in topics.unwrap_or_default() {
                        let mut tr = offset_fetch_response::OffsetFetchResponseTopic::default();
                        tr.name = TopicName(s(topic));
                        for index in indexes {
                            tr.partitions
                                .push(partition(index, -1, -1, String::new(), error));
                        }
                        out.topics.push(tr);
                    }
                }
            }
            Ok(by_topic) => {
                for (topic, list) in by_topic {
                    let mut tr = offset_fetch_response::OffsetFetchResponseTopic::default();
                    tr.name = TopicName(s(topic));
                    for f in list {
                        tr.partitions.push(partition(
                            f.partition.partition,
                            f.offset,
                            f.leader_epoch,
                            f.metadata,
                            f.error_code,
                        ));
                    }
                    out.topics.push(tr);
                }
            }
        }
        out
    }

    // -----------------------------------------------------------------------------------------
    // Administration
    // -----------------------------------------------------------------------------------------

    pub(super) fn describe_groups(
        &self,
        version: i16,
        r: DescribeGroupsRequest,
    ) -> DescribeGroupsResponse {
        let mut out = DescribeGroupsResponse::default();
        for id in r.groups {
            let group_id = id.0.to_string();
            let mut dg = describe_groups_response::DescribedGroup::default();
            dg.group_id = id;
            if version >= 3 {
                dg.authorized_operations = i32::MIN;
            }
            match self.with_group(&group_id, |c, _| {
                c.describe_groups(std::slice::from_ref(&group_id))
            }) {
                Err(error) => {
                    dg.error_code = error;
                    dg.group_state = s("");
                }
                Ok(mut described) => {
                    let Some(d) = described.pop() else {
                        dg.error_code = code::NOT_COORDINATOR;
                        out.groups.push(dg);
                        continue;
                    };
                    dg.error_code = d.error_code;
                    dg.group_state = s(d.state);
                    dg.protocol_type = s(d.protocol_type);
                    dg.protocol_data = s(d.protocol_name);
                    dg.members = d
                        .members
                        .into_iter()
                        .map(|m| {
                            let mut dm = describe_groups_response::DescribedGroupMember::default();
                            dm.member_id = s(m.member_id);
                            dm.group_instance_id = m.group_instance_id.map(s);
                            dm.client_id = s(m.client_id);
                            dm.client_host = s(m.client_host);
                            dm.member_metadata = Bytes::from(m.metadata);
                            dm.member_assignment = Bytes::from(m.assignment);
                            dm
                        })
                        .collect();
                }
            }
            if version >= 6 {
                // KIP-1043: a group that does not exist is an error, with a message.
                if dg.error_code == 0 && dg.group_state.as_str() == "Dead" {
                    dg.error_code = code::GROUP_ID_NOT_FOUND;
                }
                if dg.error_code != 0 {
                    dg.error_message = Some(s(format!(
                        "group {group_id}: {}",
                        code::Named(dg.error_code)
                    )));
                }
            }
            out.groups.push(dg);
        }
        out
    }

    pub(super) fn list_groups(&self, version: i16, r: ListGroupsRequest) -> ListGroupsResponse {
        let mut out = ListGroupsResponse::default();
        // Every keel group is a classic group (KIP-848's types: classic, consumer, share).
        if !r.types_filter.is_empty()
            && !r
                .types_filter
                .iter()
                .any(|t| t.eq_ignore_ascii_case("classic"))
        {
            return out;
        }
        let states: Vec<GroupState> = r
            .states_filter
            .iter()
            .filter_map(|name| GroupState::parse(name))
            .collect();
        if states.len() < r.states_filter.len() {
            // A state that does not exist matches no group (Kafka's behaviour).
            if states.is_empty() {
                return out;
            }
        }
        let mut listed = Vec::new();
        let loading = self.each_coordinator(|c| listed.extend(c.list_groups(&states)));
        if loading {
            out.error_code = code::COORDINATOR_LOAD_IN_PROGRESS;
        }
        for g in listed {
            let mut lg = list_groups_response::ListedGroup::default();
            lg.group_id = GroupId(s(g.group_id));
            lg.protocol_type = s(g.protocol_type);
            if version >= 4 {
                lg.group_state = s(g.state.name());
            }
            if version >= 5 {
                lg.group_type = s("classic");
            }
            out.groups.push(lg);
        }
        out
    }

    /// OffsetDelete v0 (KIP-496): the coordinator deletes the group's offsets of partitions
    /// that exist (UNKNOWN_TOPIC_OR_PARTITION for the others), keeping those of topics a member
    /// subscribes to ([`GroupCoordinator::delete_offsets`]).
    pub(super) fn offset_delete(&self, r: OffsetDeleteRequest) -> OffsetDeleteResponse {
        let group_id = r.group_id.0.to_string();
        let mut out = OffsetDeleteResponse::default();
        let mut known = Vec::new();
        let mut answers: Vec<(String, i32, ErrorCode)> = Vec::new();
        for t in &r.topics {
            let name = t.name.0.to_string();
            for p in &t.partitions {
                let exists = self.with_metadata(|m| {
                    m.topic(&name).is_some_and(|topic| {
                        usize::try_from(p.partition_index).is_ok_and(|i| i < topic.partitions.len())
                    })
                });
                if exists {
                    known.push(keel_core::group::TopicPartition {
                        topic: name.clone(),
                        partition: p.partition_index,
                    });
                } else {
                    answers.push((
                        name.clone(),
                        p.partition_index,
                        code::UNKNOWN_TOPIC_OR_PARTITION,
                    ));
                }
            }
        }
        match self.with_group(&group_id, |c, _| c.delete_offsets(&group_id, &known)) {
            Err(error) | Ok(Err(error)) => {
                out.error_code = error;
                return out;
            }
            Ok(Ok(results)) => {
                answers.extend(
                    results
                        .into_iter()
                        .map(|(tp, e)| (tp.topic, tp.partition, e)),
                );
            }
        }
        answers.sort();
        for (topic, partition, error) in answers {
            let p = offset_delete_response::OffsetDeleteResponsePartition::default()
                .with_partition_index(partition)
                .with_error_code(error);
            match out.topics.last_mut() {
                Some(t) if t.name.0.as_str() == topic => t.partitions.push(p),
                _ => out.topics.push(
                    offset_delete_response::OffsetDeleteResponseTopic::default()
                        .with_name(TopicName(s(topic)))
                        .with_partitions(vec![p]),
                ),
            }
        }
        out
    }

    pub(super) fn delete_groups(&self, r: DeleteGroupsRequest) -> DeleteGroupsResponse {
        let mut out = DeleteGroupsResponse::default();
        for id in r.groups_names {
            let group_id = id.0.to_string();
            let mut result = delete_groups_response::DeletableGroupResult::default();
            result.group_id = id;
            result.error_code = match self.with_group(&group_id, |c, now| {
                c.delete_groups(now, std::slice::from_ref(&group_id))
            }) {
                Err(error) => error,
                Ok(answers) => answers.first().map_or(code::NOT_COORDINATOR, |(_, e)| *e),
            };
            out.results.push(result);
        }
        out
    }
}
