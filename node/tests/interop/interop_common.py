"""Shared helpers for keel's interop scripts (run by node/tests/interop.rs, or by hand:
`.venv/bin/python node/tests/interop/SCRIPT.py 127.0.0.1:PORT`).

Every check that fails ends the script with exit code 1 and a line starting with `FAIL:` on
stderr that says what was expected and what came back.
"""

import os
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


def confluent_consume_all(bootstrap, topic, partitions, expected_counts, timeout=30.0, extra=None):
    """Reads every partition of `topic` from the beginning with assign() (no consumer group) until
    each partition has delivered expected_counts[p] records; returns {p: [Message]}."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    conf = {
        "bootstrap.servers": bootstrap,
        "group.id": "keel-interop-unused",  # required by the client; no group API is used
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "error",
        "topic.metadata.refresh.interval.ms": 2000,
    }
    conf.update(extra or {})
    c = Consumer(conf)
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
