//! The records of `__transaction_state`, byte for byte as Kafka writes them
//! (`TransactionLogKey.json`, `TransactionLogValue.json`, `TransactionLog.scala`), so that a
//! partition written by keel reads like Kafka's and the other way round.
//!
//! Key and value each start with an `i16` version. All integers are big-endian.
//!
//! ```text
//! key, version 0 (the only one):
//!   i16 version = 0
//!   i16 length, then that many bytes of UTF-8   TransactionalId
//!
//! value, version 0 (classic encoding):
//!   i16 version = 0
//!   i64 ProducerId
//!   i16 ProducerEpoch
//!   i32 TransactionTimeoutMs
//!   i8  TransactionStatus                        (TxnState::id: 0 Empty .. 7 PrepareEpochFence)
//!   i32 count, -1 for null                       TransactionPartitions (null when Empty)
//!       per topic: i16 length + UTF-8 Topic, i32 count + that many i32 PartitionIds
//!   i64 TransactionLastUpdateTimestampMs
//!   i64 TransactionStartTimestampMs
//!
//! value, version 1 (flexible: what keel writes):
//!   the same fields in the same order, but TransactionPartitions is a compact nullable
//!   array (unsigned varint count + 1, 0 for null), each Topic a compact string (unsigned
//!   varint length + 1) and each PartitionIds a compact array; each topic entry ends with its
//!   tagged fields (unsigned varint count, keel writes 0), and the value ends with its own:
//!   unsigned varint count, then per field unsigned varint tag, unsigned varint size, data, in
//!   increasing tag order, written only when not the default:
//!     tag 0 PreviousProducerId i64 (default -1)
//!     tag 1 NextProducerId     i64 (default -1)
//!     tag 2 ClientTransactionVersion i16 (default 0)
//! ```
//!
//! A tombstone (no value) deletes the transactional id (written when the id expires).
//!
//! Invariants: [`TxnRecord::decode`] never panics and never allocates more than its input
//! justifies (counts are checked against the bytes left); `decode(encode(r)) == r` for every
//! record the coordinator writes (a property test checks it); unknown tagged fields are skipped,
//! as Kafka's generated readers skip them.

use std::collections::BTreeSet;

use crate::group::TopicPartition;
use crate::types::ProducerId;

use super::TxnState;

/// The key version keel writes and reads.
pub const KEY_VERSION: i16 = 0;
/// The value version keel writes (the flexible one, which carries PreviousProducerId).
pub const VALUE_VERSION: i16 = 1;
/// The longest transactional id a record can hold: the key's string has an `i16` length.
pub const TRANSACTIONAL_ID_BYTES_MAX: usize = i16::MAX as usize;

const TAG_PREVIOUS_PRODUCER_ID: u32 = 0;
const TAG_NEXT_PRODUCER_ID: u32 = 1;
const TAG_CLIENT_TRANSACTION_VERSION: u32 = 2;

/// One transactional id's state as `__transaction_state` stores it (Kafka's
/// `TransactionLogValue`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnLogValue {
    /// The producer id the transactional id holds.
    pub producer_id: ProducerId,
    /// The producer id before the last transition (tagged field 0, v1 only; -1 when unknown).
    pub previous_producer_id: ProducerId,
    /// KIP-890 part 2's next producer id (tagged field 1): the producer id a transaction of
    /// version 2 that ends at the exhausted epoch moves to once complete; -1 otherwise.
    pub next_producer_id: ProducerId,
    /// The producer epoch.
    pub producer_epoch: i16,
    /// The client's `transaction.timeout.ms`.
    pub timeout_ms: i32,
    /// The state.
    pub state: TxnState,
    /// The partitions in the transaction (written as null when the state is Empty).
    pub partitions: BTreeSet<TopicPartition>,
    /// When the state last changed.
    pub last_update_ms: i64,
    /// When the current transaction started (-1: none).
    pub start_ms: i64,
    /// The transaction version the client uses (tagged field 2): 2 for a transaction of
    /// version 2 (EndTxn v5, partitions added by their leaders), else 0.
    pub client_transaction_version: i16,
}

/// One record of `__transaction_state`: a transactional id and its state, or a tombstone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnRecord {
    /// The key.
    pub transactional_id: String,
    /// The value; `None` deletes the id.
    pub value: Option<TxnLogValue>,
}

/// Bytes that are not a `__transaction_state` record this code can read, or a record that
/// cannot be written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// The bytes end before the field.
    #[error("{what}: truncated")]
    Truncated {
        /// The key or value, and the field.
        what: &'static str,
    },
    /// A field holds a value its schema does not allow.
    #[error("{what}: {detail}")]
    Invalid {
        /// The key or value, and the field.
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// A value version this code does not know (Kafka's loader fails on it too).
    #[error("unknown transaction log value version {0}")]
    UnknownValueVersion(i16),
    /// Bytes left after the value's last field.
    #[error("{0} bytes after the value")]
    TrailingBytes(usize),
    /// A transactional id longer than a key can hold.
    #[error("a transactional id of {0} bytes (at most {TRANSACTIONAL_ID_BYTES_MAX})")]
    IdTooLong(usize),
}

impl TxnRecord {
    /// The record as key bytes and value bytes (`None`: tombstone), the value in version
    /// [`VALUE_VERSION`]. Fails only for an id longer than [`TRANSACTIONAL_ID_BYTES_MAX`].
    pub fn encode(&self) -> Result<(Vec<u8>, Option<Vec<u8>>), RecordError> {
        let key = encode_key(&self.transactional_id)?;
        let value = self.value.as_ref().map(|v| v.encode(VALUE_VERSION));
        Ok((key, value.transpose()?))
    }

    /// Decodes a record. `Ok(None)` for a key of a version other than 0: Kafka's loader skips
    /// those (`TransactionLog.readTxnRecordKey`'s `UnknownKey`). Never panics on any bytes.
    pub fn decode(key: &[u8], value: Option<&[u8]>) -> Result<Option<TxnRecord>, RecordError> {
        let mut k = Reader::new(key);
        let version = k.i16("key version")?;
        if version != KEY_VERSION {
            return Ok(None);
        }
        let transactional_id = k.string("key TransactionalId")?;
        if k.left() != 0 {
            return Err(RecordError::Invalid {
                what: "key",
                detail: format!("{} bytes after the transactional id", k.left()),
            });
        }
        let value = value.map(TxnLogValue::decode).transpose()?;
        Ok(Some(TxnRecord {
            transactional_id,
            value,
        }))
    }
}

/// The key bytes of `transactional_id`.
pub fn encode_key(transactional_id: &str) -> Result<Vec<u8>, RecordError> {
    let id = transactional_id.as_bytes();
    let len = i16::try_from(id.len()).map_err(|_| RecordError::IdTooLong(id.len()))?;
    let mut key = Vec::with_capacity(4 + id.len());
    key.extend_from_slice(&KEY_VERSION.to_be_bytes());
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(id);
    Ok(key)
}

impl TxnLogValue {
    /// The value bytes in `version` (0 or 1). Version 0 drops the tagged fields and fails for
    /// a topic name longer than an `i16` length allows.
    pub fn encode(&self, version: i16) -> Result<Vec<u8>, RecordError> {
        let flexible = match version {
            0 => false,
            1 => true,
            other => return Err(RecordError::UnknownValueVersion(other)),
        };
        let mut out = Vec::with_capacity(64);
        out.extend_from_slice(&version.to_be_bytes());
        out.extend_from_slice(&self.producer_id.0.to_be_bytes());
        out.extend_from_slice(&self.producer_epoch.to_be_bytes());
        out.extend_from_slice(&self.timeout_ms.to_be_bytes());
        out.push(self.state.id() as u8);
        let topics = self.topics();
        // Kafka writes null for Empty (which never holds partitions in a coordinator).
        if self.state == TxnState::Empty && topics.is_empty() {
            if flexible {
                put_uvarint(&mut out, 0);
            } else {
                out.extend_from_slice(&(-1i32).to_be_bytes());
            }
        } else {
            put_len(&mut out, topics.len(), flexible);
            for (topic, partitions) in &topics {
                if flexible {
                    put_uvarint(&mut out, topic.len() as u64 + 1);
                } else {
                    let len = i16::try_from(topic.len()).map_err(|_| RecordError::Invalid {
                        what: "value Topic",
                        detail: format!("{} bytes do not fit version 0", topic.len()),
                    })?;
                    out.extend_from_slice(&len.to_be_bytes());
                }
                out.extend_from_slice(topic.as_bytes());
                put_len(&mut out, partitions.len(), flexible);
                for p in partitions {
                    out.extend_from_slice(&p.to_be_bytes());
                }
                if flexible {
                    put_uvarint(&mut out, 0); // the topic entry's tagged fields
                }
            }
        }
        out.extend_from_slice(&self.last_update_ms.to_be_bytes());
        out.extend_from_slice(&self.start_ms.to_be_bytes());
        if flexible {
            let mut tagged: Vec<(u32, Vec<u8>)> = Vec::new();
            if self.previous_producer_id != ProducerId::NONE {
                let data = self.previous_producer_id.0.to_be_bytes().to_vec();
                tagged.push((TAG_PREVIOUS_PRODUCER_ID, data));
            }
            if self.next_producer_id != ProducerId::NONE {
                let data = self.next_producer_id.0.to_be_bytes().to_vec();
                tagged.push((TAG_NEXT_PRODUCER_ID, data));
            }
            if self.client_transaction_version != 0 {
                let data = self.client_transaction_version.to_be_bytes().to_vec();
                tagged.push((TAG_CLIENT_TRANSACTION_VERSION, data));
            }
            put_uvarint(&mut out, tagged.len() as u64);
            for (tag, data) in tagged {
                put_uvarint(&mut out, u64::from(tag));
                put_uvarint(&mut out, data.len() as u64);
                out.extend_from_slice(&data);
            }
        }
        Ok(out)
    }

    /// The partitions grouped by topic, in order.
    fn topics(&self) -> Vec<(&str, Vec<i32>)> {
        let mut topics: Vec<(&str, Vec<i32>)> = Vec::new();
        for tp in &self.partitions {
            match topics.last_mut() {
                Some((topic, ps)) if *topic == tp.topic => ps.push(tp.partition),
                _ => topics.push((&tp.topic, vec![tp.partition])),
            }
        }
        topics
    }

    /// Decodes a value of version 0 or 1. Never panics on any bytes.
    pub fn decode(bytes: &[u8]) -> Result<TxnLogValue, RecordError> {
        let mut r = Reader::new(bytes);
        let version = r.i16("value version")?;
        let flexible = match version {
            0 => false,
            1 => true,
            other => return Err(RecordError::UnknownValueVersion(other)),
        };
        let producer_id = ProducerId(r.i64("value ProducerId")?);
        let producer_epoch = r.i16("value ProducerEpoch")?;
        let timeout_ms = r.i32("value TransactionTimeoutMs")?;
        let status = r.i8("value TransactionStatus")?;
        let state = TxnState::from_id(status).ok_or_else(|| RecordError::Invalid {
            what: "value TransactionStatus",
            detail: format!("unknown state {status}"),
        })?;
        let topic_count = if flexible {
            r.compact_len("value TransactionPartitions")?
        } else {
            r.classic_len("value TransactionPartitions")?
        };
        let mut partitions = BTreeSet::new();
        // Each topic entry takes at least 2 bytes (flexible: 3): the count cannot exceed the
        // bytes left, which bounds the work below by the input size.
        for _ in 0..r.bounded(topic_count.unwrap_or(0), 2, "value TransactionPartitions")? {
            let topic = if flexible {
                r.compact_string("value Topic")?
            } else {
                r.string("value Topic")?
            };
            let count = if flexible {
                r.compact_len("value PartitionIds")?
            } else {
                r.classic_len("value PartitionIds")?
            };
            let Some(count) = count else {
                return Err(RecordError::Invalid {
                    what: "value PartitionIds",
                    detail: "null".into(),
                });
            };
            for _ in 0..r.bounded(count, 4, "value PartitionIds")? {
                partitions.insert(TopicPartition {
                    topic: topic.clone(),
                    partition: r.i32("value PartitionIds")?,
                });
            }
            if flexible {
                r.skip_tagged_fields("value topic tagged fields", |_, _| Ok(()))?;
            }
        }
        let last_update_ms = r.i64("value TransactionLastUpdateTimestampMs")?;
        let start_ms = r.i64("value TransactionStartTimestampMs")?;
        let mut value = TxnLogValue {
            producer_id,
            previous_producer_id: ProducerId::NONE,
            next_producer_id: ProducerId::NONE,
            producer_epoch,
            timeout_ms,
            state,
            partitions,
            last_update_ms,
            start_ms,
            client_transaction_version: 0,
        };
        if flexible {
            r.skip_tagged_fields("value tagged fields", |tag, data| {
                let fixed = |what: &'static str, n: usize| -> Result<&[u8], RecordError> {
                    if data.len() == n {
                        Ok(data)
                    } else {
                        Err(RecordError::Invalid {
                            what,
                            detail: format!("{} bytes, not {n}", data.len()),
                        })
                    }
                };
                match tag {
                    TAG_PREVIOUS_PRODUCER_ID => {
                        let d = fixed("value PreviousProducerId", 8)?;
                        value.previous_producer_id =
                            ProducerId(i64::from_be_bytes(d.try_into().expect("checked: 8 bytes")));
                    }
                    TAG_NEXT_PRODUCER_ID => {
                        let d = fixed("value NextProducerId", 8)?;
                        value.next_producer_id =
                            ProducerId(i64::from_be_bytes(d.try_into().expect("checked: 8 bytes")));
                    }
                    TAG_CLIENT_TRANSACTION_VERSION => {
                        let d = fixed("value ClientTransactionVersion", 2)?;
                        value.client_transaction_version =
                            i16::from_be_bytes(d.try_into().expect("checked: 2 bytes"));
                    }
                    _ => {} // a field of a later version: skipped
                }
                Ok(())
            })?;
        }
        if r.left() != 0 {
            return Err(RecordError::TrailingBytes(r.left()));
        }
        Ok(value)
    }
}

fn put_uvarint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_len(out: &mut Vec<u8>, len: usize, flexible: bool) {
    if flexible {
        put_uvarint(out, len as u64 + 1);
    } else {
        out.extend_from_slice(&(len as i32).to_be_bytes());
    }
}

/// A cursor over bytes from outside: every read is checked.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    fn left(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], RecordError> {
        if self.left() < n {
            return Err(RecordError::Truncated { what });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], RecordError> {
        Ok(self
            .take(N, what)?
            .try_into()
            .expect("take returns exactly N bytes"))
    }

    fn i8(&mut self, what: &'static str) -> Result<i8, RecordError> {
        Ok(i8::from_be_bytes(self.array(what)?))
    }

    fn i16(&mut self, what: &'static str) -> Result<i16, RecordError> {
        Ok(i16::from_be_bytes(self.array(what)?))
    }

    fn i32(&mut self, what: &'static str) -> Result<i32, RecordError> {
        Ok(i32::from_be_bytes(self.array(what)?))
    }

    fn i64(&mut self, what: &'static str) -> Result<i64, RecordError> {
        Ok(i64::from_be_bytes(self.array(what)?))
    }

    fn uvarint(&mut self, what: &'static str) -> Result<u64, RecordError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.take(1, what)?[0];
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(RecordError::Invalid {
            what,
            detail: "a varint longer than 10 bytes".into(),
        })
    }

    fn utf8(bytes: &[u8], what: &'static str) -> Result<String, RecordError> {
        String::from_utf8(bytes.to_vec()).map_err(|_| RecordError::Invalid {
            what,
            detail: "not UTF-8".into(),
        })
    }

    /// A classic string: `i16` length (not null), then UTF-8.
    fn string(&mut self, what: &'static str) -> Result<String, RecordError> {
        let len = self.i16(what)?;
        let len = usize::try_from(len).map_err(|_| RecordError::Invalid {
            what,
            detail: format!("length {len}"),
        })?;
        Self::utf8(self.take(len, what)?, what)
    }

    /// A compact string: unsigned varint length + 1 (0, null, is not allowed), then UTF-8.
    fn compact_string(&mut self, what: &'static str) -> Result<String, RecordError> {
        let len = self.uvarint(what)?;
        let Some(len) = len.checked_sub(1) else {
            return Err(RecordError::Invalid {
                what,
                detail: "null".into(),
            });
        };
        let len = usize::try_from(len).map_err(|_| RecordError::Truncated { what })?;
        Self::utf8(self.take(len, what)?, what)
    }

    /// A classic array length: `i32`, -1 for null.
    fn classic_len(&mut self, what: &'static str) -> Result<Option<u64>, RecordError> {
        match self.i32(what)? {
            -1 => Ok(None),
            n if n < 0 => Err(RecordError::Invalid {
                what,
                detail: format!("count {n}"),
            }),
            n => Ok(Some(n as u64)),
        }
    }

    /// A compact array length: unsigned varint count + 1, 0 for null.
    fn compact_len(&mut self, what: &'static str) -> Result<Option<u64>, RecordError> {
        Ok(self.uvarint(what)?.checked_sub(1))
    }

    /// `count` as a loop bound, refused when `count` elements of at least `element_bytes`
    /// each cannot fit in the bytes left.
    fn bounded(
        &self,
        count: u64,
        element_bytes: u64,
        what: &'static str,
    ) -> Result<u64, RecordError> {
        if count.saturating_mul(element_bytes) > self.left() as u64 {
            return Err(RecordError::Truncated { what });
        }
        Ok(count)
    }

    /// Tagged fields: a count, then per field a tag, a size and the data, handed to `field`.
    fn skip_tagged_fields(
        &mut self,
        what: &'static str,
        mut field: impl FnMut(u32, &[u8]) -> Result<(), RecordError>,
    ) -> Result<(), RecordError> {
        let count = self.uvarint(what)?;
        let mut last_tag = None;
        for _ in 0..self.bounded(count, 2, what)? {
            let tag = self.uvarint(what)?;
            let tag = u32::try_from(tag).map_err(|_| RecordError::Invalid {
                what,
                detail: format!("tag {tag}"),
            })?;
            if last_tag.is_some_and(|last| tag <= last) {
                return Err(RecordError::Invalid {
                    what,
                    detail: "tags out of order".into(),
                });
            }
            last_tag = Some(tag);
            let size = self.uvarint(what)?;
            let size = usize::try_from(size).map_err(|_| RecordError::Truncated { what })?;
            let data = self.take(size, what)?;
            field(tag, data)?;
        }
        Ok(())
    }
}

#[cfg(any(test, fuzzing))]
pub mod testing {
    //! The `txn_record_decode` fuzz target's logic: decode, re-encode, decode again.

    use super::TxnRecord;

    /// `data` is a big-endian `u16` key length, the key, then the value (none when empty).
    /// Whatever decodes re-encodes to bytes that decode to the same record; nothing panics.
    pub fn round_trip(data: &[u8]) {
        let [a, b, rest @ ..] = data else { return };
        let key_len = usize::from(u16::from_be_bytes([*a, *b])).min(rest.len());
        let (key, value) = rest.split_at(key_len);
        let value = (!value.is_empty()).then_some(value);
        let Ok(Some(record)) = TxnRecord::decode(key, value) else {
            return;
        };
        let (key, value) = record
            .encode()
            .expect("a decoded key holds at most i16::MAX bytes, so it encodes");
        let again = TxnRecord::decode(&key, value.as_deref()).expect("a re-encoded record decodes");
        assert_eq!(
            again,
            Some(record),
            "decode(encode(decode(x))) == decode(x)"
        );
    }
}
