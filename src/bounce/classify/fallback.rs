//! What a failure means when no rule matches: RFC 3463 subject and detail, then the reply
//! class, and the connection-failure table.

use super::{Action, Category, Classification, ConnFailure};

/// No rule matched a 4xx/5xx reply: RFC 3463 subject and detail give the category, the
/// reply class the action, except that the retry categories retry even on 5xx (the
/// product's promise; see rules.toml). The reply code wins over the enhanced code's class
/// when they disagree: RFC 5321 §4.2.1 clients act on the reply code.
pub(super) fn reply_fallback(code: u16, enhanced: Option<(u8, u16, u16)>) -> Classification {
    let transient = code / 100 == 4;
    let category = enhanced
        .map(|(_, subject, detail)| enhanced_category(subject, detail))
        .unwrap_or(if transient {
            Category::Temporary
        } else {
            Category::Other
        });
    let action = if transient || category.retries_on_permanent() {
        Action::Retry
    } else {
        Action::Bounce
    };
    Classification::new(category, action)
}

/// RFC 3463 §3 (and the IANA registry for later codes) subject.detail to a category.
pub(super) fn enhanced_category(subject: u16, detail: u16) -> Category {
    use Category::*;
    match (subject, detail) {
        // X.1 addressing. X.1.10 is RFC 7505's null MX.
        (1, 0 | 1 | 3 | 6) => UserUnknown,
        (1, 2 | 10) => HostUnknown,
        (1, 7 | 8) => Policy,
        (1, _) => Other,
        // X.2 mailbox.
        (2, 1) => MailboxDisabled,
        (2, 2) => MailboxFull,
        (2, 3) => MessageTooBig,
        (2, _) => Other,
        // X.3 mail system: the receiver's own state.
        (3, 4) => MessageTooBig,
        (3, 0 | 1 | 2 | 5) => Temporary,
        (3, _) => Other,
        // X.4 network and routing. X.4.4 is "unable to route"; X.4.6/X.4.7 are a loop and
        // an expired message at a relay, final verdicts.
        (4, 4) => HostUnknown,
        (4, 0..=3 | 5) => Temporary,
        (4, _) => Other,
        // X.5 protocol. X.5.3 is "too many recipients" (RFC 5321 §4.5.3.1.10: retry them).
        (5, 3) => RateLimited,
        (5, _) => Protocol,
        // X.7 security and policy.
        (7, 4 | 10 | 11) => Tls,
        (7, 13) => MailboxDisabled,
        (7, 25) => Policy,
        (7, 28) => RateLimited,
        (7, _) => Policy,
        _ => Other,
    }
}

/// The same table as the connection rules at the top of rules.toml, used when an operator
/// classifier alone (without the built-in rules) meets a connection failure.
pub(super) fn connection_fallback(conn: ConnFailure) -> Classification {
    let (category, action) = match conn {
        ConnFailure::DnsNxDomain | ConnFailure::DnsNullMx => {
            (Category::HostUnknown, Action::Bounce)
        }
        ConnFailure::DnsNoAddress => (Category::HostUnknown, Action::Retry),
        ConnFailure::Tls | ConnFailure::Certificate => (Category::Tls, Action::Retry),
        ConnFailure::Protocol => (Category::Protocol, Action::Retry),
        ConnFailure::Refused
        | ConnFailure::Timeout
        | ConnFailure::Reset
        | ConnFailure::DnsServFail
        | ConnFailure::DnsTimeout => (Category::Temporary, Action::Retry),
    };
    Classification::new(category, action)
}
