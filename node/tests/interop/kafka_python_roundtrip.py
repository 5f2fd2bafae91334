"""kafka-python 3.x against keel: admin, default (idempotent) producer, assign() consumer.

usage: kafka_python_roundtrip.py HOST:PORT

1. KafkaAdminClient: create_topics (2 partitions, RF 1, a retention.ms override), list_topics and
   describe_topics show it, describe_configs (modified only) shows the override.
2. KafkaProducer with its defaults (enable_idempotence=True, acks=all): keyed records with
   headers, to explicit and to hashed partitions; every future resolves; offsets per partition
   0, 1, 2, ... in send order.
3. KafkaConsumer (no group): assign() + seek_to_beginning() reads back exactly what was sent
   (offset, key, value, headers); end_offsets and beginning_offsets agree.
4. delete_records up to an offset: beginning_offsets moves there and a consumer that seeks to
   the beginning starts there.
5. delete_topics removes the topic from list_topics.
"""

import time

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource

from interop_common import bootstrap_from_argv, check, check_eq, fail, log, topic_name, wait_until

bootstrap = bootstrap_from_argv()
topic = topic_name("kp-roundtrip")
RETENTION = "5400000"
admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=20000, client_id="keel-interop-admin")

# --- 1. admin --------------------------------------------------------------------------------
res = admin.create_topics(
    {topic: {"num_partitions": 2, "replication_factor": 1, "configs": {"retention.ms": RETENTION}}},
    timeout_ms=15000,
)
for t in res["topics"]:
    check_eq(t.get("error_code", 0), 0, f"create_topics {t.get('name')}: error code (message {t.get('error_message')!r})")
check(topic in admin.list_topics(), f"list_topics: {topic} missing")
desc = [t for t in admin.describe_topics([topic]) if t["name"] == topic]
check_eq(len(desc), 1, f"describe_topics {topic}")
check_eq(desc[0]["error_code"], 0, f"describe_topics {topic}: error code")
check_eq(sorted(p["partition_index"] for p in desc[0]["partitions"]), [0, 1], f"describe_topics {topic}: partitions")
for p in desc[0]["partitions"]:
    check_eq(p["error_code"], 0, f"describe_topics {topic}[{p['partition_index']}]: error code")
    check(p["leader_id"] >= 0, f"describe_topics {topic}[{p['partition_index']}]: no leader ({p['leader_id']})")
log(f"created {topic}: 2 partitions, listed and described")

configs = admin.describe_configs([ConfigResource("TOPIC", topic)])
log(f"describe_configs (modified): {configs}")
try:
    entry = configs["topic"][topic]["retention.ms"]
except (KeyError, TypeError):
    fail(f"describe_configs {topic} (modified): no retention.ms in {configs!r}")
value = entry["value"] if isinstance(entry, dict) else entry
check_eq(value, RETENTION, f"describe_configs {topic}: retention.ms")
if isinstance(entry, dict):
    check_eq(entry.get("config_source"), "DYNAMIC_TOPIC_CONFIG", f"describe_configs {topic}: source of retention.ms")

# --- 2. producer -----------------------------------------------------------------------------
producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=10, request_timeout_ms=20000, max_block_ms=20000)
check(producer.config["enable_idempotence"], "kafka-python's default producer is not idempotent any more")
N = 400
sent = []
futures = []
for i in range(N):
    key = f"k{i % 11}".encode()
    value = f"kafka-python value {i} ".encode() * (1 + i % 5)
    headers = [("i", str(i).encode()), ("h", b"\x00\xffbinary")]
    partition = 1 if i % 4 == 0 else None  # some explicit, the rest by key hash
    futures.append(producer.send(topic, key=key, value=value, headers=headers, partition=partition))
    sent.append((key, value, headers))
producer.flush(timeout=30)
meta = []
for i, f in enumerate(futures):
    try:
        meta.append(f.get(timeout=30))
    except Exception as e:  # noqa: BLE001
        fail(f"KafkaProducer send {i}: {type(e).__name__}: {e}")
producer.close(timeout=10)
by_partition = {0: [], 1: []}
for i, m in enumerate(meta):
    check_eq(m.topic, topic, f"record {i}: topic in metadata")
    by_partition[m.partition].append((m.offset, i))
for p, items in by_partition.items():
    check_eq([o for o, _ in items], list(range(len(items))), f"offsets of {topic}[{p}] in send order")
    check(items, f"no record went to {topic}[{p}]")
log(f"produced {N} records with kafka-python's idempotent producer: { {p: len(v) for p, v in by_partition.items()} }")

# --- 3. consumer -----------------------------------------------------------------------------
def read_all(expect_from):
    """expect_from: {partition: first offset}; returns {partition: [ConsumerRecord]}."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="none",
        request_timeout_ms=20000,
    )
    try:
        tps = [TopicPartition(topic, p) for p in by_partition]
        consumer.assign(tps)
        consumer.seek_to_beginning()
        ends = consumer.end_offsets(tps, timeout_ms=15000)
        begins = consumer.beginning_offsets(tps, timeout_ms=15000)
        for tp in tps:
            check_eq(ends[tp], len(by_partition[tp.partition]), f"end_offsets {tp}")
            check_eq(begins[tp], expect_from[tp.partition], f"beginning_offsets {tp}")
        got = {p: [] for p in by_partition}
        deadline = time.monotonic() + 30
        while any(len(got[p]) < ends[TopicPartition(topic, p)] - expect_from[p] for p in got):
            if time.monotonic() > deadline:
                fail(f"KafkaConsumer: timed out with { {p: len(v) for p, v in got.items()} } records, expected up to {ends}")
            for tp, records in consumer.poll(timeout_ms=500).items():
                got[tp.partition].extend(records)
        for tp, records in consumer.poll(timeout_ms=500).items():
            if records:
                fail(f"KafkaConsumer: records beyond the end offset in {tp}: offsets {[r.offset for r in records]}")
        return got
    finally:
        consumer.close()


def compare(got, first):
    for p, items in by_partition.items():
        want = items[first[p]:]
        check_eq(len(got[p]), len(want), f"records read from {topic}[{p}]")
        for (off, i), r in zip(want, got[p]):
            key, value, headers = sent[i]
            where = f"{topic}[{p}] offset {off} (record {i})"
            check_eq(r.offset, off, f"{where}: offset")
            check_eq(r.key, key, f"{where}: key")
            check_eq(r.value, value, f"{where}: value")
            check_eq(list(r.headers), headers, f"{where}: headers")


got = read_all({0: 0, 1: 0})
compare(got, {0: 0, 1: 0})
log("KafkaConsumer (assign + seek_to_beginning) read back every record: offsets, keys, values, headers match")

# --- 4. delete_records -----------------------------------------------------------------------
cut = len(by_partition[1]) // 3 + 1
res = admin.delete_records({TopicPartition(topic, 1): cut}, timeout_ms=15000)
log(f"delete_records {topic}[1] before {cut}: {res}")
got = read_all({0: 0, 1: cut})
compare(got, {0: 0, 1: cut})
log(f"after delete_records: {topic}[1] starts at {cut}, the rest reads back intact")

# --- 5. delete_topics ------------------------------------------------------------------------
admin.delete_topics([topic], timeout_ms=15000)
wait_until(f"{topic} to leave list_topics", lambda: topic not in admin.list_topics())
admin.close()
log(f"deleted {topic}")
log("OK kafka_python_roundtrip")
