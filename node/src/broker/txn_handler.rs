//! The transaction APIs on the wire: FindCoordinator with key type 1, InitProducerId with a
//! transactional id, AddPartitionsToTxn (v0-3, v4's batched and verify-only forms, v5's add
//! from a partition leader), AddOffsetsToTxn, TxnOffsetCommit, EndTxn (v5: transaction version
//! 2's epoch bump), DescribeTransactions and ListTransactions, translated between
//! kafka-protocol messages and `keel_core::txn` types; and the partition leader's side of
//! KIP-890: the verification before a transaction's first write, or from Produce v12 and
//! TxnOffsetCommit v5 (transaction version 2) the partition's add to the transaction.
//!
//! As for groups, each call into the coordinator happens at once (in the connection's request
//! order) and the returned future waits, with no lock held, for an answer that comes late (once
//! the coordinator's record is durable). Every error code a coordinator gives passes through
//! `txn::error_for_version` (PRODUCER_FENCED becomes INVALID_PRODUCER_EPOCH for clients older
//! than KIP-588).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTransaction;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use keel_core::controller::ControllerError;
use keel_core::error_code::{self as code, ErrorCode};
use keel_core::txn::{
    self, error_for_version, AddOffsetsRequest, AddPartitionsRequest,
    InitProducerIdRequest as CoreInitRequest, Response, TopicPartition, TxnApi, TxnResult,
    TxnState, EPOCH_EXHAUSTED, TRANSACTION_VERSION_2,
};
use keel_core::ProducerId as CoreProducerId;

/// The first Produce version whose clients know TRANSACTION_ABORTABLE (KIP-890).
const PRODUCE_TRANSACTION_ABORTABLE_VERSION: i16 = 11;

/// The first Produce version whose transactional batches add their partition to the
/// transaction themselves (transaction version 2, KIP-890 part 2): the client sends no
/// AddPartitionsToTxn, and the partition's leader adds it (Kafka's `AddPartitionsToTxnManager`).
const PRODUCE_IMPLICIT_ADD_VERSION: i16 = 12;

/// The first EndTxn version of transaction version 2 (KIP-890 part 2): the coordinator bumps
/// the producer epoch and answers the next transaction's producer id and epoch.
const END_TXN_V2_VERSION: i16 = 5;

/// The first TxnOffsetCommit version of transaction version 2: the group's partition is added
/// to the transaction by the commit itself, with no AddOffsetsToTxn before it.
const TXN_OFFSET_COMMIT_V2_VERSION: i16 = 5;

/// The first AddPartitionsToTxn version of transaction version 2: sent by a partition leader
/// that adds its partition for a Produce v12+ (or a TxnOffsetCommit v5).
const ADD_PARTITIONS_V2_VERSION: i16 = 5;

use keel_core::batch::Batch;

use keel_core::group;

use super::groups::{Call, OFFSETS_TOPIC};
use super::txn::{TxnCall, TRANSACTION_STATE_TOPIC};
use super::{Broker, PartitionHandle};
use crate::wire::RequestContext;

/// Kafka's `GroupMetadataManager.maybeConvertOffsetCommitError`: the append's codes as an
/// offset commit's.
fn offset_commit_error(error: ErrorCode) -> ErrorCode {
    match error {
        code::UNKNOWN_TOPIC_OR_PARTITION
        | code::NOT_ENOUGH_REPLICAS
        | code::NOT_ENOUGH_REPLICAS_AFTER_APPEND => code::COORDINATOR_NOT_AVAILABLE,
        code::NOT_LEADER_OR_FOLLOWER | code::KAFKA_STORAGE_ERROR => code::NOT_COORDINATOR,
        code::MESSAGE_TOO_LARGE => code::INVALID_COMMIT_OFFSET_SIZE,
        other => other,
    }
}

/// A response to come.
pub type Later = Pin<Box<dyn Future<Output = ResponseKind> + Send>>;

fn s(x: impl Into<String>) -> StrBytes {
    StrBytes::from_string(x.into())
}

impl Broker {
    // -----------------------------------------------------------------------------------------
    // FindCoordinator, key type 1

    /// The broker coordinating `transactional_id`: creates `__transaction_state` on first use,
    /// then names the leader of the id's partition.
    pub(super) async fn txn_coordinator_for(
        &self,
        transactional_id: &str,
    ) -> Result<(i32, String, i32), (ErrorCode, String)> {
        if transactional_id.is_empty() {
            return Err((code::INVALID_REQUEST, "an empty transactional id".into()));
        }
        let n = match self.txn_state_partitions() {
            Some(n) => n,
            None => self.create_txn_state_topic().await.map_err(|e| {
                (
                    code::COORDINATOR_NOT_AVAILABLE,
                    format!("creating {TRANSACTION_STATE_TOPIC}: {e}"),
                )
            })?,
        };
        self.coordinator_at(
            TRANSACTION_STATE_TOPIC,
            txn::partition_for(transactional_id, n),
        )
    }

    /// Creates `__transaction_state` (an existing one is fine); its partition count.
    async fn create_txn_state_topic(&self) -> Result<i32, ControllerError> {
        let live = self.with_metadata(|m| m.live_brokers().len()).max(1);
        let settings = self.txns.settings();
        let rf = settings
            .replication_factor
            .min(i16::try_from(live).unwrap_or(i16::MAX));
        let partitions = settings.partitions;
        let configs = BTreeMap::from([
            ("cleanup.policy".to_string(), "compact".to_string()),
            ("min.insync.replicas".to_string(), rf.min(2).to_string()),
        ]);
        match self
            .create_topic_now(TRANSACTION_STATE_TOPIC, partitions, rf, configs, false)
            .await
        {
            Ok(_) => tracing::info!(
                "created {TRANSACTION_STATE_TOPIC} ({partitions} partitions, replication {rf})"
            ),
            Err(ControllerError::TopicAlreadyExists(_)) => {}
            Err(e) => return Err(e),
        }
        self.txn_state_partitions().ok_or_else(|| {
            ControllerError::UnknownServerError(format!("{TRANSACTION_STATE_TOPIC} vanished"))
        })
    }

    // -----------------------------------------------------------------------------------------
    // InitProducerId

    /// InitProducerId with a transactional id (v0-4).
    pub(super) async fn init_transactional_producer(
        self: Arc<Self>,
        version: i16,
        request: InitProducerIdRequest,
    ) -> InitProducerIdResponse {
        let mut response = InitProducerIdResponse::default();
        response.producer_id = ProducerId(-1);
        response.producer_epoch = -1;
        let req = CoreInitRequest {
            transactional_id: request
                .transactional_id
                .as_ref()
                .map(|t| t.to_string())
                .unwrap_or_default(),
            transaction_timeout_ms: request.transaction_timeout_ms,
            producer_id: CoreProducerId(request.producer_id.0),
            producer_epoch: request.producer_epoch,
        };
        // The coordinator may need a new producer id (a new transactional id, or an exhausted
        // epoch): one is taken beforehand, as its allocator cannot wait.
        let spare = match self.allocate_producer_id().await {
            Ok(id) => Some(CoreProducerId(id.0)),
            Err(e) => {
                tracing::warn!("no producer id for a transactional producer: {e}");
                None
            }
        };
        let call = self.call_txn(&req.transactional_id, |c, now, id| {
            let mut spare = spare;
            c.handle_init_producer_id(now, id, &req, || spare.take())
        });
        let answer = call
            .finish(|r| match r {
                Response::InitProducerId(r) => Some(r),
                _ => None,
            })
            .await;
        match answer {
            Ok(r) => {
                response.error_code =
                    error_for_version(TxnApi::InitProducerId, version, r.error_code);
                if r.error_code == code::NONE {
                    response.producer_id = ProducerId(r.producer_id.0);
                    response.producer_epoch = r.producer_epoch;
                }
            }
            Err(e) => response.error_code = e,
        }
        response
    }

    // -----------------------------------------------------------------------------------------
    // Produce: KIP-890's verification before a transaction's first write to a partition

    /// Before a transactional batch is appended: if it would open a transaction on the
    /// partition, the coordinator must confirm that the partition is in the producer's
    /// transaction. A coordinator on this broker answers at once; one elsewhere is asked in
    /// the background while the produce gets NOT_ENOUGH_REPLICAS, which clients retry (Kafka
    /// answers CONCURRENT_TRANSACTIONS from its verification the same way).
    /// From Produce v12 (transaction version 2, KIP-890 part 2) the partition is added to the
    /// transaction rather than verified: the client sent no AddPartitionsToTxn for it.
    pub(super) fn prepare_txn_append(
        &self,
        produce_version: i16,
        transactional_id: Option<&str>,
        topic: &str,
        p: &Arc<PartitionHandle>,
        batch: &Batch,
    ) -> Result<(), (ErrorCode, String)> {
        let Some(txn_id) = transactional_id else {
            return Err((
                code::INVALID_RECORD,
                "transactional records need the request's transactional id".into(),
            ));
        };
        let (pid, epoch) = (batch.producer_id(), batch.producer_epoch());
        let add = produce_version >= PRODUCE_IMPLICIT_ADD_VERSION;
        let Err(error) = self.verify_before_txn_append(txn_id, topic, p, pid, epoch, add) else {
            return Ok(());
        };
        // Produce's codes for the coordinator's (Kafka's `AddPartitionsToTxnManager`).
        let (code, why) = match error {
            code::PRODUCER_FENCED | code::INVALID_PRODUCER_EPOCH => (
                code::INVALID_PRODUCER_EPOCH,
                "the producer's epoch is fenced",
            ),
            // Produce v11 added TRANSACTION_ABORTABLE (KIP-890); older versions get
            // INVALID_TXN_STATE, as Kafka answers them.
            code::TRANSACTION_ABORTABLE
                if produce_version >= PRODUCE_TRANSACTION_ABORTABLE_VERSION =>
            {
                (
                    code::TRANSACTION_ABORTABLE,
                    "the partition was never added to the producer's transaction",
                )
            }
            code::TRANSACTION_ABORTABLE => (
                code::INVALID_TXN_STATE,
                "the partition was never added to the producer's transaction",
            ),
            code::INVALID_PRODUCER_ID_MAPPING => (
                code::INVALID_PRODUCER_ID_MAPPING,
                "the producer id does not match the transactional id's",
            ),
            _ if add => (
                code::NOT_ENOUGH_REPLICAS,
                "adding the partition to the transaction at its coordinator: retry",
            ),
            _ => (
                code::NOT_ENOUGH_REPLICAS,
                "verifying the transaction with its coordinator: retry",
            ),
        };
        Err((code, why.to_string()))
    }

    /// KIP-890's check before a transactional append of `pid` at `epoch` to `p` (a client's
    /// produce, or the group coordinator's TxnOffsetCommit records): Ok if the partition
    /// needs no verification or the coordinator here confirms it; else the coordinator's
    /// code (TRANSACTION_ABORTABLE: not in the transaction), or CONCURRENT_TRANSACTIONS while
    /// a coordinator on another broker is asked in the background.
    ///
    /// With `add` (transaction version 2: Produce v12+, TxnOffsetCommit v5) the partition is
    /// added to the transaction instead, as Kafka's `AddPartitionsToTxnManager` does with
    /// AddPartitionsToTxn v5: Ok once the coordinator holds it; CONCURRENT_TRANSACTIONS while
    /// the add's record becomes durable (here or at a coordinator elsewhere), after which the
    /// partition may take the producer's batches and the client's retry goes through. A
    /// producer whose epoch an EndTxn v5 bumped past (a zombie of an ended transaction) gets
    /// PRODUCER_FENCED.
    pub(super) fn verify_before_txn_append(
        &self,
        txn_id: &str,
        topic: &str,
        p: &Arc<PartitionHandle>,
        pid: CoreProducerId,
        epoch: i16,
        add: bool,
    ) -> Result<(), ErrorCode> {
        if !p.with(|r| r.txn_needs_verification(pid, epoch)) {
            return Ok(());
        }
        let tp = TopicPartition {
            topic: topic.to_string(),
            partition: p.index,
        };
        if add {
            return self.add_before_txn_append(txn_id, tp, p, pid, epoch);
        }
        let here = self.verify_txn_here(txn_id, pid, epoch, vec![tp]);
        match here {
            Ok((list, start)) => match list.first().map(|(_, e)| *e) {
                Some(code::NONE) => {
                    p.with(|r| r.allow_txn_started(pid, epoch, start));
                    Ok(())
                }
                Some(e) if e != code::NONE => Err(e),
                _ => Err(code::TRANSACTION_ABORTABLE),
            },
            Err(code::NOT_COORDINATOR) => {
                if let Some(b) = self.this.upgrade() {
                    let (txn_id, topic, index) = (txn_id.to_string(), topic.to_string(), p.index);
                    tokio::spawn(async move {
                        if let Err(e) = b.verify_txn(&txn_id, &topic, index, pid, epoch).await {
                            tracing::debug!(txn = %txn_id, %topic, partition = index, "verification: {}", keel_core::error_code::Named(e));
                        }
                    });
                }
                Err(code::CONCURRENT_TRANSACTIONS)
            }
            Err(e) => Err(e),
        }
    }

    /// Transaction version 2's implicit add of `tp` (led here as `p`) to the transaction of
    /// `txn_id` before the producer's first batch there: see
    /// [`Broker::verify_before_txn_append`].
    fn add_before_txn_append(
        &self,
        txn_id: &str,
        tp: TopicPartition,
        p: &Arc<PartitionHandle>,
        pid: CoreProducerId,
        epoch: i16,
    ) -> Result<(), ErrorCode> {
        let req = AddPartitionsRequest {
            transactional_id: txn_id.to_string(),
            producer_id: pid,
            producer_epoch: epoch,
            partitions: vec![tp.clone()],
            transaction_version: TRANSACTION_VERSION_2,
        };
        let call = self.call_txn(txn_id, |c, now, id| c.handle_add_partitions(now, id, &req));
        let broker = self.this.upgrade();
        match call {
            TxnCall::Done(Ok(code::NONE)) => {
                let start = self.txn_start_here(txn_id);
                p.with(|r| r.allow_txn_started(pid, epoch, start));
                Ok(())
            }
            TxnCall::Done(Ok(e)) => Err(e),
            TxnCall::Done(Err(code::NOT_COORDINATOR)) => {
                if let Some(b) = broker {
                    let txn_id = txn_id.to_string();
                    tokio::spawn(async move {
                        let (topic, index) = (tp.topic, tp.partition);
                        if let Err(e) = b.add_txn(&txn_id, &topic, index, pid, epoch).await {
                            tracing::debug!(txn = %txn_id, %topic, partition = index, "implicit add: {}", keel_core::error_code::Named(e));
                        }
                    });
                }
                Err(code::CONCURRENT_TRANSACTIONS)
            }
            TxnCall::Done(Err(e)) => Err(e),
            waiting @ TxnCall::Waiting(_) => {
                if let Some(b) = broker {
                    let txn_id = txn_id.to_string();
                    tokio::spawn(async move {
                        let answer = waiting
                            .finish(|r| match r {
                                Response::AddPartitions(e) => Some(e),
                                _ => None,
                            })
                            .await;
                        if answer == Ok(code::NONE) {
                            let start = b.txn_start_here(&txn_id);
                            if let Ok(p) = b.leader(&tp.topic, tp.partition) {
                                p.with(|r| r.allow_txn_started(pid, epoch, start));
                            }
                        }
                    });
                }
                Err(code::CONCURRENT_TRANSACTIONS)
            }
        }
    }

    // -----------------------------------------------------------------------------------------
    // AddPartitionsToTxn

    pub(super) fn start_add_partitions(
        self: &Arc<Self>,
        ctx: &RequestContext,
        r: AddPartitionsToTxnRequest,
    ) -> Later {
        let v = ctx.api_version;
        if v <= 3 {
            let txn = AddPartitionsToTxnTransaction::default()
                .with_transactional_id(r.v3_and_below_transactional_id.clone())
                .with_producer_id(r.v3_and_below_producer_id)
                .with_producer_epoch(r.v3_and_below_producer_epoch)
                .with_topics(r.v3_and_below_topics.clone());
            let one = self.add_partitions_one(v, txn);
            return Box::pin(async move {
                let result = one.await;
                let mut response = AddPartitionsToTxnResponse::default();
                response.results_by_topic_v3_and_below = result.topic_results;
                ResponseKind::AddPartitionsToTxn(response)
            });
        }
        // v4+: batches of transactions, from brokers (KIP-890). keel's brokers verify over
        // their own transport; the form is served for any client that uses it.
        let calls: Vec<_> = r
            .transactions
            .into_iter()
            .map(|t| self.add_partitions_one(v, t))
            .collect();
        Box::pin(async move {
            let mut response = AddPartitionsToTxnResponse::default();
            for call in calls {
                response.results_by_transaction.push(call.await);
            }
            ResponseKind::AddPartitionsToTxn(response)
        })
    }

    /// One transaction of an AddPartitionsToTxn request: started now, answered by the future.
    fn add_partitions_one(
        self: &Arc<Self>,
        v: i16,
        t: AddPartitionsToTxnTransaction,
    ) -> Pin<Box<dyn Future<Output = AddPartitionsToTxnResult> + Send>> {
        let transactional_id = t.transactional_id.to_string();
        let partitions: Vec<TopicPartition> = t
            .topics
            .iter()
            .flat_map(|topic| {
                topic.partitions.iter().map(|&p| TopicPartition {
                    topic: topic.name.0.to_string(),
                    partition: p,
                })
            })
            .collect();
        let wire_id = t.transactional_id.clone();
        let result = move |partitions: &[TopicPartition],
                           error: &dyn Fn(&TopicPartition) -> ErrorCode| {
            let mut by_topic: BTreeMap<String, Vec<AddPartitionsToTxnPartitionResult>> =
                BTreeMap::new();
            for tp in partitions {
                by_topic.entry(tp.topic.clone()).or_default().push(
                    AddPartitionsToTxnPartitionResult::default()
                        .with_partition_index(tp.partition)
                        .with_partition_error_code(error(tp)),
                );
            }
            AddPartitionsToTxnResult::default()
                .with_transactional_id(wire_id.clone())
                .with_topic_results(
                    by_topic
                        .into_iter()
                        .map(|(name, results)| {
                            AddPartitionsToTxnTopicResult::default()
                                .with_name(TopicName(s(name)))
                                .with_results_by_partition(results)
                        })
                        .collect(),
                )
        };
        // Unknown partitions fail the request; the others are not attempted (KafkaApis).
        let unknown: Vec<TopicPartition> = partitions
            .iter()
            .filter(|tp| {
                tp.topic == TRANSACTION_STATE_TOPIC
                    || !self.with_metadata(|m| m.partition(&tp.topic, tp.partition).is_some())
            })
            .cloned()
            .collect();
        if !unknown.is_empty() {
            let r = result(&partitions, &|tp| {
                if unknown.contains(tp) {
                    code::UNKNOWN_TOPIC_OR_PARTITION
                } else {
                    code::OPERATION_NOT_ATTEMPTED
                }
            });
            return Box::pin(async move { r });
        }
        let req = AddPartitionsRequest {
            transactional_id: transactional_id.clone(),
            producer_id: CoreProducerId(t.producer_id.0),
            producer_epoch: t.producer_epoch,
            partitions: partitions.clone(),
            // v5 is a partition leader adding for a transaction-version-2 write (Kafka's
            // `KafkaApis` takes the version from the request's).
            transaction_version: if v >= ADD_PARTITIONS_V2_VERSION {
                TRANSACTION_VERSION_2
            } else {
                0
            },
        };
        if t.verify_only {
            let answer = self.with_txn(&transactional_id, |c, _| c.verify_partitions(&req));
            let r = match answer.and_then(|a| a) {
                Ok(list) => result(&partitions, &|tp| {
                    list.iter()
                        .find(|(p, _)| p == tp)
                        .map_or(code::TRANSACTION_ABORTABLE, |(_, e)| *e)
                }),
                Err(e) => {
                    let e = error_for_version(TxnApi::AddPartitionsToTxn, v, e);
                    result(&partitions, &|_| e)
                }
            };
            return Box::pin(async move { r });
        }
        let call = self.call_txn(&transactional_id, |c, now, id| {
            c.handle_add_partitions(now, id, &req)
        });
        let broker = self.clone();
        Box::pin(async move {
            let answer = call
                .finish(|r| match r {
                    Response::AddPartitions(e) => Some(e),
                    _ => None,
                })
                .await;
            let e = match answer {
                Ok(e) | Err(e) => error_for_version(TxnApi::AddPartitionsToTxn, v, e),
            };
            if e == code::NONE {
                // The partitions' leaders may take the producer's transactional batches now.
                let start = broker.txn_start_here(&req.transactional_id);
                broker
                    .announce_added(req.producer_id, req.producer_epoch, &req.partitions, start)
                    .await;
            }
            result(&partitions, &|_| e)
        })
    }

    // -----------------------------------------------------------------------------------------
    // AddOffsetsToTxn, EndTxn

    pub(super) fn start_add_offsets(
        &self,
        ctx: &RequestContext,
        r: AddOffsetsToTxnRequest,
    ) -> Later {
        let v = ctx.api_version;
        let req = AddOffsetsRequest {
            transactional_id: r.transactional_id.to_string(),
            producer_id: CoreProducerId(r.producer_id.0),
            producer_epoch: r.producer_epoch,
            group_id: r.group_id.to_string(),
        };
        let offsets_partitions = self
            .offsets_partitions()
            .unwrap_or(self.settings().offsets_topic_partitions);
        let call = self.call_txn(&req.transactional_id, |c, now, id| {
            c.handle_add_offsets(now, id, &req, offsets_partitions)
        });
        let broker = self.this.clone();
        Box::pin(async move {
            let e = match call
                .finish(|r| match r {
                    Response::AddOffsets(e) => Some(e),
                    _ => None,
                })
                .await
            {
                Ok(e) | Err(e) => e,
            };
            if let (code::NONE, Some(b)) = (e, broker.upgrade()) {
                // The group's partition may take the producer's TxnOffsetCommit records now.
                let tp = TopicPartition {
                    topic: OFFSETS_TOPIC.to_string(),
                    partition: group::partition_for(&req.group_id, offsets_partitions),
                };
                let start = b.txn_start_here(&req.transactional_id);
                b.announce_added(req.producer_id, req.producer_epoch, &[tp], start)
                    .await;
            }
            let mut response = AddOffsetsToTxnResponse::default();
            response.error_code = error_for_version(TxnApi::AddOffsetsToTxn, v, e);
            ResponseKind::AddOffsetsToTxn(response)
        })
    }

    // -----------------------------------------------------------------------------------------
    // TxnOffsetCommit

    /// TxnOffsetCommit (v0-5; Kafka's `handleTxnCommitOffsets`): the group's coordinator
    /// checks the producer at the group's `__consumer_offsets` partition (a fenced epoch;
    /// KIP-890's verification that AddOffsetsToTxn put the partition in the transaction, or
    /// from v5, transaction version 2, the partition's add to the transaction),
    /// then writes the offsets in a transactional batch of the producer. They stay pending
    /// until the transaction's marker lands on that partition.
    pub(super) fn start_txn_offset_commit(
        &self,
        ctx: &RequestContext,
        r: TxnOffsetCommitRequest,
    ) -> Later {
        let v = ctx.api_version;
        let group_id = r.group_id.0.to_string();
        let txn_id = r.transactional_id.0.to_string();
        let producer = group::TxnProducer {
            producer_id: CoreProducerId(r.producer_id.0),
            producer_epoch: r.producer_epoch,
        };
        let order: Vec<(TopicName, Vec<i32>)> = r
            .topics
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
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
                    metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                });
            }
        }
        let checked = self.check_txn_offset_commit(v, &group_id, &txn_id, producer);
        let call = match checked {
            Err(e) => Call::Done(Err(e)),
            Ok(()) if commits.is_empty() => Call::Done(Ok(group::OffsetCommitResponse {
                partitions: Vec::new(),
            })),
            Ok(()) => {
                let req = group::TxnOffsetCommitRequest {
                    group_id: group_id.clone(),
                    producer,
                    generation_id: r.generation_id,
                    member_id: r.member_id.to_string(),
                    group_instance_id: r.group_instance_id.as_ref().map(|i| i.to_string()),
                    partitions: commits.clone(),
                };
                self.call_group(&group_id, move |c, now, id| {
                    c.handle_txn_offset_commit(now, id, req)
                })
            }
        };
        Box::pin(async move {
            let answer = call
                .finish(|r| match r {
                    group::Response::OffsetCommit(x) => Some(x),
                    _ => None,
                })
                .await;
            let answers = match answer {
                Ok(a) => a.partitions,
                Err(error) => commits.into_iter().map(|c| (c.partition, error)).collect(),
            };
            errors.extend(
                answers
                    .into_iter()
                    .map(|(tp, e)| (tp, offset_commit_error(e))),
            );
            let mut out = TxnOffsetCommitResponse::default();
            for (topic, partitions) in order {
                let mut tr = txn_offset_commit_response::TxnOffsetCommitResponseTopic::default();
                for index in partitions {
                    let mut pr =
                        txn_offset_commit_response::TxnOffsetCommitResponsePartition::default();
                    pr.partition_index = index;
                    let error = errors
                        .get(&TopicPartition {
                            topic: topic.0.to_string(),
                            partition: index,
                        })
                        .copied()
                        .unwrap_or(code::NOT_COORDINATOR);
                    pr.error_code = error;
                    tr.partitions.push(pr);
                }
                tr.name = topic;
                out.topics.push(tr);
            }
            ResponseKind::TxnOffsetCommit(out)
        })
    }

    /// The checks before a TxnOffsetCommit reaches the group coordinator, at the group's
    /// `__consumer_offsets` partition: its leader is here, the producer's epoch is not fenced
    /// there, and the partition is in the producer's transaction (KIP-890's verification, as
    /// Kafka 3.6+ does for TxnOffsetCommit; v4+ learn TRANSACTION_ABORTABLE, older versions
    /// INVALID_TXN_STATE, as `AddPartitionsToTxnManager` answers them).
    fn check_txn_offset_commit(
        &self,
        version: i16,
        group_id: &str,
        txn_id: &str,
        producer: group::TxnProducer,
    ) -> Result<(), ErrorCode> {
        if group_id.is_empty() {
            return Err(code::INVALID_GROUP_ID);
        }
        if txn_id.is_empty() {
            return Err(code::INVALID_REQUEST);
        }
        let n = self.offsets_partitions().ok_or(code::NOT_COORDINATOR)?;
        let index = group::partition_for(group_id, n);
        let p = self
            .leader(OFFSETS_TOPIC, index)
            .map_err(|_| code::NOT_COORDINATOR)?;
        let (pid, epoch) = (producer.producer_id, producer.producer_epoch);
        if pid.0 < 0 || epoch < 0 {
            return Err(code::INVALID_PRODUCER_ID_MAPPING);
        }
        if p.with(|r| r.txn_epoch_fenced(pid, epoch)).is_some() {
            return Err(code::INVALID_PRODUCER_EPOCH);
        }
        let add = version >= TXN_OFFSET_COMMIT_V2_VERSION;
        match self.verify_before_txn_append(txn_id, OFFSETS_TOPIC, &p, pid, epoch, add) {
            Ok(()) => Ok(()),
            Err(code::PRODUCER_FENCED | code::INVALID_PRODUCER_EPOCH) => {
                Err(code::INVALID_PRODUCER_EPOCH)
            }
            Err(code::TRANSACTION_ABORTABLE) if version >= 4 => Err(code::TRANSACTION_ABORTABLE),
            Err(code::TRANSACTION_ABORTABLE) => Err(code::INVALID_TXN_STATE),
            // Being verified with a coordinator elsewhere: Kafka answers a verification that
            // could not complete with COORDINATOR_LOAD_IN_PROGRESS, which clients retry
            // without looking the coordinator up again.
            Err(code::CONCURRENT_TRANSACTIONS) => Err(code::COORDINATOR_LOAD_IN_PROGRESS),
            Err(e) => Err(e),
        }
    }

    pub(super) fn start_end_txn(&self, ctx: &RequestContext, r: EndTxnRequest) -> Later {
        let v = ctx.api_version;
        let req = keel_core::txn::EndTxnRequest {
            transactional_id: r.transactional_id.to_string(),
            producer_id: CoreProducerId(r.producer_id.0),
            producer_epoch: r.producer_epoch,
            result: if r.committed {
                TxnResult::Commit
            } else {
                TxnResult::Abort
            },
        };
        if v >= END_TXN_V2_VERSION {
            return self.start_end_txn_v2(req);
        }
        let call: TxnCall<ErrorCode> = self.call_txn(&req.transactional_id, |c, now, id| {
            c.handle_end_txn(now, id, &req)
        });
        Box::pin(async move {
            let e = match call
                .finish(|r| match r {
                    Response::EndTxn(e) => Some(e),
                    _ => None,
                })
                .await
            {
                Ok(e) | Err(e) => e,
            };
            let mut response = EndTxnResponse::default();
            response.error_code = error_for_version(TxnApi::EndTxn, v, e);
            response.producer_id = ProducerId(-1);
            response.producer_epoch = -1;
            ResponseKind::EndTxn(response)
        })
    }

    /// EndTxn v5 (transaction version 2): the coordinator bumps the epoch and answers the
    /// producer id and epoch of the producer's next transaction. At an exhausted epoch the
    /// coordinator needs a new producer id, taken from the broker's block before the call (as
    /// for InitProducerId); only then, so that ordinary ends use up no producer ids.
    fn start_end_txn_v2(&self, req: keel_core::txn::EndTxnRequest) -> Later {
        let exhausted = self
            .with_txn(&req.transactional_id, |c, _| {
                c.txn(&req.transactional_id)
                    .and_then(|t| t.durable())
                    .is_some_and(|d| d.producer_epoch >= EPOCH_EXHAUSTED)
            })
            .unwrap_or(false);
        let answer = |r: Result<txn::EndTxnResponse, ErrorCode>| {
            let mut response = EndTxnResponse::default();
            response.producer_id = ProducerId(-1);
            response.producer_epoch = -1;
            match r {
                Ok(r) => {
                    response.error_code = r.error_code;
                    if r.error_code == code::NONE {
                        response.producer_id = ProducerId(r.producer_id.0);
                        response.producer_epoch = r.producer_epoch;
                    }
                }
                Err(e) => response.error_code = e,
            }
            ResponseKind::EndTxn(response)
        };
        let unwrap: fn(Response) -> Option<txn::EndTxnResponse> = |r| match r {
            Response::EndTxnV2(r) => Some(r),
            _ => None,
        };
        let call_with = move |b: &Broker, spare: Option<CoreProducerId>| {
            b.call_txn(&req.transactional_id, |c, now, id| {
                let mut spare = spare;
                c.handle_end_txn_v2(now, id, &req, || spare.take())
            })
        };
        if !exhausted {
            let call = call_with(self, None);
            return Box::pin(async move { answer(call.finish(unwrap).await) });
        }
        let broker = self.this.upgrade();
        Box::pin(async move {
            let Some(b) = broker else {
                return answer(Err(code::NOT_COORDINATOR));
            };
            let spare = match b.allocate_producer_id().await {
                Ok(id) => Some(CoreProducerId(id.0)),
                Err(e) => {
                    tracing::warn!("no producer id for an exhausted transactional producer: {e}");
                    None
                }
            };
            let call = call_with(&b, spare);
            answer(call.finish(unwrap).await)
        })
    }

    // -----------------------------------------------------------------------------------------
    // DescribeTransactions, ListTransactions (KIP-664)

    pub(super) fn describe_transactions(
        &self,
        r: DescribeTransactionsRequest,
    ) -> DescribeTransactionsResponse {
        let mut out = DescribeTransactionsResponse::default();
        for id in r.transactional_ids {
            let name = id.to_string();
            let mut ts = describe_transactions_response::TransactionState::default();
            ts.transactional_id = id;
            ts.transaction_state = s("");
            ts.producer_id = ProducerId(-1);
            ts.producer_epoch = -1;
            ts.transaction_start_time_ms = -1;
            match self.with_txn(&name, |c, _| c.describe(std::slice::from_ref(&name))) {
                Err(e) => ts.error_code = e,
                Ok(mut described) => match described.pop() {
                    None => ts.error_code = code::TRANSACTIONAL_ID_NOT_FOUND,
                    Some(d) => {
                        ts.error_code = d.error_code;
                        ts.transaction_state = s(d.state.name());
                        if d.error_code == code::NONE {
                            ts.transaction_timeout_ms = d.timeout_ms;
                            ts.transaction_start_time_ms = d.start_ms;
                            ts.producer_id = ProducerId(d.producer_id.0);
                            ts.producer_epoch = d.producer_epoch;
                            let mut by_topic: BTreeMap<String, Vec<i32>> = BTreeMap::new();
                            for tp in d.partitions {
                                by_topic.entry(tp.topic).or_default().push(tp.partition);
                            }
                            ts.topics = by_topic
                                .into_iter()
                                .map(|(t, ps)| {
                                    describe_transactions_response::TopicData::default()
                                        .with_topic(TopicName(s(t)))
                                        .with_partitions(ps)
                                })
                                .collect();
                        }
                    }
                },
            }
            out.transaction_states.push(ts);
        }
        out
    }

    pub(super) fn list_transactions(
        &self,
        v: i16,
        r: ListTransactionsRequest,
    ) -> ListTransactionsResponse {
        let mut out = ListTransactionsResponse::default();
        let mut states = Vec::new();
        for name in &r.state_filters {
            match TxnState::parse(name) {
                Some(st) => states.push(st),
                None => out.unknown_state_filters.push(name.clone()),
            }
        }
        if !out.unknown_state_filters.is_empty() && states.is_empty() {
            // Only unknown states: nothing can match (Kafka answers an empty list).
            return out;
        }
        let pids: Vec<CoreProducerId> = r
            .producer_id_filters
            .iter()
            .map(|p| CoreProducerId(p.0))
            .collect();
        let duration = if v >= 1 { r.duration_filter } else { -1 };
        // v2 (KIP-1152): only ids the whole pattern matches (Kafka's RE2J `matches()`); none
        // or empty lists every id, a pattern that does not compile is the request's error.
        let pattern = match r
            .transactional_id_pattern
            .as_deref()
            .filter(|p| v >= 2 && !p.is_empty())
        {
            None => None,
            Some(p) => match regex::Regex::new(&format!("^(?:{p})$")) {
                Ok(re) => Some(re),
                Err(_) => {
                    out.error_code = code::INVALID_REGULAR_EXPRESSION;
                    return out;
                }
            },
        };
        let now = self.clock.now_ms();
        let mut listed = Vec::new();
        let loading =
            self.each_txn_coordinator(|c| listed.extend(c.list(now, &states, &pids, duration)));
        if loading {
            out.error_code = code::COORDINATOR_LOAD_IN_PROGRESS;
        }
        for l in listed {
            if pattern
                .as_ref()
                .is_some_and(|re| !re.is_match(&l.transactional_id))
            {
                continue;
            }
            let mut ts = list_transactions_response::TransactionState::default();
            ts.transactional_id = TransactionalId(s(l.transactional_id));
            ts.producer_id = ProducerId(l.producer_id.0);
            ts.transaction_state = s(l.state.name());
            out.transaction_states.push(ts);
        }
        out
    }
}

impl Broker {
    /// DescribeProducers (KIP-664): the producers of each partition this broker leads, with
    /// their epoch, last sequence and timestamp, and the first offset of their open
    /// transaction (-1: none).
    pub(super) fn describe_producers(
        &self,
        r: DescribeProducersRequest,
    ) -> DescribeProducersResponse {
        let mut out = DescribeProducersResponse::default();
        for topic in r.topics {
            let mut tr = describe_producers_response::TopicResponse::default();
            tr.name = topic.name.clone();
            for index in topic.partition_indexes {
                let mut pr = describe_producers_response::PartitionResponse::default();
                pr.partition_index = index;
                match self.leader(&topic.name.0, index) {
                    Err(e) => pr.error_code = e,
                    Ok(p) => p.with(|r| {
                        let txns = r.txns();
                        for (pid, entry) in r.producers().producers() {
                            let mut ps = describe_producers_response::ProducerState::default();
                            ps.producer_id = ProducerId(pid.0);
                            // A marker (a fencing abort) may carry a newer epoch.
                            let epoch = entry.epoch().max(txns.marker_epoch(pid).unwrap_or(-1));
                            ps.producer_epoch = epoch.into();
                            ps.last_sequence = entry.last_seq();
                            ps.last_timestamp = entry.last_timestamp();
                            ps.coordinator_epoch = txns.coordinator_epoch(pid).unwrap_or(-1);
                            ps.current_txn_start_offset = txns.open_txn(pid).map_or(-1, |o| o.0);
                            pr.active_producers.push(ps);
                        }
                    }),
                }
                tr.partitions.push(pr);
            }
            out.topics.push(tr);
        }
        out
    }
}

/// Requests the transaction APIs leave in error, for the request metrics.
pub(super) fn has_txn_error(response: &ResponseKind) -> Option<bool> {
    Some(match response {
        ResponseKind::AddPartitionsToTxn(r) => {
            r.error_code != 0
                || r.results_by_topic_v3_and_below
                    .iter()
                    .chain(
                        r.results_by_transaction
                            .iter()
                            .flat_map(|t| &t.topic_results),
                    )
                    .flat_map(|t| &t.results_by_partition)
                    .any(|p| p.partition_error_code != 0)
        }
        ResponseKind::AddOffsetsToTxn(r) => r.error_code != 0,
        ResponseKind::EndTxn(r) => r.error_code != 0,
        ResponseKind::DescribeTransactions(r) => {
            r.transaction_states.iter().any(|t| t.error_code != 0)
        }
        ResponseKind::ListTransactions(r) => r.error_code != 0,
        ResponseKind::DescribeProducers(r) => r
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .any(|p| p.error_code != 0),
        _ => return None,
    })
}
