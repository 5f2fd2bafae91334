//! The cluster operation APIs on the wire: ElectLeaders (KIP-460), translated between
//! kafka-protocol messages and `keel_core::controller::elections`.
//!
//! Each request is a controller command ([`Broker::command`]): computed on the applied
//! metadata, committed through the quorum, and answered once it applied here. A request the
//! command refuses as a whole changes nothing.

use std::collections::BTreeMap;

use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use keel_core::controller::{ElectionResult, ElectionType};
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
}
