//! The checker's proof (issue 5): each of core's planted bugs (`keel_core::planted`, built only
//! with the `planted-bugs` feature) must be caught by the simulator within [`SEEDS_MAX`] seeds.
//! For each bug, swarm seeds 1, 2, 3, ... run in batches of [`BATCH`] (each seed in its own
//! process, as `keel-sim swarm --bug NAME` runs them) until a batch holds a seed that catches
//! it; the test prints the first such seed.
//!
//! What counts as caught ([`caught`]): a SAFETY verdict (the history checker found an anomaly,
//! or the monitor found an invariant violated), or a CRASH whose panic is one of the
//! replication invariants the brokers and the monitor assert (`PartitionReplica::
//! check_invariants` and the high watermark's assertions: their messages start with
//! "invariant N:"). Other crashes and liveness failures do not count: they can come from disk
//! damage alone. And the catch must be the bug's doing: the same seed without the bug must not
//! be caught ([`a_seed_catches`]).
//!
//! Which bugs run with disk faults ([`with_disk_faults`]): `serve-corrupt-batch`, which needs
//! rot to have anything to serve, and `elect-outside-isr`, which damaged replicas (fenced, out
//! of the ISR) expose more often: 21 of seeds 1 to 200 with disk faults, 5 without. The others
//! are caught more often without (disk damage adds liveness failures that end runs before the
//! checker looks): `ack-before-isr` 118 of 200 without, 85 with; `hw-without-sync` 12 and 5;
//! `skip-truncation` 7 and 4 (`keel-sim swarm --seeds 200 --jobs 2 --bug NAME
//! [--no-disk-faults]`, measured 2026-11-23).
//!
//! `RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR=target/sim cargo test -p keel-sim
//! --features planted-bugs --test planted -- --nocapture`

#![cfg(all(madsim, feature = "planted-bugs"))]

use keel_core::planted::Bug;
use keel_sim::run::{Fault, Verdict};
use keel_sim::swarm::{swarm, SeedLine};

/// Each bug must be caught by one of seeds 1 to this.
const SEEDS_MAX: u64 = 200;
/// Seeds run between two looks for a catch.
const BATCH: u64 = 20;
/// Seeds run at once.
const JOBS: usize = 2;

/// Whether `bug`'s seeds run with disk faults (see the module documentation).
fn with_disk_faults(bug: Bug) -> bool {
    matches!(bug, Bug::ServeCorruptBatch | Bug::ElectOutsideIsr)
}

/// Whether `line`'s verdict catches a bug (see the module documentation).
fn caught(line: &SeedLine) -> bool {
    match line.verdict {
        Verdict::Safety => true,
        Verdict::Crash => line.reason.starts_with("panicked: invariant "),
        Verdict::Pass | Verdict::Liveness => false,
    }
}

fn without(bug: Bug) -> Vec<Fault> {
    if with_disk_faults(bug) {
        Vec::new()
    } else {
        vec![Fault::Disk]
    }
}

/// The first seed in `1..=SEEDS_MAX` that catches `bug`, and how many seeds ran.
fn first_catch(exe: &std::path::Path, bug: Bug) -> (Option<SeedLine>, u64) {
    let mut start = 1;
    while start <= SEEDS_MAX {
        let seeds = BATCH.min(SEEDS_MAX + 1 - start);
        let summary = swarm(exe, start, seeds, JOBS, Some(bug), without(bug));
        if let Some(line) = summary.lines.iter().find(|l| caught(l)) {
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
            "planted bug {} was not caught by seeds 1 to {SEEDS_MAX} ({} disk faults)",
            bug.name(),
            if with_disk_faults(bug) {
                "with"
            } else {
                "without"
            }
        );
    };
    println!(
        "planted bug {}: caught by seed {} ({}: {}); {ran} seeds run {} disk faults in {:.1} s; \
         replay: keel-sim run --seed {} --bug {}{}",
        bug.name(),
        line.seed,
        line.verdict.name(),
        line.reason,
        if with_disk_faults(bug) {
            "with"
        } else {
            "without"
        },
        started.elapsed().as_secs_f64(),
        line.seed,
        bug.name(),
        if with_disk_faults(bug) {
            ""
        } else {
            " --no-disk-faults"
        },
    );
    let clean = swarm(exe, line.seed, 1, 1, None, without(bug));
    let baseline = &clean.lines[0];
    assert!(
        !caught(baseline),
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

/// Every planted bug has its test above.
#[test]
fn every_planted_bug_is_tested() {
    assert_eq!(Bug::ALL.len(), 5, "a new planted bug needs its test here");
}
