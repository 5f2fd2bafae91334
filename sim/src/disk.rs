//! [`SimDisk`]: one simulated node's disk, as keel-core's [`Storage`] (one [`SimDir`] per
//! directory), that survives the node's kill and restart as a real disk does and injects the
//! faults of keel's fault model.
//!
//! What it models (after TigerBeetle's storage faults and turmoil's simulated fs; docs/simulation.md):
//! - **Lost unsynced writes and torn writes.** Appends and truncations are pending until
//!   `sync`; [`SimDisk::crash`] keeps each file's synced bytes plus a prefix of its pending
//!   bytes cut at a sector boundary, and may leave the sector after the cut torn (a random
//!   prefix of it written). An unsynced truncation may be undone.
//! - **Latent sector errors (bit rot).** A read may find one of the sectors it covers rotted: a
//!   bit flips in the stored bytes, persistently, as a bad sector does.
//! - **Misdirected writes.** An append may land on an earlier sector of the same file, leaving
//!   zeros where it was meant to go.
//! - **I/O errors** on any operation, and a **full disk** (appends beyond the capacity fail).
//!
//! - **The recovery oracle.** For every log segment file (`{20 digits}.log`), the disk keeps
//!   where each write ended; at a power loss it records, per segment, the bytes synced before
//!   it and the writes that survived. The broker's recovery (`Log::open`) runs in one step of
//!   simulated time after the restart: the file's length when something touches it at a later
//!   instant (or at [`SimDisk::finish_recovery_checks`]) is what recovery kept, before any
//!   read or fetch could repair anything. It must hold every synced byte and end where a
//!   write ended (a torn batch cut off). Checked on disks without damage faults only: there
//!   recovery may legitimately cut synced bytes that rotted.
//!
//! Every fault is drawn from the RNG the disk is given (madsim's in the simulator, so a seed
//! replays exactly) with the probabilities in [`FaultConfig`], and counted in [`DiskStats`] for
//! the run's coverage table. [`SimDisk::set_faults`] switches faults off for the liveness phase.
//! Faults corrupt data only through the returned bytes and the stored bytes; the CRCs in the
//! log format must catch every one of them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use keel_core::storage::{ModelFile, Storage, StorageError};
use rand::{Rng, RngCore};

/// Fault probabilities and sizes, sampled per seed by the swarm.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultConfig {
    /// The unit of torn writes and latent errors.
    pub sector_bytes: usize,
    /// Whether a crash may leave a sector half-written.
    pub torn_writes: bool,
    /// Probability, per `read_at`, that a sector it covers has rotted.
    pub latent_error_per_read: f64,
    /// Probability, per `append`, that the write lands on an earlier sector.
    pub misdirect_per_append: f64,
    /// Probability, per operation, of an I/O error.
    pub io_error_per_op: f64,
    /// Bytes the disk holds; appends past it fail with `NoSpace`.
    pub capacity_bytes: Option<u64>,
}

impl FaultConfig {
    /// No faults but crashes (which are the caller's to trigger).
    pub fn none() -> FaultConfig {
        FaultConfig {
            sector_bytes: 512,
            torn_writes: false,
            latent_error_per_read: 0.0,
            misdirect_per_append: 0.0,
            io_error_per_op: 0.0,
            capacity_bytes: None,
        }
    }
}

/// How often each fault fired.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskStats {
    pub crashes: u64,
    pub torn_sectors: u64,
    pub lost_pending_bytes: u64,
    pub latent_errors: u64,
    pub misdirected_writes: u64,
    pub io_errors: u64,
    pub full_disk_errors: u64,
    /// Segment files whose recovery the oracle checked, and the bytes recovery cut from them
    /// (the torn or unsynced tails a power loss left).
    pub recoveries_checked: u64,
    pub recovery_cut_bytes: u64,
    /// Segment files created past a log's first (rolls, and a log restarted at an offset).
    pub segment_rolls: u64,
}

impl DiskStats {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &DiskStats) {
        self.crashes += other.crashes;
        self.torn_sectors += other.torn_sectors;
        self.lost_pending_bytes += other.lost_pending_bytes;
        self.latent_errors += other.latent_errors;
        self.misdirected_writes += other.misdirected_writes;
        self.io_errors += other.io_errors;
        self.full_disk_errors += other.full_disk_errors;
        self.recoveries_checked += other.recoveries_checked;
        self.recovery_cut_bytes += other.recovery_cut_bytes;
        self.segment_rolls += other.segment_rolls;
    }
}

/// Whether `path` is a log segment (`{dir}/{20 digits}.log`), which the recovery oracle checks.
fn is_segment(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.strip_suffix(".log")
        .is_some_and(|base| base.len() == 20 && base.bytes().all(|b| b.is_ascii_digit()))
}

/// Where a segment's writes ended, as its reads see it and as a power loss would leave it.
#[derive(Clone, Debug, Default)]
struct Writes {
    current: Vec<u64>,
    durable: Vec<u64>,
    /// The length the last sync covered (lowered by truncations and power losses): bytes a
    /// power loss left behind unsynced (a torn sector) do not count, even once settled.
    synced: u64,
}

/// A segment that lost power, waiting for its recovery to be judged.
#[derive(Clone, Debug)]
struct Recovering {
    /// Bytes synced before the power loss: recovery must keep them.
    synced: u64,
    /// The file's length after the power loss.
    survived: u64,
    /// Where whole writes end in what survived: recovery must stop at one of them.
    ends: Vec<u64>,
    /// When recovery first touched the file (simulated nanoseconds).
    first_touch: Option<u128>,
}

struct Inner {
    files: BTreeMap<String, ModelFile>,
    rng: Box<dyn RngCore + Send>,
    faults: FaultConfig,
    faults_on: bool,
    stats: DiskStats,
    sync_latency: std::time::Duration,
    /// The recovery oracle: off on disks with damage faults.
    oracle: bool,
    writes: BTreeMap<String, Writes>,
    recovering: BTreeMap<String, Recovering>,
    /// Segments removed before anything touched them since the power loss, by directory:
    /// recovery removing a segment past a truncation point (judged: it kept nothing), or the
    /// whole directory removed (a replica deleted while its broker was down: not a recovery),
    /// which the removal of the directory's `partition.metadata` tells.
    removed_untouched: BTreeMap<String, Vec<(String, Recovering)>>,
    recovery_violations: Vec<String>,
    /// The oracle's clock: madsim's, or a test's.
    clock: Clock,
}

/// Simulated time for the recovery oracle.
enum Clock {
    Sim(madsim::time::Instant),
    Manual(Arc<std::sync::atomic::AtomicU64>),
}

impl Clock {
    fn now(&self) -> u128 {
        match self {
            Clock::Sim(origin) => origin.elapsed().as_nanos(),
            Clock::Manual(t) => u128::from(t.load(std::sync::atomic::Ordering::SeqCst)),
        }
    }
}

impl Inner {
    /// Something touches segment `path`: its recovery, if one is pending, ended at an earlier
    /// instant, so the file as it is now is what recovery kept.
    fn touch(&mut self, path: &str) {
        let now = self.clock.now();
        let Some(r) = self.recovering.get_mut(path) else {
            return;
        };
        match r.first_touch {
            None => r.first_touch = Some(now),
            Some(t) if now > t => {
                let len = self.files.get(path).map_or(0, |f| f.current.len() as u64);
                self.judge_recovery(path, len);
            }
            Some(_) => {}
        }
    }

    /// Judges what recovery kept of segment `path`: `len` bytes.
    fn judge_recovery(&mut self, path: &str, len: u64) {
        let Some(r) = self.recovering.remove(path) else {
            return;
        };
        self.stats.recoveries_checked += 1;
        self.stats.recovery_cut_bytes += r.survived.saturating_sub(len);
        if len < r.synced {
            self.recovery_violations.push(format!(
                "recovery of {path} kept {len} bytes, below the {} synced before the power loss",
                r.synced
            ));
        } else if len > r.synced && !r.ends.contains(&len) {
            let before = r
                .ends
                .iter()
                .rev()
                .find(|&&e| e < len)
                .copied()
                .unwrap_or(0);
            self.recovery_violations.push(format!(
                "recovery of {path} kept {len} bytes, inside a write (the last whole write \
                 before it ends at {before}; {} bytes survived the power loss): a torn batch \
                 was kept",
                r.survived
            ));
        }
    }

    fn chance(&mut self, p: f64) -> bool {
        self.faults_on && p > 0.0 && self.rng.gen_bool(p.min(1.0))
    }

    fn io_error(&mut self, file: &str) -> Result<(), StorageError> {
        let p = self.faults.io_error_per_op;
        if self.chance(p) {
            self.stats.io_errors += 1;
            return Err(StorageError::Io {
                file: file.to_string(),
                message: "simulated I/O error".into(),
            });
        }
        Ok(())
    }

    fn used_bytes(&self) -> u64 {
        self.files
            .values()
            .map(|f| f.current.len().max(f.durable.len()) as u64)
            .sum()
    }
}

/// One node's disk. Clones share it: the simulator keeps one across the node's restarts.
#[derive(Clone)]
pub struct SimDisk {
    inner: Arc<Mutex<Inner>>,
}

impl SimDisk {
    pub fn new(rng: Box<dyn RngCore + Send>, faults: FaultConfig) -> SimDisk {
        SimDisk {
            inner: Arc::new(Mutex::new(Inner {
                files: BTreeMap::new(),
                rng,
                faults_on: true,
                stats: DiskStats::default(),
                sync_latency: std::time::Duration::from_millis(2),
                oracle: faults.latent_error_per_read == 0.0
                    && faults.misdirect_per_append == 0.0
                    && faults.io_error_per_op == 0.0,
                faults,
                writes: BTreeMap::new(),
                recovering: BTreeMap::new(),
                removed_untouched: BTreeMap::new(),
                recovery_violations: Vec::new(),
                clock: Clock::Sim(madsim::time::Instant::now()),
            })),
        }
    }

    /// Drives the recovery oracle's clock by hand (tests outside the simulator).
    pub fn with_manual_clock(self, clock: Arc<std::sync::atomic::AtomicU64>) -> SimDisk {
        self.lock().clock = Clock::Manual(clock);
        self
    }

    /// Judges every recovery still pending that has run (touched its segment), with the
    /// segment as it is now, and returns every violation the recovery oracle found.
    pub fn finish_recovery_checks(&self) -> Vec<String> {
        let mut inner = self.lock();
        let touched: Vec<(String, u64)> = inner
            .recovering
            .iter()
            .filter(|(_, r)| r.first_touch.is_some())
            .map(|(p, _)| {
                let len = inner.files.get(p).map_or(0, |f| f.current.len() as u64);
                (p.clone(), len)
            })
            .collect();
        for (path, len) in touched {
            inner.judge_recovery(&path, len);
        }
        // Removed untouched, and their directory kept: recovery removed them.
        let removed: Vec<(String, Recovering)> = std::mem::take(&mut inner.removed_untouched)
            .into_values()
            .flatten()
            .collect();
        for (path, r) in removed {
            inner.recovering.insert(path.clone(), r);
            inner.judge_recovery(&path, 0);
        }
        inner.recovery_violations.clone()
    }

    /// Sets how long a sync takes (2 ms unless set): appends made meanwhile stay unsynced.
    pub fn with_sync_latency(self, latency: std::time::Duration) -> SimDisk {
        self.lock().sync_latency = latency;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("sim disk lock poisoned")
    }

    /// The directory `dir` of this disk, as a [`Storage`].
    pub fn dir(&self, dir: &str) -> SimDir {
        SimDir {
            disk: self.clone(),
            prefix: format!("{}/", dir.trim_end_matches('/')),
        }
    }

    /// Turns the read, write and I/O-error faults on or off (crashes stay the caller's).
    pub fn set_faults(&self, on: bool) {
        self.lock().faults_on = on;
    }

    pub fn stats(&self) -> DiskStats {
        self.lock().stats.clone()
    }

    /// Bytes the files take (each file's longer of its written and its synced contents).
    pub fn used_bytes(&self) -> u64 {
        self.lock().used_bytes()
    }

    /// Sets how many bytes the disk holds (`None`: unbounded). Appends that would go past it
    /// fail with `NoSpace`, whether or not the other faults are on: a full disk is the
    /// nemesis's to fill and empty.
    pub fn set_capacity(&self, capacity_bytes: Option<u64>) {
        self.lock().faults.capacity_bytes = capacity_bytes;
    }

    /// Names of every file on the disk, with their directories.
    pub fn paths(&self) -> Vec<String> {
        self.lock().files.keys().cloned().collect()
    }

    /// Flips the bits `mask` of the byte at `pos` of `path`, for good (targeted damage in
    /// tests). Returns whether the file has such a byte.
    pub fn damage(&self, path: &str, pos: usize, mask: u8) -> bool {
        let mut inner = self.lock();
        let Some(file) = inner.files.get_mut(path) else {
            return false;
        };
        if pos >= file.current.len() {
            return false;
        }
        file.current[pos] ^= mask;
        if pos < file.durable.len() {
            file.durable[pos] ^= mask;
        }
        true
    }

    /// A power loss: every file keeps its synced bytes and a sector-aligned prefix of its
    /// pending ones, the next sector possibly torn; an unsynced truncation may be undone.
    pub fn crash(&self) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        inner.stats.crashes += 1;
        let sector = inner.faults.sector_bytes.max(1);
        for (path, file) in inner.files.iter_mut() {
            let start = file.pending_start();
            let truncation_pending = file.durable.len() > start;
            let reverted = truncation_pending && inner.rng.gen_bool(0.5);
            let survived = if reverted {
                file.durable.clone()
            } else {
                let pending = file.current.len() - start;
                // Cut at a sector boundary (in file offsets) within the pending bytes.
                let first_boundary = start.div_ceil(sector) * sector;
                let boundaries: Vec<usize> = (first_boundary..=file.current.len())
                    .step_by(sector)
                    .collect();
                let cut = if pending == 0 || boundaries.is_empty() || inner.rng.gen_bool(0.2) {
                    start
                } else {
                    boundaries[inner.rng.gen_range(0..boundaries.len())]
                };
                let mut survived = file.durable[..start.min(file.durable.len())].to_vec();
                survived.extend_from_slice(&file.current[start..cut]);
                if inner.faults.torn_writes && cut < file.current.len() && inner.rng.gen_bool(0.5) {
                    // The sector after the cut was being written: part of it made it.
                    let end = (cut + sector).min(file.current.len());
                    let torn = inner.rng.gen_range(1..=end - cut);
                    survived.extend_from_slice(&file.current[cut..cut + torn]);
                    inner.stats.torn_sectors += 1;
                }
                inner.stats.lost_pending_bytes +=
                    (file.current.len() - survived.len().min(file.current.len())) as u64;
                survived
            };
            if inner.oracle {
                if let Some(w) = inner.writes.get_mut(path) {
                    let len = survived.len() as u64;
                    let mut ends = if reverted {
                        w.durable.clone()
                    } else {
                        w.current.clone()
                    };
                    ends.retain(|&e| e <= len);
                    w.synced = w.synced.min(start as u64).min(len);
                    inner.recovering.insert(
                        path.clone(),
                        Recovering {
                            synced: w.synced,
                            survived: len,
                            ends: ends.clone(),
                            first_touch: None,
                        },
                    );
                    w.current = ends.clone();
                    w.durable = ends;
                }
            }
            file.settle(survived);
        }
    }
}

/// One directory of a [`SimDisk`].
#[derive(Clone)]
pub struct SimDir {
    disk: SimDisk,
    prefix: String,
}

impl SimDir {
    fn path(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Runs `change` on file `name`, after the chance of an I/O error.
    fn change_file(
        &self,
        name: &str,
        change: impl FnOnce(&mut ModelFile),
    ) -> Result<(), StorageError> {
        let path = self.path(name);
        let mut inner = self.disk.lock();
        inner.io_error(name)?;
        change(inner.files.get_mut(&path).ok_or_else(|| not_found(name))?);
        Ok(())
    }
}

fn not_found(name: &str) -> StorageError {
    StorageError::NotFound(name.to_string())
}

impl Storage for SimDir {
    fn create(&mut self, name: &str) -> Result<(), StorageError> {
        let path = self.path(name);
        let mut inner = self.disk.lock();
        inner.io_error(name)?;
        if inner.files.contains_key(&path) {
            return Err(StorageError::AlreadyExists(name.to_string()));
        }
        if is_segment(&path) && !path.ends_with("/00000000000000000000.log") {
            inner.stats.segment_rolls += 1;
        }
        if inner.oracle && is_segment(&path) {
            inner.recovering.remove(&path);
            inner.writes.insert(
                path.clone(),
                Writes {
                    current: vec![0],
                    durable: Vec::new(),
                    synced: 0,
                },
            );
        }
        inner.files.insert(path, ModelFile::default());
        Ok(())
    }

    fn append(&mut self, name: &str, data: &[u8]) -> Result<(), StorageError> {
        let path = self.path(name);
        let mut inner = self.disk.lock();
        inner.touch(&path);
        inner.io_error(name)?;
        if let Some(capacity) = inner.faults.capacity_bytes {
            if inner.used_bytes() + data.len() as u64 > capacity {
                inner.stats.full_disk_errors += 1;
                return Err(StorageError::NoSpace);
            }
        }
        let p = inner.faults.misdirect_per_append;
        let misdirect = inner.chance(p);
        let sector = inner.faults.sector_bytes.max(1);
        let target_sector = {
            let len = inner
                .files
                .get(&path)
                .ok_or_else(|| not_found(name))?
                .current
                .len();
            if misdirect && len >= sector {
                Some(inner.rng.gen_range(0..len / sector) * sector)
            } else {
                None
            }
        };
        let inner = &mut *inner;
        let file = inner.files.get_mut(&path).ok_or_else(|| not_found(name))?;
        let at = file.current.len();
        match target_sector {
            None => {
                file.append(data);
                let end = file.current.len() as u64;
                if let Some(w) = inner.writes.get_mut(&path) {
                    w.current.push(end);
                }
            }
            Some(wrong) => {
                // The bytes land on an earlier sector; where they were meant to go stays zero.
                file.current.resize(at + data.len(), 0);
                let end = (wrong + data.len()).min(at);
                file.current[wrong..end].copy_from_slice(&data[..end - wrong]);
                file.dirty_from = file.dirty_from.min(wrong);
                inner.stats.misdirected_writes += 1;
            }
        }
        Ok(())
    }

    fn read_at(&self, name: &str, pos: u64, len: usize) -> Result<Bytes, StorageError> {
        let path = self.path(name);
        let mut inner = self.disk.lock();
        inner.touch(&path);
        inner.io_error(name)?;
        let p = inner.faults.latent_error_per_read;
        let rot = inner.chance(p);
        let sector = inner.faults.sector_bytes.max(1);
        let size = inner
            .files
            .get(&path)
            .ok_or_else(|| not_found(name))?
            .current
            .len();
        let start = (pos as usize).min(size);
        let end = start.saturating_add(len).min(size);
        if rot && end > start {
            // A sector this read covers has gone bad: flip one bit in it, for good.
            let first = start / sector;
            let last = (end - 1) / sector;
            let bad = inner.rng.gen_range(first..=last);
            let at = (bad * sector + inner.rng.gen_range(0..sector)).clamp(start, end - 1);
            let bit = 1u8 << inner.rng.gen_range(0..8);
            let file = inner.files.get_mut(&path).expect("checked above");
            file.current[at] ^= bit;
            if at < file.durable.len() {
                file.durable[at] ^= bit;
            }
            inner.stats.latent_errors += 1;
        }
        let file = inner.files.get(&path).expect("checked above");
        Ok(file.read(pos, len))
    }

    fn len(&self, name: &str) -> Result<u64, StorageError> {
        let mut inner = self.disk.lock();
        inner.touch(&self.path(name));
        Ok(inner
            .files
            .get(&self.path(name))
            .ok_or_else(|| not_found(name))?
            .current
            .len() as u64)
    }

    fn truncate(&mut self, name: &str, len: u64) -> Result<(), StorageError> {
        self.disk.lock().touch(&self.path(name));
        self.change_file(name, |f| f.truncate(len))?;
        if let Some(w) = self.disk.lock().writes.get_mut(&self.path(name)) {
            w.current.retain(|&e| e <= len);
            if w.current.last() != Some(&len) {
                w.current.push(len);
            }
            w.synced = w.synced.min(len);
        }
        Ok(())
    }

    fn sync(&mut self, name: &str) -> Result<(), StorageError> {
        self.disk.lock().touch(&self.path(name));
        self.change_file(name, ModelFile::sync)?;
        let mut inner = self.disk.lock();
        let len = inner
            .files
            .get(&self.path(name))
            .map_or(0, |f| f.current.len() as u64);
        if let Some(w) = inner.writes.get_mut(&self.path(name)) {
            w.durable = w.current.clone();
            w.synced = len;
        }
        Ok(())
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<(), StorageError> {
        let (src, dst) = (self.path(from), self.path(to));
        let mut inner = self.disk.lock();
        inner.io_error(from)?;
        let file = inner.files.remove(&src).ok_or_else(|| not_found(from))?;
        if inner.oracle && is_segment(&dst) {
            // A segment replaced whole (the log cleaner's swap, renamed over the group's first
            // segment, at its install or by recovery): the old file's recovery is moot, and
            // the new one was synced whole before the rename (it is judged from here on as
            // one write).
            inner.recovering.remove(&dst);
            let len = file.current.len() as u64;
            let writes = inner.writes.remove(&src).unwrap_or(Writes {
                current: vec![0, len],
                durable: vec![0, len],
                synced: len.min(file.durable.len() as u64),
            });
            inner.writes.insert(dst.clone(), writes);
        } else {
            inner.writes.remove(&src);
        }
        inner.files.insert(dst, file);
        Ok(())
    }

    fn remove(&mut self, name: &str) -> Result<(), StorageError> {
        let path = self.path(name);
        let mut inner = self.disk.lock();
        // Nothing touched it since the power loss (asked before this touch counts).
        let untouched = inner
            .recovering
            .get(&path)
            .is_some_and(|r| r.first_touch.is_none());
        inner.touch(&path);
        inner.io_error(name)?;
        inner
            .files
            .remove(&path)
            .map(|_| ())
            .ok_or_else(|| not_found(name))?;
        let dir = path.rsplit_once('/').map_or("", |(d, _)| d).to_string();
        if let Some(r) = untouched.then(|| inner.recovering.remove(&path)).flatten() {
            inner
                .removed_untouched
                .entry(dir)
                .or_default()
                .push((path.clone(), r));
        } else if name == "partition.metadata" {
            // The whole directory goes: its untouched segments were deleted, not recovered.
            inner.removed_untouched.remove(&dir);
        } else {
            // Removed by the recovery that touched it first: it kept nothing.
            inner.judge_recovery(&path, 0);
        }
        inner.writes.remove(&path);
        Ok(())
    }

    fn list(&self) -> Result<Vec<String>, StorageError> {
        let inner = self.disk.lock();
        Ok(inner
            .files
            .keys()
            .filter_map(|k| k.strip_prefix(&self.prefix))
            .filter(|rest| !rest.contains('/'))
            .map(str::to_string)
            .collect())
    }
}

/// The broker's view of the disk (`keel_node::storage::Disk::Virtual`).
impl keel_node::storage::VirtualDisk for SimDisk {
    fn dir(&self, path: &str) -> Box<dyn keel_node::storage::VirtualDir> {
        Box::new(SimDisk::dir(self, path))
    }

    fn sync_latency(&self) -> std::time::Duration {
        self.lock().sync_latency
    }

    /// A whole replica directory removed (its replica deleted or reassigned away, perhaps
    /// while its segments wait for their recovery to be judged after a power loss): the
    /// recovery oracle forgets those segments unjudged. The replica is gone, not recovered;
    /// judging its removal as a recovery that kept nothing was a false alarm (simulator seed
    /// 118 of the `added-with-stale-epoch` mix without the bug: a moved-away replica's broker
    /// lost power before it applied the removal, and deleted the directory after restarting).
    fn remove_dir_all(&self, path: &str) -> std::io::Result<()> {
        let mut dir = SimDisk::dir(self, path);
        let names = dir.list().map_err(std::io::Error::other)?;
        {
            let mut inner = self.lock();
            for name in &names {
                inner.recovering.remove(&dir.path(name));
            }
        }
        for name in names {
            dir.remove(&name).map_err(std::io::Error::other)?;
        }
        Ok(())
    }

    fn subdirs(&self, path: &str) -> Vec<String> {
        let prefix = format!("{}/", path.trim_end_matches('/'));
        let mut names: Vec<String> = self
            .paths()
            .iter()
            .filter_map(|p| p.strip_prefix(&prefix))
            .filter_map(|rest| rest.split_once('/').map(|(dir, _)| dir.to_string()))
            .collect();
        names.dedup();
        names
    }
}

#[cfg(test)]
mod tests;
