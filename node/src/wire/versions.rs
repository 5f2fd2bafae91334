//! The ApiVersions table: which Kafka APIs and versions keel advertises, and which it can
//! actually serve.
//!
//! [`API_SUPPORT_TABLE`] is the upper bound of what keel may ever advertise, one row per API,
//! sorted by api key. [`SupportedApis`] is the subset one listener serves (the broker serves
//! every row: `broker::served_apis`; tests may leave some out, the group APIs for example)
//! and the wire layer answers ApiVersions from it and rejects everything outside it.
//!
//! What always holds:
//! - every row has `min_advertised <= min_implemented <= max_advertised`;
//! - every version in `min_implemented..=max_advertised` is one kafka-protocol 0.18 can decode
//!   (checked by a test against `ApiKey::valid_versions`);
//! - ApiVersions itself is always served, whatever the broker enables;
//! - the advertised ranges contain the exact versions that librdkafka before 2.11.1 probes for
//!   (Produce 0, 3 and 7, Fetch 4 and 10, FindCoordinator 0, InitProducerId 0, SaslHandshake
//!   0-1, SaslAuthenticate 0, ListOffsets 1): docs/protocol.md, "Why these versions"; KAFKA-18659.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};

/// One row of the version table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiSupport {
    /// The API this row describes.
    pub api_key: ApiKey,
    /// Lowest version advertised in ApiVersions responses.
    pub min_advertised: i16,
    /// Highest version advertised in ApiVersions responses.
    pub max_advertised: i16,
    /// Lowest version keel decodes and hands to the broker. Versions in
    /// `min_advertised..min_implemented` are advertised only for old clients' sake and are
    /// answered with UNSUPPORTED_VERSION (or the connection is closed when no error response
    /// can be built for that API).
    pub min_implemented: i16,
}

impl ApiSupport {
    /// Whether `version` is inside the advertised range.
    pub fn advertises(&self, version: i16) -> bool {
        (self.min_advertised..=self.max_advertised).contains(&version)
    }

    /// Whether `version` is advertised and implemented.
    pub fn implements(&self, version: i16) -> bool {
        (self.min_implemented..=self.max_advertised).contains(&version)
    }
}

const fn row(api_key: ApiKey, min_advertised: i16, max_advertised: i16) -> ApiSupport {
    ApiSupport {
        api_key,
        min_advertised,
        max_advertised,
        min_implemented: min_advertised,
    }
}

/// Every API keel may advertise, sorted by api key. The matrix other Kafka-compatible brokers
/// converged on (docs/protocol.md, "Why these versions").
/// Produce advertises 0-9 but implements 3-9: kafka-protocol 0.18 cannot decode v0-2, and
/// Kafka 4.0 does the same (KAFKA-18659).
pub const API_SUPPORT_TABLE: [ApiSupport; 47] = [
    ApiSupport {
        api_key: ApiKey::Produce,
        min_advertised: 0,
        max_advertised: 11,
        min_implemented: 3,
    },
    row(ApiKey::Fetch, 4, 17),
    row(ApiKey::ListOffsets, 1, 10),
    row(ApiKey::Metadata, 0, 13),
    row(ApiKey::OffsetCommit, 2, 8),
    row(ApiKey::OffsetFetch, 1, 8),
    row(ApiKey::FindCoordinator, 0, 6),
    row(ApiKey::JoinGroup, 0, 9),
    row(ApiKey::Heartbeat, 0, 4),
    row(ApiKey::LeaveGroup, 0, 5),
    row(ApiKey::SyncGroup, 0, 5),
    row(ApiKey::DescribeGroups, 0, 6),
    row(ApiKey::ListGroups, 0, 5),
    row(ApiKey::SaslHandshake, 0, 1),
    row(ApiKey::ApiVersions, 0, 3),
    row(ApiKey::CreateTopics, 2, 7),
    row(ApiKey::DeleteTopics, 1, 6),
    row(ApiKey::DeleteRecords, 0, 2),
    row(ApiKey::InitProducerId, 0, 4),
    row(ApiKey::OffsetForLeaderEpoch, 2, 4),
    row(ApiKey::AddPartitionsToTxn, 0, 4),
    row(ApiKey::AddOffsetsToTxn, 0, 4),
    row(ApiKey::EndTxn, 0, 4),
    row(ApiKey::TxnOffsetCommit, 0, 4),
    row(ApiKey::DescribeAcls, 1, 3),
    row(ApiKey::CreateAcls, 1, 3),
    row(ApiKey::DeleteAcls, 1, 3),
    row(ApiKey::DescribeConfigs, 1, 4),
    row(ApiKey::AlterConfigs, 0, 2),
    row(ApiKey::DescribeLogDirs, 1, 4),
    row(ApiKey::SaslAuthenticate, 0, 2),
    row(ApiKey::CreatePartitions, 0, 3),
    row(ApiKey::DeleteGroups, 0, 2),
    row(ApiKey::ElectLeaders, 0, 2),
    row(ApiKey::IncrementalAlterConfigs, 0, 1),
    row(ApiKey::AlterPartitionReassignments, 0, 1),
    row(ApiKey::ListPartitionReassignments, 0, 0),
    row(ApiKey::OffsetDelete, 0, 0),
    row(ApiKey::DescribeUserScramCredentials, 0, 0),
    row(ApiKey::AlterUserScramCredentials, 0, 0),
    row(ApiKey::DescribeQuorum, 0, 2),
    row(ApiKey::DescribeCluster, 0, 2),
    row(ApiKey::DescribeProducers, 0, 0),
    row(ApiKey::UnregisterBroker, 0, 0),
    row(ApiKey::DescribeTransactions, 0, 0),
    row(ApiKey::ListTransactions, 0, 1),
    row(ApiKey::DescribeTopicPartitions, 0, 0),
];

/// The highest ApiVersions version keel answers with its own schema. Requests above it get the
/// v0-schema UNSUPPORTED_VERSION fallback.
pub const API_VERSIONS_VERSION_MAX: i16 = 3;

/// The classic consumer group APIs (and the coordinator lookup they start with). A listener
/// without a group coordinator behind it leaves these out of [`SupportedApis`], so that clients
/// do not try to use groups it cannot serve; the broker serves them all.
pub const GROUP_APIS: [ApiKey; 10] = [
    ApiKey::FindCoordinator,
    ApiKey::JoinGroup,
    ApiKey::SyncGroup,
    ApiKey::Heartbeat,
    ApiKey::LeaveGroup,
    ApiKey::OffsetCommit,
    ApiKey::OffsetFetch,
    ApiKey::DescribeGroups,
    ApiKey::ListGroups,
    ApiKey::DeleteGroups,
];

/// The APIs one listener serves: a filtered copy of [`API_SUPPORT_TABLE`], still sorted by api
/// key, always containing ApiVersions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupportedApis {
    rows: Vec<ApiSupport>,
}

impl SupportedApis {
    /// Every API in [`API_SUPPORT_TABLE`].
    pub fn all() -> Self {
        Self {
            rows: API_SUPPORT_TABLE.to_vec(),
        }
    }

    /// The rows of [`API_SUPPORT_TABLE`] whose key is in `enabled`, plus ApiVersions. Keys that
    /// are not in the table are ignored: the table bounds what keel may advertise.
    pub fn new(enabled: &[ApiKey]) -> Self {
        let rows = API_SUPPORT_TABLE
            .iter()
            .filter(|r| r.api_key == ApiKey::ApiVersions || enabled.contains(&r.api_key))
            .copied()
            .collect();
        Self { rows }
    }

    /// This set without the APIs in `disabled` (ApiVersions stays).
    pub fn without(mut self, disabled: &[ApiKey]) -> Self {
        self.rows
            .retain(|r| r.api_key == ApiKey::ApiVersions || !disabled.contains(&r.api_key));
        self
    }

    /// The row for `api_key`, if this listener serves it.
    pub fn get(&self, api_key: ApiKey) -> Option<&ApiSupport> {
        self.rows.iter().find(|r| r.api_key == api_key)
    }

    /// The served rows, sorted by api key.
    pub fn rows(&self) -> &[ApiSupport] {
        &self.rows
    }

    /// The ApiVersions response body for a supported request version (0 to
    /// [`API_VERSIONS_VERSION_MAX`]): error 0, one entry per served API, default throttle and
    /// features. Encoded with kafka-protocol at the request's version, this is the v3 body
    /// that librdkafka 2.0.2, librdkafka 2.16 and kafka-python 3.0.12 accept.
    pub fn api_versions_response(&self) -> ApiVersionsResponse {
        let api_keys = self
            .rows
            .iter()
            .map(|r| {
                ApiVersion::default()
                    .with_api_key(r.api_key as i16)
                    .with_min_version(r.min_advertised)
                    .with_max_version(r.max_advertised)
            })
            .collect();
        ApiVersionsResponse::default().with_api_keys(api_keys)
    }
}

/// The body answering an ApiVersions request whose version keel does not support: error 35
/// UNSUPPORTED_VERSION and only the ApiVersions range, which is what Kafka sends
/// (ApiVersionsRequest.getErrorResponse). It must be encoded at version 0 with response header
/// v0: the client cannot know any other schema yet, and retries with a version from the range.
pub fn api_versions_unsupported_response() -> ApiVersionsResponse {
    let own = ApiVersion::default()
        .with_api_key(ApiKey::ApiVersions as i16)
        .with_min_version(0)
        .with_max_version(API_VERSIONS_VERSION_MAX);
    ApiVersionsResponse::default()
        .with_error_code(ResponseError::UnsupportedVersion.code())
        .with_api_keys(vec![own])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_by_api_key_without_duplicates() {
        for pair in API_SUPPORT_TABLE.windows(2) {
            assert!(
                (pair[0].api_key as i16) < (pair[1].api_key as i16),
                "table order: {:?} before {:?}",
                pair[0].api_key,
                pair[1].api_key
            );
        }
    }

    #[test]
    fn implemented_versions_are_decodable_by_kafka_protocol() {
        for r in API_SUPPORT_TABLE {
            assert!(r.min_advertised <= r.min_implemented, "{r:?}");
            assert!(r.min_implemented <= r.max_advertised, "{r:?}");
            let valid = r.api_key.valid_versions();
            assert!(valid.min <= r.min_implemented, "{r:?} vs {valid}");
            assert!(r.max_advertised <= valid.max, "{r:?} vs {valid}");
        }
    }

    #[test]
    fn only_produce_advertises_versions_it_does_not_implement() {
        for r in API_SUPPORT_TABLE {
            if r.api_key == ApiKey::Produce {
                assert_eq!((r.min_advertised, r.min_implemented), (0, 3));
            } else {
                assert_eq!(r.min_advertised, r.min_implemented, "{r:?}");
            }
        }
    }

    /// The exact versions old librdkafka probes for must be inside the advertised ranges
    /// (docs/protocol.md, "Why these versions"; KAFKA-18659).
    #[test]
    fn advertises_versions_old_librdkafka_checks_exactly() {
        let apis = SupportedApis::all();
        let probes = [
            (ApiKey::Produce, 0),
            (ApiKey::Produce, 3),
            (ApiKey::Produce, 7),
            (ApiKey::Fetch, 4),
            (ApiKey::Fetch, 10),
            (ApiKey::FindCoordinator, 0),
            (ApiKey::InitProducerId, 0),
            (ApiKey::SaslHandshake, 0),
            (ApiKey::SaslHandshake, 1),
            (ApiKey::SaslAuthenticate, 0),
            (ApiKey::ListOffsets, 1),
        ];
        for (key, version) in probes {
            let row = apis.get(key).expect("probed API is in the table");
            assert!(row.advertises(version), "{key:?} v{version}");
        }
    }

    #[test]
    fn filtering_keeps_api_versions_and_order() {
        let apis = SupportedApis::new(&[ApiKey::Metadata, ApiKey::Produce]);
        let keys: Vec<ApiKey> = apis.rows().iter().map(|r| r.api_key).collect();
        assert_eq!(
            keys,
            vec![ApiKey::Produce, ApiKey::Metadata, ApiKey::ApiVersions]
        );

        let no_groups = SupportedApis::all().without(&GROUP_APIS);
        assert_eq!(
            no_groups.rows().len(),
            API_SUPPORT_TABLE.len() - GROUP_APIS.len()
        );
        assert!(no_groups.get(ApiKey::JoinGroup).is_none());
        assert!(no_groups.get(ApiKey::ApiVersions).is_some());
        assert!(SupportedApis::all()
            .without(&[ApiKey::ApiVersions])
            .get(ApiKey::ApiVersions)
            .is_some());
    }
}
