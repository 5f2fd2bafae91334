//! Property tests of the pure decoder: no input makes it panic, and what kafka-protocol
//! encodes, it decodes back.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, MetadataRequest, RequestHeader, RequestKind};
use kafka_protocol::protocol::{Encodable, StrBytes};
use keel_node::wire::{
    classify, decode_request, testing, DecodeError, Inbound, SupportedApis, API_SUPPORT_TABLE,
};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    /// Random bytes, any length.
    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        testing::request_decode(&bytes);
    }

    /// A header prefix for an API and version keel serves, then random bytes: reaches the
    /// header and body decoders instead of stopping at the api key. Without the count guard
    /// this aborts the process within a few hundred cases (an array count near i32::MAX makes
    /// kafka-protocol preallocate over 100 GiB).
    #[test]
    fn served_api_prefix_then_random_bytes_never_panic(
        row in 0..API_SUPPORT_TABLE.len(),
        version_pick in any::<u16>(),
        correlation_id in any::<i32>(),
        body in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let row = API_SUPPORT_TABLE[row];
        let span = (row.max_advertised - row.min_advertised + 1) as u16;
        let version = row.min_advertised + (version_pick % span) as i16;
        let mut frame = BytesMut::new();
        frame.put_i16(row.api_key as i16);
        frame.put_i16(version);
        frame.put_i32(correlation_id);
        frame.put_slice(&body);
        testing::request_decode(&frame);
    }

    /// kafka-protocol's own encoding of a Metadata request decodes to the same request, with
    /// the header fields intact, at every advertised version.
    #[test]
    fn encoded_metadata_requests_decode_back(
        version in 0i16..=12,
        correlation_id in any::<i32>(),
        client_id in "[a-z]{0,12}",
        topic_count in 0usize..4,
    ) {
        let topics = (0..topic_count)
            .map(|i| {
                kafka_protocol::messages::metadata_request::MetadataRequestTopic::default()
                    .with_name(Some(StrBytes::from_string(format!("topic-{i}")).into()))
            })
            .collect();
        let mut request = MetadataRequest::default().with_topics(Some(topics));
        if version < 4 {
            request.allow_auto_topic_creation = true;
        }
        let header = RequestHeader::default()
            .with_request_api_key(ApiKey::Metadata as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_string(client_id)));
        let mut buf = BytesMut::new();
        header.encode(&mut buf, ApiKey::Metadata.request_header_version(version)).unwrap();
        let body = RequestKind::Metadata(request);
        body.encode(&mut buf, version).unwrap();
        let frame: Bytes = buf.freeze();

        let decoded = decode_request(frame.clone()).unwrap();
        prop_assert_eq!(decoded.api_key, ApiKey::Metadata);
        prop_assert_eq!(&decoded.header, &header);
        prop_assert_eq!(&decoded.body, &body);
        match classify(frame, &SupportedApis::all()).unwrap() {
            Inbound::Request(r) => prop_assert_eq!(r, decoded),
            other => prop_assert!(false, "classified as {:?}", other),
        }
    }
}

#[test]
fn decode_errors_name_the_blame() {
    assert_eq!(
        decode_request(Bytes::from_static(&[0, 3, 0])),
        Err(DecodeError::Truncated { len: 3 })
    );
    assert_eq!(
        decode_request(Bytes::from_static(&[0x7f, 0, 0, 0, 0, 0, 0, 1])),
        Err(DecodeError::UnknownApiKey(0x7f00))
    );
    assert_eq!(
        decode_request(Bytes::from_static(&[0, 0, 0, 1, 0, 0, 0, 1])),
        Err(DecodeError::UnsupportedVersion {
            api_key: ApiKey::Produce,
            version: 1
        })
    );
    assert!(matches!(
        decode_request(Bytes::from_static(&[0, 3, 0, 1, 0, 0, 0, 1, 0])),
        Err(DecodeError::MalformedHeader { .. })
    ));
    assert!(matches!(
        decode_request(Bytes::from_static(&[
            0, 3, 0, 1, 0, 0, 0, 1, 0xff, 0xff, 0, 0
        ])),
        Err(DecodeError::MalformedBody { .. })
    ));
    assert_eq!(
        classify(
            Bytes::from_static(&[0, 11, 0, 0, 0, 0, 0, 1, 0xff, 0xff]),
            &SupportedApis::new(&[ApiKey::Metadata])
        ),
        Err(DecodeError::ApiNotServed(ApiKey::JoinGroup))
    );
}

/// kafka-protocol 0.18 preallocates arrays from the count on the wire; the count guard turns
/// these into decode errors instead of a process abort (kafka-protocol-rs pull request 152's
/// reproducer is the second case).
#[test]
fn huge_array_counts_are_errors_not_aborts() {
    let cases: [&[u8]; 4] = [
        // Metadata v0, null client id, topics: i32::MAX
        &[0, 3, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff],
        // Metadata v0 per kafka-protocol-rs#152: 54 million topics
        &[
            0, 3, 0, 0, 0, 0, 0, 1, 0xff, 0xff, 0x03, 0x3c, 0x0c, 0x00, 0xb6,
        ],
        // Metadata v12 (flexible), empty client id, no header tags, compact topics u32::MAX-1
        &[
            0, 3, 0, 12, 0, 0, 0, 1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f,
        ],
        // CreateTopics v2: topics i32::MAX
        &[0, 19, 0, 2, 0, 0, 0, 1, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff],
    ];
    for frame in cases {
        let r = decode_request(Bytes::copy_from_slice(frame));
        assert!(
            matches!(r, Err(DecodeError::MalformedBody { .. })),
            "{frame:?}: {r:?}"
        );
        testing::request_decode(frame);
    }
}
