//! The broker's clocks. Durations (ISR lag, fetch and AlterPartition backoffs, replica
//! deadlines, broker sessions, group session timeouts) are measured on a monotonic clock, so
//! that a step of the wall clock (NTP, an operator) neither expires every follower at once
//! nor holds a deadline back; record timestamps, log segments and retention use the wall
//! clock, as Kafka's do.
//!
//! The monotonic clock reads in milliseconds since the Unix epoch: it starts at the wall time
//! when its owner (a broker, a metadata quorum driver) started and advances with the
//! runtime's monotonic clock from there, so its values stay close to wall time and can be
//! compared with timestamps, but never go backwards. Under the simulator both clocks are
//! madsim's simulated ones. Each owner has its own: a process-wide anchor would outlive the
//! simulated runtime it was read in.

use std::time::{SystemTime, UNIX_EPOCH};

/// A monotonic clock in milliseconds, anchored at the wall clock when it was made.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: tokio::time::Instant,
    start_wall_ms: i64,
}

impl Clock {
    /// A clock that reads the wall time now and advances monotonically from there.
    pub fn new() -> Clock {
        Clock {
            start: tokio::time::Instant::now(),
            start_wall_ms: wall_ms(),
        }
    }

    /// Milliseconds since the Unix epoch, as of the clock's start plus the monotonic time
    /// since: never smaller than an earlier reading.
    pub fn now_ms(&self) -> i64 {
        let elapsed = tokio::time::Instant::now().saturating_duration_since(self.start);
        self.start_wall_ms
            .saturating_add(i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// The wall clock in milliseconds since the Unix epoch (record timestamps, retention).
pub fn wall_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(all(test, not(madsim)))]
mod tests {
    use super::*;

    #[test]
    fn the_clock_starts_at_wall_time_and_never_goes_back() {
        let before = wall_ms();
        let clock = Clock::new();
        let mut last = clock.now_ms();
        assert!(
            last >= before && last <= wall_ms(),
            "anchored at the wall clock"
        );
        for _ in 0..1000 {
            let now = clock.now_ms();
            assert!(now >= last);
            last = now;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(
            clock.now_ms() >= last + 20,
            "advances with the monotonic clock"
        );
    }
}
