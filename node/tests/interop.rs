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
//! The tests run one at a time (a lock), so their timings do not depend on each other.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

const NODE_ID: i32 = 1;
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Writes a line straight to stderr, past the test harness's capture (which hides the output
/// of passing tests), so skips and timings show in every run.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("node/ has a parent")
        .to_path_buf()
}

fn keel_bin() -> &'static str {
    env!("CARGO_BIN_EXE_keel")
}

/// Where the clients are.
struct Clients {
    python: PathBuf,
    scripts: PathBuf,
}

/// The installed clients, or None (after saying so) when KEEL_SKIP_INTEROP=1. Panics, naming
/// `.ci/clients.sh`, when a client is missing.
fn clients(test: &str) -> Option<Clients> {
    if std::env::var("KEEL_SKIP_INTEROP").as_deref() == Ok("1") {
        say(&format!(
            "interop test {test} SKIPPED (KEEL_SKIP_INTEROP=1)"
        ));
        return None;
    }
    let root = repo_root();
    let python = root.join(".venv/bin/python");
    let mut missing = Vec::new();
    let imports = Command::new(&python)
        .args([
            "-c",
            "import confluent_kafka, kafka, snappy, lz4.frame, zstandard",
        ])
        .stdin(Stdio::null())
        .output();
    match imports {
        Ok(out) if out.status.success() => {}
        Ok(out) => missing.push(format!(
            "{} cannot import the clients: {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => missing.push(format!("{}: {e}", python.display())),
    }
    match Command::new("kcat").arg("-V").stdin(Stdio::null()).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => missing.push(format!("kcat -V exited with {}", out.status)),
        Err(e) => missing.push(format!("kcat: {e}")),
    }
    if !missing.is_empty() {
        panic!(
            "interop test {test}: the Kafka clients are not installed ({}). Run `bash .ci/clients.sh` \
             from the repository root (or set KEEL_SKIP_INTEROP=1 to skip these tests).",
            missing.join("; ")
        );
    }
    Some(Clients {
        python,
        scripts: root.join("node/tests/interop"),
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

fn tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One `keel start` process; stderr goes to `log` (appended across restarts).
struct Broker {
    child: Option<Child>,
    port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    started: usize,
}

impl Broker {
    fn start(data_dir: &Path, log: &Path, port: u16) -> Broker {
        let mut broker = Broker {
            child: None,
            port,
            data_dir: data_dir.to_path_buf(),
            log: log.to_path_buf(),
            started: 0,
        };
        broker.spawn();
        broker
    }

    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the process and waits (bounded) for its ready line.
    fn spawn(&mut self) {
        assert!(self.child.is_none(), "broker already running");
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("broker log file");
        let mut child = Command::new(keel_bin())
            .arg("start")
            .args(["--node-id", &NODE_ID.to_string()])
            .args([
                "--listeners",
                &format!("PLAINTEXT://127.0.0.1:{}", self.port),
            ])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {} start: {e}", keel_bin()));
        self.started += 1;
        let stdout = child.stdout.take().expect("piped stdout");
        self.child = Some(child);
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Nobody listens any more; keep draining so the broker never blocks.
                    continue;
                }
            }
        });
        let want = format!("keel broker {NODE_ID} ready on 127.0.0.1:{}", self.port);
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with(&want) => break,
                Ok(line) => seen.push(line),
                Err(RecvTimeoutError::Timeout) => panic!(
                    "keel start (start #{}) printed no `{want}` line within {READY_TIMEOUT:?}; stdout so far: {seen:?}\n\
                     broker stderr (tail):\n{}",
                    self.started,
                    tail(&self.log, 40)
                ),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.as_mut().and_then(|c| c.wait().ok());
                    self.child = None;
                    panic!(
                        "keel start (start #{}) closed stdout before `{want}` (exit: {status:?}); stdout: {seen:?}\n\
                         broker stderr (tail):\n{}",
                        self.started,
                        tail(&self.log, 40)
                    );
                }
            }
        }
    }

    /// SIGKILL: a crash.
    fn kill(&mut self) {
        let mut child = self.child.take().expect("broker running");
        child.kill().expect("SIGKILL the broker");
        child.wait().expect("reap the broker");
    }

    /// SIGTERM, and the broker must exit 0 within STOP_TIMEOUT.
    fn stop(&mut self) {
        let mut child = self.child.take().expect("broker running");
        let status = terminate(&mut child, STOP_TIMEOUT);
        match status {
            Some(s) if s.success() => {}
            Some(s) => panic!(
                "keel did not exit 0 on SIGTERM: {s}\nbroker stderr (tail):\n{}",
                tail(&self.log, 40)
            ),
            None => panic!(
                "keel did not exit within {STOP_TIMEOUT:?} of SIGTERM (killed it)\nbroker stderr (tail):\n{}",
                tail(&self.log, 40)
            ),
        }
    }

    fn log_tail(&self) -> String {
        tail(&self.log, 40)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Sends SIGTERM and waits; None (after SIGKILL) if the process outlives `timeout`.
fn terminate(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// A running client process whose stdout and stderr are collected (and echoed to the test's
/// output, which cargo shows for a failing test) line by line.
struct Script {
    name: String,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    readers: Vec<JoinHandle<Vec<String>>>,
    started: Instant,
}

impl Script {
    fn spawn(clients: &Clients, script: &str, args: &[String], cwd: &Path) -> Script {
        let path = clients.scripts.join(script);
        let mut child = Command::new(&clients.python)
            .arg(&path)
            .args(args)
            .current_dir(cwd)
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", path.display()));
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let name = script.to_string();
        let out_name = name.clone();
        let out_reader = thread::spawn(move || {
            let mut all = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                eprintln!("[{out_name}] {line}");
                let _ = tx.send(line.clone());
                all.push(line);
            }
            all
        });
        let err_name = name.clone();
        let err_reader = thread::spawn(move || {
            let mut all = Vec::new();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                eprintln!("[{err_name} stderr] {line}");
                all.push(line);
            }
            all
        });
        Script {
            name,
            stdin: child.stdin.take(),
            child: Some(child),
            lines: rx,
            readers: vec![out_reader, err_reader],
            started: Instant::now(),
        }
    }

    /// Waits for a stdout line starting with `prefix`; panics on timeout or if the script ends.
    fn wait_for_line(&mut self, prefix: &str, timeout: Duration, broker: &Broker) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    let out = self.finish_after_kill();
                    panic!(
                        "{}: no `{prefix}` line within {timeout:?}\n{out}\nbroker stderr (tail):\n{}",
                        self.name,
                        broker.log_tail()
                    );
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let (status, out) = self.wait(Duration::from_secs(10));
                    panic!(
                        "{}: ended ({status:?}) before printing `{prefix}`\n{out}\nbroker stderr (tail):\n{}",
                        self.name,
                        broker.log_tail()
                    );
                }
            }
        }
    }

    fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("script stdin");
        writeln!(stdin, "{line}").expect("write to the script's stdin");
        stdin.flush().expect("flush the script's stdin");
    }

    /// Waits (bounded) for the script to exit; returns its status (None: timed out and
    /// killed) and its whole output.
    fn wait(&mut self, timeout: Duration) -> (Option<ExitStatus>, String) {
        self.stdin = None;
        let mut child = self.child.take().expect("script running");
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break Some(status);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            thread::sleep(Duration::from_millis(50));
        };
        (status, self.collect())
    }

    fn finish_after_kill(&mut self) -> String {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.collect()
    }

    fn collect(&mut self) -> String {
        let mut parts = Vec::new();
        for (what, reader) in ["stdout", "stderr"].iter().zip(self.readers.drain(..)) {
            let lines = reader.join().unwrap_or_default();
            parts.push(format!("--- {} {what}:\n{}", self.name, lines.join("\n")));
        }
        parts.join("\n")
    }

    /// Waits for a successful exit; panics with the output and the broker's log otherwise.
    /// Returns the script's stdout and stderr.
    fn expect_success(mut self, timeout: Duration, broker: &Broker) -> String {
        let (status, out) = self.wait(timeout);
        let elapsed = self.started.elapsed();
        match status {
            Some(s) if s.success() => {
                eprintln!("{} passed in {elapsed:.1?}", self.name);
                out
            }
            Some(s) => panic!(
                "{} failed ({s}) after {elapsed:.1?}\n{out}\nbroker stderr (tail):\n{}",
                self.name,
                broker.log_tail()
            ),
            None => panic!(
                "{} did not finish within {timeout:?} (killed)\n{out}\nbroker stderr (tail):\n{}",
                self.name,
                broker.log_tail()
            ),
        }
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
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
        let started = Instant::now();
        let dir = tempfile::tempdir().expect("temp dir");
        let broker = Broker::start(
            &dir.path().join("data"),
            &dir.path().join("broker.log"),
            free_port(),
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
    let _serial = serial();
    let Some(clients) = clients("confluent_kafka") else {
        return;
    };
    let setup = Setup::new();
    setup.run(
        &clients,
        "confluent_roundtrip.py",
        &[],
        Duration::from_secs(120),
    );
    setup.finish("confluent_kafka");
}

#[test]
fn kafka_python_admin_produce_and_assign_consume() {
    let _serial = serial();
    let Some(clients) = clients("kafka_python") else {
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

#[test]
fn kcat_metadata_produce_consume_and_offsets_for_times() {
    let _serial = serial();
    let Some(clients) = clients("kcat") else {
        return;
    };
    let setup = Setup::new();
    setup.run(&clients, "kcat_checks.py", &[], Duration::from_secs(120));
    setup.finish("kcat");
}

#[test]
fn every_codec_written_by_one_client_reads_back_in_another() {
    let _serial = serial();
    let Some(clients) = clients("compression") else {
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
    let _serial = serial();
    let Some(clients) = clients("crash_restart") else {
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
