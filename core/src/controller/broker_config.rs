//! Dynamic broker configs in the metadata (KRaft's `ConfigurationControlManager` for BROKER
//! resources): set at runtime with IncrementalAlterConfigs or AlterConfigs on a broker id or on
//! the cluster default (the resource name `""`), stored as records, applied by every broker
//! without a restart.
//!
//! keel takes two keys, the replication throttle's rates ([`crate::throttle`]):
//! [`LEADER_REPLICATION_THROTTLED_RATE`] and [`FOLLOWER_REPLICATION_THROTTLED_RATE`], in bytes
//! per second. A broker's own value overrides the cluster default, as in Kafka. Every other
//! key is refused with INVALID_CONFIG: keel's other broker settings are static (its config
//! file).
//!
//! What always holds: every stored resource is `""` or a non-negative broker id in decimal,
//! holds at least one key, every key is one of [`KEYS`], and every value is a whole number of
//! at least 1 in canonical decimal.

use std::collections::{BTreeMap, BTreeSet};

use super::records::BrokerConfigRecord;
use super::MetadataState;
use super::{AlterConfigOp, AlterOp, ApplyError, BrokerId, ControllerError, MetadataRecord};

/// `leader.replication.throttled.rate`: the bytes per second a leader sends to the replicas
/// its partitions are adding (reassignment catch-up), all partitions together.
pub const LEADER_REPLICATION_THROTTLED_RATE: &str = "leader.replication.throttled.rate";
/// `follower.replication.throttled.rate`: the bytes per second a replica being added may
/// receive from each leader it catches up from.
pub const FOLLOWER_REPLICATION_THROTTLED_RATE: &str = "follower.replication.throttled.rate";
/// The dynamic broker config keys keel takes.
pub const KEYS: [&str; 2] = [
    LEADER_REPLICATION_THROTTLED_RATE,
    FOLLOWER_REPLICATION_THROTTLED_RATE,
];

/// The broker id a BROKER resource names, `None` for the cluster default (`""`), or why the
/// name is not one.
fn resource_broker(resource: &str) -> Result<Option<BrokerId>, String> {
    if resource.is_empty() {
        return Ok(None);
    }
    match resource.parse::<i32>() {
        Ok(id) if id >= 0 && id.to_string() == resource => Ok(Some(BrokerId(id))),
        _ => Err(format!(
            "Invalid broker resource name {resource:?}: a broker id, or empty for the cluster \
             default"
        )),
    }
}

/// `value` of `key` in canonical form, or INVALID_CONFIG's message naming the setting.
fn check_value(key: &str, value: &str) -> Result<String, String> {
    if !KEYS.contains(&key) {
        return Err(format!(
            "Broker config {key} cannot be set at runtime: keel's dynamic broker configs are {}",
            KEYS.join(" and ")
        ));
    }
    match value.trim().parse::<i64>() {
        Ok(v) if v >= 1 => Ok(v.to_string()),
        _ => Err(format!(
            "Invalid value {value:?} for configuration {key}: a whole number of bytes per \
             second, at least 1"
        )),
    }
}

impl MetadataState {
    /// The dynamic configs of the BROKER resource `resource` (a broker id, or `""` for the
    /// cluster default), as stored.
    pub fn broker_configs(&self, resource: &str) -> Option<&BTreeMap<String, String>> {
        self.broker_configs.get(resource)
    }

    /// Every BROKER resource's dynamic configs.
    pub fn all_broker_configs(&self) -> &BTreeMap<String, BTreeMap<String, String>> {
        &self.broker_configs
    }

    /// The value of the dynamic broker config `key` for `broker`: its own, else the cluster
    /// default's, else `None` (unthrottled).
    pub fn broker_rate(&self, broker: BrokerId, key: &str) -> Option<u64> {
        if self.broker_configs.is_empty() {
            // The common case, on the replication path: nothing set.
            return None;
        }
        [broker.0.to_string(), String::new()]
            .iter()
            .find_map(|r| self.broker_configs.get(r)?.get(key))
            .and_then(|v| v.parse().ok())
    }

    /// IncrementalAlterConfigs on a BROKER resource: the records that apply `ops` to
    /// `resource`. Refused, changing nothing: INVALID_REQUEST for a name that is neither a
    /// broker id nor `""`, a key named twice, or a SET without a value; INVALID_CONFIG, naming
    /// the setting, for a key keel does not take at runtime, a value that is not a whole number
    /// of at least 1, or APPEND/SUBTRACT (neither key is a list). Deleting a key that is not set
    /// is no change. The broker need not be registered (Kafka lets an operator configure one
    /// before it starts).
    pub fn alter_broker_configs(
        &self,
        resource: &str,
        ops: &[AlterConfigOp],
    ) -> Result<Vec<MetadataRecord>, ControllerError> {
        resource_broker(resource).map_err(ControllerError::InvalidRequest)?;
        let stored = self.broker_configs.get(resource);
        let mut seen = BTreeSet::new();
        let mut records = Vec::new();
        for op in ops {
            let key = op.key.as_str();
            if !seen.insert(key) {
                return Err(ControllerError::InvalidRequest(format!(
                    "Error due to duplicate config keys: {key}"
                )));
            }
            let value = match (op.op, &op.value) {
                (AlterOp::Delete, _) => {
                    if !KEYS.contains(&key) {
                        return Err(ControllerError::InvalidConfig(
                            check_value(key, "1").expect_err("not a dynamic key"),
                        ));
                    }
                    if stored.is_none_or(|s| !s.contains_key(key)) {
                        continue;
                    }
                    None
                }
                (AlterOp::Append | AlterOp::Subtract, _) => {
                    return Err(ControllerError::InvalidConfig(format!(
                        "Can't {:?} to key {key} because its type is not LIST.",
                        op.op
                    )))
                }
                (AlterOp::Set, None) => {
                    return Err(ControllerError::InvalidRequest(format!(
                        "Null value not supported for: {key}"
                    )))
                }
                (AlterOp::Set, Some(v)) => {
                    Some(check_value(key, v).map_err(ControllerError::InvalidConfig)?)
                }
            };
            records.push(broker_config_record(resource, key, value));
        }
        Ok(records)
    }

    /// Applies a broker config record.
    pub(super) fn apply_broker_config(&mut self, r: &BrokerConfigRecord) -> Result<(), ApplyError> {
        resource_broker(&r.resource).map_err(ApplyError::InvalidBrokerConfig)?;
        match &r.value {
            Some(value) => {
                let value = check_value(&r.key, value).map_err(ApplyError::InvalidBrokerConfig)?;
                self.broker_configs
                    .entry(r.resource.clone())
                    .or_default()
                    .insert(r.key.clone(), value);
            }
            None => {
                if let Some(keys) = self.broker_configs.get_mut(&r.resource) {
                    keys.remove(&r.key);
                    if keys.is_empty() {
                        self.broker_configs.remove(&r.resource);
                    }
                }
            }
        }
        Ok(())
    }
}

/// The record that sets `key` of BROKER resource `resource` to `value`, or removes it.
pub fn broker_config_record(resource: &str, key: &str, value: Option<String>) -> MetadataRecord {
    BrokerConfigRecord {
        resource: resource.to_string(),
        key: key.to_string(),
        value,
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quorum::snapshot;

    fn op(key: &str, op: AlterOp, value: Option<&str>) -> AlterConfigOp {
        AlterConfigOp {
            key: key.to_string(),
            op,
            value: value.map(str::to_string),
        }
    }

    fn commit(state: &mut MetadataState, records: &[MetadataRecord]) {
        for r in records {
            state.apply(r).expect("command records apply");
        }
    }

    #[test]
    fn a_broker_s_own_rate_overrides_the_cluster_default() {
        let mut state = MetadataState::new();
        let leader = LEADER_REPLICATION_THROTTLED_RATE;
        let records = state
            .alter_broker_configs("", &[op(leader, AlterOp::Set, Some("1000"))])
            .unwrap();
        commit(&mut state, &records);
        assert_eq!(state.broker_rate(BrokerId(1), leader), Some(1000));
        assert_eq!(
            state.broker_rate(BrokerId(1), FOLLOWER_REPLICATION_THROTTLED_RATE),
            None
        );
        let records = state
            .alter_broker_configs("2", &[op(leader, AlterOp::Set, Some(" 50 "))])
            .unwrap();
        commit(&mut state, &records);
        assert_eq!(state.broker_rate(BrokerId(2), leader), Some(50));
        assert_eq!(state.broker_rate(BrokerId(1), leader), Some(1000));
        assert_eq!(state.broker_configs("2").unwrap()[leader], "50");
        // Deleting the default leaves broker 2's own; deleting what is not set: no record.
        let records = state
            .alter_broker_configs("", &[op(leader, AlterOp::Delete, None)])
            .unwrap();
        commit(&mut state, &records);
        assert_eq!(state.broker_rate(BrokerId(1), leader), None);
        assert_eq!(state.broker_rate(BrokerId(2), leader), Some(50));
        assert!(state.broker_configs("").is_none());
        assert!(state
            .alter_broker_configs("", &[op(leader, AlterOp::Delete, None)])
            .unwrap()
            .is_empty());
        // Broker configs travel in snapshots.
        let bytes = snapshot::encode_state(&state);
        assert_eq!(snapshot::decode_state(&bytes).unwrap(), state);
    }

    #[test]
    fn bad_rates_and_keys_are_refused_naming_the_setting() {
        let state = MetadataState::new();
        let leader = LEADER_REPLICATION_THROTTLED_RATE;
        let follower = FOLLOWER_REPLICATION_THROTTLED_RATE;
        for (resource, ops, code, named) in [
            ("", vec![op(leader, AlterOp::Set, Some("-5"))], 40, leader),
            (
                "",
                vec![op(follower, AlterOp::Set, Some("fast"))],
                40,
                follower,
            ),
            ("1", vec![op(leader, AlterOp::Set, Some("0"))], 40, leader),
            ("1", vec![op(leader, AlterOp::Set, Some("1.5"))], 40, leader),
            (
                "",
                vec![op("log.retention.ms", AlterOp::Set, Some("1"))],
                40,
                "log.retention.ms",
            ),
            (
                "",
                vec![op("num.io.threads", AlterOp::Delete, None)],
                40,
                "num.io.threads",
            ),
            ("", vec![op(leader, AlterOp::Append, Some("1"))], 40, leader),
            ("x", vec![op(leader, AlterOp::Set, Some("1"))], 42, "x"),
            ("-1", vec![op(leader, AlterOp::Set, Some("1"))], 42, "-1"),
            ("", vec![op(leader, AlterOp::Set, None)], 42, leader),
            (
                "",
                vec![
                    op(leader, AlterOp::Set, Some("1")),
                    op(leader, AlterOp::Delete, None),
                ],
                42,
                leader,
            ),
        ] {
            let err = state.alter_broker_configs(resource, &ops).unwrap_err();
            assert_eq!(err.code(), code, "{resource:?} {ops:?}: {err}");
            assert!(err.to_string().contains(named), "{err}");
        }
        // Apply refuses what the command refuses.
        let mut state = MetadataState::new();
        assert!(matches!(
            state.apply(&broker_config_record("", leader, Some("-1".into()))),
            Err(ApplyError::InvalidBrokerConfig(_))
        ));
        assert!(state.all_broker_configs().is_empty());
    }
}
