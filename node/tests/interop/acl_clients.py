"""ACLs with real clients (docs/security.md, "Authorisation").

usage: acl_clients.py SASL_PLAINTEXT_PORT

The broker runs the authoriser with super.users = User:admin and knows the SASL users admin,
alice and bob (password: NAME-secret) over SASL_PLAINTEXT with SCRAM-SHA-256.

1. confluent-kafka's admin client (as admin, a super user: no ACL needed) creates topics.
2. alice, with no ACL, is refused: her confluent-kafka producer's records fail with
   TOPIC_AUTHORIZATION_FAILED, her kafka-python group consumer with an authorisation error.
3. admin grants alice WRITE and READ on the topic and READ on her group (create_acls) and
   describe_acls lists them: alice's records are delivered and her kafka-python consumer reads
   them back in its group.
4. admin deletes alice's ACLs (delete_acls): refused again.
5. bob gets a PREFIXED ALLOW on `bob-` and a LITERAL DENY on one topic under it: he may
   produce to `bob-...` but not to the denied topic (DENY wins) nor outside the prefix.
"""

import sys
import time

from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
)
from kafka import KafkaConsumer

from interop_common import check, check_eq, fail, log, topic_name

port = int(sys.argv[1])
bootstrap = f"127.0.0.1:{port}"


def conf(user):
    return {
        "bootstrap.servers": bootstrap,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": user,
        "sasl.password": f"{user}-secret",
        "socket.timeout.ms": 10000,
    }


def kafka_python_conf(user):
    return {
        "bootstrap_servers": bootstrap,
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": user,
        "sasl_plain_password": f"{user}-secret",
    }


admin = AdminClient(conf("admin"))


def await_all(futures, what):
    for key, f in futures.items():
        try:
            f.result(timeout=30)
        except Exception as e:  # noqa: BLE001 - reported as the failure
            fail(f"{what} {key}: {e}")


def produce(user, topic, n=3):
    """Sends n records as `user` with a fresh producer; returns the delivery errors' codes
    (empty when all were delivered)."""
    errors = []

    def delivered(err, _msg):
        if err is not None:
            errors.append(err.code())

    p = Producer({**conf(user), "acks": "all", "message.timeout.ms": 15000})
    for i in range(n):
        p.produce(topic, f"{user}-{i}".encode(), callback=delivered)
    left = p.flush(30)
    check_eq(left, 0, f"{user}'s records to {topic} still queued")
    return errors


def consume(user, topic, group, n):
    """Reads n records of `topic` as `user` in `group` with kafka-python; returns the values,
    or the name of the exception that stopped it."""
    consumer = None
    try:
        consumer = KafkaConsumer(
            topic,
            group_id=group,
            auto_offset_reset="earliest",
            consumer_timeout_ms=1000,
            **kafka_python_conf(user),
        )
        values = []
        deadline = time.monotonic() + 30
        while len(values) < n and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                values.extend(r.value.decode() for r in records)
        return values
    except Exception as e:  # noqa: BLE001 - the caller checks which
        return type(e).__name__
    finally:
        if consumer is not None:
            consumer.close()


def acl(principal, topic_or_group, rtype, op, pattern=ResourcePatternType.LITERAL,
        permission=AclPermissionType.ALLOW):
    return AclBinding(rtype, topic_or_group, pattern, principal, "*", op, permission)


# --- 1. topics, created by the super user ---------------------------------------------------
orders = topic_name("orders")
group = topic_name("alice-group")
bob_ok, bob_denied, elsewhere = topic_name("bob-ok"), topic_name("bob-denied"), topic_name("other")
await_all(
    admin.create_topics([NewTopic(t, 1, 1) for t in [orders, bob_ok, bob_denied, elsewhere]]),
    "create topic",
)
check_eq(produce("admin", orders, 1), [], "the super user's records without any ACL")
log("super user: produced without ACLs")

# --- 2. alice without ACLs ------------------------------------------------------------------
errors = produce("alice", orders)
check(errors and all(e == KafkaError.TOPIC_AUTHORIZATION_FAILED for e in errors),
      f"alice without ACLs: expected TOPIC_AUTHORIZATION_FAILED, got {errors}")
refused = consume("alice", orders, group, 1)
check(isinstance(refused, str) and "AuthorizationFailed" in refused,
      f"alice's kafka-python consumer without ACLs: expected an authorisation error, got {refused}")
log(f"alice without ACLs: producer TOPIC_AUTHORIZATION_FAILED, consumer {refused}")

# --- 3. granted -----------------------------------------------------------------------------
alice_acls = [
    acl("User:alice", orders, ResourceType.TOPIC, AclOperation.WRITE),
    acl("User:alice", orders, ResourceType.TOPIC, AclOperation.READ),
    acl("User:alice", group, ResourceType.GROUP, AclOperation.READ),
]
await_all(admin.create_acls(alice_acls), "create_acls")
described = admin.describe_acls(
    AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, "User:alice", None,
                     AclOperation.ANY, AclPermissionType.ANY)).result(timeout=30)
check_eq(sorted(str(b) for b in described), sorted(str(b) for b in alice_acls),
         "describe_acls of User:alice")
check_eq(produce("alice", orders), [], "alice's records once granted")
values = consume("alice", orders, group, 4)
check_eq(sorted(values) if isinstance(values, list) else values,
         sorted(["admin-0", "alice-0", "alice-1", "alice-2"]),
         "alice's kafka-python group consumer once granted")
log("alice granted: produced and consumed in her group")

# --- 4. revoked -----------------------------------------------------------------------------
deleted = admin.delete_acls([AclBindingFilter(
    ResourceType.ANY, None, ResourcePatternType.ANY, "User:alice", None,
    AclOperation.ANY, AclPermissionType.ANY)])
for f in deleted.values():
    check_eq(len(f.result(timeout=30)), 3, "bindings delete_acls removed")
errors = produce("alice", orders)
check(errors and all(e == KafkaError.TOPIC_AUTHORIZATION_FAILED for e in errors),
      f"alice after delete_acls: expected TOPIC_AUTHORIZATION_FAILED, got {errors}")
refused = consume("alice", orders, topic_name("alice-group-2"), 1)
check(isinstance(refused, str) and "AuthorizationFailed" in refused,
      f"alice's consumer after delete_acls: expected an authorisation error, got {refused}")
log("alice revoked: refused again")

# --- 5. prefixed ACLs, DENY over ALLOW ------------------------------------------------------
await_all(admin.create_acls([
    acl("User:bob", "bob-", ResourceType.TOPIC, AclOperation.WRITE, ResourcePatternType.PREFIXED),
    acl("User:bob", bob_denied, ResourceType.TOPIC, AclOperation.WRITE,
        permission=AclPermissionType.DENY),
]), "create_acls for bob")
check_eq(produce("bob", bob_ok), [], "bob's records under his prefix")
errors = produce("bob", bob_denied)
check(errors and all(e == KafkaError.TOPIC_AUTHORIZATION_FAILED for e in errors),
      f"bob's records to the denied topic under his prefix: {errors}")
errors = produce("bob", elsewhere)
check(errors and all(e == KafkaError.TOPIC_AUTHORIZATION_FAILED for e in errors),
      f"bob's records outside his prefix: {errors}")
log("bob: prefixed ALLOW works, the DENY wins")
log("OK")
