//! Tests of the partition's transaction bookkeeping, after Kafka's `ProducerStateManagerTest`,
//! `TransactionIndexTest` and `UnifiedLog`'s last stable offset.

use proptest::prelude::*;

use super::*;

const P: ProducerId = ProducerId(1);
const Q: ProducerId = ProducerId(2);

fn commit(epoch: i32) -> EndTxnMarker {
    EndTxnMarker {
        commit: true,
        coordinator_epoch: epoch,
    }
}

fn abort(epoch: i32) -> EndTxnMarker {
    EndTxnMarker {
        commit: false,
        coordinator_epoch: epoch,
    }
}

/// The first transactional batch opens the transaction at its base offset; the LSO stays there
/// until the marker is below the high watermark (`ongoingTxns`, `unreplicatedTxns`).
#[test]
fn the_lso_waits_for_the_marker_to_be_replicated() {
    let mut t = TxnTracker::new(Offset(0));
    t.record_data(ProducerId::NONE, false, Offset(0), Offset(4));
    t.record_data(P, true, Offset(5), Offset(7));
    t.record_data(P, true, Offset(8), Offset(9));
    assert_eq!(t.open_txn(P), Some(Offset(5)), "the first batch's offset");
    assert_eq!(
        t.last_stable_offset(Offset(3)),
        Offset(3),
        "min with the high watermark"
    );
    assert_eq!(t.last_stable_offset(Offset(10)), Offset(5));
    let done = t.record_marker(P, commit(0), Offset(10)).unwrap();
    assert_eq!(
        done,
        CompletedTxn {
            producer_id: P,
            first_offset: Offset(5),
            last_offset: Offset(10),
            aborted: false
        }
    );
    assert_eq!(t.open_txn(P), None);
    t.high_watermark_updated(Offset(10));
    assert_eq!(
        t.last_stable_offset(Offset(10)),
        Offset(5),
        "the marker is not yet replicated"
    );
    t.high_watermark_updated(Offset(11));
    assert_eq!(t.last_stable_offset(Offset(11)), Offset(11));
    assert!(t.all_aborted().is_empty(), "a commit is not indexed");
    t.check_invariants();
}

/// Two producers: the LSO is the earliest open transaction; an abort's index entry records the
/// first offset of another producer's open transaction as its LSO (`lastStableOffset(
/// completedTxn)`), or just past the marker when there is none.
#[test]
fn aborted_entries_carry_kafkas_last_stable_offset() {
    let mut t = TxnTracker::new(Offset(0));
    t.record_data(P, true, Offset(0), Offset(1));
    t.record_data(Q, true, Offset(2), Offset(2));
    assert_eq!(t.first_unstable_offset(), Some(Offset(0)));
    t.record_marker(P, abort(1), Offset(3));
    t.record_data(P, true, Offset(4), Offset(4));
    t.record_marker(Q, abort(1), Offset(5));
    t.record_marker(P, abort(1), Offset(6));
    assert_eq!(
        t.all_aborted(),
        [
            AbortedTxn {
                producer_id: P,
                first_offset: Offset(0),
                last_offset: Offset(3),
                last_stable_offset: Offset(2)
            },
            AbortedTxn {
                producer_id: Q,
                first_offset: Offset(2),
                last_offset: Offset(5),
                last_stable_offset: Offset(4)
            },
            AbortedTxn {
                producer_id: P,
                first_offset: Offset(4),
                last_offset: Offset(6),
                last_stable_offset: Offset(7)
            },
        ]
    );
    t.high_watermark_updated(Offset(7));
    assert_eq!(t.last_stable_offset(Offset(7)), Offset(7));
    t.check_invariants();
}

/// The first offsets of the aborted transactions of a fetch from `f` below `u`.
fn firsts(t: &TxnTracker, f: i64, u: i64) -> Vec<i64> {
    t.aborted_txns(Offset(f), Offset(u))
        .iter()
        .map(|a| a.first_offset.0)
        .collect()
}

/// `collectAbortedTxns(fetchOffset, upperBoundOffset)`: entries with `lastOffset >= fetch` and
/// `firstOffset < upper`.
#[test]
fn aborted_txns_of_a_fetch_range() {
    let mut t = TxnTracker::new(Offset(0));
    for (pid, first, marker) in [(P, 0, 3), (Q, 4, 6), (P, 10, 12)] {
        t.record_data(pid, true, Offset(first), Offset(first));
        t.record_marker(pid, abort(0), Offset(marker));
    }

    assert_eq!(firsts(&t, 0, 100), [0, 4, 10]);
    assert_eq!(
        firsts(&t, 3, 100),
        [0, 4, 10],
        "the marker's offset is still in range"
    );
    assert_eq!(firsts(&t, 4, 100), [4, 10]);
    assert_eq!(firsts(&t, 0, 4), [0], "first offset below the upper bound");
    assert_eq!(firsts(&t, 0, 5), [0, 4]);
    assert_eq!(firsts(&t, 13, 100), Vec::<i64>::new());
    t.log_start_moved(Offset(5));
    assert_eq!(
        firsts(&t, 0, 100),
        [4, 10],
        "entries that ended below the log start are gone"
    );
}

/// `ProducerAppendInfo`: a non-transactional batch during an open transaction is
/// INVALID_TXN_STATE; a marker from an older coordinator epoch is
/// TRANSACTION_COORDINATOR_FENCED; a marker with no transaction completes nothing.
#[test]
fn refusals_and_empty_markers() {
    let mut t = TxnTracker::new(Offset(0));
    assert_eq!(t.check_data(P, false), Ok(()));
    t.record_data(P, true, Offset(0), Offset(0));
    assert_eq!(t.check_data(P, true), Ok(()));
    let e = t.check_data(P, false).unwrap_err();
    assert_eq!(
        (e.clone(), e.code()),
        (TxnStateError::InvalidTxnState(P), code::INVALID_TXN_STATE)
    );
    assert_eq!(t.check_data(Q, false), Ok(()));
    assert_eq!(t.check_data(ProducerId::NONE, false), Ok(()));
    t.record_marker(P, commit(5), Offset(1));
    let e = t.check_marker(P, 4).unwrap_err();
    assert_eq!(e.code(), code::TRANSACTION_COORDINATOR_FENCED);
    assert_eq!(t.check_marker(P, 5), Ok(()));
    assert_eq!(t.check_marker(Q, 0), Ok(()), "no marker seen for Q");
    assert_eq!(
        t.record_marker(P, abort(6), Offset(2)),
        None,
        "no open transaction"
    );
    assert!(t.all_aborted().is_empty());
    t.check_invariants();
}

#[test]
#[should_panic(expected = "batches are recorded in offset order")]
fn batches_out_of_order_are_a_bug() {
    let mut t = TxnTracker::new(Offset(0));
    t.record_data(P, true, Offset(5), Offset(6));
    t.record_data(Q, true, Offset(6), Offset(7));
}

#[derive(Clone, Debug)]
enum Step {
    Data {
        pid: i64,
        transactional: bool,
        records: i64,
    },
    Marker {
        pid: i64,
        commit: bool,
    },
    HighWatermark(i64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => (0..3i64, prop::bool::weighted(0.8), 1..4i64).prop_map(|(pid, transactional, records)| Step::Data { pid, transactional, records }),
        2 => (0..3i64, any::<bool>()).prop_map(|(pid, commit)| Step::Marker { pid, commit }),
        2 => (0..40i64).prop_map(Step::HighWatermark),
    ]
}

/// A transaction as the model sees it.
#[derive(Clone, Debug)]
struct ModelTxn {
    pid: ProducerId,
    first: Offset,
    end: Option<(Offset, bool)>,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Against a model that keeps every transaction: the LSO never passes the first offset of
    /// a transaction that is open or whose marker is not below the high watermark, and is
    /// exactly the smallest such offset or the high watermark; the aborted transactions of any
    /// fetch range are the model's; each abort's recorded LSO is the earliest open transaction
    /// of another producer, else the marker + 1.
    #[test]
    fn tracker_matches_a_model(steps in proptest::collection::vec(step(), 1..60), f in 0..40i64, u in 0..40i64) {
        let mut t = TxnTracker::new(Offset(0));
        let mut model: Vec<ModelTxn> = Vec::new();
        let mut aborts: Vec<AbortedTxn> = Vec::new();
        let mut end = 0i64;
        let mut hw = 0i64;
        for s in &steps {
            match *s {
                Step::Data { pid, transactional, records } => {
                    let pid = ProducerId(pid);
                    let open = model.iter().any(|m| m.pid == pid && m.end.is_none());
                    if t.check_data(pid, transactional).is_err() {
                        prop_assert!(open && !transactional);
                        continue;
                    }
                    prop_assert!(!open || transactional, "only a non-transactional batch during an open transaction is refused");
                    t.record_data(pid, transactional, Offset(end), Offset(end + records - 1));
                    if transactional && !open {
                        model.push(ModelTxn { pid, first: Offset(end), end: None });
                    }
                    end += records;
                }
                Step::Marker { pid, commit } => {
                    let pid = ProducerId(pid);
                    let done = t.record_marker(pid, EndTxnMarker { commit, coordinator_epoch: 0 }, Offset(end));
                    let open_others: Option<Offset> = model.iter().filter(|m| m.end.is_none() && m.pid != pid).map(|m| m.first).min();
                    let m = model.iter_mut().find(|m| m.pid == pid && m.end.is_none());
                    prop_assert_eq!(done.map(|d| d.first_offset), m.as_ref().map(|m| m.first));
                    if let Some(m) = m {
                        m.end = Some((Offset(end), !commit));
                        if !commit {
                            aborts.push(AbortedTxn { producer_id: pid, first_offset: m.first, last_offset: Offset(end), last_stable_offset: open_others.unwrap_or(Offset(end + 1)) });
                        }
                    }
                    end += 1;
                }
                Step::HighWatermark(h) => {
                    hw = hw.max(h.min(end));
                    t.high_watermark_updated(Offset(hw));
                }
            }
            t.check_invariants();
            let unstable = model.iter().filter(|m| m.end.is_none_or(|(e, _)| e.0 >= hw)).map(|m| m.first).min();
            let lso = t.last_stable_offset(Offset(hw));
            prop_assert_eq!(lso, unstable.map_or(Offset(hw), |f| f.min(Offset(hw))));
            for m in model.iter().filter(|m| m.end.is_none_or(|(e, _)| e.0 >= hw)) {
                prop_assert!(lso <= m.first, "the LSO passed an unstable transaction");
            }
            prop_assert_eq!(t.all_aborted(), &aborts[..]);
        }
        let expected: Vec<AbortedTxn> = aborts.iter().filter(|a| a.last_offset.0 >= f && a.first_offset.0 < u).copied().collect();
        prop_assert_eq!(t.aborted_txns(Offset(f), Offset(u)), expected);
    }
}
