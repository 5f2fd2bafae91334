//! A replica whose synced data rotted on disk (found by recovery, which cuts its log there)
//! must lead nothing until it has fetched back what it lost: its broker stays fenced, then
//! rejoins, and every acknowledged record is still read back once. keel-sim's swarm found
//! the case where such a replica was elected and its followers were told to cut committed data.
//!
//! `RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR=target/sim cargo test -p keel-sim --test damaged_replica`

#![cfg(madsim)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use keel_core::controller::BrokerId;
use keel_core::Offset;
use keel_sim::checker::{check, History, Key, ProcessId, SendOutcome, Value};
use keel_sim::client::{Client, ClientConfig, Consumer, TopicSpec};
use keel_sim::disk::{FaultConfig, SimDisk};
use keel_sim::harness::{ClusterSpec, SimCluster};
use madsim::runtime::{Handle, Runtime};
use rand::rngs::StdRng;
use rand::SeedableRng;

const TOPIC: &str = "rot";
const VALUES: u64 = 40;

#[test]
fn a_replica_with_rotted_data_leads_nothing_until_it_has_fetched_it_back() {
    let runtime = Runtime::with_seed_and_config(11, madsim::Config::default());
    runtime.block_on(async {
        let Started {
            mut cluster,
            disks,
            bootstrap,
            client,
            key,
            history,
        } = start().await;
        assert_eq!(
            acked(&history),
            VALUES,
            "every send acknowledged before the damage"
        );

        // The whole cluster loses power; a bit of the first batch rots on the partition's
        // first replica (the one an election prefers); it and one other broker restart.
        let first = cluster
            .live_brokers()
            .first()
            .and_then(|(_, b)| b.with_metadata(|m| m.partition(TOPIC, 0).map(|p| p.replicas[0])))
            .expect("the partition exists")
            .0;
        let other = if first == 1 { 2 } else { 1 };
        let last = 6 - first - other;
        for id in 1..=3 {
            cluster.kill(id);
        }
        let segment = format!("/data/{TOPIC}-0/00000000000000000000.log");
        assert!(
            disks[&first].damage(&segment, 100, 0x04),
            "the segment exists"
        );
        cluster.restart(first);
        cluster.restart(other);
        let mut damaged = None;
        for _ in 0..200 {
            damaged = cluster
                .live_brokers()
                .into_iter()
                .find(|(id, _)| *id == first)
                .map(|(_, b)| b);
            if damaged.is_some() {
                break;
            }
            madsim::time::sleep(Duration::from_millis(100)).await;
        }
        let damaged = damaged.expect("the damaged broker is back within 20 s");
        let partition = damaged.replica(TOPIC, 0).expect("its replica is open");
        assert!(
            partition.with(|r| r.log().recovery_report().corruption.is_some()),
            "recovery found the rot"
        );
        // It must not lead while damaged; it must rejoin once repaired (within 60 s). The
        // third broker comes back after 5 s (registrations during the crash may have left it
        // the partition's only ISR member).
        let mut repaired = false;
        for step in 0..600 {
            if step == 50 {
                cluster.restart(last);
            }
            let leads = partition.with(|r| r.is_leader());
            let is_damaged = partition.is_damaged();
            assert!(!(leads && is_damaged), "a damaged replica leads");
            if is_damaged {
                assert!(
                    is_fenced(&damaged, first),
                    "a broker with a damaged replica stays fenced"
                );
            }
            if !is_damaged && !is_fenced(&damaged, first) {
                repaired = true;
                break;
            }
            madsim::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            repaired,
            "the replica fetched its data back and the broker was unfenced"
        );
        assert!(partition.with(|r| r.log().end() >= Offset(VALUES as i64)));

        // Every acknowledged value is read back once, in order.
        let (boot, k) = (bootstrap.clone(), key.clone());
        let history = client.spawn(read_back(boot, k, history)).await.unwrap();
        let report = check(&history);
        assert!(report.is_clean(), "{report}");
    });
}

/// A batch that rots on the leader while it runs (no restart): the first read of it fails, the
/// leader asks to be fenced, leadership moves to a sound ISR member, and the damaged replica
/// discards its log from the damage, fetches it back and rejoins. Every acknowledged record is
/// read back once.
#[test]
fn a_batch_that_rots_on_a_running_leader_is_repaired_from_the_isr() {
    let runtime = Runtime::with_seed_and_config(12, madsim::Config::default());
    runtime.block_on(async {
        let Started {
            cluster,
            disks,
            bootstrap,
            client,
            key,
            history,
        } = start().await;
        assert_eq!(acked(&history), VALUES);
        let brokers = cluster.live_brokers();
        let (leader_id, leader) = brokers
            .iter()
            .find(|(_, b)| {
                b.replica(TOPIC, 0)
                    .is_some_and(|p| p.with(|r| r.is_leader()))
            })
            .cloned()
            .expect("the partition has a leader");
        let partition = leader.replica(TOPIC, 0).unwrap();
        let epoch = partition.with(|r| r.leader_epoch());
        // Rot inside the first batch's CRC-covered bytes.
        let segment = format!("/data/{TOPIC}-0/00000000000000000000.log");
        assert!(disks[&leader_id].damage(&segment, 100, 0x04));
        assert!(partition.with(|r| r.find_damage().unwrap()).is_some());

        let (boot, k) = (bootstrap.clone(), key.clone());
        let history = client
            .spawn(madsim::time::timeout(
                Duration::from_secs(60),
                read_back(boot, k, history),
            ))
            .await
            .unwrap()
            .expect("every record read within 60 s: the damaged batch came from a sound replica");
        let report = check(&history);
        assert!(report.is_clean(), "{report}");
        let moved = brokers.iter().any(|(id, b)| {
            *id != leader_id
                && b.replica(TOPIC, 0)
                    .is_some_and(|p| p.with(|r| r.is_leader() && r.leader_epoch() > epoch))
        });
        assert!(moved, "leadership moved to a sound replica");
        let mut repaired = false;
        for _ in 0..600 {
            if !partition.is_damaged() && !is_fenced(&leader, leader_id) {
                repaired = true;
                break;
            }
            madsim::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            repaired,
            "the damaged replica was repaired and its broker unfenced"
        );
        assert_eq!(partition.with(|r| r.find_damage().unwrap()), None);
        assert!(partition.with(|r| r.log().end() >= Offset(VALUES as i64)));
    });
}

/// A three-broker cluster on clean disks, a client node, and `VALUES` values sent to the
/// topic's partition 0 (RF 3, min.insync.replicas 2).
struct Started {
    cluster: SimCluster,
    disks: BTreeMap<i32, SimDisk>,
    bootstrap: Vec<std::net::SocketAddr>,
    client: madsim::runtime::NodeHandle,
    key: Key,
    history: History,
}

async fn start() -> Started {
    let handle = Handle::current();
    let disks = clean_disks();
    let cluster = SimCluster::start(&handle, ClusterSpec::default(), disks.clone());
    let bootstrap = cluster.bootstrap();
    let client = handle
        .create_node()
        .ip(IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1)))
        .build();
    let key = Key::new(TOPIC, 0);
    let (boot, k) = (bootstrap.clone(), key.clone());
    let history = client.spawn(create_and_produce(boot, k)).await.unwrap();
    Started {
        cluster,
        disks,
        bootstrap,
        client,
        key,
        history,
    }
}

/// Whether `broker`'s applied metadata has broker `id` fenced.
fn is_fenced(broker: &keel_node::broker::Broker, id: i32) -> bool {
    broker.with_metadata(|m| m.broker(BrokerId(id)).is_some_and(|b| b.fenced))
}

fn clean_disks() -> BTreeMap<i32, SimDisk> {
    (1..=3)
        .map(|id| {
            let rng = StdRng::seed_from_u64(id as u64);
            (id, SimDisk::new(Box::new(rng), FaultConfig::none()))
        })
        .collect()
}

/// Creates the topic (RF 3, min.insync.replicas 2) and sends `VALUES` values to `key`.
async fn create_and_produce(bootstrap: Vec<std::net::SocketAddr>, key: Key) -> History {
    let mut client = Client::new(ClientConfig::new(bootstrap));
    let spec = TopicSpec {
        name: TOPIC.into(),
        partitions: 1,
        replication_factor: 3,
        configs: vec![("min.insync.replicas".into(), "2".into())],
    };
    for _ in 0..60 {
        if client.create_topic(&spec).await.is_ok() && client.await_leaders(TOPIC, 1).await.is_ok()
        {
            break;
        }
        madsim::time::sleep(Duration::from_millis(500)).await;
    }
    let mut history = History::default();
    for v in 1..=VALUES {
        let outcome = client.produce(&key, Value(v)).await;
        history.send(ProcessId(0), &key, Value(v), outcome);
    }
    history
}

/// The sends acknowledged in `history`.
fn acked(history: &History) -> u64 {
    history
        .ops
        .iter()
        .filter(|op| {
            matches!(
                &op.kind,
                keel_sim::checker::OpKind::Send {
                    outcome: SendOutcome::Ok { .. },
                    ..
                }
            )
        })
        .count() as u64
}

/// Reads `key` from its start to its end offset as a fresh process, into `history`.
async fn read_back(
    bootstrap: Vec<std::net::SocketAddr>,
    key: Key,
    mut history: History,
) -> History {
    let mut client = Client::new(ClientConfig::new(bootstrap));
    // A new leader's high watermark moves once its ISR has fetched at its epoch: wait, up to
    // 30 s, for the end offset to pass every acknowledged value (as keel-sim's final read
    // does), then read to whatever end there is. A value missing after that is lost.
    let settle = madsim::time::Instant::now();
    let end = loop {
        match client.end_offset(&key).await {
            Ok(end) if end.0 >= VALUES as i64 || settle.elapsed() >= Duration::from_secs(30) => {
                break end
            }
            _ => madsim::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let mut consumer = Consumer::new();
    consumer.assign(std::slice::from_ref(&key));
    let mut read = 0;
    while read < end.0 {
        match consumer.poll(&mut client, &key).await {
            Ok(f) => {
                read += f.records.len() as i64;
                history.poll(ProcessId(1), &key, f.records);
            }
            Err(_) => madsim::time::sleep(Duration::from_millis(200)).await,
        }
    }
    history.final_read(ProcessId(1), &key, end);
    history
}
