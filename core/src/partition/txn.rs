//! The transaction side of a partition replica: transactional batches from producers, COMMIT
//! and ABORT markers from the transaction coordinator, the last stable offset and the aborted
//! transactions a `read_committed` fetch is told (Kafka's `ProducerStateManager` transaction
//! half, `UnifiedLog.lastStableOffset`, `TransactionIndex`).
//!
//! The replica keeps a [`TxnTracker`] that has seen every batch of its log in offset order:
//! leader appends ([`PartitionReplica::append`], [`PartitionReplica::append_marker`]), follower
//! appends (replication) and, on recovery, the whole log read again from its start (keel has no
//! `.txnindex` file yet: recovery reads the log). A truncation updates it in place
//! (`TxnTracker::truncate_from`); a damaged replica's discard rebuilds it from the log.
//!
//! # Rules on the leader, for a batch with a producer id (Kafka's `ProducerAppendInfo`)
//! 1. An epoch older than the producer's last marker's is fenced: INVALID_PRODUCER_EPOCH.
//! 2. A non-transactional batch while the producer has an open transaction here:
//!    INVALID_TXN_STATE.
//! 3. A transactional batch that would open a transaction (the producer has none open here
//!    at the batch's epoch) needs the coordinator's word that the partition is in the
//!    producer's transaction at this epoch (KIP-890 part 1's verification):
//!    [`PartitionReplica::allow_txn`], which the shell calls after asking the coordinator.
//!    Without it: [`ProduceError::TxnNotVerified`]. A marker clears the producer's
//!    verification, so a write delayed past its transaction's end cannot open a transaction no
//!    coordinator knows of (the hanging transaction of KIP-890). A transaction open here at an
//!    older epoch does not count (Kafka's `hasOngoingTransaction(producerId, epoch)`): under
//!    transaction version 2 the next transaction's epoch is handed out before the previous
//!    one's markers are written, and its first write here must not slip into the previous
//!    transaction, whose late COMMIT would then commit it; the coordinator holds the
//!    verification (CONCURRENT_TRANSACTIONS) until those markers are written.
//! 4. A marker from a coordinator epoch older than the producer's last marker's:
//!    TRANSACTION_COORDINATOR_FENCED; a marker whose producer epoch is older than the
//!    producer's current epoch: INVALID_PRODUCER_EPOCH.
//!
//! # What always holds
//! - The tracker's end is the log's end after every append the replica makes: it has seen
//!   exactly the log's batches (a batch below its end, after a truncation it was not told of,
//!   rebuilds it from the log).
//! - The last stable offset is at most the high watermark.

use std::collections::BTreeMap;

use super::{Appended, PartitionReplica, ProduceError};
use crate::batch::{Batch, BatchHeader, EndTxnMarker};
use crate::log::{Log, LogError};
use crate::producer::txn::{AbortedTxn, TxnStateError, TxnTracker};
use crate::producer::txn_index::{IndexReport, TxnIndexFiles};
use crate::producer::ProducerError;
use crate::storage::Storage;
use crate::types::{Offset, ProducerId};

/// How many bytes a rebuild reads per step.
const REBUILD_READ_BYTES: usize = 1 << 20;

/// The attribute bit of a transactional batch.
const ATTR_TRANSACTIONAL: i16 = 0x10;
/// The attribute bit of a control batch.
const ATTR_CONTROL: i16 = 0x20;

/// What the transaction coordinator told this leader about producers' transactions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Verified {
    /// The producers whose next transactional batch the coordinator has verified: the epoch
    /// verified, and when the transaction it belongs to started (the coordinator's clock; -1:
    /// not told).
    next: BTreeMap<ProducerId, (i16, i64)>,
    /// The producers whose open transaction here a verified batch opened: its first offset
    /// and when its transaction started at the coordinator.
    open: BTreeMap<ProducerId, (Offset, i64)>,
}

impl Verified {
    pub(super) fn new() -> Verified {
        Verified::default()
    }

    fn epoch(&self, producer_id: ProducerId) -> Option<i16> {
        self.next.get(&producer_id).map(|&(epoch, _)| epoch)
    }
}

/// A tracker that has seen every batch of `log`, read from its start.
pub(super) fn tracker_from_log<S: Storage>(log: &Log<S>) -> Result<TxnTracker, LogError> {
    let mut tracker = TxnTracker::new(log.log_start());
    let mut at = log.log_start();
    while at < log.end() {
        let batches = log.read(at, REBUILD_READ_BYTES, log.end())?;
        let Some(last) = batches.last() else {
            break;
        };
        let next = last.next_offset();
        for batch in &batches {
            if batch.base_offset() < tracker.end() {
                // The batch holding the log start (DeleteRecords cut inside it).
                continue;
            }
            if let Err(error) = tracker.record_batch(batch) {
                return Err(LogError::Corrupt {
                    file: format!("the control batch at offset {}", batch.base_offset()),
                    position: 0,
                    error,
                });
            }
        }
        if next <= at {
            break;
        }
        at = next;
    }
    Ok(tracker)
}

/// The log's `.txnindex` files ([`TxnIndexFiles`]) and what they were last brought in line
/// with.
#[derive(Debug, Default)]
pub(super) struct IndexState {
    files: TxnIndexFiles,
    /// The log's segment bases when the files were last brought in line.
    bases: Vec<Offset>,
    /// The next sync must reconcile every file (recovery, or a failed write).
    dirty: bool,
    /// What recovery found and did, and the writes that failed since.
    pub(super) report: IndexReport,
    pub(super) write_errors: u64,
}

impl IndexState {
    /// The files as recovery finds them, to be reconciled with the tracker by the replica's
    /// first [`PartitionReplica::sync_txn_index`]. (If the log could not be read, the tracker
    /// is empty and the files go with it: the replica is damaged and rebuilds both when it
    /// has fetched its log back.)
    pub(super) fn recover<S: Storage>(log: &Log<S>) -> IndexState {
        let (files, report) = TxnIndexFiles::load(log.storage()).unwrap_or_default();
        IndexState {
            files,
            bases: Vec::new(),
            dirty: true,
            report,
            write_errors: 0,
        }
    }
}

impl<S: Storage> PartitionReplica<S> {
    /// Rebuilds the transaction tracker from the whole log (after a truncation or a new log
    /// start). If the log cannot be read, the tracker starts empty at the log end: the
    /// replica is damaged then, and leads nothing until it fetched back.
    pub(super) fn rebuild_txns(&mut self) {
        self.txns = tracker_from_log(&self.log).unwrap_or_else(|_| TxnTracker::new(self.log.end()));
        self.verified.open.clear();
        self.txns.high_watermark_updated(self.high_watermark);
        self.txn_index.dirty = true;
        self.sync_txn_index();
    }

    /// Brings the `.txnindex` files in line with the tracker: appends what an ABORT marker
    /// added, or, when the log's segments changed (a roll, retention, a truncation, a
    /// cleaning) or after recovery, reconciles every file. A failed write is counted and
    /// leaves the files to the next reconcile, and to recovery's: the files are rebuilt from
    /// the log, never trusted over it, so an index write never fails an append.
    pub(super) fn sync_txn_index(&mut self) {
        let state = &mut self.txn_index;
        let bases = self.log.segment_bases();
        let aborted = self.txns.all_aborted();
        let storage = self.log.storage_mut();
        let result = if state.dirty || bases != state.bases {
            state.files.reconcile(storage, &bases, aborted).map(|r| {
                state.report.rewritten += r.rewritten;
                state.report.appended += r.appended;
                state.report.removed += r.removed;
            })
        } else {
            state.files.append_new(storage, &bases, aborted)
        };
        match result {
            Ok(()) => {
                state.dirty = false;
                state.bases = bases;
            }
            Err(_) => {
                state.dirty = true;
                state.write_errors += 1;
            }
        }
    }

    /// What recovery found in the `.txnindex` files and did about them, and the index writes
    /// that failed since (each repaired by the next reconcile).
    pub fn txn_index_report(&self) -> (&IndexReport, u64) {
        (&self.txn_index.report, self.txn_index.write_errors)
    }

    /// Records a batch the log just took, with its offsets stamped (a follower's append).
    pub(super) fn track_batch(&mut self, batch: &Batch) {
        if batch.base_offset() < self.txns.end() {
            self.rebuild_txns();
            return;
        }
        if self.txns.record_batch(batch).is_err() {
            // A control batch the leader wrote that is no marker we can read: the replica's
            // view of transactions is rebuilt from what the log holds (skipping nothing).
            self.rebuild_txns();
        }
        self.txns.high_watermark_updated(self.high_watermark);
        if batch.is_control() {
            self.sync_txn_index();
        }
    }

    /// Records a client batch the leader just appended (`header.base_offset` stamped).
    pub(super) fn track_data(&mut self, header: &BatchHeader) {
        if header.base_offset < self.txns.end() {
            self.rebuild_txns();
            return;
        }
        let transactional = header.attributes & ATTR_TRANSACTIONAL != 0;
        debug_assert!(
            header.attributes & ATTR_CONTROL == 0,
            "clients write no control batch"
        );
        let pid = header.producer_id;
        if transactional && self.txns.open_txn(pid).is_none() {
            match self.verified.next.get(&pid) {
                Some(&(epoch, start)) if epoch == header.producer_epoch && start >= 0 => {
                    self.verified.open.insert(pid, (header.base_offset, start));
                }
                _ => {
                    self.verified.open.remove(&pid);
                }
            }
        }
        self.txns.record_data(
            header.producer_id,
            transactional,
            header.base_offset,
            header.last_offset(),
        );
        self.txns.high_watermark_updated(self.high_watermark);
    }

    /// The leader's transaction checks for a client batch (rules 1 to 3 of the module doc).
    pub(super) fn check_txn_produce(&self, batch: &Batch) -> Result<(), ProduceError> {
        let producer_id = batch.producer_id();
        if producer_id.0 < 0 {
            if batch.is_transactional() {
                return Err(ProduceError::InvalidRecord(
                    "a transactional batch needs a producer id".into(),
                ));
            }
            return Ok(());
        }
        let epoch = batch.producer_epoch();
        let fenced = self
            .txns
            .check_epoch(producer_id, epoch)
            .err()
            .filter(|_| !crate::planted::active(crate::planted::Bug::FencedEpochAccepted));
        if let Some(current) = fenced {
            return Err(ProduceError::Producer(
                ProducerError::InvalidProducerEpoch {
                    producer_id,
                    current,
                    got: epoch,
                },
            ));
        }
        self.txns
            .check_data(producer_id, batch.is_transactional())
            .map_err(ProduceError::Txn)?;
        if batch.is_transactional()
            && !self.open_txn_at(producer_id, epoch)
            && self.verified.epoch(producer_id) != Some(epoch)
        {
            return Err(ProduceError::TxnNotVerified {
                producer_id,
                producer_epoch: epoch,
            });
        }
        Ok(())
    }

    /// Whether a transactional batch from `producer_id` at `producer_epoch` would need the
    /// coordinator's verification before it is appended (the shell asks before the append).
    pub fn txn_needs_verification(&self, producer_id: ProducerId, producer_epoch: i16) -> bool {
        producer_id.0 >= 0
            && !self.open_txn_at(producer_id, producer_epoch)
            && self.verified.epoch(producer_id) != Some(producer_epoch)
    }

    /// Whether `producer_id` has a transaction open here whose batches carry `epoch` (rule 3:
    /// one at an older epoch is the previous transaction's, waiting for its marker).
    fn open_txn_at(&self, producer_id: ProducerId, epoch: i16) -> bool {
        self.txns.open_txn(producer_id).is_some()
            && self.producers.entry(producer_id).map(|e| e.epoch()) == Some(epoch)
    }

    /// The coordinator confirmed that this partition is in `producer_id`'s transaction at
    /// `producer_epoch`: its next transactional batch may open a transaction here. Kept until
    /// the producer's next marker (or a newer verification).
    pub fn allow_txn(&mut self, producer_id: ProducerId, producer_epoch: i16) {
        self.allow_txn_started(producer_id, producer_epoch, -1);
    }

    /// [`PartitionReplica::allow_txn`], told when the transaction started at its coordinator
    /// (`txn_start_ms`, -1: unknown). A transaction opened here under that verification then
    /// refuses the markers of transactions that started before it
    /// ([`PartitionReplica::append_marker_of`]).
    pub fn allow_txn_started(
        &mut self,
        producer_id: ProducerId,
        producer_epoch: i16,
        txn_start_ms: i64,
    ) {
        let entry = self
            .verified
            .next
            .entry(producer_id)
            .or_insert((producer_epoch, txn_start_ms));
        if producer_epoch > entry.0 || (producer_epoch == entry.0 && txn_start_ms > entry.1) {
            *entry = (producer_epoch, txn_start_ms);
        }
    }

    /// Appends a coordinator's transactional batch (the group coordinator's offsets committed
    /// inside a transaction, Kafka's append with origin `COORDINATOR`): the transaction checks
    /// of a client batch (a fenced epoch, the KIP-890 verification when the batch would open a
    /// transaction here) but no sequence check, since a coordinator writes no sequence.
    pub fn append_coordinator_txn(
        &mut self,
        now_ms: i64,
        batch: Batch,
    ) -> Result<Appended, ProduceError> {
        if !self.is_leader() {
            return Err(ProduceError::NotLeaderOrFollower);
        }
        if !batch.is_transactional() || batch.producer_id().0 < 0 {
            return Err(ProduceError::InvalidRecord(
                "a coordinator's transactional batch needs a producer id".into(),
            ));
        }
        self.validate(now_ms, &batch)?;
        self.check_txn_produce(&batch)?;
        let batch = self.stored_form(batch)?;
        let (producer_id, epoch) = (batch.producer_id(), batch.producer_epoch());
        if let Some(current) = self
            .producers
            .entry(producer_id)
            .map(|e| e.epoch())
            .filter(|&c| epoch < c)
        {
            return Err(ProduceError::Producer(
                ProducerError::InvalidProducerEpoch {
                    producer_id,
                    current,
                    got: epoch,
                },
            ));
        }
        let mut header = batch.header();
        let info = self.log.append(now_ms, batch, self.leader_epoch)?;
        header.base_offset = info.base_offset;
        header.partition_leader_epoch = self.leader_epoch;
        self.producers.record(&header);
        self.track_data(&header);
        Ok(Appended {
            base_offset: info.base_offset,
            last_offset: info.last_offset,
            log_append_time_ms: -1,
            duplicate: false,
            leader_epoch: self.leader_epoch,
        })
    }

    /// Whether a coordinator's transactional batch of `producer_id` at `producer_epoch` would
    /// be refused for a fenced epoch: the epoch the partition holds for it, if newer.
    pub fn txn_epoch_fenced(&self, producer_id: ProducerId, producer_epoch: i16) -> Option<i16> {
        let current = self
            .producers
            .entry(producer_id)
            .map(|e| e.epoch())
            .into_iter()
            .chain(self.txns.marker_epoch(producer_id))
            .max();
        current.filter(|&c| producer_epoch < c)
    }

    /// Appends a transaction marker, as the leader (WriteTxnMarkers): the COMMIT or ABORT
    /// control batch of `producer_id` at `producer_epoch`, ending its open transaction here
    /// (a marker with no open transaction completes nothing, and is still written, as Kafka
    /// does). Not durable until synced; committed once the high watermark passes it.
    pub fn append_marker(
        &mut self,
        now_ms: i64,
        producer_id: ProducerId,
        producer_epoch: i16,
        marker: EndTxnMarker,
    ) -> Result<Appended, ProduceError> {
        self.append_marker_of(now_ms, producer_id, producer_epoch, marker, -1)
    }

    /// [`PartitionReplica::append_marker`] for the transaction that started at
    /// `txn_start_ms` at its coordinator (-1: unknown). A marker of a transaction that started
    /// before the producer's open transaction here (whose verification said when it started)
    /// is refused with TRANSACTION_COORDINATOR_FENCED, which the coordinator counts as
    /// written: with transaction version 1 a marker request delayed in the network past its
    /// transaction's end, or sent twice, carries the same producer epoch as the next
    /// transaction, and would end it (a late ABORT would abort the next transaction's
    /// committed writes). KIP-890 part 2's epoch bump per transaction is Kafka's answer; this
    /// is keel's within version 1.
    pub fn append_marker_of(
        &mut self,
        now_ms: i64,
        producer_id: ProducerId,
        producer_epoch: i16,
        marker: EndTxnMarker,
        txn_start_ms: i64,
    ) -> Result<Appended, ProduceError> {
        if !self.is_leader() {
            return Err(ProduceError::NotLeaderOrFollower);
        }
        if producer_id.0 < 0 || producer_epoch < 0 {
            return Err(ProduceError::InvalidRecord(
                "a marker needs a producer id and epoch".into(),
            ));
        }
        self.txns
            .check_marker(producer_id, marker.coordinator_epoch)
            .map_err(ProduceError::Txn)?;
        let current = self
            .producers
            .entry(producer_id)
            .map(|e| e.epoch())
            .into_iter()
            .chain(self.txns.marker_epoch(producer_id))
            .max();
        if let Some(current) = current.filter(|&c| producer_epoch < c) {
            return Err(ProduceError::Producer(
                ProducerError::InvalidProducerEpoch {
                    producer_id,
                    current,
                    got: producer_epoch,
                },
            ));
        }
        if let (Some(&(first, open_start)), Some(open_first)) = (
            self.verified.open.get(&producer_id),
            self.txns.open_txn(producer_id),
        ) {
            let stale = first == open_first && txn_start_ms >= 0 && txn_start_ms < open_start;
            if stale {
                return Err(ProduceError::Txn(TxnStateError::StaleMarker {
                    producer_id,
                    marker_txn_start_ms: txn_start_ms,
                    open_txn_start_ms: open_start,
                }));
            }
        }
        let batch = marker
            .batch(producer_id, producer_epoch, now_ms)
            .map_err(ProduceError::Corrupt)?;
        let mut header = batch.header();
        let info = self.log.append(now_ms, batch.clone(), self.leader_epoch)?;
        header.base_offset = info.base_offset;
        header.partition_leader_epoch = self.leader_epoch;
        self.producers.record(&header);
        let mut stamped = batch;
        stamped.stamp(info.base_offset, self.leader_epoch);
        self.track_batch(&stamped);
        self.verified.next.remove(&producer_id);
        self.verified.open.remove(&producer_id);
        Ok(Appended {
            base_offset: info.base_offset,
            last_offset: info.last_offset,
            log_append_time_ms: -1,
            duplicate: false,
            leader_epoch: self.leader_epoch,
        })
    }

    /// The last stable offset: below it, every transaction is decided and its marker
    /// committed (Kafka's `UnifiedLog.lastStableOffset`). `read_committed` reads below it.
    pub fn last_stable_offset(&self) -> Offset {
        let lso = self.txns.last_stable_offset(self.high_watermark);
        debug_assert!(
            lso <= self.high_watermark,
            "the LSO is at most the high watermark"
        );
        lso
    }

    /// The aborted transactions a `read_committed` fetch from `fetch_offset` up to
    /// `upper_bound` is told, in marker order.
    pub fn aborted_txns(&self, fetch_offset: Offset, upper_bound: Offset) -> Vec<AbortedTxn> {
        self.txns.aborted_txns(fetch_offset, upper_bound)
    }

    /// The transaction tracker (tests, DescribeProducers).
    pub fn txns(&self) -> &TxnTracker {
        &self.txns
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{BatchBuilder, Compression};
    use crate::error_code as code;
    use crate::log::LogConfig;
    use crate::partition::ProduceRules;
    use crate::storage::MemStorage;
    use crate::types::LeaderEpoch;

    const NOW: i64 = 1_700_000_000_000;
    const PID: ProducerId = ProducerId(7);

    fn open(log: MemStorage, snaps: &mut MemStorage) -> PartitionReplica<MemStorage> {
        let rules = ProduceRules::default();
        PartitionReplica::open(log, snaps, LogConfig::default(), rules, LeaderEpoch(3), NOW)
            .expect("open")
    }

    fn txn_batch(pid: ProducerId, epoch: i16, seq: i32, n: usize, transactional: bool) -> Batch {
        let mut b = BatchBuilder {
            transactional,
            ..BatchBuilder::new(Compression::None).idempotent(pid, epoch, seq)
        };
        for i in 0..n {
            b = b.record(NOW, Some(format!("k{i}").as_bytes()), Some(b"v"));
        }
        b.build().unwrap()
    }

    fn marker(commit: bool) -> EndTxnMarker {
        EndTxnMarker {
            commit,
            coordinator_epoch: 1,
        }
    }

    /// KIP-890 part 1 (`UnifiedLog.maybeStartTransactionVerification`): a transactional batch
    /// that would open a transaction needs the coordinator's verification; the marker clears it.
    #[test]
    fn a_transactional_write_needs_the_coordinators_verification() {
        let mut snaps = MemStorage::new();
        let mut p = open(MemStorage::new(), &mut snaps);
        let err = p.append(NOW, txn_batch(PID, 0, 0, 2, true)).unwrap_err();
        assert_eq!(err.code(), code::INVALID_TXN_STATE, "{err}");
        assert!(p.txn_needs_verification(PID, 0));
        p.allow_txn(PID, 0);
        p.append(NOW, txn_batch(PID, 0, 0, 2, true)).unwrap();
        p.append(NOW, txn_batch(PID, 0, 2, 1, true)).unwrap();
        p.append_marker(NOW, PID, 0, marker(true)).unwrap();
        let err = p.append(NOW, txn_batch(PID, 0, 3, 1, true)).unwrap_err();
        assert_eq!(
            err.code(),
            code::INVALID_TXN_STATE,
            "a write after the marker needs a new verification: {err}"
        );
    }

    /// Transaction version 2 (KIP-890 part 2): the producer's next transaction runs at the
    /// bumped epoch, which it learns before the previous transaction's marker is written here.
    /// Its first write here needs the coordinator's verification even though the previous
    /// transaction is still open here, so that it cannot join that transaction and be
    /// committed by its marker; once the marker is here, the verified write opens a
    /// transaction of its own.
    #[test]
    fn a_write_at_a_new_epoch_does_not_join_the_open_transaction_of_the_old() {
        let mut snaps = MemStorage::new();
        let mut p = open(MemStorage::new(), &mut snaps);
        p.allow_txn(PID, 0);
        p.append(NOW, txn_batch(PID, 0, 0, 1, true)).unwrap();
        assert!(
            !p.txn_needs_verification(PID, 0),
            "the open transaction's epoch"
        );
        // The next transaction's epoch, before the COMMIT marker (at epoch 1) is here.
        assert!(p.txn_needs_verification(PID, 1));
        let err = p.append(NOW, txn_batch(PID, 1, 0, 1, true)).unwrap_err();
        assert_eq!(err.code(), code::INVALID_TXN_STATE, "{err}");
        let m = p.append_marker(NOW, PID, 1, marker(true)).unwrap();
        assert!(p.txn_needs_verification(PID, 1));
        p.allow_txn(PID, 1);
        let a = p.append(NOW, txn_batch(PID, 1, 0, 1, true)).unwrap();
        assert_eq!(
            a.base_offset,
            m.last_offset.plus(1),
            "after the marker, in a transaction of its own"
        );
        assert_eq!(p.txns().open_txn(PID), Some(a.base_offset));
        // A write of the ended transaction (epoch 0) is fenced by the marker's epoch.
        let err = p.append(NOW, txn_batch(PID, 0, 1, 1, true)).unwrap_err();
        assert_eq!(err.code(), code::INVALID_PRODUCER_EPOCH, "{err}");
    }

    /// A marker request of an earlier transaction that arrives after the producer's next
    /// transaction opened here (delayed in the network, or sent twice) is refused and ends
    /// nothing: with transaction version 1 both carry the same producer epoch, and a late
    /// ABORT would abort the next transaction's committed writes (KIP-890 part 2 bumps the
    /// epoch per transaction instead). A marker of the open transaction itself, or
    /// one whose transaction's start is unknown, is appended as before.
    #[test]
    fn a_late_marker_of_an_earlier_transaction_does_not_end_the_next() {
        let mut snaps = MemStorage::new();
        let mut p = open(MemStorage::new(), &mut snaps);
        p.allow_txn_started(PID, 0, 100);
        p.append(NOW, txn_batch(PID, 0, 0, 1, true)).unwrap();
        p.append_marker_of(NOW, PID, 0, marker(false), 100).unwrap();
        // The next transaction, started at 200, opens here.
        p.allow_txn_started(PID, 0, 200);
        p.append(NOW, txn_batch(PID, 0, 1, 1, true)).unwrap();
        let open = p.txns().open_txn(PID);
        assert_eq!(open, Some(Offset(2)));
        // The first transaction's ABORT again, late.
        let err = p
            .append_marker_of(NOW, PID, 0, marker(false), 100)
            .unwrap_err();
        assert_eq!(err.code(), code::TRANSACTION_COORDINATOR_FENCED, "{err}");
        assert_eq!(p.txns().open_txn(PID), open, "the open transaction goes on");
        assert_eq!(p.log().end(), Offset(3), "nothing appended");
        // Its own COMMIT ends it.
        p.append_marker_of(NOW, PID, 0, marker(true), 200).unwrap();
        assert_eq!(p.txns().open_txn(PID), None);
        // Without a start (an older coordinator's request), a marker is taken as before.
        p.allow_txn_started(PID, 0, 300);
        p.append(NOW, txn_batch(PID, 0, 2, 1, true)).unwrap();
        p.append_marker_of(NOW, PID, 0, marker(false), -1).unwrap();
        assert_eq!(p.txns().open_txn(PID), None);
    }

    /// `UnifiedLog.lastStableOffset`: the LSO stops at the first open transaction and passes
    /// it once its marker is below the high watermark; an abort is listed for read_committed.
    #[test]
    fn the_last_stable_offset_waits_for_the_marker_and_aborts_are_listed() {
        let mut snaps = MemStorage::new();
        let mut p = open(MemStorage::new(), &mut snaps);
        p.append(NOW, txn_batch(ProducerId(-1), -1, -1, 2, false))
            .unwrap();
        p.allow_txn(PID, 0);
        p.append(NOW, txn_batch(PID, 0, 0, 3, true)).unwrap();
        p.sync().unwrap();
        assert_eq!(p.high_watermark(), Offset(5));
        assert_eq!(
            p.last_stable_offset(),
            Offset(2),
            "stops at the open transaction"
        );
        let m = p.append_marker(NOW, PID, 0, marker(false)).unwrap();
        assert_eq!(m.base_offset, Offset(5));
        assert_eq!(
            p.last_stable_offset(),
            Offset(2),
            "the marker is not committed yet"
        );
        p.sync().unwrap();
        assert_eq!(p.last_stable_offset(), Offset(6));
        let aborted = p.aborted_txns(Offset(0), Offset(6));
        assert_eq!(aborted.len(), 1);
        assert_eq!(
            (aborted[0].producer_id, aborted[0].first_offset),
            (PID, Offset(2))
        );
        assert!(p.aborted_txns(Offset(6), Offset(6)).is_empty());
    }

    /// `ProducerAppendInfo`: a non-transactional batch inside an open transaction is
    /// INVALID_TXN_STATE; after a fencing abort (bumped epoch) the old epoch is fenced.
    #[test]
    fn a_fenced_epoch_and_a_plain_write_inside_a_transaction_are_refused() {
        let mut snaps = MemStorage::new();
        let mut p = open(MemStorage::new(), &mut snaps);
        p.allow_txn(PID, 0);
        p.append(NOW, txn_batch(PID, 0, 0, 1, true)).unwrap();
        let err = p.append(NOW, txn_batch(PID, 0, 1, 1, false)).unwrap_err();
        assert_eq!(err.code(), code::INVALID_TXN_STATE);
        p.append_marker(NOW, PID, 1, marker(false)).unwrap();
        p.allow_txn(PID, 0);
        let err = p.append(NOW, txn_batch(PID, 0, 1, 1, true)).unwrap_err();
        assert_eq!(err.code(), code::INVALID_PRODUCER_EPOCH, "{err}");
        let err = p.append_marker(NOW, PID, 0, marker(true)).unwrap_err();
        assert_eq!(err.code(), code::INVALID_PRODUCER_EPOCH, "{err}");
        let old = EndTxnMarker {
            commit: true,
            coordinator_epoch: 0,
        };
        let err = p.append_marker(NOW, PID, 1, old).unwrap_err();
        assert_eq!(err.code(), code::TRANSACTION_COORDINATOR_FENCED, "{err}");
    }

    /// `truncateAndReload`: a truncation above the high watermark that removes a marker opens
    /// its transaction again and drops its aborted entry, as a rebuild from the log does (but
    /// for the coordinator epoch the marker left, which only ever grows).
    #[test]
    fn truncation_reopens_a_transaction_whose_marker_is_gone() {
        let mut t = TxnTracker::new(Offset(0));
        t.record_data(PID, true, Offset(0), Offset(1));
        t.record_marker(PID, marker(false), Offset(2));
        t.record_data(ProducerId(8), true, Offset(3), Offset(3));
        t.record_data(PID, true, Offset(4), Offset(4));
        t.truncate_from(Offset(2));
        t.check_invariants();
        assert_eq!(t.open_txns().collect::<Vec<_>>(), vec![(PID, Offset(0))]);
        assert_eq!(t.end(), Offset(2));
        assert_eq!(t.last_stable_offset(Offset(2)), Offset(0));
        assert!(t.all_aborted().is_empty());
        t.record_marker(PID, marker(true), Offset(2));
        assert_eq!(t.last_stable_offset(Offset(3)), Offset(3));
    }

    /// Recovery rebuilds the open transactions and the aborted list from the log.
    #[test]
    fn recovery_rebuilds_open_and_aborted_transactions_from_the_log() {
        let mut snaps = MemStorage::new();
        let mut p = open(MemStorage::new(), &mut snaps);
        p.allow_txn(PID, 0);
        p.append(NOW, txn_batch(PID, 0, 0, 2, true)).unwrap();
        p.append_marker(NOW, PID, 0, marker(false)).unwrap();
        p.allow_txn(PID, 0);
        p.append(NOW, txn_batch(PID, 0, 2, 2, true)).unwrap();
        p.sync().unwrap();
        let before = p.txns().clone();
        let log = p.into_log_storage();
        let p = open(log, &mut snaps);
        assert_eq!(p.txns(), &before);
        assert_eq!(p.last_stable_offset(), Offset(3));
        assert_eq!(p.aborted_txns(Offset(0), Offset(5)).len(), 1);
    }

    /// The `.txnindex` files (Kafka's `TransactionIndex`, one per segment): an ABORT marker
    /// adds its entry to the active segment's file, a COMMIT adds nothing; after a power loss
    /// that tears or loses the unsynced files, recovery rebuilds them from the log; retention
    /// removes a file with its segment.
    #[test]
    fn the_txnindex_files_follow_aborts_crashes_and_retention() {
        use rand::{rngs::StdRng, SeedableRng};
        let config = LogConfig {
            segment_bytes_max: 400,
            retention_bytes_max: 1,
            retention_ms_max: -1,
            ..LogConfig::default()
        };
        let open_with = |log: MemStorage, snaps: &mut MemStorage| {
            let rules = ProduceRules::default();
            PartitionReplica::open(log, snaps, config.clone(), rules, LeaderEpoch(3), NOW)
                .expect("open")
        };
        let check = |p: &PartitionReplica<MemStorage>| {
            TxnIndexFiles::check_against(
                p.log().storage(),
                &p.log().segment_bases(),
                p.txns().all_aborted(),
            )
        };
        let index_files = |p: &PartitionReplica<MemStorage>| {
            let names = p.log().storage().list().unwrap();
            names
                .into_iter()
                .filter(|n| n.ends_with(".txnindex"))
                .collect::<Vec<_>>()
        };
        let mut snaps = MemStorage::new();
        let mut p = open_with(MemStorage::new(), &mut snaps);
        let mut seq = 0;
        for round in 0..12 {
            p.allow_txn(PID, 0);
            p.append(NOW, txn_batch(PID, 0, seq, 2, true)).unwrap();
            seq += 2;
            p.append_marker(NOW, PID, 0, marker(round % 3 == 0))
                .unwrap();
            check(&p);
        }
        assert_eq!(p.txns().all_aborted().len(), 8);
        assert!(p.log().segment_count() > 2, "the small segments rolled");
        assert!(!index_files(&p).is_empty());
        // A power loss before any sync of the index files: recovery rebuilds them.
        p.sync().unwrap();
        let mut log = p.into_log_storage();
        let aborted_before = {
            let p = open_with(log.clone(), &mut snaps.clone());
            p.txns().all_aborted().to_vec()
        };
        let mut rng = StdRng::seed_from_u64(15);
        log.crash(&mut rng);
        snaps.crash(&mut rng);
        let p = open_with(log, &mut snaps);
        assert_eq!(p.txns().all_aborted(), aborted_before.as_slice());
        check(&p);
        // Torn by hand: the first file loses half an entry; missing: the last is removed.
        let names = index_files(&p);
        let mut log = p.into_log_storage();
        let len = log.len(&names[0]).unwrap();
        log.truncate(&names[0], len - 7).unwrap();
        log.remove(names.last().unwrap()).unwrap();
        let mut p = open_with(log, &mut snaps);
        assert_eq!(p.txn_index_report().0.torn, 1);
        check(&p);
        // Retention (bounded by the high watermark) removes old segments and their files.
        let before = index_files(&p).len();
        p.apply_retention(NOW).unwrap();
        check(&p);
        assert!(index_files(&p).len() < before, "{:?}", index_files(&p));
        assert_eq!(p.txn_index_report().1, 0, "no index write failed");
    }
}
