//! [`FileStorage`]: keel-core's [`Storage`] on real files in one directory.
//!
//! Durability, as the trait requires: `sync` is `fdatasync` of the file (which also persists
//! the file size); `create`, `rename` and `remove` `fsync` the directory before returning, so
//! the name change is durable too. A full disk is reported as [`StorageError::NoSpace`].
//!
//! Syncs that overlap are coalesced ([`SyncGroup`]): a sync asked for while another is in
//! flight on the same file system joins a group that one `syncfs(2)` completes. `syncfs` makes
//! every file and directory of the file system durable, so each member gets at least what
//! its own `fdatasync` or directory `fsync` would have given it, and a broker with a thousand
//! partitions to sync at once (a produce to each, their followers' appends) pays for a few
//! file system flushes instead of a thousand.
//!
//! Not for use inside the simulator: madsim does not simulate `std::fs`. The broker therefore
//! reaches its disk through [`Disk`], which is either the real file system or a
//! [`VirtualDisk`] (the simulator's), and each directory through [`Dir`].

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use bytes::Bytes;
use keel_core::storage::{Storage, StorageError};

/// Reads up to this long are allocated at the length asked for; longer ones first look up the
/// file's length (one more system call) to bound the buffer.
const READ_UNCHECKED_BYTES_MAX: usize = 16 << 20;

/// One directory of files, with open handles cached. Clones share the handles, so an I/O
/// thread can [`FileStorage::sync_file`] while the owner goes on appending.
#[derive(Clone)]
pub struct FileStorage {
    dir: PathBuf,
    handles: Arc<Mutex<BTreeMap<String, Arc<File>>>>,
    /// The syncs of the file system this directory is on.
    syncs: Arc<SyncGroup>,
}

impl FileStorage {
    /// Opens (creating if needed) the directory `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<FileStorage> {
        let dir = dir.into();
        fs::create_dir_all(&dir)?;
        let syncs = SyncGroup::for_dir(&dir)?;
        Ok(FileStorage {
            dir,
            handles: Arc::new(Mutex::new(BTreeMap::new())),
            syncs,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, name: &str) -> Result<PathBuf, StorageError> {
        // Names are flat: nothing may escape the directory.
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(StorageError::Io {
                file: name.to_string(),
                message: "invalid file name".into(),
            });
        }
        Ok(self.dir.join(name))
    }

    fn handle(&self, name: &str) -> Result<Arc<File>, StorageError> {
        let mut handles = self.handles.lock().expect("storage handle map poisoned");
        if let Some(f) = handles.get(name) {
            return Ok(f.clone());
        }
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(self.path(name)?)
            .map_err(|e| error(name, e))?;
        let file = Arc::new(file);
        handles.insert(name.to_string(), file.clone());
        Ok(file)
    }

    fn forget(&self, name: &str) {
        self.handles
            .lock()
            .expect("storage handle map poisoned")
            .remove(name);
    }

    /// `fdatasync`s one file. Takes `&self`: a clone on an I/O thread syncs while the owner
    /// appends (the log's split sync).
    pub fn sync_file(&self, name: &str) -> Result<(), StorageError> {
        let file = self.handle(name)?;
        self.syncs
            .sync(|| file.sync_data())
            .map_err(|e| error(name, e))
    }

    fn sync_dir(&self) -> Result<(), StorageError> {
        self.syncs
            .sync(|| File::open(&self.dir).and_then(|d| d.sync_all()))
            .map_err(|e| error(&self.dir.display().to_string(), e))
    }
}

/// The syncs of one file system, coalesced: a sync asked for while none is in flight runs as
/// asked (`fdatasync` of a file, `fsync` of a directory); one asked for while others are in
/// flight waits for a `syncfs(2)` that starts after it asked, and the syncs that queue while
/// one `syncfs` runs share the next. One group per file system (device) in the process.
pub struct SyncGroup {
    /// A directory on the file system, the handle `syncfs` is called on.
    handle: File,
    state: Mutex<SyncGroupState>,
    finished: Condvar,
}

#[derive(Default)]
struct SyncGroupState {
    /// Plain syncs (a file's or a directory's own) in flight.
    plain: usize,
    /// Whether a `syncfs` is in flight (the one numbered `started`).
    running: bool,
    /// How many `syncfs` calls have started, and finished.
    started: u64,
    finished: u64,
    /// The recent `syncfs` calls that failed, by number, with their error.
    failed: BTreeMap<u64, (io::ErrorKind, String)>,
    /// `syncfs` calls made, and syncs they completed (metrics and tests).
    flushes: u64,
    coalesced: u64,
}

/// How many failed `syncfs` calls a group remembers (a waiter looks up its own right after).
const SYNC_FAILURES_KEPT: usize = 64;

impl SyncGroup {
    /// The group of the file system `dir` is on (made on first use).
    pub fn for_dir(dir: &Path) -> io::Result<Arc<SyncGroup>> {
        static GROUPS: OnceLock<Mutex<BTreeMap<u64, Arc<SyncGroup>>>> = OnceLock::new();
        let device = fs::metadata(dir)?.dev();
        let mut groups = GROUPS
            .get_or_init(Default::default)
            .lock()
            .expect("sync groups poisoned");
        if let Some(g) = groups.get(&device) {
            return Ok(g.clone());
        }
        let group = Arc::new(SyncGroup {
            handle: File::open(dir)?,
            state: Mutex::new(SyncGroupState::default()),
            finished: Condvar::new(),
        });
        groups.insert(device, group.clone());
        Ok(group)
    }

    /// Makes what `plain` would make durable durable: by `plain` itself when no other sync is
    /// in flight, else by a `syncfs` that starts after this call.
    pub fn sync(&self, plain: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        let mut st = self.state.lock().expect("sync group poisoned");
        if st.plain == 0 && !st.running {
            st.plain += 1;
            drop(st);
            let result = plain();
            self.state.lock().expect("sync group poisoned").plain -= 1;
            return result;
        }
        // The first syncfs to start from now on covers what was written before this call.
        let mine = st.started + 1;
        st.coalesced += 1;
        loop {
            if st.finished >= mine {
                return match st.failed.get(&mine) {
                    None => Ok(()),
                    Some((kind, message)) => Err(io::Error::new(*kind, message.clone())),
                };
            }
            if !st.running {
                st.started += 1;
                st.running = true;
                st.flushes += 1;
                let number = st.started;
                drop(st);
                // SAFETY: syncfs takes a file descriptor and nothing else; the handle is open
                // for the group's lifetime.
                let result = unsafe { libc::syncfs(self.handle.as_raw_fd()) };
                let error = (result != 0).then(io::Error::last_os_error);
                st = self.state.lock().expect("sync group poisoned");
                st.running = false;
                st.finished = number;
                if let Some(e) = error {
                    st.failed.insert(number, (e.kind(), e.to_string()));
                    while st.failed.len() > SYNC_FAILURES_KEPT {
                        st.failed.pop_first();
                    }
                }
                self.finished.notify_all();
                continue;
            }
            st = self.finished.wait(st).expect("sync group poisoned");
        }
    }

    /// (`syncfs` calls made, syncs that joined one) so far.
    pub fn counts(&self) -> (u64, u64) {
        let st = self.state.lock().expect("sync group poisoned");
        (st.flushes, st.coalesced)
    }
}

fn error(file: &str, e: io::Error) -> StorageError {
    match e.kind() {
        io::ErrorKind::NotFound => StorageError::NotFound(file.to_string()),
        io::ErrorKind::AlreadyExists => StorageError::AlreadyExists(file.to_string()),
        io::ErrorKind::StorageFull => StorageError::NoSpace,
        _ => StorageError::Io {
            file: file.to_string(),
            message: e.to_string(),
        },
    }
}

impl Storage for FileStorage {
    fn create(&mut self, name: &str) -> Result<(), StorageError> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .open(self.path(name)?)
            .map_err(|e| error(name, e))?;
        self.handles
            .lock()
            .expect("storage handle map poisoned")
            .insert(name.to_string(), Arc::new(file));
        self.sync_dir()
    }

    fn append(&mut self, name: &str, data: &[u8]) -> Result<(), StorageError> {
        let file = self.handle(name)?;
        (&*file).write_all(data).map_err(|e| error(name, e))
    }

    fn append_parts(&mut self, name: &str, parts: &[&[u8]]) -> Result<(), StorageError> {
        let file = self.handle(name)?;
        let mut parts: Vec<io::IoSlice> = parts.iter().map(|p| io::IoSlice::new(p)).collect();
        let mut parts = &mut parts[..];
        while !parts.is_empty() {
            match (&*file).write_vectored(parts) {
                Ok(0) => return Err(error(name, io::ErrorKind::WriteZero.into())),
                Ok(n) => io::IoSlice::advance_slices(&mut parts, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(error(name, e)),
            }
        }
        Ok(())
    }

    fn read_at(&self, name: &str, pos: u64, len: usize) -> Result<Bytes, StorageError> {
        let file = self.handle(name)?;
        // Small reads (the log's) trust `len`; a large one is bounded by the file first, so
        // that a file's length, not the caller's bound, decides what is allocated.
        let len = if len > READ_UNCHECKED_BYTES_MAX {
            let size = file.metadata().map_err(|e| error(name, e))?.len();
            len.min(size.saturating_sub(pos) as usize)
        } else {
            len
        };
        let mut buf: Vec<u8> = Vec::with_capacity(len);
        while buf.len() < len {
            let filled = buf.len();
            let offset = libc::off_t::try_from(pos + filled as u64)
                .map_err(|_| error(name, io::Error::from(io::ErrorKind::InvalidInput)))?;
            // SAFETY: the pointer and length are the vector's spare capacity, which pread only
            // writes; the length is raised by exactly the bytes pread reports written.
            let n = unsafe {
                libc::pread(
                    file.as_raw_fd(),
                    buf.as_mut_ptr().add(filled).cast(),
                    len - filled,
                    offset,
                )
            };
            match n {
                0 => break,
                n if n > 0 => unsafe { buf.set_len(filled + n as usize) },
                _ => {
                    let e = io::Error::last_os_error();
                    if e.kind() == io::ErrorKind::Interrupted {
                        continue;
                    }
                    return Err(error(name, e));
                }
            }
        }
        Ok(Bytes::from(buf))
    }

    fn len(&self, name: &str) -> Result<u64, StorageError> {
        Ok(self
            .handle(name)?
            .metadata()
            .map_err(|e| error(name, e))?
            .len())
    }

    fn truncate(&mut self, name: &str, len: u64) -> Result<(), StorageError> {
        self.handle(name)?.set_len(len).map_err(|e| error(name, e))
    }

    fn sync(&mut self, name: &str) -> Result<(), StorageError> {
        self.sync_file(name)
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<(), StorageError> {
        fs::rename(self.path(from)?, self.path(to)?).map_err(|e| error(from, e))?;
        self.forget(from);
        self.forget(to);
        self.sync_dir()
    }

    fn remove(&mut self, name: &str) -> Result<(), StorageError> {
        fs::remove_file(self.path(name)?).map_err(|e| error(name, e))?;
        self.forget(name);
        self.sync_dir()
    }

    fn list(&self) -> Result<Vec<String>, StorageError> {
        let mut names = Vec::new();
        for entry in
            fs::read_dir(&self.dir).map_err(|e| error(&self.dir.display().to_string(), e))?
        {
            let entry = entry.map_err(|e| error(&self.dir.display().to_string(), e))?;
            if entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
                if let Some(name) = entry.file_name().to_str() {
                    names.push(name.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }
}

/// A directory of a [`VirtualDisk`]: any [`Storage`] whose clones share their files.
pub trait VirtualDir: Storage + Send + Sync {
    fn clone_dir(&self) -> Box<dyn VirtualDir>;
}

impl<T: Storage + Clone + Send + Sync + 'static> VirtualDir for T {
    fn clone_dir(&self) -> Box<dyn VirtualDir> {
        Box::new(self.clone())
    }
}

/// A disk that is not the file system (the simulator's), addressed by `/`-separated paths.
pub trait VirtualDisk: Send + Sync {
    /// The directory at `path` (created empty on first use).
    fn dir(&self, path: &str) -> Box<dyn VirtualDir>;
    /// The names of the directories directly under `path` that hold files.
    fn subdirs(&self, path: &str) -> Vec<String>;
    /// How long one sync takes (the simulated disk is otherwise instant): appends made
    /// meanwhile stay unsynced, and a power loss then loses them.
    fn sync_latency(&self) -> std::time::Duration {
        std::time::Duration::from_millis(2)
    }
}

/// One directory of the broker's disk.
pub enum Dir {
    File(FileStorage),
    Virtual(Box<dyn VirtualDir>),
}

impl Clone for Dir {
    fn clone(&self) -> Self {
        match self {
            Dir::File(f) => Dir::File(f.clone()),
            Dir::Virtual(v) => Dir::Virtual(v.clone_dir()),
        }
    }
}

impl Dir {
    /// Syncs one file through a shared handle (a clone on the sync thread syncs while the
    /// owner appends).
    pub fn sync_file(&self, name: &str) -> Result<(), StorageError> {
        match self {
            Dir::File(f) => f.sync_file(name),
            Dir::Virtual(v) => v.clone_dir().sync(name),
        }
    }

    fn storage(&self) -> &dyn Storage {
        match self {
            Dir::File(f) => f,
            Dir::Virtual(v) => v.as_ref(),
        }
    }

    fn storage_mut(&mut self) -> &mut dyn Storage {
        match self {
            Dir::File(f) => f,
            Dir::Virtual(v) => v.as_mut(),
        }
    }
}

impl Storage for Dir {
    fn create(&mut self, name: &str) -> Result<(), StorageError> {
        self.storage_mut().create(name)
    }
    fn append(&mut self, name: &str, data: &[u8]) -> Result<(), StorageError> {
        self.storage_mut().append(name, data)
    }
    fn append_parts(&mut self, name: &str, parts: &[&[u8]]) -> Result<(), StorageError> {
        self.storage_mut().append_parts(name, parts)
    }
    fn read_at(&self, name: &str, pos: u64, len: usize) -> Result<Bytes, StorageError> {
        self.storage().read_at(name, pos, len)
    }
    fn len(&self, name: &str) -> Result<u64, StorageError> {
        self.storage().len(name)
    }
    fn truncate(&mut self, name: &str, len: u64) -> Result<(), StorageError> {
        self.storage_mut().truncate(name, len)
    }
    fn sync(&mut self, name: &str) -> Result<(), StorageError> {
        self.storage_mut().sync(name)
    }
    fn rename(&mut self, from: &str, to: &str) -> Result<(), StorageError> {
        self.storage_mut().rename(from, to)
    }
    fn remove(&mut self, name: &str) -> Result<(), StorageError> {
        self.storage_mut().remove(name)
    }
    fn list(&self) -> Result<Vec<String>, StorageError> {
        self.storage().list()
    }
}

/// The broker's disk: the file system, or a virtual one.
#[derive(Clone, Default)]
pub enum Disk {
    #[default]
    Real,
    Virtual(Arc<dyn VirtualDisk>),
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Disk::Real => "Disk::Real",
            Disk::Virtual(_) => "Disk::Virtual",
        })
    }
}

fn virtual_path(path: &Path) -> String {
    path.to_string_lossy().trim_end_matches('/').to_string()
}

impl Disk {
    /// Opens (creating if needed) the directory at `path`.
    pub fn open(&self, path: &Path) -> io::Result<Dir> {
        match self {
            Disk::Real => FileStorage::open(path).map(Dir::File),
            Disk::Virtual(d) => Ok(Dir::Virtual(d.dir(&virtual_path(path)))),
        }
    }

    /// Removes the directory at `path` and everything in it.
    pub fn remove_dir_all(&self, path: &Path) -> io::Result<()> {
        match self {
            Disk::Real => fs::remove_dir_all(path),
            Disk::Virtual(d) => {
                let mut dir = d.dir(&virtual_path(path));
                for name in dir.list().map_err(io::Error::other)? {
                    dir.remove(&name).map_err(io::Error::other)?;
                }
                Ok(())
            }
        }
    }

    /// The directories directly under `path`.
    pub fn subdirs(&self, path: &Path) -> Vec<PathBuf> {
        match self {
            Disk::Real => fs::read_dir(path)
                .map(|entries| {
                    entries
                        .flatten()
                        .filter(|e| e.path().is_dir())
                        .map(|e| e.path())
                        .collect()
                })
                .unwrap_or_default(),
            Disk::Virtual(d) => d
                .subdirs(&virtual_path(path))
                .into_iter()
                .map(|name| path.join(name))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use keel_core::batch::{BatchBuilder, Compression};
    use keel_core::log::{Log, LogConfig};
    use keel_core::storage::{read_all, write_atomic};
    use keel_core::{LeaderEpoch, Offset};

    use super::*;

    #[test]
    fn files_round_trip_and_names_stay_inside_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = FileStorage::open(dir.path()).unwrap();
        s.create("a").unwrap();
        assert_eq!(s.create("a"), Err(StorageError::AlreadyExists("a".into())));
        s.append("a", b"hello ").unwrap();
        s.append("a", b"world").unwrap();
        s.append_parts("a", &[b"", b" and", b"", b" more"]).unwrap();
        assert_eq!(s.read_at("a", 11, 100).unwrap(), &b" and more"[..]);
        s.truncate("a", 11).unwrap();
        s.sync("a").unwrap();
        assert_eq!(s.read_at("a", 6, 100).unwrap(), &b"world"[..]);
        assert_eq!(s.read_at("a", 100, 10).unwrap(), &b""[..]);
        s.truncate("a", 5).unwrap();
        assert_eq!(read_all(&s, "a").unwrap(), &b"hello"[..]);
        write_atomic(&mut s, "cp", b"1").unwrap();
        write_atomic(&mut s, "cp", b"2").unwrap();
        assert_eq!(read_all(&s, "cp").unwrap(), &b"2"[..]);
        assert_eq!(s.list().unwrap(), vec!["a".to_string(), "cp".to_string()]);
        s.remove("a").unwrap();
        assert_eq!(s.len("a"), Err(StorageError::NotFound("a".into())));
        assert!(s.create("../escape").is_err());
        assert!(s.create("").is_err());
    }

    /// The log over real files reopens with everything it synced.
    #[test]
    fn log_on_files_reopens_intact() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            segment_bytes_max: 4096,
            ..LogConfig::default()
        };
        let mut log = Log::open(FileStorage::open(dir.path()).unwrap(), config.clone(), 0).unwrap();
        for i in 0..100 {
            let b = BatchBuilder::new(Compression::Lz4)
                .record(i, Some(b"k"), Some(&[7u8; 100]))
                .build()
                .unwrap();
            log.append(i, b, LeaderEpoch(1)).unwrap();
        }
        log.sync().unwrap();
        log.checkpoint().unwrap();
        let segments = log.segment_count();
        drop(log);
        let log = Log::open(FileStorage::open(dir.path()).unwrap(), config, 0).unwrap();
        assert_eq!(log.end(), Offset(100));
        assert_eq!(log.segment_count(), segments);
        assert_eq!(
            log.read(Offset(57), 1, log.end()).unwrap()[0].base_offset(),
            Offset(57)
        );
    }

    /// Syncs asked for while another is in flight share `syncfs` calls, and each returns only
    /// once its data is durable: a plain sync that is slow (as a busy disk's flush) holds the
    /// others, which then go in one or two `syncfs`, not one sync each.
    #[test]
    fn overlapping_syncs_share_a_file_system_flush() {
        let dir = tempfile::tempdir().unwrap();
        let storage = FileStorage::open(dir.path()).unwrap();
        let group = storage.syncs.clone();
        let (flushes_before, coalesced_before) = group.counts();
        let slow = std::thread::spawn({
            let group = group.clone();
            move || {
                group.sync(|| {
                    std::thread::sleep(std::time::Duration::from_millis(300));
                    Ok(())
                })
            }
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut others = Vec::new();
        for i in 0..16 {
            let mut s = storage.clone();
            others.push(std::thread::spawn(move || {
                let name = format!("f{i}");
                s.create(&name).unwrap();
                s.append(&name, b"data").unwrap();
                s.sync(&name)
            }));
        }
        for t in others {
            t.join().unwrap().unwrap();
        }
        slow.join().unwrap().unwrap();
        let (flushes, coalesced) = group.counts();
        // 16 files, each created (a directory sync) and synced: 32 syncs, all of them asked
        // for while the slow one was in flight. Tests running beside this one on the same
        // file system may add theirs, never take any away.
        assert!(
            coalesced - coalesced_before >= 32,
            "every sync joined a group"
        );
        let flushes = flushes - flushes_before;
        assert!(
            (1..=16).contains(&flushes),
            "{flushes} syncfs calls for 32 overlapping syncs"
        );
    }
}
