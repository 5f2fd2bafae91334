//! Swarm testing: many seeds, each sampling its own cluster, workload and faults
//! ([`Params::sample`]), run on `jobs` threads; a summary with coverage and anomalies.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use keel_core::planted::Bug;

use crate::run::{Fault, RunResult, Verdict};

/// One seed's line in the summary.
#[derive(Clone, Debug)]
pub struct SeedLine {
    pub seed: u64,
    pub verdict: Verdict,
    pub reason: String,
    pub anomalies: BTreeMap<String, usize>,
    pub acked: u64,
    pub elections: u64,
    pub isr_changes: u64,
    pub truncations: u64,
    pub corruptions: u64,
    /// The consumer group's acknowledged commits and coordinator moves.
    pub commits: u64,
    pub coordinator_moves: u64,
    pub faults: Vec<&'static str>,
    pub simulated_ms: u64,
    /// The fault phase's sends and how many were indefinite.
    pub fault_sends: u64,
    pub fault_indefinite: u64,
    /// Per layer: bytes recovery cut, segments the recovery oracle checked, read retries.
    pub recovery_cut_bytes: u64,
    pub recoveries_checked: u64,
    pub read_retries: u64,
    /// Segment files created past a log's first ([`crate::disk::DiskStats::segment_rolls`]).
    pub segment_rolls: u64,
    /// Controlled shutdowns that handed every leadership over.
    pub controlled_shutdowns: u64,
    /// Partitions an ElectLeaders request moved to their preferred leader.
    pub preferred_elections: u64,
    /// The transactional workload: commits, aborts, zombies fenced, transactions timed out,
    /// transaction coordinator moves.
    pub txn_commits: u64,
    pub txn_aborts: u64,
    pub txn_fencings: u64,
    pub txn_timeouts: u64,
    pub txn_coordinator_moves: u64,
    /// Reassignments accepted, seen completed, and cancellations accepted.
    pub reassignments_started: u64,
    pub reassignments_completed: u64,
    pub reassignments_cancelled: u64,
    /// Transaction version 2: commits, aborts, epoch bumps, implicit adds, late writes fenced.
    pub txn_v2_commits: u64,
    pub txn_v2_aborts: u64,
    pub txn_epoch_bumps: u64,
    pub txn_implicit_adds: u64,
    pub txn_late_writes_fenced: u64,
    /// Replication throttles set, and fetches of replicas being added they held back.
    pub throttles_set: u64,
    pub throttle_held: u64,
    /// The compacted workload: cleanings installed, tombstones removed, batches emptied,
    /// cleanings made stale, broker starts that found a cleaning interrupted.
    pub cleanings: u64,
    pub tombstones_removed: u64,
    pub batches_emptied: u64,
    pub stale_cleanings: u64,
    pub interrupted_cleanings: u64,
}

/// The swarm's result.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    pub lines: Vec<SeedLine>,
    pub wall_ms: u64,
}

impl Summary {
    /// The worst verdict of any seed.
    pub fn worst(&self) -> Verdict {
        self.lines
            .iter()
            .map(|l| l.verdict)
            .max()
            .unwrap_or(Verdict::Pass)
    }

    /// The seeds whose verdict is not a pass.
    pub fn failures(&self) -> Vec<&SeedLine> {
        self.lines
            .iter()
            .filter(|l| l.verdict != Verdict::Pass)
            .collect()
    }

    /// The share of seeds (0 to 1) in which fault `kind` fired.
    pub fn fault_share(&self, kind: Fault) -> f64 {
        let n = self.lines.len().max(1) as f64;
        self.lines
            .iter()
            .filter(|l| l.faults.contains(&kind.name()))
            .count() as f64
            / n
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:>8} {:>9} {:>7} {:>7} {:>9} {:>11} {:>11} {:>11} {:>7} {:>11}  faults / anomalies",
            "seed",
            "verdict",
            "acked",
            "indef%",
            "elections",
            "isr-changes",
            "truncations",
            "corruptions",
            "commits",
            "coord-moves"
        )?;
        for l in &self.lines {
            let extra = if l.verdict == Verdict::Pass {
                l.faults.join(",")
            } else {
                format!("{} | {:?} | {}", l.faults.join(","), l.anomalies, l.reason)
            };
            writeln!(
                f,
                "{:>8} {:>9} {:>7} {:>7.1} {:>9} {:>11} {:>11} {:>11} {:>7} {:>11}  {extra}",
                l.seed,
                l.verdict.name(),
                l.acked,
                100.0 * l.indefinite_share(),
                l.elections,
                l.isr_changes,
                l.truncations,
                l.corruptions,
                l.commits,
                l.coordinator_moves,
            )?;
        }
        let n = self.lines.len();
        let simulated: u64 = self.lines.iter().map(|l| l.simulated_ms).sum();
        writeln!(f)?;
        writeln!(
            f,
            "{n} seeds: {} pass, {} safety, {} liveness, {} crash; {:.0} simulated s in {:.1} wall s",
            self.lines.iter().filter(|l| l.verdict == Verdict::Pass).count(),
            self.lines.iter().filter(|l| l.verdict == Verdict::Safety).count(),
            self.lines.iter().filter(|l| l.verdict == Verdict::Liveness).count(),
            self.lines.iter().filter(|l| l.verdict == Verdict::Crash).count(),
            simulated as f64 / 1000.0,
            self.wall_ms as f64 / 1000.0,
        )?;
        let shares: Vec<String> = Fault::ALL
            .iter()
            .map(|&k| format!("{} {:.0}%", k.name(), 100.0 * self.fault_share(k)))
            .collect();
        writeln!(f, "faults fired in: {}", shares.join(", "))?;
        let mut shares: Vec<f64> = self.lines.iter().map(SeedLine::indefinite_share).collect();
        shares.sort_by(f64::total_cmp);
        let at = |q: f64| {
            shares
                .get(((shares.len() as f64 - 1.0) * q).round().max(0.0) as usize)
                .map_or(0.0, |s| 100.0 * s)
        };
        writeln!(
            f,
            "indefinite sends in the fault phase, per seed: median {:.1}%, p90 {:.1}%, p99 {:.1}%, \
             max {:.1}%",
            at(0.5),
            at(0.9),
            at(0.99),
            at(1.0)
        )?;
        let sum = |f: &dyn Fn(&SeedLine) -> u64| self.lines.iter().map(f).sum::<u64>();
        writeln!(
            f,
            "layers: recovery cut {} bytes in all (the oracle checked {} segment recoveries), \
             {} read retries",
            sum(&|l| l.recovery_cut_bytes),
            sum(&|l| l.recoveries_checked),
            sum(&|l| l.read_retries),
        )?;
        let with = |pred: &dyn Fn(&SeedLine) -> bool| self.lines.iter().filter(|l| pred(l)).count();
        writeln!(
            f,
            "seeds with: elections {}, ISR changes {}, truncations {}, detected corruptions {}, \
             group commits {}, coordinator moves {}, segment rolls {}, controlled shutdowns {}, \
             preferred elections {}; transactions: commits {}, aborts {}, fencings {}, timeouts {}, \
             coordinator moves {}; transaction version 2: commits {}, aborts {}, epoch bumps {}, \
             implicit adds {}, late writes fenced {}; reassignments started {} completed {} \
             cancelled {}, throttled {} (held back {} fetches in all)",
            with(&|l| l.elections > 0),
            with(&|l| l.isr_changes > 0),
            with(&|l| l.truncations > 0),
            with(&|l| l.corruptions > 0),
            with(&|l| l.commits > 0),
            with(&|l| l.coordinator_moves > 0),
            with(&|l| l.segment_rolls > 0),
            with(&|l| l.controlled_shutdowns > 0),
            with(&|l| l.preferred_elections > 0),
            with(&|l| l.txn_commits > 0),
            with(&|l| l.txn_aborts > 0),
            with(&|l| l.txn_fencings > 0),
            with(&|l| l.txn_timeouts > 0),
            with(&|l| l.txn_coordinator_moves > 0),
            with(&|l| l.txn_v2_commits > 0),
            with(&|l| l.txn_v2_aborts > 0),
            with(&|l| l.txn_epoch_bumps > 0),
            with(&|l| l.txn_implicit_adds > 0),
            with(&|l| l.txn_late_writes_fenced > 0),
            with(&|l| l.reassignments_started > 0),
            with(&|l| l.reassignments_completed > 0),
            with(&|l| l.reassignments_cancelled > 0),
            with(&|l| l.throttle_held > 0),
            sum(&|l| l.throttle_held),
        )?;
        writeln!(
            f,
            "compaction: seeds with cleanings {} ({} in all), tombstones removed {} ({}), \
             batches emptied {} ({}), cleanings made stale {} ({}), cleanings interrupted by a \
             kill or stop {} ({})",
            with(&|l| l.cleanings > 0),
            sum(&|l| l.cleanings),
            with(&|l| l.tombstones_removed > 0),
            sum(&|l| l.tombstones_removed),
            with(&|l| l.batches_emptied > 0),
            sum(&|l| l.batches_emptied),
            with(&|l| l.stale_cleanings > 0),
            sum(&|l| l.stale_cleanings),
            with(&|l| l.interrupted_cleanings > 0),
            sum(&|l| l.interrupted_cleanings),
        )
    }
}

impl SeedLine {
    /// The share of the fault phase's sends that were indefinite.
    pub fn indefinite_share(&self) -> f64 {
        self.fault_indefinite as f64 / self.fault_sends.max(1) as f64
    }

    /// The line of a finished run.
    pub fn from_result(r: &RunResult) -> SeedLine {
        let c = &r.coverage;
        SeedLine {
            seed: r.params.seed,
            verdict: r.verdict,
            reason: r.reason.clone(),
            anomalies: r
                .report
                .as_ref()
                .map(|rep| {
                    rep.counts()
                        .into_iter()
                        .map(|(k, n)| (k.name().to_string(), n))
                        .collect()
                })
                .unwrap_or_default(),
            acked: c.acked,
            elections: c.elections,
            isr_changes: c.isr_shrinks + c.isr_expands,
            truncations: c.truncations,
            corruptions: c.corruptions_detected,
            commits: c.commits,
            coordinator_moves: c.coordinator_moves,
            faults: c.faults.keys().copied().collect(),
            simulated_ms: r.simulated_ms,
            fault_sends: c.fault_sends,
            fault_indefinite: c.fault_indefinite,
            recovery_cut_bytes: c.recovery_cut_bytes,
            recoveries_checked: c.disk.recoveries_checked,
            read_retries: c.read_retries,
            segment_rolls: c.disk.segment_rolls,
            controlled_shutdowns: c.controlled_shutdowns,
            preferred_elections: c.preferred_elections,
            txn_commits: c.txn_commits,
            txn_aborts: c.txn_aborts,
            txn_fencings: c.txn_fencings,
            txn_timeouts: c.txn_timeouts,
            txn_coordinator_moves: c.txn_coordinator_moves,
            reassignments_started: c.reassignments_started,
            reassignments_completed: c.reassignments_completed,
            reassignments_cancelled: c.reassignments_cancelled,
            txn_v2_commits: c.txn_v2_commits,
            txn_v2_aborts: c.txn_v2_aborts,
            txn_epoch_bumps: c.txn_epoch_bumps,
            txn_implicit_adds: c.txn_implicit_adds,
            txn_late_writes_fenced: c.txn_late_writes_fenced,
            throttles_set: c.throttles_set,
            throttle_held: c.throttle_held,
            cleanings: c.cleanings,
            tombstones_removed: c.tombstones_removed,
            batches_emptied: c.batches_emptied,
            stale_cleanings: c.stale_cleanings,
            interrupted_cleanings: c.interrupted_cleanings,
        }
    }

    /// One line for a parent process: `LINE` and tab-separated fields, the reason last.
    pub fn encode(&self) -> String {
        let anomalies: Vec<String> = self
            .anomalies
            .iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        format!(
            "LINE\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
            self.seed,
            self.verdict.exit_code(),
            self.acked,
            self.elections,
            self.isr_changes,
            self.truncations,
            self.corruptions,
            self.commits,
            self.coordinator_moves,
            self.simulated_ms,
            self.fault_sends,
            self.fault_indefinite,
            self.recovery_cut_bytes,
            self.recoveries_checked,
            self.read_retries,
            self.segment_rolls,
            self.controlled_shutdowns,
            self.preferred_elections,
            self.txn_commits,
            self.txn_aborts,
            self.txn_fencings,
            self.txn_timeouts,
            self.txn_coordinator_moves,
            self.reassignments_started,
            self.reassignments_completed,
            self.reassignments_cancelled,
            self.txn_v2_commits,
            self.txn_v2_aborts,
            self.txn_epoch_bumps,
            self.txn_implicit_adds,
            self.txn_late_writes_fenced,
            self.throttles_set,
            self.throttle_held,
            self.cleanings,
            self.tombstones_removed,
            self.batches_emptied,
            self.stale_cleanings,
            self.interrupted_cleanings,
            self.faults.join(","),
            anomalies.join(","),
            self.reason.replace(['\t', '\n'], " "),
        )
    }

    /// The line [`SeedLine::encode`] wrote, from a child's output.
    pub fn decode(output: &str) -> Option<SeedLine> {
        let line = output.lines().find(|l| l.starts_with("LINE\t"))?;
        let f: Vec<&str> = line.splitn(42, '\t').collect();
        if f.len() != 42 {
            return None;
        }
        let verdict = match f[2] {
            "0" => Verdict::Pass,
            "2" => Verdict::Safety,
            "3" => Verdict::Liveness,
            _ => Verdict::Crash,
        };
        let faults = f[39]
            .split(',')
            .filter(|s| !s.is_empty())
            .filter_map(|name| Fault::ALL.into_iter().find(|k| k.name() == name))
            .map(Fault::name)
            .collect();
        let anomalies = f[40]
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .filter_map(|(k, n)| Some((k.to_string(), n.parse().ok()?)))
            .collect();
        Some(SeedLine {
            seed: f[1].parse().ok()?,
            verdict,
            acked: f[3].parse().ok()?,
            elections: f[4].parse().ok()?,
            isr_changes: f[5].parse().ok()?,
            truncations: f[6].parse().ok()?,
            corruptions: f[7].parse().ok()?,
            commits: f[8].parse().ok()?,
            coordinator_moves: f[9].parse().ok()?,
            simulated_ms: f[10].parse().ok()?,
            fault_sends: f[11].parse().ok()?,
            fault_indefinite: f[12].parse().ok()?,
            recovery_cut_bytes: f[13].parse().ok()?,
            recoveries_checked: f[14].parse().ok()?,
            read_retries: f[15].parse().ok()?,
            segment_rolls: f[16].parse().ok()?,
            controlled_shutdowns: f[17].parse().ok()?,
            preferred_elections: f[18].parse().ok()?,
            txn_commits: f[19].parse().ok()?,
            txn_aborts: f[20].parse().ok()?,
            txn_fencings: f[21].parse().ok()?,
            txn_timeouts: f[22].parse().ok()?,
            txn_coordinator_moves: f[23].parse().ok()?,
            reassignments_started: f[24].parse().ok()?,
            reassignments_completed: f[25].parse().ok()?,
            reassignments_cancelled: f[26].parse().ok()?,
            txn_v2_commits: f[27].parse().ok()?,
            txn_v2_aborts: f[28].parse().ok()?,
            txn_epoch_bumps: f[29].parse().ok()?,
            txn_implicit_adds: f[30].parse().ok()?,
            txn_late_writes_fenced: f[31].parse().ok()?,
            throttles_set: f[32].parse().ok()?,
            throttle_held: f[33].parse().ok()?,
            cleanings: f[34].parse().ok()?,
            tombstones_removed: f[35].parse().ok()?,
            batches_emptied: f[36].parse().ok()?,
            stale_cleanings: f[37].parse().ok()?,
            interrupted_cleanings: f[38].parse().ok()?,
            faults,
            anomalies,
            reason: f[41].to_string(),
        })
    }
}

/// Runs seeds `start..start + seeds` on `jobs` threads, each seed in a child process of
/// `keel_sim` (the `keel-sim` binary): `keel-sim run --seed N --line`. A process per seed, not
/// a thread: state that libraries keep in statics carries over from one run to the next in a
/// process, so a seed run after another can differ from the same seed run alone, and a failure
/// found here must replay with `keel-sim run --seed N`.
pub fn swarm(
    keel_sim: &std::path::Path,
    start: u64,
    seeds: u64,
    jobs: usize,
    bug: Option<Bug>,
    without: Vec<Fault>,
) -> Summary {
    let started = std::time::Instant::now();
    let next = Arc::new(AtomicU64::new(start));
    let lines = Arc::new(Mutex::new(Vec::new()));
    let end = start + seeds;
    let workers: Vec<_> = (0..jobs)
        .map(|_| {
            let (next, lines, without) = (next.clone(), lines.clone(), without.clone());
            let exe = keel_sim.to_path_buf();
            std::thread::spawn(move || loop {
                let seed = next.fetch_add(1, Ordering::SeqCst);
                if seed >= end {
                    return;
                }
                let mut command = std::process::Command::new(&exe);
                command.args(["run", "--seed", &seed.to_string(), "--line"]);
                if let Some(bug) = bug {
                    command.args(["--bug", bug.name()]);
                }
                if !without.is_empty() {
                    let names: Vec<&str> = without.iter().map(|f| f.name()).collect();
                    command.arg(format!("--without={}", names.join(",")));
                }
                let line = match command.output() {
                    Ok(out) => SeedLine::decode(&String::from_utf8_lossy(&out.stdout))
                        .unwrap_or_else(|| SeedLine::crashed(seed, &out.stderr)),
                    Err(e) => SeedLine::crashed(seed, e.to_string().as_bytes()),
                };
                eprintln!(
                    "seed {seed}: {} ({} acked){}",
                    line.verdict.name(),
                    line.acked,
                    if line.verdict == Verdict::Pass {
                        String::new()
                    } else {
                        format!(": {}", line.reason)
                    }
                );
                lines.lock().expect("lines poisoned").push(line);
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let mut lines = Arc::try_unwrap(lines)
        .map(|m| m.into_inner().expect("lines poisoned"))
        .unwrap_or_default();
    lines.sort_by_key(|l| l.seed);
    Summary {
        lines,
        wall_ms: started.elapsed().as_millis() as u64,
    }
}

impl SeedLine {
    /// A child that printed no line (it died: a crash outside the run's own catch).
    fn crashed(seed: u64, stderr: &[u8]) -> SeedLine {
        let stderr = String::from_utf8_lossy(stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        SeedLine {
            seed,
            verdict: Verdict::Crash,
            reason: format!("the run's process died: {last}"),
            anomalies: BTreeMap::new(),
            acked: 0,
            elections: 0,
            isr_changes: 0,
            truncations: 0,
            corruptions: 0,
            commits: 0,
            coordinator_moves: 0,
            faults: Vec::new(),
            simulated_ms: 0,
            fault_sends: 0,
            fault_indefinite: 0,
            recovery_cut_bytes: 0,
            recoveries_checked: 0,
            read_retries: 0,
            segment_rolls: 0,
            controlled_shutdowns: 0,
            preferred_elections: 0,
            txn_commits: 0,
            txn_aborts: 0,
            txn_fencings: 0,
            txn_timeouts: 0,
            txn_coordinator_moves: 0,
            reassignments_started: 0,
            reassignments_completed: 0,
            reassignments_cancelled: 0,
            txn_v2_commits: 0,
            txn_v2_aborts: 0,
            txn_epoch_bumps: 0,
            txn_implicit_adds: 0,
            txn_late_writes_fenced: 0,
            throttles_set: 0,
            throttle_held: 0,
            cleanings: 0,
            tombstones_removed: 0,
            batches_emptied: 0,
            stale_cleanings: 0,
            interrupted_cleanings: 0,
        }
    }
}
