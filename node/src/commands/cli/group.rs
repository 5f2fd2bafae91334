//! `keel group`: ListGroups, DescribeGroups, OffsetFetch with ListOffsets (lag), OffsetCommit
//! (reset-offsets, and `keel consume --group`) and DeleteGroups.
//!
//! Offsets are committed as an admin tool commits them (Kafka's `kafka-consumer-groups.sh
//! --reset-offsets`): generation -1 and no member id, which a coordinator accepts only while the
//! group has no members.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Buf;
use clap::{Args, Subcommand};
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::{
    ApiKey, ConsumerProtocolAssignment, DeleteGroupsRequest, DescribeGroupsRequest, GroupId,
    ListGroupsRequest, OffsetCommitRequest, OffsetFetchRequest, RequestKind, ResponseKind,
    TopicName,
};
use kafka_protocol::protocol::{Decodable, StrBytes};
use keel_core::error_code as code;
use serde::Serialize;

use super::client::{check, error_name, Client};
use super::consume::{list_offsets, offset_range, OffsetQuery};
use super::{print_json, print_table, table, CliError, ClusterArgs, Output};

#[derive(Args, Debug)]
pub struct GroupArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(subcommand)]
    pub command: GroupCommand,
}

#[derive(Subcommand, Debug)]
pub enum GroupCommand {
    /// List the consumer groups of every broker.
    List,
    /// Describe a group: state, members and their partitions, offsets and lag.
    Describe { group: String },
    /// Show a group's lag per partition: committed offset, log end offset, the difference.
    Lag { group: String },
    /// Set a group's committed offsets on a topic (the group must have no members).
    ResetOffsets {
        group: String,
        /// The topic whose offsets to set.
        #[arg(long, short = 't')]
        topic: String,
        /// earliest, latest, or an offset N.
        #[arg(long)]
        to: String,
        /// Only these partitions (comma-separated or repeated; default: all).
        #[arg(long, short = 'p', value_delimiter = ',')]
        partition: Vec<i32>,
    },
    /// Delete a group and its committed offsets (the group must have no members).
    Delete { group: String },
}

pub async fn run(
    command: GroupCommand,
    client: &mut Client,
    output: Output,
) -> Result<(), CliError> {
    match command {
        GroupCommand::List => list(client, output).await,
        GroupCommand::Describe { group } => describe(client, output, &group).await,
        GroupCommand::Lag { group } => {
            let rows = lag(client, &group).await?;
            match output {
                Output::Json => print_json(&rows),
                Output::Table => {
                    print_lag(&rows);
                    Ok(())
                }
            }
        }
        GroupCommand::ResetOffsets {
            group,
            topic,
            to,
            partition,
        } => reset_offsets(client, output, &group, &topic, &to, &partition).await,
        GroupCommand::Delete { group } => delete(client, output, &group).await,
    }
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

/// The group's committed offsets, per (topic, partition), of every topic or of `topic`.
pub async fn committed_offsets(
    client: &mut Client,
    group: &str,
    topic: Option<&str>,
) -> Result<BTreeMap<(String, i32), i64>, CliError> {
    let mut tries = 1;
    let response = loop {
        let addr = client.coordinator(group).await?;
        let mut request = OffsetFetchRequest::default();
        request.group_id = GroupId(str_bytes(group));
        request.topics = None;
        let ResponseKind::OffsetFetch(response) = client
            .call(
                &addr,
                ApiKey::OffsetFetch,
                RequestKind::OffsetFetch(request),
            )
            .await?
        else {
            return Err(CliError::failed("not an OffsetFetch response"));
        };
        if coordinator_moving(response.error_code) && tries < COORDINATOR_TRIES {
            tries += 1;
            tokio::time::sleep(COORDINATOR_RETRY_WAIT).await;
            continue;
        }
        break response;
    };
    check(response.error_code, "fetching the offsets of group", group)?;
    let mut offsets = BTreeMap::new();
    for t in &response.topics {
        let name = t.name.0.to_string();
        if topic.is_some_and(|want| want != name) {
            continue;
        }
        for p in &t.partitions {
            check(
                p.error_code,
                &format!("fetching the offsets of group {group} on"),
                &format!("{name}/{}", p.partition_index),
            )?;
            offsets.insert((name.clone(), p.partition_index), p.committed_offset);
        }
    }
    Ok(offsets)
}

/// Commits `positions` (partition -> next offset) of `topic` for `group`, as an admin.
pub async fn commit_offsets(
    client: &mut Client,
    group: &str,
    topic: &str,
    positions: &BTreeMap<i32, i64>,
) -> Result<(), CliError> {
    let mut tries = 1;
    let response = loop {
        let addr = client.coordinator(group).await?;
        let response = commit_offsets_at(client, &addr, group, topic, positions).await?;
        let moving = response
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .any(|p| coordinator_moving(p.error_code));
        if moving && tries < COORDINATOR_TRIES {
            tries += 1;
            tokio::time::sleep(COORDINATOR_RETRY_WAIT).await;
            continue;
        }
        break response;
    };
    for t in &response.topics {
        for p in &t.partitions {
            check(
                p.error_code,
                &format!("committing offsets of group {group} on"),
                &format!("{topic}/{}", p.partition_index),
            )?;
        }
    }
    Ok(())
}

/// How many times a group's offsets are asked of its coordinator again when the answer says
/// the coordinator is loading, moving or not yet there (a group used a moment after its
/// offsets partition was created), [`COORDINATOR_RETRY_WAIT`] apart, the coordinator found
/// anew each time.
const COORDINATOR_TRIES: usize = 20;
const COORDINATOR_RETRY_WAIT: Duration = Duration::from_millis(250);

/// Errors that say the group's coordinator is not (yet) the broker asked.
fn coordinator_moving(error: i16) -> bool {
    matches!(
        error,
        code::NOT_COORDINATOR
            | code::COORDINATOR_LOAD_IN_PROGRESS
            | code::COORDINATOR_NOT_AVAILABLE
    )
}

/// One OffsetCommit of `positions` to the coordinator at `addr`.
async fn commit_offsets_at(
    client: &mut Client,
    addr: &str,
    group: &str,
    topic: &str,
    positions: &BTreeMap<i32, i64>,
) -> Result<kafka_protocol::messages::OffsetCommitResponse, CliError> {
    let mut request = OffsetCommitRequest::default();
    request.group_id = GroupId(str_bytes(group));
    request.generation_id_or_member_epoch = -1;
    request.member_id = StrBytes::default();
    request.retention_time_ms = -1;
    request.topics = vec![OffsetCommitRequestTopic::default()
        .with_name(TopicName(str_bytes(topic)))
        .with_partitions(
            positions
                .iter()
                .map(|(p, o)| {
                    OffsetCommitRequestPartition::default()
                        .with_partition_index(*p)
                        .with_committed_offset(*o)
                        .with_committed_leader_epoch(-1)
                })
                .collect(),
        )];
    let ResponseKind::OffsetCommit(response) = client
        .call(
            addr,
            ApiKey::OffsetCommit,
            RequestKind::OffsetCommit(request),
        )
        .await?
    else {
        return Err(CliError::failed("not an OffsetCommit response"));
    };
    Ok(response)
}

#[derive(Serialize, PartialEq, Eq, PartialOrd, Ord)]
struct GroupRow {
    group: String,
    state: String,
    protocol_type: String,
}

async fn list(client: &mut Client, output: Output) -> Result<(), CliError> {
    let brokers: Vec<String> = client
        .metadata(Some(&[]))
        .await?
        .brokers
        .iter()
        .map(|b| b.address())
        .collect();
    let mut rows = BTreeSet::new();
    for addr in brokers {
        let ResponseKind::ListGroups(response) = client
            .call(
                &addr,
                ApiKey::ListGroups,
                RequestKind::ListGroups(ListGroupsRequest::default()),
            )
            .await?
        else {
            return Err(CliError::failed("not a ListGroups response"));
        };
        check(response.error_code, "listing the groups of broker", &addr)?;
        for g in response.groups {
            rows.insert(GroupRow {
                group: g.group_id.0.to_string(),
                state: if g.group_state.is_empty() {
                    "-".into()
                } else {
                    g.group_state.to_string()
                },
                protocol_type: g.protocol_type.to_string(),
            });
        }
    }
    let rows: Vec<GroupRow> = rows.into_iter().collect();
    match output {
        Output::Json => print_json(&rows),
        Output::Table => {
            let mut t = table(&["GROUP", "STATE", "PROTOCOL-TYPE"]);
            for r in &rows {
                t.add_row(vec![
                    r.group.clone(),
                    r.state.clone(),
                    r.protocol_type.clone(),
                ]);
            }
            print_table(&t);
            Ok(())
        }
    }
}

#[derive(Serialize)]
struct LagRow {
    topic: String,
    partition: i32,
    /// None: the group committed nothing here.
    committed_offset: Option<i64>,
    log_end_offset: i64,
    lag: Option<i64>,
}

async fn lag(client: &mut Client, group: &str) -> Result<Vec<LagRow>, CliError> {
    let committed = committed_offsets(client, group, None).await?;
    let mut by_topic: BTreeMap<String, Vec<(i32, i64)>> = BTreeMap::new();
    for ((topic, partition), offset) in committed {
        by_topic.entry(topic).or_default().push((partition, offset));
    }
    let mut rows = Vec::new();
    for (topic, partitions) in by_topic {
        let info = client.topic(&topic).await?;
        let ids: Vec<i32> = partitions.iter().map(|(p, _)| *p).collect();
        let ends = list_offsets(client, &info, &ids, OffsetQuery::Latest).await?;
        for (partition, offset) in partitions {
            let end = ends.get(&partition).copied().unwrap_or(-1);
            let committed = (offset >= 0).then_some(offset);
            rows.push(LagRow {
                topic: topic.clone(),
                partition,
                committed_offset: committed,
                log_end_offset: end,
                lag: committed.map(|c| (end - c).max(0)),
            });
        }
    }
    Ok(rows)
}

fn print_lag(rows: &[LagRow]) {
    let mut t = table(&[
        "TOPIC",
        "PARTITION",
        "CURRENT-OFFSET",
        "LOG-END-OFFSET",
        "LAG",
    ]);
    let show = |o: Option<i64>| o.map_or("-".to_string(), |o| o.to_string());
    for r in rows {
        t.add_row(vec![
            r.topic.clone(),
            r.partition.to_string(),
            show(r.committed_offset),
            r.log_end_offset.to_string(),
            show(r.lag),
        ]);
    }
    print_table(&t);
}

#[derive(Serialize)]
struct MemberRow {
    member_id: String,
    client_id: String,
    host: String,
    /// `topic/partition` assigned to it (decoded for the consumer protocol).
    partitions: Vec<String>,
}

#[derive(Serialize)]
struct GroupDescription {
    group: String,
    coordinator: String,
    state: String,
    protocol_type: String,
    protocol: String,
    members: Vec<MemberRow>,
    offsets: Vec<LagRow>,
}

/// The partitions of a consumer-protocol assignment (a version, then the body).
fn assigned_partitions(assignment: &bytes::Bytes) -> Vec<String> {
    let mut buf = assignment.clone();
    if buf.remaining() < 2 {
        return Vec::new();
    }
    let version = buf.get_i16();
    match ConsumerProtocolAssignment::decode(&mut buf, version.clamp(0, 3)) {
        Ok(a) => a
            .assigned_partitions
            .iter()
            .flat_map(|tp| {
                tp.partitions
                    .iter()
                    .map(move |p| format!("{}/{p}", tp.topic.0))
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

async fn describe(client: &mut Client, output: Output, group: &str) -> Result<(), CliError> {
    let addr = client.coordinator(group).await?;
    let mut request = DescribeGroupsRequest::default();
    request.groups = vec![GroupId(str_bytes(group))];
    let ResponseKind::DescribeGroups(response) = client
        .call(
            &addr,
            ApiKey::DescribeGroups,
            RequestKind::DescribeGroups(request),
        )
        .await?
    else {
        return Err(CliError::failed("not a DescribeGroups response"));
    };
    let described = response
        .groups
        .into_iter()
        .next()
        .ok_or_else(|| CliError::failed("DescribeGroups answered no group"))?;
    check(described.error_code, "describing group", group)?;
    // Kafka answers an unknown group as Dead with no members, not as an error.
    if described.group_state.as_str() == "Dead" {
        return Err(CliError::failed(format!(
            "group {group}: GROUP_ID_NOT_FOUND (no such group: `keel group list` shows the groups)"
        )));
    }
    let description = GroupDescription {
        group: group.to_string(),
        coordinator: addr,
        state: described.group_state.to_string(),
        protocol_type: described.protocol_type.to_string(),
        protocol: described.protocol_data.to_string(),
        members: described
            .members
            .iter()
            .map(|m| MemberRow {
                member_id: m.member_id.to_string(),
                client_id: m.client_id.to_string(),
                host: m.client_host.to_string(),
                partitions: if described.protocol_type.as_str() == "consumer" {
                    assigned_partitions(&m.member_assignment)
                } else {
                    Vec::new()
                },
            })
            .collect(),
        offsets: lag(client, group).await?,
    };
    match output {
        Output::Json => print_json(&description),
        Output::Table => {
            let mut t = table(&[
                "GROUP",
                "COORDINATOR",
                "STATE",
                "PROTOCOL-TYPE",
                "PROTOCOL",
                "MEMBERS",
            ]);
            t.add_row(vec![
                description.group.clone(),
                description.coordinator.clone(),
                description.state.clone(),
                description.protocol_type.clone(),
                description.protocol.clone(),
                description.members.len().to_string(),
            ]);
            print_table(&t);
            if !description.members.is_empty() {
                println!();
                let mut m = table(&["MEMBER-ID", "CLIENT-ID", "HOST", "PARTITIONS"]);
                for member in &description.members {
                    m.add_row(vec![
                        member.member_id.clone(),
                        member.client_id.clone(),
                        member.host.clone(),
                        member.partitions.join(","),
                    ]);
                }
                print_table(&m);
            }
            println!();
            print_lag(&description.offsets);
            Ok(())
        }
    }
}

#[derive(Serialize)]
struct ResetRow {
    topic: String,
    partition: i32,
    new_offset: i64,
}

async fn reset_offsets(
    client: &mut Client,
    output: Output,
    group: &str,
    topic_name: &str,
    to: &str,
    partitions: &[i32],
) -> Result<(), CliError> {
    let target = match to {
        "earliest" | "start" => None,
        "latest" | "end" => Some(None),
        n => match n.parse::<i64>() {
            Ok(n) if n >= 0 => Some(Some(n)),
            _ => {
                return Err(CliError::usage(format!(
                    "bad --to {to:?}: give earliest, latest or an offset N"
                )))
            }
        },
    };
    let topic = client.topic(topic_name).await?;
    let all: Vec<i32> = topic.partitions.iter().map(|p| p.partition).collect();
    let chosen: Vec<i32> = if partitions.is_empty() {
        all.clone()
    } else {
        if let Some(p) = partitions.iter().find(|p| !all.contains(p)) {
            return Err(CliError::usage(format!(
                "topic {topic_name} has no partition {p} (it has {})",
                all.len()
            )));
        }
        partitions.to_vec()
    };
    let starts = list_offsets(client, &topic, &chosen, OffsetQuery::Earliest).await?;
    let ends = list_offsets(client, &topic, &chosen, OffsetQuery::Latest).await?;
    let mut positions = BTreeMap::new();
    for p in &chosen {
        let (start, end) = offset_range(&starts, &ends, topic_name, *p)?;
        let offset = match target {
            None => start,
            Some(None) => end,
            Some(Some(n)) if n < start || n > end => {
                return Err(CliError::usage(format!(
                    "--to {n} is outside partition {topic_name}/{p}, which holds offsets {start} \
                     to {end}"
                )))
            }
            Some(Some(n)) => n,
        };
        positions.insert(*p, offset);
    }
    commit_offsets(client, group, topic_name, &positions).await?;
    let rows: Vec<ResetRow> = positions
        .iter()
        .map(|(p, o)| ResetRow {
            topic: topic_name.to_string(),
            partition: *p,
            new_offset: *o,
        })
        .collect();
    match output {
        Output::Json => print_json(&rows),
        Output::Table => {
            let mut t = table(&["TOPIC", "PARTITION", "NEW-OFFSET"]);
            for r in &rows {
                t.add_row(vec![
                    r.topic.clone(),
                    r.partition.to_string(),
                    r.new_offset.to_string(),
                ]);
            }
            print_table(&t);
            Ok(())
        }
    }
}

#[derive(Serialize)]
struct DeleteRow<'a> {
    group: &'a str,
    status: &'a str,
}

async fn delete(client: &mut Client, output: Output, group: &str) -> Result<(), CliError> {
    let addr = client.coordinator(group).await?;
    let mut request = DeleteGroupsRequest::default();
    request.groups_names = vec![GroupId(str_bytes(group))];
    let ResponseKind::DeleteGroups(response) = client
        .call(
            &addr,
            ApiKey::DeleteGroups,
            RequestKind::DeleteGroups(request),
        )
        .await?
    else {
        return Err(CliError::failed("not a DeleteGroups response"));
    };
    let result = response
        .results
        .first()
        .ok_or_else(|| CliError::failed("DeleteGroups answered no group"))?;
    if result.error_code != 0 {
        return Err(CliError::failed(format!(
            "deleting group {group}: {}{}",
            error_name(result.error_code),
            match result.error_code {
                code::GROUP_ID_NOT_FOUND => " (no such group: `keel group list` shows the groups)",
                code::NON_EMPTY_GROUP => " (the group has members: stop its consumers first)",
                _ => "",
            }
        )));
    }
    let row = DeleteRow {
        group,
        status: "deleted",
    };
    match output {
        Output::Json => print_json(&row),
        Output::Table => {
            let mut t = table(&["GROUP", "STATUS"]);
            t.add_row(vec![group, "deleted"]);
            print_table(&t);
            Ok(())
        }
    }
}
