//! `keel consume`: reads partitions with Fetch and prints each record through a template.
//!
//! How it runs: one task per partition leader owns a connection of its own and keeps one Fetch
//! in flight: as soon as an answer arrives it works out the next offsets from the batch
//! headers alone and sends the next Fetch, then hands the answer to the printing loop, which
//! decodes and prints while the broker serves the next request. The channel between them holds
//! at most [`CHUNKS_IN_FLIGHT_MAX`] answers per partition read, so a slow stdout slows the
//! fetching.
//!
//! Where it stops: without `--follow`, at each partition's high watermark as it was when the
//! command started; with `--num N`, after N records; with `--follow`, at Ctrl-C.

use std::collections::BTreeMap;
use std::io::{self, BufWriter, Write};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::{
    ApiKey, BrokerId, FetchRequest, ListOffsetsRequest, RequestKind, ResponseKind, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use keel_core::batch::{peek_size, Batch, BatchHeader, Record};
use keel_core::error_code as code;
use tokio::sync::mpsc;

use super::client::{check, error_name, Client, Connection, TopicInfo};
use super::group::{commit_offsets, committed_offsets};
use super::{CliError, ClusterArgs};

/// Answers per partition read that the leaders' tasks may hand over before they wait for the
/// printing loop.
const CHUNKS_IN_FLIGHT_MAX: usize = 4;
/// The most bytes one Fetch asks for, in all and per partition (Kafka's fetch.max.bytes is
/// 50 MiB, max.partition.fetch.bytes 1 MiB; larger answers mean fewer round trips).
const FETCH_BYTES_MAX: i32 = 64 << 20;
const PARTITION_FETCH_BYTES_MAX: i32 = 16 << 20;
/// How long the broker may hold a Fetch that has no data yet.
const FETCH_WAIT_MS: i32 = 500;
/// How often `--group` commits its position while it consumes.
const COMMIT_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Args, Debug)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The topic to read.
    pub topic: String,
    /// Where to start in each partition: start, end, an offset N, or -N (N records before the
    /// end). With --group, only for partitions the group has no committed offset for.
    #[arg(long, default_value = "start", allow_hyphen_values = true)]
    pub offset: String,
    /// Partitions to read (comma-separated or repeated; default: all).
    #[arg(long, short = 'p', value_delimiter = ',')]
    pub partition: Vec<i32>,
    /// Start from the group's committed offsets and commit what was printed (without joining
    /// the group as a member: docs/cli.md).
    #[arg(long, short = 'g')]
    pub group: Option<String>,
    /// How each record is printed: a template with %v (or %s) value, %k key, %t topic,
    /// %p partition, %o offset, %T timestamp, %h headers, %K key length, %S value length,
    /// %% and the escapes \n \t \r \\; or `json` for one JSON object per line.
    #[arg(long, short = 'f', default_value = "%v\\n")]
    pub format: String,
    /// Keep waiting for new records at the end of the partitions (until Ctrl-C).
    #[arg(long)]
    pub follow: bool,
    /// Stop after this many records.
    #[arg(long, short = 'n')]
    pub num: Option<u64>,
}

/// Where to start reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffsetSpec {
    Start,
    End,
    At(i64),
    BeforeEnd(i64),
}

impl OffsetSpec {
    pub fn parse(s: &str) -> Result<OffsetSpec, CliError> {
        let bad = || {
            CliError::usage(format!(
                "bad --offset {s:?}: give start, end, an offset N, or -N for N records before \
                 the end"
            ))
        };
        match s {
            "start" | "beginning" | "earliest" | "oldest" => Ok(OffsetSpec::Start),
            "end" | "latest" | "newest" => Ok(OffsetSpec::End),
            _ => match s.strip_prefix('-') {
                Some(n) => n
                    .parse::<i64>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .map(OffsetSpec::BeforeEnd)
                    .ok_or_else(bad),
                None => s
                    .parse::<i64>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .map(OffsetSpec::At)
                    .ok_or_else(bad),
            },
        }
    }
}

/// ListOffsets' special timestamps.
#[derive(Clone, Copy, Debug)]
pub enum OffsetQuery {
    /// The log start offset (timestamp -2).
    Earliest,
    /// The high watermark (timestamp -1).
    Latest,
}

/// How many times a ListOffsets refused for a leadership that is moving or not yet taken is
/// asked again, after [`LIST_OFFSETS_RETRY_WAIT`] and a metadata refresh: long enough for a
/// topic created a moment ago to get its leaders, or a killed broker's partitions new ones.
const LIST_OFFSETS_TRIES: usize = 20;
const LIST_OFFSETS_RETRY_WAIT: Duration = Duration::from_millis(300);

/// Each partition's offset for `query` (ListOffsets to each partition's leader). A partition
/// whose leader is not (yet) known or has moved (NOT_LEADER_OR_FOLLOWER, LEADER_NOT_AVAILABLE,
/// an epoch error, no leader in the metadata) is asked again at the leader fresh metadata
/// names, up to [`LIST_OFFSETS_TRIES`] times; any other error ends it.
pub async fn list_offsets(
    client: &mut Client,
    topic: &TopicInfo,
    partitions: &[i32],
    query: OffsetQuery,
) -> Result<BTreeMap<i32, i64>, CliError> {
    let mut topic = topic.clone();
    let mut tries = 1;
    loop {
        match list_offsets_once(client, &topic, partitions, query).await {
            Err(ListOffsetsError::Moving(_)) if tries < LIST_OFFSETS_TRIES => {
                tries += 1;
                tokio::time::sleep(LIST_OFFSETS_RETRY_WAIT).await;
                topic = client.topic(&topic.name).await?;
            }
            Err(ListOffsetsError::Moving(e) | ListOffsetsError::Failed(e)) => return Err(e),
            Ok(offsets) => return Ok(offsets),
        }
    }
}

/// Why one round of ListOffsets failed.
enum ListOffsetsError {
    /// A leadership not yet taken or moving: worth asking again.
    Moving(CliError),
    /// Anything else.
    Failed(CliError),
}

impl From<CliError> for ListOffsetsError {
    fn from(e: CliError) -> Self {
        ListOffsetsError::Failed(e)
    }
}

async fn list_offsets_once(
    client: &mut Client,
    topic: &TopicInfo,
    partitions: &[i32],
    query: OffsetQuery,
) -> Result<BTreeMap<i32, i64>, ListOffsetsError> {
    let timestamp = match query {
        OffsetQuery::Earliest => -2,
        OffsetQuery::Latest => -1,
    };
    let mut by_leader: BTreeMap<i32, Vec<i32>> = BTreeMap::new();
    for p in &topic.partitions {
        if partitions.contains(&p.partition) {
            if p.leader < 0 {
                return Err(ListOffsetsError::Moving(CliError::failed(format!(
                    "partition {}/{} has no leader ({}); see `keel cluster describe`",
                    topic.name,
                    p.partition,
                    error_name(p.error_code)
                ))));
            }
            by_leader.entry(p.leader).or_default().push(p.partition);
        }
    }
    let mut offsets = BTreeMap::new();
    for (leader, ps) in by_leader {
        let addr = client.broker_address(leader)?;
        let mut request = ListOffsetsRequest::default();
        request.replica_id = BrokerId(-1);
        request.topics = vec![ListOffsetsTopic::default()
            .with_name(TopicName(StrBytes::from_string(topic.name.clone())))
            .with_partitions(
                ps.iter()
                    .map(|p| {
                        ListOffsetsPartition::default()
                            .with_partition_index(*p)
                            .with_current_leader_epoch(-1)
                            .with_timestamp(timestamp)
                    })
                    .collect(),
            )];
        let ResponseKind::ListOffsets(response) = client
            .call(
                &addr,
                ApiKey::ListOffsets,
                RequestKind::ListOffsets(request),
            )
            .await?
        else {
            return Err(CliError::failed("not a ListOffsets response").into());
        };
        for t in &response.topics {
            for p in &t.partitions {
                let checked = check(
                    p.error_code,
                    "listing offsets of",
                    &format!("{}/{}", topic.name, p.partition_index),
                );
                match checked {
                    Err(e) if leadership_moving(p.error_code) => {
                        return Err(ListOffsetsError::Moving(e))
                    }
                    other => other?,
                }
                offsets.insert(p.partition_index, p.offset);
            }
        }
    }
    Ok(offsets)
}

/// Errors that say a partition's leadership is not yet taken or has moved.
fn leadership_moving(error: i16) -> bool {
    matches!(
        error,
        code::LEADER_NOT_AVAILABLE
            | code::NOT_LEADER_OR_FOLLOWER
            | code::FENCED_LEADER_EPOCH
            | code::UNKNOWN_LEADER_EPOCH
    )
}

/// Partition `p`'s log start offset and high watermark from two ListOffsets answers; a
/// partition an answer left out is an error, not a panic.
pub fn offset_range(
    starts: &BTreeMap<i32, i64>,
    ends: &BTreeMap<i32, i64>,
    topic: &str,
    p: i32,
) -> Result<(i64, i64), CliError> {
    match (starts.get(&p), ends.get(&p)) {
        (Some(&start), Some(&end)) => Ok((start, end)),
        _ => Err(CliError::failed(format!(
            "ListOffsets did not answer for partition {topic}/{p}"
        ))),
    }
}

/// One piece of a `--format` template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Part {
    Literal(Vec<u8>),
    Value,
    Key,
    Topic,
    Partition,
    Offset,
    Timestamp,
    Headers,
    KeyLength,
    ValueLength,
}

/// How records are printed.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Format {
    Template(Vec<Part>),
    Json,
}

impl Format {
    fn parse(s: &str) -> Result<Format, CliError> {
        if s == "json" {
            return Ok(Format::Json);
        }
        let mut parts = Vec::new();
        let mut literal = Vec::new();
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            let field = match c {
                '%' => match chars.next() {
                    Some('v') | Some('s') => Part::Value,
                    Some('k') => Part::Key,
                    Some('t') => Part::Topic,
                    Some('p') => Part::Partition,
                    Some('o') => Part::Offset,
                    Some('T') => Part::Timestamp,
                    Some('h') => Part::Headers,
                    Some('K') => Part::KeyLength,
                    Some('S') => Part::ValueLength,
                    Some('%') => {
                        literal.push(b'%');
                        continue;
                    }
                    other => {
                        return Err(CliError::usage(format!(
                            "bad --format {s:?}: unknown field %{} (fields: %v %k %t %p %o %T \
                             %h %K %S %%)",
                            other.map(String::from).unwrap_or_default()
                        )))
                    }
                },
                '\\' => {
                    let escaped = match chars.next() {
                        Some('n') => '\n',
                        Some('t') => '\t',
                        Some('r') => '\r',
                        Some('\\') => '\\',
                        other => {
                            return Err(CliError::usage(format!(
                            "bad --format {s:?}: unknown escape \\{} (escapes: \\n \\t \\r \\\\)",
                            other.map(String::from).unwrap_or_default()
                        )))
                        }
                    };
                    let mut buf = [0; 4];
                    literal.extend_from_slice(escaped.encode_utf8(&mut buf).as_bytes());
                    continue;
                }
                c => {
                    let mut buf = [0; 4];
                    literal.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    continue;
                }
            };
            if !literal.is_empty() {
                parts.push(Part::Literal(std::mem::take(&mut literal)));
            }
            parts.push(field);
        }
        if !literal.is_empty() {
            parts.push(Part::Literal(literal));
        }
        Ok(Format::Template(parts))
    }

    fn write(
        &self,
        out: &mut impl Write,
        topic: &str,
        partition: i32,
        record: &Record,
    ) -> io::Result<()> {
        let parts = match self {
            Format::Json => return write_json(out, topic, partition, record),
            Format::Template(parts) => parts,
        };
        for part in parts {
            match part {
                Part::Literal(bytes) => out.write_all(bytes)?,
                Part::Value => out.write_all(record.value.as_deref().unwrap_or_default())?,
                Part::Key => out.write_all(record.key.as_deref().unwrap_or_default())?,
                Part::Topic => out.write_all(topic.as_bytes())?,
                Part::Partition => write!(out, "{partition}")?,
                Part::Offset => write!(out, "{}", record.offset)?,
                Part::Timestamp => write!(out, "{}", record.timestamp)?,
                Part::KeyLength => write!(
                    out,
                    "{}",
                    record.key.as_ref().map_or(-1, |k| k.len() as i64)
                )?,
                Part::ValueLength => write!(
                    out,
                    "{}",
                    record.value.as_ref().map_or(-1, |v| v.len() as i64)
                )?,
                Part::Headers => {
                    for (i, h) in record.headers.iter().enumerate() {
                        if i > 0 {
                            out.write_all(b",")?;
                        }
                        out.write_all(&h.key)?;
                        out.write_all(b"=")?;
                        out.write_all(h.value.as_deref().unwrap_or_default())?;
                    }
                }
            }
        }
        Ok(())
    }
}

fn lossy(bytes: &Option<Bytes>) -> serde_json::Value {
    match bytes {
        None => serde_json::Value::Null,
        Some(b) => serde_json::Value::String(String::from_utf8_lossy(b).into_owned()),
    }
}

fn write_json(
    out: &mut impl Write,
    topic: &str,
    partition: i32,
    record: &Record,
) -> io::Result<()> {
    let headers: serde_json::Map<String, serde_json::Value> = record
        .headers
        .iter()
        .map(|h| {
            (
                String::from_utf8_lossy(&h.key).into_owned(),
                lossy(&h.value),
            )
        })
        .collect();
    let value = serde_json::json!({
        "topic": topic,
        "partition": partition,
        "offset": record.offset.0,
        "timestamp": record.timestamp,
        "key": lossy(&record.key),
        "value": lossy(&record.value),
        "headers": headers,
    });
    serde_json::to_writer(&mut *out, &value)?;
    out.write_all(b"\n")
}

/// One Fetch answer for one partition, handed from a leader's task to the printing loop.
struct Chunk {
    partition: i32,
    /// The offset the Fetch asked from: records before it (in the first batch) are skipped.
    from: i64,
    records: Bytes,
}

/// What a leader's task reports.
enum Fetched {
    Chunk(Chunk),
    /// Partitions this leader no longer serves, to be read on at their leaders found anew;
    /// the task goes on with the rest.
    HandBack(Vec<Cursor>, String),
    /// The task's last message: why it ended.
    Ended(Exit),
}

/// Why a leader's task ended.
enum Exit {
    /// Every partition reached its stop offset.
    Done,
    /// The leader stopped serving these partitions (leadership moved, or its connection broke):
    /// they are to be read on from their next offsets at their leaders found anew.
    Moved(Vec<Cursor>, String),
    Failed(CliError),
    /// The printing loop is gone.
    Closed,
}

/// A partition a leader's task reads: the next offset to fetch and where to stop.
#[derive(Clone, Copy, Debug)]
struct Cursor {
    partition: i32,
    next: i64,
    stop: Option<i64>,
}

impl Cursor {
    fn done(&self) -> bool {
        self.stop.is_some_and(|s| self.next >= s)
    }
}

/// Partition errors after which the partition is read on at its leader found anew
/// (KAFKA_STORAGE_ERROR: the replica is offline here; another may lead).
fn leader_moved(error: i16) -> bool {
    matches!(
        error,
        code::LEADER_NOT_AVAILABLE
            | code::NOT_LEADER_OR_FOLLOWER
            | code::KAFKA_STORAGE_ERROR
            | code::FENCED_LEADER_EPOCH
            | code::UNKNOWN_LEADER_EPOCH
    )
}

/// How many times in a row partitions may move without a record arriving in between.
const MOVES_MAX: u32 = 30;
/// The pause before partitions that moved are read again.
const MOVE_BACKOFF: Duration = Duration::from_millis(300);

/// The next offset after the whole batches at the start of `records` (headers only; the
/// printing loop checks every CRC).
fn next_offset(records: &Bytes, from: i64) -> Result<i64, String> {
    let mut next = from;
    let mut pos = 0;
    while let Some(size) = peek_size(&records[pos..]) {
        let size = size.map_err(|e| e.to_string())?;
        if pos + size > records.len() {
            break; // a batch cut at the end of the answer: fetched again next time
        }
        let header = BatchHeader::read(&records[pos..pos + size]).map_err(|e| e.to_string())?;
        next = next.max(header.next_offset().0);
        pos += size;
    }
    Ok(next)
}

/// The task that fetches `cursors` from one leader over `connection`; its last message says
/// why it ended.
async fn fetch_task(
    connection: Connection,
    topic: String,
    cursors: Vec<Cursor>,
    tx: mpsc::Sender<Fetched>,
) {
    let exit = fetch_loop(connection, &topic, cursors, &tx).await;
    let _ = tx.send(Fetched::Ended(exit)).await;
}

async fn fetch_loop(
    mut connection: Connection,
    topic: &str,
    mut cursors: Vec<Cursor>,
    tx: &mpsc::Sender<Fetched>,
) -> Exit {
    let name = TopicName(StrBytes::from_string(topic.to_string()));
    let version = match connection.version(ApiKey::Fetch) {
        Ok(v) => v,
        Err(e) => return Exit::Failed(e),
    };
    loop {
        cursors.retain(|c| !c.done());
        if cursors.is_empty() {
            return Exit::Done;
        }
        let mut request = FetchRequest::default();
        request.replica_id = BrokerId(-1);
        request.max_wait_ms = FETCH_WAIT_MS;
        request.min_bytes = 1;
        request.max_bytes = FETCH_BYTES_MAX;
        request.isolation_level = 0;
        request.session_id = 0;
        request.session_epoch = -1;
        request.topics = vec![FetchTopic::default()
            .with_topic(name.clone())
            .with_partitions(
                cursors
                    .iter()
                    .map(|c| {
                        FetchPartition::default()
                            .with_partition(c.partition)
                            .with_current_leader_epoch(-1)
                            .with_fetch_offset(c.next)
                            .with_log_start_offset(-1)
                            .with_partition_max_bytes(PARTITION_FETCH_BYTES_MAX)
                    })
                    .collect(),
            )];
        let result = match connection
            .write(ApiKey::Fetch, version, &RequestKind::Fetch(request))
            .await
        {
            Ok(id) => connection.read(ApiKey::Fetch, version, id).await,
            Err(e) => Err(e),
        };
        let response = match result {
            Ok(ResponseKind::Fetch(r)) => r,
            Ok(_) => return Exit::Failed(CliError::failed("not a Fetch response")),
            // The broker went away: its partitions may have new leaders.
            Err(e) => return Exit::Moved(cursors, e.message),
        };
        if let Err(e) = check(response.error_code, "fetching", topic) {
            return Exit::Failed(e);
        }
        let mut moved = Vec::new();
        let mut why = String::new();
        for t in response.responses {
            for p in t.partitions {
                let Some(at) = cursors
                    .iter()
                    .position(|c| c.partition == p.partition_index)
                else {
                    continue;
                };
                if leader_moved(p.error_code) {
                    why = format!(
                        "{topic}/{}: {}",
                        p.partition_index,
                        error_name(p.error_code)
                    );
                    moved.push(cursors.remove(at));
                    continue;
                }
                let cursor = &mut cursors[at];
                if let Err(mut e) = check(
                    p.error_code,
                    "fetching",
                    &format!("{topic}/{}", p.partition_index),
                ) {
                    if p.error_code == code::OFFSET_OUT_OF_RANGE {
                        e.message.push_str(&format!(
                            " (offset {} is outside the log; try --offset start or end)",
                            cursor.next
                        ));
                    }
                    return Exit::Failed(e);
                }
                let records = p.records.unwrap_or_default();
                let from = cursor.next;
                match next_offset(&records, from) {
                    Ok(next) => cursor.next = next,
                    Err(e) => {
                        return Exit::Failed(CliError::failed(format!(
                            "partition {topic}/{}: a fetched batch is damaged: {e}",
                            p.partition_index
                        )))
                    }
                }
                if !records.is_empty()
                    && tx
                        .send(Fetched::Chunk(Chunk {
                            partition: p.partition_index,
                            from,
                            records,
                        }))
                        .await
                        .is_err()
                {
                    return Exit::Closed;
                }
            }
        }
        if !moved.is_empty() {
            if cursors.iter().all(Cursor::done) {
                return Exit::Moved(moved, why);
            }
            // The rest stay here; the moved ones go back to be placed anew.
            if tx.send(Fetched::HandBack(moved, why)).await.is_err() {
                return Exit::Closed;
            }
        }
    }
}

/// Spawns one fetch task per leader of `cursors`, refreshing the metadata and trying again
/// (after [`MOVE_BACKOFF`], up to [`MOVES_MAX`] times) for partitions without a leader or
/// whose leader cannot be reached; how many tasks it spawned.
async fn place(
    client: &mut Client,
    topic: &mut TopicInfo,
    mut cursors: Vec<Cursor>,
    tx: &mpsc::Sender<Fetched>,
) -> Result<usize, CliError> {
    let mut spawned = 0;
    for attempt in 0.. {
        let mut by_leader: BTreeMap<i32, Vec<Cursor>> = BTreeMap::new();
        for c in cursors.drain(..).filter(|c| !c.done()) {
            let leader = topic
                .partitions
                .iter()
                .find(|p| p.partition == c.partition)
                .map_or(-1, |p| p.leader);
            by_leader.entry(leader).or_default().push(c);
        }
        let mut why = String::new();
        for (leader, group) in by_leader {
            let addr = match client.broker_address(leader) {
                Ok(addr) if leader >= 0 => addr,
                _ => {
                    why = format!("{}/{} has no leader", topic.name, group[0].partition);
                    cursors.extend(group);
                    continue;
                }
            };
            match client.take_connection(&addr).await {
                Ok(connection) => {
                    tokio::spawn(fetch_task(
                        connection,
                        topic.name.clone(),
                        group,
                        tx.clone(),
                    ));
                    spawned += 1;
                }
                Err(e) => {
                    why = e.message;
                    cursors.extend(group);
                }
            }
        }
        if cursors.is_empty() {
            break;
        }
        if attempt >= MOVES_MAX {
            return Err(CliError::failed(format!(
                "cannot find the leaders of {} partitions ({why}); see `keel cluster describe`",
                cursors.len()
            )));
        }
        tokio::time::sleep(MOVE_BACKOFF).await;
        *topic = client.topic(&topic.name).await?;
    }
    Ok(spawned)
}

pub async fn run(args: ConsumeArgs, client: &mut Client) -> Result<(), CliError> {
    let spec = OffsetSpec::parse(&args.offset)?;
    let format = Format::parse(&args.format)?;
    let mut topic = client.topic(&args.topic).await?;
    let all: Vec<i32> = topic.partitions.iter().map(|p| p.partition).collect();
    let partitions = if args.partition.is_empty() {
        all.clone()
    } else {
        for p in &args.partition {
            if !all.contains(p) {
                return Err(CliError::usage(format!(
                    "topic {} has no partition {p} (it has {})",
                    topic.name,
                    all.len()
                )));
            }
        }
        args.partition.clone()
    };
    let starts = list_offsets(client, &topic, &partitions, OffsetQuery::Earliest).await?;
    let ends = list_offsets(client, &topic, &partitions, OffsetQuery::Latest).await?;
    let committed = match &args.group {
        Some(group) => committed_offsets(client, group, Some(&topic.name)).await?,
        None => BTreeMap::new(),
    };
    let mut cursors = Vec::new();
    for &p in &partitions {
        let (start, end) = offset_range(&starts, &ends, &topic.name, p)?;
        let next = match committed.get(&(topic.name.clone(), p)) {
            Some(&c) if c >= 0 => c,
            _ => match spec {
                OffsetSpec::Start => start,
                OffsetSpec::End => end,
                OffsetSpec::BeforeEnd(n) => end.saturating_sub(n).max(start),
                OffsetSpec::At(n) if n < start || n > end => {
                    return Err(CliError::usage(format!(
                        "--offset {n} is outside partition {}/{p}, which holds offsets {start} \
                         to {end} (give start, end, an offset in that range, or -N)",
                        topic.name
                    )))
                }
                OffsetSpec::At(n) => n,
            },
        };
        cursors.push(Cursor {
            partition: p,
            next,
            stop: (!args.follow).then_some(end),
        });
    }
    // The printing loop's own view: the next offset to print per partition (for commits).
    let mut positions: BTreeMap<i32, i64> = cursors.iter().map(|c| (c.partition, c.next)).collect();
    let stops: BTreeMap<i32, Option<i64>> = cursors.iter().map(|c| (c.partition, c.stop)).collect();

    let (tx, mut rx) = mpsc::channel(CHUNKS_IN_FLIGHT_MAX * topic.partitions.len().max(1));
    // Tasks whose `Ended` has not arrived yet.
    let mut live = place(client, &mut topic, cursors, &tx).await?;
    let mut moves = 0u32;

    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(1 << 20, stdout.lock());
    let limit = args.num.unwrap_or(u64::MAX);
    let mut printed = 0u64;
    let mut last_commit = Instant::now();
    let mut committed_positions = positions.clone();
    let mut failure = None;
    let interrupt = tokio::signal::ctrl_c();
    tokio::pin!(interrupt);
    while printed < limit && live > 0 {
        let fetched = tokio::select! {
            f = rx.recv() => f,
            _ = &mut interrupt => None,
        };
        let Some(fetched) = fetched else { break };
        let ended = matches!(fetched, Fetched::Ended(_));
        let chunk = match fetched {
            Fetched::Chunk(chunk) => chunk,
            Fetched::Ended(Exit::Done) => {
                live -= 1;
                continue;
            }
            Fetched::Ended(Exit::Closed) => {
                live -= 1;
                continue;
            }
            Fetched::Ended(Exit::Failed(e)) => {
                failure = Some(e);
                break;
            }
            Fetched::HandBack(moved, why) | Fetched::Ended(Exit::Moved(moved, why)) => {
                if ended {
                    live -= 1;
                }
                moves += 1;
                if moves > MOVES_MAX {
                    failure = Some(CliError::failed(format!(
                        "partitions kept moving ({why}); see `keel cluster describe`"
                    )));
                    break;
                }
                if let Err(e) = out.flush() {
                    return quiet_broken_pipe(e);
                }
                tokio::time::sleep(MOVE_BACKOFF).await;
                topic = client.topic(&topic.name).await?;
                live += place(client, &mut topic, moved, &tx).await?;
                continue;
            }
        };
        moves = 0;
        // A chunk's partition is one of the cursors', which all have a stop entry.
        let stop = stops[&chunk.partition];
        let mut rest = chunk.records;
        'batches: while let Some(batch) = Batch::parse_prefix(&rest).map_err(|e| {
            CliError::failed(format!(
                "partition {}/{}: a fetched batch is damaged: {e}",
                topic.name, chunk.partition
            ))
        })? {
            rest = rest.slice(batch.size()..);
            if batch.is_control() {
                positions.insert(chunk.partition, batch.next_offset().0);
                continue;
            }
            let records = batch.records().map_err(|e| {
                CliError::failed(format!(
                    "partition {}/{}: a fetched batch does not decode: {e}",
                    topic.name, chunk.partition
                ))
            })?;
            for record in &records {
                if record.offset.0 < chunk.from {
                    continue;
                }
                if stop.is_some_and(|s| record.offset.0 >= s) || printed >= limit {
                    break 'batches;
                }
                let written = format.write(&mut out, &topic.name, chunk.partition, record);
                if let Err(e) = written {
                    return quiet_broken_pipe(e);
                }
                printed += 1;
                positions.insert(chunk.partition, record.offset.0 + 1);
            }
        }
        if args.follow {
            if let Err(e) = out.flush() {
                return quiet_broken_pipe(e);
            }
        }
        if let Some(group) = &args.group {
            if last_commit.elapsed() >= COMMIT_INTERVAL && positions != committed_positions {
                commit_offsets(client, group, &topic.name, &positions).await?;
                committed_positions = positions.clone();
                last_commit = Instant::now();
            }
        }
    }
    if let Err(e) = out.flush() {
        return quiet_broken_pipe(e);
    }
    drop(out);
    if let Some(group) = &args.group {
        if positions != committed_positions {
            commit_offsets(client, group, &topic.name, &positions).await?;
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// A reader that went away (`| head`) ends the command quietly; other write errors fail it.
fn quiet_broken_pipe(e: io::Error) -> Result<(), CliError> {
    if e.kind() == io::ErrorKind::BrokenPipe {
        Ok(())
    } else {
        Err(CliError::failed(format!("cannot write to stdout: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_specs_parse_as_kcat_and_rpk_name_them() {
        assert_eq!(OffsetSpec::parse("start").unwrap(), OffsetSpec::Start);
        assert_eq!(OffsetSpec::parse("end").unwrap(), OffsetSpec::End);
        assert_eq!(OffsetSpec::parse("42").unwrap(), OffsetSpec::At(42));
        assert_eq!(OffsetSpec::parse("-3").unwrap(), OffsetSpec::BeforeEnd(3));
        for bad in ["", "x", "--3", "1.5", "-", "start1"] {
            let e = OffsetSpec::parse(bad).unwrap_err();
            assert_eq!(e.exit, 2, "{bad:?}");
            assert!(e.message.starts_with("bad --offset"), "{}", e.message);
        }
    }

    #[test]
    fn templates_print_every_field_and_escape() {
        let format = Format::parse("%t/%p@%o %k=%v [%h] %K %S %%\\t%T\\n").unwrap();
        let record = Record {
            offset: keel_core::types::Offset(7),
            timestamp: 1234,
            key: Some(Bytes::from_static(b"k1")),
            value: Some(Bytes::from_static(b"hello")),
            headers: vec![keel_core::batch::RecordHeader {
                key: Bytes::from_static(b"h"),
                value: Some(Bytes::from_static(b"x")),
            }],
        };
        let mut out = Vec::new();
        format.write(&mut out, "t", 2, &record).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "t/2@7 k1=hello [h=x] 2 5 %\t1234\n"
        );
        assert!(Format::parse("%q").is_err());
        assert!(Format::parse("\\x").is_err());
    }
}
