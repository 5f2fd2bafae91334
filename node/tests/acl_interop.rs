//! ACLs with real clients against a `keel start` with the authoriser on (docs/security.md,
//! "Authorisation"): confluent-kafka's admin client creates, describes and deletes ACLs;
//! confluent-kafka and kafka-python 3.x producers and group consumers are refused, granted and
//! refused again; a super user needs no ACL; prefixed ACLs; DENY over ALLOW. Driven by
//! `node/tests/interop/acl_clients.py`; the broker's audit lines are checked here.
//!
//! The clients come from `.ci/clients.sh`; `KEEL_SKIP_INTEROP=1` skips these tests (see
//! interop.rs).

#[allow(dead_code)] // shared with interop.rs and cluster.rs, which use the rest
mod common;

use std::time::{Duration, Instant};

use common::single::{free_port, start_broker, Logs};
use common::{clients, say, BrokerLogs, Node, Script};

const MODULES: &str = "confluent_kafka, kafka";

#[test]
fn acls_with_real_clients() {
    let Some(clients) = clients("acl", "acls_with_real_clients", MODULES) else {
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let mut node = start_broker(
        dir.path(),
        port,
        &format!("SASL_PLAINTEXT://127.0.0.1:{port}"),
        r#"
sasl.enabled.mechanisms = "SCRAM-SHA-256"
"keel.sasl.users" = "admin=admin-secret,alice=alice-secret,bob=bob-secret"
authorizer.class.name = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
super.users = "User:admin"
"#,
    );
    Script::spawn(&clients, "acl_clients.py", &[port.to_string()], dir.path())
        .expect_success(Duration::from_secs(240), &Logs(&node));
    // The audit trail: who, from where, on which listener, what, on which resource, and the
    // rule that decided (the log's fields may carry colour codes between name and value).
    let log = std::fs::read_to_string(&node.log).unwrap_or_default();
    let audit = |principal: &str, operation: &str, resource: &str| {
        log.lines()
            .find(|l| {
                l.contains("keel::audit")
                    && l.contains(principal)
                    && l.contains(operation)
                    && l.contains(resource)
            })
            .unwrap_or_else(|| {
                panic!(
                    "no audit line for {principal} {operation} {resource}\n{}",
                    Logs(&node).logs()
                )
            })
            .to_string()
    };
    let alice = audit("User:alice", "DESCRIBE", "TOPIC:orders-");
    for part in [
        "denied",
        "SASL_PLAINTEXT",
        "127.0.0.1",
        "no ACLs on the resource",
    ] {
        assert!(
            alice.contains(part),
            "`{part}` not in the audit line: {alice}"
        );
    }
    let bob = audit("User:bob", "WRITE", "TOPIC:bob-denied-");
    assert!(
        bob.contains("permissionType=DENY"),
        "the DENY rule is named: {bob}"
    );
    match node.stop(Duration::from_secs(20)) {
        Some(s) if s.success() => {}
        other => panic!(
            "keel did not exit 0 on SIGTERM: {other:?}\n{}",
            Logs(&node).logs()
        ),
    }
    say(&format!("acl test took {:.1?}", started.elapsed()));
}

/// Three brokers, each with a SASL_PLAINTEXT listener and the authoriser on: SCRAM
/// credentials created and changed through one broker's admin API (confluent-kafka and
/// kafka-python) log in on the others, because they are metadata records every broker
/// applies (KIP-554); after the controller stops they are still there and the new controller
/// commits more. Driven by `node/tests/interop/scram_clients.py`.
#[test]
fn scram_credentials_altered_on_one_broker_log_in_on_the_others() {
    let Some(clients) = clients("acl", "scram_credentials", MODULES) else {
        return;
    };
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("temp dir");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let peers: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let voters: Vec<String> = (0..3)
        .map(|i| format!("{}@127.0.0.1:{}", i + 1, peers[i]))
        .collect();
    let mut nodes: Vec<Node> = (0..3)
        .map(|i| {
            let id = i as u32 + 1;
            let overrides = [
                format!("controller.quorum.voters={}", voters.join(",")),
                "keel.metrics.listener=".into(),
                "sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512".into(),
                "keel.sasl.users=admin=admin-secret".into(),
                "authorizer.class.name=acl".into(),
                "super.users=User:admin".into(),
            ];
            let mut args: Vec<String> = vec![
                "start".into(),
                "--node-id".into(),
                id.to_string(),
                "--listeners".into(),
                format!("SASL_PLAINTEXT://127.0.0.1:{}", ports[i]),
                "--data-dir".into(),
                dir.path()
                    .join(format!("broker-{id}"))
                    .display()
                    .to_string(),
            ];
            for o in overrides {
                args.push("--override".into());
                args.push(o);
            }
            Node::new(
                id,
                args,
                format!("keel broker {id} ready on "),
                dir.path().join(format!("broker-{id}.log")),
            )
        })
        .collect();
    for node in &mut nodes {
        node.spawn();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for node in &mut nodes {
        if let Err(e) = node.wait_ready(deadline) {
            panic!("{e}\n{}", Logs(node).logs());
        }
    }
    let args: Vec<String> = ports.iter().map(u16::to_string).collect();
    let out = Script::spawn(&clients, "scram_clients.py", &args, dir.path())
        .expect_success(Duration::from_secs(240), &Logs(&nodes[1]));
    // Stop the controller: the credentials must outlive it, and the new controller commit more.
    let controller: usize = out
        .lines()
        .find_map(|l| l.split("CONTROLLER ").nth(1))
        .and_then(|id| id.trim().parse().ok())
        .filter(|id| (1..=3).contains(id))
        .unwrap_or_else(|| panic!("no CONTROLLER line in\n{out}"));
    match nodes[controller - 1].stop(Duration::from_secs(30)) {
        Some(s) if s.success() => {}
        other => panic!("controller did not exit 0: {other:?}"),
    }
    let left: Vec<String> = std::iter::once("failover".to_string())
        .chain(
            (0..3)
                .filter(|i| *i != controller - 1)
                .map(|i| ports[i].to_string()),
        )
        .collect();
    let survivor = if controller == 1 { 1 } else { 0 };
    Script::spawn(&clients, "scram_clients.py", &left, dir.path())
        .expect_success(Duration::from_secs(240), &Logs(&nodes[survivor]));
    for (i, node) in nodes.iter_mut().enumerate() {
        if i == controller - 1 {
            continue;
        }
        match node.stop(Duration::from_secs(30)) {
            Some(s) if s.success() => {}
            other => panic!(
                "keel did not exit 0 on SIGTERM: {other:?}\n{}",
                Logs(node).logs()
            ),
        }
    }
    say(&format!("scram test took {:.1?}", started.elapsed()));
}
