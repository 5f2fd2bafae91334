"""The client matrix's kcat scenario (Debian's kcat 1.7.1, librdkafka 2.0.2): metadata, produce,
consume, a consumer group and read_committed consumption against one `keel dev` cluster. kcat
has no topic creation and no transactional producer: confluent-kafka creates the topics and
writes the transactions, and kcat reads them.

usage: matrix_kcat.py HOST:PORT[,HOST:PORT...]
"""

import json

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from interop_common import await_all, bootstrap_from_argv, check_eq, kcat_path, run, topic_name
from matrix_common import PARTITIONS, REPLICATION, by_partition, check_read_back, checked, records, txn_plan

bootstrap = bootstrap_from_argv()
topic = topic_name("mx-kcat")
txn_topic = topic_name("mx-kcat-txn")
group = topic_name("mx-kcat-group")
k = kcat_path()

admin = AdminClient({"bootstrap.servers": bootstrap})
await_all(admin.create_topics([NewTopic(t, PARTITIONS, REPLICATION) for t in (topic, txn_topic)]), "create topic")
md = json.loads(run([k, "-b", bootstrap, "-L", "-J", "-t", topic]).stdout)
check_eq([t["topic"] for t in md["topics"]], [topic], "kcat -L topics")
parts = md["topics"][0]["partitions"]
check_eq(sorted(p["partition"] for p in parts), list(range(PARTITIONS)), f"{topic} partitions (kcat -L)")
for p in parts:
    check_eq(len(p["replicas"]), REPLICATION, f"{topic}[{p['partition']}] replicas (kcat -L)")
check_eq(len(md["brokers"]), 3, "brokers kcat -L lists")
checked("admin", f"kcat -L -J: {topic} has {PARTITIONS} partitions of {REPLICATION} replicas on 3 brokers")

written = records("kcat")
for p, lines in by_partition(written).items():
    data = "".join(f"{key}\t{value}\n" for key, value in lines).encode()
    run([k, "-b", bootstrap, "-P", "-t", topic, "-p", str(p), "-K", "\t", "-X", "acks=all"], input_bytes=data)
checked("produce", f"{len(written)} records with keys (kcat -P -K), acks=all")


def kcat_read(t, extra=()):
    got = {p: [] for p in range(PARTITIONS)}
    for p in range(PARTITIONS):
        out = run([k, "-b", bootstrap, "-C", "-t", t, "-p", str(p), "-o", "beginning", "-e", "-q",
                   "-f", "%k\t%s\n", *extra]).stdout.decode()
        got[p] = [tuple(line.split("\t", 1)) for line in out.splitlines() if line]
    return got


check_read_back(kcat_read(topic), written, f"records kcat -C read back from {topic}")
checked("consume", f"kcat -C -e read back {len(written)} records, equal to those written")


def group_read():
    out = run([k, "-b", bootstrap, "-G", group, "-X", "auto.offset.reset=earliest", "-q", "-e",
               "-f", "%p\t%k\t%s\n", topic], timeout=90).stdout.decode()
    got = {p: [] for p in range(PARTITIONS)}
    for line in out.splitlines():
        if line:
            p, key, value = line.split("\t", 2)
            got[int(p)].append((key, value))
    return got


check_read_back(group_read(), written, f"records kcat -G {group} read")
# The group's committed offsets, by OffsetFetch from another client (no join).
c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
committed = c.committed([TopicPartition(topic, p) for p in range(PARTITIONS)], timeout=20)
c.close()
want = {p: len(v) for p, v in by_partition(written).items()}
check_eq({tp.partition: tp.offset for tp in committed}, want, f"group {group} committed offsets")
check_read_back(group_read(), [], f"kcat -G {group} again (resumes after its commit)")
checked("group", f"kcat -G read {len(written)} records, committed {want}, and a second run read nothing")

batches, committed_records = txn_plan("kcat")
tp = Producer({"bootstrap.servers": bootstrap, "transactional.id": topic_name("mx-kcat-txid")})
tp.init_transactions(30)
for commit, triples in batches:
    tp.begin_transaction()
    for p, key, value in triples:
        tp.produce(txn_topic, key=key, value=value, partition=p)
    if commit:
        tp.commit_transaction(30)
    else:
        tp.abort_transaction(30)
check_read_back(kcat_read(txn_topic, ["-X", "isolation.level=read_committed"]), committed_records,
                f"kcat read_committed records of {txn_topic}")
checked("transactions", "read_committed (kcat -X isolation.level=read_committed) of confluent-kafka's "
        f"transactions: the {len(committed_records)} committed records, none of the 6 aborted")
