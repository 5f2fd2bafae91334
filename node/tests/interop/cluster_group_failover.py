"""A consumer group survives the SIGKILL of its coordinator's broker, and that broker's restart.

usage: cluster_group_failover.py HOST:PORT,HOST:PORT,HOST:PORT

Driven by node/tests/cluster.rs over stdin/stdout, with confluent-kafka (librdkafka):
  1. creates a 4-partition topic with replication factor 3 (min.insync.replicas=2), waits for
     every ISR to hold brokers 1, 2 and 3, and produces 100 records per partition (acks=all);
  2. consumer C1 subscribes in group G and processes offsets 0..29 of every partition (each
     partition paused at 30), commits {p: 30} synchronously and reads it back with committed();
  3. finds G's coordinator twice: the leader of `__consumer_offsets` partition
     abs(javaHash(G)) % partitions from Metadata, and DescribeGroups' coordinator (via
     FindCoordinator); they must agree. Prints `KILL-NOW coordinator=ID`; the harness
     SIGKILLs that broker and answers `KILLED`;
  4. C1, still the same member, retries the commit of {p: 30} until a coordinator takes it (the
     coordinator move time); DescribeGroups then names the new leader of that offsets partition
     and C1's member id as the only member, and committed() gives 30 everywhere; C1 processes
     30..59 of every partition, commits {p: 60}, and committed() gives exactly 60 everywhere.
     C1 was assigned once and never rebalanced up to here; it closes (LeaveGroup);
  5. a new consumer C2 in G sees committed() == 60 everywhere before it reads, resumes at exactly
     60 and reads 60..99 of every partition and nothing more, commits {p: 100}; closes. Prints
     `RESTART-NOW`; the harness restarts the killed broker and answers `RESTARTED`;
  6. once the restarted broker is back in every ISR (the topic's and G's offsets partition), 10
     more records go to each partition; a new consumer C3 in G sees committed() == 100, reads
     exactly offsets 100..109 of every partition and commits {p: 110}, read back exactly.
Every record is processed exactly once over C1, C2 and C3, each at the offset it was produced
at. Figures go on a `FIGURES` line.

Kafka's behaviour pinned: the group coordinator is the leader of the group's
`__consumer_offsets` partition (GroupCoordinator.partitionFor); a new leader loads the group and
its committed offsets from that partition (GroupMetadataManager.loadGroupsAndOffsets), so a
commit acknowledged before the failover is neither lost nor moved back, and the group's member
keeps its generation.
"""

import sys
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from interop_common import check, check_eq, fail, harness_line, log, stopwatch, topic_name, wait_until

if len(sys.argv) < 2:
    fail(f"usage: {sys.argv[0]} HOST:PORT,HOST:PORT,HOST:PORT")
bootstrap = sys.argv[1]
PARTITIONS = 4
FIRST = 30  # C1 commits here before the kill
SECOND = 60  # ... and here after it
TOTAL = 100  # records per partition before the restart
LATE = 10  # records per partition after the restart
BROKERS = [1, 2, 3]
OFFSETS_TOPIC = "__consumer_offsets"
topic = topic_name("gf")
group = topic_name("gf-group")
elapsed = stopwatch()
admin = AdminClient({"bootstrap.servers": bootstrap})
PARTS = list(range(PARTITIONS))


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


def tps(offsets):
    return [TopicPartition(topic, p, o) for p, o in sorted(offsets.items())]


def committed(c):
    """{p: committed offset} of G for the topic, through consumer c (an OffsetFetch)."""
    got = c.committed([TopicPartition(topic, p) for p in PARTS], timeout=15)
    for tp in got:
        if tp.error is not None:
            fail(f"committed(): {tp.topic}[{tp.partition}]: {tp.error}")
    return {tp.partition: tp.offset for tp in got}


def produce(first, count):
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    offsets = {}
    errors = []

    def cb(err, msg):
        if err is not None:
            errors.append(str(err))
        else:
            offsets[(msg.partition(), msg.value())] = msg.offset()

    for part in PARTS:
        for i in range(first, first + count):
            p.produce(topic, value=f"{part}:{i}".encode(), partition=part, on_delivery=cb)
    check_eq(p.flush(30), 0, "records left unflushed")
    check(not errors, f"delivery errors: {errors[:5]}")
    for (part, value), off in offsets.items():
        check_eq(off, int(value.split(b":")[1]), f"offset of {value!r} in partition {part}")
    check_eq(len(offsets), PARTITIONS * count, "records acknowledged")


def metadata(topics):
    md = admin.list_topics(timeout=5)
    out = {}
    for t in topics:
        tm = md.topics.get(t)
        if tm is None or tm.error is not None:
            return None
        out[t] = tm.partitions
    return out


# --- 1. topic and records ---------------------------------------------------------------------
admin.create_topics([NewTopic(topic, PARTITIONS, 3, config={"min.insync.replicas": "2"})],
                    request_timeout=30)[topic].result(30)


def all_in_sync():
    md = metadata([topic])
    if md is None or sorted(md[topic]) != PARTS:
        return None
    return all(pm.leader > 0 and sorted(pm.isrs) == BROKERS for pm in md[topic].values())


wait_until("every partition of the topic led with ISR [1, 2, 3]", all_in_sync, timeout=30)
produce(0, TOTAL)
log(f"produced {TOTAL} records to each of {PARTITIONS} partitions of {topic} at {elapsed()}")

# --- 2. C1 processes 0..29 and commits -----------------------------------------------------------
processed = {p: [] for p in PARTS}  # every record processed, over C1, C2 and C3: (offset, value)
rebalances = []


def consumer(name):
    def on_assign(c, parts):
        rebalances.append((name, "assign", sorted(tp.partition for tp in parts), elapsed()))

    def on_revoke(c, parts):
        rebalances.append((name, "revoke", sorted(tp.partition for tp in parts), elapsed()))

    c = Consumer({
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
    c.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
    return c


def process_until(c, name, limit, timeout=45.0):
    """Processes, with consumer c, the records of every partition in offset order until each has
    reached `limit` (exclusive); a partition that reaches it is paused. A record at an offset
    other than the next one expected fails, except at or past `limit` (fetched ahead: dropped,
    and the partition is paused and sought back to `limit`)."""
    deadline = time.monotonic() + timeout
    paused = set()
    while len(paused) < PARTITIONS:
        if time.monotonic() > deadline:
            fail(f"{name}: timed out reading up to {limit}: processed "
                 f"{ {p: len(processed[p]) for p in PARTS} }, assignment "
                 f"{sorted(tp.partition for tp in c.assignment())}, rebalances {rebalances}")
        for p in PARTS:
            if p not in paused and len(processed[p]) >= limit and any(tp.partition == p for tp in c.assignment()):
                c.pause([TopicPartition(topic, p)])
                paused.add(p)
        m = c.poll(0.2)
        if m is None:
            continue
        if m.error():
            if m.error().code() == KafkaError._PARTITION_EOF:
                continue
            log(f"{name}: consumer error at {elapsed()}: {m.error()}")
            continue
        p, off = m.partition(), m.offset()
        nxt = len(processed[p])
        if off >= limit and off >= nxt:
            continue  # fetched ahead of the limit; never processed
        check_eq(off, nxt, f"{name}: offset of the next record of partition {p}")
        check_eq(m.value(), f"{p}:{off}".encode(), f"{name}: value at partition {p} offset {off}")
        processed[p].append((off, m.value()))


def resume(c, at):
    parts = [TopicPartition(topic, p, at) for p in PARTS]
    c.resume(parts)
    for tp in parts:
        c.seek(tp)


c1 = consumer("C1")
process_until(c1, "C1", FIRST)
check_eq(sorted(tp.partition for tp in c1.assignment()), PARTS, "C1's assignment (alone in the group)")
c1.commit(offsets=tps({p: FIRST for p in PARTS}), asynchronous=False)
check_eq(committed(c1), {p: FIRST for p in PARTS}, "committed offsets after C1's first commit")
log(f"C1 processed 0..{FIRST - 1} of every partition and committed {FIRST} at {elapsed()}")

# --- 3. find the coordinator -----------------------------------------------------------------------
md = metadata([OFFSETS_TOPIC, topic])
check(md is not None, f"metadata lists {OFFSETS_TOPIC}")
offsets_part = offsets_partition(len(md[OFFSETS_TOPIC]))
coordinator = md[OFFSETS_TOPIC][offsets_part].leader
check(coordinator in BROKERS, f"leader of {OFFSETS_TOPIC}[{offsets_part}]: {coordinator}")
described = admin.describe_consumer_groups([group], request_timeout=10)[group].result(15)
check_eq(described.coordinator.id, coordinator,
         f"DescribeGroups' coordinator vs the leader of {OFFSETS_TOPIC}[{offsets_part}]")
check_eq(len(described.members), 1, "members of the group before the kill")
member_id = described.members[0].member_id
print(f"KILL-NOW coordinator={coordinator} offsets_partition={offsets_part} "
      f"replicas={sorted(md[OFFSETS_TOPIC][offsets_part].replicas)} "
      f"isr={sorted(md[OFFSETS_TOPIC][offsets_part].isrs)} "
      f"topic_leaders={ {p: pm.leader for p, pm in md[topic].items()} } "
      f"offsets_partitions_led={ {b: sum(pm.leader == b for pm in md[OFFSETS_TOPIC].values()) for b in BROKERS} } "
      f"at={elapsed()}", flush=True)
while True:
    c1.poll(0.1)  # keeps C1's queues served while the harness kills the broker
    line = harness_line()
    if line is not None:
        check_eq(line, "KILLED", "the harness's answer to KILL-NOW")
        break
killed_at = time.monotonic()
log(f"coordinator {coordinator} killed at {elapsed()}")

# --- 4. C1 commits again through the new coordinator, reads 30..59, commits 60 -----------------
commit_errors = []


def commit_until_taken(c, offsets, what, timeout=30.0):
    """Commits synchronously until a commit succeeds; returns its seconds since the kill."""
    deadline = time.monotonic() + timeout
    while True:
        c.poll(0.05)
        try:
            c.commit(offsets=tps(offsets), asynchronous=False)
            return time.monotonic() - killed_at
        except KafkaException as e:
            commit_errors.append((what, round(time.monotonic() - killed_at, 1), str(e.args[0])))
        if time.monotonic() > deadline:
            fail(f"{what}: no commit taken within {timeout}s of the kill; errors {commit_errors[-5:]}")
        time.sleep(0.1)


commit_s = commit_until_taken(c1, {p: FIRST for p in PARTS}, "C1 recommits 30")
new_coordinator = None


def coordinator_moved():
    global new_coordinator, members_after
    d = admin.describe_consumer_groups([group], request_timeout=5)[group].result(6)
    new_coordinator = d.coordinator.id
    members_after = [m.member_id for m in d.members]
    return new_coordinator != coordinator


wait_until("DescribeGroups names a new coordinator", coordinator_moved, timeout=10)
md = metadata([OFFSETS_TOPIC])
check_eq(md[OFFSETS_TOPIC][offsets_part].leader, new_coordinator,
         f"leader of {OFFSETS_TOPIC}[{offsets_part}] after the kill vs DescribeGroups' coordinator")
log(f"C1's commit taken {commit_s:.1f}s after the kill, by coordinator {new_coordinator}; "
    f"commit errors on the way: {commit_errors}")
check_eq(members_after, [member_id], "the group's members at the new coordinator (C1 kept its membership)")
check_eq(committed(c1), {p: FIRST for p in PARTS}, "committed offsets read from the new coordinator")
resume(c1, FIRST)
process_until(c1, "C1 after the kill", SECOND)
c1.commit(offsets=tps({p: SECOND for p in PARTS}), asynchronous=False)
check_eq(committed(c1), {p: SECOND for p in PARTS}, "committed offsets after C1's second commit")
second_commit_s = time.monotonic() - killed_at
check_eq([r[:3] for r in rebalances], [("C1", "assign", PARTS)],
         "C1's rebalances up to its second commit (one assignment: the failover kept the member)")
c1.close()
log(f"C1 processed {FIRST}..{SECOND - 1} of every partition, committed {SECOND} "
    f"{second_commit_s:.1f}s after the kill, and closed; rebalances {rebalances}")

# --- 5. C2 resumes at exactly 60 and reads the rest -----------------------------------------------
c2 = consumer("C2")
check_eq(committed(c2), {p: SECOND for p in PARTS}, "committed offsets seen by the new consumer C2")
process_until(c2, "C2", TOTAL)
for m in c2.consume(num_messages=1000, timeout=1.0):
    if not m.error():
        fail(f"C2: a record past the end: partition {m.partition()} offset {m.offset()}")
c2.commit(offsets=tps({p: TOTAL for p in PARTS}), asynchronous=False)
check_eq(committed(c2), {p: TOTAL for p in PARTS}, "committed offsets after C2's commit")
c2.close()
log(f"C2 resumed at {SECOND}, read up to {TOTAL - 1} of every partition and committed {TOTAL} at {elapsed()}")
print(f"RESTART-NOW broker={coordinator}", flush=True)
while (line := harness_line(1.0)) is None:
    pass
check_eq(line, "RESTARTED", "the harness's answer to RESTART-NOW")
restarted_at = time.monotonic()

# --- 6. after the restart: the group still works --------------------------------------------------


def back_in_sync():
    md = metadata([OFFSETS_TOPIC, topic])
    if md is None:
        return None
    parts = list(md[topic].values()) + [md[OFFSETS_TOPIC][offsets_part]]
    return all(coordinator in pm.isrs for pm in parts)


wait_until(f"broker {coordinator} back in every ISR", back_in_sync, timeout=30, interval=0.25)
rejoin_s = time.monotonic() - restarted_at
produce(TOTAL, LATE)
c3 = consumer("C3")
check_eq(committed(c3), {p: TOTAL for p in PARTS}, "committed offsets seen by C3 after the restart")
process_until(c3, "C3", TOTAL + LATE)
for m in c3.consume(num_messages=1000, timeout=1.0):
    if not m.error():
        fail(f"C3: a record past the end: partition {m.partition()} offset {m.offset()}")
c3.commit(offsets=tps({p: TOTAL + LATE for p in PARTS}), asynchronous=False)
check_eq(committed(c3), {p: TOTAL + LATE for p in PARTS}, "committed offsets after C3's commit")
c3.close()
final_coordinator = admin.describe_consumer_groups([group], request_timeout=10)[group].result(15).coordinator.id

# Every record once, at its offset, over the three consumers.
for p in PARTS:
    check_eq(processed[p], [(o, f"{p}:{o}".encode()) for o in range(TOTAL + LATE)],
             f"records of partition {p} processed over C1, C2 and C3")
log(f"FIGURES coordinator={coordinator} offsets_partition={offsets_part} new_coordinator={new_coordinator} "
    f"commit_after_kill_s={commit_s:.1f} second_commit_after_kill_s={second_commit_s:.1f} "
    f"commit_errors={len(commit_errors)} rejoin_s={rejoin_s:.1f} final_coordinator={final_coordinator} "
    f"rebalances={len(rebalances)}")
log(f"OK cluster_group_failover {elapsed()}")
