//! The client quota APIs on the wire (KIP-546): AlterClientQuotas and DescribeClientQuotas,
//! v0-1.
//!
//! AlterClientQuotas is a controller command (`controller::quotas`): the broker computes its
//! records on its applied metadata and has the controller commit them, so every broker holds
//! the same quotas. DescribeClientQuotas reads the applied metadata. They need ALTER and
//! DESCRIBE on the cluster when the authoriser is on (Kafka's `KafkaApis`); a refusal answers
//! CLUSTER_AUTHORIZATION_FAILED for every entry (Alter) or for the request (Describe).

use std::sync::Arc;

use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use keel_core::acl::Operation;
use keel_core::controller::quotas::{parts_of, QuotaAlteration, QuotaOp};
use keel_core::error_code as code;
use keel_core::quota::{applied_quota, ByteRate, QuotaEntity, QuotaKind};
use std::collections::BTreeMap;

use super::authz::Gate;
use super::Broker;
use crate::wire::RequestContext;

fn s(text: impl Into<String>) -> StrBytes {
    StrBytes::from_string(text.into())
}

/// Past this many tracked quota keys, those without a sample in the window are forgotten: a
/// client changing its client id on every connection cannot grow the map without bound
/// beyond the clients active within one window.
const QUOTA_RATES_PRUNE_AT: usize = 10_000;

/// A quota's kind and its key (`AppliedQuota::key`: user and client id, each empty when the
/// quota's entity has no such part).
type RateKey = (QuotaKind, (String, String));

/// The byte rates clients used, per quota kind and quota key, for the clients a quota applies
/// to.
#[derive(Debug, Default)]
pub(super) struct QuotaRates {
    rates: std::sync::Mutex<BTreeMap<RateKey, ByteRate>>,
}

impl Broker {
    /// Counts `bytes` of `kind` for the client of `ctx` and returns how long it is throttled
    /// (KIP-13): 0 when no quota applies to it or it is within its quota. Kafka's user is the
    /// principal's name (`ANONYMOUS` without authentication).
    pub(super) fn quota_throttle_ms(
        &self,
        ctx: &RequestContext,
        kind: QuotaKind,
        bytes: u64,
    ) -> i32 {
        let principal = ctx.principal.as_str();
        let user = principal
            .split_once(':')
            .map_or(principal, |(_, name)| name);
        let client_id = ctx.client_id.as_ref().map_or("", |c| c.as_str());
        let applied =
            self.with_metadata(|m| applied_quota(m.client_quotas(), kind, user, client_id));
        let Some(applied) = applied else {
            return 0;
        };
        let now_ms = u64::try_from(self.clock.now_ms()).unwrap_or(0);
        let mut rates = self.quota_rates.rates.lock().expect("quota rates poisoned");
        if rates.len() >= QUOTA_RATES_PRUNE_AT {
            rates.retain(|_, rate| !rate.is_idle(now_ms));
        }
        let rate = rates.entry((kind, applied.key)).or_default();
        rate.record(now_ms, bytes);
        // At most THROTTLE_MS_MAX, far below i32::MAX.
        rate.throttle_ms(now_ms, applied.bytes_per_s) as i32
    }
}

/// Kafka's `ClientQuotaFilterComponent` match types.
const MATCH_EXACT: i8 = 0;
const MATCH_DEFAULT: i8 = 1;
const MATCH_ANY: i8 = 2;

fn answer_entity(
    entity: &[alter_client_quotas_request::EntityData],
) -> Vec<alter_client_quotas_response::EntityData> {
    entity
        .iter()
        .map(|e| {
            alter_client_quotas_response::EntityData::default()
                .with_entity_type(e.entity_type.clone())
                .with_entity_name(e.entity_name.clone())
        })
        .collect()
}

pub(super) fn alter(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    r: AlterClientQuotasRequest,
) -> Gate {
    if broker.cluster_allowed(ctx, Operation::Alter) == Some(false) {
        let entries = r
            .entries
            .iter()
            .map(|e| {
                alter_client_quotas_response::EntryData::default()
                    .with_entity(answer_entity(&e.entity))
                    .with_error_code(code::CLUSTER_AUTHORIZATION_FAILED)
                    .with_error_message(Some(s("ALTER on the cluster is not authorized")))
            })
            .collect();
        let response = AlterClientQuotasResponse::default().with_entries(entries);
        return Gate::Answer(Ok(Some(ResponseKind::AlterClientQuotas(response))));
    }
    let alterations: Vec<QuotaAlteration> = r
        .entries
        .iter()
        .map(|e| QuotaAlteration {
            entity: e
                .entity
                .iter()
                .map(|p| {
                    (
                        p.entity_type.to_string(),
                        p.entity_name.as_ref().map(|n| n.to_string()),
                    )
                })
                .collect(),
            ops: e
                .ops
                .iter()
                .map(|o| QuotaOp {
                    key: o.key.to_string(),
                    value: (!o.remove).then_some(o.value),
                })
                .collect(),
        })
        .collect();
    let validate_only = r.validate_only;
    let broker = broker.clone();
    Gate::Later(Box::pin(async move {
        let outcome = broker
            .command(false, |m| {
                Ok(m.alter_client_quotas(&alterations, validate_only))
            })
            .await;
        let entries = r.entries.iter().enumerate().map(|(i, e)| {
            let entry = alter_client_quotas_response::EntryData::default()
                .with_entity(answer_entity(&e.entity));
            match &outcome {
                Ok(results) => {
                    let result = &results[i];
                    entry
                        .with_error_code(result.error_code)
                        .with_error_message(result.error_message.clone().map(s))
                }
                Err(err) => entry
                    .with_error_code(err.code())
                    .with_error_message(Some(s(err.to_string()))),
            }
        });
        let response = AlterClientQuotasResponse::default().with_entries(entries.collect());
        Ok(Some(ResponseKind::AlterClientQuotas(response)))
    }))
}

/// Whether `entity` matches the filter's components (Kafka's `ClientQuotaImage.describe`):
/// each component names a type the entity must have (exactly that name, the default, or any);
/// with `strict`, the entity has no other type.
fn matches(
    entity: &QuotaEntity,
    components: &[(String, i8, Option<String>)],
    strict: bool,
) -> bool {
    let parts = parts_of(entity);
    let each = components.iter().all(|(kind, match_type, name)| {
        parts.iter().any(|(k, n)| {
            k == kind
                && match *match_type {
                    MATCH_EXACT => n.is_some() && n == name,
                    MATCH_DEFAULT => n.is_none(),
                    _ => true,
                }
        })
    });
    each && (!strict || parts.len() == components.len())
}

/// DescribeClientQuotas: the entities matching the filter, with their keys. A filter naming a
/// type twice, an unknown match type, or an exact match without a name is INVALID_REQUEST.
pub(super) fn describe(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    r: DescribeClientQuotasRequest,
) -> Gate {
    let mut response = DescribeClientQuotasResponse::default();
    if broker.cluster_allowed(ctx, Operation::Describe) == Some(false) {
        response.error_code = code::CLUSTER_AUTHORIZATION_FAILED;
        response.error_message = Some(s("DESCRIBE on the cluster is not authorized"));
        return Gate::Answer(Ok(Some(ResponseKind::DescribeClientQuotas(response))));
    }
    let mut components: Vec<(String, i8, Option<String>)> = Vec::new();
    let mut invalid = None;
    for c in &r.components {
        let kind = c.entity_type.to_string();
        if components.iter().any(|(k, _, _)| *k == kind) {
            invalid = Some(format!("Duplicate entity type {kind:?} in the filter"));
        } else if !(MATCH_EXACT..=MATCH_ANY).contains(&c.match_type) {
            invalid = Some(format!("Unknown match type {}", c.match_type));
        } else if c.match_type == MATCH_EXACT && c._match.is_none() {
            invalid = Some(format!("An exact match of {kind:?} needs a name"));
        }
        components.push((kind, c.match_type, c._match.as_ref().map(|m| m.to_string())));
    }
    if let Some(why) = invalid {
        response.error_code = code::INVALID_REQUEST;
        response.error_message = Some(s(why));
        return Gate::Answer(Ok(Some(ResponseKind::DescribeClientQuotas(response))));
    }
    let state = broker.cluster().state();
    let entries = state
        .client_quotas()
        .iter()
        .filter(|(entity, _)| matches(entity, &components, r.strict))
        .map(|(entity, keys)| {
            describe_client_quotas_response::EntryData::default()
                .with_entity(
                    parts_of(entity)
                        .into_iter()
                        .map(|(kind, name)| {
                            describe_client_quotas_response::EntityData::default()
                                .with_entity_type(s(kind))
                                .with_entity_name(name.map(s))
                        })
                        .collect(),
                )
                .with_values(
                    keys.iter()
                        .map(|(key, value)| {
                            describe_client_quotas_response::ValueData::default()
                                .with_key(s(key.clone()))
                                .with_value(*value as f64)
                        })
                        .collect(),
                )
        })
        .collect();
    response.entries = Some(entries);
    Gate::Answer(Ok(Some(ResponseKind::DescribeClientQuotas(response))))
}
