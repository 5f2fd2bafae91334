//! Leader elections an operator asks for, and the controller's leader balance: ElectLeaders
//! (KIP-460: preferred and unclean elections) and `auto.leader.rebalance.enable`.
//!
//! Both are commands in the shape of the rest of the controller: they read the
//! [`MetadataState`] and return the PartitionChange records that carry them out, changing
//! nothing. A preferred election moves leadership to a partition's first assigned replica
//! (its *preferred leader*, which placement spreads evenly over the brokers) when that replica
//! is live and in the ISR; the ISR does not change, so nothing committed can be lost. An
//! unclean election gives a partition without a leader one: from the ISR if any member is
//! live, else any live replica, which becomes the whole ISR and loses the writes only the ISR
//! had (it is what `unclean.leader.election.enable` does automatically, asked for once).
//!
//! What always holds: a preferred election never shrinks an ISR and picks only a live ISR
//! member; every record carries the partition epoch it was computed at (controller invariant
//! 7), so one computed on a stale state is refused on apply and computed again.
//!
//! Kafka sources: `ReplicationControlManager.electLeaders` / `electLeader`,
//! `PartitionChangeBuilder` (Election.PREFERRED, Election.UNCLEAN), and for the balance the
//! ZooKeeper controller's `checkAndTriggerAutoLeaderRebalance` (KRaft's
//! `maybeBalancePartitionLeaders` elects every imbalanced partition without the percentage).

use std::collections::{BTreeMap, BTreeSet};

use super::records::{BrokerList, PartitionChangeRecord};
use super::{BrokerId, ControllerError, MetadataRecord, MetadataState, Partition, TopicId};

/// KIP-460's election types, with Kafka's ids (`ElectionType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElectionType {
    /// Move leadership to the preferred (first assigned) replica.
    Preferred = 0,
    /// Elect a leader for a partition that has none, from outside the ISR if need be.
    Unclean = 1,
}

impl ElectionType {
    /// The type with Kafka's id `id`, if there is one.
    pub fn from_id(id: i8) -> Option<ElectionType> {
        match id {
            0 => Some(ElectionType::Preferred),
            1 => Some(ElectionType::Unclean),
            _ => None,
        }
    }
}

/// Kafka's defaults for the leader balance: `auto.leader.rebalance.enable` true,
/// `leader.imbalance.check.interval.seconds` 300, `leader.imbalance.per.broker.percentage` 10.
pub const LEADER_IMBALANCE_CHECK_INTERVAL_MS: u64 = 300_000;
/// See [`LEADER_IMBALANCE_CHECK_INTERVAL_MS`].
pub const LEADER_IMBALANCE_PER_BROKER_PERCENTAGE: u32 = 10;

/// One partition's outcome in an ElectLeaders answer.
pub type ElectionResult = ((String, i32), Result<(), ControllerError>);

impl MetadataState {
    /// ElectLeaders (KIP-460; KRaft's `ReplicationControlManager.electLeaders`) for
    /// `partitions` (topic name, index), or for every partition when `None`. Per partition:
    /// UNKNOWN_TOPIC_OR_PARTITION for one that does not exist; ELECTION_NOT_NEEDED when the
    /// preferred replica already leads (preferred) or the partition has a live leader
    /// (unclean); PREFERRED_LEADER_NOT_AVAILABLE when the preferred replica is fenced or out
    /// of the ISR; ELIGIBLE_LEADERS_NOT_AVAILABLE when no replica is live (unclean). When
    /// every partition is asked for, those that needed no election are left out of the
    /// results, as Kafka leaves them out. Results in the order asked (or topic name order,
    /// then index), with the records that carry out the elections.
    pub fn elect_leaders_request(
        &self,
        election: ElectionType,
        partitions: Option<&[(String, i32)]>,
    ) -> (Vec<ElectionResult>, Vec<MetadataRecord>) {
        let live: BTreeSet<BrokerId> = self.live_brokers().into_iter().collect();
        let asked: Vec<(String, i32)> = match partitions {
            Some(p) => p.to_vec(),
            None => self
                .topics()
                .flat_map(|t| (0..t.partitions.len() as i32).map(|i| (t.name.clone(), i)))
                .collect(),
        };
        let mut results = Vec::with_capacity(asked.len());
        let mut records = Vec::new();
        let mut done = BTreeSet::new();
        for (name, index) in asked {
            let outcome = match (self.topic(&name), self.partition(&name, index)) {
                (None, _) => Err(ControllerError::UnknownTopicOrPartition(format!(
                    "No such topic as {name}"
                ))),
                (Some(_), None) => Err(ControllerError::UnknownTopicOrPartition(format!(
                    "No such partition as {name}-{index}"
                ))),
                (Some(topic), Some(p)) => match elect_one(election, p, &live) {
                    Ok(change) => {
                        // A partition named twice is elected once.
                        if done.insert((name.clone(), index)) {
                            records.push(change.record(topic.id, index, p));
                        }
                        Ok(())
                    }
                    Err(e) => Err(e(&format!("{name}-{index}"))),
                },
            };
            if partitions.is_none()
                && matches!(&outcome, Err(ControllerError::ElectionNotNeeded(_)))
            {
                continue;
            }
            results.push(((name, index), outcome));
        }
        (results, records)
    }

    /// The leader balance's elections (`auto.leader.rebalance.enable`; the ZooKeeper
    /// controller's `checkAndTriggerAutoLeaderRebalance`): for each broker, the share of the
    /// partitions it is the preferred leader of that it does not lead; where that share is
    /// above `percentage` percent, a preferred election for each of those partitions whose
    /// preferred replica is live and in the ISR. Partitions in topic name order, then index.
    pub fn leader_balance_elections(&self, percentage: u32) -> Vec<MetadataRecord> {
        let live: BTreeSet<BrokerId> = self.live_brokers().into_iter().collect();
        // Per preferred broker: (partitions it is preferred for, those it does not lead).
        let mut counts: BTreeMap<BrokerId, (u64, u64)> = BTreeMap::new();
        for topic in self.topics() {
            for p in &topic.partitions {
                let Some(&preferred) = p.replicas.first() else {
                    continue;
                };
                let entry = counts.entry(preferred).or_default();
                entry.0 += 1;
                if p.leader != preferred {
                    entry.1 += 1;
                }
            }
        }
        let imbalanced: BTreeSet<BrokerId> = counts
            .into_iter()
            .filter(|&(_, (preferred, not_led))| not_led * 100 > u64::from(percentage) * preferred)
            .map(|(b, _)| b)
            .collect();
        let mut records = Vec::new();
        for topic in self.topics() {
            for (index, p) in topic.partitions.iter().enumerate() {
                if !p.replicas.first().is_some_and(|b| imbalanced.contains(b)) {
                    continue;
                }
                if let Ok(change) = elect_one(ElectionType::Preferred, p, &live) {
                    records.push(change.record(topic.id, index as i32, p));
                }
            }
        }
        records
    }
}

/// What one election changes.
struct Change {
    leader: BrokerId,
    /// The new ISR, if it changes (an unclean election outside the ISR).
    isr: Option<Vec<BrokerId>>,
}

impl Change {
    fn record(&self, topic: TopicId, index: i32, p: &Partition) -> MetadataRecord {
        let elr = match &self.isr {
            // An unclean leader's log is the partition's now: nobody else is eligible.
            Some(_) if !p.elr.is_empty() => Some(BrokerList {
                brokers: Vec::new(),
            }),
            _ => None,
        };
        PartitionChangeRecord {
            topic_id: topic.0.to_vec(),
            partition: index,
            expected_partition_epoch: p.partition_epoch,
            leader: Some(self.leader.0),
            isr: self.isr.as_ref().map(|isr| BrokerList {
                brokers: isr.iter().map(|b| b.0).collect(),
            }),
            elr,
            replicas: None,
            adding: None,
            removing: None,
        }
        .into()
    }
}

/// A refusal, given the partition's name for its message.
type Refusal = fn(&str) -> ControllerError;

/// The election of `p` of `election`'s type among the `live` brokers.
fn elect_one(
    election: ElectionType,
    p: &Partition,
    live: &BTreeSet<BrokerId>,
) -> Result<Change, Refusal> {
    match election {
        ElectionType::Preferred => {
            let preferred = *p.replicas.first().ok_or(not_available as Refusal)?;
            if p.leader == preferred {
                return Err(|name| {
                    ControllerError::ElectionNotNeeded(format!(
                        "Leader election not needed for topic partition {name}"
                    ))
                });
            }
            if !live.contains(&preferred) || !p.isr.contains(&preferred) {
                return Err(not_available);
            }
            Ok(Change {
                leader: preferred,
                isr: None,
            })
        }
        ElectionType::Unclean => {
            if p.leader != BrokerId::NONE && live.contains(&p.leader) {
                return Err(|name| {
                    ControllerError::ElectionNotNeeded(format!(
                        "Leader election not needed for topic partition {name}: it has a leader"
                    ))
                });
            }
            // A clean choice first: a live ISR member, then a live eligible leader replica.
            if let Some(&r) = p
                .replicas
                .iter()
                .find(|r| p.isr.contains(r) && live.contains(r))
            {
                return Ok(Change {
                    leader: r,
                    isr: None,
                });
            }
            if let Some(&r) = p
                .replicas
                .iter()
                .find(|r| p.elr.contains(r) && live.contains(r))
            {
                let mut isr = p.isr.clone();
                isr.push(r);
                return Ok(Change {
                    leader: r,
                    isr: Some(isr),
                });
            }
            match p.replicas.iter().find(|r| live.contains(r)) {
                Some(&r) => Ok(Change {
                    leader: r,
                    isr: Some(vec![r]),
                }),
                None => Err(|name| {
                    ControllerError::EligibleLeadersNotAvailable(format!(
                        "No live replica of {name} can lead"
                    ))
                }),
            }
        }
    }
}

fn not_available(name: &str) -> ControllerError {
    ControllerError::PreferredLeaderNotAvailable(format!(
        "Failed to elect leader for partition {name} under strategy \
         PreferredReplicaPartitionLeaderElectionStrategy: the preferred replica is not live or \
         not in the ISR"
    ))
}

/// The controller's leader balance timer (`auto.leader.rebalance.enable`): every
/// `interval_ms` it computes [`MetadataState::leader_balance_elections`]. Time comes in as
/// `now_ms`; soft state of the active controller, started afresh when a node becomes it.
#[derive(Clone, Debug)]
pub struct LeaderBalance {
    interval_ms: u64,
    percentage: u32,
    next_ms: Option<u64>,
}

impl LeaderBalance {
    /// A balance every `interval_ms`, for brokers above `percentage` percent.
    pub fn new(interval_ms: u64, percentage: u32) -> LeaderBalance {
        LeaderBalance {
            interval_ms: interval_ms.max(1),
            percentage,
            next_ms: None,
        }
    }

    /// The elections due at `now_ms` (none before the interval passed since the first call
    /// or the last check).
    pub fn poll(&mut self, now_ms: u64, state: &MetadataState) -> Vec<MetadataRecord> {
        let next = *self
            .next_ms
            .get_or_insert(now_ms.saturating_add(self.interval_ms));
        if now_ms < next {
            return Vec::new();
        }
        self.next_ms = Some(now_ms.saturating_add(self.interval_ms));
        state.leader_balance_elections(self.percentage)
    }

    /// Starts the interval again from the next poll (a new controller).
    pub fn reset(&mut self) {
        self.next_ms = None;
    }
}

#[cfg(test)]
mod tests;
