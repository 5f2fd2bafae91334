//! keel-sim: keel's deterministic simulator. So far: [`disk::SimDisk`], the simulated disk
//! (lost and torn writes on crash, bit rot, misdirected writes, I/O errors, a full disk) that
//! the simulator will give each node. The madsim harness, workload and checker come with the
//! simulator issue.

pub mod checker;
pub mod client;
pub mod disk;
#[cfg(madsim)]
pub mod harness;
#[cfg(madsim)]
pub mod run;
#[cfg(madsim)]
pub mod swarm;
