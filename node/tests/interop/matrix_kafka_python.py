"""The client matrix's kafka-python 3.x scenario: admin, produce, consume, a consumer group and
transactions against one `keel dev` cluster.

usage: matrix_kafka_python.py HOST:PORT[,HOST:PORT...]
"""

import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from interop_common import bootstrap_from_argv, check_eq, fail, topic_name
from matrix_common import PARTITIONS, REPLICATION, by_partition, check_read_back, checked, records, txn_plan

bootstrap = bootstrap_from_argv().split(",")
topic = topic_name("mx-kpy")
txn_topic = topic_name("mx-kpy-txn")
group = topic_name("mx-kpy-group")

admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=20000)
admin.create_topics([NewTopic(t, num_partitions=PARTITIONS, replication_factor=REPLICATION) for t in (topic, txn_topic)])
described = admin.describe_topics([topic])
check_eq(len(described), 1, "described topics")
check_eq(described[0]["error_code"], 0, f"describe {topic} error")
# kafka-python 3 names the fields as Metadata v13 does (partition_index, replica_nodes).
partitions = {p["partition_index"]: p["replica_nodes"] for p in described[0]["partitions"]}
check_eq(sorted(partitions), list(range(PARTITIONS)), f"{topic} partitions")
for p, replicas in partitions.items():
    check_eq(len(replicas), REPLICATION, f"{topic}[{p}] replicas")
checked("admin", f"created {topic} and {txn_topic}, described {topic}")

written = records("kpy")
producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
futures = [producer.send(topic, key=k.encode(), value=v.encode(), partition=p) for p, k, v in written]
producer.flush(30)
for f in futures:
    f.get(timeout=30)
producer.close()
checked("produce", f"{len(written)} records, acks=all (idempotent by default)")


def drain(consumer, want_total, what, timeout=30.0):
    got = {p: [] for p in range(PARTITIONS)}
    deadline = time.monotonic() + timeout
    n = 0
    while n < want_total:
        if time.monotonic() > deadline:
            fail(f"{what}: read {n} of {want_total} records")
        for tp, msgs in consumer.poll(timeout_ms=500).items():
            for m in msgs:
                got[tp.partition].append((m.key.decode(), m.value.decode()))
                n += 1
    for tp, msgs in consumer.poll(timeout_ms=1000).items():  # nothing beyond
        got[tp.partition].extend((m.key.decode(), m.value.decode()) for m in msgs)
    return got


def read(t, want_total, **extra):
    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **extra)
    c.assign([TopicPartition(t, p) for p in range(PARTITIONS)])
    c.seek_to_beginning()
    got = drain(c, want_total, f"reading {t}")
    c.close()
    return got


check_read_back(read(topic, len(written)), written, f"records read back from {topic}")
checked("consume", f"read back {len(written)} records by assign(), equal to those written")

c = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                  auto_offset_reset="earliest")
check_read_back(drain(c, len(written), f"group {group}", timeout=60), written, f"records the group {group} read")
c.commit()
c.close()
want = {p: len(v) for p, v in by_partition(written).items()}
# kafka-python 3's admin API: one OffsetFetch per coordinator for every group it hosts (v8+).
offsets = admin.list_group_offsets({group: None})[group]
check_eq({tp.partition: om.offset for tp, om in offsets.items() if tp.topic == topic}, want,
         f"group {group} committed offsets (OffsetFetch from the admin client)")
checked("group", f"group {group} read {len(written)} records and committed {want}")
admin.close()

batches, committed_records = txn_plan("kpy")
tp = KafkaProducer(bootstrap_servers=bootstrap, transactional_id=topic_name("mx-kpy-txid"), linger_ms=5)
tp.init_transactions()
for commit, triples in batches:
    tp.begin_transaction()
    for p, k, v in triples:
        tp.send(txn_topic, key=k.encode(), value=v.encode(), partition=p)
    tp.flush(30)
    if commit:
        tp.commit_transaction()
    else:
        tp.abort_transaction()
tp.close()
check_read_back(read(txn_topic, len(committed_records), isolation_level="read_committed"),
                committed_records, f"read_committed records of {txn_topic}")
checked("transactions", f"committed {len(committed_records)} and aborted 6 records; read_committed sees exactly the committed")
