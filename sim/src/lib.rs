//! keel-sim: keel's deterministic simulator. It runs keel's brokers under madsim
//! (`harness`), each on a simulated disk ([`disk::SimDisk`]), drives a Jepsen-style
//! workload through a small Kafka client ([`client`]) while the nemesis (`nemesis`) injects
//! faults, and checks the history ([`checker`], and [`txn`] for the transactional workload);
//! `run` is one seed, `swarm` many.

pub mod checker;
pub mod client;
pub mod compact;
#[cfg(madsim)]
pub mod converge;
pub mod disk;
#[cfg(madsim)]
pub mod harness;
#[cfg(madsim)]
pub mod nemesis;
#[cfg(madsim)]
pub mod run;
#[cfg(madsim)]
pub mod swarm;
pub mod txn;
