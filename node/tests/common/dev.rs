//! `keel dev` for the tests that run against a whole dev cluster (`cli_commands.rs`,
//! `cli_operations.rs`, `cli_failover.rs`, `client_matrix.rs`): free ports for its brokers, the
//! cluster spawned for the life of the test process, and the `keel` client commands run as a
//! user runs them, with what they printed and how they exited.
//!
//! What always holds: a `keel dev` spawned here dies with the test process however that ends
//! (PR_SET_PDEATHSIG, from a spawning thread that never ends, so that the signal fires only
//! when the process does; `keel dev` takes its brokers with it by their own PR_SET_PDEATHSIG);
//! every wait is bounded, and a command that outlives its bound is SIGKILLed and reaped before
//! the test fails.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::keel_bin;

/// How long `keel dev` has to report its brokers ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// The longest one `keel` command may run in these tests.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// The line `keel dev` prints, after its brokers are ready, naming the bootstrap servers.
const BOOTSTRAP_LINE: &str = "bootstrap servers: ";

/// A port P such that P..P+brokers-1, P+100.. and P+200.. are free: `keel dev`'s client, peer
/// and metrics ports for `brokers` brokers. Probed from a pseudo-random start below the
/// ephemeral range, so that test binaries running at once rarely collide.
pub fn free_port_range(brokers: u16) -> u16 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let seed = u64::from(std::process::id()) ^ u64::from(nanos);
    let mut candidate = 20_000 + (seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) as u16 % 9_000;
    for _ in 0..200 {
        let ports = (0..brokers).flat_map(|i| (0..3).map(move |k| candidate + k * 100 + i));
        let held: Result<Vec<TcpListener>, _> =
            ports.map(|p| TcpListener::bind(("127.0.0.1", p))).collect();
        if held.is_ok() {
            return candidate;
        }
        candidate = 20_000 + (candidate - 20_000 + 37) % 9_000;
    }
    panic!("no free range of {brokers} x 3 ports in 20000..29300 after 200 tries");
}

/// `keel dev`'s arguments for `brokers` brokers on `port`.. with their data under
/// `data_dir`.
pub fn dev_args(brokers: u16, port: u16, data_dir: &std::path::Path) -> Vec<String> {
    vec![
        "--brokers".into(),
        brokers.to_string(),
        "--port".into(),
        port.to_string(),
        "--data-dir".into(),
        data_dir.display().to_string(),
    ]
}

/// Spawns `keel dev ARGS` for the life of the test process, its stderr going to `stderr`, and
/// returns its bootstrap servers once stdout printed a line starting with `ready` and then the
/// bootstrap line. Panics after [`READY_TIMEOUT`], showing what it printed and `logs()`.
pub fn spawn_dev(
    args: Vec<String>,
    stderr: Stdio,
    ready: &str,
    logs: impl Fn() -> String,
) -> String {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut command = Command::new(keel_bin());
        command
            .arg("dev")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
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
            Ok(line) if line.starts_with(ready) && !was_ready => {
                was_ready = true;
                if let Some(bootstrap) = line.strip_prefix(BOOTSTRAP_LINE) {
                    return bootstrap.trim().to_string();
                }
            }
            Ok(line) if was_ready && line.starts_with(BOOTSTRAP_LINE) => {
                return line[BOOTSTRAP_LINE.len()..].trim().to_string();
            }
            Ok(line) => seen.push(line),
            Err(e) => panic!(
                "keel dev was not ready ({e}); it printed {seen:?}\n{}",
                logs()
            ),
        }
    }
}

/// What one `keel` command did.
pub struct Run {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Asserts success and no panic; the stdout.
    pub fn ok(&self, what: &str) -> &str {
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

    /// Asserts the failure the CLI promises (docs/cli.md, "Errors"): exit `code`, exactly one
    /// line on stderr, containing `needle`, no panic and no backtrace.
    pub fn fails(&self, code: i32, needle: &str, what: &str) {
        self.fails_naming(code, needle, what);
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "{what}: want one stderr line, got {:?}",
            lines
        );
    }

    /// Exit `code` and `needle` somewhere on stderr, no panic and no backtrace: for the
    /// operation commands, which report progress on stderr before they fail.
    pub fn fails_naming(&self, code: i32, needle: &str, what: &str) {
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
        assert!(
            !self.stderr.contains("panicked") && !self.stderr.contains("stack backtrace"),
            "{what}: {}",
            self.stderr
        );
    }

    /// Asserts success; stdout as JSON.
    pub fn json(&self, what: &str) -> serde_json::Value {
        serde_json::from_str(self.ok(what))
            .unwrap_or_else(|e| panic!("{what}: stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

/// Waits (bounded) for `child`, whose stdout and stderr are piped; SIGKILLs it and fails the
/// test if it outlives [`COMMAND_TIMEOUT`].
pub fn finish(mut child: Child, what: &str) -> Run {
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

/// Runs `keel ARGS` with `stdin` against the cluster at `bootstrap` (by `KEEL_BROKERS`, which
/// an explicit `--brokers` in `args` overrides), without `RUST_BACKTRACE`, as a user would.
pub fn keel(bootstrap: &str, args: &[&str], stdin: &str) -> Run {
    let what = format!("keel {}", args.join(" "));
    let mut child = Command::new(keel_bin())
        .args(args)
        .env("KEEL_BROKERS", bootstrap)
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let mut pipe = child.stdin.take().expect("piped");
    let input = stdin.to_string();
    let writer = thread::spawn(move || {
        let _ = pipe.write_all(input.as_bytes());
    });
    let run = finish(child, &what);
    let _ = writer.join();
    run
}
