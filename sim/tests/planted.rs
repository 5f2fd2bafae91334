//! The checker's proof (issue 5): each of core's planted bugs (`keel_core::planted`, built only
//! with the `planted-bugs` feature) must be caught by the simulator within [`SEEDS_MAX`] seeds.
//! For each bug, swarm seeds 1, 2, 3, ... run in batches (each seed in its own process, as
//! `keel-sim swarm --bug NAME` runs them) until a batch holds a seed that catches it; the test
//! prints the first such seed. The first batch is [`JOBS`] seeds and each next one twice the
//! last, up to [`BATCH`]: most bugs are caught by one of the first few seeds, and a fixed batch
//! of 20 ran 18 seeds too many for each of them.
//!
//! What counts as caught ([`caught`]): a SAFETY verdict (the history checker found an anomaly,
//! or the monitor found an invariant violated), or a CRASH whose panic is one of the
//! replication invariants the brokers and the monitor assert (`PartitionReplica::
//! check_invariants` and the high watermark's assertions: their messages start with
//! "invariant N:"). Other crashes and liveness failures do not count: they can come from disk
//! damage alone. And the catch must be the bug's doing: the same seed without the bug must not
//! be caught ([`a_seed_catches`]).
//!
//! Which fault kinds each bug's seeds leave out ([`without`]): each bug gets the mix that
//! exposes it, as a Jepsen test picks its nemesis. `ack-before-isr` needs nothing special and
//! runs without disk faults. `hw-without-sync` and `skip-truncation` need crashes and
//! partitions while writes flow: they leave out the slow-network, broken-connection,
//! full-disk, swizzle and disk kinds, which otherwise take their share of the fault phase.
//! `commit-before-durable` needs the same: a coordinator cut off or killed right after it
//! answered a commit. `elect-outside-isr` and `serve-corrupt-batch` keep disk faults (damaged replicas are fenced
//! and leave ISRs; rot gives the bug something to serve) and leave out the other four;
//! `elect-outside-isr` leaves out one-way link cuts too (with them, 1 seed of 200 caught it).
//! Seeds 1 to 200 that catch each (`keel-sim swarm --seeds 200 --jobs 2 --bug NAME --without
//! KINDS`, release build, measured 2026-11-24 on main 63c3f38, acks=all answered at the
//! committed end): `ack-before-isr` 94 (first: seed 1), `hw-without-sync` 9 (first: 107),
//! `elect-outside-isr` 4 (first: 41), `skip-truncation` 5 (first: 44), `serve-corrupt-batch`
//! 10 (first: 38), `commit-before-durable` 11 (first: 9).
//!
//! The log cleaner's bugs run without disk faults (every seed runs the compacted workload);
//! measured 2026-12-07 on branch s7-18 (`keel-sim swarm --bug NAME --without disk --jobs 1`,
//! release build): `cleaner-keeps-first` is caught by 20 of seeds 1 to 21 (first: seed 1,
//! stale-latest), `clean-above-high-watermark` by 2 of seeds 1 to 76 (first: seed 12, the
//! convergence phase finding the replicas' producer states apart; seed 27, stale-latest: a
//! cold key's acknowledged value gone).
//!
//! `RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR=target/sim cargo test -p keel-sim
//! --features planted-bugs --test planted -- --nocapture`

#![cfg(all(madsim, feature = "planted-bugs"))]

use keel_core::planted::Bug;
use keel_sim::run::{Fault, Verdict};
use keel_sim::swarm::{swarm, SeedLine};

/// Each bug must be caught by one of seeds 1 to this.
const SEEDS_MAX: u64 = 200;
/// The most seeds run between two looks for a catch (the batches grow from [`JOBS`] to this).
const BATCH: u64 = 20;
/// Seeds run at once.
const JOBS: usize = 2;

/// Whether `line` catches `bug` (see the module documentation). The two bugs that no client
/// can see are caught by the phase built for them: a follower that never truncates by the
/// convergence phase (its replica never rejoins the ISR), a leader that refuses produces by the
/// availability check; each such failure names its phase first in the reason.
fn caught(bug: Bug, line: &SeedLine) -> bool {
    match bug {
        Bug::FollowerSkipsTruncation => {
            line.verdict != Verdict::Pass && line.reason.starts_with("convergence:")
        }
        Bug::ShortProduceTimeout => {
            line.verdict == Verdict::Liveness
                && line.reason.starts_with("availability in the fault phase:")
        }
        Bug::MaximalIsrDropsAMember => {
            line.verdict == Verdict::Safety && line.reason.contains("invariant 3:")
        }
        // The transaction checker's anomalies, the ones each bug makes.
        Bug::LsoPassesOpenTxn => {
            line.verdict == Verdict::Safety
                && (line.reason.contains("uncommitted-read")
                    || line.reason.contains("aborted-read"))
        }
        Bug::FencedEpochAccepted => {
            line.verdict == Verdict::Safety && line.reason.contains("zombie-")
        }
        // A late write of an aborted transaction lands in the producer's next one.
        Bug::Tv2EpochNotBumped => {
            line.verdict == Verdict::Safety
                && (line.reason.contains("zombie-write") || line.reason.contains("aborted-read"))
        }
        Bug::RecoveryKeepsTornTail => {
            line.verdict == Verdict::Safety && line.reason.starts_with("recovery oracle:")
        }
        Bug::RefuseAfterFailover => {
            line.verdict == Verdict::Liveness
                && line.reason.starts_with("availability after healing:")
        }
        // The compaction checker's anomalies, or the compacted topic's replicas found apart by
        // the convergence phase.
        Bug::CleanerKeepsFirst | Bug::CleanAboveHighWatermark => {
            line.verdict == Verdict::Safety
                && (line.reason.contains("compaction checker")
                    || line.reason.contains("jepsen-compact"))
        }
        // A partition that stops replicating: a follower never back in the ISR
        // (convergence), or acks=all refused for want of in-sync replicas (availability).
        Bug::SessionDropsPosition => {
            line.verdict == Verdict::Liveness
                && (line.reason.starts_with("convergence:")
                    || line.reason.starts_with("availability after healing:"))
        }
        _ => match line.verdict {
            Verdict::Safety => true,
            Verdict::Crash => line.reason.starts_with("panicked: invariant "),
            Verdict::Pass | Verdict::Liveness => false,
        },
    }
}

/// The fault kinds `bug`'s seeds leave out (see the module documentation), and the
/// overlapping schedules for the six bugs measured before those existed.
fn without(bug: Bug) -> Vec<Fault> {
    let mut kinds = without_measured(bug);
    if !matches!(
        bug,
        Bug::FollowerSkipsTruncation
            | Bug::RefuseAfterFailover
            | Bug::ShortProduceTimeout
            | Bug::RecoveryKeepsTornTail
            | Bug::MaximalIsrDropsAMember
            | Bug::LsoPassesOpenTxn
            | Bug::FencedEpochAccepted
            | Bug::RemoveBeforeInSync
            | Bug::Tv2EpochNotBumped
            | Bug::AddedWithStaleEpoch
            | Bug::CleanerKeepsFirst
            | Bug::CleanAboveHighWatermark
    ) {
        kinds.extend(Fault::OVERLAPPING);
    }
    kinds
}

fn without_measured(bug: Bug) -> Vec<Fault> {
    let others = [
        Fault::Latency,
        Fault::ClientBreak,
        Fault::FullDisk,
        Fault::SwizzleClog,
    ];
    match bug {
        Bug::AckBeforeIsr
        | Bug::RefuseAfterFailover
        | Bug::ShortProduceTimeout
        | Bug::RecoveryKeepsTornTail
        | Bug::MaximalIsrDropsAMember => {
            vec![Fault::Disk]
        }
        Bug::HighWatermarkWithoutSync
        | Bug::SkipTruncation
        | Bug::CommitBeforeDurable
        | Bug::FollowerSkipsTruncation => {
            let mut kinds = others.to_vec();
            kinds.push(Fault::Disk);
            kinds
        }
        Bug::ElectOutsideIsr => {
            let mut kinds = others.to_vec();
            kinds.push(Fault::ClogLink);
            kinds
        }
        Bug::ServeCorruptBatch | Bug::SessionDropsPosition => others.to_vec(),
        // The transaction bugs need transactions, which every seed's faults leave alone.
        Bug::LsoPassesOpenTxn | Bug::FencedEpochAccepted | Bug::Tv2EpochNotBumped => {
            vec![Fault::Disk]
        }
        // Every seed runs the compacted workload; the cleaner's bugs need no particular fault,
        // and disk faults alone could make a safety failure of their own.
        Bug::CleanerKeepsFirst | Bug::CleanAboveHighWatermark => vec![Fault::Disk],
        // Reassignments take a larger share of the fault phase without the kinds that do
        // not move data between replicas.
        Bug::RemoveBeforeInSync => {
            let mut kinds = others.to_vec();
            kinds.extend([Fault::Disk, Fault::Pause, Fault::ClogLink]);
            kinds.extend(Fault::OVERLAPPING);
            kinds
        }
        // A replica being added must see its leader change while it holds the old leader's
        // unacknowledged suffix: reassignments among bursts of leader changes, and nothing
        // else (with kills, kill-after-election and node cuts too, 1 seed of 200 caught it;
        // with these two kinds alone, 2).
        Bug::AddedWithStaleEpoch => {
            let mut kinds = others.to_vec();
            kinds.extend([
                Fault::Disk,
                Fault::Pause,
                Fault::ClogLink,
                Fault::ClogNode,
                Fault::Kill,
                Fault::ClusterCrash,
                Fault::ControlledShutdown,
                Fault::PreferredElection,
                Fault::CrashWhilePartitioned,
                Fault::CrashInRecovery,
                Fault::KillAfterElection,
            ]);
            kinds
        }
    }
}

/// The `--without` argument that replays `bug`'s seeds.
fn without_arg(bug: Bug) -> String {
    let names: Vec<&str> = without(bug).iter().map(|f| f.name()).collect();
    names.join(",")
}

/// A seed within [`SEEDS_MAX`] that caught `bug` when last measured, for the bugs whose first
/// catch lies far in: tried alone first, so that the test command does not run a hundred debug
/// seeds to find it again (`added-with-stale-epoch` took 842 s to reach seed 134). A schedule
/// that changed since is no loss: the search from seed 1 follows, as for every other bug.
fn known_catch(bug: Bug) -> Option<u64> {
    match bug {
        Bug::AddedWithStaleEpoch => Some(134),
        Bug::RecoveryKeepsTornTail => Some(63),
        Bug::ShortProduceTimeout => Some(71),
        Bug::CleanAboveHighWatermark => Some(12),
        Bug::ServeCorruptBatch => Some(8),
        _ => None,
    }
}

fn first_catch(exe: &std::path::Path, bug: Bug) -> (Option<SeedLine>, u64) {
    if let Some(seed) = known_catch(bug).filter(|&s| s <= SEEDS_MAX) {
        let summary = swarm(exe, seed, 1, 1, Some(bug), without(bug));
        if let Some(line) = summary.lines.iter().find(|l| caught(bug, l)) {
            return (Some(line.clone()), 1);
        }
    }
    let mut start = 1;
    let mut batch = JOBS as u64;
    while start <= SEEDS_MAX {
        let seeds = batch.min(SEEDS_MAX + 1 - start);
        batch = (batch * 2).min(BATCH);
        let summary = swarm(exe, start, seeds, JOBS, Some(bug), without(bug));
        if let Some(line) = summary.lines.iter().find(|l| caught(bug, l)) {
            return (Some(line.clone()), start + seeds - 1);
        }
        start += seeds;
    }
    (None, SEEDS_MAX)
}

/// Runs `bug`'s seeds until one catches it, requires that within [`SEEDS_MAX`] seeds, and
/// requires the same seed without the bug not to be caught.
fn a_seed_catches(bug: Bug) {
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_keel-sim"));
    let started = std::time::Instant::now();
    let (line, ran) = first_catch(exe, bug);
    let Some(line) = line else {
        panic!(
            "planted bug {} was not caught by seeds 1 to {SEEDS_MAX} (without {})",
            bug.name(),
            without_arg(bug)
        );
    };
    // Straight to stderr, past the test harness's capture: the test command shows which seed
    // caught each bug without --nocapture.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "planted bug {}: caught by seed {} ({}: {}); {ran} seeds run in {:.1} s; \
         replay: keel-sim run --seed {} --bug {} --without {}",
        bug.name(),
        line.seed,
        line.verdict.name(),
        line.reason,
        started.elapsed().as_secs_f64(),
        line.seed,
        bug.name(),
        without_arg(bug),
    );
    let clean = swarm(exe, line.seed, 1, 1, None, without(bug));
    let baseline = &clean.lines[0];
    assert!(
        !caught(bug, baseline),
        "seed {} is caught without planting {} too ({}: {}): the catch is not the bug's",
        line.seed,
        bug.name(),
        baseline.verdict.name(),
        baseline.reason
    );
}

#[test]
fn ack_before_isr_is_caught() {
    a_seed_catches(Bug::AckBeforeIsr);
}

#[test]
fn hw_without_sync_is_caught() {
    a_seed_catches(Bug::HighWatermarkWithoutSync);
}

#[test]
fn elect_outside_isr_is_caught() {
    a_seed_catches(Bug::ElectOutsideIsr);
}

#[test]
fn skip_truncation_is_caught() {
    a_seed_catches(Bug::SkipTruncation);
}

#[test]
fn serve_corrupt_batch_is_caught() {
    a_seed_catches(Bug::ServeCorruptBatch);
}

#[test]
fn commit_before_durable_is_caught() {
    a_seed_catches(Bug::CommitBeforeDurable);
}

#[test]
fn session_drops_position_is_caught() {
    a_seed_catches(Bug::SessionDropsPosition);
}

#[test]
fn follower_skips_truncation_is_caught_by_convergence() {
    a_seed_catches(Bug::FollowerSkipsTruncation);
}

#[test]
fn refuse_after_failover_is_caught_by_availability() {
    a_seed_catches(Bug::RefuseAfterFailover);
}

#[test]
fn short_produce_timeout_is_caught_by_the_indefinite_share() {
    a_seed_catches(Bug::ShortProduceTimeout);
}

#[test]
fn recovery_keeps_torn_tail_is_caught_by_the_recovery_oracle() {
    a_seed_catches(Bug::RecoveryKeepsTornTail);
}

#[test]
fn maximal_isr_drops_a_member_is_caught_by_the_monitor() {
    a_seed_catches(Bug::MaximalIsrDropsAMember);
}

#[test]
fn remove_before_in_sync_is_caught() {
    a_seed_catches(Bug::RemoveBeforeInSync);
}

#[test]
fn added_with_stale_epoch_is_caught() {
    a_seed_catches(Bug::AddedWithStaleEpoch);
}

/// Every planted bug has its test above.
#[test]
fn every_planted_bug_is_tested() {
    assert_eq!(Bug::ALL.len(), 19, "a new planted bug needs its test here");
}

#[test]
fn tv2_epoch_not_bumped_is_caught() {
    a_seed_catches(Bug::Tv2EpochNotBumped);
}

#[test]
fn lso_passes_open_txn_is_caught() {
    a_seed_catches(Bug::LsoPassesOpenTxn);
}

#[test]
fn fenced_epoch_accepted_is_caught() {
    a_seed_catches(Bug::FencedEpochAccepted);
}

#[test]
fn cleaner_keeps_first_is_caught_by_the_compaction_checker() {
    a_seed_catches(Bug::CleanerKeepsFirst);
}

#[test]
fn clean_above_high_watermark_is_caught_by_the_compaction_checker() {
    a_seed_catches(Bug::CleanAboveHighWatermark);
}
