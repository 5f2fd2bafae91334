//! The metadata quorum: KRaft's combined mode on tikv's `raft` crate. A configured set of voters
//! runs raft; every other broker follows the metadata log as a raft learner; the raft leader is
//! the controller. Committed entries carry [`MetadataRecord`] batches, one proposal per command,
//! and every node applies them, in log order, to its own [`MetadataState`].
//!
//! [`QuorumNode`] wraps raft-rs's `RawNode` and drives its Ready loop (raft-rs's
//! `examples/five_mem_node` is the model), persisting through keel's [`Storage`] (so the
//! simulator's disk faults reach it) via [`disk`]'s CRC-framed log file.
//!
//! # Membership
//! Static: every node is configured with the same voters and learners ([`QuorumConfig`]), and
//! that is the raft configuration each node starts from (no bootstrap entry, no conf change).
//! This is the simplest correct choice: KRaft's `controller.quorum.voters` is static too, and a
//! learner needs no conf change to start following. Adding a broker that is not in the
//! configured set needs an `AddLearnerNode` conf change and a snapshot that names it (not done:
//! committed conf change entries are applied if they ever appear, but nothing proposes one).
//!
//! # Invariants
//! 1. Raft's persistence rule: a Ready's entries and HardState are written and synced (one
//!    frame, [`disk`] invariant 1) before its persisted messages are handed out and before
//!    `advance` reports them persisted. [`QuorumNode::poll`] does this inside the call, so every
//!    message it returns may be sent at once.
//! 2. The in-memory log raft reads ([`cache`]) holds only what is durable.
//! 3. A committed entry applies all its records or none (a batch that does not fit the state
//!    is rejected as a whole, identically on every node: apply is deterministic).
//! 4. Applied state is a function of the committed log prefix: for any index two nodes have
//!    both applied, their states are equal (the tests check this after every step).
//! 5. A snapshot rebuilds exactly the state it was taken from ([`snapshot`] checks it when
//!    encoding); a received snapshot is checked (CRC, every record applies) before raft sees it.
//! 6. Every proposal this node accepted gets exactly one [`ProposalOutcome`], unless the node
//!    stops first.
//!
//! # Time
//! No clock: the shell calls [`QuorumNode::tick`] every [`TICK_MS`]. With the defaults a
//! follower starts an election after 10 to 20 ticks (1 to 2 s) without a leader, and the leader
//! heartbeats every 2 ticks. Election timeouts are fixed per node and staggered
//! ([`election_timeout_ticks`]) rather than drawn at random: raft-rs's own draw is given a range
//! of one value, so nothing here depends on randomness.

#![warn(missing_docs)]

mod cache;
pub mod codec;
pub mod disk;
pub mod sessions;
pub mod snapshot;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};

use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{ConfChange, ConfChangeV2, ConfState, Entry, EntryType, HardState, Snapshot};
use raft::{ProgressState, RawNode, SnapshotStatus};

pub use codec::{decode_message, encode_message, DecodeError};
pub use disk::{DiskError, DiskReport, TruncatedTail};
pub use raft::eraftpb::{Message, MessageType};
pub use raft::StateRole;

use crate::controller::records::MetadataBatch;
use crate::controller::{ApplyError, BrokerId, MetadataRecord, MetadataState};
use crate::error_code::{self as code, ErrorCode};
use crate::storage::Storage;
use cache::LogCache;
use disk::RaftDisk;

/// How often the shell calls [`QuorumNode::tick`], in milliseconds.
pub const TICK_MS: u64 = 100;
/// Ticks without a leader before a follower campaigns (raft-rs randomizes in `[n, 2n)`).
pub const ELECTION_TICKS: usize = 10;
/// Ticks between the leader's heartbeats.
pub const HEARTBEAT_TICKS: usize = 2;
/// Applied entries past the latest snapshot that trigger a new snapshot and log compaction.
pub const SNAPSHOT_ENTRIES_DEFAULT: u64 = 1024;
/// The most proposals that may wait for an outcome at once; past it propose refuses.
pub const PROPOSALS_PENDING_MAX: usize = 1024;
/// The largest encoded command one proposal may carry.
pub const PROPOSAL_BYTES_MAX: usize = 8 << 20;
/// The most entry bytes the leader packs into one append message.
pub const MESSAGE_ENTRIES_BYTES_MAX: u64 = 1 << 20;
/// Append messages in flight to one peer.
pub const INFLIGHT_MESSAGES_MAX: usize = 256;
/// Ticks a snapshot may stay unacknowledged before the leader sends it again (raft-rs waits
/// for a report that a lossy transport may never give).
pub const SNAPSHOT_RETRY_TICKS: u32 = 2 * ELECTION_TICKS as u32;

/// The raft id of a broker: raft reserves 0, Kafka node ids start at 0.
pub fn raft_id(broker: BrokerId) -> u64 {
    debug_assert!(broker.0 >= 0, "broker ids are not negative");
    broker.0 as u64 + 1
}

/// The election timeout of `node`, in ticks: between `election_ticks` and twice that, fixed
/// per node and different for any `election_ticks` consecutive broker ids. raft-rs draws it
/// at random; a fixed, staggered timeout keeps core free of randomness (a node's behaviour is
/// a function of its inputs) and still keeps two nodes from timing out together.
pub fn election_timeout_ticks(node: BrokerId, election_ticks: usize) -> usize {
    let ticks = election_ticks.max(1);
    // 7 is coprime to the default 10 ticks: consecutive ids land on distinct offsets.
    ticks + (raft_id(node) as usize).wrapping_mul(7) % ticks
}

/// The broker with raft id `id`, if it is one.
pub fn broker_of(id: u64) -> Option<BrokerId> {
    let n = id.checked_sub(1)?;
    i32::try_from(n).ok().map(BrokerId)
}

/// A node's view of the quorum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuorumConfig {
    /// This node.
    pub node: BrokerId,
    /// The voters (KRaft's `controller.quorum.voters`); the same on every node.
    pub voters: Vec<BrokerId>,
    /// The other brokers, which follow as learners; the same on every node.
    pub learners: Vec<BrokerId>,
    /// Snapshot and compact once this many entries were applied past the latest snapshot.
    pub snapshot_entries: u64,
    /// See [`ELECTION_TICKS`].
    pub election_ticks: usize,
    /// See [`HEARTBEAT_TICKS`].
    pub heartbeat_ticks: usize,
    /// See [`PROPOSALS_PENDING_MAX`].
    pub proposals_pending_max: usize,
}

impl QuorumConfig {
    /// A config with the default timing and bounds.
    pub fn new(node: BrokerId, voters: Vec<BrokerId>, learners: Vec<BrokerId>) -> Self {
        QuorumConfig {
            node,
            voters,
            learners,
            snapshot_entries: SNAPSHOT_ENTRIES_DEFAULT,
            election_ticks: ELECTION_TICKS,
            heartbeat_ticks: HEARTBEAT_TICKS,
            proposals_pending_max: PROPOSALS_PENDING_MAX,
        }
    }

    fn check(&self) -> Result<(), QuorumError> {
        let bad = |why: String| Err(QuorumError::Config(why));
        let voters: BTreeSet<BrokerId> = self.voters.iter().copied().collect();
        let learners: BTreeSet<BrokerId> = self.learners.iter().copied().collect();
        if voters.is_empty() {
            return bad("no voters".into());
        }
        if voters.len() != self.voters.len() || learners.len() != self.learners.len() {
            return bad("a voter or learner listed twice".into());
        }
        if let Some(b) = voters.intersection(&learners).next() {
            return bad(format!("broker {b} is both voter and learner"));
        }
        if let Some(b) = voters.iter().chain(&learners).find(|b| b.0 < 0) {
            return bad(format!("negative broker id {b}"));
        }
        if !voters.contains(&self.node) && !learners.contains(&self.node) {
            return bad(format!("node {} is neither voter nor learner", self.node));
        }
        if self.snapshot_entries == 0 || self.proposals_pending_max == 0 {
            return bad("snapshot_entries and proposals_pending_max must be positive".into());
        }
        Ok(())
    }

    fn conf_state(&self) -> ConfState {
        ConfState::from((
            self.voters.iter().map(|&b| raft_id(b)),
            self.learners.iter().map(|&b| raft_id(b)),
        ))
    }
}

/// A caller-chosen id for a proposal, echoed in its [`ProposalOutcome`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProposalId(pub u64);

/// What became of a proposal this node accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProposalOutcome {
    /// Committed and applied at `index`: answer the client with success.
    Committed {
        /// The proposal.
        id: ProposalId,
        /// Its raft index.
        index: u64,
    },
    /// Committed at `index`, but it no longer fit the state when applied (it was computed
    /// from a state that moved on): nothing of it applied, on any node. Run the command again
    /// on the current state.
    Rejected {
        /// The proposal.
        id: ProposalId,
        /// Its raft index.
        index: u64,
        /// Why.
        reason: RejectReason,
    },
    /// Another leader's entry took its place: it will never apply. Answer NOT_CONTROLLER (the
    /// client retries against the new controller).
    Lost {
        /// The proposal.
        id: ProposalId,
    },
    /// A snapshot from the leader covered its index before this node applied it: it may or may
    /// not have applied. Answer NOT_CONTROLLER or check the state.
    Unknown {
        /// The proposal.
        id: ProposalId,
    },
}

/// Why a committed batch did not apply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    /// The entry's data is not a metadata batch (it never is for entries this code proposed).
    #[error("the entry is not a metadata batch: {0}")]
    Undecodable(String),
    /// The record at `position` does not fit the state.
    #[error("record {position} of the batch does not apply: {error}")]
    Record {
        /// Its position in the batch.
        position: usize,
        /// Why.
        error: ApplyError,
    },
}

/// One command's records, applied at `index`.
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    /// The raft index of the entry.
    pub index: u64,
    /// The records, in the order they applied.
    pub records: Vec<MetadataRecord>,
}

/// One replica of the metadata quorum as its leader sees it (Kafka's DescribeQuorum).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaProgress {
    /// The replica's broker.
    pub node: BrokerId,
    /// The raft index of the last entry the leader knows the replica holds (on the leader
    /// itself, its last index).
    pub log_end: u64,
}

/// The metadata quorum as its leader sees it (Kafka's DescribeQuorum).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuorumDescription {
    /// The leader, the controller.
    pub leader: BrokerId,
    /// The raft term.
    pub term: u64,
    /// The commit index: what a majority of voters holds.
    pub high_watermark: u64,
    /// The voters, in broker id order.
    pub voters: Vec<ReplicaProgress>,
    /// The learners (Kafka's observers), in broker id order.
    pub observers: Vec<ReplicaProgress>,
}

/// The leader this node knows of changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaderChange {
    /// The leader (the controller), if one is known.
    pub leader: Option<BrokerId>,
    /// The raft term.
    pub term: u64,
}

/// What [`QuorumNode::poll`] hands the shell. Everything in it is already durable.
#[derive(Clone, Debug, Default)]
pub struct Output {
    /// Raft messages to send, each to its broker (the message's `to`). Send them in order; a
    /// message may be dropped (raft retries), never altered.
    pub messages: Vec<(BrokerId, Message)>,
    /// A snapshot from the leader replaced the state, as of this raft index: reconcile
    /// everything from [`QuorumNode::state`] before looking at `applied`.
    pub snapshot_installed: Option<u64>,
    /// The commands applied since the last poll, in log order: reconcile partitions.
    pub applied: Vec<Applied>,
    /// Outcomes of this node's proposals.
    pub outcomes: Vec<ProposalOutcome>,
    /// The leader changed (the latest change since the last poll).
    pub leader_change: Option<LeaderChange>,
}

/// Why the quorum node failed. After an error from [`QuorumNode::poll`] the node is poisoned:
/// drop it and reopen from storage.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum QuorumError {
    /// The configuration is invalid.
    #[error("quorum config: {0}")]
    Config(String),
    /// The log file or storage failed.
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// The durable state is inconsistent (a snapshot that does not decode, a commit index past
    /// the log).
    #[error("quorum state corrupt: {0}")]
    Corrupt(String),
    /// raft-rs refused (a storage view it does not accept).
    #[error("raft: {0}")]
    Raft(String),
    /// An earlier call failed: reopen.
    #[error("an earlier error poisoned the quorum node: reopen it")]
    Poisoned,
}

/// Why a message from a peer was not stepped. The message is dropped; raft retries. The
/// variants say who is to blame.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StepError {
    /// The peer broke the protocol (a message for another node, from a non-member, a forwarded
    /// proposal, or a snapshot that does not decode).
    #[error("protocol violation by peer: {0}")]
    Protocol(String),
    /// raft refused it (for example a response from a peer it does not track).
    #[error("raft refused the message: {0}")]
    Refused(String),
    /// The node is poisoned: reopen it.
    #[error("the quorum node is poisoned: reopen it")]
    Poisoned,
}

/// Why a proposal was not accepted. Nothing was appended.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// This node is not the leader: answer NOT_CONTROLLER (41).
    #[error("not the controller; the leader is {leader:?}")]
    NotLeader {
        /// The leader this node knows of.
        leader: Option<BrokerId>,
    },
    /// [`QuorumConfig::proposals_pending_max`] proposals wait already.
    #[error("too many proposals in flight")]
    TooManyPending,
    /// The command encodes to more than [`PROPOSAL_BYTES_MAX`] bytes.
    #[error("a command of {0} bytes exceeds the proposal limit")]
    TooLarge(usize),
    /// No records.
    #[error("an empty command")]
    Empty,
    /// raft dropped it (a leadership transfer is under way): retry shortly.
    #[error("raft dropped the proposal")]
    Dropped,
    /// The node is poisoned: reopen it.
    #[error("the quorum node is poisoned: reopen it")]
    Poisoned,
}

impl ProposeError {
    /// The Kafka error code to answer with.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProposeError::NotLeader { .. } | ProposeError::Dropped => code::NOT_CONTROLLER,
            // The client retries.
            ProposeError::TooManyPending => code::REQUEST_TIMED_OUT,
            ProposeError::TooLarge(_) => code::POLICY_VIOLATION,
            ProposeError::Empty => code::INVALID_REQUEST,
            ProposeError::Poisoned => code::UNKNOWN_SERVER_ERROR,
        }
    }
}

/// What [`QuorumNode::open`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// What the log file held.
    pub disk: DiskReport,
    /// The index of the snapshot restored (0: none).
    pub snapshot_index: u64,
    /// Entries after the snapshot.
    pub entries: u64,
    /// The term and commit index restored.
    pub term: u64,
    /// The commit index restored (entries up to it are re-applied by the first polls).
    pub commit: u64,
    /// The commit index stored, when it was past the last entry that survived (the disk lost
    /// synced entries) and `commit` was lowered to that entry.
    pub commit_lowered_from: Option<u64>,
    /// A voter whose log lost entries it had synced (a lowered commit index, or a whole frame
    /// after the damaged one): it neither votes nor campaigns until it has caught up with a
    /// leader ([`QuorumNode::is_abstaining`]).
    pub abstaining: bool,
}

#[derive(Clone, Copy, Debug)]
struct Pending {
    id: ProposalId,
    term: u64,
}

/// One member of the metadata quorum (a voter or a learner).
///
/// # Call order for the shell
/// 1. [`open`](Self::open) with the node's [`Storage`] (it replays the log; the state is
///    rebuilt as the first polls re-apply committed entries).
/// 2. Then, in one loop, one call at a time:
///    - every [`TICK_MS`]: [`tick`](Self::tick);
///    - for each raft message from a peer (decoded with [`decode_message`]):
///      [`step`](Self::step);
///    - on the leader, for each command: run it against [`state`](Self::state), then
///      [`propose`](Self::propose) its records with an id of your choice;
///    - after any of these (at least once per tick): [`poll`](Self::poll). It persists and
///      syncs what raft needs durable *before* it returns, so the shell must let it block on
///      the disk (run the quorum on its own task or I/O thread). Drain its [`Output`] in this
///      order: send `messages` (encode with [`encode_message`], route by broker id); if
///      `snapshot_installed`, reconcile from the whole state; reconcile `applied`; answer
///      `outcomes`; act on `leader_change` (a new controller starts broker sessions afresh,
///      see [`sessions`]).
/// 3. After an error from `poll`, drop the node and open it again from the storage.
pub struct QuorumNode<S: Storage> {
    config: QuorumConfig,
    raw: RawNode<LogCache>,
    disk: RaftDisk<S>,
    state: MetadataState,
    applied: u64,
    conf_state: ConfState,
    members: BTreeSet<u64>,
    pending: BTreeMap<u64, Pending>,
    out: Output,
    reported: (u64, u64),
    snapshot_ticks: BTreeMap<u64, u32>,
    /// The HardState in the last frame written.
    written_hs: HardState,
    /// This voter's log lost entries it had acknowledged: its vote could elect a leader that
    /// lacks them, so it sends no vote (or pre-vote) grants and no campaign until it holds
    /// everything a leader had committed (Protocol-Aware Recovery, Alagappan et al., FAST
    /// 2018, in its simplest form).
    abstaining: bool,
    /// The largest commit index a leader of the current term sent (before any clamping).
    leader_commit_seen: u64,
    poisoned: bool,
}

impl<S: Storage> QuorumNode<S> {
    /// Opens the node over `storage` (empty storage: a new node).
    pub fn open(config: QuorumConfig, storage: S) -> Result<(Self, OpenReport), QuorumError> {
        config.check()?;
        let (disk, recovered, disk_report) = RaftDisk::open(storage)?;
        let snapshot = recovered.snapshot;
        let snapshot_index = snapshot.get_metadata().index;
        let (state, conf_state) = if snapshot_index == 0 {
            (MetadataState::new(), config.conf_state())
        } else {
            let state = snapshot::decode_state(&snapshot.data)
                .map_err(|e| QuorumError::Corrupt(format!("stored snapshot: {e}")))?;
            (state, snapshot.get_metadata().get_conf_state().clone())
        };
        let mut hard_state = recovered.hard_state;
        let last = recovered.entries.last().map_or(snapshot_index, |e| e.index);
        // A snapshot is committed by definition.
        hard_state.commit = hard_state.commit.max(snapshot_index);
        // keel writes entries in the same frame as, or before, the hard state that commits
        // them, so a commit index past the log means the disk lost entries it had synced (a
        // damaged frame cut the replay short, or a misdirected write put a later frame first).
        // The node starts with what it has and the leader sends it the rest (raft-rs refuses a
        // commit index past the log, so lower it).
        let commit_lowered_from = (hard_state.commit > last).then(|| {
            let from = hard_state.commit;
            hard_state.commit = last;
            from
        });
        // A voter that may have lost entries it had acknowledged must not help elect a leader
        // that lacks them (raft's safety assumes it cannot lose them): it abstains until it
        // has caught up with a leader (see `abstaining`).
        let lost_synced = commit_lowered_from.is_some()
            || disk_report
                .truncated
                .as_ref()
                .is_some_and(|t| t.whole_frame_after.is_some());
        let abstaining = lost_synced
            && conf_state.voters.len() > 1
            && conf_state.voters.contains(&raft_id(config.node));
        let report = OpenReport {
            disk: disk_report,
            snapshot_index,
            entries: recovered.entries.len() as u64,
            term: hard_state.term,
            commit: hard_state.commit,
            commit_lowered_from,
            abstaining,
        };
        let written_hs = hard_state.clone();
        let cache = LogCache {
            hard_state,
            conf_state: conf_state.clone(),
            snapshot,
            entries: recovered.entries,
        };
        let election_timeout = election_timeout_ticks(config.node, config.election_ticks);
        let raft_config = raft::Config {
            id: raft_id(config.node),
            election_tick: config.election_ticks,
            // A range of one: raft-rs's draw from `rand::thread_rng` cannot change the result.
            min_election_tick: election_timeout,
            max_election_tick: election_timeout + 1,
            heartbeat_tick: config.heartbeat_ticks,
            applied: snapshot_index,
            max_size_per_msg: MESSAGE_ENTRIES_BYTES_MAX,
            max_inflight_msgs: INFLIGHT_MESSAGES_MAX,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        raft_config
            .validate()
            .map_err(|e| QuorumError::Config(e.to_string()))?;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let mut raw = RawNode::new(&raft_config, cache, &logger)
            .map_err(|e| QuorumError::Raft(e.to_string()))?;
        let members = members(&conf_state);
        if conf_state.voters == [raft_config.id] {
            // The only voter need not wait out an election timeout to lead.
            raw.campaign()
                .map_err(|e| QuorumError::Raft(e.to_string()))?;
        }
        let node = QuorumNode {
            config,
            raw,
            disk,
            state,
            applied: snapshot_index,
            conf_state,
            members,
            pending: BTreeMap::new(),
            out: Output::default(),
            reported: (0, 0),
            snapshot_ticks: BTreeMap::new(),
            written_hs,
            abstaining,
            leader_commit_seen: 0,
            poisoned: false,
        };
        Ok((node, report))
    }

    /// Advances raft's clock by one tick ([`TICK_MS`]).
    pub fn tick(&mut self) {
        if self.poisoned {
            return;
        }
        self.raw.tick();
        if self.raw.raft.state != StateRole::Leader {
            self.snapshot_ticks.clear();
            return;
        }
        // A snapshot in flight blocks replication to its peer until raft hears back; if the
        // message was lost, report a failure so that raft sends it again.
        let in_snapshot: BTreeSet<u64> = self
            .raw
            .raft
            .prs()
            .iter()
            .filter(|(_, pr)| pr.state == ProgressState::Snapshot)
            .map(|(&id, _)| id)
            .collect();
        self.snapshot_ticks.retain(|id, _| in_snapshot.contains(id));
        for id in in_snapshot {
            let ticks = self.snapshot_ticks.entry(id).or_insert(0);
            *ticks += 1;
            if *ticks >= SNAPSHOT_RETRY_TICKS {
                self.snapshot_ticks.remove(&id);
                self.raw.report_snapshot(id, SnapshotStatus::Failure);
            }
        }
    }

    /// Steps a raft message from a peer.
    pub fn step(&mut self, message: Message) -> Result<(), StepError> {
        if self.poisoned {
            return Err(StepError::Poisoned);
        }
        let me = self.raw.raft.id;
        if message.to != me {
            return Err(StepError::Protocol(format!(
                "a message for {} arrived at {me}",
                message.to
            )));
        }
        if !self.members.contains(&message.from) {
            return Err(StepError::Protocol(format!(
                "a message from {}, not a member",
                message.from
            )));
        }
        if message.get_msg_type() == MessageType::MsgPropose {
            // keel's peers never forward proposals: commands go to the controller as requests,
            // and only the leader's own `propose` appends them.
            return Err(StepError::Protocol("a forwarded proposal".into()));
        }
        let mut message = message;
        if matches!(
            message.get_msg_type(),
            MessageType::MsgHeartbeat | MessageType::MsgAppend
        ) && message.term >= self.raw.raft.term
        {
            self.leader_commit_seen = self.leader_commit_seen.max(message.commit);
        }
        if message.get_msg_type() == MessageType::MsgHeartbeat {
            // raft-rs asserts that a heartbeat's commit lies within this log. A log whose disk
            // damaged acknowledged entries (recovery cut them) would abort the broker: commit
            // what this log holds instead; the leader's next append finds the gap and sends
            // the entries again.
            let last = self.raw.raft.raft_log.last_index();
            if message.commit > last {
                message.commit = last;
            }
        }
        if message.get_msg_type() == MessageType::MsgAppendResponse
            && message.reject
            && message.term == self.raw.raft.term
            && self.raw.raft.state == StateRole::Leader
        {
            // raft-rs drops a rejection whose log end (the hint) lies below what the follower
            // acknowledged as stale, and would then never send it the entries again. It may
            // be a follower whose disk lost entries it had acknowledged (damage the replay cut
            // off): probe it again from the end it states. If the rejection really is stale,
            // this only sends it entries it already holds.
            let hint = message.reject_hint;
            if let Some(pr) = self.raw.raft.mut_prs().get_mut(message.from) {
                if hint < pr.matched {
                    pr.matched = hint;
                    pr.become_probe();
                }
            }
        }
        if message.get_msg_type() == MessageType::MsgSnapshot {
            if let Err(e) = snapshot::decode_state(&message.get_snapshot().data) {
                return Err(StepError::Protocol(format!(
                    "a snapshot that does not decode: {e}"
                )));
            }
        }
        self.raw
            .step(message)
            .map_err(|e| StepError::Refused(e.to_string()))
    }

    /// Proposes one command's records, to be applied atomically once committed. Only the
    /// leader accepts proposals. Its outcome comes from a later [`poll`](Self::poll).
    pub fn propose(
        &mut self,
        id: ProposalId,
        records: Vec<MetadataRecord>,
    ) -> Result<(), ProposeError> {
        if self.poisoned {
            return Err(ProposeError::Poisoned);
        }
        if records.is_empty() {
            return Err(ProposeError::Empty);
        }
        if self.raw.raft.state != StateRole::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader(),
            });
        }
        if self.pending.len() >= self.config.proposals_pending_max {
            return Err(ProposeError::TooManyPending);
        }
        let data = MetadataBatch { records }.encode_to_vec();
        if data.len() > PROPOSAL_BYTES_MAX {
            return Err(ProposeError::TooLarge(data.len()));
        }
        let context = codec::proposal_context(self.raw.raft.id, id.0);
        let before = self.raw.raft.raft_log.last_index();
        self.raw
            .propose(context, data)
            .map_err(|_| ProposeError::Dropped)?;
        let index = self.raw.raft.raft_log.last_index();
        assert_eq!(index, before + 1, "a proposal appends exactly one entry");
        let term = self.raw.raft.term;
        self.pending.insert(index, Pending { id, term });
        Ok(())
    }

    /// Runs raft's Ready loop: persists (and syncs) what must be durable, applies what
    /// committed, and returns what the shell must do (see [`Output`] and the type's call
    /// order). An error poisons the node.
    pub fn poll(&mut self) -> Result<Output, QuorumError> {
        if self.poisoned {
            return Err(QuorumError::Poisoned);
        }
        match self.run_ready_loop() {
            Ok(()) => {
                self.note_leader();
                Ok(std::mem::take(&mut self.out))
            }
            Err(e) => {
                self.poisoned = true;
                Err(e)
            }
        }
    }

    fn run_ready_loop(&mut self) -> Result<(), QuorumError> {
        while self.raw.has_ready() {
            let mut rd = self.raw.ready();
            self.queue_messages(rd.take_messages());
            let snapshot = rd.snapshot().clone();
            let must_sync = rd.must_sync();
            let hard_state = rd.hs().cloned();
            if !snapshot.is_empty() {
                self.install_snapshot(snapshot, rd.entries(), hard_state)?;
            } else {
                let cache = self.raw.mut_store();
                if let Some(hs) = hard_state {
                    cache.hard_state = hs;
                }
                if !rd.entries().is_empty() || rd.hs().is_some() {
                    let hs = self.raw.store().hard_state.clone();
                    self.disk.append(rd.entries(), &hs, must_sync)?;
                    self.written_hs = hs;
                    self.raw.mut_store().append(rd.entries());
                }
            }
            let committed = rd.take_committed_entries();
            self.apply_entries(committed);
            self.queue_messages(rd.take_persisted_messages());
            let mut light = self.raw.advance(rd);
            if let Some(commit) = light.commit_index() {
                // Not synced on its own: a lost commit index is learned again from the leader.
                self.raw.mut_store().hard_state.commit = commit;
            }
            self.queue_messages(light.take_messages());
            let committed = light.take_committed_entries();
            self.apply_entries(committed);
            self.raw.advance_apply();
        }
        let hs = &self.raw.store().hard_state;
        if *hs != self.written_hs {
            // Only the commit index moved (the leader's, after its own append): written without
            // a sync, so that a restart re-applies as far as it can before hearing a leader.
            let hs = hs.clone();
            self.disk.append(&[], &hs, false)?;
            self.written_hs = hs;
        }
        self.maybe_compact()
    }

    /// Whether this voter still abstains ([`OpenReport::abstaining`]).
    pub fn is_abstaining(&self) -> bool {
        self.abstaining
    }

    /// Ends the abstention once a leader is known and this log has committed everything the
    /// leader said it had: every entry committed before is then in it.
    fn maybe_end_abstention(&mut self) {
        let raft = &self.raw.raft;
        if self.abstaining
            && raft.leader_id != raft::INVALID_ID
            && self.leader_commit_seen > 0
            && raft.raft_log.committed >= self.leader_commit_seen
            && raft.raft_log.persisted >= self.leader_commit_seen
        {
            self.abstaining = false;
        }
    }

    fn queue_messages(&mut self, messages: Vec<Message>) {
        self.maybe_end_abstention();
        for m in messages {
            if self.abstaining {
                let campaign_or_grant = match m.get_msg_type() {
                    MessageType::MsgRequestVote | MessageType::MsgRequestPreVote => true,
                    MessageType::MsgRequestVoteResponse
                    | MessageType::MsgRequestPreVoteResponse => !m.reject,
                    _ => false,
                };
                if campaign_or_grant {
                    continue;
                }
            }
            match broker_of(m.to) {
                Some(to) => self.out.messages.push((to, m)),
                None => debug_assert!(false, "raft addressed a message to raft id {}", m.to),
            }
        }
    }

    fn install_snapshot(
        &mut self,
        snapshot: Snapshot,
        entries: &[Entry],
        hard_state: Option<HardState>,
    ) -> Result<(), QuorumError> {
        let index = snapshot.get_metadata().index;
        // Checked in step before raft saw it; checked again here, where a failure is ours.
        let state = snapshot::decode_state(&snapshot.data)
            .map_err(|e| QuorumError::Corrupt(format!("snapshot at {index}: {e}")))?;
        let conf_state = snapshot.get_metadata().get_conf_state().clone();
        let cache = self.raw.mut_store();
        cache.install(snapshot);
        if let Some(hs) = hard_state {
            cache.hard_state = hs;
        }
        cache.append(entries);
        let cache = self.raw.store();
        self.disk
            .rewrite(&cache.snapshot, cache.entries(), &cache.hard_state)?;
        self.written_hs = cache.hard_state.clone();
        assert!(
            index >= self.applied,
            "raft installs only snapshots past the applied index ({index} < {})",
            self.applied
        );
        self.state = state;
        self.applied = index;
        self.members = members(&conf_state);
        self.conf_state = conf_state;
        let covered: Vec<u64> = self.pending.range(..=index).map(|(&i, _)| i).collect();
        for i in covered {
            if let Some(p) = self.pending.remove(&i) {
                self.out
                    .outcomes
                    .push(ProposalOutcome::Unknown { id: p.id });
            }
        }
        self.out.applied.clear();
        self.out.snapshot_installed = Some(index);
        Ok(())
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) {
        for entry in entries {
            let index = entry.index;
            if index <= self.applied {
                continue;
            }
            assert_eq!(
                index,
                self.applied + 1,
                "committed entries apply in order, without gaps"
            );
            let result = match entry.get_entry_type() {
                EntryType::EntryNormal if entry.data.is_empty() => None, // a new leader's no-op
                EntryType::EntryNormal => Some(self.apply_batch(&entry.data)),
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    self.apply_conf_change(&entry);
                    None
                }
            };
            if let Some(Ok(records)) = &result {
                self.out.applied.push(Applied {
                    index,
                    records: records.clone(),
                });
            }
            if let Some(p) = self.pending.remove(&index) {
                let ours = p.term == entry.term;
                debug_assert!(
                    !ours
                        || codec::parse_proposal_context(&entry.context)
                            == Some((self.raw.raft.id, p.id.0)),
                    "the entry at a proposal's index and term is the proposal"
                );
                let outcome = match result {
                    Some(Ok(_)) if ours => ProposalOutcome::Committed { id: p.id, index },
                    Some(Err(reason)) if ours => ProposalOutcome::Rejected {
                        id: p.id,
                        index,
                        reason,
                    },
                    _ => ProposalOutcome::Lost { id: p.id },
                };
                self.out.outcomes.push(outcome);
            }
            self.applied = index;
        }
    }

    /// Applies one batch all or nothing.
    fn apply_batch(&mut self, data: &[u8]) -> Result<Vec<MetadataRecord>, RejectReason> {
        let batch =
            MetadataBatch::decode(data).map_err(|e| RejectReason::Undecodable(e.to_string()))?;
        if batch.records.is_empty() {
            return Err(RejectReason::Undecodable("no records".into()));
        }
        if let [record] = batch.records.as_slice() {
            // apply leaves the state unchanged when it refuses a record: no copy needed.
            self.state
                .apply(record)
                .map_err(|error| RejectReason::Record { position: 0, error })?;
        } else {
            let mut next = self.state.clone();
            for (position, record) in batch.records.iter().enumerate() {
                next.apply(record)
                    .map_err(|error| RejectReason::Record { position, error })?;
            }
            self.state = next;
        }
        Ok(batch.records)
    }

    fn apply_conf_change(&mut self, entry: &Entry) {
        let changed = if entry.get_entry_type() == EntryType::EntryConfChange {
            ConfChange::parse_from_bytes(&entry.data)
                .ok()
                .and_then(|cc| self.raw.apply_conf_change(&cc).ok())
        } else {
            ConfChangeV2::parse_from_bytes(&entry.data)
                .ok()
                .and_then(|cc| self.raw.apply_conf_change(&cc).ok())
        };
        if let Some(cs) = changed {
            self.members = members(&cs);
            self.raw.mut_store().conf_state = cs.clone();
            self.conf_state = cs;
        }
    }

    /// Takes a snapshot at the applied index and compacts the log once the applied entries
    /// past the latest snapshot reach [`QuorumConfig::snapshot_entries`].
    fn maybe_compact(&mut self) -> Result<(), QuorumError> {
        let since = self.raw.store().snapshot_index();
        if self.applied < since.saturating_add(self.config.snapshot_entries) {
            return Ok(());
        }
        self.snapshot_now()
    }

    fn snapshot_now(&mut self) -> Result<(), QuorumError> {
        use raft::Storage as _;
        let index = self.applied;
        let term = self
            .raw
            .store()
            .term(index)
            .map_err(|e| QuorumError::Raft(format!("term of applied entry {index}: {e}")))?;
        let mut snapshot = Snapshot::default();
        snapshot.data = snapshot::encode_state(&self.state).into();
        let meta = snapshot.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(self.conf_state.clone());
        let cache = self.raw.store();
        let after: Vec<Entry> = cache
            .entries()
            .iter()
            .filter(|e| e.index > index)
            .cloned()
            .collect();
        let hard_state = cache.hard_state.clone();
        self.disk.rewrite(&snapshot, &after, &hard_state)?;
        self.written_hs = hard_state;
        self.raw.mut_store().compact(snapshot);
        Ok(())
    }

    fn note_leader(&mut self) {
        let now = (self.raw.raft.leader_id, self.raw.raft.term);
        if now != self.reported {
            self.reported = now;
            self.out.leader_change = Some(LeaderChange {
                leader: broker_of(now.0),
                term: now.1,
            });
        }
    }

    // --- Queries --------------------------------------------------------------------------

    /// The applied metadata.
    pub fn state(&self) -> &MetadataState {
        &self.state
    }

    /// The raft index of the last applied entry (the broker's metadata offset).
    pub fn applied_index(&self) -> u64 {
        self.applied
    }

    /// The raft commit index this node knows.
    pub fn commit_index(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    /// The index of the latest snapshot (0: none).
    pub fn snapshot_index(&self) -> u64 {
        self.raw.store().snapshot_index()
    }

    /// This node.
    pub fn id(&self) -> BrokerId {
        self.config.node
    }

    /// The leader (the controller) this node knows of.
    pub fn leader(&self) -> Option<BrokerId> {
        broker_of(self.raw.raft.leader_id)
    }

    /// Whether this node is the leader, the controller.
    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// This node's raft role.
    pub fn role(&self) -> StateRole {
        self.raw.raft.state
    }

    /// The current raft term.
    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    /// The quorum as this node sees it if it leads (only the leader tracks the others'
    /// progress); `None` otherwise.
    pub fn describe(&self) -> Option<QuorumDescription> {
        if !self.is_leader() {
            return None;
        }
        let me = self.raw.raft.id;
        let last = self.raw.raft.raft_log.last_index();
        let progress = |nodes: &[BrokerId]| -> Vec<ReplicaProgress> {
            let mut out: Vec<ReplicaProgress> = nodes
                .iter()
                .map(|&node| {
                    let id = raft_id(node);
                    let log_end = if id == me {
                        last
                    } else {
                        self.raw.raft.prs().get(id).map_or(0, |p| p.matched)
                    };
                    ReplicaProgress { node, log_end }
                })
                .collect();
            out.sort_by_key(|r| r.node);
            out
        };
        Some(QuorumDescription {
            leader: self.config.node,
            term: self.term(),
            high_watermark: self.commit_index(),
            voters: progress(&self.config.voters),
            observers: progress(&self.config.learners),
        })
    }

    /// Proposals waiting for an outcome.
    pub fn pending_proposals(&self) -> usize {
        self.pending.len()
    }

    /// The length of the quorum's log file in bytes.
    pub fn log_bytes(&self) -> u64 {
        self.disk.len_bytes()
    }

    /// The storage, for inspection.
    pub fn storage(&self) -> &S {
        self.disk.storage()
    }

    /// Gives the storage back (to crash it and reopen, in tests and the simulator).
    pub fn into_storage(self) -> S {
        self.disk.into_storage()
    }

    /// Forces a snapshot and log compaction at the applied index now (for tests and tools).
    pub fn compact(&mut self) -> Result<(), QuorumError> {
        if self.poisoned {
            return Err(QuorumError::Poisoned);
        }
        if self.applied <= self.raw.store().snapshot_index() {
            return Ok(());
        }
        self.snapshot_now().inspect_err(|_| self.poisoned = true)
    }
}

fn members(cs: &ConfState) -> BTreeSet<u64> {
    cs.voters
        .iter()
        .chain(&cs.learners)
        .chain(&cs.voters_outgoing)
        .chain(&cs.learners_next)
        .copied()
        .collect()
}
