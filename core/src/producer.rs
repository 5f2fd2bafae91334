//! Idempotent producer state for one partition: Kafka's `ProducerStateManager`,
//! `ProducerStateEntry` and `ProducerAppendInfo`.
//!
//! A [`ProducerStateTable`] maps each producer id that wrote to the partition to a
//! [`ProducerEntry`]: its current epoch, the metadata of its last [`BATCHES_RETAINED_MAX`]
//! batches (first and last sequence, base and last offset) and the max timestamp of its last
//! batch. It owns nothing on disk; snapshots of it are files the caller stores through a
//! [`Storage`] with the helpers below.
//!
//! # Rules for a batch from a client ([`ProducerStateTable::check`])
//! In this order (Kafka's `UnifiedLog.analyzeAndValidateProducerState`, `LogValidator`,
//! `ProducerAppendInfo.checkProducerEpoch` and `checkSequence`):
//! 1. producer id < 0 (Kafka's `hasProducerId` is `producerId > -1`): not idempotent, append.
//! 2. producer id >= 0 with a negative base sequence: [`ProducerError::InvalidSequence`]
//!    (`LogValidator.validateBatch`, INVALID_RECORD).
//! 3. the producer is known, the epoch equals its epoch, and one of its cached batches has
//!    exactly the same first and last sequence: [`ProducerCheck::Duplicate`] with that batch's
//!    original offsets. The broker answers success with them and does not append
//!    (`ProducerStateEntry.findDuplicateBatch`).
//! 4. unknown producer (no entry, for example expired or never seen): append, whatever the
//!    sequence (Kafka accepts any sequence when there is no current producer epoch).
//! 5. epoch older than the entry's: [`ProducerError::InvalidProducerEpoch`] (error 47).
//! 6. epoch newer than the entry's: the first sequence must be 0, else
//!    [`ProducerError::OutOfOrderSequence`] (error 45).
//! 7. same epoch: the first sequence must be the entry's last sequence + 1, wrapping from
//!    `i32::MAX` to 0, else [`ProducerError::OutOfOrderSequence`].
//!
//! # Recording ([`ProducerStateTable::record`])
//! Every batch that enters the log, from a client, a leader (replication) or the log itself
//! (replay on open), is recorded in offset order, with its final offsets stamped. Recording does
//! not validate (Kafka does not validate replicated or replayed batches either): it writes down
//! what the log holds. A batch whose epoch differs from the entry's replaces the entry's epoch
//! and clears its cached batches (`ProducerStateEntry.maybeUpdateProducerEpoch`). Control batches
//! (transaction markers) and batches without a producer id only advance [`ProducerStateTable::end`];
//! transactions are the partition's ([`txn`] holds their bookkeeping, which
//! `partition::txn` keeps beside this table).
//!
//! # Invariants
//! - [`ProducerStateTable::end`] moves forward with every recorded batch, which ends past its
//!   base (always-on assertion), and back only to a truncation point (a batch recorded below
//!   `end`, or [`ProducerStateTable::truncate_from`]): the table describes exactly the batches
//!   below `end`, less producers whose every cached batch a truncation removed.
//! - Every entry holds between 1 and [`BATCHES_RETAINED_MAX`] batches, all of the entry's
//!   epoch, in increasing offset order, all below `end`.
//! - Iteration order is the producer id order (a `BTreeMap`): snapshots are deterministic.
//!
//! # Snapshots and recovery
//! A snapshot is the whole table at its `end` offset, stored as `{end:020}.snapshot` (Kafka's
//! name) and written atomically ([`write_snapshot`]). Unlike Kafka's, keel's snapshot keeps all
//! cached batches per producer, not only the last, so a table rebuilt from a snapshot plus the
//! log after it equals the table before the crash. Format, big-endian:
//!
//! ```text
//! offset  size  field
//!      0     4  magic "KPST"
//!      4     2  version = 1
//!      6     4  CRC-32C of every byte after this field
//!     10     8  end offset: the snapshot covers every batch below it
//!     18     4  producer count
//!     22     …  producers, in increasing producer id order, each:
//!                 8 producer id, 2 epoch, 8 last timestamp, 1 batch count (1..=5),
//!                 then per batch: 4 first sequence, 4 last sequence, 8 base offset, 8 last offset
//! ```
//!
//! [`decode_snapshot`] checks the CRC and every invariant above; a snapshot that fails is an
//! error, never a panic. Recovery ([`recover`], used on open and after the log is truncated):
//! remove the snapshots above the log end offset, take the newest snapshot at or below it that
//! decodes (removing corrupt ones, as Kafka's `loadFromSnapshot` does), then replay the log
//! from the snapshot's end (or the log start offset) to the log end offset.

#![warn(missing_docs)]

#[cfg(test)]
mod tests;
pub mod txn;
pub mod txn_index;

use std::collections::{BTreeMap, VecDeque};

use crate::batch::BatchHeader;
use crate::error_code::{self as code, ErrorCode};
use crate::log::{Log, LogError};
use crate::storage::{self, Storage, StorageError};
use crate::types::{Offset, ProducerId};

/// How many batches per producer are remembered for duplicate detection (Kafka's
/// `ProducerStateEntry.NumBatchesToRetain`; clients cap in-flight requests at 5 to match).
pub const BATCHES_RETAINED_MAX: usize = 5;
/// Kafka's default `producer.id.expiration.ms`: one day.
pub const PRODUCER_ID_EXPIRATION_MS_DEFAULT: i64 = 24 * 60 * 60 * 1000;
/// The suffix of snapshot file names (Kafka's `ProducerSnapshotFileSuffix`).
pub const SNAPSHOT_SUFFIX: &str = ".snapshot";
/// The snapshot format version this code writes and reads.
pub const SNAPSHOT_VERSION: u16 = 1;
/// Bytes read at once when replaying the log.
const REPLAY_READ_BYTES: usize = 1 << 20;
/// The attributes bit of a control batch (transaction marker).
const ATTR_CONTROL: i16 = 0x20;

/// Byte offsets of the snapshot header fields, chained.
mod field {
    pub const MAGIC: usize = 0;
    pub const VERSION: usize = MAGIC + 4;
    pub const CRC: usize = VERSION + 2;
    pub const END: usize = CRC + 4;
    pub const COUNT: usize = END + 8;
    pub const PRODUCERS: usize = COUNT + 4;
}
const SNAPSHOT_MAGIC: [u8; 4] = *b"KPST";
/// Size of the snapshot header.
const SNAPSHOT_HEADER_BYTES: usize = field::PRODUCERS;
/// Size of one producer's fixed part: id, epoch, last timestamp, batch count.
const ENTRY_HEADER_BYTES: usize = 8 + 2 + 8 + 1;
/// Size of one cached batch: first and last sequence, base and last offset.
const ENTRY_BATCH_BYTES: usize = 4 + 4 + 8 + 8;

/// One cached batch of a producer: its sequence range and where the log put it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchMetadata {
    /// The batch's base sequence.
    pub first_seq: i32,
    /// The sequence of its last record (wrapping past `i32::MAX` to 0).
    pub last_seq: i32,
    /// The offset the log assigned to its first record.
    pub base_offset: Offset,
    /// The offset of its last record.
    pub last_offset: Offset,
}

/// What the partition knows about one producer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProducerEntry {
    epoch: i16,
    /// Oldest first; never empty, at most [`BATCHES_RETAINED_MAX`].
    batches: VecDeque<BatchMetadata>,
    last_timestamp: i64,
}

impl ProducerEntry {
    /// The producer's current epoch.
    pub fn epoch(&self) -> i16 {
        self.epoch
    }

    /// The cached batches of the current epoch, oldest first (1 to [`BATCHES_RETAINED_MAX`]).
    pub fn batches(&self) -> impl ExactSizeIterator<Item = &BatchMetadata> {
        self.batches.iter()
    }

    /// The last sequence the producer wrote.
    pub fn last_seq(&self) -> i32 {
        self.newest().last_seq
    }

    /// The offset of the last record the producer wrote.
    pub fn last_offset(&self) -> Offset {
        self.newest().last_offset
    }

    /// The max timestamp of the producer's last batch (Kafka's `lastTimestamp`): what
    /// [`ProducerStateTable::expire`] compares with.
    pub fn last_timestamp(&self) -> i64 {
        self.last_timestamp
    }

    fn newest(&self) -> &BatchMetadata {
        self.batches
            .back()
            .expect("invariant: a producer entry holds at least one batch")
    }
}

/// The verdict on a client batch: append it, or answer it as a duplicate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProducerCheck {
    /// Append the batch (then [`ProducerStateTable::record`] it).
    Append,
    /// The batch was appended before: do not append it again; answer success with the original
    /// offsets.
    Duplicate {
        /// The original batch's base offset.
        base_offset: Offset,
        /// The original batch's last offset.
        last_offset: Offset,
    },
}

/// Why a client batch is refused. Each maps to a Kafka error code ([`ProducerError::code`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProducerError {
    /// The batch's epoch is older than the producer's current epoch: a fenced (zombie)
    /// producer. Kafka's INVALID_PRODUCER_EPOCH.
    #[error("producer {producer_id} epoch {got} is older than the current epoch {current}")]
    InvalidProducerEpoch {
        /// The producer.
        producer_id: ProducerId,
        /// Its current epoch.
        current: i16,
        /// The batch's epoch.
        got: i16,
    },
    /// The batch does not continue the producer's sequence. Kafka's
    /// OUT_OF_ORDER_SEQUENCE_NUMBER.
    #[error("producer {producer_id}: expected sequence {expected}, got {got}")]
    OutOfOrderSequence {
        /// The producer.
        producer_id: ProducerId,
        /// The first sequence the batch needed.
        expected: i32,
        /// The batch's first sequence.
        got: i32,
    },
    /// An idempotent batch (producer id >= 0) with a negative base sequence. Kafka's
    /// INVALID_RECORD (`LogValidator.validateBatch`).
    #[error("producer {producer_id}: invalid base sequence {sequence}")]
    InvalidSequence {
        /// The producer.
        producer_id: ProducerId,
        /// The batch's base sequence.
        sequence: i32,
    },
}

impl ProducerError {
    /// Kafka's error code for this error (Errors.java).
    pub fn code(&self) -> ErrorCode {
        match self {
            ProducerError::OutOfOrderSequence { .. } => code::OUT_OF_ORDER_SEQUENCE_NUMBER,
            ProducerError::InvalidProducerEpoch { .. } => code::INVALID_PRODUCER_EPOCH,
            ProducerError::InvalidSequence { .. } => code::INVALID_RECORD,
        }
    }
}

/// Why snapshot bytes are not a valid snapshot. Every variant blames the bytes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// The bytes end before the snapshot does.
    #[error("truncated snapshot: need {need} bytes, have {have}")]
    Truncated {
        /// Bytes needed to read on.
        need: usize,
        /// Bytes there are.
        have: usize,
    },
    /// The first four bytes are not the snapshot magic.
    #[error("not a producer state snapshot (bad magic)")]
    BadMagic,
    /// A version this code does not read.
    #[error("unsupported snapshot version {0}")]
    UnsupportedVersion(u16),
    /// The CRC does not match the bytes.
    #[error("snapshot CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch {
        /// The CRC in the snapshot.
        stored: u32,
        /// The CRC of the bytes.
        computed: u32,
    },
    /// The bytes decode but break an invariant of the table.
    #[error("invalid snapshot: {0}")]
    Invalid(String),
    /// Bytes follow the last producer.
    #[error("{0} unexpected bytes after the last producer")]
    TrailingBytes(usize),
}

/// Why loading producer state failed: reading snapshots, or replaying the log.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecoverError {
    /// Listing, reading or removing snapshot files failed.
    #[error("snapshot storage: {0}")]
    Storage(#[from] StorageError),
    /// Reading the log for the replay failed.
    #[error("log: {0}")]
    Log(#[from] LogError),
}

/// What [`load`] found among the snapshot files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// The end offset of the snapshot the table was loaded from, if any.
    pub snapshot: Option<Offset>,
    /// Snapshots removed because they lie above the log end offset (a truncated or lost tail).
    pub removed_above_end: Vec<Offset>,
    /// Snapshots removed because they failed to decode, with why.
    pub removed_corrupt: Vec<(Offset, SnapshotError)>,
}

/// The producer state of one partition. See the module documentation for the rules and
/// invariants.
///
/// Use, on the leader for a client batch: [`check`](Self::check); on `Append`, append the batch
/// to the log, then [`record`](Self::record) its stamped header; on `Duplicate`, answer with the
/// offsets and append nothing. Followers record every replicated batch. On open and after
/// every log truncation ([`Log::truncate_to`]), rebuild with [`recover`]. When the log is
/// emptied and restarted at an offset ([`Log::truncate_fully_and_start_at`]), call
/// [`remove_all_snapshots`] and start over with [`ProducerStateTable::new`] at that offset.
/// Take snapshots ([`write_snapshot`]) after [`Log::sync`], for example on segment roll and on
/// clean shutdown, and bound them with [`prune_snapshots`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProducerStateTable {
    producers: BTreeMap<ProducerId, ProducerEntry>,
    /// Every batch below this offset has been recorded (Kafka's `mapEndOffset`).
    end: Offset,
}

impl ProducerStateTable {
    /// An empty table for a log whose next batch starts at or after `start`.
    pub fn new(start: Offset) -> Self {
        ProducerStateTable {
            producers: BTreeMap::new(),
            end: start,
        }
    }

    /// The offset up to which batches have been recorded: replay continues from here.
    pub fn end(&self) -> Offset {
        self.end
    }

    /// The entry of `producer_id`, if the producer is known.
    pub fn entry(&self, producer_id: ProducerId) -> Option<&ProducerEntry> {
        self.producers.get(&producer_id)
    }

    /// Every known producer, in producer id order.
    pub fn producers(&self) -> impl Iterator<Item = (ProducerId, &ProducerEntry)> {
        self.producers.iter().map(|(&id, entry)| (id, entry))
    }

    /// The number of known producers.
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    /// Whether no producer is known.
    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// Decides what to do with a batch from a client, before it is appended. Does not change
    /// the table. The rules, in order, are in the module documentation.
    pub fn check(&self, header: &BatchHeader) -> Result<ProducerCheck, ProducerError> {
        let producer_id = header.producer_id;
        if producer_id.0 < 0 {
            return Ok(ProducerCheck::Append);
        }
        let (epoch, first_seq) = (header.producer_epoch, header.base_sequence);
        if first_seq < 0 {
            return Err(ProducerError::InvalidSequence {
                producer_id,
                sequence: first_seq,
            });
        }
        let Some(entry) = self.producers.get(&producer_id) else {
            return Ok(ProducerCheck::Append);
        };
        if epoch == entry.epoch {
            let last_seq = header.last_sequence();
            if let Some(original) = entry
                .batches
                .iter()
                .find(|b| b.first_seq == first_seq && b.last_seq == last_seq)
            {
                return Ok(ProducerCheck::Duplicate {
                    base_offset: original.base_offset,
                    last_offset: original.last_offset,
                });
            }
        }
        if epoch < entry.epoch {
            return Err(ProducerError::InvalidProducerEpoch {
                producer_id,
                current: entry.epoch,
                got: epoch,
            });
        }
        let expected = if epoch > entry.epoch {
            0
        } else {
            next_sequence(entry.last_seq())
        };
        if first_seq != expected {
            return Err(ProducerError::OutOfOrderSequence {
                producer_id,
                expected,
                got: first_seq,
            });
        }
        Ok(ProducerCheck::Append)
    }

    /// Records a batch that is now in the log, with its final offsets (`header.base_offset` is
    /// the stamped base offset). Call it for every batch the log receives, in offset order,
    /// including batches without a producer id: it advances [`end`](Self::end).
    ///
    /// A batch that starts below [`end`](Self::end) says the log was truncated at its base
    /// offset without the table being rebuilt ([`recover`] failed after a truncation: the log
    /// it replays was damaged). The log holds this batch there, so nothing the table recorded
    /// at or above that offset is in the log any more: the table forgets it
    /// ([`ProducerStateTable::truncate_from`]) before recording the batch, and goes on
    /// describing what the log holds.
    ///
    /// # Panics
    /// If the batch does not end past its own base offset (a negative `lastOffsetDelta`, which
    /// the log never holds).
    pub fn record(&mut self, header: &BatchHeader) {
        if header.base_offset < self.end {
            self.truncate_from(header.base_offset);
        }
        let next = header.next_offset();
        assert!(
            next > self.end,
            "producer state records batches in offset order: batch [{}, {next}) does not end past {}",
            header.base_offset,
            self.end
        );
        self.end = next;
        if header.producer_id.0 < 0 || header.attributes & ATTR_CONTROL != 0 {
            return;
        }
        let batch = BatchMetadata {
            first_seq: header.base_sequence,
            last_seq: header.last_sequence(),
            base_offset: header.base_offset,
            last_offset: header.last_offset(),
        };
        let entry = self
            .producers
            .entry(header.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: header.producer_epoch,
                batches: VecDeque::with_capacity(BATCHES_RETAINED_MAX),
                last_timestamp: header.max_timestamp,
            });
        if entry.epoch != header.producer_epoch {
            entry.epoch = header.producer_epoch;
            entry.batches.clear();
        }
        if entry.batches.len() == BATCHES_RETAINED_MAX {
            entry.batches.pop_front();
        }
        entry.batches.push_back(batch);
        entry.last_timestamp = header.max_timestamp;
        debug_assert!(entry.batches.len() <= BATCHES_RETAINED_MAX);
    }

    /// Forgets every batch recorded at or above `offset` (the log was truncated there) and
    /// moves [`end`](Self::end) back to it. A producer none of whose cached batches is left is
    /// forgotten (as one that expired: its next batch is accepted at any sequence). Kafka's
    /// `ProducerStateManager.truncateAndReload` reloads from snapshots instead; [`recover`]
    /// does that, and this is what is left when it cannot read the log.
    pub fn truncate_from(&mut self, offset: Offset) {
        if offset >= self.end {
            return;
        }
        self.end = offset;
        self.producers.retain(|_, entry| {
            while entry
                .batches
                .back()
                .is_some_and(|b| b.last_offset >= offset)
            {
                entry.batches.pop_back();
            }
            !entry.batches.is_empty()
        });
    }

    /// Forgets producers idle for at least `expiration_ms` (Kafka's `producer.id.expiration.ms`,
    /// [`PRODUCER_ID_EXPIRATION_MS_DEFAULT`]): those whose last batch's max timestamp is at
    /// least that far before `now_ms` (`ProducerStateManager.isProducerExpired`). A forgotten
    /// producer that comes back is accepted at any sequence. Returns how many were removed.
    pub fn expire(&mut self, now_ms: i64, expiration_ms: i64) -> usize {
        let before = self.producers.len();
        self.producers
            .retain(|_, entry| now_ms.saturating_sub(entry.last_timestamp) < expiration_ms);
        before - self.producers.len()
    }

    /// Replays the log's batches from [`end`](Self::end) (or the log start offset, if later) to
    /// the log end offset, recording each. Returns the number of batches replayed.
    pub fn replay<S: Storage>(&mut self, log: &Log<S>) -> Result<u64, LogError> {
        let mut replayed = 0;
        while self.end < log.end() {
            let from = self.end.max(log.log_start());
            let batches = log.read(from, REPLAY_READ_BYTES, log.end())?;
            assert!(
                !batches.is_empty(),
                "a log read below the log end offset returns at least one batch (KIP-74)"
            );
            for batch in batches {
                self.record(&batch.header());
                replayed += 1;
            }
        }
        Ok(replayed)
    }

    /// Encodes the table as a snapshot at [`end`](Self::end) (format in the module docs).
    pub fn snapshot(&self) -> Vec<u8> {
        let batches: usize = self.producers.values().map(|e| e.batches.len()).sum();
        let mut out = Vec::with_capacity(
            SNAPSHOT_HEADER_BYTES
                + self.producers.len() * ENTRY_HEADER_BYTES
                + batches * ENTRY_BATCH_BYTES,
        );
        out.extend_from_slice(&SNAPSHOT_MAGIC);
        out.extend_from_slice(&SNAPSHOT_VERSION.to_be_bytes());
        out.extend_from_slice(&0u32.to_be_bytes());
        out.extend_from_slice(&self.end.0.to_be_bytes());
        let count = u32::try_from(self.producers.len()).expect("fewer than 2^32 producers");
        out.extend_from_slice(&count.to_be_bytes());
        for (id, entry) in &self.producers {
            out.extend_from_slice(&id.0.to_be_bytes());
            out.extend_from_slice(&entry.epoch.to_be_bytes());
            out.extend_from_slice(&entry.last_timestamp.to_be_bytes());
            out.push(entry.batches.len() as u8);
            for b in &entry.batches {
                out.extend_from_slice(&b.first_seq.to_be_bytes());
                out.extend_from_slice(&b.last_seq.to_be_bytes());
                out.extend_from_slice(&b.base_offset.0.to_be_bytes());
                out.extend_from_slice(&b.last_offset.0.to_be_bytes());
            }
        }
        let crc = crc32c::crc32c(&out[field::END..]);
        out[field::CRC..field::CRC + 4].copy_from_slice(&crc.to_be_bytes());
        // Check before writing what will be checked after reading.
        debug_assert_eq!(decode_snapshot(&out).as_ref(), Ok(self));
        out
    }
}

/// Decodes a snapshot written by [`ProducerStateTable::snapshot`]. Checks the magic, the version,
/// the CRC and every invariant of the table; never panics on any input.
pub fn decode_snapshot(bytes: &[u8]) -> Result<ProducerStateTable, SnapshotError> {
    if bytes.len() < SNAPSHOT_HEADER_BYTES {
        return Err(SnapshotError::Truncated {
            need: SNAPSHOT_HEADER_BYTES,
            have: bytes.len(),
        });
    }
    let mut r = Reader { bytes, pos: 0 };
    if r.take::<4>()? != SNAPSHOT_MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    let version = u16::from_be_bytes(r.take()?);
    if version != SNAPSHOT_VERSION {
        return Err(SnapshotError::UnsupportedVersion(version));
    }
    let stored = u32::from_be_bytes(r.take()?);
    let computed = crc32c::crc32c(&bytes[field::END..]);
    if stored != computed {
        return Err(SnapshotError::CrcMismatch { stored, computed });
    }
    let end = Offset(i64::from_be_bytes(r.take()?));
    if end.0 < 0 {
        return Err(SnapshotError::Invalid(format!("negative end offset {end}")));
    }
    let count = u32::from_be_bytes(r.take()?);
    let mut table = ProducerStateTable::new(end);
    let mut previous: Option<ProducerId> = None;
    for _ in 0..count {
        let id = ProducerId(i64::from_be_bytes(r.take()?));
        if id.0 < 0 || previous.is_some_and(|p| p >= id) {
            return Err(SnapshotError::Invalid(format!(
                "producer id {id} is negative or not above the previous one"
            )));
        }
        previous = Some(id);
        let epoch = i16::from_be_bytes(r.take()?);
        let last_timestamp = i64::from_be_bytes(r.take()?);
        let [n] = r.take::<1>()?;
        if n == 0 || n as usize > BATCHES_RETAINED_MAX {
            return Err(SnapshotError::Invalid(format!(
                "producer {id} has {n} batches, not 1 to {BATCHES_RETAINED_MAX}"
            )));
        }
        let mut batches = VecDeque::with_capacity(n as usize);
        for _ in 0..n {
            let batch = BatchMetadata {
                first_seq: i32::from_be_bytes(r.take()?),
                last_seq: i32::from_be_bytes(r.take()?),
                base_offset: Offset(i64::from_be_bytes(r.take()?)),
                last_offset: Offset(i64::from_be_bytes(r.take()?)),
            };
            let after_previous = batches
                .back()
                .is_none_or(|p: &BatchMetadata| p.last_offset < batch.base_offset);
            if batch.base_offset.0 < 0
                || batch.last_offset < batch.base_offset
                || batch.last_offset >= end
                || !after_previous
            {
                return Err(SnapshotError::Invalid(format!(
                    "producer {id}: batch [{}, {}] is out of order or not below {end}",
                    batch.base_offset, batch.last_offset
                )));
            }
            batches.push_back(batch);
        }
        table.producers.insert(
            id,
            ProducerEntry {
                epoch,
                batches,
                last_timestamp,
            },
        );
    }
    if r.pos != bytes.len() {
        return Err(SnapshotError::TrailingBytes(bytes.len() - r.pos));
    }
    Ok(table)
}

/// A bounds-checked big-endian reader over snapshot bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], SnapshotError> {
        let end = self.pos.checked_add(N).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(SnapshotError::Truncated {
                need: self.pos.saturating_add(N),
                have: self.bytes.len(),
            });
        };
        let mut out = [0u8; N];
        out.copy_from_slice(&self.bytes[self.pos..end]);
        self.pos = end;
        Ok(out)
    }
}

/// The sequence that follows `seq`, wrapping from `i32::MAX` to 0 (Kafka's `inSequence`).
pub fn next_sequence(seq: i32) -> i32 {
    if seq == i32::MAX {
        0
    } else {
        seq + 1
    }
}

/// The file name of the snapshot at `end`: `{end:020}.snapshot`.
pub fn snapshot_file_name(end: Offset) -> String {
    format!("{:020}{SNAPSHOT_SUFFIX}", end.0)
}

/// The end offset a snapshot file name stands for, or `None` if it is not one.
pub fn parse_snapshot_file_name(name: &str) -> Option<Offset> {
    let digits = name.strip_suffix(SNAPSHOT_SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(Offset)
}

/// The end offsets of the snapshot files in `storage`, ascending.
pub fn list_snapshots<S: Storage + ?Sized>(storage: &S) -> Result<Vec<Offset>, StorageError> {
    let mut offsets: Vec<Offset> = storage
        .list()?
        .iter()
        .filter_map(|name| parse_snapshot_file_name(name))
        .collect();
    offsets.sort();
    Ok(offsets)
}

/// Writes `table` as the snapshot at its end offset, atomically and durably (replacing a
/// snapshot at the same offset). Returns the offset. Take snapshots only of offsets the log has
/// made durable; [`load`] discards any above the recovered log end anyway.
pub fn write_snapshot<S: Storage + ?Sized>(
    storage: &mut S,
    table: &ProducerStateTable,
) -> Result<Offset, StorageError> {
    storage::write_atomic(storage, &snapshot_file_name(table.end()), &table.snapshot())?;
    Ok(table.end())
}

/// Reads and decodes the snapshot at `end`. The outer error is the storage's, the inner the
/// bytes'.
pub fn read_snapshot<S: Storage + ?Sized>(
    storage: &S,
    end: Offset,
) -> Result<Result<ProducerStateTable, SnapshotError>, StorageError> {
    let bytes = storage::read_all(storage, &snapshot_file_name(end))?;
    Ok(decode_snapshot(&bytes))
}

/// Removes every snapshot above `offset` (after the log was truncated to `offset`). Returns
/// their offsets.
pub fn remove_snapshots_above<S: Storage + ?Sized>(
    storage: &mut S,
    offset: Offset,
) -> Result<Vec<Offset>, StorageError> {
    let above: Vec<Offset> = list_snapshots(storage)?
        .into_iter()
        .filter(|&o| o > offset)
        .collect();
    for &o in &above {
        storage.remove(&snapshot_file_name(o))?;
    }
    Ok(above)
}

/// Removes every snapshot (Kafka's `truncateFullyAndStartAt`). Returns how many.
pub fn remove_all_snapshots<S: Storage + ?Sized>(storage: &mut S) -> Result<usize, StorageError> {
    let all = list_snapshots(storage)?;
    for &o in &all {
        storage.remove(&snapshot_file_name(o))?;
    }
    Ok(all.len())
}

/// Keeps the newest `retained_max` snapshots and removes the others. Returns how many were
/// removed.
pub fn prune_snapshots<S: Storage + ?Sized>(
    storage: &mut S,
    retained_max: usize,
) -> Result<usize, StorageError> {
    let all = list_snapshots(storage)?;
    let excess = all.len().saturating_sub(retained_max);
    for &o in &all[..excess] {
        storage.remove(&snapshot_file_name(o))?;
    }
    Ok(excess)
}

/// Loads the newest usable snapshot for a log spanning `[log_start, log_end)`: removes
/// leftover temporary snapshot files and the snapshots above `log_end`, then tries the newest remaining one, removing each that fails to
/// decode, down to none. The returned table's [`end`](ProducerStateTable::end) is where replay
/// starts: the snapshot's end, or `log_start` if that is later or there is no snapshot.
pub fn load<S: Storage + ?Sized>(
    storage: &mut S,
    log_start: Offset,
    log_end: Offset,
) -> Result<(ProducerStateTable, LoadReport), StorageError> {
    // A snapshot write that a crash interrupted leaves its temporary file behind.
    for name in storage.list()? {
        if name.ends_with(&format!("{SNAPSHOT_SUFFIX}.tmp")) {
            storage.remove(&name)?;
        }
    }
    let mut report = LoadReport {
        removed_above_end: remove_snapshots_above(storage, log_end)?,
        ..LoadReport::default()
    };
    let mut table = ProducerStateTable::new(log_start);
    for end in list_snapshots(storage)?.into_iter().rev() {
        match read_snapshot(storage, end)? {
            Ok(loaded) if loaded.end() == end => {
                table = loaded;
                report.snapshot = Some(end);
                break;
            }
            Ok(loaded) => {
                let problem = format!("file for offset {end} holds a snapshot at {}", loaded.end());
                report
                    .removed_corrupt
                    .push((end, SnapshotError::Invalid(problem)));
                storage.remove(&snapshot_file_name(end))?;
            }
            Err(error) => {
                report.removed_corrupt.push((end, error));
                storage.remove(&snapshot_file_name(end))?;
            }
        }
    }
    table.end = table.end.max(log_start);
    Ok((table, report))
}

/// Rebuilds a partition's producer state: [`load`] from the snapshots in `snapshots`, then
/// [`ProducerStateTable::replay`] the log. Call it on open (after [`Log::open`]) and after
/// every [`Log::truncate_to`] (Kafka's `truncateAndReload`).
pub fn recover<S: Storage + ?Sized, L: Storage>(
    snapshots: &mut S,
    log: &Log<L>,
) -> Result<(ProducerStateTable, LoadReport), RecoverError> {
    let (mut table, report) = load(snapshots, log.log_start(), log.end())?;
    table.replay(log)?;
    Ok((table, report))
}
