//! Connection limits (issue 20, item 4): `max.connections.per.ip` closes a further connection
//! from the same address at once; `max.connections` stops accepting until a connection closes;
//! `connections.max.idle.ms` closes a quiet connection and one that trickles a frame, but not
//! one that keeps sending requests.

mod wire_support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Buf;
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, ApiVersionsResponse, RequestKind};
use kafka_protocol::protocol::Decodable;
use keel_node::wire::{ConnectionLimits, SupportedApis, WireConfig};
use wire_support::{start, Client, TestHandler};

/// Asserts that `client` is answered ApiVersions v3.
async fn assert_serves(client: &mut Client, corr: i32) {
    send_api_versions(client, corr).await;
    let mut frame = client.recv_frame().await;
    assert_eq!(frame.get_i32(), corr);
    let body = ApiVersionsResponse::decode(&mut frame, 3).expect("ApiVersions v3 body");
    assert_eq!(body.error_code, 0);
}

async fn send_api_versions(client: &mut Client, corr: i32) {
    client
        .send(
            ApiKey::ApiVersions,
            3,
            corr,
            "limits",
            &RequestKind::ApiVersions(ApiVersionsRequest::default()),
        )
        .await;
}

fn config(max_connections: usize, per_ip: usize, idle: Option<Duration>) -> WireConfig {
    WireConfig {
        connections_max_idle: idle,
        limits: Arc::new(ConnectionLimits::new(max_connections, per_ip)),
        ..WireConfig::default()
    }
}

#[tokio::test]
async fn a_connection_past_the_per_address_limit_is_closed_and_the_others_serve() {
    let addr = start(
        TestHandler::new(),
        SupportedApis::all(),
        config(100, 2, None),
    )
    .await;
    let mut first = Client::connect(addr).await;
    let mut second = Client::connect(addr).await;
    assert_serves(&mut first, 1).await;
    assert_serves(&mut second, 2).await;
    let mut third = Client::connect(addr).await;
    third.expect_closed().await;
    assert_serves(&mut first, 3).await;
    // A closed connection frees its place.
    drop(first);
    let mut fourth = loop {
        use tokio::io::AsyncReadExt;
        let mut c = Client::connect(addr).await;
        send_api_versions(&mut c, 4).await;
        let wait = Duration::from_secs(5);
        if let Ok(Ok(size)) = tokio::time::timeout(wait, c.stream.read_i32()).await {
            // Answered: the place was free.
            let mut rest = vec![0; usize::try_from(size).expect("a response size")];
            c.stream.read_exact(&mut rest).await.expect("the response");
            assert_eq!(rest[..4], 4i32.to_be_bytes());
            break c;
        }
        // Closed: the first connection's close was not seen yet; try again.
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_serves(&mut fourth, 5).await;
    assert_serves(&mut second, 6).await;
}

#[tokio::test]
async fn at_max_connections_a_new_client_waits_until_one_closes() {
    let addr = start(
        TestHandler::new(),
        SupportedApis::all(),
        config(2, 100, None),
    )
    .await;
    let mut first = Client::connect(addr).await;
    let mut second = Client::connect(addr).await;
    assert_serves(&mut first, 1).await;
    assert_serves(&mut second, 2).await;
    // The kernel completes the TCP handshake (backlog), but keel does not accept it yet.
    let mut third = Client::connect(addr).await;
    send_api_versions(&mut third, 3).await;
    third.expect_silence(Duration::from_millis(300)).await;
    drop(first);
    let mut frame = third.recv_frame().await;
    assert_eq!(
        frame.get_i32(),
        3,
        "answered once the first connection closed"
    );
    assert_serves(&mut second, 4).await;
}

#[tokio::test]
async fn idle_and_trickling_connections_are_closed_busy_ones_are_not() {
    let idle = Duration::from_millis(300);
    let addr = start(
        TestHandler::new(),
        SupportedApis::all(),
        config(100, 100, Some(idle)),
    )
    .await;
    let mut quiet = Client::connect(addr).await;
    assert_serves(&mut quiet, 1).await;
    let mut trickle = Client::connect(addr).await;
    // A size prefix of 100 bytes and two of them: a frame that never completes.
    trickle.send_raw(&[0, 0, 0, 100, 0, 18]).await;
    let mut busy = Client::connect(addr).await;
    let started = tokio::time::Instant::now();
    let mut corr = 10;
    while started.elapsed() < idle * 4 {
        assert_serves(&mut busy, corr).await;
        corr += 1;
        tokio::time::sleep(idle / 3).await;
    }
    quiet.expect_closed().await;
    trickle.expect_closed().await;
    assert_serves(&mut busy, corr).await;
}
