//! Hostile and broken clients: each case must close its own connection (as Kafka does for an
//! unknown API, an unsupported version, an oversized or negative size and an
//! InvalidRequestException) and leave the listener serving everyone else.

mod wire_support;

use std::net::SocketAddr;

use bytes::{Buf, BufMut, BytesMut};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, CreateTopicsRequest, MetadataRequest,
    RequestKind,
};
use kafka_protocol::protocol::Decodable;
use keel_node::wire::{SupportedApis, WireConfig};
use wire_support::{start, start_default, Client, TestHandler};

/// Asserts that `addr` answers ApiVersions v3 on `client`.
async fn assert_serves(client: &mut Client, corr: i32) {
    client
        .send(
            ApiKey::ApiVersions,
            3,
            corr,
            "healthy",
            &RequestKind::ApiVersions(ApiVersionsRequest::default()),
        )
        .await;
    let mut frame = client.recv_frame().await;
    assert_eq!(frame.get_i32(), corr);
    let body = ApiVersionsResponse::decode(&mut frame, 3).expect("ApiVersions v3 body");
    assert_eq!(body.error_code, 0);
}

/// Sends `bytes` on a fresh connection (optionally half-closing it), checks the server closes
/// it, and checks that a connection opened before and one opened after are both served.
async fn assert_closes_only_its_connection(addr: SocketAddr, bytes: &[u8], then_eof: bool) {
    let mut before = Client::connect(addr).await;
    assert_serves(&mut before, 1).await;

    let mut bad = Client::connect(addr).await;
    bad.send_raw(bytes).await;
    if then_eof {
        use tokio::io::AsyncWriteExt;
        bad.stream.shutdown().await.expect("half-close");
    }
    bad.expect_closed().await;

    assert_serves(&mut before, 2).await;
    let mut after = Client::connect(addr).await;
    assert_serves(&mut after, 3).await;
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as i32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

#[tokio::test]
async fn garbage_bytes_close_only_that_connection() {
    let addr = start_default(TestHandler::new()).await;
    assert_closes_only_its_connection(addr, b"GET / HTTP/1.1\r\nHost: keel\r\n\r\n", false).await;
    // A plausible size with nonsense inside: api key 0x6761 is no Kafka API.
    assert_closes_only_its_connection(addr, &frame(b"garbage, not kafka"), false).await;
}

#[tokio::test]
async fn truncated_frame_then_eof_closes_only_that_connection() {
    let addr = start_default(TestHandler::new()).await;
    let mut partial = 100i32.to_be_bytes().to_vec();
    partial.extend_from_slice(&[0, 18, 0, 3, 0, 0]);
    assert_closes_only_its_connection(addr, &partial, true).await;
    // EOF inside the size prefix itself.
    assert_closes_only_its_connection(addr, &[0, 0], true).await;
}

/// socket.request.max.bytes: the prefix alone closes the connection; nothing waits for (or
/// allocates) the gigabyte.
#[tokio::test]
async fn one_gib_size_prefix_closes_only_that_connection() {
    let addr = start_default(TestHandler::new()).await;
    assert_closes_only_its_connection(addr, &(1i32 << 30).to_be_bytes(), false).await;
}

#[tokio::test]
async fn size_prefix_above_a_configured_bound_closes_the_connection() {
    let config = WireConfig {
        socket_request_max_bytes: 64,
        ..WireConfig::default()
    };
    let addr = start(TestHandler::new(), SupportedApis::all(), config).await;
    assert_closes_only_its_connection(addr, &65i32.to_be_bytes(), false).await;
}

#[tokio::test]
async fn negative_size_prefix_closes_only_that_connection() {
    let addr = start_default(TestHandler::new()).await;
    assert_closes_only_its_connection(addr, &(-1i32).to_be_bytes(), false).await;
    assert_closes_only_its_connection(addr, &i32::MIN.to_be_bytes(), false).await;
}

#[tokio::test]
async fn frame_shorter_than_a_header_closes_the_connection() {
    let addr = start_default(TestHandler::new()).await;
    assert_closes_only_its_connection(addr, &frame(&[]), false).await;
    assert_closes_only_its_connection(addr, &frame(&[0, 3, 0, 1, 0]), false).await;
}

#[tokio::test]
async fn unknown_api_key_closes_only_that_connection() {
    let addr = start_default(TestHandler::new()).await;
    let mut body = BytesMut::new();
    body.put_i16(999);
    body.put_i16(0);
    body.put_i32(1);
    body.put_i16(-1);
    assert_closes_only_its_connection(addr, &frame(&body), false).await;
    body[..2].copy_from_slice(&(-1i16).to_be_bytes());
    assert_closes_only_its_connection(addr, &frame(&body), false).await;
}

/// Fetch v18 is known to kafka-protocol but outside the advertised 4-17.
#[tokio::test]
async fn version_outside_the_advertised_range_closes_the_connection() {
    let addr = start_default(TestHandler::new()).await;
    let request = wire_support::request_frame(
        ApiKey::Fetch,
        18,
        1,
        "t",
        &RequestKind::Fetch(kafka_protocol::messages::FetchRequest::default()),
    );
    assert_closes_only_its_connection(addr, &request, false).await;
}

/// An API the broker did not enable is treated like an unknown one.
#[tokio::test]
async fn api_not_enabled_closes_the_connection() {
    let handler = TestHandler::new();
    let apis = SupportedApis::new(&[ApiKey::Metadata]);
    let addr = start(handler.clone(), apis, WireConfig::default()).await;
    let request = wire_support::request_frame(
        ApiKey::CreateTopics,
        5,
        1,
        "t",
        &RequestKind::CreateTopics(CreateTopicsRequest::default()),
    );
    assert_closes_only_its_connection(addr, &request, false).await;
    assert!(handler.handled().is_empty());
}

/// A body that does not decode: Metadata v1 whose topic array promises more than is there.
#[tokio::test]
async fn malformed_body_closes_the_connection() {
    let handler = TestHandler::new();
    let addr = start_default(handler.clone()).await;
    let mut body = BytesMut::new();
    body.put_i16(ApiKey::Metadata as i16);
    body.put_i16(1);
    body.put_i32(1);
    body.put_i16(1);
    body.put_u8(b't');
    body.put_i32(3); // three topics
    body.put_i16(5); // a name of 5 bytes, with 2 behind it
    body.put_slice(b"ab");
    assert_closes_only_its_connection(addr, &frame(&body), false).await;
    assert!(handler.handled().is_empty());
}

/// Handler failures, a missing response and a response for the wrong API close that
/// connection (the client would otherwise wait for a correlation id forever).
#[tokio::test]
async fn handler_errors_close_only_that_connection() {
    let handler = TestHandler::new();
    let addr = start_default(handler).await;
    let metadata = RequestKind::Metadata(MetadataRequest::default());
    for script in ["fail", "none"] {
        let request = wire_support::request_frame(ApiKey::Metadata, 12, 1, script, &metadata);
        assert_closes_only_its_connection(addr, &request, false).await;
    }
    // The test handler answers CreateTopics with a MetadataResponse: a mismatch.
    let create = wire_support::request_frame(
        ApiKey::CreateTopics,
        5,
        1,
        "t",
        &RequestKind::CreateTopics(CreateTopicsRequest::default()),
    );
    assert_closes_only_its_connection(addr, &create, false).await;
    // An acks=0 produce whose handler fails: no response was due, the connection still closes.
    let produce = wire_support::request_frame(
        ApiKey::Produce,
        9,
        1,
        "fail",
        &RequestKind::Produce(kafka_protocol::messages::ProduceRequest::default().with_acks(0)),
    );
    assert_closes_only_its_connection(addr, &produce, false).await;
}

/// Hand-built Produce v0-2 request: header v1, then acks, timeout, one topic, partitions.
fn legacy_produce(version: i16, corr: i32, acks: i16, partitions: &[i32]) -> Vec<u8> {
    let mut body = BytesMut::new();
    body.put_i16(ApiKey::Produce as i16);
    body.put_i16(version);
    body.put_i32(corr);
    body.put_i16(4);
    body.put_slice(b"kcat");
    body.put_i16(acks);
    body.put_i32(1000);
    body.put_i32(1);
    body.put_i16(5);
    body.put_slice(b"topic");
    body.put_i32(partitions.len() as i32);
    for p in partitions {
        body.put_i32(*p);
        body.put_i32(-1); // null record set
    }
    frame(&body)
}

/// Produce v0-2 is advertised (KAFKA-18659) and answered with UNSUPPORTED_VERSION per
/// partition, in the v0-2 response schema.
#[tokio::test]
async fn produce_v0_to_v2_gets_unsupported_version_per_partition() {
    let handler = TestHandler::new();
    let addr = start_default(handler.clone()).await;
    let mut client = Client::connect(addr).await;
    for version in 0..=2 {
        client
            .send_raw(&legacy_produce(
                version,
                40 + i32::from(version),
                -1,
                &[0, 3],
            ))
            .await;
        let mut f = client.recv_frame().await;
        assert_eq!(f.get_i32(), 40 + i32::from(version));
        assert_eq!(f.get_i32(), 1); // topics
        assert_eq!(f.get_i16(), 5);
        assert_eq!(&f.split_to(5)[..], b"topic");
        assert_eq!(f.get_i32(), 2); // partitions
        for p in [0, 3] {
            assert_eq!(f.get_i32(), p);
            assert_eq!(f.get_i16(), 35);
            assert_eq!(f.get_i64(), -1);
            if version >= 2 {
                assert_eq!(f.get_i64(), -1);
            }
        }
        if version >= 1 {
            assert_eq!(f.get_i32(), 0);
        }
        assert!(!f.has_remaining());
    }
    assert!(handler.handled().is_empty());
    assert_serves(&mut client, 50).await;
}

/// With acks=0 no error response may be sent: the connection closes, as Kafka does.
#[tokio::test]
async fn produce_v0_to_v2_with_acks_zero_closes_the_connection() {
    let addr = start_default(TestHandler::new()).await;
    assert_closes_only_its_connection(addr, &legacy_produce(2, 1, 0, &[0]), false).await;
}
