//! The interface between the wire layer and the broker: [`Handler`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use kafka_protocol::messages::{ApiKey, RequestKind, ResponseKind};
use kafka_protocol::protocol::StrBytes;

use crate::security::Principal;

/// Where a request came from and how its response must be encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestContext {
    /// Identifies the connection within this listener (unique per listener, counting from 0):
    /// per-connection state such as SASL progress can be keyed by it.
    pub connection_id: u64,
    /// The client's address.
    pub peer: SocketAddr,
    /// The name of the listener the request came in on (`PLAINTEXT`, `SASL_SSL`, ...):
    /// Metadata and FindCoordinator answer with the brokers' endpoints on this listener.
    pub listener: Arc<str>,
    /// Who the connection acts as: `User:ANONYMOUS`, the SASL user, or the client
    /// certificate's subject; the authoriser checks it (`broker::authz`).
    pub principal: Principal,
    /// The request's API.
    pub api_key: ApiKey,
    /// The request's version; the response body is encoded at it.
    pub api_version: i16,
    /// The request's correlation id; the response header echoes it.
    pub correlation_id: i32,
    /// The client id from the request header (`None` when null or header v0).
    pub client_id: Option<StrBytes>,
}

impl RequestContext {
    /// A request from 127.0.0.1 on the `PLAINTEXT` listener, as `User:ANONYMOUS`, connection
    /// 0, correlation id 1, no client id: for calling a [`Handler`] directly (tests, tools).
    pub fn local(api_key: ApiKey, api_version: i16) -> RequestContext {
        RequestContext {
            connection_id: 0,
            peer: SocketAddr::from(([127, 0, 0, 1], 1)),
            listener: "PLAINTEXT".into(),
            principal: Principal::anonymous(),
            api_key,
            api_version,
            correlation_id: 1,
            client_id: None,
        }
    }
}

/// The result of handling one request: `Ok(None)` exactly for a Produce with acks=0.
pub type HandlerResult = Result<Option<ResponseKind>, HandlerError>;

/// A failure that ends the connection (logged with the connection's peer). Operating
/// outcomes (NOT_LEADER_OR_FOLLOWER, OFFSET_OUT_OF_RANGE, ...) are not HandlerErrors: they are
/// error codes inside a response.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HandlerError(Box<dyn std::error::Error + Send + Sync>);

impl HandlerError {
    /// Wraps any error or message.
    pub fn new(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self(error.into())
    }
}

/// The broker's side of the wire layer.
///
/// Contract, per connection:
/// 1. `handle` is called once per decoded request, **in request order, one call at a time**,
///    from the task reading the connection. Work whose order matters (appending a Produce to
///    a partition, so that pipelined batches of one producer keep their order) must happen
///    in the synchronous body of `handle`, before it returns its future, and must not block.
/// 2. The returned futures run concurrently (up to the listener's in-flight bound per
///    connection) and may complete in any order; the wire layer sends their responses in
///    request order.
/// 3. A future may be dropped before completion when its connection closes (the client went
///    away, or another request broke the protocol): it must be cancel-safe.
/// 4. The future yields `Ok(Some(response))` with the body for the request's API, encoded at
///    the request's version; `Ok(None)` only for a Produce with acks=0, which gets no
///    response. `Err` closes the connection. A `None` where a response is due, or a body for
///    another API, is treated as an error too.
///
/// ApiVersions never reaches the handler: the wire layer answers it from its
/// [`SupportedApis`](super::SupportedApis).
pub trait Handler: Send + Sync + 'static {
    /// Starts handling one request; see the trait documentation for the ordering contract.
    fn handle(
        self: Arc<Self>,
        ctx: RequestContext,
        request: RequestKind,
    ) -> impl Future<Output = HandlerResult> + Send + 'static;
}
