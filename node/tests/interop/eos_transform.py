"""confluent-kafka (librdkafka 2.x) exactly-once consume-transform-produce against keel
(issue 15): TxnOffsetCommit through `send_offsets_to_transaction`.

usage: eos_transform.py HOST:PORT[,HOST:PORT...]

1. 240 input records over 3 partitions (idempotent producer).
2. A group member (read_committed, no auto commit) and a transactional producer run the loop:
   poll up to 20 records, begin a transaction, produce one output record per input record,
   send the consumer's positions with `send_offsets_to_transaction`, then commit, or every
   third transaction abort and rewind the consumer to its committed offsets.
   - After an abort, the group's committed offsets are the ones before the transaction (the
     aborted TxnOffsetCommit is discarded); the first transaction is aborted, so the group
     then has no offsets at all.
   - After a commit, the committed offsets are the positions sent (OffsetFetch with
     require_stable waits for the commit marker, KIP-447).
3. A read_committed consumer of the output sees every input record transformed exactly once:
   no loss, no duplicate, nothing of the aborted transactions.
4. A new member of the group resumes at the input's end: nothing left to process.
"""

import time
import uuid

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from interop_common import await_all, bootstrap_from_argv, check, check_eq, fail, log, stopwatch, topic_name

bootstrap = bootstrap_from_argv()
elapsed = stopwatch()
admin = AdminClient({"bootstrap.servers": bootstrap})
PARTITIONS = 3
RECORDS = 240
BATCH = 20
rf = min(3, len(bootstrap.split(",")))
source = topic_name("eos-in")
sink = topic_name("eos-out")
await_all(
    admin.create_topics(
        [NewTopic(t, num_partitions=PARTITIONS, replication_factor=rf) for t in (source, sink)],
        operation_timeout=15,
        request_timeout=20,
    ),
    "create_topics",
)
group = f"eos-{uuid.uuid4().hex[:8]}"
txn_id = f"eos-{uuid.uuid4().hex[:8]}"
log(f"{source} -> {sink} ({PARTITIONS} partitions, RF {rf}), group {group}, transactional.id {txn_id}")

# --- 1. input ------------------------------------------------------------------------------
p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
for i in range(RECORDS):
    p.produce(source, key=str(i).encode(), value=str(i).encode(), partition=i % PARTITIONS)
check_eq(p.flush(30), 0, "input records left unflushed")
log(f"{RECORDS} input records {elapsed()}")


def member():
    c = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": False,
        }
    )
    c.subscribe([source])
    return c


def committed_offsets(c):
    """The group's committed offsets of the input, by partition (-1001: none)."""
    tps = c.committed([TopicPartition(source, i) for i in range(PARTITIONS)], timeout=30)
    for tp in tps:
        if tp.error:
            fail(f"committed(): {tp.error}")
    return {tp.partition: tp.offset for tp in tps}


# --- 2. the loop ---------------------------------------------------------------------------
consumer = member()
producer = Producer(
    {
        "bootstrap.servers": bootstrap,
        "transactional.id": txn_id,
        "transaction.timeout.ms": 60000,
        "linger.ms": 5,
    }
)
producer.init_transactions(30)
log(f"init_transactions {elapsed()}")

processed = 0  # input records whose transformation was committed
transactions = {"commit": 0, "abort": 0}
deadline = time.monotonic() + 150
while processed < RECORDS:
    if time.monotonic() > deadline:
        fail(f"the loop processed {processed} of {RECORDS} records in 150 s")
    batch = consumer.consume(num_messages=BATCH, timeout=1.0)
    batch = [m for m in batch if not m.error() or fail(f"consume: {m.error()}")]
    if not batch:
        continue
    before = committed_offsets(consumer)
    producer.begin_transaction()
    for m in batch:
        producer.produce(sink, key=m.key(), value=f"out-{m.value().decode()}".encode(), partition=m.partition())
    positions = consumer.position(consumer.assignment())
    producer.send_offsets_to_transaction(positions, consumer.consumer_group_metadata(), 30)
    sent = {tp.partition: tp.offset for tp in positions if tp.offset >= 0}
    n = sum(transactions.values())
    if n % 3 == 0:
        producer.abort_transaction(30)
        transactions["abort"] += 1
        after = committed_offsets(consumer)
        check_eq(after, before, f"committed offsets after abort #{transactions['abort']}")
        if n == 0:
            check(all(o < 0 for o in after.values()), f"no offsets after the first (aborted) transaction: {after}")
        # Rewind to the committed offsets, as a transactional consumer must after an abort.
        for part in consumer.assignment():
            o = after.get(part.partition, -1001)
            consumer.seek(TopicPartition(source, part.partition, o if o >= 0 else 0))
    else:
        producer.commit_transaction(30)
        transactions["commit"] += 1
        processed += len(batch)
        after = committed_offsets(consumer)
        for part, offset in sent.items():
            check_eq(after.get(part), offset, f"committed offset of partition {part} after commit")
log(f"processed {RECORDS} records in {transactions['commit']} commits and {transactions['abort']} aborts {elapsed()}")
check(transactions["abort"] >= 2, f"too few aborts to mean anything: {transactions}")
consumer.close()

# --- 3. the output, exactly once ------------------------------------------------------------
reader = Consumer(
    {
        "bootstrap.servers": bootstrap,
        "group.id": f"reader-{uuid.uuid4().hex[:6]}",
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
        "enable.partition.eof": False,
    }
)
reader.assign([TopicPartition(sink, i, 0) for i in range(PARTITIONS)])
out = []
deadline = time.monotonic() + 60
extra_until = None
while time.monotonic() < deadline:
    if len(out) >= RECORDS and extra_until is None:
        extra_until = time.monotonic() + 2.0
    if extra_until is not None and time.monotonic() >= extra_until:
        break
    m = reader.poll(0.2)
    if m is None:
        continue
    if m.error():
        fail(f"reading the output: {m.error()}")
    out.append((m.partition(), m.value().decode()))
reader.close()
values = sorted(int(v[len("out-"):]) for _, v in out)
check_eq(len(out), RECORDS, "output records (read_committed)")
check_eq(values, list(range(RECORDS)), "every input record transformed exactly once")
for part in range(PARTITIONS):
    mine = [int(v[len("out-"):]) for q, v in out if q == part]
    check_eq(mine, [i for i in range(RECORDS) if i % PARTITIONS == part], f"output order of partition {part}")
log(f"the output holds each of the {RECORDS} records exactly once, in order {elapsed()}")

# --- 4. a new member resumes at the end -----------------------------------------------------
again = member()
end = {i: RECORDS // PARTITIONS for i in range(PARTITIONS)}
check_eq(committed_offsets(again), end, "the group's committed offsets at the end")
left = again.consume(num_messages=10, timeout=5.0)
check_eq([m.value() for m in left if not m.error()], [], "records a new member still gets")
again.close()
log(f"OK eos_transform {elapsed()}")
