//! The broker: keel-core's controller and partition state machines wired to files, a sync
//! thread and the Kafka wire layer.
//!
//! What it owns:
//! - the metadata: core's [`MetadataState`], persisted in a [`MetadataStore`] under
//!   `{data dir}/__metadata/` (the next issue replicates the same records through raft);
//! - one [`PartitionHandle`] per partition this broker leads, each a core
//!   [`PartitionReplica`] over [`FileStorage`] in `{data dir}/{topic}-{partition}/`;
//! - the sync thread ([`SyncWorker`]): group commit. Appends mark a partition dirty; the thread
//!   fsyncs it outside the partition's lock (so appends go on meanwhile) and then moves the
//!   high watermark, which wakes acks=all produces and long-polling fetches.
//!
//! What always holds:
//! - a partition's lock is held only for in-memory work and small writes, never across an
//!   fsync or an `.await`;
//! - an acks=all produce is answered only once the high watermark covers it, so only after its
//!   data is on disk (keel's durable acks);
//! - metadata changes are durable (synced) before they take effect or are answered.

mod handler;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use keel_core::controller::{
    BrokerId, BrokerRegistration, ControllerError, Endpoint, MetadataRecord, MetadataState,
    MetadataStore, ProducerIdBlock, TopicDefaults, TopicId,
};
use keel_core::partition::{PartitionReplica, ProduceRules};
use keel_core::storage::StorageError;
use keel_core::{LeaderEpoch, Offset, ProducerId};
use tokio::sync::watch;

use crate::storage::FileStorage;

/// The directory, under the data directory, of the metadata store.
pub const METADATA_DIR: &str = "__metadata";
/// The file, in the metadata directory, holding the cluster id.
const CLUSTER_ID_FILE: &str = "cluster.id";

/// What the broker needs from its configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    pub node_id: i32,
    pub data_dir: PathBuf,
    /// Host and port clients are told to connect to.
    pub advertised_host: String,
    pub advertised_port: u16,
    /// `auto.create.topics.enable`.
    pub auto_create_topics: bool,
    /// `num.partitions` and `default.replication.factor`.
    pub topic_defaults: TopicDefaults,
    /// Topic-level settings every new topic inherits from the broker (`log.retention.ms` as
    /// `retention.ms`, ...); a topic's own settings win.
    pub topic_config_defaults: BTreeMap<String, String>,
}

/// The current time in milliseconds since the epoch (madsim intercepts this clock).
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

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
    #[error("metadata store: {0}")]
    Metadata(String),
    #[error("partition {0}: {1}")]
    Partition(String, String),
}

/// Metadata and what goes with it, behind one lock: commands are validated against the state
/// and committed (synced) before they are applied.
struct Meta {
    state: MetadataState,
    store: MetadataStore<FileStorage>,
    broker_epoch: i64,
    producer_ids: Option<ProducerIdBlock>,
    next_producer_id: i64,
}

/// One partition this broker leads.
pub struct PartitionHandle {
    pub topic: String,
    pub index: i32,
    pub topic_id: TopicId,
    dir: PathBuf,
    replica: Mutex<PartitionReplica<FileStorage>>,
    snapshots: Mutex<FileStorage>,
    /// A clone of the log's storage, for the sync thread.
    syncer: FileStorage,
    /// The high watermark, for waiters (acks=all produces, long-polling fetches).
    high_watermark: watch::Sender<Offset>,
    /// Whether the partition is queued for the sync thread.
    queued: AtomicBool,
    deleted: AtomicBool,
}

impl PartitionHandle {
    /// Runs `f` with the replica locked. Never hold it across an await or an fsync.
    pub fn with<R>(&self, f: impl FnOnce(&mut PartitionReplica<FileStorage>) -> R) -> R {
        let mut replica = self.replica.lock().expect("partition lock poisoned");
        f(&mut replica)
    }

    pub fn subscribe(&self) -> watch::Receiver<Offset> {
        self.high_watermark.subscribe()
    }

    pub fn high_watermark(&self) -> Offset {
        *self.high_watermark.borrow()
    }

    fn publish_high_watermark(&self, hw: Offset) {
        self.high_watermark.send_if_modified(|current| {
            let moved = hw > *current;
            if moved {
                *current = hw;
            }
            moved
        });
    }

    /// Makes everything appended so far durable and moves the high watermark: prepare under
    /// the lock, fsync outside it, complete under it.
    fn sync(&self) -> Result<(), String> {
        let Some(pending) = self.with(|r| r.log().prepare_sync()) else {
            return Ok(());
        };
        self.syncer
            .sync_file(&pending.file)
            .map_err(|e| e.to_string())?;
        let hw = self.with(|r| {
            r.log_mut().complete_sync(pending);
            r.update_high_watermark()
        });
        self.publish_high_watermark(hw);
        Ok(())
    }

    /// Syncs and writes the checkpoint and a producer snapshot (clean shutdown, timers).
    pub fn checkpoint(&self) -> Result<(), String> {
        let mut snapshots = self.snapshots.lock().expect("snapshot lock poisoned");
        let hw = self.with(|r| {
            r.checkpoint(&mut *snapshots).map_err(|e| e.to_string())?;
            Ok::<_, String>(r.high_watermark())
        })?;
        self.publish_high_watermark(hw);
        Ok(())
    }
}

/// The group-commit thread: fsyncs dirty partitions, one fsync per partition per round, however
/// many appends each received since the last round.
struct SyncWorker {
    tx: Mutex<mpsc::Sender<Arc<PartitionHandle>>>,
}

impl SyncWorker {
    fn start() -> SyncWorker {
        let (tx, rx) = mpsc::channel::<Arc<PartitionHandle>>();
        std::thread::Builder::new()
            .name("keel-sync".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut round = vec![first];
                    round.extend(rx.try_iter());
                    for p in round {
                        // Clear first: an append after this point queues the partition again.
                        p.queued.store(false, Ordering::SeqCst);
                        if p.deleted.load(Ordering::SeqCst) {
                            continue;
                        }
                        if let Err(e) = p.sync() {
                            tracing::error!(topic = %p.topic, partition = p.index, "sync failed: {e}");
                        }
                    }
                }
            })
            .expect("spawn the sync thread");
        SyncWorker { tx: Mutex::new(tx) }
    }

    fn queue(&self, p: &Arc<PartitionHandle>) {
        if !p.queued.swap(true, Ordering::SeqCst) {
            let _ = self
                .tx
                .lock()
                .expect("sync queue lock poisoned")
                .send(p.clone());
        }
    }
}

/// The broker. Shared by every connection as an `Arc`.
pub struct Broker {
    settings: Settings,
    metrics: Arc<crate::metrics::Metrics>,
    cluster_id: String,
    meta: Mutex<Meta>,
    partitions: RwLock<BTreeMap<(String, i32), Arc<PartitionHandle>>>,
    sync: SyncWorker,
}

fn produce_rules(config: &keel_core::controller::TopicConfig) -> ProduceRules {
    ProduceRules {
        max_message_bytes: config.max_message_bytes().max(0) as usize,
        log_append_time: config.message_timestamp_type()
            == keel_core::batch::TimestampType::LogAppendTime,
        compacted: config.cleanup_policy().compact,
    }
}

/// A topic's settings, as its partition enforces them.
fn apply_topic_config(
    replica: &mut PartitionReplica<FileStorage>,
    config: &keel_core::controller::TopicConfig,
) {
    replica.set_rules(produce_rules(config), config.to_log_config());
    replica.set_min_insync_replicas(config.min_insync_replicas().max(1) as usize);
}

impl Broker {
    /// Opens the data directory: metadata, then every partition this broker leads (each one
    /// recovered), and registers the broker.
    pub fn open(
        settings: Settings,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Result<Arc<Broker>, StartError> {
        let data_dir = settings.data_dir.clone();
        std::fs::create_dir_all(&data_dir).map_err(|e| StartError::DataDir(data_dir.clone(), e))?;
        let meta_dir = data_dir.join(METADATA_DIR);
        let storage =
            FileStorage::open(&meta_dir).map_err(|e| StartError::DataDir(meta_dir.clone(), e))?;
        let cluster_id = read_or_create_cluster_id(&mut storage.clone())?;
        let (store, state, report) =
            MetadataStore::open(storage).map_err(|e| StartError::Metadata(e.to_string()))?;
        if report != Default::default() {
            tracing::warn!(?report, "metadata store recovered");
        }
        let mut meta = Meta {
            state,
            store,
            broker_epoch: -1,
            producer_ids: None,
            next_producer_id: 0,
        };
        let registration = BrokerRegistration {
            broker_id: BrokerId(settings.node_id),
            incarnation_id: random_id(),
            endpoints: vec![Endpoint {
                name: "PLAINTEXT".into(),
                host: settings.advertised_host.clone(),
                port: settings.advertised_port as i32,
                security_protocol: 0,
            }],
            rack: None,
        };
        let (epoch, records) = meta
            .state
            .register_broker(&registration)
            .map_err(|e| StartError::Metadata(e.to_string()))?;
        meta.store
            .commit(&mut meta.state, &records)
            .map_err(|e| StartError::Metadata(e.to_string()))?;
        meta.broker_epoch = epoch;
        let broker = Arc::new(Broker {
            settings,
            metrics: metrics.clone(),
            cluster_id,
            meta: Mutex::new(meta),
            partitions: RwLock::new(BTreeMap::new()),
            sync: SyncWorker::start(),
        });
        broker.reconcile_partitions()?;
        broker.remove_orphan_directories();
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
        Ok(broker)
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

    fn meta(&self) -> std::sync::MutexGuard<'_, Meta> {
        self.meta.lock().expect("metadata lock poisoned")
    }

    /// Runs `f` on the metadata state.
    pub fn with_metadata<R>(&self, f: impl FnOnce(&MetadataState) -> R) -> R {
        f(&self.meta().state)
    }

    /// Validates a command against the metadata, commits its records durably and applies them,
    /// then brings the partitions in line. `validate_only` stops after validation.
    pub fn command<R>(
        &self,
        validate_only: bool,
        f: impl FnOnce(&MetadataState) -> Result<(R, Vec<MetadataRecord>), ControllerError>,
    ) -> Result<R, ControllerError> {
        let result = {
            let mut meta = self.meta();
            let (result, records) = f(&meta.state)?;
            if validate_only || records.is_empty() {
                return Ok(result);
            }
            let meta = &mut *meta;
            meta.store
                .commit(&mut meta.state, &records)
                .map_err(|e| ControllerError::UnknownServerError(format!("metadata store: {e}")))?;
            result
        };
        if let Err(e) = self.reconcile_partitions() {
            tracing::error!("opening partitions after a metadata change: {e}");
        }
        Ok(result)
    }

    /// A fresh topic id.
    pub fn new_topic_id(&self) -> TopicId {
        TopicId(random_id())
    }

    /// The next producer id, from this broker's block (allocating a new block durably when it
    /// runs out).
    pub fn allocate_producer_id(&self) -> Result<ProducerId, ControllerError> {
        let mut meta = self.meta();
        let meta = &mut *meta;
        let exhausted = meta
            .producer_ids
            .is_none_or(|b| meta.next_producer_id > b.last().0);
        if exhausted {
            let (block, records) = meta
                .state
                .allocate_producer_ids(BrokerId(self.settings.node_id), meta.broker_epoch)?;
            meta.store
                .commit(&mut meta.state, &records)
                .map_err(|e| ControllerError::UnknownServerError(format!("metadata store: {e}")))?;
            meta.producer_ids = Some(block);
            meta.next_producer_id = block.first.0;
        }
        let id = meta.next_producer_id;
        meta.next_producer_id += 1;
        Ok(ProducerId(id))
    }

    /// The partition handle, if this broker leads it.
    pub fn partition(&self, topic: &str, index: i32) -> Option<Arc<PartitionHandle>> {
        self.partitions
            .read()
            .expect("partition map poisoned")
            .get(&(topic.to_string(), index))
            .cloned()
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

    /// Queues a partition for the sync thread (after an append).
    pub fn queue_sync(&self, p: &Arc<PartitionHandle>) {
        self.sync.queue(p);
    }

    /// Opens partitions the metadata assigns to this broker that are not open, closes and
    /// deletes those whose topic is gone, and updates topic configs.
    fn reconcile_partitions(&self) -> Result<(), StartError> {
        let wanted: Vec<(
            String,
            i32,
            TopicId,
            keel_core::controller::TopicConfig,
            LeaderEpoch,
        )> = self.with_metadata(|state| {
            let me = BrokerId(self.settings.node_id);
            state
                .topics()
                .flat_map(|t| {
                    t.partitions
                        .iter()
                        .enumerate()
                        .filter(move |(_, p)| p.leader == me)
                        .map(move |(i, p)| {
                            (
                                t.name.clone(),
                                i as i32,
                                t.id,
                                t.config.clone(),
                                p.leader_epoch,
                            )
                        })
                })
                .collect()
        });
        let mut partitions = self.partitions.write().expect("partition map poisoned");
        let wanted_keys: std::collections::BTreeSet<(String, i32)> =
            wanted.iter().map(|w| (w.0.clone(), w.1)).collect();
        let gone: Vec<(String, i32)> = partitions
            .keys()
            .filter(|k| !wanted_keys.contains(*k))
            .cloned()
            .collect();
        for key in gone {
            if let Some(p) = partitions.remove(&key) {
                p.deleted.store(true, Ordering::SeqCst);
                if let Err(e) = std::fs::remove_dir_all(&p.dir) {
                    tracing::warn!("removing {}: {e}", p.dir.display());
                }
            }
        }
        for (topic, index, topic_id, config, epoch) in wanted {
            let key = (topic.clone(), index);
            if let Some(existing) = partitions.get(&key) {
                if existing.topic_id == topic_id {
                    existing.with(|r| apply_topic_config(r, &config));
                    continue;
                }
                // Same name, new topic: the old one was deleted and recreated.
                existing.deleted.store(true, Ordering::SeqCst);
                let _ = std::fs::remove_dir_all(&existing.dir);
            }
            let handle = self.open_partition(&topic, index, topic_id, &config, epoch)?;
            partitions.insert(key, Arc::new(handle));
        }
        Ok(())
    }

    /// Removes directories of partitions that no longer exist (topics deleted while the
    /// broker was down). At startup only: while running, deletion removes its own directories.
    fn remove_orphan_directories(&self) {
        let partitions = self.partitions.read().expect("partition map poisoned");
        let Ok(entries) = std::fs::read_dir(&self.settings.data_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name == METADATA_DIR || !entry.path().is_dir() {
                continue;
            }
            if !partitions.values().any(|p| p.dir == entry.path()) {
                tracing::info!("removing the directory of a deleted partition: {name}");
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }

    fn open_partition(
        &self,
        topic: &str,
        index: i32,
        topic_id: TopicId,
        config: &keel_core::controller::TopicConfig,
        epoch: LeaderEpoch,
    ) -> Result<PartitionHandle, StartError> {
        let name = format!("{topic}-{index}");
        let dir = self.settings.data_dir.join(&name);
        let fail = |e: String| StartError::Partition(name.clone(), e);
        let storage = FileStorage::open(&dir).map_err(|e| fail(e.to_string()))?;
        let mut snapshots = FileStorage::open(&dir).map_err(|e| fail(e.to_string()))?;
        check_topic_id(&mut snapshots, topic_id).map_err(fail)?;
        let syncer = storage.clone();
        let mut replica = PartitionReplica::open(
            storage,
            &mut snapshots,
            config.to_log_config(),
            produce_rules(config),
            epoch,
            now_ms(),
        )
        .map_err(|e| fail(e.to_string()))?;
        apply_topic_config(&mut replica, config);
        let report = replica.log().recovery_report();
        if let Some((file, position, why)) = &report.corruption {
            tracing::warn!(partition = %name, "recovery cut {} bytes at {file}:{position}: {why}", report.bytes_truncated);
        }
        let hw = replica.high_watermark();
        let (high_watermark, _) = watch::channel(hw);
        Ok(PartitionHandle {
            topic: topic.to_string(),
            index,
            topic_id,
            dir,
            replica: Mutex::new(replica),
            snapshots: Mutex::new(snapshots),
            syncer,
            high_watermark,
            queued: AtomicBool::new(false),
            deleted: AtomicBool::new(false),
        })
    }

    /// Applies retention to every partition (the caller's timer).
    pub fn apply_retention(&self) {
        let now = now_ms();
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

/// A partition directory remembers its topic's id, so that a directory left by a deleted topic
/// is never mistaken for a new topic of the same name.
fn check_topic_id(storage: &mut FileStorage, topic_id: TopicId) -> Result<(), String> {
    const FILE: &str = "partition.metadata";
    let expected = format!("version: 0\ntopic_id: {topic_id}\n");
    match keel_core::storage::read_all(storage, FILE) {
        Ok(found) if found[..] == *expected.as_bytes() => Ok(()),
        Ok(found) => Err(format!(
            "{FILE} holds another topic: {:?}",
            String::from_utf8_lossy(&found)
        )),
        Err(StorageError::NotFound(_)) => {
            keel_core::storage::write_atomic(storage, FILE, expected.as_bytes())
                .map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// The cluster id, made (and stored durably) on first start.
fn read_or_create_cluster_id(storage: &mut FileStorage) -> Result<String, StartError> {
    if let Ok(id) = keel_core::storage::read_all(storage, CLUSTER_ID_FILE) {
        let id = String::from_utf8_lossy(&id).trim().to_string();
        if !id.is_empty() {
            return Ok(id);
        }
    }
    let id = TopicId(random_id()).to_string();
    keel_core::storage::write_atomic(storage, CLUSTER_ID_FILE, id.as_bytes())
        .map_err(|e| StartError::Metadata(e.to_string()))?;
    Ok(id)
}
