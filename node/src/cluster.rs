//! The broker's part in the metadata quorum: the task that drives core's [`QuorumNode`], the
//! controller's work when this node is the raft leader, and the requests every broker sends the
//! controller.
//!
//! What it owns:
//! - the quorum driver, on a thread of its own (its polls sync the raft log; a task under the
//!   simulator): it owns the [`QuorumNode`] and ticks it every
//!   [`quorum::TICK_MS`], steps raft messages from peers, proposes commands (only the raft
//!   leader, the controller, accepts them), polls (which persists and syncs), sends raft's
//!   messages, answers proposals with their outcomes, and publishes the applied state;
//! - on the controller: the broker sessions ([`BrokerSessions`]): heartbeats in, fencing and
//!   unfencing proposals out, and AlterPartition checked against the applied state;
//! - the view every other part of the broker reads: the applied [`MetadataState`], its raft
//!   index, and the controller's id.
//!
//! How commands reach the controller: a broker computes a command's records from its own
//! applied state (which may lag) and sends them to the controller ([`Cluster::propose`]). The
//! records carry what they were computed from (epochs, names, the next producer id), so
//! `MetadataState::apply` refuses a batch that no longer fits, on every node alike; the answer
//! is then [`Proposed::Rejected`], and the caller waits until its state has caught up with the
//! rejecting index and computes the command again. Heartbeats and AlterPartition go to the
//! controller as typed requests, because they are judged on the controller's soft state.
//!
//! A single broker without `controller.quorum.voters` runs the same code with itself as the
//! only voter and no peer transport.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use keel_core::controller::records::MetadataBatch;
use keel_core::controller::{
    AlterPartitionRequest, BrokerId, ControllerError, LeaderBalance, MetadataRecord, MetadataState,
    TopicId, UncleanElection,
};
use keel_core::quorum::sessions::{BrokerSessions, Heartbeat, HeartbeatReply};
use keel_core::quorum::{
    self, decode_message, encode_message, Message, ProposalId, ProposalOutcome, QuorumConfig,
    QuorumDescription, QuorumNode, ReplicaProgress,
};
use keel_core::LeaderEpoch;
use prost::Message as _;
use tokio::sync::{mpsc, oneshot, watch};

use crate::peer::{Incoming, PeerTransport};
use crate::storage::Dir;

/// Peer message kinds ([`crate::peer::Envelope::kind`]).
pub mod kind {
    /// A raft message (one-way).
    pub const RAFT: u32 = 1;
    /// A command's records, for the controller to propose.
    pub const PROPOSE: u32 = 2;
    /// A broker heartbeat, for the controller.
    pub const HEARTBEAT: u32 = 3;
    /// An AlterPartition from a partition leader, for the controller.
    pub const ALTER_PARTITION: u32 = 4;
    /// A follower broker's fetch-session request to a leader broker (all the partitions it
    /// follows there).
    pub const REPLICA_FETCH: u32 = 5;
    /// A follower asks the leader to answer its held fetch-session request now (one-way).
    pub const REPLICA_FETCH_WAKE: u32 = 6;
    /// DescribeQuorum, for the controller (kinds 7 to 9 are the transaction coordinator's).
    pub const DESCRIBE_QUORUM: u32 = 10;
}

/// How long a request to the controller waits for one to be elected and answer.
pub const CONTROLLER_WAIT: Duration = Duration::from_secs(10);
/// How long one call to a remote controller waits for its answer.
const CONTROLLER_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests queued for the quorum driver.
const DRIVER_QUEUE: usize = 4096;

/// How the metadata quorum is laid out, from the broker's configuration.
#[derive(Clone, Debug, Default)]
pub struct ClusterSettings {
    /// The voters and where they listen for peers; empty: this broker alone, its own voter.
    pub voters: Vec<(i32, SocketAddr)>,
    /// The brokers that follow the metadata log without voting.
    pub learners: Vec<(i32, SocketAddr)>,
    /// `broker.session.timeout.ms`.
    pub session_timeout_ms: u64,
    /// `broker.heartbeat.interval.ms`.
    pub heartbeat_interval_ms: u64,
    /// `unclean.leader.election.enable`.
    pub unclean: UncleanElection,
    /// `auto.leader.rebalance.enable` with `leader.imbalance.check.interval.seconds` (in ms)
    /// and `leader.imbalance.per.broker.percentage`; `None`: no leader balance.
    pub leader_balance: Option<(u64, u32)>,
    /// How peer connections are opened (`inter.broker.listener.name`); plaintext by default.
    pub peer_security: Arc<crate::peer::PeerSecurity>,
}

impl ClusterSettings {
    /// One broker on its own, with Kafka's session timings.
    pub fn single() -> Self {
        ClusterSettings {
            session_timeout_ms: quorum::sessions::BROKER_SESSION_TIMEOUT_MS,
            heartbeat_interval_ms: quorum::sessions::BROKER_HEARTBEAT_INTERVAL_MS,
            ..ClusterSettings::default()
        }
    }

    /// Whether other brokers take part (and a peer transport is needed).
    pub fn is_multi_node(&self) -> bool {
        self.voters.len() + self.learners.len() > 1
    }

    /// The address this node listens on for peers, if it has one.
    pub fn peer_address(&self, node: i32) -> Option<SocketAddr> {
        self.voters
            .iter()
            .chain(&self.learners)
            .find(|(id, _)| *id == node)
            .map(|(_, a)| *a)
    }
}

/// What became of a command's records at the controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Proposed {
    /// Committed and applied at this raft index.
    Committed(u64),
    /// Committed at this index but refused on apply: the state moved on. Catch up with the
    /// index and compute the command again.
    Rejected(u64, String),
}

type ProposeResult = Result<Proposed, ControllerError>;

/// Work for the quorum driver.
enum Request {
    Raft(Box<Message>),
    Propose {
        records: Vec<MetadataRecord>,
        reply: oneshot::Sender<ProposeResult>,
    },
    Heartbeat {
        heartbeat: Heartbeat,
        reply: oneshot::Sender<Result<HeartbeatReply, ControllerError>>,
    },
    AlterPartition {
        request: AlterPartitionRequest,
        member_epochs: Vec<i64>,
        reply: oneshot::Sender<ProposeResult>,
    },
    DescribeQuorum {
        reply: oneshot::Sender<Result<QuorumDescription, ControllerError>>,
    },
}

// ------------------------------------------------------------------------------------------
// Wire messages between brokers (prost).

#[derive(Clone, PartialEq, prost::Message)]
struct Answer {
    /// A Kafka error code; 0: none.
    #[prost(int32, tag = "1")]
    error_code: i32,
    #[prost(string, tag = "2")]
    message: String,
    /// The raft index a proposal committed (or was rejected) at.
    #[prost(uint64, tag = "3")]
    index: u64,
    #[prost(bool, tag = "4")]
    rejected: bool,
    /// Heartbeats: the broker is fenced.
    #[prost(bool, tag = "5")]
    is_fenced: bool,
    /// Heartbeats: the broker's metadata is caught up.
    #[prost(bool, tag = "6")]
    is_caught_up: bool,
    /// Heartbeats: the broker asked for a controlled shutdown and may stop now.
    #[prost(bool, tag = "7")]
    should_shut_down: bool,
    /// DescribeQuorum: the quorum as the controller sees it.
    #[prost(message, optional, tag = "8")]
    quorum: Option<QuorumMessage>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct QuorumMessage {
    #[prost(int32, tag = "1")]
    leader: i32,
    #[prost(uint64, tag = "2")]
    term: u64,
    #[prost(uint64, tag = "3")]
    high_watermark: u64,
    #[prost(message, repeated, tag = "4")]
    voters: Vec<ReplicaMessage>,
    #[prost(message, repeated, tag = "5")]
    observers: Vec<ReplicaMessage>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ReplicaMessage {
    #[prost(int32, tag = "1")]
    node: i32,
    #[prost(uint64, tag = "2")]
    log_end: u64,
}

impl From<&QuorumDescription> for QuorumMessage {
    fn from(d: &QuorumDescription) -> Self {
        let replicas = |r: &[ReplicaProgress]| {
            r.iter()
                .map(|p| ReplicaMessage {
                    node: p.node.0,
                    log_end: p.log_end,
                })
                .collect()
        };
        QuorumMessage {
            leader: d.leader.0,
            term: d.term,
            high_watermark: d.high_watermark,
            voters: replicas(&d.voters),
            observers: replicas(&d.observers),
        }
    }
}

impl From<QuorumMessage> for QuorumDescription {
    fn from(m: QuorumMessage) -> Self {
        let replicas = |r: Vec<ReplicaMessage>| {
            r.into_iter()
                .map(|p| ReplicaProgress {
                    node: BrokerId(p.node),
                    log_end: p.log_end,
                })
                .collect()
        };
        QuorumDescription {
            leader: BrokerId(m.leader),
            term: m.term,
            high_watermark: m.high_watermark,
            voters: replicas(m.voters),
            observers: replicas(m.observers),
        }
    }
}

#[derive(Clone, PartialEq, prost::Message)]
struct HeartbeatMessage {
    #[prost(int32, tag = "1")]
    broker_id: i32,
    #[prost(int64, tag = "2")]
    broker_epoch: i64,
    #[prost(uint64, tag = "3")]
    metadata_offset: u64,
    #[prost(bool, tag = "4")]
    want_fence: bool,
    #[prost(bool, tag = "5")]
    want_shut_down: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
struct AlterPartitionMessage {
    #[prost(int32, tag = "1")]
    broker_id: i32,
    #[prost(int64, tag = "2")]
    broker_epoch: i64,
    #[prost(bytes = "vec", tag = "3")]
    topic_id: Vec<u8>,
    #[prost(int32, tag = "4")]
    partition: i32,
    #[prost(int32, tag = "5")]
    leader_epoch: i32,
    #[prost(int32, tag = "6")]
    partition_epoch: i32,
    #[prost(int32, repeated, tag = "7")]
    new_isr: Vec<i32>,
    /// KIP-903: the broker epoch of each `new_isr` member as the leader saw it in its
    /// fetches (-1 unknown), or empty.
    #[prost(int64, repeated, tag = "8")]
    new_isr_epochs: Vec<i64>,
}

/// The [`ControllerError`] for a Kafka error code from a peer.
fn controller_error(code: i32, message: String) -> ControllerError {
    match code {
        3 => ControllerError::UnknownTopicOrPartition(message),
        17 => ControllerError::InvalidTopic(message),
        36 => ControllerError::TopicAlreadyExists(message),
        37 => ControllerError::InvalidPartitions(message),
        38 => ControllerError::InvalidReplicationFactor(message),
        40 => ControllerError::InvalidConfig(message),
        41 => ControllerError::NotController(message),
        42 => ControllerError::InvalidRequest(message),
        44 => ControllerError::PolicyViolation(message),
        74 => ControllerError::FencedLeaderEpoch(message),
        77 => ControllerError::StaleBrokerEpoch(message),
        95 => ControllerError::InvalidUpdateVersion(message),
        100 => ControllerError::UnknownTopicId(message),
        102 => ControllerError::BrokerIdNotRegistered(message),
        107 => ControllerError::IneligibleReplica(message),
        _ => ControllerError::UnknownServerError(message),
    }
}

fn error_answer(e: &ControllerError) -> Answer {
    Answer {
        error_code: e.code() as i32,
        message: e.to_string(),
        ..Answer::default()
    }
}

fn propose_answer(result: &ProposeResult) -> Answer {
    match result {
        Ok(Proposed::Committed(index)) => Answer {
            index: *index,
            ..Answer::default()
        },
        Ok(Proposed::Rejected(index, why)) => Answer {
            index: *index,
            rejected: true,
            message: why.clone(),
            ..Answer::default()
        },
        Err(e) => error_answer(e),
    }
}

fn decode_answer(body: &Bytes) -> Result<Answer, ControllerError> {
    let answer = Answer::decode(body.clone()).map_err(|e| {
        ControllerError::UnknownServerError(format!("an answer that does not decode: {e}"))
    })?;
    if answer.error_code != 0 {
        return Err(controller_error(answer.error_code, answer.message));
    }
    Ok(answer)
}

fn decode_proposed(body: Bytes) -> ProposeResult {
    let answer = decode_answer(&body)?;
    Ok(if answer.rejected {
        Proposed::Rejected(answer.index, answer.message)
    } else {
        Proposed::Committed(answer.index)
    })
}

fn decode_quorum(body: Bytes) -> Result<QuorumDescription, ControllerError> {
    decode_answer(&body)?
        .quorum
        .map(QuorumDescription::from)
        .ok_or_else(|| ControllerError::UnknownServerError("an answer without the quorum".into()))
}

fn decode_heartbeat_reply(body: Bytes) -> Result<HeartbeatReply, ControllerError> {
    let answer = decode_answer(&body)?;
    Ok(HeartbeatReply {
        is_fenced: answer.is_fenced,
        is_caught_up: answer.is_caught_up,
        should_shut_down: answer.should_shut_down,
        records: Vec::new(),
    })
}

// ------------------------------------------------------------------------------------------
// The view of the applied metadata.

struct View {
    state: RwLock<Arc<MetadataState>>,
    applied: watch::Sender<u64>,
    controller: watch::Sender<Option<BrokerId>>,
}

impl View {
    fn publish(&self, state: &MetadataState, index: u64) {
        *self.state.write().expect("metadata view poisoned") = Arc::new(state.clone());
        self.applied.send_replace(index);
    }
}

/// The broker's handle on the metadata quorum.
pub struct Cluster {
    node: BrokerId,
    settings: ClusterSettings,
    view: Arc<View>,
    driver: mpsc::Sender<Request>,
    peers: Option<Arc<PeerTransport>>,
}

/// Why the quorum could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("metadata quorum: {0}")]
    Quorum(String),
    #[error("cannot listen for peers on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    #[error("cannot start the quorum driver: {0}")]
    Driver(std::io::Error),
}

impl Cluster {
    /// Opens the quorum node over `storage`, starts its driver and, with other brokers, the
    /// peer transport. Returns the messages from peers for the caller to dispatch
    /// ([`Cluster::handle_peer`] takes the quorum's kinds).
    pub async fn start(
        node: i32,
        settings: ClusterSettings,
        storage: Dir,
    ) -> Result<(Arc<Cluster>, Option<mpsc::Receiver<Incoming>>), ClusterError> {
        let me = BrokerId(node);
        let (voters, learners) = if settings.voters.is_empty() {
            (vec![me], Vec::new())
        } else {
            (
                settings
                    .voters
                    .iter()
                    .map(|(id, _)| BrokerId(*id))
                    .collect(),
                settings
                    .learners
                    .iter()
                    .map(|(id, _)| BrokerId(*id))
                    .collect(),
            )
        };
        let config = QuorumConfig::new(me, voters, learners);
        let (quorum, report) = QuorumNode::open(config.clone(), storage.clone())
            .map_err(|e| ClusterError::Quorum(e.to_string()))?;
        if report.disk != Default::default() || report.commit_lowered_from.is_some() {
            tracing::warn!(?report, "metadata log recovered");
        }
        let (peers, incoming) = if settings.is_multi_node() {
            let address = settings.peer_address(node).ok_or_else(|| {
                ClusterError::Quorum(format!("node {node} is neither voter nor learner"))
            })?;
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .map_err(|e| ClusterError::Listen(address, e))?;
            let addresses: BTreeMap<i32, SocketAddr> = settings
                .voters
                .iter()
                .chain(&settings.learners)
                .copied()
                .collect();
            let (peers, incoming) =
                PeerTransport::start(node, listener, addresses, settings.peer_security.clone());
            (Some(peers), Some(incoming))
        } else {
            (None, None)
        };
        let view = Arc::new(View {
            state: RwLock::new(Arc::new(quorum.state().clone())),
            applied: watch::Sender::new(quorum.applied_index()),
            controller: watch::Sender::new(quorum.leader()),
        });
        let (tx, rx) = mpsc::channel(DRIVER_QUEUE);
        let driver = Driver {
            quorum,
            config,
            storage,
            sessions: BrokerSessions::with_timeout(settings.session_timeout_ms, settings.unclean),
            balance: settings
                .leader_balance
                .map(|(interval_ms, percentage)| LeaderBalance::new(interval_ms, percentage)),
            waiters: BTreeMap::new(),
            next_id: 1,
            view: view.clone(),
            peers: peers.clone(),
            clock: crate::clock::Clock::new(),
        };
        driver.spawn(rx)?;
        let cluster = Arc::new(Cluster {
            node: me,
            settings,
            view,
            driver: tx,
            peers,
        });
        Ok((cluster, incoming))
    }

    /// The peer transport (none for a single broker).
    pub fn peers(&self) -> Option<&Arc<PeerTransport>> {
        self.peers.as_ref()
    }

    /// The applied metadata.
    pub fn state(&self) -> Arc<MetadataState> {
        self.view
            .state
            .read()
            .expect("metadata view poisoned")
            .clone()
    }

    /// The raft index of the applied metadata.
    pub fn applied_index(&self) -> u64 {
        *self.view.applied.borrow()
    }

    /// Wakes when the applied metadata changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.view.applied.subscribe()
    }

    /// Waits until the applied metadata reaches `index` (at most [`CONTROLLER_WAIT`]).
    pub async fn wait_applied(&self, index: u64) -> bool {
        let mut applied = self.view.applied.subscribe();
        let reached =
            tokio::time::timeout(CONTROLLER_WAIT, applied.wait_for(|i| *i >= index)).await;
        matches!(reached, Ok(Ok(_)))
    }

    /// The controller (the raft leader), if one is known.
    pub fn controller(&self) -> Option<BrokerId> {
        *self.view.controller.borrow()
    }

    /// Sends a command's records to the controller; waits for their outcome. NOT_CONTROLLER
    /// after [`CONTROLLER_WAIT`] without a controller that answers.
    pub async fn propose(&self, records: Vec<MetadataRecord>) -> ProposeResult {
        let body = Bytes::from(MetadataBatch { records }.encode_to_vec());
        self.ask_controller(
            kind::PROPOSE,
            body,
            |body, reply| {
                // Local invariant: `body` is the batch encoded just above.
                let records =
                    MetadataBatch::decode(body).map_or_else(|_| Vec::new(), |b| b.records);
                Request::Propose { records, reply }
            },
            decode_proposed,
            CONTROLLER_WAIT,
        )
        .await
    }

    /// Sends a heartbeat to the controller.
    pub async fn heartbeat(&self, heartbeat: Heartbeat) -> Result<HeartbeatReply, ControllerError> {
        let body = Bytes::from(
            HeartbeatMessage {
                broker_id: heartbeat.broker_id.0,
                broker_epoch: heartbeat.broker_epoch,
                metadata_offset: heartbeat.metadata_offset,
                want_fence: heartbeat.want_fence,
                want_shut_down: heartbeat.want_shut_down,
            }
            .encode_to_vec(),
        );
        self.ask_controller(
            kind::HEARTBEAT,
            body,
            move |_, reply| Request::Heartbeat {
                heartbeat: heartbeat.clone(),
                reply,
            },
            decode_heartbeat_reply,
            // A heartbeat is stale once the next one is due.
            Duration::from_millis(self.settings.heartbeat_interval_ms.max(100)),
        )
        .await
    }

    /// Sends an ISR change to the controller, with the broker epoch each new ISR member had in
    /// the fetches the leader judged it by (KIP-903; -1 unknown; in `new_isr` order).
    pub async fn alter_partition(
        &self,
        request: AlterPartitionRequest,
        member_epochs: Vec<i64>,
    ) -> ProposeResult {
        let body = Bytes::from(alter_partition_message(&request, &member_epochs).encode_to_vec());
        self.ask_controller(
            kind::ALTER_PARTITION,
            body,
            move |_, reply| Request::AlterPartition {
                request: request.clone(),
                member_epochs: member_epochs.clone(),
                reply,
            },
            decode_proposed,
            CONTROLLER_WAIT,
        )
        .await
    }

    /// Describes the metadata quorum, as its leader (the controller) sees it.
    pub async fn describe_quorum(&self) -> Result<QuorumDescription, ControllerError> {
        self.ask_controller(
            kind::DESCRIBE_QUORUM,
            Bytes::new(),
            |_, reply| Request::DescribeQuorum { reply },
            decode_quorum,
            CONTROLLER_WAIT,
        )
        .await
    }

    /// Asks the controller: the local driver when this node is the controller, else a peer
    /// call. Retries NOT_CONTROLLER (no controller yet, or it moved) for up to `wait`.
    async fn ask_controller<T>(
        &self,
        kind: u32,
        body: Bytes,
        local: impl Fn(Bytes, oneshot::Sender<Result<T, ControllerError>>) -> Request,
        remote: impl Fn(Bytes) -> Result<T, ControllerError>,
        wait: Duration,
    ) -> Result<T, ControllerError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut controller = self.view.controller.subscribe();
        loop {
            let current = *controller.borrow_and_update();
            let result = match current {
                Some(c) if c == self.node => self.ask_driver(|tx| local(body.clone(), tx)).await,
                Some(c) => match &self.peers {
                    None => Err(ControllerError::NotController(format!(
                        "no transport to {c}"
                    ))),
                    Some(peers) => {
                        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                        let call =
                            peers.call(c.0, kind, body.clone(), CONTROLLER_CALL_TIMEOUT.min(left));
                        // A controller that died holds the call until its timeout: give up on
                        // it as soon as raft names another (or none).
                        tokio::select! {
                            answer = call => match answer {
                                Ok(envelope) => remote(envelope.body),
                                Err(e) => Err(ControllerError::NotController(e.to_string())),
                            },
                            _ = controller.changed() => Err(ControllerError::NotController(
                                "the controller changed".into(),
                            )),
                        }
                    }
                },
                None => Err(ControllerError::NotController(
                    "no controller is elected yet".into(),
                )),
            };
            match result {
                Err(ControllerError::NotController(why))
                    if tokio::time::Instant::now() < deadline =>
                {
                    tracing::debug!("controller request: {why}; retrying");
                    // Wait for a new controller, or retry shortly in case this one recovers.
                    let _ = tokio::time::timeout(Duration::from_millis(200), controller.changed())
                        .await;
                }
                other => return other,
            }
        }
    }

    /// Handles a message from a peer if it is one of the quorum's kinds (raft messages and
    /// requests for the controller); returns it otherwise.
    pub fn handle_peer(self: &Arc<Self>, incoming: Incoming) -> Option<Incoming> {
        match incoming.envelope.kind {
            kind::RAFT => {
                match decode_message(&incoming.envelope.body) {
                    Ok(m) => {
                        // Dropped when the driver is behind: raft retries.
                        let _ = self.driver.try_send(Request::Raft(Box::new(m)));
                    }
                    Err(e) => tracing::warn!(from = incoming.from, "raft message: {e}"),
                }
                None
            }
            kind::PROPOSE | kind::HEARTBEAT | kind::ALTER_PARTITION | kind::DESCRIBE_QUORUM => {
                let cluster = self.clone();
                tokio::spawn(async move {
                    let answer = cluster.serve_controller_request(&incoming).await;
                    if let Some(peers) = &cluster.peers {
                        let _ = peers.respond(
                            &incoming,
                            incoming.envelope.kind,
                            Bytes::from(answer.encode_to_vec()),
                        );
                    }
                });
                None
            }
            _ => Some(incoming),
        }
    }

    /// A request from another broker for this node as the controller. Never forwarded again:
    /// a node that is not the controller answers NOT_CONTROLLER.
    async fn serve_controller_request(&self, incoming: &Incoming) -> Answer {
        let body = incoming.envelope.body.clone();
        let bad = |e: prost::DecodeError| {
            error_answer(&ControllerError::InvalidRequest(format!(
                "a request that does not decode: {e}"
            )))
        };
        match incoming.envelope.kind {
            kind::PROPOSE => {
                let records = match MetadataBatch::decode(body) {
                    Ok(b) => b.records,
                    Err(e) => return bad(e),
                };
                propose_answer(
                    &self
                        .ask_driver(|reply| Request::Propose { records, reply })
                        .await,
                )
            }
            kind::ALTER_PARTITION => {
                let m = match AlterPartitionMessage::decode(body) {
                    Ok(m) => m,
                    Err(e) => return bad(e),
                };
                let Some(topic_id) = TopicId::from_slice(&m.topic_id) else {
                    return error_answer(&ControllerError::UnknownTopicId(
                        "a topic id of the wrong length".into(),
                    ));
                };
                let request = AlterPartitionRequest {
                    broker_id: BrokerId(m.broker_id),
                    broker_epoch: m.broker_epoch,
                    topic_id,
                    partition: m.partition,
                    leader_epoch: LeaderEpoch(m.leader_epoch),
                    partition_epoch: m.partition_epoch,
                    new_isr: m.new_isr.into_iter().map(BrokerId).collect(),
                };
                let member_epochs = m.new_isr_epochs;
                propose_answer(
                    &self
                        .ask_driver(|reply| Request::AlterPartition {
                            request,
                            member_epochs,
                            reply,
                        })
                        .await,
                )
            }
            kind::DESCRIBE_QUORUM => {
                match self
                    .ask_driver(|reply| Request::DescribeQuorum { reply })
                    .await
                {
                    Ok(d) => Answer {
                        quorum: Some(QuorumMessage::from(&d)),
                        ..Answer::default()
                    },
                    Err(e) => error_answer(&e),
                }
            }
            _ => {
                let m = match HeartbeatMessage::decode(body) {
                    Ok(m) => m,
                    Err(e) => return bad(e),
                };
                let heartbeat = Heartbeat {
                    broker_id: BrokerId(m.broker_id),
                    broker_epoch: m.broker_epoch,
                    metadata_offset: m.metadata_offset,
                    want_fence: m.want_fence,
                    want_shut_down: m.want_shut_down,
                };
                match self
                    .ask_driver(|reply| Request::Heartbeat { heartbeat, reply })
                    .await
                {
                    Ok(reply) => Answer {
                        is_fenced: reply.is_fenced,
                        is_caught_up: reply.is_caught_up,
                        should_shut_down: reply.should_shut_down,
                        ..Answer::default()
                    },
                    Err(e) => error_answer(&e),
                }
            }
        }
    }

    /// Hands a request to this node's quorum driver and waits for its answer.
    async fn ask_driver<T>(
        &self,
        request: impl FnOnce(oneshot::Sender<Result<T, ControllerError>>) -> Request,
    ) -> Result<T, ControllerError> {
        let (tx, rx) = oneshot::channel();
        if self.driver.send(request(tx)).await.is_err() {
            return Err(ControllerError::NotController(
                "the quorum driver stopped".into(),
            ));
        }
        rx.await
            .unwrap_or_else(|_| Err(ControllerError::NotController("no outcome".into())))
    }
}

fn alter_partition_message(r: &AlterPartitionRequest, epochs: &[i64]) -> AlterPartitionMessage {
    AlterPartitionMessage {
        broker_id: r.broker_id.0,
        broker_epoch: r.broker_epoch,
        topic_id: r.topic_id.0.to_vec(),
        partition: r.partition,
        leader_epoch: r.leader_epoch.0,
        partition_epoch: r.partition_epoch,
        new_isr: r.new_isr.iter().map(|b| b.0).collect(),
        new_isr_epochs: epochs.to_vec(),
    }
}

// ------------------------------------------------------------------------------------------
// The driver.

struct Driver {
    quorum: QuorumNode<Dir>,
    config: QuorumConfig,
    /// A handle on the quorum's storage, to reopen the node after an error.
    storage: Dir,
    sessions: BrokerSessions,
    /// The leader balance's timer (`auto.leader.rebalance.enable`), if it is on.
    balance: Option<LeaderBalance>,
    /// Who waits for each proposal's outcome.
    waiters: BTreeMap<u64, oneshot::Sender<ProposeResult>>,
    next_id: u64,
    view: Arc<View>,
    peers: Option<Arc<PeerTransport>>,
    /// The monotonic clock of broker sessions ([`crate::clock`]).
    clock: crate::clock::Clock,
}

impl Driver {
    /// Runs the driver on a thread of its own, with a single-threaded runtime for its timer
    /// and channels: its polls persist raft's Ready (writes and fsyncs of the raft log) and
    /// must not hold one of the runtime's workers, which serve clients and replication, for
    /// the length of a disk sync. The thread ends with the driver, when the last handle on
    /// its request queue is dropped. Under the simulator, which runs no threads, it is a task.
    fn spawn(self, requests: mpsc::Receiver<Request>) -> Result<(), ClusterError> {
        #[cfg(madsim)]
        {
            tokio::spawn(self.run(requests));
            Ok(())
        }
        #[cfg(not(madsim))]
        {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(ClusterError::Driver)?;
            std::thread::Builder::new()
                .name("keel-quorum".into())
                .spawn(move || runtime.block_on(self.run(requests)))
                .map_err(ClusterError::Driver)?;
            Ok(())
        }
    }

    async fn run(mut self, mut requests: mpsc::Receiver<Request>) {
        let mut tick = tokio::time::interval(Duration::from_millis(quorum::TICK_MS));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.poll();
        loop {
            tokio::select! {
                _ = tick.tick() => self.tick(),
                request = requests.recv() => match request {
                    None => return,
                    Some(r) => self.handle(r),
                },
            }
            // Take whatever else is queued before polling: one sync for all of it.
            while let Ok(r) = requests.try_recv() {
                self.handle(r);
            }
            self.poll();
        }
    }

    fn now_ms(&self) -> u64 {
        self.clock.now_ms().max(0) as u64
    }

    fn tick(&mut self) {
        self.quorum.tick();
        if !self.quorum.is_leader() {
            return;
        }
        let due = self.sessions.expire(self.now_ms(), self.quorum.state());
        for (broker, records) in due {
            tracing::info!("broker {broker} missed its heartbeats: fencing it");
            self.propose(records, None);
        }
        let elections = self.sessions.elections(
            self.now_ms(),
            self.quorum.state(),
            self.quorum.applied_index(),
        );
        if !elections.is_empty() {
            tracing::info!("electing leaders missing from the applied state");
            self.propose(elections, None);
        }
        let now_ms = self.now_ms();
        if let Some(balance) = &mut self.balance {
            let records = balance.poll(now_ms, self.quorum.state());
            if !records.is_empty() {
                tracing::info!(
                    "leader balance: {} preferred leader elections",
                    records.len()
                );
                self.propose(records, None);
            }
        }
    }

    fn handle(&mut self, request: Request) {
        match request {
            Request::Raft(m) => {
                if let Err(e) = self.quorum.step(*m) {
                    tracing::debug!("raft message refused: {e}");
                }
            }
            Request::Propose { records, reply } => self.propose(records, Some(reply)),
            Request::Heartbeat { heartbeat, reply } => {
                if !self.quorum.is_leader() {
                    let _ = reply.send(Err(self.not_controller()));
                    return;
                }
                let result = self.sessions.heartbeat(
                    self.now_ms(),
                    &heartbeat,
                    self.quorum.state(),
                    self.quorum.applied_index(),
                );
                if let Ok(r) = &result {
                    if !r.records.is_empty() {
                        if r.is_fenced {
                            tracing::info!(
                                "broker {} caught up: unfencing it",
                                heartbeat.broker_id
                            );
                        } else if heartbeat.want_shut_down {
                            tracing::info!(
                                "broker {} is shutting down: fencing it and moving its \
                                 leaderships (controlled shutdown)",
                                heartbeat.broker_id
                            );
                        } else {
                            tracing::info!(
                                "broker {} asks to be fenced: fencing it",
                                heartbeat.broker_id
                            );
                        }
                        self.propose(r.records.clone(), None);
                    }
                }
                let _ = reply.send(result);
            }
            Request::DescribeQuorum { reply } => {
                let _ = reply.send(self.quorum.describe().ok_or_else(|| self.not_controller()));
            }
            Request::AlterPartition {
                request,
                member_epochs,
                reply,
            } => {
                if !self.quorum.is_leader() {
                    let _ = reply.send(Err(self.not_controller()));
                    return;
                }
                match self
                    .quorum
                    .state()
                    .alter_partition_with_epochs(&request, &member_epochs)
                {
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                    Ok((_, records)) if records.is_empty() => {
                        let _ = reply.send(Ok(Proposed::Committed(self.quorum.applied_index())));
                    }
                    Ok((_, records)) => self.propose(records, Some(reply)),
                }
            }
        }
    }

    fn not_controller(&self) -> ControllerError {
        ControllerError::NotController(match self.quorum.leader() {
            Some(l) => format!("the controller is broker {l}"),
            None => "no controller is elected yet".into(),
        })
    }

    fn propose(
        &mut self,
        records: Vec<MetadataRecord>,
        reply: Option<oneshot::Sender<ProposeResult>>,
    ) {
        let id = self.next_id;
        self.next_id += 1;
        match self.quorum.propose(ProposalId(id), records) {
            Ok(()) => {
                if let Some(reply) = reply {
                    self.waiters.insert(id, reply);
                }
            }
            Err(e) => {
                if let Some(reply) = reply {
                    let error = if e.code() == keel_core::error_code::NOT_CONTROLLER {
                        self.not_controller()
                    } else {
                        ControllerError::UnknownServerError(e.to_string())
                    };
                    let _ = reply.send(Err(error));
                }
            }
        }
    }

    fn poll(&mut self) {
        let out = match self.quorum.poll() {
            Ok(out) => out,
            Err(e) => {
                tracing::error!("metadata quorum failed: {e}; reopening it from disk");
                self.reopen();
                return;
            }
        };
        if let Some(peers) = &self.peers {
            for (to, message) in &out.messages {
                if let Err(e) = peers.send(to.0, kind::RAFT, Bytes::from(encode_message(message))) {
                    tracing::debug!("raft message to {to} dropped: {e}");
                }
            }
        }
        for outcome in out.outcomes {
            let (id, result) = match outcome {
                ProposalOutcome::Committed { id, index } => (id, Ok(Proposed::Committed(index))),
                ProposalOutcome::Rejected { id, index, reason } => {
                    (id, Ok(Proposed::Rejected(index, reason.to_string())))
                }
                ProposalOutcome::Lost { id } | ProposalOutcome::Unknown { id } => (
                    id,
                    Err(ControllerError::NotController(
                        "the controller changed before the command applied".into(),
                    )),
                ),
            };
            if let Some(reply) = self.waiters.remove(&id.0) {
                let _ = reply.send(result);
            }
        }
        if let Some(change) = out.leader_change {
            tracing::info!(
                term = change.term,
                "the controller is now {:?}",
                change.leader
            );
            self.sessions.reset();
            if let Some(balance) = &mut self.balance {
                balance.reset();
            }
            self.view.controller.send_replace(change.leader);
        }
        // Rejected entries move the applied index without changing the state: publish the
        // index anyway, for those waiting to catch up with it. Only a higher one: a quorum
        // reopened from a damaged log applies from further back, and publishing that would
        // take the broker's view back to a state before topics it holds existed (it removed
        // their replicas as deleted: simulator seeds 281 and 655 before the batched fetch
        // sessions). Committed state never changes, so the view stays right until the
        // reopened quorum has caught up past it.
        if self.quorum.applied_index() > *self.view.applied.borrow() {
            self.view
                .publish(self.quorum.state(), self.quorum.applied_index());
        }
    }

    /// Replaces a failed quorum node with one reopened from its storage (what was synced
    /// survives; proposals in flight get NOT_CONTROLLER and are retried by their senders).
    fn reopen(&mut self) {
        for (_, reply) in std::mem::take(&mut self.waiters) {
            let _ = reply.send(Err(ControllerError::NotController(
                "the metadata quorum restarted".into(),
            )));
        }
        match QuorumNode::open(self.config.clone(), self.storage.clone()) {
            Ok((quorum, report)) => {
                tracing::warn!(?report, "metadata quorum reopened");
                self.quorum = quorum;
                self.sessions.reset();
            }
            Err(e) => tracing::error!("reopening the metadata quorum failed: {e}"),
        }
    }
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use super::*;

    /// The quorum driver needs none of the runtime's workers: on a single-threaded runtime
    /// whose only thread is kept busy (as a worker is by a long disk sync), a single voter
    /// still elects itself controller and applies. Were the driver a task of that runtime,
    /// it would never run.
    #[tokio::test(flavor = "current_thread")]
    async fn the_quorum_driver_runs_beside_a_blocked_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Dir::File(crate::storage::FileStorage::open(dir.path()).unwrap());
        let (cluster, _) = Cluster::start(1, ClusterSettings::single(), storage)
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while cluster.controller() != Some(BrokerId(1)) || cluster.applied_index() == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "no controller after 20 s while the runtime's thread was blocked"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}
