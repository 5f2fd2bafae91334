//! The log cleaner's threads: core's cleaner (`keel_core::log::cleaner`, docs/compaction.md)
//! run over every partition of a compacted topic, off the produce path.
//!
//! One cleaning of one partition holds the partition's lock twice, briefly: to plan (a snapshot
//! of the closed segments below the high watermark and the last stable offset, and the
//! producers' last offsets) and to install (check that nothing planned changed, then swap with
//! renames). The reading and writing in between runs on a clone of the log's storage without
//! the lock, over closed segments that nothing else writes. An append, a roll, a truncation, a
//! retention or a DeleteRecords meanwhile either touches none of the planned segments (appends
//! and rolls write the active segment only) or makes the install find the plan stale
//! (retention and DeleteRecords remove segments; a truncation bumps the log's generation), in
//! which case the cleaned files are removed and the log keeps what the other operation did.
//!
//! Tombstones past their delete horizon are removed only below the offset every assigned
//! replica holds durably, as the leader knows it (`PartitionReplica::tombstone_bound`); a
//! follower removes none.
//!
//! Reads and writes of all cleaner threads together are bounded by
//! `log.cleaner.io.max.bytes.per.second` ([`Throttle`]). Under the simulator, which runs no
//! threads, the same three steps run as one task per broker ([`spawn`]), which waits the
//! simulated time the cleaning's I/O takes between the build and the install, so that a power
//! loss can fall in the middle of a cleaning.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
#[cfg(not(madsim))]
use std::sync::Weak;
use std::time::{Duration, Instant};

use keel_core::log::cleaner::{self, CleanInputs, CleanPlan, CleanStats, Cleaned, CleanerConfig};
use keel_core::log::LogError;
use keel_core::planted::{self, Bug};

use super::{Broker, PartitionHandle};
use crate::clock::wall_ms;
use crate::config::CleanerSettings;

/// What the cleaner has done since the broker started (Prometheus counters).
#[derive(Debug, Default)]
pub struct CleanerCounters {
    /// Bytes the cleaner read and wrote.
    pub bytes: AtomicU64,
    /// Old segments replaced by cleaned ones.
    pub segments: AtomicU64,
    /// Cleanings that failed (a corrupt segment, an I/O error).
    pub errors: AtomicU64,
    /// Cleanings installed, and cleanings dropped at install because the log changed under
    /// them (a truncation, a retention): not on the metrics endpoint, the simulator counts
    /// them.
    pub cleanings: AtomicU64,
    pub stale: AtomicU64,
    /// Tombstones removed, and batches left without a record, by installed cleanings.
    pub tombstones_removed: AtomicU64,
    pub batches_emptied: AtomicU64,
}

/// A token bucket shared by the cleaner threads: [`Throttle::spend`] sleeps the calling thread
/// until the bytes it reports fit the rate (Kafka's `Throttler`).
#[derive(Debug)]
pub struct Throttle {
    bytes_per_second: u64,
    /// When the current window started, and the bytes spent in it.
    window: Mutex<(Instant, u64)>,
}

impl Throttle {
    pub fn new(bytes_per_second: u64) -> Throttle {
        Throttle {
            bytes_per_second: bytes_per_second.max(1),
            window: Mutex::new((Instant::now(), 0)),
        }
    }

    /// Counts `bytes` and sleeps as long as the rate requires.
    pub fn spend(&self, bytes: u64) {
        if self.bytes_per_second == u64::MAX {
            return;
        }
        let wait = {
            let mut window = self.window.lock().expect("throttle lock poisoned");
            let elapsed = window.0.elapsed();
            if elapsed > Duration::from_secs(1) {
                // A fresh window, so that an idle spell does not buy a burst.
                *window = (Instant::now(), 0);
            }
            window.1 += bytes;
            let due = Duration::try_from_secs_f64(window.1 as f64 / self.bytes_per_second as f64)
                .unwrap_or(Duration::MAX);
            due.saturating_sub(window.0.elapsed())
        };
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
    }
}

/// Starts `settings.threads` cleaner threads (none when `log.cleaner.enable` is false). They
/// stop when the broker is dropped.
#[cfg(not(madsim))]
pub fn spawn(broker: &Arc<Broker>, settings: &CleanerSettings) {
    if !settings.enable {
        return;
    }
    let throttle = Arc::new(Throttle::new(settings.io_bytes_per_second_max));
    let threads = settings.threads.max(1) as usize;
    for thread in 0..threads {
        let broker = Arc::downgrade(broker);
        let throttle = throttle.clone();
        let backoff = Duration::from_millis(settings.backoff_ms.max(0) as u64);
        let spawned = std::thread::Builder::new()
            .name(format!("keel-cleaner-{thread}"))
            .spawn(move || run(broker, thread, threads, &throttle, backoff));
        if let Err(e) = spawned {
            tracing::error!("cannot start log cleaner thread {thread}: {e}");
        }
    }
}

/// One thread's loop: clean every due partition of its share, sleep the backoff when none was.
#[cfg(not(madsim))]
fn run(
    broker: Weak<Broker>,
    thread: usize,
    threads: usize,
    throttle: &Throttle,
    backoff: Duration,
) {
    loop {
        let Some(b) = broker.upgrade() else { return };
        let partitions = b.all_partitions();
        let mut cleaned = 0;
        for (i, p) in partitions.iter().enumerate() {
            if i % threads == thread && b.clean_partition(p, throttle).is_some() {
                cleaned += 1;
            }
        }
        drop(b);
        if cleaned == 0 {
            std::thread::sleep(backoff);
        }
    }
}

/// Starts the cleaner, under the simulator: one task that goes over every partition, cleans
/// those that are due, and waits `log.cleaner.backoff.ms` after each pass (not only when none
/// was due, as the threads do: the simulator's topics are due at every pass, and back-to-back
/// passes would take most of a run's CPU). Between a cleaning's build and its install it
/// waits as long as its reads and writes take at [`SIMULATED_CLEANER_BYTES_PER_SECOND`], so
/// that a kill can fall between the two.
#[cfg(madsim)]
pub fn spawn(broker: &Arc<Broker>, settings: &CleanerSettings) {
    if !settings.enable {
        return;
    }
    let broker = Arc::downgrade(broker);
    let backoff = Duration::from_millis(settings.backoff_ms.max(1) as u64);
    tokio::spawn(async move {
        let unbounded = Throttle::new(u64::MAX);
        loop {
            let Some(b) = broker.upgrade() else { return };
            let partitions = b.all_partitions();
            drop(b);
            for p in partitions {
                let Some(b) = broker.upgrade() else { return };
                let Some(job) = b.plan_cleaning(&p) else {
                    continue;
                };
                let (built, spent) = build_cleaning(&p, &job, &unbounded);
                drop(b);
                let took =
                    Duration::from_secs_f64(spent as f64 / SIMULATED_CLEANER_BYTES_PER_SECOND);
                tokio::time::sleep(took.max(Duration::from_millis(1))).await;
                let Some(b) = broker.upgrade() else { return };
                b.install_cleaning(&p, built, spent);
            }
            tokio::time::sleep(backoff).await;
        }
    });
}

/// The disk bandwidth a simulated cleaning's reads and writes take.
#[cfg(madsim)]
pub const SIMULATED_CLEANER_BYTES_PER_SECOND: f64 = 1_000_000.0;

/// One cleaning, planned under the partition's lock.
pub struct CleaningJob {
    plan: CleanPlan,
    config: CleanerConfig,
    inputs: CleanInputs,
}

/// Phase 2, without the lock: the cleaned files, and the bytes read and written.
fn build_cleaning(
    p: &PartitionHandle,
    job: &CleaningJob,
    throttle: &Throttle,
) -> (Result<Cleaned, LogError>, u64) {
    let mut storage = p.syncer.clone();
    let mut spent = 0u64;
    let built = cleaner::build(
        &mut storage,
        job.plan.clone(),
        &job.config,
        &job.inputs,
        &mut |bytes| {
            spent += bytes;
            throttle.spend(bytes);
        },
    );
    (built, spent)
}

impl Broker {
    /// Cleans `p` once if its topic is compacted and its log is due. Returns what the cleaning
    /// did, or `None` if nothing was cleaned (not compacted, not due, stale or failed: a
    /// failure is logged and counted).
    pub fn clean_partition(&self, p: &PartitionHandle, throttle: &Throttle) -> Option<CleanStats> {
        let job = self.plan_cleaning(p)?;
        let (built, spent) = build_cleaning(p, &job, throttle);
        self.install_cleaning(p, built, spent)
    }

    /// Phase 1, under the partition's lock: the plan, if `p`'s topic is compacted and its log
    /// is due. The bound is the high watermark or the last stable offset, whichever is lower;
    /// tombstones are bound by what every replica holds.
    fn plan_cleaning(&self, p: &PartitionHandle) -> Option<CleaningJob> {
        let topic = self.with_metadata(|m| m.topic_config(&p.topic).cloned())?;
        if !topic.cleanup_policy().compact {
            return None;
        }
        let config = topic.to_cleaner_config();
        let now = wall_ms();
        p.with(|r| {
            if p.deleted.load(Ordering::Acquire) {
                return None;
            }
            let bound = if planted::active(Bug::CleanAboveHighWatermark) {
                r.log().end()
            } else {
                r.high_watermark().min(r.last_stable_offset())
            };
            let tombstones_below = r.tombstone_bound();
            let plan = r
                .log()
                .plan_clean_bounded(&config, bound, now, Some(tombstones_below))?;
            let producers_last = r
                .producers()
                .producers()
                .map(|(id, entry)| (id, entry.last_offset()))
                .collect();
            Some(CleaningJob {
                plan,
                config,
                inputs: CleanInputs {
                    now_ms: now,
                    producers_last,
                    tombstones_below: Some(tombstones_below),
                },
            })
        })
    }

    /// Phase 3, under the partition's lock: installs what [`build_cleaning`] wrote, unless the
    /// log changed meanwhile; counts and logs the outcome.
    fn install_cleaning(
        &self,
        p: &PartitionHandle,
        built: Result<Cleaned, LogError>,
        spent: u64,
    ) -> Option<CleanStats> {
        let counters = &self.metrics().cleaner;
        counters.bytes.fetch_add(spent, Ordering::Relaxed);
        let outcome = built.and_then(|cleaned| {
            p.with(|r| {
                if p.deleted.load(Ordering::Acquire) {
                    return Ok(None);
                }
                r.install_cleaned(cleaned)
            })
        });
        match outcome {
            Ok(Some(stats)) => {
                counters
                    .segments
                    .fetch_add(stats.segments_cleaned, Ordering::Relaxed);
                counters.cleanings.fetch_add(1, Ordering::Relaxed);
                counters
                    .tombstones_removed
                    .fetch_add(stats.tombstones_removed, Ordering::Relaxed);
                counters
                    .batches_emptied
                    .fetch_add(stats.batches_emptied, Ordering::Relaxed);
                tracing::info!(
                    topic = %p.topic,
                    partition = p.index,
                    "cleaned {} segments into {}: {} of {} records removed ({} tombstones), {} \
                     bytes written",
                    stats.segments_cleaned,
                    stats.segments_written,
                    stats.records_removed,
                    stats.records_read,
                    stats.tombstones_removed,
                    stats.bytes_written,
                );
                Some(stats)
            }
            Ok(None) => {
                counters.stale.fetch_add(1, Ordering::Relaxed);
                None
            }
            Err(e) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(topic = %p.topic, partition = p.index, "log cleaning failed, segments left in place: {e}");
                None
            }
        }
    }
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use super::*;

    /// Kafka's `Throttler`: spending twice the rate's bytes takes about a second; an unbounded
    /// throttle never sleeps.
    #[test]
    fn the_throttle_holds_the_rate() {
        let throttle = Throttle::new(10_000);
        let start = Instant::now();
        for _ in 0..4 {
            throttle.spend(5_000);
        }
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(1_500), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        let free = Throttle::new(u64::MAX);
        let start = Instant::now();
        free.spend(u64::MAX / 2);
        assert!(start.elapsed() < Duration::from_millis(100));
    }
}
