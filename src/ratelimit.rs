//! Publish rate limits (governor): one global limit and one per topic, checked by the
//! poller before it hands a row out, so a throttled topic never blocks other topics.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::config::RateLimitConfig;

/// The relay's limits; `check` is cheap when none are set.
pub struct RateLimits {
    clock: DefaultClock,
    global: Option<DefaultDirectRateLimiter>,
    topics: HashMap<String, DefaultDirectRateLimiter>,
}

/// Which limit said no, and how long until it allows one more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttled {
    /// The global limit: nothing may go now.
    Global(Duration),
    /// This row's topic limit: other topics may go.
    Topic(Duration),
}

fn limiter(per_second: u32) -> Option<DefaultDirectRateLimiter> {
    let rate = NonZeroU32::new(per_second)?;
    // A burst of a tenth of a second keeps the rate smooth over any window of a second.
    let burst = NonZeroU32::new((per_second / 10).max(1)).expect("at least 1");
    Some(RateLimiter::direct(
        Quota::per_second(rate).allow_burst(burst),
    ))
}

impl RateLimits {
    /// Limits from the configuration (0 = none).
    pub fn new(cfg: &RateLimitConfig) -> Self {
        Self {
            clock: DefaultClock::default(),
            global: limiter(cfg.events_per_second),
            topics: cfg
                .topics
                .iter()
                .filter_map(|(t, n)| Some((t.clone(), limiter(*n)?)))
                .collect(),
        }
    }

    /// Whether any limit is configured.
    pub fn any(&self) -> bool {
        self.global.is_some() || !self.topics.is_empty()
    }

    /// Takes one permit for a row of `topic`, or says which limit refused and for how long.
    pub fn check(&self, topic: &str) -> Result<(), Throttled> {
        if let Some(l) = self.topics.get(topic)
            && let Err(not_until) = l.check()
        {
            return Err(Throttled::Topic(not_until.wait_time_from(self.clock.now())));
        }
        if let Some(g) = &self.global
            && let Err(not_until) = g.check()
        {
            return Err(Throttled::Global(
                not_until.wait_time_from(self.clock.now()),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_limits_never_throttle() {
        let l = RateLimits::new(&RateLimitConfig::default());
        assert!(!l.any());
        for _ in 0..100_000 {
            assert!(l.check("t").is_ok());
        }
    }

    #[test]
    fn topic_limit_throttles_only_its_topic() {
        let mut cfg = RateLimitConfig::default();
        cfg.topics.insert("slow".into(), 10);
        let l = RateLimits::new(&cfg);
        assert!(l.check("slow").is_ok()); // burst of 1
        assert!(matches!(l.check("slow"), Err(Throttled::Topic(_))));
        for _ in 0..1000 {
            assert!(l.check("fast").is_ok());
        }
    }

    #[test]
    fn global_limit_allows_a_tenth_of_a_second_at_once() {
        let cfg = RateLimitConfig {
            events_per_second: 500,
            ..Default::default()
        };
        let l = RateLimits::new(&cfg);
        let allowed = (0..1000).filter(|_| l.check("t").is_ok()).count();
        // The burst is 50; a new permit comes every 2 ms, and a busy machine can take that
        // long over the loop.
        assert!((50..=55).contains(&allowed), "{allowed}");
        match l.check("t") {
            Err(Throttled::Global(wait)) => assert!(wait <= Duration::from_millis(3)),
            other => panic!("{other:?}"),
        }
    }
}
