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

/// The bytes of one produce frame of [`flood_frame`], size prefix included.
const FLOOD_RECORDS_BYTES: usize = 1024 * 1024;

/// A Produce v9 (acks=1) carrying [`FLOOD_RECORDS_BYTES`] of record bytes, size prefix
/// included. The test handler does not read the records.
fn flood_frame(corr: i32, client_id: &str) -> bytes::Bytes {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{ProduceRequest, TopicName};
    use kafka_protocol::protocol::StrBytes;
    let body = ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_static_str("flood")))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(bytes::Bytes::from(vec![
                    0u8;
                    FLOOD_RECORDS_BYTES
                ])))])]);
    wire_support::request_frame(
        ApiKey::Produce,
        9,
        corr,
        client_id,
        &RequestKind::Produce(body),
    )
}

/// A server with its metrics and limits, for the queued-bytes tests.
async fn start_with_metrics(
    handler: Arc<TestHandler>,
    config: WireConfig,
) -> (std::net::SocketAddr, Arc<keel_node::metrics::Metrics>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let metrics = Arc::new(keel_node::metrics::Metrics::new());
    let server = keel_node::wire::WireServer::with_metrics(
        handler,
        SupportedApis::all(),
        config,
        metrics.clone(),
    );
    tokio::spawn(server.serve(listener));
    (addr, metrics)
}

/// Polls `done` every 10 ms until it holds, failing after [`wire_support::TEST_WAIT`].
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + wire_support::TEST_WAIT;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `queued.max.request.bytes` (Kafka's `SocketServer` memory pool, KIP-72): eight connections
/// each send a 1 MiB produce while the handler holds every produce unanswered; with a bound of
/// three and a half such frames, exactly three are read and handed to the handler, the others
/// wait unread (not closed as idle, though they wait longer than `connections.max.idle.ms`),
/// `keel_request_queue_bytes` shows the three, and a small request on another connection is
/// still answered. Once the handler answers, every flood request is read and answered, never
/// holding more than the bound, and the gauge returns to 0.
#[tokio::test]
async fn a_flood_of_large_produces_holds_at_most_queued_max_request_bytes() {
    let frame_bytes = flood_frame(0, "gate").len();
    let bound = 3 * frame_bytes + frame_bytes / 2;
    let limits = Arc::new(ConnectionLimits::new(100, 100).with_queued_request_bytes(Some(bound)));
    let handler = TestHandler::new();
    let (addr, metrics) = start_with_metrics(
        handler.clone(),
        WireConfig {
            socket_request_max_bytes: 2 * frame_bytes,
            connections_max_idle: Some(Duration::from_millis(200)),
            limits: limits.clone(),
            ..WireConfig::default()
        },
    )
    .await;
    let mut senders = Vec::new();
    for corr in 0..8 {
        let mut client = Client::connect(addr).await;
        // Spawned: a frame the broker does not read fills the socket buffers and blocks.
        senders.push(tokio::spawn(async move {
            client.send_raw(&flood_frame(corr, "gate")).await;
            client
        }));
    }
    let calls = || handler.calls.load(std::sync::atomic::Ordering::SeqCst);
    wait_until("three flood requests handed to the handler", || {
        calls() == 3
    })
    .await;
    wait_until("the gauge shows them", || {
        metrics.request_queue_bytes() == (3 * frame_bytes) as i64
    })
    .await;
    assert_eq!(limits.queued_request_bytes(), 3 * frame_bytes);
    // Longer than connections.max.idle.ms: the waiting connections are not idle.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // ApiVersions is answered by the wire layer, so it does not count as a handler call.
    let mut well_behaved = Client::connect(addr).await;
    assert_serves(&mut well_behaved, 1).await;
    assert_serves(&mut well_behaved, 2).await;
    assert_eq!(calls(), 3, "no further flood frame was read");
    assert!(limits.queued_request_bytes() <= bound);

    handler.gate.add_permits(8);
    let mut clients = Vec::new();
    for sender in senders {
        clients.push(sender.await.expect("sender task"));
    }
    let mut answered = Vec::new();
    for client in &mut clients {
        assert!(
            limits.queued_request_bytes() <= bound,
            "queued bytes {} above the bound {bound}",
            limits.queued_request_bytes()
        );
        answered.push(client.recv_correlation_id().await);
    }
    answered.sort_unstable();
    assert_eq!(answered, (0..8).collect::<Vec<_>>());
    assert_eq!(calls(), 8);
    wait_until("the gauge back to 0", || metrics.request_queue_bytes() == 0).await;
    assert_eq!(limits.queued_request_bytes(), 0);
    // A new connection: the first may have idled past connections.max.idle.ms meanwhile.
    assert_serves(&mut Client::connect(addr).await, 3).await;
}

/// Slowloris against the bound: two connections announce 1 MiB frames and send a few bytes of
/// each, which takes the whole of `queued.max.request.bytes`; a well-behaved client's request
/// waits only until `connections.max.idle.ms` closes them (Kafka's idle timeout is its defence
/// too), then is answered.
#[tokio::test]
async fn slowloris_frames_holding_the_bound_are_closed_by_the_idle_timeout() {
    let frame_bytes = flood_frame(0, "slow").len();
    let limits =
        Arc::new(ConnectionLimits::new(100, 100).with_queued_request_bytes(Some(2 * frame_bytes)));
    let (addr, metrics) = start_with_metrics(
        TestHandler::new(),
        WireConfig {
            socket_request_max_bytes: 2 * frame_bytes,
            connections_max_idle: Some(Duration::from_millis(300)),
            limits: limits.clone(),
            ..WireConfig::default()
        },
    )
    .await;
    let mut slow = Vec::new();
    for corr in 0..2 {
        let mut client = Client::connect(addr).await;
        client.send_raw(&flood_frame(corr, "slow")[..64]).await;
        slow.push(client);
    }
    wait_until("both partial frames admitted", || {
        limits.queued_request_bytes() == 2 * frame_bytes
    })
    .await;
    let mut well_behaved = Client::connect(addr).await;
    assert_serves(&mut well_behaved, 1).await;
    for client in &mut slow {
        client.expect_closed().await;
    }
    wait_until("the bound empty again", || {
        limits.queued_request_bytes() == 0 && metrics.request_queue_bytes() == 0
    })
    .await;
    assert_serves(&mut well_behaved, 2).await;
}

/// Raises this process's open-file limit to its hard limit and returns the soft limit now.
#[cfg(not(madsim))]
fn raise_open_files_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        }
    }
    limit.rlim_cur
}

/// 5,000 connections from one address against `max.connections.per.ip` of 100 and
/// `max.connections` of 150: exactly 100 are served, every other is closed at once, and a
/// client from another address (127.0.0.2) connects and is served throughout. Each connection
/// costs two descriptors here (client and broker), so the test raises its open-file limit and
/// scales the count down to fit when the hard limit is too low. Real sockets only: the
/// simulator's network has no `TcpSocket` to bind a second client address.
#[cfg(not(madsim))]
#[tokio::test]
async fn five_thousand_connections_are_refused_beyond_the_limits_and_others_still_served() {
    const WANTED: usize = 5_000;
    const PER_IP: usize = 100;
    let files = usize::try_from(raise_open_files_limit()).unwrap_or(usize::MAX);
    // Two descriptors per connection, and room for the test harness's own.
    let count = WANTED.min(files.saturating_sub(256) / 2);
    assert!(
        count > 2 * PER_IP,
        "open-file limit {files} too low for the test"
    );
    let addr = start(
        TestHandler::new(),
        SupportedApis::all(),
        config(PER_IP + 50, PER_IP, None),
    )
    .await;
    let other = {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind("127.0.0.2:0".parse().expect("address"))
            .expect("bind 127.0.0.2");
        socket.connect(addr).await.expect("connect from 127.0.0.2")
    };
    let mut other = Client { stream: other };
    assert_serves(&mut other, 1).await;
    let mut clients = Vec::with_capacity(count);
    for _ in 0..count {
        clients.push(Client::connect(addr).await);
    }
    assert_serves(&mut other, 2).await;
    let mut served = 0;
    for (i, client) in clients.iter_mut().enumerate() {
        use tokio::io::AsyncReadExt;
        send_api_versions(client, 10).await;
        let mut size = [0u8; 4];
        match tokio::time::timeout(wire_support::TEST_WAIT, client.stream.read(&mut size)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {}
            Ok(Ok(_)) => served += 1,
            Err(_) => panic!("connection {i} neither answered nor closed"),
        }
    }
    assert_eq!(served, PER_IP, "exactly max.connections.per.ip served");
    assert_serves(&mut other, 3).await;
}

/// KIP-219: a Produce answered with `throttle_time_ms` is answered at once, and the broker
/// reads nothing more from that connection until the throttle has passed; other connections
/// are served meanwhile.
#[tokio::test]
async fn a_throttled_connection_is_not_read_until_its_throttle_passed() {
    let handler = TestHandler::new();
    let addr = start(handler.clone(), SupportedApis::all(), WireConfig::default()).await;
    let mut throttled = Client::connect(addr).await;
    let started = tokio::time::Instant::now();
    let produce = kafka_protocol::messages::ProduceRequest::default()
        .with_acks(1)
        .with_timeout_ms(1000);
    throttled
        .send(
            ApiKey::Produce,
            9,
            1,
            "throttle",
            &RequestKind::Produce(produce),
        )
        .await;
    assert_eq!(throttled.recv_correlation_id().await, 1);
    // Pipelined after the throttled answer: read only once the throttle has passed.
    send_api_versions(&mut throttled, 2).await;
    let mut other = Client::connect(addr).await;
    assert_serves(&mut other, 3).await;
    let mut frame = throttled.recv_frame().await;
    assert_eq!(frame.get_i32(), 2);
    let throttle = Duration::from_millis(wire_support::THROTTLE_MS as u64);
    assert!(
        started.elapsed() >= throttle,
        "answered after {:?}, within the throttle of {throttle:?}",
        started.elapsed()
    );
}
