"""Rolling restart: an idempotent acks=all producer keeps going while every broker of a
three-broker cluster, one after the other, is stopped with SIGTERM (a controlled shutdown:
its leaderships move away before it exits) and restarted with the same command line. No
record may fail delivery, and afterwards every record is in the log exactly once, in send
order, at the offset its delivery report gave.

usage: cluster_rolling_restart.py HOST:PORT,HOST:PORT,HOST:PORT [RATE]

Driven by node/tests/cluster.rs over stdin/stdout:
  1. creates `orders` (1 partition) and `orders-spread` (3 partitions), both with replication
     factor 3 and min.insync.replicas=2, and waits until every ISR holds all three brokers;
  2. produces at a steady RATE (default 1,000 records/s) over the four partitions, with
     enable.idempotence and acks=all;
  3. for each broker B of 1, 2, 3: once every ISR holds all three brokers again (an operator's
     "no under-replicated partitions" before the next step) and 1,000 more records are
     acknowledged, prints `STOP-NOW broker=B` and goes on producing; the harness sends B
     SIGTERM, waits for it to exit (status 0) and restarts it, and answers `RESTARTED B`;
  4. after the last restart and the ISRs full again, stops producing and flushes: every record
     must be acknowledged, none may fail;
  5. reads every partition from the beginning up to its high watermark and checks the log
     against the delivery reports.
Values are `P:SEQ:filler`, SEQ counting from 0 per partition in send order. Figures (acked,
read, the longest gap between two acknowledgements while each broker was down, how long each
ISR took to fill again) are printed on a `FIGURES` line.

Kafka's behaviour pinned: KIP-631's controlled shutdown (the broker heartbeats wantShutDown;
the controller moves its leaderships to ISR members and takes it out of every ISR before it
stops), so that the producer sees only retriable NOT_LEADER_OR_FOLLOWER answers, never a
failed delivery; idempotent retries neither duplicate nor reorder (KIP-98).
"""

import sys
import time

from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from interop_common import await_all, check_eq, check_sequenced, fail, harness_line, log, read_to_high_watermarks, stopwatch, topic_name, wait_until

if len(sys.argv) < 2:
    fail(f"usage: {sys.argv[0]} HOST:PORT,HOST:PORT,HOST:PORT [RATE]")
bootstrap = sys.argv[1]
RATE = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000
ACKS_BETWEEN_STOPS = 1_000
ISR_FULL_TIMEOUT = 60.0
BROKERS = [1, 2, 3]
orders = topic_name("orders")
spread = topic_name("orders-spread")
TARGETS = [(orders, 0), (spread, 0), (spread, 1), (spread, 2)]
FILLER = b"." * 64
elapsed = stopwatch()
admin = AdminClient({"bootstrap.servers": bootstrap})


def partition_metadata():
    """{(topic, partition): PartitionMetadata} for both topics, or None if one is missing or
    the request failed (a broker is down)."""
    try:
        md = admin.list_topics(timeout=5)
    except KafkaException:
        return None
    out = {}
    for t in (orders, spread):
        tm = md.topics.get(t)
        if tm is None or tm.error is not None:
            return None
        for p, pm in tm.partitions.items():
            out[(t, p)] = pm
    return out


def describe(parts):
    return {f"{'orders' if t == orders else 'spread'}[{p}]": (pm.leader, sorted(pm.isrs)) for (t, p), pm in sorted(parts.items())}


def all_in_sync():
    parts = partition_metadata()
    if parts is None or set(parts) != set(TARGETS):
        return None
    if all(pm.leader >= 0 and sorted(pm.isrs) == BROKERS for pm in parts.values()):
        return parts
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
parts = wait_until("every partition led with ISR [1, 2, 3]", all_in_sync, timeout=30)
log(f"topics {orders}, {spread}: (leader, isr) {describe(parts)} at {elapsed()}")

# --- 2-4. produce through the rolling restart ------------------------------------------------
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
    "reconnect.backoff.ms": 100,
    "reconnect.backoff.max.ms": 1000,
    "topic.metadata.refresh.interval.ms": 1000,
    "queue.buffering.max.messages": 1_000_000,
    "error_cb": on_error,
})

sent = {t: 0 for t in TARGETS}
delivered = {t: {} for t in TARGETS}
ack_count = [0]
failed = []
last_ack = [time.monotonic()]
longest_gap = [0.0]  # the longest time between two acknowledgements while a broker is down
measuring_gap = [False]


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
        now = time.monotonic()
        if measuring_gap[0]:
            longest_gap[0] = max(longest_gap[0], now - last_ack[0])
        last_ack[0] = now

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


produce_started = time.monotonic()


def pump(seconds):
    """Produces at RATE and serves delivery reports for `seconds`."""
    end = time.monotonic() + seconds
    while True:
        now = time.monotonic()
        due = int((now - produce_started) * RATE) - queued()
        if due > 0:
            produce(due)
        producer.poll(0.002)
        if now >= end:
            return


figures = []
deadline = time.monotonic() + 400
for broker in BROKERS:
    acked_before = ack_count[0]
    while ack_count[0] < acked_before + ACKS_BETWEEN_STOPS:
        pump(0.05)
        if time.monotonic() > deadline:
            fail(f"stuck before stopping broker {broker}: {ack_count[0]} acknowledged, {len(failed)} failed")
    parts = partition_metadata()
    print(f"STOP-NOW broker={broker} queued={queued()} acked={ack_count[0]} at={elapsed()} "
          f"(leader, isr) {describe(parts) if parts else 'no metadata'}", flush=True)
    stop_at = time.monotonic()
    measuring_gap[0] = True
    longest_gap[0] = 0.0
    last_ack[0] = stop_at
    while True:
        pump(0.01)
        line = harness_line()
        if line is not None:
            check_eq(line, f"RESTARTED {broker}", "the harness's answer to STOP-NOW")
            break
        if time.monotonic() > deadline:
            fail(f"no RESTARTED {broker} from the harness")
    restarted_at = time.monotonic()
    log(f"broker {broker} stopped and restarted in {restarted_at - stop_at:.1f}s: {queued()} queued, "
        f"{ack_count[0]} acknowledged, {len(failed)} failed")
    # The ISRs fill again before the next broker goes (an operator waits for no
    # under-replicated partitions); production goes on meanwhile.
    while True:
        pump(0.25)
        parts = all_in_sync()
        if parts is not None:
            break
        if time.monotonic() > restarted_at + ISR_FULL_TIMEOUT:
            shown = partition_metadata()
            fail(f"broker {broker} not back in every ISR {ISR_FULL_TIMEOUT}s after its restart: "
                 f"{describe(shown) if shown else 'no metadata'}")
    measuring_gap[0] = False
    isr_s = time.monotonic() - restarted_at
    figures.append(f"b{broker}:gap={longest_gap[0]:.2f}s,isr={isr_s:.1f}s")
    log(f"broker {broker} back in every ISR {isr_s:.1f}s after its restart; longest gap between acks "
        f"while it was away {longest_gap[0]:.2f}s: (leader, isr) {describe(parts)}")
    if failed:
        fail(f"{len(failed)} records failed delivery during the restart of broker {broker}; first: {failed[:5]}")

# --- 4. flush ----------------------------------------------------------------------------------
total = queued()
log(f"queued {total} records at {elapsed()}; acknowledged so far: {ack_count[0]}")
left = producer.flush(90)
log(f"flushed at {elapsed()}: {ack_count[0]} acknowledged, {len(failed)} failed, {left} still queued; "
    f"{len(client_errors)} client errors (last: {client_errors[-3:]})")
check_eq(left, 0, "records still queued 90 s after the last was queued")
if failed:
    fail(f"{len(failed)} of {total} records failed delivery during a rolling restart with controlled "
         f"shutdown (every one should be acknowledged); first: {failed[:5]}")
acked_total = sum(len(d) for d in delivered.values())
check_eq(acked_total, ack_count[0], "distinct acknowledged records (a record acknowledged twice?)")
check_eq(acked_total, total, "acknowledged records")
del producer

# --- 5. read everything back -----------------------------------------------------------------
rows, highs = read_to_high_watermarks(bootstrap, TARGETS)
read_total = sum(len(r) for r in rows.values())
for t in TARGETS:
    check_sequenced(t, rows[t], highs[t], sent[t], delivered[t], FILLER)
log(f"FIGURES acked={acked_total} read={read_total} failed=0 client_errors={len(client_errors)} {' '.join(figures)}")
log(f"every one of {acked_total} acknowledged records is in the log once, in order, at its reported offset")
log(f"OK cluster_rolling_restart {elapsed()}")
