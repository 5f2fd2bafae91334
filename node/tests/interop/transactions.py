"""confluent-kafka (librdkafka 2.x) transactions against keel (issue 15).

usage: transactions.py HOST:PORT[,HOST:PORT...]

1. A transactional producer: init_transactions; a transaction of 12 records over 3 partitions
   committed; one of 6 records aborted; another of 12 committed.
2. A read_committed consumer (assign() from the beginning) sees exactly the 24 committed
   records, in send order per partition, and none of the aborted; a read_uncommitted one sees
   all 30 (the aborted ones too).
3. An open transaction (records produced and flushed, no commit) is invisible to read_committed:
   the consumer's position stops before it (the last stable offset).
4. A second producer with the same transactional.id fences the first: its init_transactions
   aborts the open transaction, and the first producer's commit fails with PRODUCER_FENCED
   (fatal). The second producer commits 3 more records; read_committed then sees 27 committed
   records and nothing of the fenced transaction.
"""

import time
import uuid

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from interop_common import (
    await_all,
    bootstrap_from_argv,
    check,
    check_eq,
    fail,
    log,
    stopwatch,
    topic_name,
)

bootstrap = bootstrap_from_argv()
elapsed = stopwatch()
admin = AdminClient({"bootstrap.servers": bootstrap})
topic = topic_name("txn")
PARTITIONS = 3
rf = min(3, len(bootstrap.split(",")))
await_all(
    admin.create_topics(
        [NewTopic(topic, num_partitions=PARTITIONS, replication_factor=rf)],
        operation_timeout=15,
        request_timeout=20,
    ),
    "create_topics",
)
txn_id = f"txn-{uuid.uuid4().hex[:8]}"
log(f"topic {topic} ({PARTITIONS} partitions, RF {rf}), transactional.id {txn_id}")


def producer():
    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "transactional.id": txn_id,
            "transaction.timeout.ms": 60000,
            "linger.ms": 5,
        }
    )


def send(p, prefix, n):
    for i in range(n):
        p.produce(topic, key=f"{prefix}-{i}".encode(), value=f"{prefix}-{i}".encode(), partition=i % PARTITIONS)
    p.flush(30)


def consume(isolation, want, timeout=30.0):
    """Records (partition, value) from the beginning, until `want` arrived or `timeout`; then
    one more second to catch extras."""
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"g-{uuid.uuid4().hex[:6]}",
            "isolation.level": isolation,
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
    got = []
    deadline = time.monotonic() + timeout
    extra_until = None
    while time.monotonic() < deadline:
        if len(got) >= want and extra_until is None:
            extra_until = time.monotonic() + 1.0
        if extra_until is not None and time.monotonic() >= extra_until:
            break
        m = c.poll(0.2)
        if m is None:
            continue
        if m.error():
            fail(f"consume ({isolation}): {m.error()}")
        got.append((m.partition(), m.value().decode()))
    c.close()
    return got


def expected(prefixes):
    want = {p: [] for p in range(PARTITIONS)}
    for prefix, n in prefixes:
        for i in range(n):
            want[i % PARTITIONS].append(f"{prefix}-{i}")
    return want


def by_partition(records):
    out = {p: [] for p in range(PARTITIONS)}
    for p, v in records:
        out[p].append(v)
    return out


# --- 1. commit, abort, commit -------------------------------------------------------------
p1 = producer()
p1.init_transactions(30)
log(f"init_transactions {elapsed()}")
p1.begin_transaction()
send(p1, "c1", 12)
p1.commit_transaction(30)
p1.begin_transaction()
send(p1, "a", 6)
p1.abort_transaction(30)
p1.begin_transaction()
send(p1, "c2", 12)
p1.commit_transaction(30)
log(f"committed 24, aborted 6 {elapsed()}")

# --- 2. read_committed and read_uncommitted ---------------------------------------------------
committed = consume("read_committed", 24)
check_eq(by_partition(committed), expected([("c1", 12), ("c2", 12)]), "read_committed records")
uncommitted = consume("read_uncommitted", 30)
check_eq(
    sorted(by_partition(uncommitted)[0]),
    sorted(expected([("c1", 12), ("a", 6), ("c2", 12)])[0]),
    "read_uncommitted records of partition 0",
)
check_eq(len(uncommitted), 30, "read_uncommitted record count")
log(f"read_committed saw the 24 committed records in order; read_uncommitted all 30 {elapsed()}")

# --- 3. an open transaction stays invisible --------------------------------------------------
p1.begin_transaction()
send(p1, "open", 6)
during = consume("read_committed", 24, timeout=5.0)
check_eq(by_partition(during), expected([("c1", 12), ("c2", 12)]), "read_committed during an open transaction")
log(f"the open transaction is invisible to read_committed {elapsed()}")

# --- 4. fencing ------------------------------------------------------------------------------
p2 = producer()
p2.init_transactions(60)
log(f"second producer initialised (fences the first) {elapsed()}")
try:
    send(p1, "zombie", 3)
    p1.commit_transaction(30)
    fail("the fenced producer committed")
except KafkaException as e:
    err = e.args[0]
    check(
        err.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH)
        or err.fatal(),
        f"the fenced producer's commit: expected a fencing error, got {err}",
    )
    log(f"fenced producer's commit failed: {err.name()} (fatal={err.fatal()})")
p2.begin_transaction()
send(p2, "p2", 3)
p2.commit_transaction(30)
final = consume("read_committed", 27)
check_eq(by_partition(final), expected([("c1", 12), ("c2", 12), ("p2", 3)]), "read_committed after the fence")
log(f"OK transactions {elapsed()}")
