//! How a destination site reacts when its receiver says "slow down" (pure: times are passed in).
//!
//! A reply classified `rate_limited` (Gmail's `421 4.7.28`, Microsoft's `4.7.650`, Yahoo's
//! `TSS04`, …) pauses the site: no new connection for [`ThrottlePolicy::pause`]. A reply
//! classified `blocklisted` pauses it for [`ThrottlePolicy::blocklist_pause`]. After the pause
//! the site resumes with one connection, and the number it may open doubles every
//! [`ThrottlePolicy::ramp_step`] until it is back at its configured limit. A new signal during
//! the pause or the ramp starts over from that moment.

use crate::bounce::classify::Category;

/// What a receiver's reply says about the sending rate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// Too much, too fast: back off for a while.
    RateLimited = 0,
    /// Our address or domain is refused for its reputation: back off for longer.
    Blocklisted = 1,
}

impl Signal {
    /// The signal a delivery outcome's bounce category carries, if any.
    pub fn of(category: Category) -> Option<Signal> {
        match category {
            Category::RateLimited => Some(Signal::RateLimited),
            Category::Blocklisted => Some(Signal::Blocklisted),
            _ => None,
        }
    }

    /// The signal's name in events and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Signal::RateLimited => "rate_limited",
            Signal::Blocklisted => "blocklisted",
        }
    }
}

/// The pauses and the ramp (milliseconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ThrottlePolicy {
    /// No new connection this long after a `rate_limited` reply.
    pub pause_ms: u64,
    /// No new connection this long after a `blocklisted` reply.
    pub blocklist_pause_ms: u64,
    /// After a pause, the connection limit doubles this often, from 1 back to the maximum.
    pub ramp_step_ms: u64,
}

impl Default for ThrottlePolicy {
    fn default() -> Self {
        ThrottlePolicy {
            pause_ms: 60_000,
            blocklist_pause_ms: 3_600_000,
            ramp_step_ms: 60_000,
        }
    }
}

/// A site's throttle state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Throttle {
    /// No new connection before this time; 0 = never throttled.
    paused_until_ms: u64,
}

impl Throttle {
    /// Takes a signal received at `now_ms`; returns the time the pause ends.
    pub fn signal(&mut self, signal: Signal, now_ms: u64, policy: &ThrottlePolicy) -> u64 {
        let pause = match signal {
            Signal::RateLimited => policy.pause_ms,
            Signal::Blocklisted => policy.blocklist_pause_ms,
        };
        // A shorter pause never cuts a longer one short (a rate limit during a blocklisting).
        self.paused_until_ms = self.paused_until_ms.max(now_ms.saturating_add(pause));
        self.paused_until_ms
    }

    /// How many connections the site may have open at `now_ms`, out of `max`: 0 while paused,
    /// then 1, 2, 4, … per ramp step, and `max` once the ramp reaches it.
    pub fn limit(&self, now_ms: u64, max: usize, policy: &ThrottlePolicy) -> usize {
        if self.paused_until_ms == 0 {
            return max;
        }
        if now_ms < self.paused_until_ms {
            return 0;
        }
        let steps = (now_ms - self.paused_until_ms) / policy.ramp_step_ms.max(1);
        if steps >= usize::BITS as u64 - 1 {
            return max;
        }
        (1usize << steps).min(max)
    }

    /// Whether the site is back at full strength at `now_ms` (nothing left to throttle).
    pub fn is_over(&self, now_ms: u64, max: usize, policy: &ThrottlePolicy) -> bool {
        self.limit(now_ms, max, policy) >= max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: ThrottlePolicy = ThrottlePolicy {
        pause_ms: 60_000,
        blocklist_pause_ms: 600_000,
        ramp_step_ms: 10_000,
    };

    #[test]
    fn categories_that_are_signals() {
        assert_eq!(Signal::of(Category::RateLimited), Some(Signal::RateLimited));
        assert_eq!(Signal::of(Category::Blocklisted), Some(Signal::Blocklisted));
        for other in [Category::UserUnknown, Category::Temporary, Category::Spam] {
            assert_eq!(Signal::of(other), None, "{other:?}");
        }
    }

    #[test]
    fn a_rate_limit_pauses_then_ramps_back_to_the_limit() {
        let mut t = Throttle::default();
        assert_eq!(t.limit(5_000, 8, &POLICY), 8, "never throttled");
        assert_eq!(t.signal(Signal::RateLimited, 1_000, &POLICY), 61_000);
        // (now, connections allowed)
        let table = [
            (1_000, 0),
            (60_999, 0),
            (61_000, 1),
            (70_999, 1),
            (71_000, 2),
            (81_000, 4),
            (91_000, 8),
            (1_000_000, 8),
        ];
        for (now, want) in table {
            assert_eq!(t.limit(now, 8, &POLICY), want, "at {now}");
        }
        assert!(!t.is_over(81_000, 8, &POLICY));
        assert!(t.is_over(91_000, 8, &POLICY));
        assert_eq!(t.limit(u64::MAX, 3, &POLICY), 3, "no overflow");
    }

    #[test]
    fn a_new_signal_starts_over_and_a_blocklisting_is_not_cut_short() {
        let mut t = Throttle::default();
        t.signal(Signal::RateLimited, 0, &POLICY);
        // During the ramp, a new rate limit pauses again from then.
        assert_eq!(t.limit(75_000, 8, &POLICY), 2);
        assert_eq!(t.signal(Signal::RateLimited, 75_000, &POLICY), 135_000);
        assert_eq!(t.limit(100_000, 8, &POLICY), 0);
        assert_eq!(t.limit(135_000, 8, &POLICY), 1);
        // A blocklisting pauses longer; a rate limit during it does not shorten it.
        assert_eq!(t.signal(Signal::Blocklisted, 200_000, &POLICY), 800_000);
        assert_eq!(t.signal(Signal::RateLimited, 300_000, &POLICY), 800_000);
        assert_eq!(t.limit(799_999, 8, &POLICY), 0);
        assert_eq!(t.limit(800_000, 8, &POLICY), 1);
    }
}
