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
    /// The addresses the notice may name the recipient by, best first: Original-Recipient and
    /// Final-Recipient of a DSN; the complaint's Original-Rcpt-To, else the reported message's
    /// To. The owning core keeps the one that is a recipient of the message.
    pub recipients: Vec<String>,
    /// What happened.
    pub kind: NoticeKind,
    /// The receiver's words: the Diagnostic-Code (its type prefix removed), else the Status;
    /// for a complaint, `complaint: <feedback type>`.
    pub reply: String,
    /// The RFC 3464 Status, when given.
    pub status: Option<(u8, u16, u16)>,
    /// The Reporting-MTA, when given.
    pub reporting_mta: String,
    /// A complaint whose Feedback-Type says the recipient did not want the mail (`abuse`,
    /// `fraud`, `virus`; RFC 5965 §7.3), as opposed to `not-spam` or `auth-failure`.
    pub abuse: bool,
}

/// At most this many notices are read from one report.
pub const MAX_NOTICES: usize = 100;

/// A reply or diagnostic is cut to this many bytes (at a character boundary).
pub const MAX_REPLY: usize = 1024;

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
        // RFC 6533: the SMTPUTF8 form of a DSN.
        Some("global-delivery-status") => match part_of("global-delivery-status") {
            Some(part) => Report::Notices(dsn_notices(part.contents())),
            None => Report::NotAReport,
        },
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
            let abuse = ["abuse", "fraud", "virus"]
                .iter()
                .any(|t| t.eq_ignore_ascii_case(feedback_type));
            let mut recipients: Vec<String> = fields
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case("original-rcpt-to"))
                .map(|(_, v)| unbracket(v))
                .filter(|r| !r.is_empty())
                .collect();
            if recipients.is_empty() {
                recipients = reported_to(&parsed);
            }
            recipients.truncate(MAX_NOTICES);
            Report::Notices(vec![Notice {
                recipients,
                kind: NoticeKind::Complaint,
                reply: clip(&format!("complaint: {feedback_type}")),
                status: None,
                reporting_mta: clip(
                    field(&fields, "reporting-mta")
                        .map(strip_type)
                        .unwrap_or_default(),
                ),
                abuse,
            }])
        }
        _ => Report::NotAReport,
    }
}

/// The notices of an RFC 3464 `message/delivery-status` body: the per-message block first,
/// then one block per recipient.
fn dsn_notices(body: &[u8]) -> Vec<Notice> {
    let mut blocks = blocks(body).into_iter();
    let per_message = blocks.next().unwrap_or_default();
    let reporting_mta = clip(
        field(&per_message, "reporting-mta")
            .map(strip_type)
            .unwrap_or_default(),
    );
    blocks
        .filter_map(|block| {
            let kind = match field(&block, "action")?.to_ascii_lowercase().as_str() {
                "failed" => NoticeKind::Failed,
                "delayed" => NoticeKind::Delayed,
                _ => return None,
            };
            let recipients: Vec<String> = ["original-recipient", "final-recipient"]
                .iter()
                .filter_map(|name| field(&block, name))
                .map(|v| unbracket(strip_type(v)))
                .filter(|r| !r.is_empty())
                .collect();
            if recipients.is_empty() {
                return None;
            }
            let status = field(&block, "status").and_then(|s| {
                let e = crate::smtp::EnhancedCode::parse(s.split_whitespace().next()?)?;
                Some((e.class, e.subject, e.detail))
            });
            let reply = field(&block, "diagnostic-code")
                .map(|d| strip_type(d).to_owned())
                .or_else(|| field(&block, "status").map(str::to_owned))
                .unwrap_or_default();
            Some(Notice {
                recipients,
                kind,
                reply: clip(&reply),
                status,
                reporting_mta: reporting_mta.clone(),
                abuse: false,
            })
        })
        .take(MAX_NOTICES)
        .collect()
}

/// `text` cut to [`MAX_REPLY`] bytes at a character boundary.
fn clip(text: &str) -> String {
    let mut end = text.len().min(MAX_REPLY);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
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
