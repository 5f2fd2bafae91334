//! UNSUPPORTED_VERSION answers to Produce v0-2, which keel advertises (old librdkafka turns
//! compression off unless Produce v0 is in the advertised range: KAFKA-18659) but does not
//! implement, and which kafka-protocol 0.18 can neither decode nor encode.
//!
//! The request body is walked by hand just far enough to echo every topic and partition back
//! with error 35, base offset -1 (and log append time -1 from v2), like Kafka's
//! `ProduceRequest.getErrorResponse`. Schemas (Kafka's ProduceRequest.json and
//! ProduceResponse.json):
//!
//! ```text
//! request  v0-2: acks i16 | timeout_ms i32 | [name string | [index i32 | records bytes]]
//! response v0:   [name string | [index i32 | error_code i16 | base_offset i64]]
//! response v1:   v0 | throttle_time_ms i32
//! response v2:   partitions add log_append_time_ms i64 after base_offset
//! ```
//!
//! Response header v0 (correlation id only) for all three. With acks=0 no response may be
//! sent, so the request is refused and the connection closes, as Kafka does for acks=0 errors.
//!
//! What always holds: every count read from the request is checked against the bytes left
//! before anything is written for it, so the response stays within a small multiple of the
//! request's size; no input makes this code panic.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::ApiKey;

use super::codec::{DecodeError, SIZE_PREFIX_BYTES};

/// Fewest bytes a topic entry of a v0-2 Produce request takes: empty name (i16 length) and
/// partition count (i32).
const TOPIC_ENTRY_BYTES_MIN: usize = 2 + 4;
/// Fewest bytes a partition entry takes: index (i32) and records length (i32, -1 for null).
const PARTITION_ENTRY_BYTES_MIN: usize = 4 + 4;

/// Builds the response frame (size prefix included) answering a Produce v0-2 request whose
/// body (after the request header) is `body`.
pub(super) fn unsupported_version_response(
    correlation_id: i32,
    version: i16,
    body: Bytes,
) -> Result<Bytes, DecodeError> {
    debug_assert!(
        (0..=2).contains(&version),
        "legacy produce version {version}"
    );
    let malformed = |reason: &str| DecodeError::MalformedBody {
        api_key: ApiKey::Produce,
        version,
        reason: reason.to_owned(),
    };
    let mut r = Reader { rest: &body };
    let acks = r.i16().ok_or_else(|| malformed("no acks"))?;
    if acks == 0 {
        return Err(DecodeError::UnsupportedVersionWithoutResponse {
            api_key: ApiKey::Produce,
            version,
        });
    }
    r.i32().ok_or_else(|| malformed("no timeout"))?;

    let mut out = BytesMut::new();
    out.put_i32(0); // size, patched at the end
    out.put_i32(correlation_id);
    let topics = r
        .count(TOPIC_ENTRY_BYTES_MIN)
        .ok_or_else(|| malformed("bad topic count"))?;
    out.put_i32(topics);
    for _ in 0..topics {
        let name = r.string().ok_or_else(|| malformed("bad topic name"))?;
        out.put_i16(name.len() as i16); // < i16::MAX: read with an i16 length
        out.put_slice(name);
        let partitions = r
            .count(PARTITION_ENTRY_BYTES_MIN)
            .ok_or_else(|| malformed("bad partition count"))?;
        out.put_i32(partitions);
        for _ in 0..partitions {
            let index = r.i32().ok_or_else(|| malformed("no partition index"))?;
            r.nullable_bytes()
                .ok_or_else(|| malformed("bad record set"))?;
            out.put_i32(index);
            out.put_i16(ResponseError::UnsupportedVersion.code());
            out.put_i64(-1); // base_offset
            if version >= 2 {
                out.put_i64(-1); // log_append_time_ms
            }
        }
    }
    if version >= 1 {
        out.put_i32(0); // throttle_time_ms
    }
    let len = out.len() - SIZE_PREFIX_BYTES;
    let len = i32::try_from(len).map_err(|_| malformed("error response too large"))?;
    out[..SIZE_PREFIX_BYTES].copy_from_slice(&len.to_be_bytes());
    Ok(out.freeze())
}

/// A bounds-checked big-endian reader: every method returns `None` instead of reading past
/// the end.
struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.rest.len() {
            return None;
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Some(head)
    }

    fn i16(&mut self) -> Option<i16> {
        let b = self.take(2)?;
        Some(i16::from_be_bytes([b[0], b[1]]))
    }

    fn i32(&mut self) -> Option<i32> {
        let b = self.take(4)?;
        Some(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// An array count that the remaining bytes can hold at `entry_bytes_min` per entry.
    fn count(&mut self, entry_bytes_min: usize) -> Option<i32> {
        let n = self.i32()?;
        let n_usize = usize::try_from(n).ok()?;
        (n_usize <= self.rest.len() / entry_bytes_min).then_some(n)
    }

    /// A non-null string (i16 length).
    fn string(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.i16()?).ok()?;
        self.take(len)
    }

    /// Bytes with an i32 length, -1 meaning null.
    fn nullable_bytes(&mut self) -> Option<()> {
        match self.i32()? {
            -1 => Some(()),
            len => self.take(usize::try_from(len).ok()?).map(|_| ()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(acks: i16, topics: &[(&str, &[i32])]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_i16(acks);
        b.put_i32(30_000);
        b.put_i32(topics.len() as i32);
        for (name, partitions) in topics {
            b.put_i16(name.len() as i16);
            b.put_slice(name.as_bytes());
            b.put_i32(partitions.len() as i32);
            for p in *partitions {
                b.put_i32(*p);
                b.put_i32(3);
                b.put_slice(b"abc");
            }
        }
        b.freeze()
    }

    /// Golden bytes: Produce v2 answer, per ProduceResponse.json v2.
    #[test]
    fn v2_echoes_each_partition_with_error_35() {
        let frame = unsupported_version_response(9, 2, request(1, &[("t", &[0, 4])])).unwrap();
        let mut expected = BytesMut::new();
        expected.put_i32(9); // correlation id, response header v0
        expected.put_i32(1);
        expected.put_i16(1);
        expected.put_slice(b"t");
        expected.put_i32(2);
        for p in [0, 4] {
            expected.put_i32(p);
            expected.put_i16(35);
            expected.put_i64(-1);
            expected.put_i64(-1);
        }
        expected.put_i32(0); // throttle
        assert_eq!(&frame[..4], &(expected.len() as i32).to_be_bytes());
        assert_eq!(&frame[4..], &expected[..]);
    }

    #[test]
    fn v0_has_no_throttle_and_no_log_append_time() {
        let frame = unsupported_version_response(1, 0, request(-1, &[("ab", &[7])])).unwrap();
        // corr 4 | topics 4 | name 2+2 | partitions 4 | index 4 | error 2 | offset 8
        assert_eq!(frame.len(), 4 + 4 + 4 + 4 + 4 + 4 + 2 + 8);
    }

    #[test]
    fn acks_zero_is_refused_without_response() {
        let err = unsupported_version_response(1, 1, request(0, &[("t", &[0])])).unwrap_err();
        assert!(matches!(
            err,
            DecodeError::UnsupportedVersionWithoutResponse { .. }
        ));
    }

    #[test]
    fn impossible_counts_and_truncation_are_malformed() {
        let mut huge = BytesMut::new();
        huge.put_i16(1);
        huge.put_i32(0);
        huge.put_i32(i32::MAX);
        assert!(matches!(
            unsupported_version_response(1, 1, huge.freeze()),
            Err(DecodeError::MalformedBody { .. })
        ));
        let full = request(1, &[("topic", &[1, 2, 3])]);
        for cut in 0..full.len() {
            assert!(
                unsupported_version_response(1, 1, full.slice(..cut)).is_err(),
                "cut at {cut}"
            );
        }
    }
}
