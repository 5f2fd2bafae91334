use bytes::{Bytes, BytesMut};
use kafka_protocol::records as kp;
use proptest::prelude::*;

use super::*;

fn sample(compression: Compression) -> Batch {
    BatchBuilder::new(compression)
        .record(1_700_000_000_000, Some(b"k1"), Some(b"v1"))
        .record(1_700_000_000_005, None, Some(b"value two"))
        .record(1_699_999_999_999, Some(b"k3"), None)
        .build()
        .expect("build")
}

/// Kafka's DefaultRecordBatch: CRC-32C over attributes..end, stored at byte 17.
#[test]
fn built_batch_has_kafka_header_layout_and_crc32c() {
    let b = sample(Compression::None);
    let bytes = b.bytes();
    assert_eq!(bytes[16] as i8, 2, "magic at byte 16");
    assert_eq!(
        i32::from_be_bytes(bytes[8..12].try_into().unwrap()) as usize,
        bytes.len() - 12
    );
    assert_eq!(
        u32::from_be_bytes(bytes[17..21].try_into().unwrap()),
        crc32c::crc32c(&bytes[21..])
    );
    assert_eq!(b.records_count(), 3);
    assert_eq!(b.last_offset_delta(), 2);
    assert_eq!(b.base_timestamp(), 1_700_000_000_000);
    assert_eq!(b.max_timestamp(), 1_700_000_000_005);
    assert_eq!(b.producer_id(), ProducerId::NONE);
    assert_eq!(b.base_sequence(), -1);
}

/// Every byte from the attributes to the end is covered by the CRC: flipping any of them is
/// caught. The first 17 bytes (offset, length, epoch, magic) are checked by other means.
#[test]
fn any_flipped_bit_after_the_crc_is_detected() {
    let b = sample(Compression::None);
    for i in field::CRC..b.size() {
        for bit in [0x01u8, 0x80] {
            let mut bytes = BytesMut::from(&b.bytes()[..]);
            bytes[i] ^= bit;
            let err = Batch::parse(bytes.freeze()).expect_err("corruption must be detected");
            assert!(
                matches!(err, BatchError::CrcMismatch { .. }),
                "byte {i}: {err:?}"
            );
        }
    }
}

#[test]
fn bad_magic_length_and_truncation_are_errors_by_blame() {
    let b = sample(Compression::None);
    let mut magic = BytesMut::from(&b.bytes()[..]);
    magic[16] = 1;
    assert_eq!(
        Batch::parse(magic.freeze()),
        Err(BatchError::UnsupportedMagic(1))
    );
    let truncated = b.bytes().slice(..b.size() - 1);
    assert!(matches!(
        Batch::parse(truncated),
        Err(BatchError::LengthMismatch { .. })
    ));
    assert!(matches!(
        Batch::parse(b.bytes().slice(..30)),
        Err(BatchError::Truncated { .. })
    ));
    let mut short = BytesMut::from(&b.bytes()[..]);
    short[8..12].copy_from_slice(&10i32.to_be_bytes());
    assert_eq!(
        Batch::parse(short.freeze()),
        Err(BatchError::LengthTooSmall(10))
    );
}

/// The broker stamps baseOffset and partitionLeaderEpoch without recomputing the CRC.
#[test]
fn stamping_keeps_the_crc_valid() {
    let mut b = sample(Compression::Zstd);
    let crc = b.crc();
    b.stamp(Offset(1234), LeaderEpoch(7));
    assert_eq!(b.crc(), crc);
    assert_eq!(b.base_offset(), Offset(1234));
    assert_eq!(b.last_offset(), Offset(1236));
    assert_eq!(b.partition_leader_epoch(), LeaderEpoch(7));
    let reparsed = Batch::parse(b.bytes().clone()).expect("still valid");
    assert_eq!(reparsed.records().unwrap()[2].offset, Offset(1236));
}

/// The log writes a leader's batch as its stamped head and the rest of its bytes: together
/// they are the stamped batch, byte for byte.
#[test]
fn the_stamped_head_and_the_rest_are_the_stamped_batch() {
    let b = sample(Compression::None);
    let head = b.stamped_head(Offset(1234), LeaderEpoch(7));
    let mut stamped = b.clone();
    stamped.stamp(Offset(1234), LeaderEpoch(7));
    let written = [&head[..], &b.bytes()[STAMPED_HEAD_BYTES..]].concat();
    assert_eq!(&written[..], &stamped.bytes()[..]);
    assert_eq!(
        &b.bytes()[..8],
        &[0u8; 8],
        "the batch itself is not stamped"
    );
}

/// LogValidator: with LogAppendTime the broker sets maxTimestamp and recomputes the CRC.
#[test]
fn log_append_time_sets_max_timestamp_and_recomputes_crc() {
    let mut b = sample(Compression::None);
    b.set_log_append_time(42);
    let b = Batch::parse(b.into_bytes()).expect("valid after recompute");
    assert_eq!(b.max_timestamp(), 42);
    assert_eq!(b.timestamp_type(), TimestampType::LogAppendTime);
}

#[test]
fn every_codec_round_trips_records() {
    for codec in Compression::ALL {
        let b = sample(codec);
        assert_eq!(b.compression().unwrap(), codec);
        let records = b.records().unwrap();
        assert_eq!(records.len(), 3, "{codec:?}");
        assert_eq!(records[0].key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(records[1].value.as_deref(), Some(&b"value two"[..]));
        assert_eq!(records[2].value, None);
        assert_eq!(records[2].timestamp, 1_699_999_999_999);
    }
}

/// Batches encoded by an independent codec (kafka-protocol's, which follows the Java client)
/// parse here with every codec, including xerial-framed snappy as Java producers write it.
#[test]
fn batches_from_kafka_protocol_encoder_parse_and_decode() {
    let codecs = [
        (kp::Compression::None, Compression::None),
        (kp::Compression::Gzip, Compression::Gzip),
        (kp::Compression::Snappy, Compression::Snappy),
        (kp::Compression::Lz4, Compression::Lz4),
        (kp::Compression::Zstd, Compression::Zstd),
    ];
    for (theirs, ours) in codecs {
        let records: Vec<kp::Record> = (0..5)
            .map(|i| kp::Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 3,
                producer_id: 77,
                producer_epoch: 1,
                timestamp_type: kp::TimestampType::Creation,
                offset: i,
                sequence: 10 + i as i32,
                timestamp: 1000 + i,
                key: Some(Bytes::from(format!("key{i}"))),
                value: Some(Bytes::from(vec![b'x'; 100 * i as usize])),
                headers: [(
                    kafka_protocol::protocol::StrBytes::from_static_str("h"),
                    Some(Bytes::from_static(b"hv")),
                )]
                .into_iter()
                .collect(),
            })
            .collect();
        let mut buf = BytesMut::new();
        kp::RecordBatchEncoder::encode(
            &mut buf,
            &records,
            &kp::RecordEncodeOptions {
                version: 2,
                compression: theirs,
            },
        )
        .expect("encode");
        let batch = Batch::parse(buf.freeze()).expect("keel parses kafka-protocol's batch");
        assert_eq!(batch.compression().unwrap(), ours);
        assert_eq!(batch.producer_id(), ProducerId(77));
        assert_eq!(batch.base_sequence(), 10);
        assert_eq!(batch.last_sequence(), 14);
        let decoded = batch.records().expect("records");
        assert_eq!(decoded.len(), 5);
        for (i, r) in decoded.iter().enumerate() {
            assert_eq!(r.offset, Offset(i as i64));
            assert_eq!(r.timestamp, 1000 + i as i64);
            assert_eq!(r.value.as_ref().unwrap().len(), 100 * i);
            assert_eq!(
                r.headers,
                vec![RecordHeader {
                    key: Bytes::from_static(b"h"),
                    value: Some(Bytes::from_static(b"hv"))
                }]
            );
        }
    }
}

/// And the other way: kafka-protocol's decoder (which clients' logic mirrors) reads keel's.
#[test]
fn kafka_protocol_decoder_reads_keel_batches() {
    for codec in Compression::ALL {
        let mut b = sample(codec);
        b.stamp(Offset(100), LeaderEpoch(2));
        let mut bytes = b.into_bytes();
        let set = kp::RecordBatchDecoder::decode(&mut bytes).expect("decode");
        let offsets: Vec<i64> = set.records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, vec![100, 101, 102], "{codec:?}");
        assert_eq!(set.records[1].value.as_deref(), Some(&b"value two"[..]));
    }
}

#[test]
fn decompression_bombs_are_bounded() {
    let zeros = vec![0u8; DECOMPRESSED_BYTES_MAX + 10];
    let compressed = Bytes::from(compress(Compression::Zstd, &zeros).unwrap());
    assert!(matches!(
        decompress(Compression::Zstd, &compressed),
        Err(BatchError::Decompression(_))
    ));
}

#[test]
fn unknown_codec_is_an_error_on_read() {
    let b = sample(Compression::None);
    let mut bytes = BytesMut::from(&b.bytes()[..]);
    bytes[field::ATTRIBUTES + 1] |= 0x07;
    let crc = compute_crc(&bytes);
    bytes[field::CRC..field::CRC + 4].copy_from_slice(&crc.to_be_bytes());
    let b = Batch::parse(bytes.freeze()).expect("header is valid");
    assert_eq!(b.records(), Err(BatchError::UnknownCompression(7)));
}

fn arb_record() -> impl Strategy<Value = NewRecord> {
    (
        any::<i64>(),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..200)),
        proptest::collection::vec(
            (
                proptest::collection::vec(any::<u8>(), 0..10),
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..10)),
            ),
            0..3,
        ),
    )
        .prop_map(|(timestamp, key, value, headers)| NewRecord {
            timestamp: timestamp >> 2,
            key: key.map(Bytes::from),
            value: value.map(Bytes::from),
            headers: headers
                .into_iter()
                .map(|(k, v)| RecordHeader {
                    key: Bytes::from(k),
                    value: v.map(Bytes::from),
                })
                .collect(),
        })
}

// ---------------------------------------------------------------------------------------------
// Control batches (transaction markers)
// ---------------------------------------------------------------------------------------------

/// Kafka's `MemoryRecords.withEndTransactionMarker`: a transactional control batch, base
/// sequence -1, one record whose key is `i16 0, i16 type` and value `i16 0, i32 epoch`
/// (`ControlRecordType.java`, `EndTransactionMarker.java`).
#[test]
fn end_txn_marker_batch_has_kafka_layout() {
    for (commit, kind) in [(true, 1i16), (false, 0i16)] {
        let marker = EndTxnMarker {
            commit,
            coordinator_epoch: 7,
        };
        let b = marker.batch(ProducerId(42), 3, 1_000).expect("build");
        assert!(b.is_control() && b.is_transactional());
        assert_eq!(b.attributes() & 0x30, 0x30, "bits 4 and 5");
        assert_eq!(b.compression().unwrap(), Compression::None);
        assert_eq!((b.producer_id(), b.producer_epoch()), (ProducerId(42), 3));
        assert_eq!(b.base_sequence(), -1);
        assert_eq!(b.records_count(), 1);
        let records = b.records().unwrap();
        let mut key = vec![0, 0];
        key.extend_from_slice(&kind.to_be_bytes());
        assert_eq!(records[0].key.as_deref(), Some(&key[..]));
        assert_eq!(records[0].value.as_deref(), Some(&[0, 0, 0, 0, 0, 7][..]));
        assert_eq!(records[0].timestamp, 1_000);
        assert_eq!(b.end_txn_marker(), Ok(Some(marker)));
    }
}

/// kafka-protocol's decoder sees keel's marker as a control record of the transaction, and
/// keel reads a marker batch kafka-protocol encodes.
#[test]
fn end_txn_marker_agrees_with_kafka_protocol() {
    let marker = EndTxnMarker {
        commit: true,
        coordinator_epoch: 12,
    };
    let mut b = marker.batch(ProducerId(9), 1, 5).unwrap();
    b.stamp(Offset(40), LeaderEpoch(2));
    let mut bytes = b.into_bytes();
    let set = kp::RecordBatchDecoder::decode(&mut bytes).expect("decode");
    let r = &set.records[0];
    assert!(r.control && r.transactional);
    assert_eq!((r.producer_id, r.producer_epoch, r.offset), (9, 1, 40));

    let theirs = kp::Record {
        transactional: true,
        control: true,
        delete_horizon: false,
        partition_leader_epoch: 2,
        producer_id: 9,
        producer_epoch: 1,
        timestamp_type: kp::TimestampType::Creation,
        offset: 40,
        sequence: -1,
        timestamp: 5,
        key: Some(Bytes::from_static(&[0, 0, 0, 0])),
        value: Some(Bytes::from_static(&[0, 0, 0, 0, 0, 12])),
        headers: Default::default(),
    };
    let mut buf = BytesMut::new();
    kp::RecordBatchEncoder::encode(
        &mut buf,
        &[theirs],
        &kp::RecordEncodeOptions {
            version: 2,
            compression: kp::Compression::None,
        },
    )
    .expect("encode");
    let batch = Batch::parse(buf.freeze()).expect("parse");
    assert_eq!(
        batch.end_txn_marker(),
        Ok(Some(EndTxnMarker {
            commit: false,
            coordinator_epoch: 12
        }))
    );
}

/// A data batch has no marker; a control record of another type (KRaft's, or a later one) is
/// skipped, not an error; a short key or value, or a negative version, is corrupt.
#[test]
fn end_txn_marker_parse_rejects_bad_control_records() {
    assert_eq!(sample(Compression::None).end_txn_marker(), Ok(None));
    let control = |key: &[u8], value: &[u8]| {
        BatchBuilder {
            transactional: true,
            control: true,
            ..BatchBuilder::default()
        }
        .record(0, Some(key), Some(value))
        .build()
        .unwrap()
    };
    assert_eq!(
        control(&[0, 0, 0, 3], &[0, 0, 0, 0, 0, 0]).end_txn_marker(),
        Ok(None)
    );
    assert_eq!(
        control(&[0, 1, 0, 1], &[0, 1, 0, 0, 0, 4, 9]).end_txn_marker(),
        Ok(Some(EndTxnMarker {
            commit: true,
            coordinator_epoch: 4
        })),
        "later versions are read as version 0"
    );
    for (key, value) in [
        (&[0, 0, 0][..], &[0, 0, 0, 0, 0, 0][..]),
        (&[0xff, 0xff, 0, 1][..], &[0, 0, 0, 0, 0, 0][..]),
        (&[0, 0, 0, 1][..], &[0, 0, 0, 0, 0][..]),
        (&[0, 0, 0, 0][..], &[0x80, 0, 0, 0, 0, 0][..]),
    ] {
        assert!(
            matches!(
                control(key, value).end_txn_marker(),
                Err(BatchError::CorruptRecords(_))
            ),
            "{key:?} {value:?}"
        );
    }
    let two = BatchBuilder {
        control: true,
        ..BatchBuilder::default()
    }
    .record(0, Some(&[0, 0, 0, 1]), Some(&[0, 0, 0, 0, 0, 0]))
    .record(0, Some(&[0, 0, 0, 1]), Some(&[0, 0, 0, 0, 0, 0]))
    .build()
    .unwrap();
    assert!(
        two.end_txn_marker().is_err(),
        "one record per control batch"
    );
    assert!(control(&[0, 0, 0, 0], &[]).end_txn_marker().is_err());
}

proptest! {
    /// Build -> parse -> records gives back exactly what went in, for every codec.
    #[test]
    fn codec_round_trip(
        records in proptest::collection::vec(arb_record(), 1..20),
        codec in proptest::sample::select(Compression::ALL.to_vec()),
        base in 0i64..1 << 40,
        epoch in 0i32..1000,
    ) {
        let mut builder = BatchBuilder::new(codec);
        builder.records = records.clone();
        let mut batch = builder.build().unwrap();
        batch.stamp(Offset(base), LeaderEpoch(epoch));
        let parsed = Batch::parse(batch.bytes().clone()).unwrap();
        super::testing::round_trip(parsed.bytes());
        let decoded = parsed.records().unwrap();
        prop_assert_eq!(decoded.len(), records.len());
        for (i, (d, r)) in decoded.iter().zip(&records).enumerate() {
            prop_assert_eq!(d.offset, Offset(base + i as i64));
            prop_assert_eq!(d.timestamp, r.timestamp);
            prop_assert_eq!(&d.key, &r.key);
            prop_assert_eq!(&d.value, &r.value);
            prop_assert_eq!(&d.headers, &r.headers);
        }
    }

    /// Arbitrary bytes never panic the parser or the record decoder.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Ok(b) = Batch::parse(Bytes::from(bytes.clone())) {
            let _ = b.records();
        }
        let _ = Batch::parse_prefix(&Bytes::from(bytes.clone()));
        super::testing::round_trip(&bytes);
    }

    /// A valid header with a fuzzed records section and a recomputed CRC: decoding records
    /// returns an error or records, never panics.
    #[test]
    fn fuzzed_records_section_never_panics(
        section in proptest::collection::vec(any::<u8>(), 0..200),
        count in -2i32..50,
        codec in 0i16..5,
    ) {
        let mut b = BytesMut::from(&sample(Compression::None).bytes()[..HEADER_BYTES]);
        b.extend_from_slice(&section);
        let len = (b.len() - LOG_OVERHEAD_BYTES) as i32;
        b[field::BATCH_LENGTH..field::BATCH_LENGTH + 4].copy_from_slice(&len.to_be_bytes());
        b[field::RECORDS_COUNT..field::RECORDS_COUNT + 4].copy_from_slice(&count.to_be_bytes());
        b[field::ATTRIBUTES..field::ATTRIBUTES + 2].copy_from_slice(&codec.to_be_bytes());
        let crc = compute_crc(&b);
        b[field::CRC..field::CRC + 4].copy_from_slice(&crc.to_be_bytes());
        let batch = Batch::parse(b.freeze()).unwrap();
        let _ = batch.records();
    }
}

/// Found by the batch_parse fuzzer: a batch whose baseOffset is near i64::MAX made offset
/// arithmetic overflow (a panic on bytes from outside). Offsets now saturate.
#[test]
fn base_offset_near_the_maximum_does_not_overflow() {
    let mut b = sample(Compression::None);
    b.stamp(Offset(i64::MAX - 1), LeaderEpoch(0));
    assert_eq!(b.last_offset(), Offset(i64::MAX));
    let _ = b.records();
    super::testing::round_trip(b.bytes());
}
