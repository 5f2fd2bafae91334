//! The checker against hand-made histories (one per anomaly kind, each producing exactly that
//! kind) and against random valid histories from a model log, clean and then mutated.
//! Reference: jepsen/src/jepsen/tests/kafka.clj (the `*-cases` functions named per test).

use proptest::prelude::*;

use super::*;

fn key() -> Key {
    Key::new("jepsen", 0)
}

fn ok(offset: i64) -> SendOutcome {
    SendOutcome::Ok {
        offset: Offset(offset),
    }
}

fn fail() -> SendOutcome {
    SendOutcome::Fail {
        reason: "INVALID_RECORD".into(),
    }
}

fn indefinite() -> SendOutcome {
    SendOutcome::Indefinite {
        reason: "timed out".into(),
    }
}

fn records(pairs: &[(i64, u64)]) -> Vec<(Offset, Value)> {
    pairs.iter().map(|&(o, v)| (Offset(o), Value(v))).collect()
}

const P0: ProcessId = ProcessId(0);
const P1: ProcessId = ProcessId(1);
const P2: ProcessId = ProcessId(2);
const P3: ProcessId = ProcessId(3);

/// Checks `history` and asserts it shows exactly one anomaly, of `kind`.
fn exactly_one(history: &History, kind: AnomalyKind) -> Anomaly {
    let report = check(history);
    assert_eq!(
        report.kinds().into_iter().collect::<Vec<_>>(),
        vec![kind],
        "{report}"
    );
    assert_eq!(report.anomalies.len(), 1, "{report}");
    report.anomalies[0].clone()
}

/// Sends, indefinite sends that did and did not land, a failed send never read, a consumer
/// that polls in order and re-assigns, and final reads to the end: nothing to report.
#[test]
fn a_clean_history_reports_nothing() {
    let k = key();
    let other = Key::new("jepsen", 1);
    let mut h = History::new();
    h.send(P0, &k, Value(1), ok(0));
    h.send(P0, &k, Value(2), ok(1));
    h.send(P1, &k, Value(3), indefinite()); // landed at 2
    h.send(P1, &k, Value(4), fail());
    h.send(P1, &k, Value(5), indefinite()); // never landed
    h.send(P0, &k, Value(6), ok(3));
    h.send(P0, &other, Value(7), ok(0));
    h.assign(P2, vec![k.clone()]);
    h.poll(P2, &k, records(&[(0, 1), (1, 2)]));
    h.poll(P2, &k, records(&[]));
    h.assign(P2, vec![k.clone(), other.clone()]);
    h.poll(P2, &k, records(&[(2, 3)]));
    h.poll(P2, &other, records(&[(0, 7)]));
    h.assign(P3, vec![k.clone(), other.clone()]);
    h.poll(P3, &k, records(&[(0, 1), (1, 2), (2, 3)]));
    h.poll(P3, &k, records(&[(3, 6)]));
    h.final_read(P3, &k, Offset(4));
    h.poll(P3, &other, records(&[(0, 7)]));
    h.final_read(P3, &other, Offset(1));
    let report = check(&h);
    assert!(report.is_clean(), "{report}");
    assert_eq!(
        report.stats,
        CheckStats {
            ops: 19,
            processes: 4,
            keys: 2,
            sends_ok: 4,
            sends_failed: 1,
            sends_indefinite: 2,
            indefinite_seen: 1,
            polls: 7,
            records_read: 9,
            final_reads: 2,
            reads_after_ack: 0,
            offsets_known: 5,
        }
    );
}

/// Jepsen `lost-write-cases`: value 2, acknowledged at offset 1, is never read although a
/// poll read offset 2.
#[test]
fn an_acked_value_below_a_read_offset_that_nobody_read_is_a_lost_write() {
    let k = key();
    let mut h = History::new();
    h.send(P0, &k, Value(1), ok(0));
    let lost = h.send(P0, &k, Value(2), ok(1));
    h.send(P0, &k, Value(3), ok(2));
    h.poll(P1, &k, records(&[(0, 1)]));
    let reader = h.poll(P2, &k, records(&[(2, 3)]));
    assert_eq!(
        exactly_one(&h, AnomalyKind::LostWrite),
        Anomaly::LostWrite {
            key: k,
            value: Value(2),
            offset: Offset(1),
            send: lost,
            evidence: LostEvidence::ReadPast {
                max_read_offset: Offset(2),
                reader,
            },
        }
    );
}

/// The final read reached the log's end after healing (offset 1) without the value
/// acknowledged at offset 1: the log was truncated below an acknowledged write.
#[test]
fn an_acked_value_missing_from_a_final_read_to_the_end_is_a_lost_write() {
    let k = key();
    let mut h = History::new();
    h.send(P0, &k, Value(1), ok(0));
    let lost = h.send(P0, &k, Value(2), ok(1));
    h.assign(P1, vec![k.clone()]);
    h.poll(P1, &k, records(&[(0, 1)]));
    let final_read = h.final_read(P1, &k, Offset(1));
    assert_eq!(
        exactly_one(&h, AnomalyKind::LostWrite),
        Anomaly::LostWrite {
            key: k,
            value: Value(2),
            offset: Offset(1),
            send: lost,
            evidence: LostEvidence::FinalRead {
                final_read,
                end_offset: Offset(1),
            },
        }
    );
}

/// Jepsen `unseen`: acknowledged, never read, and nothing proves it lost (no later offset
/// read, no final read).
#[test]
fn an_acked_value_never_read_without_proof_of_loss_is_unseen() {
    let k = key();
    let mut h = History::new();
    h.send(P0, &k, Value(1), ok(0));
    let unseen = h.send(P0, &k, Value(2), ok(1));
    h.poll(P1, &k, records(&[(0, 1)]));
    assert_eq!(
        exactly_one(&h, AnomalyKind::Unseen),
        Anomaly::Unseen {
            key: k,
            value: Value(2),
            offset: Offset(1),
            send: unseen,
        }
    );
}

/// Indefinite sends may or may not appear: one that never did is neither lost nor unseen,
/// even under a final read to the end.
#[test]
fn indefinite_sends_that_never_appear_are_not_lost() {
    let k = key();
    let mut h = History::new();
    h.send(P0, &k, Value(1), ok(0));
    h.send(P0, &k, Value(2), indefinite());
    h.send(P0, &k, Value(3), ok(1));
    h.poll(P1, &k, records(&[(0, 1), (1, 3)]));
    h.final_read(P1, &k, Offset(2));
    let report = check(&h);
    assert!(report.is_clean(), "{report}");
}

/// A final read that completed before a send says nothing about it.
#[test]
fn a_final_read_before_the_send_proves_nothing() {
    let k = key();
    let mut h = History::new();
    h.final_read(P1, &k, Offset(0));
    h.send(P0, &k, Value(1), ok(0));
    exactly_one(&h, AnomalyKind::Unseen);
}

/// Jepsen `version-orders` `:errors` (`:inconsistent-offsets`): offset 0 read as 1 and as 2.
#[test]
fn one_offset_with_two_values_is_inconsistent_offsets() {
    let k = key();
    let mut h = History::new();
    let send = h.send(P0, &k, Value(1), ok(0));
    h.send(P0, &k, Value(2), indefinite());
    let first = h.poll(P1, &k, records(&[(0, 1)]));
    let second = h.poll(P2, &k, records(&[(0, 2)]));
    assert_eq!(
        exactly_one(&h, AnomalyKind::InconsistentOffsets),
        Anomaly::InconsistentOffsets {
            key: k,
            offset: Offset(0),
            values: vec![(Value(1), vec![send, first]), (Value(2), vec![second])],
        }
    );
}

/// Jepsen `duplicate-cases`: value 1 at offsets 0 and 1 (Redpanda 21.10's duplicates with
/// idempotence looked like this).
#[test]
fn one_value_at_two_offsets_is_a_duplicate() {
    let k = key();
    let mut h = History::new();
    let send = h.send(P0, &k, Value(1), ok(0));
    let poll = h.poll(P1, &k, records(&[(0, 1), (1, 1)]));
    assert_eq!(
        exactly_one(&h, AnomalyKind::Duplicate),
        Anomaly::Duplicate {
            key: k,
            value: Value(1),
            offsets: vec![(Offset(0), vec![send, poll]), (Offset(1), vec![poll])],
        }
    );
}

/// Jepsen `g1a-cases`: a value whose send definitely failed is visible.
#[test]
fn reading_a_definitely_failed_value_is_g1a() {
    let k = key();
    let mut h = History::new();
    let send = h.send(P0, &k, Value(1), fail());
    let reader = h.poll(P1, &k, records(&[(0, 1)]));
    assert_eq!(
        exactly_one(&h, AnomalyKind::G1a),
        Anomaly::G1a {
            key: k,
            value: Value(1),
            sends: vec![send],
            readers: vec![reader],
        }
    );
}

/// Jepsen `poll-skip+nonmonotonic-cases` `:nonmonotonic`: the next poll starts at an offset
/// the previous one already read.
#[test]
fn a_poll_starting_at_or_before_the_last_read_is_nonmonotonic() {
    let k = key();
    let mut h = History::new();
    h.send(P0, &k, Value(1), ok(0));
    h.send(P0, &k, Value(2), ok(1));
    h.assign(P1, vec![k.clone()]);
    let first = h.poll(P1, &k, records(&[(0, 1), (1, 2)]));
    let second = h.poll(P1, &k, records(&[(1, 2)]));
    assert_eq!(
        exactly_one(&h, AnomalyKind::NonmonotonicPoll),
        Anomaly::NonmonotonicPoll {
            key: k,
            process: P1,
            from: Point {
                op: first,
                offset: Offset(1),
                value: Value(2)
            },
            to: Point {
                op: second,
                offset: Offset(1),
                value: Value(2)
            },
        }
    );
}

/// Jepsen `poll-skip+nonmonotonic-cases` `:skip`: the consumer went from offset 0 to 2 while
/// offset 1 is known to exist (another consumer read it).
#[test]
fn a_poll_jumping_over_a_known_offset_is_a_poll_skip() {
    let k = key();
    let mut h = History::new();
    h.send(P0, &k, Value(1), ok(0));
    h.send(P0, &k, Value(2), ok(1));
    h.send(P0, &k, Value(3), ok(2));
    let first = h.poll(P1, &k, records(&[(0, 1)]));
    h.poll(P1, &k, records(&[])); // empty polls leave the position alone
    let second = h.poll(P1, &k, records(&[(2, 3)]));
    h.poll(P2, &k, records(&[(1, 2)]));
    assert_eq!(
        exactly_one(&h, AnomalyKind::PollSkip),
        Anomaly::PollSkip {
            key: k,
            process: P1,
            from: Point {
                op: first,
                offset: Offset(0),
                value: Value(1)
            },
            to: Point {
                op: second,
                offset: Offset(2),
                value: Value(3)
            },
            skipped: Skipped {
                count: 1,
                first: vec![(Offset(1), Value(2))],
            },
        }
    );
}

/// Jepsen `int-poll-skip+nonmonotonic-cases` `:skip`: one poll jumps over offset 1.
#[test]
fn a_gap_inside_one_poll_over_a_known_offset_is_an_int_poll_skip() {
    let k = key();
    let mut h = History::new();
    h.send(P0, &k, Value(1), ok(0));
    h.send(P0, &k, Value(2), ok(1));
    h.send(P0, &k, Value(3), ok(2));
    h.poll(P1, &k, records(&[(0, 1), (2, 3)]));
    h.poll(P2, &k, records(&[(1, 2)]));
    let a = exactly_one(&h, AnomalyKind::IntPollSkip);
    assert!(
        matches!(&a, Anomaly::IntPollSkip { skipped, .. } if skipped.count == 1),
        "{a}"
    );
}

/// Jepsen `int-poll-skip+nonmonotonic-cases` `:nonmonotonic`: one poll goes backwards.
#[test]
fn a_poll_going_backwards_inside_is_an_int_nonmonotonic_poll() {
    let k = key();
    let mut h = History::new();
    h.send(P0, &k, Value(1), ok(0));
    h.send(P0, &k, Value(2), ok(1));
    h.poll(P1, &k, records(&[(1, 2), (0, 1)]));
    exactly_one(&h, AnomalyKind::IntNonmonotonicPoll);
}

/// Jepsen `nonmonotonic-send-cases`: one producer's second acknowledged send to a key
/// landed before its first.
#[test]
fn a_producer_acked_at_a_lower_offset_than_before_is_a_nonmonotonic_send() {
    let k = key();
    let mut h = History::new();
    h.send(P0, &k, Value(1), ok(1));
    h.send(P0, &k, Value(2), ok(0));
    h.poll(P1, &k, records(&[(0, 2), (1, 1)]));
    exactly_one(&h, AnomalyKind::NonmonotonicSend);
}

/// Jepsen throws `:no-writer-of` on a value nobody sent; the checker reports it.
#[test]
fn reading_a_value_nobody_sent_is_an_unknown_value() {
    let k = key();
    let mut h = History::new();
    h.poll(P1, &k, records(&[(0, 7)]));
    exactly_one(&h, AnomalyKind::UnknownValue);
}

#[test]
fn a_batch_served_with_a_bad_crc_is_a_corrupt_read() {
    let k = key();
    let mut h = History::new();
    h.send(P0, &k, Value(1), ok(0));
    h.poll(P1, &k, records(&[(0, 1)]));
    h.corrupt_read(P1, &k, "CRC mismatch".into());
    exactly_one(&h, AnomalyKind::CorruptRead);
}

/// Read-after-ack: a ListOffsets the acknowledging leader answered right after the
/// acknowledgement must count the write; one that does is clean.
#[test]
fn a_latest_offset_that_misses_an_acknowledged_write_is_a_stale_read_after_ack() {
    let k = key();
    let mut h = History::new();
    h.send(P0, &k, Value(1), ok(0));
    h.read_after_ack(P0, &k, Offset(0), Offset(1));
    h.poll(P1, &k, records(&[(0, 1)]));
    h.final_read(P1, &k, Offset(1));
    let report = check(&h);
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.stats.reads_after_ack, 1);

    h.send(P0, &k, Value(2), ok(1));
    h.read_after_ack(P0, &k, Offset(1), Offset(1));
    h.poll(P1, &k, records(&[(1, 2)]));
    match exactly_one(&h, AnomalyKind::StaleReadAfterAck) {
        Anomaly::StaleReadAfterAck { acked, latest, .. } => {
            assert_eq!((acked, latest), (Offset(1), Offset(1)))
        }
        other => panic!("{other:?}"),
    }
}

/// A group of two: P1 reads and commits, the group rebalances, P2 resumes at the commit
/// and commits further, P1's stale commit is refused, and the group reads to the end.
#[test]
fn a_clean_group_history_reports_nothing() {
    let k = key();
    let mut h = History::new();
    for (v, o) in [(1, 0), (2, 1), (3, 2)] {
        h.send(P0, &k, Value(v), ok(o));
    }
    h.assign(P1, vec![k.clone()]);
    let invoked = h.ops.len();
    h.offset_fetch(P1, &k, None, invoked);
    h.poll(P1, &k, records(&[(0, 1), (1, 2)]));
    let invoked = h.ops.len();
    h.commit(P1, &k, Offset(2), true, invoked);
    // Rebalance: P1 loses the key, P2 gets it and resumes at the commit.
    h.assign(P1, vec![]);
    h.assign(P2, vec![]);
    h.assign(P2, vec![k.clone()]);
    let invoked = h.ops.len();
    h.offset_fetch(P2, &k, Some(Offset(2)), invoked);
    h.poll(P2, &k, records(&[(2, 3)]));
    // A commit of P1's old generation, refused.
    let invoked = h.ops.len();
    h.commit(P1, &k, Offset(1), false, invoked);
    let invoked = h.ops.len();
    h.commit(P2, &k, Offset(3), true, invoked);
    h.commit(P2, &k, Offset(3), true, invoked + 1);
    // Rebalance back: P1 reads from the commit again (no nonmonotonic poll across it).
    h.assign(P1, vec![k.clone()]);
    let invoked = h.ops.len();
    h.offset_fetch(P1, &k, Some(Offset(3)), invoked);
    h.poll(P3, &k, records(&[(0, 1), (1, 2), (2, 3)]));
    h.final_read(P3, &k, Offset(3));
    h.group_caught_up(&[P1, P2], &k, Offset(3));
    let report = check(&h);
    assert!(report.is_clean(), "{report}");
}

#[test]
fn an_acked_commit_below_the_same_members_previous_one_is_a_nonmonotonic_commit() {
    let k = key();
    let mut h = History::new();
    h.send(P0, &k, Value(1), ok(0));
    h.send(P0, &k, Value(2), ok(1));
    h.assign(P1, vec![k.clone()]);
    h.poll(P1, &k, records(&[(0, 1), (1, 2)]));
    h.commit(P1, &k, Offset(2), true, 4);
    // A refused commit is no evidence, and a new generation starts over.
    h.commit(P1, &k, Offset(1), false, 5);
    h.assign(P1, vec![k.clone()]);
    h.commit(P1, &k, Offset(1), true, 7);
    h.commit(P1, &k, Offset(2), true, 8);
    assert!(check(&h).is_clean(), "{}", check(&h));
    h.commit(P1, &k, Offset(1), true, 9);
    let a = exactly_one(&h, AnomalyKind::NonmonotonicCommit);
    assert_eq!(
        a.to_string(),
        "nonmonotonic-commit jepsen-0: p1 committed 1 (#9) after 2 (#8)",
        "the anomaly names both commits"
    );
}

#[test]
fn a_commit_past_what_the_member_read_is_commit_past_read() {
    let k = key();
    let mut h = History::new();
    h.send(P0, &k, Value(1), ok(0));
    h.send(P0, &k, Value(2), indefinite());
    h.assign(P1, vec![k.clone()]);
    h.poll(P1, &k, records(&[(0, 1)]));
    // Up to one past the last record read is what a consumer commits.
    h.commit(P1, &k, Offset(1), true, 4);
    // A fetched commit may be committed again without reading.
    h.assign(P2, vec![k.clone()]);
    h.offset_fetch(P2, &k, Some(Offset(1)), 6);
    h.commit(P2, &k, Offset(1), true, 7);
    assert!(check(&h).is_clean(), "{}", check(&h));
    h.commit(P1, &k, Offset(2), false, 8);
    exactly_one(&h, AnomalyKind::CommitPastRead);
}

#[test]
fn a_fetch_missing_an_acked_commit_is_a_lost_commit() {
    let k = key();
    let mut h = History::new();
    h.send(P0, &k, Value(1), ok(0));
    h.send(P0, &k, Value(2), ok(1));
    h.assign(P1, vec![k.clone()]);
    h.poll(P1, &k, records(&[(0, 1), (1, 2)]));
    h.commit(P1, &k, Offset(1), true, 4);
    // P2's commit of 2 is sent (op 5) before P1's commit of 2 completes (op 6) and completes
    // after it: either may be last, so a fetch of 1... is not explained by it, but 2 is.
    let p2_invoked = h.ops.len();
    h.commit(P1, &k, Offset(2), true, p2_invoked);
    h.assign(P2, vec![k.clone()]);
    h.offset_fetch(P2, &k, Some(Offset(1)), p2_invoked);
    assert!(
        check(&h).is_clean(),
        "a fetch concurrent with the commit may miss it: {}",
        check(&h)
    );
    let invoked = h.ops.len();
    h.offset_fetch(P2, &k, Some(Offset(2)), invoked);
    assert!(check(&h).is_clean(), "{}", check(&h));
    let invoked = h.ops.len();
    let fetch = h.offset_fetch(P2, &k, Some(Offset(1)), invoked);
    let a = exactly_one(&h, AnomalyKind::LostCommit);
    assert!(
        matches!(a, Anomaly::LostCommit { fetch: f, committed: Offset(2), .. } if f == fetch),
        "{a:?}"
    );
}

#[test]
fn an_indefinite_commit_concurrent_with_the_last_acked_one_explains_a_fetch() {
    let k = key();
    let mut h = History::new();
    h.send(P0, &k, Value(1), ok(0));
    h.send(P0, &k, Value(2), ok(1));
    h.assign(P1, vec![k.clone()]);
    h.poll(P1, &k, records(&[(0, 1), (1, 2)]));
    h.assign(P2, vec![k.clone()]);
    h.poll(P2, &k, records(&[(0, 1)]));
    // P2's commit of 1 was sent before P1's commit of 2 completed and timed out after it: it
    // may have landed last.
    let invoked = h.ops.len();
    h.commit(P1, &k, Offset(2), true, invoked);
    h.commit(P2, &k, Offset(1), false, invoked);
    let invoked = h.ops.len();
    h.offset_fetch(P3, &k, Some(Offset(1)), invoked);
    assert!(check(&h).is_clean(), "{}", check(&h));
    // A fetch of nothing at all is not explained by any commit.
    let invoked = h.ops.len();
    h.offset_fetch(P3, &k, None, invoked);
    exactly_one(&h, AnomalyKind::LostCommit);
}

#[test]
fn a_value_no_member_read_below_where_the_group_caught_up_is_group_unread() {
    let k = key();
    let mut h = History::new();
    for (v, o) in [(1, 0), (2, 1), (3, 2)] {
        h.send(P0, &k, Value(v), ok(o));
    }
    h.assign(P1, vec![k.clone()]);
    h.poll(P1, &k, records(&[(0, 1)]));
    // Across a rebalance P2 starts at 2: no poll rule forbids it, but the group skipped 1.
    h.assign(P1, vec![]);
    h.assign(P2, vec![k.clone()]);
    h.poll(P2, &k, records(&[(2, 3)]));
    h.poll(P3, &k, records(&[(0, 1), (1, 2), (2, 3)]));
    h.final_read(P3, &k, Offset(3));
    // Caught up only to 1: nothing missed yet.
    h.group_caught_up(&[P1, P2], &k, Offset(1));
    assert!(check(&h).is_clean(), "{}", check(&h));
    h.group_caught_up(&[P1, P2], &k, Offset(3));
    let a = exactly_one(&h, AnomalyKind::GroupUnread);
    assert!(
        matches!(
            a,
            Anomaly::GroupUnread {
                offset: Offset(1),
                value: Value(2),
                ..
            }
        ),
        "{a:?}"
    );
}

/// Kafka keeps positions of partitions that stay assigned and forgets the others: reading a
/// key again from 0 after it was unassigned and assigned again is not nonmonotonic, but it is
/// while it stays assigned.
#[test]
fn assign_keeps_positions_of_keys_that_stay_assigned() {
    let k = key();
    let other = Key::new("jepsen", 1);
    let mut h = History::new();
    h.send(P0, &k, Value(1), ok(0));
    h.assign(P1, vec![k.clone()]);
    h.poll(P1, &k, records(&[(0, 1)]));
    h.assign(P1, vec![other.clone()]);
    h.assign(P1, vec![k.clone()]);
    h.poll(P1, &k, records(&[(0, 1)]));
    assert!(check(&h).is_clean(), "{}", check(&h));
    h.assign(P1, vec![k.clone(), other]);
    h.poll(P1, &k, records(&[(0, 1)]));
    exactly_one(&h, AnomalyKind::NonmonotonicPoll);
}

/// The report prints the stats, the counts per kind and one line per anomaly, sorted.
#[test]
fn the_report_reads_well_and_is_stable() {
    let k = key();
    let mut h = History::new();
    h.send(P0, &k, Value(1), ok(0));
    h.send(P0, &k, Value(2), ok(1));
    h.send(P0, &k, Value(3), fail());
    h.send(P0, &k, Value(4), ok(2));
    h.poll(P1, &k, records(&[(0, 1), (1, 3)]));
    h.final_read(P1, &k, Offset(2));
    let report = check(&h);
    let expected = "\
history: 6 ops by 2 processes on 1 keys; sends: 3 ok, 1 failed, 0 indefinite (0 seen); 1 polls read 2 records; 1 final reads; 0 reads after an ack; 3 offsets known
anomalies: 4 (inconsistent-offsets 1, lost-write 2, G1a 1)
  inconsistent-offsets jepsen-0: offset 1 holds value 2 (#1), value 3 (#4)
  lost-write jepsen-0: value 2 acknowledged at offset 1 (#1) was never read, although offset 1 was (#4)
  lost-write jepsen-0: value 4 acknowledged at offset 2 (#3) was never read, although the final read (#5) reached the end, offset 2
  G1a jepsen-0: value 3 was read (#4) but its send failed (#2)
";
    assert_eq!(report.to_string(), expected);
    assert_eq!(
        report.counts(),
        BTreeMap::from([
            (AnomalyKind::InconsistentOffsets, 1),
            (AnomalyKind::LostWrite, 2),
            (AnomalyKind::G1a, 1),
        ])
    );
    assert_eq!(check(&h), report, "the same history gives the same report");
}

/// Past [`DISPLAY_PER_KIND_MAX`] anomalies of one kind, the report summarizes the rest.
#[test]
fn the_report_caps_each_kind() {
    let k = key();
    let mut h = History::new();
    for v in 0..20 {
        h.send(P0, &k, Value(v), ok(v as i64));
    }
    let report = check(&h);
    assert_eq!(report.count(AnomalyKind::Unseen), 20);
    let text = report.to_string();
    assert_eq!(text.lines().count(), 2 + DISPLAY_PER_KIND_MAX + 1, "{text}");
    assert!(text.ends_with("  unseen: ... and 8 more\n"), "{text}");
}

// ---------------------------------------------------------------------------------------
// Random histories from a model log.

/// One step of the random workload; numbers are reduced modulo what exists.
#[derive(Clone, Debug)]
enum Action {
    /// `outcome` 0-5: acknowledged; 6: indefinite and landed; 7: indefinite, never landed;
    /// 8-9: failed.
    Send { producer: u8, key: u8, outcome: u8 },
    /// Reads up to `max` records from the consumer's position, if the key is assigned.
    Poll { consumer: u8, key: u8, max: u8 },
    /// Assigns the keys whose bits are set in `mask`.
    Assign { consumer: u8, mask: u8 },
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => (any::<u8>(), any::<u8>(), 0u8..10)
            .prop_map(|(producer, key, outcome)| Action::Send { producer, key, outcome }),
        3 => (any::<u8>(), any::<u8>(), 0u8..5)
            .prop_map(|(consumer, key, max)| Action::Poll { consumer, key, max }),
        1 => (any::<u8>(), any::<u8>())
            .prop_map(|(consumer, mask)| Action::Assign { consumer, mask }),
    ]
}

#[derive(Clone, Debug)]
struct Workload {
    keys: usize,
    producers: u32,
    consumers: u32,
    actions: Vec<Action>,
    /// Sizes of the final reads' polls, cycled.
    final_chunks: Vec<u8>,
}

fn workload() -> impl Strategy<Value = Workload> {
    (
        1usize..=3,
        1u32..=3,
        1u32..=3,
        prop::collection::vec(action(), 0..80),
        prop::collection::vec(1u8..=4, 1..4),
    )
        .prop_map(
            |(keys, producers, consumers, actions, final_chunks)| Workload {
                keys,
                producers,
                consumers,
                actions,
                final_chunks,
            },
        )
}

/// A valid history: the model log per key is the truth every operation agrees with.
/// Processes: producers first, then consumers, then the final reader.
fn generate(w: &Workload) -> History {
    let keys: Vec<Key> = (0..w.keys as i32).map(|p| Key::new("t", p)).collect();
    let mut logs: Vec<Vec<Value>> = vec![Vec::new(); w.keys];
    let mut next_value = 1u64;
    // consumer -> key index -> position
    let mut positions: Vec<BTreeMap<usize, usize>> = vec![BTreeMap::new(); w.consumers as usize];
    let mut h = History::new();
    for a in &w.actions {
        match *a {
            Action::Send {
                producer,
                key,
                outcome,
            } => {
                let (p, k) = (
                    ProcessId(producer as u32 % w.producers),
                    key as usize % w.keys,
                );
                let value = Value(next_value);
                next_value += 1;
                let outcome = match outcome {
                    0..=5 => {
                        logs[k].push(value);
                        ok(logs[k].len() as i64 - 1)
                    }
                    6 => {
                        logs[k].push(value);
                        indefinite()
                    }
                    7 => indefinite(),
                    _ => fail(),
                };
                h.send(p, &keys[k], value, outcome);
            }
            Action::Poll { consumer, key, max } => {
                let c = consumer as usize % w.consumers as usize;
                let k = key as usize % w.keys;
                let Some(position) = positions[c].get_mut(&k) else {
                    continue;
                };
                let end = (*position + max as usize).min(logs[k].len());
                let read = (*position..end)
                    .map(|o| (Offset(o as i64), logs[k][o]))
                    .collect();
                *position = end;
                h.poll(ProcessId(w.producers + c as u32), &keys[k], read);
            }
            Action::Assign { consumer, mask } => {
                let c = consumer as usize % w.consumers as usize;
                let assigned: Vec<usize> = (0..w.keys).filter(|k| mask & (1 << k) != 0).collect();
                let kept: BTreeMap<usize, usize> = assigned
                    .iter()
                    .map(|k| (*k, positions[c].get(k).copied().unwrap_or(0)))
                    .collect();
                positions[c] = kept;
                h.assign(
                    ProcessId(w.producers + c as u32),
                    assigned.iter().map(|k| keys[*k].clone()).collect(),
                );
            }
        }
    }
    // After healing: a fresh process reads every key from 0 to its end.
    let last = ProcessId(w.producers + w.consumers);
    h.assign(last, keys.clone());
    let mut chunks = w.final_chunks.iter().cycle();
    for (k, log) in logs.iter().enumerate() {
        let mut position = 0;
        while position < log.len() {
            let end = (position + *chunks.next().expect("cycled") as usize).min(log.len());
            let read = (position..end)
                .map(|o| (Offset(o as i64), log[o]))
                .collect();
            h.poll(last, &keys[k], read);
            position = end;
        }
        h.final_read(last, &keys[k], Offset(log.len() as i64));
    }
    h
}

fn final_process(h: &History) -> ProcessId {
    h.ops
        .last()
        .expect("a final read ends every history")
        .process
}

/// The polls of the final reader, as (op index, key).
fn final_polls(h: &History) -> Vec<usize> {
    let last = final_process(h);
    h.ops
        .iter()
        .enumerate()
        .filter(|(_, op)| op.process == last && matches!(op.kind, OpKind::Poll { .. }))
        .map(|(i, _)| i)
        .collect()
}

/// (key, value, offset) of every acknowledged send.
fn acked(h: &History) -> Vec<(Key, Value, Offset)> {
    h.ops
        .iter()
        .filter_map(|op| match &op.kind {
            OpKind::Send {
                key,
                value,
                outcome: SendOutcome::Ok { offset },
            } => Some((key.clone(), *value, *offset)),
            _ => None,
        })
        .collect()
}

/// Turns a valid history into one with an anomaly (`None` when it has nothing to mutate).
type Mutation = fn(&History, usize) -> Option<History>;

/// Drops an acknowledged value from every read: lost-write.
fn drop_acked(h: &History, pick: usize) -> Option<History> {
    let acked = acked(h);
    let (key, value, _) = acked.get(pick % acked.len().max(1))?.clone();
    let mut h = h.clone();
    for op in &mut h.ops {
        if let OpKind::Poll { key: k, records } = &mut op.kind {
            if *k == key {
                records.retain(|(_, v)| *v != value);
            }
        }
    }
    Some(h)
}

/// Swaps the values of two successive records of a consumer's poll (the final read still
/// sees the truth): inconsistent-offsets.
fn swap_offsets(h: &History, pick: usize) -> Option<History> {
    let last = final_process(h);
    let candidates: Vec<usize> = h
        .ops
        .iter()
        .enumerate()
        .filter(|(_, op)| {
            op.process != last
                && matches!(&op.kind, OpKind::Poll { records, .. } if records.len() >= 2)
        })
        .map(|(i, _)| i)
        .collect();
    let at = *candidates.get(pick % candidates.len().max(1))?;
    let mut h = h.clone();
    let OpKind::Poll { records, .. } = &mut h.ops[at].kind else {
        unreachable!()
    };
    let i = pick % (records.len() - 1);
    let (a, b) = (records[i].1, records[i + 1].1);
    records[i].1 = b;
    records[i + 1].1 = a;
    Some(h)
}

/// The final read returns one of the key's values again, at the next offset: duplicate.
fn duplicate_value(h: &History, pick: usize) -> Option<History> {
    let polls: Vec<usize> = final_polls(h);
    let at = *polls.get(pick % polls.len().max(1))?;
    let mut h = h.clone();
    let OpKind::Poll { records, .. } = &mut h.ops[at].kind else {
        unreachable!()
    };
    let (last_offset, _) = *records.last()?;
    let (_, value) = records[pick % records.len()];
    records.push((last_offset.plus(1), value));
    Some(h)
}

/// A final-read poll delivered twice in a row: nonmonotonic-poll.
fn poll_back(h: &History, pick: usize) -> Option<History> {
    let polls: Vec<usize> = final_polls(h)
        .into_iter()
        .filter(|i| matches!(&h.ops[*i].kind, OpKind::Poll { records, .. } if !records.is_empty()))
        .collect();
    let at = *polls.get(pick % polls.len().max(1))?;
    let mut h = h.clone();
    let again = h.ops[at].clone();
    h.ops.insert(at + 1, again);
    Some(h)
}

/// The final read misses an acknowledged offset that is neither the key's first nor last:
/// poll-skip (across polls) or int-poll-skip (inside one).
fn skip_offset(h: &History, pick: usize) -> Option<History> {
    let ends = h.final_read_ends();
    let candidates: Vec<(Key, Offset)> = acked(h)
        .into_iter()
        .filter(|(key, _, offset)| offset.0 >= 1 && offset.0 < ends[key].0 - 1)
        .map(|(key, _, offset)| (key, offset))
        .collect();
    let (key, offset) = candidates.get(pick % candidates.len().max(1))?.clone();
    let mut h = h.clone();
    for at in final_polls(&h) {
        if let OpKind::Poll { key: k, records } = &mut h.ops[at].kind {
            if *k == key {
                records.retain(|(o, _)| *o != offset);
            }
        }
    }
    Some(h)
}

/// A value that was read now comes from a send that definitely failed: G1a.
fn read_failed(h: &History, pick: usize) -> Option<History> {
    let read: BTreeSet<(Key, Value)> = h
        .ops
        .iter()
        .flat_map(|op| match &op.kind {
            OpKind::Poll { key, records } => records
                .iter()
                .map(|(_, v)| (key.clone(), *v))
                .collect::<Vec<_>>(),
            _ => Vec::new(),
        })
        .collect();
    let sends: Vec<usize> = h
        .ops
        .iter()
        .enumerate()
        .filter(|(_, op)| matches!(&op.kind, OpKind::Send { key, value, .. } if read.contains(&(key.clone(), *value))))
        .map(|(i, _)| i)
        .collect();
    let at = *sends.get(pick % sends.len().max(1))?;
    let mut h = h.clone();
    if let OpKind::Send { outcome, .. } = &mut h.ops[at].kind {
        *outcome = fail();
    }
    Some(h)
}

proptest! {
    /// Every history generated from a model log checks clean.
    #[test]
    fn histories_from_a_model_log_check_clean(w in workload()) {
        let h = generate(&w);
        let report = check(&h);
        prop_assert!(report.is_clean(), "{}", report);
        let sends = h.ops.iter().filter(|op| matches!(op.kind, OpKind::Send { .. })).count();
        prop_assert_eq!(
            report.stats.sends_ok + report.stats.sends_failed + report.stats.sends_indefinite,
            sends
        );
    }

    /// Each mutation of a valid history is reported as its anomaly (others may come with it:
    /// a dropped value also leaves a gap in the polls that read past it).
    #[test]
    fn mutated_histories_report_the_matching_anomaly(w in workload(), pick in any::<usize>()) {
        let h = generate(&w);
        let mutations: [(&str, Mutation, &[AnomalyKind]); 6] = [
            ("drop an acked value", drop_acked, &[AnomalyKind::LostWrite]),
            ("swap two offsets", swap_offsets, &[AnomalyKind::InconsistentOffsets]),
            ("duplicate a value", duplicate_value, &[AnomalyKind::Duplicate]),
            ("poll back", poll_back, &[AnomalyKind::NonmonotonicPoll]),
            ("skip an offset", skip_offset, &[AnomalyKind::PollSkip, AnomalyKind::IntPollSkip]),
            ("read a failed value", read_failed, &[AnomalyKind::G1a]),
        ];
        for (name, mutate, expected) in mutations {
            let Some(mutated) = mutate(&h, pick) else { continue };
            let report = check(&mutated);
            prop_assert!(
                expected.iter().any(|kind| report.count(*kind) > 0),
                "{}: expected one of {:?}, got\n{}",
                name,
                expected,
                report
            );
        }
    }
}
