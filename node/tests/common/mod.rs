//! What the process-level tests (`interop.rs`, `cluster.rs`) share: the installed Kafka
//! clients (and with them the lock that runs a file's tests one at a time), `keel start`
//! processes, and the Python scripts in `node/tests/interop/` with their output collected line
//! by line.
//!
//! What always holds: every child process is owned by a guard (`Node`, `Script`) whose Drop
//! SIGKILLs and reaps it, so a test that panics leaves nothing running; every wait is bounded,
//! and a process that outlives its bound is SIGKILLed and reaped before the test says so.
//!
//! The clients come from `.ci/clients.sh` (kcat from Debian, the rest in `.venv`). If they are
//! missing, `clients` FAILS the test and says so; `KEEL_SKIP_INTEROP=1` skips it instead (for
//! quick local runs), printing that it was skipped.

#[allow(dead_code)] // each test file uses its own part
pub mod dev;
#[allow(dead_code)]
pub mod single;

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How often a bounded wait for a process's exit looks again.
const EXIT_POLL: Duration = Duration::from_millis(50);

/// Writes a line straight to stderr, past the test harness's capture (which hides the output
/// of passing tests), so skips, figures and timings show in every run.
pub fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

pub fn keel_bin() -> &'static str {
    env!("CARGO_BIN_EXE_keel")
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("node/ has a parent")
        .to_path_buf()
}

/// Where the clients are; a test holds them for as long as it runs.
pub struct Clients {
    pub python: PathBuf,
    pub scripts: PathBuf,
    /// The lock that runs a test file's tests one at a time, so their timings do not depend on
    /// each other.
    _serial: MutexGuard<'static, ()>,
}

/// Waits for the other tests of this file to finish (a test that panicked does not stop the
/// others), then finds the installed clients; None (after saying so) when
/// KEEL_SKIP_INTEROP=1. Panics, naming `.ci/clients.sh`, when kcat or one of the Python
/// `modules` (as an `import` line lists them) is missing. `suite` and `test` name the test in
/// what it prints.
pub fn clients(suite: &str, test: &str, modules: &str) -> Option<Clients> {
    static SERIAL: Mutex<()> = Mutex::new(());
    let serial = SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if std::env::var("KEEL_SKIP_INTEROP").as_deref() == Ok("1") {
        say(&format!(
            "{suite} test {test} SKIPPED (KEEL_SKIP_INTEROP=1)"
        ));
        return None;
    }
    let root = repo_root();
    let python = root.join(".venv/bin/python");
    let mut missing = Vec::new();
    match Command::new(&python)
        .args(["-c", &format!("import {modules}")])
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => {}
        Ok(out) => missing.push(format!(
            "{} cannot import {modules}: {}",
            python.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => missing.push(format!("{}: {e}", python.display())),
    }
    match Command::new("kcat")
        .env_remove("LD_LIBRARY_PATH")
        .arg("-V")
        .stdin(Stdio::null())
        .output()
    {
        Ok(out) if out.status.success() => {}
        Ok(out) => missing.push(format!("kcat -V exited with {}", out.status)),
        Err(e) => missing.push(format!("kcat: {e}")),
    }
    if !missing.is_empty() {
        panic!(
            "{suite} test {test}: the Kafka clients are not installed ({}). Run `bash .ci/clients.sh` \
             from the repository root (or set KEEL_SKIP_INTEROP=1 to skip these tests).",
            missing.join("; ")
        );
    }
    Some(Clients {
        python,
        scripts: root.join("node/tests/interop"),
        _serial: serial,
    })
}

/// The last `lines` lines of the file at `path` (empty if it cannot be read).
pub fn tail(path: &Path, lines: usize) -> String {
    let mut text = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut text);
    }
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// SIGKILLs and reaps `child`, ignoring errors (it may have exited already).
pub fn kill_and_reap(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits up to `timeout` for `child` to exit: its status, or None if it outlived `timeout`
/// (then it has been SIGKILLed and reaped).
pub fn wait_or_kill(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            kill_and_reap(child);
            return None;
        }
        thread::sleep(EXIT_POLL);
    }
}

/// Sends `signal` (SIGTERM, SIGINT) to `child` and waits for it as `wait_or_kill` does.
pub fn signal_and_wait(
    child: &mut Child,
    signal: libc::c_int,
    timeout: Duration,
) -> Option<ExitStatus> {
    // SAFETY: kill(2) on our own unreaped child's pid; no memory is involved.
    unsafe {
        libc::kill(child.id() as libc::pid_t, signal);
    }
    wait_or_kill(child, timeout)
}

/// What a failing test shows besides a script's output: the last lines of every broker's log.
pub trait BrokerLogs {
    fn logs(&self) -> String;
}

// --- keel start ----------------------------------------------------------------------------

/// One `keel start` process, restartable with the same command line; its stderr goes to
/// `log` (appended across restarts). SIGKILLed when dropped.
pub struct Node {
    pub id: u32,
    args: Vec<String>,
    /// The start of the stdout line that says the broker is ready.
    ready_line: String,
    pub log: PathBuf,
    child: Option<Child>,
    ready: Option<Receiver<String>>,
    /// How many times it was spawned.
    pub started: usize,
    /// Environment variables set for the process (beyond the test's own).
    env: Vec<(String, String)>,
}

impl Node {
    /// A broker not started yet: `args` follow `keel`, and `ready_line` starts the stdout line
    /// it prints once ready.
    pub fn new(id: u32, args: Vec<String>, ready_line: String, log: PathBuf) -> Node {
        Node {
            id,
            args,
            ready_line,
            log,
            child: None,
            ready: None,
            started: 0,
            env: Vec::new(),
        }
    }

    #[allow(dead_code)] // interop.rs's; cluster.rs includes this module too
    /// The same broker with `key=value` in its environment (`KEEL_LOG`, for one).
    pub fn with_env(mut self, key: &str, value: &str) -> Node {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Starts the process without waiting for it.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "broker {} already running", self.id);
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("broker log file");
        let mut child = Command::new(keel_bin())
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {} start: {e}", keel_bin()));
        self.started += 1;
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // Nobody listening any more is fine: keep draining so the broker never blocks.
                let _ = tx.send(line);
            }
        });
        self.child = Some(child);
        self.ready = Some(rx);
    }

    /// Waits until `deadline` for the ready line of the last spawn; Err says what came instead.
    pub fn wait_ready(&mut self, deadline: Instant) -> Result<(), String> {
        let want = self.ready_line.clone();
        let rx = self.ready.take().expect("spawned");
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with(&want) => return Ok(()),
                Ok(line) => seen.push(line),
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "broker {} (start #{}) printed no `{want}` line in time; stdout: {seen:?}",
                        self.id, self.started
                    ))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.as_mut().and_then(|c| c.wait().ok());
                    self.child = None;
                    return Err(format!(
                        "broker {} (start #{}) closed stdout before `{want}` (exit: {status:?}); stdout: {seen:?}",
                        self.id, self.started
                    ));
                }
            }
        }
    }

    /// SIGKILL: a crash.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("broker running");
        child.kill().expect("SIGKILL the broker");
        child.wait().expect("reap the broker");
    }

    /// SIGTERM; the exit status, or None if it outlived `timeout` (then SIGKILLed) or was not
    /// running.
    pub fn stop(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        signal_and_wait(&mut child, libc::SIGTERM, timeout)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            kill_and_reap(child);
        }
    }
}

// --- the Python halves ---------------------------------------------------------------------

/// How long a script's output readers may take to finish after it exited.
const READER_WAIT: Duration = Duration::from_secs(10);

/// A running client script whose stdout and stderr are collected (and echoed to the test's
/// output, which cargo shows for a failing test) line by line. SIGKILLed when dropped.
pub struct Script {
    name: String,
    child: Option<Child>,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    readers: Vec<JoinHandle<Vec<String>>>,
    started: Instant,
}

/// Reads `reader` line by line, echoing each line labelled `[label]` and sending it to `tx`
/// (if any); the thread returns every line.
fn echo_lines(
    reader: impl Read + Send + 'static,
    label: String,
    tx: Option<Sender<String>>,
) -> JoinHandle<Vec<String>> {
    thread::spawn(move || {
        let mut all = Vec::new();
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            eprintln!("[{label}] {line}");
            if let Some(tx) = &tx {
                let _ = tx.send(line.clone());
            }
            all.push(line);
        }
        all
    })
}

impl Script {
    /// Runs `script` from the clients' script directory with `args`, in `cwd`.
    pub fn spawn(clients: &Clients, script: &str, args: &[String], cwd: &Path) -> Script {
        let mut command = Command::new(&clients.python);
        command.env("PYTHONUNBUFFERED", "1");
        Script::spawn_with(command, clients, script, args, cwd)
    }

    /// Runs `script` from the clients' script directory with `interpreter` (Python, or Node.js
    /// for kafkajs: the caller sets its environment), `args`, in `cwd`.
    pub fn spawn_with(
        mut interpreter: Command,
        clients: &Clients,
        script: &str,
        args: &[String],
        cwd: &Path,
    ) -> Script {
        let path = clients.scripts.join(script);
        let mut child = interpreter
            // cargo test points LD_LIBRARY_PATH at build outputs, among them the librdkafka that
            // the rdkafka crate builds (without zlib): a kcat the script runs would load it in
            // place of Debian's, and refuse gzip.
            .env_remove("LD_LIBRARY_PATH")
            .arg(&path)
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", path.display()));
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let readers = vec![
            echo_lines(stdout, script.to_string(), Some(tx)),
            echo_lines(stderr, format!("{script} stderr"), None),
        ];
        Script {
            name: script.to_string(),
            stdin: child.stdin.take(),
            child: Some(child),
            lines: rx,
            readers,
            started: Instant::now(),
        }
    }

    /// Waits for a stdout line starting with `prefix`; panics on timeout or if the script ends.
    pub fn wait_for_line(
        &mut self,
        prefix: &str,
        timeout: Duration,
        logs: &dyn BrokerLogs,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    let out = self.finish_after_kill();
                    panic!(
                        "{}: no `{prefix}` line within {timeout:?}\n{out}\n{}",
                        self.name,
                        logs.logs()
                    );
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let (status, out) = self.wait(Duration::from_secs(10));
                    panic!(
                        "{}: ended ({status:?}) before printing `{prefix}`\n{out}\n{}",
                        self.name,
                        logs.logs()
                    );
                }
            }
        }
    }

    pub fn send_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("script stdin");
        writeln!(stdin, "{line}").expect("write to the script's stdin");
        stdin.flush().expect("flush the script's stdin");
    }

    /// Closes its stdin and waits (bounded) for the script to exit: its status (None: timed
    /// out and killed) and its whole output.
    fn wait(&mut self, timeout: Duration) -> (Option<ExitStatus>, String) {
        self.stdin = None;
        let mut child = self.child.take().expect("script running");
        let status = wait_or_kill(&mut child, timeout);
        (status, self.collect())
    }

    fn finish_after_kill(&mut self) -> String {
        if let Some(mut child) = self.child.take() {
            kill_and_reap(&mut child);
        }
        self.collect()
    }

    /// The script's output. Bounded: a reader whose pipe a process the script started still
    /// holds open is left behind after [`READER_WAIT`] (a join would wait for that process).
    fn collect(&mut self) -> String {
        let mut parts = Vec::new();
        let deadline = Instant::now() + READER_WAIT;
        for (what, reader) in ["stdout", "stderr"].iter().zip(self.readers.drain(..)) {
            while !reader.is_finished() && Instant::now() < deadline {
                thread::sleep(EXIT_POLL);
            }
            let lines = if reader.is_finished() {
                reader.join().unwrap_or_default()
            } else {
                vec!["(still open: the output ends here)".to_string()]
            };
            parts.push(format!("--- {} {what}:\n{}", self.name, lines.join("\n")));
        }
        parts.join("\n")
    }

    /// Waits for a successful exit; panics with the output and the broker logs otherwise.
    /// Returns the script's stdout and stderr.
    pub fn expect_success(mut self, timeout: Duration, logs: &dyn BrokerLogs) -> String {
        let (status, out) = self.wait(timeout);
        let elapsed = self.started.elapsed();
        match status {
            Some(s) if s.success() => {
                say(&format!("{} passed in {elapsed:.1?}", self.name));
                out
            }
            Some(s) => panic!(
                "{} failed ({s}) after {elapsed:.1?}\n{out}\n{}",
                self.name,
                logs.logs()
            ),
            None => panic!(
                "{} did not finish within {timeout:?} (killed)\n{out}\n{}",
                self.name,
                logs.logs()
            ),
        }
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            kill_and_reap(child);
        }
    }
}

#[allow(dead_code)] // interop.rs's; cluster.rs includes this module too
/// The `KEEL_LOG` filter under which a broker logs one line per request with its API and
/// version (`wire::server`, at debug level).
pub const REQUEST_LOG_FILTER: &str = "info,keel_node::wire::server=debug";

#[allow(dead_code)] // interop.rs's; cluster.rs includes this module too
/// The versions of `api` (its `ApiKey` name, e.g. "Fetch") requested in the broker log at
/// `log`, which ran with [`REQUEST_LOG_FILTER`] and `NO_COLOR=1` (tracing's colours would
/// split the fields): sorted, without repeats.
pub fn requested_versions(log: &Path, api: &str) -> Vec<i16> {
    let mut text = String::new();
    if let Ok(mut f) = File::open(log) {
        let _ = f.read_to_string(&mut text);
    }
    let needle = format!("api={api} version=");
    let mut versions: Vec<i16> = text
        .lines()
        .filter(|l| l.contains("keel_node::wire::server: request "))
        .filter_map(|l| {
            let rest = &l[l.find(&needle)? + needle.len()..];
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .collect();
    versions.sort_unstable();
    versions.dedup();
    versions
}

/// `promtool check metrics` (Prometheus' own linter of the exposition format and its naming
/// conventions) passes on `text`, a /metrics body: no errors and no warnings. promtool comes
/// from `.ci/clients.sh`; skipped only with KEEL_SKIP_INTEROP=1, as the client tests are.
#[allow(dead_code)] // used by broker_groups.rs and client_matrix.rs, not by interop.rs or cluster.rs
pub fn promtool_check(text: &str, what: &str) {
    if std::env::var("KEEL_SKIP_INTEROP").as_deref() == Ok("1") {
        say(&format!(
            "promtool check of {what} SKIPPED (KEEL_SKIP_INTEROP=1)"
        ));
        return;
    }
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .env_remove("LD_LIBRARY_PATH")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("promtool: {e} (run `bash .ci/clients.sh`)"));
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let out = child.wait_with_output().expect("promtool ran");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics on {what}: {}\n{said}",
        out.status
    );
}
