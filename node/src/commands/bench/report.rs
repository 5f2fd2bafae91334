//! What a bench run found, as figures, ratios and checks against issue 7's targets, printed as
//! text and written as JSON.
//!
//! Every ratio divides two figures of the same run: keel's throughput by the machine's limit
//! ([`Limits`]), keel at acks=all by keel at the other phases, keel by the peer broker.

use super::histogram::Histogram;
use super::json::Json;
use super::limits::Bandwidth;

/// A latency distribution, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p99_9_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Latency {
    /// From a histogram of microseconds; None if it is empty.
    pub fn from_micros(h: &Histogram) -> Option<Latency> {
        let ms = |us: u64| us as f64 / 1000.0;
        Some(Latency {
            count: h.count(),
            p50_ms: ms(h.percentile(50.0)?),
            p99_ms: ms(h.percentile(99.0)?),
            p99_9_ms: ms(h.percentile(99.9)?),
            max_ms: ms(h.max()?),
            mean_ms: h.mean()? / 1000.0,
        })
    }

    pub fn to_json(self) -> Json {
        Json::obj([
            ("count", Json::Int(self.count as i64)),
            ("p50_ms", Json::num(self.p50_ms, 3)),
            ("p99_ms", Json::num(self.p99_ms, 3)),
            ("p99_9_ms", Json::num(self.p99_9_ms, 3)),
            ("max_ms", Json::num(self.max_ms, 3)),
            ("mean_ms", Json::num(self.mean_ms, 3)),
        ])
    }

    /// `p50 1.23 p99 4.56 p99.9 7.89 ms`
    pub fn summary(&self) -> String {
        format!(
            "p50 {} p99 {} p99.9 {} ms",
            fmt_ms(self.p50_ms),
            fmt_ms(self.p99_ms),
            fmt_ms(self.p99_9_ms)
        )
    }
}

fn fmt_ms(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.2}")
    } else if ms < 100.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

/// Which workload a phase ran.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PhaseKind {
    /// As fast as the producer can, with this acks (1 or -1 for all).
    Produce { acks: i16 },
    /// Read back everything in the topic.
    Consume,
    /// A rate-limited acks=all producer and a consumer at the tail, at once.
    ProduceConsume,
    /// Transactional producers (acks=all), each committing after this many records or this
    /// many milliseconds, whichever comes first; only committed records count.
    Transactional {
        producers: u32,
        records_per_txn: u32,
        txn_ms: u32,
    },
}

/// One measured phase.
#[derive(Clone, Debug, PartialEq)]
pub struct Phase {
    pub name: String,
    pub kind: PhaseKind,
    /// Records acknowledged (produce) or read (consume; for produce+consume, produced).
    pub records: u64,
    /// Their value bytes.
    pub bytes: u64,
    pub secs: f64,
    /// The rate the producer was held to, records/s.
    pub target_records_per_s: Option<f64>,
    /// send() to delivery report.
    pub ack_latency: Option<Latency>,
    /// send() to the consumer's poll returning the record.
    pub e2e_latency: Option<Latency>,
    /// Records that failed (delivery errors) or went missing.
    pub errors: u64,
    /// CPU seconds (user + system) the brokers used during the phase, when their pids are known.
    pub broker_cpu_secs: Option<f64>,
    /// CPU seconds the bench process (the clients) used.
    pub client_cpu_secs: Option<f64>,
}

impl Phase {
    pub fn records_per_s(&self) -> f64 {
        if self.secs <= 0.0 {
            return 0.0;
        }
        self.records as f64 / self.secs
    }

    pub fn mb_per_s(&self) -> f64 {
        Bandwidth {
            bytes: self.bytes,
            secs: self.secs,
        }
        .mb_per_s()
    }

    /// Broker CPU seconds per GB (10^9 value bytes) moved: what a record costs, whatever the
    /// machine's other load.
    pub fn broker_cpu_secs_per_gb(&self) -> Option<f64> {
        let cpu = self.broker_cpu_secs?;
        (self.bytes > 0).then(|| cpu / (self.bytes as f64 / 1e9))
    }

    pub fn to_json(&self) -> Json {
        let kind = match self.kind {
            PhaseKind::Produce { .. } => "produce",
            PhaseKind::Consume => "consume",
            PhaseKind::ProduceConsume => "produce+consume",
            PhaseKind::Transactional { .. } => "transactional",
        };
        let acks = match self.kind {
            PhaseKind::Produce { acks } => Json::Int(i64::from(acks)),
            PhaseKind::ProduceConsume | PhaseKind::Transactional { .. } => Json::Int(-1),
            PhaseKind::Consume => Json::Null,
        };
        let transactions = match self.kind {
            PhaseKind::Transactional {
                producers,
                records_per_txn,
                txn_ms,
            } => Json::obj([
                ("producers", Json::Int(i64::from(producers))),
                ("records_per_txn", Json::Int(i64::from(records_per_txn))),
                ("txn_ms", Json::Int(i64::from(txn_ms))),
            ]),
            _ => Json::Null,
        };
        Json::obj([
            ("name", Json::str(&self.name)),
            ("kind", Json::str(kind)),
            ("acks", acks),
            ("transactions", transactions),
            ("records", Json::Int(self.records as i64)),
            ("bytes", Json::Int(self.bytes as i64)),
            ("secs", Json::num(self.secs, 3)),
            ("records_per_s", Json::num(self.records_per_s(), 0)),
            ("mb_per_s", Json::num(self.mb_per_s(), 2)),
            (
                "target_records_per_s",
                Json::opt(self.target_records_per_s.map(|r| Json::num(r, 0))),
            ),
            (
                "ack_latency",
                Json::opt(self.ack_latency.map(Latency::to_json)),
            ),
            (
                "e2e_latency",
                Json::opt(self.e2e_latency.map(Latency::to_json)),
            ),
            ("errors", Json::Int(self.errors as i64)),
            (
                "broker_cpu_secs",
                Json::opt(self.broker_cpu_secs.map(|c| Json::num(c, 2))),
            ),
            (
                "broker_cpu_secs_per_gb",
                Json::opt(self.broker_cpu_secs_per_gb().map(|c| Json::num(c, 2))),
            ),
            (
                "client_cpu_secs",
                Json::opt(self.client_cpu_secs.map(|c| Json::num(c, 2))),
            ),
        ])
    }

    /// One line: `produce acks=all   123,456 rec/s   126.4 MB/s   ack p50 ... ms`.
    pub fn summary(&self) -> String {
        let mut line = format!(
            "{:<24} {:>10} rec/s {:>8.1} MB/s",
            self.name,
            thousands(self.records_per_s().round() as u64),
            self.mb_per_s()
        );
        if let Some(l) = &self.ack_latency {
            line.push_str(&format!("   ack {}", l.summary()));
        }
        if let Some(l) = &self.e2e_latency {
            line.push_str(&format!("   e2e {}", l.summary()));
        }
        if self.errors > 0 {
            line.push_str(&format!("   {} ERRORS", self.errors));
        }
        line
    }
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The machine's limits, measured in the same run.
#[derive(Clone, Debug, PartialEq)]
pub struct Limits {
    /// One writer: sequential append + fdatasync per chunk, in the data directory (the
    /// median of `disk_rounds`).
    pub disk: Bandwidth,
    /// Every round's MB/s, before the brokers ran and after.
    pub disk_rounds_mb_per_s: Vec<f64>,
    /// The chunk (bytes per fdatasync) of `disk`.
    pub disk_chunk_bytes: usize,
    /// The same with one writer per broker at once, when there are several brokers (the
    /// median of its rounds).
    pub disk_parallel: Option<(usize, Bandwidth)>,
    pub disk_parallel_rounds_mb_per_s: Vec<f64>,
    /// One small append + fdatasync (`sync_write_bytes`), repeated.
    pub sync_latency: Option<Latency>,
    pub sync_write_bytes: usize,
    /// One TCP connection on 127.0.0.1.
    pub loopback: Bandwidth,
}

impl Limits {
    pub fn to_json(&self) -> Json {
        Json::obj([
            (
                "disk_append_fdatasync_mb_per_s",
                Json::num(self.disk.mb_per_s(), 1),
            ),
            (
                "disk_rounds_mb_per_s",
                Json::Arr(
                    self.disk_rounds_mb_per_s
                        .iter()
                        .map(|m| Json::num(*m, 1))
                        .collect(),
                ),
            ),
            ("disk_chunk_bytes", Json::Int(self.disk_chunk_bytes as i64)),
            ("disk_bytes", Json::Int(self.disk.bytes as i64)),
            (
                "disk_parallel_writers",
                Json::opt(self.disk_parallel.map(|(n, _)| Json::Int(n as i64))),
            ),
            (
                "disk_parallel_mb_per_s",
                Json::opt(self.disk_parallel.map(|(_, b)| Json::num(b.mb_per_s(), 1))),
            ),
            (
                "disk_parallel_rounds_mb_per_s",
                Json::Arr(
                    self.disk_parallel_rounds_mb_per_s
                        .iter()
                        .map(|m| Json::num(*m, 1))
                        .collect(),
                ),
            ),
            (
                "sync_latency",
                Json::opt(self.sync_latency.map(Latency::to_json)),
            ),
            ("sync_write_bytes", Json::Int(self.sync_write_bytes as i64)),
            (
                "loopback_tcp_mb_per_s",
                Json::num(self.loopback.mb_per_s(), 1),
            ),
            ("loopback_bytes", Json::Int(self.loopback.bytes as i64)),
        ])
    }
}

/// keel against a peer broker on the same workload.
#[derive(Clone, Debug, PartialEq)]
pub struct PeerComparison {
    /// `tansu (memory storage)`.
    pub peer_name: String,
    /// keel with one broker and replication factor 1.
    pub keel: Vec<Phase>,
    pub peer: Vec<Phase>,
}

impl PeerComparison {
    /// keel's records/s over the peer's, phase by phase (by name).
    pub fn ratios(&self) -> Vec<(String, f64)> {
        self.keel
            .iter()
            .filter_map(|k| {
                let p = self.peer.iter().find(|p| p.name == k.name)?;
                let peer_rate = p.records_per_s();
                (peer_rate > 0.0).then(|| (k.name.clone(), k.records_per_s() / peer_rate))
            })
            .collect()
    }

    /// The ratio for produce at acks=1 (issue 7's peer target).
    pub fn acks1_ratio(&self) -> Option<f64> {
        let name = self
            .keel
            .iter()
            .find(|p| p.kind == PhaseKind::Produce { acks: 1 })?
            .name
            .clone();
        self.ratios()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, r)| r)
    }

    pub fn to_json(&self) -> Json {
        Json::obj([
            ("peer", Json::str(&self.peer_name)),
            (
                "keel_1_broker_rf1",
                Json::Arr(self.keel.iter().map(Phase::to_json).collect()),
            ),
            (
                "peer_phases",
                Json::Arr(self.peer.iter().map(Phase::to_json).collect()),
            ),
            (
                "keel_over_peer_records_per_s",
                Json::obj(self.ratios().into_iter().map(|(n, r)| (n, Json::num(r, 3)))),
            ),
        ])
    }
}

/// A bound a figure should meet.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Bound {
    AtLeast(f64),
    AtMost(f64),
}

/// One of issue 7's targets and what this run measured for it.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    pub name: String,
    /// None when the run could not measure it; `note` says why.
    pub value: Option<f64>,
    pub bound: Bound,
    pub note: String,
}

impl Check {
    pub fn met(&self) -> Option<bool> {
        let v = self.value?;
        Some(match self.bound {
            Bound::AtLeast(b) => v >= b,
            Bound::AtMost(b) => v <= b,
        })
    }

    pub fn to_json(&self) -> Json {
        let (op, bound) = match self.bound {
            Bound::AtLeast(b) => (">=", b),
            Bound::AtMost(b) => ("<=", b),
        };
        Json::obj([
            ("name", Json::str(&self.name)),
            ("value", Json::opt(self.value.map(|v| Json::num(v, 3)))),
            ("bound", Json::str(format!("{op} {bound}"))),
            ("met", Json::opt(self.met().map(Json::Bool))),
            ("note", Json::str(&self.note)),
        ])
    }

    /// `name   value   >= 0.9   yes`
    pub fn line(&self) -> String {
        let bound = match self.bound {
            Bound::AtLeast(b) => format!(">= {b}"),
            Bound::AtMost(b) => format!("<= {b}"),
        };
        let value = self.value.map_or("-".to_string(), |v| format!("{v:.2}"));
        let met = match self.met() {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "not measured",
        };
        let mut line = format!("{:<52} {:>8} {:>8}  {met}", self.name, value, bound);
        if !self.note.is_empty() {
            line.push_str(&format!("  ({})", self.note));
        }
        line
    }
}

/// Issue 7's targets.
pub const TARGET_ACKS_ALL_OVER_DISK_SHARE: f64 = 0.9;
pub const TARGET_ACKS_ALL_P99_MS: f64 = 5.0;
pub const TARGET_CONSUME_OVER_PRODUCE: f64 = 1.0;
pub const TARGET_KEEL_OVER_TANSU_ACKS1: f64 = 1.5;
/// Issue 15: transactional produce at no less than this fraction of the idempotent
/// producer's records/s, side by side in one run.
pub const TARGET_TXN_OVER_IDEMPOTENT: f64 = 0.8;

/// The disk's bandwidth share of one replica when `copies` replicas of every byte go to the
/// same disk (every broker of a local cluster writes to it).
pub fn disk_share_mb_per_s(limits: &Limits, copies: u32) -> f64 {
    limits.disk.mb_per_s() / f64::from(copies.max(1))
}

/// Each phase's throughput as ratios to the machine's limits: `(phase, over disk share, over
/// loopback)`. `copies` is how many copies of each byte the cluster writes to the one disk
/// (the replication factor when every broker shares the disk).
pub fn limit_ratios(limits: &Limits, copies: u32, phases: &[Phase]) -> Vec<(String, f64, f64)> {
    let share = disk_share_mb_per_s(limits, copies);
    let loopback = limits.loopback.mb_per_s();
    phases
        .iter()
        .map(|p| {
            let over = |limit: f64| {
                if limit > 0.0 {
                    p.mb_per_s() / limit
                } else {
                    0.0
                }
            };
            (p.name.clone(), over(share), over(loopback))
        })
        .collect()
}

/// The checks against issue 7's targets. `copies`: see [`limit_ratios`]. The targets are
/// stated for three brokers, RF=3 and acks=all; a run with other settings still reports them,
/// with a note.
pub fn checks(
    limits: &Limits,
    copies: u32,
    phases: &[Phase],
    peer: Option<&PeerComparison>,
    peer_skipped: Option<&str>,
) -> Vec<Check> {
    let find = |pred: &dyn Fn(&Phase) -> bool| phases.iter().find(|p| pred(p));
    let acks_all = find(&|p| p.kind == PhaseKind::Produce { acks: -1 });
    let consume = find(&|p| p.kind == PhaseKind::Consume);
    let mixed = find(&|p| p.kind == PhaseKind::ProduceConsume);
    let txn = find(&|p| matches!(p.kind, PhaseKind::Transactional { .. }));
    let share = disk_share_mb_per_s(limits, copies);
    let setting_note = if copies == 3 {
        String::new()
    } else {
        format!(
            "the target is for RF=3; this run wrote {copies} {}",
            if copies == 1 { "copy" } else { "copies" }
        )
    };
    let mut checks = vec![
        Check {
            name: format!("produce acks=all MB/s / (disk MB/s / {copies})"),
            value: acks_all
                .filter(|_| share > 0.0)
                .map(|p| p.mb_per_s() / share),
            bound: Bound::AtLeast(TARGET_ACKS_ALL_OVER_DISK_SHARE),
            note: setting_note,
        },
        Check {
            name: "acks=all ack latency p99 at the fixed fraction, ms".into(),
            value: mixed.and_then(|p| p.ack_latency).map(|l| l.p99_ms),
            bound: Bound::AtMost(TARGET_ACKS_ALL_P99_MS),
            note: mixed
                .and_then(|p| p.e2e_latency)
                .map_or(String::new(), |l| {
                    format!("end to end p99 {} ms", fmt_ms(l.p99_ms))
                }),
        },
        Check {
            name: "consume MB/s / produce acks=all MB/s".into(),
            value: match (consume, acks_all) {
                (Some(c), Some(p)) if p.mb_per_s() > 0.0 => Some(c.mb_per_s() / p.mb_per_s()),
                _ => None,
            },
            bound: Bound::AtLeast(TARGET_CONSUME_OVER_PRODUCE),
            note: String::new(),
        },
    ];
    checks.push(Check {
        name: "keel (1 broker, RF=1) / tansu (memory), produce acks=1".into(),
        value: peer.and_then(PeerComparison::acks1_ratio),
        bound: Bound::AtLeast(TARGET_KEEL_OVER_TANSU_ACKS1),
        note: peer_skipped.unwrap_or_default().to_string(),
    });
    if let Some(t) = txn {
        checks.push(Check {
            name: "transactional rec/s / idempotent acks=all rec/s (issue 15)".into(),
            value: acks_all
                .filter(|p| p.records_per_s() > 0.0)
                .map(|p| t.records_per_s() / p.records_per_s()),
            bound: Bound::AtLeast(TARGET_TXN_OVER_IDEMPOTENT),
            note: if acks_all.is_none() {
                "needs the acks-all phase in the same run".into()
            } else {
                String::new()
            },
        });
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phase(name: &str, kind: PhaseKind, mb: u64, secs: f64) -> Phase {
        Phase {
            name: name.into(),
            kind,
            records: mb * 1000,
            bytes: mb * 1_000_000,
            secs,
            target_records_per_s: None,
            ack_latency: None,
            e2e_latency: None,
            errors: 0,
            broker_cpu_secs: Some(2.0),
            client_cpu_secs: None,
        }
    }

    fn limits(disk_mb: u64, loopback_mb: u64) -> Limits {
        Limits {
            disk: Bandwidth {
                bytes: disk_mb * 1_000_000,
                secs: 1.0,
            },
            disk_rounds_mb_per_s: vec![disk_mb as f64],
            disk_chunk_bytes: 1 << 20,
            disk_parallel: None,
            disk_parallel_rounds_mb_per_s: vec![],
            sync_latency: None,
            sync_write_bytes: 4096,
            loopback: Bandwidth {
                bytes: loopback_mb * 1_000_000,
                secs: 1.0,
            },
        }
    }

    #[test]
    fn acks_all_is_measured_against_a_third_of_the_disk_for_three_copies() {
        let phases = [
            phase(
                "produce acks=all",
                PhaseKind::Produce { acks: -1 },
                270,
                1.0,
            ),
            phase("consume", PhaseKind::Consume, 540, 1.0),
        ];
        let c = checks(
            &limits(900, 5000),
            3,
            &phases,
            None,
            Some("tansu not on PATH"),
        );
        // 270 MB/s against 900 / 3 = 300 MB/s.
        assert_eq!(c[0].value, Some(0.9));
        assert_eq!(c[0].met(), Some(true));
        assert!(c[0].note.is_empty());
        // No produce+consume phase: not measured.
        assert_eq!(c[1].met(), None);
        assert_eq!(c[2].value, Some(2.0));
        assert_eq!(c[3].met(), None);
        assert_eq!(c[3].note, "tansu not on PATH");
        assert_eq!(c.len(), 4, "no transactional phase, no issue 15 check");
    }

    #[test]
    fn latency_bound_is_an_upper_bound() {
        let mut mixed = phase("produce+consume", PhaseKind::ProduceConsume, 10, 1.0);
        mixed.ack_latency = Some(Latency {
            count: 10,
            p50_ms: 1.0,
            p99_ms: 6.0,
            p99_9_ms: 9.0,
            max_ms: 10.0,
            mean_ms: 2.0,
        });
        let c = checks(&limits(900, 5000), 1, &[mixed], None, None);
        assert_eq!(c[1].value, Some(6.0));
        assert_eq!(c[1].met(), Some(false));
        assert!(c[0].note.contains("RF=3"), "{}", c[0].note);
    }

    #[test]
    fn transactional_throughput_is_a_ratio_to_the_idempotent_phase() {
        let txn_kind = PhaseKind::Transactional {
            producers: 8,
            records_per_txn: 100,
            txn_ms: 100,
        };
        let idempotent = phase(
            "produce acks=all",
            PhaseKind::Produce { acks: -1 },
            100,
            1.0,
        );
        let txn = phase("transactional", txn_kind, 70, 1.0);
        let c = checks(
            &limits(900, 5000),
            3,
            &[idempotent, txn.clone()],
            None,
            None,
        );
        // No transactional phase, no check; with one, it is the last.
        assert_eq!(c.len(), 5);
        assert!(c[4].name.contains("issue 15"), "{}", c[4].name);
        assert_eq!(c[4].value, Some(0.7));
        assert_eq!(c[4].met(), Some(false));
        // Without the idempotent phase the ratio cannot be measured, and says so.
        let c = checks(
            &limits(900, 5000),
            3,
            std::slice::from_ref(&txn),
            None,
            None,
        );
        assert_eq!(c[4].met(), None);
        assert!(c[4].note.contains("acks-all"), "{}", c[4].note);
        let json = txn.to_json().render();
        assert!(json.contains("\"records_per_txn\": 100"), "{json}");
        assert!(json.contains("\"kind\": \"transactional\""), "{json}");
    }

    #[test]
    fn limit_ratios_divide_by_the_disk_share_and_loopback() {
        let phases = [phase(
            "produce acks=1",
            PhaseKind::Produce { acks: 1 },
            100,
            2.0,
        )];
        let r = limit_ratios(&limits(600, 1000), 3, &phases);
        // 50 MB/s over 200 MB/s and over 1000 MB/s.
        assert_eq!(r, vec![("produce acks=1".to_string(), 0.25, 0.05)]);
    }

    #[test]
    fn peer_ratio_pairs_phases_by_name() {
        let cmp = PeerComparison {
            peer_name: "tansu".into(),
            keel: vec![
                phase("produce acks=1", PhaseKind::Produce { acks: 1 }, 300, 1.0),
                phase("consume", PhaseKind::Consume, 100, 1.0),
            ],
            peer: vec![phase(
                "produce acks=1",
                PhaseKind::Produce { acks: 1 },
                200,
                1.0,
            )],
        };
        assert_eq!(cmp.ratios(), vec![("produce acks=1".to_string(), 1.5)]);
        assert_eq!(cmp.acks1_ratio(), Some(1.5));
        let c = checks(&limits(900, 5000), 1, &[], Some(&cmp), None);
        assert_eq!(c[3].met(), Some(true));
    }

    #[test]
    fn phase_rates_and_cpu_per_gb() {
        let p = phase("consume", PhaseKind::Consume, 500, 2.0);
        assert_eq!(p.records_per_s(), 250_000.0);
        assert_eq!(p.mb_per_s(), 250.0);
        assert_eq!(p.broker_cpu_secs_per_gb(), Some(4.0));
        let json = p.to_json().render();
        assert!(json.contains("\"mb_per_s\": 250.0,"), "{json}");
        assert!(json.contains("\"acks\": null,"), "{json}");
    }

    #[test]
    fn latency_from_a_histogram_of_micros() {
        let mut h = Histogram::new();
        for us in 1..=1000u64 {
            h.record(us);
        }
        let l = Latency::from_micros(&h).unwrap();
        assert_eq!(l.count, 1000);
        assert!((l.p50_ms - 0.5).abs() < 0.005, "{}", l.p50_ms);
        assert!((l.p99_ms - 0.99).abs() < 0.01, "{}", l.p99_ms);
        assert_eq!(l.max_ms, 1.0);
        assert_eq!(Latency::from_micros(&Histogram::new()), None);
    }

    #[test]
    fn limits_json_names_every_figure() {
        let json = limits(900, 5000).to_json().render();
        for key in [
            "\"disk_append_fdatasync_mb_per_s\": 900.0,",
            "\"disk_rounds_mb_per_s\": [",
            "\"disk_parallel_mb_per_s\": null,",
            "\"sync_latency\": null,",
            "\"loopback_tcp_mb_per_s\": 5000.0,",
        ] {
            assert!(json.contains(key), "{key} in {json}");
        }
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }
}
