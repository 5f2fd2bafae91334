//! Tests of the transaction coordinator and its records. Each unit test names the Kafka
//! behaviour it pins (Kafka's `TransactionCoordinator.scala`, `TransactionMetadata.scala`,
//! `TransactionStateManager.scala`, `TransactionLog.scala`, KIP-98, KIP-360, KIP-664, KIP-890).

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::record::{encode_key, KEY_VERSION, VALUE_VERSION};
use super::*;
use crate::batch::EndTxnMarker;
use crate::producer::txn::{TxnStateError, TxnTracker};
use crate::types::Offset;

const TIMEOUT_MS: i32 = 60_000;

fn tp(topic: &str, partition: i32) -> TopicPartition {
    TopicPartition {
        topic: topic.to_string(),
        partition,
    }
}

/// The coordinator with a shell around it: virtual time, request ids, a producer id
/// allocator, the `__transaction_state` log (the durable prefix marked), and every answer and
/// marker collected. With `auto_durable` every record is acknowledged at once; with
/// `auto_markers` every marker is reported written at once.
struct Harness {
    c: TxnCoordinator,
    config: TxnConfig,
    now: i64,
    next_request: u64,
    next_pid: i64,
    pids_left: Option<usize>,
    /// Every record written, in log order.
    log: Vec<TxnRecord>,
    /// How many records of `log` are durable.
    durable_len: usize,
    /// `log` index of the current coordinator's sequence 0 (records restart at 1 on reload).
    seq_base: usize,
    answers: BTreeMap<RequestId, Response>,
    markers: Vec<WriteMarkers>,
    /// Every marker ever emitted, with the durable log length when it came out.
    markers_emitted: Vec<(WriteMarkers, usize)>,
    /// Every partition reported written, per transaction (id, producer id, epoch).
    reported: BTreeMap<(String, ProducerId, i16), BTreeSet<TopicPartition>>,
    auto_durable: bool,
    auto_markers: bool,
}

impl Harness {
    fn new() -> Harness {
        Harness::with_config(TxnConfig::default())
    }

    fn with_config(config: TxnConfig) -> Harness {
        Harness {
            c: TxnCoordinator::new(config.clone(), 5),
            config,
            now: 1_000,
            next_request: 0,
            next_pid: 1_000,
            pids_left: None,
            log: Vec::new(),
            durable_len: 0,
            seq_base: 0,
            answers: BTreeMap::new(),
            markers: Vec::new(),
            markers_emitted: Vec::new(),
            reported: BTreeMap::new(),
            auto_durable: true,
            auto_markers: true,
        }
    }

    fn manual() -> Harness {
        let mut h = Harness::new();
        h.auto_durable = false;
        h.auto_markers = false;
        h
    }

    fn request_id(&mut self) -> RequestId {
        self.next_request += 1;
        RequestId(self.next_request)
    }

    /// Collects the coordinator's outputs, then acknowledges records and markers as the
    /// `auto_*` flags say, until nothing moves.
    fn drain(&mut self) {
        loop {
            self.c.check_invariants();
            for (seq, record) in self.c.poll_records() {
                assert_eq!(
                    self.seq_base + seq as usize,
                    self.log.len() + 1,
                    "records come out in sequence order, without gaps"
                );
                let (key, value) = record.encode().expect("the coordinator's records encode");
                let decoded = TxnRecord::decode(&key, value.as_deref()).expect("decode");
                assert_eq!(decoded.as_ref(), Some(&record), "records round-trip");
                self.log.push(record);
            }
            for m in self.c.poll_markers() {
                self.markers_emitted.push((m.clone(), self.durable_len));
                self.markers.push(m);
            }
            for (id, r) in self.c.poll_responses() {
                assert!(
                    self.answers.insert(id, r).is_none(),
                    "one answer per request"
                );
            }
            let mut moved = false;
            if self.auto_durable && self.durable_len < self.log.len() {
                self.durable();
                moved = true;
            }
            if self.auto_markers && !self.markers.is_empty() {
                self.write_markers();
                moved = true;
            }
            if !moved {
                return;
            }
        }
    }

    /// Every record written so far is durable.
    fn durable(&mut self) {
        self.durable_len = self.log.len();
        let seq = (self.durable_len - self.seq_base) as u64;
        self.c.records_committed(seq);
        self.drain();
    }

    /// Every marker emitted so far is written.
    fn write_markers(&mut self) {
        for m in std::mem::take(&mut self.markers) {
            self.report(&m, &m.partitions);
        }
        self.drain();
    }

    /// Reports `partitions` of `m` written (without draining).
    fn report(&mut self, m: &WriteMarkers, partitions: &[TopicPartition]) {
        let key = (m.transactional_id.clone(), m.producer_id, m.producer_epoch);
        self.reported
            .entry(key)
            .or_default()
            .extend(partitions.iter().cloned());
        self.c.markers_written(
            self.now,
            &m.transactional_id,
            m.producer_id,
            m.producer_epoch,
            partitions,
        );
    }

    fn advance(&mut self, ms: i64) {
        self.now += ms;
        self.c.poll(self.now);
        self.drain();
    }

    fn answer<T>(
        &mut self,
        id: RequestId,
        now: Reply<T>,
        late: impl Fn(Response) -> T,
    ) -> Option<T> {
        self.drain();
        match now {
            Reply::Now(t) => Some(t),
            Reply::Pending => self.answers.remove(&id).map(late),
        }
    }

    fn init_req(&self, tid: &str, expected: Option<(ProducerId, i16)>) -> InitProducerIdRequest {
        let (producer_id, producer_epoch) = expected.unwrap_or((ProducerId::NONE, -1));
        InitProducerIdRequest {
            transactional_id: tid.to_string(),
            transaction_timeout_ms: TIMEOUT_MS,
            producer_id,
            producer_epoch,
        }
    }

    /// InitProducerId; `None` while its answer waits.
    fn init_with(&mut self, req: InitProducerIdRequest) -> Option<InitProducerIdResponse> {
        let id = self.request_id();
        let now = self.now;
        let mut alloc_state = (self.next_pid, self.pids_left);
        let reply = {
            let mut alloc = || {
                if let Some(left) = &mut alloc_state.1 {
                    *left = left.checked_sub(1)?;
                }
                alloc_state.0 += 1;
                Some(ProducerId(alloc_state.0))
            };
            self.c.handle_init_producer_id(now, id, &req, &mut alloc)
        };
        (self.next_pid, self.pids_left) = alloc_state;
        self.answer(id, reply, |r| match r {
            Response::InitProducerId(r) => r,
            other => panic!("an InitProducerId answer, not {other:?}"),
        })
    }

    fn init(
        &mut self,
        tid: &str,
        expected: Option<(ProducerId, i16)>,
    ) -> Option<InitProducerIdResponse> {
        let req = self.init_req(tid, expected);
        self.init_with(req)
    }

    /// InitProducerId that must succeed at once (auto durability): the producer id and epoch.
    fn init_ok(&mut self, tid: &str) -> (ProducerId, i16) {
        let r = self.init(tid, None).expect("answered");
        assert_eq!(r.error_code, code::NONE, "{r:?}");
        (r.producer_id, r.producer_epoch)
    }

    fn add(
        &mut self,
        tid: &str,
        p: (ProducerId, i16),
        partitions: &[TopicPartition],
    ) -> Option<ErrorCode> {
        self.add_tv(tid, p, partitions, 0)
    }

    /// AddPartitionsToTxn as a partition leader sends it for a transaction-version-2 write
    /// (v5) when `transaction_version` is 2.
    fn add_tv(
        &mut self,
        tid: &str,
        p: (ProducerId, i16),
        partitions: &[TopicPartition],
        transaction_version: i16,
    ) -> Option<ErrorCode> {
        let id = self.request_id();
        let req = AddPartitionsRequest {
            transactional_id: tid.to_string(),
            producer_id: p.0,
            producer_epoch: p.1,
            partitions: partitions.to_vec(),
            transaction_version,
        };
        let reply = self.c.handle_add_partitions(self.now, id, &req);
        self.answer(id, reply, |r| match r {
            Response::AddPartitions(e) => e,
            other => panic!("an AddPartitions answer, not {other:?}"),
        })
    }

    fn add_offsets(&mut self, tid: &str, p: (ProducerId, i16), group: &str) -> Option<ErrorCode> {
        let id = self.request_id();
        let req = AddOffsetsRequest {
            transactional_id: tid.to_string(),
            producer_id: p.0,
            producer_epoch: p.1,
            group_id: group.to_string(),
        };
        let reply = self.c.handle_add_offsets(self.now, id, &req, 50);
        self.answer(id, reply, |r| match r {
            Response::AddOffsets(e) => e,
            other => panic!("an AddOffsets answer, not {other:?}"),
        })
    }

    fn end(&mut self, tid: &str, p: (ProducerId, i16), result: TxnResult) -> Option<ErrorCode> {
        let id = self.request_id();
        let req = EndTxnRequest {
            transactional_id: tid.to_string(),
            producer_id: p.0,
            producer_epoch: p.1,
            result,
        };
        let reply = self.c.handle_end_txn(self.now, id, &req);
        self.answer(id, reply, |r| match r {
            Response::EndTxn(e) => e,
            other => panic!("an EndTxn answer, not {other:?}"),
        })
    }

    /// EndTxn v5 (transaction version 2); `None` while its answer waits.
    fn end_v2(
        &mut self,
        tid: &str,
        p: (ProducerId, i16),
        result: TxnResult,
    ) -> Option<EndTxnResponse> {
        let id = self.request_id();
        let req = EndTxnRequest {
            transactional_id: tid.to_string(),
            producer_id: p.0,
            producer_epoch: p.1,
            result,
        };
        let now = self.now;
        let mut alloc_state = (self.next_pid, self.pids_left);
        let reply = {
            let mut alloc = || {
                if let Some(left) = &mut alloc_state.1 {
                    *left = left.checked_sub(1)?;
                }
                alloc_state.0 += 1;
                Some(ProducerId(alloc_state.0))
            };
            self.c.handle_end_txn_v2(now, id, &req, &mut alloc)
        };
        (self.next_pid, self.pids_left) = alloc_state;
        self.answer(id, reply, |r| match r {
            Response::EndTxnV2(r) => r,
            other => panic!("an EndTxn v5 answer, not {other:?}"),
        })
    }

    fn verify(
        &self,
        tid: &str,
        p: (ProducerId, i16),
        partitions: &[TopicPartition],
    ) -> Result<Vec<(TopicPartition, ErrorCode)>, ErrorCode> {
        self.c.verify_partitions(&AddPartitionsRequest {
            transactional_id: tid.to_string(),
            producer_id: p.0,
            producer_epoch: p.1,
            partitions: partitions.to_vec(),
            transaction_version: 0,
        })
    }

    fn durable_of(&self, tid: &str) -> Option<TxnLogValue> {
        self.c.txn(tid).and_then(|t| t.durable().cloned())
    }

    fn state(&self, tid: &str) -> Option<TxnState> {
        self.durable_of(tid).map(|v| v.state)
    }

    /// A coordinator loaded from the durable records.
    fn replayed(&self) -> TxnCoordinator {
        TxnCoordinator::load(
            self.config.clone(),
            6,
            self.log[..self.durable_len].iter().cloned(),
        )
        .expect("the durable records load")
    }

    /// The coordinator moves: the records not yet durable are lost (the new leader truncates
    /// them), the old one resigns, a new one loads the durable records.
    fn reload(&mut self) -> Vec<(RequestId, Response)> {
        self.log.truncate(self.durable_len);
        self.markers.clear();
        let fresh = self.replayed();
        let old = std::mem::replace(&mut self.c, fresh);
        let answers = old.resign();
        self.seq_base = self.log.len();
        self.drain();
        answers
    }
}

fn durable_view(c: &TxnCoordinator) -> BTreeMap<String, TxnLogValue> {
    c.txns()
        .filter_map(|t| {
            t.durable()
                .map(|v| (t.transactional_id().to_string(), v.clone()))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// InitProducerId
// ---------------------------------------------------------------------------------------------

/// KIP-98: a new transactional id gets a fresh producer id at epoch 0, written as Empty, and
/// the answer waits until that record is durable.
#[test]
fn init_new_id_gets_epoch_0_once_its_record_is_durable() {
    let mut h = Harness::manual();
    assert_eq!(h.init("t", None), None, "the answer waits for the record");
    assert_eq!(h.log.len(), 1);
    let v = h.log[0].value.clone().expect("a value");
    assert_eq!(
        (v.state, v.producer_epoch, v.start_ms),
        (TxnState::Empty, 0, -1)
    );
    assert_eq!(h.state("t"), None, "nothing durable yet");
    assert_eq!(
        h.init("t", None).unwrap().error_code,
        code::CONCURRENT_TRANSACTIONS
    );
    h.durable();
    let id = RequestId(1);
    assert_eq!(
        h.answers.remove(&id),
        Some(Response::InitProducerId(InitProducerIdResponse {
            error_code: code::NONE,
            producer_id: v.producer_id,
            producer_epoch: 0
        }))
    );
    assert_eq!(h.state("t"), Some(TxnState::Empty));
}

/// KIP-98 zombie fencing: InitProducerId again bumps the epoch and keeps the producer id;
/// the older producer is PRODUCER_FENCED everywhere (`TransactionCoordinator`'s epoch check).
#[test]
fn init_again_bumps_the_epoch_and_fences_the_older_producer() {
    let mut h = Harness::new();
    let old = h.init_ok("t");
    let new = h.init_ok("t");
    assert_eq!((new.0, new.1), (old.0, old.1 + 1));
    let parts = [tp("x", 0)];
    assert_eq!(h.add("t", old, &parts), Some(code::PRODUCER_FENCED));
    assert_eq!(h.add_offsets("t", old, "g"), Some(code::PRODUCER_FENCED));
    assert_eq!(
        h.end("t", old, TxnResult::Commit),
        Some(code::PRODUCER_FENCED)
    );
    assert_eq!(h.verify("t", old, &parts), Err(code::PRODUCER_FENCED));
    assert_eq!(h.add("t", new, &parts), Some(code::NONE));
}

/// KIP-588: PRODUCER_FENCED is INVALID_PRODUCER_EPOCH for InitProducerId < v4 and
/// AddPartitionsToTxn, AddOffsetsToTxn, EndTxn < v2 (`KafkaApis`); other codes pass through.
#[test]
fn producer_fenced_is_downgraded_for_old_versions() {
    let fenced = code::PRODUCER_FENCED;
    for (api, first_knowing) in [
        (TxnApi::InitProducerId, 4),
        (TxnApi::AddPartitionsToTxn, 2),
        (TxnApi::AddOffsetsToTxn, 2),
        (TxnApi::EndTxn, 2),
    ] {
        for version in 0..6 {
            let expected = if version < first_knowing {
                code::INVALID_PRODUCER_EPOCH
            } else {
                fenced
            };
            assert_eq!(
                error_for_version(api, version, fenced),
                expected,
                "{api:?} v{version}"
            );
            assert_eq!(
                error_for_version(api, version, code::CONCURRENT_TRANSACTIONS),
                code::CONCURRENT_TRANSACTIONS
            );
        }
    }
}

/// `transaction.timeout.ms` must be positive and at most `transaction.max.timeout.ms`
/// (`TransactionCoordinator.isValidTransactionTimeoutMs`).
#[test]
fn init_checks_the_transaction_timeout() {
    let mut h = Harness::new();
    for (timeout, expected) in [
        (0, code::INVALID_TRANSACTION_TIMEOUT),
        (-5, code::INVALID_TRANSACTION_TIMEOUT),
        (
            TRANSACTION_MAX_TIMEOUT_MS_DEFAULT + 1,
            code::INVALID_TRANSACTION_TIMEOUT,
        ),
        (TRANSACTION_MAX_TIMEOUT_MS_DEFAULT, code::NONE),
        (1, code::NONE),
    ] {
        let req = InitProducerIdRequest {
            transaction_timeout_ms: timeout,
            ..h.init_req("t", None)
        };
        assert_eq!(h.init_with(req).unwrap().error_code, expected, "{timeout}");
    }
    assert_eq!(
        h.durable_of("t").unwrap().timeout_ms,
        1,
        "the last accepted timeout is kept"
    );
}

/// An empty transactional id is INVALID_REQUEST (`KafkaApis`); so is one longer than the
/// record key can hold (keel). Half a KIP-360 producer id/epoch pair is INVALID_REQUEST.
#[test]
fn init_refuses_bad_ids_and_half_expected_pairs() {
    let mut h = Harness::new();
    assert_eq!(h.init("", None).unwrap().error_code, code::INVALID_REQUEST);
    let long = "x".repeat(TRANSACTIONAL_ID_BYTES_MAX + 1);
    assert_eq!(
        h.init(&long, None).unwrap().error_code,
        code::INVALID_REQUEST
    );
    let huge = "y".repeat(100 * 1024);
    assert_eq!(
        h.init(&huge, None).unwrap().error_code,
        code::INVALID_REQUEST
    );
    let longest = "z".repeat(TRANSACTIONAL_ID_BYTES_MAX);
    assert_eq!(h.init(&longest, None).unwrap().error_code, code::NONE);
    for (pid, epoch) in [(ProducerId::NONE, 0), (ProducerId(5), -1)] {
        let req = InitProducerIdRequest {
            producer_id: pid,
            producer_epoch: epoch,
            ..h.init_req("t", None)
        };
        assert_eq!(h.init_with(req).unwrap().error_code, code::INVALID_REQUEST);
    }
    assert!(h
        .log
        .iter()
        .all(|r| r.transactional_id.len() <= TRANSACTIONAL_ID_BYTES_MAX));
}

/// InitProducerId during an open transaction fences it: PrepareAbort with the epoch bumped,
/// answered CONCURRENT_TRANSACTIONS; the abort markers carry the bumped epoch; the client's
/// retry bumps once more (`handleInitProducerId`'s Ongoing case, `prepareFenceProducerEpoch`).
#[test]
fn init_during_a_transaction_fences_and_aborts_it() {
    let mut h = Harness::new();
    h.auto_markers = false;
    let p = h.init_ok("t");
    assert_eq!(h.add("t", p, &[tp("x", 0), tp("y", 1)]), Some(code::NONE));
    let r = h.init("t", None).unwrap();
    assert_eq!(r.error_code, code::CONCURRENT_TRANSACTIONS);
    let v = h.durable_of("t").unwrap();
    assert_eq!(
        (v.state, v.producer_epoch),
        (TxnState::PrepareAbort, p.1 + 1)
    );
    assert_eq!(h.markers.len(), 1);
    let m = &h.markers[0];
    assert_eq!(
        (m.result, m.producer_id, m.producer_epoch),
        (TxnResult::Abort, p.0, p.1 + 1)
    );
    assert_eq!(m.partitions, vec![tp("x", 0), tp("y", 1)]);
    assert_eq!(m.coordinator_epoch, 5);
    assert_eq!(
        h.init("t", None).unwrap().error_code,
        code::CONCURRENT_TRANSACTIONS,
        "Prepare*"
    );
    assert_eq!(
        h.end("t", p, TxnResult::Commit),
        Some(code::PRODUCER_FENCED)
    );
    h.write_markers();
    assert_eq!(h.state("t"), Some(TxnState::CompleteAbort));
    let again = h.init_ok("t");
    assert_eq!(again, (p.0, p.1 + 2));
}

/// KIP-360: with the producer id and epoch it holds, a producer bumps its own epoch after an
/// abortable error; a retry of that bump (its answer lost) gets the same epoch back; any other
/// epoch or producer id is PRODUCER_FENCED (`prepareIncrementProducerEpoch`,
/// `isValidProducerId`).
#[test]
fn kip360_bump_with_the_expected_epoch_and_its_retry() {
    let mut h = Harness::new();
    let p = h.init_ok("t");
    let bumped = h.init("t", Some(p)).unwrap();
    assert_eq!(
        (bumped.error_code, bumped.producer_epoch),
        (code::NONE, p.1 + 1)
    );
    let retry = h.init("t", Some(p)).unwrap();
    assert_eq!(
        (retry.error_code, retry.producer_id, retry.producer_epoch),
        (code::NONE, p.0, p.1 + 1),
        "a retry is not a bump"
    );
    for expected in [(p.0, p.1 + 5), (ProducerId(p.0 .0 + 77), p.1 + 1)] {
        assert_eq!(
            h.init("t", Some(expected)).unwrap().error_code,
            code::PRODUCER_FENCED,
            "{expected:?}"
        );
    }
    // A new producer (no expected pair) resets the last epoch: the old retry is now fenced.
    let fresh = h.init_ok("t");
    assert_eq!(fresh.1, p.1 + 2);
    assert_eq!(
        h.init("t", Some(p)).unwrap().error_code,
        code::PRODUCER_FENCED
    );
    // KIP-360 on an id the coordinator does not know: a new producer id at epoch 0.
    let r = h.init("other", Some((ProducerId(9), 3))).unwrap();
    assert_eq!((r.error_code, r.producer_epoch), (code::NONE, 0));
}

/// A loaded state at epoch `epoch` (Empty), for the exhaustion tests.
fn loaded_at_epoch(epoch: i16) -> Harness {
    let mut h = Harness::new();
    let value = TxnLogValue {
        producer_id: ProducerId(500),
        previous_producer_id: ProducerId(500),
        next_producer_id: ProducerId::NONE,
        producer_epoch: epoch,
        timeout_ms: TIMEOUT_MS,
        state: TxnState::CompleteCommit,
        partitions: BTreeSet::new(),
        last_update_ms: 0,
        start_ms: 0,
        client_transaction_version: 0,
    };
    h.log.push(TxnRecord {
        transactional_id: "t".into(),
        value: Some(value),
    });
    h.durable_len = 1;
    h.reload();
    h
}

/// Epoch exhaustion (`isEpochExhausted`, `prepareProducerIdRotation`): at epoch
/// `i16::MAX - 1` InitProducerId moves to a new producer id at epoch 0 and remembers the old one,
/// so that a KIP-360 retry of that rotation gets the new id back.
#[test]
fn an_exhausted_epoch_moves_to_a_new_producer_id() {
    let mut h = loaded_at_epoch(EPOCH_EXHAUSTED - 1);
    let p = h.init_ok("t");
    assert_eq!(p, (ProducerId(500), EPOCH_EXHAUSTED));
    let r = h.init("t", Some(p)).unwrap();
    assert_eq!(r.error_code, code::NONE);
    assert_ne!(r.producer_id, ProducerId(500));
    assert_eq!(r.producer_epoch, 0);
    assert_eq!(
        h.durable_of("t").unwrap().previous_producer_id,
        ProducerId(500)
    );
    let retry = h.init("t", Some(p)).unwrap();
    assert_eq!(
        (retry.error_code, retry.producer_id, retry.producer_epoch),
        (code::NONE, r.producer_id, 0),
        "a retry of the rotation"
    );
    // Without an expected pair, an exhausted id rotates too.
    let mut h = loaded_at_epoch(EPOCH_EXHAUSTED);
    let p = h.init_ok("t");
    assert_eq!(p.1, 0);
    assert_ne!(p.0, ProducerId(500));
}

/// The fence of an open transaction at the last bumpable epoch uses the one epoch left
/// (`i16::MAX`); the next InitProducerId moves to a new producer id.
#[test]
fn a_fence_at_the_exhausted_epoch_uses_the_last_one() {
    let mut h = loaded_at_epoch(EPOCH_EXHAUSTED - 1);
    let p = h.init_ok("t");
    assert_eq!(p.1, EPOCH_EXHAUSTED);
    assert_eq!(h.add("t", p, &[tp("x", 0)]), Some(code::NONE));
    assert_eq!(
        h.init("t", None).unwrap().error_code,
        code::CONCURRENT_TRANSACTIONS
    );
    assert_eq!(h.state("t"), Some(TxnState::CompleteAbort));
    assert_eq!(h.durable_of("t").unwrap().producer_epoch, i16::MAX);
    let q = h.init_ok("t");
    assert_eq!(q.1, 0);
    assert_ne!(q.0, p.0);
}

/// A producer that sends the fence's epoch (`i16::MAX`, never given out) can open a
/// transaction with it; its timeout aborts it at the same epoch instead of overflowing, and
/// the next InitProducerId moves to a new producer id.
#[test]
fn a_transaction_at_the_maximum_epoch_times_out_without_overflow() {
    let mut h = loaded_at_epoch(i16::MAX);
    let p = (ProducerId(500), i16::MAX);
    assert_eq!(h.add("t", p, &[tp("x", 0)]), Some(code::NONE));
    h.advance(i64::from(TIMEOUT_MS) + 1);
    let v = h.durable_of("t").unwrap();
    assert_eq!(
        (v.state, v.producer_epoch),
        (TxnState::CompleteAbort, i16::MAX)
    );
    assert_eq!(h.add("t", p, &[tp("x", 0)]), Some(code::NONE));
    assert_eq!(
        h.init("t", None).unwrap().error_code,
        code::CONCURRENT_TRANSACTIONS
    );
    let q = h.init_ok("t");
    assert_eq!(q.1, 0);
    assert_ne!(q.0, p.0);
}

/// No producer id at hand: COORDINATOR_LOAD_IN_PROGRESS, which clients retry (Kafka's
/// `RPCProducerIdManager` while it waits for a block); nothing is written.
#[test]
fn no_producer_id_at_hand_is_retriable() {
    let mut h = Harness::new();
    h.pids_left = Some(0);
    assert_eq!(
        h.init("t", None).unwrap().error_code,
        code::COORDINATOR_LOAD_IN_PROGRESS
    );
    assert!(h.log.is_empty());
    assert!(h.c.txn("t").is_none());
    h.pids_left = Some(1);
    h.init_ok("t");
}

// ---------------------------------------------------------------------------------------------
// AddPartitionsToTxn, AddOffsetsToTxn, verification
// ---------------------------------------------------------------------------------------------

/// `handleAddPartitionsToTransaction`: unknown id or producer id is
/// INVALID_PRODUCER_ID_MAPPING, a wrong epoch PRODUCER_FENCED; the first add starts the
/// transaction (its start time is now) and waits for its record; partitions already in it
/// answer at once without a record; more partitions are added to the set.
#[test]
fn add_partitions_starts_and_grows_the_transaction() {
    let mut h = Harness::new();
    let parts = [tp("x", 0)];
    assert_eq!(
        h.add("t", (ProducerId(1), 0), &parts),
        Some(code::INVALID_PRODUCER_ID_MAPPING)
    );
    assert_eq!(
        h.add("", (ProducerId(1), 0), &parts),
        Some(code::INVALID_REQUEST)
    );
    let p = h.init_ok("t");
    assert_eq!(
        h.add("t", (ProducerId(p.0 .0 + 1), p.1), &parts),
        Some(code::INVALID_PRODUCER_ID_MAPPING)
    );
    assert_eq!(
        h.add("t", (p.0, p.1 + 1), &parts),
        Some(code::PRODUCER_FENCED)
    );
    h.auto_durable = false;
    h.now = 5_000;
    assert_eq!(h.add("t", p, &parts), None, "waits for its record");
    assert_eq!(h.add("t", p, &parts), Some(code::CONCURRENT_TRANSACTIONS));
    h.durable();
    assert_eq!(
        h.answers.values().last(),
        Some(&Response::AddPartitions(code::NONE))
    );
    let v = h.durable_of("t").unwrap();
    assert_eq!((v.state, v.start_ms), (TxnState::Ongoing, 5_000));
    let records = h.log.len();
    assert_eq!(h.add("t", p, &parts), Some(code::NONE));
    assert_eq!(h.add("t", p, &[]), Some(code::NONE));
    assert_eq!(h.log.len(), records, "nothing new: no record");
    h.auto_durable = true;
    h.now = 6_000;
    assert_eq!(h.add("t", p, &[tp("y", 2), tp("x", 0)]), Some(code::NONE));
    let v = h.durable_of("t").unwrap();
    assert_eq!(v.partitions, BTreeSet::from([tp("x", 0), tp("y", 2)]));
    assert_eq!(
        (v.start_ms, v.last_update_ms),
        (5_000, 6_000),
        "the start stays"
    );
}

/// AddOffsetsToTxn adds the group's `__consumer_offsets` partition (`KafkaApis`:
/// `groupCoordinator.partitionFor(groupId)`).
#[test]
fn add_offsets_adds_the_groups_offsets_partition() {
    let mut h = Harness::new();
    let p = h.init_ok("t");
    assert_eq!(h.add_offsets("t", p, "my-group"), Some(code::NONE));
    let expected = tp(OFFSETS_TOPIC, partition_for("my-group", 50));
    assert_eq!(expected.partition, 1_906_497_762 % 50);
    assert_eq!(
        h.durable_of("t").unwrap().partitions,
        BTreeSet::from([expected])
    );
}

/// KIP-890 part 1 (`handleVerifyPartitionsInTransaction`): NONE for a partition the durable
/// transaction holds, TRANSACTION_ABORTABLE for one it does not; whole-transaction errors
/// first; nothing changes.
#[test]
fn verify_only_reports_each_partition() {
    let mut h = Harness::new();
    h.auto_markers = false;
    let p = h.init_ok("t");
    assert_eq!(
        h.verify("t", p, &[tp("x", 0)]),
        Ok(vec![(tp("x", 0), code::TRANSACTION_ABORTABLE)])
    );
    h.add("t", p, &[tp("x", 0)]);
    let records = h.log.len();
    assert_eq!(
        h.verify("t", p, &[tp("x", 0), tp("x", 1)]),
        Ok(vec![
            (tp("x", 0), code::NONE),
            (tp("x", 1), code::TRANSACTION_ABORTABLE)
        ])
    );
    assert_eq!(h.log.len(), records);
    assert_eq!(
        h.verify("t", (p.0, p.1 - 1), &[tp("x", 0)]),
        Err(code::PRODUCER_FENCED)
    );
    assert_eq!(
        h.verify("t", (ProducerId(3), p.1), &[tp("x", 0)]),
        Err(code::INVALID_PRODUCER_ID_MAPPING)
    );
    assert_eq!(
        h.verify("nope", p, &[tp("x", 0)]),
        Err(code::INVALID_PRODUCER_ID_MAPPING)
    );
    h.end("t", p, TxnResult::Commit);
    assert_eq!(
        h.verify("t", p, &[tp("x", 0)]),
        Err(code::CONCURRENT_TRANSACTIONS)
    );
    h.write_markers();
    assert_eq!(
        h.verify("t", p, &[tp("x", 0)]),
        Ok(vec![(tp("x", 0), code::TRANSACTION_ABORTABLE)]),
        "a completed transaction holds no partition"
    );
}

// ---------------------------------------------------------------------------------------------
// EndTxn and markers
// ---------------------------------------------------------------------------------------------

/// The commit path (`endTransaction`, `TransactionMarkerChannelManager`): PrepareCommit is
/// written and the answer waits for it; only once it is durable do the markers come out;
/// CompleteCommit (no partitions) is written once every partition's marker is reported.
#[test]
fn commit_writes_prepare_then_markers_then_complete() {
    let mut h = Harness::manual();
    h.init("t", None);
    h.durable();
    let p = (h.durable_of("t").unwrap().producer_id, 0);
    h.add("t", p, &[tp("x", 0), tp("y", 0)]);
    h.durable();
    assert_eq!(
        h.end("t", p, TxnResult::Commit),
        None,
        "waits for PrepareCommit"
    );
    assert_eq!(
        h.log.last().unwrap().value.as_ref().unwrap().state,
        TxnState::PrepareCommit
    );
    assert!(
        h.markers.is_empty(),
        "no marker before the decision is durable"
    );
    assert_eq!(h.state("t"), Some(TxnState::Ongoing));
    h.durable();
    assert_eq!(
        h.answers.values().last(),
        Some(&Response::EndTxn(code::NONE))
    );
    assert_eq!(h.markers.len(), 1);
    let m = h.markers.remove(0);
    assert_eq!(
        (m.result, m.producer_id, m.producer_epoch),
        (TxnResult::Commit, p.0, p.1)
    );
    assert_eq!(
        h.end("t", p, TxnResult::Commit),
        Some(code::CONCURRENT_TRANSACTIONS)
    );
    assert_eq!(
        h.add("t", p, &[tp("z", 0)]),
        Some(code::CONCURRENT_TRANSACTIONS)
    );
    assert_eq!(
        h.init("t", None).unwrap().error_code,
        code::CONCURRENT_TRANSACTIONS
    );
    let records = h.log.len();
    h.c.markers_written(h.now, "t", p.0, p.1, &[tp("x", 0)]);
    h.drain();
    assert_eq!(h.log.len(), records, "one partition left");
    h.c.markers_written(h.now, "t", p.0, p.1, &[tp("y", 0)]);
    h.drain();
    let complete = h.log.last().unwrap().value.clone().unwrap();
    assert_eq!(
        (complete.state, complete.partitions.len()),
        (TxnState::CompleteCommit, 0)
    );
    assert_eq!(h.state("t"), Some(TxnState::PrepareCommit), "until durable");
    h.durable();
    assert_eq!(h.state("t"), Some(TxnState::CompleteCommit));
    // A new transaction may start.
    assert_eq!(h.add("t", p, &[tp("z", 0)]), None);
    h.durable();
    assert_eq!(h.state("t"), Some(TxnState::Ongoing));
}

/// EndTxn in every state, both results (`endTransaction`'s state match): a retry of a
/// completed EndTxn is NONE, of one completing CONCURRENT_TRANSACTIONS; the opposite result
/// or no transaction is INVALID_TXN_STATE.
#[test]
fn end_txn_in_every_state() {
    use TxnResult::{Abort, Commit};
    // (how to reach the state, the request's result, the answer)
    let cases: [(TxnState, TxnResult, ErrorCode); 10] = [
        (TxnState::Empty, Commit, code::INVALID_TXN_STATE),
        (TxnState::Empty, Abort, code::INVALID_TXN_STATE),
        (TxnState::CompleteCommit, Commit, code::NONE),
        (TxnState::CompleteCommit, Abort, code::INVALID_TXN_STATE),
        (TxnState::CompleteAbort, Abort, code::NONE),
        (TxnState::CompleteAbort, Commit, code::INVALID_TXN_STATE),
        (
            TxnState::PrepareCommit,
            Commit,
            code::CONCURRENT_TRANSACTIONS,
        ),
        (TxnState::PrepareCommit, Abort, code::INVALID_TXN_STATE),
        (TxnState::PrepareAbort, Abort, code::CONCURRENT_TRANSACTIONS),
        (TxnState::PrepareAbort, Commit, code::INVALID_TXN_STATE),
    ];
    for (state, result, expected) in cases {
        let mut h = Harness::new();
        h.auto_markers = false;
        let p = h.init_ok("t");
        if state != TxnState::Empty {
            h.add("t", p, &[tp("x", 0)]);
            let decided = if matches!(state, TxnState::PrepareCommit | TxnState::CompleteCommit) {
                Commit
            } else {
                Abort
            };
            assert_eq!(h.end("t", p, decided), Some(code::NONE));
            if matches!(state, TxnState::CompleteCommit | TxnState::CompleteAbort) {
                h.write_markers();
            }
        }
        assert_eq!(h.state("t"), Some(state));
        let records = h.log.len();
        assert_eq!(
            h.end("t", p, result),
            Some(expected),
            "{state:?} {result:?}"
        );
        assert_eq!(
            h.log.len(),
            records,
            "{state:?} {result:?}: nothing written"
        );
    }
}

/// Markers reported for another epoch or producer id (a stale report from before a fence) are
/// ignored; so are reports for an id that waits for none.
#[test]
fn stale_marker_reports_are_ignored() {
    let mut h = Harness::new();
    h.auto_markers = false;
    let p = h.init_ok("t");
    h.add("t", p, &[tp("x", 0)]);
    h.end("t", p, TxnResult::Abort);
    let records = h.log.len();
    h.c.markers_written(h.now, "t", p.0, p.1 + 1, &[tp("x", 0)]);
    h.c.markers_written(h.now, "t", ProducerId(1), p.1, &[tp("x", 0)]);
    h.c.markers_written(h.now, "nope", p.0, p.1, &[tp("x", 0)]);
    h.c.markers_written(h.now, "t", p.0, p.1, &[tp("other", 0)]);
    h.drain();
    assert_eq!(h.log.len(), records);
    assert_eq!(h.state("t"), Some(TxnState::PrepareAbort));
    h.write_markers();
    assert_eq!(h.state("t"), Some(TxnState::CompleteAbort));
}

// ---------------------------------------------------------------------------------------------
// Time: transaction timeouts and id expiry
// ---------------------------------------------------------------------------------------------

/// `abortTimedOutTransactions`: an Ongoing transaction whose start + timeout has passed is
/// fenced (epoch + 1) and aborted; its producer is PRODUCER_FENCED from then on.
#[test]
fn a_timed_out_transaction_is_fenced_and_aborted() {
    let mut h = Harness::new();
    h.auto_markers = false;
    let p = h.init_ok("t");
    h.add("t", p, &[tp("x", 0)]);
    let start = h.durable_of("t").unwrap().start_ms;
    assert_eq!(
        h.c.next_deadline_ms(),
        Some(start + i64::from(TIMEOUT_MS) + 1)
    );
    h.advance(i64::from(TIMEOUT_MS));
    assert_eq!(
        h.state("t"),
        Some(TxnState::Ongoing),
        "not before start + timeout has passed"
    );
    h.advance(1);
    let v = h.durable_of("t").unwrap();
    assert_eq!(
        (v.state, v.producer_epoch),
        (TxnState::PrepareAbort, p.1 + 1)
    );
    assert_eq!(h.markers.len(), 1);
    assert_eq!(
        (h.markers[0].result, h.markers[0].producer_epoch),
        (TxnResult::Abort, p.1 + 1)
    );
    assert_eq!(
        h.end("t", p, TxnResult::Commit),
        Some(code::PRODUCER_FENCED)
    );
    assert_eq!(h.add("t", p, &[tp("y", 0)]), Some(code::PRODUCER_FENCED));
    h.write_markers();
    assert_eq!(h.state("t"), Some(TxnState::CompleteAbort));
    assert_eq!(h.end("t", p, TxnResult::Abort), Some(code::PRODUCER_FENCED));
    let q = h.init_ok("t");
    assert_eq!(q, (p.0, p.1 + 2));
}

/// A pending transition postpones the timeout: the fence waits for the record in flight.
#[test]
fn the_timeout_waits_for_a_pending_transition() {
    let mut h = Harness::new();
    let p = h.init_ok("t");
    h.add("t", p, &[tp("x", 0)]);
    h.auto_durable = false;
    assert_eq!(h.add("t", p, &[tp("y", 0)]), None);
    assert_eq!(h.c.next_deadline_ms(), None);
    h.advance(i64::from(TIMEOUT_MS) + 10);
    assert_eq!(h.log.len(), 3, "no fence while the add is in flight");
    h.durable();
    h.auto_durable = true;
    h.advance(0);
    assert_eq!(h.state("t"), Some(TxnState::CompleteAbort));
}

/// `removeExpiredTransactionalIds`: an Empty or Complete* id idle for
/// `transactional.id.expiration.ms` gets a tombstone and is gone once it is durable; an
/// Ongoing one does not expire (it times out first).
#[test]
fn idle_ids_expire_with_a_tombstone() {
    let config = TxnConfig {
        transactional_id_expiration_ms: 10_000,
        ..TxnConfig::default()
    };
    let mut h = Harness::with_config(config);
    let p = h.init_ok("t");
    let q = h.init_ok("u");
    h.add("u", q, &[tp("x", 0)]);
    h.end("u", q, TxnResult::Commit);
    assert_eq!(h.c.next_deadline_ms(), Some(h.now + 10_000));
    h.auto_durable = false;
    h.advance(10_000);
    let tail: Vec<&TxnRecord> = h.log.iter().rev().take(2).collect();
    assert!(tail.iter().all(|r| r.value.is_none()), "two tombstones");
    assert_eq!(
        h.add("t", p, &[tp("x", 0)]),
        Some(code::CONCURRENT_TRANSACTIONS)
    );
    h.durable();
    assert!(h.c.txn("t").is_none() && h.c.txn("u").is_none());
    assert_eq!(
        h.describe_one("t").error_code,
        code::TRANSACTIONAL_ID_NOT_FOUND
    );
    assert_eq!(
        h.add("t", p, &[tp("x", 0)]),
        Some(code::INVALID_PRODUCER_ID_MAPPING)
    );
    h.auto_durable = true;
    let again = h.init_ok("t");
    assert_ne!(again.0, p.0, "a new producer id");
    assert!(
        h.replayed().txn("u").is_none(),
        "the tombstone removes the id on load"
    );
}

// ---------------------------------------------------------------------------------------------
// Describe, list
// ---------------------------------------------------------------------------------------------

impl Harness {
    fn describe_one(&self, tid: &str) -> DescribedTxn {
        self.c.describe(&[tid.to_string()]).remove(0)
    }
}

/// DescribeTransactions and ListTransactions (KIP-664, KIP-994's duration filter).
#[test]
fn describe_and_list_show_the_durable_state() {
    let mut h = Harness::new();
    let p = h.init_ok("a");
    let q = h.init_ok("b");
    h.add("a", p, &[tp("x", 1), tp("x", 0)]);
    let d = h.describe_one("a");
    assert_eq!(
        d,
        DescribedTxn {
            transactional_id: "a".into(),
            error_code: code::NONE,
            state: TxnState::Ongoing,
            timeout_ms: TIMEOUT_MS,
            start_ms: h.now,
            producer_id: p.0,
            producer_epoch: p.1,
            partitions: vec![tp("x", 0), tp("x", 1)],
        }
    );
    assert_eq!(
        h.describe_one("zz").error_code,
        code::TRANSACTIONAL_ID_NOT_FOUND
    );
    assert_eq!(h.describe_one("").error_code, code::INVALID_REQUEST);
    let names = |l: Vec<ListedTxn>| {
        l.into_iter()
            .map(|t| t.transactional_id)
            .collect::<Vec<_>>()
    };
    assert_eq!(names(h.c.list(h.now, &[], &[], -1)), ["a", "b"]);
    assert_eq!(names(h.c.list(h.now, &[TxnState::Ongoing], &[], -1)), ["a"]);
    assert_eq!(names(h.c.list(h.now, &[], &[q.0], -1)), ["b"]);
    assert_eq!(
        names(h.c.list(h.now + 100, &[TxnState::Ongoing], &[], 99)),
        ["a"]
    );
    assert!(h
        .c
        .list(h.now + 100, &[TxnState::Ongoing], &[], 100)
        .is_empty());
    for s in TxnState::ALL {
        assert_eq!(TxnState::parse(s.name()), Some(s));
        assert_eq!(TxnState::from_id(s.id()), Some(s));
    }
    assert_eq!(TxnState::parse("ongoing"), None);
}

// ---------------------------------------------------------------------------------------------
// Load and resign
// ---------------------------------------------------------------------------------------------

/// `loadTransactionsForTxnTopicPartition`: the new leader rebuilds every id from the durable
/// records and completes a PrepareCommit by sending its markers again (with its own
/// coordinator epoch); the old coordinator's held answers get NOT_COORDINATOR.
#[test]
fn a_new_leader_resumes_a_prepared_commit() {
    let mut h = Harness::new();
    h.auto_markers = false;
    let p = h.init_ok("t");
    h.add("t", p, &[tp("x", 0), tp("y", 0)]);
    h.end("t", p, TxnResult::Commit);
    h.c.markers_written(h.now, "t", p.0, p.1, &[tp("x", 0)]);
    h.auto_durable = false;
    let q = h.init_ok_pending("u");
    let answers = h.reload();
    assert_eq!(
        answers,
        vec![(
            q,
            Response::InitProducerId(InitProducerIdResponse::error(code::NOT_COORDINATOR))
        )]
    );
    assert!(h.c.txn("u").is_none(), "its record was never durable");
    assert_eq!(h.state("t"), Some(TxnState::PrepareCommit));
    assert_eq!(h.markers.len(), 1);
    let m = &h.markers[0];
    assert_eq!(
        m.partitions,
        vec![tp("x", 0), tp("y", 0)],
        "every partition again"
    );
    assert_eq!((m.result, m.coordinator_epoch), (TxnResult::Commit, 6));
    h.auto_durable = true;
    h.write_markers();
    assert_eq!(h.state("t"), Some(TxnState::CompleteCommit));
    // The last epoch is in memory only, as in Kafka: after a load a KIP-360 retry is fenced.
    let bumped = h.init("t", Some(p)).unwrap();
    assert_eq!(bumped.producer_epoch, p.1 + 1);
    h.reload();
    assert_eq!(
        h.init("t", Some(p)).unwrap().error_code,
        code::PRODUCER_FENCED
    );
}

impl Harness {
    /// Sends InitProducerId whose answer must wait; its request id.
    fn init_ok_pending(&mut self, tid: &str) -> RequestId {
        assert_eq!(self.init(tid, None), None);
        RequestId(self.next_request)
    }
}

/// A loaded Ongoing transaction keeps its start time: it times out as it would have.
#[test]
fn a_loaded_transaction_keeps_its_deadline() {
    let mut h = Harness::new();
    let p = h.init_ok("t");
    h.add("t", p, &[tp("x", 0)]);
    let start = h.durable_of("t").unwrap().start_ms;
    h.reload();
    assert_eq!(
        h.c.next_deadline_ms(),
        Some(start + i64::from(TIMEOUT_MS) + 1)
    );
    h.advance(i64::from(TIMEOUT_MS) + 1);
    assert_eq!(h.state("t"), Some(TxnState::CompleteAbort));
}

/// Records no coordinator writes are refused on load rather than acted on.
#[test]
fn load_refuses_states_never_written() {
    let base = TxnLogValue {
        producer_id: ProducerId(1),
        previous_producer_id: ProducerId::NONE,
        next_producer_id: ProducerId::NONE,
        producer_epoch: 0,
        timeout_ms: 1,
        state: TxnState::Empty,
        partitions: BTreeSet::new(),
        last_update_ms: 0,
        start_ms: -1,
        client_transaction_version: 0,
    };
    let bad = [
        TxnLogValue {
            state: TxnState::Dead,
            ..base.clone()
        },
        TxnLogValue {
            state: TxnState::PrepareEpochFence,
            ..base.clone()
        },
        TxnLogValue {
            state: TxnState::Ongoing,
            ..base.clone()
        },
        TxnLogValue {
            producer_epoch: -1,
            ..base.clone()
        },
    ];
    for value in bad {
        let r = TxnRecord {
            transactional_id: "t".into(),
            value: Some(value.clone()),
        };
        assert!(
            TxnCoordinator::load(TxnConfig::default(), 0, [r]).is_err(),
            "{value:?}"
        );
    }
    // A bad value overwritten by a good one, or removed by a tombstone, is fine.
    let records = [
        TxnRecord {
            transactional_id: "t".into(),
            value: Some(TxnLogValue {
                state: TxnState::Dead,
                ..base.clone()
            }),
        },
        TxnRecord {
            transactional_id: "t".into(),
            value: Some(base.clone()),
        },
        TxnRecord {
            transactional_id: "u".into(),
            value: Some(TxnLogValue {
                state: TxnState::Dead,
                ..base.clone()
            }),
        },
        TxnRecord {
            transactional_id: "u".into(),
            value: None,
        },
    ];
    let c = TxnCoordinator::load(TxnConfig::default(), 0, records).unwrap();
    assert_eq!(durable_view(&c), BTreeMap::from([("t".to_string(), base)]));
}

// ---------------------------------------------------------------------------------------------
// The coordinator with partitions: markers into the partitions' bookkeeping
// ---------------------------------------------------------------------------------------------

/// One partition's log as far as transactions go: its next offset, high watermark and
/// transaction bookkeeping.
struct PartitionModel {
    tracker: TxnTracker,
    end: i64,
}

impl PartitionModel {
    fn new() -> PartitionModel {
        PartitionModel {
            tracker: TxnTracker::new(Offset(0)),
            end: 0,
        }
    }

    fn write(&mut self, pid: ProducerId, records: i64) {
        self.tracker
            .check_data(pid, true)
            .expect("a transactional write");
        self.tracker
            .record_data(pid, true, Offset(self.end), Offset(self.end + records - 1));
        self.end += records;
    }

    /// Appends the marker (as WriteTxnMarkers would), or refuses it.
    fn marker(&mut self, m: &WriteMarkers) -> Result<(), TxnStateError> {
        self.tracker
            .check_marker(m.producer_id, m.coordinator_epoch)?;
        let marker = EndTxnMarker {
            commit: m.result == TxnResult::Commit,
            coordinator_epoch: m.coordinator_epoch,
        };
        self.tracker
            .record_marker(m.producer_id, marker, Offset(self.end));
        self.end += 1;
        Ok(())
    }

    fn lso_when_replicated(&mut self) -> Offset {
        self.tracker.high_watermark_updated(Offset(self.end));
        self.tracker.last_stable_offset(Offset(self.end))
    }
}

/// End to end over the pure parts: a committed transaction's data becomes stable once its
/// markers are replicated; a transaction aborted by a new producer's fence is in the
/// partition's aborted list, with the bumped epoch's marker; a marker from the coordinator
/// before a move is refused once the new one's has landed (TRANSACTION_COORDINATOR_FENCED).
#[test]
fn markers_reach_the_partitions_bookkeeping() {
    let mut h = Harness::new();
    h.auto_markers = false;
    let mut x = PartitionModel::new();
    let mut y = PartitionModel::new();
    let p = h.init_ok("t");
    assert_eq!(h.add("t", p, &[tp("x", 0), tp("y", 0)]), Some(code::NONE));
    x.write(p.0, 3);
    y.write(p.0, 1);
    assert_eq!(
        x.lso_when_replicated(),
        Offset(0),
        "an open transaction holds the LSO"
    );
    assert_eq!(h.end("t", p, TxnResult::Commit), Some(code::NONE));
    let m = h.markers.remove(0);
    x.marker(&m).unwrap();
    y.marker(&m).unwrap();
    h.report(&m, &m.partitions);
    h.drain();
    assert_eq!(h.state("t"), Some(TxnState::CompleteCommit));
    assert_eq!(
        (x.lso_when_replicated(), y.lso_when_replicated()),
        (Offset(4), Offset(2))
    );
    assert!(x.tracker.all_aborted().is_empty());

    // A second transaction, fenced by a new producer: aborted with the bumped epoch.
    assert_eq!(h.add("t", p, &[tp("x", 0)]), Some(code::NONE));
    x.write(p.0, 2);
    assert_eq!(
        h.init("t", None).unwrap().error_code,
        code::CONCURRENT_TRANSACTIONS
    );
    let fence = h.markers.remove(0);
    assert_eq!(
        (fence.result, fence.producer_epoch),
        (TxnResult::Abort, p.1 + 1)
    );
    // The coordinator moves before the marker is reported: the new one sends it again.
    h.reload();
    let again = h.markers.remove(0);
    assert_eq!(again.coordinator_epoch, fence.coordinator_epoch + 1);
    x.marker(&again).unwrap();
    let stale = x.marker(&fence).unwrap_err();
    assert_eq!(stale.code(), code::TRANSACTION_COORDINATOR_FENCED);
    h.report(&again, &again.partitions);
    h.drain();
    assert_eq!(h.state("t"), Some(TxnState::CompleteAbort));
    assert_eq!(x.lso_when_replicated(), Offset(7));
    let aborted = x.tracker.aborted_txns(Offset(0), Offset(7));
    assert_eq!(aborted.len(), 1);
    assert_eq!(
        (
            aborted[0].producer_id,
            aborted[0].first_offset,
            aborted[0].last_offset
        ),
        (p.0, Offset(4), Offset(6))
    );
}

// ---------------------------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------------------------

fn sample_value() -> TxnLogValue {
    TxnLogValue {
        producer_id: ProducerId(0x0102_0304_0506_0708),
        previous_producer_id: ProducerId(7),
        next_producer_id: ProducerId::NONE,
        producer_epoch: 3,
        timeout_ms: 60_000,
        state: TxnState::Ongoing,
        partitions: BTreeSet::from([tp("ab", 1), tp("ab", 0), tp("c", 9)]),
        last_update_ms: 11,
        start_ms: 10,
        client_transaction_version: 0,
    }
}

/// `TransactionLogKey` v0: `i16 0, i16 len, UTF-8`.
#[test]
fn key_bytes_are_kafkas() {
    assert_eq!(encode_key("tx").unwrap(), vec![0, 0, 0, 2, b't', b'x']);
    assert_eq!(KEY_VERSION, 0);
    assert_eq!(
        encode_key(&"x".repeat(40_000)),
        Err(RecordError::IdTooLong(40_000))
    );
    let r = TxnRecord::decode(&[0, 0, 0, 2, b't', b'x'], None)
        .unwrap()
        .unwrap();
    assert_eq!(
        r,
        TxnRecord {
            transactional_id: "tx".into(),
            value: None
        }
    );
    assert_eq!(
        TxnRecord::decode(&[0, 1, 0, 0], None),
        Ok(None),
        "an unknown key version is skipped"
    );
    assert!(TxnRecord::decode(&[0, 0, 0, 3, b't', b'x'], None).is_err());
    assert!(
        TxnRecord::decode(&[0, 0, 0, 1, b't', b'x'], None).is_err(),
        "trailing bytes"
    );
    assert!(
        TxnRecord::decode(&[0, 0, 0, 1, 0xff], None).is_err(),
        "not UTF-8"
    );
}

/// `TransactionLogValue` v0, byte for byte (classic encoding: `i32` array counts, `i16` string
/// lengths; partitions grouped by topic).
#[test]
fn value_v0_bytes_are_kafkas() {
    let v = sample_value();
    let mut expected = vec![0, 0];
    expected.extend_from_slice(&0x0102_0304_0506_0708i64.to_be_bytes());
    expected.extend_from_slice(&3i16.to_be_bytes());
    expected.extend_from_slice(&60_000i32.to_be_bytes());
    expected.push(1);
    expected.extend_from_slice(&2i32.to_be_bytes());
    expected.extend_from_slice(&[0, 2, b'a', b'b']);
    expected.extend_from_slice(&2i32.to_be_bytes());
    expected.extend_from_slice(&0i32.to_be_bytes());
    expected.extend_from_slice(&1i32.to_be_bytes());
    expected.extend_from_slice(&[0, 1, b'c']);
    expected.extend_from_slice(&1i32.to_be_bytes());
    expected.extend_from_slice(&9i32.to_be_bytes());
    expected.extend_from_slice(&11i64.to_be_bytes());
    expected.extend_from_slice(&10i64.to_be_bytes());
    assert_eq!(v.encode(0).unwrap(), expected);
    let back = TxnLogValue::decode(&expected).unwrap();
    assert_eq!(
        back,
        TxnLogValue {
            previous_producer_id: ProducerId::NONE,
            ..v.clone()
        },
        "v0 has no tagged fields"
    );
    // Empty writes a null partition array.
    let empty = TxnLogValue {
        state: TxnState::Empty,
        partitions: BTreeSet::new(),
        ..v
    };
    let bytes = empty.encode(0).unwrap();
    assert_eq!(&bytes[17..21], &(-1i32).to_be_bytes());
}

/// `TransactionLogValue` v1 (flexible): compact arrays and strings, per-topic tagged fields,
/// and PreviousProducerId as tagged field 0.
#[test]
fn value_v1_bytes_are_kafkas() {
    let v = sample_value();
    let mut expected = vec![0, 1];
    expected.extend_from_slice(&0x0102_0304_0506_0708i64.to_be_bytes());
    expected.extend_from_slice(&3i16.to_be_bytes());
    expected.extend_from_slice(&60_000i32.to_be_bytes());
    expected.push(1);
    expected.push(3); // two topics
    expected.extend_from_slice(&[3, b'a', b'b', 3]);
    expected.extend_from_slice(&0i32.to_be_bytes());
    expected.extend_from_slice(&1i32.to_be_bytes());
    expected.push(0);
    expected.extend_from_slice(&[2, b'c', 2]);
    expected.extend_from_slice(&9i32.to_be_bytes());
    expected.push(0);
    expected.extend_from_slice(&11i64.to_be_bytes());
    expected.extend_from_slice(&10i64.to_be_bytes());
    expected.extend_from_slice(&[1, 0, 8]);
    expected.extend_from_slice(&7i64.to_be_bytes());
    assert_eq!(VALUE_VERSION, 1);
    assert_eq!(v.encode(1).unwrap(), expected);
    assert_eq!(TxnLogValue::decode(&expected).unwrap(), v);
    // Unknown tagged fields are skipped; known ones of the wrong size are errors.
    let mut with_unknown = expected.clone();
    let tags_at = with_unknown.len() - 11;
    with_unknown.truncate(tags_at);
    with_unknown.extend_from_slice(&[2, 0, 8]);
    with_unknown.extend_from_slice(&7i64.to_be_bytes());
    with_unknown.extend_from_slice(&[9, 2, 0xaa, 0xbb]);
    assert_eq!(TxnLogValue::decode(&with_unknown).unwrap(), v);
    let mut wrong_size = expected[..tags_at].to_vec();
    wrong_size.extend_from_slice(&[1, 0, 2, 0, 0]);
    assert!(TxnLogValue::decode(&wrong_size).is_err());
    let mut trailing = expected.clone();
    trailing.push(0);
    assert_eq!(
        TxnLogValue::decode(&trailing),
        Err(RecordError::TrailingBytes(1))
    );
    let mut bad_state = expected.clone();
    bad_state[16] = 8;
    assert!(TxnLogValue::decode(&bad_state).is_err());
    assert_eq!(
        TxnLogValue::decode(&[0, 2]),
        Err(RecordError::UnknownValueVersion(2))
    );
    assert_eq!(v.encode(2), Err(RecordError::UnknownValueVersion(2)));
}

/// Every prefix of a valid value is an error, never a panic.
#[test]
fn truncated_values_are_errors() {
    for version in [0, 1] {
        let bytes = sample_value().encode(version).unwrap();
        for n in 0..bytes.len() {
            assert!(
                TxnLogValue::decode(&bytes[..n]).is_err(),
                "v{version}, {n} bytes"
            );
        }
    }
}

/// A hostile count does not allocate: it is checked against the bytes left.
#[test]
fn huge_counts_are_refused_before_allocating() {
    let mut v0 = sample_value().encode(0).unwrap();
    v0[17..21].copy_from_slice(&i32::MAX.to_be_bytes());
    assert!(matches!(
        TxnLogValue::decode(&v0),
        Err(RecordError::Truncated { .. })
    ));
    let mut v1 = sample_value().encode(1).unwrap()[..17].to_vec();
    v1.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    assert!(TxnLogValue::decode(&v1).is_err());
}

fn arb_value() -> impl Strategy<Value = TxnLogValue> {
    let state = proptest::sample::select(TxnState::ALL.to_vec());
    let partitions = proptest::collection::btree_set(
        ("[a-c\u{e9}]{1,3}", 0..4i32).prop_map(|(t, p)| tp(&t, p)),
        0..6,
    );
    (
        (
            any::<i64>(),
            any::<i64>(),
            any::<i64>(),
            any::<i16>(),
            any::<i32>(),
        ),
        state,
        partitions,
        (any::<i64>(), any::<i64>(), any::<i16>()),
    )
        .prop_map(
            |((pid, prev, next, epoch, timeout), state, partitions, (last, start, tv))| {
                let partitions = if state == TxnState::Empty {
                    BTreeSet::new()
                } else {
                    partitions
                };
                TxnLogValue {
                    producer_id: ProducerId(pid),
                    previous_producer_id: ProducerId(prev),
                    next_producer_id: ProducerId(next),
                    producer_epoch: epoch,
                    timeout_ms: timeout,
                    state,
                    partitions,
                    last_update_ms: last,
                    start_ms: start,
                    client_transaction_version: tv,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// decode(encode(v)) == v in version 1; version 0 keeps everything but the tagged fields.
    #[test]
    fn values_round_trip(v in arb_value(), id in "[a-z\u{1F600}]{1,20}") {
        let record = TxnRecord { transactional_id: id, value: Some(v.clone()) };
        let (key, value) = record.encode().unwrap();
        prop_assert_eq!(TxnRecord::decode(&key, value.as_deref()).unwrap(), Some(record));
        let v0 = TxnLogValue::decode(&v.encode(0).unwrap()).unwrap();
        prop_assert_eq!(v0, TxnLogValue {
            previous_producer_id: ProducerId::NONE,
            next_producer_id: ProducerId::NONE,
            client_transaction_version: 0,
            ..v
        });
    }

    /// Any bytes decode to a record or an error, never a panic.
    #[test]
    fn decode_never_panics(key in proptest::collection::vec(any::<u8>(), 0..40), value in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..120))) {
        let _ = TxnRecord::decode(&key, value.as_deref());
        if let Some(v) = &value {
            let mut prefixed = vec![0, (v.len() % 2) as u8];
            prefixed.extend_from_slice(v);
            let _ = TxnLogValue::decode(&prefixed);
        }
    }

    /// The fuzz target's round trip holds for arbitrary bytes and for valid records.
    #[test]
    fn fuzz_round_trip_holds(data in proptest::collection::vec(any::<u8>(), 0..160), v in arb_value()) {
        super::record::testing::round_trip(&data);
        let (key, value) = TxnRecord { transactional_id: "id".into(), value: Some(v) }.encode().unwrap();
        let mut framed = (key.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&key);
        framed.extend_from_slice(&value.unwrap());
        super::record::testing::round_trip(&framed);
    }

    /// Flipping one byte of a valid value gives a value or an error, never a panic.
    #[test]
    fn corrupted_values_never_panic(v in arb_value(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = v.encode(1).unwrap();
        let i = at.index(bytes.len());
        bytes[i] = byte;
        let _ = TxnLogValue::decode(&bytes);
    }
}

// ---------------------------------------------------------------------------------------------
// Property test: random clients against the coordinator
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    /// Client `c` calls InitProducerId, with its producer id and epoch (KIP-360) or without.
    Init { c: usize, kip360: bool },
    /// Client `c` adds the partitions of `mask` (bits: x-0, x-1, y-0).
    Add { c: usize, mask: u8 },
    /// Client `c` adds its group's offsets partition.
    Offsets { c: usize },
    /// Client `c` ends its transaction, with EndTxn v5 (transaction version 2) when `v2`.
    End { c: usize, commit: bool, v2: bool },
    /// A partition leader verifies client `c`'s first write to x-0.
    Verify { c: usize },
    /// Every record written so far becomes durable.
    Durable,
    /// The records up to the `n`-th not yet durable become durable.
    DurableSome(usize),
    /// The leaders report the markers of one outstanding WriteMarkers: all, or the first
    /// partition only.
    Markers { pick: usize, all: bool },
    /// Time passes (and the coordinator polls).
    Advance(i64),
    /// The coordinator moves: its records not yet durable are lost.
    Reload,
    /// A rogue client sends a producer id and epoch near the id's durable ones (or the
    /// maximum epoch): AddPartitions (0), EndTxn (1) or a KIP-360 InitProducerId (2).
    Rogue {
        c: usize,
        kind: u8,
        pid_delta: i64,
        epoch: Option<i16>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let c = 0..4usize;
    prop_oneof![
        3 => (c.clone(), any::<bool>()).prop_map(|(c, kip360)| Op::Init { c, kip360 }),
        5 => (c.clone(), 1..8u8).prop_map(|(c, mask)| Op::Add { c, mask }),
        1 => c.clone().prop_map(|c| Op::Offsets { c }),
        4 => (c.clone(), any::<bool>(), any::<bool>()).prop_map(|(c, commit, v2)| Op::End { c, commit, v2 }),
        1 => c.prop_map(|c| Op::Verify { c }),
        5 => Just(Op::Durable),
        2 => (1..4usize).prop_map(Op::DurableSome),
        5 => (0..4usize, any::<bool>()).prop_map(|(pick, all)| Op::Markers { pick, all }),
        2 => prop_oneof![3 => 0..1_000i64, 1 => Just(i64::from(TIMEOUT_MS) + 1), 1 => Just(TRANSACTIONAL_ID_EXPIRATION_MS_DEFAULT)].prop_map(Op::Advance),
        1 => Just(Op::Reload),
        1 => (0..4usize, 0..3u8, -1..=1i64, prop_oneof![4 => (-2..=2i16).prop_map(Some), 1 => Just(None)])
            .prop_map(|(c, kind, pid_delta, epoch)| Op::Rogue { c, kind, pid_delta, epoch }),
    ]
}

/// What a request was, for checking its late answer.
#[derive(Clone, Debug)]
struct Sent {
    client: usize,
    /// The producer id and epoch the client sent were not the id's durable ones: a fenced (or
    /// never granted) producer, which must never succeed.
    stale: bool,
}

fn tid_of(client: usize) -> &'static str {
    ["a", "b"][client % 2]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Four clients on two transactional ids, with random requests, durability, markers, time
    /// and coordinator moves. After every step: the coordinator's invariants; a request with a
    /// producer id and epoch that are not the id's durable ones (a fenced producer) never gets
    /// NONE; replaying the durable records gives the live durable state; a producer id's epoch
    /// never goes back; every marker came out only after its Prepare* record was durable (and
    /// matches it); every Complete* was written only after all its markers were reported. At
    /// the end, with everything acknowledged and time passed, no transaction is left open.
    #[test]
    fn coordinator_properties_hold_under_random_operations(ops in proptest::collection::vec(op(), 1..120)) {
        let mut h = Harness::new();
        h.auto_durable = false;
        h.auto_markers = false;
        let mut clients: Vec<Option<(ProducerId, i16)>> = vec![None; 4];
        let mut sent: BTreeMap<RequestId, Sent> = BTreeMap::new();
        let mut epochs: BTreeMap<(String, ProducerId), i16> = BTreeMap::new();
        let mut checked_log = 0;
        for op in &ops {
            let durable_pair = |h: &Harness, c: usize| h.durable_of(tid_of(c)).map(|v| (v.producer_id, v.producer_epoch));
            match op {
                Op::Init { c, kip360 } => {
                    let expected = if *kip360 { clients[*c] } else { None };
                    let req = h.init_req(tid_of(*c), expected);
                    let before = h.next_request;
                    let r = h.init_with(req);
                    let id = RequestId(before + 1);
                    match r {
                        Some(r) if r.error_code == code::NONE => clients[*c] = Some((r.producer_id, r.producer_epoch)),
                        Some(_) => {}
                        None => { sent.insert(id, Sent { client: *c, stale: false }); }
                    }
                }
                Op::Add { c, .. } | Op::Verify { c } if clients[*c].is_some() => {
                    let p = clients[*c].expect("checked");
                    let stale = durable_pair(&h, *c) != Some(p);
                    let all = [tp("x", 0), tp("x", 1), tp("y", 0)];
                    if let Op::Add { mask, .. } = op {
                        let parts: Vec<TopicPartition> = (0..3).filter(|i| mask & (1 << i) != 0).map(|i| all[i].clone()).collect();
                        let before = h.next_request;
                        match h.add(tid_of(*c), p, &parts) {
                            Some(e) => prop_assert!(!(stale && e == code::NONE), "a stale producer added partitions"),
                            None => { sent.insert(RequestId(before + 1), Sent { client: *c, stale }); }
                        }
                    } else if let Ok(results) = h.verify(tid_of(*c), p, &all[..1]) {
                        prop_assert!(!stale || results.iter().all(|(_, e)| *e != code::NONE), "a stale producer verified");
                    }
                }
                Op::Offsets { c } if clients[*c].is_some() => {
                    let p = clients[*c].expect("checked");
                    let stale = durable_pair(&h, *c) != Some(p);
                    let before = h.next_request;
                    match h.add_offsets(tid_of(*c), p, "g") {
                        Some(e) => prop_assert!(!(stale && e == code::NONE), "a stale producer added offsets"),
                        None => { sent.insert(RequestId(before + 1), Sent { client: *c, stale }); }
                    }
                }
                Op::End { c, commit, v2: true } if clients[*c].is_some() => {
                    let p = clients[*c].expect("checked");
                    let durable = durable_pair(&h, *c);
                    let stale = durable != Some(p);
                    let result = if *commit { TxnResult::Commit } else { TxnResult::Abort };
                    let before = h.next_request;
                    match h.end_v2(tid_of(*c), p, result) {
                        Some(r) if r.error_code == code::NONE => {
                            // Only a retry of an end that completed is answered NONE at once,
                            // with the durable pair; a stale pair gets nothing else.
                            prop_assert_eq!(Some((r.producer_id, r.producer_epoch)), durable, "a retry is answered the durable pair");
                            prop_assert!(stale, "an end at the current epoch is never answered at once");
                            clients[*c] = Some((r.producer_id, r.producer_epoch));
                        }
                        Some(_) => {}
                        None => {
                            prop_assert!(!stale, "a stale producer ended a transaction");
                            sent.insert(RequestId(before + 1), Sent { client: *c, stale });
                        }
                    }
                }
                Op::End { c, commit, v2: false } if clients[*c].is_some() => {
                    let p = clients[*c].expect("checked");
                    let stale = durable_pair(&h, *c) != Some(p);
                    let result = if *commit { TxnResult::Commit } else { TxnResult::Abort };
                    let before = h.next_request;
                    match h.end(tid_of(*c), p, result) {
                        Some(e) => prop_assert!(!(stale && e == code::NONE), "a stale producer ended a transaction"),
                        None => { sent.insert(RequestId(before + 1), Sent { client: *c, stale }); }
                    }
                }
                Op::Add { .. } | Op::Verify { .. } | Op::Offsets { .. } | Op::End { .. } => {}
                Op::Rogue { c, kind, pid_delta, epoch } => {
                    if let Some((pid, durable_epoch)) = durable_pair(&h, *c) {
                        let p = (ProducerId(pid.0 + pid_delta), epoch.map_or(i16::MAX, |d| durable_epoch.saturating_add(d)));
                        let stale = p != (pid, durable_epoch);
                        let before = h.next_request;
                        if *kind == 2 {
                            // A granted bump makes client `c` the rogue (its pair is replaced).
                            let req = h.init_req(tid_of(*c), Some(p));
                            match h.init_with(req) {
                                Some(r) if r.error_code == code::NONE => clients[*c] = Some((r.producer_id, r.producer_epoch)),
                                Some(_) => {}
                                None => { sent.insert(RequestId(before + 1), Sent { client: *c, stale: false }); }
                            }
                        } else {
                            let answer = if *kind == 0 {
                                h.add(tid_of(*c), p, &[tp("x", 0)])
                            } else {
                                h.end(tid_of(*c), p, TxnResult::Commit)
                            };
                            match answer {
                                Some(e) => prop_assert!(!(stale && e == code::NONE), "a rogue producer succeeded"),
                                None => { sent.insert(RequestId(before + 1), Sent { client: *c, stale }); }
                            }
                        }
                    }
                }
                Op::Durable => h.durable(),
                Op::DurableSome(n) => {
                    let upto = (h.durable_len + n).min(h.log.len());
                    if upto > h.durable_len {
                        h.durable_len = upto;
                        h.c.records_committed((upto - h.seq_base) as u64);
                        h.drain();
                    }
                }
                Op::Markers { pick, all } => {
                    if !h.markers.is_empty() {
                        let m = h.markers.remove(pick % h.markers.len());
                        let (now, later) = if *all { (m.partitions.clone(), Vec::new()) } else { (m.partitions[..1].to_vec(), m.partitions[1..].to_vec()) };
                        h.report(&m, &now);
                        if !later.is_empty() {
                            h.markers.push(WriteMarkers { partitions: later, ..m });
                        }
                        h.drain();
                    }
                }
                Op::Advance(ms) => h.advance(*ms),
                Op::Reload => {
                    for (id, r) in h.reload() {
                        prop_assert!(matches!(r, Response::InitProducerId(InitProducerIdResponse { error_code: code::NOT_COORDINATOR, .. }) | Response::AddPartitions(code::NOT_COORDINATOR) | Response::AddOffsets(code::NOT_COORDINATOR) | Response::EndTxn(code::NOT_COORDINATOR) | Response::EndTxnV2(EndTxnResponse { error_code: code::NOT_COORDINATOR, .. })), "{r:?}");
                        sent.remove(&id);
                    }
                }
            }
            // Late answers.
            for (id, r) in std::mem::take(&mut h.answers) {
                let s = sent.remove(&id).expect("an answer to a request sent");
                match r {
                    Response::InitProducerId(r) if r.error_code == code::NONE => {
                        clients[s.client] = Some((r.producer_id, r.producer_epoch));
                        prop_assert_eq!(h.durable_of(tid_of(s.client)).map(|v| (v.producer_id, v.producer_epoch)), Some((r.producer_id, r.producer_epoch)), "a granted epoch is the durable one");
                    }
                    Response::AddPartitions(e) | Response::AddOffsets(e) | Response::EndTxn(e) => {
                        prop_assert!(!(s.stale && e == code::NONE), "a stale producer's request succeeded late");
                    }
                    Response::EndTxnV2(r) => {
                        prop_assert!(!(s.stale && r.error_code == code::NONE), "a stale producer's request succeeded late");
                        if r.error_code == code::NONE {
                            clients[s.client] = Some((r.producer_id, r.producer_epoch));
                        }
                    }
                    Response::InitProducerId(_) => {}
                }
            }
            // Replaying the durable records gives the live durable state.
            prop_assert_eq!(durable_view(&h.replayed()), durable_view(&h.c));
            // Epochs of a producer id never go back.
            for (id, v) in durable_view(&h.c) {
                let e = epochs.entry((id, v.producer_id)).or_insert(v.producer_epoch);
                prop_assert!(v.producer_epoch >= *e, "an epoch went back");
                *e = v.producer_epoch;
            }
            // Every Complete* follows its Prepare* and every partition's marker report.
            for i in checked_log..h.log.len() {
                let r = &h.log[i];
                let Some(v) = &r.value else { continue };
                if matches!(v.state, TxnState::CompleteCommit | TxnState::CompleteAbort) {
                    let prev = h.log[..i].iter().rev().find(|p| p.transactional_id == r.transactional_id).and_then(|p| p.value.clone());
                    let prev = prev.expect("a Complete* follows a record of its id");
                    prop_assert!(prev.state.may_become(v.state), "{:?} then {:?}", prev.state, v.state);
                    // The markers are the Prepare*'s (a TV2 end at an exhausted epoch then moves
                    // to a new producer id).
                    let reported = h.reported.get(&(r.transactional_id.clone(), prev.producer_id, prev.producer_epoch)).cloned().unwrap_or_default();
                    prop_assert!(prev.partitions.is_subset(&reported), "Complete* before every marker was written");
                }
            }
            checked_log = h.log.len().min(h.durable_len);
        }
        // Every marker came out after its Prepare* record was durable, and matches it.
        for (m, durable_len) in &h.markers_emitted {
            let prepare = h.log[..*durable_len].iter().rev().find(|r| r.transactional_id == m.transactional_id).and_then(|r| r.value.clone());
            let prepare = prepare.expect("a marker's transaction has a durable record");
            let result = match prepare.state {
                TxnState::PrepareCommit => TxnResult::Commit,
                TxnState::PrepareAbort => TxnResult::Abort,
                other => { prop_assert!(false, "a marker while the durable state is {:?}", other); unreachable!() }
            };
            prop_assert_eq!((m.result, m.producer_id, m.producer_epoch), (result, prepare.producer_id, prepare.producer_epoch));
            prop_assert!(m.partitions.iter().all(|p| prepare.partitions.contains(p)));
        }
        // Liveness: with every record and marker acknowledged and the timeout passed, nothing
        // is left open or pending.
        h.auto_durable = true;
        h.auto_markers = true;
        h.durable();
        h.write_markers();
        h.advance(i64::from(TIMEOUT_MS) + 1);
        for t in h.c.txns() {
            prop_assert!(!t.has_pending_transition());
            let state = t.durable().expect("durable").state;
            prop_assert!(matches!(state, TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort), "{:?} left", state);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Transaction version 2 (KIP-890 part 2): EndTxn v5 bumps the epoch at every end
// ---------------------------------------------------------------------------------------------

/// Kafka's `endTransaction` under TV2 (`prepareAbortOrCommit`): the Prepare record, and so
/// the markers, carry the bumped epoch; the answer names it; the ended epoch is fenced at the
/// coordinator (the partitions refuse it once the marker is there).
#[test]
fn tv2_end_bumps_the_epoch_and_the_markers_carry_it() {
    let mut h = Harness::new();
    let (pid, e0) = h.init_ok("t");
    let parts = [tp("a", 0), tp("b", 1)];
    assert_eq!(h.add_tv("t", (pid, e0), &parts, 2), Some(code::NONE));
    assert_eq!(h.durable_of("t").unwrap().client_transaction_version, 2);
    let r = h.end_v2("t", (pid, e0), TxnResult::Commit).unwrap();
    assert_eq!(
        (r.error_code, r.producer_id, r.producer_epoch),
        (code::NONE, pid, e0 + 1)
    );
    let (m, _) = h.markers_emitted.last().unwrap().clone();
    assert_eq!(
        (m.producer_id, m.producer_epoch, m.result),
        (pid, e0 + 1, TxnResult::Commit)
    );
    assert_eq!(m.partitions, parts.to_vec());
    let v = h.durable_of("t").unwrap();
    assert_eq!(
        (v.state, v.producer_epoch),
        (TxnState::CompleteCommit, e0 + 1)
    );
    // The ended transaction's epoch: fenced for adds and the leaders' verification.
    assert_eq!(
        h.add_tv("t", (pid, e0), &[tp("c", 0)], 2),
        Some(code::PRODUCER_FENCED)
    );
    assert_eq!(
        h.verify("t", (pid, e0), &[tp("a", 0)]),
        Err(code::PRODUCER_FENCED)
    );
    // The next transaction runs at the new epoch, and bumps it again.
    assert_eq!(
        h.add_tv("t", (pid, e0 + 1), &[tp("a", 0)], 2),
        Some(code::NONE)
    );
    let r = h.end_v2("t", (pid, e0 + 1), TxnResult::Abort).unwrap();
    assert_eq!((r.error_code, r.producer_epoch), (code::NONE, e0 + 2));
    assert_eq!(h.state("t"), Some(TxnState::CompleteAbort));
    let (m, _) = h.markers_emitted.last().unwrap().clone();
    assert_eq!((m.producer_epoch, m.result), (e0 + 2, TxnResult::Abort));
}

/// TV2's retries are told apart by the epoch (Kafka's `retryOnEpochBump`): the ended epoch
/// retries the EndTxn (NONE with the current pair once complete, CONCURRENT_TRANSACTIONS while
/// its markers are out, INVALID_TXN_STATE for the other result); the current epoch is the next
/// transaction's; any other epoch is fenced.
#[test]
fn tv2_retries_are_told_by_the_epoch() {
    let mut h = Harness::new();
    h.auto_markers = false;
    let (pid, e) = h.init_ok("t");
    assert_eq!(h.add_tv("t", (pid, e), &[tp("a", 0)], 2), Some(code::NONE));
    let r = h.end_v2("t", (pid, e), TxnResult::Commit).unwrap();
    assert_eq!(r.producer_epoch, e + 1);
    assert_eq!(h.state("t"), Some(TxnState::PrepareCommit));
    let retry = h.end_v2("t", (pid, e), TxnResult::Commit).unwrap();
    assert_eq!(retry.error_code, code::CONCURRENT_TRANSACTIONS);
    let other = h.end_v2("t", (pid, e), TxnResult::Abort).unwrap();
    assert_eq!(other.error_code, code::INVALID_TXN_STATE);
    // The bumped epoch while the markers are out: not a retry, and not yet a transaction.
    let early = h.end_v2("t", (pid, e + 1), TxnResult::Commit).unwrap();
    assert_eq!(early.error_code, code::PRODUCER_FENCED);
    h.write_markers();
    assert_eq!(h.state("t"), Some(TxnState::CompleteCommit));
    let retry = h.end_v2("t", (pid, e), TxnResult::Commit).unwrap();
    assert_eq!(
        (retry.error_code, retry.producer_id, retry.producer_epoch),
        (code::NONE, pid, e + 1)
    );
    let other = h.end_v2("t", (pid, e), TxnResult::Abort).unwrap();
    assert_eq!(other.error_code, code::INVALID_TXN_STATE);
    // The current epoch with nothing added: a commit is no transaction...
    let none = h.end_v2("t", (pid, e + 1), TxnResult::Commit).unwrap();
    assert_eq!(none.error_code, code::INVALID_TXN_STATE);
    // ...and an abort ends an empty one: the epoch bumps, no marker, complete at once.
    let markers_before = h.markers_emitted.len();
    let abort = h.end_v2("t", (pid, e + 1), TxnResult::Abort).unwrap();
    assert_eq!(
        (abort.error_code, abort.producer_epoch),
        (code::NONE, e + 2)
    );
    assert_eq!(
        h.markers_emitted.len(),
        markers_before,
        "no partition, no marker"
    );
    let v = h.durable_of("t").unwrap();
    assert_eq!(
        (v.state, v.producer_epoch),
        (TxnState::CompleteAbort, e + 2)
    );
    assert!(v.partitions.is_empty());
    // Older and newer epochs are fenced; another producer id is not this one.
    let old = h.end_v2("t", (pid, e), TxnResult::Abort).unwrap();
    assert_eq!(old.error_code, code::PRODUCER_FENCED);
    let newer = h.end_v2("t", (pid, e + 5), TxnResult::Abort).unwrap();
    assert_eq!(newer.error_code, code::PRODUCER_FENCED);
    let stranger = h
        .end_v2("t", (ProducerId(pid.0 + 77), e + 2), TxnResult::Abort)
        .unwrap();
    assert_eq!(stranger.error_code, code::INVALID_PRODUCER_ID_MAPPING);
    let unknown = h.end_v2("nobody", (pid, e), TxnResult::Abort).unwrap();
    assert_eq!(unknown.error_code, code::INVALID_PRODUCER_ID_MAPPING);
    let bad = h.end_v2("", (pid, e), TxnResult::Abort).unwrap();
    assert_eq!(bad.error_code, code::INVALID_REQUEST);
    // An abort from Empty (right after InitProducerId) bumps too.
    let (pid2, f) = h.init_ok("u");
    let r = h.end_v2("u", (pid2, f), TxnResult::Abort).unwrap();
    assert_eq!((r.error_code, r.producer_epoch), (code::NONE, f + 1));
    assert_eq!(h.state("u"), Some(TxnState::CompleteAbort));
}

/// TV2 at the exhausted epoch (Kafka's `prepareAbortOrCommit` with a next producer id, and
/// `prepareComplete`): the markers go out at `i16::MAX`, the answer names a new producer id
/// at epoch 0, CompleteCommit moves to it remembering the old one, and a retry with the old
/// id at the exhausted epoch gets the new pair back.
#[test]
fn tv2_end_at_the_exhausted_epoch_moves_to_a_new_producer_id() {
    let mut h = loaded_at_epoch(EPOCH_EXHAUSTED);
    let old = (ProducerId(500), EPOCH_EXHAUSTED);
    assert_eq!(h.add_tv("t", old, &[tp("a", 0)], 2), Some(code::NONE));
    let r = h.end_v2("t", old, TxnResult::Commit).unwrap();
    assert_eq!(r.error_code, code::NONE);
    assert_ne!(r.producer_id, ProducerId(500));
    assert_eq!(r.producer_epoch, 0);
    let (m, _) = h.markers_emitted.last().unwrap().clone();
    assert_eq!(
        (m.producer_id, m.producer_epoch),
        (ProducerId(500), i16::MAX)
    );
    let v = h.durable_of("t").unwrap();
    assert_eq!(
        (
            v.state,
            v.producer_id,
            v.producer_epoch,
            v.previous_producer_id,
            v.next_producer_id
        ),
        (
            TxnState::CompleteCommit,
            r.producer_id,
            0,
            ProducerId(500),
            ProducerId::NONE
        )
    );
    let retry = h.end_v2("t", old, TxnResult::Commit).unwrap();
    assert_eq!(
        (retry.error_code, retry.producer_id, retry.producer_epoch),
        (code::NONE, r.producer_id, 0)
    );
    // The old producer id is gone; the new one runs transactions.
    assert_eq!(
        h.add_tv("t", old, &[tp("a", 0)], 2),
        Some(code::INVALID_PRODUCER_ID_MAPPING)
    );
    let new = (r.producer_id, 0);
    assert_eq!(h.add_tv("t", new, &[tp("a", 0)], 2), Some(code::NONE));
    let r2 = h.end_v2("t", new, TxnResult::Commit).unwrap();
    assert_eq!(
        (r2.error_code, r2.producer_id, r2.producer_epoch),
        (code::NONE, new.0, 1)
    );
    // With no producer id at hand, the end at the exhausted epoch is retriable.
    let mut h = loaded_at_epoch(EPOCH_EXHAUSTED);
    h.pids_left = Some(0);
    assert_eq!(h.add_tv("t", old, &[tp("a", 0)], 2), Some(code::NONE));
    let r = h.end_v2("t", old, TxnResult::Commit).unwrap();
    assert_eq!(r.error_code, code::COORDINATOR_LOAD_IN_PROGRESS);
    assert_eq!(h.state("t"), Some(TxnState::Ongoing));
}

/// A coordinator that moves mid-way resumes a TV2 end as any other: a Prepare* with
/// partitions sends its markers again at the bumped epoch, one with none (an empty abort)
/// completes at once, and one at the exhausted epoch completes to the next producer id.
#[test]
fn tv2_ends_resume_after_a_reload() {
    let mut h = Harness::manual();
    assert_eq!(h.init("t", None), None, "waits for its record");
    h.durable();
    let v = h.durable_of("t").unwrap();
    let (pid, e) = (v.producer_id, v.producer_epoch);
    assert_eq!(h.add_tv("t", (pid, e), &[tp("a", 0)], 2), None);
    h.durable();
    assert_eq!(h.end_v2("t", (pid, e), TxnResult::Commit), None);
    h.durable();
    assert_eq!(h.state("t"), Some(TxnState::PrepareCommit));
    h.reload();
    let (m, _) = h.markers_emitted.last().unwrap().clone();
    assert_eq!((m.producer_epoch, m.result), (e + 1, TxnResult::Commit));
    h.write_markers();
    h.durable();
    assert_eq!(h.state("t"), Some(TxnState::CompleteCommit));
    // An empty abort whose Prepare is durable but not yet complete.
    assert_eq!(h.end_v2("t", (pid, e + 1), TxnResult::Abort), None);
    h.durable();
    // Its Complete record is written at once; lose it with the move.
    h.log.truncate(h.durable_len);
    h.reload();
    h.durable();
    let v = h.durable_of("t").unwrap();
    assert_eq!(
        (v.state, v.producer_epoch),
        (TxnState::CompleteAbort, e + 2)
    );
    // The loaded Prepare of an exhausted epoch completes to its next producer id.
    let mut h = loaded_at_epoch(EPOCH_EXHAUSTED);
    h.auto_markers = false;
    let old = (ProducerId(500), EPOCH_EXHAUSTED);
    assert_eq!(h.add_tv("t", old, &[tp("a", 0)], 2), Some(code::NONE));
    let r = h.end_v2("t", old, TxnResult::Abort).unwrap();
    h.reload();
    h.write_markers();
    let v = h.durable_of("t").unwrap();
    assert_eq!(
        (v.state, v.producer_id, v.producer_epoch),
        (TxnState::CompleteAbort, r.producer_id, 0)
    );
}

/// TV1 (EndTxn v4 and below) keeps the epoch: the same flow at v4 ends at the same epoch.
#[test]
fn tv1_end_keeps_the_epoch() {
    let mut h = Harness::new();
    let p = h.init_ok("t");
    assert_eq!(h.add("t", p, &[tp("a", 0)]), Some(code::NONE));
    assert_eq!(h.end("t", p, TxnResult::Commit), Some(code::NONE));
    let v = h.durable_of("t").unwrap();
    assert_eq!((v.state, v.producer_epoch), (TxnState::CompleteCommit, p.1));
    assert_eq!(v.client_transaction_version, 0);
    let (m, _) = h.markers_emitted.last().unwrap().clone();
    assert_eq!(m.producer_epoch, p.1);
}
