"""Real clients against keel's secured listeners (docs/security.md).

usage: security_clients.py PLAINTEXT_PORT SSL_PORT SASL_PLAINTEXT_PORT SASL_SSL_PORT DIR

DIR holds ca.pem, client.crt and client.key (made by the Rust test with rcgen); the broker
knows the SASL user alice with the password alice-secret.

1. confluent-kafka (librdkafka 2.16) over SSL with a client certificate, SASL_PLAINTEXT with
   PLAIN and with SCRAM-SHA-256, and SASL_SSL with SCRAM-SHA-512: each lists the broker at the
   address of the listener it connected to (Metadata answers per listener), produces records
   and reads them back.
2. A wrong password: the client reports the broker's SASL_AUTHENTICATION_FAILED message and
   never gets metadata.
3. kcat (librdkafka 2.0.2, SaslAuthenticate v0) over SASL_SSL with SCRAM-SHA-512 and over
   SASL_PLAINTEXT with PLAIN, and kafka-python 3.x over SASL_SSL with SCRAM-SHA-512,
   SASL_PLAINTEXT with PLAIN and SSL with a client certificate: produce, then consume exactly
   those records.
4. kcat with TLS to the plaintext port, and without TLS to the SSL port: both fail in bounded
   time (the broker closes the connections; the Rust test checks its log line).
5. With KEEL_TEST_REAUTH_MS set (the broker's connections.max.reauth.ms): confluent-kafka and
   kafka-python produce over SASL_SSL for three session lifetimes, re-authenticating.
"""

import os
import sys
import time

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient

from interop_common import check, check_eq, confluent_consume_all, fail, kcat_path, log, run, topic_name

plain_port, ssl_port, sasl_port, sasl_ssl_port = (int(a) for a in sys.argv[1:5])
pki = sys.argv[5]
ca = os.path.join(pki, "ca.pem")
host = "127.0.0.1"
user, password = "alice", "alice-secret"

ssl_conf = {"ssl.ca.location": ca, "ssl.endpoint.identification.algorithm": "https"}
configs = {
    "ssl-client-cert": (ssl_port, {
        "security.protocol": "SSL",
        "ssl.certificate.location": os.path.join(pki, "client.crt"),
        "ssl.key.location": os.path.join(pki, "client.key"),
        **ssl_conf,
    }),
    "sasl-plaintext-plain": (sasl_port, {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "PLAIN",
        "sasl.username": user,
        "sasl.password": password,
    }),
    "sasl-plaintext-scram-256": (sasl_port, {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": user,
        "sasl.password": password,
    }),
    "sasl-ssl-scram-512": (sasl_ssl_port, {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": user,
        "sasl.password": password,
        **ssl_conf,
    }),
}

# --- 1. confluent-kafka over each protocol ----------------------------------------------------
for name, (port, conf) in configs.items():
    bootstrap = f"{host}:{port}"
    base = {"bootstrap.servers": bootstrap, "socket.timeout.ms": 10000, **conf}
    admin = AdminClient(base)
    try:
        md = admin.list_topics(timeout=20)
    except KafkaException as e:
        fail(f"{name}: metadata over {bootstrap}: {e}")
    brokers = [f"{b.host}:{b.port}" for b in md.brokers.values()]
    check_eq(brokers, [bootstrap], f"{name}: the brokers Metadata names on this listener")
    topic = topic_name(f"sec-{name}")
    producer = Producer({**base, "acks": "all"})
    delivered = []
    errors = []

    def on_delivery(err, msg):
        (errors if err else delivered).append(err or msg.offset())

    values = [f"{name} record {i}".encode() for i in range(5)]
    for v in values:
        producer.produce(topic, value=v, partition=0, on_delivery=on_delivery)
    left = producer.flush(30)
    check(left == 0 and not errors, f"{name}: produce: {left} undelivered, errors {errors}")
    got = confluent_consume_all(bootstrap, topic, [0], {0: len(values)}, extra=conf)
    check_eq([m.value() for m in got[0]], values, f"{name}: records read back")
    log(f"{name}: {len(values)} records produced and read back over {bootstrap}")

# --- 2. a wrong password -----------------------------------------------------------------------
seen = []
admin = AdminClient({
    "bootstrap.servers": f"{host}:{sasl_port}",
    "security.protocol": "SASL_PLAINTEXT",
    "sasl.mechanism": "PLAIN",
    "sasl.username": user,
    "sasl.password": "not-the-password",
    "error_cb": lambda e: seen.append(str(e)),
})
try:
    admin.list_topics(timeout=5)
    fail("a wrong password got metadata")
except KafkaException as e:
    seen.append(str(e))
# error_cb runs from poll(): librdkafka reports the broker's SASL_AUTHENTICATION_FAILED (58)
# message as a local _AUTHENTICATION error.
for _ in range(10):
    if any("Invalid username or password" in s for s in seen):
        break
    admin.poll(0.5)
check(
    any("Invalid username or password" in s for s in seen),
    f"wrong password: expected the broker's SASL_AUTHENTICATION_FAILED message, got {seen}",
)
log("wrong password refused: " + next(s for s in seen if "Invalid username or password" in s))

# --- 3. kcat (librdkafka 2.0.2) ---------------------------------------------------------------
kcat = kcat_path()
kcat_configs = {
    "kcat-sasl-ssl-scram-512": (sasl_ssl_port, [
        "-X", "security.protocol=SASL_SSL", "-X", "sasl.mechanisms=SCRAM-SHA-512",
        "-X", f"sasl.username={user}", "-X", f"sasl.password={password}",
        "-X", f"ssl.ca.location={ca}",
    ]),
    "kcat-sasl-plaintext-plain": (sasl_port, [
        "-X", "security.protocol=SASL_PLAINTEXT", "-X", "sasl.mechanisms=PLAIN",
        "-X", f"sasl.username={user}", "-X", f"sasl.password={password}",
    ]),
}
for name, (port, conf) in kcat_configs.items():
    base = [kcat, "-b", f"{host}:{port}", "-X", "socket.timeout.ms=10000", "-m", "15"] + conf
    topic = topic_name(name)
    lines = [f"{name} line {i}" for i in range(4)]
    run(base + ["-P", "-t", topic, "-p", "0"], input_bytes=("\n".join(lines) + "\n").encode())
    out = run(base + ["-C", "-t", topic, "-p", "0", "-o", "beginning", "-e", "-f", "%s\n"]).stdout.decode()
    check_eq(out.splitlines(), lines, f"{name}: records read back")
    log(f"{name}: produced and consumed {len(lines)} records")

# --- 3b. kafka-python 3.x (handshake v1, SaslAuthenticate) ------------------------------------
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

kp_configs = {
    "kafka-python-sasl-ssl-scram-512": (sasl_ssl_port, dict(
        security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
        sasl_plain_username=user, sasl_plain_password=password, ssl_cafile=ca,
    )),
    "kafka-python-sasl-plaintext-plain": (sasl_port, dict(
        security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN",
        sasl_plain_username=user, sasl_plain_password=password,
    )),
    "kafka-python-ssl-client-cert": (ssl_port, dict(
        security_protocol="SSL", ssl_cafile=ca,
        ssl_certfile=os.path.join(pki, "client.crt"), ssl_keyfile=os.path.join(pki, "client.key"),
    )),
}
for name, (port, conf) in kp_configs.items():
    bootstrap = f"{host}:{port}"
    topic = topic_name(name)
    producer = KafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=20000, max_block_ms=20000, **conf)
    values = [f"{name} record {i}".encode() for i in range(3)]
    for v in values:
        producer.send(topic, value=v, partition=0).get(timeout=20)
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **conf)
    tp = TopicPartition(topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    got = []
    deadline = time.monotonic() + 30
    while len(got) < len(values) and time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=500).values():
            got.extend(r.value for r in records)
    consumer.close()
    check_eq(got, values, f"{name}: records read back")
    log(f"{name}: produced and consumed {len(values)} records over {bootstrap}")

# --- 4. the wrong protocol for the port -------------------------------------------------------
import subprocess

for what, port, conf in [
    ("TLS to the plaintext port", plain_port, ["-X", "security.protocol=SSL", "-X", f"ssl.ca.location={ca}"]),
    ("plaintext to the SSL port", ssl_port, []),
]:
    started = time.monotonic()
    p = subprocess.run(
        [kcat, "-b", f"{host}:{port}", "-L", "-m", "3", "-X", "socket.timeout.ms=3000"] + conf,
        capture_output=True, timeout=30,
    )
    check(p.returncode != 0, f"{what}: kcat -L succeeded: {p.stdout.decode(errors='replace')}")
    log(f"{what}: kcat failed after {time.monotonic() - started:.1f}s as expected")

# --- 5. re-authentication (KIP-368) -----------------------------------------------------------
# The broker's SASL sessions last REAUTH_MS (connections.max.reauth.ms): producers that keep
# one connection for several lifetimes must re-authenticate on it (the Rust test then checks
# the broker logged re-authentications and no expired session).
REAUTH_MS = int(os.environ.get("KEEL_TEST_REAUTH_MS", "0"))
if REAUTH_MS:
    seconds = 3 * REAUTH_MS / 1000
    bootstrap = f"{host}:{sasl_ssl_port}"
    topic = topic_name("sec-reauth")
    port, conf = configs["sasl-ssl-scram-512"]
    producer = Producer({"bootstrap.servers": bootstrap, **conf})
    errors = []
    sent = 0
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        producer.produce(topic, value=b"r%d" % sent, partition=0,
                         on_delivery=lambda err, msg: err and errors.append(err))
        sent += 1
        producer.poll(0.25)
    left = producer.flush(30)
    check(left == 0 and not errors, f"re-authentication (confluent-kafka): {left} undelivered, errors {errors}")
    kp = KafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=20000, max_block_ms=20000,
                       **kp_configs["kafka-python-sasl-ssl-scram-512"][1])
    started = time.monotonic()
    kp_sent = 0
    while time.monotonic() - started < seconds:
        kp.send(topic, value=b"k%d" % kp_sent, partition=0).get(timeout=20)
        kp_sent += 1
        time.sleep(0.25)
    kp.close()
    got = confluent_consume_all(bootstrap, topic, [0], {0: sent + kp_sent}, extra=conf)
    check_eq(len(got[0]), sent + kp_sent, "re-authentication: records read back")
    log(f"re-authentication: {sent} + {kp_sent} records over {seconds:.1f}s of {REAUTH_MS} ms sessions")

log("security clients: all checks passed")
