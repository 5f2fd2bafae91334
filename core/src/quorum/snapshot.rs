//! The snapshot of the metadata: a [`MetadataState`] as the list of records that rebuilds it,
//! framed with a CRC. It travels as raft's `Snapshot.data` (to a lagging follower or learner)
//! and lives in the quorum's log file after compaction.
//!
//! Layout, big-endian:
//!
//! ```text
//! offset  size  field
//!      0     4  payload length
//!      4     4  CRC-32C of the payload
//!      8     …  payload: a prost-encoded SnapshotBody (version 1, the records)
//! ```
//!
//! The records, in order: every broker's registration (with its fenced flag) in broker epoch
//! order (then, when the last broker epoch handed out belongs to a broker since unregistered,
//! a fenced registration at that epoch of an unused id and its unregistration, which restore
//! the epoch counter), then every topic (name order) with its configs and its partitions (index order),
//! then every ACL binding (in their order), every SCRAM credential (by user and mechanism),
//! then the producer-id counter (broker -1: a restore, not an allocation). Applying them to an
//! empty state gives back the state exactly: [`encode_state`] checks that before it returns
//! (and [`decode_state`] checks the CRC and that every record applies), so a snapshot that
//! would not rebuild its state is never written.

use prost::Message;

use crate::controller::records::{
    ProducerIdsRecord, RegisterBrokerRecord, TopicRecord, UnregisterBrokerRecord,
};
use crate::controller::{ApplyError, BrokerId, MetadataRecord, MetadataState};

/// The version this code writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;
/// Bytes before the payload: length and CRC.
pub const SNAPSHOT_HEADER_BYTES: usize = 8;

/// Why bytes are not a metadata snapshot.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// Shorter than its header or its stated length.
    #[error("snapshot of {0} bytes is truncated")]
    Truncated(usize),
    /// The CRC does not match.
    #[error("snapshot CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Crc {
        /// The CRC in the header.
        stored: u32,
        /// The CRC of the payload.
        computed: u32,
    },
    /// The payload is not a snapshot body.
    #[error("snapshot payload does not decode: {0}")]
    Undecodable(String),
    /// A version this code does not read.
    #[error("snapshot version {0} is not supported")]
    UnsupportedVersion(u32),
    /// A record that does not apply.
    #[error("snapshot record {position} does not apply: {error}")]
    Record {
        /// Its position in the snapshot.
        position: usize,
        /// Why.
        error: ApplyError,
    },
}

/// The payload of a snapshot.
#[derive(Clone, PartialEq, prost::Message)]
struct SnapshotBody {
    /// [`SNAPSHOT_VERSION`].
    #[prost(uint32, tag = "1")]
    version: u32,
    /// The records that rebuild the state from empty.
    #[prost(message, repeated, tag = "2")]
    records: Vec<MetadataRecord>,
}

/// The records that rebuild `state` from an empty state (see the module documentation).
pub fn state_records(state: &MetadataState) -> Vec<MetadataRecord> {
    let mut records = Vec::new();
    // In epoch order: apply takes each registration only above every epoch before it.
    let mut brokers: Vec<_> = state.brokers().collect();
    brokers.sort_by_key(|b| b.epoch);
    let last_registered = brokers.last().map_or(0, |b| b.epoch);
    for b in brokers {
        records.push(
            RegisterBrokerRecord {
                broker_id: b.id.0,
                incarnation_id: b.incarnation_id.to_vec(),
                broker_epoch: b.epoch,
                endpoints: b.endpoints.clone(),
                rack: b.rack.clone(),
                fenced: b.fenced,
            }
            .into(),
        );
    }
    // The last epoch was handed to a broker since unregistered: a registration at that
    // epoch, at once unregistered, restores it, so that no later registration reuses it.
    if state.last_broker_epoch() > last_registered {
        // Local invariant: fewer brokers are registered than there are non-negative ids.
        let unused = (0..i32::MAX).find(|id| state.broker(BrokerId(*id)).is_none());
        let broker_id = unused.expect("fewer brokers registered than i32 ids");
        records.push(
            RegisterBrokerRecord {
                broker_id,
                incarnation_id: vec![0; 16],
                broker_epoch: state.last_broker_epoch(),
                endpoints: Vec::new(),
                rack: None,
                fenced: true,
            }
            .into(),
        );
        records.push(
            UnregisterBrokerRecord {
                broker_id,
                broker_epoch: state.last_broker_epoch(),
            }
            .into(),
        );
    }
    for t in state.topics() {
        records.push(
            TopicRecord {
                name: t.name.clone(),
                topic_id: t.id.0.to_vec(),
                configs: t.config.overrides().clone(),
            }
            .into(),
        );
        for (index, p) in t.partitions.iter().enumerate() {
            records.push(crate::controller::partition_record(t.id, index as i32, p).into());
        }
    }
    records.extend(
        state
            .acls()
            .iter()
            .map(|b| crate::controller::acls::acl_record(&b)),
    );
    records.extend(
        state
            .scram_credentials()
            .map(|(user, mechanism, c)| crate::controller::scram::scram_record(user, mechanism, c)),
    );
    for (entity, keys) in state.client_quotas() {
        for (key, value) in keys {
            records.push(crate::controller::quotas::quota_record(
                entity,
                key,
                Some(*value),
            ));
        }
    }
    for (resource, keys) in state.all_broker_configs() {
        for (key, value) in keys {
            records.push(crate::controller::broker_config::broker_config_record(
                resource,
                key,
                Some(value.clone()),
            ));
        }
    }
    records.push(
        ProducerIdsRecord {
            broker_id: -1,
            broker_epoch: -1,
            next_producer_id: state.next_producer_id().0,
        }
        .into(),
    );
    records
}

/// Encodes `state` as a snapshot.
///
/// # Panics
/// If the encoding does not decode back to `state` (a bug in [`state_records`] or in apply):
/// such a snapshot would silently change the metadata of every node that installs it.
pub fn encode_state(state: &MetadataState) -> Vec<u8> {
    let payload = SnapshotBody {
        version: SNAPSHOT_VERSION,
        records: state_records(state),
    }
    .encode_to_vec();
    let mut bytes = Vec::with_capacity(SNAPSHOT_HEADER_BYTES + payload.len());
    // A payload past u32 would need more than 4 GiB of metadata; the log frame bound
    // (FRAME_PAYLOAD_BYTES_MAX) refuses it long before.
    bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    bytes.extend_from_slice(&crc32c::crc32c(&payload).to_be_bytes());
    bytes.extend_from_slice(&payload);
    let back = decode_state(&bytes);
    assert!(
        back.as_ref() == Ok(state),
        "a metadata snapshot rebuilds the state it was taken from: {back:?}"
    );
    bytes
}

/// Decodes a snapshot into the state it rebuilds. Never panics on any bytes.
pub fn decode_state(bytes: &[u8]) -> Result<MetadataState, SnapshotError> {
    if bytes.len() < SNAPSHOT_HEADER_BYTES {
        return Err(SnapshotError::Truncated(bytes.len()));
    }
    let len = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]) as usize;
    let stored = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    let Some(payload) = bytes
        .get(SNAPSHOT_HEADER_BYTES..)
        .filter(|p| p.len() == len)
    else {
        return Err(SnapshotError::Truncated(bytes.len()));
    };
    let computed = crc32c::crc32c(payload);
    if stored != computed {
        return Err(SnapshotError::Crc { stored, computed });
    }
    let body =
        SnapshotBody::decode(payload).map_err(|e| SnapshotError::Undecodable(e.to_string()))?;
    if body.version != SNAPSHOT_VERSION {
        return Err(SnapshotError::UnsupportedVersion(body.version));
    }
    let mut state = MetadataState::new();
    for (position, record) in body.records.iter().enumerate() {
        state
            .apply(record)
            .map_err(|error| SnapshotError::Record { position, error })?;
    }
    Ok(state)
}
