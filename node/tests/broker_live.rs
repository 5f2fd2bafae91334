//! Against a real `keel start` process on loopback: bad input never takes the broker down
//! (issue 3's garbage, truncated frame, 1 GiB size prefix and unknown API key), and an
//! acks=all write survives SIGKILL.

mod wire_support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use keel_core::batch::{Batch, BatchBuilder, Compression};
use tokio::io::AsyncWriteExt;
use wire_support::Client;

/// A broker process, killed when dropped.
struct BrokerProcess {
    child: Child,
    addr: SocketAddr,
}

impl BrokerProcess {
    fn start(data_dir: &Path, port: u16) -> BrokerProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(["start", "--node-id", "1", "--listeners"])
            .arg(format!("PLAINTEXT://127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(data_dir)
            .env("KEEL_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start keel");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("ready line");
        let addr = line
            .trim()
            .strip_prefix("keel broker 1 ready on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .expect("address");
        BrokerProcess { child, addr }
    }

    fn kill(mut self) -> u16 {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("wait");
        self.addr.port()
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

async fn produce(client: &mut Client, correlation: i32, value: &[u8]) -> i64 {
    let batch = BatchBuilder::new(Compression::Zstd)
        .record(1, Some(b"key"), Some(value))
        .build()
        .unwrap();
    let mut r = ProduceRequest::default();
    r.acks = -1;
    r.timeout_ms = 10_000;
    r.topic_data = vec![TopicProduceData::default()
        .with_name(TopicName(s("live")))
        .with_partition_data(vec![PartitionProduceData::default()
            .with_index(0)
            .with_records(Some(batch.into_bytes()))])];
    // Metadata first: auto-creates the topic.
    let mut m = MetadataRequest::default();
    m.topics = None;
    m.allow_auto_topic_creation = true;
    client
        .send(
            ApiKey::Metadata,
            9,
            correlation,
            "live",
            &RequestKind::Metadata(m),
        )
        .await;
    client.recv_response(ApiKey::Metadata, 9, correlation).await;
    let mut m = MetadataRequest::default();
    m.topics = Some(vec![
        metadata_request::MetadataRequestTopic::default().with_name(Some(TopicName(s("live"))))
    ]);
    m.allow_auto_topic_creation = true;
    client
        .send(
            ApiKey::Metadata,
            9,
            correlation + 1,
            "live",
            &RequestKind::Metadata(m),
        )
        .await;
    client
        .recv_response(ApiKey::Metadata, 9, correlation + 1)
        .await;
    client
        .send(
            ApiKey::Produce,
            9,
            correlation + 2,
            "live",
            &RequestKind::Produce(r),
        )
        .await;
    let ResponseKind::Produce(response) = client
        .recv_response(ApiKey::Produce, 9, correlation + 2)
        .await
    else {
        panic!("not a produce response")
    };
    let p = &response.responses[0].partition_responses[0];
    assert_eq!(p.error_code, 0, "produce failed: {:?}", p.error_message);
    p.base_offset
}

async fn fetch_values(client: &mut Client, correlation: i32) -> Vec<Bytes> {
    let mut r = FetchRequest::default();
    r.max_wait_ms = 100;
    r.max_bytes = 1 << 20;
    r.replica_id = BrokerId(-1);
    r.topics = vec![FetchTopic::default()
        .with_topic(TopicName(s("live")))
        .with_partitions(vec![FetchPartition::default()
            .with_partition(0)
            .with_fetch_offset(0)
            .with_partition_max_bytes(1 << 20)])];
    client
        .send(
            ApiKey::Fetch,
            11,
            correlation,
            "live",
            &RequestKind::Fetch(r),
        )
        .await;
    let ResponseKind::Fetch(response) = client.recv_response(ApiKey::Fetch, 11, correlation).await
    else {
        panic!("not a fetch response")
    };
    let p = &response.responses[0].partitions[0];
    assert_eq!(p.error_code, 0);
    let mut records = p.records.clone().expect("records are never null");
    let mut values = Vec::new();
    while let Some(batch) = Batch::parse_prefix(&records).expect("valid batches") {
        records = records.slice(batch.size()..);
        values.extend(batch.records().unwrap().into_iter().filter_map(|r| r.value));
    }
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_leaves_the_broker_serving_and_acked_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), 0);
    let addr = broker.addr;
    let mut before = Client::connect(addr).await;
    assert_eq!(produce(&mut before, 1, b"first").await, 0);

    // Garbage.
    let mut c = Client::connect(addr).await;
    c.send_raw(&[
        0x00, 0x00, 0x00, 0x10, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
    ])
    .await;
    c.expect_closed().await;
    // A truncated frame, then EOF.
    let mut c = Client::connect(addr).await;
    c.send_raw(&[0x00, 0x00, 0x01, 0x00, 0x00, 0x12, 0x00])
        .await;
    c.stream.shutdown().await.unwrap();
    drop(c);
    // A 1 GiB size prefix.
    let mut c = Client::connect(addr).await;
    c.send_raw(&(1i32 << 30).to_be_bytes()).await;
    c.expect_closed().await;
    // An unknown API key (9999).
    let mut c = Client::connect(addr).await;
    c.send_raw(&[0, 0, 0, 10, 0x27, 0x0f, 0, 0, 0, 0, 0, 1, 0xff, 0xff])
        .await;
    c.expect_closed().await;

    // The connection opened before and a new one both still work.
    assert_eq!(produce(&mut before, 10, b"second").await, 1);
    let mut after = Client::connect(addr).await;
    assert_eq!(
        fetch_values(&mut after, 20).await,
        vec![Bytes::from_static(b"first"), Bytes::from_static(b"second")]
    );

    // acks=all writes were durable when acknowledged: they survive SIGKILL.
    let port = broker.kill();
    let broker = BrokerProcess::start(dir.path(), port);
    let mut again = Client::connect(broker.addr).await;
    assert_eq!(
        fetch_values(&mut again, 30).await,
        vec![Bytes::from_static(b"first"), Bytes::from_static(b"second")]
    );
    assert_eq!(
        produce(&mut again, 40, b"third").await,
        2,
        "offsets continue after recovery"
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
}

/// Fetch v13 to v17 name topics by id only (KIP-516), as newer clients send them: the id from
/// Metadata reads the records; an id the broker does not know is UNKNOWN_TOPIC_ID, and the
/// connection stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_by_topic_id_reads_the_topic_and_an_unknown_id_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(dir.path(), 0);
    let mut client = Client::connect(broker.addr).await;
    assert_eq!(produce(&mut client, 1, b"by-id").await, 0);
    let mut m = MetadataRequest::default();
    m.topics = Some(vec![
        metadata_request::MetadataRequestTopic::default().with_name(Some(TopicName(s("live"))))
    ]);
    client
        .send(ApiKey::Metadata, 12, 10, "ids", &RequestKind::Metadata(m))
        .await;
    let ResponseKind::Metadata(metadata) = client.recv_response(ApiKey::Metadata, 12, 10).await
    else {
        panic!("not a metadata response")
    };
    let id = metadata.topics[0].topic_id;
    assert!(!id.is_nil(), "Metadata v12 names the topic's id");
    let unknown = uuid::Uuid::from_u128(0x5eed);
    for (i, version) in (13..=17).enumerate() {
        for (topic_id, expected) in [(id, 0), (unknown, 100)] {
            let correlation = 100 + 2 * i as i32 + i32::from(expected != 0);
            let mut r = FetchRequest::default();
            r.max_wait_ms = 0;
            r.max_bytes = 1 << 20;
            r.replica_id = BrokerId(-1);
            r.topics = vec![FetchTopic::default()
                .with_topic_id(topic_id)
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(0)
                    .with_fetch_offset(0)
                    .with_partition_max_bytes(1 << 20)])];
            client
                .send(
                    ApiKey::Fetch,
                    version,
                    correlation,
                    "ids",
                    &RequestKind::Fetch(r),
                )
                .await;
            let ResponseKind::Fetch(response) = client
                .recv_response(ApiKey::Fetch, version, correlation)
                .await
            else {
                panic!("not a fetch response")
            };
            let t = &response.responses[0];
            assert_eq!(t.topic_id, topic_id, "v{version}: the answer names the id");
            let p = &t.partitions[0];
            assert_eq!(p.error_code, expected, "v{version}, id {topic_id}");
            if expected == 0 {
                let records = p.records.clone().expect("records");
                let batch = Batch::parse_prefix(&records)
                    .expect("a valid batch")
                    .expect("one batch");
                let values: Vec<_> = batch
                    .records()
                    .unwrap()
                    .into_iter()
                    .filter_map(|r| r.value)
                    .collect();
                assert_eq!(values, vec![Bytes::from_static(b"by-id")], "v{version}");
            }
        }
    }
}

/// A panic in any task (a failed invariant) stops the whole broker process (SIGABRT), instead
/// of one task dying while the rest serves on. Debug builds panic on purpose when
/// `KEEL_TEST_PANIC_AFTER_MS` is set.
#[cfg(debug_assertions)]
#[test]
fn a_panic_in_a_task_stops_the_broker() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args([
            "start",
            "--node-id",
            "1",
            "--listeners",
            "PLAINTEXT://127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .env("KEEL_LOG", "warn")
        .env("KEEL_TEST_PANIC_AFTER_MS", "300")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start keel");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the broker kept running after a task panicked");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(
        status.signal(),
        Some(libc::SIGABRT),
        "{status:?}; stderr: {stderr}"
    );
    assert!(stderr.contains("on purpose"), "{stderr}");
    assert!(stderr.contains("stopped the broker"), "{stderr}");
}
