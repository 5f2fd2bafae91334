//! The checker of Jepsen's Kafka workload (jepsen/src/jepsen/tests/kafka.clj): reads a whole
//! [`History`] of sends and polls and reports every anomaly it can prove, with evidence.
//!
//! Pure: no I/O, no clock, no randomness, no hash maps; the same history always gives the same
//! [`CheckReport`], byte for byte.
//!
//! # The model
//! A *key* is one Kafka partition ([`Key`]: topic and partition). Every value sent to a key is a
//! unique `u64` ([`Value`]). Each client process runs its operations one at a time; the
//! history lists completed operations in completion order, so each process's operations appear
//! in its program order. An operation is one of:
//! - [`OpKind::Send`]: one value to one key, and what came of it ([`SendOutcome`]): `Ok` with
//!   the offset the broker acknowledged (acks=all); `Fail` when the value was definitely not
//!   written (every attempt was refused before it was appended); `Indefinite` when it may or
//!   may not have been (a timeout, a lost connection, NOT_LEADER after the request went out).
//! - [`OpKind::Poll`]: a consumer by assign read `records` of one key: `(offset, value)` pairs
//!   in the order returned, a contiguous read from the consumer's position.
//! - [`OpKind::Assign`]: the consumer now polls exactly these keys. As in Kafka (and Jepsen),
//!   positions of keys that stay assigned are kept; others are forgotten. A consumer that
//!   seeks back (e.g. the final reads from offset 0) must do so as a new process, as Jepsen's
//!   final polls crash the client first.
//! - [`OpKind::FinalRead`]: after healing, this process read `key` from its start to
//!   `end_offset` (the log end it listed after healing), with polls recorded before it.
//!
//! # What is derived
//! Per key, the *log*: for every offset, the set of values observed there, by acknowledged
//! sends (their offsets) and by every poll. Offsets nobody observed are gaps and take no place
//! in the *dense index* (Jepsen's `version-orders`: "indices are dense offsets").
//!
//! # The anomalies (each [`Anomaly`] variant documents its rule and cites Jepsen)
//! Read-side consistency: inconsistent-offsets, duplicate. Durability: lost-write, unseen.
//! Aborted reads: G1a. Per-consumer order: nonmonotonic-poll, poll-skip, and their in-poll
//! forms int-nonmonotonic-poll, int-poll-skip. Per-producer order: nonmonotonic-send. And one
//! Jepsen throws on rather than reports: unknown-value (a value read that nobody sent).
//!
//! # Consumer groups
//! Group members poll like any consumer (each new generation is an assign of no keys, then of
//! its keys, so poll-skip and nonmonotonic-poll are allowed across rebalances, as Jepsen's
//! subscribe mode allows them) and add three operations: [`OpKind::Commit`],
//! [`OpKind::OffsetFetch`] and, after healing, [`OpKind::GroupCaughtUp`]. Their anomalies:
//! nonmonotonic-commit, commit-past-read, lost-commit and group-unread (each variant states
//! its rule).
//!
//! Indefinite sends are never counted as lost or unseen; when their value appears, it takes
//! part in every other check like any other value (one offset, read in order, at most once).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use keel_core::types::Offset;

/// Anomalies of one kind printed by [`CheckReport`]'s `Display` before "... and N more".
pub const DISPLAY_PER_KIND_MAX: usize = 12;

/// Skipped offsets an anomaly keeps as evidence (the count is always exact).
pub const SKIPPED_EVIDENCE_MAX: usize = 8;

/// Jepsen's *key*: one topic-partition.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub topic: String,
    pub partition: i32,
}

impl Key {
    pub fn new(topic: impl Into<String>, partition: i32) -> Key {
        Key {
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Display for Key {
    /// Kafka's TopicPartition form: `topic-0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

/// A value sent to a key; unique per key over the whole history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Value(pub u64);

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A client process: runs one operation at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProcessId(pub u32);

impl fmt::Display for ProcessId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p{}", self.0)
    }
}

/// An operation's position in [`History::ops`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpIndex(pub usize);

impl fmt::Display for OpIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// What came of a send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SendOutcome {
    /// Acknowledged (acks=all) at this offset.
    Ok { offset: Offset },
    /// Definitely not written: every attempt was refused before an append (a validation
    /// error, NOT_ENOUGH_REPLICAS before appending, a connection that never opened).
    Fail { reason: String },
    /// May or may not have been written, at most once (Jepsen's `:info`).
    Indefinite { reason: String },
}

/// One completed operation's content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    Send {
        key: Key,
        value: Value,
        outcome: SendOutcome,
    },
    /// A consumer's contiguous read of `key`, records in the order returned.
    Poll {
        key: Key,
        records: Vec<(Offset, Value)>,
    },
    /// The consumer's assignment is now exactly `keys`.
    Assign { keys: Vec<Key> },
    /// After healing, this process read `key` from its start up to `end_offset` (exclusive),
    /// the log end it listed after healing.
    FinalRead { key: Key, end_offset: Offset },
    /// A fetch of `key` returned a batch whose CRC does not match: the broker served damaged
    /// bytes (it must answer KAFKA_STORAGE_ERROR instead, and read again elsewhere).
    CorruptRead { key: Key, reason: String },
    /// Right after a send was acknowledged at `acked`, a ListOffsets(latest) sent to the same
    /// leader, at the same leader epoch, answered `latest` (read-after-ack: it must be above
    /// `acked`). Recorded only when the leader answered.
    ReadAfterAck {
        key: Key,
        acked: Offset,
        latest: Offset,
    },
    /// A group member committed `offset` for `key`; `acked` when the broker answered with no
    /// error (durable), otherwise it may or may not have been written. `invoked` is the
    /// history length when the request was sent (operations before it completed first).
    Commit {
        key: Key,
        offset: Offset,
        acked: bool,
        invoked: usize,
    },
    /// A group member's OffsetFetch of `key` returned `offset` (`None`: no commit).
    /// `invoked` as for [`OpKind::Commit`].
    OffsetFetch {
        key: Key,
        offset: Option<Offset>,
        invoked: usize,
    },
    /// After healing, the group's `members` together polled `key` up to `end_offset` (the
    /// end its final read listed): every value read below it by anyone must have been read
    /// by a member.
    GroupCaughtUp {
        key: Key,
        end_offset: Offset,
        members: Vec<ProcessId>,
    },
}

/// One completed operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    pub process: ProcessId,
    pub kind: OpKind,
}

/// Completed operations in completion order (each process's in its program order).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    pub ops: Vec<Op>,
}

impl History {
    pub fn new() -> History {
        History::default()
    }

    pub fn push(&mut self, process: ProcessId, kind: OpKind) -> OpIndex {
        self.ops.push(Op { process, kind });
        OpIndex(self.ops.len() - 1)
    }

    pub fn send(
        &mut self,
        process: ProcessId,
        key: &Key,
        value: Value,
        outcome: SendOutcome,
    ) -> OpIndex {
        let key = key.clone();
        self.push(
            process,
            OpKind::Send {
                key,
                value,
                outcome,
            },
        )
    }

    pub fn poll(
        &mut self,
        process: ProcessId,
        key: &Key,
        records: Vec<(Offset, Value)>,
    ) -> OpIndex {
        let key = key.clone();
        self.push(process, OpKind::Poll { key, records })
    }

    pub fn assign(&mut self, process: ProcessId, keys: Vec<Key>) -> OpIndex {
        self.push(process, OpKind::Assign { keys })
    }

    /// A commit of `offset` for `key`, sent when the history had `invoked` operations.
    pub fn commit(
        &mut self,
        process: ProcessId,
        key: &Key,
        offset: Offset,
        acked: bool,
        invoked: usize,
    ) -> OpIndex {
        let key = key.clone();
        self.push(
            process,
            OpKind::Commit {
                key,
                offset,
                acked,
                invoked,
            },
        )
    }

    /// An OffsetFetch of `key` that returned `offset`, sent when the history had `invoked`
    /// operations.
    pub fn offset_fetch(
        &mut self,
        process: ProcessId,
        key: &Key,
        offset: Option<Offset>,
        invoked: usize,
    ) -> OpIndex {
        let key = key.clone();
        self.push(
            process,
            OpKind::OffsetFetch {
                key,
                offset,
                invoked,
            },
        )
    }

    /// The group's `members` together polled `key` up to `end_offset`.
    pub fn group_caught_up(
        &mut self,
        members: &[ProcessId],
        key: &Key,
        end_offset: Offset,
    ) -> OpIndex {
        let key = key.clone();
        let members = members.to_vec();
        self.push(
            members[0],
            OpKind::GroupCaughtUp {
                key,
                end_offset,
                members,
            },
        )
    }

    /// The end offset each key's final read listed.
    pub fn final_read_ends(&self) -> BTreeMap<Key, Offset> {
        self.ops
            .iter()
            .filter_map(|op| match &op.kind {
                OpKind::FinalRead { key, end_offset } => Some((key.clone(), *end_offset)),
                _ => None,
            })
            .collect()
    }

    pub fn final_read(&mut self, process: ProcessId, key: &Key, end_offset: Offset) -> OpIndex {
        let key = key.clone();
        self.push(process, OpKind::FinalRead { key, end_offset })
    }

    pub fn corrupt_read(&mut self, process: ProcessId, key: &Key, reason: String) -> OpIndex {
        let key = key.clone();
        self.push(process, OpKind::CorruptRead { key, reason })
    }

    pub fn read_after_ack(
        &mut self,
        process: ProcessId,
        key: &Key,
        acked: Offset,
        latest: Offset,
    ) -> OpIndex {
        let key = key.clone();
        self.push(process, OpKind::ReadAfterAck { key, acked, latest })
    }
}

/// One record a consumer read (or a producer had acknowledged), for evidence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Point {
    pub op: OpIndex,
    pub offset: Offset,
    pub value: Value,
}

impl fmt::Display for Point {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "offset {} value {} ({})",
            self.offset, self.value, self.op
        )
    }
}

/// The known offsets a consumer jumped over.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Skipped {
    /// How many known offsets lie strictly between the two reads.
    pub count: usize,
    /// The first [`SKIPPED_EVIDENCE_MAX`] of them, with a value observed there.
    pub first: Vec<(Offset, Value)>,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "skipping {} known offset(s):", self.count)?;
        for (offset, value) in &self.first {
            write!(f, " {offset}={value}")?;
        }
        if self.count > self.first.len() {
            write!(f, " ...")?;
        }
        Ok(())
    }
}

/// Why an acknowledged value counts as lost.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LostEvidence {
    /// Jepsen's rule: some poll read a value first observed at `max_read_offset` >= the lost
    /// value's offset, so every acknowledged value up to there should have been read.
    ReadPast {
        max_read_offset: Offset,
        reader: OpIndex,
    },
    /// The final read after healing (completed after the send) covered the key to its end,
    /// and never saw the value.
    FinalRead {
        final_read: OpIndex,
        end_offset: Offset,
    },
}

/// One proven anomaly, with its evidence. Variants are declared in report order.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Anomaly {
    /// One offset observed with two or more values (by acknowledged sends and polls).
    /// Jepsen `version-orders` `:errors`, reported as `:inconsistent-offsets`.
    InconsistentOffsets {
        key: Key,
        offset: Offset,
        /// Each value with the operations that observed it there.
        values: Vec<(Value, Vec<OpIndex>)>,
    },
    /// One value observed at two or more offsets. Jepsen `duplicate-cases`.
    Duplicate {
        key: Key,
        value: Value,
        /// Each offset with the operations that observed the value there.
        offsets: Vec<(Offset, Vec<OpIndex>)>,
    },
    /// An acknowledged send whose value no poll ever read, although it must have been: a
    /// poll read past it (Jepsen `lost-write-cases`), or the final read reached the end of the
    /// log without it.
    LostWrite {
        key: Key,
        value: Value,
        /// The acknowledged offset.
        offset: Offset,
        send: OpIndex,
        evidence: LostEvidence,
    },
    /// A value read whose every send definitely failed: an aborted read. Jepsen `g1a-cases`.
    G1a {
        key: Key,
        value: Value,
        sends: Vec<OpIndex>,
        readers: Vec<OpIndex>,
    },
    /// A consumer's next poll of a key started more than one known offset after where its
    /// previous poll of that key ended. Jepsen `poll-skip+nonmonotonic-cases` `:skip`.
    PollSkip {
        key: Key,
        process: ProcessId,
        from: Point,
        to: Point,
        skipped: Skipped,
    },
    /// A consumer's next poll of a key started at or before where its previous poll of that
    /// key ended. Jepsen `poll-skip+nonmonotonic-cases` `:nonmonotonic`.
    NonmonotonicPoll {
        key: Key,
        process: ProcessId,
        from: Point,
        to: Point,
    },
    /// Two successive records of one poll with known offsets between them. Jepsen
    /// `int-poll-skip+nonmonotonic-cases` `:skip` (`:int-poll-skip`).
    IntPollSkip {
        key: Key,
        process: ProcessId,
        from: Point,
        to: Point,
        skipped: Skipped,
    },
    /// Two successive records of one poll going backwards or repeating an offset. Jepsen
    /// `int-poll-skip+nonmonotonic-cases` `:nonmonotonic` (`:int-nonmonotonic-poll`).
    IntNonmonotonicPoll {
        key: Key,
        process: ProcessId,
        from: Point,
        to: Point,
    },
    /// A producer's acknowledged send to a key landed at or before its previous acknowledged
    /// send to that key. Jepsen `nonmonotonic-send-cases`.
    NonmonotonicSend {
        key: Key,
        process: ProcessId,
        from: Point,
        to: Point,
    },
    /// A value read that no operation ever sent to that key (Jepsen throws `:no-writer-of`).
    UnknownValue {
        key: Key,
        value: Value,
        offsets: Vec<Offset>,
        readers: Vec<OpIndex>,
    },
    /// An acknowledged send whose value no poll read by the end of the history, where that
    /// cannot be proven a loss (nothing later was read, and no final read covered the key).
    /// Jepsen `unseen` (whose count also includes lost writes; here each value is reported
    /// once, as lost-write when that can be proven).
    Unseen {
        key: Key,
        value: Value,
        offset: Offset,
        send: OpIndex,
    },
    /// A broker served a batch whose CRC does not match (keel's own check: a client that
    /// checks CRCs gets an error instead of data; one that does not reads garbage).
    CorruptRead {
        key: Key,
        op: OpIndex,
        reason: String,
    },
    /// A ListOffsets(latest) the leader answered right after acknowledging a send, at the same
    /// leader epoch, did not count the send: an acknowledged write a read could not see.
    StaleReadAfterAck {
        key: Key,
        op: OpIndex,
        acked: Offset,
        latest: Offset,
    },
    /// An acknowledged commit of one process went below its previous acknowledged commit of
    /// the key with no assign between. Commits of different processes, or across a
    /// rebalance, are not compared: concurrent commits around a rebalance may land in either
    /// order in Kafka, so no rule orders them.
    NonmonotonicCommit {
        key: Key,
        process: ProcessId,
        from: (OpIndex, Offset),
        to: (OpIndex, Offset),
    },
    /// A commit points past what the committing process had read: offset > last read + 1
    /// (and above any committed offset it had fetched).
    CommitPastRead {
        key: Key,
        process: ProcessId,
        op: OpIndex,
        offset: Offset,
        read_max: Option<Offset>,
    },
    /// A value read at an offset below where the group caught up after healing that no
    /// member of the group polled: the group skipped it (a commit past what was read, or a
    /// consumer starting at the wrong offset). Jepsen's subscribe-mode `lost`, for a group.
    GroupUnread {
        key: Key,
        offset: Offset,
        value: Value,
        caught_up: OpIndex,
    },
    /// An OffsetFetch returned an offset no commit could have left: below the last
    /// acknowledged commit completed before it began, and not the offset of any commit
    /// concurrent with (or after) that one.
    LostCommit {
        key: Key,
        fetch: OpIndex,
        fetched: Option<Offset>,
        commit: OpIndex,
        committed: Offset,
    },
}

/// The kinds of [`Anomaly`], in report order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AnomalyKind {
    InconsistentOffsets,
    Duplicate,
    LostWrite,
    G1a,
    PollSkip,
    NonmonotonicPoll,
    IntPollSkip,
    IntNonmonotonicPoll,
    NonmonotonicSend,
    UnknownValue,
    Unseen,
    CorruptRead,
    StaleReadAfterAck,
    NonmonotonicCommit,
    CommitPastRead,
    LostCommit,
    GroupUnread,
}

impl AnomalyKind {
    pub const ALL: [AnomalyKind; 17] = [
        AnomalyKind::InconsistentOffsets,
        AnomalyKind::Duplicate,
        AnomalyKind::LostWrite,
        AnomalyKind::G1a,
        AnomalyKind::PollSkip,
        AnomalyKind::NonmonotonicPoll,
        AnomalyKind::IntPollSkip,
        AnomalyKind::IntNonmonotonicPoll,
        AnomalyKind::NonmonotonicSend,
        AnomalyKind::UnknownValue,
        AnomalyKind::Unseen,
        AnomalyKind::CorruptRead,
        AnomalyKind::StaleReadAfterAck,
        AnomalyKind::NonmonotonicCommit,
        AnomalyKind::CommitPastRead,
        AnomalyKind::LostCommit,
        AnomalyKind::GroupUnread,
    ];

    /// Jepsen's name for the anomaly.
    pub fn name(self) -> &'static str {
        match self {
            AnomalyKind::InconsistentOffsets => "inconsistent-offsets",
            AnomalyKind::Duplicate => "duplicate",
            AnomalyKind::LostWrite => "lost-write",
            AnomalyKind::G1a => "G1a",
            AnomalyKind::PollSkip => "poll-skip",
            AnomalyKind::NonmonotonicPoll => "nonmonotonic-poll",
            AnomalyKind::IntPollSkip => "int-poll-skip",
            AnomalyKind::IntNonmonotonicPoll => "int-nonmonotonic-poll",
            AnomalyKind::NonmonotonicSend => "nonmonotonic-send",
            AnomalyKind::UnknownValue => "unknown-value",
            AnomalyKind::Unseen => "unseen",
            AnomalyKind::CorruptRead => "corrupt-read",
            AnomalyKind::StaleReadAfterAck => "stale-read-after-ack",
            AnomalyKind::NonmonotonicCommit => "nonmonotonic-commit",
            AnomalyKind::CommitPastRead => "commit-past-read",
            AnomalyKind::LostCommit => "lost-commit",
            AnomalyKind::GroupUnread => "group-unread",
        }
    }
}

impl fmt::Display for AnomalyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Anomaly {
    pub fn kind(&self) -> AnomalyKind {
        match self {
            Anomaly::InconsistentOffsets { .. } => AnomalyKind::InconsistentOffsets,
            Anomaly::Duplicate { .. } => AnomalyKind::Duplicate,
            Anomaly::LostWrite { .. } => AnomalyKind::LostWrite,
            Anomaly::G1a { .. } => AnomalyKind::G1a,
            Anomaly::PollSkip { .. } => AnomalyKind::PollSkip,
            Anomaly::NonmonotonicPoll { .. } => AnomalyKind::NonmonotonicPoll,
            Anomaly::IntPollSkip { .. } => AnomalyKind::IntPollSkip,
            Anomaly::IntNonmonotonicPoll { .. } => AnomalyKind::IntNonmonotonicPoll,
            Anomaly::NonmonotonicSend { .. } => AnomalyKind::NonmonotonicSend,
            Anomaly::UnknownValue { .. } => AnomalyKind::UnknownValue,
            Anomaly::Unseen { .. } => AnomalyKind::Unseen,
            Anomaly::CorruptRead { .. } => AnomalyKind::CorruptRead,
            Anomaly::StaleReadAfterAck { .. } => AnomalyKind::StaleReadAfterAck,
            Anomaly::NonmonotonicCommit { .. } => AnomalyKind::NonmonotonicCommit,
            Anomaly::CommitPastRead { .. } => AnomalyKind::CommitPastRead,
            Anomaly::LostCommit { .. } => AnomalyKind::LostCommit,
            Anomaly::GroupUnread { .. } => AnomalyKind::GroupUnread,
        }
    }

    /// The key the anomaly is about.
    pub fn key(&self) -> &Key {
        match self {
            Anomaly::InconsistentOffsets { key, .. }
            | Anomaly::Duplicate { key, .. }
            | Anomaly::LostWrite { key, .. }
            | Anomaly::G1a { key, .. }
            | Anomaly::PollSkip { key, .. }
            | Anomaly::NonmonotonicPoll { key, .. }
            | Anomaly::IntPollSkip { key, .. }
            | Anomaly::IntNonmonotonicPoll { key, .. }
            | Anomaly::NonmonotonicSend { key, .. }
            | Anomaly::UnknownValue { key, .. }
            | Anomaly::Unseen { key, .. }
            | Anomaly::CorruptRead { key, .. }
            | Anomaly::StaleReadAfterAck { key, .. }
            | Anomaly::NonmonotonicCommit { key, .. }
            | Anomaly::CommitPastRead { key, .. }
            | Anomaly::LostCommit { key, .. }
            | Anomaly::GroupUnread { key, .. } => key,
        }
    }
}

fn ops_list(ops: &[OpIndex]) -> String {
    let names: Vec<String> = ops.iter().map(OpIndex::to_string).collect();
    names.join(" ")
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: ", self.kind(), self.key())?;
        match self {
            Anomaly::InconsistentOffsets { offset, values, .. } => {
                write!(f, "offset {offset} holds")?;
                for (i, (value, ops)) in values.iter().enumerate() {
                    let sep = if i == 0 { "" } else { "," };
                    write!(f, "{sep} value {value} ({})", ops_list(ops))?;
                }
                Ok(())
            }
            Anomaly::Duplicate { value, offsets, .. } => {
                write!(f, "value {value} at")?;
                for (i, (offset, ops)) in offsets.iter().enumerate() {
                    let sep = if i == 0 { "" } else { "," };
                    write!(f, "{sep} offset {offset} ({})", ops_list(ops))?;
                }
                Ok(())
            }
            Anomaly::LostWrite {
                value,
                offset,
                send,
                evidence,
                ..
            } => {
                write!(
                    f,
                    "value {value} acknowledged at offset {offset} ({send}) was never read"
                )?;
                match evidence {
                    LostEvidence::ReadPast {
                        max_read_offset,
                        reader,
                    } => write!(f, ", although offset {max_read_offset} was ({reader})"),
                    LostEvidence::FinalRead {
                        final_read,
                        end_offset,
                    } => write!(
                        f,
                        ", although the final read ({final_read}) reached the end, offset {end_offset}"
                    ),
                }
            }
            Anomaly::G1a {
                value,
                sends,
                readers,
                ..
            } => write!(
                f,
                "value {value} was read ({}) but its send failed ({})",
                ops_list(readers),
                ops_list(sends)
            ),
            Anomaly::PollSkip {
                process,
                from,
                to,
                skipped,
                ..
            }
            | Anomaly::IntPollSkip {
                process,
                from,
                to,
                skipped,
                ..
            } => write!(f, "{process} read {from} then {to}, {skipped}"),
            Anomaly::NonmonotonicPoll {
                process, from, to, ..
            }
            | Anomaly::IntNonmonotonicPoll {
                process, from, to, ..
            } => write!(f, "{process} read {from} then went back to {to}"),
            Anomaly::NonmonotonicSend {
                process, from, to, ..
            } => write!(f, "{process} had {from} acknowledged, then {to}"),
            Anomaly::UnknownValue {
                value,
                offsets,
                readers,
                ..
            } => {
                let offsets: Vec<String> = offsets.iter().map(Offset::to_string).collect();
                write!(
                    f,
                    "value {value} read at offset {} ({}) was never sent",
                    offsets.join(" "),
                    ops_list(readers)
                )
            }
            Anomaly::CorruptRead { op, reason, .. } => {
                write!(f, "{op} was served a damaged batch: {reason}")
            }
            Anomaly::StaleReadAfterAck {
                op, acked, latest, ..
            } => write!(
                f,
                "{op}: acknowledged at offset {acked}, but the leader's latest offset right after \
                 was {latest}"
            ),
            Anomaly::NonmonotonicCommit {
                process, from, to, ..
            } => write!(
                f,
                "{process} committed {} ({}) after {} ({})",
                to.1, to.0, from.1, from.0
            ),
            Anomaly::CommitPastRead {
                process,
                op,
                offset,
                read_max,
                ..
            } => write!(
                f,
                "{process} committed {offset} ({op}) having read up to {read_max:?}"
            ),
            Anomaly::LostCommit {
                fetch,
                fetched,
                commit,
                committed,
                ..
            } => write!(
                f,
                "{fetch} fetched {fetched:?} after commit {committed} ({commit}) was acknowledged"
            ),
            Anomaly::GroupUnread {
                offset,
                value,
                caught_up,
                ..
            } => write!(
                f,
                "{value} at {offset} was read, but by no member of the group, which caught up \
                 past it ({caught_up})"
            ),
            Anomaly::Unseen {
                value,
                offset,
                send,
                ..
            } => write!(
                f,
                "value {value} acknowledged at offset {offset} ({send}) was never read"
            ),
        }
    }
}

/// What the history held.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckStats {
    pub ops: usize,
    pub processes: usize,
    pub keys: usize,
    pub sends_ok: usize,
    pub sends_failed: usize,
    pub sends_indefinite: usize,
    /// Indefinite sends whose value some poll read.
    pub indefinite_seen: usize,
    pub polls: usize,
    pub records_read: usize,
    pub final_reads: usize,
    /// ListOffsets answered by the acknowledging leader right after an acknowledgement.
    pub reads_after_ack: usize,
    /// Distinct offsets observed, over all keys.
    pub offsets_known: usize,
}

/// The checker's verdict: every anomaly found, sorted by kind (in [`AnomalyKind`] order),
/// then key, then evidence.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckReport {
    pub anomalies: Vec<Anomaly>,
    pub stats: CheckStats,
}

impl CheckReport {
    /// No anomaly of any kind.
    pub fn is_clean(&self) -> bool {
        self.anomalies.is_empty()
    }

    /// Anomalies of `kind`.
    pub fn count(&self, kind: AnomalyKind) -> usize {
        self.anomalies.iter().filter(|a| a.kind() == kind).count()
    }

    /// The number of anomalies of each kind found (kinds with none are left out).
    pub fn counts(&self) -> BTreeMap<AnomalyKind, usize> {
        let mut counts = BTreeMap::new();
        for a in &self.anomalies {
            *counts.entry(a.kind()).or_insert(0) += 1;
        }
        counts
    }

    /// The kinds found.
    pub fn kinds(&self) -> BTreeSet<AnomalyKind> {
        self.anomalies.iter().map(Anomaly::kind).collect()
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.stats;
        writeln!(
            f,
            "history: {} ops by {} processes on {} keys; sends: {} ok, {} failed, {} indefinite \
             ({} seen); {} polls read {} records; {} final reads; {} reads after an ack; {} offsets \
             known",
            s.ops,
            s.processes,
            s.keys,
            s.sends_ok,
            s.sends_failed,
            s.sends_indefinite,
            s.indefinite_seen,
            s.polls,
            s.records_read,
            s.final_reads,
            s.reads_after_ack,
            s.offsets_known
        )?;
        if self.anomalies.is_empty() {
            return writeln!(f, "anomalies: none");
        }
        let counts: Vec<String> = self
            .counts()
            .iter()
            .map(|(kind, n)| format!("{kind} {n}"))
            .collect();
        writeln!(
            f,
            "anomalies: {} ({})",
            self.anomalies.len(),
            counts.join(", ")
        )?;
        for (kind, n) in self.counts() {
            for a in self
                .anomalies
                .iter()
                .filter(|a| a.kind() == kind)
                .take(DISPLAY_PER_KIND_MAX)
            {
                writeln!(f, "  {a}")?;
            }
            if n > DISPLAY_PER_KIND_MAX {
                writeln!(f, "  {kind}: ... and {} more", n - DISPLAY_PER_KIND_MAX)?;
            }
        }
        Ok(())
    }
}

/// Everything known about one key.
#[derive(Default)]
struct KeyState {
    /// offset -> value -> the operations that observed the value there.
    log: BTreeMap<Offset, BTreeMap<Value, Vec<OpIndex>>>,
    /// value -> its sends.
    sends: BTreeMap<Value, Vec<OpIndex>>,
    /// value -> the polls that read it (one entry per record read).
    readers: BTreeMap<Value, Vec<OpIndex>>,
    /// value -> offset -> the operations that observed it there.
    places: BTreeMap<Value, BTreeMap<Offset, Vec<OpIndex>>>,
    /// (final read op, end offset).
    final_reads: Vec<(OpIndex, Offset)>,
    /// Observed offsets in order: position = dense index (filled after the first pass).
    dense: Vec<Offset>,
}

impl KeyState {
    fn observe(&mut self, offset: Offset, value: Value, op: OpIndex) {
        self.log
            .entry(offset)
            .or_default()
            .entry(value)
            .or_default()
            .push(op);
        self.places
            .entry(value)
            .or_default()
            .entry(offset)
            .or_default()
            .push(op);
    }

    /// The dense index of an observed offset.
    fn index(&self, offset: Offset) -> usize {
        self.dense
            .binary_search(&offset)
            .expect("every offset read or acknowledged is in the key's log")
    }

    /// Known offsets strictly between two observed ones.
    fn skipped(&self, from: Offset, to: Offset) -> Skipped {
        let (i, j) = (self.index(from), self.index(to));
        let between = &self.dense[i + 1..j];
        Skipped {
            count: between.len(),
            first: between
                .iter()
                .take(SKIPPED_EVIDENCE_MAX)
                .map(|o| {
                    let value = self.log[o]
                        .keys()
                        .next()
                        .copied()
                        .expect("a known offset holds a value");
                    (*o, value)
                })
                .collect(),
        }
    }

    /// Where a consumer went from `from` to `to`: `Some(Ok(skipped))` for a skip,
    /// `Some(Err(()))` for a step back (or in place), `None` for the next known offset.
    fn step(&self, from: Offset, to: Offset) -> Option<Result<Skipped, ()>> {
        let (i, j) = (self.index(from), self.index(to));
        if j <= i {
            Some(Err(()))
        } else if j > i + 1 {
            Some(Ok(self.skipped(from, to)))
        } else {
            None
        }
    }
}

/// Checks a whole history. See the module documentation for the rules.
pub fn check(history: &History) -> CheckReport {
    let mut keys: BTreeMap<&Key, KeyState> = BTreeMap::new();
    let mut stats = CheckStats {
        ops: history.ops.len(),
        ..CheckStats::default()
    };
    let mut processes = BTreeSet::new();
    let mut anomalies = Vec::new();

    // Pass 1: the log of each key, and who sent and read what.
    for (i, op) in history.ops.iter().enumerate() {
        let at = OpIndex(i);
        processes.insert(op.process);
        match &op.kind {
            OpKind::Send {
                key,
                value,
                outcome,
            } => {
                let k = keys.entry(key).or_default();
                k.sends.entry(*value).or_default().push(at);
                match outcome {
                    SendOutcome::Ok { offset } => {
                        stats.sends_ok += 1;
                        k.observe(*offset, *value, at);
                    }
                    SendOutcome::Fail { .. } => stats.sends_failed += 1,
                    SendOutcome::Indefinite { .. } => stats.sends_indefinite += 1,
                }
            }
            OpKind::Poll { key, records } => {
                stats.polls += 1;
                stats.records_read += records.len();
                let k = keys.entry(key).or_default();
                for (offset, value) in records {
                    k.observe(*offset, *value, at);
                    k.readers.entry(*value).or_default().push(at);
                }
            }
            OpKind::Assign { .. }
            | OpKind::Commit { .. }
            | OpKind::OffsetFetch { .. }
            | OpKind::GroupCaughtUp { .. } => {}
            OpKind::CorruptRead { key, reason } => anomalies.push(Anomaly::CorruptRead {
                key: (*key).clone(),
                op: at,
                reason: reason.clone(),
            }),
            OpKind::ReadAfterAck { key, acked, latest } => {
                stats.reads_after_ack += 1;
                if latest <= acked {
                    anomalies.push(Anomaly::StaleReadAfterAck {
                        key: (*key).clone(),
                        op: at,
                        acked: *acked,
                        latest: *latest,
                    });
                }
            }
            OpKind::FinalRead { key, end_offset } => {
                stats.final_reads += 1;
                keys.entry(key)
                    .or_default()
                    .final_reads
                    .push((at, *end_offset));
            }
        }
    }
    for k in keys.values_mut() {
        k.dense = k.log.keys().copied().collect();
        stats.offsets_known += k.dense.len();
    }
    stats.processes = processes.len();
    stats.keys = keys.len();

    for (key, k) in &keys {
        check_key(history, key, k, &mut stats, &mut anomalies);
    }
    check_processes(history, &keys, &mut anomalies);
    check_commits(history, &mut anomalies);
    check_group_reads(history, &keys, &mut anomalies);
    anomalies.sort();
    CheckReport { anomalies, stats }
}

fn outcome_of(history: &History, op: OpIndex) -> &SendOutcome {
    match &history.ops[op.0].kind {
        OpKind::Send { outcome, .. } => outcome,
        other => unreachable!("{op} is a send, not {other:?}"),
    }
}

/// The checks on one key's log: inconsistent-offsets, duplicate, G1a, unknown-value,
/// lost-write, unseen.
fn check_key(
    history: &History,
    key: &Key,
    k: &KeyState,
    stats: &mut CheckStats,
    anomalies: &mut Vec<Anomaly>,
) {
    for (offset, values) in &k.log {
        if values.len() > 1 {
            anomalies.push(Anomaly::InconsistentOffsets {
                key: key.clone(),
                offset: *offset,
                values: values.iter().map(|(v, ops)| (*v, ops.clone())).collect(),
            });
        }
    }
    for (value, places) in &k.places {
        if places.len() > 1 {
            anomalies.push(Anomaly::Duplicate {
                key: key.clone(),
                value: *value,
                offsets: places.iter().map(|(o, ops)| (*o, ops.clone())).collect(),
            });
        }
    }
    for (value, readers) in &k.readers {
        let mut readers = readers.clone();
        readers.dedup();
        match k.sends.get(value) {
            None => anomalies.push(Anomaly::UnknownValue {
                key: key.clone(),
                value: *value,
                offsets: k.places[value].keys().copied().collect(),
                readers,
            }),
            Some(sends) => {
                let outcomes: Vec<&SendOutcome> =
                    sends.iter().map(|s| outcome_of(history, *s)).collect();
                if outcomes
                    .iter()
                    .all(|o| matches!(o, SendOutcome::Fail { .. }))
                {
                    anomalies.push(Anomaly::G1a {
                        key: key.clone(),
                        value: *value,
                        sends: sends.clone(),
                        readers,
                    });
                }
                if outcomes
                    .iter()
                    .any(|o| matches!(o, SendOutcome::Indefinite { .. }))
                {
                    stats.indefinite_seen += 1;
                }
            }
        }
    }

    // Jepsen's bound: the highest of the first offsets at which read values appear, and the
    // earliest poll that read the value there.
    let bound = k
        .readers
        .iter()
        .map(|(value, readers)| {
            let first = *k.places[value]
                .keys()
                .next()
                .expect("a read value has a place");
            (first, readers[0])
        })
        .max_by_key(|(offset, _)| *offset);
    for (value, sends) in &k.sends {
        if k.readers.contains_key(value) {
            continue;
        }
        for send in sends {
            let SendOutcome::Ok { offset } = outcome_of(history, *send) else {
                continue;
            };
            // A final read counts only if it completed after the send did.
            let final_read = k.final_reads.iter().find(|(op, _)| op > send);
            let evidence = match (bound, final_read) {
                (Some((max_read_offset, reader)), _) if *offset <= max_read_offset => {
                    Some(LostEvidence::ReadPast {
                        max_read_offset,
                        reader,
                    })
                }
                (_, Some((final_read, end_offset))) => Some(LostEvidence::FinalRead {
                    final_read: *final_read,
                    end_offset: *end_offset,
                }),
                _ => None,
            };
            anomalies.push(match evidence {
                Some(evidence) => Anomaly::LostWrite {
                    key: key.clone(),
                    value: *value,
                    offset: *offset,
                    send: *send,
                    evidence,
                },
                None => Anomaly::Unseen {
                    key: key.clone(),
                    value: *value,
                    offset: *offset,
                    send: *send,
                },
            });
        }
    }
}

/// The per-process checks, in each process's program order: poll-skip, nonmonotonic-poll
/// (across its polls of a key and inside one poll) and nonmonotonic-send.
fn check_processes(
    history: &History,
    keys: &BTreeMap<&Key, KeyState>,
    anomalies: &mut Vec<Anomaly>,
) {
    // process -> key -> the last record its last non-empty poll of the key read.
    let mut last_read: BTreeMap<ProcessId, BTreeMap<&Key, Point>> = BTreeMap::new();
    // process -> key -> its last acknowledged send to the key.
    let mut last_sent: BTreeMap<ProcessId, BTreeMap<&Key, Point>> = BTreeMap::new();
    for (i, op) in history.ops.iter().enumerate() {
        let at = OpIndex(i);
        match &op.kind {
            OpKind::Assign { keys: assigned } => {
                // Kafka keeps the positions of partitions that stay assigned (Jepsen:
                // `select-keys last-reads`).
                if let Some(reads) = last_read.get_mut(&op.process) {
                    reads.retain(|k, _| assigned.contains(*k));
                }
            }
            OpKind::Poll { key, records } => {
                let k = &keys[key];
                let points: Vec<Point> = records
                    .iter()
                    .map(|(offset, value)| Point {
                        op: at,
                        offset: *offset,
                        value: *value,
                    })
                    .collect();
                let (Some(first), Some(last)) = (points.first(), points.last()) else {
                    // An empty poll leaves the consumer where it was.
                    continue;
                };
                let reads = last_read.entry(op.process).or_default();
                if let Some(previous) = reads.get(key) {
                    match k.step(previous.offset, first.offset) {
                        Some(Ok(skipped)) => anomalies.push(Anomaly::PollSkip {
                            key: key.clone(),
                            process: op.process,
                            from: *previous,
                            to: *first,
                            skipped,
                        }),
                        Some(Err(())) => anomalies.push(Anomaly::NonmonotonicPoll {
                            key: key.clone(),
                            process: op.process,
                            from: *previous,
                            to: *first,
                        }),
                        None => {}
                    }
                }
                for pair in points.windows(2) {
                    let (from, to) = (pair[0], pair[1]);
                    match k.step(from.offset, to.offset) {
                        Some(Ok(skipped)) => anomalies.push(Anomaly::IntPollSkip {
                            key: key.clone(),
                            process: op.process,
                            from,
                            to,
                            skipped,
                        }),
                        Some(Err(())) => anomalies.push(Anomaly::IntNonmonotonicPoll {
                            key: key.clone(),
                            process: op.process,
                            from,
                            to,
                        }),
                        None => {}
                    }
                }
                reads.insert(key, *last);
            }
            OpKind::Send {
                key,
                value,
                outcome: SendOutcome::Ok { offset },
            } => {
                let point = Point {
                    op: at,
                    offset: *offset,
                    value: *value,
                };
                let sent = last_sent.entry(op.process).or_default();
                if let Some(previous) = sent.get(key) {
                    if point.offset <= previous.offset {
                        anomalies.push(Anomaly::NonmonotonicSend {
                            key: key.clone(),
                            process: op.process,
                            from: *previous,
                            to: point,
                        });
                    }
                }
                sent.insert(key, point);
            }
            OpKind::Send { .. }
            | OpKind::FinalRead { .. }
            | OpKind::CorruptRead { .. }
            | OpKind::ReadAfterAck { .. }
            | OpKind::Commit { .. }
            | OpKind::OffsetFetch { .. }
            | OpKind::GroupCaughtUp { .. } => {}
        }
    }
}

/// group-unread: below where the group caught up, every value anyone read, some member read.
fn check_group_reads(
    history: &History,
    keys: &BTreeMap<&Key, KeyState>,
    anomalies: &mut Vec<Anomaly>,
) {
    for (i, op) in history.ops.iter().enumerate() {
        let OpKind::GroupCaughtUp {
            key,
            end_offset,
            members,
        } = &op.kind
        else {
            continue;
        };
        let Some(k) = keys.get(key) else { continue };
        for (offset, values) in k.log.range(..*end_offset) {
            for value in values.keys() {
                let readers = k.readers.get(value).map(Vec::as_slice).unwrap_or(&[]);
                let by_member = readers
                    .iter()
                    .any(|r| members.contains(&history.ops[r.0].process));
                if !readers.is_empty() && !by_member {
                    anomalies.push(Anomaly::GroupUnread {
                        key: key.clone(),
                        offset: *offset,
                        value: *value,
                        caught_up: OpIndex(i),
                    });
                }
            }
        }
    }
}

/// The commit checks: nonmonotonic-commit, commit-past-read, lost-commit. One group per
/// history (the workload runs one).
fn check_commits(history: &History, anomalies: &mut Vec<Anomaly>) {
    // process -> key -> its last acknowledged commit since its last assign.
    let mut last_commit: BTreeMap<ProcessId, BTreeMap<&Key, (OpIndex, Offset)>> = BTreeMap::new();
    // process -> key -> the highest offset it read or fetched as committed (+1 for reads:
    // the offset it may commit).
    let mut may_commit: BTreeMap<ProcessId, BTreeMap<&Key, Offset>> = BTreeMap::new();
    for (i, op) in history.ops.iter().enumerate() {
        let at = OpIndex(i);
        match &op.kind {
            OpKind::Assign { .. } => {
                last_commit.remove(&op.process);
            }
            OpKind::Poll { key, records } => {
                if let Some(max) = records.iter().map(|(o, _)| o.plus(1)).max() {
                    let m = may_commit.entry(op.process).or_default();
                    let e = m.entry(key).or_insert(max);
                    *e = (*e).max(max);
                }
            }
            OpKind::OffsetFetch {
                key,
                offset: Some(o),
                ..
            } => {
                let m = may_commit.entry(op.process).or_default();
                let e = m.entry(key).or_insert(*o);
                *e = (*e).max(*o);
            }
            OpKind::Commit {
                key, offset, acked, ..
            } => {
                let allowed = may_commit
                    .get(&op.process)
                    .and_then(|m| m.get(key))
                    .copied();
                if offset.0 > 0 && allowed.is_none_or(|a| *offset > a) {
                    anomalies.push(Anomaly::CommitPastRead {
                        key: key.clone(),
                        process: op.process,
                        op: at,
                        offset: *offset,
                        read_max: allowed,
                    });
                }
                if *acked {
                    let c = last_commit.entry(op.process).or_default();
                    if let Some(prev) = c.get(key) {
                        if *offset < prev.1 {
                            anomalies.push(Anomaly::NonmonotonicCommit {
                                key: key.clone(),
                                process: op.process,
                                from: *prev,
                                to: (at, *offset),
                            });
                        }
                    }
                    c.insert(key, (at, *offset));
                }
            }
            _ => {}
        }
    }
    // Lost commits.
    for (i, op) in history.ops.iter().enumerate() {
        let OpKind::OffsetFetch {
            key,
            offset: fetched,
            invoked,
        } = &op.kind
        else {
            continue;
        };
        // The last acknowledged commit of the key completed before the fetch began.
        let last = history.ops[..(*invoked).min(i)]
            .iter()
            .enumerate()
            .rev()
            .find_map(|(j, o)| match &o.kind {
                OpKind::Commit {
                    key: k,
                    offset,
                    acked: true,
                    invoked,
                } if k == key => Some((j, *offset, *invoked)),
                _ => None,
            });
        let Some((c, committed, c_invoked)) = last else {
            continue;
        };
        if *fetched == Some(committed) {
            continue;
        }
        // Commits that may have been written after it: not completed before it began, and
        // begun before the fetch completed.
        let explained = history.ops.iter().enumerate().any(|(j, o)| match &o.kind {
            OpKind::Commit {
                key: k,
                offset,
                invoked: x_invoked,
                ..
            } => k == key && j >= c_invoked && *x_invoked <= i && *fetched == Some(*offset),
            _ => false,
        });
        if !explained {
            anomalies.push(Anomaly::LostCommit {
                key: key.clone(),
                fetch: OpIndex(i),
                fetched: *fetched,
                commit: OpIndex(c),
                committed,
            });
        }
    }
}

#[cfg(test)]
mod tests;
