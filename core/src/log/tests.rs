use proptest::prelude::*;
use rand::{rngs::StdRng, SeedableRng};

use super::testing::{self, small_batch, LogOp};
use super::*;
use crate::batch::BatchBuilder;
use crate::batch::{BatchError, Compression};
use crate::storage::MemStorage;

const NOW: i64 = 1_700_000_000_000;

fn open(storage: MemStorage, config: LogConfig) -> Log<MemStorage> {
    Log::open(storage, config, NOW).expect("open")
}

fn small_segments() -> LogConfig {
    LogConfig {
        segment_bytes_max: 1024,
        index_interval_bytes: 128,
        ..LogConfig::default()
    }
}

/// Appends `n` batches of `records` records each at epoch 0.
fn fill(log: &mut Log<MemStorage>, n: usize, records: usize) {
    for _ in 0..n {
        log.append(NOW, small_batch(records, NOW), LeaderEpoch(0))
            .unwrap();
    }
}

#[test]
fn append_assigns_dense_offsets_and_stamps_the_epoch() {
    let mut log = open(MemStorage::new(), LogConfig::default());
    let a = log
        .append(NOW, small_batch(3, NOW), LeaderEpoch(5))
        .unwrap();
    let b = log
        .append(NOW, small_batch(2, NOW), LeaderEpoch(5))
        .unwrap();
    assert_eq!((a.base_offset, a.last_offset), (Offset(0), Offset(2)));
    assert_eq!((b.base_offset, b.last_offset), (Offset(3), Offset(4)));
    assert_eq!(log.end(), Offset(5));
    let read = log.read(Offset(0), usize::MAX, log.end()).unwrap();
    assert_eq!(read.len(), 2);
    assert_eq!(read[1].partition_leader_epoch(), LeaderEpoch(5));
    assert_eq!(
        log.epochs().entries(),
        &[EpochEntry {
            epoch: LeaderEpoch(5),
            start_offset: Offset(0)
        }]
    );
}

/// Fetch returns whole batches starting with the one that contains the fetch offset (a
/// consumer positioned mid-batch must get that batch, or it hangs), at least one batch even
/// if larger than max_bytes (KIP-74), and nothing past the upper bound (high watermark).
#[test]
fn read_returns_whole_batches_from_the_one_containing_the_offset() {
    let mut log = open(MemStorage::new(), small_segments());
    fill(&mut log, 20, 4);
    let read = log.read(Offset(9), 1, log.end()).unwrap();
    assert_eq!(read.len(), 1, "at least one batch even over max_bytes");
    assert_eq!(read[0].base_offset(), Offset(8));
    let size = read[0].size();
    let read = log.read(Offset(9), size * 2, log.end()).unwrap();
    assert!(!read.is_empty() && read.len() <= 2);
    let read = log.read(Offset(0), usize::MAX, Offset(8)).unwrap();
    assert_eq!(
        read.iter().map(|b| b.base_offset()).collect::<Vec<_>>(),
        vec![Offset(0), Offset(4)]
    );
    assert!(
        log.read(Offset(8), usize::MAX, Offset(8))
            .unwrap()
            .is_empty(),
        "nothing at the high watermark"
    );
    assert!(log
        .read(log.end(), usize::MAX, log.end())
        .unwrap()
        .is_empty());
    assert!(matches!(
        log.read(log.end().plus(1), 10, log.end()),
        Err(LogError::OffsetOutOfRange { .. })
    ));
}

/// A read takes the batches it returns out of few reads of the file (one, when it goes to the
/// log end, as a follower's does), not two reads for each batch, and returns them as slices of
/// what it read: `read_records` hands back one buffer without copying. A read that stops below
/// the log end (a consumer's, at the high watermark) reads little past where it stops.
#[test]
fn reads_take_many_batches_out_of_one_read_of_the_file() {
    let storage = FailingOps::new(MemStorage::new());
    let mut log = Log::open(storage, LogConfig::default(), NOW).expect("open");
    for _ in 0..50 {
        log.append(NOW, small_batch(4, NOW), LeaderEpoch(0))
            .unwrap();
    }
    let batch_bytes = small_batch(4, NOW).size();

    log.storage().reads.set((0, 0));
    let all = log.read(Offset(0), usize::MAX, log.end()).unwrap();
    assert_eq!(all.len(), 50);
    assert_eq!(
        log.storage().reads.get(),
        (1, 50 * batch_bytes),
        "one read of the file"
    );

    log.storage().reads.set((0, 0));
    let (records, n) = log
        .read_records(Offset(0), 10 * batch_bytes, log.end())
        .unwrap();
    assert_eq!((n, records.len()), (10, 10 * batch_bytes));
    assert_eq!(
        log.storage().reads.get(),
        (1, 10 * batch_bytes),
        "only what fits max_bytes"
    );

    // Below the log end: windows of READ_WINDOW_BYTES_MIN, doubling.
    log.storage().reads.set((0, 0));
    let upper = Offset(4 * 20);
    let some = log.read(Offset(0), usize::MAX, upper).unwrap();
    assert_eq!(some.len(), 20);
    let (calls, read) = log.storage().reads.get();
    let returned = 20 * batch_bytes;
    assert!(
        read <= 2 * returned + READ_WINDOW_BYTES_MIN,
        "read {read} bytes in {calls} reads to return {returned}"
    );
    assert!(calls < 20, "{calls} reads for 20 batches");
}

#[test]
fn segments_roll_by_size_and_by_time() {
    let mut log = open(MemStorage::new(), small_segments());
    fill(&mut log, 30, 4);
    assert!(log.segment_count() > 3, "1 KiB segments roll");
    for s in log.segments.values() {
        assert!(s.size <= 1024, "no segment exceeds segment.bytes");
    }
    let config = LogConfig {
        segment_ms_max: 1000,
        ..LogConfig::default()
    };
    let mut log = open(MemStorage::new(), config);
    log.append(NOW, small_batch(1, NOW), LeaderEpoch(0))
        .unwrap();
    log.append(NOW + 999, small_batch(1, NOW), LeaderEpoch(0))
        .unwrap();
    assert_eq!(log.segment_count(), 1);
    log.append(NOW + 1000, small_batch(1, NOW), LeaderEpoch(0))
        .unwrap();
    assert_eq!(log.segment_count(), 2, "segment.ms rolls on append");
    assert!(!log.maybe_roll(NOW + 1500).unwrap());
    assert!(
        log.maybe_roll(NOW + 2000).unwrap(),
        "and on the caller's timer"
    );
    assert_eq!(log.segment_bases(), vec![Offset(0), Offset(2), Offset(3)]);
}

/// Group commit: many appends, one sync. Durability is reported separately from writes.
#[test]
fn one_sync_makes_many_appends_durable() {
    let mut log = open(MemStorage::new(), LogConfig::default());
    fill(&mut log, 1, 1); // the first append of an epoch persists the epoch cache (one sync)
    let syncs_before = log.storage().syncs;
    fill(&mut log, 99, 1);
    assert_eq!(log.durable_end(), Offset(0));
    assert_eq!(log.sync().unwrap(), Offset(100));
    assert_eq!(log.durable_end(), Offset(100));
    assert_eq!(
        log.storage().syncs - syncs_before,
        1,
        "one fsync for 100 appends"
    );
}

/// The broker checkpoints every partition on a timer: a partition with nothing new since its
/// last checkpoint writes and syncs nothing (10,000 idle partitions cost no I/O), and one that
/// moved writes again.
#[test]
fn a_checkpoint_with_nothing_new_writes_nothing() {
    let mut log = open(MemStorage::new(), LogConfig::default());
    fill(&mut log, 10, 1);
    log.sync().unwrap();
    log.checkpoint().unwrap();
    let syncs = log.storage().syncs;
    log.checkpoint().unwrap();
    log.checkpoint().unwrap();
    assert_eq!(log.storage().syncs, syncs, "nothing new: no write, no sync");
    fill(&mut log, 1, 1);
    log.sync().unwrap();
    let synced = log.storage().syncs;
    log.checkpoint().unwrap();
    assert!(
        log.storage().syncs > synced,
        "the recovery point moved: written again"
    );
    let reopened = open(log.storage().clone(), LogConfig::default());
    assert_eq!(reopened.end(), Offset(11));
}

/// A sync run outside the log covers what was written when it was prepared, not appends that
/// came while the disk synced; a truncation in between voids it.
#[test]
fn split_sync_covers_only_what_was_prepared() {
    let mut log = open(MemStorage::new(), LogConfig::default());
    fill(&mut log, 3, 1);
    let pending = log.prepare_sync().expect("unsynced data");
    fill(&mut log, 2, 1);
    let mut storage = log.into_storage();
    for file in pending.files() {
        storage.sync(file).unwrap();
    }
    let mut log = open_keeping(storage);
    // Reopened logs start durable; use a fresh one for the ordering check.
    fill(&mut log, 1, 1);
    let pending = log.prepare_sync().unwrap();
    fill(&mut log, 1, 1);
    assert_eq!(log.complete_sync(pending), log.end().plus(-1));
    assert!(
        log.durable_end() < log.end(),
        "the append after prepare is not yet durable"
    );
    let pending = log.prepare_sync().unwrap();
    log.truncate_to(Offset(1)).unwrap();
    let durable = log.durable_end();
    assert_eq!(
        log.complete_sync(pending),
        durable,
        "a sync prepared before a truncation is void"
    );
    assert!(log.prepare_sync().is_none());
}

fn open_keeping(storage: MemStorage) -> Log<MemStorage> {
    open(storage, LogConfig::default())
}

#[test]
fn crash_keeps_everything_synced_and_recovery_cuts_the_torn_tail() {
    for seed in 0..100 {
        let mut log = open(MemStorage::new(), small_segments());
        fill(&mut log, 10, 3);
        log.sync().unwrap();
        fill(&mut log, 10, 3);
        let mut storage = log.into_storage();
        storage.crash(&mut StdRng::seed_from_u64(seed));
        let log = open(storage, small_segments());
        assert!(log.end() >= Offset(30), "seed {seed}: synced data survives");
        assert_eq!(
            log.end().0 % 3,
            0,
            "seed {seed}: only whole batches survive"
        );
        let mut from = Offset(0);
        while from < log.end() {
            let batches = log.read(from, usize::MAX, log.end()).unwrap();
            from = batches.last().unwrap().next_offset();
        }
        assert_eq!(from, log.end());
    }
}

/// Issue 2's acceptance test: corrupting any byte inside a batch (after baseOffset, length and
/// epoch) is detected by recovery, which truncates there and keeps every earlier batch.
#[test]
fn recovery_detects_any_corrupted_byte_and_keeps_every_earlier_batch() {
    let mut log = open(MemStorage::new(), LogConfig::default());
    fill(&mut log, 3, 2);
    log.sync().unwrap();
    let sizes: Vec<u64> = log
        .read(Offset(0), usize::MAX, log.end())
        .unwrap()
        .iter()
        .map(|b| b.size() as u64)
        .collect();
    let clean = log.into_storage();
    let second = sizes[0];
    for within in 16..sizes[1] {
        let mut storage = clean.clone();
        storage
            .flip_bit(
                "00000000000000000000.log",
                (second + within) as usize,
                (within % 8) as u8,
            )
            .unwrap();
        let log = open(storage, LogConfig::default());
        assert_eq!(
            log.end(),
            Offset(2),
            "byte {within}: truncated at the corrupt batch"
        );
        let report = log.recovery_report();
        let (file, position, _) = report.corruption.clone().expect("corruption reported");
        assert_eq!(
            (file.as_str(), position),
            ("00000000000000000000.log", second)
        );
        assert_eq!(report.bytes_truncated, sizes[1] + sizes[2]);
        assert_eq!(
            log.read(Offset(0), usize::MAX, log.end()).unwrap().len(),
            1,
            "the earlier batch is kept"
        );
    }
}

/// Below the recovery point recovery trusts the data and only walks headers, but a damaged
/// batch is still never served: the read fails its CRC check.
#[test]
fn corruption_below_the_recovery_point_is_never_served() {
    let mut log = open(MemStorage::new(), small_segments());
    fill(&mut log, 30, 4);
    log.sync().unwrap();
    log.checkpoint().unwrap();
    let mut storage = log.into_storage();
    storage
        .flip_bit("00000000000000000000.log", 100, 3)
        .unwrap();
    let log = open(storage, small_segments());
    assert_eq!(
        log.end(),
        Offset(120),
        "trusted segments are not re-validated"
    );
    let last_segment_batches = log
        .read(
            log.segment_bases()[log.segment_count() - 1],
            usize::MAX,
            log.end(),
        )
        .unwrap()
        .len();
    assert_eq!(
        log.recovery_report().batches_validated as usize,
        last_segment_batches,
        "only the last segment is re-validated"
    );
    let err = log
        .read(Offset(0), usize::MAX, log.end())
        .expect_err("corrupt batch is not served");
    assert!(
        matches!(err, LogError::Corrupt { position: 0, .. }),
        "{err:?}"
    );
}

#[test]
fn zero_filled_tail_and_garbage_are_cut_by_recovery() {
    let mut log = open(MemStorage::new(), LogConfig::default());
    fill(&mut log, 2, 2);
    log.sync().unwrap();
    let mut storage = log.into_storage();
    storage
        .append("00000000000000000000.log", &[0u8; 100])
        .unwrap();
    let log = open(storage, LogConfig::default());
    assert_eq!(log.end(), Offset(4));
    assert_eq!(log.recovery_report().bytes_truncated, 100);
}

/// A follower drops the batch that contains the divergence point and everything after it
/// (Kafka's truncateTo works on batch boundaries), and the epoch cache with it (KIP-101).
#[test]
fn truncate_removes_the_containing_batch_and_later_epochs_durably() {
    let mut log = open(MemStorage::new(), small_segments());
    fill(&mut log, 10, 4); // offsets 0..40, epoch 0
    log.append(NOW, small_batch(4, NOW), LeaderEpoch(3))
        .unwrap(); // 40..44, epoch 3
    fill_epoch(&mut log, 10, 3);
    assert_eq!(log.truncate_to(Offset(42)).unwrap(), Offset(40));
    assert_eq!(log.end(), Offset(40));
    assert_eq!(log.durable_end(), Offset(40), "truncation is synced");
    assert_eq!(log.epochs().latest().unwrap().epoch, LeaderEpoch(0));
    let mut storage = log.into_storage();
    storage.crash(&mut StdRng::seed_from_u64(7));
    let mut log = open(storage, small_segments());
    assert_eq!(log.end(), Offset(40), "the truncation survives a crash");
    assert_eq!(log.truncate_to(Offset(2)).unwrap(), Offset(0));
    assert_eq!(log.segment_count(), 1);
    log.append(NOW, small_batch(1, NOW), LeaderEpoch(4))
        .unwrap();
    assert_eq!(log.end(), Offset(1));
}

fn fill_epoch<S: Storage>(log: &mut Log<S>, n: usize, epoch: i32) {
    for _ in 0..n {
        log.append(NOW, small_batch(2, NOW), LeaderEpoch(epoch))
            .unwrap();
    }
}

#[test]
fn follower_appends_keep_offsets_and_must_follow_the_end() {
    let mut leader = open(MemStorage::new(), LogConfig::default());
    fill_epoch(&mut leader, 3, 2);
    let mut follower = open(MemStorage::new(), LogConfig::default());
    for b in leader.read(Offset(0), usize::MAX, leader.end()).unwrap() {
        follower.append_replicated(NOW, b).unwrap();
    }
    assert_eq!(follower.end(), leader.end());
    assert_eq!(follower.epochs(), leader.epochs());
    let again = leader
        .read(Offset(0), usize::MAX, leader.end())
        .unwrap()
        .remove(0);
    assert!(matches!(
        follower.append_replicated(NOW, again),
        Err(LogError::NonMonotonicAppend { .. })
    ));
}

/// LeaderEpochFileCache.endOffsetFor: the requested epoch's end is the next epoch's start; the
/// latest epoch ends at the log end; an unknown epoch maps to the largest epoch below it.
#[test]
fn epoch_cache_end_offsets_follow_kafka() {
    let mut c = EpochCache::default();
    assert_eq!(c.end_offset_for(LeaderEpoch(0), Offset(0)), None);
    c.assign(LeaderEpoch(1), Offset(0));
    c.assign(LeaderEpoch(3), Offset(10));
    c.assign(LeaderEpoch(6), Offset(25));
    let end = Offset(40);
    assert_eq!(
        c.end_offset_for(LeaderEpoch(6), end),
        Some((LeaderEpoch(6), end))
    );
    assert_eq!(
        c.end_offset_for(LeaderEpoch(1), end),
        Some((LeaderEpoch(1), Offset(10)))
    );
    assert_eq!(
        c.end_offset_for(LeaderEpoch(2), end),
        Some((LeaderEpoch(1), Offset(10)))
    );
    assert_eq!(
        c.end_offset_for(LeaderEpoch(5), end),
        Some((LeaderEpoch(3), Offset(25)))
    );
    assert_eq!(
        c.end_offset_for(LeaderEpoch(9), end),
        Some((LeaderEpoch(6), end))
    );
    assert_eq!(c.end_offset_for(LeaderEpoch(0), end), None);
    // assign removes conflicting entries (non-monotonic epochs or offsets).
    c.assign(LeaderEpoch(4), Offset(20));
    assert_eq!(
        c.entries().iter().map(|e| e.epoch.0).collect::<Vec<_>>(),
        vec![1, 3, 4]
    );
    c.truncate_from_end(Offset(20));
    assert_eq!(c.latest().unwrap().epoch, LeaderEpoch(3));
    c.truncate_from_start(Offset(12));
    assert_eq!(
        c.entries(),
        &[EpochEntry {
            epoch: LeaderEpoch(3),
            start_offset: Offset(12)
        }]
    );
    let text = c.encode();
    assert_eq!(
        text, "0\n1\n3 12\n",
        "Kafka's leader-epoch-checkpoint format"
    );
    assert_eq!(EpochCache::decode(text.as_bytes()), Some(c));
    assert_eq!(EpochCache::decode(b"0\n2\n3 12\n"), None, "short file");
    assert_eq!(
        EpochCache::decode(b"0\n2\n3 12\n2 13\n"),
        None,
        "decreasing epochs"
    );
}

#[test]
fn epoch_cache_is_persisted_and_rebuilt_when_lost() {
    let mut log = open(MemStorage::new(), LogConfig::default());
    fill_epoch(&mut log, 2, 1);
    fill_epoch(&mut log, 2, 4);
    log.sync().unwrap();
    let expected = log.epochs().clone();
    let storage = log.into_storage();
    assert_eq!(
        open(storage.clone(), LogConfig::default()).epochs(),
        &expected
    );
    let mut lost = storage;
    lost.remove(EPOCH_CHECKPOINT).unwrap();
    assert_eq!(
        open(lost, LogConfig::default()).epochs(),
        &expected,
        "rebuilt from batch headers"
    );
}

/// Retention deletes whole segments, oldest first, never the active one and never past the
/// high-watermark bound; the new log start offset survives a restart.
#[test]
fn retention_by_size_and_time_respects_the_bound() {
    let config = LogConfig {
        retention_bytes_max: 2048,
        ..small_segments()
    };
    let mut log = open(MemStorage::new(), config.clone());
    fill(&mut log, 40, 4);
    log.sync().unwrap();
    let segments = log.segment_count();
    assert_eq!(
        log.apply_retention(NOW, Offset(0)).unwrap(),
        0,
        "nothing below a zero bound"
    );
    let removed = log.apply_retention(NOW, log.end()).unwrap();
    assert!(removed > 0 && log.segment_count() == segments - removed);
    assert!(log.size_bytes() <= 2048 + 1024);
    let start = log.log_start();
    assert_eq!(start, log.segment_bases()[0]);
    assert!(matches!(
        log.read(Offset(0), 10, log.end()),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    let log = open(log.into_storage(), config);
    assert_eq!(log.log_start(), start, "log start survives a restart");

    let config = LogConfig {
        retention_ms_max: 1000,
        ..small_segments()
    };
    let mut log = open(MemStorage::new(), config);
    fill(&mut log, 40, 4);
    log.sync().unwrap(); // retention never removes past the durable end
    assert_eq!(
        log.apply_retention(NOW + 1000, log.end()).unwrap(),
        0,
        "not yet expired"
    );
    let removed = log.apply_retention(NOW + 1001, log.end()).unwrap();
    assert_eq!(log.segment_count(), 1, "all but the active segment expire");
    assert!(removed > 0);
}

/// DeleteRecords moves the log start offset (never past the high watermark) durably.
#[test]
fn advance_log_start_is_bounded_and_persisted() {
    let mut log = open(MemStorage::new(), small_segments());
    fill(&mut log, 40, 4);
    log.sync().unwrap();
    assert_eq!(
        log.advance_log_start(Offset(50), Offset(30)).unwrap(),
        Offset(30)
    );
    assert!(log.segment_bases()[0] <= Offset(30));
    let read = log.read(Offset(30), 1, log.end()).unwrap();
    assert_eq!(
        read[0].base_offset(),
        Offset(28),
        "the batch containing the start is still returned whole"
    );
    let mut storage = log.into_storage();
    storage.crash(&mut StdRng::seed_from_u64(1));
    let log = open(storage, small_segments());
    assert_eq!(log.log_start(), Offset(30));
}

/// ListOffsets by timestamp returns the first record at or after it; MAX_TIMESTAMP the record
/// with the largest timestamp (KIP-734).
#[test]
fn timestamp_lookups() {
    let mut log = open(MemStorage::new(), small_segments());
    for i in 0..50i64 {
        let b = BatchBuilder::new(Compression::Gzip)
            .record(1000 + i * 10, None, Some(b"a"))
            .record(1000 + i * 10 + 5, None, Some(b"b"))
            .build()
            .unwrap();
        log.append(NOW, b, LeaderEpoch(0)).unwrap();
    }
    assert_eq!(
        log.offset_for_timestamp(0).unwrap(),
        Some((Offset(0), 1000))
    );
    assert_eq!(
        log.offset_for_timestamp(1005).unwrap(),
        Some((Offset(1), 1005))
    );
    assert_eq!(
        log.offset_for_timestamp(1006).unwrap(),
        Some((Offset(2), 1010))
    );
    assert_eq!(
        log.offset_for_timestamp(1000 + 49 * 10 + 5).unwrap(),
        Some((Offset(99), 1495))
    );
    assert_eq!(log.offset_for_timestamp(1496).unwrap(), None);
    assert_eq!(log.max_timestamp().unwrap(), Some((Offset(99), 1495)));
    let spike = BatchBuilder::new(Compression::None)
        .record(5, None, None)
        .record(9999, None, None)
        .record(7, None, None)
        .build()
        .unwrap();
    log.append(NOW, spike, LeaderEpoch(0)).unwrap();
    for _ in 0..3 {
        log.append(NOW, small_batch(1, 1), LeaderEpoch(0)).unwrap();
    }
    assert_eq!(log.max_timestamp().unwrap(), Some((Offset(101), 9999)));
}

#[test]
fn damaged_checkpoints_fall_back_to_full_recovery() {
    let mut log = open(MemStorage::new(), small_segments());
    fill(&mut log, 20, 4);
    log.sync().unwrap();
    log.checkpoint().unwrap();
    let mut storage = log.into_storage();
    storage.flip_bit(PARTITION_CHECKPOINT, 20, 1).unwrap();
    storage.flip_bit(EPOCH_CHECKPOINT, 0, 1).unwrap();
    let log = open(storage, small_segments());
    assert_eq!(log.end(), Offset(80));
    assert_eq!(
        log.recovery_report().batches_validated,
        20,
        "everything re-validated"
    );
}

#[test]
fn full_disk_fails_the_append_and_loses_nothing() {
    let mut log = open(MemStorage::new(), LogConfig::default());
    fill(&mut log, 5, 2);
    log.sync().unwrap();
    let mut storage = log.into_storage();
    storage.capacity_bytes = Some(storage.used_bytes() + 10);
    let mut log = open(storage, LogConfig::default());
    let err = log
        .append(NOW, small_batch(2, NOW), LeaderEpoch(0))
        .unwrap_err();
    assert_eq!(err, LogError::Storage(StorageError::NoSpace));
    assert_eq!(log.end(), Offset(10));
    assert_eq!(log.read(Offset(0), usize::MAX, log.end()).unwrap().len(), 5);
}

/// A full disk can refuse the first append of a new leader epoch while the epoch cache is
/// being persisted (the checkpoint is written before the batch). The append fails as a whole:
/// the cache must not keep the epoch it could not persist, or it would name an epoch that no
/// batch in the log carries, starting at the log end (the module's invariant 6, "the cache
/// never refers past the log end"; Kafka's `LeaderEpochFileCache.assign` writes the file
/// before it changes the cache).
#[test]
fn full_disk_on_a_new_epoch_leaves_the_epoch_cache_as_it_was() {
    let mut log = open(MemStorage::new(), LogConfig::default());
    fill(&mut log, 5, 2);
    log.sync().unwrap();
    let mut storage = log.into_storage();
    storage.capacity_bytes = Some(storage.used_bytes());
    let mut log = open(storage, LogConfig::default());
    let before = log.epochs().clone();
    let err = log
        .append(NOW, small_batch(2, NOW), LeaderEpoch(1))
        .unwrap_err();
    assert_eq!(err, LogError::Storage(StorageError::NoSpace));
    assert_eq!(log.epochs(), &before, "the unpersisted epoch is not kept");
    log.check_invariants();
    assert_eq!(log.end(), Offset(10));
}

#[test]
fn model_smoke_sequence() {
    use LogOp::*;
    testing::run(&[
        Append {
            records: 3,
            value_bytes: 500,
            new_epoch: true,
        },
        Append {
            records: 7,
            value_bytes: 20,
            new_epoch: false,
        },
        Sync,
        Append {
            records: 1,
            value_bytes: 299,
            new_epoch: false,
        },
        Crash { seed: 3 },
        Append {
            records: 4,
            value_bytes: 200,
            new_epoch: true,
        },
        Reopen,
        Truncate { at: 500 },
        Read {
            at: 0,
            max_bytes: 100,
        },
        Retention { ms: 700_000 },
        BitRot {
            segment: 0,
            position: 70,
        },
        Read {
            at: 999,
            max_bytes: 10_000,
        },
    ]);
}

fn arb_op() -> impl Strategy<Value = LogOp> {
    prop_oneof![
        6 => (any::<u8>(), any::<u16>(), prop::bool::weighted(0.1)).prop_map(|(records, value_bytes, new_epoch)| LogOp::Append { records, value_bytes, new_epoch }),
        2 => Just(LogOp::Sync),
        1 => any::<u64>().prop_map(|seed| LogOp::Crash { seed }),
        1 => Just(LogOp::Reopen),
        1 => any::<u16>().prop_map(|at| LogOp::Truncate { at }),
        3 => (any::<u16>(), any::<u16>()).prop_map(|(at, max_bytes)| LogOp::Read { at, max_bytes }),
        1 => (0u32..700_000).prop_map(|ms| LogOp::Retention { ms }),
    ]
}

fn arb_op_with_rot() -> impl Strategy<Value = LogOp> {
    prop_oneof![
        20 => arb_op(),
        1 => (any::<u8>(), any::<u32>()).prop_map(|(segment, position)| LogOp::BitRot { segment, position }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Arbitrary bytes, and valid batches followed by arbitrary bytes, as a segment file.
    #[test]
    fn recovery_of_arbitrary_segments(garbage in proptest::collection::vec(any::<u8>(), 0..300), batches in 0usize..5, flip in any::<Option<(usize, u8)>>()) {
        let mut data = Vec::new();
        for i in 0..batches {
            let mut b = small_batch(i + 1, 5);
            b.stamp(Offset((0..i).map(|j| j as i64 + 1).sum()), LeaderEpoch(0));
            data.extend_from_slice(b.bytes());
        }
        data.extend_from_slice(&garbage);
        if let Some((at, bit)) = flip {
            if !data.is_empty() {
                let at = at % data.len();
                data[at] ^= 1 << (bit % 8);
            }
        }
        testing::recover_segment(&data);
    }

    /// The log against a model under random appends, syncs, crashes, reopens, truncations,
    /// reads, rolls and retention: nothing durable is lost and nothing invalid is read.
    #[test]
    fn log_matches_model_under_crashes(ops in proptest::collection::vec(arb_op(), 1..120)) {
        testing::run(&ops);
    }

    /// The same with bit rot: damaged data is detected (by recovery or on read), never served.
    #[test]
    fn log_never_serves_rotted_bytes(ops in proptest::collection::vec(arb_op_with_rot(), 1..80)) {
        testing::run(&ops);
    }
}

/// baseOffset and partitionLeaderEpoch are outside the batch CRC (Kafka's format). A flipped
/// bit in either is still never served: reads check the base offset against the log and the
/// epoch against the epoch cache, and recovery checks epochs against the checkpoint. Found by
/// the simulator's disk (bit rot in byte 15 served as epoch 33).
#[test]
fn damage_outside_the_crc_is_never_served() {
    for byte in [3usize, 7, 12, 15] {
        let mut log = open(MemStorage::new(), small_segments());
        fill_epoch(&mut log, 10, 1);
        fill_epoch(&mut log, 10, 2);
        log.sync().unwrap();
        log.checkpoint().unwrap();
        assert!(log.segment_count() > 2);
        let second = log.read(Offset(0), 1, log.end()).unwrap()[0].size();
        let mut storage = log.into_storage();
        storage
            .flip_bit("00000000000000000000.log", second + byte, 0)
            .unwrap();
        // The first segment is below the recovery point, so open walks only its headers:
        // that walk checks base offsets and (against the checkpoint) epochs, and cuts there.
        let log = open(storage.clone(), small_segments());
        assert!(
            log.recovery_report().corruption.is_some(),
            "byte {byte}: found at open"
        );
        assert_eq!(
            log.end(),
            Offset(2),
            "byte {byte}: cut at the damaged batch"
        );
        // Without a recovery point everything is re-validated at open: cut at the damage.
        storage.remove(PARTITION_CHECKPOINT).unwrap();
        let log = open(storage, small_segments());
        assert_eq!(
            log.end(),
            Offset(2),
            "byte {byte}: recovery cuts at the damaged batch"
        );
    }
}

/// A rescan after truncation keeps the epochs of earlier segments (it used to re-assign from
/// the active segment's first batch, which erased them).
#[test]
fn truncation_keeps_earlier_segments_epochs() {
    let mut log = open(MemStorage::new(), small_segments());
    fill_epoch(&mut log, 20, 1);
    fill_epoch(&mut log, 20, 2);
    fill_epoch(&mut log, 20, 3);
    let before: Vec<_> = log.epochs().entries().to_vec();
    let cut = before[2].start_offset.plus(3);
    log.truncate_to(cut).unwrap();
    assert_eq!(
        log.epochs().entries(),
        &before[..],
        "the truncation point is inside epoch 3: every epoch stays"
    );
    let mut from = Offset(0);
    while from < log.end() {
        from = log
            .read(from, usize::MAX, log.end())
            .unwrap()
            .last()
            .unwrap()
            .next_offset();
    }
}

/// Damage that appears while the log is open (bit rot under a running broker) is caught on
/// read by the same checks: a wrong base offset or epoch is OutsideCrc, never served.
#[test]
fn damage_outside_the_crc_found_on_read() {
    use crate::storage::Storage;
    for byte in [7usize, 15] {
        let mut storage = MemStorage::new();
        let mut log = open(storage.clone(), small_segments());
        fill_epoch(&mut log, 10, 1);
        log.sync().unwrap();
        let second = log.read(Offset(0), 1, log.end()).unwrap()[0].size();
        // Damage the bytes the open log will read next (a copy of its storage, reopened
        // without recovery's view of the damage: read through a log whose indexes predate it).
        storage = log.into_storage();
        let bases = storage.list().unwrap();
        assert!(bases.iter().any(|n| n.ends_with(".log")));
        let mut damaged = storage.clone();
        damaged
            .flip_bit("00000000000000000000.log", second + byte, 0)
            .unwrap();
        let log = Log::open(storage, small_segments(), NOW).unwrap();
        let clean = log.read(Offset(2), 1, log.end()).unwrap();
        assert_eq!(clean[0].base_offset(), Offset(2));
        let log = Log {
            storage: damaged,
            ..log
        };
        let err = log
            .read(Offset(2), 1, log.end())
            .expect_err("damaged batch not served");
        assert!(
            matches!(
                err,
                LogError::Corrupt {
                    error: BatchError::OutsideCrc(_),
                    ..
                }
            ),
            "byte {byte}: {err:?}"
        );
    }
}

/// Found by the log_ops fuzzer: a batch's maxTimestamp is the producer's to choose, and
/// retention computed `now - maxTimestamp`, which overflowed for i64::MIN. A timestamp that
/// old is simply expired.
#[test]
fn retention_survives_extreme_producer_timestamps() {
    let config = LogConfig {
        retention_ms_max: 1000,
        ..small_segments()
    };
    let mut log = open(MemStorage::new(), config);
    for ts in [i64::MIN, i64::MAX, 0] {
        for _ in 0..10 {
            log.append(NOW, small_batch(2, ts), LeaderEpoch(0)).unwrap();
        }
    }
    assert_eq!(
        log.apply_retention(NOW, log.end()).unwrap(),
        0,
        "nothing unsynced is removed, whatever the bound"
    );
    log.sync().unwrap();
    let removed = log.apply_retention(NOW, log.end()).unwrap();
    assert!(removed > 0, "the i64::MIN segments expire");
    log.check_invariants();
}

/// A read that fails its CRC once and passes on a fresh read is a transient read error:
/// recovery reads again and cuts nothing (the simulator found recovery cutting synced, acked
/// data after one flipped read). Damage that every read sees is still cut (the test above).
#[test]
fn recovery_reads_again_before_cutting_and_keeps_data_a_transient_error_hid() {
    let mut log = open(MemStorage::new(), LogConfig::default());
    fill(&mut log, 5, 3);
    log.sync().unwrap();
    for flips in 1..=RECOVERY_READ_RETRIES as u32 {
        let storage = FailingOps::flaky_reads(log.storage().clone(), flips);
        let reopened = Log::open(storage, LogConfig::default(), NOW).unwrap();
        let report = reopened.recovery_report();
        assert!(
            report.batches_validated > 0,
            "no recovery point: all re-validated"
        );
        assert_eq!(
            report.corruption, None,
            "{flips} flipped reads: nothing cut"
        );
        assert_eq!(report.read_retries, u64::from(flips));
        assert_eq!(
            reopened.end(),
            Offset(15),
            "{flips} flipped reads: every batch kept"
        );
    }
    // Every attempt flipped: taken for damage, and the log is cut at the first batch.
    let storage = FailingOps::flaky_reads(log.storage().clone(), RECOVERY_READ_RETRIES as u32 + 1);
    let reopened = Log::open(storage, LogConfig::default(), NOW).unwrap();
    assert!(reopened.recovery_report().corruption.is_some());
    assert_eq!(reopened.end(), Offset(0));
}

/// A storage that fails chosen operations with an I/O error (the simulator's disks fail any
/// operation at a sampled rate): syncs of segments, creations of segments, and writes of the
/// epoch checkpoint; and whose next `flips` reads of a segment return one byte flipped (a
/// transient read error: the bytes on the disk are sound). It counts reads of segments too.
#[derive(Clone)]
struct FailingOps {
    inner: MemStorage,
    fail_segment_syncs: bool,
    fail_epoch_writes: bool,
    fail_segment_creates: bool,
    flips: std::cell::Cell<u32>,
    /// (calls, bytes) of `read_at` on segment files.
    reads: std::cell::Cell<(usize, usize)>,
}

impl FailingOps {
    fn new(inner: MemStorage) -> FailingOps {
        FailingOps {
            inner,
            fail_segment_syncs: false,
            fail_epoch_writes: false,
            fail_segment_creates: false,
            flips: std::cell::Cell::new(0),
            reads: std::cell::Cell::new((0, 0)),
        }
    }

    fn flaky_reads(inner: MemStorage, flips: u32) -> FailingOps {
        FailingOps {
            flips: std::cell::Cell::new(flips),
            ..FailingOps::new(inner)
        }
    }

    fn check(&self, name: &str, failing: bool) -> Result<(), crate::storage::StorageError> {
        if failing {
            return Err(crate::storage::StorageError::Io {
                file: name.to_string(),
                message: "injected".into(),
            });
        }
        Ok(())
    }
}

impl crate::storage::Storage for FailingOps {
    fn create(&mut self, name: &str) -> Result<(), crate::storage::StorageError> {
        self.check(
            name,
            self.fail_epoch_writes && name.starts_with(EPOCH_CHECKPOINT)
                || self.fail_segment_creates && name.ends_with(".log"),
        )?;
        self.inner.create(name)
    }
    fn append(&mut self, name: &str, data: &[u8]) -> Result<(), crate::storage::StorageError> {
        self.inner.append(name, data)
    }
    fn read_at(
        &self,
        name: &str,
        pos: u64,
        len: usize,
    ) -> Result<bytes::Bytes, crate::storage::StorageError> {
        let bytes = self.inner.read_at(name, pos, len)?;
        if name.ends_with(".log") {
            let (calls, total) = self.reads.get();
            self.reads.set((calls + 1, total + bytes.len()));
        }
        if name.ends_with(".log") && bytes.len() > 40 && self.flips.get() > 0 {
            self.flips.set(self.flips.get() - 1);
            let mut flipped = bytes.to_vec();
            flipped[40] ^= 0x10;
            return Ok(bytes::Bytes::from(flipped));
        }
        Ok(bytes)
    }
    fn len(&self, name: &str) -> Result<u64, crate::storage::StorageError> {
        self.inner.len(name)
    }
    fn truncate(&mut self, name: &str, len: u64) -> Result<(), crate::storage::StorageError> {
        self.inner.truncate(name, len)
    }
    fn sync(&mut self, name: &str) -> Result<(), crate::storage::StorageError> {
        self.check(name, self.fail_segment_syncs && name.ends_with(".log"))?;
        self.inner.sync(name)
    }
    fn rename(&mut self, from: &str, to: &str) -> Result<(), crate::storage::StorageError> {
        self.inner.rename(from, to)
    }
    fn remove(&mut self, name: &str) -> Result<(), crate::storage::StorageError> {
        self.inner.remove(name)
    }
    fn list(&self) -> Result<Vec<String>, crate::storage::StorageError> {
        self.inner.list()
    }
}

/// A truncation rebuilds the indexes of what stays by reading its headers again; rot found
/// there (here a flipped baseOffset bit behind an index entry, which the walk to the cut
/// skips) is an error, and the log is left exactly as it was. It used to panic ("the data
/// before a truncation point was valid"), a broker crash the simulator found under disk faults.
#[test]
fn truncation_that_meets_damage_before_the_cut_fails_and_keeps_the_log() {
    let config = LogConfig {
        index_interval_bytes: 1, // every batch indexed: the walk starts at the cut
        ..LogConfig::default()
    };
    let mut log = open(MemStorage::new(), config);
    fill_epoch(&mut log, 6, 1); // offsets 0..12, two per batch
    log.sync().unwrap();
    let size = log.read(Offset(0), 1, log.end()).unwrap()[0].size();
    log.storage
        .flip_bit("00000000000000000000.log", size + 7, 0)
        .unwrap();
    let err = log
        .truncate_to(Offset(8))
        .expect_err("the rescan meets the damaged batch");
    assert!(
        matches!(err, LogError::Corrupt { position, .. } if position == size as u64),
        "{err:?}"
    );
    assert_eq!(log.end(), Offset(12), "nothing was cut");
    assert_eq!(log.durable_end(), Offset(12));
    log.check_invariants();
    let after = log.read(Offset(4), usize::MAX, log.end()).unwrap();
    assert_eq!(after.last().unwrap().next_offset(), Offset(12));
}

/// A misdirected write put a later batch (offsets 8..=9) where an earlier one (4..=5) was: the
/// walk from the sparse index to the cut at 8 meets that header first and would cut there,
/// where the batches before end at 4, ending the log below the cut. The truncation refuses
/// and leaves the log whole (the replica then marks itself damaged and fetches back). Found by
/// the simulator: a follower's truncation ended its log below its high watermark and the
/// broker crashed on the invariant 6 assertion.
#[test]
fn truncation_that_meets_a_misplaced_batch_fails_and_keeps_the_log() {
    let mut log = open(MemStorage::new(), LogConfig::default());
    fill_epoch(&mut log, 6, 1); // offsets 0..12, two per batch, one index entry
    log.sync().unwrap();
    let name = "00000000000000000000.log";
    let size = log.read(Offset(0), 1, log.end()).unwrap()[0].size();
    let mut bytes = storage::read_all(&log.storage, name).unwrap().to_vec();
    let later = bytes[4 * size..5 * size].to_vec();
    bytes[2 * size..3 * size].copy_from_slice(&later);
    log.storage.truncate(name, 0).unwrap();
    log.storage.append(name, &bytes).unwrap();
    log.storage.sync(name).unwrap();
    let err = log
        .truncate_to(Offset(8))
        .expect_err("the batches before the misplaced header end at 4");
    assert!(
        matches!(err, LogError::Corrupt { position, .. } if position == 2 * size as u64),
        "{err:?}"
    );
    assert_eq!(log.end(), Offset(12), "nothing was cut");
    assert_eq!(log.durable_end(), Offset(12));
    log.check_invariants();
}

/// A truncation whose sync fails leaves the log cut in memory as on the disk (not yet
/// durable), so that later appends land where the indexes say. It used to return with the
/// later segments gone from memory but the log end and the cut segment's indexes stale.
#[test]
fn truncation_whose_sync_fails_leaves_a_whole_log() {
    let storage = FailingOps::new(MemStorage::new());
    let mut log = Log::open(storage, small_segments(), NOW).unwrap();
    for _ in 0..30 {
        log.append(NOW, small_batch(2, NOW), LeaderEpoch(1))
            .unwrap();
    }
    log.sync().unwrap();
    assert!(log.segment_count() > 2);
    log.storage.fail_segment_syncs = true;
    let cut = Offset(21);
    log.truncate_to(cut).expect_err("the sync fails");
    assert_eq!(log.end(), Offset(20), "cut at the batch holding 21");
    assert!(log.durable_end() <= log.end());
    log.check_invariants();
    log.storage.fail_segment_syncs = false;
    log.append(NOW, small_batch(2, NOW), LeaderEpoch(2))
        .unwrap();
    log.sync().unwrap();
    let batches = log.read(Offset(20), usize::MAX, log.end()).unwrap();
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].partition_leader_epoch(), LeaderEpoch(2));
    let reopened = Log::open(log.into_storage(), small_segments(), NOW).unwrap();
    assert_eq!(reopened.end(), Offset(22));
}

/// An append that starts a new epoch writes the epoch checkpoint first; if that write fails,
/// the append fails and the cache in memory is as before. It used to keep the new epoch at the
/// log end, and the next invariant check panicked ("epoch cache refers past the log end").
#[test]
fn append_whose_epoch_write_fails_leaves_the_epoch_cache_as_it_was() {
    let storage = FailingOps::new(MemStorage::new());
    let mut log = Log::open(storage, LogConfig::default(), NOW).unwrap();
    log.append(NOW, small_batch(2, NOW), LeaderEpoch(1))
        .unwrap();
    let before = log.epochs().clone();
    log.storage.fail_epoch_writes = true;
    log.append(NOW, small_batch(2, NOW), LeaderEpoch(2))
        .expect_err("the epoch checkpoint cannot be written");
    assert_eq!(log.epochs(), &before);
    assert_eq!(log.end(), Offset(2));
    log.check_invariants();
    log.storage.fail_epoch_writes = false;
    log.append(NOW, small_batch(2, NOW), LeaderEpoch(2))
        .unwrap();
    assert_eq!(log.epochs().latest().unwrap().start_offset, Offset(2));
    log.check_invariants();
}

/// Starting the log over (a follower past its leader's start, a replica discarding damage)
/// whose new segment file cannot be created fails without leaving the log without a segment:
/// appends fail as errors until a later attempt creates it. It used to leave no segment at
/// all, and the next truncation panicked ("a log always has an active segment"), a broker
/// crash the simulator found under disk faults.
#[test]
fn starting_over_when_the_segment_cannot_be_created_keeps_a_segment() {
    let mut log = Log::open(
        FailingOps::new(MemStorage::new()),
        LogConfig::default(),
        NOW,
    )
    .unwrap();
    fill_epoch(&mut log, 3, 1);
    log.sync().unwrap();
    log.storage.fail_segment_creates = true;
    assert!(log.truncate_fully_and_start_at(NOW, Offset(0)).is_err());
    assert_eq!((log.log_start(), log.end()), (Offset(0), Offset(0)));
    log.check_invariants();
    assert!(log
        .append(NOW, small_batch(1, NOW), LeaderEpoch(1))
        .is_err());
    assert_eq!(log.truncate_to(Offset(0)).unwrap(), Offset(0));
    log.storage.fail_segment_creates = false;
    log.truncate_fully_and_start_at(NOW, Offset(0)).unwrap();
    log.append(NOW, small_batch(1, NOW), LeaderEpoch(1))
        .unwrap();
    assert_eq!(log.end(), Offset(1));
}

/// A roll syncs nothing (it runs on the produce path): the closed segment's unsynced tail goes
/// with the next sync, which names it beside the active segment. A crash before that sync
/// keeps a valid prefix of what was written; after it, a crash loses nothing.
#[test]
fn a_roll_leaves_the_closed_segments_tail_to_the_next_sync() {
    let mut log = open(MemStorage::new(), small_segments());
    fill(&mut log, 1, 1);
    log.sync().unwrap();
    let synced = log.end();
    // Enough batches to roll past two segments of 1 KiB.
    fill(&mut log, 30, 1);
    let segments = log.storage().list().unwrap();
    let logs = segments.iter().filter(|n| n.ends_with(".log")).count();
    assert!(logs >= 3, "rolled: {segments:?}");
    let pending = log.prepare_sync().expect("unsynced appends");
    let files: Vec<&str> = pending.files().collect();
    assert!(
        files.len() >= 3,
        "every segment with unsynced bytes is named: {files:?}"
    );

    // A crash before the sync: a valid prefix survives, at least what was synced.
    for seed in 0..20 {
        let mut storage = log.storage().clone();
        storage.crash(&mut StdRng::seed_from_u64(seed));
        let reopened = open_keeping(storage);
        assert!(reopened.end() >= synced, "seed {seed}: synced data lost");
        assert!(reopened.end() <= log.end());
    }

    // After the sync, a crash loses nothing.
    let end = log.end();
    assert_eq!(log.sync().unwrap(), end);
    for seed in 0..20 {
        let mut storage = log.storage().clone();
        storage.crash(&mut StdRng::seed_from_u64(seed));
        assert_eq!(open_keeping(storage).end(), end, "seed {seed}");
    }
}

/// `segment.jitter.ms`: a segment rolls by age somewhere in (segment.ms - jitter, segment.ms],
/// each segment at its own point fixed by the log's salt and its base offset, and logs with
/// different salts at different points.
#[test]
fn segment_jitter_brings_rolls_forward_by_up_to_the_jitter() {
    let config = |salt: u64| LogConfig {
        segment_ms_max: 10_000,
        segment_jitter_ms_max: 4_000,
        jitter_salt: salt,
        ..LogConfig::default()
    };
    let mut ages = std::collections::BTreeSet::new();
    for salt in 0..64u64 {
        for base in [0i64, 1, 100] {
            let age = config(salt).roll_age_ms(Offset(base));
            assert!((6_001..=10_000).contains(&age), "{age}");
            assert_eq!(age, config(salt).roll_age_ms(Offset(base)), "deterministic");
            ages.insert(age);
        }
    }
    assert!(
        ages.len() > 100,
        "spread over the jitter: {} distinct ages",
        ages.len()
    );
    let none = LogConfig {
        segment_ms_max: 10_000,
        ..LogConfig::default()
    };
    assert_eq!(none.roll_age_ms(Offset(5)), 10_000);
    // A jitter larger than segment.ms still leaves a positive age.
    let wide = LogConfig {
        segment_ms_max: 10,
        segment_jitter_ms_max: 1_000,
        jitter_salt: 3,
        ..LogConfig::default()
    };
    assert!(wide.roll_age_ms(Offset(0)) >= 1);
}
