//! The node side of the consumer group coordinator: one core [`GroupCoordinator`] per
//! `__consumer_offsets` partition this broker leads, fed from and written to that partition.
//!
//! What it owns:
//! - the internal topic [`OFFSETS_TOPIC`], created on the first FindCoordinator for a group
//!   (`offsets.topic.num.partitions` partitions, replication factor
//!   min(`offsets.topic.replication.factor`, live brokers), `cleanup.policy=compact`);
//! - a [`Slot`] per partition this broker leads: `Loading` from the moment it takes the
//!   leadership until the coordinator is rebuilt (`GroupCoordinator::load`) from the records
//!   of the partition's log, then `Active`;
//! - per active coordinator, a driver task ([`drive`]) that reports durable records
//!   (`records_committed`) when the partition's high watermark passes them, and runs
//!   `poll(now)` at `next_deadline_ms()`.
//!
//! What always holds:
//! - a group lives on partition `abs(java_hash(group_id)) % partitions` ([`partition_for`]),
//!   Kafka's `Utils.abs(groupId.hashCode) % numPartitions`, so tools agree with clients;
//! - after every call into a coordinator, its records are appended (one batch, in sequence
//!   order) before its answers are sent, under the slot lock: the log order is the sequence
//!   order, and a later load replays exactly what was answered as durable;
//! - `records_committed(seq)` is called only once the batch holding `seq` is committed under
//!   the leader epoch it was appended in (`produce_status` is `Acked`);
//! - a coordinator exists only while its partition's replica leads at the epoch it loaded at;
//!   on any role change, or a failed append, it resigns (its waiters get NOT_COORDINATOR) and,
//!   if this broker still leads, loads again;
//! - loading starts only once the partition's high watermark reaches its log end, so the
//!   coordinator is built from committed records only.
//!
//! Lock order: the slot lock, then a partition's lock; never the other way round.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use keel_core::batch::{BatchBuilder, BatchError, Compression};
use keel_core::error_code::{self as code, ErrorCode, Named};
use keel_core::group::{
    GroupConfig, GroupCoordinator, GroupRecord, LogEntry, Reply, RequestId, Response,
};
use keel_core::log::LogError;
use keel_core::partition::{AckStatus, Appended, ProduceError};
use keel_core::{LeaderEpoch, ProducerId};
use tokio::sync::oneshot;

use super::{Broker, PartitionHandle};

/// The internal topic holding committed offsets and group metadata.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// Kafka's default `offsets.topic.num.partitions`.
pub const OFFSETS_TOPIC_PARTITIONS_DEFAULT: i32 = 50;
/// Kafka's default `offsets.topic.replication.factor`.
pub const OFFSETS_TOPIC_REPLICATION_FACTOR_DEFAULT: i16 = 3;
/// Kafka's default `offsets.topic.segment.bytes` (100 MiB).
pub const OFFSETS_TOPIC_SEGMENT_BYTES_DEFAULT: i32 = 100 << 20;
/// The longest a driver sleeps without looking (a request may have moved the deadline).
const DRIVER_TICK: Duration = Duration::from_millis(100);
/// How many bytes a load reads per step.
const LOAD_READ_BYTES: usize = 1 << 20;

pub use keel_core::group::partition_for;

/// Why a coordinator's records could not be appended or committed: the coordinator resigns
/// (and loads again if this broker still leads its partition).
#[derive(Debug, thiserror::Error)]
enum DriveError {
    #[error("building the group records' batch: {0}")]
    Build(#[from] BatchError),
    #[error("appending group records: the partition's leader epoch moved")]
    EpochMoved,
    #[error("appending group records: {0}")]
    Append(#[from] ProduceError),
    #[error("group records lost their commit: error {}", Named(*.0))]
    CommitLost(ErrorCode),
}

/// Why the group records of a `__consumer_offsets` partition could not be read (the load is
/// tried again).
#[derive(Debug, thiserror::Error)]
enum LoadError {
    #[error("{0}")]
    Read(#[from] LogError),
    #[error("{0}")]
    Records(#[from] BatchError),
}

/// One `__consumer_offsets` partition this broker leads.
enum Slot {
    /// Being loaded. `decided`: the transactions whose marker became durable meanwhile (the
    /// load may have read the log before the marker), decided on the loaded coordinator.
    Loading {
        epoch: LeaderEpoch,
        decided: Vec<(ProducerId, bool)>,
    },
    Active(Box<Active>),
}

impl Slot {
    fn epoch(&self) -> LeaderEpoch {
        match self {
            Slot::Loading { epoch, .. } => *epoch,
            Slot::Active(a) => a.epoch,
        }
    }

    fn loading(epoch: LeaderEpoch) -> Slot {
        Slot::Loading {
            epoch,
            decided: Vec::new(),
        }
    }

    fn is_loading_at(&self, at: LeaderEpoch) -> bool {
        matches!(self, Slot::Loading { epoch, .. } if *epoch == at)
    }
}

struct Active {
    epoch: LeaderEpoch,
    partition: Arc<PartitionHandle>,
    coordinator: GroupCoordinator,
    /// Requests waiting for a late answer.
    waiters: BTreeMap<RequestId, oneshot::Sender<Response>>,
    /// Appended batches not yet committed: the last record sequence each holds, and the append.
    unacked: VecDeque<(u64, Appended)>,
}

impl Active {
    /// Appends the coordinator's records (one batch per run of records of the same
    /// transaction, or of none) and sends its ready answers. An append that fails leaves the
    /// coordinator ahead of its log: the caller must resign it.
    fn drain(&mut self, broker: &Broker) -> Result<(), DriveError> {
        let records = self.coordinator.poll_records();
        let now = broker.clock.now_ms();
        for run in records.chunk_by(|a, b| a.txn == b.txn) {
            let last_seq = run.last().expect("chunks are not empty").seq;
            let mut builder = BatchBuilder::new(Compression::None);
            if let Some(p) = run[0].txn {
                builder = builder.transactional(p.producer_id, p.producer_epoch);
            }
            for out in run {
                let (key, value) = out.record.encode();
                builder = builder.record(now, Some(&key), value.as_deref());
            }
            let batch = builder.build()?;
            let transactional = run[0].txn.is_some();
            let appended = self.partition.with(|r| {
                if r.leader_epoch() != self.epoch {
                    return Err(DriveError::EpochMoved);
                }
                if transactional {
                    Ok(r.append_coordinator_txn(now, batch)?)
                } else {
                    Ok(r.append(now, batch)?)
                }
            })?;
            self.partition.touch();
            self.partition.drain_effects();
            self.unacked.push_back((last_seq, appended));
        }
        for (id, response) in self.coordinator.poll_responses() {
            if let Some(tx) = self.waiters.remove(&id) {
                // The requester may have gone (its connection closed): nothing to do.
                let _ = tx.send(response);
            }
        }
        Ok(())
    }

    /// Reports the batches the high watermark now covers. Err: one can never be committed.
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

    /// Resigns: every waiter gets an answer (NOT_COORDINATOR, or by dropping its sender).
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

/// The coordinators of this broker, by `__consumer_offsets` partition.
pub struct Coordinators {
    slots: Mutex<BTreeMap<i32, Slot>>,
    next_request: AtomicU64,
    config: GroupConfig,
}

/// Why a group request cannot reach a coordinator here, as a Kafka error code.
pub type NotHere = ErrorCode;

impl Coordinators {
    pub fn new(config: GroupConfig) -> Coordinators {
        Coordinators {
            slots: Mutex::new(BTreeMap::new()),
            next_request: AtomicU64::new(1),
            config,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<i32, Slot>> {
        self.slots.lock().expect("group slot lock poisoned")
    }
}

/// A call into a group's coordinator that may answer later.
pub enum Call<T> {
    Done(Result<T, NotHere>),
    Waiting(oneshot::Receiver<Response>),
}

impl<T> Call<T> {
    /// The answer: NOT_COORDINATOR if the coordinator resigned before answering, or the late
    /// answer was of another kind (which the core never gives).
    pub async fn finish(self, unwrap: fn(Response) -> Option<T>) -> Result<T, NotHere> {
        match self {
            Call::Done(r) => r,
            Call::Waiting(rx) => match rx.await {
                Ok(response) => unwrap(response).ok_or(code::NOT_COORDINATOR),
                Err(_) => Err(code::NOT_COORDINATOR),
            },
        }
    }
}

impl Broker {
    /// The number of `__consumer_offsets` partitions, if the topic exists.
    pub(super) fn offsets_partitions(&self) -> Option<i32> {
        self.with_metadata(|m| m.topic(OFFSETS_TOPIC).map(|t| t.partitions.len() as i32))
            .filter(|&n| n > 0)
    }

    /// Runs `f` on the coordinator of `group_id`'s partition, then appends its records and
    /// sends its answers. NOT_COORDINATOR if this broker does not coordinate the group,
    /// COORDINATOR_LOAD_IN_PROGRESS while it loads.
    pub(super) fn with_group<R>(
        &self,
        group_id: &str,
        f: impl FnOnce(&mut GroupCoordinator, i64) -> R,
    ) -> Result<R, NotHere> {
        let n = self.offsets_partitions().ok_or(code::NOT_COORDINATOR)?;
        self.with_partition_coordinator(partition_for(group_id, n), f)
    }

    fn with_partition_coordinator<R>(
        &self,
        index: i32,
        f: impl FnOnce(&mut GroupCoordinator, i64) -> R,
    ) -> Result<R, NotHere> {
        let mut slots = self.groups.lock();
        let active = match slots.get_mut(&index) {
            None => return Err(code::NOT_COORDINATOR),
            Some(Slot::Loading { .. }) => return Err(code::COORDINATOR_LOAD_IN_PROGRESS),
            Some(Slot::Active(a)) => a,
        };
        let result = f(&mut active.coordinator, self.clock.now_ms());
        if let Err(e) = active.drain(self) {
            tracing::error!(partition = index, "group coordinator: {e}; resigning");
            self.fail_coordinator(&mut slots, index);
        }
        Ok(result)
    }

    /// Like [`Broker::with_group`] for a request whose answer may come late.
    pub(super) fn call_group<T>(
        &self,
        group_id: &str,
        f: impl FnOnce(&mut GroupCoordinator, i64, RequestId) -> Reply<T>,
    ) -> Call<T> {
        let Some(n) = self.offsets_partitions() else {
            return Call::Done(Err(code::NOT_COORDINATOR));
        };
        let index = partition_for(group_id, n);
        let id = RequestId(self.groups.next_request.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        let mut slots = self.groups.lock();
        let active = match slots.get_mut(&index) {
            None => return Call::Done(Err(code::NOT_COORDINATOR)),
            Some(Slot::Loading { .. }) => {
                return Call::Done(Err(code::COORDINATOR_LOAD_IN_PROGRESS))
            }
            Some(Slot::Active(a)) => a,
        };
        let reply = f(&mut active.coordinator, self.clock.now_ms(), id);
        let call = match reply {
            Reply::Now(t) => Call::Done(Ok(t)),
            Reply::Pending => {
                active.waiters.insert(id, tx);
                Call::Waiting(rx)
            }
        };
        if let Err(e) = active.drain(self) {
            tracing::error!(partition = index, "group coordinator: {e}; resigning");
            self.fail_coordinator(&mut slots, index);
        }
        call
    }

    /// The COMMIT (`commit`) or ABORT marker of `producer_id` is committed on
    /// `__consumer_offsets` partition `index`, appended in `epoch` (Kafka's
    /// `GroupCoordinator.onTransactionCompleted`): the coordinator decides the offsets the
    /// transaction committed there. A coordinator still loading decides them once loaded.
    pub(super) fn offsets_txn_decided(
        &self,
        index: i32,
        epoch: LeaderEpoch,
        producer_id: ProducerId,
        commit: bool,
    ) {
        let mut slots = self.groups.lock();
        match slots.get_mut(&index) {
            Some(Slot::Loading { epoch: e, decided }) if *e == epoch => {
                decided.push((producer_id, commit));
            }
            Some(Slot::Active(a)) if a.epoch == epoch => {
                a.coordinator.complete_txn(producer_id, commit);
                if let Err(e) = a.drain(self) {
                    tracing::error!(partition = index, "group coordinator: {e}; resigning");
                    self.fail_coordinator(&mut slots, index);
                }
            }
            // Another epoch: the coordinator of that epoch loads the marker from the log.
            _ => {}
        }
    }

    /// Every active coordinator, for ListGroups: `f` on each, and whether any still loads.
    pub(super) fn each_coordinator(&self, mut f: impl FnMut(&GroupCoordinator)) -> bool {
        let slots = self.groups.lock();
        let mut loading = false;
        for slot in slots.values() {
            match slot {
                Slot::Loading { .. } => loading = true,
                Slot::Active(a) => f(&a.coordinator),
            }
        }
        loading
    }

    /// Resigns the coordinator of `index` after a failure and loads it again if this broker
    /// still leads the partition.
    fn fail_coordinator(&self, slots: &mut BTreeMap<i32, Slot>, index: i32) {
        if let Some(Slot::Active(a)) = slots.remove(&index) {
            let partition = a.partition.clone();
            a.resign();
            self.start_loading(slots, &partition);
        }
    }

    /// Takes the coordinator role of a `__consumer_offsets` partition, or gives it up, after
    /// its replica changed role (or was removed: `removed`).
    pub(super) fn offsets_partition_changed(&self, p: &Arc<PartitionHandle>, removed: bool) {
        let (leader, epoch) = p.with(|r| (r.is_leader(), r.leader_epoch()));
        let leads = leader && !removed;
        let mut slots = self.groups.lock();
        if leads && slots.get(&p.index).map(Slot::epoch) == Some(epoch) {
            return;
        }
        match slots.remove(&p.index) {
            Some(Slot::Active(a)) => {
                tracing::info!(partition = p.index, "no longer the group coordinator");
                a.resign();
            }
            Some(Slot::Loading { .. }) | None => {}
        }
        if leads {
            self.start_loading(&mut slots, p);
        }
    }

    fn start_loading(&self, slots: &mut BTreeMap<i32, Slot>, p: &Arc<PartitionHandle>) {
        let (leader, epoch) = p.with(|r| (r.is_leader(), r.leader_epoch()));
        if !leader || p.deleted.load(Ordering::SeqCst) {
            return;
        }
        slots.insert(p.index, Slot::loading(epoch));
        tokio::spawn(load(self.this.clone(), p.clone(), epoch));
    }

    /// One step of a driver: acknowledgements, due timers, draining. The next deadline, or
    /// `None` once the coordinator is gone.
    fn drive_once(&self, index: i32, epoch: LeaderEpoch) -> Option<i64> {
        let mut slots = self.groups.lock();
        let Some(Slot::Active(active)) = slots.get_mut(&index) else {
            return None;
        };
        if active.epoch != epoch {
            return None;
        }
        let mut step = || {
            active.acknowledge()?;
            let now = self.clock.now_ms();
            if now >= active.coordinator.next_deadline_ms() {
                active.coordinator.poll(now);
            }
            active.drain(self)?;
            Ok::<_, DriveError>(active.coordinator.next_deadline_ms())
        };
        match step() {
            Ok(deadline) => Some(deadline),
            Err(e) => {
                tracing::error!(partition = index, "group coordinator: {e}; resigning");
                self.fail_coordinator(&mut slots, index);
                None
            }
        }
    }
}

/// Reads every record of a partition's log up to its high watermark and decodes the group
/// records, the transactional ones with their producer, and the transaction markers; records
/// that are not group records are skipped with a warning.
fn read_group_records(p: &PartitionHandle) -> Result<Vec<LogEntry>, LoadError> {
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
                if let Some(marker) = batch.end_txn_marker()? {
                    records.push(LogEntry::Marker {
                        producer_id: batch.producer_id(),
                        commit: marker.commit,
                    });
                }
                continue;
            }
            let txn = batch.is_transactional().then(|| batch.producer_id());
            for record in batch.records()? {
                if record.offset < at {
                    continue;
                }
                let Some(key) = record.key.as_deref() else {
                    tracing::warn!(
                        offset = record.offset.0,
                        "a record without key in {OFFSETS_TOPIC}: skipped"
                    );
                    continue;
                };
                match GroupRecord::decode(key, record.value.as_deref()) {
                    Ok(record) => records.push(match txn {
                        None => LogEntry::Record(record),
                        Some(producer_id) => LogEntry::Txn {
                            producer_id,
                            record,
                        },
                    }),
                    Err(e) => {
                        tracing::warn!(
                            partition = p.index,
                            offset = record.offset.0,
                            "not a group record: {e}; skipped"
                        )
                    }
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

/// Loads the coordinator of `p` at `epoch` once everything in its log is committed, then
/// installs it and starts its driver.
async fn load(broker: Weak<Broker>, p: Arc<PartitionHandle>, epoch: LeaderEpoch) {
    let still_loading = |b: &Broker| {
        b.groups
            .lock()
            .get(&p.index)
            .is_some_and(|s| s.is_loading_at(epoch))
    };
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
    let records = match read_group_records(&p) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(partition = p.index, "loading groups: {e}; trying again");
            drop(b);
            tokio::time::sleep(Duration::from_secs(1)).await;
            if let Some(b) = broker.upgrade() {
                let mut slots = b.groups.lock();
                if slots.get(&p.index).is_some_and(|s| s.is_loading_at(epoch)) {
                    slots.remove(&p.index);
                    b.start_loading(&mut slots, &p);
                }
            }
            return;
        }
    };
    let count = records.len();
    let prefix = format!("{}-{}-{:x}-", b.node_id(), epoch.0, rand::random::<u32>());
    let mut coordinator =
        match GroupCoordinator::load(b.groups.config.clone(), prefix, b.clock.now_ms(), records) {
            Ok(c) => c,
            Err(e) => {
                // Stays Loading: clients are told COORDINATOR_LOAD_IN_PROGRESS, the log says why.
                tracing::error!(partition = p.index, "the group records do not load: {e}");
                return;
            }
        };
    {
        let mut slots = b.groups.lock();
        let Some(Slot::Loading { epoch: e, decided }) = slots.get_mut(&p.index) else {
            return;
        };
        if *e != epoch {
            return;
        }
        for (producer_id, commit) in decided.drain(..) {
            coordinator.complete_txn(producer_id, commit);
        }
        tracing::info!(
            partition = p.index,
            epoch = epoch.0,
            records = count,
            "group coordinator loaded"
        );
        slots.insert(
            p.index,
            Slot::Active(Box::new(Active {
                epoch,
                partition: p.clone(),
                coordinator,
                waiters: BTreeMap::new(),
                unacked: VecDeque::new(),
            })),
        );
    }
    drop(b);
    drive(broker, p, epoch).await;
}

/// Runs a coordinator's timers and acknowledgements until it is gone.
async fn drive(broker: Weak<Broker>, p: Arc<PartitionHandle>, epoch: LeaderEpoch) {
    let mut hw = p.subscribe();
    loop {
        let Some(b) = broker.upgrade() else {
            return;
        };
        let Some(deadline) = b.drive_once(p.index, epoch) else {
            return;
        };
        let now = b.clock.now_ms();
        drop(b);
        let wait =
            Duration::from_millis((deadline - now).clamp(0, i64::MAX) as u64).min(DRIVER_TICK);
        let _ = tokio::time::timeout(wait, hw.changed()).await;
    }
}
