"""The client settings `keel dev --secure` prints, used as printed (docs/security.md).

usage: dev_secure.py PROPERTIES_FILE

PROPERTIES_FILE holds the `client properties:` block keel dev printed, `key=value` lines, given
to confluent-kafka unchanged: the cluster answers Metadata with its three brokers, a producer
(acks=all) writes 100 records and a consumer reads exactly those back.
"""

import sys

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from interop_common import check_eq, fail, log, topic_name

if len(sys.argv) != 2:
    fail(f"usage: {sys.argv[0]} PROPERTIES_FILE")
conf = {}
with open(sys.argv[1]) as f:
    for line in f:
        line = line.strip()
        if line:
            key, value = line.split("=", 1)
            conf[key] = value
check_eq(sorted(conf), ["bootstrap.servers", "sasl.mechanism", "sasl.password", "sasl.username",
                        "security.protocol", "ssl.ca.location"], "printed properties")
md = AdminClient(conf).list_topics(timeout=30)
check_eq(sorted(md.brokers), [1, 2, 3], "brokers in Metadata")
topic = topic_name("dev-secure")
producer = Producer({**conf, "acks": "all"})
for i in range(100):
    producer.produce(topic, value=str(i).encode(), partition=0)
check_eq(producer.flush(60), 0, "records not delivered")
consumer = Consumer({**conf, "group.id": topic, "auto.offset.reset": "earliest"})
consumer.assign([TopicPartition(topic, 0, 0)])
values = []
while len(values) < 100:
    msg = consumer.poll(30)
    if msg is None:
        fail(f"read {len(values)} of 100 records, then nothing for 30 s")
    if msg.error():
        fail(f"consume: {msg.error()}")
    values.append(int(msg.value()))
consumer.close()
check_eq(values, list(range(100)), "records read back")
log("confluent-kafka with the printed properties: 100 records produced and read back")
