//! The server session fed from an SMTP alphabet: each input byte picks a token (commands,
//! parameters, addresses, line endings, dots, base64), so the fuzzer reaches deep states
//! (transactions, AUTH, BDAT, DSN parameters) instead of dying at the first syntax error.
#![no_main]
use std::sync::Arc;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use ringmta::ids::QueueId;
use ringmta::smtp::{
    AuthOutcome, AuthUser, Event, PeerInfo, PortRole, SenderPattern, ServerSession, SessionConfig,
    SessionLimits, TlsInfo,
};

const TOKENS: &[&[u8]] = &[
    b"EHLO x.test",
    b"HELO x",
    b"MAIL FROM:",
    b"RCPT TO:",
    b"DATA",
    b"BDAT ",
    b"BDAT 5 LAST",
    b"RSET",
    b"NOOP",
    b"QUIT",
    b"VRFY a",
    b"HELP",
    b"STARTTLS",
    b"AUTH PLAIN",
    b"AUTH LOGIN",
    b"AUTH PLAIN AGFAYgBj",
    b"<a@b.test>",
    b"<>",
    b"<@r.test:a@b.test>",
    b"<\"q d\"@b.test>",
    b" SIZE=100",
    b" SIZE=99999999",
    b" BODY=8BITMIME",
    b" SMTPUTF8",
    b" RET=HDRS",
    b" ENVID=a+2Bb",
    b" NOTIFY=SUCCESS,FAILURE",
    b" NOTIFY=NEVER",
    b" ORCPT=rfc822;a@b",
    b" AUTH=<>",
    b"\r\n",
    b"\n",
    b"\r",
    b".",
    b"..",
    b"\r\n.\r\n",
    b"Subject: x",
    b"5",
    b"0",
    b" ",
    b":",
    b"*",
    b"=",
    b"dXNlcg==",
    b"\x00",
    b"\xff",
    b"\xc3\xa9",
];

fuzz_target!(|data: &[u8]| {
    let mut input = Vec::new();
    for b in data {
        input.extend_from_slice(TOKENS[usize::from(*b) % TOKENS.len()]);
    }
    for (role, trusted) in [
        (PortRole::Relay, true),
        (PortRole::Relay, false),
        (PortRole::Submissions, false),
    ] {
        let limits = SessionLimits {
            max_message_size: 4096,
            max_recipients: 4,
            ..SessionLimits::default()
        };
        let config = Arc::new(SessionConfig {
            hostname: "mx.fuzz".into(),
            role,
            limits,
            starttls_available: true,
            feedback_domain: None,
        });
        let now = Instant::now();
        let peer = PeerInfo {
            addr: "127.0.0.1:1".parse().unwrap(),
            is_trusted: trusted,
        };
        let tls = (role == PortRole::Submissions).then(|| TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "x".into(),
        });
        let mut s = ServerSession::new(config, peer, tls, now);
        if !trusted {
            s.require_mail_approval();
        }
        let mut pos = 0;
        let mut out = Vec::new();
        for _ in 0..10_000 {
            let used = s.handle_input(&input[pos..], now);
            pos += used;
            let mut progressed = used > 0;
            while let Some(ev) = s.poll_event() {
                progressed = true;
                match ev {
                    Event::Commit(txn, t) => {
                        assert!(t.body.len() <= 4096 && t.recipients.len() <= 4);
                        s.handle_commit(txn, Ok(QueueId(7)), now);
                    }
                    Event::Authenticate { .. } => s.handle_auth_result(
                        AuthOutcome::Success(AuthUser {
                            name: "a@b.test".into(),
                            allowed_senders: vec![SenderPattern::parse("*").unwrap()],
                        }),
                        now,
                    ),
                    Event::StartTls => s.handle_tls_established(
                        TlsInfo {
                            version: "TLSv1.3".into(),
                            cipher: "x".into(),
                        },
                        now,
                    ),
                    Event::ApproveMail => s.handle_mail_approval(pos % 2 == 0, now),
                    Event::Close => {}
                }
            }
            s.poll_output(&mut out);
            if !progressed || pos >= input.len() {
                break;
            }
        }
        assert!(out.len() <= 64 * input.len() + 4096);
    }
});
