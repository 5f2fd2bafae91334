//! `keel produce`: one record per input line, batched per partition, sent with Produce to each
//! partition's leader.
//!
//! How it runs: a reader thread reads lines (from stdin or `--file`) and hands them over in
//! chunks of at most [`CHUNK_LINES_MAX`] lines; a chunk also ends whenever the reader has
//! nothing more buffered, so lines typed at a terminal are sent as they come. Each chunk is
//! parsed (a malformed line stops the command, naming the line, before that chunk is sent), put
//! in partitions (a keyed record by Kafka's murmur2 partitioner, so keys land where Kafka's
//! clients put them; keyless records round-robin), built into record batches of at most
//! [`BATCH_BYTES_MAX`] and sent: one batch per partition per request, as Kafka requires.
//!
//! Records are sent at least once: a batch refused with a retriable error (leadership moved),
//! or whose leader could not be reached or did not answer, is sent again after a metadata
//! refresh, and may then be stored twice if the first attempt was in fact appended. The
//! producer is not idempotent.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, IsTerminal, Read};
use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, ProduceRequest, RequestKind, ResponseKind, TopicName};
use kafka_protocol::protocol::StrBytes;
use keel_core::batch::{BatchBuilder, Compression, NewRecord, RecordHeader};
use keel_core::error_code as code;

use super::client::{error_name, Client, TopicInfo};
use super::topic::key_value;
use super::{CliError, ClusterArgs};

/// The most lines the reader hands over at once.
const CHUNK_LINES_MAX: usize = 16_384;
/// Chunks the reader may read ahead of the sender.
const CHUNKS_AHEAD_MAX: usize = 4;
/// The largest record batch built (Kafka's default max.message.bytes is 1 MiB).
const BATCH_BYTES_MAX: usize = 512 << 10;
/// Attempts per batch (the first included) while it meets retriable errors.
const ATTEMPTS_MAX: u32 = 20;
const RETRY_BACKOFF: Duration = Duration::from_millis(500);
/// How long the leader may wait for the in-sync replicas (acks=all).
const PRODUCE_TIMEOUT_MS: i32 = 30_000;

#[derive(Args, Debug)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The topic to write to.
    pub topic: String,
    /// Read records from this file instead of stdin.
    #[arg(long, short = 'F')]
    pub file: Option<PathBuf>,
    /// Split each line at the first DELIM into key and value (a line without it is an error).
    #[arg(long, short = 'K', value_name = "DELIM")]
    pub key_delimiter: Option<String>,
    /// A header key=value on every record (repeatable).
    #[arg(long = "header", short = 'H', value_name = "KEY=VALUE")]
    pub headers: Vec<String>,
    /// Acknowledgements: 0 (none), 1 (the leader), all (every in-sync replica; also -1).
    #[arg(long, default_value = "all", allow_hyphen_values = true)]
    pub acks: String,
    /// Write every record to this partition instead of choosing by key.
    #[arg(long, short = 'p')]
    pub partition: Option<i32>,
}

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`), which its clients'
/// default partitioner applies to a record's key.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() == 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition Kafka's default partitioner gives `key` among `partitions`.
pub fn partition_for_key(key: &[u8], partitions: usize) -> usize {
    (murmur2(key) & 0x7fff_ffff) as usize % partitions
}

fn parse_acks(s: &str) -> Result<i16, CliError> {
    match s {
        "0" => Ok(0),
        "1" => Ok(1),
        "all" | "-1" => Ok(-1),
        _ => Err(CliError::usage(format!(
            "bad --acks {s:?}: give 0, 1 or all"
        ))),
    }
}

/// What the reader thread hands over.
enum Input {
    /// Lines (without their newline), the number of the first, and the bytes read so far.
    Lines {
        first_line: u64,
        lines: Vec<Vec<u8>>,
        bytes_read: u64,
    },
    Failed(String),
}

/// Reads `source` line by line into chunks (see the module doc).
fn read_lines(source: Box<dyn Read + Send>, tx: std_mpsc::SyncSender<Input>) {
    let mut reader = BufReader::with_capacity(1 << 20, source);
    let mut line_number = 1u64;
    let mut bytes_read = 0u64;
    let mut lines = Vec::new();
    let mut first_line = 1;
    loop {
        let mut line = Vec::new();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(n) => {
                bytes_read += n as u64;
                if line.last() == Some(&b'\n') {
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                }
                lines.push(line);
                line_number += 1;
            }
            Err(e) => {
                let _ = tx.send(Input::Failed(format!(
                    "cannot read line {line_number}: {e}"
                )));
                return;
            }
        }
        if lines.len() >= CHUNK_LINES_MAX || reader.buffer().is_empty() {
            let chunk = Input::Lines {
                first_line,
                lines: std::mem::take(&mut lines),
                bytes_read,
            };
            if tx.send(chunk).is_err() {
                return;
            }
            first_line = line_number;
        }
    }
    if !lines.is_empty() {
        let _ = tx.send(Input::Lines {
            first_line,
            lines,
            bytes_read,
        });
    }
}

/// The batches still to send, per partition, in order.
type Pending = BTreeMap<i32, Vec<Bytes>>;

/// Turns a chunk's lines into record batches per partition.
fn build_batches(
    lines: Vec<Vec<u8>>,
    first_line: u64,
    args: &ProduceArgs,
    headers: &[RecordHeader],
    partitions: usize,
    round_robin: &mut usize,
) -> Result<Pending, CliError> {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut per_partition: BTreeMap<i32, Vec<NewRecord>> = BTreeMap::new();
    for (i, line) in lines.into_iter().enumerate() {
        let (key, value) = match &args.key_delimiter {
            None => (None, line),
            Some(delimiter) => {
                let d = delimiter.as_bytes();
                let at = line.windows(d.len()).position(|w| w == d).ok_or_else(|| {
                    CliError::usage(format!(
                        "line {}: no key delimiter {delimiter:?} (each line must be \
                             KEY{delimiter}VALUE)",
                        first_line + i as u64,
                    ))
                })?;
                (Some(line[..at].to_vec()), line[at + d.len()..].to_vec())
            }
        };
        let partition = match (args.partition, &key) {
            (Some(p), _) => p,
            (None, Some(k)) => partition_for_key(k, partitions) as i32,
            (None, None) => {
                *round_robin = (*round_robin + 1) % partitions;
                *round_robin as i32
            }
        };
        per_partition.entry(partition).or_default().push(NewRecord {
            timestamp: now_ms,
            key: key.map(Bytes::from),
            value: Some(Bytes::from(value)),
            headers: headers.to_vec(),
        });
    }
    let mut pending = Pending::new();
    for (partition, records) in per_partition {
        let mut builder = BatchBuilder::new(Compression::None);
        let mut bytes = 0;
        for record in records {
            let size = record.key.as_ref().map_or(0, Bytes::len)
                + record.value.as_ref().map_or(0, Bytes::len)
                + 16;
            if !builder.records.is_empty() && bytes + size > BATCH_BYTES_MAX {
                pending.entry(partition).or_default().push(build(&builder)?);
                builder.records.clear();
                bytes = 0;
            }
            bytes += size;
            builder.records.push(record);
        }
        if !builder.records.is_empty() {
            pending.entry(partition).or_default().push(build(&builder)?);
        }
    }
    Ok(pending)
}

fn build(builder: &BatchBuilder) -> Result<Bytes, CliError> {
    builder
        .build()
        .map(|b| b.into_bytes())
        .map_err(|e| CliError::failed(format!("cannot build a record batch: {e}")))
}

/// Errors after which the same batch is sent again (to a leader found anew).
fn retriable(error: i16) -> bool {
    matches!(
        error,
        code::LEADER_NOT_AVAILABLE
            | code::NOT_LEADER_OR_FOLLOWER
            | code::REQUEST_TIMED_OUT
            | code::NOT_ENOUGH_REPLICAS
            | code::NOT_ENOUGH_REPLICAS_AFTER_APPEND
            | code::FENCED_LEADER_EPOCH
            | code::UNKNOWN_LEADER_EPOCH
    )
}

/// Sends every pending batch; the number of records sent is the caller's to count.
async fn send_batches(
    client: &mut Client,
    topic: &mut TopicInfo,
    acks: i16,
    mut pending: Pending,
) -> Result<(), CliError> {
    let name = TopicName(StrBytes::from_string(topic.name.clone()));
    let mut attempt = 0;
    while !pending.is_empty() {
        // One round: the first pending batch of each partition, one request per leader.
        let mut by_leader: BTreeMap<i32, Vec<(i32, Bytes)>> = BTreeMap::new();
        for (partition, batches) in &pending {
            let leader = topic
                .partitions
                .iter()
                .find(|p| p.partition == *partition)
                .map_or(-1, |p| p.leader);
            by_leader
                .entry(leader)
                .or_default()
                .push((*partition, batches[0].clone()));
        }
        let mut retry = None;
        for (leader, batches) in by_leader {
            if leader < 0 {
                retry = Some(format!(
                    "partition {}/{} has no leader",
                    topic.name, batches[0].0
                ));
                continue;
            }
            let addr = client.broker_address(leader)?;
            if let Err(e) = client.connection(&addr).await {
                // The leader is down: its partitions will have a new leader.
                retry = Some(e.message);
                continue;
            }
            let mut request = ProduceRequest::default();
            request.acks = acks;
            request.timeout_ms = PRODUCE_TIMEOUT_MS;
            request.topic_data = vec![TopicProduceData::default()
                .with_name(name.clone())
                .with_partition_data(
                    batches
                        .iter()
                        .map(|(p, b)| {
                            PartitionProduceData::default()
                                .with_index(*p)
                                .with_records(Some(b.clone()))
                        })
                        .collect(),
                )];
            if acks == 0 {
                client
                    .connection(&addr)
                    .await?
                    .send_only(ApiKey::Produce, RequestKind::Produce(request))
                    .await?;
                for (p, _) in &batches {
                    pop_first(&mut pending, *p);
                }
                continue;
            }
            let response = match client
                .call(&addr, ApiKey::Produce, RequestKind::Produce(request))
                .await
            {
                Ok(ResponseKind::Produce(response)) => response,
                Ok(_) => return Err(CliError::failed("not a Produce response")),
                // The connection broke, or no answer came in time: the batches may or may not
                // have been appended; they are sent again (at least once).
                Err(e) => {
                    retry = Some(e.message);
                    continue;
                }
            };
            for t in &response.responses {
                for p in &t.partition_responses {
                    match p.error_code {
                        0 => pop_first(&mut pending, p.index),
                        error if retriable(error) => {
                            retry = Some(format!(
                                "partition {}/{}: {}",
                                topic.name,
                                p.index,
                                error_name(error)
                            ))
                        }
                        error => {
                            let message = p
                                .error_message
                                .as_ref()
                                .filter(|m| !m.is_empty())
                                .map(|m| format!(": {m}"))
                                .unwrap_or_default();
                            return Err(CliError::failed(format!(
                                "producing to {}/{}: {}{message}",
                                topic.name,
                                p.index,
                                error_name(error)
                            )));
                        }
                    }
                }
            }
        }
        if let Some(reason) = retry {
            attempt += 1;
            if attempt >= ATTEMPTS_MAX {
                return Err(CliError::failed(format!(
                    "giving up after {ATTEMPTS_MAX} attempts: {reason} (see `keel cluster \
                     describe`)"
                )));
            }
            tokio::time::sleep(RETRY_BACKOFF).await;
            *topic = client.topic(&topic.name).await?;
        } else {
            attempt = 0;
        }
    }
    Ok(())
}

fn pop_first(pending: &mut Pending, partition: i32) {
    if let Some(batches) = pending.get_mut(&partition) {
        if !batches.is_empty() {
            batches.remove(0);
        }
        if batches.is_empty() {
            pending.remove(&partition);
        }
    }
}

/// A progress bar on stderr when it is a terminal: by bytes for a file, a running count for
/// stdin.
fn progress(file_bytes: Option<u64>) -> Option<ProgressBar> {
    if !io::stderr().is_terminal() {
        return None;
    }
    let bar = match file_bytes {
        Some(total) => {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
                )
                .ok()?,
            );
            bar
        }
        None => {
            let bar = ProgressBar::new_spinner();
            bar.set_style(ProgressStyle::with_template("{spinner} {bytes} read {msg}").ok()?);
            bar
        }
    };
    Some(bar)
}

pub async fn run(args: ProduceArgs, client: &mut Client) -> Result<(), CliError> {
    let acks = parse_acks(&args.acks)?;
    if args.key_delimiter.as_deref() == Some("") {
        return Err(CliError::usage(
            "--key-delimiter is empty: give one or more characters",
        ));
    }
    let headers = args
        .headers
        .iter()
        .map(|h| {
            key_value(h, "--header").map(|(k, v)| RecordHeader {
                key: Bytes::from(k),
                value: Some(Bytes::from(v)),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (source, file_bytes): (Box<dyn Read + Send>, Option<u64>) = match &args.file {
        Some(path) => {
            let file = File::open(path).map_err(|e| {
                CliError::usage(format!("cannot open --file {}: {e}", path.display()))
            })?;
            let len = file.metadata().map(|m| m.len()).ok();
            (Box::new(file), len)
        }
        None => (Box::new(io::stdin()), None),
    };
    let mut topic = client.topic(&args.topic).await?;
    let partitions = topic.partitions.len();
    if partitions == 0 {
        return Err(CliError::failed(format!(
            "topic {} has no partitions",
            topic.name
        )));
    }
    if let Some(p) = args.partition {
        if p < 0 || p as usize >= partitions {
            return Err(CliError::usage(format!(
                "topic {} has no partition {p} (it has {partitions})",
                topic.name
            )));
        }
    }
    let (tx, rx) = std_mpsc::sync_channel(CHUNKS_AHEAD_MAX);
    std::thread::spawn(move || read_lines(source, tx));
    let (chunks_tx, mut chunks) = tokio::sync::mpsc::channel(1);
    // Bridges the reader thread's blocking channel into the runtime.
    std::thread::spawn(move || {
        while let Ok(input) = rx.recv() {
            if chunks_tx.blocking_send(input).is_err() {
                return;
            }
        }
    });
    let bar = progress(file_bytes);
    let mut round_robin = partitions - 1;
    let mut sent = 0u64;
    while let Some(input) = chunks.recv().await {
        let (first_line, lines, bytes_read) = match input {
            Input::Lines {
                first_line,
                lines,
                bytes_read,
            } => (first_line, lines, bytes_read),
            Input::Failed(e) => return Err(CliError::failed(e)),
        };
        let count = lines.len() as u64;
        let pending = match build_batches(
            lines,
            first_line,
            &args,
            &headers,
            partitions,
            &mut round_robin,
        ) {
            Ok(p) => p,
            Err(mut e) => {
                if let Some(bar) = &bar {
                    bar.abandon();
                }
                e.message.push_str(&format!(
                    "; {sent} records before line {first_line} were produced, none after"
                ));
                return Err(e);
            }
        };
        send_batches(client, &mut topic, acks, pending).await?;
        sent += count;
        if let Some(bar) = &bar {
            bar.set_position(bytes_read);
            bar.set_message(format!("{sent} records"));
        }
    }
    if let Some(bar) = &bar {
        bar.finish();
    }
    eprintln!(
        "keel produce: {sent} records to {} (acks={})",
        topic.name,
        if acks < 0 {
            "all".to_string()
        } else {
            acks.to_string()
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kafka's own test vectors (`UtilsTest.testMurmur2`).
    #[test]
    fn murmur2_matches_kafka() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (data, want) in cases {
            assert_eq!(murmur2(data), want, "{:?}", String::from_utf8_lossy(data));
        }
    }

    #[test]
    fn acks_accept_kafka_spellings_only() {
        assert_eq!(parse_acks("all").unwrap(), -1);
        assert_eq!(parse_acks("-1").unwrap(), -1);
        assert_eq!(parse_acks("1").unwrap(), 1);
        assert_eq!(parse_acks("0").unwrap(), 0);
        assert_eq!(parse_acks("2").unwrap_err().exit, 2);
    }
}
