//! The SCRAM credential APIs on the wire (KIP-554): AlterUserScramCredentials and
//! DescribeUserScramCredentials, v0.
//!
//! AlterUserScramCredentials is a controller command: the broker turns each upsertion's salted
//! password into `StoredKey` and `ServerKey` (the salted password goes no further), computes
//! the records on its applied metadata and has the controller commit them; every broker then
//! authenticates with the stored credentials (`SaslUsers::attach_metadata`). Both APIs need
//! ALTER or DESCRIBE on the cluster when the authoriser is on (`KafkaApis`); a refusal answers
//! CLUSTER_AUTHORIZATION_FAILED for every user (Alter) or for the request (Describe).

use std::collections::BTreeSet;
use std::sync::Arc;

use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use keel_core::acl::Operation;
use keel_core::controller::scram::{ScramDeletion, ScramUpsertion, StoredScram};
use keel_core::error_code as code;

use super::authz::Gate;
use super::Broker;
use crate::security::scram::{ScramCredential, ScramMechanism};
use crate::wire::RequestContext;

fn s(text: impl Into<String>) -> StrBytes {
    StrBytes::from_string(text.into())
}

/// The credential an upsertion stores: its keys derived from the salted password.
fn stored(u: &alter_user_scram_credentials_request::ScramCredentialUpsertion) -> StoredScram {
    match ScramMechanism::from_code(u.mechanism) {
        Some(m) => {
            let c = ScramCredential::from_salted_password(
                m,
                &u.salted_password,
                &u.salt,
                u.iterations.max(0) as u32,
            );
            StoredScram {
                salt: c.salt,
                stored_key: c.stored_key,
                server_key: c.server_key,
                iterations: u.iterations,
            }
        }
        // Refused by the command (UNSUPPORTED_SASL_MECHANISM) before anything is stored.
        None => StoredScram {
            salt: u.salt.to_vec(),
            stored_key: Vec::new(),
            server_key: Vec::new(),
            iterations: u.iterations,
        },
    }
}

pub(super) fn alter(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    r: AlterUserScramCredentialsRequest,
) -> Gate {
    let users: Vec<String> = {
        let mut seen = BTreeSet::new();
        r.deletions
            .iter()
            .map(|d| d.name.to_string())
            .chain(r.upsertions.iter().map(|u| u.name.to_string()))
            .filter(|n| seen.insert(n.clone()))
            .collect()
    };
    if broker.cluster_allowed(ctx, Operation::Alter) == Some(false) {
        let response = AlterUserScramCredentialsResponse::default().with_results(
            users
                .into_iter()
                .map(|user| {
                    alter_user_scram_credentials_response::AlterUserScramCredentialsResult::default(
                    )
                    .with_user(s(user))
                    .with_error_code(code::CLUSTER_AUTHORIZATION_FAILED)
                    .with_error_message(Some(s("ALTER on the cluster is not authorized")))
                })
                .collect(),
        );
        return Gate::Answer(Ok(Some(ResponseKind::AlterUserScramCredentials(response))));
    }
    let deletions: Vec<ScramDeletion> = r
        .deletions
        .iter()
        .map(|d| ScramDeletion {
            name: d.name.to_string(),
            mechanism: d.mechanism,
        })
        .collect();
    let upsertions: Vec<ScramUpsertion> = r
        .upsertions
        .iter()
        .map(|u| ScramUpsertion {
            name: u.name.to_string(),
            mechanism: u.mechanism,
            credential: stored(u),
        })
        .collect();
    let broker = broker.clone();
    Gate::Later(Box::pin(async move {
        let outcome = broker
            .command(false, |m| {
                Ok(m.alter_user_scram_credentials(&deletions, &upsertions))
            })
            .await;
        let results = match outcome {
            Ok(results) => results
                .into_iter()
                .map(|r| {
                    alter_user_scram_credentials_response::AlterUserScramCredentialsResult::default(
                    )
                    .with_user(s(r.user))
                    .with_error_code(r.error_code)
                    .with_error_message(r.error_message.map(s))
                })
                .collect(),
            Err(e) => users
                .into_iter()
                .map(|user| {
                    alter_user_scram_credentials_response::AlterUserScramCredentialsResult::default(
                    )
                    .with_user(s(user))
                    .with_error_code(e.code())
                    .with_error_message(Some(s(e.to_string())))
                })
                .collect(),
        };
        let response = AlterUserScramCredentialsResponse::default().with_results(results);
        Ok(Some(ResponseKind::AlterUserScramCredentials(response)))
    }))
}

/// DescribeUserScramCredentials: every user with a stored credential (`users` null or
/// empty), or the named ones: a name given twice gets DUPLICATE_RESOURCE, one without a
/// credential RESOURCE_NOT_FOUND. Only the mechanisms and iterations are told.
pub(super) fn describe(
    broker: &Arc<Broker>,
    ctx: &RequestContext,
    r: DescribeUserScramCredentialsRequest,
) -> Gate {
    let mut response = DescribeUserScramCredentialsResponse::default();
    if broker.cluster_allowed(ctx, Operation::Describe) == Some(false) {
        response.error_code = code::CLUSTER_AUTHORIZATION_FAILED;
        response.error_message = Some(s("DESCRIBE on the cluster is not authorized"));
        return Gate::Answer(Ok(Some(ResponseKind::DescribeUserScramCredentials(
            response,
        ))));
    }
    let state = broker.cluster().state();
    let mut stored: Vec<&str> = state.scram_credentials().map(|(u, _, _)| u).collect();
    stored.dedup();
    let wanted: Vec<String> = match r.users.as_ref().filter(|u| !u.is_empty()) {
        None => stored.iter().map(|u| u.to_string()).collect(),
        Some(users) => users.iter().map(|u| u.name.to_string()).collect(),
    };
    let mut seen = BTreeSet::new();
    let duplicates: BTreeSet<&String> = wanted.iter().filter(|u| !seen.insert(*u)).collect();
    let mut answered = BTreeSet::new();
    for user in &wanted {
        if !answered.insert(user) {
            continue;
        }
        let mut result =
            describe_user_scram_credentials_response::DescribeUserScramCredentialsResult::default()
                .with_user(s(user.clone()));
        if duplicates.contains(user) {
            result.error_code = code::DUPLICATE_RESOURCE;
            result.error_message = Some(s(
                "Cannot describe SCRAM credentials for the same user twice in a single request",
            ));
        } else {
            result.credential_infos = state
                .scram_credentials()
                .filter(|(u, _, _)| *u == user.as_str())
                .map(|(_, mechanism, c)| {
                    describe_user_scram_credentials_response::CredentialInfo::default()
                        .with_mechanism(mechanism)
                        .with_iterations(c.iterations)
                })
                .collect();
            if result.credential_infos.is_empty() {
                result.error_code = code::RESOURCE_NOT_FOUND;
                result.error_message = Some(s(
                    "Attempt to describe a user credential that does not exist",
                ));
            }
        }
        response.results.push(result);
    }
    Gate::Answer(Ok(Some(ResponseKind::DescribeUserScramCredentials(
        response,
    ))))
}

/// The lookup SASL uses for the credentials in `broker`'s applied metadata
/// (`SaslUsers::attach_metadata`). It holds the broker weakly: nothing once it is gone.
pub fn scram_lookup(broker: &Arc<Broker>) -> Arc<crate::security::sasl::MetadataCredentials> {
    let broker = Arc::downgrade(broker);
    Arc::new(move |user: &str, mechanism: ScramMechanism| {
        let broker = broker.upgrade()?;
        let state = broker.cluster().state();
        let c = state.scram_credential(user, mechanism.code())?;
        Some(ScramCredential {
            mechanism,
            salt: c.salt.clone(),
            iterations: u32::try_from(c.iterations).ok()?,
            stored_key: c.stored_key.clone(),
            server_key: c.server_key.clone(),
        })
    })
}
