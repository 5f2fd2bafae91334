//! keel-core: keel's pure state machines and the Kafka log format.
//!
//! Nothing in this crate performs I/O on its own, reads a clock, spawns a thread or draws OS
//! randomness. Time comes in as a value (`now_ms`), storage is reached only through the
//! [`storage::Storage`] trait that the caller supplies, and randomness (used only by the
//! crash model of [`storage::MemStorage`]) comes from an RNG the caller seeds. `core/clippy.toml`
//! enforces the boundary.
//!
//! - [`acl`]: Kafka's ACL authoriser (`StandardAuthorizer`): bindings, filters, the decision
//!   for a principal, host, operation and resource, super users and the no-ACL default.
//! - [`batch`]: the Kafka record batch v2 (parse, stamp, build, records, compression), and
//!   the control batches that carry transaction markers.
//! - [`storage`]: the small file trait the log writes through, and an in-memory implementation
//!   that models crashes (lost unsynced writes, torn writes).
//! - [`log`]: one partition's segmented log with indexes, the leader-epoch cache, retention and
//!   crash recovery.
//! - [`producer`]: idempotent producer state per partition (duplicate detection, sequence and
//!   epoch checks), its snapshots and its rebuild from the log; `producer::txn`, a partition's
//!   transaction bookkeeping (open transactions, last stable offset, aborted transactions).
//! - [`partition`]: one partition replica in Kafka's ISR replication (leader and follower
//!   roles, the durable high watermark, produce validation), over its log and producer state.
//! - [`controller`]: the metadata state machine (topics, partitions, brokers, configs,
//!   producer-id blocks, ACLs, SCRAM credentials, client quotas), its prost records, and a single-node store
//!   of them the broker no longer uses (the quorum's raft log holds them).
//! - [`group`]: the consumer group coordinator (classic protocol: join, sync, heartbeat, leave,
//!   offsets), its `__consumer_offsets` records and its rebuild from them.
//! - [`txn`]: the transaction coordinator (InitProducerId, AddPartitionsToTxn, AddOffsetsToTxn,
//!   EndTxn, timeouts, fencing), its `__transaction_state` records in Kafka's format and its
//!   rebuild from them.
//! - [`quorum`]: the metadata quorum on tikv's `raft` crate (voters and learners, the Ready
//!   loop persisted through [`storage::Storage`], snapshots), and the controller's broker
//!   sessions (heartbeats, fencing).
//! - [`quota`]: client byte-rate quotas (KIP-13): which quota applies to a request, the rate
//!   over a sliding window, the throttle time.
//! - [`throttle`]: the replication throttle's byte budget, and which replication traffic it
//!   holds back (reassignment catch-up only).
//! - [`error_code`]: Kafka's error codes, the one table every module and crate uses.
//! - [`frame`]: CRC-framed records in an append-only file (the raft log's format).
//! - [`planted`]: bugs planted for the simulator to catch (the `planted-bugs` feature only).
//! - [`types`]: the `Offset`, `LeaderEpoch` and `ProducerId` newtypes.
//!
//! docs/design.md maps every module of the workspace.

#![deny(clippy::disallowed_methods, clippy::disallowed_types)]

pub mod acl;
pub mod batch;
pub mod controller;
pub mod error_code;
pub mod frame;
pub mod group;
pub mod log;
pub mod partition;
pub mod planted;
pub mod producer;
pub mod quorum;
pub mod quota;
pub mod storage;
pub mod throttle;
pub mod txn;
pub mod types;

pub use error_code::ErrorCode;
pub use types::{LeaderEpoch, Offset, ProducerId};
