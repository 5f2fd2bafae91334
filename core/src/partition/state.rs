//! The replica's own small persistent state: the newest leader epoch it accepted, and its high
//! watermark. Both live in the partition's side storage (where producer snapshots live too;
//! in node, the partition directory).
//!
//! Files:
//! - `replica.epoch`: `keel-replica-epoch 1 {leader epoch} {sole} {crc}\n`, written
//!   atomically ([`storage::write_atomic`]) and synchronously by a role change, before the role
//!   is in effect. Role changes are rare, so three syncs there cost nothing. `sole` is 1 when
//!   the partition's only replica is this broker: its high watermark is then its durable end,
//!   which recovery finds again, and is never written.
//! - `replica.hw.0` and `replica.hw.1`: `keel-hw 1 {sequence} {high watermark} {crc}\n`. The
//!   high watermark moves often, so it is written in place, to the slot `sequence % 2`, with
//!   one sync (truncate, append, sync), and read back as the valid slot with the larger
//!   sequence. A crash tears at most the slot being written; the other slot still holds the
//!   previous value. At most one slot write is in flight at a time
//!   ([`PartitionReplica::prepare_state_write`](super::PartitionReplica::prepare_state_write)
//!   hands out the next one only after the previous one completed).
//!
//! The CRC is CRC-32C of the text before it. A file that is missing, or fails its CRC or its
//! syntax, counts as absent: the epoch falls back to [`LeaderEpoch::NONE`] and the high
//! watermark to the log start offset, and [`StateReport`] says so. Only a disk fault can cause
//! that (every write is atomic or has a valid twin), and the replica is still safe: the leader
//! it follows has every committed batch, and the controller has the current epoch.

use crate::storage::{self, Storage, StorageError};
use crate::types::{LeaderEpoch, Offset};

/// Name of the leader epoch file.
pub const EPOCH_FILE: &str = "replica.epoch";
/// Names of the two high watermark slots.
pub const HW_FILES: [&str; 2] = ["replica.hw.0", "replica.hw.1"];

const EPOCH_MAGIC: &str = "keel-replica-epoch";
const HW_MAGIC: &str = "keel-hw";
const VERSION: &str = "1";

/// What was read back, and what was wrong with it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateReport {
    /// The epoch file was missing.
    pub epoch_missing: bool,
    /// The epoch file was present but damaged.
    pub epoch_corrupt: bool,
    /// How many high watermark slots were present but damaged (a torn write leaves one).
    pub hw_slots_corrupt: usize,
    /// The persisted high watermark was above the recovered log's durable end: the disk lost
    /// synced data (outside the fault model the replica is built for), so the high watermark
    /// was lowered to the log.
    pub hw_above_log: Option<Offset>,
    /// The damage mark ([`super::damage::MARK_FILE`]) was on disk: an earlier run found this
    /// replica damaged and it had not been repaired.
    pub damage_marked: bool,
    /// Recovery found the replica damaged and could not write the damage mark (it counts as
    /// damaged all the same, but a restart may not remember it).
    pub damage_mark_error: Option<StorageError>,
}

/// The replica state as read from storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PersistedState {
    pub leader_epoch: LeaderEpoch,
    /// The partition's only replica is this broker (see the module documentation).
    pub sole: bool,
    pub high_watermark: Option<Offset>,
    /// The sequence of the slot the high watermark came from (0 if none).
    pub hw_seq: u64,
    pub report: StateReport,
}

/// One write of the high watermark, handed to the shell by
/// [`PartitionReplica::prepare_state_write`](super::PartitionReplica::prepare_state_write)
/// and given back to
/// [`PartitionReplica::complete_state_write`](super::PartitionReplica::complete_state_write)
/// once [`StateWrite::write_to`] returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateWrite {
    /// Increases with every write; picks the slot.
    pub seq: u64,
    /// The high watermark to persist.
    pub high_watermark: Offset,
}

impl StateWrite {
    /// The slot file this write goes to.
    pub fn file(&self) -> &'static str {
        HW_FILES[(self.seq % 2) as usize]
    }

    /// Writes and syncs the slot (creating it the first time). Runs on the shell's I/O thread.
    pub fn write_to<T: Storage + ?Sized>(&self, storage: &mut T) -> Result<(), StorageError> {
        let file = self.file();
        match storage.create(file) {
            Ok(()) | Err(StorageError::AlreadyExists(_)) => {}
            Err(e) => return Err(e),
        }
        let body = format!("{HW_MAGIC} {VERSION} {} {}", self.seq, self.high_watermark);
        let text = format!("{body} {}\n", crc32c::crc32c(body.as_bytes()));
        storage.truncate(file, 0)?;
        storage.append(file, text.as_bytes())?;
        storage.sync(file)
    }
}

/// Writes the leader epoch file atomically and durably.
pub fn write_epoch<T: Storage + ?Sized>(
    storage: &mut T,
    epoch: LeaderEpoch,
    sole: bool,
) -> Result<(), StorageError> {
    let body = format!("{EPOCH_MAGIC} {VERSION} {epoch} {}", u8::from(sole));
    let text = format!("{body} {}\n", crc32c::crc32c(body.as_bytes()));
    storage::write_atomic(storage, EPOCH_FILE, text.as_bytes())
}

/// Reads the epoch file and both high watermark slots. Storage errors other than a missing
/// file are returned; damaged contents are reported, not returned as errors.
pub fn read<T: Storage + ?Sized>(storage: &T) -> Result<PersistedState, StorageError> {
    let mut report = StateReport::default();
    let (leader_epoch, sole) = match read_optional(storage, EPOCH_FILE)? {
        None => {
            report.epoch_missing = true;
            (LeaderEpoch::NONE, false)
        }
        Some(bytes) => match parse(&bytes, EPOCH_MAGIC, 2) {
            Some(fields) if (0..=1).contains(&fields[1]) => match i32::try_from(fields[0]) {
                Ok(epoch) if epoch >= 0 => (LeaderEpoch(epoch), fields[1] == 1),
                _ => {
                    report.epoch_corrupt = true;
                    (LeaderEpoch::NONE, false)
                }
            },
            _ => {
                report.epoch_corrupt = true;
                (LeaderEpoch::NONE, false)
            }
        },
    };
    let mut best: Option<(u64, Offset)> = None;
    for file in HW_FILES {
        let Some(bytes) = read_optional(storage, file)? else {
            continue;
        };
        match parse(&bytes, HW_MAGIC, 2) {
            Some(fields) if fields[0] >= 0 && fields[1] >= 0 => {
                let (seq, hw) = (fields[0] as u64, Offset(fields[1]));
                if best.is_none_or(|(s, _)| seq > s) {
                    best = Some((seq, hw));
                }
            }
            // An empty slot is one whose first write was torn before any byte landed.
            _ if bytes.is_empty() => {}
            _ => report.hw_slots_corrupt += 1,
        }
    }
    Ok(PersistedState {
        leader_epoch,
        sole,
        high_watermark: best.map(|(_, hw)| hw),
        hw_seq: best.map_or(0, |(seq, _)| seq),
        report,
    })
}

fn read_optional<T: Storage + ?Sized>(
    storage: &T,
    name: &str,
) -> Result<Option<bytes::Bytes>, StorageError> {
    match storage::read_all(storage, name) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(StorageError::NotFound(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Parses `{magic} 1 {n numbers} {crc}\n`; `None` if anything is off.
fn parse(bytes: &[u8], magic: &str, n: usize) -> Option<Vec<i64>> {
    let text = std::str::from_utf8(bytes).ok()?.strip_suffix('\n')?;
    let (body, crc) = text.rsplit_once(' ')?;
    if crc.parse::<u32>().ok()? != crc32c::crc32c(body.as_bytes()) {
        return None;
    }
    let mut parts = body.split(' ');
    if parts.next()? != magic || parts.next()? != VERSION {
        return None;
    }
    let fields: Vec<i64> = parts.map(|p| p.parse().ok()).collect::<Option<_>>()?;
    (fields.len() == n).then_some(fields)
}

#[cfg(test)]
mod tests {
    use rand::{rngs::StdRng, SeedableRng};

    use super::*;
    use crate::storage::MemStorage;

    #[test]
    fn epoch_and_high_watermark_round_trip() {
        let mut s = MemStorage::new();
        let empty = read(&s).unwrap();
        assert_eq!(empty.leader_epoch, LeaderEpoch::NONE);
        assert_eq!(empty.high_watermark, None);
        assert!(empty.report.epoch_missing);
        write_epoch(&mut s, LeaderEpoch(7), true).unwrap();
        for (seq, hw) in [(1, 10), (2, 20), (3, 30)] {
            StateWrite {
                seq,
                high_watermark: Offset(hw),
            }
            .write_to(&mut s)
            .unwrap();
        }
        let back = read(&s).unwrap();
        assert_eq!((back.leader_epoch, back.sole), (LeaderEpoch(7), true));
        assert_eq!((back.high_watermark, back.hw_seq), (Some(Offset(30)), 3));
        assert_eq!(back.report, StateReport::default());
    }

    /// A crash in the middle of a slot write leaves the other slot: the value before it.
    #[test]
    fn a_torn_slot_write_falls_back_to_the_previous_value() {
        let mut fell_back = false;
        for seed in 0..100 {
            let mut s = MemStorage::new();
            for seq in 1..=4 {
                StateWrite {
                    seq,
                    high_watermark: Offset(seq as i64 * 10),
                }
                .write_to(&mut s)
                .unwrap();
            }
            // The write of seq 5 reaches the file but not its sync.
            let file = HW_FILES[1];
            s.truncate(file, 0).unwrap();
            s.append(file, b"keel-hw 1 5 50 123\n").unwrap();
            s.crash(&mut StdRng::seed_from_u64(seed));
            let back = read(&s).unwrap();
            assert!(
                back.high_watermark == Some(Offset(40)),
                "seed {seed}: {back:?}"
            );
            fell_back |= back.report.hw_slots_corrupt == 1;
        }
        assert!(fell_back, "some crash left a torn slot");
    }

    #[test]
    fn damaged_files_are_reported_not_trusted() {
        let mut s = MemStorage::new();
        write_epoch(&mut s, LeaderEpoch(3), false).unwrap();
        StateWrite {
            seq: 1,
            high_watermark: Offset(5),
        }
        .write_to(&mut s)
        .unwrap();
        s.flip_bit(EPOCH_FILE, 20, 0).unwrap();
        s.flip_bit(HW_FILES[1], 10, 1).unwrap();
        let back = read(&s).unwrap();
        assert_eq!(back.leader_epoch, LeaderEpoch::NONE);
        assert_eq!(back.high_watermark, None);
        assert!(back.report.epoch_corrupt);
        assert_eq!(back.report.hw_slots_corrupt, 1);
    }
}
