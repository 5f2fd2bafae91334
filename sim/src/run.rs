//! One simulation run: a seed's cluster, workload and faults, then healing, a final read, the
//! checker's verdict and the run's coverage.
//!
//! A run has three phases, all in simulated time:
//! 1. **Faults** ([`Params::fault_ms`]): producers send unique values with acks=all and
//!    idempotence, consumers poll by assign, and the nemesis ([`crate::nemesis`]) kills and
//!    restarts brokers (a kill is a power loss of that broker's disk), crashes the whole
//!    cluster at once, pauses brokers, clogs nodes, single links and swizzled subsets, slows
//!    the network, breaks clients' connections mid-request and fills disks; one broker's disk
//!    may also rot, misdirect writes and fail I/O. A monitor checks the replication invariants
//!    on the brokers' own state every [`MONITOR_MS`].
//! 2. **Healing** ([`crate::nemesis::heal`]): every broker is restarted and resumed, the
//!    network unclogged and back to its default speed, disk faults stopped, disks given space
//!    and connections left whole; producers finish the send they are in and stop. Each must
//!    within [`LIVENESS_MS`].
//! 3. **Final read**: a fresh reader reads every partition to its end; the whole history goes
//!    to [`crate::checker::check`].
//!
//! The verdict is [`Verdict::Crash`] if anything panicked (an invariant assertion in a broker
//! included), [`Verdict::Safety`] if the checker or the monitor found a violation,
//! [`Verdict::Liveness`] if healing or the final read did not finish in time, else
//! [`Verdict::Pass`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keel_core::partition::Role;
use keel_core::planted::Bug;
use keel_core::Offset;
use madsim::runtime::{Handle, Runtime};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::checker::{
    check, AnomalyKind, CheckReport, History, Key, OpKind, ProcessId, SendOutcome, Value,
};
use crate::client::{
    Client, ClientConfig, ClientError, ConnectionFaults, Consumer, GroupConsumer, TopicSpec,
};
use crate::compact::{CompactHistory, CompactRead, CompactRecord, CompactSend, COMPACT_TOPIC};
use crate::converge::{converge, Compared, Failure, Settle};
use crate::disk::{DiskStats, FaultConfig, SimDisk};
use crate::harness::{ClusterSpec, SimCluster};
pub use crate::nemesis::Fault;
use crate::nemesis::{heal, nemesis, Targets};
use crate::txn::{TxnHistory, TxnOutcome, TxnRead, TxnRecord, TXN_TIMEOUT_MS, TXN_TOPIC};

/// How often the monitor checks the invariants.
pub const MONITOR_MS: u64 = 100;
/// The bound on healing and on the final read.
pub const LIVENESS_MS: u64 = 60_000;
/// How long the final read waits for a partition's end offset to pass its acknowledged
/// writes before it reads to whatever end there is.
pub const FINAL_READ_SETTLE_MS: u64 = 20_000;
/// The topic the workload uses.
pub const TOPIC: &str = "jepsen";
/// Sends each producer makes after healing, every one of which must be acknowledged.
pub const AVAILABILITY_SENDS: u32 = 5;
/// The bound on those sends, once every replica is back in its ISR.
pub const AVAILABILITY_MS: u64 = 30_000;
/// The largest share of the fault phase's sends that may be indefinite. Seeds 1 to 1000 of
/// every fault kind (2026-12-06) had a median of 0.9%, a 99th percentile of 7.0% and a maximum
/// of 19.0%: a run above 30% is far outside what keel does under these faults
/// (acknowledgements turned into timeouts). The client's idempotent retries hide most such
/// bugs (a retried batch is answered as a duplicate once committed), so this catches only
/// the gross ones; availability after healing is the sharper check.
pub const INDEFINITE_SHARE_MAX: f64 = 0.30;
/// Fewer fault-phase sends than this are too few to judge the share.
pub const INDEFINITE_SENDS_MIN: u64 = 20;
/// Events kept for the trace printed on failure.
const TRACE_EVENTS: usize = 60;
/// Salts the generator that picks a transactional seed's transaction version.
const TXN_VERSION_SALT: u64 = 0x7476_3276;

/// Everything a seed decides.
#[derive(Clone, Debug)]
pub struct Params {
    pub seed: u64,
    pub cluster: ClusterSpec,
    pub partitions: i32,
    pub replication_factor: i16,
    pub min_insync_replicas: i16,
    pub producers: u32,
    pub consumers: u32,
    /// Subscribe-mode consumers in one consumer group.
    pub group_consumers: u32,
    /// Transactional producers on [`crate::txn::TXN_TOPIC`] (0: no transactions this seed),
    /// and the `read_committed` consumers that poll it.
    pub txn_producers: u32,
    pub txn_consumers: u32,
    /// The transaction version the transactional producers speak: 1 (AddPartitionsToTxn,
    /// EndTxn v3, the epoch kept across transactions) or 2 (KIP-890 part 2: Produce v12 adds
    /// the partition, EndTxn v5 bumps the epoch), in half the transactional seeds.
    pub txn_version: i16,
    /// Producers of keyed values and tombstones on the compacted topic
    /// [`crate::compact::COMPACT_TOPIC`] (one consumer polls it).
    pub compact_producers: u32,
    /// How long the fault phase lasts.
    pub fault_ms: u64,
    /// The fault kinds this run may inject.
    pub faults: BTreeSet<Fault>,
    /// The mean pause between two faults.
    pub fault_interval_ms: u64,
    /// The broker whose disk rots, misdirects writes and fails I/O (none: every disk clean).
    pub faulty_disk: Option<i32>,
    pub disk_faults: FaultConfig,
    /// How long one sync takes on every broker's disk: acks wait for it, and a power loss
    /// loses what was appended meanwhile.
    pub sync_latency_ms: u64,
    /// [`Fault::Latency`]: the network's latency range (ms, from and below) while it is slow,
    /// and the share of packets it loses then (madsim's TCP resends them, later).
    pub slow_latency_ms: (u64, u64),
    pub slow_packet_loss: f64,
    /// [`Fault::ClientBreak`]: the probability that a request's connection breaks after the
    /// request was written.
    pub client_break_probability: f64,
    /// A planted bug (the `planted-bugs` feature only).
    pub bug: Option<Bug>,
}

impl Params {
    /// [`Params::sample`] without the fault kinds in `without` (at least a kill remains).
    pub fn sample_without(seed: u64, without: &[Fault]) -> Params {
        let mut params = Params::sample(seed);
        params.faults.retain(|f| !without.contains(f));
        if params.faults.is_empty() {
            params.faults.insert(Fault::Kill);
        }
        if !params.faults.contains(&Fault::Disk) {
            params.faulty_disk = None;
        }
        params
    }

    /// Samples a run from `seed` (swarm testing: each seed its own cluster, workload and
    /// fault mix).
    pub fn sample(seed: u64) -> Params {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x6b65_656c_5eed);
        let brokers = rng.gen_range(3..=5);
        let voters = if rng.gen_bool(0.5) { 3 } else { 1 };
        let replication_factor = if rng.gen_bool(0.8) { 3 } else { 2 };
        let min_insync_replicas = rng.gen_range(1..=replication_factor.min(2));
        let mut faults: BTreeSet<Fault> = Fault::FIRST_DRAWN
            .into_iter()
            .filter(|_| rng.gen_bool(0.6))
            .collect();
        if faults.is_empty() {
            faults.insert(Fault::Kill);
        }
        // Not the only raft voter's disk: the metadata log's only copy would be damaged (outside
        // the fault model, as below; with three voters a damaged one leaves a sound majority).
        let first_faulty = if voters == 1 { 2 } else { 1 };
        let faulty_disk = faults
            .contains(&Fault::Disk)
            .then(|| rng.gen_range(first_faulty..=brokers));
        // The fault model (docs/replication.md): disk faults never destroy every ISR copy of
        // acknowledged data. One disk is faulty, so every acknowledged write needs a second
        // copy: min.insync.replicas=2 (with min.insync.replicas=1 an ISR of the faulty broker
        // alone acknowledges writes that only its disk holds).
        let min_insync_replicas = if faulty_disk.is_some() {
            2
        } else {
            min_insync_replicas
        };
        let disk_faults = FaultConfig {
            latent_error_per_read: rng.gen_range(0.0..0.002),
            misdirect_per_append: rng.gen_range(0.0..0.002),
            io_error_per_op: rng.gen_range(0.0..0.001),
            torn_writes: true,
            ..FaultConfig::none()
        };
        let mut params = Params {
            seed,
            cluster: ClusterSpec {
                brokers,
                voters,
                // Short lag bounds make ISR shrinks (and out-of-ISR replicas) common.
                replica_lag_time_max_ms: rng.gen_range(1_500..=5_000),
                // The topic's own setting, for __consumer_offsets too: the group's commits
                // need the same second copy under disk faults.
                min_insync_replicas: i32::from(min_insync_replicas),
                ..ClusterSpec::default()
            },
            partitions: rng.gen_range(1..=3),
            replication_factor,
            min_insync_replicas,
            producers: rng.gen_range(1..=3),
            consumers: rng.gen_range(1..=2),
            group_consumers: 0,
            txn_producers: 0,
            txn_consumers: 0,
            txn_version: 1,
            compact_producers: 0,
            fault_ms: 30_000,
            faults,
            fault_interval_ms: rng.gen_range(1_000..=4_000),
            faulty_disk,
            disk_faults,
            sync_latency_ms: 0,
            slow_latency_ms: (1, 10),
            slow_packet_loss: 0.0,
            client_break_probability: 0.0,
            bug: None,
        };
        // Drawn last, so that adding it left every earlier draw (and so each seed's cluster,
        // workload and faults) as it was.
        params.sync_latency_ms = rng.gen_range(1..=20);
        // The same for the fault kinds added later and their parameters.
        for kind in Fault::ADDED {
            if rng.gen_bool(0.6) {
                params.faults.insert(kind);
            }
        }
        let latency_from = rng.gen_range(5..=50);
        params.slow_latency_ms = (latency_from, latency_from + rng.gen_range(20..=400));
        params.slow_packet_loss = if rng.gen_bool(0.5) {
            rng.gen_range(0.001..0.1)
        } else {
            0.0
        };
        params.client_break_probability = rng.gen_range(0.05..0.5);
        params.group_consumers = rng.gen_range(0..=2);
        // The overlapping and rapid schedules, last for the same reason.
        for kind in Fault::OVERLAPPING {
            if rng.gen_bool(0.5) {
                params.faults.insert(kind);
            }
        }
        // Small segments in half the runs (last, for the same reason): logs roll every few
        // batches, so syncs, recovery and truncation span segments.
        if rng.gen_bool(0.5) {
            params.cluster.segment_bytes = rng.gen_range(2_048..=32_768);
        }
        // The controller's leader balance in half the runs, checking every 2 to 10 s.
        if rng.gen_bool(0.5) {
            params.cluster.leader_balance_interval_ms = Some(rng.gen_range(2_000..=10_000));
        }
        // Cluster operations, for the same reason (a kind added to the list adds one draw here
        // and shifts only the transactional draws after it).
        for kind in Fault::OPERATIONS {
            if rng.gen_bool(0.5) {
                params.faults.insert(kind);
            }
        }
        // Transactions in half the runs (last, for the same reason).
        if rng.gen_bool(0.5) {
            params.txn_producers = rng.gen_range(1..=2);
            params.txn_consumers = rng.gen_range(1..=2);
            // Transaction version 2 in half of them, drawn from a generator of its own so
            // that every other draw of the seed stays as it was.
            if StdRng::seed_from_u64(seed ^ TXN_VERSION_SALT).gen_bool(0.5) {
                params.txn_version = 2;
            }
        }
        // The compacted workload in every run (last, for the same reason).
        params.compact_producers = rng.gen_range(1..=6);
        params
    }
}

impl fmt::Display for Params {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let faults: Vec<&str> = self.faults.iter().map(|f| f.name()).collect();
        write!(
            f,
            "seed={} brokers={} voters={} partitions={} rf={} min.insync={} producers={} \
             consumers={} group_consumers={} txn_producers={} txn_consumers={} txn_version={} \
             compact_producers={} fault_ms={} \
             faults=[{}] fault_interval_ms={} faulty_disk={:?} sync_latency_ms={} segment_bytes={} \
             leader_balance_ms={:?}",
            self.seed,
            self.cluster.brokers,
            self.cluster.voters,
            self.partitions,
            self.replication_factor,
            self.min_insync_replicas,
            self.producers,
            self.consumers,
            self.group_consumers,
            self.txn_producers,
            self.txn_consumers,
            self.txn_version,
            self.compact_producers,
            self.fault_ms,
            faults.join(","),
            self.fault_interval_ms,
            self.faulty_disk,
            self.sync_latency_ms,
            self.cluster.segment_bytes,
            self.cluster.leader_balance_interval_ms,
        )?;
        if self.faults.contains(&Fault::Latency) {
            write!(
                f,
                " slow_latency_ms={}..{} slow_packet_loss={:.3}",
                self.slow_latency_ms.0, self.slow_latency_ms.1, self.slow_packet_loss
            )?;
        }
        if self.faults.contains(&Fault::ClientBreak) {
            write!(
                f,
                " client_break_probability={:.2}",
                self.client_break_probability
            )?;
        }
        if let Some(bug) = self.bug {
            write!(f, " bug={}", bug.name())?;
        }
        Ok(())
    }
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    Pass,
    Safety,
    Liveness,
    Crash,
}

impl Verdict {
    /// The `keel-sim` exit code.
    pub fn exit_code(self) -> u8 {
        match self {
            Verdict::Pass => 0,
            Verdict::Safety => 2,
            Verdict::Liveness => 3,
            Verdict::Crash => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Safety => "SAFETY",
            Verdict::Liveness => "LIVENESS",
            Verdict::Crash => "CRASH",
        }
    }
}

/// What a run exercised.
#[derive(Clone, Debug, Default)]
pub struct Coverage {
    /// Faults injected, by kind.
    pub faults: BTreeMap<&'static str, u64>,
    /// Leaders seen taking a new epoch (after the first).
    pub elections: u64,
    pub isr_shrinks: u64,
    pub isr_expands: u64,
    /// A replica's log end seen going back without a restart.
    pub truncations: u64,
    /// Broker starts after a kill.
    pub recoveries: u64,
    /// Controlled shutdowns that moved every leadership off their broker before it stopped.
    pub controlled_shutdowns: u64,
    /// Partitions whose preferred leader an ElectLeaders request elected.
    pub preferred_elections: u64,
    /// Reassignments (KIP-455) accepted with a target, seen completed, and cancellations
    /// accepted.
    pub reassignments_started: u64,
    pub reassignments_completed: u64,
    pub reassignments_cancelled: u64,
    /// Replication throttles the reassignment fault set (accepted).
    pub throttles_set: u64,
    /// Fetches by replicas being added that a broker's replication throttle held back, and
    /// the record bytes sent to such fetches, summed over the brokers' incarnations.
    pub throttle_held: u64,
    pub throttled_bytes: u64,
    /// The target of each partition's last accepted reassignment not yet seen completed
    /// (broker ids, in order): after healing each must have completed.
    pub pending_reassignments: BTreeMap<i32, Vec<i32>>,
    /// Damage found by recovery (a cut log).
    pub corruptions_detected: u64,
    pub disk: DiskStats,
    /// Client connections broken mid-request ([`Fault::ClientBreak`]).
    pub connection_breaks: u64,
    pub acked: u64,
    pub indefinite: u64,
    pub failed: u64,
    pub read: u64,
    /// Group consumers' coordinator changes, generations joined and acknowledged commits.
    pub coordinator_moves: u64,
    pub rebalances: u64,
    pub commits: u64,
    /// What the convergence phase compared across replicas.
    pub compared: Compared,
    /// Sends of the fault phase (up to the producers' stop after healing), and how many of
    /// them were indefinite.
    pub fault_sends: u64,
    pub fault_indefinite: u64,
    /// Per layer: bytes the logs' recoveries cut (torn and unsynced tails, damage), as the
    /// replicas report them (`RecoveryReport::bytes_truncated`), and batches that failed a
    /// check on one read and passed on a fresh one (`RecoveryReport::read_retries`).
    pub recovery_cut_bytes: u64,
    pub read_retries: u64,
    /// The transactional workload: commits and aborts acknowledged, zombies fenced,
    /// transactions timed out (a stalled producer's commit refused as fenced), and
    /// transaction coordinator changes its producers saw.
    pub txn_commits: u64,
    pub txn_aborts: u64,
    pub txn_fencings: u64,
    pub txn_timeouts: u64,
    pub txn_coordinator_moves: u64,
    /// Transaction version 2: commits and aborts acknowledged by EndTxn v5, epoch bumps it
    /// answered (a new epoch or producer id), partitions added by a Produce v12 (the first
    /// write of a transaction there acknowledged), and late writes of ended transactions that
    /// were refused as fenced.
    pub txn_v2_commits: u64,
    pub txn_v2_aborts: u64,
    pub txn_epoch_bumps: u64,
    pub txn_implicit_adds: u64,
    pub txn_late_writes_fenced: u64,
    /// The compacted workload: writes and tombstones acknowledged, and what the brokers'
    /// cleaners did (cleanings installed, tombstones removed, batches left without a record,
    /// cleanings made stale by a truncation or retention meanwhile), and broker starts that
    /// found a cleaning a kill or stop had interrupted.
    pub compact_acked: u64,
    pub compact_tombstones_acked: u64,
    pub cleanings: u64,
    pub tombstones_removed: u64,
    pub batches_emptied: u64,
    pub stale_cleanings: u64,
    pub interrupted_cleanings: u64,
}

impl Coverage {
    /// The share of the fault phase's sends that were indefinite (0 without sends).
    pub fn indefinite_share(&self) -> f64 {
        self.fault_indefinite as f64 / self.fault_sends.max(1) as f64
    }
}

/// The outcome of one run.
pub struct RunResult {
    pub params: Params,
    pub verdict: Verdict,
    pub report: Option<CheckReport>,
    pub coverage: Coverage,
    /// Why the verdict is not a pass, in a sentence.
    pub reason: String,
    /// The last events before the end.
    pub trace: Vec<String>,
    /// Simulated milliseconds the run took.
    pub simulated_ms: u64,
    /// A digest of everything the run observed (the whole history, the trace, the simulated
    /// time): two runs of one seed must print the same.
    pub digest: u64,
}

/// The last events, with their simulated time since the run started.
#[derive(Clone)]
pub(crate) struct Trace {
    start: madsim::time::Instant,
    events: Arc<Mutex<VecDeque<String>>>,
}

thread_local! {
    /// The finished history, for the digest.
    static CURRENT_HISTORY: std::cell::RefCell<Option<History>> = const { std::cell::RefCell::new(None) };
    /// The running simulation's trace, for [`run`] to print after a panic.
    static CURRENT_TRACE: std::cell::RefCell<Option<Trace>> = const { std::cell::RefCell::new(None) };
}

impl Trace {
    fn new() -> Trace {
        let trace = Trace {
            start: madsim::time::Instant::now(),
            events: Arc::default(),
        };
        CURRENT_TRACE.with(|t| *t.borrow_mut() = Some(trace.clone()));
        trace
    }

    /// Simulated milliseconds since the run started.
    pub(crate) fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    pub(crate) fn event(&self, what: impl Into<String>) {
        let at = self.now_ms();
        let what = what.into();
        tracing::debug!(target: "keel_sim::trace", "{what}");
        let mut events = self.events.lock().expect("trace poisoned");
        if events.len() == TRACE_EVENTS {
            events.pop_front();
        }
        events.push_back(format!("{:>9.3}s  {}", at as f64 / 1000.0, what));
    }

    fn take(&self) -> Vec<String> {
        self.events
            .lock()
            .expect("trace poisoned")
            .iter()
            .cloned()
            .collect()
    }
}

/// Runs one seed in a fresh madsim runtime, on a fresh thread: thread-local state (std's
/// HashMap keys, rand's thread_rng, which raft and the broker draw from) must be first
/// initialised inside the runtime, from the seed, for a seed to replay in any process.
pub fn run(params: &Params) -> RunResult {
    let params = params.clone();
    std::thread::spawn(move || run_here(&params))
        .join()
        .expect("a run catches its own panics")
}

fn run_here(params: &Params) -> RunResult {
    #[cfg(feature = "planted-bugs")]
    keel_core::planted::plant(params.bug);
    let runtime = Runtime::with_seed_and_config(params.seed, madsim::Config::default());
    let p = params.clone();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(simulate(p))
    }));
    #[cfg(feature = "planted-bugs")]
    keel_core::planted::plant(None);
    match outcome {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "a panic".into());
            let trace = CURRENT_TRACE.with(|t| t.borrow_mut().take());
            let digest = {
                use std::hash::{Hash, Hasher};
                let mut hasher = std::hash::DefaultHasher::new();
                message.hash(&mut hasher);
                trace.as_ref().map(|t| t.take()).hash(&mut hasher);
                hasher.finish()
            };
            RunResult {
                params: params.clone(),
                verdict: Verdict::Crash,
                report: None,
                coverage: Coverage::default(),
                reason: format!("panicked: {message}"),
                simulated_ms: trace.as_ref().map_or(0, |t| t.now_ms()),
                trace: trace.map(|t| t.take()).unwrap_or_default(),
                digest,
            }
        }
    }
}

/// Shared state of the workload.
struct Workload {
    history: Mutex<History>,
    next_value: AtomicU64,
    stop: AtomicBool,
    trace: Trace,
    /// The switch that breaks workload clients' connections mid-request.
    connections: ConnectionFaults,
    coordinator_moves: AtomicU64,
    rebalances: AtomicU64,
    commits: AtomicU64,
    /// Per key, the offset after the last record any group member polled.
    group_read: Mutex<BTreeMap<Key, Offset>>,
    /// The transactional workload's history.
    txn: Mutex<TxnHistory>,
    /// The compacted workload's history, and its next value.
    compact: Mutex<CompactHistory>,
    compact_next_value: AtomicU64,
}

fn client_ip(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, 1, n as u8 + 1))
}

/// A madsim node for a client process: its own IP, so that network faults between brokers
/// leave clients alone.
fn client_node(handle: &Handle, name: String, n: u32) -> madsim::runtime::NodeHandle {
    handle.create_node().name(name).ip(client_ip(n)).build()
}

fn keys(params: &Params) -> Vec<Key> {
    (0..params.partitions).map(|p| Key::new(TOPIC, p)).collect()
}

async fn simulate(params: Params) -> RunResult {
    let handle = Handle::current();
    let trace = Trace::new();
    let mut coverage = Coverage::default();
    let disks: BTreeMap<i32, SimDisk> = (1..=params.cluster.brokers)
        .map(|id| {
            let rng = StdRng::seed_from_u64(params.seed.wrapping_mul(31).wrapping_add(id as u64));
            let faults = if params.faulty_disk == Some(id) {
                params.disk_faults.clone()
            } else {
                FaultConfig::none()
            };
            let disk = SimDisk::new(Box::new(rng), faults)
                .with_sync_latency(Duration::from_millis(params.sync_latency_ms));
            (id, disk)
        })
        .collect();
    let cluster = Arc::new(Mutex::new(SimCluster::start(
        &handle,
        params.cluster.clone(),
        disks.clone(),
    )));
    let bootstrap = cluster.lock().expect("cluster poisoned").bootstrap();
    trace.event(format!(
        "cluster of {} brokers started",
        params.cluster.brokers
    ));

    // Create the topic.
    let admin = handle.create_node().name("admin").ip(client_ip(0)).build();
    let spec = TopicSpec {
        name: TOPIC.into(),
        partitions: params.partitions,
        replication_factor: params.replication_factor,
        configs: vec![(
            "min.insync.replicas".into(),
            params.min_insync_replicas.to_string(),
        )],
    };
    let (boot, partitions) = (bootstrap.clone(), params.partitions);
    let created = admin
        .spawn(async move {
            let mut client = Client::new(ClientConfig::new(boot));
            for _ in 0..120 {
                if client.create_topic(&spec).await.is_ok()
                    && client.await_leaders(TOPIC, partitions).await.is_ok()
                {
                    return true;
                }
                madsim::time::sleep(Duration::from_millis(500)).await;
            }
            false
        })
        .await
        .unwrap_or(false);
    if !created {
        return finish(
            params,
            Verdict::Liveness,
            "the topic was never created".into(),
            None,
            coverage,
            &trace,
        );
    }
    trace.event(format!("topic {TOPIC} created"));
    if params.txn_producers > 0 {
        let spec = TopicSpec {
            name: TXN_TOPIC.into(),
            partitions: params.partitions,
            replication_factor: params.replication_factor,
            configs: vec![(
                "min.insync.replicas".into(),
                params.min_insync_replicas.to_string(),
            )],
        };
        let (boot, partitions) = (bootstrap.clone(), params.partitions);
        let created = admin
            .spawn(async move {
                let mut client = Client::new(ClientConfig::new(boot));
                for _ in 0..120 {
                    if client.create_topic(&spec).await.is_ok()
                        && client.await_leaders(TXN_TOPIC, partitions).await.is_ok()
                    {
                        return true;
                    }
                    madsim::time::sleep(Duration::from_millis(500)).await;
                }
                false
            })
            .await
            .unwrap_or(false);
        if !created {
            return finish(
                params,
                Verdict::Liveness,
                format!("the topic {TXN_TOPIC} was never created"),
                None,
                coverage,
                &trace,
            );
        }
    }

    if params.compact_producers > 0 {
        let mut configs = crate::compact::topic_configs();
        configs.push((
            "min.insync.replicas".into(),
            params.min_insync_replicas.to_string(),
        ));
        let spec = TopicSpec {
            name: COMPACT_TOPIC.into(),
            partitions: params.partitions,
            replication_factor: params.replication_factor,
            configs,
        };
        let (boot, partitions) = (bootstrap.clone(), params.partitions);
        let created = admin
            .spawn(async move {
                let mut client = Client::new(ClientConfig::new(boot));
                for _ in 0..120 {
                    if client.create_topic(&spec).await.is_ok()
                        && client
                            .await_leaders(COMPACT_TOPIC, partitions)
                            .await
                            .is_ok()
                    {
                        return true;
                    }
                    madsim::time::sleep(Duration::from_millis(500)).await;
                }
                false
            })
            .await
            .unwrap_or(false);
        if !created {
            return finish(
                params,
                Verdict::Liveness,
                format!("the topic {COMPACT_TOPIC} was never created"),
                None,
                coverage,
                &trace,
            );
        }
    }
    let workload = Arc::new(Workload {
        history: Mutex::new(History::default()),
        next_value: AtomicU64::new(1),
        stop: AtomicBool::new(false),
        trace: trace.clone(),
        connections: ConnectionFaults::default(),
        coordinator_moves: AtomicU64::new(0),
        rebalances: AtomicU64::new(0),
        commits: AtomicU64::new(0),
        group_read: Mutex::new(BTreeMap::new()),
        txn: Mutex::new(TxnHistory::default()),
        compact: Mutex::new(CompactHistory::default()),
        compact_next_value: AtomicU64::new(1),
    });
    let keys = keys(&params);
    let mut producers = Vec::new();
    for p in 0..params.producers {
        let node = client_node(&handle, format!("producer-{p}"), 1 + p);
        let (w, boot, keys) = (workload.clone(), bootstrap.clone(), keys.clone());
        let seed = params.seed ^ (p as u64 + 1) << 32;
        producers.push(node.spawn(produce(ProcessId(p), w, boot, keys, seed)));
    }
    let mut consumers = Vec::new();
    for c in 0..params.consumers {
        let node = client_node(&handle, format!("consumer-{c}"), 10 + c);
        let (w, boot, keys) = (workload.clone(), bootstrap.clone(), keys.clone());
        let seed = params.seed ^ (c as u64 + 101) << 32;
        consumers.push(node.spawn(consume(ProcessId(100 + c), w, boot, keys, seed)));
    }
    let mut group = Vec::new();
    for g in 0..params.group_consumers {
        let node = client_node(&handle, format!("group-consumer-{g}"), 20 + g);
        let (w, boot) = (workload.clone(), bootstrap.clone());
        let seed = params.seed ^ (g as u64 + 201) << 32;
        let partitions = params.partitions;
        group.push(node.spawn(group_consume(group_member(g), w, boot, partitions, seed)));
    }
    let txn_keys: Vec<Key> = (0..params.partitions)
        .map(|p| Key::new(TXN_TOPIC, p))
        .collect();
    for t in 0..params.txn_producers {
        let node = client_node(&handle, format!("txn-producer-{t}"), 30 + t);
        let (w, boot, keys) = (workload.clone(), bootstrap.clone(), txn_keys.clone());
        let seed = params.seed ^ (t as u64 + 301) << 32;
        let version = params.txn_version;
        producers.push(node.spawn(txn_produce(t, w, boot, keys, seed, version)));
    }
    for c in 0..params.txn_consumers {
        let node = client_node(&handle, format!("txn-consumer-{c}"), 40 + c);
        let (w, boot, keys) = (workload.clone(), bootstrap.clone(), txn_keys.clone());
        let seed = params.seed ^ (c as u64 + 401) << 32;
        consumers.push(node.spawn(txn_consume(c, w, boot, keys, seed)));
    }
    let compact_keys: Vec<Key> = (0..params.partitions)
        .map(|p| Key::new(COMPACT_TOPIC, p))
        .collect();
    for p in 0..params.compact_producers {
        let node = client_node(&handle, format!("compact-producer-{p}"), 70 + p);
        let (w, boot, keys) = (workload.clone(), bootstrap.clone(), compact_keys.clone());
        let seed = params.seed ^ (p as u64 + 501) << 32;
        producers.push(node.spawn(compact_produce(500 + p, w, boot, keys, seed)));
    }
    if params.compact_producers > 0 {
        let node = client_node(&handle, "compact-consumer".into(), 80);
        let (w, boot, keys) = (workload.clone(), bootstrap.clone(), compact_keys.clone());
        let seed = params.seed ^ 601 << 32;
        consumers.push(node.spawn(compact_consume(600, w, boot, keys, seed)));
    }
    let violations = Arc::new(Mutex::new(Vec::<String>::new()));
    let monitor_stop = Arc::new(AtomicBool::new(false));
    let monitor = madsim::task::spawn(monitor(
        cluster.clone(),
        violations.clone(),
        monitor_stop.clone(),
        trace.clone(),
        params.faulty_disk,
    ));

    // Phase 1: faults.
    let targets = Targets {
        cluster: &cluster,
        disks: &disks,
        connections: &workload.connections,
        trace: &trace,
    };
    nemesis(&params, &targets, &mut coverage).await;

    // Phase 2: heal, and remove the replication throttle the faults may have set.
    heal(&targets, &mut coverage);
    crate::nemesis::clear_throttle(&targets, &coverage).await;
    workload.stop.store(true, Ordering::SeqCst);
    let stopped = madsim::time::timeout(Duration::from_millis(LIVENESS_MS), async {
        for p in producers {
            let _ = p.await;
        }
    })
    .await
    .is_ok();
    for c in consumers {
        c.abort();
    }
    if !stopped {
        monitor_stop.store(true, Ordering::SeqCst);
        return finish(
            params,
            Verdict::Liveness,
            "producers did not finish after healing".into(),
            None,
            coverage,
            &trace,
        );
    }
    trace.event("healed; producers stopped");
    {
        let h = workload.history.lock().expect("history poisoned");
        for op in &h.ops {
            if let OpKind::Send { outcome, .. } = &op.kind {
                coverage.fault_sends += 1;
                if matches!(outcome, SendOutcome::Indefinite { .. }) {
                    coverage.fault_indefinite += 1;
                }
            }
        }
    }

    // Phase 3: availability. Once every replica is back in its ISR, every producer's next
    // sends must all be acknowledged.
    let available = availability(&handle, &cluster, &workload, &params, &bootstrap, &keys).await;
    match &available {
        Ok(()) => trace.event("available: every send after healing acknowledged"),
        Err(why) => trace.event(why.clone()),
    }

    // Phase 4: final read.
    let reader = client_node(&handle, "final-reader".into(), 50);
    let (w, boot, keys2) = (workload.clone(), bootstrap.clone(), keys.clone());
    let read = reader
        .spawn(async move {
            madsim::time::timeout(
                Duration::from_millis(LIVENESS_MS),
                final_read(w, boot, keys2),
            )
            .await
            .is_ok()
        })
        .await
        .unwrap_or(false);
    // The transactional workload's final read_committed read, once no transaction is open.
    if params.txn_producers > 0 {
        let reader = client_node(&handle, "txn-final-reader".into(), 51);
        let (w, boot, keys2) = (workload.clone(), bootstrap.clone(), txn_keys.clone());
        let complete = reader
            .spawn(async move {
                madsim::time::timeout(
                    Duration::from_millis(LIVENESS_MS),
                    txn_final_read(w, boot, keys2),
                )
                .await
                .is_ok()
            })
            .await
            .unwrap_or(false);
        workload
            .txn
            .lock()
            .expect("txn history poisoned")
            .final_complete = complete;
    }
    // The compacted topic's final read, from the start of every partition.
    if params.compact_producers > 0 {
        let reader = client_node(&handle, "compact-final-reader".into(), 52);
        let (w, boot, keys2) = (workload.clone(), bootstrap.clone(), compact_keys.clone());
        let complete = reader
            .spawn(async move {
                madsim::time::timeout(
                    Duration::from_millis(LIVENESS_MS),
                    compact_final_read(w, boot, keys2),
                )
                .await
                .is_ok()
            })
            .await
            .unwrap_or(false);
        workload
            .compact
            .lock()
            .expect("compact history poisoned")
            .final_complete = complete;
    }
    // Phase 5: the group, which kept consuming, reads on to where the final read ended.
    let group_caught_up = read && group_catch_up(&workload, &params).await;
    for g in group {
        g.abort();
    }
    // Phase 6: convergence. With every client stopped, the replicas must become one.
    let converged = converge(&cluster, Settle::Logs, params.faulty_disk).await;
    match &converged {
        Ok(c) => {
            coverage.compared = *c;
            trace.event(format!(
                "converged: {} partitions, {} replicas, {} batches compared",
                c.partitions, c.replicas, c.batches
            ));
        }
        Err(f) => trace.event(format!("convergence: {f:?}")),
    }
    // Phase 7: reassignments. Once converged, every accepted reassignment has completed with
    // exactly its target replicas (convergence compared their logs and found no other
    // broker holding the partition).
    let reassigned = if converged.is_ok() {
        crate::nemesis::note_completed_reassignments(&cluster, &mut coverage);
        unfinished_reassignments(&cluster, &coverage)
    } else {
        Ok(())
    };
    if let Err(f) = &reassigned {
        trace.event(format!("reassignments: {f:?}"));
    }
    monitor_stop.store(true, Ordering::SeqCst);
    let monitored = monitor.await.unwrap_or_default();
    coverage.elections = monitored.elections;
    coverage.isr_shrinks = monitored.isr_shrinks;
    coverage.isr_expands = monitored.isr_expands;
    coverage.truncations = monitored.truncations;
    coverage.throttle_held = monitored.throttle_held;
    coverage.throttled_bytes = monitored.throttled_bytes;
    // The history is checked whether or not the final read completed: what was observed
    // (a corrupt batch served, a duplicate, a reordering) is a safety violation either way.
    // Only lost writes and unseen values need the complete final read.
    let history = workload.history.lock().expect("history poisoned").clone();
    let report = check(&history);
    let txn_history = workload.txn.lock().expect("txn history poisoned").clone();
    let txn_anomalies = crate::txn::check(&txn_history);
    coverage.txn_commits = txn_history.commits;
    coverage.txn_aborts = txn_history.aborts;
    coverage.txn_fencings = txn_history.fencings;
    coverage.txn_timeouts = txn_history.timeouts;
    coverage.txn_coordinator_moves = txn_history.coordinator_moves;
    coverage.txn_v2_commits = txn_history.v2_commits;
    coverage.txn_v2_aborts = txn_history.v2_aborts;
    coverage.txn_epoch_bumps = txn_history.epoch_bumps;
    coverage.txn_implicit_adds = txn_history.implicit_adds;
    coverage.txn_late_writes_fenced = txn_history.late_writes_fenced;
    if !txn_anomalies.is_empty() {
        for (kind, why) in &txn_anomalies {
            trace.event(format!("{kind}: {why}"));
        }
    }
    let txn_read_complete = params.txn_producers == 0 || txn_history.final_complete;
    let compact_history = workload
        .compact
        .lock()
        .expect("compact history poisoned")
        .clone();
    let compact_anomalies = crate::compact::check(&compact_history);
    for (kind, why) in compact_anomalies.iter().take(10) {
        trace.event(format!("{kind}: {why}"));
    }
    for send in &compact_history.sends {
        if matches!(send.outcome, SendOutcome::Ok { .. }) {
            coverage.compact_acked += 1;
            coverage.compact_tombstones_acked += u64::from(send.value.is_none());
        }
    }
    let compact_read_complete = params.compact_producers == 0 || compact_history.final_complete;
    coverage.cleanings = monitored.cleanings;
    coverage.tombstones_removed = monitored.tombstones_removed;
    coverage.batches_emptied = monitored.batches_emptied;
    coverage.stale_cleanings = monitored.stale_cleanings;
    coverage.interrupted_cleanings = cluster
        .lock()
        .expect("cluster poisoned")
        .interrupted_cleanings();
    CURRENT_HISTORY.with(|h| *h.borrow_mut() = Some(history));
    coverage.acked = report.stats.sends_ok as u64;
    coverage.indefinite = report.stats.sends_indefinite as u64;
    coverage.failed = report.stats.sends_failed as u64;
    coverage.read = report.stats.records_read as u64;
    let mut recovery_violations = Vec::new();
    for (id, d) in &disks {
        for v in d.finish_recovery_checks() {
            recovery_violations.push(format!("broker {id}: {v}"));
        }
        coverage.disk.add(&d.stats());
    }
    coverage.recovery_cut_bytes = monitored.recovery_cut_bytes;
    coverage.read_retries = monitored.read_retries;
    coverage.connection_breaks = workload.connections.breaks();
    coverage.coordinator_moves = workload.coordinator_moves.load(Ordering::SeqCst);
    coverage.rebalances = workload.rebalances.load(Ordering::SeqCst);
    coverage.commits = workload.commits.load(Ordering::SeqCst);
    coverage.corruptions_detected = monitored.corruptions_detected;
    let monitor_violations = violations.lock().expect("violations poisoned").clone();
    let mut observed = report.counts();
    if !group_caught_up {
        observed.remove(&AnomalyKind::GroupUnread);
    }
    if !read {
        observed.remove(&AnomalyKind::LostWrite);
        observed.remove(&AnomalyKind::Unseen);
    }
    let (verdict, reason) = if !monitor_violations.is_empty() {
        (
            Verdict::Safety,
            format!("invariant violated: {}", monitor_violations.join("; ")),
        )
    } else if !recovery_violations.is_empty() {
        (
            Verdict::Safety,
            format!("recovery oracle: {}", recovery_violations.join("; ")),
        )
    } else if !observed.is_empty() {
        (
            Verdict::Safety,
            format!("the checker found anomalies: {observed:?}"),
        )
    } else if !txn_anomalies.is_empty() {
        let kinds: BTreeSet<&str> = txn_anomalies.iter().map(|(k, _)| k.name()).collect();
        (
            Verdict::Safety,
            format!(
                "the transaction checker found anomalies: {kinds:?}; first: {}",
                txn_anomalies[0].1
            ),
        )
    } else if !compact_anomalies.is_empty() {
        let kinds: BTreeSet<&str> = compact_anomalies.iter().map(|(k, _)| k.name()).collect();
        (
            Verdict::Safety,
            format!(
                "the compaction checker found anomalies: {kinds:?}; first: {}",
                compact_anomalies[0].1
            ),
        )
    } else if let Err(Failure::Safety(why)) = &converged {
        (Verdict::Safety, format!("convergence: {why}"))
    } else if let Err(Failure::Safety(why)) = &reassigned {
        (Verdict::Safety, format!("reassignment: {why}"))
    } else if coverage.fault_sends >= INDEFINITE_SENDS_MIN
        && coverage.indefinite_share() > INDEFINITE_SHARE_MAX
    {
        (
            Verdict::Liveness,
            format!(
                "availability in the fault phase: {} of {} sends ({:.0}%) were indefinite, above \
                 the bound of {:.0}%",
                coverage.fault_indefinite,
                coverage.fault_sends,
                100.0 * coverage.indefinite_share(),
                100.0 * INDEFINITE_SHARE_MAX
            ),
        )
    } else if let Err(why) = &available {
        (Verdict::Liveness, why.clone())
    } else if !read {
        (
            Verdict::Liveness,
            "the final read did not complete after healing".into(),
        )
    } else if !group_caught_up {
        (
            Verdict::Liveness,
            "the consumer group did not read to the end after healing".into(),
        )
    } else if !txn_read_complete {
        (
            Verdict::Liveness,
            format!(
                "the read_committed final read of {TXN_TOPIC} did not complete: a transaction \
                 still open (the last stable offset below the high watermark) 60 s after healing"
            ),
        )
    } else if !compact_read_complete {
        (
            Verdict::Liveness,
            format!("the final read of {COMPACT_TOPIC} did not complete after healing"),
        )
    } else if let Err(Failure::Liveness(why)) = &converged {
        (Verdict::Liveness, format!("convergence: {why}"))
    } else if let Err(Failure::Liveness(why)) = &reassigned {
        (Verdict::Liveness, format!("reassignment: {why}"))
    } else {
        (Verdict::Pass, String::new())
    };
    finish(params, verdict, reason, Some(report), coverage, &trace)
}

/// After convergence: the accepted reassignments not seen completed. One whose partition
/// has other replicas than its target with no reassignment in progress completed wrong (a
/// safety failure); one still in progress never completed (liveness).
fn unfinished_reassignments(
    cluster: &Arc<Mutex<SimCluster>>,
    coverage: &Coverage,
) -> Result<(), Failure> {
    let Some((_, broker)) = cluster
        .lock()
        .expect("cluster poisoned")
        .live_brokers()
        .into_iter()
        .next()
    else {
        return Ok(());
    };
    let state = broker.cluster().state();
    for (&partition, target) in &coverage.pending_reassignments {
        let Some(p) = state.partition(TOPIC, partition) else {
            continue;
        };
        let replicas: Vec<i32> = p.replicas.iter().map(|b| b.0).collect();
        if p.is_reassigning() {
            return Err(Failure::Liveness(format!(
                "{TOPIC}-{partition}: the reassignment to {target:?} is still in progress after \
                 healing (replicas {replicas:?}, ISR {:?})",
                p.isr
            )));
        }
        return Err(Failure::Safety(format!(
            "{TOPIC}-{partition}: the reassignment to {target:?} was accepted and nothing \
             replaced it, but the partition has replicas {replicas:?}"
        )));
    }
    Ok(())
}

fn finish(
    params: Params,
    verdict: Verdict,
    reason: String,
    report: Option<CheckReport>,
    coverage: Coverage,
    trace: &Trace,
) -> RunResult {
    use std::hash::{Hash, Hasher};
    // DefaultHasher::new() has fixed keys: the same input hashes the same in every process.
    let mut hasher = std::hash::DefaultHasher::new();
    let events = trace.take();
    events.hash(&mut hasher);
    trace.now_ms().hash(&mut hasher);
    if let Some(history) = CURRENT_HISTORY.with(|h| h.borrow_mut().take()) {
        format!("{:?}", history.ops).hash(&mut hasher);
    }
    format!("{coverage:?}").hash(&mut hasher);
    RunResult {
        digest: hasher.finish(),
        params,
        verdict,
        report,
        coverage,
        reason,
        trace: trace.take(),
        simulated_ms: trace.now_ms(),
    }
}

/// The availability phase: waits, within [`crate::converge::CONVERGE_MS`], for every replica
/// of every partition to be back in its ISR, then has each producer (a fresh client on its own
/// node) send [`AVAILABILITY_SENDS`] values, round robin over the keys, within
/// [`AVAILABILITY_MS`], retrying retriable errors through that window. Every one must be
/// acknowledged: an indefinite or refused send after
/// healing, on a whole cluster, is a liveness failure, which no safety check would see (a
/// refusal is a definite failure, and an indefinite send may be lost). The sends are in the
/// history, so the final read must find them.
async fn availability(
    handle: &Handle,
    cluster: &Arc<Mutex<SimCluster>>,
    w: &Arc<Workload>,
    params: &Params,
    bootstrap: &[SocketAddr],
    keys: &[Key],
) -> Result<(), String> {
    match converge(cluster, Settle::Isr, params.faulty_disk).await {
        Ok(_) => {}
        Err(Failure::Liveness(why) | Failure::Safety(why)) => {
            return Err(format!("convergence: {why}"))
        }
    }
    let mut senders = Vec::new();
    for p in 0..params.producers {
        let node = client_node(handle, format!("available-{p}"), 60 + p);
        let (w, boot, keys) = (w.clone(), bootstrap.to_vec(), keys.to_vec());
        senders.push(node.spawn(async move {
            let me = ProcessId(300 + p);
            // Retries span the whole window, as a Kafka producer's do (delivery.timeout.ms):
            // right after healing an ISR may still shrink once (a follower whose fetch was
            // lost as the network healed waits out its answer timeout, longer than the lag
            // bound) and expand again; a partition unavailable for the whole window fails.
            let mut config = ClientConfig::new(boot);
            config.retry_backoff = Duration::from_millis(500);
            config.attempts_max = (AVAILABILITY_MS / 500) as u32;
            let mut client = Client::new(config);
            for i in 0..AVAILABILITY_SENDS {
                let key = &keys[(i + p) as usize % keys.len()];
                let value = Value(w.next_value.fetch_add(1, Ordering::SeqCst));
                let outcome = client.produce(key, value).await;
                w.history
                    .lock()
                    .expect("history poisoned")
                    .send(me, key, value, outcome.clone());
                match outcome {
                    SendOutcome::Ok { .. } => {}
                    SendOutcome::Fail { reason } => {
                        return Err(format!(
                            "send {i} of producer {p} to {key} refused: {reason}"
                        ))
                    }
                    SendOutcome::Indefinite { reason } => {
                        return Err(format!(
                            "send {i} of producer {p} to {key} indefinite: {reason}"
                        ))
                    }
                }
            }
            Ok(())
        }));
    }
    let deadline = madsim::time::Instant::now() + Duration::from_millis(AVAILABILITY_MS);
    let mut outcome = Ok(());
    for mut s in senders {
        let left = deadline.saturating_duration_since(madsim::time::Instant::now());
        let r = match madsim::time::timeout(left, &mut s).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err("a sender panicked".into()),
            Err(_) => {
                s.abort();
                Err(format!(
                    "{AVAILABILITY_SENDS} sends per producer not all answered within {} s",
                    AVAILABILITY_MS / 1000
                ))
            }
        };
        if outcome.is_ok() {
            outcome = r;
        }
    }
    outcome.map_err(|why: String| format!("availability after healing: {why}"))
}

/// A producer: unique values, acks=all, idempotent, to random partitions, until stopped.
async fn produce(
    me: ProcessId,
    w: Arc<Workload>,
    bootstrap: Vec<SocketAddr>,
    keys: Vec<Key>,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut client = Client::new(workload_client(&w, bootstrap, seed));
    while !w.stop.load(Ordering::SeqCst) {
        let key = &keys[rng.gen_range(0..keys.len())];
        let value = Value(w.next_value.fetch_add(1, Ordering::SeqCst));
        let outcome = client.produce(key, value).await;
        let acked = match &outcome {
            SendOutcome::Ok { offset } => Some(*offset),
            _ => None,
        };
        w.history
            .lock()
            .expect("history poisoned")
            .send(me, key, value, outcome);
        // Read-after-ack: the leader that answered, asked at once, counts the write.
        if let Some(acked) = acked {
            if let Ok(latest) = client.latest_at_leader(key).await {
                w.history
                    .lock()
                    .expect("history poisoned")
                    .read_after_ack(me, key, acked, latest);
            }
        }
        madsim::time::sleep(Duration::from_millis(rng.gen_range(5..50))).await;
    }
}

/// The config of a workload client: its connections break while [`Fault::ClientBreak`] is on.
fn workload_client(w: &Workload, bootstrap: Vec<SocketAddr>, seed: u64) -> ClientConfig {
    let mut config = ClientConfig::new(bootstrap);
    config.faults = w.connections.clone();
    config.seed = seed;
    config
}

/// A consumer by assign: polls every partition in turn, forever.
async fn consume(
    me: ProcessId,
    w: Arc<Workload>,
    bootstrap: Vec<SocketAddr>,
    keys: Vec<Key>,
    seed: u64,
) {
    let mut client = Client::new(workload_client(&w, bootstrap, seed));
    let mut consumer = Consumer::new();
    consumer.assign(&keys);
    w.history
        .lock()
        .expect("history poisoned")
        .assign(me, keys.clone());
    loop {
        for key in &keys {
            match consumer.poll(&mut client, key).await {
                Ok(fetched) if !fetched.records.is_empty() => {
                    w.history
                        .lock()
                        .expect("history poisoned")
                        .poll(me, key, fetched.records);
                }
                Ok(_) => {}
                Err(ClientError::Corrupt { reason, .. }) => {
                    w.trace
                        .event(format!("consumer {me}: {key}: a damaged batch"));
                    w.history
                        .lock()
                        .expect("history poisoned")
                        .corrupt_read(me, key, reason);
                    madsim::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => {
                    if !e.is_retriable() {
                        w.trace.event(format!("consumer {me}: {e}"));
                    }
                    madsim::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        madsim::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The process id of group consumer `g`.
fn group_member(g: u32) -> ProcessId {
    ProcessId(200 + g)
}

/// Waits, within [`LIVENESS_MS`], for the group's members together to have polled every key
/// up to the end its final read listed, then records that ([`OpKind::GroupCaughtUp`]). True
/// when there is no group.
async fn group_catch_up(w: &Workload, params: &Params) -> bool {
    if params.group_consumers == 0 {
        return true;
    }
    let ends = w
        .history
        .lock()
        .expect("history poisoned")
        .final_read_ends();
    let caught_up = || {
        let read = w.group_read.lock().expect("group_read poisoned");
        ends.iter()
            .all(|(k, end)| *end == Offset::ZERO || read.get(k).is_some_and(|r| r >= end))
    };
    let deadline = Duration::from_millis(LIVENESS_MS);
    let waited = madsim::time::timeout(deadline, async {
        while !caught_up() {
            madsim::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    if waited.is_err() {
        w.trace.event("the group did not catch up");
        return false;
    }
    let members: Vec<ProcessId> = (0..params.group_consumers).map(group_member).collect();
    let mut h = w.history.lock().expect("history poisoned");
    for (key, end_offset) in ends {
        h.group_caught_up(&members, &key, end_offset);
    }
    w.trace.event("the group caught up");
    true
}

/// A subscribe-mode consumer in the group `jepsen-group`: joins, reads its partitions from
/// the committed offsets, heartbeats, commits what it read every few rounds, and rejoins
/// when the group rebalances. Each generation is recorded as an assign of no keys and then
/// of its keys (an eager rebalance: positions restart at the committed offsets).
async fn group_consume(
    me: ProcessId,
    w: Arc<Workload>,
    bootstrap: Vec<SocketAddr>,
    partitions: i32,
    seed: u64,
) {
    let mut client = Client::new(workload_client(&w, bootstrap, seed));
    let mut group = GroupConsumer::new("jepsen-group", TOPIC, partitions);
    let mut positions: BTreeMap<Key, Offset> = BTreeMap::new();
    let mut read: BTreeSet<Key> = BTreeSet::new();
    let (mut moves, mut rebalances) = (0, 0);
    let mut round = 0u64;
    // Coordinator moves up to the last probe of the committed offsets.
    let mut probed_moves = 0;
    loop {
        let (m, r) = (group.coordinator_moves, group.rebalances);
        w.coordinator_moves.fetch_add(m - moves, Ordering::SeqCst);
        w.rebalances.fetch_add(r - rebalances, Ordering::SeqCst);
        (moves, rebalances) = (m, r);
        if !group.is_member() {
            if let Err(e) = group.join(&mut client).await {
                w.trace.event(format!("group consumer {me}: join: {e}"));
                madsim::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            let keys = group.assignment().to_vec();
            {
                let mut h = w.history.lock().expect("history poisoned");
                h.assign(me, Vec::new());
                h.assign(me, keys.clone());
            }
            match fetch_committed(me, &w, &mut group, &mut client).await {
                Ok(offsets) => {
                    read.clear();
                    positions = offsets
                        .into_iter()
                        .map(|(key, offset)| (key, offset.unwrap_or(Offset::ZERO)))
                        .collect();
                }
                Err(_) => {
                    group.leave_generation();
                    madsim::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
            probed_moves = group.coordinator_moves;
        }
        let keys: Vec<Key> = positions.keys().cloned().collect();
        for key in &keys {
            let position = positions[key];
            match client.fetch(key, position).await {
                Ok(fetched) if !fetched.records.is_empty() => {
                    let last = fetched.records.last().expect("non-empty").0;
                    positions.insert(key.clone(), last.plus(1));
                    read.insert(key.clone());
                    let mut group_read = w.group_read.lock().expect("group_read poisoned");
                    let at = group_read.entry(key.clone()).or_insert(Offset::ZERO);
                    *at = (*at).max(last.plus(1));
                    w.history
                        .lock()
                        .expect("history poisoned")
                        .poll(me, key, fetched.records);
                }
                Ok(_) => {}
                Err(ClientError::Corrupt { reason, .. }) => {
                    w.history
                        .lock()
                        .expect("history poisoned")
                        .corrupt_read(me, key, reason);
                }
                Err(_) => madsim::time::sleep(Duration::from_millis(100)).await,
            }
        }
        round += 1;
        if let Err(e) = group.heartbeat(&mut client).await {
            w.trace
                .event(format!("group consumer {me}: heartbeat: {e}"));
            continue;
        }
        // A new coordinator loaded the group from the log: what it answers must include every
        // acknowledged commit. Probe before the next commit overwrites a lost one.
        if group.coordinator_moves > probed_moves {
            probed_moves = group.coordinator_moves;
            let _ = fetch_committed(me, &w, &mut group, &mut client).await;
        }
        if round % 3 == 0 {
            let offsets: BTreeMap<Key, Offset> = positions
                .iter()
                .filter(|(k, _)| read.contains(*k))
                .map(|(k, o)| (k.clone(), *o))
                .collect();
            if !offsets.is_empty() {
                let invoked = w.history.lock().expect("history poisoned").ops.len();
                let result = group.commit(&mut client, &offsets).await;
                let acked = result.is_ok();
                if acked {
                    w.commits.fetch_add(1, Ordering::SeqCst);
                }
                let mut h = w.history.lock().expect("history poisoned");
                for (key, offset) in offsets {
                    h.commit(me, &key, offset, acked, invoked);
                }
            }
        }
        madsim::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The group's committed offsets of `group`'s keys, recorded as [`OpKind::OffsetFetch`]es.
async fn fetch_committed(
    me: ProcessId,
    w: &Workload,
    group: &mut GroupConsumer,
    client: &mut Client,
) -> Result<BTreeMap<Key, Option<Offset>>, ClientError> {
    let invoked = w.history.lock().expect("history poisoned").ops.len();
    let offsets = group.fetch_offsets(client).await.inspect_err(|e| {
        w.trace
            .event(format!("group consumer {me}: offset fetch: {e}"))
    })?;
    let mut h = w.history.lock().expect("history poisoned");
    for (key, offset) in &offsets {
        h.offset_fetch(me, key, *offset, invoked);
    }
    Ok(offsets)
}

/// Reads every partition from its start to its end offset, as a fresh process.
async fn final_read(w: Arc<Workload>, bootstrap: Vec<SocketAddr>, keys: Vec<Key>) {
    let me = ProcessId(1000);
    let mut client = Client::new(ClientConfig::new(bootstrap));
    for key in &keys {
        // After healing, a new leader's high watermark moves only once its followers have
        // fetched (and the ISR has grown back to min.insync.replicas): wait, within
        // FINAL_READ_SETTLE_MS, for the end offset to pass every acknowledged offset of the
        // key, then read to whatever end there is. A write missing after that is lost.
        let acked_end = w
            .history
            .lock()
            .expect("history poisoned")
            .ops
            .iter()
            .filter_map(|op| match &op.kind {
                OpKind::Send {
                    key: k,
                    outcome: SendOutcome::Ok { offset },
                    ..
                } if k == key => Some(offset.plus(1)),
                _ => None,
            })
            .max()
            .unwrap_or(Offset(0));
        let settle = madsim::time::Instant::now();
        let end = loop {
            match client.end_offset(key).await {
                Ok(end)
                    if end >= acked_end
                        || settle.elapsed() >= Duration::from_millis(FINAL_READ_SETTLE_MS) =>
                {
                    break end
                }
                _ => madsim::time::sleep(Duration::from_millis(200)).await,
            }
        };
        let mut consumer = Consumer::new();
        consumer.assign(std::slice::from_ref(key));
        let mut position = Offset(0);
        while position < end {
            match consumer.poll(&mut client, key).await {
                Ok(fetched) => {
                    if let Some(&(last, _)) = fetched.records.last() {
                        position = last.plus(1);
                    }
                    if !fetched.records.is_empty() {
                        w.history
                            .lock()
                            .expect("history poisoned")
                            .poll(me, key, fetched.records);
                    }
                }
                Err(ClientError::Corrupt { reason, .. }) => {
                    w.history
                        .lock()
                        .expect("history poisoned")
                        .corrupt_read(me, key, reason);
                    // The damaged batch is not skipped: the read waits for a sound copy.
                    madsim::time::sleep(Duration::from_millis(200)).await;
                }
                Err(_) => madsim::time::sleep(Duration::from_millis(200)).await,
            }
        }
        w.history
            .lock()
            .expect("history poisoned")
            .final_read(me, key, end);
    }
}

/// What the monitor last saw of one replica.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Seen {
    epoch: i32,
    leader: bool,
    isr: usize,
    log_end: Offset,
}

/// Invariant 3 checked from what the replicas hold, not from what the leader computed it
/// from: a leader's high watermark is at most the durable end of every member of its ISR, as
/// that member's own log has it (the leader counts the durable ends followers reported, which
/// a slip in recording them would make wrong, and the leader's own assertions read the same
/// records). Members down, without the replica open, or on the faulty disk (whose synced data
/// may rot) are skipped. A violation, for the monitor to report.
fn high_watermark_above_a_member(
    brokers: &[(i32, Arc<keel_node::broker::Broker>)],
    faulty_disk: Option<i32>,
) -> Option<String> {
    for (leader_id, b) in brokers {
        for p in b.all_partitions() {
            let Some((epoch, hw, isr)) = p.with(|r| {
                r.is_leader()
                    .then(|| (r.leader_epoch().0, r.high_watermark(), r.isr()))
            }) else {
                continue;
            };
            for member in isr {
                if member.0 == *leader_id || Some(member.0) == faulty_disk {
                    continue;
                }
                let Some(f) = brokers
                    .iter()
                    .find(|(id, _)| *id == member.0)
                    .and_then(|(_, fb)| fb.replica(&p.topic, p.index))
                else {
                    continue;
                };
                let durable = f.with(|r| r.log().durable_end());
                if durable < hw {
                    return Some(format!(
                        "invariant 3: {}-{} leader {leader_id} at epoch {epoch} has high \
                         watermark {hw}, above the durable end {durable} of ISR member {}",
                        p.topic, p.index, member.0
                    ));
                }
            }
        }
    }
    None
}

/// Checks the replication invariants on the brokers' own state until stopped: each replica's
/// own (`PartitionReplica::check_invariants`, which panics on a violation), one leader per
/// partition and epoch across brokers (invariant 1), and the high watermark against the ISR
/// members' own durable ends (invariant 3, [`high_watermark_above_a_member`]).
async fn monitor(
    cluster: Arc<Mutex<SimCluster>>,
    violations: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    trace: Trace,
    faulty_disk: Option<i32>,
) -> Coverage {
    // Keyed by the broker's incarnation (its Arc's address): a restart starts afresh.
    let mut seen: BTreeMap<(usize, String, i32), Seen> = BTreeMap::new();
    let mut recovered: BTreeSet<(usize, String, i32)> = BTreeSet::new();
    let mut leaders: BTreeMap<(String, i32, i32), i32> = BTreeMap::new();
    let mut coverage = Coverage::default();
    // Each incarnation's replication throttle stats, as last seen.
    let mut throttles: BTreeMap<usize, keel_node::broker::replication::ThrottleStats> =
        BTreeMap::new();
    // Each incarnation's cleaner counters as last seen, and the sum of those gone (a counter
    // below the one seen is a new broker at a freed address).
    let mut cleaners: BTreeMap<(i32, usize), [u64; 4]> = BTreeMap::new();
    let mut cleaners_gone = [0u64; 4];
    while !stop.load(Ordering::SeqCst) {
        let brokers = cluster.lock().expect("cluster poisoned").live_brokers();
        for (_, broker) in &brokers {
            throttles.insert(
                Arc::as_ptr(broker) as usize,
                broker.replication_throttle_stats(),
            );
        }
        if let Some(v) = high_watermark_above_a_member(&brokers, faulty_disk) {
            let mut all = violations.lock().expect("violations poisoned");
            if !all.contains(&v) {
                trace.event(v.clone());
                all.push(v);
            }
        }
        for (id, broker) in brokers {
            let incarnation = Arc::as_ptr(&broker) as usize;
            let c = &broker.metrics().cleaner;
            let now = [
                c.cleanings.load(Ordering::Relaxed),
                c.tombstones_removed.load(Ordering::Relaxed),
                c.batches_emptied.load(Ordering::Relaxed),
                c.stale.load(Ordering::Relaxed),
            ];
            let before = cleaners.entry((id, incarnation)).or_default();
            if now.iter().zip(before.iter()).any(|(n, b)| n < b) {
                for (gone, b) in cleaners_gone.iter_mut().zip(before.iter()) {
                    *gone += b;
                }
            }
            *before = now;
            for p in broker.all_partitions() {
                let now = p.with(|r| {
                    r.check_invariants();
                    Seen {
                        epoch: r.leader_epoch().0,
                        leader: r.role() == Role::Leader,
                        isr: r.isr().len(),
                        log_end: r.log().end(),
                    }
                });
                if now.leader {
                    let key = (p.topic.clone(), p.index, now.epoch);
                    match leaders.get(&key) {
                        Some(&other) if other != id => {
                            let v = format!(
                                "invariant 1: brokers {other} and {id} both led {}-{} at epoch {}",
                                p.topic, p.index, now.epoch
                            );
                            trace.event(v.clone());
                            violations.lock().expect("violations poisoned").push(v);
                        }
                        Some(_) => {}
                        None => {
                            leaders.insert(key, id);
                            coverage.elections += 1;
                        }
                    }
                }
                let key = (incarnation, p.topic.clone(), p.index);
                if recovered.insert(key.clone()) {
                    let report = p.with(|r| r.log().recovery_report().clone());
                    if report.corruption.is_some() {
                        coverage.corruptions_detected += 1;
                    }
                    coverage.recovery_cut_bytes += report.bytes_truncated;
                    coverage.read_retries += report.read_retries;
                }
                if let Some(before) = seen.get(&key) {
                    if now.leader && before.leader && now.epoch == before.epoch {
                        if now.isr < before.isr {
                            coverage.isr_shrinks += 1;
                        } else if now.isr > before.isr {
                            coverage.isr_expands += 1;
                        }
                    }
                    if now.log_end < before.log_end {
                        coverage.truncations += 1;
                    }
                }
                seen.insert(key, now);
            }
        }
        madsim::time::sleep(Duration::from_millis(MONITOR_MS)).await;
    }
    coverage.throttle_held = throttles.values().map(|t| t.held_back).sum();
    coverage.throttled_bytes = throttles.values().map(|t| t.throttled_bytes).sum();
    let mut total = cleaners_gone;
    for counts in cleaners.values() {
        for (t, c) in total.iter_mut().zip(counts) {
            *t += c;
        }
    }
    [
        coverage.cleanings,
        coverage.tombstones_removed,
        coverage.batches_emptied,
        coverage.stale_cleanings,
    ] = total;
    coverage
}

/// Runs `params` twice, each in a fresh process (`keel-sim run --seed N --digest`), and
/// requires the same digest of everything observed: the whole history, the event trace and
/// the simulated time. A fresh process per run, rather than madsim's in-process check:
/// process-wide state that libraries initialise once (statics) differs between a process's
/// first run and its second, and would be reported as nondeterminism that no single run has.
pub fn check_determinism(params: &Params) -> Result<u64, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut digests = Vec::new();
    for _ in 0..2 {
        let mut command = std::process::Command::new(&exe);
        command.args(["run", "--seed", &params.seed.to_string(), "--digest"]);
        // The kinds this run left out (the same seed samples the same kinds, less these).
        let left_out: Vec<&str> = Fault::ALL
            .into_iter()
            .filter(|f| !params.faults.contains(f))
            .map(Fault::name)
            .collect();
        if !left_out.is_empty() {
            command.arg(format!("--without={}", left_out.join(",")));
        }
        if let Some(bug) = params.bug {
            command.args(["--bug", bug.name()]);
        }
        let output = command.output().map_err(|e| e.to_string())?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let digest = stdout
            .lines()
            .find_map(|l| l.strip_prefix("digest: "))
            .ok_or_else(|| format!("no digest from the run: {stdout}"))?
            .trim()
            .to_string();
        digests.push(digest);
    }
    if digests[0] == digests[1] {
        u64::from_str_radix(&digests[0], 16).map_err(|e| e.to_string())
    } else {
        Err(format!(
            "seed {} gave digests {} and {}",
            params.seed, digests[0], digests[1]
        ))
    }
}

/// How long a transactional producer leaves a transaction open before it ends it, at most:
/// the window in which `read_committed` reads must not see it.
const TXN_OPEN_MS_MAX: u64 = 150;

/// A transactional producer: transactions of unique values over 1 to 3 partitions of
/// [`TXN_TOPIC`], committed (70%) or aborted, until stopped. Now and then (1 in 12) a second
/// instance of the same transactional id initialises while a transaction is open, and the
/// first instance, now a zombie, goes on: it adds a partition, sends a value and commits, all
/// of which must fail. Now and then (1 in 25) the producer stalls past its timeout before it
/// commits, which must fail too.
///
/// At transaction version 2 (`txn_version` 2) the producer sends no AddPartitionsToTxn (its
/// Produce v12 adds each partition) and each EndTxn v5 answers the next epoch. Now and then
/// (1 in 4) after an abort, a write of the aborted transaction arrives late (a send whose
/// outcome the producer never learnt, delayed in the network): its old epoch and the next
/// sequence. It is recorded as a zombie's and must be refused: the epoch bump fences it, where
/// without it the write would open a transaction that the producer's next one commits.
async fn txn_produce(
    n: u32,
    w: Arc<Workload>,
    bootstrap: Vec<SocketAddr>,
    keys: Vec<Key>,
    seed: u64,
    txn_version: i16,
) {
    use crate::client::txn::{fenced, EndOutcome, TxnProducer};
    let mut rng = StdRng::seed_from_u64(seed);
    let mut client = Client::new(workload_client(&w, bootstrap, seed));
    let v2 = txn_version >= 2;
    if v2 {
        client.use_transaction_version_2();
    }
    let id = format!("txn-{n}");
    let mut instance = 0u32;
    let mut p = TxnProducer::new(&id, TXN_TIMEOUT_MS);
    let record = |w: &Workload, t: TxnRecord| -> usize {
        let mut h = w.txn.lock().expect("txn history poisoned");
        h.txns.push(t);
        h.txns.len() - 1
    };
    while !w.stop.load(Ordering::SeqCst) {
        if p.producer().is_none() {
            if let Err(e) = client.txn_init(&mut p).await {
                w.trace.event(format!("{id}: InitProducerId: {e}"));
                madsim::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        }
        let label = format!("{id}/{instance}");
        let mut chosen: Vec<Key> = keys.clone();
        let take = rng.gen_range(1..=chosen.len().min(3));
        let mut txn_keys = Vec::new();
        for _ in 0..take {
            txn_keys.push(chosen.remove(rng.gen_range(0..chosen.len())));
        }
        let i = record(
            &w,
            TxnRecord {
                producer: label.clone(),
                values: Vec::new(),
                offsets: BTreeMap::new(),
                commit_sent_ms: None,
                outcome: TxnOutcome::Aborted,
                zombie: false,
            },
        );
        let reset = |p: &mut TxnProducer| {
            *p = TxnProducer::new(&p.transactional_id.clone(), TXN_TIMEOUT_MS)
        };
        if let Err(e) = client.txn_add_partitions(&mut p, &txn_keys).await {
            w.trace.event(format!("{label}: AddPartitionsToTxn: {e}"));
            reset(&mut p);
            continue;
        }
        let mut sent_all = true;
        for key in &txn_keys {
            let value = Value(w.next_value.fetch_add(1, Ordering::SeqCst));
            w.txn.lock().expect("txn history poisoned").txns[i]
                .values
                .push((key.clone(), value));
            match client.txn_produce(&mut p, key, value).await {
                Ok(offset) => {
                    let mut h = w.txn.lock().expect("txn history poisoned");
                    h.txns[i].offsets.insert(value, offset);
                    if v2 {
                        // The transaction's first write there: its Produce v12 added it.
                        h.implicit_adds += 1;
                    }
                }
                Err(e) => {
                    w.trace.event(format!("{label}: produce to {key}: {e}"));
                    sent_all = false;
                    break;
                }
            }
        }
        madsim::time::sleep(Duration::from_millis(rng.gen_range(0..TXN_OPEN_MS_MAX))).await;
        if sent_all && rng.gen_ratio(1, 12) {
            // A second instance fences this one while its transaction is open.
            let mut successor = TxnProducer::new(&id, TXN_TIMEOUT_MS);
            if client.txn_init(&mut successor).await.is_ok() {
                instance += 1;
                w.txn.lock().expect("txn history poisoned").txns[i].zombie = true;
                // Preferably a partition its transaction does not hold (no fencing marker
                // there).
                let others: Vec<&Key> = keys.iter().filter(|k| !txn_keys.contains(k)).collect();
                let extra = if others.is_empty() {
                    keys[rng.gen_range(0..keys.len())].clone()
                } else {
                    others[rng.gen_range(0..others.len())].clone()
                };
                let mut refused = None;
                if let Err(e) = client
                    .txn_add_partitions(&mut p, std::slice::from_ref(&extra))
                    .await
                {
                    refused = Some(e);
                }
                if refused.is_none() {
                    let value = Value(w.next_value.fetch_add(1, Ordering::SeqCst));
                    w.txn.lock().expect("txn history poisoned").txns[i]
                        .values
                        .push((extra.clone(), value));
                    if let Err(e) = client.txn_produce(&mut p, &extra, value).await {
                        refused = Some(e);
                    }
                }
                w.txn.lock().expect("txn history poisoned").txns[i].commit_sent_ms =
                    Some(w.trace.now_ms());
                let end = client.txn_end(&mut p, true).await;
                let outcome = match &end {
                    EndOutcome::Done => TxnOutcome::Committed,
                    EndOutcome::Refused(e) => {
                        refused.get_or_insert(e.clone());
                        TxnOutcome::Aborted
                    }
                    EndOutcome::Unknown(_) => TxnOutcome::Unknown,
                };
                let mut h = w.txn.lock().expect("txn history poisoned");
                h.txns[i].outcome = outcome;
                if refused.as_ref().is_some_and(fenced) {
                    h.fencings += 1;
                }
                h.coordinator_moves += p.coordinator_moves;
                drop(h);
                w.trace
                    .event(format!("{label}: fenced by instance {instance}: {end:?}"));
                p = successor;
                continue;
            }
        }
        let stalled = sent_all && rng.gen_ratio(1, 25);
        if stalled {
            madsim::time::sleep(Duration::from_millis(TXN_TIMEOUT_MS as u64 + 1_000)).await;
        }
        let commit = sent_all && rng.gen_bool(0.7);
        if commit {
            w.txn.lock().expect("txn history poisoned").txns[i].commit_sent_ms =
                Some(w.trace.now_ms());
        }
        let ended = p.producer();
        let bumps_before = p.epoch_bumps;
        let end = client.txn_end(&mut p, commit).await;
        if v2 && end == EndOutcome::Done {
            let mut h = w.txn.lock().expect("txn history poisoned");
            if commit {
                h.v2_commits += 1;
            } else {
                h.v2_aborts += 1;
            }
            h.epoch_bumps += p.epoch_bumps - bumps_before;
        }
        if let (true, false, EndOutcome::Done, Some((pid, epoch))) = (v2, commit, &end, ended) {
            if rng.gen_ratio(1, 4) {
                // A late write of the aborted transaction, at its epoch and the next sequence
                // of a partition it wrote (where its ABORT marker is) or of any other.
                let key = if rng.gen_bool(0.5) {
                    txn_keys[rng.gen_range(0..txn_keys.len())].clone()
                } else {
                    keys[rng.gen_range(0..keys.len())].clone()
                };
                let sequence = p.next_sequence(&key);
                if p.producer() == ended {
                    // Not bumped: the late write took the producer's next sequence there.
                    p.skip_sequence(&key);
                }
                let value = Value(w.next_value.fetch_add(1, Ordering::SeqCst));
                let late = record(
                    &w,
                    TxnRecord {
                        producer: format!("{label}/late"),
                        values: vec![(key.clone(), value)],
                        offsets: BTreeMap::new(),
                        commit_sent_ms: None,
                        outcome: TxnOutcome::Aborted,
                        zombie: true,
                    },
                );
                let written = client
                    .txn_produce_as(&id, (pid, epoch, sequence), &key, value)
                    .await;
                let mut h = w.txn.lock().expect("txn history poisoned");
                match &written {
                    Ok(offset) => {
                        h.txns[late].offsets.insert(value, *offset);
                    }
                    Err(e) if fenced(e) => h.late_writes_fenced += 1,
                    Err(_) => {}
                }
                drop(h);
                w.trace.event(format!(
                    "{label}: late write of the aborted transaction (epoch {epoch}) to {key}: \
                     {written:?}"
                ));
            }
        }
        if !v2 && !sent_all && end == EndOutcome::Done {
            // A send whose outcome is unknown may have been written with its sequence number,
            // and the next transaction's batch there would reuse it: a duplicate of the
            // aborted batch, acknowledged at its offset. So the epoch is bumped first (KIP-360,
            // as Kafka's producer does after an abortable error with an unresolved sequence),
            // and sequences start over.
            if let Err(e) = client.txn_init(&mut p).await {
                w.trace
                    .event(format!("{label}: InitProducerId (bump): {e}"));
                reset(&mut p);
            }
        }
        let mut h = w.txn.lock().expect("txn history poisoned");
        match (&end, commit) {
            (EndOutcome::Done, true) => {
                h.txns[i].outcome = TxnOutcome::Committed;
                h.commits += 1;
            }
            (EndOutcome::Done, false) => h.aborts += 1,
            (EndOutcome::Unknown(_), true) => h.txns[i].outcome = TxnOutcome::Unknown,
            (EndOutcome::Refused(e), true) if stalled && fenced(e) => h.timeouts += 1,
            _ => {}
        }
        if end != EndOutcome::Done {
            h.coordinator_moves += p.coordinator_moves;
            drop(h);
            w.trace
                .event(format!("{label}: EndTxn(commit={commit}): {end:?}"));
            reset(&mut p);
        }
    }
    w.txn
        .lock()
        .expect("txn history poisoned")
        .coordinator_moves += p.coordinator_moves;
}

/// A `read_committed` consumer of [`TXN_TOPIC`]: polls every partition in turn, forever.
async fn txn_consume(
    c: u32,
    w: Arc<Workload>,
    bootstrap: Vec<SocketAddr>,
    keys: Vec<Key>,
    seed: u64,
) {
    let mut client = Client::new(workload_client(&w, bootstrap, seed));
    let mut positions: BTreeMap<Key, Offset> =
        keys.iter().map(|k| (k.clone(), Offset(0))).collect();
    loop {
        for key in &keys {
            let at = positions[key];
            match client.fetch_read_committed(key, at).await {
                Ok(f) => {
                    let now = w.trace.now_ms();
                    let mut h = w.txn.lock().expect("txn history poisoned");
                    for (offset, value) in f.records {
                        h.reads.push(TxnRead {
                            reader: c,
                            key: key.clone(),
                            offset,
                            value,
                            at_ms: now,
                        });
                    }
                    positions.insert(key.clone(), f.next);
                }
                Err(_) => madsim::time::sleep(Duration::from_millis(100)).await,
            }
        }
        madsim::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The final `read_committed` read of [`TXN_TOPIC`]: per partition, waits until no
/// transaction is open (the last stable offset at the high watermark), then reads to it.
async fn txn_final_read(w: Arc<Workload>, bootstrap: Vec<SocketAddr>, keys: Vec<Key>) {
    let mut client = Client::new(ClientConfig::new(bootstrap));
    for key in &keys {
        let mut position = Offset(0);
        let mut read = Vec::new();
        loop {
            match client.fetch_read_committed(key, position).await {
                Ok(f) => {
                    read.extend(f.records);
                    position = f.next;
                    if f.last_stable_offset == f.high_watermark && position >= f.high_watermark {
                        break;
                    }
                    if f.next == Offset(0) || position >= f.last_stable_offset {
                        madsim::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                Err(_) => madsim::time::sleep(Duration::from_millis(200)).await,
            }
        }
        w.txn
            .lock()
            .expect("txn history poisoned")
            .final_read
            .insert(key.clone(), read);
    }
}

/// A producer of the compacted workload: keyed values and tombstones ([`crate::compact`]'s
/// shares of hot and cold keys), acks=all and idempotent, to random partitions of
/// [`COMPACT_TOPIC`], until stopped.
async fn compact_produce(
    me: u32,
    w: Arc<Workload>,
    bootstrap: Vec<SocketAddr>,
    keys: Vec<Key>,
    seed: u64,
) {
    use crate::compact::{record_key, COLD_KEYS, HOT_KEYS, HOT_SHARE, TOMBSTONE_SHARE};
    let mut rng = StdRng::seed_from_u64(seed);
    let mut client = Client::new(workload_client(&w, bootstrap, seed));
    while !w.stop.load(Ordering::SeqCst) {
        let partition = &keys[rng.gen_range(0..keys.len())];
        let hot = rng.gen_bool(HOT_SHARE);
        let n = rng.gen_range(0..if hot { HOT_KEYS } else { COLD_KEYS });
        let record_key = record_key(hot, n);
        let value = (!rng.gen_bool(TOMBSTONE_SHARE))
            .then(|| Value(w.compact_next_value.fetch_add(1, Ordering::SeqCst)));
        let outcome = client
            .produce_keyed(partition, record_key.as_bytes(), value)
            .await;
        w.compact
            .lock()
            .expect("compact history poisoned")
            .sends
            .push(CompactSend {
                process: me,
                partition: partition.clone(),
                record_key,
                value,
                outcome,
            });
        madsim::time::sleep(Duration::from_millis(rng.gen_range(5..50))).await;
    }
}

/// The records of a keyed fetch, for the compacted history.
fn compact_records(records: Vec<crate::client::KeyedRecord>) -> Vec<CompactRecord> {
    records
        .into_iter()
        .map(|(offset, key, value)| CompactRecord {
            offset,
            record_key: String::from_utf8_lossy(&key).into_owned(),
            value,
        })
        .collect()
}

/// A consumer of [`COMPACT_TOPIC`] by assign: polls every partition in turn from its start,
/// forever, past the empty batches cleaning leaves.
async fn compact_consume(
    me: u32,
    w: Arc<Workload>,
    bootstrap: Vec<SocketAddr>,
    keys: Vec<Key>,
    seed: u64,
) {
    let mut client = Client::new(workload_client(&w, bootstrap, seed));
    let mut positions: BTreeMap<Key, Offset> =
        keys.iter().map(|k| (k.clone(), Offset(0))).collect();
    loop {
        for key in &keys {
            match client.fetch_keyed(key, positions[key]).await {
                Ok(f) => {
                    if !f.records.is_empty() {
                        w.compact
                            .lock()
                            .expect("compact history poisoned")
                            .reads
                            .push(CompactRead {
                                reader: me,
                                partition: key.clone(),
                                records: compact_records(f.records),
                            });
                    }
                    positions.insert(key.clone(), f.next);
                }
                Err(_) => madsim::time::sleep(Duration::from_millis(100)).await,
            }
        }
        madsim::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The final read of [`COMPACT_TOPIC`]: per partition, waits (within
/// [`FINAL_READ_SETTLE_MS`]) for the end offset to pass every acknowledged write, then reads
/// from offset 0 to that end, as a fresh process.
async fn compact_final_read(w: Arc<Workload>, bootstrap: Vec<SocketAddr>, keys: Vec<Key>) {
    let mut client = Client::new(ClientConfig::new(bootstrap));
    for key in &keys {
        let acked_end = w
            .compact
            .lock()
            .expect("compact history poisoned")
            .sends
            .iter()
            .filter(|s| &s.partition == key)
            .filter_map(|s| match s.outcome {
                SendOutcome::Ok { offset } => Some(offset.plus(1)),
                _ => None,
            })
            .max()
            .unwrap_or(Offset(0));
        let settle = madsim::time::Instant::now();
        let end = loop {
            match client.end_offset(key).await {
                Ok(end)
                    if end >= acked_end
                        || settle.elapsed() >= Duration::from_millis(FINAL_READ_SETTLE_MS) =>
                {
                    break end
                }
                _ => madsim::time::sleep(Duration::from_millis(200)).await,
            }
        };
        let mut position = Offset(0);
        let mut read = Vec::new();
        while position < end {
            match client.fetch_keyed(key, position).await {
                Ok(f) => {
                    read.extend(
                        compact_records(f.records)
                            .into_iter()
                            .filter(|r| r.offset < end),
                    );
                    position = f.next;
                }
                Err(_) => madsim::time::sleep(Duration::from_millis(200)).await,
            }
        }
        w.compact
            .lock()
            .expect("compact history poisoned")
            .final_read
            .insert(key.clone(), read);
    }
}
