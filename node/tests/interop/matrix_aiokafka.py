"""The client matrix's aiokafka scenario (asyncio): admin, produce, consume, a consumer group and
the transactional producer against one `keel dev` cluster.

usage: matrix_aiokafka.py HOST:PORT[,HOST:PORT...]
"""

import asyncio
import time

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from interop_common import bootstrap_from_argv, check_eq, fail, topic_name
from matrix_common import PARTITIONS, REPLICATION, by_partition, check_read_back, checked, records, txn_plan

bootstrap = bootstrap_from_argv()
topic = topic_name("mx-aio")
txn_topic = topic_name("mx-aio-txn")
group = topic_name("mx-aio-group")


async def drain(consumer, want_total, what, timeout=30.0):
    got = {p: [] for p in range(PARTITIONS)}
    deadline = time.monotonic() + timeout
    n = 0
    while n < want_total:
        if time.monotonic() > deadline:
            fail(f"{what}: read {n} of {want_total} records")
        for tp, msgs in (await consumer.getmany(timeout_ms=500)).items():
            for m in msgs:
                got[tp.partition].append((m.key.decode(), m.value.decode()))
                n += 1
    for tp, msgs in (await consumer.getmany(timeout_ms=1000)).items():  # nothing beyond
        got[tp.partition].extend((m.key.decode(), m.value.decode()) for m in msgs)
    return got


async def read(t, want_total, **extra):
    c = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, **extra)
    await c.start()
    try:
        c.assign([TopicPartition(t, p) for p in range(PARTITIONS)])
        await c.seek_to_beginning()
        return await drain(c, want_total, f"reading {t}")
    finally:
        await c.stop()


async def main():
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=20000)
    await admin.start()
    await admin.create_topics([NewTopic(t, num_partitions=PARTITIONS, replication_factor=REPLICATION)
                               for t in (topic, txn_topic)])
    described = await admin.describe_topics([topic])
    check_eq(len(described), 1, "described topics")
    check_eq(described[0]["error_code"], 0, f"describe {topic} error")
    check_eq(sorted(p["partition"] for p in described[0]["partitions"]), list(range(PARTITIONS)), f"{topic} partitions")
    for p in described[0]["partitions"]:
        check_eq(len(p["replicas"]), REPLICATION, f"{topic}[{p['partition']}] replicas")
    checked("admin", f"created {topic} and {txn_topic}, described {topic}")

    written = records("aio")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        for p, k, v in written:
            await producer.send_and_wait(topic, key=k.encode(), value=v.encode(), partition=p)
    finally:
        await producer.stop()
    checked("produce", f"{len(written)} records, idempotent, acks=all")

    check_read_back(await read(topic, len(written)), written, f"records read back from {topic}")
    checked("consume", f"read back {len(written)} records by assign(), equal to those written")

    c = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False,
                         auto_offset_reset="earliest")
    await c.start()
    try:
        check_read_back(await drain(c, len(written), f"group {group}", timeout=60), written,
                        f"records the group {group} read")
        await c.commit()
    finally:
        await c.stop()
    want = {p: len(v) for p, v in by_partition(written).items()}
    offsets = await admin.list_consumer_group_offsets(group)
    check_eq({tp.partition: om.offset for tp, om in offsets.items() if tp.topic == topic}, want,
             f"group {group} committed offsets (OffsetFetch from the admin client)")
    checked("group", f"group {group} read {len(written)} records and committed {want}")
    await admin.close()

    batches, committed_records = txn_plan("aio")
    tp = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=topic_name("mx-aio-txid"))
    await tp.start()
    try:
        for commit, triples in batches:
            await tp.begin_transaction()
            for p, k, v in triples:
                await tp.send_and_wait(txn_topic, key=k.encode(), value=v.encode(), partition=p)
            if commit:
                await tp.commit_transaction()
            else:
                await tp.abort_transaction()
    finally:
        await tp.stop()
    check_read_back(await read(txn_topic, len(committed_records), isolation_level="read_committed"),
                    committed_records, f"read_committed records of {txn_topic}")
    checked("transactions", f"committed {len(committed_records)} and aborted 6 records; read_committed sees exactly the committed")


asyncio.run(main())
