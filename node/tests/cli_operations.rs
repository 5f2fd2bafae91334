//! The cluster operation commands (docs/cli.md: `keel partitions`, `keel broker`, `keel
//! leaders`) and `keel dev --spare` / `--add-broker`, run as a user runs them: the real `keel`
//! binary against a `keel dev --brokers 3 --spare 1` cluster to which a second `keel dev
//! --add-broker` adds broker 4. One test, in order, because each step changes the cluster the
//! next one sees: bad input first (refused with Kafka's error names, nothing changed), then a
//! generated plan printed, a plan file run, progress listed, leaders elected, broker 4
//! decommissioned, and the refusals a decommission owes.
//!
//! Both `keel dev` processes are spawned from threads that live as long as the test process,
//! with PR_SET_PDEATHSIG, so they die with it however it ends, and take their brokers along.

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long `keel dev` has to report its brokers ready.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// The longest one CLI command may run in this test.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

fn keel_bin() -> &'static str {
    env!("CARGO_BIN_EXE_keel")
}

/// A port P such that P..P+3, P+100..P+103 and P+200..P+203 are free: four brokers' client,
/// peer and metrics ports.
fn free_port_range() -> u16 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let seed = u64::from(std::process::id()) ^ u64::from(nanos);
    let mut candidate = 20_000 + (seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as u16 % 9_000;
    for _ in 0..200 {
        let ports = (0..4).flat_map(|i| (0..3).map(move |k| candidate + k * 100 + i));
        let held: Result<Vec<TcpListener>, _> =
            ports.map(|p| TcpListener::bind(("127.0.0.1", p))).collect();
        if held.is_ok() {
            return candidate;
        }
        candidate = 20_000 + (candidate - 20_000 + 37) % 9_000;
    }
    panic!("no free range of 4 x 3 ports in 20000..29300 after 200 tries");
}

/// Spawns `keel dev ARGS` for the life of the test process; returns once its stdout printed
/// `ready` (the line after it that names the bootstrap servers is returned).
fn dev(args: Vec<String>, ready: &str) -> String {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut command = Command::new(keel_bin());
        command
            .arg("dev")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = command.spawn().expect("spawn keel dev");
        let stdout = child.stdout.take().expect("piped stdout");
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
        let _ = child.wait();
        loop {
            thread::park();
        }
    });
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut seen = Vec::new();
    let mut was_ready = false;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.starts_with(ready) => was_ready = true,
            Ok(line) if was_ready && line.starts_with("bootstrap servers: ") => {
                return line["bootstrap servers: ".len()..].trim().to_string();
            }
            Ok(line) => seen.push(line),
            Err(e) => panic!("keel dev was not ready ({e}); it printed {seen:?}"),
        }
    }
}

/// What one command did.
struct Run {
    status: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(&self, what: &str) -> &str {
        assert_eq!(
            self.status,
            Some(0),
            "{what} failed\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        assert!(!self.stderr.contains("panicked"), "{what}: {}", self.stderr);
        &self.stdout
    }

    /// Exit `code`, a last stderr line containing `needle`, no panic.
    fn fails(&self, code: i32, needle: &str, what: &str) {
        assert_eq!(
            self.status,
            Some(code),
            "{what}: want exit {code}\nstdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        assert!(
            self.stderr.contains(needle),
            "{what}: stderr {:?} does not name {needle:?}",
            self.stderr
        );
        assert!(!self.stderr.contains("panicked"), "{what}: {}", self.stderr);
    }

    fn json(&self, what: &str) -> serde_json::Value {
        serde_json::from_str(self.ok(what))
            .unwrap_or_else(|e| panic!("{what}: stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

fn finish(mut child: Child, what: &str) -> Run {
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out = thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {COMMAND_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    Run {
        status: status.code(),
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

fn keel(bootstrap: &str, args: &[&str]) -> Run {
    let what = format!("keel {}", args.join(" "));
    let child = Command::new(keel_bin())
        .args(args)
        .env("KEEL_BROKERS", bootstrap)
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    finish(child, &what)
}

/// `keel topic describe TOPIC -o json`'s partitions: (replicas, isr, leader).
fn replicas(bootstrap: &str, topic: &str) -> Vec<(Vec<i64>, Vec<i64>, i64)> {
    let d = keel(bootstrap, &["topic", "describe", topic, "-o", "json"]).json("describe");
    let ids = |v: &serde_json::Value| -> Vec<i64> {
        v.as_array()
            .expect("an array of ids")
            .iter()
            .map(|x| x.as_i64().expect("an id"))
            .collect()
    };
    d["partitions"]
        .as_array()
        .expect("partitions")
        .iter()
        .map(|p| {
            (
                ids(&p["replicas"]),
                ids(&p["isr"]),
                p["leader"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a plan file");
    path
}

/// Reference: KIP-455 (AlterPartitionReassignments, ListPartitionReassignments), KIP-460
/// (ElectLeaders), KIP-631 (UnregisterBroker); kafka-reassign-partitions.sh's plan format.
#[test]
fn operations_add_move_elect_and_decommission_against_keel_dev() {
    let port = free_port_range();
    let data_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("cli-operations-dev");
    let _ = std::fs::remove_dir_all(&data_dir);
    let layout: Vec<String> = [
        "--brokers",
        "3",
        "--spare",
        "1",
        "--port",
        &port.to_string(),
        "--data-dir",
        &data_dir.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let bootstrap = dev(layout.clone(), "keel dev: 3 brokers ready");
    let mut adding = layout.clone();
    adding.push("--add-broker".into());
    let added = dev(adding, "keel dev: 1 broker ready");
    assert_eq!(added, format!("127.0.0.1:{}", port + 3));
    let b = bootstrap.as_str();
    // Broker 4 registered; it holds nothing yet.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let d = keel(b, &["cluster", "describe", "-o", "json"]).json("cluster describe");
        let ids: Vec<i64> = d["brokers"]
            .as_array()
            .expect("brokers")
            .iter()
            .filter_map(|x| x["id"].as_i64())
            .collect();
        if ids.contains(&4) {
            break;
        }
        assert!(Instant::now() < deadline, "broker 4 never registered: {d}");
        thread::sleep(Duration::from_millis(300));
    }
    let plan_dir = tempfile::tempdir().expect("temp dir");
    keel(b, &["topic", "create", "ops", "-p", "4", "-r", "3"]).ok("topic create");
    // A group commit creates __consumer_offsets, for the internal-topic refusal below.
    keel(b, &["consume", "ops", "-g", "ops-group"]).ok("consume with a group");
    let before = replicas(b, "ops");
    assert_eq!(before.len(), 4);

    // --- bad input: refused, nothing changed ---------------------------------------------
    let bad = write(
        plan_dir.path(),
        "bad.json",
        "{\"version\":1,\"partitions\":[",
    );
    keel(
        b,
        &["partitions", "reassign", "--plan", bad.to_str().unwrap()],
    )
    .fails(2, "--plan", "a plan that is not JSON");
    let twice = write(
        plan_dir.path(),
        "twice.json",
        r#"{"version":1,"partitions":[{"topic":"ops","partition":0,"replicas":[1,2,3]},
            {"topic":"ops","partition":0,"replicas":[2,3,4]}]}"#,
    );
    keel(
        b,
        &["partitions", "reassign", "--plan", twice.to_str().unwrap()],
    )
    .fails(2, "twice", "a partition twice in the plan");
    for (name, plan, error) in [
        (
            "unknown",
            r#"{"version":1,"partitions":[{"topic":"ops","partition":0,"replicas":[1,2,9]}]}"#,
            "INVALID_REPLICA_ASSIGNMENT",
        ),
        (
            "duplicate",
            r#"{"version":1,"partitions":[{"topic":"ops","partition":0,"replicas":[1,1,2]}]}"#,
            "INVALID_REPLICA_ASSIGNMENT",
        ),
        (
            "empty",
            r#"{"version":1,"partitions":[{"topic":"ops","partition":0,"replicas":[]}]}"#,
            "INVALID_REPLICA_ASSIGNMENT",
        ),
        (
            "missing",
            r#"{"version":1,"partitions":[{"topic":"ops","partition":9,"replicas":[1,2,3]}]}"#,
            "UNKNOWN_TOPIC_OR_PARTITION",
        ),
        (
            "internal",
            r#"{"version":1,"partitions":[{"topic":"__consumer_offsets","partition":0,"replicas":[1]}]}"#,
            "INVALID_REPLICA_ASSIGNMENT",
        ),
    ] {
        let path = write(plan_dir.path(), &format!("{name}.json"), plan);
        keel(
            b,
            &["partitions", "reassign", "--plan", path.to_str().unwrap()],
        )
        .fails(1, error, name);
    }
    keel(b, &["partitions", "reassign", "--generate"]).fails(
        2,
        "--broker-ids",
        "--generate without brokers",
    );
    keel(
        b,
        &[
            "partitions",
            "reassign",
            "--generate",
            "--broker-ids",
            "1,9",
        ],
    )
    .fails(
        1,
        "broker 9 is not among",
        "--generate onto an unknown broker",
    );
    keel(
        b,
        &[
            "partitions",
            "reassign",
            "--generate",
            "--broker-ids",
            "1,2",
            "-t",
            "ops",
        ],
    )
    .fails(1, "only 2 brokers", "--generate onto too few brokers");
    assert_eq!(replicas(b, "ops"), before, "refusals changed nothing");

    // --- a generated plan, printed only ---------------------------------------------------
    let printed = keel(
        b,
        &[
            "partitions",
            "reassign",
            "--generate",
            "--broker-ids",
            "2,3,4",
            "-t",
            "ops",
        ],
    )
    .json("generate");
    let entries = printed["partitions"].as_array().expect("plan partitions");
    assert_eq!(entries.len(), 4, "{printed}");
    let mut leaders = std::collections::BTreeMap::new();
    for e in entries {
        let r: Vec<i64> = e["replicas"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect();
        assert_eq!(r.len(), 3, "{e}");
        assert!(r.iter().all(|x| [2, 3, 4].contains(x)), "{e}");
        *leaders.entry(r[0]).or_insert(0) += 1;
    }
    assert!(
        leaders.values().all(|c| *c <= 2),
        "leaders spread: {leaders:?}"
    );
    assert_eq!(
        replicas(b, "ops"),
        before,
        "printing a plan changes nothing"
    );

    // --- a plan file run, and its progress --------------------------------------------------
    let moved = write(
        plan_dir.path(),
        "moved.json",
        r#"{"version":1,"partitions":[{"topic":"ops","partition":0,"replicas":[4,2,1]},
            {"topic":"ops","partition":1,"replicas":[4,3,2],"log_dirs":["any","any","any"]}]}"#,
    );
    let run = keel(
        b,
        &[
            "partitions",
            "reassign",
            "--plan",
            moved.to_str().unwrap(),
            "--wait",
            "60",
        ],
    );
    run.ok("reassign --plan");
    assert!(
        run.stderr.contains("every reassignment completed"),
        "{}",
        run.stderr
    );
    let after = replicas(b, "ops");
    assert_eq!(after[0].0, [4, 2, 1]);
    assert_eq!(after[1].0, [4, 3, 2]);
    assert_eq!(after[2], before[2]);
    let listed = keel(b, &["partitions", "reassignments"]);
    listed.ok("reassignments");
    assert!(
        listed.stderr.contains("no reassignment in progress"),
        "{}",
        listed.stderr
    );
    assert_eq!(
        keel(b, &["partitions", "reassignments", "-o", "json"]).json("reassignments json"),
        serde_json::json!([])
    );
    keel(b, &["partitions", "reassignments", "-t", "nope"]).fails(
        1,
        "UNKNOWN_TOPIC_OR_PARTITION",
        "reassignments of an unknown topic",
    );

    // --- leaders -----------------------------------------------------------------------------
    let elected = keel(
        b,
        &["leaders", "elect", "--preferred", "-t", "ops", "-o", "json"],
    )
    .json("leaders elect --preferred");
    let rows = elected.as_array().expect("rows");
    assert_eq!(rows.len(), 4, "{elected}");
    assert!(
        rows.iter()
            .all(|r| r["result"] == "elected" || r["result"] == "not needed"),
        "{elected}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while replicas(b, "ops")
        .iter()
        .any(|(r, _, leader)| r[0] != *leader)
    {
        assert!(
            Instant::now() < deadline,
            "preferred leaders: {:?}",
            replicas(b, "ops")
        );
        thread::sleep(Duration::from_millis(300));
    }
    let again = keel(b, &["leaders", "elect"]);
    again.ok("leaders elect (everything)");
    let unclean = keel(
        b,
        &["leaders", "elect", "--unclean", "-t", "ops", "-p", "0"],
    );
    unclean.ok("leaders elect --unclean");
    assert!(unclean.stdout.contains("not needed"), "{}", unclean.stdout);
    assert!(
        unclean.stderr.contains("lost"),
        "the data-loss warning: {}",
        unclean.stderr
    );
    keel(b, &["leaders", "elect", "-t", "nope"]).fails(
        1,
        "UNKNOWN_TOPIC_OR_PARTITION",
        "elect on an unknown topic",
    );

    // --- decommission ------------------------------------------------------------------------
    // Broker 4 now holds replicas (partitions 0 and 1 at least): they move to 1, 2 and 3.
    let drained = keel(b, &["broker", "decommission", "4", "--wait", "90"]);
    drained.ok("broker decommission 4");
    assert!(
        drained.stderr.contains("unregistered"),
        "{}",
        drained.stderr
    );
    for (r, isr, leader) in replicas(b, "ops") {
        assert!(!r.contains(&4) && r.len() == 3, "{r:?}");
        assert!(leader >= 0 && !isr.is_empty(), "{r:?} {isr:?} {leader}");
    }
    let d = keel(b, &["cluster", "describe", "-o", "json"]).json("cluster describe");
    assert!(
        !d["brokers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["id"] == 4),
        "broker 4 unregistered: {d}"
    );
    keel(b, &["broker", "decommission", "4"]).fails(
        1,
        "BROKER_ID_NOT_REGISTERED",
        "decommissioning it again",
    );
    // Three brokers left and three replicas per partition: no broker can go.
    keel(b, &["broker", "decommission", "1"]).fails(
        1,
        "cannot move every replica off broker 1",
        "decommissioning below the replication factor",
    );
    assert!(replicas(b, "ops").iter().all(|(r, _, _)| r.contains(&1)));
}
