//! Reports as receivers send them, read into notices.

use super::*;
use crate::ids::QueueId;

const DSN: &str = "From: MAILER-DAEMON@mx.example.net\r\n\
To: bounces+0001a21298f62900@bounces.example.com\r\n\
Subject: Undelivered Mail Returned to Sender\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=delivery-status;\r\n\
\x20boundary=\"B0\"\r\n\
\r\n\
--B0\r\n\
Content-Type: text/plain\r\n\
\r\n\
I'm sorry to have to inform you that your message could not be delivered.\r\n\
--B0\r\n\
Content-Type: message/delivery-status\r\n\
\r\n\
Reporting-MTA: dns; mx.example.net\r\n\
Arrival-Date: Wed, 2 Dec 2026 10:00:00 +0000\r\n\
\r\n\
Final-Recipient: rfc822; bob@example.net\r\n\
Action: failed\r\n\
Status: 5.1.1\r\n\
Diagnostic-Code: smtp; 550 5.1.1 <bob@example.net>: Recipient address\r\n\
\x20rejected: User unknown in local recipient table\r\n\
\r\n\
Final-Recipient: rfc822; carol@example.net\r\n\
Original-Recipient: rfc822; Carol@Example.net\r\n\
Action: delayed\r\n\
Status: 4.2.2\r\n\
\r\n\
Final-Recipient: rfc822; dave@example.net\r\n\
Action: delivered\r\n\
Status: 2.0.0\r\n\
\r\n\
--B0\r\n\
Content-Type: text/rfc822-headers\r\n\
\r\n\
From: app@example.com\r\n\
To: bob@example.net\r\n\
Subject: hello\r\n\
\r\n\
--B0--\r\n";

const ARF: &str = "From: feedback@fbl.example.org\r\n\
To: bounces+0001a21298f62900@bounces.example.com\r\n\
Subject: FW: hello\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/report; report-type=feedback-report; boundary=\"F0\"\r\n\
\r\n\
--F0\r\n\
Content-Type: text/plain\r\n\
\r\n\
This is an email abuse report.\r\n\
--F0\r\n\
Content-Type: message/feedback-report\r\n\
\r\n\
Feedback-Type: abuse\r\n\
User-Agent: SomeGenerator/1.0\r\n\
Version: 1\r\n\
Original-Mail-From: <bounces+0001a21298f62900@bounces.example.com>\r\n\
Reporting-MTA: dns; fbl.example.org\r\n\
\r\n\
--F0\r\n\
Content-Type: message/rfc822\r\n\
\r\n\
From: app@example.com\r\n\
To: Erin <erin@example.org>\r\n\
Subject: hello\r\n\
\r\n\
Buy now.\r\n\
--F0--\r\n";

#[test]
fn verp_addresses_round_trip() {
    let id: QueueId = "0001a21298f62900".parse().unwrap();
    let address = verp_address(id, "bounces.example.com");
    assert_eq!(address, "bounces+0001a21298f62900@bounces.example.com");
    assert_eq!(parse_verp("bounces+0001a21298f62900"), Some(id));
    assert_eq!(parse_verp("BOUNCES+0001A21298F62900"), Some(id));
    for bad in [
        "bounces+",
        "bounces+xyz",
        "bounce+0001a21298f62900",
        "",
        "bounces+0001a21298f629000",
    ] {
        assert_eq!(parse_verp(bad), None, "{bad}");
    }
}

#[test]
fn a_dsn_gives_failed_and_delayed_recipients_with_their_diagnostics() {
    let Report::Notices(notices) = parse(DSN.as_bytes()) else {
        panic!("a DSN");
    };
    assert_eq!(
        notices,
        vec![
            Notice {
                recipients: vec!["bob@example.net".into()],
                kind: NoticeKind::Failed,
                reply: "550 5.1.1 <bob@example.net>: Recipient address rejected: User unknown in local recipient table".into(),
                status: Some((5, 1, 1)),
                reporting_mta: "mx.example.net".into(),
                abuse: false,
            },
            Notice {
                recipients: vec!["Carol@Example.net".into(), "carol@example.net".into()],
                kind: NoticeKind::Delayed,
                reply: "4.2.2".into(),
                status: Some((4, 2, 2)),
                reporting_mta: "mx.example.net".into(),
                abuse: false,
            },
        ]
    );
}

#[test]
fn an_arf_report_gives_a_complaint_for_the_reported_recipient() {
    let Report::Notices(notices) = parse(ARF.as_bytes()) else {
        panic!("an ARF report");
    };
    assert_eq!(
        notices,
        vec![Notice {
            recipients: vec!["erin@example.org".into()],
            kind: NoticeKind::Complaint,
            reply: "complaint: abuse".into(),
            status: None,
            reporting_mta: "fbl.example.org".into(),
            abuse: true,
        }]
    );
    // Original-Rcpt-To, when present, names the recipient.
    let with_rcpt = ARF.replace(
        "Version: 1\r\n",
        "Version: 1\r\nOriginal-Rcpt-To: <frank@example.org>\r\n",
    );
    let Report::Notices(notices) = parse(with_rcpt.as_bytes()) else {
        panic!("an ARF report");
    };
    assert_eq!(notices.len(), 1);
    assert_eq!(notices[0].recipients, ["frank@example.org"]);
    // A report that the mail was wanted is no reason to suppress.
    let not_spam = ARF.replace("Feedback-Type: abuse", "Feedback-Type: not-spam");
    let Report::Notices(notices) = parse(not_spam.as_bytes()) else {
        panic!("an ARF report");
    };
    assert!(!notices[0].abuse);
}

#[test]
fn global_dsns_are_read_and_long_diagnostics_cut() {
    let long = "x".repeat(5000);
    let global = DSN
        .replace(
            "report-type=delivery-status",
            "report-type=global-delivery-status",
        )
        .replace("message/delivery-status", "message/global-delivery-status")
        .replace("User unknown in local recipient table", &long);
    let Report::Notices(notices) = parse(global.as_bytes()) else {
        panic!("a global DSN");
    };
    assert_eq!(notices.len(), 2);
    assert_eq!(notices[0].reply.len(), MAX_REPLY);
}

#[test]
fn anything_else_is_not_a_report() {
    for text in [
        "Subject: Out of office\r\n\r\nI am away until Monday.\r\n",
        "Content-Type: multipart/report; report-type=delivery-status; boundary=x\r\n\r\n--x--\r\n",
        "",
        "\u{0}\u{1}garbage",
    ] {
        assert_eq!(parse(text.as_bytes()), Report::NotAReport, "{text:?}");
    }
}

proptest::proptest! {
    #[test]
    fn parsing_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..2000)) {
        let _ = parse(&bytes);
        let mut dsn = DSN.as_bytes().to_vec();
        let cut = bytes.len().min(dsn.len());
        dsn.truncate(dsn.len() - cut);
        let _ = parse(&dsn);
    }
}
