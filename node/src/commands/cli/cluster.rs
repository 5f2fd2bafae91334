//! `keel cluster describe`: Metadata (brokers, controller, every partition's replicas and ISR)
//! and, where the cluster serves it, DescribeQuorum (KIP-595) for the metadata quorum.

use clap::{Args, Subcommand};
use kafka_protocol::messages::describe_quorum_request::{PartitionData, TopicData};
use kafka_protocol::messages::{
    ApiKey, DescribeQuorumRequest, RequestKind, ResponseKind, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use serde::Serialize;

use super::client::{check, Client};
use super::{ids, print_json, print_table, table, CliError, ClusterArgs, Output};

/// The metadata log's topic, which DescribeQuorum names.
const METADATA_TOPIC: &str = "__cluster_metadata";

#[derive(Args, Debug)]
pub struct ClusterCommandArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(subcommand)]
    pub command: ClusterCommand,
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Brokers, the controller, the metadata quorum, and under-replicated and offline
    /// partitions.
    Describe,
}

#[derive(Serialize)]
struct BrokerRow {
    id: i32,
    host: String,
    port: i32,
    rack: Option<String>,
    controller: bool,
}

#[derive(Serialize)]
struct VoterRow {
    id: i32,
    log_end_offset: i64,
    /// Milliseconds since the leader last heard from it (-1: unknown).
    last_fetch_ms_ago: Option<i64>,
    role: &'static str,
}

#[derive(Serialize)]
struct Quorum {
    leader: i32,
    leader_epoch: i32,
    high_watermark: i64,
    replicas: Vec<VoterRow>,
}

#[derive(Serialize)]
struct PartitionProblem {
    topic: String,
    partition: i32,
    leader: i32,
    replicas: Vec<i32>,
    isr: Vec<i32>,
    problem: &'static str,
}

#[derive(Serialize)]
struct ClusterDescription {
    cluster_id: Option<String>,
    controller: i32,
    brokers: Vec<BrokerRow>,
    /// None: the cluster does not serve DescribeQuorum.
    quorum: Option<Quorum>,
    topics: usize,
    partitions: usize,
    under_replicated: Vec<PartitionProblem>,
    offline: Vec<PartitionProblem>,
}

pub async fn run(
    command: ClusterCommand,
    client: &mut Client,
    output: Output,
) -> Result<(), CliError> {
    match command {
        ClusterCommand::Describe => describe(client, output).await,
    }
}

async fn quorum(client: &mut Client) -> Result<Option<Quorum>, CliError> {
    if !client.any_supports(ApiKey::DescribeQuorum).await? {
        return Ok(None);
    }
    let mut request = DescribeQuorumRequest::default();
    request.topics = vec![TopicData::default()
        .with_topic_name(TopicName(StrBytes::from_static_str(METADATA_TOPIC)))
        .with_partitions(vec![PartitionData::default().with_partition_index(0)])];
    let ResponseKind::DescribeQuorum(response) = client
        .call_any(ApiKey::DescribeQuorum, RequestKind::DescribeQuorum(request))
        .await?
    else {
        return Err(CliError::failed("not a DescribeQuorum response"));
    };
    check(response.error_code, "describing", "the metadata quorum")?;
    let Some(p) = response.topics.first().and_then(|t| t.partitions.first()) else {
        return Err(CliError::failed("DescribeQuorum answered no partition"));
    };
    check(p.error_code, "describing", "the metadata quorum")?;
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let row = |r: &kafka_protocol::messages::describe_quorum_response::ReplicaState,
               role: &'static str| VoterRow {
        id: r.replica_id.0,
        log_end_offset: r.log_end_offset,
        last_fetch_ms_ago: (r.last_fetch_timestamp >= 0)
            .then(|| (now_ms - r.last_fetch_timestamp).max(0)),
        role,
    };
    let mut replicas: Vec<VoterRow> = p.current_voters.iter().map(|r| row(r, "voter")).collect();
    replicas.extend(p.observers.iter().map(|r| row(r, "observer")));
    Ok(Some(Quorum {
        leader: p.leader_id.0,
        leader_epoch: p.leader_epoch,
        high_watermark: p.high_watermark,
        replicas,
    }))
}

async fn describe(client: &mut Client, output: Output) -> Result<(), CliError> {
    let metadata = client.metadata(None).await?.clone();
    let quorum = quorum(client).await?;
    let mut under_replicated = Vec::new();
    let mut offline = Vec::new();
    let mut partitions = 0;
    for t in &metadata.topics {
        for p in &t.partitions {
            partitions += 1;
            let problem = |what| PartitionProblem {
                topic: t.name.clone(),
                partition: p.partition,
                leader: p.leader,
                replicas: p.replicas.clone(),
                isr: p.isr.clone(),
                problem: what,
            };
            if p.leader < 0 {
                offline.push(problem("offline"));
            } else if p.isr.len() < p.replicas.len() {
                under_replicated.push(problem("under-replicated"));
            }
        }
    }
    let mut brokers: Vec<BrokerRow> = metadata
        .brokers
        .iter()
        .map(|b| BrokerRow {
            id: b.id,
            host: b.host.clone(),
            port: b.port,
            rack: b.rack.clone(),
            controller: b.id == metadata.controller,
        })
        .collect();
    brokers.sort_by_key(|b| b.id);
    let description = ClusterDescription {
        cluster_id: metadata.cluster_id.clone(),
        controller: metadata.controller,
        brokers,
        quorum,
        topics: metadata.topics.len(),
        partitions,
        under_replicated,
        offline,
    };
    match output {
        Output::Json => print_json(&description),
        Output::Table => {
            let mut c = table(&[
                "CLUSTER-ID",
                "CONTROLLER",
                "BROKERS",
                "TOPICS",
                "PARTITIONS",
            ]);
            c.add_row(vec![
                description.cluster_id.clone().unwrap_or_else(|| "-".into()),
                description.controller.to_string(),
                description.brokers.len().to_string(),
                description.topics.to_string(),
                description.partitions.to_string(),
            ]);
            print_table(&c);
            println!();
            let mut b = table(&["ID", "HOST", "PORT", "RACK", "CONTROLLER"]);
            for broker in &description.brokers {
                b.add_row(vec![
                    broker.id.to_string(),
                    broker.host.clone(),
                    broker.port.to_string(),
                    broker.rack.clone().unwrap_or_else(|| "-".into()),
                    if broker.controller { "*" } else { "" }.to_string(),
                ]);
            }
            print_table(&b);
            println!();
            match &description.quorum {
                None => println!("metadata quorum: not served by this cluster (no DescribeQuorum)"),
                Some(q) => {
                    println!(
                        "metadata quorum: leader {} epoch {} high watermark {}",
                        q.leader, q.leader_epoch, q.high_watermark
                    );
                    let mut v = table(&["REPLICA", "ROLE", "LOG-END-OFFSET", "LAST-FETCH-MS-AGO"]);
                    for r in &q.replicas {
                        v.add_row(vec![
                            r.id.to_string(),
                            r.role.to_string(),
                            r.log_end_offset.to_string(),
                            r.last_fetch_ms_ago.map_or("-".into(), |ms| ms.to_string()),
                        ]);
                    }
                    print_table(&v);
                }
            }
            println!();
            let problems: Vec<&PartitionProblem> = description
                .offline
                .iter()
                .chain(description.under_replicated.iter())
                .collect();
            if problems.is_empty() {
                println!("under-replicated partitions: 0, offline partitions: 0");
            } else {
                println!(
                    "under-replicated partitions: {}, offline partitions: {}",
                    description.under_replicated.len(),
                    description.offline.len()
                );
                let mut t = table(&["TOPIC", "PARTITION", "LEADER", "REPLICAS", "ISR", "PROBLEM"]);
                for p in problems {
                    t.add_row(vec![
                        p.topic.clone(),
                        p.partition.to_string(),
                        p.leader.to_string(),
                        ids(&p.replicas),
                        ids(&p.isr),
                        p.problem.to_string(),
                    ]);
                }
                print_table(&t);
            }
            Ok(())
        }
    }
}
