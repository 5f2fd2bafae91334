//! Client quotas in the metadata (KIP-546; KRaft's `ClientQuotaControlManager`):
//! AlterClientQuotas as a command that returns records, the records' apply, and the quotas
//! every broker enforces ([`crate::quota`] has the arithmetic).
//!
//! An entity is a user, a client id, or a user and a client id, each part a name or the
//! default (Kafka's `<default>`). Keel keeps the two byte-rate keys, `producer_byte_rate` and
//! `consumer_byte_rate`, as whole numbers of bytes per second.
//!
//! What always holds: every stored entity has one or two parts and at least one key; every
//! stored key is a byte-rate key with a value of at least 1.

use std::collections::BTreeMap;

use super::records::{ClientQuotaRecord, QuotaEntityPart, Record};
use super::{ApplyError, MetadataRecord, MetadataState};
use crate::error_code::{self as code, ErrorCode};
use crate::quota::{QuotaEntity, CONSUMER_BYTE_RATE, PRODUCER_BYTE_RATE};

/// Kafka's entity type of a user.
pub const ENTITY_USER: &str = "user";
/// Kafka's entity type of a client id.
pub const ENTITY_CLIENT_ID: &str = "client-id";

/// One alteration of one key: a value to set, or `None` to remove it.
#[derive(Clone, Debug, PartialEq)]
pub struct QuotaOp {
    /// The key.
    pub key: String,
    /// The value to set; `None`: remove.
    pub value: Option<f64>,
}

/// The alterations of one entity, as the request names it: `(entity type, name or None for
/// the default)` parts.
#[derive(Clone, Debug, PartialEq)]
pub struct QuotaAlteration {
    /// The entity's parts.
    pub entity: Vec<(String, Option<String>)>,
    /// The keys to set or remove.
    pub ops: Vec<QuotaOp>,
}

/// One entity's outcome: NONE, or why its alterations were refused (none of them applies).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaResult {
    /// The error code.
    pub error_code: ErrorCode,
    /// The message of the error.
    pub error_message: Option<String>,
}

/// The entity `parts` names: each type at most once, `user` and `client-id` only.
pub fn entity_of(parts: &[(String, Option<String>)]) -> Result<QuotaEntity, String> {
    let mut entity = QuotaEntity {
        user: None,
        client_id: None,
    };
    if parts.is_empty() {
        return Err("An entity must have at least one part".to_string());
    }
    for (kind, name) in parts {
        let slot = match kind.as_str() {
            ENTITY_USER => &mut entity.user,
            ENTITY_CLIENT_ID => &mut entity.client_id,
            other => {
                return Err(format!(
                    "Entity type {other:?} is not supported (keel serves user and client-id)"
                ))
            }
        };
        if slot.is_some() {
            return Err(format!("Entity type {kind:?} given twice"));
        }
        if name.as_deref() == Some("") {
            return Err(format!("An empty {kind} name (use the default entity)"));
        }
        *slot = Some(name.clone());
    }
    Ok(entity)
}

/// The parts of `entity`, as records and answers carry them.
pub fn parts_of(entity: &QuotaEntity) -> Vec<(String, Option<String>)> {
    let mut parts = Vec::new();
    if let Some(user) = &entity.user {
        parts.push((ENTITY_USER.to_string(), user.clone()));
    }
    if let Some(client) = &entity.client_id {
        parts.push((ENTITY_CLIENT_ID.to_string(), client.clone()));
    }
    parts
}

/// A value keel stores for a byte-rate key: a whole number of at least 1 (Kafka's keys are
/// LONG configs and its quotas must be positive).
fn check_op(op: &QuotaOp) -> Result<Option<i64>, String> {
    if op.key != PRODUCER_BYTE_RATE && op.key != CONSUMER_BYTE_RATE {
        return Err(format!(
            "Quota key {:?} is not supported (keel serves {PRODUCER_BYTE_RATE} and \
             {CONSUMER_BYTE_RATE})",
            op.key
        ));
    }
    let Some(value) = op.value else {
        return Ok(None);
    };
    if !value.is_finite() || value.fract() != 0.0 || value < 1.0 || value > i64::MAX as f64 {
        return Err(format!(
            "Quota {} must be a whole number of bytes per second, at least 1 (got {value})",
            op.key
        ));
    }
    Ok(Some(value as i64))
}

impl MetadataState {
    /// Every entity's quotas.
    pub fn client_quotas(&self) -> &BTreeMap<QuotaEntity, BTreeMap<String, i64>> {
        &self.quotas
    }

    /// AlterClientQuotas (`ClientQuotaControlManager.alterClientQuotas`): per entry, an
    /// entity that is not a user, a client id or both, a key other than the two byte rates,
    /// a value that is not a whole number of at least 1, or a key named twice is refused with
    /// INVALID_REQUEST and changes nothing; otherwise one record per key (removing a key that
    /// is not set is no change and no record). With `validate_only`, no records.
    pub fn alter_client_quotas(
        &self,
        alterations: &[QuotaAlteration],
        validate_only: bool,
    ) -> (Vec<QuotaResult>, Vec<MetadataRecord>) {
        let mut results = Vec::new();
        let mut records = Vec::new();
        for alteration in alterations {
            match self.alteration_records(alteration) {
                Ok(mut r) => {
                    if !validate_only {
                        records.append(&mut r);
                    }
                    results.push(QuotaResult {
                        error_code: code::NONE,
                        error_message: None,
                    });
                }
                Err(why) => results.push(QuotaResult {
                    error_code: code::INVALID_REQUEST,
                    error_message: Some(why),
                }),
            }
        }
        (results, records)
    }

    fn alteration_records(&self, a: &QuotaAlteration) -> Result<Vec<MetadataRecord>, String> {
        let entity = entity_of(&a.entity)?;
        let stored = self.quotas.get(&entity);
        let mut seen = std::collections::BTreeSet::new();
        let mut records = Vec::new();
        for op in &a.ops {
            if !seen.insert(op.key.as_str()) {
                return Err(format!("Quota key {:?} given twice", op.key));
            }
            let value = check_op(op)?;
            let present = stored.is_some_and(|s| s.contains_key(&op.key));
            if value.is_none() && !present {
                continue;
            }
            records.push(quota_record(&entity, &op.key, value));
        }
        Ok(records)
    }

    /// Applies a quota record: sets or removes one key of one entity.
    pub(super) fn apply_client_quota(&mut self, r: &ClientQuotaRecord) -> Result<(), ApplyError> {
        let parts: Vec<(String, Option<String>)> = r
            .entity
            .iter()
            .map(|p| (p.entity_type.clone(), p.entity_name.clone()))
            .collect();
        let entity = entity_of(&parts).map_err(ApplyError::InvalidQuota)?;
        let op = QuotaOp {
            key: r.key.clone(),
            value: (!r.remove).then_some(r.value),
        };
        match check_op(&op).map_err(ApplyError::InvalidQuota)? {
            Some(value) => {
                self.quotas.entry(entity).or_default().insert(op.key, value);
            }
            None => {
                let keys = self.quotas.get_mut(&entity);
                if keys.and_then(|k| k.remove(&op.key)).is_none() {
                    return Err(ApplyError::InvalidQuota(format!(
                        "no quota {} to remove",
                        op.key
                    )));
                }
                if self.quotas.get(&entity).is_some_and(BTreeMap::is_empty) {
                    self.quotas.remove(&entity);
                }
            }
        }
        Ok(())
    }
}

/// The record that sets `key` of `entity` to `value`, or removes it (`None`).
pub fn quota_record(entity: &QuotaEntity, key: &str, value: Option<i64>) -> MetadataRecord {
    MetadataRecord {
        record: Some(Record::ClientQuota(ClientQuotaRecord {
            entity: parts_of(entity)
                .into_iter()
                .map(|(entity_type, entity_name)| QuotaEntityPart {
                    entity_type,
                    entity_name,
                })
                .collect(),
            key: key.to_string(),
            value: value.unwrap_or(0) as f64,
            remove: value.is_none(),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quorum::snapshot;

    fn alteration(parts: &[(&str, Option<&str>)], ops: &[(&str, Option<f64>)]) -> QuotaAlteration {
        QuotaAlteration {
            entity: parts
                .iter()
                .map(|(t, n)| (t.to_string(), n.map(str::to_string)))
                .collect(),
            ops: ops
                .iter()
                .map(|(k, v)| QuotaOp {
                    key: k.to_string(),
                    value: *v,
                })
                .collect(),
        }
    }

    fn commit(state: &mut MetadataState, records: &[MetadataRecord]) {
        for r in records {
            state.apply(r).expect("command records apply");
        }
        state.check_invariants();
    }

    /// Reference: ClientQuotaControlManager.alterClientQuotas and validateQuotaKeyValue.
    #[test]
    fn alter_refuses_what_kafka_refuses_and_stores_the_rest() {
        let mut state = MetadataState::new();
        let (results, records) = state.alter_client_quotas(
            &[
                alteration(
                    &[("client-id", Some("app"))],
                    &[(PRODUCER_BYTE_RATE, Some(1024.0))],
                ),
                alteration(&[("user", None)], &[(CONSUMER_BYTE_RATE, Some(2048.0))]),
                alteration(
                    &[("ip", Some("1.2.3.4"))],
                    &[(PRODUCER_BYTE_RATE, Some(1.0))],
                ),
                alteration(
                    &[("user", Some("a"))],
                    &[("request_percentage", Some(50.0))],
                ),
                alteration(&[("user", Some("a"))], &[(PRODUCER_BYTE_RATE, Some(1.5))]),
                alteration(&[("user", Some("a"))], &[(PRODUCER_BYTE_RATE, Some(0.0))]),
                alteration(&[], &[(PRODUCER_BYTE_RATE, Some(10.0))]),
                alteration(
                    &[("user", Some("a")), ("user", Some("b"))],
                    &[(PRODUCER_BYTE_RATE, Some(10.0))],
                ),
                alteration(
                    &[("user", Some("a"))],
                    &[(PRODUCER_BYTE_RATE, Some(10.0)), (PRODUCER_BYTE_RATE, None)],
                ),
            ],
            false,
        );
        let codes: Vec<ErrorCode> = results.iter().map(|r| r.error_code).collect();
        assert_eq!(
            codes,
            [
                code::NONE,
                code::NONE,
                code::INVALID_REQUEST,
                code::INVALID_REQUEST,
                code::INVALID_REQUEST,
                code::INVALID_REQUEST,
                code::INVALID_REQUEST,
                code::INVALID_REQUEST,
                code::INVALID_REQUEST,
            ]
        );
        assert_eq!(records.len(), 2);
        commit(&mut state, &records);
        let app = QuotaEntity {
            user: None,
            client_id: Some(Some("app".into())),
        };
        assert_eq!(state.client_quotas()[&app][PRODUCER_BYTE_RATE], 1024);
        // Removing the last key removes the entity; removing what is not set is no change.
        let (results, records) = state.alter_client_quotas(
            &[alteration(
                &[("client-id", Some("app"))],
                &[(PRODUCER_BYTE_RATE, None), (CONSUMER_BYTE_RATE, None)],
            )],
            false,
        );
        assert_eq!(results[0].error_code, code::NONE);
        assert_eq!(records.len(), 1);
        commit(&mut state, &records);
        assert!(!state.client_quotas().contains_key(&app));
        // A removal computed before another removed it no longer applies.
        assert!(matches!(
            state.apply(&records[0]),
            Err(ApplyError::InvalidQuota(_))
        ));
        // validate_only: the answer without records.
        let (results, records) = state.alter_client_quotas(
            &[alteration(
                &[("user", Some("a"))],
                &[(PRODUCER_BYTE_RATE, Some(9.0))],
            )],
            true,
        );
        assert_eq!(results[0].error_code, code::NONE);
        assert!(records.is_empty());
    }

    /// Quotas travel in metadata snapshots.
    #[test]
    fn quotas_survive_a_snapshot() {
        let mut state = MetadataState::new();
        let (_, records) = state.alter_client_quotas(
            &[
                alteration(
                    &[("user", Some("alice")), ("client-id", None)],
                    &[
                        (PRODUCER_BYTE_RATE, Some(1e6)),
                        (CONSUMER_BYTE_RATE, Some(2e6)),
                    ],
                ),
                alteration(&[("client-id", None)], &[(PRODUCER_BYTE_RATE, Some(5e5))]),
            ],
            false,
        );
        commit(&mut state, &records);
        let bytes = snapshot::encode_state(&state);
        assert_eq!(snapshot::decode_state(&bytes).unwrap(), state);
    }
}
