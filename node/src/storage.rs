//! [`FileStorage`]: keel-core's [`Storage`] on real files in one directory.
//!
//! Durability, as the trait requires: `sync` is `fdatasync` of the file (which also persists
//! the file size); `create`, `rename` and `remove` `fsync` the directory before returning, so
//! the name change is durable too; `create_deferred` leaves the directory's `fsync` to the
//! next `sync` of any file of the directory, which does it first. [`FileStorage::open`]
//! creates the directory if it is missing, and its missing parents, each made durable in its
//! parent before it returns (else a power loss could take a new partition's directory, and
//! every synced file in it, away). A full disk is reported as [`StorageError::NoSpace`].
//!
//! Every call that changes the disk goes through a [`FileSystem`]: [`Os`] (the default, and
//! the only one the broker uses) is `std::fs` itself; a test passes its own to record the calls
//! and build every state a power loss could leave (node/tests/crash_consistency.rs).
//!
//! Not for use inside the simulator: madsim does not simulate `std::fs`. The broker therefore
//! reaches its disk through [`Disk`], which is either the real file system or a
//! [`VirtualDisk`] (the simulator's), and each directory through [`Dir`].

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, IoSlice, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use keel_core::storage::{Storage, StorageError};

/// Reads up to this long are allocated at the length asked for; longer ones first look up the
/// file's length (one more system call) to bound the buffer.
const READ_UNCHECKED_BYTES_MAX: usize = 16 << 20;

/// The file system calls of [`FileStorage`] that change what is on the disk, one method per
/// call (reads, `fstat` and `readdir` do not go through it). [`Os`] makes them; a test's
/// implementation may record them before or instead of making them.
pub trait FileSystem: Clone + Send + Sync + 'static {
    /// `mkdir` of `path`, whose parent exists.
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// Opens the file at `path` for reading and appending; `create`: creates it, and fails if
    /// it exists (`O_CREAT | O_EXCL`).
    fn open(&self, path: &Path, create: bool) -> io::Result<File>;
    /// One `write` (or `writev`) of `parts` at the end of `file`, opened at `path`: the bytes
    /// written, which may be fewer than asked.
    fn append(&self, file: &File, path: &Path, parts: &[IoSlice<'_>]) -> io::Result<usize>;
    /// `ftruncate` of `file`, opened at `path`.
    fn set_len(&self, file: &File, path: &Path, len: u64) -> io::Result<()>;
    /// `fdatasync` of `file`, opened at `path`.
    fn sync_data(&self, file: &File, path: &Path) -> io::Result<()>;
    /// `fsync` of the directory at `path`: its entries (names created, renamed, removed) are
    /// durable when it returns.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// `rename`, replacing `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// `unlink`.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
}

/// The operating system's file system: the calls themselves (a zero-sized type, so a
/// [`FileStorage`] on it costs nothing more than calling `std::fs`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Os;

impl FileSystem for Os {
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        fs::create_dir(path)
    }

    fn open(&self, path: &Path, create: bool) -> io::Result<File> {
        OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(create)
            .open(path)
    }

    fn append(&self, file: &File, _path: &Path, parts: &[IoSlice<'_>]) -> io::Result<usize> {
        match parts {
            [one] => (&*file).write(one),
            parts => (&*file).write_vectored(parts),
        }
    }

    fn set_len(&self, file: &File, _path: &Path, len: u64) -> io::Result<()> {
        file.set_len(len)
    }

    fn sync_data(&self, file: &File, _path: &Path) -> io::Result<()> {
        file.sync_data()
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
}

/// Creates the directory `dir` and its missing parents, and makes each durable: `fsync` of the
/// parent it was created in.
fn create_dir_durably<F: FileSystem>(fs: &F, dir: &Path) -> io::Result<()> {
    // The missing directories, innermost first.
    let mut missing = Vec::new();
    let mut at = dir;
    while !at.as_os_str().is_empty() && !at.is_dir() {
        missing.push(at);
        match at.parent() {
            Some(parent) => at = parent,
            None => break,
        }
    }
    for &new in missing.iter().rev() {
        match fs.create_dir(new) {
            Ok(()) => {}
            // Created meanwhile by another opener of the same path.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && new.is_dir() => {}
            Err(e) => return Err(e),
        }
    }
    for &new in missing.iter().rev() {
        let parent = match new.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        fs.sync_dir(parent)?;
    }
    Ok(())
}

/// One directory of files, with open handles cached. Clones share the handles, so an I/O
/// thread can [`FileStorage::sync_file`] while the owner goes on appending.
#[derive(Clone)]
pub struct FileStorage<F: FileSystem = Os> {
    fs: F,
    dir: PathBuf,
    handles: Arc<Mutex<BTreeMap<String, Arc<File>>>>,
    /// A name was created without syncing the directory ([`Storage::create_deferred`]): the
    /// next file sync syncs the directory first.
    dir_dirty: Arc<AtomicBool>,
}

impl FileStorage {
    /// Opens (creating if needed, durably) the directory `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<FileStorage> {
        FileStorage::open_on(Os, dir)
    }
}

impl<F: FileSystem> FileStorage<F> {
    /// Opens (creating if needed, durably) the directory `dir`, making every change to the
    /// disk through `fs`.
    pub fn open_on(fs: F, dir: impl Into<PathBuf>) -> io::Result<FileStorage<F>> {
        let dir = dir.into();
        create_dir_durably(&fs, &dir)?;
        Ok(FileStorage {
            fs,
            dir,
            handles: Arc::new(Mutex::new(BTreeMap::new())),
            dir_dirty: Arc::new(AtomicBool::new(false)),
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
        let file = self
            .fs
            .open(&self.path(name)?, false)
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
        if self.dir_dirty.swap(false, Ordering::SeqCst) {
            if let Err(e) = self.sync_dir() {
                self.dir_dirty.store(true, Ordering::SeqCst);
                return Err(e);
            }
        }
        let file = self.handle(name)?;
        self.fs
            .sync_data(&file, &self.path(name)?)
            .map_err(|e| error(name, e))
    }

    fn sync_dir(&self) -> Result<(), StorageError> {
        self.fs
            .sync_dir(&self.dir)
            .map_err(|e| error(&self.dir.display().to_string(), e))
    }

    /// Writes `parts` one after another at the end of the file, however many writes it takes
    /// (none for nothing to write).
    fn append_all(&self, name: &str, parts: &[&[u8]]) -> Result<(), StorageError> {
        let file = self.handle(name)?;
        let path = self.path(name)?;
        let mut parts: Vec<IoSlice> = parts
            .iter()
            .filter(|p| !p.is_empty())
            .map(|p| IoSlice::new(p))
            .collect();
        let mut parts = &mut parts[..];
        while !parts.is_empty() {
            match self.fs.append(&file, &path, parts) {
                Ok(0) => return Err(error(name, io::ErrorKind::WriteZero.into())),
                Ok(n) => IoSlice::advance_slices(&mut parts, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(error(name, e)),
            }
        }
        Ok(())
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

impl<F: FileSystem> FileStorage<F> {
    fn create_file(&mut self, name: &str) -> Result<(), StorageError> {
        let file = self
            .fs
            .open(&self.path(name)?, true)
            .map_err(|e| error(name, e))?;
        self.handles
            .lock()
            .expect("storage handle map poisoned")
            .insert(name.to_string(), Arc::new(file));
        Ok(())
    }
}

impl<F: FileSystem> Storage for FileStorage<F> {
    fn create(&mut self, name: &str) -> Result<(), StorageError> {
        self.create_file(name)?;
        self.sync_dir()
    }

    fn create_deferred(&mut self, name: &str) -> Result<(), StorageError> {
        self.create_file(name)?;
        self.dir_dirty.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn append(&mut self, name: &str, data: &[u8]) -> Result<(), StorageError> {
        self.append_all(name, &[data])
    }

    fn append_parts(&mut self, name: &str, parts: &[&[u8]]) -> Result<(), StorageError> {
        self.append_all(name, parts)
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
        let file = self.handle(name)?;
        self.fs
            .set_len(&file, &self.path(name)?, len)
            .map_err(|e| error(name, e))
    }

    fn sync(&mut self, name: &str) -> Result<(), StorageError> {
        self.sync_file(name)
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<(), StorageError> {
        self.fs
            .rename(&self.path(from)?, &self.path(to)?)
            .map_err(|e| error(from, e))?;
        self.forget(from);
        self.forget(to);
        self.sync_dir()
    }

    fn remove(&mut self, name: &str) -> Result<(), StorageError> {
        self.fs
            .remove_file(&self.path(name)?)
            .map_err(|e| error(name, e))?;
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
    /// Removes the directory at `path` and everything in it: a replica this broker no longer
    /// holds (deleted, reassigned away), not a recovery's doing.
    fn remove_dir_all(&self, path: &str) -> io::Result<()> {
        let mut dir = self.dir(path);
        for name in dir.list().map_err(io::Error::other)? {
            dir.remove(&name).map_err(io::Error::other)?;
        }
        Ok(())
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
    fn create_deferred(&mut self, name: &str) -> Result<(), StorageError> {
        self.storage_mut().create_deferred(name)
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
            Disk::Virtual(d) => d.remove_dir_all(&virtual_path(path)),
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

    /// A deferred create leaves the directory's sync to the next sync of a file, which does
    /// it first (and keeps owing it if it fails); a plain create syncs it at once.
    #[test]
    fn a_deferred_create_is_made_durable_by_the_next_sync() {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = FileStorage::open(dir.path()).unwrap();
        storage.create("a").unwrap();
        assert!(!storage.dir_dirty.load(Ordering::SeqCst));
        storage.create_deferred("b").unwrap();
        assert!(
            storage.dir_dirty.load(Ordering::SeqCst),
            "the directory sync is owed"
        );
        storage.append("b", b"x").unwrap();
        // A clone (the sync thread's) shares what is owed.
        storage.clone().sync_file("a").unwrap();
        assert!(
            !storage.dir_dirty.load(Ordering::SeqCst),
            "paid by the sync of any file"
        );
        assert_eq!(read_all(&storage, "b").unwrap().as_ref(), b"x");
        assert!(matches!(
            storage.create_deferred("b"),
            Err(StorageError::AlreadyExists(_))
        ));
    }
}
