//! Session scripts: exact reply bytes, replayed whole, byte by byte and split at every byte.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::smtp::{Notify, Ret};

const GREETING: &str = "220 mx.test ESMTP ringmta\r\n";
const EHLO_BASE: &str = "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 26214400\r\n250-8BITMIME\r\n\
    250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n";
const OK: &str = "250 2.0.0 Ok\r\n";
const MAIL_OK: &str = "250 2.1.0 Ok\r\n";
const RCPT_OK: &str = "250 2.1.5 Ok\r\n";
const GO_AHEAD: &str = "354 End data with <CR><LF>.<CR><LF>\r\n";
const QUEUED: &str = "250 2.0.0 Ok: queued as 0000000000000001\r\n";
const BYE: &str = "221 2.0.0 Bye\r\n";
const RELAY_DENIED: &str = "554 5.7.1 Relay access denied\r\n";
const NO_RCPT: &str = "554 5.5.1 No valid recipients\r\n";
const SEQ_NO_HELO: &str = "503 5.5.1 Send EHLO or HELO first\r\n";
const AUTH_REQUIRED: &str = "530 5.7.0 Authentication required\r\n";
const NEED_TLS: &str = "538 5.7.11 Encryption required for requested authentication mechanism\r\n";
const AUTH_OK: &str = "235 2.7.0 Authentication successful\r\n";
const AUTH_BAD: &str = "535 5.7.8 Authentication credentials invalid\r\n";
const AUTH_TOO_MANY: &str = "421 4.7.0 Too many failed authentication attempts\r\n";
const TOO_BIG: &str = "552 5.3.4 Message size exceeds fixed maximum message size\r\n";
const UNKNOWN: &str = "500 5.5.1 Command unrecognized\r\n";
const SHUTDOWN: &str = "421 4.3.2 Service shutting down\r\n";
const TIMEOUT: &str = "421 4.4.2 mx.test Error: timeout exceeded\r\n";
const READY_TLS: &str = "220 2.0.0 Ready to start TLS\r\n";
/// base64("\0alice@example.com\0secret").
const PLAIN_ALICE: &str = "AGFsaWNlQGV4YW1wbGUuY29tAHNlY3JldA==";

fn ehlo(tail: &str) -> String {
    format!("{EHLO_BASE}250-DSN\r\n250-DELIVERBY\r\n250-MT-PRIORITY\r\n{tail}")
}

fn ehlo_plain() -> String {
    ehlo("250 STARTTLS\r\n")
}

fn ehlo_tls() -> String {
    ehlo("250 AUTH PLAIN LOGIN\r\n")
}

#[derive(Clone)]
struct Setup {
    role: PortRole,
    tls: bool,
    trusted: bool,
    starttls: bool,
    limits: SessionLimits,
    /// `SessionConfig::feedback_domain`.
    feedback_domain: Option<&'static str>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            role: PortRole::Relay,
            tls: false,
            trusted: false,
            starttls: true,
            limits: SessionLimits::default(),
            feedback_domain: None,
        }
    }
}

fn trusted() -> Setup {
    Setup {
        trusted: true,
        ..Setup::default()
    }
}

fn submissions() -> Setup {
    Setup {
        role: PortRole::Submissions,
        tls: true,
        ..Setup::default()
    }
}

#[derive(Clone, Copy, Debug)]
enum Split {
    Whole,
    Bytewise,
    At { step: usize, at: usize },
}

fn tls_info() -> TlsInfo {
    TlsInfo {
        version: "TLSv1.3".into(),
        cipher: "TLS13_AES_256_GCM_SHA384".into(),
    }
}

fn peer(trusted: bool) -> PeerInfo {
    PeerInfo {
        addr: "192.0.2.1:40000".parse().unwrap(),
        is_trusted: trusted,
    }
}

fn session(setup: &Setup, now: Instant) -> ServerSession {
    let config = Arc::new(SessionConfig {
        hostname: "mx.test".into(),
        role: setup.role,
        limits: setup.limits.clone(),
        starttls_available: setup.starttls,
        feedback_domain: setup.feedback_domain.map(str::to_owned),
    });
    ServerSession::new(config, peer(setup.trusted), setup.tls.then(tls_info), now)
}

/// `name` alone allows `name` as sender; `name p1 p2` allows the listed patterns.
fn auth_user(arg: &str) -> AuthUser {
    let mut words = arg.split(' ');
    let name = words.next().unwrap_or_default().to_owned();
    let mut patterns: Vec<SenderPattern> =
        words.map(|p| SenderPattern::parse(p).unwrap()).collect();
    if patterns.is_empty() {
        patterns.push(SenderPattern::parse(&name).unwrap());
    }
    AuthUser {
        name,
        allowed_senders: patterns,
    }
}

fn render(event: &Event) -> String {
    match event {
        Event::Commit(_, t) => {
            let rcpts: Vec<String> = t
                .recipients
                .iter()
                .map(|r| format!("<{}>", r.forward_path))
                .collect();
            let body = String::from_utf8_lossy(&t.body);
            format!("COMMIT {} {} {body:?}", t.reverse_path, rcpts.join(","))
        }
        Event::Authenticate {
            mechanism,
            username,
            password,
        } => format!("AUTH {mechanism:?} {username} {password}"),
        Event::ApproveMail => "APPROVE_MAIL".into(),
        Event::StartTls => "STARTTLS".into(),
        Event::Close => "CLOSE".into(),
    }
}

struct Runner {
    s: ServerSession,
    now: Instant,
    pending: Vec<u8>,
    out: Vec<u8>,
    events: VecDeque<String>,
    last_txn: Option<TxnId>,
}

impl Runner {
    fn feed(&mut self, piece: &[u8]) {
        self.pending.extend_from_slice(piece);
        let n = self.s.handle_input(&self.pending, self.now);
        assert!(n <= self.pending.len());
        self.pending.drain(..n);
    }

    fn drain_events(&mut self) {
        while let Some(e) = self.s.poll_event() {
            if let Event::Commit(id, _) = &e {
                self.last_txn = Some(*id);
            }
            self.events.push_back(render(&e));
        }
    }
}

fn run(setup: &Setup, steps: &[(&str, &str)], split: Split) {
    let now = Instant::now();
    let mut r = Runner {
        s: session(setup, now),
        now,
        pending: Vec::new(),
        out: Vec::new(),
        events: VecDeque::new(),
        last_txn: None,
    };
    for (i, &(kind, arg)) in steps.iter().enumerate() {
        let ctx = format!("step {i} ({kind} {arg:?}) split {split:?}");
        match kind {
            "C" => match split {
                Split::Bytewise => arg.as_bytes().chunks(1).for_each(|b| r.feed(b)),
                Split::At { step, at } if step == i => {
                    r.feed(&arg.as_bytes()[..at]);
                    r.feed(&arg.as_bytes()[at..]);
                }
                _ => r.feed(arg.as_bytes()),
            },
            "S" => {
                r.s.poll_output(&mut r.out);
                assert_eq!(String::from_utf8_lossy(&r.out), arg, "{ctx}");
                r.out.clear();
            }
            "E" => {
                r.drain_events();
                assert_eq!(r.events.pop_front().as_deref(), Some(arg), "{ctx}");
            }
            "AUTH_OK" => {
                r.s.handle_auth_result(AuthOutcome::Success(auth_user(arg)), r.now)
            }
            "AUTH_BAD" => r.s.handle_auth_result(AuthOutcome::BadCredentials, r.now),
            "AUTH_THROTTLED" => r.s.handle_auth_result(AuthOutcome::Throttled, r.now),
            "AUTH_UNAVAILABLE" => r.s.handle_auth_result(AuthOutcome::Unavailable, r.now),
            "COMMIT_OK" => {
                let txn = r.last_txn.expect("no commit event");
                r.s.handle_commit(txn, Ok(arg.parse().unwrap()), r.now);
            }
            "COMMIT_ERR" => {
                let txn = r.last_txn.expect("no commit event");
                let err = match arg {
                    "full" => CommitError::SpoolFull,
                    "io" => CommitError::SpoolIo,
                    "shutdown" => CommitError::ShuttingDown,
                    _ => CommitError::Rejected(Reply::with_enhanced(554, (5, 7, 1), arg)),
                };
                r.s.handle_commit(txn, Err(err), r.now);
            }
            "TLS" => r.s.handle_tls_established(tls_info(), r.now),
            "SHUTDOWN" => r.s.handle_shutdown(r.now),
            "WAIT" => {
                r.now += Duration::from_secs(arg.parse().unwrap());
                r.s.handle_timeout(r.now);
            }
            "DEADLINE" => {
                let want = arg
                    .parse()
                    .ok()
                    .map(|secs| r.now + Duration::from_secs(secs));
                assert_eq!(r.s.poll_timeout(), want, "{ctx}");
            }
            "CLOSED" => assert!(r.s.is_closed(), "{ctx}"),
            _ => panic!("unknown step kind {kind}"),
        }
        if matches!(
            kind,
            "AUTH_OK"
                | "AUTH_BAD"
                | "AUTH_THROTTLED"
                | "AUTH_UNAVAILABLE"
                | "COMMIT_OK"
                | "COMMIT_ERR"
                | "TLS"
        ) {
            r.feed(&[]);
        }
        r.drain_events();
    }
    r.s.poll_output(&mut r.out);
    assert_eq!(
        String::from_utf8_lossy(&r.out),
        "",
        "unchecked output, split {split:?}"
    );
    assert_eq!(
        r.events,
        VecDeque::<String>::new(),
        "unchecked events, split {split:?}"
    );
}

/// Runs `steps` whole, byte by byte, and with each client step split at every byte.
fn script_with(setup: Setup, steps: &[(&str, &str)]) {
    run(&setup, steps, Split::Whole);
    run(&setup, steps, Split::Bytewise);
    for (step, (kind, arg)) in steps.iter().enumerate() {
        if *kind == "C" {
            for at in 1..arg.len() {
                run(&setup, steps, Split::At { step, at });
            }
        }
    }
}

fn script(steps: &[(&str, &str)]) {
    script_with(Setup::default(), steps);
}

#[test]
fn greeting_ehlo_quit() {
    let e = ehlo_plain();
    script(&[
        ("S", GREETING),
        ("DEADLINE", "300"),
        ("C", "EHLO client.example\r\n"),
        ("S", &e),
        ("C", "QUIT\r\n"),
        ("S", BYE),
        ("E", "CLOSE"),
        ("CLOSED", ""),
        ("DEADLINE", "none"),
        ("C", "NOOP\r\n"),
        ("S", ""),
    ]);
}

#[test]
fn ehlo_variants_by_tls_state() {
    let no_starttls = format!("{EHLO_BASE}250-DSN\r\n250-DELIVERBY\r\n250 MT-PRIORITY\r\n");
    script_with(
        Setup {
            starttls: false,
            ..Setup::default()
        },
        &[("S", GREETING), ("C", "EHLO a\r\n"), ("S", &no_starttls)],
    );
    let tls = ehlo_tls();
    script_with(
        submissions(),
        &[("S", GREETING), ("C", "EHLO a\r\n"), ("S", &tls)],
    );
    let small = "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 100\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n\
        250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250-DSN\r\n250-DELIVERBY\r\n\
        250-MT-PRIORITY\r\n250 STARTTLS\r\n";
    let mut setup = Setup::default();
    setup.limits.max_message_size = 100;
    script_with(setup, &[("S", GREETING), ("C", "EHLO a\n"), ("S", small)]);
}

#[test]
fn helo_forbids_esmtp_parameters() {
    script_with(
        trusted(),
        &[
            ("S", GREETING),
            ("C", "HELO client.example\r\n"),
            ("S", "250 mx.test\r\n"),
            ("C", "MAIL FROM:<a@b.example> SIZE=10\r\n"),
            ("S", "555 5.5.4 ESMTP parameters require EHLO\r\n"),
            ("C", "MAIL FROM:<a@b.example>\r\n"),
            ("S", MAIL_OK),
            ("C", "RCPT TO:<c@d.example> NOTIFY=NEVER\r\n"),
            ("S", "555 5.5.4 ESMTP parameters require EHLO\r\n"),
            ("C", "RCPT TO:<c@d.example>\r\nDATA\r\nhi\r\n.\r\n"),
            ("S", &format!("{RCPT_OK}{GO_AHEAD}")),
            ("E", "COMMIT <a@b.example> <c@d.example> \"hi\\r\\n\""),
            ("COMMIT_OK", "0000000000000001"),
            ("S", QUEUED),
        ],
    );
}

#[test]
fn trusted_relay_transaction_with_dot_stuffing() {
    script_with(
        trusted(),
        &[
            ("S", GREETING),
            (
                "C",
                "EHLO client.example\r\nMAIL FROM:<a@b.example> BODY=8BITMIME SIZE=100\r\n",
            ),
            (
                "C",
                "RCPT TO:<c@d.example>\r\nRCPT TO:<@r.example:e@f.example>\r\nDATA\r\n",
            ),
            ("C", "Subject: x\r\n\r\n..dot\r\n.\r\n"),
            ("C", "MAIL FROM:<>\r\n"),
            (
                "S",
                &format!("{}{MAIL_OK}{RCPT_OK}{RCPT_OK}{GO_AHEAD}", ehlo_plain()),
            ),
            (
                "E",
                "COMMIT <a@b.example> <c@d.example>,<e@f.example> \
                 \"Subject: x\\r\\n\\r\\n.dot\\r\\n\"",
            ),
            ("DEADLINE", "none"),
            ("COMMIT_OK", "0000000000000001"),
            ("S", &format!("{QUEUED}{MAIL_OK}")),
            ("DEADLINE", "300"),
            ("C", "RSET\r\nNOOP\r\nVRFY bob\r\nHELP\r\n"),
            (
                "S",
                "250 2.0.0 Ok\r\n250 2.0.0 Ok\r\n\
                 252 2.5.2 Cannot VRFY user, but will accept message and attempt delivery\r\n\
                 214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP \
                 STARTTLS AUTH\r\n",
            ),
            ("C", "RCPT TO:<c@d.example>\r\n"),
            ("S", "503 5.5.1 Need MAIL command\r\n"),
        ],
    );
}

#[test]
fn sequence_errors() {
    script_with(
        trusted(),
        &[
            ("S", GREETING),
            ("C", "MAIL FROM:<a@b.example>\r\n"),
            ("S", SEQ_NO_HELO),
            ("C", "RCPT TO:<c@d.example>\r\nDATA\r\n"),
            ("S", &format!("503 5.5.1 Need MAIL command\r\n{NO_RCPT}")),
            (
                "C",
                "EHLO a\r\nMAIL FROM:<a@b.example>\r\nMAIL FROM:<a@b.example>\r\n",
            ),
            (
                "S",
                &format!("{}{MAIL_OK}503 5.5.1 Nested MAIL command\r\n", ehlo_plain()),
            ),
            ("C", "DATA\r\nBDAT 3\r\nabcBDAT 0 LAST\r\n"),
            ("S", &format!("{NO_RCPT}{NO_RCPT}{NO_RCPT}")),
            ("C", "RCPT TO:<c@d.example>\r\nBDAT 2\r\nhiDATA\r\n"),
            (
                "S",
                &format!(
                    "{RCPT_OK}250 2.0.0 2 octets received\r\n\
                     503 5.5.1 DATA not permitted after BDAT\r\n"
                ),
            ),
            ("C", "BDAT 1 LAST\r\n!"),
            ("E", "COMMIT <a@b.example> <c@d.example> \"hi!\""),
            ("COMMIT_OK", "0000000000000001"),
            ("S", QUEUED),
        ],
    );
}

#[test]
fn relay_denied_for_untrusted_unauthenticated_peer() {
    script(&[
        ("S", GREETING),
        (
            "C",
            "EHLO a\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n",
        ),
        (
            "S",
            &format!("{}{MAIL_OK}{RELAY_DENIED}{NO_RCPT}", ehlo_plain()),
        ),
    ]);
}

/// Feedback addresses (VERP, `delivery.bounce_domain`) are accepted from anyone on the relay
/// role, other addresses of the bounce domain are unknown, and feedback never shares a
/// transaction with relayed recipients.
#[test]
fn feedback_addresses_take_reports_from_anyone_in_transactions_of_their_own() {
    let feedback = Setup {
        feedback_domain: Some("bounces.example.com"),
        ..Setup::default()
    };
    script_with(
        feedback,
        &[
            ("S", GREETING),
            (
                "C",
                "EHLO a\r\nMAIL FROM:<>\r\nRCPT TO:<bounces+0001a21298f62900@Bounces.Example.COM>\r\n\
                 RCPT TO:<c@d.example>\r\nRCPT TO:<nobody@bounces.example.com>\r\nDATA\r\n",
            ),
            (
                "S",
                &format!(
                    "{}{MAIL_OK}{RCPT_OK}{RELAY_DENIED}550 5.1.1 \
                     <nobody@bounces.example.com>: no such feedback address\r\n{GO_AHEAD}",
                    ehlo_plain()
                ),
            ),
        ],
    );
    let mixed = Setup {
        trusted: true,
        feedback_domain: Some("bounces.example.com"),
        ..Setup::default()
    };
    let separate = "452 4.5.3 Feedback and relayed recipients need separate transactions\r\n";
    script_with(
        mixed,
        &[
            ("S", GREETING),
            (
                "C",
                "HELO a\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n\
                 RCPT TO:<bounces+0001a21298f62900@bounces.example.com>\r\n\
                 RSET\r\nMAIL FROM:<>\r\nRCPT TO:<bounces+0001a21298f62900@bounces.example.com>\r\n\
                 RCPT TO:<c@d.example>\r\n",
            ),
            (
                "S",
                &format!(
                    "250 mx.test\r\n{MAIL_OK}{RCPT_OK}{separate}250 2.0.0 Ok\r\n{MAIL_OK}{RCPT_OK}{separate}"
                ),
            ),
        ],
    );
}

#[test]
fn too_many_recipients() {
    let mut setup = trusted();
    setup.limits.max_recipients = 2;
    script_with(
        setup,
        &[
            ("S", GREETING),
            ("C", "HELO a\r\nMAIL FROM:<a@b.example>\r\n"),
            (
                "C",
                "RCPT TO:<c1@d.example>\r\nRCPT TO:<c2@d.example>\r\nRCPT TO:<c3@d.example>\r\n",
            ),
            (
                "S",
                &format!(
                    "250 mx.test\r\n{MAIL_OK}{RCPT_OK}{RCPT_OK}452 4.5.3 Too many recipients\r\n"
                ),
            ),
        ],
    );
}

#[test]
fn size_limits() {
    let mut setup = trusted();
    setup.limits.max_message_size = 10;
    script_with(
        setup,
        &[
            ("S", GREETING),
            ("C", "HELO a\r\n"),
            ("S", "250 mx.test\r\n"),
            ("C", "EHLO a\r\n"),
            ("S", &ehlo_plain().replace("SIZE 26214400", "SIZE 10")),
            ("C", "MAIL FROM:<a@b.example> SIZE=11\r\n"),
            ("S", TOO_BIG),
            (
                "C",
                "MAIL FROM:<a@b.example> SIZE=10\r\nRCPT TO:<c@d.example>\r\nDATA\r\n",
            ),
            ("S", &format!("{MAIL_OK}{RCPT_OK}{GO_AHEAD}")),
            ("C", "0123456789\r\n.\r\n"),
            ("S", TOO_BIG),
            (
                "C",
                "MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n12345678\r\n.\r\n",
            ),
            ("S", &format!("{MAIL_OK}{RCPT_OK}{GO_AHEAD}")),
            ("E", "COMMIT <a@b.example> <c@d.example> \"12345678\\r\\n\""),
            ("COMMIT_OK", "0000000000000001"),
            ("S", QUEUED),
            (
                "C",
                "MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nBDAT 8\r\n12345678",
            ),
            ("C", "BDAT 4\r\n\r\n\r\nBDAT 1 LAST\r\nx"),
            (
                "S",
                &format!("{MAIL_OK}{RCPT_OK}250 2.0.0 8 octets received\r\n{TOO_BIG}{TOO_BIG}"),
            ),
            ("C", "RCPT TO:<c@d.example>\r\n"),
            ("S", "503 5.5.1 Need MAIL command\r\n"),
        ],
    );
}

#[test]
fn bdat_chunks_and_normalisation() {
    script_with(
        trusted(),
        &[
            ("S", GREETING),
            (
                "C",
                "EHLO a\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n",
            ),
            (
                "C",
                "BDAT 4\r\na\nb\rBDAT 3\r\n\n.\nBDAT 0 LAST\r\nNOOP\r\n",
            ),
            (
                "S",
                &format!(
                    "{}{MAIL_OK}{RCPT_OK}250 2.0.0 4 octets received\r\n\
                     250 2.0.0 3 octets received\r\n",
                    ehlo_plain()
                ),
            ),
            (
                "E",
                "COMMIT <a@b.example> <c@d.example> \"a\\r\\nb\\r\\n.\\r\\n\"",
            ),
            ("COMMIT_OK", "0000000000000001"),
            ("S", &format!("{QUEUED}{OK}")),
        ],
    );
}

#[test]
fn data_smuggling_sequences_do_not_end_the_message() {
    script_with(
        trusted(),
        &[
            ("S", GREETING),
            (
                "C",
                "EHLO a\nMAIL FROM:<a@b.example>\nRCPT TO:<c@d.example>\nDATA\n",
            ),
            (
                "S",
                &format!("{}{MAIL_OK}{RCPT_OK}{GO_AHEAD}", ehlo_plain()),
            ),
            (
                "C",
                "x\n.\nMAIL FROM:<evil@e.example>\r\ny\n.\r\nz\r.\r\n.\r\n",
            ),
            (
                "E",
                "COMMIT <a@b.example> <c@d.example> \
                 \"x\\r\\n.\\r\\nMAIL FROM:<evil@e.example>\\r\\ny\\r\\n.\\r\\nz\\r\\n.\\r\\n\"",
            ),
            ("COMMIT_ERR", "Spam detected"),
            ("S", "554 5.7.1 Spam detected\r\n"),
        ],
    );
}

#[test]
fn commit_errors() {
    let txn = "MAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nb\r\n.\r\n";
    let accepted = format!("{MAIL_OK}{RCPT_OK}{GO_AHEAD}");
    let commit = "COMMIT <a@b.example> <c@d.example> \"b\\r\\n\"";
    script_with(
        trusted(),
        &[
            ("S", GREETING),
            ("C", "HELO a\r\n"),
            ("S", "250 mx.test\r\n"),
            ("C", txn),
            ("S", &accepted),
            ("E", commit),
            ("COMMIT_ERR", "full"),
            ("S", "452 4.3.1 Insufficient system storage\r\n"),
            ("C", txn),
            ("S", &accepted),
            ("E", commit),
            ("COMMIT_ERR", "io"),
            ("S", "451 4.3.0 Local error in processing\r\n"),
            ("C", txn),
            ("S", &accepted),
            ("E", commit),
            ("COMMIT_ERR", "shutdown"),
            ("S", SHUTDOWN),
            ("E", "CLOSE"),
        ],
    );
}

#[test]
fn submission_requires_auth_and_tls() {
    let setup = Setup {
        role: PortRole::Submission,
        ..Setup::default()
    };
    script_with(
        setup,
        &[
            ("S", GREETING),
            (
                "C",
                "EHLO a\r\nMAIL FROM:<alice@example.com>\r\nAUTH PLAIN\r\n",
            ),
            ("S", &format!("{}{AUTH_REQUIRED}{NEED_TLS}", ehlo_plain())),
            // CVE-2011-0411: bytes pipelined after STARTTLS are dropped.
            ("C", "STARTTLS\r\nMAIL FROM:<x@y.example>\r\n"),
            ("S", READY_TLS),
            ("E", "STARTTLS"),
            ("DEADLINE", "none"),
            ("C", "RSET\r\n"),
            ("S", ""),
            ("TLS", ""),
            ("C", "AUTH PLAIN\r\nMAIL FROM:<alice@example.com>\r\n"),
            ("S", &format!("{SEQ_NO_HELO}{SEQ_NO_HELO}")),
            (
                "C",
                &format!("EHLO a\r\nAUTH PLAIN {PLAIN_ALICE}\r\nMAIL FROM:<alice@example.com>\r\n"),
            ),
            ("S", &ehlo_tls()),
            ("E", "AUTH Plain alice@example.com secret"),
            ("DEADLINE", "none"),
            ("AUTH_OK", "alice@example.com"),
            ("S", &format!("{AUTH_OK}{MAIL_OK}")),
            (
                "C",
                "RCPT TO:<c@d.example>\r\nRSET\r\nMAIL FROM:<bob@example.com>\r\nMAIL FROM:<>\r\n",
            ),
            (
                "S",
                &format!(
                    "{RCPT_OK}{OK}550 5.7.1 Sender address rejected: not owned by user \
                     alice@example.com\r\n{MAIL_OK}"
                ),
            ),
            ("C", "AUTH LOGIN\r\nSTARTTLS\r\n"),
            (
                "S",
                "503 5.5.1 Already authenticated\r\n503 5.5.1 TLS already active\r\n",
            ),
        ],
    );
}

#[test]
fn auth_exchanges() {
    script_with(
        submissions(),
        &[
            ("S", GREETING),
            ("C", "AUTH PLAIN\r\nEHLO a\r\nAUTH PLAIN\r\n"),
            ("S", &format!("{SEQ_NO_HELO}{}334 \r\n", ehlo_tls())),
            (
                "C",
                "*\r\nAUTH PLAIN\r\n!!!\r\nAUTH PLAIN =\r\nAUTH CRAM-MD5\r\n",
            ),
            (
                "S",
                "501 5.0.0 Authentication cancelled\r\n334 \r\n501 5.5.2 Cannot decode response\r\n\
                 501 5.5.2 Malformed authentication data\r\n\
                 504 5.5.4 Unrecognized authentication type\r\n",
            ),
            // authzid different from authcid: refused without asking the checker.
            ("C", "AUTH PLAIN Ym9iAGFsaWNlAHg=\r\n"),
            ("S", AUTH_BAD),
            ("C", "AUTH LOGIN\r\nYWxpY2U=\r\nc2VjcmV0\r\nNOOP\r\n"),
            ("S", "334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n"),
            ("E", "AUTH Login alice secret"),
            ("AUTH_BAD", ""),
            ("S", &format!("{AUTH_BAD}{OK}")),
            ("C", "AUTH LOGIN YWxpY2U=\r\nc2VjcmV0\r\n"),
            ("S", "334 UGFzc3dvcmQ6\r\n"),
            ("E", "AUTH Login alice secret"),
            ("AUTH_BAD", ""),
            ("S", &format!("{AUTH_BAD}{AUTH_TOO_MANY}")),
            ("E", "CLOSE"),
        ],
    );
    script_with(
        submissions(),
        &[
            ("S", GREETING),
            (
                "C",
                &format!("EHLO a\r\nAUTH PLAIN {PLAIN_ALICE}\r\nQUIT\r\n"),
            ),
            ("S", &ehlo_tls()),
            ("E", "AUTH Plain alice@example.com secret"),
            ("AUTH_THROTTLED", ""),
            ("S", AUTH_TOO_MANY),
            ("E", "CLOSE"),
        ],
    );
    // A checker that cannot answer is a temporary failure (RFC 4954 §6), not the client's
    // fault: 454, the session goes on and a later AUTH can succeed.
    script_with(
        submissions(),
        &[
            ("S", GREETING),
            ("C", &format!("EHLO a\r\nAUTH PLAIN {PLAIN_ALICE}\r\n")),
            ("S", &ehlo_tls()),
            ("E", "AUTH Plain alice@example.com secret"),
            ("AUTH_UNAVAILABLE", ""),
            ("S", "454 4.7.0 Temporary authentication failure\r\n"),
            ("C", &format!("AUTH PLAIN {PLAIN_ALICE}\r\nQUIT\r\n")),
            ("E", "AUTH Plain alice@example.com secret"),
            ("AUTH_OK", "alice@example.com"),
            ("S", &format!("{AUTH_OK}{BYE}")),
            ("E", "CLOSE"),
        ],
    );
}

#[test]
fn auth_inside_a_transaction_is_refused() {
    let setup = Setup {
        tls: true,
        ..trusted()
    };
    script_with(
        setup,
        &[
            ("S", GREETING),
            (
                "C",
                "EHLO a\r\nMAIL FROM:<a@b.example>\r\nAUTH LOGIN\r\nRSET\r\nAUTH LOGIN\r\n",
            ),
            (
                "S",
                &format!(
                    "{}{MAIL_OK}503 5.5.1 AUTH not permitted during a mail transaction\r\n\
                     {OK}334 VXNlcm5hbWU6\r\n",
                    ehlo_tls()
                ),
            ),
        ],
    );
}

#[test]
fn authenticated_user_may_relay_with_domain_pattern() {
    script_with(
        submissions(),
        &[
            ("S", GREETING),
            ("C", "EHLO a\r\nAUTH PLAIN\r\n"),
            ("S", &format!("{}334 \r\n", ehlo_tls())),
            ("C", &format!("{PLAIN_ALICE}\r\n")),
            ("E", "AUTH Plain alice@example.com secret"),
            ("AUTH_OK", "alice *@Example.com"),
            (
                "C",
                "MAIL FROM:<Bob@EXAMPLE.com>\r\nRCPT TO:<c@d.example>\r\n",
            ),
            ("S", &format!("{AUTH_OK}{MAIL_OK}{RCPT_OK}")),
        ],
    );
}

#[test]
fn starttls_errors() {
    script_with(
        Setup {
            starttls: false,
            ..Setup::default()
        },
        &[
            ("S", GREETING),
            ("C", "STARTTLS\r\nSTARTTLS now\r\n"),
            (
                "S",
                "454 4.7.0 TLS not available\r\n501 5.5.4 Syntax: STARTTLS\r\n",
            ),
        ],
    );
    script_with(
        submissions(),
        &[
            ("S", GREETING),
            ("C", "STARTTLS\r\n"),
            ("S", "503 5.5.1 TLS already active\r\n"),
        ],
    );
}

#[test]
fn syntax_errors_and_error_limit() {
    let mut setup = trusted();
    setup.limits.max_bad_commands = 5;
    script_with(
        setup,
        &[
            ("S", GREETING),
            (
                "C",
                "FOO\r\nEHLO\r\nEHLO a\r\nMAIL FROM:<a>\r\nMAIL FROM:<a@b.example> X=1\r\n",
            ),
            (
                "S",
                &format!(
                    "{UNKNOWN}501 5.5.4 Syntax: EHLO hostname\r\n{}\
                     501 5.1.7 Bad sender address syntax\r\n555 5.5.4 Unsupported parameter X\r\n",
                    ehlo_plain()
                ),
            ),
            (
                "C",
                "MAIL FROM:<a@b.example>\r\nRCPT TO:c@d.example\r\n\
                 RCPT TO:<c@d.example> NOTIFY=NEVER,DELAY\r\n",
            ),
            (
                "S",
                &format!(
                    "{MAIL_OK}501 5.1.3 Bad recipient address syntax\r\n\
                     421 4.7.0 Too many errors\r\n"
                ),
            ),
            ("E", "CLOSE"),
            ("C", "QUIT\r\n"),
            ("S", ""),
        ],
    );
    script_with(
        trusted(),
        &[
            ("S", GREETING),
            (
                "C",
                "EHLO a\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example> NOTIFY=NEVER,DELAY\r\n",
            ),
            (
                "S",
                &format!(
                    "{}{MAIL_OK}501 5.5.4 Invalid NOTIFY value\r\n",
                    ehlo_plain()
                ),
            ),
            ("C", "MAIL FROM:<a@b.example> BODY=BINARYMIME\r\nBDAT x\r\n"),
            (
                "S",
                "555 5.5.4 Unsupported parameter BODY=BINARYMIME\r\n\
                 501 5.5.4 Syntax: BDAT size [LAST]\r\n",
            ),
        ],
    );
}

#[test]
fn line_too_long_is_discarded_without_buffering() {
    let mut setup = trusted();
    setup.limits.max_line_length = 16;
    let long = format!("NOOP {}\r\nNOOP\r\n", "x".repeat(40));
    script_with(
        setup,
        &[
            ("S", GREETING),
            ("C", "NOOP 123456789\r\n"), // exactly 16 bytes
            ("S", OK),
            ("C", "NOOP 1234567890\n"), // 16 bytes with bare LF
            ("S", OK),
            ("C", "NOOP 1234567890\r\n"), // 17 bytes
            ("S", "500 5.5.2 Line too long\r\n"),
            ("C", &long),
            ("S", &format!("500 5.5.2 Line too long\r\n{OK}")),
        ],
    );
}

#[test]
fn timeouts() {
    let mut setup = trusted();
    setup.limits.data_timeout = Duration::from_secs(60);
    // Only the idle timeouts here; the transfer rate has its own tests.
    setup.limits.min_data_rate = 0;
    script_with(
        setup.clone(),
        &[
            ("S", GREETING),
            ("WAIT", "299"),
            ("DEADLINE", "1"),
            (
                "C",
                "EHLO a\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\nDATA\r\n",
            ),
            (
                "S",
                &format!("{}{MAIL_OK}{RCPT_OK}{GO_AHEAD}", ehlo_plain()),
            ),
            ("DEADLINE", "60"),
            ("WAIT", "59"),
            ("C", "partial"),
            ("WAIT", "59"),
            ("S", ""),
            ("WAIT", "1"),
            ("S", TIMEOUT),
            ("E", "CLOSE"),
            ("DEADLINE", "none"),
        ],
    );
    script_with(
        setup,
        &[
            ("S", GREETING),
            ("WAIT", "300"),
            ("S", TIMEOUT),
            ("E", "CLOSE"),
            ("WAIT", "1000"),
            ("SHUTDOWN", ""),
        ],
    );
}

#[test]
fn shutdown() {
    script_with(
        trusted(),
        &[
            ("S", GREETING),
            ("C", "EHLO a\r\n"),
            ("S", &ehlo_plain()),
            ("SHUTDOWN", ""),
            ("S", SHUTDOWN),
            ("E", "CLOSE"),
        ],
    );
    script_with(
        trusted(),
        &[
            ("S", GREETING),
            (
                "C",
                "EHLO a\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<c@d.example>\r\n",
            ),
            ("S", &format!("{}{MAIL_OK}{RCPT_OK}", ehlo_plain())),
            ("SHUTDOWN", ""),
            ("C", "DATA\r\nx\r\n.\r\nMAIL FROM:<a@b.example>\r\n"),
            ("S", GO_AHEAD),
            ("E", "COMMIT <a@b.example> <c@d.example> \"x\\r\\n\""),
            ("COMMIT_OK", "0000000000000001"),
            ("S", &format!("{QUEUED}{SHUTDOWN}")),
            ("E", "CLOSE"),
        ],
    );
    script_with(
        trusted(),
        &[
            ("S", GREETING),
            ("C", "EHLO a\r\nMAIL FROM:<a@b.example>\r\n"),
            ("SHUTDOWN", ""),
            ("C", "RSET\r\n"),
            ("S", &format!("{}{MAIL_OK}{OK}{SHUTDOWN}", ehlo_plain())),
            ("E", "CLOSE"),
        ],
    );
}

/// The transaction carries every envelope field, with DSN parameters decoded.
#[test]
fn commit_event_carries_the_whole_envelope() {
    let now = Instant::now();
    let mut s = session(&submissions(), now);
    let input = format!(
        "EHLO client.example\r\nAUTH PLAIN {PLAIN_ALICE}\r\n\
         MAIL FROM:<alice@example.com> RET=HDRS ENVID=id+2B1 SMTPUTF8 BODY=8BITMIME\r\n\
         RCPT TO:<c@d.example> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;C+40d.example\r\n\
         BDAT 5 LAST\r\nhello"
    );
    let n = s.handle_input(input.as_bytes(), now);
    assert!(matches!(s.poll_event(), Some(Event::Authenticate { .. })));
    s.handle_auth_result(AuthOutcome::Success(auth_user("alice@example.com")), now);
    assert_eq!(s.handle_input(&input.as_bytes()[n..], now), input.len() - n);
    let Some(Event::Commit(id, t)) = s.poll_event() else {
        panic!("no commit");
    };
    assert_eq!(id, TxnId(1));
    let want = Transaction {
        helo: "client.example".into(),
        esmtp: true,
        peer: "192.0.2.1:40000".parse::<SocketAddr>().unwrap(),
        tls: Some(tls_info()),
        auth_user: Some("alice@example.com".into()),
        reverse_path: ReversePath::parse("<alice@example.com>").unwrap(),
        body_type: BodyType::EightBitMime,
        smtputf8: true,
        ret: Some(Ret::Hdrs),
        envid: Some("id+1".into()),
        deliver_by: None,
        mt_priority: None,
        recipients: vec![Recipient {
            forward_path: Mailbox::parse("c@d.example").unwrap(),
            notify: Notify {
                never: false,
                success: true,
                failure: true,
                delay: false,
            },
            orcpt: Some("rfc822;C@d.example".into()),
        }],
        feedback: false,
        body: b"hello".to_vec(),
    };
    assert_eq!(*t, want);
}

/// A generator biased toward SMTP: verbs, CRLF pieces, dots and random bytes.
fn smtp_bytes() -> impl Strategy<Value = Vec<u8>> {
    let token = prop_oneof![
        Just(b"EHLO a\r\n".to_vec()),
        Just(b"MAIL FROM:<a@b.example>\r\n".to_vec()),
        Just(b"RCPT TO:<c@d.example>\r\n".to_vec()),
        Just(b"DATA\r\n".to_vec()),
        Just(b"BDAT 3\r\n".to_vec()),
        Just(b"BDAT 2 LAST\r\n".to_vec()),
        Just(b"AUTH PLAIN\r\n".to_vec()),
        Just(b"AUTH LOGIN\r\n".to_vec()),
        Just(b"STARTTLS\r\n".to_vec()),
        Just(b"\r\n.\r\n".to_vec()),
        Just(b".".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"\n".to_vec()),
        prop::collection::vec(any::<u8>(), 0..40),
    ];
    prop::collection::vec(token, 0..30).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Arbitrary input never panics; output stays proportional to input; results and events
    /// are driven back so the session keeps moving.
    #[test]
    fn random_input_never_panics(input in smtp_bytes(), chunk in 1usize..64, role in 0u8..3) {
        let now = Instant::now();
        let mut setup = Setup {
            role: [PortRole::Relay, PortRole::Submission, PortRole::Submissions][role as usize],
            tls: role == 2,
            trusted: role == 0,
            ..Setup::default()
        };
        setup.limits.max_line_length = 64;
        setup.limits.max_message_size = 64;
        let mut s = session(&setup, now);
        let mut out = Vec::new();
        s.poll_output(&mut out);
        let mut pending: Vec<u8> = Vec::new();
        let mut fed = 0;
        for piece in input.chunks(chunk) {
            pending.extend_from_slice(piece);
            fed += piece.len();
            loop {
                let n = s.handle_input(&pending, now);
                pending.drain(..n);
                let mut progressed = false;
                while let Some(e) = s.poll_event() {
                    match e {
                        Event::Commit(id, t) => {
                            prop_assert!(t.body.len() <= 64);
                            s.handle_commit(id, Ok(QueueId(1)), now);
                            progressed = true;
                        }
                        Event::Authenticate { .. } => {
                            s.handle_auth_result(AuthOutcome::BadCredentials, now);
                            progressed = true;
                        }
                        Event::ApproveMail => {
                            s.handle_mail_approval(true, now);
                            progressed = true;
                        }
                        Event::StartTls => {
                            s.handle_tls_established(tls_info(), now);
                        }
                        Event::Close => {}
                    }
                }
                if !progressed || pending.is_empty() {
                    break;
                }
            }
            let before = out.len();
            s.poll_output(&mut out);
            prop_assert!(out.len() - before <= 32 * piece.len() + 256);
        }
        prop_assert!(out.len() <= 32 * fed + 512);
        s.handle_timeout(now + Duration::from_secs(301));
        prop_assert!(s.is_closed() || s.poll_timeout().is_none());
    }
}

/// Slowloris: a client that drips a command line one byte at a time, each byte well within the
/// idle timeout, is still cut off once the line has taken the whole command timeout.
#[test]
fn a_dripped_command_line_times_out_from_its_first_byte() {
    let start = Instant::now();
    let mut s = relay_session(SessionLimits::default(), true, start);
    let mut out = Vec::new();
    s.poll_output(&mut out);
    let mut now = start;
    for b in b"EHLO slow.client.example" {
        now += Duration::from_secs(60);
        s.handle_input(&[*b], now);
        s.handle_timeout(now);
        if s.is_closed() {
            break;
        }
    }
    assert!(s.is_closed(), "the dripped line was never cut");
    out.clear();
    s.poll_output(&mut out);
    assert!(
        String::from_utf8_lossy(&out).starts_with("421 4.4.2"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    // The cut came 300 s after the first byte, not after the last one.
    assert!(now - start <= Duration::from_secs(60 + 300));
}

/// A session on the relay role with these limits, greeting already drained.
fn relay_session(limits: SessionLimits, trusted: bool, start: Instant) -> ServerSession {
    let config = Arc::new(SessionConfig {
        hostname: "mx.test".into(),
        role: PortRole::Relay,
        limits,
        starttls_available: false,
        feedback_domain: None,
    });
    let peer = PeerInfo {
        addr: "127.0.0.1:1".parse().unwrap(),
        is_trusted: trusted,
    };
    let mut s = ServerSession::new(config, peer, None, start);
    s.poll_output(&mut Vec::new());
    s
}

/// Feeds `line` at `now` and returns the reply text it produced.
fn say(s: &mut ServerSession, line: &[u8], now: Instant) -> String {
    s.handle_input(line, now);
    let mut out = Vec::new();
    s.poll_output(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Feeds `pieces` one every `gap` after the transaction opened by `open`; returns the time of
/// the cut, or `None` if every piece went through, and the output.
fn drip<'a>(
    limits: SessionLimits,
    open: &[&[u8]],
    pieces: impl IntoIterator<Item = &'a [u8]>,
    gap: Duration,
) -> (Option<Duration>, String) {
    let start = Instant::now();
    let mut s = relay_session(limits, true, start);
    for line in open {
        say(&mut s, line, start);
    }
    let mut now = start;
    for piece in pieces {
        now += gap;
        s.handle_timeout(now);
        if s.is_closed() {
            break;
        }
        s.handle_input(piece, now);
    }
    let mut out = Vec::new();
    s.poll_output(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    (s.is_closed().then(|| now - start), text)
}

const DATA_OPEN: [&[u8]; 4] = [
    b"EHLO c.example\r\n",
    b"MAIL FROM:<a@example.org>\r\n",
    b"RCPT TO:<b@example.net>\r\n",
    b"DATA\r\n",
];

/// A body dripped one byte every 10 s never trips the 300 s idle timeout, but falls below
/// `min_data_rate` once `data_timeout` has passed since DATA.
#[test]
fn a_dripped_body_is_cut_at_the_minimum_data_rate() {
    let limits = SessionLimits {
        min_data_rate: 100,
        ..SessionLimits::default()
    };
    let body = [b'x'; 200];
    let (cut, text) = drip(limits, &DATA_OPEN, body.chunks(1), Duration::from_secs(10));
    let cut = cut.expect("the dripped body was never cut");
    assert!(
        text.starts_with("421 4.4.2") && text.contains("too slow"),
        "{text}"
    );
    // Deadline: 300 s + 31 bytes / 100 B/s, checked at the next 10 s step.
    assert!(
        cut > Duration::from_secs(300) && cut <= Duration::from_secs(320),
        "{cut:?}"
    );

    let off = SessionLimits {
        min_data_rate: 0,
        ..SessionLimits::default()
    };
    let (cut, _) = drip(off, &DATA_OPEN, body.chunks(1), Duration::from_secs(10));
    assert_eq!(
        cut, None,
        "with the limit off only the idle timeout applies"
    );
}

/// A large body at a modest rate keeps earning time: the deadline grows with the bytes.
#[test]
fn a_steady_transfer_above_the_minimum_rate_is_never_cut() {
    let limits = SessionLimits {
        min_data_rate: 1000,
        max_message_size: 10 << 20,
        ..SessionLimits::default()
    };
    let start = Instant::now();
    let mut s = relay_session(limits, true, start);
    for line in DATA_OPEN {
        say(&mut s, line, start);
    }
    // 2 KB every second for 20 minutes: twice the minimum rate, far past data_timeout.
    let chunk = [b'y'; 2048];
    let mut now = start;
    for _ in 0..1200 {
        now += Duration::from_secs(1);
        s.handle_timeout(now);
        assert!(!s.is_closed(), "cut after {:?}", now - start);
        s.handle_input(&chunk, now);
    }
    let text = say(&mut s, b"\r\n.\r\n", now);
    assert!(text.is_empty(), "{text}");
    assert!(matches!(s.poll_event(), Some(Event::Commit(..))));
}

/// BDAT in many tiny chunks is one transfer: the rate counts from the first chunk, across the
/// command lines in between.
#[test]
fn tiny_bdat_chunks_are_one_transfer_for_the_minimum_rate() {
    let limits = SessionLimits {
        min_data_rate: 100,
        ..SessionLimits::default()
    };
    let chunks = std::iter::repeat_n(&b"BDAT 1\r\nz"[..], 100);
    let (cut, text) = drip(limits, &DATA_OPEN[..3], chunks, Duration::from_secs(10));
    let cut = cut.expect("the chunked drip was never cut");
    assert!(cut <= Duration::from_secs(320), "{cut:?}");
    assert!(
        text.contains("421 4.4.2") && text.contains("too slow"),
        "{text}"
    );
}

#[test]
fn a_refused_mail_approval_gets_450_without_counting_a_bad_command() {
    let limits = SessionLimits {
        max_bad_commands: 1,
        ..SessionLimits::default()
    };
    let start = Instant::now();
    let mut s = relay_session(limits, false, start);
    s.require_mail_approval();
    say(&mut s, b"EHLO c.example\r\n", start);
    assert_eq!(say(&mut s, b"MAIL FROM:<a@example.org>\r\n", start), "");
    assert!(matches!(s.poll_event(), Some(Event::ApproveMail)));
    assert_eq!(
        s.poll_timeout(),
        None,
        "no deadline while the application decides"
    );
    s.handle_mail_approval(true, start);
    assert_eq!(say(&mut s, b"", start), "250 2.1.0 Ok\r\n");
    assert!(say(&mut s, b"RSET\r\n", start).starts_with("250"));
    for _ in 0..3 {
        assert_eq!(say(&mut s, b"MAIL FROM:<a@example.org>\r\n", start), "");
        assert!(matches!(s.poll_event(), Some(Event::ApproveMail)));
        s.handle_mail_approval(false, start);
        let text = say(&mut s, b"", start);
        assert!(text.starts_with("450 4.7.1"), "{text}");
    }
    assert!(!s.is_closed(), "rate refusals are not bad commands");
    // A MAIL the session refuses by itself never reaches the application.
    assert!(say(&mut s, b"MAIL FROM:<a@example.org> SIZE=x\r\n", start).starts_with("501"));
    assert!(s.poll_event().is_none());
}

/// Pipelined commands behind a MAIL wait for its approval, then run in order.
#[test]
fn commands_pipelined_after_mail_wait_for_the_approval() {
    let start = Instant::now();
    let mut s = relay_session(SessionLimits::default(), false, start);
    s.require_mail_approval();
    say(&mut s, b"EHLO c.example\r\n", start);
    let input = b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\n";
    let used = s.handle_input(input, start);
    assert_eq!(used, b"MAIL FROM:<a@example.org>\r\n".len());
    let mut out = Vec::new();
    s.poll_output(&mut out);
    assert!(out.is_empty(), "{:?}", String::from_utf8_lossy(&out));
    assert!(matches!(s.poll_event(), Some(Event::ApproveMail)));
    s.handle_mail_approval(false, start);
    let rest = say(&mut s, &input[used..], start);
    assert!(rest.starts_with("450 4.7.1"), "{rest}");
    assert!(
        rest.contains("\r\n503 5.5.1"),
        "RCPT without a transaction: {rest}"
    );
}

/// Keep-alives cannot hold a session forever: past `max_junk_commands` each NOOP counts as a
/// bad command, and an accepted message starts the count again (pooled clients that RSET
/// between messages are never cut).
#[test]
fn junk_commands_beyond_the_limit_count_as_errors_until_a_message_is_accepted() {
    let limits = SessionLimits {
        max_junk_commands: 5,
        max_bad_commands: 2,
        ..SessionLimits::default()
    };
    let start = Instant::now();
    let mut s = relay_session(limits.clone(), true, start);
    for i in 0..(5 + 2) {
        assert!(
            say(&mut s, b"NOOP\r\n", start).starts_with("250"),
            "noop {i}"
        );
    }
    assert!(say(&mut s, b"NOOP\r\n", start).starts_with("421 4.7.0"));
    assert!(s.is_closed());

    let mut s = relay_session(limits, true, start);
    for round in 0..10 {
        for _ in 0..5 {
            assert!(
                say(&mut s, b"RSET\r\n", start).starts_with("250"),
                "round {round}"
            );
        }
        for line in DATA_OPEN {
            say(&mut s, line, start);
        }
        say(&mut s, b"hi\r\n.\r\n", start);
        let Some(Event::Commit(txn, _)) = s.poll_event() else {
            panic!("no commit in round {round}");
        };
        s.handle_commit(txn, Ok(QueueId(round)), start);
        s.poll_output(&mut Vec::new());
    }
    assert!(!s.is_closed());
}

/// `BDAT 0` repeated moves no byte but answers 250 and resets the idle timer; the transfer clock
/// started at the first BDAT command cuts it.
#[test]
fn repeated_empty_bdat_chunks_are_cut_by_the_transfer_clock() {
    let limits = SessionLimits {
        min_data_rate: 100,
        ..SessionLimits::default()
    };
    let chunks = std::iter::repeat_n(&b"BDAT 0\r\n"[..], 100);
    let (cut, text) = drip(limits, &DATA_OPEN[..3], chunks, Duration::from_secs(10));
    let cut = cut.expect("empty chunks held the session");
    assert!(cut <= Duration::from_secs(320), "{cut:?}");
    assert!(text.contains("too slow"), "{text}");
}

/// Refusals a client can repeat forever (relay denied, message rate) count as junk, so an
/// untrusted client retrying RCPT cannot hold its session either.
#[test]
fn repeated_relay_refusals_count_as_junk() {
    let limits = SessionLimits {
        max_junk_commands: 3,
        max_bad_commands: 1,
        ..SessionLimits::default()
    };
    let start = Instant::now();
    let mut s = relay_session(limits, false, start);
    say(&mut s, b"EHLO c.example\r\n", start);
    say(&mut s, b"MAIL FROM:<a@example.org>\r\n", start);
    for i in 0..(3 + 1) {
        let text = say(&mut s, b"RCPT TO:<b@example.net>\r\n", start);
        assert!(text.starts_with("554 5.7.1"), "rcpt {i}: {text}");
    }
    let text = say(&mut s, b"RCPT TO:<b@example.net>\r\n", start);
    assert!(text.starts_with("421 4.7.0"), "{text}");
    assert!(s.is_closed());
}
