//! `keel start`: one broker process. It reads the broker's settings (a TOML file of Kafka's
//! names, `--override`s, flags), opens the [`Broker`](crate::broker::Broker) and serves it:
//! the client listener, the peer transport, the metrics endpoint, the retention and
//! checkpoint timers, until SIGTERM or Ctrl-C, then a clean shutdown: a controlled shutdown
//! (`Broker::controlled_shutdown`), then every partition synced and checkpointed.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::broker::{Broker, Settings};
use crate::cluster::ClusterSettings;
use crate::config::{parse_override, BrokerConfig};
use crate::metrics::Metrics;
use crate::peer::PeerSecurity;
use crate::security::peer::{PeerSasl, PeerTls};
use crate::security::sasl::{SaslConfig, SaslUsers};
use crate::security::{scram, tls, ListenerSecurity, Principal, SecurityProtocol};
use crate::wire::{ConnectionLimits, WireConfig, WireServer};
use keel_core::controller::Endpoint;
use rustls_pki_types::ServerName;

#[derive(clap::Args, Clone, Default)]
pub struct StartArgs {
    /// A TOML file of broker settings with Kafka's names (see docs/keel.example.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// A setting `key=value` on top of the file (repeatable), e.g. `--override num.partitions=3`.
    #[arg(long = "override", value_name = "KEY=VALUE")]
    overrides: Vec<String>,
    /// This broker's id (`node.id`).
    #[arg(long)]
    node_id: Option<i32>,
    /// Where clients connect, e.g. PLAINTEXT://127.0.0.1:9092 (`listeners`).
    #[arg(long)]
    listeners: Option<String>,
    /// The data directory (`log.dirs`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

impl StartArgs {
    /// The file, then `--override`s, then the dedicated flags.
    fn load(&self) -> Result<BrokerConfig, String> {
        let mut overrides = Vec::new();
        for o in &self.overrides {
            overrides.push(parse_override(o).map_err(|e| e.to_string())?);
        }
        if let Some(id) = self.node_id {
            overrides.push(("node.id".into(), id.to_string()));
        }
        if let Some(l) = &self.listeners {
            overrides.push(("listeners".into(), l.clone()));
        }
        if let Some(d) = &self.data_dir {
            overrides.push(("log.dirs".into(), d.display().to_string()));
        }
        if self.config.is_none()
            && self.node_id.is_none()
            && !self.overrides.iter().any(|o| o.starts_with("node.id="))
        {
            overrides.insert(0, ("node.id".into(), "1".into()));
        }
        BrokerConfig::load(self.config.as_deref(), &overrides).map_err(|e| e.to_string())
    }
}

/// glibc's malloc serves allocations from this size up with fresh `mmap`s, each faulted in and
/// zeroed page by page and unmapped when freed. A broker allocates buffers of up to a
/// megabyte or so all the time (read windows, request and peer frames): below this size they
/// come from the heap and reuse its warm pages.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MALLOC_MMAP_THRESHOLD_BYTES: libc::c_int = 16 << 20;
/// Free memory glibc's malloc keeps at the top of a heap instead of returning it to the
/// kernel (which would fault it in again on the next large allocation).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MALLOC_TRIM_THRESHOLD_BYTES: libc::c_int = 128 << 20;

/// Sets glibc's malloc up for a broker's allocations (see [`MALLOC_MMAP_THRESHOLD_BYTES`]).
/// In profiles before this, page faults on freshly mapped buffers took about 10% of the
/// brokers' CPU at acks=all.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before any other thread
    // exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD_BYTES);
        libc::mallopt(libc::M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD_BYTES);
    }
}

/// A failed invariant stops the whole broker, on whatever thread it fails (a runtime task, a
/// sync thread): a broker that went on serving after one task died could hold a partition
/// half-updated under a poisoned lock. The default hook prints the message and where it
/// failed, then the process aborts; the cluster sees a broker that stopped, which it
/// tolerates, and its recovery on restart starts from what is on disk.
fn abort_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        eprintln!("keel: a failed invariant or a bug stopped the broker (abort)");
        std::process::abort();
    }));
}

/// Debug builds only: `KEEL_TEST_PANIC_AFTER_MS=N` panics in a runtime task N ms after start,
/// so that a test can see the panic stop the broker.
#[cfg(debug_assertions)]
fn test_panic_after_start() {
    if let Some(ms) = std::env::var("KEEL_TEST_PANIC_AFTER_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
            panic!("KEEL_TEST_PANIC_AFTER_MS: a panic in a task, on purpose");
        });
    }
}

pub fn run(args: StartArgs) -> ExitCode {
    tune_malloc();
    abort_on_panic();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KEEL_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    let config = match args.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("keel: {e}");
            return ExitCode::from(2);
        }
    };
    let securities = match listener_securities(&config) {
        Ok(s) => s,
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
        #[cfg(debug_assertions)]
        test_panic_after_start();
        // Every listener is bound before the broker registers, so that a port 0 (pick any)
        // is advertised as the port actually bound.
        let mut bound = Vec::new();
        for (listener, security) in config.listeners.iter().zip(securities) {
            let addr = listener.bind_address();
            let socket = match tokio::net::TcpListener::bind(&addr).await {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("keel: cannot listen on {addr} ({}): {e}", listener.name);
                    return ExitCode::from(1);
                }
            };
            let Ok(port) = socket.local_addr().map(|a| a.port()) else {
                eprintln!("keel: the listener on {addr} has no address");
                return ExitCode::from(1);
            };
            bound.push((listener.name.clone(), port, socket, security));
        }
        let bound_port = |name: &str| {
            bound
                .iter()
                .find(|(n, ..)| n == name)
                .map_or(0, |(_, port, ..)| *port)
        };
        let advertised_listeners: Vec<Endpoint> = config
            .advertised_listeners
            .iter()
            .map(|l| Endpoint {
                name: l.name.clone(),
                host: l.host.clone(),
                port: i32::from(if l.port == 0 {
                    bound_port(&l.name)
                } else {
                    l.port
                }),
                security_protocol: i32::from(
                    config
                        .listener_protocol(&l.name)
                        .map_or(0, SecurityProtocol::id),
                ),
            })
            .collect();
        // The first listener's address is the one the ready line names.
        let Some(first) = advertised_listeners.first().cloned() else {
            eprintln!("keel: no listener");
            return ExitCode::from(2);
        };
        let (advertised_host, advertised_port) = (first.host.clone(), first.port as u16);
        let settings = Settings {
            node_id: config.node_id,
            data_dir: config.data_dir.clone(),
            advertised_host: advertised_host.clone(),
            advertised_port,
            advertised_listeners: advertised_listeners.clone(),
            auto_create_topics: config.auto_create_topics,
            topic_defaults: config.topic_creation_defaults(),
            topic_config_defaults: config.topic_defaults(),
            cluster: match cluster_settings(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("keel: {e}");
                    return ExitCode::from(2);
                }
            },
            replica_lag_time_max_ms: config.replica_lag_time_ms_max,
            replica_fetch_bytes_max: config.replica_fetch_bytes_max.max(0) as usize,
            replica_fetch_backoff_ms: config.replica_fetch_backoff_ms,
            disk: Default::default(),
            offsets_topic_partitions: config.offsets_topic_partitions,
            offsets_topic_replication_factor: config.offsets_topic_replication_factor,
            offsets_topic_segment_bytes: config.offsets_topic_segment_bytes,
            group: keel_core::group::GroupConfig {
                initial_rebalance_delay_ms: config.group_initial_rebalance_delay_ms,
                offsets_retention_ms: config.offsets_retention_ms,
                ..Default::default()
            },
            transactions: config.transactions.clone(),
            authorizer: config.authorizer.clone(),
        };
        let metrics = Arc::new(Metrics::new());
        if let Some(m) = &config.metrics_listener {
            match tokio::net::TcpListener::bind(m.address()).await {
                Ok(l) => {
                    tracing::info!(
                        "metrics on http://{}/metrics",
                        l.local_addr().map_or(m.address(), |a| a.to_string())
                    );
                    tokio::spawn(crate::metrics::serve(l, metrics.clone()));
                }
                Err(e) => {
                    tracing::warn!("metrics endpoint {}: {e} (serving without it)", m.address())
                }
            }
        }
        if settings.cluster.is_multi_node() {
            tracing::info!(
                "joining the cluster: {} voters",
                settings.cluster.voters.len()
            );
        }
        let broker = match Broker::open(settings, metrics).await {
            Ok(b) => b,
            Err(e) => {
                eprintln!("keel: {e}");
                return ExitCode::from(1);
            }
        };
        // SASL checks the SCRAM credentials of the metadata log too (KIP-554).
        if let Some(sasl) = bound.iter().find_map(|(.., security)| security.sasl()) {
            sasl.users
                .attach_metadata(crate::broker::scram_lookup(&broker));
        }
        let apis = crate::broker::served_apis();
        let wire_config = WireConfig {
            socket_request_max_bytes: config.socket_request_bytes_max.max(0) as usize,
            failed_authentication_delay: Duration::from_millis(
                config.failed_authentication_delay_ms.max(0) as u64,
            ),
            connections_max_reauth: (config.connections_max_reauth_ms > 0)
                .then(|| Duration::from_millis(config.connections_max_reauth_ms as u64)),
            connections_max_idle: (config.connections_max_idle_ms > 0)
                .then(|| Duration::from_millis(config.connections_max_idle_ms as u64)),
            // One set of limits for every listener (cloned with the configuration).
            limits: Arc::new(
                ConnectionLimits::new(
                    config.max_connections.max(1) as usize,
                    config.max_connections_per_ip.max(1) as usize,
                )
                .with_queued_request_bytes(
                    config
                        .queued_request_bytes_max
                        .map(|b| usize::try_from(b).unwrap_or(usize::MAX)),
                ),
            ),
            ..WireConfig::default()
        };
        let mut serving = Vec::new();
        for (name, port, socket, security) in bound {
            tracing::info!(
                "listener {name} ({}) on port {port}, advertised as {}",
                security.protocol(),
                advertised_listeners
                    .iter()
                    .find(|e| e.name == name)
                    .map_or("nothing".into(), |e| format!("{}:{}", e.host, e.port))
            );
            let server = WireServer::for_listener(
                broker.clone(),
                apis.clone(),
                wire_config.clone(),
                Some(broker.metrics().clone()),
                security,
            );
            serving.push(tokio::spawn(server.serve(socket)));
        }
        tokio::spawn(timers(
            broker.clone(),
            config.retention_check_interval_ms,
            config.checkpoint_interval_ms,
        ));
        #[cfg(not(madsim))]
        crate::broker::cleaner::spawn(&broker, &config.cleaner);
        println!(
            "keel broker {} ready on {advertised_host}:{advertised_port}",
            config.node_id,
        );
        use std::io::Write;
        let _ = std::io::stdout().flush();
        shutdown_signal().await;
        // Clients are served during the controlled shutdown: they learn the new leaders from
        // this broker's NOT_LEADER_OR_FOLLOWER answers and metadata.
        tracing::info!("shutting down: moving leaderships away, then syncing every partition");
        if config.controlled_shutdown_wait_ms_max > 0 {
            broker
                .controlled_shutdown(Duration::from_millis(
                    config.controlled_shutdown_wait_ms_max as u64,
                ))
                .await;
        }
        for task in &serving {
            task.abort();
        }
        broker.checkpoint_all();
        tracing::info!("shut down cleanly");
        ExitCode::SUCCESS
    })
}

/// What each listener serves, in `listeners` order: the TLS configuration (PEM files read
/// here, once) and the SASL users (salted here, once) shared by the listeners that need them.
fn listener_securities(config: &BrokerConfig) -> Result<Vec<ListenerSecurity>, String> {
    let protocols: Vec<(String, SecurityProtocol)> = config
        .listeners
        .iter()
        .map(|l| {
            let protocol = config
                .listener_protocol(&l.name)
                .ok_or_else(|| format!("listener {} has no security protocol", l.name))?;
            Ok((l.name.clone(), protocol))
        })
        .collect::<Result<_, String>>()?;
    let tls = match &config.tls {
        Some(settings) if protocols.iter().any(|(_, p)| p.uses_tls()) => {
            Some(tls::server_config(settings).map_err(|e| e.to_string())?)
        }
        _ => None,
    };
    let sasl = if protocols.iter().any(|(_, p)| p.uses_sasl()) {
        let users = salted_users(config);
        Some(Arc::new(SaslConfig {
            mechanisms: config.sasl_enabled_mechanisms.clone(),
            users,
        }))
    } else {
        None
    };
    protocols
        .into_iter()
        .map(|(name, protocol)| ListenerSecurity::new(&name, protocol, tls.clone(), sasl.clone()))
        .collect()
}

/// The quorum layout from `controller.quorum.voters` and `keel.quorum.learners`, with
/// addresses resolved.
fn cluster_settings(config: &BrokerConfig) -> Result<ClusterSettings, String> {
    use std::net::ToSocketAddrs;
    let resolve = |voters: &[crate::config::QuorumVoter]| {
        voters
            .iter()
            .map(|v| {
                let address = v
                    .address
                    .address()
                    .to_socket_addrs()
                    .ok()
                    .and_then(|mut a| a.next())
                    .ok_or_else(|| format!("cannot resolve the address of quorum member {v}"))?;
                Ok((v.id, address))
            })
            .collect::<Result<Vec<_>, String>>()
    };
    Ok(ClusterSettings {
        peer_security: Arc::new(peer_security(config)?),
        voters: resolve(&config.controller_quorum_voters)?,
        learners: resolve(&config.quorum_learners)?,
        session_timeout_ms: config.broker_session_timeout_ms.max(1) as u64,
        heartbeat_interval_ms: config.broker_heartbeat_interval_ms.max(1) as u64,
        unclean: config.unclean_election(),
        leader_balance: config.auto_leader_rebalance.then(|| {
            (
                config.leader_imbalance_check_interval_s.max(1) as u64 * 1000,
                config.leader_imbalance_per_broker_percentage.clamp(0, 100) as u32,
            )
        }),
    })
}

/// How the peer transport opens connections: as the protocol of `inter.broker.listener.name`
/// says (docs/security.md, "Between brokers"); plaintext without one.
fn peer_security(config: &BrokerConfig) -> Result<PeerSecurity, String> {
    let Some(listener) = &config.inter_broker_listener_name else {
        return Ok(PeerSecurity::plaintext());
    };
    let protocol = config
        .listener_protocol(listener)
        .ok_or_else(|| format!("inter.broker.listener.name {listener} is not a listener"))?;
    let mut own_certificate = None;
    let tls = match &config.tls {
        Some(settings) if protocol.uses_tls() => {
            let (server, client, own) = tls::peer_configs(settings).map_err(|e| e.to_string())?;
            own_certificate = own.map(Principal::from_text);
            let server_names = config
                .controller_quorum_voters
                .iter()
                .chain(&config.quorum_learners)
                .map(|v| {
                    let name = ServerName::try_from(v.address.host.clone()).map_err(|e| {
                        format!(
                            "quorum member {v}: {:?} is not a TLS name: {e}",
                            v.address.host
                        )
                    })?;
                    Ok((v.id, name))
                })
                .collect::<Result<_, String>>()?;
            Some(PeerTls {
                server,
                client,
                server_names,
            })
        }
        _ => None,
    };
    let sasl = match &config.inter_broker_sasl {
        Some((mechanism, user)) if protocol.uses_sasl() => {
            let password = config
                .sasl_users
                .iter()
                .find(|u| &u.name == user)
                .map(|u| u.password.clone())
                .ok_or_else(|| format!("keel.inter.broker.sasl.username {user} has no password"))?;
            Some(PeerSasl {
                mechanism: *mechanism,
                user: user.clone(),
                password,
                users: salted_users(config),
            })
        }
        _ => None,
    };
    PeerSecurity::new(
        listener,
        protocol,
        tls,
        sasl,
        own_certificate,
        &config.super_users,
    )
}

/// The users of `keel.sasl.users`, salted and derived (here, once).
fn salted_users(config: &BrokerConfig) -> SaslUsers {
    let mut rng = rand::thread_rng();
    SaslUsers::from_passwords(
        config
            .sasl_users
            .iter()
            .map(|u| (u.name.as_str(), u.password.as_str())),
        scram::ITERATIONS_MIN,
        || {
            use rand::RngCore;
            let mut salt = vec![0; scram::SALT_BYTES];
            rng.fill_bytes(&mut salt);
            salt
        },
    )
}

/// Retention and checkpoints on their timers.
async fn timers(broker: Arc<Broker>, retention_ms: i64, checkpoint_ms: i64) {
    let mut retention = tokio::time::interval(Duration::from_millis(retention_ms.max(100) as u64));
    let mut checkpoint =
        tokio::time::interval(Duration::from_millis(checkpoint_ms.max(100) as u64));
    loop {
        tokio::select! {
            _ = retention.tick() => broker.apply_retention(),
            _ = checkpoint.tick() => broker.checkpoint_all(),
        }
    }
}

async fn shutdown_signal() {
    // SIGTERM or Ctrl-C. madsim simulates neither unix signals nor a terminal.
    #[cfg(all(unix, not(madsim)))]
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
    #[cfg(any(not(unix), madsim))]
    let _ = tokio::signal::ctrl_c().await;
}
