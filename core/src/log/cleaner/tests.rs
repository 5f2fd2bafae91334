//! The cleaner's rules, each pinned to Kafka's `LogCleaner` behaviour (Reference: Kafka's
//! `LogCleanerTest`, KIP-534 for tombstone horizons), its crash safety at every storage step,
//! and a property test against a model of the last value per key.

use std::collections::BTreeMap;

use proptest::prelude::*;
use rand::{rngs::StdRng, SeedableRng};

use super::*;
use crate::batch::{BatchBuilder, Compression, EndTxnMarker};
use crate::log::LogConfig;
use crate::storage::MemStorage;

const NOW: i64 = 1_700_000_000_000;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 400,
        index_interval_bytes: 128,
        ..LogConfig::default()
    }
}

fn eager() -> CleanerConfig {
    CleanerConfig {
        dirty_ratio_min: 0.0,
        delete_retention_ms: 1000,
        ..CleanerConfig::default()
    }
}

fn inputs(now_ms: i64) -> CleanInputs {
    CleanInputs {
        now_ms,
        producers_last: BTreeMap::new(),
        tombstones_below: None,
    }
}

fn keyed(key: &str, value: Option<&str>, ts: i64) -> Batch {
    BatchBuilder::new(Compression::None)
        .record(ts, Some(key.as_bytes()), value.map(str::as_bytes))
        .build()
        .unwrap()
}

/// Appends `key=value` records one per batch, syncing each, and rolls the last segment so that
/// everything written is closed.
fn write<S: Storage>(log: &mut Log<S>, records: &[(&str, Option<&str>)], now_ms: i64) {
    for (key, value) in records {
        log.append(now_ms, keyed(key, *value, now_ms), LeaderEpoch(0))
            .unwrap();
        log.sync().unwrap();
    }
}

fn close_active<S: Storage>(log: &mut Log<S>, now_ms: i64) {
    let end = log.end();
    if log.active().base < end {
        log.roll(now_ms, end).unwrap();
        log.sync().unwrap();
    }
}

/// Every batch the log serves, in order.
fn all_batches<S: Storage>(log: &Log<S>) -> Vec<Batch> {
    let mut out: Vec<Batch> = Vec::new();
    let mut from = log.log_start();
    while from < log.end() {
        let batches = log.read(from, usize::MAX, log.end()).unwrap();
        from = batches
            .last()
            .expect("a read below the end returns a batch")
            .next_offset();
        out.extend(batches);
    }
    out
}

/// Every record the log serves, as (offset, key, value).
fn contents<S: Storage>(log: &Log<S>) -> Vec<(Offset, String, Option<String>)> {
    let mut out = Vec::new();
    {
        for batch in all_batches(log).iter().filter(|b| !b.is_control()) {
            for r in batch.records().unwrap() {
                out.push((
                    r.offset,
                    String::from_utf8(r.key.unwrap().to_vec()).unwrap(),
                    r.value.map(|v| String::from_utf8(v.to_vec()).unwrap()),
                ));
            }
        }
    }
    out
}

fn versions(keys: usize, n: usize) -> Vec<(String, String)> {
    (0..n)
        .flat_map(|v| (0..keys).map(move |k| (format!("k{k}"), format!("v{v}"))))
        .collect()
}

fn write_owned<S: Storage>(log: &mut Log<S>, records: &[(String, String)], now_ms: i64) {
    let refs: Vec<(&str, Option<&str>)> = records
        .iter()
        .map(|(k, v)| (k.as_str(), Some(v.as_str())))
        .collect();
    write(log, &refs, now_ms);
}

/// Kafka's `LogCleanerTest.testCleanSegments`: the latest value per key survives, at its own
/// offset, and the log end and start do not move.
#[test]
fn keeps_the_latest_record_per_key_at_its_offset() {
    let mut log = Log::open(MemStorage::new(), config(), NOW).unwrap();
    write_owned(&mut log, &versions(5, 10), NOW);
    close_active(&mut log, NOW);
    let (end, size) = (log.end(), log.size_bytes());
    let stats = log
        .clean(&eager(), log.end(), &inputs(NOW))
        .unwrap()
        .expect("due");
    assert_eq!(stats.records_removed, 45);
    assert_eq!(log.end(), end);
    // Smaller, though not by much here: each record was its own batch, and each dropped batch
    // leaves an empty batch (its header) over its offsets.
    assert!(log.size_bytes() < size, "{} of {size}", log.size_bytes());
    let got = contents(&log);
    let want: Vec<_> = (0..5)
        .map(|k| (Offset(45 + k), format!("k{k}"), Some("v9".to_string())))
        .collect();
    assert_eq!(got, want);
    // The cleaned log recovers as it is: density and epochs hold for cleaned segments.
    let log = Log::open(log.into_storage(), config(), NOW).unwrap();
    assert_eq!(log.recovery_report().corruption, None);
    assert_eq!(contents(&log), want);
}

/// The active segment and everything at or above the bound (high watermark, last stable
/// offset) are never touched (Kafka: `firstUncleanableDirtyOffset`).
#[test]
fn never_cleans_the_active_segment_nor_above_the_bound() {
    let mut log = Log::open(MemStorage::new(), config(), NOW).unwrap();
    write_owned(&mut log, &versions(2, 10), NOW);
    let bases = log.segment_bases();
    assert!(bases.len() > 3);
    let bound = bases[2];
    log.clean(&eager(), bound, &inputs(NOW))
        .unwrap()
        .expect("due");
    let got = contents(&log);
    let above: Vec<_> = got.iter().filter(|r| r.0 >= bound).collect();
    assert_eq!(
        above.len() as i64,
        log.end().0 - bound.0,
        "nothing above the bound is removed"
    );
    let below: Vec<_> = got.iter().filter(|r| r.0 < bound).collect();
    assert_eq!(below.len(), 2, "one per key below the bound");
    // With the bound at the log end, the active segment still stays as it was.
    let active = *log.segment_bases().last().unwrap();
    log.clean(&eager(), log.end(), &inputs(NOW)).unwrap();
    let active_records = contents(&log).iter().filter(|r| r.0 >= active).count();
    assert_eq!(active_records as i64, log.end().0 - active.0);
}

/// `min.compaction.lag.ms`: a segment with a record younger than the lag is not cleaned, nor
/// any after it.
#[test]
fn min_compaction_lag_keeps_young_segments() {
    let mut log = Log::open(MemStorage::new(), config(), NOW).unwrap();
    write_owned(&mut log, &versions(2, 6), NOW);
    write_owned(&mut log, &versions(2, 6), NOW + 10_000);
    close_active(&mut log, NOW + 10_000);
    let lagged = CleanerConfig {
        compaction_lag_ms_min: 5_000,
        ..eager()
    };
    log.clean(&lagged, log.end(), &inputs(NOW + 11_000))
        .unwrap()
        .expect("the old segments are due");
    let got = contents(&log);
    assert_eq!(got.iter().filter(|r| r.0 >= Offset(12)).count(), 12);
    assert!(got.iter().filter(|r| r.0 < Offset(12)).count() < 12);
}

/// Tombstones (KIP-534): the first cleaning removes older values of the key and keeps the
/// tombstone with a delete horizon; a cleaning after the horizon removes it.
#[test]
fn tombstones_stay_until_delete_retention_after_the_first_cleaning() {
    let mut log = Log::open(MemStorage::new(), config(), NOW).unwrap();
    write(
        &mut log,
        &[
            ("a", Some("1")),
            ("b", Some("1")),
            ("a", None),
            ("b", Some("2")),
        ],
        NOW,
    );
    close_active(&mut log, NOW);
    log.clean(&eager(), log.end(), &inputs(NOW))
        .unwrap()
        .expect("due");
    let got = contents(&log);
    assert_eq!(
        got,
        vec![
            (Offset(2), "a".into(), None),
            (Offset(3), "b".into(), Some("2".into()))
        ]
    );
    // Not dirty and the horizon not reached: nothing to do.
    assert_eq!(
        log.clean(&eager(), log.end(), &inputs(NOW + 999)).unwrap(),
        None
    );
    let stats = log
        .clean(&eager(), log.end(), &inputs(NOW + 1000))
        .unwrap()
        .expect("the horizon makes it due");
    assert_eq!(stats.tombstones_removed, 1);
    assert_eq!(
        contents(&log),
        vec![(Offset(3), "b".into(), Some("2".into()))]
    );
    // Reading from offset 0 still works: the dropped offsets are covered by an empty batch.
    let batches = all_batches(&log);
    assert_eq!(batches[0].base_offset(), Offset(0));
    assert!(batches
        .windows(2)
        .all(|w| w[0].next_offset() == w[1].base_offset()));
    assert_eq!(batches.last().unwrap().next_offset(), log.end());
}

/// Kafka's `buildRetainedRecordsInto`: a rebuilt batch keeps base offset, last offset delta,
/// producer id, epoch and base sequence, and the last batch of a live producer is kept empty
/// (`RETAIN_EMPTY`) so its sequence survives; the producer state rebuilt from the cleaned log
/// has the same last sequence.
#[test]
fn idempotent_batches_keep_their_producer_fields() {
    let mut log = Log::open(MemStorage::new(), config(), NOW).unwrap();
    let pid = ProducerId(7);
    let b0 = BatchBuilder::new(Compression::None)
        .idempotent(pid, 3, 0)
        .record(NOW, Some(b"a"), Some(b"1"))
        .record(NOW, Some(b"b"), Some(b"1"))
        .record(NOW, Some(b"c"), Some(b"1"))
        .build()
        .unwrap();
    let b1 = BatchBuilder::new(Compression::Gzip)
        .idempotent(pid, 3, 3)
        .record(NOW, Some(b"a"), Some(b"2"))
        .record(NOW, Some(b"c"), Some(b"2"))
        .build()
        .unwrap();
    log.append(NOW, b0, LeaderEpoch(0)).unwrap();
    log.append(NOW, b1, LeaderEpoch(0)).unwrap();
    write(&mut log, &[("a", Some("3")), ("c", Some("3"))], NOW);
    close_active(&mut log, NOW);
    let mut before = crate::producer::ProducerStateTable::new(Offset::ZERO);
    before.replay(&log).unwrap();
    let mut ins = inputs(NOW);
    ins.producers_last.insert(pid, Offset(4));
    log.clean(&eager(), log.end(), &ins).unwrap().expect("due");
    let batches = all_batches(&log);
    let first = &batches[0];
    assert_eq!(first.base_offset(), Offset(0));
    assert_eq!(first.last_offset(), Offset(2));
    assert_eq!((first.producer_id(), first.producer_epoch()), (pid, 3));
    assert_eq!((first.base_sequence(), first.last_sequence()), (0, 2));
    let only_b: Vec<_> = first
        .records()
        .unwrap()
        .into_iter()
        .map(|r| r.offset)
        .collect();
    assert_eq!(only_b, vec![Offset(1)]);
    let retained = &batches[1];
    assert_eq!(
        (retained.base_offset(), retained.last_offset()),
        (Offset(3), Offset(4))
    );
    assert_eq!(
        retained.records_count(),
        0,
        "kept empty for the producer's sequence"
    );
    assert_eq!(retained.last_sequence(), 4);
    let mut after = crate::producer::ProducerStateTable::new(Offset::ZERO);
    after.replay(&log).unwrap();
    assert_eq!(
        after.entry(pid).unwrap().last_seq(),
        before.entry(pid).unwrap().last_seq()
    );
}

fn txn_batch(pid: ProducerId, seq: i32, key: &str, value: &str) -> Batch {
    let mut b = BatchBuilder::new(Compression::None)
        .idempotent(pid, 0, seq)
        .record(NOW, Some(key.as_bytes()), Some(value.as_bytes()));
    b.transactional = true;
    b.build().unwrap()
}

fn marker(pid: ProducerId, commit: bool) -> Batch {
    EndTxnMarker {
        commit,
        coordinator_epoch: 0,
    }
    .batch(pid, 0, NOW)
    .unwrap()
}

/// Transactions: committed records compact like any others; aborted records and records whose
/// marker is past the cleaned range are kept and shadow nothing; markers are kept.
#[test]
fn aborted_and_undecided_transactions_are_kept_and_shadow_nothing() {
    let mut log = Log::open(MemStorage::new(), config(), NOW).unwrap();
    let (p1, p2, p3) = (ProducerId(1), ProducerId(2), ProducerId(3));
    write(&mut log, &[("a", Some("plain")), ("b", Some("plain"))], NOW);
    log.append(NOW, txn_batch(p1, 0, "a", "committed"), LeaderEpoch(0))
        .unwrap();
    log.append(NOW, marker(p1, true), LeaderEpoch(0)).unwrap();
    log.append(NOW, txn_batch(p2, 0, "b", "aborted"), LeaderEpoch(0))
        .unwrap();
    log.append(NOW, marker(p2, false), LeaderEpoch(0)).unwrap();
    log.append(NOW, txn_batch(p3, 0, "b", "open"), LeaderEpoch(0))
        .unwrap();
    log.sync().unwrap();
    close_active(&mut log, NOW);
    log.clean(&eager(), log.end(), &inputs(NOW))
        .unwrap()
        .expect("due");
    let values: Vec<_> = contents(&log)
        .into_iter()
        .map(|r| (r.0, r.2.unwrap_or_default()))
        .collect();
    assert_eq!(
        values,
        vec![
            (Offset(1), "plain".into()),
            (Offset(2), "committed".into()),
            (Offset(4), "aborted".into()),
            (Offset(6), "open".into()),
        ]
    );
    let controls = all_batches(&log).iter().filter(|b| b.is_control()).count();
    assert_eq!(controls, 2);
}

/// A corrupt segment is reported and left as it was (issue 18's "Done when").
#[test]
fn a_corrupt_segment_is_reported_and_left_in_place() {
    let mut log = Log::open(MemStorage::new(), config(), NOW).unwrap();
    write_owned(&mut log, &versions(3, 6), NOW);
    close_active(&mut log, NOW);
    log.checkpoint().unwrap();
    let mut storage = log.into_storage();
    let first = Segment::file_name(Offset(0));
    storage.flip_bit(&first, 70, 3).unwrap();
    let before = storage.list().unwrap();
    let bytes_before = storage::read_all(&storage, &first).unwrap();
    // Reopen trusts the segment below the recovery point (headers only), so the damage stays.
    let mut log = Log::open(storage, config(), NOW).unwrap();
    log.checkpoint().unwrap();
    let err = log.clean(&eager(), log.end(), &inputs(NOW)).unwrap_err();
    assert!(
        matches!(err, LogError::Corrupt { ref file, .. } if *file == first),
        "{err}"
    );
    let storage = log.into_storage();
    assert_eq!(
        storage.list().unwrap(),
        before,
        "no file added, none removed"
    );
    assert_eq!(storage::read_all(&storage, &first).unwrap(), bytes_before);
}

/// A truncated closed segment (shorter than the log knows it) is reported too.
#[test]
fn a_truncated_segment_is_reported() {
    let mut log = Log::open(MemStorage::new(), config(), NOW).unwrap();
    write_owned(&mut log, &versions(3, 6), NOW);
    close_active(&mut log, NOW);
    let first = Segment::file_name(Offset(0));
    let len = log.storage().len(&first).unwrap();
    log.storage_mut().truncate(&first, len - 5).unwrap();
    let err = log.clean(&eager(), log.end(), &inputs(NOW)).unwrap_err();
    assert!(matches!(err, LogError::Corrupt { .. }), "{err}");
}

/// `min.cleanable.dirty.ratio` and `max.compaction.lag.ms` decide when a log is due
/// (Kafka's `LogCleanerManager.grabFilthiestCompactedLog`).
#[test]
fn dirty_ratio_and_max_lag_decide_when_a_log_is_due() {
    let mut log = Log::open(MemStorage::new(), config(), NOW).unwrap();
    write_owned(&mut log, &versions(4, 8), NOW);
    close_active(&mut log, NOW);
    let ratio = CleanerConfig::default();
    log.clean(&ratio, log.end(), &inputs(NOW))
        .unwrap()
        .expect("all dirty");
    // A little more: the dirty share is below one half.
    write_owned(&mut log, &versions(1, 1), NOW);
    close_active(&mut log, NOW);
    let plan = log.plan_clean(&ratio, log.end(), NOW);
    assert!(plan.is_none());
    let lag = CleanerConfig {
        compaction_lag_ms_max: 60_000,
        ..ratio
    };
    assert!(log.plan_clean(&lag, log.end(), NOW + 60_000).is_none());
    let plan = log
        .plan_clean(&lag, log.end(), NOW + 60_001)
        .expect("past the max lag");
    assert!(plan.dirty_ratio() < 0.5 && plan.dirty_bytes > 0);
}

/// A cleaning planned before a retention (or truncation) removed one of its segments is
/// dropped at install, and its files with it: what the concurrent operation did stands.
#[test]
fn a_stale_cleaning_is_dropped_at_install() {
    let mut log = Log::open(MemStorage::new(), config(), NOW).unwrap();
    write_owned(&mut log, &versions(3, 8), NOW);
    close_active(&mut log, NOW);
    let plan = log.plan_clean(&eager(), log.end(), NOW).unwrap();
    let mut storage = log.storage().clone();
    let cleaned = build(&mut storage, plan, &eager(), &inputs(NOW), &mut |_| {}).unwrap();
    // The log and the cleaner share the directory: copy the cleaned files over.
    for name in storage.list().unwrap() {
        if name.ends_with(".cleaned") {
            log.storage_mut().create(&name).unwrap();
            let bytes = storage::read_all(&storage, &name).unwrap();
            log.storage_mut().append(&name, &bytes).unwrap();
            log.storage_mut().sync(&name).unwrap();
        }
    }
    let mut expiring = config();
    expiring.retention_bytes_max = 1;
    log.set_config(expiring);
    assert!(log.apply_retention(NOW, log.end()).unwrap() > 0);
    let kept = contents(&log);
    assert_eq!(log.install_cleaned(cleaned).unwrap(), None);
    assert_eq!(contents(&log), kept);
    assert!(log
        .storage()
        .list()
        .unwrap()
        .iter()
        .all(|n| !n.ends_with(".cleaned")));
}

/// What node does: plan under the lock, build without it while appends and rolls go on, install
/// under the lock. The appends and the segments rolled meanwhile are all there afterwards.
#[test]
fn appends_and_rolls_during_a_cleaning_are_kept() {
    let mut log = Log::open(MemStorage::new(), config(), NOW).unwrap();
    write_owned(&mut log, &versions(3, 8), NOW);
    close_active(&mut log, NOW);
    let plan = log.plan_clean(&eager(), log.end(), NOW).unwrap();
    let cleaned = build(log.storage_mut(), plan, &eager(), &inputs(NOW), &mut |_| {}).unwrap();
    let from = log.end();
    write_owned(&mut log, &versions(3, 4), NOW);
    close_active(&mut log, NOW);
    write(&mut log, &[("after", Some("roll"))], NOW);
    let appended: Vec<_> = contents(&log).into_iter().filter(|r| r.0 >= from).collect();
    assert_eq!(appended.len(), 13);
    log.install_cleaned(cleaned).unwrap().expect("not stale");
    let got = contents(&log);
    assert_eq!(
        got.iter().filter(|r| r.0 < from).count(),
        3,
        "the cleaned part"
    );
    let kept: Vec<_> = got.into_iter().filter(|r| r.0 >= from).collect();
    assert_eq!(kept, appended);
}

/// A truncation between plan and install makes the cleaning stale even where the segments
/// it planned look the same again (the log's generation changed).
#[test]
fn a_truncation_during_a_cleaning_makes_it_stale() {
    let mut log = Log::open(MemStorage::new(), config(), NOW).unwrap();
    write_owned(&mut log, &versions(3, 8), NOW);
    close_active(&mut log, NOW);
    let plan = log.plan_clean(&eager(), log.end(), NOW).unwrap();
    let cleaned = build(log.storage_mut(), plan, &eager(), &inputs(NOW), &mut |_| {}).unwrap();
    // A follower's truncation of a diverged suffix, in the active segment only: the planned
    // segments look the same, the generation does not.
    write(&mut log, &[("diverged", Some("x"))], NOW);
    let end = log.end();
    log.truncate_to(Offset(end.0 - 1)).unwrap();
    let before = contents(&log);
    assert_eq!(log.install_cleaned(cleaned).unwrap(), None);
    assert_eq!(contents(&log), before);
}

/// A [`Storage`] that fails every mutation after `budget` of them: the crash points.
struct FailAfter {
    inner: MemStorage,
    budget: u64,
}

impl FailAfter {
    fn spend(&mut self) -> Result<(), StorageError> {
        if self.budget == 0 {
            return Err(StorageError::Io {
                file: "any".into(),
                message: "crashed".into(),
            });
        }
        self.budget -= 1;
        Ok(())
    }
}

impl Storage for FailAfter {
    fn create(&mut self, name: &str) -> Result<(), StorageError> {
        self.spend()?;
        self.inner.create(name)
    }
    fn append(&mut self, name: &str, data: &[u8]) -> Result<(), StorageError> {
        self.spend()?;
        self.inner.append(name, data)
    }
    fn read_at(&self, name: &str, pos: u64, len: usize) -> Result<Bytes, StorageError> {
        self.inner.read_at(name, pos, len)
    }
    fn len(&self, name: &str) -> Result<u64, StorageError> {
        self.inner.len(name)
    }
    fn truncate(&mut self, name: &str, len: u64) -> Result<(), StorageError> {
        self.spend()?;
        self.inner.truncate(name, len)
    }
    fn sync(&mut self, name: &str) -> Result<(), StorageError> {
        self.spend()?;
        self.inner.sync(name)
    }
    fn rename(&mut self, from: &str, to: &str) -> Result<(), StorageError> {
        self.spend()?;
        self.inner.rename(from, to)
    }
    fn remove(&mut self, name: &str) -> Result<(), StorageError> {
        self.spend()?;
        self.inner.remove(name)
    }
    fn list(&self) -> Result<Vec<String>, StorageError> {
        self.inner.list()
    }
}

/// Crash safety: a crash after every number of storage operations of a cleaning (MemStorage's
/// crash model: unsynced data lost, torn or zero-filled) leaves, after recovery, each group of
/// segments either as it was or as cleaned (Kafka too swaps group by group): the records read
/// lie between the cleaned log's and the old log's, so no key loses its latest value, and
/// the log recovers without cutting anything.
#[test]
fn a_crash_at_any_step_leaves_the_old_or_the_new_log() {
    let setup = || {
        let storage = FailAfter {
            inner: MemStorage::new(),
            budget: u64::MAX,
        };
        let mut log = Log::open(storage, config(), NOW).unwrap();
        let mut records = versions(4, 6);
        records.push(("k1".into(), "last".into()));
        write_owned(&mut log, &records, NOW);
        write(&mut log, &[("k2", None)], NOW);
        close_active(&mut log, NOW);
        log.checkpoint().unwrap();
        log
    };
    let old = contents(&setup());
    let new = {
        let mut log = setup();
        log.clean(&eager(), log.end(), &inputs(NOW))
            .unwrap()
            .unwrap();
        contents(&log)
    };
    assert_ne!(old, new);
    let (mut saw_old, mut saw_new) = (false, false);
    for budget in 0.. {
        let mut log = setup();
        log.storage_mut().budget = budget;
        let finished = log.clean(&eager(), log.end(), &inputs(NOW)).is_ok();
        for seed in 0..8 {
            let mut storage = log.storage().inner.clone();
            storage.crash(&mut StdRng::seed_from_u64(seed));
            let reopened = Log::open(storage, config(), NOW).unwrap();
            assert_eq!(
                reopened.recovery_report().corruption,
                None,
                "budget {budget}"
            );
            let got = contents(&reopened);
            let superset = new.iter().all(|r| got.contains(r));
            let subset = got.iter().all(|r| old.contains(r));
            assert!(superset && subset, "budget {budget} seed {seed}: {got:?}");
            saw_old |= got == old;
            saw_new |= got == new;
            assert!(reopened
                .storage()
                .list()
                .unwrap()
                .iter()
                .all(|n| !n.ends_with(".cleaned") && !n.ends_with(".swap")));
        }
        if finished {
            break;
        }
    }
    assert!(saw_old && saw_new);
}

#[derive(Clone, Debug)]
enum Op {
    /// Append `key` (of a few) with a value, or a tombstone.
    Put {
        key: u8,
        tombstone: bool,
    },
    /// Move the clock.
    Tick(u16),
    Roll,
    /// Clean with the bound at `at` (a fraction of the log, out of 256).
    Clean {
        at: u8,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u8..6, prop::bool::weighted(0.15)).prop_map(|(key, tombstone)| Op::Put { key, tombstone }),
        1 => (0u16..3000).prop_map(Op::Tick),
        1 => Just(Op::Roll),
        2 => any::<u8>().prop_map(|at| Op::Clean { at }),
        1 => Just(Op::Reopen),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Reading a cleaned log gives, for every key, the latest value among the records the
    /// cleaner was allowed to touch (or nothing once its tombstone's horizon passed); records
    /// above every bound it was given are all there; offsets increase; nothing is invented.
    #[test]
    fn a_cleaned_log_reads_as_the_latest_value_per_key(ops in prop::collection::vec(op(), 1..120)) {
        let mut now = NOW;
        let mut log = Log::open(MemStorage::new(), config(), now).unwrap();
        // Every record appended: offset → (key, value).
        let mut model: BTreeMap<Offset, (String, Option<String>)> = BTreeMap::new();
        let mut bound_max = Offset::ZERO;
        for (i, op) in ops.into_iter().enumerate() {
            match op {
                Op::Put { key, tombstone } => {
                    let key = format!("k{key}");
                    let value = (!tombstone).then(|| format!("v{i}"));
                    let info = log.append(now, keyed(&key, value.as_deref(), now), LeaderEpoch(0)).unwrap();
                    log.sync().unwrap();
                    model.insert(info.base_offset, (key, value));
                }
                Op::Tick(ms) => now += ms as i64,
                Op::Roll => close_active(&mut log, now),
                Op::Clean { at } => {
                    let bound = Offset(log.end().0 * at as i64 / 255);
                    log.clean(&eager(), bound, &inputs(now)).unwrap();
                    bound_max = bound_max.max(bound);
                }
                Op::Reopen => {
                    log.checkpoint().unwrap();
                    log = Log::open(log.into_storage(), config(), now).unwrap();
                }
            }
        }
        let got = contents(&log);
        prop_assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "offsets increase");
        for (offset, key, value) in &got {
            prop_assert_eq!(model.get(offset), Some(&(key.clone(), value.clone())), "nothing invented");
        }
        let got_offsets: std::collections::BTreeSet<Offset> = got.iter().map(|r| r.0).collect();
        for (offset, _) in model.range(bound_max..) {
            prop_assert!(got_offsets.contains(offset), "{} is above every bound", offset);
        }
        let mut latest: BTreeMap<&str, (Offset, &Option<String>)> = BTreeMap::new();
        for (offset, (key, value)) in &model {
            latest.insert(key, (*offset, value));
        }
        let mut latest_read: BTreeMap<&str, Offset> = BTreeMap::new();
        for (offset, key, _) in &got {
            latest_read.insert(key, *offset);
        }
        for (key, (offset, value)) in latest {
            match value {
                Some(_) => prop_assert_eq!(latest_read.get(key), Some(&offset), "key {}", key),
                // A tombstone: still there, or gone with every earlier record of its key.
                None => prop_assert!(latest_read.get(key).is_none_or(|&o| o == offset), "key {}", key),
            }
        }
        log.check_invariants();
    }
}

/// A tombstone past its delete horizon stays while a replica may lack it: at or above the
/// bound the caller passes (the offset every replica holds durably). A follower that fetched
/// the cleaned log without the tombstone would keep the key's older value for good.
#[test]
fn a_tombstone_stays_until_every_replica_holds_it() {
    let mut log = Log::open(MemStorage::new(), config(), NOW).unwrap();
    write(
        &mut log,
        &[("a", Some("1")), ("a", None), ("b", Some("1"))],
        NOW,
    );
    close_active(&mut log, NOW);
    log.clean(&eager(), log.end(), &inputs(NOW))
        .unwrap()
        .expect("due");
    let tombstone = (Offset(1), "a".to_string(), None);
    assert!(contents(&log).contains(&tombstone));
    // Past the horizon, but a replica holds the log only up to the tombstone's offset.
    let mut lagging = inputs(NOW + 1000);
    lagging.tombstones_below = Some(Offset(1));
    let stats = log.clean(&eager(), log.end(), &lagging).unwrap();
    assert_eq!(stats.map_or(0, |s| s.tombstones_removed), 0);
    assert!(contents(&log).contains(&tombstone), "{:?}", contents(&log));
    // Once every replica holds it, it goes.
    let mut held = inputs(NOW + 1000);
    held.tombstones_below = Some(Offset(2));
    let stats = log
        .clean(&eager(), log.end(), &held)
        .unwrap()
        .expect("the horizon makes it due");
    assert_eq!(stats.tombstones_removed, 1);
    assert_eq!(
        contents(&log),
        vec![(Offset(2), "b".into(), Some("1".into()))]
    );
}

/// Offsets a truncation cut off and that hold other data afterwards (a follower fetching its
/// leader's log again) were never seen by a cleaning: the first dirty offset goes back to the
/// cut. Taken for clean, a tombstone among them would remove nothing below it, and once past
/// its horizon it would go and leave the older value alive.
#[test]
fn a_truncation_lowers_the_first_dirty_offset() {
    let mut log = Log::open(MemStorage::new(), config(), NOW).unwrap();
    let filler: Vec<(String, String)> = (0..8).map(|i| (format!("f{i}"), "1".into())).collect();
    write(&mut log, &[("a", Some("1"))], NOW);
    write_owned(&mut log, &filler, NOW);
    close_active(&mut log, NOW);
    log.clean(&eager(), log.end(), &inputs(NOW))
        .unwrap()
        .expect("due");
    assert_eq!(read_checkpoint(log.storage()).unwrap().0, Offset(9));
    // A diverged suffix goes, and the leader's log arrives: a tombstone of a, then more.
    assert_eq!(log.truncate_to(Offset(1)).unwrap(), Offset(1));
    assert_eq!(read_checkpoint(log.storage()).unwrap().0, Offset(1));
    write(&mut log, &[("a", None)], NOW);
    write_owned(&mut log, &filler, NOW);
    close_active(&mut log, NOW);
    log.clean(&eager(), log.end(), &inputs(NOW))
        .unwrap()
        .expect("due");
    log.clean(&eager(), log.end(), &inputs(NOW + 1000))
        .unwrap()
        .expect("the horizon makes it due");
    let a: Vec<_> = contents(&log).into_iter().filter(|r| r.1 == "a").collect();
    assert_eq!(a, vec![], "a was deleted, and stays deleted");
}

/// Recovery that cuts the log below the first dirty offset lowers it too.
#[test]
fn a_recovery_cut_lowers_the_first_dirty_offset() {
    let mut log = Log::open(MemStorage::new(), config(), NOW).unwrap();
    write_owned(&mut log, &versions(3, 8), NOW);
    close_active(&mut log, NOW);
    log.clean(&eager(), log.end(), &inputs(NOW))
        .unwrap()
        .expect("due");
    let first_dirty = read_checkpoint(log.storage()).unwrap().0;
    assert_eq!(first_dirty, log.end());
    // The last segment's file loses its tail, as damage found by recovery would cut it.
    let last = log.segment_bases()[log.segment_bases().len() - 2];
    let mut storage = log.into_storage();
    let file = Segment::file_name(last);
    let len = storage.len(&file).unwrap();
    storage.truncate(&file, len - 1).unwrap();
    storage.sync(&file).unwrap();
    let log = Log::open(storage, config(), NOW).unwrap();
    assert!(log.end() < first_dirty);
    assert_eq!(read_checkpoint(log.storage()).unwrap().0, log.end());
}

/// A producer's last batch below the bound is kept (empty) even when its last batch in the
/// log is above the bound: that one is not committed yet and may be truncated away, and the
/// producer state rebuilt from the log must then still know the producer's sequence.
#[test]
fn a_producers_last_batch_below_the_bound_is_kept() {
    let mut log = Log::open(MemStorage::new(), config(), NOW).unwrap();
    let pid = ProducerId(9);
    let of = |seq: i32, key: &str| {
        BatchBuilder::new(Compression::None)
            .idempotent(pid, 0, seq)
            .record(NOW, Some(key.as_bytes()), Some(b"p"))
            .build()
            .unwrap()
    };
    log.append(NOW, of(0, "a"), LeaderEpoch(0)).unwrap();
    log.append(NOW, of(1, "b"), LeaderEpoch(0)).unwrap();
    log.sync().unwrap();
    write(&mut log, &[("b", Some("2")), ("a", Some("3"))], NOW);
    close_active(&mut log, NOW);
    let bound = log.end();
    log.append(NOW, of(2, "c"), LeaderEpoch(0)).unwrap();
    log.sync().unwrap();
    let mut ins = inputs(NOW);
    ins.producers_last.insert(pid, Offset(4));
    log.clean(&eager(), bound, &ins).unwrap().expect("due");
    // The batch above the bound goes (a new leader's log took its place): the producer's
    // sequence is still in the log, from its kept batch below.
    log.truncate_to(bound).unwrap();
    let kept: Vec<_> = all_batches(&log)
        .into_iter()
        .filter(|b| b.producer_id() == pid)
        .map(|b| (b.last_offset(), b.records_count()))
        .collect();
    assert_eq!(
        kept,
        vec![(Offset(1), 0)],
        "the producer's last batch, kept empty"
    );
    let mut rebuilt = crate::producer::ProducerStateTable::new(Offset::ZERO);
    rebuilt.replay(&log).unwrap();
    assert_eq!(rebuilt.entry(pid).map(|e| e.last_seq()), Some(1));
}

/// A follower removes no tombstone (its bound is zero): a kept tombstone whose delete horizon
/// has passed does not make its log due, or every pass would re-clean it and rewrite nothing
/// (the simulator's seed 411 showed such a follower cleaning at every pass). The leader's log,
/// whose bound lets the tombstone go, is due.
#[test]
fn a_passed_horizon_makes_no_follower_log_due() {
    let mut log = Log::open(MemStorage::new(), config(), NOW).unwrap();
    write(
        &mut log,
        &[("a", Some("1")), ("a", None), ("b", Some("1"))],
        NOW,
    );
    close_active(&mut log, NOW);
    let mut follower = inputs(NOW);
    follower.tombstones_below = Some(Offset::ZERO);
    log.clean(&eager(), log.end(), &follower)
        .unwrap()
        .expect("dirty: due");
    let tombstone = (Offset(1), "a".to_string(), None);
    assert!(contents(&log).contains(&tombstone));
    // Clean, and the horizon passed: a follower's log is not due, a leader's is.
    follower.now_ms = NOW + 1000;
    assert!(log
        .plan_clean_bounded(&eager(), log.end(), NOW + 1000, Some(Offset::ZERO))
        .is_none());
    assert_eq!(log.clean(&eager(), log.end(), &follower).unwrap(), None);
    assert!(contents(&log).contains(&tombstone));
    assert!(log
        .plan_clean_bounded(&eager(), log.end(), NOW + 1000, Some(Offset(2)))
        .is_some());
    let stats = log
        .clean(&eager(), log.end(), &inputs(NOW + 1000))
        .unwrap()
        .expect("the horizon makes it due");
    assert_eq!(stats.tombstones_removed, 1);
}
