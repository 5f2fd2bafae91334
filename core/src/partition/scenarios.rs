//! Replication scenarios on the in-memory cluster ([`super::harness`]), which checks the six
//! invariants after every step. Each test names the Kafka behaviour or KIP it pins and the
//! invariant that would break without the code it exercises.

use proptest::prelude::*;

use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;

use super::harness::{self, Cluster, Coverage, Settings};
use super::*;
use crate::storage::MemStorage;

const B0: BrokerId = BrokerId(0);
const B1: BrokerId = BrokerId(1);
const B2: BrokerId = BrokerId(2);

fn cluster(settings: Settings) -> Cluster {
    Cluster::new(settings, 7)
}

/// keel's durable acks (docs/replication.md; Kafka's `maybeIncrementLeaderHW` on durable ends):
/// the high watermark, and the acks=all answer, wait until every ISR member has synced the
/// write, and until the leader has persisted the new high watermark. Invariants 3 and 4.
#[test]
fn high_watermark_advances_only_after_every_isr_member_synced() {
    let mut c = cluster(Settings::default());
    let a = c.produce(3, true).unwrap();
    assert_eq!((a.base_offset, a.last_offset), (Offset(0), Offset(2)));
    c.sync(0);
    assert_eq!(
        c.replica(0).high_watermark(),
        Offset(0),
        "followers have nothing"
    );
    c.fetch(1);
    c.fetch(2);
    assert_eq!(c.replica(1).log().end(), Offset(3));
    c.fetch(1);
    c.fetch(2);
    assert_eq!(
        c.replica(0).high_watermark(),
        Offset(0),
        "replicated in memory is not enough"
    );
    c.sync(1);
    c.fetch(1);
    assert_eq!(
        c.replica(0).high_watermark(),
        Offset(0),
        "node 2 has not synced"
    );
    assert!(c.acked.is_empty(), "node 2 has not synced");
    c.sync(2);
    c.fetch(2);
    assert_eq!(
        c.replica(0).high_watermark(),
        Offset(0),
        "not exposed before it is persisted"
    );
    assert!(
        c.acked.is_empty(),
        "every ISR member has it on disk, but a read on the leader would not see it yet"
    );
    c.persist(0);
    assert_eq!(c.replica(0).high_watermark(), Offset(3));
    assert_eq!(
        c.acked.len(),
        1,
        "acknowledged once the exposed high watermark covers it"
    );
    // Followers learn it from the next fetch, bounded by their own durable end.
    c.fetch(1);
    c.persist(1);
    assert_eq!(c.replica(1).high_watermark(), Offset(3));
}

/// Replica.scala and `Partition.maybeShrinkIsr`: an ISR follower that has not caught up for
/// more than replica.lag.time.max.ms is proposed out (AlterPartition, KIP-497); the high
/// watermark then stops waiting for it. `maybeExpandIsr`: once its durable end reaches the
/// high watermark and the epoch start, it is proposed back in. Invariant 3 across changes.
#[test]
fn isr_shrinks_after_the_lag_time_and_expands_after_catching_up() {
    let mut c = cluster(Settings::default());
    c.produce(2, true).unwrap();
    for i in [0, 1, 2] {
        c.sync(i);
    }
    c.replicate(1);
    c.replicate(2);
    c.sync(0);
    assert_eq!(c.replica(0).high_watermark(), Offset(2));
    // Node 2 stops fetching; node 1 keeps up.
    c.produce(1, true).unwrap();
    c.sync(0);
    c.replicate(1);
    c.tick(REPLICA_LAG_TIME_MAX_MS_DEFAULT - 5_000);
    c.replicate(1);
    c.tick(5_000);
    assert_eq!(
        c.partition.isr,
        vec![B0, B1, B2],
        "exactly the lag: still in sync"
    );
    assert_eq!(c.replica(0).high_watermark(), Offset(2), "waits for node 2");
    c.tick(1);
    assert_eq!(c.partition.isr, vec![B0, B1], "shrunk after the lag");
    assert_eq!(c.replica(0).isr(), vec![B0, B1]);
    c.sync(0);
    assert_eq!(c.replica(0).high_watermark(), Offset(3));
    assert_eq!(c.acked.len(), 2);
    // Node 2 catches up and is added back.
    c.replicate(2);
    assert_eq!(c.partition.isr, vec![B0, B1, B2]);
    assert_eq!(c.replica(0).isr(), vec![B0, B1, B2]);
}

/// KIP-497: one ISR change in flight; while an expansion is pending the high watermark
/// already waits for the new member (Kafka's maximalIsr); a rejected proposal is dropped and
/// retried after the backoff.
#[test]
fn isr_changes_are_proposed_one_at_a_time_and_committed_by_the_controller() {
    let mut c = cluster(Settings {
        eager_alter: false,
        ..Settings::default()
    });
    c.produce(1, true).unwrap();
    c.sync(0);
    c.replicate(1);
    c.tick(REPLICA_LAG_TIME_MAX_MS_DEFAULT + 1);
    // Node 2 never fetched: a shrink is proposed, not applied.
    assert_eq!(c.replica(0).isr(), vec![B0, B1, B2]);
    assert_eq!(c.replica(0).high_watermark(), Offset(0));
    // The controller changes the partition first (another broker fenced): stale proposal.
    c.isolate(1);
    c.process_alters();
    assert_eq!(c.partition.isr, vec![B0, B2], "the proposal was rejected");
    assert_eq!(c.replica(0).isr(), vec![B0, B2]);
    c.reconnect(1);
    c.tick(ALTER_PARTITION_BACKOFF_MS_DEFAULT);
    c.process_alters();
    assert_eq!(c.partition.isr, vec![B0], "retried: node 2 is out");
    c.sync(0);
    assert_eq!(c.replica(0).high_watermark(), Offset(1));
    // Node 1 catches up: the expansion is pending, and the high watermark waits for node 1.
    c.produce(1, true).unwrap();
    c.sync(0);
    c.fetch(1);
    c.sync(1);
    c.fetch(1);
    assert_eq!(
        c.replica(0).maximal_isr(),
        vec![B0, B1],
        "pending expansion counted"
    );
    assert_eq!(c.replica(0).isr(), vec![B0]);
    c.process_alters();
    assert_eq!(c.partition.isr, vec![B0, B1]);
}

/// KIP-101's scenario: a leader crashes with a suffix no follower fetched; a new leader from
/// the ISR writes other batches at the same offsets in a new epoch; the old leader rejoins as a
/// follower, finds the divergence from its last fetched epoch (KIP-279's divergingEpoch) and
/// truncates it. Without it, invariant 5 breaks.
#[test]
fn kip101_a_rejoining_leader_truncates_its_unreplicated_suffix() {
    let mut c = cluster(Settings::default());
    c.produce(2, true).unwrap();
    c.sync(0);
    c.replicate(1);
    c.replicate(2);
    c.sync(0);
    assert_eq!(c.acked.len(), 1);
    // Two more batches on node 0 only, synced there.
    c.produce(3, true).unwrap();
    c.produce(1, true).unwrap();
    c.sync(0);
    assert_eq!(c.replica(0).log().end(), Offset(6));
    c.crash(0);
    assert_eq!(c.partition.leader, B1);
    assert_eq!(c.partition.leader_epoch, LeaderEpoch(1));
    // The new leader writes different batches at offsets 2.. in epoch 1.
    c.produce(1, true).unwrap();
    c.produce(1, true).unwrap();
    c.sync(1);
    c.replicate(2);
    c.sync(1);
    c.restart(0);
    assert_eq!(c.replica(0).role(), Role::Follower { leader: B1 });
    assert_eq!(
        c.replica(0).log().end(),
        Offset(6),
        "the synced suffix survived"
    );
    assert_eq!(c.fetch(0), Some(FetchOutcome::Truncated(Offset(2))));
    assert_eq!(c.fetch(0), Some(FetchOutcome::Appended(2)));
    c.heal();
    c.check_all_acked_everywhere();
    let (old, new) = (
        harness::read_batch(c.replica(0), Offset(2)),
        harness::read_batch(c.replica(1), Offset(2)),
    );
    assert_eq!(old.unwrap().bytes(), new.unwrap().bytes());
}

/// KIP-279's multi-round truncation: the leader's answer names an epoch the follower never
/// had, so the follower cuts back to its own earlier epoch and asks again, twice, before its
/// log matches. Invariant 5, and 6 (no round cuts below the high watermark).
#[test]
fn kip279_divergence_is_resolved_over_several_rounds() {
    let mut c = cluster(Settings {
        eager_metadata: false,
        ..Settings::default()
    });
    // Epoch 0 on node 0: [0, 2), committed everywhere.
    c.produce(2, true).unwrap();
    c.sync(0);
    c.replicate(1);
    c.replicate(2);
    c.sync(0);
    c.metadata(1);
    c.metadata(2);
    // Epoch 1: node 1 writes [2, 3) that nobody fetches.
    assert!(c.elect(1));
    c.produce(1, false).unwrap();
    c.sync(1);
    // Epoch 2: node 2 writes [2, 4).
    assert!(c.elect(2));
    c.produce(2, false).unwrap();
    c.sync(2);
    // Epoch 3: node 1 again (still in the ISR: node 2's high watermark never passed 2),
    // writes [3, 6).
    assert!(c.elect(1));
    c.produce(3, false).unwrap();
    c.sync(1);
    assert_eq!(c.replica(1).log().end(), Offset(6));
    // Epoch 4: node 2 leads; node 1 follows and must resolve the divergence.
    assert!(c.elect(2));
    c.produce(1, true).unwrap();
    c.sync(2);
    c.metadata(1);
    let epochs: Vec<i32> = c
        .replica(1)
        .log()
        .epochs()
        .entries()
        .iter()
        .map(|e| e.epoch.0)
        .collect();
    assert_eq!(epochs, vec![0, 1, 3]);
    assert_eq!(
        c.fetch(1),
        Some(FetchOutcome::Truncated(Offset(3))),
        "leader answered epoch 2, unknown here: cut to epoch 1's end"
    );
    assert_eq!(
        c.fetch(1),
        Some(FetchOutcome::Truncated(Offset(2))),
        "leader answered epoch 0 ending at 2"
    );
    assert_eq!(c.fetch(1), Some(FetchOutcome::Appended(2)));
    assert_eq!(c.replica(1).log().end(), c.replica(2).log().end());
    c.heal();
    c.check_all_acked_everywhere();
}

/// KIP-966's strict rule and Kafka's acks=all errors: NOT_ENOUGH_REPLICAS (19) before appending
/// when the ISR is below min.insync.replicas; the high watermark does not advance while it is
/// (even for acks=1 writes); a write waiting when the ISR shrinks below gets
/// NOT_ENOUGH_REPLICAS_AFTER_APPEND (20). Invariant 3's min.insync part.
#[test]
fn high_watermark_does_not_advance_below_min_insync_replicas() {
    let mut c = cluster(Settings {
        min_insync_replicas: 2,
        ..Settings::default()
    });
    c.produce(1, true).unwrap();
    c.sync(0);
    c.replicate(1);
    c.replicate(2);
    c.sync(0);
    assert_eq!(c.acked.len(), 1);
    c.produce(1, true).unwrap();
    c.sync(0);
    c.crash(1);
    assert_eq!(c.partition.isr, vec![B0, B2]);
    c.crash(2);
    assert_eq!(c.partition.isr, vec![B0]);
    assert_eq!(
        c.failed,
        vec![code::NOT_ENOUGH_REPLICAS_AFTER_APPEND],
        "the waiting write failed when the ISR fell below 2"
    );
    assert_eq!(
        c.produce(1, true).unwrap_err().code(),
        code::NOT_ENOUGH_REPLICAS
    );
    let hw = c.replica(0).high_watermark();
    c.produce(1, false).unwrap();
    c.sync(0);
    assert_eq!(c.replica(0).high_watermark(), hw, "strict min ISR");
    // A replica comes back and catches up: the ISR is 2 again and the high watermark moves.
    c.restart(1);
    c.replicate(1);
    c.sync(0);
    assert_eq!(c.partition.isr, vec![B0, B1]);
    assert_eq!(c.replica(0).high_watermark(), c.replica(0).log().end());
}

/// Invariant 4 with Kafka's election from the ISR: an acknowledged write survives the leader
/// being killed (its unsynced tail torn) and a new leader taking over.
#[test]
fn acknowledged_writes_survive_the_leader_being_killed() {
    for seed in 0..20 {
        let mut c = Cluster::new(Settings::default(), seed);
        for _ in 0..3 {
            c.produce(2, true).unwrap();
            c.sync(0);
            c.replicate(1);
            c.replicate(2);
            c.sync(0);
        }
        assert_eq!(c.acked.len(), 3);
        // In flight when the leader dies: appended, partly replicated, not synced.
        c.produce(4, true).unwrap();
        c.fetch(1);
        c.crash(0);
        assert!(c.partition.leader == B1 || c.partition.leader == B2);
        c.produce(1, true).unwrap();
        c.rounds(3);
        c.heal();
        c.check_all_acked_everywhere();
        assert!(c.acked.len() >= 4, "seed {seed}");
    }
}

/// keel's difference from Kafka: because the high watermark covers only synced data, an
/// acknowledged write survives every broker losing power at once. Invariant 4.
#[test]
fn acknowledged_writes_survive_the_whole_cluster_losing_power() {
    for seed in 0..20 {
        let mut c = Cluster::new(Settings::default(), seed);
        for round in 0..4 {
            c.produce(1 + round, true).unwrap();
            c.sync(0);
            c.replicate(1);
            c.replicate(2);
            c.sync(0);
            c.produce(2, true).unwrap();
            c.fetch(1);
            c.fetch(2);
        }
        let acked = c.acked.len();
        assert!(acked >= 4);
        c.crash_all();
        assert_eq!(c.partition.leader, BrokerId::NONE);
        c.heal();
        c.check_all_acked_everywhere();
        assert_eq!(c.acked.len(), acked, "seed {seed}");
    }
}

/// LogLoader recovery under replication: a follower whose unsynced tail was torn by a crash
/// recovers the valid prefix, keeps its high watermark (invariant 2: persisted), and refetches
/// the rest from the leader (invariant 5).
#[test]
fn a_follower_restarts_with_a_torn_log() {
    let mut torn = 0;
    for seed in 0..30 {
        let mut c = Cluster::new(Settings::default(), seed);
        c.produce(3, true).unwrap();
        c.sync(0);
        c.replicate(1);
        c.replicate(2);
        c.sync(0);
        c.fetch(1);
        c.persist(1);
        let hw = c.replica(1).high_watermark();
        assert_eq!(hw, Offset(3));
        for _ in 0..4 {
            c.produce(5, true).unwrap();
        }
        c.fetch(1);
        assert_eq!(c.replica(1).log().end(), Offset(23));
        c.crash(1);
        c.restart(1);
        let r = c.replica(1);
        assert!(r.high_watermark() >= hw, "seed {seed}");
        assert!(r.log().end() >= Offset(3) && r.log().end() <= Offset(23));
        if r.log().recovery_report().bytes_truncated > 0 {
            torn += 1;
        }
        c.heal();
        c.check_all_acked_everywhere();
    }
    assert!(torn > 0, "some crash tore the follower's log");
}

/// Invariant 2 across restarts: a replica's high watermark and leader epoch come back from its
/// state files, and it refuses an older epoch; a restarted replica may not lead an epoch it
/// may already have led (the controller bumps it).
#[test]
fn epochs_and_high_watermarks_never_go_backwards_across_restarts() {
    let mut c = cluster(Settings::default());
    c.produce(2, true).unwrap();
    c.sync(0);
    c.replicate(2);
    c.replicate(1);
    c.sync(0);
    c.fetch(2);
    c.persist(2);
    assert!(c.elect(1));
    let (epoch, hw) = (c.replica(2).leader_epoch(), c.replica(2).high_watermark());
    assert_eq!((epoch, hw), (LeaderEpoch(1), Offset(2)));
    c.crash(2);
    c.restart(2);
    assert_eq!(c.replica(2).leader_epoch(), epoch);
    assert_eq!(c.replica(2).high_watermark(), hw);

    let node = &mut c.nodes[2];
    let r = node.replica.as_mut().unwrap();
    let mut stale = c.partition.clone();
    stale.leader_epoch = LeaderEpoch(0);
    assert!(matches!(
        r.become_follower(0, &mut node.snaps, &stale),
        Err(RoleError::StaleLeaderEpoch { .. })
    ));
    assert_eq!(
        r.on_partition_change(0, &mut node.snaps, &stale),
        Ok(false),
        "stale metadata is ignored"
    );
    let mut same_epoch_lead = c.partition.clone();
    same_epoch_lead.leader = B2;
    same_epoch_lead.isr = same_epoch_lead.replicas.clone();
    assert!(matches!(
        r.become_leader(0, &mut node.snaps, &same_epoch_lead),
        Err(RoleError::EpochReused { .. })
    ));
}

/// A restarted replica may not lead an epoch it may already have led: a batch the crash lost
/// may sit on a follower under that epoch, and a new batch at the same offsets and epoch would
/// pass every divergence check. The controller must elect it at a new epoch (KRaft fences a
/// restarted broker's old incarnation). It may follow at the old epoch. Invariants 1 and 5.
#[test]
fn a_restarted_leader_may_not_lead_its_old_epoch_again() {
    let p = Partition {
        replicas: vec![B0, B1],
        isr: vec![B0, B1],
        leader: B0,
        leader_epoch: LeaderEpoch(4),
        partition_epoch: 9,
        elr: Vec::new(),
        adding: Vec::new(),
        removing: Vec::new(),
    };
    let open = |log, snaps: &mut MemStorage| {
        let config = ReplicaConfig::new(B0);
        let (rules, log_config) = (ProduceRules::default(), LogConfig::default());
        PartitionReplica::recover(log, snaps, log_config, rules, config, harness::T0).unwrap()
    };
    let mut snaps = MemStorage::new();
    let mut r = open(MemStorage::new(), &mut snaps);
    r.become_leader(harness::T0, &mut snaps, &p).unwrap();
    let batch = crate::batch::BatchBuilder::new(Compression::None)
        .record(harness::T0, None, Some(b"lost"))
        .build()
        .unwrap();
    r.append(harness::T0, batch).unwrap();
    let log = r.into_log_storage();
    let mut r = open(log, &mut snaps);
    assert_eq!(r.leader_epoch(), LeaderEpoch(4));
    assert!(matches!(
        r.become_leader(harness::T0, &mut snaps, &p),
        Err(RoleError::EpochReused { .. })
    ));
    assert_eq!(r.role(), Role::Offline);
    let mut follow = p.clone();
    follow.leader = B1;
    r.become_follower(harness::T0, &mut snaps, &follow).unwrap();
    let mut next = p.clone();
    next.leader_epoch = LeaderEpoch(5);
    next.partition_epoch = 10;
    r.become_leader(harness::T0, &mut snaps, &next).unwrap();
    assert!(r.is_leader());
}

/// acks=all is answered once every ISR member has the write on disk and the leader's high
/// watermark file covers it, so that the exposed high watermark does: a ListOffsets or Fetch
/// sent to the leader after the answer sees the write (read-after-ack). Invariants 2 and 4.
#[test]
fn acks_all_is_answered_once_readers_on_the_leader_see_the_write() {
    let mut c = cluster(Settings::default());
    c.rounds(2);
    let w = c.produce(2, true).unwrap();
    c.sync_log(0);
    let epoch = w.leader_epoch;
    assert_eq!(
        c.replica(0).produce_status(epoch, w.last_offset),
        AckStatus::Waiting,
        "the followers do not have it yet"
    );
    for i in [1, 2] {
        c.fetch(i);
        c.sync_log(i);
    }
    c.fetch(1);
    assert_eq!(
        c.replica(0).produce_status(epoch, w.last_offset),
        AckStatus::Waiting,
        "node 2 has it on disk, but has not said so yet"
    );
    c.fetch(2);
    let r = c.replica(0);
    assert!(r.committed_end() > w.last_offset, "the ISR has it on disk");
    assert!(r.state_write_wanted());
    assert!(
        r.high_watermark() <= w.last_offset,
        "exposed only once persisted"
    );
    assert_eq!(
        r.produce_status(epoch, w.last_offset),
        AckStatus::Waiting,
        "a read on the leader would not see it yet"
    );
    c.persist(0);
    let r = c.replica(0);
    assert!(!r.state_write_wanted());
    assert!(r.high_watermark() > w.last_offset);
    assert_eq!(r.produce_status(epoch, w.last_offset), AckStatus::Acked);
    c.check_all_acked_everywhere();
}

/// Kafka's `checkEnoughReplicasReachOffset` answers only on the leader that appended: a write
/// appended in one epoch, overwritten at the same offsets after a leader change, is never
/// acknowledged when the first leader leads again and its high watermark passes those offsets,
/// however late the shell asks. Invariant 4.
#[test]
fn acks_all_never_acknowledges_a_write_a_later_epoch_overwrote() {
    let mut c = cluster(Settings::default());
    let first = c.produce(1, false).unwrap();
    assert_eq!(
        (first.base_offset, first.leader_epoch),
        (Offset(0), LeaderEpoch(0))
    );
    c.sync(0);
    c.isolate(0);
    assert_eq!(c.partition.leader, B1);
    c.produce(2, true).unwrap();
    c.sync(1);
    c.replicate(2);
    c.sync(1);
    c.reconnect(0);
    assert_eq!(c.fetch(0), Some(FetchOutcome::Truncated(Offset(0))));
    c.replicate(0);
    assert_eq!(c.partition.isr, vec![B0, B1, B2]);
    assert!(c.elect(0));
    c.rounds(3);
    let r = c.replica(0);
    assert!(r.is_leader() && r.high_watermark() > first.last_offset);
    assert_eq!(
        r.produce_status(first.leader_epoch, first.last_offset),
        AckStatus::Failed(code::NOT_LEADER_OR_FOLLOWER)
    );
}

/// KIP-320 and the ISR argument: a leader cut off from the controller keeps its role until
/// metadata reaches it, but cannot commit anything the new leader lacks (the new leader is in
/// its ISR and no longer fetches from it); its waiting acks=all produce fails with
/// NOT_LEADER_OR_FOLLOWER, and it truncates its suffix once it follows. Invariants 1, 4, 5.
#[test]
fn a_deposed_leader_cannot_commit_without_the_new_leader() {
    let mut c = cluster(Settings {
        eager_metadata: false,
        ..Settings::default()
    });
    c.produce(1, true).unwrap();
    c.sync(0);
    c.replicate(1);
    c.replicate(2);
    c.sync(0);
    c.isolate(0);
    assert_eq!(c.partition.leader, B1);
    assert!(c.replica(0).is_leader(), "node 0 has not heard yet");
    let stale = c.produce_to(0, 2, true).unwrap();
    assert_eq!(stale.leader_epoch, LeaderEpoch(0));
    c.sync(0);
    // Node 2 has not heard either and still fetches from node 0: node 1 does not, so the
    // old leader's high watermark stays below the stale write.
    c.replicate(2);
    c.sync(0);
    assert_eq!(c.replica(0).high_watermark(), Offset(1));
    // Node 1's fetches at epoch 1 are refused by the old leader... (node 1 leads, it does
    // not fetch) and node 2's fetch at epoch 1 is refused by node 0 once node 2 hears.
    c.metadata(2);
    c.send_fetch(2);
    c.produce(1, true).unwrap();
    c.sync(1);
    c.reconnect(0);
    assert_eq!(c.failed, vec![code::NOT_LEADER_OR_FOLLOWER]);
    assert_eq!(c.replica(0).role(), Role::Follower { leader: B1 });
    c.heal();
    c.check_all_acked_everywhere();
}

/// A follower fenced by its leader (an epoch mismatch, KIP-320) backs off and retries; a
/// fetch answer that arrives after the follower moved to a new epoch is ignored.
#[test]
fn fetches_across_epochs_are_refused_or_ignored() {
    let mut c = cluster(Settings {
        eager_metadata: false,
        ..Settings::default()
    });
    c.produce(1, true).unwrap();
    c.sync(0);
    c.send_fetch(2);
    c.serve_fetch(2);
    // Node 2 learns of epoch 1 (node 1 leads) before the answer arrives.
    assert!(c.elect(1));
    c.metadata(2);
    assert_eq!(c.deliver_fetch(2), Some(FetchOutcome::Stale));
    assert_eq!(c.replica(2).log().end(), Offset(0));
    // Node 0 still believes it leads epoch 0; node 2's epoch-1 fetch is refused.
    let mut request = FetchRequest {
        replica: B2,
        leader_epoch: LeaderEpoch(1),
        fetch_offset: Offset(0),
        last_fetched_epoch: LeaderEpoch::NONE,
        durable_end: Offset(0),
        cleaned_end: Offset::ZERO,
        max_bytes: 1 << 20,
    };
    let now = c.now_ms;
    let r0 = c.nodes[0].replica.as_mut().unwrap();
    assert_eq!(
        r0.handle_follower_fetch(now, &request).unwrap_err().code(),
        code::UNKNOWN_LEADER_EPOCH
    );
    c.metadata(0);
    let r1 = c.nodes[1].replica.as_mut().unwrap();
    request.leader_epoch = LeaderEpoch(0);
    assert_eq!(
        r1.handle_follower_fetch(now, &request).unwrap_err().code(),
        code::FENCED_LEADER_EPOCH
    );
    c.heal();
}

/// Kafka's `handleOutOfRangeOffset` and UnexpectedAppendOffset handling: a follower whose log
/// ends below the leader's log start (after DeleteRecords, in the middle of a batch) restarts
/// its log there and takes the whole batch that contains it. Invariant 5 below the high
/// watermark, invariant 2 for its high watermark.
#[test]
fn a_follower_behind_the_leaders_log_start_restarts_there() {
    let mut c = cluster(Settings::default());
    c.crash(2);
    for _ in 0..4 {
        c.produce(3, true).unwrap();
    }
    c.sync(0);
    c.replicate(1);
    c.sync(0);
    assert_eq!(c.replica(0).high_watermark(), Offset(12));
    let start = c.nodes[0]
        .replica
        .as_mut()
        .unwrap()
        .delete_records(7)
        .unwrap();
    assert_eq!(start, Offset(7));
    c.restart(2);
    assert_eq!(c.fetch(2), Some(FetchOutcome::Restarted(Offset(7))));
    assert_eq!(c.fetch(2), Some(FetchOutcome::Appended(2)));
    assert_eq!(c.replica(2).log().log_start(), Offset(7));
    c.heal();
}

/// A divergence the leader cannot see: the epochs that would show it are below its log start
/// (DeleteRecords). The follower's log ends inside one of the leader's batches, so its last
/// batch is not the leader's: it cuts back, finds itself behind the leader's log start, and
/// restarts there (Kafka fails the partition's fetcher in this case). Invariants 5 and 6.
#[test]
fn a_divergence_hidden_below_the_leaders_log_start_is_still_resolved() {
    let mut c = cluster(Settings::default());
    // Node 0 leads epoch 0 and writes [0, 3) and [3, 5) that nobody fetches.
    c.produce(3, false).unwrap();
    c.produce(2, false).unwrap();
    c.sync(0);
    c.crash(0);
    // Node 1 leads epoch 1: [0, 2), [2, 4), [4, 7), committed with node 2.
    for records in [2, 2, 3] {
        c.produce(records, true).unwrap();
    }
    c.sync(1);
    c.replicate(2);
    c.sync(1);
    assert_eq!(c.replica(1).high_watermark(), Offset(7));
    let start = c.nodes[1]
        .replica
        .as_mut()
        .unwrap()
        .delete_records(5)
        .unwrap();
    assert_eq!(start, Offset(5));
    c.restart(0);
    assert_eq!(c.replica(0).log().end(), Offset(5));
    assert_eq!(c.fetch(0), Some(FetchOutcome::Truncated(Offset(3))));
    assert_eq!(c.fetch(0), Some(FetchOutcome::Restarted(Offset(5))));
    assert_eq!(c.fetch(0), Some(FetchOutcome::Appended(1)));
    let r = c.replica(0);
    assert_eq!(
        harness::read_batch(r, Offset(4)).unwrap().next_offset(),
        Offset(7),
        "took the whole batch"
    );
    assert_eq!(r.log().log_start(), Offset(5), "the leader's log start");
    c.heal();
    c.check_all_acked_everywhere();
}

/// The sole-replica partition (node's single-broker mode): no state writes, the high
/// watermark is the durable end, and a restart may lead the same epoch again.
#[test]
fn a_single_replica_partition_commits_on_its_own_sync() {
    let mut c = cluster(Settings {
        replicas: 1,
        ..Settings::default()
    });
    c.produce(2, true).unwrap();
    c.sync_log(0);
    assert_eq!(c.replica(0).high_watermark(), Offset(2));
    assert_eq!(c.acked.len(), 1);
    let r = c.nodes[0].replica.as_mut().unwrap();
    assert_eq!(r.prepare_state_write(), None);
}

// -------------------------------------------------------------------------------------------
// Property test: random steps, invariants after each.

#[derive(Clone, Debug)]
enum Step {
    Produce {
        node: u8,
        records: u8,
        acks_all: bool,
    },
    SendFetch(u8),
    ServeFetch(u8),
    DeliverFetch(u8),
    DropFetch(u8),
    SyncLog(u8),
    Persist(u8),
    ProcessAlters,
    Metadata(u8),
    Tick(u32),
    Crash(u8),
    Restart(u8),
    Isolate(u8),
    Reconnect(u8),
    Elect(u8),
    DeleteRecords(u8, u16),
}

fn arb_step() -> impl Strategy<Value = Step> {
    let node = any::<u8>();
    prop_oneof![
        6 => (node, 1u8..4, any::<bool>()).prop_map(|(node, records, acks_all)| Step::Produce { node, records, acks_all }),
        6 => node.prop_map(Step::SendFetch),
        6 => node.prop_map(Step::ServeFetch),
        6 => node.prop_map(Step::DeliverFetch),
        1 => node.prop_map(Step::DropFetch),
        5 => node.prop_map(Step::SyncLog),
        5 => node.prop_map(Step::Persist),
        3 => Just(Step::ProcessAlters),
        3 => node.prop_map(Step::Metadata),
        2 => (0u32..40_000).prop_map(Step::Tick),
        1 => node.prop_map(Step::Crash),
        2 => node.prop_map(Step::Restart),
        1 => node.prop_map(Step::Isolate),
        1 => node.prop_map(Step::Reconnect),
        1 => node.prop_map(Step::Elect),
        1 => (node, 0u16..=1000).prop_map(|(node, at)| Step::DeleteRecords(node, at)),
    ]
}

fn run(replicas: usize, min_insync: usize, eager: bool, seed: u64, steps: &[Step]) -> Coverage {
    let mut c = Cluster::new(
        Settings {
            replicas,
            min_insync_replicas: min_insync,
            eager_metadata: eager,
            eager_alter: eager,
            ..Settings::default()
        },
        seed,
    );
    let n = |i: u8| i as usize % replicas;
    for step in steps {
        match *step {
            Step::Produce {
                node,
                records,
                acks_all,
            } => {
                let _ = c.produce_to(n(node), records as usize, acks_all);
            }
            Step::SendFetch(i) => c.send_fetch(n(i)),
            Step::ServeFetch(i) => c.serve_fetch(n(i)),
            Step::DeliverFetch(i) => {
                c.deliver_fetch(n(i));
            }
            Step::DropFetch(i) => c.drop_fetch(n(i)),
            Step::SyncLog(i) => c.sync_log(n(i)),
            Step::Persist(i) => c.persist(n(i)),
            Step::ProcessAlters => c.process_alters(),
            Step::Metadata(i) => c.metadata(n(i)),
            Step::Tick(ms) => c.tick(ms as i64),
            Step::Crash(i) => c.crash(n(i)),
            Step::Restart(i) => c.restart(n(i)),
            Step::Isolate(i) => c.isolate(n(i)),
            Step::Reconnect(i) => c.reconnect(n(i)),
            Step::Elect(i) => {
                c.elect(n(i));
            }
            Step::DeleteRecords(i, at) => c.delete_records(n(i), at),
        }
    }
    c.heal();
    c.check_all_acked_everywhere();
    c.coverage
}

/// The random runs are not vacuous: over a fixed set of them, every replication event the
/// invariants are about happens (elections, ISR shrinks and expansions, rejected proposals,
/// truncations, stale answers, crashes with torn logs, acks and both acks=all errors).
#[test]
fn random_steps_exercise_every_replication_event() {
    let mut runner = TestRunner::deterministic();
    let mut total = Coverage::default();
    for case in 0..300u64 {
        let steps = proptest::collection::vec(arb_step(), 150)
            .new_tree(&mut runner)
            .expect("generate")
            .current();
        let replicas = 2 + (case % 3) as usize;
        let min_insync = 1 + (case % 2) as usize;

        total.add(&run(replicas, min_insync, case % 4 != 0, case, &steps));
    }
    let c = &total;
    for (name, count) in [
        ("elections", c.elections),
        ("isr_shrinks", c.isr_shrinks),
        ("isr_expansions", c.isr_expansions),
        ("alter_rejections", c.alter_rejections),
        ("truncations", c.truncations),
        ("log_restarts", c.log_restarts),
        ("stale_responses", c.stale_responses),
        ("fetch_errors", c.fetch_errors),
        ("crashes", c.crashes),
        ("torn_recoveries", c.torn_recoveries),
        ("acked", c.acked),
        ("not_enough_replicas", c.not_enough_replicas),
        ("failed_after_append", c.failed_after_append),
    ] {
        assert!(count > 0, "no {name} in 300 random runs: {total:?}");
    }
    println!("{total:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Random produces, fetches (delayed, lost), syncs, state writes, ISR changes, metadata
    /// delays, ticks past the lag time, crashes, restarts, isolation and elections from the
    /// ISR: the six invariants hold after every step, and the cluster converges afterwards
    /// with every acknowledged write on every replica.
    #[test]
    fn replication_keeps_its_invariants_under_random_steps(
        replicas in 1usize..=4,
        min_insync in 1usize..=3,
        eager in any::<bool>(),
        seed in any::<u64>(),
        steps in proptest::collection::vec(arb_step(), 1..150),
    ) {
        let _ = run(replicas, min_insync, eager, seed, &steps);
    }
}

/// Runtime damage (docs/replication.md, damaged replicas): a batch that rots on the leader after
/// recovery read it is found by `find_damage`; once the replica no longer leads, it discards
/// the damaged batch and everything after it, below its high watermark included, and fetches
/// it all back from the new leader. A leader refuses to discard.
#[test]
fn a_batch_rotted_at_runtime_is_discarded_and_fetched_back() {
    let mut c = cluster(Settings::default());
    for _ in 0..3 {
        c.produce(2, true).unwrap();
    }
    c.rounds(4);
    assert_eq!(c.replica(0).high_watermark(), Offset(6));
    assert_eq!(c.replica(0).find_damage().unwrap(), None);
    let second = harness::read_batch(c.replica(0), Offset(0)).unwrap().size();
    let file = format!("{:020}.log", 0);
    let node = &mut c.nodes[0];
    let r = node.replica.as_mut().unwrap();
    r.log_mut()
        .storage_mut()
        .flip_bit(&file, second + 70, 3)
        .unwrap();
    assert_eq!(r.find_damage().unwrap(), Some(Offset(2)));
    assert!(
        r.log().read(Offset(2), 1, Offset(6)).is_err(),
        "reads of it fail"
    );
    let refused = r.discard_damaged(harness::T0, &mut node.snaps, Offset(2));
    assert!(
        matches!(refused, Err(ReplicaError::Protocol(_))),
        "{refused:?}"
    );
    // The same bit again: sound, for the harness's checks while leadership moves away.
    let rot = |c: &mut Cluster| {
        let r = c.nodes[0].replica.as_mut().unwrap();
        r.log_mut()
            .storage_mut()
            .flip_bit(&file, second + 70, 3)
            .unwrap();
    };
    rot(&mut c);
    c.isolate(0);
    c.reconnect(0);
    c.metadata(0);
    assert!(!c.replica(0).is_leader());
    rot(&mut c);
    let node = &mut c.nodes[0];
    let r = node.replica.as_mut().unwrap();
    assert_eq!(r.find_damage().unwrap(), Some(Offset(2)));
    let end = r
        .discard_damaged(harness::T0, &mut node.snaps, Offset(2))
        .unwrap();
    assert_eq!(
        end,
        Offset(0),
        "cut back to the start of the last sound batch"
    );
    assert_eq!(r.high_watermark(), Offset(0));
    assert_eq!(r.state_report().hw_above_log, Some(Offset(6)));
    c.discarded_damage(0);
    c.rounds(4);
    let healed = c.replica(0);
    assert_eq!(healed.log().end(), Offset(6));
    assert_eq!(healed.find_damage().unwrap(), None);
    let leader = c.leader().unwrap();
    assert_ne!(leader, 0);
    assert_eq!(
        harness::read_batch(c.replica(0), Offset(2))
            .unwrap()
            .bytes(),
        harness::read_batch(c.replica(leader), Offset(2))
            .unwrap()
            .bytes()
    );
}

/// A follower that caught up while the controller refused to take it into the ISR (it was
/// fenced) joins once the refusal's backoff ends, with no fetch of its own after that: the
/// leader's timer proposes it again. A caught-up follower sends nothing new for its partition
/// (its fetch session does not name an unchanged partition), so without the timer it stayed
/// out of the ISR for good (simulator seed 604: `__transaction_state-1`, its follower at the
/// leader's log end and high watermark, outside the ISR 60 s after healing).
#[test]
fn a_refused_expansion_is_proposed_again_by_the_timer() {
    let mut c = cluster(Settings::default());
    c.produce(2, false).unwrap();
    c.isolate(2);
    assert_eq!(c.replica(0).isr(), [B0, B1]);
    // Node 2 still fetches and catches up; the leader proposes it and is refused (fenced).
    c.rounds(3);
    assert!(c.coverage.alter_rejections > 0, "the expansion was refused");
    assert_eq!(c.replica(0).isr(), [B0, B1]);
    // The controller unfences it; from here on node 2 sends nothing, only time passes.
    c.reconnect(2);
    c.tick(ALTER_PARTITION_BACKOFF_MS_DEFAULT + 1);
    assert_eq!(c.replica(0).isr(), [B0, B1, B2]);
}
