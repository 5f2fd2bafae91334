//! The brokers the bench starts and stops: a keel cluster through `keel dev`, or a `tansu`
//! broker with memory storage. Each runs as a child process with its output in a log file in
//! the data directory; dropping a [`Managed`] stops it (SIGTERM, then SIGKILL).
//!
//! What always holds: a child is signalled only while it is not yet reaped (its pid cannot have
//! been reused); on Linux a child gets SIGTERM if the bench dies (`PR_SET_PDEATHSIG`), and
//! `keel dev` passes that on to its brokers, so no broker outlives the bench.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// How long `keel dev` has to report every broker ready.
const KEEL_READY_TIMEOUT: Duration = Duration::from_secs(90);
/// The start of the last line of `keel dev`'s summary.
const SUMMARY_LAST_LINE: &str = "Ctrl-C stops";
/// How long tansu has to accept a connection.
const TANSU_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a child has after SIGTERM (keel dev gives its brokers 30 s) before SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(40);

/// A broker (or a launcher of brokers) the bench started.
pub struct Managed {
    pub name: String,
    child: Option<Child>,
    /// `host:port,...` for clients.
    pub bootstrap: String,
    /// The broker processes, whose CPU time each phase reports.
    pub pids: Vec<u32>,
    pub log: PathBuf,
    /// The client settings besides `bootstrap.servers` that `keel dev --secure` printed (its
    /// `client properties:` block); empty for a plaintext cluster.
    pub client: Vec<(String, String)>,
}

/// The last `lines` lines of a log file, for an error message.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)));
    let mut text = String::new();
    let _ = f.read_to_string(&mut text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `  broker 2  127.0.0.1:19093  pid 4242  data ...` (keel dev's summary) -> 4242.
pub fn summary_pid(line: &str) -> Option<u32> {
    let rest = line.trim_start().strip_prefix("broker ")?;
    let (_, after) = rest.split_once(" pid ")?;
    after.split_whitespace().next()?.parse().ok()
}

impl Managed {
    /// `keel dev --brokers N --port PORT --data-dir DIR`: waits until every broker is ready.
    pub fn start_keel(
        keel: &Path,
        brokers: u8,
        port: u16,
        data_dir: &Path,
        overrides: &[String],
    ) -> Result<Managed, String> {
        Managed::start_keel_dev(keel, brokers, port, data_dir, overrides, false)
    }

    /// The same, with `--secure` when `secure`: the clients' settings are read from the
    /// summary's `client properties:` block into [`Managed::client`].
    pub fn start_keel_dev(
        keel: &Path,
        brokers: u8,
        port: u16,
        data_dir: &Path,
        overrides: &[String],
        secure: bool,
    ) -> Result<Managed, String> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
        let log = data_dir.join("keel.log");
        let log_file =
            File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let mut command = Command::new(keel);
        command
            .arg("dev")
            .arg("--brokers")
            .arg(brokers.to_string())
            .arg("--port")
            .arg(port.to_string())
            .arg("--data-dir")
            .arg(data_dir);
        if secure {
            command.arg("--secure");
        }
        for o in overrides {
            command.arg("--override").arg(o);
        }
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file.try_clone().map_err(|e| format!("log file: {e}"))?)
            .env("NO_COLOR", "1");
        keel_node::commands::dev::die_with_parent(&mut command);
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot run {} dev: {e}", keel.display()))?;
        let stdout = child.stdout.take().expect("stdout was piped");
        let mut managed = Managed {
            name: format!(
                "keel ({brokers} broker{}{})",
                if brokers == 1 { "" } else { "s" },
                if secure { ", --secure" } else { "" }
            ),
            child: Some(child),
            bootstrap: String::new(),
            pids: Vec::new(),
            log: log.clone(),
            client: Vec::new(),
        };
        // Every line goes to the log; lines go to `tx` until the summary's end is seen.
        let (tx, rx) = mpsc::channel::<String>();
        thread::spawn(move || {
            let mut log_file = log_file;
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(log_file, "{line}");
                if let Some(t) = &tx {
                    let last = line.starts_with(SUMMARY_LAST_LINE);
                    let _ = t.send(line);
                    if last {
                        tx = None;
                    }
                }
            }
        });
        let deadline = Instant::now() + KEEL_READY_TIMEOUT;
        let mut in_properties = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(pid) = summary_pid(&line) {
                        managed.pids.push(pid);
                    }
                    if let Some(servers) = line.strip_prefix("bootstrap servers:") {
                        managed.bootstrap = servers.trim().to_string();
                    }
                    if line.starts_with(SUMMARY_LAST_LINE) {
                        if managed.bootstrap.is_empty() || secure == managed.client.is_empty() {
                            managed.stop();
                            return Err(format!(
                                "keel dev's summary had no bootstrap servers{}; see {}",
                                if secure {
                                    " or no client properties"
                                } else {
                                    ""
                                },
                                log.display()
                            ));
                        }
                        return Ok(managed);
                    }
                    if line == "client properties:" {
                        in_properties = true;
                    } else if in_properties {
                        // An empty line ends the block.
                        match line.split_once('=') {
                            Some(("bootstrap.servers", _)) => {}
                            Some((key, value)) => {
                                managed.client.push((key.to_string(), value.to_string()))
                            }
                            None => in_properties = false,
                        }
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    managed.stop();
                    return Err(format!(
                        "keel dev did not report its brokers ready within {} s; its log ({}) ends:\n{}",
                        KEEL_READY_TIMEOUT.as_secs(),
                        log.display(),
                        log_tail(&log, 20)
                    ));
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    managed.stop();
                    return Err(format!(
                        "keel dev exited before its brokers were ready; its log ({}) ends:\n{}",
                        log.display(),
                        log_tail(&log, 20)
                    ));
                }
            }
        }
    }

    /// One tansu broker with memory storage on 127.0.0.1:PORT; waits until it accepts a
    /// connection. Flags: tansu's `broker` subcommand (`--kafka-cluster-id`,
    /// `--kafka-listener-url`, `--kafka-advertised-listener-url`, `--storage-engine`), which
    /// its releases since 0.4 accept; its Prometheus endpoint (in releases that have one) moves
    /// to PORT+1 through `PROMETHEUS_LISTENER_URL`.
    pub fn start_tansu(tansu: &Path, port: u16, dir: &Path) -> Result<Managed, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let log = dir.join("tansu.log");
        let log_file =
            File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let url = format!("tcp://127.0.0.1:{port}");
        let mut command = Command::new(tansu);
        command
            .arg("broker")
            .arg("--kafka-cluster-id")
            .arg("keel-bench")
            .arg("--kafka-listener-url")
            .arg(&url)
            .arg("--kafka-advertised-listener-url")
            .arg(&url)
            .arg("--storage-engine")
            .arg("memory://tansu/")
            .env(
                "PROMETHEUS_LISTENER_URL",
                format!("tcp://127.0.0.1:{}", port.wrapping_add(1)),
            )
            // tansu reads a .env file from its working directory: give it an empty one.
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().map_err(|e| format!("log file: {e}"))?)
            .stderr(log_file);
        keel_node::commands::dev::die_with_parent(&mut command);
        let child = command
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", tansu.display()))?;
        let mut managed = Managed {
            name: "tansu (memory storage)".into(),
            pids: vec![child.id()],
            child: Some(child),
            bootstrap: format!("127.0.0.1:{port}"),
            log: log.clone(),
            client: Vec::new(),
        };
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + TANSU_READY_TIMEOUT;
        loop {
            if let Some(status) = managed
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                managed.child = None;
                return Err(format!(
                    "tansu exited with {status} before it served; its log ({}) ends:\n{}",
                    log.display(),
                    log_tail(&log, 20)
                ));
            }
            if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
                return Ok(managed);
            }
            if Instant::now() >= deadline {
                managed.stop();
                return Err(format!(
                    "tansu did not accept connections on {address} within {} s; its log ({}) ends:\n{}",
                    TANSU_READY_TIMEOUT.as_secs(),
                    log.display(),
                    log_tail(&log, 20)
                ));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the child is still running.
    pub fn running(&mut self) -> bool {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// SIGTERM, then SIGKILL after [`STOP_TIMEOUT`].
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(None) = child.try_wait() {
            // SAFETY: kill(2) on our own child, not yet reaped (try_wait just said it runs),
            // so the pid is still its own.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                thread::sleep(Duration::from_millis(50));
            }
            eprintln!(
                "keel-bench: {} did not stop within {} s of SIGTERM; killing it",
                self.name,
                STOP_TIMEOUT.as_secs()
            );
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `name` in a directory of `PATH`, if it is an executable file.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| {
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

/// CPU seconds (user + system) a process has used, from /proc/PID/stat; None if it is gone.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ticks = keel_node::commands::bench::machine::stat_cpu_ticks(&stat)?;
    // SAFETY: sysconf(3) reads a constant; no memory is involved.
    let per_sec = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_sec > 0).then(|| ticks as f64 / per_sec as f64)
}

/// The CPU seconds of every process in `pids` (those still running).
pub fn total_cpu_secs(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    Some(pids.iter().filter_map(|&p| cpu_secs(p)).sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_from_keel_dev_summary_lines() {
        assert_eq!(
            summary_pid("  broker 2  127.0.0.1:19093  pid 4242  data keel-bench-data/broker-2"),
            Some(4242)
        );
        assert_eq!(summary_pid("keel dev: 3 brokers ready"), None);
        assert_eq!(
            summary_pid("[broker 1] keel broker 1 ready on 127.0.0.1:19092"),
            None
        );
    }
}
