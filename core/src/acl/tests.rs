use proptest::prelude::*;

use super::*;

fn binding(
    resource_type: ResourceType,
    pattern_type: PatternType,
    name: &str,
    principal: &str,
    host: &str,
    operation: Operation,
    permission: Permission,
) -> AclBinding {
    AclBinding {
        resource_type,
        pattern_type,
        resource_name: name.into(),
        entry: AclEntry {
            principal: principal.into(),
            host: host.into(),
            operation,
            permission,
        },
    }
}

fn topic_acl(
    name: &str,
    principal: &str,
    operation: Operation,
    permission: Permission,
) -> AclBinding {
    binding(
        ResourceType::Topic,
        PatternType::Literal,
        name,
        principal,
        WILDCARD,
        operation,
        permission,
    )
}

fn acls(bindings: impl IntoIterator<Item = AclBinding>) -> Acls {
    let mut acls = Acls::new();
    for b in bindings {
        acls.insert(b);
    }
    acls
}

fn allowed(acls: &Acls, principal: &str, operation: Operation, topic: &str) -> bool {
    acls.authorize(
        &AuthorizerConfig::default(),
        principal,
        "10.0.0.1",
        operation,
        ResourceType::Topic,
        topic,
    )
    .allowed
}

const ALICE: &str = "User:alice";
const BOB: &str = "User:bob";

/// Reference: StandardAuthorizerData.findAclRule (no ACL on the resource: the default rule,
/// DENIED unless allow.everyone.if.no.acl.found).
#[test]
fn a_resource_without_acls_follows_the_default() {
    let none = Acls::new();
    let deny = none.authorize(
        &AuthorizerConfig::default(),
        ALICE,
        "10.0.0.1",
        Operation::Read,
        ResourceType::Topic,
        "orders",
    );
    assert_eq!(
        deny,
        Decision {
            allowed: false,
            rule: Rule::NoAcls
        }
    );
    let open = AuthorizerConfig {
        allow_if_no_acl: true,
        ..AuthorizerConfig::default()
    };
    assert!(
        none.authorize(
            &open,
            ALICE,
            "10.0.0.1",
            Operation::Read,
            ResourceType::Topic,
            "orders"
        )
        .allowed
    );
    // An ACL on the resource for someone else: the resource has ACLs, so no default.
    let other = acls([topic_acl("orders", BOB, Operation::Read, Permission::Allow)]);
    let d = other.authorize(
        &open,
        ALICE,
        "10.0.0.1",
        Operation::Read,
        ResourceType::Topic,
        "orders",
    );
    assert_eq!(
        d,
        Decision {
            allowed: false,
            rule: Rule::NoMatchingAcl
        }
    );
    // ... but an ACL on another topic leaves this one without ACLs.
    assert!(
        other
            .authorize(
                &open,
                ALICE,
                "10.0.0.1",
                Operation::Read,
                ResourceType::Topic,
                "payments"
            )
            .allowed
    );
}

/// Reference: StandardAuthorizerData.authorize (super users are allowed before any ACL is
/// looked at, DENY included).
#[test]
fn super_users_bypass_every_acl() {
    let config = AuthorizerConfig {
        super_users: [ALICE.to_string()].into(),
        allow_if_no_acl: false,
    };
    let acls = acls([topic_acl("orders", ALICE, Operation::All, Permission::Deny)]);
    let d = acls.authorize(
        &config,
        ALICE,
        "10.0.0.1",
        Operation::Write,
        ResourceType::Topic,
        "orders",
    );
    assert_eq!(
        d,
        Decision {
            allowed: true,
            rule: Rule::SuperUser
        }
    );
    assert!(
        !acls
            .authorize(
                &config,
                BOB,
                "10.0.0.1",
                Operation::Write,
                ResourceType::Topic,
                "orders"
            )
            .allowed
    );
}

/// Reference: StandardAuthorizerData.findResult (IMPLIES_DESCRIBE, IMPLIES_DESCRIBE_CONFIGS:
/// ALLOW only).
#[test]
fn allow_implies_describe_but_deny_does_not() {
    for op in [
        Operation::Read,
        Operation::Write,
        Operation::Delete,
        Operation::Alter,
    ] {
        let a = acls([topic_acl("t", ALICE, op, Permission::Allow)]);
        assert!(
            allowed(&a, ALICE, Operation::Describe, "t"),
            "{op} implies DESCRIBE"
        );
        assert!(allowed(&a, ALICE, op, "t"));
    }
    for op in [
        Operation::Create,
        Operation::ClusterAction,
        Operation::AlterConfigs,
    ] {
        let a = acls([topic_acl("t", ALICE, op, Permission::Allow)]);
        assert!(
            !allowed(&a, ALICE, Operation::Describe, "t"),
            "{op} does not imply DESCRIBE"
        );
    }
    let configs = acls([topic_acl(
        "t",
        ALICE,
        Operation::AlterConfigs,
        Permission::Allow,
    )]);
    assert!(allowed(&configs, ALICE, Operation::DescribeConfigs, "t"));
    assert!(!allowed(&configs, ALICE, Operation::Alter, "t"));
    // READ does not imply WRITE.
    let read = acls([topic_acl("t", ALICE, Operation::Read, Permission::Allow)]);
    assert!(!allowed(&read, ALICE, Operation::Write, "t"));
    // A DENY of READ next to an ALLOW of ALL: READ denied, DESCRIBE still allowed.
    let mixed = acls([
        topic_acl("t", ALICE, Operation::All, Permission::Allow),
        topic_acl("t", ALICE, Operation::Read, Permission::Deny),
    ]);
    assert!(!allowed(&mixed, ALICE, Operation::Read, "t"));
    assert!(allowed(&mixed, ALICE, Operation::Describe, "t"));
    assert!(allowed(&mixed, ALICE, Operation::Write, "t"));
}

/// Reference: StandardAuthorizerData.checkSection (a DENY ends the search, whatever ALLOWs
/// matched).
#[test]
fn deny_beats_allow_from_any_pattern() {
    let deny_patterns = [
        topic_acl("orders", ALICE, Operation::Write, Permission::Deny),
        topic_acl("*", ALICE, Operation::Write, Permission::Deny),
        binding(
            ResourceType::Topic,
            PatternType::Prefixed,
            "ord",
            ALICE,
            WILDCARD,
            Operation::Write,
            Permission::Deny,
        ),
        topic_acl(
            "orders",
            WILDCARD_PRINCIPAL,
            Operation::All,
            Permission::Deny,
        ),
        binding(
            ResourceType::Topic,
            PatternType::Literal,
            "orders",
            ALICE,
            "10.0.0.1",
            Operation::Write,
            Permission::Deny,
        ),
    ];
    for deny in deny_patterns {
        let a = acls([
            topic_acl("orders", ALICE, Operation::Write, Permission::Allow),
            topic_acl("*", ALICE, Operation::All, Permission::Allow),
            deny.clone(),
        ]);
        let d = a.authorize(
            &AuthorizerConfig::default(),
            ALICE,
            "10.0.0.1",
            Operation::Write,
            ResourceType::Topic,
            "orders",
        );
        assert_eq!(
            d,
            Decision {
                allowed: false,
                rule: Rule::Acl(deny.clone())
            },
            "{deny}"
        );
    }
}

/// Reference: StandardAuthorizerData.checkSection (LITERAL exact and `*`, PREFIXED prefixes).
#[test]
fn patterns_cover_names_as_kafka_does() {
    let prefixed = |name: &str| {
        binding(
            ResourceType::Topic,
            PatternType::Prefixed,
            name,
            ALICE,
            WILDCARD,
            Operation::Read,
            Permission::Allow,
        )
    };
    let a = acls([prefixed("team-a.")]);
    assert!(allowed(&a, ALICE, Operation::Read, "team-a.orders"));
    assert!(allowed(&a, ALICE, Operation::Read, "team-a."));
    assert!(!allowed(&a, ALICE, Operation::Read, "team-a"));
    assert!(!allowed(&a, ALICE, Operation::Read, "team-b.orders"));
    // A LITERAL name is never a prefix.
    let literal = acls([topic_acl(
        "team-a.",
        ALICE,
        Operation::Read,
        Permission::Allow,
    )]);
    assert!(!allowed(&literal, ALICE, Operation::Read, "team-a.orders"));
    // LITERAL `*` is every name; PREFIXED `*` only names starting with `*`.
    let star = acls([topic_acl("*", ALICE, Operation::Read, Permission::Allow)]);
    assert!(allowed(&star, ALICE, Operation::Read, "anything"));
    let star_prefix = acls([prefixed("*")]);
    assert!(!allowed(&star_prefix, ALICE, Operation::Read, "anything"));
    assert!(allowed(&star_prefix, ALICE, Operation::Read, "*x"));
    // Multi-byte names: prefixes at character boundaries.
    let unicode = acls([prefixed("é")]);
    assert!(allowed(&unicode, ALICE, Operation::Read, "éa"));
    assert!(!allowed(&unicode, ALICE, Operation::Read, "e"));
    // Resource types do not mix.
    let group = acls([binding(
        ResourceType::Group,
        PatternType::Literal,
        "orders",
        ALICE,
        WILDCARD,
        Operation::Read,
        Permission::Allow,
    )]);
    assert!(!allowed(&group, ALICE, Operation::Read, "orders"));
}

/// Reference: StandardAuthorizerData.findResult (principal `User:*`, host `*` or equal).
#[test]
fn principals_and_hosts_match_exactly_or_by_wildcard() {
    let a = acls([
        topic_acl("t", WILDCARD_PRINCIPAL, Operation::Read, Permission::Allow),
        binding(
            ResourceType::Topic,
            PatternType::Literal,
            "u",
            ALICE,
            "10.0.0.2",
            Operation::Read,
            Permission::Allow,
        ),
        binding(
            ResourceType::Topic,
            PatternType::Literal,
            "v6",
            ALICE,
            "0:0:0:0:0:0:0:1",
            Operation::Read,
            Permission::Allow,
        ),
    ]);
    assert!(allowed(&a, ALICE, Operation::Read, "t"));
    assert!(allowed(&a, "User:CN=carol,O=Example", Operation::Read, "t"));
    // "User:*" matches every principal, whatever its type (Kafka adds it to the matching
    // principals of every request).
    assert!(allowed(&a, "Group:admins", Operation::Read, "t"));
    let config = AuthorizerConfig::default();
    let at = |host: &str, topic: &str| {
        a.authorize(
            &config,
            ALICE,
            host,
            Operation::Read,
            ResourceType::Topic,
            topic,
        )
        .allowed
    };
    assert!(at("10.0.0.2", "u"));
    assert!(!at("10.0.0.1", "u"));
    // Kafka writes IPv6 hosts uncompressed; the client's address may come compressed.
    assert!(at("::1", "v6"));
    assert!(at("0:0:0:0:0:0:0:1", "v6"));
    assert!(!at("::2", "v6"));
    // An IPv4 client seen through an IPv6 socket.
    assert!(at("::ffff:10.0.0.2", "u"));
}

/// Reference: Authorizer.authorizeByResourceType (KIP-679).
#[test]
fn authorize_by_resource_type_follows_kip_679() {
    let config = AuthorizerConfig::default();
    let any_topic = |a: &Acls, principal: &str| {
        a.authorize_by_resource_type(
            &config,
            principal,
            "10.0.0.1",
            Operation::Write,
            ResourceType::Topic,
        )
    };
    assert!(!any_topic(&Acls::new(), ALICE));
    let one = acls([topic_acl(
        "orders",
        ALICE,
        Operation::Write,
        Permission::Allow,
    )]);
    assert!(any_topic(&one, ALICE));
    assert!(!any_topic(&one, BOB));
    // Implied operations do not count: READ gives no WRITE anywhere.
    assert!(!any_topic(
        &acls([topic_acl(
            "orders",
            ALICE,
            Operation::Read,
            Permission::Allow
        )]),
        ALICE
    ));
    // The same literal denied: nothing left.
    let denied = acls([
        topic_acl("orders", ALICE, Operation::Write, Permission::Allow),
        topic_acl("orders", ALICE, Operation::Write, Permission::Deny),
    ]);
    assert!(!any_topic(&denied, ALICE));
    // A prefix DENY dominates the ALLOWs under it, not others.
    let prefix_deny = |name: &str| {
        binding(
            ResourceType::Topic,
            PatternType::Prefixed,
            name,
            ALICE,
            WILDCARD,
            Operation::Write,
            Permission::Deny,
        )
    };
    assert!(!any_topic(
        &acls([
            topic_acl("orders", ALICE, Operation::Write, Permission::Allow),
            prefix_deny("ord")
        ]),
        ALICE
    ));
    assert!(any_topic(
        &acls([
            topic_acl("orders", ALICE, Operation::Write, Permission::Allow),
            prefix_deny("pay")
        ]),
        ALICE
    ));
    // A wildcard DENY denies all; a wildcard ALLOW allows (through the "hardcode" check).
    assert!(!any_topic(
        &acls([
            topic_acl("orders", ALICE, Operation::Write, Permission::Allow),
            topic_acl("*", ALICE, Operation::Write, Permission::Deny)
        ]),
        ALICE
    ));
    assert!(any_topic(
        &acls([topic_acl("*", ALICE, Operation::All, Permission::Allow)]),
        ALICE
    ));
    // Super users: always.
    let su = AuthorizerConfig {
        super_users: [BOB.to_string()].into(),
        allow_if_no_acl: false,
    };
    assert!(Acls::new().authorize_by_resource_type(
        &su,
        BOB,
        "10.0.0.1",
        Operation::Write,
        ResourceType::Topic
    ));
}

/// Reference: ResourcePatternFilter.matches and AccessControlEntryFilter.matches.
#[test]
fn filters_match_as_kafka_does() {
    let literal = topic_acl("orders", ALICE, Operation::Read, Permission::Allow);
    let wildcard = topic_acl("*", BOB, Operation::Write, Permission::Deny);
    let prefixed = binding(
        ResourceType::Topic,
        PatternType::Prefixed,
        "ord",
        ALICE,
        "10.0.0.1",
        Operation::All,
        Permission::Allow,
    );
    let group = binding(
        ResourceType::Group,
        PatternType::Literal,
        "orders",
        ALICE,
        WILDCARD,
        Operation::Read,
        Permission::Allow,
    );
    let all = acls([
        literal.clone(),
        wildcard.clone(),
        prefixed.clone(),
        group.clone(),
    ]);
    let select = |f: AclFilter| all.matching(&f).collect::<Vec<_>>();
    assert_eq!(select(AclFilter::any()).len(), 4);
    let named = |pattern, name: &str| AclFilter {
        resource_type: Some(ResourceType::Topic),
        resource_name: Some(name.into()),
        pattern,
        ..AclFilter::any()
    };
    // MATCH: everything that applies to a topic named "orders".
    assert_eq!(
        select(named(PatternFilter::Match, "orders")),
        vec![wildcard.clone(), literal.clone(), prefixed.clone()]
    );
    // ANY with a name: that exact name, of either pattern type.
    assert_eq!(
        select(named(PatternFilter::Any, "orders")),
        vec![literal.clone()]
    );
    assert_eq!(
        select(named(PatternFilter::Any, "ord")),
        vec![prefixed.clone()]
    );
    // LITERAL `*` matches only the wildcard binding, not every literal.
    assert_eq!(
        select(named(PatternFilter::Exactly(PatternType::Literal), "*")),
        vec![wildcard.clone()]
    );
    assert_eq!(
        select(named(
            PatternFilter::Exactly(PatternType::Prefixed),
            "orders"
        )),
        vec![]
    );
    // Entry fields.
    assert_eq!(
        select(AclFilter {
            principal: Some(ALICE.into()),
            operation: Some(Operation::Read),
            ..AclFilter::any()
        }),
        vec![literal.clone(), group.clone()]
    );
    assert_eq!(
        select(AclFilter {
            host: Some("10.0.0.1".into()),
            ..AclFilter::any()
        }),
        vec![prefixed.clone()]
    );
    assert_eq!(
        select(AclFilter {
            permission: Some(Permission::Deny),
            ..AclFilter::any()
        }),
        vec![wildcard.clone()]
    );
    for b in [&literal, &wildcard, &prefixed, &group] {
        assert_eq!(select(AclFilter::exactly(b)), vec![b.clone()]);
    }
}

/// Reference: AclApis.handleCreateAcls, AclControlManager.validateNewAcl.
#[test]
fn validate_refuses_what_kafka_refuses() {
    let ok = topic_acl("orders", ALICE, Operation::Read, Permission::Allow);
    assert_eq!(ok.validate(), Ok(()));
    let mut cluster = ok.clone();
    cluster.resource_type = ResourceType::Cluster;
    assert!(cluster.validate().unwrap_err().contains("kafka-cluster"));
    cluster.resource_name = CLUSTER_NAME.into();
    assert_eq!(cluster.validate(), Ok(()));
    let mut empty = ok.clone();
    empty.resource_name.clear();
    assert_eq!(empty.validate(), Err("Invalid empty resource name".into()));
    for principal in ["alice", ":alice", ""] {
        let mut p = ok.clone();
        p.entry.principal = principal.into();
        assert!(p.validate().is_err(), "{principal:?}");
    }
    let mut host = ok.clone();
    host.entry.host.clear();
    assert!(host.validate().is_err());
}

#[test]
fn codes_round_trip() {
    for t in ResourceType::ALL {
        assert_eq!(ResourceType::from_code(t.code()), Some(t));
    }
    for code in [0, 1, 8, -1] {
        assert_eq!(ResourceType::from_code(code), None);
    }
    for o in Operation::ALL_OPERATIONS {
        assert_eq!(Operation::from_code(o.code()), Some(o));
    }
    assert_eq!(Operation::from_code(0), None);
    assert_eq!(Operation::from_code(1), None);
    assert_eq!(Operation::from_code(15), None);
    assert_eq!(PatternFilter::from_code(1), Some(PatternFilter::Any));
    assert_eq!(PatternFilter::from_code(2), Some(PatternFilter::Match));
    assert_eq!(PatternType::from_code(2), None);
    assert_eq!(Permission::from_code(1), None);
    assert_eq!(Operation::Read.bit(), 8);
}

#[test]
fn insert_and_remove_keep_a_set() {
    let b = topic_acl("orders", ALICE, Operation::Read, Permission::Allow);
    let mut a = Acls::new();
    assert!(a.insert(b.clone()));
    assert!(!a.insert(b.clone()));
    assert_eq!(a.len(), 1);
    assert!(a.contains(&b));
    assert!(a.remove(&b));
    assert!(!a.remove(&b));
    assert!(a.is_empty());
    assert_eq!(
        a,
        Acls::new(),
        "removing the last binding leaves no empty index entries"
    );
}

// ------------------------------------------------------------------------------------------
// Property tests: the indexed authoriser against a reference written straight from the rules
// in the module documentation, over a small universe of names, principals and hosts so that
// bindings and requests collide often.

const NAMES: [&str; 6] = ["a", "ab", "abc", "b", "*", "é"];
const PRINCIPALS: [&str; 3] = [ALICE, BOB, WILDCARD_PRINCIPAL];
const HOSTS: [&str; 3] = [WILDCARD, "10.0.0.1", "10.0.0.2"];
const TYPES: [ResourceType; 3] = [
    ResourceType::Topic,
    ResourceType::Group,
    ResourceType::Cluster,
];

fn any_binding() -> impl Strategy<Value = AclBinding> {
    (
        prop::sample::select(TYPES.to_vec()),
        prop::bool::ANY,
        prop::sample::select(NAMES.to_vec()),
        prop::sample::select(PRINCIPALS.to_vec()),
        prop::sample::select(HOSTS.to_vec()),
        prop::sample::select(Operation::ALL_OPERATIONS.to_vec()),
        prop::bool::ANY,
    )
        .prop_map(|(t, prefixed, name, principal, host, op, allow)| {
            binding(
                t,
                if prefixed {
                    PatternType::Prefixed
                } else {
                    PatternType::Literal
                },
                name,
                principal,
                host,
                op,
                if allow {
                    Permission::Allow
                } else {
                    Permission::Deny
                },
            )
        })
}

#[derive(Clone, Debug)]
struct Query {
    principal: &'static str,
    host: &'static str,
    operation: Operation,
    resource_type: ResourceType,
    name: &'static str,
}

fn any_query() -> impl Strategy<Value = Query> {
    (
        prop::sample::select(vec![ALICE, BOB]),
        prop::sample::select(vec!["10.0.0.1", "10.0.0.2"]),
        prop::sample::select(Operation::ALL_OPERATIONS[1..].to_vec()),
        prop::sample::select(TYPES.to_vec()),
        prop::sample::select(vec!["a", "ab", "abc", "abd", "b", "c", "é", "éa"]),
    )
        .prop_map(|(principal, host, operation, resource_type, name)| Query {
            principal,
            host,
            operation,
            resource_type,
            name,
        })
}

fn any_config() -> impl Strategy<Value = AuthorizerConfig> {
    (prop::bool::ANY, prop::bool::ANY).prop_map(|(bob_is_super, allow_if_no_acl)| {
        AuthorizerConfig {
            super_users: if bob_is_super {
                [BOB.to_string()].into()
            } else {
                BTreeSet::new()
            },
            allow_if_no_acl,
        }
    })
}

/// The rules, read literally: no index, every binding looked at.
fn reference(bindings: &[AclBinding], config: &AuthorizerConfig, q: &Query) -> bool {
    if config.super_users.contains(q.principal) {
        return true;
    }
    let of_resource: Vec<&AclBinding> = bindings
        .iter()
        .filter(|b| b.resource_type == q.resource_type)
        .filter(|b| match b.pattern_type {
            PatternType::Literal => b.resource_name == q.name || b.resource_name == "*",
            PatternType::Prefixed => q.name.starts_with(b.resource_name.as_str()),
        })
        .collect();
    if of_resource.is_empty() {
        return config.allow_if_no_acl;
    }
    let matching = |b: &&&AclBinding| {
        (b.entry.principal == q.principal || b.entry.principal == "User:*")
            && (b.entry.host == "*" || b.entry.host == q.host)
    };
    let denied = of_resource.iter().filter(matching).any(|b| {
        b.entry.permission == Permission::Deny
            && (b.entry.operation == Operation::All || b.entry.operation == q.operation)
    });
    if denied {
        return false;
    }
    of_resource.iter().filter(matching).any(|b| {
        b.entry.permission == Permission::Allow
            && match (b.entry.operation, q.operation) {
                (Operation::All, _) => true,
                (a, r) if a == r => true,
                (
                    Operation::Read | Operation::Write | Operation::Delete | Operation::Alter,
                    Operation::Describe,
                ) => true,
                (Operation::AlterConfigs, Operation::DescribeConfigs) => true,
                _ => false,
            }
    })
}

fn decide(a: &Acls, config: &AuthorizerConfig, q: &Query) -> Decision {
    a.authorize(
        config,
        q.principal,
        q.host,
        q.operation,
        q.resource_type,
        q.name,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The indexed authoriser decides as the rules say, and names a rule that fits.
    #[test]
    fn authorize_agrees_with_the_rules(
        bindings in prop::collection::vec(any_binding(), 0..24),
        config in any_config(),
        queries in prop::collection::vec(any_query(), 1..16),
    ) {
        let a = acls(bindings.iter().cloned());
        for q in &queries {
            let d = decide(&a, &config, q);
            prop_assert_eq!(d.allowed, reference(&bindings, &config, q), "{:?}", q);
            match &d.rule {
                Rule::SuperUser => prop_assert!(config.super_users.contains(q.principal)),
                Rule::Acl(b) => {
                    prop_assert!(a.contains(b));
                    prop_assert_eq!(b.entry.permission == Permission::Allow, d.allowed);
                }
                Rule::NoAcls => prop_assert_eq!(d.allowed, config.allow_if_no_acl),
                Rule::NoMatchingAcl => prop_assert!(!d.allowed),
            }
        }
    }

    /// DENY wins: a DENY for the request's principal (or `User:*`), host (or `*`) and
    /// operation (or ALL), of any pattern that covers the resource, denies it whatever else
    /// there is, unless the principal is a super user.
    #[test]
    fn a_matching_deny_always_wins(
        bindings in prop::collection::vec(any_binding(), 0..24),
        config in any_config(),
        q in any_query(),
        wildcard_principal in prop::bool::ANY,
        wildcard_host in prop::bool::ANY,
        all in prop::bool::ANY,
        pattern in 0..3u8,
    ) {
        let mut a = acls(bindings);
        let (pattern_type, name) = match pattern {
            0 => (PatternType::Literal, q.name.to_string()),
            1 => (PatternType::Literal, "*".to_string()),
            _ => (PatternType::Prefixed, q.name.chars().take(1).collect()),
        };
        a.insert(binding(
            q.resource_type,
            pattern_type,
            &name,
            if wildcard_principal { WILDCARD_PRINCIPAL } else { q.principal },
            if wildcard_host { WILDCARD } else { q.host },
            if all { Operation::All } else { q.operation },
            Permission::Deny,
        ));
        let d = decide(&a, &config, &q);
        prop_assert_eq!(d.allowed, config.super_users.contains(q.principal));
    }

    /// An ALLOW for exactly the request, with no DENY anywhere, allows it.
    #[test]
    fn a_matching_allow_without_deny_allows(
        bindings in prop::collection::vec(any_binding(), 0..24),
        config in any_config(),
        q in any_query(),
    ) {
        let mut a = acls(bindings.into_iter().filter(|b| b.entry.permission == Permission::Allow));
        a.insert(binding(q.resource_type, PatternType::Literal, q.name, q.principal, q.host, q.operation, Permission::Allow));
        prop_assert!(decide(&a, &config, &q).allowed);
    }

    /// KIP-679: when a resource of the type is allowed by an ALLOW of the exact operation (or
    /// ALL), authorize_by_resource_type allows too; when it refuses, no resource in the
    /// universe is allowed by such an ALLOW.
    #[test]
    fn authorize_by_resource_type_covers_each_allowed_resource(
        bindings in prop::collection::vec(any_binding(), 0..24),
        config in any_config(),
        q in any_query(),
    ) {
        let a = acls(bindings);
        let d = decide(&a, &config, &q);
        let by_exact_allow = matches!(&d.rule, Rule::Acl(b)
            if d.allowed && (b.entry.operation == q.operation || b.entry.operation == Operation::All));
        if by_exact_allow || d.rule == Rule::SuperUser {
            prop_assert!(a.authorize_by_resource_type(&config, q.principal, q.host, q.operation, q.resource_type));
        }
    }

    /// Inserting then removing bindings leaves the set as the bindings say; `iter` lists
    /// exactly the distinct bindings, in order; the exact filter of each finds only it.
    #[test]
    fn the_set_holds_exactly_its_bindings(
        add in prop::collection::vec(any_binding(), 0..24),
        remove in prop::collection::vec(any_binding(), 0..24),
    ) {
        let mut a = Acls::new();
        let mut model = BTreeSet::new();
        for b in add {
            prop_assert_eq!(a.insert(b.clone()), model.insert(b));
        }
        for b in &remove {
            prop_assert_eq!(a.remove(b), model.remove(b));
        }
        prop_assert_eq!(a.len(), model.len());
        prop_assert_eq!(a.iter().collect::<Vec<_>>(), model.iter().cloned().collect::<Vec<_>>());
        for b in &model {
            let f = AclFilter::exactly(b);
            prop_assert_eq!(a.matching(&f).collect::<Vec<_>>(), vec![b.clone()]);
        }
        prop_assert_eq!(a.matching(&AclFilter::any()).count(), model.len());
    }
}
