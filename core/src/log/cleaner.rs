//! The log cleaner: Kafka's log compaction (`cleanup.policy=compact`), as pure code over the
//! log's [`Storage`]. No threads, no clock: the caller passes the time and the bounds, and runs
//! the three phases where it likes (docs/compaction.md):
//!
//! 1. [`Log::plan_clean`] (under the partition's lock, cheap): a snapshot of the closed,
//!    synced segments below the cleanable bound, or `None` if the log is not dirty enough.
//! 2. [`build`] (no lock needed: it reads only closed segments and writes only new files): reads
//!    the planned segments, builds the key → latest offset map over the dirty part, and writes
//!    the cleaned groups of segments to `{base}.{end}.cleaned` files, synced.
//! 3. [`Log::install_cleaned`] (under the lock, short): checks that every planned segment is
//!    still in the log unchanged (a retention, truncation or DeleteRecords in the meantime makes
//!    the result stale and it is dropped), then swaps each group in crash-safely.
//!
//! What the cleaner keeps (Kafka's `LogCleaner`):
//! - for each key, the record with the highest offset in the cleaned range; a record without a
//!   key is dropped (Kafka refuses them on compacted topics);
//! - a tombstone (null value) until `delete.retention.ms` after the first cleaning that kept
//!   it: that cleaning stores the delete horizon in the batch (KIP-534: attributes bit 6,
//!   `baseTimestamp` holds the horizon and record timestamp deltas are relative to it);
//! - every batch keeps its base offset, last offset delta, producer id, epoch and base
//!   sequence, so its last sequence is unchanged and idempotence still works; its CRC is
//!   recomputed. A batch left without records is kept empty if it is the last data batch of a
//!   producer the caller names (Kafka's `RETAIN_EMPTY`), and dropped otherwise;
//! - control batches (transaction markers) and the records of transactions not known to be
//!   committed within the cleaned range (aborted, or whose marker is past it) are kept as they
//!   are, and never shadow an earlier record (a difference from Kafka, which removes aborted
//!   records and, later, markers).
//!
//! Invariants:
//! 1. The log's offsets stay dense (docs/log-format.md, invariant 1): a run of dropped batches
//!    of one leader epoch is replaced by one empty batch (no records, producer id -1) covering
//!    the run's offsets, so every offset a reader could ask for is still in exactly one batch,
//!    and recovery's density and epoch checks hold for cleaned segments unchanged.
//! 2. Only closed, synced segments wholly below the bound the caller passes (high watermark and
//!    last stable offset), below the durable end and below `min.compaction.lag.ms` are read or
//!    replaced; the active segment never is.
//! 3. A crash at any point leaves either a group's old segments or its cleaned one, never a mix:
//!    the cleaned file is synced, renamed to `.swap` (the commit point), the old segments are
//!    removed, and the swap is renamed over the group's first segment. [`recover`] (run by
//!    [`Log::open`]) removes `.cleaned` files and finishes `.swap` ones.
//! 4. A batch that fails its CRC, its density or its epoch check, or a segment shorter than the
//!    plan says, stops the cleaning with [`LogError::Corrupt`]; nothing is replaced.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};

use super::{EpochCache, Log, LogError, Segment, SCAN_CHUNK_BYTES};
use crate::batch::{
    self, Batch, BatchError, BatchHeader, ATTR_DELETE_HORIZON, HEADER_BYTES, LOG_OVERHEAD_BYTES,
    MAGIC_V2,
};
use crate::storage::{self, Storage, StorageError};
use crate::types::{LeaderEpoch, Offset, ProducerId};

/// The file that holds the first dirty offset and the earliest pending delete horizon.
pub const CLEANER_CHECKPOINT: &str = "cleaner.checkpoint";
const CLEANED_SUFFIX: &str = ".cleaned";
const SWAP_SUFFIX: &str = ".swap";
/// Output bytes buffered before they are appended to the cleaned file.
const WRITE_BUFFER_BYTES: usize = 1 << 20;
/// Bytes one key takes in the offset map besides the key itself (an estimate, for the bound).
const MAP_ENTRY_OVERHEAD_BYTES: u64 = 48;

/// A topic's cleaner settings, with Kafka's names and defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct CleanerConfig {
    /// `min.cleanable.dirty.ratio`: clean when the dirty share of the cleanable bytes exceeds it.
    pub dirty_ratio_min: f64,
    /// `delete.retention.ms`: how long a tombstone stays after the cleaning that first kept it.
    pub delete_retention_ms: i64,
    /// `min.compaction.lag.ms`: a segment holding a record younger than this is not cleaned.
    pub compaction_lag_ms_min: i64,
    /// `max.compaction.lag.ms`: clean whatever the ratio once a dirty record is this old.
    pub compaction_lag_ms_max: i64,
    /// `log.cleaner.dedupe.buffer.size` (per cleaning): the offset map's bound; a cleaning
    /// stops at the segment boundary where the map passes it (always at least one segment).
    pub map_bytes_max: u64,
}

impl Default for CleanerConfig {
    fn default() -> Self {
        CleanerConfig {
            dirty_ratio_min: 0.5,
            delete_retention_ms: 24 * 3600 * 1000,
            compaction_lag_ms_min: 0,
            compaction_lag_ms_max: i64::MAX,
            map_bytes_max: 128 << 20,
        }
    }
}

/// One segment of a plan, as the log had it when the plan was made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedSegment {
    pub base: Offset,
    pub file: String,
    pub size: u64,
    pub next_offset: Offset,
    created_ms: i64,
}

/// What [`Log::plan_clean`] chose: a snapshot, valid until the log removes or changes one of
/// its segments (which [`Log::install_cleaned`] detects).
#[derive(Clone, Debug)]
pub struct CleanPlan {
    /// Every segment to rewrite, oldest first: the clean part then the dirty part.
    pub segments: Vec<PlannedSegment>,
    /// Records at or past this offset have not been cleaned yet.
    pub first_dirty: Offset,
    /// The end of the last planned segment.
    pub clean_end: Offset,
    /// Bytes already cleaned, and bytes not yet, among the planned segments.
    pub clean_bytes: u64,
    pub dirty_bytes: u64,
    epochs: EpochCache,
    segment_bytes_max: u64,
    /// The log's truncation count when planned: a truncation since (which may have put other
    /// data at the same offsets) makes the cleaning stale.
    generation: u64,
}

impl CleanPlan {
    /// The dirty share of the planned bytes (Kafka's `cleanableRatio`).
    pub fn dirty_ratio(&self) -> f64 {
        let total = self.clean_bytes + self.dirty_bytes;
        if total == 0 {
            0.0
        } else {
            self.dirty_bytes as f64 / total as f64
        }
    }
}

/// What the caller knows that the log does not.
#[derive(Clone, Debug, Default)]
pub struct CleanInputs {
    /// The caller's clock.
    pub now_ms: i64,
    /// For each producer the partition still tracks, the last offset of its last data batch:
    /// that batch is kept (empty if need be) so the producer's sequence survives.
    pub producers_last: BTreeMap<ProducerId, Offset>,
    /// Tombstones at or above this offset are kept whatever their delete horizon: the offset
    /// below which every replica of the partition holds the log durably (`None`: no other
    /// replica to wait for). A replica that has not yet got a tombstone would otherwise fetch
    /// the cleaned log without it and keep the key's older value for good: its copy would read
    /// a deleted key as alive (the simulator's compacted workload found it).
    pub tombstones_below: Option<Offset>,
}

/// Counters of one cleaning.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CleanStats {
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub batches_read: u64,
    pub records_read: u64,
    pub records_removed: u64,
    pub tombstones_removed: u64,
    /// Batches left without a record: dropped (an empty batch covers their offsets) or kept
    /// empty for their producer's sequence.
    pub batches_emptied: u64,
    /// Old segments replaced, and cleaned segments written in their place.
    pub segments_cleaned: u64,
    pub segments_written: u64,
}

/// One group of consecutive segments cleaned into one file.
#[derive(Clone, Debug)]
struct CleanedGroup {
    base: Offset,
    end: Offset,
    /// Indexes into the plan's segments.
    first: usize,
    last: usize,
}

/// The cleaned files [`build`] wrote, ready for [`Log::install_cleaned`].
#[derive(Clone, Debug)]
pub struct Cleaned {
    plan: CleanPlan,
    groups: Vec<CleanedGroup>,
    /// Where this cleaning stopped (the offset map's bound may stop it before the plan's end).
    clean_end: Offset,
    /// The earliest delete horizon of a tombstone kept, if any.
    horizon_ms: Option<i64>,
    pub stats: CleanStats,
}

fn cleaned_name(base: Offset, end: Offset) -> String {
    format!("{:020}.{:020}{CLEANED_SUFFIX}", base.0, end.0)
}

fn swap_name(base: Offset, end: Offset) -> String {
    format!("{:020}.{:020}{SWAP_SUFFIX}", base.0, end.0)
}

/// `(base, end)` from a `.cleaned` or `.swap` name.
fn parse_range(name: &str, suffix: &str) -> Option<(Offset, Offset)> {
    let body = name.strip_suffix(suffix)?;
    let (base, end) = body.split_once('.')?;
    let digits = |s: &str| s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(base) || !digits(end) {
        return None;
    }
    Some((Offset(base.parse().ok()?), Offset(end.parse().ok()?)))
}

/// Finishes or undoes a cleaning a crash interrupted: `.cleaned` files (not committed) are
/// removed; a `.swap` file (committed) replaces the segments in its range. Run by
/// [`Log::open`] before it lists the segments. Returns the number of swaps finished.
pub fn recover<S: Storage + ?Sized>(storage: &mut S) -> Result<usize, StorageError> {
    let names = storage.list()?;
    let mut finished = 0;
    for name in &names {
        if parse_range(name, CLEANED_SUFFIX).is_some() {
            storage.remove(name)?;
        }
    }
    for name in &names {
        let Some((base, end)) = parse_range(name, SWAP_SUFFIX) else {
            continue;
        };
        for old in &names {
            if Segment::parse_name(old).is_some_and(|b| b > base && b < end) {
                match storage.remove(old) {
                    Ok(()) | Err(StorageError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        storage.rename(name, &Segment::file_name(base))?;
        finished += 1;
    }
    Ok(finished)
}

/// The cleaner's checkpoint: the first dirty offset and the earliest pending delete horizon.
fn read_checkpoint<S: Storage + ?Sized>(storage: &S) -> Option<(Offset, Option<i64>)> {
    let bytes = storage::read_all(storage, CLEANER_CHECKPOINT).ok()?;
    let text = std::str::from_utf8(&bytes).ok()?.strip_suffix('\n')?;
    let (body, crc) = text.rsplit_once(' ')?;
    if crc.parse::<u32>().ok()? != crc32c::crc32c(body.as_bytes()) {
        return None;
    }
    let mut parts = body.split(' ');
    if parts.next()? != "keel-cleaner" || parts.next()? != "1" {
        return None;
    }
    let first_dirty = Offset(parts.next()?.parse().ok()?);
    let horizon: i64 = parts.next()?.parse().ok()?;
    parts
        .next()
        .is_none()
        .then_some((first_dirty, (horizon >= 0).then_some(horizon)))
}

fn write_checkpoint<S: Storage + ?Sized>(
    storage: &mut S,
    first_dirty: Offset,
    horizon_ms: Option<i64>,
) -> Result<(), StorageError> {
    let body = format!(
        "keel-cleaner 1 {} {}",
        first_dirty.0,
        horizon_ms.unwrap_or(-1).max(-1)
    );
    let crc = crc32c::crc32c(body.as_bytes());
    storage::write_atomic(
        storage,
        CLEANER_CHECKPOINT,
        format!("{body} {crc}\n").as_bytes(),
    )
}

/// The first dirty offset `cleaner.checkpoint` holds (zero without one).
pub(super) fn first_dirty<S: Storage + ?Sized>(storage: &S) -> Offset {
    read_checkpoint(storage).map_or(Offset::ZERO, |(first_dirty, _)| first_dirty)
}

/// Lowers the first dirty offset in the cleaner's checkpoint to `end` if it is above: called
/// before a truncation cuts the log at `end` (and by open, after recovery cut it there). The
/// offsets from `end` on will hold other data (fetched again, or appended anew), which no
/// cleaning has seen: taken for clean, its tombstones would never remove the older values of
/// their keys below, and an older value would outlive the tombstone that deleted it.
pub(super) fn lower_first_dirty<S: Storage + ?Sized>(
    storage: &mut S,
    end: Offset,
) -> Result<(), StorageError> {
    match read_checkpoint(storage) {
        Some((first_dirty, horizon)) if first_dirty > end => {
            write_checkpoint(storage, end, horizon)
        }
        _ => Ok(()),
    }
}

impl<S: Storage> Log<S> {
    /// Kafka's `LogCleanerManager.grabFilthiestCompactedLog` for one log: the segments a
    /// cleaning would rewrite, if the log is due. `upper` is the bound no cleaned data may
    /// reach (the high watermark, and the last stable offset if lower). Due when the dirty
    /// share of the cleanable bytes exceeds `min.cleanable.dirty.ratio`, when the first dirty
    /// batch is older than `max.compaction.lag.ms`, or when a kept tombstone's delete horizon
    /// has passed.
    pub fn plan_clean(
        &self,
        config: &CleanerConfig,
        upper: Offset,
        now_ms: i64,
    ) -> Option<CleanPlan> {
        self.plan_clean_bounded(config, upper, now_ms, None)
    }

    /// [`Log::plan_clean`] with the cleaning's tombstone bound ([`CleanInputs::tombstones_below`]):
    /// a passed delete horizon makes the log due only if the bound lets a tombstone of the
    /// cleanable segments go (it is above their first offset). A follower's bound is zero: it
    /// removes no tombstone, and re-cleaning it for a kept tombstone's horizon would rewrite
    /// nothing at every pass.
    pub fn plan_clean_bounded(
        &self,
        config: &CleanerConfig,
        upper: Offset,
        now_ms: i64,
        tombstones_below: Option<Offset>,
    ) -> Option<CleanPlan> {
        let upper = upper.min(self.durable_end);
        let young_after = now_ms.saturating_sub(config.compaction_lag_ms_min.max(0));
        let active = *self
            .segments
            .keys()
            .next_back()
            .expect("a log has a segment");
        let mut cleanable: Vec<&Segment> = Vec::new();
        for segment in self.segments.values() {
            let young = config.compaction_lag_ms_min > 0
                && segment
                    .max_timestamp
                    .is_some_and(|(ts, _)| ts > young_after);
            if segment.base == active
                || segment.next_offset > upper
                || segment.synced_size != segment.size
                || young
            {
                break;
            }
            cleanable.push(segment);
        }
        let (checkpoint, horizon) = read_checkpoint(&self.storage).unwrap_or((Offset::ZERO, None));
        let first = cleanable.first()?.base;
        let first_dirty = if checkpoint < first || checkpoint > self.end {
            first
        } else {
            checkpoint
        };
        let (mut clean_bytes, mut dirty_bytes) = (0, 0);
        let mut first_dirty_ts = None;
        for segment in &cleanable {
            if segment.next_offset <= first_dirty {
                clean_bytes += segment.size;
            } else {
                dirty_bytes += segment.size;
                if first_dirty_ts.is_none() {
                    first_dirty_ts = segment.time_index.first().map(|&(ts, _)| ts);
                }
            }
        }
        let plan = CleanPlan {
            segments: cleanable
                .iter()
                .map(|s| PlannedSegment {
                    base: s.base,
                    file: s.file.clone(),
                    size: s.size,
                    next_offset: s.next_offset,
                    created_ms: s.created_ms,
                })
                .collect(),
            first_dirty,
            clean_end: cleanable.last().expect("nonempty").next_offset,
            clean_bytes,
            dirty_bytes,
            epochs: self.epochs.clone(),
            segment_bytes_max: self.config.segment_bytes_max,
            generation: self.generation,
        };
        let ratio_due = dirty_bytes > 0 && plan.dirty_ratio() > config.dirty_ratio_min;
        let lag_due = first_dirty_ts
            .is_some_and(|ts| now_ms.saturating_sub(ts) > config.compaction_lag_ms_max);
        let horizon_due =
            horizon.is_some_and(|h| now_ms >= h) && tombstones_below.is_none_or(|b| b > first);
        (ratio_due || lag_due || horizon_due).then_some(plan)
    }

    /// Plans, builds on the log's own storage and installs one cleaning: what a caller without
    /// a lock to release (tests, the simulator's model) does. `None` if the log was not due.
    pub fn clean(
        &mut self,
        config: &CleanerConfig,
        upper: Offset,
        inputs: &CleanInputs,
    ) -> Result<Option<CleanStats>, LogError> {
        let Some(plan) =
            self.plan_clean_bounded(config, upper, inputs.now_ms, inputs.tombstones_below)
        else {
            return Ok(None);
        };
        let cleaned = build(&mut self.storage, plan, config, inputs, &mut |_| {})?;
        self.install_cleaned(cleaned)
    }

    /// Swaps the cleaned groups in (see the module docs for the protocol), then records how
    /// far the log is clean. Returns `None`, having removed the cleaned files, if a planned
    /// segment is gone or changed, or the log was truncated, since the plan (the cleaning is
    /// stale).
    pub fn install_cleaned(&mut self, cleaned: Cleaned) -> Result<Option<CleanStats>, LogError> {
        let active = *self
            .segments
            .keys()
            .next_back()
            .expect("a log has a segment");
        let unchanged = cleaned.plan.generation == self.generation
            && cleaned.plan.segments.iter().all(|p| {
                self.segments.get(&p.base).is_some_and(|s| {
                    s.base != active
                        && s.file == p.file
                        && s.size == p.size
                        && s.synced_size == s.size
                        && s.next_offset == p.next_offset
                })
            });
        if !unchanged {
            for group in &cleaned.groups {
                match self.storage.remove(&cleaned_name(group.base, group.end)) {
                    Ok(()) | Err(StorageError::NotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            return Ok(None);
        }
        let mut stats = cleaned.stats.clone();
        for group in &cleaned.groups {
            let planned = &cleaned.plan.segments[group.first..=group.last];
            let cleaned_file = cleaned_name(group.base, group.end);
            // Index the new file before it replaces anything: the same checks recovery makes.
            let mut segment = Segment::new(group.base, planned[0].created_ms);
            segment.file = cleaned_file.clone();
            let saved_report = self.recovery.clone();
            let mut epoch = LeaderEpoch::NONE;
            let reference = cleaned.plan.epochs.clone();
            let cut =
                self.scan_segment(&mut segment, Some(&reference), &mut epoch, false, u64::MAX)?;
            let problem = self.recovery.corruption.take();
            self.recovery = saved_report;
            if cut.is_some() || segment.next_offset != group.end {
                let (_, position, why) =
                    problem.unwrap_or((cleaned_file.clone(), segment.size, "short".into()));
                let _ = self.storage.remove(&cleaned_file);
                return Err(LogError::Corrupt {
                    file: cleaned_file,
                    position,
                    error: BatchError::CorruptRecords(format!(
                        "the cleaner's own output does not read back: {why}"
                    )),
                });
            }
            // The commit point: from here a crash finishes the swap (see `recover`).
            let swap = swap_name(group.base, group.end);
            self.storage.rename(&cleaned_file, &swap)?;
            for old in &planned[1..] {
                self.storage.remove(&old.file)?;
            }
            self.storage
                .rename(&swap, &Segment::file_name(group.base))?;
            for old in planned {
                self.segments.remove(&old.base);
            }
            segment.file = Segment::file_name(group.base);
            segment.synced_size = segment.size;
            self.segments.insert(group.base, segment);
            stats.segments_written += 1;
            stats.segments_cleaned += planned.len() as u64;
        }
        write_checkpoint(&mut self.storage, cleaned.clean_end, cleaned.horizon_ms)?;
        self.cleaned_end = cleaned.clean_end;
        self.check_invariants();
        Ok(Some(stats))
    }
}

/// Reads every batch of a planned segment in order, checking what recovery checks (CRC,
/// dense offsets from the segment's base, epochs as the cache records them) and that the file
/// holds exactly the planned bytes, and hands each batch to `each`.
fn read_segment<S: Storage + ?Sized>(
    storage: &S,
    planned: &PlannedSegment,
    epochs: &EpochCache,
    stats: &mut CleanStats,
    throttle: &mut dyn FnMut(u64),
    mut each: impl FnMut(Batch) -> Result<(), LogError>,
) -> Result<(), LogError> {
    let corrupt = |position: u64, error: BatchError| LogError::Corrupt {
        file: planned.file.clone(),
        position,
        error,
    };
    let mut position = 0u64;
    let mut expected = planned.base;
    let mut chunk = Bytes::new();
    let mut chunk_start = 0u64;
    while position < planned.size {
        let chunk_end = chunk_start + chunk.len() as u64;
        if position < chunk_start || position + HEADER_BYTES as u64 > chunk_end {
            let want = SCAN_CHUNK_BYTES.min((planned.size - position) as usize);
            chunk = storage.read_at(&planned.file, position, want)?;
            chunk_start = position;
            throttle(chunk.len() as u64);
            stats.bytes_read += chunk.len() as u64;
        }
        let here = chunk.slice((position - chunk_start) as usize..);
        let header = BatchHeader::read(&here).map_err(|e| corrupt(position, e))?;
        let size = header.size;
        if position + size as u64 > planned.size {
            return Err(corrupt(
                position,
                BatchError::Truncated {
                    need: size,
                    have: (planned.size - position) as usize,
                },
            ));
        }
        let bytes = if size <= here.len() {
            here.slice(..size)
        } else {
            let bytes = storage.read_at(&planned.file, position, size)?;
            throttle(bytes.len() as u64);
            stats.bytes_read += bytes.len() as u64;
            bytes
        };
        let batch = Batch::parse(bytes).map_err(|e| corrupt(position, e))?;
        if batch.base_offset() != expected {
            let why = format!(
                "baseOffset {} where {expected} follows",
                batch.base_offset()
            );
            return Err(corrupt(position, BatchError::OutsideCrc(why)));
        }
        if epochs
            .epoch_for(batch.last_offset())
            .is_some_and(|e| e != batch.partition_leader_epoch())
        {
            let why = format!(
                "partitionLeaderEpoch {} where the epoch cache has another",
                batch.partition_leader_epoch()
            );
            return Err(corrupt(position, BatchError::OutsideCrc(why)));
        }
        position += size as u64;
        expected = batch.next_offset();
        stats.batches_read += 1;
        each(batch)?;
    }
    if expected != planned.next_offset {
        return Err(corrupt(
            position,
            BatchError::OutsideCrc(format!(
                "segment ends at offset {expected}, the log has {}",
                planned.next_offset
            )),
        ));
    }
    Ok(())
}

/// Records `offset` as `key`'s latest in the offset map (pass 1 reads offsets in order).
fn remember(map: &mut BTreeMap<Vec<u8>, Offset>, key: Vec<u8>, offset: Offset) {
    if crate::planted::active(crate::planted::Bug::CleanerKeepsFirst) {
        map.entry(key).or_insert(offset);
    } else {
        map.insert(key, offset);
    }
}

/// Transaction markers seen in the cleaned range, per producer: marker offset → committed.
type Markers = BTreeMap<ProducerId, BTreeMap<Offset, bool>>;

/// Whether the transactional batch of `producer` at `offset` is known to be committed: the
/// producer's first marker after it is a COMMIT.
fn committed(markers: &Markers, producer: ProducerId, offset: Offset) -> Option<bool> {
    markers
        .get(&producer)?
        .range(offset..)
        .next()
        .map(|(_, &commit)| commit)
}

/// Phase 2: reads the planned segments and writes the cleaned groups, synced, to `.cleaned`
/// files in `storage` (the log's directory; node passes a handle of its own so that this runs
/// without the partition's lock). `throttle` is told every byte read and written, so the caller
/// can bound the cleaner's I/O. On error, the files written so far are removed.
pub fn build<S: Storage + ?Sized>(
    storage: &mut S,
    plan: CleanPlan,
    config: &CleanerConfig,
    inputs: &CleanInputs,
    throttle: &mut dyn FnMut(u64),
) -> Result<Cleaned, LogError> {
    let mut stats = CleanStats::default();
    // Pass 1: the key → latest offset map over the dirty part, and the markers everywhere.
    let mut map: BTreeMap<Vec<u8>, Offset> = BTreeMap::new();
    let mut map_bytes = 0u64;
    let mut markers: Markers = BTreeMap::new();
    // Each producer's last data batch in the cleaned range (its last offset).
    let mut last_in_range: BTreeMap<ProducerId, Offset> = BTreeMap::new();
    let mut pending: BTreeMap<ProducerId, Vec<(Vec<u8>, Offset)>> = BTreeMap::new();
    let mut clean_end = plan.clean_end;
    let mut dirty_segments = 0;
    for planned in &plan.segments {
        let dirty = planned.next_offset > plan.first_dirty;
        if dirty && dirty_segments > 0 && map_bytes > config.map_bytes_max {
            clean_end = planned.base;
            break;
        }
        dirty_segments += dirty as usize;
        read_segment(
            storage,
            planned,
            &plan.epochs,
            &mut stats,
            throttle,
            |batch| {
                let to_corrupt = |e: BatchError| LogError::Corrupt {
                    file: planned.file.clone(),
                    position: 0,
                    error: e,
                };
                if !batch.is_control() && batch.producer_id().0 >= 0 {
                    last_in_range.insert(batch.producer_id(), batch.last_offset());
                }
                if let Some(marker) = batch.end_txn_marker().map_err(to_corrupt)? {
                    let producer = batch.producer_id();
                    markers
                        .entry(producer)
                        .or_default()
                        .insert(batch.base_offset(), marker.commit);
                    for (key, offset) in pending.remove(&producer).unwrap_or_default() {
                        if marker.commit {
                            map_bytes += key.len() as u64 + MAP_ENTRY_OVERHEAD_BYTES;
                            remember(&mut map, key, offset);
                        }
                    }
                    return Ok(());
                }
                if !dirty || batch.is_control() || batch.last_offset() < plan.first_dirty {
                    return Ok(());
                }
                for record in batch.records().map_err(to_corrupt)? {
                    let Some(key) = record.key else { continue };
                    if batch.is_transactional() {
                        pending
                            .entry(batch.producer_id())
                            .or_default()
                            .push((key.to_vec(), record.offset));
                    } else {
                        map_bytes += key.len() as u64 + MAP_ENTRY_OVERHEAD_BYTES;
                        remember(&mut map, key.to_vec(), record.offset);
                    }
                }
                Ok(())
            },
        )?;
    }
    // Pass 2: the groups, each at most `segment.bytes` of input, rewritten.
    let segments: Vec<&PlannedSegment> = plan
        .segments
        .iter()
        .filter(|s| s.next_offset <= clean_end)
        .collect();
    let mut groups = Vec::new();
    let mut i = 0;
    while i < segments.len() {
        let mut j = i;
        let mut bytes = segments[i].size;
        while j + 1 < segments.len() && bytes + segments[j + 1].size <= plan.segment_bytes_max {
            j += 1;
            bytes += segments[j].size;
        }
        groups.push(CleanedGroup {
            base: segments[i].base,
            end: segments[j].next_offset,
            first: i,
            last: j,
        });
        i = j + 1;
    }
    let mut horizon_ms: Option<i64> = None;
    let mut written: Vec<String> = Vec::new();
    let rules = Rules {
        map: &map,
        markers: &markers,
        last_in_range: &last_in_range,
        inputs,
        config,
    };
    let result = (|| {
        for group in &groups {
            let name = cleaned_name(group.base, group.end);
            match storage.remove(&name) {
                Ok(()) | Err(StorageError::NotFound(_)) => {}
                Err(e) => return Err(LogError::from(e)),
            }
            storage.create(&name)?;
            written.push(name.clone());
            let mut out = Writer {
                name: &name,
                buf: Vec::with_capacity(WRITE_BUFFER_BYTES),
                filler: None,
            };
            for planned in &segments[group.first..=group.last] {
                let mut batches = Vec::new();
                read_segment(
                    &*storage,
                    planned,
                    &plan.epochs,
                    &mut stats,
                    throttle,
                    |batch| {
                        batches.push(batch);
                        Ok(())
                    },
                )?;
                for batch in batches {
                    let kept =
                        rules
                            .clean_batch(&batch, &mut stats)
                            .map_err(|e| LogError::Corrupt {
                                file: planned.file.clone(),
                                position: 0,
                                error: e,
                            })?;
                    match kept {
                        Some(kept) => {
                            if kept.attributes() & ATTR_DELETE_HORIZON != 0
                                && kept.records_count() > 0
                            {
                                let h = kept.base_timestamp();
                                horizon_ms = Some(horizon_ms.map_or(h, |m: i64| m.min(h)));
                            }
                            out.flush_filler()?;
                            out.put(storage, kept.bytes(), &mut stats, throttle)?;
                        }
                        None => out.fill(storage, &batch, &mut stats, throttle)?,
                    }
                }
            }
            out.flush_filler()?;
            let rest = std::mem::take(&mut out.buf);
            out.write(storage, &rest, &mut stats, throttle)?;
            storage.sync(&name)?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        for name in &written {
            let _ = storage.remove(name);
        }
        return Err(e);
    }
    Ok(Cleaned {
        plan,
        groups,
        clean_end,
        horizon_ms,
        stats,
    })
}

/// The rules of pass 2, over what pass 1 found.
struct Rules<'a> {
    map: &'a BTreeMap<Vec<u8>, Offset>,
    markers: &'a Markers,
    last_in_range: &'a BTreeMap<ProducerId, Offset>,
    inputs: &'a CleanInputs,
    config: &'a CleanerConfig,
}

impl Rules<'_> {
    /// The batch to write in place of `batch`: itself, a rebuilt batch with fewer records (or
    /// none, to keep a producer's last sequence), or `None` to drop it.
    fn clean_batch(
        &self,
        batch: &Batch,
        stats: &mut CleanStats,
    ) -> Result<Option<Batch>, BatchError> {
        if batch.is_control() {
            return Ok(Some(batch.clone()));
        }
        if batch.is_transactional()
            && committed(self.markers, batch.producer_id(), batch.base_offset()) != Some(true)
        {
            return Ok(Some(batch.clone()));
        }
        let now_ms = self.inputs.now_ms;
        let horizon =
            (batch.attributes() & ATTR_DELETE_HORIZON != 0).then(|| batch.base_timestamp());
        let records = batch.records()?;
        stats.records_read += records.len() as u64;
        let total = records.len();
        let mut kept = Vec::with_capacity(total);
        for record in records {
            let Some(key) = &record.key else {
                stats.records_removed += 1;
                continue;
            };
            let keeps_first = crate::planted::active(crate::planted::Bug::CleanerKeepsFirst);
            if self.map.get(key.as_ref()).is_some_and(|&latest| {
                latest > record.offset || (keeps_first && latest != record.offset)
            }) {
                stats.records_removed += 1;
                continue;
            }
            if record.value.is_none()
                && horizon.is_some_and(|h| now_ms >= h)
                && self
                    .inputs
                    .tombstones_below
                    .is_none_or(|below| record.offset < below)
            {
                stats.records_removed += 1;
                stats.tombstones_removed += 1;
                continue;
            }
            kept.push(record);
        }
        let tombstones = kept.iter().any(|r| r.value.is_none());
        let new_horizon = if tombstones && horizon.is_none() {
            Some(now_ms.saturating_add(self.config.delete_retention_ms.max(0)))
        } else {
            horizon
        };
        if kept.len() == total && new_horizon == horizon {
            return Ok(Some(batch.clone()));
        }
        if kept.is_empty() {
            stats.batches_emptied += 1;
            let producer = batch.producer_id();
            // The last batch of a tracked producer in the cleaned range, not only its last
            // batch in the log: a later one above the bound (not yet committed) may be
            // truncated away, and the producer's sequence must then still be in the log for a
            // replica that rebuilds its producer state from it (one dropped here left the
            // rebuilt state at an older sequence than its other replicas': the simulator found
            // it).
            let last_of_producer = producer.0 >= 0
                && self
                    .inputs
                    .producers_last
                    .get(&producer)
                    .is_some_and(|&last| last >= batch.last_offset())
                && self.last_in_range.get(&producer) == Some(&batch.last_offset());
            return if last_of_producer {
                rebuild(batch, &[], None).map(Some)
            } else {
                Ok(None)
            };
        }
        rebuild(batch, &kept, new_horizon.filter(|_| tombstones)).map(Some)
    }
}

/// Kafka's `MemoryRecords.buildRetainedRecordsInto`: `batch` with only `kept` (records of it,
/// in order), keeping its base offset, last offset delta, leader epoch, producer fields and
/// flags; a fresh CRC. With `horizon_ms`, attributes bit 6 is set and `baseTimestamp` holds the
/// horizon. With no records, the batch is written uncompressed and empty (Kafka's empty
/// header).
fn rebuild(
    batch: &Batch,
    kept: &[batch::Record],
    horizon_ms: Option<i64>,
) -> Result<Batch, BatchError> {
    let base = batch.base_offset();
    let log_append_time = batch.timestamp_type() == batch::TimestampType::LogAppendTime;
    let base_timestamp = horizon_ms.unwrap_or_else(|| batch.base_timestamp());
    let max_timestamp = if log_append_time || kept.is_empty() {
        batch.max_timestamp()
    } else {
        kept.iter().map(|r| r.timestamp).max().expect("nonempty")
    };
    let mut attributes = batch.attributes() & !ATTR_DELETE_HORIZON;
    if horizon_ms.is_some() {
        attributes |= ATTR_DELETE_HORIZON;
    }
    let mut section = Vec::new();
    let mut record = Vec::new();
    for r in kept {
        record.clear();
        record.push(0); // attributes
        batch::put_varlong(&mut record, r.timestamp.wrapping_sub(base_timestamp));
        batch::put_varlong(&mut record, r.offset.0 - base.0);
        batch::put_nullable(&mut record, r.key.as_deref());
        batch::put_nullable(&mut record, r.value.as_deref());
        batch::put_varlong(&mut record, r.headers.len() as i64);
        for h in &r.headers {
            batch::put_nullable(&mut record, Some(&h.key));
            batch::put_nullable(&mut record, h.value.as_deref());
        }
        batch::put_varlong(&mut section, record.len() as i64);
        section.extend_from_slice(&record);
    }
    let section = if kept.is_empty() {
        attributes &= !0x07; // an empty batch is uncompressed
        section
    } else {
        batch::compress(batch.compression()?, &section)?
    };
    encode(
        Header {
            base,
            last_offset_delta: batch.last_offset_delta(),
            epoch: batch.partition_leader_epoch(),
            attributes,
            base_timestamp,
            max_timestamp,
            producer_id: batch.producer_id(),
            producer_epoch: batch.producer_epoch(),
            base_sequence: batch.base_sequence(),
            count: kept.len() as i32,
        },
        &section,
    )
}

struct Header {
    base: Offset,
    last_offset_delta: i32,
    epoch: LeaderEpoch,
    attributes: i16,
    base_timestamp: i64,
    max_timestamp: i64,
    producer_id: ProducerId,
    producer_epoch: i16,
    base_sequence: i32,
    count: i32,
}

fn encode(h: Header, section: &[u8]) -> Result<Batch, BatchError> {
    let total = HEADER_BYTES + section.len();
    let mut buf = BytesMut::with_capacity(total);
    buf.put_i64(h.base.0);
    buf.put_i32((total - LOG_OVERHEAD_BYTES) as i32);
    buf.put_i32(h.epoch.0);
    buf.put_i8(MAGIC_V2);
    buf.put_u32(0); // the CRC, below
    buf.put_i16(h.attributes);
    buf.put_i32(h.last_offset_delta);
    buf.put_i64(h.base_timestamp);
    buf.put_i64(h.max_timestamp);
    buf.put_i64(h.producer_id.0);
    buf.put_i16(h.producer_epoch);
    buf.put_i32(h.base_sequence);
    buf.put_i32(h.count);
    buf.put_slice(section);
    let crc = batch::compute_crc(&buf);
    buf[batch::field::CRC..batch::field::CRC + 4].copy_from_slice(&crc.to_be_bytes());
    Batch::parse(buf.freeze())
}

/// A run of dropped batches of one leader epoch, to be covered by one empty batch.
struct Filler {
    base: Offset,
    next: Offset,
    epoch: LeaderEpoch,
    max_timestamp: i64,
}

/// The output of one group: buffered appends, and the filler run under way.
struct Writer<'a> {
    name: &'a str,
    buf: Vec<u8>,
    filler: Option<Filler>,
}

impl Writer<'_> {
    fn write<S: Storage + ?Sized>(
        &mut self,
        storage: &mut S,
        bytes: &[u8],
        stats: &mut CleanStats,
        throttle: &mut dyn FnMut(u64),
    ) -> Result<(), LogError> {
        if bytes.is_empty() {
            return Ok(());
        }
        throttle(bytes.len() as u64);
        stats.bytes_written += bytes.len() as u64;
        storage.append(self.name, bytes)?;
        Ok(())
    }

    fn put<S: Storage + ?Sized>(
        &mut self,
        storage: &mut S,
        bytes: &[u8],
        stats: &mut CleanStats,
        throttle: &mut dyn FnMut(u64),
    ) -> Result<(), LogError> {
        self.buf.extend_from_slice(bytes);
        if self.buf.len() >= WRITE_BUFFER_BYTES {
            let full = std::mem::take(&mut self.buf);
            self.write(storage, &full, stats, throttle)?;
            self.buf = full;
            self.buf.clear();
        }
        Ok(())
    }

    /// Replaces a dropped batch with an empty batch over the same offsets. Each dropped batch
    /// gets its own: a follower's log end, where its next fetch starts, is the end of some batch
    /// of the leader's log as it was written, so cleaned batches must start where written ones
    /// did (one empty batch over a run of them made a follower at a boundary inside the run
    /// fetch a batch starting below its log end, and refuse it as a divergence below its high
    /// watermark: the simulator's compacted workload found it).
    fn fill<S: Storage + ?Sized>(
        &mut self,
        storage: &mut S,
        batch: &Batch,
        stats: &mut CleanStats,
        throttle: &mut dyn FnMut(u64),
    ) -> Result<(), LogError> {
        let epoch = batch.partition_leader_epoch();
        if self.filler.is_some() {
            let filler = self.take_filler()?;
            self.put(storage, filler.bytes(), stats, throttle)?;
        }
        let filler = self.filler.get_or_insert(Filler {
            base: batch.base_offset(),
            next: batch.base_offset(),
            epoch,
            max_timestamp: batch.max_timestamp(),
        });
        debug_assert_eq!(filler.next, batch.base_offset(), "fillers cover dense runs");
        filler.next = batch.next_offset();
        filler.max_timestamp = filler.max_timestamp.max(batch.max_timestamp());
        Ok(())
    }

    fn take_filler(&mut self) -> Result<Batch, LogError> {
        let f = self.filler.take().expect("a filler run is under way");
        encode(
            Header {
                base: f.base,
                last_offset_delta: (f.next.0 - f.base.0 - 1) as i32,
                epoch: f.epoch,
                attributes: 0,
                base_timestamp: f.max_timestamp,
                max_timestamp: f.max_timestamp,
                producer_id: ProducerId::NONE,
                producer_epoch: -1,
                base_sequence: -1,
                count: 0,
            },
            &[],
        )
        .map_err(|e| LogError::Corrupt {
            file: self.name.to_string(),
            position: 0,
            error: e,
        })
    }

    /// Appends the filler run under way, if any, to the buffer.
    fn flush_filler(&mut self) -> Result<(), LogError> {
        if self.filler.is_some() {
            let filler = self.take_filler()?;
            self.buf.extend_from_slice(filler.bytes());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
