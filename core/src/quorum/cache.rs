//! The in-memory image of the durable raft state that raft-rs reads through its `Storage`
//! trait. It holds exactly what [`super::disk::RaftDisk`] has made durable: the quorum node
//! changes it only after the matching write returned (so raft never reads back an entry that a
//! crash could take away).

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

/// The durable raft state, in memory.
pub(crate) struct LogCache {
    pub hard_state: HardState,
    pub conf_state: ConfState,
    /// The latest snapshot, with its data (index 0: none yet).
    pub snapshot: Snapshot,
    /// The entries after the snapshot, contiguous from `snapshot index + 1`.
    pub entries: Vec<Entry>,
}

impl LogCache {
    /// The index of the latest snapshot (0 if none).
    pub fn snapshot_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    fn first(&self) -> u64 {
        self.snapshot_index() + 1
    }

    fn last(&self) -> u64 {
        self.entries
            .last()
            .map_or(self.snapshot_index(), |e| e.index)
    }

    /// Appends entries raft handed out in a Ready, replacing any suffix they overwrite.
    ///
    /// # Panics
    /// If they would leave a gap or rewrite the snapshot: raft-rs never hands out such entries.
    pub fn append(&mut self, entries: &[Entry]) {
        let Some(head) = entries.first() else {
            return;
        };
        assert!(
            head.index >= self.first() && head.index <= self.last() + 1,
            "raft appends entries {}.. contiguous after the snapshot (log {}..={})",
            head.index,
            self.first(),
            self.last()
        );
        self.entries.truncate((head.index - self.first()) as usize);
        self.entries.extend_from_slice(entries);
    }

    /// Replaces the log with `snapshot` (received from the leader): every entry goes, as in
    /// raft-rs's own MemStorage.
    pub fn install(&mut self, snapshot: Snapshot) {
        let meta = snapshot.get_metadata();
        self.hard_state.term = self.hard_state.term.max(meta.term);
        self.hard_state.commit = self.hard_state.commit.max(meta.index);
        self.conf_state = meta.get_conf_state().clone();
        self.entries.clear();
        self.snapshot = snapshot;
    }

    /// Replaces the snapshot with a newer local one and drops the entries it covers.
    pub fn compact(&mut self, snapshot: Snapshot) {
        let index = snapshot.get_metadata().index;
        assert!(
            index >= self.snapshot_index() && index <= self.last(),
            "a local snapshot at {index} lies within the log {}..={}",
            self.first(),
            self.last()
        );
        let drop = (index - self.snapshot_index()) as usize;
        self.entries.drain(..drop);
        self.snapshot = snapshot;
    }

    /// The entries after the snapshot.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }
}

impl raft::Storage for LogCache {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 || low > high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let from = (low - self.first()) as usize;
        let to = (high - self.first()) as usize;
        let mut entries = self.entries[from..to].to_vec();
        raft::util::limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.snapshot_index() {
            return Ok(self.snapshot.get_metadata().term);
        }
        if idx < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(self.entries[(idx - self.first()) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, _request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if self.snapshot_index() == 0 {
            // Nothing was compacted, so no peer needs a snapshot; raft retries later.
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(self.snapshot.clone())
    }
}
