//! The `keel` command: parses the command line and runs one of the commands in
//! `keel_node::commands`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use keel_node::commands::{dump_log, start};

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
    Start(start::StartArgs),
    /// Start a local cluster for development: three brokers on loopback (separate processes),
    /// data in ./keel-data. Ctrl-C stops them all.
    #[cfg(not(madsim))]
    Dev(keel_node::commands::dev::DevArgs),
    /// Print a shell completion script: `source <(keel completions bash)`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    #[cfg(not(madsim))]
    #[command(flatten)]
    Client(keel_node::commands::cli::ClientCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::DumpLog { path, records } => {
            let stdout = std::io::stdout();
            match dump_log::dump_path(&path, records, &mut stdout.lock()) {
                Ok(summary) if summary.is_clean() => ExitCode::SUCCESS,
                Ok(_) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("keel dump-log: {}: {e}", path.display());
                    ExitCode::from(2)
                }
            }
        }
        Command::Start(args) => start::run(args),
        #[cfg(not(madsim))]
        Command::Dev(args) => keel_node::commands::dev::run(args),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "keel", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        #[cfg(not(madsim))]
        Command::Client(command) => keel_node::commands::cli::run(command),
    }
}
