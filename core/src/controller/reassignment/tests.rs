//! Reassignment tests. Reference: KIP-455 ("Proposed Changes": adding and removing replicas,
//! completion once the adding replicas are in the ISR, cancellation), and KRaft's
//! `ReplicationControlManagerTest` reassignment cases.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::controller::{
    AlterPartitionRequest, BrokerRegistration, Endpoint, NewTopic, TopicDefaults, UncleanElection,
};
use crate::error_code as code;
use crate::types::LeaderEpoch;

fn b(n: i32) -> BrokerId {
    BrokerId(n)
}

fn bs(ns: &[i32]) -> Vec<BrokerId> {
    ns.iter().map(|&n| b(n)).collect()
}

fn registration(broker: i32) -> BrokerRegistration {
    BrokerRegistration {
        broker_id: b(broker),
        incarnation_id: [broker as u8 + 1; 16],
        endpoints: vec![Endpoint {
            name: "PLAINTEXT".into(),
            host: "127.0.0.1".into(),
            port: 9092 + broker,
            security_protocol: 0,
        }],
        rack: None,
    }
}

fn apply_all(state: &mut MetadataState, records: &[MetadataRecord]) {
    for r in records {
        state.apply(r).expect("command records apply");
    }
    state.check_invariants();
}

/// Brokers 0..4, unfenced, and `name` with one partition on replicas `replicas` (leader the
/// first, every replica in the ISR), built by placing it on exactly those brokers.
fn cluster_with(name: &str, rf: i16, configs: &[(&str, &str)]) -> MetadataState {
    let mut state = MetadataState::new();
    for n in 0..4 {
        let (epoch, records) = state
            .register_broker(&registration(n), UncleanElection::Disabled)
            .unwrap();
        apply_all(&mut state, &records);
        let records = state
            .unfence_broker(b(n), epoch, UncleanElection::Disabled)
            .unwrap();
        apply_all(&mut state, &records);
    }
    let records = state
        .create_topic(
            &NewTopic {
                name: name.into(),
                partitions: 1,
                replication_factor: rf,
                configs: configs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<BTreeMap<_, _>>(),
                topic_id: TopicId([7; 16]),
            },
            &[b(0), b(1), b(2)],
            &TopicDefaults::default(),
        )
        .unwrap();
    apply_all(&mut state, &records);
    if rf == 3 {
        // Placement starts where the topic id says: put the replicas in the order 0, 1, 2
        // (a reordering), then move leadership to 0 (a preferred election).
        let (results, records) = state.alter_partition_reassignments(&[ReassignmentRequest {
            topic: name.into(),
            partition: 0,
            target: Some(bs(&[0, 1, 2])),
        }]);
        assert_eq!(results[0].1, Ok(()));
        apply_all(&mut state, &records);
        let (_, records) = state.elect_leaders_request(
            crate::controller::ElectionType::Preferred,
            Some(&[(name.to_string(), 0)]),
        );
        apply_all(&mut state, &records);
        let p = state.partition(name, 0).unwrap();
        assert_eq!((p.replicas.clone(), p.leader), (bs(&[0, 1, 2]), b(0)));
        assert_eq!(sorted(&p.isr), bs(&[0, 1, 2]));
    }
    state
}

fn sorted(v: &[BrokerId]) -> Vec<BrokerId> {
    let mut v = v.to_vec();
    v.sort();
    v
}

fn cluster() -> MetadataState {
    cluster_with("t", 3, &[])
}

fn p0(state: &MetadataState) -> Partition {
    state.partition("t", 0).unwrap().clone()
}

fn reassign(target: Option<&[i32]>) -> ReassignmentRequest {
    ReassignmentRequest {
        topic: "t".into(),
        partition: 0,
        target: target.map(bs),
    }
}

/// Runs one request for `t-0` and applies its records: the partition's outcome.
fn run(state: &mut MetadataState, target: Option<&[i32]>) -> Result<(), ControllerError> {
    let (results, records) = state.alter_partition_reassignments(&[reassign(target)]);
    assert_eq!(results.len(), 1);
    if results[0].1.is_err() {
        assert!(records.is_empty(), "a refusal changes nothing");
    }
    apply_all(state, &records);
    results.into_iter().next().unwrap().1
}

/// The leader's AlterPartition for `t-0` asking for `isr`, applied.
fn alter_isr(state: &mut MetadataState, isr: &[i32]) -> Partition {
    let p = p0(state);
    let leader = state.broker(p.leader).unwrap();
    let request = AlterPartitionRequest {
        broker_id: p.leader,
        broker_epoch: leader.epoch,
        topic_id: TopicId([7; 16]),
        partition: 0,
        leader_epoch: p.leader_epoch,
        partition_epoch: p.partition_epoch,
        new_isr: bs(isr),
    };
    let (next, records) = state.alter_partition(&request).unwrap();
    apply_all(state, &records);
    assert_eq!(
        next,
        p0(state),
        "alter_partition predicts the applied partition"
    );
    next
}

#[test]
fn a_move_adds_first_then_removes_once_the_new_replica_is_in_sync() {
    let mut state = cluster();
    let before = p0(&state);
    assert_eq!(before.replicas, bs(&[0, 1, 2]));
    run(&mut state, Some(&[1, 2, 3])).unwrap();
    let p = p0(&state);
    assert_eq!(
        p.replicas,
        bs(&[1, 2, 3, 0]),
        "target first, then the removed"
    );
    assert_eq!(p.adding, bs(&[3]));
    assert_eq!(p.removing, bs(&[0]));
    assert_eq!(
        p.isr, before.isr,
        "nothing leaves the ISR before the new replica joins"
    );
    assert_eq!(p.leader, before.leader);
    assert_eq!(p.leader_epoch, before.leader_epoch);
    let listed = state.list_partition_reassignments(None);
    assert_eq!(
        listed,
        vec![OngoingReassignment {
            topic: "t".into(),
            partition: 0,
            replicas: bs(&[1, 2, 3, 0]),
            adding: bs(&[3]),
            removing: bs(&[0]),
        }]
    );
    // Broker 3 caught up: the leader (0, being removed) takes it into the ISR, which
    // completes the reassignment and moves leadership to the first target replica in sync.
    let done = alter_isr(&mut state, &[0, 1, 2, 3]);
    assert_eq!(done.replicas, bs(&[1, 2, 3]));
    assert_eq!(sorted(&done.isr), bs(&[1, 2, 3]));
    assert!(!done.is_reassigning());
    assert_eq!(done.leader, b(1));
    assert_eq!(done.leader_epoch, LeaderEpoch(before.leader_epoch.0 + 1));
    assert!(state.list_partition_reassignments(None).is_empty());
}

#[test]
fn an_isr_change_without_every_adding_replica_does_not_complete() {
    let mut state = cluster();
    run(&mut state, Some(&[3, 2])).unwrap();
    // Broker 1 (being removed) falls out of the ISR: still waiting for 3.
    let p = alter_isr(&mut state, &[0, 2]);
    assert!(p.is_reassigning());
    assert_eq!(p.replicas, bs(&[3, 2, 0, 1]));
    let done = alter_isr(&mut state, &[0, 2, 3]);
    assert_eq!(done.replicas, bs(&[3, 2]));
    assert_eq!(sorted(&done.isr), bs(&[2, 3]));
    assert_eq!(done.leader, b(3), "the first target replica in the new ISR");
}

#[test]
fn a_shrink_completes_at_once() {
    let mut state = cluster();
    let before = p0(&state);
    run(&mut state, Some(&[0, 1])).unwrap();
    let p = p0(&state);
    assert_eq!(p.replicas, bs(&[0, 1]));
    assert_eq!(sorted(&p.isr), bs(&[0, 1]));
    assert_eq!(p.leader, before.leader);
    assert!(!p.is_reassigning());
}

#[test]
fn the_old_replicas_stay_until_the_new_isr_has_min_insync_members() {
    // Simulator seed 758: a move whose completion left one ISR member, on a disk that then
    // rotted, with the other copy deleted.
    let mut state = cluster_with("t", 3, &[("min.insync.replicas", "2")]);
    run(&mut state, Some(&[3, 2])).unwrap();
    // 2 falls out of the ISR; 3 joins: the ISR less the removed would be [3] alone.
    alter_isr(&mut state, &[0, 1]);
    let p = alter_isr(&mut state, &[0, 1, 3]);
    assert!(p.is_reassigning(), "waits for a second member: {p:?}");
    let done = alter_isr(&mut state, &[0, 1, 2, 3]);
    assert_eq!(done.replicas, bs(&[3, 2]));
    assert_eq!(sorted(&done.isr), bs(&[2, 3]));
}

#[test]
fn a_reordering_changes_the_preferred_leader_only() {
    let mut state = cluster();
    run(&mut state, Some(&[2, 0, 1])).unwrap();
    let p = p0(&state);
    assert_eq!(p.replicas, bs(&[2, 0, 1]));
    assert_eq!(
        p.leader,
        b(0),
        "the leader stays; a preferred election moves it"
    );
    assert!(!p.is_reassigning());
}

#[test]
fn the_current_replicas_change_nothing() {
    let state = cluster();
    let (results, records) = state.alter_partition_reassignments(&[reassign(Some(&[0, 1, 2]))]);
    assert_eq!(results[0].1, Ok(()));
    assert!(records.is_empty());
}

#[test]
fn a_grow_from_one_replica_completes_when_the_new_one_joins() {
    let mut state = cluster_with("t", 1, &[]);
    let only = p0(&state).replicas[0];
    let other = (only.0 + 1) % 4;
    run(&mut state, Some(&[only.0, other])).unwrap();
    let p = p0(&state);
    assert_eq!(p.adding, bs(&[other]));
    assert!(p.removing.is_empty());
    let done = alter_isr(&mut state, &[only.0, other]);
    assert_eq!(done.replicas, bs(&[only.0, other]));
    assert!(!done.is_reassigning());
    assert_eq!(done.leader_epoch, p.leader_epoch, "the leader stays");
}

#[test]
fn cancelling_reverts_to_the_original_replicas() {
    let mut state = cluster();
    let before = p0(&state);
    run(&mut state, Some(&[1, 2, 3])).unwrap();
    run(&mut state, None).unwrap();
    let p = p0(&state);
    assert_eq!(
        p.replicas,
        bs(&[1, 2, 0]),
        "Kafka's revert: the replicas less the adding"
    );
    assert_eq!(p.isr, before.isr);
    assert!(!p.is_reassigning());
    assert_eq!(
        run(&mut state, None).unwrap_err().code(),
        code::NO_REASSIGNMENT_IN_PROGRESS
    );
}

#[test]
fn cancelling_after_a_new_replica_joined_takes_it_out_of_the_isr() {
    let mut state = cluster_with("t", 1, &[]);
    let o = p0(&state).replicas[0].0;
    let (x, y) = ((o + 1) % 4, (o + 2) % 4);
    run(&mut state, Some(&[o, x, y])).unwrap();
    let p = alter_isr(&mut state, &[o, x]);
    assert!(p.is_reassigning(), "{y} is not in sync yet");
    run(&mut state, None).unwrap();
    let p = p0(&state);
    assert_eq!(p.replicas, bs(&[o]));
    assert_eq!(p.isr, bs(&[o]));
    assert_eq!(p.leader, b(o));
}

#[test]
fn a_cancel_that_would_lose_data_is_refused() {
    let mut state = cluster_with("t", 1, &[]);
    let only = p0(&state).replicas[0].0;
    let other = (only + 1) % 4;
    run(&mut state, Some(&[other])).unwrap();
    // The new replica joins: that completes the move (the old one leaves).
    let done = alter_isr(&mut state, &[only, other]);
    assert_eq!(done.replicas, bs(&[other]));
    assert_eq!(done.isr, bs(&[other]));
    assert_eq!(done.leader, b(other));
    // A partition whose ISR holds only adding replicas cannot be hand-built through the
    // commands above (completion comes first), so build one through records.
    let mut state = cluster();
    run(&mut state, Some(&[3])).unwrap();
    let p = p0(&state);
    let mut forced = p.clone();
    forced.isr = bs(&[3]);
    forced.leader = b(3);
    let record = change_record(TopicId([7; 16]), 0, &p, &forced);
    state.apply(&record).unwrap();
    state.check_invariants();
    let before = state.clone();
    let err = run(&mut state, None).unwrap_err();
    assert_eq!(err.code(), code::INVALID_REPLICA_ASSIGNMENT);
    assert_eq!(state, before);
}

#[test]
fn a_new_target_replaces_the_reassignment_from_the_original_replicas() {
    let mut state = cluster();
    run(&mut state, Some(&[1, 2, 3])).unwrap();
    run(&mut state, Some(&[0, 1, 3])).unwrap();
    let p = p0(&state);
    assert_eq!(p.replicas, bs(&[0, 1, 3, 2]));
    assert_eq!(p.adding, bs(&[3]));
    assert_eq!(p.removing, bs(&[2]));
    // Back to the original replicas: the same as a cancel.
    run(&mut state, Some(&[0, 1, 2])).unwrap();
    let p = p0(&state);
    assert_eq!(p.replicas, bs(&[0, 1, 2]));
    assert!(!p.is_reassigning());
}

#[test]
fn bad_requests_are_refused_with_kafkas_codes_and_change_nothing() {
    let state = cluster();
    let cases: Vec<(ReassignmentRequest, i16)> = vec![
        (reassign(Some(&[])), code::INVALID_REPLICA_ASSIGNMENT),
        (reassign(Some(&[1, 1])), code::INVALID_REPLICA_ASSIGNMENT),
        (reassign(Some(&[1, 9])), code::INVALID_REPLICA_ASSIGNMENT),
        (reassign(Some(&[-1])), code::INVALID_REPLICA_ASSIGNMENT),
        (
            ReassignmentRequest {
                topic: "t".into(),
                partition: 5,
                target: Some(bs(&[0])),
            },
            code::UNKNOWN_TOPIC_OR_PARTITION,
        ),
        (
            ReassignmentRequest {
                topic: "nope".into(),
                partition: 0,
                target: Some(bs(&[0])),
            },
            code::UNKNOWN_TOPIC_OR_PARTITION,
        ),
        (reassign(None), code::NO_REASSIGNMENT_IN_PROGRESS),
    ];
    for (request, expected) in cases {
        let (results, records) =
            state.alter_partition_reassignments(std::slice::from_ref(&request));
        let err = results[0].1.clone().unwrap_err();
        assert_eq!(err.code(), expected, "{request:?}: {err}");
        assert!(!err.to_string().is_empty(), "a message for {request:?}");
        assert!(records.is_empty(), "{request:?} changes nothing");
    }
    // Named twice: the first counts, the second is refused.
    let twice = [reassign(Some(&[0, 1])), reassign(Some(&[0, 2]))];
    let (results, records) = state.alter_partition_reassignments(&twice);
    assert_eq!(results[0].1, Ok(()));
    assert_eq!(
        results[1].1.clone().unwrap_err().code(),
        code::INVALID_REQUEST
    );
    assert_eq!(records.len(), 1);
}

#[test]
fn an_internal_topic_is_not_shrunk_below_its_min_insync_replicas() {
    let mut state = cluster_with(OFFSETS_TOPIC, 3, &[("min.insync.replicas", "2")]);
    let request = |target: &[i32]| ReassignmentRequest {
        topic: OFFSETS_TOPIC.into(),
        partition: 0,
        target: Some(bs(target)),
    };
    let (results, records) = state.alter_partition_reassignments(&[request(&[0])]);
    assert_eq!(
        results[0].1.clone().unwrap_err().code(),
        code::INVALID_REPLICA_ASSIGNMENT
    );
    assert!(records.is_empty());
    // To two replicas, or a move at the same size, is allowed.
    let (results, records) = state.alter_partition_reassignments(&[request(&[0, 1])]);
    assert_eq!(results[0].1, Ok(()));
    apply_all(&mut state, &records);
}

#[test]
fn a_shrink_to_replicas_out_of_sync_waits_until_one_is_in_sync() {
    let mut state = cluster();
    let epoch = state.broker(b(1)).unwrap().epoch;
    let records = state.fence_broker(b(1), UncleanElection::Disabled).unwrap();
    apply_all(&mut state, &records);
    assert_eq!(
        sorted(&p0(&state).isr),
        bs(&[0, 2]),
        "fencing took 1 out of the ISR"
    );
    run(&mut state, Some(&[1])).unwrap();
    let p = p0(&state);
    assert!(p.is_reassigning(), "nothing in sync would be left");
    assert_eq!(p.removing, bs(&[0, 2]));
    assert!(p.adding.is_empty());
    // Unfenced, 1 is still out of the ISR: still waiting.
    let records = state
        .unfence_broker(b(1), epoch, UncleanElection::Disabled)
        .unwrap();
    apply_all(&mut state, &records);
    assert!(p0(&state).is_reassigning());
    // Caught up, the leader takes it in: done, and it leads.
    let done = alter_isr(&mut state, &[0, 1, 2]);
    assert_eq!(done.replicas, bs(&[1]));
    assert_eq!(done.isr, bs(&[1]));
    assert_eq!(done.leader, b(1));
}

#[test]
fn a_reassignment_survives_replay_and_snapshots() {
    let mut state = cluster();
    let mut log = crate::quorum::snapshot::state_records(&state);
    let (_, records) = state.alter_partition_reassignments(&[reassign(Some(&[1, 2, 3]))]);
    apply_all(&mut state, &records);
    log.extend(records);
    // A new controller replays the log: the same reassignment in progress.
    let mut replayed = MetadataState::new();
    apply_all(&mut replayed, &log);
    assert_eq!(replayed, state);
    // And a snapshot keeps it.
    let bytes = crate::quorum::snapshot::encode_state(&state);
    let restored = crate::quorum::snapshot::decode_state(&bytes).unwrap();
    assert_eq!(restored, state);
    assert_eq!(restored.list_partition_reassignments(None).len(), 1);
    // The new controller completes it.
    let done = alter_isr(&mut replayed, &[0, 1, 2, 3]);
    assert_eq!(done.replicas, bs(&[1, 2, 3]));
}

#[test]
fn a_record_computed_before_a_reassignment_does_not_apply_after_it() {
    let mut state = cluster();
    let stale = state
        .alter_partition_reassignments(&[reassign(Some(&[0, 1, 3]))])
        .1;
    run(&mut state, Some(&[1, 2, 3])).unwrap();
    let before = state.clone();
    assert!(
        state.apply(&stale[0]).is_err(),
        "invariant 7: the partition epoch moved"
    );
    assert_eq!(state, before);
}

#[test]
fn malformed_reassignment_records_are_refused() {
    let state = cluster();
    let p = p0(&state);
    let mut bad = Vec::new();
    for (replicas, adding, removing) in [
        (vec![0, 1, 2], vec![3], vec![]),  // adding outside the replicas
        (vec![0, 1, 2], vec![1], vec![1]), // in both
        (vec![0, 1, 2], vec![], vec![0, 1, 2]), // removing everything
        (vec![0, 1, 2], vec![1, 1], vec![]), // twice
    ] {
        let mut next = p.clone();
        next.replicas = bs(&replicas);
        next.adding = bs(&adding);
        next.removing = bs(&removing);
        bad.push(change_record(TopicId([7; 16]), 0, &p, &next));
    }
    for record in bad {
        let mut s = state.clone();
        assert!(s.apply(&record).is_err(), "{record:?}");
        assert_eq!(s, state);
    }
}

/// One step of the property test.
#[derive(Clone, Debug)]
enum Step {
    /// A reassignment to these brokers (ids 0..5: 4 is not registered).
    Reassign(Vec<i32>),
    Cancel,
    /// The leader takes these brokers (from the replicas) into its ISR, or drops them.
    Isr(Vec<bool>),
    Fence(i32),
    Unfence(i32),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        proptest::collection::vec(0..5i32, 0..5).prop_map(Step::Reassign),
        Just(Step::Cancel),
        proptest::collection::vec(any::<bool>(), 6).prop_map(Step::Isr),
        (0..4i32).prop_map(Step::Fence),
        (0..4i32).prop_map(Step::Unfence),
    ]
}

proptest! {
    /// Against any sequence of reassignments, cancellations, ISR changes and fencing: every
    /// command's records apply (or it refuses and changes nothing), the invariants hold, the
    /// ISR never empties, an old replica leaves only once every new one was in the ISR, and a
    /// completed reassignment leaves exactly the target replicas.
    #[test]
    fn reassignments_keep_the_invariants(steps in proptest::collection::vec(step(), 1..40)) {
        let mut state = cluster();
        let mut target: Option<Vec<BrokerId>> = None;
        for s in steps {
            let before = p0(&state);
            // The replicas known to hold everything committed: the ISR, and those the leader
            // judged caught up in this step's AlterPartition.
            let mut in_sync = before.isr.clone();
            match s {
                Step::Reassign(t) => {
                    let (results, records) =
                        state.alter_partition_reassignments(&[reassign(Some(&t))]);
                    match &results[0].1 {
                        Ok(()) => {
                            apply_all(&mut state, &records);
                            target = Some(bs(&t));
                        }
                        Err(_) => prop_assert!(records.is_empty()),
                    }
                }
                Step::Cancel => {
                    let (results, records) =
                        state.alter_partition_reassignments(&[reassign(None)]);
                    if results[0].1.is_ok() {
                        apply_all(&mut state, &records);
                        target = Some(p0(&state).replicas);
                    } else {
                        prop_assert!(records.is_empty());
                    }
                }
                Step::Isr(members) => {
                    let p = before.clone();
                    if p.leader == BrokerId::NONE {
                        continue;
                    }
                    let mut isr: Vec<BrokerId> = p
                        .replicas
                        .iter()
                        .zip(members.iter().chain(std::iter::repeat(&false)))
                        .filter(|(r, &m)| m || **r == p.leader)
                        .map(|(r, _)| *r)
                        .collect();
                    isr.dedup();
                    let request = AlterPartitionRequest {
                        broker_id: p.leader,
                        broker_epoch: state.broker(p.leader).unwrap().epoch,
                        topic_id: TopicId([7; 16]),
                        partition: 0,
                        leader_epoch: p.leader_epoch,
                        partition_epoch: p.partition_epoch,
                        new_isr: isr.clone(),
                    };
                    in_sync.extend(isr);
                    if let Ok((next, records)) = state.alter_partition(&request) {
                        apply_all(&mut state, &records);
                        prop_assert_eq!(next, p0(&state));
                    }
                }
                Step::Fence(n) => {
                    let records = state.fence_broker(b(n), UncleanElection::Disabled).unwrap();
                    apply_all(&mut state, &records);
                }
                Step::Unfence(n) => {
                    let epoch = state.broker(b(n)).unwrap().epoch;
                    let records = state
                        .unfence_broker(b(n), epoch, UncleanElection::Disabled)
                        .unwrap();
                    apply_all(&mut state, &records);
                }
            }
            let after = p0(&state);
            prop_assert!(!after.isr.is_empty(), "the ISR never empties");
            // An original replica leaves only once every adding replica was in the ISR.
            let removed: Vec<BrokerId> = before
                .replicas
                .iter()
                .copied()
                .filter(|r| !after.replicas.contains(r))
                .collect();
            if !removed.is_empty() && before.is_reassigning() && !after.is_reassigning() {
                let completed = before.removing.iter().all(|r| removed.contains(r))
                    && before.adding.iter().all(|r| after.replicas.contains(r));
                if completed {
                    prop_assert!(
                        before.adding.iter().all(|a| in_sync.contains(a)),
                        "completed with an adding replica out of the ISR: {:?} -> {:?}",
                        before,
                        after
                    );
                    prop_assert_eq!(&after.replicas, &before.target_replicas());
                    if let Some(t) = &target {
                        prop_assert_eq!(&after.replicas, t);
                    }
                }
            }
            // Something committed is held by an ISR member that was in sync before.
            prop_assert!(
                after.isr.iter().any(|r| in_sync.contains(r)),
                "the new ISR shares a member with the old: {:?} -> {:?}",
                before,
                after
            );
        }
    }
}
