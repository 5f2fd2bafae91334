//! ApiVersions over a real listener: golden bytes for v0 and v3 (with the features of KIP-584),
//! v4's features, the error 35 fallback for versions above v4, and filtering by the broker's
//! enabled APIs.
//! Reference: KIP-35, KIP-511 (response header v0, fallback), KIP-584 (features), KAFKA-17011
//! (v4), docs/protocol.md.

mod wire_support;

use bytes::{Buf, BufMut, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestKind, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use keel_node::wire::{SupportedApis, WireConfig, API_SUPPORT_TABLE};
use wire_support::{start, start_default, Client, TestHandler};

fn api_versions_request(version: i16) -> RequestKind {
    let mut request = ApiVersionsRequest::default();
    if version >= 3 {
        request = request
            .with_client_software_name(StrBytes::from_static_str("keel-test"))
            .with_client_software_version(StrBytes::from_static_str("0.1.0"));
    }
    RequestKind::ApiVersions(request)
}

/// v0 body: error_code i16 | [api_key i16 | min i16 | max i16], response header v0.
#[tokio::test]
async fn api_versions_v0_golden_bytes() {
    let handler = TestHandler::new();
    let addr = start_default(handler.clone()).await;
    let mut client = Client::connect(addr).await;
    client
        .send(ApiKey::ApiVersions, 0, 7, "t", &api_versions_request(0))
        .await;
    let frame = client.recv_frame().await;

    let mut expected = BytesMut::new();
    expected.put_i32(7); // header v0: correlation id only
    expected.put_i16(0);
    expected.put_i32(API_SUPPORT_TABLE.len() as i32);
    for row in API_SUPPORT_TABLE {
        expected.put_i16(row.api_key as i16);
        expected.put_i16(row.min_advertised);
        expected.put_i16(row.max_advertised);
    }
    assert_eq!(&frame[..], &expected[..]);
    assert_eq!(&frame[..6], &[0, 0, 0, 7, 0, 0]);
    assert!(
        handler.handled().is_empty(),
        "ApiVersions reached the handler"
    );
}

/// v3 body is flexible: compact array, a tagged-fields byte per entry, throttle, and the final
/// tagged-fields byte whose absence breaks librdkafka 2.0.2 ("read underflow").
#[tokio::test]
async fn api_versions_v3_golden_bytes_and_round_trip() {
    let addr = start_default(TestHandler::new()).await;
    let mut client = Client::connect(addr).await;
    client
        .send(
            ApiKey::ApiVersions,
            3,
            0x0102_0304,
            "rdkafka",
            &api_versions_request(3),
        )
        .await;
    let frame = client.recv_frame().await;

    let mut expected = BytesMut::new();
    expected.put_i32(0x0102_0304); // header v0 even for v3: no tagged-fields byte
    expected.put_i16(0);
    expected.put_u8(API_SUPPORT_TABLE.len() as u8 + 1); // compact array length
    for row in API_SUPPORT_TABLE {
        expected.put_i16(row.api_key as i16);
        expected.put_i16(row.min_advertised);
        expected.put_i16(row.max_advertised);
        expected.put_u8(0);
    }
    expected.put_i32(0); // throttle_time_ms
                         // The body's tagged fields (ApiVersionsResponse.json): 0 SupportedFeatures, 1
                         // FinalizedFeaturesEpoch, 2 FinalizedFeatures. Below v4 a supported range starting at 0 is
                         // left out (KAFKA-17492): every feature's does (transaction.version's is 0-2), so the
                         // empty SupportedFeatures, its default, is not written; transaction.version is finalized
                         // at 2 (KIP-890 part 2).
    let name = b"transaction.version";
    expected.put_u8(2); // two tagged fields
    expected.put_u8(1); // tag 1: FinalizedFeaturesEpoch
    expected.put_u8(8);
    expected.put_i64(0);
    expected.put_u8(2); // tag 2: FinalizedFeatures
    expected.put_u8(1 + 1 + name.len() as u8 + 2 + 2 + 1);
    expected.put_u8(2);
    expected.put_u8(name.len() as u8 + 1);
    expected.put_slice(name);
    expected.put_i16(2); // MaxVersionLevel
    expected.put_i16(2); // MinVersionLevel
    expected.put_u8(0);
    assert_eq!(&frame[..], &expected[..]);

    let mut buf = frame.clone();
    let header = ResponseHeader::decode(&mut buf, 0).unwrap();
    assert_eq!(header.correlation_id, 0x0102_0304);
    let body = ApiVersionsResponse::decode(&mut buf, 3).unwrap();
    assert!(!buf.has_remaining());
    assert_eq!(body.error_code, 0);
    let advertised: Vec<(i16, i16, i16)> = body
        .api_keys
        .iter()
        .map(|k| (k.api_key, k.min_version, k.max_version))
        .collect();
    let table: Vec<(i16, i16, i16)> = API_SUPPORT_TABLE
        .iter()
        .map(|r| (r.api_key as i16, r.min_advertised, r.max_advertised))
        .collect();
    assert_eq!(advertised, table);
}

/// Versions 1 and 2 decode with kafka-protocol at their own version.
#[tokio::test]
async fn api_versions_v1_and_v2_round_trip() {
    let addr = start_default(TestHandler::new()).await;
    let mut client = Client::connect(addr).await;
    for version in [1, 2] {
        client
            .send(
                ApiKey::ApiVersions,
                version,
                version.into(),
                "t",
                &api_versions_request(version),
            )
            .await;
        let mut frame = client.recv_frame().await;
        assert_eq!(frame.get_i32(), i32::from(version));
        let body = ApiVersionsResponse::decode(&mut frame, version).unwrap();
        assert!(!frame.has_remaining());
        assert_eq!(body.error_code, 0);
        assert_eq!(body.api_keys.len(), API_SUPPORT_TABLE.len());
    }
}

/// v4 (KAFKA-17011) lists every supported feature, those whose range starts at 0 included:
/// `group.version` 0-0 (no KIP-848), `kraft.version` 0-0 (a static quorum), `transaction.version`
/// 0-2, finalized at 2 (KIP-890 part 2, which clients use only when it is finalized).
#[tokio::test]
async fn api_versions_v4_lists_features_keel_supports() {
    let addr = start_default(TestHandler::new()).await;
    let mut client = Client::connect(addr).await;
    client
        .send(
            ApiKey::ApiVersions,
            4,
            21,
            "kafka-python",
            &api_versions_request(4),
        )
        .await;
    let mut frame = client.recv_frame().await;
    assert_eq!(frame.get_i32(), 21);
    let body = ApiVersionsResponse::decode(&mut frame, 4).unwrap();
    assert!(!frame.has_remaining());
    assert_eq!(body.error_code, 0);
    assert_eq!(body.api_keys.len(), API_SUPPORT_TABLE.len());
    let supported: Vec<(String, i16, i16)> = body
        .supported_features
        .iter()
        .map(|f| (f.name.to_string(), f.min_version, f.max_version))
        .collect();
    assert_eq!(
        supported,
        vec![
            ("group.version".to_string(), 0, 0),
            ("kraft.version".to_string(), 0, 0),
            ("transaction.version".to_string(), 0, 2),
        ]
    );
    let finalized: Vec<(String, i16, i16)> = body
        .finalized_features
        .iter()
        .map(|f| (f.name.to_string(), f.min_version_level, f.max_version_level))
        .collect();
    assert_eq!(finalized, vec![("transaction.version".to_string(), 2, 2)]);
}

/// A version above v4 gets a v0 body with error 35 listing only ApiVersions 0-4, and the
/// connection stays open for the client's retry (KIP-511).
#[tokio::test]
async fn api_versions_above_v4_gets_error_35_in_a_v0_body() {
    let addr = start_default(TestHandler::new()).await;
    let mut client = Client::connect(addr).await;
    // v5 does not exist yet: a v4 body under a v5 header, as a newer client would send.
    let mut body = BytesMut::new();
    kafka_protocol::protocol::Encodable::encode(
        &ApiVersionsRequest::default()
            .with_client_software_name(StrBytes::from_static_str("newer"))
            .with_client_software_version(StrBytes::from_static_str("9")),
        &mut body,
        4,
    )
    .unwrap();
    let mut raw = BytesMut::new();
    raw.put_i32(0); // patched
    raw.put_i16(ApiKey::ApiVersions as i16);
    raw.put_i16(5);
    raw.put_i32(11);
    raw.put_i16(5);
    raw.put_slice(b"newer");
    raw.put_u8(0); // header tagged fields
    raw.put_slice(&body);
    let len = raw.len() as i32 - 4;
    raw[..4].copy_from_slice(&len.to_be_bytes());
    client.send_raw(&raw).await;
    let frame = client.recv_frame().await;
    let mut expected = BytesMut::new();
    expected.put_i32(11);
    expected.put_i16(35);
    expected.put_i32(1);
    expected.put_i16(ApiKey::ApiVersions as i16);
    expected.put_i16(0);
    expected.put_i16(4);
    assert_eq!(&frame[..], &expected[..]);

    // A version no library knows, with a body nobody can decode: same answer, unparsed.
    let mut raw = BytesMut::new();
    raw.put_i32(8 + 5);
    raw.put_i16(ApiKey::ApiVersions as i16);
    raw.put_i16(i16::MAX);
    raw.put_i32(12);
    raw.put_slice(&[0xff; 5]);
    client.send_raw(&raw).await;
    let mut frame = client.recv_frame().await;
    assert_eq!(frame.get_i32(), 12);
    assert_eq!(frame.get_i16(), 35);

    // The retry with v4 is answered normally on the same connection.
    client
        .send(
            ApiKey::ApiVersions,
            4,
            13,
            "newer",
            &api_versions_request(4),
        )
        .await;
    let mut frame = client.recv_frame().await;
    assert_eq!(frame.get_i32(), 13);
    let body = ApiVersionsResponse::decode(&mut frame, 4).unwrap();
    assert_eq!(body.error_code, 0);
}

/// The broker's enabled set decides what is advertised; ApiVersions is always there.
#[tokio::test]
async fn api_versions_lists_only_enabled_apis() {
    let apis = SupportedApis::new(&[ApiKey::Metadata, ApiKey::Produce]);
    let addr = start(TestHandler::new(), apis, WireConfig::default()).await;
    let mut client = Client::connect(addr).await;
    client
        .send(ApiKey::ApiVersions, 3, 1, "t", &api_versions_request(3))
        .await;
    let mut frame = client.recv_frame().await;
    frame.advance(4);
    let body = ApiVersionsResponse::decode(&mut frame, 3).unwrap();
    let keys: Vec<i16> = body.api_keys.iter().map(|k| k.api_key).collect();
    assert_eq!(
        keys,
        vec![
            ApiKey::Produce as i16,
            ApiKey::Metadata as i16,
            ApiKey::ApiVersions as i16
        ]
    );
}

/// A v3 request whose body does not decode closes the connection (InvalidRequestException).
#[tokio::test]
async fn api_versions_v3_with_malformed_body_closes_the_connection() {
    let addr = start_default(TestHandler::new()).await;
    let mut client = Client::connect(addr).await;
    let mut raw = BytesMut::new();
    raw.put_i32(0); // patched
    raw.put_i16(ApiKey::ApiVersions as i16);
    raw.put_i16(3);
    raw.put_i32(5);
    raw.put_i16(1);
    raw.put_u8(b't');
    raw.put_u8(0); // header tagged fields
    raw.put_u8(200); // compact string length 199, with 0 bytes behind it
    let len = raw.len() as i32 - 4;
    raw[..4].copy_from_slice(&len.to_be_bytes());
    client.send_raw(&raw).await;
    client.expect_closed().await;
}
