//! keel-node: the keel broker process and the `keel` command.
//!
//! node wires keel-core's pure state machines to real sockets and files: it decodes Kafka
//! requests, hands them to core with the current time, and carries out the effects.

pub mod bench;
pub mod broker;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod dev;
pub mod dump_log;
pub mod metrics;
pub mod peer;
pub mod storage;
pub mod wire;
