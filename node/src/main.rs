//! The `keel` command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use kafka_protocol::messages::ApiKey;
use keel_core::controller::TopicDefaults;
use keel_node::broker::{Broker, Settings};
use keel_node::wire::{SupportedApis, WireConfig, WireServer, GROUP_APIS};

#[derive(Parser)]
#[command(
    name = "keel",
    version,
    about = "keel: a Kafka-compatible distributed log"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct StartArgs {
    /// This broker's id (`node.id`).
    #[arg(long, default_value_t = 1)]
    node_id: i32,
    /// Where clients connect: PLAINTEXT://HOST:PORT (`listeners`).
    #[arg(long, default_value = "PLAINTEXT://127.0.0.1:9092")]
    listeners: String,
    /// The data directory (`log.dirs`).
    #[arg(long, default_value = "keel-data")]
    data_dir: PathBuf,
    /// `auto.create.topics.enable`.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    auto_create_topics: bool,
    /// `num.partitions`: partitions of auto-created topics and CreateTopics with -1.
    #[arg(long, default_value_t = 1)]
    num_partitions: i32,
}

#[derive(Subcommand)]
enum Command {
    /// Print every batch of a segment file (or of every .log file in a directory) and check
    /// it, like kafka-dump-log.sh. Exits 1 if any batch is invalid.
    DumpLog {
        /// A segment file (`00000000000000000000.log`) or a partition directory.
        path: PathBuf,
        /// Also print every record.
        #[arg(long)]
        records: bool,
    },
    /// Run one broker.
    Start(StartArgs),
    /// Start a local broker for development, with data in ./keel-data, on 127.0.0.1:9092.
    Dev {
        /// The port to listen on.
        #[arg(long, default_value_t = 9092)]
        port: u16,
        /// The data directory.
        #[arg(long, default_value = "keel-data")]
        data_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::DumpLog { path, records } => {
            let stdout = std::io::stdout();
            match keel_node::dump_log::dump_path(&path, records, &mut stdout.lock()) {
                Ok(summary) if summary.is_clean() => ExitCode::SUCCESS,
                Ok(_) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("keel dump-log: {}: {e}", path.display());
                    ExitCode::from(2)
                }
            }
        }
        Command::Start(args) => run(args, false),
        Command::Dev { port, data_dir } => run(
            StartArgs {
                node_id: 1,
                listeners: format!("PLAINTEXT://127.0.0.1:{port}"),
                data_dir,
                auto_create_topics: true,
                num_partitions: 1,
            },
            true,
        ),
    }
}

/// Parses `PLAINTEXT://HOST:PORT` (the only listener kind keel serves so far).
fn parse_listener(listeners: &str) -> Result<SocketAddr, String> {
    let first = listeners.split(',').next().unwrap_or_default().trim();
    let addr = first.strip_prefix("PLAINTEXT://").ok_or_else(|| {
        format!("listener {first:?}: keel serves PLAINTEXT://HOST:PORT listeners")
    })?;
    let addr = if addr.starts_with(':') {
        format!("0.0.0.0{addr}")
    } else {
        addr.to_string()
    };
    let addr = addr.replace("localhost", "127.0.0.1");
    addr.parse().map_err(|e| format!("listener {first:?}: {e}"))
}

fn run(args: StartArgs, dev: bool) -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KEEL_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    let addr = match parse_listener(&args.listeners) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("keel: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("keel: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("keel: cannot listen on {addr}: {e}");
                return ExitCode::from(1);
            }
        };
        let bound = listener.local_addr().unwrap_or(addr);
        let advertised_host = if bound.ip().is_unspecified() { "127.0.0.1".to_string() } else { bound.ip().to_string() };
        let settings = Settings {
            node_id: args.node_id,
            data_dir: args.data_dir.clone(),
            advertised_host: advertised_host.clone(),
            advertised_port: bound.port(),
            auto_create_topics: args.auto_create_topics,
            topic_defaults: TopicDefaults { partitions: args.num_partitions, replication_factor: 1 },
        };
        let broker = match Broker::open(settings) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("keel: {e}");
                return ExitCode::from(1);
            }
        };
        // Group APIs wait for the group coordinator, but FindCoordinator stays advertised:
        // librdkafka enables lz4 only when it sees FindCoordinator v0 (and answers get
        // COORDINATOR_NOT_AVAILABLE).
        let without: Vec<_> = GROUP_APIS.into_iter().filter(|&k| k != ApiKey::FindCoordinator).collect();
        let apis = SupportedApis::all().without(&without);
        let server = WireServer::new(broker.clone(), apis, WireConfig::default());
        let serving = tokio::spawn(server.serve(listener));
        tokio::spawn(timers(broker.clone()));
        println!("keel broker {} ready on {advertised_host}:{}", args.node_id, bound.port());
        if dev {
            println!("data in {}", args.data_dir.display());
            println!("try:  kcat -b {advertised_host}:{} -L", bound.port());
            println!("      echo hello | kcat -b {advertised_host}:{} -t demo -P && kcat -b {advertised_host}:{} -t demo -C -e", bound.port(), bound.port());
            println!("Ctrl-C stops it.");
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
        shutdown_signal().await;
        tracing::info!("shutting down: syncing every partition");
        serving.abort();
        let broker_for_sync = broker.clone();
        broker_for_sync.checkpoint_all();
        tracing::info!("shut down cleanly");
        ExitCode::SUCCESS
    })
}

/// Retention and checkpoints on their timers.
async fn timers(broker: Arc<Broker>) {
    let mut retention = tokio::time::interval(Duration::from_secs(300));
    let mut checkpoint = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = retention.tick() => broker.apply_retention(),
            _ = checkpoint.tick() => broker.checkpoint_all(),
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return std::future::pending().await,
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}
