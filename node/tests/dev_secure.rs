//! `keel dev --secure` (docs/security.md): a real three-broker launch whose printed settings
//! are used as printed: the kcat line (librdkafka 2.0.2) lists the cluster's three brokers, and
//! the properties block, given to confluent-kafka unchanged, produces (acks=all) and reads back
//! records (`node/tests/interop/dev_secure.py`). The brokers secure their peer transport too, so
//! the topic's replication runs over TLS with SCRAM logins.
//!
//! The clients come from `.ci/clients.sh`; `KEEL_SKIP_INTEROP=1` skips this test.

#[allow(dead_code)] // shared with interop.rs and cluster.rs, which use the rest
mod common;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{clients, kill_and_reap, say, Script};

/// How long `keel dev` has to print its summary.
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// A port P such that P..P+2, P+100..P+102 and P+200..P+202 are free (keel dev's client, peer
/// and metrics ports for three brokers).
fn free_port_range() -> u16 {
    for _ in 0..200 {
        let base = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind")
            .port();
        if !(10_000..=65_000).contains(&base) {
            continue;
        }
        let ports = (0..3).flat_map(|i| (0..3).map(move |k| base + k * 100 + i));
        let held: Result<Vec<TcpListener>, _> =
            ports.map(|p| TcpListener::bind(("127.0.0.1", p))).collect();
        if held.is_ok() {
            return base;
        }
    }
    panic!("no free range of 3 x 3 ports after 200 tries");
}

struct NoLogs;

impl common::BrokerLogs for NoLogs {
    fn logs(&self) -> String {
        "(keel dev's brokers log to its stderr, shown above)".into()
    }
}

#[test]
fn printed_settings_work_with_kcat_and_confluent_kafka() {
    let Some(clients) = clients("dev-secure", "printed_settings", "confluent_kafka") else {
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port_range();
    let mut command = Command::new(common::keel_bin());
    command
        .args([
            "dev",
            "--secure",
            "--brokers",
            "3",
            "--port",
            &port.to_string(),
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let mut child = command.spawn().expect("spawn keel dev --secure");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut summary = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let last = line.starts_with("Ctrl-C stops");
                summary.push(line);
                if last {
                    break;
                }
            }
            Err(e) => {
                kill_and_reap(&mut child);
                panic!("keel dev --secure printed no summary ({e}): {summary:#?}");
            }
        }
    }
    say(&format!(
        "keel dev --secure ready in {:.1?}:\n{}",
        started.elapsed(),
        summary.join("\n")
    ));
    let text = summary.join("\n");
    let password = text
        .lines()
        .find_map(|l| l.strip_prefix("sasl.password="))
        .expect("a sasl.password line")
        .to_string();
    assert_eq!(password.len(), 32, "a fresh 32-character password");
    assert!(!text.contains("=admin-secret") && !text.contains("password=admin\n"));

    // The kcat line, run as printed (with -m to bound its wait).
    let kcat = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("try:"))
        .map(str::trim)
        .filter(|l| l.starts_with("kcat "))
        .expect("a kcat line");
    let words: Vec<&str> = kcat.split_whitespace().collect();
    // Debian's librdkafka, not the rdkafka crate's build that cargo test's LD_LIBRARY_PATH
    // points at.
    let out = Command::new(words[0])
        .env_remove("LD_LIBRARY_PATH")
        .args(&words[1..])
        .args(["-m", "30"])
        .stdin(Stdio::null())
        .output()
        .expect("run kcat");
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "kcat failed: {}\n{listing}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(listing.contains(" 3 brokers:"), "kcat -L: {listing}");

    // The properties block, given to confluent-kafka as printed.
    let properties: Vec<&str> = text
        .lines()
        .skip_while(|l| *l != "client properties:")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect();
    let file = dir.path().join("client.properties");
    std::fs::write(&file, properties.join("\n")).expect("write properties");
    Script::spawn(
        &clients,
        "dev_secure.py",
        &[file.display().to_string()],
        dir.path(),
    )
    .expect_success(Duration::from_secs(120), &NoLogs);

    // SIGTERM stops keel dev and its brokers.
    common::signal_and_wait(&mut child, libc::SIGTERM, Duration::from_secs(40));
    say(&format!("dev --secure test took {:.1?}", started.elapsed()));
}
