"""The client matrix's confluent-kafka scenario (librdkafka 2.16): admin, produce, consume, a
consumer group and transactions against one `keel dev` cluster.

usage: matrix_confluent.py HOST:PORT[,HOST:PORT...]
"""

import time

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from interop_common import await_all, bootstrap_from_argv, check_eq, fail, topic_name
from matrix_common import PARTITIONS, REPLICATION, by_partition, check_read_back, checked, records, txn_plan

bootstrap = bootstrap_from_argv()
topic = topic_name("mx-confluent")
txn_topic = topic_name("mx-confluent-txn")
group = topic_name("mx-confluent-group")

# Admin: create, then describe through metadata.
admin = AdminClient({"bootstrap.servers": bootstrap})
await_all(admin.create_topics([NewTopic(t, PARTITIONS, REPLICATION) for t in (topic, txn_topic)]), "create topic")
md = admin.list_topics(topic, timeout=20).topics[topic]
check_eq(md.error, None, f"metadata of {topic}")
check_eq(sorted(md.partitions), list(range(PARTITIONS)), f"{topic} partitions")
for p in md.partitions.values():
    check_eq(len(p.replicas), REPLICATION, f"{topic}[{p.id}] replicas")
checked("admin", f"created {topic} and {txn_topic} ({PARTITIONS} partitions, RF {REPLICATION}), described {topic}")

# Produce (idempotent, acks=all).
written = records("cf")
producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
errors = []
for p, k, v in written:
    producer.produce(topic, key=k, value=v, partition=p, on_delivery=lambda e, m: e and errors.append(e))
check_eq(producer.flush(30), 0, "records still queued after flush")
check_eq(errors, [], "delivery errors")
checked("produce", f"{len(written)} records, idempotent, acks=all")


def read(partitions_topic, want_total, extra=None, timeout=30.0):
    c = Consumer({
        "bootstrap.servers": bootstrap, "group.id": "mx-unused", "enable.auto.commit": False,
        "auto.offset.reset": "error", **(extra or {}),
    })
    c.assign([TopicPartition(partitions_topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    got = {p: [] for p in range(PARTITIONS)}
    deadline = time.monotonic() + timeout
    n = 0
    while n < want_total and time.monotonic() < deadline:
        for m in c.consume(num_messages=1000, timeout=0.5):
            if m.error():
                fail(f"consume {partitions_topic}: {m.error()}")
            got[m.partition()].append((m.key().decode(), m.value().decode()))
            n += 1
    for m in c.consume(num_messages=1000, timeout=1.0):  # nothing beyond
        if not m.error():
            got[m.partition()].append((m.key().decode(), m.value().decode()))
    c.close()
    return got


check_read_back(read(topic, len(written)), written, f"records read back from {topic}")
checked("consume", f"read back {len(written)} records by assign(), equal to those written")

# A consumer group: subscribe, read everything, commit synchronously, check the committed offsets.
c = Consumer({
    "bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
    "auto.offset.reset": "earliest",
})
c.subscribe([topic])
got = {p: [] for p in range(PARTITIONS)}
deadline = time.monotonic() + 60
while sum(map(len, got.values())) < len(written):
    if time.monotonic() > deadline:
        fail(f"group {group} read {sum(map(len, got.values()))} of {len(written)} records")
    for m in c.consume(num_messages=1000, timeout=0.5):
        if m.error():
            if m.error().code() == KafkaError._PARTITION_EOF:
                continue
            fail(f"group consumer: {m.error()}")
        got[m.partition()].append((m.key().decode(), m.value().decode()))
check_read_back(got, written, f"records the group {group} read")
c.commit(asynchronous=False)
committed = c.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=20)
want = {p: len(v) for p, v in by_partition(written).items()}
check_eq({tp.partition: tp.offset for tp in committed}, want, f"group {group} committed offsets")
c.close()
checked("group", f"group {group} read {len(written)} records and committed {want}")

# Transactions: commit, abort, commit; read_committed sees only the committed ones.
batches, committed_records = txn_plan("cf")
tp = Producer({"bootstrap.servers": bootstrap, "transactional.id": topic_name("mx-confluent-txid")})
tp.init_transactions(30)
for commit, triples in batches:
    tp.begin_transaction()
    for p, k, v in triples:
        tp.produce(txn_topic, key=k, value=v, partition=p)
    check_eq(tp.flush(30), 0, "transactional records still queued")
    if commit:
        tp.commit_transaction(30)
    else:
        tp.abort_transaction(30)
check_read_back(read(txn_topic, len(committed_records), {"isolation.level": "read_committed"}),
                committed_records, f"read_committed records of {txn_topic}")
checked("transactions", f"committed {len(committed_records)} and aborted 6 records; read_committed sees exactly the committed")
