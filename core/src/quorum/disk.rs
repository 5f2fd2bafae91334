//! The quorum's durable state in one file of keel's [`Storage`]: raft log entries, the raft
//! HardState (term, vote, commit) and the latest snapshot, as CRC-framed records.
//!
//! Frame layout, big-endian (the same framing as the single-node metadata store):
//!
//! ```text
//! offset  size  field
//!      0     4  payload length (1 to FRAME_PAYLOAD_BYTES_MAX)
//!      4     4  CRC-32C of the payload
//!      8     …  payload: a prost-encoded LogFrame
//! ```
//!
//! A `LogFrame` holds, each optional: a snapshot (raft's `Snapshot`, metadata and data), a run
//! of raft entries, and the HardState, each in raft-rs's protobuf encoding. Replay applies a
//! frame's parts in that order: a snapshot replaces everything before it (the log restarts
//! after its index); an entry at index `i` replaces the entry at `i` and every entry after it
//! (a follower overwriting a diverged suffix: the file is append-only, the overwrite is
//! logical); the last HardState wins.
//!
//! Invariants:
//! 1. One Ready of raft-rs is one frame, appended and then synced ([`RaftDisk::append`]): its
//!    entries and its HardState become durable together or not at all, and nothing that
//!    depends on them (messages, `on_persist_ready`) happens before the sync returns.
//! 2. A crash leaves a prefix of the frames plus a torn tail: open cuts the tail at the first
//!    frame that is short, out of range, fails its CRC or does not decode, durably, and
//!    reports it. Every frame whose sync returned survives.
//! 3. Compaction and installing a snapshot rewrite the file whole ([`RaftDisk::rewrite`]:
//!    snapshot, entries after it, HardState, in one frame) through
//!    [`storage::write_atomic`]: a crash leaves either the old file or the new one.
//! 4. Replayed entries are contiguous after the snapshot. A frame whose first entry would
//!    leave a gap passed its CRC but lies where it was not written (a misdirected write put
//!    a later frame over earlier ones): open cuts the log there, as at a damaged frame, and
//!    reports the refused frame as a whole frame in the cut (damage, not a torn write: a
//!    voter abstains). Refusing to open instead kept such a broker down for good.

use crate::frame;
use prost::Message as _;
use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState, Snapshot};

use crate::storage::{self, Storage, StorageError};

/// The name of the quorum's log file.
pub const RAFT_LOG_FILE: &str = "raft.log";
/// Bytes before a frame's payload: length and CRC.
pub const FRAME_HEADER_BYTES: usize = frame::HEADER_BYTES;
/// The largest payload of one frame: bounds a snapshot plus the entries after it.
pub const FRAME_PAYLOAD_BYTES_MAX: usize = 64 << 20;

/// Why the quorum's storage failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DiskError {
    /// The storage failed.
    #[error("quorum storage: {0}")]
    Storage(#[from] StorageError),
    /// A frame would exceed [`FRAME_PAYLOAD_BYTES_MAX`].
    #[error("a quorum log frame of {0} bytes exceeds the limit")]
    FrameTooLarge(usize),
    /// A frame passed its CRC but breaks the log's rules (a gap in the entries).
    #[error("quorum log corrupt: {0}")]
    Corrupt(String),
    /// An earlier write or sync failed: the file's durable contents are unknown until reopened.
    #[error("an earlier write or sync failed: the quorum must be reopened")]
    Poisoned,
}

/// The damaged tail that open cut off.
pub use crate::frame::TruncatedTail;

/// What open found on disk.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskReport {
    /// Frames replayed.
    pub frames: u64,
    /// The damaged tail cut off, if any.
    pub truncated: Option<TruncatedTail>,
}

/// The durable raft state, as replayed.
#[derive(Clone, Debug, Default)]
pub(crate) struct Recovered {
    /// The latest snapshot (index 0 if none).
    pub snapshot: Snapshot,
    /// The entries after the snapshot, contiguous.
    pub entries: Vec<Entry>,
    /// The latest HardState.
    pub hard_state: HardState,
}

#[derive(Clone, PartialEq, prost::Message)]
struct LogFrame {
    /// A protobuf `eraftpb.Snapshot`.
    #[prost(bytes = "vec", optional, tag = "1")]
    snapshot: Option<Vec<u8>>,
    /// Protobuf `eraftpb.Entry`s, by increasing index.
    #[prost(bytes = "vec", repeated, tag = "2")]
    entries: Vec<Vec<u8>>,
    /// A protobuf `eraftpb.HardState`.
    #[prost(bytes = "vec", optional, tag = "3")]
    hard_state: Option<Vec<u8>>,
}

/// The quorum's log file over a [`Storage`].
pub(crate) struct RaftDisk<S: Storage> {
    storage: S,
    /// The file length covered by whole frames.
    end_bytes: u64,
    poisoned: bool,
}

impl<S: Storage> RaftDisk<S> {
    /// Opens (or creates) the log file and replays it. A damaged tail is cut durably.
    pub fn open(mut storage: S) -> Result<(Self, Recovered, DiskReport), DiskError> {
        let mut recovered = Recovered::default();
        let mut report = DiskReport::default();
        let (end_bytes, truncated) = frame::replay_file::<_, DiskError>(
            &mut storage,
            RAFT_LOG_FILE,
            FRAME_PAYLOAD_BYTES_MAX,
            |payload| {
                let frame = match decode_log_frame(payload) {
                    Ok(frame) => frame,
                    Err(reason) => return Ok(Err(reason)),
                };
                if let Err(reason) = replay(&mut recovered, frame)? {
                    return Ok(Err(reason));
                }
                report.frames += 1;
                Ok(Ok(()))
            },
        )?;
        report.truncated = truncated;
        let disk = RaftDisk {
            storage,
            end_bytes,
            poisoned: false,
        };
        Ok((disk, recovered, report))
    }

    /// Appends one frame of `entries` and `hard_state`, then syncs if `sync` (always when there
    /// are entries). When this returns `Ok` with a sync, the frame survives any crash.
    pub fn append(
        &mut self,
        entries: &[Entry],
        hard_state: &HardState,
        sync: bool,
    ) -> Result<(), DiskError> {
        if self.poisoned {
            return Err(DiskError::Poisoned);
        }
        let frame = encode_frame(None, entries, hard_state)?;
        if let Err(e) = self.storage.append(RAFT_LOG_FILE, &frame) {
            // Cut off whatever part of the frame got written, so the next frame follows the
            // last whole one.
            let rollback = self
                .storage
                .truncate(RAFT_LOG_FILE, self.end_bytes)
                .and_then(|()| self.storage.sync(RAFT_LOG_FILE));
            self.poisoned = rollback.is_err();
            return Err(e.into());
        }
        self.end_bytes += frame.len() as u64;
        if sync || !entries.is_empty() {
            if let Err(e) = self.storage.sync(RAFT_LOG_FILE) {
                self.poisoned = true;
                return Err(e.into());
            }
        }
        Ok(())
    }

    /// Replaces the whole file, atomically and durably, with one frame: `snapshot`, the
    /// `entries` after it and `hard_state`.
    pub fn rewrite(
        &mut self,
        snapshot: &Snapshot,
        entries: &[Entry],
        hard_state: &HardState,
    ) -> Result<(), DiskError> {
        if self.poisoned {
            return Err(DiskError::Poisoned);
        }
        let frame = encode_frame(Some(snapshot), entries, hard_state)?;
        if let Err(e) = storage::write_atomic(&mut self.storage, RAFT_LOG_FILE, &frame) {
            // The rename may or may not have happened: only a reopen knows which file holds.
            self.poisoned = true;
            return Err(e.into());
        }
        self.end_bytes = frame.len() as u64;
        Ok(())
    }

    /// The length of the log file.
    pub fn len_bytes(&self) -> u64 {
        self.end_bytes
    }

    /// The storage, for inspection.
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// The storage, to inject faults in tests.
    #[cfg(test)]
    pub fn storage_mut(&mut self) -> &mut S {
        &mut self.storage
    }

    /// Gives the storage back.
    pub fn into_storage(self) -> S {
        self.storage
    }
}

fn encode_frame(
    snapshot: Option<&Snapshot>,
    entries: &[Entry],
    hard_state: &HardState,
) -> Result<Vec<u8>, DiskError> {
    // Local invariant: eraftpb is proto3, its encoder refuses nothing.
    let pb = |m: &dyn protobuf::Message| {
        m.write_to_bytes()
            .expect("eraftpb messages are proto3: encoding cannot fail")
    };
    let payload = LogFrame {
        snapshot: snapshot.map(|s| pb(s)),
        entries: entries.iter().map(|e| pb(e)).collect(),
        hard_state: Some(pb(hard_state)),
    }
    .encode_to_vec();
    if payload.len() > FRAME_PAYLOAD_BYTES_MAX {
        return Err(DiskError::FrameTooLarge(payload.len()));
    }
    let frame = frame::encode(&payload);
    // Check before writing what open checks after reading.
    debug_assert!(decode_frame(&frame).is_ok_and(|(_, n)| n == frame.len()));
    Ok(frame)
}

/// The frame at the start of `buf` and its size, or why it is not one.
fn decode_frame(buf: &[u8]) -> Result<(LogFrame, usize), String> {
    let (payload, size) = frame::decode(buf, FRAME_PAYLOAD_BYTES_MAX)?;
    Ok((decode_log_frame(payload)?, size))
}

/// Decodes a frame's payload.
fn decode_log_frame(payload: &[u8]) -> Result<LogFrame, String> {
    LogFrame::decode(payload).map_err(|e| format!("undecodable: {e}"))
}

/// Applies one CRC-checked frame to the replayed state (see the module documentation), or
/// refuses it (`Ok(Err(reason))`, nothing applied) when its first entry would leave a gap
/// after the log replayed so far: such a frame was written somewhere else than where it
/// lies (a misdirected write put a later frame over earlier ones), so it ends the log as a
/// damaged frame does, and open cuts it off (invariant 4).
fn replay(recovered: &mut Recovered, frame: LogFrame) -> Result<Result<(), String>, DiskError> {
    let corrupt = |what: String| DiskError::Corrupt(what);
    let snapshot = match frame.snapshot {
        Some(bytes) => Some(
            Snapshot::parse_from_bytes(&bytes)
                .map_err(|e| corrupt(format!("snapshot does not decode: {e}")))?,
        ),
        None => None,
    };
    let entries = frame
        .entries
        .iter()
        .map(|bytes| {
            Entry::parse_from_bytes(bytes)
                .map_err(|e| corrupt(format!("entry does not decode: {e}")))
        })
        .collect::<Result<Vec<Entry>, DiskError>>()?;
    let (first, held) = match &snapshot {
        Some(s) => (s.get_metadata().index + 1, 0),
        None => (
            recovered.snapshot.get_metadata().index + 1,
            recovered.entries.len() as u64,
        ),
    };
    if let Some(entry) = entries.iter().find(|e| e.index >= first) {
        if entry.index - first > held {
            return Ok(Err(format!(
                "entry {} leaves a gap after {}",
                entry.index,
                first + held - 1
            )));
        }
    }
    if let Some(snapshot) = snapshot {
        recovered.snapshot = snapshot;
        recovered.entries.clear();
    }
    for entry in entries {
        let first = recovered.snapshot.get_metadata().index + 1;
        if entry.index < first {
            // Covered by the snapshot.
            continue;
        }
        let keep = (entry.index - first) as usize;
        if keep > recovered.entries.len() {
            return Err(corrupt(format!(
                "entry {} leaves a gap after {}",
                entry.index,
                first + recovered.entries.len() as u64 - 1
            )));
        }
        recovered.entries.truncate(keep);
        recovered.entries.push(entry);
    }
    if let Some(bytes) = frame.hard_state {
        recovered.hard_state = HardState::parse_from_bytes(&bytes)
            .map_err(|e| corrupt(format!("hard state does not decode: {e}")))?;
    }
    Ok(Ok(()))
}
