//! The Kafka wire layer of the broker: TCP listener, request framing, version negotiation,
//! request decoding and in-order responses. The broker plugs in through [`Handler`] and sees
//! only decoded kafka-protocol requests.
//!
//! What this module owns:
//! - the listener and one task per connection ([`WireServer`]);
//! - framing: `size: i32 BE | request`, bounded by
//!   [`WireConfig::socket_request_max_bytes`] (Kafka's `socket.request.max.bytes`);
//! - the ApiVersions table ([`API_SUPPORT_TABLE`]), filtered per listener ([`SupportedApis`]),
//!   and the ApiVersions answers, which never reach the handler;
//! - UNSUPPORTED_VERSION fallbacks: ApiVersions above v4 gets a v0 body with error 35; Produce
//!   v0-2 (advertised, not implemented) gets error 35 per partition;
//! - the security of each listener: TLS, SASL and the connection's principal
//!   ([`WireServer::for_listener`] with a
//!   [`ListenerSecurity`](crate::security::ListenerSecurity); docs/security.md);
//! - pure decode and encode functions ([`decode_request`], [`classify`], [`encode_response`])
//!   shared by the connection task and the fuzz target (`fuzz/fuzz_targets/request_decode.rs`).
//!
//! What always holds:
//! - responses leave each connection in request order (clients match correlation ids in
//!   order); a Produce with acks=0 gets no response and takes no place in that order;
//! - at most [`WireConfig::in_flight_per_connection_max`] requests per connection are in
//!   flight; beyond that the connection is not read;
//! - ApiVersions responses carry response header v0 at every version; all others carry the
//!   header version kafka-protocol's table gives for the API and version;
//! - bytes from a client never make this layer panic; anything the protocol does not allow
//!   closes that client's connection and nothing else. Kafka closes the connection on an
//!   unknown API key, a version outside the advertised range and a body that does not decode.
//!
//! kafka-protocol 0.18's array decoder preallocates from the count it reads, so a 14-byte
//! request could make the allocator abort the whole process; `count_guard` decodes bodies so
//! that no count larger than the bytes present reaches it (until kafka-protocol caps it
//! itself: kafka-protocol-rs pull requests 152, 161, 200).

mod codec;
mod count_guard;
mod handler;
mod legacy_produce;
mod server;
pub mod testing;
mod versions;

pub use codec::{
    classify, decode_request, encode_response, frame_size, header_prefix, response_api_key,
    response_header_version, DecodeError, DecodedRequest, EncodeError, FrameSizeError,
    HeaderPrefix, Inbound, Reply, HEADER_FIXED_BYTES, SIZE_PREFIX_BYTES,
    SOCKET_REQUEST_MAX_BYTES_DEFAULT,
};
pub use count_guard::{OVERSIZED_I32_STANDIN, VARINT_SLACK};
pub use handler::{Handler, HandlerError, HandlerResult, RequestContext};
pub use server::{
    ConnectionLimits, WireConfig, WireServer, ACCEPT_ERROR_BACKOFF,
    FAILED_AUTHENTICATION_DELAY_DEFAULT, IN_FLIGHT_PER_CONNECTION_MAX_DEFAULT, READ_CHUNK_BYTES,
    SASL_FRAME_BYTES_MAX, TLS_HANDSHAKE_TIMEOUT_DEFAULT,
};
pub use versions::{
    api_versions_unsupported_response, ApiSupport, SupportedApis, API_SUPPORT_TABLE,
    API_VERSIONS_VERSION_MAX, GROUP_APIS,
};
