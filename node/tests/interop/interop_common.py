"""Shared helpers for keel's interop scripts (run by node/tests/interop.rs and
node/tests/cluster.rs, or by hand: `.venv/bin/python node/tests/interop/SCRIPT.py 127.0.0.1:PORT`).
Python puts a script's own directory first on sys.path, so the scripts import this module by
name from wherever they are run.

Every check that fails ends the script with exit code 1 and a line starting with `FAIL:` on
stderr that says what was expected and what came back.
"""

import os
import select
import subprocess
import sys
import time
import uuid


class Mismatch(Exception):
    pass


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def check(cond, msg):
    if not cond:
        fail(msg)


def check_eq(got, want, what):
    if got != want:
        fail(f"{what}: expected {want!r}, got {got!r}")


def log(msg):
    print(msg, flush=True)


def bootstrap_from_argv():
    if len(sys.argv) < 2:
        fail(f"usage: {sys.argv[0]} HOST:PORT [args...]")
    return sys.argv[1]


def stopwatch():
    """A function that says how long ago stopwatch() was called, as `12.3s`."""
    t0 = time.monotonic()
    return lambda: f"{time.monotonic() - t0:.1f}s"


def harness_line(timeout=0.0):
    """The next line the harness (the Rust test) wrote on stdin, stripped, or None if none came
    within `timeout` seconds; fails if the harness closed stdin."""
    ready, _, _ = select.select([sys.stdin], [], [], timeout)
    if not ready:
        return None
    line = sys.stdin.readline()
    if line == "":
        fail("the harness closed stdin")
    return line.strip()


def topic_name(prefix):
    """A fresh topic name, so reruns against one broker never see old data."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait_until(what, fn, timeout=20.0, interval=0.2):
    """Calls fn until it returns a truthy value; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = fn()
            if last:
                return last
        except Exception as e:  # noqa: BLE001 - reported below if it never succeeds
            last = e
        if time.monotonic() >= deadline:
            fail(f"timed out after {timeout}s waiting for {what} (last result: {last!r})")
        time.sleep(interval)


def run(cmd, timeout=30, input_bytes=None):
    """Runs a command (kcat); fails the script on a non-zero exit or a timeout."""
    try:
        p = subprocess.run(cmd, input=input_bytes, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        fail(f"timed out after {timeout}s: {' '.join(cmd)}\nstderr: {(e.stderr or b'').decode(errors='replace')}")
    if p.returncode != 0:
        fail(
            f"exit code {p.returncode}: {' '.join(cmd)}\n"
            f"stdout: {p.stdout.decode(errors='replace')}\nstderr: {p.stderr.decode(errors='replace')}"
        )
    return p


def kcat_path():
    for d in os.environ.get("PATH", "").split(os.pathsep):
        p = os.path.join(d, "kcat")
        if os.access(p, os.X_OK):
            return p
    fail("kcat not found on PATH: run .ci/clients.sh")


def assign_consumer(bootstrap, extra=None):
    """A confluent-kafka Consumer for assign() only (no consumer group, no commits) that reports
    the end of each partition and fails on an out-of-range offset; `extra` adds or overrides
    settings."""
    from confluent_kafka import Consumer

    return Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "keel-interop-unused",  # required by the client; no group API is used
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "error",
        **(extra or {}),
    })


def confluent_consume_all(bootstrap, topic, partitions, expected_counts, timeout=30.0, extra=None):
    """Reads every partition of `topic` from the beginning with assign() (no consumer group) until
    each partition has delivered expected_counts[p] records; returns {p: [Message]}."""
    from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

    c = assign_consumer(bootstrap, {
        "enable.auto.offset.store": False,
        "topic.metadata.refresh.interval.ms": 2000,
        **(extra or {}),
    })
    try:
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        got = {p: [] for p in partitions}
        deadline = time.monotonic() + timeout
        while any(len(got[p]) < expected_counts[p] for p in partitions):
            if time.monotonic() > deadline:
                fail(
                    f"confluent-kafka consumer of {topic}: timed out after {timeout}s with "
                    f"{ {p: len(got[p]) for p in partitions} } records of {expected_counts}"
                )
            for m in c.consume(num_messages=10000, timeout=0.5):
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        continue
                    fail(f"confluent-kafka consumer of {topic}: error {m.error()}")
                check(m.partition() in got, f"record from unassigned partition {m.partition()}")
                got[m.partition()].append(m)
        # Nothing more than expected: poll a little longer for extra records.
        for m in c.consume(num_messages=10000, timeout=0.5):
            if not m.error():
                fail(
                    f"confluent-kafka consumer of {topic}: record beyond the expected ones: "
                    f"partition {m.partition()} offset {m.offset()} value {m.value()!r}"
                )
        return got
    finally:
        c.close()


def await_all(futures, what, timeout=30):
    """Waits for every future of an AdminClient call ({name: future}); the first that raises
    fails the script with `what NAME: error`."""
    from confluent_kafka import KafkaException

    for name, f in futures.items():
        try:
            f.result(timeout=timeout)
        except KafkaException as e:
            fail(f"{what} {name}: {e}")


def tp_name(target):
    """`topic[partition]` for a (topic, partition) pair."""
    return f"{target[0]}[{target[1]}]"


def read_to_high_watermarks(bootstrap, targets, timeout=60.0):
    """Reads each (topic, partition) of `targets` from the beginning with assign() (no consumer
    group) up to the high watermark it had when reading began; each log must start at offset 0.
    Returns ({target: [(offset, value)] up to its high watermark}, {target: high watermark})."""
    from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

    consumer = assign_consumer(bootstrap)
    logged = {t: [] for t in targets}
    highs = {}
    try:
        for t in targets:
            lo, hi = consumer.get_watermark_offsets(TopicPartition(t[0], t[1]), timeout=15)
            check_eq(lo, 0, f"{tp_name(t)} log start offset")
            highs[t] = hi
        consumer.assign([TopicPartition(t[0], t[1], OFFSET_BEGINNING) for t in targets])
        deadline = time.monotonic() + timeout
        while any(len(logged[t]) < highs[t] for t in targets):
            if time.monotonic() > deadline:
                fail(f"reading back: timed out with { {tp_name(t): len(logged[t]) for t in targets} } "
                     f"of high watermarks { {tp_name(t): highs[t] for t in targets} }")
            for m in consumer.consume(num_messages=10000, timeout=0.5):
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        continue
                    fail(f"reading back: {m.error()}")
                logged[(m.topic(), m.partition())].append((m.offset(), m.value()))
    finally:
        consumer.close()
    return {t: logged[t][:highs[t]] for t in targets}, highs


def check_sequenced(target, rows, high, sent, delivered, filler):
    """Checks the log of one (topic, partition) against what an idempotent producer sent to it.

    rows: [(offset, value)] read up to the high watermark `high`; values are `P:SEQ:filler`, P the
    partition and SEQ counting from 0 in send order, `sent` of them; delivered: {SEQ: offset} from
    the successful delivery reports. The offsets run 0..high without gaps; every value was sent
    to this partition, appears once (no duplicate) and in send order; every acknowledged record
    is there at the offset its report gave; and every record sent is there."""
    where = tp_name(target)
    check_eq([o for o, _ in rows], list(range(high)), f"{where}: offsets 0..{high} without gaps")
    seen = {}
    prev = -1
    for off, value in rows:
        try:
            vp, vseq, vfiller = value.split(b":", 2)
            vp, vseq = int(vp), int(vseq)
        except ValueError:
            fail(f"{where} offset {off}: value {value[:40]!r} was never sent")
        check(vp == target[1] and vfiller == filler and 0 <= vseq < sent,
              f"{where} offset {off}: value {value[:40]!r} was never sent to this partition")
        if vseq in seen:
            fail(f"{where}: sequence {vseq} appears twice, at offsets {seen[vseq]} and {off} (duplicate)")
        check(vseq > prev, f"{where} offset {off}: sequence {vseq} after {prev} (out of order)")
        seen[vseq] = off
        prev = vseq
    for seq, off in delivered.items():
        if seq not in seen:
            fail(f"{where}: acknowledged record seq {seq} (reported at offset {off}) is missing from the log")
        check_eq(seen[seq], off, f"{where}: offset of seq {seq} (delivery report vs log)")
    check_eq(len(seen), sent, f"{where}: number of records")
