//! Broker sessions on the controller: heartbeats in, fencing and unfencing commands out
//! (KRaft's `BrokerHeartbeatManager`; KIP-631).
//!
//! Brokers heartbeat every [`BROKER_HEARTBEAT_INTERVAL_MS`]; a broker that has not heartbeated
//! for [`BROKER_SESSION_TIMEOUT_MS`] is fenced: the controller proposes
//! [`MetadataState::fence_broker`]'s records (FenceBroker, then partition changes that take it
//! out of every ISR and elect new leaders from the ISR). A fenced broker whose heartbeat shows
//! it caught up with the metadata log is unfenced ([`MetadataState::unfence_broker`], which
//! also elects it where a partition has no leader). That is how every broker becomes live:
//! [`MetadataState::register_broker`] registers it fenced (after fencing its previous
//! registration if that was still live), and a new registration starts a new session.
//!
//! A broker that is stopping asks for a controlled shutdown (`want_shut_down`, KIP-631's
//! `wantShutDown`): the controller fences it in one command that also moves its leaderships
//! to live ISR members and takes it out of every ISR it shares, and answers
//! `should_shut_down` once the applied state shows it fenced and leading nothing. It is not
//! unfenced while it asks. Kafka keeps such a broker unfenced (but ineligible) until it may
//! stop and fences it then; keel fences it at once, which makes it ineligible everywhere
//! fencing already does (elections, AlterPartition, the election sweep) with no new state.
//!
//! The session table is the active controller's soft state, never replicated: time comes in
//! as `now_ms`, and a node that becomes the leader starts every session afresh
//! ([`BrokerSessions::reset`]), so a broker gets a full session timeout from the new
//! controller before it can be fenced (as KRaft's new active controller does).
//!
//! The commands returned are proposals, not facts: the records are computed from the applied
//! state, which may lag the proposals in flight. They are safe anyway, because the records
//! carry the epochs they were computed from and apply refuses them if the state moved on
//! (controller invariant 7); a proposal that comes back `Rejected` is simply recomputed at the
//! next heartbeat or expiry check. To avoid proposing the same change on every call, a session
//! waits [`PROPOSAL_RETRY_MS`] after each proposal before it proposes again.

use std::collections::BTreeMap;

use crate::controller::{
    BrokerId, ControllerError, MetadataRecord, MetadataState, UncleanElection,
};

/// How often a broker heartbeats (Kafka's `broker.heartbeat.interval.ms`).
pub const BROKER_HEARTBEAT_INTERVAL_MS: u64 = 2_000;
/// How long without a heartbeat before a broker is fenced (Kafka's
/// `broker.session.timeout.ms`).
pub const BROKER_SESSION_TIMEOUT_MS: u64 = 9_000;
/// How long a session waits after proposing a fence or unfence before proposing again (the
/// first may still be in flight).
pub const PROPOSAL_RETRY_MS: u64 = BROKER_HEARTBEAT_INTERVAL_MS;

/// A BrokerHeartbeat request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// The broker.
    pub broker_id: BrokerId,
    /// Its epoch (from its registration).
    pub broker_epoch: i64,
    /// The raft index of the metadata it has applied (Kafka's `currentMetadataOffset`).
    pub metadata_offset: u64,
    /// It asks to stay fenced (Kafka's `wantFence`: a broker still starting up).
    pub want_fence: bool,
    /// It is stopping and asks for a controlled shutdown (Kafka's `wantShutDown`): move
    /// every leadership off it and take it out of every ISR, then tell it when it may stop.
    pub want_shut_down: bool,
}

/// What the controller answers, and what it must propose.
#[derive(Clone, Debug, PartialEq)]
pub struct HeartbeatReply {
    /// Whether the broker is fenced in the applied state (Kafka's `isFenced`).
    pub is_fenced: bool,
    /// Whether its metadata is caught up (Kafka's `isCaughtUp`).
    pub is_caught_up: bool,
    /// Whether a broker that asked for a controlled shutdown may stop now (Kafka's
    /// `shouldShutDown`): it is fenced and leads nothing in the applied state.
    pub should_shut_down: bool,
    /// Records to propose (an unfence, a fence), possibly empty.
    pub records: Vec<MetadataRecord>,
}

#[derive(Clone, Copy, Debug)]
struct Session {
    epoch: i64,
    last_heartbeat_ms: u64,
    /// The controller's applied index at this broker's first heartbeat since its session began
    /// or it was fenced: the broker is caught up once its metadata offset reaches it.
    caught_up_at: Option<u64>,
    /// No new proposal for this broker before this time.
    quiet_until_ms: u64,
}

/// The active controller's broker sessions.
#[derive(Clone, Debug)]
pub struct BrokerSessions {
    session_timeout_ms: u64,
    unclean: UncleanElection,
    sessions: BTreeMap<BrokerId, Session>,
    /// No election sweep before this time (one was just proposed).
    elections_quiet_until_ms: u64,
    /// The applied index of the last sweep that found nothing: the sweep is a function of the
    /// state, so it need not run again until the state moves.
    swept_index: Option<u64>,
}

impl BrokerSessions {
    /// A table with Kafka's default session timeout.
    pub fn new(unclean: UncleanElection) -> Self {
        Self::with_timeout(BROKER_SESSION_TIMEOUT_MS, unclean)
    }

    /// A table with the given session timeout.
    pub fn with_timeout(session_timeout_ms: u64, unclean: UncleanElection) -> Self {
        BrokerSessions {
            session_timeout_ms,
            unclean,
            sessions: BTreeMap::new(),
            elections_quiet_until_ms: 0,
            swept_index: None,
        }
    }

    /// The elections `state` is missing: partitions whose leader is fenced or absent though a
    /// live ISR (or eligible leader) replica could lead. Every fencing and unfencing elects
    /// as it applies, but a command computed on an older state (a registration computed
    /// while a broker was still fenced, applied after it was unfenced) can leave such a
    /// partition, and nothing else would elect it. At most one sweep per
    /// [`PROPOSAL_RETRY_MS`] while its records are on their way, and none while `state` (at
    /// raft index `applied_index`) is the one the last empty sweep saw.
    pub fn elections(
        &mut self,
        now_ms: u64,
        state: &MetadataState,
        applied_index: u64,
    ) -> Vec<MetadataRecord> {
        if now_ms < self.elections_quiet_until_ms || self.swept_index == Some(applied_index) {
            return Vec::new();
        }
        let live = state.live_brokers().into_iter().collect();
        let records = state.partition_changes(None, &live, self.unclean);
        if records.is_empty() {
            self.swept_index = Some(applied_index);
        } else {
            self.swept_index = None;
            self.elections_quiet_until_ms = now_ms.saturating_add(PROPOSAL_RETRY_MS);
        }
        records
    }

    /// Forgets every session: call when this node becomes the controller (or stops being it).
    /// Every registered broker then gets a full session timeout from its first check.
    pub fn reset(&mut self) {
        self.sessions.clear();
    }

    /// Handles a heartbeat at `now_ms` against the applied `state`, whose raft index is
    /// `applied_index`. BROKER_ID_NOT_REGISTERED, STALE_BROKER_EPOCH.
    pub fn heartbeat(
        &mut self,
        now_ms: u64,
        heartbeat: &Heartbeat,
        state: &MetadataState,
        applied_index: u64,
    ) -> Result<HeartbeatReply, ControllerError> {
        let id = heartbeat.broker_id;
        let Some(broker) = state.broker(id) else {
            return Err(ControllerError::BrokerIdNotRegistered(format!(
                "Broker {id} is not registered."
            )));
        };
        if broker.epoch != heartbeat.broker_epoch {
            return Err(ControllerError::StaleBrokerEpoch(format!(
                "Expected broker epoch of broker {id} to match {}",
                heartbeat.broker_epoch
            )));
        }
        let session = self
            .sessions
            .entry(id)
            .and_modify(|s| {
                if s.epoch != broker.epoch {
                    *s = Session {
                        epoch: broker.epoch,
                        last_heartbeat_ms: now_ms,
                        caught_up_at: None,
                        quiet_until_ms: 0,
                    };
                }
            })
            .or_insert(Session {
                epoch: broker.epoch,
                last_heartbeat_ms: now_ms,
                caught_up_at: None,
                quiet_until_ms: 0,
            });
        session.last_heartbeat_ms = session.last_heartbeat_ms.max(now_ms);
        let target = *session.caught_up_at.get_or_insert(applied_index);
        let is_caught_up = heartbeat.metadata_offset >= target;
        let mut records = Vec::new();
        if !broker.fenced && heartbeat.want_shut_down && now_ms >= session.quiet_until_ms {
            // Controlled shutdown (KRaft's `handleBrokerInControlledShutdown`, then its
            // SHUTDOWN_NOW fencing, in one command): fenced, the broker leaves every ISR where
            // another member remains, its leaderships move to live ISR members, and nothing
            // elects it or takes it back into an ISR until it registers again.
            records = state.fence_broker(id, self.unclean)?;
            if !records.is_empty() {
                session.quiet_until_ms = now_ms.saturating_add(PROPOSAL_RETRY_MS);
                session.caught_up_at = None;
            }
        } else if !broker.fenced && heartbeat.want_fence && now_ms >= session.quiet_until_ms {
            // Kafka's BrokerHeartbeat WantFence: the broker asks to lead nothing (a replica of
            // it found damaged at runtime). Fenced, its leaderships move to sound ISR members.
            records = state.fence_broker(id, self.unclean)?;
            if !records.is_empty() {
                session.quiet_until_ms = now_ms.saturating_add(PROPOSAL_RETRY_MS);
                session.caught_up_at = None;
            }
        } else if broker.fenced
            && is_caught_up
            && !heartbeat.want_fence
            && !heartbeat.want_shut_down
            && now_ms >= session.quiet_until_ms
        {
            records = state.unfence_broker(id, broker.epoch, self.unclean)?;
            if !records.is_empty() {
                session.quiet_until_ms = now_ms.saturating_add(PROPOSAL_RETRY_MS);
            }
        }
        Ok(HeartbeatReply {
            is_fenced: broker.fenced,
            is_caught_up,
            should_shut_down: heartbeat.want_shut_down
                && broker.fenced
                && state.led_partitions(id) == 0,
            records,
        })
    }

    /// The fencing commands due at `now_ms`: one per unfenced broker in `state` whose session
    /// expired, in broker id order. A broker seen here for the first time starts its session
    /// now.
    pub fn expire(
        &mut self,
        now_ms: u64,
        state: &MetadataState,
    ) -> Vec<(BrokerId, Vec<MetadataRecord>)> {
        // An unregistered broker's session ends with its registration.
        self.sessions.retain(|id, _| state.broker(*id).is_some());
        let mut due = Vec::new();
        for broker in state.brokers().filter(|b| !b.fenced) {
            let fresh = Session {
                epoch: broker.epoch,
                last_heartbeat_ms: now_ms,
                caught_up_at: None,
                quiet_until_ms: 0,
            };
            let session = self.sessions.entry(broker.id).or_insert(fresh);
            if session.epoch != broker.epoch {
                // Registered again since: a registration is a sign of life.
                *session = fresh;
            }
            let expired =
                now_ms.saturating_sub(session.last_heartbeat_ms) >= self.session_timeout_ms;
            if !expired || now_ms < session.quiet_until_ms {
                continue;
            }
            // Local invariant: the broker is in `state` (we iterate its brokers).
            match state.fence_broker(broker.id, self.unclean) {
                Ok(records) if !records.is_empty() => {
                    session.quiet_until_ms = now_ms.saturating_add(PROPOSAL_RETRY_MS);
                    // Once back, it must catch up with the log as of its return.
                    session.caught_up_at = None;
                    due.push((broker.id, records));
                }
                _ => {}
            }
        }
        due
    }

    /// The earliest time at which [`expire`](Self::expire) may have something to do, if any
    /// session is open.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.sessions
            .values()
            .map(|s| {
                s.last_heartbeat_ms
                    .saturating_add(self.session_timeout_ms)
                    .max(s.quiet_until_ms)
            })
            .min()
    }
}
