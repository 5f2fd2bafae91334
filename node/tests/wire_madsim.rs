//! The wire layer under madsim's simulated network, as keel-sim will run it. Only built with
//! `RUSTFLAGS="--cfg madsim"`:
//! `RUSTFLAGS="--cfg madsim" CARGO_TARGET_DIR=target-madsim cargo test -p keel-node --test wire_madsim`.
#![cfg(madsim)]

mod wire_support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Buf;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, MetadataRequest, RequestKind, ResponseKind,
};
use kafka_protocol::protocol::Decodable;
use keel_node::wire::{SupportedApis, WireConfig, WireServer, API_SUPPORT_TABLE};
use madsim::runtime::Handle;
use tokio::net::TcpListener;
use wire_support::{Client, TestHandler};

/// ApiVersions, then pipelined Metadata requests answered out of order by the handler, over
/// simulated TCP between two simulated hosts.
#[madsim::test]
async fn api_versions_and_ordering_over_simulated_tcp() {
    let handle = Handle::current();
    let broker_addr: SocketAddr = "192.0.2.1:9092".parse().unwrap();
    let broker = handle
        .create_node()
        .name("broker")
        .ip(broker_addr.ip())
        .build();
    let client = handle
        .create_node()
        .name("client")
        .ip("192.0.2.2".parse().unwrap())
        .build();
    let handler = TestHandler::new();
    handler
        .delays
        .lock()
        .unwrap()
        .insert(2, Duration::from_millis(500));
    broker.spawn(async move {
        let listener = TcpListener::bind(broker_addr).await.unwrap();
        let server = WireServer::new(handler, SupportedApis::all(), WireConfig::default());
        server.serve(listener).await;
    });
    client
        .spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut c = Client::connect(broker_addr).await;
            let versions = RequestKind::ApiVersions(ApiVersionsRequest::default());
            c.send(ApiKey::ApiVersions, 3, 1, "sim", &versions).await;
            let mut frame = c.recv_frame().await;
            assert_eq!(frame.get_i32(), 1);
            let body = ApiVersionsResponse::decode(&mut frame, 3).unwrap();
            assert_eq!(body.api_keys.len(), API_SUPPORT_TABLE.len());

            let metadata = RequestKind::Metadata(MetadataRequest::default());
            for corr in 2..=4 {
                c.send(ApiKey::Metadata, 12, corr, "sim", &metadata).await;
            }
            for corr in 2..=4 {
                let response = c.recv_response(ApiKey::Metadata, 12, corr).await;
                assert!(matches!(response, ResponseKind::Metadata(_)));
            }
        })
        .await
        .unwrap();
}
