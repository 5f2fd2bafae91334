//! `keel dev`: a local cluster for development, run as N `keel start` child processes of this
//! one.
//!
//! The layout follows from `--port P`, `--brokers N` and `--data-dir D` alone (see [`Plan`]):
//! broker i (ids 1..=N) serves clients on 127.0.0.1:P+i-1, talks to the other brokers (metadata
//! quorum, replication) on 127.0.0.1:P+100+i-1, serves /metrics on 127.0.0.1:P+200+i-1, and
//! keeps its data in D/broker-i. Every broker is a voter of the metadata quorum; a single broker
//! runs without one. With `--spare S`, brokers N+1..=N+S get ports and directories by the same
//! rule and are learners of the quorum in every broker's settings, so that `keel dev
//! --add-broker` with the same arguments can start one later and it joins the running cluster
//! (it receives partitions only by reassignment). New topics are replicated on up to three brokers, with two in sync for
//! acks=all once there are three ([`dev_defaults`]), unless an `--override` says otherwise.
//!
//! What always holds:
//! - every client and peer port is checked free before any child is spawned (a metrics port
//!   that is taken only costs that broker its endpoint, with a warning);
//! - a child is signalled only while it is not yet reaped, so its pid cannot have been reused;
//! - children run in their own process group, so a terminal's Ctrl-C reaches only the launcher,
//!   which stops them in order (SIGTERM, then SIGKILL after [`STOP_TIMEOUT`]); on Linux they
//!   get SIGTERM if the launcher dies (`PR_SET_PDEATHSIG`), so no broker outlives `keel dev`;
//! - a child's output is forwarded whole lines at a time (at most [`LINE_BYTES_MAX`] each),
//!   prefixed `[broker i] `: stdout to stdout, stderr (the logs) to stderr.
//!
//! The launcher's loop, in order: parse the plan; check the ports; spawn every child with two
//! reader threads each; wait until every child printed `keel broker i ready on HOST:PORT`
//! ([`READY_TIMEOUT`]), then print the summary; from then on report children that exit (the
//! others keep running) until Ctrl-C or SIGTERM, or until no child is left (exit 1).

#![cfg(not(madsim))]

use std::borrow::Cow;
use std::ffi::OsString;
use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::thread;
use std::time::Duration;

use keel_core::controller::BrokerId;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::commands::dev_secure::SecureDev;
use crate::config::{
    parse_override, ADVERTISED_LISTENERS, CONTROLLER_QUORUM_VOTERS, DEFAULT_REPLICATION_FACTOR,
    KEEL_METRICS_LISTENER, KEEL_QUORUM_LEARNERS, LISTENERS, LOG_DIRS, MIN_INSYNC_REPLICAS, NODE_ID,
};

/// The most brokers `keel dev` runs.
pub const BROKERS_MAX: u8 = 9;
/// Broker i's peer (voter) port is its client port plus this.
pub const PEER_PORT_OFFSET: u16 = 100;
/// Broker i's metrics endpoint is on its client port plus this, unless `--override
/// keel.metrics.listener=...` says otherwise (one fixed default would serve only one broker).
pub const METRICS_PORT_OFFSET: u16 = 200;
/// Every broker listens on this host only.
pub const HOST: &str = "127.0.0.1";
/// How long every child has to print its ready line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a child has to exit after SIGTERM on Ctrl-C before it gets SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// The same when the launch failed (a child exited early, or the ready timeout passed).
const ABORT_STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the launcher looks for children that exited.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// How long the launcher waits for the last output of exited children before it returns.
const OUTPUT_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// A longer line of child output is forwarded in pieces of this size.
pub const LINE_BYTES_MAX: u64 = 64 * 1024;
/// Each child's reader threads send at most this many events: one `Ready`, two `Closed`.
const EVENTS_PER_CHILD_MAX: usize = 3;
/// Settings `keel dev` gives each broker itself; an `--override` of one is refused.
const RESERVED_KEYS: [&str; 6] = [
    NODE_ID,
    LISTENERS,
    ADVERTISED_LISTENERS,
    LOG_DIRS,
    CONTROLLER_QUORUM_VOTERS,
    KEEL_QUORUM_LEARNERS,
];

/// `keel dev`'s arguments.
#[derive(clap::Args, Clone, Debug)]
pub struct DevArgs {
    /// How many brokers to run (1 to 9); every one is a voter of the metadata quorum.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=BROKERS_MAX as i64))]
    pub brokers: u8,
    /// Broker i serves clients on 127.0.0.1:PORT+i-1 and the other brokers on PORT+100+i-1.
    #[arg(long, default_value_t = 9092)]
    pub port: u16,
    /// Broker i keeps its data in DATA_DIR/broker-i.
    #[arg(long, default_value = "keel-data")]
    pub data_dir: PathBuf,
    /// A setting `key=value` for every broker (repeatable), e.g. `--override num.partitions=3`.
    #[arg(long = "override", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Room for this many brokers to be added later (ids after --brokers, ports and data
    /// directories by the same rule): every broker knows them as metadata-quorum learners.
    #[arg(long, default_value_t = 0)]
    pub spare: u8,
    /// Start one spare broker of this layout (the first whose port is free) and add it to the
    /// running cluster started with the same arguments; Ctrl-C stops only it.
    #[arg(long)]
    pub add_broker: bool,
    /// Serve SASL_SSL (SCRAM-SHA-512) with a CA and certificates made under DATA_DIR/tls, an
    /// `admin` user with a fresh password, and TLS and logins between the brokers too.
    #[arg(long)]
    pub secure: bool,
}

/// Why the arguments give no layout.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("--brokers {0}: expected 1 to {BROKERS_MAX}")]
    Brokers(u8),
    #[error("--brokers {brokers} --spare {spare}: at most {BROKERS_MAX} brokers in all")]
    Spare { brokers: u8, spare: u8 },
    #[error(
        "--port {port} with {brokers} brokers needs ports {port} to {last}, which do not all exist"
    )]
    Ports { port: u16, brokers: u8, last: u32 },
    #[error("--override {0}: expected KEY=VALUE")]
    BadOverride(String),
    #[error("--override {key}=...: keel dev sets {key} for each broker itself (see --port and --data-dir)")]
    ReservedOverride { key: String },
}

/// One broker of the layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlannedBroker {
    pub id: BrokerId,
    /// Where clients connect (the PLAINTEXT listener).
    pub client_port: u16,
    /// Where the other brokers connect (its `controller.quorum.voters` address).
    pub peer_port: u16,
    /// Its Prometheus endpoint; None when an `--override` sets `keel.metrics.listener`.
    pub metrics_port: Option<u16>,
    pub data_dir: PathBuf,
}

impl PlannedBroker {
    pub fn client_address(&self) -> String {
        format!("{HOST}:{}", self.client_port)
    }
}

/// The whole layout: which brokers, on which ports, with which `keel start` arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The brokers to run.
    pub brokers: Vec<PlannedBroker>,
    /// The brokers `--add-broker` may run later (`--spare`), learners of the quorum.
    pub spares: Vec<PlannedBroker>,
    /// `controller.quorum.voters`, the same for every broker of the layout: None for a single
    /// broker without spares.
    quorum_voters: Option<String>,
    /// `keel.quorum.learners`: the spares, if any.
    quorum_learners: Option<String>,
    /// `KEY=VALUE` for every broker: [`dev_defaults`] the user did not override, then the
    /// `--override`s as given.
    pub overrides: Vec<String>,
    /// With `--secure`: the files and password made for this launch (set by [`run`]).
    pub secure: Option<SecureDev>,
}

/// The topic defaults a development cluster of `brokers` brokers gets unless an `--override`
/// sets them: new topics (auto-created ones included) are replicated on up to three brokers,
/// and with three or more, acks=all needs two in-sync replicas, so that killing any one broker
/// leaves every topic readable and writable, and an acknowledged write on two disks. A
/// single broker keeps Kafka's defaults (replication factor 1).
pub fn dev_defaults(brokers: u8) -> Vec<(&'static str, u8)> {
    let mut defaults = Vec::new();
    if brokers >= 2 {
        defaults.push((DEFAULT_REPLICATION_FACTOR, brokers.min(3)));
    }
    if brokers >= 3 {
        defaults.push((MIN_INSYNC_REPLICAS, 2));
    }
    defaults
}

/// Which of a broker's ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortRole {
    Client,
    Peer,
}

impl fmt::Display for PortRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PortRole::Client => "client",
            PortRole::Peer => "peer",
        })
    }
}

impl Plan {
    pub fn new(args: &DevArgs) -> Result<Plan, PlanError> {
        if !(1..=BROKERS_MAX).contains(&args.brokers) {
            return Err(PlanError::Brokers(args.brokers));
        }
        if u16::from(args.brokers) + u16::from(args.spare) > u16::from(BROKERS_MAX) {
            return Err(PlanError::Spare {
                brokers: args.brokers,
                spare: args.spare,
            });
        }
        let running = u16::from(args.brokers);
        let brokers = running + u16::from(args.spare);
        let last = u32::from(args.port) + u32::from(METRICS_PORT_OFFSET) + u32::from(brokers) - 1;
        if args.port == 0 || last > u32::from(u16::MAX) {
            return Err(PlanError::Ports {
                port: args.port,
                brokers: args.brokers,
                last,
            });
        }
        let mut own_metrics = true;
        let mut keys = Vec::new();
        for o in &args.overrides {
            let (key, _) = parse_override(o).map_err(|_| PlanError::BadOverride(o.clone()))?;
            if RESERVED_KEYS.contains(&key.as_str()) {
                return Err(PlanError::ReservedOverride { key });
            }
            own_metrics &= key != KEEL_METRICS_LISTENER;
            keys.push(key);
        }
        let overrides = dev_defaults(args.brokers)
            .into_iter()
            .filter(|(key, _)| !keys.iter().any(|k| k == key))
            .map(|(key, value)| format!("{key}={value}"))
            .chain(args.overrides.iter().cloned())
            .collect();
        let mut brokers: Vec<PlannedBroker> = (1..=brokers)
            .map(|i| PlannedBroker {
                id: BrokerId(i32::from(i)),
                // Cannot overflow: `last` above is the largest sum and fits.
                client_port: args.port + (i - 1),
                peer_port: args.port + PEER_PORT_OFFSET + (i - 1),
                metrics_port: own_metrics.then(|| args.port + METRICS_PORT_OFFSET + (i - 1)),
                data_dir: args.data_dir.join(format!("broker-{i}")),
            })
            .collect();
        let spares = brokers.split_off(usize::from(running));
        let members = |bs: &[PlannedBroker]| {
            bs.iter()
                .map(|b| format!("{}@{HOST}:{}", b.id, b.peer_port))
                .collect::<Vec<_>>()
                .join(",")
        };
        let quorum_voters = (brokers.len() >= 2 || !spares.is_empty()).then(|| members(&brokers));
        let quorum_learners = (!spares.is_empty()).then(|| members(&spares));
        Ok(Plan {
            brokers,
            spares,
            quorum_voters,
            quorum_learners,
            overrides,
            secure: None,
        })
    }

    /// The plan of `--add-broker`: the first spare broker whose client port is free, with
    /// the layout's quorum; an error when there is none.
    pub fn adding(&self) -> Result<Plan, String> {
        if self.spares.is_empty() {
            return Err(
                "--add-broker needs a cluster started with room for it: start it with --spare N, \
                 and give --add-broker the same arguments"
                    .into(),
            );
        }
        let spare = self
            .spares
            .iter()
            .find(|b| TcpListener::bind((HOST, b.client_port)).is_ok())
            .ok_or_else(|| {
                format!(
                    "every spare broker's port is in use ({}): every spare was added already",
                    self.spares
                        .iter()
                        .map(|b| b.client_address())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?;
        Ok(Plan {
            brokers: vec![spare.clone()],
            spares: Vec::new(),
            quorum_voters: self.quorum_voters.clone(),
            quorum_learners: self.quorum_learners.clone(),
            overrides: self.overrides.clone(),
            secure: None,
        })
    }

    /// `controller.quorum.voters` (`1@127.0.0.1:9192,...`): None for a single broker without
    /// spares.
    pub fn voters(&self) -> Option<String> {
        self.quorum_voters.clone()
    }

    /// The arguments after the `keel` executable that start `broker`.
    pub fn start_args(&self, broker: &PlannedBroker) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "start".into(),
            "--node-id".into(),
            broker.id.to_string().into(),
            "--listeners".into(),
            format!("{}://{}", self.protocol(), broker.client_address()).into(),
            "--data-dir".into(),
            broker.data_dir.clone().into(),
        ];
        if let Some(secure) = &self.secure {
            args.extend(
                secure
                    .start_args(broker.id.0)
                    .into_iter()
                    .map(OsString::from),
            );
        }
        if let Some(voters) = self.voters() {
            args.push("--override".into());
            args.push(format!("{CONTROLLER_QUORUM_VOTERS}={voters}").into());
        }
        if let Some(learners) = &self.quorum_learners {
            args.push("--override".into());
            args.push(format!("{KEEL_QUORUM_LEARNERS}={learners}").into());
        }
        if let Some(port) = broker.metrics_port {
            args.push("--override".into());
            args.push(format!("{KEEL_METRICS_LISTENER}={HOST}:{port}").into());
        }
        for o in &self.overrides {
            args.push("--override".into());
            args.push(o.into());
        }
        args
    }

    /// The client listener's name and protocol.
    pub fn protocol(&self) -> &'static str {
        if self.secure.is_some() {
            crate::commands::dev_secure::PROTOCOL
        } else {
            "PLAINTEXT"
        }
    }

    /// Every port the layout listens on (the spares' too, so that they can be added later);
    /// peer ports only with a quorum.
    pub fn ports(&self) -> Vec<(u16, BrokerId, PortRole)> {
        let all = || self.brokers.iter().chain(&self.spares);
        let mut ports: Vec<_> = all()
            .map(|b| (b.client_port, b.id, PortRole::Client))
            .collect();
        if self.voters().is_some() {
            ports.extend(all().map(|b| (b.peer_port, b.id, PortRole::Peer)));
        }
        ports
    }

    /// `127.0.0.1:9092,127.0.0.1:9093,...`
    pub fn bootstrap_servers(&self) -> String {
        let addresses: Vec<String> = self.brokers.iter().map(|b| b.client_address()).collect();
        addresses.join(",")
    }

    /// What `keel dev` prints once every broker is ready; `pids[i]` is broker i+1's.
    pub fn summary(&self, pids: &[u32]) -> String {
        assert_eq!(pids.len(), self.brokers.len(), "one pid per broker");
        let n = self.brokers.len();
        let mut text = format!(
            "keel dev: {n} broker{} ready\n",
            if n == 1 { "" } else { "s" }
        );
        for (b, pid) in self.brokers.iter().zip(pids) {
            text.push_str(&format!(
                "  broker {}  {}  pid {pid}  data {}\n",
                b.id,
                b.client_address(),
                b.data_dir.display()
            ));
        }
        let first = self.brokers[0].client_address();
        text.push_str(&format!(
            "bootstrap servers: {}\n",
            self.bootstrap_servers()
        ));
        if self.secure.is_none() {
            text.push_str(&format!("try:  kcat -b {first} -L\n"));
            text.push_str(&format!(
                "      echo hello | kcat -b {first} -t demo -P && kcat -b {first} -t demo -C -e\n"
            ));
        }
        let topic_defaults: Vec<String> = self
            .overrides
            .iter()
            .filter_map(|o| parse_override(o).ok())
            .filter(|(key, _)| {
                [DEFAULT_REPLICATION_FACTOR, MIN_INSYNC_REPLICAS].contains(&key.as_str())
            })
            .map(|(key, value)| format!("{key}={value}"))
            .collect();
        if !topic_defaults.is_empty() {
            text.push_str(&format!("new topics: {}\n", topic_defaults.join(", ")));
        }
        if let Some(secure) = &self.secure {
            text.push_str(&secure.client_settings(&self.bootstrap_servers()));
        }
        text.push_str(&format!(
            "Ctrl-C stops {}.\n",
            if n == 1 { "the broker" } else { "all brokers" }
        ));
        text
    }
}

/// The line a broker prints once it serves (main.rs's `keel start`).
fn ready_prefix(id: BrokerId) -> String {
    format!("keel broker {id} ready on ")
}

/// `status 1` or `signal 9 (SIGKILL)`.
pub fn describe_exit(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("status {code}");
    }
    match status.signal() {
        Some(signal) => {
            let name = match signal {
                libc::SIGHUP => " (SIGHUP)",
                libc::SIGINT => " (SIGINT)",
                libc::SIGABRT => " (SIGABRT)",
                libc::SIGKILL => " (SIGKILL)",
                libc::SIGSEGV => " (SIGSEGV)",
                libc::SIGTERM => " (SIGTERM)",
                _ => "",
            };
            format!("signal {signal}{name}")
        }
        None => status.to_string(),
    }
}

/// A log line made readable in a prefixed stream: no terminal colour codes, and the leading
/// RFC 3339 timestamp (`2025-01-02T03:04:05.678901Z`) cut to the time of day (`03:04:05.678`).
pub fn readable_log_line(line: &str) -> Cow<'_, str> {
    let mut text: Cow<'_, str> = if line.contains('\u{1b}') {
        Cow::Owned(strip_ansi(line))
    } else {
        Cow::Borrowed(line)
    };
    if let Some(short) = shorten_timestamp(&text) {
        text = Cow::Owned(short);
    }
    text
}

/// Removes CSI sequences (ESC `[` parameters, final byte in `@`..=`~`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn shorten_timestamp(line: &str) -> Option<String> {
    let (stamp, rest) = line.split_once(' ')?;
    let b = stamp.as_bytes();
    // YYYY-MM-DDTHH:MM:SS then an optional fraction, then Z.
    let shaped = b.len() >= 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[b.len() - 1] == b'Z'
        && stamp.is_ascii();
    if !shaped {
        return None;
    }
    let time = &stamp[11..stamp.len() - 1];
    let time = match time.find('.') {
        Some(dot) => &time[..(dot + 4).min(time.len())],
        None => time,
    };
    Some(format!("{time} {}", rest.trim_start()))
}

/// Refuses the layout if one of its ports is taken, naming it.
pub fn check_ports_free(plan: &Plan) -> Result<(), String> {
    for (port, id, role) in plan.ports() {
        if let Err(e) = TcpListener::bind((HOST, port)) {
            let why = if e.kind() == std::io::ErrorKind::AddrInUse {
                "is in use".to_string()
            } else {
                format!("cannot be bound: {e}")
            };
            return Err(format!(
                "port {port} (broker {id}'s {role} port) on {HOST} {why}; choose other ports \
                 with --port (broker i uses PORT+i-1 and PORT+{PEER_PORT_OFFSET}+i-1)"
            ));
        }
    }
    Ok(())
}

/// Runs `keel dev` to the end: 0 after Ctrl-C or SIGTERM, 1 if the launch failed or every
/// broker exited on its own, 2 for bad arguments.
pub fn run(args: DevArgs) -> ExitCode {
    let plan = match Plan::new(&args) {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("keel dev: {e}");
            return ExitCode::from(2);
        }
    };
    if args.add_broker && args.secure {
        // A secured cluster's CA and passwords are made at its launch and not kept: an added
        // broker would get certificates of another CA.
        eprintln!("keel dev: --add-broker does not work with --secure yet");
        return ExitCode::from(2);
    }
    let mut plan = if args.add_broker {
        match plan.adding() {
            Ok(plan) => plan,
            Err(e) => {
                eprintln!("keel dev: {e}");
                return ExitCode::from(1);
            }
        }
    } else {
        plan
    };
    if let Err(e) = check_ports_free(&plan) {
        eprintln!("keel dev: {e}");
        return ExitCode::from(1);
    }
    if args.secure {
        let ids: Vec<i32> = plan.brokers.iter().map(|b| b.id.0).collect();
        match SecureDev::prepare(&args.data_dir, &ids) {
            Ok(secure) => plan.secure = Some(secure),
            Err(e) => {
                eprintln!("keel dev --secure: {e}");
                return ExitCode::from(1);
            }
        }
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("keel dev: cannot find the keel executable: {e}");
            return ExitCode::from(1);
        }
    };
    // One thread: children are spawned on it (PR_SET_PDEATHSIG follows the spawning thread).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("keel dev: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let signals = match Signals::new() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("keel dev: cannot handle signals: {e}");
                return ExitCode::from(1);
            }
        };
        Launcher::new(plan, signals).run(&exe).await
    })
}

/// Ctrl-C (SIGINT) and SIGTERM.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn new() -> std::io::Result<Signals> {
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    /// The next one, by name.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "Ctrl-C",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Event {
    /// Child `index` printed its ready line.
    Ready(usize),
    /// One of child `index`'s output streams reached its end.
    Closed(usize),
}

/// A spawned broker.
struct Running {
    id: BrokerId,
    pid: u32,
    /// None once reaped; only then may the pid be reused, so signals go only through this.
    process: Option<Child>,
    ready: bool,
    streams_open: u8,
}

impl Running {
    fn signal(&self, signal: libc::c_int) {
        if self.process.is_some() {
            // SAFETY: kill(2) on our own unreaped child (its pid cannot have been reused); no
            // memory is involved.
            unsafe {
                libc::kill(self.pid as libc::pid_t, signal);
            }
        }
    }

    /// Reaps the child if it has exited.
    fn try_reap(&mut self) -> Option<ExitStatus> {
        let status = self.process.as_mut()?.try_wait().ok()??;
        self.process = None;
        Some(status)
    }
}

/// How the loop ended.
enum Outcome {
    /// Ctrl-C or SIGTERM.
    Stopped,
    /// The launch failed or every broker is gone; the message says why.
    Failed,
}

struct Launcher {
    plan: Plan,
    signals: Signals,
    children: Vec<Running>,
    events: mpsc::Receiver<Event>,
    events_tx: mpsc::Sender<Event>,
}

impl Launcher {
    fn new(plan: Plan, signals: Signals) -> Launcher {
        let (events_tx, events) = mpsc::channel(EVENTS_PER_CHILD_MAX * plan.brokers.len());
        Launcher {
            plan,
            signals,
            children: Vec::new(),
            events,
            events_tx,
        }
    }

    async fn run(mut self, exe: &Path) -> ExitCode {
        let outcome = self.launch(exe).await;
        match outcome {
            Outcome::Stopped => {
                say_out("keel dev: stopped");
                ExitCode::SUCCESS
            }
            Outcome::Failed => ExitCode::from(1),
        }
    }

    async fn launch(&mut self, exe: &Path) -> Outcome {
        for index in 0..self.plan.brokers.len() {
            if let Err(e) = self.spawn(exe, index) {
                let b = &self.plan.brokers[index];
                say_err(&format!(
                    "keel dev: cannot start broker {}: {} start: {e}",
                    b.id,
                    exe.display()
                ));
                self.stop(ABORT_STOP_TIMEOUT).await;
                return Outcome::Failed;
            }
        }
        match self.wait_ready().await {
            Some(outcome) => outcome,
            None => {
                let pids: Vec<u32> = self.children.iter().map(|c| c.pid).collect();
                say_out(self.plan.summary(&pids).trim_end());
                self.serve().await
            }
        }
    }

    fn spawn(&mut self, exe: &Path, index: usize) -> std::io::Result<()> {
        let broker = &self.plan.brokers[index];
        let mut command = Command::new(exe);
        command
            .args(self.plan.start_args(broker))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Plain logs: they are prefixed and re-timestamped (readable_log_line).
            .env("NO_COLOR", "1")
            .process_group(0);
        die_with_parent(&mut command);
        let mut child = command.spawn()?;
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        let id = broker.id;
        self.children.push(Running {
            id,
            pid: child.id(),
            process: Some(child),
            ready: false,
            streams_open: 2,
        });
        if let Some(stdout) = stdout {
            let events = self.events_tx.clone();
            thread::spawn(move || forward(index, id, stdout, Stream::Stdout, events));
        }
        if let Some(stderr) = stderr {
            let events = self.events_tx.clone();
            thread::spawn(move || forward(index, id, stderr, Stream::Stderr, events));
        }
        Ok(())
    }

    /// Until every child is ready (None), or the launch has ended.
    async fn wait_ready(&mut self) -> Option<Outcome> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        while self.children.iter().any(|c| !c.ready) {
            tokio::select! {
                name = self.signals.recv() => {
                    say_err(&format!("keel dev: {name} before every broker was ready; stopping"));
                    self.stop(STOP_TIMEOUT).await;
                    return Some(Outcome::Stopped);
                }
                Some(event) = self.events.recv() => self.handle(event),
                _ = tick.tick() => {
                    if let Some((index, status)) = self.reap_one() {
                        let c = &self.children[index];
                        say_err(&format!(
                            "keel dev: broker {} (pid {}) exited with {} before it was ready; stopping the others",
                            c.id, c.pid, describe_exit(status)
                        ));
                        self.stop(ABORT_STOP_TIMEOUT).await;
                        return Some(Outcome::Failed);
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    let waiting: Vec<String> = self
                        .children
                        .iter()
                        .filter(|c| !c.ready)
                        .map(|c| c.id.to_string())
                        .collect();
                    say_err(&format!(
                        "keel dev: broker{} {} not ready within {} s (a broker of a cluster is ready \
                         once it has registered with the controller, which needs a majority of the \
                         voters); stopping every broker",
                        if waiting.len() == 1 { "" } else { "s" },
                        waiting.join(", "),
                        READY_TIMEOUT.as_secs()
                    ));
                    self.stop(ABORT_STOP_TIMEOUT).await;
                    return Some(Outcome::Failed);
                }
            }
        }
        None
    }

    /// Every broker is ready: report exits until a signal, or until none is left.
    async fn serve(&mut self) -> Outcome {
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        loop {
            tokio::select! {
                name = self.signals.recv() => {
                    say_err(&format!("keel dev: {name}: stopping every broker"));
                    self.stop(STOP_TIMEOUT).await;
                    return Outcome::Stopped;
                }
                Some(event) = self.events.recv() => self.handle(event),
                _ = tick.tick() => {
                    while let Some((index, status)) = self.reap_one() {
                        let c = &self.children[index];
                        let left = self.children.iter().filter(|c| c.process.is_some()).count();
                        let rest = if left == 0 { "no broker is left" } else { "the others keep running" };
                        say_err(&format!(
                            "keel dev: broker {} (pid {}) exited with {}; {rest}",
                            c.id, c.pid, describe_exit(status)
                        ));
                        if left == 0 {
                            self.drain_output().await;
                            return Outcome::Failed;
                        }
                    }
                }
            }
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Ready(index) => self.children[index].ready = true,
            Event::Closed(index) => {
                let c = &mut self.children[index];
                c.streams_open = c.streams_open.saturating_sub(1);
            }
        }
    }

    /// Reaps one child that has exited: its index and status.
    fn reap_one(&mut self) -> Option<(usize, ExitStatus)> {
        self.children
            .iter_mut()
            .enumerate()
            .find_map(|(index, c)| c.try_reap().map(|status| (index, status)))
    }

    /// SIGTERM to every live child; SIGKILL to those still there after `timeout` (or at once on
    /// a second Ctrl-C); then the last of their output.
    async fn stop(&mut self, timeout: Duration) {
        for c in &self.children {
            c.signal(libc::SIGTERM);
        }
        let deadline = Instant::now() + timeout;
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        let mut hurry = false;
        loop {
            while let Some((index, status)) = self.reap_one() {
                if !status.success() {
                    let c = &self.children[index];
                    say_err(&format!(
                        "keel dev: broker {} (pid {}) exited with {}",
                        c.id,
                        c.pid,
                        describe_exit(status)
                    ));
                }
            }
            if self.children.iter().all(|c| c.process.is_none()) {
                break;
            }
            tokio::select! {
                _ = tick.tick() => {}
                _ = tokio::time::sleep_until(deadline) => break,
                name = self.signals.recv() => {
                    say_err(&format!("keel dev: {name} again: killing every broker now"));
                    hurry = true;
                    break;
                }
            }
        }
        for c in &mut self.children {
            if let Some(mut process) = c.process.take() {
                if !hurry {
                    say_err(&format!(
                        "keel dev: broker {} (pid {}) did not exit within {} s of SIGTERM; killing it",
                        c.id,
                        c.pid,
                        timeout.as_secs()
                    ));
                }
                let _ = process.kill();
                let _ = process.wait();
            }
        }
        self.drain_output().await;
    }

    /// Waits (bounded) until every reaped child's output has been forwarded.
    async fn drain_output(&mut self) {
        let deadline = Instant::now() + OUTPUT_DRAIN_TIMEOUT;
        while self.children.iter().any(|c| c.streams_open > 0) {
            tokio::select! {
                Some(event) = self.events.recv() => self.handle(event),
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

/// Forwards one output stream of child `index` line by line until it ends, sending `Ready`
/// on the ready line and `Closed` at the end.
fn forward(
    index: usize,
    id: BrokerId,
    stream: impl Read,
    kind: Stream,
    events: mpsc::Sender<Event>,
) {
    let ready = ready_prefix(id);
    let mut ready_sent = false;
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader
            .by_ref()
            .take(LINE_BYTES_MAX)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let text = String::from_utf8_lossy(&line);
        let text = text.trim_end_matches(['\n', '\r']);
        match kind {
            Stream::Stdout => {
                say_out(&format!("[broker {id}] {text}"));
                if !ready_sent && text.starts_with(&ready) {
                    ready_sent = true;
                    let _ = events.blocking_send(Event::Ready(index));
                }
            }
            Stream::Stderr => say_err(&format!("[broker {id}] {}", readable_log_line(text))),
        }
    }
    let _ = events.blocking_send(Event::Closed(index));
}

/// One whole line to stdout (errors ignored: a closed stdout must not stop the launcher).
fn say_out(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
}

/// One whole line to stderr.
fn say_err(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// Makes the child `command` starts get SIGTERM when this process dies (Linux), so that a
/// launcher killed with SIGKILL leaves no brokers behind.
pub fn die_with_parent(command: &mut Command) {
    #[cfg(target_os = "linux")]
    {
        let parent = std::process::id();
        // SAFETY: the closure runs in the forked child before exec; prctl(2) and getppid(2)
        // are async-signal-safe, and it allocates nothing and touches no shared state.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The launcher died before prctl took effect: do not run orphaned.
                if libc::getppid() as u32 != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(brokers: u8, port: u16, overrides: &[&str]) -> DevArgs {
        DevArgs {
            brokers,
            port,
            data_dir: PathBuf::from("keel-data"),
            overrides: overrides.iter().map(|s| s.to_string()).collect(),
            spare: 0,
            add_broker: false,
            secure: false,
        }
    }

    /// `--spare 1`: broker 4 is a learner every broker knows, its ports are checked free at
    /// the start, and `--add-broker` runs it alone, with the same quorum.
    #[test]
    fn spare_brokers_are_learners_that_add_broker_starts() {
        let mut a = args(3, 19000, &[]);
        a.spare = 1;
        let plan = Plan::new(&a).unwrap();
        assert_eq!(plan.brokers.len(), 3);
        assert_eq!(plan.spares.len(), 1);
        assert_eq!(plan.spares[0].id, BrokerId(4));
        assert_eq!(plan.spares[0].client_port, 19003);
        assert_eq!(plan.spares[0].peer_port, 19103);
        let start = strings(plan.start_args(&plan.brokers[0]));
        assert!(start.contains(&"keel.quorum.learners=4@127.0.0.1:19103".to_string()));
        assert!(plan
            .ports()
            .contains(&(19003, BrokerId(4), PortRole::Client)));
        assert!(plan.ports().contains(&(19103, BrokerId(4), PortRole::Peer)));
        let adding = plan.adding().unwrap();
        assert_eq!(adding.brokers, plan.spares);
        assert_eq!(
            strings(adding.start_args(&adding.brokers[0])),
            strings(plan.start_args(&plan.spares[0]))
        );
        assert!(strings(adding.start_args(&adding.brokers[0])).contains(
            &"controller.quorum.voters=1@127.0.0.1:19100,2@127.0.0.1:19101,3@127.0.0.1:19102"
                .to_string()
        ));
        // No spare: nothing to add. Too many: refused.
        assert!(Plan::new(&args(3, 19000, &[])).unwrap().adding().is_err());
        a.spare = 7;
        assert_eq!(
            Plan::new(&a),
            Err(PlanError::Spare {
                brokers: 3,
                spare: 7
            })
        );
        // A single broker with a spare runs a quorum of one voter.
        let mut one = args(1, 19000, &[]);
        one.spare = 1;
        assert_eq!(
            Plan::new(&one).unwrap().voters().as_deref(),
            Some("1@127.0.0.1:19100")
        );
    }

    fn strings(args: Vec<OsString>) -> Vec<String> {
        args.into_iter()
            .map(|a| a.into_string().expect("utf-8"))
            .collect()
    }

    #[test]
    fn three_brokers_by_default_on_9092_with_peers_on_9192() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            dev: DevArgs,
        }
        let cli = Cli::parse_from(["keel"]);
        let plan = Plan::new(&cli.dev).unwrap();
        let layout: Vec<_> = plan
            .brokers
            .iter()
            .map(|b| {
                let dir = b.data_dir.clone();
                (b.id.0, b.client_port, b.peer_port, b.metrics_port, dir)
            })
            .collect();
        assert_eq!(
            layout,
            vec![
                (
                    1,
                    9092,
                    9192,
                    Some(9292),
                    PathBuf::from("keel-data/broker-1")
                ),
                (
                    2,
                    9093,
                    9193,
                    Some(9293),
                    PathBuf::from("keel-data/broker-2")
                ),
                (
                    3,
                    9094,
                    9194,
                    Some(9294),
                    PathBuf::from("keel-data/broker-3")
                ),
            ]
        );
        assert_eq!(
            plan.voters().as_deref(),
            Some("1@127.0.0.1:9192,2@127.0.0.1:9193,3@127.0.0.1:9194")
        );
        assert_eq!(
            plan.bootstrap_servers(),
            "127.0.0.1:9092,127.0.0.1:9093,127.0.0.1:9094"
        );
        assert!(Cli::try_parse_from(["keel", "--brokers", "0"]).is_err());
        assert!(Cli::try_parse_from(["keel", "--brokers", "10"]).is_err());
        assert!(Cli::try_parse_from(["keel", "--brokers", "9"]).is_ok());
    }

    #[test]
    fn start_args_name_the_broker_its_listener_data_and_every_voter() {
        let plan = Plan::new(&args(
            3,
            19000,
            &["num.partitions=3", "min.insync.replicas=2"],
        ))
        .unwrap();
        assert_eq!(
            strings(plan.start_args(&plan.brokers[1])),
            [
                "start",
                "--node-id",
                "2",
                "--listeners",
                "PLAINTEXT://127.0.0.1:19001",
                "--data-dir",
                "keel-data/broker-2",
                "--override",
                "controller.quorum.voters=1@127.0.0.1:19100,2@127.0.0.1:19101,3@127.0.0.1:19102",
                "--override",
                "keel.metrics.listener=127.0.0.1:19201",
                "--override",
                "default.replication.factor=3",
                "--override",
                "num.partitions=3",
                "--override",
                "min.insync.replicas=2",
            ]
        );
    }

    /// A newcomer's `keel dev` survives any one broker's death: new topics get three replicas
    /// and need two in sync, unless an override says otherwise; one broker keeps Kafka's
    /// defaults, two replicate on both without requiring both.
    #[test]
    fn topics_of_a_dev_cluster_are_replicated_unless_overridden() {
        let overrides = |brokers: u8, given: &[&str]| {
            let plan = Plan::new(&args(brokers, 19000, given)).unwrap();
            assert_eq!(plan.brokers.len(), usize::from(brokers));
            plan.overrides
        };
        assert_eq!(
            overrides(3, &[]),
            ["default.replication.factor=3", "min.insync.replicas=2"]
        );
        assert_eq!(
            overrides(5, &[]),
            ["default.replication.factor=3", "min.insync.replicas=2"]
        );
        assert_eq!(overrides(2, &[]), ["default.replication.factor=2"]);
        assert!(overrides(1, &[]).is_empty());
        assert_eq!(
            overrides(3, &["default.replication.factor=1"]),
            ["min.insync.replicas=2", "default.replication.factor=1"]
        );
        assert_eq!(
            overrides(3, &["min.insync.replicas=1", "num.partitions=6"]),
            [
                "default.replication.factor=3",
                "min.insync.replicas=1",
                "num.partitions=6"
            ]
        );
    }

    #[test]
    fn one_broker_runs_without_a_quorum_and_uses_no_peer_port() {
        let plan = Plan::new(&args(1, 9092, &[])).unwrap();
        assert_eq!(plan.voters(), None);
        assert_eq!(
            strings(plan.start_args(&plan.brokers[0])),
            [
                "start",
                "--node-id",
                "1",
                "--listeners",
                "PLAINTEXT://127.0.0.1:9092",
                "--data-dir",
                "keel-data/broker-1",
                "--override",
                "keel.metrics.listener=127.0.0.1:9292",
            ]
        );
        assert_eq!(plan.ports(), vec![(9092, BrokerId(1), PortRole::Client)]);
        assert_eq!(
            plan.summary(&[77]),
            "keel dev: 1 broker ready\n  broker 1  127.0.0.1:9092  pid 77  data keel-data/broker-1\n\
             bootstrap servers: 127.0.0.1:9092\ntry:  kcat -b 127.0.0.1:9092 -L\n      \
             echo hello | kcat -b 127.0.0.1:9092 -t demo -P && kcat -b 127.0.0.1:9092 -t demo -C -e\n\
             Ctrl-C stops the broker.\n"
        );
    }

    #[test]
    fn ports_to_check_are_every_client_and_peer_port() {
        let plan = Plan::new(&args(2, 9092, &[])).unwrap();
        assert_eq!(
            plan.ports(),
            vec![
                (9092, BrokerId(1), PortRole::Client),
                (9093, BrokerId(2), PortRole::Client),
                (9192, BrokerId(1), PortRole::Peer),
                (9193, BrokerId(2), PortRole::Peer),
            ]
        );
    }

    #[test]
    fn ports_past_65535_or_port_zero_are_refused() {
        assert!(Plan::new(&args(9, 65535 - 208, &[])).is_ok());
        assert_eq!(
            Plan::new(&args(9, 65535 - 207, &[])),
            Err(PlanError::Ports {
                port: 65328,
                brokers: 9,
                last: 65536
            })
        );
        assert!(matches!(
            Plan::new(&args(3, 0, &[])),
            Err(PlanError::Ports { port: 0, .. })
        ));
        assert_eq!(Plan::new(&args(0, 9092, &[])), Err(PlanError::Brokers(0)));
        assert_eq!(Plan::new(&args(10, 9092, &[])), Err(PlanError::Brokers(10)));
    }

    #[test]
    fn overrides_must_be_key_value_and_not_a_setting_keel_dev_owns() {
        assert_eq!(
            Plan::new(&args(3, 9092, &["num.partitions"])),
            Err(PlanError::BadOverride("num.partitions".into()))
        );
        for key in RESERVED_KEYS {
            assert_eq!(
                Plan::new(&args(3, 9092, &[&format!("{key}=x")])),
                Err(PlanError::ReservedOverride { key: key.into() })
            );
        }
        assert!(Plan::new(&args(3, 9092, &["broker.session.timeout.ms=3000"])).is_ok());
    }

    #[test]
    fn a_metrics_listener_override_replaces_the_per_broker_ports() {
        let plan = Plan::new(&args(2, 9092, &["keel.metrics.listener="])).unwrap();
        assert!(plan.brokers.iter().all(|b| b.metrics_port.is_none()));
        let start = strings(plan.start_args(&plan.brokers[0]));
        assert_eq!(
            start
                .iter()
                .filter(|a| a.starts_with("keel.metrics.listener"))
                .collect::<Vec<_>>(),
            ["keel.metrics.listener="]
        );
    }

    #[test]
    fn summary_lists_every_broker_and_the_bootstrap_servers() {
        let plan = Plan::new(&args(3, 9092, &[])).unwrap();
        let text = plan.summary(&[11, 12, 13]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "keel dev: 3 brokers ready");
        assert_eq!(
            lines[1],
            "  broker 1  127.0.0.1:9092  pid 11  data keel-data/broker-1"
        );
        assert_eq!(
            lines[3],
            "  broker 3  127.0.0.1:9094  pid 13  data keel-data/broker-3"
        );
        assert_eq!(
            lines[4],
            "bootstrap servers: 127.0.0.1:9092,127.0.0.1:9093,127.0.0.1:9094"
        );
        assert_eq!(
            lines[7],
            "new topics: default.replication.factor=3, min.insync.replicas=2"
        );
        assert_eq!(lines[8], "Ctrl-C stops all brokers.");
    }

    #[test]
    fn log_lines_lose_colour_codes_and_the_date() {
        assert_eq!(
            readable_log_line(
                "\u{1b}[2m2025-01-02T03:04:05.678901Z\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m \u{1b}[2mkeel_node::broker\u{1b}[0m\u{1b}[2m:\u{1b}[0m opened"
            ),
            "03:04:05.678 INFO keel_node::broker: opened"
        );
        assert_eq!(
            readable_log_line("2025-01-02T03:04:05Z  WARN x: y"),
            "03:04:05 WARN x: y"
        );
        assert_eq!(readable_log_line("keel: bad config"), "keel: bad config");
        assert_eq!(readable_log_line(""), "");
    }

    #[test]
    fn exit_statuses_read_as_status_or_signal() {
        assert_eq!(describe_exit(ExitStatus::from_raw(0)), "status 0");
        assert_eq!(describe_exit(ExitStatus::from_raw(2 << 8)), "status 2");
        assert_eq!(
            describe_exit(ExitStatus::from_raw(libc::SIGKILL)),
            "signal 9 (SIGKILL)"
        );
    }

    #[test]
    fn a_port_in_use_is_named() {
        let taken = TcpListener::bind((HOST, 0)).unwrap();
        let port = taken.local_addr().unwrap().port();
        let plan = Plan {
            brokers: vec![PlannedBroker {
                id: BrokerId(1),
                client_port: port,
                peer_port: port,
                metrics_port: None,
                data_dir: PathBuf::from("d"),
            }],
            spares: Vec::new(),
            quorum_voters: None,
            quorum_learners: None,
            overrides: Vec::new(),
            secure: None,
        };
        let e = check_ports_free(&plan).unwrap_err();
        assert!(
            e.starts_with(&format!(
                "port {port} (broker 1's client port) on 127.0.0.1 is in use"
            )),
            "{e}"
        );
    }
}
