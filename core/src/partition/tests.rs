use rand::{rngs::StdRng, SeedableRng};

use super::*;
use crate::batch::BatchBuilder;
use crate::storage::MemStorage;
use crate::types::ProducerId;

const NOW: i64 = 1_700_000_000_000;

fn open(
    log: MemStorage,
    snaps: &mut MemStorage,
    rules: ProduceRules,
) -> PartitionReplica<MemStorage> {
    PartitionReplica::open(log, snaps, LogConfig::default(), rules, LeaderEpoch(3), NOW)
        .expect("open")
}

fn idempotent(pid: i64, epoch: i16, seq: i32, n: usize) -> Batch {
    let mut b = BatchBuilder::new(Compression::Lz4).idempotent(ProducerId(pid), epoch, seq);
    for i in 0..n {
        b = b.record(NOW, Some(format!("k{i}").as_bytes()), Some(b"v"));
    }
    b.build().unwrap()
}

/// keel's durable acks: the high watermark moves only when the appended data is synced.
#[test]
fn high_watermark_waits_for_the_sync() {
    let mut snaps = MemStorage::new();
    let mut p = open(MemStorage::new(), &mut snaps, ProduceRules::default());
    let a = p.append(NOW, idempotent(-1, -1, -1, 3)).unwrap();
    assert_eq!((a.base_offset, a.last_offset), (Offset(0), Offset(2)));
    assert_eq!(p.high_watermark(), Offset(0), "not durable yet");
    assert_eq!(p.update_high_watermark(), Offset(0));
    assert_eq!(p.sync().unwrap(), Offset(3));
    assert_eq!(
        p.log().read(Offset(0), 1, p.high_watermark()).unwrap()[0].partition_leader_epoch(),
        LeaderEpoch(3)
    );
}

/// ProducerStateManager: a retried batch is answered with its original offsets and not
/// appended again; gaps are OUT_OF_ORDER_SEQUENCE_NUMBER; old epochs are fenced.
#[test]
fn idempotent_duplicates_are_answered_with_the_original_offsets() {
    let mut snaps = MemStorage::new();
    let mut p = open(MemStorage::new(), &mut snaps, ProduceRules::default());
    let first = p.append(NOW, idempotent(7, 0, 0, 2)).unwrap();
    p.append(NOW, idempotent(7, 0, 2, 2)).unwrap();
    let retry = p.append(NOW, idempotent(7, 0, 0, 2)).unwrap();
    assert!(retry.duplicate);
    assert_eq!(
        (retry.base_offset, retry.last_offset),
        (first.base_offset, first.last_offset)
    );
    assert_eq!(p.log().end(), Offset(4), "the duplicate was not appended");
    let gap = p.append(NOW, idempotent(7, 0, 9, 1)).unwrap_err();
    assert_eq!(gap.code(), 45);
    p.append(NOW, idempotent(7, 1, 0, 1)).unwrap();
    assert_eq!(
        p.append(NOW, idempotent(7, 0, 4, 1)).unwrap_err().code(),
        47
    );
}

/// Producer state is rebuilt from the log after a crash: a retry of a synced batch is still
/// recognised as a duplicate.
#[test]
fn producer_state_survives_a_crash() {
    let mut snaps = MemStorage::new();
    let mut p = open(MemStorage::new(), &mut snaps, ProduceRules::default());
    for seq in (0..20).step_by(2) {
        p.append(NOW, idempotent(11, 0, seq, 2)).unwrap();
    }
    p.checkpoint(&mut snaps).unwrap();
    p.append(NOW, idempotent(11, 0, 20, 2)).unwrap();
    p.sync().unwrap();
    let mut log = p.log.into_storage();
    let mut rng = StdRng::seed_from_u64(5);
    log.crash(&mut rng);
    snaps.crash(&mut rng);
    let mut p = open(log, &mut snaps, ProduceRules::default());
    assert_eq!(p.log().end(), Offset(22));
    assert_eq!(
        p.high_watermark(),
        Offset(22),
        "recovered data is committed"
    );
    let retry = p.append(NOW, idempotent(11, 0, 20, 2)).unwrap();
    assert!(retry.duplicate && retry.base_offset == Offset(20));
    assert_eq!(
        p.append(NOW, idempotent(11, 0, 23, 1)).unwrap_err().code(),
        45
    );
}

/// LogValidator: size limit, no control batches, counts match, keys on compacted topics.
#[test]
fn validation_follows_kafka_log_validator() {
    let mut snaps = MemStorage::new();
    let rules = ProduceRules {
        max_message_bytes: 200,
        compacted: true,
        ..ProduceRules::default()
    };
    let mut p = open(MemStorage::new(), &mut snaps, rules);
    let big = BatchBuilder::new(Compression::None)
        .record(NOW, Some(b"k"), Some(&[0u8; 300]))
        .build()
        .unwrap();
    assert_eq!(
        p.append(NOW, big).unwrap_err().code(),
        code::MESSAGE_TOO_LARGE
    );
    let keyless = BatchBuilder::new(Compression::None)
        .record(NOW, None, Some(b"v"))
        .build()
        .unwrap();
    assert_eq!(
        p.append(NOW, keyless).unwrap_err().code(),
        code::INVALID_RECORD
    );
    let mut control = BatchBuilder::new(Compression::None)
        .record(NOW, Some(b"k"), None)
        .build()
        .unwrap()
        .into_bytes()
        .to_vec();
    control[22] |= 0x20;
    let crc = crate::batch::compute_crc(&control);
    control[17..21].copy_from_slice(&crc.to_be_bytes());
    let control = Batch::parse(control.into()).unwrap();
    assert_eq!(
        p.append(NOW, control).unwrap_err().code(),
        code::INVALID_RECORD
    );
    assert_eq!(p.log().end(), Offset(0), "nothing invalid was appended");
}

#[test]
fn log_append_time_topics_stamp_the_broker_time() {
    let mut snaps = MemStorage::new();
    let rules = ProduceRules {
        log_append_time: true,
        ..ProduceRules::default()
    };
    let mut p = open(MemStorage::new(), &mut snaps, rules);
    let a = p.append(NOW + 5, idempotent(-1, -1, -1, 2)).unwrap();
    assert_eq!(a.log_append_time_ms, NOW + 5);
    p.sync().unwrap();
    let b = &p.log().read(Offset(0), 1, p.high_watermark()).unwrap()[0];
    assert_eq!(
        (b.max_timestamp(), b.timestamp_type()),
        (NOW + 5, TimestampType::LogAppendTime)
    );
}

/// `message.timestamp.before.max.ms` and `message.timestamp.after.max.ms`: a CreateTime record
/// outside the bounds around the broker's clock is refused with INVALID_TIMESTAMP and nothing
/// is appended; the bounds themselves are accepted; LogAppendTime topics are not checked.
#[test]
fn timestamps_outside_the_topic_bounds_are_refused() {
    let mut snaps = MemStorage::new();
    let rules = ProduceRules {
        timestamp_before_max_ms: 1_000,
        timestamp_after_max_ms: 500,
        ..ProduceRules::default()
    };
    let mut p = open(MemStorage::new(), &mut snaps, rules.clone());
    let at = |timestamps: &[i64]| {
        let mut b = BatchBuilder::new(Compression::None);
        for &t in timestamps {
            b = b.record(t, Some(b"k"), Some(b"v"));
        }
        b.build().unwrap()
    };
    for refused in [vec![NOW - 1_001], vec![NOW, NOW + 501]] {
        let e = p.append(NOW, at(&refused)).unwrap_err();
        assert_eq!(e.code(), code::INVALID_TIMESTAMP, "{refused:?}: {e}");
    }
    assert_eq!(p.log().end(), Offset(0), "nothing refused was appended");
    p.append(NOW, at(&[NOW - 1_000, NOW + 500])).unwrap();
    assert_eq!(p.log().end(), Offset(2));
    let mut snaps = MemStorage::new();
    let stamped = ProduceRules {
        log_append_time: true,
        ..rules
    };
    let mut p = open(MemStorage::new(), &mut snaps, stamped);
    p.append(NOW, at(&[0])).unwrap();
}

/// `compression.type` other than `producer`: the leader stores every batch in the topic's
/// codec, records, timestamps and producer fields unchanged; a retry of the batch as sent is
/// still recognised as a duplicate; a batch the recompression makes too large is refused.
#[test]
fn the_leader_recompresses_into_the_topic_codec() {
    let mut snaps = MemStorage::new();
    let rules = ProduceRules {
        compression: Some((Compression::Zstd, 5)),
        ..ProduceRules::default()
    };
    let mut p = open(MemStorage::new(), &mut snaps, rules);
    let sent = idempotent(7, 0, 0, 3);
    assert_eq!(sent.compression(), Ok(Compression::Lz4));
    let a = p.append(NOW, sent.clone()).unwrap();
    let retry = p.append(NOW, sent.clone()).unwrap();
    assert!(retry.duplicate && retry.base_offset == a.base_offset);
    p.append(
        NOW,
        BatchBuilder::new(Compression::Zstd)
            .record(NOW, Some(b"z"), Some(b"v"))
            .build()
            .unwrap(),
    )
    .unwrap();
    p.sync().unwrap();
    let stored = p
        .log()
        .read(Offset(0), usize::MAX, p.high_watermark())
        .unwrap();
    assert_eq!(stored.len(), 2);
    let first = &stored[0];
    assert_eq!(first.compression(), Ok(Compression::Zstd));
    assert_eq!(
        (
            first.producer_id(),
            first.producer_epoch(),
            first.base_sequence()
        ),
        (ProducerId(7), 0, 0)
    );
    assert_eq!(first.max_timestamp(), sent.max_timestamp());
    let keys = |b: &Batch| -> Vec<(Option<bytes::Bytes>, Option<bytes::Bytes>, i64)> {
        b.records()
            .unwrap()
            .into_iter()
            .map(|r| (r.key, r.value, r.timestamp))
            .collect()
    };
    assert_eq!(keys(first), keys(&sent));
    assert_eq!(stored[1].compression(), Ok(Compression::Zstd));

    // Uncompressed storage of a well-compressed batch can pass max.message.bytes.
    let mut snaps = MemStorage::new();
    let rules = ProduceRules {
        compression: Some((Compression::None, 0)),
        max_message_bytes: 400,
        ..ProduceRules::default()
    };
    let mut p = open(MemStorage::new(), &mut snaps, rules);
    let packed = BatchBuilder::new(Compression::Gzip)
        .record(NOW, Some(b"k"), Some(&[7u8; 2_000]))
        .build()
        .unwrap();
    assert!(packed.size() < 400);
    assert_eq!(
        p.append(NOW, packed).unwrap_err().code(),
        code::MESSAGE_TOO_LARGE
    );
    assert_eq!(p.log().end(), Offset(0));
}

#[test]
fn delete_records_never_passes_the_high_watermark() {
    let mut snaps = MemStorage::new();
    let mut p = open(MemStorage::new(), &mut snaps, ProduceRules::default());
    for _ in 0..5 {
        p.append(NOW, idempotent(-1, -1, -1, 2)).unwrap();
    }
    p.sync().unwrap();
    p.append(NOW, idempotent(-1, -1, -1, 2)).unwrap();
    assert!(p.delete_records(11).is_err(), "beyond the high watermark");
    assert_eq!(p.delete_records(4).unwrap(), Offset(4));
    assert_eq!(p.delete_records(-1).unwrap(), Offset(10));
}

/// KIP-320 epoch checks and OffsetForLeaderEpoch on the leader.
#[test]
fn client_epochs_are_fenced_or_unknown() {
    let mut snaps = MemStorage::new();
    let mut p = open(MemStorage::new(), &mut snaps, ProduceRules::default());
    p.append(NOW, idempotent(-1, -1, -1, 2)).unwrap();
    assert_eq!(p.check_client_epoch(2), Err(code::FENCED_LEADER_EPOCH));
    assert_eq!(p.check_client_epoch(4), Err(code::UNKNOWN_LEADER_EPOCH));
    assert_eq!(p.check_client_epoch(3), Ok(()));
    assert_eq!(p.check_client_epoch(-1), Ok(()));
    assert_eq!(
        p.end_offset_for_epoch(LeaderEpoch(3)),
        Ok(Some((LeaderEpoch(3), Offset(2))))
    );
    assert_eq!(
        p.end_offset_for_epoch(LeaderEpoch(9)),
        Err(code::UNKNOWN_LEADER_EPOCH)
    );
}

/// A leader that lacks committed data (its disk lost it) answers with a divergence below the
/// follower's high watermark. The follower refuses, keeps its log and says why: truncating
/// would destroy the last copies of acknowledged records (the simulator found a follower
/// asserting here, which crashed its broker).
#[test]
fn a_follower_refuses_to_truncate_below_its_high_watermark() {
    let (leader, me) = (BrokerId(1), BrokerId(2));
    let mut snaps = MemStorage::new();
    let mut f = PartitionReplica::recover(
        MemStorage::new(),
        &mut snaps,
        LogConfig::default(),
        ProduceRules::default(),
        ReplicaConfig::new(me),
        NOW,
    )
    .unwrap();
    let partition = Partition {
        replicas: vec![leader, me],
        isr: vec![leader, me],
        leader,
        leader_epoch: LeaderEpoch(1),
        partition_epoch: 0,
        elr: Vec::new(),
        adding: Vec::new(),
        removing: Vec::new(),
    };
    f.on_partition_change(NOW, &mut snaps, &partition).unwrap();
    let mut builder = BatchBuilder::new(Compression::None);
    builder.partition_leader_epoch = LeaderEpoch(1);
    for _ in 0..4 {
        builder = builder.record(NOW, None, Some(b"v"));
    }
    let response = |hw: i64, payload: FetchPayload| FetchResponse {
        leader_epoch: LeaderEpoch(1),
        high_watermark: Offset(hw),
        log_start: Offset(0),
        log_end: Offset(4),
        payload,
    };
    f.next_fetch(NOW).unwrap();
    let batch = builder.build().unwrap();
    f.handle_fetch_response(
        NOW,
        &mut snaps,
        response(0, FetchPayload::Records(vec![batch])),
    )
    .unwrap();
    f.sync().unwrap();
    f.next_fetch(NOW).unwrap();
    f.handle_fetch_response(
        NOW,
        &mut snaps,
        response(4, FetchPayload::Records(Vec::new())),
    )
    .unwrap();
    f.persist_state(&mut snaps).unwrap();
    assert_eq!(f.high_watermark(), Offset(4));

    f.next_fetch(NOW).unwrap();
    let diverged = FetchPayload::Diverging {
        epoch: LeaderEpoch(1),
        end_offset: Offset(0),
    };
    let err = f
        .handle_fetch_response(NOW, &mut snaps, response(0, diverged))
        .unwrap_err();
    assert!(
        matches!(&err, ReplicaError::Protocol(m) if m.contains("invariant 6")),
        "{err}"
    );
    assert_eq!(f.log().end(), Offset(4), "nothing was cut");
    assert_eq!(f.high_watermark(), Offset(4));
}

/// A damaged or missing epoch file reads as no accepted epoch, yet the log proves the epochs
/// its batches were appended in: recovery takes the larger (the simulator's disk faults
/// reached "invariant 2: the log holds epoch 3 above the accepted epoch -1").
#[test]
fn recovery_without_the_epoch_file_accepts_the_logs_epochs() {
    let mut snaps = MemStorage::new();
    let mut p = open(MemStorage::new(), &mut snaps, ProduceRules::default());
    p.append(NOW, idempotent(-1, -1, -1, 2)).unwrap();
    p.sync().unwrap();
    let log = p.into_log_storage();
    crate::storage::Storage::remove(&mut snaps, state::EPOCH_FILE).unwrap();
    let r = PartitionReplica::recover(
        log,
        &mut snaps,
        LogConfig::default(),
        ProduceRules::default(),
        ReplicaConfig::new(BrokerId::NONE),
        NOW,
    )
    .unwrap();
    assert_eq!(r.leader_epoch(), LeaderEpoch(3));
    assert!(r.state_report().epoch_missing);
}

// -------------------------------------------------------------------------------------------
// Damaged replicas (docs/replication.md, "damaged replicas"; `partition::damage`)

const LEADER: BrokerId = BrokerId(1);
const ME: BrokerId = BrokerId(2);

/// The two-replica partition at `epoch`, led by `leader` ([`BrokerId::NONE`]: no leader).
fn two_replicas(leader: BrokerId, epoch: i32) -> Partition {
    Partition {
        replicas: vec![LEADER, ME],
        isr: vec![LEADER, ME],
        leader,
        leader_epoch: LeaderEpoch(epoch),
        partition_epoch: 0,
        elr: Vec::new(),
        adding: Vec::new(),
        removing: Vec::new(),
    }
}

fn recover_me(log: MemStorage, snaps: &mut MemStorage) -> PartitionReplica<MemStorage> {
    PartitionReplica::recover(
        log,
        snaps,
        LogConfig::default(),
        ProduceRules::default(),
        ReplicaConfig::new(ME),
        NOW,
    )
    .unwrap()
}

/// A batch of `records` records as the leader stored it at `base`, in leader epoch `epoch`.
fn leaders_batch(epoch: i32, base: i64, records: usize) -> Batch {
    let mut builder = BatchBuilder::new(Compression::None);
    builder.partition_leader_epoch = LeaderEpoch(epoch);
    builder.base_offset = Offset(base);
    for _ in 0..records {
        builder = builder.record(NOW, None, Some(b"v"));
    }
    builder.build().unwrap()
}

/// One fetch round of follower `f` at leader epoch `epoch`: the leader answers `batches` and
/// its high watermark `hw`.
fn fetch_round(
    f: &mut PartitionReplica<MemStorage>,
    snaps: &mut MemStorage,
    epoch: i32,
    hw: i64,
    batches: Vec<Batch>,
) -> FetchOutcome {
    let end = batches.last().map_or(f.log().end(), |b| b.next_offset());
    f.next_fetch(NOW).expect("a fetch to send");
    let response = FetchResponse {
        leader_epoch: LeaderEpoch(epoch),
        high_watermark: Offset(hw),
        log_start: Offset(0),
        log_end: end.max(Offset(hw)),
        payload: FetchPayload::Records(batches),
    };
    f.handle_fetch_response(NOW, snaps, response).unwrap()
}

fn corrupt() -> LogError {
    LogError::Corrupt {
        file: "00000000000000000000.log".into(),
        position: 0,
        error: BatchError::CrcMismatch {
            stored: 1,
            computed: 2,
        },
    }
}

/// Recovery that finds the log below the persisted high watermark (the disk lost synced data)
/// marks the replica damaged, on disk too: it refuses to lead, a restart remembers it, and it
/// is repaired (the mark removed) once, as a follower, its log is back at that high watermark.
#[test]
fn a_replica_that_lost_synced_data_leads_nothing_until_it_fetched_it_back() {
    let mut snaps = MemStorage::new();
    state::write_epoch(&mut snaps, LeaderEpoch(1), false).unwrap();
    StateWrite {
        seq: 1,
        high_watermark: Offset(4),
    }
    .write_to(&mut snaps)
    .unwrap();
    let mut r = recover_me(MemStorage::new(), &mut snaps);
    assert_eq!(r.state_report().hw_above_log, Some(Offset(4)));
    assert_eq!(
        r.damage().state(),
        DamageState::Damaged {
            repaired_at: Some(Offset(4))
        }
    );
    assert!(damage::is_marked(&snaps), "the mark is on disk");
    let refused = r.on_partition_change(NOW, &mut snaps, &two_replicas(ME, 2));
    assert!(matches!(refused, Err(RoleError::Damaged)), "{refused:?}");
    assert_eq!(r.role(), Role::Offline);
    assert_eq!(
        r.leader_epoch(),
        LeaderEpoch(1),
        "the refused epoch is not taken"
    );

    let mut r = recover_me(r.into_log_storage(), &mut snaps);
    assert!(r.state_report().damage_marked, "a restart remembers it");
    assert!(r.is_damaged());
    r.on_partition_change(NOW, &mut snaps, &two_replicas(LEADER, 2))
        .unwrap();
    fetch_round(&mut r, &mut snaps, 2, 4, vec![leaders_batch(1, 0, 2)]);
    assert!(
        !r.repair_if_due(&mut snaps).unwrap(),
        "its log ends at 2, below 4"
    );
    assert!(r.is_damaged() && damage::is_marked(&snaps));
    fetch_round(&mut r, &mut snaps, 2, 4, vec![leaders_batch(1, 2, 2)]);
    assert!(r.repair_if_due(&mut snaps).unwrap());
    assert!(!r.is_damaged());
    assert!(!damage::is_marked(&snaps), "the mark is gone");
    r.on_partition_change(NOW, &mut snaps, &two_replicas(ME, 3))
        .unwrap();
    assert!(r.is_leader(), "repaired, it may lead");
}

/// A damaged epoch file makes the replica damaged with no known target: the first high
/// watermark it hears from a leader is what its log must reach.
#[test]
fn a_damaged_epoch_file_is_repaired_at_the_first_leader_high_watermark_heard() {
    let mut snaps = MemStorage::new();
    crate::storage::write_atomic(&mut snaps, state::EPOCH_FILE, b"keel-replica-epoch 1 x\n")
        .unwrap();
    let mut r = recover_me(MemStorage::new(), &mut snaps);
    assert!(r.state_report().epoch_corrupt);
    assert_eq!(
        r.damage().state(),
        DamageState::Damaged { repaired_at: None }
    );
    r.on_partition_change(NOW, &mut snaps, &two_replicas(LEADER, 1))
        .unwrap();
    fetch_round(&mut r, &mut snaps, 1, 3, vec![leaders_batch(1, 0, 2)]);
    fetch_round(&mut r, &mut snaps, 1, 6, Vec::new());
    assert_eq!(
        r.damage().state(),
        DamageState::Damaged {
            repaired_at: Some(Offset(3))
        },
        "the first high watermark heard, not the latest"
    );
    assert!(!r.repair_if_due(&mut snaps).unwrap());
    fetch_round(&mut r, &mut snaps, 1, 6, vec![leaders_batch(1, 2, 2)]);
    assert!(r.repair_if_due(&mut snaps).unwrap());
    assert!(!r.is_damaged());
}

/// A discard of runtime damage that fails (here its segment cannot be read) stays pending and
/// backs the follower off: no fetch before the backoff's deadline, which brings the broker
/// back to the discard; an idle partition's leader never answers on its own, so without the
/// deadline the follower would wait for good (simulator seed 588, a discard failed on I/O
/// errors and its broker stayed fenced).
#[test]
fn a_failed_discard_backs_off_and_is_tried_again() {
    let mut snaps = MemStorage::new();
    let mut r = recover_me(MemStorage::new(), &mut snaps);
    r.on_partition_change(NOW, &mut snaps, &two_replicas(LEADER, 1))
        .unwrap();
    let first = leaders_batch(1, 0, 2);
    let first_size = first.size();
    fetch_round(
        &mut r,
        &mut snaps,
        1,
        0,
        vec![first, leaders_batch(1, 2, 2)],
    );
    r.sync().unwrap();
    fetch_round(&mut r, &mut snaps, 1, 4, Vec::new());
    r.persist_state(&mut snaps).unwrap();
    let segment = format!("{:020}.log", 0);
    r.log_mut()
        .storage_mut()
        .flip_bit(&segment, first_size + 40, 2)
        .unwrap();
    let e = r.log().read(Offset(2), 1, Offset(4)).unwrap_err();
    assert!(r.on_read_failed(&e, &mut snaps).unwrap());

    let saved = r.log().storage().clone();
    r.log_mut().storage_mut().remove(&segment).unwrap();
    assert!(r.discard_pending_damage(NOW, &mut snaps).is_err());
    assert!(r.damage().discard_pending(), "still pending");
    assert_eq!(r.next_fetch(NOW), None, "backing off");
    let retry = r.poll_timeout().expect("a deadline to try again");
    assert!(retry > NOW);

    *r.log_mut().storage_mut() = saved;
    assert_eq!(
        r.discard_pending_damage(retry, &mut snaps).unwrap(),
        Some(Offset(0))
    );
    assert!(!r.damage().discard_pending());
    assert!(r.next_fetch(retry).is_some(), "fetching it back");
}

/// Damage found by a read at runtime: only a damaged batch (not a failed I/O) makes the
/// replica damaged and writes the mark; it discards its log from the damaged batch only as a
/// follower with a leader to fetch it back from, and is repaired only after the discard, once
/// its log is back at the leader's high watermark.
#[test]
fn a_damaged_batch_read_at_runtime_is_discarded_only_with_a_leader_to_fetch_from() {
    let mut snaps = MemStorage::new();
    let mut r = recover_me(MemStorage::new(), &mut snaps);
    r.on_partition_change(NOW, &mut snaps, &two_replicas(LEADER, 1))
        .unwrap();
    let (first, second) = (leaders_batch(1, 0, 2), leaders_batch(1, 2, 2));
    let first_size = first.size();
    fetch_round(&mut r, &mut snaps, 1, 0, vec![first, second.clone()]);
    r.sync().unwrap();
    fetch_round(&mut r, &mut snaps, 1, 4, Vec::new());
    r.persist_state(&mut snaps).unwrap();
    assert_eq!(r.high_watermark(), Offset(4));

    let io = LogError::Storage(StorageError::NoSpace);
    assert!(!r.on_read_failed(&io, &mut snaps).unwrap());
    assert!(!r.is_damaged(), "a failed I/O is not damage");

    r.log_mut()
        .storage_mut()
        .flip_bit(&format!("{:020}.log", 0), first_size + 40, 2)
        .unwrap();
    let e = r.log().read(Offset(2), 1, Offset(4)).unwrap_err();
    assert!(matches!(e, LogError::Corrupt { .. }), "{e}");
    assert!(r.on_read_failed(&e, &mut snaps).unwrap(), "newly damaged");
    assert!(
        !r.on_read_failed(&e, &mut snaps).unwrap(),
        "already damaged"
    );
    assert!(r.is_damaged() && r.damage().discard_pending());
    assert!(damage::is_marked(&snaps));

    // No leader to fetch from: its copy may be the only one; nothing is discarded.
    r.on_partition_change(NOW, &mut snaps, &two_replicas(BrokerId::NONE, 2))
        .unwrap();
    assert_eq!(r.discard_pending_damage(NOW, &mut snaps).unwrap(), None);
    assert_eq!(r.log().end(), Offset(4));

    r.on_partition_change(NOW, &mut snaps, &two_replicas(LEADER, 3))
        .unwrap();
    let end = r.discard_pending_damage(NOW, &mut snaps).unwrap();
    assert_eq!(
        end,
        Some(Offset(0)),
        "back to the start of the last sound batch"
    );
    assert!(!r.damage().discard_pending());
    assert_eq!(r.find_damage().unwrap(), None);
    assert_eq!(r.high_watermark(), Offset(0), "lowered with the log");
    assert!(r.is_damaged(), "not repaired before it fetched back");

    fetch_round(
        &mut r,
        &mut snaps,
        3,
        4,
        vec![leaders_batch(1, 0, 2), second.clone()],
    );
    assert_eq!(r.log().end(), Offset(4));
    assert!(r.repair_if_due(&mut snaps).unwrap());
    assert!(!r.is_damaged() && !damage::is_marked(&snaps));
}

/// A repair is due only once the discard is done: a log end past the target proves nothing
/// while the damaged batches are still in it.
#[test]
fn no_repair_while_the_damaged_batches_are_still_in_the_log() {
    let mut snaps = MemStorage::new();
    crate::storage::write_atomic(&mut snaps, state::EPOCH_FILE, b"garbage\n").unwrap();
    let mut r = recover_me(MemStorage::new(), &mut snaps);
    r.on_partition_change(NOW, &mut snaps, &two_replicas(LEADER, 1))
        .unwrap();
    fetch_round(&mut r, &mut snaps, 1, 2, vec![leaders_batch(1, 0, 2)]);
    r.on_read_failed(&corrupt(), &mut snaps).unwrap();
    assert!(
        !r.repair_if_due(&mut snaps).unwrap(),
        "a discard is pending"
    );
    assert_eq!(
        r.discard_pending_damage(NOW, &mut snaps).unwrap(),
        Some(Offset(2))
    );
    assert!(
        r.repair_if_due(&mut snaps).unwrap(),
        "nothing was damaged in the log"
    );
}

/// A leader that finds damage in its log shrinks no ISR: its followers lag because it cannot
/// serve them, and its broker steps it down. Its deadline comes back every
/// `DAMAGED_LEADER_RECHECK_MS`, so the shell's timer never spins.
#[test]
fn a_damaged_leader_shrinks_no_isr() {
    let mut snaps = MemStorage::new();
    let mut sound_snaps = MemStorage::new();
    let mut damaged = recover_me(MemStorage::new(), &mut snaps);
    let mut sound = recover_me(MemStorage::new(), &mut sound_snaps);
    damaged
        .on_partition_change(NOW, &mut snaps, &two_replicas(ME, 1))
        .unwrap();
    sound
        .on_partition_change(NOW, &mut sound_snaps, &two_replicas(ME, 1))
        .unwrap();
    let due = sound
        .poll_timeout()
        .expect("the follower may fall out of sync");
    assert_eq!(damaged.poll_timeout(), Some(due));
    sound.handle_timeout(due);
    assert!(
        sound.poll_alter_partition().is_some(),
        "the sound leader shrinks"
    );

    assert!(damaged.on_read_failed(&corrupt(), &mut snaps).unwrap());
    damaged.handle_timeout(due);
    assert_eq!(damaged.poll_alter_partition(), None);
    assert_eq!(damaged.isr(), vec![LEADER, ME]);
    let again = due + damage::DAMAGED_LEADER_RECHECK_MS;
    assert_eq!(damaged.poll_timeout(), Some(again));
    damaged.handle_timeout(again);
    assert_eq!(damaged.poll_alter_partition(), None);
    assert_eq!(
        damaged.poll_timeout(),
        Some(again + damage::DAMAGED_LEADER_RECHECK_MS)
    );
    assert_eq!(
        damaged.discard_pending_damage(NOW, &mut snaps).unwrap(),
        None,
        "a leader discards nothing"
    );
}

/// A replica the shell found unopenable before counts as damaged once it opens.
#[test]
fn marking_a_replica_damaged_writes_the_mark() {
    let mut snaps = MemStorage::new();
    let mut r = recover_me(MemStorage::new(), &mut snaps);
    assert!(!r.is_damaged() && !damage::is_marked(&snaps));
    r.mark_damaged(&mut snaps).unwrap();
    assert!(r.is_damaged() && damage::is_marked(&snaps));
    let refused = r.on_partition_change(NOW, &mut snaps, &two_replicas(ME, 1));
    assert!(matches!(refused, Err(RoleError::Damaged)), "{refused:?}");
}

// -------------------------------------------------------------------------------------------
// Effects (the module documentation's call order)

/// A leader's effects come out once each, in order: the shrink deadline when it leads, a sync
/// after an append (once, until the sync round begins), a high watermark write after a
/// follower's durable end moves it, the new high watermark once that write is done, and an
/// ISR change (first) when the follower falls out of sync.
#[test]
fn a_leaders_effects_come_out_once_each_in_order() {
    let follower = LEADER;
    let mut snaps = MemStorage::new();
    let mut r = recover_me(MemStorage::new(), &mut snaps);
    assert_eq!(r.poll_effects(), Vec::new(), "offline: nothing to do");
    r.on_partition_change(NOW, &mut snaps, &two_replicas(ME, 1))
        .unwrap();
    let due = r.poll_timeout().expect("the follower may fall out of sync");
    assert_eq!(r.poll_effects(), vec![Effect::Deadline(due)]);
    assert_eq!(r.poll_effects(), Vec::new(), "reported once");

    r.append(NOW, idempotent(-1, -1, -1, 3)).unwrap();
    assert_eq!(r.poll_effects(), vec![Effect::Sync]);
    r.append(NOW, idempotent(-1, -1, -1, 1)).unwrap();
    assert_eq!(r.poll_effects(), Vec::new(), "one sync round covers both");
    let pending = r.prepare_sync().expect("unsynced appends");
    r.append(NOW, idempotent(-1, -1, -1, 1)).unwrap();
    assert_eq!(
        r.poll_effects(),
        vec![Effect::Sync],
        "an append after the round began needs another"
    );
    assert_eq!(r.complete_sync(pending), Offset(4));
    let pending = r.prepare_sync().unwrap();
    r.complete_sync(pending);
    assert_eq!(
        r.poll_effects(),
        Vec::new(),
        "the follower holds the high watermark"
    );

    let fetch = FetchRequest {
        replica: follower,
        leader_epoch: LeaderEpoch(1),
        fetch_offset: Offset(5),
        last_fetched_epoch: LeaderEpoch(1),
        durable_end: Offset(5),
        cleaned_end: Offset::ZERO,
        max_bytes: 1 << 20,
    };
    r.handle_follower_fetch(NOW, &fetch).unwrap();
    assert_eq!(r.high_watermark(), Offset(0), "not persisted yet");
    assert_eq!(
        r.poll_effects(),
        vec![Effect::WriteHighWatermark],
        "a high watermark write; no deadline: the follower is caught up"
    );
    assert_eq!(r.prepare_sync(), None, "the log is synced");
    r.append(NOW, idempotent(-1, -1, -1, 1)).unwrap();
    let due = r.poll_timeout().expect("the follower lags again");
    assert_eq!(
        r.poll_effects(),
        vec![Effect::Sync, Effect::Deadline(due)],
        "an append while the high watermark write is wanted: a sync round of its own"
    );
    let write = r.prepare_state_write().expect("a write wanted");
    assert_eq!(r.poll_effects(), Vec::new(), "one write at a time");
    let pending = r.prepare_sync().expect("the new append");
    assert_eq!(r.complete_sync(pending), Offset(6));
    write.write_to(&mut snaps).unwrap();
    r.complete_state_write(write);
    assert_eq!(r.poll_effects(), vec![Effect::HighWatermark(Offset(5))]);
    r.handle_timeout(due);
    let effects = r.poll_effects();
    assert!(
        matches!(&effects[..], [Effect::AlterPartition(a)] if a.isr == vec![ME]),
        "{effects:?}"
    );
}

/// A deadline is reported again after each timeout, even unchanged (the shell's timer fired
/// and forgot it): a damaged leader's recheck, here.
#[test]
fn a_deadline_is_reported_again_after_each_timeout() {
    let mut snaps = MemStorage::new();
    let mut r = recover_me(MemStorage::new(), &mut snaps);
    r.on_partition_change(NOW, &mut snaps, &two_replicas(ME, 1))
        .unwrap();
    let due = r.poll_timeout().unwrap();
    assert_eq!(r.poll_effects(), vec![Effect::Deadline(due)]);
    r.handle_timeout(NOW);
    assert_eq!(
        r.poll_effects(),
        vec![Effect::Deadline(due)],
        "not due yet: the same deadline, reported again"
    );
}

/// The cleaner's tombstone bound: on a leader, the smallest durable end and cleaned end of
/// every assigned replica (one not heard from in this epoch holds nothing); a follower removes
/// no tombstone.
#[test]
fn the_tombstone_bound_waits_for_every_replica() {
    let mut snaps = MemStorage::new();
    let mut r = recover_me(MemStorage::new(), &mut snaps);
    r.on_partition_change(NOW, &mut snaps, &two_replicas(ME, 1))
        .unwrap();
    r.append(NOW, idempotent(-1, -1, -1, 4)).unwrap();
    r.sync().unwrap();
    assert_eq!(
        r.tombstone_bound(),
        Offset(0),
        "the follower has not fetched"
    );
    let fetch = FetchRequest {
        replica: LEADER,
        leader_epoch: LeaderEpoch(1),
        fetch_offset: Offset(3),
        last_fetched_epoch: LeaderEpoch(1),
        durable_end: Offset(2),
        cleaned_end: Offset(3),
        max_bytes: 1 << 20,
    };
    r.handle_follower_fetch(NOW, &fetch).unwrap();
    assert_eq!(r.tombstone_bound(), Offset(2), "the follower's durable end");
    let fetch = FetchRequest {
        fetch_offset: Offset(4),
        durable_end: Offset(4),
        cleaned_end: Offset(1),
        ..fetch
    };
    r.handle_follower_fetch(NOW, &fetch).unwrap();
    assert_eq!(r.tombstone_bound(), Offset(1), "the follower's cleaned end");
    let fetch = FetchRequest {
        cleaned_end: Offset(4),
        ..fetch
    };
    r.handle_follower_fetch(NOW, &fetch).unwrap();
    assert_eq!(
        r.tombstone_bound(),
        Offset(4),
        "every replica holds and cleaned the log"
    );
    r.on_partition_change(NOW, &mut snaps, &two_replicas(LEADER, 2))
        .unwrap();
    assert_eq!(r.tombstone_bound(), Offset(0), "a follower removes none");
}

/// Damage below the recovery point, which the open trusts and does not read again, met by the
/// producer state's replay at the next open: the replica still opens, cut at the damage, marked
/// damaged and with its high watermark lowered, so that it fetches the rest back (the
/// simulator's seed 507: the open failed at every try and kept the broker fenced for good).
#[test]
fn damage_below_the_recovery_point_met_at_open_cuts_the_log_there() {
    let mut snaps = MemStorage::new();
    let open = |log: MemStorage, snaps: &mut MemStorage| {
        let config = LogConfig {
            segment_bytes_max: 100,
            ..LogConfig::default()
        };
        PartitionReplica::recover(
            log,
            snaps,
            config,
            ProduceRules::default(),
            ReplicaConfig::new(ME),
            NOW,
        )
        .unwrap()
    };
    let mut r = open(MemStorage::new(), &mut snaps);
    r.on_partition_change(NOW, &mut snaps, &two_replicas(LEADER, 1))
        .unwrap();
    // One segment per batch: 0, 2 and 4 (the last, which the open reads again).
    for base in [0, 2, 4] {
        fetch_round(&mut r, &mut snaps, 1, base, vec![leaders_batch(1, base, 2)]);
    }
    r.sync().unwrap();
    fetch_round(&mut r, &mut snaps, 1, 6, Vec::new());
    r.persist_state(&mut snaps).unwrap();
    r.log_mut().checkpoint().unwrap();
    assert_eq!(r.high_watermark(), Offset(6));
    assert_eq!(r.log().segment_count(), 3);
    let mut storage = r.into_log_storage();
    // The second segment, closed and below the recovery point: the open does not read it.
    storage.flip_bit(&format!("{:020}.log", 2), 40, 2).unwrap();
    let r = open(storage, &mut snaps);
    assert!(
        r.log().end() <= Offset(2),
        "cut at the damage: {}",
        r.log().end()
    );
    assert_eq!(r.find_damage().unwrap(), None);
    assert!(r.is_damaged());
    assert!(damage::is_marked(&snaps));
    assert_eq!(r.high_watermark(), r.log().end(), "lowered with the log");
}
