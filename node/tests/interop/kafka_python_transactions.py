"""kafka-python 3.x transactions against keel (issue 15): another client's transactional API,
with its own versions (FindCoordinator up to v5 with batched keys, AddPartitionsToTxn v3, EndTxn
v3, InitProducerId v4).

usage: kafka_python_transactions.py HOST:PORT

1. A transactional producer commits 9 records over 3 partitions, aborts 3, commits 9 more.
2. A read_committed consumer sees exactly the 18 committed records, in order per partition.
3. A second producer with the same transactional_id fences the first: the first one's commit
   fails (ProducerFenced or InvalidProducerEpoch); the second commits 3 records, which
   read_committed then sees, and nothing of the fenced transaction.
4. send_offsets_to_transaction (TxnOffsetCommit v3 with the member's generation): a group
   member reads the 21 records; a transaction that sends its positions and aborts leaves the
   group without offsets, one that commits leaves exactly those positions committed.
"""

import time
import uuid

from kafka import KafkaConsumer, KafkaProducer, OffsetAndMetadata, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import KafkaError

from interop_common import bootstrap_from_argv, check_eq, fail, log, stopwatch, topic_name

bootstrap = bootstrap_from_argv()
elapsed = stopwatch()
PARTITIONS = 3
topic = topic_name("kp-txn")
admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=20000)
admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])
admin.close()
txn_id = f"kp-txn-{uuid.uuid4().hex[:8]}"
log(f"topic {topic}, transactional_id {txn_id}")


def producer():
    return KafkaProducer(bootstrap_servers=bootstrap, transactional_id=txn_id, linger_ms=5)


def send(p, prefix, n):
    for i in range(n):
        p.send(topic, key=f"{prefix}-{i}".encode(), value=f"{prefix}-{i}".encode(), partition=i % PARTITIONS)
    p.flush(30)


def expected(prefixes):
    want = {p: [] for p in range(PARTITIONS)}
    for prefix, n in prefixes:
        for i in range(n):
            want[i % PARTITIONS].append(f"{prefix}-{i}")
    return want


def read_committed(want, timeout=30.0):
    c = KafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    c.assign([TopicPartition(topic, p) for p in range(PARTITIONS)])
    c.seek_to_beginning()
    got = {p: [] for p in range(PARTITIONS)}
    deadline = time.monotonic() + timeout
    extra_until = None
    while time.monotonic() < deadline:
        n = sum(len(v) for v in got.values())
        if n >= want and extra_until is None:
            extra_until = time.monotonic() + 1.0
        if extra_until is not None and time.monotonic() >= extra_until:
            break
        for tp, records in c.poll(timeout_ms=200).items():
            got[tp.partition].extend(r.value.decode() for r in records)
    c.close()
    return got


p1 = producer()
p1.init_transactions()
p1.begin_transaction()
send(p1, "c1", 9)
p1.commit_transaction()
p1.begin_transaction()
send(p1, "a", 3)
p1.abort_transaction()
p1.begin_transaction()
send(p1, "c2", 9)
p1.commit_transaction()
log(f"committed 18, aborted 3 {elapsed()}")
check_eq(read_committed(18), expected([("c1", 9), ("c2", 9)]), "read_committed records")

p1.begin_transaction()
send(p1, "zombie", 3)
p2 = producer()
p2.init_transactions()
log(f"second producer initialised {elapsed()}")
try:
    p1.commit_transaction()
    fail("the fenced producer committed")
except KafkaError as e:
    log(f"fenced producer's commit failed: {type(e).__name__}")
p2.begin_transaction()
send(p2, "p2", 3)
p2.commit_transaction()
check_eq(
    read_committed(21),
    expected([("c1", 9), ("c2", 9), ("p2", 3)]),
    "read_committed after the fence",
)
log(f"fencing checked {elapsed()}")

group = f"kp-eos-{uuid.uuid4().hex[:6]}"
member = KafkaConsumer(
    topic,
    bootstrap_servers=bootstrap,
    group_id=group,
    isolation_level="read_committed",
    enable_auto_commit=False,
    auto_offset_reset="earliest",
)
read = 0
deadline = time.monotonic() + 60
while read < 21 and time.monotonic() < deadline:
    read += sum(len(r) for r in member.poll(timeout_ms=200).values())
check_eq(read, 21, "records the group member read")
tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
positions = {tp: OffsetAndMetadata(member.position(tp), "", -1) for tp in tps}
check_eq(sum(o.offset for o in positions.values()) >= 21, True, "positions past the records")
for commit in (False, True):
    p2.begin_transaction()
    send(p2, "eos", 3)
    p2.send_offsets_to_transaction(positions, member.group_metadata())
    if commit:
        p2.commit_transaction()
    else:
        p2.abort_transaction()
    got = {tp: member.committed(tp) for tp in tps}
    want = {tp: (o.offset if commit else None) for tp, o in positions.items()}
    check_eq(got, want, f"committed offsets after {'commit' if commit else 'abort'}")
member.close()
log(f"send_offsets_to_transaction: aborted offsets discarded, committed ones visible {elapsed()}")
log(f"OK kafka_python_transactions {elapsed()}")
