//! Authorisation of every Kafka request (docs/security.md, "Authorisation"): the one hook the
//! broker's [`Handler`](crate::wire::Handler) runs before it handles a request.
//!
//! What it owns:
//! - Kafka's operation and resource per API (`KafkaApis`, `AclApis`, `AuthHelper`), checked
//!   against the ACLs of the applied metadata with core's [`Acls::authorize`];
//! - the answers Kafka gives to what is denied: a whole request refused with its API's
//!   authorisation error (CLUSTER_, GROUP_, TRANSACTIONAL_ID_AUTHORIZATION_FAILED), or the
//!   denied topics, groups or ids taken out of the request before it is handled and put back
//!   into its response with TOPIC_AUTHORIZATION_FAILED (or the API's code), so that nothing
//!   denied is read or changed; listings (Metadata of all topics, ListGroups,
//!   ListTransactions, OffsetFetch of all topics) silently leave out what the principal may
//!   not describe, as Kafka does;
//! - the audit trail: each denial of something a request named is logged (target
//!   `keel::audit`: principal, client address, listener, API, operation, resource and the rule
//!   that decided), at most [`AUDIT_LINES_PER_SECOND`] lines a second with a count of those
//!   left out, and counted in `keel_authorization_denials_total`.
//!
//! What always holds:
//! - without an authoriser (`authorizer.class.name` empty) every request passes unchanged,
//!   and the ACL APIs answer SECURITY_DISABLED, as Kafka's do;
//! - with one, an API this module has no rule for is served to super users only; anyone
//!   else's request closes the connection (a new API is never open by omission);
//! - a request's checks all read one snapshot of the metadata.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use keel_core::acl::{AuthorizerConfig, Operation, ResourceType, CLUSTER_NAME};
use keel_core::batch::BatchHeader;
use keel_core::controller::MetadataState;
use keel_core::error_code::{self as code, ErrorCode};

use super::Broker;
use crate::wire::{HandlerError, HandlerResult, RequestContext};

/// The most audit lines logged per second; the others are counted and reported with the next
/// line logged.
pub const AUDIT_LINES_PER_SECOND: u64 = 50;

/// What the broker does with a request once authorised.
pub(super) enum Gate {
    /// Handle it (perhaps with denied parts taken out), then pass the result through `finish`,
    /// which puts the denied parts back with their errors.
    Pass(RequestKind, Option<Finish>),
    /// Answer at once, without handling it (or close the connection).
    Answer(HandlerResult),
    /// Answered by this future (the ACL and SCRAM APIs).
    Later(Pin<Box<dyn Future<Output = HandlerResult> + Send>>),
}

/// Puts the denied parts of a request into its response.
pub(super) type Finish = Box<dyn FnOnce(HandlerResult) -> HandlerResult + Send>;

fn s(text: impl Into<String>) -> StrBytes {
    StrBytes::from_string(text.into())
}

/// A `Finish` that edits the response, when there is one.
fn finish(edit: impl FnOnce(&mut ResponseKind) + Send + 'static) -> Option<Finish> {
    Some(Box::new(move |result: HandlerResult| {
        let mut result = result;
        if let Ok(Some(response)) = &mut result {
            edit(response);
        }
        result
    }))
}

fn answer(response: ResponseKind) -> Gate {
    Gate::Answer(Ok(Some(response)))
}

/// One request's authorisation: the principal, the client's address and one metadata
/// snapshot.
pub(super) struct Check<'a> {
    broker: &'a Broker,
    config: &'a AuthorizerConfig,
    state: Arc<MetadataState>,
    ctx: &'a RequestContext,
    host: String,
}

impl<'a> Check<'a> {
    fn new(broker: &'a Broker, config: &'a AuthorizerConfig, ctx: &'a RequestContext) -> Self {
        Check {
            broker,
            config,
            state: broker.cluster().state(),
            ctx,
            host: ctx.peer.ip().to_canonical().to_string(),
        }
    }

    fn is_super_user(&self) -> bool {
        self.config
            .super_users
            .contains(self.ctx.principal.as_str())
    }

    /// Whether the request may do `operation` on the resource; a denial is audited.
    fn allowed(&self, operation: Operation, resource_type: ResourceType, name: &str) -> bool {
        let decision = self.state.acls().authorize(
            self.config,
            self.ctx.principal.as_str(),
            &self.host,
            operation,
            resource_type,
            name,
        );
        if !decision.allowed {
            self.broker
                .metrics()
                .record_denial(resource_type, operation);
            audit(
                self.ctx,
                &self.host,
                operation,
                resource_type,
                name,
                &decision.rule,
            );
        }
        decision.allowed
    }

    /// The same without the audit: for listings that leave out what the principal may not
    /// see (Kafka's `logIfDenied = false`).
    fn visible(&self, operation: Operation, resource_type: ResourceType, name: &str) -> bool {
        self.state
            .acls()
            .authorize(
                self.config,
                self.ctx.principal.as_str(),
                &self.host,
                operation,
                resource_type,
                name,
            )
            .allowed
    }

    fn cluster(&self, operation: Operation) -> bool {
        self.allowed(operation, ResourceType::Cluster, CLUSTER_NAME)
    }

    fn topic(&self, operation: Operation, name: &str) -> bool {
        self.allowed(operation, ResourceType::Topic, name)
    }

    fn group(&self, operation: Operation, name: &str) -> bool {
        self.allowed(operation, ResourceType::Group, name)
    }

    fn txn_id(&self, operation: Operation, name: &str) -> bool {
        self.allowed(operation, ResourceType::TransactionalId, name)
    }

    /// Kafka's `authorizedOperations` bitfield for a resource: the operations of `ops` the
    /// principal may do.
    fn operations(&self, resource_type: ResourceType, name: &str, ops: &[Operation]) -> i32 {
        ops.iter()
            .filter(|op| self.visible(**op, resource_type, name))
            .fold(0, |bits, op| bits | op.bit())
    }
}

/// The operations a topic's `topic_authorized_operations` reports (`AclEntry.supportedOperations`).
const TOPIC_OPERATIONS: [Operation; 8] = [
    Operation::Read,
    Operation::Write,
    Operation::Create,
    Operation::Describe,
    Operation::Delete,
    Operation::Alter,
    Operation::DescribeConfigs,
    Operation::AlterConfigs,
];

/// The operations a group's `authorized_operations` reports in DescribeGroups.
const GROUP_OPERATIONS: [Operation; 3] = [Operation::Read, Operation::Describe, Operation::Delete];

/// The operations the cluster's `cluster_authorized_operations` reports.
const CLUSTER_OPERATIONS: [Operation; 7] = [
    Operation::Create,
    Operation::ClusterAction,
    Operation::DescribeConfigs,
    Operation::AlterConfigs,
    Operation::IdempotentWrite,
    Operation::Alter,
    Operation::Describe,
];

/// One audit line per denial, at most [`AUDIT_LINES_PER_SECOND`] a second.
fn audit(
    ctx: &RequestContext,
    host: &str,
    operation: Operation,
    resource_type: ResourceType,
    name: &str,
    rule: &keel_core::acl::Rule,
) {
    static WINDOW_S: AtomicI64 = AtomicI64::new(0);
    static LOGGED: AtomicU64 = AtomicU64::new(0);
    static SUPPRESSED: AtomicU64 = AtomicU64::new(0);
    let now_s = crate::clock::wall_ms() / 1000;
    if WINDOW_S.swap(now_s, Ordering::Relaxed) != now_s {
        LOGGED.store(0, Ordering::Relaxed);
    }
    if LOGGED.fetch_add(1, Ordering::Relaxed) >= AUDIT_LINES_PER_SECOND {
        SUPPRESSED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let suppressed = SUPPRESSED.swap(0, Ordering::Relaxed);
    tracing::info!(
        target: "keel::audit",
        principal = %ctx.principal,
        client = %host,
        listener = %ctx.listener,
        api = ?ctx.api_key,
        operation = %operation,
        resource = %format_args!("{resource_type}:{name}"),
        rule = %rule,
        suppressed_before = suppressed,
        "denied"
    );
}

impl Broker {
    /// Authorises `request` (see the module documentation).
    pub(super) fn gate(self: &Arc<Self>, ctx: &RequestContext, request: RequestKind) -> Gate {
        // The ACL and SCRAM APIs answer with or without an authoriser.
        let request = match super::acl_handler::admin_gate(self, ctx, request) {
            Gate::Pass(request, None) => request,
            gate => return gate,
        };
        let Some(config) = self.settings().authorizer.as_ref() else {
            return Gate::Pass(request, None);
        };
        let check = Check::new(self, config, ctx);
        self.gate_with(&check, ctx, request)
    }

    /// Authorises the ACL and SCRAM APIs' own operation (ALTER or DESCRIBE on the cluster);
    /// `None` without an authoriser.
    pub(super) fn cluster_allowed(
        &self,
        ctx: &RequestContext,
        operation: Operation,
    ) -> Option<bool> {
        let config = self.settings().authorizer.as_ref()?;
        Some(Check::new(self, config, ctx).cluster(operation))
    }

    fn gate_with(&self, c: &Check<'_>, ctx: &RequestContext, request: RequestKind) -> Gate {
        let v = ctx.api_version;
        match request {
            RequestKind::ApiVersions(_)
            | RequestKind::SaslHandshake(_)
            | RequestKind::SaslAuthenticate(_) => Gate::Pass(request, None),
            RequestKind::Produce(r) => produce(c, r),
            RequestKind::Fetch(r) => fetch(c, r),
            RequestKind::ListOffsets(r) => list_offsets(c, r),
            RequestKind::Metadata(r) => metadata(self, c, v, r),
            RequestKind::OffsetForLeaderEpoch(r) => offset_for_leader_epoch(c, r),
            RequestKind::DeleteRecords(r) => delete_records(c, r),
            RequestKind::InitProducerId(r) => init_producer_id(c, r),
            RequestKind::AddPartitionsToTxn(r) => add_partitions_to_txn(c, v, r),
            RequestKind::AddOffsetsToTxn(r) => {
                let e = if !c.txn_id(Operation::Write, &r.transactional_id) {
                    code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED
                } else if !c.group(Operation::Read, &r.group_id) {
                    code::GROUP_AUTHORIZATION_FAILED
                } else {
                    return Gate::Pass(RequestKind::AddOffsetsToTxn(r), None);
                };
                answer(ResponseKind::AddOffsetsToTxn(
                    AddOffsetsToTxnResponse::default().with_error_code(e),
                ))
            }
            RequestKind::EndTxn(r) => {
                if c.txn_id(Operation::Write, &r.transactional_id) {
                    return Gate::Pass(RequestKind::EndTxn(r), None);
                }
                answer(ResponseKind::EndTxn(
                    EndTxnResponse::default()
                        .with_error_code(code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
                        .with_producer_id(ProducerId(-1))
                        .with_producer_epoch(-1),
                ))
            }
            RequestKind::TxnOffsetCommit(r) => txn_offset_commit(c, r),
            RequestKind::DescribeTransactions(r) => describe_transactions(c, r),
            RequestKind::ListTransactions(r) => {
                let c = c.snapshot();
                Gate::Pass(
                    RequestKind::ListTransactions(r),
                    finish(move |resp| {
                        if let ResponseKind::ListTransactions(resp) = resp {
                            resp.transaction_states.retain(|t| {
                                c.visible(
                                    Operation::Describe,
                                    ResourceType::TransactionalId,
                                    &t.transactional_id,
                                )
                            });
                        }
                    }),
                )
            }
            RequestKind::DescribeProducers(r) => describe_producers(c, r),
            RequestKind::CreateTopics(r) => create_topics(c, v, r),
            RequestKind::DeleteTopics(r) => delete_topics(c, v, r),
            RequestKind::CreatePartitions(r) => {
                let (kept, denied): (Vec<_>, Vec<_>) = r
                    .topics
                    .iter()
                    .cloned()
                    .partition(|t| c.topic(Operation::Alter, &t.name));
                let r = r.with_topics(kept);
                Gate::Pass(
                    RequestKind::CreatePartitions(r),
                    finish(move |resp| {
                        if let ResponseKind::CreatePartitions(resp) = resp {
                            for t in denied {
                                resp.results.push(
                                    create_partitions_response::CreatePartitionsTopicResult::default()
                                        .with_name(t.name)
                                        .with_error_code(code::TOPIC_AUTHORIZATION_FAILED)
                                        .with_error_message(Some(s(denied_message("Alter", "topic")))),
                                );
                            }
                        }
                    }),
                )
            }
            RequestKind::DescribeConfigs(r) => describe_configs(c, r),
            RequestKind::IncrementalAlterConfigs(r) => incremental_alter_configs(c, r),
            RequestKind::AlterConfigs(r) => alter_configs(c, r),
            RequestKind::DescribeCluster(r) => {
                let wanted = r.include_cluster_authorized_operations;
                let ops = wanted.then(|| cluster_operations(c));
                Gate::Pass(
                    RequestKind::DescribeCluster(r),
                    finish(move |resp| {
                        if let (ResponseKind::DescribeCluster(resp), Some(ops)) = (resp, ops) {
                            resp.cluster_authorized_operations = ops;
                        }
                    }),
                )
            }
            RequestKind::DescribeLogDirs(r) => {
                if c.cluster(Operation::Describe) {
                    return Gate::Pass(RequestKind::DescribeLogDirs(r), None);
                }
                // Kafka answers an empty list, with the error from v3 on.
                let code = if v >= 3 {
                    code::CLUSTER_AUTHORIZATION_FAILED
                } else {
                    0
                };
                answer(ResponseKind::DescribeLogDirs(
                    DescribeLogDirsResponse::default().with_error_code(code),
                ))
            }
            RequestKind::DescribeTopicPartitions(r) => describe_topic_partitions(c, r),
            RequestKind::DescribeQuorum(r) => {
                if c.cluster(Operation::Describe) {
                    return Gate::Pass(RequestKind::DescribeQuorum(r), None);
                }
                answer(ResponseKind::DescribeQuorum(
                    DescribeQuorumResponse::default()
                        .with_error_code(code::CLUSTER_AUTHORIZATION_FAILED),
                ))
            }
            RequestKind::FindCoordinator(r) => find_coordinator(c, v, r),
            RequestKind::JoinGroup(r) => {
                if c.group(Operation::Read, &r.group_id) {
                    return Gate::Pass(RequestKind::JoinGroup(r), None);
                }
                answer(ResponseKind::JoinGroup(
                    JoinGroupResponse::default().with_error_code(code::GROUP_AUTHORIZATION_FAILED),
                ))
            }
            RequestKind::SyncGroup(r) => {
                if c.group(Operation::Read, &r.group_id) {
                    return Gate::Pass(RequestKind::SyncGroup(r), None);
                }
                answer(ResponseKind::SyncGroup(
                    SyncGroupResponse::default().with_error_code(code::GROUP_AUTHORIZATION_FAILED),
                ))
            }
            RequestKind::Heartbeat(r) => {
                if c.group(Operation::Read, &r.group_id) {
                    return Gate::Pass(RequestKind::Heartbeat(r), None);
                }
                answer(ResponseKind::Heartbeat(
                    HeartbeatResponse::default().with_error_code(code::GROUP_AUTHORIZATION_FAILED),
                ))
            }
            RequestKind::LeaveGroup(r) => {
                if c.group(Operation::Read, &r.group_id) {
                    return Gate::Pass(RequestKind::LeaveGroup(r), None);
                }
                answer(ResponseKind::LeaveGroup(
                    LeaveGroupResponse::default().with_error_code(code::GROUP_AUTHORIZATION_FAILED),
                ))
            }
            RequestKind::OffsetCommit(r) => offset_commit(c, r),
            RequestKind::OffsetDelete(r) => offset_delete(c, r),
            RequestKind::OffsetFetch(r) => offset_fetch(c, v, r),
            RequestKind::DescribeGroups(r) => {
                let (kept, denied): (Vec<_>, Vec<_>) = r
                    .groups
                    .iter()
                    .cloned()
                    .partition(|g| c.group(Operation::Describe, g));
                // v3+: the operations the principal may do on each group, when asked.
                let group_ops: Vec<(GroupId, i32)> = if r.include_authorized_operations {
                    kept.iter()
                        .map(|g| {
                            (
                                g.clone(),
                                c.operations(ResourceType::Group, g, &GROUP_OPERATIONS),
                            )
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                let r = r.with_groups(kept);
                Gate::Pass(
                    RequestKind::DescribeGroups(r),
                    finish(move |resp| {
                        if let ResponseKind::DescribeGroups(resp) = resp {
                            for g in resp.groups.iter_mut().filter(|g| g.error_code == 0) {
                                if let Some((_, ops)) =
                                    group_ops.iter().find(|(id, _)| *id == g.group_id)
                                {
                                    g.authorized_operations = *ops;
                                }
                            }
                            for g in denied {
                                resp.groups.push(
                                    describe_groups_response::DescribedGroup::default()
                                        .with_group_id(g)
                                        .with_error_code(code::GROUP_AUTHORIZATION_FAILED),
                                );
                            }
                        }
                    }),
                )
            }
            RequestKind::ListGroups(r) => {
                if c.visible(Operation::Describe, ResourceType::Cluster, CLUSTER_NAME) {
                    return Gate::Pass(RequestKind::ListGroups(r), None);
                }
                let c = c.snapshot();
                Gate::Pass(
                    RequestKind::ListGroups(r),
                    finish(move |resp| {
                        if let ResponseKind::ListGroups(resp) = resp {
                            resp.groups.retain(|g| {
                                c.visible(Operation::Describe, ResourceType::Group, &g.group_id)
                            });
                        }
                    }),
                )
            }
            RequestKind::DeleteGroups(r) => {
                let (kept, denied): (Vec<_>, Vec<_>) = r
                    .groups_names
                    .iter()
                    .cloned()
                    .partition(|g| c.group(Operation::Delete, g));
                let r = r.with_groups_names(kept);
                Gate::Pass(
                    RequestKind::DeleteGroups(r),
                    finish(move |resp| {
                        if let ResponseKind::DeleteGroups(resp) = resp {
                            for g in denied {
                                resp.results.push(
                                    delete_groups_response::DeletableGroupResult::default()
                                        .with_group_id(g)
                                        .with_error_code(code::GROUP_AUTHORIZATION_FAILED),
                                );
                            }
                        }
                    }),
                )
            }
            RequestKind::ElectLeaders(r) => {
                if c.cluster(Operation::Alter) {
                    return Gate::Pass(RequestKind::ElectLeaders(r), None);
                }
                answer(ResponseKind::ElectLeaders(
                    ElectLeadersResponse::default()
                        .with_error_code(code::CLUSTER_AUTHORIZATION_FAILED),
                ))
            }
            RequestKind::AlterPartitionReassignments(r) => {
                if c.cluster(Operation::Alter) {
                    return Gate::Pass(RequestKind::AlterPartitionReassignments(r), None);
                }
                answer(ResponseKind::AlterPartitionReassignments(
                    AlterPartitionReassignmentsResponse::default()
                        .with_error_code(code::CLUSTER_AUTHORIZATION_FAILED),
                ))
            }
            RequestKind::UnregisterBroker(r) => {
                if c.cluster(Operation::Alter) {
                    return Gate::Pass(RequestKind::UnregisterBroker(r), None);
                }
                answer(ResponseKind::UnregisterBroker(
                    UnregisterBrokerResponse::default()
                        .with_error_code(code::CLUSTER_AUTHORIZATION_FAILED),
                ))
            }
            RequestKind::ListPartitionReassignments(r) => {
                if c.cluster(Operation::Describe) {
                    return Gate::Pass(RequestKind::ListPartitionReassignments(r), None);
                }
                answer(ResponseKind::ListPartitionReassignments(
                    ListPartitionReassignmentsResponse::default()
                        .with_error_code(code::CLUSTER_AUTHORIZATION_FAILED),
                ))
            }
            other if c.is_super_user() => Gate::Pass(other, None),
            _ => Gate::Answer(Err(HandlerError::new(format!(
                "{:?} has no authorisation rule: only super users may use it",
                ctx.api_key
            )))),
        }
    }
}

/// What a finish closure needs to check listings after the request was handled.
pub(super) struct Snapshot {
    config: AuthorizerConfig,
    state: Arc<MetadataState>,
    principal: String,
    host: String,
}

impl Snapshot {
    fn visible(&self, operation: Operation, resource_type: ResourceType, name: &str) -> bool {
        self.state
            .acls()
            .authorize(
                &self.config,
                &self.principal,
                &self.host,
                operation,
                resource_type,
                name,
            )
            .allowed
    }
}

impl Check<'_> {
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            config: self.config.clone(),
            state: self.state.clone(),
            principal: self.ctx.principal.as_str().to_string(),
            host: self.host.clone(),
        }
    }
}

fn denied_message(operation: &str, resource: &str) -> String {
    format!("{operation} on this {resource} is not authorized")
}

fn cluster_operations(c: &Check<'_>) -> i32 {
    if c.visible(Operation::Describe, ResourceType::Cluster, CLUSTER_NAME) {
        c.operations(ResourceType::Cluster, CLUSTER_NAME, &CLUSTER_OPERATIONS)
    } else {
        0
    }
}

// ------------------------------------------------------------------------------------------
// Per API (KafkaApis).

/// Produce: WRITE on each topic; transactional batches (the header's attribute, read without
/// the CRC check the append does) also WRITE on the transactional id,
/// whose denial refuses the whole request (`handleProduceRequest`). With acks=0 a denial
/// closes the connection after the allowed partitions were appended, as Kafka does for any
/// acks=0 error.
fn produce(c: &Check<'_>, r: ProduceRequest) -> Gate {
    let transactional = r
        .topic_data
        .iter()
        .flat_map(|t| &t.partition_data)
        .any(|p| {
            p.records
                .as_ref()
                .and_then(|b| BatchHeader::read(b).ok())
                .is_some_and(|h| h.is_transactional())
        });
    let all_error = |r: &ProduceRequest, e: ErrorCode| {
        let mut resp = ProduceResponse::default();
        for t in &r.topic_data {
            resp.responses.push(
                produce_response::TopicProduceResponse::default()
                    .with_name(t.name.clone())
                    .with_partition_responses(
                        t.partition_data
                            .iter()
                            .map(|p| produce_partition_error(p.index, e))
                            .collect(),
                    ),
            );
        }
        resp
    };
    if transactional {
        let allowed = r
            .transactional_id
            .as_ref()
            .is_some_and(|id| c.txn_id(Operation::Write, id));
        if !allowed {
            if r.acks == 0 {
                return Gate::Answer(Err(HandlerError::new(
                    "acks=0 produce refused: TRANSACTIONAL_ID_AUTHORIZATION_FAILED",
                )));
            }
            return answer(ResponseKind::Produce(all_error(
                &r,
                code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
            )));
        }
    }
    let (kept, denied): (Vec<_>, Vec<_>) = r
        .topic_data
        .iter()
        .cloned()
        .partition(|t| c.topic(Operation::Write, &t.name));
    if denied.is_empty() {
        return Gate::Pass(RequestKind::Produce(r), None);
    }
    let acks = r.acks;
    let denied_response = all_error(
        &ProduceRequest::default().with_topic_data(denied),
        code::TOPIC_AUTHORIZATION_FAILED,
    );
    Gate::Pass(
        RequestKind::Produce(r.with_topic_data(kept)),
        Some(Box::new(move |result| match result {
            Ok(None) if acks == 0 => Err(HandlerError::new(
                "acks=0 produce refused: TOPIC_AUTHORIZATION_FAILED",
            )),
            Ok(Some(ResponseKind::Produce(mut resp))) => {
                resp.responses.extend(denied_response.responses);
                Ok(Some(ResponseKind::Produce(resp)))
            }
            other => other,
        })),
    )
}

fn produce_partition_error(index: i32, e: ErrorCode) -> produce_response::PartitionProduceResponse {
    produce_response::PartitionProduceResponse::default()
        .with_index(index)
        .with_error_code(e)
        .with_base_offset(-1)
        .with_log_append_time_ms(-1)
        .with_log_start_offset(-1)
}

/// Fetch: READ on each topic (a replica's fetch, replica id >= 0, needs CLUSTER_ACTION on the
/// cluster; keel's own followers fetch over the peer transport).
fn fetch(c: &Check<'_>, r: FetchRequest) -> Gate {
    let replica = r.replica_id.0 >= 0 || r.replica_state.replica_id.0 >= 0;
    if replica && !c.cluster(Operation::ClusterAction) {
        return answer(ResponseKind::Fetch(
            FetchResponse::default().with_error_code(code::CLUSTER_AUTHORIZATION_FAILED),
        ));
    }
    let (kept, denied): (Vec<_>, Vec<_>) = r
        .topics
        .iter()
        .cloned()
        // An empty name is a topic id this broker does not know (Fetch v13+): answered
        // UNKNOWN_TOPIC_ID, which says nothing a denial would hide.
        .partition(|t| replica || t.topic.0.is_empty() || c.topic(Operation::Read, &t.topic));
    if denied.is_empty() {
        return Gate::Pass(RequestKind::Fetch(r), None);
    }
    Gate::Pass(
        RequestKind::Fetch(r.with_topics(kept)),
        finish(move |resp| {
            if let ResponseKind::Fetch(resp) = resp {
                for t in denied {
                    resp.responses.push(
                        fetch_response::FetchableTopicResponse::default()
                            .with_topic(t.topic)
                            .with_topic_id(t.topic_id)
                            .with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|p| {
                                        fetch_response::PartitionData::default()
                                            .with_partition_index(p.partition)
                                            .with_error_code(code::TOPIC_AUTHORIZATION_FAILED)
                                            .with_high_watermark(-1)
                                            .with_last_stable_offset(-1)
                                            .with_log_start_offset(-1)
                                            .with_aborted_transactions(Some(Vec::new()))
                                            .with_records(Some(Default::default()))
                                    })
                                    .collect(),
                            ),
                    );
                }
            }
        }),
    )
}

/// ListOffsets: DESCRIBE on each topic.
fn list_offsets(c: &Check<'_>, r: ListOffsetsRequest) -> Gate {
    let (kept, denied): (Vec<_>, Vec<_>) = r
        .topics
        .iter()
        .cloned()
        .partition(|t| c.topic(Operation::Describe, &t.name));
    if denied.is_empty() {
        return Gate::Pass(RequestKind::ListOffsets(r), None);
    }
    Gate::Pass(
        RequestKind::ListOffsets(r.with_topics(kept)),
        finish(move |resp| {
            if let ResponseKind::ListOffsets(resp) = resp {
                for t in denied {
                    resp.topics.push(
                        list_offsets_response::ListOffsetsTopicResponse::default()
                            .with_name(t.name)
                            .with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|p| {
                                        list_offsets_response::ListOffsetsPartitionResponse::default()
                                            .with_partition_index(p.partition_index)
                                            .with_error_code(code::TOPIC_AUTHORIZATION_FAILED)
                                            .with_timestamp(-1)
                                            .with_offset(-1)
                                            .with_leader_epoch(-1)
                                    })
                                    .collect(),
                            ),
                    );
                }
            }
        }),
    )
}

/// DescribeTopicPartitions (`DescribeTopicPartitionsRequestHandler`): a listing of every
/// topic leaves out those the principal may not DESCRIBE; a named one it may not DESCRIBE gets
/// TOPIC_AUTHORIZATION_FAILED and nothing else, whether it exists or not.
fn describe_topic_partitions(c: &Check<'_>, r: DescribeTopicPartitionsRequest) -> Gate {
    let listing = r.topics.is_empty();
    let c = c.snapshot();
    Gate::Pass(
        RequestKind::DescribeTopicPartitions(r),
        finish(move |resp| {
            if let ResponseKind::DescribeTopicPartitions(resp) = resp {
                let allowed = |name: &Option<TopicName>| {
                    name.as_ref()
                        .is_some_and(|n| c.visible(Operation::Describe, ResourceType::Topic, n))
                };
                if listing {
                    resp.topics.retain(|t| allowed(&t.name));
                } else {
                    for t in &mut resp.topics {
                        if !allowed(&t.name) {
                            *t = describe_topic_partitions_response::DescribeTopicPartitionsResponseTopic::default()
                                .with_name(t.name.clone())
                                .with_error_code(code::TOPIC_AUTHORIZATION_FAILED);
                        }
                    }
                }
            }
        }),
    )
}

/// Metadata (`getTopicMetadata`): all topics: those the principal may not DESCRIBE are left
/// out; named topics without DESCRIBE get TOPIC_AUTHORIZATION_FAILED (whether they exist or
/// not), and so does a missing topic that would be auto-created without CREATE on the cluster
/// or the topic. Topic and cluster authorised operations when asked (v8+).
fn metadata(broker: &Broker, c: &Check<'_>, v: i16, r: MetadataRequest) -> Gate {
    let topic_ops = v >= 8 && r.include_topic_authorized_operations;
    let cluster_ops = ((8..=10).contains(&v) && r.include_cluster_authorized_operations)
        .then(|| cluster_operations(c));
    let mut denied: Vec<metadata_response::MetadataResponseTopic> = Vec::new();
    let r = match r.topics.clone() {
        None => r,
        Some(topics) => {
            let auto_create = r.allow_auto_topic_creation && broker.settings().auto_create_topics;
            let mut kept = Vec::new();
            for t in topics {
                let name = match &t.name {
                    Some(n) => Some(n.0.to_string()),
                    None => c
                        .state
                        .topic_by_id(keel_core::controller::TopicId(*t.topic_id.as_bytes()))
                        .map(|topic| topic.name.clone()),
                };
                let Some(name) = name else {
                    kept.push(t);
                    continue;
                };
                let refused = if !c.topic(Operation::Describe, &name) {
                    true
                } else {
                    auto_create
                        && c.state.topic(&name).is_none()
                        && keel_core::controller::validate_topic_name(&name).is_ok()
                        && !c.visible(Operation::Create, ResourceType::Cluster, CLUSTER_NAME)
                        && !c.topic(Operation::Create, &name)
                };
                if refused {
                    denied.push(
                        metadata_response::MetadataResponseTopic::default()
                            .with_error_code(code::TOPIC_AUTHORIZATION_FAILED)
                            .with_name(t.name.clone())
                            .with_topic_id(t.topic_id),
                    );
                } else {
                    kept.push(t);
                }
            }
            r.with_topics(Some(kept))
        }
    };
    let all = r.topics.is_none();
    let snapshot = c.snapshot();
    Gate::Pass(
        RequestKind::Metadata(r),
        finish(move |resp| {
            if let ResponseKind::Metadata(resp) = resp {
                if all {
                    resp.topics.retain(|t| {
                        t.name.as_ref().is_none_or(|n| {
                            snapshot.visible(Operation::Describe, ResourceType::Topic, n)
                        })
                    });
                }
                if topic_ops {
                    for t in resp.topics.iter_mut().filter(|t| t.error_code == 0) {
                        if let Some(n) = &t.name {
                            t.topic_authorized_operations = TOPIC_OPERATIONS
                                .iter()
                                .filter(|op| snapshot.visible(**op, ResourceType::Topic, n))
                                .fold(0, |bits, op| bits | op.bit());
                        }
                    }
                }
                resp.topics.extend(denied);
                if let Some(ops) = cluster_ops {
                    resp.cluster_authorized_operations = ops;
                }
            }
        }),
    )
}

/// OffsetForLeaderEpoch: DESCRIBE on each topic for a client; CLUSTER_ACTION for a replica.
fn offset_for_leader_epoch(c: &Check<'_>, r: OffsetForLeaderEpochRequest) -> Gate {
    let replica = r.replica_id.0 >= 0;
    let replica_allowed = replica && c.cluster(Operation::ClusterAction);
    let (kept, denied): (Vec<_>, Vec<_>) = r.topics.iter().cloned().partition(|t| {
        if replica {
            replica_allowed
        } else {
            c.topic(Operation::Describe, &t.topic)
        }
    });
    if denied.is_empty() {
        return Gate::Pass(RequestKind::OffsetForLeaderEpoch(r), None);
    }
    let e = if replica {
        code::CLUSTER_AUTHORIZATION_FAILED
    } else {
        code::TOPIC_AUTHORIZATION_FAILED
    };
    Gate::Pass(
        RequestKind::OffsetForLeaderEpoch(r.with_topics(kept)),
        finish(move |resp| {
            if let ResponseKind::OffsetForLeaderEpoch(resp) = resp {
                for t in denied {
                    resp.topics.push(
                        offset_for_leader_epoch_response::OffsetForLeaderTopicResult::default()
                            .with_topic(t.topic)
                            .with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|p| {
                                        offset_for_leader_epoch_response::EpochEndOffset::default()
                                            .with_partition(p.partition)
                                            .with_error_code(e)
                                            .with_leader_epoch(-1)
                                            .with_end_offset(-1)
                                    })
                                    .collect(),
                            ),
                    );
                }
            }
        }),
    )
}

/// DeleteRecords: DELETE on each topic.
fn delete_records(c: &Check<'_>, r: DeleteRecordsRequest) -> Gate {
    let (kept, denied): (Vec<_>, Vec<_>) = r
        .topics
        .iter()
        .cloned()
        .partition(|t| c.topic(Operation::Delete, &t.name));
    if denied.is_empty() {
        return Gate::Pass(RequestKind::DeleteRecords(r), None);
    }
    Gate::Pass(
        RequestKind::DeleteRecords(r.with_topics(kept)),
        finish(move |resp| {
            if let ResponseKind::DeleteRecords(resp) = resp {
                for t in denied {
                    resp.topics.push(
                        delete_records_response::DeleteRecordsTopicResult::default()
                            .with_name(t.name)
                            .with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|p| {
                                        delete_records_response::DeleteRecordsPartitionResult::default()
                                            .with_partition_index(p.partition_index)
                                            .with_low_watermark(-1)
                                            .with_error_code(code::TOPIC_AUTHORIZATION_FAILED)
                                    })
                                    .collect(),
                            ),
                    );
                }
            }
        }),
    )
}

/// InitProducerId: WRITE on the transactional id; without one, IDEMPOTENT_WRITE on the
/// cluster or WRITE on some topic (KIP-679).
fn init_producer_id(c: &Check<'_>, r: InitProducerIdRequest) -> Gate {
    let error = match &r.transactional_id {
        Some(id) => {
            (!c.txn_id(Operation::Write, id)).then_some(code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
        }
        None => {
            let allowed = c.visible(
                Operation::IdempotentWrite,
                ResourceType::Cluster,
                CLUSTER_NAME,
            ) || c.state.acls().authorize_by_resource_type(
                c.config,
                c.ctx.principal.as_str(),
                &c.host,
                Operation::Write,
                ResourceType::Topic,
            );
            if !allowed {
                // Audited as the cluster operation Kafka names in its error.
                c.cluster(Operation::IdempotentWrite);
            }
            (!allowed).then_some(code::CLUSTER_AUTHORIZATION_FAILED)
        }
    };
    match error {
        None => Gate::Pass(RequestKind::InitProducerId(r), None),
        Some(e) => answer(ResponseKind::InitProducerId(
            InitProducerIdResponse::default()
                .with_error_code(e)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1),
        )),
    }
}

/// AddPartitionsToTxn: v0-3, WRITE on the transactional id (else every partition gets
/// TRANSACTIONAL_ID_AUTHORIZATION_FAILED) and on each topic (a denied topic gets
/// TOPIC_AUTHORIZATION_FAILED and the others OPERATION_NOT_ATTEMPTED); v4+, a broker's
/// request, CLUSTER_ACTION on the cluster.
fn add_partitions_to_txn(c: &Check<'_>, v: i16, r: AddPartitionsToTxnRequest) -> Gate {
    if v >= 4 {
        if c.cluster(Operation::ClusterAction) {
            return Gate::Pass(RequestKind::AddPartitionsToTxn(r), None);
        }
        return answer(ResponseKind::AddPartitionsToTxn(
            AddPartitionsToTxnResponse::default()
                .with_error_code(code::CLUSTER_AUTHORIZATION_FAILED),
        ));
    }
    let id_denied = !c.txn_id(Operation::Write, &r.v3_and_below_transactional_id);
    let denied_topics: Vec<TopicName> = if id_denied {
        Vec::new()
    } else {
        r.v3_and_below_topics
            .iter()
            .filter(|t| !c.topic(Operation::Write, &t.name))
            .map(|t| t.name.clone())
            .collect()
    };
    if !id_denied && denied_topics.is_empty() {
        return Gate::Pass(RequestKind::AddPartitionsToTxn(r), None);
    }
    let mut resp = AddPartitionsToTxnResponse::default();
    for t in &r.v3_and_below_topics {
        let e = if id_denied {
            code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED
        } else if denied_topics.contains(&t.name) {
            code::TOPIC_AUTHORIZATION_FAILED
        } else {
            code::OPERATION_NOT_ATTEMPTED
        };
        resp.results_by_topic_v3_and_below.push(
            add_partitions_to_txn_response::AddPartitionsToTxnTopicResult::default()
                .with_name(t.name.clone())
                .with_results_by_partition(
                    t.partitions
                        .iter()
                        .map(|&p| {
                            add_partitions_to_txn_response::AddPartitionsToTxnPartitionResult::default()
                                .with_partition_index(p)
                                .with_partition_error_code(e)
                        })
                        .collect(),
                ),
        );
    }
    answer(ResponseKind::AddPartitionsToTxn(resp))
}

/// TxnOffsetCommit: WRITE on the transactional id, READ on the group (each refuses every
/// partition), READ on each topic.
fn txn_offset_commit(c: &Check<'_>, r: TxnOffsetCommitRequest) -> Gate {
    let whole = if !c.txn_id(Operation::Write, &r.transactional_id) {
        Some(code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
    } else if !c.group(Operation::Read, &r.group_id) {
        Some(code::GROUP_AUTHORIZATION_FAILED)
    } else {
        None
    };
    let topic_result = |t: &txn_offset_commit_request::TxnOffsetCommitRequestTopic, e| {
        txn_offset_commit_response::TxnOffsetCommitResponseTopic::default()
            .with_name(t.name.clone())
            .with_partitions(
                t.partitions
                    .iter()
                    .map(|p| {
                        txn_offset_commit_response::TxnOffsetCommitResponsePartition::default()
                            .with_partition_index(p.partition_index)
                            .with_error_code(e)
                    })
                    .collect(),
            )
    };
    if let Some(e) = whole {
        return answer(ResponseKind::TxnOffsetCommit(
            TxnOffsetCommitResponse::default()
                .with_topics(r.topics.iter().map(|t| topic_result(t, e)).collect()),
        ));
    }
    let (kept, denied): (Vec<_>, Vec<_>) = r
        .topics
        .iter()
        .cloned()
        .partition(|t| c.topic(Operation::Read, &t.name));
    if denied.is_empty() {
        return Gate::Pass(RequestKind::TxnOffsetCommit(r), None);
    }
    let denied: Vec<_> = denied
        .iter()
        .map(|t| topic_result(t, code::TOPIC_AUTHORIZATION_FAILED))
        .collect();
    Gate::Pass(
        RequestKind::TxnOffsetCommit(r.with_topics(kept)),
        finish(move |resp| {
            if let ResponseKind::TxnOffsetCommit(resp) = resp {
                resp.topics.extend(denied);
            }
        }),
    )
}

/// DescribeTransactions: DESCRIBE on each transactional id; the topics of a transaction
/// the principal may not DESCRIBE are left out.
fn describe_transactions(c: &Check<'_>, r: DescribeTransactionsRequest) -> Gate {
    let (kept, denied): (Vec<_>, Vec<_>) = r
        .transactional_ids
        .iter()
        .cloned()
        .partition(|id| c.txn_id(Operation::Describe, id));
    let snapshot = c.snapshot();
    Gate::Pass(
        RequestKind::DescribeTransactions(r.with_transactional_ids(kept)),
        finish(move |resp| {
            if let ResponseKind::DescribeTransactions(resp) = resp {
                for t in &mut resp.transaction_states {
                    t.topics.retain(|topic| {
                        snapshot.visible(Operation::Describe, ResourceType::Topic, &topic.topic)
                    });
                }
                for id in denied {
                    resp.transaction_states.push(
                        describe_transactions_response::TransactionState::default()
                            .with_transactional_id(id)
                            .with_error_code(code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
                            .with_producer_id(ProducerId(-1))
                            .with_producer_epoch(-1)
                            .with_transaction_start_time_ms(-1),
                    );
                }
            }
        }),
    )
}

/// DescribeProducers: READ on each topic.
fn describe_producers(c: &Check<'_>, r: DescribeProducersRequest) -> Gate {
    let (kept, denied): (Vec<_>, Vec<_>) = r
        .topics
        .iter()
        .cloned()
        .partition(|t| c.topic(Operation::Read, &t.name));
    if denied.is_empty() {
        return Gate::Pass(RequestKind::DescribeProducers(r), None);
    }
    Gate::Pass(
        RequestKind::DescribeProducers(r.with_topics(kept)),
        finish(move |resp| {
            if let ResponseKind::DescribeProducers(resp) = resp {
                for t in denied {
                    resp.topics.push(
                        describe_producers_response::TopicResponse::default()
                            .with_name(t.name)
                            .with_partitions(
                                t.partition_indexes
                                    .iter()
                                    .map(|&p| {
                                        describe_producers_response::PartitionResponse::default()
                                            .with_partition_index(p)
                                            .with_error_code(code::TOPIC_AUTHORIZATION_FAILED)
                                    })
                                    .collect(),
                            ),
                    );
                }
            }
        }),
    )
}

/// CreateTopics: CREATE on the cluster, else on each topic; a created topic's configs are
/// shown only with DESCRIBE_CONFIGS on it (else TOPIC_AUTHORIZATION_FAILED in
/// `topic_config_error_code`, v5+).
fn create_topics(c: &Check<'_>, v: i16, r: CreateTopicsRequest) -> Gate {
    let cluster = c.visible(Operation::Create, ResourceType::Cluster, CLUSTER_NAME);
    let (kept, denied): (Vec<_>, Vec<_>) = r
        .topics
        .iter()
        .cloned()
        .partition(|t| cluster || c.topic(Operation::Create, &t.name));
    let snapshot = c.snapshot();
    Gate::Pass(
        RequestKind::CreateTopics(r.with_topics(kept)),
        finish(move |resp| {
            if let ResponseKind::CreateTopics(resp) = resp {
                if v >= 5 {
                    for t in resp.topics.iter_mut().filter(|t| t.error_code == 0) {
                        if !snapshot.visible(
                            Operation::DescribeConfigs,
                            ResourceType::Topic,
                            &t.name,
                        ) {
                            t.configs = None;
                            t.topic_config_error_code = code::TOPIC_AUTHORIZATION_FAILED;
                        }
                    }
                }
                for t in denied {
                    resp.topics.push(
                        create_topics_response::CreatableTopicResult::default()
                            .with_name(t.name)
                            .with_error_code(code::TOPIC_AUTHORIZATION_FAILED)
                            .with_error_message(Some(s(denied_message("Create", "topic"))))
                            .with_num_partitions(-1)
                            .with_replication_factor(-1),
                    );
                }
            }
        }),
    )
}

/// DeleteTopics: DELETE on each topic (by name, or by id once resolved; an unknown id is
/// left for the handler's UNKNOWN_TOPIC_ID).
fn delete_topics(c: &Check<'_>, v: i16, r: DeleteTopicsRequest) -> Gate {
    let mut denied: Vec<delete_topics_response::DeletableTopicResult> = Vec::new();
    let deny = |name: Option<TopicName>, id: uuid::Uuid| {
        let mut d = delete_topics_response::DeletableTopicResult::default()
            .with_name(name)
            .with_error_code(code::TOPIC_AUTHORIZATION_FAILED);
        if v >= 5 {
            d.error_message = Some(s(denied_message("Delete", "topic")));
        }
        if v >= 6 {
            d.topic_id = id;
        }
        d
    };
    let mut names = Vec::new();
    for n in &r.topic_names {
        if c.topic(Operation::Delete, n) {
            names.push(n.clone());
        } else {
            denied.push(deny(Some(n.clone()), uuid::Uuid::nil()));
        }
    }
    let mut states = Vec::new();
    for t in &r.topics {
        let name = match &t.name {
            Some(n) => Some(n.0.to_string()),
            None => c
                .state
                .topic_by_id(keel_core::controller::TopicId(*t.topic_id.as_bytes()))
                .map(|topic| topic.name.clone()),
        };
        match name {
            Some(n) if !c.topic(Operation::Delete, &n) => {
                denied.push(deny(t.name.clone(), t.topic_id))
            }
            _ => states.push(t.clone()),
        }
    }
    if denied.is_empty() {
        return Gate::Pass(RequestKind::DeleteTopics(r), None);
    }
    Gate::Pass(
        RequestKind::DeleteTopics(r.with_topic_names(names).with_topics(states)),
        finish(move |resp| {
            if let ResponseKind::DeleteTopics(resp) = resp {
                resp.responses.extend(denied);
            }
        }),
    )
}

/// The resource of a configs request's entry, and the code of its denial: TOPIC (2) and
/// BROKER (4, the cluster); `None` for other types (the handler refuses them).
fn config_resource(resource_type: i8, name: &str) -> Option<(ResourceType, String, ErrorCode)> {
    match resource_type {
        2 => Some((
            ResourceType::Topic,
            name.to_string(),
            code::TOPIC_AUTHORIZATION_FAILED,
        )),
        4 => Some((
            ResourceType::Cluster,
            CLUSTER_NAME.to_string(),
            code::CLUSTER_AUTHORIZATION_FAILED,
        )),
        _ => None,
    }
}

/// DescribeConfigs: DESCRIBE_CONFIGS on each topic, or on the cluster for a broker.
fn describe_configs(c: &Check<'_>, r: DescribeConfigsRequest) -> Gate {
    let mut kept = Vec::new();
    let mut denied = Vec::new();
    for res in &r.resources {
        match config_resource(res.resource_type, &res.resource_name) {
            Some((t, name, e)) if !c.allowed(Operation::DescribeConfigs, t, &name) => denied.push(
                describe_configs_response::DescribeConfigsResult::default()
                    .with_resource_type(res.resource_type)
                    .with_resource_name(res.resource_name.clone())
                    .with_error_code(e)
                    .with_error_message(Some(s(denied_message("DescribeConfigs", "resource")))),
            ),
            _ => kept.push(res.clone()),
        }
    }
    if denied.is_empty() {
        return Gate::Pass(RequestKind::DescribeConfigs(r), None);
    }
    Gate::Pass(
        RequestKind::DescribeConfigs(r.with_resources(kept)),
        finish(move |resp| {
            if let ResponseKind::DescribeConfigs(resp) = resp {
                resp.results.extend(denied);
            }
        }),
    )
}

/// IncrementalAlterConfigs: ALTER_CONFIGS on each topic, or on the cluster for a broker.
fn incremental_alter_configs(c: &Check<'_>, r: IncrementalAlterConfigsRequest) -> Gate {
    let mut kept = Vec::new();
    let mut denied = Vec::new();
    for res in &r.resources {
        match config_resource(res.resource_type, &res.resource_name) {
            Some((t, name, e)) if !c.allowed(Operation::AlterConfigs, t, &name) => denied.push(
                incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                    .with_resource_type(res.resource_type)
                    .with_resource_name(res.resource_name.clone())
                    .with_error_code(e)
                    .with_error_message(Some(s(denied_message("AlterConfigs", "resource")))),
            ),
            _ => kept.push(res.clone()),
        }
    }
    if denied.is_empty() {
        return Gate::Pass(RequestKind::IncrementalAlterConfigs(r), None);
    }
    Gate::Pass(
        RequestKind::IncrementalAlterConfigs(r.with_resources(kept)),
        finish(move |resp| {
            if let ResponseKind::IncrementalAlterConfigs(resp) = resp {
                resp.responses.extend(denied);
            }
        }),
    )
}

/// AlterConfigs: as IncrementalAlterConfigs.
fn alter_configs(c: &Check<'_>, r: AlterConfigsRequest) -> Gate {
    let mut kept = Vec::new();
    let mut denied = Vec::new();
    for res in &r.resources {
        match config_resource(res.resource_type, &res.resource_name) {
            Some((t, name, e)) if !c.allowed(Operation::AlterConfigs, t, &name) => denied.push(
                alter_configs_response::AlterConfigsResourceResponse::default()
                    .with_resource_type(res.resource_type)
                    .with_resource_name(res.resource_name.clone())
                    .with_error_code(e)
                    .with_error_message(Some(s(denied_message("AlterConfigs", "resource")))),
            ),
            _ => kept.push(res.clone()),
        }
    }
    if denied.is_empty() {
        return Gate::Pass(RequestKind::AlterConfigs(r), None);
    }
    Gate::Pass(
        RequestKind::AlterConfigs(r.with_resources(kept)),
        finish(move |resp| {
            if let ResponseKind::AlterConfigs(resp) = resp {
                resp.responses.extend(denied);
            }
        }),
    )
}

/// FindCoordinator: DESCRIBE on the group (key type 0) or the transactional id (1).
fn find_coordinator(c: &Check<'_>, v: i16, r: FindCoordinatorRequest) -> Gate {
    let (resource_type, e) = match r.key_type {
        0 => (ResourceType::Group, code::GROUP_AUTHORIZATION_FAILED),
        1 => (
            ResourceType::TransactionalId,
            code::TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
        ),
        _ => return Gate::Pass(RequestKind::FindCoordinator(r), None),
    };
    if v < 4 {
        if c.allowed(Operation::Describe, resource_type, &r.key) {
            return Gate::Pass(RequestKind::FindCoordinator(r), None);
        }
        let mut resp = FindCoordinatorResponse::default()
            .with_error_code(e)
            .with_node_id(BrokerId(-1))
            .with_host(s(""))
            .with_port(-1);
        if v >= 1 {
            resp.error_message = Some(s(denied_message("Describe", "coordinator key")));
        }
        return answer(ResponseKind::FindCoordinator(resp));
    }
    let (kept, denied): (Vec<_>, Vec<_>) = r
        .coordinator_keys
        .iter()
        .cloned()
        .partition(|k| c.allowed(Operation::Describe, resource_type, k));
    if denied.is_empty() {
        return Gate::Pass(RequestKind::FindCoordinator(r), None);
    }
    Gate::Pass(
        RequestKind::FindCoordinator(r.with_coordinator_keys(kept)),
        finish(move |resp| {
            if let ResponseKind::FindCoordinator(resp) = resp {
                for key in denied {
                    resp.coordinators.push(
                        find_coordinator_response::Coordinator::default()
                            .with_key(key)
                            .with_node_id(BrokerId(-1))
                            .with_port(-1)
                            .with_error_code(e)
                            .with_error_message(Some(s(denied_message(
                                "Describe",
                                "coordinator key",
                            )))),
                    );
                }
            }
        }),
    )
}

/// OffsetCommit: READ on the group (else every partition GROUP_AUTHORIZATION_FAILED), READ on
/// each topic.
/// OffsetDelete (`handleOffsetDeleteRequest`): DELETE on the group, else
/// GROUP_AUTHORIZATION_FAILED for the whole request; READ on each topic, else
/// TOPIC_AUTHORIZATION_FAILED for its partitions, which are not deleted.
fn offset_delete(c: &Check<'_>, r: OffsetDeleteRequest) -> Gate {
    if !c.group(Operation::Delete, &r.group_id) {
        return answer(ResponseKind::OffsetDelete(
            OffsetDeleteResponse::default().with_error_code(code::GROUP_AUTHORIZATION_FAILED),
        ));
    }
    let (kept, denied): (Vec<_>, Vec<_>) = r
        .topics
        .iter()
        .cloned()
        .partition(|t| c.topic(Operation::Read, &t.name));
    if denied.is_empty() {
        return Gate::Pass(RequestKind::OffsetDelete(r), None);
    }
    Gate::Pass(
        RequestKind::OffsetDelete(r.with_topics(kept)),
        finish(move |resp| {
            if let ResponseKind::OffsetDelete(resp) = resp {
                if resp.error_code != 0 {
                    return;
                }
                for t in denied {
                    resp.topics.push(
                        offset_delete_response::OffsetDeleteResponseTopic::default()
                            .with_name(t.name)
                            .with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|p| {
                                        offset_delete_response::OffsetDeleteResponsePartition::default()
                                            .with_partition_index(p.partition_index)
                                            .with_error_code(code::TOPIC_AUTHORIZATION_FAILED)
                                    })
                                    .collect(),
                            ),
                    );
                }
            }
        }),
    )
}

fn offset_commit(c: &Check<'_>, r: OffsetCommitRequest) -> Gate {
    let result = |t: &offset_commit_request::OffsetCommitRequestTopic, e| {
        offset_commit_response::OffsetCommitResponseTopic::default()
            .with_name(t.name.clone())
            .with_partitions(
                t.partitions
                    .iter()
                    .map(|p| {
                        offset_commit_response::OffsetCommitResponsePartition::default()
                            .with_partition_index(p.partition_index)
                            .with_error_code(e)
                    })
                    .collect(),
            )
    };
    if !c.group(Operation::Read, &r.group_id) {
        return answer(ResponseKind::OffsetCommit(
            OffsetCommitResponse::default().with_topics(
                r.topics
                    .iter()
                    .map(|t| result(t, code::GROUP_AUTHORIZATION_FAILED))
                    .collect(),
            ),
        ));
    }
    let (kept, denied): (Vec<_>, Vec<_>) = r
        .topics
        .iter()
        .cloned()
        .partition(|t| c.topic(Operation::Read, &t.name));
    if denied.is_empty() {
        return Gate::Pass(RequestKind::OffsetCommit(r), None);
    }
    let denied: Vec<_> = denied
        .iter()
        .map(|t| result(t, code::TOPIC_AUTHORIZATION_FAILED))
        .collect();
    Gate::Pass(
        RequestKind::OffsetCommit(r.with_topics(kept)),
        finish(move |resp| {
            if let ResponseKind::OffsetCommit(resp) = resp {
                resp.topics.extend(denied);
            }
        }),
    )
}

/// OffsetFetch: DESCRIBE on the group (GROUP_AUTHORIZATION_FAILED); named topics without
/// DESCRIBE get TOPIC_AUTHORIZATION_FAILED; a fetch of all topics leaves them out.
fn offset_fetch(c: &Check<'_>, v: i16, r: OffsetFetchRequest) -> Gate {
    let snapshot = c.snapshot();
    let filter_all = move |topics: &mut Vec<offset_fetch_response::OffsetFetchResponseTopic>| {
        topics.retain(|t| snapshot.visible(Operation::Describe, ResourceType::Topic, &t.name));
    };
    if v >= 8 {
        let mut groups = Vec::new();
        let mut denied_groups = Vec::new();
        let mut denied_topics: Vec<(
            GroupId,
            Vec<offset_fetch_response::OffsetFetchResponseTopics>,
        )> = Vec::new();
        let mut all_topic_groups = Vec::new();
        for mut g in r.groups.iter().cloned() {
            if !c.group(Operation::Describe, &g.group_id) {
                denied_groups.push(g.group_id.clone());
                continue;
            }
            match &g.topics {
                None => all_topic_groups.push(g.group_id.clone()),
                Some(topics) => {
                    let (kept, denied): (Vec<_>, Vec<_>) = topics
                        .iter()
                        .cloned()
                        .partition(|t| c.topic(Operation::Describe, &t.name));
                    if !denied.is_empty() {
                        denied_topics.push((
                            g.group_id.clone(),
                            denied
                                .into_iter()
                                .map(|t| {
                                    offset_fetch_response::OffsetFetchResponseTopics::default()
                                        .with_name(t.name)
                                        .with_partitions(
                                            t.partition_indexes
                                                .iter()
                                                .map(|&p| {
                                                    offset_fetch_response::OffsetFetchResponsePartitions::default()
                                                        .with_partition_index(p)
                                                        .with_committed_offset(-1)
                                                        .with_error_code(code::TOPIC_AUTHORIZATION_FAILED)
                                                })
                                                .collect(),
                                        )
                                })
                                .collect(),
                        ));
                    }
                    g.topics = Some(kept);
                }
            }
            groups.push(g);
        }
        let snapshot = c.snapshot();
        return Gate::Pass(
            RequestKind::OffsetFetch(r.with_groups(groups)),
            finish(move |resp| {
                if let ResponseKind::OffsetFetch(resp) = resp {
                    for g in resp.groups.iter_mut() {
                        if all_topic_groups.contains(&g.group_id) {
                            g.topics.retain(|t| {
                                snapshot.visible(Operation::Describe, ResourceType::Topic, &t.name)
                            });
                        }
                        if let Some((_, topics)) =
                            denied_topics.iter().find(|(id, _)| *id == g.group_id)
                        {
                            g.topics.extend(topics.iter().cloned());
                        }
                    }
                    for id in denied_groups {
                        resp.groups.push(
                            offset_fetch_response::OffsetFetchResponseGroup::default()
                                .with_group_id(id)
                                .with_error_code(code::GROUP_AUTHORIZATION_FAILED),
                        );
                    }
                }
            }),
        );
    }
    if !c.group(Operation::Describe, &r.group_id) {
        let mut resp = OffsetFetchResponse::default();
        if v >= 2 {
            resp.error_code = code::GROUP_AUTHORIZATION_FAILED;
        }
        for t in r.topics.iter().flatten() {
            resp.topics.push(
                offset_fetch_response::OffsetFetchResponseTopic::default()
                    .with_name(t.name.clone())
                    .with_partitions(
                        t.partition_indexes
                            .iter()
                            .map(|&p| {
                                offset_fetch_response::OffsetFetchResponsePartition::default()
                                    .with_partition_index(p)
                                    .with_committed_offset(-1)
                                    .with_error_code(code::GROUP_AUTHORIZATION_FAILED)
                            })
                            .collect(),
                    ),
            );
        }
        return answer(ResponseKind::OffsetFetch(resp));
    }
    let Some(topics) = r.topics.clone() else {
        return Gate::Pass(
            RequestKind::OffsetFetch(r),
            finish(move |resp| {
                if let ResponseKind::OffsetFetch(resp) = resp {
                    filter_all(&mut resp.topics);
                }
            }),
        );
    };
    let (kept, denied): (Vec<_>, Vec<_>) = topics
        .into_iter()
        .partition(|t| c.topic(Operation::Describe, &t.name));
    if denied.is_empty() {
        return Gate::Pass(RequestKind::OffsetFetch(r), None);
    }
    Gate::Pass(
        RequestKind::OffsetFetch(r.with_topics(Some(kept))),
        finish(move |resp| {
            if let ResponseKind::OffsetFetch(resp) = resp {
                for t in denied {
                    resp.topics.push(
                        offset_fetch_response::OffsetFetchResponseTopic::default()
                            .with_name(t.name)
                            .with_partitions(
                                t.partition_indexes
                                    .iter()
                                    .map(|&p| {
                                        offset_fetch_response::OffsetFetchResponsePartition::default()
                                            .with_partition_index(p)
                                            .with_committed_offset(-1)
                                            .with_error_code(code::TOPIC_AUTHORIZATION_FAILED)
                                    })
                                    .collect(),
                            ),
                    );
                }
            }
        }),
    )
}
