//! Fault and abuse tests against the real binary: broken TLS, clients that vanish at every
//! step, descriptor exhaustion, a next hop that never answers, a DNS server that is down.

use std::io::{Read, Write};
use std::time::Duration;

use crate::harness::{Raw, Server, Sink, base_config, events, python};

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
        let n = c.read(&mut buf).unwrap_or(0);
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
    std::thread::sleep(Duration::from_millis(300));
    s.stop();
    let (_, ls, _) = s.cli(&["queue", "ls"]);
    assert!(
        ls.contains("1 message(s) in the spool"),
        "only the complete message: {ls}"
    );
}

#[test]
fn descriptor_exhaustion_does_not_stop_the_server() {
    if !crate::harness::have("prlimit") {
        eprintln!("SKIP: prlimit (util-linux) is not installed");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let cfg = base_config(&dir, "").replace("threads = 2", "threads = 1");
    // Few descriptors: the spool, listeners, io_uring and a handful of connections.
    let s = Server::start_wrapped(&dir, &cfg, &["prlimit", "--nofile=96:96"]);
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
    drop(held);
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
    let ev = events(&s.dir);
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
    std::thread::sleep(Duration::from_millis(200));
    let mut again = Raw::connect(s.addr("smtp"));
    assert!(again.reply().starts_with("220"));
}
