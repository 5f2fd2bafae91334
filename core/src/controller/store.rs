//! The single-node persistence of the metadata records: one append-only file of frames, one
//! frame per command, replayed on open. (With the raft quorum, the raft log takes its place and
//! the records stay the same.)
//!
//! Frame layout, big-endian:
//!
//! ```text
//! offset  size  field
//!      0     4  payload length (1 to FRAME_PAYLOAD_BYTES_MAX)
//!      4     4  CRC-32C of the payload
//!      8     …  payload: a prost-encoded MetadataBatch (one command's records, at least one)
//! ```
//!
//! Invariants:
//! 1. A command's records are visible (applied) only after the frame holding them was appended
//!    and synced ([`MetadataStore::commit`]): what a client was told survives any crash.
//! 2. A frame applies whole or not at all: on open, the first frame that is short, has a bad
//!    length, a bad CRC, does not decode or holds no record ends the log; it and everything
//!    after it are truncated away (durably, before open returns) and reported. A torn write
//!    from a crash is always at the tail; a bad frame in the middle (bit rot) loses the frames
//!    after it too, and the report says so.
//! 3. The file holds exactly the frames of the committed commands: a failed append is cut off
//!    again before the next one; if that is impossible (or a sync failed, after which the
//!    file's durable contents are unknown) the store refuses every further append
//!    ([`StoreError::Poisoned`]) until it is reopened.

use crate::frame;
use prost::Message;

use super::records::{MetadataBatch, MetadataRecord};
use super::{ApplyError, MetadataState};
use crate::storage::{Storage, StorageError};

/// The name of the metadata log file in the store's storage.
pub const METADATA_LOG_FILE: &str = "metadata.log";
/// Bytes before a frame's payload: length and CRC.
pub const FRAME_HEADER_BYTES: usize = frame::HEADER_BYTES;
/// The largest payload of one frame. A command of [`super::RECORDS_PER_COMMAND_MAX`] partition
/// records is far below it.
pub const FRAME_PAYLOAD_BYTES_MAX: usize = 64 << 20;

/// Why the store failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The storage failed.
    #[error("metadata storage: {0}")]
    Storage(#[from] StorageError),
    /// A command's records encode to more than [`FRAME_PAYLOAD_BYTES_MAX`] bytes.
    #[error("a command of {0} bytes exceeds the frame limit")]
    FrameTooLarge(usize),
    /// An earlier append could not be undone or a sync failed: reopen the store.
    #[error("an earlier write or sync failed: the metadata log must be reopened")]
    Poisoned,
}

/// The damaged tail that [`MetadataStore::open`] cut off.
pub use crate::frame::TruncatedTail;

/// What [`MetadataStore::open`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// Frames replayed.
    pub frames: u64,
    /// Records replayed (applied or rejected).
    pub records: u64,
    /// Records that `apply` rejected during the replay (the same ones it rejected when they
    /// were first applied), by frame number.
    pub rejected: Vec<(u64, ApplyError)>,
    /// The damaged tail cut off, if any.
    pub truncated: Option<TruncatedTail>,
}

/// The metadata log of a single-node controller, over a [`Storage`].
///
/// Use: [`open`](Self::open) (replays into a fresh [`MetadataState`]), then for each command
/// that returned records, [`commit`](Self::commit) them.
pub struct MetadataStore<S: Storage> {
    storage: S,
    /// The file length covered by committed frames.
    end_bytes: u64,
    frames: u64,
    poisoned: bool,
}

impl<S: Storage> MetadataStore<S> {
    /// Opens (or creates) the metadata log in `storage` and replays it into a new state.
    /// A damaged tail is truncated durably and reported, never a panic.
    pub fn open(mut storage: S) -> Result<(Self, MetadataState, OpenReport), StoreError> {
        let mut state = MetadataState::new();
        let mut report = OpenReport::default();
        let (end_bytes, truncated) = frame::replay_file::<_, StoreError>(
            &mut storage,
            METADATA_LOG_FILE,
            FRAME_PAYLOAD_BYTES_MAX,
            |payload| {
                let batch = match decode_batch(payload) {
                    Ok(batch) => batch,
                    Err(reason) => return Ok(Err(reason)),
                };
                for record in &batch.records {
                    if let Err(e) = state.apply(record) {
                        report.rejected.push((report.frames, e));
                    }
                    report.records += 1;
                }
                report.frames += 1;
                Ok(Ok(()))
            },
        )?;
        report.truncated = truncated;
        let store = MetadataStore {
            storage,
            end_bytes,
            frames: report.frames,
            poisoned: false,
        };
        Ok((store, state, report))
    }

    /// Appends one command's records as one frame and syncs it. When this returns `Ok`, the
    /// records survive any crash; when it returns `Err`, they were not committed (after a sync
    /// failure they may still appear on the next open, like any write whose outcome is
    /// unknown). An empty command writes nothing.
    pub fn append(&mut self, records: &[MetadataRecord]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        if self.poisoned {
            return Err(StoreError::Poisoned);
        }
        let payload = MetadataBatch {
            records: records.to_vec(),
        }
        .encode_to_vec();
        if payload.len() > FRAME_PAYLOAD_BYTES_MAX {
            return Err(StoreError::FrameTooLarge(payload.len()));
        }
        let frame = frame::encode(&payload);
        // Check before writing what open checks after reading.
        debug_assert_eq!(
            decode_frame(&frame).map(|(b, n)| (b.records, n)),
            Ok((records.to_vec(), frame.len()))
        );
        if let Err(e) = self.storage.append(METADATA_LOG_FILE, &frame) {
            // Cut off whatever part of the frame got written, so the next frame follows the
            // last committed one.
            let rollback = self
                .storage
                .truncate(METADATA_LOG_FILE, self.end_bytes)
                .and_then(|()| self.storage.sync(METADATA_LOG_FILE));
            self.poisoned = rollback.is_err();
            return Err(e.into());
        }
        if let Err(e) = self.storage.sync(METADATA_LOG_FILE) {
            self.poisoned = true;
            return Err(e.into());
        }
        self.end_bytes += frame.len() as u64;
        self.frames += 1;
        Ok(())
    }

    /// Appends (durably) then applies one command's records to `state`: the state changes only
    /// once the records are durable. The records must come from a command run on `state`, with
    /// no other change to `state` in between.
    ///
    /// # Panics
    /// If `state` rejects a record that a command produced from it: commands and `apply` must
    /// agree.
    pub fn commit(
        &mut self,
        state: &mut MetadataState,
        records: &[MetadataRecord],
    ) -> Result<(), StoreError> {
        self.append(records)?;
        for record in records {
            let applied = state.apply(record);
            assert!(
                applied.is_ok(),
                "records a command produced apply to the state it ran on: {applied:?} for {record:?}"
            );
        }
        Ok(())
    }

    /// The number of committed frames (commands) in the log.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// The length of the log file in bytes.
    pub fn len_bytes(&self) -> u64 {
        self.end_bytes
    }

    /// The storage, for inspection.
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// Gives the storage back (to crash it and reopen, in tests).
    pub fn into_storage(self) -> S {
        self.storage
    }
}

/// Decodes the frame at the start of `buf`: its batch and its size, or why it is not a frame.
fn decode_frame(buf: &[u8]) -> Result<(MetadataBatch, usize), String> {
    let (payload, size) = frame::decode(buf, FRAME_PAYLOAD_BYTES_MAX)?;
    Ok((decode_batch(payload)?, size))
}

/// Decodes a frame's payload: a batch of at least one record.
fn decode_batch(payload: &[u8]) -> Result<MetadataBatch, String> {
    let batch = MetadataBatch::decode(payload).map_err(|e| format!("undecodable: {e}"))?;
    if batch.records.is_empty() {
        return Err("a frame with no records".into());
    }
    Ok(batch)
}
