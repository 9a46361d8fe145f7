//! Fault and abuse tests against the real binary: broken TLS, clients that vanish at every
//! step, descriptor exhaustion, a next hop that never answers, a DNS server that is down.

use std::io::{Read, Write};
use std::time::Duration;

use crate::harness::{Raw, Server, Sink, base_config, events, metrics, python};

const CLIENT: &str = include_str!("client.py");

#[test]
fn tls_handshake_garbage_is_dropped_and_the_port_keeps_serving() {
    let s = Server::start("");
    for garbage in [
        &b"\x16\x03\x01\x00\x05hello"[..],
        b"EHLO plaintext-on-465\r\n",
        &[0u8; 4096][..],
    ] {
        let mut c = std::net::TcpStream::connect(s.addr("submissions")).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(garbage).unwrap();
        let mut buf = [0u8; 256];
        // The server answers with a TLS alert or just closes; it never hangs or speaks SMTP.
        let n = match c.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
            Err(e) => panic!("no alert and no close within 10 s: {e}"),
        };
        assert!(n == 0 || buf[0] == 0x15, "unexpected reply {:?}", &buf[..n]);
    }
    let (code, out, err) = python(
        CLIENT,
        &[
            "--port".into(),
            s.port("submissions").to_string(),
            "--mode".into(),
            "ssl".into(),
            "--auth".into(),
            "plain".into(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("OK "), "{out}");
}

#[test]
fn clients_vanishing_at_every_step_leave_nothing_behind() {
    let mut s = Server::start("");
    let steps: &[&[&str]] = &[
        &[],
        &["EHLO a.test"],
        &["EHLO a.test", "MAIL FROM:<a@client.test>"],
        &[
            "EHLO a.test",
            "MAIL FROM:<a@client.test>",
            "RCPT TO:<b@example.net>",
        ],
        &[
            "EHLO a.test",
            "MAIL FROM:<a@client.test>",
            "RCPT TO:<b@example.net>",
            "DATA",
        ],
        &[
            "EHLO a.test",
            "MAIL FROM:<a@client.test>",
            "RCPT TO:<b@example.net>",
            "BDAT 100",
        ],
        &["EHLO a.test", "STARTTLS"],
        &["EHLO a.test", "AUTH LOGIN"],
    ];
    for (i, step) in steps.iter().enumerate() {
        let mut c = Raw::connect(s.addr("smtp"));
        c.reply();
        for cmd in *step {
            c.cmd(cmd);
        }
        // Half a body, then gone.
        if i >= 4 {
            c.send(b"Subject: vanished\r\n\r\npartial");
        }
        drop(c);
    }
    // The server still takes mail.
    let (_, out, _) = python(CLIENT, &["--port".into(), s.port("smtp").to_string()]);
    assert!(out.starts_with("OK "), "{out}");
    // The stop drains every session first.
    s.stop();
    let (code, ls, err) = s.cli(&["queue", "ls"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        ls.contains("1 message(s) in the spool"),
        "only the complete message: {ls}"
    );
}

#[test]
fn descriptor_exhaustion_does_not_stop_the_server() {
    if !crate::harness::have("prlimit") {
        ringmta::testkit::skip("prlimit (util-linux) is not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let cfg = base_config(&dir, "")
        .replace("threads = 2", "threads = 1")
        .replace("http = \"\"", "http = \"127.0.0.1:0\"");
    // Few descriptors: the spool, listeners, io_uring and a handful of connections.
    let s = Server::start_wrapped(&dir, &cfg, &["prlimit", "--nofile=96:96"]);
    let pid = s.child.as_ref().unwrap().id();
    let mut held = Vec::new();
    for _ in 0..150 {
        match std::net::TcpStream::connect(s.addr("smtp")) {
            Ok(c) => held.push(c),
            Err(_) => break,
        }
    }
    assert!(
        held.len() > 96,
        "the test must exceed the descriptor limit ({} connections)",
        held.len()
    );
    // The kernel's backlog takes the connections the server cannot accept: hold them until
    // the server has met EMFILE on an accept (its log says so; counting /proc/PID/fd is not
    // enough, the count can read one below the limit while an accept already fails).
    let open_fds = || std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    s.wait_log("Too many open files", 20);
    drop(held);
    // The operator sees it, once the server has descriptors again to answer /metrics.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while open_fds() > 64 {
        assert!(
            std::time::Instant::now() < deadline,
            "descriptors never came back"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    loop {
        let m = metrics(&s);
        let errors = crate::harness::metric_value(&m, "ringmta_accept_errors_total");
        if errors.is_some_and(|e| e > 0.0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no accept error counted:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Once descriptors are free again, a new client is served normally.
    let mut served = false;
    for _ in 0..100 {
        let (_, out, _) = python(CLIENT, &["--port".into(), s.port("smtp").to_string()]);
        if out.starts_with("OK ") {
            served = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(served, "the server did not recover from EMFILE");
}

#[test]
fn a_next_hop_that_never_answers_times_out_and_frees_its_slot() {
    let sink = Sink::start();
    let extra = format!(
        "[delivery]\nroutes = {{ \"*\" = \"{}\" }}\nmax_connections = 1\ndata_timeout = \"1s\"\nretry_schedule = [\"1h\"]\n",
        sink.addr
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let s = Server::start_in(
        &dir,
        &base_config(&dir, &extra).replace("threads = 2", "threads = 1"),
    );
    // slow- makes the sink hold its end-of-data reply for 10 s.
    let out = python(
        CLIENT,
        &[
            "--port".into(),
            s.port("smtp").to_string(),
            "--to".into(),
            "slow-x@example.net".into(),
        ],
    )
    .1;
    assert!(out.starts_with("OK "), "{out}");
    let out = python(
        CLIENT,
        &[
            "--port".into(),
            s.port("smtp").to_string(),
            "--to".into(),
            "ok@example.net".into(),
        ],
    )
    .1;
    assert!(out.starts_with("OK "), "{out}");
    sink.wait_for("the second message after the timeout", 30, |m| {
        m.iter().any(|x| x.contains("ok@example.net"))
    });
    let ev = crate::harness::wait_events(&s.dir, "both outcomes", 30, |ev| {
        ev.iter().any(|e| e["recipient"] == "ok@example.net")
            && ev.iter().any(|e| e["recipient"] == "slow-x@example.net")
    });
    let slow: Vec<_> = ev
        .iter()
        .filter(|e| e["recipient"] == "slow-x@example.net")
        .collect();
    assert_eq!(slow.len(), 1, "{ev:?}");
    assert_eq!(slow[0]["outcome"], "deferred");
    assert!(
        slow[0]["reply"].as_str().unwrap().contains("timeout"),
        "{ev:?}"
    );
}

#[test]
fn a_dns_server_that_is_down_defers_instead_of_bouncing() {
    let s =
        Server::start("[delivery]\nnameservers = [\"127.0.0.1:1\"]\nretry_schedule = [\"1h\"]\n");
    let out = python(
        CLIENT,
        &[
            "--port".into(),
            s.port("smtp").to_string(),
            "--to".into(),
            "a@unreachable-dns.test".into(),
        ],
    )
    .1;
    assert!(out.starts_with("OK "), "{out}");
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    loop {
        let ev = events(&s.dir);
        if let Some(e) = ev.first() {
            assert_eq!(e["outcome"], "deferred", "{ev:?}");
            assert_eq!(e["category"], "temporary", "{ev:?}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no delivery attempt recorded"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn connections_per_untrusted_ip_are_limited() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let cfg = base_config(
        &dir,
        "[limits]\nmax_connections_per_ip = 3\n[relay]\ntrusted_networks = [\"10.0.0.0/8\"]\n",
    )
    .replace("threads = 2", "threads = 1");
    let s = Server::start_in(&dir, &cfg);
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut c = Raw::connect(s.addr("smtp"));
        assert!(c.reply().starts_with("220"));
        open.push(c);
    }
    let mut fourth = Raw::connect(s.addr("smtp"));
    let r = fourth.reply();
    assert!(r.starts_with("421 4.7.0"), "{r}");
    drop(open.pop());
    Raw::connect_until_greeted(s.addr("smtp"), 10);
}

#[test]
fn connection_rate_per_untrusted_ip_is_limited_across_workers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    // Two workers: SO_REUSEPORT spreads the connections over both, and the count is shared.
    let cfg = base_config(
        &dir,
        "[limits]\nconnection_rate_per_ip = 4\nrate_window = \"1m\"\n\
         [relay]\ntrusted_networks = [\"10.0.0.0/8\"]\n",
    )
    .replace("http = \"\"", "http = \"127.0.0.1:0\"");
    let s = Server::start_in(&dir, &cfg);
    for i in 0..4 {
        let mut c = Raw::connect(s.addr("smtp"));
        let r = c.reply();
        assert!(r.starts_with("220"), "connection {i}: {r}");
        assert!(c.cmd("QUIT").starts_with("221"));
    }
    let mut fifth = Raw::connect(s.addr("smtp"));
    let r = fifth.reply();
    assert!(r.starts_with("421 4.7.0 Connection rate"), "{r}");
    // Other roles share the per-address count; the limit is per address, not per port.
    let mut other = Raw::connect(s.addr("submission"));
    assert!(other.reply().starts_with("421 4.7.0"));
    // The operator sees why.
    let m = metrics(&s);
    assert!(
        m.contains("ringmta_connections_refused_total{reason=\"rate\"} 2\n"),
        "{m}"
    );
}

#[test]
fn message_rate_per_untrusted_unauthenticated_ip_is_limited() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let cfg = base_config(
        &dir,
        "[limits]\nmessage_rate_per_ip = 2\n[relay]\ntrusted_networks = [\"10.0.0.0/8\"]\n",
    )
    .replace("http = \"\"", "http = \"127.0.0.1:0\"");
    let s = Server::start_in(&dir, &cfg);
    let mut c = Raw::greeted(s.addr("smtp"));
    for _ in 0..2 {
        assert!(c.cmd("MAIL FROM:<a@example.org>").starts_with("250"));
        assert!(c.cmd("RSET").starts_with("250"));
    }
    let r = c.cmd("MAIL FROM:<a@example.org>");
    assert!(r.starts_with("450 4.7.1"), "{r}");
    // Refusals are not protocol errors: the session stays open, and a new one is refused too.
    assert!(c.cmd("NOOP").starts_with("250"));
    let mut d = Raw::greeted(s.addr("smtp"));
    assert!(d.cmd("MAIL FROM:<b@example.org>").starts_with("450 4.7.1"));
    let m = metrics(&s);
    assert!(m.contains("ringmta_mail_rate_refused_total 2\n"), "{m}");
}

/// Authenticated submissions from an untrusted address count too (the rate is per address;
/// only trusted networks are exempt): the third message of a session gets 450 4.7.1.
#[test]
fn message_rate_counts_authenticated_submissions_from_untrusted_addresses() {
    let s = Server::start(
        "[limits]\nmessage_rate_per_ip = 2\n[relay]\ntrusted_networks = [\"10.0.0.0/8\"]\n",
    );
    let (code, out, err) = python(
        CLIENT,
        &[
            "--port".into(),
            s.port("submissions").to_string(),
            "--mode".into(),
            "ssl".into(),
            "--auth".into(),
            "plain".into(),
            "--count".into(),
            "3".into(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[..2].iter().all(|l| l.starts_with("OK ")), "{out}");
    assert!(lines[2].starts_with("ERR mail 450 4.7.1"), "{out}");
}

#[test]
fn a_client_dripping_a_body_is_cut_at_the_minimum_data_rate() {
    // Every byte arrives well within data_timeout, so only the transfer rate can cut this.
    let s = Server::start("[limits]\ndata_timeout = \"2s\"\nmin_data_rate = \"20\"\n");
    let mut c = Raw::greeted(s.addr("smtp"));
    assert!(c.cmd("MAIL FROM:<a@example.org>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<b@example.net>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.stream
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let started = std::time::Instant::now();
    let mut reply = String::new();
    // At 3 bytes a second the deadline (2 s + bytes/20) comes after about 2.2 s; 40 bytes
    // (13 s) would finish the message if nothing cut the session.
    for b in b"Subject: drip\r\n\r\nxxxxxxxxxxxxxxxxxxxxxxxxxxx".iter() {
        if c.stream.write_all(&[*b]).is_err() {
            break;
        }
        let mut buf = [0u8; 256];
        if let Ok(n) = c.stream.read(&mut buf) {
            reply = String::from_utf8_lossy(&buf[..n]).into_owned();
            break;
        }
    }
    assert!(
        reply.starts_with("421 4.4.2") && reply.contains("too slow"),
        "got {reply:?} after {:?}",
        started.elapsed()
    );
    // Nothing from the cut transaction was spooled.
    let (code, out, err) = s.cli(&["queue", "ls"]);
    assert_eq!(
        code, 0,
        "queue ls must work for its silence to mean anything: {err}"
    );
    assert!(!out.contains("a@example.org"), "{out}");
}

/// Clients that open a TLS port (or say STARTTLS) and then send nothing are cut by the
/// handshake timeout (`limits.command_timeout`); the read below would otherwise block for its
/// whole 20 s.
#[test]
fn silent_tls_clients_are_cut_by_the_handshake_timeout() {
    let s = Server::start("[limits]\ncommand_timeout = \"1s\"\n");
    let wait_for_close = |c: &mut std::net::TcpStream| {
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let started = std::time::Instant::now();
        // The server may say goodbye with a TLS alert; then it must close.
        let mut rest = Vec::new();
        let read = c.read_to_end(&mut rest);
        let timed_out = read.as_ref().is_err_and(|e| {
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            )
        });
        assert!(!timed_out, "not closed after {:?}", started.elapsed());
        assert!(rest.is_empty() || rest[0] == 0x15, "not an alert: {rest:?}");
    };
    let mut implicit = std::net::TcpStream::connect(s.addr("submissions")).unwrap();
    wait_for_close(&mut implicit);

    let mut starttls = Raw::greeted(s.addr("submission"));
    assert!(starttls.cmd("STARTTLS").starts_with("220"));
    wait_for_close(&mut starttls.stream);
}

/// A client that pipelines EHLOs and never reads the replies fills the socket buffers; the
/// server's write then times out (`limits.data_timeout`) and the connection is closed, so the
/// client's sending ends in an error instead of blocking forever.
#[test]
fn a_client_that_stops_reading_is_cut_by_the_write_timeout() {
    let s = Server::start("[limits]\ndata_timeout = \"1s\"\n");
    let script = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
s.connect(("127.0.0.1", int(sys.argv[1])))
s.settimeout(15)
batch = b"EHLO c\r\n" * 4096         # not a keep-alive: max_junk_commands does not cut it
try:
    for _ in range(4000):          # at most ~130 MB: far more than any socket buffer
        s.sendall(batch)
    print("never blocked")
except socket.timeout:
    print("blocked")               # the server stopped reading and never gave up the slot
except OSError as e:
    print("closed", e.errno)
"#;
    let (code, out, err) = python(script, &[s.port("smtp").to_string()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("closed"), "{out}");
    // The server keeps serving.
    let mut c = Raw::greeted(s.addr("smtp"));
    assert!(c.cmd("NOOP").starts_with("250"));
}

/// A next hop that accepts TCP and hangs up at once: the first failed connection defers every
/// job queued for the destination, so one flush of 30 queued messages costs one connection,
/// not 30 (no reconnect storm against a host that is down).
#[test]
fn a_failing_next_hop_costs_one_connection_per_round_not_one_per_message() {
    let tmp = tempfile::tempdir().unwrap();
    let counter = tmp.path().join("accepts");
    let listener = r#"
import os, socket, sys, time
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen(64); srv.settimeout(1)
print(srv.getsockname()[1], flush=True)
n, deadline = 0, time.time() + 120
while time.time() < deadline:
    try:
        c, _ = srv.accept()
    except socket.timeout:
        continue
    n += 1
    open(sys.argv[1] + ".tmp", "w").write(str(n)); os.replace(sys.argv[1] + ".tmp", sys.argv[1])
    c.close()
"#;
    let mut hop = std::process::Command::new("python3")
        .args(["-c", listener])
        .arg(&counter)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut port = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(hop.stdout.take().unwrap()),
        &mut port,
    )
    .unwrap();
    let accepts = || {
        std::fs::read_to_string(&counter)
            .ok()
            .and_then(|s| s.parse::<u32>().ok())
            .unwrap_or(0)
    };
    let dir = tmp.path().join("spool");
    let cfg = base_config(
        &dir,
        &format!(
            "[delivery]\nroutes = {{ \"*\" = \"127.0.0.1:{}\" }}\nmax_connections = 1\n\
             retry_schedule = [\"1h\"]\n",
            port.trim()
        ),
    )
    .replace("http = \"\"", "http = \"127.0.0.1:0\"");
    let s = Server::start_in(&dir, &cfg);
    let (code, _, err) = python(
        CLIENT,
        &[
            "--port".into(),
            s.port("smtp").to_string(),
            "--count".into(),
            "30".into(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let deferred = |want: usize| {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while events(&dir)
            .iter()
            .filter(|e| e["outcome"] == "deferred")
            .count()
            < want
        {
            assert!(
                std::time::Instant::now() < deadline,
                "waiting for {want} deferrals"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    deferred(30);
    let before = accepts();
    let (code, _, err) = s.cli(&["queue", "flush"]);
    assert_eq!(code, 0, "{err}");
    deferred(60);
    // The hop counts a connection before it hangs up, and a job is deferred only after the
    // hang-up: once all 30 are deferred again, every connection of the flush is counted.
    let after = accepts();
    let _ = hop.kill();
    let _ = hop.wait();
    // One connection per worker at most (the messages may sit in either worker's shard).
    assert!(
        (1..=2).contains(&after.saturating_sub(before)),
        "{} connections for one flush of 30 messages ({before} before, {after} after)",
        after.saturating_sub(before)
    );
}
