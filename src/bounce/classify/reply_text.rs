//! Reading a raw reply line (`550-5.1.1 ...`) or a code-less failure description, for
//! `Classifier::classify_line`.

use std::borrow::Cow;

use super::{ConnFailure, MAX_MATCHED_TEXT};
use crate::smtp::EnhancedCode;

/// A reply line split into its parts.
pub(super) struct ParsedReply<'a> {
    pub(super) code: Option<u16>,
    pub(super) enhanced: Option<(u8, u16, u16)>,
    /// The text after the codes; owned only when several lines were joined.
    pub(super) text: Cow<'a, str>,
}

/// Splits `550-5.1.1 text` into code, enhanced code and text. Lines after the first (for a
/// multi-line reply) lose their own codes and are joined with spaces.
pub(super) fn parse_reply(raw: &str) -> ParsedReply<'_> {
    let mut lines = raw.lines().map(str::trim).filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("");
    let (code, rest) = split_code(first);
    let (enhanced, text) = match code {
        Some(_) => split_enhanced(rest),
        None => (None, rest),
    };
    let mut joined: Cow<'_, str> = Cow::Borrowed(text);
    for line in lines {
        let text = match split_code(line) {
            (Some(_), rest) => split_enhanced(rest).1,
            (None, rest) => rest,
        };
        if text.is_empty() {
            continue;
        }
        let owned = joined.to_mut();
        if !owned.is_empty() {
            owned.push(' ');
        }
        owned.push_str(text);
        if owned.len() > MAX_MATCHED_TEXT {
            break;
        }
    }
    ParsedReply {
        code,
        enhanced,
        text: joined,
    }
}

/// RFC 5321 §4.2: a reply line is three digits (the first 2-5), then a space, a hyphen
/// (more lines follow) or the end of the line.
pub(super) fn split_code(line: &str) -> (Option<u16>, &str) {
    let bytes = line.as_bytes();
    let is_code = bytes.len() >= 3
        && (b'2'..=b'5').contains(&bytes[0])
        && bytes[1].is_ascii_digit()
        && bytes[2].is_ascii_digit()
        && matches!(bytes.get(3), None | Some(b' ' | b'-' | b'\t'));
    if !is_code {
        return (None, line);
    }
    let code = bytes[..3]
        .iter()
        .fold(0u16, |acc, &d| acc * 10 + u16::from(d - b'0'));
    (Some(code), line.get(4..).unwrap_or("").trim_start())
}

/// RFC 3463 §2 / RFC 2034 §4: an enhanced code `class.subject.detail` (class 2, 4 or 5,
/// subject and detail of one to three digits) may start the text. Cisco and qmail write it
/// with a leading `#`. Anything that does not end at a space or punctuation (such as
/// Yahoo's `4.16.55.1`) is not an enhanced code.
pub(super) fn split_enhanced(text: &str) -> (Option<(u8, u16, u16)>, &str) {
    let candidate = text.strip_prefix('#').unwrap_or(text);
    let end = candidate
        .find(|c: char| c.is_whitespace() || matches!(c, ':' | ';' | ',' | ')'))
        .unwrap_or(candidate.len());
    let parsed = EnhancedCode::parse(&candidate[..end]).map(|e| (e.class, e.subject, e.detail));
    match parsed {
        Some(code) => {
            let rest = &candidate[end..];
            let rest = rest.strip_prefix([':', ';', ',', ')']).unwrap_or(rest);
            (Some(code), rest.trim_start())
        }
        None => (None, text),
    }
}

/// One to three ASCII digits.
pub(super) fn number(s: &str) -> Option<u16> {
    if s.is_empty() || s.len() > 3 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Reads a code-less line as a connection-level failure description, in the words of
/// resolvers, kernels and MTA logs. More specific descriptions are tested first ("DNS
/// lookup timed out" is a DNS timeout, not a connection timeout).
pub(super) fn recognize_connection_failure(text: &str) -> Option<ConnFailure> {
    let text = text.to_ascii_lowercase();
    let has = |needles: &[&str]| needles.iter().any(|n| text.contains(n));
    let dns = has(&["dns", "name service", "resolv", "lookup", "mx record"]);
    if has(&["null mx", "nullmx"]) {
        return Some(ConnFailure::DnsNullMx);
    }
    if has(&[
        "servfail",
        "server failure",
        "try again",
        "temporary failure in name",
    ]) && dns
        || has(&[
            "servfail",
            "temporary failure in name resolution",
            "eai_again",
        ])
    {
        return Some(ConnFailure::DnsServFail);
    }
    if dns && has(&["timeout", "timed out"]) {
        return Some(ConnFailure::DnsTimeout);
    }
    if has(&[
        "nxdomain",
        "non-existent domain",
        "nonexistent domain",
        "no such domain",
        "domain not found",
        "host not found",
        "domain does not exist",
    ]) {
        return Some(ConnFailure::DnsNxDomain);
    }
    if has(&[
        "no address",
        "no a record",
        "no aaaa",
        "nodata",
        "no a/aaaa",
    ]) {
        return Some(ConnFailure::DnsNoAddress);
    }
    if has(&["tls", "ssl", "handshake", "certificate", "starttls"]) {
        return Some(ConnFailure::Tls);
    }
    // An ICMP "unreachable" is refused before the connection opens, like a RST to SYN.
    if has(&["refused", "econnrefused", "unreachable", "no route to host"]) {
        return Some(ConnFailure::Refused);
    }
    if has(&["timed out", "timeout", "etimedout"]) {
        return Some(ConnFailure::Timeout);
    }
    if has(&[
        "reset",
        "broken pipe",
        "epipe",
        "connection closed",
        "lost connection",
        "unexpected eof",
        "connection aborted",
    ]) {
        return Some(ConnFailure::Reset);
    }
    if has(&[
        "protocol",
        "unexpected reply",
        "malformed",
        "garbled",
        "invalid response",
    ]) {
        return Some(ConnFailure::Protocol);
    }
    None
}

/// The first `MAX_MATCHED_TEXT` bytes of `text`, cut at a character boundary.
pub(super) fn clip(text: &str) -> &str {
    if text.len() <= MAX_MATCHED_TEXT {
        return text;
    }
    let mut end = MAX_MATCHED_TEXT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}
