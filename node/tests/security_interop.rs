//! Real clients against a `keel start` with four listeners, one per security protocol
//! (docs/security.md): confluent-kafka (librdkafka 2.16), kafka-python 3.x and Debian's kcat
//! (librdkafka 2.0.2) over SSL with a client certificate, SASL_PLAINTEXT with PLAIN and SCRAM-SHA-256, and
//! SASL_SSL with SCRAM-SHA-512, driven by `node/tests/interop/security_clients.py`. The
//! certificates are made at test time (rcgen); the broker reads them from PEM files with
//! Kafka's setting names.
//!
//! The clients come from `.ci/clients.sh`; `KEEL_SKIP_INTEROP=1` skips these tests (see
//! interop.rs).

#[allow(dead_code)] // shared with interop.rs and cluster.rs, which use the rest
mod common;
mod security_support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{clients, say, tail, BrokerLogs, Node, Script};
use security_support::TestPki;

const MODULES: &str = "confluent_kafka, kafka";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// The broker's `connections.max.reauth.ms`: clients re-authenticate every few seconds.
const REAUTH_MS: u64 = 3000;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

struct Secured {
    node: Node,
    plain: u16,
    ssl: u16,
    sasl: u16,
    sasl_ssl: u16,
}

impl BrokerLogs for Secured {
    fn logs(&self) -> String {
        format!("broker stderr (tail):\n{}", tail(&self.node.log, 60))
    }
}

impl Secured {
    /// A broker with PLAINTEXT, SSL (client certificates requested), SASL_PLAINTEXT and
    /// SASL_SSL listeners; its config file and data in `dir`.
    fn start(dir: &Path) -> Secured {
        let files = TestPki::new().write(dir);
        let (plain, ssl, sasl, sasl_ssl) = (free_port(), free_port(), free_port(), free_port());
        let config = format!(
            r#"
node.id = 1
log.dirs = "{data}"
listeners = "PLAINTEXT://127.0.0.1:{plain},SSL://127.0.0.1:{ssl},SASL_PLAINTEXT://127.0.0.1:{sasl},SASL_SSL://127.0.0.1:{sasl_ssl}"
inter.broker.listener.name = "PLAINTEXT"
"keel.metrics.listener" = ""
ssl.keystore.type = "PEM"
ssl.keystore.location = "{server}"
ssl.truststore.type = "PEM"
ssl.truststore.location = "{ca}"
ssl.client.auth = "requested"
sasl.enabled.mechanisms = "PLAIN,SCRAM-SHA-256,SCRAM-SHA-512"
"keel.sasl.users" = "alice=alice-secret"
connections.max.reauth.ms = {REAUTH_MS}
"#,
            data = dir.join("data").display(),
            server = files.server.display(),
            ca = files.ca.display(),
        );
        let config_path = dir.join("keel.toml");
        std::fs::write(&config_path, config).expect("write config");
        let args = vec![
            "start".to_string(),
            "--config".into(),
            config_path.display().to_string(),
        ];
        let mut node = Node::new(
            1,
            args,
            format!("keel broker 1 ready on 127.0.0.1:{plain}"),
            dir.join("broker.log"),
        );
        node.spawn();
        let mut secured = Secured {
            node,
            plain,
            ssl,
            sasl,
            sasl_ssl,
        };
        if let Err(e) = secured.node.wait_ready(Instant::now() + READY_TIMEOUT) {
            panic!("{e}\n{}", secured.logs());
        }
        secured
    }

    fn stop(mut self) {
        match self.node.stop(STOP_TIMEOUT) {
            Some(s) if s.success() => {}
            other => panic!("keel did not exit 0 on SIGTERM: {other:?}\n{}", self.logs()),
        }
    }

    /// Lines of the broker's log that contain `needle`, waiting up to 5 s for at least one.
    fn log_lines(&self, needle: &str) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(&self.node.log).unwrap_or_default();
            let lines: Vec<String> = text
                .lines()
                .filter(|l| l.contains(needle))
                .map(str::to_string)
                .collect();
            if !lines.is_empty() || Instant::now() > deadline {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn real_clients_over_ssl_sasl_plaintext_and_sasl_ssl() {
    let Some(clients) = clients("security", "real_clients", MODULES) else {
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    // The broker inherits this: its debug lines say when a connection re-authenticated.
    std::env::set_var("KEEL_LOG", "info,keel_node::wire=debug");
    std::env::set_var("KEEL_TEST_REAUTH_MS", REAUTH_MS.to_string());
    let broker = Secured::start(dir.path());
    let args: Vec<String> = [broker.plain, broker.ssl, broker.sasl, broker.sasl_ssl]
        .iter()
        .map(u16::to_string)
        .chain([dir.path().display().to_string()])
        .collect();
    Script::spawn(&clients, "security_clients.py", &args, dir.path())
        .expect_success(Duration::from_secs(240), &broker);
    let log = std::fs::read_to_string(&broker.node.log).unwrap_or_default();
    assert!(
        !log.contains("expired without re-authentication"),
        "a client's session expired\n{}",
        broker.logs()
    );
    for needle in [
        "SASL re-authentication succeeded",
        "SASL/PLAIN authentication failed on listener SASL_PLAINTEXT",
        "a TLS handshake arrived on the plaintext listener PLAINTEXT",
        "sent plaintext (first byte 0x00) to the TLS listener SSL",
    ] {
        assert!(
            !broker.log_lines(needle).is_empty(),
            "no `{needle}` line\n{}",
            broker.logs()
        );
    }
    broker.stop();
    say(&format!(
        "security test real_clients took {:.1?}",
        started.elapsed()
    ));
}

/// One TLS ClientHello on the plaintext port: the connection is closed and the broker logs
/// exactly one line that says what happened (not "request size 369295621 is above ...").
#[test]
fn a_tls_client_on_the_plaintext_port_is_closed_with_one_log_line() {
    let Some(_clients) = clients("security", "tls_on_plaintext", MODULES) else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let broker = Secured::start(dir.path());
    let mut s = TcpStream::connect(("127.0.0.1", broker.plain)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // A TLS 1.2 record header and the start of a ClientHello.
    s.write_all(&[
        0x16, 0x03, 0x01, 0x01, 0x05, 0x01, 0x00, 0x01, 0x01, 0x03, 0x03,
    ])
    .expect("write");
    let mut buf = [0u8; 16];
    match s.read(&mut buf) {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("expected a close, got {n} bytes"),
    }
    let lines = broker.log_lines("TLS handshake arrived on the plaintext listener");
    assert_eq!(lines.len(), 1, "{lines:?}\n{}", broker.logs());
    let log = std::fs::read_to_string(&broker.node.log).unwrap_or_default();
    assert!(!log.contains("request size"), "{}", broker.logs());
    broker.stop();
}
