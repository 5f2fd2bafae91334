//! Replication between brokers: followers' fetch loops, the leader's answers to them, the
//! replica timers (ISR shrink, fetch backoff), and AlterPartition requests to the controller.
//! The rules are core's ([`keel_core::partition`], whose call order this follows); this module
//! carries them over the peer transport.
//!
//! A follower fetch asks for the batches from its log end offset and reports its durable end;
//! the leader answers at once when it has batches or a newer high watermark for that follower,
//! and otherwise waits up to [`REPLICA_FETCH_WAIT`] for either. After appending, a follower
//! fetches again only once its sync completed, so that the durable end it reports (and with it
//! the leader's high watermark) moves as soon as possible.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use keel_core::batch::Batch;
use keel_core::controller::{AlterPartitionRequest, BrokerId};
use keel_core::partition::{
    code, FetchError, FetchOutcome, FetchPayload, FetchRequest, FetchResponse, ReplicaError, Role,
};
use keel_core::{LeaderEpoch, Offset};
use prost::Message as _;
use tokio::sync::mpsc;

use super::{now_ms, Broker, PartitionHandle};
use crate::cluster::{kind, Cluster, Proposed};
use crate::peer::{Body, Incoming};

/// The longest a leader holds a follower's fetch that has nothing new.
pub const REPLICA_FETCH_WAIT: Duration = Duration::from_millis(500);
/// How long a follower waits for the leader's answer before backing off.
const REPLICA_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the replica timers run.
const TIMER_INTERVAL: Duration = Duration::from_millis(100);
/// How long a follower waits for its own sync before fetching anyway.
const SYNC_WAIT: Duration = Duration::from_secs(5);

#[derive(Clone, PartialEq, prost::Message)]
struct ReplicaFetchMessage {
    #[prost(string, tag = "1")]
    topic: String,
    #[prost(bytes = "vec", tag = "2")]
    topic_id: Vec<u8>,
    #[prost(int32, tag = "3")]
    partition: i32,
    #[prost(int32, tag = "4")]
    replica: i32,
    #[prost(int32, tag = "5")]
    leader_epoch: i32,
    #[prost(int64, tag = "6")]
    fetch_offset: i64,
    #[prost(int32, tag = "7")]
    last_fetched_epoch: i32,
    #[prost(int64, tag = "8")]
    durable_end: i64,
    #[prost(uint64, tag = "9")]
    max_bytes: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
struct ReplicaFetchAnswer {
    /// A Kafka error code; 0: none.
    #[prost(int32, tag = "1")]
    error_code: i32,
    #[prost(string, tag = "2")]
    message: String,
    #[prost(int32, tag = "3")]
    leader_epoch: i32,
    #[prost(int64, tag = "4")]
    high_watermark: i64,
    #[prost(int64, tag = "5")]
    log_start: i64,
    #[prost(int64, tag = "6")]
    log_end: i64,
    /// Whole batches, as stored, one after another.
    #[prost(bytes = "bytes", tag = "7")]
    records: Bytes,
    #[prost(bool, tag = "8")]
    diverging: bool,
    #[prost(int32, tag = "9")]
    diverging_epoch: i32,
    #[prost(int64, tag = "10")]
    diverging_end_offset: i64,
    #[prost(bool, tag = "11")]
    offset_out_of_range: bool,
}

fn error_answer(error_code: i16, message: String) -> ReplicaFetchAnswer {
    ReplicaFetchAnswer {
        error_code: error_code as i32,
        message,
        ..ReplicaFetchAnswer::default()
    }
}

/// The answer to send: everything but the batches, and the batches (as stored) to send after
/// it, as the answer's `records` field (see [`answer_body`]).
fn encode_response(response: FetchResponse) -> (ReplicaFetchAnswer, Vec<Bytes>) {
    let mut answer = ReplicaFetchAnswer {
        leader_epoch: response.leader_epoch.0,
        high_watermark: response.high_watermark.0,
        log_start: response.log_start.0,
        log_end: response.log_end.0,
        ..ReplicaFetchAnswer::default()
    };
    let mut records = Vec::new();
    match response.payload {
        FetchPayload::Records(batches) => {
            records = batches.into_iter().map(|b| b.bytes().clone()).collect();
        }
        FetchPayload::Diverging { epoch, end_offset } => {
            answer.diverging = true;
            answer.diverging_epoch = epoch.0;
            answer.diverging_end_offset = end_offset.0;
        }
        FetchPayload::OffsetOutOfRange => answer.offset_out_of_range = true,
    }
    (answer, records)
}

/// The peer message body of `answer` with `records` as its `records` field: prost's encoding
/// of the answer with them, the batches sent from the buffers they were read into. `answer`'s
/// own `records` must be empty; the field (tag 7) goes last, after fields 8 to 11, which are
/// at their defaults (left out) whenever there are records.
fn answer_body(answer: &ReplicaFetchAnswer, records: Vec<Bytes>) -> Body {
    debug_assert!(answer.records.is_empty());
    let mut body = Body::new();
    body.push_slice(&answer.encode_to_vec());
    let len: usize = records.iter().map(Bytes::len).sum();
    if len > 0 {
        let mut key = Vec::with_capacity(11);
        prost::encoding::encode_key(7, prost::encoding::WireType::LengthDelimited, &mut key);
        prost::encoding::encode_varint(len as u64, &mut key);
        body.push_slice(&key);
        for r in records {
            body.push(r);
        }
    }
    body
}

/// The leader's answer as core's [`FetchResponse`]; `Err` for an error code or batches that do
/// not parse (a protocol violation: the follower backs off and fetches again).
fn decode_response(answer: ReplicaFetchAnswer) -> Result<FetchResponse, String> {
    if answer.error_code != 0 {
        return Err(format!("error {}: {}", answer.error_code, answer.message));
    }
    let payload = if answer.diverging {
        FetchPayload::Diverging {
            epoch: LeaderEpoch(answer.diverging_epoch),
            end_offset: Offset(answer.diverging_end_offset),
        }
    } else if answer.offset_out_of_range {
        FetchPayload::OffsetOutOfRange
    } else {
        let mut batches = Vec::new();
        let mut rest = answer.records;
        while !rest.is_empty() {
            match Batch::parse_prefix(&rest) {
                Ok(Some(batch)) => {
                    let _ = rest.split_to(batch.size());
                    batches.push(batch);
                }
                Ok(None) => return Err("a truncated batch from the leader".into()),
                Err(e) => return Err(format!("a batch from the leader: {e}")),
            }
        }
        FetchPayload::Records(batches)
    };
    Ok(FetchResponse {
        leader_epoch: LeaderEpoch(answer.leader_epoch),
        high_watermark: Offset(answer.high_watermark),
        log_start: Offset(answer.log_start),
        log_end: Offset(answer.log_end),
        payload,
    })
}

/// Dispatches messages from peers: the quorum's to the cluster, replica fetches to the
/// partitions.
pub async fn dispatch_peers(
    broker: Weak<Broker>,
    cluster: Arc<Cluster>,
    mut incoming: mpsc::Receiver<Incoming>,
) {
    while let Some(message) = incoming.recv().await {
        let Some(message) = cluster.handle_peer(message) else {
            continue;
        };
        match message.envelope.kind {
            kind::REPLICA_FETCH => {
                let Some(broker) = broker.upgrade() else {
                    return;
                };
                tokio::spawn(async move {
                    let (answer, records) = broker
                        .serve_replica_fetch(message.envelope.body.clone())
                        .await;
                    if let Some(peers) = broker.cluster.peers() {
                        let body = answer_body(&answer, records);
                        let _ = peers.respond_body(&message, kind::REPLICA_FETCH, body);
                    }
                });
            }
            other => tracing::warn!(
                from = message.from,
                "a peer message of unknown kind {other}"
            ),
        }
    }
}

impl Broker {
    /// The leader's side of a follower's fetch.
    async fn serve_replica_fetch(&self, body: Bytes) -> (ReplicaFetchAnswer, Vec<Bytes>) {
        let error = |code: i16, message: String| (error_answer(code, message), Vec::new());
        let m = match ReplicaFetchMessage::decode(body) {
            Ok(m) => m,
            Err(e) => return error(code::CORRUPT_MESSAGE, format!("undecodable: {e}")),
        };
        let Some(p) = self
            .replica(&m.topic, m.partition)
            .filter(|p| p.topic_id.0[..] == m.topic_id[..])
        else {
            return error(
                code::NOT_LEADER_OR_FOLLOWER,
                format!("no replica of {}-{} here", m.topic, m.partition),
            );
        };
        let request = FetchRequest {
            replica: BrokerId(m.replica),
            leader_epoch: LeaderEpoch(m.leader_epoch),
            fetch_offset: Offset(m.fetch_offset),
            last_fetched_epoch: LeaderEpoch(m.last_fetched_epoch),
            durable_end: Offset(m.durable_end),
            max_bytes: m.max_bytes.min(crate::peer::FRAME_BYTES_MAX as u64 / 2) as usize,
        };
        let deadline = tokio::time::Instant::now() + REPLICA_FETCH_WAIT;
        let mut activity = p.activity.subscribe();
        loop {
            activity.borrow_and_update();
            let (result, committed) = p.with(|r| {
                (
                    r.handle_follower_fetch(now_ms(), &request),
                    r.committed_end(),
                )
            });
            // The follower's durable end may commit writes: answer acks=all produces now, and
            // persist and expose the high watermark on the sync thread (the planted bug
            // exposes it at once, before any sync).
            p.note_committed(committed);
            self.queue_sync(&p);
            if keel_core::planted::active(keel_core::planted::Bug::HighWatermarkWithoutSync) {
                p.publish_high_watermark(p.with(|r| r.high_watermark()));
            }
            let response = match result {
                Err(e) => {
                    if let FetchError::Log(e) = &e {
                        p.read_failed(e);
                    }
                    return error(e.code(), e.to_string());
                }
                Ok(r) => r,
            };
            let nothing_new = matches!(&response.payload, FetchPayload::Records(b) if b.is_empty())
                && p.hw_sent
                    .lock()
                    .expect("hw_sent poisoned")
                    .get(&request.replica)
                    == Some(&response.high_watermark);
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if !nothing_new || left.is_zero() || p.deleted.load(Ordering::SeqCst) {
                p.hw_sent
                    .lock()
                    .expect("hw_sent poisoned")
                    .insert(request.replica, response.high_watermark);
                return encode_response(response);
            }
            let _ = tokio::time::timeout(left, activity.changed()).await;
        }
    }

    /// Sends the partition's pending AlterPartition, if any, to the controller.
    fn send_alter_partition(self: &Arc<Self>, p: &Arc<PartitionHandle>) {
        let Some(alter) = p.with(|r| r.poll_alter_partition()) else {
            return;
        };
        let request = AlterPartitionRequest {
            broker_id: self.me(),
            broker_epoch: self.broker_epoch(),
            topic_id: p.topic_id,
            partition: p.index,
            leader_epoch: alter.leader_epoch,
            partition_epoch: alter.partition_epoch,
            new_isr: alter.isr.clone(),
        };
        tracing::info!(topic = %p.topic, partition = p.index, "proposing ISR {:?}", alter.isr);
        let broker = self.clone();
        let p = p.clone();
        tokio::spawn(async move {
            match broker.cluster.alter_partition(request).await {
                Ok(Proposed::Committed(index)) => {
                    broker.cluster.wait_applied(index).await;
                    broker.reconcile_partitions();
                }
                Ok(Proposed::Rejected(_, why)) => {
                    tracing::info!(topic = %p.topic, partition = p.index, "ISR change rejected: {why}");
                    p.with(|r| r.on_alter_partition_failed(now_ms(), alter.id));
                }
                Err(e) => {
                    tracing::info!(topic = %p.topic, partition = p.index, "ISR change refused: {e}");
                    p.with(|r| r.on_alter_partition_failed(now_ms(), alter.id));
                }
            }
        });
    }
}

/// Starts the follower fetch loop of `p` if it follows a leader and none runs.
pub fn ensure_fetching(broker: &Arc<Broker>, p: &Arc<PartitionHandle>) {
    let follows = matches!(p.with(|r| r.role()), Role::Follower { .. });
    if follows && !p.fetching.swap(true, Ordering::SeqCst) {
        tokio::spawn(follow(Arc::downgrade(broker), p.clone()));
    }
}

/// A follower's fetch loop: fetch, apply, sync, repeat, while the replica follows.
async fn follow(broker: Weak<Broker>, p: Arc<PartitionHandle>) {
    loop {
        let Some(b) = broker.upgrade() else {
            return;
        };
        let role = p.with(|r| r.role());
        let following = matches!(role, Role::Follower { .. }) && !p.deleted.load(Ordering::SeqCst);
        if !following {
            p.fetching.store(false, Ordering::SeqCst);
            // A role change between the check and the store would find `fetching` still set
            // and start no loop: look once more.
            let again = matches!(p.with(|r| r.role()), Role::Follower { .. })
                && !p.deleted.load(Ordering::SeqCst);
            if again && !p.fetching.swap(true, Ordering::SeqCst) {
                continue;
            }
            return;
        }
        fetch_once(&b, &p).await;
    }
}

async fn fetch_once(b: &Arc<Broker>, p: &Arc<PartitionHandle>) {
    p.discard_if_pending();
    let now = now_ms();
    // `next_fetch` records the fetch as in flight: ask for one only when it can be sent.
    let peers = b.cluster.peers();
    let (request, leader, wake_at) = p.with(|r| {
        let leader = r.fetch_leader();
        let request = (leader.is_some() && peers.is_some())
            .then(|| r.next_fetch(now))
            .flatten();
        (request, leader, r.poll_timeout())
    });
    let (Some(request), Some(leader), Some(peers)) = (request, leader, peers) else {
        // Backing off, or no leader yet: wait for the backoff or a role change.
        let wait = wake_at.map_or(TIMER_INTERVAL, |t| {
            Duration::from_millis(t.saturating_sub(now).clamp(1, 1000) as u64)
        });
        let mut activity = p.activity.subscribe();
        let _ = tokio::time::timeout(wait, activity.changed()).await;
        p.with(|r| r.handle_timeout(now_ms()));
        return;
    };
    let body = ReplicaFetchMessage {
        topic: p.topic.clone(),
        topic_id: p.topic_id.0.to_vec(),
        partition: p.index,
        replica: request.replica.0,
        leader_epoch: request.leader_epoch.0,
        fetch_offset: request.fetch_offset.0,
        last_fetched_epoch: request.last_fetched_epoch.0,
        durable_end: request.durable_end.0,
        max_bytes: request.max_bytes as u64,
    }
    .encode_to_vec();
    let mut activity = p.activity.subscribe();
    let call = peers.call(
        leader.0,
        kind::REPLICA_FETCH,
        Bytes::from(body),
        REPLICA_FETCH_TIMEOUT,
    );
    // A fetch to a leader that is gone would hold the loop until its timeout; drop it as soon
    // as the metadata names a new leader (the new role has no fetch in flight).
    let answer = tokio::select! {
        answer = call => answer,
        _ = role_change(p, &mut activity, request.leader_epoch, leader) => return,
    };
    let answer = answer
        .map_err(|e| e.to_string())
        .and_then(|envelope| ReplicaFetchAnswer::decode(envelope.body).map_err(|e| e.to_string()))
        .and_then(decode_response);
    let response = match answer {
        Ok(r) => r,
        Err(why) => {
            tracing::debug!(topic = %p.topic, partition = p.index, "fetch from {leader}: {why}");
            p.with(|r| {
                // Back off only if this fetch is still the current role's.
                if r.leader_epoch() == request.leader_epoch {
                    r.handle_fetch_error(now_ms())
                }
            });
            return;
        }
    };
    p.note_leader_high_watermark(response.high_watermark);
    let outcome =
        p.with_snapshots(|r, snapshots| r.handle_fetch_response(now_ms(), snapshots, response));
    match outcome {
        Ok(FetchOutcome::Appended(n)) if n > 0 => {
            // Report the new durable end in the next fetch: wait for the sync first (the
            // planted bug reports the unsynced end at once).
            let end = p.with(|r| r.log().end());
            b.queue_sync(p);
            if !keel_core::planted::active(keel_core::planted::Bug::HighWatermarkWithoutSync) {
                let mut durable = p.durable_end.subscribe();
                let _ = tokio::time::timeout(SYNC_WAIT, durable.wait_for(|d| *d >= end)).await;
            }
        }
        Ok(FetchOutcome::Truncated(at)) => {
            tracing::info!(topic = %p.topic, partition = p.index, "truncated a diverged suffix at {at}");
            b.queue_sync(p);
        }
        Ok(FetchOutcome::Restarted(at)) => {
            tracing::info!(topic = %p.topic, partition = p.index, "restarted the log at the leader's start {at}");
            b.queue_sync(p);
        }
        Ok(_) => b.queue_sync(p),
        Err(e) => {
            tracing::warn!(topic = %p.topic, partition = p.index, "applying a fetch from {leader}: {e}");
            if let ReplicaError::Log(e) = &e {
                p.read_failed(e);
            }
            p.with(|r| r.handle_fetch_error(now_ms()));
        }
    }
}

/// Resolves when the replica no longer follows `leader` at `epoch`.
async fn role_change(
    p: &PartitionHandle,
    activity: &mut tokio::sync::watch::Receiver<u64>,
    epoch: LeaderEpoch,
    leader: BrokerId,
) {
    loop {
        if activity.changed().await.is_err() {
            return std::future::pending().await;
        }
        let same = p.with(|r| r.leader_epoch() == epoch && r.fetch_leader() == Some(leader));
        if !same || p.deleted.load(Ordering::SeqCst) {
            return;
        }
    }
}

/// The replica timers: ISR shrink on leaders (`replica.lag.time.max.ms`), and AlterPartition
/// requests to send.
pub async fn timers(broker: Weak<Broker>) {
    let mut interval = tokio::time::interval(TIMER_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(b) = broker.upgrade() else {
            return;
        };
        let now = now_ms();
        for p in b.all_partitions() {
            // A damaged leader shrinks no ISR: its followers lag because it cannot serve them,
            // and it is stepping down to the sound ones.
            let due = !p.is_damaged()
                && p.with(|r| r.is_leader() && r.poll_timeout().is_some_and(|t| t <= now));
            if due {
                p.with(|r| r.handle_timeout(now));
            }
            b.send_alter_partition(&p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_core::batch::{BatchBuilder, Compression};

    fn batch(base: i64, records: usize) -> Batch {
        let mut builder = BatchBuilder::new(Compression::None);
        builder.base_offset = Offset(base);
        for i in 0..records {
            builder = builder.record(0, None, Some(format!("v{i}").as_bytes()));
        }
        builder.build().unwrap()
    }

    #[test]
    fn fetch_answers_round_trip() {
        let batches: Vec<Batch> = (0..3).map(|i| batch(i * 2, 2)).collect();
        let response = FetchResponse {
            leader_epoch: LeaderEpoch(4),
            high_watermark: Offset(2),
            log_start: Offset(0),
            log_end: Offset(6),
            payload: FetchPayload::Records(batches.clone()),
        };
        let (answer, records) = encode_response(response);
        let bytes = answer_body(&answer, records.clone()).concat();
        // The same bytes as prost's encoding of the whole answer.
        let whole = ReplicaFetchAnswer {
            records: records.concat().into(),
            ..answer
        };
        assert_eq!(&bytes[..], &whole.encode_to_vec()[..]);
        let back = decode_response(ReplicaFetchAnswer::decode(bytes).unwrap()).unwrap();
        assert_eq!(back.leader_epoch, LeaderEpoch(4));
        assert_eq!((back.high_watermark, back.log_end), (Offset(2), Offset(6)));
        match back.payload {
            FetchPayload::Records(got) => {
                assert_eq!(got.len(), 3);
                for (a, b) in got.iter().zip(&batches) {
                    assert_eq!(a.bytes(), b.bytes());
                }
            }
            other => panic!("expected records, got {other:?}"),
        }
    }

    #[test]
    fn a_truncated_batch_from_the_leader_is_refused() {
        let batch = batch(0, 3);
        let (answer, records) = encode_response(FetchResponse {
            leader_epoch: LeaderEpoch(0),
            high_watermark: Offset(0),
            log_start: Offset(0),
            log_end: Offset(3),
            payload: FetchPayload::Records(vec![batch]),
        });
        let records = records.concat();
        let cut = Bytes::copy_from_slice(&records[..records.len() - 1]);
        let bytes = answer_body(&answer, vec![cut]).concat();
        let answer = ReplicaFetchAnswer::decode(bytes).unwrap();
        assert!(decode_response(answer).is_err());
    }

    #[test]
    fn diverging_and_errors_survive_the_wire() {
        let (answer, _) = encode_response(FetchResponse {
            leader_epoch: LeaderEpoch(3),
            high_watermark: Offset(5),
            log_start: Offset(0),
            log_end: Offset(9),
            payload: FetchPayload::Diverging {
                epoch: LeaderEpoch(2),
                end_offset: Offset(7),
            },
        });
        match decode_response(answer).unwrap().payload {
            FetchPayload::Diverging { epoch, end_offset } => {
                assert_eq!((epoch, end_offset), (LeaderEpoch(2), Offset(7)))
            }
            other => panic!("expected diverging, got {other:?}"),
        }
        let err = decode_response(error_answer(code::FENCED_LEADER_EPOCH, "old".into()));
        assert!(err.unwrap_err().contains("74"));
    }
}
