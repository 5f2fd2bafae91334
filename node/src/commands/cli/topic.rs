//! `keel topic`: CreateTopics, Metadata, DescribeConfigs, ListOffsets, IncrementalAlterConfigs
//! and DeleteTopics.

use clap::{Args, Subcommand};
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, DeleteTopicsRequest, DescribeConfigsRequest,
    IncrementalAlterConfigsRequest, RequestKind, ResponseKind, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use serde::Serialize;

use super::client::{check, Client, TopicInfo};
use super::consume::{list_offsets, OffsetQuery};
use super::{ids, print_json, print_table, table, CliError, ClusterArgs, Output};

/// DescribeConfigs' and IncrementalAlterConfigs' resource type of a topic.
const RESOURCE_TOPIC: i8 = 2;
/// IncrementalAlterConfigs operations.
const OP_SET: i8 = 0;
const OP_DELETE: i8 = 1;
/// How long the controller may take to create or delete topics.
const ADMIN_TIMEOUT_MS: i32 = 30_000;

#[derive(Args, Debug)]
pub struct TopicArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(subcommand)]
    pub command: TopicCommand,
}

#[derive(Subcommand, Debug)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        /// Partitions (default: the cluster's num.partitions).
        #[arg(long, short = 'p')]
        partitions: Option<i32>,
        /// Replicas per partition (default: the cluster's default.replication.factor).
        #[arg(long, short = 'r')]
        replication_factor: Option<i16>,
        /// A topic config, key=value (repeatable), e.g. -c retention.ms=3600000.
        #[arg(long = "config", short = 'c', value_name = "KEY=VALUE")]
        configs: Vec<String>,
    },
    /// List the topics.
    List {
        /// Also list internal topics (__consumer_offsets, __transaction_state).
        #[arg(long, short = 'i')]
        internal: bool,
    },
    /// Describe a topic: its partitions (leader, replicas, ISR, offsets) and configs.
    Describe { name: String },
    /// Set (-c key=value) or remove (--delete key) topic configs.
    AlterConfig {
        name: String,
        /// A config to set, key=value (repeatable).
        #[arg(long = "config", short = 'c', value_name = "KEY=VALUE")]
        configs: Vec<String>,
        /// A config to return to its default (repeatable).
        #[arg(long = "delete", value_name = "KEY")]
        deletes: Vec<String>,
    },
    /// Delete a topic and its data.
    Delete { name: String },
}

pub async fn run(
    command: TopicCommand,
    client: &mut Client,
    output: Output,
) -> Result<(), CliError> {
    match command {
        TopicCommand::Create {
            name,
            partitions,
            replication_factor,
            configs,
        } => {
            create(
                client,
                output,
                name,
                partitions,
                replication_factor,
                configs,
            )
            .await
        }
        TopicCommand::List { internal } => list(client, output, internal).await,
        TopicCommand::Describe { name } => describe(client, output, &name).await,
        TopicCommand::AlterConfig {
            name,
            configs,
            deletes,
        } => alter_config(client, output, &name, configs, deletes).await,
        TopicCommand::Delete { name } => delete(client, output, &name).await,
    }
}

/// `key=value` split at the first `=`.
pub(super) fn key_value(arg: &str, flag: &str) -> Result<(String, String), CliError> {
    match arg.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(CliError::usage(format!(
            "{flag} {arg:?}: give key=value, e.g. {flag} retention.ms=3600000"
        ))),
    }
}

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_string())
}

#[derive(Serialize)]
struct Outcome<'a> {
    topic: &'a str,
    status: &'a str,
}

fn print_outcome(output: Output, topic: &str, status: &str) -> Result<(), CliError> {
    match output {
        Output::Json => print_json(&Outcome { topic, status }),
        Output::Table => {
            let mut t = table(&["TOPIC", "STATUS"]);
            t.add_row(vec![topic, status]);
            print_table(&t);
            Ok(())
        }
    }
}

async fn create(
    client: &mut Client,
    output: Output,
    name: String,
    partitions: Option<i32>,
    replication_factor: Option<i16>,
    configs: Vec<String>,
) -> Result<(), CliError> {
    if partitions.is_some_and(|p| p < 1) {
        return Err(CliError::usage("--partitions: give 1 or more"));
    }
    if replication_factor.is_some_and(|r| r < 1) {
        return Err(CliError::usage("--replication-factor: give 1 or more"));
    }
    let configs = configs
        .iter()
        .map(|c| key_value(c, "--config"))
        .collect::<Result<Vec<_>, _>>()?;
    let mut request = CreateTopicsRequest::default();
    request.timeout_ms = ADMIN_TIMEOUT_MS;
    request.topics = vec![CreatableTopic::default()
        .with_name(TopicName(str_bytes(&name)))
        .with_num_partitions(partitions.unwrap_or(-1))
        .with_replication_factor(replication_factor.unwrap_or(-1))
        .with_configs(
            configs
                .iter()
                .map(|(k, v)| {
                    CreatableTopicConfig::default()
                        .with_name(str_bytes(k))
                        .with_value(Some(str_bytes(v)))
                })
                .collect(),
        )];
    let addr = client.admin_broker().await?;
    let ResponseKind::CreateTopics(response) = client
        .call(
            &addr,
            ApiKey::CreateTopics,
            RequestKind::CreateTopics(request),
        )
        .await?
    else {
        return Err(CliError::failed("not a CreateTopics response"));
    };
    let result = response
        .topics
        .first()
        .ok_or_else(|| CliError::failed("CreateTopics answered no topic"))?;
    with_message(
        check(result.error_code, "creating topic", &name),
        result.error_message.as_ref(),
    )?;
    print_outcome(output, &name, "created")
}

/// Adds the broker's error message, if any, to an error.
fn with_message(result: Result<(), CliError>, message: Option<&StrBytes>) -> Result<(), CliError> {
    result.map_err(|mut e| {
        if let Some(m) = message.filter(|m| !m.is_empty()) {
            e.message = format!("{}: {m}", e.message);
        }
        e
    })
}

#[derive(Serialize)]
struct TopicRow {
    name: String,
    partitions: usize,
    replicas: usize,
    internal: bool,
}

async fn list(client: &mut Client, output: Output, internal: bool) -> Result<(), CliError> {
    let metadata = client.metadata(None).await?;
    let mut rows: Vec<TopicRow> = metadata
        .topics
        .iter()
        .filter(|t| internal || !t.internal)
        .map(|t| TopicRow {
            name: t.name.clone(),
            partitions: t.partitions.len(),
            replicas: t.partitions.first().map_or(0, |p| p.replicas.len()),
            internal: t.internal,
        })
        .collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    match output {
        Output::Json => print_json(&rows),
        Output::Table => {
            let mut t = table(&["NAME", "PARTITIONS", "REPLICAS"]);
            for r in &rows {
                t.add_row(vec![
                    r.name.clone(),
                    r.partitions.to_string(),
                    r.replicas.to_string(),
                ]);
            }
            print_table(&t);
            Ok(())
        }
    }
}

#[derive(Serialize)]
struct PartitionRow {
    partition: i32,
    leader: i32,
    leader_epoch: i32,
    replicas: Vec<i32>,
    isr: Vec<i32>,
    log_start_offset: Option<i64>,
    high_watermark: Option<i64>,
    error: Option<String>,
}

#[derive(Serialize)]
struct ConfigRow {
    name: String,
    value: Option<String>,
    source: &'static str,
}

#[derive(Serialize)]
struct TopicDescription {
    name: String,
    topic_id: String,
    internal: bool,
    partitions: Vec<PartitionRow>,
    configs: Vec<ConfigRow>,
}

/// Kafka's names of DescribeConfigs' config sources.
fn config_source(source: i8) -> &'static str {
    match source {
        1 => "DYNAMIC_TOPIC_CONFIG",
        2 => "DYNAMIC_BROKER_CONFIG",
        3 => "DYNAMIC_DEFAULT_BROKER_CONFIG",
        4 => "STATIC_BROKER_CONFIG",
        5 => "DEFAULT_CONFIG",
        6 => "DYNAMIC_BROKER_LOGGER_CONFIG",
        7 => "CLIENT_METRICS_CONFIG",
        8 => "GROUP_CONFIG",
        _ => "UNKNOWN",
    }
}

async fn topic_configs(client: &mut Client, name: &str) -> Result<Vec<ConfigRow>, CliError> {
    let mut request = DescribeConfigsRequest::default();
    request.resources = vec![DescribeConfigsResource::default()
        .with_resource_type(RESOURCE_TOPIC)
        .with_resource_name(str_bytes(name))
        .with_configuration_keys(None)];
    let ResponseKind::DescribeConfigs(response) = client
        .call_any(
            ApiKey::DescribeConfigs,
            RequestKind::DescribeConfigs(request),
        )
        .await?
    else {
        return Err(CliError::failed("not a DescribeConfigs response"));
    };
    let result = response
        .results
        .into_iter()
        .next()
        .ok_or_else(|| CliError::failed("DescribeConfigs answered no resource"))?;
    with_message(
        check(result.error_code, "describing the configs of topic", name),
        result.error_message.as_ref(),
    )?;
    let mut rows: Vec<ConfigRow> = result
        .configs
        .iter()
        .map(|c| ConfigRow {
            name: c.name.to_string(),
            value: if c.is_sensitive {
                Some("(sensitive)".into())
            } else {
                c.value.as_ref().map(|v| v.to_string())
            },
            source: config_source(c.config_source),
        })
        .collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(rows)
}

async fn describe(client: &mut Client, output: Output, name: &str) -> Result<(), CliError> {
    let topic: TopicInfo = client.topic(name).await?;
    let partitions: Vec<i32> = topic.partitions.iter().map(|p| p.partition).collect();
    let starts = list_offsets(client, &topic, &partitions, OffsetQuery::Earliest).await?;
    let ends = list_offsets(client, &topic, &partitions, OffsetQuery::Latest).await?;
    let configs = topic_configs(client, name).await?;
    let description = TopicDescription {
        name: topic.name.clone(),
        topic_id: topic.topic_id.clone(),
        internal: topic.internal,
        partitions: topic
            .partitions
            .iter()
            .map(|p| PartitionRow {
                partition: p.partition,
                leader: p.leader,
                leader_epoch: p.leader_epoch,
                replicas: p.replicas.clone(),
                isr: p.isr.clone(),
                log_start_offset: starts.get(&p.partition).copied(),
                high_watermark: ends.get(&p.partition).copied(),
                error: (p.error_code != 0).then(|| super::client::error_name(p.error_code)),
            })
            .collect(),
        configs,
    };
    match output {
        Output::Json => print_json(&description),
        Output::Table => {
            let mut summary = table(&["NAME", "TOPIC-ID", "PARTITIONS", "INTERNAL"]);
            summary.add_row(vec![
                description.name.clone(),
                description.topic_id.clone(),
                description.partitions.len().to_string(),
                description.internal.to_string(),
            ]);
            print_table(&summary);
            println!();
            let mut t = table(&[
                "PARTITION",
                "LEADER",
                "EPOCH",
                "REPLICAS",
                "ISR",
                "LOG-START-OFFSET",
                "HIGH-WATERMARK",
            ]);
            let show = |o: Option<i64>| o.map_or("-".to_string(), |o| o.to_string());
            for p in &description.partitions {
                t.add_row(vec![
                    p.partition.to_string(),
                    p.leader.to_string(),
                    p.leader_epoch.to_string(),
                    ids(&p.replicas),
                    ids(&p.isr),
                    show(p.log_start_offset),
                    show(p.high_watermark),
                ]);
            }
            print_table(&t);
            println!();
            let mut c = table(&["CONFIG", "VALUE", "SOURCE"]);
            for config in &description.configs {
                c.add_row(vec![
                    config.name.clone(),
                    config.value.clone().unwrap_or_else(|| "-".into()),
                    config.source.to_string(),
                ]);
            }
            print_table(&c);
            Ok(())
        }
    }
}

async fn alter_config(
    client: &mut Client,
    output: Output,
    name: &str,
    configs: Vec<String>,
    deletes: Vec<String>,
) -> Result<(), CliError> {
    if configs.is_empty() && deletes.is_empty() {
        return Err(CliError::usage(
            "nothing to change: give -c key=value or --delete key",
        ));
    }
    let mut alterations = Vec::new();
    for c in &configs {
        let (k, v) = key_value(c, "--config")?;
        alterations.push(
            AlterableConfig::default()
                .with_name(str_bytes(&k))
                .with_config_operation(OP_SET)
                .with_value(Some(str_bytes(&v))),
        );
    }
    for k in &deletes {
        alterations.push(
            AlterableConfig::default()
                .with_name(str_bytes(k))
                .with_config_operation(OP_DELETE)
                .with_value(None),
        );
    }
    // A missing topic is named as such, not as a config error.
    client.topic(name).await?;
    let mut request = IncrementalAlterConfigsRequest::default();
    request.resources = vec![AlterConfigsResource::default()
        .with_resource_type(RESOURCE_TOPIC)
        .with_resource_name(str_bytes(name))
        .with_configs(alterations)];
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
    let result = response
        .responses
        .first()
        .ok_or_else(|| CliError::failed("IncrementalAlterConfigs answered no resource"))?;
    with_message(
        check(result.error_code, "altering the configs of topic", name),
        result.error_message.as_ref(),
    )?;
    print_outcome(output, name, "configs altered")
}

async fn delete(client: &mut Client, output: Output, name: &str) -> Result<(), CliError> {
    let mut request = DeleteTopicsRequest::default();
    request.timeout_ms = ADMIN_TIMEOUT_MS;
    request.topic_names = vec![TopicName(str_bytes(name))];
    let addr = client.admin_broker().await?;
    let ResponseKind::DeleteTopics(response) = client
        .call(
            &addr,
            ApiKey::DeleteTopics,
            RequestKind::DeleteTopics(request),
        )
        .await?
    else {
        return Err(CliError::failed("not a DeleteTopics response"));
    };
    let result = response
        .responses
        .first()
        .ok_or_else(|| CliError::failed("DeleteTopics answered no topic"))?;
    with_message(
        check(result.error_code, "deleting topic", name),
        result.error_message.as_ref(),
    )?;
    print_outcome(output, name, "deleted")
}
