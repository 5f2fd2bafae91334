//! Damaged replicas: the rules that keep a replica which may lack committed data from leading,
//! and bring it back once it has fetched that data again (docs/replication.md, "damaged
//! replicas").
//!
//! A replica is *damaged* when recovery found its log below its persisted high watermark (the
//! disk lost synced data), its epoch file damaged, the damage mark on disk (damage an earlier
//! run found, which this open may not see again), when the shell reports that it failed to open
//! before, or when a read meets a damaged batch at runtime ([`Damage::read_failed`]). A torn
//! tail alone is not damage: it held only unsynced data.
//!
//! What always holds, and where [`PartitionReplica`](super::PartitionReplica) keeps it:
//! - a damaged replica does not take the leader role (`become_leader` refuses with
//!   [`RoleError::Damaged`](super::RoleError::Damaged)), and a damaged leader (damage found at
//!   runtime) shrinks no ISR: its followers lag because it cannot serve them, and its broker is
//!   stepping it down; it looks again every [`DAMAGED_LEADER_RECHECK_MS`];
//! - a replica with runtime damage discards its log from the first damaged batch only as a
//!   follower with a leader to fetch it back from: without one, this copy, damaged or not, may
//!   be the only one of what lies around the damage;
//! - a damaged replica is repaired once it has no discard pending and its log reaches the first
//!   high watermark it heard from a leader (or, when recovery lowered its high watermark, the
//!   high watermark it had persisted); only then, and only once the mark is removed from disk,
//!   does it count as sound;
//! - while damaged, the mark [`MARK_FILE`] is on disk (written when the damage is found), so
//!   that a restart remembers it.
//!
//! Whether a damaged replica keeps its whole broker fenced is the broker's decision (it needs
//! the assignment from the metadata): see node's `Broker::damaged_replicas`.

use crate::storage::{self, Storage, StorageError};
use crate::types::Offset;

/// The file, in the partition's side storage, that marks its replica damaged until it is
/// repaired.
pub const MARK_FILE: &str = "replica.damaged";
const MARK_TEXT: &[u8] = b"damaged\n";

/// How long a damaged leader's due ISR shrink waits before it is looked at again.
pub const DAMAGED_LEADER_RECHECK_MS: i64 = 100;

/// Writes the damage mark, atomically and durably. For the shell only where no replica could
/// be opened; otherwise the replica writes it.
pub fn write_mark<T: Storage + ?Sized>(storage: &mut T) -> Result<(), StorageError> {
    storage::write_atomic(storage, MARK_FILE, MARK_TEXT)
}

/// Whether the damage mark is on disk. A mark that cannot be read counts as absent.
pub fn is_marked<T: Storage + ?Sized>(storage: &T) -> bool {
    storage::read_all(storage, MARK_FILE).is_ok()
}

/// Removes the damage mark, durably; a mark already gone is fine.
fn remove_mark<T: Storage + ?Sized>(storage: &mut T) -> Result<(), StorageError> {
    match storage.remove(MARK_FILE) {
        Ok(()) | Err(StorageError::NotFound(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether the replica may lack committed data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DamageState {
    #[default]
    Sound,
    /// May lack committed data. `repaired_at`: repaired once the log reaches it; `None` until
    /// the replica hears a leader's high watermark.
    Damaged { repaired_at: Option<Offset> },
}

/// A replica's damage and what it still has to do about it. Pure: the replica that owns it
/// does the file work.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Damage {
    state: DamageState,
    /// A read found a damaged batch: the log is to be discarded from the first damaged batch.
    discard_pending: bool,
    /// A damaged leader's shrink deadline is not looked at before this (ms).
    recheck_at_ms: i64,
}

impl Damage {
    /// What recovery found: damaged if the mark was on disk, the epoch file damaged, or the log
    /// below the persisted high watermark `hw_above_log` (which the log must reach again).
    pub fn recovered(marked: bool, epoch_corrupt: bool, hw_above_log: Option<Offset>) -> Damage {
        let damaged = marked || epoch_corrupt || hw_above_log.is_some();
        Damage {
            state: if damaged {
                DamageState::Damaged {
                    repaired_at: hw_above_log,
                }
            } else {
                DamageState::Sound
            },
            ..Damage::default()
        }
    }

    pub fn state(&self) -> DamageState {
        self.state
    }

    pub fn is_damaged(&self) -> bool {
        self.state != DamageState::Sound
    }

    pub fn discard_pending(&self) -> bool {
        self.discard_pending
    }

    /// Counts the replica damaged (unless it already is). Returns whether it was sound.
    pub fn mark(&mut self) -> bool {
        let was_sound = self.state == DamageState::Sound;
        if was_sound {
            self.state = DamageState::Damaged { repaired_at: None };
        }
        was_sound
    }

    /// A read met a damaged batch: damaged, and the log is to be discarded from there. Returns
    /// whether it was sound.
    pub fn read_failed(&mut self) -> bool {
        self.discard_pending = true;
        self.mark()
    }

    /// The discard is done (or found nothing damaged any more).
    pub fn discarded(&mut self) {
        self.discard_pending = false;
    }

    /// A leader's high watermark, heard as a follower: the first one is where a damaged replica
    /// whose target is not known yet is repaired.
    pub fn heard_leader_hw(&mut self, hw: Offset) {
        if let DamageState::Damaged { repaired_at: None } = self.state {
            self.state = DamageState::Damaged {
                repaired_at: Some(hw),
            };
        }
    }

    /// Whether the repair rule holds for a log ending at `log_end`: damaged, no discard
    /// pending (a log end past the target proves nothing while the damaged batches are still
    /// in it), and the log reached the target.
    pub fn repair_due(&self, log_end: Offset) -> bool {
        match self.state {
            DamageState::Damaged {
                repaired_at: Some(target),
            } => !self.discard_pending && log_end >= target,
            _ => false,
        }
    }

    /// Removes the mark if the repair rule holds, and only then counts the replica sound.
    /// Returns whether it was repaired now; on an error it stays damaged (a later call tries
    /// again).
    pub fn repair_if_due<T: Storage + ?Sized>(
        &mut self,
        log_end: Offset,
        storage: &mut T,
    ) -> Result<bool, StorageError> {
        if !self.repair_due(log_end) {
            return Ok(false);
        }
        remove_mark(storage)?;
        self.state = DamageState::Sound;
        Ok(true)
    }

    /// A damaged leader's shrink deadline came due at `now_ms`: not before the recheck.
    pub fn defer_leader_timeout(&mut self, now_ms: i64) {
        self.recheck_at_ms = now_ms.saturating_add(DAMAGED_LEADER_RECHECK_MS);
    }

    /// A damaged leader's deadline, given the shrink deadline `at`.
    pub fn leader_deadline(&self, at: i64) -> i64 {
        at.max(self.recheck_at_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemStorage;

    #[test]
    fn recovery_finds_damage_in_the_mark_the_epoch_file_or_lost_synced_data() {
        assert!(!Damage::recovered(false, false, None).is_damaged());
        for (marked, epoch_corrupt) in [(true, false), (false, true)] {
            assert_eq!(
                Damage::recovered(marked, epoch_corrupt, None).state(),
                DamageState::Damaged { repaired_at: None }
            );
        }
        assert_eq!(
            Damage::recovered(false, false, Some(Offset(9))).state(),
            DamageState::Damaged {
                repaired_at: Some(Offset(9))
            },
            "the high watermark it had persisted is what it must fetch back"
        );
    }

    #[test]
    fn the_first_leader_high_watermark_heard_is_the_target() {
        let mut d = Damage::recovered(true, false, None);
        assert!(!d.repair_due(Offset(1_000)), "no target yet");
        d.heard_leader_hw(Offset(5));
        d.heard_leader_hw(Offset(8));
        assert_eq!(
            d.state(),
            DamageState::Damaged {
                repaired_at: Some(Offset(5))
            }
        );
        assert!(!d.repair_due(Offset(4)));
        assert!(d.repair_due(Offset(5)));
    }

    #[test]
    fn no_repair_while_a_discard_is_pending() {
        let mut d = Damage::recovered(false, false, Some(Offset(3)));
        assert!(!d.read_failed(), "already damaged");
        assert!(!d.repair_due(Offset(10)));
        d.discarded();
        assert!(d.repair_due(Offset(10)));
    }

    #[test]
    fn repair_removes_the_mark_first() {
        let mut storage = MemStorage::new();
        let mut d = Damage::default();
        assert!(d.read_failed(), "was sound");
        write_mark(&mut storage).unwrap();
        d.discarded();
        d.heard_leader_hw(Offset(2));
        assert!(!d.repair_if_due(Offset(1), &mut storage).unwrap());
        assert!(is_marked(&storage));
        assert!(d.repair_if_due(Offset(2), &mut storage).unwrap());
        assert!(!is_marked(&storage));
        assert!(!d.is_damaged());
        // A mark that is already gone (its write failed) is no obstacle.
        let mut d = Damage::recovered(false, false, Some(Offset(0)));
        assert!(d.repair_if_due(Offset(0), &mut storage).unwrap());
    }

    #[test]
    fn a_damaged_leader_looks_again_after_the_recheck_interval() {
        let mut d = Damage::default();
        d.mark();
        assert_eq!(d.leader_deadline(50), 50);
        d.defer_leader_timeout(50);
        assert_eq!(d.leader_deadline(50), 50 + DAMAGED_LEADER_RECHECK_MS);
        assert_eq!(d.leader_deadline(1_000), 1_000);
    }
}
