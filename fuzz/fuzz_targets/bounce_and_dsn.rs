//! Remote replies are untrusted: the classifier takes any line, and a DSN built around any
//! diagnostic text stays a well-formed message (CRLF lines, no injected header fields).
#![no_main]
use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use ringmta::bounce::classify::Classifier;
use ringmta::bounce::dsn::{DsnAction, DsnInput, DsnKind, DsnRecipient, ReturnContent, render};

thread_local! {
    static CLASSIFIER: Classifier = Classifier::builtin();
}

fuzz_target!(|input: (String, Vec<u8>)| {
    let (reply, original) = input;
    CLASSIFIER.with(|c| {
        let _ = c.classify_line(&reply);
    });
    let t = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let recipients = [DsnRecipient {
        original_recipient: Some(reply.clone()),
        final_recipient: reply.clone(),
        action: DsnAction::Failed,
        status: (5, 1, 1),
        remote_mta: Some(reply.clone()),
        diagnostic: Some(reply.clone()),
        last_attempt: t,
        will_retry_until: None,
    }];
    let out = render(&DsnInput {
        kind: DsnKind::Failure,
        reporting_mta: "mx.fuzz",
        from: "MAILER-DAEMON@mx.fuzz",
        to: "a@b.test",
        envid: Some(&reply),
        arrival_date: t,
        date: t,
        message_id: "<dsn@mx.fuzz>",
        boundary: "b0undary",
        recipients: &recipients,
        original: &original,
        return_content: ReturnContent::Full,
        max_returned_body: 4096,
    });
    // Every line ends in CRLF and none is longer than RFC 5322's 998 octets.
    for line in out.split(|b| *b == b'\n') {
        assert!(line.len() <= 1000);
    }
    assert!(!out.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'));
});
