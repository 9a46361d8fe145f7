//! The server session driven by an arbitrary sequence of operations: input chunks, timeouts,
//! commit, auth and MAIL-approval results, TLS completion, shutdown. Never panics; output stays bounded.
//! Results are only delivered when the session asked for them (as the glue does); calling
//! `handle_*` out of turn is API misuse, caught by debug assertions, not peer input.
#![no_main]
use std::sync::Arc;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ringmta::ids::QueueId;
use ringmta::smtp::{
    AuthOutcome, AuthUser, CommitError, Event, PeerInfo, PortRole, ServerSession, SessionConfig,
    SessionLimits, TlsInfo,
};

#[derive(Arbitrary, Debug)]
enum Op {
    Input(Vec<u8>),
    Timeout(u16),
    CommitOk,
    CommitFull,
    CommitIo,
    AuthOk,
    AuthBad,
    AuthThrottled,
    Tls,
    Shutdown,
    AuthUnavailable,
    MailOk,
    MailRefused,
}

#[derive(Arbitrary, Debug)]
struct Case {
    role: u8,
    trusted: bool,
    ops: Vec<Op>,
}

fuzz_target!(|case: Case| {
    let role = match case.role % 3 {
        0 => PortRole::Relay,
        1 => PortRole::Submission,
        _ => PortRole::Submissions,
    };
    let limits = SessionLimits {
        max_message_size: 8192,
        max_recipients: 8,
        ..SessionLimits::default()
    };
    let config = Arc::new(SessionConfig {
        hostname: "mx.fuzz".into(),
        role,
        limits,
        starttls_available: true,
        feedback_domain: None,
    });
    let mut now = Instant::now();
    let peer = PeerInfo {
        addr: "127.0.0.1:1".parse().unwrap(),
        is_trusted: case.trusted,
    };
    let tls = (role == PortRole::Submissions).then(|| TlsInfo {
        version: "TLSv1.3".into(),
        cipher: "x".into(),
    });
    let mut s = ServerSession::new(config, peer, tls, now);
    // As the glue does for clients outside the trusted networks.
    if !case.trusted {
        s.require_mail_approval();
    }
    let mut pending = Vec::new();
    let mut out = Vec::new();
    let mut fed = 0usize;
    // The result the next commit gets, chosen by the last Commit* operation.
    let mut next_commit = 0u8;
    let mut awaiting_auth = false;
    let mut awaiting_tls = false;
    let mut awaiting_mail = false;
    for op in case.ops {
        match op {
            Op::Input(bytes) => {
                fed += bytes.len();
                pending.extend_from_slice(&bytes);
                let used = s.handle_input(&pending, now);
                assert!(used <= pending.len());
                pending.drain(..used);
            }
            Op::Timeout(ms) => {
                now += Duration::from_millis(u64::from(ms) * 100);
                s.handle_timeout(now);
            }
            Op::Shutdown => s.handle_shutdown(now),
            Op::Tls if awaiting_tls => {
                awaiting_tls = false;
                s.handle_tls_established(
                    TlsInfo {
                        version: "TLSv1.3".into(),
                        cipher: "x".into(),
                    },
                    now,
                )
            }
            Op::AuthOk if awaiting_auth => {
                awaiting_auth = false;
                s.handle_auth_result(
                    AuthOutcome::Success(AuthUser {
                        name: "u".into(),
                        allowed_senders: vec![],
                    }),
                    now,
                )
            }
            Op::AuthBad if awaiting_auth => {
                awaiting_auth = false;
                s.handle_auth_result(AuthOutcome::BadCredentials, now)
            }
            Op::AuthThrottled if awaiting_auth => {
                awaiting_auth = false;
                s.handle_auth_result(AuthOutcome::Throttled, now)
            }
            Op::AuthUnavailable if awaiting_auth => {
                awaiting_auth = false;
                s.handle_auth_result(AuthOutcome::Unavailable, now)
            }
            Op::MailOk | Op::MailRefused if awaiting_mail => {
                awaiting_mail = false;
                s.handle_mail_approval(matches!(op, Op::MailOk), now)
            }
            Op::Tls
            | Op::AuthOk
            | Op::AuthBad
            | Op::AuthThrottled
            | Op::AuthUnavailable
            | Op::MailOk
            | Op::MailRefused => {}
            Op::CommitOk => next_commit = 0,
            Op::CommitFull => next_commit = 1,
            Op::CommitIo => next_commit = 2,
        }
        while let Some(ev) = s.poll_event() {
            match &ev {
                Event::Authenticate { .. } => awaiting_auth = true,
                Event::StartTls => awaiting_tls = true,
                Event::ApproveMail => awaiting_mail = true,
                _ => {}
            }
            if let Event::Commit(txn, t) = ev {
                assert!(t.body.len() <= 8192);
                assert!(t.recipients.len() <= 8);
                let result = match next_commit {
                    0 => Ok(QueueId(1)),
                    1 => Err(CommitError::SpoolFull),
                    _ => Err(CommitError::SpoolIo),
                };
                s.handle_commit(txn, result, now);
            }
        }
        s.poll_output(&mut out);
        // Replies are bounded by what the peer sent (plus greetings and EHLO lists).
        assert!(
            out.len() <= 64 * fed + 4096,
            "{} bytes out for {fed} in",
            out.len()
        );
    }
});
