//! Client byte-rate quotas (KIP-13, KIP-55): which quota applies to a request, the rate a
//! client has used over a sliding window, and how long a client over its quota is throttled.
//!
//! This module owns the arithmetic only, with time as a value (milliseconds on any monotonic
//! clock the caller chooses); the quotas themselves live in the metadata
//! ([`crate::controller::quotas`]) and the broker keeps one [`ByteRate`] per quota key.
//!
//! What always holds:
//! - a [`ByteRate`] holds at most [`QUOTA_WINDOW_SAMPLES`] samples, each covering
//!   [`QUOTA_SAMPLE_MS`]; samples older than the window are dropped before any measurement;
//! - the measured window is never shorter than all samples but one, so a client's first
//!   burst is judged over the whole window, not over the milliseconds since it started
//!   (Kafka's `Rate.windowSize`);
//! - the throttle time is 0 exactly when the measured rate is at most the quota.

use std::collections::BTreeMap;

/// Samples in the window (Kafka's `quota.window.num`, 11).
pub const QUOTA_WINDOW_SAMPLES: usize = 11;
/// Milliseconds each sample covers (Kafka's `quota.window.size.seconds`, 1 s).
pub const QUOTA_SAMPLE_MS: u64 = 1000;

/// The longest throttle told to a client: Kafka's `ClientQuotaManager` caps a throttle at the
/// whole window, so that one huge request does not mute a client for minutes.
pub const THROTTLE_MS_MAX: u64 = QUOTA_WINDOW_SAMPLES as u64 * QUOTA_SAMPLE_MS;

/// Bytes counted per sample of a sliding window.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ByteRate {
    /// `(sample start ms, bytes)`, oldest first, at most [`QUOTA_WINDOW_SAMPLES`].
    samples: std::collections::VecDeque<(u64, u64)>,
}

impl ByteRate {
    /// An empty window.
    pub fn new() -> ByteRate {
        ByteRate::default()
    }

    /// Counts `bytes` at `now_ms`.
    pub fn record(&mut self, now_ms: u64, bytes: u64) {
        self.purge(now_ms);
        match self.samples.back_mut() {
            Some((start, total)) if now_ms < start.saturating_add(QUOTA_SAMPLE_MS) => {
                *total = total.saturating_add(bytes);
            }
            _ => {
                if self.samples.len() == QUOTA_WINDOW_SAMPLES {
                    self.samples.pop_front();
                }
                self.samples.push_back((now_ms, bytes));
            }
        }
        debug_assert!(self.samples.len() <= QUOTA_WINDOW_SAMPLES);
    }

    /// The measured rate at `now_ms`, in bytes per second.
    pub fn rate(&mut self, now_ms: u64) -> f64 {
        self.purge(now_ms);
        let total: u64 = self.samples.iter().map(|(_, b)| b).sum();
        total as f64 * 1000.0 / self.window_ms(now_ms) as f64
    }

    /// How long a client whose quota is `quota_bytes_per_s` waits before its rate is back
    /// within it (KIP-13: `(rate - quota) / quota * window`), capped at [`THROTTLE_MS_MAX`];
    /// 0 when within the quota.
    pub fn throttle_ms(&mut self, now_ms: u64, quota_bytes_per_s: u64) -> u64 {
        let rate = self.rate(now_ms);
        let quota = quota_bytes_per_s.max(1) as f64;
        if rate <= quota {
            return 0;
        }
        let throttle = (rate - quota) / quota * self.window_ms(now_ms) as f64;
        (throttle.ceil() as u64).clamp(1, THROTTLE_MS_MAX)
    }

    /// Whether no sample is left in the window at `now_ms` (the broker forgets such clients).
    pub fn is_idle(&mut self, now_ms: u64) -> bool {
        self.purge(now_ms);
        self.samples.is_empty()
    }

    fn purge(&mut self, now_ms: u64) {
        let horizon = QUOTA_WINDOW_SAMPLES as u64 * QUOTA_SAMPLE_MS;
        while let Some((start, _)) = self.samples.front() {
            if now_ms.saturating_sub(*start) >= horizon {
                self.samples.pop_front();
            } else {
                break;
            }
        }
    }

    /// Kafka's `Rate.windowSize`: from the oldest sample's start to now, but at least all
    /// samples but one.
    fn window_ms(&self, now_ms: u64) -> u64 {
        let elapsed = self
            .samples
            .front()
            .map_or(0, |(start, _)| now_ms.saturating_sub(*start));
        elapsed.max((QUOTA_WINDOW_SAMPLES as u64 - 1) * QUOTA_SAMPLE_MS)
    }
}

/// The kind of client quota: on produced bytes or on fetched bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QuotaKind {
    /// `producer_byte_rate`: record bytes in Produce requests.
    Produce,
    /// `consumer_byte_rate`: record bytes in Fetch responses to consumers.
    Fetch,
}

impl QuotaKind {
    /// Kafka's config key.
    pub fn key(self) -> &'static str {
        match self {
            QuotaKind::Produce => PRODUCER_BYTE_RATE,
            QuotaKind::Fetch => CONSUMER_BYTE_RATE,
        }
    }
}

/// Kafka's key of the produce quota.
pub const PRODUCER_BYTE_RATE: &str = "producer_byte_rate";
/// Kafka's key of the fetch quota.
pub const CONSUMER_BYTE_RATE: &str = "consumer_byte_rate";

/// One side of a quota entity: a specific name, or the default (`None`, Kafka's `<default>`).
pub type EntityName = Option<String>;

/// A quota entity: a user, a client id, or both (Kafka's `ClientQuotaEntity` with the
/// `user` and `client-id` types); a side that is absent is not part of the entity.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QuotaEntity {
    /// The `user` part: absent, the default user, or one user.
    pub user: Option<EntityName>,
    /// The `client-id` part: absent, the default client id, or one client id.
    pub client_id: Option<EntityName>,
}

/// The quota that applies to a request, and the key its usage is counted under: clients that
/// share a quota entity share one rate (a user's quota is the user's whole, across its client
/// ids), while a default quota is counted per user or client id it matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppliedQuota {
    /// Bytes per second.
    pub bytes_per_s: u64,
    /// `(user, client id)`, each empty when the matched entity has no such part.
    pub key: (String, String),
}

/// Kafka's precedence (`ClientQuotaManager`, KIP-55), most specific first, for a request from
/// `user` with `client_id`: user and client id, user and default client id, user, default user
/// and client id, default user and default client id, default user, client id, default client
/// id. The first entity with a quota of `kind` applies; `None` if none has one.
pub fn applied_quota(
    quotas: &BTreeMap<QuotaEntity, BTreeMap<String, i64>>,
    kind: QuotaKind,
    user: &str,
    client_id: &str,
) -> Option<AppliedQuota> {
    let named = |s: &str| Some(Some(s.to_string()));
    let default = || Some(None);
    let order: [(Option<EntityName>, Option<EntityName>); 8] = [
        (named(user), named(client_id)),
        (named(user), default()),
        (named(user), None),
        (default(), named(client_id)),
        (default(), default()),
        (default(), None),
        (None, named(client_id)),
        (None, default()),
    ];
    order.into_iter().find_map(|(u, c)| {
        let entity = QuotaEntity {
            user: u,
            client_id: c,
        };
        let value = quotas.get(&entity)?.get(kind.key())?;
        let key = (
            entity.user.as_ref().map_or("", |_| user).to_string(),
            entity
                .client_id
                .as_ref()
                .map_or("", |_| client_id)
                .to_string(),
        );
        Some(AppliedQuota {
            bytes_per_s: u64::try_from(*value).unwrap_or(0),
            key,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference: Kafka's `Rate.measure` and `windowSize`: a first burst is spread over the
    /// whole window (10 full samples), not over the time since it started.
    #[test]
    fn a_first_burst_is_measured_over_the_whole_window() {
        let mut rate = ByteRate::new();
        rate.record(0, 10_000);
        assert_eq!(rate.rate(0), 1_000.0);
        assert_eq!(rate.rate(500), 1_000.0);
        // After the minimum window, the real elapsed time counts.
        assert_eq!(rate.rate(20_000), 0.0, "the sample left the window");
        assert!(rate.is_idle(20_000));
    }

    /// A steady rate is measured as itself once the window is full.
    #[test]
    fn a_steady_rate_measures_as_itself() {
        let mut rate = ByteRate::new();
        for second in 0..30u64 {
            rate.record(second * 1000, 2_000);
        }
        let measured = rate.rate(29_999);
        assert!((measured - 2_000.0).abs() < 2_000.0 * 0.11, "{measured}");
        assert_eq!(rate.samples.len(), QUOTA_WINDOW_SAMPLES);
    }

    /// Reference: KIP-13, "throttle time = (observed rate - quota) / quota * window": twice the
    /// quota over a 10 s window waits 10 s; within the quota never waits; the cap holds.
    #[test]
    fn throttle_time_follows_kip_13() {
        let mut rate = ByteRate::new();
        rate.record(0, 20_000);
        assert_eq!(rate.throttle_ms(0, 1_000), 10_000);
        assert_eq!(rate.throttle_ms(0, 2_000), 0);
        assert_eq!(rate.throttle_ms(0, 5_000), 0);
        rate.record(1, 1_000_000);
        assert_eq!(rate.throttle_ms(1, 1_000), THROTTLE_MS_MAX);
        // A quota of 0 is a quota of 1 byte/s: everything is throttled, nothing divides by 0.
        assert_eq!(rate.throttle_ms(1, 0), THROTTLE_MS_MAX);
    }

    fn quotas(entries: &[(QuotaEntity, i64)]) -> BTreeMap<QuotaEntity, BTreeMap<String, i64>> {
        entries
            .iter()
            .map(|(e, v)| {
                (
                    e.clone(),
                    BTreeMap::from([(PRODUCER_BYTE_RATE.to_string(), *v)]),
                )
            })
            .collect()
    }

    fn entity(user: Option<Option<&str>>, client: Option<Option<&str>>) -> QuotaEntity {
        QuotaEntity {
            user: user.map(|u| u.map(str::to_string)),
            client_id: client.map(|c| c.map(str::to_string)),
        }
    }

    /// Reference: KIP-55's precedence table (ClientQuotaManager.DefaultQuotaCallback).
    #[test]
    fn the_most_specific_entity_applies() {
        let all = quotas(&[
            (entity(Some(Some("alice")), Some(Some("app"))), 1),
            (entity(Some(Some("alice")), Some(None)), 2),
            (entity(Some(Some("alice")), None), 3),
            (entity(Some(None), Some(Some("app"))), 4),
            (entity(Some(None), Some(None)), 5),
            (entity(Some(None), None), 6),
            (entity(None, Some(Some("app"))), 7),
            (entity(None, Some(None)), 8),
        ]);
        let applied = |q: &BTreeMap<_, _>, user, client| {
            applied_quota(q, QuotaKind::Produce, user, client).map(|a| (a.bytes_per_s, a.key))
        };
        let k = |u: &str, c: &str| (u.to_string(), c.to_string());
        assert_eq!(applied(&all, "alice", "app"), Some((1, k("alice", "app"))));
        assert_eq!(
            applied(&all, "alice", "other"),
            Some((2, k("alice", "other")))
        );
        assert_eq!(applied(&all, "bob", "app"), Some((4, k("bob", "app"))));
        assert_eq!(applied(&all, "bob", "other"), Some((5, k("bob", "other"))));
        // Without the user-level entries, the client-id ones apply.
        let clients = quotas(&[
            (entity(None, Some(Some("app"))), 7),
            (entity(None, Some(None)), 8),
        ]);
        assert_eq!(
            applied(&clients, "ANONYMOUS", "app"),
            Some((7, k("", "app")))
        );
        assert_eq!(applied(&clients, "ANONYMOUS", "x"), Some((8, k("", "x"))));
        // A user's own quota is shared by all its client ids.
        let user = quotas(&[(entity(Some(Some("alice")), None), 3)]);
        assert_eq!(applied(&user, "alice", "a"), Some((3, k("alice", ""))));
        assert_eq!(applied(&user, "alice", "b"), Some((3, k("alice", ""))));
        assert_eq!(applied(&user, "bob", "a"), None);
        assert_eq!(applied_quota(&all, QuotaKind::Fetch, "alice", "app"), None);
    }
}
