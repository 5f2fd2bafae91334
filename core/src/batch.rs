//! The Kafka record batch, format v2 (magic 2), exactly as Kafka writes it.
//!
//! ```text
//! offset  size  field                  covered by CRC
//!      0     8  baseOffset             no   (the broker stamps it)
//!      8     4  batchLength            no   (bytes after this field)
//!     12     4  partitionLeaderEpoch   no   (the broker stamps it)
//!     16     1  magic = 2              no
//!     17     4  crc (CRC-32C, bytes 21..end)
//!     21     2  attributes             yes  (bits 0-2 codec, 3 timestamp type, 4 transactional, 5 control)
//!     23     4  lastOffsetDelta        yes
//!     27     8  baseTimestamp          yes
//!     35     8  maxTimestamp           yes
//!     43     8  producerId             yes
//!     51     2  producerEpoch          yes
//!     53     4  baseSequence           yes
//!     57     4  recordsCount           yes
//!     61     …  records (compressed as one blob when the codec is not none)
//! ```
//!
//! All integers are big-endian. Records use zigzag varints; a record's timestampDelta is a
//! varlong (64-bit).
//!
//! Invariants:
//! - A [`Batch`] exists only for bytes whose length field matches the buffer, whose magic is 2
//!   and whose CRC-32C matches (parse, don't validate). Code that holds a `Batch` does not check
//!   again.
//! - [`Batch::stamp`] changes only baseOffset and partitionLeaderEpoch, which the CRC does not
//!   cover, so a stamped batch is still valid without recomputing the CRC.
//! - Nothing here panics on bytes from outside: every malformed input is a [`BatchError`].

use std::io::{Read, Write};

use bytes::{BufMut, Bytes, BytesMut};

use crate::types::{LeaderEpoch, Offset, ProducerId};

/// Byte offsets of the header fields, chained so that each follows from the one before.
pub mod field {
    pub const BASE_OFFSET: usize = 0;
    pub const BATCH_LENGTH: usize = BASE_OFFSET + 8;
    pub const PARTITION_LEADER_EPOCH: usize = BATCH_LENGTH + 4;
    pub const MAGIC: usize = PARTITION_LEADER_EPOCH + 4;
    pub const CRC: usize = MAGIC + 1;
    pub const ATTRIBUTES: usize = CRC + 4;
    pub const LAST_OFFSET_DELTA: usize = ATTRIBUTES + 2;
    pub const BASE_TIMESTAMP: usize = LAST_OFFSET_DELTA + 4;
    pub const MAX_TIMESTAMP: usize = BASE_TIMESTAMP + 8;
    pub const PRODUCER_ID: usize = MAX_TIMESTAMP + 8;
    pub const PRODUCER_EPOCH: usize = PRODUCER_ID + 8;
    pub const BASE_SEQUENCE: usize = PRODUCER_EPOCH + 2;
    pub const RECORDS_COUNT: usize = BASE_SEQUENCE + 4;
    pub const RECORDS: usize = RECORDS_COUNT + 4;
}

/// Size of the batch header: every batch is at least this long.
pub const HEADER_BYTES: usize = field::RECORDS;
const _: () = assert!(HEADER_BYTES == 61);
/// baseOffset and batchLength: the bytes before what batchLength counts.
pub const LOG_OVERHEAD_BYTES: usize = field::BATCH_LENGTH + 4;
/// Bytes from the start of a batch to the end of the last field [`Batch::stamp`] writes (and
/// the CRC does not cover): baseOffset, batchLength, partitionLeaderEpoch.
pub const STAMPED_HEAD_BYTES: usize = field::MAGIC;
/// The smallest legal batchLength: a header with no records.
pub const BATCH_LENGTH_MIN: i32 = (HEADER_BYTES - LOG_OVERHEAD_BYTES) as i32;
/// The only batch format keel stores.
pub const MAGIC_V2: i8 = 2;
/// Bound on one batch's decompressed records section, against decompression bombs.
pub const DECOMPRESSED_BYTES_MAX: usize = 64 << 20;

const ATTR_COMPRESSION_MASK: i16 = 0x07;
const ATTR_TIMESTAMP_TYPE: i16 = 0x08;
const ATTR_TRANSACTIONAL: i16 = 0x10;
const ATTR_CONTROL: i16 = 0x20;
/// Attributes bit 6 (KIP-534): the log cleaner set `baseTimestamp` to the delete horizon, the
/// time after which the batch's tombstones may be removed.
pub const ATTR_DELETE_HORIZON: i16 = 0x40;

/// Why bytes are not a valid batch. Every variant blames the bytes, never keel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("truncated batch: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    #[error("batchLength {0} is below the minimum {BATCH_LENGTH_MIN}")]
    LengthTooSmall(i32),
    #[error("batchLength {length} does not match the {have} bytes after the length field")]
    LengthMismatch { length: i32, have: usize },
    #[error("unsupported magic {0}: keel stores record batch v2 only")]
    UnsupportedMagic(i8),
    #[error("CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("unknown compression codec {0}")]
    UnknownCompression(i16),
    #[error("corrupt records section: {0}")]
    CorruptRecords(String),
    #[error("decompression failed: {0}")]
    Decompression(String),
    /// A field the CRC does not cover (baseOffset, partitionLeaderEpoch) disagrees with what
    /// the log knows it must be: damage the CRC cannot see.
    #[error("damaged field outside the CRC: {0}")]
    OutsideCrc(String),
}

/// The codec of a batch's records section (attributes bits 0-2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Compression {
    None = 0,
    Gzip = 1,
    Snappy = 2,
    Lz4 = 3,
    Zstd = 4,
}

impl Compression {
    pub const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    pub fn from_attributes(attributes: i16) -> Result<Compression, BatchError> {
        match attributes & ATTR_COMPRESSION_MASK {
            0 => Ok(Compression::None),
            1 => Ok(Compression::Gzip),
            2 => Ok(Compression::Snappy),
            3 => Ok(Compression::Lz4),
            4 => Ok(Compression::Zstd),
            other => Err(BatchError::UnknownCompression(other)),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// Attributes bit 3: who set the timestamps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimestampType {
    CreateTime,
    LogAppendTime,
}

/// The total size of the batch that starts at `buf`, read from its length field, if `buf` holds
/// at least the 12 bytes of baseOffset and batchLength.
pub fn peek_size(buf: &[u8]) -> Option<Result<usize, BatchError>> {
    if buf.len() < LOG_OVERHEAD_BYTES {
        return None;
    }
    let length = read_i32(buf, field::BATCH_LENGTH);
    if length < BATCH_LENGTH_MIN {
        return Some(Err(BatchError::LengthTooSmall(length)));
    }
    Some(Ok(LOG_OVERHEAD_BYTES + length as usize))
}

/// CRC-32C of the bytes the batch CRC covers (attributes to the end).
pub fn compute_crc(batch_bytes: &[u8]) -> u32 {
    crc32c::crc32c(&batch_bytes[field::ATTRIBUTES..])
}

/// The header fields of a batch, read from its first 61 bytes without checking the CRC. Used
/// where the bytes were checked before (indexing segments below the recovery point) and by
/// tools that must describe a corrupt batch. Never a substitute for [`Batch::parse`] before
/// serving bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: Offset,
    pub size: usize,
    pub partition_leader_epoch: LeaderEpoch,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: ProducerId,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

impl BatchHeader {
    /// Reads the header at the start of `buf`, checking the length field and the magic.
    pub fn read(buf: &[u8]) -> Result<BatchHeader, BatchError> {
        if buf.len() < HEADER_BYTES {
            return Err(BatchError::Truncated {
                need: HEADER_BYTES,
                have: buf.len(),
            });
        }
        let size = match peek_size(buf) {
            Some(result) => result?,
            None => unreachable!("checked the length above"),
        };
        let magic = buf[field::MAGIC] as i8;
        if magic != MAGIC_V2 {
            return Err(BatchError::UnsupportedMagic(magic));
        }
        Ok(BatchHeader {
            base_offset: Offset(read_i64(buf, field::BASE_OFFSET)),
            size,
            partition_leader_epoch: LeaderEpoch(read_i32(buf, field::PARTITION_LEADER_EPOCH)),
            magic,
            crc: read_u32(buf, field::CRC),
            attributes: read_i16(buf, field::ATTRIBUTES),
            last_offset_delta: read_i32(buf, field::LAST_OFFSET_DELTA),
            base_timestamp: read_i64(buf, field::BASE_TIMESTAMP),
            max_timestamp: read_i64(buf, field::MAX_TIMESTAMP),
            producer_id: ProducerId(read_i64(buf, field::PRODUCER_ID)),
            producer_epoch: read_i16(buf, field::PRODUCER_EPOCH),
            base_sequence: read_i32(buf, field::BASE_SEQUENCE),
            records_count: read_i32(buf, field::RECORDS_COUNT),
        })
    }

    pub fn last_offset(&self) -> Offset {
        self.base_offset.plus(self.last_offset_delta as i64)
    }

    pub fn next_offset(&self) -> Offset {
        self.last_offset().plus(1)
    }

    /// The sequence of the batch's last record: base sequence + last offset delta, wrapping
    /// past `i32::MAX` to 0 (Kafka's `DefaultRecordBatch.incrementSequence`); -1 without one.
    pub fn last_sequence(&self) -> i32 {
        if self.base_sequence < 0 {
            return -1;
        }
        let last = self.base_sequence as i64 + self.last_offset_delta.max(0) as i64;
        (last % (i32::MAX as i64 + 1)) as i32
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & ATTR_TRANSACTIONAL != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & ATTR_CONTROL != 0
    }

    pub fn timestamp_type(&self) -> TimestampType {
        if self.attributes & ATTR_TIMESTAMP_TYPE != 0 {
            TimestampType::LogAppendTime
        } else {
            TimestampType::CreateTime
        }
    }
}

/// One valid record batch v2, kept as the bytes the producer sent.
#[derive(Clone, PartialEq, Eq)]
pub struct Batch {
    bytes: Bytes,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batch")
            .field("base_offset", &self.base_offset())
            .field("last_offset", &self.last_offset())
            .field("epoch", &self.partition_leader_epoch())
            .field("records", &self.records_count())
            .field("bytes", &self.size())
            .finish()
    }
}

impl Batch {
    /// Checks that `bytes` hold exactly one valid batch v2 and wraps them.
    pub fn parse(bytes: Bytes) -> Result<Batch, BatchError> {
        if bytes.len() < HEADER_BYTES {
            return Err(BatchError::Truncated {
                need: HEADER_BYTES,
                have: bytes.len(),
            });
        }
        let length = read_i32(&bytes, field::BATCH_LENGTH);
        if length < BATCH_LENGTH_MIN {
            return Err(BatchError::LengthTooSmall(length));
        }
        if length as usize != bytes.len() - LOG_OVERHEAD_BYTES {
            return Err(BatchError::LengthMismatch {
                length,
                have: bytes.len() - LOG_OVERHEAD_BYTES,
            });
        }
        let magic = bytes[field::MAGIC] as i8;
        if magic != MAGIC_V2 {
            return Err(BatchError::UnsupportedMagic(magic));
        }
        let stored = read_u32(&bytes, field::CRC);
        let computed = compute_crc(&bytes);
        if stored != computed {
            return Err(BatchError::CrcMismatch { stored, computed });
        }
        Ok(Batch { bytes })
    }

    /// Wraps bytes that frame as a batch (their header reads) but failed a check, the CRC's
    /// included (the `ServeCorruptBatch` planted bug only).
    #[cfg(feature = "planted-bugs")]
    pub(crate) fn from_bytes_unchecked(bytes: Bytes) -> Batch {
        Batch { bytes }
    }

    /// Splits the first batch off `buf`. `Ok(None)` when `buf` does not yet hold a whole batch.
    pub fn parse_prefix(buf: &Bytes) -> Result<Option<Batch>, BatchError> {
        match peek_size(buf) {
            None => Ok(None),
            Some(Err(e)) => Err(e),
            Some(Ok(size)) if size > buf.len() => Ok(None),
            Some(Ok(size)) => Batch::parse(buf.slice(..size)).map(Some),
        }
    }

    /// The header fields.
    pub fn header(&self) -> BatchHeader {
        BatchHeader::read(&self.bytes).expect("a Batch holds a checked header")
    }

    /// The batch's bytes, exactly as stored.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// Total size in bytes, header included.
    pub fn size(&self) -> usize {
        self.bytes.len()
    }

    pub fn base_offset(&self) -> Offset {
        Offset(read_i64(&self.bytes, field::BASE_OFFSET))
    }

    pub fn last_offset_delta(&self) -> i32 {
        read_i32(&self.bytes, field::LAST_OFFSET_DELTA)
    }

    /// The offset of the batch's last record.
    pub fn last_offset(&self) -> Offset {
        self.base_offset().plus(self.last_offset_delta() as i64)
    }

    /// The offset after the batch's last record.
    pub fn next_offset(&self) -> Offset {
        self.last_offset().plus(1)
    }

    pub fn partition_leader_epoch(&self) -> LeaderEpoch {
        LeaderEpoch(read_i32(&self.bytes, field::PARTITION_LEADER_EPOCH))
    }

    pub fn crc(&self) -> u32 {
        read_u32(&self.bytes, field::CRC)
    }

    pub fn attributes(&self) -> i16 {
        read_i16(&self.bytes, field::ATTRIBUTES)
    }

    /// The records codec. An unknown codec value is an error only when the records are read.
    pub fn compression(&self) -> Result<Compression, BatchError> {
        Compression::from_attributes(self.attributes())
    }

    pub fn timestamp_type(&self) -> TimestampType {
        if self.attributes() & ATTR_TIMESTAMP_TYPE != 0 {
            TimestampType::LogAppendTime
        } else {
            TimestampType::CreateTime
        }
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes() & ATTR_TRANSACTIONAL != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes() & ATTR_CONTROL != 0
    }

    pub fn base_timestamp(&self) -> i64 {
        read_i64(&self.bytes, field::BASE_TIMESTAMP)
    }

    pub fn max_timestamp(&self) -> i64 {
        read_i64(&self.bytes, field::MAX_TIMESTAMP)
    }

    pub fn producer_id(&self) -> ProducerId {
        ProducerId(read_i64(&self.bytes, field::PRODUCER_ID))
    }

    pub fn producer_epoch(&self) -> i16 {
        read_i16(&self.bytes, field::PRODUCER_EPOCH)
    }

    pub fn base_sequence(&self) -> i32 {
        read_i32(&self.bytes, field::BASE_SEQUENCE)
    }

    /// The sequence number of the batch's last record ([`BatchHeader::last_sequence`]).
    pub fn last_sequence(&self) -> i32 {
        self.header().last_sequence()
    }

    pub fn records_count(&self) -> i32 {
        read_i32(&self.bytes, field::RECORDS_COUNT)
    }

    /// The batch's first [`STAMPED_HEAD_BYTES`] as [`Batch::stamp`] would leave them
    /// (baseOffset, batchLength, partitionLeaderEpoch): written in place of the batch's own, they
    /// make the stamped batch without copying the rest.
    pub fn stamped_head(
        &self,
        base_offset: Offset,
        epoch: LeaderEpoch,
    ) -> [u8; STAMPED_HEAD_BYTES] {
        let mut head = [0u8; STAMPED_HEAD_BYTES];
        head.copy_from_slice(&self.bytes[..STAMPED_HEAD_BYTES]);
        head[field::BASE_OFFSET..field::BASE_OFFSET + 8]
            .copy_from_slice(&base_offset.0.to_be_bytes());
        head[field::PARTITION_LEADER_EPOCH..field::PARTITION_LEADER_EPOCH + 4]
            .copy_from_slice(&epoch.0.to_be_bytes());
        head
    }

    /// Writes baseOffset and partitionLeaderEpoch. Neither is covered by the CRC, so the batch
    /// stays valid. Copies the bytes only if they are shared.
    pub fn stamp(&mut self, base_offset: Offset, epoch: LeaderEpoch) {
        let mut bytes = BytesMut::from(std::mem::take(&mut self.bytes));
        bytes[field::BASE_OFFSET..field::BASE_OFFSET + 8]
            .copy_from_slice(&base_offset.0.to_be_bytes());
        bytes[field::PARTITION_LEADER_EPOCH..field::PARTITION_LEADER_EPOCH + 4]
            .copy_from_slice(&epoch.0.to_be_bytes());
        self.bytes = bytes.freeze();
        debug_assert_eq!(
            self.crc(),
            compute_crc(&self.bytes),
            "stamping must not touch CRC-covered bytes"
        );
    }

    /// Marks the batch LogAppendTime with `now_ms` as its max timestamp, as Kafka's
    /// LogValidator does for topics with `message.timestamp.type=LogAppendTime`. The CRC is
    /// recomputed because both fields are covered by it.
    pub fn set_log_append_time(&mut self, now_ms: i64) {
        let mut bytes = BytesMut::from(std::mem::take(&mut self.bytes));
        let attributes = read_i16(&bytes, field::ATTRIBUTES) | ATTR_TIMESTAMP_TYPE;
        bytes[field::ATTRIBUTES..field::ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
        bytes[field::MAX_TIMESTAMP..field::MAX_TIMESTAMP + 8]
            .copy_from_slice(&now_ms.to_be_bytes());
        let crc = compute_crc(&bytes);
        bytes[field::CRC..field::CRC + 4].copy_from_slice(&crc.to_be_bytes());
        self.bytes = bytes.freeze();
    }

    /// The same batch with its records section in `codec` at `level` (a codec's own scale;
    /// -1 for gzip's default), as Kafka's LogValidator stores the batches of a topic whose
    /// `compression.type` is not `producer`. Every other field is kept: offsets, timestamps,
    /// producer id, epoch and sequence, the transactional flag; the length and the CRC are
    /// computed again. A batch already in `codec` is returned as it is.
    pub fn recompressed(&self, codec: Compression, level: i32) -> Result<Batch, BatchError> {
        let current = self.compression()?;
        if current == codec {
            return Ok(self.clone());
        }
        let section = self.records_section()?;
        let packed = compress_at(codec, Some(level), &section)?;
        let total = HEADER_BYTES + packed.len();
        let mut buf = BytesMut::with_capacity(total);
        buf.put_slice(&self.bytes[..HEADER_BYTES]);
        buf.put_slice(&packed);
        buf[field::BATCH_LENGTH..field::BATCH_LENGTH + 4]
            .copy_from_slice(&((total - LOG_OVERHEAD_BYTES) as i32).to_be_bytes());
        let attributes = (self.attributes() & !ATTR_COMPRESSION_MASK) | codec as i16;
        buf[field::ATTRIBUTES..field::ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
        let crc = compute_crc(&buf);
        buf[field::CRC..field::CRC + 4].copy_from_slice(&crc.to_be_bytes());
        Batch::parse(buf.freeze())
    }

    /// The records section, decompressed.
    pub fn records_section(&self) -> Result<Bytes, BatchError> {
        let raw = self.bytes.slice(field::RECORDS..);
        decompress(self.compression()?, &raw)
    }

    /// Decodes every record. Checks the count and offset deltas against the header.
    pub fn records(&self) -> Result<Vec<Record>, BatchError> {
        let section = self.records_section()?;
        let count = self.records_count();
        if count < 0 {
            return Err(BatchError::CorruptRecords(format!(
                "negative record count {count}"
            )));
        }
        let mut cursor = Cursor {
            buf: &section,
            pos: 0,
        };
        // Each record takes at least 7 bytes, so a count beyond that is corrupt: this bounds
        // the allocation below by the input size.
        if count as usize > section.len() / 7 + 1 {
            return Err(BatchError::CorruptRecords(format!(
                "record count {count} cannot fit in {} bytes",
                section.len()
            )));
        }
        let mut records = Vec::with_capacity(count as usize);
        let mut previous_delta = -1i64;
        for _ in 0..count {
            let (record, delta) = cursor.record(self, &section)?;
            let delta = delta as i64;
            if delta <= previous_delta || delta > self.last_offset_delta() as i64 {
                return Err(BatchError::CorruptRecords(format!(
                    "offset delta {delta} out of order or beyond lastOffsetDelta {}",
                    self.last_offset_delta()
                )));
            }
            previous_delta = delta;
            records.push(record);
        }
        if cursor.pos != section.len() {
            return Err(BatchError::CorruptRecords(format!(
                "{} bytes after the last record",
                section.len() - cursor.pos
            )));
        }
        Ok(records)
    }
}

/// A record header: a string key and an optional value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub key: Bytes,
    pub value: Option<Bytes>,
}

/// One decoded record, with its absolute offset and timestamp.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub offset: Offset,
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<RecordHeader>,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn corrupt(&self, what: &str) -> BatchError {
        BatchError::CorruptRecords(format!("{what} at byte {}", self.pos))
    }

    fn byte(&mut self) -> Result<u8, BatchError> {
        let b = *self
            .buf
            .get(self.pos)
            .ok_or_else(|| self.corrupt("truncated"))?;
        self.pos += 1;
        Ok(b)
    }

    fn varlong(&mut self) -> Result<i64, BatchError> {
        let mut raw: u64 = 0;
        for i in 0..10 {
            let b = self.byte()?;
            raw |= ((b & 0x7f) as u64) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(((raw >> 1) as i64) ^ -((raw & 1) as i64));
            }
        }
        Err(self.corrupt("varlong longer than 10 bytes"))
    }

    fn varint(&mut self) -> Result<i32, BatchError> {
        let v = self.varlong()?;
        i32::try_from(v).map_err(|_| self.corrupt("varint out of range"))
    }

    /// A length-prefixed byte string; length -1 is null.
    fn nullable(&mut self, section: &Bytes) -> Result<Option<Bytes>, BatchError> {
        let len = self.varint()?;
        if len < 0 {
            return if len == -1 {
                Ok(None)
            } else {
                Err(self.corrupt("negative length"))
            };
        }
        let end = self
            .pos
            .checked_add(len as usize)
            .filter(|&end| end <= self.buf.len())
            .ok_or_else(|| self.corrupt("length beyond the records section"))?;
        let bytes = section.slice(self.pos..end);
        self.pos = end;
        Ok(Some(bytes))
    }

    /// One record and its offset delta.
    fn record(&mut self, batch: &Batch, section: &Bytes) -> Result<(Record, i32), BatchError> {
        let length = self.varint()?;
        let start = self.pos;
        if length < 0 || start + length as usize > self.buf.len() {
            return Err(self.corrupt("record length beyond the records section"));
        }
        let _attributes = self.byte()?;
        let timestamp_delta = self.varlong()?;
        let offset_delta = self.varint()?;
        let key = self.nullable(section)?;
        let value = self.nullable(section)?;
        let header_count = self.varint()?;
        if header_count < 0 || header_count as usize > length as usize {
            return Err(self.corrupt("bad header count"));
        }
        let mut headers = Vec::with_capacity(header_count as usize);
        for _ in 0..header_count {
            let key = self
                .nullable(section)?
                .ok_or_else(|| self.corrupt("null header key"))?;
            let value = self.nullable(section)?;
            headers.push(RecordHeader { key, value });
        }
        if self.pos - start != length as usize {
            return Err(self.corrupt("record length does not match its fields"));
        }
        let record = Record {
            offset: batch.base_offset().plus(offset_delta as i64),
            timestamp: batch.base_timestamp().wrapping_add(timestamp_delta),
            key,
            value,
            headers,
        };
        Ok((record, offset_delta))
    }
}

pub(crate) fn put_varlong(buf: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        buf.push((z as u8) | 0x80);
        z >>= 7;
    }
    buf.push(z as u8);
}

pub(crate) fn put_nullable(buf: &mut Vec<u8>, bytes: Option<&[u8]>) {
    match bytes {
        None => put_varlong(buf, -1),
        Some(b) => {
            put_varlong(buf, b.len() as i64);
            buf.extend_from_slice(b);
        }
    }
}

/// A record to put in a batch with [`BatchBuilder`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewRecord {
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<RecordHeader>,
}

/// Builds a batch v2 the way a producer does. Used by tests, the simulator and keel's own
/// clients; the broker itself never rebuilds a producer's batch.
#[derive(Clone, Debug)]
pub struct BatchBuilder {
    pub base_offset: Offset,
    pub partition_leader_epoch: LeaderEpoch,
    pub compression: Compression,
    pub log_append_time: bool,
    pub transactional: bool,
    /// A control batch (attributes bit 5): transaction markers.
    pub control: bool,
    pub producer_id: ProducerId,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records: Vec<NewRecord>,
}

impl Default for BatchBuilder {
    fn default() -> Self {
        BatchBuilder {
            base_offset: Offset::ZERO,
            partition_leader_epoch: LeaderEpoch::NONE,
            compression: Compression::None,
            log_append_time: false,
            transactional: false,
            control: false,
            producer_id: ProducerId::NONE,
            producer_epoch: -1,
            base_sequence: -1,
            records: Vec::new(),
        }
    }
}

impl BatchBuilder {
    pub fn new(compression: Compression) -> Self {
        BatchBuilder {
            compression,
            ..Default::default()
        }
    }

    /// Adds a record with a key and value and no headers.
    pub fn record(mut self, timestamp: i64, key: Option<&[u8]>, value: Option<&[u8]>) -> Self {
        self.records.push(NewRecord {
            timestamp,
            key: key.map(Bytes::copy_from_slice),
            value: value.map(Bytes::copy_from_slice),
            headers: Vec::new(),
        });
        self
    }

    pub fn idempotent(mut self, producer_id: ProducerId, epoch: i16, base_sequence: i32) -> Self {
        self.producer_id = producer_id;
        self.producer_epoch = epoch;
        self.base_sequence = base_sequence;
        self
    }

    /// A transactional batch of `producer_id` at `epoch` with no sequence (base sequence -1),
    /// as a coordinator writes its records inside a transaction (Kafka's
    /// `MemoryRecords.withTransactionalRecords` with `NO_SEQUENCE`).
    pub fn transactional(mut self, producer_id: ProducerId, epoch: i16) -> Self {
        self.transactional = true;
        self.producer_id = producer_id;
        self.producer_epoch = epoch;
        self.base_sequence = -1;
        self
    }

    /// Encodes the batch. Fails only if a compressor fails, or with no records.
    pub fn build(&self) -> Result<Batch, BatchError> {
        if self.records.is_empty() {
            return Err(BatchError::CorruptRecords(
                "a batch needs at least one record".into(),
            ));
        }
        let base_timestamp = self.records[0].timestamp;
        let max_timestamp = self
            .records
            .iter()
            .map(|r| r.timestamp)
            .max()
            .unwrap_or(base_timestamp);
        let mut section = Vec::new();
        let mut record = Vec::new();
        for (delta, r) in self.records.iter().enumerate() {
            record.clear();
            record.push(0); // attributes
            put_varlong(&mut record, r.timestamp.wrapping_sub(base_timestamp));
            put_varlong(&mut record, delta as i64);
            put_nullable(&mut record, r.key.as_deref());
            put_nullable(&mut record, r.value.as_deref());
            put_varlong(&mut record, r.headers.len() as i64);
            for h in &r.headers {
                put_nullable(&mut record, Some(&h.key));
                put_nullable(&mut record, h.value.as_deref());
            }
            put_varlong(&mut section, record.len() as i64);
            section.extend_from_slice(&record);
        }
        let section = compress(self.compression, &section)?;
        let mut attributes = self.compression as i16;
        if self.log_append_time {
            attributes |= ATTR_TIMESTAMP_TYPE;
        }
        if self.transactional {
            attributes |= ATTR_TRANSACTIONAL;
        }
        if self.control {
            attributes |= ATTR_CONTROL;
        }
        let total = HEADER_BYTES + section.len();
        let mut buf = BytesMut::with_capacity(total);
        buf.put_i64(self.base_offset.0);
        buf.put_i32((total - LOG_OVERHEAD_BYTES) as i32);
        buf.put_i32(self.partition_leader_epoch.0);
        buf.put_i8(MAGIC_V2);
        buf.put_u32(0); // CRC, filled in below
        buf.put_i16(attributes);
        buf.put_i32(self.records.len() as i32 - 1);
        buf.put_i64(base_timestamp);
        buf.put_i64(max_timestamp);
        buf.put_i64(self.producer_id.0);
        buf.put_i16(self.producer_epoch);
        buf.put_i32(self.base_sequence);
        buf.put_i32(self.records.len() as i32);
        buf.put_slice(&section);
        let crc = compute_crc(&buf);
        buf[field::CRC..field::CRC + 4].copy_from_slice(&crc.to_be_bytes());
        Batch::parse(buf.freeze())
    }
}

// ---------------------------------------------------------------------------------------------
// Control batches: transaction markers
// ---------------------------------------------------------------------------------------------

/// The type of a control record (Kafka's `ControlRecordType`), from its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ControlRecordType {
    /// An ABORT transaction marker (type 0).
    Abort,
    /// A COMMIT transaction marker (type 1).
    Commit,
    /// Any other type (KRaft's 2-6, or one from a later version): readers skip it.
    Unknown(i16),
}

impl ControlRecordType {
    /// The type as the key carries it.
    pub fn code(self) -> i16 {
        match self {
            ControlRecordType::Abort => 0,
            ControlRecordType::Commit => 1,
            ControlRecordType::Unknown(code) => code,
        }
    }

    fn from_code(code: i16) -> ControlRecordType {
        match code {
            0 => ControlRecordType::Abort,
            1 => ControlRecordType::Commit,
            other => ControlRecordType::Unknown(other),
        }
    }
}

/// The control record key version keel writes (Kafka's `CURRENT_CONTROL_RECORD_KEY_VERSION`).
pub const CONTROL_KEY_VERSION: i16 = 0;
/// The end-transaction marker value version keel writes (`EndTransactionMarker`'s
/// `CURRENT_END_TXN_MARKER_VERSION`).
pub const END_TXN_MARKER_VERSION: i16 = 0;
/// Bytes of a control record key: `i16 version, i16 type`.
const CONTROL_KEY_BYTES: usize = 4;
/// Bytes of an end-transaction marker value: `i16 version, i32 coordinatorEpoch`.
const END_TXN_MARKER_VALUE_BYTES: usize = 6;

/// A COMMIT or ABORT marker, as the one record of a control batch carries it (Kafka's
/// `EndTransactionMarker`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndTxnMarker {
    /// Commit or abort.
    pub commit: bool,
    /// The epoch of the transaction coordinator that decided it (the leader epoch of its
    /// `__transaction_state` partition).
    pub coordinator_epoch: i32,
}

impl EndTxnMarker {
    /// The control record's key: `i16 version = 0, i16 type` (ABORT 0, COMMIT 1).
    pub fn key_bytes(&self) -> [u8; CONTROL_KEY_BYTES] {
        let kind = if self.commit {
            ControlRecordType::Commit
        } else {
            ControlRecordType::Abort
        };
        let mut key = [0u8; CONTROL_KEY_BYTES];
        key[..2].copy_from_slice(&CONTROL_KEY_VERSION.to_be_bytes());
        key[2..].copy_from_slice(&kind.code().to_be_bytes());
        key
    }

    /// The control record's value: `i16 version = 0, i32 coordinatorEpoch`.
    pub fn value_bytes(&self) -> [u8; END_TXN_MARKER_VALUE_BYTES] {
        let mut value = [0u8; END_TXN_MARKER_VALUE_BYTES];
        value[..2].copy_from_slice(&END_TXN_MARKER_VERSION.to_be_bytes());
        value[2..].copy_from_slice(&self.coordinator_epoch.to_be_bytes());
        value
    }

    /// The control batch a partition leader appends for this marker (Kafka's
    /// `MemoryRecords.withEndTransactionMarker`): magic 2, uncompressed, transactional and
    /// control, base sequence -1, the transaction's producer id and epoch, one record stamped
    /// `timestamp_ms`.
    pub fn batch(
        &self,
        producer_id: ProducerId,
        producer_epoch: i16,
        timestamp_ms: i64,
    ) -> Result<Batch, BatchError> {
        BatchBuilder {
            transactional: true,
            control: true,
            producer_id,
            producer_epoch,
            base_sequence: -1,
            ..BatchBuilder::default()
        }
        .record(
            timestamp_ms,
            Some(&self.key_bytes()),
            Some(&self.value_bytes()),
        )
        .build()
    }
}

/// The type of a control record with key `key` (Kafka's `ControlRecordType.parse`): an error
/// for a key shorter than 4 bytes or with a negative version; a later version is read as
/// version 0, as Kafka does.
pub fn control_record_type(key: &[u8]) -> Result<ControlRecordType, BatchError> {
    let corrupt = |what: &str| BatchError::CorruptRecords(format!("control record key: {what}"));
    let Some(head) = key.get(..CONTROL_KEY_BYTES) else {
        return Err(corrupt("shorter than 4 bytes"));
    };
    let version = i16::from_be_bytes([head[0], head[1]]);
    if version < 0 {
        return Err(corrupt("negative version"));
    }
    Ok(ControlRecordType::from_code(i16::from_be_bytes([
        head[2], head[3],
    ])))
}

impl Batch {
    /// The transaction marker this batch carries: `None` for a batch that is not a control
    /// batch, or a control batch of another type (readers skip those); an error when a control
    /// batch's record does not parse as a marker (Kafka's `EndTransactionMarker.deserialize`).
    pub fn end_txn_marker(&self) -> Result<Option<EndTxnMarker>, BatchError> {
        if !self.is_control() {
            return Ok(None);
        }
        let corrupt = |what: &str| BatchError::CorruptRecords(format!("control batch: {what}"));
        let records = self.records()?;
        let [record] = records.as_slice() else {
            return Err(corrupt("a control batch holds exactly one record"));
        };
        let key = record.key.as_deref().ok_or_else(|| corrupt("no key"))?;
        let commit = match control_record_type(key)? {
            ControlRecordType::Commit => true,
            ControlRecordType::Abort => false,
            ControlRecordType::Unknown(_) => return Ok(None),
        };
        let value = record.value.as_deref().ok_or_else(|| corrupt("no value"))?;
        let Some(head) = value.get(..END_TXN_MARKER_VALUE_BYTES) else {
            return Err(corrupt("marker value shorter than 6 bytes"));
        };
        if i16::from_be_bytes([head[0], head[1]]) < 0 {
            return Err(corrupt("marker value with a negative version"));
        }
        Ok(Some(EndTxnMarker {
            commit,
            coordinator_epoch: i32::from_be_bytes([head[2], head[3], head[4], head[5]]),
        }))
    }
}

/// The xerial snappy-java stream header, which Java producers put before snappy chunks.
const XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\x00";

/// Decompresses a records section. Output is bounded by [`DECOMPRESSED_BYTES_MAX`].
pub fn decompress(codec: Compression, raw: &Bytes) -> Result<Bytes, BatchError> {
    let err =
        |e: &dyn std::fmt::Display| BatchError::Decompression(format!("{}: {e}", codec.name()));
    let mut out = Vec::new();
    let limit = DECOMPRESSED_BYTES_MAX as u64 + 1;
    match codec {
        Compression::None => return Ok(raw.clone()),
        Compression::Gzip => {
            flate2::read::GzDecoder::new(&raw[..])
                .take(limit)
                .read_to_end(&mut out)
                .map_err(|e| err(&e))?;
        }
        Compression::Snappy => {
            if raw.starts_with(XERIAL_MAGIC) {
                // Header: magic (8), version (4), compatible version (4); then chunks, each
                // an i32 length and one raw snappy block.
                let mut pos = XERIAL_MAGIC.len() + 8;
                while pos < raw.len() {
                    let len_bytes = raw
                        .get(pos..pos + 4)
                        .ok_or_else(|| err(&"truncated xerial chunk"))?;
                    let len = u32::from_be_bytes(len_bytes.try_into().expect("4 bytes")) as usize;
                    pos += 4;
                    let chunk = raw
                        .get(pos..pos.saturating_add(len))
                        .ok_or_else(|| err(&"truncated xerial chunk"))?;
                    snappy_block(chunk, &mut out).map_err(|e| err(&e))?;
                    pos += len;
                }
            } else {
                snappy_block(raw, &mut out).map_err(|e| err(&e))?;
            }
        }
        Compression::Lz4 => {
            let decoder = lz4::Decoder::new(&raw[..]).map_err(|e| err(&e))?;
            decoder
                .take(limit)
                .read_to_end(&mut out)
                .map_err(|e| err(&e))?;
        }
        Compression::Zstd => {
            let decoder = zstd::stream::read::Decoder::new(&raw[..]).map_err(|e| err(&e))?;
            decoder
                .take(limit)
                .read_to_end(&mut out)
                .map_err(|e| err(&e))?;
        }
    }
    if out.len() > DECOMPRESSED_BYTES_MAX {
        return Err(err(&format!("more than {DECOMPRESSED_BYTES_MAX} bytes")));
    }
    Ok(Bytes::from(out))
}

fn snappy_block(block: &[u8], out: &mut Vec<u8>) -> Result<(), String> {
    let len = snap::raw::decompress_len(block).map_err(|e| e.to_string())?;
    if out.len() + len > DECOMPRESSED_BYTES_MAX {
        return Err(format!("more than {DECOMPRESSED_BYTES_MAX} bytes"));
    }
    let start = out.len();
    out.resize(start + len, 0);
    snap::raw::Decoder::new()
        .decompress(block, &mut out[start..])
        .map_err(|e| e.to_string())?;
    Ok(())
}

/// Compresses a records section the way producers do (snappy as a raw block; lz4 as a frame),
/// at each codec's default level.
pub fn compress(codec: Compression, section: &[u8]) -> Result<Vec<u8>, BatchError> {
    compress_at(codec, None, section)
}

/// Compresses a records section at `level` (the codec's default level if `None`, or -1 for
/// gzip; snappy has no levels). The topic configs bound the levels (gzip 1 to 9, lz4 1 to 17,
/// zstd -131072 to 22).
fn compress_at(
    codec: Compression,
    level: Option<i32>,
    section: &[u8],
) -> Result<Vec<u8>, BatchError> {
    let err =
        |e: std::io::Error| BatchError::Decompression(format!("{} compress: {e}", codec.name()));
    match codec {
        Compression::None => Ok(section.to_vec()),
        Compression::Gzip => {
            let level = match level {
                Some(level @ 1..=9) => flate2::Compression::new(level as u32),
                _ => flate2::Compression::default(),
            };
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), level);
            enc.write_all(section).map_err(err)?;
            enc.finish().map_err(err)
        }
        Compression::Snappy => snap::raw::Encoder::new()
            .compress_vec(section)
            .map_err(|e| BatchError::Decompression(format!("snappy compress: {e}"))),
        Compression::Lz4 => {
            let mut builder = lz4::EncoderBuilder::new();
            if let Some(level) = level {
                builder.level(level.clamp(0, 17) as u32);
            }
            let mut enc = builder.build(Vec::new()).map_err(err)?;
            enc.write_all(section).map_err(err)?;
            let (out, result) = enc.finish();
            result.map_err(err)?;
            Ok(out)
        }
        Compression::Zstd => zstd::stream::encode_all(section, level.unwrap_or(3)).map_err(err),
    }
}

fn read_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}

fn read_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn read_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

pub mod testing {
    //! The `batch_parse` fuzz target's logic: parse, decode, rebuild, parse again.

    use bytes::Bytes;

    use super::{
        compute_crc, field, Batch, BatchBuilder, NewRecord, TimestampType, HEADER_BYTES,
        LOG_OVERHEAD_BYTES, MAGIC_V2,
    };

    /// Arbitrary bytes never panic the parser or the record decoder; a batch that parses and
    /// decodes rebuilds into a batch that parses and decodes to the same records. Each input
    /// is also tried with its length, magic and CRC repaired, so that a fuzzer reaches the
    /// records decoder instead of stopping at the CRC.
    pub fn round_trip(data: &[u8]) {
        check(data);
        if data.len() >= HEADER_BYTES {
            let mut fixed = data.to_vec();
            let length = (fixed.len() - LOG_OVERHEAD_BYTES) as i32;
            fixed[field::BATCH_LENGTH..field::BATCH_LENGTH + 4]
                .copy_from_slice(&length.to_be_bytes());
            fixed[field::MAGIC] = MAGIC_V2 as u8;
            let crc = compute_crc(&fixed);
            fixed[field::CRC..field::CRC + 4].copy_from_slice(&crc.to_be_bytes());
            assert!(
                Batch::parse(Bytes::from(fixed.clone())).is_ok(),
                "a repaired header always parses"
            );
            check(&fixed);
        }
    }

    fn check(data: &[u8]) {
        let Ok(batch) = Batch::parse(Bytes::copy_from_slice(data)) else {
            return;
        };
        let header = batch.header();
        assert_eq!(
            header.size,
            batch.size(),
            "the header view agrees with the parsed batch"
        );
        assert_eq!(header.next_offset(), batch.next_offset());
        if let Ok(Some(marker)) = batch.end_txn_marker() {
            let rebuilt = marker
                .batch(batch.producer_id(), batch.producer_epoch(), 0)
                .expect("a marker builds");
            assert_eq!(
                rebuilt.end_txn_marker(),
                Ok(Some(marker)),
                "a marker rebuilds"
            );
        }
        let (Ok(records), Ok(compression)) = (batch.records(), batch.compression()) else {
            return;
        };
        if records.is_empty() {
            return;
        }
        let builder = BatchBuilder {
            base_offset: batch.base_offset(),
            partition_leader_epoch: batch.partition_leader_epoch(),
            compression,
            log_append_time: batch.timestamp_type() == TimestampType::LogAppendTime,
            transactional: batch.is_transactional(),
            control: batch.is_control(),
            producer_id: batch.producer_id(),
            producer_epoch: batch.producer_epoch(),
            base_sequence: batch.base_sequence(),
            records: records
                .iter()
                .map(|r| NewRecord {
                    timestamp: r.timestamp,
                    key: r.key.clone(),
                    value: r.value.clone(),
                    headers: r.headers.clone(),
                })
                .collect(),
        };
        let rebuilt = builder.build().expect("a decoded batch rebuilds");
        let again = Batch::parse(rebuilt.bytes().clone()).expect("a rebuilt batch parses");
        let decoded = again.records().expect("a rebuilt batch decodes");
        assert_eq!(decoded.len(), records.len());
        let dense = records
            .iter()
            .enumerate()
            .all(|(i, r)| r.offset == batch.base_offset().plus(i as i64));
        for (a, b) in decoded.iter().zip(&records) {
            assert_eq!(
                (a.timestamp, &a.key, &a.value, &a.headers),
                (b.timestamp, &b.key, &b.value, &b.headers)
            );
            if dense {
                assert_eq!(a.offset, b.offset);
            }
        }
    }
}

#[cfg(test)]
mod tests;
