//! The client matrix (issue 21): every Kafka client keel is tested with, against ONE shared
//! three-broker `keel dev` cluster, each checking what it read, not only how it exited:
//!
//! | client | admin | produce | consume | group | transactions |
//! |---|---|---|---|---|---|
//! | kcat (librdkafka 2.0.2) | metadata | yes | yes | yes | read_committed |
//! | confluent-kafka, kafka-python, aiokafka, kafkajs, rdkafka | yes | yes | yes | yes | yes |
//! | rskafka | yes | yes | yes | (has none) | (has none) |
//!
//! "Checked" means: records read back equal those written, partition by partition in offset
//! order; a group's committed offsets (read back through OffsetFetch) equal what it consumed;
//! a read_committed consumer sees the committed transactions' records and none of the aborted
//! one's. The Python and Node.js clients run the scripts `node/tests/interop/matrix_*`, which
//! print one `CHECKED capability: ...` line per capability; the test requires every line its
//! client's row promises. The two Rust clients run in this process.
//!
//! The cluster is started by the first test that needs it (free ports below the ephemeral range,
//! data and log under cargo's target tmp directory, cleared at the next start); it dies with
//! the test process however that ends (`common::dev`). Each client uses topics and groups of
//! its own.
//!
//! The clients come from `.ci/clients.sh`; the tests FAIL if they are missing, and
//! `KEEL_SKIP_INTEROP=1` skips the ones that need installed clients (the Rust clients are
//! dependencies of this test and always run).

#![cfg(not(madsim))]

#[allow(dead_code)] // shared with interop.rs and cluster.rs, which use the rest
mod common;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::dev::{dev_args, free_port_range, spawn_dev};
use common::{clients, repo_root, tail, BrokerLogs, Script};

/// The longest one client's scenario may run.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(240);
/// Partitions and replication factor of every topic the matrix creates.
const PARTITIONS: i32 = 3;
const REPLICATION: i32 = 3;
/// Records each client writes in its produce scenario.
const RECORDS: usize = 30;
/// The Python modules the scripts import.
const MODULES: &str = "confluent_kafka, kafka, aiokafka";
/// Every capability a full client row checks.
const ALL: &[&str] = &["admin", "produce", "consume", "group", "transactions"];

/// The shared cluster.
struct Cluster {
    /// Its bootstrap servers, as `keel dev` prints them.
    bootstrap: String,
    /// Broker 1's client port; broker i serves /metrics on this + 200 + i - 1.
    port: u16,
    /// `keel dev`'s stderr (its brokers' logs).
    log: PathBuf,
}

impl BrokerLogs for Cluster {
    fn logs(&self) -> String {
        format!("keel dev stderr (tail):\n{}", tail(&self.log, 60))
    }
}

/// Starts `keel dev --brokers 3` once; every caller gets the same cluster.
fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let port = free_port_range(3);
        let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let data_dir = tmp.join("client-matrix-dev");
        let log = tmp.join("client-matrix-dev.log");
        let _ = std::fs::remove_dir_all(&data_dir);
        let stderr = std::fs::File::create(&log).expect("keel dev log file");
        let args = dev_args(3, port, &data_dir);
        let shown = log.clone();
        let bootstrap = spawn_dev(
            args,
            Stdio::from(stderr),
            "keel dev: 3 brokers ready",
            move || tail(&shown, 60),
        );
        Cluster {
            bootstrap,
            port,
            log,
        }
    })
}

/// Asserts that a script's output has a `CHECKED capability:` line for each of `want`.
fn assert_checked(client: &str, output: &str, want: &[&str]) {
    let checked: Vec<&str> = output
        .lines()
        .filter_map(|l| l.strip_prefix("CHECKED "))
        .filter_map(|l| l.split(':').next())
        .collect();
    for capability in want {
        assert!(
            checked.contains(capability),
            "{client}: the scenario ended without checking {capability} (it checked {checked:?})\n{output}"
        );
    }
}

/// Runs a Python client's matrix script against the shared cluster.
fn python_client(client: &str, script: &str, want: &[&str]) {
    let Some(clients) = clients("client matrix", client, MODULES) else {
        return;
    };
    let cluster = cluster();
    let dir = tempfile::tempdir().expect("temp dir");
    let out = Script::spawn(
        &clients,
        script,
        std::slice::from_ref(&cluster.bootstrap),
        dir.path(),
    )
    .expect_success(SCRIPT_TIMEOUT, cluster);
    assert_checked(client, &out, want);
}

/// kcat has no topic creation and no transactional producer: its admin row is metadata (kcat -L)
/// and its transactions row is reading confluent-kafka's transactions read_committed.
#[test]
fn kcat_metadata_produce_consume_group_and_read_committed() {
    python_client("kcat", "matrix_kcat.py", ALL);
}

#[test]
fn confluent_kafka_admin_produce_consume_group_and_transactions() {
    python_client("confluent-kafka", "matrix_confluent.py", ALL);
}

#[test]
fn kafka_python_admin_produce_consume_group_and_transactions() {
    python_client("kafka-python", "matrix_kafka_python.py", ALL);
}

/// aiokafka's transactional producer (issue 15 asks for it): begin, commit and abort over
/// AddPartitionsToTxn and EndTxn from an asyncio client.
#[test]
fn aiokafka_admin_produce_consume_group_and_transactions() {
    python_client("aiokafka", "matrix_aiokafka.py", ALL);
}

/// kafkajs, installed by `.ci/clients.sh` into `.clients/node` (npm), run by Node.js.
#[test]
fn kafkajs_admin_produce_consume_group_and_transactions() {
    let Some(clients) = clients("client matrix", "kafkajs", MODULES) else {
        return;
    };
    let modules = repo_root().join(".clients/node/node_modules");
    assert!(
        modules.join("kafkajs/package.json").is_file(),
        "client matrix test kafkajs: kafkajs is not installed in {}. Run `bash .ci/clients.sh` \
         from the repository root (or set KEEL_SKIP_INTEROP=1 to skip these tests).",
        modules.display()
    );
    let cluster = cluster();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut node = Command::new("node");
    node.env("NODE_PATH", &modules);
    let out = Script::spawn_with(
        node,
        &clients,
        "matrix_kafkajs.js",
        std::slice::from_ref(&cluster.bootstrap),
        dir.path(),
    )
    .expect_success(SCRIPT_TIMEOUT, cluster);
    assert_checked("kafkajs", &out, ALL);
}

/// A unique name for this run's topics and groups.
fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{prefix}-{:x}", nanos ^ u128::from(std::process::id()))
}

/// Records by partition, in offset order: (key, value).
type ByPartition = BTreeMap<i32, Vec<(String, String)>>;

/// `n` records named after `prefix`, round-robin over the partitions: (partition, key, value).
fn records(prefix: &str, n: usize) -> Vec<(i32, String, String)> {
    (0..n)
        .map(|i| {
            (
                (i as i32) % PARTITIONS,
                format!("{prefix}-k{i}"),
                format!("{prefix}-v{i}"),
            )
        })
        .collect()
}

fn by_partition(records: &[(i32, String, String)]) -> ByPartition {
    let mut out: ByPartition = (0..PARTITIONS).map(|p| (p, Vec::new())).collect();
    for (p, k, v) in records {
        out.entry(*p).or_default().push((k.clone(), v.clone()));
    }
    out
}

/// A bounded wait for `what`.
fn deadline_check(deadline: Instant, what: &str, got: &ByPartition) {
    assert!(
        Instant::now() < deadline,
        "{what}: timed out with {} records: {got:?}\n{}",
        got.values().map(Vec::len).sum::<usize>(),
        cluster().logs()
    );
}

mod rust_rdkafka {
    //! The `rdkafka` crate (librdkafka 2.12, built from rdkafka-sys's bundled sources).
    use super::*;
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::message::Message;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    use rdkafka::{Offset, TopicPartitionList};

    /// Closes a group consumer (LeaveGroup; bounded) and then leaks it instead of destroying
    /// it. Destroying a consumer that had subscribed to a group hangs in librdkafka 2.12.1's
    /// `rd_kafka_destroy` (its main thread waits forever to join a broker thread that stays in
    /// its consumer loop) after the close has completed; librdkafka 2.16 (confluent-kafka) and
    /// 2.0.2 (kcat) close and destroy theirs against the same cluster. Not understood yet: the
    /// leak keeps that hang from blocking the matrix while everything before it is checked.
    pub(super) fn close_and_leak(consumer: BaseConsumer) {
        consumer.close_queue().expect("close the group consumer");
        let deadline = Instant::now() + TIMEOUT;
        while !consumer.closed() {
            assert!(
                Instant::now() < deadline,
                "the group consumer did not close within {TIMEOUT:?}"
            );
            let _ = consumer.poll(Duration::from_millis(100));
        }
        std::mem::forget(consumer);
    }

    pub(super) const TIMEOUT: Duration = Duration::from_secs(30);

    pub(super) fn config(extra: &[(&str, &str)]) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &cluster().bootstrap);
        for (k, v) in extra {
            c.set(*k, *v);
        }
        c
    }

    pub(super) fn produce(producer: &BaseProducer, topic: &str, records: &[(i32, String, String)]) {
        for (p, k, v) in records {
            producer
                .send(BaseRecord::to(topic).partition(*p).key(k).payload(v))
                .map_err(|(e, _)| e)
                .expect("rdkafka enqueues the record");
        }
        producer.flush(TIMEOUT).expect("rdkafka flushes");
    }

    /// Polls `consumer` until `want` records arrived, then a second more (for extra ones).
    fn drain(consumer: &BaseConsumer, want: usize, what: &str) -> ByPartition {
        let mut got: ByPartition = (0..PARTITIONS).map(|p| (p, Vec::new())).collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut n = 0;
        let mut quiet_until = None;
        loop {
            if n >= want {
                let until =
                    *quiet_until.get_or_insert_with(|| Instant::now() + Duration::from_secs(1));
                if Instant::now() >= until {
                    return got;
                }
            } else {
                deadline_check(deadline, what, &got);
            }
            match consumer.poll(Duration::from_millis(200)) {
                None => {}
                Some(Err(e)) => panic!("{what}: {e}"),
                Some(Ok(m)) => {
                    let text = |b: Option<&[u8]>| {
                        String::from_utf8_lossy(b.unwrap_or_default()).into_owned()
                    };
                    got.entry(m.partition())
                        .or_default()
                        .push((text(m.key()), text(m.payload())));
                    n += 1;
                }
            }
        }
    }

    fn read(topic: &str, want: usize, isolation: &str) -> ByPartition {
        let consumer: BaseConsumer = config(&[
            ("group.id", "mx-rdkafka-unused"),
            ("enable.auto.commit", "false"),
            ("isolation.level", isolation),
        ])
        .create()
        .expect("rdkafka consumer");
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .expect("offset");
        }
        consumer.assign(&tpl).expect("assign");
        drain(&consumer, want, &format!("rdkafka reading {topic}"))
    }

    /// Creates `topics` (PARTITIONS partitions of REPLICATION replicas each).
    pub(super) fn create_topics(topics: &[&str]) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let admin: AdminClient<DefaultClientContext> = config(&[]).create().expect("admin");
        let new: Vec<NewTopic> = topics
            .iter()
            .map(|t| NewTopic::new(t, PARTITIONS, TopicReplication::Fixed(REPLICATION)))
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(TIMEOUT));
        for result in runtime
            .block_on(admin.create_topics(&new, &options))
            .expect("CreateTopics")
        {
            result.unwrap_or_else(|(t, e)| panic!("creating {t}: {e}"));
        }
    }

    #[test]
    fn rdkafka_admin_produce_consume_group_and_transactions() {
        let topic = unique("mx-rdkafka");
        let txn_topic = unique("mx-rdkafka-txn");
        let group = unique("mx-rdkafka-group");

        // Admin: CreateTopics, then Metadata.
        create_topics(&[&topic, &txn_topic]);
        eprintln!("rdkafka: created {topic} and {txn_topic}");
        let admin: AdminClient<DefaultClientContext> = config(&[]).create().expect("admin");
        let metadata = admin
            .inner()
            .fetch_metadata(Some(&topic), TIMEOUT)
            .expect("Metadata");
        let described = &metadata.topics()[0];
        assert_eq!(described.name(), topic);
        let mut ids: Vec<i32> = described.partitions().iter().map(|p| p.id()).collect();
        ids.sort();
        assert_eq!(
            ids,
            (0..PARTITIONS).collect::<Vec<_>>(),
            "{topic} partitions"
        );
        for p in described.partitions() {
            assert_eq!(
                p.replicas().len(),
                REPLICATION as usize,
                "{topic}[{}] replicas",
                p.id()
            );
        }

        // Produce (idempotent, acks=all) and read back by assign().
        let written = records("rdk", RECORDS);
        let producer: BaseProducer = config(&[("enable.idempotence", "true")])
            .create()
            .expect("rdkafka producer");
        produce(&producer, &topic, &written);
        eprintln!("rdkafka: produced {} records", written.len());
        assert_eq!(
            read(&topic, written.len(), "read_uncommitted"),
            by_partition(&written),
            "records read back from {topic}"
        );

        // A consumer group: subscribe, read everything, commit synchronously, read the
        // committed offsets back (OffsetFetch).
        let consumer: BaseConsumer = config(&[
            ("group.id", &group),
            ("enable.auto.commit", "false"),
            ("auto.offset.reset", "earliest"),
        ])
        .create()
        .expect("rdkafka group consumer");
        consumer.subscribe(&[&topic]).expect("subscribe");
        eprintln!("rdkafka: read back; group {group} subscribed");
        assert_eq!(
            drain(&consumer, written.len(), &format!("group {group}")),
            by_partition(&written),
            "records the group {group} read"
        );
        consumer
            .commit_consumer_state(CommitMode::Sync)
            .expect("commit");
        let committed = consumer.committed(TIMEOUT).expect("OffsetFetch");
        let got: BTreeMap<i32, Offset> = committed
            .elements_for_topic(&topic)
            .iter()
            .map(|e| (e.partition(), e.offset()))
            .collect();
        let want: BTreeMap<i32, Offset> = by_partition(&written)
            .into_iter()
            .map(|(p, v)| (p, Offset::Offset(v.len() as i64)))
            .collect();
        assert_eq!(got, want, "group {group} committed offsets");
        close_and_leak(consumer);
        eprintln!("rdkafka: group {group} committed");

        // Transactions: commit, abort, commit; read_committed sees only the committed ones.
        let txn: BaseProducer = config(&[("transactional.id", &unique("mx-rdkafka-txid"))])
            .create()
            .expect("rdkafka transactional producer");
        txn.init_transactions(TIMEOUT).expect("InitProducerId");
        eprintln!("rdkafka: transactional producer initialised");
        let first = records("rdk-c1", 6);
        let aborted = records("rdk-ab", 6);
        let second = records("rdk-c2", 6);
        for (commit, batch) in [(true, &first), (false, &aborted), (true, &second)] {
            txn.begin_transaction().expect("begin");
            produce(&txn, &txn_topic, batch);
            if commit {
                txn.commit_transaction(TIMEOUT).expect("commit");
            } else {
                txn.abort_transaction(TIMEOUT).expect("abort");
            }
        }
        let committed_records: Vec<_> = first.iter().chain(&second).cloned().collect();
        assert_eq!(
            read(&txn_topic, committed_records.len(), "read_committed"),
            by_partition(&committed_records),
            "read_committed records of {txn_topic}"
        );
    }
}

mod rust_rskafka {
    //! The pure-Rust `rskafka` crate: admin (CreateTopics, Metadata), produce, fetch and
    //! ListOffsets. It has no consumer groups and no transactions.
    use super::*;
    use rskafka::chrono::{TimeZone, Utc};
    use rskafka::client::partition::{Compression, OffsetAt, UnknownTopicHandling};
    use rskafka::client::ClientBuilder;
    use rskafka::record::Record;

    #[test]
    fn rskafka_admin_produce_and_fetch() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let topic = unique("mx-rskafka");
            let bootstrap = cluster().bootstrap.split(',').map(str::to_string).collect();
            let client = ClientBuilder::new(bootstrap)
                .build()
                .await
                .expect("rskafka client");
            client
                .controller_client()
                .expect("controller client")
                .create_topic(&topic, PARTITIONS, REPLICATION as i16, 30_000)
                .await
                .expect("CreateTopics");
            let topics = client.list_topics().await.expect("Metadata");
            let listed = topics
                .iter()
                .find(|t| t.name == topic)
                .unwrap_or_else(|| panic!("{topic} not in Metadata: {topics:?}"));
            assert_eq!(
                listed.partitions.iter().copied().collect::<Vec<_>>(),
                (0..PARTITIONS).collect::<Vec<_>>()
            );

            let written = records("rsk", RECORDS);
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            let mut got: ByPartition = BTreeMap::new();
            for (p, want) in by_partition(&written) {
                let partition = client
                    .partition_client(&topic, p, UnknownTopicHandling::Retry)
                    .await
                    .expect("partition client");
                let batch = want
                    .iter()
                    .map(|(k, v)| Record {
                        key: Some(k.clone().into_bytes()),
                        value: Some(v.clone().into_bytes()),
                        headers: BTreeMap::new(),
                        timestamp: Utc
                            .timestamp_millis_opt(now_ms)
                            .single()
                            .expect("a valid timestamp"),
                    })
                    .collect();
                let offsets = partition
                    .produce(batch, Compression::NoCompression)
                    .await
                    .expect("Produce");
                assert_eq!(
                    offsets,
                    (0..want.len() as i64).collect::<Vec<_>>(),
                    "offsets of {topic}[{p}]"
                );
                assert_eq!(
                    partition
                        .get_offset(OffsetAt::Latest)
                        .await
                        .expect("ListOffsets"),
                    want.len() as i64,
                    "{topic}[{p}] end offset"
                );
                let mut read = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(30);
                while read.len() < want.len() {
                    assert!(Instant::now() < deadline, "{topic}[{p}]: read {read:?}");
                    let (records, _high_watermark) = partition
                        .fetch_records(read.len() as i64, 1..1_000_000, 500)
                        .await
                        .expect("Fetch");
                    for r in records {
                        assert_eq!(r.offset, read.len() as i64, "{topic}[{p}] offsets in order");
                        let text = |b: Option<Vec<u8>>| {
                            String::from_utf8(b.unwrap_or_default()).expect("utf-8")
                        };
                        read.push((text(r.record.key), text(r.record.value)));
                    }
                }
                got.insert(p, read);
            }
            assert_eq!(
                got,
                by_partition(&written),
                "records read back from {topic}"
            );
        });
    }
}

mod dashboard {
    //! The Grafana dashboard (`docs/keel-dashboard.json`, issue 21): Prometheus (Debian's, from
    //! `.ci/clients.sh`) scrapes the shared `keel dev` on loopback while rdkafka writes and two
    //! groups read, then `node/tests/interop/dashboard.py` evaluates every panel's query through
    //! Prometheus's HTTP API (failing if any returns no series) and draws the panels from the
    //! results with matplotlib. `KEEL_WRITE_DASHBOARD_PNG=1` writes that picture to
    //! `docs/keel-dashboard.png` (docs/operations.md shows it); otherwise it goes to a temp dir.
    use super::rust_rdkafka::{close_and_leak, config, create_topics, produce};
    use super::*;
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::producer::BaseProducer;
    use std::process::Child;

    /// How long the load runs, and with it the window the picture shows.
    const LOAD: Duration = Duration::from_secs(40);
    /// Prometheus's scrape interval, and the window that replaces Grafana's `$__rate_interval`
    /// (Grafana's own choice: at least four scrape intervals).
    const SCRAPE: &str = "1s";
    const RATE_INTERVAL: &str = "5s";
    /// The picture's size limit (it lives in git).
    const PNG_BYTES_MAX: u64 = 300 * 1024;

    /// A child process SIGKILLed and reaped when dropped.
    struct Guard(Child);

    impl Drop for Guard {
        fn drop(&mut self) {
            common::kill_and_reap(&mut self.0);
        }
    }

    fn unix_now() -> f64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    }

    #[test]
    fn every_dashboard_query_returns_series_from_prometheus_scraping_keel_dev() {
        let Some(clients) = clients("client matrix", "dashboard", "matplotlib") else {
            return;
        };
        let cluster = cluster();
        let dir = tempfile::tempdir().expect("temp dir");
        let targets: Vec<String> = (0..3)
            .map(|i| format!("\"127.0.0.1:{}\"", cluster.port + 200 + i))
            .collect();
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(
            &config_path,
            format!(
                "global:\n  scrape_interval: {SCRAPE}\n  evaluation_interval: {SCRAPE}\n\
                 scrape_configs:\n  - job_name: keel\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )
        .expect("write prometheus.yml");
        let prometheus_port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let prometheus_log = dir.path().join("prometheus.log");
        let mut prometheus = Command::new("prometheus");
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent. It takes
        // Prometheus down with the test process however that ends (the Guard covers panics).
        unsafe {
            prometheus.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let _prometheus = Guard(
            prometheus
                .arg(format!("--config.file={}", config_path.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("tsdb").display()
                ))
                .arg(format!("--web.listen-address=127.0.0.1:{prometheus_port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&prometheus_log).expect("log file"))
                .spawn()
                .expect("spawn prometheus (installed by .ci/clients.sh)"),
        );

        // The load: a producer writing, a group that keeps up and commits, and a group that
        // commits once and stops (its lag grows).
        let topic = unique("dashboard-load");
        create_topics(&[&topic]);
        let start = unix_now();
        let producer: BaseProducer = config(&[("linger.ms", "20")]).create().expect("producer");
        let reader = |group: &str| -> BaseConsumer {
            let c: BaseConsumer = config(&[
                ("group.id", group),
                ("enable.auto.commit", "false"),
                ("auto.offset.reset", "earliest"),
            ])
            .create()
            .expect("group consumer");
            c.subscribe(&[&topic]).expect("subscribe");
            c
        };
        let keeping_up = reader(&unique("dashboard-keeping-up"));
        let mut stalled = Some(reader(&unique("dashboard-stalled")));
        // The stalled group's consumer once it has committed: it stays in the group (its
        // session is kept alive by librdkafka's background heartbeats) until the end.
        let mut stalled_done = None;
        let mut written = 0;
        let mut read = 0;
        let until = Instant::now() + LOAD;
        while Instant::now() < until {
            let batch = records(&format!("load{written}"), 60);
            produce(&producer, &topic, &batch);
            written += batch.len();
            let tick = Instant::now() + Duration::from_millis(250);
            while Instant::now() < tick {
                if let Some(Ok(_)) = keeping_up.poll(Duration::from_millis(20)) {
                    read += 1;
                }
                if let Some(c) = &stalled {
                    if let Some(Ok(_)) = c.poll(Duration::from_millis(5)) {
                        c.commit_consumer_state(CommitMode::Sync).expect("commit");
                        stalled_done = stalled.take();
                    }
                }
            }
            if read > 0 {
                keeping_up
                    .commit_consumer_state(CommitMode::Sync)
                    .expect("commit");
            }
        }
        let end = unix_now();
        close_and_leak(keeping_up);
        if let Some(c) = stalled_done {
            close_and_leak(c);
        }
        assert!(
            stalled.is_none(),
            "the stalled group never read a record\n{}",
            cluster.logs()
        );
        assert!(
            read > 0,
            "the keeping-up group read nothing of {written} records"
        );

        let png = if std::env::var("KEEL_WRITE_DASHBOARD_PNG").as_deref() == Ok("1") {
            repo_root().join("docs/keel-dashboard.png")
        } else {
            dir.path().join("keel-dashboard.png")
        };
        let out = Script::spawn(
            &clients,
            "dashboard.py",
            &[
                format!("http://127.0.0.1:{prometheus_port}"),
                repo_root()
                    .join("docs/keel-dashboard.json")
                    .display()
                    .to_string(),
                RATE_INTERVAL.to_string(),
                format!("{start:.3}"),
                format!("{end:.3}"),
                png.display().to_string(),
            ],
            dir.path(),
        )
        .expect_success(Duration::from_secs(120), cluster);
        assert!(
            out.lines().any(|l| l.starts_with("EVALUATED ")),
            "dashboard.py did not evaluate the queries:\n{out}\nprometheus log:\n{}",
            tail(&prometheus_log, 20)
        );
        let bytes = std::fs::metadata(&png).expect("the picture").len();
        assert!(
            bytes > 0 && bytes < PNG_BYTES_MAX,
            "{} is {bytes} bytes (want 1..{PNG_BYTES_MAX})",
            png.display()
        );
        // Every broker's live /metrics, after this load, passes Prometheus' own linter.
        for i in 0..3 {
            let port = cluster.port + 200 + i;
            let body = http_get_metrics(port);
            common::promtool_check(&body, &format!("broker {}'s /metrics", i + 1));
            assert!(
                body.contains("keel_"),
                "broker {} serves no keel metric",
                i + 1
            );
        }
        common::say(&format!(
            "dashboard: {written} records written, {read} read by the keeping-up group; picture {} ({bytes} bytes)",
            png.display()
        ));
    }

    /// The body of `GET /metrics` on 127.0.0.1:`port` (the server closes the connection after it, as asked).
    fn http_get_metrics(port: u16) -> String {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("connect to /metrics on port {port}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .expect("send the request");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("read the answer");
        let (head, body) = answer
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no HTTP header end in {answer:?}"));
        assert!(
            head.starts_with("HTTP/1.") && head.contains(" 200 "),
            "{head}"
        );
        body.to_string()
    }
}
