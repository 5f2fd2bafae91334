//! The compacted workload and its checker (issue 18): producers write keyed values and
//! tombstones to [`COMPACT_TOPIC`], a topic with `cleanup.policy=compact`, tiny segments and a
//! cleaner set to clean at every chance ([`topic_configs`]), while the brokers' cleaners run
//! under every fault kind; a consumer polls it throughout, and after healing a final read
//! covers every partition from its start.
//!
//! The keys: a few hot keys written often, and [`COLD_KEYS`] cold keys written once or twice.
//! Cold keys are what expose a cleaning that loses a key's latest value: a hot key's loss is
//! soon covered by its next write, a cold key's stays for the final read to see (with only hot
//! keys, the planted `clean-above-high-watermark` was not caught in 200 seeds).
//!
//! What the checker ([`check`]) reports ([`CompactAnomaly`]):
//! - stale-latest: for some key, the final read's last record is older than the key's last
//!   acknowledged write (compaction's promise: a key reads as its last value), or the key is
//!   gone though its last acknowledged write is a value;
//! - unwritten-record: a read returned a record no send of that key wrote at that offset (a
//!   value nobody sent to that key, a value read at an offset other than the one it was
//!   acknowledged at, a tombstone where none can have been written). Every record was its
//!   key's latest when it was appended, so this is the promise that "no cleaned read returns a
//!   value that was never the latest at some point";
//! - nonmonotonic-read: one reader's offsets of one partition did not strictly increase.
//!
//! Indefinite sends may or may not have landed: a key's final record may be its last
//! acknowledged write or any indefinite write of it at a later offset. A tombstone past
//! `delete.retention.ms` may be gone or still there, so after a tombstone (acknowledged, or
//! indefinite) the key may read as absent or as that tombstone.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use keel_core::types::Offset;

use crate::checker::{Key, SendOutcome, Value};

/// The compacted topic the workload writes.
pub const COMPACT_TOPIC: &str = "jepsen-compact";
/// Hot keys, written often.
pub const HOT_KEYS: usize = 8;
/// Cold keys, written once or twice each.
pub const COLD_KEYS: usize = 64;
/// The share of sends that go to a hot key.
pub const HOT_SHARE: f64 = 0.7;
/// The share of sends that are tombstones.
pub const TOMBSTONE_SHARE: f64 = 0.1;
/// `delete.retention.ms` of the topic: short, so that tombstones are removed within a run.
pub const DELETE_RETENTION_MS: u64 = 3_000;

/// The topic's settings: segments of a few records, a cleaner that cleans whatever is dirty,
/// no lag.
pub fn topic_configs() -> Vec<(String, String)> {
    [
        ("cleanup.policy", "compact".to_string()),
        ("segment.bytes", "256".to_string()),
        ("min.cleanable.dirty.ratio", "0.01".to_string()),
        ("delete.retention.ms", DELETE_RETENTION_MS.to_string()),
        ("min.compaction.lag.ms", "0".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// Record key number `n` of the hot keys then the cold ones.
pub fn record_key(hot: bool, n: usize) -> String {
    if hot {
        format!("h{n}")
    } else {
        format!("c{n:02}")
    }
}

/// One send of the workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompactSend {
    pub process: u32,
    pub partition: Key,
    pub record_key: String,
    /// `None`: a tombstone.
    pub value: Option<Value>,
    pub outcome: SendOutcome,
}

/// One record as a read returned it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompactRecord {
    pub offset: Offset,
    pub record_key: String,
    pub value: Option<Value>,
}

/// One fetch's records, in the order returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompactRead {
    pub reader: u32,
    pub partition: Key,
    pub records: Vec<CompactRecord>,
}

/// What the workload did and saw.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactHistory {
    pub sends: Vec<CompactSend>,
    /// Every read but the final one, in the order they completed.
    pub reads: Vec<CompactRead>,
    /// The final read after healing, per partition, from the log's start to its end (only
    /// the partitions read to the end).
    pub final_read: BTreeMap<Key, Vec<CompactRecord>>,
    /// Whether the final read covered every partition.
    pub final_complete: bool,
}

/// An anomaly of the compacted history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CompactAnomaly {
    StaleLatest,
    UnwrittenRecord,
    NonmonotonicRead,
}

impl CompactAnomaly {
    pub fn name(self) -> &'static str {
        match self {
            CompactAnomaly::StaleLatest => "stale-latest",
            CompactAnomaly::UnwrittenRecord => "unwritten-record",
            CompactAnomaly::NonmonotonicRead => "nonmonotonic-read",
        }
    }
}

impl fmt::Display for CompactAnomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

fn show(value: Option<Value>) -> String {
    value.map_or("a tombstone".into(), |v| format!("value {v}"))
}

/// What the sends say about one partition.
#[derive(Default)]
struct Written<'a> {
    /// Acknowledged sends by offset.
    acked_at: BTreeMap<Offset, &'a CompactSend>,
    /// Every send that may have landed (acknowledged or indefinite), by value.
    by_value: BTreeMap<Value, &'a CompactSend>,
    /// Per record key: the last acknowledged send (by offset), whether an indefinite tombstone
    /// of it exists, and whether any send of it may have landed.
    last_acked: BTreeMap<&'a str, (Offset, &'a CompactSend)>,
    indefinite_tombstone: BTreeSet<&'a str>,
    keys: BTreeSet<&'a str>,
}

/// The anomalies of `h`, each with a sentence that shows it. The final-read rule needs the
/// complete final read and is checked only with it.
pub fn check(h: &CompactHistory) -> Vec<(CompactAnomaly, String)> {
    let mut out = Vec::new();
    let mut written: BTreeMap<&Key, Written> = BTreeMap::new();
    for s in &h.sends {
        let w = written.entry(&s.partition).or_default();
        match &s.outcome {
            SendOutcome::Fail { .. } => continue,
            SendOutcome::Ok { offset } => {
                w.acked_at.insert(*offset, s);
                let newer = w
                    .last_acked
                    .get(s.record_key.as_str())
                    .is_none_or(|(o, _)| o < offset);
                if newer {
                    w.last_acked.insert(&s.record_key, (*offset, s));
                }
            }
            SendOutcome::Indefinite { .. } => {
                if s.value.is_none() {
                    w.indefinite_tombstone.insert(&s.record_key);
                }
            }
        }
        w.keys.insert(&s.record_key);
        if let Some(v) = s.value {
            w.by_value.insert(v, s);
        }
    }
    let empty = Written::default();
    // Every record read: written by a send of its key, at its offset.
    let mut check_record = |reader: String, partition: &Key, r: &CompactRecord| {
        let w = written.get(partition).unwrap_or(&empty);
        let why = if let Some(acked) = w.acked_at.get(&r.offset) {
            (acked.record_key != r.record_key || acked.value != r.value).then(|| {
                format!(
                    "offset {} was acknowledged as {} of key {}",
                    r.offset,
                    show(acked.value),
                    acked.record_key
                )
            })
        } else {
            match r.value {
                Some(v) => match w.by_value.get(&v) {
                    None => Some("no send wrote that value".to_string()),
                    Some(s) if s.record_key != r.record_key => {
                        Some(format!("it was sent to key {}", s.record_key))
                    }
                    Some(CompactSend {
                        outcome: SendOutcome::Ok { offset },
                        ..
                    }) => Some(format!("it was acknowledged at offset {offset}")),
                    Some(_) => None,
                },
                // A tombstone not at an acknowledged offset: an indefinite one of the key.
                None => (!w.indefinite_tombstone.contains(r.record_key.as_str())).then(|| {
                    format!(
                        "no tombstone of key {} was acknowledged there or left indefinite",
                        r.record_key
                    )
                }),
            }
        };
        if let Some(why) = why {
            out.push((
                CompactAnomaly::UnwrittenRecord,
                format!(
                    "{reader} read {} of key {} at {partition} offset {}: {why}",
                    show(r.value),
                    r.record_key,
                    r.offset
                ),
            ));
        }
    };
    let mut last_read: BTreeMap<(u32, &Key), Offset> = BTreeMap::new();
    let mut order = Vec::new();
    for read in &h.reads {
        for r in &read.records {
            check_record(format!("reader {}", read.reader), &read.partition, r);
            if let Some(&before) = last_read.get(&(read.reader, &read.partition)) {
                if r.offset <= before {
                    order.push((
                        CompactAnomaly::NonmonotonicRead,
                        format!(
                            "reader {} read {} offset {} after offset {before}",
                            read.reader, read.partition, r.offset
                        ),
                    ));
                }
            }
            last_read.insert((read.reader, &read.partition), r.offset);
        }
    }
    for (partition, records) in &h.final_read {
        for (i, r) in records.iter().enumerate() {
            check_record("the final read".into(), partition, r);
            if i > 0 && r.offset <= records[i - 1].offset {
                order.push((
                    CompactAnomaly::NonmonotonicRead,
                    format!(
                        "the final read of {partition} read offset {} after offset {}",
                        r.offset,
                        records[i - 1].offset
                    ),
                ));
            }
        }
    }
    out.extend(order);
    if !h.final_complete {
        return out;
    }
    for (partition, w) in &written {
        let Some(records) = h.final_read.get(*partition) else {
            continue;
        };
        let mut last: BTreeMap<&str, &CompactRecord> = BTreeMap::new();
        for r in records {
            last.insert(r.record_key.as_str(), r);
        }
        for key in &w.keys {
            let acked = w.last_acked.get(key);
            let found = last.get(key);
            let why = match (acked, found) {
                (None, _) => None,
                (Some((offset, send)), None) => {
                    (send.value.is_some() && !w.indefinite_tombstone.contains(key)).then(|| {
                        format!(
                        "the key is gone, but its last acknowledged write is {} at offset {offset}",
                        show(send.value)
                    )
                    })
                }
                (Some((offset, send)), Some(r)) => (r.offset < *offset).then(|| {
                    format!(
                        "the last record read is {} at offset {}, but {} was acknowledged at \
                         offset {offset}",
                        show(r.value),
                        r.offset,
                        show(send.value)
                    )
                }),
            };
            if let Some(why) = why {
                out.push((
                    CompactAnomaly::StaleLatest,
                    format!("{partition} key {key}: {why}"),
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> Key {
        Key::new(COMPACT_TOPIC, 0)
    }

    fn send(key: &str, value: Option<u64>, outcome: SendOutcome) -> CompactSend {
        CompactSend {
            process: 0,
            partition: p(),
            record_key: key.into(),
            value: value.map(Value),
            outcome,
        }
    }

    fn ok(offset: i64) -> SendOutcome {
        SendOutcome::Ok {
            offset: Offset(offset),
        }
    }

    fn indefinite() -> SendOutcome {
        SendOutcome::Indefinite {
            reason: "timeout".into(),
        }
    }

    fn rec(offset: i64, key: &str, value: Option<u64>) -> CompactRecord {
        CompactRecord {
            offset: Offset(offset),
            record_key: key.into(),
            value: value.map(Value),
        }
    }

    fn history(sends: Vec<CompactSend>, final_read: Vec<CompactRecord>) -> CompactHistory {
        CompactHistory {
            sends,
            reads: Vec::new(),
            final_read: [(p(), final_read)].into_iter().collect(),
            final_complete: true,
        }
    }

    fn kinds(h: &CompactHistory) -> Vec<CompactAnomaly> {
        check(h).into_iter().map(|(k, _)| k).collect()
    }

    /// A compacted log reads as the latest value per key: older values may be gone, a
    /// tombstone may be gone or still there, and an indefinite write after the last
    /// acknowledged one may be the latest.
    #[test]
    fn a_cleaned_history_passes() {
        let sends = vec![
            send("a", Some(1), ok(0)),
            send("b", Some(2), ok(1)),
            send("a", Some(3), ok(2)),
            send("b", None, ok(3)),
            send("c", Some(4), ok(4)),
            send("c", Some(5), indefinite()),
            send("d", Some(6), indefinite()),
        ];
        let cleaned = vec![rec(2, "a", Some(3)), rec(4, "c", Some(4))];
        assert_eq!(kinds(&history(sends.clone(), cleaned)), vec![]);
        let uncleaned = vec![
            rec(0, "a", Some(1)),
            rec(1, "b", Some(2)),
            rec(2, "a", Some(3)),
            rec(3, "b", None),
            rec(4, "c", Some(4)),
            rec(5, "c", Some(5)),
            rec(6, "d", Some(6)),
        ];
        assert_eq!(kinds(&history(sends, uncleaned)), vec![]);
    }

    /// The cleaner keeping a key's first value: the final read's latest is older than the last
    /// acknowledged write.
    #[test]
    fn an_older_value_as_the_latest_is_stale() {
        let sends = vec![
            send("a", Some(1), ok(0)),
            send("a", Some(3), ok(1)),
            send("b", Some(4), ok(2)),
        ];
        let h = history(sends, vec![rec(0, "a", Some(1)), rec(2, "b", Some(4))]);
        assert_eq!(kinds(&h), vec![CompactAnomaly::StaleLatest]);
    }

    /// A key whose last acknowledged write is a value must be there; after a tombstone it may
    /// be gone.
    #[test]
    fn a_lost_key_is_stale_unless_deleted() {
        let sends = vec![send("a", Some(1), ok(0)), send("b", Some(2), ok(1))];
        let h = history(sends.clone(), vec![rec(1, "b", Some(2))]);
        assert_eq!(kinds(&h), vec![CompactAnomaly::StaleLatest]);
        let mut deleted = sends.clone();
        deleted.push(send("a", None, indefinite()));
        assert_eq!(kinds(&history(deleted, vec![rec(1, "b", Some(2))])), vec![]);
        // The older value after a tombstone: resurrected.
        let mut resurrected = sends;
        resurrected.push(send("a", None, ok(2)));
        let h = history(
            resurrected,
            vec![rec(0, "a", Some(1)), rec(1, "b", Some(2))],
        );
        assert_eq!(kinds(&h), vec![CompactAnomaly::StaleLatest]);
    }

    /// Records no send wrote, or at another offset or key, and offsets going back.
    #[test]
    fn unwritten_records_and_reordering_are_reported() {
        let sends = vec![send("a", Some(1), ok(0)), send("b", Some(2), indefinite())];
        let h = history(
            sends.clone(),
            vec![rec(0, "a", Some(1)), rec(1, "a", Some(2))],
        );
        assert_eq!(kinds(&h), vec![CompactAnomaly::UnwrittenRecord]);
        let h = history(sends.clone(), vec![rec(0, "a", Some(1)), rec(3, "a", None)]);
        assert_eq!(kinds(&h), vec![CompactAnomaly::UnwrittenRecord]);
        let h = history(sends.clone(), vec![rec(0, "b", Some(2))]);
        assert_eq!(
            kinds(&h),
            vec![CompactAnomaly::UnwrittenRecord, CompactAnomaly::StaleLatest]
        );
        let mut h = history(sends, vec![rec(0, "a", Some(1))]);
        h.reads.push(CompactRead {
            reader: 7,
            partition: p(),
            records: vec![rec(1, "b", Some(2)), rec(0, "a", Some(1))],
        });
        assert_eq!(kinds(&h), vec![CompactAnomaly::NonmonotonicRead]);
    }
}
