//! The file interface the log writes through, and [`MemStorage`], an in-memory implementation
//! that models what a crash does to a real disk.
//!
//! A [`Storage`] is one directory of named files. It is synchronous: the log calls it directly
//! and the caller decides when to [`Storage::sync`] (group commit).
//!
//! Durability contract, which every implementation keeps and the log relies on:
//! - `append` and `truncate` are durable only after `sync` of that file returns.
//! - `create`, `rename` and `remove` are durable when they return (implementations sync the
//!   directory). `rename` atomically replaces the target.
//! - After a crash, a file holds its synced contents, possibly followed by a prefix of what was
//!   written after the last sync (a torn write), possibly followed by zeros (space allocated,
//!   data never written). A truncation that was not synced may be undone.

use std::collections::BTreeMap;

use bytes::Bytes;
use rand::Rng;

/// Why a storage operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    #[error("file {0} not found")]
    NotFound(String),
    #[error("file {0} already exists")]
    AlreadyExists(String),
    #[error("no space left on device")]
    NoSpace,
    #[error("I/O error on {file}: {message}")]
    Io { file: String, message: String },
}

/// A directory of files, as the log needs it.
pub trait Storage {
    /// Creates an empty file, durably. Fails if it exists.
    fn create(&mut self, name: &str) -> Result<(), StorageError>;
    /// Creates an empty file whose name becomes durable no later than the first
    /// [`Storage::sync`] of it returns (a directory sync deferred to that sync, off the
    /// caller's path). Fails if it exists. This default creates it durably at once.
    fn create_deferred(&mut self, name: &str) -> Result<(), StorageError> {
        self.create(name)
    }
    /// Appends `data` at the end of the file. Not durable until [`Storage::sync`].
    fn append(&mut self, name: &str, data: &[u8]) -> Result<(), StorageError>;
    /// Appends `parts` one after another, as one append: what a crash or a failed append
    /// leaves of it is what it would leave of `append` with their concatenation. This default
    /// concatenates them; a file system writes them with one vectored write.
    fn append_parts(&mut self, name: &str, parts: &[&[u8]]) -> Result<(), StorageError> {
        self.append(name, &parts.concat())
    }
    /// Reads up to `len` bytes at `pos`; fewer only at the end of the file.
    fn read_at(&self, name: &str, pos: u64, len: usize) -> Result<Bytes, StorageError>;
    /// The file's current length (including unsynced appends).
    fn len(&self, name: &str) -> Result<u64, StorageError>;
    /// Cuts the file to `len` bytes. Not durable until [`Storage::sync`].
    fn truncate(&mut self, name: &str, len: u64) -> Result<(), StorageError>;
    /// Makes every append and truncate of the file so far durable.
    fn sync(&mut self, name: &str) -> Result<(), StorageError>;
    /// Atomically and durably renames `from` to `to`, replacing `to`.
    fn rename(&mut self, from: &str, to: &str) -> Result<(), StorageError>;
    /// Durably removes the file.
    fn remove(&mut self, name: &str) -> Result<(), StorageError>;
    /// The names of all files, sorted.
    fn list(&self) -> Result<Vec<String>, StorageError>;
}

/// Writes a small file atomically and durably: a temporary file, synced, renamed over `name`.
pub fn write_atomic<S: Storage + ?Sized>(
    storage: &mut S,
    name: &str,
    data: &[u8],
) -> Result<(), StorageError> {
    let tmp = format!("{name}.tmp");
    match storage.remove(&tmp) {
        Ok(()) | Err(StorageError::NotFound(_)) => {}
        Err(e) => return Err(e),
    }
    storage.create(&tmp)?;
    storage.append(&tmp, data)?;
    storage.sync(&tmp)?;
    storage.rename(&tmp, name)
}

/// Reads a whole file.
pub fn read_all<S: Storage + ?Sized>(storage: &S, name: &str) -> Result<Bytes, StorageError> {
    let len = storage.len(name)?;
    storage.read_at(name, 0, len as usize)
}

/// One file as a crash model sees it: what reads see, what is synced, and where unsynced
/// changes begin. Shared by [`MemStorage`] and the simulator's disk, which differ only in
/// what a crash (and a fault) does with the unsynced part.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelFile {
    /// What reads see.
    pub current: Vec<u8>,
    /// What survives a crash for certain.
    pub durable: Vec<u8>,
    /// The first byte of `current` that may differ from `durable` (where unsynced changes start).
    pub dirty_from: usize,
}

impl ModelFile {
    /// Appends `data`, unsynced.
    pub fn append(&mut self, data: &[u8]) {
        self.dirty_from = self.dirty_from.min(self.current.len());
        self.current.extend_from_slice(data);
    }

    /// Up to `len` bytes at `pos` of what reads see.
    pub fn read(&self, pos: u64, len: usize) -> Bytes {
        let start = (pos as usize).min(self.current.len());
        let end = start.saturating_add(len).min(self.current.len());
        Bytes::copy_from_slice(&self.current[start..end])
    }

    /// Cuts the file to `len` bytes, unsynced.
    pub fn truncate(&mut self, len: u64) {
        let len = len as usize;
        if len < self.current.len() {
            self.current.truncate(len);
            self.dirty_from = self.dirty_from.min(len);
        }
    }

    /// Makes every change so far durable.
    pub fn sync(&mut self) {
        let from = self
            .dirty_from
            .min(self.current.len())
            .min(self.durable.len());
        self.durable.truncate(from);
        self.durable.extend_from_slice(&self.current[from..]);
        self.dirty_from = self.current.len();
        debug_assert_eq!(self.durable, self.current);
    }

    /// Where unsynced changes begin in `current`.
    pub fn pending_start(&self) -> usize {
        self.dirty_from.min(self.current.len())
    }

    /// After a crash: `survived` is what the disk holds, all of it durable.
    pub fn settle(&mut self, survived: Vec<u8>) {
        self.current = survived;
        self.durable = self.current.clone();
        self.dirty_from = self.current.len();
    }
}

/// An in-memory [`Storage`] that models crashes: [`MemStorage::crash`] drops what was not synced
/// and may leave a torn or zero-filled tail, as a power loss does to a real disk. Also counts
/// syncs, so tests can check group commit.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    files: BTreeMap<String, ModelFile>,
    /// The number of `sync` calls so far.
    pub syncs: u64,
    /// If set, appends that would make the total size exceed this many bytes fail with NoSpace.
    pub capacity_bytes: Option<u64>,
}

impl MemStorage {
    pub fn new() -> Self {
        Self::default()
    }

    fn file(&self, name: &str) -> Result<&ModelFile, StorageError> {
        self.files
            .get(name)
            .ok_or_else(|| StorageError::NotFound(name.to_string()))
    }

    fn file_mut(&mut self, name: &str) -> Result<&mut ModelFile, StorageError> {
        self.files
            .get_mut(name)
            .ok_or_else(|| StorageError::NotFound(name.to_string()))
    }

    /// Total bytes currently held.
    pub fn used_bytes(&self) -> u64 {
        self.files.values().map(|f| f.current.len() as u64).sum()
    }

    /// Simulates a power loss. Each file keeps its durable contents; where it had unsynced
    /// writes, it may keep a random prefix of them (torn at any byte) and then a run of zeros;
    /// an unsynced truncation may be undone.
    pub fn crash<R: Rng>(&mut self, rng: &mut R) {
        for file in self.files.values_mut() {
            let pending_start = file.pending_start();
            let unsynced = file.current.len() > pending_start || file.durable.len() > pending_start;
            let survived = if !unsynced || (file.durable.len() > pending_start && rng.gen_bool(0.5))
            {
                // Nothing pending, or the unsynced truncation (and what followed it) never
                // reached the disk.
                file.durable.clone()
            } else {
                let pending = &file.current[pending_start..];
                let kept = rng.gen_range(0..=pending.len());
                let mut survived = file.durable[..pending_start.min(file.durable.len())].to_vec();
                survived.extend_from_slice(&pending[..kept]);
                if rng.gen_bool(0.2) {
                    let zeros = rng.gen_range(1..=64);
                    survived.resize(survived.len() + zeros, 0);
                }
                survived
            };
            file.settle(survived);
        }
    }

    /// Flips one bit of a file's durable and current contents (bit rot), for tests.
    pub fn flip_bit(&mut self, name: &str, pos: usize, bit: u8) -> Result<(), StorageError> {
        let file = self.file_mut(name)?;
        if pos < file.current.len() {
            file.current[pos] ^= 1 << (bit % 8);
        }
        if pos < file.durable.len() {
            file.durable[pos] ^= 1 << (bit % 8);
        }
        Ok(())
    }
}

impl Storage for MemStorage {
    fn create(&mut self, name: &str) -> Result<(), StorageError> {
        if self.files.contains_key(name) {
            return Err(StorageError::AlreadyExists(name.to_string()));
        }
        self.files.insert(name.to_string(), ModelFile::default());
        Ok(())
    }

    fn append(&mut self, name: &str, data: &[u8]) -> Result<(), StorageError> {
        if let Some(capacity) = self.capacity_bytes {
            if self.used_bytes() + data.len() as u64 > capacity {
                return Err(StorageError::NoSpace);
            }
        }
        self.file_mut(name)?.append(data);
        Ok(())
    }

    fn read_at(&self, name: &str, pos: u64, len: usize) -> Result<Bytes, StorageError> {
        Ok(self.file(name)?.read(pos, len))
    }

    fn len(&self, name: &str) -> Result<u64, StorageError> {
        Ok(self.file(name)?.current.len() as u64)
    }

    fn truncate(&mut self, name: &str, len: u64) -> Result<(), StorageError> {
        self.file_mut(name)?.truncate(len);
        Ok(())
    }

    fn sync(&mut self, name: &str) -> Result<(), StorageError> {
        self.syncs += 1;
        self.file_mut(name)?.sync();
        Ok(())
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<(), StorageError> {
        let file = self
            .files
            .remove(from)
            .ok_or_else(|| StorageError::NotFound(from.to_string()))?;
        self.files.insert(to.to_string(), file);
        Ok(())
    }

    fn remove(&mut self, name: &str) -> Result<(), StorageError> {
        self.files
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| StorageError::NotFound(name.to_string()))
    }

    fn list(&self) -> Result<Vec<String>, StorageError> {
        Ok(self.files.keys().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use rand::{rngs::StdRng, SeedableRng};

    use super::*;

    #[test]
    fn synced_bytes_survive_every_crash_and_unsynced_ones_only_as_a_prefix() {
        for seed in 0..200 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut s = MemStorage::new();
            s.create("f").unwrap();
            s.append("f", b"durable").unwrap();
            s.sync("f").unwrap();
            s.append("f", b"-pending").unwrap();
            s.crash(&mut rng);
            let after = read_all(&s, "f").unwrap();
            assert!(after.starts_with(b"durable"), "seed {seed}: {after:?}");
            let tail = &after[7..];
            let written = b"-pending";
            let prefix = tail.iter().zip(written).take_while(|(a, b)| a == b).count();
            assert!(
                tail[prefix..].iter().all(|&b| b == 0),
                "seed {seed}: tail is a prefix then zeros"
            );
        }
    }

    #[test]
    fn crashes_produce_every_outcome_torn_lost_and_zero_filled() {
        let (mut lost, mut torn, mut zeros) = (false, false, false);
        for seed in 0..200 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut s = MemStorage::new();
            s.create("f").unwrap();
            s.append("f", b"0123456789").unwrap();
            s.crash(&mut rng);
            let after = read_all(&s, "f").unwrap();
            lost |= after.is_empty();
            torn |= !after.is_empty() && after.len() < 10 && !after.contains(&0);
            zeros |= after.contains(&0);
        }
        assert!(lost && torn && zeros);
    }

    #[test]
    fn unsynced_truncate_may_be_undone_synced_truncate_never() {
        let mut undone = false;
        for seed in 0..50 {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut s = MemStorage::new();
            s.create("f").unwrap();
            s.append("f", b"abcdef").unwrap();
            s.sync("f").unwrap();
            s.truncate("f", 2).unwrap();
            let mut synced = s.clone();
            synced.sync("f").unwrap();
            s.crash(&mut rng);
            synced.crash(&mut rng);
            assert_eq!(read_all(&synced, "f").unwrap(), &b"ab"[..]);
            let after = read_all(&s, "f").unwrap();
            assert!(after == b"abcdef"[..] || after.starts_with(b"ab"));
            undone |= after == b"abcdef"[..];
        }
        assert!(undone);
    }

    #[test]
    fn write_atomic_replaces_and_survives_crash() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut s = MemStorage::new();
        write_atomic(&mut s, "cp", b"one").unwrap();
        write_atomic(&mut s, "cp", b"two").unwrap();
        s.crash(&mut rng);
        assert_eq!(read_all(&s, "cp").unwrap(), &b"two"[..]);
        assert_eq!(s.list().unwrap(), vec!["cp".to_string()]);
    }

    #[test]
    fn capacity_limit_fails_appends_with_no_space() {
        let mut s = MemStorage {
            capacity_bytes: Some(4),
            ..Default::default()
        };
        s.create("f").unwrap();
        s.append("f", b"abcd").unwrap();
        assert_eq!(s.append("f", b"e"), Err(StorageError::NoSpace));
        assert_eq!(read_all(&s, "f").unwrap(), &b"abcd"[..]);
    }
}
