//! The small async Kafka client the `keel` CLI's commands talk through, over the kafka-protocol
//! crate's message types. It speaks to any Kafka-compatible cluster, keel or Kafka.
//!
//! What it owns: one TCP connection per broker address (one request in flight on each, so a
//! response always answers the request just written), the versions each broker advertised,
//! and the brokers the last Metadata response named.
//!
//! What always holds:
//! - Every wait is bounded by the client's timeout: connecting, writing, reading. A request
//!   that timed out or broke drops its connection, so a late response is never taken for the
//!   answer to a later request.
//! - Each API is sent at the highest version both the client ([`CLIENT_VERSIONS`], the versions
//!   whose fields the commands fill) and the broker support; none in common is an error that
//!   names the API, never a request the broker cannot read.
//! - A response is decoded whole: a size above [`RESPONSE_BYTES_MAX`], a header that answers
//!   another request or bytes left after the body are errors, not guesses.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, FindCoordinatorRequest, MetadataRequest, MetadataResponse,
    RequestHeader, RequestKind, ResponseHeader, ResponseKind, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use keel_core::error_code as code;

use super::CliError;

/// Per API, the versions the commands can fill (lowest, highest). The lowest is the first
/// version with every field they set (Metadata v4: allow_auto_topic_creation); the highest
/// the last before a layout change they do not speak (Fetch v13: topic ids; DeleteTopics v6:
/// topics by id; OffsetFetch v8: batched groups; FindCoordinator v4: batched keys).
pub const CLIENT_VERSIONS: [(ApiKey, i16, i16); 22] = [
    (ApiKey::Metadata, 4, 12),
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 5),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::FindCoordinator, 1, 3),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::OffsetFetch, 2, 7),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::DescribeQuorum, 0, 2),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::ElectLeaders, 1, 2),
    (ApiKey::AlterPartitionReassignments, 0, 0),
    (ApiKey::ListPartitionReassignments, 0, 0),
    (ApiKey::UnregisterBroker, 0, 0),
];

/// The ApiVersions version sent first on each connection (v0 again if the broker refuses it).
const API_VERSIONS_VERSION: i16 = 3;

/// The largest response accepted: a Fetch is asked for at most 64 MiB (see `consume`).
pub const RESPONSE_BYTES_MAX: usize = 128 << 20;

const CLIENT_ID: &str = "keel-cli";

/// UNSUPPORTED_VERSION, which an ApiVersions answer carries for a version the broker does not
/// speak (not in core's table: keel answers it only from the wire layer).
const UNSUPPORTED_VERSION: i16 = 35;

/// One broker connection.
pub struct Connection {
    pub addr: String,
    stream: TcpStream,
    /// api key -> (min, max) the broker advertises.
    versions: BTreeMap<i16, (i16, i16)>,
    correlation_id: i32,
    timeout: Duration,
}

impl Connection {
    /// Connects to `addr` and asks for its API versions.
    pub async fn open(addr: &str, timeout: Duration) -> Result<Connection, CliError> {
        let unreachable = |why: String| {
            CliError::failed(format!(
                "cannot reach broker {addr} ({why}); is the cluster running? Point --brokers \
                 (or KEEL_BROKERS) at it"
            ))
        };
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| unreachable(format!("no connection within {timeout:?}")))?
            .map_err(|e| unreachable(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let mut connection = Connection {
            addr: addr.to_string(),
            stream,
            versions: BTreeMap::new(),
            correlation_id: 0,
            timeout,
        };
        let mut versions = None;
        for version in [API_VERSIONS_VERSION, 0] {
            let mut request = ApiVersionsRequest::default();
            if version >= 3 {
                request.client_software_name = StrBytes::from_static_str("keel");
                request.client_software_version =
                    StrBytes::from_static_str(env!("CARGO_PKG_VERSION"));
            }
            let response = connection
                .call_at(
                    ApiKey::ApiVersions,
                    version,
                    RequestKind::ApiVersions(request),
                )
                .await
                .map_err(|e| unreachable(e.message))?;
            let ResponseKind::ApiVersions(response) = response else {
                return Err(unreachable("not an ApiVersions response".into()));
            };
            // UNSUPPORTED_VERSION: the broker answered with v0 and its range; ask again at v0.
            if response.error_code == UNSUPPORTED_VERSION && version != 0 {
                continue;
            }
            check(response.error_code, "ApiVersions", addr)?;
            versions = Some(response);
            break;
        }
        let response = versions.ok_or_else(|| unreachable("ApiVersions refused".into()))?;
        connection.versions = response
            .api_keys
            .iter()
            .map(|v| (v.api_key, (v.min_version, v.max_version)))
            .collect();
        Ok(connection)
    }

    /// Whether the broker advertises `api` at a version the client can fill.
    pub fn supports(&self, api: ApiKey) -> bool {
        self.version(api).is_ok()
    }

    /// The version to send `api` at.
    pub fn version(&self, api: ApiKey) -> Result<i16, CliError> {
        let (_, lo, hi) = CLIENT_VERSIONS
            .iter()
            .copied()
            .find(|(k, _, _)| *k == api)
            .expect("every API the CLI sends is in CLIENT_VERSIONS");
        let unsupported = || {
            CliError::failed(format!(
                "broker {} does not serve {api:?} at a version keel's CLI speaks ({lo}-{hi})",
                self.addr
            ))
        };
        let (broker_lo, broker_hi) = self
            .versions
            .get(&(api as i16))
            .copied()
            .ok_or_else(unsupported)?;
        let version = hi.min(broker_hi);
        if version < lo.max(broker_lo) {
            return Err(unsupported());
        }
        Ok(version)
    }

    /// Sends `request` at the negotiated version and reads its response.
    pub async fn call(
        &mut self,
        api: ApiKey,
        request: RequestKind,
    ) -> Result<ResponseKind, CliError> {
        let version = self.version(api)?;
        self.call_at(api, version, request).await
    }

    /// Writes `request` without waiting for an answer (Produce with acks=0 gets none).
    pub async fn send_only(&mut self, api: ApiKey, request: RequestKind) -> Result<(), CliError> {
        let version = self.version(api)?;
        self.write(api, version, &request).await.map(|_| ())
    }

    async fn call_at(
        &mut self,
        api: ApiKey,
        version: i16,
        request: RequestKind,
    ) -> Result<ResponseKind, CliError> {
        let correlation_id = self.write(api, version, &request).await?;
        self.read(api, version, correlation_id).await
    }

    /// Writes one request; its correlation id.
    pub async fn write(
        &mut self,
        api: ApiKey,
        version: i16,
        request: &RequestKind,
    ) -> Result<i32, CliError> {
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let correlation_id = self.correlation_id;
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)))
            .encode(&mut buf, api.request_header_version(version))
            .map_err(|e| CliError::failed(format!("cannot encode a {api:?} header: {e}")))?;
        request
            .encode(&mut buf, version)
            .map_err(|e| CliError::failed(format!("cannot encode {api:?} v{version}: {e}")))?;
        let size = i32::try_from(buf.len() - 4)
            .map_err(|_| CliError::failed(format!("{api:?} request too large")))?;
        buf[..4].copy_from_slice(&size.to_be_bytes());
        let addr = self.addr.clone();
        tokio::time::timeout(self.timeout, self.stream.write_all(&buf))
            .await
            .map_err(|_| {
                broken(
                    &addr,
                    &format!("{api:?} not written within {:?}", self.timeout),
                )
            })?
            .map_err(|e| broken(&addr, &e.to_string()))?;
        Ok(correlation_id)
    }

    /// Reads the response to the request `write` sent with `correlation_id`.
    pub async fn read(
        &mut self,
        api: ApiKey,
        version: i16,
        correlation_id: i32,
    ) -> Result<ResponseKind, CliError> {
        let addr = self.addr.clone();
        let timeout = self.timeout;
        let mut frame = tokio::time::timeout(timeout, read_frame(&mut self.stream))
            .await
            .map_err(|_| broken(&addr, &format!("no {api:?} response within {timeout:?}")))?
            .map_err(|e| broken(&addr, &e))?;
        let header = ResponseHeader::decode(&mut frame, api.response_header_version(version))
            .map_err(|e| broken(&addr, &format!("{api:?} response header: {e}")))?;
        if header.correlation_id != correlation_id {
            return Err(broken(
                &addr,
                &format!(
                    "response {} answers request {correlation_id}",
                    header.correlation_id
                ),
            ));
        }
        let body = ResponseKind::decode(api, &mut frame, version)
            .map_err(|e| broken(&addr, &format!("{api:?} v{version} response: {e}")))?;
        if frame.has_remaining() {
            return Err(broken(
                &addr,
                &format!("{} bytes after the {api:?} response", frame.remaining()),
            ));
        }
        Ok(body)
    }
}

fn broken(addr: &str, why: &str) -> CliError {
    CliError::failed(format!("broker {addr}: {why}"))
}

async fn read_frame(stream: &mut TcpStream) -> Result<Bytes, String> {
    let size = stream
        .read_i32()
        .await
        .map_err(|e| format!("connection closed: {e}"))?;
    let size = usize::try_from(size)
        .ok()
        .filter(|s| *s <= RESPONSE_BYTES_MAX)
        .ok_or_else(|| format!("response size {size} out of bounds"))?;
    let mut buf = vec![0; size];
    stream
        .read_exact(&mut buf)
        .await
        .map_err(|e| format!("connection closed: {e}"))?;
    Ok(Bytes::from(buf))
}

/// Err naming the error when `error` is not NONE.
pub fn check(error: i16, what: &str, subject: &str) -> Result<(), CliError> {
    if error == code::NONE {
        return Ok(());
    }
    Err(CliError::failed(format!(
        "{what} {subject}: {}{}",
        error_name(error),
        hint(error)
    )))
}

/// Kafka's name of an error code, or its number.
pub fn error_name(error: i16) -> String {
    match code::name(error) {
        Some(name) => name.to_string(),
        None => format!("error {error}"),
    }
}

/// What to do about the errors a user can fix.
fn hint(error: i16) -> &'static str {
    match error {
        code::UNKNOWN_TOPIC_OR_PARTITION => {
            " (no such topic or partition: `keel topic list` shows the topics)"
        }
        code::TOPIC_ALREADY_EXISTS => " (the topic exists: `keel topic describe` shows it)",
        code::INVALID_PARTITIONS | code::INVALID_REPLICATION_FACTOR => {
            " (the cluster refused the count: see `keel cluster describe` for its brokers)"
        }
        code::INVALID_CONFIG => " (unknown key or bad value: docs/cli.md lists the topic configs)",
        code::GROUP_ID_NOT_FOUND => " (no such group: `keel group list` shows the groups)",
        code::NON_EMPTY_GROUP => " (the group has members: stop its consumers first)",
        code::UNKNOWN_MEMBER_ID | code::ILLEGAL_GENERATION => {
            " (the group has active members: stop its consumers first)"
        }
        _ => "",
    }
}

/// Kafka's internal topics: group offsets and transaction state.
const INTERNAL_TOPICS: [&str; 2] = ["__consumer_offsets", "__transaction_state"];

/// One partition as Metadata described it.
#[derive(Clone, Debug)]
pub struct PartitionInfo {
    pub partition: i32,
    pub leader: i32,
    pub leader_epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
    pub offline: Vec<i32>,
    pub error_code: i16,
}

/// One topic as Metadata described it.
#[derive(Clone, Debug)]
pub struct TopicInfo {
    pub name: String,
    pub topic_id: String,
    pub internal: bool,
    pub partitions: Vec<PartitionInfo>,
}

/// A broker as Metadata described it.
#[derive(Clone, Debug)]
pub struct BrokerInfo {
    pub id: i32,
    pub host: String,
    pub port: i32,
    pub rack: Option<String>,
}

impl BrokerInfo {
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// What one Metadata response says.
#[derive(Clone, Debug, Default)]
pub struct Metadata {
    pub cluster_id: Option<String>,
    pub controller: i32,
    pub brokers: Vec<BrokerInfo>,
    pub topics: Vec<TopicInfo>,
}

impl Metadata {
    fn from_response(response: MetadataResponse) -> Metadata {
        Metadata {
            cluster_id: response.cluster_id.map(|c| c.to_string()),
            controller: response.controller_id.0,
            brokers: response
                .brokers
                .iter()
                .map(|b| BrokerInfo {
                    id: b.node_id.0,
                    host: b.host.to_string(),
                    port: b.port,
                    rack: b.rack.as_ref().map(|r| r.to_string()),
                })
                .collect(),
            topics: response
                .topics
                .iter()
                .map(|t| TopicInfo {
                    name: t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default(),
                    topic_id: t.topic_id.to_string(),
                    // Kafka's two internal topics are known by name too, for brokers that
                    // do not set is_internal.
                    internal: t.is_internal
                        || t.name
                            .as_ref()
                            .is_some_and(|n| INTERNAL_TOPICS.contains(&n.as_str())),
                    partitions: {
                        let mut ps: Vec<PartitionInfo> = t
                            .partitions
                            .iter()
                            .map(|p| PartitionInfo {
                                partition: p.partition_index,
                                leader: p.leader_id.0,
                                leader_epoch: p.leader_epoch,
                                replicas: p.replica_nodes.iter().map(|b| b.0).collect(),
                                isr: p.isr_nodes.iter().map(|b| b.0).collect(),
                                offline: p.offline_replicas.iter().map(|b| b.0).collect(),
                                error_code: p.error_code,
                            })
                            .collect();
                        ps.sort_by_key(|p| p.partition);
                        ps
                    },
                })
                .collect(),
        }
    }

    pub fn broker(&self, id: i32) -> Option<&BrokerInfo> {
        self.brokers.iter().find(|b| b.id == id)
    }
}

/// A client of one cluster: its bootstrap addresses, connections and last metadata.
pub struct Client {
    bootstrap: Vec<String>,
    pub timeout: Duration,
    connections: BTreeMap<String, Connection>,
    metadata: Metadata,
}

impl Client {
    /// A client that connects on its first request. `brokers` is `host:port,...`.
    pub fn new(brokers: &str, timeout: Duration) -> Result<Client, CliError> {
        let bootstrap: Vec<String> = brokers
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        if bootstrap.is_empty() {
            return Err(CliError::usage(
                "--brokers is empty: give host:port[,host:port...]",
            ));
        }
        for b in &bootstrap {
            let port_ok = b
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok {
                return Err(CliError::usage(format!(
                    "--brokers: {b:?} is not host:port (e.g. 127.0.0.1:9092)"
                )));
            }
        }
        Ok(Client {
            bootstrap,
            timeout,
            connections: BTreeMap::new(),
            metadata: Metadata::default(),
        })
    }

    /// The connection to `addr`, opened if needed.
    pub async fn connection(&mut self, addr: &str) -> Result<&mut Connection, CliError> {
        if !self.connections.contains_key(addr) {
            let connection = Connection::open(addr, self.timeout).await?;
            self.connections.insert(addr.to_string(), connection);
        }
        Ok(self.connections.get_mut(addr).expect("inserted above"))
    }

    /// Takes the connection to `addr` out of the client (for a task of its own).
    pub async fn take_connection(&mut self, addr: &str) -> Result<Connection, CliError> {
        self.connection(addr).await?;
        Ok(self.connections.remove(addr).expect("opened above"))
    }

    /// One request to `addr`; a failed request drops the connection.
    pub async fn call(
        &mut self,
        addr: &str,
        api: ApiKey,
        request: RequestKind,
    ) -> Result<ResponseKind, CliError> {
        let result = self.connection(addr).await?.call(api, request).await;
        if result.is_err() {
            self.connections.remove(addr);
        }
        result
    }

    /// Where to send a request any broker can answer, in order: the connected brokers, the
    /// brokers the last metadata named, then the bootstrap addresses.
    fn candidates(&self) -> Vec<String> {
        let mut candidates: Vec<String> = self.connections.keys().cloned().collect();
        for addr in self
            .metadata
            .brokers
            .iter()
            .map(BrokerInfo::address)
            .chain(self.bootstrap.iter().cloned())
        {
            if !candidates.contains(&addr) {
                candidates.push(addr);
            }
        }
        candidates
    }

    /// The error after every candidate failed: the one reason, or all of them.
    fn unreachable(&self, mut reasons: Vec<String>) -> CliError {
        CliError::failed(if reasons.len() == 1 {
            reasons.remove(0)
        } else {
            format!(
                "cannot reach any broker of {} ({}); is the cluster running? Point --brokers \
                 (or KEEL_BROKERS) at it",
                self.bootstrap.join(","),
                reasons.join("; ")
            )
        })
    }

    /// The address of a broker that answers (see `candidates`).
    pub async fn any_broker(&mut self) -> Result<String, CliError> {
        let mut reasons = Vec::new();
        for addr in self.candidates() {
            match self.connection(&addr).await {
                Ok(_) => return Ok(addr),
                Err(e) => reasons.push(e.message),
            }
        }
        Err(self.unreachable(reasons))
    }

    /// One request to the first broker that answers it (see `candidates`); a broker whose
    /// connection fails is skipped.
    pub async fn call_any(
        &mut self,
        api: ApiKey,
        request: RequestKind,
    ) -> Result<ResponseKind, CliError> {
        let mut reasons = Vec::new();
        for addr in self.candidates() {
            let connection = match self.connection(&addr).await {
                Ok(c) => c,
                Err(e) => {
                    reasons.push(e.message);
                    continue;
                }
            };
            // A broker that does not serve the API is an answer, not a transport failure.
            connection.version(api)?;
            match self.call(&addr, api, request.clone()).await {
                Ok(response) => return Ok(response),
                Err(e) => reasons.push(e.message),
            }
        }
        Err(self.unreachable(reasons))
    }

    /// Whether the broker `call_any` would use serves `api`.
    pub async fn any_supports(&mut self, api: ApiKey) -> Result<bool, CliError> {
        let addr = self.any_broker().await?;
        Ok(self.connection(&addr).await?.supports(api))
    }

    /// Metadata for `topics` (None: every topic), remembered for later requests.
    pub async fn metadata(&mut self, topics: Option<&[String]>) -> Result<&Metadata, CliError> {
        let mut request = MetadataRequest::default();
        request.topics = topics.map(|names| {
            names
                .iter()
                .map(|n| {
                    MetadataRequestTopic::default()
                        .with_name(Some(TopicName(StrBytes::from_string(n.clone()))))
                })
                .collect()
        });
        request.allow_auto_topic_creation = false;
        let ResponseKind::Metadata(response) = self
            .call_any(ApiKey::Metadata, RequestKind::Metadata(request))
            .await?
        else {
            return Err(CliError::failed("not a Metadata response"));
        };
        let errors: Vec<(String, i16)> = response
            .topics
            .iter()
            .map(|t| {
                (
                    t.name.as_ref().map(|n| n.0.to_string()).unwrap_or_default(),
                    t.error_code,
                )
            })
            .collect();
        self.metadata = Metadata::from_response(response);
        if topics.is_some() {
            for (name, error) in errors {
                check(error, "topic", &name)?;
            }
        }
        Ok(&self.metadata)
    }

    /// Metadata of one topic; a missing topic is an error that says so.
    pub async fn topic(&mut self, name: &str) -> Result<TopicInfo, CliError> {
        let metadata = self.metadata(Some(&[name.to_string()])).await?;
        metadata
            .topics
            .iter()
            .find(|t| t.name == name)
            .cloned()
            .ok_or_else(|| {
                CliError::failed(format!(
                    "topic {name}: UNKNOWN_TOPIC_OR_PARTITION (no such topic or partition: `keel \
                     topic list` shows the topics)"
                ))
            })
    }

    /// The metadata last fetched.
    pub fn last_metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The address of broker `id` from the last metadata.
    pub fn broker_address(&self, id: i32) -> Result<String, CliError> {
        self.metadata
            .broker(id)
            .map(BrokerInfo::address)
            .ok_or_else(|| {
                CliError::failed(format!("broker {id} is not in the cluster's metadata"))
            })
    }

    /// The address of the controller if the metadata names one, else any broker (keel and
    /// Kafka forward admin requests to the controller).
    pub async fn admin_broker(&mut self) -> Result<String, CliError> {
        if self.metadata.brokers.is_empty() {
            self.metadata(Some(&[])).await?;
        }
        match self.metadata.broker(self.metadata.controller) {
            Some(b) => Ok(b.address()),
            None => self.any_broker().await,
        }
    }

    /// The address of `group`'s coordinator (FindCoordinator), retried while it is loading.
    pub async fn coordinator(&mut self, group: &str) -> Result<String, CliError> {
        let mut last = None;
        for _ in 0..20 {
            let mut request = FindCoordinatorRequest::default();
            request.key = StrBytes::from_string(group.to_string());
            request.key_type = 0;
            let ResponseKind::FindCoordinator(response) = self
                .call_any(
                    ApiKey::FindCoordinator,
                    RequestKind::FindCoordinator(request),
                )
                .await?
            else {
                return Err(CliError::failed("not a FindCoordinator response"));
            };
            match response.error_code {
                0 => return Ok(format!("{}:{}", response.host, response.port)),
                code::COORDINATOR_LOAD_IN_PROGRESS
                | code::COORDINATOR_NOT_AVAILABLE
                | code::NOT_COORDINATOR => {
                    last = Some(response.error_code);
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                other => check(other, "finding the coordinator of group", group)?,
            }
        }
        Err(CliError::failed(format!(
            "finding the coordinator of group {group}: {} after 20 tries (is the cluster \
             healthy? `keel cluster describe`)",
            error_name(last.unwrap_or(code::COORDINATOR_NOT_AVAILABLE))
        )))
    }
}
