//! The aborted-transaction index on disk: one `{segment base, 20 digits}.txnindex` file per
//! log segment that holds an ABORT marker, in Kafka's `.txnindex` format
//! (`TransactionIndex`, `AbortedTxn`), beside the segment in the log's storage.
//!
//! A file is the segment's aborted transactions, in marker order, each as 34 bytes, big-endian:
//! `i16 version = 0`, `i64 producer id`, `i64 first offset`, `i64 last offset` (the ABORT
//! marker's offset, which lies in the segment), `i64 last stable offset`. There is no header
//! and no checksum, as in Kafka.
//!
//! [`TxnIndexFiles`] owns these files and keeps a copy of what it wrote (or read) in memory.
//! The partition's [`TxnTracker`](super::txn::TxnTracker) is the source of truth: after every
//! change to its aborted list or to the log's segments, the partition calls
//! [`TxnIndexFiles::append_new`] (the hot path: an ABORT marker appended, by a leader or a
//! follower) or [`TxnIndexFiles::reconcile`] (a truncation, retention, a log start moved, a
//! compaction, recovery), which make the files say exactly what the tracker says, segment by
//! segment, touching only files that differ.
//!
//! # Invariants
//! - After `append_new` or `reconcile` returns `Ok`, the file of each segment holds exactly the
//!   tracker's aborted transactions whose marker lies in that segment, and no other
//!   `.txnindex` file exists (checked by [`TxnIndexFiles::check_against`] in tests).
//! - Appends are not synced on their own: like Kafka's index, a file is made durable when it is
//!   rewritten (atomically), and recovery ([`TxnIndexFiles::load`], then `reconcile`) rebuilds a
//!   file that a crash left missing, torn (a partial entry, an unknown version), or stale.
//!
//! Recovery still reads the log to rebuild the tracker (the producer snapshot does not yet carry
//! open transactions), so on open the files are checked against that read and repaired; the
//! read's answer wins.

use std::collections::BTreeMap;

use crate::producer::txn::AbortedTxn;
use crate::storage::{self, Storage, StorageError};
use crate::types::{Offset, ProducerId};

/// Bytes of one entry (Kafka's `AbortedTxn.TOTAL_SIZE`).
pub const ENTRY_BYTES: usize = 34;
/// The only entry version.
const ENTRY_VERSION: i16 = 0;
/// File name suffix.
const SUFFIX: &str = ".txnindex";

/// Byte offsets of an entry's fields, chained.
mod field {
    pub const VERSION: usize = 0;
    pub const PRODUCER_ID: usize = VERSION + 2;
    pub const FIRST_OFFSET: usize = PRODUCER_ID + 8;
    pub const LAST_OFFSET: usize = FIRST_OFFSET + 8;
    pub const LAST_STABLE_OFFSET: usize = LAST_OFFSET + 8;
    pub const END: usize = LAST_STABLE_OFFSET + 8;
}
const _: () = assert!(field::END == ENTRY_BYTES);

/// The index file of the segment starting at `base`.
pub fn file_name(base: Offset) -> String {
    format!("{:020}{SUFFIX}", base.0)
}

/// The segment base a `.txnindex` file name stands for.
pub fn parse_name(name: &str) -> Option<Offset> {
    let digits = name.strip_suffix(SUFFIX)?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().map(Offset)
}

/// One entry's bytes.
pub fn encode(entry: &AbortedTxn) -> [u8; ENTRY_BYTES] {
    let mut out = [0u8; ENTRY_BYTES];
    out[field::VERSION..field::PRODUCER_ID].copy_from_slice(&ENTRY_VERSION.to_be_bytes());
    out[field::PRODUCER_ID..field::FIRST_OFFSET]
        .copy_from_slice(&entry.producer_id.0.to_be_bytes());
    out[field::FIRST_OFFSET..field::LAST_OFFSET]
        .copy_from_slice(&entry.first_offset.0.to_be_bytes());
    out[field::LAST_OFFSET..field::LAST_STABLE_OFFSET]
        .copy_from_slice(&entry.last_offset.0.to_be_bytes());
    out[field::LAST_STABLE_OFFSET..field::END]
        .copy_from_slice(&entry.last_stable_offset.0.to_be_bytes());
    out
}

/// What a file's bytes hold: its whole, well-formed entries, and whether anything else
/// followed them (a partial entry, an unknown version, offsets out of order: a torn or damaged
/// file, to be rewritten).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decoded {
    /// The well-formed entries before the first problem.
    pub entries: Vec<AbortedTxn>,
    /// Whether anything followed them.
    pub torn: bool,
}

/// Reads a file's bytes. Never panics: anything after the last well-formed entry is `torn`.
pub fn decode(bytes: &[u8]) -> Decoded {
    let mut entries: Vec<AbortedTxn> = Vec::with_capacity(bytes.len() / ENTRY_BYTES);
    let mut chunks = bytes.chunks_exact(ENTRY_BYTES);
    let i64_at = |c: &[u8], at: usize| {
        i64::from_be_bytes(c[at..at + 8].try_into().expect("an 8-byte field"))
    };
    for c in chunks.by_ref() {
        let version = i16::from_be_bytes([c[field::VERSION], c[field::VERSION + 1]]);
        let entry = AbortedTxn {
            producer_id: ProducerId(i64_at(c, field::PRODUCER_ID)),
            first_offset: Offset(i64_at(c, field::FIRST_OFFSET)),
            last_offset: Offset(i64_at(c, field::LAST_OFFSET)),
            last_stable_offset: Offset(i64_at(c, field::LAST_STABLE_OFFSET)),
        };
        let ordered = entries
            .last()
            .is_none_or(|p| p.last_offset < entry.last_offset);
        if version != ENTRY_VERSION || entry.first_offset > entry.last_offset || !ordered {
            return Decoded {
                entries,
                torn: true,
            };
        }
        entries.push(entry);
    }
    Decoded {
        entries,
        torn: !chunks.remainder().is_empty(),
    }
}

/// What [`TxnIndexFiles::load`] and [`TxnIndexFiles::reconcile`] found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexReport {
    /// Files found torn or damaged on load.
    pub torn: u64,
    /// Files written whole (atomically) because they differed from the tracker.
    pub rewritten: u64,
    /// Files that had only new entries to add, appended to.
    pub appended: u64,
    /// Files removed: their segment is gone, or it holds no aborted transaction any more.
    pub removed: u64,
}

/// The `.txnindex` files of one log, and what they hold. See the module doc.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxnIndexFiles {
    /// Per segment base, the entries its file holds (as written or read).
    files: BTreeMap<Offset, Vec<AbortedTxn>>,
    /// Files read torn on load, not yet rewritten.
    torn: Vec<Offset>,
}

/// The tracker's aborted transactions grouped by the segment that holds each marker (the
/// greatest base at or below its last offset); entries below the first segment are dropped.
fn by_segment(
    segment_bases: &[Offset],
    aborted: &[AbortedTxn],
) -> BTreeMap<Offset, Vec<AbortedTxn>> {
    let mut out: BTreeMap<Offset, Vec<AbortedTxn>> = BTreeMap::new();
    for a in aborted {
        let i = segment_bases.partition_point(|&b| b <= a.last_offset);
        if i > 0 {
            out.entry(segment_bases[i - 1]).or_default().push(*a);
        }
    }
    out
}

impl TxnIndexFiles {
    /// Reads every `.txnindex` file in `storage` (a file that cannot be read counts as torn).
    pub fn load<S: Storage + ?Sized>(
        storage: &S,
    ) -> Result<(TxnIndexFiles, IndexReport), StorageError> {
        let mut out = TxnIndexFiles::default();
        let mut report = IndexReport::default();
        for name in storage.list()? {
            let Some(base) = parse_name(&name) else {
                continue;
            };
            let decoded = match storage::read_all(storage, &name) {
                Ok(bytes) => decode(&bytes),
                Err(_) => Decoded {
                    entries: Vec::new(),
                    torn: true,
                },
            };
            if decoded.torn {
                report.torn += 1;
                out.torn.push(base);
            }
            out.files.insert(base, decoded.entries);
        }
        Ok((out, report))
    }

    /// The entries the file of the segment at `base` holds.
    pub fn entries(&self, base: Offset) -> &[AbortedTxn] {
        self.files.get(&base).map_or(&[], Vec::as_slice)
    }

    /// Appends to the files the entries of `aborted` (the tracker's list, in marker order) that
    /// are newer than every entry written so far: what an ABORT marker adds. Falls back to
    /// [`TxnIndexFiles::reconcile`] when the list does not extend what is written.
    pub fn append_new<S: Storage + ?Sized>(
        &mut self,
        storage: &mut S,
        segment_bases: &[Offset],
        aborted: &[AbortedTxn],
    ) -> Result<(), StorageError> {
        let newest = self
            .files
            .values()
            .filter_map(|v| v.last())
            .map(|a| a.last_offset)
            .max();
        let from = newest.map_or(0, |n| aborted.partition_point(|a| a.last_offset <= n));
        let written: usize = self.files.values().map(Vec::len).sum();
        // What is written must be exactly the list's first `from` entries (a truncation that
        // shrank the list, or a torn file, needs the full pass).
        let below = segment_bases.first().map_or(aborted.len(), |&b| {
            aborted.partition_point(|a| a.last_offset < b)
        });
        let extends = written + below.min(from) == from
            && newest.is_none_or(|n| from > 0 && aborted[from - 1].last_offset == n)
            && self.torn.is_empty();
        if !extends {
            self.reconcile(storage, segment_bases, aborted)?;
            return Ok(());
        }
        if from == aborted.len() {
            return Ok(());
        }
        for (base, entries) in by_segment(segment_bases, &aborted[from..]) {
            let bytes: Vec<u8> = entries.iter().flat_map(encode).collect();
            let name = file_name(base);
            if !self.files.contains_key(&base) {
                match storage.create_deferred(&name) {
                    Ok(()) | Err(StorageError::AlreadyExists(_)) => {}
                    Err(e) => return Err(e),
                }
            }
            storage.append(&name, &bytes)?;
            self.files.entry(base).or_default().extend(entries);
        }
        Ok(())
    }

    /// Makes the files hold exactly `aborted` (the tracker's list), grouped by `segment_bases`
    /// (the log's segments): removes the files of segments that are gone or hold no aborted
    /// transaction, appends to a file whose entries are a prefix of what it should hold, and
    /// rewrites (atomically, durably) any other that differs.
    pub fn reconcile<S: Storage + ?Sized>(
        &mut self,
        storage: &mut S,
        segment_bases: &[Offset],
        aborted: &[AbortedTxn],
    ) -> Result<IndexReport, StorageError> {
        let mut report = IndexReport::default();
        let wanted = by_segment(segment_bases, aborted);
        let stale: Vec<Offset> = self
            .files
            .keys()
            .filter(|b| !wanted.contains_key(b))
            .copied()
            .collect();
        for base in stale {
            match storage.remove(&file_name(base)) {
                Ok(()) | Err(StorageError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
            self.files.remove(&base);
            report.removed += 1;
        }
        for (base, entries) in wanted {
            let torn = self.torn.contains(&base);
            let have = self.files.get(&base).map_or(&[][..], Vec::as_slice);
            if !torn && have == entries.as_slice() {
                continue;
            }
            let name = file_name(base);
            if !torn && self.files.contains_key(&base) && entries.starts_with(have) {
                let bytes: Vec<u8> = entries[have.len()..].iter().flat_map(encode).collect();
                storage.append(&name, &bytes)?;
                report.appended += 1;
            } else {
                let bytes: Vec<u8> = entries.iter().flat_map(encode).collect();
                storage::write_atomic(storage, &name, &bytes)?;
                report.rewritten += 1;
            }
            self.files.insert(base, entries);
        }
        self.torn.clear();
        Ok(report)
    }

    /// Checks that the files in `storage` hold exactly `aborted` grouped by `segment_bases`;
    /// panics naming the difference. For tests and the simulator's checks.
    pub fn check_against<S: Storage + ?Sized>(
        storage: &S,
        segment_bases: &[Offset],
        aborted: &[AbortedTxn],
    ) {
        let wanted = by_segment(segment_bases, aborted);
        let mut found = BTreeMap::new();
        for name in storage.list().expect("list") {
            if let Some(base) = parse_name(&name) {
                let d = decode(&storage::read_all(storage, &name).expect("read"));
                assert!(!d.torn, "{name} is torn");
                found.insert(base, d.entries);
            }
        }
        assert_eq!(
            found, wanted,
            "the .txnindex files hold the tracker's aborted transactions"
        );
    }
}

#[cfg(test)]
mod tests;
