//! Feedback about mail ringmta sent: the VERP return path that identifies a message, and the
//! reports that come back to it — delivery status notifications (RFC 3464) and complaints in
//! the Abuse Reporting Format (ARF, RFC 5965) — read into [`Report`]s.
//!
//! Pure: no I/O, no clock. The worker accepts the mail (`smtp` role, recipients in
//! `delivery.bounce_domain`), hands the report to the core that owns the message, and that
//! core turns it into events and suppression entries (`delivery::Delivery::take_feedback`).

use mail_parser::{MessageParser, MimeHeaders, PartType};

pub use crate::ids::{VERP_PREFIX, parse_verp, verp_address};

/// What a report says about one recipient of the original message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// The recipient, as ringmta sent to it (Original-Recipient, else Final-Recipient, else the
    /// complaint's Original-Rcpt-To or the reported message's To).
    pub recipient: String,
    /// What happened.
    pub kind: NoticeKind,
    /// The receiver's words: the Diagnostic-Code (its type prefix removed), else the Status;
    /// for a complaint, `complaint: <feedback type>`.
    pub reply: String,
    /// The RFC 3464 Status, when given.
    pub status: Option<(u8, u16, u16)>,
    /// The Reporting-MTA, when given.
    pub reporting_mta: String,
}

/// The kind of a [`Notice`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoticeKind {
    /// `Action: failed`: the recipient bounced after the next hop accepted the message.
    Failed,
    /// `Action: delayed`: a relay further on is still trying.
    Delayed,
    /// An ARF report: the recipient marked the message as spam (or another feedback type).
    Complaint,
}

/// A report read from a message sent to a VERP address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Report {
    /// The per-recipient notices it carries (empty for a DSN that only says "delivered").
    Notices(Vec<Notice>),
    /// Not a DSN nor an ARF report (an auto-reply, a human answer): nothing to act on.
    NotAReport,
}

/// Reads a DSN or an ARF report. Anything else (or a report whose parts are missing) is
/// [`Report::NotAReport`]; this never fails on peer input.
pub fn parse(message: &[u8]) -> Report {
    let Some(parsed) = MessageParser::default().parse(message) else {
        return Report::NotAReport;
    };
    let report_type = parsed
        .root_part()
        .content_type()
        .filter(|ct| {
            ct.ctype().eq_ignore_ascii_case("multipart")
                && ct
                    .subtype()
                    .is_some_and(|s| s.eq_ignore_ascii_case("report"))
        })
        .and_then(|ct| ct.attribute("report-type"))
        .map(str::to_ascii_lowercase);
    let part_of = |subtype: &str| {
        parsed.parts.iter().find(|p| {
            p.content_type().is_some_and(|ct| {
                ct.ctype().eq_ignore_ascii_case("message")
                    && ct
                        .subtype()
                        .is_some_and(|s| s.eq_ignore_ascii_case(subtype))
            })
        })
    };
    match report_type.as_deref() {
        Some("delivery-status") => match part_of("delivery-status") {
            Some(part) => Report::Notices(dsn_notices(part.contents())),
            None => Report::NotAReport,
        },
        Some("feedback-report") => {
            let Some(part) = part_of("feedback-report") else {
                return Report::NotAReport;
            };
            let fields = blocks(part.contents())
                .into_iter()
                .flatten()
                .collect::<Vec<_>>();
            let feedback_type = field(&fields, "feedback-type").unwrap_or("abuse");
            let mut recipients: Vec<String> = fields
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("original-rcpt-to"))
                .map(|(_, v)| unbracket(v))
                .filter(|r| !r.is_empty())
                .collect();
            if recipients.is_empty() {
                recipients = reported_to(&parsed);
            }
            Report::Notices(
                recipients
                    .into_iter()
                    .map(|recipient| Notice {
                        recipient,
                        kind: NoticeKind::Complaint,
                        reply: format!("complaint: {feedback_type}"),
                        status: None,
                        reporting_mta: field(&fields, "reporting-mta")
                            .map(strip_type)
                            .unwrap_or_default()
                            .to_owned(),
                    })
                    .collect(),
            )
        }
        _ => Report::NotAReport,
    }
}

/// The notices of an RFC 3464 `message/delivery-status` body: the per-message block first,
/// then one block per recipient.
fn dsn_notices(body: &[u8]) -> Vec<Notice> {
    let mut blocks = blocks(body).into_iter();
    let per_message = blocks.next().unwrap_or_default();
    let reporting_mta = field(&per_message, "reporting-mta")
        .map(strip_type)
        .unwrap_or_default()
        .to_owned();
    blocks
        .filter_map(|block| {
            let kind = match field(&block, "action")?.to_ascii_lowercase().as_str() {
                "failed" => NoticeKind::Failed,
                "delayed" => NoticeKind::Delayed,
                _ => return None,
            };
            let recipient = field(&block, "original-recipient")
                .or_else(|| field(&block, "final-recipient"))
                .map(|v| unbracket(strip_type(v)))?;
            let status = field(&block, "status").and_then(|s| {
                let e = crate::smtp::EnhancedCode::parse(s.split_whitespace().next()?)?;
                Some((e.class, e.subject, e.detail))
            });
            let reply = field(&block, "diagnostic-code")
                .map(|d| strip_type(d).to_owned())
                .or_else(|| field(&block, "status").map(str::to_owned))
                .unwrap_or_default();
            Some(Notice {
                recipient,
                kind,
                reply,
                status,
                reporting_mta: reporting_mta.clone(),
            })
        })
        .collect()
}

/// A header-like body split into blocks at blank lines, each a list of (name, unfolded value).
fn blocks(body: &[u8]) -> Vec<Vec<(String, String)>> {
    let text = String::from_utf8_lossy(body).replace("\r\n", "\n");
    text.split("\n\n")
        .map(|block| {
            let mut fields: Vec<(String, String)> = Vec::new();
            for line in block.lines() {
                if line.starts_with([' ', '\t']) {
                    if let Some((_, value)) = fields.last_mut() {
                        value.push(' ');
                        value.push_str(line.trim());
                    }
                } else if let Some((name, value)) = line.split_once(':') {
                    fields.push((name.trim().to_owned(), value.trim().to_owned()));
                }
            }
            fields
        })
        .filter(|fields| !fields.is_empty())
        .collect()
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// `rfc822; bob@example.net` → `bob@example.net` (RFC 3464 typed values).
fn strip_type(value: &str) -> &str {
    value.split_once(';').map_or(value, |(_, v)| v).trim()
}

/// `<bob@example.net>` → `bob@example.net`.
fn unbracket(value: &str) -> String {
    value
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim()
        .to_owned()
}

/// The To addresses of the message an ARF report carries (`message/rfc822` or
/// `text/rfc822-headers`), for a report without Original-Rcpt-To.
fn reported_to(parsed: &mail_parser::Message<'_>) -> Vec<String> {
    for part in &parsed.parts {
        let headers_only = part.content_type().is_some_and(|ct| {
            ct.ctype().eq_ignore_ascii_case("text")
                && ct
                    .subtype()
                    .is_some_and(|s| s.eq_ignore_ascii_case("rfc822-headers"))
        });
        let inner = match &part.body {
            PartType::Message(m) => Some(m.clone()),
            _ if headers_only => MessageParser::default()
                .parse_headers(part.contents())
                .map(|m| m.into_owned()),
            _ => None,
        };
        if let Some(inner) = inner {
            return inner
                .to()
                .and_then(|to| to.as_list())
                .map(|list| {
                    list.iter()
                        .filter_map(|a| a.address().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
        }
    }
    Vec::new()
}

#[cfg(test)]
mod tests;
