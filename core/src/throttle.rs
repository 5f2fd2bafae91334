//! The replication throttle (Kafka's `leader.replication.throttled.rate` /
//! `follower.replication.throttled.rate`, KIP-73): a byte budget for the traffic that copies a
//! partition onto a replica a reassignment adds, so that moving data does not starve producers.
//!
//! Which traffic is throttled is the broker's decision ([`is_throttled`]): only a fetch by a
//! replica the partition is adding and that is not in its ISR. A follower in the ISR is never
//! throttled: acks=all waits for it, so holding its bytes back would stall producers, the
//! opposite of the point. The rates themselves are broker configs in the metadata
//! ([`crate::controller::broker_config`]).
//!
//! This module owns the arithmetic only, with time as a value: a [`TokenBucket`] per rate.
//! Kafka measures a rate over a sliding window and stops sending once the measured rate is over
//! the quota; a bucket does the same with a bound that is exact: after any sequence of sends,
//! the bytes sent by time `t` are at most `rate * (t - start) + one answer` (the bucket starts
//! empty and the answer that takes it below zero is still sent whole, as Kafka sends a fetch
//! answer whole once it decided to). Credit is capped at one second's worth, so an idle
//! throttle cannot save up a burst.
//!
//! What always holds: the balance never exceeds one second's worth of the rate; a send is
//! allowed exactly when the balance is positive; the wait until the next send is 0 exactly
//! then.

use crate::controller::BrokerId;

/// Bytes per second, within which a bucket refills.
const SECOND_MS: i64 = 1000;

/// A byte budget refilled at `rate` bytes per second, capped at one second's worth.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenBucket {
    /// Bytes per second, at least 1.
    rate: u64,
    /// Bytes that may still be sent; negative: the debt of the last answer sent.
    balance: f64,
    /// When the balance was last brought up to date (ms, the caller's clock).
    updated_ms: i64,
}

impl TokenBucket {
    /// An empty bucket refilling at `rate` bytes per second (at least 1) from `now_ms`.
    pub fn new(rate: u64, now_ms: i64) -> TokenBucket {
        TokenBucket {
            rate: rate.max(1),
            balance: 0.0,
            updated_ms: now_ms,
        }
    }

    /// The rate, in bytes per second.
    pub fn rate(&self) -> u64 {
        self.rate
    }

    /// A new rate from `now_ms`, keeping the balance (capped at one second of the new rate).
    pub fn set_rate(&mut self, rate: u64, now_ms: i64) {
        self.refill(now_ms);
        self.rate = rate.max(1);
        self.balance = self.balance.min(self.rate as f64);
    }

    fn refill(&mut self, now_ms: i64) {
        let elapsed = now_ms.saturating_sub(self.updated_ms).max(0);
        self.updated_ms = self.updated_ms.max(now_ms);
        let credit = self.rate as f64 * elapsed as f64 / SECOND_MS as f64;
        self.balance = (self.balance + credit).min(self.rate as f64);
    }

    /// Whether an answer may be sent at `now_ms`: the balance is positive.
    pub fn may_send(&mut self, now_ms: i64) -> bool {
        self.refill(now_ms);
        self.balance > 0.0
    }

    /// Counts `bytes` sent at `now_ms` (the balance may go below zero: a debt).
    pub fn record(&mut self, now_ms: i64, bytes: u64) {
        self.refill(now_ms);
        self.balance -= bytes as f64;
    }

    /// Milliseconds from `now_ms` until a send is allowed again: 0 when it is now.
    pub fn wait_ms(&mut self, now_ms: i64) -> i64 {
        self.refill(now_ms);
        if self.balance > 0.0 {
            return 0;
        }
        // Strictly positive after this long: one millisecond past the debt's repayment.
        (-self.balance * SECOND_MS as f64 / self.rate as f64).floor() as i64 + 1
    }
}

/// Whether `follower`'s fetch of a partition is reassignment catch-up traffic, the only traffic
/// a replication throttle holds back: the partition is adding `follower` (a reassignment in
/// progress) and `follower` is not in its ISR.
pub fn is_throttled(adding: &[BrokerId], isr: &[BrokerId], follower: BrokerId) -> bool {
    adding.contains(&follower) && !isr.contains(&follower)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};

    #[test]
    fn only_adding_replicas_outside_the_isr_are_throttled() {
        let b = BrokerId;
        assert!(is_throttled(&[b(4)], &[b(1), b(2)], b(4)));
        // In the ISR: acks=all waits for it, never throttled.
        assert!(!is_throttled(&[b(4)], &[b(1), b(4)], b(4)));
        // An ordinary follower, or no reassignment.
        assert!(!is_throttled(&[b(4)], &[b(1)], b(2)));
        assert!(!is_throttled(&[], &[b(1)], b(2)));
    }

    #[test]
    fn a_bucket_starts_empty_and_refills_at_its_rate() {
        let mut t = TokenBucket::new(1000, 0);
        assert!(!t.may_send(0));
        assert_eq!(t.wait_ms(0), 1);
        assert!(t.may_send(1));
        t.record(1, 5000);
        // 4,999 bytes of debt at 1,000 B/s: 4,999 ms, plus the one that makes it positive.
        assert_eq!(t.wait_ms(1), 5000);
        assert!(!t.may_send(4000));
        assert!(t.may_send(5001));
        // Credit is capped at one second's worth.
        assert!(t.may_send(100_000));
        t.record(100_000, 1000);
        assert!(!t.may_send(100_000));
    }

    #[test]
    fn a_new_rate_keeps_the_debt() {
        let mut t = TokenBucket::new(1000, 0);
        t.record(0, 10_000);
        t.set_rate(10_000, 0);
        assert_eq!(t.rate(), 10_000);
        assert_eq!(t.wait_ms(0), 1001);
        // A rate of 0 is taken as 1: a throttle never stops traffic for good.
        t.set_rate(0, 0);
        assert_eq!(t.rate(), 1);
    }

    /// The bound the node test and docs/operations.md rely on: whatever the answer sizes and
    /// timings, the bytes sent by `t` are at most `rate * t / 1000` plus the largest answer.
    #[test]
    fn bytes_sent_stay_within_the_rate_plus_one_answer() {
        let mut rng = StdRng::seed_from_u64(17);
        for _ in 0..200 {
            let rate = rng.gen_range(1_000..10_000_000u64);
            let largest = rng.gen_range(1..2_000_000u64);
            let mut t = TokenBucket::new(rate, 0);
            let (mut now, mut sent) = (0i64, 0u64);
            for _ in 0..500 {
                now += if rng.gen_bool(0.5) {
                    t.wait_ms(now)
                } else {
                    rng.gen_range(0..50)
                };
                if t.may_send(now) {
                    let bytes = rng.gen_range(1..=largest);
                    t.record(now, bytes);
                    sent += bytes;
                }
                let allowed = rate as f64 * now as f64 / 1000.0 + largest as f64;
                assert!(sent as f64 <= allowed, "{sent} > {allowed} at {now} ms");
            }
        }
    }
}
