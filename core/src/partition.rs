//! One partition replica led by this broker: produce validation (Kafka's LogValidator),
//! idempotent producer checks, the log, and the high watermark.
//!
//! This is the single-replica form (the ISR is the leader alone); replication adds followers
//! to the same structure. Durability is keel's default: the high watermark covers only data
//! that every ISR member has synced, so with one replica it is the log's durable end.
//!
//! Order of use for a produce: [`PartitionReplica::append`] (validates, checks idempotence,
//! appends, records producer state), then the shell makes the data durable (group commit:
//! [`Log::prepare_sync`] / [`Log::complete_sync`] through [`PartitionReplica::log_mut`], or
//! [`PartitionReplica::sync`]), then [`PartitionReplica::update_high_watermark`]; an acks=all
//! produce is answered once the high watermark passes its last offset.
//!
//! Invariants (asserted):
//! - the high watermark never decreases and never exceeds the durable log end offset;
//! - the log start offset never exceeds the high watermark;
//! - a duplicate batch from an idempotent producer is never appended twice.

use crate::batch::{Batch, BatchError, BatchHeader, Compression, TimestampType};
use crate::log::{Log, LogConfig, LogError};
use crate::producer::{self, ProducerCheck, ProducerError, ProducerStateTable};
use crate::storage::Storage;
use crate::types::{LeaderEpoch, Offset};

/// Kafka error codes this module produces.
pub mod code {
    pub const NONE: i16 = 0;
    pub const OFFSET_OUT_OF_RANGE: i16 = 1;
    pub const CORRUPT_MESSAGE: i16 = 2;
    pub const MESSAGE_TOO_LARGE: i16 = 10;
    pub const KAFKA_STORAGE_ERROR: i16 = 56;
    pub const UNSUPPORTED_COMPRESSION_TYPE: i16 = 76;
    pub const INVALID_RECORD: i16 = 87;
    pub const FENCED_LEADER_EPOCH: i16 = 74;
    pub const UNKNOWN_LEADER_EPOCH: i16 = 75;
}

/// The topic settings a partition enforces on produce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProduceRules {
    /// `max.message.bytes`: the largest batch accepted.
    pub max_message_bytes: usize,
    /// `message.timestamp.type=LogAppendTime`: the broker sets batch timestamps.
    pub log_append_time: bool,
    /// `cleanup.policy` includes compact: every record needs a key.
    pub compacted: bool,
}

impl Default for ProduceRules {
    fn default() -> Self {
        ProduceRules {
            max_message_bytes: 1_048_588,
            log_append_time: false,
            compacted: false,
        }
    }
}

/// Why a produce to this partition failed; each maps to a Kafka error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProduceError {
    #[error("corrupt batch: {0}")]
    Corrupt(BatchError),
    #[error("batch of {size} bytes exceeds max.message.bytes {max}")]
    TooLarge { size: usize, max: usize },
    #[error("invalid record: {0}")]
    InvalidRecord(String),
    #[error("{0}")]
    Producer(#[from] ProducerError),
    #[error("storage: {0}")]
    Storage(#[from] LogError),
}

impl ProduceError {
    /// Kafka's error code (Errors.java).
    pub fn code(&self) -> i16 {
        match self {
            ProduceError::Corrupt(_) => code::CORRUPT_MESSAGE,
            ProduceError::TooLarge { .. } => code::MESSAGE_TOO_LARGE,
            ProduceError::InvalidRecord(_) => code::INVALID_RECORD,
            ProduceError::Producer(e) => e.code(),
            ProduceError::Storage(_) => code::KAFKA_STORAGE_ERROR,
        }
    }
}

/// A produce that succeeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: Offset,
    pub last_offset: Offset,
    /// The broker's timestamp for LogAppendTime topics, else -1.
    pub log_append_time_ms: i64,
    /// True if the batch was a duplicate of one already appended (answered with its offsets).
    pub duplicate: bool,
}

/// One partition replica, leader role. See the module documentation.
pub struct PartitionReplica<S: Storage> {
    log: Log<S>,
    producers: ProducerStateTable,
    leader_epoch: LeaderEpoch,
    high_watermark: Offset,
    rules: ProduceRules,
}

impl<S: Storage> PartitionReplica<S> {
    /// Opens (recovering) the log in `log_storage` and the producer state from the snapshots
    /// in `snapshots` plus the log, and leads at `leader_epoch`.
    pub fn open<T: Storage>(
        log_storage: S,
        snapshots: &mut T,
        config: LogConfig,
        rules: ProduceRules,
        leader_epoch: LeaderEpoch,
        now_ms: i64,
    ) -> Result<Self, LogError> {
        let log = Log::open(log_storage, config, now_ms)?;
        let (producers, _report) = producer::recover(snapshots, &log).map_err(|e| match e {
            producer::RecoverError::Log(e) => e,
            producer::RecoverError::Storage(e) => LogError::Storage(e),
        })?;
        // Everything recovery kept was synced (recovery reads durable bytes), so with the
        // leader as the only ISR member it is all committed.
        let high_watermark = log.durable_end();
        Ok(PartitionReplica {
            log,
            producers,
            leader_epoch,
            high_watermark,
            rules,
        })
    }

    pub fn log(&self) -> &Log<S> {
        &self.log
    }

    /// The log, for the shell's split sync ([`Log::prepare_sync`], [`Log::complete_sync`]),
    /// reads and retention. Appends go through [`PartitionReplica::append`].
    pub fn log_mut(&mut self) -> &mut Log<S> {
        &mut self.log
    }

    pub fn producers(&self) -> &ProducerStateTable {
        &self.producers
    }

    pub fn leader_epoch(&self) -> LeaderEpoch {
        self.leader_epoch
    }

    pub fn high_watermark(&self) -> Offset {
        self.high_watermark
    }

    pub fn set_rules(&mut self, rules: ProduceRules, config: LogConfig) {
        self.rules = rules;
        self.log.set_config(config);
    }

    /// Kafka's LogValidator for one client batch (magic, length and CRC were checked when the
    /// `Batch` was parsed).
    pub fn validate(&self, batch: &Batch) -> Result<(), ProduceError> {
        if batch.size() > self.rules.max_message_bytes {
            return Err(ProduceError::TooLarge {
                size: batch.size(),
                max: self.rules.max_message_bytes,
            });
        }
        if batch.is_control() {
            return Err(ProduceError::InvalidRecord(
                "clients may not write control batches".into(),
            ));
        }
        if batch.is_transactional() {
            return Err(ProduceError::InvalidRecord(
                "keel does not support transactions".into(),
            ));
        }
        if batch.records_count() != batch.last_offset_delta().wrapping_add(1) {
            return Err(ProduceError::InvalidRecord(format!(
                "record count {} does not match lastOffsetDelta {}",
                batch.records_count(),
                batch.last_offset_delta()
            )));
        }
        batch.compression().map_err(ProduceError::Corrupt)?;
        // Decoding every record checks varints, lengths and offset deltas, as Kafka's
        // validator does, so that no consumer is ever served a batch it cannot read.
        let records = batch.records().map_err(ProduceError::Corrupt)?;
        for (i, r) in records.iter().enumerate() {
            if r.offset != batch.base_offset().plus(i as i64) {
                return Err(ProduceError::InvalidRecord(format!(
                    "record {i} has a non-sequential offset delta"
                )));
            }
            if self.rules.compacted && r.key.is_none() {
                return Err(ProduceError::InvalidRecord(
                    "compacted topics need a key on every record".into(),
                ));
            }
        }
        Ok(())
    }

    /// Validates, checks idempotence and appends a client batch at the log end offset. A
    /// duplicate of one of the producer's last five batches is not appended and is answered
    /// with the original offsets. Not durable until synced.
    pub fn append(&mut self, now_ms: i64, mut batch: Batch) -> Result<Appended, ProduceError> {
        self.validate(&batch)?;
        if let ProducerCheck::Duplicate {
            base_offset,
            last_offset,
        } = self.producers.check(&batch.header())?
        {
            return Ok(Appended {
                base_offset,
                last_offset,
                log_append_time_ms: -1,
                duplicate: true,
            });
        }
        let mut log_append_time_ms = -1;
        if self.rules.log_append_time {
            batch.set_log_append_time(now_ms);
            log_append_time_ms = now_ms;
        } else if batch.timestamp_type() == TimestampType::LogAppendTime {
            log_append_time_ms = batch.max_timestamp();
        }
        let mut header: BatchHeader = batch.header();
        let info = self.log.append(now_ms, batch, self.leader_epoch)?;
        header.base_offset = info.base_offset;
        header.partition_leader_epoch = self.leader_epoch;
        self.producers.record(&header);
        Ok(Appended {
            base_offset: info.base_offset,
            last_offset: info.last_offset,
            log_append_time_ms,
            duplicate: false,
        })
    }

    /// Syncs the log in place (tests and shutdown; the broker syncs off-thread) and moves the
    /// high watermark.
    pub fn sync(&mut self) -> Result<Offset, LogError> {
        self.log.sync()?;
        Ok(self.update_high_watermark())
    }

    /// Recomputes the high watermark: the smallest durable log end offset in the ISR, which
    /// here is the leader alone. Returns it.
    pub fn update_high_watermark(&mut self) -> Offset {
        let candidate = self.log.durable_end();
        if candidate > self.high_watermark {
            self.high_watermark = candidate;
        }
        assert!(
            self.high_watermark <= self.log.durable_end(),
            "high watermark {} exceeds the durable log end {}",
            self.high_watermark,
            self.log.durable_end()
        );
        self.high_watermark
    }

    /// Kafka's OffsetForLeaderEpoch on the leader: the end offset of the largest epoch at or
    /// below `epoch`. A client epoch above ours is UNKNOWN_LEADER_EPOCH.
    pub fn end_offset_for_epoch(
        &self,
        epoch: LeaderEpoch,
    ) -> Result<Option<(LeaderEpoch, Offset)>, i16> {
        if epoch > self.leader_epoch {
            return Err(code::UNKNOWN_LEADER_EPOCH);
        }
        Ok(self.log.epochs().end_offset_for(epoch, self.log.end()))
    }

    /// Checks a client's current leader epoch (KIP-320): older is FENCED_LEADER_EPOCH, newer
    /// is UNKNOWN_LEADER_EPOCH, -1 means the client does not know it.
    pub fn check_client_epoch(&self, epoch: i32) -> Result<(), i16> {
        match epoch {
            -1 => Ok(()),
            e if e < self.leader_epoch.0 => Err(code::FENCED_LEADER_EPOCH),
            e if e > self.leader_epoch.0 => Err(code::UNKNOWN_LEADER_EPOCH),
            _ => Ok(()),
        }
    }

    /// Kafka's DeleteRecords: moves the log start offset to `offset` (-1 means the high
    /// watermark), never past the high watermark. OFFSET_OUT_OF_RANGE beyond it.
    pub fn delete_records(&mut self, offset: i64) -> Result<Offset, ProduceError> {
        let target = if offset == -1 {
            self.high_watermark
        } else {
            Offset(offset)
        };
        if target > self.high_watermark || target.0 < 0 {
            return Err(ProduceError::InvalidRecord(format!(
                "offset {target} is beyond the high watermark {}",
                self.high_watermark
            )));
        }
        let start = self.log.advance_log_start(target, self.high_watermark)?;
        assert!(
            start <= self.high_watermark,
            "log start never passes the high watermark"
        );
        Ok(start)
    }

    /// Applies retention, bounded by the high watermark.
    pub fn apply_retention(&mut self, now_ms: i64) -> Result<usize, LogError> {
        let removed = self.log.apply_retention(now_ms, self.high_watermark)?;
        self.producers
            .expire(now_ms, producer::PRODUCER_ID_EXPIRATION_MS_DEFAULT);
        Ok(removed)
    }

    /// Writes a producer state snapshot at the durable end and the log's checkpoint, so that
    /// the next open replays and re-validates less. Call on clean shutdown and periodically.
    pub fn checkpoint<T: Storage>(&mut self, snapshots: &mut T) -> Result<(), LogError> {
        self.log.sync()?;
        self.update_high_watermark();
        self.log.checkpoint()?;
        if self.producers.end() == self.log.end() {
            producer::write_snapshot(snapshots, &self.producers)?;
            producer::prune_snapshots(snapshots, 2)?;
        }
        Ok(())
    }
}

/// Compression codecs a Produce request version may carry: zstd needs Produce v7+.
pub fn compression_allowed(codec: Compression, produce_version: i16) -> bool {
    codec != Compression::Zstd || produce_version >= 7
}

#[cfg(test)]
mod tests;
