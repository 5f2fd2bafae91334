//! The broker's high watermark checkpoint: one file for every partition replica of a broker,
//! so that a round of high watermark writes costs one sync per broker, not one per partition
//! (Kafka's `replication-offset-checkpoint`, except that keel writes it *before* the high
//! watermark is exposed: that write is what lets recovery tell committed data lost from a torn
//! tail, [`super::state::StateReport::hw_above_log`]).
//!
//! Files (in the broker's data directory): `hw-checkpoint.0` and `hw-checkpoint.1`, two slots
//! written alternately in place, as the per-partition `replica.hw.{0,1}` slots are
//! ([`super::state`]):
//!
//! ```text
//! keel-hw-checkpoint 1 {sequence} {entry count}\n
//! {topic} {partition} {topic id} {high watermark}\n     (one line per entry, sorted)
//! {crc}\n
//! ```
//!
//! The CRC is CRC-32C of every byte before its line. A slot is written to `sequence % 2` with
//! one sync (truncate, append, sync) and read back as the valid slot with the larger sequence.
//! A crash tears at most the slot being written; the other one still holds the previous
//! checkpoint. Every write carries every entry (the file is the whole map, not a delta), and
//! one writer at a time writes (the caller serialises them, [`Checkpoint::write_to`] takes
//! `&mut self`).
//!
//! What always holds, for the replica recovery reads an entry for: the entry's high watermark
//! is one the replica had made durable on every ISR member before it was written, and entries
//! only grow (a write carries the largest value the broker handed out). An entry names its
//! topic id: one left by a deleted topic of the same name never applies to a new one. The
//! broker forgets an entry, durably, before it removes the replica's directory, so that a
//! replica created again in that directory never reads its predecessor's high watermark.
//!
//! Migration: a replica written by an older keel has only its per-partition slots; recovery
//! takes the larger of both sources (each holds a value that was persisted before exposure).

use std::collections::BTreeMap;

use crate::storage::{Storage, StorageError};
use crate::types::Offset;

/// Names of the two checkpoint slots.
pub const CHECKPOINT_FILES: [&str; 2] = ["hw-checkpoint.0", "hw-checkpoint.1"];

const MAGIC: &str = "keel-hw-checkpoint";
const VERSION: &str = "1";

/// A replica's key in the checkpoint: its topic name and partition index.
pub type ReplicaKey = (String, i32);

/// One replica's entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The topic id (as text, Kafka's base64 form): an entry applies only to its topic.
    pub topic_id: String,
    pub high_watermark: Offset,
}

/// What reading the slots found wrong.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckpointReport {
    /// Slots present but damaged (a torn write leaves one).
    pub slots_corrupt: usize,
}

/// The checkpoint as the broker holds it in memory: the last written (or read) map and the
/// sequence of the slot it is in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checkpoint {
    seq: u64,
    entries: BTreeMap<ReplicaKey, Entry>,
}

impl Checkpoint {
    /// Reads both slots: the valid one with the larger sequence, or an empty checkpoint.
    /// Storage errors other than a missing file are returned; damaged slots are reported.
    pub fn read<T: Storage + ?Sized>(
        storage: &T,
    ) -> Result<(Checkpoint, CheckpointReport), StorageError> {
        let mut report = CheckpointReport::default();
        let mut best: Option<Checkpoint> = None;
        for file in CHECKPOINT_FILES {
            let bytes = match crate::storage::read_all(storage, file) {
                Ok(bytes) => bytes,
                Err(StorageError::NotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            match parse(&bytes) {
                Some(found) => {
                    if best.as_ref().is_none_or(|b| found.seq > b.seq) {
                        best = Some(found);
                    }
                }
                // An empty slot is one whose first write was torn before any byte landed.
                None if bytes.is_empty() => {}
                None => report.slots_corrupt += 1,
            }
        }
        Ok((best.unwrap_or_default(), report))
    }

    /// The high watermark checkpointed for `key`, if its entry is of topic `topic_id`.
    pub fn high_watermark(&self, key: &ReplicaKey, topic_id: &str) -> Option<Offset> {
        self.entries
            .get(key)
            .filter(|e| e.topic_id == topic_id)
            .map(|e| e.high_watermark)
    }

    /// Sets `key`'s entry to `high_watermark` (never lower for the same topic). Not durable
    /// until [`Checkpoint::write_to`].
    pub fn set(&mut self, key: ReplicaKey, topic_id: &str, high_watermark: Offset) {
        let entry = self.entries.entry(key).or_insert_with(|| Entry {
            topic_id: topic_id.to_owned(),
            high_watermark,
        });
        if entry.topic_id == topic_id {
            entry.high_watermark = entry.high_watermark.max(high_watermark);
        } else {
            *entry = Entry {
                topic_id: topic_id.to_owned(),
                high_watermark,
            };
        }
    }

    /// Drops `key`'s entry; whether it had one. Not durable until [`Checkpoint::write_to`].
    pub fn forget(&mut self, key: &ReplicaKey) -> bool {
        self.entries.remove(key).is_some()
    }

    /// How many entries it holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The slot the next write goes to.
    pub fn next_file(&self) -> &'static str {
        CHECKPOINT_FILES[((self.seq + 1) % 2) as usize]
    }

    /// Writes every entry to the next slot and syncs it (creating it the first time). On
    /// success the entries are durable; on failure the previous slot still is, and the next
    /// write goes to the same slot again.
    pub fn write_to<T: Storage + ?Sized>(&mut self, storage: &mut T) -> Result<(), StorageError> {
        let seq = self.seq + 1;
        let file = CHECKPOINT_FILES[(seq % 2) as usize];
        let text = self.encode(seq);
        debug_assert_eq!(
            parse(&text).map(|c| c.entries),
            Some(self.entries.clone()),
            "the checkpoint reads back as written"
        );
        match storage.create(file) {
            Ok(()) | Err(StorageError::AlreadyExists(_)) => {}
            Err(e) => return Err(e),
        }
        storage.truncate(file, 0)?;
        storage.append(file, &text)?;
        storage.sync(file)?;
        self.seq = seq;
        Ok(())
    }

    fn encode(&self, seq: u64) -> Vec<u8> {
        use std::fmt::Write;
        let mut text = format!("{MAGIC} {VERSION} {seq} {}\n", self.entries.len());
        for ((topic, partition), e) in &self.entries {
            let _ = writeln!(
                text,
                "{topic} {partition} {} {}",
                e.topic_id, e.high_watermark
            );
        }
        let crc = crc32c::crc32c(text.as_bytes());
        let _ = writeln!(text, "{crc}");
        text.into_bytes()
    }
}

/// Parses one slot; `None` if anything is off (CRC, syntax, count).
fn parse(bytes: &[u8]) -> Option<Checkpoint> {
    let text = std::str::from_utf8(bytes).ok()?.strip_suffix('\n')?;
    let (body, crc) = text.rsplit_once('\n')?;
    let body_len = body.len() + 1;
    if crc.parse::<u32>().ok()? != crc32c::crc32c(&bytes[..body_len]) {
        return None;
    }
    let mut lines = body.split('\n');
    let mut header = lines.next()?.split(' ');
    if header.next()? != MAGIC || header.next()? != VERSION {
        return None;
    }
    let seq: u64 = header.next()?.parse().ok()?;
    let count: usize = header.next()?.parse().ok()?;
    if header.next().is_some() {
        return None;
    }
    let mut entries = BTreeMap::new();
    for line in lines {
        let mut fields = line.split(' ');
        let topic = fields.next()?.to_owned();
        let partition: i32 = fields.next()?.parse().ok()?;
        let topic_id = fields.next()?.to_owned();
        let hw: i64 = fields.next()?.parse().ok()?;
        if fields.next().is_some() || topic.is_empty() || partition < 0 || hw < 0 {
            return None;
        }
        entries.insert(
            (topic, partition),
            Entry {
                topic_id,
                high_watermark: Offset(hw),
            },
        );
    }
    (entries.len() == count).then_some(Checkpoint { seq, entries })
}

#[cfg(test)]
mod tests {
    use rand::{rngs::StdRng, SeedableRng};

    use super::*;
    use crate::storage::MemStorage;

    fn key(topic: &str, p: i32) -> ReplicaKey {
        (topic.to_owned(), p)
    }

    #[test]
    fn entries_round_trip_and_apply_only_to_their_topic_id() {
        let mut s = MemStorage::new();
        let (empty, report) = Checkpoint::read(&s).unwrap();
        assert!(empty.is_empty());
        assert_eq!(report, CheckpointReport::default());
        let mut c = Checkpoint::default();
        c.set(key("a", 0), "idA", Offset(10));
        c.set(key("a", 1), "idA", Offset(3));
        c.set(key("b.x-y_z", 7), "idB", Offset(42));
        c.write_to(&mut s).unwrap();
        c.set(key("a", 0), "idA", Offset(5)); // never lowered
        c.set(key("a", 1), "idA", Offset(4));
        c.write_to(&mut s).unwrap();
        let (back, report) = Checkpoint::read(&s).unwrap();
        assert_eq!(report, CheckpointReport::default());
        assert_eq!(back, c);
        assert_eq!(back.high_watermark(&key("a", 0), "idA"), Some(Offset(10)));
        assert_eq!(back.high_watermark(&key("a", 1), "idA"), Some(Offset(4)));
        assert_eq!(
            back.high_watermark(&key("b.x-y_z", 7), "idB"),
            Some(Offset(42))
        );
        // A topic of the same name created again has another id.
        assert_eq!(back.high_watermark(&key("a", 0), "idA2"), None);
        assert_eq!(back.high_watermark(&key("c", 0), "idC"), None);
    }

    #[test]
    fn a_forgotten_entry_is_gone_after_the_next_write() {
        let mut s = MemStorage::new();
        let mut c = Checkpoint::default();
        c.set(key("a", 0), "idA", Offset(10));
        c.write_to(&mut s).unwrap();
        assert!(c.forget(&key("a", 0)));
        assert!(!c.forget(&key("a", 0)));
        c.write_to(&mut s).unwrap();
        let (back, _) = Checkpoint::read(&s).unwrap();
        assert_eq!(back.high_watermark(&key("a", 0), "idA"), None);
    }

    /// A crash in the middle of a write leaves the previous checkpoint or the new one, never
    /// less than the last completed write (which is what the broker exposed).
    #[test]
    fn a_torn_write_falls_back_to_the_previous_checkpoint() {
        let mut fell_back = false;
        let mut torn = false;
        for seed in 0..200 {
            let mut s = MemStorage::new();
            let mut c = Checkpoint::default();
            for round in 1..=4i64 {
                for p in 0..20 {
                    c.set(key("t", p), "id", Offset(round * 100 + i64::from(p)));
                }
                c.write_to(&mut s).unwrap();
            }
            let durable = c.clone();
            for p in 0..20 {
                c.set(key("t", p), "id", Offset(1000 + i64::from(p)));
            }
            // The write in flight when the power goes: appended, not synced.
            let file = c.next_file();
            s.truncate(file, 0).unwrap();
            s.append(file, &c.encode(5)).unwrap();
            s.crash(&mut StdRng::seed_from_u64(seed));
            let (back, report) = Checkpoint::read(&s).unwrap();
            torn |= report.slots_corrupt == 1;
            assert!(report.slots_corrupt <= 1, "seed {seed}: {report:?}");
            for p in 0..20 {
                let hw = back.high_watermark(&key("t", p), "id");
                let before = durable.high_watermark(&key("t", p), "id");
                assert!(
                    hw >= before,
                    "seed {seed}: partition {p} went back to {hw:?}"
                );
            }
            fell_back |= back == durable;
        }
        assert!(fell_back && torn, "200 crashes tore no write");
    }

    #[test]
    fn damaged_slots_read_as_absent() {
        let mut s = MemStorage::new();
        let mut c = Checkpoint::default();
        c.set(key("a", 0), "idA", Offset(10));
        c.write_to(&mut s).unwrap();
        c.set(key("a", 0), "idA", Offset(20));
        c.write_to(&mut s).unwrap();
        // Bit rot in the newer slot (seq 2, slot 0): the older one answers.
        s.flip_bit(CHECKPOINT_FILES[0], 30, 2).unwrap();
        let (back, report) = Checkpoint::read(&s).unwrap();
        assert_eq!(report.slots_corrupt, 1);
        assert_eq!(back.high_watermark(&key("a", 0), "idA"), Some(Offset(10)));
        for bad in [
            &b"keel-hw-checkpoint 1 1 1\nx 0 i 5\n0\n"[..],
            b"\n",
            b"garbage",
        ] {
            assert_eq!(parse(bad), None);
        }
    }
}
