//! The parts of `keel-bench` (src/bin/keel-bench/, behind the `bench` feature) that need no
//! Kafka client, so that the workspace tests check them without building librdkafka: the
//! latency histogram, the machine-limit measurements, the report with its ratios and target
//! checks, and the JSON it writes. docs/benchmarks.md describes the method.

#![cfg(not(madsim))]

pub mod histogram;
pub mod json;
pub mod limits;
pub mod machine;
pub mod report;
