"""Kill the leader: an idempotent acks=all producer keeps going while the broker leading its
partition is SIGKILLed and, seconds later, restarted with the same command line; afterwards
every acknowledged record is in the log exactly once, in send order, at the offset its delivery
report gave, and the restarted broker is back in every ISR within 30 s of its restart.

usage: cluster_kill_leader.py HOST:PORT,HOST:PORT,HOST:PORT [TOTAL] [RATE]

Driven by node/tests/cluster.rs over stdin/stdout:
  1. creates `orders` (1 partition) and `orders-spread` (3 partitions), both with replication
     factor 3 and min.insync.replicas=2, and waits until every ISR holds all three brokers;
  2. produces TOTAL records (default 20,000) at a steady RATE (default 2,000 records/s) over
     the four partitions, with enable.idempotence, acks=all and a 60 s message.timeout.ms;
  3. once 5,000 are acknowledged, looks up the leader of orders[0], prints
     `KILL-NOW leader=ID ...` and goes on producing; the harness SIGKILLs that broker and
     answers `KILLED`, then restarts it with the same command line and, once it printed its
     ready line, answers `RESTARTED`;
  4. flushes; every record must be acknowledged;
  5. waits until broker ID is in the ISR of every partition again, at most 30 s after the
     restart;
  6. reads every partition from the beginning up to its high watermark (assign(), no group,
     through the bootstrap list) and checks the log against the delivery reports.
Values are `P:SEQ:filler`, SEQ counting from 0 per partition in send order. Figures (acked,
read, failover and ISR-rejoin seconds) are printed on a `FIGURES` line.

Kafka's behaviour pinned: acks=all with min.insync.replicas=2 acknowledges only records that a
new leader has (KIP-101 leader epochs, KIP-966), the idempotent producer's retries to a new
leader neither duplicate nor reorder (KIP-98, KIP-360), and a restarted follower that catches
up rejoins the ISR (ReplicaManager's maybeExpandIsr, KIP-497 AlterPartition).
"""

import sys
import time

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from interop_common import await_all, check_eq, check_sequenced, fail, harness_line, log, read_to_high_watermarks, stopwatch, topic_name, wait_until

if len(sys.argv) < 2:
    fail(f"usage: {sys.argv[0]} HOST:PORT,HOST:PORT,HOST:PORT [TOTAL] [RATE]")
bootstrap = sys.argv[1]
TOTAL = int(sys.argv[2]) if len(sys.argv) > 2 else 20_000
RATE = int(sys.argv[3]) if len(sys.argv) > 3 else 2_000
KILL_AFTER_ACKS = min(5_000, TOTAL // 4)
ISR_REJOIN_TIMEOUT = 30.0
BROKERS = [1, 2, 3]
orders = topic_name("orders")
spread = topic_name("orders-spread")
# Send order cycles over these (topic, partition) pairs.
TARGETS = [(orders, 0), (spread, 0), (spread, 1), (spread, 2)]
FILLER = b"." * 64
elapsed = stopwatch()
admin = AdminClient({"bootstrap.servers": bootstrap})


def partition_metadata():
    """{(topic, partition): PartitionMetadata} for both topics, or None if one is missing."""
    md = admin.list_topics(timeout=5)
    out = {}
    for t in (orders, spread):
        tm = md.topics.get(t)
        if tm is None or tm.error is not None:
            return None
        for p, pm in tm.partitions.items():
            out[(t, p)] = pm
    return out


def partition_metadata_or_none():
    """partition_metadata(), or None if the request failed (a broker is down)."""
    try:
        return partition_metadata()
    except KafkaException:
        return None


def label(target):
    t, p = target
    return f"{'orders' if t == orders else 'spread'}[{p}]"


def describe(parts):
    """{'orders[0]': (leader, isr), 'spread[0]': ...}"""
    return {label(t): (pm.leader, sorted(pm.isrs)) for t, pm in sorted(parts.items())}


def controller():
    try:
        c = admin.describe_cluster(request_timeout=5).result(timeout=6).controller
        return c.id if c is not None else None
    except KafkaException:
        return None


# --- 1. topics ------------------------------------------------------------------------------
futures = admin.create_topics(
    [
        NewTopic(orders, num_partitions=1, replication_factor=3, config={"min.insync.replicas": "2"}),
        NewTopic(spread, num_partitions=3, replication_factor=3, config={"min.insync.replicas": "2"}),
    ],
    request_timeout=30,
)
await_all(futures, "create_topics (replication factor 3, min.insync.replicas=2)")


def all_in_sync():
    parts = partition_metadata()
    if parts is None or set(parts) != set(TARGETS):
        return None
    if all(pm.leader >= 0 and sorted(pm.isrs) == BROKERS and sorted(pm.replicas) == BROKERS for pm in parts.values()):
        return parts
    return None


parts = wait_until("every partition led with ISR [1, 2, 3]", all_in_sync, timeout=30)
log(f"topics {orders}, {spread}: (leader, isr) {describe(parts)} at {elapsed()}")

# --- 2-3. produce, with the kill and the restart in the middle -------------------------------
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
    "message.timeout.ms": 60000,
    "request.timeout.ms": 15000,
    "retry.backoff.ms": 100,
    "reconnect.backoff.ms": 100,
    "reconnect.backoff.max.ms": 1000,
    "topic.metadata.refresh.interval.ms": 1000,
    "queue.buffering.max.messages": TOTAL + 1000,
    "error_cb": on_error,
})

sent = {t: 0 for t in TARGETS}  # next sequence number per partition
delivered = {t: {} for t in TARGETS}  # seq -> offset
ack_count = [0]
failed = []  # (target, seq, error)
killed_at = None
first_ack_after_kill = {}  # target -> seconds after the kill


def make_cb(target, seq):
    def cb(err, msg):
        if err is not None:
            failed.append((target, seq, str(err)))
            return
        if (msg.topic(), msg.partition()) != target:
            failed.append((target, seq, f"delivered to {msg.topic()}[{msg.partition()}]"))
            return
        delivered[target][seq] = msg.offset()
        ack_count[0] += 1
        if killed_at is not None and target not in first_ack_after_kill:
            first_ack_after_kill[target] = time.monotonic() - killed_at

    return cb


def queued():
    return sum(sent.values())


def produce(n):
    for _ in range(n):
        target = TARGETS[queued() % len(TARGETS)]
        seq = sent[target]
        value = f"{target[1]}:{seq}:".encode() + FILLER
        while True:
            try:
                producer.produce(target[0], key=f"k{seq % 32}".encode(), value=value, partition=target[1],
                                 on_delivery=make_cb(target, seq))
                break
            except BufferError:
                producer.poll(0.05)
        sent[target] += 1
        if queued() % 500 == 0:
            producer.poll(0)


def watch_leader(now):
    """Looks (every 0.25 s) whether orders[0] has a leader other than the killed one."""
    global leader_moved_after, next_metadata_check
    if leader_moved_after is not None or now < next_metadata_check:
        return
    next_metadata_check = now + 0.25
    parts = partition_metadata_or_none()
    if parts is not None and parts[(orders, 0)].leader not in (-1, leader):
        leader_moved_after = time.monotonic() - killed_at
        log(f"orders[0] led by {parts[(orders, 0)].leader} {leader_moved_after:.1f}s after the kill "
            f"(controller {controller()}): (leader, isr) {describe(parts)}")


rejoin_s = None  # seconds from the restart to the first metadata with the broker in every ISR
next_rejoin_check = 0.0


def watch_rejoin(now):
    """Looks (every 0.25 s) whether the restarted broker is back in every ISR; fails once it has
    had ISR_REJOIN_TIMEOUT since its restart."""
    global rejoin_s, next_rejoin_check
    if rejoin_s is not None or now < next_rejoin_check:
        return
    next_rejoin_check = now + 0.25
    parts = partition_metadata_or_none()
    if parts is not None and all(leader in pm.isrs for pm in parts.values()):
        rejoin_s = time.monotonic() - restarted_at
        log(f"broker {leader} back in every ISR {rejoin_s:.1f}s after its restart: (leader, isr) {describe(parts)}")
    elif now > restarted_at + ISR_REJOIN_TIMEOUT:
        shown = "no metadata" if parts is None else describe(parts)
        fail(f"broker {leader} not back in the ISR of every partition {ISR_REJOIN_TIMEOUT}s after its restart: "
             f"(leader, isr) {shown}")


state = "before-kill"  # -> waiting-killed -> waiting-restarted -> restarted
leader = None
restarted_at = None
leader_moved_after = None
next_metadata_check = 0.0
produce_started = time.monotonic()
deadline = produce_started + 150
while queued() < TOTAL or state != "restarted":
    now = time.monotonic()
    if now > deadline:
        fail(f"producing: stuck at {elapsed()} in state {state} with {queued()} queued, {ack_count[0]} acknowledged, "
             f"{len(failed)} failed; client errors: {client_errors[-5:]}")
    due = min(TOTAL, int((now - produce_started) * RATE)) - queued()
    if due > 0:
        produce(due)
    producer.poll(0.002)
    if state == "before-kill" and ack_count[0] >= KILL_AFTER_ACKS:
        parts = partition_metadata_or_none()
        if parts is None or parts[(orders, 0)].leader < 0:
            continue
        leader = parts[(orders, 0)].leader
        print(f"KILL-NOW leader={leader} controller={controller()} queued={queued()} acked={ack_count[0]} "
              f"at={elapsed()} (leader, isr) {describe(parts)}", flush=True)
        state = "waiting-killed"
    elif state == "waiting-killed":
        line = harness_line()
        if line is not None:
            check_eq(line, "KILLED", "the harness's answer to KILL-NOW")
            killed_at = time.monotonic()
            state = "waiting-restarted"
            log(f"leader {leader} killed at {elapsed()}: {queued()} queued, {ack_count[0]} acknowledged")
    elif state == "waiting-restarted":
        watch_leader(now)
        line = harness_line()
        if line is not None:
            check_eq(line, "RESTARTED", "the harness's answer after the restart")
            restarted_at = time.monotonic()
            state = "restarted"
            log(f"broker {leader} restarted at {elapsed()} ({restarted_at - killed_at:.1f}s after the kill): "
                f"{queued()} queued, {ack_count[0]} acknowledged")
    elif state == "restarted":
        watch_leader(now)
        watch_rejoin(now)

# --- 4-5. flush, and the restarted broker rejoins every ISR ----------------------------------
log(f"queued all {TOTAL} records at {elapsed()}; acknowledged so far: {ack_count[0]}")
flush_deadline = time.monotonic() + 90
while True:
    producer.poll(0.05)
    watch_leader(time.monotonic())
    watch_rejoin(time.monotonic())
    left = len(producer)
    if (left == 0 and rejoin_s is not None) or time.monotonic() > flush_deadline:
        break
log(f"flushed at {elapsed()}: {ack_count[0]} acknowledged, {len(failed)} failed, {left} still queued; "
    f"{len(client_errors)} client errors (last: {client_errors[-3:]})")
check_eq(left, 0, "records still queued 90 s after the last was queued")
acked_total = sum(len(d) for d in delivered.values())
check_eq(acked_total, ack_count[0], "distinct acknowledged records (a record acknowledged twice?)")
if failed:
    fail(f"{len(failed)} of {TOTAL} records failed delivery (acks=all, min.insync.replicas=2, one broker down "
         f"for a few seconds, message.timeout.ms 60000: every record should be acknowledged); first: {failed[:5]}")
check_eq(acked_total, TOTAL, "acknowledged records")
del producer

# --- 6. read everything back -----------------------------------------------------------------
rows, highs = read_to_high_watermarks(bootstrap, TARGETS)
read_total = sum(len(r) for r in rows.values())
for t in TARGETS:
    check_sequenced(t, rows[t], highs[t], sent[t], delivered[t], FILLER)

moved = "never seen" if leader_moved_after is None else f"{leader_moved_after:.1f}"
first_ack = first_ack_after_kill.get((orders, 0))
first_ack = "none" if first_ack is None else f"{first_ack:.1f}"
log(f"FIGURES killed_leader={leader} acked={acked_total} read={read_total} leader_moved_s={moved} "
    f"first_orders_ack_after_kill_s={first_ack} down_s={restarted_at - killed_at:.1f} isr_rejoin_s={rejoin_s:.1f}")
log(f"every one of {acked_total} acknowledged records is in the log once, in order, at its reported offset")
log(f"OK cluster_kill_leader {elapsed()}")
