//! The delivery decision as tables: each row is one recipient, one attempt result, one `now`,
//! and everything the decision must say about it.

use std::time::Duration;

use super::*;
use crate::bounce::classify::{Category, Classifier, ConnFailure};
use crate::bounce::dsn::DsnKind;
use crate::smtp::{EnhancedCode, Notify, Reply};

const MIN: u64 = 60_000;
const HOUR: u64 = 60 * MIN;
const DAY: u64 = 24 * HOUR;
/// The message was received at this Unix time (ms).
const RECEIVED: u64 = 1_800_000_000_000;

/// 5m, 10m, then 10m; one day of life; the delay notice after 4h.
fn policy() -> RetryPolicy {
    let ms = Duration::from_millis;
    RetryPolicy::new(vec![ms(5 * MIN), ms(10 * MIN)], ms(DAY), ms(4 * HOUR)).unwrap()
}

fn refused(code: u16, enhanced: Option<(u8, u16, u16)>, text: &str) -> AttemptResult {
    AttemptResult::Refused {
        reply: Reply::new(
            code,
            enhanced.map(|(c, s, d)| EnhancedCode::new(c, s, d)),
            text,
        ),
        remote: "mx.example".into(),
    }
}

fn delivered(dsn_passed_on: bool) -> AttemptResult {
    AttemptResult::Delivered {
        reply: Reply::with_enhanced(250, (2, 0, 0), "queued as 42"),
        remote: "mx.example".into(),
        dsn_passed_on,
    }
}

fn connection(failure: ConnFailure) -> AttemptResult {
    AttemptResult::Connection {
        failure,
        detail: format!("{failure:?} talking to mx.example"),
        remote: String::new(),
    }
}

const NOT_GIVEN: Notify = Notify::from_bits(0);
const NEVER: Notify = Notify::from_bits(Notify::NEVER);
const SUCCESS: Notify = Notify::from_bits(Notify::SUCCESS);
const FAILURE: Notify = Notify::from_bits(Notify::FAILURE);
const DELAY: Notify = Notify::from_bits(Notify::DELAY);

/// One row: the facts, and what the decision must return.
struct Row {
    name: &'static str,
    result: AttemptResult,
    /// Attempts made before this one.
    attempts: u32,
    notify: Notify,
    /// A DSN may be sent (not a DSN, not from the null sender).
    may_notify: bool,
    delay_notified: bool,
    /// Age of the message at the attempt (ms).
    age: u64,
    fate: Fate,
    category: Option<Category>,
    /// The DSN and its Status, as `(kind, "x.y.z")`.
    dsn: Option<(DsnKind, &'static str)>,
}

fn row(name: &'static str, result: AttemptResult) -> Row {
    Row {
        name,
        result,
        attempts: 0,
        notify: NOT_GIVEN,
        may_notify: true,
        delay_notified: false,
        age: MIN,
        fate: Fate::Delivered,
        category: None,
        dsn: None,
    }
}

fn deferred_in(age: u64, delay: u64) -> Fate {
    Fate::Deferred {
        next_attempt_ms: RECEIVED + age + delay,
    }
}

const FAILED: Fate = Fate::Failed { expired: false };
const EXPIRED_FATE: Fate = Fate::Failed { expired: true };

fn check(rows: Vec<Row>) {
    let classifier = Classifier::builtin();
    let policy = policy();
    for r in rows {
        let message = MessageFacts {
            received_ms: RECEIVED,
            may_notify: r.may_notify,
            deadline_ms: 0,
        };
        let recipient = RecipientFacts {
            attempts: r.attempts,
            delay_notified: r.delay_notified,
            notify: r.notify,
        };
        let now = RECEIVED + r.age;
        let d = decide(message, recipient, &r.result, &classifier, &policy, now);
        assert_eq!(d.fate, r.fate, "{}: fate", r.name);
        assert_eq!(d.category, r.category, "{}: category", r.name);
        let dsn = d.dsn.map(|n| (n.kind, n.status.to_string()));
        assert_eq!(
            dsn,
            r.dsn.map(|(k, s)| (k, s.to_owned())),
            "{}: dsn",
            r.name
        );
        // A deletion and an expiry without an attempt are no attempt.
        let attempt =
            if r.fate == Fate::Deleted || matches!(r.result, AttemptResult::Expired { .. }) {
                r.attempts
            } else {
                r.attempts + 1
            };
        assert_eq!(d.attempt, attempt, "{}: attempt", r.name);
    }
}

#[test]
fn successes_report_only_when_asked_and_not_passed_on() {
    check(vec![
        row("plain delivery", delivered(false)),
        Row {
            notify: SUCCESS,
            dsn: Some((DsnKind::Success, "2.0.0")),
            ..row(
                "NOTIFY=SUCCESS to a hop without DSN: we report relayed",
                delivered(false),
            )
        },
        Row {
            notify: SUCCESS,
            ..row(
                "NOTIFY=SUCCESS passed on: the next hop reports",
                delivered(true),
            )
        },
        Row {
            notify: SUCCESS,
            may_notify: false,
            ..row(
                "NOTIFY=SUCCESS from the null sender: nothing",
                delivered(false),
            )
        },
        Row {
            notify: FAILURE,
            ..row("NOTIFY=FAILURE only: no success DSN", delivered(false))
        },
    ]);
}

#[test]
fn permanent_failures_bounce_and_report_by_notify() {
    let unknown = || refused(550, Some((5, 1, 1)), "user unknown");
    let failed = |name, notify, may_notify, dsn| Row {
        notify,
        may_notify,
        fate: FAILED,
        category: Some(Category::UserUnknown),
        dsn,
        ..row(name, unknown())
    };
    let report = Some((DsnKind::Failure, "5.1.1"));
    check(vec![
        failed("no NOTIFY: failures are reported", NOT_GIVEN, true, report),
        failed("NOTIFY=FAILURE", FAILURE, true, report),
        failed("NOTIFY=NEVER silences", NEVER, true, None),
        failed("NOTIFY=DELAY only", DELAY, true, None),
        failed("NOTIFY=SUCCESS only", SUCCESS, true, None),
        failed("null sender or a DSN: never a DSN", NOT_GIVEN, false, None),
        Row {
            attempts: 3,
            ..failed(
                "a later attempt bounces the same way",
                NOT_GIVEN,
                true,
                report,
            )
        },
    ]);
}

#[test]
fn dsn_status_comes_from_the_reply_then_the_category() {
    check(vec![
        Row {
            fate: FAILED,
            category: Some(Category::MessageTooBig),
            dsn: Some((DsnKind::Failure, "5.3.4")),
            ..row(
                "enhanced code kept",
                refused(552, Some((5, 3, 4)), "too big"),
            )
        },
        Row {
            fate: FAILED,
            category: Some(Category::UserUnknown),
            dsn: Some((DsnKind::Failure, "5.1.1")),
            ..row(
                "no enhanced code: the category's",
                refused(550, None, "No such user here"),
            )
        },
        Row {
            fate: FAILED,
            category: Some(Category::HostUnknown),
            dsn: Some((DsnKind::Failure, "5.1.2")),
            ..row("NXDOMAIN", connection(ConnFailure::DnsNxDomain))
        },
        Row {
            fate: FAILED,
            category: Some(Category::Other),
            dsn: Some((DsnKind::Failure, "5.0.0")),
            ..row("unknown 5xx", refused(554, None, "go away"))
        },
    ]);
}

#[test]
fn temporary_failures_follow_the_schedule() {
    let grey = || refused(451, Some((4, 7, 1)), "greylisted, try later");
    let deferred = |name, attempts, age, delay| Row {
        attempts,
        age,
        fate: deferred_in(age, delay),
        category: Some(Category::Greylisted),
        ..row(name, grey())
    };
    check(vec![
        deferred("first failure: first step", 0, MIN, 5 * MIN),
        deferred("second failure: second step", 1, 6 * MIN, 10 * MIN),
        deferred(
            "later failures: the last step repeats",
            7,
            2 * HOUR,
            10 * MIN,
        ),
        Row {
            age: DAY - MIN,
            attempts: 9,
            fate: Fate::Deferred {
                next_attempt_ms: RECEIVED + DAY,
            },
            category: Some(Category::Greylisted),
            dsn: Some((DsnKind::Delay, "4.7.1")),
            ..row("the step would pass expiry: one last try at expiry", grey())
        },
        Row {
            fate: deferred_in(MIN, 5 * MIN),
            category: Some(Category::Temporary),
            ..row("connection refused", connection(ConnFailure::Refused))
        },
        Row {
            fate: deferred_in(MIN, 5 * MIN),
            category: Some(Category::Temporary),
            ..row("dns timeout", connection(ConnFailure::DnsTimeout))
        },
        Row {
            fate: deferred_in(MIN, 5 * MIN),
            category: Some(Category::RateLimited),
            ..row(
                "452 4.5.3 to every recipient: no progress, deferred",
                refused(452, Some((4, 5, 3)), "Too many recipients"),
            )
        },
    ]);
}

#[test]
fn one_delay_notice_after_the_threshold_when_delay_is_wanted() {
    let grey = || refused(451, Some((4, 7, 1)), "greylisted");
    let late = |name, notify, delay_notified, dsn| Row {
        attempts: 5,
        age: 5 * HOUR,
        notify,
        delay_notified,
        fate: deferred_in(5 * HOUR, 10 * MIN),
        category: Some(Category::Greylisted),
        dsn,
        ..row(name, grey())
    };
    check(vec![
        late(
            "no NOTIFY: delays are reported",
            NOT_GIVEN,
            false,
            Some((DsnKind::Delay, "4.7.1")),
        ),
        late(
            "NOTIFY=DELAY",
            DELAY,
            false,
            Some((DsnKind::Delay, "4.7.1")),
        ),
        late("already sent one", NOT_GIVEN, true, None),
        late("NOTIFY=FAILURE only", FAILURE, false, None),
        late("NOTIFY=NEVER", NEVER, false, None),
        Row {
            may_notify: false,
            ..late("null sender", NOT_GIVEN, false, None)
        },
        Row {
            attempts: 1,
            age: 3 * HOUR,
            fate: deferred_in(3 * HOUR, 10 * MIN),
            category: Some(Category::Greylisted),
            ..row("before the threshold", grey())
        },
        Row {
            attempts: 5,
            age: 5 * HOUR,
            fate: deferred_in(5 * HOUR, 10 * MIN),
            category: Some(Category::Temporary),
            dsn: Some((DsnKind::Delay, "4.0.0")),
            ..row(
                "no reply to take a code from",
                connection(ConnFailure::Timeout),
            )
        },
        Row {
            attempts: 5,
            age: 5 * HOUR,
            fate: deferred_in(5 * HOUR, 10 * MIN),
            category: Some(Category::Tls),
            dsn: Some((DsnKind::Delay, "4.7.5")),
            ..row(
                "a certificate that did not verify: cryptographic failure",
                connection(ConnFailure::Certificate),
            )
        },
    ]);
}

#[test]
fn expiry_turns_a_temporary_failure_into_a_bounce() {
    let d = decide(
        MessageFacts {
            received_ms: RECEIVED,
            may_notify: true,
            deadline_ms: 0,
        },
        RecipientFacts {
            attempts: 40,
            delay_notified: true,
            notify: NOT_GIVEN,
        },
        &refused(451, Some((4, 7, 1)), "greylisted"),
        &Classifier::builtin(),
        &policy(),
        RECEIVED + DAY,
    );
    assert_eq!(d.fate, EXPIRED_FATE);
    assert_eq!(
        d.text,
        "delivery time expired; last error: 451 4.7.1 greylisted"
    );
    assert!(d.text.starts_with(EXPIRED));
    // RFC 3463 X.4.7: delivery time expired, whatever the last reply's class.
    let dsn = d.dsn.unwrap();
    assert_eq!(
        (dsn.kind, dsn.status.to_string()),
        (DsnKind::Failure, "5.4.7".into())
    );
    check(vec![Row {
        attempts: 40,
        age: 2 * DAY,
        notify: DELAY,
        fate: EXPIRED_FATE,
        category: Some(Category::Temporary),
        ..row(
            "expired, NOTIFY=DELAY only: no failure DSN",
            connection(ConnFailure::Reset),
        )
    }]);
}

#[test]
fn a_messages_own_deadline_caps_its_retry_and_expires_it_without_another_attempt() {
    let message = MessageFacts {
        received_ms: RECEIVED,
        may_notify: true,
        deadline_ms: RECEIVED + 2 * MIN,
    };
    let first = RecipientFacts {
        attempts: 0,
        delay_notified: false,
        notify: NOT_GIVEN,
    };
    let greylisted = refused(451, Some((4, 7, 1)), "greylisted");
    let run = |facts, result: &AttemptResult, now| {
        decide(
            message,
            facts,
            result,
            &Classifier::builtin(),
            &policy(),
            now,
        )
    };
    // The schedule says 5 minutes; the deadline comes first, so the retry is at the deadline.
    let d = run(first, &greylisted, RECEIVED + 1_000);
    assert_eq!(
        d.fate,
        Fate::Deferred {
            next_attempt_ms: RECEIVED + 2 * MIN
        }
    );
    assert_eq!(d.dsn, None);
    // Failing at the deadline: expired, as with the policy's lifetime.
    let again = RecipientFacts {
        attempts: 1,
        ..first
    };
    let d = run(again, &greylisted, RECEIVED + 2 * MIN);
    assert_eq!(d.fate, EXPIRED_FATE);
    // Due at the deadline and expired there, without an attempt: the last error is kept, the
    // attempt count is not moved, and the failure DSN says 5.4.7.
    let last = Some(("451 4.7.1 greylisted".to_owned(), Category::Greylisted));
    let d = run(again, &AttemptResult::Expired { last }, RECEIVED + 2 * MIN);
    assert_eq!(
        (d.fate, d.attempt, d.category),
        (EXPIRED_FATE, 1, Some(Category::Greylisted))
    );
    assert_eq!(
        d.text,
        "delivery time expired; last error: 451 4.7.1 greylisted"
    );
    let dsn = d.dsn.unwrap();
    assert_eq!(
        (dsn.kind, dsn.status.to_string()),
        (DsnKind::Failure, "5.4.7".into())
    );
    check(vec![
        Row {
            fate: EXPIRED_FATE,
            category: Some(Category::Temporary),
            dsn: Some((DsnKind::Failure, "5.4.7")),
            ..row(
                "expired before its first attempt",
                AttemptResult::Expired { last: None },
            )
        },
        Row {
            notify: NEVER,
            fate: EXPIRED_FATE,
            category: Some(Category::Temporary),
            ..row(
                "expired with NOTIFY=NEVER: no DSN",
                AttemptResult::Expired { last: None },
            )
        },
    ]);
}

#[test]
fn operator_bounce_and_delete() {
    check(vec![
        Row {
            attempts: 2,
            fate: FAILED,
            category: Some(Category::Other),
            dsn: Some((DsnKind::Failure, "5.0.0")),
            ..row("bounce: final, failure DSN", AttemptResult::Bounced)
        },
        Row {
            notify: NEVER,
            fate: FAILED,
            category: Some(Category::Other),
            ..row("bounce with NOTIFY=NEVER", AttemptResult::Bounced)
        },
        Row {
            attempts: 2,
            fate: Fate::Deleted,
            ..row("delete: final, no DSN, no attempt", AttemptResult::Deleted)
        },
        Row {
            notify: Notify::from_bits(Notify::FAILURE | Notify::SUCCESS | Notify::DELAY),
            fate: Fate::Deleted,
            ..row("delete whatever NOTIFY says", AttemptResult::Deleted)
        },
    ]);
}

#[test]
fn recorded_text_is_the_reply_on_one_line() {
    let d = decide(
        MessageFacts {
            received_ms: RECEIVED,
            may_notify: true,
            deadline_ms: 0,
        },
        RecipientFacts {
            attempts: 0,
            delay_notified: false,
            notify: NOT_GIVEN,
        },
        &AttemptResult::Refused {
            reply: Reply {
                code: 550,
                enhanced: Some(EnhancedCode::new(5, 1, 1)),
                lines: vec!["The mailbox".into(), "does not exist".into()],
            },
            remote: "mx1.example".into(),
        },
        &Classifier::builtin(),
        &policy(),
        RECEIVED,
    );
    assert_eq!(d.text, "550 5.1.1 The mailbox does not exist");
    assert_eq!(d.remote, "mx1.example");
}

#[test]
fn notify_bits_round_trip_and_defaults() {
    for bits in 0..16u8 {
        assert_eq!(Notify::from_bits(bits).bits(), bits);
    }
    assert!(NOT_GIVEN.reports_failure() && NOT_GIVEN.reports_delay());
    assert!(!NOT_GIVEN.reports_success());
    assert!(!NEVER.reports_failure() && !NEVER.reports_delay());
    assert_eq!(NOT_GIVEN.param(), None);
    assert_eq!(NEVER.param().as_deref(), Some("NEVER"));
    let all = Notify::from_bits(Notify::SUCCESS | Notify::FAILURE | Notify::DELAY);
    assert_eq!(all.param().as_deref(), Some("SUCCESS,FAILURE,DELAY"));
}
