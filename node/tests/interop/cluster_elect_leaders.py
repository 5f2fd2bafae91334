"""ElectLeaders through confluent-kafka's AdminClient.elect_leaders (KIP-460), on three brokers.

usage: cluster_elect_leaders.py HOST:PORT,HOST:PORT,HOST:PORT

Driven by node/tests/cluster.rs over stdin/stdout (the brokers run with
auto.leader.rebalance.enable=false, so that only the requests below move leadership):
  1. creates `lead` (3 partitions, replication factor 3) and waits until every ISR is full;
  2. a preferred election of every partition: each ELECTION_NOT_NEEDED (every preferred
     replica leads); a partition that does not exist: UNKNOWN_TOPIC_OR_PARTITION; an unclean
     election of a led partition: ELECTION_NOT_NEEDED;
  3. prints `STOP-NOW broker=B`, B the preferred leader of lead[0]; the harness stops B with
     SIGTERM (its leaderships move away), restarts it and answers `RESTARTED B`; the script
     waits until B is back in every ISR; lead[0] is led by another broker;
  4. a preferred election of lead[0] succeeds and B leads it again, its ISR unchanged; a second
     one is ELECTION_NOT_NEEDED.
"""

import sys

from confluent_kafka import ElectionType, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from interop_common import await_all, check, check_eq, fail, harness_line, log, stopwatch, topic_name, wait_until

if len(sys.argv) < 2:
    fail(f"usage: {sys.argv[0]} HOST:PORT,HOST:PORT,HOST:PORT")
bootstrap = sys.argv[1]
elapsed = stopwatch()
admin = AdminClient({"bootstrap.servers": bootstrap})
topic = topic_name("lead")
BROKERS = [1, 2, 3]
ELECTION_NOT_NEEDED = 84
UNKNOWN_TOPIC_OR_PARTITION = 3


def partitions():
    try:
        md = admin.list_topics(topic=topic, timeout=5)
    except KafkaException:
        return None
    tm = md.topics.get(topic)
    if tm is None or tm.error is not None or len(tm.partitions) != 3:
        return None
    return tm.partitions


def full():
    parts = partitions()
    if parts and all(pm.leader >= 0 and sorted(pm.isrs) == BROKERS for pm in parts.values()):
        return parts
    return None


def elect(election_type, tps):
    """{(topic, partition): error code or 0} of an elect_leaders call."""
    # No keyword arguments: confluent-kafka 2.16.1 raises SystemError on any (its C binding).
    result = admin.elect_leaders(election_type, tps).result(timeout=40)
    out = {}
    for tp, err in result.items():
        if err is None:
            out[(tp.topic, tp.partition)] = 0
        else:
            e = err.args[0] if isinstance(err, KafkaException) else err
            out[(tp.topic, tp.partition)] = e.code()
    return out


await_all(admin.create_topics([NewTopic(topic, num_partitions=3, replication_factor=3)], request_timeout=30),
          "create_topics")
parts = wait_until("every partition led with a full ISR", full, timeout=30)
preferred = {p: pm.replicas[0] for p, pm in parts.items()}
check(all(pm.leader == preferred[p] for p, pm in parts.items()),
      f"every partition led by its preferred replica at creation: {[(p, pm.leader, pm.replicas) for p, pm in parts.items()]}")

# --- 2. nothing to do, and bad input ------------------------------------------------------------
got = elect(ElectionType.PREFERRED, [TopicPartition(topic, p) for p in range(3)])
check_eq(got, {(topic, p): ELECTION_NOT_NEEDED for p in range(3)}, "preferred election of led partitions")
got = elect(ElectionType.PREFERRED, [TopicPartition(topic, 7)])
check_eq(got, {(topic, 7): UNKNOWN_TOPIC_OR_PARTITION}, "preferred election of a partition that does not exist")
got = elect(ElectionType.UNCLEAN, [TopicPartition(topic, 0)])
check_eq(got, {(topic, 0): ELECTION_NOT_NEEDED}, "unclean election of a led partition")
log(f"ELECTION_NOT_NEEDED and UNKNOWN_TOPIC_OR_PARTITION as Kafka at {elapsed()}")

# --- 3. move lead[0]'s leadership away ----------------------------------------------------------
b = preferred[0]
print(f"STOP-NOW broker={b}", flush=True)
line = None
while line is None:
    line = harness_line(timeout=120)
check_eq(line, f"RESTARTED {b}", "the harness's answer")
parts = wait_until(f"broker {b} back in every ISR", full, timeout=60)
moved = parts[0].leader
check(moved != b, f"lead[0] led by {moved}, not by the restarted broker {b}")
isr_before = sorted(parts[0].isrs)
log(f"lead[0] led by {moved} after broker {b}'s restart, ISR {isr_before}, at {elapsed()}")

# --- 4. move it back ---------------------------------------------------------------------------
got = elect(ElectionType.PREFERRED, [TopicPartition(topic, 0)])
check_eq(got, {(topic, 0): 0}, "preferred election of lead[0]")
parts = wait_until(f"lead[0] led by its preferred replica {b}",
                   lambda: (lambda ps: ps if ps and ps[0].leader == b else None)(partitions()), timeout=15)
check_eq(sorted(parts[0].isrs), isr_before, "lead[0]'s ISR after the preferred election")
got = elect(ElectionType.PREFERRED, [TopicPartition(topic, 0)])
check_eq(got, {(topic, 0): ELECTION_NOT_NEEDED}, "a second preferred election of lead[0]")
log(f"FIGURES preferred_leader={b} moved_to={moved} back_at={elapsed()}")
log(f"OK cluster_elect_leaders {elapsed()}")
