//! Partition reassignment (KIP-455): AlterPartitionReassignments and
//! ListPartitionReassignments, and the completion of a reassignment once its new replicas are
//! in sync.
//!
//! A reassignment of a partition from its replicas `O` to a target `T` is kept in the
//! partition itself, as KRaft keeps it: while it is in progress the partition's `replicas` are
//! the union, `T` first then the members of `O` not in `T`; `adding` is `T \ O`, `removing` is
//! `O \ T`. The brokers of `adding` open their replicas as followers and fetch from the leader
//! like any follower; the leader takes each into the ISR by the ordinary rule (caught up to the
//! high watermark, [`crate::partition::leader`]). Once every adding replica is in the ISR, the
//! change that brings the last one in also completes the reassignment
//! ([`completion`]): `replicas` becomes `T`, the ISR loses the removing replicas, and if the
//! leader is being removed, the first target replica in the new ISR that is live leads (a new
//! leader epoch). A removing replica's broker deletes its copy only when it applies the
//! committed change that removed it. Cancelling (a target of null) goes back to `O`: the
//! adding replicas leave `replicas` and the ISR.
//!
//! Every change is a PartitionChangeRecord in the metadata log (fields `replicas`, `adding`,
//! `removing`), so a reassignment survives controller failover and broker restarts: whichever
//! controller applies the change that brings the last adding replica into the ISR completes
//! it, whatever controller started it.
//!
//! What always holds (controller invariant 3, checked on apply): `adding` and `removing` are
//! disjoint subsets of `replicas` and `removing` is never all of it; the ISR is within
//! `replicas`. A completion keeps at least one ISR member that was already in it (the ISR
//! less `removing` is never empty) and elects only from that new ISR, so nothing committed is
//! lost; the old replicas leave only once every new one is in the ISR.
//!
//! Kafka sources: `ReplicationControlManager.alterPartitionReassignments` /
//! `changePartitionReassignment` / `cancelPartitionReassignment` /
//! `listPartitionReassignments`, `PartitionReassignmentReplicas` (`maybeCompleteReassignment`),
//! `PartitionReassignmentRevert`, `PartitionChangeBuilder.tryCompleteReassignment`.

use std::collections::BTreeSet;

use super::records::{BrokerList, PartitionChangeRecord};
use super::{
    next_elr, BrokerId, ControllerError, MetadataRecord, MetadataState, Partition, TopicId,
};
use crate::txn::{OFFSETS_TOPIC, TRANSACTION_STATE_TOPIC};

/// One partition of an AlterPartitionReassignments request: its target replicas, or `None`
/// to cancel the reassignment in progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReassignmentRequest {
    /// The topic's name.
    pub topic: String,
    /// The partition index.
    pub partition: i32,
    /// The target replicas, preferred leader first; `None` cancels.
    pub target: Option<Vec<BrokerId>>,
}

/// One partition's outcome in an AlterPartitionReassignments answer.
pub type ReassignmentResult = ((String, i32), Result<(), ControllerError>);

/// A reassignment in progress, as ListPartitionReassignments shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OngoingReassignment {
    /// The topic's name.
    pub topic: String,
    /// The partition index.
    pub partition: i32,
    /// Every replica (target first, then those being removed).
    pub replicas: Vec<BrokerId>,
    /// The replicas being added.
    pub adding: Vec<BrokerId>,
    /// The replicas being removed.
    pub removing: Vec<BrokerId>,
}

/// The partition a completed reassignment leaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Completion {
    /// The target replicas.
    pub replicas: Vec<BrokerId>,
    /// The ISR less the removed replicas.
    pub isr: Vec<BrokerId>,
    /// The leader: the old one if it stays, else the first live target replica in `isr`.
    pub leader: BrokerId,
}

/// Whether `p`'s reassignment completes once its ISR is `isr` and its leader `leader` (KRaft's
/// `PartitionReassignmentReplicas.maybeCompleteReassignment`): a reassignment is in progress,
/// every adding replica is in `isr`, and `isr` less the removing replicas has
/// `min_insync` members (at most as many as the target replicas; at least one) and holds a
/// leader (the current one if it stays, else a live target replica, first in target
/// order).
pub(crate) fn completion(
    p: &Partition,
    isr: &[BrokerId],
    leader: BrokerId,
    min_insync: i32,
    live: impl Fn(BrokerId) -> bool,
) -> Option<Completion> {
    if !p.is_reassigning() {
        return None;
    }
    let mut isr = isr.to_vec();
    if crate::planted::active(crate::planted::Bug::RemoveBeforeInSync) {
        // Planted: the new replicas are taken to be in sync as they are.
        for &a in &p.adding {
            if !isr.contains(&a) {
                isr.push(a);
            }
        }
    } else if !p.adding.iter().all(|a| isr.contains(a)) {
        return None;
    }
    let replicas = p.target_replicas();
    isr.retain(|r| !p.removing.contains(r));
    // keel's rule beyond Kafka's: the old replicas leave only once the new ISR has
    // `min.insync.replicas` members (at most the target's size), so that completing never
    // leaves acknowledged writes on fewer copies than acks=all put them on.
    let needed = (min_insync.max(1) as usize).min(replicas.len());
    if isr.is_empty() || isr.len() < needed {
        return None;
    }
    let leader = if leader != BrokerId::NONE && isr.contains(&leader) {
        leader
    } else {
        *replicas.iter().find(|r| isr.contains(r) && live(**r))?
    };
    Some(Completion {
        replicas,
        isr,
        leader,
    })
}

impl MetadataState {
    /// AlterPartitionReassignments (KIP-455; KRaft's
    /// `ReplicationControlManager.alterPartitionReassignments`): per partition, in the order
    /// asked, its outcome, and the records that start, replace or cancel the reassignments.
    ///
    /// Refusals, each changing nothing for that partition: UNKNOWN_TOPIC_OR_PARTITION for one
    /// that does not exist; INVALID_REPLICA_ASSIGNMENT for an empty target, a replica named
    /// twice, a broker that is not registered, an internal topic (`__consumer_offsets`,
    /// `__transaction_state`) shrunk below its `min.insync.replicas`, or a cancellation when
    /// none of the original replicas is in the ISR (reverting would lose what only the new
    /// ones hold); NO_REASSIGNMENT_IN_PROGRESS for a cancellation with none in progress;
    /// INVALID_REQUEST for a partition named twice in one request.
    ///
    /// A target equal to the replicas (no reassignment in progress) changes nothing. A new
    /// target for a partition being reassigned replaces the reassignment: it starts from the
    /// original replicas. A target that adds no replica (a shrink or a reordering) completes
    /// at once when the ISR less the removed replicas is not empty and holds a leader.
    pub fn alter_partition_reassignments(
        &self,
        requests: &[ReassignmentRequest],
    ) -> (Vec<ReassignmentResult>, Vec<MetadataRecord>) {
        let live: BTreeSet<BrokerId> = self.live_brokers().into_iter().collect();
        let mut seen = BTreeSet::new();
        let mut results = Vec::with_capacity(requests.len());
        let mut records = Vec::new();
        for request in requests {
            let key = (request.topic.clone(), request.partition);
            let outcome = if seen.insert(key.clone()) {
                self.reassign_one(request, &live).map(|record| {
                    records.extend(record);
                })
            } else {
                Err(ControllerError::InvalidRequest(format!(
                    "Partition {}-{} is named more than once in the request",
                    request.topic, request.partition
                )))
            };
            results.push((key, outcome));
        }
        (results, records)
    }

    /// One partition's reassignment: its record, if anything changes.
    fn reassign_one(
        &self,
        request: &ReassignmentRequest,
        live: &BTreeSet<BrokerId>,
    ) -> Result<Option<MetadataRecord>, ControllerError> {
        let name = format!("{}-{}", request.topic, request.partition);
        let (topic, p) = match (
            self.topic(&request.topic),
            self.partition(&request.topic, request.partition),
        ) {
            (Some(t), Some(p)) => (t, p),
            _ => {
                return Err(ControllerError::UnknownTopicOrPartition(format!(
                    "Unable to find partition {name}"
                )))
            }
        };
        let Some(target) = &request.target else {
            if !p.is_reassigning() {
                return Err(ControllerError::NoReassignmentInProgress(format!(
                    "Unable to cancel reassignment for partition {name}: no reassignment is in \
                     progress"
                )));
            }
            let revert = revert(p, live).ok_or_else(|| cannot_revert(&name))?;
            return Ok(Some(change_record(topic.id, request.partition, p, &revert)));
        };
        self.validate_target(&request.topic, &name, p, target, topic)?;
        let base = if p.is_reassigning() {
            revert(p, live).ok_or_else(|| cannot_revert(&name))?
        } else {
            p.clone()
        };
        let original = base.replicas.clone();
        let mut next = base;
        next.replicas = target.clone();
        next.replicas
            .extend(original.iter().filter(|r| !target.contains(r)));
        next.adding = target
            .iter()
            .copied()
            .filter(|r| !original.contains(r))
            .collect();
        next.removing = original
            .iter()
            .copied()
            .filter(|r| !target.contains(r))
            .collect();
        if !next.is_reassigning() {
            // A reordering (or the current replicas): the new order at once.
            next.replicas = target.clone();
        } else if let Some(done) = completion(
            &next,
            &next.isr,
            next.leader,
            topic.config.min_insync_replicas(),
            |b| live.contains(&b),
        ) {
            // Nothing to add: the shrink completes now.
            finish(&mut next, done, topic.config.min_insync_replicas());
        }
        if next == *p {
            return Ok(None);
        }
        Ok(Some(change_record(topic.id, request.partition, p, &next)))
    }

    fn validate_target(
        &self,
        topic_name: &str,
        name: &str,
        p: &Partition,
        target: &[BrokerId],
        topic: &super::Topic,
    ) -> Result<(), ControllerError> {
        if target.is_empty() {
            return Err(ControllerError::InvalidReplicaAssignment(format!(
                "The manual partition assignment for {name} includes an empty replica list."
            )));
        }
        let unique: BTreeSet<BrokerId> = target.iter().copied().collect();
        if unique.len() != target.len() {
            return Err(ControllerError::InvalidReplicaAssignment(format!(
                "The manual partition assignment for {name} includes duplicate replicas: \
                 {target:?}"
            )));
        }
        if let Some(b) = target.iter().find(|b| !self.brokers.contains_key(b)) {
            return Err(ControllerError::InvalidReplicaAssignment(format!(
                "The manual partition assignment for {name} includes broker {b}, but no such \
                 broker is registered."
            )));
        }
        let internal = topic_name == OFFSETS_TOPIC || topic_name == TRANSACTION_STATE_TOPIC;
        let min_insync = topic.config.min_insync_replicas().max(1) as usize;
        let original = p.original_replicas().len();
        if internal && target.len() < original && target.len() < min_insync {
            return Err(ControllerError::InvalidReplicaAssignment(format!(
                "The internal topic partition {name} cannot be reassigned to {} replica(s): \
                 fewer than its min.insync.replicas ({min_insync})",
                target.len()
            )));
        }
        Ok(())
    }

    /// ListPartitionReassignments (KIP-455): the reassignments in progress among `partitions`
    /// (topic name, index), or among every partition when `None`; partitions that do not
    /// exist or are not being reassigned are left out (as KRaft's
    /// `listPartitionReassignments` leaves them out). Topic name order, then index, for
    /// `None`; the order asked otherwise.
    pub fn list_partition_reassignments(
        &self,
        partitions: Option<&[(String, i32)]>,
    ) -> Vec<OngoingReassignment> {
        let asked: Vec<(String, i32)> = match partitions {
            Some(p) => p.to_vec(),
            None => self
                .topics()
                .flat_map(|t| (0..t.partitions.len() as i32).map(|i| (t.name.clone(), i)))
                .collect(),
        };
        let mut seen = BTreeSet::new();
        asked
            .into_iter()
            .filter(|key| seen.insert(key.clone()))
            .filter_map(|(topic, index)| {
                let p = self.partition(&topic, index)?;
                p.is_reassigning().then(|| OngoingReassignment {
                    topic,
                    partition: index,
                    replicas: p.replicas.clone(),
                    adding: p.adding.clone(),
                    removing: p.removing.clone(),
                })
            })
            .collect()
    }
}

/// `p` with its reassignment cancelled (KRaft's `PartitionReassignmentRevert`): the adding
/// replicas leave `replicas`, the ISR and the ELR; a leader among them gives way to the first
/// live original replica in the ISR (none: leaderless until one is live). `None` when no
/// original replica is in the ISR: only the new replicas may hold what was committed, and
/// Kafka's revert would then take the original replicas back uncleanly.
fn revert(p: &Partition, live: &BTreeSet<BrokerId>) -> Option<Partition> {
    let mut next = p.clone();
    next.replicas = p.original_replicas();
    next.isr.retain(|r| !p.adding.contains(r));
    next.elr.retain(|r| !p.adding.contains(r));
    next.adding.clear();
    next.removing.clear();
    if next.isr.is_empty() {
        return None;
    }
    if !next.isr.contains(&next.leader) {
        next.leader = next
            .replicas
            .iter()
            .copied()
            .find(|r| next.isr.contains(r) && live.contains(r))
            .unwrap_or(BrokerId::NONE);
    }
    Some(next)
}

fn cannot_revert(name: &str) -> ControllerError {
    ControllerError::InvalidReplicaAssignment(format!(
        "Unable to revert the reassignment of {name}: none of its original replicas is in the \
         ISR, so only the new replicas may hold its committed data; let it complete, or wait \
         until an original replica is back in sync"
    ))
}

/// Applies a completion to `next`: the target replicas, the ISR less the removed ones, the
/// leader, no reassignment, the ELR recomputed for the new ISR within the new replicas.
pub(crate) fn finish(next: &mut Partition, done: Completion, min_insync: i32) {
    let before = next.clone();
    next.replicas = done.replicas;
    next.isr = done.isr;
    next.leader = done.leader;
    next.adding.clear();
    next.removing.clear();
    let mut elr = next_elr(&before, &next.isr, min_insync);
    elr.retain(|r| next.replicas.contains(r));
    next.elr = elr;
}

/// The record that takes partition `index` of `topic` from `old` to `new` (same epochs: apply
/// bumps them), naming only what changes.
pub(crate) fn change_record(
    topic: TopicId,
    index: i32,
    old: &Partition,
    new: &Partition,
) -> MetadataRecord {
    let list = |v: &[BrokerId]| BrokerList {
        brokers: v.iter().map(|b| b.0).collect(),
    };
    PartitionChangeRecord {
        topic_id: topic.0.to_vec(),
        partition: index,
        expected_partition_epoch: old.partition_epoch,
        leader: (new.leader != old.leader).then_some(new.leader.0),
        isr: (new.isr != old.isr).then(|| list(&new.isr)),
        elr: (new.elr != old.elr).then(|| list(&new.elr)),
        replicas: (new.replicas != old.replicas).then(|| list(&new.replicas)),
        adding: (new.adding != old.adding).then(|| list(&new.adding)),
        removing: (new.removing != old.removing).then(|| list(&new.removing)),
    }
    .into()
}

#[cfg(test)]
mod tests;
