//! The transaction bookkeeping of one partition: Kafka's `ProducerStateManager.ongoingTxns`,
//! `unreplicatedTxns`, `ProducerAppendInfo.appendEndTxnMarker` and the aborted-transaction
//! index (`TransactionIndex`, `AbortedTxn`), as a pure value, kept by the partition
//! (`partition::txn`).
//!
//! A [`TxnTracker`] sees every batch the partition's log takes, in offset order, and keeps:
//! - per producer, the first offset of its open transaction (its first transactional batch
//!   since its last marker);
//! - transactions whose marker is in the log but not yet below the high watermark
//!   ("unreplicated": the marker could still be lost with the leader);
//! - the aborted transactions, in marker order, each with the last stable offset when its
//!   marker was appended.
//!
//! # Rules
//! - A transactional batch from a producer with no open transaction opens one at its base
//!   offset. A non-transactional batch from a producer with an open transaction is refused
//!   ([`TxnStateError::InvalidTxnState`], INVALID_TXN_STATE).
//! - A marker (COMMIT or ABORT control batch) ends the producer's open transaction at the
//!   marker's offset; a marker with no open transaction completes nothing. A marker whose
//!   coordinator epoch is older than the producer's last marker's is refused
//!   ([`TxnStateError::CoordinatorFenced`], TRANSACTION_COORDINATOR_FENCED).
//! - The first unstable offset is the smallest first offset of the open and the unreplicated
//!   transactions; the last stable offset (LSO) is `min(first unstable offset, high
//!   watermark)` (Kafka's `UnifiedLog.lastStableOffset`). `read_committed` reads below it.
//! - An aborted transaction's entry is (producer id, first offset, last offset = the marker's
//!   offset, LSO = the first offset of the earliest open transaction of another producer,
//!   else last offset + 1), as Kafka's `.txnindex` holds it. A fetch from `f` below `u` gets the
//!   entries with `last_offset >= f && first_offset < u`.
//!
//! # Invariants (always-on assertions)
//! - Batches are recorded in increasing offset order: a data batch's base and a marker's offset
//!   are above everything recorded before.
//! - Aborted entries' last offsets strictly increase.
//! - Every open transaction's first offset is indexed once, and every index entry is an open or
//!   unreplicated transaction.
//!
//! Recovery rebuilds the tracker by recording the log's batches again from the start (or, once
//! producer snapshots carry the open transactions, from a snapshot); a truncation at or above
//! the high watermark is [`TxnTracker::truncate_from`].

use std::collections::BTreeMap;

use crate::batch::EndTxnMarker;
use crate::error_code::{self as code, ErrorCode};
use crate::types::{Offset, ProducerId};

/// Why a batch is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TxnStateError {
    /// A non-transactional batch from a producer with an open transaction.
    #[error("producer {0} has an open transaction: its batches must be transactional")]
    InvalidTxnState(ProducerId),
    /// A marker from a coordinator older than the one that wrote the producer's last marker.
    #[error("producer {producer_id}: coordinator epoch {got} is older than {current}")]
    CoordinatorFenced {
        /// The producer.
        producer_id: ProducerId,
        /// The coordinator epoch of its last marker.
        current: i32,
        /// The marker's.
        got: i32,
    },
    /// A marker of a transaction that ended before the producer's open transaction here
    /// began (a marker request delayed past its transaction's end, or sent again): appending
    /// it would end the wrong transaction.
    #[error(
        "producer {producer_id}: a marker of the transaction started at {marker_txn_start_ms} ms, \
         older than the open one (started at {open_txn_start_ms} ms)"
    )]
    StaleMarker {
        /// The producer.
        producer_id: ProducerId,
        /// The start of the transaction the marker ends.
        marker_txn_start_ms: i64,
        /// The start of the producer's open transaction here.
        open_txn_start_ms: i64,
    },
}

impl TxnStateError {
    /// The Kafka error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            TxnStateError::InvalidTxnState(_) => code::INVALID_TXN_STATE,
            TxnStateError::CoordinatorFenced { .. } | TxnStateError::StaleMarker { .. } => {
                code::TRANSACTION_COORDINATOR_FENCED
            }
        }
    }
}

/// One aborted transaction (Kafka's `AbortedTxn`, one `.txnindex` entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AbortedTxn {
    /// The producer.
    pub producer_id: ProducerId,
    /// The offset of its first batch.
    pub first_offset: Offset,
    /// The offset of its ABORT marker.
    pub last_offset: Offset,
    /// The last stable offset when the marker was appended.
    pub last_stable_offset: Offset,
}

/// A transaction a marker completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompletedTxn {
    /// The producer.
    pub producer_id: ProducerId,
    /// The offset of its first batch.
    pub first_offset: Offset,
    /// The offset of its marker.
    pub last_offset: Offset,
    /// Whether it aborted.
    pub aborted: bool,
}

/// The transaction state of one partition. See the module doc.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnTracker {
    /// Per producer, the first offset of its open transaction.
    open: BTreeMap<ProducerId, Offset>,
    /// First offsets of open and unreplicated transactions, to their producer and, for
    /// unreplicated ones, the marker's offset.
    unstable: BTreeMap<Offset, (ProducerId, Option<Offset>)>,
    /// Per producer, the coordinator epoch of its last marker.
    coordinator_epochs: BTreeMap<ProducerId, i32>,
    /// Aborted transactions, in marker order.
    aborted: Vec<AbortedTxn>,
    /// Per producer, the producer epoch of its last marker: a data batch from an older epoch
    /// is fenced (a fencing abort carries the bumped epoch).
    marker_epochs: BTreeMap<ProducerId, i16>,
    /// The offset after the last batch recorded.
    end: Offset,
}

impl TxnTracker {
    /// An empty tracker for a log whose next offset is `end`.
    pub fn new(end: Offset) -> TxnTracker {
        TxnTracker {
            end,
            ..TxnTracker::default()
        }
    }

    /// The offset after the last batch recorded: the next batch recorded must start here or
    /// later.
    pub fn end(&self) -> Offset {
        self.end
    }

    /// The coordinator epoch of `producer_id`'s last marker, if it has one.
    pub fn coordinator_epoch(&self, producer_id: ProducerId) -> Option<i32> {
        self.coordinator_epochs.get(&producer_id).copied()
    }

    /// The producer epoch of `producer_id`'s last marker, if it has one.
    pub fn marker_epoch(&self, producer_id: ProducerId) -> Option<i16> {
        self.marker_epochs.get(&producer_id).copied()
    }

    /// Whether a data batch from `producer_id` at `producer_epoch` comes from an epoch its
    /// last marker already fenced (Kafka's `ProducerAppendInfo.checkProducerEpoch` against the
    /// epoch a marker left in the producer state). Err: the marker's epoch.
    pub fn check_epoch(&self, producer_id: ProducerId, producer_epoch: i16) -> Result<(), i16> {
        match self.marker_epochs.get(&producer_id) {
            Some(&e) if producer_epoch < e => Err(e),
            _ => Ok(()),
        }
    }

    /// Records a whole batch the log took (`base_offset` stamped): data batches as
    /// [`TxnTracker::record_data`], markers as [`TxnTracker::record_marker`] (with the
    /// producer epoch they carry); control batches of other types only advance the end.
    /// Errors only when a control batch's record does not parse.
    pub fn record_batch(
        &mut self,
        batch: &crate::batch::Batch,
    ) -> Result<Option<CompletedTxn>, crate::batch::BatchError> {
        let (base, last) = (batch.base_offset(), batch.last_offset());
        if !batch.is_control() {
            self.record_data(batch.producer_id(), batch.is_transactional(), base, last);
            return Ok(None);
        }
        match batch.end_txn_marker()? {
            Some(marker) => {
                let producer_id = batch.producer_id();
                let epoch = self.marker_epochs.entry(producer_id).or_insert(i16::MIN);
                *epoch = (*epoch).max(batch.producer_epoch());
                Ok(self.record_marker(producer_id, marker, last))
            }
            None => {
                self.advance(base, last);
                Ok(None)
            }
        }
    }

    /// The first offset of `producer_id`'s open transaction.
    pub fn open_txn(&self, producer_id: ProducerId) -> Option<Offset> {
        self.open.get(&producer_id).copied()
    }

    /// Every open transaction: producer and first offset.
    pub fn open_txns(&self) -> impl Iterator<Item = (ProducerId, Offset)> + '_ {
        self.open.iter().map(|(p, o)| (*p, *o))
    }

    /// Whether a data batch from `producer_id` may be appended (Kafka's
    /// `ProducerAppendInfo.append`): a non-transactional batch while the producer has an open
    /// transaction may not.
    pub fn check_data(
        &self,
        producer_id: ProducerId,
        transactional: bool,
    ) -> Result<(), TxnStateError> {
        if !transactional && producer_id != ProducerId::NONE && self.open.contains_key(&producer_id)
        {
            return Err(TxnStateError::InvalidTxnState(producer_id));
        }
        Ok(())
    }

    /// Whether `producer_id`'s marker from coordinator epoch `coordinator_epoch` may be
    /// appended (Kafka's `appendEndTxnMarker`).
    pub fn check_marker(
        &self,
        producer_id: ProducerId,
        coordinator_epoch: i32,
    ) -> Result<(), TxnStateError> {
        match self.coordinator_epochs.get(&producer_id) {
            Some(&current) if current > coordinator_epoch => {
                Err(TxnStateError::CoordinatorFenced {
                    producer_id,
                    current,
                    got: coordinator_epoch,
                })
            }
            _ => Ok(()),
        }
    }

    /// Records a data batch the log took at `base_offset..=last_offset`.
    pub fn record_data(
        &mut self,
        producer_id: ProducerId,
        transactional: bool,
        base_offset: Offset,
        last_offset: Offset,
    ) {
        self.advance(base_offset, last_offset);
        if transactional && producer_id != ProducerId::NONE && !self.open.contains_key(&producer_id)
        {
            self.open.insert(producer_id, base_offset);
            let previous = self.unstable.insert(base_offset, (producer_id, None));
            assert!(previous.is_none(), "one transaction per first offset");
        }
    }

    /// Records `producer_id`'s marker, appended at `offset`: its open transaction, if any,
    /// completes (an abort is added to the aborted transactions).
    pub fn record_marker(
        &mut self,
        producer_id: ProducerId,
        marker: EndTxnMarker,
        offset: Offset,
    ) -> Option<CompletedTxn> {
        self.advance(offset, offset);
        self.coordinator_epochs
            .insert(producer_id, marker.coordinator_epoch);
        let first_offset = self.open.remove(&producer_id)?;
        let entry = self
            .unstable
            .get_mut(&first_offset)
            .expect("invariant: open transactions are indexed");
        assert_eq!(entry.0, producer_id, "the index entry is the producer's");
        entry.1 = Some(offset);
        if !marker.commit {
            // Kafka's `lastStableOffset(completedTxn)`: the earliest open transaction of
            // another producer, else just past the marker.
            let last_stable_offset = self
                .unstable
                .iter()
                .find(|(_, (p, marker))| marker.is_none() && *p != producer_id)
                .map_or(offset.plus(1), |(first, _)| *first);
            if let Some(last) = self.aborted.last() {
                assert!(
                    last.last_offset < offset,
                    "aborted transactions' last offsets strictly increase"
                );
            }
            self.aborted.push(AbortedTxn {
                producer_id,
                first_offset,
                last_offset: offset,
                last_stable_offset,
            });
        }
        Some(CompletedTxn {
            producer_id,
            first_offset,
            last_offset: offset,
            aborted: !marker.commit,
        })
    }

    fn advance(&mut self, base_offset: Offset, last_offset: Offset) {
        assert!(
            base_offset >= self.end && last_offset >= base_offset,
            "batches are recorded in offset order ({base_offset}..={last_offset} after {})",
            self.end
        );
        self.end = last_offset.plus(1);
    }

    /// The high watermark moved to `high_watermark`: completed transactions whose marker is
    /// below it no longer hold the last stable offset back (Kafka's
    /// `removeUnreplicatedTransactions`).
    pub fn high_watermark_updated(&mut self, high_watermark: Offset) {
        self.unstable
            .retain(|_, (_, marker)| marker.is_none_or(|m| m >= high_watermark));
    }

    /// The log was truncated at `offset` (every batch at or above it is gone; Kafka's
    /// `ProducerStateManager.truncateAndReload`, done in place): transactions that started
    /// there are forgotten, aborted entries whose marker is gone are dropped, and a
    /// transaction whose marker is gone is open again. Exact as long as `offset` is at or
    /// above the high watermark last passed to [`TxnTracker::high_watermark_updated`] (a
    /// replica never truncates below its high watermark), since a completed transaction stays
    /// in the unstable index until its marker is below it.
    pub fn truncate_from(&mut self, offset: Offset) {
        if offset >= self.end {
            return;
        }
        self.end = offset;
        self.aborted.retain(|a| a.last_offset < offset);
        self.open.retain(|_, first| *first < offset);
        self.unstable.retain(|first, _| *first < offset);
        for (first, (producer_id, marker)) in self.unstable.iter_mut() {
            if marker.is_some_and(|m| m >= offset) {
                *marker = None;
                let previous = self.open.insert(*producer_id, *first);
                assert!(
                    previous.is_none(),
                    "a producer with a completed transaction had no open one before its marker"
                );
            }
        }
    }

    /// The smallest first offset of the open and unreplicated transactions.
    pub fn first_unstable_offset(&self) -> Option<Offset> {
        self.unstable.keys().next().copied()
    }

    /// The last stable offset: `min(first unstable offset, high_watermark)`, where a completed
    /// transaction whose marker is already below `high_watermark` counts as stable even if
    /// [`TxnTracker::high_watermark_updated`] has not been told yet.
    pub fn last_stable_offset(&self, high_watermark: Offset) -> Offset {
        if crate::planted::active(crate::planted::Bug::LsoPassesOpenTxn) {
            return high_watermark;
        }
        self.unstable
            .iter()
            .find(|(_, (_, marker))| marker.is_none_or(|m| m >= high_watermark))
            .map_or(high_watermark, |(f, _)| (*f).min(high_watermark))
    }

    /// The aborted transactions a `read_committed` fetch from `fetch_offset` below
    /// `upper_bound` must be told (Kafka's `TransactionIndex.collectAbortedTxns`): those with
    /// `last_offset >= fetch_offset` and `first_offset < upper_bound`, in marker order.
    pub fn aborted_txns(&self, fetch_offset: Offset, upper_bound: Offset) -> Vec<AbortedTxn> {
        let start = self
            .aborted
            .partition_point(|a| a.last_offset < fetch_offset);
        self.aborted[start..]
            .iter()
            .filter(|a| a.first_offset < upper_bound)
            .copied()
            .collect()
    }

    /// Every aborted transaction, in marker order.
    pub fn all_aborted(&self) -> &[AbortedTxn] {
        &self.aborted
    }

    /// Retention removed the log below `log_start`: aborted transactions that ended before it
    /// are forgotten (Kafka deletes a segment's `.txnindex` with it).
    pub fn log_start_moved(&mut self, log_start: Offset) {
        self.aborted.retain(|a| a.last_offset >= log_start);
    }

    /// Checks the invariants; panics naming the one broken.
    pub fn check_invariants(&self) {
        for pair in self.aborted.windows(2) {
            assert!(
                pair[0].last_offset < pair[1].last_offset,
                "aborted last offsets strictly increase"
            );
        }
        for (producer_id, first) in &self.open {
            assert_eq!(
                self.unstable.get(first),
                Some(&(*producer_id, None)),
                "every open transaction is indexed"
            );
        }
        let open_in_index = self.unstable.values().filter(|(_, m)| m.is_none()).count();
        assert_eq!(
            open_in_index,
            self.open.len(),
            "the index's open entries are the open transactions"
        );
        for (first, (_, marker)) in &self.unstable {
            assert!(*first < self.end, "transactions start below the end");
            if let Some(m) = marker {
                assert!(m > first, "a marker follows its transaction's first batch");
            }
        }
    }
}

#[cfg(test)]
mod tests;
