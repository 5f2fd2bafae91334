//! `keel-bench --scale`: what a cluster with many partitions costs (issue 14's targets).
//!
//! On one `keel dev` cluster, in one run: a small topic first (`--scale-small` partitions, 100
//! by default), measured alone: idle CPU per broker, single-record acks=all latency, one record
//! to each of its partitions; then a large topic that brings the cluster to `--scale-partitions`
//! partitions (10,000 by default), timed from CreateTopics until every partition has a leader
//! in the metadata, and the same measurements again, plus one record to each of 1,000 of the
//! large topic's partitions and the brokers' resident memory. The latency ratios compare the
//! same probes on the same cluster before and after: the machine's noise cancels out.

use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use keel_node::commands::bench::histogram::Histogram;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, ProducerContext};
use rdkafka::ClientContext;

use crate::cluster::{cpu_secs, Managed};
use crate::workload::block_on;

/// The topics the scale run creates.
const SMALL_TOPIC: &str = "keel-scale-small";
const LARGE_TOPIC: &str = "keel-scale-large";
/// How long every partition of a new topic may take to get a leader.
const CREATE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long one record may take to be acknowledged.
const RECORD_TIMEOUT: Duration = Duration::from_secs(30);
/// Rounds of the fan-out measurement (one record to each of N partitions); the median counts.
const FAN_OUT_ROUNDS: usize = 3;

/// What the scale run is told.
pub struct ScaleArgs {
    pub partitions: i32,
    pub small: i32,
    pub fan_out: i32,
    pub probes: usize,
    pub idle_secs: f64,
    pub settle_secs: f64,
}

/// The figures of one state of the cluster (the small topic alone, or with the large one).
struct Measured {
    idle_cpu_percent: Vec<f64>,
    latency_ms: Histogram,
    fan_out_secs: Vec<f64>,
    fan_out_partitions: i32,
    rss_mib: Vec<f64>,
}

#[derive(Default)]
struct Quiet;

impl ClientContext for Quiet {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        if matches!(
            level,
            RDKafkaLogLevel::Emerg
                | RDKafkaLogLevel::Alert
                | RDKafkaLogLevel::Critical
                | RDKafkaLogLevel::Error
        ) {
            eprintln!("  librdkafka {fac}: {message}");
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        eprintln!("  librdkafka error {error}: {reason}");
    }
}

impl rdkafka::consumer::ConsumerContext for Quiet {}

/// Delivery reports: how many arrived, and the first failure.
#[derive(Default)]
struct Delivered {
    count: Mutex<(u64, Option<String>)>,
}

struct Reports(Arc<Delivered>);

impl ClientContext for Reports {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        Quiet.log(level, fac, message)
    }
}

impl ProducerContext for Reports {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let mut c = self.0.count.lock().unwrap_or_else(|e| e.into_inner());
        c.0 += 1;
        if let Err((e, _)) = result {
            c.1.get_or_insert_with(|| e.to_string());
        }
    }
}

/// Creates `topic` and waits until every partition has a leader; the seconds that took.
fn create(bootstrap: &str, topic: &str, partitions: i32) -> Result<f64, String> {
    let admin: AdminClient<Quiet> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create_with_context(Quiet)
        .map_err(|e| format!("admin client: {e}"))?;
    let metadata: BaseConsumer<Quiet> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create_with_context(Quiet)
        .map_err(|e| format!("metadata client: {e}"))?;
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(3));
    let options = AdminOptions::new()
        .operation_timeout(Some(CREATE_TIMEOUT))
        .request_timeout(Some(CREATE_TIMEOUT));
    let start = Instant::now();
    let results = block_on(admin.create_topics([&new], &options))
        .map_err(|e| format!("CreateTopics: {e}"))?;
    for r in results {
        if let Err((name, code)) = r {
            return Err(format!("CreateTopics {name}: {code}"));
        }
    }
    loop {
        let led = metadata
            .fetch_metadata(Some(topic), Duration::from_secs(30))
            .map(|m| {
                m.topics()
                    .iter()
                    .find(|t| t.name() == topic && t.error().is_none())
                    .map_or(0, |t| {
                        t.partitions()
                            .iter()
                            .filter(|p| p.leader() >= 0 && p.error().is_none())
                            .count()
                    })
            })
            .unwrap_or(0);
        if led == partitions as usize {
            return Ok(start.elapsed().as_secs_f64());
        }
        if start.elapsed() > CREATE_TIMEOUT {
            return Err(format!(
                "{topic}: {led} of {partitions} partitions have a leader after {} s",
                CREATE_TIMEOUT.as_secs()
            ));
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn producer(bootstrap: &str) -> Result<(BaseProducer<Reports>, Arc<Delivered>), String> {
    let delivered = Arc::new(Delivered::default());
    let p = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("client.id", "keel-bench-scale")
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "0")
        .set("message.timeout.ms", "60000")
        .create_with_context(Reports(delivered.clone()))
        .map_err(|e| format!("producer: {e}"))?;
    Ok((p, delivered))
}

/// Sends one record to each of `partitions` and waits for every acknowledgement; the seconds.
fn fan_out(
    p: &BaseProducer<Reports>,
    d: &Delivered,
    topic: &str,
    partitions: i32,
) -> Result<f64, String> {
    let before = d.count.lock().unwrap_or_else(|e| e.into_inner()).0;
    let start = Instant::now();
    for i in 0..partitions {
        let value = format!("fan-out {i}");
        let mut record = BaseRecord::to(topic).partition(i).payload(&value).key("k");
        loop {
            match p.send(record) {
                Ok(()) => break,
                Err((e, r)) => {
                    // The local queue is full: let delivery reports drain it.
                    record = r;
                    p.poll(Duration::from_millis(1));
                    if start.elapsed() > RECORD_TIMEOUT {
                        return Err(format!("send: {e}"));
                    }
                }
            }
        }
    }
    loop {
        p.poll(Duration::from_millis(1));
        let (count, error) = d.count.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(e) = error {
            return Err(format!("a fan-out record failed: {e}"));
        }
        if count - before >= partitions as u64 {
            return Ok(start.elapsed().as_secs_f64());
        }
        if start.elapsed() > RECORD_TIMEOUT {
            return Err(format!(
                "{} of {partitions} fan-out records acknowledged after {} s",
                count - before,
                RECORD_TIMEOUT.as_secs()
            ));
        }
    }
}

/// `probes` single records, one at a time, each waited for: their acks=all latencies (µs).
fn probe(
    p: &BaseProducer<Reports>,
    d: &Delivered,
    topic: &str,
    partitions: i32,
    probes: usize,
) -> Result<Histogram, String> {
    let mut h = Histogram::new();
    for i in 0..probes {
        let before = d.count.lock().unwrap_or_else(|e| e.into_inner()).0;
        let value = format!("probe {i}");
        let start = Instant::now();
        p.send(
            BaseRecord::to(topic)
                .partition(i as i32 % partitions)
                .payload(&value)
                .key("k"),
        )
        .map_err(|(e, _)| format!("send: {e}"))?;
        loop {
            p.poll(Duration::from_micros(200));
            let (count, error) = d.count.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if let Some(e) = error {
                return Err(format!("a probe failed: {e}"));
            }
            if count > before {
                break;
            }
            if start.elapsed() > RECORD_TIMEOUT {
                return Err("a probe was not acknowledged in time".into());
            }
        }
        h.record(start.elapsed().as_micros() as u64);
    }
    Ok(h)
}

/// Resident memory of `pid` in MiB (/proc/PID/status, VmRSS).
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// CPU per broker over `secs` of idleness, as a percentage of one core.
fn idle_cpu(pids: &[u32], secs: f64) -> Vec<f64> {
    let before: Vec<Option<f64>> = pids.iter().map(|&p| cpu_secs(p)).collect();
    let start = Instant::now();
    thread::sleep(Duration::from_secs_f64(secs));
    let wall = start.elapsed().as_secs_f64();
    pids.iter()
        .zip(before)
        .map(|(&p, b)| match (b, cpu_secs(p)) {
            (Some(b), Some(a)) => (a - b) / wall * 100.0,
            _ => f64::NAN,
        })
        .collect()
}

fn measure(
    cluster: &Managed,
    args: &ScaleArgs,
    fan_out_topic: &str,
    fan_out_partitions: i32,
) -> Result<Measured, String> {
    thread::sleep(Duration::from_secs_f64(args.settle_secs));
    let idle_cpu_percent = idle_cpu(&cluster.pids, args.idle_secs);
    println!(
        "  idle CPU per broker over {} s: {}",
        args.idle_secs,
        idle_cpu_percent
            .iter()
            .map(|c| format!("{c:.2} %"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let (p, d) = producer(&cluster.bootstrap)?;
    // Warm-up: metadata and connections for both topics, not measured.
    fan_out(&p, &d, SMALL_TOPIC, args.small)?;
    fan_out(&p, &d, fan_out_topic, fan_out_partitions)?;
    let latency_ms = probe(&p, &d, SMALL_TOPIC, args.small, args.probes)?;
    println!(
        "  acks=all, one record at a time to {SMALL_TOPIC}, {} probes: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms",
        args.probes,
        ms(latency_ms.percentile(50.0)),
        ms(latency_ms.percentile(90.0)),
        ms(latency_ms.percentile(99.0)),
    );
    let mut fan_out_secs = Vec::new();
    for _ in 0..FAN_OUT_ROUNDS {
        fan_out_secs.push(fan_out(&p, &d, fan_out_topic, fan_out_partitions)?);
    }
    println!(
        "  one record to each of {fan_out_partitions} partitions of {fan_out_topic}, acks=all: {} s",
        fan_out_secs
            .iter()
            .map(|s| format!("{s:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let rss_mib: Vec<f64> = cluster
        .pids
        .iter()
        .map(|&p| rss_mib(p).unwrap_or(f64::NAN))
        .collect();
    println!(
        "  broker resident memory: {}",
        rss_mib
            .iter()
            .map(|m| format!("{m:.0} MiB"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(Measured {
        idle_cpu_percent,
        latency_ms,
        fan_out_secs,
        fan_out_partitions,
        rss_mib,
    })
}

fn ms(us: Option<u64>) -> f64 {
    us.map_or(f64::NAN, |u| u as f64 / 1000.0)
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Runs the scale measurement on `cluster` (three brokers, just started).
pub fn run(cluster: &Managed, args: &ScaleArgs) -> Result<(), String> {
    let large = args.partitions - args.small;
    if args.small < 1 || large < args.fan_out.max(1) {
        return Err(format!(
            "--scale-partitions {} must exceed --scale-small {} by at least --scale-fan-out {}",
            args.partitions, args.small, args.fan_out
        ));
    }
    println!("\n== scale: {SMALL_TOPIC}, {} partitions, RF 3", args.small);
    let created_small = create(&cluster.bootstrap, SMALL_TOPIC, args.small)?;
    println!("  created in {created_small:.2} s");
    let small = measure(cluster, args, SMALL_TOPIC, args.small)?;

    println!(
        "\n== scale: {LARGE_TOPIC}, {large} partitions, RF 3 ({} in the cluster)",
        args.partitions
    );
    let created_large = create(&cluster.bootstrap, LARGE_TOPIC, large)?;
    println!("  created in {created_large:.2} s (until every partition has a leader)");
    let big = measure(cluster, args, LARGE_TOPIC, args.fan_out)?;

    let ratio = |q: f64| ms(big.latency_ms.percentile(q)) / ms(small.latency_ms.percentile(q));
    let idle_max = big
        .idle_cpu_percent
        .iter()
        .copied()
        .fold(f64::NAN, f64::max);
    let fan_out = median(&big.fan_out_secs);
    println!(
        "\n== scale targets ({} partitions, RF 3, 3 brokers)",
        args.partitions
    );
    let row = |name: &str, value: String, target: &str, met: bool| {
        println!(
            "  {name:<52} {value:>12}   target {target:<10} {}",
            if met { "met" } else { "NOT MET" }
        )
    };
    row(
        "idle CPU, busiest broker (% of a core)",
        format!("{idle_max:.2} %"),
        "<= 2 %",
        idle_max <= 2.0,
    );
    row(
        "topic creation (s)",
        format!("{created_large:.1} s"),
        "<= 30 s",
        created_large <= 30.0,
    );
    row(
        "acks=all p50, large cluster / small",
        format!("{:.2}", ratio(50.0)),
        "<= 1.5",
        ratio(50.0) <= 1.5,
    );
    row(
        "acks=all p99, large cluster / small",
        format!("{:.2}", ratio(99.0)),
        "<= 1.5",
        ratio(99.0) <= 1.5,
    );
    row(
        &format!(
            "one record to each of {} partitions (s, median)",
            big.fan_out_partitions
        ),
        format!("{fan_out:.3} s"),
        "<= 1 s",
        fan_out <= 1.0,
    );
    println!(
        "  broker memory: {} MiB with {} partitions, {} MiB with {}",
        small
            .rss_mib
            .iter()
            .map(|m| format!("{m:.0}"))
            .collect::<Vec<_>>()
            .join("/"),
        args.small,
        big.rss_mib
            .iter()
            .map(|m| format!("{m:.0}"))
            .collect::<Vec<_>>()
            .join("/"),
        args.partitions
    );
    println!(
        "  (small cluster: idle {} %, one record to each of {}: {:.3} s)",
        small
            .idle_cpu_percent
            .iter()
            .map(|c| format!("{c:.2}"))
            .collect::<Vec<_>>()
            .join("/"),
        small.fan_out_partitions,
        median(&small.fan_out_secs)
    );
    Ok(())
}
