//! The transactional workload and its checker (issue 15), after Jepsen's Kafka test in its
//! transactional mode (`tests/kafka.clj`): in a share of the seeds, producers with
//! transactional ids write unique values to several partitions of [`TXN_TOPIC`] in one
//! transaction and commit or abort at random; now and then a second instance of the same
//! transactional id fences the first (a zombie, which then tries to go on and commit); now
//! and then a producer stalls past its `transaction.timeout.ms`; in half of those seeds the
//! producers speak transaction version 2 (KIP-890 part 2: no AddPartitionsToTxn, an epoch bump
//! at every EndTxn v5), and now and then a write of an ended transaction arrives late (a
//! zombie write, which the bumped epoch must fence); `read_committed` consumers
//! poll throughout, and after healing a final `read_committed` read covers every partition
//! once no transaction is left open.
//!
//! What the checker ([`check`]) reports ([`TxnAnomaly`]):
//! - aborted-read (Jepsen's G1a): a read returned a value of an aborted transaction (aborted
//!   by EndTxn, or never sent a commit);
//! - uncommitted-read: a read returned a value before its transaction's commit was even sent;
//! - lost-committed-write: after healing, a value of a transaction whose commit was
//!   acknowledged is missing from the final read;
//! - zombie-commit: the commit of a transaction that was open when another instance of its
//!   transactional id initialised was acknowledged; zombie-write: a value of such a transaction
//!   was read;
//! - partial-transaction: a transaction whose commit's answer was lost is partly visible in
//!   the final read (atomicity);
//! - duplicate / inconsistent-offsets / unknown-value, as in the main checker.
//!
//! The workload records every operation in a [`TxnHistory`] with the simulated time it
//! finished (reads) or started (commits), which is all the checker needs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use keel_core::types::Offset;

use crate::checker::{Key, Value};

/// The topic the transactional workload writes.
pub const TXN_TOPIC: &str = "jepsen-txn";
/// The producers' `transaction.timeout.ms`: short, so that stalls and faults time
/// transactions out.
pub const TXN_TIMEOUT_MS: i32 = 5_000;

/// How a transaction ended, as its producer knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnOutcome {
    /// Its commit was acknowledged.
    Committed,
    /// Aborted, or never sent a commit: none of its values may ever be read.
    Aborted,
    /// Its commit was sent and may have been taken: all of its values or none.
    Unknown,
}

/// One transaction of the workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnRecord {
    /// The producer instance that ran it.
    pub producer: String,
    /// Every value it sent (acknowledged or not), with its key.
    pub values: Vec<(Key, Value)>,
    /// The offsets its acknowledged sends were appended at.
    pub offsets: BTreeMap<Value, Offset>,
    /// When its commit was first sent (simulated ms).
    pub commit_sent_ms: Option<u64>,
    pub outcome: TxnOutcome,
    /// It was open when another instance of its transactional id initialised: it must never
    /// commit.
    pub zombie: bool,
}

/// One value a `read_committed` read returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnRead {
    pub reader: u32,
    pub key: Key,
    pub offset: Offset,
    pub value: Value,
    /// When the read's answer came (simulated ms).
    pub at_ms: u64,
}

/// What the workload did and saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnHistory {
    pub txns: Vec<TxnRecord>,
    pub reads: Vec<TxnRead>,
    /// The final read after healing, per key (empty if it did not complete).
    pub final_read: BTreeMap<Key, Vec<(Offset, Value)>>,
    /// Whether the final read covered every key up to a last stable offset equal to its
    /// high watermark.
    pub final_complete: bool,
    pub commits: u64,
    pub aborts: u64,
    /// A zombie's operation refused as fenced.
    pub fencings: u64,
    /// A producer's commit refused as fenced after it stalled past its timeout.
    pub timeouts: u64,
    pub coordinator_moves: u64,
    /// Transaction version 2: EndTxn v5 commits and aborts acknowledged, epoch bumps they
    /// answered, partitions a Produce v12 added, and late writes of ended transactions
    /// refused as fenced.
    pub v2_commits: u64,
    pub v2_aborts: u64,
    pub epoch_bumps: u64,
    pub implicit_adds: u64,
    pub late_writes_fenced: u64,
}

/// An anomaly of the transactional history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TxnAnomaly {
    AbortedRead,
    UncommittedRead,
    LostCommittedWrite,
    ZombieCommit,
    ZombieWrite,
    PartialTransaction,
    Duplicate,
    InconsistentOffsets,
    UnknownValue,
}

impl TxnAnomaly {
    pub fn name(self) -> &'static str {
        match self {
            TxnAnomaly::AbortedRead => "aborted-read",
            TxnAnomaly::UncommittedRead => "uncommitted-read",
            TxnAnomaly::LostCommittedWrite => "lost-committed-write",
            TxnAnomaly::ZombieCommit => "zombie-commit",
            TxnAnomaly::ZombieWrite => "zombie-write",
            TxnAnomaly::PartialTransaction => "partial-transaction",
            TxnAnomaly::Duplicate => "txn-duplicate",
            TxnAnomaly::InconsistentOffsets => "txn-inconsistent-offsets",
            TxnAnomaly::UnknownValue => "txn-unknown-value",
        }
    }
}

impl fmt::Display for TxnAnomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The anomalies of `h`, each with a sentence that shows it. Lost and partial transactions
/// need the complete final read and are looked for only with it.
pub fn check(h: &TxnHistory) -> Vec<(TxnAnomaly, String)> {
    let mut out = Vec::new();
    let mut txn_of: BTreeMap<Value, usize> = BTreeMap::new();
    for (i, t) in h.txns.iter().enumerate() {
        for (_, v) in &t.values {
            txn_of.insert(*v, i);
        }
        if t.zombie && t.outcome == TxnOutcome::Committed {
            out.push((
                TxnAnomaly::ZombieCommit,
                format!(
                    "transaction {i} of {} was fenced, yet its commit was acknowledged",
                    t.producer
                ),
            ));
        }
    }
    let finals = h.final_read.iter().flat_map(|(k, rs)| {
        rs.iter().map(move |&(offset, value)| TxnRead {
            reader: u32::MAX,
            key: k.clone(),
            offset,
            value,
            at_ms: u64::MAX,
        })
    });
    let mut at_offset: BTreeMap<(Key, Offset), Value> = BTreeMap::new();
    let mut offset_of: BTreeMap<Value, (Key, Offset)> = BTreeMap::new();
    let mut reported: BTreeSet<(TxnAnomaly, Value)> = BTreeSet::new();
    let mut report = |out: &mut Vec<(TxnAnomaly, String)>, kind, value, why: String| {
        if reported.insert((kind, value)) {
            out.push((kind, why));
        }
    };
    for r in h.reads.iter().cloned().chain(finals) {
        let who = if r.reader == u32::MAX {
            "the final read".to_string()
        } else {
            format!("reader {} at {} ms", r.reader, r.at_ms)
        };
        let first = *at_offset
            .entry((r.key.clone(), r.offset))
            .or_insert(r.value);
        if first != r.value {
            report(
                &mut out,
                TxnAnomaly::InconsistentOffsets,
                r.value,
                format!(
                    "{} offset {}: {} and {}",
                    r.key, r.offset, first.0, r.value.0
                ),
            );
        }
        let (k, o) = offset_of
            .entry(r.value)
            .or_insert((r.key.clone(), r.offset))
            .clone();
        if (&k, &o) != (&r.key, &r.offset) {
            report(
                &mut out,
                TxnAnomaly::Duplicate,
                r.value,
                format!("value {} at {k} {o} and {} {}", r.value.0, r.key, r.offset),
            );
        }
        let Some(&i) = txn_of.get(&r.value) else {
            report(
                &mut out,
                TxnAnomaly::UnknownValue,
                r.value,
                format!("{who} read value {} that no transaction sent", r.value.0),
            );
            continue;
        };
        let t = &h.txns[i];
        if t.zombie {
            report(
                &mut out,
                TxnAnomaly::ZombieWrite,
                r.value,
                format!(
                    "{who} read value {} of fenced transaction {i} ({})",
                    r.value.0, t.producer
                ),
            );
        } else if t.outcome == TxnOutcome::Aborted {
            report(
                &mut out,
                TxnAnomaly::AbortedRead,
                r.value,
                format!(
                    "{who} read value {} at {} {} of aborted transaction {i} ({})",
                    r.value.0, r.key, r.offset, t.producer
                ),
            );
        } else if t.commit_sent_ms.is_none_or(|c| r.at_ms < c) {
            report(
                &mut out,
                TxnAnomaly::UncommittedRead,
                r.value,
                format!(
                    "{who} read value {} at {} {} of transaction {i} ({}), whose commit was sent \
                     only at {:?} ms",
                    r.value.0, r.key, r.offset, t.producer, t.commit_sent_ms
                ),
            );
        }
    }
    if h.final_complete {
        let seen: BTreeSet<Value> = h
            .final_read
            .values()
            .flat_map(|rs| rs.iter().map(|&(_, v)| v))
            .collect();
        for (i, t) in h.txns.iter().enumerate() {
            let visible = t.values.iter().filter(|(_, v)| seen.contains(v)).count();
            match t.outcome {
                TxnOutcome::Committed if !t.zombie && visible < t.values.len() => {
                    let missing: Vec<String> = t
                        .values
                        .iter()
                        .filter(|(_, v)| !seen.contains(v))
                        .map(|(k, v)| match t.offsets.get(v) {
                            Some(o) => format!("{} ({k} {o})", v.0),
                            None => format!("{} ({k})", v.0),
                        })
                        .collect();
                    out.push((
                        TxnAnomaly::LostCommittedWrite,
                        format!(
                            "committed transaction {i} ({}): values {missing:?} not in the final read",
                            t.producer
                        ),
                    ));
                }
                TxnOutcome::Unknown if visible > 0 && visible < t.values.len() => {
                    out.push((
                        TxnAnomaly::PartialTransaction,
                        format!(
                            "transaction {i} ({}): {visible} of {} values in the final read",
                            t.producer,
                            t.values.len()
                        ),
                    ));
                }
                _ => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(p: i32) -> Key {
        Key::new(TXN_TOPIC, p)
    }

    fn txn(values: &[(i32, u64)], outcome: TxnOutcome, commit_sent_ms: Option<u64>) -> TxnRecord {
        TxnRecord {
            producer: "txn-0".into(),
            values: values.iter().map(|&(p, v)| (k(p), Value(v))).collect(),
            commit_sent_ms,
            outcome,
            zombie: false,
            offsets: BTreeMap::new(),
        }
    }

    fn read(p: i32, offset: i64, value: u64, at_ms: u64) -> TxnRead {
        TxnRead {
            reader: 1,
            key: k(p),
            offset: Offset(offset),
            value: Value(value),
            at_ms,
        }
    }

    fn kinds(h: &TxnHistory) -> Vec<TxnAnomaly> {
        check(h).into_iter().map(|(a, _)| a).collect()
    }

    /// A valid history (a committed transaction read after its commit, an aborted one never
    /// read, everything committed in the final read) has no anomaly; each mutation of it has
    /// the one it makes.
    #[test]
    fn each_anomaly_is_found_and_a_valid_history_passes() {
        let valid = TxnHistory {
            txns: vec![
                txn(&[(0, 1), (1, 2)], TxnOutcome::Committed, Some(100)),
                txn(&[(0, 3)], TxnOutcome::Aborted, None),
                txn(&[(0, 4), (1, 5)], TxnOutcome::Unknown, Some(300)),
            ],
            reads: vec![read(0, 0, 1, 150), read(1, 0, 2, 160)],
            final_read: BTreeMap::from([
                (k(0), vec![(Offset(0), Value(1)), (Offset(3), Value(4))]),
                (k(1), vec![(Offset(0), Value(2)), (Offset(2), Value(5))]),
            ]),
            final_complete: true,
            ..TxnHistory::default()
        };
        assert_eq!(kinds(&valid), vec![]);

        let mut h = valid.clone();
        h.reads.push(read(0, 2, 3, 200));
        assert_eq!(kinds(&h), vec![TxnAnomaly::AbortedRead]);

        let mut h = valid.clone();
        h.reads.push(read(0, 3, 4, 250));
        assert_eq!(
            kinds(&h),
            vec![TxnAnomaly::UncommittedRead],
            "read before the commit"
        );

        let mut h = valid.clone();
        h.final_read.get_mut(&k(1)).unwrap().remove(0);
        assert_eq!(kinds(&h), vec![TxnAnomaly::LostCommittedWrite]);
        h.final_complete = false;
        assert_eq!(kinds(&h), vec![], "needs the complete final read");

        let mut h = valid.clone();
        h.final_read.get_mut(&k(1)).unwrap().remove(1);
        assert_eq!(kinds(&h), vec![TxnAnomaly::PartialTransaction]);

        let mut h = valid.clone();
        h.txns[0].zombie = true;
        assert_eq!(
            kinds(&h),
            vec![
                TxnAnomaly::ZombieCommit,
                TxnAnomaly::ZombieWrite,
                TxnAnomaly::ZombieWrite
            ]
        );

        let mut h = valid.clone();
        h.reads.push(read(1, 7, 1, 170));
        assert_eq!(kinds(&h), vec![TxnAnomaly::Duplicate]);

        let mut h = valid.clone();
        h.reads.push(read(0, 0, 2, 170));
        assert_eq!(
            kinds(&h),
            vec![TxnAnomaly::InconsistentOffsets, TxnAnomaly::Duplicate]
        );

        let mut h = valid;
        h.reads.push(read(0, 9, 99, 170));
        assert_eq!(kinds(&h), vec![TxnAnomaly::UnknownValue]);
    }
}
