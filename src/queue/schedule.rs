//! Retry maths: when a deferred message is tried next, when it expires, when its delay notice
//! is due.
//!
//! Every function here is a pure function of (attempts, received time, now, policy). The module
//! must never read a clock, touch the spool, hold state or panic: times come in as Unix
//! milliseconds and all arithmetic saturates, so even `u64::MAX` inputs give a defined answer.
//!
//! Invariants (tested as laws in `tests`):
//! - a retry time is never before `now_ms` and never after the expiry time
//!   `received_ms + max_lifetime`;
//! - [`after_failure`] returns [`NextStep::Expire`] exactly when [`is_expired`] is true;
//! - with a non-decreasing schedule, later attempts never retry sooner, and no delay exceeds
//!   the last schedule step.

use std::time::Duration;

/// How a deferred message is retried, as resolved from the `delivery` config section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Delays between attempts: entry `i` is the wait after the `i + 1`-th failed attempt, and
    /// the last entry repeats. Should be non-empty (see [`RetryPolicy::new`]); an empty schedule
    /// means "wait until expiry", so the message gets one last attempt and then expires.
    pub schedule: Vec<Duration>,
    /// A message this long after reception gets no further attempt and is bounced.
    pub max_lifetime: Duration,
    /// One delay notice (RFC 3464 `Action: delayed`) is due once a still-queued message is this
    /// old.
    pub delay_notice_after: Duration,
}

/// A retry policy that [`RetryPolicy::new`] refuses.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RetryPolicyError {
    /// The schedule has no step, so there is no delay to wait between attempts.
    #[error("retry schedule is empty")]
    EmptySchedule,
    /// A step shorter than one millisecond would retry in a tight loop (times are whole ms).
    #[error("retry schedule step {index} is {step:?}, shorter than 1ms")]
    ZeroStep {
        /// Position of the step in the schedule.
        index: usize,
        /// The offending delay.
        step: Duration,
    },
    /// A step is shorter than the one before it, so a later attempt would come sooner.
    #[error(
        "retry schedule step {index} ({step:?}) is shorter than the step before it ({previous:?})"
    )]
    DecreasingStep {
        /// Position of the step in the schedule.
        index: usize,
        /// The offending delay.
        step: Duration,
        /// The delay at `index - 1`.
        previous: Duration,
    },
}

impl RetryPolicy {
    /// Builds a policy whose schedule is non-empty, has no step under 1ms and never decreases,
    /// which are the conditions under which the laws in the module doc hold.
    pub fn new(
        schedule: Vec<Duration>,
        max_lifetime: Duration,
        delay_notice_after: Duration,
    ) -> Result<Self, RetryPolicyError> {
        if schedule.is_empty() {
            return Err(RetryPolicyError::EmptySchedule);
        }
        for (index, &step) in schedule.iter().enumerate() {
            if step < Duration::from_millis(1) {
                return Err(RetryPolicyError::ZeroStep { index, step });
            }
        }
        for (index, pair) in schedule.windows(2).enumerate() {
            if pair[1] < pair[0] {
                return Err(RetryPolicyError::DecreasingStep {
                    index: index + 1,
                    step: pair[1],
                    previous: pair[0],
                });
            }
        }
        Ok(RetryPolicy {
            schedule,
            max_lifetime,
            delay_notice_after,
        })
    }
}

impl Default for RetryPolicy {
    /// 5m, 10m, 20m, 40m, then every hour; bounce after 5 days; one delay notice after 4 hours.
    fn default() -> Self {
        let min = |m: u64| Duration::from_secs(60 * m);
        RetryPolicy {
            schedule: vec![min(5), min(10), min(20), min(40), min(60)],
            max_lifetime: min(5 * 24 * 60),
            delay_notice_after: min(4 * 60),
        }
    }
}

/// What to do with a message after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextStep {
    /// Try again at this Unix time in milliseconds.
    RetryAt(u64),
    /// The message has used up its lifetime: bounce it (failure DSN) instead of retrying.
    Expire,
}

/// Decides when a message is tried next after `attempts` failed attempts.
///
/// `attempts` counts failures so far, including the one just seen (`>= 1`; 0 is treated as 1).
/// With `step = schedule[min(attempts - 1, len - 1)]` (whole milliseconds, sub-millisecond
/// parts dropped), `next = now_ms + step` and `expiry = received_ms + max_lifetime`, both
/// saturating at `u64::MAX`:
///
/// | condition                             | result            | meaning                         |
/// |---------------------------------------|-------------------|---------------------------------|
/// | `next < expiry`                       | `RetryAt(next)`   | normal retry                    |
/// | `next >= expiry` and `now < expiry`   | `RetryAt(expiry)` | one last attempt, at expiry     |
/// | `now >= expiry`                       | `Expire`          | lifetime used up: bounce        |
///
/// The last attempt is scheduled at the expiry time itself, so when it fails (at or after
/// expiry) the third row applies: one capped attempt, then expiry. An empty schedule behaves as
/// an infinite step (second row), never as a zero delay that would spin.
///
/// Example with the default policy (5m, 10m, 20m, 40m, 1h; lifetime 5d), `age = now - received`:
///
/// | attempts | age        | result                 |
/// |----------|------------|------------------------|
/// | 1        | 0          | `RetryAt(now + 5m)`    |
/// | 3        | 15m        | `RetryAt(now + 20m)`   |
/// | 6        | 2h15m      | `RetryAt(now + 1h)`    |
/// | 50       | 5d - 1h    | `RetryAt(now + 1h)`    |
/// | 50       | 5d - 1m    | `RetryAt(now + 1m)`    |
/// | 51       | 5d         | `Expire`               |
pub fn after_failure(
    policy: &RetryPolicy,
    attempts: u32,
    received_ms: u64,
    now_ms: u64,
) -> NextStep {
    after_failure_until(policy, attempts, expiry_ms(policy, received_ms, 0), now_ms)
}

/// [`after_failure`] with the expiry given: [`expiry_ms`] of the message, its own deadline
/// included.
pub fn after_failure_until(
    policy: &RetryPolicy,
    attempts: u32,
    expiry: u64,
    now_ms: u64,
) -> NextStep {
    if now_ms >= expiry {
        return NextStep::Expire;
    }
    let next = now_ms.saturating_add(step_ms(policy, attempts));
    NextStep::RetryAt(next.min(expiry))
}

/// True once the message has been queued for `max_lifetime` or longer (`now >= expiry`).
///
/// A message received "in the future" (clock stepped back) is simply not expired yet.
pub fn is_expired(policy: &RetryPolicy, received_ms: u64, now_ms: u64) -> bool {
    now_ms >= expiry_ms(policy, received_ms, 0)
}

/// True when the single delay notice should be sent now.
///
/// Due when none has been sent yet, the message is at least `delay_notice_after` old, and it
/// has not expired: an expired message gets a failure DSN instead, so a policy whose
/// `delay_notice_after` is at or past `max_lifetime` never sends a delay notice. A zero
/// `delay_notice_after` makes the notice due at the first deferral.
pub fn delay_notice_due(
    policy: &RetryPolicy,
    received_ms: u64,
    now_ms: u64,
    already_sent: bool,
) -> bool {
    let expiry = expiry_ms(policy, received_ms, 0);
    delay_notice_due_until(policy, received_ms, expiry, now_ms, already_sent)
}

/// [`delay_notice_due`] with the expiry given ([`expiry_ms`], the message's deadline included).
pub fn delay_notice_due_until(
    policy: &RetryPolicy,
    received_ms: u64,
    expiry: u64,
    now_ms: u64,
    already_sent: bool,
) -> bool {
    if already_sent || now_ms >= expiry {
        return false;
    }
    now_ms >= received_ms.saturating_add(duration_ms(policy.delay_notice_after))
}

/// The schedule step after `attempts` failures, in ms; `u64::MAX` for an empty schedule so the
/// caller's cap at expiry takes over.
fn step_ms(policy: &RetryPolicy, attempts: u32) -> u64 {
    let wanted = usize::try_from(attempts.saturating_sub(1)).unwrap_or(usize::MAX);
    let index = wanted.min(policy.schedule.len().saturating_sub(1));
    policy
        .schedule
        .get(index)
        .map_or(u64::MAX, |&d| duration_ms(d))
}

/// When a message received at `received_ms` expires: after the policy's `max_lifetime`, or at
/// its own `deadline_ms` when that is earlier (0: none).
pub fn expiry_ms(policy: &RetryPolicy, received_ms: u64, deadline_ms: u64) -> u64 {
    let lifetime = received_ms.saturating_add(duration_ms(policy.max_lifetime));
    match deadline_ms {
        0 => lifetime,
        d => lifetime.min(d),
    }
}

/// Whole milliseconds, saturating: a `Duration` can hold ~584 million years of ms more than u64.
fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIN: u64 = 60_000;
    const HOUR: u64 = 60 * MIN;
    const DAY: u64 = 24 * HOUR;
    /// A fixed reception time, far from both ends of u64 (2023-11-14T22:13:20Z).
    const T0: u64 = 1_700_000_000_000;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    /// The config default: 5m, 10m, 20m, 40m, 1h; 5 days; notice at 4h.
    fn default_policy() -> RetryPolicy {
        RetryPolicy::new(
            [5, 10, 20, 40, 60].map(|m| ms(m * MIN)).to_vec(),
            ms(5 * DAY),
            ms(4 * HOUR),
        )
        .unwrap()
    }

    use NextStep::{Expire, RetryAt};

    #[test]
    fn delay_table_for_default_policy() {
        let p = default_policy();
        // (attempts, now - received, expected delay from now; None = Expire)
        let table: &[(u32, u64, Option<u64>)] = &[
            (0, 0, Some(5 * MIN)), // 0 is read as 1
            (1, 0, Some(5 * MIN)),
            (2, 5 * MIN, Some(10 * MIN)),
            (3, 15 * MIN, Some(20 * MIN)),
            (4, 35 * MIN, Some(40 * MIN)),
            (5, 75 * MIN, Some(HOUR)),
            (6, 135 * MIN, Some(HOUR)), // the last step repeats
            (100, 2 * DAY, Some(HOUR)),
            (u32::MAX, 2 * DAY, Some(HOUR)),
            // next would be at or past expiry: one last attempt exactly at expiry
            (50, 5 * DAY - HOUR, Some(HOUR)),
            (50, 5 * DAY - HOUR + 1, Some(HOUR - 1)),
            (50, 5 * DAY - MIN, Some(MIN)),
            (50, 5 * DAY - 1, Some(1)),
            (1, 5 * DAY - 1, Some(1)),
            // the last attempt itself failed (on time or late): expire
            (51, 5 * DAY, None),
            (51, 5 * DAY + 1, None),
            (1, 10 * DAY, None),
        ];
        for &(attempts, age, want) in table {
            let now = T0 + age;
            let got = after_failure(&p, attempts, T0, now);
            let want = want.map_or(Expire, |d| RetryAt(now + d));
            assert_eq!(got, want, "attempts={attempts} age={age}ms");
        }
    }

    #[test]
    fn saturating_table() {
        let p = |steps: &[u64], life: u64| RetryPolicy {
            schedule: steps.iter().map(|&s| ms(s)).collect(),
            max_lifetime: ms(life),
            delay_notice_after: ms(0),
        };
        let max = u64::MAX;
        let huge = Duration::MAX; // more ms than u64 holds
        let table: &[(RetryPolicy, u32, u64, u64, NextStep)] = &[
            // (policy, attempts, received, now, expected)
            (p(&[max], max), 1, 0, 0, RetryAt(max)),
            (p(&[max], max), 1, 0, 1, RetryAt(max)),
            (p(&[10], max), 1, max - 5, max - 5, RetryAt(max)),
            (p(&[10], max), 1, max, max - 20, RetryAt(max - 10)),
            (p(&[10], max), 1, 0, max - 1, RetryAt(max)),
            (p(&[10], max), 1, 0, max, Expire),
            (p(&[10], 100), 1, max - 50, max - 50, RetryAt(max - 40)),
            (p(&[10], 100), 1, max - 50, max - 5, RetryAt(max)),
            (p(&[10], 100), 1, max - 50, max, Expire),
            (p(&[10], 0), 1, 7, 7, Expire),
            (p(&[10], 0), 1, 7, 6, RetryAt(7)),
            (p(&[], 100), 1, 0, 30, RetryAt(100)), // empty schedule: wait until expiry
            (p(&[], 100), 2, 0, 100, Expire),
            (
                RetryPolicy {
                    schedule: vec![huge],
                    max_lifetime: huge,
                    delay_notice_after: huge,
                },
                u32::MAX,
                max,
                max - 1,
                RetryAt(max),
            ),
        ];
        for (policy, attempts, received, now, want) in table {
            let got = after_failure(policy, *attempts, *received, *now);
            assert_eq!(
                got, *want,
                "{policy:?} attempts={attempts} received={received} now={now}"
            );
        }
    }

    #[test]
    fn expiry_table() {
        let p = default_policy();
        let table: &[(u64, u64, bool)] = &[
            (T0, T0, false),
            (T0, T0 + 5 * DAY - 1, false),
            (T0, T0 + 5 * DAY, true),
            (T0, T0 + 6 * DAY, true),
            (T0, 0, false),             // clock stepped back
            (u64::MAX, u64::MAX, true), // expiry saturates at u64::MAX
            (u64::MAX - 1, u64::MAX - 1, false),
        ];
        for &(received, now, want) in table {
            assert_eq!(
                is_expired(&p, received, now),
                want,
                "received={received} now={now}"
            );
        }
    }

    #[test]
    fn delay_notice_table() {
        let p = default_policy();
        let table: &[(u64, bool, bool)] = &[
            // (age, already_sent, expected)
            (0, false, false),
            (4 * HOUR - 1, false, false),
            (4 * HOUR, false, true),
            (3 * DAY, false, true),
            (4 * HOUR, true, false),
            (5 * DAY - 1, false, true),
            (5 * DAY, false, false), // expired: the failure DSN replaces it
        ];
        for &(age, sent, want) in table {
            assert_eq!(
                delay_notice_due(&p, T0, T0 + age, sent),
                want,
                "age={age} sent={sent}"
            );
        }
        let late = RetryPolicy {
            delay_notice_after: ms(5 * DAY),
            ..default_policy()
        };
        assert!(!delay_notice_due(&late, T0, T0 + 5 * DAY, false));
        let zero = RetryPolicy {
            delay_notice_after: ms(0),
            ..default_policy()
        };
        assert!(delay_notice_due(&zero, T0, T0, false));
        assert!(delay_notice_due(&zero, u64::MAX - 1, u64::MAX - 1, false));
    }

    #[test]
    fn new_rejects_bad_schedules() {
        let life = ms(DAY);
        assert_eq!(
            RetryPolicy::new(vec![], life, life),
            Err(RetryPolicyError::EmptySchedule)
        );
        assert_eq!(
            RetryPolicy::new(vec![ms(5), Duration::from_micros(999)], life, life),
            Err(RetryPolicyError::ZeroStep {
                index: 1,
                step: Duration::from_micros(999)
            })
        );
        assert_eq!(
            RetryPolicy::new(vec![ms(5), ms(10), ms(9)], life, life),
            Err(RetryPolicyError::DecreasingStep {
                index: 2,
                step: ms(9),
                previous: ms(10)
            })
        );
        assert!(RetryPolicy::new(vec![ms(5), ms(5), ms(9)], life, life).is_ok());
        assert_eq!(
            RetryPolicyError::ZeroStep {
                index: 1,
                step: ms(0)
            }
            .to_string(),
            "retry schedule step 1 is 0ns, shorter than 1ms"
        );
    }

    /// Policies that `RetryPolicy::new` accepts: 1..8 non-decreasing steps.
    fn arb_policy() -> impl Strategy<Value = RetryPolicy> {
        (
            prop::collection::vec(1u64..=3 * DAY, 1..8),
            prop_oneof![0u64..=30 * DAY, Just(u64::MAX)],
            0u64..=30 * DAY,
        )
            .prop_map(|(mut steps, life, notice)| {
                steps.sort_unstable();
                RetryPolicy::new(steps.into_iter().map(ms).collect(), ms(life), ms(notice)).unwrap()
            })
    }

    fn arb_time() -> impl Strategy<Value = u64> {
        prop_oneof![
            T0 - 30 * DAY..T0 + 60 * DAY,
            u64::MAX - 60 * DAY..=u64::MAX,
            0u64..60 * DAY,
        ]
    }

    proptest! {
        #[test]
        fn retry_times_never_decrease_with_attempts(
            p in arb_policy(), received in arb_time(), now in arb_time(), attempts in 1u32..20,
        ) {
            let a = after_failure(&p, attempts, received, now);
            let b = after_failure(&p, attempts + 1, received, now);
            match (a, b) {
                (RetryAt(x), RetryAt(y)) => prop_assert!(x <= y, "{x} > {y}"),
                (Expire, Expire) => {}
                other => prop_assert!(false, "expiry depends on attempts: {other:?}"),
            }
        }

        #[test]
        fn delay_never_exceeds_last_step_nor_expiry(
            p in arb_policy(), received in arb_time(), now in arb_time(), attempts in any::<u32>(),
        ) {
            let expiry = received.saturating_add(duration_ms(p.max_lifetime));
            let last = duration_ms(*p.schedule.last().unwrap());
            match after_failure(&p, attempts, received, now) {
                RetryAt(t) => {
                    prop_assert!(t >= now);
                    prop_assert!(t - now <= last, "delay {} > last step {last}", t - now);
                    prop_assert!(t <= expiry, "retry at {t} after expiry {expiry}");
                    prop_assert!(!is_expired(&p, received, now));
                }
                Expire => prop_assert!(is_expired(&p, received, now)),
            }
        }

        /// Following the schedule to its end, attempt by attempt, always ends in Expire within
        /// the lifetime plus one step, with exactly one attempt at the expiry time.
        #[test]
        fn following_the_schedule_ends_in_one_capped_attempt(
            p in arb_policy().prop_map(|mut p| {
                p.max_lifetime = p.max_lifetime.min(ms(30 * DAY));
                p
            }),
            received in T0 - DAY..T0 + DAY,
        ) {
            let expiry = received.saturating_add(duration_ms(p.max_lifetime));
            let last = duration_ms(*p.schedule.last().unwrap());
            prop_assume!(duration_ms(p.max_lifetime) / last < 10_000);
            let mut now = received;
            let mut capped = 0;
            for attempts in 1u32.. {
                match after_failure(&p, attempts, received, now) {
                    RetryAt(t) => {
                        capped += u32::from(t == expiry);
                        now = t;
                    }
                    Expire => break,
                }
                prop_assert!(attempts < 100_000, "no expiry after {attempts} attempts");
            }
            prop_assert!(now >= expiry);
            prop_assert!(capped <= 1);
        }
    }
}
