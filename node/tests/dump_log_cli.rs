//! Issue 2's acceptance check on real files: a corrupted byte inside a batch is reported by
//! `keel dump-log` (exit code 1, with the position) and cut by recovery, which keeps every
//! earlier batch.

use std::process::Command;

use keel_core::batch::{BatchBuilder, Compression};
use keel_core::log::{Log, LogConfig};
use keel_core::{LeaderEpoch, Offset};
use keel_node::storage::FileStorage;

fn keel() -> Command {
    Command::new(env!("CARGO_BIN_EXE_keel"))
}

#[test]
fn dump_log_and_recovery_find_a_corrupted_byte() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = Log::open(
        FileStorage::open(dir.path()).unwrap(),
        LogConfig::default(),
        0,
    )
    .unwrap();
    let mut positions = Vec::new();
    let mut position = 0u64;
    for i in 0..10i64 {
        let batch = BatchBuilder::new(Compression::Gzip)
            .record(i, Some(b"key"), Some(&[b'v'; 200]))
            .build()
            .unwrap();
        positions.push(position);
        position += batch.size() as u64;
        log.append(i, batch, LeaderEpoch(0)).unwrap();
    }
    log.sync().unwrap();
    drop(log);
    let segment = dir.path().join("00000000000000000000.log");

    let clean = keel().arg("dump-log").arg(&segment).output().unwrap();
    assert!(
        clean.status.success(),
        "{}",
        String::from_utf8_lossy(&clean.stdout)
    );
    assert_eq!(
        String::from_utf8_lossy(&clean.stdout)
            .matches("isvalid: true")
            .count(),
        10
    );

    // Flip one byte in the middle of the seventh batch's records.
    let mut bytes = std::fs::read(&segment).unwrap();
    let target = positions[6] as usize + 100;
    bytes[target] ^= 0x40;
    std::fs::write(&segment, &bytes).unwrap();

    let dumped = keel().arg("dump-log").arg(dir.path()).output().unwrap();
    let text = String::from_utf8_lossy(&dumped.stdout);
    assert_eq!(dumped.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "INVALID at position {}: CRC mismatch",
            positions[6]
        )),
        "{text}"
    );
    assert_eq!(
        text.matches("isvalid: true").count(),
        9,
        "the other batches are still listed as valid"
    );

    let log = Log::open(
        FileStorage::open(dir.path()).unwrap(),
        LogConfig::default(),
        0,
    )
    .unwrap();
    assert_eq!(
        log.end(),
        Offset(6),
        "recovery truncates at the corrupt batch"
    );
    let report = log.recovery_report();
    assert_eq!(report.corruption.as_ref().map(|c| c.1), Some(positions[6]));
    assert_eq!(
        log.read(Offset(0), usize::MAX, log.end()).unwrap().len(),
        6,
        "every earlier batch is kept"
    );
    assert_eq!(std::fs::metadata(&segment).unwrap().len(), positions[6]);
}

#[test]
fn dump_log_of_a_missing_file_is_a_clear_error() {
    let out = keel()
        .args(["dump-log", "/nonexistent/00000000000000000000.log"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("No such file"));
}
