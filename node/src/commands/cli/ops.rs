//! The cluster operation commands: `keel partitions reassign` and `keel partitions
//! reassignments` (AlterPartitionReassignments and ListPartitionReassignments, KIP-455),
//! `keel broker decommission` (reassignments off the broker, then UnregisterBroker, KIP-631)
//! and `keel leaders elect` (ElectLeaders, KIP-460). Plans are computed here, on the
//! client's Metadata, by `keel_core::controller::plan`; the cluster checks them again.
//!
//! What always holds: a plan file that is not Kafka's reassignment JSON is refused (exit 2)
//! before anything is sent; a partition the cluster refuses is printed with Kafka's error
//! name and message, and makes the command exit 1; nothing waits longer than `--wait`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use kafka_protocol::messages::alter_partition_reassignments_request::{
    ReassignablePartition, ReassignableTopic,
};
use kafka_protocol::messages::elect_leaders_request::TopicPartitions;
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, ApiKey, BrokerId, ElectLeadersRequest,
    ListPartitionReassignmentsRequest, RequestKind, ResponseKind, TopicName,
    UnregisterBrokerRequest,
};
use kafka_protocol::protocol::StrBytes;
use keel_core::controller::plan::{self, PlanBroker, PlanPartition};
use keel_core::error_code as code;
use serde::{Deserialize, Serialize};

use super::client::{check, error_name, Client, Metadata};
use super::{ids, print_json, print_table, table, CliError, ClusterArgs, Output};

/// How often a waiting command looks at the cluster again.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Args, Debug)]
pub struct PartitionsArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(subcommand)]
    pub command: PartitionsCommand,
}

#[derive(Subcommand, Debug)]
pub enum PartitionsCommand {
    /// Move partitions' replicas: run a plan file, or generate a balanced plan.
    Reassign(ReassignArgs),
    /// The reassignments in progress: target replicas, those being added (and whether they
    /// are in sync yet) and removed.
    Reassignments {
        /// Only this topic's partitions (repeatable).
        #[arg(long, short = 't')]
        topic: Vec<String>,
    },
}

#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("source").required(true).args(["plan", "generate", "clear_throttle"]))]
pub struct ReassignArgs {
    /// Run this plan: Kafka's reassignment JSON, {"version":1,"partitions":[{"topic":T,
    /// "partition":P,"replicas":[..]}]} (kafka-reassign-partitions.sh's format).
    #[arg(long, value_name = "FILE")]
    pub plan: Option<PathBuf>,
    /// Compute a balanced plan over --broker-ids and print it (run it with --execute).
    #[arg(long, requires = "broker_ids")]
    pub generate: bool,
    /// The brokers a generated plan places replicas on, e.g. 1,2,3,4.
    #[arg(long, value_delimiter = ',', value_name = "ID,...")]
    pub broker_ids: Vec<i32>,
    /// Only these topics' partitions in a generated plan (repeatable; default: every topic
    /// that is not internal).
    #[arg(long, short = 't')]
    pub topic: Vec<String>,
    /// Run the generated plan, not only print it.
    #[arg(long, requires = "generate")]
    pub execute: bool,
    /// After sending, wait up to this many seconds for the reassignments to complete (0: do
    /// not wait).
    #[arg(long, default_value_t = 0, value_name = "SECONDS")]
    pub wait: u64,
    /// Throttle the copying to the new replicas to this many bytes per second (the cluster
    /// default leader.replication.throttled.rate and follower.replication.throttled.rate);
    /// with --wait, removed once every reassignment completed, else remove it with
    /// --clear-throttle.
    #[arg(long, value_name = "BYTES_PER_SEC", value_parser = clap::value_parser!(u64).range(1..))]
    pub throttle: Option<u64>,
    /// Remove the replication throttle (the cluster default rates) and do nothing else.
    #[arg(long)]
    pub clear_throttle: bool,
}

#[derive(Args, Debug)]
pub struct BrokerArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(subcommand)]
    pub command: BrokerCommand,
}

#[derive(Subcommand, Debug)]
pub enum BrokerCommand {
    /// Move every replica off a broker by reassignment, wait until they moved, then
    /// unregister it (stop its process afterwards).
    Decommission {
        /// The broker id.
        id: i32,
        /// How long to wait for the replicas to move, in seconds.
        #[arg(long, default_value_t = 600, value_name = "SECONDS")]
        wait: u64,
    },
}

#[derive(Args, Debug)]
pub struct LeadersArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(subcommand)]
    pub command: LeadersCommand,
}

#[derive(Subcommand, Debug)]
pub enum LeadersCommand {
    /// Elect leaders: the preferred replica (default), or for leaderless partitions any
    /// live replica (--unclean, which can lose acknowledged writes).
    Elect {
        /// Elect each partition's preferred (first) replica where it is in sync.
        #[arg(long, conflicts_with = "unclean")]
        preferred: bool,
        /// Elect a leader where there is none, from outside the ISR if need be: every
        /// write only the old ISR held is lost.
        #[arg(long)]
        unclean: bool,
        /// Only this topic's partitions (repeatable; default: every partition).
        #[arg(long, short = 't')]
        topic: Vec<String>,
        /// Only these partitions of the topics (comma-separated; needs --topic).
        #[arg(long, short = 'p', value_delimiter = ',', requires = "topic")]
        partition: Vec<i32>,
    },
}

/// Kafka's reassignment plan file (`kafka-reassign-partitions.sh`).
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PlanFile {
    pub version: i32,
    pub partitions: Vec<PlanEntry>,
}

/// One partition of a plan file. Kafka's `log_dirs` is accepted and must be "any".
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PlanEntry {
    pub topic: String,
    pub partition: i32,
    pub replicas: Vec<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_dirs: Option<Vec<String>>,
}

impl PlanFile {
    /// Parses and checks a plan file's text: version 1, at least one partition, no
    /// partition twice, `log_dirs` (if given) "any" for each replica.
    pub fn parse(text: &str) -> Result<PlanFile, String> {
        let plan: PlanFile = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if plan.version != 1 {
            return Err(format!("version {}: only version 1 is known", plan.version));
        }
        if plan.partitions.is_empty() {
            return Err("no partition in the plan".into());
        }
        let mut seen = BTreeSet::new();
        for p in &plan.partitions {
            if !seen.insert((p.topic.as_str(), p.partition)) {
                return Err(format!("{}-{} is in the plan twice", p.topic, p.partition));
            }
            if let Some(dirs) = &p.log_dirs {
                if dirs.len() != p.replicas.len() || dirs.iter().any(|d| d != "any") {
                    return Err(format!(
                        "{}-{}: log_dirs other than \"any\" are not supported",
                        p.topic, p.partition
                    ));
                }
            }
        }
        Ok(plan)
    }
}

pub async fn partitions(
    command: PartitionsCommand,
    client: &mut Client,
    output: Output,
) -> Result<(), CliError> {
    match command {
        PartitionsCommand::Reassign(args) => reassign(args, client).await,
        PartitionsCommand::Reassignments { topic } => {
            let rows = reassignments(client, &topic).await?;
            print_reassignments(&rows, output)
        }
    }
}

pub async fn broker(command: BrokerCommand, client: &mut Client) -> Result<(), CliError> {
    match command {
        BrokerCommand::Decommission { id, wait } => decommission(client, id, wait).await,
    }
}

pub async fn leaders(
    command: LeadersCommand,
    client: &mut Client,
    output: Output,
) -> Result<(), CliError> {
    match command {
        LeadersCommand::Elect {
            preferred: _,
            unclean,
            topic,
            partition,
        } => elect(client, unclean, &topic, &partition, output).await,
    }
}

/// The partitions of `topics` (every topic that is not internal when empty), as plan input.
fn plan_partitions(metadata: &Metadata, topics: &[String]) -> Result<Vec<PlanPartition>, CliError> {
    for t in topics {
        if !metadata.topics.iter().any(|m| &m.name == t) {
            return Err(CliError::failed(format!(
                "topic {t}: UNKNOWN_TOPIC_OR_PARTITION (no such topic: `keel topic list` shows \
                 the topics)"
            )));
        }
    }
    let mut out = Vec::new();
    let mut chosen: Vec<_> = metadata
        .topics
        .iter()
        .filter(|t| {
            if topics.is_empty() {
                !t.internal
            } else {
                topics.contains(&t.name)
            }
        })
        .collect();
    chosen.sort_by(|a, b| a.name.cmp(&b.name));
    for t in chosen {
        for p in &t.partitions {
            out.push(PlanPartition {
                topic: t.name.clone(),
                partition: p.partition,
                replicas: p
                    .replicas
                    .iter()
                    .map(|r| keel_core::controller::BrokerId(*r))
                    .collect(),
            });
        }
    }
    Ok(out)
}

fn plan_brokers(metadata: &Metadata, wanted: &[i32]) -> Result<Vec<PlanBroker>, CliError> {
    wanted
        .iter()
        .map(|id| match metadata.broker(*id) {
            Some(b) => Ok(PlanBroker {
                id: keel_core::controller::BrokerId(b.id),
                rack: b.rack.clone(),
            }),
            None => Err(CliError::failed(format!(
                "broker {id} is not among the cluster's live brokers ({}); `keel cluster \
                 describe` lists them",
                ids(&metadata.brokers.iter().map(|b| b.id).collect::<Vec<_>>())
            ))),
        })
        .collect()
}

fn to_file(
    partitions: &[PlanPartition],
    targets: &[Vec<keel_core::controller::BrokerId>],
) -> PlanFile {
    PlanFile {
        version: 1,
        partitions: partitions
            .iter()
            .zip(targets)
            .map(|(p, t)| PlanEntry {
                topic: p.topic.clone(),
                partition: p.partition,
                replicas: t.iter().map(|b| b.0).collect(),
                log_dirs: None,
            })
            .collect(),
    }
}

/// Sets (or with `None` removes) the replication throttle: the cluster default (BROKER
/// resource `""`) `leader.replication.throttled.rate` and `follower.replication.throttled.rate`.
async fn set_throttle(client: &mut Client, rate: Option<u64>) -> Result<(), CliError> {
    use kafka_protocol::messages::incremental_alter_configs_request::{
        AlterConfigsResource, AlterableConfig,
    };
    use kafka_protocol::messages::IncrementalAlterConfigsRequest;
    use keel_core::controller::broker_config::KEYS;
    let configs = KEYS
        .iter()
        .map(|k| {
            AlterableConfig::default()
                .with_name(StrBytes::from_static_str(k))
                .with_config_operation(if rate.is_some() { 0 } else { 1 })
                .with_value(rate.map(|r| StrBytes::from_string(r.to_string())))
        })
        .collect();
    let request = IncrementalAlterConfigsRequest::default().with_resources(vec![
        AlterConfigsResource::default()
            .with_resource_type(4)
            .with_resource_name(StrBytes::from_static_str(""))
            .with_configs(configs),
    ]);
    let addr = client.admin_broker().await?;
    let ResponseKind::IncrementalAlterConfigs(response) = client
        .call(
            &addr,
            ApiKey::IncrementalAlterConfigs,
            RequestKind::IncrementalAlterConfigs(request),
        )
        .await?
    else {
        return Err(CliError::failed("not an IncrementalAlterConfigs response"));
    };
    match response.responses.first() {
        Some(r) if r.error_code == code::NONE => Ok(()),
        Some(r) => Err(CliError::failed(format!(
            "setting the replication throttle: {}{}",
            error_name(r.error_code),
            message(&r.error_message)
        ))),
        None => Err(CliError::failed(
            "IncrementalAlterConfigs answered no resource",
        )),
    }
}

async fn reassign(args: ReassignArgs, client: &mut Client) -> Result<(), CliError> {
    if args.clear_throttle {
        set_throttle(client, None).await?;
        eprintln!("keel partitions: replication throttle removed");
        return Ok(());
    }
    let plan = if let Some(path) = &args.plan {
        let text = std::fs::read_to_string(path)
            .map_err(|e| CliError::usage(format!("cannot read --plan {}: {e}", path.display())))?;
        PlanFile::parse(&text)
            .map_err(|e| CliError::usage(format!("--plan {}: {e}", path.display())))?
    } else {
        let metadata = client.metadata(None).await?.clone();
        let brokers = plan_brokers(&metadata, &args.broker_ids)?;
        let partitions = plan_partitions(&metadata, &args.topic)?;
        let targets = plan::balanced(&brokers, &partitions)
            .map_err(|e| CliError::failed(format!("no plan: {e}")))?;
        let current = PlanFile {
            version: 1,
            partitions: partitions
                .iter()
                .map(|p| PlanEntry {
                    topic: p.topic.clone(),
                    partition: p.partition,
                    replicas: p.replicas.iter().map(|b| b.0).collect(),
                    log_dirs: None,
                })
                .collect(),
        };
        let proposed = to_file(&partitions, &targets);
        if !args.execute {
            eprintln!("Current partition replica assignment (keep it to roll back):");
            eprintln!(
                "{}",
                serde_json::to_string(&current).expect("a plan serialises")
            );
            eprintln!("Proposed partition reassignment (run it with --execute, or save it and use --plan):");
            println!(
                "{}",
                serde_json::to_string_pretty(&proposed).expect("a plan serialises")
            );
            return Ok(());
        }
        eprintln!(
            "Current partition replica assignment (keep it to roll back): {}",
            serde_json::to_string(&current).expect("a plan serialises")
        );
        proposed
    };
    let moves: Vec<(String, i32, Option<Vec<i32>>)> = plan
        .partitions
        .iter()
        .map(|p| (p.topic.clone(), p.partition, Some(p.replicas.clone())))
        .collect();
    if let Some(rate) = args.throttle {
        // Before the reassignments start, so that none of their copying goes unthrottled.
        set_throttle(client, Some(rate)).await?;
        eprintln!("keel partitions: replication throttle set to {rate} bytes/s");
    }
    let refused = alter_reassignments(client, &moves).await?;
    let started = moves.len() - refused;
    eprintln!("keel partitions: reassignment of {started} partition(s) started");
    if args.wait > 0 && started > 0 {
        let wanted: BTreeSet<String> = plan.partitions.iter().map(|p| p.topic.clone()).collect();
        let wanted: Vec<String> = wanted.into_iter().collect();
        let waited = wait_done(client, &wanted, Duration::from_secs(args.wait), |_| true).await;
        if let Err(e) = waited {
            if args.throttle.is_some() {
                eprintln!(
                    "keel partitions: the replication throttle stays while reassignments \
                     run; remove it with `keel partitions reassign --clear-throttle`"
                );
            }
            return Err(e);
        }
        eprintln!("keel partitions: every reassignment completed");
    }
    if args.throttle.is_some() {
        if args.wait > 0 || started == 0 {
            set_throttle(client, None).await?;
            eprintln!("keel partitions: replication throttle removed");
        } else {
            eprintln!(
                "keel partitions: once the reassignments completed (`keel partitions \
                 reassignments`), remove the replication throttle with `keel partitions \
                 reassign --clear-throttle`"
            );
        }
    }
    if refused > 0 {
        return Err(CliError::failed(format!(
            "{refused} partition(s) refused (see above)"
        )));
    }
    Ok(())
}

/// Sends one AlterPartitionReassignments for `moves` (None: cancel); prints each refused
/// partition to stderr and returns how many were.
async fn alter_reassignments(
    client: &mut Client,
    moves: &[(String, i32, Option<Vec<i32>>)],
) -> Result<usize, CliError> {
    let mut by_topic: BTreeMap<&str, Vec<ReassignablePartition>> = BTreeMap::new();
    for (topic, partition, replicas) in moves {
        by_topic.entry(topic.as_str()).or_default().push(
            ReassignablePartition::default()
                .with_partition_index(*partition)
                .with_replicas(
                    replicas
                        .as_ref()
                        .map(|r| r.iter().map(|b| BrokerId(*b)).collect()),
                ),
        );
    }
    let request = AlterPartitionReassignmentsRequest::default()
        .with_timeout_ms(client.timeout.as_millis().min(i32::MAX as u128) as i32)
        .with_topics(
            by_topic
                .into_iter()
                .map(|(t, ps)| {
                    ReassignableTopic::default()
                        .with_name(TopicName(StrBytes::from_string(t.to_string())))
                        .with_partitions(ps)
                })
                .collect(),
        );
    let addr = client.admin_broker().await?;
    let ResponseKind::AlterPartitionReassignments(response) = client
        .call(
            &addr,
            ApiKey::AlterPartitionReassignments,
            RequestKind::AlterPartitionReassignments(request),
        )
        .await?
    else {
        return Err(CliError::failed(
            "not an AlterPartitionReassignments response",
        ));
    };
    if response.error_code != code::NONE {
        return Err(CliError::failed(format!(
            "reassigning: {}{}",
            error_name(response.error_code),
            message(&response.error_message)
        )));
    }
    let mut refused = 0;
    for t in &response.responses {
        for p in &t.partitions {
            if p.error_code != code::NONE {
                refused += 1;
                eprintln!(
                    "keel partitions: {}-{}: {}{}",
                    t.name.0,
                    p.partition_index,
                    error_name(p.error_code),
                    message(&p.error_message)
                );
            }
        }
    }
    Ok(refused)
}

fn message(m: &Option<StrBytes>) -> String {
    match m {
        Some(m) if !m.is_empty() => format!(" ({m})"),
        _ => String::new(),
    }
}

/// One reassignment in progress, with its progress from the metadata's ISR.
#[derive(Debug, Serialize)]
pub struct ReassignmentRow {
    pub topic: String,
    pub partition: i32,
    pub replicas: Vec<i32>,
    pub adding: Vec<i32>,
    pub removing: Vec<i32>,
    /// The adding replicas already in the ISR.
    pub adding_in_sync: Vec<i32>,
}

async fn reassignments(
    client: &mut Client,
    topics: &[String],
) -> Result<Vec<ReassignmentRow>, CliError> {
    let metadata = client.metadata(None).await?.clone();
    let mut request = ListPartitionReassignmentsRequest::default()
        .with_timeout_ms(client.timeout.as_millis().min(i32::MAX as u128) as i32);
    if !topics.is_empty() {
        let mut asked = Vec::new();
        for t in topics {
            let Some(info) = metadata.topics.iter().find(|m| &m.name == t) else {
                return Err(CliError::failed(format!(
                    "topic {t}: UNKNOWN_TOPIC_OR_PARTITION (no such topic: `keel topic list` \
                     shows the topics)"
                )));
            };
            asked.push(
                kafka_protocol::messages::list_partition_reassignments_request::ListPartitionReassignmentsTopics::default()
                    .with_name(TopicName(StrBytes::from_string(t.clone())))
                    .with_partition_indexes(info.partitions.iter().map(|p| p.partition).collect()),
            );
        }
        request = request.with_topics(Some(asked));
    }
    let addr = client.admin_broker().await?;
    let ResponseKind::ListPartitionReassignments(response) = client
        .call(
            &addr,
            ApiKey::ListPartitionReassignments,
            RequestKind::ListPartitionReassignments(request),
        )
        .await?
    else {
        return Err(CliError::failed(
            "not a ListPartitionReassignments response",
        ));
    };
    check(response.error_code, "listing", "the reassignments")?;
    let mut rows = Vec::new();
    for t in &response.topics {
        let info = metadata.topics.iter().find(|m| m.name == t.name.0.as_str());
        for p in &t.partitions {
            let isr: Vec<i32> = info
                .and_then(|i| {
                    i.partitions
                        .iter()
                        .find(|x| x.partition == p.partition_index)
                })
                .map(|x| x.isr.clone())
                .unwrap_or_default();
            let adding: Vec<i32> = p.adding_replicas.iter().map(|b| b.0).collect();
            rows.push(ReassignmentRow {
                topic: t.name.0.to_string(),
                partition: p.partition_index,
                replicas: p.replicas.iter().map(|b| b.0).collect(),
                adding_in_sync: adding.iter().copied().filter(|a| isr.contains(a)).collect(),
                adding,
                removing: p.removing_replicas.iter().map(|b| b.0).collect(),
            });
        }
    }
    rows.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    Ok(rows)
}

fn print_reassignments(rows: &[ReassignmentRow], output: Output) -> Result<(), CliError> {
    match output {
        Output::Json => print_json(&rows),
        Output::Table => {
            if rows.is_empty() {
                eprintln!("keel partitions: no reassignment in progress");
                return Ok(());
            }
            let mut t = table(&[
                "TOPIC",
                "PARTITION",
                "REPLICAS",
                "ADDING",
                "IN-SYNC",
                "REMOVING",
            ]);
            for r in rows {
                t.add_row(vec![
                    r.topic.clone(),
                    r.partition.to_string(),
                    ids(&r.replicas),
                    ids(&r.adding),
                    format!("{}/{}", r.adding_in_sync.len(), r.adding.len()),
                    ids(&r.removing),
                ]);
            }
            print_table(&t);
            Ok(())
        }
    }
}

/// Waits until no reassignment of `topics` is in progress and `settled` holds for the
/// metadata, up to `wait`, reporting progress to stderr.
async fn wait_done(
    client: &mut Client,
    topics: &[String],
    wait: Duration,
    settled: impl Fn(&Metadata) -> bool,
) -> Result<(), CliError> {
    let start = Instant::now();
    let mut last = usize::MAX;
    loop {
        let rows = reassignments(client, topics).await?;
        let metadata = client.last_metadata().clone();
        if rows.is_empty() && settled(&metadata) {
            return Ok(());
        }
        if rows.len() != last {
            eprintln!(
                "keel: {} reassignment(s) in progress ({:.0} s)",
                rows.len(),
                start.elapsed().as_secs_f64()
            );
            last = rows.len();
        }
        if start.elapsed() >= wait {
            return Err(CliError::failed(format!(
                "{} reassignment(s) still in progress after {} s (`keel partitions \
                 reassignments` shows them; they go on in the cluster)",
                rows.len(),
                wait.as_secs()
            )));
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

async fn decommission(client: &mut Client, id: i32, wait: u64) -> Result<(), CliError> {
    let metadata = client.metadata(None).await?.clone();
    let leaving = keel_core::controller::BrokerId(id);
    let remaining: Vec<i32> = metadata
        .brokers
        .iter()
        .map(|b| b.id)
        .filter(|b| *b != id)
        .collect();
    let brokers = plan_brokers(&metadata, &remaining)?;
    let mut all: Vec<PlanPartition> = Vec::new();
    let mut topics: Vec<String> = Vec::new();
    for t in &metadata.topics {
        for p in &t.partitions {
            if p.replicas.contains(&id) {
                // Its only copy in sync is on the leaving broker, which is down: nothing
                // could copy it (an unclean move would lose it).
                if p.leader < 0 && p.isr == [id] && metadata.broker(id).is_none() {
                    return Err(CliError::failed(format!(
                        "broker {id} holds the only in-sync copy of {}-{} and is not live: \
                         start it again so that the partition can be copied off it",
                        t.name, p.partition
                    )));
                }
                if !topics.contains(&t.name) {
                    topics.push(t.name.clone());
                }
            }
            all.push(PlanPartition {
                topic: t.name.clone(),
                partition: p.partition,
                replicas: p
                    .replicas
                    .iter()
                    .map(|r| keel_core::controller::BrokerId(*r))
                    .collect(),
            });
        }
    }
    if metadata.broker(id).is_none() && topics.is_empty() {
        // Neither live nor holding anything: perhaps registered fenced, perhaps unknown;
        // the unregistration says which.
        return unregister(client, id).await;
    }
    let targets = plan::drain(&brokers, &all, leaving).map_err(|e| {
        CliError::failed(format!(
            "cannot move every replica off broker {id}: {e} (add a broker first, or lower the \
             replication factor)"
        ))
    })?;
    let moves: Vec<(String, i32, Option<Vec<i32>>)> = all
        .iter()
        .zip(&targets)
        .filter(|(p, _)| p.replicas.contains(&leaving))
        .map(|(p, t)| {
            (
                p.topic.clone(),
                p.partition,
                Some(t.iter().map(|b| b.0).collect()),
            )
        })
        .collect();
    if !moves.is_empty() {
        eprintln!(
            "keel broker: moving {} replica(s) off broker {id}",
            moves.len()
        );
        let refused = alter_reassignments(client, &moves).await?;
        if refused > 0 {
            return Err(CliError::failed(format!(
                "{refused} partition(s) refused (see above); broker {id} stays registered"
            )));
        }
        wait_done(client, &topics, Duration::from_secs(wait), |m| {
            m.topics
                .iter()
                .all(|t| t.partitions.iter().all(|p| !p.replicas.contains(&id)))
        })
        .await?;
    }
    unregister(client, id).await
}

async fn unregister(client: &mut Client, id: i32) -> Result<(), CliError> {
    let addr = client.admin_broker().await?;
    let ResponseKind::UnregisterBroker(response) = client
        .call(
            &addr,
            ApiKey::UnregisterBroker,
            RequestKind::UnregisterBroker(
                UnregisterBrokerRequest::default().with_broker_id(BrokerId(id)),
            ),
        )
        .await?
    else {
        return Err(CliError::failed("not an UnregisterBroker response"));
    };
    if response.error_code != code::NONE {
        return Err(CliError::failed(format!(
            "unregistering broker {id}: {}{}",
            error_name(response.error_code),
            message(&response.error_message)
        )));
    }
    eprintln!("keel broker: broker {id} holds no replica and is unregistered; stop its process");
    Ok(())
}

#[derive(Serialize)]
struct ElectionRow {
    topic: String,
    partition: i32,
    result: String,
    message: Option<String>,
}

async fn elect(
    client: &mut Client,
    unclean: bool,
    topics: &[String],
    partitions: &[i32],
    output: Output,
) -> Result<(), CliError> {
    let asked = if topics.is_empty() {
        None
    } else {
        let metadata = client.metadata(Some(topics)).await?.clone();
        Some(
            topics
                .iter()
                .map(|t| {
                    let all: Vec<i32> = metadata
                        .topics
                        .iter()
                        .find(|m| &m.name == t)
                        .map(|m| m.partitions.iter().map(|p| p.partition).collect())
                        .unwrap_or_default();
                    TopicPartitions::default()
                        .with_topic(TopicName(StrBytes::from_string(t.clone())))
                        .with_partitions(if partitions.is_empty() {
                            all
                        } else {
                            partitions.to_vec()
                        })
                })
                .collect(),
        )
    };
    if unclean {
        eprintln!(
            "keel leaders: an unclean election may elect a replica outside the ISR: every write \
             only the old ISR held is lost, acknowledged ones included"
        );
    }
    let request = ElectLeadersRequest::default()
        .with_election_type(i8::from(unclean))
        .with_timeout_ms(client.timeout.as_millis().min(i32::MAX as u128) as i32)
        .with_topic_partitions(asked);
    let addr = client.admin_broker().await?;
    let ResponseKind::ElectLeaders(response) = client
        .call(
            &addr,
            ApiKey::ElectLeaders,
            RequestKind::ElectLeaders(request),
        )
        .await?
    else {
        return Err(CliError::failed("not an ElectLeaders response"));
    };
    check(response.error_code, "electing", "leaders")?;
    let mut rows = Vec::new();
    let mut failed = 0;
    for t in &response.replica_election_results {
        for p in &t.partition_result {
            let result = match p.error_code {
                code::NONE => "elected".to_string(),
                code::ELECTION_NOT_NEEDED => "not needed".to_string(),
                other => {
                    failed += 1;
                    error_name(other)
                }
            };
            rows.push(ElectionRow {
                topic: t.topic.0.to_string(),
                partition: p.partition_id,
                result,
                message: p
                    .error_message
                    .as_ref()
                    .filter(|m| !m.is_empty())
                    .map(|m| m.to_string()),
            });
        }
    }
    rows.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    match output {
        Output::Json => print_json(&rows)?,
        Output::Table => {
            if rows.is_empty() {
                eprintln!("keel leaders: no partition needed an election");
            } else {
                let mut t = table(&["TOPIC", "PARTITION", "RESULT", "MESSAGE"]);
                for r in &rows {
                    t.add_row(vec![
                        r.topic.clone(),
                        r.partition.to_string(),
                        r.result.clone(),
                        r.message.clone().unwrap_or_default(),
                    ]);
                }
                print_table(&t);
            }
        }
    }
    if failed > 0 {
        return Err(CliError::failed(format!(
            "{failed} partition(s) could not elect (see RESULT)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_files_are_kafkas_format_and_checked() {
        let ok = PlanFile::parse(
            r#"{"version":1,"partitions":[{"topic":"t","partition":0,"replicas":[1,2],
               "log_dirs":["any","any"]}]}"#,
        )
        .unwrap();
        assert_eq!(ok.partitions[0].replicas, vec![1, 2]);
        for (bad, why) in [
            (r#"{"version":2,"partitions":[]}"#, "version 2"),
            (r#"{"version":1,"partitions":[]}"#, "no partition"),
            (
                r#"{"version":1,"partitions":[{"topic":"t","partition":0,"replicas":[1]},
                   {"topic":"t","partition":0,"replicas":[2]}]}"#,
                "twice",
            ),
            (
                r#"{"version":1,"partitions":[{"topic":"t","partition":0,"replicas":[1],
                   "log_dirs":["/d"]}]}"#,
                "log_dirs",
            ),
            (
                r#"{"version":1,"partitions":[{"topic":"t"}]}"#,
                "missing field",
            ),
            ("not json", "expected"),
        ] {
            let e = PlanFile::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
