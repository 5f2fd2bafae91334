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
        let handle = Handle::current();
        let disks: BTreeMap<i32, SimDisk> = (1..=3)
            .map(|id| {
                let rng = StdRng::seed_from_u64(id as u64);
                (id, SimDisk::new(Box::new(rng), FaultConfig::none()))
            })
            .collect();
        let mut cluster = SimCluster::start(&handle, ClusterSpec::default(), disks.clone());
        let bootstrap = cluster.bootstrap();
        let client = handle
            .create_node()
            .ip(IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1)))
            .build();
        let key = Key::new(TOPIC, 0);
        let (boot, k) = (bootstrap.clone(), key.clone());
        let history = client
            .spawn(async move {
                let mut client = Client::new(ClientConfig::new(boot));
                let spec = TopicSpec {
                    name: TOPIC.into(),
                    partitions: 1,
                    replication_factor: 3,
                    configs: vec![("min.insync.replicas".into(), "2".into())],
                };
                for _ in 0..60 {
                    if client.create_topic(&spec).await.is_ok()
                        && client.await_leaders(TOPIC, 1).await.is_ok()
                    {
                        break;
                    }
                    madsim::time::sleep(Duration::from_millis(500)).await;
                }
                let mut history = History::default();
                for v in 1..=VALUES {
                    let outcome = client.produce(&k, Value(v)).await;
                    history.send(ProcessId(0), &k, Value(v), outcome);
                }
                history
            })
            .await
            .unwrap();
        let acked = history
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
            .count();
        assert_eq!(
            acked as u64, VALUES,
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
        let fenced = |b: &keel_node::broker::Broker| {
            b.with_metadata(|m| m.broker(BrokerId(first)).is_some_and(|x| x.fenced))
        };
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
                    fenced(&damaged),
                    "a broker with a damaged replica stays fenced"
                );
            }
            if !is_damaged && !fenced(&damaged) {
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
        let history = client
            .spawn(async move {
                let mut history = history;
                let mut client = Client::new(ClientConfig::new(boot));
                let end = loop {
                    if let Ok(end) = client.end_offset(&k).await {
                        break end;
                    }
                    madsim::time::sleep(Duration::from_millis(200)).await;
                };
                let mut consumer = Consumer::new();
                consumer.assign(std::slice::from_ref(&k));
                let mut read = 0;
                while read < end.0 {
                    match consumer.poll(&mut client, &k).await {
                        Ok(f) => {
                            read += f.records.len() as i64;
                            history.poll(ProcessId(1), &k, f.records);
                        }
                        Err(_) => madsim::time::sleep(Duration::from_millis(200)).await,
                    }
                }
                history.final_read(ProcessId(1), &k, end);
                history
            })
            .await
            .unwrap();
        let report = check(&history);
        assert!(report.is_clean(), "{report}");
    });
}
