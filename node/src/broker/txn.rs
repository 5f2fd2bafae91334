//! The node side of the transaction coordinator: one core [`TxnCoordinator`] per
//! `__transaction_state` partition this broker leads, fed from and written to that partition,
//! and the transaction markers it sends to partition leaders.
//!
//! What it owns:
//! - the internal topic [`TRANSACTION_STATE_TOPIC`], created on the first FindCoordinator
//!   with key type 1 (`transaction.state.log.num.partitions` partitions, replication factor
//!   min(`transaction.state.log.replication.factor`, live brokers), `cleanup.policy=compact`);
//! - a [`Slot`] per partition this broker leads: `Loading` from the moment it takes the
//!   leadership until the coordinator is rebuilt (`TxnCoordinator::load`) from the records of
//!   the partition's log, then `Active`;
//! - per active coordinator, a driver task ([`drive`]) that reports durable records
//!   (`records_committed`) when the partition's high watermark passes them, and runs
//!   `poll(now)` at `next_deadline_ms()`;
//! - per [`WriteMarkers`] effect, a task ([`send_markers`]) that writes the markers at each
//!   partition's leader (this broker's own partitions directly, others' over the peer
//!   transport, [`kind::WRITE_TXN_MARKERS`]), retrying until each is committed there, then
//!   reports them (`markers_written`).
//!
//! What always holds (as for groups, `broker::groups`):
//! - a transactional id lives on partition `abs(java_hash(id)) % partitions`;
//! - after every call into a coordinator, its records are appended (one batch, in sequence
//!   order) before its answers are sent, under the slot lock;
//! - `records_committed(seq)` is called only once the batch holding `seq` is committed under
//!   the leader epoch it was appended in;
//! - a marker is reported written only once the partition leader answered that the marker is
//!   below its high watermark (or the partition no longer exists);
//! - a coordinator exists only while its partition's replica leads at the epoch it loaded at;
//!   on any role change, or a failed append, it resigns (waiters get NOT_COORDINATOR; its
//!   marker tasks stop) and, if this broker still leads, loads again (and sends the markers of
//!   every PrepareCommit/PrepareAbort again);
//! - loading starts only once the partition's high watermark reaches its log end.
//!
//! Lock order: the slot lock, then a partition's lock; never the other way round.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use keel_core::batch::{BatchBuilder, BatchError, Compression, EndTxnMarker};
use keel_core::error_code::{self as code, ErrorCode, Named};
use keel_core::log::LogError;
use keel_core::partition::{AckStatus, Appended, ProduceError};
use keel_core::txn::{
    Reply, RequestId, Response, TopicPartition, TxnConfig, TxnCoordinator, TxnRecord, TxnResult,
    WriteMarkers,
};
use keel_core::{LeaderEpoch, ProducerId};
use prost::Message as _;
use tokio::sync::oneshot;

use super::groups::OFFSETS_TOPIC;
use super::{Broker, PartitionHandle};
use crate::peer::Incoming;

pub use keel_core::txn::{TRANSACTION_STATE_PARTITIONS_DEFAULT, TRANSACTION_STATE_TOPIC};

/// Kafka's default `transaction.state.log.replication.factor`.
pub const TRANSACTION_STATE_REPLICATION_FACTOR_DEFAULT: i16 = 3;
/// How long a coordinator whose append failed waits before it loads again.
const RELOAD_AFTER_FAILURE: Duration = Duration::from_millis(500);
/// The longest a driver sleeps without looking.
const DRIVER_TICK: Duration = Duration::from_millis(100);
/// How many bytes a load reads per step.
const LOAD_READ_BYTES: usize = 1 << 20;
/// How long a partition leader waits for a marker to be committed before answering
/// REQUEST_TIMED_OUT (the coordinator sends it again).
const MARKER_COMMIT_WAIT: Duration = Duration::from_secs(10);
/// How long the coordinator waits for a leader's answer to a marker request.
const MARKER_CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// The pause before a marker is sent again after a retriable error.
const MARKER_RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// How long a partition leader waits for the coordinator's answer to a verification.
const VERIFY_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a coordinator waits for a leader to take a "partitions added" notice before it
/// answers AddPartitionsToTxn anyway (the leader then verifies on the first write).
const ADDED_CALL_TIMEOUT: Duration = Duration::from_secs(1);

/// Peer message kinds of transactions (after `cluster::kind`'s).
pub mod kind {
    /// A transaction coordinator asks a partition leader to write markers
    /// ([`super::MarkerRequest`], answered by [`super::MarkerAnswer`]).
    pub const WRITE_TXN_MARKERS: u32 = 7;
    /// A partition leader asks a transaction coordinator whether partitions are in a
    /// producer's transaction (KIP-890's verification; [`super::VerifyRequest`], answered by
    /// [`super::VerifyAnswer`]).
    pub const TXN_VERIFY: u32 = 8;
    /// A transaction coordinator tells a partition leader that partitions were added to a
    /// producer's transaction (a [`super::VerifyRequest`] without a transactional id, answered
    /// by an empty [`super::VerifyAnswer`]): the leader takes the producer's first
    /// transactional batch without asking back.
    pub const TXN_PARTITIONS_ADDED: u32 = 9;
}

/// A partition named in a transaction peer message, with an error code in answers.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TxnPartition {
    #[prost(string, tag = "1")]
    pub topic: String,
    #[prost(int32, tag = "2")]
    pub partition: i32,
    /// A Kafka error code; 0: none.
    #[prost(int32, tag = "3")]
    pub error_code: i32,
}

/// Write one transaction's marker to these partitions (all led by the receiver).
#[derive(Clone, PartialEq, prost::Message)]
pub struct MarkerRequest {
    #[prost(int64, tag = "1")]
    pub producer_id: i64,
    #[prost(int32, tag = "2")]
    pub producer_epoch: i32,
    #[prost(int32, tag = "3")]
    pub coordinator_epoch: i32,
    #[prost(bool, tag = "4")]
    pub commit: bool,
    #[prost(message, repeated, tag = "5")]
    pub partitions: Vec<TxnPartition>,
    /// When the transaction started at its coordinator (-1: unknown): a leader refuses the
    /// marker if the producer's open transaction there started later.
    #[prost(int64, tag = "6")]
    pub txn_start_ms: i64,
}

/// Per partition: 0 once the marker is below the leader's high watermark, else the error.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MarkerAnswer {
    #[prost(message, repeated, tag = "1")]
    pub partitions: Vec<TxnPartition>,
}

/// Are these partitions in the producer's transaction?
#[derive(Clone, PartialEq, prost::Message)]
pub struct VerifyRequest {
    #[prost(string, tag = "1")]
    pub transactional_id: String,
    #[prost(int64, tag = "2")]
    pub producer_id: i64,
    #[prost(int32, tag = "3")]
    pub producer_epoch: i32,
    #[prost(message, repeated, tag = "4")]
    pub partitions: Vec<TxnPartition>,
    /// With `TXN_PARTITIONS_ADDED`: when the transaction started (-1: unknown).
    #[prost(int64, tag = "5")]
    pub txn_start_ms: i64,
    /// With `TXN_VERIFY`: add the partitions to the transaction rather than check them
    /// (transaction version 2, Kafka's AddPartitionsToTxn v5 from a partition leader); the
    /// answer waits for the add's record.
    #[prost(bool, tag = "6")]
    pub add: bool,
}

/// The coordinator's answer: a whole-request error, or one per partition, and when the
/// transaction started (-1: unknown).
#[derive(Clone, PartialEq, prost::Message)]
pub struct VerifyAnswer {
    #[prost(int32, tag = "1")]
    pub error_code: i32,
    #[prost(message, repeated, tag = "2")]
    pub partitions: Vec<TxnPartition>,
    #[prost(int64, tag = "3")]
    pub txn_start_ms: i64,
}

/// The transaction coordinator's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnSettings {
    /// `transaction.state.log.num.partitions`.
    pub partitions: i32,
    /// `transaction.state.log.replication.factor` (capped by the live brokers at creation).
    pub replication_factor: i16,
    /// `transaction.max.timeout.ms`, `transactional.id.expiration.ms`.
    pub config: TxnConfig,
}

impl Default for TxnSettings {
    fn default() -> Self {
        TxnSettings {
            partitions: TRANSACTION_STATE_PARTITIONS_DEFAULT,
            replication_factor: TRANSACTION_STATE_REPLICATION_FACTOR_DEFAULT,
            config: TxnConfig::default(),
        }
    }
}

/// Why a coordinator's records could not be appended or committed: it resigns.
#[derive(Debug, thiserror::Error)]
enum DriveError {
    #[error("building the transaction records' batch: {0}")]
    Build(#[from] BatchError),
    #[error("encoding a transaction record: {0}")]
    Encode(String),
    #[error("appending transaction records: the partition's leader epoch moved")]
    EpochMoved,
    #[error("appending transaction records: {0}")]
    Append(#[from] ProduceError),
    #[error("transaction records lost their commit: error {}", Named(*.0))]
    CommitLost(ErrorCode),
}

#[derive(Debug, thiserror::Error)]
enum LoadError {
    #[error("{0}")]
    Read(#[from] LogError),
    #[error("{0}")]
    Records(#[from] BatchError),
}

enum Slot {
    Loading { epoch: LeaderEpoch },
    Active(Box<Active>),
}

impl Slot {
    fn epoch(&self) -> LeaderEpoch {
        match self {
            Slot::Loading { epoch } => *epoch,
            Slot::Active(a) => a.epoch,
        }
    }
}

struct Active {
    epoch: LeaderEpoch,
    partition: Arc<PartitionHandle>,
    coordinator: TxnCoordinator,
    waiters: BTreeMap<RequestId, oneshot::Sender<Response>>,
    unacked: VecDeque<(u64, Appended)>,
}

impl Active {
    /// Appends the coordinator's records (one batch), starts its marker tasks and sends its
    /// ready answers. An append that fails leaves the coordinator ahead of its log: the
    /// caller must resign it.
    fn drain(&mut self, broker: &Broker, index: i32) -> Result<(), DriveError> {
        let records = self.coordinator.poll_records();
        if let Some(&(last_seq, _)) = records.last() {
            let now = broker.clock.now_ms();
            let mut builder = BatchBuilder::new(Compression::None);
            for (seq, record) in &records {
                tracing::debug!(
                    partition = index,
                    epoch = self.epoch.0,
                    seq,
                    id = %record.transactional_id,
                    value = ?record
                        .value
                        .as_ref()
                        .map(|v| (v.producer_id.0, v.producer_epoch, v.state, &v.partitions)),
                    start_ms = record.value.as_ref().map_or(-1, |v| v.start_ms),
                    "transaction record"
                );
                let (key, value) = record
                    .encode()
                    .map_err(|e| DriveError::Encode(e.to_string()))?;
                builder = builder.record(now, Some(&key), value.as_deref());
            }
            let batch = builder.build()?;
            let appended = self.partition.with(|r| {
                if r.leader_epoch() != self.epoch {
                    return Err(DriveError::EpochMoved);
                }
                Ok(r.append(now, batch)?)
            })?;
            self.partition.touch();
            self.partition.drain_effects();
            self.unacked.push_back((last_seq, appended));
        }
        for markers in self.coordinator.poll_markers() {
            tokio::spawn(send_markers(
                broker.this.clone(),
                index,
                self.epoch,
                markers,
            ));
        }
        for (id, response) in self.coordinator.poll_responses() {
            if let Some(tx) = self.waiters.remove(&id) {
                let _ = tx.send(response);
            }
        }
        Ok(())
    }

    fn acknowledge(&mut self) -> Result<(), DriveError> {
        while let Some((seq, appended)) = self.unacked.front() {
            let status = self
                .partition
                .with(|r| r.produce_status(appended.leader_epoch, appended.last_offset));
            match status {
                AckStatus::Waiting => break,
                AckStatus::Acked => {
                    self.coordinator.records_committed(*seq);
                    self.unacked.pop_front();
                }
                AckStatus::Failed(code) => return Err(DriveError::CommitLost(code)),
            }
        }
        Ok(())
    }

    fn resign(self) {
        let Active {
            coordinator,
            mut waiters,
            ..
        } = self;
        for (id, response) in coordinator.resign() {
            if let Some(tx) = waiters.remove(&id) {
                let _ = tx.send(response);
            }
        }
    }
}

/// The transaction coordinators of this broker, by `__transaction_state` partition.
pub struct TxnCoordinators {
    slots: Mutex<BTreeMap<i32, Slot>>,
    next_request: AtomicU64,
    settings: TxnSettings,
}

impl TxnCoordinators {
    pub fn new(settings: TxnSettings) -> TxnCoordinators {
        TxnCoordinators {
            slots: Mutex::new(BTreeMap::new()),
            next_request: AtomicU64::new(1),
            settings,
        }
    }

    pub fn settings(&self) -> &TxnSettings {
        &self.settings
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<i32, Slot>> {
        self.slots.lock().expect("txn slot lock poisoned")
    }
}

/// A call into a transactional id's coordinator that may answer later.
pub enum TxnCall<T> {
    Done(Result<T, ErrorCode>),
    Waiting(oneshot::Receiver<Response>),
}

impl<T> TxnCall<T> {
    /// The answer: NOT_COORDINATOR if the coordinator resigned before answering.
    pub async fn finish(self, unwrap: fn(Response) -> Option<T>) -> Result<T, ErrorCode> {
        match self {
            TxnCall::Done(r) => r,
            TxnCall::Waiting(rx) => match rx.await {
                Ok(response) => unwrap(response).ok_or(code::NOT_COORDINATOR),
                Err(_) => Err(code::NOT_COORDINATOR),
            },
        }
    }
}

impl Broker {
    /// The number of `__transaction_state` partitions, if the topic exists.
    pub(super) fn txn_state_partitions(&self) -> Option<i32> {
        self.with_metadata(|m| {
            m.topic(TRANSACTION_STATE_TOPIC)
                .map(|t| t.partitions.len() as i32)
        })
        .filter(|&n| n > 0)
    }

    /// Runs `f` on the coordinator of `transactional_id`, then appends its records and sends
    /// its answers. NOT_COORDINATOR if this broker does not coordinate the id,
    /// COORDINATOR_LOAD_IN_PROGRESS while it loads.
    pub(super) fn with_txn<R>(
        &self,
        transactional_id: &str,
        f: impl FnOnce(&mut TxnCoordinator, i64) -> R,
    ) -> Result<R, ErrorCode> {
        let n = self.txn_state_partitions().ok_or(code::NOT_COORDINATOR)?;
        let index = keel_core::txn::partition_for(transactional_id, n);
        let mut slots = self.txns.lock();
        let active = match slots.get_mut(&index) {
            None => return Err(code::NOT_COORDINATOR),
            Some(Slot::Loading { .. }) => return Err(code::COORDINATOR_LOAD_IN_PROGRESS),
            Some(Slot::Active(a)) => a,
        };
        let result = f(&mut active.coordinator, self.clock.now_ms());
        if let Err(e) = active.drain(self, index) {
            tracing::error!(partition = index, "transaction coordinator: {e}; resigning");
            self.fail_txn_coordinator(&mut slots, index);
        }
        Ok(result)
    }

    /// Like [`Broker::with_txn`] for a request whose answer may come late.
    pub(super) fn call_txn<T>(
        &self,
        transactional_id: &str,
        f: impl FnOnce(&mut TxnCoordinator, i64, RequestId) -> Reply<T>,
    ) -> TxnCall<T> {
        let Some(n) = self.txn_state_partitions() else {
            return TxnCall::Done(Err(code::NOT_COORDINATOR));
        };
        let index = keel_core::txn::partition_for(transactional_id, n);
        let id = RequestId(self.txns.next_request.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        let mut slots = self.txns.lock();
        let active = match slots.get_mut(&index) {
            None => return TxnCall::Done(Err(code::NOT_COORDINATOR)),
            Some(Slot::Loading { .. }) => {
                return TxnCall::Done(Err(code::COORDINATOR_LOAD_IN_PROGRESS))
            }
            Some(Slot::Active(a)) => a,
        };
        let reply = f(&mut active.coordinator, self.clock.now_ms(), id);
        let call = match reply {
            Reply::Now(t) => TxnCall::Done(Ok(t)),
            Reply::Pending => {
                active.waiters.insert(id, tx);
                TxnCall::Waiting(rx)
            }
        };
        if let Err(e) = active.drain(self, index) {
            tracing::error!(partition = index, "transaction coordinator: {e}; resigning");
            self.fail_txn_coordinator(&mut slots, index);
        }
        call
    }

    /// Every active coordinator, for ListTransactions: `f` on each, and whether any loads.
    pub(super) fn each_txn_coordinator(&self, mut f: impl FnMut(&TxnCoordinator)) -> bool {
        let slots = self.txns.lock();
        let mut loading = false;
        for slot in slots.values() {
            match slot {
                Slot::Loading { .. } => loading = true,
                Slot::Active(a) => f(&a.coordinator),
            }
        }
        loading
    }

    fn fail_txn_coordinator(&self, slots: &mut BTreeMap<i32, Slot>, index: i32) {
        if let Some(Slot::Active(a)) = slots.remove(&index) {
            let partition = a.partition.clone();
            a.resign();
            // Not at once: a load resumes the coordinator's work and appends again at the
            // same instant, so an append that keeps failing (a full disk) would resign and
            // load in a loop that never lets time pass (simulator seed 79).
            self.start_txn_loading_after(slots, &partition, RELOAD_AFTER_FAILURE);
        }
    }

    /// Takes the coordinator role of a `__transaction_state` partition, or gives it up, after
    /// its replica changed role (or was removed: `removed`).
    pub(super) fn txn_state_partition_changed(&self, p: &Arc<PartitionHandle>, removed: bool) {
        let (leader, epoch) = p.with(|r| (r.is_leader(), r.leader_epoch()));
        let leads = leader && !removed;
        let mut slots = self.txns.lock();
        if leads && slots.get(&p.index).map(Slot::epoch) == Some(epoch) {
            return;
        }
        if let Some(Slot::Active(a)) = slots.remove(&p.index) {
            tracing::info!(partition = p.index, "no longer the transaction coordinator");
            a.resign();
        }
        if leads {
            self.start_txn_loading(&mut slots, p);
        }
    }

    fn start_txn_loading(&self, slots: &mut BTreeMap<i32, Slot>, p: &Arc<PartitionHandle>) {
        self.start_txn_loading_after(slots, p, Duration::ZERO);
    }

    /// Loads the coordinator of `p` after `delay` (requests meanwhile get
    /// COORDINATOR_LOAD_IN_PROGRESS).
    fn start_txn_loading_after(
        &self,
        slots: &mut BTreeMap<i32, Slot>,
        p: &Arc<PartitionHandle>,
        delay: Duration,
    ) {
        let (leader, epoch) = p.with(|r| (r.is_leader(), r.leader_epoch()));
        if !leader || p.deleted.load(Ordering::SeqCst) {
            return;
        }
        slots.insert(p.index, Slot::Loading { epoch });
        let (broker, p) = (self.this.clone(), p.clone());
        tokio::spawn(async move {
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            load(broker, p, epoch).await
        });
    }

    /// Whether the coordinator of `index` is still the one loaded at `epoch`.
    fn txn_coordinator_is(&self, index: i32, epoch: LeaderEpoch) -> bool {
        matches!(self.txns.lock().get(&index), Some(Slot::Active(a)) if a.epoch == epoch)
    }

    fn drive_txn_once(&self, index: i32, epoch: LeaderEpoch) -> Option<Option<i64>> {
        let mut slots = self.txns.lock();
        let Some(Slot::Active(active)) = slots.get_mut(&index) else {
            return None;
        };
        if active.epoch != epoch {
            return None;
        }
        let mut step = || {
            active.acknowledge()?;
            let now = self.clock.now_ms();
            if active
                .coordinator
                .next_deadline_ms()
                .is_some_and(|d| now >= d)
            {
                active.coordinator.poll(now);
            }
            active.drain(self, index)?;
            Ok::<_, DriveError>(active.coordinator.next_deadline_ms())
        };
        match step() {
            Ok(deadline) => Some(deadline),
            Err(e) => {
                tracing::error!(partition = index, "transaction coordinator: {e}; resigning");
                self.fail_txn_coordinator(&mut slots, index);
                None
            }
        }
    }

    /// Reports markers written to the coordinator of `index` if it is still the one at
    /// `epoch`.
    fn report_markers(&self, index: i32, epoch: LeaderEpoch, m: &WriteMarkers) {
        let mut slots = self.txns.lock();
        let Some(Slot::Active(active)) = slots.get_mut(&index) else {
            return;
        };
        if active.epoch != epoch {
            return;
        }
        let now = self.clock.now_ms();
        active.coordinator.markers_written(
            now,
            &m.transactional_id,
            m.producer_id,
            m.producer_epoch,
            &m.partitions,
        );
        if let Err(e) = active.drain(self, index) {
            tracing::error!(partition = index, "transaction coordinator: {e}; resigning");
            self.fail_txn_coordinator(&mut slots, index);
        }
    }

    // -----------------------------------------------------------------------------------------
    // The partition leader's side of markers and verification

    /// Writes a marker to a partition this broker leads and waits until it is committed (below
    /// the high watermark). Errors are Kafka codes: NOT_LEADER_OR_FOLLOWER and
    /// UNKNOWN_TOPIC_OR_PARTITION, REQUEST_TIMED_OUT, NOT_ENOUGH_REPLICAS and storage errors
    /// (the coordinator retries), INVALID_PRODUCER_EPOCH and TRANSACTION_COORDINATOR_FENCED.
    pub(super) async fn write_marker_here(
        &self,
        topic: &str,
        index: i32,
        producer_id: ProducerId,
        producer_epoch: i16,
        marker: EndTxnMarker,
        txn_start_ms: i64,
    ) -> Result<(), ErrorCode> {
        let p = self.leader(topic, index)?;
        let now = self.clock.now_ms();
        // acks=all, as Kafka appends markers: NOT_ENOUGH_REPLICAS before appending, so that a
        // retry during an ISR outage does not pile up markers.
        let appended = p
            .with(|r| {
                r.check_enough_replicas()?;
                r.append_marker_of(now, producer_id, producer_epoch, marker, txn_start_ms)
            })
            .map_err(|e| {
                if let ProduceError::Storage(e) = &e {
                    tracing::error!(topic, partition = index, "marker append failed: {e}");
                }
                e.code()
            })?;
        tracing::debug!(
            topic,
            partition = index,
            producer_id = producer_id.0,
            producer_epoch,
            commit = marker.commit,
            coordinator_epoch = marker.coordinator_epoch,
            txn_start_ms,
            offset = appended.base_offset.0,
            "marker appended"
        );
        p.touch();
        p.drain_effects();
        let mut hw = p.subscribe();
        let deadline = tokio::time::Instant::now() + MARKER_COMMIT_WAIT;
        loop {
            match p.with(|r| r.produce_status(appended.leader_epoch, appended.last_offset)) {
                AckStatus::Acked => {
                    if topic == OFFSETS_TOPIC {
                        // Before the answer: the transaction completes at its coordinator
                        // only after every partition's marker, so no later transaction of
                        // this producer can have offsets pending here yet.
                        self.offsets_txn_decided(
                            index,
                            appended.leader_epoch,
                            producer_id,
                            marker.commit,
                        );
                    }
                    return Ok(());
                }
                AckStatus::Failed(code) => return Err(code),
                AckStatus::Waiting => {}
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, hw.changed()).await {
                Ok(Ok(())) => {}
                // The partition is gone from this broker.
                Ok(Err(_)) => return Err(code::NOT_LEADER_OR_FOLLOWER),
                Err(_) => return Err(code::REQUEST_TIMED_OUT),
            }
        }
    }

    /// Serves a coordinator's marker request (peer kind [`kind::WRITE_TXN_MARKERS`]).
    async fn serve_markers(&self, body: Bytes) -> MarkerAnswer {
        let Ok(request) = MarkerRequest::decode(body) else {
            return MarkerAnswer::default();
        };
        let marker = EndTxnMarker {
            commit: request.commit,
            coordinator_epoch: request.coordinator_epoch,
        };
        let epoch = i16::try_from(request.producer_epoch).unwrap_or(-1);
        let writes: Vec<_> = request
            .partitions
            .iter()
            .map(|tp| {
                self.write_marker_here(
                    &tp.topic,
                    tp.partition,
                    ProducerId(request.producer_id),
                    epoch,
                    marker,
                    request.txn_start_ms,
                )
            })
            .collect();
        let results = join_all(writes).await;
        MarkerAnswer {
            partitions: request
                .partitions
                .into_iter()
                .zip(results)
                .map(|(tp, r)| TxnPartition {
                    error_code: r.err().unwrap_or(code::NONE).into(),
                    ..tp
                })
                .collect(),
        }
    }

    /// Serves a partition leader's verification (peer kind [`kind::TXN_VERIFY`]).
    /// A partition leader's implicit add (transaction version 2), at this coordinator: the
    /// answer, per partition, once the add's record is durable.
    async fn serve_add(&self, body: Bytes) -> VerifyAnswer {
        let failed = |e: ErrorCode| VerifyAnswer {
            error_code: e.into(),
            partitions: Vec::new(),
            txn_start_ms: -1,
        };
        let Ok(request) = VerifyRequest::decode(body) else {
            return failed(code::INVALID_REQUEST);
        };
        let add = keel_core::txn::AddPartitionsRequest {
            transactional_id: request.transactional_id.clone(),
            producer_id: ProducerId(request.producer_id),
            producer_epoch: i16::try_from(request.producer_epoch).unwrap_or(-1),
            partitions: request
                .partitions
                .iter()
                .map(|tp| TopicPartition {
                    topic: tp.topic.clone(),
                    partition: tp.partition,
                })
                .collect(),
            transaction_version: keel_core::txn::TRANSACTION_VERSION_2,
        };
        let call = self.call_txn(&request.transactional_id, |c, now, id| {
            c.handle_add_partitions(now, id, &add)
        });
        let answer = call
            .finish(|r| match r {
                Response::AddPartitions(e) => Some(e),
                _ => None,
            })
            .await;
        match answer {
            Err(e) => failed(e),
            Ok(e) => VerifyAnswer {
                error_code: 0,
                txn_start_ms: self.txn_start_here(&request.transactional_id),
                partitions: request
                    .partitions
                    .into_iter()
                    .map(|tp| TxnPartition {
                        error_code: e.into(),
                        ..tp
                    })
                    .collect(),
            },
        }
    }

    fn serve_verify(&self, body: Bytes) -> VerifyAnswer {
        let Ok(request) = VerifyRequest::decode(body) else {
            return VerifyAnswer {
                error_code: code::INVALID_REQUEST.into(),
                partitions: Vec::new(),
                txn_start_ms: -1,
            };
        };
        let partitions: Vec<TopicPartition> = request
            .partitions
            .iter()
            .map(|tp| TopicPartition {
                topic: tp.topic.clone(),
                partition: tp.partition,
            })
            .collect();
        match self.verify_txn_here(
            &request.transactional_id,
            ProducerId(request.producer_id),
            i16::try_from(request.producer_epoch).unwrap_or(-1),
            partitions,
        ) {
            Err(e) => VerifyAnswer {
                error_code: e.into(),
                partitions: Vec::new(),
                txn_start_ms: -1,
            },
            Ok((list, txn_start_ms)) => VerifyAnswer {
                error_code: 0,
                txn_start_ms,
                partitions: list
                    .into_iter()
                    .map(|(tp, e)| TxnPartition {
                        topic: tp.topic,
                        partition: tp.partition,
                        error_code: e.into(),
                    })
                    .collect(),
            },
        }
    }

    /// KIP-890's verification, at this broker's coordinator of `transactional_id`, and when
    /// the transaction started (-1: unknown).
    #[allow(clippy::type_complexity)]
    pub(super) fn verify_txn_here(
        &self,
        transactional_id: &str,
        producer_id: ProducerId,
        producer_epoch: i16,
        partitions: Vec<TopicPartition>,
    ) -> Result<(Vec<(TopicPartition, ErrorCode)>, i64), ErrorCode> {
        let request = keel_core::txn::AddPartitionsRequest {
            transactional_id: transactional_id.to_string(),
            producer_id,
            producer_epoch,
            partitions,
            transaction_version: 0,
        };
        self.with_txn(transactional_id, |c, _| {
            let start = c.txn_start_ms(transactional_id).unwrap_or(-1);
            c.verify_partitions(&request).map(|list| (list, start))
        })?
    }

    /// When the open transaction of `transactional_id` started, if this broker coordinates it
    /// (-1 otherwise).
    pub(super) fn txn_start_here(&self, transactional_id: &str) -> i64 {
        self.with_txn(transactional_id, |c, _| c.txn_start_ms(transactional_id))
            .ok()
            .flatten()
            .unwrap_or(-1)
    }

    /// Asks the coordinator of `transactional_id` (here or on its broker) whether `topic`-
    /// `index` is in the producer's transaction; on yes, the partition may take the
    /// producer's transactional batches ([`keel_core::partition::PartitionReplica::allow_txn`]).
    /// The error to answer the produce with otherwise.
    pub(super) async fn verify_txn(
        &self,
        transactional_id: &str,
        topic: &str,
        index: i32,
        producer_id: ProducerId,
        producer_epoch: i16,
    ) -> Result<(), ErrorCode> {
        let tp = TopicPartition {
            topic: topic.to_string(),
            partition: index,
        };
        let local = self.verify_txn_here(transactional_id, producer_id, producer_epoch, vec![tp]);
        let answer = match local {
            Err(code::NOT_COORDINATOR) => {
                let remote = (topic, index, producer_id, producer_epoch, false);
                self.verify_txn_remote(transactional_id, remote).await
            }
            Err(e) => Err(e),
            Ok((list, start)) => Ok((list.first().map_or(code::NONE, |(_, e)| *e), start)),
        };
        match answer {
            Ok((code::NONE, start)) => {
                if let Ok(p) = self.leader(topic, index) {
                    p.with(|r| r.allow_txn_started(producer_id, producer_epoch, start));
                }
                Ok(())
            }
            Ok((e, _)) | Err(e) => Err(e),
        }
    }

    /// After partitions were added to a producer's transaction (durably): tells their leaders,
    /// so that the producer's first transactional batch there needs no verification round
    /// trip. Best effort, bounded by [`ADDED_CALL_TIMEOUT`]: a leader that missed it verifies.
    pub(super) async fn announce_added(
        &self,
        producer_id: ProducerId,
        producer_epoch: i16,
        partitions: &[TopicPartition],
        txn_start_ms: i64,
    ) {
        let mut remote: BTreeMap<i32, Vec<TxnPartition>> = BTreeMap::new();
        for tp in partitions {
            if let Ok(p) = self.leader(&tp.topic, tp.partition) {
                p.with(|r| r.allow_txn_started(producer_id, producer_epoch, txn_start_ms));
                continue;
            }
            let leader =
                self.with_metadata(|m| m.partition(&tp.topic, tp.partition).map(|p| p.leader.0));
            if let Some(l) = leader.filter(|&l| l >= 0 && l != self.node_id()) {
                remote.entry(l).or_default().push(TxnPartition {
                    topic: tp.topic.clone(),
                    partition: tp.partition,
                    error_code: 0,
                });
            }
        }
        let Some(peers) = self.cluster.peers() else {
            return;
        };
        let calls: Vec<_> = remote
            .into_iter()
            .map(|(leader, partitions)| {
                let body = VerifyRequest {
                    transactional_id: String::new(),
                    producer_id: producer_id.0,
                    producer_epoch: producer_epoch.into(),
                    partitions,
                    txn_start_ms,
                    add: false,
                }
                .encode_to_vec();
                peers.call(
                    leader,
                    kind::TXN_PARTITIONS_ADDED,
                    Bytes::from(body),
                    ADDED_CALL_TIMEOUT,
                )
            })
            .collect();
        join_all(calls).await;
    }

    /// Transaction version 2's implicit add, at the coordinator of `transactional_id` on
    /// another broker: adds `topic`-`index` to the producer's transaction (the answer waits for
    /// the add's record), and on success lets the partition take the producer's transactional
    /// batches. The error otherwise.
    pub(super) async fn add_txn(
        &self,
        transactional_id: &str,
        topic: &str,
        index: i32,
        producer_id: ProducerId,
        producer_epoch: i16,
    ) -> Result<(), ErrorCode> {
        let remote = (topic, index, producer_id, producer_epoch, true);
        match self.verify_txn_remote(transactional_id, remote).await? {
            (code::NONE, start) => {
                if let Ok(p) = self.leader(topic, index) {
                    p.with(|r| r.allow_txn_started(producer_id, producer_epoch, start));
                }
                Ok(())
            }
            (e, _) => Err(e),
        }
    }

    /// Asks the coordinator of `transactional_id` on another broker to verify, or with `add`
    /// to add, the partition `topic`-`index` for the producer.
    async fn verify_txn_remote(
        &self,
        transactional_id: &str,
        (topic, index, producer_id, producer_epoch, add): (&str, i32, ProducerId, i16, bool),
    ) -> Result<(ErrorCode, i64), ErrorCode> {
        let n = self
            .txn_state_partitions()
            .ok_or(code::COORDINATOR_NOT_AVAILABLE)?;
        let state_index = keel_core::txn::partition_for(transactional_id, n);
        let leader = self
            .with_metadata(|m| {
                m.partition(TRANSACTION_STATE_TOPIC, state_index)
                    .map(|p| p.leader)
            })
            .filter(|l| l.0 >= 0)
            .ok_or(code::COORDINATOR_NOT_AVAILABLE)?;
        if leader.0 == self.node_id() {
            return Err(code::COORDINATOR_LOAD_IN_PROGRESS);
        }
        let peers = self
            .cluster
            .peers()
            .ok_or(code::COORDINATOR_NOT_AVAILABLE)?;
        let request = VerifyRequest {
            transactional_id: transactional_id.to_string(),
            producer_id: producer_id.0,
            producer_epoch: producer_epoch.into(),
            partitions: vec![TxnPartition {
                topic: topic.to_string(),
                partition: index,
                error_code: 0,
            }],
            txn_start_ms: -1,
            add,
        };
        let envelope = peers
            .call(
                leader.0,
                kind::TXN_VERIFY,
                Bytes::from(request.encode_to_vec()),
                VERIFY_CALL_TIMEOUT,
            )
            .await
            .map_err(|_| code::COORDINATOR_NOT_AVAILABLE)?;
        let answer =
            VerifyAnswer::decode(envelope.body).map_err(|_| code::COORDINATOR_NOT_AVAILABLE)?;
        if answer.error_code != 0 {
            return Err(answer.error_code as ErrorCode);
        }
        let error = answer
            .partitions
            .first()
            .map_or(code::TRANSACTION_ABORTABLE, |p| p.error_code as ErrorCode);
        Ok((error, answer.txn_start_ms))
    }
}

/// Handles the transaction peer messages; returns the others.
pub fn dispatch_txn_peer(broker: &Arc<Broker>, message: Incoming) -> Option<Incoming> {
    match message.envelope.kind {
        kind::WRITE_TXN_MARKERS => {
            let broker = broker.clone();
            tokio::spawn(async move {
                let answer = broker.serve_markers(message.envelope.body.clone()).await;
                respond(&broker, &message, &answer);
            });
            None
        }
        kind::TXN_PARTITIONS_ADDED => {
            if let Ok(request) = VerifyRequest::decode(message.envelope.body.clone()) {
                let epoch = i16::try_from(request.producer_epoch).unwrap_or(-1);
                for tp in &request.partitions {
                    if let Ok(p) = broker.leader(&tp.topic, tp.partition) {
                        p.with(|r| {
                            r.allow_txn_started(
                                ProducerId(request.producer_id),
                                epoch,
                                request.txn_start_ms,
                            )
                        });
                    }
                }
            }
            respond(broker, &message, &VerifyAnswer::default());
            None
        }
        kind::TXN_VERIFY => {
            let adds = VerifyRequest::decode(message.envelope.body.clone()).is_ok_and(|r| r.add);
            if adds {
                let broker = broker.clone();
                tokio::spawn(async move {
                    let answer = broker.serve_add(message.envelope.body.clone()).await;
                    respond(&broker, &message, &answer);
                });
            } else {
                let answer = broker.serve_verify(message.envelope.body.clone());
                respond(broker, &message, &answer);
            }
            None
        }
        _ => Some(message),
    }
}

/// Answers a transaction peer request with `answer`, under the request's kind.
fn respond(broker: &Broker, message: &Incoming, answer: &impl prost::Message) {
    if let Some(peers) = broker.cluster.peers() {
        let body = Bytes::from(answer.encode_to_vec());
        let _ = peers.respond(message, message.envelope.kind, body);
    }
}

/// Runs the futures concurrently; their outputs in order.
async fn join_all<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut futs: Vec<std::pin::Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("invariant: every future finished"))
        .collect()
}

/// Whether a marker error means "send it again" (Kafka's
/// `TransactionMarkerRequestCompletionHandler`).
fn marker_retriable(error: ErrorCode) -> bool {
    !matches!(
        error,
        code::NONE | code::INVALID_PRODUCER_EPOCH | code::TRANSACTION_COORDINATOR_FENCED
    )
}

/// Writes one transaction's markers at each partition's leader, retrying until every one is
/// committed there (or the partition is gone), then reports them to the coordinator. Stops
/// when the coordinator of `index` at `epoch` is gone (its successor sends them again).
async fn send_markers(broker: Weak<Broker>, index: i32, epoch: LeaderEpoch, m: WriteMarkers) {
    let marker = EndTxnMarker {
        commit: m.result == TxnResult::Commit,
        coordinator_epoch: m.coordinator_epoch,
    };
    let mut left: Vec<TopicPartition> = m.partitions.clone();
    loop {
        let Some(b) = broker.upgrade() else {
            return;
        };
        if !b.txn_coordinator_is(index, epoch) {
            return;
        }
        // The partitions by leader; a partition with no leader, or gone, is done.
        let mut by_leader: BTreeMap<i32, Vec<TopicPartition>> = BTreeMap::new();
        let mut done = Vec::new();
        for tp in &left {
            let leader = b.with_metadata(|md| {
                md.partition(&tp.topic, tp.partition)
                    .map(|p| p.leader)
                    .ok_or(())
            });
            match leader {
                Err(()) => done.push(tp.clone()),
                Ok(l) if l.0 < 0 => {}
                Ok(l) => by_leader.entry(l.0).or_default().push(tp.clone()),
            }
        }
        let me = b.node_id();
        let mut calls = Vec::new();
        for (leader, tps) in by_leader {
            let b = b.clone();
            let m = &m;
            calls.push(async move {
                if leader == me {
                    let writes: Vec<_> = tps
                        .iter()
                        .map(|tp| {
                            b.write_marker_here(
                                &tp.topic,
                                tp.partition,
                                m.producer_id,
                                m.producer_epoch,
                                marker,
                                m.txn_start_ms,
                            )
                        })
                        .collect();
                    let results = join_all(writes).await;
                    tps.into_iter()
                        .zip(results)
                        .map(|(tp, r)| (tp, r.err().unwrap_or(code::NONE)))
                        .collect::<Vec<_>>()
                } else {
                    remote_markers(&b, leader, m, tps).await
                }
            });
        }
        let results: Vec<(TopicPartition, ErrorCode)> =
            join_all(calls).await.into_iter().flatten().collect();
        for (tp, error) in results {
            if !marker_retriable(error) {
                if error != code::NONE {
                    tracing::warn!(
                        txn = %m.transactional_id,
                        topic = %tp.topic,
                        partition = tp.partition,
                        "marker refused: {}; counted as written",
                        Named(error)
                    );
                }
                done.push(tp);
            }
        }
        if !done.is_empty() {
            left.retain(|tp| !done.contains(tp));
            b.report_markers(
                index,
                epoch,
                &WriteMarkers {
                    partitions: done,
                    ..m.clone()
                },
            );
        }
        if left.is_empty() {
            return;
        }
        drop(b);
        tokio::time::sleep(MARKER_RETRY_BACKOFF).await;
    }
}

/// One marker request to broker `leader`; on no answer, every partition is retriable.
async fn remote_markers(
    b: &Broker,
    leader: i32,
    m: &WriteMarkers,
    tps: Vec<TopicPartition>,
) -> Vec<(TopicPartition, ErrorCode)> {
    let failed = |tps: Vec<TopicPartition>| {
        tps.into_iter()
            .map(|tp| (tp, code::REQUEST_TIMED_OUT))
            .collect()
    };
    let Some(peers) = b.cluster.peers() else {
        return failed(tps);
    };
    let request = MarkerRequest {
        producer_id: m.producer_id.0,
        producer_epoch: m.producer_epoch.into(),
        coordinator_epoch: m.coordinator_epoch,
        commit: m.result == TxnResult::Commit,
        txn_start_ms: m.txn_start_ms,
        partitions: tps
            .iter()
            .map(|tp| TxnPartition {
                topic: tp.topic.clone(),
                partition: tp.partition,
                error_code: 0,
            })
            .collect(),
    };
    let answer = peers
        .call(
            leader,
            kind::WRITE_TXN_MARKERS,
            Bytes::from(request.encode_to_vec()),
            MARKER_CALL_TIMEOUT,
        )
        .await
        .ok()
        .and_then(|e| MarkerAnswer::decode(e.body).ok());
    let Some(answer) = answer else {
        return failed(tps);
    };
    tps.into_iter()
        .map(|tp| {
            let error = answer
                .partitions
                .iter()
                .find(|p| p.topic == tp.topic && p.partition == tp.partition)
                .map_or(code::REQUEST_TIMED_OUT, |p| p.error_code as ErrorCode);
            (tp, error)
        })
        .collect()
}

fn read_txn_records(p: &PartitionHandle) -> Result<Vec<TxnRecord>, LoadError> {
    let (mut at, hw) = p.with(|r| (r.log().log_start(), r.high_watermark()));
    let mut records = Vec::new();
    while at < hw {
        let batches = p
            .with(|r| r.log().read(at, LOAD_READ_BYTES, hw))
            .inspect_err(|e| p.read_failed(e))?;
        let Some(last) = batches.last() else {
            break;
        };
        let next = last.next_offset();
        for batch in &batches {
            if batch.is_control() {
                continue;
            }
            for record in batch.records()? {
                if record.offset < at {
                    continue;
                }
                let Some(key) = record.key.as_deref() else {
                    continue;
                };
                match TxnRecord::decode(key, record.value.as_deref()) {
                    Ok(Some(r)) => records.push(r),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(
                        partition = p.index,
                        offset = record.offset.0,
                        "not a transaction record: {e}; skipped"
                    ),
                }
            }
        }
        if next <= at {
            break;
        }
        at = next;
    }
    Ok(records)
}

async fn load(broker: Weak<Broker>, p: Arc<PartitionHandle>, epoch: LeaderEpoch) {
    let still_loading = |b: &Broker| matches!(b.txns.lock().get(&p.index), Some(Slot::Loading { epoch: e }) if *e == epoch);
    loop {
        let Some(b) = broker.upgrade() else {
            return;
        };
        if !still_loading(&b) || p.deleted.load(Ordering::SeqCst) {
            return;
        }
        let ready = p.with(|r| {
            r.is_leader() && r.leader_epoch() == epoch && r.high_watermark() >= r.log().end()
        });
        if ready {
            break;
        }
        drop(b);
        let mut hw = p.subscribe();
        let _ = tokio::time::timeout(DRIVER_TICK, hw.changed()).await;
    }
    let Some(b) = broker.upgrade() else {
        return;
    };
    let records = match read_txn_records(&p) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(
                partition = p.index,
                "loading transactions: {e}; trying again"
            );
            drop(b);
            tokio::time::sleep(Duration::from_secs(1)).await;
            if let Some(b) = broker.upgrade() {
                let mut slots = b.txns.lock();
                if matches!(slots.get(&p.index), Some(Slot::Loading { epoch: e }) if *e == epoch) {
                    slots.remove(&p.index);
                    b.start_txn_loading(&mut slots, &p);
                }
            }
            return;
        }
    };
    let count = records.len();
    let coordinator = match TxnCoordinator::load(b.txns.settings.config.clone(), epoch.0, records) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(
                partition = p.index,
                "the transaction records do not load: {e}"
            );
            return;
        }
    };
    {
        let mut slots = b.txns.lock();
        if !matches!(slots.get(&p.index), Some(Slot::Loading { epoch: e }) if *e == epoch) {
            return;
        }
        tracing::info!(
            partition = p.index,
            epoch = epoch.0,
            records = count,
            "transaction coordinator loaded"
        );
        let mut active = Box::new(Active {
            epoch,
            partition: p.clone(),
            coordinator,
            waiters: BTreeMap::new(),
            unacked: VecDeque::new(),
        });
        // The markers of every PrepareCommit/PrepareAbort go out again.
        if let Err(e) = active.drain(&b, p.index) {
            tracing::error!(partition = p.index, "transaction coordinator: {e}");
            return;
        }
        slots.insert(p.index, Slot::Active(active));
    }
    drop(b);
    drive(broker, p, epoch).await;
}

async fn drive(broker: Weak<Broker>, p: Arc<PartitionHandle>, epoch: LeaderEpoch) {
    let mut hw = p.subscribe();
    loop {
        let Some(b) = broker.upgrade() else {
            return;
        };
        let Some(deadline) = b.drive_txn_once(p.index, epoch) else {
            return;
        };
        let now = b.clock.now_ms();
        drop(b);
        let wait = deadline.map_or(DRIVER_TICK, |d| {
            Duration::from_millis((d - now).clamp(0, i64::MAX) as u64).min(DRIVER_TICK)
        });
        let _ = tokio::time::timeout(wait, hw.changed()).await;
    }
}
