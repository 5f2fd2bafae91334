// The client matrix's kafkajs scenario (Node.js): admin, produce, consume, a consumer group and
// transactions against one `keel dev` cluster. The same checks as the Python scripts
// (matrix_common.py): records read back equal those written, the group's committed offsets
// equal what it consumed, read_committed sees the committed transactions and not the aborted one.
//
// usage: NODE_PATH=.clients/node/node_modules node matrix_kafkajs.js HOST:PORT[,HOST:PORT...]
'use strict';
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { Kafka, logLevel } = require('kafkajs');

const PARTITIONS = 3;
const REPLICATION = 3;
const bootstrap = process.argv[2];
if (!bootstrap) {
  console.error('FAIL: usage: matrix_kafkajs.js HOST:PORT');
  process.exit(1);
}
const name = (prefix) => `${prefix}-${crypto.randomBytes(4).toString('hex')}`;
const topic = name('mx-kafkajs');
const txnTopic = name('mx-kafkajs-txn');
const group = name('mx-kafkajs-group');
const kafka = new Kafka({ clientId: 'keel-matrix', brokers: bootstrap.split(','), logLevel: logLevel.WARN });

const records = (prefix, n) =>
  Array.from({ length: n }, (_, i) => ({ partition: i % PARTITIONS, key: `${prefix}-k${i}`, value: `${prefix}-v${i}` }));
const byPartition = (rs) => {
  const out = {};
  for (let p = 0; p < PARTITIONS; p++) out[p] = [];
  for (const r of rs) out[r.partition].push([r.key, r.value]);
  return out;
};
const checked = (capability, detail) => console.log(`CHECKED ${capability}: ${detail}`);

// Runs a consumer (fresh group unless `groupId`) from the beginning of `t` until `want` records
// arrived, then a second longer so that extra records would show; returns them by partition.
async function consume(t, want, { groupId, readUncommitted = true } = {}) {
  const consumer = kafka.consumer({ groupId: groupId || name('mx-kafkajs-reader'), readUncommitted });
  await consumer.connect();
  await consumer.subscribe({ topics: [t], fromBeginning: true });
  const got = byPartition([]);
  let n = 0;
  let done;
  const all = new Promise((resolve) => { done = resolve; });
  await consumer.run({
    autoCommit: false,
    eachMessage: async ({ partition, message }) => {
      got[partition].push([message.key.toString(), message.value.toString()]);
      n += 1;
      if (n >= want) done();
    },
  });
  const timeout = setTimeout(() => done('timeout'), 60000);
  const why = await all;
  clearTimeout(timeout);
  assert.notEqual(why, 'timeout', `reading ${t}: ${n} of ${want} records within 60 s`);
  await new Promise((r) => setTimeout(r, 1000));
  if (groupId) {
    await consumer.commitOffsets(Object.entries(got).map(([p, v]) => ({ topic: t, partition: Number(p), offset: String(v.length) })));
  }
  await consumer.disconnect();
  return got;
}

async function main() {
  const admin = kafka.admin();
  await admin.connect();
  assert.equal(await admin.createTopics({
    waitForLeaders: true,
    topics: [topic, txnTopic].map((t) => ({ topic: t, numPartitions: PARTITIONS, replicationFactor: REPLICATION })),
  }), true, 'createTopics created both topics');
  const md = await admin.fetchTopicMetadata({ topics: [topic] });
  const parts = md.topics[0].partitions;
  assert.deepEqual(parts.map((p) => p.partitionId).sort(), [0, 1, 2], `${topic} partitions`);
  for (const p of parts) assert.equal(p.replicas.length, REPLICATION, `${topic}[${p.partitionId}] replicas`);
  checked('admin', `created ${topic} and ${txnTopic}, fetched ${topic}'s metadata`);

  const written = records('kjs', 30);
  const producer = kafka.producer({ idempotent: true, maxInFlightRequests: 1 });
  await producer.connect();
  for (const r of written) {
    await producer.send({ topic, acks: -1, messages: [{ key: r.key, value: r.value, partition: r.partition }] });
  }
  await producer.disconnect();
  checked('produce', `${written.length} records, idempotent, acks=all`);

  assert.deepEqual(await consume(topic, written.length), byPartition(written), `records read back from ${topic}`);
  checked('consume', `read back ${written.length} records, equal to those written`);

  assert.deepEqual(await consume(topic, written.length, { groupId: group }), byPartition(written), `records the group ${group} read`);
  const offsets = await admin.fetchOffsets({ groupId: group, topics: [topic] });
  const committed = {};
  for (const p of offsets[0].partitions) committed[p.partition] = Number(p.offset);
  const want = {};
  for (const [p, v] of Object.entries(byPartition(written))) want[p] = v.length;
  assert.deepEqual(committed, want, `group ${group} committed offsets (admin.fetchOffsets)`);
  checked('group', `group ${group} read ${written.length} records and committed ${JSON.stringify(want)}`);
  await admin.disconnect();

  const tp = kafka.producer({ transactionalId: name('mx-kafkajs-txid'), idempotent: true, maxInFlightRequests: 1 });
  await tp.connect();
  const c1 = records('kjs-c1', 6);
  const ab = records('kjs-ab', 6);
  const c2 = records('kjs-c2', 6);
  for (const [commit, rs] of [[true, c1], [false, ab], [true, c2]]) {
    const txn = await tp.transaction();
    await txn.send({ topic: txnTopic, messages: rs.map((r) => ({ key: r.key, value: r.value, partition: r.partition })) });
    if (commit) await txn.commit(); else await txn.abort();
  }
  await tp.disconnect();
  const committedRecords = c1.concat(c2);
  assert.deepEqual(await consume(txnTopic, committedRecords.length, { readUncommitted: false }), byPartition(committedRecords),
    `read_committed records of ${txnTopic}`);
  checked('transactions', `committed ${committedRecords.length} and aborted 6 records; read_committed sees exactly the committed`);
}

main().then(() => process.exit(0), (e) => {
  console.error(`FAIL: ${e.stack || e}`);
  process.exit(1);
});
