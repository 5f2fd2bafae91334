//! The transaction coordinator: Kafka's `TransactionCoordinator`, `TransactionMetadata` and the
//! state half of `TransactionStateManager`, as a pure state machine.
//!
//! A [`TxnCoordinator`] owns every transactional id of one `__transaction_state` partition
//! that this broker leads (an id lives on partition [`partition_for`]`(id, partitions)`, the
//! same function as for groups). It handles InitProducerId with a transactional id,
//! AddPartitionsToTxn (also KIP-890's verify-only form), AddOffsetsToTxn, EndTxn,
//! DescribeTransactions and ListTransactions with Kafka's rules and error codes, aborts
//! transactions that outlive their timeout and removes ids idle for
//! `transactional.id.expiration.ms`. Time comes in only as `now_ms`; producer ids come from an
//! allocator the caller passes in. Its types do not depend on the wire crate. It speaks Kafka's
//! transaction versions 1 and 2: under version 2 (KIP-890 part 2, EndTxn v5,
//! [`TxnCoordinator::handle_end_txn_v2`]) every end of a transaction bumps the producer epoch,
//! the markers carry the bumped epoch, and the client is answered the epoch (or, once the
//! epoch is exhausted, the new producer id) its next transaction uses; a write of the previous
//! transaction that arrives late carries an epoch the partitions and the coordinator then
//! refuse.
//!
//! # Shape and the order in which the shell drains outputs
//! Each `handle_*` call answers at once ([`Reply::Now`]) or, when the answer depends on a
//! record of `__transaction_state`, later ([`Reply::Pending`]) through
//! [`TxnCoordinator::poll_responses`], under the [`RequestId`] the shell gave. After every call
//! (`handle_*`, [`TxnCoordinator::poll`], [`TxnCoordinator::records_committed`],
//! [`TxnCoordinator::markers_written`], [`TxnCoordinator::load`]) the shell:
//! 1. drains [`TxnCoordinator::poll_records`] and appends them, in sequence order, to the
//!    replicated `__transaction_state` partition (acks=all; [`TxnRecord::encode`] gives the
//!    bytes);
//! 2. drains [`TxnCoordinator::poll_markers`] and sends each [`WriteMarkers`] to the leaders of
//!    its partitions (WriteTxnMarkers), retrying until each partition is written, then reports
//!    them with [`TxnCoordinator::markers_written`] (a partition that no longer exists counts as
//!    written, as in Kafka);
//! 3. drains [`TxnCoordinator::poll_responses`] and sends them;
//! 4. once the records up to sequence `n` are durable (committed by the partition's high
//!    watermark), calls [`TxnCoordinator::records_committed`]`(n)` and drains again;
//! 5. sleeps until [`TxnCoordinator::next_deadline_ms`] or the next request, then calls
//!    [`TxnCoordinator::poll`].
//!
//! Checks that need metadata or authorisation are the shell's, before it calls in: which
//! `__transaction_state` partition an id lives on ([`partition_for`]) and whether this broker
//! leads it (NOT_COORDINATOR, COORDINATOR_LOAD_IN_PROGRESS while it loads); unknown topics in
//! AddPartitionsToTxn (UNKNOWN_TOPIC_OR_PARTITION, and OPERATION_NOT_ATTEMPTED for the other
//! partitions of the request, as Kafka's `KafkaApis`); ACLs.
//!
//! # Durability: a state is acted on only once it is durable
//! Every change of an id's state is a *transition*: the coordinator writes the new state as a
//! [`TxnRecord`] and keeps it pending (Kafka's `pendingState`); the id's state, as every
//! request, [`TxnCoordinator::describe`] and the next leader see it, changes only when
//! [`TxnCoordinator::records_committed`] covers the record (`completeTransitionTo`). While a
//! transition is pending, or while markers are out, requests for the id get
//! CONCURRENT_TRANSACTIONS (after the producer id and epoch checks). So:
//! - the answer to InitProducerId, AddPartitionsToTxn, AddOffsetsToTxn and EndTxn is held until
//!   its record is durable;
//! - markers for a commit or abort are emitted only once the PrepareCommit/PrepareAbort record
//!   is durable: a partition never holds a marker for a decision the coordinator could forget;
//! - CompleteCommit/CompleteAbort is written only once every partition's marker is reported
//!   written.
//!
//! A coordinator that loses its partition is dropped ([`TxnCoordinator::resign`] answers what
//! waits with NOT_COORDINATOR); the next leader rebuilds with [`TxnCoordinator::load`] from the
//! durable records and sends the markers of every PrepareCommit/PrepareAbort again (partitions
//! accept a marker twice).
//!
//! # States (Kafka's `TransactionState`, with its `validPreviousStates`)
//! ```text
//!          InitProducerId: a new id at epoch 0
//!   (none) ─────────────────────────────────> Empty
//!                                               │ AddPartitions / AddOffsets
//!                                               v
//!                                            Ongoing <── more partitions
//!                     EndTxn commit ┌───────────┴──────────────┐ EndTxn abort; or a timeout or
//!                                   v                          v InitProducerId: epoch + 1 (fence)
//!                             PrepareCommit              PrepareAbort
//!                                   │ every marker written     │ every marker written
//!                                   v                          v
//!                             CompleteCommit             CompleteAbort
//!   from Empty and Complete*: AddPartitions -> Ongoing (a new transaction);
//!                             InitProducerId -> Empty (epoch + 1, or a new producer id);
//!                             idle for transactional.id.expiration.ms -> Dead (tombstone, removed)
//! ```
//! PrepareEpochFence and Dead are never durable: Kafka's PrepareEpochFence is the in-memory
//! step before a fencing abort, which keel writes directly as PrepareAbort with the bumped
//! epoch; Dead is the tombstone's pending state, after which the id is gone.
//!
//! # Invariants (checked by [`TxnCoordinator::check_invariants`] after every call in tests)
//! - An id's durable state is never Dead or PrepareEpochFence, its epoch is >= 0, and only
//!   Ongoing, PrepareCommit and PrepareAbort hold partitions.
//! - At most one transition per id is pending, and its record is not yet durable; an id with
//!   no durable state (its first record in flight) has one.
//! - Markers are outstanding only for a durable PrepareCommit/PrepareAbort, only for its
//!   partitions, and such a state with no pending transition has markers outstanding.
//! - A producer id's epoch never decreases: every transition keeps or bumps it, or moves to a
//!   new producer id (epoch exhaustion).
//! - Replaying the durable records ([`TxnCoordinator::load`]) gives the durable state of every
//!   id.
//!
//! # Differences from Kafka, on purpose
//! - Timeouts and expiry run at their exact deadlines ([`TxnCoordinator::next_deadline_ms`])
//!   rather than on Kafka's 10 s and 1 h scans.
//! - A pending fence answers requests that carry the fenced epoch with CONCURRENT_TRANSACTIONS
//!   until its record is durable (Kafka bumps the epoch in memory first and answers
//!   PRODUCER_FENCED at once); nothing succeeds either way.
//! - AddPartitionsToTxn with no partitions changes nothing and answers NONE.
//! - A transactional id longer than [`TRANSACTIONAL_ID_BYTES_MAX`] bytes (what the record key
//!   can hold) is refused with INVALID_REQUEST.
//! - PRODUCER_FENCED is answered to every version; the shell passes each code through
//!   [`error_for_version`], which downgrades it to INVALID_PRODUCER_EPOCH for InitProducerId
//!   < v4 and the other APIs < v2, as Kafka's `KafkaApis` does.

#![warn(missing_docs)]

pub mod record;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

pub use crate::group::{partition_for, Reply, RequestId, TopicPartition};
pub use record::{RecordError, TxnLogValue, TxnRecord, TRANSACTIONAL_ID_BYTES_MAX};

use crate::batch::ControlRecordType;
use crate::error_code::{self as code, ErrorCode};
use crate::types::ProducerId;

/// The internal topic holding transaction state.
pub const TRANSACTION_STATE_TOPIC: &str = "__transaction_state";
/// Kafka's default `transaction.state.log.num.partitions`.
pub const TRANSACTION_STATE_PARTITIONS_DEFAULT: i32 = 50;
/// The internal topic holding committed offsets, which AddOffsetsToTxn adds a partition of.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";
/// Kafka's default `transaction.max.timeout.ms` (15 minutes).
pub const TRANSACTION_MAX_TIMEOUT_MS_DEFAULT: i32 = 900_000;
/// Kafka's default `transactional.id.expiration.ms` (7 days).
pub const TRANSACTIONAL_ID_EXPIRATION_MS_DEFAULT: i64 = 7 * 24 * 60 * 60 * 1000;
/// The epoch of a producer that has none yet (Kafka's `RecordBatch.NO_PRODUCER_EPOCH`).
pub const NO_PRODUCER_EPOCH: i16 = -1;
/// From this epoch on a producer id is exhausted and InitProducerId moves to a new one
/// (Kafka's `TransactionMetadata.isEpochExhausted`: `epoch >= Short.MaxValue - 1`, which
/// leaves one bump for a fence).
pub const EPOCH_EXHAUSTED: i16 = i16::MAX - 1;
/// The transaction version whose EndTxn bumps the producer epoch (KIP-890 part 2; Kafka's
/// `TransactionVersion.TV_2`): EndTxn v5, AddPartitionsToTxn v5 from a partition leader,
/// transactional Produce v12+, TxnOffsetCommit v5.
pub const TRANSACTION_VERSION_2: i16 = 2;

/// The coordinator's settings (Kafka's broker configs of the same names).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnConfig {
    /// `transaction.max.timeout.ms`: the longest `transaction.timeout.ms` a client may ask.
    pub transaction_max_timeout_ms: i32,
    /// `transactional.id.expiration.ms`: an id with no transaction for this long is removed.
    pub transactional_id_expiration_ms: i64,
}

impl Default for TxnConfig {
    fn default() -> Self {
        TxnConfig {
            transaction_max_timeout_ms: TRANSACTION_MAX_TIMEOUT_MS_DEFAULT,
            transactional_id_expiration_ms: TRANSACTIONAL_ID_EXPIRATION_MS_DEFAULT,
        }
    }
}

/// A transactional id's state (Kafka's `TransactionState`; the ids are the log's status byte).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TxnState {
    /// No transaction: after InitProducerId.
    Empty,
    /// A transaction with partitions added.
    Ongoing,
    /// The client asked to commit; markers are being written.
    PrepareCommit,
    /// The client asked to abort, or the coordinator fenced the producer; markers are being
    /// written.
    PrepareAbort,
    /// The last transaction committed.
    CompleteCommit,
    /// The last transaction aborted.
    CompleteAbort,
    /// Being removed (never durable in keel: the tombstone's pending state).
    Dead,
    /// Kafka's in-memory step before a fencing abort (never durable).
    PrepareEpochFence,
}

impl TxnState {
    const ALL: [TxnState; 8] = [
        TxnState::Empty,
        TxnState::Ongoing,
        TxnState::PrepareCommit,
        TxnState::PrepareAbort,
        TxnState::CompleteCommit,
        TxnState::CompleteAbort,
        TxnState::Dead,
        TxnState::PrepareEpochFence,
    ];

    /// The state's id, the `TransactionStatus` byte of the log's value.
    pub fn id(self) -> i8 {
        match self {
            TxnState::Empty => 0,
            TxnState::Ongoing => 1,
            TxnState::PrepareCommit => 2,
            TxnState::PrepareAbort => 3,
            TxnState::CompleteCommit => 4,
            TxnState::CompleteAbort => 5,
            TxnState::Dead => 6,
            TxnState::PrepareEpochFence => 7,
        }
    }

    /// The state with id `id`.
    pub fn from_id(id: i8) -> Option<TxnState> {
        TxnState::ALL.into_iter().find(|s| s.id() == id)
    }

    /// Kafka's name, as DescribeTransactions and ListTransactions show it.
    pub fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
            TxnState::Dead => "Dead",
            TxnState::PrepareEpochFence => "PrepareEpochFence",
        }
    }

    /// The state named `name` (exact, as Kafka's `TransactionState.fromName`): ListTransactions'
    /// state filter; the shell reports names that are none as unknown.
    pub fn parse(name: &str) -> Option<TxnState> {
        TxnState::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Kafka's `validPreviousStates`: may an id in `self` move to `next`?
    pub fn may_become(self, next: TxnState) -> bool {
        use TxnState::*;
        match next {
            Empty => matches!(self, Empty | CompleteCommit | CompleteAbort),
            Ongoing => matches!(self, Ongoing | Empty | CompleteCommit | CompleteAbort),
            PrepareCommit => self == Ongoing,
            // Transaction version 2 may abort with no transaction open (Kafka 4.0).
            PrepareAbort => matches!(
                self,
                Ongoing | PrepareEpochFence | Empty | CompleteCommit | CompleteAbort
            ),
            CompleteCommit => self == PrepareCommit,
            CompleteAbort => self == PrepareAbort,
            Dead => matches!(self, Empty | CompleteCommit | CompleteAbort),
            PrepareEpochFence => self == Ongoing,
        }
    }

    fn is_prepare(self) -> bool {
        matches!(self, TxnState::PrepareCommit | TxnState::PrepareAbort)
    }

    /// Whether a durable state in `self` lists partitions.
    fn holds_partitions(self) -> bool {
        matches!(self, TxnState::Ongoing) || self.is_prepare()
    }
}

/// How a transaction ends (Kafka's `TransactionResult`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TxnResult {
    /// Commit.
    Commit,
    /// Abort.
    Abort,
}

impl TxnResult {
    /// The control record type of this result's markers.
    pub fn control_type(self) -> ControlRecordType {
        match self {
            TxnResult::Commit => ControlRecordType::Commit,
            TxnResult::Abort => ControlRecordType::Abort,
        }
    }
}

/// The coordinator APIs whose error codes depend on the request version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnApi {
    /// InitProducerId.
    InitProducerId,
    /// AddPartitionsToTxn.
    AddPartitionsToTxn,
    /// AddOffsetsToTxn.
    AddOffsetsToTxn,
    /// EndTxn.
    EndTxn,
}

/// The code to send for `code` in an answer to `api` at `version`: clients older than
/// KIP-588 do not know PRODUCER_FENCED and get INVALID_PRODUCER_EPOCH instead
/// (InitProducerId below v4, the others below v2; Kafka's `KafkaApis`).
pub fn error_for_version(api: TxnApi, version: i16, code: ErrorCode) -> ErrorCode {
    let knows_fenced = match api {
        TxnApi::InitProducerId => version >= 4,
        TxnApi::AddPartitionsToTxn | TxnApi::AddOffsetsToTxn | TxnApi::EndTxn => version >= 2,
    };
    if code == code::PRODUCER_FENCED && !knows_fenced {
        code::INVALID_PRODUCER_EPOCH
    } else {
        code
    }
}

/// An InitProducerId request with a transactional id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitProducerIdRequest {
    /// The transactional id.
    pub transactional_id: String,
    /// The client's `transaction.timeout.ms`.
    pub transaction_timeout_ms: i32,
    /// KIP-360 (v3+): the producer id the client holds, or -1.
    pub producer_id: ProducerId,
    /// KIP-360 (v3+): the epoch the client holds, or -1.
    pub producer_epoch: i16,
}

/// An InitProducerId answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InitProducerIdResponse {
    /// An error code.
    pub error_code: ErrorCode,
    /// The producer id, or -1 on error.
    pub producer_id: ProducerId,
    /// The epoch, or -1 on error.
    pub producer_epoch: i16,
}

impl InitProducerIdResponse {
    fn error(error_code: ErrorCode) -> InitProducerIdResponse {
        InitProducerIdResponse {
            error_code,
            producer_id: ProducerId::NONE,
            producer_epoch: NO_PRODUCER_EPOCH,
        }
    }
}

/// An AddPartitionsToTxn request for one transaction (v4+ batch several: one each).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddPartitionsRequest {
    /// The transactional id.
    pub transactional_id: String,
    /// The producer id.
    pub producer_id: ProducerId,
    /// The producer epoch.
    pub producer_epoch: i16,
    /// The partitions to add (or, verify-only, to check).
    pub partitions: Vec<TopicPartition>,
    /// The client's transaction version: 2 when a partition leader adds the partition for a
    /// transaction-version-2 write (AddPartitionsToTxn v5), else 0 (kept in the record as
    /// `ClientTransactionVersion`, as Kafka does).
    pub transaction_version: i16,
}

/// An AddOffsetsToTxn request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddOffsetsRequest {
    /// The transactional id.
    pub transactional_id: String,
    /// The producer id.
    pub producer_id: ProducerId,
    /// The producer epoch.
    pub producer_epoch: i16,
    /// The consumer group whose offsets the transaction will commit.
    pub group_id: String,
}

/// An EndTxn request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndTxnRequest {
    /// The transactional id.
    pub transactional_id: String,
    /// The producer id.
    pub producer_id: ProducerId,
    /// The producer epoch.
    pub producer_epoch: i16,
    /// Commit or abort.
    pub result: TxnResult,
}

/// An EndTxn v5 answer (transaction version 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndTxnResponse {
    /// An error code.
    pub error_code: ErrorCode,
    /// The producer id of the producer's next transaction, or -1 on error.
    pub producer_id: ProducerId,
    /// Its epoch (the bumped one, or 0 with a new producer id), or -1 on error.
    pub producer_epoch: i16,
}

impl EndTxnResponse {
    fn error(error_code: ErrorCode) -> EndTxnResponse {
        EndTxnResponse {
            error_code,
            producer_id: ProducerId::NONE,
            producer_epoch: NO_PRODUCER_EPOCH,
        }
    }
}

/// An answer that came late (its record became durable, or the coordinator resigned).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// An InitProducerId's answer.
    InitProducerId(InitProducerIdResponse),
    /// An AddPartitionsToTxn's answer, for every partition of the request.
    AddPartitions(ErrorCode),
    /// An AddOffsetsToTxn's answer.
    AddOffsets(ErrorCode),
    /// An EndTxn's answer.
    EndTxn(ErrorCode),
    /// An EndTxn v5's answer (transaction version 2), with the producer id and epoch of the
    /// producer's next transaction.
    EndTxnV2(EndTxnResponse),
}

impl Response {
    /// The same answer carrying `error` instead.
    fn with_error(self, error: ErrorCode) -> Response {
        match self {
            Response::InitProducerId(_) => {
                Response::InitProducerId(InitProducerIdResponse::error(error))
            }
            Response::AddPartitions(_) => Response::AddPartitions(error),
            Response::AddOffsets(_) => Response::AddOffsets(error),
            Response::EndTxn(_) => Response::EndTxn(error),
            Response::EndTxnV2(_) => Response::EndTxnV2(EndTxnResponse::error(error)),
        }
    }
}

/// An effect: write this transaction's COMMIT or ABORT marker to each of its partitions
/// (one WriteTxnMarkers entry; the shell groups entries by the partitions' leaders).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteMarkers {
    /// The transactional id, to report with [`TxnCoordinator::markers_written`].
    pub transactional_id: String,
    /// The transaction's producer id.
    pub producer_id: ProducerId,
    /// Its producer epoch (after a fence, the bumped one).
    pub producer_epoch: i16,
    /// Commit or abort.
    pub result: TxnResult,
    /// The coordinator's epoch (its `__transaction_state` partition's leader epoch): a
    /// partition refuses markers from an older coordinator.
    pub coordinator_epoch: i32,
    /// The partitions, in order.
    pub partitions: Vec<TopicPartition>,
    /// When the transaction started (its durable start time, -1: unknown): a partition
    /// refuses the marker if the producer's open transaction there started later.
    pub txn_start_ms: i64,
}

/// One id in a DescribeTransactions answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DescribedTxn {
    /// The transactional id.
    pub transactional_id: String,
    /// NONE, or TRANSACTIONAL_ID_NOT_FOUND.
    pub error_code: ErrorCode,
    /// The state (shown by [`TxnState::name`]); Dead when not found.
    pub state: TxnState,
    /// The transaction timeout.
    pub timeout_ms: i32,
    /// When the transaction started, or -1.
    pub start_ms: i64,
    /// The producer id.
    pub producer_id: ProducerId,
    /// The producer epoch.
    pub producer_epoch: i16,
    /// The partitions of the transaction, in order.
    pub partitions: Vec<TopicPartition>,
}

impl DescribedTxn {
    fn not_found(id: &str) -> DescribedTxn {
        DescribedTxn {
            transactional_id: id.to_string(),
            error_code: code::TRANSACTIONAL_ID_NOT_FOUND,
            state: TxnState::Dead,
            timeout_ms: 0,
            start_ms: -1,
            producer_id: ProducerId::NONE,
            producer_epoch: NO_PRODUCER_EPOCH,
            partitions: Vec::new(),
        }
    }
}

/// One id in a ListTransactions answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListedTxn {
    /// The transactional id.
    pub transactional_id: String,
    /// The producer id.
    pub producer_id: ProducerId,
    /// The state.
    pub state: TxnState,
}

/// Why [`TxnCoordinator::load`] refuses the records.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// A durable value that no coordinator writes.
    #[error("transactional id {transactional_id}: {detail}")]
    InvalidState {
        /// The id.
        transactional_id: String,
        /// What is wrong.
        detail: String,
    },
}

// ---------------------------------------------------------------------------------------------
// One transactional id
// ---------------------------------------------------------------------------------------------

/// A transition written but not yet durable (Kafka's `pendingState` with its
/// `TxnTransitMetadata`).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Pending {
    /// The record's sequence.
    seq: u64,
    /// The new state; `None` removes the id (a tombstone).
    next: Option<TxnLogValue>,
    /// The new in-memory `lastProducerEpoch`.
    last_producer_epoch: i16,
    /// The answer to send once the record is durable.
    reply: Option<(RequestId, Response)>,
}

/// One transactional id (Kafka's `TransactionMetadata`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnMetadata {
    transactional_id: String,
    /// The durable state; `None` only while the id's first record is in flight.
    durable: Option<TxnLogValue>,
    /// The epoch before the last bump, for KIP-360 retries (in memory only, as in Kafka: a
    /// loaded id has none).
    last_producer_epoch: i16,
    pending: Option<Pending>,
    /// Partitions of a durable Prepare* state whose marker is not yet reported written.
    markers_outstanding: BTreeSet<TopicPartition>,
}

impl TxnMetadata {
    /// The transactional id.
    pub fn transactional_id(&self) -> &str {
        &self.transactional_id
    }

    /// The durable state, once the id's first record is durable.
    pub fn durable(&self) -> Option<&TxnLogValue> {
        self.durable.as_ref()
    }

    /// Whether a transition's record is in flight.
    pub fn has_pending_transition(&self) -> bool {
        self.pending.is_some()
    }

    /// Partitions whose marker is not yet reported written.
    pub fn markers_outstanding(&self) -> &BTreeSet<TopicPartition> {
        &self.markers_outstanding
    }

    fn check_invariants(&self) {
        let id = &self.transactional_id;
        match &self.durable {
            None => assert!(
                self.pending.is_some(),
                "txn {id}: an id without a durable state has its first record in flight"
            ),
            Some(v) => {
                assert!(
                    !matches!(v.state, TxnState::Dead | TxnState::PrepareEpochFence),
                    "txn {id}: Dead and PrepareEpochFence are never durable"
                );
                assert!(v.producer_epoch >= 0, "txn {id}: a durable epoch is >= 0");
                assert!(
                    partitions_fit_state(v),
                    "txn {id}: only Ongoing and Prepare* hold partitions, and they hold some \
                     (a transaction-version-2 abort with none added excepted)"
                );
                assert!(
                    self.markers_outstanding.is_subset(&v.partitions),
                    "txn {id}: markers are outstanding only for the transaction's partitions"
                );
                if !v.state.is_prepare() {
                    assert!(
                        self.markers_outstanding.is_empty(),
                        "txn {id}: markers are outstanding only in Prepare*"
                    );
                } else if self.pending.is_none() && !v.partitions.is_empty() {
                    assert!(
                        !self.markers_outstanding.is_empty(),
                        "txn {id}: a Prepare* state with nothing pending waits for markers"
                    );
                }
            }
        }
        if let (Some(p), Some(from)) = (&self.pending, &self.durable) {
            if let Some(next) = &p.next {
                assert!(
                    from.state.may_become(next.state),
                    "txn {id}: no transition from {:?} to {:?} (Kafka's validPreviousStates)",
                    from.state,
                    next.state
                );
                assert!(
                    next.producer_id != from.producer_id
                        || next.producer_epoch >= from.producer_epoch,
                    "txn {id}: a producer id's epoch never decreases"
                );
            }
        }
    }
}

/// Whether a durable value's partitions fit its state: Ongoing holds some; Prepare* holds some,
/// or none under transaction version 2, which may abort when no partition was added (Kafka's
/// `prepareAbortOrCommit` with `noPartitionAdded`); the others hold none.
fn partitions_fit_state(v: &TxnLogValue) -> bool {
    match v.state {
        TxnState::Ongoing => !v.partitions.is_empty(),
        TxnState::PrepareCommit | TxnState::PrepareAbort => {
            !v.partitions.is_empty() || v.client_transaction_version >= TRANSACTION_VERSION_2
        }
        _ => v.partitions.is_empty(),
    }
}

/// Whether the transactional id can be handled at all: empty ids are INVALID_REQUEST (Kafka),
/// and so are ids a record key cannot hold (keel).
fn check_transactional_id(id: &str) -> Result<(), ErrorCode> {
    if id.is_empty() || id.len() > TRANSACTIONAL_ID_BYTES_MAX {
        Err(code::INVALID_REQUEST)
    } else {
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The coordinator
// ---------------------------------------------------------------------------------------------

/// Every transactional id of one `__transaction_state` partition. See the module doc for the
/// order in which the shell drains outputs.
#[derive(Clone, Debug, PartialEq)]
pub struct TxnCoordinator {
    config: TxnConfig,
    coordinator_epoch: i32,
    txns: BTreeMap<String, TxnMetadata>,
    next_seq: u64,
    committed_seq: u64,
    /// Pending transitions by record sequence.
    pending_by_seq: BTreeMap<u64, String>,
    records: Vec<(u64, TxnRecord)>,
    markers: Vec<WriteMarkers>,
    ready: Vec<(RequestId, Response)>,
}

impl TxnCoordinator {
    /// An empty coordinator. `coordinator_epoch` is the leader epoch of its
    /// `__transaction_state` partition, which every marker carries.
    pub fn new(config: TxnConfig, coordinator_epoch: i32) -> Self {
        TxnCoordinator {
            config,
            coordinator_epoch,
            txns: BTreeMap::new(),
            next_seq: 0,
            committed_seq: 0,
            pending_by_seq: BTreeMap::new(),
            records: Vec::new(),
            markers: Vec::new(),
            ready: Vec::new(),
        }
    }

    /// A coordinator rebuilt from the durable records of its partition, in log order (Kafka's
    /// `TransactionStateManager.loadTransactionsForTxnTopicPartition`): the last value per id
    /// wins, a tombstone removes the id. Every PrepareCommit/PrepareAbort resumes: its markers
    /// come out of [`TxnCoordinator::poll_markers`] again. Nothing loaded is written again,
    /// but for a transaction-version-2 abort with no partitions, which has no marker to wait
    /// for: its CompleteAbort is written at once.
    pub fn load(
        config: TxnConfig,
        coordinator_epoch: i32,
        records: impl IntoIterator<Item = TxnRecord>,
    ) -> Result<Self, LoadError> {
        let mut latest: BTreeMap<String, Option<TxnLogValue>> = BTreeMap::new();
        for r in records {
            latest.insert(r.transactional_id, r.value);
        }
        let mut c = TxnCoordinator::new(config, coordinator_epoch);
        for (id, value) in latest {
            let Some(v) = value else { continue };
            let invalid = |detail: &str| LoadError::InvalidState {
                transactional_id: id.clone(),
                detail: detail.to_string(),
            };
            if matches!(v.state, TxnState::Dead | TxnState::PrepareEpochFence) {
                return Err(invalid("a state that is never written"));
            }
            if v.producer_epoch < 0 || v.producer_id.0 < 0 {
                return Err(invalid("a negative producer id or epoch"));
            }
            if v.state.holds_partitions() && !partitions_fit_state(&v) {
                return Err(invalid("an Ongoing or Prepare* state without partitions"));
            }
            if check_transactional_id(&id).is_err() {
                return Err(invalid("an empty transactional id"));
            }
            let mut v = v;
            if !v.state.holds_partitions() {
                // Kafka writes Complete* with no partitions; a value that lists some anyway
                // has nothing left to do for them.
                v.partitions.clear();
            }
            let markers_outstanding = if v.state.is_prepare() {
                v.partitions.clone()
            } else {
                BTreeSet::new()
            };
            c.txns.insert(
                id.clone(),
                TxnMetadata {
                    transactional_id: id.clone(),
                    durable: Some(v),
                    last_producer_epoch: NO_PRODUCER_EPOCH,
                    pending: None,
                    markers_outstanding,
                },
            );
            c.emit_markers(&id);
            c.complete_if_no_markers(&id);
        }
        c.check_invariants();
        Ok(c)
    }

    /// The id `transactional_id`.
    pub fn txn(&self, transactional_id: &str) -> Option<&TxnMetadata> {
        self.txns.get(transactional_id)
    }

    /// Every id, in order.
    pub fn txns(&self) -> impl Iterator<Item = &TxnMetadata> {
        self.txns.values()
    }

    /// The coordinator's epoch.
    pub fn coordinator_epoch(&self) -> i32 {
        self.coordinator_epoch
    }

    /// Checks every id's invariants and the bookkeeping of pending records; panics naming the
    /// one broken.
    pub fn check_invariants(&self) {
        for (id, t) in &self.txns {
            assert_eq!(id, &t.transactional_id, "txns are keyed by their id");
            t.check_invariants();
            if let Some(p) = &t.pending {
                assert!(
                    p.seq > self.committed_seq,
                    "txn {id}: a pending transition's record is not yet durable"
                );
                assert_eq!(
                    self.pending_by_seq.get(&p.seq),
                    Some(id),
                    "txn {id}: a pending transition is indexed by its sequence"
                );
            }
        }
        for (seq, id) in &self.pending_by_seq {
            let p = self.txns.get(id).and_then(|t| t.pending.as_ref());
            assert_eq!(
                p.map(|p| p.seq),
                Some(*seq),
                "the sequence index points at pending transitions only"
            );
        }
    }

    // --- requests ----------------------------------------------------------------------------

    /// InitProducerId with a transactional id (Kafka's `handleInitProducerId`): a new producer
    /// id for a new id; otherwise the epoch bumps, fencing every older producer of the id. With
    /// an open transaction, the coordinator instead fences it (epoch + 1, abort) and answers
    /// CONCURRENT_TRANSACTIONS; the client retries once the abort completes. `allocate` gives a
    /// fresh producer id, or `None` when the broker has none at hand
    /// (COORDINATOR_LOAD_IN_PROGRESS, retriable, as Kafka's `RPCProducerIdManager`).
    pub fn handle_init_producer_id(
        &mut self,
        now_ms: i64,
        id: RequestId,
        req: &InitProducerIdRequest,
        mut allocate: impl FnMut() -> Option<ProducerId>,
    ) -> Reply<InitProducerIdResponse> {
        let fail = |e| Reply::Now(InitProducerIdResponse::error(e));
        if let Err(e) = check_transactional_id(&req.transactional_id) {
            return fail(e);
        }
        if req.transaction_timeout_ms <= 0
            || req.transaction_timeout_ms > self.config.transaction_max_timeout_ms
        {
            return fail(code::INVALID_TRANSACTION_TIMEOUT);
        }
        let expected = match (req.producer_id, req.producer_epoch) {
            (ProducerId::NONE, NO_PRODUCER_EPOCH) => None,
            (ProducerId::NONE, _) | (_, NO_PRODUCER_EPOCH) => return fail(code::INVALID_REQUEST),
            (pid, epoch) => Some((pid, epoch)),
        };
        let (current, last_epoch) = match self.txns.get(&req.transactional_id) {
            Some(t) if t.pending.is_some() => return fail(code::CONCURRENT_TRANSACTIONS),
            Some(t) => (
                t.durable
                    .clone()
                    .expect("invariant: an id with nothing pending is durable"),
                t.last_producer_epoch,
            ),
            None => {
                let Some(pid) = allocate() else {
                    return fail(code::COORDINATOR_LOAD_IN_PROGRESS);
                };
                // Kafka's fresh `TransactionMetadata`: the new producer id with no epoch.
                let fresh = TxnLogValue {
                    producer_id: pid,
                    previous_producer_id: ProducerId::NONE,
                    next_producer_id: ProducerId::NONE,
                    producer_epoch: NO_PRODUCER_EPOCH,
                    timeout_ms: req.transaction_timeout_ms,
                    state: TxnState::Empty,
                    partitions: BTreeSet::new(),
                    last_update_ms: now_ms,
                    start_ms: -1,
                    client_transaction_version: 0,
                };
                (fresh, NO_PRODUCER_EPOCH)
            }
        };
        // Kafka's `isValidProducerId`: a new id, the current producer id, or a retry of a bump
        // that moved to a new producer id (the client's epoch exhausted).
        if let Some((pid, epoch)) = expected {
            let valid = current.producer_epoch == NO_PRODUCER_EPOCH
                || pid == current.producer_id
                || (pid == current.previous_producer_id && epoch >= EPOCH_EXHAUSTED);
            if !valid {
                return fail(code::PRODUCER_FENCED);
            }
        }
        let transition = |state| TxnLogValue {
            previous_producer_id: current.producer_id,
            state,
            last_update_ms: now_ms,
            ..current.clone()
        };
        match current.state {
            TxnState::PrepareCommit | TxnState::PrepareAbort => fail(code::CONCURRENT_TRANSACTIONS),
            TxnState::Ongoing => {
                // Fence the open transaction: abort it with the epoch bumped, so that nothing
                // of the old producer is accepted again; the client retries.
                let next = TxnLogValue {
                    producer_epoch: Self::fenced_epoch(&current),
                    ..transition(TxnState::PrepareAbort)
                };
                let reply = (
                    id,
                    Response::InitProducerId(InitProducerIdResponse::error(
                        code::CONCURRENT_TRANSACTIONS,
                    )),
                );
                self.write(
                    &req.transactional_id,
                    Some(next),
                    NO_PRODUCER_EPOCH,
                    Some(reply),
                );
                Reply::Pending
            }
            TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort => {
                let empty = |epoch, timeout_ms| TxnLogValue {
                    producer_epoch: epoch,
                    timeout_ms,
                    partitions: BTreeSet::new(),
                    start_ms: -1,
                    ..transition(TxnState::Empty)
                };
                let exhausted = current.producer_epoch >= EPOCH_EXHAUSTED;
                let (next, next_last_epoch) =
                    if exhausted && expected.is_none_or(|(_, e)| e == current.producer_epoch) {
                        // Kafka's `prepareProducerIdRotation`.
                        let Some(pid) = allocate() else {
                            return fail(code::COORDINATOR_LOAD_IN_PROGRESS);
                        };
                        let last = match expected {
                            Some(_) => current.producer_epoch,
                            None => NO_PRODUCER_EPOCH,
                        };
                        let next = TxnLogValue {
                            producer_id: pid,
                            ..empty(0, req.transaction_timeout_ms)
                        };
                        (next, last)
                    } else {
                        // Kafka's `prepareIncrementProducerEpoch`.
                        let (epoch, last) = match expected {
                            None => (current.producer_epoch + 1, NO_PRODUCER_EPOCH),
                            Some((_, e))
                                if current.producer_epoch == NO_PRODUCER_EPOCH
                                    || e == current.producer_epoch =>
                            {
                                (current.producer_epoch + 1, current.producer_epoch)
                            }
                            // A retry of a bump whose answer the client lost.
                            Some((_, e)) if e == last_epoch => (current.producer_epoch, last_epoch),
                            Some(_) => return fail(code::PRODUCER_FENCED),
                        };
                        assert!(
                            epoch <= EPOCH_EXHAUSTED,
                            "txn {}: an epoch bump stays within the producer id's epochs",
                            req.transactional_id
                        );
                        (empty(epoch, req.transaction_timeout_ms), last)
                    };
                let reply = (
                    id,
                    Response::InitProducerId(InitProducerIdResponse {
                        error_code: code::NONE,
                        producer_id: next.producer_id,
                        producer_epoch: next.producer_epoch,
                    }),
                );
                self.write(
                    &req.transactional_id,
                    Some(next),
                    next_last_epoch,
                    Some(reply),
                );
                Reply::Pending
            }
            TxnState::Dead | TxnState::PrepareEpochFence => {
                unreachable!("invariant: Dead and PrepareEpochFence are never durable")
            }
        }
    }

    /// The epoch a fence bumps `current` to (Kafka's `prepareFenceProducerEpoch`): one more,
    /// except at `i16::MAX`, where the abort keeps the epoch rather than overflow (Kafka logs
    /// an error). Only a producer that sends the fence's own epoch, which no answer ever gives
    /// out, can open a transaction at `i16::MAX`.
    fn fenced_epoch(current: &TxnLogValue) -> i16 {
        current.producer_epoch.saturating_add(1)
    }

    /// The checks every request of a producer passes first (Kafka's order): the id, the
    /// producer id, the epoch. Returns the id's durable state.
    fn check_producer(
        &self,
        transactional_id: &str,
        producer_id: ProducerId,
        producer_epoch: i16,
    ) -> Result<(&TxnMetadata, &TxnLogValue), ErrorCode> {
        check_transactional_id(transactional_id)?;
        let t = self
            .txns
            .get(transactional_id)
            .ok_or(code::INVALID_PRODUCER_ID_MAPPING)?;
        let current = t
            .durable
            .as_ref()
            .ok_or(code::INVALID_PRODUCER_ID_MAPPING)?;
        if current.producer_id != producer_id {
            return Err(code::INVALID_PRODUCER_ID_MAPPING);
        }
        let planted_accepts = crate::planted::active(crate::planted::Bug::FencedEpochAccepted)
            && producer_epoch < current.producer_epoch;
        if current.producer_epoch != producer_epoch && !planted_accepts {
            return Err(code::PRODUCER_FENCED);
        }
        Ok((t, current))
    }

    /// AddPartitionsToTxn (Kafka's `handleAddPartitionsToTransaction`): adds the partitions to
    /// the transaction, starting one if there is none. The answer (for every partition) waits
    /// for the record, unless every partition is already in the transaction.
    pub fn handle_add_partitions(
        &mut self,
        now_ms: i64,
        id: RequestId,
        req: &AddPartitionsRequest,
    ) -> Reply<ErrorCode> {
        let partitions: BTreeSet<TopicPartition> = req.partitions.iter().cloned().collect();
        self.add_partitions(
            now_ms,
            id,
            &req.transactional_id,
            req.producer_id,
            req.producer_epoch,
            partitions,
            req.transaction_version,
            Response::AddPartitions(code::NONE),
        )
    }

    /// AddOffsetsToTxn: adds the `__consumer_offsets` partition of `group_id` (of
    /// `offsets_partitions`) to the transaction, as Kafka's `KafkaApis` does.
    pub fn handle_add_offsets(
        &mut self,
        now_ms: i64,
        id: RequestId,
        req: &AddOffsetsRequest,
        offsets_partitions: i32,
    ) -> Reply<ErrorCode> {
        let partition = TopicPartition {
            topic: OFFSETS_TOPIC.to_string(),
            partition: partition_for(&req.group_id, offsets_partitions),
        };
        self.add_partitions(
            now_ms,
            id,
            &req.transactional_id,
            req.producer_id,
            req.producer_epoch,
            BTreeSet::from([partition]),
            0,
            Response::AddOffsets(code::NONE),
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn add_partitions(
        &mut self,
        now_ms: i64,
        id: RequestId,
        transactional_id: &str,
        producer_id: ProducerId,
        producer_epoch: i16,
        partitions: BTreeSet<TopicPartition>,
        transaction_version: i16,
        ok: Response,
    ) -> Reply<ErrorCode> {
        let (t, current) = match self.check_producer(transactional_id, producer_id, producer_epoch)
        {
            Ok(found) => found,
            Err(e) => return Reply::Now(e),
        };
        if t.pending.is_some() || current.state.is_prepare() {
            return Reply::Now(code::CONCURRENT_TRANSACTIONS);
        }
        if partitions.is_empty()
            || (current.state == TxnState::Ongoing && partitions.is_subset(&current.partitions))
        {
            return Reply::Now(code::NONE);
        }
        // Kafka's `prepareAddPartitions`: a new transaction starts now.
        let start_ms = if current.state == TxnState::Ongoing {
            current.start_ms
        } else {
            now_ms
        };
        let next = TxnLogValue {
            previous_producer_id: current.producer_id,
            state: TxnState::Ongoing,
            partitions: current.partitions.union(&partitions).cloned().collect(),
            start_ms,
            last_update_ms: now_ms,
            // Kafka's `prepareAddPartitions` keeps the version of the client that adds; an
            // AddOffsetsToTxn (a version-1 request) leaves a version-2 transaction one.
            client_transaction_version: transaction_version.max(
                if current.state == TxnState::Ongoing {
                    current.client_transaction_version
                } else {
                    0
                },
            ),
            ..current.clone()
        };
        let last_epoch = t.last_producer_epoch;
        self.write(transactional_id, Some(next), last_epoch, Some((id, ok)));
        Reply::Pending
    }

    /// When the durable Ongoing transaction of `transactional_id` started, if there is one:
    /// what a partition leader is told with its verification, so that it can refuse the
    /// markers of earlier transactions ([`WriteMarkers::txn_start_ms`]).
    pub fn txn_start_ms(&self, transactional_id: &str) -> Option<i64> {
        let v = self.txns.get(transactional_id)?.durable.as_ref()?;
        (v.state == TxnState::Ongoing && v.start_ms >= 0).then_some(v.start_ms)
    }

    /// KIP-890's verify-only AddPartitionsToTxn (Kafka's
    /// `handleVerifyPartitionsInTransaction`), which a partition leader sends before it
    /// accepts a transaction's first write: per partition NONE if the durable transaction
    /// holds it, else TRANSACTION_ABORTABLE; or one error for the whole transaction. Changes
    /// nothing.
    pub fn verify_partitions(
        &self,
        req: &AddPartitionsRequest,
    ) -> Result<Vec<(TopicPartition, ErrorCode)>, ErrorCode> {
        let (t, current) =
            self.check_producer(&req.transactional_id, req.producer_id, req.producer_epoch)?;
        if t.pending.is_some() || current.state.is_prepare() {
            return Err(code::CONCURRENT_TRANSACTIONS);
        }
        Ok(req
            .partitions
            .iter()
            .map(|tp| {
                let added = current.state == TxnState::Ongoing && current.partitions.contains(tp);
                let error = if added {
                    code::NONE
                } else {
                    code::TRANSACTION_ABORTABLE
                };
                (tp.clone(), error)
            })
            .collect())
    }

    /// EndTxn (Kafka's `handleEndTransaction`): an Ongoing transaction moves to PrepareCommit
    /// or PrepareAbort; the answer waits for that record, and the markers follow it. A retry
    /// of an EndTxn that completed is answered NONE, one still completing
    /// CONCURRENT_TRANSACTIONS; the opposite result, or no transaction, INVALID_TXN_STATE.
    pub fn handle_end_txn(
        &mut self,
        now_ms: i64,
        id: RequestId,
        req: &EndTxnRequest,
    ) -> Reply<ErrorCode> {
        let (t, current) =
            match self.check_producer(&req.transactional_id, req.producer_id, req.producer_epoch) {
                Ok(found) => found,
                Err(e) => return Reply::Now(e),
            };
        if t.pending.is_some() {
            return Reply::Now(code::CONCURRENT_TRANSACTIONS);
        }
        let commit = req.result == TxnResult::Commit;
        let answer = match current.state {
            TxnState::Ongoing => {
                let state = if commit {
                    TxnState::PrepareCommit
                } else {
                    TxnState::PrepareAbort
                };
                let next = TxnLogValue {
                    previous_producer_id: current.producer_id,
                    state,
                    last_update_ms: now_ms,
                    ..current.clone()
                };
                let last_epoch = t.last_producer_epoch;
                let reply = (id, Response::EndTxn(code::NONE));
                self.write(&req.transactional_id, Some(next), last_epoch, Some(reply));
                return Reply::Pending;
            }
            TxnState::CompleteCommit if commit => code::NONE,
            TxnState::CompleteAbort if !commit => code::NONE,
            TxnState::PrepareCommit if commit => code::CONCURRENT_TRANSACTIONS,
            TxnState::PrepareAbort if !commit => code::CONCURRENT_TRANSACTIONS,
            TxnState::Empty
            | TxnState::CompleteCommit
            | TxnState::CompleteAbort
            | TxnState::PrepareCommit
            | TxnState::PrepareAbort => code::INVALID_TXN_STATE,
            TxnState::Dead | TxnState::PrepareEpochFence => {
                unreachable!("invariant: Dead and PrepareEpochFence are never durable")
            }
        };
        Reply::Now(answer)
    }

    /// EndTxn v5, transaction version 2 (Kafka 4's `endTransaction`, KIP-890 part 2): every
    /// end of a transaction bumps the producer epoch. The Prepare* record carries the bumped
    /// epoch, so its markers do, and the partitions then refuse any write of the ended
    /// transaction that arrives late (its epoch is older); the coordinator refuses the old
    /// epoch too. The answer, once the record is durable, names the producer id and epoch of
    /// the producer's next transaction: the bumped epoch, or, when the epoch was exhausted
    /// (at [`EPOCH_EXHAUSTED`], the markers go out at `i16::MAX`), a new producer id from
    /// `allocate` at epoch 0, which CompleteCommit/CompleteAbort then moves to.
    ///
    /// Since the epoch moves, a retry is told apart by its epoch: one below the current
    /// (`epoch + 1 == current`, or the old producer id at the exhausted epoch after a move)
    /// retries the EndTxn that bumped it, and is answered NONE with the current producer id
    /// and epoch once complete (CONCURRENT_TRANSACTIONS while its markers are written); the
    /// current epoch is the next transaction's. An abort with nothing added (Empty, or
    /// Complete* at the current epoch) is a transaction of its own with no partitions: it
    /// bumps the epoch and completes at once. Any other epoch is PRODUCER_FENCED.
    pub fn handle_end_txn_v2(
        &mut self,
        now_ms: i64,
        id: RequestId,
        req: &EndTxnRequest,
        mut allocate: impl FnMut() -> Option<ProducerId>,
    ) -> Reply<EndTxnResponse> {
        let fail = |e| Reply::Now(EndTxnResponse::error(e));
        if let Err(e) = check_transactional_id(&req.transactional_id) {
            return fail(e);
        }
        let Some(t) = self.txns.get(&req.transactional_id) else {
            return fail(code::INVALID_PRODUCER_ID_MAPPING);
        };
        if t.pending.is_some() {
            // First, as Kafka: a pending move to a new producer id must land before the
            // producer's retry with either id can be judged.
            return fail(code::CONCURRENT_TRANSACTIONS);
        }
        let current = t
            .durable
            .clone()
            .expect("invariant: an id with nothing pending is durable");
        let last_epoch = current.producer_epoch;
        let retry_on_overflow = current.previous_producer_id == req.producer_id
            && req.producer_epoch == EPOCH_EXHAUSTED
            && current.producer_epoch == 0
            && current.producer_id != req.producer_id;
        let retry_on_bump = i32::from(current.producer_epoch) == i32::from(req.producer_epoch) + 1;
        if current.producer_id != req.producer_id && !retry_on_overflow {
            return fail(code::INVALID_PRODUCER_ID_MAPPING);
        }
        let same_epoch = req.producer_epoch == current.producer_epoch;
        let valid_epoch = match current.state {
            TxnState::Ongoing | TxnState::Empty => same_epoch,
            TxnState::PrepareCommit | TxnState::PrepareAbort => retry_on_bump,
            TxnState::CompleteCommit | TxnState::CompleteAbort => {
                retry_on_bump || retry_on_overflow || same_epoch
            }
            TxnState::Dead | TxnState::PrepareEpochFence => {
                unreachable!("invariant: Dead and PrepareEpochFence are never durable")
            }
        };
        if !valid_epoch {
            return fail(code::PRODUCER_FENCED);
        }
        let is_retry = retry_on_bump || retry_on_overflow;
        let commit = req.result == TxnResult::Commit;
        let done = Reply::Now(EndTxnResponse {
            error_code: code::NONE,
            producer_id: current.producer_id,
            producer_epoch: current.producer_epoch,
        });
        // (next state, no partition added), or the answer now.
        let (state, none_added) = match current.state {
            TxnState::Ongoing if commit => (TxnState::PrepareCommit, false),
            TxnState::Ongoing => (TxnState::PrepareAbort, false),
            TxnState::CompleteCommit if commit && is_retry => return done,
            TxnState::CompleteCommit if !commit && !is_retry => (TxnState::PrepareAbort, true),
            TxnState::CompleteAbort if !commit && is_retry => return done,
            TxnState::CompleteAbort if !commit => (TxnState::PrepareAbort, true),
            TxnState::Empty if !commit => (TxnState::PrepareAbort, true),
            TxnState::PrepareCommit if commit => return fail(code::CONCURRENT_TRANSACTIONS),
            TxnState::PrepareAbort if !commit => return fail(code::CONCURRENT_TRANSACTIONS),
            _ => return fail(code::INVALID_TXN_STATE),
        };
        // Kafka's `prepareAbortOrCommit` under TV2, with a new producer id when the epoch is
        // exhausted (`isProducerEpochExhausted`).
        let bump = !crate::planted::active(crate::planted::Bug::Tv2EpochNotBumped);
        let next_producer_id = if bump && current.producer_epoch >= EPOCH_EXHAUSTED {
            match allocate() {
                Some(pid) => pid,
                None => return fail(code::COORDINATOR_LOAD_IN_PROGRESS),
            }
        } else {
            ProducerId::NONE
        };
        let producer_epoch = if bump {
            current.producer_epoch.saturating_add(1)
        } else {
            current.producer_epoch
        };
        let next = TxnLogValue {
            previous_producer_id: current.producer_id,
            next_producer_id,
            producer_epoch,
            state,
            partitions: if none_added {
                BTreeSet::new()
            } else {
                current.partitions.clone()
            },
            // With nothing added the transaction's start is unknown; Kafka takes the update
            // time.
            start_ms: if none_added { now_ms } else { current.start_ms },
            last_update_ms: now_ms,
            client_transaction_version: TRANSACTION_VERSION_2,
            ..current.clone()
        };
        let answer = if next_producer_id == ProducerId::NONE {
            EndTxnResponse {
                error_code: code::NONE,
                producer_id: current.producer_id,
                producer_epoch,
            }
        } else {
            EndTxnResponse {
                error_code: code::NONE,
                producer_id: next_producer_id,
                producer_epoch: 0,
            }
        };
        let reply = (id, Response::EndTxnV2(answer));
        self.write(&req.transactional_id, Some(next), last_epoch, Some(reply));
        Reply::Pending
    }

    /// The markers of `transactional_id`'s transaction (`producer_id`, `producer_epoch`) are
    /// written to `partitions`. Once every partition's is, CompleteCommit/CompleteAbort is
    /// written. A report that does not match a transaction waiting for markers (a stale one,
    /// from before a fence or a reload) is ignored.
    pub fn markers_written(
        &mut self,
        now_ms: i64,
        transactional_id: &str,
        producer_id: ProducerId,
        producer_epoch: i16,
        partitions: &[TopicPartition],
    ) {
        let Some(t) = self.txns.get_mut(transactional_id) else {
            return;
        };
        let Some(current) = &t.durable else { return };
        if t.pending.is_some()
            || !current.state.is_prepare()
            || current.producer_id != producer_id
            || current.producer_epoch != producer_epoch
        {
            return;
        }
        for tp in partitions {
            t.markers_outstanding.remove(tp);
        }
        if t.markers_outstanding.is_empty() {
            self.complete(now_ms, transactional_id);
        }
        self.check_invariants();
    }

    /// Writes CompleteCommit/CompleteAbort for a Prepare* whose markers are all written
    /// (Kafka's `prepareComplete`: the partitions are cleared).
    fn complete(&mut self, now_ms: i64, transactional_id: &str) {
        let t = &self.txns[transactional_id];
        let current = t
            .durable
            .as_ref()
            .expect("invariant: a Prepare* state is durable");
        let state = match current.state {
            TxnState::PrepareCommit => TxnState::CompleteCommit,
            TxnState::PrepareAbort => TxnState::CompleteAbort,
            other => unreachable!("complete() from {other:?}: only Prepare* completes"),
        };
        let mut next = TxnLogValue {
            previous_producer_id: current.producer_id,
            state,
            partitions: BTreeSet::new(),
            last_update_ms: now_ms,
            ..current.clone()
        };
        if current.client_transaction_version >= TRANSACTION_VERSION_2
            && current.next_producer_id != ProducerId::NONE
        {
            // Transaction version 2 at an exhausted epoch (Kafka's `prepareComplete`): the
            // markers went out at the last epoch, and the producer goes on with the new
            // producer id at epoch 0, which its EndTxn answer already named.
            next.producer_id = current.next_producer_id;
            next.next_producer_id = ProducerId::NONE;
            next.producer_epoch = 0;
        }
        let last_epoch = t.last_producer_epoch;
        self.write(transactional_id, Some(next), last_epoch, None);
    }

    /// Completes a durable Prepare* that has no partitions (a transaction-version-2 abort with
    /// none added): there is no marker to wait for.
    fn complete_if_no_markers(&mut self, transactional_id: &str) {
        let t = &self.txns[transactional_id];
        let empty_prepare = t.pending.is_none()
            && t.durable
                .as_ref()
                .is_some_and(|v| v.state.is_prepare() && v.partitions.is_empty());
        if empty_prepare {
            let now_ms = t.durable.as_ref().map_or(0, |v| v.last_update_ms);
            self.complete(now_ms, transactional_id);
        }
    }

    /// DescribeTransactions: each id's durable state, TRANSACTIONAL_ID_NOT_FOUND, or for an
    /// empty id INVALID_REQUEST.
    pub fn describe(&self, transactional_ids: &[String]) -> Vec<DescribedTxn> {
        transactional_ids
            .iter()
            .map(|id| {
                if id.is_empty() {
                    return DescribedTxn {
                        error_code: code::INVALID_REQUEST,
                        ..DescribedTxn::not_found(id)
                    };
                }
                match self.txns.get(id).and_then(|t| t.durable.as_ref()) {
                    Some(v) => DescribedTxn {
                        transactional_id: id.clone(),
                        error_code: code::NONE,
                        state: v.state,
                        timeout_ms: v.timeout_ms,
                        start_ms: v.start_ms,
                        producer_id: v.producer_id,
                        producer_epoch: v.producer_epoch,
                        partitions: v.partitions.iter().cloned().collect(),
                    },
                    None => DescribedTxn::not_found(id),
                }
            })
            .collect()
    }

    /// ListTransactions (KIP-664, KIP-994): the ids in one of `states` (all when empty), held by
    /// one of `producer_ids` (all when empty), and, when `duration_filter_ms` >= 0, whose
    /// transaction started more than that long before `now_ms` (Kafka's
    /// `TransactionStateManager.listTransactionStates`).
    pub fn list(
        &self,
        now_ms: i64,
        states: &[TxnState],
        producer_ids: &[ProducerId],
        duration_filter_ms: i64,
    ) -> Vec<ListedTxn> {
        self.txns
            .values()
            .filter_map(|t| t.durable.as_ref().map(|v| (t, v)))
            .filter(|(_, v)| states.is_empty() || states.contains(&v.state))
            .filter(|(_, v)| producer_ids.is_empty() || producer_ids.contains(&v.producer_id))
            .filter(|(_, v)| duration_filter_ms < 0 || now_ms - v.start_ms > duration_filter_ms)
            .map(|(t, v)| ListedTxn {
                transactional_id: t.transactional_id.clone(),
                producer_id: v.producer_id,
                state: v.state,
            })
            .collect()
    }

    // --- time --------------------------------------------------------------------------------

    /// Runs what is due at `now_ms`: an Ongoing transaction past its start + timeout is fenced
    /// and aborted (epoch + 1, Kafka's `abortTimedOutTransactions`); an Empty or Complete* id
    /// idle for `transactional.id.expiration.ms` is removed with a tombstone (Kafka's
    /// `removeExpiredTransactionalIds`). Ids with a transition pending wait.
    pub fn poll(&mut self, now_ms: i64) {
        let mut fence = Vec::new();
        let mut expire = Vec::new();
        for (id, t) in &self.txns {
            let Some(v) = t.durable.as_ref().filter(|_| t.pending.is_none()) else {
                continue;
            };
            match v.state {
                TxnState::Ongoing if now_ms > v.start_ms.saturating_add(v.timeout_ms.into()) => {
                    fence.push(id.clone());
                }
                TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort
                    if now_ms
                        >= v.last_update_ms
                            .saturating_add(self.config.transactional_id_expiration_ms) =>
                {
                    expire.push(id.clone());
                }
                _ => {}
            }
        }
        for id in fence {
            let current = self.txns[&id].durable.clone().expect("checked: durable");
            let next = TxnLogValue {
                previous_producer_id: current.producer_id,
                producer_epoch: Self::fenced_epoch(&current),
                state: TxnState::PrepareAbort,
                last_update_ms: now_ms,
                ..current
            };
            self.write(&id, Some(next), NO_PRODUCER_EPOCH, None);
        }
        for id in expire {
            let last_epoch = self.txns[&id].last_producer_epoch;
            self.write(&id, None, last_epoch, None);
        }
        self.check_invariants();
    }

    /// When [`TxnCoordinator::poll`] next has work: the earliest transaction timeout or id
    /// expiry, or `None`. Ids with a transition pending count once it is durable.
    pub fn next_deadline_ms(&self) -> Option<i64> {
        self.txns
            .values()
            .filter(|t| t.pending.is_none())
            .filter_map(|t| t.durable.as_ref())
            .filter_map(|v| match v.state {
                TxnState::Ongoing => Some(
                    v.start_ms
                        .saturating_add(v.timeout_ms.into())
                        .saturating_add(1),
                ),
                TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort => Some(
                    v.last_update_ms
                        .saturating_add(self.config.transactional_id_expiration_ms),
                ),
                _ => None,
            })
            .min()
    }

    // --- outputs and durability --------------------------------------------------------------

    /// Records to append, with their sequence numbers, in order.
    pub fn poll_records(&mut self) -> Vec<(u64, TxnRecord)> {
        std::mem::take(&mut self.records)
    }

    /// Markers to write. Each comes out once; a reloaded coordinator emits those of every
    /// Prepare* again.
    pub fn poll_markers(&mut self) -> Vec<WriteMarkers> {
        std::mem::take(&mut self.markers)
    }

    /// Answers to send.
    pub fn poll_responses(&mut self) -> Vec<(RequestId, Response)> {
        std::mem::take(&mut self.ready)
    }

    /// The sequence of the last record written (0: none).
    pub fn last_record_seq(&self) -> u64 {
        self.next_seq
    }

    /// The records up to sequence `seq` are durable: their transitions complete (Kafka's
    /// `completeTransitionTo`), the answers held for them are released, and a durable
    /// PrepareCommit/PrepareAbort emits its markers.
    pub fn records_committed(&mut self, seq: u64) {
        assert!(
            seq <= self.next_seq,
            "records_committed({seq}) past the last record written ({})",
            self.next_seq
        );
        if seq <= self.committed_seq {
            return;
        }
        self.committed_seq = seq;
        let later = self.pending_by_seq.split_off(&(seq + 1));
        let done = std::mem::replace(&mut self.pending_by_seq, later);
        for (_, id) in done {
            let t = self
                .txns
                .get_mut(&id)
                .expect("invariant: indexed ids exist");
            let p = t
                .pending
                .take()
                .expect("invariant: indexed ids are pending");
            match p.next {
                None => {
                    self.txns.remove(&id);
                }
                Some(next) => {
                    t.last_producer_epoch = p.last_producer_epoch;
                    if next.state.is_prepare() {
                        assert!(
                            partitions_fit_state(&next),
                            "txn {id}: a Prepare* state holds partitions (it comes from Ongoing), \
                             unless a transaction-version-2 abort with none"
                        );
                        t.markers_outstanding = next.partitions.clone();
                    }
                    t.durable = Some(next);
                    self.emit_markers(&id);
                    self.complete_if_no_markers(&id);
                }
            }
            if let Some(reply) = p.reply {
                self.ready.push(reply);
            }
        }
        self.check_invariants();
    }

    /// Emits the markers of `id` if it is a durable Prepare* with markers outstanding.
    fn emit_markers(&mut self, id: &str) {
        let t = &self.txns[id];
        let Some(v) = &t.durable else { return };
        let result = match v.state {
            TxnState::PrepareCommit => TxnResult::Commit,
            TxnState::PrepareAbort => TxnResult::Abort,
            _ => return,
        };
        if t.markers_outstanding.is_empty() {
            return;
        }
        self.markers.push(WriteMarkers {
            transactional_id: id.to_string(),
            producer_id: v.producer_id,
            producer_epoch: v.producer_epoch,
            result,
            coordinator_epoch: self.coordinator_epoch,
            partitions: t.markers_outstanding.iter().cloned().collect(),
            txn_start_ms: v.start_ms,
        });
    }

    /// Writes a transition of `id` (a new state, or `None` for a tombstone) and keeps it
    /// pending until [`TxnCoordinator::records_committed`] covers it.
    fn write(
        &mut self,
        id: &str,
        next: Option<TxnLogValue>,
        last_producer_epoch: i16,
        reply: Option<(RequestId, Response)>,
    ) {
        self.next_seq += 1;
        let seq = self.next_seq;
        let t = self
            .txns
            .entry(id.to_string())
            .or_insert_with(|| TxnMetadata {
                transactional_id: id.to_string(),
                durable: None,
                last_producer_epoch: NO_PRODUCER_EPOCH,
                pending: None,
                markers_outstanding: BTreeSet::new(),
            });
        assert!(
            t.pending.is_none(),
            "txn {id}: one transition at a time (Kafka's pendingTransitionInProgress)"
        );
        self.records.push((
            seq,
            TxnRecord {
                transactional_id: id.to_string(),
                value: next.clone(),
            },
        ));
        t.pending = Some(Pending {
            seq,
            next,
            last_producer_epoch,
            reply,
        });
        self.pending_by_seq.insert(seq, id.to_string());
    }

    /// The coordinator lost its partition: every answer still held for a record is answered
    /// NOT_COORDINATOR, after the answers already released.
    pub fn resign(mut self) -> Vec<(RequestId, Response)> {
        let mut out = std::mem::take(&mut self.ready);
        for id in self.pending_by_seq.values() {
            let reply = self.txns.get_mut(id).and_then(|t| t.pending.take()?.reply);
            if let Some((request, response)) = reply {
                out.push((request, response.with_error(code::NOT_COORDINATOR)));
            }
        }
        out
    }
}
