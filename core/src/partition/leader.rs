//! The leader's view of its followers and of the ISR: Kafka's `Partition` leader state,
//! `Replica.scala`'s follower fetch state, and the AlterPartition state machine (KIP-497), with
//! keel's durable-ack rule. Pure arithmetic over offsets and times; the log is the caller's.
//!
//! What always holds (asserted by the caller, [`super::PartitionReplica`]):
//! - the leader is in the committed ISR and in every proposed ISR; every ISR is within the
//!   replica assignment;
//! - at most one ISR change is in flight, and a new one is proposed only when none is;
//! - the high watermark candidate never exceeds the durable end offset of any member of the
//!   maximal ISR whose durable end is known, and is not computed at all while any member's is
//!   unknown or the committed ISR is smaller than the effective `min.insync.replicas`.
//!
//! # Maximal ISR (Kafka's `PartitionState.maximalIsr`)
//! While an expansion is in flight, the high watermark already waits for the member being
//! added (the ISR is the committed one plus it): if the controller commits the expansion, the
//! high watermark never covered data the new member lacks. While a shrink is in flight, the
//! high watermark still waits for the members being removed (the committed ISR, which is the
//! larger): until the controller commits the shrink it may still elect one of them, so the
//! high watermark must not cover data they lack. So the maximal ISR is always the union of the
//! committed ISR and the proposed one, and acks=all counts it for NOT_ENOUGH_REPLICAS_AFTER_APPEND.

use std::collections::BTreeMap;

use crate::controller::BrokerId;
use crate::types::{LeaderEpoch, Offset};

/// An ISR change the leader asks the controller for (Kafka's AlterPartition request, one
/// partition of it). The controller accepts it only if `leader_epoch` and `partition_epoch`
/// are still current; the committed result comes back through
/// [`PartitionReplica::on_partition_change`](super::PartitionReplica::on_partition_change).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlterPartition {
    /// Identifies the proposal for [`PartitionReplica::on_alter_partition_failed`](super::PartitionReplica::on_alter_partition_failed).
    pub id: u64,
    /// The proposing leader.
    pub leader: BrokerId,
    pub leader_epoch: LeaderEpoch,
    /// The partition epoch the proposal is based on.
    pub partition_epoch: i32,
    /// The proposed ISR, in assignment order.
    pub isr: Vec<BrokerId>,
}

/// What the leader knows about one follower (Kafka's `ReplicaState`). Reset on every new leader
/// epoch: nothing a follower reported to an earlier leader counts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FollowerProgress {
    /// The follower's log end offset: the fetch offset of its last fetch at this epoch.
    pub log_end: Option<Offset>,
    /// The offset below which the follower has synced its log, from its last fetch.
    pub durable_end: Option<Offset>,
    /// How far the follower's log cleaner has cleaned its log, from its last fetch.
    pub cleaned_end: Option<Offset>,
    /// The last time the follower was caught up (keel: its durable end reached the leader's
    /// log end offset, see [`LeaderState::record_fetch`]).
    pub last_caught_up_ms: i64,
    /// The leader's log end offset at the follower's previous fetch.
    last_fetch_leader_end: Option<Offset>,
    /// The time of the follower's previous fetch.
    last_fetch_ms: i64,
}

impl FollowerProgress {
    fn new(last_caught_up_ms: i64) -> Self {
        FollowerProgress {
            log_end: None,
            durable_end: None,
            cleaned_end: None,
            last_caught_up_ms,
            last_fetch_leader_end: None,
            last_fetch_ms: 0,
        }
    }

    /// Kafka's `ReplicaState.isCaughtUp`, on the durable end: caught up with the leader's log
    /// end offset, or within `lag_max_ms` of the last time it was.
    fn is_caught_up(&self, leader_end: Offset, now_ms: i64, lag_max_ms: i64) -> bool {
        self.durable_end == Some(leader_end)
            || now_ms.saturating_sub(self.last_caught_up_ms) <= lag_max_ms
    }
}

/// The ISR change in flight, if any (Kafka's `PendingExpandIsr` / `PendingShrinkIsr`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Pending {
    pub id: u64,
    pub proposed: Vec<BrokerId>,
}

/// The leader role's state. See the module documentation.
#[derive(Clone, Debug)]
pub(super) struct LeaderState {
    pub me: BrokerId,
    pub replicas: Vec<BrokerId>,
    /// The committed ISR, in assignment order.
    pub isr: Vec<BrokerId>,
    /// The log end offset when this leader epoch began (Kafka's `leaderEpochStartOffset`).
    pub epoch_start: Offset,
    pub followers: BTreeMap<BrokerId, FollowerProgress>,
    pub pending: Option<Pending>,
    /// A proposal made and not yet taken by the shell.
    pub outbox: Option<AlterPartition>,
    /// No new proposal before this time (after a failed one).
    pub retry_after_ms: i64,
    next_id: u64,
}

impl LeaderState {
    /// A new leader epoch (Kafka's `makeLeader` with `isNewLeaderEpoch`, `resetReplicaState`):
    /// ISR followers count as caught up now, nothing is known of anyone's log.
    pub fn new(
        now_ms: i64,
        me: BrokerId,
        replicas: &[BrokerId],
        isr: &[BrokerId],
        epoch_start: Offset,
    ) -> Self {
        let mut leader = LeaderState {
            me,
            replicas: Vec::new(),
            isr: Vec::new(),
            epoch_start,
            followers: BTreeMap::new(),
            pending: None,
            outbox: None,
            retry_after_ms: i64::MIN,
            next_id: 1,
        };
        leader.apply_committed(now_ms, replicas, isr);
        leader
    }

    /// Applies a committed assignment and ISR at the same leader epoch (an AlterPartition
    /// result, or a controller-side change such as fencing a broker). Any proposal in flight
    /// is settled by it: either this is its result, or it was based on an older partition
    /// epoch and the controller will reject it.
    pub fn apply_committed(&mut self, now_ms: i64, replicas: &[BrokerId], isr: &[BrokerId]) {
        let was_in_sync = std::mem::take(&mut self.isr);
        self.replicas = replicas.to_vec();
        self.isr = replicas
            .iter()
            .copied()
            .filter(|r| isr.contains(r))
            .collect();
        self.followers.retain(|id, _| replicas.contains(id));
        for &r in replicas.iter().filter(|&&r| r != self.me) {
            let in_sync = self.isr.contains(&r);
            let p = self
                .followers
                .entry(r)
                .or_insert_with(|| FollowerProgress::new(if in_sync { now_ms } else { 0 }));
            // A member that just joined counts as caught up from now: it reached the high
            // watermark, perhaps not the log end, and the shrink check would otherwise remove
            // it at once, as fast as the controller commits (keel runs that check at its
            // deadline, not on Kafka's half-lag schedule).
            if in_sync && !was_in_sync.contains(&r) {
                p.last_caught_up_ms = p.last_caught_up_ms.max(now_ms);
            }
        }
        self.pending = None;
        self.outbox = None;
    }

    /// The ISR the high watermark and acks=all count: the committed ISR plus any member being
    /// added (see the module documentation).
    pub fn maximal_isr(&self) -> Vec<BrokerId> {
        let proposed = self.pending.as_ref().map(|p| p.proposed.as_slice());
        let dropped = crate::planted::active(crate::planted::Bug::MaximalIsrDropsAMember)
            .then(|| self.isr.iter().rev().find(|&&r| r != self.me).copied())
            .flatten();
        self.replicas
            .iter()
            .copied()
            .filter(|r| self.isr.contains(r) || proposed.is_some_and(|p| p.contains(r)))
            .filter(|&r| Some(r) != dropped)
            .collect()
    }

    /// `min.insync.replicas` as Kafka applies it (`Partition.effectiveMinIsr`): never more than
    /// the number of replicas.
    pub fn effective_min_isr(&self, min_insync: usize) -> usize {
        min_insync.clamp(1, self.replicas.len().max(1))
    }

    /// Records a follower's fetch at this epoch (Kafka's `ReplicaState.updateFetchStateOrThrow`
    /// with keel's durable rule): `fetch_offset` is its log end, `durable_end` what it has
    /// synced, `leader_end` the leader's log end offset when the fetch was served.
    ///
    /// Caught up: keel applies Kafka's rule to the durable end, not the log end, because the
    /// high watermark waits for durable ends: a follower whose disk cannot keep up holds acks
    /// back exactly like one whose fetches cannot, and must leave the ISR the same way.
    pub fn record_fetch(
        &mut self,
        now_ms: i64,
        follower: BrokerId,
        fetch_offset: Offset,
        durable_end: Offset,
        cleaned_end: Offset,
        leader_end: Offset,
    ) {
        let p = self
            .followers
            .get_mut(&follower)
            .expect("the caller checked that the follower is a replica");
        debug_assert!(durable_end <= fetch_offset);
        if durable_end >= leader_end {
            p.last_caught_up_ms = p.last_caught_up_ms.max(now_ms);
        } else if p.last_fetch_leader_end.is_some_and(|e| durable_end >= e) {
            p.last_caught_up_ms = p.last_caught_up_ms.max(p.last_fetch_ms);
        }
        p.log_end = Some(fetch_offset);
        p.durable_end = Some(durable_end);
        p.cleaned_end = Some(cleaned_end);
        p.last_fetch_leader_end = Some(leader_end);
        p.last_fetch_ms = now_ms;
    }

    /// The high watermark the ISR allows (keel's durable rule): the smallest durable end offset
    /// over the maximal ISR, the leader's own being `own_durable_end`. `None` when it cannot be
    /// computed: the committed ISR is below the effective `min.insync.replicas` (KIP-966's
    /// strict rule), or some member has not fetched at this epoch yet.
    pub fn hw_bound(&self, own_durable_end: Offset, min_insync: usize) -> Option<Offset> {
        if self.isr.len() < self.effective_min_isr(min_insync) {
            return None;
        }
        let mut bound = own_durable_end;
        for member in self.maximal_isr() {
            if member == self.me {
                continue;
            }
            bound = bound.min(self.followers.get(&member)?.durable_end?);
        }
        Some(bound)
    }

    /// ISR members, other than the leader, that are out of sync (Kafka's
    /// `getOutOfSyncReplicas`).
    pub fn out_of_sync(&self, now_ms: i64, leader_end: Offset, lag_max_ms: i64) -> Vec<BrokerId> {
        self.isr
            .iter()
            .copied()
            .filter(|&r| r != self.me)
            .filter(|r| !self.followers[r].is_caught_up(leader_end, now_ms, lag_max_ms))
            .collect()
    }

    /// When the next ISR member falls out of sync if it does not fetch: the earliest
    /// `last_caught_up + lag_max + 1` over ISR followers that are not caught up with
    /// `leader_end` now (one that is can fall behind only after an append, and the shell asks
    /// again after every event). `None` while a proposal is in flight (nothing can be proposed
    /// then; the settlement re-arms the timer). Never a deadline that has passed without a
    /// proposal being possible at it, so a shell that sleeps until it never spins.
    pub fn shrink_deadline(&self, lag_max_ms: i64, leader_end: Offset) -> Option<i64> {
        if self.pending.is_some() {
            return None;
        }
        let lag = self
            .isr
            .iter()
            .filter(|&&r| r != self.me)
            .filter(|r| self.followers[r].durable_end != Some(leader_end))
            .map(|r| {
                self.followers[r]
                    .last_caught_up_ms
                    .saturating_add(lag_max_ms)
                    .saturating_add(1)
            })
            .min();
        lag.map(|t| t.max(self.retry_after_ms))
    }

    /// Whether `follower` may join the ISR (Kafka's `isFollowerInSync` plus keel's durable
    /// rule): a replica not in the ISR whose durable end has reached `hw_floor` (the highest
    /// high watermark this replica exposed or persisted) and the start of this leader epoch.
    /// The second condition is what keeps every replica's high watermark, not only this
    /// leader's, below the new member's durable end: this leader's log end offset at election
    /// was at or above every high watermark in the cluster.
    pub fn may_join(&self, follower: BrokerId, hw_floor: Offset) -> bool {
        if self.isr.contains(&follower) || !self.replicas.contains(&follower) {
            return false;
        }
        self.followers
            .get(&follower)
            .and_then(|p| p.durable_end)
            .is_some_and(|d| d >= hw_floor && d >= self.epoch_start)
    }

    /// The first replica, in assignment order, that [`LeaderState::may_join`] the ISR.
    pub fn joiner(&self, hw_floor: Offset) -> Option<BrokerId> {
        self.replicas
            .iter()
            .copied()
            .find(|&r| self.may_join(r, hw_floor))
    }

    /// When a replica that may join the ISR is to be proposed again: a follower's fetch
    /// proposes it at once, but one whose proposal failed (refused, rejected, unanswered) may
    /// never fetch again with anything new (a caught-up follower's partition is not even named
    /// in its fetch session), so the timer proposes it after the backoff. `None` while a
    /// proposal is in flight or nobody may join.
    pub fn expand_deadline(&self, hw_floor: Offset) -> Option<i64> {
        if self.pending.is_some() {
            return None;
        }
        self.joiner(hw_floor).map(|_| self.retry_after_ms)
    }

    /// Proposes `isr` (assignment order) unless a proposal is in flight or backing off.
    /// Returns whether it did.
    pub fn propose(
        &mut self,
        now_ms: i64,
        isr: Vec<BrokerId>,
        leader_epoch: LeaderEpoch,
        partition_epoch: i32,
    ) -> bool {
        if self.pending.is_some() || now_ms < self.retry_after_ms {
            return false;
        }
        assert!(
            isr.contains(&self.me),
            "an ISR proposal never removes the leader itself"
        );
        assert!(
            isr.iter().all(|r| self.replicas.contains(r)),
            "an ISR proposal stays within the assignment"
        );
        let id = self.next_id;
        self.next_id += 1;
        self.pending = Some(Pending {
            id,
            proposed: isr.clone(),
        });
        self.outbox = Some(AlterPartition {
            id,
            leader: self.me,
            leader_epoch,
            partition_epoch,
            isr,
        });
        true
    }

    /// The controller rejected the proposal `id` (or the shell gave up on it): forget it, and
    /// do not propose again before `retry_after_ms`.
    pub fn proposal_failed(&mut self, id: u64, retry_after_ms: i64) -> bool {
        if self.pending.as_ref().is_some_and(|p| p.id == id) {
            self.pending = None;
            if self.outbox.as_ref().is_some_and(|o| o.id == id) {
                self.outbox = None;
            }
            self.retry_after_ms = retry_after_ms;
            return true;
        }
        false
    }

    /// The committed ISR with `change` applied, in assignment order.
    pub fn isr_with(&self, add: Option<BrokerId>, remove: &[BrokerId]) -> Vec<BrokerId> {
        self.replicas
            .iter()
            .copied()
            .filter(|r| (self.isr.contains(r) || Some(*r) == add) && !remove.contains(r))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B0: BrokerId = BrokerId(0);
    const B1: BrokerId = BrokerId(1);
    const B2: BrokerId = BrokerId(2);

    fn leader(isr: &[BrokerId]) -> LeaderState {
        LeaderState::new(1_000, B0, &[B0, B1, B2], isr, Offset(0))
    }

    /// A replica outside the ISR, however far behind, does not hold the high watermark back
    /// (Kafka's `maybeIncrementLeaderHW` counts the ISR only): otherwise every acks=all waits
    /// for a replica that is down. Pins sim/mutants' `hw-over-assignment`, which the simulator
    /// cannot see (safety holds; the client's retries absorb the timeouts).
    #[test]
    fn a_replica_outside_the_isr_does_not_hold_the_high_watermark() {
        let mut l = leader(&[B0, B1]);
        l.record_fetch(1_000, B1, Offset(10), Offset(10), Offset::ZERO, Offset(10));
        l.record_fetch(1_000, B2, Offset(2), Offset(2), Offset::ZERO, Offset(10));
        assert_eq!(l.hw_bound(Offset(10), 1), Some(Offset(10)));
    }

    /// Kafka's `maybeIncrementLeaderHW` with keel's durable rule: the smallest durable end over
    /// the ISR, and nothing before every member has reported.
    #[test]
    fn hw_bound_is_the_smallest_durable_end_in_the_isr() {
        let mut l = leader(&[B0, B1, B2]);
        assert_eq!(l.hw_bound(Offset(10), 1), None, "nobody has fetched yet");
        l.record_fetch(1_000, B1, Offset(10), Offset(7), Offset::ZERO, Offset(10));
        assert_eq!(l.hw_bound(Offset(10), 1), None, "B2 has not fetched yet");
        l.record_fetch(1_000, B2, Offset(10), Offset(9), Offset::ZERO, Offset(10));
        assert_eq!(l.hw_bound(Offset(10), 1), Some(Offset(7)));
        assert_eq!(
            l.hw_bound(Offset(5), 1),
            Some(Offset(5)),
            "the leader's own"
        );
    }

    /// Table: committed ISR size against min.insync.replicas and the replica count (KIP-966's
    /// strict rule, Kafka's `effectiveMinIsr`).
    #[test]
    fn hw_bound_needs_min_insync_members() {
        let cases: &[(&[BrokerId], usize, bool)] = &[
            (&[B0, B1, B2], 3, true),
            (&[B0, B1], 2, true),
            (&[B0, B1], 3, false),
            (&[B0], 1, true),
            (&[B0], 2, false),
        ];
        for &(isr, min, advances) in cases {
            let mut l = leader(isr);
            for &f in &[B1, B2] {
                l.record_fetch(1_000, f, Offset(4), Offset(4), Offset::ZERO, Offset(4));
            }
            assert_eq!(
                l.hw_bound(Offset(4), min).is_some(),
                advances,
                "isr {isr:?} min {min}"
            );
        }
        let sole = LeaderState::new(0, B0, &[B0], &[B0], Offset(0));
        assert_eq!(sole.effective_min_isr(2), 1, "never more than the replicas");
    }

    /// Kafka's maximalIsr: a pending expansion counts its new member, a pending shrink keeps
    /// the members it removes.
    #[test]
    fn pending_changes_count_the_maximal_isr() {
        let mut l = leader(&[B0, B1]);
        l.record_fetch(1_000, B1, Offset(10), Offset(10), Offset::ZERO, Offset(10));
        l.record_fetch(1_000, B2, Offset(10), Offset(6), Offset::ZERO, Offset(10));
        assert_eq!(l.hw_bound(Offset(10), 1), Some(Offset(10)));
        assert!(l.propose(1_000, l.isr_with(Some(B2), &[]), LeaderEpoch(1), 0));
        assert_eq!(l.maximal_isr(), vec![B0, B1, B2]);
        assert_eq!(l.hw_bound(Offset(10), 1), Some(Offset(6)), "waits for B2");
        assert!(
            !l.propose(1_000, vec![B0], LeaderEpoch(1), 0),
            "one in flight"
        );

        let mut l = leader(&[B0, B1, B2]);
        l.record_fetch(1_000, B1, Offset(10), Offset(10), Offset::ZERO, Offset(10));
        l.record_fetch(1_000, B2, Offset(10), Offset(3), Offset::ZERO, Offset(10));
        assert!(l.propose(1_000, l.isr_with(None, &[B2]), LeaderEpoch(1), 0));
        assert_eq!(l.maximal_isr(), vec![B0, B1, B2]);
        assert_eq!(
            l.hw_bound(Offset(10), 1),
            Some(Offset(3)),
            "B2 still counts"
        );
        l.apply_committed(2_000, &[B0, B1, B2], &[B0, B1]);
        assert_eq!(l.hw_bound(Offset(10), 1), Some(Offset(10)));
    }

    /// Replica.scala's lastCaughtUpTime: caught up when the (durable) fetch reaches the leader's
    /// log end at fetch time, or the leader's end at the previous fetch.
    #[test]
    fn last_caught_up_time_follows_replica_scala() {
        let mut l = leader(&[B0, B1, B2]);
        let lag = 30_000;
        l.record_fetch(5_000, B1, Offset(10), Offset(10), Offset::ZERO, Offset(10));
        assert_eq!(l.followers[&B1].last_caught_up_ms, 5_000);
        // Behind the leader now, but at the leader's end of the previous fetch.
        l.record_fetch(9_000, B1, Offset(12), Offset(10), Offset::ZERO, Offset(20));
        assert_eq!(l.followers[&B1].last_caught_up_ms, 5_000);
        l.record_fetch(12_000, B1, Offset(20), Offset(20), Offset::ZERO, Offset(30));
        assert_eq!(l.followers[&B1].last_caught_up_ms, 9_000);
        // Fetched, but never synced: not caught up.
        l.record_fetch(13_000, B2, Offset(30), Offset(0), Offset::ZERO, Offset(30));
        assert_eq!(l.followers[&B2].last_caught_up_ms, 1_000, "from the reset");
        assert!(l.out_of_sync(31_000, Offset(30), lag).is_empty());
        assert_eq!(l.out_of_sync(31_001, Offset(30), lag), vec![B2]);
        assert_eq!(l.shrink_deadline(lag, Offset(30)), Some(31_001));
        assert_eq!(
            l.shrink_deadline(lag, Offset(20)),
            Some(31_001),
            "B1 is caught up with a leader at 20: no deadline of its own"
        );
        assert_eq!(l.out_of_sync(39_001, Offset(30), lag), vec![B1, B2]);
        assert!(
            l.out_of_sync(39_001, Offset(20), lag) == vec![B2],
            "B1 at the end"
        );
        // A follower caught up with the leader's end has no deadline: no timer spins.
        l.record_fetch(13_000, B2, Offset(30), Offset(30), Offset::ZERO, Offset(30));
        assert_eq!(l.shrink_deadline(lag, Offset(30)), Some(39_001));
        assert_eq!(l.shrink_deadline(lag, Offset(20)), Some(43_001));
        l.record_fetch(13_000, B1, Offset(30), Offset(30), Offset::ZERO, Offset(30));
        assert_eq!(l.shrink_deadline(lag, Offset(30)), None);
    }

    /// Kafka's expansion rule, durable: at the high watermark and the epoch start offset.
    #[test]
    fn may_join_at_the_high_watermark_and_the_epoch_start() {
        let mut l = LeaderState::new(0, B0, &[B0, B1, B2], &[B0, B1], Offset(8));
        assert!(!l.may_join(B2, Offset(5)), "has not fetched");
        l.record_fetch(0, B2, Offset(8), Offset(7), Offset::ZERO, Offset(8));
        assert!(!l.may_join(B2, Offset(5)), "below the epoch start");
        l.record_fetch(0, B2, Offset(9), Offset(8), Offset::ZERO, Offset(9));
        assert!(l.may_join(B2, Offset(8)));
        assert!(!l.may_join(B2, Offset(9)), "below the high watermark");
        assert!(!l.may_join(B1, Offset(0)), "already in the ISR");
        assert!(!l.may_join(BrokerId(7), Offset(0)), "not a replica");
    }

    /// A follower that joins at the high watermark, its fetches not at the leader's log end for
    /// longer than the lag allows, counts as caught up from the time it joined: the shrink check
    /// does not remove it at once (simulator seed 935: the ISR flipped between the two as fast
    /// as the controller committed, and simulated time stood still). A follower that must not
    /// join is not kept out: a leader whose log a follower cannot read to the end (damage)
    /// needs the follower in the ISR to step down to it.
    #[test]
    fn a_member_that_just_joined_is_not_shrunk_at_once() {
        let lag = 30_000;
        let mut l = LeaderState::new(0, B0, &[B0, B1, B2], &[B0, B1], Offset(0));
        l.record_fetch(1_000, B1, Offset(9), Offset(9), Offset::ZERO, Offset(9));
        // B2 reached offset 5 long ago; the leader is at 9, its high watermark at 5.
        l.record_fetch(1_000, B2, Offset(5), Offset(5), Offset::ZERO, Offset(9));
        l.record_fetch(40_000, B2, Offset(5), Offset(5), Offset::ZERO, Offset(9));
        assert!(l.may_join(B2, Offset(5)));
        assert!(l.propose(40_000, l.isr_with(Some(B2), &[]), LeaderEpoch(0), 0));
        l.apply_committed(40_010, &[B0, B1, B2], &[B0, B1, B2]);
        assert!(
            l.out_of_sync(40_010, Offset(9), lag).is_empty(),
            "caught up as of joining"
        );
        assert_eq!(l.shrink_deadline(lag, Offset(9)), Some(70_011));
        assert_eq!(l.out_of_sync(70_011, Offset(9), lag), vec![B2]);
    }

    #[test]
    fn a_failed_proposal_backs_off_then_may_be_retried() {
        let mut l = leader(&[B0, B1, B2]);
        assert!(l.propose(0, vec![B0, B1], LeaderEpoch(1), 4));
        let sent = l.outbox.take().unwrap();
        assert_eq!((sent.partition_epoch, sent.isr.clone()), (4, vec![B0, B1]));
        assert!(!l.proposal_failed(sent.id + 1, 100), "not ours");
        assert!(l.proposal_failed(sent.id, 100));
        assert!(
            !l.propose(50, vec![B0, B1], LeaderEpoch(1), 4),
            "backing off"
        );
        assert!(l.propose(100, vec![B0, B1], LeaderEpoch(1), 4));
        assert_ne!(l.outbox.as_ref().unwrap().id, sent.id);
    }
}
