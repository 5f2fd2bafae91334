//! `keel-sim`: runs keel's brokers under madsim with faults and checks the history.
//!
//! ```text
//! keel-sim run --seed N [--bug NAME]          one seed; the trace of its last events on failure
//! keel-sim swarm --seeds K [--start N] [--jobs J] [--bug NAME]
//! keel-sim run --seed N --check-determinism   the same seed twice: identical random draws
//! ```
//! Exit codes: 0 pass, 2 safety violation, 3 liveness failure, 4 crash, 1 usage.
//! Build with `RUSTFLAGS="--cfg madsim"` (in its own target directory).

#[cfg(not(madsim))]
fn main() -> std::process::ExitCode {
    eprintln!(
        "keel-sim runs only in a madsim build:\n  RUSTFLAGS=\"--cfg madsim\" CARGO_TARGET_DIR=target/sim cargo run -p keel-sim -- run --seed 1"
    );
    std::process::ExitCode::from(1)
}

#[cfg(madsim)]
fn main() -> std::process::ExitCode {
    cli::main()
}

#[cfg(madsim)]
mod cli {
    use std::process::ExitCode;

    use clap::{Args, Parser, Subcommand};
    use keel_core::planted::Bug;
    use keel_sim::nemesis::Fault;
    use keel_sim::run::{run, Params, RunResult, Verdict};

    #[derive(Parser)]
    #[command(name = "keel-sim", about = "keel's deterministic simulator")]
    struct Cli {
        #[command(subcommand)]
        command: Command,
    }

    #[derive(Subcommand)]
    enum Command {
        /// Run one seed.
        Run {
            #[arg(long)]
            seed: u64,
            #[command(flatten)]
            choice: Choice,
            /// Run the seed twice, each in its own process, and require identical digests of
            /// everything observed.
            #[arg(long)]
            check_determinism: bool,
            /// Print the run's digest (for --check-determinism).
            #[arg(long)]
            digest: bool,
            /// Print the result as one machine-readable line (for `swarm`).
            #[arg(long, hide = true)]
            line: bool,
        },
        /// Run many seeds and print a summary.
        Swarm {
            #[arg(long)]
            seeds: u64,
            #[arg(long, default_value_t = 1)]
            start: u64,
            #[arg(long, default_value_t = 1)]
            jobs: usize,
            #[command(flatten)]
            choice: Choice,
        },
    }

    /// What `run` and `swarm` plant and leave out.
    #[derive(Args)]
    struct Choice {
        /// Plant a known bug (needs the planted-bugs feature).
        #[arg(long)]
        bug: Option<String>,
        /// Leave out disk faults (bit rot, misdirected writes, I/O errors).
        #[arg(long)]
        no_disk_faults: bool,
        /// Leave out these fault kinds (comma-separated names, as the summary shows them).
        #[arg(long, value_delimiter = ',')]
        without: Vec<String>,
    }

    impl Choice {
        /// The bug to plant and the fault kinds to leave out; an explanation and exit code 1
        /// for a name that is not one.
        fn resolve(self) -> Result<(Option<Bug>, Vec<Fault>), ExitCode> {
            Ok((
                bug(self.bug)?,
                left_out(&self.without, self.no_disk_faults)?,
            ))
        }
    }

    /// The bug named on the command line; an explanation and exit code 1 if there is none
    /// such or this build cannot plant it.
    fn bug(name: Option<String>) -> Result<Option<Bug>, ExitCode> {
        let Some(name) = name else {
            return Ok(None);
        };
        let fail = |why: String| {
            eprintln!("keel-sim: {why}");
            ExitCode::from(1)
        };
        let Some(bug) = Bug::from_name(&name) else {
            let names: Vec<&str> = Bug::ALL.iter().map(|b| b.name()).collect();
            return Err(fail(format!(
                "unknown bug {name:?}; one of {}",
                names.join(", ")
            )));
        };
        if !cfg!(feature = "planted-bugs") {
            return Err(fail("planting a bug needs --features planted-bugs".into()));
        }
        Ok(Some(bug))
    }

    /// The fault kinds to leave out: those named, plus disk faults with `no_disk_faults`; an
    /// explanation and exit code 1 for an unknown name.
    fn left_out(names: &[String], no_disk_faults: bool) -> Result<Vec<Fault>, ExitCode> {
        let mut out = Vec::new();
        for name in names {
            match Fault::from_name(name) {
                Some(f) => out.push(f),
                None => {
                    let names: Vec<&str> = Fault::ALL.iter().map(|f| f.name()).collect();
                    eprintln!(
                        "keel-sim: unknown fault kind {name:?}; one of {}",
                        names.join(", ")
                    );
                    return Err(ExitCode::from(1));
                }
            }
        }
        if no_disk_faults && !out.contains(&Fault::Disk) {
            out.push(Fault::Disk);
        }
        Ok(out)
    }

    pub fn main() -> ExitCode {
        let cli = Cli::parse();
        // The brokers' logs, for reading a failure: KEEL_LOG=info (or debug, ...). Installed
        // whether or not it prints, so that a run with logs replays the run without them.
        let filter = std::env::var("KEEL_LOG").unwrap_or_else(|_| "off".into());
        tracing_subscriber::fmt()
            .with_writer(std::io::stderr)
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .init();
        match cli.command {
            Command::Run {
                seed,
                choice,
                check_determinism,
                digest,
                line,
            } => {
                let (bug, without) = match choice.resolve() {
                    Ok(chosen) => chosen,
                    Err(code) => return code,
                };
                let mut params = Params::sample_without(seed, &without);
                params.bug = bug;
                println!("{params}");
                if check_determinism {
                    return match keel_sim::run::check_determinism(&params) {
                        Ok(d) => {
                            println!(
                                "deterministic: seed {seed} replayed identically (digest {d:016x})"
                            );
                            ExitCode::SUCCESS
                        }
                        Err(e) => {
                            println!("NOT deterministic: {e}");
                            ExitCode::from(4)
                        }
                    };
                }
                let started = std::time::Instant::now();
                let result = run(&params);
                if line {
                    println!(
                        "{}",
                        keel_sim::swarm::SeedLine::from_result(&result).encode()
                    );
                    return ExitCode::from(result.verdict.exit_code());
                }
                print_result(&result, started.elapsed());
                if digest {
                    println!("digest: {:016x}", result.digest);
                }
                ExitCode::from(result.verdict.exit_code())
            }
            Command::Swarm {
                seeds,
                start,
                jobs,
                choice,
            } => {
                let (bug, without) = match choice.resolve() {
                    Ok(chosen) => chosen,
                    Err(code) => return code,
                };
                let exe = match std::env::current_exe() {
                    Ok(e) => e,
                    Err(e) => {
                        eprintln!("keel-sim: cannot find its own executable: {e}");
                        return ExitCode::from(1);
                    }
                };
                let summary = keel_sim::swarm::swarm(&exe, start, seeds, jobs.max(1), bug, without);
                print!("{summary}");
                ExitCode::from(summary.worst().exit_code())
            }
        }
    }

    fn print_result(r: &RunResult, wall: std::time::Duration) {
        let c = &r.coverage;
        println!(
            "{}: {} simulated s in {:.1} wall s ({:.0}x); acked {} indefinite {} failed {} read {}; \
             elections {} isr-shrinks {} isr-expands {} truncations {} recoveries {} corruptions {} \
             full-disk-refusals {} connection-breaks {}; group: commits {} rebalances {} \
             coordinator-moves {}; transactions: commits {} aborts {} fencings {} timeouts {} \
             coordinator-moves {}; transaction version 2: commits {} aborts {} epoch-bumps {} \
             implicit-adds {} late-writes-fenced {}; compaction: acked {} tombstones {} cleanings {} \
             tombstones-removed {} batches-emptied {} stale {} interrupted {}; fault phase: {} of \
             {} sends indefinite; converged: {} batches \
             on {} replicas of {} partitions compared; layers: recovery cut {} bytes (oracle: {} \
             segments checked, {} bytes cut), {} read retries; reassignments: started {} \
             completed {} cancelled {}, throttles {} held back {} fetches, {} throttled bytes; \
             faults {:?}",
            r.verdict.name(),
            r.simulated_ms / 1000,
            wall.as_secs_f64(),
            r.simulated_ms as f64 / 1000.0 / wall.as_secs_f64().max(1e-9),
            c.acked,
            c.indefinite,
            c.failed,
            c.read,
            c.elections,
            c.isr_shrinks,
            c.isr_expands,
            c.truncations,
            c.recoveries,
            c.corruptions_detected,
            c.disk.full_disk_errors,
            c.connection_breaks,
            c.commits,
            c.rebalances,
            c.coordinator_moves,
            c.txn_commits,
            c.txn_aborts,
            c.txn_fencings,
            c.txn_timeouts,
            c.txn_coordinator_moves,
            c.txn_v2_commits,
            c.txn_v2_aborts,
            c.txn_epoch_bumps,
            c.txn_implicit_adds,
            c.txn_late_writes_fenced,
            c.compact_acked,
            c.compact_tombstones_acked,
            c.cleanings,
            c.tombstones_removed,
            c.batches_emptied,
            c.stale_cleanings,
            c.interrupted_cleanings,
            c.fault_indefinite,
            c.fault_sends,
            c.compared.batches,
            c.compared.replicas,
            c.compared.partitions,
            c.recovery_cut_bytes,
            c.disk.recoveries_checked,
            c.disk.recovery_cut_bytes,
            c.read_retries,
            c.reassignments_started,
            c.reassignments_completed,
            c.reassignments_cancelled,
            c.throttles_set,
            c.throttle_held,
            c.throttled_bytes,
            c.faults,
        );
        if r.verdict != Verdict::Pass {
            println!("why: {}", r.reason);
            if let Some(report) = &r.report {
                println!("{report}");
            }
            println!("last events:");
            for e in &r.trace {
                println!("  {e}");
            }
            println!(
                "replay: RUSTFLAGS=\"--cfg madsim\" cargo run -p keel-sim -- run --seed {}",
                r.params.seed
            );
        }
    }
}
