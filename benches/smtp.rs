//! Protocol hot paths: command parsing, DATA receive (un-stuffing), dot-stuffing, a whole
//! pipelined session through `ServerSession`, and reply parsing. Reported as bytes/s.
//!
//! Run: `cargo bench --bench smtp`

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use ringmta::ids::QueueId;
use ringmta::smtp::{
    Command, DataReceiver, Event, PeerInfo, PortRole, Reply, ReplyLimits, ServerSession,
    SessionConfig, SessionLimits, stuff,
};

fn body(size: usize) -> Vec<u8> {
    let line = b"The quick brown fox jumps over the lazy dog. 0123456789 abcdefghijklmnopq\r\n";
    let mut b = b"From: a@example.com\r\nTo: b@example.net\r\nSubject: bench\r\n\r\n".to_vec();
    while b.len() < size {
        b.extend_from_slice(line);
    }
    b
}

fn commands(c: &mut Criterion) {
    let lines: [&[u8]; 4] = [
        b"EHLO client.example.com\r\n",
        b"MAIL FROM:<sender@example.com> SIZE=12345 BODY=8BITMIME\r\n",
        b"RCPT TO:<recipient@example.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;recipient@example.net\r\n",
        b"DATA\r\n",
    ];
    let bytes: usize = lines.iter().map(|l| l.len()).sum();
    let mut g = c.benchmark_group("command_parse");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("ehlo_mail_rcpt_data", |b| {
        b.iter(|| {
            for l in &lines {
                let _ = black_box(Command::parse(black_box(&l[..l.len() - 2])));
            }
        })
    });
    g.finish();
}

fn data_receive(c: &mut Criterion) {
    let mut g = c.benchmark_group("data_receive");
    for size in [1024usize, 100 * 1024] {
        let wire = stuff(&body(size));
        g.throughput(Throughput::Bytes(wire.len() as u64));
        g.bench_function(format!("{size}B"), |b| {
            b.iter(|| {
                let mut rx = DataReceiver::new(64 << 20);
                black_box(rx.feed(black_box(&wire)));
                black_box(rx.into_body().len())
            })
        });
    }
    g.finish();
    let mut g = c.benchmark_group("dot_stuff");
    let b100 = body(100 * 1024);
    g.throughput(Throughput::Bytes(b100.len() as u64));
    g.bench_function("100KiB", |b| {
        b.iter(|| black_box(stuff(black_box(&b100)).len()))
    });
    g.finish();
}

fn session(c: &mut Criterion) {
    let config = Arc::new(SessionConfig {
        hostname: "mx.bench".into(),
        role: PortRole::Relay,
        limits: SessionLimits::default(),
        starttls_available: false,
        feedback_domain: None,
    });
    let mut g = c.benchmark_group("server_session");
    for size in [1024usize, 100 * 1024] {
        let mut wire =
            b"EHLO c.example\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n"
                .to_vec();
        wire.extend_from_slice(&stuff(&body(size)));
        wire.extend_from_slice(b"QUIT\r\n");
        g.throughput(Throughput::Bytes(wire.len() as u64));
        g.bench_function(format!("transaction_{size}B"), |b| {
            b.iter(|| {
                let now = Instant::now();
                let peer = PeerInfo {
                    addr: "127.0.0.1:1".parse().unwrap(),
                    is_trusted: true,
                };
                let mut s = ServerSession::new(Arc::clone(&config), peer, None, now);
                let mut out = Vec::new();
                let mut pos = 0;
                while pos < wire.len() {
                    let used = s.handle_input(&wire[pos..], now);
                    pos += used;
                    while let Some(ev) = s.poll_event() {
                        if let Event::Commit(txn, t) = ev {
                            black_box(t.body.len());
                            s.handle_commit(txn, Ok(QueueId(1)), now);
                        }
                    }
                    if used == 0 {
                        break;
                    }
                }
                s.poll_output(&mut out);
                black_box(out.len())
            })
        });
    }
    g.finish();
}

fn replies(c: &mut Criterion) {
    let ehlo = b"250-mx.example.net\r\n250-PIPELINING\r\n250-SIZE 52428800\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250-SMTPUTF8\r\n250 CHUNKING\r\n";
    let mut g = c.benchmark_group("reply_parse");
    g.throughput(Throughput::Bytes(ehlo.len() as u64));
    g.bench_function("ehlo_reply", |b| {
        b.iter(|| black_box(Reply::parse(black_box(ehlo), ReplyLimits::default())))
    });
    g.finish();
}

/// The MIME structure check at the end of DATA, against one pass of `data_receive` over the
/// same bytes as the baseline: a plain 100 KB message (header section only) and a 100 KB
/// multipart/mixed one (text, html and a base64 attachment).
fn mime_check(c: &mut Criterion) {
    use ringmta::content::mime::{MimeLimits, check};
    let limits = MimeLimits {
        max_depth: 100,
        max_parts: 10_000,
    };
    let plain = body(100 * 1024);
    let mut multipart = b"From: a@example.com\r\nMIME-Version: 1.0\r\n\
        Content-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n--outer\r\n\
        Content-Type: multipart/alternative; boundary=\"alt\"\r\n\r\n"
        .to_vec();
    for kind in ["text/plain", "text/html"] {
        multipart.extend(format!("--alt\r\nContent-Type: {kind}\r\n\r\n").bytes());
        multipart.extend_from_slice(&body(10 * 1024)[58..]);
    }
    multipart.extend(
        b"--alt--\r\n--outer\r\nContent-Type: application/pdf\r\n\
        Content-Transfer-Encoding: base64\r\n\r\n",
    );
    while multipart.len() < 100 * 1024 {
        multipart
            .extend(b"JVBERi0xLjQKJcOkw7zDtsOfCjIgMCBvYmoKPDwvTGVuZ3RoIDMgMCBSL0ZpbHRlci9G\r\n");
    }
    multipart.extend(b"--outer--\r\n");
    let mut g = c.benchmark_group("mime_check");
    for (name, msg) in [("plain_100KB", &plain), ("multipart_100KB", &multipart)] {
        assert!(check(msg, limits).is_ok());
        g.throughput(Throughput::Bytes(msg.len() as u64));
        g.bench_function(name, |b| {
            b.iter(|| black_box(check(black_box(msg), limits)))
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    commands,
    data_receive,
    session,
    replies,
    mime_check
);
criterion_main!(benches);
