"""Consumer groups against keel's group coordinator, with real clients.

usage: groups.py HOST:PORT kafka_python|confluent_split|kcat

kafka_python: a KafkaConsumer in a group reads 6 of 10 records one at a time and commits; a
  new consumer in the same group sees the commit (committed() == 6) and resumes exactly there:
  offsets 6..9, nothing before. The admin client's OffsetDelete of the partition is refused
  (GROUP_SUBSCRIBED_TO_TOPIC) while that consumer is in the group and succeeds once it left.
confluent_split: two confluent-kafka consumers in one group split a 4-partition topic (disjoint,
  non-empty assignments covering every partition); the second closes (LeaveGroup), the first
  takes over all 4 partitions; together they read every record.
kcat: `kcat -G` reads a topic from the beginning as a group and exits at the end; run again
  with the same group it reads nothing (the offsets were committed); after 3 more records it
  reads exactly those 3.
"""

import sys
import time

from interop_common import (
    bootstrap_from_argv,
    check,
    check_eq,
    fail,
    kcat_path,
    log,
    run,
    stopwatch,
    topic_name,
    wait_until,
)


def produce_confluent(bootstrap, topic, partitions, per_partition):
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(30)
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    errors = []
    for part in range(partitions):
        for i in range(per_partition):
            p.produce(topic, value=f"{part}-{i}".encode(), partition=part,
                      on_delivery=lambda err, msg: err and errors.append(err))
    check_eq(p.flush(30), 0, "records left unflushed")
    check(not errors, f"delivery errors: {errors}")


def kafka_python(bootstrap):
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    topic, group = topic_name("grp-kp"), topic_name("g-kp")
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    for i in range(10):
        producer.send(topic, value=f"r{i}".encode(), partition=0).get(timeout=30)
    producer.close()
    tp = TopicPartition(topic, 0)

    def consumer():
        c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                          enable_auto_commit=False, auto_offset_reset="earliest",
                          max_poll_records=1, session_timeout_ms=10000,
                          heartbeat_interval_ms=1000)
        c.subscribe([topic])
        return c

    c = consumer()
    seen = []
    deadline = time.monotonic() + 60
    while len(seen) < 6:
        if time.monotonic() > deadline:
            fail(f"first consumer read only {seen}")
        for records in c.poll(timeout_ms=500, max_records=1).values():
            seen.extend(r.offset for r in records)
    check_eq(seen, [0, 1, 2, 3, 4, 5], "first consumer's offsets")
    c.commit()
    check_eq(c.committed(tp), 6, "committed offset seen by the committing consumer")
    c.close()
    log("kafka-python: committed 6 and closed")

    c = consumer()
    check_eq(c.committed(tp), 6, "committed offset seen by a new consumer")
    seen = []
    deadline = time.monotonic() + 60
    while len(seen) < 4:
        if time.monotonic() > deadline:
            fail(f"second consumer read only {seen}")
        for records in c.poll(timeout_ms=500, max_records=1).values():
            seen.extend(r.offset for r in records)
    check_eq(seen, [6, 7, 8, 9], "second consumer resumes exactly after the commit")
    extra = c.poll(timeout_ms=1000)
    check(not any(extra.values()), f"nothing after the end: {extra}")
    c.commit()

    # OffsetDelete (KIP-496): refused while a member subscribes to the topic, done once the
    # group is empty; the group then has no offset for the partition.
    from kafka.admin import KafkaAdminClient
    from kafka.errors import GroupSubscribedToTopicError, NoError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    got = admin.delete_group_offsets(group, [tp])
    check_eq(got, {tp: GroupSubscribedToTopicError}, "OffsetDelete while subscribed")
    c.close()
    check_eq(admin.delete_group_offsets(group, [tp]), {tp: NoError}, "OffsetDelete once empty")
    left = admin.list_group_offsets({group: [tp]})[group]
    check(tp not in left or left[tp].offset == -1, f"no offset left after OffsetDelete: {left}")
    admin.close()
    log("kafka-python: resumed at 6, read 6..9; OffsetDelete refused while subscribed, done once empty")


def confluent_split(bootstrap):
    from confluent_kafka import Consumer

    topic, group = topic_name("grp-split"), topic_name("g-split")
    produce_confluent(bootstrap, topic, 4, 10)
    seen = set()

    def consumer():
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                      "auto.offset.reset": "earliest", "session.timeout.ms": 10000,
                      "heartbeat.interval.ms": 500, "enable.auto.commit": True,
                      "auto.commit.interval.ms": 200})
        c.subscribe([topic])
        return c

    def pump(*consumers):
        for c in consumers:
            m = c.poll(0.2)
            if m is not None:
                if m.error():
                    fail(f"consumer error: {m.error()}")
                seen.add((m.partition(), m.offset()))

    def parts(c):
        return sorted(tp.partition for tp in c.assignment())

    elapsed = stopwatch()
    c1 = consumer()
    wait_until("c1 gets all partitions", lambda: (pump(c1), parts(c1) == [0, 1, 2, 3])[1], 60, 0)
    log(f"c1 alone owns {parts(c1)} after {elapsed()}")
    c2 = consumer()

    def split():
        pump(c1, c2)
        a, b = parts(c1), parts(c2)
        return a and b and not set(a) & set(b) and sorted(a + b) == [0, 1, 2, 3]

    wait_until("the two consumers split the partitions", split, 60, 0)
    log(f"split: c1 {parts(c1)}, c2 {parts(c2)} after {elapsed()}")
    for _ in range(20):
        pump(c1, c2)
    c2.close()
    log("c2 closed (left the group)")
    wait_until("c1 takes over every partition", lambda: (pump(c1), parts(c1) == [0, 1, 2, 3])[1], 60, 0)
    log(f"c1 owns {parts(c1)} again after {elapsed()}")
    wait_until("every record read", lambda: (pump(c1), len(seen) == 40)[1], 60, 0)
    check_eq(sorted(seen), sorted((p, o) for p in range(4) for o in range(10)), "records read")
    c1.close()
    log("confluent: split, handover and every record read")


def kcat(bootstrap):
    topic, group = topic_name("grp-kcat"), topic_name("g-kcat")
    produce_confluent(bootstrap, topic, 2, 5)
    k = kcat_path()

    def consume():
        p = run([k, "-b", bootstrap, "-G", group, "-X", "auto.offset.reset=earliest",
                 "-q", "-e", "-f", "%p %o %s\\n", topic], timeout=90)
        return sorted(tuple(line.split(" ", 2)) for line in p.stdout.decode().splitlines() if line)

    got = consume()
    want = sorted((str(p), str(o), f"{p}-{o}") for p in range(2) for o in range(5))
    check_eq(got, want, "kcat -G first read")
    check_eq(consume(), [], "kcat -G again: the group's offsets were committed")
    from confluent_kafka import Producer

    pr = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for i in range(3):
        pr.produce(topic, value=f"late-{i}".encode(), partition=i % 2)
    check_eq(pr.flush(30), 0, "records left unflushed")
    got = consume()
    check_eq(sorted(v for _, _, v in got), ["late-0", "late-1", "late-2"], "kcat -G reads only the new records")
    log("kcat -G: read, committed, resumed")


def main():
    bootstrap = bootstrap_from_argv()
    if len(sys.argv) < 3:
        fail("which scenario?")
    {"kafka_python": kafka_python, "confluent_split": confluent_split, "kcat": kcat}[sys.argv[2]](bootstrap)
    log("OK")


if __name__ == "__main__":
    main()
