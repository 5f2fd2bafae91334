//! The commands built on the broker library: `keel start` ([`start`]), `keel dev` ([`dev`]),
//! `keel dump-log` ([`dump_log`]), keel-bench's measurements ([`bench`], used by the
//! `keel-bench` binary), and the client commands `keel topic|produce|consume|group|cluster`
//! ([`cli`], which use no part of the broker: only the Kafka protocol). They use the broker only through its public items, as any other
//! program linking keel-node would; nothing in the broker library refers to them.

pub mod bench;
#[cfg(not(madsim))]
pub mod cli;
pub mod dev;
#[cfg(not(madsim))]
pub mod dev_secure;
pub mod dump_log;
pub mod start;
