//! Swarm testing: many seeds, each sampling its own cluster, workload and faults
//! ([`Params::sample`]), run on `jobs` threads; a summary with coverage and anomalies.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use keel_core::planted::Bug;

use crate::run::{run, Fault, Params, Verdict};

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
    pub faults: Vec<&'static str>,
    pub simulated_ms: u64,
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
            "{:>8} {:>9} {:>7} {:>9} {:>11} {:>11} {:>11}  faults / anomalies",
            "seed", "verdict", "acked", "elections", "isr-changes", "truncations", "corruptions"
        )?;
        for l in &self.lines {
            let extra = if l.verdict == Verdict::Pass {
                l.faults.join(",")
            } else {
                format!("{} | {:?} | {}", l.faults.join(","), l.anomalies, l.reason)
            };
            writeln!(
                f,
                "{:>8} {:>9} {:>7} {:>9} {:>11} {:>11} {:>11}  {extra}",
                l.seed,
                l.verdict.name(),
                l.acked,
                l.elections,
                l.isr_changes,
                l.truncations,
                l.corruptions,
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
        let with = |pred: &dyn Fn(&SeedLine) -> bool| self.lines.iter().filter(|l| pred(l)).count();
        writeln!(
            f,
            "seeds with: elections {}, ISR changes {}, truncations {}, detected corruptions {}",
            with(&|l| l.elections > 0),
            with(&|l| l.isr_changes > 0),
            with(&|l| l.truncations > 0),
            with(&|l| l.corruptions > 0),
        )
    }
}

/// Runs seeds `start..start + seeds` on `jobs` threads, printing a line as each ends.
pub fn swarm(
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
            std::thread::spawn(move || loop {
                let seed = next.fetch_add(1, Ordering::SeqCst);
                if seed >= end {
                    return;
                }
                let mut params = Params::sample_without(seed, &without);
                params.bug = bug;
                let r = run(&params);
                let c = &r.coverage;
                let line = SeedLine {
                    seed,
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
                    faults: c.faults.keys().copied().collect(),
                    simulated_ms: r.simulated_ms,
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
