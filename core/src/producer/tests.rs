use std::collections::BTreeMap;

use proptest::prelude::*;
use rand::{rngs::StdRng, SeedableRng};

use super::*;
use crate::batch::{BatchBuilder, Compression};
use crate::log::{Log, LogConfig};
use crate::storage::MemStorage;
use crate::types::LeaderEpoch;

const NOW: i64 = 1_700_000_000_000;

/// A stamped header as the log would hand it over: `records` records from `base_offset`.
fn header(pid: i64, epoch: i16, seq: i32, records: i32, base_offset: i64) -> BatchHeader {
    BatchHeader {
        base_offset: Offset(base_offset),
        size: 100,
        partition_leader_epoch: LeaderEpoch(0),
        magic: 2,
        crc: 0,
        attributes: 0,
        last_offset_delta: records - 1,
        base_timestamp: NOW,
        max_timestamp: NOW,
        producer_id: ProducerId(pid),
        producer_epoch: epoch,
        base_sequence: seq,
        records_count: records,
    }
}

/// Checks and, if accepted, records the batch at the table's end; returns the verdict.
fn produce(
    table: &mut ProducerStateTable,
    pid: i64,
    epoch: i16,
    seq: i32,
    records: i32,
) -> Result<ProducerCheck, ProducerError> {
    let h = header(pid, epoch, seq, records, table.end().0);
    let verdict = table.check(&h)?;
    if verdict == ProducerCheck::Append {
        table.record(&h);
    }
    Ok(verdict)
}

/// A retried batch whose first and last sequence match one of the last five is answered with
/// the original offsets and not appended. Reference: Kafka ProducerStateEntry.findDuplicateBatch,
/// UnifiedLog.analyzeAndValidateProducerState.
#[test]
fn duplicate_of_any_of_the_last_five_batches_gets_the_original_offsets() {
    let mut t = ProducerStateTable::new(Offset(0));
    for i in 0..5 {
        assert_eq!(produce(&mut t, 7, 0, i * 2, 2), Ok(ProducerCheck::Append));
    }
    assert_eq!(t.end(), Offset(10));
    for i in 0..5 {
        let retry = header(7, 0, i * 2, 2, t.end().0);
        assert_eq!(
            t.check(&retry),
            Ok(ProducerCheck::Duplicate {
                base_offset: Offset(i as i64 * 2),
                last_offset: Offset(i as i64 * 2 + 1),
            })
        );
    }
    // A sixth batch pushes the first out of the cache: retrying it is now out of order.
    assert_eq!(produce(&mut t, 7, 0, 10, 2), Ok(ProducerCheck::Append));
    assert_eq!(
        t.entry(ProducerId(7)).unwrap().batches().len(),
        BATCHES_RETAINED_MAX
    );
    assert_eq!(
        t.check(&header(7, 0, 0, 2, t.end().0)),
        Err(ProducerError::OutOfOrderSequence {
            producer_id: ProducerId(7),
            expected: 12,
            got: 0
        })
    );
    // Same first sequence but a different last sequence is not a duplicate.
    assert!(matches!(
        t.check(&header(7, 0, 2, 3, t.end().0)),
        Err(ProducerError::OutOfOrderSequence { .. })
    ));
}

/// A gap or an overlap in the sequence is OUT_OF_ORDER_SEQUENCE_NUMBER (45). Reference: Kafka
/// ProducerAppendInfo.checkSequence.
#[test]
fn sequence_gap_or_overlap_is_out_of_order() {
    let mut t = ProducerStateTable::new(Offset(0));
    produce(&mut t, 1, 0, 0, 3).unwrap();
    let gap = produce(&mut t, 1, 0, 4, 1).unwrap_err();
    assert_eq!(
        gap,
        ProducerError::OutOfOrderSequence {
            producer_id: ProducerId(1),
            expected: 3,
            got: 4
        }
    );
    assert_eq!(gap.code(), 45);
    assert!(produce(&mut t, 1, 0, 2, 1).is_err(), "overlap");
    assert_eq!(produce(&mut t, 1, 0, 3, 1), Ok(ProducerCheck::Append));
}

/// An epoch older than the producer's is INVALID_PRODUCER_EPOCH (47), even for a batch that
/// would otherwise be a duplicate. Reference: Kafka ProducerAppendInfo.checkProducerEpoch.
#[test]
fn older_epoch_is_fenced() {
    let mut t = ProducerStateTable::new(Offset(0));
    produce(&mut t, 1, 3, 0, 1).unwrap();
    let err = produce(&mut t, 1, 2, 1, 1).unwrap_err();
    assert_eq!(
        err,
        ProducerError::InvalidProducerEpoch {
            producer_id: ProducerId(1),
            current: 3,
            got: 2
        }
    );
    assert_eq!(err.code(), 47);
    assert!(produce(&mut t, 1, 2, 0, 1).is_err(), "old epoch retry");
}

/// A new epoch must start at sequence 0, and starting it drops the old epoch's batches.
/// Reference: Kafka ProducerAppendInfo.checkSequence, ProducerStateEntry.maybeUpdateProducerEpoch.
#[test]
fn new_epoch_starts_at_sequence_zero() {
    let mut t = ProducerStateTable::new(Offset(0));
    produce(&mut t, 1, 0, 0, 5).unwrap();
    assert_eq!(
        produce(&mut t, 1, 1, 5, 1),
        Err(ProducerError::OutOfOrderSequence {
            producer_id: ProducerId(1),
            expected: 0,
            got: 5
        })
    );
    assert_eq!(produce(&mut t, 1, 1, 0, 2), Ok(ProducerCheck::Append));
    let entry = t.entry(ProducerId(1)).unwrap();
    assert_eq!((entry.epoch(), entry.batches().len()), (1, 1));
    // The old epoch's batch is no duplicate any more: its epoch is fenced.
    assert!(matches!(
        produce(&mut t, 1, 0, 0, 5),
        Err(ProducerError::InvalidProducerEpoch { .. })
    ));
}

/// An unknown producer (never seen, or expired) is accepted at any sequence; batches without a
/// producer id are always appended. Reference: Kafka ProducerAppendInfo.checkSequence
/// ("accept writes with any sequence number" when there is no current epoch).
#[test]
fn unknown_producer_any_sequence_and_non_idempotent_always_append() {
    let mut t = ProducerStateTable::new(Offset(0));
    assert_eq!(produce(&mut t, 9, 4, 1234, 1), Ok(ProducerCheck::Append));
    assert_eq!(produce(&mut t, 9, 4, 1235, 1), Ok(ProducerCheck::Append));
    for _ in 0..3 {
        assert_eq!(produce(&mut t, -1, -1, -1, 2), Ok(ProducerCheck::Append));
    }
    assert_eq!(t.len(), 1, "no entry for producer id -1");
    assert_eq!(t.end(), Offset(8));
}

/// An idempotent batch without a sequence is INVALID_RECORD (87). Reference: Kafka
/// LogValidator.validateBatch.
#[test]
fn idempotent_batch_without_sequence_is_invalid_record() {
    let t = ProducerStateTable::new(Offset(0));
    let err = t.check(&header(3, 0, -1, 1, 0)).unwrap_err();
    assert_eq!(err.code(), 87);
}

/// Sequences wrap from i32::MAX to 0, inside a batch and between batches. Reference: Kafka
/// DefaultRecordBatch.incrementSequence, ProducerAppendInfo.inSequence.
#[test]
fn sequence_wraps_at_i32_max() {
    let mut t = ProducerStateTable::new(Offset(0));
    produce(&mut t, 1, 0, i32::MAX - 1, 1).unwrap();
    assert_eq!(t.entry(ProducerId(1)).unwrap().last_seq(), i32::MAX - 1);
    // A batch of 3 from MAX: sequences MAX, 0, 1.
    assert_eq!(
        produce(&mut t, 1, 0, i32::MAX, 3),
        Ok(ProducerCheck::Append)
    );
    assert_eq!(t.entry(ProducerId(1)).unwrap().last_seq(), 1);
    assert_eq!(produce(&mut t, 1, 0, 2, 1), Ok(ProducerCheck::Append));
    // Its retry is found by the wrapped range.
    assert_eq!(
        t.check(&header(1, 0, i32::MAX, 3, t.end().0)),
        Ok(ProducerCheck::Duplicate {
            base_offset: Offset(1),
            last_offset: Offset(3)
        })
    );
    // A batch ending exactly at MAX: the next starts at 0.
    let mut t = ProducerStateTable::new(Offset(0));
    produce(&mut t, 1, 0, i32::MAX - 1, 2).unwrap();
    assert_eq!(produce(&mut t, 1, 0, 0, 1), Ok(ProducerCheck::Append));
    assert_eq!(next_sequence(i32::MAX), 0);
}

/// Producers idle for producer.id.expiration.ms are forgotten. Reference: Kafka
/// ProducerStateManager.removeExpiredProducers, isProducerExpired.
#[test]
fn idle_producers_expire() {
    let mut t = ProducerStateTable::new(Offset(0));
    let mut old = header(1, 0, 0, 1, 0);
    old.max_timestamp = NOW - PRODUCER_ID_EXPIRATION_MS_DEFAULT;
    t.record(&old);
    let mut fresh = header(2, 0, 0, 1, 1);
    fresh.max_timestamp = NOW - 1;
    t.record(&fresh);
    assert_eq!(t.expire(NOW, PRODUCER_ID_EXPIRATION_MS_DEFAULT), 1);
    assert!(t.entry(ProducerId(1)).is_none());
    assert!(t.entry(ProducerId(2)).is_some());
    // The expired producer comes back at its next sequence, or any: accepted.
    assert_eq!(produce(&mut t, 1, 0, 1, 1), Ok(ProducerCheck::Append));
}

/// A batch recorded below the table's end means the log was truncated at its base without the
/// table being rebuilt (the rebuild read a damaged log and failed): the table forgets what it
/// recorded from there on and records the batch, instead of panicking. The simulator's seed 94
/// crashed a broker on the assertion this replaced ("producer state records batches in offset
/// order"), with disk faults. Reference: Kafka ProducerStateManager.truncateAndReload.
#[test]
fn a_batch_recorded_below_the_end_truncates_the_table_first() {
    let mut t = ProducerStateTable::new(Offset(0));
    for seq in [0, 2, 4] {
        assert_eq!(produce(&mut t, 1, 0, seq, 2), Ok(ProducerCheck::Append)); // 0..6
    }
    assert_eq!(produce(&mut t, 2, 0, 0, 2), Ok(ProducerCheck::Append)); // 6..8
    assert_eq!(t.end(), Offset(8));
    // The log was cut at 4 and goes on there with another producer's batch.
    t.record(&header(3, 0, 0, 1, 4));
    assert_eq!(t.end(), Offset(5));
    let one: Vec<_> = t.entry(ProducerId(1)).unwrap().batches().copied().collect();
    assert_eq!(one.len(), 2, "producer 1 keeps its batches below 4");
    assert_eq!(one[1].last_offset, Offset(3));
    assert_eq!(t.entry(ProducerId(1)).unwrap().last_seq(), 3);
    assert!(
        t.entry(ProducerId(2)).is_none(),
        "all of producer 2's batches were cut"
    );
    assert_eq!(t.entry(ProducerId(3)).unwrap().last_offset(), Offset(4));
    // Producer 1 continues from what the log holds: its batch at sequence 4 is new again.
    assert_eq!(produce(&mut t, 1, 0, 4, 2), Ok(ProducerCheck::Append));
    // And the table is what replaying the log would build: a snapshot round-trips.
    assert_eq!(decode_snapshot(&t.snapshot()).as_ref(), Ok(&t));
}

#[test]
#[should_panic(expected = "offset order")]
fn recording_a_batch_that_ends_before_it_starts_panics() {
    let mut t = ProducerStateTable::new(Offset(10));
    t.record(&header(1, 0, 0, 0, 10));
}

fn sample_table() -> ProducerStateTable {
    let mut t = ProducerStateTable::new(Offset(0));
    for round in 0..7 {
        for pid in [3, 1, 2] {
            produce(&mut t, pid, 0, round * 2, 2).unwrap();
        }
        produce(&mut t, -1, -1, -1, 1).unwrap();
    }
    produce(&mut t, 2, 1, 0, 1).unwrap();
    t
}

/// Snapshots round-trip exactly, are deterministic, and are named by their end offset.
#[test]
fn snapshot_round_trips() {
    let t = sample_table();
    let bytes = t.snapshot();
    assert_eq!(decode_snapshot(&bytes), Ok(t.clone()));
    assert_eq!(bytes, t.clone().snapshot(), "deterministic");
    let empty = ProducerStateTable::new(Offset(42));
    assert_eq!(decode_snapshot(&empty.snapshot()), Ok(empty));
    assert_eq!(
        snapshot_file_name(Offset(42)),
        "00000000000000000042.snapshot"
    );
    assert_eq!(
        parse_snapshot_file_name("00000000000000000042.snapshot"),
        Some(Offset(42))
    );
    assert_eq!(parse_snapshot_file_name("00000000000000000042.log"), None);
    assert_eq!(parse_snapshot_file_name("42.snapshot"), None);
}

/// Every flipped bit and every truncation of a snapshot is rejected, never a panic.
/// Reference: Kafka ProducerStateManager.readSnapshot (CorruptSnapshotException on CRC).
#[test]
fn corrupt_snapshot_is_rejected() {
    let bytes = sample_table().snapshot();
    for pos in 0..bytes.len() {
        for bit in [0, 3, 7] {
            let mut bad = bytes.clone();
            bad[pos] ^= 1 << bit;
            assert!(decode_snapshot(&bad).is_err(), "bit {bit} of byte {pos}");
        }
    }
    for len in 0..bytes.len() {
        assert!(
            decode_snapshot(&bytes[..len]).is_err(),
            "truncated to {len}"
        );
    }
    let mut longer = bytes.clone();
    longer.push(0);
    assert!(decode_snapshot(&longer).is_err());
}

proptest! {
    /// Arbitrary bytes never panic the decoder; with a valid header and CRC they still must
    /// satisfy every invariant to decode.
    #[test]
    fn decoding_arbitrary_bytes_never_panics(body in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode_snapshot(&body);
        let mut framed = Vec::new();
        framed.extend_from_slice(b"KPST");
        framed.extend_from_slice(&SNAPSHOT_VERSION.to_be_bytes());
        framed.extend_from_slice(&crc32c::crc32c(&body).to_be_bytes());
        framed.extend_from_slice(&body);
        if let Ok(table) = decode_snapshot(&framed) {
            prop_assert_eq!(table.snapshot(), framed);
        }
    }
}

#[test]
fn snapshot_files_are_written_listed_pruned_and_removed() {
    let mut s = MemStorage::new();
    let mut t = ProducerStateTable::new(Offset(0));
    for i in 0..4 {
        produce(&mut t, 1, 0, i, 1).unwrap();
        assert_eq!(write_snapshot(&mut s, &t).unwrap(), t.end());
    }
    assert_eq!(
        list_snapshots(&s).unwrap(),
        vec![Offset(1), Offset(2), Offset(3), Offset(4)]
    );
    assert_eq!(read_snapshot(&s, Offset(4)).unwrap(), Ok(t.clone()));
    assert_eq!(prune_snapshots(&mut s, 3).unwrap(), 1);
    assert_eq!(
        remove_snapshots_above(&mut s, Offset(2)).unwrap(),
        vec![Offset(3), Offset(4)]
    );
    assert_eq!(list_snapshots(&s).unwrap(), vec![Offset(2)]);
    assert_eq!(remove_all_snapshots(&mut s).unwrap(), 1);
    assert!(s.list().unwrap().is_empty(), "no temporary files left");
}

/// Loading skips (and removes) snapshots above the log end and corrupt ones, falling back to
/// older snapshots. Reference: Kafka ProducerStateManager.truncateAndReload, loadFromSnapshot.
#[test]
fn load_falls_back_past_corrupt_and_future_snapshots() {
    let mut s = MemStorage::new();
    let mut t = ProducerStateTable::new(Offset(0));
    let mut tables = Vec::new();
    for i in 0..4 {
        produce(&mut t, 1, 0, i, 1).unwrap();
        write_snapshot(&mut s, &t).unwrap();
        tables.push(t.clone());
    }
    let newest = snapshot_file_name(Offset(3));
    s.flip_bit(&newest, 30, 1).unwrap();
    let interrupted = format!("{}.tmp", snapshot_file_name(Offset(5)));
    s.create(&interrupted).unwrap();
    let (loaded, report) = load(&mut s, Offset(0), Offset(3)).unwrap();
    assert_eq!(loaded, tables[1]);
    assert_eq!(report.snapshot, Some(Offset(2)));
    assert_eq!(report.removed_above_end, vec![Offset(4)]);
    assert_eq!(report.removed_corrupt.len(), 1);
    assert_eq!(list_snapshots(&s).unwrap(), vec![Offset(1), Offset(2)]);
    assert!(
        !s.list().unwrap().contains(&interrupted),
        "temporary file removed"
    );
    // A log start past every snapshot: replay starts at the log start.
    let (loaded, _) = load(&mut s, Offset(10), Offset(20)).unwrap();
    assert_eq!(loaded.end(), Offset(10));
}

fn idempotent_batch(pid: i64, epoch: i16, seq: i32, records: usize) -> crate::batch::Batch {
    let mut b = BatchBuilder::new(Compression::None).idempotent(ProducerId(pid), epoch, seq);
    for i in 0..records {
        b = b.record(NOW + i as i64, Some(b"k"), Some(b"v"));
    }
    b.build().unwrap()
}

/// The partition's write path over a real log: check, append, record.
fn append(
    log: &mut Log<MemStorage>,
    table: &mut ProducerStateTable,
    pid: i64,
    seq: i32,
    records: usize,
) {
    let batch = idempotent_batch(pid, 0, seq, records);
    assert_eq!(table.check(&batch.header()), Ok(ProducerCheck::Append));
    let info = log.append(NOW, batch.clone(), LeaderEpoch(0)).unwrap();
    let mut stamped = batch.header();
    stamped.base_offset = info.base_offset;
    table.record(&stamped);
    assert_eq!(table.end(), log.end());
}

/// After a crash, state rebuilt from the latest snapshot plus the log equals the state before
/// the crash for everything the log kept. Reference: Kafka LogLoader / ProducerStateManager
/// (snapshot, then replay of the log after it).
#[test]
fn rebuild_after_crash_equals_state_before() {
    for seed in 0..40 {
        let mut rng = StdRng::seed_from_u64(seed);
        let config = LogConfig {
            segment_bytes_max: 512,
            ..LogConfig::default()
        };
        let mut log = Log::open(MemStorage::new(), config.clone(), NOW).unwrap();
        let mut snaps = MemStorage::new();
        let mut table = ProducerStateTable::new(log.end());
        let mut next_seq: BTreeMap<i64, i32> = BTreeMap::new();
        // The table after each durable prefix, by log end offset.
        let mut history = BTreeMap::new();
        history.insert(log.end(), table.clone());
        for step in 0..30u32 {
            let pid = (step % 3) as i64;
            let records = 1 + (step as usize * 7 + seed as usize) % 4;
            let seq = next_seq.entry(pid).or_insert(0);
            append(&mut log, &mut table, pid, *seq, records);
            *seq += records as i32;
            history.insert(log.end(), table.clone());
            if step % 4 == 3 {
                log.sync().unwrap();
            }
            if step % 9 == 8 {
                log.sync().unwrap();
                write_snapshot(&mut snaps, &table).unwrap();
            }
        }
        let durable = log.durable_end();
        let mut storage = log.into_storage();
        storage.crash(&mut rng);
        snaps.crash(&mut rng);
        let log = Log::open(storage, config, NOW).unwrap();
        assert!(
            log.end() >= durable,
            "seed {seed}: the log kept what it synced"
        );
        let (rebuilt, report) = recover(&mut snaps, &log).unwrap();
        assert!(report.snapshot.is_some(), "seed {seed}");
        assert_eq!(
            Some(&rebuilt),
            history.get(&log.end()),
            "seed {seed}: rebuilt state at {} equals the state before",
            log.end()
        );
    }
}

/// After a follower truncates its log, recovering gives the state of the shorter log, and
/// snapshots above the truncation point are gone. Reference: Kafka
/// ProducerStateManager.truncateAndReload.
#[test]
fn recover_after_truncation_equals_state_of_the_prefix() {
    let mut log = Log::open(MemStorage::new(), LogConfig::default(), NOW).unwrap();
    let mut snaps = MemStorage::new();
    let mut table = ProducerStateTable::new(log.end());
    let mut states = vec![table.clone()];
    for i in 0..10 {
        append(&mut log, &mut table, i % 2, (i / 2) as i32 * 2, 2);
        states.push(table.clone());
        if i % 3 == 2 {
            log.sync().unwrap();
            write_snapshot(&mut snaps, &table).unwrap();
        }
    }
    log.sync().unwrap();
    let end = log.truncate_to(Offset(9)).unwrap();
    assert_eq!(end, Offset(8));
    let (rebuilt, report) = recover(&mut snaps, &log).unwrap();
    assert_eq!(rebuilt, states[4]);
    assert_eq!(report.snapshot, Some(Offset(6)));
    assert!(list_snapshots(&snaps).unwrap().iter().all(|&o| o <= end));
    // The leader's next batch from producer 0 continues from the surviving prefix.
    let mut table = rebuilt;
    append(&mut log, &mut table, 0, 4, 1);
}

// --- Property test against a simple model -------------------------------------------------

/// The model: every batch each producer ever wrote in its current epoch (no cache bound), and
/// the rules written from Kafka's description rather than from the table's code.
/// A model batch: first sequence, last sequence, base offset, last offset.
type ModelBatch = (i32, i32, i64, i64);

#[derive(Default, Clone)]
struct Model {
    /// Producer id -> (epoch, every batch of that epoch).
    producers: BTreeMap<i64, (i16, Vec<ModelBatch>)>,
}

impl Model {
    fn check(&self, pid: i64, epoch: i16, first: i32, count: i32) -> Result<ProducerCheck, i16> {
        if pid < 0 {
            return Ok(ProducerCheck::Append);
        }
        if first < 0 {
            return Err(87);
        }
        let last = ((first as i64 + count as i64 - 1) % (1i64 << 31)) as i32;
        let Some((cur_epoch, batches)) = self.producers.get(&pid) else {
            return Ok(ProducerCheck::Append);
        };
        if epoch == *cur_epoch {
            let recent = &batches[batches.len().saturating_sub(5)..];
            if let Some(b) = recent.iter().find(|b| b.0 == first && b.1 == last) {
                return Ok(ProducerCheck::Duplicate {
                    base_offset: Offset(b.2),
                    last_offset: Offset(b.3),
                });
            }
        }
        if epoch < *cur_epoch {
            return Err(47);
        }
        if epoch > *cur_epoch {
            return if first == 0 {
                Ok(ProducerCheck::Append)
            } else {
                Err(45)
            };
        }
        let prev_last = batches.last().expect("nonempty").1 as i64;
        let expected = ((prev_last + 1) % (1i64 << 31)) as i32;
        if first == expected {
            Ok(ProducerCheck::Append)
        } else {
            Err(45)
        }
    }

    fn record(&mut self, pid: i64, epoch: i16, first: i32, count: i32, base: i64) {
        let last = ((first as i64 + count as i64 - 1) % (1i64 << 31)) as i32;
        let entry = self.producers.entry(pid).or_insert((epoch, Vec::new()));
        if entry.0 != epoch {
            *entry = (epoch, Vec::new());
        }
        entry.1.push((first, last, base, base + count as i64 - 1));
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// A client batch: `seq_choice` picks the next sequence, a recent one (a retry), 0, or a
    /// random one.
    Produce {
        pid: i64,
        epoch: i16,
        seq_choice: u8,
        random_seq: i32,
        count: i32,
    },
    /// Snapshot the table now.
    Snapshot,
    /// Rebuild from the last snapshot plus the batches after it, and compare.
    Rebuild,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (-1i64..4, 0i16..3, 0u8..5, any::<i32>(), 1i32..4).prop_map(
            |(pid, epoch, seq_choice, random_seq, count)| Op::Produce {
                pid,
                epoch,
                seq_choice,
                random_seq,
                count
            }
        ),
        1 => Just(Op::Snapshot),
        1 => Just(Op::Rebuild),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The table agrees with the model on every client batch, and a table rebuilt from a
    /// snapshot and the log after it equals the live table.
    #[test]
    fn table_matches_model_and_rebuilds_exactly(ops in proptest::collection::vec(op(), 1..120)) {
        let mut table = ProducerStateTable::new(Offset(0));
        let mut model = Model::default();
        let mut log: Vec<BatchHeader> = Vec::new();
        let mut snapshot: Option<Vec<u8>> = None;
        for op in ops {
            match op {
                Op::Produce { pid, epoch, seq_choice, random_seq, count } => {
                    let next = model.producers.get(&pid).map(|(_, b)| {
                        next_sequence(b.last().expect("nonempty").1)
                    });
                    let recent = model.producers.get(&pid).and_then(|(_, b)| {
                        b.iter().rev().nth(random_seq.unsigned_abs() as usize % 6).map(|b| b.0)
                    });
                    let seq = match seq_choice {
                        0 | 1 => next.unwrap_or(0),
                        2 => recent.unwrap_or(0),
                        3 => 0,
                        _ => random_seq,
                    };
                    // A retry must carry the same record count to be an exact duplicate.
                    let count = match (seq_choice, model.producers.get(&pid)) {
                        (2, Some((_, b))) => b
                            .iter()
                            .find(|b| b.0 == seq)
                            .map(|b| (b.3 - b.2 + 1) as i32)
                            .unwrap_or(count),
                        _ => count,
                    };
                    let h = header(pid, epoch, seq, count, table.end().0);
                    let got = table.check(&h).map_err(|e| e.code());
                    let want = model.check(pid, epoch, seq, count);
                    prop_assert_eq!(got, want, "pid {} epoch {} seq {} count {}", pid, epoch, seq, count);
                    if got == Ok(ProducerCheck::Append) {
                        table.record(&h);
                        if pid >= 0 {
                            model.record(pid, epoch, seq, count, h.base_offset.0);
                        }
                        log.push(h);
                    }
                }
                Op::Snapshot => snapshot = Some(table.snapshot()),
                Op::Rebuild => {
                    let mut rebuilt = match &snapshot {
                        Some(bytes) => decode_snapshot(bytes).expect("own snapshot decodes"),
                        None => ProducerStateTable::new(Offset(0)),
                    };
                    let from = rebuilt.end();
                    for h in log.iter().filter(|h| h.base_offset >= from) {
                        rebuilt.record(h);
                    }
                    prop_assert_eq!(&rebuilt, &table);
                }
            }
            for (_, entry) in table.producers() {
                prop_assert!((1..=BATCHES_RETAINED_MAX).contains(&entry.batches().len()));
            }
        }
        prop_assert_eq!(decode_snapshot(&table.snapshot()), Ok(table));
    }
}

/// The error codes are Kafka's (checked against kafka-protocol's table, generated from
/// Errors.java).
#[test]
fn error_codes_match_kafka() {
    use kafka_protocol::error::ResponseError as K;
    let pid = ProducerId(1);
    let cases = [
        (
            ProducerError::OutOfOrderSequence {
                producer_id: pid,
                expected: 0,
                got: 1,
            },
            K::OutOfOrderSequenceNumber,
        ),
        (
            ProducerError::InvalidProducerEpoch {
                producer_id: pid,
                current: 1,
                got: 0,
            },
            K::InvalidProducerEpoch,
        ),
        (
            ProducerError::InvalidSequence {
                producer_id: pid,
                sequence: -1,
            },
            K::InvalidRecord,
        ),
    ];
    for (ours, kafka) in cases {
        assert_eq!(ours.code(), kafka.code(), "{ours}");
    }
}
