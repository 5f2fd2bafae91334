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
//! - every version in `min_implemented..=max_advertised` is one kafka-protocol 0.18's request
//!   decoder knows (checked by a test that asks the decoder);
//! - every row is at the newest version that decoder knows (docs/protocol.md, "Why these
//!   versions", names where that stops short of Kafka 4.1);
//! - [`FEATURES`] finalizes `transaction.version` 2 (KIP-890 part 2), whose versions (EndTxn
//!   v5, AddPartitionsToTxn v5, TxnOffsetCommit v5, transactional Produce v12+) are served;
//! - ApiVersions itself is always served, whatever the broker enables;
//! - the advertised ranges contain the exact versions that librdkafka before 2.11.1 probes for
//!   (Produce 0, 3 and 7, Fetch 4 and 10, FindCoordinator 0, InitProducerId 0, SaslHandshake
//!   0-1, SaslAuthenticate 0, ListOffsets 1): docs/protocol.md, "Why these versions"; KAFKA-18659.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::api_versions_response::{
    ApiVersion, FinalizedFeatureKey, SupportedFeatureKey,
};
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

/// Every API keel may advertise, sorted by api key: each at Kafka 4.1's highest version where
/// keel honours that version's meaning and kafka-protocol 0.18 decodes its requests, else at
/// the highest below (docs/protocol.md, "Why these versions", says which and why).
/// Produce advertises 0-13 but implements 3-13: kafka-protocol 0.18 cannot decode v0-2, and
/// Kafka 4.0 does the same (KAFKA-18659).
pub const API_SUPPORT_TABLE: [ApiSupport; 49] = [
    ApiSupport {
        api_key: ApiKey::Produce,
        min_advertised: 0,
        max_advertised: 13,
        min_implemented: 3,
    },
    row(ApiKey::Fetch, 4, 18),
    row(ApiKey::ListOffsets, 1, 10),
    row(ApiKey::Metadata, 0, 13),
    row(ApiKey::OffsetCommit, 2, 9),
    row(ApiKey::OffsetFetch, 1, 9),
    row(ApiKey::FindCoordinator, 0, 6),
    row(ApiKey::JoinGroup, 0, 9),
    row(ApiKey::Heartbeat, 0, 4),
    row(ApiKey::LeaveGroup, 0, 5),
    row(ApiKey::SyncGroup, 0, 5),
    row(ApiKey::DescribeGroups, 0, 6),
    row(ApiKey::ListGroups, 0, 5),
    row(ApiKey::SaslHandshake, 0, 1),
    row(ApiKey::ApiVersions, 0, 4),
    row(ApiKey::CreateTopics, 2, 7),
    row(ApiKey::DeleteTopics, 1, 6),
    row(ApiKey::DeleteRecords, 0, 2),
    row(ApiKey::InitProducerId, 0, 5),
    row(ApiKey::OffsetForLeaderEpoch, 2, 4),
    row(ApiKey::AddPartitionsToTxn, 0, 5),
    row(ApiKey::AddOffsetsToTxn, 0, 4),
    row(ApiKey::EndTxn, 0, 5),
    row(ApiKey::TxnOffsetCommit, 0, 5),
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
    row(ApiKey::DescribeClientQuotas, 0, 1),
    row(ApiKey::AlterClientQuotas, 0, 1),
    row(ApiKey::DescribeUserScramCredentials, 0, 0),
    row(ApiKey::AlterUserScramCredentials, 0, 0),
    row(ApiKey::DescribeQuorum, 0, 2),
    row(ApiKey::DescribeCluster, 0, 2),
    row(ApiKey::DescribeProducers, 0, 0),
    row(ApiKey::UnregisterBroker, 0, 0),
    row(ApiKey::DescribeTransactions, 0, 0),
    row(ApiKey::ListTransactions, 0, 2),
    row(ApiKey::DescribeTopicPartitions, 0, 0),
];

/// The highest ApiVersions version keel answers with its own schema. Requests above it get the
/// v0-schema UNSUPPORTED_VERSION fallback.
pub const API_VERSIONS_VERSION_MAX: i16 = 4;

/// A feature flag (KIP-584) keel reports in ApiVersions: the levels this broker supports and
/// the level in effect in the cluster (finalized). keel's levels are fixed by its code: nothing
/// upgrades them, so UpdateFeatures is not served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Feature {
    /// Kafka's name of the feature.
    pub name: &'static str,
    /// Lowest supported level.
    pub min: i16,
    /// Highest supported level.
    pub max: i16,
    /// The level in effect.
    pub finalized: i16,
}

/// The features keel reports (docs/protocol.md, "Features"):
/// - `group.version` 0: the classic group protocol only; level 1 is KIP-848's consumer protocol.
/// - `kraft.version` 0: a static metadata quorum (`controller.quorum.voters`); level 1 is
///   KIP-853's dynamic quorum.
/// - `transaction.version` 2: KIP-890 part 2 (an epoch bump at the end of every transaction,
///   partitions added by Produce v12+ and TxnOffsetCommit v5), which clients use only when it
///   is finalized (the Java client's `TransactionManager` when the finalized level is at
///   least 2 and EndTxn v5 is served); levels 0 and 1 (the epoch kept across transactions)
///   are still served to clients that send the older versions. `__transaction_state` values
///   are written in their flexible version 1 either way.
///
/// `metadata.version` is left out: keel's metadata log is its own, and no Kafka level
/// describes it.
pub const FEATURES: [Feature; 3] = [
    Feature {
        name: "group.version",
        min: 0,
        max: 0,
        finalized: 0,
    },
    Feature {
        name: "kraft.version",
        min: 0,
        max: 0,
        finalized: 0,
    },
    Feature {
        name: "transaction.version",
        min: 0,
        max: 2,
        finalized: 2,
    },
];

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

    /// The ApiVersions response body for a supported request `version` (0 to
    /// [`API_VERSIONS_VERSION_MAX`]): error 0, one entry per served API, default throttle, and
    /// from v3 the [`FEATURES`] as Kafka's `ApiVersionsResponse` reports them: a supported
    /// range whose minimum is 0 only from v4 (below, older clients fail to read it:
    /// KAFKA-17011, KAFKA-17492), a finalized level only when it is not 0. Encoded with
    /// kafka-protocol at the request's version, this is the v3 body that librdkafka 2.0.2,
    /// librdkafka 2.16 and kafka-python 3.0.12 accept.
    pub fn api_versions_response(&self, version: i16) -> ApiVersionsResponse {
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
        let response = ApiVersionsResponse::default().with_api_keys(api_keys);
        if version < 3 {
            return response;
        }
        let supported = FEATURES
            .iter()
            .filter(|f| f.min > 0 || version >= 4)
            .map(|f| {
                SupportedFeatureKey::default()
                    .with_name(f.name.into())
                    .with_min_version(f.min)
                    .with_max_version(f.max)
            })
            .collect();
        let finalized: Vec<FinalizedFeatureKey> = FEATURES
            .iter()
            .filter(|f| f.finalized != 0)
            .map(|f| {
                FinalizedFeatureKey::default()
                    .with_name(f.name.into())
                    .with_min_version_level(f.finalized)
                    .with_max_version_level(f.finalized)
            })
            .collect();
        // The levels never change: epoch 0 (-1 would say there are none).
        let epoch = if finalized.is_empty() { -1 } else { 0 };
        response
            .with_supported_features(supported)
            .with_finalized_features_epoch(epoch)
            .with_finalized_features(finalized)
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

    /// Whether kafka-protocol 0.18's request decoder knows `version` of `api_key`.
    /// `ApiKey::valid_versions` cannot say: it is the union of the request's and the response's
    /// ranges (OffsetCommit's and OffsetFetch's responses know v10, their requests stop at v9).
    /// An empty body at a known version fails for want of bytes, at an unknown one for its
    /// version.
    fn decodes(api_key: ApiKey, version: i16) -> bool {
        match kafka_protocol::messages::RequestKind::decode(
            api_key,
            &mut bytes::Bytes::new(),
            version,
        ) {
            Ok(_) => true,
            Err(e) => !format!("{e:#}").contains("version not supported"),
        }
    }

    #[test]
    fn implemented_versions_are_decodable_by_kafka_protocol() {
        for r in API_SUPPORT_TABLE {
            assert!(r.min_advertised <= r.min_implemented, "{r:?}");
            assert!(r.min_implemented <= r.max_advertised, "{r:?}");
            for version in r.min_implemented..=r.max_advertised {
                assert!(decodes(r.api_key, version), "{:?} v{version}", r.api_key);
            }
        }
    }

    /// Protocol currency: every API at the newest version the decoder knows.
    #[test]
    fn every_row_is_at_the_newest_decodable_version() {
        for r in API_SUPPORT_TABLE {
            let newer = decodes(r.api_key, r.max_advertised + 1);
            assert!(
                !newer,
                "{:?}: advertised up to v{}, the decoder knows v{} too",
                r.api_key,
                r.max_advertised,
                r.max_advertised + 1
            );
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

    /// Kafka's `ApiVersionsResponse`: below v4 a supported range starting at 0 is left out
    /// (KAFKA-17492); finalized levels of 0 are never listed; below v3 there are no features.
    #[test]
    fn features_follow_kafkas_rules_per_version() {
        let apis = SupportedApis::all();
        let names = |fs: Vec<String>| fs.join(",");
        let v4 = apis.api_versions_response(4);
        assert_eq!(
            names(
                v4.supported_features
                    .iter()
                    .map(|f| f.name.to_string())
                    .collect()
            ),
            "group.version,kraft.version,transaction.version"
        );
        let v3 = apis.api_versions_response(3);
        assert_eq!(
            names(
                v3.supported_features
                    .iter()
                    .map(|f| f.name.to_string())
                    .collect()
            ),
            ""
        );
        let tv = v4
            .supported_features
            .iter()
            .find(|f| f.name.as_str() == "transaction.version")
            .expect("listed at v4");
        assert_eq!((tv.min_version, tv.max_version), (0, 2));
        for r in [&v3, &v4] {
            assert_eq!(r.finalized_features.len(), 1);
            let f = &r.finalized_features[0];
            assert_eq!(
                (f.name.as_str(), f.min_version_level, f.max_version_level),
                ("transaction.version", 2, 2)
            );
            assert_eq!(r.finalized_features_epoch, 0);
        }
        // Transaction version 2 makes clients use EndTxn v5, AddPartitionsToTxn v5 (from the
        // leaders), TxnOffsetCommit v5 and Produce v12+ inside transactions (KIP-890 part 2):
        // finalized only with every one of them served.
        for (key, version) in [
            (ApiKey::EndTxn, 5),
            (ApiKey::AddPartitionsToTxn, 5),
            (ApiKey::TxnOffsetCommit, 5),
            (ApiKey::Produce, 12),
        ] {
            assert!(
                apis.get(key).unwrap().implements(version),
                "{key:?} v{version}"
            );
        }
        let v2 = apis.api_versions_response(2);
        assert!(v2.supported_features.is_empty() && v2.finalized_features.is_empty());
        for version in 0..=API_VERSIONS_VERSION_MAX {
            let mut buf = bytes::BytesMut::new();
            kafka_protocol::protocol::Encodable::encode(
                &apis.api_versions_response(version),
                &mut buf,
                version,
            )
            .unwrap_or_else(|e| panic!("ApiVersions v{version} encodes: {e}"));
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
