//! `--reassign`: what moving a partition costs (issue 17; docs/benchmarks.md). On a
//! three-broker `keel dev`, one partition of replication factor 1 is filled with `--move-mib`
//! MiB, then moved to another broker without a throttle, then to the third broker with
//! `keel partitions reassign --throttle` (the replication throttle, docs/operations.md), while
//! an idempotent acks=all producer writes `--move-rate` records/s to another topic (RF 3, one
//! partition led by each broker). Reported: each move's time (the `keel partitions reassign
//! --wait` command's, from its start to the metadata showing the move done), the throttled
//! move's lower bound (size / rate), and the producer's acknowledgement latency in a window
//! with no move and during each move, all in the same run.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use keel_node::commands::bench::histogram::Histogram;
use keel_node::commands::bench::report::{thousands, Latency};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::ClientContext;

use crate::cluster::Managed;

/// The topic moved, and the one the latency producer writes to.
const MOVED: &str = "keel-bench-moved";
const LOAD: &str = "keel-bench-load";
/// Bytes of each record that fills the moved partition.
const FILL_RECORD_BYTES: usize = 16 << 10;
/// The longest a move may take before the run fails.
const MOVE_WAIT_SECS: u64 = 3600;

/// What the reassignment run measures.
pub struct ReassignArgs {
    /// MiB written to the moved partition.
    pub mib: u64,
    /// The throttled move's rate, bytes per second.
    pub throttle: u64,
    /// The latency producer's records per second.
    pub rate: f64,
    /// Bytes of each of its records.
    pub record_bytes: usize,
    /// Seconds of the window with no move.
    pub baseline_secs: f64,
}

fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

fn now_us() -> u64 {
    origin().elapsed().as_micros() as u64
}

/// The latency producer's deliveries: (sent, acknowledged) in microseconds since the start,
/// and the failures.
#[derive(Default)]
struct Acks {
    samples: Mutex<Vec<(u64, u64)>>,
    failed: AtomicU64,
}

struct AckContext(Arc<Acks>);

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(message) => {
                use rdkafka::message::Message;
                let now = now_us();
                let sent = message
                    .payload()
                    .and_then(|p| p.get(..8))
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_le_bytes);
                if let Some(sent) = sent {
                    let mut s = self.0.samples.lock().unwrap_or_else(|e| e.into_inner());
                    s.push((sent, now));
                }
            }
            Err(_) => {
                self.0.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Runs `keel ARGS` against the cluster: its stdout, or why it failed.
fn keel(keel: &Path, bootstrap: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(keel)
        .args(args)
        .env("KEEL_BROKERS", bootstrap)
        .output()
        .map_err(|e| format!("cannot run keel {}: {e}", args.join(" ")))?;
    if !out.status.success() {
        return Err(format!(
            "keel {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The replicas of `topic`'s partition 0.
fn replicas(keel_bin: &Path, bootstrap: &str, topic: &str) -> Result<Vec<i64>, String> {
    let text = keel(
        keel_bin,
        bootstrap,
        &["topic", "describe", topic, "-o", "json"],
    )?;
    let d: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("topic describe: {e}"))?;
    d["partitions"][0]["replicas"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x.as_i64()).collect())
        .ok_or_else(|| format!("topic describe {topic}: no replicas in {d}"))
}

/// Writes `bytes` to `MOVED`'s one partition at acks=1, as fast as the producer goes.
fn fill(bootstrap: &str, bytes: u64) -> Result<f64, String> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "1")
        .set("linger.ms", "5")
        .set("batch.size", "1000000")
        .set("compression.type", "none")
        .set("queue.buffering.max.kbytes", "262144")
        .set("message.timeout.ms", "300000")
        .create()
        .map_err(|e| format!("fill producer: {e}"))?;
    let value = vec![b'x'; FILL_RECORD_BYTES];
    let records = bytes.div_ceil(FILL_RECORD_BYTES as u64);
    let start = Instant::now();
    for _ in 0..records {
        loop {
            match producer.send(
                BaseRecord::<(), [u8]>::to(MOVED)
                    .partition(0)
                    .payload(&value),
            ) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    producer.poll(Duration::from_millis(50));
                }
                Err((e, _)) => return Err(format!("filling {MOVED}: {e}")),
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer
        .flush(Duration::from_secs(600))
        .map_err(|e| format!("flushing the fill: {e}"))?;
    Ok(start.elapsed().as_secs_f64())
}

/// Sends `rate` records/s to `LOAD` (acks=all, idempotent) until `stop`.
fn load(bootstrap: String, rate: f64, record_bytes: usize, acks: Arc<Acks>, stop: Arc<AtomicBool>) {
    let producer: BaseProducer<AckContext> = match ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "1")
        .set("compression.type", "none")
        .set("message.timeout.ms", "120000")
        .create_with_context(AckContext(acks.clone()))
    {
        Ok(p) => p,
        Err(e) => {
            eprintln!("  latency producer: {e}");
            acks.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let interval = Duration::from_secs_f64(1.0 / rate.max(1.0));
    let mut value = vec![b'v'; record_bytes.max(8)];
    let mut next = Instant::now();
    let mut i: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        value[..8].copy_from_slice(&now_us().to_le_bytes());
        let key = i.to_le_bytes();
        if producer
            .send(BaseRecord::to(LOAD).key(&key[..]).payload(&value[..]))
            .is_err()
        {
            acks.failed.fetch_add(1, Ordering::Relaxed);
        }
        i += 1;
        next += interval;
        while Instant::now() < next {
            producer.poll(next.saturating_duration_since(Instant::now()));
        }
    }
    let _ = producer.flush(Duration::from_secs(60));
}

/// The latency of the records sent in `[from, to)` (microseconds since the start).
fn window(acks: &Acks, from: u64, to: u64) -> Option<Latency> {
    let samples = acks.samples.lock().unwrap_or_else(|e| e.into_inner());
    let mut h = Histogram::new();
    for &(sent, acked) in samples.iter().filter(|(s, _)| (from..to).contains(s)) {
        h.record(acked.saturating_sub(sent));
    }
    Latency::from_micros(&h)
}

/// Moves `MOVED` to broker `to` with `keel partitions reassign --wait`, with `extra`
/// arguments: the command's time.
fn move_to(
    keel_bin: &Path,
    bootstrap: &str,
    dir: &Path,
    to: i64,
    extra: &[&str],
) -> Result<f64, String> {
    let plan = dir.join(format!("move-to-{to}.json"));
    std::fs::write(
        &plan,
        format!(r#"{{"version":1,"partitions":[{{"topic":"{MOVED}","partition":0,"replicas":[{to}]}}]}}"#),
    )
    .map_err(|e| format!("writing {}: {e}", plan.display()))?;
    let plan = plan.display().to_string();
    let wait = MOVE_WAIT_SECS.to_string();
    let mut args = vec!["partitions", "reassign", "--plan", &plan, "--wait", &wait];
    args.extend_from_slice(extra);
    let start = Instant::now();
    keel(keel_bin, bootstrap, &args)?;
    let secs = start.elapsed().as_secs_f64();
    let now = replicas(keel_bin, bootstrap, MOVED)?;
    if now != [to] {
        return Err(format!("{MOVED} is on {now:?} after its move to {to}"));
    }
    Ok(secs)
}

fn row(label: &str, secs: f64, l: Option<Latency>) {
    match l {
        Some(l) => println!(
            "  {label:<34} {secs:>8.1} {:>9} {:>8.2} {:>8.2} {:>8.2}",
            thousands(l.count),
            l.p50_ms,
            l.p99_ms,
            l.max_ms
        ),
        None => println!("  {label:<34} {secs:>8.1}   no acknowledgement"),
    }
}

/// The run, on `cluster` (three brokers); `dir` holds the plan files. Deletes both topics at
/// the end.
pub fn run(keel_bin: &Path, cluster: &Managed, dir: &Path, a: &ReassignArgs) -> Result<(), String> {
    let b = cluster.bootstrap.as_str();
    let _ = origin();
    keel(
        keel_bin,
        b,
        &["topic", "create", MOVED, "-p", "1", "-r", "1"],
    )?;
    keel(
        keel_bin,
        b,
        &["topic", "create", LOAD, "-p", "3", "-r", "3"],
    )?;
    let bytes = a.mib << 20;
    println!(
        "  filling {MOVED} (one partition, one replica) with {} MiB",
        a.mib
    );
    let fill_secs = fill(b, bytes)?;
    println!(
        "  filled in {fill_secs:.1} s ({:.0} MB/s)",
        bytes as f64 / fill_secs / 1e6
    );
    let first = *replicas(keel_bin, b, MOVED)?
        .first()
        .ok_or("the moved partition has no replica")?;
    let others: Vec<i64> = (1..=3).filter(|&x| x != first).collect();

    let acks = Arc::new(Acks::default());
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (boot, acks, stop) = (b.to_string(), acks.clone(), stop.clone());
        let (rate, bytes) = (a.rate, a.record_bytes);
        thread::spawn(move || load(boot, rate, bytes, acks, stop))
    };
    // The producer's first seconds (connections, metadata, producer id) are left out.
    thread::sleep(Duration::from_secs(3));
    let base_from = now_us();
    thread::sleep(Duration::from_secs_f64(a.baseline_secs));
    let base_to = now_us();
    let free_from = now_us();
    let free = move_to(keel_bin, b, dir, others[0], &[]);
    let free_to = now_us();
    thread::sleep(Duration::from_secs(3));
    let rate = a.throttle.to_string();
    let throttled_from = now_us();
    let throttled = free
        .as_ref()
        .map_err(Clone::clone)
        .and_then(|_| move_to(keel_bin, b, dir, others[1], &["--throttle", &rate]));
    let throttled_to = now_us();
    stop.store(true, Ordering::Relaxed);
    let _ = producer.join();
    let free = free?;
    let throttled = throttled?;

    println!(
        "\n  moving {} MiB (one replica, broker {first} -> {} -> {}); producer: acks=all, \
         idempotent, {} records/s of {} bytes to {LOAD}",
        a.mib,
        others[0],
        others[1],
        thousands(a.rate.round() as u64),
        a.record_bytes
    );
    println!(
        "  {:<34} {:>8} {:>9} {:>8} {:>8} {:>8}",
        "window", "secs", "records", "p50 ms", "p99 ms", "max ms"
    );
    row(
        "no move",
        (base_to - base_from) as f64 / 1e6,
        window(&acks, base_from, base_to),
    );
    row("move, unthrottled", free, window(&acks, free_from, free_to));
    row(
        &format!("move, throttled at {} B/s", thousands(a.throttle)),
        throttled,
        window(&acks, throttled_from, throttled_to),
    );
    println!(
        "  throttled move's lower bound, size / rate: {:.1} s; throttled / unthrottled time: \
         {:.2}; producer failures: {}",
        bytes as f64 / a.throttle as f64,
        throttled / free,
        acks.failed.load(Ordering::Relaxed)
    );
    keel(keel_bin, b, &["topic", "delete", MOVED])?;
    keel(keel_bin, b, &["topic", "delete", LOAD])?;
    Ok(())
}
