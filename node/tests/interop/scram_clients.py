"""SCRAM credentials managed through the metadata log (KIP-554; docs/security.md).

usage: scram_clients.py PORT1 PORT2 PORT3
       scram_clients.py failover PORT_A PORT_B

Three brokers, each with a SASL_PLAINTEXT listener (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) on
its port; the configured user admin (password admin-secret) is a super user.

1. confluent-kafka's admin client, connected to broker 1 only, creates carol's SCRAM-SHA-512
   and SCRAM-SHA-256 credentials (alter_user_scram_credentials) and describes them.
2. carol logs in on broker 2 with SCRAM-SHA-512 and on broker 3 with PLAIN (each client
   bootstrapped on that broker alone); a wrong password is refused.
3. kafka-python's admin client, on broker 3, changes carol's SCRAM-SHA-512 password: the old
   one is refused and the new one accepted on broker 2.
4. carol's SCRAM-SHA-512 credential is deleted: SCRAM-SHA-512 logins fail, describe shows
   only SCRAM-SHA-256; admin's configured password still works. The last line names the
   controller (`CONTROLLER id`), which the harness then stops.

With `failover`, on the two brokers left after the controller stopped: carol's credentials are
still there (SCRAM-SHA-256 logs in, SCRAM-SHA-512 does not), and a new SCRAM-SHA-512
credential committed by the new controller logs in on both.
"""

import sys
import time

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AdminClient,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialDeletion,
    UserScramCredentialUpsertion,
)

from interop_common import check, check_eq, fail, log

failover = sys.argv[1] == "failover"
ports = [int(p) for p in sys.argv[2:4]] if failover else [int(p) for p in sys.argv[1:4]]


def conf(port, user, password, mechanism):
    return {
        "bootstrap.servers": f"127.0.0.1:{port}",
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": mechanism,
        "sasl.username": user,
        "sasl.password": password,
        "socket.timeout.ms": 10000,
    }


def logs_in(port, user, password, mechanism):
    """Whether `user` authenticates on the broker at `port` (a metadata request succeeds)."""
    admin = AdminClient(conf(port, user, password, mechanism))
    try:
        admin.list_topics(timeout=8)
        return True
    except KafkaException:
        return False


def wait_login(port, user, password, mechanism, want, what):
    """Metadata reaches every broker shortly after the controller commits: poll for it."""
    deadline = time.monotonic() + 20
    while True:
        got = logs_in(port, user, password, mechanism)
        if got == want:
            return
        if time.monotonic() > deadline:
            fail(f"{what}: expected login {want} on port {port}, got {got}")
        time.sleep(0.5)


admin1 = AdminClient(conf(ports[0], "admin", "admin-secret", "SCRAM-SHA-256"))

if failover:
    for port in ports:
        wait_login(port, "carol", "carol-1", "SCRAM-SHA-256", True, "carol's SHA-256 after failover")
        check(not logs_in(port, "carol", "carol-2", "SCRAM-SHA-512"), "the deleted SHA-512 credential")
    deadline = time.monotonic() + 30
    while True:
        result = admin1.alter_user_scram_credentials([UserScramCredentialUpsertion(
            "carol", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096), b"carol-3")])
        try:
            result["carol"].result(timeout=30)
            break
        except KafkaException as e:
            if time.monotonic() > deadline:
                fail(f"alter after failover: {e}")
            time.sleep(1)
    for port in ports:
        wait_login(port, "carol", "carol-3", "SCRAM-SHA-512", True, "carol's new SHA-512 after failover")
    log("after the controller stopped: credentials kept, a new one committed and used")
    log("OK")
    sys.exit(0)

# --- 1. create carol's credentials through broker 1 -----------------------------------------
futures = admin1.alter_user_scram_credentials([
    UserScramCredentialUpsertion(
        "carol", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192), b"carol-1"),
])
for user, f in futures.items():
    f.result(timeout=30)
futures = admin1.alter_user_scram_credentials([
    UserScramCredentialUpsertion(
        "carol", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 4096), b"carol-1"),
])
for user, f in futures.items():
    f.result(timeout=30)
described = admin1.describe_user_scram_credentials(["carol"])
infos = described["carol"].result(timeout=30).scram_credential_infos
check_eq(sorted((i.mechanism, i.iterations) for i in infos),
         [(ScramMechanism.SCRAM_SHA_256, 4096), (ScramMechanism.SCRAM_SHA_512, 8192)],
         "carol's credentials as described")
log("created carol's credentials on broker 1")

# --- 2. carol logs in on the other brokers ---------------------------------------------------
wait_login(ports[1], "carol", "carol-1", "SCRAM-SHA-512", True, "carol SCRAM-SHA-512 on broker 2")
wait_login(ports[2], "carol", "carol-1", "PLAIN", True, "carol PLAIN on broker 3")
check(not logs_in(ports[1], "carol", "wrong", "SCRAM-SHA-512"), "a wrong password is refused")
log("carol logged in on brokers 2 (SCRAM-SHA-512) and 3 (PLAIN)")

# --- 3. kafka-python changes the password through broker 3 ---------------------------------
from kafka import KafkaAdminClient  # noqa: E402
from kafka.admin import ScramMechanism as KpMechanism  # noqa: E402
from kafka.admin import UserScramCredentialUpsertion as KpUpsertion  # noqa: E402

kp = KafkaAdminClient(
    bootstrap_servers=f"127.0.0.1:{ports[2]}",
    security_protocol="SASL_PLAINTEXT",
    sasl_mechanism="SCRAM-SHA-512",
    sasl_plain_username="admin",
    sasl_plain_password="admin-secret",
)
errors = kp.alter_user_scram_credentials(
    [KpUpsertion("carol", KpMechanism.SCRAM_SHA_512, "carol-2", iterations=4096)])
check_eq(errors, {"carol": None}, "kafka-python's alter_user_scram_credentials result")
kp.close()
wait_login(ports[1], "carol", "carol-1", "SCRAM-SHA-512", False, "carol's old password on broker 2")
wait_login(ports[1], "carol", "carol-2", "SCRAM-SHA-512", True, "carol's new password on broker 2")
log("kafka-python changed carol's password on broker 3; broker 2 knows it")

# --- 4. delete the SCRAM-SHA-512 credential --------------------------------------------------
futures = admin1.alter_user_scram_credentials([
    UserScramCredentialDeletion("carol", ScramMechanism.SCRAM_SHA_512)])
for user, f in futures.items():
    f.result(timeout=30)
wait_login(ports[2], "carol", "carol-2", "SCRAM-SHA-512", False, "carol SCRAM-SHA-512 after deletion")
infos = admin1.describe_user_scram_credentials(["carol"])["carol"].result(timeout=30).scram_credential_infos
check_eq([i.mechanism for i in infos], [ScramMechanism.SCRAM_SHA_256], "carol's mechanisms left")
check(logs_in(ports[1], "admin", "admin-secret", "SCRAM-SHA-512"), "admin's configured password")
controller = admin1.list_topics(timeout=10).controller_id
log("OK")
log(f"CONTROLLER {controller}")
