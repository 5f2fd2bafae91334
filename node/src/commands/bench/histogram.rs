//! A log-linear latency histogram (the shape of HdrHistogram with two significant digits).
//!
//! Values are microseconds. Below [`EXACT_BELOW`] each value has its own bucket; above, every
//! power of two is split into [`SUB_BUCKETS`] equal buckets, so a recorded value and the value a
//! percentile reports for it differ by less than 1 part in [`SUB_BUCKETS`] (0.8%). The counts
//! live in one fixed table of [`BUCKETS`] entries: recording never allocates.
//!
//! What always holds: `count` is the sum of the bucket counts; `min <= max` once anything was
//! recorded; a percentile is never above `max` nor below `min`.

/// log2 of the buckets per power of two.
const SUB_BITS: u32 = 7;
/// Buckets per power of two.
pub const SUB_BUCKETS: u64 = 1 << SUB_BITS;
/// Values below this are counted exactly.
pub const EXACT_BELOW: u64 = SUB_BUCKETS;
/// The table covers every u64: 64 - SUB_BITS shifts of SUB_BUCKETS buckets each, plus the exact
/// range.
pub const BUCKETS: usize = ((64 - SUB_BITS as usize) + 1) * SUB_BUCKETS as usize;

#[derive(Clone, Debug)]
pub struct Histogram {
    counts: Vec<u64>,
    count: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

/// The bucket of `value`.
fn index(value: u64) -> usize {
    if value < EXACT_BELOW {
        return value as usize;
    }
    let exponent = 63 - value.leading_zeros(); // >= SUB_BITS
    let shift = exponent - SUB_BITS;
    let sub = (value >> shift) - SUB_BUCKETS; // 0..SUB_BUCKETS
    ((shift as usize + 1) << SUB_BITS) + sub as usize
}

/// The largest value that falls in bucket `i`.
fn highest_in(i: usize) -> u64 {
    if (i as u64) < EXACT_BELOW {
        return i as u64;
    }
    let shift = (i >> SUB_BITS) as u32 - 1;
    let sub = (i as u64) & (SUB_BUCKETS - 1);
    let lowest = (SUB_BUCKETS + sub) << shift;
    lowest.saturating_add((1u64 << shift) - 1)
}

impl Histogram {
    pub fn new() -> Histogram {
        Histogram {
            counts: vec![0; BUCKETS],
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }

    pub fn record(&mut self, value: u64) {
        self.counts[index(value)] += 1;
        self.count += 1;
        self.sum += u128::from(value);
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine += theirs;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn max(&self) -> Option<u64> {
        (self.count > 0).then_some(self.max)
    }

    pub fn min(&self) -> Option<u64> {
        (self.count > 0).then_some(self.min)
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum as f64 / self.count as f64)
    }

    /// The value at or below which `percent` of the recorded values lie (nearest rank), to
    /// the histogram's precision (the highest value of its bucket); None if nothing was recorded.
    pub fn percentile(&self, percent: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let percent = percent.clamp(0.0, 100.0);
        // Nearest rank, ceil(p/100 * count), less a hair so that 99.9% of 1000 is rank 999
        // although 0.999 * 1000.0 rounds to just above 999 in binary floating point.
        let exact = percent / 100.0 * self.count as f64;
        let rank = (exact - exact * 1e-12).ceil().max(1.0) as u64;
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(highest_in(i).clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_cover_every_value() {
        // Each bucket's highest value is one below the next bucket's lowest.
        for i in 0..BUCKETS - 1 {
            let next_lowest = highest_in(i) + 1;
            assert_eq!(index(next_lowest), i + 1, "bucket {i}");
            assert_eq!(index(highest_in(i)), i, "bucket {i}");
        }
        assert_eq!(index(u64::MAX), BUCKETS - 1);
        assert_eq!(highest_in(BUCKETS - 1), u64::MAX);
    }

    #[test]
    fn small_values_are_exact() {
        let mut h = Histogram::new();
        for v in [0, 1, 5, 127] {
            h.record(v);
        }
        assert_eq!(h.percentile(25.0), Some(0));
        assert_eq!(h.percentile(50.0), Some(1));
        assert_eq!(h.percentile(75.0), Some(5));
        assert_eq!(h.percentile(100.0), Some(127));
        assert_eq!(h.min(), Some(0));
        assert_eq!(h.max(), Some(127));
    }

    #[test]
    fn percentiles_of_a_uniform_range_within_one_percent() {
        let mut h = Histogram::new();
        for v in 1..=100_000u64 {
            h.record(v);
        }
        for (p, exact) in [
            (50.0, 50_000.0),
            (99.0, 99_000.0),
            (99.9, 99_900.0),
            (100.0, 100_000.0),
        ] {
            let got = h.percentile(p).unwrap() as f64;
            assert!(
                (got - exact).abs() / exact < 1.0 / SUB_BUCKETS as f64,
                "p{p}: {got} vs {exact}"
            );
        }
        assert_eq!(h.mean(), Some(50_000.5));
        assert_eq!(h.count(), 100_000);
    }

    #[test]
    fn a_tail_of_one_in_a_thousand_shows_at_p99_9_not_p99() {
        let mut h = Histogram::new();
        for _ in 0..999 {
            h.record(1_000);
        }
        h.record(1_000_000);
        assert_eq!(h.percentile(99.0), Some(highest_in(index(1_000))));
        assert_eq!(h.percentile(99.9), Some(highest_in(index(1_000))));
        assert_eq!(h.percentile(99.99), Some(1_000_000));
    }

    #[test]
    fn empty_has_no_percentiles() {
        let h = Histogram::new();
        assert_eq!(h.percentile(50.0), None);
        assert_eq!(h.max(), None);
        assert_eq!(h.mean(), None);
    }

    #[test]
    fn merge_equals_recording_everything_in_one() {
        let (mut a, mut b, mut all) = (Histogram::new(), Histogram::new(), Histogram::new());
        for v in 0..5_000u64 {
            let v = v * v % 77_777;
            if v % 3 == 0 {
                a.record(v);
            } else {
                b.record(v);
            }
            all.record(v);
        }
        a.merge(&b);
        assert_eq!(a.count(), all.count());
        for p in [1.0, 50.0, 90.0, 99.0, 99.9, 100.0] {
            assert_eq!(a.percentile(p), all.percentile(p), "p{p}");
        }
        assert_eq!(a.min(), all.min());
        assert_eq!(a.max(), all.max());
    }
}
