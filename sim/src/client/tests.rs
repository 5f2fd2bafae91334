//! The client's pure parts (version negotiation, error classification, record decoding, the
//! consumer's positions) and its produce outcomes against a scripted fake broker: retries
//! resend the same idempotent batch, and `Fail` only when no attempt can have been appended.

use super::*;

fn key() -> Key {
    Key::new("t", 0)
}

/// Reference: keel's node/src/wire/versions.rs ranges (Produce 0-9, Fetch 4-12, ...).
#[test]
fn the_negotiated_version_is_the_highest_both_sides_speak() {
    assert_eq!(negotiate_version(ApiKey::Produce, Some((0, 9))), Ok(9));
    assert_eq!(negotiate_version(ApiKey::Produce, Some((0, 11))), Ok(9));
    assert_eq!(negotiate_version(ApiKey::Fetch, Some((4, 12))), Ok(12));
    assert_eq!(negotiate_version(ApiKey::Fetch, Some((4, 10))), Ok(10));
    assert_eq!(
        negotiate_version(ApiKey::Fetch, Some((4, 8))),
        Err(ClientError::UnsupportedVersion { api: ApiKey::Fetch })
    );
    assert_eq!(
        negotiate_version(ApiKey::Metadata, None),
        Err(ClientError::UnsupportedVersion {
            api: ApiKey::Metadata
        })
    );
}

/// Errors keel returns before appending (validation, the leadership check in
/// `produce_partition`, NOT_ENOUGH_REPLICAS) are definite; the ones it returns while waiting
/// for the in-sync replicas (`ProduceWait::finish`) are not. Reference: Kafka's DelayedProduce.
#[test]
fn produce_errors_before_the_append_are_definite_and_after_it_indefinite() {
    use ProduceErrorEffect::*;
    let table = [
        (ResponseError::NotEnoughReplicas, NotAppendedRetriable),
        (ResponseError::UnknownTopicOrPartition, NotAppendedRetriable),
        (ResponseError::LeaderNotAvailable, NotAppendedRetriable),
        (ResponseError::CorruptMessage, NotAppendedFatal),
        (ResponseError::InvalidRecord, NotAppendedFatal),
        (ResponseError::MessageTooLarge, NotAppendedFatal),
        (ResponseError::OutOfOrderSequenceNumber, NotAppendedFatal),
        (ResponseError::InvalidProducerEpoch, NotAppendedFatal),
        (ResponseError::NotLeaderOrFollower, MaybeAppended),
        (ResponseError::RequestTimedOut, MaybeAppended),
        (ResponseError::NotEnoughReplicasAfterAppend, MaybeAppended),
        (ResponseError::KafkaStorageError, MaybeAppended),
        (ResponseError::UnknownServerError, MaybeAppended),
        (ResponseError::Unknown(9999), MaybeAppended),
    ];
    for (error, effect) in table {
        assert_eq!(produce_error_effect(error), effect, "{error:?}");
    }
}

fn batch_at(base: i64, values: &[u64]) -> Bytes {
    let mut builder = BatchBuilder::new(Compression::None);
    for v in values {
        builder = builder.record(1, None, Some(&encode_value(Value(*v))));
    }
    builder.base_offset = Offset(base);
    builder.build().unwrap().into_bytes()
}

/// Fetch returns whole batches from the one containing the fetch offset (KIP-74; docs/protocol.md, Fetch)
/// and may cut the last one: records before the offset and a partial tail are dropped.
#[test]
fn decoded_records_start_at_the_fetch_offset_and_ignore_a_partial_tail() {
    let mut section = BytesMut::new();
    section.extend_from_slice(&batch_at(10, &[100, 101, 102]));
    section.extend_from_slice(&batch_at(13, &[103]));
    let tail = batch_at(14, &[104]);
    section.extend_from_slice(&tail[..tail.len() - 3]);
    let records = decode_records(&key(), &section.freeze(), Offset(11)).unwrap();
    assert_eq!(
        records,
        vec![
            (Offset(11), Value(101)),
            (Offset(12), Value(102)),
            (Offset(13), Value(103))
        ]
    );
}

#[test]
fn a_record_that_is_not_a_decimal_u64_is_a_bad_record() {
    let batch = BatchBuilder::new(Compression::None)
        .record(1, None, Some(b"hello"))
        .build()
        .unwrap()
        .into_bytes();
    assert!(matches!(
        decode_records(&key(), &batch, Offset(0)),
        Err(ClientError::BadRecord {
            offset: Offset(0),
            ..
        })
    ));
    let mut corrupt = batch.to_vec();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 1;
    assert!(
        matches!(
            decode_records(&key(), &Bytes::from(corrupt), Offset(0)),
            Err(ClientError::Corrupt { .. })
        ),
        "a batch whose CRC fails is a damaged batch, not a protocol violation"
    );
}

/// Kafka's `assign` keeps the positions of partitions that stay assigned.
#[test]
fn assign_keeps_positions_of_keys_that_stay_assigned() {
    let (a, b) = (Key::new("t", 0), Key::new("t", 1));
    let mut c = Consumer::new();
    c.assign(std::slice::from_ref(&a));
    c.seek(&a, Offset(5)).unwrap();
    c.assign(&[a.clone(), b.clone()]);
    assert_eq!(c.position(&a), Some(Offset(5)));
    assert_eq!(c.position(&b), Some(Offset(0)));
    c.assign(std::slice::from_ref(&b));
    assert_eq!(c.position(&a), None);
    assert_eq!(c.seek(&a, Offset(1)), Err(ClientError::NotAssigned(a)));
}

#[test]
fn request_frames_decode_back_with_their_header() {
    let mut r = ProduceRequest::default();
    r.acks = -1;
    let frame = encode_request(
        ApiKey::Produce,
        9,
        7,
        "me",
        &RequestKind::Produce(r.clone()),
    )
    .unwrap();
    let mut body = frame.slice(4..);
    assert_eq!(
        i32::from_be_bytes(frame[..4].try_into().unwrap()) as usize,
        body.len()
    );
    let header =
        RequestHeader::decode(&mut body, ApiKey::Produce.request_header_version(9)).unwrap();
    assert_eq!(header.correlation_id, 7);
    assert_eq!(header.request_api_version, 9);
    assert_eq!(
        RequestKind::decode(ApiKey::Produce, &mut body, 9).unwrap(),
        RequestKind::Produce(r)
    );
}

// ---------------------------------------------------------------------------------------
// A scripted fake broker.
// Runs on real sockets, and on madsim's under `--cfg madsim`.
mod fake_broker {
    use std::collections::VecDeque;
    use std::sync::{Arc, Mutex};

    use kafka_protocol::messages::api_versions_response::ApiVersion;
    use kafka_protocol::messages::metadata_response::{
        MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
    };
    use kafka_protocol::messages::produce_response::{
        PartitionProduceResponse, TopicProduceResponse,
    };
    use kafka_protocol::messages::{
        ApiVersionsResponse, InitProducerIdResponse, MetadataResponse, ProduceResponse,
    };
    use tokio::net::TcpListener;

    use super::*;

    /// What the fake broker does with each Produce, in order (the last one repeats).
    #[derive(Clone, Copy, Debug)]
    enum Answer {
        /// Answers with this error code (0: success at offset 42).
        Code(i16),
        /// Never answers.
        Hang,
    }

    #[derive(Default)]
    struct Script {
        produce: VecDeque<Answer>,
        /// (producer id, epoch, base sequence) of every produced batch seen.
        seen: Vec<(i64, i16, i32)>,
        init_producer_ids: i64,
        /// Connections accepted.
        connections: usize,
        /// The value of every produced batch seen, with its (producer id, epoch, sequence).
        values: Vec<(u64, (i64, i16, i32))>,
    }

    fn answer(script: &Mutex<Script>, request: RequestKind, port: u16) -> Option<ResponseKind> {
        let mut s = script.lock().unwrap();
        Some(match request {
            RequestKind::ApiVersions(_) => {
                let mut r = ApiVersionsResponse::default();
                r.api_keys = CLIENT_VERSIONS
                    .iter()
                    .map(|(api, lo, hi)| {
                        ApiVersion::default()
                            .with_api_key(*api as i16)
                            .with_min_version(*lo)
                            .with_max_version(*hi)
                    })
                    .collect();
                ResponseKind::ApiVersions(r)
            }
            RequestKind::Metadata(_) => {
                let mut r = MetadataResponse::default();
                r.brokers = vec![MetadataResponseBroker::default()
                    .with_node_id(BrokerId(1))
                    .with_host(str_bytes("127.0.0.1"))
                    .with_port(port as i32)];
                r.controller_id = BrokerId(1);
                r.topics = vec![MetadataResponseTopic::default()
                    .with_name(Some(TopicName(str_bytes("t"))))
                    .with_partitions(vec![MetadataResponsePartition::default()
                        .with_partition_index(0)
                        .with_leader_id(BrokerId(1))
                        .with_replica_nodes(vec![BrokerId(1)])
                        .with_isr_nodes(vec![BrokerId(1)])])];
                ResponseKind::Metadata(r)
            }
            RequestKind::InitProducerId(_) => {
                s.init_producer_ids += 1;
                let mut r = InitProducerIdResponse::default();
                r.producer_id = s.init_producer_ids.into();
                r.producer_epoch = 0;
                ResponseKind::InitProducerId(r)
            }
            RequestKind::Produce(p) => {
                let records = p.topic_data[0].partition_data[0].records.clone().unwrap();
                let batch = Batch::parse(records).unwrap();
                let id = (
                    batch.producer_id().0,
                    batch.producer_epoch(),
                    batch.base_sequence(),
                );
                s.seen.push(id);
                let record = batch.records().unwrap().remove(0);
                let value = std::str::from_utf8(record.value.as_deref().unwrap()).unwrap();
                s.values.push((value.parse().unwrap(), id));
                let next = if s.produce.len() > 1 {
                    s.produce.pop_front()
                } else {
                    s.produce.front().copied()
                };
                let code = match next.expect("a scripted answer") {
                    Answer::Hang => return None,
                    Answer::Code(code) => code,
                };
                let mut r = ProduceResponse::default();
                r.responses = vec![TopicProduceResponse::default()
                    .with_name(TopicName(str_bytes("t")))
                    .with_partition_responses(vec![PartitionProduceResponse::default()
                        .with_index(0)
                        .with_error_code(code)
                        .with_base_offset(if code == 0 { 42 } else { -1 })])];
                ResponseKind::Produce(r)
            }
            other => panic!("the fake broker does not script {other:?}"),
        })
    }

    async fn serve_connection(mut stream: TcpStream, script: Arc<Mutex<Script>>, port: u16) {
        loop {
            let Ok(size) = stream.read_i32().await else {
                return;
            };
            let mut frame = vec![0; size as usize];
            if stream.read_exact(&mut frame).await.is_err() {
                return;
            }
            let mut frame = Bytes::from(frame);
            let api = ApiKey::try_from(i16::from_be_bytes([frame[0], frame[1]])).unwrap();
            let version = i16::from_be_bytes([frame[2], frame[3]]);
            let header =
                RequestHeader::decode(&mut frame, api.request_header_version(version)).unwrap();
            let request = RequestKind::decode(api, &mut frame, version).unwrap();
            let Some(response) = answer(&script, request, port) else {
                continue;
            };
            let mut out = BytesMut::new();
            out.put_i32(0);
            ResponseHeader::default()
                .with_correlation_id(header.correlation_id)
                .encode(&mut out, api.response_header_version(version))
                .unwrap();
            response.encode(&mut out, version).unwrap();
            let size = (out.len() - 4) as i32;
            out[..4].copy_from_slice(&size.to_be_bytes());
            // madsim sends on flush.
            if stream.write_all(&out).await.is_err() || stream.flush().await.is_err() {
                return;
            }
        }
    }

    async fn fake_broker(produce: &[Answer]) -> (SocketAddr, Arc<Mutex<Script>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let script = Arc::new(Mutex::new(Script {
            produce: produce.iter().copied().collect(),
            ..Script::default()
        }));
        let shared = script.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                shared.lock().unwrap().connections += 1;
                tokio::spawn(serve_connection(stream, shared.clone(), addr.port()));
            }
        });
        (addr, script)
    }

    fn quick_client(addr: SocketAddr) -> Client {
        let mut config = ClientConfig::new(vec![addr]);
        config.request_timeout = Duration::from_millis(300);
        config.retry_backoff = Duration::from_millis(1);
        config.attempts_max = 3;
        Client::new(config)
    }

    const NOT_LEADER: i16 = 6;
    const REQUEST_TIMED_OUT: i16 = 7;
    const NOT_ENOUGH_REPLICAS: i16 = 19;
    const INVALID_RECORD: i16 = 87;

    /// A retry after NOT_LEADER_OR_FOLLOWER resends the same batch: same producer id, epoch and
    /// sequence, so a broker that had appended it answers with the original offset (Kafka's
    /// idempotent producer, ProducerStateManager's duplicate check).
    #[tokio::test]
    async fn retries_resend_the_same_idempotent_batch() {
        let (addr, script) = fake_broker(&[
            Answer::Code(NOT_LEADER),
            Answer::Code(NOT_LEADER),
            Answer::Code(0),
        ])
        .await;
        let mut client = quick_client(addr);
        assert_eq!(
            client.produce(&key(), Value(1)).await,
            SendOutcome::Ok { offset: Offset(42) }
        );
        assert_eq!(
            client.produce(&key(), Value(2)).await,
            SendOutcome::Ok { offset: Offset(42) }
        );
        let seen = script.lock().unwrap().seen.clone();
        assert_eq!(seen, vec![(1, 0, 0), (1, 0, 0), (1, 0, 0), (1, 0, 1)]);
    }

    /// REQUEST_TIMED_OUT comes after the append: indefinite, and the producer starts over with a
    /// new id so that its sequences do not depend on whether the batch landed.
    #[tokio::test]
    async fn errors_after_the_append_make_the_send_indefinite_and_reset_the_producer() {
        let (addr, script) = fake_broker(&[Answer::Code(REQUEST_TIMED_OUT)]).await;
        let mut client = quick_client(addr);
        let outcome = client.produce(&key(), Value(1)).await;
        assert!(
            matches!(outcome, SendOutcome::Indefinite { .. }),
            "{outcome:?}"
        );
        assert_eq!(client.producer_id(), None);
        script.lock().unwrap().produce = VecDeque::from([Answer::Code(0)]);
        assert_eq!(
            client.produce(&key(), Value(2)).await,
            SendOutcome::Ok { offset: Offset(42) }
        );
        assert_eq!(
            script.lock().unwrap().seen.last(),
            Some(&(2, 0, 0)),
            "a new producer id, sequence 0"
        );
    }

    /// NOT_ENOUGH_REPLICAS is checked before the append: when every attempt gets it, the send
    /// definitely failed, and the next send reuses the sequence.
    #[tokio::test]
    async fn errors_before_the_append_on_every_attempt_fail_the_send() {
        let (addr, script) = fake_broker(&[Answer::Code(NOT_ENOUGH_REPLICAS)]).await;
        let mut client = quick_client(addr);
        let outcome = client.produce(&key(), Value(1)).await;
        assert!(matches!(outcome, SendOutcome::Fail { .. }), "{outcome:?}");
        script.lock().unwrap().produce = VecDeque::from([Answer::Code(0)]);
        assert_eq!(
            client.produce(&key(), Value(2)).await,
            SendOutcome::Ok { offset: Offset(42) }
        );
        let seen = script.lock().unwrap().seen.clone();
        assert_eq!(seen.len(), 4);
        assert!(seen.iter().all(|s| *s == (1, 0, 0)), "{seen:?}");
    }

    /// A request with no answer may have been appended: even when a later attempt is refused
    /// definitely, the send is indefinite.
    #[tokio::test]
    async fn a_definite_refusal_after_an_unanswered_attempt_is_still_indefinite() {
        let (addr, _) = fake_broker(&[Answer::Hang, Answer::Code(INVALID_RECORD)]).await;
        let mut client = quick_client(addr);
        let outcome = client.produce(&key(), Value(1)).await;
        let SendOutcome::Indefinite { reason } = outcome else {
            panic!("{outcome:?}")
        };
        assert!(reason.contains("InvalidRecord"), "{reason}");
    }

    /// Nothing listening: nothing was sent, so the send definitely failed.
    #[tokio::test]
    async fn a_broker_that_cannot_be_reached_fails_the_send() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let mut client = quick_client(addr);
        let outcome = client.produce(&key(), Value(1)).await;
        assert!(matches!(outcome, SendOutcome::Fail { .. }), "{outcome:?}");
    }

    /// A connection broken after the request was written ([`ConnectionFaults`]) leaves the
    /// request unanswered: the client drops that connection, opens a new one and resends the
    /// same batch (same producer id, epoch and sequence), so that a broker which had appended
    /// it answers with the original offset instead of appending it twice (Kafka's idempotent
    /// producer). A send whose attempts all broke is indefinite, never failed.
    #[tokio::test]
    async fn a_connection_broken_mid_request_is_retried_on_a_new_connection_with_the_same_batch() {
        let (addr, script) = fake_broker(&[Answer::Code(0)]).await;
        let mut client = quick_client(addr);
        client.init_producer().await.unwrap();
        let faults = client.config().faults.clone();
        faults.set_break_probability(0.5);
        let connections_before = script.lock().unwrap().connections;
        let mut outcomes = Vec::new();
        for v in 0..30 {
            outcomes.push((v, client.produce(&key(), Value(v)).await));
        }
        // Requests written before a break may arrive after the client moved on: wait for them.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (values, connections_now) = {
            let s = script.lock().unwrap();
            (s.values.clone(), s.connections)
        };
        let sent = |v: u64| -> Vec<(i64, i16, i32)> {
            values
                .iter()
                .filter(|(value, _)| *value == v)
                .map(|(_, id)| *id)
                .collect()
        };
        let (mut retried_ok, mut breaks) = (0, 0);
        for (v, outcome) in &outcomes {
            let seen = sent(*v);
            assert!(
                seen.windows(2).all(|w| w[0] == w[1]),
                "value {v}: every attempt resends one batch: {seen:?}"
            );
            match outcome {
                SendOutcome::Ok { offset } => {
                    assert_eq!(*offset, Offset(42));
                    if seen.len() > 1 {
                        retried_ok += 1;
                    }
                    breaks += seen.len() - 1;
                }
                SendOutcome::Indefinite { reason } => {
                    assert!(!seen.is_empty(), "value {v}: indefinite, never sent");
                    assert!(reason.contains("injected"), "{reason}");
                    breaks += seen.len();
                }
                SendOutcome::Fail { reason } => {
                    assert!(seen.is_empty(), "value {v}: failed, yet sent: {reason}");
                }
            }
        }
        assert!(
            retried_ok > 0,
            "some send succeeded on a retry after a break"
        );
        let connections = connections_now - connections_before;
        assert!(
            connections + 1 >= breaks,
            "a new connection after each of {breaks} broken produces, got {connections}"
        );
        faults.set_break_probability(0.0);
        let opened = script.lock().unwrap().connections;
        for v in 100..105 {
            assert!(matches!(
                client.produce(&key(), Value(v)).await,
                SendOutcome::Ok { .. }
            ));
        }
        assert!(
            script.lock().unwrap().connections <= opened + 1,
            "switched off, no more breaks"
        );
    }
}
