//! Transactions on one broker through its Kafka handler (issue 15): the coordinator's and the
//! partition's answers to bad input, each a clear error with nothing appended or lost, and the
//! read_committed view of an aborted transaction (the last stable offset and the aborted
//! transactions list, KIP-98).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::StrBytes;
use keel_core::batch::{BatchBuilder, Compression};
use keel_core::error_code as code;
use keel_node::broker::{Broker, Settings};
use keel_node::wire::{Handler, RequestContext};

const TXN: &str = "txn-bad-input";

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_string())
}

fn ctx(api_key: ApiKey, api_version: i16) -> RequestContext {
    RequestContext::local(api_key, api_version)
}

async fn call(b: &Arc<Broker>, api: ApiKey, v: i16, r: RequestKind) -> ResponseKind {
    b.clone()
        .handle(ctx(api, v), r)
        .await
        .unwrap_or_else(|e| panic!("{api:?}: {e}"))
        .unwrap_or_else(|| panic!("{api:?}: no response"))
}

fn txn_batch(pid: i64, epoch: i16, seq: i32) -> Bytes {
    BatchBuilder {
        transactional: true,
        ..BatchBuilder::new(Compression::None).idempotent(keel_core::ProducerId(pid), epoch, seq)
    }
    .record(1000, Some(b"k"), Some(b"v"))
    .build()
    .unwrap()
    .into_bytes()
}

async fn produce(b: &Arc<Broker>, txn: Option<&str>, records: Bytes) -> i16 {
    produce_at(b, 9, txn, records).await
}

/// [`produce`] at Produce `version`.
async fn produce_at(b: &Arc<Broker>, version: i16, txn: Option<&str>, records: Bytes) -> i16 {
    let mut r = ProduceRequest::default();
    r.acks = -1;
    r.timeout_ms = 5000;
    r.transactional_id = txn.map(|t| TransactionalId(s(t)));
    r.topic_data = vec![TopicProduceData::default()
        .with_name(TopicName(s("t")))
        .with_partition_data(vec![PartitionProduceData::default()
            .with_index(0)
            .with_records(Some(records))])];
    match call(b, ApiKey::Produce, version, RequestKind::Produce(r)).await {
        ResponseKind::Produce(r) => r.responses[0].partition_responses[0].error_code,
        other => panic!("{other:?}"),
    }
}

async fn init(b: &Arc<Broker>, id: &str, v: i16) -> InitProducerIdResponse {
    let mut r = InitProducerIdRequest::default();
    r.transactional_id = Some(TransactionalId(s(id)));
    r.transaction_timeout_ms = 60_000;
    r.producer_id = ProducerId(-1);
    r.producer_epoch = -1;
    match call(b, ApiKey::InitProducerId, v, RequestKind::InitProducerId(r)).await {
        ResponseKind::InitProducerId(r) => r,
        other => panic!("{other:?}"),
    }
}

/// InitProducerId, retried while the coordinator loads or a fence is being written (the
/// errors clients retry).
async fn init_retrying(b: &Arc<Broker>, id: &str) -> InitProducerIdResponse {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = init(b, id, 4).await;
        let retriable = [
            code::COORDINATOR_LOAD_IN_PROGRESS,
            code::NOT_COORDINATOR,
            code::CONCURRENT_TRANSACTIONS,
        ];
        if !retriable.contains(&r.error_code) || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn end_txn(b: &Arc<Broker>, v: i16, pid: i64, epoch: i16, commit: bool) -> i16 {
    end_txn_of(b, TXN, v, pid, epoch, commit).await
}

async fn end_txn_of(b: &Arc<Broker>, id: &str, v: i16, pid: i64, epoch: i16, commit: bool) -> i16 {
    let mut r = EndTxnRequest::default();
    r.transactional_id = TransactionalId(s(id));
    r.producer_id = ProducerId(pid);
    r.producer_epoch = epoch;
    r.committed = commit;
    match call(b, ApiKey::EndTxn, v, RequestKind::EndTxn(r)).await {
        ResponseKind::EndTxn(r) => r.error_code,
        other => panic!("{other:?}"),
    }
}

async fn add_partitions(b: &Arc<Broker>, pid: i64, epoch: i16, topics: &[&str]) -> Vec<i16> {
    add_partitions_of(b, TXN, pid, epoch, topics).await
}

async fn add_partitions_of(
    b: &Arc<Broker>,
    id: &str,
    pid: i64,
    epoch: i16,
    topics: &[&str],
) -> Vec<i16> {
    let mut r = AddPartitionsToTxnRequest::default();
    r.v3_and_below_transactional_id = TransactionalId(s(id));
    r.v3_and_below_producer_id = ProducerId(pid);
    r.v3_and_below_producer_epoch = epoch;
    r.v3_and_below_topics = topics
        .iter()
        .map(|t| {
            AddPartitionsToTxnTopic::default()
                .with_name(TopicName(s(t)))
                .with_partitions(vec![0])
        })
        .collect();
    match call(
        b,
        ApiKey::AddPartitionsToTxn,
        3,
        RequestKind::AddPartitionsToTxn(r),
    )
    .await
    {
        ResponseKind::AddPartitionsToTxn(r) => r
            .results_by_topic_v3_and_below
            .iter()
            .map(|t| t.results_by_partition[0].partition_error_code)
            .collect(),
        other => panic!("{other:?}"),
    }
}

async fn latest(b: &Arc<Broker>, isolation: i8) -> i64 {
    let mut r = ListOffsetsRequest::default();
    r.isolation_level = isolation;
    r.topics = vec![ListOffsetsTopic::default()
        .with_name(TopicName(s("t")))
        .with_partitions(vec![ListOffsetsPartition::default()
            .with_partition_index(0)
            .with_timestamp(-1)])];
    match call(b, ApiKey::ListOffsets, 7, RequestKind::ListOffsets(r)).await {
        ResponseKind::ListOffsets(r) => r.topics[0].partitions[0].offset,
        other => panic!("{other:?}"),
    }
}

async fn fetch_committed(b: &Arc<Broker>) -> fetch_response::PartitionData {
    let mut r = FetchRequest::default();
    r.max_wait_ms = 0;
    r.max_bytes = 1 << 20;
    r.isolation_level = 1;
    r.topics = vec![FetchTopic::default()
        .with_topic(TopicName(s("t")))
        .with_partitions(vec![FetchPartition::default()
            .with_partition(0)
            .with_fetch_offset(0)
            .with_partition_max_bytes(1 << 20)])];
    match call(b, ApiKey::Fetch, 11, RequestKind::Fetch(r)).await {
        ResponseKind::Fetch(r) => r.responses[0].partitions[0].clone(),
        other => panic!("{other:?}"),
    }
}

async fn find_coordinator(b: &Arc<Broker>, v: i16, key_type: i8, key: &str) -> (i16, i32) {
    let mut r = FindCoordinatorRequest::default();
    r.key_type = key_type;
    if v >= 4 {
        r.coordinator_keys = vec![s(key)];
    } else {
        r.key = s(key);
    }
    match call(
        b,
        ApiKey::FindCoordinator,
        v,
        RequestKind::FindCoordinator(r),
    )
    .await
    {
        ResponseKind::FindCoordinator(r) if v >= 4 => {
            (r.coordinators[0].error_code, r.coordinators[0].node_id.0)
        }
        ResponseKind::FindCoordinator(r) => (r.error_code, r.node_id.0),
        other => panic!("{other:?}"),
    }
}

/// DescribeProducers of `t`-0: (producer id, epoch, current transaction's first offset).
async fn producers(b: &Arc<Broker>) -> Vec<(i64, i32, i64)> {
    let mut r = DescribeProducersRequest::default();
    r.topics = vec![describe_producers_request::TopicRequest::default()
        .with_name(TopicName(s("t")))
        .with_partition_indexes(vec![0])];
    match call(
        b,
        ApiKey::DescribeProducers,
        0,
        RequestKind::DescribeProducers(r),
    )
    .await
    {
        ResponseKind::DescribeProducers(r) => r.topics[0].partitions[0]
            .active_producers
            .iter()
            .map(|p| {
                (
                    p.producer_id.0,
                    p.producer_epoch,
                    p.current_txn_start_offset,
                )
            })
            .collect(),
        other => panic!("{other:?}"),
    }
}

async fn wait_for(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every bad input of the issue gets a clear error, nothing is appended by it, and the
/// transaction a new producer fences is aborted: read_committed sees nothing of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_transactional_input_gets_clear_errors_and_fencing_aborts() {
    let dir = tempfile::tempdir().unwrap();
    let b: Arc<Broker> = Broker::open(
        Settings::single(1, dir.path().to_path_buf()),
        Arc::new(keel_node::metrics::Metrics::new()),
    )
    .await
    .unwrap();
    let mut create = CreateTopicsRequest::default();
    create.topics = vec![CreatableTopic::default()
        .with_name(TopicName(s("t")))
        .with_num_partitions(1)
        .with_replication_factor(1)];
    call(
        &b,
        ApiKey::CreateTopics,
        5,
        RequestKind::CreateTopics(create),
    )
    .await;

    // FindCoordinator: key type 1 creates __transaction_state and names this broker (v1 and
    // the batched v4 form); an unknown key type is INVALID_REQUEST.
    assert_eq!(find_coordinator(&b, 1, 1, TXN).await, (code::NONE, 1));
    assert_eq!(find_coordinator(&b, 4, 1, TXN).await, (code::NONE, 1));
    let (error, _) = find_coordinator(&b, 4, 7, TXN).await;
    assert_eq!(error, code::INVALID_REQUEST, "unknown coordinator key type");
    let (error, _) = find_coordinator(&b, 2, 7, TXN).await;
    assert_eq!(error, code::INVALID_REQUEST, "unknown coordinator key type");

    let first = init_retrying(&b, TXN).await;
    assert_eq!(first.error_code, code::NONE);
    let (pid, epoch) = (first.producer_id.0, first.producer_epoch);

    // A transactional id of 100 KiB: INVALID_REQUEST, no crash.
    let huge = "x".repeat(100 * 1024);
    let (error, _) = find_coordinator(&b, 1, 1, &huge).await;
    assert_eq!(error, code::NONE, "any key has a coordinator");
    assert_eq!(
        init_retrying(&b, &huge).await.error_code,
        code::INVALID_REQUEST
    );

    // EndTxn without a transaction: INVALID_TXN_STATE.
    assert_eq!(
        end_txn(&b, 3, pid, epoch, true).await,
        code::INVALID_TXN_STATE
    );

    // A transactional write to a partition never added: INVALID_TXN_STATE below Produce v11,
    // TRANSACTION_ABORTABLE from v11 (KIP-890), nothing appended.
    assert_eq!(
        produce(&b, Some(TXN), txn_batch(pid, epoch, 0)).await,
        code::INVALID_TXN_STATE
    );
    assert_eq!(
        produce_at(&b, 11, Some(TXN), txn_batch(pid, epoch, 0)).await,
        code::TRANSACTION_ABORTABLE
    );
    assert_eq!(
        latest(&b, 0).await,
        0,
        "the refused write is not in the log"
    );
    // A transactional batch without the request's transactional id: INVALID_RECORD.
    assert_eq!(
        produce(&b, None, txn_batch(pid, epoch, 0)).await,
        code::INVALID_RECORD
    );

    // An unknown topic fails AddPartitionsToTxn; the others are not attempted (the answer
    // lists topics by name).
    assert_eq!(
        add_partitions(&b, pid, epoch, &["t", "missing"]).await,
        vec![
            code::UNKNOWN_TOPIC_OR_PARTITION,
            code::OPERATION_NOT_ATTEMPTED
        ]
    );
    assert_eq!(
        add_partitions(&b, pid, epoch, &["t"]).await,
        vec![code::NONE]
    );
    assert_eq!(
        produce(&b, Some(TXN), txn_batch(pid, epoch, 0)).await,
        code::NONE
    );
    assert_eq!(
        latest(&b, 0).await,
        1,
        "read_uncommitted: the high watermark"
    );
    assert_eq!(
        latest(&b, 1).await,
        0,
        "read_committed: the last stable offset"
    );

    // A second producer fences the first: its transaction is aborted with the bumped epoch.
    let second = init_retrying(&b, TXN).await;
    assert_eq!(second.error_code, code::NONE);
    assert_eq!(second.producer_id.0, pid);
    assert!(second.producer_epoch > epoch, "{second:?}");

    // A produce with the fenced epoch: INVALID_PRODUCER_EPOCH, nothing appended.
    wait_for("the fencing abort's marker", async || {
        latest(&b, 1).await == 2
    })
    .await;
    assert_eq!(
        produce(&b, Some(TXN), txn_batch(pid, epoch, 1)).await,
        code::INVALID_PRODUCER_EPOCH
    );
    assert_eq!(latest(&b, 0).await, 2, "data, then the ABORT marker");
    assert_eq!(
        producers(&b).await,
        vec![(pid, i32::from(epoch) + 1, -1)],
        "the fencing abort (epoch + 1) closed the transaction; the new producer's epoch is \
         one more (InitProducerId's retry bumps it again)"
    );
    // EndTxn with the fenced epoch: PRODUCER_FENCED (v2+), INVALID_PRODUCER_EPOCH before.
    assert_eq!(
        end_txn(&b, 3, pid, epoch, true).await,
        code::PRODUCER_FENCED
    );
    assert_eq!(
        end_txn(&b, 1, pid, epoch, true).await,
        code::INVALID_PRODUCER_EPOCH
    );

    // read_committed: the aborted transaction is listed, from its first offset.
    let data = fetch_committed(&b).await;
    assert_eq!(data.error_code, code::NONE);
    assert_eq!((data.high_watermark, data.last_stable_offset), (2, 2));
    let aborted = data
        .aborted_transactions
        .expect("v4+ lists aborted transactions");
    assert_eq!(aborted.len(), 1);
    assert_eq!(
        (aborted[0].producer_id.0, aborted[0].first_offset),
        (pid, 0)
    );

    // DescribeTransactions and ListTransactions show the id.
    let mut d = DescribeTransactionsRequest::default();
    d.transactional_ids = vec![TransactionalId(s(TXN)), TransactionalId(s("unknown"))];
    let ResponseKind::DescribeTransactions(d) = call(
        &b,
        ApiKey::DescribeTransactions,
        0,
        RequestKind::DescribeTransactions(d),
    )
    .await
    else {
        panic!("DescribeTransactions");
    };
    assert_eq!(d.transaction_states[0].error_code, code::NONE);
    assert_eq!(d.transaction_states[0].producer_id.0, pid);
    assert_eq!(
        d.transaction_states[1].error_code,
        code::TRANSACTIONAL_ID_NOT_FOUND
    );
    let ResponseKind::ListTransactions(l) = call(
        &b,
        ApiKey::ListTransactions,
        1,
        RequestKind::ListTransactions(ListTransactionsRequest::default()),
    )
    .await
    else {
        panic!("ListTransactions");
    };
    assert!(l
        .transaction_states
        .iter()
        .any(|t| t.transactional_id.0.as_str() == TXN));
}

async fn add_offsets(b: &Arc<Broker>, pid: i64, epoch: i16, group: &str) -> i16 {
    add_offsets_of(b, TXN, pid, epoch, group).await
}

async fn add_offsets_of(b: &Arc<Broker>, id: &str, pid: i64, epoch: i16, group: &str) -> i16 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut r = AddOffsetsToTxnRequest::default();
        r.transactional_id = TransactionalId(s(id));
        r.producer_id = ProducerId(pid);
        r.producer_epoch = epoch;
        r.group_id = GroupId(s(group));
        let e = match call(
            b,
            ApiKey::AddOffsetsToTxn,
            3,
            RequestKind::AddOffsetsToTxn(r),
        )
        .await
        {
            ResponseKind::AddOffsetsToTxn(r) => r.error_code,
            other => panic!("{other:?}"),
        };
        if e != code::CONCURRENT_TRANSACTIONS || Instant::now() > deadline {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// TxnOffsetCommit of `t`-0 at `offset` for group `g`; retried while the group coordinator
/// loads (what clients retry).
async fn txn_offset_commit(
    b: &Arc<Broker>,
    v: i16,
    (pid, epoch): (i64, i16),
    (member, generation): (&str, i32),
    offset: i64,
) -> i16 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut r = TxnOffsetCommitRequest::default();
        r.transactional_id = TransactionalId(s(TXN));
        r.group_id = GroupId(s("g"));
        r.producer_id = ProducerId(pid);
        r.producer_epoch = epoch;
        r.member_id = s(member);
        r.generation_id = generation;
        r.topics = vec![
            txn_offset_commit_request::TxnOffsetCommitRequestTopic::default()
                .with_name(TopicName(s("t")))
                .with_partitions(vec![
                    txn_offset_commit_request::TxnOffsetCommitRequestPartition::default()
                        .with_partition_index(0)
                        .with_committed_offset(offset),
                ]),
        ];
        let e = match call(
            b,
            ApiKey::TxnOffsetCommit,
            v,
            RequestKind::TxnOffsetCommit(r),
        )
        .await
        {
            ResponseKind::TxnOffsetCommit(r) => r.topics[0].partitions[0].error_code,
            other => panic!("{other:?}"),
        };
        if e != code::COORDINATOR_LOAD_IN_PROGRESS || Instant::now() > deadline {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// OffsetFetch v7 of `t`-0 for group `g`: the offset, or the partition's error.
async fn committed(b: &Arc<Broker>, require_stable: bool) -> Result<i64, i16> {
    let mut r = OffsetFetchRequest::default();
    r.group_id = GroupId(s("g"));
    r.require_stable = require_stable;
    r.topics = Some(vec![
        offset_fetch_request::OffsetFetchRequestTopic::default()
            .with_name(TopicName(s("t")))
            .with_partition_indexes(vec![0]),
    ]);
    match call(b, ApiKey::OffsetFetch, 7, RequestKind::OffsetFetch(r)).await {
        ResponseKind::OffsetFetch(r) if r.error_code != code::NONE => Err(r.error_code),
        ResponseKind::OffsetFetch(r) => match r.topics[0].partitions[0].error_code {
            code::NONE => Ok(r.topics[0].partitions[0].committed_offset),
            e => Err(e),
        },
        other => panic!("{other:?}"),
    }
}

/// TxnOffsetCommit (KIP-98, KIP-447, KIP-890): offsets committed inside a transaction are
/// invisible to OffsetFetch (and UNSTABLE_OFFSET_COMMIT to one requiring stable offsets) until
/// the commit marker lands on the group's partition; an abort discards them. A group not
/// added with AddOffsetsToTxn, an unknown member and a fenced epoch get Kafka's errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn txn_offset_commit_is_visible_only_after_the_commit_marker() {
    let dir = tempfile::tempdir().unwrap();
    let b: Arc<Broker> = Broker::open(
        Settings::single(1, dir.path().to_path_buf()),
        Arc::new(keel_node::metrics::Metrics::new()),
    )
    .await
    .unwrap();
    let mut create = CreateTopicsRequest::default();
    create.topics = vec![CreatableTopic::default()
        .with_name(TopicName(s("t")))
        .with_num_partitions(1)
        .with_replication_factor(1)];
    call(
        &b,
        ApiKey::CreateTopics,
        5,
        RequestKind::CreateTopics(create),
    )
    .await;
    assert_eq!(find_coordinator(&b, 3, 0, "g").await, (code::NONE, 1));
    assert_eq!(find_coordinator(&b, 3, 1, TXN).await, (code::NONE, 1));
    let first = init_retrying(&b, TXN).await;
    assert_eq!(first.error_code, code::NONE);
    let producer = (first.producer_id.0, first.producer_epoch);

    // Before AddOffsetsToTxn the group's partition is not in the transaction (Kafka 3.6+
    // verifies it): INVALID_TXN_STATE before v4, TRANSACTION_ABORTABLE from v4.
    assert_eq!(
        txn_offset_commit(&b, 3, producer, ("", -1), 5).await,
        code::INVALID_TXN_STATE
    );
    assert_eq!(
        txn_offset_commit(&b, 4, producer, ("", -1), 5).await,
        code::TRANSACTION_ABORTABLE
    );
    assert_eq!(
        add_offsets(&b, producer.0, producer.1, "g").await,
        code::NONE
    );
    // A member the group does not know: UNKNOWN_MEMBER_ID.
    assert_eq!(
        txn_offset_commit(&b, 3, producer, ("stranger", 1), 5).await,
        code::UNKNOWN_MEMBER_ID
    );
    assert_eq!(
        txn_offset_commit(&b, 3, producer, ("", -1), 5).await,
        code::NONE
    );
    assert_eq!(committed(&b, false).await, Ok(-1), "not committed yet");
    assert_eq!(
        committed(&b, true).await,
        Err(code::UNSTABLE_OFFSET_COMMIT),
        "KIP-447: pending in a transaction"
    );
    assert_eq!(
        end_txn(&b, 3, producer.0, producer.1, true).await,
        code::NONE
    );
    wait_for("the commit marker on the group's partition", async || {
        committed(&b, true).await == Ok(5)
    })
    .await;

    // A second transaction commits offset 9 and aborts: the offset stays 5.
    assert_eq!(
        add_offsets(&b, producer.0, producer.1, "g").await,
        code::NONE
    );
    assert_eq!(
        txn_offset_commit(&b, 4, producer, ("", -1), 9).await,
        code::NONE
    );
    assert_eq!(committed(&b, false).await, Ok(5));
    assert_eq!(
        end_txn(&b, 3, producer.0, producer.1, false).await,
        code::NONE
    );
    wait_for("the abort marker on the group's partition", async || {
        committed(&b, true).await == Ok(5)
    })
    .await;

    // A new producer fences the first: its epoch is refused.
    let second = init_retrying(&b, TXN).await;
    assert_eq!(second.error_code, code::NONE);
    assert_eq!(
        txn_offset_commit(&b, 3, producer, ("", -1), 11).await,
        code::INVALID_PRODUCER_EPOCH
    );
    assert_eq!(committed(&b, true).await, Ok(5));
}

/// DescribeTransactions of one id: its error code.
async fn describe_txn(b: &Arc<Broker>, id: &str) -> i16 {
    let mut d = DescribeTransactionsRequest::default();
    d.transactional_ids = vec![TransactionalId(s(id))];
    match call(
        b,
        ApiKey::DescribeTransactions,
        0,
        RequestKind::DescribeTransactions(d),
    )
    .await
    {
        ResponseKind::DescribeTransactions(d) => d.transaction_states[0].error_code,
        other => panic!("{other:?}"),
    }
}

/// The bad input sent while a transaction is open (a transactional id of 100 KiB on
/// every transactional API, unknown FindCoordinator key types on every version that has a key
/// type, EndTxn of an id with no transaction) gets a clear error each, and harms nothing: the
/// open transaction then commits, and read_committed returns its record with no aborted
/// transaction listed (KIP-98; Kafka's `TransactionCoordinator` validates the id first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_beside_an_open_transaction_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let b: Arc<Broker> = Broker::open(
        Settings::single(1, dir.path().to_path_buf()),
        Arc::new(keel_node::metrics::Metrics::new()),
    )
    .await
    .unwrap();
    let mut create = CreateTopicsRequest::default();
    create.topics = vec![CreatableTopic::default()
        .with_name(TopicName(s("t")))
        .with_num_partitions(1)
        .with_replication_factor(1)];
    call(
        &b,
        ApiKey::CreateTopics,
        5,
        RequestKind::CreateTopics(create),
    )
    .await;
    assert_eq!(find_coordinator(&b, 1, 1, TXN).await, (code::NONE, 1));
    let good = init_retrying(&b, TXN).await;
    assert_eq!(good.error_code, code::NONE);
    let (pid, epoch) = (good.producer_id.0, good.producer_epoch);
    assert_eq!(
        add_partitions(&b, pid, epoch, &["t"]).await,
        vec![code::NONE]
    );
    assert_eq!(
        produce(&b, Some(TXN), txn_batch(pid, epoch, 0)).await,
        code::NONE
    );

    // A transactional id of 100 KiB, on every API that takes one.
    let huge = "y".repeat(100 * 1024);
    assert_eq!(init(&b, &huge, 4).await.error_code, code::INVALID_REQUEST);
    assert_eq!(
        add_partitions_of(&b, &huge, pid, epoch, &["t"]).await,
        vec![code::INVALID_REQUEST],
        "AddPartitionsToTxn"
    );
    assert_eq!(
        add_offsets_of(&b, &huge, pid, epoch, "g").await,
        code::INVALID_REQUEST,
        "AddOffsetsToTxn"
    );
    assert_eq!(
        end_txn_of(&b, &huge, 3, pid, epoch, true).await,
        code::INVALID_REQUEST,
        "EndTxn"
    );
    assert_eq!(
        describe_txn(&b, &huge).await,
        code::TRANSACTIONAL_ID_NOT_FOUND,
        "DescribeTransactions"
    );
    // The good producer's next batch under the huge id: the partition's transaction belongs
    // to the producer id, which the huge id does not own.
    let e = produce(&b, Some(&huge), txn_batch(pid, epoch, 1)).await;
    assert_eq!(
        e,
        code::INVALID_REQUEST,
        "Produce with a 100 KiB transactional id"
    );

    // Unknown key types, on every version with a key type (v1-v3 one key, v4+ batched).
    for v in 1..=5 {
        for key_type in [-1i8, 2, 127] {
            let (error, _) = find_coordinator(&b, v, key_type, TXN).await;
            assert_eq!(error, code::INVALID_REQUEST, "v{v} key type {key_type}");
        }
    }
    // EndTxn of an id that has no transaction, and one the coordinator never saw.
    let other = init_retrying(&b, "txn-idle").await;
    assert_eq!(other.error_code, code::NONE);
    assert_eq!(
        end_txn_of(
            &b,
            "txn-idle",
            3,
            other.producer_id.0,
            other.producer_epoch,
            false
        )
        .await,
        code::INVALID_TXN_STATE
    );

    // Nothing harmed: the open transaction commits, and read_committed serves its record.
    assert_eq!(latest(&b, 1).await, 0, "the transaction is still open");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let e = end_txn(&b, 3, pid, epoch, true).await;
        if e == code::NONE {
            break;
        }
        assert_eq!(e, code::CONCURRENT_TRANSACTIONS, "EndTxn commit");
        assert!(Instant::now() < deadline, "EndTxn still concurrent");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_for("the COMMIT marker", async || latest(&b, 1).await == 2).await;
    let data = fetch_committed(&b).await;
    assert_eq!(data.error_code, code::NONE);
    assert_eq!((data.high_watermark, data.last_stable_offset), (2, 2));
    assert_eq!(
        data.aborted_transactions.map(|a| a.len()),
        Some(0),
        "nothing aborted"
    );
    let mut records = data.records.expect("the committed batch and its marker");
    let mut data_bases = Vec::new();
    while let Some(batch) = keel_core::batch::Batch::parse_prefix(&records).unwrap() {
        let header = batch.header();
        records = records.slice(batch.size()..);
        if !header.is_control() {
            data_bases.push(header.base_offset.0);
        }
    }
    assert_eq!(data_bases, vec![0], "the one committed batch");
}

/// EndTxn v5 (transaction version 2): the error, and the producer id and epoch of the next
/// transaction.
async fn end_txn_v5(b: &Arc<Broker>, pid: i64, epoch: i16, commit: bool) -> (i16, i64, i16) {
    let mut r = EndTxnRequest::default();
    r.transactional_id = TransactionalId(s(TXN));
    r.producer_id = ProducerId(pid);
    r.producer_epoch = epoch;
    r.committed = commit;
    match call(b, ApiKey::EndTxn, 5, RequestKind::EndTxn(r)).await {
        ResponseKind::EndTxn(r) => (r.error_code, r.producer_id.0, r.producer_epoch),
        other => panic!("{other:?}"),
    }
}

/// [`produce_at`], retried while the partition's leader adds it to the transaction (what a
/// client retries: NOT_ENOUGH_REPLICAS).
async fn produce_retrying(b: &Arc<Broker>, version: i16, records: Bytes) -> i16 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let e = produce_at(b, version, Some(TXN), records.clone()).await;
        if e != code::NOT_ENOUGH_REPLICAS || Instant::now() > deadline {
            return e;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Transaction version 2 end to end (KIP-890 part 2), as a Java producer on a cluster that
/// finalizes `transaction.version` 2 drives it: no AddPartitionsToTxn or AddOffsetsToTxn, a
/// transactional Produce v12 adds its partition and a TxnOffsetCommit v5 the group's, EndTxn
/// v5 bumps the epoch and answers it, and the markers carry it. A zombie write of the ended
/// transaction (its old epoch, a delayed retry) is then refused at the partition
/// (INVALID_PRODUCER_EPOCH) and never reaches a read_committed reader: the hanging or
/// misattributed write KIP-890 fixes. A retried EndTxn v5 gets the same answer; the next
/// transaction runs at the new epoch, and its abort bumps again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_version_2_bumps_the_epoch_and_fences_the_ended_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let b: Arc<Broker> = Broker::open(
        Settings::single(1, dir.path().to_path_buf()),
        Arc::new(keel_node::metrics::Metrics::new()),
    )
    .await
    .unwrap();
    let mut create = CreateTopicsRequest::default();
    create.topics = vec![CreatableTopic::default()
        .with_name(TopicName(s("t")))
        .with_num_partitions(1)
        .with_replication_factor(1)];
    call(
        &b,
        ApiKey::CreateTopics,
        5,
        RequestKind::CreateTopics(create),
    )
    .await;
    assert_eq!(find_coordinator(&b, 3, 0, "g").await, (code::NONE, 1));
    assert_eq!(find_coordinator(&b, 3, 1, TXN).await, (code::NONE, 1));
    let first = init_retrying(&b, TXN).await;
    assert_eq!(first.error_code, code::NONE);
    let (pid, e0) = (first.producer_id.0, first.producer_epoch);

    // The first transaction: a Produce v12 and a TxnOffsetCommit v5 add their partitions.
    assert_eq!(
        produce_retrying(&b, 12, txn_batch(pid, e0, 0)).await,
        code::NONE
    );
    assert_eq!(
        txn_offset_commit(&b, 5, (pid, e0), ("", -1), 1).await,
        code::NONE
    );
    assert_eq!(latest(&b, 1).await, 0, "the open transaction holds the LSO");
    assert_eq!(committed(&b, true).await, Err(code::UNSTABLE_OFFSET_COMMIT));
    assert_eq!(
        end_txn_v5(&b, pid, e0, true).await,
        (code::NONE, pid, e0 + 1),
        "EndTxn v5 answers the bumped epoch"
    );
    wait_for("the commit marker", async || latest(&b, 1).await == 2).await;
    wait_for("the offsets' commit marker", async || {
        committed(&b, true).await == Ok(1)
    })
    .await;
    assert_eq!(
        producers(&b).await,
        vec![(pid, i32::from(e0) + 1, -1)],
        "the marker carried the bumped epoch"
    );

    // The zombie: a write of the ended transaction (its epoch, its next sequence) at v12 and
    // at v11 is refused, and the log does not grow.
    for version in [12, 11] {
        assert_eq!(
            produce_at(&b, version, Some(TXN), txn_batch(pid, e0, 1)).await,
            code::INVALID_PRODUCER_EPOCH,
            "a write of the ended transaction at Produce v{version}"
        );
    }
    assert_eq!(
        txn_offset_commit(&b, 5, (pid, e0), ("", -1), 7).await,
        code::INVALID_PRODUCER_EPOCH
    );
    assert_eq!(
        latest(&b, 0).await,
        2,
        "nothing of the zombie is in the log"
    );
    // A retry of the EndTxn that bumped the epoch gets its answer again; the old epoch can
    // neither commit nor abort anything else.
    assert_eq!(
        end_txn_v5(&b, pid, e0, true).await,
        (code::NONE, pid, e0 + 1)
    );
    assert_eq!(
        end_txn_v5(&b, pid, e0, false).await.0,
        code::INVALID_TXN_STATE
    );

    // The next transaction runs at the new epoch (sequences start over) and aborts.
    let e1 = e0 + 1;
    assert_eq!(
        produce_retrying(&b, 12, txn_batch(pid, e1, 0)).await,
        code::NONE
    );
    assert_eq!(
        end_txn_v5(&b, pid, e1, false).await,
        (code::NONE, pid, e1 + 1)
    );
    wait_for("the abort marker", async || latest(&b, 1).await == 4).await;
    let data = fetch_committed(&b).await;
    let aborted = data.aborted_transactions.unwrap_or_default();
    assert_eq!(aborted.len(), 1, "{aborted:?}");
    assert_eq!(
        (aborted[0].producer_id.0, aborted[0].first_offset),
        (pid, 2)
    );
    // The aborted transaction's epoch is fenced too, and the offsets stay where the commit put
    // them.
    assert_eq!(
        produce_at(&b, 12, Some(TXN), txn_batch(pid, e1, 1)).await,
        code::INVALID_PRODUCER_EPOCH
    );
    assert_eq!(committed(&b, true).await, Ok(1));
}
