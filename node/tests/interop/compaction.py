"""Log compaction (docs/compaction.md) seen by real clients: confluent-kafka creates a compacted
topic with small segments and aggressive cleaner settings and writes several versions per key
and tombstones; kafka-python and confluent-kafka then read, from the beginning, only each key's
latest value, and after delete.retention.ms no tombstone at all.

usage: compaction.py HOST:PORT   (the broker runs with log.cleaner.backoff.ms small)
"""

import time

from confluent_kafka import Consumer, Producer, TopicPartition as CTopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from kafka import KafkaConsumer, TopicPartition

from interop_common import bootstrap_from_argv, check_eq, fail, log, stopwatch, topic_name, wait_until

bootstrap = bootstrap_from_argv()
elapsed = stopwatch()
topic = topic_name("compacted")
KEYS, VERSIONS, DELETED = 20, 5, 5
RETENTION_MS = 3000
SEGMENT_MS = 200

admin = AdminClient({"bootstrap.servers": bootstrap})
futures = admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1, config={
    "cleanup.policy": "compact",
    "segment.bytes": "4096",
    "segment.ms": str(SEGMENT_MS),
    "min.cleanable.dirty.ratio": "0.01",
    "delete.retention.ms": str(RETENTION_MS),
    "min.compaction.lag.ms": "0",
})])
futures[topic].result(timeout=20)
log(f"created {topic} ({elapsed()})")

producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5, "batch.size": 1000})
for v in range(VERSIONS):
    for k in range(KEYS):
        producer.produce(topic, key=f"k{k}", value=f"v{v}-{'x' * 40}")
    producer.flush(20)
for k in range(DELETED):
    producer.produce(topic, key=f"k{k}", value=None)
producer.flush(20)
# Past segment.ms, one more record rolls the segment holding everything above: all of it is
# then in closed segments the cleaner may touch.
time.sleep(SEGMENT_MS * 2 / 1000)
producer.produce(topic, key="roll", value="r")
producer.flush(20)
log(f"wrote {KEYS} keys x {VERSIONS} versions and {DELETED} tombstones ({elapsed()})")

latest = {f"k{k}": f"v{VERSIONS - 1}-{'x' * 40}" for k in range(DELETED, KEYS)}
latest["roll"] = "r"


def kafka_python_read():
    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=3000)
    tp = TopicPartition(topic, 0)
    c.assign([tp])
    c.seek_to_beginning(tp)
    end = c.end_offsets([tp])[tp]
    records = []
    while c.position(tp) < end:
        batch = c.poll(timeout_ms=2000)
        if not batch:
            break
        for msgs in batch.values():
            records.extend((m.offset, m.key.decode(), None if m.value is None else m.value.decode()) for m in msgs)
    c.close()
    if records and records[-1][0] != end - 1:
        fail(f"kafka-python stopped at offset {records[-1][0]}, end {end}")
    return records


def confluent_read():
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "unused", "enable.auto.commit": False})
    low, high = c.get_watermark_offsets(CTopicPartition(topic, 0), timeout=10)
    c.assign([CTopicPartition(topic, 0, low)])
    records = []
    deadline = time.monotonic() + 20
    while (not records or records[-1][0] < high - 1) and time.monotonic() < deadline:
        m = c.poll(1.0)
        if m is None or m.error():
            continue
        records.append((m.offset(), m.key().decode(), None if m.value() is None else m.value().decode()))
    c.close()
    return records


def check_offsets(records, who):
    offsets = [r[0] for r in records]
    if offsets != sorted(set(offsets)):
        fail(f"{who}: offsets do not increase: {offsets}")


def cleaned(records, tombstones_allowed):
    """Whether `records` are exactly one per key with the latest value (tombstones for the
    deleted keys allowed, or not)."""
    seen = {}
    for _, key, value in records:
        if key in seen:
            return False
        seen[key] = value
    for k in range(DELETED):
        key = f"k{k}"
        if key in seen:
            if not tombstones_allowed or seen.pop(key) is not None:
                return False
    return seen == latest


# Compacted: one record per key, the latest (tombstones may still be there).
records = wait_until("kafka-python to read one latest record per key",
                     lambda: (lambda r: r if cleaned(r, True) else None)(kafka_python_read()),
                     timeout=60, interval=0.5)
check_offsets(records, "kafka-python")
log(f"kafka-python read {len(records)} records, one per key, latest values ({elapsed()})")
records = confluent_read()
check_offsets(records, "confluent-kafka")
if not cleaned(records, True):
    fail(f"confluent-kafka read {records}")
log(f"confluent-kafka read the same ({elapsed()})")

# After delete.retention.ms the tombstones go too.
records = wait_until("the tombstones to be removed after delete.retention.ms",
                     lambda: (lambda r: r if cleaned(r, False) else None)(confluent_read()),
                     timeout=RETENTION_MS / 1000 + 60, interval=0.5)
check_offsets(records, "confluent-kafka")
records = kafka_python_read()
if not cleaned(records, False):
    fail(f"kafka-python read {records} after the tombstones' retention")
check_eq(len(records), len(latest), "records after the tombstones' retention")
log(f"no tombstones after delete.retention.ms; both clients agree ({elapsed()})")
