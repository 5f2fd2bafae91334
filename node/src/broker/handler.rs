//! The broker's answers to Kafka requests: [`Handler`] for [`Broker`]. Every request is
//! authorised first (`broker::authz`); only what it lets through reaches `dispatch`.
//!
//! Per the wire layer's contract, work whose order matters (appending a Produce's batches)
//! happens in the synchronous part of `handle`; waiting (acks=all, fetch long polling) happens
//! in the returned future, which holds no lock and is cancel-safe.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use keel_core::batch::Batch;
use keel_core::controller::{
    AlterConfigOp, AlterOp, ControllerError, NewTopic, TopicId as CoreTopicId,
};
use keel_core::error_code::{self as code, ErrorCode};
use keel_core::log::LogError;
use keel_core::partition::{compression_allowed, AckStatus, Appended, ProduceError};
use keel_core::quota::QuotaKind;
use keel_core::{LeaderEpoch, Offset};

use super::authz::Gate;
use super::{wall_ms, Broker, PartitionHandle};
use crate::metrics::Outcome;
use crate::wire::{Handler, HandlerError, HandlerResult, RequestContext};

/// Config resource types (DescribeConfigs, AlterConfigs).
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

/// Bound on a fetch's wait, whatever the client asks.
const FETCH_WAIT_MAX: Duration = Duration::from_secs(30);

fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

fn topic_name(s: &str) -> TopicName {
    TopicName(str_bytes(s))
}

/// The first Fetch version that names topics by id instead of by name (KIP-516).
const FETCH_TOPIC_IDS_VERSION: i16 = 13;

/// The first Produce version that names topics by id instead of by name (KIP-516).
const PRODUCE_TOPIC_IDS_VERSION: i16 = 13;

fn uuid(id: CoreTopicId) -> uuid::Uuid {
    uuid::Uuid::from_bytes(id.0)
}

impl Handler for Broker {
    fn handle(
        self: Arc<Self>,
        ctx: RequestContext,
        request: RequestKind,
    ) -> impl Future<Output = HandlerResult> + Send + 'static {
        // Topic ids named in place of names (Fetch v13+) are resolved first, so that
        // authorisation and the handlers see names; then authorisation (broker::authz): what it
        // denies never reaches `dispatch`.
        let request = self.resolve_topic_ids(&ctx, request);
        let started = std::time::Instant::now();
        let (api, version, broker) = (ctx.api_key, ctx.api_version, self.clone());
        let (inner, finish, answered): (
            std::pin::Pin<Box<dyn Future<Output = HandlerResult> + Send>>,
            _,
            _,
        ) = match self.gate(&ctx, request) {
            Gate::Pass(request, finish) => (Box::pin(self.dispatch(ctx, request)), finish, false),
            Gate::Answer(result) => (Box::pin(std::future::ready(result)), None, true),
            Gate::Later(future) => (future, None, true),
        };
        async move {
            let result = inner.await;
            if answered {
                let outcome = match &result {
                    Ok(Some(r)) if !has_error(r) => Outcome::Ok,
                    _ => Outcome::Error,
                };
                broker
                    .metrics()
                    .record_request(api, started.elapsed(), outcome);
            }
            let result = match finish {
                Some(finish) => finish(result),
                None => result,
            };
            match result {
                Ok(Some(ResponseKind::Produce(r))) => Ok(Some(ResponseKind::Produce(
                    fit_produce_response(version, r),
                ))),
                other => other,
            }
        }
    }
}

/// A Produce response names each topic by name below v13 and by id from v13 (KIP-516); the
/// answer is built with both where both are known, and kafka-protocol refuses to encode the
/// field the version lacks.
fn fit_produce_response(version: i16, mut response: ProduceResponse) -> ProduceResponse {
    for t in &mut response.responses {
        if version >= PRODUCE_TOPIC_IDS_VERSION {
            t.name = TopicName::default();
        } else {
            t.topic_id = uuid::Uuid::nil();
        }
    }
    response
}

impl Broker {
    /// Handles an authorised request.
    fn dispatch(
        self: Arc<Self>,
        ctx: RequestContext,
        request: RequestKind,
    ) -> impl Future<Output = HandlerResult> + Send + 'static {
        // Synchronous part: produces append here, in request order.
        enum Next {
            Ready(ResponseKind),
            NoResponse,
            /// With the request's record bytes, for the client's quota.
            Produce((ProduceWait, u64)),
            Fetch(FetchRequest),
            /// Answered after the controller committed a command.
            Later(std::pin::Pin<Box<dyn Future<Output = ResponseKind> + Send>>),
            /// An API the wire layer let through but the broker does not answer.
            NotServed,
        }
        let next = match request {
            RequestKind::Produce(r) => {
                let bytes: u64 = r
                    .topic_data
                    .iter()
                    .flat_map(|t| &t.partition_data)
                    .map(|p| p.records.as_ref().map_or(0, |b| b.len() as u64))
                    .sum();
                match self.produce(&ctx, r) {
                    None => {
                        // acks=0 gets no answer to carry a throttle; its bytes still count.
                        self.quota_throttle_ms(&ctx, QuotaKind::Produce, bytes);
                        Next::NoResponse
                    }
                    Some(wait) => Next::Produce((wait, bytes)),
                }
            }
            RequestKind::Fetch(r) => Next::Fetch(r),
            RequestKind::Metadata(r) => {
                let (b, v, l) = (self.clone(), ctx.api_version, ctx.listener.clone());
                Next::Later(Box::pin(async move {
                    ResponseKind::Metadata(b.metadata(v, r, &l).await)
                }))
            }
            RequestKind::ListOffsets(r) => Next::Ready(ResponseKind::ListOffsets(
                self.list_offsets(ctx.api_version, r),
            )),
            RequestKind::OffsetForLeaderEpoch(r) => Next::Ready(
                ResponseKind::OffsetForLeaderEpoch(self.offset_for_leader_epoch(r)),
            ),
            RequestKind::DeleteRecords(r) => {
                Next::Ready(ResponseKind::DeleteRecords(self.delete_records(r)))
            }
            RequestKind::InitProducerId(r) if r.transactional_id.is_some() => {
                let (b, v) = (self.clone(), ctx.api_version);
                Next::Later(Box::pin(async move {
                    ResponseKind::InitProducerId(b.init_transactional_producer(v, r).await)
                }))
            }
            RequestKind::InitProducerId(r) => {
                let b = self.clone();
                Next::Later(Box::pin(async move {
                    ResponseKind::InitProducerId(b.init_producer_id(r).await)
                }))
            }
            RequestKind::AddPartitionsToTxn(r) => Next::Later(self.start_add_partitions(&ctx, r)),
            RequestKind::AddOffsetsToTxn(r) => Next::Later(self.start_add_offsets(&ctx, r)),
            RequestKind::TxnOffsetCommit(r) => Next::Later(self.start_txn_offset_commit(&ctx, r)),
            RequestKind::EndTxn(r) => Next::Later(self.start_end_txn(&ctx, r)),
            RequestKind::DescribeTransactions(r) => Next::Ready(
                ResponseKind::DescribeTransactions(self.describe_transactions(r)),
            ),
            RequestKind::ListTransactions(r) => Next::Ready(ResponseKind::ListTransactions(
                self.list_transactions(ctx.api_version, r),
            )),
            RequestKind::DescribeProducers(r) => {
                Next::Ready(ResponseKind::DescribeProducers(self.describe_producers(r)))
            }
            RequestKind::CreateTopics(r) => {
                let (b, v) = (self.clone(), ctx.api_version);
                Next::Later(Box::pin(async move {
                    ResponseKind::CreateTopics(b.create_topics(v, r).await)
                }))
            }
            RequestKind::DeleteTopics(r) => {
                let (b, v) = (self.clone(), ctx.api_version);
                Next::Later(Box::pin(async move {
                    ResponseKind::DeleteTopics(b.delete_topics(v, r).await)
                }))
            }
            RequestKind::CreatePartitions(r) => {
                let b = self.clone();
                Next::Later(Box::pin(async move {
                    ResponseKind::CreatePartitions(b.create_partitions(r).await)
                }))
            }
            RequestKind::ElectLeaders(r) => {
                let (b, v) = (self.clone(), ctx.api_version);
                Next::Later(Box::pin(async move {
                    ResponseKind::ElectLeaders(b.elect_leaders(v, r).await)
                }))
            }
            RequestKind::AlterPartitionReassignments(r) => {
                let (b, v) = (self.clone(), ctx.api_version);
                Next::Later(Box::pin(async move {
                    ResponseKind::AlterPartitionReassignments(
                        b.alter_partition_reassignments(v, r).await,
                    )
                }))
            }
            RequestKind::UnregisterBroker(r) => {
                let b = self.clone();
                Next::Later(Box::pin(async move {
                    ResponseKind::UnregisterBroker(b.unregister_broker(r).await)
                }))
            }
            RequestKind::ListPartitionReassignments(r) => Next::Ready(
                ResponseKind::ListPartitionReassignments(self.list_partition_reassignments(r)),
            ),
            RequestKind::DescribeConfigs(r) => Next::Ready(ResponseKind::DescribeConfigs(
                self.describe_configs(ctx.api_version, r),
            )),
            RequestKind::IncrementalAlterConfigs(r) => {
                let b = self.clone();
                Next::Later(Box::pin(async move {
                    ResponseKind::IncrementalAlterConfigs(b.incremental_alter_configs(r).await)
                }))
            }
            RequestKind::AlterConfigs(r) => {
                let b = self.clone();
                Next::Later(Box::pin(async move {
                    ResponseKind::AlterConfigs(b.alter_configs(r).await)
                }))
            }
            RequestKind::FindCoordinator(r) => {
                let (b, v, l) = (self.clone(), ctx.api_version, ctx.listener.clone());
                Next::Later(Box::pin(async move {
                    let mut response = b.clone().find_coordinator(v, r).await;
                    b.coordinators_on_listener(&l, v, &mut response);
                    ResponseKind::FindCoordinator(response)
                }))
            }
            RequestKind::JoinGroup(r) => Next::Later(self.start_join_group(&ctx, r)),
            RequestKind::SyncGroup(r) => Next::Later(self.start_sync_group(&ctx, r)),
            RequestKind::Heartbeat(r) => Next::Ready(ResponseKind::Heartbeat(self.heartbeat(r))),
            RequestKind::LeaveGroup(r) => Next::Ready(ResponseKind::LeaveGroup(
                self.leave_group(ctx.api_version, r),
            )),
            RequestKind::OffsetCommit(r) => {
                Next::Later(self.start_offset_commit(ctx.api_version, r))
            }
            RequestKind::OffsetFetch(r) => Next::Ready(ResponseKind::OffsetFetch(
                self.offset_fetch(ctx.api_version, r),
            )),
            RequestKind::DescribeGroups(r) => Next::Ready(ResponseKind::DescribeGroups(
                self.describe_groups(ctx.api_version, r),
            )),
            RequestKind::ListGroups(r) => Next::Ready(ResponseKind::ListGroups(
                self.list_groups(ctx.api_version, r),
            )),
            RequestKind::DeleteGroups(r) => {
                Next::Ready(ResponseKind::DeleteGroups(self.delete_groups(r)))
            }
            RequestKind::OffsetDelete(r) => {
                Next::Ready(ResponseKind::OffsetDelete(self.offset_delete(r)))
            }
            RequestKind::DescribeCluster(r) => Next::Ready(ResponseKind::DescribeCluster(
                self.describe_cluster(&ctx.listener, r),
            )),
            RequestKind::DescribeTopicPartitions(r) => Next::Ready(
                ResponseKind::DescribeTopicPartitions(self.describe_topic_partitions(r)),
            ),
            RequestKind::DescribeQuorum(r) => {
                let (b, v) = (self.clone(), ctx.api_version);
                Next::Later(Box::pin(async move {
                    ResponseKind::DescribeQuorum(b.describe_quorum(v, r).await)
                }))
            }
            RequestKind::DescribeLogDirs(r) => Next::Ready(ResponseKind::DescribeLogDirs(
                self.describe_log_dirs(ctx.api_version, r),
            )),
            RequestKind::SaslHandshake(_) => {
                let mut r = SaslHandshakeResponse::default();
                r.error_code = code::UNSUPPORTED_SASL_MECHANISM;
                Next::Ready(ResponseKind::SaslHandshake(r))
            }
            RequestKind::SaslAuthenticate(_) => {
                let mut r = SaslAuthenticateResponse::default();
                r.error_code = code::UNSUPPORTED_SASL_MECHANISM;
                r.error_message = Some(str_bytes("keel does not support SASL yet"));
                Next::Ready(ResponseKind::SaslAuthenticate(r))
            }
            _ => Next::NotServed,
        };
        let broker = self.clone();
        let started = std::time::Instant::now();
        async move {
            let result = match next {
                Next::NotServed => Err(HandlerError::new(format!(
                    "{:?} is not served by this broker",
                    ctx.api_key
                ))),
                Next::Ready(r) => Ok(Some(r)),
                Next::Later(f) => Ok(Some(f.await)),
                Next::NoResponse => Ok(None),
                Next::Produce((wait, bytes)) => {
                    let mut response = wait.finish().await;
                    // KIP-13: the bytes count whatever the outcome; v0 has no throttle field.
                    let throttle = broker.quota_throttle_ms(&ctx, QuotaKind::Produce, bytes);
                    if ctx.api_version >= 1 {
                        response.throttle_time_ms = throttle;
                    }
                    Ok(Some(ResponseKind::Produce(response)))
                }
                Next::Fetch(r) => {
                    let mut response = broker.fetch(&ctx, r).await;
                    let bytes: usize = response
                        .responses
                        .iter()
                        .flat_map(|t| &t.partitions)
                        .map(|p| p.records.as_ref().map_or(0, Bytes::len))
                        .sum();
                    broker.metrics().add_bytes_out(bytes as u64);
                    let throttle = broker.quota_throttle_ms(&ctx, QuotaKind::Fetch, bytes as u64);
                    if ctx.api_version >= 1 {
                        response.throttle_time_ms = throttle;
                    }
                    Ok(Some(ResponseKind::Fetch(response)))
                }
            };
            let outcome = match &result {
                Ok(Some(r)) if !has_error(r) => Outcome::Ok,
                Ok(None) => Outcome::Ok,
                _ => Outcome::Error,
            };
            broker
                .metrics()
                .record_request(ctx.api_key, started.elapsed(), outcome);
            result
        }
    }
}

/// Whether a response carries an error code for the request or any of its parts.
fn has_error(response: &ResponseKind) -> bool {
    if let Some(error) = super::txn_handler::has_txn_error(response) {
        return error;
    }
    match response {
        ResponseKind::Produce(r) => r
            .responses
            .iter()
            .flat_map(|t| &t.partition_responses)
            .any(|p| p.error_code != 0),
        ResponseKind::Fetch(r) => {
            r.error_code != 0
                || r.responses
                    .iter()
                    .flat_map(|t| &t.partitions)
                    .any(|p| p.error_code != 0)
        }
        ResponseKind::Metadata(r) => r.topics.iter().any(|t| t.error_code != 0),
        ResponseKind::CreateTopics(r) => r.topics.iter().any(|t| t.error_code != 0),
        ResponseKind::DeleteTopics(r) => r.responses.iter().any(|t| t.error_code != 0),
        ResponseKind::InitProducerId(r) => r.error_code != 0,
        ResponseKind::FindCoordinator(r) => {
            r.error_code != 0 || r.coordinators.iter().any(|c| c.error_code != 0)
        }
        ResponseKind::JoinGroup(r) => r.error_code != 0,
        ResponseKind::SyncGroup(r) => r.error_code != 0,
        ResponseKind::Heartbeat(r) => r.error_code != 0,
        ResponseKind::LeaveGroup(r) => r.error_code != 0,
        ResponseKind::OffsetCommit(r) => r
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .any(|p| p.error_code != 0),
        ResponseKind::OffsetFetch(r) => {
            r.error_code != 0 || r.groups.iter().any(|g| g.error_code != 0)
        }
        ResponseKind::SaslHandshake(_) | ResponseKind::SaslAuthenticate(_) => true,
        _ => false,
    }
}

/// A produce whose batches were appended; answers when its acks are satisfied.
struct ProduceWait {
    response: ProduceResponse,
    /// (topic index, partition index, partition, the append) awaiting the high watermark.
    waits: Vec<(usize, usize, Arc<PartitionHandle>, Appended)>,
    timeout: Duration,
    version: i16,
}

impl ProduceWait {
    async fn finish(mut self) -> ProduceResponse {
        let deadline = tokio::time::Instant::now() + self.timeout;
        for (t, p, partition, appended) in self.waits.drain(..) {
            // Answered once the exposed high watermark covers the write (read-after-ack):
            // woken by its moves and by role changes.
            let mut committed = partition.subscribe();
            let status = loop {
                committed.borrow_and_update();
                let status = partition
                    .with(|r| r.produce_status(appended.leader_epoch, appended.last_offset));
                if status != AckStatus::Waiting {
                    break status;
                }
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if tokio::time::timeout(left, committed.changed())
                    .await
                    .is_err()
                {
                    break AckStatus::Failed(code::REQUEST_TIMED_OUT);
                }
            };
            let code = match status {
                AckStatus::Acked | AckStatus::Waiting => continue,
                AckStatus::Failed(code) => code,
            };
            let r = &mut self.response.responses[t].partition_responses[p];
            r.error_code = code;
            if self.version >= 8 {
                r.error_message = Some(str_bytes(match code {
                    code::REQUEST_TIMED_OUT => "timed out waiting for the in-sync replicas",
                    code::NOT_ENOUGH_REPLICAS_AFTER_APPEND => {
                        "appended, but the in-sync replicas fell below min.insync.replicas"
                    }
                    _ => "leadership moved before the write was committed",
                }));
            }
        }
        self.response
    }
}

impl Broker {
    /// Appends every partition's batch now (in request order) and returns what to wait for;
    /// `None` for acks=0 (no response).
    fn produce(
        self: &Arc<Self>,
        ctx: &RequestContext,
        request: ProduceRequest,
    ) -> Option<ProduceWait> {
        let acks = request.acks;
        let now = wall_ms();
        let mut response = ProduceResponse::default();
        let mut waits = Vec::new();
        for (t, topic) in request.topic_data.into_iter().enumerate() {
            let mut topic_response = TopicProduceResponse::default();
            topic_response.name = topic.name.clone();
            topic_response.topic_id = topic.topic_id;
            // v13+: an id the metadata does not know was left without a name.
            let unknown_id =
                ctx.api_version >= PRODUCE_TOPIC_IDS_VERSION && topic.name.0.is_empty();
            for (p, data) in topic.partition_data.into_iter().enumerate() {
                let mut r = PartitionProduceResponse::default();
                r.index = data.index;
                r.base_offset = -1;
                r.log_append_time_ms = -1;
                r.log_start_offset = -1;
                let outcome = if !matches!(acks, -1..=1) {
                    Err((
                        code::INVALID_REQUIRED_ACKS,
                        format!("acks must be -1, 0 or 1, not {acks}"),
                    ))
                } else if unknown_id {
                    Err((
                        code::UNKNOWN_TOPIC_ID,
                        format!("no topic has id {}", topic.topic_id),
                    ))
                } else if let Some(id_bytes) = request
                    .transactional_id
                    .as_ref()
                    .map(|t| t.len())
                    .filter(|&n| n > keel_core::txn::TRANSACTIONAL_ID_BYTES_MAX)
                {
                    // Kafka cannot even parse such a request (its readers refuse any string
                    // over 32,767 bytes); keel refuses every partition of it.
                    Err((
                        code::INVALID_REQUEST,
                        format!(
                            "a transactional id of {id_bytes} bytes (at most {})",
                            keel_core::txn::TRANSACTIONAL_ID_BYTES_MAX
                        ),
                    ))
                } else {
                    let txn_id = request.transactional_id.as_ref().map(|t| t.as_str());
                    self.produce_partition(
                        ctx,
                        &topic.name.0,
                        data.index,
                        data.records,
                        acks,
                        now,
                        txn_id,
                    )
                };
                match outcome {
                    Ok((partition, appended, log_start)) => {
                        r.base_offset = appended.base_offset.0;
                        r.log_append_time_ms = appended.log_append_time_ms;
                        if ctx.api_version >= 5 {
                            r.log_start_offset = log_start.0;
                        }
                        if acks == -1 {
                            waits.push((t, p, partition, appended));
                        }
                    }
                    Err((code, message)) => {
                        r.error_code = code;
                        if ctx.api_version >= 8 {
                            r.error_message = Some(str_bytes(message));
                        } else {
                            tracing::debug!(topic = %topic.name.0, partition = data.index, code, "produce refused: {message}");
                        }
                    }
                }
                topic_response.partition_responses.push(r);
            }
            response.responses.push(topic_response);
        }
        if acks == 0 {
            return None;
        }
        let mut timeout = Duration::from_millis(request.timeout_ms.clamp(0, 300_000) as u64);
        if keel_core::planted::active(keel_core::planted::Bug::ShortProduceTimeout) {
            timeout = Duration::from_micros(request.timeout_ms.clamp(0, 300_000) as u64);
        }
        Some(ProduceWait {
            response,
            waits,
            timeout,
            version: ctx.api_version,
        })
    }

    #[allow(clippy::type_complexity, clippy::too_many_arguments)]
    fn produce_partition(
        &self,
        ctx: &RequestContext,
        topic: &str,
        index: i32,
        records: Option<Bytes>,
        acks: i16,
        now: i64,
        transactional_id: Option<&str>,
    ) -> Result<(Arc<PartitionHandle>, Appended, Offset), (ErrorCode, String)> {
        if topic == super::OFFSETS_TOPIC || topic == super::TRANSACTION_STATE_TOPIC {
            return Err((
                code::INVALID_TOPIC_EXCEPTION,
                format!("{topic} is internal: only the group coordinator appends to it"),
            ));
        }
        let partition = self
            .leader(topic, index)
            .map_err(|code| (code, format!("this broker does not lead {topic}-{index}")))?;
        let records = records.unwrap_or_default();
        self.metrics().add_bytes_in(records.len() as u64);
        // Produce v3+: exactly one batch per partition.
        let batch = match Batch::parse_prefix(&records) {
            Ok(Some(batch)) if batch.size() == records.len() => batch,
            Ok(Some(_)) => {
                return Err((
                    code::INVALID_RECORD,
                    "a produce must carry exactly one record batch per partition".into(),
                ))
            }
            Ok(None) => {
                return Err((
                    code::CORRUPT_MESSAGE,
                    "records are not a whole record batch v2".into(),
                ))
            }
            Err(e) => return Err((code::CORRUPT_MESSAGE, e.to_string())),
        };
        if batch.is_transactional() {
            // From v12 (transaction version 2) this adds the partition to the transaction.
            self.prepare_txn_append(ctx.api_version, transactional_id, topic, &partition, &batch)?;
        }
        let (txn_pid, txn_epoch, txn_seq) = (
            batch.producer_id().0,
            batch.producer_epoch(),
            batch.base_sequence(),
        );
        let transactional = batch.is_transactional();
        if let Ok(codec) = batch.compression() {
            if !compression_allowed(codec, ctx.api_version) {
                return Err((
                    code::UNSUPPORTED_COMPRESSION_TYPE,
                    format!("{} needs Produce v7 or later", codec.name()),
                ));
            }
        }
        // acks=all: NOT_ENOUGH_REPLICAS before appending, by the partition's own rule (ISR
        // smaller than min(min.insync.replicas, replicas)), under the same lock as the append.
        let result = partition.with(|r| {
            if acks == -1 {
                r.check_enough_replicas()?;
            }
            r.append(now, batch).map(|a| (a, r.log().log_start()))
        });
        match result {
            Ok((appended, log_start)) => {
                if transactional {
                    tracing::debug!(
                        topic,
                        partition = index,
                        producer_id = txn_pid,
                        producer_epoch = txn_epoch,
                        base_sequence = txn_seq,
                        offset = appended.base_offset.0,
                        duplicate = appended.duplicate,
                        "transactional batch appended"
                    );
                }
                if !appended.duplicate {
                    // Followers waiting in a fetch take the new batch now.
                    partition.touch();
                    partition.drain_effects();
                }
                Ok((partition, appended, log_start))
            }
            Err(e) => {
                if let ProduceError::Storage(e) = &e {
                    tracing::error!(topic, partition = index, "append failed: {e}");
                }
                Err((e.code(), e.to_string()))
            }
        }
    }

    /// Fetch: whole batches from the one containing the fetch offset, up to the high
    /// watermark; waits up to max_wait_ms for min_bytes.
    async fn fetch(self: &Arc<Self>, ctx: &RequestContext, request: FetchRequest) -> FetchResponse {
        let wait = Duration::from_millis(request.max_wait_ms.max(0) as u64).min(FETCH_WAIT_MAX);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let (response, bytes, watched) = self.fetch_once(ctx.api_version, &request);
            let satisfied =
                bytes >= request.min_bytes.max(1) as usize || bytes > 0 && request.min_bytes <= 0;
            if satisfied
                || wait.is_zero()
                || watched.is_empty()
                || tokio::time::Instant::now() >= deadline
            {
                return response;
            }
            // Wait for any partition's high watermark to move, or the deadline.
            let mut waiters: Vec<_> = watched.iter().map(|p| p.subscribe()).collect();
            let changed = futures_any(waiters.iter_mut().map(|w| Box::pin(w.changed())));
            // `timeout`, not `timeout_at`: madsim's time module has only the former.
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if tokio::time::timeout(left, changed).await.is_err() {
                return self.fetch_once(ctx.api_version, &request).0;
            }
        }
    }

    /// Fetch v13+ and Produce v13+ name topics by id only (KIP-516): fills in the name of
    /// every id this broker's metadata knows. An unknown id keeps an empty name, which
    /// [`Broker::fetch`] and [`Broker::produce`] answer with UNKNOWN_TOPIC_ID, as Kafka does.
    fn resolve_topic_ids(&self, ctx: &RequestContext, request: RequestKind) -> RequestKind {
        match request {
            RequestKind::Fetch(mut r) if ctx.api_version >= FETCH_TOPIC_IDS_VERSION => {
                self.with_metadata(|m| {
                    for t in &mut r.topics {
                        let id = CoreTopicId(*t.topic_id.as_bytes());
                        t.topic = m
                            .topic_by_id(id)
                            .map_or_else(|| topic_name(""), |topic| topic_name(&topic.name));
                    }
                });
                RequestKind::Fetch(r)
            }
            RequestKind::Produce(mut r) if ctx.api_version >= PRODUCE_TOPIC_IDS_VERSION => {
                self.with_metadata(|m| {
                    for t in &mut r.topic_data {
                        let id = CoreTopicId(*t.topic_id.as_bytes());
                        t.name = m
                            .topic_by_id(id)
                            .map_or_else(|| topic_name(""), |topic| topic_name(&topic.name));
                    }
                });
                RequestKind::Produce(r)
            }
            other => other,
        }
    }

    fn fetch_once(
        &self,
        version: i16,
        request: &FetchRequest,
    ) -> (FetchResponse, usize, Vec<Arc<PartitionHandle>>) {
        let mut response = FetchResponse::default();
        let mut remaining = request.max_bytes.max(0) as usize;
        let mut total = 0usize;
        let mut watched = Vec::new();
        for topic in &request.topics {
            let mut topic_response = FetchableTopicResponse::default();
            topic_response.topic = topic.topic.clone();
            topic_response.topic_id = topic.topic_id;
            let name = topic.topic.0.to_string();
            for fp in &topic.partitions {
                let mut pd = PartitionData::default();
                pd.partition_index = fp.partition;
                pd.high_watermark = -1;
                pd.last_stable_offset = -1;
                pd.log_start_offset = -1;
                pd.preferred_read_replica = BrokerId(-1);
                pd.records = Some(Bytes::new());
                if version >= 4 {
                    pd.aborted_transactions = Some(Vec::new());
                }
                let leader = if version >= FETCH_TOPIC_IDS_VERSION && name.is_empty() {
                    Err(code::UNKNOWN_TOPIC_ID)
                } else {
                    self.leader(&name, fp.partition)
                };
                match leader {
                    Err(code) => pd.error_code = code,
                    Ok(p) => {
                        let max = (fp.partition_max_bytes.max(0) as usize).min(remaining);
                        let first = total == 0;
                        let read_committed = request.isolation_level == 1;
                        let result = p.with(|r| {
                            r.check_client_epoch(fp.current_leader_epoch)?;
                            let hw = r.high_watermark();
                            let lso = r.last_stable_offset();
                            let upper = if read_committed { lso } else { hw };
                            let log = r.log();
                            let read = log
                                .read_records(
                                    Offset(fp.fetch_offset),
                                    if first { max.max(1) } else { max },
                                    upper,
                                )
                                .map(|(records, _)| {
                                    if !first && records.len() > max {
                                        Bytes::new()
                                    } else {
                                        records
                                    }
                                });
                            let aborted = if read_committed {
                                r.aborted_txns(Offset(fp.fetch_offset), upper)
                            } else {
                                Vec::new()
                            };
                            Ok::<_, ErrorCode>((read, hw, log.log_start(), lso, aborted))
                        });
                        match result {
                            Err(code) => pd.error_code = code,
                            Ok((read, hw, log_start, lso, aborted)) => {
                                pd.high_watermark = hw.0;
                                pd.last_stable_offset = lso.0;
                                if version >= 4 {
                                    pd.aborted_transactions = Some(
                                        aborted
                                            .into_iter()
                                            .map(|a| {
                                                fetch_response::AbortedTransaction::default()
                                                    .with_producer_id(ProducerId(a.producer_id.0))
                                                    .with_first_offset(a.first_offset.0)
                                            })
                                            .collect(),
                                    );
                                }
                                if version >= 5 {
                                    pd.log_start_offset = log_start.0;
                                }
                                match read {
                                    Ok(bytes) => {
                                        total += bytes.len();
                                        remaining = remaining.saturating_sub(bytes.len());
                                        pd.records = Some(bytes);
                                    }
                                    Err(LogError::OffsetOutOfRange { .. }) => {
                                        pd.error_code = code::OFFSET_OUT_OF_RANGE
                                    }
                                    Err(e) => {
                                        tracing::error!(topic = %name, partition = fp.partition, "read failed: {e}");
                                        p.read_failed(&e);
                                        pd.error_code = code::KAFKA_STORAGE_ERROR;
                                    }
                                }
                            }
                        }
                        watched.push(p);
                    }
                }
                topic_response.partitions.push(pd);
            }
            response.responses.push(topic_response);
        }
        (response, total, watched)
    }

    pub(super) fn broker_list(&self) -> Vec<(i32, String, i32)> {
        self.with_metadata(|m| {
            m.brokers()
                .filter(|b| !b.fenced)
                .filter_map(|b| {
                    b.endpoints
                        .first()
                        .map(|e| (b.id.0, e.host.clone(), e.port))
                })
                .collect()
        })
    }

    /// The unfenced brokers' endpoints on the listener called `listener` (Kafka answers with
    /// the endpoints of the listener a request came in on); a broker without that listener is
    /// left out.
    pub(super) fn broker_list_on(&self, listener: &str) -> Vec<(i32, String, i32)> {
        self.brokers_on(listener, false)
    }

    /// The (id, host, port) of each broker with an endpoint on `listener` that is fenced (or
    /// not, with `fenced` false).
    fn brokers_on(&self, listener: &str, fenced: bool) -> Vec<(i32, String, i32)> {
        self.with_metadata(|m| {
            m.brokers()
                .filter(|b| b.fenced == fenced)
                .filter_map(|b| {
                    b.endpoints
                        .iter()
                        .find(|e| e.name == listener)
                        .map(|e| (b.id.0, e.host.clone(), e.port))
                })
                .collect()
        })
    }

    /// Rewrites the coordinators' addresses of a FindCoordinator answer to their endpoints on
    /// `listener`; a coordinator without that listener becomes COORDINATOR_NOT_AVAILABLE.
    fn coordinators_on_listener(
        &self,
        listener: &str,
        version: i16,
        response: &mut FindCoordinatorResponse,
    ) {
        let brokers = self.broker_list_on(listener);
        let on_listener = |node: i32| brokers.iter().find(|(id, _, _)| *id == node);
        let unavailable = || {
            (
                code::COORDINATOR_NOT_AVAILABLE,
                Some(str_bytes(format!(
                    "the coordinator has no listener named {listener}"
                ))),
            )
        };
        for c in &mut response.coordinators {
            if c.error_code == 0 {
                match on_listener(c.node_id.0) {
                    Some((_, host, port)) => (c.host, c.port) = (str_bytes(host.clone()), *port),
                    None => {
                        (c.error_code, c.error_message) = unavailable();
                        (c.node_id, c.port) = (BrokerId(-1), -1);
                    }
                }
            }
        }
        // v4 answers in `coordinators` only; v0-3 in the top-level fields only.
        if version < 4 && response.error_code == 0 && response.node_id.0 >= 0 {
            match on_listener(response.node_id.0) {
                Some((_, host, port)) => {
                    (response.host, response.port) = (str_bytes(host.clone()), *port)
                }
                None => {
                    let (error, message) = unavailable();
                    response.error_code = error;
                    response.node_id = BrokerId(-1);
                    response.port = -1;
                    if version >= 1 {
                        response.error_message = message;
                    }
                }
            }
        }
    }

    /// The controller id a client is told, among the brokers `listed` to it (see
    /// [`controller_among`]).
    fn controller_for_clients(&self, listed: &[(i32, bool)]) -> i32 {
        controller_among(self.controller_id(), self.node_id(), listed)
    }

    async fn metadata(&self, v: i16, request: MetadataRequest, listener: &str) -> MetadataResponse {
        let mut response = MetadataResponse::default();
        for (id, host, port) in self.broker_list_on(listener) {
            let mut b = MetadataResponseBroker::default();
            b.node_id = BrokerId(id);
            b.host = str_bytes(host);
            b.port = port;
            response.brokers.push(b);
        }
        if v >= 2 {
            response.cluster_id = Some(str_bytes(self.cluster_id()));
        }
        if v >= 1 {
            let listed: Vec<(i32, bool)> = response
                .brokers
                .iter()
                .map(|b| (b.node_id.0, false))
                .collect();
            response.controller_id = BrokerId(self.controller_for_clients(&listed));
        }
        let names: Option<Vec<(Option<String>, uuid::Uuid)>> = request.topics.map(|ts| {
            ts.into_iter()
                .map(|t| (t.name.map(|n| n.0.to_string()), t.topic_id))
                .collect()
        });
        let wanted: Vec<(String, bool)> = match names {
            None => self.with_metadata(|m| m.topics().map(|t| (t.name.clone(), true)).collect()),
            Some(list) => list
                .into_iter()
                .map(|(name, id)| match name {
                    Some(n) => (n, false),
                    None => (
                        self.with_metadata(|m| {
                            m.topic_by_id(CoreTopicId(*id.as_bytes()))
                                .map(|t| t.name.clone())
                        })
                        .unwrap_or_default(),
                        false,
                    ),
                })
                .collect(),
        };
        let allow_create = request.allow_auto_topic_creation && self.settings().auto_create_topics;
        for (name, _) in wanted {
            let exists = self.with_metadata(|m| m.topic(&name).is_some());
            let mut error = 0;
            if !exists && !name.is_empty() {
                if allow_create {
                    if let Err(e) = self
                        .create_topic_now(&name, -1, -1, BTreeMap::new(), false)
                        .await
                    {
                        if !matches!(e, ControllerError::TopicAlreadyExists(_)) {
                            error = e.code();
                        }
                    }
                } else {
                    error = code::UNKNOWN_TOPIC_OR_PARTITION;
                }
            }
            let mut t = MetadataResponseTopic::default();
            t.name = Some(topic_name(&name));
            t.is_internal = super::is_internal_topic(&name);
            let found = self.with_metadata(|m| m.topic(&name).cloned());
            match found {
                Some(topic) if error == 0 => {
                    if v >= 10 {
                        t.topic_id = uuid(topic.id);
                    }
                    for (i, p) in topic.partitions.iter().enumerate() {
                        let mut mp = MetadataResponsePartition::default();
                        mp.partition_index = i as i32;
                        mp.leader_id = BrokerId(p.leader.0);
                        if p.leader == keel_core::controller::BrokerId::NONE {
                            mp.error_code = code::LEADER_NOT_AVAILABLE;
                        }
                        if v >= 7 {
                            mp.leader_epoch = p.leader_epoch.0;
                        }
                        mp.replica_nodes = p.replicas.iter().map(|b| BrokerId(b.0)).collect();
                        mp.isr_nodes = p.isr.iter().map(|b| BrokerId(b.0)).collect();
                        t.partitions.push(mp);
                    }
                }
                _ => {
                    t.error_code = if error != 0 {
                        error
                    } else if name.is_empty() {
                        code::UNKNOWN_TOPIC_ID
                    } else if keel_core::controller::validate_topic_name(&name).is_err() {
                        code::INVALID_TOPIC_EXCEPTION
                    } else {
                        code::UNKNOWN_TOPIC_OR_PARTITION
                    };
                }
            }
            response.topics.push(t);
        }
        response
    }

    /// Creates a topic through the controller; -1 means the broker default.
    pub(super) async fn create_topic_now(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        configs: BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<keel_core::controller::Topic, ControllerError> {
        // Broker-level topic settings, only where they differ from Kafka's topic defaults (so
        // DescribeConfigs still reports the rest as defaults); the request's own settings win.
        let mut configs_with_defaults: BTreeMap<String, String> = self
            .settings()
            .topic_config_defaults
            .iter()
            .filter(|(k, v)| {
                keel_core::controller::TopicConfig::default_value(k).as_ref() != Some(*v)
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        configs_with_defaults.extend(configs);
        let configs = configs_with_defaults;
        let new = NewTopic {
            name: name.to_string(),
            partitions,
            replication_factor,
            configs,
            topic_id: self.new_topic_id(),
        };
        let defaults = self.settings().topic_defaults;
        self.command(validate_only, |m| {
            let live = m.live_brokers();
            let records = m.create_topic(&new, &live, &defaults)?;
            let mut preview = m.clone();
            for r in &records {
                let _ = preview.apply(r);
            }
            let topic = preview
                .topic(name)
                .cloned()
                .ok_or_else(|| ControllerError::UnknownServerError("topic vanished".into()))?;
            Ok((topic, records))
        })
        .await
    }

    fn list_offsets(&self, version: i16, request: ListOffsetsRequest) -> ListOffsetsResponse {
        let mut response = ListOffsetsResponse::default();
        for topic in request.topics {
            let mut tr = ListOffsetsTopicResponse::default();
            tr.name = topic.name.clone();
            let name = topic.name.0.to_string();
            for lp in topic.partitions {
                let mut pr = ListOffsetsPartitionResponse::default();
                pr.partition_index = lp.partition_index;
                pr.timestamp = -1;
                pr.offset = -1;
                pr.leader_epoch = -1;
                match self.leader(&name, lp.partition_index) {
                    Err(code) => pr.error_code = code,
                    Ok(p) => {
                        let result = p.with(|r| {
                            r.check_client_epoch(lp.current_leader_epoch)?;
                            let epoch = r.leader_epoch().0;
                            let found = match lp.timestamp {
                                -1 if request.isolation_level == 1 => {
                                    Ok(Some((r.last_stable_offset(), -1)))
                                }
                                -1 => Ok(Some((r.high_watermark(), -1))),
                                // -4: the earliest local offset (KIP-405); with no tiered
                                // storage, the log start.
                                -2 | -4 => Ok(Some((r.log().log_start(), -1))),
                                -3 => r.log().max_timestamp(),
                                // -5: the latest tiered offset (KIP-1005): nothing is tiered.
                                -5 => Ok(Some((keel_core::Offset(-1), -1))),
                                ts => r
                                    .log()
                                    .offset_for_timestamp(ts)
                                    .map(|o| o.filter(|(off, _)| *off < r.high_watermark())),
                            };
                            Ok::<_, ErrorCode>((found, epoch))
                        });
                        match result {
                            Err(code) => pr.error_code = code,
                            Ok((Ok(Some((offset, ts))), epoch)) => {
                                pr.offset = offset.0;
                                pr.timestamp = ts;
                                if version >= 4 {
                                    pr.leader_epoch = epoch;
                                }
                            }
                            Ok((Ok(None), _)) => {}
                            Ok((Err(e), _)) => {
                                tracing::error!(topic = %name, "list offsets failed: {e}");
                                pr.error_code = code::KAFKA_STORAGE_ERROR;
                            }
                        }
                    }
                }
                tr.partitions.push(pr);
            }
            response.topics.push(tr);
        }
        response
    }

    fn offset_for_leader_epoch(
        &self,
        request: OffsetForLeaderEpochRequest,
    ) -> OffsetForLeaderEpochResponse {
        let mut response = OffsetForLeaderEpochResponse::default();
        for topic in request.topics {
            let mut tr = OffsetForLeaderTopicResult::default();
            tr.topic = topic.topic.clone();
            let name = topic.topic.0.to_string();
            for op in topic.partitions {
                let mut e = EpochEndOffset::default();
                e.partition = op.partition;
                e.leader_epoch = -1;
                e.end_offset = -1;
                match self.leader(&name, op.partition) {
                    Err(code) => e.error_code = code,
                    Ok(p) => match p.with(|r| {
                        r.check_client_epoch(op.current_leader_epoch)?;
                        r.end_offset_for_epoch(LeaderEpoch(op.leader_epoch))
                    }) {
                        Err(code) => e.error_code = code,
                        Ok(Some((epoch, end))) => {
                            e.leader_epoch = epoch.0;
                            e.end_offset = end.0;
                        }
                        Ok(None) => {}
                    },
                }
                tr.partitions.push(e);
            }
            response.topics.push(tr);
        }
        response
    }

    fn delete_records(&self, request: DeleteRecordsRequest) -> DeleteRecordsResponse {
        let mut response = DeleteRecordsResponse::default();
        for topic in request.topics {
            let mut tr = DeleteRecordsTopicResult::default();
            tr.name = topic.name.clone();
            let name = topic.name.0.to_string();
            for dp in topic.partitions {
                let mut pr = DeleteRecordsPartitionResult::default();
                pr.partition_index = dp.partition_index;
                pr.low_watermark = -1;
                match self.leader(&name, dp.partition_index) {
                    Err(code) => pr.error_code = code,
                    Ok(p) => match p.with(|r| r.delete_records(dp.offset)) {
                        Ok(start) => pr.low_watermark = start.0,
                        Err(ProduceError::InvalidRecord(_)) => {
                            pr.error_code = code::OFFSET_OUT_OF_RANGE
                        }
                        Err(e) => pr.error_code = e.code(),
                    },
                }
                tr.partitions.push(pr);
            }
            response.topics.push(tr);
        }
        response
    }

    async fn init_producer_id(&self, _request: InitProducerIdRequest) -> InitProducerIdResponse {
        let mut response = InitProducerIdResponse::default();
        response.producer_id = ProducerId(-1);
        response.producer_epoch = -1;
        match self.allocate_producer_id().await {
            Ok(id) => {
                response.producer_id = ProducerId(id.0);
                response.producer_epoch = 0;
            }
            Err(e) => response.error_code = e.code(),
        }
        response
    }

    async fn create_topics(&self, v: i16, request: CreateTopicsRequest) -> CreateTopicsResponse {
        let mut response = CreateTopicsResponse::default();
        for topic in request.topics {
            let mut tr = CreatableTopicResult::default();
            tr.name = topic.name.clone();
            tr.num_partitions = -1;
            tr.replication_factor = -1;
            let name = topic.name.0.to_string();
            let mut configs = BTreeMap::new();
            for c in &topic.configs {
                if let Some(v) = &c.value {
                    configs.insert(c.name.to_string(), v.to_string());
                }
            }
            let result = if !topic.assignments.is_empty() {
                Err(ControllerError::InvalidRequest(
                    "manual replica assignment is not supported".into(),
                ))
            } else {
                self.create_topic_now(
                    &name,
                    topic.num_partitions,
                    topic.replication_factor,
                    configs,
                    request.validate_only,
                )
                .await
            };
            match result {
                Ok(t) if v < 5 => drop(t),
                Ok(t) => {
                    if v >= 7 {
                        tr.topic_id = uuid(t.id);
                    }
                    tr.num_partitions = t.partitions.len() as i32;
                    tr.replication_factor =
                        t.partitions.first().map_or(0, |p| p.replicas.len() as i16);
                    tr.configs = Some(
                        t.config
                            .describe()
                            .into_iter()
                            .map(|e| {
                                let mut c = CreatableTopicConfigs::default();
                                c.name = str_bytes(e.name);
                                c.value = Some(str_bytes(e.value));
                                c.config_source = e.source.code();
                                c
                            })
                            .collect(),
                    );
                }
                Err(e) => {
                    tr.error_code = e.code();
                    tr.error_message = Some(str_bytes(e.to_string()));
                }
            }
            response.topics.push(tr);
        }
        response
    }

    async fn delete_topics(
        &self,
        version: i16,
        request: DeleteTopicsRequest,
    ) -> DeleteTopicsResponse {
        let mut response = DeleteTopicsResponse::default();
        let mut targets: Vec<(Option<String>, uuid::Uuid)> = request
            .topic_names
            .into_iter()
            .map(|n| (Some(n.0.to_string()), uuid::Uuid::nil()))
            .collect();
        targets.extend(
            request
                .topics
                .into_iter()
                .map(|t| (t.name.map(|n| n.0.to_string()), t.topic_id)),
        );
        for (name, id) in targets {
            let mut r = DeletableTopicResult::default();
            let result = self
                .command(false, |m| {
                    let records = match &name {
                        Some(n) => m.delete_topic(n)?,
                        None => m.delete_topic_by_id(CoreTopicId(*id.as_bytes()))?,
                    };
                    let resolved = match &name {
                        Some(n) => m.topic(n).map(|t| (t.name.clone(), t.id)),
                        None => m
                            .topic_by_id(CoreTopicId(*id.as_bytes()))
                            .map(|t| (t.name.clone(), t.id)),
                    };
                    Ok((resolved, records))
                })
                .await;
            r.name = Some(topic_name(name.as_deref().unwrap_or_default()));
            if version >= 6 {
                r.topic_id = id;
            }
            match result {
                Ok(Some((n, tid))) => {
                    r.name = Some(topic_name(&n));
                    if version >= 6 {
                        r.topic_id = uuid(tid);
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    r.error_code = e.code();
                    if version >= 5 {
                        r.error_message = Some(str_bytes(e.to_string()));
                    }
                }
            }
            response.responses.push(r);
        }
        response
    }

    async fn create_partitions(
        &self,
        request: CreatePartitionsRequest,
    ) -> CreatePartitionsResponse {
        let mut response = CreatePartitionsResponse::default();
        for topic in request.topics {
            let mut r = CreatePartitionsTopicResult::default();
            r.name = topic.name.clone();
            let name = topic.name.0.to_string();
            let result = if topic.assignments.is_some() {
                Err(ControllerError::InvalidRequest(
                    "manual replica assignment is not supported".into(),
                ))
            } else {
                self.command(request.validate_only, |m| {
                    let live = m.live_brokers();
                    Ok(((), m.create_partitions(&name, topic.count, &live)?))
                })
                .await
            };
            if let Err(e) = result {
                r.error_code = e.code();
                r.error_message = Some(str_bytes(e.to_string()));
            }
            response.results.push(r);
        }
        response
    }

    fn describe_configs(
        &self,
        version: i16,
        request: DescribeConfigsRequest,
    ) -> DescribeConfigsResponse {
        let mut response = DescribeConfigsResponse::default();
        for resource in request.resources {
            let mut result = DescribeConfigsResult::default();
            result.resource_type = resource.resource_type;
            result.resource_name = resource.resource_name.clone();
            let keys: Option<Vec<String>> = resource
                .configuration_keys
                .map(|ks| ks.iter().map(|k| k.to_string()).collect());
            let wanted = |name: &str| keys.as_ref().is_none_or(|ks| ks.iter().any(|k| k == name));
            match resource.resource_type {
                RESOURCE_TOPIC => {
                    let name = resource.resource_name.to_string();
                    match self.with_metadata(|m| m.topic_config(&name).cloned()) {
                        None => {
                            result.error_code = code::UNKNOWN_TOPIC_OR_PARTITION;
                            result.error_message = Some(str_bytes(format!("unknown topic {name}")));
                        }
                        Some(config) => {
                            for e in config.describe().into_iter().filter(|e| wanted(e.name)) {
                                let mut c = DescribeConfigsResourceResult::default();
                                c.name = str_bytes(e.name);
                                c.value = Some(str_bytes(e.value));
                                c.config_source = e.source.code();
                                if version >= 3 {
                                    c.config_type = e.config_type.code();
                                }
                                result.configs.push(c);
                            }
                        }
                    }
                }
                RESOURCE_BROKER => {
                    let s = self.settings();
                    let entries = [
                        ("node.id", s.node_id.to_string()),
                        (
                            "auto.create.topics.enable",
                            s.auto_create_topics.to_string(),
                        ),
                        ("num.partitions", s.topic_defaults.partitions.to_string()),
                        (
                            "default.replication.factor",
                            s.topic_defaults.replication_factor.to_string(),
                        ),
                        ("log.dirs", s.data_dir.display().to_string()),
                    ];
                    for (name, value) in entries.into_iter().filter(|(n, _)| wanted(n)) {
                        let mut c = DescribeConfigsResourceResult::default();
                        c.name = str_bytes(name);
                        c.value = Some(str_bytes(value));
                        c.read_only = true;
                        c.config_source = 4; // STATIC_BROKER_CONFIG
                        result.configs.push(c);
                    }
                    // The dynamic ones that are set: the broker's own (DYNAMIC_BROKER_CONFIG),
                    // else the cluster default's (DYNAMIC_DEFAULT_BROKER_CONFIG).
                    let resource_name = resource.resource_name.to_string();
                    let dynamic = self.with_metadata(|m| {
                        let own = m
                            .broker_configs(&resource_name)
                            .cloned()
                            .unwrap_or_default();
                        let default = m.broker_configs("").cloned().unwrap_or_default();
                        keel_core::controller::broker_config::KEYS
                            .iter()
                            .filter_map(|&k| match (own.get(k), default.get(k)) {
                                (Some(v), _) if !resource_name.is_empty() => {
                                    Some((k, v.clone(), 1))
                                }
                                (_, Some(v)) => Some((k, v.clone(), 5)),
                                _ => None,
                            })
                            .collect::<Vec<_>>()
                    });
                    for (name, value, source) in dynamic.into_iter().filter(|(n, ..)| wanted(n)) {
                        let mut c = DescribeConfigsResourceResult::default();
                        c.name = str_bytes(name);
                        c.value = Some(str_bytes(value));
                        c.config_source = source;
                        result.configs.push(c);
                    }
                }
                other => {
                    result.error_code = code::INVALID_REQUEST;
                    result.error_message =
                        Some(str_bytes(format!("resource type {other} is not supported")));
                }
            }
            response.results.push(result);
        }
        response
    }

    async fn alter_topic_configs(
        &self,
        resource_type: i8,
        name: &str,
        ops: Vec<AlterConfigOp>,
        validate_only: bool,
    ) -> Result<(), (ErrorCode, String)> {
        match resource_type {
            RESOURCE_TOPIC => self
                .command(validate_only, |m| {
                    Ok(((), m.incremental_alter_configs(name, &ops)?))
                })
                .await
                .map_err(|e| (e.code(), e.to_string())),
            // The dynamic broker configs (the replication throttle's rates), of one broker or
            // of the cluster default (`""`): metadata records every broker applies.
            RESOURCE_BROKER => self
                .command(validate_only, |m| {
                    Ok(((), m.alter_broker_configs(name, &ops)?))
                })
                .await
                .map_err(|e| (e.code(), e.to_string())),
            _ => Err((
                code::INVALID_REQUEST,
                format!("altering resource type {resource_type} is not supported"),
            )),
        }
    }

    async fn incremental_alter_configs(
        &self,
        request: IncrementalAlterConfigsRequest,
    ) -> IncrementalAlterConfigsResponse {
        let mut response = IncrementalAlterConfigsResponse::default();
        for resource in request.resources {
            let mut r = incremental_alter_configs_response::AlterConfigsResourceResponse::default();
            r.resource_type = resource.resource_type;
            r.resource_name = resource.resource_name.clone();
            let ops: Option<Vec<AlterConfigOp>> = resource
                .configs
                .iter()
                .map(|c| {
                    AlterOp::from_code(c.config_operation).map(|op| AlterConfigOp {
                        key: c.name.to_string(),
                        op,
                        value: c.value.as_ref().map(|v| v.to_string()),
                    })
                })
                .collect();
            let result = match ops {
                None => Err((code::INVALID_CONFIG, "unknown config operation".to_string())),
                Some(ops) => {
                    self.alter_topic_configs(
                        resource.resource_type,
                        &resource.resource_name,
                        ops,
                        request.validate_only,
                    )
                    .await
                }
            };
            if let Err((code, message)) = result {
                r.error_code = code;
                r.error_message = Some(str_bytes(message));
            }
            response.responses.push(r);
        }
        response
    }

    /// The legacy AlterConfigs: the given set replaces every override of the topic.
    async fn alter_configs(&self, request: AlterConfigsRequest) -> AlterConfigsResponse {
        let mut response = AlterConfigsResponse::default();
        for resource in request.resources {
            let mut r = alter_configs_response::AlterConfigsResourceResponse::default();
            r.resource_type = resource.resource_type;
            r.resource_name = resource.resource_name.clone();
            let name = resource.resource_name.to_string();
            let existing: Vec<String> = self
                .with_metadata(|m| match resource.resource_type {
                    RESOURCE_BROKER => m.broker_configs(&name).map(|c| c.keys().cloned().collect()),
                    _ => m
                        .topic_config(&name)
                        .map(|c| c.overrides().keys().cloned().collect()),
                })
                .unwrap_or_default();
            let mut ops: Vec<AlterConfigOp> = resource
                .configs
                .iter()
                .map(|c| AlterConfigOp {
                    key: c.name.to_string(),
                    op: AlterOp::Set,
                    value: c.value.as_ref().map(|v| v.to_string()),
                })
                .collect();
            for key in existing {
                if !ops.iter().any(|o| o.key == key) {
                    ops.push(AlterConfigOp {
                        key,
                        op: AlterOp::Delete,
                        value: None,
                    });
                }
            }
            if let Err((code, message)) = self
                .alter_topic_configs(resource.resource_type, &name, ops, request.validate_only)
                .await
            {
                r.error_code = code;
                r.error_message = Some(str_bytes(message));
            }
            response.responses.push(r);
        }
        response
    }

    /// DescribeCluster v0-2: the brokers (v2: with the fenced ones if asked, KIP-1073). A
    /// request for controller endpoints (KIP-919) gets MISMATCHED_ENDPOINT_TYPE: keel's
    /// controllers are its brokers, reached through them.
    fn describe_cluster(
        &self,
        listener: &str,
        request: DescribeClusterRequest,
    ) -> DescribeClusterResponse {
        let mut response = DescribeClusterResponse::default();
        response.cluster_id = str_bytes(self.cluster_id());
        response.endpoint_type = request.endpoint_type;
        if request.endpoint_type != 1 {
            (response.error_code, response.error_message) = if request.endpoint_type == 2 {
                (
                    code::MISMATCHED_ENDPOINT_TYPE,
                    Some(str_bytes(
                        "keel's controllers are its brokers: ask for brokers (endpoint type 1)"
                            .to_string(),
                    )),
                )
            } else {
                (
                    code::UNSUPPORTED_ENDPOINT_TYPE,
                    Some(str_bytes(format!(
                        "unknown endpoint type {}",
                        request.endpoint_type
                    ))),
                )
            };
            response.controller_id = BrokerId(-1);
            return response;
        }
        let fenced = [false, true]
            .into_iter()
            .take(1 + usize::from(request.include_fenced_brokers));
        for is_fenced in fenced {
            for (id, host, port) in self.brokers_on(listener, is_fenced) {
                let mut b = DescribeClusterBroker::default();
                b.broker_id = BrokerId(id);
                b.host = str_bytes(host);
                b.port = port;
                b.is_fenced = is_fenced;
                response.brokers.push(b);
            }
        }
        let listed: Vec<(i32, bool)> = response
            .brokers
            .iter()
            .map(|b| (b.broker_id.0, b.is_fenced))
            .collect();
        response.controller_id = BrokerId(self.controller_for_clients(&listed));
        response
    }
}

/// Resolves when any of the futures resolves.
async fn futures_any<F: Future + Unpin>(futures: impl Iterator<Item = F>) {
    let mut futures: Vec<F> = futures.collect();
    if futures.is_empty() {
        return std::future::pending().await;
    }
    std::future::poll_fn(|cx| {
        for f in futures.iter_mut() {
            if std::pin::Pin::new(f).poll(cx).is_ready() {
                return std::task::Poll::Ready(());
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// The controller id a client is told, given the metadata quorum's `leader`, this broker `me`
/// and the brokers `listed` to the client as (id, fenced). Every broker forwards the
/// controller's requests (admin writes) to the quorum's leader, so, as in KRaft, a client may
/// send them to any unfenced listed broker: the quorum's leader if it is one, else this broker,
/// else the first, -1 if there is none. A client is never told a controller it cannot reach:
/// librdkafka waits for such a broker to appear without asking for metadata again (the
/// quorum's leader stopped, or is fenced, while its successor is being elected), and its admin
/// requests time out for minutes. A fenced broker is listed (when DescribeCluster asks for
/// them) so that tools see it, not so that clients send it requests.
fn controller_among(leader: i32, me: i32, listed: &[(i32, bool)]) -> i32 {
    let unfenced = || {
        listed
            .iter()
            .filter(|(_, fenced)| !fenced)
            .map(|(id, _)| *id)
    };
    if unfenced().any(|id| id == leader) {
        leader
    } else if unfenced().any(|id| id == me) {
        me
    } else {
        unfenced().next().unwrap_or(-1)
    }
}

#[cfg(test)]
mod tests {
    use super::controller_among;

    #[test]
    fn the_controller_named_to_clients_is_a_listed_unfenced_broker() {
        // The quorum's leader when it is listed and unfenced.
        assert_eq!(controller_among(2, 1, &[(1, false), (2, false)]), 2);
        // Not listed (stopped, or not on the client's listener): this broker.
        assert_eq!(controller_among(3, 1, &[(1, false), (2, false)]), 1);
        // Listed but fenced (DescribeCluster with fenced brokers): this broker, not it.
        assert_eq!(controller_among(3, 1, &[(1, false), (3, true)]), 1);
        // This broker fenced or not listed too: the first unfenced one.
        assert_eq!(
            controller_among(3, 1, &[(1, true), (3, true), (2, false)]),
            2
        );
        assert_eq!(controller_among(3, 4, &[(1, false), (2, false)]), 1);
        // Nobody to name.
        assert_eq!(controller_among(3, 1, &[(3, true)]), -1);
        assert_eq!(controller_among(3, 1, &[]), -1);
    }
}
