//! Decoding request bodies without letting a count read from the wire size an allocation.
//!
//! kafka-protocol 0.18's array decoders call `Vec::with_capacity(n)` with the count they have
//! just read, before decoding a single element. A 14-byte Metadata request announcing
//! i32::MAX topics asks for over 100 GiB, the allocator fails and Rust aborts the process: no
//! panic to catch, every connection gone. The fix belongs in kafka-protocol (cap the capacity
//! by the bytes remaining: kafka-protocol-rs pull requests 152, 161 and 200, unmerged for
//! 0.18.0). Until then keel decodes every body twice over the same bytes when needed:
//!
//! 1. **Guarded pass**, through [`GuardedBuf`], which kafka-protocol's generic decoders read
//!    like any buffer, but:
//!    - an i32 larger than the bytes left after it is returned as [`OVERSIZED_I32_STANDIN`]
//!      (-2). kafka-protocol reads counts (arrays) and lengths (bytes) as i32 and no other i32
//!      steers decoding, so: if that i32 was a count or a length, -2 makes the decode fail
//!      right there (only -1, null, is a valid negative), where the real value would have
//!      failed too, after the huge allocation; if it was a plain field (a timeout, a
//!      `max_bytes`), decoding goes on exactly as it would have, only that field differs;
//!    - before every single-byte read, the unsigned varint that would start there is peeked
//!      at; if it announces more than the bytes left plus [`VARINT_SLACK`], the read fails.
//!      Single-byte reads are varint bytes (compact counts and lengths, tagged-field counts,
//!      tags and sizes) or booleans; a count or length that large can never be valid, and
//!      tags are small numbers, so no valid request is refused (a client would have to send a
//!      boolean byte >= 0x80 followed by varint-looking bytes).
//! 2. If the guarded pass succeeded and stood in for no i32, its result is the request. If it
//!    stood in for some, every count and length is now known to fit the bytes present, and
//!    kafka-protocol's own decoder runs on the original bytes to recover the true values.
//!
//! What always holds: no array or buffer is preallocated for more elements than there are
//! bytes left in the frame (plus [`VARINT_SLACK`] for compact forms), so one allocation is at
//! most about `socket_request_max_bytes` times the size of one decoded element.

use bytes::{Buf, Bytes, TryGetError};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::buf::ByteBuf;
use kafka_protocol::protocol::Decodable;

/// Stands in for an i32 that exceeds the bytes left after it: not a valid count or length
/// (kafka-protocol accepts -1 as null and rejects every other negative).
pub const OVERSIZED_I32_STANDIN: i32 = -2;

/// How far above the bytes left an unsigned varint may go before the guarded pass refuses it.
/// Counts and lengths never legitimately exceed the bytes left; the slack is for tag numbers.
pub const VARINT_SLACK: u64 = 64 * 1024;

/// A request body buffer for the guarded pass (see the module documentation).
#[derive(Debug)]
pub(super) struct GuardedBuf {
    inner: Bytes,
    /// How many i32 values were replaced by [`OVERSIZED_I32_STANDIN`].
    stood_in: usize,
    /// The varint that made the pass fail, if one did.
    refused_varint: Option<u32>,
}

impl GuardedBuf {
    pub(super) fn new(body: Bytes) -> Self {
        Self {
            inner: body,
            stood_in: 0,
            refused_varint: None,
        }
    }
}

impl Buf for GuardedBuf {
    fn remaining(&self) -> usize {
        self.inner.remaining()
    }

    fn chunk(&self) -> &[u8] {
        self.inner.chunk()
    }

    fn advance(&mut self, cnt: usize) {
        self.inner.advance(cnt)
    }

    fn try_get_i32(&mut self) -> Result<i32, TryGetError> {
        let value = self.inner.try_get_i32()?;
        match usize::try_from(value) {
            Ok(n) if n > self.inner.remaining() => {
                self.stood_in += 1;
                Ok(OVERSIZED_I32_STANDIN)
            }
            _ => Ok(value),
        }
    }

    fn try_get_u8(&mut self) -> Result<u8, TryGetError> {
        if let Some((value, len)) = peek_unsigned_varint(self.inner.chunk()) {
            let left = (self.inner.remaining() - len) as u64;
            if u64::from(value) > left + VARINT_SLACK {
                self.refused_varint = Some(value);
                return Err(TryGetError {
                    requested: usize::try_from(value).unwrap_or(usize::MAX),
                    available: self.inner.remaining(),
                });
            }
        }
        self.inner.try_get_u8()
    }
}

impl ByteBuf for GuardedBuf {
    fn peek_bytes(&mut self, r: std::ops::Range<usize>) -> Bytes {
        self.inner.peek_bytes(r)
    }

    fn get_bytes(&mut self, size: usize) -> Bytes {
        self.inner.get_bytes(size)
    }
}

/// The unsigned varint at the start of `bytes` and its length, computed exactly as
/// kafka-protocol's `UnsignedVarInt` decodes it (at most 5 bytes, high bits dropped); `None`
/// if the bytes end first (kafka-protocol then fails by itself).
fn peek_unsigned_varint(bytes: &[u8]) -> Option<(u32, usize)> {
    let mut value = 0u32;
    for (i, &b) in bytes.iter().take(5).enumerate() {
        value |= u32::from(b & 0x7f) << (i * 7);
        if b < 0x80 || i == 4 {
            return Some((value, i + 1));
        }
    }
    None
}

/// Decodes the body of a request for `api_key` at `version` (already checked against
/// kafka-protocol's range) with the two passes described in the module documentation.
/// `None` if `api_key` is not one keel serves (not in the support table).
pub(super) fn decode_body(
    api_key: ApiKey,
    version: i16,
    body: Bytes,
) -> Option<Result<RequestKind, String>> {
    let mut guarded = GuardedBuf::new(body.clone());
    let first = guarded_pass(api_key, &mut guarded, version)?;
    Some(match first {
        Err(reason) => Err(match guarded.refused_varint {
            Some(v) => format!("varint {v} exceeds the bytes left"),
            None => reason,
        }),
        Ok(request) if guarded.stood_in == 0 => Ok(request),
        Ok(_) => {
            let mut body = body;
            RequestKind::decode(api_key, &mut body, version).map_err(|e| format!("{e:#}"))
        }
    })
}

fn guarded_pass(
    api_key: ApiKey,
    buf: &mut GuardedBuf,
    version: i16,
) -> Option<Result<RequestKind, String>> {
    macro_rules! served {
        ($($key:ident => $request:ty),* $(,)?) => {
            match api_key {
                $(ApiKey::$key => Some(
                    <$request>::decode(buf, version)
                        .map(RequestKind::$key)
                        .map_err(|e| format!("{e:#}")),
                ),)*
                _ => None,
            }
        };
    }
    served! {
        Produce => ProduceRequest,
        Fetch => FetchRequest,
        ListOffsets => ListOffsetsRequest,
        Metadata => MetadataRequest,
        OffsetCommit => OffsetCommitRequest,
        OffsetFetch => OffsetFetchRequest,
        FindCoordinator => FindCoordinatorRequest,
        JoinGroup => JoinGroupRequest,
        Heartbeat => HeartbeatRequest,
        LeaveGroup => LeaveGroupRequest,
        SyncGroup => SyncGroupRequest,
        DescribeGroups => DescribeGroupsRequest,
        ListGroups => ListGroupsRequest,
        SaslHandshake => SaslHandshakeRequest,
        ApiVersions => ApiVersionsRequest,
        CreateTopics => CreateTopicsRequest,
        DeleteTopics => DeleteTopicsRequest,
        DeleteRecords => DeleteRecordsRequest,
        InitProducerId => InitProducerIdRequest,
        OffsetForLeaderEpoch => OffsetForLeaderEpochRequest,
        AddPartitionsToTxn => AddPartitionsToTxnRequest,
        AddOffsetsToTxn => AddOffsetsToTxnRequest,
        EndTxn => EndTxnRequest,
        TxnOffsetCommit => TxnOffsetCommitRequest,
        DescribeTransactions => DescribeTransactionsRequest,
        ListTransactions => ListTransactionsRequest,
        DescribeProducers => DescribeProducersRequest,
        DescribeConfigs => DescribeConfigsRequest,
        AlterConfigs => AlterConfigsRequest,
        SaslAuthenticate => SaslAuthenticateRequest,
        CreatePartitions => CreatePartitionsRequest,
        DeleteGroups => DeleteGroupsRequest,
        IncrementalAlterConfigs => IncrementalAlterConfigsRequest,
        DescribeCluster => DescribeClusterRequest,
        DescribeLogDirs => DescribeLogDirsRequest,
        DescribeQuorum => DescribeQuorumRequest,
        OffsetDelete => OffsetDeleteRequest,
        DescribeTopicPartitions => DescribeTopicPartitionsRequest,
        DescribeAcls => DescribeAclsRequest,
        CreateAcls => CreateAclsRequest,
        DeleteAcls => DeleteAclsRequest,
        DescribeUserScramCredentials => DescribeUserScramCredentialsRequest,
        AlterUserScramCredentials => AlterUserScramCredentialsRequest,
        ElectLeaders => ElectLeadersRequest,
        AlterPartitionReassignments => AlterPartitionReassignmentsRequest,
        ListPartitionReassignments => ListPartitionReassignmentsRequest,
        UnregisterBroker => UnregisterBrokerRequest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{BufMut, BytesMut};
    use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
    use kafka_protocol::protocol::{Encodable, StrBytes};

    use crate::wire::versions::API_SUPPORT_TABLE;

    #[test]
    fn every_table_api_has_a_guarded_decoder() {
        for row in API_SUPPORT_TABLE {
            assert!(
                guarded_pass(
                    row.api_key,
                    &mut GuardedBuf::new(Bytes::new()),
                    row.max_advertised
                )
                .is_some(),
                "{:?}",
                row.api_key
            );
        }
    }

    #[test]
    fn varint_peek_matches_kafka_protocol() {
        assert_eq!(peek_unsigned_varint(&[0x05]), Some((5, 1)));
        assert_eq!(peek_unsigned_varint(&[0x80, 0x01]), Some((128, 2)));
        assert_eq!(
            peek_unsigned_varint(&[0xff, 0xff, 0xff, 0xff, 0x0f]),
            Some((u32::MAX, 5))
        );
        // The fifth byte ends the varint whatever its high bit, like kafka-protocol.
        assert_eq!(
            peek_unsigned_varint(&[0x80, 0x80, 0x80, 0x80, 0x81, 0x01]),
            Some((1 << 28, 5))
        );
        assert_eq!(peek_unsigned_varint(&[0x80, 0x80]), None);
        assert_eq!(peek_unsigned_varint(&[]), None);
    }

    /// Metadata v0 announcing i32::MAX topics, and v9 announcing u32::MAX - 1 in a compact
    /// array: errors, not a 100 GiB reservation.
    #[test]
    fn huge_counts_fail_without_allocating() {
        let mut v0 = BytesMut::new();
        v0.put_i32(i32::MAX);
        let r = decode_body(ApiKey::Metadata, 0, v0.freeze()).unwrap();
        assert!(r.is_err(), "{r:?}");

        let v9 = Bytes::from_static(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
        let r = decode_body(ApiKey::Metadata, 9, v9).unwrap();
        assert_eq!(
            r,
            Err(format!("varint {} exceeds the bytes left", u32::MAX))
        );
    }

    /// Plain i32 fields above the bytes left (max_bytes 50 MiB in a small Fetch) are not
    /// counts: the request decodes to exactly what was sent.
    #[test]
    fn large_plain_i32_fields_survive_the_second_pass() {
        for version in [4, 11, 12] {
            let topic = FetchTopic::default()
                .with_topic(TopicName(StrBytes::from_static_str("t")))
                .with_partitions(vec![FetchPartition::default()
                    .with_partition(3)
                    .with_partition_max_bytes(1_048_576)]);
            let request = FetchRequest::default()
                .with_max_wait_ms(500)
                .with_min_bytes(1)
                .with_max_bytes(52_428_800)
                .with_topics(vec![topic]);
            let mut buf = BytesMut::new();
            request.encode(&mut buf, version).unwrap();
            let decoded = decode_body(ApiKey::Fetch, version, buf.freeze()).unwrap();
            assert_eq!(decoded, Ok(RequestKind::Fetch(request)), "v{version}");
        }
    }

    /// A tagged field with a tag number above the bytes left is still accepted (tags are not
    /// counts): the slack covers it.
    #[test]
    fn tag_numbers_above_the_bytes_left_are_accepted() {
        let mut body = BytesMut::new();
        body.put_u8(1); // compact string: empty client software name
        body.put_u8(1); // empty client software version
        body.put_u8(1); // one tagged field
        body.put_u8(100); // tag 100
        body.put_u8(1); // size 1
        body.put_u8(0);
        let r = decode_body(ApiKey::ApiVersions, 3, body.freeze()).unwrap();
        let request = match r {
            Ok(RequestKind::ApiVersions(request)) => request,
            other => panic!("{other:?}"),
        };
        assert_eq!(request.unknown_tagged_fields.len(), 1);
    }
}
