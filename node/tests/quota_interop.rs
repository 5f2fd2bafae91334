//! Client quotas with a real client against a `keel start` (docs/operations.md, "Client
//! quotas"): the test sets a produce quota for one client id with AlterClientQuotas (no Python
//! admin client has the API), then `node/tests/interop/quota_clients.py` produces with a
//! confluent-kafka producer under that client id, which librdkafka reports throttled and which
//! takes at least as long as the quota allows, and with another client id, which is not
//! throttled.
//!
//! The clients come from `.ci/clients.sh`; `KEEL_SKIP_INTEROP=1` skips this test (see
//! interop.rs).

#[allow(dead_code)] // shared with interop.rs and cluster.rs, which use the rest
mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use common::single::{free_port, start_broker, Logs};
use common::{clients, Script};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

/// Bytes per second the throttled client may produce.
const QUOTA: u64 = 100_000;

/// AlterClientQuotas v1 over a plain socket: `producer_byte_rate` of client id `client`.
fn set_produce_quota(port: u16, client: &str, bytes_per_s: u64) {
    let request = AlterClientQuotasRequest::default().with_entries(vec![
        alter_client_quotas_request::EntryData::default()
            .with_entity(vec![alter_client_quotas_request::EntityData::default()
                .with_entity_type(StrBytes::from_static_str("client-id"))
                .with_entity_name(Some(StrBytes::from_string(client.to_string())))])
            .with_ops(vec![alter_client_quotas_request::OpData::default()
                .with_key(StrBytes::from_static_str("producer_byte_rate"))
                .with_value(bytes_per_s as f64)]),
    ]);
    let version = 1;
    let key = ApiKey::AlterClientQuotas;
    let mut frame = BytesMut::new();
    frame.put_i32(0);
    RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(1)
        .with_client_id(Some(StrBytes::from_static_str("quota-test")))
        .encode(&mut frame, key.request_header_version(version))
        .expect("header");
    request.encode(&mut frame, version).expect("body");
    let size = (frame.len() - 4) as i32;
    frame[..4].copy_from_slice(&size.to_be_bytes());
    let mut socket = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    socket.write_all(&frame).expect("send");
    let mut size = [0u8; 4];
    socket.read_exact(&mut size).expect("response size");
    let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
    socket.read_exact(&mut body).expect("response");
    let mut body = bytes::Bytes::from(body);
    ResponseHeader::decode(&mut body, key.response_header_version(version)).expect("header");
    let response = AlterClientQuotasResponse::decode(&mut body, version).expect("body");
    assert_eq!(response.entries.len(), 1);
    assert_eq!(response.entries[0].error_code, 0, "{response:?}");
}

#[test]
fn a_real_producer_over_its_quota_is_throttled() {
    let Some(clients) = clients(
        "quota",
        "a_real_producer_over_its_quota_is_throttled",
        "confluent_kafka",
    ) else {
        return;
    };
    let dir = tempfile::tempdir().expect("temp dir");
    let port = free_port();
    let node = start_broker(
        dir.path(),
        port,
        &format!("PLAINTEXT://127.0.0.1:{port}"),
        "",
    );
    set_produce_quota(port, "throttled", QUOTA);
    let out = Script::spawn(
        &clients,
        "quota_clients.py",
        &[port.to_string(), QUOTA.to_string()],
        dir.path(),
    )
    .expect_success(Duration::from_secs(240), &Logs(&node));
    assert!(out.contains("quota checks passed"), "{out}");
}
