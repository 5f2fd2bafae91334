//! Log append and recovery benchmark: `cargo bench -p keel-node --bench log_append`.
//!
//! Measures, in one run and on the same disk (the directory in `KEEL_BENCH_DIR`, else the
//! system temp directory):
//! - raw: sequential `write` of batch-sized chunks with one `fdatasync` per group, the disk's
//!   own bandwidth for this pattern;
//! - keel: `Log::append` of record batches (1 KiB records) with one `Log::sync` per group
//!   (group commit), on `FileStorage`.
//!
//! It prints keel's bandwidth as a ratio to raw. Rounds alternate raw and keel so that noise
//! from other work on the machine hits both alike; the median ratio is reported.
//! Then recovery: opening the log with no checkpoint re-validates every batch; MB/s scanned.
//!
//! Environment: KEEL_BENCH_MB (data per round, default 256), KEEL_BENCH_ROUNDS (default 5).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use keel_core::batch::{Batch, BatchBuilder, Compression};
use keel_core::log::{Log, LogConfig};
use keel_core::LeaderEpoch;
use keel_node::storage::FileStorage;

const RECORD_BYTES: usize = 1024;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn make_batch(records: usize) -> Batch {
    let mut builder = BatchBuilder::new(Compression::None);
    for i in 0..records {
        let value: Vec<u8> = (0..RECORD_BYTES).map(|j| (i * 31 + j * 7) as u8).collect();
        builder = builder.record(
            1_700_000_000_000,
            Some(format!("key-{i}").as_bytes()),
            Some(&value),
        );
    }
    builder.build().expect("build")
}

/// Raw bandwidth: write `chunk`-sized pieces, fdatasync after every `group` bytes.
fn raw(dir: &Path, total: usize, chunk: &[u8], group: usize) -> f64 {
    let path = dir.join("raw.bin");
    let _ = std::fs::remove_file(&path);
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("open");
    let start = Instant::now();
    let (mut written, mut since_sync) = (0, 0);
    while written < total {
        f.write_all(chunk).expect("write");
        written += chunk.len();
        since_sync += chunk.len();
        if since_sync >= group {
            f.sync_data().expect("fdatasync");
            since_sync = 0;
        }
    }
    f.sync_data().expect("fdatasync");
    let secs = start.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path).expect("remove");
    written as f64 / secs / 1e6
}

/// keel: append batches to a Log on FileStorage, one sync per `group` bytes.
fn keel(dir: &Path, total: usize, batch: &Batch, group: usize) -> f64 {
    let log_dir = dir.join("keel-log");
    let _ = std::fs::remove_dir_all(&log_dir);
    let config = LogConfig {
        segment_bytes_max: 256 << 20,
        ..LogConfig::default()
    };
    let mut log = Log::open(FileStorage::open(&log_dir).expect("dir"), config, 0).expect("open");
    let start = Instant::now();
    let (mut written, mut since_sync) = (0, 0);
    while written < total {
        log.append(0, batch.clone(), LeaderEpoch(0))
            .expect("append");
        written += batch.size();
        since_sync += batch.size();
        if since_sync >= group {
            log.sync().expect("sync");
            since_sync = 0;
        }
    }
    log.sync().expect("sync");
    let secs = start.elapsed().as_secs_f64();
    drop(log);
    std::fs::remove_dir_all(&log_dir).expect("remove");
    written as f64 / secs / 1e6
}

/// Recovery: build a log of `total` bytes, then time a full re-validating open.
fn recovery(dir: &Path, total: usize, batch: &Batch) -> (f64, u64) {
    let log_dir = dir.join("keel-recovery");
    let _ = std::fs::remove_dir_all(&log_dir);
    let config = LogConfig {
        segment_bytes_max: 64 << 20,
        ..LogConfig::default()
    };
    let mut log =
        Log::open(FileStorage::open(&log_dir).expect("dir"), config.clone(), 0).expect("open");
    let mut written = 0;
    while written < total {
        log.append(0, batch.clone(), LeaderEpoch(0))
            .expect("append");
        written += batch.size();
    }
    log.sync().expect("sync");
    drop(log); // no checkpoint: the next open re-validates everything
    let start = Instant::now();
    let log = Log::open(FileStorage::open(&log_dir).expect("dir"), config, 0).expect("recover");
    let secs = start.elapsed().as_secs_f64();
    let report = log.recovery_report().clone();
    drop(log);
    std::fs::remove_dir_all(&log_dir).expect("remove");
    (
        report.bytes_validated as f64 / secs / 1e6,
        report.batches_validated,
    )
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}

fn main() {
    // `cargo test` runs benches with --bench absent; only run under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let dir = std::env::var("KEEL_BENCH_DIR")
        .map(Into::into)
        .unwrap_or_else(|_| std::env::temp_dir());
    let dir = dir.join(format!("keel-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("bench dir");
    let total = env_usize("KEEL_BENCH_MB", 256) << 20;
    let rounds = env_usize("KEEL_BENCH_ROUNDS", 5);
    println!(
        "log_append: {} MiB per round, {rounds} rounds, in {}",
        total >> 20,
        dir.display()
    );
    println!(
        "{:<44} {:>10} {:>10} {:>7}",
        "case", "raw MB/s", "keel MB/s", "ratio"
    );
    for (records, group) in [(16usize, 1usize << 20), (16, 256 << 10), (1, 1 << 20)] {
        let batch = make_batch(records);
        let chunk = batch.bytes().to_vec();
        let mut ratios = Vec::new();
        let (mut raws, mut keels) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let r = raw(&dir, total, &chunk, group);
            let k = keel(&dir, total, &batch, group);
            raws.push(r);
            keels.push(k);
            ratios.push(k / r);
        }
        println!(
            "{:<44} {:>10.0} {:>10.0} {:>7.2}",
            format!(
                "{records} x 1 KiB records/batch, sync per {} KiB",
                group >> 10
            ),
            median(raws),
            median(keels),
            median(ratios)
        );
    }
    let batch = make_batch(16);
    let (mbps, batches) = recovery(&dir, total, &batch);
    println!(
        "recovery (full CRC re-validation, page cache warm): {mbps:.0} MB/s over {batches} batches"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
