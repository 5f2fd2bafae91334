"""Replication over a secured peer transport (docs/security.md, "Between brokers").

usage: peer_security.py HOST:PORT,HOST:PORT,HOST:PORT CA_PEM PASSWORD

The brokers serve SASL_SSL with SCRAM-SHA-512 and the user `admin`; between themselves they
speak TLS with certificates both ways and log in as `broker` (inter.broker.listener.name).
Driven by node/tests/peer_security.rs over stdin/stdout:
  1. creates `replicated` (1 partition, replication factor 3, min.insync.replicas=2) and waits
     until its ISR holds all three brokers: the followers fetched over the secured transport;
  2. produces 500 records with acks=all and enable.idempotence: each acknowledged by two
     replicas at least;
  3. prints `KILL-NOW leader=ID`; the harness SIGKILLs that broker and answers `KILLED`;
  4. produces 500 more with acks=all: a new leader was elected over the transport and its
     follower still replicates;
  5. reads the partition from the beginning through the two brokers left and checks that
     every record is there once, in order.
"""

import sys

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from interop_common import await_all, check_eq, fail, harness_line, log, topic_name, wait_until

if len(sys.argv) != 4:
    fail(f"usage: {sys.argv[0]} BOOTSTRAP CA_PEM PASSWORD")
bootstrap, ca, password = sys.argv[1:4]
secure = {
    "bootstrap.servers": bootstrap,
    "security.protocol": "SASL_SSL",
    "sasl.mechanism": "SCRAM-SHA-512",
    "sasl.username": "admin",
    "sasl.password": password,
    "ssl.ca.location": ca,
}
topic = topic_name("replicated")
admin = AdminClient(secure)
await_all(admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=3,
                                        config={"min.insync.replicas": "2"})]), "create topic")


def partition():
    md = admin.list_topics(topic=topic, timeout=5).topics.get(topic)
    if md is None or md.error is not None or 0 not in md.partitions:
        return None
    return md.partitions[0]


p = wait_until("ISR of all three brokers", lambda: (lambda p: p if p and sorted(p.isrs) == [1, 2, 3] else None)(partition()), timeout=30)
log(f"leader {p.leader}, ISR {p.isrs}")


def produce(first, count):
    producer = Producer({**secure, "acks": "all", "enable.idempotence": True,
                         "message.timeout.ms": 60000})
    acked = []

    def report(err, msg):
        if err is not None:
            fail(f"record not acknowledged: {err}")
        acked.append(int(msg.value()))

    for i in range(first, first + count):
        producer.produce(topic, value=str(i).encode(), partition=0, on_delivery=report)
        producer.poll(0)
    left = producer.flush(60)
    check_eq(left, 0, "records still queued after flush")
    check_eq(sorted(acked), list(range(first, first + count)), "acknowledged records")


produce(0, 500)
print(f"KILL-NOW leader={p.leader}", flush=True)
if harness_line(timeout=60) != "KILLED":
    fail("the harness did not answer KILLED")
produce(500, 500)
after = wait_until("a new leader", lambda: (lambda q: q if q and q.leader not in (-1, p.leader) else None)(partition()), timeout=30)
log(f"after the kill: leader {after.leader}, ISR {after.isrs}")

consumer = Consumer({**secure, "group.id": topic, "enable.auto.commit": False,
                     "auto.offset.reset": "earliest"})
consumer.assign([TopicPartition(topic, 0, 0)])
values = []
while len(values) < 1000:
    msg = consumer.poll(30)
    if msg is None:
        fail(f"read {len(values)} records of 1000, then nothing for 30 s")
    if msg.error():
        fail(f"consume: {msg.error()}")
    values.append(int(msg.value()))
consumer.close()
check_eq(values, list(range(1000)), "records read back")
print(f"FIGURES acked=1000 read={len(values)} killed={p.leader} new_leader={after.leader}", flush=True)
