//! Events per second through the webhook path, end to end: an event log of 20,000 delivery
//! events, one `[[webhooks]]` poster (read, filter, batch by 100, sign, POST, save the offset
//! with fsync) and a minimal HTTP receiver on loopback answering 204. One iteration is the
//! time from starting the poster until its saved offset reaches the end of the log.
//!
//! Run: `cargo bench --bench webhook`

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use ringmta::config::webhooks::{EVENT_TYPES, Webhook};

const EVENTS: u64 = 20_000;

/// Answers every request with 204 after reading its body; one thread per connection.
fn receiver() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                loop {
                    let mut length = 0usize;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let lower = line.to_ascii_lowercase();
                        if let Some(v) = lower.strip_prefix("content-length:") {
                            length = v.trim().parse().unwrap_or(0);
                        }
                        if line == "\r\n" {
                            break;
                        }
                    }
                    let mut body = vec![0; length];
                    if reader.read_exact(&mut body).is_err() {
                        return;
                    }
                    let answer = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n";
                    if reader.get_mut().write_all(answer).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

fn event_log(path: &std::path::Path) -> u64 {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).expect("log"));
    for i in 0..EVENTS {
        writeln!(
            out,
            r#"{{"event_id":"0001a21298f62900-{i}-1-delivered","ts_ms":{},"queue_id":"0001a21298f62900","sender":"app@example.com","user":"app@example.com","recipient":"user{i}@example.net","outcome":"delivered","remote_host":"mx.example.net","reply":"250 2.0.0 Ok: queued as ABC123","category":null,"attempt":1,"next_attempt_ms":null}}"#,
            ringmta::time::unix_ms(std::time::SystemTime::now())
        )
        .expect("write");
    }
    out.flush().expect("flush");
    std::fs::metadata(path).expect("size").len()
}

fn webhook(c: &mut Criterion) {
    let port = receiver();
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("events.jsonl");
    let size = event_log(&log);
    let (tls, _) = ringmta::net::tls::outbound_verifying_config(None).expect("tls");
    let hook = Webhook {
        url: format!("http://127.0.0.1:{port}/hook"),
        secret: "a-bench-secret-of-some-length".into(),
        events: EVENT_TYPES.iter().map(|e| e.to_string()).collect(),
        user: None,
        max_age: Duration::from_secs(86_400),
    };
    let mut g = c.benchmark_group("webhook");
    g.sample_size(10);
    g.throughput(Throughput::Elements(EVENTS));
    g.bench_function("post_20k_events", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                // A fresh state directory: the poster starts from offset 0.
                let state = tempfile::tempdir().expect("state");
                let start = Instant::now();
                ringmta::webhook::start(std::slice::from_ref(&hook), &log, state.path(), &tls)
                    .expect("start");
                loop {
                    let done = std::fs::read_dir(state.path())
                        .expect("state dir")
                        .flatten()
                        .filter(|e| e.path().extension().is_some_and(|x| x == "offset"))
                        .any(|e| {
                            std::fs::read_to_string(e.path())
                                .ok()
                                .and_then(|s| s.trim().parse::<u64>().ok())
                                == Some(size)
                        });
                    if done {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                total += start.elapsed();
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, webhook);
criterion_main!(benches);
