//! The replication throttle (docs/operations.md, "Partition reassignment"): the rates are
//! dynamic broker configs (IncrementalAlterConfigs and AlterConfigs on a BROKER resource,
//! stored in the metadata log, described by DescribeConfigs, bad values refused with
//! INVALID_CONFIG naming the setting), and `keel partitions reassign --throttle` holds a
//! partition's move to its rate: a lower bound on the move's time, never an upper one.

#[allow(dead_code)] // shared with the other suites, which use the rest
mod common;

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use keel_core::controller::broker_config::{
    FOLLOWER_REPLICATION_THROTTLED_RATE, LEADER_REPLICATION_THROTTLED_RATE,
};
use keel_core::error_code as code;
use keel_node::broker::{Broker, Settings};
use keel_node::metrics::Metrics;
use keel_node::wire::{Handler, RequestContext};

use common::dev::{dev_args, free_port_range, spawn_dev};

fn s(x: &str) -> StrBytes {
    StrBytes::from_string(x.into())
}

async fn call(broker: &Arc<Broker>, key: ApiKey, v: i16, r: RequestKind) -> ResponseKind {
    match broker
        .clone()
        .handle(RequestContext::local(key, v), r)
        .await
    {
        Ok(Some(response)) => response,
        other => panic!("{key:?}: no response: {:?}", other.err()),
    }
}

/// IncrementalAlterConfigs of one BROKER resource: (error code, message).
async fn alter(
    broker: &Arc<Broker>,
    resource: &str,
    configs: &[(&str, i8, Option<&str>)],
    validate_only: bool,
) -> (i16, String) {
    use incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig};
    let request = IncrementalAlterConfigsRequest::default()
        .with_validate_only(validate_only)
        .with_resources(vec![AlterConfigsResource::default()
            .with_resource_type(4)
            .with_resource_name(s(resource))
            .with_configs(
                configs
                    .iter()
                    .map(|(k, op, v)| {
                        AlterableConfig::default()
                            .with_name(s(k))
                            .with_config_operation(*op)
                            .with_value(v.map(s))
                    })
                    .collect(),
            )]);
    let ResponseKind::IncrementalAlterConfigs(r) = call(
        broker,
        ApiKey::IncrementalAlterConfigs,
        1,
        RequestKind::IncrementalAlterConfigs(request),
    )
    .await
    else {
        panic!("not an IncrementalAlterConfigs response")
    };
    let r = &r.responses[0];
    (
        r.error_code,
        r.error_message
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_default(),
    )
}

/// DescribeConfigs of BROKER `resource`: the throttle keys' (value, source).
async fn described(broker: &Arc<Broker>, resource: &str) -> Vec<(String, String, i8)> {
    let request = DescribeConfigsRequest::default().with_resources(vec![
        describe_configs_request::DescribeConfigsResource::default()
            .with_resource_type(4)
            .with_resource_name(s(resource))
            .with_configuration_keys(None),
    ]);
    let ResponseKind::DescribeConfigs(r) = call(
        broker,
        ApiKey::DescribeConfigs,
        4,
        RequestKind::DescribeConfigs(request),
    )
    .await
    else {
        panic!("not a DescribeConfigs response")
    };
    assert_eq!(r.results[0].error_code, code::NONE);
    r.results[0]
        .configs
        .iter()
        .filter(|c| c.name.contains("replication.throttled"))
        .map(|c| {
            (
                c.name.to_string(),
                c.value.as_ref().map(|v| v.to_string()).unwrap_or_default(),
                c.config_source,
            )
        })
        .collect()
}

/// Reference: KIP-73 (replication quotas), Kafka's DynamicConfig.Broker validators (LONG,
/// at least 0; keel: at least 1), ConfigurationControlManager for BROKER resources.
#[tokio::test]
async fn throttle_rates_are_dynamic_broker_configs_and_bad_ones_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::open(
        Settings::single(1, dir.path().to_path_buf()),
        Arc::new(Metrics::new()),
    )
    .await
    .unwrap();
    let (leader, follower) = (
        LEADER_REPLICATION_THROTTLED_RATE,
        FOLLOWER_REPLICATION_THROTTLED_RATE,
    );
    // Bad input: INVALID_CONFIG naming the setting, nothing stored.
    for (key, value) in [
        (leader, "-5"),
        (follower, "fast"),
        (leader, "0"),
        (leader, ""),
    ] {
        let (error, message) = alter(&broker, "", &[(key, 0, Some(value))], false).await;
        assert_eq!(error, code::INVALID_CONFIG, "{key}={value}: {message}");
        assert!(message.contains(key), "{message}");
    }
    let (error, message) = alter(&broker, "", &[("num.io.threads", 0, Some("8"))], false).await;
    assert_eq!(error, code::INVALID_CONFIG);
    assert!(message.contains("num.io.threads"), "{message}");
    let (error, _) = alter(&broker, "one", &[(leader, 0, Some("1000"))], false).await;
    assert_eq!(error, code::INVALID_REQUEST);
    // validate_only stores nothing.
    assert_eq!(
        alter(&broker, "", &[(leader, 0, Some("1000"))], true)
            .await
            .0,
        code::NONE
    );
    assert!(described(&broker, "1").await.is_empty());
    // The cluster default, then broker 1's own, which overrides it.
    assert_eq!(
        alter(
            &broker,
            "",
            &[(leader, 0, Some("1000")), (follower, 0, Some("2000"))],
            false
        )
        .await
        .0,
        code::NONE
    );
    assert_eq!(
        alter(&broker, "1", &[(follower, 0, Some("500"))], false)
            .await
            .0,
        code::NONE
    );
    assert_eq!(
        described(&broker, "1").await,
        [
            (leader.to_string(), "1000".to_string(), 5), // DYNAMIC_DEFAULT_BROKER_CONFIG
            (follower.to_string(), "500".to_string(), 1), // DYNAMIC_BROKER_CONFIG
        ]
    );
    // The legacy AlterConfigs replaces broker 1's set: its follower rate goes, the default
    // shows through again.
    let request = AlterConfigsRequest::default().with_resources(vec![
        alter_configs_request::AlterConfigsResource::default()
            .with_resource_type(4)
            .with_resource_name(s("1"))
            .with_configs(vec![alter_configs_request::AlterableConfig::default()
                .with_name(s(leader))
                .with_value(Some(s("3000")))]),
    ]);
    let ResponseKind::AlterConfigs(r) = call(
        &broker,
        ApiKey::AlterConfigs,
        2,
        RequestKind::AlterConfigs(request),
    )
    .await
    else {
        panic!("not an AlterConfigs response")
    };
    assert_eq!(r.responses[0].error_code, code::NONE);
    assert_eq!(
        described(&broker, "1").await,
        [
            (leader.to_string(), "3000".to_string(), 1),
            (follower.to_string(), "2000".to_string(), 5),
        ]
    );
    // Deleting the default's rates: only broker 1's own is left.
    assert_eq!(
        alter(
            &broker,
            "",
            &[(leader, 1, None), (follower, 1, None)],
            false
        )
        .await
        .0,
        code::NONE
    );
    assert_eq!(
        described(&broker, "1").await,
        [(leader.to_string(), "3000".to_string(), 1)]
    );
}

/// `keel topic describe TOPIC -o json`'s first partition's (replicas, isr).
fn replicas(bootstrap: &str, topic: &str) -> (Vec<i64>, Vec<i64>) {
    let d = common::dev::keel(bootstrap, &["topic", "describe", topic, "-o", "json"], "")
        .json("describe");
    let ids = |v: &serde_json::Value| -> Vec<i64> {
        v.as_array()
            .expect("an array of ids")
            .iter()
            .map(|x| x.as_i64().expect("an id"))
            .collect()
    };
    let p = &d["partitions"][0];
    (ids(&p["replicas"]), ids(&p["isr"]))
}

/// Moves the topic's one partition to `to` with `keel partitions reassign --wait`, plus
/// `extra` arguments: the time the command took, and its stderr.
fn move_to(bootstrap: &str, dir: &std::path::Path, to: i64, extra: &[&str]) -> (Duration, String) {
    let plan = dir.join(format!("to-{to}.json"));
    std::fs::write(
        &plan,
        format!(
            r#"{{"version":1,"partitions":[{{"topic":"big","partition":0,"replicas":[{to}]}}]}}"#
        ),
    )
    .unwrap();
    let mut args = vec![
        "partitions",
        "reassign",
        "--plan",
        plan.to_str().unwrap(),
        "--wait",
        "110",
    ];
    args.extend_from_slice(extra);
    let start = Instant::now();
    let run = common::dev::keel(bootstrap, &args, "");
    let took = start.elapsed();
    run.ok("keel partitions reassign");
    assert_eq!(replicas(bootstrap, "big").0, [to], "moved to {to}");
    (took, run.stderr)
}

/// A 3 MiB partition moved between brokers of a `keel dev` cluster without a throttle, then
/// with `--throttle 500000`: the throttled move takes at least (size - one fetch answer) /
/// rate, the bound the leader's budget guarantees (core's `throttle` module), and the
/// throttle is removed once the move is done.
#[test]
fn a_throttled_move_takes_at_least_its_size_over_the_rate() {
    const RATE: u64 = 500_000;
    const VALUE_BYTES: usize = 1024;
    const RECORDS: usize = 3 * 1024;
    // The most one answer to a follower's fetch of one partition carries (Kafka's
    // replica.fetch.max.bytes default), which the budget lets through whole.
    const ANSWER_BYTES_MAX: u64 = 1 << 20;
    let port = free_port_range(3);
    let data_dir =
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("replication-throttle");
    let _ = std::fs::remove_dir_all(&data_dir);
    let bootstrap = spawn_dev(
        dev_args(3, port, &data_dir),
        Stdio::null(),
        "keel dev: 3 brokers ready",
        String::new,
    );
    let b = bootstrap.as_str();
    let keel = |args: &[&str], stdin: &str| common::dev::keel(b, args, stdin);
    keel(&["topic", "create", "big", "-p", "1", "-r", "1"], "").ok("topic create");
    let line = "x".repeat(VALUE_BYTES);
    let mut input = String::with_capacity(RECORDS * (VALUE_BYTES + 1));
    for _ in 0..RECORDS {
        input.push_str(&line);
        input.push('\n');
    }
    keel(&["produce", "big"], &input).ok("produce 3 MiB");
    let size = (RECORDS * VALUE_BYTES) as u64;
    let (first, _) = replicas(b, "big");
    let others: Vec<i64> = (1..=3).filter(|x| !first.contains(x)).collect();
    let dir = tempfile::tempdir().unwrap();

    let (free, _) = move_to(b, dir.path(), others[0], &[]);
    let rate = RATE.to_string();
    let (throttled, stderr) = move_to(b, dir.path(), others[1], &["--throttle", &rate]);
    common::say(&format!(
        "moving {size} bytes: {:.2} s unthrottled, {:.2} s at {RATE} bytes/s",
        free.as_secs_f64(),
        throttled.as_secs_f64()
    ));
    let bound = Duration::from_secs_f64((size - ANSWER_BYTES_MAX) as f64 / RATE as f64);
    assert!(
        throttled >= bound,
        "the throttled move took {throttled:?}, less than (size - one answer) / rate = {bound:?}"
    );
    assert!(
        stderr.contains("replication throttle set to 500000")
            && stderr.contains("replication throttle removed"),
        "{stderr}"
    );
    // Not throttled: a replica in the ISR. The partition's one replica took every record.
    let (replicas_now, isr) = replicas(b, "big");
    assert_eq!(isr, replicas_now);
    let consumed = keel(&["consume", "big"], "");
    assert_eq!(consumed.ok("consume").lines().count(), RECORDS);
    // --clear-throttle alone is accepted with nothing set; a bad rate is refused before
    // anything is sent.
    keel(&["partitions", "reassign", "--clear-throttle"], "").ok("clear-throttle");
    for bad in ["--throttle=-5", "--throttle=fast", "--throttle=0"] {
        keel(&["partitions", "reassign", "--clear-throttle", bad], "").fails_naming(
            2,
            "--throttle",
            "a bad throttle",
        );
    }
    let _ = std::fs::remove_dir_all(&data_dir);
}
