//! `keel dump-log`: prints every batch of a segment file, like Kafka's kafka-dump-log.sh, and
//! says where and why a batch is invalid.
//!
//! A batch whose length field is sane but whose CRC (or magic, or offsets) is wrong is reported
//! and the dump goes on with the next batch; a batch whose length runs past the file or below
//! the minimum ends the dump, since nothing after it can be located.

use std::io::{self, Write};
use std::path::Path;

use bytes::Bytes;
use keel_core::batch::{Batch, BatchHeader, Compression, TimestampType, HEADER_BYTES};
use keel_core::Offset;

/// What a dump found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DumpSummary {
    pub batches: u64,
    pub invalid: u64,
    /// Bytes at the end of the file that do not form a batch.
    pub trailing_bytes: u64,
}

impl DumpSummary {
    pub fn is_clean(&self) -> bool {
        self.invalid == 0 && self.trailing_bytes == 0
    }
}

/// Dumps the segment in `bytes` (named `name`) to `out`.
pub fn dump(
    name: &str,
    bytes: Bytes,
    print_records: bool,
    out: &mut impl Write,
) -> io::Result<DumpSummary> {
    writeln!(out, "Dumping {name}")?;
    let mut summary = DumpSummary::default();
    let mut position = 0usize;
    let mut expected: Option<Offset> = None;
    while position < bytes.len() {
        let rest = bytes.slice(position..);
        let header = match BatchHeader::read(&rest) {
            Ok(h) if h.size <= rest.len() => h,
            Ok(h) => {
                writeln!(out, "position: {position} INVALID: batch of {} bytes runs past the end of the file ({} bytes left); cannot continue", h.size, rest.len())?;
                summary.invalid += 1;
                summary.trailing_bytes = rest.len() as u64;
                break;
            }
            Err(e) => {
                writeln!(
                    out,
                    "position: {position} INVALID: {e}; cannot continue ({} bytes left)",
                    rest.len()
                )?;
                summary.invalid += 1;
                summary.trailing_bytes = rest.len() as u64;
                break;
            }
        };
        summary.batches += 1;
        let parsed = Batch::parse(rest.slice(..header.size));
        let codec =
            Compression::from_attributes(header.attributes).map_or("unknown", Compression::name);
        let mut problems = Vec::new();
        if let Err(e) = &parsed {
            problems.push(e.to_string());
        }
        if let Some(expected) = expected {
            if header.base_offset != expected {
                problems.push(format!(
                    "baseOffset {} does not follow the previous batch's end {expected}",
                    header.base_offset
                ));
            }
        }
        if header.last_offset_delta < 0 {
            problems.push(format!(
                "negative lastOffsetDelta {}",
                header.last_offset_delta
            ));
        }
        let last_sequence = header.last_sequence();
        writeln!(
            out,
            "baseOffset: {} lastOffset: {} count: {} baseSequence: {} lastSequence: {} producerId: {} producerEpoch: {} \
             partitionLeaderEpoch: {} isTransactional: {} isControl: {} position: {} {}: {} size: {} magic: {} \
             compresscodec: {} crc: {:#010x} isvalid: {}",
            header.base_offset,
            header.last_offset(),
            header.records_count,
            header.base_sequence,
            last_sequence,
            header.producer_id,
            header.producer_epoch,
            header.partition_leader_epoch,
            header.is_transactional(),
            header.is_control(),
            position,
            match header.timestamp_type() {
                TimestampType::LogAppendTime => "LogAppendTime",
                TimestampType::CreateTime => "CreateTime",
            },
            header.max_timestamp,
            header.size,
            header.magic,
            codec,
            header.crc,
            problems.is_empty(),
        )?;
        for p in &problems {
            writeln!(out, "  INVALID at position {position}: {p}")?;
        }
        if !problems.is_empty() {
            summary.invalid += 1;
        }
        if let (true, Ok(batch)) = (print_records, &parsed) {
            match batch.records() {
                Ok(records) => {
                    for r in records {
                        writeln!(
                            out,
                            "| offset: {} CreateTime: {} keySize: {} valueSize: {} headerKeys: [{}]",
                            r.offset,
                            r.timestamp,
                            r.key.as_ref().map_or(-1, |k| k.len() as i64),
                            r.value.as_ref().map_or(-1, |v| v.len() as i64),
                            r.headers.iter().map(|h| String::from_utf8_lossy(&h.key).into_owned()).collect::<Vec<_>>().join(","),
                        )?;
                    }
                }
                Err(e) => {
                    writeln!(out, "  INVALID records at position {position}: {e}")?;
                    summary.invalid += 1;
                }
            }
        }
        expected = Some(header.next_offset());
        position += header.size.max(HEADER_BYTES);
    }
    writeln!(
        out,
        "{} batches, {} invalid, {} trailing bytes",
        summary.batches, summary.invalid, summary.trailing_bytes
    )?;
    Ok(summary)
}

/// Dumps a segment file, or every `.log` file of a directory in name order.
pub fn dump_path(
    path: &Path,
    print_records: bool,
    out: &mut impl Write,
) -> io::Result<DumpSummary> {
    let mut files = Vec::new();
    if path.is_dir() {
        for entry in std::fs::read_dir(path)? {
            let p = entry?.path();
            if p.extension().is_some_and(|e| e == "log") {
                files.push(p);
            }
        }
        files.sort();
    } else {
        files.push(path.to_path_buf());
    }
    let mut total = DumpSummary::default();
    for file in files {
        let bytes = Bytes::from(std::fs::read(&file)?);
        let s = dump(&file.display().to_string(), bytes, print_records, out)?;
        total.batches += s.batches;
        total.invalid += s.invalid;
        total.trailing_bytes += s.trailing_bytes;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use keel_core::batch::BatchBuilder;
    use keel_core::LeaderEpoch;

    use super::*;

    fn segment() -> (BytesMut, Vec<usize>) {
        let mut buf = BytesMut::new();
        let mut sizes = Vec::new();
        for i in 0..3i64 {
            let mut b = BatchBuilder::new(Compression::Snappy)
                .record(i, Some(b"key"), Some(b"value"))
                .record(i, None, Some(b"v2"))
                .build()
                .unwrap();
            b.stamp(Offset(i * 2), LeaderEpoch(1));
            sizes.push(b.size());
            buf.extend_from_slice(b.bytes());
        }
        (buf, sizes)
    }

    #[test]
    fn clean_segment_lists_every_batch_and_record() {
        let (buf, _) = segment();
        let mut out = Vec::new();
        let s = dump("seg", buf.freeze(), true, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            s,
            DumpSummary {
                batches: 3,
                invalid: 0,
                trailing_bytes: 0
            }
        );
        assert!(
            text.contains("baseOffset: 2 lastOffset: 3 count: 2"),
            "{text}"
        );
        assert!(text.contains("compresscodec: snappy"));
        assert!(text.contains("| offset: 5 CreateTime: 2 keySize: -1 valueSize: 2"));
        assert_eq!(text.matches("isvalid: true").count(), 3);
    }

    /// Issue 2: corrupting any byte after baseOffset/length/epoch is reported with its place.
    #[test]
    fn every_corrupted_byte_is_reported_with_its_position() {
        let (clean, sizes) = segment();
        for i in 16..sizes[1] {
            let mut buf = clean.clone();
            buf[sizes[0] + i] ^= 0x10;
            let mut out = Vec::new();
            let s = dump("seg", buf.freeze(), false, &mut out).unwrap();
            let text = String::from_utf8(out).unwrap();
            assert!(!s.is_clean(), "byte {i} undetected:\n{text}");
            assert!(
                text.contains(&format!("position: {}", sizes[0])),
                "byte {i}: position named:\n{text}"
            );
            assert!(text.lines().next().unwrap().contains("seg"));
        }
    }

    #[test]
    fn broken_length_stops_the_dump_and_counts_trailing_bytes() {
        let (mut buf, sizes) = segment();
        buf[sizes[0] + 8..sizes[0] + 12].copy_from_slice(&i32::MAX.to_be_bytes());
        let mut out = Vec::new();
        let s = dump("seg", buf.freeze(), false, &mut out).unwrap();
        assert_eq!(s.batches, 1);
        assert_eq!(s.trailing_bytes as usize, sizes[1] + sizes[2]);
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("runs past the end of the file"));
    }
}
