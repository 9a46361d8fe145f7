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

use std::time::SystemTime;

use crate::rfc5322;

mod boundary;
mod content_type;
mod parts;
mod returned;
mod text;

use boundary::{clean_boundary, collision_free_boundary};
use content_type::{content_type_value, split_parameters};
use parts::{delivery_status, explanation};
use returned::choose_returned;
use text::{clean, fold};

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

#[cfg(test)]
mod tests;
