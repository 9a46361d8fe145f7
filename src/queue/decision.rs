//! The delivery decision: what becomes of one recipient after one attempt.
//!
//! [`decide`] is a pure function of the recipient's state, the attempt's typed result, the
//! bounce rules, the retry policy and `now`. It returns the new state, the next attempt, the
//! text to record and the DSN to queue; the delivery layer only applies that (status record,
//! wheel entry, metrics, event log, DSN message). No clock, no spool, no I/O: the rules of
//! RFC 3461 (NOTIFY), RFC 3464 (Status) and the retry policy are tested here as tables.

use crate::bounce::classify::{Action, Category, Classifier, ConnFailure, Failure};
use crate::bounce::dsn::DsnKind;
use crate::smtp::{EnhancedCode, Notify, Reply};

use super::schedule::{
    NextStep, RetryPolicy, after_failure_until, delay_notice_due_until, expiry_ms,
};

/// The result of one attempt for one recipient, as the connection saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AttemptResult {
    /// A 2xx to the end of data.
    Delivered {
        /// The reply.
        reply: Reply,
        /// The host that took it.
        remote: String,
        /// The host offered DSN and got the recipient's NOTIFY: reporting success is its job.
        dsn_passed_on: bool,
    },
    /// An SMTP reply refused it (the bounce rules decide retry or bounce).
    Refused {
        /// The reply.
        reply: Reply,
        /// The host that said it.
        remote: String,
    },
    /// No SMTP reply: connection, TLS or DNS trouble.
    Connection {
        /// What went wrong.
        failure: ConnFailure,
        /// Human-readable detail.
        detail: String,
        /// The host, when one was reached.
        remote: String,
    },
    /// An operator bounced the recipient (`queue bounce`): final, with a failure DSN.
    Bounced,
    /// The message's own deadline (`BY=`, `X-Ringmta-Expire-After`, its user's queue lifetime)
    /// passed before the recipient could be attempted again: final, with a failure DSN, without
    /// an attempt.
    Expired {
        /// The last attempt's reply or error and its category, when there was an attempt.
        last: Option<(String, Category)>,
    },
    /// An operator deleted the recipient (`queue delete`): final, no DSN.
    Deleted,
}

/// What the operator's bounce records as the reply.
pub const OPERATOR_BOUNCE: &str = "554 5.0.0 Bounced by the operator";
/// What the operator's delete records as the reply.
pub const OPERATOR_DELETE: &str = "deleted by operator";
/// The start of the text recorded when a recipient's lifetime ran out; the last error follows.
pub const EXPIRED: &str = "delivery time expired";

/// The facts about the message that the decision reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageFacts {
    /// When the message was received, ms since the Unix epoch.
    pub received_ms: u64,
    /// Whether a DSN may be sent about it: not for a DSN, not to the null reverse path
    /// (RFC 3461 §6.2, RFC 5321 §6.1).
    pub may_notify: bool,
    /// Its own deadline, ms since the Unix epoch, when earlier than the retry policy's lifetime
    /// (the message's options, the destination's shaping rule); 0 for none.
    pub deadline_ms: u64,
}

/// The facts about the recipient before the attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecipientFacts {
    /// Attempts made before this one.
    pub attempts: u32,
    /// A delay DSN was already sent.
    pub delay_notified: bool,
    /// Its NOTIFY parameter.
    pub notify: Notify,
}

/// Where the recipient stands after the attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Delivered: final.
    Delivered,
    /// Try again at this Unix time in ms.
    Deferred {
        /// The next attempt.
        next_attempt_ms: u64,
    },
    /// Failed: final.
    Failed {
        /// The failure was temporary but the lifetime ran out.
        expired: bool,
    },
    /// Deleted by the operator: final.
    Deleted,
}

/// A DSN the recipient belongs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DsnNotice {
    /// Which DSN.
    pub kind: DsnKind,
    /// Its RFC 3464 Status for this recipient.
    pub status: EnhancedCode,
}

/// What to do with the recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The new state.
    pub fate: Fate,
    /// The attempt number to record (the attempts so far for a deletion, which is no attempt).
    pub attempt: u32,
    /// The reply or error text to record.
    pub text: String,
    /// The remote host, empty when none answered.
    pub remote: String,
    /// The bounce category of a failed attempt.
    pub category: Option<Category>,
    /// The id of the classifier rule behind `category`, when a reply or connection failure
    /// was classified (an expiry after a failed attempt carries that attempt's rule; none for
    /// deliveries, operator actions and expiries without an attempt).
    pub rule: Option<&'static str>,
    /// The DSN to send about the recipient, if any.
    pub dsn: Option<DsnNotice>,
}

/// Decides what becomes of a recipient after `result`. See the module doc.
pub fn decide(
    message: MessageFacts,
    recipient: RecipientFacts,
    result: &AttemptResult,
    classifier: &Classifier,
    policy: &RetryPolicy,
    now_ms: u64,
) -> Decision {
    let attempt = recipient.attempts.saturating_add(1);
    let notify = recipient.notify;
    let wants = |kind: DsnKind| {
        message.may_notify
            && match kind {
                DsnKind::Failure => notify.reports_failure(),
                DsnKind::Delay => notify.reports_delay(),
                DsnKind::Success => notify.reports_success(),
            }
    };
    let (text, remote, class, enhanced) = match result {
        AttemptResult::Delivered {
            reply,
            remote,
            dsn_passed_on,
        } => {
            // RFC 3461 §5.2.2-5.2.3: a relay that passed NOTIFY on to a next hop with DSN sends
            // nothing (the next hop reports); otherwise it reports "relayed".
            let dsn = (wants(DsnKind::Success) && !dsn_passed_on).then_some(DsnNotice {
                kind: DsnKind::Success,
                status: EnhancedCode::new(2, 0, 0),
            });
            return Decision {
                fate: Fate::Delivered,
                attempt,
                text: reply.one_line(),
                remote: remote.clone(),
                category: None,
                rule: None,
                dsn,
            };
        }
        AttemptResult::Deleted => {
            return Decision {
                fate: Fate::Deleted,
                attempt: recipient.attempts,
                text: OPERATOR_DELETE.into(),
                remote: String::new(),
                category: None,
                rule: None,
                dsn: None,
            };
        }
        AttemptResult::Bounced => {
            let category = Category::Other;
            return Decision {
                fate: Fate::Failed { expired: false },
                attempt,
                text: OPERATOR_BOUNCE.into(),
                remote: String::new(),
                category: Some(category),
                rule: None,
                dsn: wants(DsnKind::Failure).then(|| DsnNotice {
                    kind: DsnKind::Failure,
                    status: dsn_status(DsnKind::Failure, Some(EnhancedCode::new(5, 0, 0)), None),
                }),
            };
        }
        AttemptResult::Expired { last } => {
            let (text, category) = match last {
                Some((error, category)) => (format!("{EXPIRED}; last error: {error}"), *category),
                None => (EXPIRED.to_owned(), Category::Temporary),
            };
            return Decision {
                fate: Fate::Failed { expired: true },
                attempt: recipient.attempts,
                text,
                remote: String::new(),
                category: Some(category),
                rule: None,
                dsn: wants(DsnKind::Failure).then(|| DsnNotice {
                    kind: DsnKind::Failure,
                    status: dsn_status(DsnKind::Failure, None, Some(Cause::Expired)),
                }),
            };
        }
        AttemptResult::Refused { reply, remote } => {
            let text = reply.one_line();
            // The rules read the text after the codes, as `bounce classify` does.
            let class = classifier.verdict(&Failure::Reply {
                code: reply.code,
                enhanced: reply.enhanced.map(|e| (e.class, e.subject, e.detail)),
                text: &reply.text_line(),
            });
            (text, remote.clone(), class, reply.enhanced)
        }
        AttemptResult::Connection {
            failure,
            detail,
            remote,
        } => {
            let class = classifier.verdict(&Failure::Connection(*failure));
            // RFC 3463 X.7.5: cryptographic failure (the certificate did not verify).
            let enhanced =
                (*failure == ConnFailure::Certificate).then(|| EnhancedCode::new(4, 7, 5));
            (detail.clone(), remote.clone(), class, enhanced)
        }
    };
    let rule = Some(class.rule);
    let class = class.class;
    let category = Some(class.category);
    let failed = |text: String, expired: bool| Decision {
        fate: Fate::Failed { expired },
        attempt,
        dsn: wants(DsnKind::Failure).then(|| DsnNotice {
            kind: DsnKind::Failure,
            status: dsn_status(
                DsnKind::Failure,
                enhanced,
                Some(if expired {
                    Cause::Expired
                } else {
                    Cause::Category(class.category)
                }),
            ),
        }),
        text,
        remote: remote.clone(),
        category,
        rule,
    };
    if class.action == Action::Bounce {
        return failed(text, false);
    }
    let expiry = expiry_ms(policy, message.received_ms, message.deadline_ms);
    match after_failure_until(policy, attempt, expiry, now_ms) {
        NextStep::Expire => failed(format!("{EXPIRED}; last error: {text}"), true),
        NextStep::RetryAt(next_attempt_ms) => {
            let delay_due = delay_notice_due_until(
                policy,
                message.received_ms,
                expiry,
                now_ms,
                recipient.delay_notified,
            );
            Decision {
                fate: Fate::Deferred { next_attempt_ms },
                attempt,
                dsn: (delay_due && wants(DsnKind::Delay)).then(|| DsnNotice {
                    kind: DsnKind::Delay,
                    status: dsn_status(
                        DsnKind::Delay,
                        enhanced,
                        Some(Cause::Category(class.category)),
                    ),
                }),
                text,
                remote,
                category,
                rule,
            }
        }
    }
}

/// Why a recipient failed or is late, as far as the DSN's Status goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// The bounce category of the last attempt.
    Category(Category),
    /// The lifetime ran out.
    Expired,
}

/// The RFC 3464 Status of a recipient in a DSN of `kind`: the receiver's own enhanced code
/// when its class fits the DSN (5 for a failure, 4 for a delay), else one derived from the
/// cause (RFC 3463 subjects), else `X.0.0`.
pub fn dsn_status(
    kind: DsnKind,
    enhanced: Option<EnhancedCode>,
    cause: Option<Cause>,
) -> EnhancedCode {
    let class = match kind {
        DsnKind::Success => return EnhancedCode::new(2, 0, 0),
        DsnKind::Failure => 5,
        DsnKind::Delay => 4,
    };
    if let Some(code) = enhanced
        && code.class == class
    {
        return code;
    }
    let (subject, detail) = match cause {
        Some(Cause::Category(Category::UserUnknown)) => (1, 1),
        Some(Cause::Category(Category::HostUnknown)) => (1, 2),
        Some(Cause::Category(Category::MailboxFull)) => (2, 2),
        Some(Cause::Category(Category::MessageTooBig)) => (3, 4),
        Some(Cause::Category(
            Category::Blocklisted | Category::Spam | Category::Policy | Category::RelayDenied,
        )) => (7, 1),
        Some(Cause::Category(Category::Tls)) => (7, 10),
        Some(Cause::Expired) => (4, 7),
        _ => (0, 0),
    };
    EnhancedCode::new(class, subject, detail)
}

#[cfg(test)]
mod tests;
