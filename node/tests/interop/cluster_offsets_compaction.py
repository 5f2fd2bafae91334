"""A consumer group's committed offsets survive the compaction of __consumer_offsets and a
coordinator move.

usage: cluster_offsets_compaction.py HOST:PORT,HOST:PORT,HOST:PORT

Driven by node/tests/cluster.rs over stdin/stdout, with confluent-kafka (librdkafka), on brokers
started with `offsets.topic.segment.bytes` small (a segment holds a few commits) and a cleaner
that looks every 200 ms:
  1. creates a 1-partition topic with replication factor 3, produces TOTAL records;
  2. consumer C1 in group G commits offsets 1, 2, ..., TOTAL one by one (synchronously): TOTAL
     versions of one key of G's `__consumer_offsets` partition, over many segments. Prints
     `COMPACT-CHECK offsets_partition=P coordinator=ID`; the harness waits until every replica
     of that partition has been cleaned (its `cleaner.checkpoint` is written) and its segments
     shrank, and answers `COMPACTED`;
  3. committed() still gives TOTAL. Prints `KILL-NOW coordinator=ID`; the harness SIGKILLs that
     broker and answers `KILLED`;
  4. a new coordinator loads G from its compacted replica of the partition: committed(), asked
     until a coordinator answers, gives exactly TOTAL; LATE more records go to the topic, and a
     new consumer C2 in G resumes at exactly TOTAL and reads TOTAL..TOTAL+LATE-1, commits the
     end, read back exactly. Prints `RESTART-NOW`; the harness restarts the killed broker and
     answers `RESTARTED`; committed() still gives the end.
Figures go on a `FIGURES` line.

Kafka's behaviour pinned: `__consumer_offsets` is compacted (cleanup.policy=compact), keeping
the latest commit per (group, topic, partition) key, and a new coordinator's
GroupMetadataManager.loadGroupsAndOffsets reads the compacted partition: the latest commit, not
an older one the cleaner removed the successors of, nor nothing.
"""

import sys
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from interop_common import check, check_eq, fail, harness_line, log, stopwatch, topic_name, wait_until

if len(sys.argv) < 2:
    fail(f"usage: {sys.argv[0]} HOST:PORT,HOST:PORT,HOST:PORT")
bootstrap = sys.argv[1]
TOTAL = 200  # records before the kill, and commits of them one by one
LATE = 10  # records after the kill
BROKERS = [1, 2, 3]
OFFSETS_TOPIC = "__consumer_offsets"
topic = topic_name("oc")
group = topic_name("oc-group")
elapsed = stopwatch()
admin = AdminClient({"bootstrap.servers": bootstrap})


def java_hash(s):
    """Java's String.hashCode over UTF-16 code units, as a signed 32-bit int."""
    h = 0
    data = s.encode("utf-16-be")
    for i in range(0, len(data), 2):
        h = (31 * h + int.from_bytes(data[i:i + 2], "big")) & 0xFFFFFFFF
    return h - (1 << 32) if h >= 1 << 31 else h


def offsets_partition(num_partitions):
    """Kafka's GroupCoordinator.partitionFor: Utils.abs(groupId.hashCode) % partitions."""
    h = java_hash(group)
    return (0 if h == -(1 << 31) else abs(h)) % num_partitions


def metadata(topics):
    md = admin.list_topics(timeout=5)
    out = {}
    for t in topics:
        tm = md.topics.get(t)
        if tm is None or tm.error is not None:
            return None
        out[t] = tm.partitions
    return out


def consumer():
    return Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "session.timeout.ms": 10000,
        "heartbeat.interval.ms": 500,
        "topic.metadata.refresh.interval.ms": 1000,
        "reconnect.backoff.ms": 100,
        "reconnect.backoff.max.ms": 1000,
        "retry.backoff.ms": 100,
    })


def committed(c, timeout=10):
    got = c.committed([TopicPartition(topic, 0)], timeout=timeout)
    check_eq(len(got), 1, "committed() partitions")
    if got[0].error is not None:
        raise KafkaException(got[0].error)
    return got[0].offset


def produce(first, count):
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    errors = []
    for i in range(first, first + count):
        p.produce(topic, value=str(i).encode(), partition=0,
                  on_delivery=lambda err, msg: errors.append(str(err)) if err else None)
    check_eq(p.flush(30), 0, "records left unflushed")
    check(not errors, f"delivery errors: {errors[:5]}")


def wait_harness(answer):
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = harness_line(0.5)
        if line is not None:
            check_eq(line, answer, "the harness's answer")
            return
    fail(f"no {answer} from the harness within 120 s")


# --- 1. topic and records ---------------------------------------------------------------------
admin.create_topics([NewTopic(topic, 1, 3, config={"min.insync.replicas": "2"})],
                    request_timeout=30)[topic].result(30)


def in_sync():
    md = metadata([topic])
    return md is not None and 0 in md[topic] and sorted(md[topic][0].isrs) == BROKERS


wait_until("the topic led with ISR [1, 2, 3]", in_sync, timeout=30)
produce(0, TOTAL)
log(f"produced {TOTAL} records to {topic} at {elapsed()}")

# --- 2. TOTAL commits of one key, then compaction ---------------------------------------------
c1 = consumer()
c1.assign([TopicPartition(topic, 0, 0)])
started = time.monotonic()
for i in range(1, TOTAL + 1):
    c1.commit(offsets=[TopicPartition(topic, 0, i)], asynchronous=False)
commits_s = time.monotonic() - started
check_eq(committed(c1), TOTAL, "committed offset after the commits")
md = metadata([OFFSETS_TOPIC])
check(md is not None, f"metadata lists {OFFSETS_TOPIC}")
part = offsets_partition(len(md[OFFSETS_TOPIC]))
coordinator = md[OFFSETS_TOPIC][part].leader
check(coordinator in BROKERS, f"leader of {OFFSETS_TOPIC}[{part}]: {coordinator}")
check_eq(sorted(md[OFFSETS_TOPIC][part].replicas), BROKERS, f"replicas of {OFFSETS_TOPIC}[{part}]")
log(f"{TOTAL} commits in {commits_s:.1f}s")
print(f"COMPACT-CHECK offsets_partition={part} coordinator={coordinator}", flush=True)
wait_harness("COMPACTED")
check_eq(committed(c1), TOTAL, "committed offset after the compaction")
c1.close()

# --- 3. the coordinator's broker goes -----------------------------------------------------------
print(f"KILL-NOW coordinator={coordinator}", flush=True)
wait_harness("KILLED")
killed_at = time.monotonic()

# --- 4. the new coordinator loads the compacted partition ------------------------------------
c2 = consumer()
answers = []


def committed_from_new_coordinator():
    try:
        answers.append(committed(c2, timeout=5))
        return True
    except KafkaException as e:
        log(f"committed() {time.monotonic() - killed_at:.1f}s after the kill: {e}")
        return False


wait_until("a coordinator answers OffsetFetch after the kill", committed_from_new_coordinator,
           timeout=60, interval=0.5)
move_s = time.monotonic() - killed_at
check_eq(answers[-1], TOTAL, "committed offset loaded by the new coordinator")
d = admin.describe_consumer_groups([group], request_timeout=10)[group].result(15)
check(d.coordinator.id != coordinator, f"a new coordinator: {d.coordinator.id}")
produce(TOTAL, LATE)
c2.subscribe([topic])
values = []
deadline = time.monotonic() + 45
while len(values) < LATE:
    if time.monotonic() > deadline:
        fail(f"C2 read {values} of {LATE} records after the commit")
    m = c2.poll(0.2)
    if m is None:
        continue
    if m.error():
        if m.error().code() != KafkaError._PARTITION_EOF:
            log(f"C2: {m.error()}")
        continue
    check_eq(m.offset(), TOTAL + len(values), "C2's next offset (it resumes at the commit)")
    values.append(int(m.value()))
check_eq(values, list(range(TOTAL, TOTAL + LATE)), "C2's records")
c2.commit(offsets=[TopicPartition(topic, 0, TOTAL + LATE)], asynchronous=False)
check_eq(committed(c2), TOTAL + LATE, "committed offset after C2's commit")
print("RESTART-NOW", flush=True)
wait_harness("RESTARTED")
check_eq(committed(c2), TOTAL + LATE, "committed offset after the restart")
c2.close()
print(f"FIGURES commits={TOTAL} commit_s={commits_s:.1f} coordinator_move_s={move_s:.1f} "
      f"old_coordinator={coordinator} new_coordinator={d.coordinator.id} offsets_partition={part} "
      f"total={elapsed()}", flush=True)
