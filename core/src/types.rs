//! Newtypes for the numbers keel passes around, so that an offset is never confused with a
//! position, an epoch or a count.

use std::fmt;

/// A Kafka offset: the position of a record in a partition's log (not a byte position).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Offset(pub i64);

impl Offset {
    pub const ZERO: Offset = Offset(0);

    /// The offset `n` records after this one. Saturates: offsets near `i64::MAX` never occur
    /// in a real log, but a damaged or hostile batch header may claim one, and arithmetic on
    /// bytes from outside must not panic.
    pub fn plus(self, n: i64) -> Offset {
        Offset(self.0.saturating_add(n))
    }
}

#[cfg(test)]
mod tests {
    use super::Offset;

    #[test]
    fn offset_arithmetic_saturates_instead_of_panicking() {
        assert_eq!(Offset(i64::MAX - 1).plus(5), Offset(i64::MAX));
        assert_eq!(Offset(3).plus(4), Offset(7));
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A partition leader epoch (Kafka's `partitionLeaderEpoch`). Bumps on every leader change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LeaderEpoch(pub i32);

impl LeaderEpoch {
    /// The epoch a batch carries before any leader stamped it (Kafka's NO_PARTITION_LEADER_EPOCH).
    pub const NONE: LeaderEpoch = LeaderEpoch(-1);
}

impl fmt::Display for LeaderEpoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An idempotent producer's id (-1 for batches from non-idempotent producers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProducerId(pub i64);

impl ProducerId {
    pub const NONE: ProducerId = ProducerId(-1);
}

impl fmt::Display for ProducerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}
