//! The client's transactional half: a transactional producer (FindCoordinator key type 1,
//! InitProducerId with a transactional id, AddPartitionsToTxn, transactional produce, EndTxn)
//! and `read_committed` fetches that drop aborted transactions as a Kafka consumer does.
//!
//! What always holds:
//! - A transactional batch is retried as the same batch (same producer id, epoch and
//!   sequence), as idempotent sends are; any error that ends its attempts leaves the
//!   transaction to be aborted, never committed: the caller knows which values it holds.
//! - [`EndOutcome`] says what an EndTxn can have done: `Done` only on the coordinator's NONE,
//!   `Refused` only when every attempt was answered with an error that means it was not
//!   taken, `Unknown` when an attempt may have been taken: no answer, or NOT_COORDINATOR
//!   (COORDINATOR_NOT_AVAILABLE, REQUEST_TIMED_OUT) from a coordinator that lost track of a
//!   record it was writing, which its successor may load (simulator seed 54: a commit
//!   answered NOT_COORDINATOR, then CONCURRENT_TRANSACTIONS until the client gave up, was
//!   committed).
//! - A `read_committed` fetch returns only records below the last stable offset, minus those
//!   of the aborted transactions the broker lists, with control batches skipped (Kafka's
//!   `Fetcher` with `IsolationLevel.READ_COMMITTED`).

use std::collections::{BTreeMap, BTreeSet};

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    AddPartitionsToTxnRequest, ApiKey, BrokerId, EndTxnRequest, FetchRequest,
    FindCoordinatorRequest, InitProducerIdRequest, ProduceRequest, RequestKind, ResponseKind,
    TopicName, TransactionalId,
};
use keel_core::batch::{Batch, BatchBuilder, BatchError, Compression};
use keel_core::types::{Offset, ProducerId};

use super::{encode_value, now_ms, str_bytes, Client, ClientError, Endpoint};
use crate::checker::{Key, Value};

/// One transactional producer instance: a transactional id, the producer id and epoch its
/// InitProducerId got, a sequence per partition, and the coordinator it last found.
#[derive(Clone, Debug)]
pub struct TxnProducer {
    pub transactional_id: String,
    pub timeout_ms: i32,
    producer: Option<(ProducerId, i16)>,
    sequences: BTreeMap<Key, i32>,
    coordinator: Option<(i32, Endpoint)>,
    /// The broker the last lookup named.
    last_coordinator: Option<i32>,
    /// Coordinator changes this instance saw (a different broker after a new lookup).
    pub coordinator_moves: u64,
    /// Transaction version 2: the times an EndTxn v5 answered a new producer id or epoch.
    pub epoch_bumps: u64,
}

/// A `read_committed` fetch's result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedFetch {
    pub records: Vec<(Offset, Value)>,
    /// Where the next fetch starts.
    pub next: Offset,
    pub last_stable_offset: Offset,
    pub high_watermark: Offset,
}

/// What an EndTxn came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EndOutcome {
    /// The coordinator answered NONE.
    Done,
    /// Every attempt was answered with an error that means it was not taken.
    Refused(ClientError),
    /// An attempt may have been taken (no answer, or NOT_COORDINATOR): the transaction may
    /// have ended either way.
    Unknown(String),
}

/// Whether `e` means the producer is fenced (a newer epoch exists, or the transaction timed
/// out and was aborted with a bumped epoch).
pub fn fenced(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Kafka {
            error: ResponseError::ProducerFenced | ResponseError::InvalidProducerEpoch,
            ..
        }
    )
}

/// Errors a transactional call retries after finding the coordinator again.
fn coordinator_retriable(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Kafka {
            error: ResponseError::ConcurrentTransactions
                | ResponseError::CoordinatorLoadInProgress
                | ResponseError::NotCoordinator
                | ResponseError::CoordinatorNotAvailable,
            ..
        }
    ) || e.is_retriable()
}

impl TxnProducer {
    pub fn new(transactional_id: &str, timeout_ms: i32) -> TxnProducer {
        TxnProducer {
            transactional_id: transactional_id.to_string(),
            timeout_ms,
            producer: None,
            sequences: BTreeMap::new(),
            coordinator: None,
            last_coordinator: None,
            coordinator_moves: 0,
            epoch_bumps: 0,
        }
    }

    /// The producer id and epoch, once initialised.
    pub fn producer(&self) -> Option<(ProducerId, i16)> {
        self.producer
    }

    /// The sequence of the producer's next batch to `key` at its current epoch.
    pub fn next_sequence(&self, key: &Key) -> i32 {
        self.sequences.get(key).copied().unwrap_or(0)
    }

    /// A send to `key` outside [`Client::txn_produce`] took the next sequence (a late write
    /// of a transaction sent at the producer's current epoch).
    pub fn skip_sequence(&mut self, key: &Key) {
        let next = self.next_sequence(key).checked_add(1).unwrap_or(0);
        self.sequences.insert(key.clone(), next);
    }
}

impl Client {
    /// FindCoordinator with key type 1 for `p`'s transactional id.
    async fn find_txn_coordinator(&mut self, p: &mut TxnProducer) -> Result<Endpoint, ClientError> {
        if let Some((_, e)) = &p.coordinator {
            return Ok(e.clone());
        }
        let mut request = FindCoordinatorRequest::default();
        request.key = str_bytes(&p.transactional_id);
        request.key_type = 1;
        let response = self
            .call_any(
                ApiKey::FindCoordinator,
                RequestKind::FindCoordinator(request),
            )
            .await?;
        let ResponseKind::FindCoordinator(r) = response else {
            return Err(ClientError::Protocol(
                "not a FindCoordinator response".into(),
            ));
        };
        if let Some(e) = ClientError::kafka(r.error_code, r.error_message.as_ref()) {
            return Err(e);
        }
        let port = u16::try_from(r.port)
            .map_err(|_| ClientError::Protocol("FindCoordinator: bad port".into()))?;
        let endpoint = Endpoint {
            host: r.host.to_string(),
            port,
        };
        if p.last_coordinator.is_some_and(|last| last != r.node_id.0) {
            p.coordinator_moves += 1;
        }
        p.last_coordinator = Some(r.node_id.0);
        p.coordinator = Some((r.node_id.0, endpoint.clone()));
        Ok(endpoint)
    }

    /// One call to `p`'s coordinator and the error code its answer carries (`code` picks it);
    /// retried, after finding the coordinator again, on the errors clients retry.
    async fn txn_call(
        &mut self,
        p: &mut TxnProducer,
        api: ApiKey,
        body: RequestKind,
        code: fn(&ResponseKind) -> Option<i16>,
    ) -> Result<ResponseKind, (ClientError, bool)> {
        let mut maybe_taken = false;
        let mut last = None;
        for attempt in 0..self.config.attempts_max.max(1) {
            if attempt > 0 {
                tokio::time::sleep(self.config.retry_backoff).await;
            }
            let endpoint = match self.find_txn_coordinator(p).await {
                Ok(e) => e,
                Err(e) => {
                    last = Some(e);
                    continue;
                }
            };
            let e = match self.call(&endpoint, api, body.clone()).await {
                Ok(response) => match code(&response) {
                    None => ClientError::Protocol(format!("not a {api:?} response")),
                    Some(c) => match ClientError::kafka(c, None) {
                        None => return Ok(response),
                        Some(e) => e,
                    },
                },
                Err(e) => e,
            };
            // An answer that may have cut a taken request short: none at all, or a
            // coordinator that resigned (or timed out) while the request's record was being
            // written, which a later coordinator may still find committed (Kafka's
            // `appendTransactionToLog` answers NOT_COORDINATOR for a write it lost track of).
            maybe_taken |= matches!(
                e,
                ClientError::NoResponse { .. }
                    | ClientError::Kafka {
                        error: ResponseError::NotCoordinator
                            | ResponseError::CoordinatorNotAvailable
                            | ResponseError::RequestTimedOut,
                        ..
                    }
            );
            if matches!(
                e,
                ClientError::Kafka {
                    error: ResponseError::NotCoordinator | ResponseError::CoordinatorNotAvailable,
                    ..
                } | ClientError::NoResponse { .. }
                    | ClientError::Connect { .. }
            ) {
                // Looked up again on the next attempt.
                p.coordinator = None;
            }
            if !coordinator_retriable(&e) {
                return Err((e, maybe_taken));
            }
            last = Some(e);
        }
        Err((last.expect("at least one attempt"), maybe_taken))
    }

    /// InitProducerId for `p`: without a producer yet, a new epoch (fences every older
    /// instance of the id and aborts its open transaction); with one, KIP-360's bump of its
    /// own epoch (the producer id and epoch it holds are sent; the coordinator refuses it as
    /// fenced if a newer instance exists). Sequences start over either way.
    pub async fn txn_init(
        &mut self,
        p: &mut TxnProducer,
    ) -> Result<(ProducerId, i16), ClientError> {
        let mut request = InitProducerIdRequest::default();
        request.transactional_id = Some(TransactionalId(str_bytes(&p.transactional_id)));
        request.transaction_timeout_ms = p.timeout_ms;
        let (pid, epoch) = p.producer.unwrap_or((ProducerId(-1), -1));
        request.producer_id = kafka_protocol::messages::ProducerId(pid.0);
        request.producer_epoch = epoch;
        let response = self
            .txn_call(
                p,
                ApiKey::InitProducerId,
                RequestKind::InitProducerId(request),
                |r| match r {
                    ResponseKind::InitProducerId(r) => Some(r.error_code),
                    _ => None,
                },
            )
            .await
            .map_err(|(e, _)| e)?;
        let ResponseKind::InitProducerId(r) = response else {
            unreachable!("txn_call checked the kind");
        };
        let producer = (ProducerId(r.producer_id.0), r.producer_epoch);
        p.producer = Some(producer);
        p.sequences.clear();
        Ok(producer)
    }

    /// AddPartitionsToTxn (v3 and below form) for `keys`. Nothing under transaction version
    /// 2, where the first transactional Produce v12 to a partition adds it.
    pub async fn txn_add_partitions(
        &mut self,
        p: &mut TxnProducer,
        keys: &[Key],
    ) -> Result<(), ClientError> {
        let (pid, epoch) = p
            .producer
            .ok_or_else(|| ClientError::Protocol("not initialised".into()))?;
        if self.transaction_version_2() {
            return Ok(());
        }
        let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
        for k in keys {
            by_topic.entry(&k.topic).or_default().push(k.partition);
        }
        let mut request = AddPartitionsToTxnRequest::default();
        request.v3_and_below_transactional_id = TransactionalId(str_bytes(&p.transactional_id));
        request.v3_and_below_producer_id = kafka_protocol::messages::ProducerId(pid.0);
        request.v3_and_below_producer_epoch = epoch;
        request.v3_and_below_topics = by_topic
            .into_iter()
            .map(|(t, ps)| {
                AddPartitionsToTxnTopic::default()
                    .with_name(TopicName(str_bytes(t)))
                    .with_partitions(ps)
            })
            .collect();
        self.txn_call(
            p,
            ApiKey::AddPartitionsToTxn,
            RequestKind::AddPartitionsToTxn(request),
            |r| match r {
                ResponseKind::AddPartitionsToTxn(r) => Some(
                    r.results_by_topic_v3_and_below
                        .iter()
                        .flat_map(|t| t.results_by_partition.iter())
                        .map(|p| p.partition_error_code)
                        .find(|&c| c != 0)
                        .unwrap_or(0),
                ),
                _ => None,
            },
        )
        .await
        .map(|_| ())
        .map_err(|(e, _)| e)
    }

    /// Produces `value` to `key` in `p`'s open transaction, retrying the same batch; the
    /// offset it was appended at.
    pub async fn txn_produce(
        &mut self,
        p: &mut TxnProducer,
        key: &Key,
        value: Value,
    ) -> Result<Offset, ClientError> {
        let (pid, epoch) = p
            .producer
            .ok_or_else(|| ClientError::Protocol("not initialised".into()))?;
        let sequence = p.next_sequence(key);
        let offset = self
            .txn_produce_as(&p.transactional_id, (pid, epoch, sequence), key, value)
            .await?;
        p.sequences
            .insert(key.clone(), sequence.checked_add(1).unwrap_or(0));
        Ok(offset)
    }

    /// Produces `value` to `key` as a transactional batch of `transactional_id` with producer
    /// id, epoch and sequence `(pid, epoch, sequence)`, retrying the same batch: a send of
    /// [`Client::txn_produce`], or a late write of an ended transaction (the pair it had).
    pub async fn txn_produce_as(
        &mut self,
        transactional_id: &str,
        (pid, epoch, sequence): (ProducerId, i16, i32),
        key: &Key,
        value: Value,
    ) -> Result<Offset, ClientError> {
        let batch = BatchBuilder {
            transactional: true,
            ..BatchBuilder::new(Compression::None).idempotent(pid, epoch, sequence)
        }
        .record(now_ms(), None, Some(&encode_value(value)))
        .build()
        .map_err(|e| ClientError::Protocol(format!("cannot build the batch: {e}")))?;
        let mut request = ProduceRequest::default();
        request.acks = -1;
        request.timeout_ms = self.config.produce_timeout_ms;
        request.transactional_id = Some(TransactionalId(str_bytes(transactional_id)));
        request.topic_data = vec![TopicProduceData::default()
            .with_name(TopicName(str_bytes(&key.topic)))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(key.partition)
                .with_records(Some(batch.into_bytes()))])];
        let mut last = None;
        for attempt in 0..self.config.attempts_max.max(1) {
            if attempt > 0 {
                self.backoff().await;
            }
            let e = match self.produce_once(key, &request).await {
                Ok(offset) => {
                    tracing::debug!(
                        target: "keel_sim::txn",
                        "{transactional_id} pid {} epoch {epoch} seq {sequence}: value {} to {key} at {}",
                        pid.0,
                        value.0,
                        offset.0
                    );
                    return Ok(offset);
                }
                Err(super::Attempt::NotSent(e) | super::Attempt::Sent(e)) => e,
            };
            // CONCURRENT_TRANSACTIONS and NOT_ENOUGH_REPLICAS come while a leader verifies
            // the transaction with its coordinator (or, at transaction version 2, adds the
            // partition to it): retried like the others.
            let retry = e.is_retriable()
                || matches!(
                    e,
                    ClientError::Kafka {
                        error: ResponseError::ConcurrentTransactions,
                        ..
                    }
                );
            if !retry {
                return Err(e);
            }
            last = Some(e);
        }
        Err(last.expect("at least one attempt"))
    }

    /// EndTxn: commit (`commit`) or abort `p`'s open transaction. At transaction version 2
    /// (EndTxn v5) the answer carries the producer id and epoch of the next transaction, which
    /// `p` takes; its sequences start over when they changed.
    pub async fn txn_end(&mut self, p: &mut TxnProducer, commit: bool) -> EndOutcome {
        let Some((pid, epoch)) = p.producer else {
            return EndOutcome::Refused(ClientError::Protocol("not initialised".into()));
        };
        let mut request = EndTxnRequest::default();
        request.transactional_id = TransactionalId(str_bytes(&p.transactional_id));
        request.producer_id = kafka_protocol::messages::ProducerId(pid.0);
        request.producer_epoch = epoch;
        request.committed = commit;
        match self
            .txn_call(
                p,
                ApiKey::EndTxn,
                RequestKind::EndTxn(request),
                |r| match r {
                    ResponseKind::EndTxn(r) => Some(r.error_code),
                    _ => None,
                },
            )
            .await
        {
            Ok(ResponseKind::EndTxn(r)) if self.transaction_version_2() => {
                let next = (ProducerId(r.producer_id.0), r.producer_epoch);
                if next.0 .0 < 0 || next.1 < 0 {
                    // An answer below v5 (a broker that does not serve it): the pair stays.
                    return EndOutcome::Done;
                }
                if Some(next) != p.producer {
                    p.producer = Some(next);
                    p.sequences.clear();
                    p.epoch_bumps += 1;
                }
                EndOutcome::Done
            }
            Ok(_) => EndOutcome::Done,
            Err((e, false)) => EndOutcome::Refused(e),
            Err((e, true)) => EndOutcome::Unknown(e.to_string()),
        }
    }

    /// A `read_committed` fetch of `key` from `offset`: the committed records below the last
    /// stable offset, the offset to fetch from next, the last stable offset and the high
    /// watermark.
    pub async fn fetch_read_committed(
        &mut self,
        key: &Key,
        offset: Offset,
    ) -> Result<CommittedFetch, ClientError> {
        retrying!(self, self.fetch_read_committed_once(key, offset))
    }

    async fn fetch_read_committed_once(
        &mut self,
        key: &Key,
        offset: Offset,
    ) -> Result<CommittedFetch, ClientError> {
        let (leader, epoch) = self.leader(key).await?;
        let mut request = FetchRequest::default();
        request.replica_id = BrokerId(-1);
        request.max_wait_ms = self.config.fetch_max_wait_ms;
        request.min_bytes = 1;
        request.max_bytes = self.config.fetch_bytes_max;
        request.isolation_level = 1;
        request.topics = vec![FetchTopic::default()
            .with_topic(TopicName(str_bytes(&key.topic)))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(key.partition)
                .with_current_leader_epoch(epoch)
                .with_fetch_offset(offset.0)
                .with_partition_max_bytes(self.config.fetch_bytes_max)])];
        let response = self
            .call(&leader, ApiKey::Fetch, RequestKind::Fetch(request))
            .await?;
        let ResponseKind::Fetch(response) = response else {
            return Err(ClientError::Protocol("not a Fetch response".into()));
        };
        if let Some(e) = ClientError::kafka(response.error_code, None) {
            return Err(e);
        }
        let partition = response
            .responses
            .iter()
            .filter(|t| t.topic.0.as_str() == key.topic)
            .flat_map(|t| t.partitions.iter())
            .find(|p| p.partition_index == key.partition)
            .ok_or_else(|| ClientError::Protocol(format!("Fetch: no result for {key}")))?;
        if let Some(e) = ClientError::kafka(partition.error_code, None) {
            return Err(e);
        }
        let lso = Offset(partition.last_stable_offset);
        let aborted: Vec<(ProducerId, Offset)> = partition
            .aborted_transactions
            .iter()
            .flatten()
            .map(|a| (ProducerId(a.producer_id.0), Offset(a.first_offset)))
            .collect();
        let mut next = offset;
        let records = match &partition.records {
            Some(bytes) => {
                let (records, end) = committed_records(key, bytes, offset, &aborted)?;
                next = end.max(offset);
                records
            }
            None => Vec::new(),
        };
        Ok(CommittedFetch {
            records,
            next,
            last_stable_offset: lso,
            high_watermark: Offset(partition.high_watermark),
        })
    }
}

/// The records of `bytes` at or after `from` that a `read_committed` consumer returns (Kafka's
/// `Fetcher.CompletedFetch`): a transactional batch of a producer whose aborted transaction
/// started at or before it is skipped until that producer's ABORT marker; control batches are
/// skipped. Also the offset after the last batch.
pub fn committed_records(
    key: &Key,
    bytes: &bytes::Bytes,
    from: Offset,
    aborted: &[(ProducerId, Offset)],
) -> Result<(Vec<(Offset, Value)>, Offset), ClientError> {
    let mut pending: Vec<(ProducerId, Offset)> = aborted.to_vec();
    pending.sort_by_key(|&(_, first)| first);
    let mut pending = std::collections::VecDeque::from(pending);
    let mut aborting: BTreeSet<ProducerId> = BTreeSet::new();
    let mut rest = bytes.clone();
    let mut out = Vec::new();
    let mut end = from;
    while let Some(batch) = Batch::parse_prefix(&rest).map_err(|e| match e {
        BatchError::CrcMismatch { .. } => ClientError::Corrupt {
            key: key.clone(),
            reason: e.to_string(),
        },
        e => ClientError::Protocol(format!("{key}: fetched batch: {e}")),
    })? {
        rest = rest.slice(batch.size()..);
        end = end.max(batch.next_offset());
        while pending
            .front()
            .is_some_and(|&(_, first)| first <= batch.last_offset())
        {
            let (pid, _) = pending.pop_front().expect("front checked");
            aborting.insert(pid);
        }
        if batch.is_control() {
            if let Ok(Some(marker)) = batch.end_txn_marker() {
                if !marker.commit {
                    aborting.remove(&batch.producer_id());
                }
            }
            continue;
        }
        if batch.is_transactional() && aborting.contains(&batch.producer_id()) {
            continue;
        }
        let decoded = batch
            .records()
            .map_err(|e| ClientError::Protocol(format!("{key}: fetched records: {e}")))?;
        for record in decoded {
            if record.offset < from {
                continue;
            }
            let value = record
                .value
                .as_deref()
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| ClientError::BadRecord {
                    key: key.clone(),
                    offset: record.offset,
                    reason: format!("value {:?} is not a decimal u64", record.value),
                })?;
            out.push((record.offset, Value(value)));
        }
    }
    Ok((out, end))
}

#[cfg(test)]
mod tests {
    use keel_core::batch::EndTxnMarker;
    use keel_core::types::LeaderEpoch;

    use super::*;

    fn data(pid: i64, offset: i64, value: u64) -> bytes::Bytes {
        let mut b = BatchBuilder {
            transactional: true,
            ..BatchBuilder::new(Compression::None).idempotent(ProducerId(pid), 0, 0)
        }
        .record(0, None, Some(value.to_string().as_bytes()))
        .build()
        .unwrap();
        b.stamp(Offset(offset), LeaderEpoch(0));
        b.into_bytes()
    }

    fn marker(pid: i64, offset: i64, commit: bool) -> bytes::Bytes {
        let mut b = EndTxnMarker {
            commit,
            coordinator_epoch: 0,
        }
        .batch(ProducerId(pid), 0, 0)
        .unwrap();
        b.stamp(Offset(offset), LeaderEpoch(0));
        b.into_bytes()
    }

    /// Kafka's `Fetcher` in read_committed: a producer's batches from the first offset of its
    /// listed aborted transaction are skipped until its ABORT marker; its later transaction,
    /// and other producers' committed ones, are returned; markers never are.
    #[test]
    fn read_committed_drops_aborted_transactions_and_markers() {
        let key = Key::new("t", 0);
        let parts = [
            data(1, 0, 10),
            data(2, 1, 20),
            marker(1, 2, false),
            marker(2, 3, true),
            data(1, 4, 11),
            marker(1, 5, true),
        ];
        let bytes: Vec<u8> = parts.iter().flat_map(|b| b.iter().copied()).collect();
        let (records, end) = committed_records(
            &key,
            &bytes::Bytes::from(bytes),
            Offset(0),
            &[(ProducerId(1), Offset(0))],
        )
        .unwrap();
        assert_eq!(
            records,
            vec![(Offset(1), Value(20)), (Offset(4), Value(11))]
        );
        assert_eq!(end, Offset(6));
    }
}
