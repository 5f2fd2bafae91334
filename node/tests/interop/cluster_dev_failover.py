"""`keel dev` failover: a topic replicated on all three brokers stays readable, every record
exactly once, after any one broker is SIGKILLed.

usage: cluster_dev_failover.py HOST:PORT,HOST:PORT,HOST:PORT KILL_ID

The addresses are brokers 1, 2, 3 in order. Driven by node/tests/cluster.rs over stdin/stdout:
  1. creates a topic with 3 partitions and replication factor 3, waits until every partition
     has a leader and all three replicas in its ISR, and prints who leads what and which broker
     is the controller; also writes one record to a topic nobody created (auto-created, as the
     kcat line `keel dev` prints does), which must get `keel dev`'s defaults: replication
     factor 3 and min.insync.replicas 2;
  2. produces 300 records with acks=all (idempotent) and checks every delivery report; then
     30 more one at a time, each followed at once by a ListOffsets to its leader, which must
     already count it (read-after-ack);
  3. prints `KILL-NOW broker=KILL_ID ...`; the harness SIGKILLs that broker and answers
     `KILLED` on stdin;
  4. through the two surviving brokers only, waits (up to 30 s) until no partition is led by
     the killed broker, and reads every partition from the beginning (assign(), no group):
     each of the 330 records must come back exactly once, and nothing else; and the
     auto-created topic takes an acks=all write through the survivors and reads back whole.
Kafka's behaviour pinned: a committed record (acks=all, in every ISR member) survives the loss
of any one replica (Kafka's ReplicationUtils / KIP-966's committed-data guarantee), and the
controller moves leadership off a fenced broker (KRaft's ReplicationControlManager).
"""

import sys
import time

from confluent_kafka import OFFSET_BEGINNING, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from interop_common import assign_consumer, await_all, check, check_eq, fail, harness_line, log, stopwatch, topic_name, wait_until

if len(sys.argv) != 3:
    fail(f"usage: {sys.argv[0]} HOST:PORT,HOST:PORT,HOST:PORT KILL_ID")
addresses = sys.argv[1].split(",")
check_eq(len(addresses), 3, "number of broker addresses")
KILL = int(sys.argv[2])
check(1 <= KILL <= 3, f"KILL_ID {KILL} is not a broker id 1..3")
survivors = ",".join(a for i, a in enumerate(addresses) if i + 1 != KILL)
bootstrap = ",".join(addresses)
PARTITIONS = 3
RECORDS = 300
READ_AFTER_ACK_PROBES = 30
FAILOVER_TIMEOUT = 30.0
topic = topic_name("dev-failover")
elapsed = stopwatch()


def partitions_of(admin):
    md = admin.list_topics(topic, timeout=5)
    t = md.topics.get(topic)
    if t is None or t.error is not None:
        return None
    return t.partitions


# --- 1. a fully replicated topic ------------------------------------------------------------
admin = AdminClient({"bootstrap.servers": bootstrap})
await_all(admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=3)], request_timeout=30),
          "create_topics (3 partitions, replication factor 3)")


def fully_replicated():
    parts = partitions_of(admin)
    if parts is None or len(parts) != PARTITIONS:
        return None
    for p in parts.values():
        if p.leader < 0 or sorted(p.replicas) != [1, 2, 3] or sorted(p.isrs) != [1, 2, 3]:
            return None
    return parts


parts = wait_until(f"{topic}: every partition led, with replicas and ISR [1, 2, 3]", fully_replicated, timeout=30)
leaders = {p: parts[p].leader for p in sorted(parts)}
cluster = admin.describe_cluster(request_timeout=10).result(timeout=15)
controller = cluster.controller.id if cluster.controller is not None else None
log(f"{topic}: leaders {leaders}, controller {controller}, at {elapsed()}")

# --- 1b. an auto-created topic gets keel dev's defaults --------------------------------------
auto_topic = topic_name("dev-auto")


def produce_one(servers, topic_, value):
    """One acks=all record; returns the delivery error (None when acknowledged)."""
    outcome = []
    p = Producer({"bootstrap.servers": servers, "acks": "all", "enable.idempotence": True,
                  "message.timeout.ms": 30000})
    p.produce(topic_, value=value, on_delivery=lambda err, msg: outcome.append(err))
    p.flush(40)
    check_eq(len(outcome), 1, f"delivery reports for {value!r}")
    return outcome[0]


err = produce_one(bootstrap, auto_topic, b"auto-0")
check(err is None, f"the first record to the auto-created topic {auto_topic} failed: {err}")


def auto_replicated():
    md = admin.list_topics(auto_topic, timeout=5).topics.get(auto_topic)
    if md is None or md.error is not None or not md.partitions:
        return None
    if any(sorted(p.replicas) != [1, 2, 3] or sorted(p.isrs) != [1, 2, 3] for p in md.partitions.values()):
        return None
    return md.partitions


auto_parts = wait_until(f"{auto_topic}: auto-created with replicas and ISR [1, 2, 3]", auto_replicated, timeout=30)
resource = ConfigResource(ConfigResource.Type.TOPIC, auto_topic)
configs = admin.describe_configs([resource], request_timeout=10)[resource].result(timeout=15)
check_eq(configs["min.insync.replicas"].value, "2", f"{auto_topic}'s min.insync.replicas")
log(f"{auto_topic}: auto-created with {len(auto_parts)} partition(s), replication factor 3, min.insync.replicas 2")

# --- 2. 300 committed records ---------------------------------------------------------------
failed = []
acked = []


def on_delivery(err, msg):
    if err is not None:
        failed.append((msg.value(), str(err)))
    else:
        acked.append(msg.value())


producer = Producer({
    "bootstrap.servers": bootstrap,
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
    "message.timeout.ms": 30000,
})
expected = set()
for i in range(RECORDS):
    value = f"rec-{i:03d}".encode()
    expected.add(value)
    producer.produce(topic, key=f"k{i}".encode(), value=value, partition=i % PARTITIONS, on_delivery=on_delivery)
    producer.poll(0)
left = producer.flush(40)
check_eq(left, 0, "records still queued after flush(40)")
if failed:
    fail(f"{len(failed)} of {RECORDS} records failed delivery before any kill; first: {failed[:3]}")
check_eq(len(acked), RECORDS, "delivery reports")
log(f"produced and acknowledged {RECORDS} records at {elapsed()}")

# --- 2b. read-after-ack: a ListOffsets sent to the leader after an acks=all answer sees it ---
# One record at a time; as soon as its delivery report arrives, ask the partition's leader for
# its latest offset (ListOffsets, not cached). Kafka's users rely on this (read-your-writes
# checks, lag monitors, consumers starting at `latest`).
watermarks = assign_consumer(bootstrap)
acked_at = []


def on_probe(err, msg):
    if err is not None:
        failed.append((msg.value(), str(err)))
    else:
        acked_at.append((msg.partition(), msg.offset()))


for i in range(READ_AFTER_ACK_PROBES):
    value = f"probe-{i:03d}".encode()
    expected.add(value)
    before = len(acked_at)
    producer.produce(topic, key=f"p{i}".encode(), value=value, partition=i % PARTITIONS, on_delivery=on_probe)
    deadline = time.monotonic() + 30
    while len(acked_at) == before and not failed:
        producer.poll(0.001)
        check(time.monotonic() < deadline, f"probe {i} not acknowledged within 30 s")
    if failed:
        fail(f"probe {i} failed delivery: {failed[-1]}")
    partition, offset = acked_at[-1]
    _, high = watermarks.get_watermark_offsets(TopicPartition(topic, partition), timeout=10, cached=False)
    check(high > offset, f"read-after-ack: probe {i} acknowledged at {topic}[{partition}]@{offset}, "
                         f"but the leader's latest offset right after is {high}")
watermarks.close()
del producer
log(f"read-after-ack: {READ_AFTER_ACK_PROBES} acks=all records, each visible to ListOffsets right after its ack, at {elapsed()}")

# --- 3. the kill ----------------------------------------------------------------------------
led = sorted(p for p, b in leaders.items() if b == KILL)
role = f"leader of partitions {led}" if led else "a follower of every partition"
if controller == KILL:
    role += ", and the controller"
print(f"KILL-NOW broker={KILL} role={role} at={elapsed()}", flush=True)
line = harness_line(60)
check(line is not None, "no KILLED from the harness within 60 s")
check_eq(line, "KILLED", "the harness's answer to KILL-NOW")
killed_at = time.monotonic()
log(f"broker {KILL} ({role}) killed at {elapsed()}; reading through {survivors}")

# --- 4. every record, exactly once, through the survivors -----------------------------------
admin = AdminClient({"bootstrap.servers": survivors})


def moved():
    parts = partitions_of(admin)
    if parts is None:
        return None
    if any(p.leader in (-1, KILL) for p in parts.values()):
        return None
    return {p: parts[p].leader for p in sorted(parts)}


new_leaders = wait_until(f"{topic}: leadership off broker {KILL}", moved, timeout=FAILOVER_TIMEOUT, interval=0.25)
moved_after = time.monotonic() - killed_at
log(f"leaders {new_leaders} {moved_after:.1f}s after the kill")

client_errors = []
consumer = assign_consumer(survivors, {
    "enable.partition.eof": False,
    "topic.metadata.refresh.interval.ms": 1000,
    "error_cb": lambda err: client_errors.append(str(err)),
})
got = {}
try:
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    deadline = killed_at + FAILOVER_TIMEOUT
    while len(got) < len(expected):
        if time.monotonic() > deadline:
            missing = sorted(expected - set(got))
            fail(f"{len(got)} of {len(expected)} records read within {FAILOVER_TIMEOUT}s of killing broker {KILL} "
                 f"({role}); missing (first 10): {missing[:10]}; client errors: {client_errors[-5:]}")
        for m in consumer.consume(num_messages=1000, timeout=0.5):
            if m.error():
                if m.error().fatal():
                    fail(f"consumer: fatal error {m.error()}")
                client_errors.append(str(m.error()))
                continue
            v = m.value()
            check(v in expected, f"partition {m.partition()} offset {m.offset()}: value {v!r} was never sent")
            got[v] = got.get(v, 0) + 1
            check(got[v] == 1, f"partition {m.partition()} offset {m.offset()}: {v!r} read twice")
    # Nothing beyond what was sent.
    for m in consumer.consume(num_messages=1000, timeout=1.0):
        if not m.error():
            fail(f"a record beyond the {len(expected)} sent: partition {m.partition()} offset {m.offset()} value {m.value()!r}")
finally:
    consumer.close()
read_after = time.monotonic() - killed_at
check_eq(set(got), expected, "records read back")

# The auto-created topic stays writable with acks=all (two of its three replicas are left) and
# readable through the survivors.
err = produce_one(survivors, auto_topic, b"auto-1")
check(err is None, f"acks=all to the auto-created {auto_topic} after killing broker {KILL} failed: {err}")
auto_consumer = assign_consumer(survivors, {"enable.partition.eof": False})
auto_got = []
try:
    auto_consumer.assign([TopicPartition(auto_topic, p, OFFSET_BEGINNING) for p in auto_parts])
    deadline = time.monotonic() + FAILOVER_TIMEOUT
    while len(auto_got) < 2:
        check(time.monotonic() < deadline, f"{auto_topic}: read {auto_got} within {FAILOVER_TIMEOUT}s, expected auto-0 and auto-1")
        for m in auto_consumer.consume(num_messages=10, timeout=0.5):
            if not m.error():
                auto_got.append(m.value())
finally:
    auto_consumer.close()
check_eq(sorted(auto_got), [b"auto-0", b"auto-1"], f"records of {auto_topic}")
log(f"{auto_topic}: written with acks=all and read back after the kill")
log(f"FIGURES killed={KILL} role=\"{role}\" leaders_moved_s={moved_after:.1f} all_read_s={read_after:.1f} "
    f"records={len(got)} client_errors={len(client_errors)}")
log(f"OK cluster_dev_failover {elapsed()}")
