//! node::metrics: the registry and its rendering in the Prometheus text exposition format
//! 0.0.4 (Reference: Prometheus "Exposition formats", text-based format: HELP/TYPE lines, label
//! value escaping, histogram `_bucket` cumulative with `le="+Inf"`, `_sum`, `_count`).

use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::ApiKey;
use keel_core::acl::{Operation, ResourceType};
use keel_node::metrics::{
    escape_label_value, ClusterStats, GroupOffsetStats, LatencyHistogram, Metrics, Outcome,
    PartitionStats, REQUEST_LATENCY_BUCKETS,
};

fn stats(topic: &str, partition: i32, start: i64, end: i64, hw: i64) -> PartitionStats {
    PartitionStats {
        topic: topic.to_string(),
        partition,
        log_start_offset: start,
        log_end_offset: end,
        high_watermark: hw,
    }
}

#[test]
fn renders_a_small_registry_exactly() {
    let metrics = Arc::new(Metrics::new());
    metrics.record_request(ApiKey::Produce, Duration::from_millis(1), Outcome::Ok);
    metrics.record_request(ApiKey::Produce, Duration::from_millis(20), Outcome::Error);
    metrics.record_request(ApiKey::Fetch, Duration::from_secs(12), Outcome::Ok);
    metrics.add_bytes_in(100);
    metrics.add_bytes_out(250);
    let open = metrics.connection_opened();
    drop(metrics.connection_opened());
    metrics.record_denial(ResourceType::Topic, Operation::Write);
    metrics.record_denial(ResourceType::Topic, Operation::Write);
    metrics.record_denial(ResourceType::Group, Operation::Read);
    metrics.set_partition_source(Box::new(|| {
        vec![
            stats("b", 0, 0, 7, 7),
            stats("a", 1, 3, 10, 9),
            stats("a", 0, 0, 5, 4),
        ]
    }));
    metrics.record_authentication("SCRAM-SHA-256", true);
    metrics.record_authentication("SCRAM-SHA-256", true);
    metrics.record_authentication("SCRAM-SHA-512", false);
    metrics.record_authentication("GSSAPI", false); // not a mechanism keel serves: not counted
    metrics.record_isr_change(&[1, 2, 3], &[1, 2]); // a shrink
    metrics.record_isr_change(&[1, 2], &[1, 2, 3]); // an expansion
    metrics.record_isr_change(&[1, 2], &[1, 3]); // both
    metrics.record_isr_change(&[1, 2], &[2, 1]); // neither
    metrics.set_cluster_source(Box::new(|| {
        let offset =
            |group: &str, topic: &str, partition, committed_offset, lag| GroupOffsetStats {
                group: group.into(),
                topic: topic.into(),
                partition,
                committed_offset,
                lag,
            };
        ClusterStats {
            leader_partitions: 3,
            under_replicated_partitions: 1,
            offline_partitions: 2,
            group_offsets: vec![
                offset("g2", "a", 0, 4, Some(0)),
                offset("g1", "b", 0, 2, None),
                offset("g1", "a", 1, 6, Some(3)),
            ],
        }
    }));

    let expected = format!(
        r#"# HELP keel_build_info Always 1; the version label names the keel build.
# TYPE keel_build_info gauge
keel_build_info{{version="{version}"}} 1
# HELP keel_requests_total Kafka requests answered, by API.
# TYPE keel_requests_total counter
keel_requests_total{{api="Produce"}} 2
keel_requests_total{{api="Fetch"}} 1
# HELP keel_request_errors_total Kafka requests answered with an error code, by API.
# TYPE keel_request_errors_total counter
keel_request_errors_total{{api="Produce"}} 1
keel_request_errors_total{{api="Fetch"}} 0
# HELP keel_request_duration_seconds Time from a Kafka request's arrival to its response, by API.
# TYPE keel_request_duration_seconds histogram
keel_request_duration_seconds_bucket{{api="Produce",le="0.0005"}} 0
keel_request_duration_seconds_bucket{{api="Produce",le="0.001"}} 1
keel_request_duration_seconds_bucket{{api="Produce",le="0.0025"}} 1
keel_request_duration_seconds_bucket{{api="Produce",le="0.005"}} 1
keel_request_duration_seconds_bucket{{api="Produce",le="0.01"}} 1
keel_request_duration_seconds_bucket{{api="Produce",le="0.025"}} 2
keel_request_duration_seconds_bucket{{api="Produce",le="0.05"}} 2
keel_request_duration_seconds_bucket{{api="Produce",le="0.1"}} 2
keel_request_duration_seconds_bucket{{api="Produce",le="0.25"}} 2
keel_request_duration_seconds_bucket{{api="Produce",le="0.5"}} 2
keel_request_duration_seconds_bucket{{api="Produce",le="1"}} 2
keel_request_duration_seconds_bucket{{api="Produce",le="2.5"}} 2
keel_request_duration_seconds_bucket{{api="Produce",le="5"}} 2
keel_request_duration_seconds_bucket{{api="Produce",le="10"}} 2
keel_request_duration_seconds_bucket{{api="Produce",le="+Inf"}} 2
keel_request_duration_seconds_sum{{api="Produce"}} 0.021
keel_request_duration_seconds_count{{api="Produce"}} 2
keel_request_duration_seconds_bucket{{api="Fetch",le="0.0005"}} 0
keel_request_duration_seconds_bucket{{api="Fetch",le="0.001"}} 0
keel_request_duration_seconds_bucket{{api="Fetch",le="0.0025"}} 0
keel_request_duration_seconds_bucket{{api="Fetch",le="0.005"}} 0
keel_request_duration_seconds_bucket{{api="Fetch",le="0.01"}} 0
keel_request_duration_seconds_bucket{{api="Fetch",le="0.025"}} 0
keel_request_duration_seconds_bucket{{api="Fetch",le="0.05"}} 0
keel_request_duration_seconds_bucket{{api="Fetch",le="0.1"}} 0
keel_request_duration_seconds_bucket{{api="Fetch",le="0.25"}} 0
keel_request_duration_seconds_bucket{{api="Fetch",le="0.5"}} 0
keel_request_duration_seconds_bucket{{api="Fetch",le="1"}} 0
keel_request_duration_seconds_bucket{{api="Fetch",le="2.5"}} 0
keel_request_duration_seconds_bucket{{api="Fetch",le="5"}} 0
keel_request_duration_seconds_bucket{{api="Fetch",le="10"}} 0
keel_request_duration_seconds_bucket{{api="Fetch",le="+Inf"}} 1
keel_request_duration_seconds_sum{{api="Fetch"}} 12
keel_request_duration_seconds_count{{api="Fetch"}} 1
# HELP keel_bytes_in_total Bytes of Kafka requests read.
# TYPE keel_bytes_in_total counter
keel_bytes_in_total 100
# HELP keel_bytes_out_total Bytes of Kafka responses written.
# TYPE keel_bytes_out_total counter
keel_bytes_out_total 250
# HELP keel_connections_accepted_total Kafka client connections accepted.
# TYPE keel_connections_accepted_total counter
keel_connections_accepted_total 2
# HELP keel_log_cleaner_bytes_total Bytes the log cleaner read and wrote.
# TYPE keel_log_cleaner_bytes_total counter
keel_log_cleaner_bytes_total 0
# HELP keel_log_cleaner_segments_total Segments the log cleaner replaced with cleaned ones.
# TYPE keel_log_cleaner_segments_total counter
keel_log_cleaner_segments_total 0
# HELP keel_log_cleaner_errors_total Log cleanings that failed (the segments were left in place).
# TYPE keel_log_cleaner_errors_total counter
keel_log_cleaner_errors_total 0
# HELP keel_isr_shrinks_total ISR changes committed for this broker's leaders that removed a member.
# TYPE keel_isr_shrinks_total counter
keel_isr_shrinks_total 2
# HELP keel_isr_expands_total ISR changes committed for this broker's leaders that added a member.
# TYPE keel_isr_expands_total counter
keel_isr_expands_total 2
# HELP keel_connections Kafka client connections open.
# TYPE keel_connections gauge
keel_connections 1
# HELP keel_request_queue_bytes Bytes of requests read and not yet answered (bounded by queued.max.request.bytes).
# TYPE keel_request_queue_bytes gauge
keel_request_queue_bytes 0
# HELP keel_authorization_denials_total Operations the authoriser denied, by resource type and operation.
# TYPE keel_authorization_denials_total counter
keel_authorization_denials_total{{resource_type="TOPIC",operation="WRITE"}} 2
keel_authorization_denials_total{{resource_type="GROUP",operation="READ"}} 1
# HELP keel_authentications_total SASL authentications, by mechanism and result (failures are logged too).
# TYPE keel_authentications_total counter
keel_authentications_total{{mechanism="PLAIN",result="success"}} 0
keel_authentications_total{{mechanism="PLAIN",result="failure"}} 0
keel_authentications_total{{mechanism="SCRAM-SHA-256",result="success"}} 2
keel_authentications_total{{mechanism="SCRAM-SHA-256",result="failure"}} 0
keel_authentications_total{{mechanism="SCRAM-SHA-512",result="success"}} 0
keel_authentications_total{{mechanism="SCRAM-SHA-512",result="failure"}} 1
# HELP keel_partition_log_start_offset The partition's log start offset.
# TYPE keel_partition_log_start_offset gauge
keel_partition_log_start_offset{{topic="a",partition="0"}} 0
keel_partition_log_start_offset{{topic="a",partition="1"}} 3
keel_partition_log_start_offset{{topic="b",partition="0"}} 0
# HELP keel_partition_log_end_offset The partition's log end offset.
# TYPE keel_partition_log_end_offset gauge
keel_partition_log_end_offset{{topic="a",partition="0"}} 5
keel_partition_log_end_offset{{topic="a",partition="1"}} 10
keel_partition_log_end_offset{{topic="b",partition="0"}} 7
# HELP keel_partition_high_watermark The partition's high watermark.
# TYPE keel_partition_high_watermark gauge
keel_partition_high_watermark{{topic="a",partition="0"}} 4
keel_partition_high_watermark{{topic="a",partition="1"}} 9
keel_partition_high_watermark{{topic="b",partition="0"}} 7
# HELP keel_leader_partitions Partitions this broker leads.
# TYPE keel_leader_partitions gauge
keel_leader_partitions 3
# HELP keel_under_replicated_partitions Partitions this broker leads whose ISR is smaller than their replica set.
# TYPE keel_under_replicated_partitions gauge
keel_under_replicated_partitions 1
# HELP keel_offline_partitions Partitions of the cluster without a live leader, as this broker's metadata has it.
# TYPE keel_offline_partitions gauge
keel_offline_partitions 2
# HELP keel_consumer_group_committed_offset A group's committed offset on a partition, from the group's coordinator.
# TYPE keel_consumer_group_committed_offset gauge
keel_consumer_group_committed_offset{{group="g1",topic="a",partition="1"}} 6
keel_consumer_group_committed_offset{{group="g1",topic="b",partition="0"}} 2
keel_consumer_group_committed_offset{{group="g2",topic="a",partition="0"}} 4
# HELP keel_consumer_group_lag A partition's high watermark minus a group's committed offset, from the group's coordinator when it holds a replica of the partition.
# TYPE keel_consumer_group_lag gauge
keel_consumer_group_lag{{group="g1",topic="a",partition="1"}} 3
keel_consumer_group_lag{{group="g2",topic="a",partition="0"}} 0
"#,
        version = env!("CARGO_PKG_VERSION")
    );
    let rendered = metrics.render();
    if rendered != expected {
        for (i, (got, want)) in rendered.lines().zip(expected.lines()).enumerate() {
            assert_eq!(got, want, "first difference at line {}", i + 1);
        }
        assert_eq!(rendered, expected);
    }
    drop(open);
}

#[test]
fn an_empty_registry_renders_every_family_without_samples() {
    let rendered = Metrics::new().render();
    for family in [
        "keel_requests_total",
        "keel_request_errors_total",
        "keel_request_duration_seconds",
        "keel_authorization_denials_total",
        "keel_partition_high_watermark",
        "keel_consumer_group_committed_offset",
        "keel_consumer_group_lag",
    ] {
        assert!(rendered.contains(&format!("# TYPE {family} ")), "{family}");
        assert!(
            !rendered.contains(&format!("\n{family}{{")),
            "{family} has no samples"
        );
    }
    assert!(rendered.contains("\nkeel_connections 0\n"));
}

#[test]
fn label_values_escape_backslash_quote_and_newline() {
    assert_eq!(escape_label_value("plain.topic-1_x"), "plain.topic-1_x");
    assert_eq!(escape_label_value(r"a\b"), r"a\\b");
    assert_eq!(escape_label_value("a\"b"), "a\\\"b");
    assert_eq!(escape_label_value("a\nb"), "a\\nb");
    assert_eq!(escape_label_value("\\\"\n"), "\\\\\\\"\\n");

    let metrics = Metrics::new();
    metrics.set_partition_source(Box::new(|| vec![stats("we\"ird\\to\npic", 2, 0, 1, 1)]));
    let rendered = metrics.render();
    assert!(
        rendered.contains(
            "keel_partition_log_end_offset{topic=\"we\\\"ird\\\\to\\npic\",partition=\"2\"} 1\n"
        ),
        "{rendered}"
    );
    assert_eq!(
        rendered
            .lines()
            .filter(|l| l.contains("topic=\"we\\\"ird"))
            .count(),
        3
    );
}

/// Prometheus `le` is inclusive: an observation equal to a bound counts in that bucket.
#[test]
fn histogram_buckets_are_inclusive_cumulative_and_end_at_count() {
    let histogram = LatencyHistogram::default();
    let observations = [
        Duration::ZERO,
        Duration::from_micros(500),
        Duration::from_nanos(500_001),
        Duration::from_millis(1),
        Duration::from_millis(3),
        Duration::from_secs(10),
        Duration::from_nanos(10_000_000_001),
        Duration::from_secs(3600),
    ];
    for d in observations {
        histogram.observe(d);
    }
    let snapshot = histogram.snapshot();
    assert_eq!(snapshot.count, observations.len() as u64);
    assert_eq!(*snapshot.cumulative.last().expect("+Inf"), snapshot.count);
    // Bounds: 0.0005 0.001 0.0025 0.005 0.01 ... 10, +Inf.
    assert_eq!(
        snapshot.cumulative,
        [2, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5, 6, 8]
    );
    for pair in snapshot.cumulative.windows(2) {
        assert!(pair[0] <= pair[1], "cumulative counts never decrease");
    }
    let sum: u128 = observations.iter().map(Duration::as_nanos).sum();
    assert_eq!(u128::from(snapshot.sum_nanos), sum);
    assert!((snapshot.sum_seconds() - sum as f64 / 1e9).abs() < 1e-9);

    // Each bound against the buckets' own table.
    for (i, (bound, _)) in REQUEST_LATENCY_BUCKETS.iter().enumerate() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_nanos(*bound));
        let s = h.snapshot();
        assert_eq!(
            s.cumulative[i], 1,
            "a value at bound {i} counts in bucket {i}"
        );
        if i > 0 {
            assert_eq!(s.cumulative[i - 1], 0);
        }
    }
    // A duration past u64 nanoseconds lands in +Inf rather than wrapping.
    let h = LatencyHistogram::default();
    h.observe(Duration::MAX);
    assert_eq!(
        h.snapshot().cumulative[REQUEST_LATENCY_BUCKETS.len() - 1],
        0
    );
    assert_eq!(h.snapshot().count, 1);
}

#[test]
fn concurrent_updates_are_all_counted() {
    let metrics = Arc::new(Metrics::new());
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let metrics = Arc::clone(&metrics);
            std::thread::spawn(move || {
                for i in 0..5_000u64 {
                    let outcome = if i % 5 == 0 {
                        Outcome::Error
                    } else {
                        Outcome::Ok
                    };
                    metrics.record_request(
                        ApiKey::Metadata,
                        Duration::from_micros(i % 3000 + t),
                        outcome,
                    );
                    metrics.add_bytes_in(2);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    let snapshot = metrics.request_latency(ApiKey::Metadata);
    assert_eq!(snapshot.count, 20_000);
    let rendered = metrics.render();
    assert!(rendered.contains("keel_requests_total{api=\"Metadata\"} 20000\n"));
    assert!(rendered.contains("keel_request_errors_total{api=\"Metadata\"} 4000\n"));
    assert!(rendered.contains("keel_bytes_in_total 40000\n"));
}

#[test]
fn connection_guard_counts_open_connections() {
    let metrics = Arc::new(Metrics::new());
    let a = metrics.connection_opened();
    let b = metrics.connection_opened();
    assert!(metrics.render().contains("\nkeel_connections 2\n"));
    drop(a);
    drop(b);
    let rendered = metrics.render();
    assert!(rendered.contains("\nkeel_connections 0\n"));
    assert!(rendered.contains("\nkeel_connections_accepted_total 2\n"));
}

#[test]
fn a_later_partition_source_replaces_the_earlier() {
    let metrics = Metrics::new();
    metrics.set_partition_source(Box::new(|| vec![stats("old", 0, 0, 1, 1)]));
    metrics.set_partition_source(Box::new(|| vec![stats("new", 0, 0, 1, 1)]));
    let rendered = metrics.render();
    assert!(rendered.contains("topic=\"new\""));
    assert!(!rendered.contains("topic=\"old\""));
}
