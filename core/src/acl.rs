//! Kafka's ACL authoriser (KRaft's `StandardAuthorizer`) as a pure function of its bindings.
//!
//! # What it owns
//! - the ACL model: a binding ([`AclBinding`]) allows or denies one principal, from one host
//!   (or `*`), one operation on the resources one pattern names: a resource type, a name, and
//!   whether the name is the whole name (LITERAL, where `*` matches every name) or a prefix of
//!   it (PREFIXED); the filters DescribeAcls and DeleteAcls select bindings with
//!   ([`AclFilter`], with Kafka's ANY and MATCH);
//! - the set of bindings ([`Acls`]), indexed by resource type and name for the per-request
//!   check, iterated in one fixed order (resource type, pattern type, name, then the entry);
//! - the decision ([`Acls::authorize`]) and Kafka's "on any resource of this type" check
//!   ([`Acls::authorize_by_resource_type`], KIP-679's idempotent producers).
//!
//! # The rules (`StandardAuthorizerData.authorize`, `findResult`)
//! 1. A principal in `super.users` is allowed everything, whatever the ACLs say.
//! 2. The ACLs *of the resource* are the bindings of its type whose pattern covers its name:
//!    LITERAL with the same name, LITERAL `*`, or PREFIXED with a prefix of the name.
//! 3. One of them *matches* the request if its principal is the request's or `User:*`, its
//!    host is the client's address or `*`, and its operation is the requested one or ALL. An
//!    ALLOW binding also matches the operations it implies: READ, WRITE, DELETE and ALTER imply
//!    DESCRIBE; ALTER_CONFIGS implies DESCRIBE_CONFIGS. A DENY binding matches only its own
//!    operation (or ALL): denying READ does not deny DESCRIBE.
//! 4. A matching DENY denies, whatever else matches. Otherwise a matching ALLOW allows.
//! 5. Otherwise: if the resource has no ACLs at all, `allow.everyone.if.no.acl.found`
//!    decides (default: deny); if it has some, none of which matched, the request is denied.
//!
//! Nothing here reads a clock or draws randomness; the same bindings and request always give
//! the same decision. Host comparison is on addresses: an ACL host that parses as an IP
//! address matches the client's address in any spelling (`::1` and `0:0:0:0:0:0:0:1`, which
//! is how Kafka's Java writes it).

#![warn(missing_docs)]

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

/// The name and host that match any name or host in a LITERAL binding (`ResourcePattern.
/// WILDCARD_RESOURCE`, `AclEntry.WILDCARD_HOST`).
pub const WILDCARD: &str = "*";
/// The principal that matches every principal (`StandardAuthorizerData.WILDCARD_PRINCIPAL`).
pub const WILDCARD_PRINCIPAL: &str = "User:*";
/// The only name a CLUSTER resource has (`Resource.CLUSTER_NAME`).
pub const CLUSTER_NAME: &str = "kafka-cluster";

/// A resource type, with Kafka's codes (`ResourceType`). 0 (UNKNOWN) and 1 (ANY) are not
/// resource types; a filter's ANY is `None` in [`AclFilter::resource_type`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ResourceType {
    /// A topic (2).
    Topic,
    /// A consumer group (3).
    Group,
    /// The cluster (4), whose only name is [`CLUSTER_NAME`].
    Cluster,
    /// A transactional id (5).
    TransactionalId,
    /// A delegation token (6).
    DelegationToken,
    /// A user (7): whose delegation tokens one may create or describe.
    User,
}

impl ResourceType {
    /// Every resource type, in code order.
    pub const ALL: [ResourceType; 6] = [
        ResourceType::Topic,
        ResourceType::Group,
        ResourceType::Cluster,
        ResourceType::TransactionalId,
        ResourceType::DelegationToken,
        ResourceType::User,
    ];

    /// Kafka's code.
    pub fn code(self) -> i8 {
        match self {
            ResourceType::Topic => 2,
            ResourceType::Group => 3,
            ResourceType::Cluster => 4,
            ResourceType::TransactionalId => 5,
            ResourceType::DelegationToken => 6,
            ResourceType::User => 7,
        }
    }

    /// The resource type with code `code`, if there is one (UNKNOWN and ANY are not).
    pub fn from_code(code: i8) -> Option<ResourceType> {
        ResourceType::ALL.into_iter().find(|t| t.code() == code)
    }

    /// Kafka's name of the type (`ResourceType.name()`), as in its logs.
    pub fn name(self) -> &'static str {
        match self {
            ResourceType::Topic => "TOPIC",
            ResourceType::Group => "GROUP",
            ResourceType::Cluster => "CLUSTER",
            ResourceType::TransactionalId => "TRANSACTIONAL_ID",
            ResourceType::DelegationToken => "DELEGATION_TOKEN",
            ResourceType::User => "USER",
        }
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a binding's resource name applies, with Kafka's codes (`PatternType`). 0 (UNKNOWN),
/// 1 (ANY) and 2 (MATCH) exist only in filters ([`PatternFilter`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PatternType {
    /// The name is the whole resource name; `*` is every name (3).
    Literal,
    /// The name is a prefix of the resource names it covers (4).
    Prefixed,
}

impl PatternType {
    /// Kafka's code.
    pub fn code(self) -> i8 {
        match self {
            PatternType::Literal => 3,
            PatternType::Prefixed => 4,
        }
    }

    /// The pattern type with code `code`, if there is one.
    pub fn from_code(code: i8) -> Option<PatternType> {
        match code {
            3 => Some(PatternType::Literal),
            4 => Some(PatternType::Prefixed),
            _ => None,
        }
    }

    /// Kafka's name.
    pub fn name(self) -> &'static str {
        match self {
            PatternType::Literal => "LITERAL",
            PatternType::Prefixed => "PREFIXED",
        }
    }
}

impl fmt::Display for PatternType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An operation, with Kafka's codes (`AclOperation`). 0 (UNKNOWN) and 1 (ANY) are not
/// operations; a filter's ANY is `None` in [`AclFilter::operation`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operation {
    /// Every operation (2): in a binding only, never requested.
    All,
    /// Read (3).
    Read,
    /// Write (4).
    Write,
    /// Create (5).
    Create,
    /// Delete (6).
    Delete,
    /// Alter (7).
    Alter,
    /// Describe (8).
    Describe,
    /// Broker-to-broker actions (9).
    ClusterAction,
    /// Describe configs (10).
    DescribeConfigs,
    /// Alter configs (11).
    AlterConfigs,
    /// Idempotent produce (12).
    IdempotentWrite,
    /// Create delegation tokens (13).
    CreateTokens,
    /// Describe delegation tokens (14).
    DescribeTokens,
}

impl Operation {
    /// Every operation, in code order.
    pub const ALL_OPERATIONS: [Operation; 13] = [
        Operation::All,
        Operation::Read,
        Operation::Write,
        Operation::Create,
        Operation::Delete,
        Operation::Alter,
        Operation::Describe,
        Operation::ClusterAction,
        Operation::DescribeConfigs,
        Operation::AlterConfigs,
        Operation::IdempotentWrite,
        Operation::CreateTokens,
        Operation::DescribeTokens,
    ];

    /// Kafka's code.
    pub fn code(self) -> i8 {
        match self {
            Operation::All => 2,
            Operation::Read => 3,
            Operation::Write => 4,
            Operation::Create => 5,
            Operation::Delete => 6,
            Operation::Alter => 7,
            Operation::Describe => 8,
            Operation::ClusterAction => 9,
            Operation::DescribeConfigs => 10,
            Operation::AlterConfigs => 11,
            Operation::IdempotentWrite => 12,
            Operation::CreateTokens => 13,
            Operation::DescribeTokens => 14,
        }
    }

    /// The operation with code `code`, if there is one (UNKNOWN and ANY are not).
    pub fn from_code(code: i8) -> Option<Operation> {
        Operation::ALL_OPERATIONS
            .into_iter()
            .find(|o| o.code() == code)
    }

    /// Kafka's name (`AclOperation.name()`).
    pub fn name(self) -> &'static str {
        match self {
            Operation::All => "ALL",
            Operation::Read => "READ",
            Operation::Write => "WRITE",
            Operation::Create => "CREATE",
            Operation::Delete => "DELETE",
            Operation::Alter => "ALTER",
            Operation::Describe => "DESCRIBE",
            Operation::ClusterAction => "CLUSTER_ACTION",
            Operation::DescribeConfigs => "DESCRIBE_CONFIGS",
            Operation::AlterConfigs => "ALTER_CONFIGS",
            Operation::IdempotentWrite => "IDEMPOTENT_WRITE",
            Operation::CreateTokens => "CREATE_TOKENS",
            Operation::DescribeTokens => "DESCRIBE_TOKENS",
        }
    }

    /// Whether an ALLOW binding for `self` allows `requested` (rule 3): the same operation,
    /// ALL, or one `self` implies.
    pub fn allow_covers(self, requested: Operation) -> bool {
        self == Operation::All
            || self == requested
            || match requested {
                Operation::Describe => matches!(
                    self,
                    Operation::Read | Operation::Write | Operation::Delete | Operation::Alter
                ),
                Operation::DescribeConfigs => self == Operation::AlterConfigs,
                _ => false,
            }
    }

    /// Whether a DENY binding for `self` denies `requested` (rule 3): the same operation or
    /// ALL, nothing implied.
    pub fn deny_covers(self, requested: Operation) -> bool {
        self == Operation::All || self == requested
    }

    /// The bit of this operation in Kafka's `*_authorized_operations` fields (`1 << code`).
    pub fn bit(self) -> i32 {
        1 << self.code()
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// ALLOW or DENY, with Kafka's codes (`AclPermissionType`). 0 (UNKNOWN) and 1 (ANY) are not
/// permissions; a filter's ANY is `None` in [`AclFilter::permission`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Permission {
    /// Deny (2): wins over every ALLOW.
    Deny,
    /// Allow (3).
    Allow,
}

impl Permission {
    /// Kafka's code.
    pub fn code(self) -> i8 {
        match self {
            Permission::Deny => 2,
            Permission::Allow => 3,
        }
    }

    /// The permission with code `code`, if there is one.
    pub fn from_code(code: i8) -> Option<Permission> {
        match code {
            2 => Some(Permission::Deny),
            3 => Some(Permission::Allow),
            _ => None,
        }
    }

    /// Kafka's name.
    pub fn name(self) -> &'static str {
        match self {
            Permission::Deny => "DENY",
            Permission::Allow => "ALLOW",
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Who, from where, may or may not do what: the part of a binding after its resource pattern
/// (Kafka's `AccessControlEntry`). Ordered DENY first within a principal and host.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AclEntry {
    /// `Type:name`, e.g. `User:alice`, or [`WILDCARD_PRINCIPAL`].
    pub principal: String,
    /// The client's address, or [`WILDCARD`].
    pub host: String,
    /// The operation (ALL: every one).
    pub operation: Operation,
    /// ALLOW or DENY.
    pub permission: Permission,
}

impl AclEntry {
    /// Whether this entry matches a request by `principal` from `host` for `requested`
    /// (rule 3), and with which permission.
    fn decide(&self, principal: &str, host: &str, requested: Operation) -> Option<Permission> {
        if self.principal != principal && self.principal != WILDCARD_PRINCIPAL {
            return None;
        }
        if !host_matches(&self.host, host) {
            return None;
        }
        let covers = match self.permission {
            Permission::Allow => self.operation.allow_covers(requested),
            Permission::Deny => self.operation.deny_covers(requested),
        };
        covers.then_some(self.permission)
    }
}

/// Whether a binding's `pattern` host matches the client's `host`: `*`, the same text, or the
/// same IP address spelt differently.
fn host_matches(pattern: &str, host: &str) -> bool {
    if pattern == WILDCARD || pattern == host {
        return true;
    }
    match (pattern.parse::<IpAddr>(), host.parse::<IpAddr>()) {
        (Ok(a), Ok(b)) => a.to_canonical() == b.to_canonical(),
        _ => false,
    }
}

/// One ACL (Kafka's `AclBinding`): a resource pattern and an entry. Ordered by resource type,
/// pattern type, name, then entry: the order DescribeAcls answers in and snapshots list them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AclBinding {
    /// The resource type.
    pub resource_type: ResourceType,
    /// LITERAL or PREFIXED.
    pub pattern_type: PatternType,
    /// The name (or prefix); LITERAL `*` is every name of the type.
    pub resource_name: String,
    /// Who, from where, what, and whether.
    pub entry: AclEntry,
}

impl AclBinding {
    /// Checks a binding to be created, with Kafka's rules and messages (`AclApis.
    /// handleCreateAcls`, `AclControlManager.validateNewAcl`, `SecurityUtils.
    /// parseKafkaPrincipal`): a name that is not empty, `kafka-cluster` for the CLUSTER, a
    /// principal of the form `Type:name`, a host that is not empty. The error is the message of
    /// an INVALID_REQUEST.
    pub fn validate(&self) -> Result<(), String> {
        if self.resource_type == ResourceType::Cluster && self.resource_name != CLUSTER_NAME {
            return Err(format!(
                "The only valid name for the CLUSTER resource is {CLUSTER_NAME}"
            ));
        }
        if self.resource_name.is_empty() {
            return Err("Invalid empty resource name".into());
        }
        match self.entry.principal.split_once(':') {
            Some((kind, _)) if !kind.is_empty() => {}
            _ => {
                return Err(format!(
                    "Could not parse principal from `{}` (no colon is present separating the \
                     principal type from the principal name)",
                    self.entry.principal
                ))
            }
        }
        if self.entry.host.is_empty() {
            return Err("Invalid empty host".into());
        }
        Ok(())
    }
}

impl fmt::Display for AclBinding {
    /// Kafka's `AclBinding.toString`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "(pattern=ResourcePattern(resourceType={}, name={}, patternType={}), \
             entry=(principal={}, host={}, operation={}, permissionType={}))",
            self.resource_type,
            self.resource_name,
            self.pattern_type,
            self.entry.principal,
            self.entry.host,
            self.entry.operation,
            self.entry.permission
        )
    }
}

/// The pattern type part of a filter (Kafka's `PatternType` in a `ResourcePatternFilter`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatternFilter {
    /// ANY (1): bindings of either pattern type; a name must be the binding's name.
    Any,
    /// MATCH (2): the bindings that would apply to a resource of that name: LITERAL with the
    /// name, LITERAL `*`, PREFIXED with a prefix of it.
    Match,
    /// LITERAL (3) or PREFIXED (4): bindings of that type; a name must be the binding's name.
    Exactly(PatternType),
}

impl PatternFilter {
    /// The filter with Kafka's code `code` (1 to 4), if there is one.
    pub fn from_code(code: i8) -> Option<PatternFilter> {
        match code {
            1 => Some(PatternFilter::Any),
            2 => Some(PatternFilter::Match),
            code => PatternType::from_code(code).map(PatternFilter::Exactly),
        }
    }
}

/// A filter over bindings (Kafka's `AclBindingFilter`), as DescribeAcls and DeleteAcls carry
/// it. `None` is ANY (or a null name, principal or host: any).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AclFilter {
    /// The resource type; `None`: any.
    pub resource_type: Option<ResourceType>,
    /// The resource name; `None`: any.
    pub resource_name: Option<String>,
    /// How the name is compared.
    pub pattern: PatternFilter,
    /// The principal; `None`: any.
    pub principal: Option<String>,
    /// The host; `None`: any.
    pub host: Option<String>,
    /// The operation; `None`: any.
    pub operation: Option<Operation>,
    /// The permission; `None`: any.
    pub permission: Option<Permission>,
}

impl AclFilter {
    /// The filter that matches every binding.
    pub fn any() -> AclFilter {
        AclFilter {
            resource_type: None,
            resource_name: None,
            pattern: PatternFilter::Any,
            principal: None,
            host: None,
            operation: None,
            permission: None,
        }
    }

    /// The filter that matches exactly `binding`.
    pub fn exactly(binding: &AclBinding) -> AclFilter {
        AclFilter {
            resource_type: Some(binding.resource_type),
            resource_name: Some(binding.resource_name.clone()),
            pattern: PatternFilter::Exactly(binding.pattern_type),
            principal: Some(binding.entry.principal.clone()),
            host: Some(binding.entry.host.clone()),
            operation: Some(binding.entry.operation),
            permission: Some(binding.entry.permission),
        }
    }

    /// Whether `binding` passes the filter (`AclBindingFilter.matches`: the pattern filter's
    /// `ResourcePatternFilter.matches`, then each entry field equal where given).
    pub fn matches(&self, binding: &AclBinding) -> bool {
        if self
            .resource_type
            .is_some_and(|t| t != binding.resource_type)
        {
            return false;
        }
        let name_matches = match (&self.pattern, &self.resource_name) {
            (PatternFilter::Exactly(p), _) if *p != binding.pattern_type => false,
            (_, None) => true,
            (PatternFilter::Any | PatternFilter::Exactly(_), Some(name)) => {
                *name == binding.resource_name
            }
            (PatternFilter::Match, Some(name)) => match binding.pattern_type {
                PatternType::Literal => {
                    *name == binding.resource_name || binding.resource_name == WILDCARD
                }
                PatternType::Prefixed => name.starts_with(&binding.resource_name),
            },
        };
        let e = &binding.entry;
        name_matches
            && self.principal.as_ref().is_none_or(|p| *p == e.principal)
            && self.host.as_ref().is_none_or(|h| *h == e.host)
            && self.operation.is_none_or(|o| o == e.operation)
            && self.permission.is_none_or(|p| p == e.permission)
    }
}

/// The authoriser's settings (`super.users`, `allow.everyone.if.no.acl.found`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthorizerConfig {
    /// Principals allowed everything, `Type:name` each.
    pub super_users: BTreeSet<String>,
    /// Whether a resource without any ACL is open to everyone (Kafka's default: no).
    pub allow_if_no_acl: bool,
}

/// Why a decision came out as it did (Kafka's `MatchingRule`, for the audit log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rule {
    /// The principal is a super user.
    SuperUser,
    /// This binding matched: a DENY when denied, an ALLOW when allowed.
    Acl(AclBinding),
    /// The resource has no ACLs; `allow.everyone.if.no.acl.found` decided.
    NoAcls,
    /// The resource has ACLs, but none matched the request.
    NoMatchingAcl,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::SuperUser => f.write_str("super user"),
            Rule::Acl(b) => write!(f, "{b}"),
            Rule::NoAcls => f.write_str("no ACLs on the resource"),
            Rule::NoMatchingAcl => f.write_str("no ACL of the resource matches"),
        }
    }
}

/// The authoriser's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request is allowed.
    pub allowed: bool,
    /// Why.
    pub rule: Rule,
}

/// The entries of the bindings of one resource type, by pattern type and name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct TypeAcls {
    literal: BTreeMap<String, BTreeSet<AclEntry>>,
    prefixed: BTreeMap<String, BTreeSet<AclEntry>>,
}

impl TypeAcls {
    fn by_pattern(&mut self, pattern: PatternType) -> &mut BTreeMap<String, BTreeSet<AclEntry>> {
        match pattern {
            PatternType::Literal => &mut self.literal,
            PatternType::Prefixed => &mut self.prefixed,
        }
    }

    /// The patterns of this type that cover `name` (rule 2), with their entries.
    fn covering<'a>(&'a self, name: &'a str) -> impl Iterator<Item = Covering<'a>> + 'a {
        let literal = self.literal.get_key_value(name);
        let wildcard = (name != WILDCARD)
            .then(|| self.literal.get_key_value(WILDCARD))
            .flatten();
        let prefixed = name
            .char_indices()
            .map(|(i, c)| &name[..i + c.len_utf8()])
            .filter_map(|prefix| self.prefixed.get_key_value(prefix));
        let literal = literal
            .into_iter()
            .chain(wildcard)
            .map(|(name, entries)| Covering {
                pattern_type: PatternType::Literal,
                name,
                entries,
            });
        literal.chain(prefixed.map(|(name, entries)| Covering {
            pattern_type: PatternType::Prefixed,
            name,
            entries,
        }))
    }
}

/// One pattern that covers a resource, and its entries.
struct Covering<'a> {
    pattern_type: PatternType,
    name: &'a String,
    entries: &'a BTreeSet<AclEntry>,
}

impl Covering<'_> {
    fn binding(&self, resource_type: ResourceType, entry: &AclEntry) -> AclBinding {
        AclBinding {
            resource_type,
            pattern_type: self.pattern_type,
            resource_name: self.name.clone(),
            entry: entry.clone(),
        }
    }
}

/// The ACLs of a cluster: a set of bindings (no binding twice), indexed for
/// [`authorize`](Acls::authorize). Changed only by [`insert`](Acls::insert) and
/// [`remove`](Acls::remove), which the metadata state applies from its records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Acls {
    by_type: BTreeMap<ResourceType, TypeAcls>,
    len: usize,
}

impl Acls {
    /// No ACLs.
    pub fn new() -> Acls {
        Acls::default()
    }

    /// How many bindings there are.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether `binding` is in the set.
    pub fn contains(&self, binding: &AclBinding) -> bool {
        self.by_type.get(&binding.resource_type).is_some_and(|t| {
            let map = match binding.pattern_type {
                PatternType::Literal => &t.literal,
                PatternType::Prefixed => &t.prefixed,
            };
            map.get(&binding.resource_name)
                .is_some_and(|entries| entries.contains(&binding.entry))
        })
    }

    /// Adds `binding`; false (and nothing changes) if it is already there.
    pub fn insert(&mut self, binding: AclBinding) -> bool {
        let added = self
            .by_type
            .entry(binding.resource_type)
            .or_default()
            .by_pattern(binding.pattern_type)
            .entry(binding.resource_name)
            .or_default()
            .insert(binding.entry);
        self.len += usize::from(added);
        added
    }

    /// Removes `binding`; false (and nothing changes) if it is not there.
    pub fn remove(&mut self, binding: &AclBinding) -> bool {
        let Some(t) = self.by_type.get_mut(&binding.resource_type) else {
            return false;
        };
        let map = t.by_pattern(binding.pattern_type);
        let Some(entries) = map.get_mut(&binding.resource_name) else {
            return false;
        };
        let removed = entries.remove(&binding.entry);
        if entries.is_empty() {
            map.remove(&binding.resource_name);
        }
        if t.literal.is_empty() && t.prefixed.is_empty() {
            self.by_type.remove(&binding.resource_type);
        }
        self.len -= usize::from(removed);
        removed
    }

    /// Every binding, in [`AclBinding`]'s order.
    pub fn iter(&self) -> impl Iterator<Item = AclBinding> + '_ {
        self.by_type.iter().flat_map(|(&resource_type, t)| {
            let literal = t.literal.iter().map(|e| (PatternType::Literal, e));
            let prefixed = t.prefixed.iter().map(|e| (PatternType::Prefixed, e));
            literal
                .chain(prefixed)
                .flat_map(move |(pattern_type, (name, entries))| {
                    entries.iter().map(move |entry| AclBinding {
                        resource_type,
                        pattern_type,
                        resource_name: name.clone(),
                        entry: entry.clone(),
                    })
                })
        })
    }

    /// The bindings `filter` matches, in [`AclBinding`]'s order.
    pub fn matching<'a>(&'a self, filter: &'a AclFilter) -> impl Iterator<Item = AclBinding> + 'a {
        self.iter().filter(move |b| filter.matches(b))
    }

    /// Whether `principal` (`Type:name`) from `host` (the client's address) may do
    /// `operation` on the resource `resource_type` / `name`, by the rules in the module
    /// documentation.
    pub fn authorize(
        &self,
        config: &AuthorizerConfig,
        principal: &str,
        host: &str,
        operation: Operation,
        resource_type: ResourceType,
        name: &str,
    ) -> Decision {
        if config.super_users.contains(principal) {
            return Decision {
                allowed: true,
                rule: Rule::SuperUser,
            };
        }
        let mut has_acls = false;
        let mut allow = None;
        for covering in self
            .by_type
            .get(&resource_type)
            .into_iter()
            .flat_map(|t| t.covering(name))
        {
            has_acls |= !covering.entries.is_empty();
            for entry in covering.entries {
                match entry.decide(principal, host, operation) {
                    Some(Permission::Deny) => {
                        return Decision {
                            allowed: false,
                            rule: Rule::Acl(covering.binding(resource_type, entry)),
                        };
                    }
                    Some(Permission::Allow) if allow.is_none() => {
                        allow = Some(covering.binding(resource_type, entry));
                    }
                    _ => {}
                }
            }
        }
        if let Some(binding) = allow {
            return Decision {
                allowed: true,
                rule: Rule::Acl(binding),
            };
        }
        if has_acls {
            Decision {
                allowed: false,
                rule: Rule::NoMatchingAcl,
            }
        } else {
            Decision {
                allowed: config.allow_if_no_acl,
                rule: Rule::NoAcls,
            }
        }
    }

    /// Whether `principal` from `host` may do `operation` on at least one resource of
    /// `resource_type` (Kafka's `Authorizer.authorizeByResourceType`, KIP-679: an idempotent
    /// producer needs IDEMPOTENT_WRITE on the cluster or WRITE on some topic). Allowed if
    /// a resource named `hardcode` would be (which covers super users, wildcard and default
    /// rules), or if the principal has a LITERAL `*` ALLOW, or an ALLOW (LITERAL or PREFIXED)
    /// for the exact operation or ALL that no DENY of the same kind dominates: a LITERAL DENY
    /// of the same name, or a PREFIXED DENY of a prefix of its name. A LITERAL `*` DENY denies.
    /// Implied operations do not count here, as in Kafka.
    pub fn authorize_by_resource_type(
        &self,
        config: &AuthorizerConfig,
        principal: &str,
        host: &str,
        operation: Operation,
        resource_type: ResourceType,
    ) -> bool {
        if self
            .authorize(
                config,
                principal,
                host,
                operation,
                resource_type,
                "hardcode",
            )
            .allowed
        {
            return true;
        }
        let Some(t) = self.by_type.get(&resource_type) else {
            return false;
        };
        let applies = |e: &AclEntry| {
            (e.principal == principal || e.principal == WILDCARD_PRINCIPAL)
                && host_matches(&e.host, host)
                && e.operation.deny_covers(operation)
        };
        let with = |map, permission| names_with(map, permission, &applies);
        let deny_literal = with(&t.literal, Permission::Deny);
        if deny_literal.contains(WILDCARD) {
            return false;
        }
        let deny_prefixed = with(&t.prefixed, Permission::Deny);
        let allow_literal = with(&t.literal, Permission::Allow);
        if allow_literal.contains(WILDCARD) {
            return true;
        }
        let dominated = |name: &str| {
            name.char_indices()
                .any(|(i, c)| deny_prefixed.contains(&name[..i + c.len_utf8()]))
        };
        allow_literal
            .iter()
            .any(|name| !deny_literal.contains(name) && !dominated(name))
            || with(&t.prefixed, Permission::Allow)
                .iter()
                .any(|name| !dominated(name))
    }
}

/// The names in `map` with an entry of `permission` that `applies`.
fn names_with<'a>(
    map: &'a BTreeMap<String, BTreeSet<AclEntry>>,
    permission: Permission,
    applies: &dyn Fn(&AclEntry) -> bool,
) -> BTreeSet<&'a str> {
    map.iter()
        .filter(|(_, entries)| {
            entries
                .iter()
                .any(|e| e.permission == permission && applies(e))
        })
        .map(|(name, _)| name.as_str())
        .collect()
}
