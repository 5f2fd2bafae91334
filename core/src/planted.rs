//! Known bugs, planted on purpose, that the simulator's checker must catch (issue 5's proof that
//! the checker works). Compiled in only with the `planted-bugs` cargo feature, which no release
//! build enables: without it, [`active`] is a constant `false` and every planted branch is dead
//! code the compiler removes.
//!
//! One bug at most is active at a time, process-wide (all simulated brokers share it): the
//! simulator plants it before a run ([`plant`]) and clears it after.

/// A planted bug.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Bug {
    /// The leader answers an acks=all produce once the batch is in its own log, without
    /// waiting for the high watermark.
    AckBeforeIsr,
    /// The high watermark counts the leader's unsynced log end as durable.
    HighWatermarkWithoutSync,
    /// Elections pick the first live replica, in the ISR or not.
    ElectOutsideIsr,
    /// The leader never answers a follower's fetch with a divergence, so a diverged suffix
    /// is never truncated.
    SkipTruncation,
    /// Reads return batches without verifying them: neither the CRC nor the fields outside it
    /// (base offset, leader epoch) are checked on the way out, so a batch that rotted on the
    /// disk is served as it is.
    ServeCorruptBatch,
    /// The group coordinator applies and acknowledges an OffsetCommit as soon as it has
    /// written the record, without waiting for the record to be durable (committed in
    /// `__consumer_offsets`).
    CommitBeforeDurable,
    /// A leader's fetch session drops the new position a follower names for a partition it
    /// had answered (when the position is odd), so the follower waits
    /// for an answer that never comes and stops replicating that partition.
    SessionDropsPosition,
    /// A follower told by its leader that its log diverged (`divergingEpoch`) keeps its log as
    /// it is and fetches again: it never truncates, never catches up and never rejoins the
    /// ISR. No client reads a follower, so only the convergence phase sees it.
    FollowerSkipsTruncation,
    /// A leader elected over a log that already holds data refuses every acks=all produce
    /// with NOT_ENOUGH_REPLICAS, whatever its ISR: a refusal is a definite failure, which no
    /// safety check counts, so only the availability check sees it.
    RefuseAfterFailover,
    /// The broker reads the produce request's timeout in microseconds, not milliseconds (a
    /// unit slip): acks=all that take longer than a few milliseconds become
    /// REQUEST_TIMED_OUT, indefinite to the client, and nothing is lost. No safety check sees
    /// it; the share of indefinite sends does.
    ShortProduceTimeout,
    /// Recovery finds the torn batch at the end of a segment but does not cut it off: the log
    /// stops before it in memory while the file keeps it, so the next append lands after the
    /// torn bytes. Reads repair this later (the damaged batch is found and fetched back); only
    /// the recovery oracle sees recovery itself go wrong.
    RecoveryKeepsTornTail,
    /// The leader's maximal ISR (what the high watermark and acks=all count) leaves out the
    /// last follower of the committed ISR: the high watermark runs ahead of that follower's
    /// durable end. The leader's own assertions check the high watermark against the same
    /// maximal ISR, so they hold; the monitor's check against the committed ISR members' own
    /// durable ends does not.
    MaximalIsrDropsAMember,
    /// The last stable offset ignores open transactions: it is the high watermark, so a
    /// `read_committed` fetch returns the records of transactions not yet decided (Redpanda's
    /// aborted reads, found by Jepsen).
    LsoPassesOpenTxn,
    /// The transaction coordinator takes a request from an older producer epoch as if it were
    /// the current one: a fenced producer (a zombie) can add partitions and commit.
    FencedEpochAccepted,
    /// A reassignment completes without waiting for its new replicas: the old replicas leave
    /// the replicas and the ISR before the new ones are in sync, and the new ones are taken
    /// into the ISR as they are (empty), so one may lead without what was acknowledged.
    RemoveBeforeInSync,
    /// Under transaction version 2 the coordinator ends a transaction (EndTxn v5) without
    /// bumping the producer epoch: its markers carry the epoch the transaction wrote with and
    /// the producer keeps it, so a write of an ended transaction that arrives late is taken
    /// into the producer's next one (the hanging and lost writes KIP-890 part 2 fixes).
    Tv2EpochNotBumped,
    /// A replica a reassignment adds fetches with the wrong epoch: as its last fetched epoch
    /// (KIP-279's divergence check) it names the leader epoch the metadata last gave it, not
    /// the epoch of its last batch, which is stale once the leader changes. Batches it fetched
    /// from the old leader are then claimed for the new epoch, the new leader finds no
    /// divergence, and the replica keeps the old leader's unacknowledged suffix where the new
    /// leader wrote other records: its log differs from the leader's below the high
    /// watermark, and it may lead.
    AddedWithStaleEpoch,
    /// The log cleaner keeps each key's first record in the dirty part instead of its last:
    /// a compacted topic reads an older value than the last one written.
    CleanerKeepsFirst,
    /// The log cleaner cleans up to the log end, not the high watermark: records not yet
    /// committed shadow committed ones, and when a new leader truncates them away the key's
    /// acknowledged value is gone with them.
    CleanAboveHighWatermark,
}

impl Bug {
    /// Every planted bug.
    pub const ALL: [Bug; 19] = [
        Bug::AckBeforeIsr,
        Bug::HighWatermarkWithoutSync,
        Bug::ElectOutsideIsr,
        Bug::SkipTruncation,
        Bug::ServeCorruptBatch,
        Bug::CommitBeforeDurable,
        Bug::SessionDropsPosition,
        Bug::FollowerSkipsTruncation,
        Bug::RefuseAfterFailover,
        Bug::ShortProduceTimeout,
        Bug::RecoveryKeepsTornTail,
        Bug::MaximalIsrDropsAMember,
        Bug::LsoPassesOpenTxn,
        Bug::FencedEpochAccepted,
        Bug::RemoveBeforeInSync,
        Bug::Tv2EpochNotBumped,
        Bug::AddedWithStaleEpoch,
        Bug::CleanerKeepsFirst,
        Bug::CleanAboveHighWatermark,
    ];

    /// A short name for the command line.
    pub fn name(self) -> &'static str {
        match self {
            Bug::AckBeforeIsr => "ack-before-isr",
            Bug::HighWatermarkWithoutSync => "hw-without-sync",
            Bug::ElectOutsideIsr => "elect-outside-isr",
            Bug::SkipTruncation => "skip-truncation",
            Bug::ServeCorruptBatch => "serve-corrupt-batch",
            Bug::CommitBeforeDurable => "commit-before-durable",
            Bug::SessionDropsPosition => "session-drops-position",
            Bug::FollowerSkipsTruncation => "follower-skips-truncation",
            Bug::RefuseAfterFailover => "refuse-after-failover",
            Bug::ShortProduceTimeout => "short-produce-timeout",
            Bug::RecoveryKeepsTornTail => "recovery-keeps-torn-tail",
            Bug::MaximalIsrDropsAMember => "maximal-isr-drops-a-member",
            Bug::LsoPassesOpenTxn => "lso-passes-open-txn",
            Bug::FencedEpochAccepted => "fenced-epoch-accepted",
            Bug::RemoveBeforeInSync => "remove-before-in-sync",
            Bug::Tv2EpochNotBumped => "tv2-epoch-not-bumped",
            Bug::AddedWithStaleEpoch => "added-with-stale-epoch",
            Bug::CleanerKeepsFirst => "cleaner-keeps-first",
            Bug::CleanAboveHighWatermark => "clean-above-high-watermark",
        }
    }

    /// The bug named `name`.
    pub fn from_name(name: &str) -> Option<Bug> {
        Bug::ALL.into_iter().find(|b| b.name() == name)
    }
}

#[cfg(feature = "planted-bugs")]
mod active_bug {
    use std::sync::atomic::{AtomicU8, Ordering};

    use super::Bug;

    static ACTIVE: AtomicU8 = AtomicU8::new(0);

    pub fn plant(bug: Option<Bug>) {
        let code = bug.map_or(0, |b| {
            Bug::ALL.iter().position(|&x| x == b).unwrap_or(0) + 1
        });
        ACTIVE.store(code as u8, Ordering::SeqCst);
    }

    pub fn active(bug: Bug) -> bool {
        let code = ACTIVE.load(Ordering::Relaxed) as usize;
        code != 0 && Bug::ALL.get(code - 1) == Some(&bug)
    }
}

/// Plants `bug` (or none) for every broker in this process.
#[cfg(feature = "planted-bugs")]
pub fn plant(bug: Option<Bug>) {
    active_bug::plant(bug)
}

/// Whether `bug` is planted.
#[cfg(feature = "planted-bugs")]
#[inline]
pub fn active(bug: Bug) -> bool {
    active_bug::active(bug)
}

/// Whether `bug` is planted: never, in this build.
#[cfg(not(feature = "planted-bugs"))]
#[inline(always)]
pub const fn active(_bug: Bug) -> bool {
    false
}

#[cfg(all(test, feature = "planted-bugs"))]
mod tests {
    use super::*;

    #[test]
    fn one_bug_at_a_time() {
        plant(Some(Bug::SkipTruncation));
        assert!(active(Bug::SkipTruncation));
        assert!(!active(Bug::AckBeforeIsr));
        plant(None);
        assert!(Bug::ALL.iter().all(|&b| !active(b)));
        for b in Bug::ALL {
            assert_eq!(Bug::from_name(b.name()), Some(b));
        }
    }
}
