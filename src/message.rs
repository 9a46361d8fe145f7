//! Headers ringmta adds to an accepted message: Received (always), and Date and Message-ID for
//! authenticated submissions that lack them (RFC 6409 §8.2, §8.3); and the control headers a
//! sender sets for ringmta (`X-Ringmta-Expire-After`, `X-Ringmta-Priority`), which it reads and
//! removes. Pure functions: the caller passes the time and the unique part of the Message-ID.

use std::fmt::Write as _;
use std::ops::Range;
use std::time::{Duration, SystemTime};

use crate::rfc5322::{self, has_header, header_section};
use crate::smtp::{BodyType, Ret, ReversePath, Transaction};
use crate::spool::{BODY_7BIT, BODY_8BITMIME, MessageMeta, RecipientMeta};

/// Builds the header lines ringmta prepends: a Received trace field and, for submissions,
/// the missing Date and Message-ID. `unique` makes the Message-ID unique (e.g. a counter mixed
/// with the time).
pub fn prepended_headers(t: &Transaction, hostname: &str, now: SystemTime, unique: u64) -> Vec<u8> {
    let date = rfc5322::date(now);
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

/// `X-Ringmta-Expire-After: <duration>`: the message is useless after this long in the queue.
pub const EXPIRE_AFTER: &str = "x-ringmta-expire-after";
/// `X-Ringmta-Priority: high|normal|bulk` (or an RFC 6710 level, -9 to 9).
pub const PRIORITY: &str = "x-ringmta-priority";

/// What the sender asked of ringmta in control headers, and the message without them (they
/// are for ringmta, never relayed).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Controls {
    /// From `X-Ringmta-Expire-After`.
    pub expire_after: Option<Duration>,
    /// From `X-Ringmta-Priority`.
    pub priority: Option<i8>,
    /// Byte ranges of the message to keep: all of it when it has no control header.
    pub keep: Vec<Range<usize>>,
}

/// A control header whose value ringmta cannot honour: the message is refused with this, as
/// guessing (ignoring a deadline, say) would do what the sender did not ask.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// Not a positive duration.
    #[error("X-Ringmta-Expire-After: {0:?} is not a duration such as 90s, 10m or 2h")]
    ExpireAfter(String),
    /// Not a known priority.
    #[error("X-Ringmta-Priority: {0:?} is not high, normal, bulk or a level from -9 to 9")]
    Priority(String),
    /// The same control header twice.
    #[error("{0} appears more than once")]
    Repeated(&'static str),
}

/// Finds and removes ringmta's control headers in the header section of `message` (folded
/// values included). Messages without any are returned whole after one scan of their header
/// section for the `x-ringmta-` prefix.
pub fn control_headers(message: &[u8]) -> Result<Controls, ControlError> {
    let headers = header_section(message);
    let mut controls = Controls::default();
    const PREFIX: &[u8] = b"x-ringmta-";
    if !headers
        .windows(PREFIX.len())
        .any(|w| w.eq_ignore_ascii_case(PREFIX))
    {
        controls.keep.push(0..message.len());
        return Ok(controls);
    }
    let mut kept_from = 0;
    let mut at = 0;
    while at < headers.len() {
        // One field: its first line and every continuation line (starting with WSP).
        let mut end = at;
        loop {
            end += headers[end..]
                .iter()
                .position(|&b| b == b'\n')
                .map_or(headers.len() - end, |i| i + 1);
            if end >= headers.len() || !matches!(headers[end], b' ' | b'\t') {
                break;
            }
        }
        let field = &headers[at..end];
        let name_end = field.iter().position(|&b| b == b':');
        let name = name_end.map(|i| &field[..i]).unwrap_or_default();
        let value = || {
            let raw = &field[name_end.map_or(0, |i| i + 1)..];
            String::from_utf8_lossy(raw)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        let found = if name.eq_ignore_ascii_case(EXPIRE_AFTER.as_bytes()) {
            let v = value();
            let d = crate::time::parse_duration(&v)
                .filter(|d| !d.is_zero())
                .ok_or(ControlError::ExpireAfter(v))?;
            if controls.expire_after.replace(d).is_some() {
                return Err(ControlError::Repeated("X-Ringmta-Expire-After"));
            }
            true
        } else if name.eq_ignore_ascii_case(PRIORITY.as_bytes()) {
            let v = value();
            let p = match v.to_ascii_lowercase().as_str() {
                "high" => 1,
                "normal" => 0,
                "bulk" => -1,
                n => n
                    .parse::<i8>()
                    .ok()
                    .filter(|p| (-9..=9).contains(p))
                    .ok_or_else(|| ControlError::Priority(v.clone()))?,
            };
            if controls.priority.replace(p).is_some() {
                return Err(ControlError::Repeated("X-Ringmta-Priority"));
            }
            true
        } else {
            false
        };
        if found {
            if at > kept_from {
                controls.keep.push(kept_from..at);
            }
            kept_from = end;
        }
        at = end;
    }
    if kept_from < message.len() {
        controls.keep.push(kept_from..message.len());
    }
    Ok(controls)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(message: &[u8], c: &Controls) -> Vec<u8> {
        c.keep
            .iter()
            .flat_map(|r| &message[r.clone()])
            .copied()
            .collect()
    }

    #[test]
    fn control_headers_are_read_and_removed_folded_or_not_and_the_rest_is_kept() {
        let cases: &[(&str, Option<u64>, Option<i8>, &str)] = &[
            (
                "Subject: a\r\n\r\nbody\r\n",
                None,
                None,
                "Subject: a\r\n\r\nbody\r\n",
            ),
            (
                "Subject: a\r\nX-Ringmta-Expire-After: 10m\r\nTo: b\r\n\r\nX-Ringmta-Priority: bulk\r\n",
                Some(600),
                None,
                "Subject: a\r\nTo: b\r\n\r\nX-Ringmta-Priority: bulk\r\n",
            ),
            (
                "x-ringmta-priority: HIGH\r\nx-RINGMTA-expire-after:\r\n  90s\r\nFrom: c\r\n\r\n",
                Some(90),
                Some(1),
                "From: c\r\n\r\n",
            ),
            ("X-Ringmta-Priority: -7\r\n\r\nb", None, Some(-7), "\r\nb"),
            // A look-alike name is not a control header.
            (
                "X-Ringmta-Expire-Afterwards: x\r\n\r\n",
                None,
                None,
                "X-Ringmta-Expire-Afterwards: x\r\n\r\n",
            ),
            // No body: the header section is the whole message.
            (
                "A: 1\r\nX-Ringmta-Priority: normal\r\n",
                None,
                Some(0),
                "A: 1\r\n",
            ),
        ];
        for (message, after, priority, rest) in cases {
            let c = control_headers(message.as_bytes()).unwrap();
            assert_eq!(
                c.expire_after,
                after.map(Duration::from_secs),
                "{message:?}"
            );
            assert_eq!(c.priority, *priority, "{message:?}");
            assert_eq!(kept(message.as_bytes(), &c), rest.as_bytes(), "{message:?}");
        }
    }

    #[test]
    fn a_control_header_ringmta_cannot_honour_is_an_error() {
        let err = |m: &str| control_headers(m.as_bytes()).unwrap_err().to_string();
        assert_eq!(
            err("X-Ringmta-Expire-After: soon\r\n\r\n"),
            "X-Ringmta-Expire-After: \"soon\" is not a duration such as 90s, 10m or 2h"
        );
        assert!(err("X-Ringmta-Expire-After: 0s\r\n\r\n").contains("\"0s\""));
        assert!(err("X-Ringmta-Priority: 10\r\n\r\n").contains("\"10\" is not high"));
        assert_eq!(
            err("X-Ringmta-Priority: high\r\nX-Ringmta-Priority: bulk\r\n\r\n"),
            "X-Ringmta-Priority appears more than once"
        );
    }
}
