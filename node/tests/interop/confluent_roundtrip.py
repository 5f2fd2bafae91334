"""confluent-kafka (librdkafka 2.x) against keel: admin, idempotent produce, assign() consume.

usage: confluent_roundtrip.py HOST:PORT

1. AdminClient: describe_cluster; create_topics (3 partitions, RF 1, retention.ms override);
   creating it again fails with TOPIC_ALREADY_EXISTS; list_topics shows it with 3 partitions led
   by the one broker; describe_configs shows the override as a dynamic topic config.
   incremental_alter_configs changes it and describe_configs shows the new value.
2. Idempotent producer (enable.idempotence, acks=all) of keyed records with headers (some with
   null keys, null header values, empty values): every delivery report OK, offsets per partition
   0, 1, 2, ... in send order.
3. Consumer by assign() from the beginning: every record back with its offset, key, value,
   headers and create timestamp, per-partition order intact; then from an offset in the middle
   of a batch: the first record is that offset.
4. create_partitions grows another topic from 1 to 2 partitions.
5. delete_topics removes both topics from list_topics.
6. Kafka 4's topic configs: a topic created with compression.type=zstd (the broker recompresses a
   gzip producer's batches), a one-minute message.timestamp.after.max.ms, segment.jitter.ms and
   settings keel stores without acting on (preallocate, flush.messages); describe_configs reports
   each, a record an hour in the future is refused with INVALID_TIMESTAMP, the others read back;
   remote.storage.enable=true is refused with INVALID_CONFIG naming it.
"""

import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewPartitions,
    NewTopic,
    ResourceType,
)

from interop_common import (
    await_all,
    bootstrap_from_argv,
    check,
    check_eq,
    confluent_consume_all,
    fail,
    log,
    topic_name,
    wait_until,
)

bootstrap = bootstrap_from_argv()
admin = AdminClient({"bootstrap.servers": bootstrap})
topic = topic_name("cf-roundtrip")
grow_topic = topic_name("cf-grow")
RETENTION = "3600000"

# --- 1. admin ------------------------------------------------------------------------------
cluster = admin.describe_cluster(request_timeout=15).result(timeout=20)
check(len(cluster.nodes) == 1, f"describe_cluster: expected 1 node, got {cluster.nodes}")
node = cluster.nodes[0]
check_eq(f"{node.host}:{node.port}", bootstrap, "describe_cluster node address")
log(f"describe_cluster: id={cluster.cluster_id} nodes={[(n.id, n.host, n.port) for n in cluster.nodes]} controller={cluster.controller}")

futures = admin.create_topics(
    [
        NewTopic(topic, num_partitions=3, replication_factor=1, config={"retention.ms": RETENTION}),
        NewTopic(grow_topic, num_partitions=1, replication_factor=1),
    ],
    operation_timeout=15,
    request_timeout=20,
)
await_all(futures, "create_topics")
log(f"created {topic} (3 partitions, retention.ms={RETENTION}) and {grow_topic}")

dup = admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=1)], request_timeout=20)
try:
    dup[topic].result(timeout=30)
    fail(f"create_topics of the existing topic {topic} succeeded; expected TOPIC_ALREADY_EXISTS")
except KafkaException as e:
    check_eq(e.args[0].code(), KafkaError.TOPIC_ALREADY_EXISTS, f"create_topics of existing {topic}: error {e}")

md = admin.list_topics(timeout=15)
check(topic in md.topics, f"list_topics: {topic} missing from {sorted(md.topics)}")
tmd = md.topics[topic]
check(tmd.error is None, f"list_topics: {topic} has error {tmd.error}")
check_eq(sorted(tmd.partitions), [0, 1, 2], f"list_topics: partitions of {topic}")
check_eq(len(md.brokers), 1, "list_topics: number of brokers")
broker_id = next(iter(md.brokers))
for p, pmd in tmd.partitions.items():
    check(pmd.error is None, f"list_topics: {topic}[{p}] error {pmd.error}")
    check_eq(pmd.leader, broker_id, f"list_topics: leader of {topic}[{p}]")
    check_eq(list(pmd.replicas), [broker_id], f"list_topics: replicas of {topic}[{p}]")
    check_eq(list(pmd.isrs), [broker_id], f"list_topics: isr of {topic}[{p}]")

res = admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)], request_timeout=20)
configs = list(res.values())[0].result(timeout=30)
check("retention.ms" in configs, f"describe_configs {topic}: no retention.ms in {sorted(configs)}")
entry = configs["retention.ms"]
check_eq(entry.value, RETENTION, f"describe_configs {topic}: retention.ms")
source = getattr(entry.source, "value", entry.source)
check_eq(source, ConfigSource.DYNAMIC_TOPIC_CONFIG.value, f"describe_configs {topic}: source of retention.ms")
check(not entry.is_default, f"describe_configs {topic}: retention.ms marked as default")
for name in ("cleanup.policy", "segment.bytes", "max.message.bytes"):
    check(name in configs, f"describe_configs {topic}: {name} missing (a default should be described too)")
log(f"describe_configs: retention.ms={entry.value} source={entry.source}; {len(configs)} entries")

NEW_RETENTION = "7200000"
res = admin.incremental_alter_configs(
    [
        ConfigResource(
            ResourceType.TOPIC,
            topic,
            incremental_configs=[
                ConfigEntry("retention.ms", NEW_RETENTION, incremental_operation=AlterConfigOpType.SET)
            ],
        )
    ],
    request_timeout=20,
)
await_all(res, "incremental_alter_configs")
configs = list(admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)], request_timeout=20).values())[0].result(timeout=30)
check_eq(configs["retention.ms"].value, NEW_RETENTION, f"describe_configs {topic} after incremental_alter_configs: retention.ms")
log(f"incremental_alter_configs: retention.ms={NEW_RETENTION} described back")

# --- 2. idempotent producer ----------------------------------------------------------------
N = 600
producer = Producer(
    {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 20,  # several records per batch, so a mid-batch fetch is tested below
        "message.timeout.ms": 30000,
    }
)
sent = []  # (key, value, headers, timestamp)
reports = {}  # index -> (partition, offset)
errors = []


def record(i):
    key = None if i % 50 == 7 else f"key-{i % 23}".encode()
    value = b"" if i % 97 == 3 else f"value-{i}-".encode() + bytes(range(i % 256))
    headers = [("idx", str(i).encode()), ("kind", b"interop")]
    if i % 10 == 0:
        headers.append(("nullable", None))
    if i % 13 == 0:
        headers.append(("idx", b"dup-key"))  # header keys may repeat; order must be kept
    return key, value, headers


def on_delivery(i):
    def cb(err, msg):
        if err is not None:
            errors.append((i, err))
        else:
            reports[i] = (msg.partition(), msg.offset())

    return cb


start_ms = int(time.time() * 1000)
for i in range(N):
    key, value, headers = record(i)
    kwargs = {"value": value, "headers": headers, "on_delivery": on_delivery(i)}
    if key is None:
        kwargs["partition"] = i % 3  # a null key with the default partitioner is random
    else:
        kwargs["key"] = key
    producer.produce(topic, **kwargs)
    sent.append((key, value, headers))
    producer.poll(0)
left = producer.flush(30)
end_ms = int(time.time() * 1000)
check(not errors, f"idempotent produce: {len(errors)} delivery errors, first: {errors[:5]}")
check_eq(left, 0, "records still undelivered after flush(30)")
check_eq(len(reports), N, "delivery reports")

by_partition = {p: [] for p in range(3)}
for i in range(N):
    p, off = reports[i]
    by_partition[p].append((off, i))
for p, items in by_partition.items():
    offsets = [off for off, _ in items]
    check_eq(offsets, list(range(len(items))), f"delivery-report offsets of {topic}[{p}] in send order")
check(all(by_partition[p] for p in range(3)), f"some partition got no records: { {p: len(v) for p, v in by_partition.items()} }")
log(f"produced {N} records, idempotent, acks=all: per partition { {p: len(v) for p, v in by_partition.items()} }")

# --- 3. consume by assign() ----------------------------------------------------------------
got = confluent_consume_all(bootstrap, topic, [0, 1, 2], {p: len(v) for p, v in by_partition.items()})
for p, items in by_partition.items():
    msgs = got[p]
    for (off, i), m in zip(items, msgs):
        key, value, headers = sent[i]
        where = f"{topic}[{p}] offset {off} (record {i})"
        check_eq(m.offset(), off, f"{where}: offset")
        check_eq(m.key(), key, f"{where}: key")
        check_eq(m.value(), value, f"{where}: value")
        check_eq(m.headers(), headers, f"{where}: headers")
        ts_type, ts = m.timestamp()
        check_eq(ts_type, 1, f"{where}: timestamp type (1 = create time)")
        check(start_ms - 1000 <= ts <= end_ms + 1000, f"{where}: create timestamp {ts} outside [{start_ms}, {end_ms}]")
log(f"consumed all {N} records back by assign(): keys, values, headers, offsets, timestamps match")

# From the middle of a batch: the first record returned must be exactly the requested offset.
c = Consumer({"bootstrap.servers": bootstrap, "group.id": "keel-interop-unused", "enable.auto.commit": False})
try:
    p = max(by_partition, key=lambda q: len(by_partition[q]))
    mid = len(by_partition[p]) // 2 + 1
    c.assign([TopicPartition(topic, p, mid)])
    deadline = time.monotonic() + 20
    first = None
    while first is None:
        if time.monotonic() > deadline:
            fail(f"consume from {topic}[{p}] offset {mid}: nothing within 20s")
        m = c.poll(0.5)
        if m is not None:
            if m.error():
                fail(f"consume from {topic}[{p}] offset {mid}: {m.error()}")
            first = m
    check_eq(first.offset(), mid, f"first offset consumed from {topic}[{p}] at offset {mid}")
    check_eq(first.value(), sent[by_partition[p][mid][1]][1], f"value at {topic}[{p}] offset {mid}")
    lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
    check_eq((lo, hi), (0, len(by_partition[p])), f"watermarks of {topic}[{p}]")
finally:
    c.close()
log(f"assign() at mid-batch offset {mid} of partition {p}: first record is offset {mid}; watermarks ok")

# --- 4. create_partitions --------------------------------------------------------------------
await_all(admin.create_partitions([NewPartitions(grow_topic, 2)], request_timeout=20), "create_partitions (to 2)")
wait_until(
    f"{grow_topic} to show 2 partitions",
    lambda: sorted(admin.list_topics(grow_topic, timeout=10).topics[grow_topic].partitions) == [0, 1],
)
log(f"create_partitions: {grow_topic} now has 2 partitions")

# --- 5. delete_topics ------------------------------------------------------------------------
del producer  # its metadata refreshes must not auto-create the topic again
await_all(admin.delete_topics([topic, grow_topic], operation_timeout=15, request_timeout=20), "delete_topics")
wait_until(
    f"{topic} and {grow_topic} to leave list_topics",
    lambda: not ({topic, grow_topic} & set(admin.list_topics(timeout=10).topics)),
)
log(f"deleted {topic} and {grow_topic}")

# --- 6. Kafka 4's topic configs ---------------------------------------------------------------
cfg_topic = topic_name("cf-configs")
CONFIGS = {
    "compression.type": "zstd",
    "compression.zstd.level": "5",
    "message.timestamp.after.max.ms": "60000",
    "segment.jitter.ms": "1000",
    "preallocate": "true",
    "flush.messages": "1",
}
await_all(
    admin.create_topics([NewTopic(cfg_topic, num_partitions=1, replication_factor=1, config=CONFIGS)], request_timeout=20),
    "create_topics with Kafka 4's topic configs",
)
described = list(admin.describe_configs([ConfigResource(ResourceType.TOPIC, cfg_topic)], request_timeout=20).values())[0].result(timeout=30)
for name, value in CONFIGS.items():
    check_eq(described[name].value, value, f"describe_configs {cfg_topic}: {name}")
check_eq(described["message.timestamp.before.max.ms"].value, "9223372036854775807", "default of message.timestamp.before.max.ms")
check_eq(len(described), 34, f"describe_configs {cfg_topic}: every Kafka 4.1 topic config ({sorted(described)})")
refused = admin.create_topics(
    [NewTopic(topic_name("cf-tiered"), num_partitions=1, replication_factor=1, config={"remote.storage.enable": "true"})],
    request_timeout=20,
)
for f in refused.values():
    try:
        f.result(timeout=30)
        fail("remote.storage.enable=true was accepted")
    except KafkaException as e:
        err = e.args[0]
        check_eq(err.code(), KafkaError.INVALID_CONFIG, f"remote.storage.enable=true: {err}")
        check("remote.storage.enable" in err.str(), f"the error names the key: {err.str()}")
gz = Producer({"bootstrap.servers": bootstrap, "compression.type": "gzip", "linger.ms": 5, "message.timeout.ms": 20000})
outcomes = {}


def outcome(i):
    def cb(err, msg):
        outcomes[i] = err

    return cb


now_ms = int(time.time() * 1000)
for i in range(20):
    gz.produce(cfg_topic, key=f"k{i}".encode(), value=f"v{i}".encode() * 50, partition=0, on_delivery=outcome(i))
gz.flush(30)
gz.produce(cfg_topic, key=b"late", value=b"x", partition=0, timestamp=now_ms + 3_600_000, on_delivery=outcome("future"))
gz.flush(30)
check(all(outcomes[i] is None for i in range(20)), f"gzip records to a zstd topic: {[outcomes.get(i) for i in range(20)]}")
future = outcomes.get("future")
check(future is not None and future.code() == KafkaError.INVALID_TIMESTAMP, f"a record an hour ahead: {future}")
got = confluent_consume_all(bootstrap, cfg_topic, [0], {0: 20})
check_eq([(m.key(), m.value()) for m in got[0]], [(f"k{i}".encode(), f"v{i}".encode() * 50) for i in range(20)], f"{cfg_topic} read back")
# The topic stays: the test reads its log with keel dump-log (every batch stored in zstd).
log(f"Kafka 4 topic configs: described back, recompressed records read back, future timestamp refused ({future})")
log("OK confluent_roundtrip")
