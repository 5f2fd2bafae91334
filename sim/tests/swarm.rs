//! The simulator in the test command: a fixed list of seeds plus seeds derived from the commit,
//! each a whole run of the shipped brokers under madsim (cluster, workload, faults, healing,
//! final read, checker); and the same seed run twice, in two processes, must observe exactly
//! the same (`keel-sim run --seed N --check-determinism`).
//!
//! Disk faults are left out here: with them, seeds still end in liveness failures (a batch
//! that rots on a leader is never repaired, so reads of it fail until the leader changes; a
//! partition whose only ISR member is damaged or down stays without a leader). See
//! docs/simulation.md; sim/tests/damaged_replica.rs covers the safety side of damage.
//!
//! `RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR=target/sim cargo test -p keel-sim --test swarm`

#![cfg(madsim)]

use keel_sim::run::{Fault, Verdict};
use keel_sim::swarm::swarm;

/// Seeds every run checks.
const FIXED_SEEDS: std::ops::Range<u64> = 1..13;

/// Four seeds from the commit being tested (`KEEL_SIM_SEED_BASE`, set by .ci/test.sh from the
/// commit hash), so that each commit explores new ones; none when it is not set.
fn commit_seeds() -> Option<u64> {
    std::env::var("KEEL_SIM_SEED_BASE")
        .ok()
        .and_then(|s| s.parse().ok())
}

#[test]
fn fixed_and_commit_seeds_pass_without_disk_faults() {
    let exe = std::path::Path::new(env!("CARGO_BIN_EXE_keel-sim"));
    let mut summary = swarm(
        exe,
        FIXED_SEEDS.start,
        FIXED_SEEDS.end - FIXED_SEEDS.start,
        2,
        None,
        vec![Fault::Disk],
    );
    if let Some(base) = commit_seeds() {
        println!("commit seeds from {base}");
        let extra = swarm(exe, base, 4, 2, None, vec![Fault::Disk]);
        summary.lines.extend(extra.lines);
    }
    println!("{summary}");
    let failures: Vec<String> = summary
        .failures()
        .iter()
        .map(|l| format!("seed {}: {} ({})", l.seed, l.verdict.name(), l.reason))
        .collect();
    assert!(
        failures.is_empty(),
        "replay each with `keel-sim run --seed N`:\n{}",
        failures.join("\n")
    );
    assert_eq!(summary.worst(), Verdict::Pass);
    // The runs did exercise the cluster: leaders moved and ISRs changed somewhere.
    assert!(summary.lines.iter().any(|l| l.elections > 1));
    assert!(summary.lines.iter().any(|l| l.isr_changes > 0));
    assert!(summary.lines.iter().all(|l| l.acked > 0));
}

#[test]
fn a_seed_replays_identically_in_another_process() {
    for seed in [3, 7] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_keel-sim"))
            .args(["run", "--seed", &seed.to_string(), "--check-determinism"])
            .output()
            .expect("run keel-sim");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("replayed identically"),
            "seed {seed}: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
