//! The cluster operation APIs on the wire: ElectLeaders (KIP-460), translated between
//! kafka-protocol messages and `keel_core::controller::elections`, and
//! AlterPartitionReassignments / ListPartitionReassignments (KIP-455), translated to and from
//! `keel_core::controller::reassignment`; UnregisterBroker (KIP-631), translated to
//! `MetadataState::unregister_broker`.
//!
//! Each request is a controller command ([`Broker::command`]): computed on the applied
//! metadata, committed through the quorum, and answered once it applied here. A request the
//! command refuses as a whole changes nothing.

use std::collections::BTreeMap;

use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use keel_core::controller::{
    BrokerId, ControllerError, ElectionResult, ElectionType, ReassignmentRequest,
    ReassignmentResult,
};
use keel_core::error_code as code;

use super::Broker;

impl Broker {
    /// ElectLeaders v0-2: v0 knows only preferred elections; an unknown election type is
    /// INVALID_REQUEST for the whole request; `topic_partitions` null means every partition.
    pub(super) async fn elect_leaders(
        &self,
        version: i16,
        request: ElectLeadersRequest,
    ) -> ElectLeadersResponse {
        let mut response = ElectLeadersResponse::default();
        let election_type = if version == 0 {
            0
        } else {
            request.election_type
        };
        let Some(election) = ElectionType::from_id(election_type) else {
            response.error_code = code::INVALID_REQUEST;
            return response;
        };
        let asked: Option<Vec<(String, i32)>> = request.topic_partitions.map(|topics| {
            topics
                .into_iter()
                .flat_map(|t| {
                    let name = t.topic.0.to_string();
                    t.partitions.into_iter().map(move |p| (name.clone(), p))
                })
                .collect()
        });
        let outcome = self
            .command(false, |m| {
                Ok(m.elect_leaders_request(election, asked.as_deref()))
            })
            .await;
        let results: Vec<ElectionResult> = match outcome {
            Ok(results) => results,
            Err(e) => {
                // The command itself failed (no controller, metadata kept moving): every
                // partition asked for gets its error; the whole request when none was named.
                match &asked {
                    Some(asked) => asked
                        .iter()
                        .map(|tp| (tp.clone(), Err(e.clone())))
                        .collect(),
                    None => {
                        response.error_code = e.code();
                        return response;
                    }
                }
            }
        };
        let mut by_topic: BTreeMap<String, Vec<PartitionResult>> = BTreeMap::new();
        let mut order = Vec::new();
        for ((topic, partition), result) in results {
            let mut r = PartitionResult::default();
            r.partition_id = partition;
            if let Err(e) = result {
                r.error_code = e.code();
                r.error_message = Some(StrBytes::from_string(e.to_string()));
            }
            if !by_topic.contains_key(&topic) {
                order.push(topic.clone());
            }
            by_topic.entry(topic).or_default().push(r);
        }
        for topic in order {
            let mut t = ReplicaElectionResult::default();
            t.partition_result = by_topic.remove(&topic).unwrap_or_default();
            t.topic = TopicName(StrBytes::from_string(topic));
            response.replica_election_results.push(t);
        }
        response
    }

    /// AlterPartitionReassignments v0-1 (KIP-455): one controller command for every partition
    /// named; each answered with its own outcome. v1's `allow_replication_factor_change`
    /// false (KIP-860) refuses a target of another size than the original replicas with
    /// INVALID_REPLICATION_FACTOR. A command that fails as a whole (no controller) answers
    /// its error at the top level.
    pub(super) async fn alter_partition_reassignments(
        &self,
        version: i16,
        request: AlterPartitionReassignmentsRequest,
    ) -> AlterPartitionReassignmentsResponse {
        let mut response = AlterPartitionReassignmentsResponse::default();
        let allow_rf_change = version < 1 || request.allow_replication_factor_change;
        response.allow_replication_factor_change = allow_rf_change;
        let asked: Vec<ReassignmentRequest> = request
            .topics
            .into_iter()
            .flat_map(|t| {
                let name = t.name.0.to_string();
                t.partitions.into_iter().map(move |p| ReassignmentRequest {
                    topic: name.clone(),
                    partition: p.partition_index,
                    target: p
                        .replicas
                        .map(|r| r.into_iter().map(|b| BrokerId(b.0)).collect()),
                })
            })
            .collect();
        let outcome = self
            .command(false, |m| {
                // KIP-860: the size check needs the partition, so it runs on the metadata the
                // command is computed on; those refused are left out of the command.
                let mut refused: Vec<Option<ControllerError>> = Vec::with_capacity(asked.len());
                let mut kept = Vec::new();
                for r in &asked {
                    let resized = match (&r.target, m.partition(&r.topic, r.partition)) {
                        (Some(target), Some(p)) => target.len() != p.original_replicas().len(),
                        _ => false,
                    };
                    if resized && !allow_rf_change {
                        refused.push(Some(ControllerError::InvalidReplicationFactor(format!(
                            "The replication factor of {}-{} would change, and the request \
                             does not allow it (allow_replication_factor_change is false)",
                            r.topic, r.partition
                        ))));
                    } else {
                        refused.push(None);
                        kept.push(r.clone());
                    }
                }
                let (results, records) = m.alter_partition_reassignments(&kept);
                let mut results = results.into_iter();
                let merged: Vec<ReassignmentResult> = asked
                    .iter()
                    .zip(refused)
                    .map(|(r, refusal)| match refusal {
                        Some(e) => ((r.topic.clone(), r.partition), Err(e)),
                        // One result per kept request, in order (alter_partition_reassignments).
                        None => results.next().expect("a result for every kept request"),
                    })
                    .collect();
                Ok((merged, records))
            })
            .await;
        let results = match outcome {
            Ok(results) => results,
            Err(e) => {
                response.error_code = e.code();
                response.error_message = Some(StrBytes::from_string(e.to_string()));
                return response;
            }
        };
        use alter_partition_reassignments_response::{
            ReassignablePartitionResponse, ReassignableTopicResponse,
        };
        let mut order: Vec<String> = Vec::new();
        let mut by_topic: BTreeMap<String, Vec<ReassignablePartitionResponse>> = BTreeMap::new();
        for ((topic, partition), result) in results {
            let mut r = ReassignablePartitionResponse::default();
            r.partition_index = partition;
            if let Err(e) = result {
                r.error_code = e.code();
                r.error_message = Some(StrBytes::from_string(e.to_string()));
            }
            if !by_topic.contains_key(&topic) {
                order.push(topic.clone());
            }
            by_topic.entry(topic).or_default().push(r);
        }
        for topic in order {
            let mut t = ReassignableTopicResponse::default();
            t.partitions = by_topic.remove(&topic).unwrap_or_default();
            t.name = TopicName(StrBytes::from_string(topic));
            response.responses.push(t);
        }
        response
    }

    /// UnregisterBroker v0 (KIP-631, API 64): removes a broker's registration once no
    /// partition has it among its replicas (else INVALID_REQUEST with a message naming one);
    /// BROKER_ID_NOT_REGISTERED for an unknown broker.
    pub(super) async fn unregister_broker(
        &self,
        request: UnregisterBrokerRequest,
    ) -> UnregisterBrokerResponse {
        let broker = BrokerId(request.broker_id.0);
        let outcome = self
            .command(false, |m| Ok(((), m.unregister_broker(broker)?)))
            .await;
        let mut response = UnregisterBrokerResponse::default();
        if let Err(e) = outcome {
            response.error_code = e.code();
            response.error_message = Some(StrBytes::from_string(e.to_string()));
        } else {
            tracing::info!("unregistered broker {broker}");
        }
        response
    }

    /// ListPartitionReassignments v0 (KIP-455): the reassignments in progress among the
    /// partitions named, or every partition when `topics` is null, from this broker's applied
    /// metadata (Kafka forwards the request to the controller; a broker's metadata lags the
    /// controller's by the time a change takes to apply).
    pub(super) fn list_partition_reassignments(
        &self,
        request: ListPartitionReassignmentsRequest,
    ) -> ListPartitionReassignmentsResponse {
        use list_partition_reassignments_response::{
            OngoingPartitionReassignment, OngoingTopicReassignment,
        };
        let asked: Option<Vec<(String, i32)>> = request.topics.map(|topics| {
            topics
                .into_iter()
                .flat_map(|t| {
                    let name = t.name.0.to_string();
                    t.partition_indexes
                        .into_iter()
                        .map(move |p| (name.clone(), p))
                })
                .collect()
        });
        let ongoing = self.with_metadata(|m| m.list_partition_reassignments(asked.as_deref()));
        let mut response = ListPartitionReassignmentsResponse::default();
        let ids = |v: &[BrokerId]| -> Vec<kafka_protocol::messages::BrokerId> {
            v.iter()
                .map(|b| kafka_protocol::messages::BrokerId(b.0))
                .collect()
        };
        for r in ongoing {
            let mut p = OngoingPartitionReassignment::default();
            p.partition_index = r.partition;
            p.replicas = ids(&r.replicas);
            p.adding_replicas = ids(&r.adding);
            p.removing_replicas = ids(&r.removing);
            match response.topics.last_mut() {
                Some(t) if t.name.0.as_str() == r.topic => t.partitions.push(p),
                _ => {
                    let mut t = OngoingTopicReassignment::default();
                    t.name = TopicName(StrBytes::from_string(r.topic));
                    t.partitions.push(p);
                    response.topics.push(t);
                }
            }
        }
        response
    }
}
