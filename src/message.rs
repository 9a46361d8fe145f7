//! Headers ringmta adds to an accepted message: Received (always), and Date and Message-ID for
//! authenticated submissions that lack them (RFC 6409 §8.2, §8.3). Pure functions: the caller
//! passes the time and the unique part of the Message-ID.

use std::fmt::Write as _;
use std::time::SystemTime;

use crate::smtp::{BodyType, Ret, ReversePath, Transaction};
use crate::spool::{BODY_7BIT, BODY_8BITMIME, MessageMeta, RecipientMeta};

/// Where the header section of `body` ends: the offset just past the blank line, or the whole
/// body when there is none (a message with no body part).
pub fn header_section(body: &[u8]) -> &[u8] {
    if body.starts_with(b"\r\n") {
        return &[];
    }
    match body.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => &body[..i + 2],
        None => body,
    }
}

/// Whether the header section has a field with this (lower-case) name.
pub fn has_header(headers: &[u8], name: &str) -> bool {
    headers.split(|b| *b == b'\n').any(|line| {
        line.len() > name.len()
            && line[name.len()] == b':'
            && line[..name.len()].eq_ignore_ascii_case(name.as_bytes())
    })
}

/// Builds the header lines ringmta prepends: a Received trace field and, for submissions,
/// the missing Date and Message-ID. `unique` makes the Message-ID unique (e.g. a counter mixed
/// with the time).
pub fn prepended_headers(t: &Transaction, hostname: &str, now: SystemTime, unique: u64) -> Vec<u8> {
    let date = rfc5322_date(now);
    let mut h = String::with_capacity(256);
    let with = match (t.esmtp, t.tls.is_some(), t.auth_user.is_some()) {
        (false, _, _) => "SMTP",
        (true, false, false) => "ESMTP",
        (true, true, false) => "ESMTPS",
        (true, false, true) => "ESMTPA",
        (true, true, true) => "ESMTPSA",
    };
    // RFC 5321 §4.4: "from" names the HELO argument and the address the connection came from.
    let _ = write!(
        h,
        "Received: from {} ([{}])\r\n\tby {} (ringmta) with {}",
        sanitize(&t.helo),
        t.peer.ip(),
        hostname,
        with
    );
    if let Some(tls) = &t.tls {
        let _ = write!(
            h,
            "\r\n\t(using {} with cipher {})",
            tls.version, tls.cipher
        );
    }
    if let [only] = t.recipients.as_slice() {
        let _ = write!(h, "\r\n\tfor <{}>", only.forward_path);
    }
    let _ = write!(h, ";\r\n\t{date}\r\n");
    if t.auth_user.is_some() {
        let headers = header_section(&t.body);
        if !has_header(headers, "date") {
            let _ = write!(h, "Date: {date}\r\n");
        }
        if !has_header(headers, "message-id") {
            let _ = write!(h, "Message-ID: <{unique:016x}.ringmta@{hostname}>\r\n");
        }
    }
    h.into_bytes()
}

/// The spool's view of an accepted transaction (everything but the body).
pub fn spool_meta(t: &Transaction, received_at_ms: u64) -> MessageMeta {
    let recipients = t
        .recipients
        .iter()
        .map(|r| RecipientMeta {
            address: r.forward_path.to_string(),
            notify: r.notify.bits(),
            orcpt: r.orcpt.clone(),
        })
        .collect();
    MessageMeta {
        id: 0,
        received_at_ms,
        reverse_path: match &t.reverse_path {
            ReversePath::Null => String::new(),
            ReversePath::Mailbox(m) => m.to_string(),
        },
        ret: Ret::to_byte(t.ret),
        envid: t.envid.clone(),
        body_type: match t.body_type {
            BodyType::SevenBit => BODY_7BIT,
            BodyType::EightBitMime => BODY_8BITMIME,
        },
        smtputf8: t.smtputf8,
        recipients,
        auth_user: t.auth_user.clone(),
        client_addr: t.peer.to_string(),
        helo: t.helo.clone(),
        tls: t
            .tls
            .as_ref()
            .map(|i| format!("{} {}", i.version, i.cipher)),
        is_dsn: false,
    }
}

fn sanitize(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control() && *c != '(' && *c != ')')
        .take(255)
        .collect()
}

/// RFC 5322 §3.3 date in UTC, e.g. `Wed, 25 Nov 2026 11:47:45 +0000`.
pub fn rfc5322_date(t: SystemTime) -> String {
    // httpdate gives "Wed, 25 Nov 2026 11:47:45 GMT"; RFC 5322 prefers a numeric zone.
    let s = httpdate::fmt_http_date(t);
    match s.strip_suffix("GMT") {
        Some(prefix) => format!("{prefix}+0000"),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_section_and_lookup() {
        let body = b"From: a@b\r\nmessage-ID: <x@y>\r\n\r\nDate: not a header\r\n";
        let h = header_section(body);
        assert_eq!(h, b"From: a@b\r\nmessage-ID: <x@y>\r\n");
        assert!(has_header(h, "message-id"));
        assert!(!has_header(h, "date"));
        assert!(!has_header(h, "from:"));
        assert_eq!(header_section(b"\r\nbody only"), b"");
    }

    #[test]
    fn date_is_rfc5322() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_795_000_000);
        assert_eq!(rfc5322_date(t), "Wed, 18 Nov 2026 11:06:40 +0000");
    }
}
