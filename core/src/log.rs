//! One partition's log: segments of Kafka record batches on a [`Storage`], with sparse offset
//! and time indexes, the leader-epoch cache, retention, and crash recovery.
//!
//! Files in the partition's storage:
//! - `{base offset, 20 digits}.log`: a segment, batches back to back exactly as Kafka stores them.
//! - `leader-epoch-checkpoint`: Kafka's text format (`0`, the entry count, then `epoch offset`
//!   lines), written atomically.
//! - `partition.checkpoint`: `keel-partition 1 {log start offset} {recovery point} {crc}`,
//!   written atomically.
//!
//! (The partition directory holds other files too, not the log's: docs/design.md lists them.)
//!
//! Invariants (asserted where they are kept, stated in docs/log-format.md):
//! 1. Offsets are dense and increasing: each appended batch starts at the log end offset
//!    (leader appends) or after it (follower appends), and the log end offset is the next offset
//!    of the last batch.
//! 2. `log_start <= durable_end <= end`. `durable_end` moves forward only when a sync
//!    covering every byte below it has returned; truncation is synced before it is reported.
//! 3. A batch read from the log passed its CRC check on the way out: nothing corrupt is served.
//! 4. Offset and time indexes are kept in memory and rebuilt on open: they are never trusted
//!    from disk. (The aborted-transaction index files beside the segments belong to the
//!    partition's transaction bookkeeping, `producer::txn_index`; the log ignores them.)
//! 5. Recovery keeps exactly the longest prefix of valid, offset-consistent batches, and never
//!    drops a batch below the persisted recovery point unless it is corrupt.
//! 6. Leader epochs in the cache increase with their start offsets; the cache never refers to
//!    offsets at or past the log end offset.
//! 7. Retention removes whole segments only, never the active one, and never a segment with data
//!    at or above the bound the caller passes (the high watermark).

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};

use crate::batch::{self, Batch, BatchError, BatchHeader, HEADER_BYTES};
use crate::storage::{self, Storage, StorageError};
use crate::types::{LeaderEpoch, Offset};

/// How many times recovery reads a batch again before it takes a failed read or check for
/// damage and cuts the log there.
pub const RECOVERY_READ_RETRIES: usize = 2;

/// Name of the leader-epoch cache file (Kafka's name).
pub const EPOCH_CHECKPOINT: &str = "leader-epoch-checkpoint";
/// Name of the file holding the log start offset and the recovery point.
pub const PARTITION_CHECKPOINT: &str = "partition.checkpoint";
/// Bytes read at once when scanning a segment.
const SCAN_CHUNK_BYTES: usize = 1 << 20;

/// Per-log settings, with Kafka's names in the docs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogConfig {
    /// `segment.bytes`: roll to a new segment when the active one would exceed this.
    pub segment_bytes_max: u64,
    /// `segment.ms`: roll when the active segment is older than this.
    pub segment_ms_max: i64,
    /// `retention.bytes`: delete old segments while the log is larger; -1 for no limit.
    pub retention_bytes_max: i64,
    /// `retention.ms`: delete segments whose newest record is older; -1 for no limit.
    pub retention_ms_max: i64,
    /// `index.interval.bytes`: bytes between sparse index entries.
    pub index_interval_bytes: u64,
    /// `segment.jitter.ms`: the most a segment's roll by age is brought forward. Each segment
    /// gets its own share of it, from [`LogConfig::jitter_salt`] and its base offset.
    pub segment_jitter_ms_max: i64,
    /// What makes one log's jitter differ from another's (the broker derives it from the
    /// partition's name), so that partitions created together do not all roll at once.
    pub jitter_salt: u64,
}

impl LogConfig {
    /// How old the segment starting at `base` may get before it rolls: `segment.ms` less the
    /// segment's jitter, a share of `segment.jitter.ms` fixed by the salt and `base` (Kafka
    /// draws it at random when the segment is created; here it is a function of them, so a
    /// replay rolls the same way), and always at least 1 ms.
    pub fn roll_age_ms(&self, base: Offset) -> i64 {
        if self.segment_jitter_ms_max <= 0 {
            return self.segment_ms_max;
        }
        let jitter = (mix64(self.jitter_salt ^ base.0 as u64)
            % self.segment_jitter_ms_max.unsigned_abs()) as i64;
        self.segment_ms_max.saturating_sub(jitter).max(1)
    }
}

/// SplitMix64's finaliser: spreads a 64-bit input over every output bit.
fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes_max: 1 << 30,
            segment_ms_max: 7 * 24 * 3600 * 1000,
            retention_bytes_max: -1,
            retention_ms_max: 7 * 24 * 3600 * 1000,
            index_interval_bytes: 4096,
            segment_jitter_ms_max: 0,
            jitter_salt: 0,
        }
    }
}

/// What can go wrong in the log, by blame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LogError {
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("offset {offset} is out of range [{log_start}, {end}]")]
    OffsetOutOfRange {
        offset: Offset,
        log_start: Offset,
        end: Offset,
    },
    #[error("corrupt batch in {file} at byte {position}: {error}")]
    Corrupt {
        file: String,
        position: u64,
        error: BatchError,
    },
    #[error("follower batch at offset {base} does not follow the log end offset {end}")]
    NonMonotonicAppend { base: Offset, end: Offset },
    #[error("batch of {size} bytes exceeds the segment size limit {limit}")]
    BatchTooLarge { size: usize, limit: u64 },
}

/// What recovery found, for logs and for the simulator's coverage counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Batches re-validated (CRC checked) because they were at or past the recovery point.
    pub batches_validated: u64,
    /// Bytes re-validated.
    pub bytes_validated: u64,
    /// The first invalid batch found, if any: the file, the position and why.
    pub corruption: Option<(String, u64, String)>,
    /// Bytes cut from the end of the log (the invalid batch and everything after it).
    pub bytes_truncated: u64,
    /// Batches that failed a check on one read and passed it on a fresh read (a transient
    /// read error, not damage on the disk: nothing was cut for them).
    pub read_retries: u64,
    /// Whole segments removed because they followed the truncation point.
    pub segments_removed: u64,
}

#[derive(Clone, Debug)]
struct Segment {
    base: Offset,
    file: String,
    size: u64,
    /// The offset after the last batch (== base when empty).
    next_offset: Offset,
    /// Largest batch maxTimestamp, and the base offset of the batch that has it.
    max_timestamp: Option<(i64, Offset)>,
    /// When this segment was rolled, in the caller's clock (for `segment.ms`).
    created_ms: i64,
    /// Sparse (offset, position) entries, offsets increasing: the entry's batch starts at
    /// `position`, and the batch contains `offset` as its base offset.
    offset_index: Vec<(Offset, u64)>,
    /// Sparse (max timestamp so far, base offset of that batch) entries, timestamps increasing.
    time_index: Vec<(i64, Offset)>,
    bytes_since_index: u64,
    /// Bytes up to here are synced.
    synced_size: u64,
}

impl Segment {
    fn file_name(base: Offset) -> String {
        format!("{:020}.log", base.0)
    }

    fn parse_name(name: &str) -> Option<Offset> {
        let digits = name.strip_suffix(".log")?;
        if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok().map(Offset)
    }

    fn new(base: Offset, created_ms: i64) -> Segment {
        Segment {
            base,
            file: Segment::file_name(base),
            size: 0,
            next_offset: base,
            max_timestamp: None,
            created_ms,
            offset_index: Vec::new(),
            time_index: Vec::new(),
            bytes_since_index: 0,
            synced_size: 0,
        }
    }

    /// Records a batch written at `position` in the indexes.
    fn index(&mut self, header: &BatchHeader, position: u64, interval_bytes: u64) {
        debug_assert_eq!(position, self.size, "batches are indexed in file order");
        if self.offset_index.is_empty() || self.bytes_since_index >= interval_bytes {
            self.offset_index.push((header.base_offset, position));
            self.bytes_since_index = 0;
        }
        self.bytes_since_index += header.size as u64;
        let ts = header.max_timestamp;
        if self.max_timestamp.is_none_or(|(max, _)| ts > max) {
            self.max_timestamp = Some((ts, header.base_offset));
            self.time_index.push((ts, header.base_offset));
        }
        self.size = position + header.size as u64;
        self.next_offset = header.next_offset();
    }

    /// The last indexed batch at or before `offset`: its base offset and position.
    fn lookup(&self, offset: Offset) -> (Offset, u64) {
        let i = self.offset_index.partition_point(|&(o, _)| o <= offset);
        if i == 0 {
            (self.base, 0)
        } else {
            self.offset_index[i - 1]
        }
    }
}

/// One entry of the leader-epoch cache: `epoch` started at `start_offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpochEntry {
    pub epoch: LeaderEpoch,
    pub start_offset: Offset,
}

/// Kafka's LeaderEpochFileCache: which leader epoch wrote which offsets (KIP-101, KIP-279).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EpochCache {
    entries: Vec<EpochEntry>,
}

impl EpochCache {
    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    pub fn latest(&self) -> Option<EpochEntry> {
        self.entries.last().copied()
    }

    /// The epoch that wrote `offset`: the last entry starting at or before it.
    pub fn epoch_for(&self, offset: Offset) -> Option<LeaderEpoch> {
        let i = self.entries.partition_point(|e| e.start_offset <= offset);
        (i > 0).then(|| self.entries[i - 1].epoch)
    }

    /// Records that `epoch` starts at `start`. Entries that conflict (an epoch at or above
    /// `epoch`, or a start at or after `start`) are removed first, as Kafka's `assign` does.
    /// Returns whether the cache changed.
    pub fn assign(&mut self, epoch: LeaderEpoch, start: Offset) -> bool {
        if epoch.0 < 0 {
            return false;
        }
        if let Some(last) = self.entries.last() {
            if last.epoch == epoch && last.start_offset <= start {
                return false;
            }
        }
        self.entries
            .retain(|e| e.epoch < epoch && e.start_offset < start);
        self.entries.push(EpochEntry {
            epoch,
            start_offset: start,
        });
        true
    }

    /// Kafka's `endOffsetFor`: the largest epoch <= `requested` and the offset where the epoch
    /// after it starts (or `log_end` for the latest). `None` when `requested` precedes the
    /// first known epoch (Kafka's UNDEFINED_EPOCH / UNDEFINED_EPOCH_OFFSET).
    pub fn end_offset_for(
        &self,
        requested: LeaderEpoch,
        log_end: Offset,
    ) -> Option<(LeaderEpoch, Offset)> {
        let latest = self.entries.last()?;
        if requested == latest.epoch {
            return Some((latest.epoch, log_end));
        }
        let i = self.entries.partition_point(|e| e.epoch <= requested);
        if i == 0 {
            return None;
        }
        let found = self.entries[i - 1];
        let end = self
            .entries
            .get(i)
            .map_or(log_end, |next| next.start_offset);
        Some((found.epoch, end))
    }

    /// Removes entries that start at or after `end` (after the log was truncated to `end`).
    pub fn truncate_from_end(&mut self, end: Offset) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| e.start_offset < end);
        before != self.entries.len()
    }

    /// Drops entries wholly before `start`; the entry covering `start` now starts there.
    pub fn truncate_from_start(&mut self, start: Offset) -> bool {
        let covering = self.entries.partition_point(|e| e.start_offset <= start);
        if covering == 0 {
            return false;
        }
        let changed = covering > 1 || self.entries[0].start_offset != start;
        self.entries.drain(..covering - 1);
        self.entries[0].start_offset = start;
        changed
    }

    fn encode(&self) -> String {
        let mut s = format!("0\n{}\n", self.entries.len());
        for e in &self.entries {
            s.push_str(&format!("{} {}\n", e.epoch, e.start_offset));
        }
        s
    }

    /// Parses Kafka's checkpoint format. `None` for anything malformed: the caller rebuilds.
    fn decode(text: &[u8]) -> Option<EpochCache> {
        let text = std::str::from_utf8(text).ok()?;
        let mut lines = text.lines();
        if lines.next()? != "0" {
            return None;
        }
        let count: usize = lines.next()?.parse().ok()?;
        let mut cache = EpochCache::default();
        for _ in 0..count {
            let mut parts = lines.next()?.split(' ');
            let epoch = LeaderEpoch(parts.next()?.parse().ok()?);
            let start = Offset(parts.next()?.parse().ok()?);
            if parts.next().is_some() {
                return None;
            }
            if let Some(last) = cache.entries.last() {
                if epoch <= last.epoch || start < last.start_offset {
                    return None;
                }
            }
            cache.entries.push(EpochEntry {
                epoch,
                start_offset: start,
            });
        }
        lines.next().is_none().then_some(cache)
    }
}

/// A sync prepared by [`Log::prepare_sync`], run by the caller, completed by
/// [`Log::complete_sync`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingSync {
    /// The segments to sync (oldest first), each with its size when the sync was prepared.
    segments: Vec<(String, u64)>,
    end: Offset,
    generation: u64,
}

impl PendingSync {
    /// The files to sync, oldest first: the active segment, and a segment a roll closed
    /// before its tail was synced.
    pub fn files(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().map(|(file, _)| file.as_str())
    }
}

/// One appended batch's place in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: Offset,
    pub last_offset: Offset,
}

/// One partition's log. See the module documentation for its files and invariants.
///
/// Use: [`Log::open`] (recovers), then [`Log::append`] / [`Log::append_replicated`] any number
/// of times, then [`Log::sync`] once to make them all durable (group commit);
/// [`Log::durable_end`] says how far durability reaches. [`Log::checkpoint`] persists the
/// recovery point so that the next open re-validates less.
pub struct Log<S: Storage> {
    storage: S,
    config: LogConfig,
    segments: BTreeMap<Offset, Segment>,
    log_start: Offset,
    end: Offset,
    durable_end: Offset,
    epochs: EpochCache,
    recovery: RecoveryReport,
    /// Bumps on every truncation, so that a sync prepared before one is not completed after.
    generation: u64,
    /// The log start and recovery point this log last wrote to its checkpoint file: a
    /// checkpoint with nothing new writes nothing (an idle partition costs no I/O).
    checkpointed: Option<(Offset, Offset)>,
    /// The log cleaner's first dirty offset, as `cleaner.checkpoint` holds it (zero when the
    /// log was never cleaned): see [`Log::cleaned_end`].
    cleaned_end: Offset,
}

impl<S: Storage> Log<S> {
    /// Opens the log in `storage`, creating it if empty and recovering it otherwise: every
    /// batch at or past the persisted recovery point is re-validated, the log is truncated at
    /// the first invalid batch, later segments are removed, and indexes are rebuilt.
    pub fn open(mut storage: S, config: LogConfig, now_ms: i64) -> Result<Log<S>, LogError> {
        // A cleaning a crash interrupted: undone before its commit point, finished after it.
        cleaner::recover(&mut storage)?;
        let names = storage.list()?;
        for name in names.iter().filter(|n| n.ends_with(".tmp")) {
            storage.remove(name)?;
        }
        let bases: Vec<Offset> = names
            .iter()
            .filter_map(|n| Segment::parse_name(n))
            .collect();
        let (checkpoint_start, recovery_point) = read_partition_checkpoint(&storage);
        let mut log = Log {
            storage,
            config,
            segments: BTreeMap::new(),
            log_start: Offset::ZERO,
            end: Offset::ZERO,
            durable_end: Offset::ZERO,
            epochs: EpochCache::default(),
            recovery: RecoveryReport::default(),
            generation: 0,
            checkpointed: None,
            cleaned_end: Offset::ZERO,
        };
        let stored_epochs = storage::read_all(&log.storage, EPOCH_CHECKPOINT)
            .ok()
            .and_then(|b| EpochCache::decode(&b));
        log.epochs = stored_epochs.clone().unwrap_or_default();
        let mut truncated = false;
        let mut epoch = LeaderEpoch::NONE;
        for (i, &base) in bases.iter().enumerate() {
            let name = Segment::file_name(base);
            if !truncated && i > 0 && base != log.end {
                let problem = format!(
                    "segment starts at {base}, not at the previous segment's end {}",
                    log.end
                );
                log.recovery.corruption = Some((name.clone(), 0, problem));
                truncated = true;
            }
            if truncated {
                // Past a truncation point: not part of the log any more.
                log.storage.remove(&name)?;
                log.recovery.segments_removed += 1;
                continue;
            }
            let next_base = bases.get(i + 1).copied();
            let epoch_before = epoch;
            let mut segment = Segment::new(base, now_ms);
            let mut cut = None;
            let trusted = next_base.is_some_and(|next| next <= recovery_point);
            if trusted {
                cut = log.scan_segment(
                    &mut segment,
                    stored_epochs.as_ref(),
                    &mut epoch,
                    true,
                    u64::MAX,
                )?;
            }
            if !trusted || cut.is_some() || next_base != Some(segment.next_offset) {
                // Untrusted, or a trusted segment that does not add up (a damaged header):
                // validate every batch's CRC.
                log.recovery.corruption = None;
                (segment, epoch) = (Segment::new(base, now_ms), epoch_before);
                cut = log.scan_segment(
                    &mut segment,
                    stored_epochs.as_ref(),
                    &mut epoch,
                    false,
                    u64::MAX,
                )?;
            }
            if let Some(position) = cut {
                let len = log.storage.len(&name)?;
                if !crate::planted::active(crate::planted::Bug::RecoveryKeepsTornTail) {
                    log.storage.truncate(&name, position)?;
                    log.storage.sync(&name)?;
                }
                log.recovery.bytes_truncated += len - position;
                truncated = true;
            }
            segment.synced_size = segment.size;
            log.end = segment.next_offset;
            log.segments.insert(base, segment);
        }
        if let Some(start) = checkpoint_start.filter(|&s| s > log.end) {
            // The checkpoint starts the log past every segment: a follower's restart at its
            // leader's log start ([`Log::truncate_fully_and_start_at`]) persisted the new start
            // first, and the power went before it had removed the old segments, which all lie
            // below it: deleted data. The restart is finished here, as it would have ended.
            for segment in std::mem::take(&mut log.segments).into_values() {
                log.storage.remove(&segment.file)?;
            }
            log.end = start;
            log.epochs = EpochCache::default();
        }
        if log.segments.is_empty() {
            let base = checkpoint_start.unwrap_or(Offset::ZERO);
            log.storage.create(&Segment::file_name(base))?;
            log.segments.insert(base, Segment::new(base, now_ms));
            log.end = base;
        }
        let first = *log.segments.keys().next().expect("at least one segment");
        log.log_start = checkpoint_start
            .filter(|&s| s >= first && s <= log.end)
            .unwrap_or(first);
        log.durable_end = log.end;
        // Recovery may have cut the log below what the cleaner had cleaned.
        cleaner::lower_first_dirty(&mut log.storage, log.end)?;
        log.cleaned_end = cleaner::first_dirty(&log.storage);
        log.epochs.truncate_from_end(log.end);
        log.epochs.truncate_from_start(log.log_start);
        if stored_epochs.as_ref() != Some(&log.epochs) {
            log.write_epochs()?;
        }
        log.check_invariants();
        Ok(log)
    }

    /// Scans a segment from its start, rebuilding its indexes. Trusted segments (wholly below
    /// the recovery point) are walked header by header without reading the data; others are
    /// read in full and every batch's CRC is checked. Offsets must be dense from the segment's
    /// base (which catches a damaged baseOffset, outside the CRC), and leader epochs must not
    /// decrease from `epoch`, the last epoch seen. Scans the file up to `limit` bytes at most.
    /// Returns the position to truncate at, if an invalid batch was found.
    fn scan_segment(
        &mut self,
        segment: &mut Segment,
        reference: Option<&EpochCache>,
        epoch: &mut LeaderEpoch,
        trusted: bool,
        limit: u64,
    ) -> Result<Option<u64>, LogError> {
        let len = self.storage.len(&segment.file)?.min(limit);
        let mut expected = segment.base;
        let mut chunk = Bytes::new();
        let mut chunk_start = 0u64;
        while segment.size < len {
            let position = segment.size;
            let mut result = Err(BatchError::Truncated { need: 0, have: 0 });
            let mut problem = None;
            // A batch that fails a check (an I/O error, a CRC that does not match, fields
            // outside the CRC that do not fit) is read again from the disk before the log is
            // cut there: a transient read error must not destroy synced data. Damage on the
            // disk fails every read.
            for attempt in 0..=RECOVERY_READ_RETRIES {
                if attempt > 0 {
                    chunk = Bytes::new();
                    chunk_start = 0;
                }
                result = if trusted {
                    self.storage
                        .read_at(&segment.file, position, HEADER_BYTES)
                        .map_err(io_as_corrupt)
                        .and_then(|h| BatchHeader::read(&h))
                } else {
                    self.read_batch_scanning(
                        &segment.file,
                        position,
                        len,
                        &mut chunk,
                        &mut chunk_start,
                    )
                    .map(|b| b.header())
                };
                problem = match result {
                    Err(ref error) => Some(error.to_string()),
                    Ok(h) if position + h.size as u64 > len => Some(format!(
                        "batch of {} bytes runs past the end of the file",
                        h.size
                    )),
                    Ok(h) if h.base_offset != expected || h.last_offset_delta < 0 => Some(format!(
                        "batch offsets {}..={} do not follow {expected}",
                        h.base_offset,
                        h.last_offset()
                    )),
                    Ok(h) if h.partition_leader_epoch < *epoch => Some(format!(
                        "leader epoch {} after epoch {}",
                        h.partition_leader_epoch, *epoch
                    )),
                    // The epoch checkpoint is written before an epoch's first batch, so when it
                    // decoded it knows every durable batch's epoch: a batch that disagrees has a
                    // damaged partitionLeaderEpoch, which the CRC does not cover.
                    Ok(h)
                        if reference
                            .and_then(|r| r.epoch_for(h.last_offset()))
                            .is_some_and(|e| e != h.partition_leader_epoch) =>
                    {
                        Some(format!(
                            "leader epoch {} where the epoch checkpoint has another",
                            h.partition_leader_epoch
                        ))
                    }
                    Ok(_) => None,
                };
                if problem.is_none() {
                    self.recovery.read_retries += attempt as u64;
                    break;
                }
            }
            if let Some(problem) = problem {
                self.recovery.corruption = Some((segment.file.clone(), position, problem));
                return Ok(Some(position));
            }
            let header = result.expect("checked above");
            if !trusted {
                self.recovery.batches_validated += 1;
                self.recovery.bytes_validated += header.size as u64;
            }
            *epoch = header.partition_leader_epoch;
            // Only an epoch the cache does not know yet is added (a lost checkpoint is rebuilt
            // this way). `assign` of an older epoch would delete the entries after it: a rescan
            // of one segment after a truncation must not erase earlier segments' epochs.
            if self
                .epochs
                .latest()
                .is_none_or(|e| header.partition_leader_epoch > e.epoch)
            {
                self.epochs
                    .assign(header.partition_leader_epoch, header.base_offset);
            }
            segment.index(&header, position, self.config.index_interval_bytes);
            expected = header.next_offset();
        }
        Ok(None)
    }

    /// Reads the batch at `position` for recovery, through a chunk buffer so that a scan reads
    /// the file in large pieces.
    fn read_batch_scanning(
        &self,
        file: &str,
        position: u64,
        len: u64,
        chunk: &mut Bytes,
        chunk_start: &mut u64,
    ) -> Result<Batch, BatchError> {
        let chunk_end = *chunk_start + chunk.len() as u64;
        if position < *chunk_start || position + HEADER_BYTES as u64 > chunk_end {
            let want = SCAN_CHUNK_BYTES.min((len - position) as usize);
            *chunk = self
                .storage
                .read_at(file, position, want)
                .map_err(io_as_corrupt)?;
            *chunk_start = position;
        }
        let here = chunk.slice((position - *chunk_start) as usize..);
        let size = BatchHeader::read(&here)?.size;
        if position + size as u64 > len {
            return Err(BatchError::Truncated {
                need: size,
                have: (len - position) as usize,
            });
        }
        if size <= here.len() {
            return Batch::parse(here.slice(..size));
        }
        Batch::parse(
            self.storage
                .read_at(file, position, size)
                .map_err(io_as_corrupt)?,
        )
    }

    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Replaces the settings (a topic config change). Takes effect at the next roll or retention.
    pub fn set_config(&mut self, config: LogConfig) {
        self.config = config;
    }

    /// The first offset in the log.
    pub fn log_start(&self) -> Offset {
        self.log_start
    }

    /// The log end offset: the offset the next appended record gets.
    pub fn end(&self) -> Offset {
        self.end
    }

    /// Everything below this offset is synced to disk.
    /// How far the log cleaner has cleaned this log: its first dirty offset (zero if never
    /// cleaned). Every cleaning rewrites the log from its start, so below this offset no record
    /// is shadowed by a later one of its key below this offset, and no older value of a key
    /// survives a tombstone below it. A follower reports it to its leader, which removes no
    /// tombstone at or above it ([`crate::partition::PartitionReplica::tombstone_bound`]).
    pub fn cleaned_end(&self) -> Offset {
        self.cleaned_end
    }

    pub fn durable_end(&self) -> Offset {
        self.durable_end
    }

    pub fn epochs(&self) -> &EpochCache {
        &self.epochs
    }

    /// What the last open found and repaired.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// Total bytes in all segments.
    pub fn size_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.size).sum()
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Base offsets of all segments, oldest first.
    pub fn segment_bases(&self) -> Vec<Offset> {
        self.segments.keys().copied().collect()
    }

    /// Gives the storage back (to simulate a crash in tests, or on shutdown).
    pub fn into_storage(self) -> S {
        self.storage
    }

    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// The storage, for the files the partition keeps beside the segments (its `.txnindex`
    /// files, which the log ignores), and for tests that damage it behind the log's back.
    pub(crate) fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }

    /// Appends a batch as the leader of `epoch`: assigns offsets from the log end offset and
    /// stamps the epoch. The epoch is recorded (and persisted) in the epoch cache before the
    /// batch is written. Not durable until [`Log::sync`].
    pub fn append(
        &mut self,
        now_ms: i64,
        batch: Batch,
        epoch: LeaderEpoch,
    ) -> Result<AppendInfo, LogError> {
        // Stamped as it is written: the stamped head goes to the file in place of the batch's
        // own, so the batch (shared with the request it came in) is not copied to stamp it.
        let head = batch.stamped_head(self.end, epoch);
        let mut header = batch.header();
        header.base_offset = self.end;
        header.partition_leader_epoch = epoch;
        let rest = &batch.bytes()[batch::STAMPED_HEAD_BYTES..];
        debug_assert_eq!(
            BatchHeader::read(&[&head[..], &rest[..HEADER_BYTES - head.len()]].concat()),
            Ok(header),
            "the stamped head is the stamped header's"
        );
        self.append_stamped(now_ms, &header, &[&head, rest])
    }

    /// Appends a batch fetched from the leader, keeping its offsets and epoch. Its base offset
    /// must be the log end offset: keel's offsets are dense (there is no compaction yet).
    pub fn append_replicated(&mut self, now_ms: i64, batch: Batch) -> Result<AppendInfo, LogError> {
        if batch.base_offset() != self.end || batch.last_offset_delta() < 0 {
            return Err(LogError::NonMonotonicAppend {
                base: batch.base_offset(),
                end: self.end,
            });
        }
        self.append_stamped(now_ms, &batch.header(), &[batch.bytes()])
    }

    /// Appends the batch whose (stamped) header is `header` and whose bytes are `parts` one
    /// after another.
    fn append_stamped(
        &mut self,
        now_ms: i64,
        header: &BatchHeader,
        parts: &[&[u8]],
    ) -> Result<AppendInfo, LogError> {
        debug_assert_eq!(parts.iter().map(|p| p.len()).sum::<usize>(), header.size);
        if header.size as u64 > self.config.segment_bytes_max {
            return Err(LogError::BatchTooLarge {
                size: header.size,
                limit: self.config.segment_bytes_max,
            });
        }
        // The epoch is recorded before the batch is written; if either write fails, the cache
        // in memory goes back to what it was (it never refers past the log end).
        let starts_epoch = self
            .epochs
            .latest()
            .is_none_or(|e| header.partition_leader_epoch > e.epoch);
        let epochs_before = starts_epoch.then(|| self.epochs.clone());
        let written = self.append_write(now_ms, header, parts, starts_epoch);
        if let (Err(_), Some(before)) = (&written, epochs_before) {
            self.epochs = before;
        }
        written?;
        let active = self
            .segments
            .values_mut()
            .next_back()
            .expect("active segment");
        let position = active.size;
        active.index(header, position, self.config.index_interval_bytes);
        self.end = header.next_offset();
        debug_assert!(self.end > self.durable_end);
        Ok(AppendInfo {
            base_offset: header.base_offset,
            last_offset: header.last_offset(),
        })
    }

    /// The writes of [`Log::append_stamped`]: the epoch cache if the batch starts a newer
    /// epoch, a roll if one is due, and the batch.
    fn append_write(
        &mut self,
        now_ms: i64,
        header: &BatchHeader,
        parts: &[&[u8]],
        starts_epoch: bool,
    ) -> Result<(), LogError> {
        if starts_epoch
            && self
                .epochs
                .assign(header.partition_leader_epoch, header.base_offset)
        {
            self.write_epochs()?;
        }
        let active = self.active();
        let too_big = active.size + header.size as u64 > self.config.segment_bytes_max;
        let too_old =
            now_ms.saturating_sub(active.created_ms) >= self.config.roll_age_ms(active.base);
        if active.size > 0 && (too_big || too_old) {
            self.roll(now_ms, header.base_offset)?;
        }
        let file = self.active().file.clone();
        match parts {
            [one] => self.storage.append(&file, one)?,
            parts => self.storage.append_parts(&file, parts)?,
        }
        Ok(())
    }

    fn active(&self) -> &Segment {
        self.segments
            .values()
            .next_back()
            .expect("a log always has an active segment")
    }

    /// Starts a new segment at `base`. Nothing is synced here (a roll happens on the produce
    /// path, under the partition's lock): the closed segment's unsynced tail goes with the next
    /// sync ([`Log::prepare_sync`] names every segment with unsynced bytes), and the new
    /// segment's name becomes durable with its first sync ([`Storage::create_deferred`]).
    fn roll(&mut self, now_ms: i64, base: Offset) -> Result<(), LogError> {
        let segment = Segment::new(base, now_ms);
        self.storage.create_deferred(&segment.file)?;
        self.segments.insert(base, segment);
        Ok(())
    }

    /// Starts a new segment if the active one is older than `segment.ms` (the caller's timer).
    pub fn maybe_roll(&mut self, now_ms: i64) -> Result<bool, LogError> {
        let active = self.active();
        if active.size > 0
            && now_ms.saturating_sub(active.created_ms) >= self.config.roll_age_ms(active.base)
        {
            self.roll(now_ms, self.end)?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Makes every append so far durable with one sync (group commit) and returns the new
    /// durable end.
    pub fn sync(&mut self) -> Result<Offset, LogError> {
        match self.prepare_sync() {
            None => Ok(self.durable_end),
            Some(pending) => {
                for file in pending.files() {
                    self.storage.sync(file)?;
                }
                Ok(self.complete_sync(pending))
            }
        }
    }

    /// The first half of a sync run outside the log (on an I/O thread, so appends go on while
    /// the disk syncs): names the files to sync, the segments with unsynced bytes (the active
    /// one, and one a roll closed since the last sync). `None` if everything is durable.
    pub fn prepare_sync(&self) -> Option<PendingSync> {
        if self.durable_end == self.end {
            return None;
        }
        let mut segments: Vec<(String, u64)> = self
            .segments
            .values()
            .filter(|s| s.synced_size < s.size)
            .map(|s| (s.file.clone(), s.size))
            .collect();
        if segments.is_empty() {
            // Unsynced offsets with no unsynced bytes: the active segment (its name, at least)
            // still makes them durable.
            let active = self.active();
            segments.push((active.file.clone(), active.size));
        }
        Some(PendingSync {
            segments,
            end: self.end,
            generation: self.generation,
        })
    }

    /// The second half: the caller synced `pending`'s files after `prepare_sync` returned it.
    /// Advances the durable end to what was written when the sync was prepared, unless the log
    /// was truncated meanwhile (a truncation is synced by itself). Returns the durable end.
    pub fn complete_sync(&mut self, pending: PendingSync) -> Offset {
        if pending.generation != self.generation {
            return self.durable_end;
        }
        for (file, size) in &pending.segments {
            if let Some(segment) = self.segments.values_mut().find(|s| &s.file == file) {
                segment.synced_size = segment.synced_size.max(*size);
            }
        }
        assert!(
            pending.end <= self.end,
            "a prepared sync never covers more than was written"
        );
        self.durable_end = self.durable_end.max(pending.end);
        self.durable_end
    }

    /// Persists the log start offset and the recovery point (the durable end) so that the next
    /// open re-validates only what follows it. Call periodically and on clean shutdown.
    pub fn checkpoint(&mut self) -> Result<(), LogError> {
        let point = (self.log_start, self.durable_end);
        if self.checkpointed == Some(point) {
            return Ok(());
        }
        self.write_checkpoint(self.log_start, self.durable_end)
    }

    /// Writes the checkpoint file: the log start and the recovery point.
    fn write_checkpoint(
        &mut self,
        log_start: Offset,
        recovery_point: Offset,
    ) -> Result<(), LogError> {
        let body = format!("keel-partition 1 {log_start} {recovery_point}");
        let crc = crc32c::crc32c(body.as_bytes());
        storage::write_atomic(
            &mut self.storage,
            PARTITION_CHECKPOINT,
            format!("{body} {crc}\n").as_bytes(),
        )?;
        self.checkpointed = Some((log_start, recovery_point));
        Ok(())
    }

    fn write_epochs(&mut self) -> Result<(), LogError> {
        storage::write_atomic(
            &mut self.storage,
            EPOCH_CHECKPOINT,
            self.epochs.encode().as_bytes(),
        )?;
        Ok(())
    }

    /// Reads whole batches starting with the one that contains `from`, up to `max_bytes` in
    /// total but always at least one batch (KIP-74), and only batches that end at or below
    /// `upper` (the high watermark for consumers, the log end offset for followers). Reads stay
    /// within one segment. Every batch is CRC-checked before it is returned.
    ///
    /// The batches are slices of the buffers they were read into: one read of the file for
    /// many batches, not two for each ([`Log::read_records`] returns them as one buffer).
    pub fn read(
        &self,
        from: Offset,
        max_bytes: usize,
        upper: Offset,
    ) -> Result<Vec<Batch>, LogError> {
        Ok(self.read_runs(from, max_bytes, upper)?.0)
    }

    /// [`Log::read`]'s batches as one buffer, their bytes one after another (a fetch response's
    /// records), and how many batches it holds. Not a copy when one read held them all.
    pub fn read_records(
        &self,
        from: Offset,
        max_bytes: usize,
        upper: Offset,
    ) -> Result<(Bytes, usize), LogError> {
        let (batches, runs) = self.read_runs(from, max_bytes, upper)?;
        let bytes = match runs.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            many => {
                let mut buf = BytesMut::with_capacity(many.iter().map(Bytes::len).sum());
                for run in many {
                    buf.extend_from_slice(run);
                }
                buf.freeze()
            }
        };
        debug_assert_eq!(bytes.len(), batches.iter().map(Batch::size).sum::<usize>());
        Ok((bytes, batches.len()))
    }

    /// [`Log::read`], and the returned batches' bytes as runs: each run the bytes of
    /// consecutive batches in one read buffer, the runs in order.
    fn read_runs(
        &self,
        from: Offset,
        max_bytes: usize,
        upper: Offset,
    ) -> Result<(Vec<Batch>, Vec<Bytes>), LogError> {
        if from < self.log_start || from > self.end {
            return Err(LogError::OffsetOutOfRange {
                offset: from,
                log_start: self.log_start,
                end: self.end,
            });
        }
        let mut out = Vec::new();
        let mut runs = Vec::new();
        let segment = self
            .segments
            .range(..=from)
            .next_back()
            .into_iter()
            .chain(self.segments.range(from.plus(1)..))
            .map(|(_, s)| s)
            .find(|s| s.next_offset > from);
        let Some(segment) = segment else {
            return Ok((out, runs));
        };
        let (mut expected, mut position) = segment.lookup(from);
        // Between the index entry and `from`: skip whole batches by their headers (none of
        // them is returned, so none needs its CRC checked).
        while position < segment.size && expected < from && expected < upper {
            let header = self.read_header_at(segment, position, expected)?;
            if header.last_offset() >= from {
                break;
            }
            position += header.size as u64;
            expected = header.next_offset();
        }
        // Whole batches from `position`, parsed out of windows read from the file: as many
        // bytes as may be returned when the read goes to the log end, else windows that start
        // small and double, so that little is read past `upper` for nothing.
        let mut reader = WindowReader {
            window: Bytes::new(),
            at: position,
            next: if upper >= self.end {
                max_bytes
            } else {
                READ_WINDOW_BYTES_MIN
            },
            run: None,
        };
        let mut total = 0usize;
        while position < segment.size {
            // Read no batch that cannot be returned: a damaged one past what the caller
            // asked for must not fail its read.
            if total > 0 && total >= max_bytes || expected >= upper {
                break;
            }
            let left = segment.size - position;
            let corrupt = |error| LogError::Corrupt {
                file: segment.file.clone(),
                position,
                error,
            };
            if !reader.holds(position, batch::LOG_OVERHEAD_BYTES) {
                let want = reader.next.min(max_bytes.saturating_sub(total));
                let want = (want.max(batch::LOG_OVERHEAD_BYTES) as u64).min(left);
                let window = self.read_window(segment, position, want)?;
                reader.refill(&mut runs, window, position);
            }
            let at = (position - reader.at) as usize;
            let size = match batch::peek_size(&reader.window[at..]) {
                Some(size) => size.map_err(corrupt)?,
                None => {
                    return Err(corrupt(BatchError::Truncated {
                        need: batch::LOG_OVERHEAD_BYTES,
                        have: reader.window.len() - at,
                    }))
                }
            };
            if total > 0 && total + size > max_bytes {
                break;
            }
            if !reader.holds(position, size) {
                // The batch goes past the window: read again from it, at least all of it.
                let want = size.max(reader.next.min(max_bytes.saturating_sub(total)));
                let window = self.read_window(segment, position, (want as u64).min(left))?;
                reader.refill(&mut runs, window, position);
                if reader.window.len() < size {
                    return Err(corrupt(BatchError::Truncated {
                        need: size,
                        have: reader.window.len(),
                    }));
                }
            }
            let at = (position - reader.at) as usize;
            let batch = self.check_batch(
                segment,
                position,
                expected,
                reader.window.slice(at..at + size),
            )?;
            position += size as u64;
            expected = batch.next_offset();
            if batch.last_offset() < from {
                reader.close_run(&mut runs);
                continue;
            }
            if batch.next_offset() > upper {
                break;
            }
            total += size;
            reader.extend_run(&mut runs, at, at + size);
            out.push(batch);
        }
        reader.close_run(&mut runs);
        Ok((out, runs))
    }

    /// Up to `len` bytes of a segment from `position`: fewer only where the file ends first.
    fn read_window(&self, segment: &Segment, position: u64, len: u64) -> Result<Bytes, LogError> {
        Ok(self
            .storage
            .read_at(&segment.file, position, len as usize)?)
    }

    /// Reads the header of the batch at `position`, which must start at `expected` and end
    /// within the segment: enough to step over a batch that is not returned.
    fn read_header_at(
        &self,
        segment: &Segment,
        position: u64,
        expected: Offset,
    ) -> Result<BatchHeader, LogError> {
        let corrupt = |error| LogError::Corrupt {
            file: segment.file.clone(),
            position,
            error,
        };
        let bytes = self
            .storage
            .read_at(&segment.file, position, HEADER_BYTES)?;
        let header = BatchHeader::read(&bytes).map_err(corrupt)?;
        if header.base_offset != expected
            || header.last_offset_delta < 0
            || position + header.size as u64 > segment.size
        {
            let why = format!(
                "batch header at offset {} (delta {}, {} bytes) where the log has offset \
                 {expected} and {} bytes left",
                header.base_offset,
                header.last_offset_delta,
                header.size,
                segment.size - position
            );
            return Err(corrupt(BatchError::OutsideCrc(why)));
        }
        Ok(header)
    }

    /// Reads and checks the batch at `position`, which must start at `expected`: its CRC, and
    /// the two fields the CRC does not cover, its base offset against `expected` and its
    /// leader epoch against the epoch cache. A damaged batch is never returned.
    fn read_batch_at(
        &self,
        segment: &Segment,
        position: u64,
        expected: Offset,
    ) -> Result<Batch, LogError> {
        let corrupt = |error| LogError::Corrupt {
            file: segment.file.clone(),
            position,
            error,
        };
        let header = self
            .storage
            .read_at(&segment.file, position, batch::LOG_OVERHEAD_BYTES)?;
        let size = match batch::peek_size(&header) {
            Some(result) => result.map_err(corrupt)?,
            None => {
                return Err(corrupt(BatchError::Truncated {
                    need: batch::LOG_OVERHEAD_BYTES,
                    have: header.len(),
                }))
            }
        };
        let bytes = self.storage.read_at(&segment.file, position, size)?;
        self.check_batch(segment, position, expected, bytes)
    }

    /// Checks the bytes read for the batch at `position`, which must start at `expected`: its
    /// CRC, and the two fields the CRC does not cover, its base offset against `expected` and
    /// its leader epoch against the epoch cache. A damaged batch is never returned.
    fn check_batch(
        &self,
        segment: &Segment,
        position: u64,
        expected: Offset,
        bytes: Bytes,
    ) -> Result<Batch, LogError> {
        let corrupt = |error| LogError::Corrupt {
            file: segment.file.clone(),
            position,
            error,
        };
        // The planted bug: reads return what they read without verifying it (neither the CRC
        // nor the fields outside it), as long as it frames as a batch.
        let unverified = crate::planted::active(crate::planted::Bug::ServeCorruptBatch);
        let batch = match Batch::parse(bytes.clone()) {
            #[cfg(feature = "planted-bugs")]
            Err(_) if unverified && BatchHeader::read(&bytes).is_ok() => {
                Batch::from_bytes_unchecked(bytes)
            }
            other => other.map_err(corrupt)?,
        };
        if unverified {
            return Ok(batch);
        }
        if batch.base_offset() != expected {
            let why = format!(
                "baseOffset {} where the log has offset {expected}",
                batch.base_offset()
            );
            return Err(corrupt(BatchError::OutsideCrc(why)));
        }
        if let Some(epoch) = self.epochs.epoch_for(batch.last_offset()) {
            if batch.partition_leader_epoch() != epoch {
                let why = format!(
                    "partitionLeaderEpoch {} where the epoch cache has {epoch}",
                    batch.partition_leader_epoch()
                );
                return Err(corrupt(BatchError::OutsideCrc(why)));
            }
        }
        Ok(batch)
    }

    /// Kafka's ListOffsets by timestamp: the first record whose timestamp is at or after `ts`,
    /// as (offset, timestamp), or `None` if there is none.
    pub fn offset_for_timestamp(&self, ts: i64) -> Result<Option<(Offset, i64)>, LogError> {
        for segment in self.segments.values() {
            if segment.max_timestamp.is_none_or(|(max, _)| max < ts) {
                continue;
            }
            // Every batch up to the last index entry with a smaller timestamp ends before `ts`.
            let i = segment.time_index.partition_point(|&(t, _)| t < ts);
            let from = if i == 0 {
                segment.base
            } else {
                segment.time_index[i - 1].1
            };
            let (mut expected, mut position) = segment.lookup(from.max(self.log_start));
            while position < segment.size {
                let batch = self.read_batch_at(segment, position, expected)?;
                position += batch.size() as u64;
                expected = batch.next_offset();
                if batch.max_timestamp() < ts || batch.last_offset() < self.log_start {
                    continue;
                }
                let records = batch.records().map_err(|error| LogError::Corrupt {
                    file: segment.file.clone(),
                    position,
                    error,
                })?;
                if let Some(r) = records
                    .iter()
                    .find(|r| r.timestamp >= ts && r.offset >= self.log_start)
                {
                    return Ok(Some((r.offset, r.timestamp)));
                }
            }
        }
        Ok(None)
    }

    /// Kafka's ListOffsets MAX_TIMESTAMP (KIP-734): the first record with the largest
    /// timestamp, as (offset, timestamp).
    pub fn max_timestamp(&self) -> Result<Option<(Offset, i64)>, LogError> {
        let mut best: Option<(i64, Offset, &Segment)> = None;
        for segment in self.segments.values() {
            if let Some((ts, base)) = segment.max_timestamp {
                if best.is_none_or(|(b, _, _)| ts > b) {
                    best = Some((ts, base, segment));
                }
            }
        }
        let Some((ts, base, segment)) = best else {
            return Ok(None);
        };
        let (mut expected, mut position) = segment.lookup(base);
        loop {
            let batch = self.read_batch_at(segment, position, expected)?;
            expected = batch.next_offset();
            if batch.base_offset() == base {
                let records = batch.records().map_err(|error| LogError::Corrupt {
                    file: segment.file.clone(),
                    position,
                    error,
                })?;
                let found = records
                    .iter()
                    .find(|r| r.timestamp == ts)
                    .map_or(batch.last_offset(), |r| r.offset);
                return Ok(Some((found, ts)));
            }
            position += batch.size() as u64;
        }
    }

    /// Removes the batch containing `offset` and everything after it (a follower dropping a
    /// diverged suffix), durably: the truncation is synced before this returns. Returns the new
    /// log end offset: the base offset of the batch that contained `offset`.
    ///
    /// Errors leave the log whole (its memory agrees with its files) and lose nothing below
    /// the truncation point: damage found in the part that stays (its headers are read again
    /// from the disk to rebuild the indexes) fails the truncation before anything changes; a
    /// storage error part way leaves the log truncated at a segment boundary or at the cut,
    /// possibly not yet synced.
    pub fn truncate_to(&mut self, offset: Offset) -> Result<Offset, LogError> {
        if offset >= self.end {
            return Ok(self.end);
        }
        let offset = offset.max(self.log_start);
        // Reading only, first: where the cut falls, and the indexes of what stays.
        let (&base, segment) = self
            .segments
            .range(..=offset)
            .next_back()
            .or_else(|| self.segments.iter().next())
            .expect("a log always has an active segment");
        let (file, created_ms, size) = (segment.file.clone(), segment.created_ms, segment.size);
        let (_, mut position) = segment.lookup(offset);
        // The first offset of the batch the cut falls in, as its header on the disk says.
        let mut cut_base = None;
        while position < size {
            let header = self
                .storage
                .read_at(&file, position, HEADER_BYTES)
                .map_err(io_as_corrupt)
                .and_then(|h| BatchHeader::read(&h));
            let header = header.map_err(|error| LogError::Corrupt {
                file: file.clone(),
                position,
                error,
            })?;
            if header.last_offset() >= offset {
                cut_base = Some(header.base_offset);
                break;
            }
            position += header.size as u64;
        }
        let mut rebuilt = Segment::new(base, created_ms);
        let (epochs, recovery) = (self.epochs.clone(), self.recovery.clone());
        let mut epoch = LeaderEpoch::NONE;
        let scanned = self.scan_segment(&mut rebuilt, Some(&epochs), &mut epoch, true, position);
        let problem = self.recovery.corruption.take();
        // A rescan touches neither the epochs (they came from this log) nor the report of the
        // last open.
        self.recovery = recovery;
        self.epochs = epochs;
        match scanned? {
            Some(at) => {
                let why = problem.map_or_else(|| "damaged".to_string(), |(_, _, why)| why);
                return Err(LogError::Corrupt {
                    file,
                    position: at,
                    error: BatchError::CorruptRecords(format!(
                        "before the truncation point at {offset}: {why}"
                    )),
                });
            }
            None if rebuilt.size != position => {
                return Err(LogError::Corrupt {
                    file,
                    position: rebuilt.size,
                    error: BatchError::CorruptRecords(format!(
                        "the batches before the truncation point at {offset} end at byte {}, \
                         not {position}",
                        rebuilt.size
                    )),
                });
            }
            // The header the cut was found by does not follow the batches before it: it was
            // written somewhere else (a misdirected write), and cutting there would end the
            // log below the cut.
            None if cut_base.is_some_and(|b| b != rebuilt.next_offset) => {
                return Err(LogError::Corrupt {
                    file,
                    position,
                    error: BatchError::CorruptRecords(format!(
                        "the batch at the truncation point at {offset} starts at offset {}, \
                         but the batches before it end at {}",
                        cut_base.map_or(-1, |b| b.0),
                        rebuilt.next_offset
                    )),
                });
            }
            None => {}
        }
        // The cleaner's first dirty offset goes down first: a crash after it leaves a log that
        // is merely cleaned again.
        cleaner::lower_first_dirty(&mut self.storage, rebuilt.next_offset)?;
        self.cleaned_end = self.cleaned_end.min(rebuilt.next_offset);
        // Then the changes, each mirrored in memory as soon as it is made.
        self.generation += 1;
        let old_end = self.end;
        // Later segments go whole, newest first: a failed removal leaves a shorter, whole log.
        while let Some((&last, later)) = self.segments.iter().next_back() {
            if last <= base {
                break;
            }
            let later = later.file.clone();
            if let Err(e) = self.storage.remove(&later) {
                self.settle_truncated();
                return Err(e.into());
            }
            self.segments.remove(&last);
        }
        if let Err(e) = self.storage.truncate(&file, position) {
            self.settle_truncated();
            return Err(e.into());
        }
        let synced_size = self.segments[&base].synced_size;
        rebuilt.synced_size = synced_size.min(position);
        self.segments.insert(base, rebuilt);
        if let Err(e) = self.storage.sync(&file) {
            self.settle_truncated();
            return Err(e.into());
        }
        let rebuilt = self.segments.get_mut(&base).expect("just inserted");
        rebuilt.synced_size = rebuilt.size;
        self.end = rebuilt.next_offset;
        assert!(self.end <= old_end, "truncation never extends the log");
        // This segment was synced just now; an earlier one a roll closed unsynced is synced
        // here too, so that everything below the new end is durable.
        let unsynced: Vec<Offset> = self
            .segments
            .iter()
            .filter(|(_, s)| s.synced_size < s.size)
            .map(|(&b, _)| b)
            .collect();
        for b in unsynced {
            let file = self.segments[&b].file.clone();
            if let Err(e) = self.storage.sync(&file) {
                self.settle_truncated();
                return Err(e.into());
            }
            let s = self.segments.get_mut(&b).expect("a segment of the log");
            s.synced_size = s.size;
        }
        self.durable_end = self.end;
        if self.epochs.truncate_from_end(self.end) {
            self.write_epochs()?;
        }
        self.check_invariants();
        Ok(self.end)
    }

    /// After a truncation failed part way: the log ends where its last segment now ends, and
    /// what was durable below that stays durable. The epoch file is rewritten at the next
    /// change (an open trims entries past the end anyway).
    fn settle_truncated(&mut self) {
        self.end = self.active().next_offset;
        self.durable_end = self.durable_end.min(self.end);
        self.epochs.truncate_from_end(self.end);
        self.check_invariants();
    }

    /// Empties the log and restarts it at `offset` (a follower whose leader's log starts past
    /// this one's end).
    pub fn truncate_fully_and_start_at(
        &mut self,
        now_ms: i64,
        offset: Offset,
    ) -> Result<(), LogError> {
        // A restart past the log's end persists the new start first: a crash part way leaves
        // segments that all lie below it, which the next open removes. (Removing them first
        // left, after a crash, a log that ended below the high watermark its replica had
        // persisted: damaged, though a power loss was all that happened.)
        if offset > self.end {
            self.write_checkpoint(offset, offset)?;
        }
        cleaner::lower_first_dirty(&mut self.storage, offset.min(self.end))?;
        self.cleaned_end = self.cleaned_end.min(offset.min(self.end));
        // Newest first: a removal that fails leaves the older segments, a log that ends where
        // the last of them does (and always has a segment).
        self.generation += 1;
        while let Some((&base, last)) = self.segments.iter().next_back() {
            match self.storage.remove(&last.file) {
                Ok(()) | Err(StorageError::NotFound(_)) => {}
                Err(e) => {
                    let end = last.next_offset;
                    self.end = self.end.min(end);
                    self.durable_end = self.durable_end.min(end);
                    self.epochs.truncate_from_end(self.end);
                    return Err(e.into());
                }
            }
            self.segments.remove(&base);
        }
        // The fresh segment is the log from here on, even if creating its file fails: appends
        // to it fail until a later call creates it.
        let segment = Segment::new(offset, now_ms);
        let file = segment.file.clone();
        self.segments.insert(offset, segment);
        self.log_start = offset;
        self.end = offset;
        self.durable_end = offset;
        self.epochs = EpochCache::default();
        self.storage.create(&file)?;
        self.write_epochs()?;
        self.checkpoint()
    }

    /// Kafka's DeleteRecords: moves the log start offset forward to `offset` (never past
    /// `upper`, the high watermark) and removes segments wholly below it. Durable on return.
    pub fn advance_log_start(&mut self, offset: Offset, upper: Offset) -> Result<Offset, LogError> {
        let upper = upper.min(self.durable_end);
        let target = offset.min(upper).min(self.end);
        if target <= self.log_start {
            return Ok(self.log_start);
        }
        self.log_start = target;
        self.checkpoint()?;
        self.remove_segments_below_start()?;
        if self.epochs.truncate_from_start(self.log_start) {
            self.write_epochs()?;
        }
        Ok(self.log_start)
    }

    fn remove_segments_below_start(&mut self) -> Result<(), LogError> {
        while self.segments.len() > 1 {
            let (&base, first) = self.segments.iter().next().expect("nonempty");
            if first.next_offset > self.log_start || first.size == 0 {
                break;
            }
            let segment = self.segments.remove(&base).expect("listed");
            self.storage.remove(&segment.file)?;
        }
        Ok(())
    }

    /// Applies `retention.ms` and `retention.bytes`: removes whole non-active segments from the
    /// front while they are expired or the log is over its size limit, but never a segment with
    /// data at or above `upper` (the high watermark). Returns the number removed.
    pub fn apply_retention(&mut self, now_ms: i64, upper: Offset) -> Result<usize, LogError> {
        // Never past what is durable, whatever the caller passes: log start <= durable end.
        let upper = upper.min(self.durable_end);
        let mut removed = 0;
        let mut size = self.size_bytes() as i64;
        while self.segments.len() > 1 {
            let first = self.segments.values().next().expect("nonempty");
            if first.next_offset > upper {
                break;
            }
            let expired = self.config.retention_ms_max >= 0
                && first
                    .max_timestamp
                    .is_none_or(|(ts, _)| now_ms.saturating_sub(ts) > self.config.retention_ms_max);
            let oversized = self.config.retention_bytes_max >= 0
                && size - first.size as i64 >= self.config.retention_bytes_max;
            if !(expired || oversized) {
                break;
            }
            let (base, next_start, first_size) = (first.base, first.next_offset, first.size);
            size -= first_size as i64;
            self.log_start = self.log_start.max(next_start);
            removed += 1;
            // Persist the new start before the data goes, so a crash never exposes a gap.
            self.checkpoint()?;
            let segment = self.segments.remove(&base).expect("listed");
            self.storage.remove(&segment.file)?;
        }
        if removed > 0 && self.epochs.truncate_from_start(self.log_start) {
            self.write_epochs()?;
        }
        Ok(removed)
    }

    /// Asserts the invariants that hold between operations (see the module docs).
    pub fn check_invariants(&self) {
        assert!(
            self.log_start <= self.durable_end,
            "log start {} above durable end {}",
            self.log_start,
            self.durable_end
        );
        assert!(
            self.durable_end <= self.end,
            "durable end {} above log end {}",
            self.durable_end,
            self.end
        );
        let mut previous: Option<&Segment> = None;
        for segment in self.segments.values() {
            if let Some(p) = previous {
                assert!(
                    segment.base >= p.next_offset,
                    "segments overlap at {}",
                    segment.base
                );
            }
            previous = Some(segment);
        }
        for pair in self.epochs.entries().windows(2) {
            assert!(
                pair[0].epoch < pair[1].epoch,
                "epochs increase in the cache"
            );
            assert!(
                pair[0].start_offset <= pair[1].start_offset,
                "epoch start offsets increase"
            );
        }
        if let Some(latest) = self.epochs.latest() {
            assert!(
                latest.start_offset < self.end || self.end == self.log_start,
                "epoch cache refers past the log end"
            );
        }
    }
}

/// The first window of a read that stops below the log end (see [`Log::read`]). Small in tests
/// and fuzzing, whose segments are small, so that reads there take many windows.
#[cfg(not(any(test, fuzzing)))]
const READ_WINDOW_BYTES_MIN: usize = 64 * 1024;
#[cfg(any(test, fuzzing))]
const READ_WINDOW_BYTES_MIN: usize = 100;

/// The window of the file a [`Log::read`] parses batches out of, and the run of returned
/// batches in it.
struct WindowReader {
    window: Bytes,
    /// The segment position of the window's first byte.
    at: u64,
    /// How many bytes the next window reads, within the read's bounds.
    next: usize,
    /// Where the returned batches' bytes lie in the window, so far.
    run: Option<(usize, usize)>,
}

impl WindowReader {
    /// Whether the window holds `len` bytes from segment position `position`.
    fn holds(&self, position: u64, len: usize) -> bool {
        position >= self.at && (position - self.at) as usize + len <= self.window.len()
    }

    /// Replaces the window with `window`, read at `at`, closing the run in the old one.
    fn refill(&mut self, runs: &mut Vec<Bytes>, window: Bytes, at: u64) {
        self.close_run(runs);
        self.window = window;
        self.at = at;
        self.next = self.next.saturating_mul(2);
    }

    /// The returned batch at `start..end` of the window extends the run, or starts one.
    fn extend_run(&mut self, runs: &mut Vec<Bytes>, start: usize, end: usize) {
        debug_assert!(end <= self.window.len());
        match self.run {
            Some((s, e)) if e == start => self.run = Some((s, end)),
            _ => {
                self.close_run(runs);
                self.run = Some((start, end));
            }
        }
    }

    fn close_run(&mut self, runs: &mut Vec<Bytes>) {
        if let Some((start, end)) = self.run.take() {
            runs.push(self.window.slice(start..end));
        }
    }
}

fn io_as_corrupt(e: StorageError) -> BatchError {
    BatchError::CorruptRecords(format!("read failed: {e}"))
}

/// Reads (log start offset, recovery point) from the partition checkpoint. A missing or
/// damaged checkpoint means: start from the first segment, re-validate everything.
fn read_partition_checkpoint<S: Storage>(storage: &S) -> (Option<Offset>, Offset) {
    let Ok(bytes) = storage::read_all(storage, PARTITION_CHECKPOINT) else {
        return (None, Offset::ZERO);
    };
    let parsed = std::str::from_utf8(&bytes).ok().and_then(|text| {
        let text = text.strip_suffix('\n')?;
        let (body, crc) = text.rsplit_once(' ')?;
        if crc.parse::<u32>().ok()? != crc32c::crc32c(body.as_bytes()) {
            return None;
        }
        let mut parts = body.split(' ');
        if parts.next()? != "keel-partition" || parts.next()? != "1" {
            return None;
        }
        let start = Offset(parts.next()?.parse().ok()?);
        let recovery = Offset(parts.next()?.parse().ok()?);
        Some((Some(start), recovery))
    });
    parsed.unwrap_or((None, Offset::ZERO))
}

pub mod cleaner;
pub mod testing;

#[cfg(test)]
mod tests;
