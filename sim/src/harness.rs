//! Runs keel brokers, unchanged, as madsim nodes: each broker is `keel_node::broker::Broker`
//! with its Kafka listener and peer transport on a simulated network and its data directory
//! on a [`SimDisk`] that outlives the node's kills and restarts.
//!
//! What it owns: one madsim node per broker (IP `10.0.0.{id}`, Kafka port
//! [`KAFKA_PORT`], peer port [`PEER_PORT`]), each broker's disk, and a registry of the live
//! brokers (weak references) through which the simulator reads their state, never writes it.
//!
//! A kill is a power loss: madsim drops every task of the node, then the disk loses what was
//! not synced ([`SimDisk::crash`]); a restart runs the node's init again, which opens the broker
//! from that disk as a real restart would. A graceful stop ([`SimCluster::stop_gracefully`]) is
//! what `keel start` does on SIGTERM: the broker's controlled shutdown, every partition
//! checkpointed, then the process exits (the node's tasks dropped) with its disk intact: a
//! process exit keeps what the page cache holds.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use keel_node::broker::{Broker, Settings};
use keel_node::cluster::ClusterSettings;
use keel_node::metrics::Metrics;
use keel_node::storage::Disk;
use keel_node::wire::{WireConfig, WireServer};
use madsim::runtime::{Handle, NodeHandle};
use tokio::sync::watch;

use crate::disk::SimDisk;

/// The port brokers serve Kafka clients on.
pub const KAFKA_PORT: u16 = 9092;
/// The port brokers talk to each other on.
pub const PEER_PORT: u16 = 9093;

/// The IP of broker `id`.
pub fn broker_ip(id: i32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 0, id as u8))
}

/// Where clients reach broker `id`.
pub fn broker_address(id: i32) -> SocketAddr {
    SocketAddr::new(broker_ip(id), KAFKA_PORT)
}

/// How a simulated cluster is laid out.
#[derive(Clone, Debug)]
pub struct ClusterSpec {
    /// Broker ids, 1..=N.
    pub brokers: i32,
    /// How many of them (the first ones) vote in the metadata quorum; the rest are learners.
    pub voters: i32,
    pub session_timeout_ms: u64,
    pub heartbeat_interval_ms: u64,
    pub replica_lag_time_max_ms: i64,
    /// The brokers' `min.insync.replicas`: the default of every topic that sets none, the
    /// internal `__consumer_offsets` among them.
    pub min_insync_replicas: i32,
    /// `offsets.topic.num.partitions`: Kafka's 50 cost every seed with a group 150 more
    /// replicas to replicate and elect; a few partitions still move the coordinator.
    pub offsets_topic_partitions: i32,
    /// `transaction.state.log.num.partitions`, small for the same reason.
    pub txn_state_partitions: i32,
    /// The brokers' `log.segment.bytes` (every topic's `segment.bytes`): small ones make logs
    /// roll, so that recovery, truncation and syncs span segments.
    pub segment_bytes: i32,
    /// `leader.imbalance.check.interval.seconds` in ms when `auto.leader.rebalance.enable`
    /// (with Kafka's 10%); `None`: off. Kafka's 300 s would never fire within a run.
    pub leader_balance_interval_ms: Option<u64>,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            brokers: 3,
            voters: 3,
            session_timeout_ms: 3_000,
            heartbeat_interval_ms: 500,
            replica_lag_time_max_ms: 5_000,
            min_insync_replicas: 1,
            offsets_topic_partitions: 5,
            txn_state_partitions: 3,
            segment_bytes: 1 << 30,
            leader_balance_interval_ms: None,
        }
    }
}

/// The live brokers, by id, for read-only inspection.
pub type Registry = Arc<Mutex<BTreeMap<i32, Weak<Broker>>>>;

struct BrokerNode {
    node: NodeHandle,
    disk: SimDisk,
    up: bool,
    stop: StopLine,
}

/// How long a broker's controlled shutdown may wait in the simulator (its
/// `keel.controlled.shutdown.max.wait.ms`): a few of its sessions.
pub const CONTROLLED_SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

/// A graceful stop's request and outcome, between the harness and a broker node. Each request
/// bumps `requested`; the node answers by setting `done` to that number and whether the
/// controlled shutdown handed every leadership over.
#[derive(Clone)]
struct StopLine {
    requested: Arc<watch::Sender<u64>>,
    done: Arc<watch::Sender<(u64, bool)>>,
}

impl StopLine {
    fn new() -> StopLine {
        StopLine {
            requested: Arc::new(watch::channel(0).0),
            done: Arc::new(watch::channel((0, false)).0),
        }
    }
}

/// A running simulated cluster.
pub struct SimCluster {
    handle: Handle,
    spec: ClusterSpec,
    brokers: BTreeMap<i32, BrokerNode>,
    registry: Registry,
    /// Broker starts that found a cleaning's files left by a kill or stop in the middle of it.
    interrupted_cleanings: Arc<AtomicU64>,
}

fn settings(spec: &ClusterSpec, id: i32, disk: &SimDisk) -> Settings {
    let member = |i: i32| (i, SocketAddr::new(broker_ip(i), PEER_PORT));
    let mut settings = Settings::single(id, "/data".into());
    settings.advertised_host = broker_ip(id).to_string();
    settings.advertised_port = KAFKA_PORT;
    settings.cluster = ClusterSettings {
        voters: (1..=spec.voters).map(member).collect(),
        learners: (spec.voters + 1..=spec.brokers).map(member).collect(),
        session_timeout_ms: spec.session_timeout_ms,
        heartbeat_interval_ms: spec.heartbeat_interval_ms,
        unclean: keel_core::controller::UncleanElection::Disabled,
        leader_balance: spec.leader_balance_interval_ms.map(|ms| {
            (
                ms,
                keel_core::controller::elections::LEADER_IMBALANCE_PER_BROKER_PERCENTAGE,
            )
        }),
        // The simulator runs the peer transport in plaintext (docs/simulation.md).
        peer_security: Default::default(),
    };
    settings.replica_lag_time_max_ms = spec.replica_lag_time_max_ms;
    settings.offsets_topic_partitions = spec.offsets_topic_partitions;
    settings.transactions.partitions = spec.txn_state_partitions;
    settings.topic_config_defaults.insert(
        "min.insync.replicas".into(),
        spec.min_insync_replicas.to_string(),
    );
    settings
        .topic_config_defaults
        .insert("segment.bytes".into(), spec.segment_bytes.to_string());
    settings.disk = Disk::Virtual(Arc::new(disk.clone()));
    settings
}

/// How often an idle cleaner looks for a partition to clean (`log.cleaner.backoff.ms`; Kafka's
/// 15 s would clean a few times a run).
pub const CLEANER_BACKOFF_MS: i64 = 200;

/// The brokers' log cleaner: on, as aggressive as the topics ask.
fn cleaner_settings() -> keel_node::config::CleanerSettings {
    keel_node::config::CleanerSettings {
        enable: true,
        threads: 1,
        io_bytes_per_second_max: u64::MAX,
        backoff_ms: CLEANER_BACKOFF_MS,
    }
}

/// How long a broker's supervisor waits before it starts a broker that failed to start.
const SUPERVISOR_RESTART: Duration = Duration::from_secs(1);

/// The body of a broker node: open the broker from its disk, register it, serve Kafka until a
/// graceful stop is requested, then stop as `keel start` does on SIGTERM.
async fn run_broker(
    spec: ClusterSpec,
    id: i32,
    disk: SimDisk,
    registry: Registry,
    stop: StopLine,
    interrupted_cleanings: Arc<AtomicU64>,
) {
    // Requests made before this start are not for it.
    let mut requested = stop.requested.subscribe();
    requested.borrow_and_update();
    // A broker that cannot open its disk exits, as a real one would, and its supervisor
    // (systemd's Restart=on-failure) starts it again a second later.
    // A cleaning the power loss (or stop) interrupted left its files: recovery finishes or
    // undoes it when the logs open.
    if disk
        .paths()
        .iter()
        .any(|p| p.ends_with(".cleaned") || p.ends_with(".swap"))
    {
        interrupted_cleanings.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
    let broker = loop {
        match Broker::open(settings(&spec, id, &disk), Arc::new(Metrics::new())).await {
            Ok(b) => break b,
            Err(e) => {
                tracing::error!("broker {id} cannot start: {e}; starting it again in 1 s");
                madsim::time::sleep(SUPERVISOR_RESTART).await;
            }
        }
    };
    registry
        .lock()
        .expect("registry poisoned")
        .insert(id, Arc::downgrade(&broker));
    keel_node::broker::cleaner::spawn(&broker, &cleaner_settings());
    let listener = match tokio::net::TcpListener::bind(broker_address(id)).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("broker {id} cannot listen: {e}");
            return;
        }
    };
    let server = WireServer::new(
        broker.clone(),
        keel_node::broker::served_apis(),
        WireConfig::default(),
    );
    // Clients are served during the controlled shutdown, as `keel start` serves them.
    let serving = tokio::spawn(server.serve(listener));
    if requested.changed().await.is_err() {
        return;
    }
    let request = *requested.borrow_and_update();
    let handed_over = broker.controlled_shutdown(CONTROLLED_SHUTDOWN_WAIT).await;
    serving.abort();
    broker.checkpoint_all();
    stop.done.send_replace((request, handed_over));
}

impl SimCluster {
    /// Creates the broker nodes and starts them. `disks` gives each broker its disk (the
    /// caller chooses their faults).
    pub fn start(handle: &Handle, spec: ClusterSpec, disks: BTreeMap<i32, SimDisk>) -> SimCluster {
        let registry: Registry = Arc::default();
        let interrupted_cleanings = Arc::new(AtomicU64::new(0));
        let mut brokers = BTreeMap::new();
        for id in 1..=spec.brokers {
            let disk = disks
                .get(&id)
                .cloned()
                .unwrap_or_else(|| panic!("no disk for broker {id}"));
            let (spec2, disk2, registry2) = (spec.clone(), disk.clone(), registry.clone());
            let interrupted2 = interrupted_cleanings.clone();
            let stop = StopLine::new();
            let stop2 = stop.clone();
            let node = handle
                .create_node()
                .name(format!("broker-{id}"))
                .ip(broker_ip(id))
                .init(move || {
                    run_broker(
                        spec2.clone(),
                        id,
                        disk2.clone(),
                        registry2.clone(),
                        stop2.clone(),
                        interrupted2.clone(),
                    )
                })
                .build();
            brokers.insert(
                id,
                BrokerNode {
                    node,
                    disk,
                    up: true,
                    stop,
                },
            );
        }
        SimCluster {
            handle: handle.clone(),
            spec,
            brokers,
            registry,
            interrupted_cleanings,
        }
    }

    /// Broker starts that found a cleaning interrupted by a kill or a stop.
    pub fn interrupted_cleanings(&self) -> u64 {
        self.interrupted_cleanings
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn spec(&self) -> &ClusterSpec {
        &self.spec
    }

    /// Every broker's Kafka address.
    pub fn bootstrap(&self) -> Vec<SocketAddr> {
        self.brokers.keys().map(|&id| broker_address(id)).collect()
    }

    pub fn ids(&self) -> Vec<i32> {
        self.brokers.keys().copied().collect()
    }

    pub fn is_up(&self, id: i32) -> bool {
        self.brokers.get(&id).is_some_and(|b| b.up)
    }

    /// The madsim node id of broker `id`, for network faults.
    pub fn node_id(&self, id: i32) -> madsim::task::NodeId {
        self.brokers[&id].node.id()
    }

    /// Power loss: kills every task of the broker, then its disk loses what was not synced.
    pub fn kill(&mut self, id: i32) {
        let b = self.brokers.get_mut(&id).expect("a broker of the cluster");
        if !b.up {
            return;
        }
        self.handle.kill(b.node.id());
        b.disk.crash();
        b.up = false;
        self.registry.lock().expect("registry poisoned").remove(&id);
    }

    /// A graceful stop, as on SIGTERM: asks broker `id` to stop, waits (up to `wait`) until its
    /// controlled shutdown and checkpoints are done, then ends the process with its disk
    /// intact (no power loss); one that did not finish in time is ended all the same, as a
    /// supervisor's SIGKILL would. `Some(handed_over)` if the broker finished stopping (with
    /// whether every leadership was moved off it first), `None` if it was cut short or was
    /// not running. Takes the cluster's lock only briefly, so the nemesis awaits it unlocked.
    pub async fn stop_gracefully(
        cluster: &Mutex<SimCluster>,
        id: i32,
        wait: Duration,
    ) -> Option<bool> {
        let (request, mut done) = {
            let c = cluster.lock().expect("cluster poisoned");
            let b = c.brokers.get(&id).expect("a broker of the cluster");
            if !b.up {
                return None;
            }
            let mut request = 0;
            b.stop.requested.send_modify(|r| {
                *r += 1;
                request = *r;
            });
            (request, b.stop.done.subscribe())
        };
        let finished = madsim::time::timeout(wait, done.wait_for(|(r, _)| *r == request))
            .await
            .ok()
            .and_then(Result::ok)
            .map(|d| d.1);
        let mut c = cluster.lock().expect("cluster poisoned");
        let node = c.brokers[&id].node.id();
        c.handle.kill(node);
        if let Some(b) = c.brokers.get_mut(&id) {
            b.up = false;
        }
        c.registry.lock().expect("registry poisoned").remove(&id);
        finished
    }

    /// Starts a killed broker again from its disk.
    pub fn restart(&mut self, id: i32) {
        let b = self.brokers.get_mut(&id).expect("a broker of the cluster");
        if b.up {
            return;
        }
        self.handle.restart(b.node.id());
        b.up = true;
    }

    pub fn pause(&self, id: i32) {
        self.handle.pause(self.brokers[&id].node.id());
    }

    pub fn resume(&self, id: i32) {
        self.handle.resume(self.brokers[&id].node.id());
    }

    pub fn disk(&self, id: i32) -> &SimDisk {
        &self.brokers[&id].disk
    }

    /// The live brokers' state, for the invariant checks (read only).
    pub fn live_brokers(&self) -> Vec<(i32, Arc<Broker>)> {
        self.registry
            .lock()
            .expect("registry poisoned")
            .iter()
            .filter_map(|(&id, b)| b.upgrade().map(|b| (id, b)))
            .collect()
    }
}
