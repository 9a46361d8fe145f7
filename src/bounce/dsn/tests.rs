//! Notifications as mail-parser and a strict reader see them, and the invariants as properties.

use super::returned::whole_fields_prefix;
use super::*;
use crate::rfc5322::header_section;
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
