//! `keel consume --follow` and `keel produce` across a leader's crash: a `keel dev` cluster of
//! its own (the shared one of `cli_commands.rs` must keep all its brokers), the leader of the
//! topic's one partition SIGKILLed while a follower is attached; the producer must get its
//! records in at the new leader, and the follower must print them, reading on from where it
//! was at the new leader (docs/cli.md, "keel consume").
//!
//! The test owns every process: `keel dev` is SIGKILLed by a guard if the test panics, and its
//! brokers die with it (their PR_SET_PDEATHSIG).

#[allow(dead_code)] // shared with interop.rs and cluster.rs, which use the rest
mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::thread;
use std::time::{Duration, Instant};

use common::dev::free_port_range;
use common::keel_bin;

const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// Fenced after 3 s of silence, so the partition gets a new leader quickly.
const FAST_FAILOVER: [&str; 2] = [
    "broker.session.timeout.ms=3000",
    "broker.heartbeat.interval.ms=500",
];

/// A child SIGKILLed and reaped when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The lines of a child's stdout, as they come.
fn lines_of(child: &mut Child) -> Receiver<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    rx
}

/// Runs `keel ARGS` with `stdin` against `bootstrap`; asserts it exits 0 within 60 s.
fn keel(bootstrap: &str, args: &[&str], stdin: &str) -> String {
    let mut child = Command::new(keel_bin())
        .args(args)
        .env("KEEL_BROKERS", bootstrap)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn keel");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("keel {} did not finish within 60 s", args.join(" "));
        }
        thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    assert!(
        out.status.success(),
        "keel {} failed: {}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Receives lines until `want` distinct values were seen; panics after `timeout`.
fn collect(rx: &Receiver<String>, seen: &mut BTreeSet<String>, want: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while seen.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                seen.insert(line);
            }
            Err(e) => panic!(
                "the follower printed {} of {want} records ({e})",
                seen.len()
            ),
        }
    }
}

#[test]
fn consume_follow_and_produce_carry_on_when_the_leader_is_killed() {
    let port = free_port_range(3);
    let data_dir = tempfile::tempdir().expect("tempdir");
    let mut command = Command::new(keel_bin());
    command
        .args(["dev", "--brokers", "3", "--port", &port.to_string()])
        .arg("--data-dir")
        .arg(data_dir.path());
    for o in FAST_FAILOVER {
        command.args(["--override", o]);
    }
    let mut dev = Guard(
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn keel dev"),
    );
    let dev_lines = lines_of(&mut dev.0);
    let mut pids = Vec::new();
    let bootstrap = loop {
        let line = dev_lines
            .recv_timeout(READY_TIMEOUT)
            .expect("keel dev ready in time");
        if let Some(rest) = line.strip_prefix("  broker ") {
            // `  broker ID  ADDR  pid PID  data DIR`
            let id: u32 = rest.split_whitespace().next().unwrap().parse().unwrap();
            let pid: i32 = rest
                .split("pid ")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap();
            pids.push((id, pid));
        }
        if let Some(b) = line.strip_prefix("bootstrap servers: ") {
            break b.trim().to_string();
        }
    };
    assert_eq!(pids.len(), 3, "{pids:?}");

    keel(
        &bootstrap,
        &["topic", "create", "moves", "-p", "1", "-r", "3"],
        "",
    );
    let first: String = (0..100).map(|i| format!("r{i:03}\n")).collect();
    keel(&bootstrap, &["produce", "moves"], &first);

    let mut follower = Guard(
        Command::new(keel_bin())
            .args(["consume", "moves", "--follow"])
            .env("KEEL_BROKERS", &bootstrap)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the follower"),
    );
    let followed = lines_of(&mut follower.0);
    let mut seen = BTreeSet::new();
    collect(&followed, &mut seen, 100, Duration::from_secs(30));

    let described: serde_json::Value = serde_json::from_str(&keel(
        &bootstrap,
        &["topic", "describe", "moves", "-o", "json"],
        "",
    ))
    .expect("JSON");
    let leader = described["partitions"][0]["leader"]
        .as_u64()
        .expect("a leader") as u32;
    let (_, pid) = *pids
        .iter()
        .find(|(id, _)| *id == leader)
        .expect("leader's pid");
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("start"),
        "pid {pid} is not broker {leader}'s keel start"
    );
    // SAFETY: kill(2) on the broker pid keel dev reported, checked above to be a keel start.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }

    // acks=all: the two brokers left are enough for min.insync.replicas=2 once one leads.
    let second: String = (100..200).map(|i| format!("r{i:03}\n")).collect();
    keel(&bootstrap, &["produce", "moves"], &second);
    collect(&followed, &mut seen, 200, Duration::from_secs(60));
    let want: BTreeSet<String> = (0..200).map(|i| format!("r{i:03}")).collect();
    assert_eq!(seen, want);
    let now: serde_json::Value = serde_json::from_str(&keel(
        &bootstrap,
        &["topic", "describe", "moves", "-o", "json"],
        "",
    ))
    .expect("JSON");
    assert_ne!(
        now["partitions"][0]["leader"].as_u64(),
        Some(u64::from(leader))
    );
}
