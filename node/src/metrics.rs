//! The broker's metrics and the Prometheus endpoint that serves them.
//!
//! This module owns the [`Metrics`] registry (request counts, errors and latency per Kafka API,
//! bytes in and out, connections), its rendering in the Prometheus text exposition format
//! 0.0.4, and [`serve`], a minimal HTTP/1.1 server answering `GET /metrics`.
//!
//! What holds:
//! - The hot path neither locks nor allocates: a request costs two or three relaxed atomic adds
//!   (its latency bucket, the latency sum, and the error count if it failed) on a slot fixed at
//!   construction (one per API key, [`API_KEY_SLOTS`] of them); bytes and connections one each.
//! - Nothing is stored per partition: the broker hands over a callback
//!   ([`Metrics::set_partition_source`]) that reports its partitions' offsets when a scrape
//!   asks, so the per-partition gauges cost nothing between scrapes.
//! - In one rendering, a histogram's buckets are cumulative and non-decreasing, its `+Inf`
//!   bucket equals its `_count`, and `keel_requests_total` equals that `_count`: all are
//!   computed from one read of the bucket counters. `_sum` and the error count are read
//!   separately and may include a request the buckets do not yet show.
//! - The HTTP server never panics on input and bounds what one client can hold ([`HttpLimits`]):
//!   a request head is at most [`HTTP_HEAD_BYTES_MAX`] bytes; it must arrive, and each response
//!   be written, within [`HTTP_IO_TIMEOUT`]; closing after an error waits at most
//!   [`HTTP_LINGER_TIMEOUT`]; at most [`HTTP_CONNECTIONS_MAX`] connections are served at once
//!   (more wait in the listen backlog).

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use kafka_protocol::messages::ApiKey;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Request latency histogram buckets: upper bounds in nanoseconds and as the `le` label (in
/// seconds), 0.5 ms to 10 s. Latencies above the last bound count only in `+Inf`.
pub const REQUEST_LATENCY_BUCKETS: [(u64, &str); 14] = [
    (500_000, "0.0005"),
    (1_000_000, "0.001"),
    (2_500_000, "0.0025"),
    (5_000_000, "0.005"),
    (10_000_000, "0.01"),
    (25_000_000, "0.025"),
    (50_000_000, "0.05"),
    (100_000_000, "0.1"),
    (250_000_000, "0.25"),
    (500_000_000, "0.5"),
    (1_000_000_000, "1"),
    (2_500_000_000, "2.5"),
    (5_000_000_000, "5"),
    (10_000_000_000, "10"),
];

/// Bucket counters per histogram: one per bound plus the overflow above the last.
const BUCKET_SLOTS: usize = REQUEST_LATENCY_BUCKETS.len() + 1;

/// Per-API slots, indexed by API key. Kafka's keys run from 0 to 92 today; a request whose key
/// is at or past this bound is not counted (debug builds assert).
pub const API_KEY_SLOTS: usize = 128;

/// The largest HTTP request head (request line and headers) the endpoint reads; a longer one
/// gets `431` and the connection is closed.
pub const HTTP_HEAD_BYTES_MAX: usize = 8 * 1024;

/// How long the endpoint waits for a request head to arrive (or for an idle keep-alive
/// connection's next request), and for a response to be written.
pub const HTTP_IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections the endpoint serves at once; further ones wait in the listen backlog.
pub const HTTP_CONNECTIONS_MAX: usize = 64;

/// After an error response, the most bytes read and dropped while waiting for the client to
/// close, so that closing with unread input (which makes TCP send a reset) does not destroy
/// the response before the client reads it.
pub const HTTP_LINGER_BYTES_MAX: usize = 64 * 1024;

/// After an error response, the longest wait for the client to close (capped by the I/O
/// timeout).
pub const HTTP_LINGER_TIMEOUT: Duration = Duration::from_secs(2);

/// How long to pause after a failed accept (out of file descriptors, say) before trying again.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// The `Content-Type` of a Prometheus text exposition, format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether a request was answered with success or with an error code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every error code in the response is NONE.
    Ok,
    /// The response carries an error (top-level or for some partition), or none could be sent.
    Error,
}

/// One partition's offsets, as the broker reports them at scrape time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionStats {
    /// The topic name.
    pub topic: String,
    /// The partition index.
    pub partition: i32,
    /// The log start offset.
    pub log_start_offset: i64,
    /// The log end offset.
    pub log_end_offset: i64,
    /// The high watermark.
    pub high_watermark: i64,
}

/// The callback through which the broker reports its partitions at scrape time.
pub type PartitionSource = dyn Fn() -> Vec<PartitionStats> + Send + Sync;

/// A consumer group's committed offset on one partition, as the group's coordinator holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupOffsetStats {
    /// The group id.
    pub group: String,
    /// The topic name.
    pub topic: String,
    /// The partition index.
    pub partition: i32,
    /// The committed offset (the next offset the group will consume).
    pub committed_offset: i64,
    /// The partition's high watermark minus the committed offset (never below 0), if this
    /// broker holds a replica of the partition; `None` otherwise.
    pub lag: Option<i64>,
}

/// What the broker reports of the cluster at scrape time, beyond its partitions' offsets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterStats {
    /// Partitions this broker leads.
    pub leader_partitions: u64,
    /// Partitions this broker leads whose ISR is smaller than their replica set.
    pub under_replicated_partitions: u64,
    /// Partitions of the whole cluster, in this broker's applied metadata, without a leader
    /// that is registered and unfenced.
    pub offline_partitions: u64,
    /// Committed offsets of the groups this broker coordinates, sorted by group, topic and
    /// partition.
    pub group_offsets: Vec<GroupOffsetStats>,
}

/// The callback through which the broker reports [`ClusterStats`] at scrape time.
pub type ClusterSource = dyn Fn() -> ClusterStats + Send + Sync;

/// A latency histogram with the fixed [`REQUEST_LATENCY_BUCKETS`]: one atomic add per bucket
/// hit and one for the sum. Buckets are stored non-cumulative and summed when read.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: [AtomicU64; BUCKET_SLOTS],
    sum_nanos: AtomicU64,
}

/// What a [`LatencyHistogram`] held when read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Cumulative counts: entry `i` counts observations `<=` bound `i` of
    /// [`REQUEST_LATENCY_BUCKETS`]; the last entry is `+Inf` and equals `count`.
    pub cumulative: [u64; BUCKET_SLOTS],
    /// The number of observations.
    pub count: u64,
    /// The sum of the observations in nanoseconds (wraps after 584 years of latency).
    pub sum_nanos: u64,
}

impl HistogramSnapshot {
    /// The sum of the observations in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_nanos as f64 / 1e9
    }
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
        }
    }
}

impl LatencyHistogram {
    /// Counts one observation.
    pub fn observe(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let slot = REQUEST_LATENCY_BUCKETS
            .iter()
            .position(|(bound, _)| nanos <= *bound)
            .unwrap_or(REQUEST_LATENCY_BUCKETS.len());
        self.buckets[slot].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Reads the counters once and accumulates them.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut cumulative = [0u64; BUCKET_SLOTS];
        let mut running = 0u64;
        for (slot, bucket) in self.buckets.iter().enumerate() {
            running = running.wrapping_add(bucket.load(Ordering::Relaxed));
            cumulative[slot] = running;
        }
        HistogramSnapshot {
            cumulative,
            count: running,
            sum_nanos: self.sum_nanos.load(Ordering::Relaxed),
        }
    }
}

/// The counters of one API key.
#[derive(Debug, Default)]
struct ApiSlot {
    latency: LatencyHistogram,
    errors: AtomicU64,
}

/// The broker's metrics. Hold it in an `Arc`; every method takes `&self` and is safe to call
/// from any task.
pub struct Metrics {
    apis: Box<[ApiSlot]>,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    connections: AtomicI64,
    connections_accepted: AtomicU64,
    /// Bytes of requests admitted under `queued.max.request.bytes` and not yet answered.
    request_queue_bytes: AtomicI64,
    /// The log cleaner's counters (`crate::broker::cleaner`).
    pub cleaner: crate::broker::cleaner::CleanerCounters,
    partition_source: RwLock<Option<Arc<PartitionSource>>>,
    cluster_source: RwLock<Option<Arc<ClusterSource>>>,
    /// SASL authentications that succeeded and that failed, by mechanism
    /// ([`SASL_MECHANISMS`]).
    authentications: [[AtomicU64; 2]; SASL_MECHANISMS.len()],
    /// ISR changes this broker's leaders had committed that removed a member.
    isr_shrinks: AtomicU64,
    /// ISR changes this broker's leaders had committed that added a member.
    isr_expands: AtomicU64,
    /// Requests (or parts of requests) the authoriser denied, by resource type and operation
    /// ([`DENIAL_SLOTS`]).
    denials: Box<[AtomicU64]>,
}

/// The SASL mechanisms `keel_authentications_total` counts, by name.
pub const SASL_MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

/// Denial counters: one per resource type code (0 to 7) and operation code (0 to 15).
pub const DENIAL_SLOTS: usize = 8 * 16;

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("bytes_in", &self.bytes_in)
            .field("bytes_out", &self.bytes_out)
            .field("connections", &self.connections)
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Keeps `keel_connections` one higher while it lives; made by [`Metrics::connection_opened`].
#[derive(Debug)]
#[must_use = "the connection counts as open only while the guard lives"]
pub struct ConnectionGuard {
    metrics: Arc<Metrics>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.metrics.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Metrics {
        Metrics {
            apis: (0..API_KEY_SLOTS).map(|_| ApiSlot::default()).collect(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            connections: AtomicI64::new(0),
            connections_accepted: AtomicU64::new(0),
            request_queue_bytes: AtomicI64::new(0),
            cleaner: Default::default(),
            partition_source: RwLock::new(None),
            cluster_source: RwLock::new(None),
            authentications: Default::default(),
            isr_shrinks: AtomicU64::new(0),
            isr_expands: AtomicU64::new(0),
            denials: (0..DENIAL_SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Counts one request of `api` that took `elapsed` (from its first byte read to its
    /// response queued) and ended with `outcome`.
    pub fn record_request(&self, api: ApiKey, elapsed: Duration, outcome: Outcome) {
        let key = api as i16;
        let Some(slot) = usize::try_from(key).ok().and_then(|k| self.apis.get(k)) else {
            debug_assert!(false, "API key {key} past API_KEY_SLOTS");
            return;
        };
        slot.latency.observe(elapsed);
        if outcome == Outcome::Error {
            slot.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts one denial by the authoriser of `operation` on a resource of `resource_type`.
    pub fn record_denial(
        &self,
        resource_type: keel_core::acl::ResourceType,
        operation: keel_core::acl::Operation,
    ) {
        let slot = resource_type.code() as usize * 16 + operation.code() as usize;
        if let Some(counter) = self.denials.get(slot) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How many denials of `operation` on `resource_type` were counted.
    pub fn denials(
        &self,
        resource_type: keel_core::acl::ResourceType,
        operation: keel_core::acl::Operation,
    ) -> u64 {
        let slot = resource_type.code() as usize * 16 + operation.code() as usize;
        self.denials
            .get(slot)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Counts `bytes` read from Kafka clients (request frames, size prefix included).
    pub fn add_bytes_in(&self, bytes: u64) {
        self.bytes_in.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts `bytes` written to Kafka clients (response frames, size prefix included).
    pub fn add_bytes_out(&self, bytes: u64) {
        self.bytes_out.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Counts a Kafka client connection as accepted and open until the returned guard drops.
    pub fn connection_opened(self: &Arc<Self>) -> ConnectionGuard {
        self.connections_accepted.fetch_add(1, Ordering::Relaxed);
        self.connections.fetch_add(1, Ordering::Relaxed);
        ConnectionGuard {
            metrics: Arc::clone(self),
        }
    }

    /// Counts `bytes` of a request as queued (read, not yet answered), or with a negative
    /// `bytes` as answered: `keel_request_queue_bytes`.
    pub fn add_request_queue_bytes(&self, bytes: i64) {
        self.request_queue_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Bytes of requests read and not yet answered, as `keel_request_queue_bytes` reports them.
    pub fn request_queue_bytes(&self) -> i64 {
        self.request_queue_bytes.load(Ordering::Relaxed)
    }

    /// Sets the callback that reports partitions at scrape time (replacing any earlier one). It
    /// runs on the metrics endpoint's task once per scrape, so it should only copy a few numbers
    /// per partition out of the broker's state. If the broker holds this registry, capture a
    /// `Weak` reference to the broker (returning nothing once it is gone) so the two do not
    /// keep each other alive.
    pub fn set_partition_source(&self, source: Box<PartitionSource>) {
        replace(&self.partition_source, Arc::from(source));
    }

    /// Sets the callback that reports [`ClusterStats`] at scrape time (replacing any earlier
    /// one), with the same rules as [`Metrics::set_partition_source`].
    pub fn set_cluster_source(&self, source: Box<ClusterSource>) {
        replace(&self.cluster_source, Arc::from(source));
    }

    /// Counts a SASL authentication with `mechanism` (one of [`SASL_MECHANISMS`]; others are
    /// not counted) that succeeded or failed.
    pub fn record_authentication(&self, mechanism: &str, succeeded: bool) {
        if let Some(slot) = SASL_MECHANISMS.iter().position(|m| *m == mechanism) {
            self.authentications[slot][usize::from(!succeeded)].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts an ISR change a leader on this broker had committed, from `before` to `after`:
    /// a shrink if a member left, an expansion if one joined (both if both happened).
    pub fn record_isr_change<T: PartialEq>(&self, before: &[T], after: &[T]) {
        if before.iter().any(|b| !after.contains(b)) {
            self.isr_shrinks.fetch_add(1, Ordering::Relaxed);
        }
        if after.iter().any(|a| !before.contains(a)) {
            self.isr_expands.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// What the latency histogram of `api` holds now.
    pub fn request_latency(&self, api: ApiKey) -> HistogramSnapshot {
        usize::try_from(api as i16)
            .ok()
            .and_then(|k| self.apis.get(k))
            .map_or_else(
                || LatencyHistogram::default().snapshot(),
                |slot| slot.latency.snapshot(),
            )
    }

    /// Renders every metric in the Prometheus text exposition format 0.0.4. APIs appear once
    /// they have served a request; partitions are those the partition source reports now,
    /// sorted by topic and partition.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);

        family(
            &mut out,
            "keel_build_info",
            "gauge",
            "Always 1; the version label names the keel build.",
        );
        sample(
            &mut out,
            "keel_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))],
            1,
        );

        let apis: Vec<(String, HistogramSnapshot, u64)> = self
            .apis
            .iter()
            .enumerate()
            .filter_map(|(key, slot)| {
                let snapshot = slot.latency.snapshot();
                if snapshot.count == 0 {
                    return None;
                }
                let name = i16::try_from(key)
                    .ok()
                    .and_then(|k| ApiKey::try_from(k).ok())
                    .map_or_else(|| format!("ApiKey{key}"), |api| format!("{api:?}"));
                Some((name, snapshot, slot.errors.load(Ordering::Relaxed)))
            })
            .collect();

        family(
            &mut out,
            "keel_requests_total",
            "counter",
            "Kafka requests answered, by API.",
        );
        for (api, snapshot, _) in &apis {
            sample(
                &mut out,
                "keel_requests_total",
                &[("api", api)],
                snapshot.count,
            );
        }
        family(
            &mut out,
            "keel_request_errors_total",
            "counter",
            "Kafka requests answered with an error code, by API.",
        );
        for (api, _, errors) in &apis {
            sample(
                &mut out,
                "keel_request_errors_total",
                &[("api", api)],
                *errors,
            );
        }
        family(
            &mut out,
            "keel_request_duration_seconds",
            "histogram",
            "Time from a Kafka request's arrival to its response, by API.",
        );
        for (api, snapshot, _) in &apis {
            histogram(&mut out, "keel_request_duration_seconds", api, snapshot);
        }

        for (name, help, value) in [
            (
                "keel_bytes_in_total",
                "Bytes of Kafka requests read.",
                &self.bytes_in,
            ),
            (
                "keel_bytes_out_total",
                "Bytes of Kafka responses written.",
                &self.bytes_out,
            ),
            (
                "keel_connections_accepted_total",
                "Kafka client connections accepted.",
                &self.connections_accepted,
            ),
            (
                "keel_log_cleaner_bytes_total",
                "Bytes the log cleaner read and wrote.",
                &self.cleaner.bytes,
            ),
            (
                "keel_log_cleaner_segments_total",
                "Segments the log cleaner replaced with cleaned ones.",
                &self.cleaner.segments,
            ),
            (
                "keel_log_cleaner_errors_total",
                "Log cleanings that failed (the segments were left in place).",
                &self.cleaner.errors,
            ),
            (
                "keel_isr_shrinks_total",
                "ISR changes committed for this broker's leaders that removed a member.",
                &self.isr_shrinks,
            ),
            (
                "keel_isr_expands_total",
                "ISR changes committed for this broker's leaders that added a member.",
                &self.isr_expands,
            ),
        ] {
            family(&mut out, name, "counter", help);
            sample(&mut out, name, &[], value.load(Ordering::Relaxed));
        }
        family(
            &mut out,
            "keel_connections",
            "gauge",
            "Kafka client connections open.",
        );
        sample(
            &mut out,
            "keel_connections",
            &[],
            self.connections.load(Ordering::Relaxed),
        );
        family(
            &mut out,
            "keel_request_queue_bytes",
            "gauge",
            "Bytes of requests read and not yet answered (bounded by queued.max.request.bytes).",
        );
        sample(
            &mut out,
            "keel_request_queue_bytes",
            &[],
            self.request_queue_bytes.load(Ordering::Relaxed),
        );

        family(
            &mut out,
            "keel_authorization_denials_total",
            "counter",
            "Operations the authoriser denied, by resource type and operation.",
        );
        for resource_type in keel_core::acl::ResourceType::ALL {
            for operation in keel_core::acl::Operation::ALL_OPERATIONS {
                let n = self.denials(resource_type, operation);
                if n > 0 {
                    sample(
                        &mut out,
                        "keel_authorization_denials_total",
                        &[
                            ("resource_type", resource_type.name()),
                            ("operation", operation.name()),
                        ],
                        n,
                    );
                }
            }
        }

        family(
            &mut out,
            "keel_authentications_total",
            "counter",
            "SASL authentications, by mechanism and result (failures are logged too).",
        );
        for (mechanism, counts) in SASL_MECHANISMS.iter().zip(&self.authentications) {
            for (result, count) in ["success", "failure"].iter().zip(counts) {
                sample(
                    &mut out,
                    "keel_authentications_total",
                    &[("mechanism", mechanism), ("result", result)],
                    count.load(Ordering::Relaxed),
                );
            }
        }

        let mut partitions = read(&self.partition_source)
            .map(|f| f())
            .unwrap_or_default();
        partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        type Field = fn(&PartitionStats) -> i64;
        let gauges: [(&str, &str, Field); 3] = [
            (
                "keel_partition_log_start_offset",
                "The partition's log start offset.",
                |p| p.log_start_offset,
            ),
            (
                "keel_partition_log_end_offset",
                "The partition's log end offset.",
                |p| p.log_end_offset,
            ),
            (
                "keel_partition_high_watermark",
                "The partition's high watermark.",
                |p| p.high_watermark,
            ),
        ];
        for (name, help, field) in gauges {
            family(&mut out, name, "gauge", help);
            for p in &partitions {
                let partition = p.partition.to_string();
                sample(
                    &mut out,
                    name,
                    &[("topic", &p.topic), ("partition", &partition)],
                    field(p),
                );
            }
        }

        let cluster = read(&self.cluster_source).map(|f| f()).unwrap_or_default();
        for (name, help, value) in [
            (
                "keel_leader_partitions",
                "Partitions this broker leads.",
                cluster.leader_partitions,
            ),
            (
                "keel_under_replicated_partitions",
                "Partitions this broker leads whose ISR is smaller than their replica set.",
                cluster.under_replicated_partitions,
            ),
            (
                "keel_offline_partitions",
                "Partitions of the cluster without a live leader, as this broker's metadata has it.",
                cluster.offline_partitions,
            ),
        ] {
            family(&mut out, name, "gauge", help);
            sample(&mut out, name, &[], value);
        }
        let mut offsets = cluster.group_offsets;
        offsets.sort_by(|a, b| {
            (&a.group, &a.topic, a.partition).cmp(&(&b.group, &b.topic, b.partition))
        });
        type OffsetField = fn(&GroupOffsetStats) -> Option<i64>;
        let group_gauges: [(&str, &str, OffsetField); 2] = [
            (
                "keel_consumer_group_committed_offset",
                "A group's committed offset on a partition, from the group's coordinator.",
                |g| Some(g.committed_offset),
            ),
            (
                "keel_consumer_group_lag",
                "A partition's high watermark minus a group's committed offset, from the group's coordinator when it holds a replica of the partition.",
                |g| g.lag,
            ),
        ];
        for (name, help, field) in group_gauges {
            family(&mut out, name, "gauge", help);
            for g in &offsets {
                if let Some(value) = field(g) {
                    let partition = g.partition.to_string();
                    sample(
                        &mut out,
                        name,
                        &[
                            ("group", &g.group),
                            ("topic", &g.topic),
                            ("partition", &partition),
                        ],
                        value,
                    );
                }
            }
        }
        out
    }
}

/// The callback in `slot`, if one is set (a poisoned lock still holds a valid `Arc`).
fn read<T: ?Sized>(slot: &RwLock<Option<Arc<T>>>) -> Option<Arc<T>> {
    match slot.read() {
        Ok(slot) => slot.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

/// Puts `source` in `slot`, replacing any earlier callback.
fn replace<T: ?Sized>(slot: &RwLock<Option<Arc<T>>>, source: Arc<T>) {
    match slot.write() {
        Ok(mut slot) => *slot = Some(source),
        Err(poisoned) => *poisoned.into_inner() = Some(source),
    }
}

/// Writes a family's `# HELP` and `# TYPE` lines.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    // Writing to a String cannot fail.
    let _ = writeln!(out, "# HELP {name} {}", escape_help(help));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Writes one sample line: `name{label="value",...} value`.
fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (label, value)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{label}=\"{}\"", escape_label_value(value));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// Writes a histogram's `_bucket` lines (cumulative, ending with `+Inf`), `_sum` and `_count`.
fn histogram(out: &mut String, name: &str, api: &str, snapshot: &HistogramSnapshot) {
    let bucket = format!("{name}_bucket");
    let les = REQUEST_LATENCY_BUCKETS
        .iter()
        .map(|(_, le)| *le)
        .chain(std::iter::once("+Inf"));
    for (le, count) in les.zip(snapshot.cumulative) {
        sample(out, &bucket, &[("api", api), ("le", le)], count);
    }
    sample(
        out,
        &format!("{name}_sum"),
        &[("api", api)],
        snapshot.sum_seconds(),
    );
    sample(
        out,
        &format!("{name}_count"),
        &[("api", api)],
        snapshot.count,
    );
}

/// Escapes a label value for the text format: `\` as `\\`, `"` as `\"`, newline as `\n`.
pub fn escape_label_value(value: &str) -> Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return Cow::Borrowed(value);
    }
    let mut escaped = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    Cow::Owned(escaped)
}

/// Escapes `# HELP` text: `\` as `\\`, newline as `\n`.
fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

/// The bounds the endpoint holds each client to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// The largest request head read ([`HTTP_HEAD_BYTES_MAX`] by default).
    pub head_bytes_max: usize,
    /// How long a head may take to arrive and a response to be written
    /// ([`HTTP_IO_TIMEOUT`] by default).
    pub io_timeout: Duration,
    /// Connections served at once ([`HTTP_CONNECTIONS_MAX`] by default; at least 1).
    pub connections_max: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            head_bytes_max: HTTP_HEAD_BYTES_MAX,
            io_timeout: HTTP_IO_TIMEOUT,
            connections_max: HTTP_CONNECTIONS_MAX,
        }
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped, one task per connection,
/// with the default [`HttpLimits`]. `GET` or `HEAD /metrics` answers 200 with
/// [`CONTENT_TYPE`]; another method on it 405; another path 404; a request that is not
/// HTTP/1.x 400, a head over [`HTTP_HEAD_BYTES_MAX`] 431 and a head unfinished after
/// [`HTTP_IO_TIMEOUT`] 408, each followed by closing the connection. Connections are kept
/// alive between requests as HTTP/1.1 says.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    serve_with(listener, metrics, HttpLimits::default()).await;
}

/// [`serve`] with the given limits.
pub async fn serve_with(listener: TcpListener, metrics: Arc<Metrics>, limits: HttpLimits) {
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.connections_max.max(1)));
    loop {
        let Ok(permit) = Arc::clone(&permits).acquire_owned().await else {
            return; // The semaphore is never closed.
        };
        match listener.accept().await {
            Ok((stream, _peer)) => {
                let metrics = Arc::clone(&metrics);
                tokio::spawn(async move {
                    serve_connection(stream, &metrics, limits).await;
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!("metrics endpoint: accept failed: {e}");
                tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
            }
        }
    }
}

/// The parts of a request head the endpoint uses.
#[derive(Debug)]
struct RequestHead {
    method: String,
    path: String,
    keep_alive: bool,
}

/// Why a head was refused.
#[derive(Debug, PartialEq, Eq)]
enum HeadError {
    /// Not an HTTP/1.x request head: 400.
    Malformed,
}

/// The end of the head in `buf` (just past the blank line), if it holds a whole one.
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Parses a request head (request line, header lines, blank line).
fn parse_head(head: &[u8]) -> Result<RequestHead, HeadError> {
    let text = std::str::from_utf8(head).map_err(|_| HeadError::Malformed)?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().ok_or(HeadError::Malformed)?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Malformed);
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(HeadError::Malformed);
    }
    if !target.starts_with('/') || target.bytes().any(|b| b.is_ascii_control()) {
        return Err(HeadError::Malformed);
    }
    let mut keep_alive = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return Err(HeadError::Malformed),
    };
    for line in lines.take_while(|l| !l.is_empty()) {
        let (name, value) = line.split_once(':').ok_or(HeadError::Malformed)?;
        if name.is_empty()
            || name
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(HeadError::Malformed);
        }
        let value = value.trim();
        if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            let length: u64 = value.parse().map_err(|_| HeadError::Malformed)?;
            // The endpoint reads no bodies: answer, then close rather than parse one.
            if length > 0 {
                keep_alive = false;
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            keep_alive = false;
        }
    }
    let path = target.split('?').next().unwrap_or(target).to_string();
    Ok(RequestHead {
        method: method.to_string(),
        path,
        keep_alive,
    })
}

/// What reading a head came to.
enum HeadRead {
    /// A whole head ends at this index of the buffer.
    Complete(usize),
    /// The peer closed (with or without a partial head).
    Closed,
    /// The head is over the bound.
    TooLarge,
}

/// Reads until `buf` holds a whole head, the peer closes, or the head passes the bound.
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    head_bytes_max: usize,
) -> std::io::Result<HeadRead> {
    let mut chunk = [0u8; 2048];
    loop {
        if let Some(end) = head_end(buf) {
            return Ok(if end > head_bytes_max {
                HeadRead::TooLarge
            } else {
                HeadRead::Complete(end)
            });
        }
        if buf.len() >= head_bytes_max {
            return Ok(HeadRead::TooLarge);
        }
        let room = (head_bytes_max - buf.len()).min(chunk.len());
        let n = stream.read(&mut chunk[..room]).await?;
        if n == 0 {
            return Ok(HeadRead::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Serves one connection until it closes, errs, idles past the timeout or needs closing.
async fn serve_connection(mut stream: TcpStream, metrics: &Metrics, limits: HttpLimits) {
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    loop {
        let read = tokio::time::timeout(
            limits.io_timeout,
            read_head(&mut stream, &mut buf, limits.head_bytes_max),
        )
        .await;
        let end = match read {
            // An idle keep-alive connection just closes; a half-sent head gets 408.
            Err(_elapsed) if buf.is_empty() => return,
            Err(_elapsed) => {
                return refuse(stream, limits, 408, "Request Timeout").await;
            }
            Ok(Err(_)) | Ok(Ok(HeadRead::Closed)) => return,
            Ok(Ok(HeadRead::TooLarge)) => {
                return refuse(stream, limits, 431, "Request Header Fields Too Large").await;
            }
            Ok(Ok(HeadRead::Complete(end))) => end,
        };
        let Ok(head) = parse_head(&buf[..end]) else {
            return refuse(stream, limits, 400, "Bad Request").await;
        };
        buf.drain(..end);
        let keep_alive = head.keep_alive;
        let written = match (head.path.as_str(), head.method.as_str()) {
            ("/metrics", "GET") => {
                let body = metrics.render();
                let headers = [("Content-Type", CONTENT_TYPE)];
                let response = Response::new(200, "OK", &headers, body.as_bytes(), keep_alive);
                response.write(&mut stream, limits.io_timeout, true).await
            }
            ("/metrics", "HEAD") => {
                let body = metrics.render();
                let headers = [("Content-Type", CONTENT_TYPE)];
                let response = Response::new(200, "OK", &headers, body.as_bytes(), keep_alive);
                response.write(&mut stream, limits.io_timeout, false).await
            }
            ("/metrics", _) => {
                let headers = [("Allow", "GET, HEAD")];
                let body = b"method not allowed\n";
                let response = Response::new(405, "Method Not Allowed", &headers, body, keep_alive);
                response.write(&mut stream, limits.io_timeout, true).await
            }
            _ => {
                let body = b"not found; metrics are at /metrics\n";
                let response = Response::new(404, "Not Found", &[], body, keep_alive);
                response.write(&mut stream, limits.io_timeout, true).await
            }
        };
        if written.is_err() || !keep_alive {
            return;
        }
    }
}

/// Answers `status` and closes: sends the response, shuts down the write side, then reads
/// and drops what the client still sends (at most [`HTTP_LINGER_BYTES_MAX`] bytes, for at
/// most [`HTTP_LINGER_TIMEOUT`]) so that the close does not reset the connection before the
/// client has read the response.
async fn refuse(mut stream: TcpStream, limits: HttpLimits, status: u16, reason: &str) {
    let body = format!("{status} {reason}\n");
    let response = Response::new(status, reason, &[], body.as_bytes(), false);
    if response
        .write(&mut stream, limits.io_timeout, true)
        .await
        .is_err()
    {
        return;
    }
    let linger = async {
        let _ = stream.shutdown().await;
        let mut chunk = [0u8; 2048];
        let mut dropped = 0usize;
        while dropped < HTTP_LINGER_BYTES_MAX {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => dropped += n,
            }
        }
    };
    let _ = tokio::time::timeout(HTTP_LINGER_TIMEOUT.min(limits.io_timeout), linger).await;
}

/// An HTTP/1.1 response about to be written.
struct Response<'a> {
    status: u16,
    reason: &'a str,
    headers: &'a [(&'a str, &'a str)],
    body: &'a [u8],
    keep_alive: bool,
}

impl<'a> Response<'a> {
    fn new(
        status: u16,
        reason: &'a str,
        headers: &'a [(&'a str, &'a str)],
        body: &'a [u8],
        keep_alive: bool,
    ) -> Self {
        Response {
            status,
            reason,
            headers,
            body,
            keep_alive,
        }
    }

    /// Writes the head (with `Content-Length` of the body) and, if `with_body` (not for HEAD),
    /// the body, then flushes (madsim's TCP sends only on flush), all within `io_timeout`.
    async fn write(
        &self,
        stream: &mut TcpStream,
        io_timeout: Duration,
        with_body: bool,
    ) -> std::io::Result<()> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Length: {}\r\n",
            self.status,
            self.reason,
            self.body.len()
        );
        if !self.headers.iter().any(|(name, _)| *name == "Content-Type") {
            head.push_str("Content-Type: text/plain; charset=utf-8\r\n");
        }
        for (name, value) in self.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        if !self.keep_alive {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        let body = if with_body { self.body } else { b"" };
        let write = async {
            stream.write_all(head.as_bytes()).await?;
            stream.write_all(body).await?;
            stream.flush().await
        };
        match tokio::time::timeout(io_timeout, write).await {
            Ok(result) => result,
            Err(_elapsed) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_api_key_has_a_slot() {
        for api in ApiKey::iter() {
            assert!(((api as i16) as usize) < API_KEY_SLOTS, "{api:?}");
        }
    }

    #[test]
    fn help_text_escapes_backslash_and_newline() {
        assert_eq!(escape_help("a\\b\nc\"d"), "a\\\\b\\nc\"d");
    }

    #[test]
    fn head_end_finds_crlf_and_bare_lf() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nrest"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
    }

    #[test]
    fn parse_head_reads_method_path_and_keep_alive() {
        let head = parse_head(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(
            (head.method.as_str(), head.path.as_str()),
            ("GET", "/metrics")
        );
        assert!(head.keep_alive);
        let head = parse_head(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        assert!(!head.keep_alive);
        let head = parse_head(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
        assert!(!head.keep_alive);
        let head = parse_head(b"GET /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\n").unwrap();
        assert!(!head.keep_alive);
    }

    #[test]
    fn parse_head_refuses_what_is_not_http_1() {
        for bad in [
            &b"\r\n\r\n"[..],
            b"GET /metrics\r\n\r\n",
            b"GET /metrics HTTP/2.0\r\n\r\n",
            b"get /metrics HTTP/1.1\r\n\r\n",
            b"GET metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics HTTP/1.1 extra\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nno colon\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nContent-Length: x\r\n\r\n",
            b"GET /\xff HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(parse_head(bad).err(), Some(HeadError::Malformed), "{bad:?}");
        }
    }
}
