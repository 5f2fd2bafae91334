//! The metrics endpoint under madsim's simulated network, as keel-sim will run it: a scrape
//! answers 200, and a client that sends half a head is answered 408 once the simulated clock
//! passes the I/O timeout. Only built with `RUSTFLAGS="--cfg madsim"`:
//! `RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR=target-madsim cargo test -p keel-node --test metrics_madsim`.
#![cfg(madsim)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::messages::ApiKey;
use keel_node::metrics::{serve, Metrics, Outcome, HTTP_IO_TIMEOUT};
use madsim::runtime::Handle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Reads until the peer closes, with a bound on the simulated wait.
async fn read_all(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let read = tokio::time::timeout(HTTP_IO_TIMEOUT * 3, stream.read(&mut chunk)).await;
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("no EOF from the metrics endpoint"),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[madsim::test]
async fn scrape_and_slow_client_over_simulated_tcp() {
    let handle = Handle::current();
    let addr: SocketAddr = "192.0.2.1:9644".parse().expect("address");
    let broker = handle.create_node().name("broker").ip(addr.ip()).build();
    let scraper = handle
        .create_node()
        .name("scraper")
        .ip("192.0.2.2".parse().expect("address"))
        .build();
    broker.spawn(async move {
        let metrics = Arc::new(Metrics::new());
        metrics.record_request(ApiKey::Produce, Duration::from_millis(3), Outcome::Ok);
        let listener = TcpListener::bind(addr).await.expect("bind");
        serve(listener, metrics).await;
    });
    scraper
        .spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
                .await
                .expect("write");
            stream.flush().await.expect("flush");
            let answer = read_all(&mut stream).await;
            assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
            assert!(answer.contains("keel_requests_total{api=\"Produce\"} 1\n"));

            let mut slow = TcpStream::connect(addr).await.expect("connect");
            slow.write_all(b"GET /metrics HTTP/1.1\r\n")
                .await
                .expect("write");
            slow.flush().await.expect("flush");
            let answer = read_all(&mut slow).await;
            assert!(
                answer.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
                "{answer}"
            );
        })
        .await
        .expect("scraper");
}
