"""Client quotas with a real client (KIP-13, KIP-219): a confluent-kafka producer whose client
id has a produce quota is throttled (librdkafka reports the broker's throttle_time_ms in its
statistics) and takes at least as long as the quota allows; one with another client id is not.

Usage: quota_clients.py PORT QUOTA_BYTES_PER_S. The quota is set by the Rust test before."""

import json
import sys
import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

port, quota = sys.argv[1], int(sys.argv[2])
bootstrap = f"127.0.0.1:{port}"
admin = AdminClient({"bootstrap.servers": bootstrap})
for f in admin.create_topics([NewTopic("quota", 1, 1)]).values():
    f.result(30)

VALUE = b"x" * 10_000
# Four rounds of half the bytes the quota lets through in its 10 s minimum window: the third
# takes the rate to 1.5 times the quota and is answered with a throttle of about 5 s (KIP-13),
# which the fourth waits out (the broker does not read it before: KIP-219). A single burst
# would not show it: a throttle delays the requests after the answer that carries it.
ROUND = quota * 5 // len(VALUE)
ROUNDS = 4
COUNT = ROUND * ROUNDS


def produce(client_id):
    throttles = []

    def stats(text):
        for b in json.loads(text).get("brokers", {}).values():
            throttles.append(b.get("throttle", {}).get("max", 0))

    p = Producer(
        {
            "bootstrap.servers": bootstrap,
            "client.id": client_id,
            "statistics.interval.ms": 200,
            "stats_cb": stats,
            "linger.ms": 5,
        }
    )
    failed = []
    started = time.monotonic()
    for _ in range(ROUNDS):
        for _ in range(ROUND):
            while True:
                try:
                    p.produce("quota", VALUE, on_delivery=lambda e, m: e and failed.append(e))
                    break
                except BufferError:
                    p.poll(0.05)
            p.poll(0)
        assert p.flush(120) == 0, "undelivered messages"
    elapsed = time.monotonic() - started
    time.sleep(0.5)
    p.poll(0)
    assert not failed, failed
    return elapsed, max(throttles, default=0)


elapsed, throttle = produce("throttled")
print(f"throttled client: {COUNT} x {len(VALUE)} bytes in {elapsed:.1f} s, max throttle {throttle} ms", flush=True)
assert throttle > 0, "the broker never throttled the client over its quota"
# The fourth round waited out the throttle of about 5 s the third was answered with.
assert elapsed >= 4.0, f"{elapsed:.1f} s: faster than the quota allows"
elapsed, throttle = produce("free")
print(f"free client: {COUNT} x {len(VALUE)} bytes in {elapsed:.1f} s, max throttle {throttle} ms", flush=True)
assert throttle == 0, "a client without a quota was throttled"
print("quota checks passed", flush=True)
