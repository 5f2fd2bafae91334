//! The `.txnindex` files against a model (the tracker's list and the segments), through
//! appends, rolls, truncations, retention and crashes (Kafka's `TransactionIndexTest`).

use proptest::prelude::*;
use rand::{rngs::StdRng, SeedableRng};

use super::*;
use crate::storage::MemStorage;

fn entry(pid: i64, first: i64, last: i64) -> AbortedTxn {
    AbortedTxn {
        producer_id: ProducerId(pid),
        first_offset: Offset(first),
        last_offset: Offset(last),
        last_stable_offset: Offset(first),
    }
}

#[test]
fn an_entry_is_kafkas_34_bytes() {
    let bytes = encode(&entry(7, 0x0102, 0x0304));
    assert_eq!(bytes.len(), 34);
    assert_eq!(&bytes[0..2], &[0, 0], "version 0");
    assert_eq!(&bytes[2..10], &7i64.to_be_bytes());
    assert_eq!(&bytes[10..18], &0x0102i64.to_be_bytes());
    assert_eq!(&bytes[18..26], &0x0304i64.to_be_bytes());
    assert_eq!(
        &bytes[26..34],
        &0x0102i64.to_be_bytes(),
        "last stable offset"
    );
    assert_eq!(file_name(Offset(42)), "00000000000000000042.txnindex");
    assert_eq!(
        parse_name("00000000000000000042.txnindex"),
        Some(Offset(42))
    );
    assert_eq!(parse_name("00000000000000000042.log"), None);
    assert_eq!(parse_name("42.txnindex"), None);
}

#[test]
fn a_torn_or_damaged_file_keeps_its_whole_entries_and_says_torn() {
    let a = entry(1, 0, 3);
    let b = entry(2, 1, 5);
    let mut bytes: Vec<u8> = [a, b].iter().flat_map(encode).collect();
    assert_eq!(
        decode(&bytes),
        Decoded {
            entries: vec![a, b],
            torn: false
        }
    );
    bytes.truncate(ENTRY_BYTES + 10);
    assert_eq!(
        decode(&bytes),
        Decoded {
            entries: vec![a],
            torn: true
        }
    );
    // An unknown version, and entries out of marker order.
    let mut bad = encode(&b);
    bad[1] = 9;
    let bytes: Vec<u8> = encode(&a).into_iter().chain(bad).collect();
    assert!(decode(&bytes).torn);
    let bytes: Vec<u8> = [b, a].iter().flat_map(encode).collect();
    assert_eq!(decode(&bytes).entries, vec![b]);
    assert!(decode(&bytes).torn);
}

#[test]
fn files_follow_markers_segments_and_their_removal() {
    let mut s = MemStorage::new();
    let mut files = TxnIndexFiles::default();
    let mut bases = vec![Offset(0)];
    let mut aborted = vec![entry(1, 0, 4)];
    files.append_new(&mut s, &bases, &aborted).unwrap();
    TxnIndexFiles::check_against(&s, &bases, &aborted);
    // A roll at 10, then an abort in the new segment whose transaction began in the old one.
    bases.push(Offset(10));
    aborted.push(entry(2, 6, 12));
    files.append_new(&mut s, &bases, &aborted).unwrap();
    TxnIndexFiles::check_against(&s, &bases, &aborted);
    assert_eq!(files.entries(Offset(10)), &[entry(2, 6, 12)]);
    // Nothing new: nothing written.
    let before = s.clone();
    files.append_new(&mut s, &bases, &aborted).unwrap();
    assert_eq!(s.list().unwrap(), before.list().unwrap());
    // Retention removes the first segment (and the tracker forgets its abort).
    bases.remove(0);
    aborted.remove(0);
    let r = files.reconcile(&mut s, &bases, &aborted).unwrap();
    assert_eq!(r.removed, 1);
    TxnIndexFiles::check_against(&s, &bases, &aborted);
    // A truncation below the second abort's marker: the file goes.
    aborted.clear();
    let r = files.reconcile(&mut s, &bases, &aborted).unwrap();
    assert_eq!(r.removed, 1);
    assert!(s.list().unwrap().iter().all(|n| parse_name(n).is_none()));
}

#[test]
fn recovery_rebuilds_a_missing_torn_or_stale_file() {
    let bases = [Offset(0), Offset(100)];
    let aborted = [entry(1, 0, 4), entry(2, 5, 9), entry(3, 50, 120)];
    let mut s = MemStorage::new();
    let mut files = TxnIndexFiles::default();
    files.reconcile(&mut s, &bases, &aborted).unwrap();
    // Torn: half an entry cut off.
    let name = file_name(Offset(0));
    let len = s.len(&name).unwrap();
    s.truncate(&name, len - 5).unwrap();
    // Missing.
    s.remove(&file_name(Offset(100))).unwrap();
    // Stale: a segment that is gone.
    storage::write_atomic(
        &mut s,
        &file_name(Offset(200)),
        &encode(&entry(9, 200, 201)),
    )
    .unwrap();
    let (mut loaded, report) = TxnIndexFiles::load(&s).unwrap();
    assert_eq!(report.torn, 1);
    assert_eq!(loaded.entries(Offset(0)), &[entry(1, 0, 4)]);
    let r = loaded.reconcile(&mut s, &bases, &aborted).unwrap();
    assert_eq!((r.rewritten, r.removed), (2, 1), "{r:?}");
    TxnIndexFiles::check_against(&s, &bases, &aborted);
}

/// An operation on the log, as the index sees it.
#[derive(Clone, Debug)]
enum Op {
    /// A transaction of `len` offsets then its marker; aborted or committed.
    Txn { len: i64, aborted: bool },
    /// A new segment at the log end.
    Roll,
    /// Truncation to this fraction of the log.
    Truncate(u8),
    /// Retention of the first segment.
    Retain,
    /// A power loss, then recovery (load and reconcile).
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1i64..5, any::<bool>()).prop_map(|(len, aborted)| Op::Txn { len, aborted }),
        2 => Just(Op::Roll),
        1 => any::<u8>().prop_map(Op::Truncate),
        1 => Just(Op::Retain),
        2 => Just(Op::Crash),
    ]
}

proptest! {
    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let d = decode(&bytes);
        prop_assert!(d.entries.len() * ENTRY_BYTES <= bytes.len());
    }

    #[test]
    fn encode_decode_round_trips(
        raw in proptest::collection::vec((any::<i64>(), 0i64..1000, 0i64..1000), 0..20)
    ) {
        let mut last = 0;
        let entries: Vec<AbortedTxn> = raw
            .into_iter()
            .map(|(pid, len, gap)| {
                last += gap + len + 1;
                entry(pid, last - len, last)
            })
            .collect();
        let bytes: Vec<u8> = entries.iter().flat_map(encode).collect();
        prop_assert_eq!(decode(&bytes), Decoded { entries, torn: false });
    }

    /// After every operation, and after every crash and recovery, the files hold exactly the
    /// model's aborted transactions by segment.
    #[test]
    fn files_match_the_model_through_rolls_truncations_retention_and_crashes(
        ops in proptest::collection::vec(op(), 1..40),
        seed in any::<u64>(),
    ) {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut s = MemStorage::new();
        let mut files = TxnIndexFiles::default();
        let mut bases = vec![Offset(0)];
        let mut aborted: Vec<AbortedTxn> = Vec::new();
        let mut end = 0i64;
        let mut pid = 0;
        for op in ops {
            match op {
                Op::Txn { len, aborted: a } => {
                    pid += 1;
                    let first = end;
                    end += len;
                    if a {
                        aborted.push(entry(pid, first, end));
                    }
                    end += 1;
                    files.append_new(&mut s, &bases, &aborted).unwrap();
                }
                Op::Roll => {
                    if *bases.last().unwrap() < Offset(end) {
                        bases.push(Offset(end));
                    }
                }
                Op::Truncate(f) => {
                    let start = bases[0].0;
                    let to = start + (end - start) * i64::from(f) / 255;
                    end = to;
                    aborted.retain(|a| a.last_offset.0 < to);
                    while bases.len() > 1 && bases.last().unwrap().0 > to {
                        bases.pop();
                    }
                    files.reconcile(&mut s, &bases, &aborted).unwrap();
                }
                Op::Retain => {
                    if bases.len() > 1 {
                        bases.remove(0);
                        aborted.retain(|a| a.last_offset >= bases[0]);
                        files.reconcile(&mut s, &bases, &aborted).unwrap();
                    }
                }
                Op::Crash => {
                    s.crash(&mut rng);
                    let (loaded, _) = TxnIndexFiles::load(&s).unwrap();
                    files = loaded;
                    files.reconcile(&mut s, &bases, &aborted).unwrap();
                }
            }
            TxnIndexFiles::check_against(&s, &bases, &aborted);
        }
    }
}
