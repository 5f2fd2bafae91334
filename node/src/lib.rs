//! keel-node: the keel broker and the `keel` command.
//!
//! node wires keel-core's pure state machines to real sockets and files: it decodes Kafka
//! requests, hands them to core with the current time, and carries out the effects.
//!
//! The crate is two layers:
//! - the broker library: [`broker`] (partitions, replication, groups, the request handler),
//!   [`cluster`] (the metadata quorum and the controller), [`peer`] (broker-to-broker
//!   transport), [`wire`] (the Kafka protocol server), [`storage`] (files), [`config`],
//!   [`metrics`], [`security`] (TLS, SASL) and [`clock`];
//! - [`commands`]: `keel start`, `keel dev`, `keel dump-log` and keel-bench's measurements,
//!   which use the library only through its public items.

pub mod broker;
pub mod clock;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod metrics;
pub mod peer;
pub mod security;
pub mod storage;
pub mod wire;
