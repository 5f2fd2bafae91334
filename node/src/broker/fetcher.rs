//! The follower's side of replication: one fetcher per leader broker (Kafka's
//! `ReplicaFetcherThread`, `num.replica.fetchers` = 1), carrying every partition this broker
//! follows there in one fetch session ([`super::replication`] has the leader's side and the
//! messages).
//!
//! A partition is *ready* when it has a new fetch to name: it joined the fetcher, the leader
//! answered its last fetch and the answer was applied (after an append, once the append's sync
//! completed, so that the fetch carries the new durable end the leader's high watermark waits
//! for), or its backoff ended. Each round names the ready partitions and forgets those that
//! left; the leader holds the request until it has news for any partition of the session. A
//! partition that becomes ready while the request is held sends the leader a wake, so that the
//! held request is answered and the next one, naming it, goes out at once.
//!
//! A lost request or answer, a leader that restarted, or a session the leader replaced starts a
//! new session, which names every partition again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use keel_core::controller::BrokerId;
use keel_core::partition::{FetchOutcome, ReplicaError};
use keel_core::LeaderEpoch;
use prost::Message as _;
use tokio::sync::Notify;

use super::replication::{
    decode_entry, encode_wake, partition_key, PartitionFetch, PartitionKey, PartitionRef,
    SessionAnswer, SessionFetch, REPLICA_FETCH_WAIT,
};
use super::{Broker, PartitionHandle};
use crate::cluster::kind;
use crate::peer::PeerError;

/// How long a follower waits for the leader's answer beyond the time the leader may hold it.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a fetcher backs off after failed rounds in a row.
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Why a session round brought no usable answer (the follower starts a new session).
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("{0}")]
    Call(#[from] PeerError),
    #[error("{0}")]
    Decode(#[from] prost::DecodeError),
    /// A session-level Kafka error code from the leader.
    #[error("error {code}: {message}")]
    Code { code: i32, message: String },
}

/// One leader broker's fetcher: the partitions followed there, and what to tell the leader.
pub struct Fetcher {
    leader: BrokerId,
    state: Mutex<FetcherState>,
    notify: Notify,
}

#[derive(Default)]
struct FetcherState {
    members: BTreeMap<PartitionKey, Arc<PartitionHandle>>,
    /// Members with a new fetch to name.
    ready: BTreeSet<PartitionKey>,
    /// Members named to the leader and not answered yet, with the epoch they were named at.
    outstanding: BTreeMap<PartitionKey, LeaderEpoch>,
    /// Partitions that left since the last round, to forget in the session.
    forgotten: BTreeSet<PartitionKey>,
}

impl Fetcher {
    fn new(leader: BrokerId) -> Fetcher {
        Fetcher {
            leader,
            state: Mutex::new(FetcherState::default()),
            notify: Notify::new(),
        }
    }

    pub fn leader(&self) -> BrokerId {
        self.leader
    }

    /// Adds `p` (or, already a member, marks it ready: its epoch changed).
    pub fn add(&self, p: &Arc<PartitionHandle>) {
        let mut state = self.state.lock().expect("fetcher poisoned");
        state.members.insert(p.key(), p.clone());
        state.forgotten.remove(&p.key());
        state.ready.insert(p.key());
        drop(state);
        self.notify.notify_one();
    }

    /// Removes `p`: it follows another leader now, or nothing.
    pub fn remove(&self, p: &PartitionHandle) {
        let mut state = self.state.lock().expect("fetcher poisoned");
        let key = p.key();
        if state.members.remove(&key).is_some() {
            state.ready.remove(&key);
            state.outstanding.remove(&key);
            state.forgotten.insert(key);
        }
        drop(state);
        self.notify.notify_one();
    }

    /// `key` has a new fetch to name.
    pub fn ready(&self, key: PartitionKey) {
        let mut state = self.state.lock().expect("fetcher poisoned");
        if state.members.contains_key(&key) {
            state.ready.insert(key);
            drop(state);
            self.notify.notify_one();
        }
    }

    /// How many partitions the fetcher carries (tests and metrics).
    pub fn len(&self) -> usize {
        self.state.lock().expect("fetcher poisoned").members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn has_ready(&self) -> bool {
        let state = self.state.lock().expect("fetcher poisoned");
        !state.ready.is_empty() || !state.forgotten.is_empty()
    }

    /// The partitions to name this round (all of them for a new session) and to forget.
    fn take_round(&self, new_session: bool) -> (Vec<Arc<PartitionHandle>>, Vec<PartitionKey>) {
        let mut state = self.state.lock().expect("fetcher poisoned");
        let keys: Vec<PartitionKey> = if new_session {
            state.ready.clear();
            state.forgotten.clear();
            state.outstanding.clear();
            state.members.keys().copied().collect()
        } else {
            std::mem::take(&mut state.ready).into_iter().collect()
        };
        let named = keys
            .iter()
            .filter_map(|k| state.members.get(k).cloned())
            .collect();
        let forgotten = std::mem::take(&mut state.forgotten).into_iter().collect();
        (named, forgotten)
    }

    fn note_named(&self, named: &[(PartitionKey, LeaderEpoch)]) {
        let mut state = self.state.lock().expect("fetcher poisoned");
        for (key, epoch) in named {
            if state.members.contains_key(key) {
                state.outstanding.insert(*key, *epoch);
            }
        }
    }

    /// The member `key` answered, if it still is a member and was named.
    fn answered(&self, key: &PartitionKey) -> Option<(Arc<PartitionHandle>, LeaderEpoch)> {
        let mut state = self.state.lock().expect("fetcher poisoned");
        let epoch = state.outstanding.remove(key)?;
        Some((state.members.get(key)?.clone(), epoch))
    }

    fn has_outstanding(&self) -> bool {
        !self
            .state
            .lock()
            .expect("fetcher poisoned")
            .outstanding
            .is_empty()
    }
}

/// Puts `p` in the fetcher of the leader it follows, or in none (it leads, is offline, was
/// deleted), and marks it ready there.
pub fn ensure_fetching(broker: &Arc<Broker>, p: &Arc<PartitionHandle>) {
    let leader = if p.is_deleted() {
        None
    } else {
        p.with(|r| r.fetch_leader())
    };
    let mut current = p.fetcher.lock().expect("fetcher slot poisoned");
    match (leader, current.as_ref()) {
        (Some(l), Some(f)) if f.leader() == l => f.add(p),
        (leader, _) => {
            if let Some(old) = current.take() {
                old.remove(p);
            }
            if let Some(l) = leader {
                let f = broker.fetcher_for(l);
                f.add(p);
                *current = Some(f);
            }
        }
    }
}

impl Broker {
    /// The fetcher for `leader`, started if there is none.
    fn fetcher_for(&self, leader: BrokerId) -> Arc<Fetcher> {
        let mut fetchers = self.fetchers.lock().expect("fetchers poisoned");
        fetchers
            .entry(leader)
            .or_insert_with(|| {
                let f = Arc::new(Fetcher::new(leader));
                tokio::spawn(run(self.this.clone(), f.clone()));
                f
            })
            .clone()
    }
}

/// A fetcher's loop: name what is ready, wait for the leader's answer, apply it, repeat.
async fn run(broker: Weak<Broker>, f: Arc<Fetcher>) {
    let mut session_id = 0u64;
    let mut epoch = 0u32;
    let mut failures = 0u32;
    loop {
        let Some(b) = broker.upgrade() else {
            return;
        };
        let new_session = session_id == 0;
        let (members, forgotten) = f.take_round(new_session);
        let now = b.clock.now_ms();
        let mut named = Vec::with_capacity(members.len());
        let mut named_epochs = Vec::with_capacity(members.len());
        for p in members {
            let key = p.key();
            let request = p.with_snapshots(|r, snapshots| {
                p.discard_if_pending(r, snapshots);
                if r.fetch_leader() != Some(f.leader) {
                    return None;
                }
                // A fetch already named (the session was lost, or its durable end moved
                // since) is named again as it is now.
                r.cancel_fetch();
                r.next_fetch(now)
            });
            match request {
                Some(request) => {
                    named_epochs.push((key, request.leader_epoch));
                    named.push(PartitionFetch::new(&p.topic, key, &request));
                }
                // Backing off: the deadline marks it ready again.
                None => p.drain_effects(),
            }
        }
        f.note_named(&named_epochs);
        if named.is_empty() && forgotten.is_empty() && !f.has_outstanding() {
            // Nothing to ask for: wait for a partition to become ready.
            drop(b);
            f.notify.notified().await;
            continue;
        }
        let Some(peers) = b.cluster.peers().cloned() else {
            return;
        };
        let request = SessionFetch {
            session_id,
            epoch: if new_session {
                0
            } else {
                epoch.wrapping_add(1)
            },
            replica: b.node_id(),
            replica_epoch: b.broker_epoch(),
            named,
            forgotten: forgotten
                .iter()
                .map(|k| PartitionRef {
                    topic_id: k.0 .0.to_vec(),
                    partition: k.1,
                })
                .collect(),
        };
        let (sent_session, sent_epoch) = (request.session_id, request.epoch);
        drop(b);
        let call = peers.call(
            f.leader.0,
            kind::REPLICA_FETCH,
            Bytes::from(request.encode_to_vec()),
            REPLICA_FETCH_WAIT + ANSWER_TIMEOUT,
        );
        tokio::pin!(call);
        let mut woke = false;
        let answer = loop {
            tokio::select! {
                answer = &mut call => break answer,
                _ = f.notify.notified(), if !woke => {
                    if f.has_ready() {
                        woke = true;
                        let wake = encode_wake((sent_session, sent_epoch));
                        let _ = peers.send(f.leader.0, kind::REPLICA_FETCH_WAKE, wake);
                    }
                }
            }
        };
        if woke {
            // The wake's permit may have been taken by the loop above: look again next round.
            f.notify.notify_one();
        }
        let answer = answer
            .map_err(SessionError::from)
            .and_then(|envelope| SessionAnswer::decode(envelope.body).map_err(SessionError::from))
            .and_then(|a| {
                if a.error_code != 0 {
                    Err(SessionError::Code {
                        code: a.error_code,
                        message: a.message,
                    })
                } else {
                    Ok(a)
                }
            });
        let answer = match answer {
            Ok(a) => a,
            Err(why) => {
                tracing::debug!(
                    leader = f.leader.0,
                    "fetch session: {why}; starting a new one"
                );
                session_id = 0;
                failures += 1;
                if failures > 1 {
                    let backoff = Duration::from_millis(50u64 << failures.min(5)).min(BACKOFF_MAX);
                    tokio::time::sleep(backoff).await;
                }
                continue;
            }
        };
        failures = 0;
        session_id = answer.session_id;
        epoch = sent_epoch;
        // Kept alive while the answer is applied (the partitions' effects need it).
        let Some(_broker) = broker.upgrade() else {
            return;
        };
        for entry in answer.entries {
            let Some(key) = partition_key(&entry.topic_id, entry.partition) else {
                continue;
            };
            let Some((p, fetch_epoch)) = f.answered(&key) else {
                continue;
            };
            apply(&f, &p, fetch_epoch, entry);
        }
    }
}

/// Applies the leader's answer for `p`, then marks it ready again (after an append, once the
/// append's sync completed).
fn apply(
    f: &Fetcher,
    p: &Arc<PartitionHandle>,
    fetch_epoch: LeaderEpoch,
    entry: super::replication::PartitionAnswer,
) {
    let response = match decode_entry(entry) {
        Ok(r) => r,
        Err(why) => {
            tracing::debug!(topic = %p.topic, partition = p.index, "fetch from {}: {why}", f.leader);
            p.with(|r| {
                // Back off only if this fetch is still the current role's.
                if r.leader_epoch() == fetch_epoch {
                    r.handle_fetch_error(p.clock.now_ms())
                }
            });
            p.drain_effects();
            p.fetch_ready_if_not_backing_off();
            return;
        }
    };
    let outcome = p.with_snapshots(|r, snapshots| {
        r.handle_fetch_response(p.clock.now_ms(), snapshots, response)
    });
    match outcome {
        Ok(FetchOutcome::Appended(n)) if n > 0 => {
            // Name the next fetch once the sync is done, so that it carries the new durable
            // end (the planted bug names it at once, with the unsynced end).
            let end = p.with(|r| r.log().end());
            if keel_core::planted::active(keel_core::planted::Bug::HighWatermarkWithoutSync) {
                p.drain_effects();
                f.ready(p.key());
            } else {
                p.ready_after_sync(end);
                p.drain_effects();
            }
        }
        Ok(outcome) => {
            match outcome {
                FetchOutcome::Truncated(at) => {
                    tracing::info!(topic = %p.topic, partition = p.index, "truncated a diverged suffix at {at}")
                }
                FetchOutcome::Restarted(at) => {
                    tracing::info!(topic = %p.topic, partition = p.index, "restarted the log at the leader's start {at}")
                }
                _ => {}
            }
            p.drain_effects();
            f.ready(p.key());
        }
        Err(e) => {
            tracing::warn!(topic = %p.topic, partition = p.index, "applying a fetch from {}: {e}", f.leader);
            if let ReplicaError::Log(e) = &e {
                p.read_failed(e);
            }
            p.with(|r| r.handle_fetch_error(p.clock.now_ms()));
            p.drain_effects();
        }
    }
}

impl PartitionHandle {
    /// Marks this follower ready in its fetcher: it has a new fetch to name.
    pub(super) fn fetch_ready(&self) {
        let fetcher = self.fetcher.lock().expect("fetcher slot poisoned").clone();
        if let Some(f) = fetcher {
            f.ready(self.key());
        }
    }

    /// Marks it ready unless it backs off (its deadline will).
    fn fetch_ready_if_not_backing_off(&self) {
        let backing_off = self.with(|r| r.poll_timeout().is_some_and(|t| t > self.clock.now_ms()));
        if !backing_off {
            self.fetch_ready();
        }
    }

    /// Marks it ready once its log is durable up to `end` ([`PartitionHandle::sync_done`]).
    fn ready_after_sync(&self, end: keel_core::Offset) {
        self.sync_wait.store(end.0, Ordering::SeqCst);
        // The sync may have completed already. Asked of the log itself: a truncation (a
        // divergence, a damaged log discarded) takes its durable end back, and a value that
        // never went back made the follower name its fetch before its sync (simulator seeds
        // 74, 101, 102, 148, 157, 185: it never named its new durable end).
        if self.with(|r| r.log().durable_end()) >= end {
            self.sync_done(end, true);
        }
    }

    /// The log is durable up to `durable` (or its sync failed: `force`): a follower waiting for
    /// that fetches again.
    pub(super) fn sync_done(&self, durable: keel_core::Offset, force: bool) {
        let wait = self.sync_wait.load(Ordering::SeqCst);
        if wait == i64::MIN || (!force && durable.0 < wait) {
            return;
        }
        if self
            .sync_wait
            .compare_exchange(wait, i64::MIN, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
        {
            self.fetch_ready();
        }
    }
}

impl Broker {
    /// How many partitions this broker fetches from each leader broker, in one session each.
    pub fn fetched_partitions(&self) -> BTreeMap<BrokerId, usize> {
        let fetchers = self.fetchers.lock().expect("fetchers poisoned");
        fetchers
            .iter()
            .filter(|(_, f)| !f.is_empty())
            .map(|(l, f)| (*l, f.len()))
            .collect()
    }

    /// How many partitions each follower broker's session with this broker holds.
    pub fn session_partitions(&self) -> BTreeMap<BrokerId, usize> {
        self.sessions.sizes()
    }
}
