"""Every compression codec through keel, written by one client and read by another.

usage: compression.py HOST:PORT

For each of gzip, snappy, lz4 and zstd:
  - confluent-kafka (librdkafka 2.x) produces compressed batches; kafka-python reads them back;
  - kafka-python produces compressed batches; confluent-kafka reads them back;
  - kcat (librdkafka 2.0.2) produces with -z; kafka-python reads them back.
Every record's offset, key, value and headers must come back exactly.

For each topic written, a line `COMPRESSED <topic> <codec>` is printed: the Rust test checks
with `keel dump-log` that the batches on disk really carry that codec (a client can silently
send uncompressed batches, and reading back intact would not show it).
"""

import time

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from interop_common import (
    bootstrap_from_argv,
    check,
    check_eq,
    confluent_consume_all,
    fail,
    kcat_path,
    log,
    run,
    topic_name,
)

bootstrap = bootstrap_from_argv()
kcat = kcat_path()
CODECS = ["gzip", "snappy", "lz4", "zstd"]
N = 300

topics = {}
for codec in CODECS:
    for writer in ("cf", "kp", "kcat"):
        topics[(writer, codec)] = topic_name(f"z-{writer}-{codec}")
admin = AdminClient({"bootstrap.servers": bootstrap})
for name, f in admin.create_topics(
    [NewTopic(t, num_partitions=1, replication_factor=1) for t in topics.values()], request_timeout=30
).items():
    try:
        f.result(timeout=30)
    except KafkaException as e:
        fail(f"create_topics {name}: {e}")


def records(codec, writer):
    """Compressible (repetitive) values, so no client skips compression as not worth it."""
    out = []
    for i in range(N):
        key = f"{writer}-key-{i % 9}".encode()
        value = (f"{codec} {writer} record {i:05d} " * (4 + i % 7)).encode()
        headers = [("codec", codec.encode()), ("n", str(i).encode())]
        out.append((key, value, headers))
    return out


def kafka_python_read(topic):
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False, auto_offset_reset="none")
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        got = []
        deadline = time.monotonic() + 30
        while len(got) < N:
            if time.monotonic() > deadline:
                fail(f"kafka-python reading {topic}: timed out with {len(got)} of {N} records")
            got.extend(consumer.poll(timeout_ms=500).get(tp, []))
        return [(r.offset, r.key, r.value, list(r.headers)) for r in got]
    finally:
        consumer.close()


def confluent_read(topic):
    msgs = confluent_consume_all(bootstrap, topic, [0], {0: N})[0]
    return [(m.offset(), m.key(), m.value(), m.headers() or []) for m in msgs]


def compare(topic, got, want, how):
    check_eq(len(got), len(want), f"{how}: number of records in {topic}")
    for i, ((off, key, value, headers), (wkey, wvalue, wheaders)) in enumerate(zip(got, want)):
        where = f"{how}: {topic} offset {off}"
        check_eq(off, i, f"{where}: offset")
        check_eq(key, wkey, f"{where}: key")
        check_eq(value, wvalue, f"{where}: value")
        check_eq(headers, wheaders, f"{where}: headers")


for codec in CODECS:
    started = time.monotonic()
    # confluent-kafka writes, kafka-python reads.
    topic = topics[("cf", codec)]
    want = records(codec, "cf")
    p = Producer({"bootstrap.servers": bootstrap, "compression.type": codec, "linger.ms": 50, "enable.idempotence": True})
    errors = []
    for key, value, headers in want:
        p.produce(topic, key=key, value=value, headers=headers, partition=0,
                  on_delivery=lambda err, msg: errors.append(err) if err else None)
        p.poll(0)
    check_eq(p.flush(30), 0, f"confluent-kafka {codec}: records left after flush")
    check(not errors, f"confluent-kafka {codec} produce errors: {errors[:5]}")
    del p
    compare(topic, kafka_python_read(topic), want, f"confluent-kafka {codec} -> kafka-python")
    log(f"COMPRESSED {topic} {codec}")

    # kafka-python writes, confluent-kafka reads.
    topic = topics[("kp", codec)]
    want = records(codec, "kp")
    kp = KafkaProducer(bootstrap_servers=bootstrap, compression_type=codec, linger_ms=50, request_timeout_ms=20000)
    futures = [kp.send(topic, key=k, value=v, headers=h, partition=0) for k, v, h in want]
    kp.flush(timeout=30)
    for i, f in enumerate(futures):
        try:
            f.get(timeout=30)
        except Exception as e:  # noqa: BLE001
            fail(f"kafka-python {codec} send {i}: {type(e).__name__}: {e}")
    kp.close(timeout=10)
    compare(topic, confluent_read(topic), want, f"kafka-python {codec} -> confluent-kafka")
    log(f"COMPRESSED {topic} {codec}")

    # kcat (librdkafka 2.0.2) writes, kafka-python reads. -H applies to every record.
    topic = topics[("kcat", codec)]
    want = [(k, v, [("codec", codec.encode()), ("via", b"kcat")]) for k, v, _ in records(codec, "kcat")]
    stdin = b"".join(k + b":" + v + b"\n" for k, v, _ in want)
    run([kcat, "-b", bootstrap, "-P", "-t", topic, "-p", "0", "-z", codec, "-K", ":",
         "-H", f"codec={codec}", "-H", "via=kcat", "-X", "linger.ms=50"], timeout=60, input_bytes=stdin)
    compare(topic, kafka_python_read(topic), want, f"kcat -z {codec} -> kafka-python")
    log(f"COMPRESSED {topic} {codec}")
    log(f"{codec}: confluent-kafka, kafka-python and kcat batches read back intact ({time.monotonic() - started:.1f}s)")

log("OK compression")
