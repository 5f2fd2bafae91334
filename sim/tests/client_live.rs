//! The workload's client against a real keel broker in-process (not under the simulator):
//! Jepsen's Kafka workload in miniature (idempotent acks=all sends of unique values across two
//! partitions, consumers by assign, a final read to the end), checked clean; and the same
//! history with one acknowledged value removed from the reads, which the checker must report
//! as a lost write.
#![cfg(not(madsim))]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use keel_node::broker::{served_apis, Broker, Settings};
use keel_node::metrics::Metrics;
use keel_node::wire::{WireConfig, WireServer};
use keel_sim::checker::{
    check, AnomalyKind, History, Key, LostEvidence, OpKind, ProcessId, SendOutcome, Value,
};
use keel_sim::client::{Client, ClientConfig, Consumer, TopicCreated, TopicSpec};
use tokio::net::TcpListener;

/// Upper bound on a whole test, so that a bug shows as a failure, not a hang.
const TEST_WAIT: Duration = Duration::from_secs(60);

const TOPIC: &str = "jepsen";
const PARTITIONS: i32 = 2;

/// A single broker serving on 127.0.0.1:0 (what `keel start` does, minus the timers).
async fn start_broker(dir: &std::path::Path) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let settings = Settings {
        advertised_host: "127.0.0.1".into(),
        advertised_port: addr.port(),
        auto_create_topics: false,
        ..Settings::single(1, dir.to_path_buf())
    };
    let broker = Broker::open(settings, Arc::new(Metrics::new()))
        .await
        .expect("open the broker");
    let server = WireServer::with_metrics(
        broker.clone(),
        served_apis(),
        WireConfig::default(),
        broker.metrics().clone(),
    );
    tokio::spawn(server.serve(listener));
    addr
}

fn keys() -> Vec<Key> {
    (0..PARTITIONS).map(|p| Key::new(TOPIC, p)).collect()
}

/// Polls `key` once with `consumer` and records the poll (as `process`).
async fn poll(
    history: &mut History,
    process: ProcessId,
    client: &mut Client,
    consumer: &mut Consumer,
    key: &Key,
) -> usize {
    let fetched = consumer.poll(client, key).await.expect("poll");
    let n = fetched.records.len();
    history.poll(process, key, fetched.records);
    n
}

/// Runs the workload: `values` sends from two producers, a consumer polling along, then the
/// final read of every key to its end offset by a fresh process.
async fn run_workload(addr: SocketAddr, values: u64) -> History {
    let config = ClientConfig::new(vec![addr]);
    let mut admin = Client::new(config.clone());
    let created = admin
        .create_topic(&TopicSpec {
            name: TOPIC.into(),
            partitions: PARTITIONS,
            replication_factor: 1,
            configs: vec![("min.insync.replicas".into(), "1".into())],
        })
        .await
        .expect("create the topic");
    assert_eq!(created, TopicCreated::Created);
    admin
        .await_leaders(TOPIC, PARTITIONS)
        .await
        .expect("partitions have leaders");

    let keys = keys();
    let mut history = History::new();
    let mut producers = [Client::new(config.clone()), Client::new(config.clone())];
    let (reader, mut reader_client, mut consumer) =
        (ProcessId(2), Client::new(config.clone()), Consumer::new());
    consumer.assign(&keys);
    history.assign(reader, keys.clone());
    for v in 1..=values {
        let process = (v % 2) as usize;
        let key = &keys[((v * 7 / 3) % PARTITIONS as u64) as usize];
        let outcome = producers[process].produce(key, Value(v)).await;
        assert!(
            matches!(outcome, SendOutcome::Ok { .. }),
            "value {v}: {outcome:?}"
        );
        history.send(ProcessId(process as u32), key, Value(v), outcome);
        if v % 25 == 0 {
            for key in &keys {
                poll(&mut history, reader, &mut reader_client, &mut consumer, key).await;
            }
        }
    }

    // After "healing": a fresh process reads every key from 0 to its end offset.
    let (last, mut client, mut consumer) = (ProcessId(3), Client::new(config), Consumer::new());
    consumer.assign(&keys);
    history.assign(last, keys.clone());
    for key in &keys {
        let end = client.end_offset(key).await.expect("end offset");
        while consumer.position(key).expect("assigned") < end {
            poll(&mut history, last, &mut client, &mut consumer, key).await;
        }
        history.final_read(last, key, end);
    }
    history
}

/// Reference: jepsen/src/jepsen/tests/kafka.clj (the workload and its checker).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_acks_all_sends_read_back_check_clean() {
    tokio::time::timeout(TEST_WAIT, async {
        let dir = tempfile::tempdir().unwrap();
        let addr = start_broker(dir.path()).await;
        let history = run_workload(addr, 200).await;
        let report = check(&history);
        assert!(report.is_clean(), "{report}");
        assert_eq!(report.stats.sends_ok, 200, "{report}");
        assert_eq!(report.stats.offsets_known, 200, "{report}");
        // Every value read back by the final read, each key's offsets dense from 0.
        let mut final_reads = 0;
        for op in &history.ops {
            if let (ProcessId(3), OpKind::Poll { records, .. }) = (op.process, &op.kind) {
                final_reads += records.len();
            }
        }
        assert_eq!(final_reads, 200);
    })
    .await
    .expect("the test finished in time");
}

/// The same kind of history, with one acknowledged value taken out of every read: the checker
/// must report it lost (so the clean result above means something).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_missing_from_the_reads_is_reported_as_a_lost_write() {
    tokio::time::timeout(TEST_WAIT, async {
        let dir = tempfile::tempdir().unwrap();
        let addr = start_broker(dir.path()).await;
        let mut history = run_workload(addr, 40).await;
        let (key, value, offset) = history
            .ops
            .iter()
            .find_map(|op| match &op.kind {
                OpKind::Send {
                    key,
                    value,
                    outcome: SendOutcome::Ok { offset },
                } if offset.0 > 0 => Some((key.clone(), *value, *offset)),
                _ => None,
            })
            .expect("an acknowledged send past offset 0");
        for op in &mut history.ops {
            if let OpKind::Poll { key: k, records } = &mut op.kind {
                if *k == key {
                    records.retain(|(_, v)| *v != value);
                }
            }
        }
        let report = check(&history);
        let lost: Vec<_> = report
            .anomalies
            .iter()
            .filter(|a| a.kind() == AnomalyKind::LostWrite)
            .collect();
        assert_eq!(lost.len(), 1, "{report}");
        assert!(
            matches!(
                lost[0],
                keel_sim::checker::Anomaly::LostWrite {
                    key: k,
                    value: v,
                    offset: o,
                    evidence: LostEvidence::ReadPast { .. },
                    ..
                } if *k == key && *v == value && *o == offset
            ),
            "{report}"
        );
        assert!(
            report.kinds().is_subset(
                &[
                    AnomalyKind::LostWrite,
                    AnomalyKind::PollSkip,
                    AnomalyKind::IntPollSkip
                ]
                .into()
            ),
            "a missing record also leaves a gap in the polls that read past it: {report}"
        );
    })
    .await
    .expect("the test finished in time");
}
