//! Real Kafka clients against a real `keel start`: confluent-kafka (librdkafka 2.16),
//! kafka-python 3.x and Debian's kcat 1.7.1 (librdkafka 2.0.2), driven by the Python scripts in
//! `node/tests/interop/`. Each test starts its own broker on a free 127.0.0.1 port with a
//! fresh data directory, runs its scenario with bounded timeouts and stops the broker with
//! SIGTERM (which must exit 0); a Drop guard SIGKILLs it if the test panics first.
//!
//! The clients come from `.ci/clients.sh` (kcat from Debian, the rest in `.venv`). If they are
//! missing these tests FAIL and say so; `KEEL_SKIP_INTEROP=1` skips them (for quick local
//! runs), printing that they were skipped.
//!
//! The tests run one at a time (a lock), so their timings do not depend on each other. What
//! they share with `cluster.rs` (the clients, `keel start` processes, the scripts) is in
//! `common/`.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::{clients, keel_bin, say, tail, BrokerLogs, Clients, Node, Script};

const NODE_ID: u32 = 1;
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// The Python modules the scripts import: both clients and kafka-python's codecs.
const MODULES: &str = "confluent_kafka, kafka, snappy, lz4.frame, zstandard";
/// How many lines of the broker's log a failure shows.
const TAIL_LINES: usize = 40;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// The one `keel start` of a test, on `port` with its data in `data_dir`; its stderr goes to
/// `log` (appended across restarts).
struct Broker {
    node: Node,
    port: u16,
    data_dir: PathBuf,
}

impl Broker {
    /// Starts `keel start` with `--override KEY=VALUE` settings.
    fn start_with(data_dir: &Path, log: &Path, port: u16, overrides: &[&str]) -> Broker {
        let mut args = vec![
            "start".to_string(),
            "--node-id".into(),
            NODE_ID.to_string(),
            "--listeners".into(),
            format!("PLAINTEXT://127.0.0.1:{port}"),
            "--data-dir".into(),
            data_dir.display().to_string(),
        ];
        for o in overrides {
            args.extend(["--override".to_string(), o.to_string()]);
        }
        let ready_line = format!("keel broker {NODE_ID} ready on 127.0.0.1:{port}");
        let mut broker = Broker {
            node: Node::new(NODE_ID, args, ready_line, log.to_path_buf()),
            port,
            data_dir: data_dir.to_path_buf(),
        };
        broker.spawn();
        broker
    }

    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the process and waits (bounded) for its ready line.
    fn spawn(&mut self) {
        self.node.spawn();
        if let Err(e) = self.node.wait_ready(Instant::now() + READY_TIMEOUT) {
            panic!("{e} (within {READY_TIMEOUT:?})\n{}", self.logs());
        }
    }

    /// SIGKILL: a crash.
    fn kill(&mut self) {
        self.node.kill();
    }

    /// SIGTERM, and the broker must exit 0 within STOP_TIMEOUT.
    fn stop(&mut self) {
        match self.node.stop(STOP_TIMEOUT) {
            Some(s) if s.success() => {}
            Some(s) => panic!("keel did not exit 0 on SIGTERM: {s}\n{}", self.logs()),
            None => panic!(
                "keel did not exit within {STOP_TIMEOUT:?} of SIGTERM (killed it)\n{}",
                self.logs()
            ),
        }
    }
}

impl BrokerLogs for Broker {
    fn logs(&self) -> String {
        format!(
            "broker stderr (tail):\n{}",
            tail(&self.node.log, TAIL_LINES)
        )
    }
}

/// A broker in a fresh temporary directory (data in `data/`, its stderr in `broker.log`).
struct Setup {
    dir: tempfile::TempDir,
    broker: Broker,
    started: Instant,
}

impl Setup {
    fn new() -> Setup {
        Setup::with_overrides(&[])
    }

    fn with_overrides(overrides: &[&str]) -> Setup {
        let started = Instant::now();
        let dir = tempfile::tempdir().expect("temp dir");
        let broker = Broker::start_with(
            &dir.path().join("data"),
            &dir.path().join("broker.log"),
            free_port(),
            overrides,
        );
        Setup {
            dir,
            broker,
            started,
        }
    }

    fn run(&self, clients: &Clients, script: &str, extra: &[&str], timeout: Duration) -> String {
        let mut args = vec![self.broker.bootstrap()];
        args.extend(extra.iter().map(|s| s.to_string()));
        Script::spawn(clients, script, &args, self.dir.path()).expect_success(timeout, &self.broker)
    }

    /// Stops the broker (SIGTERM must exit 0) and reports how long the scenario took.
    fn finish(mut self, test: &str) -> (tempfile::TempDir, PathBuf) {
        self.broker.stop();
        say(&format!(
            "interop test {test} took {:.1?}",
            self.started.elapsed()
        ));
        let data = self.broker.data_dir.clone();
        (self.dir, data)
    }
}

/// `keel dump-log DIR` on one partition directory: (exit status, output).
fn dump_log(partition_dir: &Path) -> (ExitStatus, String) {
    let out = Command::new(keel_bin())
        .arg("dump-log")
        .arg(partition_dir)
        .stdin(Stdio::null())
        .output()
        .expect("run keel dump-log");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status, text)
}

#[test]
fn confluent_kafka_admin_idempotent_produce_and_assign_consume() {
    let Some(clients) = clients("interop", "confluent_kafka", MODULES) else {
        return;
    };
    let setup = Setup::new();
    setup.run(
        &clients,
        "confluent_roundtrip.py",
        &[],
        Duration::from_secs(120),
    );
    let (_dir, data) = setup.finish("confluent_kafka");
    // Step 6's topic has compression.type=zstd and was written by a gzip producer: the broker
    // stored every batch in zstd.
    let dirs: Vec<_> = std::fs::read_dir(&data)
        .expect("read data dir")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("cf-configs-"))
        .collect();
    assert_eq!(dirs.len(), 1, "one partition of the cf-configs topic");
    let (status, dump) = dump_log(&dirs[0].path());
    assert!(status.success(), "keel dump-log failed ({status}):\n{dump}");
    assert!(
        dump.contains("compresscodec: zstd") && !dump.contains("compresscodec: gzip"),
        "the zstd topic's batches as stored:\n{dump}"
    );
}

#[test]
fn kafka_python_admin_produce_and_assign_consume() {
    let Some(clients) = clients("interop", "kafka_python", MODULES) else {
        return;
    };
    let setup = Setup::new();
    setup.run(
        &clients,
        "kafka_python_roundtrip.py",
        &[],
        Duration::from_secs(120),
    );
    setup.finish("kafka_python");
}

/// Consumer groups (issue 6): a kafka-python group consumer commits, a new one resumes exactly
/// after the commit.
#[test]
fn kafka_python_group_consumer_resumes_after_its_commit() {
    let Some(clients) = clients("interop", "groups_kafka_python", MODULES) else {
        return;
    };
    let setup = Setup::new();
    setup.run(
        &clients,
        "groups.py",
        &["kafka_python"],
        Duration::from_secs(180),
    );
    setup.finish("groups_kafka_python");
}

/// Two confluent-kafka consumers split a 4-partition topic; when one leaves, the other takes
/// over every partition.
#[test]
fn confluent_kafka_group_splits_partitions_and_hands_over_on_leave() {
    let Some(clients) = clients("interop", "groups_confluent", MODULES) else {
        return;
    };
    let setup = Setup::new();
    setup.run(
        &clients,
        "groups.py",
        &["confluent_split"],
        Duration::from_secs(240),
    );
    setup.finish("groups_confluent");
}

/// `kcat -G` (librdkafka 2.0.2) consumes as a group, commits and resumes.
#[test]
fn kcat_consumes_as_a_group() {
    let Some(clients) = clients("interop", "groups_kcat", MODULES) else {
        return;
    };
    let setup = Setup::new();
    setup.run(&clients, "groups.py", &["kcat"], Duration::from_secs(240));
    setup.finish("groups_kcat");
}

#[test]
fn kcat_metadata_produce_consume_and_offsets_for_times() {
    let Some(clients) = clients("interop", "kcat", MODULES) else {
        return;
    };
    let setup = Setup::new();
    setup.run(&clients, "kcat_checks.py", &[], Duration::from_secs(120));
    setup.finish("kcat");
}

#[test]
fn every_codec_written_by_one_client_reads_back_in_another() {
    let Some(clients) = clients("interop", "compression", MODULES) else {
        return;
    };
    let setup = Setup::new();
    let out = setup.run(&clients, "compression.py", &[], Duration::from_secs(180));
    let (_dir, data) = setup.finish("compression");
    // The batches on disk must really carry the codec (a client can fall back to none).
    let mut checked = 0;
    let mut wrong = Vec::new();
    for line in out.lines() {
        let Some(rest) = line.strip_prefix("COMPRESSED ") else {
            continue;
        };
        let (topic, codec) = rest.split_once(' ').expect("COMPRESSED topic codec");
        let (status, dump) = dump_log(&data.join(format!("{topic}-0")));
        assert!(
            status.success(),
            "keel dump-log {topic}-0 failed ({status}):\n{dump}"
        );
        let codecs: Vec<&str> = dump
            .lines()
            .filter_map(|l| l.split(" compresscodec: ").nth(1))
            .filter_map(|rest| rest.split_whitespace().next())
            .collect();
        if codecs.is_empty() || codecs.iter().any(|c| *c != codec) {
            wrong.push(format!(
                "{topic}-0: expected only {codec} batches, dump-log says {codecs:?}"
            ));
        }
        checked += 1;
    }
    assert_eq!(
        checked, 12,
        "expected 4 codecs x 3 writers in the script output"
    );
    assert!(
        wrong.is_empty(),
        "records read back intact, but these batches are not stored with the codec the client was \
         asked for (the client sent them uncompressed; librdkafka turns a codec off when ApiVersions \
         lacks an API it ties the codec to: LZ4 needs FindCoordinator, every codec needs Produce v0):\n{}",
        wrong.join("\n")
    );
}

#[test]
fn idempotent_producer_survives_broker_sigkill_and_restart() {
    let Some(clients) = clients("interop", "crash_restart", MODULES) else {
        return;
    };
    let mut setup = Setup::new();
    const KILLS: usize = 3;
    let args = vec![setup.broker.bootstrap(), "100000".into(), KILLS.to_string()];
    let mut script = Script::spawn(&clients, "crash_producer.py", &args, setup.dir.path());
    for _ in 0..KILLS {
        let line = script.wait_for_line("KILL-NOW", Duration::from_secs(120), &setup.broker);
        let killed_at = Instant::now();
        setup.broker.kill();
        eprintln!("SIGKILLed the broker ({line})");
        script.send_line("KILLED");
        // Leave it down a moment, so the producer sees refused connections and queues up.
        thread::sleep(Duration::from_millis(1000));
        setup.broker.spawn();
        eprintln!(
            "restarted the broker on the same port and data directory: down for {:.1?}",
            killed_at.elapsed()
        );
    }
    script.expect_success(Duration::from_secs(240), &setup.broker);
    let (_dir, data) = setup.finish("crash_restart");
    // After recovery and a clean stop, every partition's log is well-formed.
    let mut partitions = 0;
    for entry in std::fs::read_dir(&data).expect("read data dir").flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("crash-") && entry.path().is_dir() {
            let (status, dump) = dump_log(&entry.path());
            assert!(
                status.success(),
                "keel dump-log {name} after the crash test failed ({status}):\n{dump}"
            );
            partitions += 1;
        }
    }
    assert_eq!(
        partitions,
        3,
        "expected 3 partition directories of the crash topic in {}",
        data.display()
    );
}

/// Transactions (issue 15): confluent-kafka's transactional producer commits and aborts; a
/// read_committed consumer sees exactly the committed records in order (Fetch up to the last
/// stable offset, KIP-98's aborted transactions list), not an open transaction's; a second
/// producer with the same transactional.id fences the first (PRODUCER_FENCED on its commit,
/// INVALID_PRODUCER_EPOCH on its produce).
#[test]
fn confluent_kafka_transactions_commit_abort_read_committed_and_fencing() {
    let Some(clients) = clients("interop", "transactions", MODULES) else {
        return;
    };
    let setup = Setup::new();
    setup.run(&clients, "transactions.py", &[], Duration::from_secs(180));
    setup.finish("transactions");
}

/// Transactions with kafka-python 3.x (issue 15): another client's transactional API (its own
/// versions: FindCoordinator with batched keys, AddPartitionsToTxn v3, EndTxn v3) commits,
/// aborts, reads committed and is fenced by a second producer with the same transactional_id.
#[test]
fn kafka_python_transactions_commit_abort_and_fencing() {
    let Some(clients) = clients("interop", "kafka_python_transactions", MODULES) else {
        return;
    };
    let setup = Setup::new();
    setup.run(
        &clients,
        "kafka_python_transactions.py",
        &[],
        Duration::from_secs(180),
    );
    setup.finish("kafka_python_transactions");
}

/// Log compaction (issue 18, docs/compaction.md): confluent-kafka creates a compacted topic with
/// small segments and aggressive cleaner settings and writes 5 versions of 20 keys and 5
/// tombstones; kafka-python and confluent-kafka then read only each key's latest value, and no
/// tombstone after `delete.retention.ms`. `keel dump-log` reads the cleaned segments: valid,
/// with the empty batches that cover dropped offsets.
#[test]
fn compacted_topic_reads_latest_values_and_loses_tombstones_after_retention() {
    let Some(clients) = clients("interop", "compaction", MODULES) else {
        return;
    };
    let setup = Setup::with_overrides(&["log.cleaner.backoff.ms=100"]);
    let out = setup.run(&clients, "compaction.py", &[], Duration::from_secs(240));
    let topic = out
        .lines()
        .find_map(|l| l.strip_prefix("created ")?.split_whitespace().next())
        .expect("the script names its topic")
        .to_string();
    let (_dir, data) = setup.finish("compaction");
    let (status, dump) = dump_log(&data.join(format!("{topic}-0")));
    assert!(
        status.success(),
        "keel dump-log {topic}-0 failed ({status}):\n{dump}"
    );
    assert!(
        dump.lines().any(|l| l.contains(" count: 0 ")),
        "a cleaned segment has an empty batch where whole batches were dropped:\n{dump}"
    );
}
