//! A model of the log for property tests and the `log_ops` fuzz target: runs a sequence of
//! operations, crashes included, against [`Log`] over [`MemStorage`] and against a plain vector
//! of batches, and panics at the first disagreement.
//!
//! What it checks after every step:
//! - nothing durable is ever lost: after a crash and recovery the log holds at least every
//!   batch that a returned `sync` covered, and what it holds is a prefix of what was written;
//! - nothing invalid is ever read: every batch a read returns is byte-identical to the batch
//!   the model wrote at that offset;
//! - the log's invariants ([`Log::check_invariants`]) hold.

use bytes::Bytes;
use rand::{rngs::StdRng, SeedableRng};

use super::{Log, LogConfig, LogError};
use crate::batch::{Batch, BatchBuilder, Compression};
use crate::storage::MemStorage;
use crate::types::{LeaderEpoch, Offset};

/// One step of a model run.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum LogOp {
    /// Append a batch of `records % 8 + 1` records with values of `value_bytes % 200` bytes.
    Append {
        records: u8,
        value_bytes: u16,
        new_epoch: bool,
    },
    /// Make every append so far durable.
    Sync,
    /// Lose power (seeded) and reopen: recovery runs.
    Crash { seed: u64 },
    /// Close cleanly (sync, checkpoint) and reopen.
    Reopen,
    /// Truncate to the offset at `at` per mille of the log.
    Truncate { at: u16 },
    /// Read from the offset at `at` per mille of the log, with `max_bytes`.
    Read { at: u16, max_bytes: u16 },
    /// Advance the clock by `ms` and apply retention up to the durable end.
    Retention { ms: u32 },
    /// Flip a bit in a segment's durable bytes.
    BitRot { segment: u8, position: u32 },
}

/// Runs `ops` against the log and the model; panics on the first violation.
pub fn run(ops: &[LogOp]) {
    let config = LogConfig {
        segment_bytes_max: 2048,
        segment_ms_max: 60_000,
        retention_bytes_max: 8192,
        retention_ms_max: 600_000,
        index_interval_bytes: 256,
        ..LogConfig::default()
    };
    let mut now_ms = 1_000_000i64;
    let mut log = Some(Log::open(MemStorage::new(), config.clone(), now_ms).expect("open empty"));
    // Every batch written and not truncated, in offset order, as the log stamped it.
    let mut model: Vec<Batch> = Vec::new();
    // How many of `model`'s batches a returned sync made durable.
    let mut durable = 0usize;
    // Whether a bit flip may have damaged data, which relaxes the durability check.
    let mut rotted = false;
    let mut epoch = LeaderEpoch(0);
    let mut value = 0u64;

    for op in ops {
        let l = log.as_mut().expect("log is open");
        match *op {
            LogOp::Append {
                records,
                value_bytes,
                new_epoch,
            } => {
                if new_epoch {
                    epoch = LeaderEpoch(epoch.0 + 1);
                }
                let mut builder = BatchBuilder::new(Compression::None);
                for _ in 0..records % 8 + 1 {
                    value += 1;
                    let mut v = value.to_be_bytes().to_vec();
                    v.resize(8 + (value_bytes % 200) as usize, b'v');
                    builder = builder.record(now_ms, Some(&value.to_be_bytes()), Some(&v));
                }
                let batch = builder.build().expect("build");
                let info = l
                    .append(now_ms, batch.clone(), epoch)
                    .expect("append to memory");
                let mut stamped = batch;
                stamped.stamp(info.base_offset, epoch);
                model.push(stamped);
            }
            LogOp::Sync => {
                l.sync().expect("sync");
                durable = model.len();
            }
            LogOp::Crash { seed } => {
                let mut storage = log.take().expect("open").into_storage();
                storage.crash(&mut StdRng::seed_from_u64(seed));
                let reopened = Log::open(storage, config.clone(), now_ms)
                    .expect("recovery never fails on damaged data");
                reconcile(&reopened, &mut model, &mut durable, rotted);
                log = Some(reopened);
            }
            LogOp::Reopen => {
                l.sync().expect("sync");
                l.checkpoint().expect("checkpoint");
                durable = model.len();
                let storage = log.take().expect("open").into_storage();
                let reopened = Log::open(storage, config.clone(), now_ms).expect("reopen");
                reconcile(&reopened, &mut model, &mut durable, rotted);
                log = Some(reopened);
            }
            LogOp::Truncate { at } => {
                let target = pick(l, at);
                let end_before = l.end();
                let new_end = l.truncate_to(target).expect("truncate");
                model.retain(|b| b.last_offset() < target);
                let expected = model
                    .last()
                    .map_or(l.log_start(), |b| b.next_offset())
                    .max(l.log_start());
                assert_eq!(
                    new_end, expected,
                    "truncate_to({target}) removes the batch containing it"
                );
                if target < end_before {
                    // The truncation is synced, and with it everything before it.
                    durable = model.len();
                }
            }
            LogOp::Read { at, max_bytes } => {
                let from = pick(l, at);
                let max_bytes = max_bytes as usize;
                // To the log end (a follower's read), and to a batch boundary below it (a
                // consumer's, at the high watermark), picked from the same inputs.
                let boundaries: Vec<Offset> = model
                    .iter()
                    .map(Batch::next_offset)
                    .filter(|&o| o > from)
                    .collect();
                let below = boundaries
                    .get(max_bytes % 5)
                    .copied()
                    .unwrap_or(l.end())
                    .min(l.end());
                for upper in [l.end(), below] {
                    match l.read(from, max_bytes, upper) {
                        Ok(batches) => {
                            check_read(&model, l, from, &batches, max_bytes, upper);
                            let (records, n) = l
                                .read_records(from, max_bytes, upper)
                                .expect("read_records reads what read read");
                            let concat: Vec<u8> =
                                batches.iter().flat_map(|b| b.bytes().to_vec()).collect();
                            assert_eq!(n, batches.len(), "read_records counts the batches");
                            assert_eq!(
                                &records[..],
                                &concat[..],
                                "read_records returns the batches' bytes one after another"
                            );
                        }
                        Err(LogError::Corrupt { .. }) if rotted => {}
                        Err(e) => panic!("read({from}, {max_bytes}, {upper}) failed: {e}"),
                    }
                }
            }
            LogOp::Retention { ms } => {
                now_ms += ms as i64;
                let upper = l.durable_end();
                l.apply_retention(now_ms, upper).expect("retention");
                assert!(
                    l.log_start() <= upper,
                    "retention never passes the bound it was given"
                );
                let gone = model
                    .iter()
                    .take_while(|b| b.last_offset() < l.log_start())
                    .count();
                model.drain(..gone);
                durable = durable.saturating_sub(gone);
            }
            LogOp::BitRot { segment, position } => {
                let bases = l.segment_bases();
                let base = bases[segment as usize % bases.len()];
                let file = format!("{:020}.log", base.0);
                let storage = log.take().expect("open").into_storage();
                let mut storage = storage;
                let len = crate::storage::Storage::len(&storage, &file).unwrap_or(0);
                if len > 0 {
                    // Any byte, the fields outside the CRC (baseOffset,
                    // partitionLeaderEpoch) included: the log must catch them all.
                    let pos = position as u64 % len;
                    storage
                        .flip_bit(&file, pos as usize, (position % 8) as u8)
                        .expect("flip");
                    rotted = true;
                }
                // Reopen without a crash: damaged bytes must be found (by recovery or on read).
                let reopened =
                    Log::open(storage, config.clone(), now_ms).expect("open after bit rot");
                reconcile(&reopened, &mut model, &mut durable, rotted);
                log = Some(reopened);
            }
        }
        let l = log.as_ref().expect("open");
        l.check_invariants();
        assert_eq!(
            l.end(),
            model.last().map_or(l.end(), |b| b.next_offset()),
            "log end offset matches the model"
        );
    }
}

/// The offset `at` per mille of the way through the log.
fn pick(log: &Log<MemStorage>, at: u16) -> Offset {
    let span = log.end().0 - log.log_start().0;
    log.log_start().plus(span * (at % 1001) as i64 / 1000)
}

/// After recovery: the log holds a prefix of the model that includes every durable batch
/// (unless bit rot destroyed one), and its bytes equal the model's. The model shrinks to it.
fn reconcile(log: &Log<MemStorage>, model: &mut Vec<Batch>, durable: &mut usize, rotted: bool) {
    let mut kept = 0usize;
    let mut from = log.log_start();
    assert!(
        model
            .first()
            .is_none_or(|b| b.base_offset() == log.log_start()),
        "recovery keeps the log start offset"
    );
    while from < log.end() {
        let batches = match log.read(from, usize::MAX, log.end()) {
            Ok(b) => b,
            Err(LogError::Corrupt { .. }) if rotted => break,
            Err(e) => panic!("read after recovery failed: {e}"),
        };
        assert!(!batches.is_empty(), "a read below the log end returns data");
        for b in batches {
            let expected = model.get(kept).unwrap_or_else(|| {
                panic!(
                    "recovered batch at {} that was never written",
                    b.base_offset()
                )
            });
            assert_eq!(
                b.bytes(),
                expected.bytes(),
                "recovered batch at {} differs from what was written",
                b.base_offset()
            );
            from = b.next_offset();
            kept += 1;
        }
    }
    if !rotted {
        assert!(
            kept >= *durable,
            "recovery lost durable data: kept {kept} batches of {} durable",
            *durable
        );
    }
    if log.end() > from {
        // Unreadable (rotted) data remains past `from`: the model keeps its batches so that
        // later reads are still compared byte for byte.
        kept = model
            .iter()
            .take_while(|b| b.base_offset() < log.end())
            .count();
    }
    model.truncate(kept);
    *durable = (*durable).min(kept);
}

/// A read returns whole batches, the first containing `from`, within `max_bytes` (at least
/// one), each identical to the model's.
fn check_read(
    model: &[Batch],
    log: &Log<MemStorage>,
    from: Offset,
    batches: &[Batch],
    max_bytes: usize,
    upper: Offset,
) {
    let within = model
        .iter()
        .find(|m| m.last_offset() >= from)
        .filter(|m| m.next_offset() <= upper);
    let Some(first) = within else {
        assert!(
            batches.is_empty(),
            "nothing to read at {from} below {upper}: read {} batches",
            batches.len()
        );
        return;
    };
    assert!(
        !batches.is_empty(),
        "a read of {from} below {upper} returns at least one batch"
    );
    assert_eq!(
        batches[0].base_offset(),
        first.base_offset(),
        "first batch contains {from}"
    );
    let total: usize = batches.iter().map(Batch::size).sum();
    assert!(
        batches.len() == 1 || total <= max_bytes,
        "reads stay within max_bytes after the first batch"
    );
    for b in batches {
        assert!(b.next_offset() <= upper, "read a batch ending past {upper}");
        let expected = model
            .iter()
            .find(|m| m.base_offset() == b.base_offset())
            .expect("read a batch the model has");
        assert_eq!(
            b.bytes(),
            expected.bytes(),
            "read bytes differ from what was written at {}",
            b.base_offset()
        );
    }
    // And no fewer than allowed: the batch after the last one read is in the next segment,
    // ends past `upper`, or would pass `max_bytes`.
    let last = batches.last().expect("not empty");
    for w in batches.windows(2) {
        assert_eq!(
            w[0].next_offset(),
            w[1].base_offset(),
            "batches follow each other"
        );
    }
    if let Some(next) = model.iter().find(|m| m.base_offset() == last.next_offset()) {
        let stopped = log.segment_bases().contains(&next.base_offset())
            || next.next_offset() > upper
            || total >= max_bytes
            || total + next.size() > max_bytes;
        assert!(
            stopped,
            "read({from}, {max_bytes}, {upper}) stopped at {} for no reason",
            next.base_offset()
        );
    }
}

/// The `segment_recovery` fuzz target's logic: arbitrary bytes as the only segment file.
/// Recovery never fails or panics, keeps a prefix of the bytes, and that prefix is exactly the
/// valid batches with dense offsets from zero.
pub fn recover_segment(data: &[u8]) {
    use crate::storage::Storage;
    let name = "00000000000000000000.log";
    let mut storage = MemStorage::new();
    storage.create(name).expect("create");
    storage.append(name, data).expect("append");
    storage.sync(name).expect("sync");
    let log =
        Log::open(storage, LogConfig::default(), 0).expect("recovery never fails on damaged data");
    let kept = crate::storage::read_all(log.storage(), name).expect("segment still there");
    assert!(
        data.starts_with(&kept),
        "recovery keeps a prefix of the segment"
    );
    let mut from = Offset::ZERO;
    let mut bytes = 0;
    while from < log.end() {
        let batches = log
            .read(from, usize::MAX, log.end())
            .expect("everything recovery kept is readable");
        for b in &batches {
            assert_eq!(b.base_offset(), from, "offsets are dense");
            from = b.next_offset();
            bytes += b.size();
        }
    }
    assert_eq!(
        bytes,
        kept.len(),
        "the kept bytes are exactly the valid batches"
    );
    let report = log.recovery_report();
    assert_eq!(report.bytes_truncated as usize, data.len() - kept.len());
    assert_eq!(
        report.corruption.is_some(),
        kept.len() < data.len(),
        "a cut is always explained"
    );
}

/// A batch of `n` records with small values, for tests.
pub fn small_batch(n: usize, timestamp: i64) -> Batch {
    let mut builder = BatchBuilder::new(Compression::None);
    for i in 0..n {
        builder = builder.record(
            timestamp,
            Some(format!("k{i}").as_bytes()),
            Some(&Bytes::from(vec![b'x'; 32])),
        );
    }
    builder.build().expect("build")
}
