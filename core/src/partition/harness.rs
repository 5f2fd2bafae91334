//! A cluster of replicas of one partition, for scenario and property tests (after quinn's
//! `Pair` and raft-rs's `harness/network.rs`): N [`PartitionReplica`]s over
//! [`MemStorage`], a model controller (KRaft's election and AlterPartition rules), an in-memory
//! network whose messages move only when a step says so, and virtual time.
//!
//! Every public step ends with [`Cluster::check`], which checks docs/replication.md's six
//! invariants on the whole cluster:
//! 1. at most one replica leads each leader epoch, and it is the one the controller elected;
//! 2. on every replica, the leader epoch and the high watermark never decrease, across crashes;
//! 3. no replica's high watermark exceeds the durable end offset of any member of the
//!    controller's ISR (a crashed member's is what it had synced);
//! 4. every acknowledged acks=all write is in the current leader's log, byte for byte;
//! 5. below its high watermark, every replica holds exactly the batches every other replica
//!    held below its own (checked against one reference map of committed batches);
//! 6. no replica truncates below its high watermark (asserted inside the replica; here, a
//!    truncation below it would also break 5 or the replica's own `check_invariants`).
//!
//! The fault model: power loss of any set of nodes at any time (MemStorage::crash: unsynced
//! bytes lost or torn), fencing by the controller (a node cut off from it), delayed and lost
//! fetches, metadata reaching nodes late, no unclean election, no disk corruption.

use std::collections::BTreeMap;

use bytes::Bytes;
use rand::{rngs::StdRng, SeedableRng};

use super::*;
use crate::batch::BatchBuilder;
use crate::storage::MemStorage;

/// The cluster's settings.
#[derive(Clone, Debug)]
pub struct Settings {
    pub replicas: usize,
    pub min_insync_replicas: usize,
    pub lag_time_max_ms: i64,
    /// Deliver every controller change to every live node at once (else only to the nodes it
    /// concerns most: the new leader, the proposer; others wait for [`Cluster::metadata`]).
    pub eager_metadata: bool,
    /// Let the controller process AlterPartition proposals as soon as they are made.
    pub eager_alter: bool,
    pub log: LogConfig,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            replicas: 3,
            min_insync_replicas: 1,
            lag_time_max_ms: REPLICA_LAG_TIME_MAX_MS_DEFAULT,
            eager_metadata: true,
            eager_alter: true,
            log: LogConfig {
                segment_bytes_max: 4096,
                ..LogConfig::default()
            },
        }
    }
}

/// One broker of the cluster.
pub struct Node {
    pub id: BrokerId,
    /// `None` while the node is down.
    pub replica: Option<PartitionReplica<MemStorage>>,
    /// The log's storage while the node is down.
    down_log: Option<MemStorage>,
    /// Producer snapshots and the replica state files.
    pub snaps: MemStorage,
    /// A fetch sent to broker `.0`, not served yet.
    request: Option<(BrokerId, FetchRequest)>,
    /// A fetch answer not delivered yet.
    response: Option<Result<FetchResponse, FetchError>>,
    /// Invariant 2: the largest epoch and high watermark this node ever had.
    max_epoch: LeaderEpoch,
    max_hw: Offset,
    /// Invariant 3 for a crashed node: its durable end when it went down.
    durable_at_crash: Offset,
    /// Whether the controller has fenced it.
    pub fenced: bool,
}

impl Node {
    pub fn replica(&self) -> &PartitionReplica<MemStorage> {
        self.replica.as_ref().expect("node is up")
    }

    pub fn is_up(&self) -> bool {
        self.replica.is_some()
    }
}

/// An acks=all produce waiting for its answer.
#[derive(Clone, Debug)]
struct Waiting {
    node: usize,
    appended: Appended,
    /// The batch as the producer sent it.
    sent: Bytes,
}

/// Where a batch's CRC starts: from here on, the broker never changes its bytes (it stamps
/// only baseOffset and partitionLeaderEpoch before it).
const CRC_AT: usize = 17;

/// A write acknowledged to its producer with acks=all.
#[derive(Clone, Debug)]
pub struct Acked {
    pub base: Offset,
    pub last: Offset,
    pub bytes: Bytes,
}

/// How often each replication event happened, to show that random runs exercise them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Coverage {
    pub elections: u64,
    pub isr_shrinks: u64,
    pub isr_expansions: u64,
    pub alter_rejections: u64,
    pub truncations: u64,
    pub log_restarts: u64,
    pub stale_responses: u64,
    pub fetch_errors: u64,
    pub crashes: u64,
    pub torn_recoveries: u64,
    pub acked: u64,
    pub not_enough_replicas: u64,
    pub failed_after_append: u64,
}

impl Coverage {
    pub fn add(&mut self, o: &Coverage) {
        self.elections += o.elections;
        self.isr_shrinks += o.isr_shrinks;
        self.isr_expansions += o.isr_expansions;
        self.alter_rejections += o.alter_rejections;
        self.truncations += o.truncations;
        self.log_restarts += o.log_restarts;
        self.stale_responses += o.stale_responses;
        self.fetch_errors += o.fetch_errors;
        self.crashes += o.crashes;
        self.torn_recoveries += o.torn_recoveries;
        self.acked += o.acked;
        self.not_enough_replicas += o.not_enough_replicas;
        self.failed_after_append += o.failed_after_append;
    }
}

/// The cluster. See the module documentation.
pub struct Cluster {
    pub now_ms: i64,
    pub nodes: Vec<Node>,
    /// The controller's committed partition state.
    pub partition: Partition,
    pub settings: Settings,
    rng: StdRng,
    /// AlterPartition proposals sent to the controller, not processed yet.
    alter_queue: Vec<AlterPartition>,
    waiting: Vec<Waiting>,
    pub acked: Vec<Acked>,
    /// Error codes given to acks=all produces, in order.
    pub failed: Vec<i16>,
    /// Invariant 5's reference: every batch any replica ever held below its high watermark,
    /// by base offset: (next offset, bytes).
    committed: BTreeMap<Offset, (Offset, Bytes)>,
    /// Invariant 1's reference: who the controller elected for each epoch.
    elected: BTreeMap<LeaderEpoch, BrokerId>,
    next_value: u64,
    /// Steps taken (for messages).
    pub steps: u64,
    pub coverage: Coverage,
}

pub const T0: i64 = 1_700_000_000_000;

impl Cluster {
    /// A new cluster: every node empty, node 0 leads epoch 0 with everyone in the ISR.
    pub fn new(settings: Settings, seed: u64) -> Cluster {
        let ids: Vec<BrokerId> = (0..settings.replicas as i32).map(BrokerId).collect();
        let mut cluster = Cluster {
            now_ms: T0,
            nodes: Vec::new(),
            partition: Partition {
                replicas: ids.clone(),
                isr: ids.clone(),
                leader: ids[0],
                leader_epoch: LeaderEpoch(0),
                partition_epoch: 0,
                elr: Vec::new(),
                adding: Vec::new(),
                removing: Vec::new(),
            },
            settings,
            rng: StdRng::seed_from_u64(seed),
            alter_queue: Vec::new(),
            waiting: Vec::new(),
            acked: Vec::new(),
            failed: Vec::new(),
            committed: BTreeMap::new(),
            elected: BTreeMap::new(),
            next_value: 0,
            steps: 0,
            coverage: Coverage::default(),
        };
        for &id in &ids {
            let mut node = Node {
                id,
                replica: None,
                down_log: Some(MemStorage::new()),
                snaps: MemStorage::new(),
                request: None,
                response: None,
                max_epoch: LeaderEpoch::NONE,
                max_hw: Offset::ZERO,
                durable_at_crash: Offset::ZERO,
                fenced: false,
            };
            cluster.open(&mut node);
            cluster.nodes.push(node);
        }
        cluster.elected.insert(LeaderEpoch(0), ids[0]);
        for i in 0..cluster.nodes.len() {
            cluster.deliver_metadata(i);
        }
        cluster.step_done();
        cluster
    }

    fn replica_config(&self, id: BrokerId) -> ReplicaConfig {
        ReplicaConfig {
            lag_time_max_ms: self.settings.lag_time_max_ms,
            min_insync_replicas: self.settings.min_insync_replicas,
            ..ReplicaConfig::new(id)
        }
    }

    fn open(&self, node: &mut Node) {
        let log = node.down_log.take().expect("node is down");
        let replica = PartitionReplica::recover(
            log,
            &mut node.snaps,
            self.settings.log.clone(),
            ProduceRules::default(),
            self.replica_config(node.id),
            self.now_ms,
        )
        .expect("recover");
        assert_eq!(
            replica.state_report().hw_above_log,
            None,
            "no synced data is lost in this fault model"
        );
        node.replica = Some(replica);
    }

    pub fn replica(&self, i: usize) -> &PartitionReplica<MemStorage> {
        self.nodes[i].replica()
    }

    fn index(&self, id: BrokerId) -> usize {
        id.0 as usize
    }

    /// The controller's leader, if it is up.
    pub fn leader(&self) -> Option<usize> {
        let p = &self.partition;
        if p.leader == BrokerId::NONE {
            return None;
        }
        let i = self.index(p.leader);
        self.nodes[i].is_up().then_some(i)
    }

    // ---------------------------------------------------------------------------------------
    // Controller

    /// Commits a new partition state and tells the nodes it concerns.
    fn commit(&mut self, partition: Partition, tell: &[usize]) {
        assert!(partition.partition_epoch > self.partition.partition_epoch);
        assert!(partition.leader_epoch >= self.partition.leader_epoch);
        if partition.leader_epoch > self.partition.leader_epoch
            && partition.leader != BrokerId::NONE
        {
            let previous = self
                .elected
                .insert(partition.leader_epoch, partition.leader);
            assert!(
                previous.is_none(),
                "the model controller elects once per epoch"
            );
            self.coverage.elections += 1;
        }
        self.partition = partition;
        let all: Vec<usize> = (0..self.nodes.len()).collect();
        let tell = if self.settings.eager_metadata {
            &all[..]
        } else {
            tell
        };
        for &i in tell {
            self.deliver_metadata(i);
        }
    }

    /// Delivers the controller's current state to node `i`, if it is up.
    fn deliver_metadata(&mut self, i: usize) {
        let now = self.now_ms;
        let partition = self.partition.clone();
        let node = &mut self.nodes[i];
        let Some(replica) = node.replica.as_mut() else {
            return;
        };
        if node.fenced {
            return;
        }
        replica
            .on_partition_change(now, &mut node.snaps, &partition)
            .unwrap_or_else(|e| panic!("node {i} refused {partition:?}: {e}"));
        self.drain_alter(i);
    }

    /// Moves node `i`'s AlterPartition proposal to the controller.
    fn drain_alter(&mut self, i: usize) {
        let Some(replica) = self.nodes[i].replica.as_mut() else {
            return;
        };
        if let Some(proposal) = replica.poll_alter_partition() {
            self.alter_queue.push(proposal);
        }
        if self.settings.eager_alter {
            self.process_alters_inner();
        }
    }

    fn process_alters_inner(&mut self) {
        while !self.alter_queue.is_empty() {
            let proposal = self.alter_queue.remove(0);
            let p = &self.partition;
            let from = self.index(proposal.leader);
            let valid = proposal.leader_epoch == p.leader_epoch
                && proposal.partition_epoch == p.partition_epoch
                && proposal.leader == p.leader
                && proposal.isr.contains(&proposal.leader)
                && proposal
                    .isr
                    .iter()
                    .all(|r| p.replicas.contains(r) && !self.nodes[self.index(*r)].fenced);
            if valid {
                if proposal.isr.len() < p.isr.len() {
                    self.coverage.isr_shrinks += 1;
                } else {
                    self.coverage.isr_expansions += 1;
                }
                let mut next = p.clone();
                next.isr = proposal.isr.clone();
                next.partition_epoch += 1;
                self.commit(next, &[from]);
            } else if let Some(replica) = self.nodes[from].replica.as_mut() {
                replica.on_alter_partition_failed(self.now_ms, proposal.id);
                self.coverage.alter_rejections += 1;
            }
        }
    }

    /// The controller fences node `i` (it stopped heartbeating): out of the ISR unless it is
    /// the last member (KRaft keeps the last one), and a new leader from the ISR if it led.
    fn fence(&mut self, i: usize) {
        let id = self.nodes[i].id;
        self.nodes[i].fenced = true;
        let mut next = self.partition.clone();
        if next.isr.len() > 1 {
            next.isr.retain(|&r| r != id);
        }
        if next.leader == id {
            next.leader = self.pick_leader(&next.isr);
            next.leader_epoch.0 += 1;
        }
        if next != self.partition {
            next.partition_epoch += 1;
            let tell = self.index_of(next.leader);
            self.commit(next, &tell);
        }
    }

    /// The controller unfences node `i`; an offline partition whose ISR holds it gets it as
    /// leader.
    fn unfence(&mut self, i: usize) {
        let id = self.nodes[i].id;
        self.nodes[i].fenced = false;
        let p = &self.partition;
        if p.leader == BrokerId::NONE && p.isr.contains(&id) {
            let mut next = p.clone();
            next.leader = id;
            next.leader_epoch.0 += 1;
            next.partition_epoch += 1;
            self.commit(next, &[i]);
        }
        self.deliver_metadata(i);
    }

    fn pick_leader(&self, isr: &[BrokerId]) -> BrokerId {
        isr.iter()
            .copied()
            .find(|&r| {
                let n = &self.nodes[self.index(r)];
                n.is_up() && !n.fenced
            })
            .unwrap_or(BrokerId::NONE)
    }

    fn index_of(&self, id: BrokerId) -> Vec<usize> {
        if id == BrokerId::NONE {
            Vec::new()
        } else {
            vec![self.index(id)]
        }
    }

    // ---------------------------------------------------------------------------------------
    // Steps

    /// Produces a batch of `records` unique values to node `i` (normally the leader). With
    /// `acks_all`, checks NOT_ENOUGH_REPLICAS first and waits for the answer.
    pub fn produce_to(
        &mut self,
        i: usize,
        records: usize,
        acks_all: bool,
    ) -> Result<Appended, ProduceError> {
        let now = self.now_ms;
        let mut builder = BatchBuilder::new(Compression::None);
        for _ in 0..records.max(1) {
            let value = format!("value-{}", self.next_value);
            self.next_value += 1;
            builder = builder.record(now, Some(b"key"), Some(value.as_bytes()));
        }
        let batch = builder.build().expect("build");
        let sent = batch.bytes().clone();
        let result = match self.nodes[i].replica.as_mut() {
            None => Err(ProduceError::NotLeaderOrFollower),
            Some(r) => {
                let check = if acks_all {
                    r.check_enough_replicas()
                } else {
                    Ok(())
                };
                check.and_then(|()| r.append(now, batch))
            }
        };
        if matches!(result, Err(ProduceError::NotEnoughReplicas { .. })) {
            self.coverage.not_enough_replicas += 1;
        }
        if let Ok(appended) = result {
            if acks_all {
                self.waiting.push(Waiting {
                    node: i,
                    appended,
                    sent,
                });
            }
        }
        self.step_done();
        result
    }

    /// Produces to the controller's leader.
    pub fn produce(&mut self, records: usize, acks_all: bool) -> Result<Appended, ProduceError> {
        let i = self.leader().unwrap_or(0);
        self.produce_to(i, records, acks_all)
    }

    /// DeleteRecords on node `i` if it leads: the log start moves `per_mille` of the way from
    /// the log start to the high watermark.
    pub fn delete_records(&mut self, i: usize, per_mille: u16) {
        if let Some(r) = self.nodes[i].replica.as_mut() {
            if r.is_leader() {
                let (start, hw) = (r.log().log_start().0, r.high_watermark().0);
                let target = start + (hw - start) * i64::from(per_mille.min(1000)) / 1000;
                r.delete_records(target)
                    .expect("delete records below the high watermark");
            }
        }
        self.step_done();
    }

    /// Node `i` syncs its log (a group commit) and moves its high watermark.
    pub fn sync_log(&mut self, i: usize) {
        if let Some(r) = self.nodes[i].replica.as_mut() {
            r.sync().expect("sync");
        }
        self.step_done();
    }

    /// Node `i` persists its wanted high watermark and exposes it.
    pub fn persist(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if let Some(r) = node.replica.as_mut() {
            r.persist_state(&mut node.snaps).expect("persist");
        }
        self.step_done();
    }

    /// Node `i` syncs its log and persists its high watermark.
    pub fn sync(&mut self, i: usize) {
        self.sync_log(i);
        self.persist(i);
    }

    /// Follower `i` sends its next fetch, if it has one to send.
    pub fn send_fetch(&mut self, i: usize) {
        let now = self.now_ms;
        let node = &mut self.nodes[i];
        if let (Some(r), None, None) = (node.replica.as_mut(), &node.request, &node.response) {
            if let Some(leader) = r.fetch_leader() {
                if let Some(request) = r.next_fetch(now) {
                    node.request = Some((leader, request));
                }
            }
        }
        self.step_done();
    }

    /// The leader node `i`'s fetch went to serves it.
    pub fn serve_fetch(&mut self, i: usize) {
        let now = self.now_ms;
        if let Some((to, request)) = self.nodes[i].request.take() {
            let t = self.index(to);
            let answer = match self.nodes[t].replica.as_mut() {
                Some(leader) => leader.handle_follower_fetch(now, &request),
                None => Err(FetchError::NotLeader),
            };
            self.nodes[i].response = Some(answer);
            self.drain_alter(t);
        }
        self.step_done();
    }

    /// Node `i` receives the answer to its fetch.
    pub fn deliver_fetch(&mut self, i: usize) -> Option<FetchOutcome> {
        let now = self.now_ms;
        let node = &mut self.nodes[i];
        let mut outcome = None;
        if let (Some(r), Some(answer)) = (node.replica.as_mut(), node.response.take()) {
            match answer {
                Ok(response) => {
                    outcome = Some(
                        r.handle_fetch_response(now, &mut node.snaps, response)
                            .unwrap_or_else(|e| panic!("node {i}: fetch response: {e}")),
                    );
                }
                Err(_) => {
                    self.coverage.fetch_errors += 1;
                    r.handle_fetch_error(now);
                }
            }
        }
        match outcome {
            Some(FetchOutcome::Truncated(_)) => self.coverage.truncations += 1,
            Some(FetchOutcome::Restarted(_)) => self.coverage.log_restarts += 1,
            Some(FetchOutcome::Stale) => self.coverage.stale_responses += 1,
            _ => {}
        }
        self.step_done();
        outcome
    }

    /// Node `i`'s fetch (request or answer) is lost; it notices by timeout.
    pub fn drop_fetch(&mut self, i: usize) {
        let now = self.now_ms;
        let node = &mut self.nodes[i];
        if node.request.take().is_some() || node.response.take().is_some() {
            if let Some(r) = node.replica.as_mut() {
                r.handle_fetch_error(now);
            }
        }
        self.step_done();
    }

    /// One whole fetch round trip for follower `i`. Returns what the answer did.
    pub fn fetch(&mut self, i: usize) -> Option<FetchOutcome> {
        self.send_fetch(i);
        self.serve_fetch(i);
        self.deliver_fetch(i)
    }

    /// Follower `i` fetches, syncs what it got, and fetches again so the leader learns its
    /// durable end; both persist their high watermarks.
    pub fn replicate(&mut self, i: usize) {
        self.fetch(i);
        self.sync(i);
        self.fetch(i);
        self.sync(i);
    }

    /// Rounds of replication by every follower and syncs by everyone.
    pub fn rounds(&mut self, n: usize) {
        for _ in 0..n {
            for i in 0..self.nodes.len() {
                self.sync(i);
                self.fetch(i);
            }
        }
    }

    /// The controller processes the queued AlterPartition proposals.
    pub fn process_alters(&mut self) {
        self.process_alters_inner();
        self.step_done();
    }

    /// Node `i` receives the controller's current partition state.
    pub fn metadata(&mut self, i: usize) {
        self.deliver_metadata(i);
        self.step_done();
    }

    /// Time passes; every node runs its due timers.
    pub fn tick(&mut self, ms: i64) {
        self.now_ms += ms;
        let now = self.now_ms;
        for i in 0..self.nodes.len() {
            if let Some(r) = self.nodes[i].replica.as_mut() {
                if r.poll_timeout().is_some_and(|t| t <= now) {
                    r.handle_timeout(now);
                }
            }
            self.drain_alter(i);
        }
        self.step_done();
    }

    /// Node `i` loses power: unsynced bytes are lost or torn. The controller fences it.
    pub fn crash(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        if let Some(replica) = node.replica.take() {
            node.durable_at_crash = replica.log().durable_end();
            let mut log = replica.into_log_storage();
            log.crash(&mut self.rng);
            node.snaps.crash(&mut self.rng);
            node.down_log = Some(log);
            node.request = None;
            node.response = None;
            self.waiting.retain(|w| w.node != i);
            self.coverage.crashes += 1;
            self.fence(i);
        }
        self.step_done();
    }

    /// Every node loses power at once (the case keel's durable acks are for).
    pub fn crash_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.crash(i);
        }
    }

    /// Node `i` comes back: recovers its log and state, and the controller unfences it.
    pub fn restart(&mut self, i: usize) {
        if !self.nodes[i].is_up() {
            let mut node = std::mem::replace(
                &mut self.nodes[i],
                Node {
                    id: BrokerId::NONE,
                    replica: None,
                    down_log: None,
                    snaps: MemStorage::new(),
                    request: None,
                    response: None,
                    max_epoch: LeaderEpoch::NONE,
                    max_hw: Offset::ZERO,
                    durable_at_crash: Offset::ZERO,
                    fenced: true,
                },
            );
            self.open(&mut node);
            if node.replica().log().recovery_report().bytes_truncated > 0 {
                self.coverage.torn_recoveries += 1;
            }
            assert!(
                node.replica().log().durable_end() >= node.durable_at_crash,
                "synced data survives a crash"
            );
            self.nodes[i] = node;
            self.check();
            self.unfence(i);
        }
        self.step_done();
    }

    /// Node `i` discarded runtime damage (`PartitionReplica::discard_damaged`), which lowers
    /// its high watermark: invariant 2 starts over from there for it.
    pub fn discarded_damage(&mut self, i: usize) {
        self.nodes[i].max_hw = self.nodes[i].replica().high_watermark();
    }

    /// The controller cuts node `i` off (fenced) without it crashing: it may go on believing
    /// it leads until metadata reaches it.
    pub fn isolate(&mut self, i: usize) {
        if !self.nodes[i].fenced {
            self.fence(i);
        }
        self.step_done();
    }

    /// The controller hears from node `i` again.
    pub fn reconnect(&mut self, i: usize) {
        if self.nodes[i].fenced && self.nodes[i].is_up() {
            self.unfence(i);
        }
        self.step_done();
    }

    /// The controller moves leadership to node `i` (in the ISR, up, not fenced), bumping the
    /// leader epoch (a preferred-leader election).
    pub fn elect(&mut self, i: usize) -> bool {
        let id = self.nodes[i].id;
        let ok = self.partition.isr.contains(&id)
            && self.partition.leader != id
            && self.nodes[i].is_up()
            && !self.nodes[i].fenced;
        if ok {
            let mut next = self.partition.clone();
            next.leader = id;
            next.leader_epoch.0 += 1;
            next.partition_epoch += 1;
            self.commit(next, &[i]);
        }
        self.step_done();
        ok
    }

    /// Brings everything back and replicates until every replica has the leader's whole log
    /// under its high watermark (the liveness end of a run). Panics if it does not converge.
    pub fn heal(&mut self) {
        for i in 0..self.nodes.len() {
            self.restart(i);
            self.reconnect(i);
        }
        for i in 0..self.nodes.len() {
            self.metadata(i);
        }
        for _ in 0..50 {
            self.process_alters();
            self.rounds(1);
            self.tick(1_000);
            let Some(l) = self.leader() else {
                continue;
            };
            let end = self.replica(l).log().end();
            let done = self.nodes.iter().all(|n| {
                let r = n.replica();
                r.high_watermark() == end && r.log().end() == end
            }) && self.partition.isr.len() == self.nodes.len();
            if done {
                return;
            }
        }
        panic!("the cluster did not converge: {}", self.describe());
    }

    pub fn describe(&self) -> String {
        let mut s = format!("{:?}\n", self.partition);
        for n in &self.nodes {
            match &n.replica {
                None => s.push_str(&format!("  node {}: down\n", n.id)),
                Some(r) => s.push_str(&format!(
                    "  node {}: {:?} epoch {} start {} hw {} durable {} end {} isr {:?}{} {}\n",
                    n.id,
                    r.role(),
                    r.leader_epoch(),
                    r.log().log_start(),
                    r.high_watermark(),
                    r.log().durable_end(),
                    r.log().end(),
                    r.isr(),
                    if n.fenced { " fenced" } else { "" },
                    batches(r)
                )),
            }
        }
        s
    }

    // ---------------------------------------------------------------------------------------
    // Checks

    fn step_done(&mut self) {
        self.steps += 1;
        if std::env::var_os("KEEL_TRACE").is_some() {
            eprintln!(
                "step {} at {}: {}",
                self.steps,
                self.now_ms - T0,
                self.describe()
            );
        }
        self.settle_produces();
        self.check();
    }

    /// Answers waiting acks=all produces whose status is known.
    fn settle_produces(&mut self) {
        let mut still = Vec::new();
        for w in std::mem::take(&mut self.waiting) {
            let Some(r) = self.nodes[w.node].replica.as_ref() else {
                continue;
            };
            match r.produce_status(w.appended.leader_epoch, w.appended.last_offset) {
                AckStatus::Waiting => still.push(w),
                AckStatus::Failed(code) => {
                    if code == code::NOT_ENOUGH_REPLICAS_AFTER_APPEND {
                        self.coverage.failed_after_append += 1;
                    }
                    self.failed.push(code);
                }
                AckStatus::Acked => {
                    self.coverage.acked += 1;
                    let batch = read_batch(r, w.appended.base_offset);
                    assert!(
                        batch
                            .as_ref()
                            .is_some_and(|b| b.bytes()[CRC_AT..] == w.sent[CRC_AT..]),
                        "invariant 4: acknowledged the write at {}, but node {} holds {:?} there",
                        w.appended.base_offset,
                        w.node,
                        batch
                    );
                    let batch = batch.expect("checked");
                    self.acked.push(Acked {
                        base: w.appended.base_offset,
                        last: w.appended.last_offset,
                        bytes: batch.bytes().clone(),
                    });
                }
            }
        }
        self.waiting = still;
    }

    /// Checks the six invariants (see the module documentation). Panics naming the one broken.
    pub fn check(&mut self) {
        let step = self.steps;
        // Invariant 1.
        let mut leading: BTreeMap<LeaderEpoch, BrokerId> = BTreeMap::new();
        for n in &self.nodes {
            let Some(r) = &n.replica else { continue };
            r.check_invariants();
            if r.is_leader() {
                let e = r.leader_epoch();
                assert_eq!(
                    self.elected.get(&e),
                    Some(&n.id),
                    "invariant 1: node {} leads epoch {e}, which the controller gave to {:?} (step {step})",
                    n.id,
                    self.elected.get(&e)
                );
                if let Some(other) = leading.insert(e, n.id) {
                    panic!(
                        "invariant 1: nodes {other} and {} both lead epoch {e}",
                        n.id
                    );
                }
            }
        }
        // Invariant 2.
        for n in &mut self.nodes {
            let Some(r) = &n.replica else { continue };
            assert!(
                r.leader_epoch() >= n.max_epoch,
                "invariant 2: node {} went from epoch {} to {} (step {step})",
                n.id,
                n.max_epoch,
                r.leader_epoch()
            );
            assert!(
                r.high_watermark() >= n.max_hw,
                "invariant 2: node {} high watermark went from {} to {} (step {step})",
                n.id,
                n.max_hw,
                r.high_watermark()
            );
            n.max_epoch = r.leader_epoch();
            n.max_hw = r.high_watermark();
        }
        // Invariant 3.
        let isr_durable = self
            .partition
            .isr
            .iter()
            .map(|&m| {
                let n = &self.nodes[self.index(m)];
                (
                    m,
                    n.replica
                        .as_ref()
                        .map_or(n.durable_at_crash, |r| r.log().durable_end()),
                )
            })
            .min_by_key(|&(_, d)| d);
        if let Some((member, durable)) = isr_durable {
            for n in &self.nodes {
                let Some(r) = &n.replica else { continue };
                assert!(
                    r.high_watermark() <= durable,
                    "invariant 3: node {} high watermark {} exceeds ISR member {member}'s durable end {durable} (step {step})\n{}",
                    n.id,
                    r.high_watermark(),
                    self.describe()
                );
            }
        }
        // Invariants 5 and 6: everything below each high watermark matches the reference.
        for i in 0..self.nodes.len() {
            let Some(r) = &self.nodes[i].replica else {
                continue;
            };
            let hw = r.high_watermark();
            let mut at = r.log().log_start();
            while at < hw {
                let batches = r.log().read(at, 1 << 20, hw).expect("read below hw");
                assert!(
                    !batches.is_empty(),
                    "invariant 6: node {i} has nothing at {at}, below its high watermark {hw}"
                );
                for b in batches {
                    at = b.next_offset();
                    check_committed(&mut self.committed, i, &b, step);
                }
            }
        }
        // Invariant 4: the current leader holds every acknowledged write.
        if let Some(l) = self.leader() {
            let r = self.nodes[l].replica();
            if r.is_leader() && r.leader_epoch() == self.partition.leader_epoch {
                for a in &self.acked {
                    if a.last < r.log().log_start() {
                        continue;
                    }
                    let batch = read_batch(r, a.base);
                    assert!(
                        batch.as_ref().is_some_and(|b| b.bytes() == &a.bytes),
                        "invariant 4: acknowledged write at {}..={} is not in leader {l}'s log (step {step})\n{}",
                        a.base,
                        a.last,
                        self.describe()
                    );
                }
            }
        }
    }

    /// After [`Cluster::heal`]: every acknowledged write is on every replica.
    pub fn check_all_acked_everywhere(&self) {
        for n in &self.nodes {
            let r = n.replica();
            for a in self.acked.iter().filter(|a| a.last >= r.log().log_start()) {
                let b = read_batch(r, a.base);
                assert!(
                    b.is_some_and(|b| b.bytes() == &a.bytes),
                    "invariant 4: acknowledged write at {} missing on node {}",
                    a.base,
                    n.id
                );
            }
        }
    }
}

/// The batch that starts at `base` in `r`'s log, if there is one.
pub fn read_batch(r: &PartitionReplica<MemStorage>, base: Offset) -> Option<Batch> {
    let from = base.max(r.log().log_start());
    if from >= r.log().end() {
        return None;
    }
    let batches = r.log().read(from, 1, r.log().end()).ok()?;
    batches
        .into_iter()
        .next()
        .filter(|b| b.base_offset() == base)
}

/// Invariant 5: `batch` (below node `i`'s high watermark) equals the committed batch at its
/// offsets, or is new and overlaps none.
fn check_committed(
    committed: &mut BTreeMap<Offset, (Offset, Bytes)>,
    i: usize,
    batch: &Batch,
    step: u64,
) {
    let (base, next) = (batch.base_offset(), batch.next_offset());
    if let Some((&b, (n, bytes))) = committed.range(..=base).next_back() {
        if *n > base {
            assert!(
                b == base && bytes == batch.bytes(),
                "invariant 5: node {i} holds a different batch at {base}..{next} below its high \
                 watermark than the committed one at {b}..{n} (step {step})"
            );
            return;
        }
    }
    if let Some((&b, _)) = committed.range(base..).next() {
        assert!(
            b >= next,
            "invariant 5: node {i}'s batch at {base}..{next} overlaps the committed batch at {b} (step {step})"
        );
    }
    committed.insert(base, (next, batch.bytes().clone()));
}

/// `base..next@epoch` for every batch of `r`'s log, for traces.
fn batches(r: &PartitionReplica<MemStorage>) -> String {
    let mut out = Vec::new();
    let mut at = r.log().log_start();
    while at < r.log().end() {
        let Ok(batches) = r.log().read(at, 1 << 20, r.log().end()) else {
            break;
        };
        if batches.is_empty() {
            break;
        }
        for b in batches {
            out.push(format!(
                "{}..{}@{}",
                b.base_offset(),
                b.next_offset(),
                b.partition_leader_epoch()
            ));
            at = b.next_offset();
        }
    }
    out.join(" ")
}
