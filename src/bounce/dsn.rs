//! Delivery status notifications (RFC 3464): builds the complete RFC 5322 message that tells an
//! envelope sender about failed, delayed or successful delivery, and recognises incoming ones so
//! that ringmta never sends a DSN about a DSN.
//!
//! This module never does I/O, never reads the clock and never draws random numbers: times, the
//! Message-ID and the MIME boundary all come in through [`DsnInput`].
//!
//! Invariants of [`render`]'s output, whatever the input:
//! - every line ends in CRLF and is at most 998 octets long (RFC 5322 §2.1.1);
//! - no CR, LF or other control character from an input reaches a header field, a
//!   delivery-status field or the explanation, so a remote server's reply or a peer's address
//!   cannot add fields, recipient blocks or MIME parts;
//! - the message/delivery-status part is 7-bit ASCII (RFC 3464 §2.1);
//! - `--boundary` occurs nowhere in the content, not only at line starts, because lenient
//!   parsers (mail-parser among them) match it anywhere: when input text or the original
//!   contains the caller's boundary, the boundary is lengthened until it does not;
//! - octets above 0x7F appear only when the original message or an address carries them. The
//!   caller then needs BODY=8BITMIME (or SMTPUTF8 for a non-ASCII address) to relay the notice;
//!   `out.is_ascii()` tells which.

use std::fmt::Write as _;
use std::time::SystemTime;

use crate::rfc5322::{self, header_section};

/// What the notification as a whole reports; chooses the Subject and the opening explanation.
/// Each recipient still carries its own [`DsnAction`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsnKind {
    /// Delivery failed permanently for at least one recipient.
    Failure,
    /// Delivery is late for at least one recipient and is still being retried.
    Delay,
    /// Delivery succeeded and the sender asked to hear about it (NOTIFY=SUCCESS).
    Success,
}

/// The Action field of one recipient block (RFC 3464 §2.3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsnAction {
    /// The message could not be delivered and will not be retried.
    Failed,
    /// Delivery has not succeeded yet; retries go on.
    Delayed,
    /// The message reached the recipient's mailbox.
    Delivered,
    /// The message went on to a system that does not send delivery notifications.
    Relayed,
}

impl DsnAction {
    /// The action keyword as written in the delivery-status part.
    pub fn as_str(self) -> &'static str {
        match self {
            DsnAction::Failed => "failed",
            DsnAction::Delayed => "delayed",
            DsnAction::Delivered => "delivered",
            DsnAction::Relayed => "relayed",
        }
    }
}

/// How much of the original message goes back to the sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnContent {
    /// The whole message, as message/rfc822 (RET=FULL).
    Full,
    /// Only its header section, as text/rfc822-headers (RET=HDRS).
    Headers,
}

impl ReturnContent {
    /// The content to return for a notification of `kind`, given the RET parameter the sender
    /// gave (`None` when MAIL FROM had no RET).
    ///
    /// RFC 3461 §4.3 lets the MTA choose when RET is absent; ringmta returns the full message
    /// on failure, as Postfix does, because that is what lets a sender resend it. Delay and
    /// success notices return headers only, because §4.3 says a DSN with no indication of
    /// failure SHOULD return only the headers, whatever RET says.
    pub fn for_notification(kind: DsnKind, ret: Option<ReturnContent>) -> ReturnContent {
        match (kind, ret) {
            (DsnKind::Failure, Some(ReturnContent::Headers)) => ReturnContent::Headers,
            (DsnKind::Failure, _) => ReturnContent::Full,
            (DsnKind::Delay | DsnKind::Success, _) => ReturnContent::Headers,
        }
    }
}

/// One recipient reported on, which becomes one per-recipient block (RFC 3464 §2.3) and one
/// paragraph of the explanation.
#[derive(Debug, Clone)]
pub struct DsnRecipient {
    /// The ORCPT value as received, `addr-type;xtext` (e.g. `rfc822;bob@example.net`). Octets
    /// that xtext does not allow are re-encoded as `+HH`; a value without `;` gets `rfc822;`.
    pub original_recipient: Option<String>,
    /// The recipient address, without angle brackets. Written as `rfc822;addr`, or as
    /// `utf-8;` with `\x{HEX}` escapes (RFC 6533 §3) when it is not printable ASCII.
    pub final_recipient: String,
    /// What happened to this recipient.
    pub action: DsnAction,
    /// The enhanced status code (RFC 3463), e.g. `(5, 1, 1)`. Its class should agree with
    /// `action` (5 for failed, 4 for delayed, 2 otherwise); this module writes it as given.
    pub status: (u8, u16, u16),
    /// The server that gave the reply: a host name (`mx.example.net`, written as
    /// `dns;mx.example.net`) or a value that already has its type (`dns;mx.example.net`).
    pub remote_mta: Option<String>,
    /// The remote reply: raw (`550 5.1.1 no such user`, written as `smtp; 550 ...`; the lines
    /// of a multi-line reply are joined with spaces) or already typed (`smtp; 550 ...`,
    /// `x-ringmta; connection refused`). Non-ASCII characters become `?`; the text is cut at
    /// 4096 octets.
    pub diagnostic: Option<String>,
    /// When delivery to this recipient was last tried.
    pub last_attempt: SystemTime,
    /// When retries stop; written only when `action` is [`DsnAction::Delayed`]
    /// (RFC 3464 §2.3.9).
    pub will_retry_until: Option<SystemTime>,
}

/// Everything a notification is made from.
#[derive(Debug, Clone)]
pub struct DsnInput<'a> {
    /// Chooses the Subject and the opening explanation.
    pub kind: DsnKind,
    /// Our host name, written as `Reporting-MTA: dns;host`.
    pub reporting_mta: &'a str,
    /// The header From address as a bare addr-spec (e.g. `MAILER-DAEMON@mta.example.com`); it
    /// is written as `Mail Delivery System <addr>`. The envelope sender of the notice is null;
    /// the caller sends it that way.
    pub from: &'a str,
    /// The original envelope sender, the notice's only recipient; a bare addr-spec.
    pub to: &'a str,
    /// The ENVID parameter, xtext as received (RFC 3461 §4.4), written as Original-Envelope-Id.
    pub envid: Option<&'a str>,
    /// When the original message arrived.
    pub arrival_date: SystemTime,
    /// The notice's Date.
    pub date: SystemTime,
    /// The notice's Message-ID with angle brackets; the caller makes it unique.
    pub message_id: &'a str,
    /// The MIME boundary, unique per notice, chosen by the caller. Characters RFC 2046 §5.1.1
    /// does not allow are dropped and it is cut at 70 (an empty result is replaced); if the
    /// content contains it, characters are appended until it does not.
    pub boundary: &'a str,
    /// The recipients reported on, one block each, in this order.
    pub recipients: &'a [DsnRecipient],
    /// The original message, header section and body, CRLF line endings.
    pub original: &'a [u8],
    /// What the sender asked to get back (see [`ReturnContent::for_notification`]). `Full` is
    /// honoured only when some recipient's action is [`DsnAction::Failed`]: RFC 3461 §4.3 says
    /// a DSN without an indication of failure SHOULD return only the headers.
    pub return_content: ReturnContent,
    /// The most octets of the original that go back. A larger message is returned as headers
    /// only; a header section larger than this is cut after the last whole field that fits.
    /// The explanation says when either happens. Zero returns nothing.
    pub max_returned_body: usize,
}

/// Builds the complete notification: RFC 5322 header section, then a multipart/report
/// (RFC 6522) of a text/plain explanation, a message/delivery-status part (RFC 3464) and, when
/// anything can be returned, the original as message/rfc822 or text/rfc822-headers
/// (message/global or message/global-headers when its header section is not ASCII,
/// RFC 6532 §3.7 and RFC 6533 §6). CRLF line endings throughout.
pub fn render(input: &DsnInput<'_>) -> Vec<u8> {
    let returned = choose_returned(input);
    let text = explanation(input, &returned);
    let status = delivery_status(input);
    let returned_bytes = returned.bytes();

    // The header fields that carry input; the MIME fields, which name the boundary, come after
    // the boundary is known.
    let mut fields = String::with_capacity(512);
    fold(
        &mut fields,
        "From: ",
        &format!("Mail Delivery System <{}>", clean(input.from)),
        FOLD_AT,
        " ",
    );
    fold(
        &mut fields,
        "To: ",
        &format!("<{}>", clean(input.to)),
        FOLD_AT,
        " ",
    );
    fold(&mut fields, "Subject: ", subject(input.kind), FOLD_AT, " ");
    fold(
        &mut fields,
        "Date: ",
        &rfc5322::date(input.date),
        FOLD_AT,
        " ",
    );
    fold(
        &mut fields,
        "Message-ID: ",
        &clean(input.message_id),
        FOLD_AT,
        " ",
    );

    let boundary = collision_free_boundary(
        clean_boundary(input.boundary),
        &[
            fields.as_bytes(),
            text.as_bytes(),
            status.as_bytes(),
            returned_bytes,
        ],
    );
    let eight_bit = !text.is_ascii() || !returned_bytes.is_ascii();

    let mut head = fields;
    head.push_str("MIME-Version: 1.0\r\n");
    // RFC 3834 §5: marks the notice as automatic so that responders do not answer it.
    head.push_str("Auto-Submitted: auto-replied\r\n");
    fold(
        &mut head,
        "Content-Type: ",
        &format!("multipart/report; report-type=delivery-status; boundary=\"{boundary}\""),
        FOLD_AT,
        " ",
    );
    if eight_bit {
        // RFC 2045 §6.4: a multipart holding 8bit parts is itself 8bit.
        head.push_str("Content-Transfer-Encoding: 8bit\r\n");
    }
    head.push_str("\r\nThis is a MIME-encapsulated message.\r\n");

    // Each body part ends with its own CRLF; the CRLF before "--boundary" belongs to the
    // delimiter (RFC 2046 §5.1.1), so the parts come back byte for byte.
    head.push_str("\r\n--");
    head.push_str(&boundary);
    head.push_str("\r\n");
    if text.is_ascii() {
        head.push_str("Content-Type: text/plain; charset=us-ascii\r\n");
    } else {
        head.push_str("Content-Type: text/plain; charset=utf-8\r\n");
        head.push_str("Content-Transfer-Encoding: 8bit\r\n");
    }
    head.push_str("Content-Description: Notification\r\n\r\n");
    head.push_str(&text);

    head.push_str("\r\n--");
    head.push_str(&boundary);
    head.push_str("\r\nContent-Type: message/delivery-status\r\n");
    head.push_str("Content-Description: Delivery report\r\n\r\n");
    head.push_str(&status);

    let mut out = head.into_bytes();
    out.reserve(returned_bytes.len() + 256);
    if let Some((content_type, description)) = returned.part_type() {
        out.extend_from_slice(b"\r\n--");
        out.extend_from_slice(boundary.as_bytes());
        out.extend_from_slice(b"\r\nContent-Type: ");
        out.extend_from_slice(content_type.as_bytes());
        out.extend_from_slice(b"\r\nContent-Description: ");
        out.extend_from_slice(description.as_bytes());
        out.extend_from_slice(b"\r\n");
        if !returned_bytes.is_ascii() {
            out.extend_from_slice(b"Content-Transfer-Encoding: 8bit\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(returned_bytes);
        if !returned_bytes.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"\r\n--");
    out.extend_from_slice(boundary.as_bytes());
    out.extend_from_slice(b"--\r\n");
    out
}

/// Whether a header section announces a delivery status notification: a Content-Type of
/// multipart/report with report-type=delivery-status (RFC 3464 §2) or global-delivery-status
/// (RFC 6533 §6.2). Reading stops at the first empty line, so a whole message can be passed.
///
/// The null reverse-path is the main sign of a notification (RFC 5321 §4.5.5); this is the
/// second, for notices that arrive with a sender.
pub fn is_dsn(message_headers: &[u8]) -> bool {
    let Some(value) = content_type_value(message_headers) else {
        return false;
    };
    let value = String::from_utf8_lossy(&value);
    let mut items = split_parameters(&value).into_iter();
    let Some(media_type) = items.next() else {
        return false;
    };
    if !media_type.eq_ignore_ascii_case("multipart/report") {
        return false;
    }
    items.any(|item| {
        let Some((name, value)) = item.split_once('=') else {
            return false;
        };
        name.trim().eq_ignore_ascii_case("report-type")
            && (value.eq_ignore_ascii_case("delivery-status")
                || value.eq_ignore_ascii_case("global-delivery-status"))
    })
}

/// RFC 5322 §2.1.1: lines SHOULD stay within 78 characters.
const FOLD_AT: usize = 78;
/// Width of the explanation's lines.
const TEXT_WIDTH: usize = 76;
/// RFC 5322 §2.1.1: lines MUST NOT exceed 998 octets, CRLF excluded.
const MAX_LINE: usize = 998;
/// Longest run without a space kept on one line; a longer one is broken. It leaves room for a
/// field name or an indent within [`MAX_LINE`].
const MAX_WORD: usize = 900;
/// Cap on each free-text input (diagnostics, addresses, host names) after cleaning.
const MAX_TEXT: usize = 4096;
/// Indent of the explanation's lines that continue input text, and of a recipient's details.
const INDENT: &str = "    ";
/// RFC 2046 §5.1.1: a boundary is at most 70 characters.
const MAX_BOUNDARY: usize = 70;
/// RFC 2046 §5.1.1 `bcharsnospace`: boundary characters other than space, which may not end
/// one and is never needed.
const BCHARS: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz'()+_,-./:=?";
/// Used when the caller's boundary has no usable character left.
const FALLBACK_BOUNDARY: &str = "ringmta-dsn-boundary";

fn subject(kind: DsnKind) -> &'static str {
    match kind {
        DsnKind::Failure => "Undelivered Mail Returned to Sender",
        DsnKind::Delay => "Delayed Mail (still being retried)",
        DsnKind::Success => "Successful Mail Delivery Report",
    }
}

/// What goes in the third part.
enum Returned<'a> {
    Full(&'a [u8]),
    Headers {
        headers: &'a [u8],
        why: HeadersOnly,
        /// Some trailing header fields were left out.
        cut: bool,
    },
    Nothing(HeadersOnly),
}

/// Why the headers rather than the whole message go back.
enum HeadersOnly {
    /// The sender asked for headers, or nothing failed (RFC 3461 §4.3).
    Asked,
    TooLarge {
        size: usize,
        cap: usize,
    },
    /// A line over 998 octets, a bare CR or LF, or a NUL: the message cannot be carried
    /// unchanged as an 8bit body part (RFC 2045 §2.8).
    NotTransportable,
}

impl Returned<'_> {
    fn bytes(&self) -> &[u8] {
        match self {
            Returned::Full(b) => b,
            Returned::Headers { headers, .. } => headers,
            Returned::Nothing(_) => &[],
        }
    }

    fn part_type(&self) -> Option<(&'static str, &'static str)> {
        match self {
            Returned::Full(message) => {
                if header_section(message).is_ascii() {
                    Some(("message/rfc822", "Original message"))
                } else {
                    Some(("message/global", "Original message"))
                }
            }
            Returned::Headers { headers, .. } => {
                if headers.is_ascii() {
                    Some(("text/rfc822-headers", "Original message headers"))
                } else {
                    Some(("message/global-headers", "Original message headers"))
                }
            }
            Returned::Nothing(_) => None,
        }
    }
}

fn choose_returned<'a>(input: &DsnInput<'a>) -> Returned<'a> {
    let original = input.original;
    let cap = input.max_returned_body;
    let any_failed = input
        .recipients
        .iter()
        .any(|r| r.action == DsnAction::Failed);
    let why = if input.return_content == ReturnContent::Full && any_failed {
        if original.len() > cap {
            HeadersOnly::TooLarge {
                size: original.len(),
                cap,
            }
        } else if !is_transportable(original) {
            HeadersOnly::NotTransportable
        } else {
            return Returned::Full(original);
        }
    } else {
        HeadersOnly::Asked
    };
    let section = header_section(original);
    let headers = whole_fields_prefix(section, cap);
    if headers.is_empty() {
        return Returned::Nothing(why);
    }
    Returned::Headers {
        headers,
        why,
        cut: headers.len() < section.len(),
    }
}

/// The longest prefix of `section` made of whole fields that fits in `cap` octets and whose
/// lines are all transportable.
fn whole_fields_prefix(section: &[u8], cap: usize) -> &[u8] {
    let mut end = 0;
    let mut field_end = 0;
    for line in section.split_inclusive(|b| *b == b'\n') {
        let starts_field = !matches!(line.first(), Some(b' ' | b'\t'));
        if starts_field {
            end = field_end;
        }
        if field_end + line.len() > cap || !is_transportable(line) {
            return &section[..end];
        }
        field_end += line.len();
    }
    &section[..field_end]
}

/// Whether `content` can go out unchanged as an 8bit body part: CRLF line endings only, no NUL,
/// lines within 998 octets.
fn is_transportable(content: &[u8]) -> bool {
    content.split_inclusive(|b| *b == b'\n').all(|line| {
        let body = match line.strip_suffix(b"\n") {
            Some(rest) => match rest.strip_suffix(b"\r") {
                Some(body) => body,
                None => return false,
            },
            // The last line without a line ending gets a CRLF from `render`.
            None => line,
        };
        body.len() <= MAX_LINE && !body.iter().any(|b| *b == b'\r' || *b == 0)
    })
}

/// The human-readable part: paragraphs of prose, then one per recipient. Lines that carry input
/// continue indented, so that no line starts with peer text: the text is only prose, but a
/// naive reader should not see a header field in it either.
fn explanation(input: &DsnInput<'_>, returned: &Returned<'_>) -> String {
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

fn returned_note(returned: &Returned<'_>) -> String {
    let why = match returned {
        Returned::Full(_) => return "A copy of the original message is attached.".to_owned(),
        Returned::Headers { why, .. } | Returned::Nothing(why) => why,
    };
    let what = match returned {
        Returned::Headers { cut: false, .. } => "its headers are attached.",
        Returned::Headers { cut: true, .. } => {
            "the first of its header fields are attached; the rest did not fit."
        }
        _ => "not even its headers could be attached.",
    };
    match why {
        HeadersOnly::Asked => {
            let mut s = "The original message is not returned; ".to_owned();
            s.push_str(what);
            s
        }
        HeadersOnly::TooLarge { size, cap } => format!(
            "The original message is {size} bytes, over the {cap}-byte limit for returned \
             messages, so {what}"
        ),
        HeadersOnly::NotTransportable => format!(
            "The original message cannot be returned unchanged (it has overlong lines or \
             stray line breaks), so {what}"
        ),
    }
}

/// The message/delivery-status body (RFC 3464 §2.1): the per-message block, then one block per
/// recipient, each preceded by an empty line. ASCII only.
fn delivery_status(input: &DsnInput<'_>) -> String {
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

/// Writes `first` then the words of `text`, breaking lines before a space once `width` would be
/// passed and starting each new line with `indent`; ends with CRLF. With `indent` = " " this is
/// RFC 5322 §2.2.3 folding: unfolding gives the text back. A word over [`MAX_WORD`] octets is
/// broken across lines (unfolding then adds a space in it); with `first` and `indent` short, no
/// line passes [`MAX_LINE`]. `text` must hold no CR or LF ([`clean`] sees to that).
fn fold(out: &mut String, first: &str, text: &str, width: usize, indent: &str) {
    out.push_str(first);
    let mut line_len = first.len();
    let mut line_has_word = false;
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        for (i, piece) in pieces(word, MAX_WORD).enumerate() {
            if line_has_word && (i > 0 || line_len + 1 + piece.len() > width) {
                out.push_str("\r\n");
                out.push_str(indent);
                line_len = indent.len();
                line_has_word = false;
            }
            if line_has_word {
                out.push(' ');
                line_len += 1;
            }
            out.push_str(piece);
            line_len += piece.len();
            line_has_word = true;
        }
    }
    out.push_str("\r\n");
}

/// Splits `s` into pieces of at most `max` octets (at least one character each), on character
/// boundaries.
fn pieces(s: &str, max: usize) -> impl Iterator<Item = &str> {
    let mut rest = s;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut end = rest.len().min(max);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        if end == 0 {
            // `max` is smaller than the first character: take the character whole.
            end = rest.chars().next().map_or(rest.len(), char::len_utf8);
        }
        let (piece, tail) = rest.split_at(end);
        rest = tail;
        Some(piece)
    })
}

/// Peer text made safe for one line: control and white-space characters (CR, LF, TAB, NEL,
/// U+2028, ...) become single spaces, the ends are trimmed, and the result is cut at
/// [`MAX_TEXT`] octets.
fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_TEXT));
    for c in s.chars() {
        let c = if c.is_control() || c.is_whitespace() {
            ' '
        } else {
            c
        };
        if c == ' ' && (out.is_empty() || out.ends_with(' ')) {
            continue;
        }
        if out.len() + c.len_utf8() > MAX_TEXT {
            break;
        }
        out.push(c);
    }
    while out.ends_with(' ') {
        out.pop();
    }
    out
}

/// Replaces non-ASCII characters with `?`, for fields whose grammar is ASCII text.
fn ascii(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii() { c } else { '?' })
        .collect()
}

/// Whether a field value already starts with its type, `atom;` (e.g. `smtp;`, `dns;`,
/// `x-local;`). An SMTP reply starts with a digit, so it never looks typed.
fn has_type(s: &str) -> bool {
    let Some((kind, _)) = s.split_once(';') else {
        return false;
    };
    let kind = kind.trim();
    kind.starts_with(|c: char| c.is_ascii_alphabetic())
        && kind.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// The value without its `type;` prefix, for the explanation.
fn strip_type(s: &str) -> &str {
    match s.split_once(';') {
        Some((_, rest)) if has_type(s) => rest.trim_start(),
        _ => s,
    }
}

/// Re-encodes as `+HH` every octet that xtext (RFC 3461 §4) does not allow literally, so that a
/// value that should already be xtext stays one line of ASCII. `+` is kept: in valid xtext it
/// starts an escape. Stops before [`MAX_WORD`] octets so the value is never broken by folding.
fn xtext_safe(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        let literal = (0x21..=0x7e).contains(&b) && b != b'=';
        let needed = if literal { 1 } else { 3 };
        if out.len() + needed > MAX_WORD {
            break;
        }
        if literal {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "+{b:02X}");
        }
    }
    out
}

/// The Final-Recipient value: `rfc822;addr` for printable ASCII; otherwise RFC 6533 §3's
/// `utf-8;` form, where every character outside QCHAR is written `\x{HEX}`, so the
/// delivery-status part stays ASCII and no character is lost.
fn final_recipient(addr: &str) -> String {
    let addr = addr.trim();
    if addr.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        let mut s = String::with_capacity(addr.len() + 7);
        s.push_str("rfc822;");
        for c in addr.chars() {
            if s.len() >= MAX_TEXT {
                break;
            }
            s.push(c);
        }
        return s;
    }
    let mut s = String::from("utf-8;");
    for c in addr.chars() {
        // RFC 6533 §3: QCHAR = %x21-2a / %x2c-3c / %x3e-5b / %x5d-7e.
        let qchar =
            matches!(c, '\x21'..='\x2a' | '\x2c'..='\x3c' | '\x3e'..='\x5b' | '\x5d'..='\x7e');
        let before = s.len();
        if qchar {
            s.push(c);
        } else {
            let _ = write!(s, "\\x{{{:X}}}", u32::from(c));
        }
        if s.len() > MAX_WORD {
            s.truncate(before);
            break;
        }
    }
    s
}

/// Keeps the characters RFC 2046 §5.1.1 allows in a boundary (spaces dropped, so none can end
/// it), at most 70 of them.
fn clean_boundary(boundary: &str) -> String {
    let cleaned: String = boundary
        .bytes()
        .filter(|b| BCHARS.contains(b))
        .take(MAX_BOUNDARY)
        .map(char::from)
        .collect();
    if cleaned.is_empty() {
        FALLBACK_BOUNDARY.to_owned()
    } else {
        cleaned
    }
}

/// `preferred`, lengthened if needed so that `--boundary` occurs in none of `contents`.
///
/// Each round appends the boundary character that least often follows the current delimiter in
/// the contents; one that never follows it ends the search. When every character follows
/// (only crafted input does that), the count still drops by a factor of at least
/// `BCHARS.len()` per round, so a few rounds suffice for any input that fits in memory.
fn collision_free_boundary(preferred: String, contents: &[&[u8]]) -> String {
    let mut boundary = preferred;
    let mut shortened = false;
    loop {
        let Some(followers) = delimiter_followers(&boundary, contents) else {
            return boundary;
        };
        if !shortened && boundary.len() > MAX_BOUNDARY / 2 {
            // Leave room to append; the shorter boundary is checked again. It is ASCII, so any
            // length is a character boundary.
            shortened = true;
            boundary.truncate(MAX_BOUNDARY / 2);
            continue;
        }
        if boundary.len() >= MAX_BOUNDARY {
            // Unreachable for real sizes (see above): it would take over 74^35 occurrences.
            return boundary;
        }
        let next = BCHARS
            .iter()
            .copied()
            .min_by_key(|c| followers[usize::from(*c)])
            .unwrap_or(b'0');
        boundary.push(char::from(next));
    }
}

/// How often each octet follows `--boundary` in `contents`, or `None` when it never occurs.
fn delimiter_followers(boundary: &str, contents: &[&[u8]]) -> Option<[usize; 256]> {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    let mut found = false;
    let mut followers = [0usize; 256];
    for content in contents {
        for (i, window) in content.windows(delimiter.len()).enumerate() {
            if window == delimiter {
                found = true;
                if let Some(&next) = content.get(i + delimiter.len()) {
                    followers[usize::from(next)] += 1;
                }
            }
        }
    }
    found.then_some(followers)
}

/// The unfolded value of the first Content-Type field of a header section, if any.
fn content_type_value(headers: &[u8]) -> Option<Vec<u8>> {
    let mut value: Option<Vec<u8>> = None;
    for raw in headers.split(|b| *b == b'\n') {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.is_empty() {
            break;
        }
        if matches!(line[0], b' ' | b'\t') {
            if let Some(v) = value.as_mut() {
                v.extend_from_slice(line);
            }
            continue;
        }
        if value.is_some() {
            break;
        }
        if let Some(colon) = line.iter().position(|b| *b == b':')
            && line[..colon]
                .trim_ascii()
                .eq_ignore_ascii_case(b"content-type")
        {
            value = Some(line[colon + 1..].to_vec());
        }
    }
    value
}

/// Splits a Content-Type value at `;` into the media type and `name=value` parameters, with
/// quoted strings unquoted and comments (RFC 5322 §3.2.2) removed; items are trimmed.
fn split_parameters(value: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut current = String::new();
    let mut chars = value.chars();
    let mut in_quotes = false;
    let mut comment_depth = 0usize;
    while let Some(c) = chars.next() {
        match c {
            '\\' if in_quotes || comment_depth > 0 => {
                if let Some(escaped) = chars.next()
                    && comment_depth == 0
                {
                    current.push(escaped);
                }
            }
            '"' if comment_depth == 0 => in_quotes = !in_quotes,
            '(' if !in_quotes => comment_depth += 1,
            ')' if !in_quotes && comment_depth > 0 => comment_depth -= 1,
            _ if comment_depth > 0 => {}
            ';' if !in_quotes => items.push(std::mem::take(&mut current)),
            c if !in_quotes && c.is_whitespace() => {}
            c => current.push(c),
        }
    }
    items.push(current);
    items
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    use mail_parser::{MessageParser, MimeHeaders};
    use proptest::prelude::*;

    const BOUNDARY: &str = "=_dsn_0001";
    const ORIGINAL: &[u8] = b"From: Alice <alice@example.org>\r\n\
To: bob@example.net\r\n\
Subject: Lunch\r\n\
Message-ID: <m1@example.org>\r\n\
\r\n\
Shall we meet at noon?\r\n";

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn failed_bob() -> DsnRecipient {
        DsnRecipient {
            original_recipient: Some("rfc822;bob@example.net".into()),
            final_recipient: "bob@example.net".into(),
            action: DsnAction::Failed,
            status: (5, 1, 1),
            remote_mta: Some("mx.example.net".into()),
            diagnostic: Some("550 5.1.1 <bob@example.net>: user unknown".into()),
            last_attempt: at(1_800_000_100),
            will_retry_until: None,
        }
    }

    fn delayed_carol() -> DsnRecipient {
        DsnRecipient {
            original_recipient: None,
            final_recipient: "carol@example.com".into(),
            action: DsnAction::Delayed,
            status: (4, 4, 1),
            remote_mta: Some("dns;mx.example.com".into()),
            diagnostic: Some("smtp; 421 4.4.1 try again later".into()),
            last_attempt: at(1_800_003_600),
            will_retry_until: Some(at(1_800_432_000)),
        }
    }

    fn delivered_dave() -> DsnRecipient {
        DsnRecipient {
            original_recipient: Some("rfc822;dave@example.com".into()),
            final_recipient: "dave@example.com".into(),
            action: DsnAction::Delivered,
            status: (2, 0, 0),
            remote_mta: Some("mx.example.com".into()),
            diagnostic: Some("250 2.0.0 Ok: queued as 4XYZ".into()),
            last_attempt: at(1_800_000_005),
            will_retry_until: None,
        }
    }

    fn input<'a>(
        kind: DsnKind,
        recipients: &'a [DsnRecipient],
        original: &'a [u8],
        return_content: ReturnContent,
    ) -> DsnInput<'a> {
        DsnInput {
            kind,
            reporting_mta: "mta.example.com",
            from: "MAILER-DAEMON@mta.example.com",
            to: "alice@example.org",
            envid: Some("QQ314159"),
            arrival_date: at(1_800_000_000),
            date: at(1_800_000_200),
            message_id: "<dsn.0001@mta.example.com>",
            boundary: BOUNDARY,
            recipients,
            original,
            return_content,
            max_returned_body: 256 * 1024,
        }
    }

    /// The parts of a parsed report: (content type, content bytes), children of the root.
    fn parts(raw: &[u8]) -> Vec<(String, Vec<u8>)> {
        let message = MessageParser::default().parse(raw).expect("parses");
        let root = message.root_part();
        let ids = root.sub_parts().expect("multipart").to_vec();
        ids.iter()
            .map(|id| {
                let part = &message.parts[*id as usize];
                let ct = part.content_type().expect("part content type");
                let full = format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or(""));
                (full, part.contents().to_vec())
            })
            .collect()
    }

    /// The delivery-status body split into blocks, each parsed by mail-parser as a header
    /// section: (name, unfolded value) per field.
    fn status_blocks(body: &[u8]) -> Vec<Vec<(String, String)>> {
        let text = std::str::from_utf8(body).expect("ascii");
        text.split("\r\n\r\n")
            .filter(|block| !block.trim().is_empty())
            .map(|block| {
                let block = format!("{}\r\n\r\n", block.trim_end());
                let parsed = MessageParser::default()
                    .parse_headers(block.as_bytes())
                    .expect("block parses");
                parsed.parts[0]
                    .headers
                    .iter()
                    .map(|h| {
                        let raw = &block[h.offset_start() as usize..h.offset_end() as usize];
                        (
                            h.name().to_owned(),
                            raw.replace("\r\n", "").trim().to_owned(),
                        )
                    })
                    .collect()
            })
            .collect()
    }

    fn field<'a>(block: &'a [(String, String)], name: &str) -> Option<&'a str> {
        block
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The explanation with the wrapped lines of each paragraph joined again.
    fn unwrap_text(text: &str) -> String {
        text.split("\r\n\r\n")
            .map(|p| p.split("\r\n").map(str::trim).collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join("\n\n")
    }

    fn assert_well_formed(raw: &[u8]) {
        for (i, line) in raw.split(|b| *b == b'\n').enumerate() {
            let body = line.strip_suffix(b"\r").unwrap_or(line);
            assert!(body.len() <= MAX_LINE, "line {i} is {} octets", body.len());
            assert!(!body.contains(&b'\r'), "bare CR on line {i}");
        }
        for (i, w) in raw.windows(2).enumerate() {
            if w[1] == b'\n' {
                assert_eq!(w[0], b'\r', "bare LF at {i}");
            }
        }
        assert!(raw.ends_with(b"\r\n"));
    }

    #[test]
    fn failure_has_the_top_level_headers_and_three_parts() {
        let rcpts = [failed_bob()];
        let raw = render(&input(
            DsnKind::Failure,
            &rcpts,
            ORIGINAL,
            ReturnContent::Full,
        ));
        assert_well_formed(&raw);
        let m = MessageParser::default().parse(&raw).expect("parses");
        assert_eq!(m.subject(), Some("Undelivered Mail Returned to Sender"));
        let from = m.from().and_then(|a| a.first()).expect("from");
        assert_eq!(from.address(), Some("MAILER-DAEMON@mta.example.com"));
        assert_eq!(from.name(), Some("Mail Delivery System"));
        let to = m.to().and_then(|a| a.first()).expect("to");
        assert_eq!(to.address(), Some("alice@example.org"));
        assert_eq!(m.message_id(), Some("dsn.0001@mta.example.com"));
        assert_eq!(
            m.date().map(|d| d.to_timestamp()),
            Some(1_800_000_200),
            "date"
        );
        assert_eq!(
            m.header_raw("Auto-Submitted").map(str::trim),
            Some("auto-replied")
        );
        assert_eq!(m.header_raw("MIME-Version").map(str::trim), Some("1.0"));
        let ct = m.content_type().expect("content type");
        assert_eq!(ct.ctype(), "multipart");
        assert_eq!(ct.subtype(), Some("report"));
        assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
        assert_eq!(ct.attribute("boundary"), Some(BOUNDARY));

        let p = parts(&raw);
        let types: Vec<&str> = p.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            types,
            ["text/plain", "message/delivery-status", "message/rfc822"]
        );
        let text = String::from_utf8(p[0].1.clone()).expect("utf-8");
        assert!(text.contains("<bob@example.net>: delivery failed (status 5.1.1)"));
        assert!(text.contains("Remote server: mx.example.net"));
        assert!(text.contains("Reply: 550 5.1.1 <bob@example.net>: user unknown"));
        assert!(text.contains("A copy of the original message is attached."));
        assert_eq!(p[2].1, ORIGINAL, "the original comes back byte for byte");

        let message = m
            .parts
            .iter()
            .find_map(|part| part.message())
            .expect("nested");
        assert_eq!(message.subject(), Some("Lunch"));
        assert!(is_dsn(&raw));
    }

    #[test]
    fn failure_delivery_status_fields() {
        let rcpts = [failed_bob(), delivered_dave()];
        let raw = render(&input(
            DsnKind::Failure,
            &rcpts,
            ORIGINAL,
            ReturnContent::Full,
        ));
        let p = parts(&raw);
        let blocks = status_blocks(&p[1].1);
        assert_eq!(blocks.len(), 3, "per-message block and two recipients");
        let msg = &blocks[0];
        assert_eq!(field(msg, "Original-Envelope-Id"), Some("QQ314159"));
        assert_eq!(field(msg, "Reporting-MTA"), Some("dns;mta.example.com"));
        assert_eq!(
            field(msg, "Arrival-Date"),
            Some("Fri, 15 Jan 2027 08:00:00 +0000")
        );

        let bob = &blocks[1];
        assert_eq!(
            field(bob, "Original-Recipient"),
            Some("rfc822;bob@example.net")
        );
        assert_eq!(
            field(bob, "Final-Recipient"),
            Some("rfc822;bob@example.net")
        );
        assert_eq!(field(bob, "Action"), Some("failed"));
        assert_eq!(field(bob, "Status"), Some("5.1.1"));
        assert_eq!(field(bob, "Remote-MTA"), Some("dns;mx.example.net"));
        assert_eq!(
            field(bob, "Diagnostic-Code"),
            Some("smtp; 550 5.1.1 <bob@example.net>: user unknown")
        );
        assert_eq!(
            field(bob, "Last-Attempt-Date"),
            Some("Fri, 15 Jan 2027 08:01:40 +0000")
        );
        assert_eq!(field(bob, "Will-Retry-Until"), None);

        let dave = &blocks[2];
        assert_eq!(field(dave, "Action"), Some("delivered"));
        assert_eq!(field(dave, "Status"), Some("2.0.0"));
        assert_eq!(
            field(dave, "Diagnostic-Code"),
            Some("smtp; 250 2.0.0 Ok: queued as 4XYZ")
        );
    }

    #[test]
    fn delay_reports_retry_deadline_and_returns_headers_only() {
        let rcpts = [delayed_carol()];
        // Full is asked for, but nothing failed: RFC 3461 §4.3 says headers only.
        let raw = render(&input(
            DsnKind::Delay,
            &rcpts,
            ORIGINAL,
            ReturnContent::Full,
        ));
        assert_well_formed(&raw);
        let m = MessageParser::default().parse(&raw).expect("parses");
        assert_eq!(m.subject(), Some("Delayed Mail (still being retried)"));
        let p = parts(&raw);
        let types: Vec<&str> = p.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            types,
            [
                "text/plain",
                "message/delivery-status",
                "text/rfc822-headers"
            ]
        );
        assert_eq!(p[2].1, header_section(ORIGINAL));
        let blocks = status_blocks(&p[1].1);
        let carol = &blocks[1];
        assert_eq!(field(carol, "Original-Recipient"), None);
        assert_eq!(field(carol, "Action"), Some("delayed"));
        assert_eq!(field(carol, "Status"), Some("4.4.1"));
        assert_eq!(field(carol, "Remote-MTA"), Some("dns;mx.example.com"));
        assert_eq!(
            field(carol, "Diagnostic-Code"),
            Some("smtp; 421 4.4.1 try again later")
        );
        assert_eq!(
            field(carol, "Will-Retry-Until"),
            Some("Wed, 20 Jan 2027 08:00:00 +0000")
        );
        let text = String::from_utf8(p[0].1.clone()).expect("utf-8");
        assert!(text.contains("<carol@example.com>: delivery delayed (status 4.4.1)"));
        assert!(text.contains("Retries go on until: Wed, 20 Jan 2027 08:00:00 +0000"));
        assert!(text.contains("Reply: 421 4.4.1 try again later"), "{text}");
        assert!(unwrap_text(&text).contains("The original message is not returned; its headers"));
    }

    #[test]
    fn will_retry_until_only_for_delayed_recipients() {
        let mut bob = failed_bob();
        bob.will_retry_until = Some(at(1_900_000_000));
        let rcpts = [bob];
        let raw = render(&input(
            DsnKind::Failure,
            &rcpts,
            ORIGINAL,
            ReturnContent::Full,
        ));
        assert!(!String::from_utf8_lossy(&raw).contains("Will-Retry-Until"));
    }

    #[test]
    fn success_report() {
        let rcpts = [delivered_dave()];
        let raw = render(&input(
            DsnKind::Success,
            &rcpts,
            ORIGINAL,
            ReturnContent::Headers,
        ));
        assert_well_formed(&raw);
        let m = MessageParser::default().parse(&raw).expect("parses");
        assert_eq!(m.subject(), Some("Successful Mail Delivery Report"));
        let p = parts(&raw);
        assert_eq!(p[2].0, "text/rfc822-headers");
        let blocks = status_blocks(&p[1].1);
        assert_eq!(field(&blocks[1], "Action"), Some("delivered"));
        assert_eq!(
            field(&blocks[1], "Final-Recipient"),
            Some("rfc822;dave@example.com")
        );
        let text = String::from_utf8(p[0].1.clone()).expect("utf-8");
        assert!(text.contains("<dave@example.com>: delivered (status 2.0.0)"));
    }

    #[test]
    fn relayed_action_and_typed_values_kept() {
        let mut r = delivered_dave();
        r.action = DsnAction::Relayed;
        r.remote_mta = Some("dns; relay.example.com".into());
        r.diagnostic = Some("X-Local; handed to legacy gateway".into());
        let rcpts = [r];
        let raw = render(&input(
            DsnKind::Success,
            &rcpts,
            ORIGINAL,
            ReturnContent::Headers,
        ));
        let p = parts(&raw);
        let blocks = status_blocks(&p[1].1);
        assert_eq!(field(&blocks[1], "Action"), Some("relayed"));
        assert_eq!(
            field(&blocks[1], "Remote-MTA"),
            Some("dns; relay.example.com")
        );
        assert_eq!(
            field(&blocks[1], "Diagnostic-Code"),
            Some("X-Local; handed to legacy gateway")
        );
        let text = String::from_utf8(p[0].1.clone()).expect("utf-8");
        assert!(text.contains("Remote server: relay.example.com"));
        assert!(text.contains("Reply: handed to legacy gateway"));
    }

    #[test]
    fn ret_hdrs_failure_returns_exactly_the_header_section() {
        let rcpts = [failed_bob()];
        let raw = render(&input(
            DsnKind::Failure,
            &rcpts,
            ORIGINAL,
            ReturnContent::Headers,
        ));
        let p = parts(&raw);
        assert_eq!(p[2].0, "text/rfc822-headers");
        assert_eq!(p[2].1, header_section(ORIGINAL));
        assert!(!String::from_utf8_lossy(&raw).contains("Shall we meet"));
    }

    fn big_original(body_len: usize) -> Vec<u8> {
        let mut m = header_section(ORIGINAL).to_vec();
        m.extend_from_slice(b"\r\n");
        while m.len() < body_len {
            m.extend_from_slice(b"0123456789012345678901234567890123456789\r\n");
        }
        m
    }

    #[test]
    fn over_the_cap_falls_back_to_headers_and_says_so() {
        let original = big_original(10_000);
        let rcpts = [failed_bob()];
        let mut i = input(DsnKind::Failure, &rcpts, &original, ReturnContent::Full);
        i.max_returned_body = 1024;
        let raw = render(&i);
        assert_well_formed(&raw);
        let p = parts(&raw);
        assert_eq!(p[2].0, "text/rfc822-headers");
        assert_eq!(p[2].1, header_section(ORIGINAL));
        let text = String::from_utf8(p[0].1.clone()).expect("utf-8");
        assert!(
            unwrap_text(&text).contains(&format!(
                "The original message is {} bytes, over the 1024-byte limit for returned \
                 messages, so its headers are attached.",
                original.len()
            )),
            "{text}"
        );
        assert!(raw.len() < 4096);
    }

    #[test]
    fn exactly_at_the_cap_is_returned_whole() {
        let rcpts = [failed_bob()];
        let mut i = input(DsnKind::Failure, &rcpts, ORIGINAL, ReturnContent::Full);
        i.max_returned_body = ORIGINAL.len();
        assert_eq!(parts(&render(&i))[2].0, "message/rfc822");
        i.max_returned_body = ORIGINAL.len() - 1;
        assert_eq!(parts(&render(&i))[2].0, "text/rfc822-headers");
    }

    #[test]
    fn headers_over_the_cap_are_cut_after_a_whole_field() {
        let rcpts = [failed_bob()];
        let mut i = input(DsnKind::Failure, &rcpts, ORIGINAL, ReturnContent::Full);
        // Room for From and To (33 + 21 octets) but not Subject (16 more).
        i.max_returned_body = 60;
        let raw = render(&i);
        let p = parts(&raw);
        assert_eq!(p[2].0, "text/rfc822-headers");
        assert_eq!(
            p[2].1,
            b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\n"
        );
        let text = String::from_utf8(p[0].1.clone()).expect("utf-8");
        assert!(
            unwrap_text(&text).contains("the rest did not fit"),
            "{text}"
        );
    }

    #[test]
    fn folded_header_fields_are_kept_or_dropped_whole() {
        let section = b"A: 1\r\nB: 2\r\n 3\r\nC: 4\r\n";
        assert_eq!(whole_fields_prefix(section, 100), &section[..]);
        assert_eq!(whole_fields_prefix(section, 15), b"A: 1\r\n");
        assert_eq!(whole_fields_prefix(section, 17), b"A: 1\r\nB: 2\r\n 3\r\n");
        assert_eq!(whole_fields_prefix(section, 3), b"");
    }

    #[test]
    fn zero_cap_returns_nothing() {
        let rcpts = [failed_bob()];
        let mut i = input(DsnKind::Failure, &rcpts, ORIGINAL, ReturnContent::Full);
        i.max_returned_body = 0;
        let raw = render(&i);
        assert_well_formed(&raw);
        let p = parts(&raw);
        assert_eq!(p.len(), 2);
        let text = String::from_utf8(p[0].1.clone()).expect("utf-8");
        assert!(
            unwrap_text(&text).contains("not even its headers could be attached"),
            "{text}"
        );
    }

    #[test]
    fn untransportable_originals_fall_back_to_headers() {
        let long_line = [
            header_section(ORIGINAL),
            b"\r\n",
            &[b'x'; 1200][..],
            b"\r\n",
        ]
        .concat();
        let bare_lf = [header_section(ORIGINAL), b"\r\nline one\nline two\r\n"].concat();
        let bare_cr = [header_section(ORIGINAL), b"\r\nline one\rline two\r\n"].concat();
        let nul = [header_section(ORIGINAL), b"\r\nline\0one\r\n"].concat();
        for original in [long_line, bare_lf, bare_cr, nul] {
            let rcpts = [failed_bob()];
            let raw = render(&input(
                DsnKind::Failure,
                &rcpts,
                &original,
                ReturnContent::Full,
            ));
            assert_well_formed(&raw);
            let p = parts(&raw);
            assert_eq!(p.len(), 3);
            assert_eq!(p[2].0, "text/rfc822-headers");
            assert_eq!(p[2].1, header_section(ORIGINAL));
            let text = String::from_utf8(p[0].1.clone()).expect("utf-8");
            assert!(
                unwrap_text(&text).contains("cannot be returned unchanged"),
                "{text}"
            );
        }
    }

    #[test]
    fn boundary_in_the_content_lengthens_the_boundary() {
        // The caller's boundary at a line start, mid-line, and followed by every boundary
        // character, so that one appended character cannot avoid it.
        let mut original = format!(
            "Subject: hi\r\n--{BOUNDARY}--: trick\r\n\r\n--{BOUNDARY}\r\nContent-Type: \
             text/html\r\n\r\nsee x--{BOUNDARY} here\r\n"
        );
        for c in BCHARS {
            original.push_str(&format!("--{BOUNDARY}{}\r\n", char::from(*c)));
        }
        let rcpts = [failed_bob()];
        let raw = render(&input(
            DsnKind::Failure,
            &rcpts,
            original.as_bytes(),
            ReturnContent::Full,
        ));
        assert_well_formed(&raw);
        let m = MessageParser::default().parse(&raw).expect("parses");
        let boundary = m
            .content_type()
            .and_then(|ct| ct.attribute("boundary"))
            .expect("boundary")
            .to_owned();
        assert!(boundary.starts_with(BOUNDARY));
        assert_eq!(boundary.len(), BOUNDARY.len() + 2, "{boundary}");
        assert!(!original.contains(&format!("--{boundary}")));
        let p = parts(&raw);
        assert_eq!(p.len(), 3);
        assert_eq!(p[2].0, "message/rfc822");
        assert_eq!(
            p[2].1,
            original.as_bytes(),
            "the original comes back unchanged"
        );
    }

    #[test]
    fn a_long_colliding_boundary_is_shortened_first() {
        let long = "b".repeat(70);
        let original = format!("Subject: x\r\n\r\n--{long}\r\n");
        let got = collision_free_boundary(long.clone(), &[original.as_bytes()]);
        assert!(got.len() <= MAX_BOUNDARY);
        assert!(!original.contains(&format!("--{got}")), "{got}");
        assert_eq!(collision_free_boundary(long.clone(), &[b"no clash"]), long);
    }

    #[test]
    fn original_without_final_crlf_gets_one() {
        let original = b"Subject: x\r\n\r\nno newline";
        let rcpts = [failed_bob()];
        let raw = render(&input(
            DsnKind::Failure,
            &rcpts,
            original,
            ReturnContent::Full,
        ));
        assert_well_formed(&raw);
        let p = parts(&raw);
        assert_eq!(p[2].1, b"Subject: x\r\n\r\nno newline\r\n");
    }

    #[test]
    fn eight_bit_original_is_labelled() {
        let original = "Subject: caf\u{e9}\r\n\r\nna\u{ef}ve\r\n".as_bytes();
        let rcpts = [failed_bob()];
        let raw = render(&input(
            DsnKind::Failure,
            &rcpts,
            original,
            ReturnContent::Full,
        ));
        assert_well_formed(&raw);
        let text = String::from_utf8_lossy(&raw);
        assert!(text.contains("Content-Type: message/global\r\n"));
        assert_eq!(
            text.matches("Content-Transfer-Encoding: 8bit\r\n").count(),
            2
        );
        let raw = render(&input(
            DsnKind::Failure,
            &rcpts,
            original,
            ReturnContent::Headers,
        ));
        let text = String::from_utf8_lossy(&raw);
        assert!(text.contains("Content-Type: message/global-headers\r\n"));
        let ascii_raw = render(&input(
            DsnKind::Failure,
            &rcpts,
            ORIGINAL,
            ReturnContent::Full,
        ));
        assert!(ascii_raw.is_ascii());
        assert!(!String::from_utf8_lossy(&ascii_raw).contains("Content-Transfer-Encoding"));
    }

    const INJECTION: &str = "550 no\r\nX-Injected: yes\r\n\r\n--=_dsn_0001\r\n\
Content-Type: text/html\r\n\r\n<b>boo</b>\n--=_dsn_0001--\rX-Bare-CR: 1";

    #[test]
    fn diagnostic_and_addresses_cannot_inject_headers_or_parts() {
        let mut r = failed_bob();
        r.diagnostic = Some(INJECTION.into());
        r.final_recipient = "bob@example.net\r\nX-Injected: yes".into();
        r.original_recipient = Some("rfc822;bob@example.net\r\nX-Injected: yes".into());
        r.remote_mta = Some("mx.example.net\r\nX-Injected: yes".into());
        let rcpts = [r];
        let mut i = input(DsnKind::Failure, &rcpts, ORIGINAL, ReturnContent::Full);
        i.to = "alice@example.org>\r\nX-Injected: yes\r\n\r\n--=_dsn_0001";
        i.envid = Some("id\r\nX-Injected: yes");
        i.reporting_mta = "mta.example.com\r\n--=_dsn_0001\r\nX-Injected: yes";
        i.message_id = "<a@b>\r\nX-Injected: yes";
        let raw = render(&i);
        assert_well_formed(&raw);

        let m = MessageParser::default().parse(&raw).expect("parses");
        let boundary = m
            .content_type()
            .and_then(|ct| ct.attribute("boundary"))
            .expect("boundary")
            .to_owned();
        assert_ne!(
            boundary, BOUNDARY,
            "the inputs contain the caller's boundary"
        );
        let lines: Vec<&[u8]> = raw.split(|b| *b == b'\n').collect();
        for line in &lines {
            assert!(
                !line.starts_with(b"X-Injected"),
                "{:?}",
                String::from_utf8_lossy(line)
            );
            assert!(!line.starts_with(b"X-Bare-CR"));
            assert!(!line.starts_with(b"Content-Type: text/html"));
        }
        let delimiters = lines
            .iter()
            .filter(|l| l.starts_with(format!("--{boundary}").as_bytes()))
            .count();
        assert_eq!(delimiters, 4, "three parts and the close delimiter");
        let anywhere = String::from_utf8_lossy(&raw)
            .matches(&format!("--{boundary}"))
            .count();
        assert_eq!(anywhere, 4, "the delimiter occurs only as a delimiter");

        for part in &m.parts {
            assert!(part.headers.iter().all(|h| h.name() != "X-Injected"));
        }
        let p = parts(&raw);
        assert_eq!(p.len(), 3);
        let blocks = status_blocks(&p[1].1);
        assert_eq!(blocks.len(), 2, "one per-message and one recipient block");
        for block in &blocks {
            assert!(block.iter().all(|(n, _)| n != "X-Injected"));
        }
        let bob = &blocks[1];
        assert_eq!(
            field(bob, "Diagnostic-Code"),
            Some(
                "smtp; 550 no X-Injected: yes --=_dsn_0001 Content-Type: text/html \
                 <b>boo</b> --=_dsn_0001-- X-Bare-CR: 1"
            )
        );
        assert_eq!(
            field(bob, "Final-Recipient"),
            Some("utf-8;bob@example.net\\x{D}\\x{A}X-Injected:\\x{20}yes")
        );
        assert_eq!(
            field(bob, "Original-Recipient"),
            Some("rfc822;bob@example.net+0D+0AX-Injected:+20yes")
        );
        assert_eq!(
            field(&blocks[0], "Original-Envelope-Id"),
            Some("id+0D+0AX-Injected:+20yes")
        );
        assert_eq!(p[2].1, ORIGINAL);
    }

    #[test]
    fn non_ascii_recipient_uses_the_utf8_address_type() {
        let mut r = failed_bob();
        r.final_recipient = "j\u{f6}rg+tag@b\u{fc}cher.example".into();
        r.diagnostic = Some("550 unbekannter Empf\u{e4}nger".into());
        let rcpts = [r];
        let raw = render(&input(
            DsnKind::Failure,
            &rcpts,
            ORIGINAL,
            ReturnContent::Full,
        ));
        assert_well_formed(&raw);
        let p = parts(&raw);
        assert!(p[1].1.is_ascii(), "the delivery-status part stays ASCII");
        let blocks = status_blocks(&p[1].1);
        assert_eq!(
            field(&blocks[1], "Final-Recipient"),
            Some("utf-8;j\\x{F6}rg\\x{2B}tag@b\\x{FC}cher.example")
        );
        assert_eq!(
            field(&blocks[1], "Diagnostic-Code"),
            Some("smtp; 550 unbekannter Empf?nger")
        );
        let text = String::from_utf8(p[0].1.clone()).expect("utf-8");
        assert!(text.contains("<j\u{f6}rg+tag@b\u{fc}cher.example>: delivery failed"));
        let raw_text = String::from_utf8_lossy(&raw);
        assert!(raw_text.contains("Content-Type: text/plain; charset=utf-8\r\n"));
    }

    #[test]
    fn long_diagnostics_are_folded_and_unfold_to_the_same_text() {
        let words: Vec<String> = (0..400).map(|i| format!("word{i}")).collect();
        let long = format!("550 5.7.1 {}", words.join(" "));
        let unbroken = format!("550 {}", "x".repeat(3000));
        for diagnostic in [long.clone(), unbroken] {
            let mut r = failed_bob();
            r.diagnostic = Some(diagnostic.clone());
            let rcpts = [r];
            let raw = render(&input(
                DsnKind::Failure,
                &rcpts,
                ORIGINAL,
                ReturnContent::Full,
            ));
            assert_well_formed(&raw);
            let p = parts(&raw);
            let blocks = status_blocks(&p[1].1);
            let value = field(&blocks[1], "Diagnostic-Code").expect("diagnostic");
            if diagnostic == long {
                assert_eq!(value, format!("smtp; {long}"));
            } else {
                // Broken every 900 octets: unfolding adds a space at each break.
                assert_eq!(
                    value.replace(' ', ""),
                    format!("smtp;{diagnostic}").replace(' ', "")
                );
            }
        }
    }

    #[test]
    fn huge_diagnostic_is_capped() {
        let mut r = failed_bob();
        r.diagnostic = Some("a ".repeat(100_000));
        let rcpts = [r];
        let raw = render(&input(
            DsnKind::Failure,
            &rcpts,
            ORIGINAL,
            ReturnContent::Full,
        ));
        assert_well_formed(&raw);
        assert!(raw.len() < 3 * MAX_TEXT + 4096, "{} octets", raw.len());
    }

    #[test]
    fn bad_boundaries_are_cleaned() {
        assert_eq!(clean_boundary("a b\"c\r\nd"), "abcd");
        assert_eq!(clean_boundary("\"\" "), FALLBACK_BOUNDARY);
        assert_eq!(clean_boundary(&"b".repeat(100)).len(), 70);
        let rcpts = [failed_bob()];
        let mut i = input(DsnKind::Failure, &rcpts, ORIGINAL, ReturnContent::Full);
        i.boundary = "x\r\ny";
        let p = parts(&render(&i));
        assert_eq!(p.len(), 3);
    }

    #[test]
    fn dates_use_a_numeric_zone_and_never_panic() {
        assert_eq!(rfc5322::date(UNIX_EPOCH), "Thu, 01 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322::date(at(1_800_000_000)),
            "Fri, 15 Jan 2027 08:00:00 +0000"
        );
        assert_eq!(
            rfc5322::date(UNIX_EPOCH - Duration::from_secs(5)),
            "Thu, 01 Jan 1970 00:00:00 +0000"
        );
        assert_eq!(
            rfc5322::date(at(400_000_000_000)),
            "Fri, 31 Dec 9999 23:59:59 +0000"
        );
    }

    #[test]
    fn return_content_defaults() {
        use DsnKind::*;
        use ReturnContent::*;
        let table = [
            (Failure, None, Full),
            (Failure, Some(Full), Full),
            (Failure, Some(Headers), Headers),
            (Delay, None, Headers),
            (Delay, Some(Full), Headers),
            (Success, Some(Full), Headers),
            (Success, None, Headers),
        ];
        for (kind, ret, want) in table {
            assert_eq!(
                ReturnContent::for_notification(kind, ret),
                want,
                "{kind:?} {ret:?}"
            );
        }
    }

    #[test]
    fn is_dsn_table() {
        let table: &[(&[u8], bool)] = &[
            (
                b"Content-Type: multipart/report; report-type=delivery-status;\r\n boundary=x\r\n",
                true,
            ),
            (
                b"content-type: Multipart/Report; boundary=\"x\";\
                  Report-Type=\"Delivery-Status\"\r\n",
                true,
            ),
            (
                b"Subject: a\r\nContent-Type: multipart/report;\r\n\
                  \treport-type=delivery-status\r\n\r\nbody",
                true,
            ),
            (
                b"Content-Type: multipart/report (a report); report-type = delivery-status\n",
                true,
            ),
            (
                b"Content-Type: multipart/report; report-type=global-delivery-status\r\n",
                true,
            ),
            (
                b"Content-Type: multipart/report; report-type=disposition-notification\r\n",
                false,
            ),
            (
                b"Content-Type: multipart/mixed; report-type=delivery-status\r\n",
                false,
            ),
            (b"Content-Type: multipart/report\r\n", false),
            (
                b"Content-Type: multipart/report; x=\"report-type=delivery-status\"\r\n",
                false,
            ),
            (
                b"X-Content-Type: multipart/report; report-type=delivery-status\r\n",
                false,
            ),
            (
                b"Subject: hi\r\n\r\nContent-Type: multipart/report; \
                  report-type=delivery-status\r\n",
                false,
            ),
            (b"Subject: hi\r\n", false),
            (b"", false),
            (b"\xff\xfe: \x00\r\n Content-Type", false),
        ];
        for (headers, want) in table {
            assert_eq!(
                is_dsn(headers),
                *want,
                "{:?}",
                String::from_utf8_lossy(headers)
            );
        }
    }

    #[test]
    fn snapshot_small_failure() {
        let rcpts = [DsnRecipient {
            original_recipient: Some("rfc822;bob@example.net".into()),
            final_recipient: "bob@example.net".into(),
            action: DsnAction::Failed,
            status: (5, 1, 1),
            remote_mta: Some("mx.example.net".into()),
            diagnostic: Some("550 5.1.1 user unknown".into()),
            last_attempt: at(1_800_000_100),
            will_retry_until: None,
        }];
        let original = b"Subject: hi\r\n\r\nhello\r\n";
        let mut i = input(DsnKind::Failure, &rcpts, original, ReturnContent::Full);
        i.envid = None;
        let raw = render(&i);
        let want = "\
From: Mail Delivery System <MAILER-DAEMON@mta.example.com>\r\n\
To: <alice@example.org>\r\n\
Subject: Undelivered Mail Returned to Sender\r\n\
Date: Fri, 15 Jan 2027 08:03:20 +0000\r\n\
Message-ID: <dsn.0001@mta.example.com>\r\n\
MIME-Version: 1.0\r\n\
Auto-Submitted: auto-replied\r\n\
Content-Type: multipart/report; report-type=delivery-status;\r\n \
boundary=\"=_dsn_0001\"\r\n\
\r\n\
This is a MIME-encapsulated message.\r\n\
\r\n\
--=_dsn_0001\r\n\
Content-Type: text/plain; charset=us-ascii\r\n\
Content-Description: Notification\r\n\
\r\n\
This is the mail system at host mta.example.com.\r\n\
\r\n\
Your message could not be delivered to one or more recipients. The mail\r\n\
system has given up on them; the details are below.\r\n\
\r\n\
A copy of the original message is attached.\r\n\
\r\n\
<bob@example.net>: delivery failed (status 5.1.1)\r\n    \
Remote server: mx.example.net\r\n    \
Reply: 550 5.1.1 user unknown\r\n\
\r\n\
--=_dsn_0001\r\n\
Content-Type: message/delivery-status\r\n\
Content-Description: Delivery report\r\n\
\r\n\
Reporting-MTA: dns;mta.example.com\r\n\
Arrival-Date: Fri, 15 Jan 2027 08:00:00 +0000\r\n\
\r\n\
Original-Recipient: rfc822;bob@example.net\r\n\
Final-Recipient: rfc822;bob@example.net\r\n\
Action: failed\r\n\
Status: 5.1.1\r\n\
Remote-MTA: dns;mx.example.net\r\n\
Diagnostic-Code: smtp; 550 5.1.1 user unknown\r\n\
Last-Attempt-Date: Fri, 15 Jan 2027 08:01:40 +0000\r\n\
\r\n\
--=_dsn_0001\r\n\
Content-Type: message/rfc822\r\n\
Content-Description: Original message\r\n\
\r\n\
Subject: hi\r\n\
\r\n\
hello\r\n\
\r\n\
--=_dsn_0001--\r\n";
        assert_eq!(String::from_utf8_lossy(&raw), want);
    }

    /// Peer text: arbitrary strings, or strings built from the pieces an attack would use.
    fn peer_text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "(--=_dsn_0001|--|X-Injected: y|\r\n|\r|\n|\t|;|\"|[a-z ]|\u{e9}|\u{2028}){0,40}",
        ]
    }

    /// An original message: arbitrary octets, or CRLF text with boundary-like lines.
    fn original_message() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..600),
            "(Subject: x\r\n|--=_dsn_0001|--|\r\n|\n|[a-z: ]{1,30}|\u{fc}){0,40}"
                .prop_map(String::into_bytes),
        ]
    }

    proptest! {
        #[test]
        fn any_peer_text_keeps_the_structure(
            diagnostic in peer_text(),
            address in peer_text(),
            orcpt in peer_text(),
            envid in peer_text(),
            original in original_message(),
            cap in 0usize..700,
        ) {
            let mut r = failed_bob();
            r.diagnostic = Some(diagnostic);
            r.final_recipient = address.clone();
            r.original_recipient = Some(orcpt);
            r.remote_mta = Some(address.clone());
            let rcpts = [r, delayed_carol()];
            let mut i = input(DsnKind::Failure, &rcpts, &original, ReturnContent::Full);
            i.to = &address;
            i.envid = Some(&envid);
            i.max_returned_body = cap;
            let raw = render(&i);
            assert_well_formed(&raw);
            let m = MessageParser::default().parse(&raw).expect("parses");
            let boundary = m
                .content_type()
                .and_then(|ct| ct.attribute("boundary"))
                .expect("boundary")
                .to_owned();
            let p = parts(&raw);
            prop_assert!(p.len() == 2 || p.len() == 3);
            let delimiters = String::from_utf8_lossy(&raw)
                .matches(&format!("--{boundary}"))
                .count();
            prop_assert_eq!(delimiters, p.len() + 1);
            prop_assert_eq!(&p[0].0, "text/plain");
            prop_assert_eq!(&p[1].0, "message/delivery-status");
            prop_assert!(p[1].1.is_ascii());
            let blocks = status_blocks(&p[1].1);
            prop_assert_eq!(blocks.len(), 3);
            prop_assert_eq!(field(&blocks[1], "Action"), Some("failed"));
            prop_assert_eq!(field(&blocks[2], "Action"), Some("delayed"));
            for block in &blocks {
                prop_assert!(block.iter().all(|(n, _)| !n.eq_ignore_ascii_case("X-Injected")));
            }
            if p.len() == 3 {
                // The renderer closes a last line that has no line ending with a CRLF, and
                // mail-parser counts the CRLF before the closing delimiter as content: up to 4
                // octets beyond what was returned (regression: proptest-regressions/bounce/dsn.txt).
                prop_assert!(p[2].1.len() <= cap + 4, "returned {} octets", p[2].1.len());
            }
            prop_assert!(is_dsn(&raw));
        }
    }
}
