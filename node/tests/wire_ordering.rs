//! Response order, acks=0 and back-pressure on one connection, over a real listener.
//! Reference: Kafka's SocketServer (one response per request, in order; acks=0 produce gets
//! none), docs/protocol.md, "Rules the wire layer keeps".

mod wire_support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use kafka_protocol::messages::{
    ApiKey, MetadataRequest, ProduceRequest, RequestKind, ResponseKind,
};
use keel_node::wire::{SupportedApis, WireConfig};
use wire_support::{request_frame, start, start_default, Client, Event, TestHandler, TEST_WAIT};

fn metadata() -> RequestKind {
    RequestKind::Metadata(MetadataRequest::default())
}

fn produce(acks: i16) -> RequestKind {
    RequestKind::Produce(ProduceRequest::default().with_acks(acks))
}

/// The handler finishes 2 before 3 before 1; the client still gets 1, 2, 3.
#[tokio::test]
async fn responses_follow_request_order_when_the_handler_finishes_out_of_order() {
    let handler = TestHandler::new();
    handler.delays.lock().unwrap().extend([
        (1, Duration::from_millis(300)),
        (3, Duration::from_millis(100)),
    ]);
    let addr = start_default(handler.clone()).await;
    let mut client = Client::connect(addr).await;
    // All three in one write: pipelined, as librdkafka does.
    let mut pipelined = BytesMut::new();
    for corr in 1..=3 {
        pipelined.put_slice(&request_frame(ApiKey::Metadata, 12, corr, "t", &metadata()));
    }
    client.send_raw(&pipelined).await;

    for corr in 1..=3 {
        let response = client.recv_response(ApiKey::Metadata, 12, corr).await;
        assert!(matches!(response, ResponseKind::Metadata(_)));
    }
    let events = handler.events();
    let end = |c| events.iter().position(|e| *e == Event::End(c)).unwrap();
    assert!(
        end(2) < end(3) && end(3) < end(1),
        "the handler did not finish out of order, so the test proves nothing: {events:?}"
    );
    // handle() itself was called in request order.
    let order: Vec<i32> = handler.handled().iter().map(|h| h.2).collect();
    assert_eq!(order, vec![1, 2, 3]);
}

/// A Produce with acks=0 gets no response; the next request's response is the next frame.
#[tokio::test]
async fn acks_zero_produce_gets_no_response_and_takes_no_slot() {
    let handler = TestHandler::new();
    let addr = start_default(handler.clone()).await;
    let mut client = Client::connect(addr).await;
    client.send(ApiKey::Produce, 9, 10, "t", &produce(0)).await;
    client
        .send(ApiKey::Metadata, 12, 11, "t", &metadata())
        .await;
    client.send(ApiKey::Produce, 7, 12, "t", &produce(1)).await;

    assert_eq!(client.recv_correlation_id().await, 11);
    let response = client.recv_response(ApiKey::Produce, 7, 12).await;
    assert!(matches!(response, ResponseKind::Produce(_)));
    client.expect_silence(Duration::from_millis(200)).await;
    let handled = handler.handled();
    assert_eq!(
        handled,
        vec![
            (ApiKey::Produce, 9, 10),
            (ApiKey::Metadata, 12, 11),
            (ApiKey::Produce, 7, 12)
        ]
    );
}

/// A slow acks=0 produce does not hold back the responses behind it.
#[tokio::test]
async fn slow_acks_zero_produce_does_not_delay_later_responses() {
    let handler = TestHandler::new();
    handler
        .delays
        .lock()
        .unwrap()
        .insert(1, Duration::from_secs(3600));
    let addr = start_default(handler.clone()).await;
    let mut client = Client::connect(addr).await;
    client.send(ApiKey::Produce, 9, 1, "t", &produce(0)).await;
    client.send(ApiKey::Metadata, 4, 2, "t", &metadata()).await;
    assert_eq!(client.recv_correlation_id().await, 2);
}

/// With N requests in flight the connection is not read: the handler sees exactly N until
/// one completes; then everything is answered, in order.
#[tokio::test]
async fn in_flight_bound_stops_reading_until_responses_are_written() {
    const IN_FLIGHT: usize = 4;
    const SENT: i32 = 10;
    let handler = TestHandler::new();
    let config = WireConfig {
        in_flight_per_connection_max: IN_FLIGHT,
        ..WireConfig::default()
    };
    let addr = start(handler.clone(), SupportedApis::all(), config).await;
    let mut client = Client::connect(addr).await;
    let mut pipelined = BytesMut::new();
    for corr in 0..SENT {
        pipelined.put_slice(&request_frame(
            ApiKey::Metadata,
            1,
            corr,
            "gate",
            &metadata(),
        ));
    }
    client.send_raw(&pipelined).await;

    let deadline = tokio::time::Instant::now() + TEST_WAIT;
    while handler.calls.load(Ordering::SeqCst) < IN_FLIGHT {
        assert!(
            tokio::time::Instant::now() < deadline,
            "handler never saw the window fill"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(handler.calls.load(Ordering::SeqCst), IN_FLIGHT);

    handler.gate.add_permits(SENT as usize);
    for corr in 0..SENT {
        let mut frame = client.recv_frame().await;
        assert_eq!(frame.get_i32(), corr);
    }
    assert_eq!(handler.calls.load(Ordering::SeqCst), SENT as usize);
}

/// ApiVersions answered by the wire layer keeps its place among handler responses.
#[tokio::test]
async fn wire_layer_replies_keep_their_place_in_the_order() {
    let handler = TestHandler::new();
    handler
        .delays
        .lock()
        .unwrap()
        .insert(1, Duration::from_millis(200));
    let addr = start_default(handler).await;
    let mut client = Client::connect(addr).await;
    client.send(ApiKey::Metadata, 12, 1, "t", &metadata()).await;
    client
        .send(
            ApiKey::ApiVersions,
            0,
            2,
            "t",
            &RequestKind::ApiVersions(Default::default()),
        )
        .await;
    assert_eq!(client.recv_correlation_id().await, 1);
    assert_eq!(client.recv_correlation_id().await, 2);
}

/// Metadata v9+ responses carry response header v1 (a tagged-fields byte after the
/// correlation id); v8 and below header v0.
#[tokio::test]
async fn response_header_version_follows_the_api_version() {
    let addr = start_default(TestHandler::new()).await;
    let mut client = Client::connect(addr).await;
    for (version, corr) in [(8, 1), (9, 2), (12, 3)] {
        client
            .send(ApiKey::Metadata, version, corr, "t", &metadata())
            .await;
        // recv_response decodes the header at kafka-protocol's version for the API and fails
        // on leftover or missing bytes.
        client.recv_response(ApiKey::Metadata, version, corr).await;
    }
}

/// A client that half-closes after its last request still gets every response owed, in
/// order, and then EOF.
#[tokio::test]
async fn half_closed_client_still_gets_the_responses_owed() {
    use tokio::io::AsyncWriteExt;
    let handler = TestHandler::new();
    handler
        .delays
        .lock()
        .unwrap()
        .insert(1, Duration::from_millis(200));
    let addr = start_default(handler).await;
    let mut client = Client::connect(addr).await;
    client.send(ApiKey::Metadata, 12, 1, "t", &metadata()).await;
    client.send(ApiKey::Metadata, 12, 2, "t", &metadata()).await;
    client.stream.shutdown().await.expect("half-close");
    assert_eq!(client.recv_correlation_id().await, 1);
    assert_eq!(client.recv_correlation_id().await, 2);
    client.expect_closed().await;
}
