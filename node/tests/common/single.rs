//! One `keel start` broker for a client script (`acl_interop.rs`, `quota_interop.rs`): a config
//! file of its own, a free port, and its log's tail for a failure's message.

use std::net::TcpListener;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{tail, BrokerLogs, Node};

/// A port nothing listens on now (the kernel's pick for a throwaway listener).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// A broker's log, for a failed wait's message.
pub struct Logs<'a>(pub &'a Node);

impl BrokerLogs for Logs<'_> {
    fn logs(&self) -> String {
        format!("broker stderr (tail):\n{}", tail(&self.0.log, 80))
    }
}

/// Starts broker 1 with `listeners` (its first on `port`), no metrics listener, one
/// `__consumer_offsets` partition and the config lines `extra`; its config file, data and log
/// in `dir`. Returns once it says it is ready (30 s at most, or the test fails with its log).
pub fn start_broker(dir: &Path, port: u16, listeners: &str, extra: &str) -> Node {
    let config = format!(
        r#"
node.id = 1
log.dirs = "{data}"
listeners = "{listeners}"
"keel.metrics.listener" = ""
offsets.topic.num.partitions = 1
{extra}
"#,
        data = dir.join("data").display(),
    );
    let config_path = dir.join("keel.toml");
    std::fs::write(&config_path, config).expect("write config");
    let mut node = Node::new(
        1,
        vec![
            "start".into(),
            "--config".into(),
            config_path.display().to_string(),
        ],
        format!("keel broker 1 ready on 127.0.0.1:{port}"),
        dir.join("broker.log"),
    );
    node.spawn();
    if let Err(e) = node.wait_ready(Instant::now() + Duration::from_secs(30)) {
        panic!("{e}\n{}", Logs(&node).logs());
    }
    node
}
