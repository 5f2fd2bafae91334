"""Crash test: an idempotent confluent-kafka producer (acks=all) keeps going while keel is
SIGKILLed and restarted; afterwards every acknowledged record is in the log exactly once, in
order per partition, at the offset its delivery report gave, and nothing unsent is there.

usage: crash_producer.py HOST:PORT [TOTAL] [KILLS] [RATE]

Driven by node/tests/interop.rs over stdin/stdout:
  1. creates a 3-partition topic and produces TOTAL records (default 100,000) at a steady RATE
     (default 30,000 records/s), never pausing, so records are always in flight;
  2. each time it passes a mark (TOTAL/4, TOTAL/2, 3*TOTAL/4 for the default KILLS 3), and
     once the broker has acknowledged 5,000 records since the last restart, it prints
     `KILL-NOW kill=K ...` and goes on producing; the harness SIGKILLs the broker, answers
     `KILLED` on stdin, and restarts the broker on the same port and data directory after a
     second's pause (the producer queues meanwhile, and librdkafka retries);
  3. flushes with a generous timeout and checks that every delivery report is a success;
  4. reads the three partitions from the beginning (assign(), no group) up to the high
     watermark and checks the log against the delivery reports.
Values are `P:SEQ:filler`, SEQ counting from 0 in each partition P in send order. Without
the harness (run by hand), pass KILLS 0 to skip the kill handshake.
"""

import json
import sys
import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from interop_common import await_all, bootstrap_from_argv, check_eq, check_sequenced, fail, harness_line, log, read_to_high_watermarks, stopwatch, topic_name

bootstrap = bootstrap_from_argv()
TOTAL = int(sys.argv[2]) if len(sys.argv) > 2 else 100_000
KILLS = int(sys.argv[3]) if len(sys.argv) > 3 else 3
RATE = int(sys.argv[4]) if len(sys.argv) > 4 else 30_000
PARTITIONS = 3
topic = topic_name("crash")
elapsed = stopwatch()

admin = AdminClient({"bootstrap.servers": bootstrap})
await_all(admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)], request_timeout=30),
          "create_topics")
del admin

client_errors = []


def on_error(err):
    client_errors.append(err)
    if err.fatal():
        fail(f"producer fatal error at {elapsed()}: {err}")


stats = {}


def on_stats(text):
    stats["last"] = json.loads(text)


def stats_summary():
    st = stats.get("last")
    if not st:
        return "no statistics"
    eos = st.get("eos", {})
    # librdkafka recreates its broker objects on reconnect, so per-broker counters restart;
    # the idempotence state is what tells whether the producer had to bump its epoch.
    return (f"producer id {eos.get('producer_id')} epoch {eos.get('producer_epoch')} "
            f"(epoch changes {eos.get('epoch_cnt')}), idempotence state {eos.get('idemp_state')}")


producer = Producer(
    {
        "bootstrap.servers": bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
        "message.timeout.ms": 150000,
        "request.timeout.ms": 20000,
        "retry.backoff.ms": 100,
        "reconnect.backoff.ms": 100,
        "reconnect.backoff.max.ms": 1000,
        "queue.buffering.max.messages": TOTAL + 1000,
        "queue.buffering.max.kbytes": 1048576,
        "error_cb": on_error,
        "stats_cb": on_stats,
        "statistics.interval.ms": 500,
    }
)

FILLER = b"." * 80
sent_count = [0] * PARTITIONS  # next sequence number per partition
delivered = [dict() for _ in range(PARTITIONS)]  # seq -> offset
failed = []  # (partition, seq, error)


def make_cb(p, seq):
    def cb(err, msg):
        if err is not None:
            failed.append((p, seq, str(err)))
        else:
            if msg.partition() != p:
                failed.append((p, seq, f"delivered to partition {msg.partition()}"))
            delivered[p][seq] = msg.offset()

    return cb


def acked():
    return sum(len(d) for d in delivered)


def produce(n):
    for _ in range(n):
        i = sum(sent_count)
        p = i % PARTITIONS
        seq = sent_count[p]
        value = f"{p}:{seq}:".encode() + FILLER
        while True:
            try:
                producer.produce(topic, key=f"k{seq % 64}".encode(), value=value, partition=p, on_delivery=make_cb(p, seq))
                break
            except BufferError:
                producer.poll(0.05)
        sent_count[p] += 1
        if i % 1000 == 0:
            producer.poll(0)


# --- 1-2. produce at a steady rate, with the kills in the middle ----------------------------
marks = [TOTAL * (k + 1) // (KILLS + 1) for k in range(KILLS)]
kills_done = 0
waiting_for_killed = False
acked_at_restart = 0
produce_started = time.monotonic()
deadline = produce_started + 120
while sum(sent_count) < TOTAL or waiting_for_killed or kills_done < KILLS:
    now = time.monotonic()
    if now > deadline:
        fail(f"producing: stuck at {elapsed()} with {sum(sent_count)} queued, {acked()} acknowledged, "
             f"{kills_done} of {KILLS} kills done (waiting for KILLED: {waiting_for_killed}); {stats_summary()}")
    due = min(TOTAL, int((now - produce_started) * RATE)) - sum(sent_count)
    if due > 0:
        produce(due)
    producer.poll(0.002)
    if waiting_for_killed:
        line = harness_line()
        if line is not None:
            check_eq(line, "KILLED", f"kill {kills_done + 1}: the harness's answer to KILL-NOW")
            kills_done += 1
            waiting_for_killed = False
            acked_at_restart = acked()
            log(f"kill {kills_done} done at {elapsed()}: {sum(sent_count)} queued, {acked()} acknowledged, "
                f"{len(failed)} failed, {sum(sent_count) - acked() - len(failed)} not yet acknowledged")
    elif kills_done < KILLS and sum(sent_count) >= marks[kills_done] and (
            kills_done == 0 or acked() >= acked_at_restart + 5000 or acked() + len(failed) == sum(sent_count)):
        print(f"KILL-NOW kill={kills_done + 1} produced={sum(sent_count)} acked={acked()} at={elapsed()}", flush=True)
        waiting_for_killed = True

# --- 3. flush -------------------------------------------------------------------------------
log(f"queued all {TOTAL} records at {elapsed()}; acknowledged so far: {acked()}")
left = producer.flush(170)
log(f"flushed at {elapsed()}: {acked()} acknowledged, {len(failed)} failed, {left} still queued; "
    f"{len(client_errors)} client errors (first: {[str(e) for e in client_errors[:3]]})")
producer.poll(0.6)  # one more statistics report
log(f"producer statistics: {stats_summary()}")
check_eq(left, 0, "records still queued after flush(170)")
if failed:
    fail(f"{len(failed)} of {TOTAL} records failed delivery; first: {failed[:5]}")
check_eq(acked(), TOTAL, "delivery reports")
del producer

# --- 4. read everything back -----------------------------------------------------------------
targets = [(topic, p) for p in range(PARTITIONS)]
rows, highs = read_to_high_watermarks(bootstrap, targets)
log(f"high watermarks {[highs[t] for t in targets]}; sent per partition {sent_count}")
log(f"read back {sum(len(r) for r in rows.values())} records at {elapsed()}")
for t in targets:
    check_sequenced(t, rows[t], highs[t], sent_count[t[1]], delivered[t[1]], FILLER)
log(f"every one of {TOTAL} acknowledged records is in the log once, in order, at its reported offset")
log(f"OK crash_producer {elapsed()}")
