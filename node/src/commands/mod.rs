//! The commands built on the broker library: `keel start` ([`start`]), `keel dev` ([`dev`]),
//! `keel dump-log` ([`dump_log`]) and keel-bench's measurements ([`bench`], used by the
//! `keel-bench` binary). They use the broker only through its public items, as any other
//! program linking keel-node would; nothing in the broker library refers to them.

pub mod bench;
pub mod dev;
pub mod dump_log;
pub mod start;
