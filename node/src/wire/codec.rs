//! Pure, synchronous request decoding and response encoding: bytes of one frame in, typed
//! values out, and back. No I/O, no clock: the connection task and the fuzz target call the
//! same functions.
//!
//! A frame on the wire is `size: i32 big-endian` followed by `size` bytes of request (header
//! and body). [`frame_size`] checks the prefix; everything else here takes the `size` bytes
//! after it, and [`encode_response`] produces a whole response frame, prefix included.
//!
//! What always holds:
//! - no function here panics, or allocates in proportion to a count or length read from the
//!   input before checking it against the bytes present (bodies decode through
//!   `count_guard`, which keeps kafka-protocol's array decoder from doing so);
//! - a request header is decoded at `ApiKey::request_header_version(version)` (v0 by hand,
//!   since kafka-protocol decodes only v1-v2);
//! - responses carry `ApiKey::response_header_version(version)`, except ApiVersions, which
//!   always carries response header v0 (KIP-511: the client cannot parse anything else before
//!   versions are negotiated).

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable};

use super::count_guard;
use super::legacy_produce;
use super::versions::{api_versions_unsupported_response, SupportedApis, API_VERSIONS_VERSION_MAX};

/// Bytes of the size prefix in front of every request and response.
pub const SIZE_PREFIX_BYTES: usize = 4;

/// Bytes every request header starts with, whatever its version: api key (i16), api version
/// (i16), correlation id (i32).
pub const HEADER_FIXED_BYTES: usize = 8;

/// Kafka's default `socket.request.max.bytes`: 100 MiB.
pub const SOCKET_REQUEST_MAX_BYTES_DEFAULT: usize = 100 * 1024 * 1024;

/// Why a size prefix is refused. Either way the connection closes before anything is
/// allocated for the frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameSizeError {
    /// The prefix is negative.
    #[error("negative request size {0}")]
    Negative(i32),
    /// The prefix is above the listener's `socket_request_max_bytes`.
    #[error("request size {size} is above socket_request_max_bytes {max}")]
    TooLarge {
        /// The size the peer announced.
        size: usize,
        /// The listener's bound.
        max: usize,
    },
}

/// Checks a size prefix against `socket_request_max_bytes` and returns the frame size.
pub fn frame_size(
    prefix: [u8; SIZE_PREFIX_BYTES],
    socket_request_max_bytes: usize,
) -> Result<usize, FrameSizeError> {
    let size = i32::from_be_bytes(prefix);
    let size = usize::try_from(size).map_err(|_| FrameSizeError::Negative(size))?;
    if size > socket_request_max_bytes {
        return Err(FrameSizeError::TooLarge {
            size,
            max: socket_request_max_bytes,
        });
    }
    Ok(size)
}

/// Why a request frame is refused. Every variant closes the connection (Kafka's behaviour for
/// an unknown API, an unsupported version and an InvalidRequestException); the variants split
/// the blame for the log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The frame cannot hold even the fixed part of a request header.
    #[error("request of {len} bytes is shorter than the {HEADER_FIXED_BYTES}-byte header prefix")]
    Truncated {
        /// Bytes in the frame.
        len: usize,
    },
    /// The api key is not one Kafka defines.
    #[error("unknown api key {0}")]
    UnknownApiKey(i16),
    /// A Kafka API this listener does not serve (not in its [`SupportedApis`]).
    #[error("{0:?} is not served by this listener")]
    ApiNotServed(ApiKey),
    /// A version outside the advertised range (or outside what kafka-protocol decodes).
    #[error("{api_key:?} v{version} is not supported")]
    UnsupportedVersion {
        /// The request's API.
        api_key: ApiKey,
        /// The request's version.
        version: i16,
    },
    /// An advertised but unimplemented version whose UNSUPPORTED_VERSION answer cannot be sent:
    /// a Produce v0-2 with acks=0 (Kafka closes the connection on any acks=0 error).
    #[error("{api_key:?} v{version} is not implemented and acks=0 allows no error response")]
    UnsupportedVersionWithoutResponse {
        /// The request's API.
        api_key: ApiKey,
        /// The request's version.
        version: i16,
    },
    /// The request header does not decode.
    #[error("malformed {api_key:?} v{version} request header: {reason}")]
    MalformedHeader {
        /// The request's API.
        api_key: ApiKey,
        /// The request's version.
        version: i16,
        /// kafka-protocol's message.
        reason: String,
    },
    /// The request body does not decode.
    #[error("malformed {api_key:?} v{version} request body: {reason}")]
    MalformedBody {
        /// The request's API.
        api_key: ApiKey,
        /// The request's version.
        version: i16,
        /// kafka-protocol's (or the Produce v0-2 parser's) message.
        reason: String,
    },
}

/// Why a response could not be encoded. Any of these is a bug on keel's side; the connection
/// closes, since the client would otherwise wait for a correlation id that never comes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The response body is for another API than the request.
    #[error("response for {found:?} given to a {expected:?} request")]
    KindMismatch {
        /// The request's API.
        expected: ApiKey,
        /// The API of the response body, if it is one keel serves.
        found: Option<ApiKey>,
    },
    /// kafka-protocol refused to encode the body at this version.
    #[error("cannot encode {api_key:?} v{version} response: {reason}")]
    Body {
        /// The request's API.
        api_key: ApiKey,
        /// The request's version.
        version: i16,
        /// kafka-protocol's message.
        reason: String,
    },
    /// The encoded response does not fit an i32 size prefix.
    #[error("response of {len} bytes does not fit a size prefix")]
    TooLarge {
        /// Bytes after the size prefix.
        len: usize,
    },
}

/// The fixed start of every request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderPrefix {
    /// Raw api key.
    pub api_key: i16,
    /// Raw api version.
    pub api_version: i16,
    /// Correlation id the response must echo.
    pub correlation_id: i32,
}

/// Reads the fixed start of a request header without consuming it.
pub fn header_prefix(frame: &[u8]) -> Result<HeaderPrefix, DecodeError> {
    match frame.get(..HEADER_FIXED_BYTES) {
        Some(&[k0, k1, v0, v1, c0, c1, c2, c3]) => Ok(HeaderPrefix {
            api_key: i16::from_be_bytes([k0, k1]),
            api_version: i16::from_be_bytes([v0, v1]),
            correlation_id: i32::from_be_bytes([c0, c1, c2, c3]),
        }),
        _ => Err(DecodeError::Truncated { len: frame.len() }),
    }
}

/// A request decoded into kafka-protocol types.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedRequest {
    /// The request's API (the same as `header.request_api_key`, already checked).
    pub api_key: ApiKey,
    /// The request header.
    pub header: RequestHeader,
    /// The request body.
    pub body: RequestKind,
}

/// Decodes one complete request frame (header and body, without the size prefix) for any API
/// in [`API_SUPPORT_TABLE`] at any version kafka-protocol 0.18 can decode, independent of what
/// a listener advertises. Bodies go through the count guard (`count_guard`), so no count read
/// from the frame sizes an allocation beyond the frame. Trailing bytes after the body are
/// ignored, as Kafka does.
///
/// [`API_SUPPORT_TABLE`]: super::API_SUPPORT_TABLE
pub fn decode_request(frame: Bytes) -> Result<DecodedRequest, DecodeError> {
    let prefix = header_prefix(&frame)?;
    let api_key = known_api_key(prefix.api_key)?;
    let valid = api_key.valid_versions();
    if !(valid.min..=valid.max).contains(&prefix.api_version) {
        return Err(DecodeError::UnsupportedVersion {
            api_key,
            version: prefix.api_version,
        });
    }
    decode_known(api_key, prefix, frame)
}

/// What the wire layer does with one request frame.
// Inbound lives for one call and is matched at once; boxing the common variant would only
// add an allocation per request.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// A request for the broker's [`Handler`](super::Handler).
    Request(DecodedRequest),
    /// A request the wire layer answers itself (ApiVersions, UNSUPPORTED_VERSION fallbacks).
    /// It still takes its place in the connection's response order.
    Reply(Reply),
}

/// A response built by the wire layer itself.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A body kafka-protocol encodes, like a handler's response.
    Message {
        /// Correlation id of the request.
        correlation_id: i32,
        /// API of the request.
        api_key: ApiKey,
        /// Version to encode the body at.
        api_version: i16,
        /// The body.
        body: Box<ResponseKind>,
    },
    /// A complete response frame, size prefix included, for versions kafka-protocol cannot
    /// encode (Produce v0-2).
    Encoded(Bytes),
}

impl Reply {
    /// The response frame, size prefix included.
    pub fn encode(&self) -> Result<Bytes, EncodeError> {
        match self {
            Reply::Message {
                correlation_id,
                api_key,
                api_version,
                body,
            } => encode_response(*correlation_id, *api_key, *api_version, body),
            Reply::Encoded(frame) => Ok(frame.clone()),
        }
    }
}

/// Classifies one request frame (without its size prefix) for a listener serving `apis`:
/// answers ApiVersions and the UNSUPPORTED_VERSION fallbacks itself, decodes everything else
/// for the handler, and refuses (the caller closes the connection) what Kafka would close on.
///
/// - ApiVersions v0-3: answered from `apis`. Any other ApiVersions version, including a
///   negative one (as Kafka's `isUnsupportedApiVersionsRequest`), gets a v0 body with error 35
///   listing the ApiVersions range; its body is not decoded.
/// - An API not in `apis`, or a version outside its advertised range: refused.
/// - Advertised but below `min_implemented`: Produce v0-2 gets UNSUPPORTED_VERSION per
///   partition (refused when acks=0); any other API is refused.
/// - A header or body that does not decode: refused.
pub fn classify(frame: Bytes, apis: &SupportedApis) -> Result<Inbound, DecodeError> {
    let prefix = header_prefix(&frame)?;
    let api_key = known_api_key(prefix.api_key)?;
    let version = prefix.api_version;

    if api_key == ApiKey::ApiVersions {
        let body = if (0..=API_VERSIONS_VERSION_MAX).contains(&version) {
            // Decoded only to refuse malformed requests; v3+ client software name and version
            // are not validated (Kafka answers INVALID_REQUEST for odd names; keel is lenient).
            decode_known(api_key, prefix, frame)?;
            apis.api_versions_response()
        } else {
            return Ok(Inbound::Reply(Reply::Message {
                correlation_id: prefix.correlation_id,
                api_key,
                api_version: 0,
                body: Box::new(ResponseKind::ApiVersions(
                    api_versions_unsupported_response(),
                )),
            }));
        };
        return Ok(Inbound::Reply(Reply::Message {
            correlation_id: prefix.correlation_id,
            api_key,
            api_version: version,
            body: Box::new(ResponseKind::ApiVersions(body)),
        }));
    }

    let row = apis
        .get(api_key)
        .ok_or(DecodeError::ApiNotServed(api_key))?;
    if !row.advertises(version) {
        return Err(DecodeError::UnsupportedVersion { api_key, version });
    }
    if !row.implements(version) {
        if api_key == ApiKey::Produce {
            let mut rest = frame;
            decode_header(api_key, prefix, &mut rest)?;
            let reply =
                legacy_produce::unsupported_version_response(prefix.correlation_id, version, rest)?;
            return Ok(Inbound::Reply(Reply::Encoded(reply)));
        }
        return Err(DecodeError::UnsupportedVersion { api_key, version });
    }
    decode_known(api_key, prefix, frame).map(Inbound::Request)
}

/// Encodes a response frame: size prefix, response header at the version the API and
/// version call for (v0 for ApiVersions, always), body at `api_version`.
pub fn encode_response(
    correlation_id: i32,
    api_key: ApiKey,
    api_version: i16,
    body: &ResponseKind,
) -> Result<Bytes, EncodeError> {
    let found = response_api_key(body);
    if found != Some(api_key) {
        return Err(EncodeError::KindMismatch {
            expected: api_key,
            found,
        });
    }
    let header_version = response_header_version(api_key, api_version);
    let mut buf = BytesMut::new();
    buf.put_i32(0); // patched below, once the length is known
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut buf, header_version)
        .and_then(|()| body.encode(&mut buf, api_version))
        .map_err(|e| EncodeError::Body {
            api_key,
            version: api_version,
            reason: format!("{e:#}"),
        })?;
    let len = buf.len() - SIZE_PREFIX_BYTES;
    let len_i32 = i32::try_from(len).map_err(|_| EncodeError::TooLarge { len })?;
    buf[..SIZE_PREFIX_BYTES].copy_from_slice(&len_i32.to_be_bytes());
    Ok(buf.freeze())
}

/// The response header version for `api_key` at `api_version`: v0 for ApiVersions whatever
/// the version (KIP-511), kafka-protocol's table otherwise.
pub fn response_header_version(api_key: ApiKey, api_version: i16) -> i16 {
    if api_key == ApiKey::ApiVersions {
        0
    } else {
        api_key.response_header_version(api_version)
    }
}

fn known_api_key(raw: i16) -> Result<ApiKey, DecodeError> {
    ApiKey::try_from(raw).map_err(|()| DecodeError::UnknownApiKey(raw))
}

/// Decodes header and body of a request whose api key is known and whose version the caller
/// has checked against kafka-protocol's range (a version outside it fails as MalformedBody).
fn decode_known(
    api_key: ApiKey,
    prefix: HeaderPrefix,
    mut frame: Bytes,
) -> Result<DecodedRequest, DecodeError> {
    let header = decode_header(api_key, prefix, &mut frame)?;
    let body = count_guard::decode_body(api_key, prefix.api_version, frame)
        .ok_or(DecodeError::ApiNotServed(api_key))?
        .map_err(|reason| DecodeError::MalformedBody {
            api_key,
            version: prefix.api_version,
            reason,
        })?;
    Ok(DecodedRequest {
        api_key,
        header,
        body,
    })
}

/// Decodes the request header, leaving `frame` at the start of the body.
fn decode_header(
    api_key: ApiKey,
    prefix: HeaderPrefix,
    frame: &mut Bytes,
) -> Result<RequestHeader, DecodeError> {
    let header_version = api_key.request_header_version(prefix.api_version);
    if header_version == 0 {
        // Header v0 is the fixed prefix alone (only ControlledShutdown v0 used it).
        // kafka-protocol decodes headers from v1, so read it here.
        let _ = frame.split_to(HEADER_FIXED_BYTES.min(frame.len()));
        return Ok(RequestHeader::default()
            .with_request_api_key(prefix.api_key)
            .with_request_api_version(prefix.api_version)
            .with_correlation_id(prefix.correlation_id)
            .with_client_id(None));
    }
    RequestHeader::decode(frame, header_version).map_err(|e| DecodeError::MalformedHeader {
        api_key,
        version: prefix.api_version,
        reason: format!("{e:#}"),
    })
}

/// The API of a response body, for the APIs keel serves ([`API_SUPPORT_TABLE`]); `None` for
/// any other.
///
/// [`API_SUPPORT_TABLE`]: super::API_SUPPORT_TABLE
pub fn response_api_key(body: &ResponseKind) -> Option<ApiKey> {
    Some(match body {
        ResponseKind::Produce(_) => ApiKey::Produce,
        ResponseKind::Fetch(_) => ApiKey::Fetch,
        ResponseKind::ListOffsets(_) => ApiKey::ListOffsets,
        ResponseKind::Metadata(_) => ApiKey::Metadata,
        ResponseKind::OffsetCommit(_) => ApiKey::OffsetCommit,
        ResponseKind::OffsetFetch(_) => ApiKey::OffsetFetch,
        ResponseKind::FindCoordinator(_) => ApiKey::FindCoordinator,
        ResponseKind::JoinGroup(_) => ApiKey::JoinGroup,
        ResponseKind::Heartbeat(_) => ApiKey::Heartbeat,
        ResponseKind::LeaveGroup(_) => ApiKey::LeaveGroup,
        ResponseKind::SyncGroup(_) => ApiKey::SyncGroup,
        ResponseKind::DescribeGroups(_) => ApiKey::DescribeGroups,
        ResponseKind::ListGroups(_) => ApiKey::ListGroups,
        ResponseKind::SaslHandshake(_) => ApiKey::SaslHandshake,
        ResponseKind::ApiVersions(_) => ApiKey::ApiVersions,
        ResponseKind::CreateTopics(_) => ApiKey::CreateTopics,
        ResponseKind::DeleteTopics(_) => ApiKey::DeleteTopics,
        ResponseKind::DeleteRecords(_) => ApiKey::DeleteRecords,
        ResponseKind::InitProducerId(_) => ApiKey::InitProducerId,
        ResponseKind::OffsetForLeaderEpoch(_) => ApiKey::OffsetForLeaderEpoch,
        ResponseKind::AddPartitionsToTxn(_) => ApiKey::AddPartitionsToTxn,
        ResponseKind::AddOffsetsToTxn(_) => ApiKey::AddOffsetsToTxn,
        ResponseKind::EndTxn(_) => ApiKey::EndTxn,
        ResponseKind::TxnOffsetCommit(_) => ApiKey::TxnOffsetCommit,
        ResponseKind::DescribeTransactions(_) => ApiKey::DescribeTransactions,
        ResponseKind::ListTransactions(_) => ApiKey::ListTransactions,
        ResponseKind::DescribeProducers(_) => ApiKey::DescribeProducers,
        ResponseKind::DescribeConfigs(_) => ApiKey::DescribeConfigs,
        ResponseKind::AlterConfigs(_) => ApiKey::AlterConfigs,
        ResponseKind::SaslAuthenticate(_) => ApiKey::SaslAuthenticate,
        ResponseKind::CreatePartitions(_) => ApiKey::CreatePartitions,
        ResponseKind::DeleteGroups(_) => ApiKey::DeleteGroups,
        ResponseKind::IncrementalAlterConfigs(_) => ApiKey::IncrementalAlterConfigs,
        ResponseKind::DescribeCluster(_) => ApiKey::DescribeCluster,
        ResponseKind::DescribeLogDirs(_) => ApiKey::DescribeLogDirs,
        ResponseKind::DescribeQuorum(_) => ApiKey::DescribeQuorum,
        ResponseKind::OffsetDelete(_) => ApiKey::OffsetDelete,
        ResponseKind::DescribeTopicPartitions(_) => ApiKey::DescribeTopicPartitions,
        ResponseKind::DescribeAcls(_) => ApiKey::DescribeAcls,
        ResponseKind::CreateAcls(_) => ApiKey::CreateAcls,
        ResponseKind::DeleteAcls(_) => ApiKey::DeleteAcls,
        ResponseKind::DescribeUserScramCredentials(_) => ApiKey::DescribeUserScramCredentials,
        ResponseKind::AlterUserScramCredentials(_) => ApiKey::AlterUserScramCredentials,
        ResponseKind::ElectLeaders(_) => ApiKey::ElectLeaders,
        ResponseKind::AlterPartitionReassignments(_) => ApiKey::AlterPartitionReassignments,
        ResponseKind::ListPartitionReassignments(_) => ApiKey::ListPartitionReassignments,
        ResponseKind::UnregisterBroker(_) => ApiKey::UnregisterBroker,
        _ => return None,
    })
}
