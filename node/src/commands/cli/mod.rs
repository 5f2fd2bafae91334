//! The `keel` commands for daily work against any Kafka-compatible cluster, keel or Kafka, in
//! the spirit of Redpanda's rpk: `keel topic`, `keel produce`, `keel consume`, `keel group`,
//! `keel cluster`, and the operations `keel partitions`, `keel broker` and `keel leaders`
//! (docs/cli.md). They talk the Kafka protocol through [`client`], and use no
//! part of the broker.
//!
//! What always holds: a command that fails prints one line to stderr, `keel <command>: what
//! went wrong (what to do)`, and exits 1 (2 for bad arguments), never a panic or a backtrace;
//! every network wait is bounded by `--timeout`. Listings print a table, or with `--output
//! json` one JSON document, on stdout.

pub mod client;
mod cluster;
mod consume;
mod group;
mod ops;
mod produce;
mod topic;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use comfy_table::{presets, Table};
use serde::Serialize;

pub use consume::ConsumeArgs;
pub use produce::ProduceArgs;

use client::Client;

/// A failure: one line for the user, and the exit status.
#[derive(Debug)]
pub struct CliError {
    pub message: String,
    /// 1: the operation failed; 2: the arguments or the input are wrong.
    pub exit: u8,
}

impl CliError {
    pub fn failed(message: impl Into<String>) -> CliError {
        CliError {
            message: message.into(),
            exit: 1,
        }
    }

    pub fn usage(message: impl Into<String>) -> CliError {
        CliError {
            message: message.into(),
            exit: 2,
        }
    }
}

/// How listings are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Aligned columns for people.
    Table,
    /// One JSON document for programs.
    Json,
}

/// Where the cluster is, and how long to wait for it.
#[derive(Args, Clone, Debug)]
pub struct ClusterArgs {
    /// Bootstrap brokers, host:port[,host:port...] (any of them; the rest are found).
    #[arg(
        long,
        short = 'b',
        env = "KEEL_BROKERS",
        default_value = "127.0.0.1:9092",
        global = true
    )]
    pub brokers: String,
    /// The longest any one network step may take (connect, a request, its answer), in seconds.
    #[arg(long, default_value_t = 10.0, global = true, value_name = "SECONDS")]
    pub timeout: f64,
    /// How listings are printed.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
}

impl ClusterArgs {
    fn client(&self) -> Result<Client, CliError> {
        if !(self.timeout.is_finite() && self.timeout > 0.0 && self.timeout <= 3600.0) {
            return Err(CliError::usage(format!(
                "--timeout {}: give seconds above 0 and at most 3600",
                self.timeout
            )));
        }
        Client::new(&self.brokers, Duration::from_secs_f64(self.timeout))
    }
}

/// The client commands, as `keel`'s subcommands.
#[derive(Subcommand, Debug)]
pub enum ClientCommand {
    /// Create, list, describe, reconfigure and delete topics.
    Topic(topic::TopicArgs),
    /// Produce records read from stdin or a file, one per line.
    Produce(ProduceArgs),
    /// Consume records and print them (a template like kcat's -f, or JSON lines).
    Consume(ConsumeArgs),
    /// List, describe and delete consumer groups; show their lag; reset their offsets.
    Group(group::GroupArgs),
    /// Describe the cluster: brokers, controller, metadata quorum, partitions needing care.
    Cluster(cluster::ClusterCommandArgs),
    /// Move partitions' replicas between brokers (a plan file or a generated balanced plan)
    /// and follow the reassignments in progress.
    Partitions(ops::PartitionsArgs),
    /// Decommission a broker: move its replicas off, then unregister it.
    Broker(ops::BrokerArgs),
    /// Elect leaders: preferred replicas, or unclean elections for leaderless partitions.
    Leaders(ops::LeadersArgs),
}

impl ClientCommand {
    fn name(&self) -> &'static str {
        match self {
            ClientCommand::Topic(_) => "topic",
            ClientCommand::Produce(_) => "produce",
            ClientCommand::Consume(_) => "consume",
            ClientCommand::Group(_) => "group",
            ClientCommand::Cluster(_) => "cluster",
            ClientCommand::Partitions(_) => "partitions",
            ClientCommand::Broker(_) => "broker",
            ClientCommand::Leaders(_) => "leaders",
        }
    }

    fn cluster(&self) -> &ClusterArgs {
        match self {
            ClientCommand::Topic(a) => &a.cluster,
            ClientCommand::Produce(a) => &a.cluster,
            ClientCommand::Consume(a) => &a.cluster,
            ClientCommand::Group(a) => &a.cluster,
            ClientCommand::Cluster(a) => &a.cluster,
            ClientCommand::Partitions(a) => &a.cluster,
            ClientCommand::Broker(a) => &a.cluster,
            ClientCommand::Leaders(a) => &a.cluster,
        }
    }
}

/// Runs a client command to the end; prints its error, if any, as one line.
pub fn run(command: ClientCommand) -> ExitCode {
    let name = command.name();
    // A reader that goes away (`keel topic list | head -1`) ends the command as it ends other
    // Unix tools, by SIGPIPE, instead of a failed write to stdout.
    // SAFETY: restores the default disposition of one signal; no handler code runs.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // A bug shows as one line, not a backtrace.
    std::panic::set_hook(Box::new(move |info| {
        eprintln!("keel {name}: internal error ({info}); please report it");
    }));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("keel {name}: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        let mut client = command.cluster().client()?;
        let output = command.cluster().output;
        match command {
            ClientCommand::Topic(a) => topic::run(a.command, &mut client, output).await,
            ClientCommand::Produce(a) => produce::run(a, &mut client).await,
            ClientCommand::Consume(a) => consume::run(a, &mut client).await,
            ClientCommand::Group(a) => group::run(a.command, &mut client, output).await,
            ClientCommand::Cluster(a) => cluster::run(a.command, &mut client, output).await,
            ClientCommand::Partitions(a) => ops::partitions(a.command, &mut client, output).await,
            ClientCommand::Broker(a) => ops::broker(a.command, &mut client).await,
            ClientCommand::Leaders(a) => ops::leaders(a.command, &mut client, output).await,
        }
    });
    // Tasks still blocked on a socket must not hold the exit up.
    runtime.shutdown_timeout(Duration::from_millis(100));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keel {name}: {}", e.message);
            ExitCode::from(e.exit)
        }
    }
}

/// A table with a header row and no borders: columns aligned as rpk prints them.
pub(crate) fn table(header: &[&str]) -> Table {
    let mut table = Table::new();
    table.load_preset(presets::NOTHING);
    table.set_header(header.iter().copied());
    table
}

/// Prints `table`, trimming the padding comfy-table leaves on each line.
pub(crate) fn print_table(table: &Table) {
    for line in table.to_string().lines() {
        println!(
            "{}",
            line.trim_end().strip_prefix(' ').unwrap_or(line.trim_end())
        );
    }
}

/// Prints `value` as pretty JSON.
pub(crate) fn print_json<T: Serialize>(value: &T) -> Result<(), CliError> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| CliError::failed(format!("cannot write JSON: {e}")))?;
    println!("{text}");
    Ok(())
}

/// Joins ids for a table cell: `1,2,3`.
pub(crate) fn ids(ids: &[i32]) -> String {
    ids.iter().map(i32::to_string).collect::<Vec<_>>().join(",")
}
