//! The convergence phase: after healing, the replicas of every partition must become one
//! again, and the state no client reads must agree.
//!
//! What it checks, on the brokers' own state (read only, through the harness's registry of
//! live brokers, as the monitor does), within [`CONVERGE_MS`] of simulated time:
//! - **Settled** ([`unsettled`]): every broker runs and has applied the same metadata (the
//!   same raft index); every partition of every topic (`__consumer_offsets` included) has a
//!   leader, its ISR is its whole assignment, no broker outside the assignment holds a replica
//!   of it (a replica a reassignment removed is deleted), the leader leads the epoch the metadata names
//!   with that ISR, every follower follows it at that epoch, and every replica's log end,
//!   durable end and high watermark equal the leader's log end. Not settled within the bound
//!   is a liveness failure naming the partition, the replica and what it lacks: a follower
//!   that never rejoins the ISR is seen here even if it never leads.
//! - **Agreed** ([`compare`]), once settled, in one step (nothing runs between two reads):
//!   the metadata every broker applied is the same state; below the high watermark, every
//!   replica holds byte-identical batches at the same offsets (from the largest log start of
//!   the replicas), the same leader-epoch cache and the same producer state (per producer id:
//!   epoch, last sequence, offset of its last batch). A difference is a safety violation
//!   naming the partition, the two replicas and the first offset where they differ.
//!   Compacted topics (`cleanup.policy` with `compact`) are compared by what compaction
//!   promises rather than by bytes, since each replica's cleaner runs on its own: every
//!   replica holds the same latest record (offset, value) for every key below the high
//!   watermark, a key whose latest record is a tombstone counting as absent (a tombstone past
//!   its horizon may be removed on one replica and not yet on another).
//!
//! The metadata logs are compared through what they applied: every broker, voter or
//! learner, at the same applied raft index must hold the same `MetadataState` (the log's
//! entries themselves are inside each broker's quorum driver, which the simulator cannot
//! reach without changing the broker).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use keel_core::controller::{BrokerId, MetadataState};
use keel_core::log::EpochEntry;
use keel_core::partition::Role;
use keel_core::Offset;
use keel_node::broker::Broker;

use crate::harness::SimCluster;

/// The bound on settling, after healing (the lag bound and a session timeout fit many times).
pub const CONVERGE_MS: u64 = 60_000;
/// How often the phase looks at the replicas while waiting for them to settle.
const LOOK_MS: u64 = 200;
/// How many bytes one read of a replica's log takes while comparing.
const READ_BYTES: usize = 1 << 20;

/// What [`wait_settled`] requires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settle {
    /// Every replica in the ISR and every role taken (writes may still flow: the consumer
    /// group's commits).
    Isr,
    /// [`Settle::Isr`] and every replica's log end, durable end and high watermark at the
    /// leader's log end: nothing in flight.
    Logs,
}

/// Why convergence failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Not settled within [`CONVERGE_MS`]: what was still not.
    Liveness(String),
    /// Settled, but the replicas disagree: where first.
    Safety(String),
}

/// What the phase compared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Compared {
    pub partitions: u64,
    pub replicas: u64,
    pub batches: u64,
    pub bytes: u64,
    /// Replicas on the faulty disk whose log holds a batch that rotted after it was last
    /// read: damage keel detects when it reads the batch (the fault model promises detection,
    /// not absence). Their batches are left out of the comparison.
    pub latent_damage: u64,
}

/// Waits, within [`CONVERGE_MS`], until the cluster is settled as `how` requires; then, for
/// [`Settle::Logs`], compares the replicas. `faulty_disk`: the broker whose disk may rot.
pub async fn converge(
    cluster: &Arc<Mutex<SimCluster>>,
    how: Settle,
    faulty_disk: Option<i32>,
) -> Result<Compared, Failure> {
    let deadline = madsim::time::Instant::now() + Duration::from_millis(CONVERGE_MS);
    loop {
        let (brokers, ids) = {
            let c = cluster.lock().expect("cluster poisoned");
            (c.live_brokers(), c.ids())
        };
        match unsettled(&brokers, &ids, how) {
            Ok(None) if how == Settle::Isr => return Ok(Compared::default()),
            Ok(None) => return compare(&brokers, faulty_disk),
            Ok(Some(why)) if madsim::time::Instant::now() >= deadline => {
                return Err(Failure::Liveness(format!(
                    "not converged {} s after healing: {why}{}",
                    CONVERGE_MS / 1000,
                    describe(&brokers, &why)
                )))
            }
            Ok(Some(_)) => {}
            Err(failure) => return Err(failure),
        }
        madsim::time::sleep(Duration::from_millis(LOOK_MS)).await;
    }
}

/// For a failure that names a partition (`topic-index: ...`), each live replica's log start,
/// log end, durable end, high watermark, role and leader-epoch cache.
fn describe(brokers: &[(i32, Arc<Broker>)], why: &str) -> String {
    let Some((topic, index)) = why
        .split(':')
        .next()
        .and_then(|name| name.rsplit_once('-'))
        .and_then(|(t, i)| Some((t, i.parse::<i32>().ok()?)))
    else {
        return String::new();
    };
    let mut out = String::new();
    for (id, b) in brokers {
        if let Some(p) = b.replica(topic, index) {
            let line = p.with(|r| {
                let epochs: Vec<(i32, i64)> = r
                    .log()
                    .epochs()
                    .entries()
                    .iter()
                    .map(|e| (e.epoch.0, e.start_offset.0))
                    .collect();
                format!(
                    "; replica {id}: {:?} at epoch {}, log [{}, {}), durable end {}, high \
                     watermark {}, epochs (epoch, start) {epochs:?}",
                    r.role(),
                    r.leader_epoch().0,
                    r.log().log_start(),
                    r.log().end(),
                    r.log().durable_end(),
                    r.high_watermark()
                )
            });
            out.push_str(&line);
        }
    }
    out
}

/// One replica, as its broker holds it.
#[derive(Clone, Debug)]
struct ReplicaView {
    role: Role,
    epoch: i32,
    isr: Vec<BrokerId>,
    hw: Offset,
    log_end: Offset,
    durable_end: Offset,
}

fn sorted(mut ids: Vec<BrokerId>) -> Vec<BrokerId> {
    ids.sort();
    ids
}

/// What keeps the cluster from being settled (`Ok(None)`: nothing); an error when brokers
/// at the same applied index hold different metadata.
pub fn unsettled(
    brokers: &[(i32, Arc<Broker>)],
    ids: &[i32],
    how: Settle,
) -> Result<Option<String>, Failure> {
    let live: BTreeMap<i32, &Arc<Broker>> = brokers.iter().map(|(id, b)| (*id, b)).collect();
    if let Some(down) = ids.iter().find(|id| !live.contains_key(id)) {
        return Ok(Some(format!("broker {down} is not running")));
    }
    let applied: BTreeMap<i32, (u64, Arc<MetadataState>)> = live
        .iter()
        .map(|(&id, b)| (id, (b.cluster().applied_index(), b.cluster().state())))
        .collect();
    let (&first, (index, state)) = applied.iter().next().expect("a cluster has brokers");
    for (&id, (i, s)) in &applied {
        if i != index {
            return Ok(Some(format!(
                "metadata: broker {first} applied raft index {index}, broker {id} {i}"
            )));
        }
        if s != state {
            return Err(Failure::Safety(format!(
                "metadata: brokers {first} and {id} both applied raft index {index} and hold \
                 different metadata"
            )));
        }
    }
    for topic in state.topics() {
        for (index, meta) in topic.partitions.iter().enumerate() {
            let index = index as i32;
            let name = format!("{}-{index}", topic.name);
            if meta.leader == BrokerId::NONE {
                return Ok(Some(format!("{name} has no leader")));
            }
            if sorted(meta.isr.clone()) != sorted(meta.replicas.clone()) {
                let out: Vec<i32> = meta
                    .replicas
                    .iter()
                    .filter(|r| !meta.isr.contains(r))
                    .map(|r| r.0)
                    .collect();
                return Ok(Some(format!(
                    "{name}: replicas {out:?} not in the ISR {:?} (leader {}, epoch {})",
                    meta.isr.iter().map(|r| r.0).collect::<Vec<_>>(),
                    meta.leader.0,
                    meta.leader_epoch.0
                )));
            }
            // Exactly the assigned replicas: a replica a reassignment removed is gone once
            // its broker applied the removal.
            if let Some((id, _)) = live.iter().find(|(id, b)| {
                !meta.replicas.contains(&BrokerId(**id)) && b.replica(&topic.name, index).is_some()
            }) {
                return Ok(Some(format!(
                    "{name}: broker {id} still holds a replica, though the replicas are {:?}",
                    meta.replicas.iter().map(|r| r.0).collect::<Vec<_>>()
                )));
            }
            let mut views = BTreeMap::new();
            for r in &meta.replicas {
                let Some(p) = live[&r.0].replica(&topic.name, index) else {
                    return Ok(Some(format!("{name}: broker {} has no replica", r.0)));
                };
                let view = p.with(|rep| ReplicaView {
                    role: rep.role(),
                    epoch: rep.leader_epoch().0,
                    isr: rep.isr(),
                    hw: rep.high_watermark(),
                    log_end: rep.log().end(),
                    durable_end: rep.log().durable_end(),
                });
                views.insert(r.0, view);
            }
            let leader = &views[&meta.leader.0];
            if leader.role != Role::Leader
                || leader.epoch != meta.leader_epoch.0
                || sorted(leader.isr.clone()) != sorted(meta.isr.clone())
            {
                return Ok(Some(format!(
                    "{name}: leader {} is {:?} at epoch {} with ISR {:?}; the metadata says \
                     leader at epoch {} with ISR {:?}",
                    meta.leader.0,
                    leader.role,
                    leader.epoch,
                    leader.isr,
                    meta.leader_epoch.0,
                    meta.isr
                )));
            }
            for (&id, v) in &views {
                if id == meta.leader.0 {
                    continue;
                }
                if v.role
                    != (Role::Follower {
                        leader: meta.leader,
                    })
                    || v.epoch != leader.epoch
                {
                    return Ok(Some(format!(
                        "{name}: replica {id} is {:?} at epoch {}, not a follower of {} at \
                         epoch {}",
                        v.role, v.epoch, meta.leader.0, leader.epoch
                    )));
                }
            }
            if how == Settle::Logs {
                for (&id, v) in &views {
                    let end = leader.log_end;
                    if v.log_end != end || v.durable_end != end || v.hw != end {
                        return Ok(Some(format!(
                            "{name}: replica {id} has log end {}, durable end {}, high \
                             watermark {}; the leader {}'s log ends at {end}",
                            v.log_end, v.durable_end, v.hw, meta.leader.0
                        )));
                    }
                }
            }
        }
    }
    Ok(None)
}

/// What one replica holds below the high watermark.
struct Held {
    /// (base offset, bytes) of every batch from the common log start to the high watermark;
    /// `None` when a batch there rotted on the faulty disk (see [`Compared::latent_damage`]).
    batches: Option<Vec<(Offset, Bytes)>>,
    /// The epoch cache over the same range: (epoch, start, clamped to the common log start).
    epochs: Vec<(i32, Offset)>,
    /// Per producer id: (epoch, last sequence, offset of its last batch), for producers
    /// whose last batch lies in the range.
    producers: BTreeMap<i64, (i16, i32, Offset)>,
}

/// The epochs that wrote `[from, to)`, each with its start (clamped to `from`).
fn epochs_in(entries: &[EpochEntry], from: Offset, to: Offset) -> Vec<(i32, Offset)> {
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let next = entries
            .get(i + 1)
            .map_or(Offset(i64::MAX), |n| n.start_offset);
        if next > from && e.start_offset < to && next > e.start_offset {
            out.push((e.epoch.0, e.start_offset.max(from)));
        }
    }
    out
}

/// Compares every partition's replicas (the cluster settled: see [`unsettled`]).
fn compare(brokers: &[(i32, Arc<Broker>)], faulty_disk: Option<i32>) -> Result<Compared, Failure> {
    let live: BTreeMap<i32, &Arc<Broker>> = brokers.iter().map(|(id, b)| (*id, b)).collect();
    let state = live.values().next().expect("brokers").cluster().state();
    let mut compared = Compared::default();
    for topic in state.topics() {
        for (index, meta) in topic.partitions.iter().enumerate() {
            let index = index as i32;
            let name = format!("{}-{index}", topic.name);
            let handles: Vec<(i32, _)> = meta
                .replicas
                .iter()
                .filter_map(|r| Some((r.0, live[&r.0].replica(&topic.name, index)?)))
                .collect();
            let common_start = handles
                .iter()
                .map(|(_, p)| p.with(|r| r.log().log_start()))
                .max()
                .unwrap_or(Offset::ZERO);
            let hw = live[&meta.leader.0]
                .replica(&topic.name, index)
                .map_or(Offset::ZERO, |p| p.with(|r| r.high_watermark()));
            let compacted = state
                .topic_config(&topic.name)
                .is_some_and(|c| c.cleanup_policy().compact);
            let mut held: Vec<(i32, Held)> = Vec::new();
            for (id, p) in &handles {
                let rots = faulty_disk == Some(*id);
                let h = p
                    .with(|r| -> Result<Held, String> {
                        let mut batches = Some(Vec::new());
                        let mut from = common_start;
                        while from < hw {
                            let read = match r.log().read(from, READ_BYTES, hw) {
                                Ok(read) => read,
                                Err(keel_core::log::LogError::Corrupt { .. }) if rots => {
                                    batches = None;
                                    break;
                                }
                                Err(e) => return Err(format!("reading from {from}: {e}")),
                            };
                            let Some(last) = read.last() else {
                                return Err(format!("no batch at {from} below {hw}"));
                            };
                            from = last.last_offset().plus(1);
                            if let Some(batches) = &mut batches {
                                batches.extend(
                                    read.into_iter().map(|b| (b.base_offset(), b.into_bytes())),
                                );
                            }
                        }
                        let producers = r
                            .producers()
                            .producers()
                            .filter(|(_, e)| {
                                e.last_offset() >= common_start && e.last_offset() < hw
                            })
                            .map(|(pid, e)| (pid.0, (e.epoch(), e.last_seq(), e.last_offset())))
                            .collect();
                        let batches = match batches {
                            Some(b) if compacted => Some(latest_per_key(&b)?),
                            other => other,
                        };
                        Ok(Held {
                            batches,
                            epochs: epochs_in(r.log().epochs().entries(), common_start, hw),
                            producers,
                        })
                    })
                    .map_err(|e| Failure::Safety(format!("{name}: replica {id}: {e}")))?;
                held.push((*id, h));
            }
            compared.partitions += 1;
            compared.replicas += held.len() as u64;
            let Some(((leader_id, leader), others)) = held
                .iter()
                .position(|(id, _)| *id == meta.leader.0)
                .map(|i| {
                    (
                        &held[i],
                        held.iter().filter(move |(id, _)| *id != meta.leader.0),
                    )
                })
            else {
                continue;
            };
            compared.latent_damage +=
                held.iter().filter(|(_, h)| h.batches.is_none()).count() as u64;
            // The batches are compared against a sound replica's: the leader's, or the first
            // follower's when the leader's rotted.
            let reference = std::iter::once((leader_id, leader))
                .chain(held.iter().map(|(id, h)| (id, h)))
                .find_map(|(id, h)| Some((*id, h.batches.as_ref()?)));
            if let Some((_, batches)) = reference {
                compared.batches += batches.len() as u64;
                compared.bytes += batches.iter().map(|(_, b)| b.len() as u64).sum::<u64>();
            }
            for (id, h) in held.iter() {
                if let (Some((ref_id, reference)), Some(batches)) = (reference, &h.batches) {
                    if let Some(at) = first_difference(reference, batches) {
                        if compacted {
                            return Err(Failure::Safety(format!(
                                "{name}: replicas {ref_id} and {id} differ in a key's latest \
                                 value below the high watermark {hw}, first at offset {at} \
                                 (compared from {common_start}; leader {leader_id})"
                            )));
                        }
                        return Err(Failure::Safety(format!(
                            "{name}: replicas {ref_id} and {id} hold different batches below \
                             the high watermark {hw}, first at offset {at} (compared from \
                             {common_start}; leader {leader_id})"
                        )));
                    }
                }
            }
            for (id, h) in others {
                let pair = format!("{name}: replicas {leader_id} (leader) and {id}");
                if leader.epochs != h.epochs {
                    let at = leader
                        .epochs
                        .iter()
                        .zip(&h.epochs)
                        .find(|(a, b)| a != b)
                        .map(|(a, b)| a.1.min(b.1))
                        .or_else(|| {
                            let n = leader.epochs.len().min(h.epochs.len());
                            leader.epochs.get(n).or(h.epochs.get(n)).map(|e| e.1)
                        })
                        .unwrap_or(common_start);
                    return Err(Failure::Safety(format!(
                        "{pair} have different leader-epoch caches below the high watermark \
                         {hw}, first at offset {at}: {:?} and {:?}",
                        leader.epochs, h.epochs
                    )));
                }
                if leader.producers != h.producers {
                    let pid = leader
                        .producers
                        .keys()
                        .chain(h.producers.keys())
                        .find(|pid| leader.producers.get(pid) != h.producers.get(pid))
                        .copied();
                    let at = pid
                        .and_then(|pid| leader.producers.get(&pid).or(h.producers.get(&pid)))
                        .map_or(common_start, |e| e.2);
                    return Err(Failure::Safety(format!(
                        "{pair} have different producer state below the high watermark {hw}, \
                         first at offset {at}: producer {pid:?} is {:?} and {:?}",
                        pid.and_then(|p| leader.producers.get(&p)),
                        pid.and_then(|p| h.producers.get(&p)),
                    )));
                }
            }
        }
    }
    Ok(compared)
}

/// A compacted replica's batches reduced to what compaction keeps: each key's latest record
/// that is not a tombstone, as (offset, key length, key and value), in offset order.
fn latest_per_key(batches: &[(Offset, Bytes)]) -> Result<Vec<(Offset, Bytes)>, String> {
    let mut latest: BTreeMap<Bytes, (Offset, Option<Bytes>)> = BTreeMap::new();
    for (base, bytes) in batches {
        let batch = keel_core::batch::Batch::parse(bytes.clone())
            .map_err(|e| format!("the batch at {base}: {e}"))?;
        if batch.is_control() {
            continue;
        }
        let records = batch
            .records()
            .map_err(|e| format!("the records at {base}: {e}"))?;
        for r in records {
            if let Some(key) = r.key {
                latest.insert(key, (r.offset, r.value));
            }
        }
    }
    let mut out: Vec<(Offset, Bytes)> = latest
        .into_iter()
        .filter_map(|(key, (offset, value))| {
            let value = value?;
            let mut digest = Vec::with_capacity(4 + key.len() + value.len());
            digest.extend_from_slice(&(key.len() as u32).to_be_bytes());
            digest.extend_from_slice(&key);
            digest.extend_from_slice(&value);
            Some((offset, Bytes::from(digest)))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// The first offset at which two replicas' batches differ (base offset or bytes), or where
/// one has a batch the other has not.
fn first_difference(a: &[(Offset, Bytes)], b: &[(Offset, Bytes)]) -> Option<Offset> {
    for (x, y) in a.iter().zip(b) {
        if x != y {
            return Some(x.0.min(y.0));
        }
    }
    let n = a.len().min(b.len());
    a.get(n).or(b.get(n)).map(|(o, _)| *o)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_core::LeaderEpoch;

    fn entry(epoch: i32, start: i64) -> EpochEntry {
        EpochEntry {
            epoch: LeaderEpoch(epoch),
            start_offset: Offset(start),
        }
    }

    #[test]
    fn epochs_in_clamps_to_the_range() {
        let entries = [entry(0, 0), entry(2, 10), entry(5, 20)];
        assert_eq!(
            epochs_in(&entries, Offset(12), Offset(20)),
            vec![(2, Offset(12))]
        );
        assert_eq!(
            epochs_in(&entries, Offset(0), Offset(25)),
            vec![(0, Offset(0)), (2, Offset(10)), (5, Offset(20))]
        );
        // An epoch that starts at the high watermark wrote nothing below it.
        assert_eq!(
            epochs_in(&entries, Offset(0), Offset(20)),
            vec![(0, Offset(0)), (2, Offset(10))]
        );
    }

    #[test]
    fn first_difference_names_the_first_differing_offset() {
        let b = |o: i64, byte: u8| (Offset(o), Bytes::from(vec![byte; 4]));
        let a = vec![b(0, 1), b(3, 2), b(7, 3)];
        assert_eq!(first_difference(&a, &a.clone()), None);
        assert_eq!(
            first_difference(&a, &[b(0, 1), b(3, 9), b(7, 3)]),
            Some(Offset(3))
        );
        assert_eq!(first_difference(&a, &[b(0, 1), b(3, 2)]), Some(Offset(7)));
        assert_eq!(first_difference(&a, &[b(0, 1), b(2, 2)]), Some(Offset(2)));
    }
}
