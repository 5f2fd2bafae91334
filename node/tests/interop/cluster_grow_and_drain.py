"""A broker joins and another leaves while clients produce and consume: three `keel start`
brokers plus a fourth added (a learner of the metadata quorum, which the harness starts when
this script asks), partitions moved onto it with `keel partitions reassign --generate --execute`,
then broker 3 drained and unregistered with `keel broker decommission 3`.

usage: cluster_grow_and_drain.py HOST:PORT,... KEEL_BINARY [RATE]

Driven by node/tests/cluster.rs (`brokers_join_and_leave_under_producers`):
  1. creates `growing` (4 partitions, replication factor 3, min.insync.replicas=2) on the
     three brokers;
  2. produces at RATE records/s in all (default 400) with two idempotent acks=all producers,
     confluent-kafka to partitions 0 and 1, kafka-python to partitions 2 and 3, and reads the
     topic with a kafka-python consumer, all throughout the steps below; after 1,000
     acknowledged records prints `ADD-BROKER` and goes on until the harness answers `ADDED`
     (broker 4 started and ready) and broker 4 is in the metadata;
  3. `keel partitions reassign --generate --broker-ids 1,2,3,4 --execute --wait 120`: every
     partition ends with three replicas, broker 4 holds some and leads some, full ISRs;
  4. `keel broker decommission 3`: no partition keeps a replica on broker 3, full ISRs, and
     broker 3 is no longer in the metadata;
  5. stops producing and flushes: no record may fail; reads every partition back from offset 0
     to its high watermark: every acknowledged record once (idempotence: no duplicate), in
     order, at its offset; the consumer that ran throughout saw each of those records once;
  6. prints `FINAL topic=T p0=B,B,B ...` (the replica sets, which the harness checks against
     the brokers' partition directories) and a `FIGURES` line.
"""

import subprocess
import sys
import time

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition as KTopicPartition

from interop_common import (await_all, check, check_eq, check_sequenced, fail, harness_line, log,
                            read_to_high_watermarks, stopwatch, topic_name, wait_until)

if len(sys.argv) < 3:
    fail(f"usage: {sys.argv[0]} HOST:PORT,... KEEL_BINARY [RATE]")
bootstrap = sys.argv[1]
keel = sys.argv[2]
RATE = int(sys.argv[3]) if len(sys.argv) > 3 else 400
STEP_TIMEOUT = 180.0
topic = topic_name("growing")
TARGETS = [(topic, p) for p in range(4)]
CONFLUENT = TARGETS[:2]
KAFKA_PYTHON = TARGETS[2:]
FILLER = b"." * 64
elapsed = stopwatch()
admin = AdminClient({"bootstrap.servers": bootstrap})


def metadata():
    try:
        return admin.list_topics(topic=topic, timeout=5)
    except KafkaException:
        return None


def partitions():
    md = metadata()
    if md is None:
        return None
    tm = md.topics.get(topic)
    if tm is None or tm.error is not None or len(tm.partitions) != 4:
        return None
    return tm.partitions


def shown(parts):
    return {p: (pm.leader, list(pm.replicas), sorted(pm.isrs)) for p, pm in sorted(parts.items())}


def settled(ok):
    """The partitions once each has a leader, a full ISR, and `ok(replicas)` holds."""
    parts = partitions()
    if parts is None:
        return None
    for pm in parts.values():
        if pm.leader < 0 or sorted(pm.isrs) != sorted(pm.replicas) or not ok(list(pm.replicas)):
            return None
    return parts


# --- 1. the topic ------------------------------------------------------------------------------
await_all(admin.create_topics(
    [NewTopic(topic, num_partitions=4, replication_factor=3, config={"min.insync.replicas": "2"})],
    request_timeout=30), "create_topics")
parts = wait_until("every partition led with a full ISR", lambda: settled(lambda r: 4 not in r), timeout=30)
log(f"{topic}: (leader, replicas, isr) {shown(parts)} at {elapsed()}")

# --- 2. producers and a consumer ----------------------------------------------------------------
client_errors = []


def on_error(err):
    client_errors.append(str(err))
    if err.fatal():
        fail(f"confluent-kafka producer fatal error at {elapsed()}: {err}")


cproducer = Producer({
    "bootstrap.servers": bootstrap,
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
    "message.timeout.ms": 180000,
    "request.timeout.ms": 15000,
    "retry.backoff.ms": 100,
    "topic.metadata.refresh.interval.ms": 1000,
    "error_cb": on_error,
})
kproducer = KafkaProducer(
    bootstrap_servers=bootstrap,
    enable_idempotence=True,
    acks="all",
    linger_ms=5,
    retries=2**31 - 1,
    delivery_timeout_ms=180000,
    request_timeout_ms=15000,
    retry_backoff_ms=100,
    metadata_max_age_ms=1000,
)
consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                         auto_offset_reset="earliest", metadata_max_age_ms=1000)
consumer.assign([KTopicPartition(topic, p) for p in range(4)])
consumer.seek_to_beginning()
consumed = {t: [] for t in TARGETS}

sent = {t: 0 for t in TARGETS}
delivered = {t: {} for t in TARGETS}
ack_count = [0]
failed = []
kfutures = []


def confluent_cb(target, seq):
    def cb(err, msg):
        if err is not None:
            failed.append((target, seq, str(err)))
            return
        delivered[target][seq] = msg.offset()
        ack_count[0] += 1

    return cb


def queued():
    return sum(sent.values())


def reap_kafka_python(block=False):
    """Moves finished kafka-python sends into `delivered` (or `failed`)."""
    keep = []
    for target, seq, fut in kfutures:
        if not (block or fut.is_done):
            keep.append((target, seq, fut))
            continue
        try:
            md = fut.get(timeout=180 if block else 0)
        except Exception as e:  # noqa: BLE001 (any failure is a failed delivery)
            failed.append((target, seq, repr(e)))
            continue
        delivered[target][seq] = md.offset
        ack_count[0] += 1
    kfutures[:] = keep


def poll_consumer():
    for tp, msgs in consumer.poll(timeout_ms=0, max_records=5000).items():
        for m in msgs:
            consumed[(tp.topic, tp.partition)].append((m.offset, m.value))


produce_started = time.monotonic()


def pump(seconds):
    """Produces at RATE, serves delivery reports and consumes for `seconds`."""
    end = time.monotonic() + seconds
    while True:
        now = time.monotonic()
        for _ in range(int((now - produce_started) * RATE) - queued()):
            target = TARGETS[queued() % len(TARGETS)]
            seq = sent[target]
            value = f"{target[1]}:{seq}:".encode() + FILLER
            if target in CONFLUENT:
                while True:
                    try:
                        cproducer.produce(topic, value=value, partition=target[1],
                                          on_delivery=confluent_cb(target, seq))
                        break
                    except BufferError:
                        cproducer.poll(0.05)
            else:
                kfutures.append((target, seq, kproducer.send(topic, value=value, partition=target[1])))
            sent[target] += 1
        cproducer.poll(0.002)
        reap_kafka_python()
        poll_consumer()
        if now >= end:
            return


def pump_while(what, proc, timeout):
    """Pumps while the command `proc` runs; its output once it exited 0."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        pump(0.2)
        if time.monotonic() > deadline:
            proc.kill()
            fail(f"{what} still running after {timeout}s: {shown(partitions() or {})}")
    out, err = proc.communicate()
    if proc.returncode != 0:
        fail(f"{what} exited {proc.returncode}\nstdout: {out}\nstderr: {err}")
    return out, err


def pump_until(what, fn, timeout):
    deadline = time.monotonic() + timeout
    while True:
        pump(0.2)
        got = fn()
        if got:
            return got
        if time.monotonic() > deadline:
            fail(f"timed out after {timeout}s waiting for {what}: {shown(partitions() or {})}")


def run_keel(args, what):
    started = time.monotonic()
    proc = subprocess.Popen([keel, *args, "-b", bootstrap], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    out, err = pump_while(what, proc, STEP_TIMEOUT)
    took = time.monotonic() - started
    log(f"{what}: exit 0 in {took:.1f}s; stderr: {err.strip()!r}")
    if failed:
        fail(f"{len(failed)} records failed delivery during {what}; first: {failed[:5]}")
    return took


pump_until("1,000 acknowledged records", lambda: ack_count[0] >= 1000, 60)
print("ADD-BROKER", flush=True)
pump_until("the harness's ADDED", lambda: harness_line() == "ADDED", 90)
pump_until("broker 4 in the metadata", lambda: (md := metadata()) is not None and 4 in md.brokers, 60)
log(f"broker 4 joined at {elapsed()}")

# --- 3. onto the new broker ---------------------------------------------------------------------
acked = ack_count[0]
took_grow = run_keel(["partitions", "reassign", "--generate", "--broker-ids", "1,2,3,4", "--topic", topic,
                      "--execute", "--wait", "120"], "keel partitions reassign --generate onto broker 4")
parts = pump_until("three replicas per partition with full ISRs",
                   lambda: settled(lambda r: len(r) == 3), 60)
held = sum(4 in pm.replicas for pm in parts.values())
check(held >= 3, f"broker 4 holds {held} of 12 replicas after the balanced plan: {shown(parts)}")
check(any(list(pm.replicas)[0] == 4 for pm in parts.values()),
      f"broker 4 is the preferred leader of no partition: {shown(parts)}")
log(f"grown: {shown(parts)}, {ack_count[0] - acked} records acknowledged meanwhile")
pump_until("1,000 more acknowledged records", lambda: ack_count[0] >= acked + 1000, 60)

# --- 4. broker 3 leaves -------------------------------------------------------------------------
acked = ack_count[0]
took_drain = run_keel(["broker", "decommission", "3", "--wait", "120"], "keel broker decommission 3")
parts = pump_until("no replica on broker 3, full ISRs", lambda: settled(lambda r: 3 not in r and len(r) == 3), 60)
md = metadata()
check(md is not None and 3 not in md.brokers and 4 in md.brokers,
      f"the metadata's brokers after the decommission: {sorted(md.brokers) if md else None}")
log(f"drained: {shown(parts)}, {ack_count[0] - acked} records acknowledged meanwhile")
pump_until("1,000 more acknowledged records", lambda: ack_count[0] >= acked + 1000, 60)

# --- 5. flush, read back, compare with the consumer ---------------------------------------------
total = queued()
left = cproducer.flush(120)
check_eq(left, 0, "confluent-kafka records still queued 120 s after the last was queued")
kproducer.flush(timeout=120)
reap_kafka_python(block=True)
if failed:
    fail(f"{len(failed)} of {total} records failed delivery; first: {failed[:5]}")
acked_total = sum(len(d) for d in delivered.values())
check_eq(acked_total, ack_count[0], "distinct acknowledged records (a record acknowledged twice?)")
check_eq(acked_total, total, "acknowledged records")
kproducer.close()
del cproducer
rows, highs = read_to_high_watermarks(bootstrap, TARGETS)
for t in TARGETS:
    check_sequenced(t, rows[t], highs[t], sent[t], delivered[t], FILLER)
pump_deadline = time.monotonic() + 60
while any(len(consumed[t]) < highs[t] for t in TARGETS):
    if time.monotonic() > pump_deadline:
        fail(f"the live consumer read { {t[1]: len(consumed[t]) for t in TARGETS} } of { {t[1]: highs[t] for t in TARGETS} }")
    poll_consumer()
    time.sleep(0.05)
for t in TARGETS:
    check_eq(consumed[t][:highs[t]], rows[t], f"partition {t[1]}: what the live consumer read")
consumer.close()
final = settled(lambda r: 3 not in r and len(r) == 3)
check(final is not None, f"the final replica sets: {shown(partitions() or {})}")
print("FINAL topic=" + topic + " " + " ".join(
    f"p{p}={','.join(str(r) for r in pm.replicas)}" for p, pm in sorted(final.items())), flush=True)
log(f"FIGURES records={total} read={sum(len(r) for r in rows.values())} grow={took_grow:.1f}s "
    f"decommission={took_drain:.1f}s client_errors={len(client_errors)}")
log(f"OK cluster_grow_and_drain {elapsed()}")
