//! The workloads, run with librdkafka (the rdkafka crate): a producer that sends as fast as
//! it can or held to a rate, a consumer that reads a topic back, and both at once.
//!
//! Every record's value starts with its send time (microseconds since the bench started, u64
//! little-endian; the rest is incompressible filler), so the delivery report gives the ack
//! latency (send() to delivery report) and the consumer the end-to-end latency (send() to
//! poll() returning it). Producer and consumer are in this one process: one clock.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use keel_node::commands::bench::histogram::Histogram;
use keel_node::commands::bench::limits::incompressible;
use keel_node::commands::bench::report::{thousands, Latency, Phase, PhaseKind};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::util::Timeout;
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::cluster::{cpu_secs, total_cpu_secs};

/// How long a flush at the end of a produce phase may take before the rest counts as failed.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the consumer of the produce+consume phase may lag after the producer stopped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// librdkafka messages a client prints (errors only), at most.
const CLIENT_MESSAGES_MAX: u64 = 10;
/// Bytes of send time at the start of every value.
pub const STAMP_BYTES: usize = 8;

/// What every phase shares: where, which topic, the record size, producer settings, and the
/// broker processes whose CPU time is counted.
pub struct Workload {
    pub bootstrap: String,
    pub topic: String,
    pub partitions: i32,
    pub record_bytes: usize,
    pub linger_ms: u32,
    pub batch_bytes: u32,
    pub broker_pids: Vec<u32>,
    pub consume_timeout: Duration,
    /// Client settings besides `bootstrap.servers` that every client of the workload gets
    /// (the security settings of `keel dev --secure`; empty for plaintext).
    pub client: Vec<(String, String)>,
}

impl Workload {
    /// A client configuration with `bootstrap.servers` and [`Workload::client`].
    fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap);
        for (key, value) in &self.client {
            c.set(key, value);
        }
        c
    }
}

fn origin() -> Instant {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}

/// Microseconds since the bench started.
fn now_us() -> u64 {
    origin().elapsed().as_micros() as u64
}

fn stamp(value: &mut [u8]) {
    value[..STAMP_BYTES].copy_from_slice(&now_us().to_le_bytes());
}

fn stamp_of(value: Option<&[u8]>) -> Option<u64> {
    let bytes: [u8; STAMP_BYTES] = value?.get(..STAMP_BYTES)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// Prints librdkafka's errors (at most [`CLIENT_MESSAGES_MAX`] per client) and drops the rest
/// of its log.
#[derive(Default)]
pub struct Quiet {
    printed: AtomicU64,
}

impl Quiet {
    fn say(&self, text: &str) {
        if self.printed.fetch_add(1, Ordering::Relaxed) < CLIENT_MESSAGES_MAX {
            eprintln!("  librdkafka: {text}");
        }
    }
}

impl ClientContext for Quiet {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => self.say(&format!("{fac}: {message}")),
            _ => {}
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.say(&format!("{error}: {reason}"));
    }
}

impl ConsumerContext for Quiet {}

/// What the producer's delivery reports say.
#[derive(Default)]
struct Deliveries {
    acked: AtomicU64,
    acked_bytes: AtomicU64,
    failed: AtomicU64,
    latency_us: Mutex<Histogram>,
    first_error: Mutex<Option<String>>,
    quiet: Quiet,
}

struct ProduceContext(Arc<Deliveries>);

impl ClientContext for ProduceContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        self.0.quiet.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.0.quiet.error(error, reason);
    }
}

impl ProducerContext for ProduceContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let d = &self.0;
        match result {
            Ok(message) => {
                let now = now_us();
                if let Some(sent) = stamp_of(message.payload()) {
                    let mut h = d.latency_us.lock().unwrap_or_else(|e| e.into_inner());
                    h.record(now.saturating_sub(sent));
                }
                d.acked.fetch_add(1, Ordering::Relaxed);
                d.acked_bytes
                    .fetch_add(message.payload_len() as u64, Ordering::Relaxed);
            }
            Err((error, _)) => {
                d.failed.fetch_add(1, Ordering::Relaxed);
                let mut first = d.first_error.lock().unwrap_or_else(|e| e.into_inner());
                first.get_or_insert_with(|| error.to_string());
            }
        }
    }
}

/// A line per second while a phase runs.
struct Progress {
    label: String,
    /// The broker processes, checked once a second: a phase stops if all have exited.
    pids: Vec<u32>,
    start: Instant,
    last: Instant,
    last_count: u64,
    last_bytes: u64,
    quiet: bool,
}

impl Progress {
    fn new(label: &str, quiet: bool, pids: &[u32]) -> Progress {
        let now = Instant::now();
        Progress {
            label: label.to_string(),
            pids: pids.to_vec(),
            start: now,
            last: now,
            last_count: 0,
            last_bytes: 0,
            quiet,
        }
    }

    /// Prints the rate since the last line if a second has passed; fails if every broker
    /// process the bench started has exited.
    fn tick(
        &mut self,
        count: u64,
        bytes: u64,
        extra: impl FnOnce() -> String,
    ) -> Result<(), String> {
        let now = Instant::now();
        let secs = (now - self.last).as_secs_f64();
        if secs < 1.0 {
            return Ok(());
        }
        if !self.pids.is_empty() && self.pids.iter().all(|&p| cpu_secs(p).is_none()) {
            return Err(format!(
                "{}: every broker process has exited (see the log in the data directory)",
                self.label
            ));
        }
        if !self.quiet {
            let rate = (count - self.last_count) as f64 / secs;
            let mb = (bytes - self.last_bytes) as f64 / secs / 1e6;
            println!(
                "  {:<22} {:>5.1} s {:>10} rec/s {:>8.1} MB/s   {}",
                self.label,
                (now - self.start).as_secs_f64(),
                thousands(rate.round() as u64),
                mb,
                extra()
            );
        }
        self.last = now;
        self.last_count = count;
        self.last_bytes = bytes;
        Ok(())
    }
}

fn producer_config(w: &Workload, acks: i16, idempotent: bool) -> ClientConfig {
    let mut c = w.config();
    c.set("client.id", "keel-bench-producer")
        .set("acks", if acks == -1 { "all" } else { "1" })
        // Kafka's clients default to idempotence with acks=all; librdkafka does not.
        .set(
            "enable.idempotence",
            if idempotent { "true" } else { "false" },
        )
        .set("linger.ms", w.linger_ms.to_string())
        .set("batch.size", w.batch_bytes.to_string())
        .set("compression.type", "none")
        .set("message.timeout.ms", "60000");
    c
}

fn consumer_config(w: &Workload) -> ClientConfig {
    let mut c = w.config();
    c.set("client.id", "keel-bench-consumer")
        // librdkafka needs a group id to assign() partitions; no offsets are committed.
        .set("group.id", "keel-bench")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .set("auto.offset.reset", "earliest");
    c
}

/// Runs `future` to completion on this thread (rdkafka's admin futures need no runtime).
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(v) = future.as_mut().poll(&mut cx) {
            return v;
        }
        thread::park();
    }
}

/// Creates the workload's topic (CreateTopics) and waits until every partition has a leader.
pub fn create_topic(w: &Workload, replication_factor: i32) -> Result<(), String> {
    let (topic, partitions) = (w.topic.as_str(), w.partitions);
    let admin: AdminClient<Quiet> = w
        .config()
        .create_with_context(Quiet::default())
        .map_err(|e| format!("admin client: {e}"))?;
    let new = NewTopic::new(
        topic,
        partitions,
        TopicReplication::Fixed(replication_factor),
    );
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(30)))
        .request_timeout(Some(Duration::from_secs(30)));
    let results = block_on(admin.create_topics([&new], &options))
        .map_err(|e| format!("CreateTopics: {e}"))?;
    for r in results {
        if let Err((name, code)) = r {
            return Err(format!("CreateTopics {name}: {code}"));
        }
    }
    let consumer: BaseConsumer<Quiet> = w
        .config()
        .create_with_context(Quiet::default())
        .map_err(|e| format!("metadata client: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(5))
            .map(|m| {
                m.topics().iter().any(|t| {
                    t.name() == topic
                        && t.error().is_none()
                        && t.partitions().len() == partitions as usize
                        && t.partitions()
                            .iter()
                            .all(|p| p.leader() >= 0 && p.error().is_none())
                })
            })
            .unwrap_or(false);
        if ready {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "topic {topic}: not every partition has a leader after 60 s"
            ));
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until the cluster has caught up with what earlier phases wrote, so that one phase's
/// backlog (followers still fetching and syncing acks=1 data) does not slow the next: one
/// acks=all record to every partition (its acknowledgement means every in-sync replica has
/// everything before it on disk), then every partition's ISR back to all its replicas.
/// Returns the seconds it took.
pub fn settle(w: &Workload, timeout: Duration) -> Result<f64, String> {
    let start = Instant::now();
    let (producer, deliveries) = new_producer(w, -1, false)?;
    let mut value = incompressible(w.record_bytes, 0x7365_7474);
    for p in 0..w.partitions {
        stamp(&mut value);
        producer
            .send(
                BaseRecord::<(), [u8]>::to(&w.topic)
                    .partition(p)
                    .payload(&value[..]),
            )
            .map_err(|(e, _)| format!("settle: send to partition {p}: {e}"))?;
    }
    producer
        .flush(Timeout::After(timeout))
        .map_err(|e| format!("settle: acks=all probes not acknowledged within {timeout:?}: {e}"))?;
    failure_note(&deliveries);
    let consumer: BaseConsumer<Quiet> = w
        .config()
        .create_with_context(Quiet::default())
        .map_err(|e| format!("metadata client: {e}"))?;
    loop {
        let in_sync = consumer
            .fetch_metadata(Some(&w.topic), Duration::from_secs(5))
            .map(|m| {
                m.topics().iter().all(|t| {
                    t.partitions()
                        .iter()
                        .all(|p| p.isr().len() == p.replicas().len())
                })
            })
            .unwrap_or(false);
        if in_sync {
            return Ok(start.elapsed().as_secs_f64());
        }
        if start.elapsed() > timeout {
            return Err(format!(
                "settle: some partition's ISR is still short of its replicas after {timeout:?}"
            ));
        }
        thread::sleep(Duration::from_millis(200));
    }
}

/// CPU time of the brokers and of this process.
#[derive(Clone, Copy)]
struct Cpu {
    brokers: Option<f64>,
    client: Option<f64>,
}

impl Cpu {
    fn now(pids: &[u32]) -> Cpu {
        Cpu {
            brokers: total_cpu_secs(pids),
            client: cpu_secs(std::process::id()),
        }
    }

    /// (brokers, client) CPU seconds since `earlier`.
    fn since(self, earlier: Cpu) -> (Option<f64>, Option<f64>) {
        let diff = |a: Option<f64>, b: Option<f64>| Some(a? - b?);
        (
            diff(self.brokers, earlier.brokers),
            diff(self.client, earlier.client),
        )
    }
}

/// What a send loop did.
struct Sent {
    records: u64,
    send_errors: u64,
}

/// Sends records for `duration`, as fast as the producer takes them or held to `rate`
/// records/s; prints progress with `extra`.
fn send_for(
    producer: &ThreadedProducer<ProduceContext>,
    w: &Workload,
    deliveries: &Deliveries,
    duration: Duration,
    rate: Option<f64>,
    progress: &mut Progress,
    extra: &dyn Fn() -> String,
) -> Result<Sent, String> {
    let mut value = incompressible(w.record_bytes, 0x7661_6c75);
    let start = Instant::now();
    let end = start + duration;
    let mut sent = Sent {
        records: 0,
        send_errors: 0,
    };
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        progress.tick(
            deliveries.acked.load(Ordering::Relaxed),
            deliveries.acked_bytes.load(Ordering::Relaxed),
            || {
                let pending = sent.records.saturating_sub(
                    deliveries.acked.load(Ordering::Relaxed)
                        + deliveries.failed.load(Ordering::Relaxed),
                );
                format!("in flight {:>8}  {}", thousands(pending), extra())
            },
        )?;
        if let Some(rate) = rate {
            let elapsed = (now - start).as_secs_f64();
            let due = elapsed * rate;
            if sent.records as f64 >= due {
                let wait = (sent.records as f64 + 1.0) / rate - elapsed;
                thread::sleep(Duration::from_secs_f64(wait.clamp(0.000_05, 0.001)));
                continue;
            }
        }
        stamp(&mut value);
        match producer.send(BaseRecord::<(), [u8]>::to(&w.topic).payload(&value[..])) {
            Ok(()) => sent.records += 1,
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                thread::sleep(Duration::from_micros(200));
            }
            Err((e, _)) => {
                sent.send_errors += 1;
                if sent.send_errors == 1 {
                    eprintln!("  send failed: {e}");
                }
                if sent.send_errors > 1000 {
                    return Err(format!("more than 1000 sends failed; the first: {e}"));
                }
            }
        }
    }
    Ok(sent)
}

fn flush(producer: &ThreadedProducer<ProduceContext>) {
    if let Err(e) = producer.flush(Timeout::After(FLUSH_TIMEOUT)) {
        eprintln!(
            "  flush: {e} (records not acknowledged within {} s count as errors)",
            FLUSH_TIMEOUT.as_secs()
        );
    }
}

fn new_producer(
    w: &Workload,
    acks: i16,
    idempotent: bool,
) -> Result<(ThreadedProducer<ProduceContext>, Arc<Deliveries>), String> {
    let deliveries = Arc::new(Deliveries::default());
    let producer = producer_config(w, acks, idempotent && acks == -1)
        .create_with_context(ProduceContext(deliveries.clone()))
        .map_err(|e| format!("producer: {e}"))?;
    Ok((producer, deliveries))
}

/// Sends one record to every partition and waits for their acknowledgements, so that the
/// timed part of a phase starts with the producer connected to every leader and, when
/// idempotent, holding its producer id. Then clears the counters. Returns the seconds it took.
fn make_ready(
    producer: &ThreadedProducer<ProduceContext>,
    w: &Workload,
    deliveries: &Deliveries,
) -> Result<f64, String> {
    let start = Instant::now();
    let mut value = incompressible(w.record_bytes, 0x7265_6164);
    for p in 0..w.partitions {
        stamp(&mut value);
        producer
            .send(
                BaseRecord::<(), [u8]>::to(&w.topic)
                    .partition(p)
                    .payload(&value[..]),
            )
            .map_err(|(e, _)| format!("first record to partition {p}: {e}"))?;
    }
    producer
        .flush(Timeout::After(FLUSH_TIMEOUT))
        .map_err(|e| format!("first records not acknowledged: {e}"))?;
    if deliveries.failed.load(Ordering::Relaxed) > 0 {
        failure_note(deliveries);
        return Err("the first records failed".into());
    }
    deliveries.acked.store(0, Ordering::Relaxed);
    deliveries.acked_bytes.store(0, Ordering::Relaxed);
    *deliveries
        .latency_us
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = Histogram::new();
    Ok(start.elapsed().as_secs_f64())
}

fn failure_note(deliveries: &Deliveries) {
    let failed = deliveries.failed.load(Ordering::Relaxed);
    if failed > 0 {
        let first = deliveries
            .first_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or_default();
        eprintln!("  {failed} records failed; the first: {first}");
    }
}

/// Produces as fast as the producer takes records, for `secs`, with `acks` (1 or -1 = all;
/// `idempotent` applies to acks=all only). `quiet`: no progress lines (the warm-up).
pub fn produce(
    w: &Workload,
    name: &str,
    acks: i16,
    secs: f64,
    idempotent: bool,
    quiet: bool,
) -> Result<Phase, String> {
    let (producer, deliveries) = new_producer(w, acks, idempotent)?;
    let ready = make_ready(&producer, w, &deliveries)?;
    if !quiet {
        println!("  {name}: producer ready in {ready:.2} s (a first record to every partition)");
    }
    let cpu = Cpu::now(&w.broker_pids);
    let start = Instant::now();
    let mut progress = Progress::new(name, quiet, &w.broker_pids);
    let sent = send_for(
        &producer,
        w,
        &deliveries,
        Duration::from_secs_f64(secs),
        None,
        &mut progress,
        &String::new,
    )?;
    flush(&producer);
    let elapsed = start.elapsed().as_secs_f64();
    let (broker_cpu, client_cpu) = Cpu::now(&w.broker_pids).since(cpu);
    failure_note(&deliveries);
    let acked = deliveries.acked.load(Ordering::Relaxed);
    let latency = deliveries
        .latency_us
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Ok(Phase {
        name: name.to_string(),
        kind: PhaseKind::Produce { acks },
        records: acked,
        bytes: deliveries.acked_bytes.load(Ordering::Relaxed),
        secs: elapsed,
        target_records_per_s: None,
        ack_latency: Latency::from_micros(&latency),
        e2e_latency: None,
        errors: sent.send_errors + sent.records.saturating_sub(acked),
        broker_cpu_secs: broker_cpu,
        client_cpu_secs: client_cpu,
    })
}

/// A partition's (start, end) offsets.
type OffsetRange = (i64, i64);

/// Assigns every partition of the topic, at the low (`from_start`) or the high watermark;
/// returns the consumer and each partition's (start, end) offsets.
fn assigned_consumer(
    w: &Workload,
    from_start: bool,
) -> Result<(BaseConsumer<Quiet>, Vec<OffsetRange>), String> {
    let consumer: BaseConsumer<Quiet> = consumer_config(w)
        .create_with_context(Quiet::default())
        .map_err(|e| format!("consumer: {e}"))?;
    let mut ranges = Vec::new();
    let mut assignment = TopicPartitionList::new();
    for p in 0..w.partitions {
        let (low, high) = consumer
            .fetch_watermarks(&w.topic, p, Duration::from_secs(10))
            .map_err(|e| format!("watermarks of {}/{p}: {e}", w.topic))?;
        let start = if from_start { low } else { high };
        ranges.push((start, high));
        assignment
            .add_partition_offset(&w.topic, p, Offset::Offset(start))
            .map_err(|e| format!("assignment: {e}"))?;
    }
    consumer
        .assign(&assignment)
        .map_err(|e| format!("assign: {e}"))?;
    Ok((consumer, ranges))
}

/// Reads every record in the topic (up to the high watermarks when it starts).
pub fn consume_all(w: &Workload, name: &str) -> Result<Phase, String> {
    let (consumer, ranges) = assigned_consumer(w, true)?;
    let expected: u64 = ranges.iter().map(|(s, e)| (e - s).max(0) as u64).sum();
    let mut next: Vec<i64> = ranges.iter().map(|(s, _)| *s).collect();
    let cpu = Cpu::now(&w.broker_pids);
    let start = Instant::now();
    let mut progress = Progress::new(name, false, &w.broker_pids);
    let (mut records, mut bytes, mut errors) = (0u64, 0u64, 0u64);
    let mut timed_out = false;
    while next.iter().zip(&ranges).any(|(n, (_, end))| n < end) {
        if start.elapsed() > w.consume_timeout {
            timed_out = true;
            break;
        }
        progress.tick(records, bytes, || {
            format!(
                "{:.0}% read",
                records as f64 * 100.0 / expected.max(1) as f64
            )
        })?;
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let p = m.partition() as usize;
                let Some((_, end)) = ranges.get(p) else {
                    continue;
                };
                if m.offset() < *end && m.offset() >= next[p] {
                    records += 1;
                    bytes += m.payload_len() as u64;
                }
                next[p] = next[p].max(m.offset() + 1);
            }
            Some(Err(e)) => {
                errors += 1;
                if errors <= CLIENT_MESSAGES_MAX {
                    eprintln!("  consume: {e}");
                }
            }
            None => {}
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (broker_cpu, client_cpu) = Cpu::now(&w.broker_pids).since(cpu);
    if timed_out {
        eprintln!(
            "  consume: {} of {} records read within {} s; the rest count as errors",
            thousands(records),
            thousands(expected),
            w.consume_timeout.as_secs()
        );
    }
    Ok(Phase {
        name: name.to_string(),
        kind: PhaseKind::Consume,
        records,
        bytes,
        secs: elapsed,
        target_records_per_s: None,
        ack_latency: None,
        e2e_latency: None,
        errors: errors + expected.saturating_sub(records),
        broker_cpu_secs: broker_cpu,
        client_cpu_secs: client_cpu,
    })
}

/// An acks=all producer held to `rate` records/s for `secs`, and a consumer reading from the
/// tail at the same time: ack and end-to-end latency.
pub fn produce_consume(
    w: &Workload,
    name: &str,
    secs: f64,
    rate: f64,
    idempotent: bool,
) -> Result<Phase, String> {
    let (consumer, _) = assigned_consumer(w, false)?;
    let consumed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // Records sent before this (the producer's first records) are read but not counted.
    let timed_from_us = Arc::new(AtomicU64::new(u64::MAX));
    let reader = {
        let (consumed, stop, timed_from_us) =
            (consumed.clone(), stop.clone(), timed_from_us.clone());
        thread::spawn(move || {
            let mut e2e = Histogram::new();
            while !stop.load(Ordering::Relaxed) {
                if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
                    let now = now_us();
                    match stamp_of(m.payload()) {
                        Some(sent) if sent >= timed_from_us.load(Ordering::Relaxed) => {
                            e2e.record(now.saturating_sub(sent));
                            consumed.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {}
                    }
                }
            }
            e2e
        })
    };
    // Let the consumer connect and issue its first fetches before the first record is sent.
    thread::sleep(Duration::from_secs(1));
    let (producer, deliveries) = new_producer(w, -1, idempotent)?;
    let ready = make_ready(&producer, w, &deliveries)?;
    println!("  {name}: producer ready in {ready:.2} s (a first record to every partition)");
    timed_from_us.store(now_us(), Ordering::Relaxed);
    let cpu = Cpu::now(&w.broker_pids);
    let start = Instant::now();
    let mut progress = Progress::new(name, false, &w.broker_pids);
    let extra = || format!("read {:>10}", thousands(consumed.load(Ordering::Relaxed)));
    let sent = send_for(
        &producer,
        w,
        &deliveries,
        Duration::from_secs_f64(secs),
        Some(rate),
        &mut progress,
        &extra,
    );
    flush(&producer);
    let elapsed = start.elapsed().as_secs_f64();
    let acked = deliveries.acked.load(Ordering::Relaxed);
    let drain_deadline = Instant::now() + DRAIN_TIMEOUT;
    while consumed.load(Ordering::Relaxed) < acked && Instant::now() < drain_deadline {
        thread::sleep(Duration::from_millis(10));
    }
    stop.store(true, Ordering::Relaxed);
    let e2e = reader
        .join()
        .map_err(|_| "the consumer thread panicked".to_string())?;
    let sent = sent?;
    let (broker_cpu, client_cpu) = Cpu::now(&w.broker_pids).since(cpu);
    failure_note(&deliveries);
    let read = consumed.load(Ordering::Relaxed);
    if read < acked {
        eprintln!(
            "  {} acknowledged records were not read within {} s of the last send",
            thousands(acked - read),
            DRAIN_TIMEOUT.as_secs()
        );
    }
    let latency = deliveries
        .latency_us
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Ok(Phase {
        name: name.to_string(),
        kind: PhaseKind::ProduceConsume,
        records: acked,
        bytes: deliveries.acked_bytes.load(Ordering::Relaxed),
        secs: elapsed,
        target_records_per_s: Some(rate),
        ack_latency: Latency::from_micros(&latency),
        e2e_latency: Latency::from_micros(&e2e),
        errors: sent.send_errors + sent.records.saturating_sub(acked) + acked.saturating_sub(read),
        broker_cpu_secs: broker_cpu,
        client_cpu_secs: client_cpu,
    })
}

/// How the transactional phase runs: `producers` transactional producers at once, each
/// committing after `records_per_txn` records or `txn_ms` milliseconds, whichever comes first.
pub struct TxnSettings {
    pub producers: u32,
    pub records_per_txn: u32,
    pub txn_ms: u32,
    /// Prefix of the transactional ids (`PREFIX-0`, `PREFIX-1`, ...), new for each run.
    pub id_prefix: String,
}

/// What one transactional producer did in the timed part.
struct TxnOutcome {
    committed_records: u64,
    commits: u64,
    failed_records: u64,
    commit_us: Histogram,
}

impl TxnOutcome {
    fn new() -> TxnOutcome {
        TxnOutcome {
            committed_records: 0,
            commits: 0,
            failed_records: 0,
            commit_us: Histogram::new(),
        }
    }
}

/// How long a transactional producer may take to initialise, commit or abort.
const TXN_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// One transactional producer (`transactional.id` `id`, acks=all, idempotent), initialised,
/// with a first transaction that writes one record to every partition committed, so that the
/// timed part starts with its producer id, its connections and its coordinator known.
fn ready_txn_producer(
    w: &Workload,
    id: &str,
    deliveries: &Arc<Deliveries>,
) -> Result<ThreadedProducer<ProduceContext>, String> {
    let producer: ThreadedProducer<ProduceContext> = producer_config(w, -1, true)
        .set("transactional.id", id)
        .set("transaction.timeout.ms", "60000")
        .create_with_context(ProduceContext(deliveries.clone()))
        .map_err(|e| format!("transactional producer {id}: {e}"))?;
    producer
        .init_transactions(TXN_CALL_TIMEOUT)
        .map_err(|e| format!("{id}: init_transactions: {e}"))?;
    producer
        .begin_transaction()
        .map_err(|e| format!("{id}: begin_transaction: {e}"))?;
    let mut value = incompressible(w.record_bytes, 0x7478_6e30);
    for p in 0..w.partitions {
        stamp(&mut value);
        producer
            .send(
                BaseRecord::<(), [u8]>::to(&w.topic)
                    .partition(p)
                    .payload(&value[..]),
            )
            .map_err(|(e, _)| format!("{id}: first record to partition {p}: {e}"))?;
    }
    producer
        .commit_transaction(TXN_CALL_TIMEOUT)
        .map_err(|e| format!("{id}: first commit: {e}"))?;
    Ok(producer)
}

/// Waits until every record `producer` sent is acknowledged (or `timeout` passes), checking every
/// 100 µs while the producer's polling thread serves the delivery reports.
///
/// `commit_transaction` flushes first, and the rdkafka crate's flush, when a record is still
/// unacknowledged, polls for a whole 100 ms before it looks again (its `poll` runs to its
/// deadline however many events it serves): every commit took just over 100 ms, whatever the
/// broker did. With this wait first, that flush finds nothing in flight and returns at once.
fn acknowledged(producer: &ThreadedProducer<ProduceContext>, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while producer.in_flight_count() > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_micros(100));
    }
}

/// Transactions until `end`: begin, send until the transaction has its records or its time,
/// commit (aborting instead if the commit fails with an abortable error).
fn run_transactions(
    producer: &ThreadedProducer<ProduceContext>,
    w: &Workload,
    txn: &TxnSettings,
    end: Instant,
    committed: &AtomicU64,
) -> Result<TxnOutcome, String> {
    let mut out = TxnOutcome::new();
    let mut value = incompressible(w.record_bytes, 0x7478_6e31);
    let txn_time = Duration::from_millis(u64::from(txn.txn_ms));
    while Instant::now() < end {
        producer
            .begin_transaction()
            .map_err(|e| format!("begin_transaction: {e}"))?;
        let began = Instant::now();
        let mut records = 0u64;
        while records < u64::from(txn.records_per_txn) && began.elapsed() < txn_time {
            stamp(&mut value);
            match producer.send(BaseRecord::<(), [u8]>::to(&w.topic).payload(&value[..])) {
                Ok(()) => records += 1,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    thread::sleep(Duration::from_micros(200));
                }
                Err((e, _)) => return Err(format!("send: {e}")),
            }
        }
        let commit_start = Instant::now();
        acknowledged(producer, TXN_CALL_TIMEOUT);
        match producer.commit_transaction(TXN_CALL_TIMEOUT) {
            Ok(()) => {
                out.commit_us
                    .record(commit_start.elapsed().as_micros() as u64);
                out.commits += 1;
                out.committed_records += records;
                committed.fetch_add(records, Ordering::Relaxed);
            }
            Err(KafkaError::Transaction(e)) if e.txn_requires_abort() => {
                out.failed_records += records;
                producer
                    .abort_transaction(TXN_CALL_TIMEOUT)
                    .map_err(|e| format!("abort_transaction after a failed commit: {e}"))?;
            }
            Err(e) => return Err(format!("commit_transaction: {e}")),
        }
    }
    Ok(out)
}

/// `txn.producers` transactional producers at once for `secs`, each committing every
/// `txn.records_per_txn` records or `txn.txn_ms` ms. Only records of committed transactions
/// count; the ack latency is send() to delivery report as elsewhere, and the commit latency
/// (commit_transaction's duration: the flush of the transaction's records, then EndTxn) is
/// printed.
pub fn produce_transactional(
    w: &Workload,
    name: &str,
    secs: f64,
    txn: &TxnSettings,
) -> Result<Phase, String> {
    let deliveries = Arc::new(Deliveries::default());
    let ready_start = Instant::now();
    let producers = (0..txn.producers)
        .map(|i| {
            let id = format!("{}-{i}", txn.id_prefix);
            let deliveries = deliveries.clone();
            let w = Workload {
                bootstrap: w.bootstrap.clone(),
                topic: w.topic.clone(),
                broker_pids: Vec::new(),
                client: w.client.clone(),
                ..*w
            };
            thread::spawn(move || ready_txn_producer(&w, &id, &deliveries))
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| {
            h.join()
                .map_err(|_| "a producer thread panicked".to_string())?
        })
        .collect::<Result<Vec<_>, String>>()?;
    println!(
        "  {name}: {} transactional producers ready in {:.2} s (one committed transaction \
         each, a record to every partition)",
        producers.len(),
        ready_start.elapsed().as_secs_f64()
    );
    deliveries.acked.store(0, Ordering::Relaxed);
    deliveries.acked_bytes.store(0, Ordering::Relaxed);
    *deliveries
        .latency_us
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = Histogram::new();

    let committed = Arc::new(AtomicU64::new(0));
    let cpu = Cpu::now(&w.broker_pids);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let workers = producers
        .into_iter()
        .map(|producer| {
            let committed = committed.clone();
            let w = Workload {
                bootstrap: w.bootstrap.clone(),
                topic: w.topic.clone(),
                broker_pids: Vec::new(),
                client: w.client.clone(),
                ..*w
            };
            let settings = TxnSettings {
                id_prefix: String::new(),
                ..*txn
            };
            thread::spawn(move || run_transactions(&producer, &w, &settings, end, &committed))
        })
        .collect::<Vec<_>>();
    let mut progress = Progress::new(name, false, &w.broker_pids);
    while Instant::now() < end && !workers.iter().all(|h| h.is_finished()) {
        let c = committed.load(Ordering::Relaxed);
        // An error here (every broker exited) leaves the producers to fail on their own.
        progress.tick(c, c * w.record_bytes as u64, String::new)?;
        thread::sleep(Duration::from_millis(20));
    }
    let mut total = TxnOutcome::new();
    let mut first_error = None;
    for h in workers {
        match h.join() {
            Ok(Ok(o)) => {
                total.committed_records += o.committed_records;
                total.commits += o.commits;
                total.failed_records += o.failed_records;
                total.commit_us.merge(&o.commit_us);
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(_) => {
                first_error.get_or_insert("a producer thread panicked".into());
            }
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (broker_cpu, client_cpu) = Cpu::now(&w.broker_pids).since(cpu);
    if let Some(e) = first_error {
        return Err(format!("{name}: {e}"));
    }
    failure_note(&deliveries);
    if let Some(l) = Latency::from_micros(&total.commit_us) {
        println!(
            "  {name}: {} commits of {:.1} records on average; commit_transaction {}",
            thousands(total.commits),
            total.committed_records as f64 / total.commits.max(1) as f64,
            l.summary()
        );
    }
    let latency = deliveries
        .latency_us
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Ok(Phase {
        name: name.to_string(),
        kind: PhaseKind::Transactional {
            producers: txn.producers,
            records_per_txn: txn.records_per_txn,
            txn_ms: txn.txn_ms,
        },
        records: total.committed_records,
        bytes: total.committed_records * w.record_bytes as u64,
        secs: elapsed,
        target_records_per_s: None,
        ack_latency: Latency::from_micros(&latency),
        e2e_latency: None,
        // A failed delivery fails its transaction's commit, so these include them.
        errors: total.failed_records,
        broker_cpu_secs: broker_cpu,
        client_cpu_secs: client_cpu,
    })
}
