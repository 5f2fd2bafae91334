//! The broker: keel-core's controller and partition state machines wired to files, sync
//! threads, the metadata quorum ([`crate::cluster`]), the peer transport and the Kafka wire
//! layer.
//!
//! What it owns:
//! - its membership: it registers with the controller at start (fenced, KRaft's way), is
//!   unfenced once its metadata caught up, and heartbeats every `broker.heartbeat.interval.ms`;
//! - one [`PartitionHandle`] per partition it holds a replica of, each a core
//!   [`PartitionReplica`] over [`Dir`] in `{data dir}/{topic}-{partition}/`, in the role
//!   the applied metadata gives it (`fetcher` runs followers' fetch sessions,
//!   [`replication`] answers them);
//! - what each replica asks for after an input (core's [`Effect`]s, drained by
//!   [`PartitionHandle::drain_effects`], the one place node carries them out): an AlterPartition
//!   to send to the controller, a sync round, a new high watermark to publish, a deadline;
//! - the sync threads ([`SyncWorker`]): group commit. Appends, and a follower's fetch that moves
//!   the high watermark, ask for a sync round; a sync thread fsyncs its log outside the
//!   partition's lock (so appends go on meanwhile), lets a follower waiting for that sync name
//!   its next fetch, then persists the high watermark where it must be and exposes it, which
//!   answers acks=all produces and wakes long-polling fetches and the fetch sessions. Different
//!   partitions sync in parallel, one partition on one thread at a time.
//!
//! What always holds:
//! - a partition's lock is never held across an `.await`, nor across the group-commit syncs
//!   (the log's and the high watermark's run outside it); it covers in-memory work, appends,
//!   and the rare writes that sync under it (a new leader epoch's files, a segment roll, a
//!   truncation, a checkpoint); the snapshot lock, when both are taken, is taken first;
//! - an acks=all produce is answered only once the exposed high watermark covers it, so only
//!   after every in-sync replica has its data on disk (keel's durable acks) and the high
//!   watermark file covers it (a read this broker serves after the answer sees the write);
//! - metadata changes are committed by the quorum before they take effect or are answered;
//! - partitions take roles, and directories of deleted topics are removed, only after this
//!   broker's registration applied locally (so its metadata is caught up with the log).

mod acl_handler;
mod authz;
pub mod cleaner;
mod describe_handler;
mod fetcher;
mod group_handler;
mod groups;
mod handler;
mod hw_checkpoint;
mod ops_handler;
mod quota_handler;
pub mod replication;
mod scram_handler;
mod txn;
mod txn_handler;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use keel_core::controller::{
    BrokerId, BrokerRegistration, ControllerError, Endpoint, MetadataRecord, MetadataState,
    Partition, ProducerIdBlock, TopicDefaults, TopicId,
};
use keel_core::error_code::{self as code, ErrorCode};
use keel_core::log::LogError;
use keel_core::partition::{
    Effect, PartitionReplica, ProduceRules, ReplicaConfig, ReplicaError, RoleError,
};
use keel_core::quorum::sessions::Heartbeat;
use keel_core::storage::StorageError;
use keel_core::{Offset, ProducerId};
use tokio::sync::watch;

use crate::cluster::{Cluster, ClusterSettings, Proposed};
use crate::storage::{Dir, Disk};

/// The directory, under the data directory, of the metadata quorum's log.
pub const METADATA_DIR: &str = "__metadata";
/// The file, in the data directory, holding the cluster id.
const CLUSTER_ID_FILE: &str = "cluster.id";
/// The file in a partition directory naming its topic's id (Kafka's).
const PARTITION_METADATA: &str = "partition.metadata";
/// How many times a command is computed again after the metadata moved under it.
const COMMAND_ATTEMPTS: usize = 8;

/// What the broker needs from its configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    pub node_id: i32,
    pub data_dir: PathBuf,
    /// Host and port clients are told to connect to.
    pub advertised_host: String,
    pub advertised_port: u16,
    /// Every advertised listener (`advertised.listeners`, ports resolved), registered with the
    /// controller; Metadata answers with the endpoints of the listener a request came in on.
    /// Empty: one PLAINTEXT endpoint at `advertised_host:advertised_port`.
    pub advertised_listeners: Vec<Endpoint>,
    /// `auto.create.topics.enable`.
    pub auto_create_topics: bool,
    /// `num.partitions` and `default.replication.factor`.
    pub topic_defaults: TopicDefaults,
    /// Topic-level settings every new topic inherits from the broker (`log.retention.ms` as
    /// `retention.ms`, ...); a topic's own settings win.
    pub topic_config_defaults: BTreeMap<String, String>,
    /// The metadata quorum and broker sessions.
    pub cluster: ClusterSettings,
    /// `replica.lag.time.max.ms`.
    pub replica_lag_time_max_ms: i64,
    /// `replica.fetch.max.bytes`.
    pub replica_fetch_bytes_max: usize,
    /// `replica.fetch.backoff.ms`.
    pub replica_fetch_backoff_ms: i64,
    /// Where the data directory lives: the file system, or the simulator's disk.
    pub disk: Disk,
    /// `offsets.topic.num.partitions`.
    pub offsets_topic_partitions: i32,
    /// `offsets.topic.replication.factor` (capped by the live brokers at creation).
    pub offsets_topic_replication_factor: i16,
    /// `offsets.topic.segment.bytes`: the topic's `segment.bytes` at creation.
    pub offsets_topic_segment_bytes: i32,
    /// The group coordinator's settings (`group.*`, `offsets.retention.minutes`).
    pub group: keel_core::group::GroupConfig,
    /// The transaction coordinator's settings (`transaction.*`).
    pub transactions: TxnSettings,
    /// The authoriser (`authorizer.class.name` and its settings; docs/security.md); `None`:
    /// every request is allowed.
    pub authorizer: Option<keel_core::acl::AuthorizerConfig>,
}

impl Settings {
    /// A single broker's settings with Kafka's defaults (tests).
    pub fn single(node_id: i32, data_dir: PathBuf) -> Settings {
        Settings {
            node_id,
            data_dir,
            advertised_host: "127.0.0.1".into(),
            advertised_port: 9092,
            advertised_listeners: Vec::new(),
            auto_create_topics: true,
            topic_defaults: TopicDefaults::default(),
            topic_config_defaults: BTreeMap::new(),
            cluster: ClusterSettings::single(),
            replica_lag_time_max_ms: keel_core::partition::REPLICA_LAG_TIME_MAX_MS_DEFAULT,
            replica_fetch_bytes_max: keel_core::partition::REPLICA_FETCH_BYTES_MAX_DEFAULT,
            replica_fetch_backoff_ms: keel_core::partition::REPLICA_FETCH_BACKOFF_MS_DEFAULT,
            disk: Disk::Real,
            offsets_topic_partitions: groups::OFFSETS_TOPIC_PARTITIONS_DEFAULT,
            offsets_topic_replication_factor: groups::OFFSETS_TOPIC_REPLICATION_FACTOR_DEFAULT,
            offsets_topic_segment_bytes: groups::OFFSETS_TOPIC_SEGMENT_BYTES_DEFAULT,
            group: keel_core::group::GroupConfig::default(),
            transactions: TxnSettings::default(),
            authorizer: None,
        }
    }
}

pub use txn::{
    TxnSettings, TRANSACTION_STATE_PARTITIONS_DEFAULT,
    TRANSACTION_STATE_REPLICATION_FACTOR_DEFAULT, TRANSACTION_STATE_TOPIC,
};

pub use groups::{
    partition_for as group_partition_for, OFFSETS_TOPIC, OFFSETS_TOPIC_PARTITIONS_DEFAULT,
    OFFSETS_TOPIC_REPLICATION_FACTOR_DEFAULT,
};

/// The Kafka APIs the broker answers: every API of the version table, the group APIs
/// included ([`groups`]).
pub use scram_handler::scram_lookup;

pub fn served_apis() -> crate::wire::SupportedApis {
    crate::wire::SupportedApis::all()
}

pub use crate::clock::wall_ms;
use crate::clock::Clock;

/// A random 16-byte id (topic ids, incarnation ids, the cluster id).
fn random_id() -> [u8; 16] {
    use rand::RngCore;
    let mut id = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut id);
    // Kafka's Uuid reserves the all-zero id (and ids starting with 0 are fine otherwise).
    id[0] |= 1;
    id
}

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("data directory {0}: {1}")]
    DataDir(PathBuf, std::io::Error),
    #[error("metadata: {0}")]
    Metadata(StorageError),
    #[error("{0}")]
    Cluster(#[from] crate::cluster::ClusterError),
}

/// Why a partition's replica could not be opened.
#[derive(Debug, thiserror::Error)]
enum OpenError {
    /// The partition directory could not be opened.
    #[error("{}: {source}", .dir.display())]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
    /// Reading or writing the directory's topic id failed.
    #[error("{0}")]
    TopicId(StorageError),
    /// Recovery of the log, the producer state or the replica state failed.
    #[error("{0}")]
    Recover(#[from] ReplicaError),
}

/// One partition this broker holds a replica of.
pub struct PartitionHandle {
    /// This handle, for the queues it puts itself in.
    this: Weak<PartitionHandle>,
    /// The broker, which carries out the replica's effects ([`PartitionHandle::drain_effects`]).
    broker: Weak<Broker>,
    /// The broker's monotonic clock (durations: lag, backoffs, deadlines).
    clock: Clock,
    pub topic: String,
    pub index: i32,
    pub topic_id: TopicId,
    dir: PathBuf,
    replica: Mutex<PartitionReplica<Dir>>,
    snapshots: Mutex<Dir>,
    /// A clone of the log's storage, for the sync threads (log syncs and high watermark
    /// writes).
    syncer: Dir,
    /// The high watermark, for waiters (acks=all produces, long-polling fetches). Also
    /// signalled, unchanged, when the role changes, so that waiters look again.
    high_watermark: watch::Sender<Offset>,
    /// Where the partition is in the group-commit work, per [`Lane`] (`sync_state`).
    sync_state: [AtomicU8; 2],
    deleted: AtomicBool,
    /// The leader's fetch sessions: told when this partition changes.
    sessions: Arc<replication::LeaderSessions>,
    /// The replica deadlines, and this partition's place in them (`i64::MAX`: none).
    deadlines: Arc<replication::Deadlines>,
    timer_at: AtomicI64,
    /// The fetcher of the leader this replica follows, if it follows one.
    fetcher: Mutex<Option<Arc<fetcher::Fetcher>>>,
    /// As a follower: the log end whose sync it waits for before naming its next fetch
    /// (`i64::MIN`: none).
    sync_wait: AtomicI64,
}

impl PartitionHandle {
    /// Runs `f` with the replica locked. Never hold it across an await or an fsync.
    pub fn with<R>(&self, f: impl FnOnce(&mut PartitionReplica<Dir>) -> R) -> R {
        let mut replica = self.replica.lock().expect("partition lock poisoned");
        f(&mut replica)
    }

    /// Runs `f` with the snapshot storage and the replica locked (in that order).
    pub fn with_snapshots<R>(
        &self,
        f: impl FnOnce(&mut PartitionReplica<Dir>, &mut Dir) -> R,
    ) -> R {
        let mut snapshots = self.snapshots.lock().expect("snapshot lock poisoned");
        let mut replica = self.replica.lock().expect("partition lock poisoned");
        f(&mut replica, &mut snapshots)
    }

    pub fn subscribe(&self) -> watch::Receiver<Offset> {
        self.high_watermark.subscribe()
    }

    pub fn high_watermark(&self) -> Offset {
        *self.high_watermark.borrow()
    }

    /// The partition as fetch sessions name it.
    pub fn key(&self) -> replication::PartitionKey {
        (self.topic_id, self.index)
    }

    /// Whether its topic was deleted (or recreated): loops and queues drop it.
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::SeqCst)
    }

    fn publish_high_watermark(&self, hw: Offset) {
        if raise(&self.high_watermark, hw) {
            self.touch();
        }
    }

    /// Carries out what the replica asks for after an input (core's [`Effect`]s, in core's
    /// order): the one place they are drained. Call after every call into the replica that
    /// may change it, outside its lock.
    pub fn drain_effects(&self) {
        let (Some(me), Some(broker)) = (self.this.upgrade(), self.broker.upgrade()) else {
            return;
        };
        for effect in self.with(|r| r.poll_effects()) {
            match effect {
                Effect::AlterPartition(alter) => broker.send_alter_partition(&me, alter),
                Effect::Sync => broker.sync.queue(&me, Lane::Log),
                Effect::WriteHighWatermark => broker.sync.queue(&me, Lane::HighWatermark),
                Effect::HighWatermark(hw) => self.publish_high_watermark(hw),
                Effect::Deadline(at) => self.deadlines.schedule(&me, at),
            }
        }
    }

    /// Whether this replica is damaged (core's rules, [`keel_core::partition::damage`]):
    /// it may lack committed data, so it leads nothing and keeps its broker fenced. A replica
    /// whose repair is due is repaired here (its mark removed).
    pub fn is_damaged(&self) -> bool {
        if !self.with(|r| r.is_damaged()) {
            return false;
        }
        let (repaired, damaged) =
            self.with_snapshots(|r, snapshots| (r.repair_if_due(snapshots), r.is_damaged()));
        match repaired {
            Ok(true) => {
                tracing::info!(topic = %self.topic, partition = self.index, "repaired from the leader")
            }
            Ok(false) => {}
            // Still marked on disk: stay damaged, try again at the next look.
            Err(e) => {
                tracing::warn!(topic = %self.topic, partition = self.index, "removing the damage mark: {e}")
            }
        }
        damaged
    }

    /// Counts the replica as damaged (it failed to open before), until it has fetched back
    /// from its leader.
    fn mark_damaged(&self) {
        if let Err(e) = self.with_snapshots(|r, snapshots| r.mark_damaged(snapshots)) {
            tracing::warn!(topic = %self.topic, partition = self.index, "writing the damage mark: {e}");
        }
    }

    /// A read of this replica's log failed with `e`: damage makes the replica damaged
    /// (`PartitionReplica::on_read_failed`): its broker asks to be fenced, which moves its
    /// leaderships to sound ISR members, and it discards the damaged batch onwards once it
    /// follows (`discard_if_pending`). Other errors are answered as they are and tried again
    /// by the reader.
    pub fn read_failed(&self, e: &LogError) {
        let newly = self.with_snapshots(|r, snapshots| r.on_read_failed(e, snapshots));
        if !matches!(newly, Ok(false)) {
            tracing::error!(topic = %self.topic, partition = self.index, "damaged batch in the log: {e}; stepping down to repair it from another replica");
        }
        if let Err(e) = newly {
            tracing::warn!(topic = %self.topic, partition = self.index, "writing the damage mark: {e}");
        }
    }

    /// A follower with runtime damage pending: discards its log from the first damaged batch
    /// (`PartitionReplica::discard_pending_damage`), so that the fetches that follow bring it
    /// back. Call under the locks, before naming the next fetch.
    fn discard_if_pending(&self, r: &mut PartitionReplica<Dir>, snapshots: &mut Dir) {
        match r.discard_pending_damage(self.clock.now_ms(), snapshots) {
            Ok(None) => {}
            Ok(Some(end)) => {
                tracing::warn!(topic = %self.topic, partition = self.index, "discarded the damaged log from {end}: fetching it back from the leader");
            }
            Err(e) => {
                tracing::error!(topic = %self.topic, partition = self.index, "discarding the damaged log: {e}")
            }
        }
    }

    /// Wakes the fetch sessions that carry this partition (a role change, an append, a high
    /// watermark move): they evaluate it again. Never called under the partition's lock.
    fn touch(&self) {
        self.sessions.mark(&self.key());
    }

    /// Wakes produce and fetch waiters so that they look at the partition again.
    fn wake_waiters(&self) {
        self.high_watermark.send_modify(|_| {});
        self.touch();
    }

    /// Makes everything appended so far durable: prepare under the lock, sync outside it,
    /// complete under it.
    fn settle_log(&self) -> Result<(), StorageError> {
        if let Some(pending) = self.with(|r| r.prepare_sync()) {
            for file in pending.files() {
                self.syncer.sync_file(file)?;
            }
            self.with(|r| r.complete_sync(pending));
        }
        let durable = self.with(|r| r.log().durable_end());
        // Also when another path synced the log (a checkpoint, a truncation). A follower names
        // its next fetch with its new durable end without waiting for a high watermark write.
        self.sync_done(durable, false);
        self.drain_effects();
        Ok(())
    }

    /// Syncs and writes the checkpoint and a producer snapshot (clean shutdown, timers).
    pub fn checkpoint(&self) -> Result<(), LogError> {
        self.with_snapshots(|r, snapshots| {
            r.checkpoint(snapshots)?;
            r.persist_state(snapshots)?;
            Ok::<_, LogError>(())
        })?;
        self.drain_effects();
        Ok(())
    }
}

/// Moves `watched` up to `to` (never down), waking its waiters only if it moved.
fn raise(watched: &watch::Sender<Offset>, to: Offset) -> bool {
    watched.send_if_modified(|current| {
        let moved = to > *current;
        if moved {
            *current = to;
        }
        moved
    })
}

/// How long after a replica failed to open or to take its role reconciliation runs again.
const RECONCILE_RETRY: Duration = Duration::from_secs(1);

/// How many threads run syncs (real disks only). A sync blocks its thread for the disk's flush,
/// not the CPU: partitions queued together sync in parallel, and the block layer merges their
/// flushes, instead of waiting behind each other.
#[cfg(not(madsim))]
const SYNC_THREADS: usize = 32;

/// The two kinds of disk work of a partition, each queued at most once, and independently of
/// the other: the log's sync rounds ([`SyncWorker`]) and the high watermark's writes (the
/// broker's checkpoint writer, [`hw_checkpoint`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lane {
    Log = 0,
    HighWatermark = 1,
}

/// A partition's place in the group-commit work of one lane ([`PartitionHandle::sync_state`]).
mod sync_state {
    /// Nothing to do.
    pub const IDLE: u8 = 0;
    /// In the queue, once.
    pub const QUEUED: u8 = 1;
    /// Being settled by one sync thread (never two at once).
    pub const RUNNING: u8 = 2;
    /// Being settled, and queued again meanwhile: it goes back to the queue once done.
    pub const RUNNING_AGAIN: u8 = 3;
}

/// Group commit: syncs dirty partitions, one fsync per partition per turn, however many
/// appends it received since its last turn, and queues their high watermark writes for the
/// broker's checkpoint writer ([`hw_checkpoint`], one sync per round for every partition).
/// A partition is in the log's queue at most once and settled by one thread at a time;
/// queued again while it settles, it goes to the back of the queue when that settle ends, so
/// a busy partition never starves the others. Real disks get
/// [`SYNC_THREADS`] threads, which sync different partitions in parallel. Under the simulator
/// (madsim runs no threads of its own) it is one task that takes every queued partition as a
/// round after a simulated sync's latency, as if they synced in parallel.
struct SyncWorker {
    tx: tokio::sync::mpsc::UnboundedSender<Arc<PartitionHandle>>,
    /// The checkpoint writer's queue.
    hw_tx: tokio::sync::mpsc::UnboundedSender<Arc<PartitionHandle>>,
}

impl SyncWorker {
    /// `latency`: how long a sync takes under the simulator (see `VirtualDisk::sync_latency`).
    fn start(
        #[cfg_attr(not(madsim), allow(unused_variables))] latency: Duration,
        checkpoint: Arc<hw_checkpoint::HwCheckpoint>,
    ) -> SyncWorker {
        let (hw_tx, hw_rx) = tokio::sync::mpsc::unbounded_channel::<Arc<PartitionHandle>>();
        hw_checkpoint::start_writer(
            checkpoint,
            hw_rx,
            #[cfg(madsim)]
            latency,
        );
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Arc<PartitionHandle>>();
        // The workers hold the queue weakly: dropping the broker's sender ends them.
        let requeue = tx.downgrade();
        #[cfg(not(madsim))]
        {
            let rx = Arc::new(Mutex::new(rx));
            for i in 0..SYNC_THREADS {
                let (rx, requeue) = (rx.clone(), requeue.clone());
                std::thread::Builder::new()
                    .name(format!("keel-sync-{i}"))
                    .spawn(move || loop {
                        // One thread waits on the queue; the others wait for the lock.
                        let next = rx.lock().expect("sync queue poisoned").blocking_recv();
                        let Some(p) = next else {
                            return;
                        };
                        settle_queued(&p, &requeue);
                    })
                    .expect("spawn a sync thread");
            }
        }
        #[cfg(madsim)]
        {
            let mut rx = rx;
            tokio::spawn(async move {
                while let Some(first) = rx.recv().await {
                    // A simulated fsync takes time, as a real one does: appends made meanwhile
                    // stay unsynced, and a power loss then loses them.
                    tokio::time::sleep(latency).await;
                    let mut round = vec![first];
                    while let Ok(p) = rx.try_recv() {
                        round.push(p);
                    }
                    for p in round {
                        settle_queued(&p, &requeue);
                    }
                }
            });
        }
        SyncWorker { tx, hw_tx }
    }

    fn queue(&self, p: &Arc<PartitionHandle>, lane: Lane) {
        use sync_state::*;
        let sync_state = &p.sync_state[lane as usize];
        let mut state = sync_state.load(Ordering::SeqCst);
        loop {
            let next = match state {
                IDLE => QUEUED,
                RUNNING => RUNNING_AGAIN,
                _ => return,
            };
            match sync_state.compare_exchange(state, next, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => {
                    if next == QUEUED {
                        let _ = match lane {
                            Lane::Log => self.tx.send(p.clone()),
                            // The writer sets the state back to IDLE as it takes the
                            // partition (never RUNNING): a write wanted later queues it again.
                            Lane::HighWatermark => self.hw_tx.send(p.clone()),
                        };
                    }
                    return;
                }
                Err(now) => state = now,
            }
        }
    }
}

/// Settles a partition taken from the queue, then puts it back at the end of the queue if it
/// was queued again meanwhile.
fn settle_queued(
    p: &Arc<PartitionHandle>,
    requeue: &tokio::sync::mpsc::WeakUnboundedSender<Arc<PartitionHandle>>,
) {
    use sync_state::*;
    let sync_state = &p.sync_state[Lane::Log as usize];
    let was = sync_state.swap(RUNNING, Ordering::SeqCst);
    debug_assert_eq!(was, QUEUED, "a partition leaves the queue only once");
    if !p.deleted.load(Ordering::SeqCst) {
        if let Err(e) = p.settle_log() {
            tracing::error!(topic = %p.topic, partition = p.index, "log sync failed: {e}");
            // A follower waiting for this sync fetches anyway, with the durable end it has.
            p.sync_done(Offset(i64::MAX), true);
        }
    }
    if sync_state
        .compare_exchange(RUNNING, IDLE, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
    {
        // Queued again while it settled (the state is RUNNING_AGAIN).
        sync_state.store(QUEUED, Ordering::SeqCst);
        if let Some(tx) = requeue.upgrade() {
            let _ = tx.send(p.clone());
        }
    }
}

/// The broker. Shared by every connection as an `Arc`.
pub struct Broker {
    /// This broker, for the tasks it starts.
    this: std::sync::Weak<Broker>,
    settings: Settings,
    metrics: Arc<crate::metrics::Metrics>,
    cluster_id: String,
    cluster: Arc<Cluster>,
    /// This broker's epoch from its registration (-1 before).
    broker_epoch: AtomicI64,
    /// Registered, and its registration applied here: partitions may take roles.
    registered: AtomicBool,
    producer_ids: Mutex<(Option<ProducerIdBlock>, i64)>,
    partitions: RwLock<BTreeMap<(String, i32), Arc<PartitionHandle>>>,
    /// Serialises reconciliations (the metadata watcher and commands both run them).
    reconciling: Mutex<()>,
    /// Replicas assigned here that failed to open (their storage is damaged beyond what
    /// recovery cuts): as damaged ones, they keep the broker fenced.
    unopenable: Mutex<std::collections::BTreeSet<(String, i32)>>,
    /// A replica failed to open or to take its role in the last reconciliation (a failed
    /// I/O): reconciliation runs again after [`RECONCILE_RETRY`], since no metadata change
    /// may come to run it (simulator seed 1612: an unopenable replica kept its broker fenced).
    reconcile_failed: AtomicBool,
    /// A retry of reconciliation is scheduled.
    reconcile_retry_pending: AtomicBool,
    /// The broker is stopping: its heartbeats ask for a controlled shutdown.
    shutting_down: AtomicBool,
    /// Client quota usage by kind and quota key ([`quota_handler::QuotaRates`]).
    quota_rates: quota_handler::QuotaRates,
    sync: SyncWorker,
    /// The persisted high watermarks of this broker's replicas ([`hw_checkpoint`]).
    hw_checkpoint: Arc<hw_checkpoint::HwCheckpoint>,
    /// The group coordinators of the `__consumer_offsets` partitions this broker leads.
    groups: groups::Coordinators,
    /// The transaction coordinators of the `__transaction_state` partitions this broker leads.
    txns: txn::TxnCoordinators,
    /// Followers' fetch sessions with this broker as leader.
    sessions: Arc<replication::LeaderSessions>,
    /// This broker's fetchers, one per leader broker it follows partitions of.
    fetchers: Mutex<BTreeMap<BrokerId, Arc<fetcher::Fetcher>>>,
    /// Every partition's next deadline.
    deadlines: Arc<replication::Deadlines>,
    /// The monotonic clock of durations ([`crate::clock`]).
    clock: Clock,
    /// The runtime, for tasks started from the sync threads (an AlterPartition request a
    /// partition's effects ask for). The simulator runs no threads of its own.
    #[cfg(not(madsim))]
    runtime: tokio::runtime::Handle,
}

fn produce_rules(config: &keel_core::controller::TopicConfig) -> ProduceRules {
    let (timestamp_before_max_ms, timestamp_after_max_ms) = config.timestamp_bounds_ms();
    ProduceRules {
        max_message_bytes: config.max_message_bytes().max(0) as usize,
        log_append_time: config.message_timestamp_type()
            == keel_core::batch::TimestampType::LogAppendTime,
        compacted: config.cleanup_policy().compact,
        compression: config.compression(),
        timestamp_before_max_ms,
        timestamp_after_max_ms,
    }
}

/// A topic's log settings for its partition `index`: the partition's name salts its
/// `segment.jitter.ms`, so that the partitions of a topic do not all roll at once.
fn log_config(
    config: &keel_core::controller::TopicConfig,
    topic: &str,
    index: i32,
) -> keel_core::log::LogConfig {
    use std::hash::{Hash, Hasher};
    // A fixed hash (not the process's random SipHash keys): the same partition rolls at the
    // same age on every broker and after every restart.
    let mut hasher = std::hash::DefaultHasher::new();
    (topic, index).hash(&mut hasher);
    keel_core::log::LogConfig {
        jitter_salt: hasher.finish(),
        ..config.to_log_config()
    }
}

/// A topic's settings, as its partition `w` enforces them.
fn apply_topic_config(replica: &mut PartitionReplica<Dir>, w: &Wanted) {
    let config = &w.config;
    replica.set_rules(produce_rules(config), log_config(config, &w.topic, w.index));
    replica.set_min_insync_replicas(config.min_insync_replicas().max(1) as usize);
}

/// A partition this broker should hold, as the metadata states it.
struct Wanted {
    topic: String,
    index: i32,
    topic_id: TopicId,
    config: keel_core::controller::TopicConfig,
    partition: Partition,
}

/// Kafka's internal topics (Metadata's `is_internal`): the groups' offsets and the
/// transactions' state.
pub fn is_internal_topic(name: &str) -> bool {
    name == OFFSETS_TOPIC || name == keel_core::txn::TRANSACTION_STATE_TOPIC
}

impl Broker {
    /// Opens the data directory and the metadata quorum, registers with the controller, waits
    /// to be unfenced, and opens (recovering) every partition this broker holds a replica of
    /// in the role the metadata gives it.
    pub async fn open(
        settings: Settings,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Arc<Broker>, StartError> {
        let data_dir = settings.data_dir.clone();
        let disk = settings.disk.clone();
        let mut root = disk
            .open(&data_dir)
            .map_err(|e| StartError::DataDir(data_dir.clone(), e))?;
        let cluster_id = read_or_create_cluster_id(&mut root, &settings.cluster)?;
        let (hw_checkpoint, report) = hw_checkpoint::HwCheckpoint::open(root)
            .map_err(|e| StartError::DataDir(data_dir.clone(), std::io::Error::other(e)))?;
        if report.slots_corrupt > 0 {
            tracing::warn!(
                "{} damaged high watermark checkpoint slot(s): the other one was read",
                report.slots_corrupt
            );
        }
        let hw_checkpoint = Arc::new(hw_checkpoint);
        let meta_dir = data_dir.join(METADATA_DIR);
        let storage = disk
            .open(&meta_dir)
            .map_err(|e| StartError::DataDir(meta_dir.clone(), e))?;
        let (cluster, incoming) =
            Cluster::start(settings.node_id, settings.cluster.clone(), storage).await?;
        let sync_latency = match &settings.disk {
            Disk::Virtual(d) => d.sync_latency(),
            Disk::Real => Duration::ZERO,
        };
        let settings_group = settings.group.clone();
        let settings_txn = settings.transactions.clone();
        let broker = Arc::new_cyclic(|this| Broker {
            this: this.clone(),
            settings,
            metrics: metrics.clone(),
            cluster_id,
            cluster: cluster.clone(),
            broker_epoch: AtomicI64::new(-1),
            registered: AtomicBool::new(false),
            producer_ids: Mutex::new((None, 0)),
            partitions: RwLock::new(BTreeMap::new()),
            reconciling: Mutex::new(()),
            unopenable: Mutex::new(std::collections::BTreeSet::new()),
            reconcile_failed: AtomicBool::new(false),
            reconcile_retry_pending: AtomicBool::new(false),
            shutting_down: AtomicBool::new(false),
            quota_rates: quota_handler::QuotaRates::default(),
            sync: SyncWorker::start(sync_latency, hw_checkpoint.clone()),
            hw_checkpoint,
            groups: groups::Coordinators::new(settings_group),
            txns: txn::TxnCoordinators::new(settings_txn),
            sessions: Arc::new(replication::LeaderSessions::new(u64::from_le_bytes(
                random_id()[..8].try_into().expect("8 bytes"),
            ))),
            fetchers: Mutex::new(BTreeMap::new()),
            deadlines: Arc::new(replication::Deadlines::default()),
            clock: Clock::new(),
            #[cfg(not(madsim))]
            runtime: tokio::runtime::Handle::current(),
        });
        if let Some(incoming) = incoming {
            tokio::spawn(replication::dispatch_peers(
                Arc::downgrade(&broker),
                cluster.clone(),
                incoming,
            ));
        }
        broker.register().await;
        // Replicas open (and recover) while the broker is still fenced: one that recovery
        // found damaged keeps the broker fenced, so that it leads nothing, until it has
        // fetched back from its leader what it may lack. Heartbeats start after that.
        broker.reconcile_partitions();
        broker.remove_orphan_directories();
        tokio::spawn(watch_metadata(Arc::downgrade(&broker)));
        tokio::spawn(heartbeats(Arc::downgrade(&broker)));
        tokio::spawn(replication::run_deadlines(
            Arc::downgrade(&broker),
            broker.deadlines.clone(),
        ));
        broker.wait_unfenced().await;
        let weak = Arc::downgrade(&broker);
        metrics.set_partition_source(Box::new(move || {
            let Some(broker) = weak.upgrade() else {
                return Vec::new();
            };
            broker
                .all_partitions()
                .iter()
                .map(|p| {
                    p.with(|r| crate::metrics::PartitionStats {
                        topic: p.topic.clone(),
                        partition: p.index,
                        log_start_offset: r.log().log_start().0,
                        log_end_offset: r.log().end().0,
                        high_watermark: r.high_watermark().0,
                    })
                })
                .collect()
        }));
        let weak = Arc::downgrade(&broker);
        metrics.set_cluster_source(Box::new(move || {
            weak.upgrade()
                .map_or_else(Default::default, |broker| broker.cluster_stats())
        }));
        Ok(broker)
    }

    /// What the metrics endpoint reports of the cluster: partitions led here and how many of
    /// them are under-replicated, partitions without a live leader (this broker's view of the
    /// metadata), and the committed offsets of the groups coordinated here, with their lag
    /// against this broker's replica of the partition where it holds one.
    fn cluster_stats(&self) -> crate::metrics::ClusterStats {
        let me = self.me();
        let (leader_partitions, under_replicated_partitions, offline_partitions) = self
            .with_metadata(|m| {
                let (mut led, mut under, mut offline) = (0, 0, 0);
                for p in m.topics().flat_map(|t| &t.partitions) {
                    if m.broker(p.leader).is_none_or(|b| b.fenced) {
                        offline += 1;
                    } else if p.leader == me {
                        led += 1;
                        if p.isr.len() < p.replicas.len() {
                            under += 1;
                        }
                    }
                }
                (led, under, offline)
            });
        let mut group_offsets = Vec::new();
        self.each_coordinator(|c| {
            for g in c.groups() {
                for (tp, committed) in g.offsets() {
                    group_offsets.push(crate::metrics::GroupOffsetStats {
                        group: g.group_id().to_string(),
                        topic: tp.topic.clone(),
                        partition: tp.partition,
                        committed_offset: committed.offset,
                        lag: None,
                    });
                }
            }
        });
        // Outside the coordinators' lock: partitions are locked after it, never inside.
        for g in &mut group_offsets {
            g.lag = self
                .replica(&g.topic, g.partition)
                .map(|p| (p.high_watermark().0 - g.committed_offset).max(0));
        }
        crate::metrics::ClusterStats {
            leader_partitions,
            under_replicated_partitions,
            offline_partitions,
            group_offsets,
        }
    }

    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn node_id(&self) -> i32 {
        self.settings.node_id
    }

    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// The controller's id, -1 if none is known.
    pub fn controller_id(&self) -> i32 {
        self.cluster.controller().map_or(-1, |c| c.0)
    }

    fn me(&self) -> BrokerId {
        BrokerId(self.settings.node_id)
    }

    /// Starts `task` on the broker's runtime, from any thread.
    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        #[cfg(not(madsim))]
        self.runtime.spawn(task);
        #[cfg(madsim)]
        tokio::spawn(task);
    }

    pub fn broker_epoch(&self) -> i64 {
        self.broker_epoch.load(Ordering::SeqCst)
    }

    /// Runs `f` on the applied metadata.
    pub fn with_metadata<R>(&self, f: impl FnOnce(&MetadataState) -> R) -> R {
        f(&self.cluster.state())
    }

    /// Computes a command on the applied metadata, has the controller commit its records and
    /// waits until they applied here (partitions included). When the records no longer fit
    /// (the metadata moved on), catches up and computes again. `validate_only` stops after
    /// the computation.
    pub async fn command<R>(
        &self,
        validate_only: bool,
        f: impl Fn(&MetadataState) -> Result<(R, Vec<MetadataRecord>), ControllerError>,
    ) -> Result<R, ControllerError> {
        for _ in 0..COMMAND_ATTEMPTS {
            let (result, records) = f(&self.cluster.state())?;
            if validate_only || records.is_empty() {
                return Ok(result);
            }
            match self.cluster.propose(records).await? {
                Proposed::Committed(index) => {
                    self.cluster.wait_applied(index).await;
                    self.reconcile_partitions();
                    return Ok(result);
                }
                Proposed::Rejected(index, why) => {
                    tracing::debug!("a command was computed on stale metadata ({why}); again");
                    self.cluster.wait_applied(index).await;
                }
            }
        }
        Err(ControllerError::UnknownServerError(
            "the metadata kept changing under the command; retry".into(),
        ))
    }

    /// Registers this broker (fenced, with a new incarnation and epoch) and waits until the
    /// registration applied here. Retries until it succeeds: a broker is no use unregistered.
    async fn register(&self) {
        let registration = BrokerRegistration {
            broker_id: self.me(),
            incarnation_id: random_id(),
            endpoints: if self.settings.advertised_listeners.is_empty() {
                vec![Endpoint {
                    name: "PLAINTEXT".into(),
                    host: self.settings.advertised_host.clone(),
                    port: self.settings.advertised_port as i32,
                    security_protocol: 0,
                }]
            } else {
                self.settings.advertised_listeners.clone()
            },
            rack: None,
        };
        let unclean = self.settings.cluster.unclean;
        loop {
            match self
                .command(false, |m| m.register_broker(&registration, unclean))
                .await
            {
                Ok(epoch) => {
                    tracing::info!("registered with broker epoch {epoch}");
                    self.broker_epoch.store(epoch, Ordering::SeqCst);
                    self.registered.store(true, Ordering::SeqCst);
                    return;
                }
                Err(e) => {
                    tracing::warn!("registering with the controller: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// Heartbeats until the controller unfences this broker and that applied here; returns at
    /// once while a replica is damaged (the heartbeats go on asking to stay fenced).
    async fn wait_unfenced(&self) {
        let damaged = self.damaged_replicas();
        if !damaged.is_empty() {
            tracing::warn!(
                "staying fenced until these replicas have fetched back from their leaders what \
                 recovery found damaged: {}",
                damaged.join(", ")
            );
            return;
        }
        let mut applied = self.cluster.subscribe();
        loop {
            let fenced = self.with_metadata(|m| m.broker(self.me()).is_none_or(|b| b.fenced));
            if !fenced {
                // The unfencing elected this broker where it can lead: take those roles now,
                // not when the metadata watcher gets to them, so that a broker reported ready
                // answers for its partitions (a restarted single broker answered
                // NOT_LEADER_OR_FOLLOWER to its first fetch, now and then).
                self.reconcile_partitions();
                return;
            }
            self.heartbeat_once().await;
            let _ = tokio::time::timeout(Duration::from_millis(200), applied.changed()).await;
        }
    }

    async fn heartbeat_once(&self) {
        let heartbeat = Heartbeat {
            broker_id: self.me(),
            broker_epoch: self.broker_epoch(),
            metadata_offset: self.cluster.applied_index(),
            want_fence: !self.damaged_replicas().is_empty(),
            want_shut_down: self.shutting_down.load(Ordering::SeqCst),
        };
        if let Err(e) = self.cluster.heartbeat(heartbeat).await {
            tracing::warn!("heartbeat: {e}");
        }
    }

    /// Controlled shutdown (KIP-631's `wantShutDown`; Kafka's `BrokerLifecycleManager
    /// .beginControlledShutdown`): from now on this broker's heartbeats ask the controller to
    /// move every leadership off it and take it out of every ISR it shares (the controller
    /// fences it to do so, `quorum::sessions`). Returns once the controller says it may stop
    /// and this broker's own replicas have stepped down (so their waiting produce requests
    /// were answered NOT_LEADER_OR_FOLLOWER, which clients retry on the new leaders), or
    /// after `wait_max`, whichever comes first; `true` in the first case. A broker without
    /// a cluster, or whose applied metadata shows no other live broker (the whole cluster is
    /// stopping), has nobody to hand its partitions to and returns `true` at once; so does a
    /// broker that was unregistered (decommissioned), which holds nothing.
    pub async fn controlled_shutdown(&self, wait_max: Duration) -> bool {
        if !self.settings.cluster.is_multi_node() {
            return true;
        }
        self.shutting_down.store(true, Ordering::SeqCst);
        let started = tokio::time::Instant::now();
        let deadline = started + wait_max;
        let mut applied = self.cluster.subscribe();
        loop {
            let me = self.me();
            if self.registered.load(Ordering::SeqCst)
                && self.with_metadata(|m| m.broker(me).is_none())
            {
                // Unregistered (decommissioned): it holds and leads nothing; nothing to hand over.
                tracing::info!("controlled shutdown: this broker is unregistered; stopping");
                return true;
            }
            if self.with_metadata(|m| m.live_brokers().iter().all(|&b| b == me)) {
                // The whole cluster is stopping (or the rest is down): nobody could take over,
                // and the last brokers' fencing may never commit once the quorum is gone.
                tracing::info!("controlled shutdown: no other live broker to take over; stopping");
                return true;
            }
            let heartbeat = Heartbeat {
                broker_id: me,
                broker_epoch: self.broker_epoch(),
                metadata_offset: self.cluster.applied_index(),
                want_fence: !self.damaged_replicas().is_empty(),
                want_shut_down: true,
            };
            let allowed = match self.cluster.heartbeat(heartbeat).await {
                Ok(reply) => reply.should_shut_down,
                Err(e) => {
                    tracing::warn!("controlled shutdown: heartbeat: {e}");
                    false
                }
            };
            if allowed && self.leads_nothing() {
                tracing::info!(
                    "controlled shutdown: this broker leads nothing now (after {:?})",
                    started.elapsed()
                );
                return true;
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                tracing::warn!(
                    "controlled shutdown: the controller did not move every leadership off this \
                     broker within {wait_max:?}; stopping anyway"
                );
                return false;
            }
            let pause = Duration::from_millis(100).min(deadline - now);
            let _ = tokio::time::timeout(pause, applied.changed()).await;
        }
    }

    /// This broker is fenced and leads nothing in its applied metadata, and its replicas took
    /// those roles.
    fn leads_nothing(&self) -> bool {
        let me = self.me();
        let state = self.cluster.state();
        if !state.broker(me).is_some_and(|b| b.fenced) || state.led_partitions(me) != 0 {
            return false;
        }
        self.reconcile_partitions();
        self.all_partitions()
            .iter()
            .all(|p| p.with(|r| !r.is_leader()))
    }

    /// Replicas that recovery found damaged (see `PartitionHandle::is_damaged`), as
    /// `topic-partition`. While there are any, the broker asks to stay fenced: a damaged
    /// replica may lack committed data others hold, so it must not lead. Replicas with no other
    /// replica are left out: nothing can repair them, and they must not keep the broker's other
    /// partitions from it.
    pub fn damaged_replicas(&self) -> Vec<String> {
        let me = self.me();
        let state = self.cluster.state();
        let shared = |topic: &str, index: i32| {
            state
                .partition(topic, index)
                .is_some_and(|m| m.replicas.iter().any(|&b| b != me))
        };
        let mut damaged: Vec<String> = self
            .all_partitions()
            .iter()
            .filter(|p| shared(&p.topic, p.index) && p.is_damaged())
            .map(|p| format!("{}-{}", p.topic, p.index))
            .collect();
        damaged.extend(
            self.unopenable
                .lock()
                .expect("unopenable lock poisoned")
                .iter()
                .filter(|(topic, index)| shared(topic, *index))
                .map(|(topic, index)| format!("{topic}-{index} (cannot open)")),
        );
        damaged
    }

    /// A fresh topic id.
    pub fn new_topic_id(&self) -> TopicId {
        TopicId(random_id())
    }

    /// The next producer id, from this broker's block (allocating a new block through the
    /// controller when it runs out).
    pub async fn allocate_producer_id(&self) -> Result<ProducerId, ControllerError> {
        {
            let mut ids = self.producer_ids.lock().expect("producer id lock poisoned");
            if let (Some(block), next) = &mut *ids {
                if *next <= block.last().0 {
                    let id = *next;
                    *next += 1;
                    return Ok(ProducerId(id));
                }
            }
        }
        let me = self.me();
        let epoch = self.broker_epoch();
        let block = self
            .command(false, |m| m.allocate_producer_ids(me, epoch))
            .await?;
        let mut ids = self.producer_ids.lock().expect("producer id lock poisoned");
        *ids = (Some(block), block.first.0 + 1);
        Ok(block.first)
    }

    /// The partition handle, if this broker holds a replica of it (in any role).
    pub fn replica(&self, topic: &str, index: i32) -> Option<Arc<PartitionHandle>> {
        self.partitions
            .read()
            .expect("partition map poisoned")
            .get(&(topic.to_string(), index))
            .cloned()
    }

    /// The partition handle if this broker leads it; else the error code for a client:
    /// NOT_LEADER_OR_FOLLOWER if the partition exists, UNKNOWN_TOPIC_OR_PARTITION if not.
    pub fn leader(&self, topic: &str, index: i32) -> Result<Arc<PartitionHandle>, ErrorCode> {
        if let Some(p) = self.replica(topic, index) {
            if p.with(|r| r.is_leader()) {
                return Ok(p);
            }
        }
        let exists = self.with_metadata(|m| m.partition(topic, index).is_some());
        Err(if exists {
            code::NOT_LEADER_OR_FOLLOWER
        } else {
            code::UNKNOWN_TOPIC_OR_PARTITION
        })
    }

    /// Every partition handle, in (topic, partition) order.
    pub fn all_partitions(&self) -> Vec<Arc<PartitionHandle>> {
        self.partitions
            .read()
            .expect("partition map poisoned")
            .values()
            .cloned()
            .collect()
    }

    /// Brings the partitions in line with the applied metadata: opens replicas this broker
    /// is assigned, gives each the role the metadata states (persisting a new leader epoch
    /// first), starts follower fetches, closes and deletes replicas whose topic is gone, and
    /// updates topic configs. Does nothing before this broker's registration applied.
    pub fn reconcile_partitions(&self) {
        let Some(this) = self.this.upgrade() else {
            return;
        };
        if !self.registered.load(Ordering::SeqCst) {
            return;
        }
        let _one_at_a_time = self.reconciling.lock().expect("reconcile lock poisoned");
        let me = self.me();
        let wanted: Vec<Wanted> = self.with_metadata(|state| {
            state
                .topics()
                .flat_map(|t| {
                    t.partitions
                        .iter()
                        .enumerate()
                        .filter(move |(_, p)| p.replicas.contains(&me))
                        .map(move |(i, p)| Wanted {
                            topic: t.name.clone(),
                            index: i as i32,
                            topic_id: t.id,
                            config: t.config.clone(),
                            partition: p.clone(),
                        })
                })
                .collect()
        });
        let wanted_keys: std::collections::BTreeSet<(String, i32)> =
            wanted.iter().map(|w| (w.topic.clone(), w.index)).collect();
        // A replica that failed to open and is no longer assigned here (reassigned away,
        // deleted) keeps the broker fenced no more; its directory goes, as an open replica's
        // would (the change that removed it is committed: this is the applied metadata).
        let unassigned: Vec<(String, i32)> = {
            let mut unopenable = self.unopenable.lock().expect("unopenable lock poisoned");
            let gone: Vec<(String, i32)> = unopenable
                .iter()
                .filter(|k| !wanted_keys.contains(*k))
                .cloned()
                .collect();
            for k in &gone {
                unopenable.remove(k);
            }
            gone
        };
        let mut removed = Vec::new();
        for (topic, index) in unassigned {
            tracing::info!(topic = %topic, partition = index, "removing the unopenable replica no longer assigned here");
            removed.push(self.partition_dir(&topic, index));
        }
        {
            let mut partitions = self.partitions.write().expect("partition map poisoned");
            let gone: Vec<(String, i32)> = partitions
                .keys()
                .filter(|k| !wanted_keys.contains(*k))
                .cloned()
                .collect();
            for key in gone {
                if let Some(p) = partitions.remove(&key) {
                    close(&p);
                    removed.push(p.dir.clone());
                    if p.topic == OFFSETS_TOPIC {
                        self.offsets_partition_changed(&p, true);
                    }
                    if p.topic == TRANSACTION_STATE_TOPIC {
                        self.txn_state_partition_changed(&p, true);
                    }
                }
            }
        }
        self.remove_replica_dirs(&removed);
        let now = self.clock.now_ms();
        // Recreated topics: the old replica goes first (runtime work, here).
        let mut jobs = Vec::with_capacity(wanted.len());
        for w in wanted {
            let existing = match self.replica(&w.topic, w.index) {
                Some(p) if p.topic_id == w.topic_id => Some(p),
                Some(old) => {
                    // Same name, new topic: the old one was deleted and recreated. Its
                    // checkpoint entry names the old topic id, so the new replica never reads
                    // it (and its first write replaces it): the directory goes at once.
                    close(&old);
                    if let Err(e) = self.settings.disk.remove_dir_all(&old.dir) {
                        tracing::warn!("removing {}: {e}", old.dir.display());
                    }
                    if old.topic == OFFSETS_TOPIC {
                        self.offsets_partition_changed(&old, true);
                    }
                    if old.topic == TRANSACTION_STATE_TOPIC {
                        self.txn_state_partition_changed(&old, true);
                    }
                    None
                }
                None => None,
            };
            jobs.push((w, existing));
        }
        // Opening replicas and taking roles is disk work (a new partition's files, a new
        // leader epoch's file, each synced): on a real disk, many partitions at once.
        let threads = match self.settings.disk {
            Disk::Real => OPEN_THREADS,
            Disk::Virtual(_) => 1,
        };
        let outcomes = off_the_runtime(|| {
            for_each_parallel(&jobs, threads, |(w, existing)| {
                self.take_role(w, existing.clone(), now)
            })
        });
        for ((w, _), outcome) in jobs.iter().zip(outcomes) {
            let Some(handle) = outcome else {
                continue;
            };
            let role = handle.with(|r| r.role());
            tracing::info!(topic = %w.topic, partition = w.index, epoch = w.partition.leader_epoch.0, "now {role:?}");
            handle.wake_waiters();
            fetcher::ensure_fetching(&this, &handle);
            // A new role may expose a high watermark, want it persisted, or bring deadlines.
            handle.drain_effects();
            if w.topic == OFFSETS_TOPIC {
                self.offsets_partition_changed(&handle, false);
            }
            if w.topic == TRANSACTION_STATE_TOPIC {
                self.txn_state_partition_changed(&handle, false);
            }
        }
        if self.reconcile_failed.swap(false, Ordering::SeqCst)
            && !self.reconcile_retry_pending.swap(true, Ordering::SeqCst)
        {
            let broker = self.this.clone();
            self.spawn(async move {
                tokio::time::sleep(RECONCILE_RETRY).await;
                if let Some(b) = broker.upgrade() {
                    b.reconcile_retry_pending.store(false, Ordering::SeqCst);
                    b.reconcile_partitions();
                }
            });
        }
    }

    /// Opens `w`'s replica unless it is open (`existing`), and gives it the role the metadata
    /// states: the handle if the role changed. Disk work only (no runtime work), so that
    /// reconciliation can run it for many partitions at once.
    fn take_role(
        &self,
        w: &Wanted,
        existing: Option<Arc<PartitionHandle>>,
        now: i64,
    ) -> Option<Arc<PartitionHandle>> {
        let handle = match existing {
            Some(p) => p,
            None => match self.open_partition(w) {
                Ok(p) => {
                    self.partitions
                        .write()
                        .expect("partition map poisoned")
                        .insert((w.topic.clone(), w.index), p.clone());
                    p
                }
                Err(e) => {
                    tracing::error!(topic = %w.topic, partition = w.index, "cannot open the replica: {e}");
                    self.reconcile_failed.store(true, Ordering::SeqCst);
                    self.unopenable
                        .lock()
                        .expect("unopenable lock poisoned")
                        .insert((w.topic.clone(), w.index));
                    let dir = self.partition_dir(&w.topic, w.index);
                    if let Ok(mut dir) = self.settings.disk.open(&dir) {
                        if let Err(e) = keel_core::partition::damage::write_mark(&mut dir) {
                            tracing::warn!(topic = %w.topic, partition = w.index, "writing the damage mark: {e}");
                        }
                    }
                    return None;
                }
            },
        };
        let failed_before = self
            .unopenable
            .lock()
            .expect("unopenable lock poisoned")
            .remove(&(w.topic.clone(), w.index));
        if failed_before {
            // It failed to open before, on damage this open may not have seen again: it
            // counts as damaged until it has fetched back from its leader.
            handle.mark_damaged();
        }
        let changed = handle.with_snapshots(|r, snapshots| {
            apply_topic_config(r, w);
            r.on_partition_change(now, snapshots, &w.partition)
        });
        match changed {
            Ok(false) => None,
            Ok(true) => Some(handle),
            // Elected while damaged (it opened only after the broker was unfenced): the
            // partition waits.
            Err(RoleError::Damaged) => {
                tracing::error!(topic = %w.topic, partition = w.index, "elected leader while damaged: not taking the role");
                None
            }
            Err(e) => {
                tracing::warn!(topic = %w.topic, partition = w.index, "cannot take the role {:?}: {e}", w.partition);
                self.reconcile_failed.store(true, Ordering::SeqCst);
                None
            }
        }
    }

    /// Removes directories of partitions that no longer exist or are no longer assigned here
    /// (topics deleted, replicas reassigned away, while the broker was down). At startup only: while running, deletion removes its own directories.
    /// Replicas assigned here that failed to open are not orphans: their data stays.
    fn remove_orphan_directories(&self) {
        let partitions = self.partitions.read().expect("partition map poisoned");
        let unopenable: Vec<PathBuf> = self
            .unopenable
            .lock()
            .expect("unopenable lock poisoned")
            .iter()
            .map(|(topic, index)| self.partition_dir(topic, *index))
            .collect();
        let disk = &self.settings.disk;
        let mut orphans = Vec::new();
        for dir in disk.subdirs(&self.settings.data_dir) {
            if dir.ends_with(METADATA_DIR)
                || partitions.values().any(|p| p.dir == dir)
                || unopenable.contains(&dir)
            {
                continue;
            }
            tracing::info!(
                "removing the directory of a deleted partition: {}",
                dir.display()
            );
            orphans.push(dir);
        }
        self.remove_replica_dirs(&orphans);
    }

    /// Removes replicas' directories, after forgetting their high watermark checkpoint
    /// entries durably, all in one write (a replica created again in one of them, reassigned
    /// away and back, must not read its predecessor's high watermark). If the checkpoint cannot
    /// be written the directories stay (the next startup's sweep tries again).
    fn remove_replica_dirs(&self, dirs: &[PathBuf]) {
        if dirs.is_empty() {
            return;
        }
        let keys: Vec<(String, i32)> = dirs
            .iter()
            .filter_map(|dir| {
                let name = dir.file_name()?.to_str()?;
                let (topic, index) = name.rsplit_once('-')?;
                Some((topic.to_owned(), index.parse::<i32>().ok()?))
            })
            .collect();
        if let Err(e) = self.hw_checkpoint.forget_durably(&keys) {
            tracing::warn!(
                "keeping {} replica directories: forgetting their high watermarks: {e}",
                dirs.len()
            );
            return;
        }
        for dir in dirs {
            if let Err(e) = self.settings.disk.remove_dir_all(dir) {
                tracing::warn!("removing {}: {e}", dir.display());
            }
        }
    }

    /// The directory of a partition's replica: `{data dir}/{topic}-{partition}`.
    fn partition_dir(&self, topic: &str, index: i32) -> PathBuf {
        self.settings.data_dir.join(format!("{topic}-{index}"))
    }

    fn open_partition(&self, w: &Wanted) -> Result<Arc<PartitionHandle>, OpenError> {
        let name = format!("{}-{}", w.topic, w.index);
        let dir = self.partition_dir(&w.topic, w.index);
        let open = |dir: &PathBuf| {
            self.settings
                .disk
                .open(dir)
                .map_err(|source| OpenError::Dir {
                    dir: dir.clone(),
                    source,
                })
        };
        let mut snapshots = open(&dir)?;
        let mut stray = false;
        match check_topic_id(&mut snapshots, w.topic_id)? {
            TopicIdFile::Ours => {}
            TopicIdFile::Damaged(found) => {
                tracing::warn!(partition = %name, "{PARTITION_METADATA} was damaged ({found:?}): written again");
            }
            TopicIdFile::Other(found) => {
                // A stray replica (Kafka's KIP-858): left by a deleted topic of the same name
                // (deleted and created again while this broker was down), or its id rotted
                // into another. Either way its data cannot be told to be this topic's: it
                // goes, and the replica starts empty, fetching everything from its leader.
                tracing::warn!(partition = %name, "{PARTITION_METADATA} names another topic ({found:?}): removing the stray replica");
                drop(snapshots);
                self.hw_checkpoint
                    .forget_durably(&[(w.topic.clone(), w.index)])
                    .map_err(OpenError::TopicId)?;
                self.settings
                    .disk
                    .remove_dir_all(&dir)
                    .map_err(|source| OpenError::Dir {
                        dir: dir.clone(),
                        source,
                    })?;
                snapshots = open(&dir)?;
                check_topic_id(&mut snapshots, w.topic_id)?;
                stray = true;
            }
        }
        let storage = open(&dir)?;
        let syncer = storage.clone();
        let replica_config = ReplicaConfig {
            lag_time_max_ms: self.settings.replica_lag_time_max_ms,
            fetch_bytes_max: self.settings.replica_fetch_bytes_max,
            fetch_backoff_ms: self.settings.replica_fetch_backoff_ms,
            ..ReplicaConfig::new(self.me())
        };
        let checkpointed = self
            .hw_checkpoint
            .high_watermark(&w.topic, w.index, w.topic_id);
        let mut replica = PartitionReplica::recover_with_checkpoint(
            storage,
            &mut snapshots,
            log_config(&w.config, &w.topic, w.index),
            produce_rules(&w.config),
            replica_config,
            wall_ms(),
            checkpointed,
        )?;
        apply_topic_config(&mut replica, w);
        let me = self.me();
        if stray && w.partition.replicas.iter().any(|&b| b != me) {
            // If the id rotted, this broker may be in the ISR with data it no longer has: it
            // leads nothing until it has fetched back what its leader had committed.
            if let Err(e) = replica.mark_damaged(&mut snapshots) {
                tracing::warn!(partition = %name, "writing the damage mark: {e}");
            }
        }
        let report = replica.log().recovery_report();
        if let Some((file, position, why)) = &report.corruption {
            tracing::warn!(partition = %name, "recovery cut {} bytes at {file}:{position}: {why}", report.bytes_truncated);
        }
        let hw = replica.high_watermark();
        let state = replica.state_report();
        if replica.is_damaged() {
            tracing::warn!(partition = %name, ?state, "damaged on disk: it leads nothing until it has fetched back from its leader");
        }
        if let Some(e) = &state.damage_mark_error {
            tracing::warn!(partition = %name, "writing the damage mark: {e}");
        }
        Ok(Arc::new_cyclic(|this| PartitionHandle {
            this: this.clone(),
            broker: self.this.clone(),
            clock: self.clock,
            topic: w.topic.clone(),
            index: w.index,
            topic_id: w.topic_id,
            dir,
            replica: Mutex::new(replica),
            snapshots: Mutex::new(snapshots),
            syncer,
            high_watermark: watch::Sender::new(hw),
            sync_state: [
                AtomicU8::new(sync_state::IDLE),
                AtomicU8::new(sync_state::IDLE),
            ],
            deleted: AtomicBool::new(false),
            sessions: self.sessions.clone(),
            deadlines: self.deadlines.clone(),
            timer_at: AtomicI64::new(i64::MAX),
            fetcher: Mutex::new(None),
            sync_wait: AtomicI64::new(i64::MIN),
        }))
    }

    /// Applies retention to every partition (the caller's timer).
    pub fn apply_retention(&self) {
        let now = wall_ms();
        for p in self.all_partitions() {
            match p.with(|r| r.apply_retention(now)) {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(topic = %p.topic, partition = p.index, "retention removed {n} segments")
                }
                Err(e) => {
                    tracing::error!(topic = %p.topic, partition = p.index, "retention failed: {e}")
                }
            }
        }
    }

    /// Syncs and checkpoints every partition (clean shutdown and the checkpoint timer).
    pub fn checkpoint_all(&self) {
        for p in self.all_partitions() {
            if let Err(e) = p.checkpoint() {
                tracing::error!(topic = %p.topic, partition = p.index, "checkpoint failed: {e}");
            }
        }
    }
}

/// How many threads open replicas and write their new roles at once (real disks only):
/// each new partition syncs a few small files, and the file system commits syncs from
/// several threads together.
const OPEN_THREADS: usize = 8;

/// Runs `f`, a long stretch of disk work (reconciling thousands of partitions), without
/// holding a runtime worker thread from the other tasks: on a multi-threaded runtime, tokio
/// moves them to other workers meanwhile (`block_in_place`), so the metadata quorum's ticks
/// and the heartbeats go on (at 10,000 partitions a creation held a worker for seconds, the
/// controller lost its raft leadership and its broker was fenced). Elsewhere (a
/// current-thread runtime in tests, the simulator) it simply runs `f`.
fn off_the_runtime<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(not(madsim))]
    {
        let multi = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if multi {
            return tokio::task::block_in_place(f);
        }
    }
    f()
}

/// `f` over `items` on up to `threads` threads (in order, on this thread, for one, and always
/// under the simulator, which runs no threads of its own); the results in `items`' order.
fn for_each_parallel<T: Sync, R: Send>(
    items: &[T],
    threads: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let threads = if cfg!(madsim) {
        1
    } else {
        threads.min(items.len() / 4).max(1)
    };
    if threads == 1 {
        return items.iter().map(f).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Mutex<Vec<Option<R>>> = Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else {
                    return;
                };
                let r = f(item);
                results.lock().expect("results poisoned")[i] = Some(r);
            });
        }
    });
    results
        .into_inner()
        .expect("results poisoned")
        .into_iter()
        .map(|r| r.expect("every item ran"))
        .collect()
}

/// Marks a replica deleted (its loops and the sync threads stop touching it, and the
/// checkpoint writer writes its entry no more); its directory goes next.
fn close(p: &PartitionHandle) {
    p.deleted.store(true, Ordering::SeqCst);
    if let Some(f) = p.fetcher.lock().expect("fetcher slot poisoned").take() {
        f.remove(p);
    }
    p.wake_waiters();
}

/// Reconciles the partitions whenever the applied metadata changes.
async fn watch_metadata(broker: std::sync::Weak<Broker>) {
    let Some(mut applied) = broker.upgrade().map(|b| b.cluster.subscribe()) else {
        return;
    };
    while applied.changed().await.is_ok() {
        let Some(broker) = broker.upgrade() else {
            return;
        };
        broker.reconcile_partitions();
    }
}

/// Heartbeats to the controller every `broker.heartbeat.interval.ms`.
async fn heartbeats(broker: std::sync::Weak<Broker>) {
    loop {
        let Some(b) = broker.upgrade() else {
            return;
        };
        let interval = Duration::from_millis(b.settings.cluster.heartbeat_interval_ms.max(10));
        b.heartbeat_once().await;
        drop(b);
        tokio::time::sleep(interval).await;
    }
}

/// What a partition directory's `partition.metadata` says about the topic it belongs to.
enum TopicIdFile {
    /// This topic (or the file was missing, and is written now).
    Ours,
    /// Another topic, in Kafka's format: a stray replica.
    Other(String),
    /// Not Kafka's format (the disk damaged it): written again with this topic's id.
    Damaged(String),
}

/// A partition directory remembers its topic's id, so that a directory left by a deleted topic
/// is never mistaken for a new topic of the same name.
fn check_topic_id(storage: &mut Dir, topic_id: TopicId) -> Result<TopicIdFile, OpenError> {
    let expected = format!("version: 0\ntopic_id: {topic_id}\n");
    let write = |storage: &mut Dir| {
        keel_core::storage::write_atomic(storage, PARTITION_METADATA, expected.as_bytes())
            .map_err(OpenError::TopicId)
    };
    match keel_core::storage::read_all(storage, PARTITION_METADATA) {
        Ok(found) if found[..] == *expected.as_bytes() => Ok(TopicIdFile::Ours),
        Ok(found) => {
            let text = String::from_utf8_lossy(&found).into_owned();
            if is_topic_id_file(&found) {
                Ok(TopicIdFile::Other(text))
            } else {
                write(storage)?;
                Ok(TopicIdFile::Damaged(text))
            }
        }
        Err(StorageError::NotFound(_)) => {
            write(storage)?;
            Ok(TopicIdFile::Ours)
        }
        Err(e) => Err(OpenError::TopicId(e)),
    }
}

/// Whether `bytes` is a `partition.metadata` file in Kafka's format: `version: 0`, then a
/// topic id (22 characters of URL-safe base64, the last holding only 2 bits of the id).
fn is_topic_id_file(bytes: &[u8]) -> bool {
    let Some(id) = bytes
        .strip_prefix(b"version: 0\ntopic_id: ")
        .and_then(|rest| rest.strip_suffix(b"\n"))
    else {
        return false;
    };
    let base64 = |c: &u8| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_';
    id.len() == 22 && id[..21].iter().all(base64) && b"AQgw".contains(&id[21])
}

/// The cluster id, made (and stored durably) on first start: random for a single broker; for
/// a cluster, derived from the voters, so that every broker reports the same id.
fn read_or_create_cluster_id(
    storage: &mut Dir,
    cluster: &ClusterSettings,
) -> Result<String, StartError> {
    if let Ok(id) = keel_core::storage::read_all(storage, CLUSTER_ID_FILE) {
        let id = String::from_utf8_lossy(&id).trim().to_string();
        if !id.is_empty() {
            return Ok(id);
        }
    }
    let id = if cluster.is_multi_node() {
        let voters: Vec<String> = cluster
            .voters
            .iter()
            .map(|(id, address)| format!("{id}@{address}"))
            .collect();
        let text = voters.join(",");
        let mut id = [0u8; 16];
        for (i, chunk) in id.chunks_mut(4).enumerate() {
            let crc = crc32c::crc32c_append(i as u32, text.as_bytes());
            chunk.copy_from_slice(&crc.to_be_bytes());
        }
        id[0] |= 1;
        TopicId(id)
    } else {
        TopicId(random_id())
    }
    .to_string();
    keel_core::storage::write_atomic(storage, CLUSTER_ID_FILE, id.as_bytes())
        .map_err(StartError::Metadata)?;
    Ok(id)
}

#[cfg(all(test, not(madsim)))]
mod parallel_tests {
    use super::for_each_parallel;

    #[test]
    fn parallel_work_keeps_the_order_and_runs_everything_once() {
        let items: Vec<u64> = (0..1000).collect();
        let seen = std::sync::Mutex::new(std::collections::BTreeSet::new());
        let out = for_each_parallel(&items, 8, |&i| {
            assert!(seen.lock().unwrap().insert(i), "{i} ran twice");
            i * 2
        });
        assert_eq!(out, items.iter().map(|i| i * 2).collect::<Vec<_>>());
        assert_eq!(seen.into_inner().unwrap().len(), 1000);
        assert_eq!(for_each_parallel(&items[..3], 8, |&i| i), vec![0, 1, 2]);
    }
}

#[cfg(test)]
mod topic_id_file_tests {
    use super::{is_topic_id_file, TopicId};

    /// Kafka's `partition.metadata` with any topic id is recognised; damage to its syntax
    /// (a flipped bit in the keys, the newline or the id's padding bits) is not.
    #[test]
    fn only_kafkas_format_names_a_topic() {
        for id in [TopicId([7; 16]), TopicId([0xff; 16]), TopicId([1; 16])] {
            let file = format!("version: 0\ntopic_id: {id}\n");
            assert!(is_topic_id_file(file.as_bytes()), "{file:?}");
            let mut bytes = file.clone().into_bytes();
            for (i, bit) in [(12usize, 0x10u8), (file.len() - 1, 0x80), (11, 0x01)] {
                bytes[i] ^= bit;
                assert!(
                    !is_topic_id_file(&bytes),
                    "{:?}",
                    String::from_utf8_lossy(&bytes)
                );
                bytes[i] ^= bit;
            }
        }
        assert!(!is_topic_id_file(
            b"version: 0\ntopic_id: AAAAAAAAAAAAAAAAAAAAAB\n"
        ));
    }
}
