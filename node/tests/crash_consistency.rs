//! Crash consistency of the storage the broker ships, under the power-loss model of ALICE
//! (Pillai et al., "All File Systems Are Not Created Equal", OSDI 2014) and CrashMonkey
//! (Mohan et al., OSDI 2018).
//!
//! Each scenario runs keel's real storage code (core's `PartitionReplica`, `Log` and
//! `QuorumNode` on node's `FileStorage`, called as the broker calls them) in a scratch
//! directory, through a [`Recorder`]: a `FileSystem` that makes every call and writes it down
//! (mkdir, create, write, ftruncate, fdatasync, directory fsync, rename, unlink). From that
//! record the test builds the disk states a power loss could leave, at every sync call of the
//! record (crashing before it) and at its end:
//! - a write not yet covered by an `fdatasync` of its file may be lost, whole or in part, at
//!   512-byte sector granularity (each sector it touches kept or lost; a lost sector below a
//!   kept one reads as zeros; the file size may cover a lost sector, which then reads as
//!   zeros), and an `ftruncate` not yet covered may be undone;
//! - a create, rename, unlink or mkdir not yet covered by an `fsync` of its directory may be
//!   undone (a file whose name is lost is gone, whatever was synced in it).
//!
//! Which of those uncovered changes survive: every combination when there are at most
//! [`EXHAUSTIVE_UNITS_MAX`]; otherwise, a torn tail in program order, each one lost alone and
//! each file's torn tail alone, at every change (or at [`POSITIONS_MAX`] of them when there are
//! more), and [`SAMPLES`] combinations drawn from a PRNG seeded with the crash point (so a run
//! is deterministic); and a few draws where a lost sector's file size survives. A state is
//! checked once against each set of acknowledgements it can meet.
//!
//! Each state is written to a directory and opened with the broker's recovery (the calls
//! `Broker::open_partition` and `cluster::Cluster::start` make, on `FileStorage` over the OS),
//! and the test asserts what the broker relies on: recovery neither fails nor panics nor finds
//! the replica damaged; everything acknowledged when the power went is there (acknowledged:
//! the storage call the broker waits for before it answers returned — a sync round for the
//! durable end a follower reports, a high watermark write for acks=all, a role change for the
//! leader epoch, a raft poll for a committed command, a sync for a compacted key's latest
//! record); and nothing is served that was not written (every batch read back passed its CRC on
//! the way out, is byte for byte one that was written at its offset, and starts where the one
//! before it ended).
//!
//! The mutants at the end drop one sync from the record (the recorder neither makes nor
//! records it) and assert that the checker then finds acknowledged data lost: the checker can
//! fail.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{self, IoSlice};
use std::os::unix::fs::MetadataExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use keel_core::batch::{BatchBuilder, BatchHeader, Compression};
use keel_core::controller::{BrokerId, MetadataState, NewTopic, Partition, TopicDefaults, TopicId};
use keel_core::log::cleaner::{CleanInputs, CleanerConfig};
use keel_core::log::LogConfig;
use keel_core::partition::checkpoint::Checkpoint;
use keel_core::partition::{
    FetchPayload, FetchRequest, PartitionReplica, ProduceRules, ReplicaConfig, StateWrite,
};
use keel_core::producer::ProducerCheck;
use keel_core::quorum::{ProposalId, ProposalOutcome, QuorumConfig, QuorumNode};
use keel_core::storage::{read_all, write_atomic, MemStorage, Storage};
use keel_core::{LeaderEpoch, Offset, ProducerId};
use keel_node::storage::{FileStorage, FileSystem, Os};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The sector size: a write is torn at these boundaries of the file.
const SECTOR_BYTES: u64 = 512;
/// Up to this many uncovered changes at a crash point, every combination of them is checked.
const EXHAUSTIVE_UNITS_MAX: usize = 6;
/// Random combinations checked at a crash point with more uncovered changes.
const SAMPLES: usize = 12;
/// With more uncovered changes than this, the torn tails and single losses are taken at this
/// many of them (spread evenly, and the last few, where a torn tail matters most).
const POSITIONS_MAX: usize = 16;
/// Violations kept for the report (the count goes on).
const VIOLATIONS_SHOWN_MAX: usize = 8;

// --- The recorder ---------------------------------------------------------------------------

/// One call that changed the disk, as recorded. Paths are relative to the scenario's root
/// (`""` is the root); files are the recorder's inode numbers, so that a rename or an unlink
/// follows the file and not its name.
#[derive(Clone, Debug)]
enum Op {
    Mkdir { path: String },
    Create { path: String, ino: u64 },
    Write { ino: u64, at: u64, data: Vec<u8> },
    SetLen { ino: u64, len: u64 },
    SyncData { ino: u64 },
    SyncDir { path: String },
    Rename { from: String, to: String, ino: u64 },
    Unlink { path: String, ino: u64 },
}

impl Op {
    /// The directory whose entries this op changes, if it changes any.
    fn entry_dir(&self) -> Option<&str> {
        match self {
            Op::Mkdir { path } | Op::Create { path, .. } | Op::Unlink { path, .. } => {
                Some(parent(path))
            }
            Op::Rename { from, to, .. } => {
                assert_eq!(parent(from), parent(to), "renames stay in their directory");
                Some(parent(from))
            }
            _ => None,
        }
    }

    /// The file whose contents this op changes, if any.
    fn data_ino(&self) -> Option<u64> {
        match self {
            Op::Write { ino, .. } | Op::SetLen { ino, .. } => Some(*ino),
            _ => None,
        }
    }

    fn is_sync(&self) -> bool {
        matches!(self, Op::SyncData { .. } | Op::SyncDir { .. })
    }
}

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(dir, _)| dir)
}

/// What kind of directory change a dropped directory sync follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EntryKind {
    Mkdir,
    Create,
    Rename,
    Unlink,
}

/// A sync the recorder drops (neither makes nor records), as if the call were missing from
/// `FileStorage`: the checker must then find a violation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mutant {
    None,
    /// Every `fdatasync` of a file whose name contains this.
    FileSync(&'static str),
    /// Every directory `fsync` whose directory's latest change was this kind of change to a
    /// name containing this (the sync that makes that change durable).
    DirSyncAfter(EntryKind, &'static str),
}

#[derive(Default)]
struct Recording {
    ops: Vec<Op>,
    /// The file system's (device, inode) of each file the recorder saw created.
    inodes: HashMap<(u64, u64), u64>,
    next_ino: u64,
    /// Per directory, its latest change: kind and name.
    last_entry: HashMap<String, (EntryKind, String)>,
    /// Syncs the mutant dropped.
    dropped: usize,
}

impl Recording {
    fn ino_of(&self, meta: &std::fs::Metadata) -> u64 {
        *self
            .inodes
            .get(&(meta.dev(), meta.ino()))
            .expect("every file the storage changes was created under the recorder")
    }
}

/// A `FileSystem` that makes each call with [`Os`] and records it (see the module
/// documentation), except the syncs its [`Mutant`] drops.
#[derive(Clone)]
struct Recorder {
    root: PathBuf,
    mutant: Mutant,
    recording: Arc<Mutex<Recording>>,
}

impl Recorder {
    fn new(root: &Path, mutant: Mutant) -> Recorder {
        Recorder {
            root: root.to_path_buf(),
            mutant,
            recording: Arc::new(Mutex::new(Recording::default())),
        }
    }

    fn rel(&self, path: &Path) -> String {
        let rel = path
            .strip_prefix(&self.root)
            .expect("the storage stays under the scenario's root");
        rel.to_str().expect("test paths are UTF-8").to_string()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recording> {
        self.recording.lock().expect("recording poisoned")
    }

    /// How many calls were recorded so far: a crash at or after this point has every
    /// acknowledgement made now.
    fn position(&self) -> usize {
        self.lock().ops.len()
    }

    fn entry(&self, r: &mut Recording, kind: EntryKind, path: &str) {
        r.last_entry.insert(
            parent(path).to_string(),
            (kind, path.rsplit('/').next().unwrap_or(path).to_string()),
        );
    }
}

impl FileSystem for Recorder {
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        let mut r = self.lock();
        Os.create_dir(path)?;
        let rel = self.rel(path);
        self.entry(&mut r, EntryKind::Mkdir, &rel);
        r.ops.push(Op::Mkdir { path: rel });
        Ok(())
    }

    fn open(&self, path: &Path, create: bool) -> io::Result<File> {
        let mut r = self.lock();
        let file = Os.open(path, create)?;
        if create {
            let meta = file.metadata()?;
            let ino = r.next_ino;
            r.next_ino += 1;
            r.inodes.insert((meta.dev(), meta.ino()), ino);
            let rel = self.rel(path);
            self.entry(&mut r, EntryKind::Create, &rel);
            r.ops.push(Op::Create { path: rel, ino });
        }
        Ok(file)
    }

    fn append(&self, file: &File, path: &Path, parts: &[IoSlice<'_>]) -> io::Result<usize> {
        let mut r = self.lock();
        let meta = file.metadata()?;
        let n = Os.append(file, path, parts)?;
        let mut data = Vec::with_capacity(n);
        for part in parts {
            let take = (n - data.len()).min(part.len());
            data.extend_from_slice(&part[..take]);
        }
        let ino = r.ino_of(&meta);
        r.ops.push(Op::Write {
            ino,
            at: meta.len(),
            data,
        });
        Ok(n)
    }

    fn set_len(&self, file: &File, path: &Path, len: u64) -> io::Result<()> {
        let mut r = self.lock();
        Os.set_len(file, path, len)?;
        let ino = r.ino_of(&file.metadata()?);
        r.ops.push(Op::SetLen { ino, len });
        Ok(())
    }

    fn sync_data(&self, file: &File, path: &Path) -> io::Result<()> {
        let mut r = self.lock();
        if let Mutant::FileSync(name) = self.mutant {
            if self.rel(path).contains(name) {
                r.dropped += 1;
                return Ok(());
            }
        }
        Os.sync_data(file, path)?;
        let ino = r.ino_of(&file.metadata()?);
        r.ops.push(Op::SyncData { ino });
        Ok(())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let mut r = self.lock();
        let rel = self.rel(path);
        if let Mutant::DirSyncAfter(kind, name) = self.mutant {
            if r.last_entry
                .get(&rel)
                .is_some_and(|(k, n)| *k == kind && n.contains(name))
            {
                r.dropped += 1;
                return Ok(());
            }
        }
        Os.sync_dir(path)?;
        r.ops.push(Op::SyncDir { path: rel });
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut r = self.lock();
        let ino = r.ino_of(&std::fs::metadata(from)?);
        Os.rename(from, to)?;
        let (from, to) = (self.rel(from), self.rel(to));
        self.entry(&mut r, EntryKind::Rename, &to);
        r.ops.push(Op::Rename { from, to, ino });
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut r = self.lock();
        let ino = r.ino_of(&std::fs::metadata(path)?);
        Os.remove_file(path)?;
        let rel = self.rel(path);
        self.entry(&mut r, EntryKind::Unlink, &rel);
        r.ops.push(Op::Unlink { path: rel, ino });
        Ok(())
    }
}

/// What a scenario acknowledged, by position in the record: the entry at position `p` holds
/// for every crash at or after `p` (until the next entry).
struct Marks<A> {
    marks: Vec<(usize, A)>,
}

impl<A: Clone + Default> Marks<A> {
    fn new() -> Self {
        Marks { marks: Vec::new() }
    }

    fn mark(&mut self, recorder: &Recorder, acked: &A) {
        self.marks.push((recorder.position(), acked.clone()));
    }

    /// What was acknowledged from `position` on, pushed after a later mark was already made
    /// for the same position or an earlier one (the marks stay in order).
    fn mark_at(&mut self, position: usize, acked: &A) {
        assert!(
            self.marks.last().is_none_or(|(p, _)| *p <= position),
            "marks stay in position order"
        );
        self.marks.push((position, acked.clone()));
    }

    /// What was acknowledged when the power went before the call at `position`, and which
    /// mark that is (`None`: nothing yet).
    fn at(&self, position: usize) -> Option<(usize, &A)> {
        self.marks
            .iter()
            .enumerate()
            .rev()
            .find(|(_, (p, _))| *p <= position)
            .map(|(i, (_, a))| (i, a))
    }
}

// --- Crash states ---------------------------------------------------------------------------

/// One change not yet covered by a sync at a crash point: a directory change (the whole op),
/// an ftruncate, or one sector's part of a write.
#[derive(Clone, Copy, Debug)]
struct Unit {
    op: usize,
    /// For a write: the bytes `[from, to)` of the file it covers.
    piece: Option<(u64, u64)>,
}

/// What became of an uncovered change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Kept,
    Lost,
    /// A write's sector whose data was lost but whose file size survived: zeros.
    SizeOnly,
}

/// A disk as a power loss left it: directories and files (contents), by path.
#[derive(Hash, PartialEq, Eq)]
struct DiskState {
    dirs: BTreeSet<String>,
    files: BTreeMap<String, Vec<u8>>,
}

impl DiskState {
    fn digest(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.hash(&mut h);
        h.finish()
    }

    /// Writes the state under `dir` (emptied first).
    fn write_to(&self, dir: &Path) {
        if dir.exists() {
            std::fs::remove_dir_all(dir).expect("clear the scratch directory");
        }
        std::fs::create_dir_all(dir).expect("make the scratch directory");
        for d in &self.dirs {
            std::fs::create_dir_all(dir.join(d)).expect("make a directory");
        }
        for (path, contents) in &self.files {
            std::fs::write(dir.join(path), contents).expect("write a file");
        }
    }
}

/// The changes not covered by a sync when the power goes before call `k` of `ops`.
fn uncovered(ops: &[Op], k: usize) -> Vec<Unit> {
    let mut dir_synced: HashMap<&str, usize> = HashMap::new();
    let mut data_synced: HashMap<u64, usize> = HashMap::new();
    for (i, op) in ops[..k].iter().enumerate() {
        match op {
            Op::SyncDir { path } => {
                dir_synced.insert(path, i);
            }
            Op::SyncData { ino } => {
                data_synced.insert(*ino, i);
            }
            _ => {}
        }
    }
    let mut units = Vec::new();
    for (i, op) in ops[..k].iter().enumerate() {
        let covered = |sync: Option<&usize>| sync.is_some_and(|&s| s > i);
        if let Some(dir) = op.entry_dir() {
            if !covered(dir_synced.get(dir)) {
                units.push(Unit { op: i, piece: None });
            }
        }
        if let Some(ino) = op.data_ino() {
            if covered(data_synced.get(&ino)) {
                continue;
            }
            match op {
                Op::Write { at, data, .. } => {
                    let end = at + data.len() as u64;
                    let mut from = *at;
                    while from < end {
                        let to = ((from / SECTOR_BYTES + 1) * SECTOR_BYTES).min(end);
                        units.push(Unit {
                            op: i,
                            piece: Some((from, to)),
                        });
                        from = to;
                    }
                }
                _ => units.push(Unit { op: i, piece: None }),
            }
        }
    }
    units
}

/// The disk after the calls before `k`, with the uncovered `units` as `outcomes` say.
fn crash_state(ops: &[Op], k: usize, units: &[Unit], outcomes: &[Outcome]) -> DiskState {
    let mut fate: HashMap<usize, Vec<(Unit, Outcome)>> = HashMap::new();
    for (unit, outcome) in units.iter().zip(outcomes) {
        fate.entry(unit.op).or_default().push((*unit, *outcome));
    }
    enum Entry {
        Dir,
        File(u64),
    }
    let mut names: BTreeMap<String, Entry> = BTreeMap::new();
    let mut contents: HashMap<u64, Vec<u8>> = HashMap::new();
    for (i, op) in ops[..k].iter().enumerate() {
        let pending = fate.get(&i);
        let whole_kept = pending.is_none_or(|f| f.iter().all(|(_, o)| *o == Outcome::Kept));
        match op {
            Op::Mkdir { path } if whole_kept => {
                names.insert(path.clone(), Entry::Dir);
            }
            Op::Create { path, ino } if whole_kept => {
                names.insert(path.clone(), Entry::File(*ino));
                contents.entry(*ino).or_default();
            }
            Op::Rename { from, to, ino } if whole_kept => {
                if matches!(names.get(from), Some(Entry::File(f)) if f == ino) {
                    names.remove(from);
                }
                names.insert(to.clone(), Entry::File(*ino));
            }
            Op::Unlink { path, ino } if whole_kept => {
                if matches!(names.get(path), Some(Entry::File(f)) if f == ino) {
                    names.remove(path);
                }
            }
            Op::SetLen { ino, len } if whole_kept => {
                contents.entry(*ino).or_default().resize(*len as usize, 0);
            }
            Op::Write { ino, at, data } => {
                let file = contents.entry(*ino).or_default();
                let pieces: Vec<(u64, u64, Outcome)> = match pending {
                    None => vec![(*at, at + data.len() as u64, Outcome::Kept)],
                    Some(f) => f
                        .iter()
                        .map(|(u, o)| {
                            let (from, to) = u.piece.expect("a write's units are pieces");
                            (from, to, *o)
                        })
                        .collect(),
                };
                for (from, to, outcome) in pieces {
                    let (from, to) = (from as usize, to as usize);
                    match outcome {
                        Outcome::Lost => {}
                        Outcome::SizeOnly => {
                            if file.len() < to {
                                file.resize(to, 0);
                            }
                        }
                        Outcome::Kept => {
                            if file.len() < to {
                                file.resize(to, 0);
                            }
                            let skip = from - *at as usize;
                            file[from..to].copy_from_slice(&data[skip..skip + (to - from)]);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let reachable = |path: &str, names: &BTreeMap<String, Entry>| {
        let mut at = parent(path);
        while !at.is_empty() {
            if !matches!(names.get(at), Some(Entry::Dir)) {
                return false;
            }
            at = parent(at);
        }
        true
    };
    let mut state = DiskState {
        dirs: BTreeSet::new(),
        files: BTreeMap::new(),
    };
    for (path, entry) in &names {
        if !reachable(path, &names) {
            continue;
        }
        match entry {
            Entry::Dir => {
                state.dirs.insert(path.clone());
            }
            Entry::File(ino) => {
                let data = contents.get(ino).cloned().unwrap_or_default();
                state.files.insert(path.clone(), data);
            }
        }
    }
    state
}

/// Which combinations of the uncovered `units` to build (see the module documentation).
fn outcome_sets(ops: &[Op], units: &[Unit], rng: &mut StdRng) -> Vec<Vec<Outcome>> {
    use Outcome::*;
    let n = units.len();
    let mut sets = vec![vec![Kept; n], vec![Lost; n]];
    if n <= EXHAUSTIVE_UNITS_MAX {
        for mask in 1..(1u32 << n).saturating_sub(1) {
            sets.push(
                (0..n)
                    .map(|i| if mask & (1 << i) != 0 { Kept } else { Lost })
                    .collect(),
            );
        }
    } else {
        // A torn tail in program order, each change lost alone, and each file's torn tail, at
        // every change or (many changes) at some.
        let positions: BTreeSet<usize> = if n <= POSITIONS_MAX {
            (0..n).collect()
        } else {
            (0..POSITIONS_MAX)
                .map(|i| i * n / POSITIONS_MAX)
                .chain(n - 4..n)
                .collect()
        };
        for &cut in &positions {
            sets.push((0..n).map(|i| if i < cut { Kept } else { Lost }).collect());
        }
        for &lost in &positions {
            sets.push(
                (0..n)
                    .map(|i| if i == lost { Lost } else { Kept })
                    .collect(),
            );
        }
        let file_of = |u: &Unit| ops[u.op].data_ino();
        for &cut in &positions {
            let Some(ino) = file_of(&units[cut]) else {
                continue;
            };
            sets.push(
                (0..n)
                    .map(|i| {
                        if i >= cut && file_of(&units[i]) == Some(ino) {
                            Lost
                        } else {
                            Kept
                        }
                    })
                    .collect(),
            );
        }
        for _ in 0..SAMPLES {
            sets.push((0..n).map(|_| random_outcome(rng, false)).collect());
        }
    }
    // Sectors whose size survived but not their data, among the rest.
    if units.iter().any(|u| u.piece.is_some()) {
        for _ in 0..SAMPLES / 3 {
            sets.push(
                units
                    .iter()
                    .map(|u| random_outcome(rng, u.piece.is_some()))
                    .collect(),
            );
        }
    }
    sets
}

fn random_outcome(rng: &mut StdRng, size_only: bool) -> Outcome {
    match rng.gen_range(0..if size_only { 3 } else { 2 }) {
        0 => Outcome::Kept,
        1 => Outcome::Lost,
        _ => Outcome::SizeOnly,
    }
}

/// What exploring a scenario's crash states found.
#[derive(Debug, Default)]
struct Exploration {
    crash_points: usize,
    states_built: usize,
    states_checked: usize,
    violations: usize,
    shown: Vec<String>,
    /// Syncs the mutant dropped while the workload ran.
    dropped_syncs: usize,
}

/// Runs `workload` under a recorder with `mutant`, then checks every crash state with `check`
/// against what was acknowledged before the crash.
fn explore<A: Clone + Default>(
    name: &str,
    mutant: Mutant,
    workload: impl FnOnce(&Recorder, &mut Marks<A>),
    check: impl Fn(&Path, &A) -> Result<(), String>,
) -> Exploration {
    let scratch = scratch_dir();
    let root = scratch.path().join("run");
    std::fs::create_dir(&root).expect("run directory");
    let recorder = Recorder::new(&root, mutant);
    let mut marks = Marks::new();
    workload(&recorder, &mut marks);
    let (ops, dropped) = {
        let r = recorder.lock();
        (r.ops.clone(), r.dropped)
    };
    let mut points: Vec<usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, op)| op.is_sync())
        .map(|(i, _)| i)
        .collect();
    points.push(ops.len());
    let mut found = Exploration {
        crash_points: points.len(),
        dropped_syncs: dropped,
        ..Exploration::default()
    };
    let crash_dir = scratch.path().join("crash");
    let mut seen = HashSet::new();
    let nothing = A::default();
    for &k in &points {
        let (mark, acked) = marks.at(k).map_or((None, &nothing), |(i, a)| (Some(i), a));
        let units = uncovered(&ops, k);
        let mut rng = StdRng::seed_from_u64(k as u64);
        for outcomes in outcome_sets(&ops, &units, &mut rng) {
            let state = crash_state(&ops, k, &units, &outcomes);
            found.states_built += 1;
            // The same disk is checked again against other acknowledgements.
            if !seen.insert((mark, state.digest())) {
                continue;
            }
            found.states_checked += 1;
            state.write_to(&crash_dir);
            let verdict = catch_unwind(AssertUnwindSafe(|| check(&crash_dir, acked)))
                .unwrap_or_else(|panic| {
                    let message = panic
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_default();
                    Err(format!("recovery panicked: {message}"))
                });
            if let Err(why) = verdict {
                found.violations += 1;
                if found.shown.len() < VIOLATIONS_SHOWN_MAX {
                    let lost: Vec<String> = units
                        .iter()
                        .zip(&outcomes)
                        .filter(|(_, o)| **o != Outcome::Kept)
                        .map(|(u, o)| format!("{o:?} {:?}", brief(&ops[u.op])))
                        .collect();
                    found.shown.push(format!(
                        "crash before call {k} ({}), uncovered changes not kept: {lost:?}: {why}",
                        ops.get(k).map_or("the end".to_string(), brief)
                    ));
                }
            }
        }
    }
    println!(
        "{name} ({mutant:?}): {} calls recorded, {} syncs dropped, {} crash points, {} states \
         built, {} distinct states checked, {} violations",
        ops.len(),
        found.dropped_syncs,
        found.crash_points,
        found.states_built,
        found.states_checked,
        found.violations
    );
    for v in &found.shown {
        println!("  {v}");
    }
    found
}

/// A scratch directory in memory where there is one (`/dev/shm`): the test makes thousands
/// of syncs, which only the recorder needs, and writes thousands of small states.
fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = tempfile::tempdir_in(shm) {
            return dir;
        }
    }
    tempfile::tempdir().expect("scratch directory")
}

/// An op in a line.
fn brief(op: &Op) -> String {
    match op {
        Op::Write { ino, at, data } => format!("write #{ino} {at}+{}", data.len()),
        op => format!("{op:?}"),
    }
}

// --- The partition's files ------------------------------------------------------------------

const NOW_MS: i64 = 1_700_000_000_000;
/// The partition directory, as the broker names it under its data directory.
const PARTITION_DIR: &str = "data/t-0";
const PRODUCER: ProducerId = ProducerId(7);

fn b(id: i32) -> BrokerId {
    BrokerId(id)
}

/// Small segments, so that the workloads roll several.
fn log_config() -> LogConfig {
    LogConfig {
        segment_bytes_max: 1024,
        ..LogConfig::default()
    }
}

fn partition(leader: i32, epoch: i32, partition_epoch: i32, isr: &[i32]) -> Partition {
    Partition {
        replicas: vec![b(1), b(2), b(3)],
        isr: isr.iter().map(|&i| b(i)).collect(),
        leader: b(leader),
        leader_epoch: LeaderEpoch(epoch),
        partition_epoch,
        elr: Vec::new(),
        adding: Vec::new(),
        removing: Vec::new(),
    }
}

/// One client batch of the idempotent producer: about 220 bytes, so that a write spans a
/// sector boundary now and then.
fn client_batch(sequence: i32) -> keel_core::batch::Batch {
    BatchBuilder::new(Compression::None)
        .idempotent(PRODUCER, 0, sequence)
        .record(
            NOW_MS + sequence as i64,
            Some(format!("key-{sequence}").as_bytes()),
            Some(&[sequence as u8; 150]),
        )
        .build()
        .expect("a valid batch")
}

/// What a replica acknowledged (see the module documentation).
#[derive(Clone, Debug)]
struct ReplicaAcked {
    /// Offsets `[start, end)` must be in the log, each as the newest of its `versions`: the
    /// durable end a sync round returned (what a follower reports to its leader) and the high
    /// watermark, less what a truncation, a DeleteRecords or a restart under way may cut.
    start: Offset,
    end: Offset,
    /// The high watermark exposed after its write returned (acks=all is answered on it).
    high_watermark: Offset,
    /// The leader epoch a role change persisted before it returned.
    leader_epoch: LeaderEpoch,
    /// Every batch written at each base offset, oldest first, as stored.
    versions: Arc<BTreeMap<Offset, Vec<Bytes>>>,
    /// The newest acknowledged batch of the idempotent producer: a retry of it must be
    /// answered as a duplicate after recovery.
    retry: Option<BatchHeader>,
    /// Small files written atomically, by path under the root: the acknowledged contents.
    files: BTreeMap<String, Vec<u8>>,
}

impl Default for ReplicaAcked {
    fn default() -> Self {
        ReplicaAcked {
            start: Offset::ZERO,
            end: Offset::ZERO,
            high_watermark: Offset::ZERO,
            leader_epoch: LeaderEpoch::NONE,
            versions: Arc::default(),
            retry: None,
            files: BTreeMap::new(),
        }
    }
}

impl ReplicaAcked {
    fn written(&mut self, bytes: Bytes) {
        let base = BatchHeader::read(&bytes)
            .expect("a stored batch")
            .base_offset;
        Arc::make_mut(&mut self.versions)
            .entry(base)
            .or_default()
            .push(bytes);
    }
}

/// Opens the replica in `root`'s partition directory as `Broker::open_partition` does, and
/// checks it against `acked`.
fn check_replica(root: &Path, me: BrokerId, acked: &ReplicaAcked) -> Result<(), String> {
    for (path, contents) in &acked.files {
        match std::fs::read(root.join(path)) {
            Ok(found) if found == *contents => {}
            Ok(found) => {
                return Err(format!(
                    "{path} holds {:?}, not the acknowledged {:?}",
                    String::from_utf8_lossy(&found),
                    String::from_utf8_lossy(contents)
                ))
            }
            Err(e) => return Err(format!("{path}, written atomically: {e}")),
        }
    }
    // The broker's high watermark checkpoint, as `Broker::open` reads it (a crash may leave
    // the data directory without it).
    let checkpointed = match FileStorage::open(root.join("data")) {
        Ok(data) => Checkpoint::read(&data)
            .map_err(|e| format!("reading the high watermark checkpoint: {e}"))?
            .0
            .high_watermark(&(TOPIC.to_string(), 0), TOPIC_ID),
        Err(_) => None,
    };
    let dir = root.join(PARTITION_DIR);
    let open = || FileStorage::open(&dir).map_err(|e| format!("opening {PARTITION_DIR}: {e}"));
    let storage = open()?;
    let mut snapshots = open()?;
    let replica = PartitionReplica::recover_with_checkpoint(
        storage,
        &mut snapshots,
        log_config(),
        ProduceRules::default(),
        ReplicaConfig::new(me),
        NOW_MS,
        checkpointed,
    )
    .map_err(|e| format!("recovery failed: {e}"))?;
    if replica.is_damaged() {
        return Err(format!(
            "recovery found the replica damaged: {:?}",
            replica.state_report()
        ));
    }
    if replica.high_watermark() < acked.high_watermark {
        return Err(format!(
            "the high watermark went back from the acknowledged {} to {}",
            acked.high_watermark,
            replica.high_watermark()
        ));
    }
    if replica.leader_epoch() < acked.leader_epoch {
        return Err(format!(
            "the leader epoch went back from the acknowledged {} to {}",
            acked.leader_epoch,
            replica.leader_epoch()
        ));
    }
    let log = replica.log();
    if acked.start < acked.end && (log.log_start() > acked.start || log.end() < acked.end) {
        return Err(format!(
            "acknowledged offsets lost: the log holds [{}, {}), [{}, {}) was acknowledged",
            log.log_start(),
            log.end(),
            acked.start,
            acked.end
        ));
    }
    for batch in read_whole_log(log)? {
        let base = batch.base_offset();
        let versions = acked.versions.get(&base).map_or(&[][..], |v| &v[..]);
        if !versions.iter().any(|v| v == batch.bytes()) {
            return Err(format!(
                "served a batch at offset {base} that was never written there"
            ));
        }
        if base >= acked.start
            && base < acked.end
            && versions.last().is_some_and(|v| v != batch.bytes())
        {
            return Err(format!(
                "the acknowledged batch at offset {base} came back as an older one"
            ));
        }
    }
    if let Some(header) = &acked.retry {
        // Answered with its offsets, or, when it is older than the five batches a producer's
        // entry keeps, refused: either way not appended a second time.
        let oldest_kept = replica
            .producers()
            .entry(header.producer_id)
            .and_then(|e| e.batches().next().map(|b| b.first_seq));
        match replica.producers().check(header) {
            Ok(ProducerCheck::Duplicate { base_offset, .. })
                if base_offset == header.base_offset => {}
            Err(_) if oldest_kept.is_some_and(|s| s > header.base_sequence) => {}
            other => {
                return Err(format!(
                    "a retry of the acknowledged batch at {} is not answered as a duplicate: \
                     {other:?}",
                    header.base_offset
                ))
            }
        }
    }
    Ok(())
}

/// Every batch of a recovered log, from its start to its end, each CRC-checked by the read;
/// offsets dense (each batch starts where the one before ended).
fn read_whole_log<S: Storage>(
    log: &keel_core::log::Log<S>,
) -> Result<Vec<keel_core::batch::Batch>, String> {
    let mut all = Vec::new();
    let mut at = log.log_start();
    while at < log.end() {
        let batches = log
            .read(at, 1 << 20, log.end())
            .map_err(|e| format!("reading offset {at} of the recovered log: {e}"))?;
        if batches.is_empty() {
            return Err(format!(
                "offset {at} is below the log end but reads nothing"
            ));
        }
        for batch in batches {
            let first = all.is_empty() && batch.base_offset() <= at;
            if batch.base_offset() != at && !first {
                return Err(format!(
                    "offsets not dense: a batch at {} follows the end {at}",
                    batch.base_offset()
                ));
            }
            at = batch.next_offset();
            all.push(batch);
        }
    }
    Ok(all)
}

/// The partition's topic and id, as the broker's high watermark checkpoint names them.
const TOPIC: &str = "t";
const TOPIC_ID: &str = "AAAAAAAAAAAAAAAAAAAAAQ";

/// A high watermark write as the broker's checkpoint writer runs it
/// (`hw_checkpoint::HwCheckpoint::write_round`): the entry set, the whole checkpoint (with
/// another replica's entry beside it) written to the next slot and synced, then the write
/// completed. Returns the exposed high watermark.
fn checkpoint_write<S: Storage>(
    replica: &mut PartitionReplica<S>,
    write: StateWrite,
    checkpoint: &mut Checkpoint,
    data: &mut FileStorage<Recorder>,
) -> Offset {
    checkpoint.set(("other".into(), 3), "AAAAAAAAAAAAAAAAAAAAAg", Offset(7));
    checkpoint.set((TOPIC.into(), 0), TOPIC_ID, write.high_watermark);
    checkpoint.write_to(data).expect("checkpoint write");
    replica.complete_state_write(write)
}

/// A sync round as a sync thread runs it (`PartitionHandle::settle_log`).
fn sync_round<S: Storage>(replica: &mut PartitionReplica<S>, syncer: &FileStorage<Recorder>) {
    if let Some(pending) = replica.prepare_sync() {
        for file in pending.files() {
            syncer.sync_file(file).expect("sync");
        }
        replica.complete_sync(pending);
    }
}

/// The leader of partition t-0 on broker 1, replicas 1, 2 and 3, as the broker drives it:
/// produces from an idempotent producer, sync rounds, followers that fetch and sync everything,
/// high watermark writes (run between the appends of the next round, as the checkpoint writer
/// does: the first three to the replica's own slots, as an older keel wrote them, the rest to
/// the broker's checkpoint, so that recovery reads both), segment rolls, checkpoints (producer snapshots, the partition checkpoint), a new
/// leader epoch, and a DeleteRecords; and the cluster id, written atomically in the data
/// directory.
fn leader_workload(recorder: &Recorder, marks: &mut Marks<ReplicaAcked>) {
    let root = recorder.root.clone();
    let mut acked = ReplicaAcked::default();
    let mut data = FileStorage::open_on(recorder.clone(), root.join("data")).expect("data dir");
    let mut checkpoint = Checkpoint::default();
    write_atomic(&mut data, "cluster.id", b"kPxPRVVgRAuZF1r5yjlA1Q").expect("cluster id");
    acked
        .files
        .insert("data/cluster.id".into(), b"kPxPRVVgRAuZF1r5yjlA1Q".to_vec());
    marks.mark(recorder, &acked);
    let dir = root.join(PARTITION_DIR);
    let storage = FileStorage::open_on(recorder.clone(), &dir).expect("partition dir");
    let syncer = storage.clone();
    let mut snapshots = FileStorage::open_on(recorder.clone(), &dir).expect("partition dir");
    let mut replica = PartitionReplica::recover(
        storage,
        &mut snapshots,
        log_config(),
        ProduceRules::default(),
        ReplicaConfig::new(b(1)),
        NOW_MS,
    )
    .expect("recover");
    replica
        .on_partition_change(NOW_MS, &mut snapshots, &partition(1, 1, 0, &[1, 2, 3]))
        .expect("lead");
    acked.leader_epoch = LeaderEpoch(1);
    marks.mark(recorder, &acked);
    let mut sequence = 0;
    let mut appended: Vec<BatchHeader> = Vec::new();
    for round in 0..10 {
        let now = NOW_MS + round;
        if round == 5 {
            replica
                .on_partition_change(now, &mut snapshots, &partition(1, 2, 1, &[1, 2, 3]))
                .expect("lead at a new epoch");
            acked.leader_epoch = LeaderEpoch(2);
            marks.mark(recorder, &acked);
        }
        // The high watermark lane hands out its write now and runs it while this round
        // appends: the two lanes overlap.
        let write = replica.prepare_state_write();
        for _ in 0..3 {
            let info = replica.append(now, client_batch(sequence)).expect("append");
            sequence += 1;
            let stored = replica.log().read(info.base_offset, 1, replica.log().end());
            let stored = stored.expect("read back")[0].bytes().clone();
            appended.push(BatchHeader::read(&stored).expect("header"));
            acked.written(stored);
            marks.mark(recorder, &acked);
        }
        if let Some(write) = write {
            if round < 3 {
                write.write_to(&mut syncer.clone()).expect("hw write");
                replica.complete_state_write(write);
            } else {
                checkpoint_write(&mut replica, write, &mut checkpoint, &mut data);
            }
            acked.high_watermark = replica.high_watermark();
            acked.end = acked.end.max(acked.high_watermark);
            acked.retry = appended
                .iter()
                .rev()
                .find(|h| h.last_offset() < acked.high_watermark)
                .copied();
            marks.mark(recorder, &acked);
        }
        sync_round(&mut replica, &syncer);
        acked.end = replica.log().durable_end();
        marks.mark(recorder, &acked);
        // Followers 2 and 3 fetch everything and report it synced.
        let end = replica.log().end();
        let last_epoch = replica
            .log()
            .epochs()
            .latest()
            .map_or(LeaderEpoch::NONE, |e| e.epoch);
        for follower in [2, 3] {
            replica
                .handle_follower_fetch(
                    now,
                    &FetchRequest {
                        replica: b(follower),
                        leader_epoch: replica.leader_epoch(),
                        fetch_offset: end,
                        last_fetched_epoch: last_epoch,
                        durable_end: end,
                        cleaned_end: Offset::ZERO,
                        max_bytes: 1 << 20,
                    },
                )
                .expect("follower fetch");
        }
        if round % 4 == 3 {
            replica.checkpoint(&mut snapshots).expect("checkpoint");
            acked.high_watermark = replica.high_watermark();
            marks.mark(recorder, &acked);
        }
        if round == 7 {
            // DeleteRecords: the offsets below the new start may go from here on.
            let target = Offset(5).min(replica.high_watermark());
            acked.start = acked.start.max(target);
            marks.mark(recorder, &acked);
            replica.delete_records(target.0).expect("delete records");
        }
    }
    replica.persist_state(&mut syncer.clone()).expect("persist");
    acked.high_watermark = replica.high_watermark();
    marks.mark(recorder, &acked);
}

/// The follower under test and what it acknowledged.
struct Follower<'a> {
    recorder: &'a Recorder,
    marks: &'a mut Marks<ReplicaAcked>,
    acked: ReplicaAcked,
    replica: PartitionReplica<FileStorage<Recorder>>,
    snapshots: FileStorage<Recorder>,
    syncer: FileStorage<Recorder>,
    /// The broker's high watermark checkpoint and the data directory it is written to.
    checkpoint: Checkpoint,
    data: FileStorage<Recorder>,
}

impl Follower<'_> {
    fn mark(&mut self) {
        self.marks.mark(self.recorder, &self.acked);
    }

    /// A new partition state from the controller.
    fn change(&mut self, now: i64, partition: &Partition) {
        self.replica
            .on_partition_change(now, &mut self.snapshots, partition)
            .expect("follow");
        self.acked.leader_epoch = self.replica.leader_epoch();
        self.mark();
    }

    /// One fetch from `leader`, applied as the broker applies it: the answer, a sync round
    /// after an append, then the high watermark lane.
    fn fetch_once(&mut self, leader: &mut PartitionReplica<MemStorage>, now: i64) {
        let request = self.replica.next_fetch(now).expect("a fetch to send");
        let response = leader
            .handle_follower_fetch(now, &request)
            .expect("fetch served");
        if let FetchPayload::Records(batches) = &response.payload {
            for batch in batches {
                self.acked.written(batch.bytes().clone());
            }
        } else {
            // A truncation or a restart: what it may cut is not required from here on (never
            // below the high watermark, except below a new log start).
            let floor = self.replica.high_watermark();
            self.acked.end = self.acked.end.min(floor);
            if matches!(response.payload, FetchPayload::OffsetOutOfRange) {
                self.acked.start = self.acked.end;
            }
        }
        self.mark();
        self.replica
            .handle_fetch_response(now, &mut self.snapshots, response)
            .expect("fetch applied");
        sync_round(&mut self.replica, &self.syncer);
        self.acked.start = self.acked.start.max(self.replica.log().log_start());
        self.acked.end = self.replica.log().durable_end();
        self.acked.high_watermark = self.replica.high_watermark();
        self.mark();
        if let Some(write) = self.replica.prepare_state_write() {
            checkpoint_write(
                &mut self.replica,
                write,
                &mut self.checkpoint,
                &mut self.data,
            );
        }
        self.acked.high_watermark = self.replica.high_watermark();
        self.mark();
    }
}

impl Follower<'_> {
    /// Fetches until the follower holds the leader's whole log (an answer holds one segment
    /// at most), then once more to learn the high watermark that covers it.
    fn catch_up(
        &mut self,
        leader: &mut PartitionReplica<MemStorage>,
        leader_snapshots: &mut MemStorage,
        now: i64,
    ) {
        for _ in 0..64 {
            self.fetch_once(leader, now);
            if self.replica.log().end() == leader.log().end() {
                leader.persist_state(leader_snapshots).expect("leader hw");
                self.fetch_once(leader, now);
                return;
            }
        }
        panic!("the follower does not catch up");
    }
}

/// A leader on `MemStorage` (only the follower's files are checked).
fn mem_leader(
    storage: MemStorage,
    snapshots: &mut MemStorage,
    me: i32,
    now: i64,
    partition: &Partition,
) -> PartitionReplica<MemStorage> {
    let mut leader = PartitionReplica::recover(
        storage,
        snapshots,
        log_config(),
        ProduceRules::default(),
        ReplicaConfig::new(b(me)),
        now,
    )
    .expect("leader");
    leader
        .on_partition_change(now, snapshots, partition)
        .expect("lead");
    leader
}

/// A follower of t-0 on broker 2, as the broker drives it: it fetches from a leader on
/// broker 1 (epoch 1), appends and syncs what it gets and writes the high watermark it
/// learns; the leader changes to broker 3 (epoch 2), which lacks part of broker 1's log: the
/// follower truncates its diverged suffix (KIP-279); then broker 3 shrinks its ISR, moves its
/// log start past the follower's end (DeleteRecords), and the follower restarts its log
/// there.
fn follower_workload(recorder: &Recorder, marks: &mut Marks<ReplicaAcked>) {
    let dir = recorder.root.join(PARTITION_DIR);
    let storage = FileStorage::open_on(recorder.clone(), &dir).expect("partition dir");
    let syncer = storage.clone();
    let mut snapshots = FileStorage::open_on(recorder.clone(), &dir).expect("partition dir");
    let replica = PartitionReplica::recover(
        storage,
        &mut snapshots,
        log_config(),
        ProduceRules::default(),
        ReplicaConfig::new(b(2)),
        NOW_MS,
    )
    .expect("recover");
    let data =
        FileStorage::open_on(recorder.clone(), recorder.root.join("data")).expect("data dir");
    let mut f = Follower {
        recorder,
        marks,
        acked: ReplicaAcked::default(),
        replica,
        snapshots,
        syncer,
        checkpoint: Checkpoint::default(),
        data,
    };
    f.mark();
    let epoch1 = partition(1, 1, 0, &[1, 2, 3]);
    let mut first_snaps = MemStorage::new();
    let mut first = mem_leader(MemStorage::new(), &mut first_snaps, 1, NOW_MS, &epoch1);
    f.change(NOW_MS, &epoch1);

    // Epoch 1: broker 3 has synced only the first 25 offsets, so the high watermark stays at
    // or below 25 while the follower takes 40.
    let mut sequence = 0;
    let mut now = NOW_MS;
    for _ in 0..8 {
        now += 1;
        for _ in 0..5 {
            first.append(now, client_batch(sequence)).expect("append");
            sequence += 1;
        }
        first.sync().expect("leader sync");
        let end = first.log().end().min(Offset(25));
        first
            .handle_follower_fetch(
                now,
                &FetchRequest {
                    replica: b(3),
                    leader_epoch: LeaderEpoch(1),
                    fetch_offset: end,
                    last_fetched_epoch: LeaderEpoch(1),
                    durable_end: end,
                    cleaned_end: Offset::ZERO,
                    max_bytes: 1 << 20,
                },
            )
            .expect("broker 3's fetch");
        first.persist_state(&mut first_snaps).expect("leader hw");
        f.catch_up(&mut first, &mut first_snaps, now);
    }
    assert_eq!(
        f.replica.log().end(),
        Offset(40),
        "the follower took 40 (high watermark {})",
        f.replica.high_watermark()
    );
    assert!(f.replica.high_watermark() <= Offset(25));

    // Epoch 2: broker 3 leads with the first 25 offsets and appends its own.
    let second_storage = {
        let mut log = keel_core::log::Log::open(MemStorage::new(), log_config(), now)
            .expect("broker 3's log");
        while log.end() < Offset(25) {
            for batch in first
                .log()
                .read(log.end(), 1 << 20, Offset(25))
                .expect("read")
            {
                log.append_replicated(now, batch).expect("replicate");
            }
        }
        log.sync().expect("sync");
        log.into_storage()
    };
    let epoch2 = partition(3, 2, 1, &[2, 3]);
    let mut second_snaps = MemStorage::new();
    let mut second = mem_leader(second_storage, &mut second_snaps, 3, now, &epoch2);
    f.change(now, &epoch2);
    // The producer goes on from what broker 3 has of it.
    sequence = 25;
    for round in 0..6 {
        now += 1;
        for _ in 0..3 {
            second.append(now, client_batch(sequence)).expect("append");
            sequence += 1;
        }
        second.sync().expect("leader sync");
        second.persist_state(&mut second_snaps).expect("leader hw");
        if round == 0 {
            f.fetch_once(&mut second, now);
            assert_eq!(
                f.replica.log().end(),
                Offset(25),
                "the diverged suffix is cut"
            );
        }
        f.catch_up(&mut second, &mut second_snaps, now);
        if round == 2 {
            f.replica.checkpoint(&mut f.snapshots).expect("checkpoint");
            f.acked.high_watermark = f.replica.high_watermark();
            f.mark();
        }
    }
    // Broker 3 goes on alone (ISR 3), moves its log start past the follower's end, and the
    // follower restarts its log there.
    second
        .on_partition_change(now, &mut second_snaps, &partition(3, 2, 2, &[3]))
        .expect("shrink");
    for _ in 0..12 {
        now += 1;
        second.append(now, client_batch(sequence)).expect("append");
        sequence += 1;
    }
    second.sync().expect("leader sync");
    second.persist_state(&mut second_snaps).expect("leader hw");
    let start = second.high_watermark();
    second.delete_records(start.0).expect("delete records");
    assert!(
        start > f.replica.log().end(),
        "the leader's start is past the follower"
    );
    for _ in 0..3 {
        now += 1;
        second.append(now, client_batch(sequence)).expect("append");
        sequence += 1;
        second.sync().expect("leader sync");
        second.persist_state(&mut second_snaps).expect("leader hw");
        f.catch_up(&mut second, &mut second_snaps, now);
    }
    assert!(
        f.replica.log().log_start() >= start,
        "the follower restarted its log at the leader's start"
    );
}

// --- A compacted log ----------------------------------------------------------------------

/// What a compacted log acknowledged.
#[derive(Clone, Debug, Default)]
struct CompactedAcked {
    /// Offsets below this were synced (a sync returned).
    end: Offset,
    /// Every batch written at each base offset: appended, or written by the cleaner.
    versions: Arc<BTreeMap<Offset, Vec<Bytes>>>,
    /// For each key, the offset and value of its latest record below `end`: what a consumer
    /// of the compacted topic must still find (Kafka's compaction guarantee).
    latest: BTreeMap<Bytes, (Offset, Bytes)>,
}

impl CompactedAcked {
    fn add_versions(&mut self, batches: &[keel_core::batch::Batch]) {
        let versions = Arc::make_mut(&mut self.versions);
        for batch in batches {
            let at = versions.entry(batch.base_offset()).or_default();
            if !at.contains(batch.bytes()) {
                at.push(batch.bytes().clone());
            }
        }
    }
}

/// A compacted topic's log (`cleanup.policy=compact`), as the broker drives it: keyed records
/// over three keys, synced each round, and a cleaning every third round (the cleaned copy
/// written to `.cleaned`, synced, renamed to `.swap`, the old segments removed, the swap
/// renamed into place; `cleaner.checkpoint` written atomically).
fn compacted_workload(recorder: &Recorder, marks: &mut Marks<CompactedAcked>) {
    let dir = recorder.root.join(PARTITION_DIR);
    let storage = FileStorage::open_on(recorder.clone(), &dir).expect("partition dir");
    let mut log = keel_core::log::Log::open(storage, log_config(), NOW_MS).expect("open");
    let mut acked = CompactedAcked::default();
    let mut records: BTreeMap<Offset, (Bytes, Bytes)> = BTreeMap::new();
    marks.mark(recorder, &acked);
    let config = CleanerConfig {
        dirty_ratio_min: 0.0,
        ..CleanerConfig::default()
    };
    let mut cleanings = 0;
    for round in 0..9i64 {
        let now = NOW_MS + round;
        for i in 0..4 {
            let n = round * 4 + i;
            let key = Bytes::from(format!("key-{}", n % 3));
            let value = Bytes::from(format!("value-{n}-{}", "x".repeat(100)));
            let batch = BatchBuilder::new(Compression::None)
                .record(now, Some(&key), Some(&value))
                .build()
                .expect("a valid batch");
            let info = log.append(now, batch, LeaderEpoch(1)).expect("append");
            records.insert(info.base_offset, (key, value));
            let stored = log.read(info.base_offset, 1, log.end()).expect("read back");
            acked.add_versions(&stored);
            marks.mark(recorder, &acked);
        }
        log.sync().expect("sync");
        acked.end = log.durable_end();
        acked.latest = BTreeMap::new();
        for (&offset, (key, value)) in records.range(..acked.end) {
            acked.latest.insert(key.clone(), (offset, value.clone()));
        }
        marks.mark(recorder, &acked);
        if round % 3 == 2 {
            let before = recorder.position();
            let inputs = CleanInputs {
                now_ms: now,
                producers_last: BTreeMap::new(),
                tombstones_below: None,
            };
            let upper = log.durable_end();
            if log.clean(&config, upper, &inputs).expect("clean").is_some() {
                cleanings += 1;
            }
            // The cleaned batches count as written from the cleaning's start: a crash during
            // it may leave them (a committed swap that recovery finishes).
            acked.add_versions(&read_whole_log(&log).expect("the cleaned log reads"));
            marks.mark_at(before, &acked);
            marks.mark(recorder, &acked);
        }
    }
    assert!(cleanings >= 2, "the log was cleaned ({cleanings} times)");
}

/// Opens the compacted log in `root` as the broker does (`Log::open` finishes or undoes a
/// cleaning a crash interrupted) and checks it against `acked`.
fn check_compacted(root: &Path, acked: &CompactedAcked) -> Result<(), String> {
    let storage = FileStorage::open(root.join(PARTITION_DIR))
        .map_err(|e| format!("opening {PARTITION_DIR}: {e}"))?;
    let log = keel_core::log::Log::open(storage, log_config(), NOW_MS)
        .map_err(|e| format!("recovery failed: {e}"))?;
    if log.end() < acked.end {
        return Err(format!(
            "acknowledged offsets lost: the log ends at {}, {} was acknowledged",
            log.end(),
            acked.end
        ));
    }
    let mut latest: BTreeMap<Bytes, (Offset, Bytes)> = BTreeMap::new();
    for batch in read_whole_log(&log)? {
        let base = batch.base_offset();
        let versions = acked.versions.get(&base).map_or(&[][..], |v| &v[..]);
        if !versions.iter().any(|v| v == batch.bytes()) {
            return Err(format!(
                "served a batch at offset {base} that was never written there"
            ));
        }
        let records = batch
            .records()
            .map_err(|e| format!("the batch at {base} does not decode: {e}"))?;
        for record in records.into_iter().filter(|r| r.offset < acked.end) {
            if let (Some(key), Some(value)) = (record.key, record.value) {
                latest.insert(key, (record.offset, value));
            }
        }
    }
    for (key, want) in &acked.latest {
        if latest.get(key) != Some(want) {
            return Err(format!(
                "the latest acknowledged record of key {key:?} (offset {}) is not served: {:?}",
                want.0,
                latest.get(key).map(|(o, _)| o)
            ));
        }
    }
    Ok(())
}

// --- The raft log ---------------------------------------------------------------------------

/// What the metadata quorum acknowledged: the commands `poll` reported committed (the
/// controller answers then), and the raft term it had persisted.
#[derive(Clone, Debug, Default)]
struct QuorumAcked {
    topics: Vec<String>,
    term: u64,
}

fn quorum_config() -> QuorumConfig {
    QuorumConfig {
        snapshot_entries: 8,
        ..QuorumConfig::new(b(0), vec![b(0)], vec![])
    }
}

fn topic_id(n: u8) -> TopicId {
    let mut id = [n; 16];
    id[0] |= 1;
    TopicId(id)
}

fn create_topic(state: &MetadataState, n: u8) -> Vec<keel_core::controller::MetadataRecord> {
    state
        .create_topic(
            &NewTopic {
                name: format!("topic-{n}"),
                partitions: 1,
                replication_factor: 1,
                configs: BTreeMap::new(),
                topic_id: topic_id(n),
            },
            &[b(0)],
            &TopicDefaults::default(),
        )
        .expect("a valid topic")
}

/// The single voter of the metadata quorum in `data/__metadata`, as the quorum driver runs
/// it: commands proposed and polled (each poll appends one frame per Ready and syncs it
/// before it returns), compaction every 8 applied entries (the whole file rewritten
/// atomically) and one forced compaction.
fn quorum_workload(recorder: &Recorder, marks: &mut Marks<QuorumAcked>) {
    let dir = recorder.root.join("data/__metadata");
    let storage = FileStorage::open_on(recorder.clone(), &dir).expect("metadata dir");
    let (mut node, _) = QuorumNode::open(quorum_config(), storage).expect("open");
    let mut acked = QuorumAcked::default();
    node.poll().expect("poll");
    assert!(node.is_leader(), "the only voter leads");
    acked.term = node.term();
    marks.mark(recorder, &acked);
    for n in 0..20u8 {
        let records = create_topic(node.state(), n);
        node.propose(ProposalId(n as u64), records)
            .expect("propose");
        let output = node.poll().expect("poll");
        for outcome in output.outcomes {
            match outcome {
                ProposalOutcome::Committed { id, .. } => {
                    acked.topics.push(format!("topic-{}", id.0));
                }
                other => panic!("the only voter's proposal did not commit: {other:?}"),
            }
        }
        acked.term = node.term();
        marks.mark(recorder, &acked);
        if n == 12 {
            node.compact().expect("compact");
        }
    }
}

/// Opens the quorum in `root` as `cluster::Cluster::start` does, lets it lead again, and
/// checks it against `acked`.
fn check_quorum(root: &Path, acked: &QuorumAcked) -> Result<(), String> {
    let storage = FileStorage::open(root.join("data/__metadata"))
        .map_err(|e| format!("opening __metadata: {e}"))?;
    let (mut node, report) =
        QuorumNode::open(quorum_config(), storage).map_err(|e| format!("open failed: {e}"))?;
    if report.term < acked.term {
        return Err(format!(
            "the raft term went back from the acknowledged {} to {}",
            acked.term, report.term
        ));
    }
    if let Some(from) = report.commit_lowered_from {
        return Err(format!(
            "the commit index {from} was past the log that survived: {report:?}"
        ));
    }
    for _ in 0..3 {
        node.poll().map_err(|e| format!("poll failed: {e}"))?;
    }
    for topic in &acked.topics {
        if node.state().topic(topic).is_none() {
            return Err(format!(
                "the committed creation of {topic} is lost (applied index {})",
                node.applied_index()
            ));
        }
    }
    Ok(())
}

// --- The tests ------------------------------------------------------------------------------

fn assert_survives(found: &Exploration) {
    assert!(
        found.states_checked > 100,
        "too few crash states checked: {found:?}"
    );
    assert_eq!(
        found.violations, 0,
        "crash states the storage does not survive: {:#?}",
        found.shown
    );
}

fn assert_caught(found: &Exploration, expected: &str) {
    assert!(found.dropped_syncs > 0, "the mutant dropped no sync");
    assert!(
        found.violations > 0,
        "the checker missed a storage without that sync"
    );
    assert!(
        found.shown.iter().any(|v| v.contains(expected)),
        "no violation says {expected:?}: {:#?}",
        found.shown
    );
}

/// The leader's log (appends, group-commit sync rounds, rolls, a DeleteRecords), its high
/// watermark slots, its epoch files, checkpoints and producer snapshots, and the cluster id
/// survive every crash state the model allows. Reference: Kafka's `UnifiedLog` recovery and
/// keel's invariants 2 to 4 (docs/replication.md).
#[test]
fn a_leader_replica_survives_every_power_loss() {
    let found = explore("leader", Mutant::None, leader_workload, |dir, acked| {
        check_replica(dir, b(1), acked)
    });
    assert_survives(&found);
}

/// A follower's log survives every crash state, through appends from its leader, a truncation
/// of a diverged suffix (KIP-279) and a restart of its log at the leader's log start.
#[test]
fn a_follower_replica_survives_every_power_loss() {
    let found = explore("follower", Mutant::None, follower_workload, |dir, acked| {
        check_replica(dir, b(2), acked)
    });
    assert_survives(&found);
}

/// A compacted log survives every crash state, through cleanings: each group of segments is
/// either the old one or the cleaned one, and every key's latest acknowledged record is
/// served (docs/compaction.md; Kafka's `LogCleaner` swap).
#[test]
fn a_compacted_log_survives_every_power_loss() {
    let found = explore(
        "compacted",
        Mutant::None,
        compacted_workload,
        check_compacted,
    );
    assert_survives(&found);
}

/// Without the `fdatasync` of a cleaned segment before its rename to `.swap` (the commit
/// point), recovery can finish a swap whose data never reached the disk.
#[test]
fn the_checker_catches_a_dropped_sync_of_a_cleaned_segment() {
    let found = explore(
        "compacted",
        Mutant::FileSync(".cleaned"),
        compacted_workload,
        check_compacted,
    );
    assert_caught(&found, "acknowledged");
}

/// The raft log survives every crash state: every committed command and the term are there
/// after recovery, through appends and compactions (raft §5.1: persistent state is on stable
/// storage before responding).
#[test]
fn the_raft_log_survives_every_power_loss() {
    let found = explore("quorum", Mutant::None, quorum_workload, check_quorum);
    assert_survives(&found);
}

/// Without the `fdatasync` of a segment (the group commit's sync round), synced-looking
/// appends are lost: the checker must see it.
#[test]
fn the_checker_catches_a_dropped_segment_sync() {
    let found = explore(
        "leader",
        Mutant::FileSync(".log"),
        leader_workload,
        |dir, acked| check_replica(dir, b(1), acked),
    );
    assert_caught(&found, "acknowledged");
}

/// Without the directory sync that makes a rolled segment's name durable (the one a sync
/// round owes after `create_deferred`), the segment, synced, can vanish.
#[test]
fn the_checker_catches_a_dropped_directory_sync_after_a_segment_is_created() {
    let found = explore(
        "leader",
        Mutant::DirSyncAfter(EntryKind::Create, ".log"),
        leader_workload,
        |dir, acked| check_replica(dir, b(1), acked),
    );
    assert_caught(&found, "acknowledged");
}

/// Without the directory sync after the rename of an atomic write, the compacted raft log
/// can revert to the old file, losing the commands committed after the compaction.
#[test]
fn the_checker_catches_a_dropped_directory_sync_after_a_rename() {
    let found = explore(
        "quorum",
        Mutant::DirSyncAfter(EntryKind::Rename, "raft.log"),
        quorum_workload,
        check_quorum,
    );
    assert_caught(&found, "is lost");
}

/// Without the directory sync after a new directory is made (the partition's, in the data
/// directory), the whole partition directory can vanish with its synced files.
#[test]
fn the_checker_catches_a_dropped_directory_sync_after_a_mkdir() {
    let found = explore(
        "leader",
        Mutant::DirSyncAfter(EntryKind::Mkdir, "t-0"),
        leader_workload,
        |dir, acked| check_replica(dir, b(1), acked),
    );
    assert_caught(&found, "acknowledged");
}

/// Without the `fdatasync` of the broker's high watermark checkpoint slot, the exposed high
/// watermark can go back: the leader's, and a follower's.
#[test]
fn the_checker_catches_a_dropped_high_watermark_checkpoint_sync() {
    let found = explore(
        "leader",
        Mutant::FileSync("hw-checkpoint."),
        leader_workload,
        |dir, acked| check_replica(dir, b(1), acked),
    );
    assert_caught(&found, "high watermark went back");
    let found = explore(
        "follower",
        Mutant::FileSync("hw-checkpoint."),
        follower_workload,
        |dir, acked| check_replica(dir, b(2), acked),
    );
    assert_caught(&found, "high watermark went back");
}

/// Without the `fdatasync` of a high watermark slot (written by an older keel, and still when
/// a single-replica partition gains replicas or at a clean shutdown), the exposed high
/// watermark can go back.
#[test]
fn the_checker_catches_a_dropped_high_watermark_sync() {
    let found = explore(
        "leader",
        Mutant::FileSync("replica.hw."),
        leader_workload,
        |dir, acked| check_replica(dir, b(1), acked),
    );
    assert_caught(&found, "high watermark went back");
}

/// The recorder sees what `FileStorage` does, call for call: a create syncs the directory, a
/// deferred create owes that sync to the next file sync, which pays it first, and
/// `write_atomic` is create, write, fdatasync, rename, directory sync.
#[test]
fn the_recorder_sees_every_call_file_storage_makes() {
    let scratch = scratch_dir();
    let recorder = Recorder::new(scratch.path(), Mutant::None);
    let mut s = FileStorage::open_on(recorder.clone(), scratch.path().join("a/b")).expect("open");
    s.create("x").expect("create");
    s.create_deferred("y").expect("create");
    s.append("y", &[1; 700]).expect("append");
    s.truncate("y", 600).expect("truncate");
    s.sync("y").expect("sync");
    write_atomic(&mut s, "z", b"z").expect("write_atomic");
    s.remove("x").expect("remove");
    let ops: Vec<String> = recorder
        .lock()
        .ops
        .iter()
        .map(|op| match op {
            Op::Write { ino, at, data } => format!("Write #{ino} {at}+{}", data.len()),
            op => format!("{op:?}"),
        })
        .collect();
    assert_eq!(
        ops,
        [
            r#"Mkdir { path: "a" }"#,
            r#"Mkdir { path: "a/b" }"#,
            r#"SyncDir { path: "" }"#,
            r#"SyncDir { path: "a" }"#,
            r#"Create { path: "a/b/x", ino: 0 }"#,
            r#"SyncDir { path: "a/b" }"#,
            r#"Create { path: "a/b/y", ino: 1 }"#,
            "Write #1 0+700",
            "SetLen { ino: 1, len: 600 }",
            r#"SyncDir { path: "a/b" }"#,
            "SyncData { ino: 1 }",
            r#"Create { path: "a/b/z.tmp", ino: 2 }"#,
            r#"SyncDir { path: "a/b" }"#,
            "Write #2 0+1",
            "SyncData { ino: 2 }",
            r#"Rename { from: "a/b/z.tmp", to: "a/b/z", ino: 2 }"#,
            r#"SyncDir { path: "a/b" }"#,
            r#"Unlink { path: "a/b/x", ino: 0 }"#,
            r#"SyncDir { path: "a/b" }"#,
        ]
    );
    assert_eq!(read_all(&s, "z").expect("read").as_ref(), b"z");
    // And the crash states of that record: before the fdatasync of y (its name is covered by
    // the directory sync just before), y may hold nothing, either sector of its 700 bytes or
    // both, and the truncation may have happened or not.
    let ops = recorder.lock().ops.clone();
    let k = ops
        .iter()
        .position(|op| matches!(op, Op::SyncData { ino: 1 }))
        .expect("y's sync");
    let units = uncovered(&ops, k);
    assert_eq!(units.len(), 3, "{units:?}: two sectors and the truncation");
    let mut sizes = BTreeSet::new();
    for outcomes in outcome_sets(&ops, &units, &mut StdRng::seed_from_u64(0)) {
        let state = crash_state(&ops, k, &units, &outcomes);
        if let Some(y) = state.files.get("a/b/y") {
            sizes.insert(y.len());
        }
    }
    assert_eq!(sizes, BTreeSet::from([0, 512, 600, 700]));
}
