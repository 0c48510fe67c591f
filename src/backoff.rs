//! One backoff for every retry loop: agent starts, MQTT reconnects, outbox deliveries, ONVIF
//! push subscriptions.
//!
//! A [`Backoff`] is the delay before each retry: doubling from a first delay up to a cap, or a
//! listed schedule that runs out (a webhook's `retry`). A [`Jitter`] multiplies each delay by a
//! random factor so that many nodes or resources that failed together do not retry together;
//! tests turn it off with [`Backoff::without_jitter`].
//!
//! Both are checked when built: the constructors are `const fn`s that refuse a cap below the
//! first delay or a jitter outside its range, so the constants the callers define are checked
//! at compile time.

use std::time::Duration;

/// The delays before each retry.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    steps: Steps,
    jitter: Jitter,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Steps {
    /// `first`, doubling after each retry, at most `max`; never runs out.
    Doubling { first: Duration, max: Duration },
    /// One delay per retry, then no more retries.
    Listed(Vec<Duration>),
}

/// A random factor each delay is multiplied by, uniform in `low..low + width`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Jitter {
    low: f64,
    width: f64,
}

impl Jitter {
    /// Every delay as planned.
    pub const NONE: Jitter = Jitter {
        low: 1.0,
        width: 0.0,
    };

    /// Plus or minus `fraction` of each delay (0.1: 90 % to 110 %); `fraction` in `0..=1`.
    pub const fn spread(fraction: f64) -> Self {
        assert!(
            fraction >= 0.0 && fraction <= 1.0,
            "a jitter spread is a fraction from 0 to 1"
        );
        Jitter {
            low: 1.0 - fraction,
            width: 2.0 * fraction,
        }
    }

    /// From `low` times each delay up to the delay itself; `low` in `0..=1`.
    pub const fn down_to(low: f64) -> Self {
        assert!(
            low >= 0.0 && low <= 1.0,
            "a jitter floor is a fraction from 0 to 1"
        );
        Jitter {
            low,
            width: 1.0 - low,
        }
    }

    /// From each delay up to `high` times it; `high` in `1..=16`.
    pub const fn up_to(high: f64) -> Self {
        assert!(
            high >= 1.0 && high <= 16.0,
            "a jitter ceiling is a factor from 1 to 16"
        );
        Jitter {
            low: 1.0,
            width: high - 1.0,
        }
    }

    fn apply(self, d: Duration) -> Duration {
        if self == Jitter::NONE {
            d
        } else {
            d.mul_f64(self.low + self.width * fastrand::f64())
        }
    }
}

impl Backoff {
    /// `first` before the first retry, doubling after each, at most `max` (at least `first`).
    /// Without jitter until [`Backoff::with_jitter`].
    pub const fn doubling(first: Duration, max: Duration) -> Self {
        assert!(
            first.as_nanos() <= max.as_nanos(),
            "a backoff's cap is at least its first delay"
        );
        Backoff {
            steps: Steps::Doubling { first, max },
            jitter: Jitter::NONE,
        }
    }

    /// `delays[0]` before the first retry, `delays[1]` before the second, ..., then no more
    /// retries. Without jitter until [`Backoff::with_jitter`].
    pub fn listed(delays: Vec<Duration>) -> Self {
        Backoff {
            steps: Steps::Listed(delays),
            jitter: Jitter::NONE,
        }
    }

    pub const fn with_jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// Every delay as planned: what tests use.
    pub const fn without_jitter(self) -> Self {
        self.with_jitter(Jitter::NONE)
    }

    /// The delay before retry number `retry` (1 for the first), jittered; `None` once a
    /// listed schedule is used up (a doubling one never is).
    pub fn delay(&self, retry: u32) -> Option<Duration> {
        let planned = match &self.steps {
            Steps::Doubling { first, max } => {
                let doublings = retry.saturating_sub(1).min(31);
                first.saturating_mul(1 << doublings).min(*max)
            }
            Steps::Listed(delays) => *delays.get(usize::try_from(retry.checked_sub(1)?).ok()?)?,
        };
        Some(self.jitter.apply(planned))
    }

    /// How many retries there are at most; `None`: no limit.
    pub fn retries(&self) -> Option<u32> {
        match &self.steps {
            Steps::Doubling { .. } => None,
            Steps::Listed(delays) => Some(u32::try_from(delays.len()).unwrap_or(u32::MAX)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn doubling_doubles_up_to_its_cap() {
        let fixed = Backoff::doubling(ms(100), ms(700));
        let delays: Vec<u128> = (1..=5)
            .map(|n| fixed.delay(n).unwrap().as_millis())
            .collect();
        assert_eq!(delays, [100, 200, 400, 700, 700]);
        assert_eq!(fixed.delay(u32::MAX), Some(ms(700)));
        assert_eq!(fixed.retries(), None);
        let reconnect = Backoff::doubling(ms(100), Duration::from_secs(1));
        let d: Vec<_> = (1..=6)
            .map(|n| reconnect.delay(n).unwrap().as_millis())
            .collect();
        assert_eq!(d, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn a_listed_schedule_runs_out() {
        let b = Backoff::listed(vec![ms(5), ms(50)]);
        assert_eq!(b.delay(1), Some(ms(5)));
        assert_eq!(b.delay(2), Some(ms(50)));
        assert_eq!(b.delay(3), None);
        assert_eq!(b.delay(0), None);
        assert_eq!(b.retries(), Some(2));
        assert_eq!(Backoff::listed(Vec::new()).delay(1), None);
    }

    #[test]
    fn jitter_stays_in_its_range() {
        let fixed = Backoff::doubling(ms(100), ms(700));
        let down = fixed.clone().with_jitter(Jitter::down_to(0.5));
        for n in 1..=5 {
            let (d, plan) = (down.delay(n).unwrap(), fixed.delay(n).unwrap());
            assert!(d >= plan / 2 && d <= plan, "{d:?}");
        }
        let ten =
            Backoff::listed(vec![Duration::from_secs(10); 100]).with_jitter(Jitter::spread(0.1));
        for n in 1..=100 {
            let d = ten.delay(n).unwrap();
            assert!(
                d >= Duration::from_secs(9) && d <= Duration::from_secs(11),
                "{d:?}"
            );
        }
        let up = fixed.clone().with_jitter(Jitter::up_to(1.5));
        for n in 1..=5 {
            let (d, plan) = (up.delay(n).unwrap(), fixed.delay(n).unwrap());
            assert!(d >= plan && d <= plan.mul_f64(1.5), "{d:?}");
        }
        assert_eq!(up.without_jitter(), fixed);
    }
}
