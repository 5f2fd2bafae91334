use std::collections::BTreeMap;

use super::*;
use crate::controller::{BrokerRegistration, Endpoint, NewTopic, TopicDefaults, UncleanElection};
use crate::error_code as code;

fn b(n: i32) -> BrokerId {
    BrokerId(n)
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

/// Brokers 0..3, unfenced, and topic `t` with `partitions` partitions of replication factor
/// 3 (partition p's preferred leader is broker (start + p) % 3).
fn cluster(partitions: i32) -> MetadataState {
    let mut state = MetadataState::new();
    for n in 0..3 {
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
                name: "t".into(),
                partitions,
                replication_factor: 3,
                configs: BTreeMap::new(),
                topic_id: TopicId([7; 16]),
            },
            &[b(0), b(1), b(2)],
            &TopicDefaults::default(),
        )
        .unwrap();
    apply_all(&mut state, &records);
    state
}

fn fence(state: &mut MetadataState, broker: i32) {
    let records = state
        .fence_broker(b(broker), UncleanElection::Disabled)
        .unwrap();
    apply_all(state, &records);
}

fn unfence(state: &mut MetadataState, broker: i32) {
    let epoch = state.broker(b(broker)).unwrap().epoch;
    let records = state
        .unfence_broker(b(broker), epoch, UncleanElection::Disabled)
        .unwrap();
    apply_all(state, &records);
}

fn codes(results: &[ElectionResult]) -> Vec<(i32, i16)> {
    results
        .iter()
        .map(|((_, p), r)| (*p, r.as_ref().map_or_else(|e| e.code(), |()| code::NONE)))
        .collect()
}

/// KIP-460's preferred election: a partition whose preferred replica leads needs none
/// (ELECTION_NOT_NEEDED); one led elsewhere moves back to its live, in-sync preferred replica
/// at a new leader epoch with its ISR unchanged; one whose preferred replica is fenced gets
/// PREFERRED_LEADER_NOT_AVAILABLE; an unknown topic or partition UNKNOWN_TOPIC_OR_PARTITION.
/// Reference: ReplicationControlManager.electLeader, PartitionChangeBuilder Election.PREFERRED.
#[test]
fn preferred_election_moves_leadership_back_to_the_first_replica() {
    let mut state = cluster(3);
    let preferred: Vec<BrokerId> = (0..3)
        .map(|p| state.partition("t", p).unwrap().replicas[0])
        .collect();
    let asked: Vec<(String, i32)> = (0..3).map(|p| ("t".to_string(), p)).collect();
    let (results, records) = state.elect_leaders_request(ElectionType::Preferred, Some(&asked));
    assert!(records.is_empty());
    assert_eq!(
        codes(&results),
        vec![
            (0, code::ELECTION_NOT_NEEDED),
            (1, code::ELECTION_NOT_NEEDED),
            (2, code::ELECTION_NOT_NEEDED)
        ]
    );
    // Broker preferred[0] restarts (a fence and an unfence): its partition moved away, and it
    // is back in the ISR (a fence keeps the broker out of the ISR; rejoin it as a leader's
    // AlterPartition would).
    let moved = preferred[0];
    fence(&mut state, moved.0);
    unfence(&mut state, moved.0);
    let p0 = state.partition("t", 0).unwrap().clone();
    assert_ne!(p0.leader, moved, "leadership moved off the fenced broker");
    let (results, records) = state.elect_leaders_request(ElectionType::Preferred, Some(&asked));
    assert_eq!(
        codes(&results)[0],
        (0, code::PREFERRED_LEADER_NOT_AVAILABLE),
        "not in the ISR yet"
    );
    assert!(records.iter().all(|r| {
        !matches!(&r.record, Some(crate::controller::Record::PartitionChange(c)) if c.partition == 0)
    }));
    let mut isr = p0.isr.clone();
    isr.push(moved);
    let (_, records) = state
        .alter_partition(&crate::controller::AlterPartitionRequest {
            broker_id: p0.leader,
            broker_epoch: state.broker(p0.leader).unwrap().epoch,
            topic_id: TopicId([7; 16]),
            partition: 0,
            leader_epoch: p0.leader_epoch,
            partition_epoch: p0.partition_epoch,
            new_isr: isr.clone(),
        })
        .unwrap();
    apply_all(&mut state, &records);
    let before = state.partition("t", 0).unwrap().clone();
    let (results, records) = state.elect_leaders_request(ElectionType::Preferred, Some(&asked));
    assert_eq!(codes(&results)[0], (0, code::NONE));
    apply_all(&mut state, &records);
    let after = state.partition("t", 0).unwrap();
    assert_eq!(after.leader, moved);
    assert_eq!(after.isr, before.isr, "a preferred election keeps the ISR");
    assert_eq!(after.leader_epoch.0, before.leader_epoch.0 + 1);
    // Every partition asked for: only those that needed an election are reported.
    let (results, records) = state.elect_leaders_request(ElectionType::Preferred, None);
    assert!(results.is_empty() && records.is_empty(), "{results:?}");
    // Unknown names.
    let unknown = vec![("nope".to_string(), 0), ("t".to_string(), 3)];
    let (results, records) = state.elect_leaders_request(ElectionType::Preferred, Some(&unknown));
    assert!(records.is_empty());
    assert_eq!(
        codes(&results),
        vec![
            (0, code::UNKNOWN_TOPIC_OR_PARTITION),
            (3, code::UNKNOWN_TOPIC_OR_PARTITION)
        ]
    );
    // The preferred replica fenced.
    fence(&mut state, moved.0);
    let (results, _) = state.elect_leaders_request(ElectionType::Preferred, Some(&asked[..1]));
    assert_eq!(
        codes(&results),
        vec![(0, code::PREFERRED_LEADER_NOT_AVAILABLE)]
    );
}

/// KIP-460's unclean election: a partition with a live leader needs none; a leaderless one
/// whose only ISR member is fenced elects a live replica outside the ISR, which becomes the
/// whole ISR (the data-loss trade, asked for); with no live replica at all,
/// ELIGIBLE_LEADERS_NOT_AVAILABLE. Reference: PartitionChangeBuilder Election.UNCLEAN.
#[test]
fn unclean_election_elects_outside_the_isr_only_when_asked() {
    let mut state = cluster(1);
    let asked = vec![("t".to_string(), 0)];
    let (results, _) = state.elect_leaders_request(ElectionType::Unclean, Some(&asked));
    assert_eq!(codes(&results), vec![(0, code::ELECTION_NOT_NEEDED)]);
    // Fence two brokers, then the last ISR member: the partition is leaderless, ISR [last].
    let replicas = state.partition("t", 0).unwrap().replicas.clone();
    fence(&mut state, replicas[0].0);
    fence(&mut state, replicas[1].0);
    fence(&mut state, replicas[2].0);
    let p = state.partition("t", 0).unwrap().clone();
    assert_eq!(p.leader, BrokerId::NONE);
    assert_eq!(p.isr, vec![replicas[2]]);
    let (results, records) = state.elect_leaders_request(ElectionType::Unclean, Some(&asked));
    assert_eq!(
        codes(&results),
        vec![(0, code::ELIGIBLE_LEADERS_NOT_AVAILABLE)]
    );
    assert!(records.is_empty());
    // Broker replicas[0] comes back (its unfencing does not elect it: not in the ISR).
    let epoch = state.broker(replicas[0]).unwrap().epoch;
    let records = state
        .unfence_broker(replicas[0], epoch, UncleanElection::Disabled)
        .unwrap();
    apply_all(&mut state, &records);
    assert_eq!(state.partition("t", 0).unwrap().leader, BrokerId::NONE);
    let (results, _) = state.elect_leaders_request(ElectionType::Preferred, Some(&asked));
    assert_eq!(
        codes(&results),
        vec![(0, code::PREFERRED_LEADER_NOT_AVAILABLE)]
    );
    let (results, records) = state.elect_leaders_request(ElectionType::Unclean, Some(&asked));
    assert_eq!(codes(&results), vec![(0, code::NONE)]);
    apply_all(&mut state, &records);
    let after = state.partition("t", 0).unwrap();
    assert_eq!(after.leader, replicas[0]);
    assert_eq!(
        after.isr,
        vec![replicas[0]],
        "the unclean leader is the whole ISR"
    );
    assert!(after.leader_epoch > p.leader_epoch);
}

/// The leader balance (auto.leader.rebalance.enable; the ZooKeeper controller's
/// checkAndTriggerAutoLeaderRebalance): a broker that leads none of the partitions it is
/// preferred for is above any percentage, and its partitions go back to it once it is live
/// and in their ISRs; a broker below the percentage is left alone.
#[test]
fn leader_balance_elects_preferred_leaders_of_imbalanced_brokers() {
    let mut state = cluster(6);
    assert!(state.leader_balance_elections(10).is_empty(), "balanced");
    fence(&mut state, 0);
    let epoch = state.broker(b(0)).unwrap().epoch;
    let records = state
        .unfence_broker(b(0), epoch, UncleanElection::Disabled)
        .unwrap();
    apply_all(&mut state, &records);
    // Broker 0 is out of every ISR: nothing it could lead.
    assert!(state.leader_balance_elections(10).is_empty());
    for p in 0..6 {
        let part = state.partition("t", p).unwrap().clone();
        if part.isr.contains(&b(0)) {
            continue;
        }
        let mut isr = part.isr.clone();
        isr.push(b(0));
        let (_, records) = state
            .alter_partition(&crate::controller::AlterPartitionRequest {
                broker_id: part.leader,
                broker_epoch: state.broker(part.leader).unwrap().epoch,
                topic_id: TopicId([7; 16]),
                partition: p,
                leader_epoch: part.leader_epoch,
                partition_epoch: part.partition_epoch,
                new_isr: isr,
            })
            .unwrap();
        apply_all(&mut state, &records);
    }
    let preferred_by_0: Vec<i32> = (0..6)
        .filter(|&p| state.partition("t", p).unwrap().replicas[0] == b(0))
        .collect();
    assert_eq!(preferred_by_0.len(), 2);
    // 2 of 2 not led: 100% > 50%.
    let records = state.leader_balance_elections(50);
    assert_eq!(records.len(), 2);
    // With 100%, never.
    assert!(state.leader_balance_elections(100).is_empty());
    apply_all(&mut state, &records);
    for p in preferred_by_0 {
        assert_eq!(state.partition("t", p).unwrap().leader, b(0));
    }
    assert!(state.leader_balance_elections(0).is_empty());
    // The timer: nothing before the interval, then the elections, then nothing until the
    // next interval.
    let mut balance = LeaderBalance::new(1_000, 10);
    assert!(balance.poll(0, &state).is_empty());
    assert!(balance.poll(999, &state).is_empty());
    assert!(
        balance.poll(1_000, &state).is_empty(),
        "balanced: nothing to elect"
    );
}

/// `unclean.leader.election.enable` per topic (Kafka's topic config, off by default): a topic
/// that sets it decides for its partitions whatever the broker's setting; one that does not
/// follows the broker's. When the only ISR member is fenced, an enabled topic elects the
/// first live replica (the whole ISR now), a disabled one stays leaderless.
#[test]
fn a_topics_unclean_election_setting_overrides_the_brokers() {
    for (topic_setting, setting, elects) in [
        (Some("true"), UncleanElection::Disabled, true),
        (Some("false"), UncleanElection::Enabled, false),
        (None, UncleanElection::Enabled, true),
        (None, UncleanElection::Disabled, false),
    ] {
        let mut state = cluster(1);
        let mut configs = BTreeMap::new();
        if let Some(v) = topic_setting {
            configs.insert("unclean.leader.election.enable".to_string(), v.to_string());
        }
        let records = state
            .create_topic(
                &NewTopic {
                    name: "u".into(),
                    partitions: 1,
                    replication_factor: 3,
                    configs,
                    topic_id: TopicId([8; 16]),
                },
                &[b(0), b(1), b(2)],
                &TopicDefaults::default(),
            )
            .unwrap();
        apply_all(&mut state, &records);
        let p = state.partition("u", 0).unwrap().clone();
        let (leader, follower) = (p.replicas[0], p.replicas[1]);
        let (_, records) = state
            .alter_partition(&crate::controller::AlterPartitionRequest {
                broker_id: leader,
                broker_epoch: state.broker(leader).unwrap().epoch,
                topic_id: TopicId([8; 16]),
                partition: 0,
                leader_epoch: p.leader_epoch,
                partition_epoch: p.partition_epoch,
                new_isr: vec![leader],
            })
            .unwrap();
        apply_all(&mut state, &records);
        let records = state.fence_broker(leader, setting).unwrap();
        apply_all(&mut state, &records);
        let after = state.partition("u", 0).unwrap();
        if elects {
            assert_eq!(after.leader, follower, "{topic_setting:?} {setting:?}");
            assert_eq!(after.isr, vec![follower]);
        } else {
            assert_eq!(
                after.leader,
                BrokerId::NONE,
                "{topic_setting:?} {setting:?}"
            );
            assert_eq!(after.isr, vec![leader], "the last ISR member is kept");
        }
    }
    assert!(
        crate::controller::TopicConfig::validate("unclean.leader.election.enable", "TRUE").is_ok()
    );
    assert!(
        crate::controller::TopicConfig::validate("unclean.leader.election.enable", "yes").is_err()
    );
}
