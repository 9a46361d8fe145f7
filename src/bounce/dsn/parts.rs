//! The first two parts of a notification: the human-readable explanation and the
//! message/delivery-status fields (RFC 3464 §2.2-2.3).

use super::returned::{Returned, returned_note};
use super::text::{ascii, clean, final_recipient, fold, has_type, strip_type, xtext_safe};
use super::{DsnAction, DsnInput, DsnKind, FOLD_AT, INDENT, TEXT_WIDTH};
use crate::rfc5322;

/// The human-readable part: paragraphs of prose, then one per recipient. Lines that carry input
/// continue indented, so that no line starts with peer text: the text is only prose, but a
/// naive reader should not see a header field in it either.
pub(super) fn explanation(input: &DsnInput<'_>, returned: &Returned<'_>) -> String {
    let mut paragraphs: Vec<String> = Vec::new();
    let mut p = String::new();
    fold(
        &mut p,
        "",
        &format!(
            "This is the mail system at host {}.",
            clean(input.reporting_mta)
        ),
        TEXT_WIDTH,
        INDENT,
    );
    paragraphs.push(p);

    let opening = match input.kind {
        DsnKind::Failure => {
            "Your message could not be delivered to one or more recipients. The mail system \
             has given up on them; the details are below."
        }
        DsnKind::Delay => {
            "Your message has not yet been delivered to one or more recipients. The mail \
             system is still trying; you do not need to send it again."
        }
        DsnKind::Success
            if input
                .recipients
                .iter()
                .all(|r| r.action == DsnAction::Relayed) =>
        {
            "Your message was relayed to the mail systems of the recipients below. They do \
             not send delivery notices, so this is the last notice you will receive about it. \
             You receive it because you asked for one."
        }
        DsnKind::Success => {
            "Your message was delivered to the recipients below. You receive this notice \
             because you asked for one."
        }
    };
    let mut p = String::new();
    fold(&mut p, "", opening, TEXT_WIDTH, "");
    paragraphs.push(p);

    let mut p = String::new();
    fold(&mut p, "", &returned_note(returned), TEXT_WIDTH, "");
    paragraphs.push(p);

    for r in input.recipients {
        let mut p = String::new();
        let (a, b, c) = r.status;
        let outcome = match r.action {
            DsnAction::Failed => "delivery failed",
            DsnAction::Delayed => "delivery delayed",
            DsnAction::Delivered => "delivered",
            DsnAction::Relayed => "relayed to a system that sends no delivery notices",
        };
        fold(
            &mut p,
            "",
            &format!(
                "<{}>: {outcome} (status {a}.{b}.{c})",
                clean(&r.final_recipient)
            ),
            TEXT_WIDTH,
            INDENT,
        );
        if let Some(mta) = &r.remote_mta {
            let mta = clean(mta);
            let text = format!("Remote server: {}", strip_type(&mta));
            fold(&mut p, INDENT, &text, TEXT_WIDTH, "        ");
        }
        if let Some(diagnostic) = &r.diagnostic {
            let diagnostic = clean(diagnostic);
            let text = format!("Reply: {}", strip_type(&diagnostic));
            fold(&mut p, INDENT, &text, TEXT_WIDTH, "        ");
        }
        if let (DsnAction::Delayed, Some(until)) = (r.action, r.will_retry_until) {
            let text = format!("Retries go on until: {}", rfc5322::date(until));
            fold(&mut p, INDENT, &text, TEXT_WIDTH, "        ");
        }
        paragraphs.push(p);
    }
    paragraphs.join("\r\n")
}

/// The message/delivery-status body (RFC 3464 §2.1): the per-message block, then one block per
/// recipient, each preceded by an empty line. ASCII only.
pub(super) fn delivery_status(input: &DsnInput<'_>) -> String {
    let mut s = String::with_capacity(256 + 256 * input.recipients.len());
    // RFC 3464 §2.2: per-message fields in the order of the grammar.
    if let Some(envid) = input.envid {
        fold(
            &mut s,
            "Original-Envelope-Id: ",
            &xtext_safe(envid.trim()),
            FOLD_AT,
            " ",
        );
    }
    fold(
        &mut s,
        "Reporting-MTA: ",
        &format!("dns;{}", ascii(&clean(input.reporting_mta))),
        FOLD_AT,
        " ",
    );
    fold(
        &mut s,
        "Arrival-Date: ",
        &rfc5322::date(input.arrival_date),
        FOLD_AT,
        " ",
    );
    for r in input.recipients {
        s.push_str("\r\n");
        // RFC 3464 §2.3: per-recipient fields in the order of the grammar.
        if let Some(orcpt) = &r.original_recipient {
            let orcpt = orcpt.trim();
            let value = if orcpt.contains(';') {
                xtext_safe(orcpt)
            } else {
                xtext_safe(&format!("rfc822;{orcpt}"))
            };
            fold(&mut s, "Original-Recipient: ", &value, FOLD_AT, " ");
        }
        fold(
            &mut s,
            "Final-Recipient: ",
            &final_recipient(&r.final_recipient),
            FOLD_AT,
            " ",
        );
        fold(&mut s, "Action: ", r.action.as_str(), FOLD_AT, " ");
        let (a, b, c) = r.status;
        fold(&mut s, "Status: ", &format!("{a}.{b}.{c}"), FOLD_AT, " ");
        if let Some(mta) = &r.remote_mta {
            let mta = ascii(&clean(mta));
            let value = if has_type(&mta) {
                mta
            } else {
                format!("dns;{mta}")
            };
            fold(&mut s, "Remote-MTA: ", &value, FOLD_AT, " ");
        }
        if let Some(diagnostic) = &r.diagnostic {
            let diagnostic = ascii(&clean(diagnostic));
            let value = if has_type(&diagnostic) {
                diagnostic
            } else {
                format!("smtp; {diagnostic}")
            };
            fold(&mut s, "Diagnostic-Code: ", &value, FOLD_AT, " ");
        }
        fold(
            &mut s,
            "Last-Attempt-Date: ",
            &rfc5322::date(r.last_attempt),
            FOLD_AT,
            " ",
        );
        if let (DsnAction::Delayed, Some(until)) = (r.action, r.will_retry_until) {
            fold(
                &mut s,
                "Will-Retry-Until: ",
                &rfc5322::date(until),
                FOLD_AT,
                " ",
            );
        }
    }
    s
}
