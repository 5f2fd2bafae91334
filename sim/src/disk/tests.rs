use keel_core::batch::{BatchBuilder, Compression};
use keel_core::log::{Log, LogConfig, LogError};
use keel_core::{LeaderEpoch, Offset};
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::*;

fn disk(seed: u64, faults: FaultConfig) -> SimDisk {
    SimDisk::new(Box::new(StdRng::seed_from_u64(seed)), faults)
}

#[test]
fn synced_bytes_survive_and_pending_ones_are_cut_at_sector_boundaries() {
    let faults = FaultConfig {
        sector_bytes: 8,
        ..FaultConfig::none()
    };
    let mut cut_inside = false;
    for seed in 0..100 {
        let d = disk(seed, faults.clone());
        let mut dir = d.dir("p");
        dir.create("f").unwrap();
        dir.append("f", &[1u8; 12]).unwrap();
        dir.sync("f").unwrap();
        dir.append("f", &[2u8; 30]).unwrap();
        d.crash();
        let after = dir.read_at("f", 0, 100).unwrap();
        assert_eq!(
            &after[..12],
            &[1u8; 12],
            "seed {seed}: synced bytes survive"
        );
        assert!(
            after.len() == 12 || after.len() % 8 == 0 || after.len() == 42,
            "seed {seed}: cut at a sector boundary, got {}",
            after.len()
        );
        assert!(after[12..].iter().all(|&b| b == 2));
        cut_inside |= after.len() > 12 && after.len() < 42;
    }
    assert!(cut_inside, "some crashes keep part of the pending bytes");
}

#[test]
fn torn_writes_leave_part_of_a_sector() {
    let faults = FaultConfig {
        sector_bytes: 8,
        torn_writes: true,
        ..FaultConfig::none()
    };
    let torn = (0..200).any(|seed| {
        let d = disk(seed, faults.clone());
        let mut dir = d.dir("p");
        dir.create("f").unwrap();
        dir.append("f", &[2u8; 30]).unwrap();
        d.crash();
        let len = dir.len("f").unwrap();
        len % 8 != 0 && len != 30
    });
    assert!(torn);
}

#[test]
fn directories_are_separate_and_outlive_their_handles() {
    let d = disk(1, FaultConfig::none());
    let mut a = d.dir("node/a");
    let mut b = d.dir("node/b");
    a.create("x").unwrap();
    b.create("x").unwrap();
    a.append("x", b"aaa").unwrap();
    a.sync("x").unwrap();
    assert_eq!(b.len("x").unwrap(), 0);
    drop(a);
    let a = d.dir("node/a");
    assert_eq!(&a.read_at("x", 0, 10).unwrap()[..], b"aaa");
    assert_eq!(
        d.dir("node").list().unwrap(),
        Vec::<String>::new(),
        "listing is per directory"
    );
}

#[test]
fn a_full_disk_refuses_appends_and_io_errors_are_reported() {
    let d = disk(
        1,
        FaultConfig {
            capacity_bytes: Some(10),
            ..FaultConfig::none()
        },
    );
    let mut dir = d.dir("p");
    dir.create("f").unwrap();
    dir.append("f", &[0; 10]).unwrap();
    assert_eq!(dir.append("f", &[0; 1]), Err(StorageError::NoSpace));
    let d = disk(
        1,
        FaultConfig {
            io_error_per_op: 1.0,
            ..FaultConfig::none()
        },
    );
    assert!(matches!(
        d.dir("p").create("f"),
        Err(StorageError::Io { .. })
    ));
    d.set_faults(false);
    d.dir("p").create("f").unwrap();
    assert_eq!(d.stats().io_errors, 1);
}

/// The nemesis's full disk: a capacity set just above what is used refuses the append that
/// would cross it (the file unchanged), and appends succeed again once it is lifted.
#[test]
fn a_disk_filled_for_a_while_refuses_appends_then_takes_them_again() {
    let d = disk(1, FaultConfig::none());
    let mut dir = d.dir("p");
    dir.create("f").unwrap();
    dir.append("f", &[1; 100]).unwrap();
    assert_eq!(d.used_bytes(), 100);
    d.set_capacity(Some(d.used_bytes() + 8));
    dir.append("f", &[2; 8]).unwrap();
    assert_eq!(dir.append("f", &[3; 1]), Err(StorageError::NoSpace));
    assert_eq!(
        dir.len("f").unwrap(),
        108,
        "a refused append writes nothing"
    );
    assert_eq!(d.stats().full_disk_errors, 1);
    d.set_capacity(None);
    dir.append("f", &[3; 1]).unwrap();
    assert_eq!(
        dir.read_at("f", 100, 9).unwrap().as_ref(),
        &[2, 2, 2, 2, 2, 2, 2, 2, 3]
    );
}

/// The fault model's promise, checked against the real log: with bit rot and misdirected
/// writes on, every read either returns exactly the bytes that were written or reports
/// corruption. Nothing damaged is ever served.
#[test]
fn the_log_never_serves_damaged_bytes_from_a_faulty_disk() {
    let faults = FaultConfig {
        sector_bytes: 64,
        torn_writes: true,
        latent_error_per_read: 0.05,
        misdirect_per_append: 0.05,
        io_error_per_op: 0.0,
        capacity_bytes: None,
    };
    let (mut detected, mut served) = (0, 0);
    for seed in 0..40 {
        let d = disk(seed, faults.clone());
        let config = LogConfig {
            segment_bytes_max: 4096,
            ..LogConfig::default()
        };
        let mut log = Log::open(d.dir("t-0"), config.clone(), 0).unwrap();
        let mut written = Vec::new();
        for i in 0..60u8 {
            let b = BatchBuilder::new(Compression::None)
                .record(i as i64, Some(&[i]), Some(&[i; 100]))
                .build()
                .unwrap();
            let info = log.append(0, b.clone(), LeaderEpoch(1)).unwrap();
            let mut stamped = b;
            stamped.stamp(info.base_offset, LeaderEpoch(1));
            written.push(stamped);
        }
        log.sync().unwrap();
        for round in 0..3 {
            let mut from = Offset(0);
            while from < log.end() {
                match log.read(from, 1000, log.end()) {
                    Ok(batches) => {
                        for b in &batches {
                            let expected = &written[b.base_offset().0 as usize];
                            assert_eq!(
                                b.bytes(),
                                expected.bytes(),
                                "seed {seed}: served bytes differ from what was written"
                            );
                            served += 1;
                        }
                        from = batches.last().map_or(from.plus(1), |b| b.next_offset());
                    }
                    Err(LogError::Corrupt { .. }) => {
                        detected += 1;
                        from = from.plus(1);
                    }
                    Err(e) => panic!("seed {seed} round {round}: {e}"),
                }
            }
        }
        // Recovery after a crash keeps only valid batches, each equal to what was written.
        d.crash();
        d.set_faults(false);
        let log = Log::open(d.dir("t-0"), config, 0).unwrap();
        let mut from = Offset(0);
        while from < log.end() {
            let batches = log
                .read(from, 1 << 20, log.end())
                .expect("recovered data reads clean with faults off");
            for b in &batches {
                assert_eq!(b.bytes(), written[b.base_offset().0 as usize].bytes());
            }
            from = batches.last().unwrap().next_offset();
        }
    }
    assert!(
        served > 0 && detected > 0,
        "faults fired and were caught: served {served}, detected {detected}"
    );
}

#[test]
fn the_same_seed_gives_the_same_faults() {
    let run = |seed| {
        let faults = FaultConfig {
            latent_error_per_read: 0.3,
            misdirect_per_append: 0.3,
            torn_writes: true,
            sector_bytes: 16,
            ..FaultConfig::none()
        };
        let d = disk(seed, faults);
        let mut dir = d.dir("p");
        dir.create("f").unwrap();
        for i in 0..50u8 {
            dir.append("f", &[i; 40]).unwrap();
            let _ = dir.read_at("f", 0, 2000);
        }
        d.crash();
        (d.stats(), dir.read_at("f", 0, 4000).unwrap())
    };
    assert_eq!(run(7), run(7));
    assert_ne!(run(7), run(8));
}

/// The recovery oracle: after a power loss, what the first instant of a segment's recovery
/// leaves must hold every synced byte and end where a write ended.
#[test]
fn the_recovery_oracle_judges_what_recovery_kept() {
    use std::sync::atomic::{AtomicU64, Ordering};
    // Writes of 100 and 60 bytes synced, then 300 bytes pending, cut by the crash at a
    // sector boundary (or kept whole, or lost): each seed its own cut.
    let run = |seed: u64, recover: &dyn Fn(&mut SimDir, u64)| -> (Vec<String>, u64) {
        let clock = Arc::new(AtomicU64::new(0));
        let faults = FaultConfig {
            sector_bytes: 64,
            torn_writes: true,
            ..FaultConfig::none()
        };
        let d = disk(seed, faults).with_manual_clock(clock.clone());
        let mut dir = d.dir("p-0");
        let seg = "00000000000000000000.log";
        dir.create(seg).unwrap();
        dir.append(seg, &[1; 100]).unwrap();
        dir.append(seg, &[2; 60]).unwrap();
        dir.sync(seg).unwrap();
        dir.append(seg, &[3; 300]).unwrap();
        d.crash();
        clock.store(1, Ordering::SeqCst);
        let survived = dir.len(seg).unwrap();
        recover(&mut dir, survived);
        clock.store(2, Ordering::SeqCst);
        dir.append(seg, &[4; 10]).unwrap();
        (d.finish_recovery_checks(), survived)
    };
    let cut_to_last_write = |dir: &mut SimDir, survived: u64| {
        let keep = if survived >= 460 { 460 } else { 160 };
        dir.truncate("00000000000000000000.log", keep).unwrap();
        dir.sync("00000000000000000000.log").unwrap();
    };
    let mut torn_seen = false;
    for seed in 0..40 {
        let (violations, survived) = run(seed, &cut_to_last_write);
        assert!(violations.is_empty(), "seed {seed}: {violations:?}");
        let torn = survived != 160 && survived != 460;
        torn_seen |= torn;
        let (kept_torn, _) = run(seed, &|_, _| {});
        assert_eq!(
            kept_torn.len(),
            usize::from(torn),
            "seed {seed}: keeping {survived} bytes: {kept_torn:?}"
        );
        let (cut_synced, _) = run(seed, &|dir, _| {
            dir.truncate("00000000000000000000.log", 100).unwrap();
        });
        assert!(
            cut_synced.len() == 1 && cut_synced[0].contains("below the 160 synced"),
            "seed {seed}: {cut_synced:?}"
        );
    }
    assert!(torn_seen, "some seed tore the pending write");
}

/// A segment removed by itself while its recovery is pending is judged (recovery kept
/// nothing of it); a whole replica directory removed (the replica deleted or reassigned away)
/// is not a recovery, and the oracle forgets its segments.
#[test]
fn a_removed_replica_directory_is_not_judged_as_a_recovery() {
    use keel_node::storage::VirtualDisk;
    use std::sync::atomic::{AtomicU64, Ordering};
    let run = |whole_dir: bool| -> Vec<String> {
        let clock = Arc::new(AtomicU64::new(0));
        let d = disk(7, FaultConfig::none()).with_manual_clock(clock.clone());
        let mut dir = d.dir("p-0");
        let seg = "00000000000000000000.log";
        dir.create(seg).unwrap();
        dir.append(seg, &[1; 100]).unwrap();
        dir.sync(seg).unwrap();
        d.crash();
        clock.store(1, Ordering::SeqCst);
        if whole_dir {
            VirtualDisk::remove_dir_all(&d, "p-0").unwrap();
        } else {
            dir.remove(seg).unwrap();
        }
        assert!(d.dir("p-0").list().unwrap().is_empty());
        d.finish_recovery_checks()
    };
    let one_file = run(false);
    assert!(
        one_file.len() == 1 && one_file[0].contains("kept 0 bytes, below the 100 synced"),
        "{one_file:?}"
    );
    assert_eq!(run(true), Vec::<String>::new());
}

/// A segment removed before anything touched it since the power loss: kept nothing if its
/// directory stays (recovery removed it), not judged if the whole directory goes with it (a
/// replica deleted while its broker was down); and a segment replaced whole by a rename (the
/// cleaner's swap) is judged as the new file.
#[test]
fn the_recovery_oracle_tells_deleted_replicas_and_swapped_segments() {
    use std::sync::atomic::AtomicU64;
    let run = |remove_dir: bool| -> Vec<String> {
        let clock = Arc::new(AtomicU64::new(0));
        let d = disk(1, FaultConfig::none()).with_manual_clock(clock.clone());
        let mut dir = d.dir("p-0");
        let seg = "00000000000000000000.log";
        dir.create(seg).unwrap();
        dir.create("partition.metadata").unwrap();
        dir.append(seg, &[1; 100]).unwrap();
        dir.sync(seg).unwrap();
        d.crash();
        clock.store(1, std::sync::atomic::Ordering::SeqCst);
        dir.remove(seg).unwrap();
        if remove_dir {
            dir.remove("partition.metadata").unwrap();
        }
        d.finish_recovery_checks()
    };
    assert_eq!(run(true), Vec::<String>::new());
    let kept_nothing = run(false);
    assert!(
        kept_nothing.len() == 1 && kept_nothing[0].contains("kept 0 bytes"),
        "{kept_nothing:?}"
    );
    // A swap renamed over a segment whose last write was torn by the power loss.
    let clock = Arc::new(AtomicU64::new(0));
    let d = disk(2, FaultConfig::none()).with_manual_clock(clock.clone());
    let mut dir = d.dir("p-0");
    let seg = "00000000000000000000.log";
    dir.create(seg).unwrap();
    dir.append(seg, &[1; 100]).unwrap();
    dir.sync(seg).unwrap();
    dir.create("x.swap").unwrap();
    dir.append("x.swap", &[2; 177]).unwrap();
    dir.sync("x.swap").unwrap();
    clock.store(1, std::sync::atomic::Ordering::SeqCst);
    dir.rename("x.swap", seg).unwrap();
    d.crash();
    clock.store(2, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(dir.len(seg).unwrap(), 177);
    clock.store(3, std::sync::atomic::Ordering::SeqCst);
    dir.append(seg, &[3; 5]).unwrap();
    assert_eq!(d.finish_recovery_checks(), Vec::<String>::new());
}
