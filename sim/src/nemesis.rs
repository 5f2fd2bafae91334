//! The nemesis: the faults a run injects during its fault phase, and healing.
//!
//! What it owns: the choice of the next fault (one at a time, from the kinds the seed
//! allows, after a random pause), its injection and its undoing, and [`heal`], which undoes
//! every fault for good before the liveness phase.
//!
//! What always holds:
//! - Each fault is undone before the next one starts, except a faulty disk
//!   ([`Fault::Disk`]), which stays on for the whole fault phase.
//! - Faults stay inside keel's fault model (docs/replication.md): a power loss loses only
//!   unsynced writes; network faults delay or cut traffic but never alter bytes; disk damage
//!   and a full disk hit one broker at a time, so acknowledged data always keeps an intact
//!   copy on another in-sync replica.
//! - After [`heal`], every broker runs, the network is whole with madsim's default latency
//!   and no loss, every disk is quiet with room to spare, and clients' connections no longer
//!   break.
//! - Every draw comes from one RNG seeded by the run's seed: a seed injects the same faults at
//!   the same simulated times.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_core::controller::broker_config::{
    FOLLOWER_REPLICATION_THROTTLED_RATE, LEADER_REPLICATION_THROTTLED_RATE,
};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::client::{Client, ClientConfig, ConnectionFaults};
use crate::disk::SimDisk;
use crate::harness::{SimCluster, CONTROLLED_SHUTDOWN_WAIT};
use crate::run::{Coverage, Params, Trace};

/// The kinds of faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// Power loss of one broker, restarted a few seconds later.
    Kill,
    /// Power loss of every broker at once.
    ClusterCrash,
    /// A broker stops running for a while (a long GC pause, a stopped VM).
    Pause,
    /// A broker is cut off the network both ways.
    ClogNode,
    /// One direction of one link between brokers is cut (an asymmetric partition).
    ClogLink,
    /// Bit rot, misdirected writes and I/O errors on one broker's disk.
    Disk,
    /// FoundationDB's swizzle-clogging: a random subset of brokers is cut off one at a time,
    /// then let back one at a time in another order.
    SwizzleClog,
    /// The whole network slows down (a higher latency range) and may lose packets, which TCP
    /// resends: delivery is late, never wrong.
    Latency,
    /// Clients' connections break after a request was written and before its answer is read;
    /// clients retry on a new connection.
    ClientBreak,
    /// One broker's disk fills up: appends fail with `NoSpace` until space returns.
    FullDisk,
    /// Overlapping faults: a broker is cut off the network, and while it is, another
    /// broker loses power; they come back in a random order.
    CrashWhilePartitioned,
    /// A broker loses power, restarts, and loses power again a few milliseconds to a
    /// second into its recovery (opening its logs, registering, catching up).
    CrashInRecovery,
    /// A partition's leader loses power; within milliseconds of the next leader taking
    /// over, that one loses power too.
    KillAfterElection,
    /// A burst of leader changes: a partition's leader is restarted (a power loss), and as
    /// soon as the next leader is seen, that one too, three to six times in a row.
    LeaderBurst,
    /// An operator's graceful restart (SIGTERM): one broker's controlled shutdown moves its
    /// leaderships away, it stops with its disk intact, and starts again a few seconds later.
    ControlledShutdown,
    /// An operator's preferred leader election (ElectLeaders, KIP-460) for every partition of
    /// the workload's topic, through the Kafka API.
    PreferredElection,
    /// An operator's partition reassignment (AlterPartitionReassignments, KIP-455) of one
    /// partition of the workload's topic, through the Kafka API: a grow (one more replica), a
    /// shrink (one fewer, not below `min.insync.replicas`, and not with a faulty disk), a move
    /// (one replica replaced), or a cancellation (of a move started 0 to 200 ms before, when
    /// none is in progress); one in three first sets the replication throttle, which stays
    /// until the cluster heals.
    Reassign,
}

impl Fault {
    pub const ALL: [Fault; 17] = [
        Fault::Kill,
        Fault::ClusterCrash,
        Fault::Pause,
        Fault::ClogNode,
        Fault::ClogLink,
        Fault::Disk,
        Fault::SwizzleClog,
        Fault::Latency,
        Fault::ClientBreak,
        Fault::FullDisk,
        Fault::CrashWhilePartitioned,
        Fault::CrashInRecovery,
        Fault::KillAfterElection,
        Fault::LeaderBurst,
        Fault::ControlledShutdown,
        Fault::PreferredElection,
        Fault::Reassign,
    ];

    /// The cluster operations an operator performs, drawn after everything else (so each
    /// seed's earlier draws stay as they were); a kind added here goes at the end.
    pub const OPERATIONS: [Fault; 3] = [
        Fault::ControlledShutdown,
        Fault::PreferredElection,
        Fault::Reassign,
    ];

    /// The kinds [`Params::sample`] draws first, in one pass (the ten kinds there were when
    /// that pass was last changed: adding a kind to it would change every seed's draws).
    pub const FIRST_DRAWN: [Fault; 10] = [
        Fault::Kill,
        Fault::ClusterCrash,
        Fault::Pause,
        Fault::ClogNode,
        Fault::ClogLink,
        Fault::Disk,
        Fault::SwizzleClog,
        Fault::Latency,
        Fault::ClientBreak,
        Fault::FullDisk,
    ];

    /// The schedules that stack faults or make them in quick succession, drawn after
    /// everything else (so each seed's cluster, workload and earlier kinds stay as they were).
    pub const OVERLAPPING: [Fault; 4] = [
        Fault::CrashWhilePartitioned,
        Fault::CrashInRecovery,
        Fault::KillAfterElection,
        Fault::LeaderBurst,
    ];

    /// The kinds added after the first six, which [`Params::sample`] draws after everything
    /// else so that the earlier draws of each seed stayed as they were.
    pub const ADDED: [Fault; 4] = [
        Fault::SwizzleClog,
        Fault::Latency,
        Fault::ClientBreak,
        Fault::FullDisk,
    ];

    /// The kind named `name` (as [`Fault::name`] gives it).
    pub fn from_name(name: &str) -> Option<Fault> {
        Fault::ALL.into_iter().find(|f| f.name() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::ClusterCrash => "cluster-crash",
            Fault::Pause => "pause",
            Fault::ClogNode => "clog-node",
            Fault::ClogLink => "clog-link",
            Fault::Disk => "disk",
            Fault::SwizzleClog => "swizzle-clog",
            Fault::Latency => "latency",
            Fault::ClientBreak => "client-break",
            Fault::FullDisk => "full-disk",
            Fault::CrashWhilePartitioned => "crash-partitioned",
            Fault::CrashInRecovery => "crash-recovery",
            Fault::KillAfterElection => "kill-elected",
            Fault::LeaderBurst => "leader-burst",
            Fault::ControlledShutdown => "controlled-shutdown",
            Fault::PreferredElection => "preferred-election",
            Fault::Reassign => "reassign",
        }
    }
}

/// What the nemesis acts on.
pub(crate) struct Targets<'a> {
    pub cluster: &'a Arc<Mutex<SimCluster>>,
    pub disks: &'a BTreeMap<i32, SimDisk>,
    /// The switch every workload client's connections share.
    pub connections: &'a ConnectionFaults,
    pub trace: &'a Trace,
}

/// The address of the `n`th preferred election's client node: a subnet no other node uses,
/// one address per election (a node is never removed, and two must not share an address).
fn election_ip(n: u32) -> std::net::IpAddr {
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(
        10,
        0,
        2 + (n / 250) as u8,
        (n % 250) as u8 + 1,
    ))
}

/// The pause between two brokers of a swizzle, clogged or unclogged.
const SWIZZLE_GAP_MS: std::ops::RangeInclusive<u64> = 50..=1_000;
/// The most free space a full disk has left when it fills (a few batches' worth).
const FULL_DISK_HEADROOM_BYTES_MAX: u64 = 16 * 1024;

/// Injects faults for the fault phase ([`Params::fault_ms`]), one at a time.
pub(crate) async fn nemesis(params: &Params, t: &Targets<'_>, coverage: &mut Coverage) {
    let mut rng = StdRng::seed_from_u64(params.seed ^ 0x006e_656d_6573_6973);
    let kinds: Vec<Fault> = params.faults.iter().copied().collect();
    let ids: Vec<i32> = (1..=params.cluster.brokers).collect();
    let net = madsim::net::NetSim::current();
    let (cluster, trace) = (t.cluster, t.trace);
    let mut elections = 0u32;
    let mut reassignments = 0u32;
    if let Some(id) = params.faulty_disk {
        t.disks[&id].set_faults(true);
        *coverage.faults.entry(Fault::Disk.name()).or_default() += 1;
        trace.event(format!("disk faults on broker {id}"));
    }
    for d in t
        .disks
        .iter()
        .filter(|(id, _)| Some(**id) != params.faulty_disk)
        .map(|(_, d)| d)
    {
        d.set_faults(false);
    }
    let end = trace.now_ms() + params.fault_ms;
    while trace.now_ms() < end {
        let pause = rng.gen_range(params.fault_interval_ms / 2..=params.fault_interval_ms * 3 / 2);
        madsim::time::sleep(Duration::from_millis(pause)).await;
        note_completed_reassignments(cluster, coverage);
        let kind = kinds[rng.gen_range(0..kinds.len())];
        if kind == Fault::Disk {
            continue;
        }
        *coverage.faults.entry(kind.name()).or_default() += 1;
        let id = ids[rng.gen_range(0..ids.len())];
        // Up to 10 s: longer than the lag bound, so cut-off followers leave the ISR while the
        // broker itself stays registered (its heartbeats may still reach the controller).
        let lasts = Duration::from_millis(rng.gen_range(500..10_000));
        match kind {
            Fault::Kill => {
                trace.event(format!("kill broker {id} for {lasts:?}"));
                cluster.lock().expect("cluster poisoned").kill(id);
                madsim::time::sleep(lasts).await;
                cluster.lock().expect("cluster poisoned").restart(id);
                coverage.recoveries += 1;
                trace.event(format!("restart broker {id}"));
            }
            Fault::ClusterCrash => {
                trace.event(format!("power loss of every broker for {lasts:?}"));
                for &b in &ids {
                    cluster.lock().expect("cluster poisoned").kill(b);
                }
                madsim::time::sleep(lasts).await;
                for &b in &ids {
                    cluster.lock().expect("cluster poisoned").restart(b);
                    coverage.recoveries += 1;
                }
                trace.event("every broker restarted");
            }
            Fault::Pause => {
                trace.event(format!("pause broker {id} for {lasts:?}"));
                cluster.lock().expect("cluster poisoned").pause(id);
                madsim::time::sleep(lasts).await;
                cluster.lock().expect("cluster poisoned").resume(id);
            }
            Fault::ClogNode => {
                let node = cluster.lock().expect("cluster poisoned").node_id(id);
                trace.event(format!("cut broker {id} off the network for {lasts:?}"));
                net.clog_node(node);
                madsim::time::sleep(lasts).await;
                net.unclog_node(node);
            }
            Fault::ClogLink => {
                let other = ids[rng.gen_range(0..ids.len())];
                if other == id {
                    continue;
                }
                let (a, b) = {
                    let c = cluster.lock().expect("cluster poisoned");
                    (c.node_id(id), c.node_id(other))
                };
                trace.event(format!("cut the link {id} -> {other} for {lasts:?}"));
                net.clog_link(a, b);
                madsim::time::sleep(lasts).await;
                net.unclog_link(a, b);
            }
            Fault::SwizzleClog => swizzle_clog(&mut rng, &ids, lasts, t).await,
            Fault::Latency => {
                let (low, high) = params.slow_latency_ms;
                let loss = params.slow_packet_loss;
                trace.event(format!(
                    "slow network for {lasts:?}: latency {low}..{high} ms, packet loss {loss:.3}"
                ));
                net.update_config(|c| {
                    c.send_latency = Duration::from_millis(low)..Duration::from_millis(high);
                    c.packet_loss_rate = loss;
                });
                madsim::time::sleep(lasts).await;
                net.update_config(|c| *c = madsim::net::Config::default());
                trace.event("network speed back to normal");
            }
            Fault::ClientBreak => {
                let p = params.client_break_probability;
                trace.event(format!(
                    "client connections break mid-request (p={p:.2}) for {lasts:?}"
                ));
                t.connections.set_break_probability(p);
                madsim::time::sleep(lasts).await;
                t.connections.set_break_probability(0.0);
                trace.event("client connections hold again");
            }
            Fault::FullDisk => {
                let disk = &t.disks[&id];
                // Often none at all: even the smallest write (a checkpoint) then fails.
                let headroom = if rng.gen_bool(0.25) {
                    0
                } else {
                    rng.gen_range(0..=FULL_DISK_HEADROOM_BYTES_MAX)
                };
                trace.event(format!(
                    "broker {id}'s disk full ({headroom} bytes left) for {lasts:?}"
                ));
                disk.set_capacity(Some(disk.used_bytes() + headroom));
                // The disk stays full while the next faults come (a restart on a full disk, an
                // election while a follower cannot write): the nemesis goes on at once.
                let (disk, trace) = (disk.clone(), trace.clone());
                madsim::task::spawn(async move {
                    madsim::time::sleep(lasts).await;
                    disk.set_capacity(None);
                    trace.event(format!("broker {id}'s disk has space again"));
                });
            }
            Fault::CrashWhilePartitioned => {
                let other = ids[rng.gen_range(0..ids.len())];
                if other == id {
                    continue;
                }
                let node = cluster.lock().expect("cluster poisoned").node_id(id);
                let gap = Duration::from_millis(rng.gen_range(0..=1_000));
                trace.event(format!(
                    "cut broker {id} off the network, and {gap:?} later kill broker {other}, \
                     both for {lasts:?}"
                ));
                net.clog_node(node);
                madsim::time::sleep(gap).await;
                cluster.lock().expect("cluster poisoned").kill(other);
                madsim::time::sleep(lasts).await;
                // Back in a random order, a random gap apart.
                let gap = Duration::from_millis(rng.gen_range(0..=1_000));
                if rng.gen_bool(0.5) {
                    net.unclog_node(node);
                    madsim::time::sleep(gap).await;
                    cluster.lock().expect("cluster poisoned").restart(other);
                } else {
                    cluster.lock().expect("cluster poisoned").restart(other);
                    madsim::time::sleep(gap).await;
                    net.unclog_node(node);
                }
                coverage.recoveries += 1;
                trace.event(format!(
                    "broker {id} back on the network, broker {other} restarted"
                ));
            }
            Fault::CrashInRecovery => {
                let again = Duration::from_millis(rng.gen_range(1..=1_000));
                let down = Duration::from_millis(rng.gen_range(200..=2_000));
                trace.event(format!(
                    "kill broker {id} for {lasts:?}, then again {again:?} into its recovery, \
                     for {down:?}"
                ));
                cluster.lock().expect("cluster poisoned").kill(id);
                madsim::time::sleep(lasts).await;
                cluster.lock().expect("cluster poisoned").restart(id);
                madsim::time::sleep(again).await;
                cluster.lock().expect("cluster poisoned").kill(id);
                madsim::time::sleep(down).await;
                cluster.lock().expect("cluster poisoned").restart(id);
                coverage.recoveries += 2;
                trace.event(format!("restart broker {id}"));
            }
            Fault::KillAfterElection => {
                let partition = rng.gen_range(0..params.partitions);
                let Some((first, epoch)) = current_leader(cluster, partition) else {
                    continue;
                };
                let within = Duration::from_millis(rng.gen_range(0..=20));
                trace.event(format!(
                    "kill broker {first}, leader of partition {partition} at epoch {epoch}, \
                     then the next leader {within:?} after it is elected"
                ));
                cluster.lock().expect("cluster poisoned").kill(first);
                let next = next_leader(cluster, partition, epoch, ELECTION_WAIT).await;
                let mut killed = vec![first];
                if let Some((second, epoch)) = next {
                    madsim::time::sleep(within).await;
                    trace.event(format!(
                        "kill broker {second}, elected for partition {partition} at epoch {epoch}"
                    ));
                    cluster.lock().expect("cluster poisoned").kill(second);
                    killed.push(second);
                }
                madsim::time::sleep(lasts).await;
                for b in killed {
                    cluster.lock().expect("cluster poisoned").restart(b);
                    coverage.recoveries += 1;
                }
                trace.event("killed leaders restarted");
            }
            Fault::LeaderBurst => {
                let partition = rng.gen_range(0..params.partitions);
                let changes = rng.gen_range(3..=6);
                trace.event(format!(
                    "leader burst: partition {partition}'s leader restarted {changes} times in a row"
                ));
                for _ in 0..changes {
                    let Some((leader, epoch)) = current_leader(cluster, partition) else {
                        break;
                    };
                    cluster.lock().expect("cluster poisoned").kill(leader);
                    madsim::time::sleep(Duration::from_millis(rng.gen_range(10..=300))).await;
                    cluster.lock().expect("cluster poisoned").restart(leader);
                    coverage.recoveries += 1;
                    if next_leader(cluster, partition, epoch, ELECTION_WAIT)
                        .await
                        .is_none()
                    {
                        break;
                    }
                }
                trace.event("leader burst over");
            }
            Fault::ControlledShutdown => {
                trace.event(format!(
                    "controlled shutdown of broker {id} (SIGTERM), down for {lasts:?}"
                ));
                let outcome = SimCluster::stop_gracefully(
                    cluster,
                    id,
                    CONTROLLED_SHUTDOWN_WAIT + GRACEFUL_STOP_MARGIN,
                )
                .await;
                match outcome {
                    Some(true) => {
                        coverage.controlled_shutdowns += 1;
                        trace.event(format!("broker {id} stopped, leading nothing"));
                    }
                    Some(false) => trace.event(format!(
                        "broker {id} stopped without handing every leadership over in time"
                    )),
                    None => trace.event(format!("broker {id} cut short while stopping")),
                }
                madsim::time::sleep(lasts).await;
                cluster.lock().expect("cluster poisoned").restart(id);
                coverage.recoveries += 1;
                trace.event(format!("restart broker {id}"));
            }
            Fault::PreferredElection => {
                let bootstrap = cluster.lock().expect("cluster poisoned").bootstrap();
                let partitions: Vec<i32> = (0..params.partitions).collect();
                // From a client node of its own, as an operator's tool would run: the
                // simulation's main node has no address brokers answer.
                elections += 1;
                let node = madsim::runtime::Handle::current()
                    .create_node()
                    .name(format!("elect-{elections}"))
                    .ip(election_ip(elections))
                    .build();
                let answered = node
                    .spawn(async move {
                        let mut admin = Client::new(ClientConfig::new(bootstrap));
                        admin.elect_leaders(0, crate::run::TOPIC, &partitions).await
                    })
                    .await;
                let answered = answered.unwrap_or_else(|_| {
                    Err(crate::client::ClientError::Protocol(
                        "the election's client task was lost".into(),
                    ))
                });
                match answered {
                    Ok(results) => {
                        let elected = results.iter().filter(|(_, code)| *code == 0).count();
                        coverage.preferred_elections += elected as u64;
                        trace.event(format!(
                            "preferred leader election of {}: {results:?} (partition, error code)",
                            crate::run::TOPIC
                        ));
                    }
                    Err(e) => trace.event(format!("preferred leader election: {e}")),
                }
            }
            Fault::Reassign => {
                reassignments += 1;
                reassign(&mut rng, params, t, coverage, reassignments).await;
            }
            Fault::Disk => unreachable!("skipped above"),
        }
    }
    note_completed_reassignments(cluster, coverage);
}

/// The metadata applied at the highest raft index among the live brokers.
fn latest_metadata(
    cluster: &Arc<Mutex<SimCluster>>,
) -> Option<Arc<keel_core::controller::MetadataState>> {
    let brokers = cluster.lock().expect("cluster poisoned").live_brokers();
    brokers
        .iter()
        .max_by_key(|(_, b)| b.cluster().applied_index())
        .map(|(_, b)| b.cluster().state())
}

/// Counts the accepted reassignments the metadata shows completed (no reassignment in
/// progress, exactly the target replicas), and forgets them.
pub(crate) fn note_completed_reassignments(
    cluster: &Arc<Mutex<SimCluster>>,
    coverage: &mut Coverage,
) {
    let Some(state) = latest_metadata(cluster) else {
        return;
    };
    coverage.pending_reassignments.retain(|&partition, target| {
        let done = state
            .partition(crate::run::TOPIC, partition)
            .is_some_and(|p| {
                !p.is_reassigning() && p.replicas.iter().map(|b| b.0).eq(target.iter().copied())
            });
        if done {
            coverage.reassignments_completed += 1;
        }
        !done
    });
}

/// [`Fault::Reassign`]: the `n`th reassignment of a random partition of the workload's topic,
/// sent from a client node of its own. The plan starts from where the partition is heading (its
/// target replicas when one is in progress). An accepted target is remembered until the
/// metadata shows it completed ([`note_completed_reassignments`]); the convergence phase
/// requires each one left to have completed. A request whose outcome is unknown (no answer)
/// forgets the partition's target: it may or may not have replaced it.
async fn reassign(
    rng: &mut StdRng,
    params: &Params,
    t: &Targets<'_>,
    coverage: &mut Coverage,
    n: u32,
) {
    let (cluster, trace) = (t.cluster, t.trace);
    let partition = rng.gen_range(0..params.partitions);
    let op = rng.gen_range(0..4u32);
    let Some(state) = latest_metadata(cluster) else {
        trace.event("reassignment: no broker runs");
        return;
    };
    let Some(p) = state.partition(crate::run::TOPIC, partition) else {
        trace.event(format!("reassignment: no partition {partition} yet"));
        return;
    };
    let current: Vec<i32> = p.target_replicas().iter().map(|b| b.0).collect();
    let others: Vec<i32> = (1..=params.cluster.brokers)
        .filter(|b| !current.contains(b))
        .collect();
    // Never fewer replicas than acks=all needs; with a faulty disk, never fewer than the
    // replication factor (the fault model keeps a second intact copy of acknowledged data).
    let size_min = if params.faulty_disk.is_some() {
        current.len()
    } else {
        (params.min_insync_replicas.max(1) as usize).max(1)
    };
    let (what, target) = match op {
        0 if !others.is_empty() => {
            let mut t = current.clone();
            t.push(*others.choose(rng).expect("not empty"));
            ("grow", Some(t))
        }
        1 if current.len() > size_min => {
            let mut t = current.clone();
            t.remove(rng.gen_range(0..t.len()));
            ("shrink", Some(t))
        }
        2 if !others.is_empty() => {
            let mut t = current.clone();
            let i = rng.gen_range(0..t.len());
            t[i] = *others.choose(rng).expect("not empty");
            ("move", Some(t))
        }
        3 => ("cancel", None),
        _ => {
            trace.event(format!(
                "reassignment of {}-{partition}: nothing to do for op {op} from {current:?}",
                crate::run::TOPIC
            ));
            return;
        }
    };
    // An operator who changes their mind: a cancellation without a reassignment in progress
    // first starts one (a move, when there is a broker to move to), then cancels it 0 to 200
    // ms later, while the new replica may still be catching up.
    if target.is_none() && !p.is_reassigning() && !others.is_empty() {
        let mut first = current.clone();
        let i = rng.gen_range(0..first.len());
        first[i] = *others.choose(rng).expect("not empty");
        send_reassignment(t, coverage, partition, Some(first), "move", &current, n * 2).await;
        madsim::time::sleep(Duration::from_millis(rng.gen_range(0..=200))).await;
    }
    // An operator who throttles the copying (`keel partitions reassign --throttle`): one
    // reassignment in three first sets the cluster default rates, low enough that a new
    // replica's catch-up is held back, above the workload's produce rate so that it still
    // joins the ISR. The throttle stays until the cluster heals ([`clear_throttle`]).
    if target.is_some() && rng.gen_ratio(1, 3) {
        let rate = rng.gen_range(THROTTLE_RATES);
        let code = alter_throttle(t, Some(rate), n).await;
        if code == Some(0) {
            coverage.throttles_set += 1;
        }
    }
    send_reassignment(t, coverage, partition, target, what, &current, n * 2 + 1).await;
    note_completed_reassignments(cluster, coverage);
}

/// The replication throttle rates the reassignment fault sets, in bytes per second.
const THROTTLE_RATES: std::ops::RangeInclusive<u64> = 8 * 1024..=128 * 1024;

/// Sets the cluster default replication throttle (both rates) to `rate`, or removes it
/// (`None`), from client node `n` of its own: the answer's error code, `None` without one.
async fn alter_throttle(t: &Targets<'_>, rate: Option<u64>, n: u32) -> Option<i16> {
    let bootstrap = t.cluster.lock().expect("cluster poisoned").bootstrap();
    let client = madsim::runtime::Handle::current()
        .create_node()
        .name(format!("throttle-{n}"))
        .ip(throttle_ip(n))
        .build();
    let answered = client
        .spawn(async move {
            let mut admin = Client::new(ClientConfig::new(bootstrap));
            let configs = [
                (LEADER_REPLICATION_THROTTLED_RATE, rate),
                (FOLLOWER_REPLICATION_THROTTLED_RATE, rate),
            ];
            admin.alter_broker_configs("", &configs).await
        })
        .await
        .ok();
    t.trace.event(format!(
        "replication throttle set to {rate:?} bytes/s: {answered:?}"
    ));
    answered?.ok()
}

/// Removes the replication throttle once the cluster healed, as the operator does once the
/// reassignments completed: a few attempts, a second apart (the metadata quorum may still be
/// electing). A throttle that could not be removed is left to the rest of the run, which
/// must still pass: the rates are above the produce rate.
pub(crate) async fn clear_throttle(t: &Targets<'_>, coverage: &Coverage) {
    if coverage.throttles_set == 0 {
        return;
    }
    for attempt in 0..10u32 {
        if alter_throttle(t, None, 10_000 + attempt).await == Some(0) {
            return;
        }
        madsim::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The address of the `n`th throttle client node: a subnet of their own (10.0.64.0 and up).
fn throttle_ip(n: u32) -> std::net::IpAddr {
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(
        10,
        0,
        64 + (n / 250) as u8,
        (n % 250) as u8 + 1,
    ))
}

/// Sends one AlterPartitionReassignments for `partition` (`None` cancels) from client node
/// `node` of its own, and records its outcome in `coverage`.
async fn send_reassignment(
    t: &Targets<'_>,
    coverage: &mut Coverage,
    partition: i32,
    target: Option<Vec<i32>>,
    what: &str,
    current: &[i32],
    node: u32,
) {
    let (cluster, trace) = (t.cluster, t.trace);
    let bootstrap = cluster.lock().expect("cluster poisoned").bootstrap();
    let client = madsim::runtime::Handle::current()
        .create_node()
        .name(format!("reassign-{node}"))
        .ip(admin_ip(node))
        .build();
    let sent = target.clone();
    let answered = client
        .spawn(async move {
            let mut admin = Client::new(ClientConfig::new(bootstrap));
            admin
                .alter_partition_reassignment(crate::run::TOPIC, partition, sent.as_deref())
                .await
        })
        .await
        .unwrap_or_else(|_| {
            Err(crate::client::ClientError::Protocol(
                "the reassignment's client task was lost".into(),
            ))
        });
    trace.event(format!(
        "reassignment ({what}) of {}-{partition} from {current:?} to {target:?}: {answered:?}",
        crate::run::TOPIC
    ));
    match (answered, target) {
        (Ok(0), Some(target)) => {
            coverage.reassignments_started += 1;
            coverage.pending_reassignments.insert(partition, target);
        }
        (Ok(0), None) => {
            coverage.reassignments_cancelled += 1;
            coverage.pending_reassignments.remove(&partition);
        }
        // Refused: nothing changed.
        (Ok(_), _) => {}
        (Err(_), _) => {
            coverage.pending_reassignments.remove(&partition);
        }
    }
}

/// The address of the `n`th reassignment client node: a subnet of their own (10.0.128.0
/// and up), apart from the preferred elections' ([`election_ip`]).
fn admin_ip(n: u32) -> std::net::IpAddr {
    std::net::IpAddr::V4(std::net::Ipv4Addr::new(
        10,
        0,
        128 + (n / 250) as u8,
        (n % 250) as u8 + 1,
    ))
}

/// How long a graceful stop may take beyond the controlled shutdown's own bound (opening the
/// broker, if it is still starting, and its checkpoints), before it is cut short.
const GRACEFUL_STOP_MARGIN: Duration = Duration::from_secs(20);

/// How long the election schedules wait for a partition's next leader.
const ELECTION_WAIT: Duration = Duration::from_secs(10);
/// How often they look.
const ELECTION_LOOK: Duration = Duration::from_millis(2);

/// The live broker that leads partition `partition` of the workload's topic at the highest
/// epoch, with that epoch.
fn current_leader(cluster: &Arc<Mutex<SimCluster>>, partition: i32) -> Option<(i32, i32)> {
    let brokers = cluster.lock().expect("cluster poisoned").live_brokers();
    brokers
        .iter()
        .filter_map(|(id, b)| {
            let p = b.replica(crate::run::TOPIC, partition)?;
            p.with(|r| r.is_leader().then(|| (*id, r.leader_epoch().0)))
        })
        .max_by_key(|&(_, epoch)| epoch)
}

/// Waits, up to `wait`, for a live broker to lead `partition` at an epoch above `epoch`.
async fn next_leader(
    cluster: &Arc<Mutex<SimCluster>>,
    partition: i32,
    epoch: i32,
    wait: Duration,
) -> Option<(i32, i32)> {
    let deadline = madsim::time::Instant::now() + wait;
    while madsim::time::Instant::now() < deadline {
        if let Some(next) = current_leader(cluster, partition).filter(|&(_, e)| e > epoch) {
            return Some(next);
        }
        madsim::time::sleep(ELECTION_LOOK).await;
    }
    None
}

/// Clogs a random subset of at least two brokers one at a time, holds for `lasts`, then
/// unclogs them one at a time in a different order (FoundationDB's swizzle-clogging: the
/// partitions it makes on the way in and out are ones a single clog never makes).
async fn swizzle_clog(rng: &mut StdRng, ids: &[i32], lasts: Duration, t: &Targets<'_>) {
    let net = madsim::net::NetSim::current();
    let mut chosen = ids.to_vec();
    chosen.shuffle(rng);
    chosen.truncate(rng.gen_range(2..=ids.len().max(2)));
    let mut out = chosen.clone();
    out.shuffle(rng);
    if out == chosen && out.len() > 1 {
        out.rotate_left(1);
    }
    let node = |id: i32| t.cluster.lock().expect("cluster poisoned").node_id(id);
    t.trace.event(format!(
        "swizzle: clog brokers {chosen:?} one by one, hold {lasts:?}, unclog {out:?}"
    ));
    for &id in &chosen {
        net.clog_node(node(id));
        madsim::time::sleep(Duration::from_millis(rng.gen_range(SWIZZLE_GAP_MS))).await;
    }
    madsim::time::sleep(lasts).await;
    for &id in &out {
        net.unclog_node(node(id));
        madsim::time::sleep(Duration::from_millis(rng.gen_range(SWIZZLE_GAP_MS))).await;
    }
    t.trace.event("swizzle: every broker unclogged");
}

/// Restarts and resumes every broker, unclogs the network and restores its default latency
/// and loss, stops disk faults, gives every disk its space back and stops breaking client
/// connections.
pub(crate) fn heal(t: &Targets<'_>, coverage: &mut Coverage) {
    let net = madsim::net::NetSim::current();
    net.update_config(|c| *c = madsim::net::Config::default());
    t.connections.set_break_probability(0.0);
    let mut c = t.cluster.lock().expect("cluster poisoned");
    for id in c.ids() {
        if !c.is_up(id) {
            c.restart(id);
            coverage.recoveries += 1;
        }
        c.resume(id);
        net.unclog_node(c.node_id(id));
    }
    for d in t.disks.values() {
        d.set_faults(false);
        d.set_capacity(None);
    }
    t.trace.event(
        "heal: every broker up, network whole and fast, disks quiet with space, connections hold",
    );
}
