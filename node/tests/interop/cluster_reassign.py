"""Partition reassignment (KIP-455) through kafka-python's KafkaAdminClient
(alter_partition_reassignments / list_partition_reassignments), on three brokers, while an
idempotent acks=all confluent-kafka producer writes throughout.

usage: cluster_reassign.py HOST:PORT,HOST:PORT,HOST:PORT [RATE]

Driven by node/tests/cluster.rs (no broker is stopped here):
  1. creates `moving` (3 partitions, replication factor 2, min.insync.replicas=2) and waits
     until every ISR is full;
  2. produces at a steady RATE (default 500 records/s) over the three partitions, with
     enable.idempotence and acks=all, and keeps producing through every step below;
  3. bad input, each refused with Kafka's code and nothing changed: a broker that does not
     exist and a duplicate replica (INVALID_REPLICA_ASSIGNMENT, 39), a partition that does not
     exist (UNKNOWN_TOPIC_OR_PARTITION, 3), a cancellation with none in progress
     (NO_REASSIGNMENT_IN_PROGRESS, 85);
  4. with [a, b] the replicas of a partition and c the third broker: partition 0 moves off its
     leader ([c, b]), partition 1 grows ([a, b, c]), partition 2 replaces its follower
     ([a, c]); waits until list_partition_reassignments is empty and the metadata shows
     exactly the targets with full ISRs;
  5. partition 1 shrinks back to two replicas without its leader ([b, c]), the same way;
  6. stops producing and flushes: no record may fail; reads every partition back from offset
     0 to its high watermark: every acknowledged record once, in order, at its offset;
  7. prints `FINAL topic=T p0=B,B p1=B,B p2=B,B` (the final replica sets), which the harness
     checks against the brokers' partition directories, and a `FIGURES` line.
"""

import sys
import time

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from kafka import KafkaAdminClient
from kafka.structs import TopicPartition

from interop_common import await_all, check, check_eq, check_sequenced, fail, log, read_to_high_watermarks, stopwatch, topic_name, wait_until

if len(sys.argv) < 2:
    fail(f"usage: {sys.argv[0]} HOST:PORT,HOST:PORT,HOST:PORT [RATE]")
bootstrap = sys.argv[1]
RATE = int(sys.argv[2]) if len(sys.argv) > 2 else 500
BROKERS = [1, 2, 3]
INVALID_REPLICA_ASSIGNMENT = 39
UNKNOWN_TOPIC_OR_PARTITION = 3
NO_REASSIGNMENT_IN_PROGRESS = 85
REASSIGN_TIMEOUT = 60.0
topic = topic_name("moving")
TARGETS = [(topic, p) for p in range(3)]
FILLER = b"." * 64
elapsed = stopwatch()
admin = AdminClient({"bootstrap.servers": bootstrap})
kadmin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30000)


def partitions():
    """{partition: PartitionMetadata}, or None if the request failed or the topic is missing."""
    try:
        md = admin.list_topics(topic=topic, timeout=5)
    except KafkaException:
        return None
    tm = md.topics.get(topic)
    if tm is None or tm.error is not None or len(tm.partitions) != 3:
        return None
    return tm.partitions


def shown(parts):
    return {p: (pm.leader, list(pm.replicas), sorted(pm.isrs)) for p, pm in sorted(parts.items())}


def settled(targets):
    """The partitions once each has exactly its target replicas, a full ISR and a leader."""
    parts = partitions()
    if parts is None:
        return None
    for p, pm in parts.items():
        want = targets.get(p)
        if want is not None and list(pm.replicas) != want:
            return None
        if pm.leader < 0 or sorted(pm.isrs) != sorted(pm.replicas):
            return None
    return parts


def codes(result):
    """{(topic, partition): 0 or the error code} of alter_partition_reassignments."""
    return {(tp.topic, tp.partition): (0 if err is None else err.errno) for tp, err in result.items()}


# --- 1. the topic -------------------------------------------------------------------------------
await_all(admin.create_topics(
    [NewTopic(topic, num_partitions=3, replication_factor=2, config={"min.insync.replicas": "2"})],
    request_timeout=30), "create_topics")
parts = wait_until("every partition led with a full ISR", lambda: settled({}), timeout=30)
log(f"{topic}: (leader, replicas, isr) {shown(parts)} at {elapsed()}")

# --- 2. the producer ----------------------------------------------------------------------------
client_errors = []


def on_error(err):
    client_errors.append(str(err))
    if err.fatal():
        fail(f"producer fatal error at {elapsed()}: {err}")


producer = Producer({
    "bootstrap.servers": bootstrap,
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
    "message.timeout.ms": 120000,
    "request.timeout.ms": 15000,
    "retry.backoff.ms": 100,
    "topic.metadata.refresh.interval.ms": 1000,
    "error_cb": on_error,
})
sent = {t: 0 for t in TARGETS}
delivered = {t: {} for t in TARGETS}
ack_count = [0]
failed = []


def make_cb(target, seq):
    def cb(err, msg):
        if err is not None:
            failed.append((target, seq, str(err)))
            return
        delivered[target][seq] = msg.offset()
        ack_count[0] += 1

    return cb


def queued():
    return sum(sent.values())


produce_started = time.monotonic()


def pump(seconds):
    """Produces at RATE and serves delivery reports for `seconds`."""
    end = time.monotonic() + seconds
    while True:
        now = time.monotonic()
        for _ in range(int((now - produce_started) * RATE) - queued()):
            target = TARGETS[queued() % len(TARGETS)]
            seq = sent[target]
            value = f"{target[1]}:{seq}:".encode() + FILLER
            while True:
                try:
                    producer.produce(target[0], value=value, partition=target[1], on_delivery=make_cb(target, seq))
                    break
                except BufferError:
                    producer.poll(0.05)
            sent[target] += 1
        producer.poll(0.002)
        if now >= end:
            return


def pump_until(what, fn, timeout):
    deadline = time.monotonic() + timeout
    while True:
        pump(0.2)
        got = fn()
        if got:
            return got
        if time.monotonic() > deadline:
            parts = partitions()
            fail(f"timed out after {timeout}s waiting for {what}: "
                 f"{shown(parts) if parts else 'no metadata'}, "
                 f"ongoing {kadmin.list_partition_reassignments()}")


pump_until("1,000 acknowledged records", lambda: ack_count[0] >= 1000, 60)

# --- 3. bad input -------------------------------------------------------------------------------
before = shown(partitions())
replicas0 = list(partitions()[0].replicas)
for what, request, want in [
    ("a broker that does not exist", {TopicPartition(topic, 0): [replicas0[0], 9]}, INVALID_REPLICA_ASSIGNMENT),
    ("a duplicate replica", {TopicPartition(topic, 0): [replicas0[0], replicas0[0]]}, INVALID_REPLICA_ASSIGNMENT),
    ("a partition that does not exist", {TopicPartition(topic, 7): [1, 2]}, UNKNOWN_TOPIC_OR_PARTITION),
    ("a cancellation with none in progress", {TopicPartition(topic, 0): None}, NO_REASSIGNMENT_IN_PROGRESS),
]:
    got = codes(kadmin.alter_partition_reassignments(request))
    check_eq(got, {(tp.topic, tp.partition): want for tp in request}, what)
    pump(0.05)
check_eq(kadmin.list_partition_reassignments(), {}, "no reassignment in progress after the refusals")
check_eq(shown(partitions()), before, "the partitions after the refusals")
log(f"bad input refused with Kafka's codes, nothing changed, at {elapsed()}")


# --- 4-5. reassignments under load --------------------------------------------------------------
def reassign(targets, what):
    acked_before = ack_count[0]
    started = time.monotonic()
    got = codes(kadmin.alter_partition_reassignments({TopicPartition(topic, p): r for p, r in targets.items()}))
    check_eq(got, {(topic, p): 0 for p in targets}, f"alter_partition_reassignments ({what})")
    pump_until("no reassignment in progress", lambda: kadmin.list_partition_reassignments() == {}, REASSIGN_TIMEOUT)
    parts = pump_until(f"the targets {targets} with full ISRs", lambda: settled(targets), REASSIGN_TIMEOUT)
    took = time.monotonic() - started
    log(f"{what}: done in {took:.1f}s, {ack_count[0] - acked_before} records acknowledged meanwhile: "
        f"(leader, replicas, isr) {shown(parts)}")
    if failed:
        fail(f"{len(failed)} records failed delivery during the reassignment ({what}); first: {failed[:5]}")
    return took


parts = partitions()
plan = {}
for p, pm in parts.items():
    a, b = list(pm.replicas)
    (c,) = [x for x in BROKERS if x not in (a, b)]
    plan[p] = (a, b, c)
a0, b0, c0 = plan[0]
a1, b1, c1 = plan[1]
a2, b2, c2 = plan[2]
check(parts[0].leader == a0, f"partition 0 led by its first replica {a0}: {shown(parts)}")
first = {0: [c0, b0], 1: [a1, b1, c1], 2: [a2, c2]}
took_first = reassign(first, "move partition 0 off its leader, grow partition 1, replace partition 2's follower")
pump_until("1,000 more acknowledged records", lambda: ack_count[0] >= 2000, 60)
took_shrink = reassign({1: [b1, c1]}, "shrink partition 1 without its leader")
pump_until("1,000 more acknowledged records", lambda: ack_count[0] >= 3000, 60)

# --- 6. flush and read back ---------------------------------------------------------------------
total = queued()
left = producer.flush(90)
check_eq(left, 0, "records still queued 90 s after the last was queued")
if failed:
    fail(f"{len(failed)} of {total} records failed delivery; first: {failed[:5]}")
acked_total = sum(len(d) for d in delivered.values())
check_eq(acked_total, ack_count[0], "distinct acknowledged records (a record acknowledged twice?)")
check_eq(acked_total, total, "acknowledged records")
del producer
rows, highs = read_to_high_watermarks(bootstrap, TARGETS)
for t in TARGETS:
    check_sequenced(t, rows[t], highs[t], sent[t], delivered[t], FILLER)
final = settled({0: first[0], 1: [b1, c1], 2: first[2]})
check(final is not None, f"the final replica sets: {shown(partitions())}")
print("FINAL topic=" + topic + " " + " ".join(
    f"p{p}={','.join(str(r) for r in pm.replicas)}" for p, pm in sorted(final.items())), flush=True)
log(f"FIGURES records={total} read={sum(len(r) for r in rows.values())} first_round={took_first:.1f}s "
    f"shrink={took_shrink:.1f}s client_errors={len(client_errors)}")
log(f"OK cluster_reassign {elapsed()}")
