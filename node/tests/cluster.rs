//! Three-broker clusters on loopback, driven by real Kafka clients (confluent-kafka, kcat):
//! `keel dev` survives the SIGKILL of any one broker with every committed record still
//! readable, and an idempotent acks=all producer loses and duplicates nothing while the leader
//! of its partition is SIGKILLed and restarted (the "kill the leader" test), and a
//! consumer group keeps its committed offsets and its member when its coordinator's broker is
//! SIGKILLed and restarted, and a rolling restart with SIGTERM (controlled shutdown) under an
//! idempotent acks=all producer fails no delivery; transactions, and an exactly-once
//! consume-transform-produce loop that commits its offsets with the transaction; a group's
//! offsets through the compaction of `__consumer_offsets` and a coordinator move; partition
//! reassignments under an idempotent acks=all producer; a fourth broker added and broker 3
//! decommissioned while two idempotent producers (confluent-kafka, kafka-python) and a
//! consumer run.
//!
//! The Python halves are `node/tests/interop/cluster_*.py`; this file owns every process: each
//! test starts its brokers on free 127.0.0.1 ports with fresh data directories, and a Drop
//! guard SIGKILLs whatever is left if a test panics. A failure shows the last lines of every
//! broker's log.
//!
//! Like `interop.rs`: the clients come from `.ci/clients.sh`; if they are missing these tests
//! FAIL and say so, and `KEEL_SKIP_INTEROP=1` skips them. The tests run one at a time (a
//! lock), so their timings do not depend on each other. What they share with `interop.rs` is
//! in `common/`.

mod common;

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use common::{
    clients, keel_bin, kill_and_reap, say, signal_and_wait, tail, BrokerLogs, Node, Script,
};

/// How long three brokers have to print their ready lines (a cluster broker is ready once it
/// registered with the controller, after the quorum elected one).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `keel dev` has to exit 0 after SIGINT (it gives each broker 30 s).
const DEV_STOP_TIMEOUT: Duration = Duration::from_secs(40);
/// Broker settings for quick failover: fenced after 3 s of silence.
const FAST_FAILOVER: [&str; 2] = [
    "broker.session.timeout.ms=3000",
    "broker.heartbeat.interval.ms=500",
];
/// The Python modules the scripts import.
const MODULES: &str = "confluent_kafka";
/// How many log lines of each broker a failure shows.
const TAIL_LINES: usize = 40;
/// Lines of `keel dev` output kept for failure reports.
const DEV_LINES_MAX: usize = 20_000;
/// `keel dev`'s peer ports are its client ports plus this, its metrics ports plus twice this.
const DEV_PORT_STRIDE: u16 = 100;
/// Brokers whose ports a test's `keel dev` reserves: three, and a fourth a test may add.
const DEV_BROKERS_MAX: u16 = 4;

/// SIGKILLs `pid` if it still runs `keel start` with `marker` on its command line (so a
/// reused pid is never hit).
fn kill_keel_start(pid: u32, marker: &str) {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    if cmdline.contains(" start ") && cmdline.contains(marker) {
        // SAFETY: kill(2) on a pid checked just above to be our broker; no memory involved.
        unsafe {
            libc::kill(pid as libc::pid_t, libc::SIGKILL);
        }
    }
}

/// Whether `pid` names a live process (zombies count as gone).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // `PID (COMM) STATE ...`: the state follows the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Lines from a child's stdout or stderr.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

/// Reads `reader` line by line into `lines` (bounded) and `tx`.
fn collect_lines(
    reader: impl Read + Send + 'static,
    stream: Stream,
    lines: Arc<Mutex<VecDeque<(Stream, String)>>>,
    tx: Sender<(Stream, String)>,
) -> JoinHandle<()> {
    thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            {
                let mut kept = lines.lock().unwrap_or_else(|p| p.into_inner());
                if kept.len() == DEV_LINES_MAX {
                    kept.pop_front();
                }
                kept.push_back((stream, line.clone()));
            }
            // Nobody listening any more is fine: keep draining so the child never blocks.
            let _ = tx.send((stream, line));
        }
    })
}

// --- keel dev ------------------------------------------------------------------------------

/// A `keel dev` process and the brokers it reported.
struct Dev {
    child: Option<Child>,
    port: u16,
    data_dir: PathBuf,
    lines: Arc<Mutex<VecDeque<(Stream, String)>>>,
    rx: Receiver<(Stream, String)>,
    /// pids of brokers 1, 2, 3 from the ready summary.
    pids: Vec<u32>,
}

impl Dev {
    fn start(port: u16, data_dir: &Path, overrides: &[&str]) -> Dev {
        let mut command = Command::new(keel_bin());
        command
            .args(["dev", "--brokers", "3", "--port", &port.to_string()])
            .arg("--data-dir")
            .arg(data_dir);
        for o in overrides {
            command.args(["--override", o]);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {} dev: {e}", keel_bin()));
        let lines = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        collect_lines(stdout, Stream::Stdout, lines.clone(), tx.clone());
        collect_lines(stderr, Stream::Stderr, lines.clone(), tx);
        Dev {
            child: Some(child),
            port,
            data_dir: data_dir.to_path_buf(),
            lines,
            rx,
            pids: Vec::new(),
        }
    }

    fn address(&self, id: u32) -> String {
        format!("127.0.0.1:{}", u32::from(self.port) + id - 1)
    }

    fn bootstrap(&self) -> String {
        (1..=3)
            .map(|id| self.address(id))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits for a line of `stream` starting with `prefix`.
    fn wait_for(&mut self, stream: Stream, prefix: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok((s, line)) if s == stream && line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => panic!(
                    "keel dev printed no `{prefix}` line on {stream:?} within {timeout:?}\n{}",
                    self.logs()
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.as_mut().and_then(|c| c.wait().ok());
                    panic!(
                        "keel dev ended ({status:?}) before printing `{prefix}`\n{}",
                        self.logs()
                    )
                }
            }
        }
    }

    /// Waits for the ready summary and reads the brokers' pids from it.
    fn wait_ready(&mut self) {
        self.wait_for(Stream::Stdout, "keel dev: 3 brokers ready", READY_TIMEOUT);
        for id in 1..=3u32 {
            let line = self.wait_for(
                Stream::Stdout,
                &format!("  broker {id}  {}  pid ", self.address(id)),
                Duration::from_secs(5),
            );
            let pid = line
                .split("  pid ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|pid| pid.parse().ok())
                .unwrap_or_else(|| panic!("no pid in keel dev's line {line:?}"));
            self.pids.push(pid);
        }
        self.wait_for(
            Stream::Stdout,
            &format!("bootstrap servers: {}", self.bootstrap()),
            Duration::from_secs(5),
        );
    }

    /// SIGKILLs broker `id` behind keel dev's back; keel dev must report it and keep running.
    fn kill_broker(&mut self, id: u32) {
        let pid = self.pids[id as usize - 1];
        kill_keel_start(pid, &self.data_dir.display().to_string());
        self.wait_for(
            Stream::Stderr,
            &format!(
                "keel dev: broker {id} (pid {pid}) exited with signal 9 (SIGKILL); the others keep running"
            ),
            Duration::from_secs(10),
        );
        assert!(
            self.child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(None))),
            "keel dev exited after one broker was killed\n{}",
            self.logs()
        );
    }

    /// Ctrl-C: keel dev must print `keel dev: stopped`, exit 0 and leave no broker running.
    fn interrupt(&mut self) {
        let mut child = self.child.take().expect("keel dev running");
        let Some(status) = signal_and_wait(&mut child, libc::SIGINT, DEV_STOP_TIMEOUT) else {
            panic!(
                "keel dev did not exit within {DEV_STOP_TIMEOUT:?} of SIGINT (killed it)\n{}",
                self.logs()
            );
        };
        assert!(
            status.success(),
            "keel dev exited with {status} on SIGINT, not 0\n{}",
            self.logs()
        );
        self.wait_for(Stream::Stdout, "keel dev: stopped", Duration::from_secs(5));
        let running: Vec<u32> = self.pids.iter().copied().filter(|&p| alive(p)).collect();
        assert!(
            running.is_empty(),
            "broker pids {running:?} still run after keel dev exited\n{}",
            self.logs()
        );
    }
}

impl BrokerLogs for Dev {
    fn logs(&self) -> String {
        let lines = self.lines.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        let own: Vec<&str> = lines
            .iter()
            .filter(|(_, l)| !l.starts_with("[broker "))
            .map(|(_, l)| l.as_str())
            .collect();
        out.push(format!(
            "--- keel dev's own lines:\n{}",
            own[own.len().saturating_sub(TAIL_LINES)..].join("\n")
        ));
        for id in 1..=3 {
            let prefix = format!("[broker {id}] ");
            let mine: Vec<&str> = lines
                .iter()
                .filter(|(_, l)| l.starts_with(&prefix))
                .map(|(_, l)| l.as_str())
                .collect();
            out.push(format!(
                "--- broker {id} (last {TAIL_LINES} lines):\n{}",
                mine[mine.len().saturating_sub(TAIL_LINES)..].join("\n")
            ));
        }
        out.join("\n")
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            kill_and_reap(child);
        }
        // keel dev's children get SIGTERM when it dies (Linux); make sure, in case it hangs.
        let marker = self.data_dir.display().to_string();
        for &pid in &self.pids {
            kill_keel_start(pid, &marker);
        }
    }
}

// --- keel start x 3 ------------------------------------------------------------------------

/// Three `keel start` processes, every one a voter, each restartable with its command line.
struct Cluster {
    nodes: Vec<Node>,
    port: u16,
    /// Whether the spare broker 4 was started ([`Cluster::add_spare`]).
    spare_started: bool,
}

impl Cluster {
    /// Starts brokers 1..=3 at once (each waits for a quorum) and waits for every ready line.
    fn start(dir: &Path, overrides: &[&str]) -> Cluster {
        Cluster::start_with_spare(dir, overrides, false)
    }

    /// The same; with `spare`, every broker also knows a broker 4 as a learner of the
    /// metadata quorum, which [`Cluster::add_spare`] starts later.
    fn start_with_spare(dir: &Path, overrides: &[&str], spare: bool) -> Cluster {
        let port = common::dev::free_port_range(DEV_BROKERS_MAX);
        let voters: Vec<String> = (0..3u16)
            .map(|i| format!("{}@127.0.0.1:{}", i + 1, port + DEV_PORT_STRIDE + i))
            .collect();
        let learner = format!("4@127.0.0.1:{}", port + DEV_PORT_STRIDE + 3);
        let mut nodes = Vec::new();
        for i in 0..(if spare { 4 } else { 3 }) {
            let id = u32::from(i) + 1;
            let mut args: Vec<String> = vec![
                "start".into(),
                "--node-id".into(),
                id.to_string(),
                "--listeners".into(),
                format!("PLAINTEXT://127.0.0.1:{}", port + i),
                "--data-dir".into(),
                dir.join(format!("broker-{id}")).display().to_string(),
                "--override".into(),
                format!("controller.quorum.voters={}", voters.join(",")),
                // No metrics endpoint: the default port would be shared.
                "--override".into(),
                "keel.metrics.listener=".into(),
            ];
            if spare {
                args.push("--override".into());
                args.push(format!("keel.quorum.learners={learner}"));
            }
            for o in overrides {
                args.push("--override".into());
                args.push(o.to_string());
            }
            nodes.push(Node::new(
                id,
                args,
                format!("keel broker {id} ready on "),
                dir.join(format!("broker-{id}.log")),
            ));
        }
        let mut cluster = Cluster {
            nodes,
            port,
            spare_started: false,
        };
        for node in cluster.nodes.iter_mut().take(3) {
            node.spawn();
        }
        let deadline = Instant::now() + READY_TIMEOUT;
        for i in 0..3 {
            if let Err(e) = cluster.nodes[i].wait_ready(deadline) {
                panic!("{e}\n{}", cluster.logs());
            }
        }
        cluster
    }

    fn bootstrap(&self) -> String {
        (0..3u16)
            .map(|i| format!("127.0.0.1:{}", self.port + i))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn node(&mut self, id: u32) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no broker {id} in the cluster"))
    }

    /// Restarts broker `id` with the same command line and waits for its ready line.
    fn restart(&mut self, id: u32) {
        let node = self.node(id);
        node.spawn();
        if let Err(e) = node.wait_ready(Instant::now() + READY_TIMEOUT) {
            panic!("restarting: {e}\n{}", self.logs());
        }
    }

    /// Starts the spare broker 4 (see [`Cluster::start_with_spare`]) and waits for its ready
    /// line: it registers, and holds nothing until a reassignment gives it replicas.
    fn add_spare(&mut self) {
        self.spare_started = true;
        self.restart(4);
    }

    /// SIGTERM to every broker: each must exit 0.
    fn stop(&mut self) {
        let mut bad = Vec::new();
        let spare_started = self.spare_started;
        for node in self.nodes.iter_mut().filter(|n| n.id <= 3 || spare_started) {
            match node.stop(Duration::from_secs(30)) {
                Some(s) if s.success() => {}
                Some(s) => bad.push(format!("broker {} exited with {s} on SIGTERM", node.id)),
                None => bad.push(format!(
                    "broker {} did not exit within 30 s of SIGTERM",
                    node.id
                )),
            }
        }
        assert!(bad.is_empty(), "{}\n{}", bad.join("; "), self.logs());
    }
}

impl BrokerLogs for Cluster {
    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                format!(
                    "--- broker {} (started {} times) stderr, last {TAIL_LINES} lines:\n{}",
                    n.id,
                    n.started,
                    tail(&n.log, TAIL_LINES)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// The `FIGURES ...` line of a script's output.
fn figures(out: &str) -> &str {
    out.lines()
        .find_map(|l| l.strip_prefix("FIGURES "))
        .unwrap_or("(no FIGURES line)")
}

/// `kcat -L` through `address` lists brokers 1, 2 and 3 (retried for a few seconds: a broker's
/// metadata learns of the others through the controller).
fn kcat_lists_three_brokers(address: &str, logs: &dyn BrokerLogs) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = Command::new("kcat")
            .env_remove("LD_LIBRARY_PATH")
            .args(["-b", address, "-L", "-m", "10"])
            .stdin(Stdio::null())
            .output()
            .expect("run kcat -L");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut ids: Vec<u32> = text
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix("broker "))
            .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
            .collect();
        ids.sort_unstable();
        if out.status.success() && text.contains(" 3 brokers:") && ids == [1, 2, 3] {
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "kcat -b {address} -L: expected 3 brokers with ids 1, 2, 3, got ids {ids:?} (exit {}):\n{text}\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                logs.logs()
            );
        }
        thread::sleep(Duration::from_millis(500));
    }
}

/// `keel dev` with three brokers: `kcat -L` lists all three; a topic with replication factor 3
/// keeps every one of its 300 committed records readable, exactly once, through the survivors
/// after broker k is SIGKILLed, for each k in 1, 2, 3 (a fresh `keel dev` each time, as it does
/// not restart brokers); keel dev reports the death and keeps running, and Ctrl-C stops the
/// rest with exit 0. Kafka's committed-data guarantee: a record in every ISR member survives the
/// loss of any one replica (Kafka's `Partition.maybeIncrementLeaderHW`, KRaft's fencing in
/// `ReplicationControlManager`).
#[test]
fn keel_dev_three_brokers() {
    let Some(clients) = clients("cluster", "keel_dev_three_brokers", MODULES) else {
        return;
    };
    let started = Instant::now();
    for kill in 1..=3u32 {
        let round = Instant::now();
        let dir = tempfile::tempdir().expect("temp dir");
        let port = common::dev::free_port_range(DEV_BROKERS_MAX);
        let mut dev = Dev::start(port, &dir.path().join("data"), &FAST_FAILOVER);
        dev.wait_ready();
        say(&format!(
            "keel dev on ports {port}..{}: 3 brokers ready in {:.1?} (pids {:?})",
            port + 2,
            round.elapsed(),
            dev.pids
        ));
        kcat_lists_three_brokers(&dev.address(1), &dev);
        let args = vec![dev.bootstrap(), kill.to_string()];
        let mut script = Script::spawn(&clients, "cluster_dev_failover.py", &args, dir.path());
        let line = script.wait_for_line("KILL-NOW", Duration::from_secs(90), &dev);
        dev.kill_broker(kill);
        say(&format!("SIGKILLed broker {kill} ({line})"));
        script.send_line("KILLED");
        let out = script.expect_success(Duration::from_secs(90), &dev);
        dev.interrupt();
        say(&format!(
            "keel dev round {kill}: {} (round took {:.1?})",
            figures(&out),
            round.elapsed()
        ));
    }
    say(&format!(
        "cluster test keel_dev_three_brokers took {:.1?}",
        started.elapsed()
    ));
}

/// The test: an idempotent acks=all producer sends 20,000 numbered records to
/// replication-factor-3 partitions (min.insync.replicas=2); after ~5,000 acknowledgements the
/// leader of `orders`[0] is SIGKILLed, and restarted with the same command line seconds later.
/// Every acknowledged record is read back exactly once, in send order, at its acknowledged
/// offset; every record is acknowledged; the restarted broker is back in every ISR within 30 s
/// of its restart. Twice, with fresh clusters. Pins KIP-98 (idempotence), KIP-101 (leader
/// epochs: no committed record lost on leader change), KIP-966 (acks=all with
/// min.insync.replicas) and KIP-497 (AlterPartition: the ISR grows back).
#[test]
fn kill_the_leader() {
    const ITERATIONS: usize = 2;
    /// How long the killed leader stays down.
    const DOWN: Duration = Duration::from_secs(5);
    let Some(clients) = clients("cluster", "kill_the_leader", MODULES) else {
        return;
    };
    let started = Instant::now();
    for iteration in 1..=ITERATIONS {
        let round = Instant::now();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut overrides = FAST_FAILOVER.to_vec();
        overrides.push("replica.lag.time.max.ms=5000");
        let mut cluster = Cluster::start(dir.path(), &overrides);
        say(&format!(
            "kill_the_leader {iteration}/{ITERATIONS}: 3 brokers on {} ready in {:.1?}",
            cluster.bootstrap(),
            round.elapsed()
        ));
        let args = vec![cluster.bootstrap(), "20000".into(), "2000".into()];
        let mut script = Script::spawn(&clients, "cluster_kill_leader.py", &args, dir.path());
        let line = script.wait_for_line("KILL-NOW", Duration::from_secs(90), &cluster);
        let leader: u32 = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("leader="))
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("no leader=ID in {line:?}"));
        let killed_at = Instant::now();
        cluster.node(leader).kill();
        say(&format!("SIGKILLed broker {leader}: {line}"));
        script.send_line("KILLED");
        thread::sleep(DOWN);
        cluster.restart(leader);
        say(&format!(
            "restarted broker {leader} with the same command line: down for {:.1?}",
            killed_at.elapsed()
        ));
        script.send_line("RESTARTED");
        let out = script.expect_success(Duration::from_secs(240), &cluster);
        cluster.stop();
        say(&format!(
            "kill_the_leader {iteration}/{ITERATIONS}: {} (took {:.1?})",
            figures(&out),
            round.elapsed()
        ));
    }
    say(&format!(
        "cluster test kill_the_leader took {:.1?}",
        started.elapsed()
    ));
}

/// A consumer group survives the SIGKILL of its coordinator's broker (issue 6, item 4): on three
/// brokers, a confluent-kafka consumer commits offsets 30 of a replication-factor-3 topic; the
/// leader of the group's `__consumer_offsets` partition is SIGKILLed; the same member's commit
/// is taken by the new coordinator, which reports the offsets committed before the kill
/// exactly; the member reads on and commits 60; a new consumer resumes at exactly 60 and reads
/// the rest; and after the killed broker is restarted with the same command line (hence
/// `keel start` x 3, as `keel dev` does not restart its brokers) a third consumer resumes at
/// exactly the last commit. Every record is processed once, at its offset. Kafka's
/// `GroupMetadataManager.loadGroupsAndOffsets` on a new offsets partition leader.
#[test]
fn group_survives_coordinator_kill() {
    let Some(clients) = clients("cluster", "group_survives_coordinator_kill", MODULES) else {
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut overrides = FAST_FAILOVER.to_vec();
    overrides.push("replica.lag.time.max.ms=5000");
    // Each new consumer joins an empty group: no 3 s wait for more members.
    overrides.push("group.initial.rebalance.delay.ms=0");
    let mut cluster = Cluster::start(dir.path(), &overrides);
    say(&format!(
        "group_survives_coordinator_kill: 3 brokers on {} ready in {:.1?}",
        cluster.bootstrap(),
        started.elapsed()
    ));
    let args = vec![cluster.bootstrap()];
    let mut script = Script::spawn(&clients, "cluster_group_failover.py", &args, dir.path());
    let line = script.wait_for_line("KILL-NOW", Duration::from_secs(60), &cluster);
    let coordinator: u32 = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("coordinator="))
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no coordinator=ID in {line:?}"));
    let killed_at = Instant::now();
    cluster.node(coordinator).kill();
    say(&format!("SIGKILLed broker {coordinator}: {line}"));
    script.send_line("KILLED");
    script.wait_for_line("RESTART-NOW", Duration::from_secs(60), &cluster);
    cluster.restart(coordinator);
    say(&format!(
        "restarted broker {coordinator} with the same command line: down for {:.1?}",
        killed_at.elapsed()
    ));
    script.send_line("RESTARTED");
    let out = script.expect_success(Duration::from_secs(60), &cluster);
    cluster.stop();
    say(&format!(
        "cluster test group_survives_coordinator_kill: {} (took {:.1?})",
        figures(&out),
        started.elapsed()
    ));
}

/// A consumer group's committed offsets survive the compaction of `__consumer_offsets` and a
/// coordinator move (issue 18): with `offsets.topic.segment.bytes` small, a group commits 200
/// offsets of one partition one by one (200 versions of one key over many segments); every
/// replica of the group's offsets partition is cleaned (its `cleaner.checkpoint` written);
/// then the coordinator's broker is SIGKILLed, and the new coordinator, loading the group from
/// its compacted replica, answers the last commit, from which a new consumer resumes exactly
/// (`node/tests/interop/cluster_offsets_compaction.py`). Every wait is bounded.
#[test]
fn group_offsets_survive_compaction_and_a_coordinator_move() {
    let Some(clients) = clients(
        "cluster",
        "group_offsets_survive_compaction_and_a_coordinator_move",
        MODULES,
    ) else {
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut overrides = FAST_FAILOVER.to_vec();
    overrides.extend([
        "replica.lag.time.max.ms=5000",
        "group.initial.rebalance.delay.ms=0",
        "offsets.topic.num.partitions=3",
        "offsets.topic.segment.bytes=1024",
        "log.cleaner.backoff.ms=200",
    ]);
    let mut cluster = Cluster::start(dir.path(), &overrides);
    let args = vec![cluster.bootstrap()];
    let mut script = Script::spawn(&clients, "cluster_offsets_compaction.py", &args, dir.path());
    let line = script.wait_for_line("COMPACT-CHECK", Duration::from_secs(120), &cluster);
    let field = |name: &str| -> u32 {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name}N in {line:?}"))
    };
    let (partition, coordinator) = (field("offsets_partition="), field("coordinator="));
    // Every replica of the partition cleaned: each broker's cleaner wrote its checkpoint.
    let replica = |id: u32| {
        dir.path()
            .join(format!("broker-{id}"))
            .join(format!("__consumer_offsets-{partition}"))
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(1..=3).all(|id| replica(id).join("cleaner.checkpoint").exists()) {
        assert!(
            Instant::now() < deadline,
            "__consumer_offsets-{partition} not cleaned on every broker within 60 s\n{}",
            cluster.logs()
        );
        thread::sleep(Duration::from_millis(200));
    }
    let segments: Vec<usize> = (1..=3)
        .map(|id| {
            std::fs::read_dir(replica(id)).map_or(0, |d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
                    .count()
            })
        })
        .collect();
    say(&format!(
        "__consumer_offsets-{partition} cleaned on every broker; segments per broker {segments:?}"
    ));
    script.send_line("COMPACTED");
    script.wait_for_line("KILL-NOW", Duration::from_secs(60), &cluster);
    cluster.node(coordinator).kill();
    say(&format!("SIGKILLed broker {coordinator}, the coordinator"));
    script.send_line("KILLED");
    script.wait_for_line("RESTART-NOW", Duration::from_secs(120), &cluster);
    cluster.restart(coordinator);
    script.send_line("RESTARTED");
    let out = script.expect_success(Duration::from_secs(60), &cluster);
    cluster.stop();
    say(&format!(
        "cluster test group_offsets_survive_compaction_and_a_coordinator_move: {} (took {:.1?})",
        figures(&out),
        started.elapsed()
    ));
}

/// Transactions on `keel dev` (issue 15): the same scenario as the interop test, on three
/// brokers with replication factor 3, so that the transaction coordinator writes its markers
/// to partitions led by other brokers (peer kind WRITE_TXN_MARKERS) and those leaders verify a
/// transaction's first write with it (TXN_VERIFY).
#[test]
fn transactions_on_three_brokers() {
    let Some(clients) = clients("cluster", "transactions_on_three_brokers", MODULES) else {
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let port = common::dev::free_port_range(DEV_BROKERS_MAX);
    let mut dev = Dev::start(port, &dir.path().join("data"), &FAST_FAILOVER);
    dev.wait_ready();
    let args = vec![dev.bootstrap()];
    let script = Script::spawn(&clients, "transactions.py", &args, dir.path());
    let out = script.expect_success(Duration::from_secs(180), &dev);
    dev.interrupt();
    say(&format!(
        "cluster test transactions_on_three_brokers: {} (took {:.1?})",
        out.lines().last().unwrap_or(""),
        started.elapsed()
    ));
}

/// A rolling restart with controlled shutdown (issue 17): an idempotent acks=all
/// confluent-kafka producer keeps producing while brokers 1, 2 and 3, one at a time, get
/// SIGTERM and are restarted with the same command line, the next one only once every ISR is
/// full again. Each broker must exit 0 after its controller moved every leadership off it (its
/// log says so; a broker that gave up waiting would say otherwise), no record may fail
/// delivery, and every record is read back once, in order, at its reported offset. Pins
/// KIP-631's controlled shutdown (BrokerHeartbeat wantShutDown / shouldShutDown) and KIP-98.
#[test]
fn rolling_restart_with_controlled_shutdown() {
    /// How long a broker may take to exit after SIGTERM: its controlled shutdown plus the
    /// checkpoints, well below `keel.controlled.shutdown.max.wait.ms` (30 s).
    const STOP_MAX: Duration = Duration::from_secs(15);
    let Some(clients) = clients("cluster", "rolling_restart", MODULES) else {
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut overrides = FAST_FAILOVER.to_vec();
    overrides.push("replica.lag.time.max.ms=5000");
    let mut cluster = Cluster::start(dir.path(), &overrides);
    let args = vec![cluster.bootstrap(), "1000".into()];
    let mut script = Script::spawn(&clients, "cluster_rolling_restart.py", &args, dir.path());
    for broker in 1..=3u32 {
        let line = script.wait_for_line("STOP-NOW", Duration::from_secs(120), &cluster);
        let named: u32 = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("broker="))
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("no broker=ID in {line:?}"));
        assert_eq!(named, broker, "the script names the brokers in order");
        let stopping = Instant::now();
        let status = cluster.node(broker).stop(STOP_MAX);
        let took = stopping.elapsed();
        match status {
            Some(s) if s.success() => {}
            other => panic!(
                "broker {broker} on SIGTERM: {other:?} after {took:.1?}\n{}",
                cluster.logs()
            ),
        }
        let log = std::fs::read_to_string(&cluster.node(broker).log).unwrap_or_default();
        let handed_over = log
            .matches("controlled shutdown: this broker leads nothing now")
            .count();
        assert_eq!(
            handed_over,
            1,
            "broker {broker}'s log shows its one controlled shutdown completing\n{}",
            cluster.logs()
        );
        say(&format!(
            "broker {broker} exited 0 {took:.1?} after SIGTERM, leading nothing"
        ));
        cluster.restart(broker);
        script.send_line(&format!("RESTARTED {broker}"));
    }
    let out = script.expect_success(Duration::from_secs(300), &cluster);
    cluster.stop();
    say(&format!(
        "cluster test rolling_restart_with_controlled_shutdown: {} (took {:.1?})",
        figures(&out),
        started.elapsed()
    ));
}

/// ElectLeaders (KIP-460) through confluent-kafka's AdminClient.elect_leaders on three
/// brokers (issue 17): ELECTION_NOT_NEEDED where the preferred replica leads or a partition
/// has a leader, UNKNOWN_TOPIC_OR_PARTITION for a partition that does not exist; after the
/// preferred leader of a partition was stopped with SIGTERM and restarted (its leadership
/// moved away), a preferred election gives it back, ISR unchanged. The leader balance is off
/// (`auto.leader.rebalance.enable=false`) so that only the requests move leadership.
#[test]
fn elect_leaders_through_the_admin_api() {
    let Some(clients) = clients("cluster", "elect_leaders", MODULES) else {
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut overrides = FAST_FAILOVER.to_vec();
    overrides.push("auto.leader.rebalance.enable=false");
    let mut cluster = Cluster::start(dir.path(), &overrides);
    let args = vec![cluster.bootstrap()];
    let mut script = Script::spawn(&clients, "cluster_elect_leaders.py", &args, dir.path());
    let line = script.wait_for_line("STOP-NOW", Duration::from_secs(90), &cluster);
    let broker: u32 = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("broker="))
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no broker=ID in {line:?}"));
    match cluster.node(broker).stop(Duration::from_secs(15)) {
        Some(s) if s.success() => {}
        other => panic!("broker {broker} on SIGTERM: {other:?}\n{}", cluster.logs()),
    }
    cluster.restart(broker);
    script.send_line(&format!("RESTARTED {broker}"));
    let out = script.expect_success(Duration::from_secs(180), &cluster);
    // DescribeQuorum asked of each broker: each asks the controller (only it tracks the
    // voters' progress) and all three give the same leader and voters.
    let mut leaders = Vec::new();
    for i in 0..3 {
        let d = describe_quorum(cluster.port + i);
        let p = &d.topics[0].partitions[0];
        assert_eq!(
            (d.error_code, p.error_code),
            (0, 0),
            "broker {}: {d:?}",
            i + 1
        );
        let voters: Vec<i32> = p.current_voters.iter().map(|v| v.replica_id.0).collect();
        assert_eq!(voters, [1, 2, 3], "broker {}: {d:?}", i + 1);
        assert!(
            p.current_voters
                .iter()
                .all(|v| (0..=p.high_watermark + 1000).contains(&v.log_end_offset)),
            "{d:?}"
        );
        assert_eq!(d.nodes.len(), 3, "v2 names every voter's endpoints: {d:?}");
        leaders.push(p.leader_id.0);
    }
    assert!(
        leaders.windows(2).all(|w| w[0] == w[1]) && (1..=3).contains(&leaders[0]),
        "one controller: {leaders:?}"
    );
    cluster.stop();
    say(&format!(
        "cluster test elect_leaders_through_the_admin_api: {} (took {:.1?})",
        figures(&out),
        started.elapsed()
    ));
}

/// DescribeQuorum v2 for `__cluster_metadata` partition 0, sent to the broker on `port` over
/// a plain Kafka connection.
fn describe_quorum(port: u16) -> kafka_protocol::messages::DescribeQuorumResponse {
    use bytes::{Buf, BufMut, BytesMut};
    use kafka_protocol::messages::*;
    use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, StrBytes};
    use std::io::Write as _;
    const VERSION: i16 = 2;
    let request = DescribeQuorumRequest::default().with_topics(vec![
        describe_quorum_request::TopicData::default()
            .with_topic_name(TopicName(StrBytes::from_static_str("__cluster_metadata")))
            .with_partitions(vec![describe_quorum_request::PartitionData::default()]),
    ]);
    let header = RequestHeader::default()
        .with_request_api_key(ApiKey::DescribeQuorum as i16)
        .with_request_api_version(VERSION)
        .with_correlation_id(7)
        .with_client_id(Some(StrBytes::from_static_str("cluster-test")));
    let mut body = BytesMut::new();
    header
        .encode(&mut body, DescribeQuorumRequest::header_version(VERSION))
        .expect("encode header");
    request.encode(&mut body, VERSION).expect("encode request");
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut frame = BytesMut::new();
    frame.put_i32(body.len() as i32);
    frame.extend_from_slice(&body);
    stream.write_all(&frame).expect("write");
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).expect("read size");
    let mut answer = vec![0u8; i32::from_be_bytes(size) as usize];
    stream.read_exact(&mut answer).expect("read answer");
    let mut answer = bytes::Bytes::from(answer);
    let header =
        ResponseHeader::decode(&mut answer, DescribeQuorumResponse::header_version(VERSION))
            .expect("decode header");
    assert_eq!(header.correlation_id, 7);
    let response = DescribeQuorumResponse::decode(&mut answer, VERSION).expect("decode");
    assert!(!answer.has_remaining(), "trailing bytes");
    response
}

/// A script's `FINAL topic=NAME p0=1,2,3 p1=...` line: the topic and each partition's replicas
/// as the metadata had them at the end.
struct FinalAssignment {
    topic: String,
    partitions: Vec<(u32, Vec<u32>)>,
}

fn final_assignment(out: &str) -> FinalAssignment {
    let line = out
        .lines()
        .find_map(|l| l.strip_prefix("FINAL "))
        .unwrap_or_else(|| panic!("no FINAL line in the script's output:\n{out}"));
    let mut words = line.split_whitespace();
    let topic = words
        .next()
        .and_then(|w| w.strip_prefix("topic="))
        .unwrap_or_else(|| panic!("no topic= in {line:?}"))
        .to_string();
    let partitions = words
        .map(|word| {
            let (p, replicas) = word
                .strip_prefix('p')
                .and_then(|w| w.split_once('='))
                .unwrap_or_else(|| panic!("bad word {word:?} in {line:?}"));
            let p = p
                .parse()
                .unwrap_or_else(|_| panic!("bad partition in {word:?}"));
            let replicas = replicas
                .split(',')
                .map(|r| {
                    r.parse()
                        .unwrap_or_else(|_| panic!("bad replica in {word:?}"))
                })
                .collect();
            (p, replicas)
        })
        .collect();
    FinalAssignment { topic, partitions }
}

/// Waits (15 s at most) until each of brokers 1..=`brokers` holds a directory for exactly the
/// partitions `assignment` gives it: a removed replica's directory is deleted once its broker
/// has applied the change, which may come a little after the script's end.
fn wait_for_partition_directories(
    data: &Path,
    assignment: &FinalAssignment,
    brokers: u32,
    cluster: &Cluster,
) {
    let mut expected = Vec::new();
    for (p, replicas) in &assignment.partitions {
        for broker in 1..=brokers {
            let path = data
                .join(format!("broker-{broker}"))
                .join(format!("{}-{p}", assignment.topic));
            expected.push((broker, path, replicas.contains(&broker)));
        }
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let wrong: Vec<String> = expected
            .iter()
            .filter(|(_, path, assigned)| path.is_dir() != *assigned)
            .map(|(broker, path, assigned)| {
                format!(
                    "broker {broker}: {} {}",
                    path.display(),
                    if *assigned { "missing" } else { "still there" }
                )
            })
            .collect();
        if wrong.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "partition directories: {wrong:?}\n{}",
            cluster.logs()
        );
        thread::sleep(Duration::from_millis(200));
    }
}

/// Partition reassignment (KIP-455, issue 17) through kafka-python's KafkaAdminClient on
/// three brokers while an idempotent acks=all confluent-kafka producer writes throughout: bad
/// input refused with Kafka's codes; a partition moved off its leader, one grown, one whose
/// follower is replaced, then the grown one shrunk without its leader; afterwards nothing
/// acknowledged is missing or duplicated, no reassignment is listed, the replica sets are as
/// asked, and each broker holds a partition directory exactly for the replicas assigned to it
/// (a removed replica's directory is deleted once the change that removed it is committed).
/// Kafka's `ReplicationControlManager.alterPartitionReassignments`.
#[test]
fn reassignment_under_an_idempotent_producer() {
    let Some(clients) = clients("cluster", "reassign", "confluent_kafka, kafka") else {
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut overrides = FAST_FAILOVER.to_vec();
    overrides.push("auto.leader.rebalance.enable=false");
    let mut cluster = Cluster::start(dir.path(), &overrides);
    let args = vec![cluster.bootstrap(), "500".into()];
    let script = Script::spawn(&clients, "cluster_reassign.py", &args, dir.path());
    let out = script.expect_success(Duration::from_secs(300), &cluster);
    let assignment = final_assignment(&out);
    assert_eq!(assignment.partitions.len(), 3, "three partitions: {out}");
    // The last removal may still be applying on the removed broker.
    wait_for_partition_directories(dir.path(), &assignment, 3, &cluster);
    cluster.stop();
    say(&format!(
        "cluster test reassignment_under_an_idempotent_producer: {} (took {:.1?})",
        figures(&out),
        started.elapsed()
    ));
}

/// A broker joins and another leaves under load (issue 17): three `keel start` brokers that
/// know a fourth as a learner of the metadata quorum; the fourth is started while the clients
/// run, the script moves
/// a topic's partitions onto it with `keel partitions reassign --generate --execute` and then
/// drains broker 3 with `keel broker decommission 3` (reassignments, then UnregisterBroker,
/// KIP-631), while an idempotent confluent-kafka producer and an idempotent kafka-python
/// producer write and a kafka-python consumer reads: nothing fails, nothing is lost or
/// duplicated, and each broker ends with exactly the partition directories the metadata
/// assigns it (broker 3 none).
#[test]
fn brokers_join_and_leave_under_producers() {
    let Some(clients) = clients("cluster", "grow and drain", "confluent_kafka, kafka") else {
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let mut overrides = FAST_FAILOVER.to_vec();
    overrides.push("auto.leader.rebalance.enable=false");
    let mut cluster = Cluster::start_with_spare(dir.path(), &overrides, true);
    let args = vec![cluster.bootstrap(), keel_bin().to_string(), "400".into()];
    let mut script = Script::spawn(&clients, "cluster_grow_and_drain.py", &args, dir.path());
    script.wait_for_line("ADD-BROKER", Duration::from_secs(120), &cluster);
    cluster.add_spare();
    script.send_line("ADDED");
    let out = script.expect_success(Duration::from_secs(600), &cluster);
    let assignment = final_assignment(&out);
    assert_eq!(assignment.partitions.len(), 4, "four partitions: {out}");
    for (p, replicas) in &assignment.partitions {
        assert!(
            !replicas.contains(&3),
            "broker 3 still assigned partition {p}: {out}"
        );
    }
    wait_for_partition_directories(dir.path(), &assignment, 4, &cluster);
    cluster.stop();
    say(&format!(
        "cluster test brokers_join_and_leave_under_producers: {} (took {:.1?})",
        figures(&out),
        started.elapsed()
    ));
}

/// Exactly-once consume-transform-produce on `keel dev` (issue 15): a confluent-kafka group
/// member and a transactional producer commit the member's positions with
/// `send_offsets_to_transaction` (TxnOffsetCommit, whose records the group's coordinator
/// holds until the COMMIT marker reaches its `__consumer_offsets` partition, possibly led by
/// another broker than the transaction coordinator), aborting every third transaction: the
/// committed offsets move only with commits, and the output holds every input record exactly
/// once. Kafka's `GroupCoordinator.handleTxnCommitOffsets`, KIP-447.
#[test]
fn exactly_once_consume_transform_produce_on_three_brokers() {
    let Some(clients) = clients(
        "cluster",
        "exactly_once_consume_transform_produce_on_three_brokers",
        MODULES,
    ) else {
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let port = common::dev::free_port_range(DEV_BROKERS_MAX);
    let mut dev = Dev::start(port, &dir.path().join("data"), &FAST_FAILOVER);
    dev.wait_ready();
    let args = vec![dev.bootstrap()];
    let script = Script::spawn(&clients, "eos_transform.py", &args, dir.path());
    let out = script.expect_success(Duration::from_secs(240), &dev);
    dev.interrupt();
    say(&format!(
        "cluster test exactly_once_consume_transform_produce_on_three_brokers: {} (took {:.1?})",
        out.lines()
            .find(|l| l.starts_with("processed"))
            .unwrap_or(""),
        started.elapsed()
    ));
}
