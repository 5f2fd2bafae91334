//! Balanced replica placement for `keel partitions reassign --generate` and `keel broker
//! decommission`: given the brokers (with their racks) and the partitions to place, a target
//! replica list per partition, in the spirit of Kafka's `kafka-reassign-partitions.sh
//! --generate` (`AdminUtils.assignReplicasToBrokers`). Pure: the caller fetches the metadata
//! and sends the AlterPartitionReassignments.
//!
//! What always holds for a plan [`balanced`] returns:
//! - every partition gets exactly its replication factor of distinct brokers, all from the
//!   brokers given;
//! - preferred leaders (first replicas) go round-robin over the brokers, so no broker is the
//!   preferred leader of more than one partition above any other;
//! - where brokers have racks, the brokers are ordered alternating between racks (Kafka's
//!   `getRackAlternatedBrokerList`) and a partition takes a broker of a rack it already uses
//!   only once every rack is used, so a partition spans min(replication factor, racks) racks;
//!   with as many partitions as brokers (or a multiple), every broker holds as many replicas.
//! - [`drain`] (a decommission) moves only the replicas on the leaving broker.

use std::collections::{BTreeMap, BTreeSet};

use super::BrokerId;

/// One broker a plan may place replicas on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanBroker {
    /// Its id.
    pub id: BrokerId,
    /// Its `broker.rack`, if set.
    pub rack: Option<String>,
}

/// One partition to place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanPartition {
    /// The topic.
    pub topic: String,
    /// The partition index.
    pub partition: i32,
    /// Its replicas now, preferred leader first.
    pub replicas: Vec<BrokerId>,
}

/// Why no plan can be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// No broker to place replicas on.
    #[error("no broker to place replicas on")]
    NoBrokers,
    /// A broker named twice.
    #[error("broker {0} is named twice")]
    DuplicateBroker(BrokerId),
    /// A partition has more replicas than there are brokers.
    #[error(
        "{topic}-{partition} has {replicas} replicas but only {brokers} brokers can hold them"
    )]
    TooFewBrokers {
        /// The partition's topic.
        topic: String,
        /// The partition's index.
        partition: i32,
        /// How many replicas it has.
        replicas: usize,
        /// How many brokers could hold them.
        brokers: usize,
    },
}

/// The target replicas of every partition, in the order given (see the module documentation):
/// Kafka's `AdminUtils.assignReplicasToBrokersRackAware` (or `RackUnaware` when no broker has
/// a rack) with a start index of 0, counting partitions across topics, so that preferred
/// leaders go round-robin over every partition given.
pub fn balanced(
    brokers: &[PlanBroker],
    partitions: &[PlanPartition],
) -> Result<Vec<Vec<BrokerId>>, PlanError> {
    if brokers.is_empty() {
        return Err(PlanError::NoBrokers);
    }
    let mut seen = BTreeSet::new();
    for b in brokers {
        if !seen.insert(b.id) {
            return Err(PlanError::DuplicateBroker(b.id));
        }
    }
    let order = rack_alternated(brokers);
    let rack_of: BTreeMap<BrokerId, Option<&str>> =
        brokers.iter().map(|b| (b.id, b.rack.as_deref())).collect();
    let rack_count = rack_of.values().collect::<BTreeSet<_>>().len();
    let n = order.len();
    let mut plan = Vec::with_capacity(partitions.len());
    let mut shift = 0usize;
    for (k, p) in partitions.iter().enumerate() {
        let rf = p.replicas.len();
        if rf > n {
            return Err(PlanError::TooFewBrokers {
                topic: p.topic.clone(),
                partition: p.partition,
                replicas: rf,
                brokers: n,
            });
        }
        if k > 0 && k % n == 0 {
            shift += 1;
        }
        let first = k % n;
        let mut chosen = vec![order[first]];
        let mut racks: BTreeSet<Option<&str>> = BTreeSet::from([rack_of[&order[first]]]);
        let mut step = 0usize;
        while chosen.len() < rf {
            // Kafka's `replicaIndex`: never the leader's position; the shift varies the
            // followers from one round of leaders to the next.
            let pos = (first + 1 + (shift * rack_count + step) % (n - 1)) % n;
            step += 1;
            let b = order[pos];
            let rack = rack_of[&b];
            let rack_ok = !racks.contains(&rack) || racks.len() == rack_count;
            if rack_ok && !chosen.contains(&b) {
                chosen.push(b);
                racks.insert(rack);
            }
            // Local invariant: rf <= n, so within 2n steps every position was tried once
            // with every rack used; an unchosen broker is always found.
            debug_assert!(
                step <= 2 * n * n,
                "no broker found for {}-{}",
                p.topic,
                p.partition
            );
        }
        plan.push(chosen);
    }
    Ok(plan)
}

/// The target replicas of every partition when broker `leaving` is drained (a decommission):
/// in each partition that has it, `leaving` is replaced, at its position, by the broker of
/// `brokers` holding the fewest replicas so far that the partition does not have, preferring
/// one of a rack the partition does not use yet; the other replicas stay. Partitions without
/// `leaving` keep their replicas (and count towards the load). `brokers` must not include
/// `leaving`. [`PlanError::TooFewBrokers`] when a partition has no broker left to take its
/// replica.
pub fn drain(
    brokers: &[PlanBroker],
    partitions: &[PlanPartition],
    leaving: BrokerId,
) -> Result<Vec<Vec<BrokerId>>, PlanError> {
    if brokers.is_empty() {
        return Err(PlanError::NoBrokers);
    }
    let mut rack_of: BTreeMap<BrokerId, Option<&str>> = BTreeMap::new();
    for b in brokers {
        if rack_of.insert(b.id, b.rack.as_deref()).is_some() {
            return Err(PlanError::DuplicateBroker(b.id));
        }
    }
    let mut load: BTreeMap<BrokerId, usize> = rack_of.keys().map(|b| (*b, 0)).collect();
    for p in partitions {
        for r in &p.replicas {
            if let Some(l) = load.get_mut(r) {
                *l += 1;
            }
        }
    }
    let mut plan = Vec::with_capacity(partitions.len());
    for p in partitions {
        let mut replicas = p.replicas.clone();
        if let Some(pos) = replicas.iter().position(|r| *r == leaving) {
            let used: BTreeSet<Option<&str>> = replicas
                .iter()
                .filter(|r| **r != leaving)
                .filter_map(|r| rack_of.get(r).copied())
                .collect();
            let candidates = || rack_of.keys().copied().filter(|b| !replicas.contains(b));
            let fresh_rack = candidates()
                .filter(|b| !used.contains(&rack_of[b]))
                .min_by_key(|b| load[b]);
            let Some(new) = fresh_rack.or_else(|| candidates().min_by_key(|b| load[b])) else {
                return Err(PlanError::TooFewBrokers {
                    topic: p.topic.clone(),
                    partition: p.partition,
                    replicas: p.replicas.len(),
                    brokers: brokers.len(),
                });
            };
            *load.get_mut(&new).expect("a broker of the plan") += 1;
            replicas[pos] = new;
        }
        plan.push(replicas);
    }
    Ok(plan)
}

/// The brokers by id, alternating between racks (Kafka's `getRackAlternatedBrokerList`):
/// the first broker of each rack in rack order, then the second of each, and so on. Brokers
/// without a rack form one group of their own.
fn rack_alternated(brokers: &[PlanBroker]) -> Vec<BrokerId> {
    let mut by_rack: BTreeMap<Option<&str>, Vec<BrokerId>> = BTreeMap::new();
    for b in brokers {
        by_rack.entry(b.rack.as_deref()).or_default().push(b.id);
    }
    for ids in by_rack.values_mut() {
        ids.sort();
    }
    let longest = by_rack.values().map(Vec::len).max().unwrap_or(0);
    (0..longest)
        .flat_map(|i| by_rack.values().filter_map(move |ids| ids.get(i).copied()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brokers(ids: &[(i32, Option<&str>)]) -> Vec<PlanBroker> {
        ids.iter()
            .map(|(id, rack)| PlanBroker {
                id: BrokerId(*id),
                rack: rack.map(str::to_string),
            })
            .collect()
    }

    fn partitions(count: i32, replicas: &[i32]) -> Vec<PlanPartition> {
        (0..count)
            .map(|p| PlanPartition {
                topic: "t".into(),
                partition: p,
                replicas: replicas.iter().map(|b| BrokerId(*b)).collect(),
            })
            .collect()
    }

    fn counts(plan: &[Vec<BrokerId>]) -> (BTreeMap<BrokerId, usize>, BTreeMap<BrokerId, usize>) {
        let mut replicas = BTreeMap::new();
        let mut leaders = BTreeMap::new();
        for p in plan {
            *leaders.entry(p[0]).or_insert(0) += 1;
            for r in p {
                *replicas.entry(*r).or_insert(0) += 1;
            }
        }
        (replicas, leaders)
    }

    /// Moving 12 partitions of three replicas from brokers 1-3 onto 1-4 (a broker added):
    /// every broker holds 9 replicas and prefers to lead 3, each partition on three distinct
    /// brokers. Reference: kafka-reassign-partitions.sh --generate (AdminUtils).
    #[test]
    fn a_generated_plan_spreads_replicas_and_leaders_evenly() {
        let b = brokers(&[(1, None), (2, None), (3, None), (4, None)]);
        let plan = balanced(&b, &partitions(12, &[1, 2, 3])).unwrap();
        assert_eq!(plan.len(), 12);
        for p in &plan {
            assert_eq!(p.len(), 3);
            assert_eq!(p.iter().collect::<BTreeSet<_>>().len(), 3, "{p:?}");
        }
        let (replicas, leaders) = counts(&plan);
        assert_eq!(replicas.len(), 4);
        assert!(replicas.values().all(|c| *c == 9), "{replicas:?}");
        assert!(leaders.values().all(|c| *c == 3), "{leaders:?}");
    }

    /// With racks, each partition spans as many racks as it can (Kafka's rack-aware
    /// assignment, KIP-36): three replicas over racks a, b, c land on three racks.
    #[test]
    fn a_generated_plan_puts_replicas_on_distinct_racks() {
        let b = brokers(&[
            (1, Some("a")),
            (2, Some("a")),
            (3, Some("b")),
            (4, Some("b")),
            (5, Some("c")),
            (6, Some("c")),
        ]);
        let plan = balanced(&b, &partitions(6, &[1, 2, 3])).unwrap();
        let rack = |id: BrokerId| b.iter().find(|x| x.id == id).unwrap().rack.clone();
        for p in &plan {
            let racks: BTreeSet<_> = p.iter().map(|r| rack(*r)).collect();
            assert_eq!(racks.len(), 3, "{p:?}");
        }
        let (replicas, leaders) = counts(&plan);
        assert!(replicas.values().all(|c| *c == 3), "{replicas:?}");
        assert!(leaders.values().all(|c| *c == 1), "{leaders:?}");
    }

    /// Draining broker 3 of 1-4: only partitions on 3 change, each only at 3's position,
    /// to the brokers holding least; a partition of three replicas on 1-3 with only 1, 2
    /// left cannot be drained.
    #[test]
    fn a_drain_replaces_only_the_leaving_broker() {
        let b = brokers(&[(1, None), (2, None), (4, None)]);
        let mut ps = partitions(3, &[1, 2, 3]);
        ps[1].replicas = vec![BrokerId(3), BrokerId(1), BrokerId(2)];
        ps[2].replicas = vec![BrokerId(1), BrokerId(2), BrokerId(4)];
        let plan = drain(&b, &ps, BrokerId(3)).unwrap();
        assert_eq!(plan[0], vec![BrokerId(1), BrokerId(2), BrokerId(4)]);
        assert_eq!(plan[1], vec![BrokerId(4), BrokerId(1), BrokerId(2)]);
        assert_eq!(plan[2], ps[2].replicas);
        let two = brokers(&[(1, None), (2, None)]);
        assert!(matches!(
            drain(&two, &ps[..1], BrokerId(3)),
            Err(PlanError::TooFewBrokers { .. })
        ));
    }

    #[test]
    fn too_few_brokers_duplicates_and_no_brokers_are_refused() {
        let b = brokers(&[(1, None), (2, None)]);
        assert!(matches!(
            balanced(&b, &partitions(1, &[1, 2, 3])),
            Err(PlanError::TooFewBrokers {
                replicas: 3,
                brokers: 2,
                ..
            })
        ));
        assert_eq!(
            balanced(&brokers(&[(1, None), (1, None)]), &[]),
            Err(PlanError::DuplicateBroker(BrokerId(1)))
        );
        assert_eq!(balanced(&[], &[]), Err(PlanError::NoBrokers));
    }
}
