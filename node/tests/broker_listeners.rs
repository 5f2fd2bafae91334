//! Metadata, DescribeCluster and FindCoordinator answer with the brokers' endpoints on the
//! listener a request came in on (Kafka's `MetadataCache.getAliveBrokerNodes(listenerName)`):
//! a broker registers every advertised listener, and a client that connected to SASL_SSL is
//! never sent to a plaintext port.

use std::sync::Arc;

use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use keel_core::controller::Endpoint;
use keel_node::broker::{Broker, Settings};
use keel_node::metrics::Metrics;
use keel_node::wire::{Handler, RequestContext};

fn ctx(listener: &str, api_key: ApiKey, api_version: i16) -> RequestContext {
    RequestContext {
        listener: listener.into(),
        ..RequestContext::local(api_key, api_version)
    }
}

fn endpoint(name: &str, port: i32, security_protocol: i32) -> Endpoint {
    Endpoint {
        name: name.into(),
        host: "broker1.example.com".into(),
        port,
        security_protocol,
    }
}

async fn open(dir: &std::path::Path) -> Arc<Broker> {
    let settings = Settings {
        advertised_listeners: vec![
            endpoint("PLAINTEXT", 9092, 0),
            endpoint("SASL_SSL", 9093, 3),
        ],
        ..Settings::single(1, dir.to_path_buf())
    };
    Broker::open(settings, Arc::new(Metrics::new()))
        .await
        .expect("open the broker")
}

async fn metadata_brokers(broker: &Arc<Broker>, listener: &str) -> Vec<(String, i32)> {
    let response = broker
        .clone()
        .handle(
            ctx(listener, ApiKey::Metadata, 12),
            RequestKind::Metadata(MetadataRequest::default()),
        )
        .await
        .expect("handled");
    let Some(ResponseKind::Metadata(m)) = response else {
        panic!("a Metadata response");
    };
    m.brokers
        .iter()
        .map(|b| (b.host.to_string(), b.port))
        .collect()
}

#[tokio::test]
async fn metadata_names_the_brokers_on_the_requests_listener() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path()).await;
    let host = "broker1.example.com".to_string();
    assert_eq!(
        metadata_brokers(&broker, "PLAINTEXT").await,
        [(host.clone(), 9092)]
    );
    assert_eq!(
        metadata_brokers(&broker, "SASL_SSL").await,
        [(host.clone(), 9093)]
    );
    assert!(
        metadata_brokers(&broker, "OTHER").await.is_empty(),
        "a broker without the listener is left out"
    );

    let response = broker
        .clone()
        .handle(
            ctx("SASL_SSL", ApiKey::DescribeCluster, 1),
            RequestKind::DescribeCluster(DescribeClusterRequest::default()),
        )
        .await
        .unwrap();
    let Some(ResponseKind::DescribeCluster(d)) = response else {
        panic!("DescribeCluster");
    };
    assert_eq!(d.brokers.len(), 1);
    assert_eq!(d.brokers[0].port, 9093);
}

#[tokio::test]
async fn find_coordinator_answers_on_the_requests_listener() {
    let dir = tempfile::tempdir().unwrap();
    let broker = open(dir.path()).await;
    for (listener, version, port, error) in [
        ("SASL_SSL", 3, 9093, 0),
        ("PLAINTEXT", 3, 9092, 0),
        ("SASL_SSL", 4, 9093, 0),
        ("OTHER", 4, -1, 15),
        ("OTHER", 3, -1, 15),
    ] {
        let mut request = FindCoordinatorRequest::default();
        if version >= 4 {
            request.coordinator_keys = vec![StrBytes::from_static_str("group-a")];
        } else {
            request.key = StrBytes::from_static_str("group-a");
        }
        let response = broker
            .clone()
            .handle(
                ctx(listener, ApiKey::FindCoordinator, version),
                RequestKind::FindCoordinator(request),
            )
            .await
            .unwrap();
        let Some(ResponseKind::FindCoordinator(f)) = response else {
            panic!("FindCoordinator");
        };
        let (got_port, got_error) = if version >= 4 {
            (f.coordinators[0].port, f.coordinators[0].error_code)
        } else {
            (f.port, f.error_code)
        };
        assert_eq!(
            (got_port, got_error),
            (port, error),
            "{listener} v{version}: {f:?}"
        );
    }
}
