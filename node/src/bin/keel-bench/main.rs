//! `keel-bench`: how fast keel is, in figures anyone can re-measure (issue 7;
//! docs/benchmarks.md has the method and the latest figures).
//!
//! One run, in order:
//! 1. the machine's limits: sequential append + fdatasync bandwidth in the data directory,
//!    loopback TCP bandwidth;
//! 2. a keel cluster (`keel dev`, three brokers by default) in the data directory, or the
//!    cluster at `--bootstrap`; a new topic (RF 3, 6 partitions by default);
//! 3. a warm-up, then produce at acks=1, produce at acks=all (idempotent), consume everything,
//!    transactional produce (acks=all, a commit every 100 records or 100 ms; only when asked
//!    for with `--phases ...,txn`), and produce (acks=all) + consume at a fixed fraction of the
//!    acks=all peak; a line per second while each runs;
//! 4. if a `tansu` binary is on PATH (or given with `--tansu`): the same produce (acks=1) and
//!    consume against one keel broker (RF 1) and against one tansu broker (memory storage);
//! 5. the figures, their ratios to the limits and to tansu, and issue 7's targets; `--json`
//!    writes them all.
//!
//! The clients are librdkafka's (the rdkafka crate), in this process.

mod cluster;
mod reassign;
mod scale;
mod workload;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use keel_node::commands::bench::json::Json;
use keel_node::commands::bench::limits::{
    disk_append, loopback_tcp, median, sync_latency_us, Bandwidth,
};
use keel_node::commands::bench::machine::{cpu_model, utc_date_time};
use keel_node::commands::bench::report::{
    checks, disk_share_mb_per_s, limit_ratios, thousands, Latency, Limits, PeerComparison, Phase,
};

use crate::cluster::{find_on_path, Managed};
use crate::workload::{
    consume_all, create_topic, produce, produce_consume, produce_transactional, settle,
    TxnSettings, Workload, STAMP_BYTES,
};

/// Rounds of the disk measurement before the brokers run, and again after; the median of all
/// is the figure (a shared machine's disk is noisy).
const DISK_ROUNDS: usize = 3;
/// The fdatasync latency measurement: this many appends of this many bytes.
const SYNC_COUNT: usize = 200;
const SYNC_WRITE_BYTES: usize = 4096;
/// How long the cluster may take to catch up between phases.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Parser, Debug)]
#[command(
    name = "keel-bench",
    version,
    about = "Measure keel: produce (acks=1, acks=all), consume and produce+consume with \
             librdkafka, as ratios to the machine's disk and loopback limits and to tansu"
)]
struct Args {
    /// Drive the running cluster at HOST:PORT[,...] instead of starting one with `keel dev`.
    #[arg(long)]
    bootstrap: Option<String>,
    /// Brokers of the cluster the bench starts (1 to 9).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=9))]
    brokers: u8,
    /// Replication factor of the bench topic [default: 3, or --brokers if fewer].
    #[arg(long)]
    replication_factor: Option<i32>,
    /// Partitions of the bench topic.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
    /// Bytes of each record's value (no key).
    #[arg(long, default_value_t = 1024)]
    record_bytes: usize,
    /// Seconds of each full-speed produce phase (acks=1, acks=all).
    #[arg(long, default_value_t = 15.0)]
    secs: f64,
    /// Seconds of the produce+consume phase.
    #[arg(long, default_value_t = 20.0)]
    mixed_secs: f64,
    /// Seconds of the unreported acks=1 warm-up.
    #[arg(long, default_value_t = 3.0)]
    warmup_secs: f64,
    /// The produce+consume phase's rate, as a fraction of the acks=all phase's records/s.
    #[arg(long, default_value_t = 1.0 / 3.0)]
    fraction: f64,
    /// The producer's linger.ms.
    #[arg(long, default_value_t = 1)]
    linger_ms: u32,
    /// The producer's batch.size (bytes).
    #[arg(long, default_value_t = 1_000_000)]
    batch_bytes: u32,
    /// The phases to run (comma-separated), in the order acks1, acks-all, consume, txn, mixed.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "acks1,acks-all,consume,mixed"
    )]
    phases: Vec<PhaseName>,
    /// Transactional producers of the txn phase, each with its own transactional.id, running
    /// at once (a transactional producer has one transaction at a time in flight).
    #[arg(long, default_value_t = 8)]
    txn_producers: u32,
    /// The txn phase commits a transaction after this many records...
    #[arg(long, default_value_t = 100)]
    txn_records: u32,
    /// ...or this many milliseconds after it began, whichever comes first.
    #[arg(long, default_value_t = 100)]
    txn_ms: u32,
    /// Hold the mixed phase to this many records/s instead of --fraction of the acks=all peak.
    #[arg(long)]
    rate: Option<f64>,
    /// Produce at acks=all without idempotence (librdkafka's default; Kafka's clients enable
    /// it with acks=all, and so does the bench unless told not to).
    #[arg(long)]
    no_idempotence: bool,
    /// Seconds the consume phase may take before what is unread counts as errors.
    #[arg(long, default_value_t = 180)]
    consume_timeout_secs: u64,
    /// Where the brokers keep their data and the disk is measured; must be new or empty.
    #[arg(long, default_value = "keel-bench-data")]
    data_dir: PathBuf,
    /// Keep the data directory (broker data and logs) instead of removing it at the end.
    #[arg(long)]
    keep_data: bool,
    /// Broker i of the started cluster serves clients on PORT+i-1 (see `keel dev --port`).
    #[arg(long, default_value_t = 19092)]
    port: u16,
    /// A setting KEY=VALUE for every broker started (repeatable; see `keel dev --override`).
    #[arg(long = "override", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// The keel executable [default: `keel` next to this one, e.g. target/release/keel].
    #[arg(long)]
    keel: Option<PathBuf>,
    /// Write every figure to this file as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// MiB written by each round of the disk measurement.
    #[arg(long, default_value_t = 256)]
    disk_mb: u64,
    /// KiB per write, each followed by fdatasync, in the disk measurement.
    #[arg(long, default_value_t = 1024)]
    disk_chunk_kb: usize,
    /// MiB sent over loopback TCP by the loopback measurement.
    #[arg(long, default_value_t = 4096)]
    loopback_mb: u64,
    /// Instead of the throughput run: the scale run (docs/benchmarks.md): a three-broker
    /// `keel dev`, a small topic, then a large one up to --scale-partitions partitions of RF 3;
    /// idle CPU, acks=all latency, fan-out and memory before and after.
    #[arg(long)]
    scale: bool,
    /// Partitions in the cluster at the end of the scale run.
    #[arg(long, default_value_t = 10_000)]
    scale_partitions: i32,
    /// Partitions of the scale run's small topic (the baseline).
    #[arg(long, default_value_t = 100)]
    scale_small: i32,
    /// Partitions of the large topic that get one record each in the fan-out measurement.
    #[arg(long, default_value_t = 1_000)]
    scale_fan_out: i32,
    /// Single-record acks=all probes in each state of the scale run.
    #[arg(long, default_value_t = 300)]
    scale_probes: usize,
    /// Seconds over which idle CPU is measured.
    #[arg(long, default_value_t = 10.0)]
    scale_idle_secs: f64,
    /// Seconds to wait before measuring idle CPU (the cluster settles after a creation).
    #[arg(long, default_value_t = 5.0)]
    scale_settle_secs: f64,
    /// The tansu executable for the peer comparison [default: `tansu` on PATH].
    #[arg(long)]
    tansu: Option<PathBuf>,
    /// Skip the peer comparison even if tansu is there.
    #[arg(long)]
    no_peer: bool,
    /// Port of the tansu broker (its metrics, where it has them, on PORT+1).
    #[arg(long, default_value_t = 19392)]
    peer_port: u16,
    /// Instead of the throughput run: the security comparison (docs/benchmarks.md): produce
    /// (acks=1) and consume on a `keel dev` cluster over PLAINTEXT, then on a `keel dev
    /// --secure` one over SASL_SSL (SCRAM-SHA-512, TLS between the brokers too), same
    /// workload; the second's records/s over the first's, against the 0.7 target.
    #[arg(long)]
    security: bool,
    /// Rounds of the security comparison: each round runs both clusters, plaintext first in
    /// odd rounds and SASL_SSL first in even ones, so that a machine whose load drifts during
    /// the run favours neither.
    #[arg(long, default_value_t = 2)]
    security_rounds: u32,
    /// Instead of the throughput run: the reassignment run (docs/benchmarks.md): a
    /// three-broker `keel dev`, one partition of --move-mib MiB moved to another broker
    /// unthrottled, then to the third throttled to --move-throttle, while an acks=all producer
    /// writes --move-rate records/s to another topic; move times and the producer's latency
    /// with no move and during each.
    #[arg(long)]
    reassign: bool,
    /// MiB in the partition the reassignment run moves.
    #[arg(long, default_value_t = 1024)]
    move_mib: u64,
    /// The throttled move's rate, bytes per second (`keel partitions reassign --throttle`).
    #[arg(long, default_value_t = 50_000_000)]
    move_throttle: u64,
    /// Records per second of the reassignment run's producer.
    #[arg(long, default_value_t = 500.0)]
    move_rate: f64,
    /// Seconds of the reassignment run's window with no move.
    #[arg(long, default_value_t = 20.0)]
    move_baseline_secs: f64,
}

/// The least SASL_SSL throughput the security comparison accepts, as a fraction of plaintext
/// (issue 16).
const SECURITY_RATIO_MIN: f64 = 0.7;

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keel-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The 1, 5 and 15 minute load averages (/proc/loadavg), e.g. `0.52 0.58 0.59`.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// `1 broker`, `3 brokers`; `1 copy`, `3 copies`.
fn plural(n: usize, one: &str) -> String {
    match (n, one.strip_suffix('y')) {
        (1, _) => format!("1 {one}"),
        (_, Some(stem)) => format!("{n} {stem}ies"),
        (_, None) => format!("{n} {one}s"),
    }
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Removes the data directory at the end unless `--keep-data`, also on error.
struct DataDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for DataDir {
    fn drop(&mut self) {
        if self.keep {
            println!("data and broker logs kept in {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn check_args(args: &Args) -> Result<(), String> {
    if args.record_bytes < STAMP_BYTES {
        return Err(format!(
            "--record-bytes {}: at least {STAMP_BYTES} (each value starts with its send time)",
            args.record_bytes
        ));
    }
    if !(args.fraction > 0.0 && args.fraction <= 1.0) {
        return Err(format!("--fraction {}: expected (0, 1]", args.fraction));
    }
    if args.partitions < 1 {
        return Err("--partitions: at least 1".into());
    }
    if args.txn_producers == 0 || args.txn_records == 0 || args.txn_ms == 0 {
        return Err("--txn-producers, --txn-records and --txn-ms: at least 1".into());
    }
    for (name, secs) in [
        ("--secs", args.secs),
        ("--mixed-secs", args.mixed_secs),
        ("--warmup-secs", args.warmup_secs),
    ] {
        if !(secs.is_finite() && secs >= 0.0) {
            return Err(format!("{name} {secs}: expected a number of seconds"));
        }
    }
    if args.disk_chunk_kb == 0 || args.disk_mb == 0 || args.loopback_mb == 0 {
        return Err("--disk-mb, --disk-chunk-kb and --loopback-mb: at least 1".into());
    }
    Ok(())
}

/// The keel executable: `--keel`, else `keel` beside this executable.
fn keel_executable(args: &Args) -> Result<PathBuf, String> {
    let path = match &args.keel {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .map_err(|e| format!("cannot find this executable: {e}"))?
            .with_file_name("keel"),
    };
    if !path.is_file() {
        return Err(format!(
            "no keel executable at {}: build both with `cargo build --release -p keel-node \
             --features bench --bins`, or give --keel PATH",
            path.display()
        ));
    }
    Ok(path)
}

fn section(title: &str) {
    println!("\n== {title}");
}

/// The disk's rounds (one writer, then one per broker) and the loopback bandwidth.
struct Measured {
    disk: Vec<Bandwidth>,
    sync_latency: Option<Latency>,
    disk_parallel: Option<(usize, Vec<Bandwidth>)>,
    loopback: Option<Bandwidth>,
}

fn mb_list(rounds: &[Bandwidth]) -> String {
    rounds
        .iter()
        .map(|b| format!("{:.0}", b.mb_per_s()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// [`DISK_ROUNDS`] rounds of the disk measurement (one writer, and one per broker when the
/// bench starts several), and the loopback measurement if `loopback`.
fn measure_limits(args: &Args, dir: &Path, loopback: bool) -> Result<Measured, String> {
    let chunk = args.disk_chunk_kb << 10;
    let total = args.disk_mb << 20;
    let rounds = |writers: usize| -> Result<Vec<Bandwidth>, String> {
        (0..DISK_ROUNDS)
            .map(|_| {
                disk_append(dir, total, chunk, writers)
                    .map_err(|e| format!("disk measurement: {e}"))
            })
            .collect()
    };
    let disk = rounds(1)?;
    println!(
        "  disk: sequential append + fdatasync per {} KiB, {} MiB, 1 writer: {} MB/s",
        args.disk_chunk_kb,
        args.disk_mb,
        mb_list(&disk)
    );
    let writers = if args.bootstrap.is_none() {
        usize::from(args.brokers)
    } else {
        1
    };
    let disk_parallel = if writers > 1 {
        let r = rounds(writers)?;
        println!(
            "  disk: the same with {writers} writers at once (one per broker): {} MB/s in all",
            mb_list(&r)
        );
        Some((writers, r))
    } else {
        None
    };
    let sync_latency = sync_latency_us(dir, SYNC_WRITE_BYTES, SYNC_COUNT)
        .map_err(|e| format!("fdatasync latency: {e}"))?;
    let sync_latency = Latency::from_micros(&sync_latency);
    if let Some(l) = &sync_latency {
        println!(
            "  disk: {SYNC_COUNT} appends of {} KiB, each + fdatasync: {}",
            SYNC_WRITE_BYTES >> 10,
            l.summary()
        );
    }
    let loopback = if loopback {
        let b = loopback_tcp(args.loopback_mb << 20, 1 << 20)
            .map_err(|e| format!("loopback measurement: {e}"))?;
        println!(
            "  loopback TCP: one connection, 1 MiB writes, {} MiB: {:.0} MB/s",
            args.loopback_mb,
            b.mb_per_s()
        );
        Some(b)
    } else {
        None
    };
    Ok(Measured {
        disk,
        sync_latency,
        disk_parallel,
        loopback,
    })
}

/// The limits from the measurements before and after the brokers ran: the disk's figures
/// are the medians of all their rounds.
fn limits(args: &Args, before: Measured, after: Option<Measured>) -> Limits {
    let mut disk = before.disk;
    let sync_latency = before.sync_latency;
    let mut parallel = before.disk_parallel;
    if let Some(after) = after {
        disk.extend(after.disk);
        if let (Some((_, p)), Some((_, a))) = (&mut parallel, after.disk_parallel) {
            p.extend(a);
        }
    }
    let mbs = |r: &[Bandwidth]| r.iter().map(Bandwidth::mb_per_s).collect();
    Limits {
        disk: median(&disk).expect("DISK_ROUNDS > 0"),
        disk_rounds_mb_per_s: mbs(&disk),
        disk_chunk_bytes: args.disk_chunk_kb << 10,
        disk_parallel: parallel
            .as_ref()
            .map(|(n, r)| (*n, median(r).expect("DISK_ROUNDS > 0"))),
        disk_parallel_rounds_mb_per_s: parallel.as_ref().map_or(Vec::new(), |(_, r)| mbs(r)),
        sync_latency,
        sync_write_bytes: SYNC_WRITE_BYTES,
        loopback: before
            .loopback
            .expect("the first measurement includes loopback"),
    }
}

/// A phase of the main run, as `--phases` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum PhaseName {
    /// Produce at acks=1, as fast as the producer goes.
    Acks1,
    /// Produce at acks=all (idempotent), as fast as the producer goes.
    AcksAll,
    /// Read back everything in the topic.
    Consume,
    /// Transactional producers (acks=all), committing every --txn-records records or --txn-ms
    /// ms; run after consume, whose count of the topic's records cannot include markers.
    Txn,
    /// acks=all held to a rate (--rate, else --fraction of the acks-all phase) + a consumer.
    Mixed,
}

/// Warm-up, then the phases asked for, in this order: acks=1, acks=all, consume, txn, mixed.
fn main_phases(args: &Args, w: &Workload) -> Result<Vec<Phase>, String> {
    let wants = |p: PhaseName| args.phases.contains(&p);
    if args.warmup_secs > 0.0 {
        println!("  warm-up: produce acks=1 for {} s", args.warmup_secs);
        produce(w, "warm-up", 1, args.warmup_secs, true, true)?;
    }
    let mut phases = Vec::new();
    let wait_settled = || -> Result<(), String> {
        let secs = settle(w, SETTLE_TIMEOUT)?;
        println!("  settled in {secs:.2} s (acks=all probe on every partition, ISR complete)");
        Ok(())
    };
    wait_settled()?;
    if wants(PhaseName::Acks1) {
        let p = produce(w, "produce acks=1", 1, args.secs, false, false)?;
        println!("  => {}", p.summary());
        phases.push(p);
    }
    let mut peak = None;
    if wants(PhaseName::AcksAll) {
        wait_settled()?;
        let p = produce(
            w,
            "produce acks=all",
            -1,
            args.secs,
            !args.no_idempotence,
            false,
        )?;
        println!("  => {}", p.summary());
        peak = Some(p.records_per_s());
        phases.push(p);
    }
    wait_settled()?;
    if wants(PhaseName::Consume) {
        let p = consume_all(w, "consume")?;
        println!("  => {}", p.summary());
        phases.push(p);
    }
    if wants(PhaseName::Txn) {
        wait_settled()?;
        let txn = TxnSettings {
            producers: args.txn_producers,
            records_per_txn: args.txn_records,
            txn_ms: args.txn_ms,
            id_prefix: format!("keel-bench-txn-{}", unix_secs()),
        };
        println!(
            "  transactional: {} producers, a commit every {} records or {} ms",
            txn.producers, txn.records_per_txn, txn.txn_ms
        );
        let p = produce_transactional(w, "produce txn", args.secs, &txn)?;
        println!("  => {}", p.summary());
        phases.push(p);
    }
    wait_settled()?;
    if wants(PhaseName::Mixed) {
        let (rate, why) = match (args.rate, peak) {
            (Some(r), _) => (r, "--rate".to_string()),
            (None, Some(peak)) => (
                (peak * args.fraction).max(1.0),
                format!("{:.3} of the acks=all peak", args.fraction),
            ),
            (None, None) => {
                return Err("--phases mixed without acks-all needs --rate".into());
            }
        };
        println!(
            "  produce+consume: acks=all held to {} rec/s ({why})",
            thousands(rate.round() as u64)
        );
        let p = produce_consume(
            w,
            "produce+consume",
            args.mixed_secs,
            rate,
            !args.no_idempotence,
        )?;
        println!("  => {}", p.summary());
        phases.push(p);
    }
    Ok(phases)
}

/// The peer phases: warm-up, produce acks=1, consume.
fn peer_phases(args: &Args, w: &Workload) -> Result<Vec<Phase>, String> {
    if args.warmup_secs > 0.0 {
        produce(w, "warm-up", 1, args.warmup_secs, false, true)?;
    }
    let produced = produce(w, "produce acks=1", 1, args.secs, false, false)?;
    println!("  => {}", produced.summary());
    let consumed = consume_all(w, "consume")?;
    println!("  => {}", consumed.summary());
    Ok(vec![produced, consumed])
}

fn workload(args: &Args, bootstrap: &str, topic: &str, pids: Vec<u32>) -> Workload {
    Workload {
        bootstrap: bootstrap.to_string(),
        topic: topic.to_string(),
        partitions: args.partitions,
        record_bytes: args.record_bytes,
        linger_ms: args.linger_ms,
        batch_bytes: args.batch_bytes,
        broker_pids: pids,
        consume_timeout: Duration::from_secs(args.consume_timeout_secs),
        client: Vec::new(),
    }
}

/// keel with one broker and RF 1, then tansu, on the same workload.
fn peer_comparison(
    args: &Args,
    keel: &Path,
    tansu: &Path,
    dir: &Path,
) -> Result<PeerComparison, String> {
    let topic = format!("keel-bench-peer-{}", unix_secs());
    section("peer: keel, 1 broker, replication factor 1");
    let keel_phases = {
        let cluster =
            Managed::start_keel(keel, 1, args.port, &dir.join("peer-keel"), &args.overrides)?;
        println!("  {} on {}", cluster.name, cluster.bootstrap);
        let w = workload(args, &cluster.bootstrap, &topic, cluster.pids.clone());
        create_topic(&w, 1)?;
        peer_phases(args, &w)?
    };
    section(&format!(
        "peer: tansu ({}), memory storage",
        tansu.display()
    ));
    let peer = {
        let mut server = Managed::start_tansu(tansu, args.peer_port, &dir.join("peer-tansu"))?;
        println!("  {} on {}", server.name, server.bootstrap);
        let w = workload(args, &server.bootstrap, &topic, server.pids.clone());
        create_topic(&w, 1)?;
        let phases = peer_phases(args, &w);
        if !server.running() {
            return Err(format!(
                "tansu exited during the run; its log ({}) ends:\n{}",
                server.log.display(),
                cluster::log_tail(&server.log, 20)
            ));
        }
        phases?
    };
    Ok(PeerComparison {
        peer_name: "tansu (memory storage, 1 broker)".into(),
        keel: keel_phases,
        peer,
    })
}

fn phase_table(phases: &[Phase]) {
    println!(
        "  {:<18} {:>10} {:>8} {:>26} {:>26}  broker CPU",
        "phase", "rec/s", "MB/s", "ack p50/p99/p99.9 ms", "e2e p50/p99/p99.9 ms"
    );
    for p in phases {
        let lat = |l: Option<Latency>| {
            l.map_or("-".to_string(), |l| {
                format!("{:.2} / {:.2} / {:.2}", l.p50_ms, l.p99_ms, l.p99_9_ms)
            })
        };
        let cpu = match (p.broker_cpu_secs, p.broker_cpu_secs_per_gb()) {
            (Some(c), Some(per_gb)) if p.secs > 0.0 => {
                format!("{:.2} cores, {per_gb:.1} s/GB", c / p.secs)
            }
            _ => "-".into(),
        };
        println!(
            "  {:<18} {:>10} {:>8.1} {:>26} {:>26}  {}{}",
            p.name,
            thousands(p.records_per_s().round() as u64),
            p.mb_per_s(),
            lat(p.ack_latency),
            lat(p.e2e_latency),
            cpu,
            if p.errors > 0 {
                format!("   {} ERRORS", thousands(p.errors))
            } else {
                String::new()
            }
        );
    }
}

/// `--reassign`: a three-broker cluster of its own, the reassignment measurement, then the
/// cleanup (the data directory goes unless --keep-data).
fn run_reassign(args: &Args) -> Result<(), String> {
    let keel = keel_executable(args)?;
    if let Ok(mut entries) = std::fs::read_dir(&args.data_dir) {
        if entries.next().is_some() {
            return Err(format!(
                "--data-dir {} exists and is not empty; remove it or choose another",
                args.data_dir.display()
            ));
        }
    }
    let data_dir = DataDir {
        path: args.data_dir.clone(),
        keep: args.keep_data,
    };
    section(&format!(
        "keel: 3 brokers ({} dev), data in {}",
        keel.display(),
        data_dir.path.display()
    ));
    let mut cluster = Managed::start_keel(&keel, 3, args.port, &data_dir.path, &args.overrides)?;
    let result = reassign::run(
        &keel,
        &cluster,
        &data_dir.path,
        &reassign::ReassignArgs {
            mib: args.move_mib.max(1),
            throttle: args.move_throttle.max(1),
            rate: args.move_rate,
            record_bytes: args.record_bytes,
            baseline_secs: args.move_baseline_secs.max(1.0),
        },
    );
    if result.is_err() && !cluster.running() {
        return Err(format!(
            "keel dev exited during the run; its log ({}) ends:\n{}",
            cluster.log.display(),
            cluster::log_tail(&cluster.log, 30)
        ));
    }
    cluster.stop();
    result
}

/// `--scale`: a three-broker cluster of its own, the scale measurement, then the cleanup.
fn run_scale(args: &Args) -> Result<(), String> {
    let keel = keel_executable(args)?;
    if let Ok(mut entries) = std::fs::read_dir(&args.data_dir) {
        if entries.next().is_some() {
            return Err(format!(
                "--data-dir {} exists and is not empty; remove it or choose another",
                args.data_dir.display()
            ));
        }
    }
    let data_dir = DataDir {
        path: args.data_dir.clone(),
        keep: args.keep_data,
    };
    section(&format!(
        "keel: 3 brokers ({} dev), data in {}",
        keel.display(),
        data_dir.path.display()
    ));
    let mut cluster = Managed::start_keel(&keel, 3, args.port, &data_dir.path, &args.overrides)?;
    let result = scale::run(
        &cluster,
        &scale::ScaleArgs {
            partitions: args.scale_partitions,
            small: args.scale_small,
            fan_out: args.scale_fan_out,
            probes: args.scale_probes.max(1),
            idle_secs: args.scale_idle_secs.max(0.1),
            settle_secs: args.scale_settle_secs.max(0.0),
        },
    );
    if result.is_err() && !cluster.running() {
        return Err(format!(
            "keel dev exited during the run; its log ({}) ends:\n{}",
            cluster.log.display(),
            cluster::log_tail(&cluster.log, 30)
        ));
    }
    cluster.stop();
    result
}

/// `--security`: the same produce (acks=1) and consume on a plaintext `keel dev` and on a
/// `keel dev --secure` (one after the other, so that they do not share the CPUs; the order
/// alternates between rounds), and the ratios of their records/s summed over the rounds.
fn run_security(args: &Args, started: u64, load_before: &str) -> Result<(), String> {
    let keel = keel_executable(args)?;
    if let Ok(mut entries) = std::fs::read_dir(&args.data_dir) {
        if entries.next().is_some() {
            return Err(format!(
                "--data-dir {} exists and is not empty; remove it or choose another",
                args.data_dir.display()
            ));
        }
    }
    let data_dir = DataDir {
        path: args.data_dir.clone(),
        keep: args.keep_data,
    };
    let rf = args
        .replication_factor
        .unwrap_or_else(|| i32::from(args.brokers.min(3)));
    // (label, round, phases) in the order they ran.
    let mut runs: Vec<(&str, u32, Vec<Phase>)> = Vec::new();
    for round in 1..=args.security_rounds.max(1) {
        let mut order = [("PLAINTEXT", false), ("SASL_SSL", true)];
        if round % 2 == 0 {
            order.reverse();
        }
        for (label, secure) in order {
            section(&format!(
                "round {round}: keel: {}, {label}{}",
                plural(usize::from(args.brokers), "broker"),
                if secure {
                    " (keel dev --secure: SCRAM-SHA-512, TLS between brokers)"
                } else {
                    ""
                }
            ));
            let mut cluster = Managed::start_keel_dev(
                &keel,
                args.brokers,
                args.port,
                &data_dir
                    .path
                    .join(format!("{}-{round}", label.to_ascii_lowercase())),
                &args.overrides,
                secure,
            )?;
            let topic = format!("keel-bench-security-{started}");
            println!(
                "  {} on {}; topic {topic}: {} partitions, replication factor {rf}; {}-byte \
                 records",
                cluster.name, cluster.bootstrap, args.partitions, args.record_bytes
            );
            let mut w = workload(args, &cluster.bootstrap, &topic, cluster.pids.clone());
            w.client = cluster.client.clone();
            create_topic(&w, rf)?;
            let phases = peer_phases(args, &w);
            if !cluster.running() {
                return Err(format!(
                    "keel dev exited during the run; its log ({}) ends:\n{}",
                    cluster.log.display(),
                    cluster::log_tail(&cluster.log, 20)
                ));
            }
            cluster.stop();
            runs.push((label, round, phases?));
        }
    }
    section(&format!(
        "results: {}, topic RF {rf}, {} partitions, {}-byte records",
        plural(usize::from(args.brokers), "broker"),
        args.partitions,
        args.record_bytes
    ));
    for (label, round, phases) in &runs {
        println!("  round {round}, {label}:");
        phase_table(phases);
    }
    // Each phase's records/s summed over the rounds, per cluster.
    let total = |label: &str, name: &str| -> f64 {
        runs.iter()
            .filter(|(l, _, _)| *l == label)
            .flat_map(|(_, _, phases)| phases.iter().filter(|p| p.name == name))
            .map(Phase::records_per_s)
            .sum()
    };
    let ratios: Vec<(String, f64)> = runs
        .iter()
        .filter(|(label, _, _)| *label == "SASL_SSL")
        .take(1)
        .flat_map(|(_, _, phases)| phases.iter().map(|p| p.name.clone()))
        .filter_map(|name| {
            let plain = total("PLAINTEXT", &name);
            (plain > 0.0).then(|| {
                let secure = total("SASL_SSL", &name);
                (name, secure / plain)
            })
        })
        .collect();
    for (label, round, phases) in &runs {
        if *label != "SASL_SSL" {
            continue;
        }
        let per_round: Vec<String> = phases
            .iter()
            .filter_map(|secure| {
                let (_, _, plain) = runs
                    .iter()
                    .find(|(l, r, _)| *l == "PLAINTEXT" && r == round)?;
                let rate = plain
                    .iter()
                    .find(|p| p.name == secure.name)?
                    .records_per_s();
                (rate > 0.0)
                    .then(|| format!("{} {:.2}", secure.name, secure.records_per_s() / rate))
            })
            .collect();
        println!("  round {round} ratios: {}", per_round.join(", "));
    }
    section(&format!(
        "SASL_SSL / PLAINTEXT records/s over {} round(s) (issue 16 target: at least 0.7)",
        args.security_rounds.max(1)
    ));
    for (name, r) in &ratios {
        println!(
            "  {name:<18} {r:>6.2}  {}",
            if *r >= SECURITY_RATIO_MIN {
                "ok"
            } else {
                "BELOW TARGET"
            }
        );
    }
    let load_after = load_average();
    println!(
        "\nkeel-bench took {:.0} s; load average {load_before} before, {load_after} after",
        unix_secs().saturating_sub(started)
    );
    if let Some(path) = &args.json {
        let phases = |phases: &[Phase]| Json::Arr(phases.iter().map(Phase::to_json).collect());
        let json = Json::obj([
            ("bench", Json::str("keel-bench --security")),
            ("version", Json::str(env!("CARGO_PKG_VERSION"))),
            ("date", Json::str(utc_date_time(started))),
            ("load_average_before", Json::str(load_before)),
            ("load_average_after", Json::str(load_after)),
            ("brokers", Json::Int(i64::from(args.brokers))),
            ("replication_factor", Json::Int(i64::from(rf))),
            ("partitions", Json::Int(i64::from(args.partitions))),
            ("record_bytes", Json::Int(args.record_bytes as i64)),
            (
                "runs",
                Json::Arr(
                    runs.iter()
                        .map(|(label, round, ps)| {
                            Json::obj([
                                ("listener", Json::str(*label)),
                                ("round", Json::Int(i64::from(*round))),
                                ("phases", phases(ps)),
                            ])
                        })
                        .collect(),
                ),
            ),
            (
                "ratios",
                Json::Arr(
                    ratios
                        .iter()
                        .map(|(name, r)| {
                            Json::obj([("phase", Json::str(name)), ("ratio", Json::num(*r, 3))])
                        })
                        .collect(),
                ),
            ),
        ]);
        std::fs::write(path, json.render())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        println!("JSON written to {}", path.display());
    }
    if ratios.len() < runs[0].2.len() || ratios.iter().any(|(_, r)| *r < SECURITY_RATIO_MIN) {
        return Err(format!(
            "SASL_SSL throughput below {SECURITY_RATIO_MIN} of plaintext (or a phase missing)"
        ));
    }
    Ok(())
}

fn run(args: &Args) -> Result<(), String> {
    check_args(args)?;
    let started = unix_secs();
    let run_start = std::time::Instant::now();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| cpu_model(&t))
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let load_before = load_average();
    println!(
        "keel-bench {}: {}, {cpus} CPUs ({model}), Linux {kernel}, load average {load_before}",
        env!("CARGO_PKG_VERSION"),
        utc_date_time(started)
    );

    if args.scale {
        return run_scale(args);
    }
    if args.reassign {
        let result = run_reassign(args);
        println!("load average after: {}", load_average());
        return result;
    }
    if args.security {
        return run_security(args, started, &load_before);
    }
    let keel = if args.bootstrap.is_none() {
        Some(keel_executable(args)?)
    } else {
        None
    };
    let tansu = if args.no_peer {
        Err("--no-peer".to_string())
    } else {
        args.tansu
            .clone()
            .or_else(|| find_on_path("tansu"))
            .ok_or_else(|| {
                "tansu not on PATH (`cargo install tansu --locked --features dynostore`)"
                    .to_string()
            })
    };

    if let Ok(mut entries) = std::fs::read_dir(&args.data_dir) {
        if entries.next().is_some() {
            return Err(format!(
                "--data-dir {} exists and is not empty; remove it or choose another",
                args.data_dir.display()
            ));
        }
    }
    std::fs::create_dir_all(&args.data_dir)
        .map_err(|e| format!("cannot create {}: {e}", args.data_dir.display()))?;
    let data_dir = DataDir {
        path: args.data_dir.clone(),
        keep: args.keep_data,
    };
    let dir = data_dir.path.as_path();

    section(&format!(
        "machine limits (disk: the data directory {})",
        dir.display()
    ));
    let before = measure_limits(args, dir, true)?;

    let rf = args
        .replication_factor
        .unwrap_or_else(|| i32::from(args.brokers.min(3)));
    let topic = format!("keel-bench-{started}");
    let phases = {
        let cluster = match (&args.bootstrap, &keel) {
            (Some(_), _) => None,
            (None, Some(keel)) => {
                section(&format!(
                    "keel: {} broker{} ({} dev), data in {}",
                    args.brokers,
                    if args.brokers == 1 { "" } else { "s" },
                    keel.display(),
                    dir.join("cluster").display()
                ));
                Some(Managed::start_keel(
                    keel,
                    args.brokers,
                    args.port,
                    &dir.join("cluster"),
                    &args.overrides,
                )?)
            }
            (None, None) => unreachable!("keel is found whenever --bootstrap is absent"),
        };
        let (bootstrap, pids) = match (&cluster, &args.bootstrap) {
            (Some(c), _) => (c.bootstrap.clone(), c.pids.clone()),
            (None, Some(b)) => {
                section(&format!("keel at {b}"));
                (b.clone(), Vec::new())
            }
            (None, None) => unreachable!("a cluster is started whenever --bootstrap is absent"),
        };
        println!(
            "  bootstrap {bootstrap}; topic {topic}: {} partitions, replication factor {rf}; \
             {}-byte records, linger.ms {}, batch.size {}",
            args.partitions, args.record_bytes, args.linger_ms, args.batch_bytes
        );
        let w = workload(args, &bootstrap, &topic, pids);
        create_topic(&w, rf)?;
        let phases = main_phases(args, &w)?;
        if let Some(mut c) = cluster {
            if !c.running() {
                return Err(format!(
                    "keel dev exited during the run; its log ({}) ends:\n{}",
                    c.log.display(),
                    cluster::log_tail(&c.log, 20)
                ));
            }
            println!("  stopping {}", c.name);
            c.stop();
        }
        phases
    };

    let (peer, peer_skipped) = match (&tansu, &keel) {
        (Ok(tansu), Some(keel)) => match peer_comparison(args, keel, tansu, dir) {
            Ok(p) => (Some(p), None),
            Err(e) => {
                eprintln!("keel-bench: peer comparison failed: {e}");
                (
                    None,
                    Some(format!("failed: {}", e.lines().next().unwrap_or(""))),
                )
            }
        },
        (Ok(_), None) => (
            None,
            Some("--bootstrap: the peer comparison starts its own brokers; run without it".into()),
        ),
        (Err(why), _) => {
            section("peer");
            println!("  skipped: {why}");
            (None, Some(why.clone()))
        }
    };

    section("machine limits again, after the brokers ran");
    let after = measure_limits(args, dir, false)?;
    let limits = limits(args, before, Some(after));
    println!(
        "  disk: {:.0} MB/s, the median of {} rounds{}",
        limits.disk.mb_per_s(),
        limits.disk_rounds_mb_per_s.len(),
        limits.disk_parallel.map_or(String::new(), |(n, b)| format!(
            "; {n} writers: {:.0} MB/s",
            b.mb_per_s()
        ))
    );

    // Every byte is written once per replica, and every broker of a started cluster writes to
    // the one disk measured.
    let copies = rf.max(1) as u32;
    section(&format!(
        "results: keel, {}, topic RF {rf}, {} partitions, {}-byte records",
        args.bootstrap
            .as_ref()
            .map_or(plural(usize::from(args.brokers), "broker"), |b| format!(
                "cluster at {b}"
            )),
        args.partitions,
        args.record_bytes
    ));
    phase_table(&phases);

    section(&format!(
        "ratios to the machine's limits (disk {:.0} MB/s / {} = {:.0} MB/s; loopback {:.0} MB/s)",
        limits.disk.mb_per_s(),
        plural(copies as usize, "copy"),
        disk_share_mb_per_s(&limits, copies),
        limits.loopback.mb_per_s()
    ));
    let ratios = limit_ratios(&limits, copies, &phases);
    println!(
        "  {:<18} {:>14} {:>14}",
        "phase",
        format!("/ (disk/{copies})"),
        "/ loopback"
    );
    for (name, disk, loopback) in &ratios {
        println!("  {name:<18} {disk:>14.2} {loopback:>14.3}");
    }

    if let Some(p) = &peer {
        section(&format!("keel (1 broker, RF 1) vs {}", p.peer_name));
        println!("  keel:");
        phase_table(&p.keel);
        println!("  tansu:");
        phase_table(&p.peer);
        for (name, r) in p.ratios() {
            println!("  {name:<18} keel / tansu records/s: {r:.2}");
        }
    }

    let checks = checks(
        &limits,
        copies,
        &phases,
        peer.as_ref(),
        peer_skipped.as_deref(),
    );
    section("issue 7 targets");
    println!("  {:<52} {:>8} {:>8}", "", "measured", "target");
    for c in &checks {
        println!("  {}", c.line());
    }

    let load_after = load_average();
    println!(
        "\nkeel-bench took {:.0} s; load average {load_before} before, {load_after} after \
         (the bench's own brokers count in it; other work on the machine skews every figure)",
        run_start.elapsed().as_secs_f64()
    );
    if let Some(path) = &args.json {
        let json = Json::obj([
            ("bench", Json::str("keel-bench")),
            ("version", Json::str(env!("CARGO_PKG_VERSION"))),
            ("date", Json::str(utc_date_time(started))),
            ("unix_time", Json::Int(started as i64)),
            ("run_secs", Json::num(run_start.elapsed().as_secs_f64(), 1)),
            (
                "machine",
                Json::obj([
                    ("cpus", Json::Int(cpus as i64)),
                    ("cpu_model", Json::str(model)),
                    ("kernel", Json::str(kernel)),
                    ("load_average_before", Json::str(load_before)),
                    ("load_average_after", Json::str(load_after)),
                    ("data_dir", Json::str(dir.display().to_string())),
                ]),
            ),
            (
                "settings",
                Json::obj([
                    (
                        "cluster",
                        Json::str(
                            args.bootstrap
                                .clone()
                                .unwrap_or_else(|| format!("keel dev --brokers {}", args.brokers)),
                        ),
                    ),
                    ("brokers", Json::Int(i64::from(args.brokers))),
                    ("replication_factor", Json::Int(i64::from(rf))),
                    ("partitions", Json::Int(i64::from(args.partitions))),
                    ("record_bytes", Json::Int(args.record_bytes as i64)),
                    ("produce_secs", Json::num(args.secs, 3)),
                    ("mixed_secs", Json::num(args.mixed_secs, 3)),
                    ("warmup_secs", Json::num(args.warmup_secs, 3)),
                    ("fraction", Json::num(args.fraction, 4)),
                    ("linger_ms", Json::Int(i64::from(args.linger_ms))),
                    ("batch_bytes", Json::Int(i64::from(args.batch_bytes))),
                    ("acks_all_idempotent", Json::Bool(!args.no_idempotence)),
                    ("txn_producers", Json::Int(i64::from(args.txn_producers))),
                    ("txn_records", Json::Int(i64::from(args.txn_records))),
                    ("txn_ms", Json::Int(i64::from(args.txn_ms))),
                    (
                        "phases",
                        Json::Arr(
                            args.phases
                                .iter()
                                .map(|p| Json::str(format!("{p:?}")))
                                .collect(),
                        ),
                    ),
                    (
                        "overrides",
                        Json::Arr(args.overrides.iter().map(Json::str).collect()),
                    ),
                    (
                        "librdkafka",
                        Json::str(rdkafka::util::get_rdkafka_version().1),
                    ),
                ]),
            ),
            ("limits", limits.to_json()),
            (
                "phases",
                Json::Arr(phases.iter().map(Phase::to_json).collect()),
            ),
            (
                "ratios_to_limits",
                Json::Arr(
                    ratios
                        .iter()
                        .map(|(name, disk, loopback)| {
                            Json::obj([
                                ("phase", Json::str(name)),
                                ("over_disk_share", Json::num(*disk, 4)),
                                ("over_loopback", Json::num(*loopback, 4)),
                            ])
                        })
                        .collect(),
                ),
            ),
            (
                "peer",
                Json::opt(peer.as_ref().map(PeerComparison::to_json)),
            ),
            (
                "peer_skipped",
                Json::opt(peer_skipped.as_ref().map(Json::str)),
            ),
            (
                "checks",
                Json::Arr(checks.iter().map(|c| c.to_json()).collect()),
            ),
        ]);
        std::fs::write(path, json.render())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        println!("\nJSON written to {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plurals() {
        assert_eq!(plural(1, "broker"), "1 broker");
        assert_eq!(plural(3, "broker"), "3 brokers");
        assert_eq!(plural(1, "copy"), "1 copy");
        assert_eq!(plural(3, "copy"), "3 copies");
    }

    #[test]
    fn default_arguments_parse_and_pass_the_checks() {
        let args = Args::parse_from(["keel-bench"]);
        assert_eq!(args.brokers, 3);
        assert_eq!(args.phases.len(), 4);
        check_args(&args).unwrap();
        let args = Args::parse_from(["keel-bench", "--record-bytes", "4"]);
        assert!(check_args(&args).is_err());
        let args = Args::parse_from(["keel-bench", "--phases", "acks1,mixed", "--rate", "100"]);
        assert_eq!(args.phases, vec![PhaseName::Acks1, PhaseName::Mixed]);
        let args = Args::parse_from(["keel-bench", "--phases", "acks-all,txn"]);
        assert_eq!(args.phases, vec![PhaseName::AcksAll, PhaseName::Txn]);
        assert_eq!(
            (args.txn_producers, args.txn_records, args.txn_ms),
            (8, 100, 100)
        );
        let args = Args::parse_from(["keel-bench", "--txn-records", "0"]);
        assert!(check_args(&args).is_err());
    }
}
