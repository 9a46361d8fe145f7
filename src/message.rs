//! Headers ringmta adds to an accepted message: Received (always), and Date and Message-ID for
//! authenticated submissions that lack them (RFC 6409 §8.2, §8.3). Pure functions: the caller
//! passes the time and the unique part of the Message-ID.

use std::fmt::Write as _;
use std::time::SystemTime;

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
