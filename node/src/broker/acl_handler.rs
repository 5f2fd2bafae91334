//! The ACL APIs on the wire (`AclApis`): CreateAcls, DescribeAcls and DeleteAcls, v1-3.
//!
//! CreateAcls and DeleteAcls are controller commands: the broker computes their records on its
//! applied metadata and has the controller commit them (`Broker::command`), so every broker
//! applies the same bindings from the metadata log. DescribeAcls reads the applied metadata.
//!
//! Kafka's checks, in its order:
//! 1. An element Kafka calls UNKNOWN (a code it does not know, or 0) in a binding or a
//!    filter, or ANY or MATCH in a binding to create, fails the request's parsing in Kafka,
//!    which closes the connection; so does keel.
//! 2. Without an authoriser: SECURITY_DISABLED ("No Authorizer is configured.").
//! 3. ALTER (CreateAcls, DeleteAcls) or DESCRIBE (DescribeAcls) on the cluster, else
//!    CLUSTER_AUTHORIZATION_FAILED for the whole request.
//! 4. Each binding to create is validated (`AclBinding::validate`: INVALID_REQUEST).

use std::sync::Arc;

use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use keel_core::acl::{
    AclBinding, AclEntry, AclFilter, Operation, PatternFilter, PatternType, Permission,
    ResourceType,
};
use keel_core::error_code::{self as code, ErrorCode};

use super::authz::Gate;
use super::Broker;
use crate::wire::{HandlerError, RequestContext};

fn s(text: impl Into<String>) -> StrBytes {
    StrBytes::from_string(text.into())
}

const SECURITY_DISABLED_MESSAGE: &str = "No Authorizer is configured.";

/// The ACL (and SCRAM and client quota) APIs, answered here whatever the authoriser; any other request is
/// given back to be authorised (`Gate::Pass` without a finish).
pub(super) fn admin_gate(broker: &Arc<Broker>, ctx: &RequestContext, request: RequestKind) -> Gate {
    match request {
        RequestKind::CreateAcls(r) => create_acls(broker, ctx, r),
        RequestKind::DescribeAcls(r) => describe_acls(broker, ctx, r),
        RequestKind::DeleteAcls(r) => delete_acls(broker, ctx, r),
        RequestKind::AlterUserScramCredentials(r) => super::scram_handler::alter(broker, ctx, r),
        RequestKind::DescribeUserScramCredentials(r) => {
            super::scram_handler::describe(broker, ctx, r)
        }
        RequestKind::AlterClientQuotas(r) => super::quota_handler::alter(broker, ctx, r),
        RequestKind::DescribeClientQuotas(r) => super::quota_handler::describe(broker, ctx, r),
        other => Gate::Pass(other, None),
    }
}

fn close(why: String) -> Gate {
    Gate::Answer(Err(HandlerError::new(why)))
}

/// A binding to create, from Kafka's codes: `Err` names an UNKNOWN (or ANY, MATCH) element.
fn binding(c: &create_acls_request::AclCreation) -> Result<AclBinding, String> {
    let unknown =
        |what: &str, code: i8| format!("CreatableAcls contain unknown elements: {what} {code}");
    Ok(AclBinding {
        resource_type: ResourceType::from_code(c.resource_type)
            .ok_or_else(|| unknown("resource type", c.resource_type))?,
        pattern_type: PatternType::from_code(c.resource_pattern_type)
            .ok_or_else(|| unknown("pattern type", c.resource_pattern_type))?,
        resource_name: c.resource_name.to_string(),
        entry: AclEntry {
            principal: c.principal.to_string(),
            host: c.host.to_string(),
            operation: Operation::from_code(c.operation)
                .ok_or_else(|| unknown("operation", c.operation))?,
            permission: Permission::from_code(c.permission_type)
                .ok_or_else(|| unknown("permission type", c.permission_type))?,
        },
    })
}

/// A filter from Kafka's codes: `Err` names an UNKNOWN element (ANY is 1 for each code).
#[allow(clippy::too_many_arguments)]
fn filter(
    resource_type: i8,
    resource_name: Option<&StrBytes>,
    pattern_type: i8,
    principal: Option<&StrBytes>,
    host: Option<&StrBytes>,
    operation: i8,
    permission: i8,
) -> Result<AclFilter, String> {
    let unknown = |what: &str, code: i8| format!("Filters contain UNKNOWN elements: {what} {code}");
    let any_or = |code: i8, f: fn(i8) -> Option<_>, what: &str| match code {
        1 => Ok(None),
        code => f(code).map(Some).ok_or_else(|| unknown(what, code)),
    };
    Ok(AclFilter {
        resource_type: any_or(resource_type, ResourceType::from_code, "resource type")?,
        resource_name: resource_name.map(|n| n.to_string()),
        pattern: PatternFilter::from_code(pattern_type)
            .ok_or_else(|| unknown("pattern type", pattern_type))?,
        principal: principal.map(|p| p.to_string()),
        host: host.map(|h| h.to_string()),
        operation: match operation {
            1 => None,
            code => Some(Operation::from_code(code).ok_or_else(|| unknown("operation", code))?),
        },
        permission: match permission {
            1 => None,
            code => {
                Some(Permission::from_code(code).ok_or_else(|| unknown("permission type", code))?)
            }
        },
    })
}

/// Why the ACL APIs may not run: SECURITY_DISABLED or CLUSTER_AUTHORIZATION_FAILED.
fn refusal(
    broker: &Broker,
    ctx: &RequestContext,
    operation: Operation,
) -> Option<(ErrorCode, String)> {
    match broker.cluster_allowed(ctx, operation) {
        None => Some((code::SECURITY_DISABLED, SECURITY_DISABLED_MESSAGE.into())),
        Some(false) => Some((
            code::CLUSTER_AUTHORIZATION_FAILED,
            format!("{operation} on the cluster is not authorized"),
        )),
        Some(true) => None,
    }
}

fn create_acls(broker: &Arc<Broker>, ctx: &RequestContext, r: CreateAclsRequest) -> Gate {
    let bindings: Vec<AclBinding> = match r.creations.iter().map(binding).collect() {
        Ok(b) => b,
        Err(why) => return close(why),
    };
    let result = |e: ErrorCode, message: Option<String>| {
        create_acls_response::AclCreationResult::default()
            .with_error_code(e)
            .with_error_message(message.map(s))
    };
    if let Some((e, message)) = refusal(broker, ctx, Operation::Alter) {
        let response = CreateAclsResponse::default().with_results(
            bindings
                .iter()
                .map(|_| result(e, Some(message.clone())))
                .collect(),
        );
        return Gate::Answer(Ok(Some(ResponseKind::CreateAcls(response))));
    }
    let broker = broker.clone();
    Gate::Later(Box::pin(async move {
        let results = broker
            .command(false, |m| m.create_acls(&bindings))
            .await
            .unwrap_or_else(|e| bindings.iter().map(|_| Err(e.clone())).collect());
        let response = CreateAclsResponse::default().with_results(
            results
                .into_iter()
                .map(|r| match r {
                    Ok(()) => result(code::NONE, None),
                    Err(e) => result(e.code(), Some(e.to_string())),
                })
                .collect(),
        );
        Ok(Some(ResponseKind::CreateAcls(response)))
    }))
}

fn describe_acls(broker: &Arc<Broker>, ctx: &RequestContext, r: DescribeAclsRequest) -> Gate {
    let f = match filter(
        r.resource_type_filter,
        r.resource_name_filter.as_ref(),
        r.pattern_type_filter,
        r.principal_filter.as_ref(),
        r.host_filter.as_ref(),
        r.operation,
        r.permission_type,
    ) {
        Ok(f) => f,
        Err(why) => return close(why),
    };
    let mut response = DescribeAclsResponse::default();
    if let Some((e, message)) = refusal(broker, ctx, Operation::Describe) {
        response.error_code = e;
        response.error_message = Some(s(message));
        return Gate::Answer(Ok(Some(ResponseKind::DescribeAcls(response))));
    }
    let state = broker.cluster().state();
    // In the bindings' order, so a resource's bindings come together.
    for b in state.acls().matching(&f) {
        let description = describe_acls_response::AclDescription::default()
            .with_principal(s(b.entry.principal))
            .with_host(s(b.entry.host))
            .with_operation(b.entry.operation.code())
            .with_permission_type(b.entry.permission.code());
        let same = response.resources.last_mut().filter(|last| {
            last.resource_type == b.resource_type.code()
                && last.pattern_type == b.pattern_type.code()
                && *last.resource_name == *b.resource_name
        });
        match same {
            Some(last) => last.acls.push(description),
            None => response.resources.push(
                describe_acls_response::DescribeAclsResource::default()
                    .with_resource_type(b.resource_type.code())
                    .with_resource_name(s(b.resource_name))
                    .with_pattern_type(b.pattern_type.code())
                    .with_acls(vec![description]),
            ),
        }
    }
    Gate::Answer(Ok(Some(ResponseKind::DescribeAcls(response))))
}

fn delete_acls(broker: &Arc<Broker>, ctx: &RequestContext, r: DeleteAclsRequest) -> Gate {
    let filters: Vec<AclFilter> = match r
        .filters
        .iter()
        .map(|f| {
            filter(
                f.resource_type_filter,
                f.resource_name_filter.as_ref(),
                f.pattern_type_filter,
                f.principal_filter.as_ref(),
                f.host_filter.as_ref(),
                f.operation,
                f.permission_type,
            )
        })
        .collect()
    {
        Ok(f) => f,
        Err(why) => return close(why),
    };
    let failed = |e: ErrorCode, message: String, n: usize| {
        DeleteAclsResponse::default().with_filter_results(
            (0..n)
                .map(|_| {
                    delete_acls_response::DeleteAclsFilterResult::default()
                        .with_error_code(e)
                        .with_error_message(Some(s(message.clone())))
                })
                .collect(),
        )
    };
    if let Some((e, message)) = refusal(broker, ctx, Operation::Alter) {
        let response = failed(e, message, filters.len());
        return Gate::Answer(Ok(Some(ResponseKind::DeleteAcls(response))));
    }
    let broker = broker.clone();
    Gate::Later(Box::pin(async move {
        let response = match broker.command(false, |m| m.delete_acls(&filters)).await {
            Err(e) => failed(e.code(), e.to_string(), filters.len()),
            Ok(matched) => DeleteAclsResponse::default().with_filter_results(
                matched
                    .into_iter()
                    .map(|bindings| {
                        delete_acls_response::DeleteAclsFilterResult::default().with_matching_acls(
                            bindings
                                .into_iter()
                                .map(|b| {
                                    delete_acls_response::DeleteAclsMatchingAcl::default()
                                        .with_resource_type(b.resource_type.code())
                                        .with_resource_name(s(b.resource_name))
                                        .with_pattern_type(b.pattern_type.code())
                                        .with_principal(s(b.entry.principal))
                                        .with_host(s(b.entry.host))
                                        .with_operation(b.entry.operation.code())
                                        .with_permission_type(b.entry.permission.code())
                                })
                                .collect(),
                        )
                    })
                    .collect(),
            ),
        };
        Ok(Some(ResponseKind::DeleteAcls(response)))
    }))
}
