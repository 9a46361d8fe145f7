//! End-to-end delivery: ringmta relays to a real sink on loopback, retries, bounces, sends DSNs
//! and resolves MX records through a real DNS server on loopback.

use crate::harness::{
    Dns, PyServer, Raw, Server, Sink, count_outcome, events, outcomes_of, python, submit,
    wait_events,
};

const CLIENT: &str = include_str!("client.py");

fn routed_to(sink: &Sink, extra: &str) -> String {
    format!(
        "[delivery]\nroutes = {{ \"*\" = \"{}\" }}\n{extra}",
        sink.addr
    )
}

fn to_header(msg: &str) -> &str {
    msg.lines().next().unwrap_or("")
}

#[test]
fn accepted_mail_reaches_the_sink_with_a_received_header() {
    let sink = Sink::start();
    let s = Server::start(&routed_to(&sink, ""));
    let out = submit(&s, &["--count", "3", "--to", "bob@example.net"]);
    assert!(out.iter().all(|l| l.starts_with("OK ")), "{out:?}");
    let msgs = sink.wait_for("3 deliveries", 30, |m| m.len() >= 3);
    for m in &msgs {
        assert_eq!(to_header(m), "X-Sink-Recipients: bob@example.net");
        assert!(
            m.contains("Received: from client.test ([127.0.0.1])"),
            "{m}"
        );
        assert!(m.contains("by mx.test (ringmta) with ESMTP"), "{m}");
        assert!(m.contains("Subject: test "), "{m}");
    }
    let ev = wait_events(&s.dir, "3 deliveries", 30, |ev| {
        count_outcome(ev, "delivered") >= 3
    });
    assert_eq!(count_outcome(&ev, "delivered"), 3, "{ev:?}");
}

#[test]
fn temporary_failures_are_retried_and_permanent_ones_bounce_with_a_dsn() {
    let sink = Sink::start();
    let s = Server::start(&routed_to(&sink, "retry_schedule = [\"1s\"]\n"));
    let out = submit(
        &s,
        &[
            "--to",
            "temp-2-x@example.net",
            "--to",
            "perm-y@example.net",
            "--to",
            "ok@example.net",
        ],
    );
    assert!(out.last().unwrap().starts_with("OK "), "{out:?}");
    let msgs = sink.wait_for("the retried delivery and the DSN", 40, |m| {
        m.iter()
            .any(|x| to_header(x).contains("temp-2-x@example.net"))
            && m.iter()
                .any(|x| to_header(x) == "X-Sink-Recipients: alice@example.com")
    });
    // The accepted recipient went through at the first attempt, with the others refused at RCPT.
    assert!(
        msgs.iter()
            .any(|x| to_header(x) == "X-Sink-Recipients: ok@example.net"),
        "{msgs:?}"
    );
    // The sink stores a message before it replies: wait for ringmta to record the reply.
    wait_outcomes(
        &s.dir,
        "temp-2-x@example.net",
        &["deferred", "deferred", "delivered"],
    );
    let dsn = msgs
        .iter()
        .find(|x| to_header(x) == "X-Sink-Recipients: alice@example.com")
        .unwrap();
    assert!(dsn.contains("multipart/report"), "{dsn}");
    assert!(dsn.contains("report-type=delivery-status"), "{dsn}");
    assert!(dsn.contains("perm-y@example.net"), "{dsn}");
    assert!(dsn.contains("550 5.1.1"), "{dsn}");
    assert!(dsn.contains("Action: failed"), "{dsn}");
    assert!(
        !dsn.contains("Final-Recipient: rfc822;temp-2-x"),
        "only the bounced recipient: {dsn}"
    );
    let ev = wait_events(&s.dir, "the retried delivery", 30, |ev| {
        outcomes_of(ev, "temp-2-x@example.net")
            .last()
            .map(String::as_str)
            == Some("delivered")
    });
    let temp: Vec<_> = ev
        .iter()
        .filter(|e| e["recipient"] == "temp-2-x@example.net")
        .collect();
    assert_eq!(
        temp.iter().filter(|e| e["outcome"] == "deferred").count(),
        2,
        "{temp:?}"
    );
    assert_eq!(temp.last().unwrap()["outcome"], "delivered");
    let perm: Vec<_> = ev
        .iter()
        .filter(|e| e["recipient"] == "perm-y@example.net")
        .collect();
    assert_eq!(perm.len(), 1);
    assert_eq!(perm[0]["outcome"], "bounced");
    assert_eq!(perm[0]["category"], "user_unknown");
    assert_eq!(perm[0]["rule"], "generic.user_unknown", "{:?}", perm[0]);
    // The sink offers no STARTTLS: an opportunistic session in plaintext.
    assert_eq!(
        perm[0]["tls"],
        serde_json::json!({"policy": "opportunistic", "version": null, "cipher": null})
    );
    assert!(
        temp[0].get("rule").is_some_and(|r| r.is_string()),
        "{:?}",
        temp[0]
    );
    assert!(temp.last().unwrap().get("rule").is_none(), "{temp:?}");
}

#[test]
fn expired_recipient_gets_delivery_time_expired_and_one_delay_notice() {
    let sink = Sink::start();
    let extra =
        "retry_schedule = [\"1s\"]\nmax_queue_lifetime = \"4s\"\ndelay_notice_after = \"1s\"\n";
    let s = Server::start(&routed_to(&sink, extra));
    let out = submit(&s, &["--to", "temp-1000-z@example.net"]);
    assert!(out[0].starts_with("OK "), "{out:?}");
    let msgs = sink.wait_for("the expiry DSN", 40, |m| {
        m.iter().any(|x| x.contains("delivery time expired"))
    });
    let to_sender: Vec<_> = msgs
        .iter()
        .filter(|x| to_header(x) == "X-Sink-Recipients: alice@example.com")
        .collect();
    let delays = to_sender
        .iter()
        .filter(|x| x.contains("Action: delayed"))
        .count();
    let failures = to_sender
        .iter()
        .filter(|x| x.contains("Action: failed"))
        .count();
    assert_eq!(delays, 1, "exactly one delay DSN: {to_sender:?}");
    assert_eq!(failures, 1, "{to_sender:?}");
    let failure = to_sender
        .iter()
        .find(|x| x.contains("Action: failed"))
        .unwrap();
    assert!(
        failure.contains("451 4.2.0"),
        "the last reply is quoted: {failure}"
    );
}

#[test]
fn null_sender_and_notify_never_get_no_dsn_but_notify_success_does() {
    // A next hop without DSN: ringmta reports the success itself, as "relayed".
    let sink = Sink::start_with(&["--no-dsn"]);
    let s = Server::start(&routed_to(&sink, ""));
    let mut c = Raw::connect(s.addr("smtp"));
    c.reply();
    c.cmd("EHLO client.test");
    // A bounce (null reverse-path) that bounces: never a DSN about a DSN.
    assert!(c.cmd("MAIL FROM:<>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<perm-a@example.net>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    assert!(c.cmd("Subject: bounce\r\n\r\nx\r\n.").starts_with("250"));
    // NOTIFY=NEVER: no DSN; NOTIFY=SUCCESS: a success DSN.
    assert!(
        c.cmd("MAIL FROM:<carol@client.test> ENVID=env-42")
            .starts_with("250")
    );
    assert!(
        c.cmd("RCPT TO:<perm-b@example.net> NOTIFY=NEVER")
            .starts_with("250")
    );
    assert!(
        c.cmd("RCPT TO:<happy@example.net> NOTIFY=SUCCESS ORCPT=rfc822;happy@example.net")
            .starts_with("250")
    );
    assert!(c.cmd("DATA").starts_with("354"));
    assert!(c.cmd("Subject: notify\r\n\r\nx\r\n.").starts_with("250"));
    let msgs = sink.wait_for("delivery and the success DSN", 30, |m| {
        m.iter()
            .any(|x| to_header(x) == "X-Sink-Recipients: carol@client.test")
    });
    let dsns: Vec<_> = msgs
        .iter()
        .filter(|x| x.contains("multipart/report"))
        .collect();
    assert_eq!(dsns.len(), 1, "{dsns:?}");
    assert!(dsns[0].contains("Action: relayed"), "{}", dsns[0]);
    assert!(
        dsns[0].contains("Original-Envelope-Id: env-42"),
        "{}",
        dsns[0]
    );
    assert!(
        dsns[0].contains("Original-Recipient: rfc822;happy@example.net"),
        "{}",
        dsns[0]
    );
    let ev = wait_events(&s.dir, "2 bounces", 30, |ev| {
        count_outcome(ev, "bounced") >= 2
    });
    assert_eq!(count_outcome(&ev, "bounced"), 2, "{ev:?}");
    assert_eq!(
        sink.messages()
            .iter()
            .filter(|x| x.contains("multipart/report"))
            .count(),
        1
    );
}

#[test]
fn mx_routing_through_a_dns_server_on_loopback() {
    let sink = Sink::start();
    let zone = r#"{"mx.test": {"MX": [[10, "mail.mx.test."], [20, "backup.mx.test."]]},
        "mail.mx.test": {"A": ["127.0.0.1"]}, "backup.mx.test": {"A": ["127.0.0.1"]},
        "alice.example": {"MX": [[10, "mail.mx.test."]]},
        "implicit.test": {"A": ["127.0.0.1"]},
        "nullmx.test": {"MX": [[0, "."]]}, "servfail.test": "SERVFAIL"}"#;
    let Some(dns) = Dns::start(zone) else {
        ringmta::testkit::skip("python3 with dnslib is needed (pip install dnslib)");
        return;
    };
    let extra = format!(
        "[delivery]\nnameservers = [\"127.0.0.1:{}\"]\nsmtp_port = {}\nretry_schedule = [\"1h\"]\n",
        dns.port,
        sink.addr.port()
    );
    let s = Server::start(&extra);
    let out = submit(
        &s,
        &[
            "--sender",
            "news@alice.example",
            "--to",
            "a@mx.test",
            "--to",
            "b@implicit.test",
            "--to",
            "c@nullmx.test",
            "--to",
            "d@nxdomain.test",
            "--to",
            "e@servfail.test",
        ],
    );
    assert!(out[0].starts_with("OK "), "{out:?}");
    let msgs = sink.wait_for("MX and implicit-MX deliveries and the DSN", 30, |m| {
        m.iter().any(|x| to_header(x).contains("a@mx.test"))
            && m.iter().any(|x| to_header(x).contains("b@implicit.test"))
            && m.iter()
                .any(|x| to_header(x) == "X-Sink-Recipients: news@alice.example")
    });
    let ev = wait_events(&s.dir, "the outcomes of the five domains", 30, |ev| {
        ["c@nullmx.test", "d@nxdomain.test", "e@servfail.test"]
            .iter()
            .all(|r| !outcomes_of(ev, r).is_empty())
    });
    let outcome = |r: &str| {
        ev.iter()
            .filter(|e| e["recipient"] == r)
            .map(|e| e["outcome"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(outcome("c@nullmx.test"), ["bounced"]);
    assert_eq!(outcome("d@nxdomain.test"), ["bounced"]);
    assert_eq!(outcome("e@servfail.test"), ["deferred"]);
    let dsns: Vec<_> = msgs
        .iter()
        .filter(|x| x.contains("multipart/report"))
        .collect();
    let all = dsns.iter().map(|d| d.as_str()).collect::<String>();
    assert!(
        all.contains("c@nullmx.test") && all.contains("d@nxdomain.test"),
        "{all}"
    );
    assert!(
        !all.contains("Final-Recipient: rfc822;e@servfail.test"),
        "{all}"
    );
}

#[test]
fn content_is_purged_after_retention_leaving_a_placeholder() {
    let sink = Sink::start();
    let mut s = Server::start(&format!(
        "{}[retention]\ncontent = \"0s\"\n",
        routed_to(&sink, "")
    ));
    let out = submit(&s, &["--to", "bob@example.net"]);
    let id = out[0].strip_prefix("OK ").expect("accepted").to_owned();
    sink.wait_for("the delivery", 30, |m| !m.is_empty());
    // The purge task runs every second with a zero retention.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (_, text, _) = s.cli(&["queue", "show", &id]);
        if text.contains("content purged after delivery") {
            assert!(
                text.contains("bob@example.net") && text.contains("delivered"),
                "{text}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not purged: {text}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    s.stop();
    let (_, ls, _) = s.cli(&["queue", "ls"]);
    assert!(ls.contains("1 purged placeholder(s)"), "{ls}");
}

/// Regression (review of the first delivery cut): with fewer worker threads than shards on
/// disk, the extra shards' queued mail must still be recovered and delivered.
#[test]
fn fewer_threads_than_shards_still_delivers_every_queued_message() {
    let sink = Sink::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let nowhere = "[delivery]\nroutes = { \"*\" = \"127.0.0.1:1\" }\nretry_schedule = [\"1s\"]\n";
    let mut s = Server::start_in(
        &dir,
        &crate::harness::base_config(&dir, nowhere).replace("threads = 2", "threads = 4"),
    );
    let out = submit(
        &s,
        &["--count", "12", "--reconnect", "--to", "bob@example.net"],
    );
    assert!(out.iter().all(|l| l.starts_with("OK ")), "{out:?}");
    s.stop();
    let shards = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("shard-"))
        .count();
    assert_eq!(shards, 4);
    let cfg = crate::harness::base_config(&dir, &routed_to(&sink, "retry_schedule = [\"1s\"]\n"))
        .replace("threads = 2", "threads = 1");
    std::fs::write(&s.config_path, cfg).unwrap();
    s.launch();
    sink.wait_for("all 12 deliveries after the restart", 40, |m| m.len() >= 12);
}

#[test]
fn submission_gets_message_id_date_and_a_tls_received_header() {
    let sink = Sink::start();
    let s = Server::start(&routed_to(&sink, ""));
    let mut argv = vec!["--port".to_owned(), s.port("submissions").to_string()];
    argv.extend(["--mode", "ssl", "--auth", "plain"].map(String::from));
    let (code, out, err) = python(CLIENT, &argv);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("OK "), "{out}");
    let msgs = sink.wait_for("the submitted message", 30, |m| !m.is_empty());
    let m = &msgs[0];
    assert!(m.contains("with ESMTPSA"), "{m}");
    assert!(m.contains("(using TLSv1.3 with cipher TLS13_"), "{m}");
    assert!(m.contains("\r\nDate: "), "{m}");
    assert!(
        m.contains("\r\nMessage-ID: <") && m.contains(".ringmta@mx.test>"),
        "{m}"
    );
}

#[test]
fn next_hop_vanishing_mid_data_is_retried_and_then_delivered() {
    let sink = Sink::start();
    let s = Server::start(&routed_to(&sink, "retry_schedule = [\"1s\"]\n"));
    let out = submit(&s, &["--to", "drop-1-x@example.net"]);
    assert!(out[0].starts_with("OK "), "{out:?}");
    sink.wait_for("the delivery after the dropped connection", 30, |m| {
        m.iter()
            .any(|x| to_header(x).contains("drop-1-x@example.net"))
    });
    let ev = wait_events(&s.dir, "the delivery after the drop", 30, |ev| {
        count_outcome(ev, "delivered") >= 1
    });
    let outcomes: Vec<_> = ev
        .iter()
        .map(|e| e["outcome"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(outcomes, ["deferred", "delivered"], "{ev:?}");
    assert!(
        ev[0]["reply"].as_str().unwrap().contains("closed"),
        "{ev:?}"
    );
}

#[test]
fn per_destination_rate_limit_spaces_deliveries() {
    let sink = Sink::start();
    let s = Server::start(
        &routed_to(&sink, "max_messages_per_second = 5\n").replace("threads = 2", "threads = 1"),
    );
    let out = submit(&s, &["--count", "10", "--to", "bob@example.net"]);
    assert!(out.iter().all(|l| l.starts_with("OK ")), "{out:?}");
    sink.wait_for("10 deliveries", 30, |m| m.len() >= 10);
    let ts: Vec<u64> = wait_events(&s.dir, "10 deliveries", 30, |ev| {
        count_outcome(ev, "delivered") >= 10
    })
    .iter()
    .map(|e| e["ts_ms"].as_u64().unwrap())
    .collect();
    let span = ts.iter().max().unwrap() - ts.iter().min().unwrap();
    // 10 messages at 5/s need at least 9 intervals of 200 ms.
    assert!(span >= 1700, "10 deliveries within {span} ms at 5/s");
}

#[test]
fn required_tls_for_a_domain_defers_when_the_next_hop_has_no_starttls() {
    let sink = Sink::start();
    let s = Server::start(&routed_to(
        &sink,
        "route_tls = { \"secure.example\" = \"required\" }\n",
    ));
    let out = submit(&s, &["--to", "a@secure.example", "--to", "b@example.net"]);
    assert!(out[0].starts_with("OK "), "{out:?}");
    sink.wait_for("the delivery that needs no TLS", 30, |m| {
        m.iter().any(|x| to_header(x).contains("b@example.net"))
    });
    let ev = wait_events(&s.dir, "both outcomes", 30, |ev| {
        !outcomes_of(ev, "a@secure.example").is_empty()
            && !outcomes_of(ev, "b@example.net").is_empty()
    });
    let secure: Vec<_> = ev
        .iter()
        .filter(|e| e["recipient"] == "a@secure.example")
        .collect();
    assert_eq!(secure.len(), 1, "{ev:?}");
    assert_eq!(secure[0]["outcome"], "deferred");
    assert_eq!(secure[0]["category"], "tls");
    assert!(
        !sink
            .messages()
            .iter()
            .any(|x| to_header(x).contains("a@secure.example"))
    );
}

/// The load tool end to end: `loadtest send` (plain with pipelining, and implicit TLS with
/// AUTH) into ringmta, relayed to `loadtest sink`; its JSON report counts what the sink got.
#[test]
fn loadtest_send_reports_what_reached_the_sink() {
    let sink = Sink::start();
    let s = Server::start(&routed_to(&sink, ""));
    let run = |args: &[&str]| -> serde_json::Value {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
            .args([
                "send",
                "--json",
                "--messages",
                "40",
                "--connections",
                "4",
                "--size",
                "2048",
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let plain = run(&[
        "--target",
        &s.addr("smtp").to_string(),
        "--pipelining",
        "--per-connection",
        "5",
    ]);
    assert_eq!(plain["messages_ok"], 40, "{plain}");
    assert_eq!(plain["codes"]["250"], 40, "{plain}");
    assert!(
        plain["latency"]["data_250"]["count"].as_u64().unwrap() == 40,
        "{plain}"
    );
    let auth = format!("alice@example.com:{}", crate::harness::PASSWORD);
    let tls = run(&[
        "--target",
        &s.addr("submissions").to_string(),
        "--tls",
        "implicit",
        "--auth",
        &auth,
        "--from",
        "alice@example.com",
    ]);
    assert_eq!(tls["messages_ok"], 40, "{tls}");
    sink.wait_for("all 80 messages", 30, |m| m.len() >= 80);
}

/// Recipients listed on the sink's `X-Sink-Recipients` line.
fn sink_recipients(msg: &str) -> Vec<&str> {
    to_header(msg)
        .trim_start_matches("X-Sink-Recipients: ")
        .split(',')
        .collect()
}

/// 10,000 recipients in one transaction: all accepted (the 10,001st gets 452 4.5.3), spooled
/// once, and delivered in transactions of `delivery.max_recipients_per_transaction` (1,000).
/// The next hop takes only 300 per transaction; the rest of each batch goes in the next
/// transaction at once (RFC 5321 §4.5.3.1.10), not at the next retry an hour later.
#[test]
fn ten_thousand_recipients_are_accepted_and_delivered_in_batches() {
    let sink = Sink::start_with(&["--max-recipients", "300"]);
    let extra = format!(
        "[limits]\nmax_recipients = 10000\n{}",
        routed_to(
            &sink,
            "max_recipients_per_transaction = 1000\nretry_schedule = [\"1h\"]\n"
        )
    );
    let s = Server::start(&extra);
    let mut c = Raw::connect(s.addr("smtp"));
    c.reply();
    c.cmd("EHLO client.test");
    let mut cmds = String::from("MAIL FROM:<a@client.test>\r\n");
    for i in 0..10_001 {
        cmds.push_str(&format!("RCPT TO:<r{i}@example.net>\r\n"));
    }
    // Written from another thread: the replies to a 300 KB pipeline are read meanwhile.
    let mut w = c.stream.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        w.write_all(cmds.as_bytes()).unwrap();
    });
    assert!(c.reply().starts_with("250"));
    for i in 0..10_000 {
        let r = c.reply();
        assert!(r.starts_with("250 2.1.5"), "recipient {i}: {r}");
    }
    let r = c.reply();
    assert!(r.starts_with("452 4.5.3"), "{r}");
    writer.join().unwrap();
    assert!(c.cmd("DATA").starts_with("354"));
    let r = c.cmd("Subject: many\r\n\r\nhello\r\n.");
    assert!(r.starts_with("250 2.0.0"), "{r}");

    let total = |m: &[String]| m.iter().map(|x| sink_recipients(x).len()).sum::<usize>();
    let msgs = sink.wait_for("10,000 recipients", 120, |m| total(m) >= 10_000);
    let mut all: Vec<&str> = msgs.iter().flat_map(|m| sink_recipients(m)).collect();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 10_000, "every recipient exactly once");
    assert_eq!(total(&msgs), 10_000, "no recipient twice");
    // Each batch of 1,000 goes as 300 + 300 + 300 + 100.
    assert!(msgs.iter().all(|m| sink_recipients(m).len() <= 300));
    assert_eq!(msgs.len(), 40);
}

/// The config of a server with one worker and one connection per destination, whose queue API
/// listens on loopback (the `queue` CLI talks to it).
fn one_connection(sink: &Sink, dir: &std::path::Path, extra: &str) -> String {
    crate::harness::base_config(
        dir,
        &format!(
            "{extra}{}",
            routed_to(sink, "max_connections = 1\nretry_schedule = [\"1h\"]\n")
        ),
    )
    .replace("threads = 2", "threads = 1")
    .replace("http = \"\"", "http = \"127.0.0.1:0\"")
}

fn accepted_id(out: &[String]) -> String {
    out[0]
        .strip_prefix("OK ")
        .unwrap_or_else(|| panic!("not accepted: {out:?}"))
        .to_owned()
}

/// Outcomes in the event log of one recipient, in order.
fn outcomes(dir: &std::path::Path, rcpt: &str) -> Vec<String> {
    events(dir)
        .iter()
        .filter(|e| e["recipient"] == rcpt)
        .map(|e| e["outcome"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// Waits (bounded) until the event log shows `want` for `rcpt` (the sink stores a message
/// before its end-of-data reply, so the sink can have it before ringmta recorded it).
fn wait_outcomes(dir: &std::path::Path, rcpt: &str, want: &[&str]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let got = outcomes(dir, rcpt);
        if got == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{rcpt}: expected {want:?}, the event log has {got:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Regression (issue 23, bug 3): an operator's bounce or delete left the message's job on its
/// destination queue, and the connection that took it sent it anyway: the bounced message
/// arrived after its failure DSN, the deleted one arrived too, and the event log showed neither
/// delivery. A bounce of a message whose transaction is already under way must not claim a
/// failure the next hop is about to contradict.
#[test]
fn operator_bounce_and_delete_stop_queued_work() {
    // Every end-of-data reply takes 3 s: the first message holds the only connection while the
    // others wait on the destination queue.
    let sink = Sink::start_with(&["--delay", "3000"]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let s = Server::start_in(&dir, &one_connection(&sink, &dir, ""));
    let a = accepted_id(&submit(&s, &["--to", "a@example.net"]));
    let b = accepted_id(&submit(&s, &["--to", "b@example.net"]));
    let c = accepted_id(&submit(&s, &["--to", "c@example.net"]));
    let _d = accepted_id(&submit(&s, &["--to", "d@example.net"]));
    for (verb, id) in [("bounce", &b), ("delete", &c), ("bounce", &a)] {
        let (code, text, err) = s.cli(&["queue", verb, id]);
        assert_eq!(code, 0, "{verb} {id}: {err}");
        assert!(text.contains(":1"), "{verb} {id}: {text}");
    }
    let msgs = sink.wait_for("d and the DSN for b", 40, |m| {
        m.iter().any(|x| to_header(x).contains("d@example.net"))
            && m.iter()
                .any(|x| to_header(x) == "X-Sink-Recipients: alice@example.com")
    });
    let recipients: Vec<&str> = msgs.iter().map(|m| to_header(m)).collect();
    assert!(
        !recipients.iter().any(|r| r.contains("b@example.net")),
        "the bounced message was delivered: {recipients:?}"
    );
    assert!(
        !recipients.iter().any(|r| r.contains("c@example.net")),
        "the deleted message was delivered: {recipients:?}"
    );
    // a was under way when it was bounced: the next hop took it, so it counts as delivered and
    // the only DSN is about b.
    assert!(recipients.iter().any(|r| r.contains("a@example.net")));
    let dsns: Vec<&String> = msgs
        .iter()
        .filter(|x| x.contains("multipart/report"))
        .collect();
    assert_eq!(dsns.len(), 1, "{dsns:?}");
    assert!(dsns[0].contains("Final-Recipient: rfc822;b@example.net"));
    assert!(dsns[0].contains("Bounced by the operator"), "{}", dsns[0]);
    wait_outcomes(&dir, "d@example.net", &["delivered"]);
    assert_eq!(outcomes(&dir, "a@example.net"), ["delivered"]);
    assert_eq!(outcomes(&dir, "b@example.net"), ["bounced"]);
    assert_eq!(outcomes(&dir, "c@example.net"), ["deleted"]);
    let (_, show, _) = s.cli(&["queue", "show", &c]);
    assert!(show.contains("deleted"), "{show}");
}

/// Review of the issue 23 fix: a recipient bounced while its transaction was under way, and
/// refused by the next hop only for its per-transaction limit, must not go out in the next
/// transaction (the over-limit requeue bypassed the operator's bounce).
#[test]
fn an_operator_bounce_also_stops_recipients_over_the_next_hops_limit() {
    let sink = Sink::start_with(&["--delay", "3000", "--max-recipients", "1"]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let s = Server::start_in(&dir, &one_connection(&sink, &dir, ""));
    let id = accepted_id(&submit(
        &s,
        &["--to", "first@example.net", "--to", "second@example.net"],
    ));
    // The first transaction carries both; the sink takes one, stores it and holds its reply
    // 3 s: once it is stored, the transaction is under way.
    sink.wait_for("the first transaction", 10, |m| {
        m.iter().any(|x| to_header(x).contains("first@example.net"))
    });
    let (code, text, err) = s.cli(&["queue", "bounce", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains(":2"), "{text}");
    wait_outcomes(&dir, "second@example.net", &["bounced"]);
    wait_outcomes(&dir, "first@example.net", &["delivered"]);
    let msgs = sink.wait_for("the DSN about second", 30, |m| {
        m.iter()
            .any(|x| to_header(x) == "X-Sink-Recipients: alice@example.com")
    });
    assert!(
        !msgs
            .iter()
            .any(|x| to_header(x).contains("second@example.net")),
        "{msgs:?}"
    );
}

/// Regression (issue 23, bug 4): a connection that took a job whose message had been purged
/// meanwhile sat idle with no deadline, and with one connection per destination nothing else
/// went there again.
#[test]
fn a_job_whose_message_was_purged_does_not_stall_its_connection() {
    // 600 KB messages in 1 MiB segments: each has a segment of its own, which purge removes
    // (retention 0) as soon as its message is final.
    let sink = Sink::start_with(&["--delay", "3000"]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let config = one_connection(
        &sink,
        &dir,
        "[spool]\nsegment_size = \"1MiB\"\n[retention]\ncontent = \"0s\"\n",
    );
    let s = Server::start_in(&dir, &config);
    let big = ["--size", "600000"];
    let _a = accepted_id(&submit(
        &s,
        &[&big[..], &["--to", "a@example.net"]].concat(),
    ));
    let b = accepted_id(&submit(
        &s,
        &[&big[..], &["--to", "b@example.net"]].concat(),
    ));
    let _c = accepted_id(&submit(
        &s,
        &[&big[..], &["--to", "c@example.net"]].concat(),
    ));
    let (code, _, err) = s.cli(&["queue", "delete", &b]);
    assert_eq!(code, 0, "{err}");
    // The purge (every second) removes b's content while a holds the connection.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, text, _) = s.cli(&["queue", "show", &b]);
        if text.contains("purged") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "b not purged: {text}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    sink.wait_for("c after a", 30, |m| {
        m.iter().any(|x| to_header(x).contains("c@example.net"))
    });
    wait_outcomes(&dir, "c@example.net", &["delivered"]);
}

/// Regression (issue 23, bug 5): with NOTIFY=SUCCESS passed on to a next hop that offers DSN,
/// the next hop reports the delivery (RFC 3461 §5.2.2); ringmta sent its own "delivered" too.
#[test]
fn notify_success_passed_on_to_a_dsn_next_hop_gets_no_dsn_from_us() {
    let sink = Sink::start();
    let s = Server::start(&routed_to(&sink, ""));
    let mut c = Raw::greeted(s.addr("smtp"));
    assert!(c.cmd("MAIL FROM:<carol@client.test>").starts_with("250"));
    assert!(
        c.cmd("RCPT TO:<happy@example.net> NOTIFY=SUCCESS,FAILURE")
            .starts_with("250")
    );
    assert!(c.cmd("DATA").starts_with("354"));
    assert!(c.cmd("Subject: notify\r\n\r\nx\r\n.").starts_with("250"));
    // A second message, after it on the same path: once it arrived, a DSN queued for the
    // first (in the same step that recorded its delivery) would have had its turn too.
    assert!(c.cmd("MAIL FROM:<carol@client.test>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<later@example.net>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    assert!(c.cmd("Subject: later\r\n\r\nx\r\n.").starts_with("250"));
    sink.wait_for("both deliveries", 30, |m| {
        m.iter().any(|x| to_header(x).contains("later@example.net"))
            && m.iter().any(|x| to_header(x).contains("happy@example.net"))
    });
    assert_eq!(outcomes(&s.dir, "happy@example.net"), ["delivered"]);
    // Every message ringmta queued, DSNs included, stays in the spool after a clean stop:
    // no message from <> means no DSN was ever made.
    let mut s = s;
    assert_eq!(s.stop(), Some(0));
    let (code, ls, err) = s.cli(&["queue", "ls"]);
    assert_eq!(code, 0, "{err}");
    assert!(ls.contains("2 message(s) in the spool"), "{ls}");
    assert!(
        !ls.contains("<>  carol@client.test"),
        "a DSN was queued:\n{ls}"
    );
    let reports: Vec<String> = sink
        .messages()
        .into_iter()
        .filter(|x| x.contains("multipart/report"))
        .collect();
    assert!(reports.is_empty(), "{reports:?}");
}

/// Regression (issue 23, bug 6): the DSN to a sender with a non-ASCII address went out without
/// SMTPUTF8, a conforming next hop refused its RCPT, and the failure notice was lost silently.
#[test]
fn a_dsn_to_a_non_ascii_sender_goes_out_with_smtputf8() {
    let sink = Sink::start();
    let s = Server::start(&routed_to(&sink, ""));
    let mut c = Raw::greeted(s.addr("smtp"));
    let r = c.cmd("MAIL FROM:<jörg@bücher.example> SMTPUTF8");
    assert!(r.starts_with("250"), "{r}");
    assert!(c.cmd("RCPT TO:<perm-x@example.net>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    assert!(c.cmd("Subject: utf8\r\n\r\nx\r\n.").starts_with("250"));
    let msgs = sink.wait_for("the failure DSN to jörg", 30, |m| {
        m.iter()
            .any(|x| to_header(x) == "X-Sink-Recipients: jörg@bücher.example")
    });
    let dsn = msgs
        .iter()
        .find(|x| to_header(x) == "X-Sink-Recipients: jörg@bücher.example")
        .unwrap();
    assert!(
        dsn.contains("Final-Recipient: rfc822;perm-x@example.net"),
        "{dsn}"
    );
    assert!(dsn.contains("Action: failed"), "{dsn}");
}

/// The libfaketime preload library, when installed (Debian package `faketime`).
fn libfaketime() -> Option<std::path::PathBuf> {
    [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ]
    .iter()
    .map(std::path::PathBuf::from)
    .find(|p| p.exists())
}

/// Regression (issue 23, bug 2): after the wall clock stepped back, a recipient deferred with a
/// delay shorter than the step was due at once in the wheel (its deadline lay before the
/// wheel's high-water mark), then dropped as "not due yet": never retried, never expired, no
/// DSN. The server runs under libfaketime, whose offset the test moves back one hour while it
/// runs; the monotonic clock is left alone, as an NTP step leaves it.
#[test]
fn a_backward_clock_step_does_not_strand_deferred_recipients() {
    let Some(lib) = libfaketime() else {
        ringmta::testkit::skip("libfaketime is needed (apt-get install faketime)");
        return;
    };
    let sink = Sink::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let offset = tmp.path().join("faketime");
    std::fs::write(&offset, "+0\n").unwrap();
    let config =
        crate::harness::base_config(&dir, &routed_to(&sink, "retry_schedule = [\"2s\"]\n"))
            .replace("threads = 2", "threads = 1");
    let lib = lib.to_string_lossy().into_owned();
    let offset_path = offset.to_string_lossy().into_owned();
    let s = Server::start_in_env(
        &dir,
        &config,
        &[
            ("LD_PRELOAD", &lib),
            ("FAKETIME_TIMESTAMP_FILE", &offset_path),
            ("FAKETIME_CACHE_DURATION", "1"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    // One delivery on the true time, then step the wall clock back one hour, and probe until a
    // delivery is stamped an hour behind (libfaketime rereads its file at most once a second).
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let delivered_at = |rcpt: &str| {
        wait_outcomes(&dir, rcpt, &["delivered"]);
        let ev = events(&dir);
        let e = ev.iter().find(|e| e["recipient"] == rcpt).unwrap();
        e["ts_ms"].as_u64().unwrap()
    };
    submit(&s, &["--to", "before@example.net"]);
    assert!(now_ms().abs_diff(delivered_at("before@example.net")) < 600_000);
    std::fs::write(&offset, "-3600\n").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    for probe in 0.. {
        let rcpt = format!("probe-{probe}@example.net");
        submit(&s, &["--to", &rcpt]);
        if now_ms().saturating_sub(delivered_at(&rcpt)) > 3_000_000 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server's clock never stepped back"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // The first attempt gets 451 (greylisting); the retry 2 s later is accepted.
    let out = submit(&s, &["--to", "temp-1-grey@example.net"]);
    assert!(out[0].starts_with("OK "), "{out:?}");
    sink.wait_for("the retried delivery after the clock step", 30, |m| {
        m.iter()
            .any(|x| to_header(x).contains("temp-1-grey@example.net"))
    });
    wait_outcomes(&dir, "temp-1-grey@example.net", &["deferred", "delivered"]);
    let ev = events(&dir);
    // The retry ran on the stepped clock, an hour behind.
    let grey = ev
        .iter()
        .rfind(|e| e["recipient"] == "temp-1-grey@example.net")
        .unwrap();
    let ts = grey["ts_ms"].as_u64().unwrap();
    assert!(
        now_ms().saturating_sub(ts) > 3_000_000,
        "event at {ts}, now {}",
        now_ms()
    );
}

/// Outbound STARTTLS really happens: ringmta A relays with `tls = "required"` to ringmta B,
/// a real next hop that offers STARTTLS; B records the message as received over TLS.
#[test]
fn outbound_starttls_is_negotiated_with_a_next_hop_that_offers_it() {
    let hop = Server::start("");
    let relay = Server::start(&format!(
        "[delivery]\nroutes = {{ \"*\" = \"{}\" }}\ntls = \"required\"\n",
        hop.addr("smtp")
    ));
    let out = submit(&relay, &["--to", "tls@example.net"]);
    assert!(out[0].starts_with("OK "), "{out:?}");
    wait_events(&relay.dir, "the delivery to the next hop", 30, |ev| {
        count_outcome(ev, "delivered") == 1
    });
    let (code, ls, err) = hop.cli(&["queue", "ls"]);
    assert_eq!(code, 0, "{err}");
    let id = ls
        .lines()
        .find(|l| l.contains("tls@example.net"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("the next hop has no message for tls@example.net:\n{ls}"));
    let (code, show, err) = hop.cli(&["queue", "show", id]);
    assert_eq!(code, 0, "{err}");
    assert!(
        show.contains("tls:         TLSv1."),
        "not received over TLS:\n{show}"
    );
}

/// Sites and host-wide limits (issue 13): two domains whose MX records name the same host are
/// one site, and with `threads = 2` and `max_connections = 2` the host never sees a third
/// connection, whichever core queued the mail. The sink logs, at each EHLO, how many
/// connections it has open; it answers each message after 100 ms so that connections overlap.
#[test]
fn two_domains_on_one_mx_share_one_host_wide_connection_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("connections");
    let sink = Sink::start_with(&["--delay", "100", "--connection-log", log.to_str().unwrap()]);
    let zone = r#"{"a.test": {"MX": [[10, "mx.shared.test."]]},
        "b.test": {"MX": [[20, "MX.shared.test."]]},
        "mx.shared.test": {"A": ["127.0.0.1"]}}"#;
    let Some(dns) = Dns::start(zone) else {
        ringmta::testkit::skip("python3 with dnslib is needed (pip install dnslib)");
        return;
    };
    let s = Server::start(&format!(
        "[delivery]\nnameservers = [\"127.0.0.1:{}\"]\nsmtp_port = {}\nmax_connections = 2\n",
        dns.port,
        sink.addr.port()
    ));
    // One connection per message: the kernel spreads them over both workers.
    let out = submit(
        &s,
        &[
            "--count",
            "30",
            "--reconnect",
            "--to",
            "x@a.test",
            "--to",
            "y@b.test",
        ],
    );
    assert!(out.iter().all(|l| l.starts_with("OK ")), "{out:?}");
    // One transaction per message and domain.
    sink.wait_for("60 deliveries", 60, |m| m.len() == 60);
    let lines = std::fs::read_to_string(&log).unwrap();
    let open: Vec<usize> = lines
        .lines()
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(open.len() >= 2, "{lines}");
    let peak = open.iter().copied().max().unwrap();
    assert_eq!(peak, 2, "connections open at once, at each EHLO:\n{lines}");
}

/// Throttling (issue 13): a next hop's `421 4.7.28` rate-limit reply pauses its site for
/// `delivery.throttle_pause`: the 200 messages queued meanwhile wait, with no connection and no
/// deferral of their own, and go once the pause is over. The pause is an event and a metric.
#[test]
fn a_rate_limit_reply_pauses_the_site_while_the_queued_mail_waits() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("connections");
    let sink = Sink::start_with(&["--connection-log", log.to_str().unwrap()]);
    let dir = tmp.path().join("spool");
    let config = crate::harness::base_config(
        &dir,
        &routed_to(
            &sink,
            "max_connections = 2\nthrottle_pause = \"3s\"\nthrottle_ramp_step = \"1s\"\n\
             retry_schedule = [\"1h\"]\n",
        ),
    )
    .replace("http = \"\"", "http = \"127.0.0.1:0\"");
    let s = Server::start_in(&dir, &config);
    submit(&s, &["--to", "throttle-1-first@example.net"]);
    let ev = wait_events(&dir, "the site paused", 30, |ev| {
        ev.iter().any(|e| e["event"] == "site_throttled")
    });
    let paused = ev.iter().find(|e| e["event"] == "site_throttled").unwrap();
    assert_eq!(paused["signal"], "rate_limited", "{paused}");
    assert_eq!(paused["site"], sink.addr.to_string(), "{paused}");
    assert!(paused["reply"].as_str().unwrap().starts_with("421 4.7.28"));
    let (from, until) = (
        paused["ts_ms"].as_u64().unwrap(),
        paused["paused_until_ms"].as_u64().unwrap(),
    );
    assert_eq!(until - from, 3_000);
    // 200 messages while the site is paused.
    let out = submit(&s, &["--count", "200", "--to", "waiting@example.net"]);
    assert!(out.iter().all(|l| l.starts_with("OK ")), "{out:?}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        now < until,
        "the test sent the 200 too slowly to see the pause"
    );
    sink.wait_for("the 200 waiting messages", 60, |m| m.len() == 200);
    let ev = wait_events(&dir, "200 deliveries", 30, |ev| {
        crate::harness::count_outcome(ev, "delivered") == 200
    });
    // One deferral: the throttled recipient's. The others waited in the queue.
    assert_eq!(crate::harness::count_outcome(&ev, "deferred"), 1, "{ev:?}");
    // The sink saw the throttled connection, then none until the pause was over.
    let lines = std::fs::read_to_string(&log).unwrap();
    let times: Vec<u64> = lines
        .lines()
        .map(|l| l.split(' ').next().unwrap().parse().unwrap())
        .collect();
    assert!(times[0] <= from, "{lines}");
    let during: Vec<&u64> = times[1..].iter().filter(|t| **t < until).collect();
    assert!(
        during.is_empty(),
        "connections during the pause: {during:?}\n{lines}"
    );
    let m = crate::harness::metrics(&s);
    let throttles =
        crate::harness::metric_value(&m, "ringmta_site_throttles_total{signal=\"rate_limited\"}");
    assert_eq!(throttles, Some(1.0), "{m}");
    // The path's own counts: 200 accepted, the throttled attempt deferred.
    let path = format!("site=\"{}\",source=\"\"", sink.addr);
    for (outcome, want) in [("delivered", 200.0), ("deferred", 1.0), ("rejected", 0.0)] {
        let sample = format!("ringmta_path_attempts_total{{{path},outcome=\"{outcome}\"}}");
        assert_eq!(
            crate::harness::metric_value(&m, &sample),
            Some(want),
            "{sample}\n{m}"
        );
    }
}

/// The sink's connection log as `(client address, EHLO name, connections open from it)`.
fn connection_log(path: &std::path::Path) -> Vec<(String, String, usize)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[1].to_owned(), f[2].to_owned(), f[3].parse().unwrap())
        })
        .collect()
}

/// Egress sources and pools (issue 13): the default pool's two sources connect from 127.0.0.2
/// and 127.0.0.3 with their own EHLO names, `max_connections = 1` holds per egress path (source,
/// site), and an authenticated user's own pool overrides the default.
#[test]
fn egress_sources_bind_their_address_and_name_and_a_users_pool_wins() {
    let tmp = tempfile::tempdir().unwrap();
    let (log, user_log) = (tmp.path().join("default"), tmp.path().join("user"));
    let sink = Sink::start_with(&["--delay", "50", "--connection-log", log.to_str().unwrap()]);
    let user_sink = Sink::start_with(&["--connection-log", user_log.to_str().unwrap()]);
    let dir = tmp.path().join("spool");
    // The first line belongs to alice's [[users]] entry in the base config.
    let extra = format!(
        "egress_pool = \"only-b\"\n\
         [delivery]\nroutes = {{ \"user-dest.test\" = \"{}\", \"*\" = \"{}\" }}\n\
         max_connections = 1\negress_pool = \"both\"\n\
         [[egress.sources]]\nname = \"a\"\naddress = \"127.0.0.2\"\nehlo = \"a.out.test\"\n\
         [[egress.sources]]\nname = \"b\"\naddress = \"127.0.0.3\"\nehlo = \"b.out.test\"\n\
         [[egress.pools]]\nname = \"both\"\nsources = [\"a\", \"b\"]\n\
         [[egress.pools]]\nname = \"only-b\"\nsources = [\"b\"]\n",
        user_sink.addr, sink.addr
    );
    let s = Server::start_in(&dir, &crate::harness::base_config(&dir, &extra));
    let out = submit(
        &s,
        &["--count", "30", "--reconnect", "--to", "x@example.net"],
    );
    assert!(out.iter().all(|l| l.starts_with("OK ")), "{out:?}");
    crate::harness::submit_authenticated(&s, "y@user-dest.test", 5);
    sink.wait_for("the 30 relayed messages", 60, |m| m.len() == 30);
    user_sink.wait_for("alice's 5 messages", 60, |m| m.len() == 5);
    let lines = connection_log(&log);
    for (ip, ehlo, open) in &lines {
        match (ip.as_str(), ehlo.as_str()) {
            ("127.0.0.2", "a.out.test") | ("127.0.0.3", "b.out.test") => {}
            other => panic!("a connection from {other:?}: {lines:?}"),
        }
        assert_eq!(*open, 1, "max_connections = 1 per egress path: {lines:?}");
    }
    for ip in ["127.0.0.2", "127.0.0.3"] {
        assert!(
            lines.iter().any(|(i, _, _)| i == ip),
            "{ip} unused: {lines:?}"
        );
    }
    let user_lines = connection_log(&user_log);
    assert!(!user_lines.is_empty());
    assert!(
        user_lines
            .iter()
            .all(|(ip, ehlo, _)| ip == "127.0.0.3" && ehlo == "b.out.test"),
        "alice's pool is only-b: {user_lines:?}"
    );
}

/// A `[[shaping]]` rule (issue 13) sets the limits of the paths it matches over `[delivery]`'s:
/// here one connection at a time and two messages per connection for example.net, where the
/// default would allow four connections of 100 messages.
#[test]
fn a_shaping_rule_limits_the_destination_it_matches() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("connections");
    let sink = Sink::start_with(&["--delay", "50", "--connection-log", log.to_str().unwrap()]);
    let s = Server::start(&routed_to(
        &sink,
        "max_connections = 4\n[[shaping]]\ndomain = \"example.net\"\nmax_connections = 1\n\
         max_messages_per_connection = 2\n",
    ));
    let out = submit(
        &s,
        &["--count", "10", "--reconnect", "--to", "x@example.net"],
    );
    assert!(out.iter().all(|l| l.starts_with("OK ")), "{out:?}");
    sink.wait_for("the 10 messages", 60, |m| m.len() == 10);
    let lines = connection_log(&log);
    assert!(lines.iter().all(|(_, _, open)| *open == 1), "{lines:?}");
    assert!(
        lines.len() >= 5,
        "at most 2 messages per connection: {lines:?}"
    );
}

/// Sends one message on an open raw session: `mail` is the MAIL command (with its parameters),
/// `data` the header and body without the final dot. Returns the reply to the end of data, or
/// to the first command refused.
fn raw_message(c: &mut Raw, mail: &str, rcpt: &str, data: &str) -> String {
    for line in [mail.to_owned(), format!("RCPT TO:<{rcpt}>")] {
        let reply = c.cmd(&line);
        if !reply.starts_with("250") {
            return reply;
        }
    }
    let go = c.cmd("DATA");
    assert!(go.starts_with("354"), "{go}");
    c.send(format!("{data}.\r\n").as_bytes());
    c.reply()
}

fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Per-message expiry (issue 13): a one-time code sent with `X-Ringmta-Expire-After: 5s` (or
/// `BY=3;R` on MAIL) to a next hop that keeps answering 4xx is bounced at its deadline, with
/// "delivery time expired" and the last error, although the retry schedule says one hour; the
/// control headers never reach the next hop; values ringmta cannot honour are refused.
#[test]
fn a_message_that_expires_after_5s_bounces_at_its_deadline_and_its_header_never_leaves() {
    let sink = Sink::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let config =
        crate::harness::base_config(&dir, &routed_to(&sink, "retry_schedule = [\"1h\"]\n"));
    let s = Server::start_in(&dir, &config);
    let mut c = Raw::greeted(s.addr("smtp"));
    let ehlo = c.cmd("EHLO client.example");
    assert!(ehlo.contains("250-DELIVERBY\r\n"), "{ehlo}");
    assert!(ehlo.contains("250-MT-PRIORITY\r\n"), "{ehlo}");
    let from = "MAIL FROM:<alice@example.com>";
    let sent_at = unix_now_ms();
    let otp = "X-Ringmta-Expire-After: 5s\r\nSubject: your code\r\n\r\n123456\r\n";
    let reply = raw_message(&mut c, from, "temp-1000-otp@example.net", otp);
    assert!(reply.starts_with("250 "), "{reply}");
    let by = format!("{from} BY=3;R");
    let reply = raw_message(
        &mut c,
        &by,
        "temp-1000-by@example.net",
        "Subject: by\r\n\r\nx\r\n",
    );
    assert!(reply.starts_with("250 "), "{reply}");
    // The same headers on mail that can go: delivered, without them.
    let fresh = "Subject: fresh\r\nx-ringmta-expire-after:\r\n 1h\r\nX-Ringmta-Priority: high\r\n\
                 \r\nbody\r\n";
    let reply = raw_message(&mut c, from, "fresh@example.net", fresh);
    assert!(reply.starts_with("250 "), "{reply}");
    // What cannot be honoured is refused, with the reason.
    let reply = raw_message(
        &mut c,
        from,
        "x@example.net",
        "X-Ringmta-Expire-After: soon\r\n\r\nx\r\n",
    );
    assert_eq!(
        reply,
        "554 5.6.0 X-Ringmta-Expire-After: \"soon\" is not a duration such as 90s, 10m or 2h\r\n"
    );
    let reply = c.cmd("MAIL FROM:<alice@example.com> BY=0;R");
    assert_eq!(reply, "501 5.5.4 Invalid BY value\r\n");
    let reply = c.cmd("MAIL FROM:<alice@example.com> MT-PRIORITY=12");
    assert_eq!(reply, "501 5.5.4 Invalid MT-PRIORITY value\r\n");
    c.cmd("QUIT");

    let msgs = sink.wait_for("the fresh message and two expiry DSNs", 40, |m| {
        m.iter()
            .filter(|x| x.contains("delivery time expired"))
            .count()
            == 2
            && m.iter().any(|x| x.contains("Subject: fresh"))
    });
    let delivered = msgs.iter().find(|x| x.contains("Subject: fresh")).unwrap();
    assert!(
        !delivered.to_ascii_lowercase().contains("x-ringmta-"),
        "control headers relayed: {delivered}"
    );
    assert!(delivered.ends_with("\r\n\r\nbody\r\n"), "{delivered}");
    for rcpt in ["temp-1000-otp@example.net", "temp-1000-by@example.net"] {
        let dsn = msgs
            .iter()
            .find(|x| x.contains("Action: failed") && x.contains(rcpt))
            .unwrap_or_else(|| panic!("no failure DSN for {rcpt}: {msgs:?}"));
        assert!(dsn.contains("Status: 5.4.7"), "{dsn}");
        assert!(dsn.contains("451 4.2.0"), "the last error is quoted: {dsn}");
    }
    let ev = wait_events(&dir, "two bounces", 20, |ev| {
        count_outcome(ev, "bounced") == 2
    });
    for (rcpt, life) in [
        ("temp-1000-otp@example.net", 5_000),
        ("temp-1000-by@example.net", 3_000),
    ] {
        assert_eq!(outcomes_of(&ev, rcpt), ["deferred", "bounced"], "{ev:?}");
        let bounced = ev
            .iter()
            .find(|e| e["recipient"] == rcpt && e["outcome"] == "bounced")
            .unwrap();
        assert!(
            bounced["reply"]
                .as_str()
                .unwrap()
                .starts_with("delivery time expired; last error: 451 4.2.0"),
            "{bounced}"
        );
        // Not before its deadline; one attempt only (the expiry is no attempt).
        assert!(
            bounced["ts_ms"].as_u64().unwrap() >= sent_at + life,
            "{bounced}"
        );
        assert_eq!(bounced["attempt"], 1, "{bounced}");
    }
}

/// Priority (issue 13): with one connection to the next hop, mail queued while its domain is
/// suspended leaves, once resumed, high priority first (`X-Ringmta-Priority: high`), then
/// normal, then bulk (`MT-PRIORITY=-5` on MAIL), whatever order it was submitted in.
#[test]
fn higher_priority_mail_leaves_the_ready_queue_first() {
    let sink = Sink::start_with(&["--delay", "50"]);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    // One core, so that every message is in one ready queue.
    let config = crate::harness::base_config(&dir, &routed_to(&sink, "max_connections = 1\n"))
        .replace("threads = 2", "threads = 1")
        .replace("http = \"\"", "http = \"127.0.0.1:0\"");
    let s = Server::start_in(&dir, &config);
    let (code, _, err) = s.cli(&["queue", "suspend", "--domain", "example.net"]);
    assert_eq!(code, 0, "{err}");
    let mut c = Raw::greeted(s.addr("smtp"));
    let from = "MAIL FROM:<alice@example.com>";
    let bulk = format!("{from} MT-PRIORITY=-5");
    let mut send = |mail: &str, subject: &str, header: &str| {
        let data = format!("{header}Subject: {subject}\r\n\r\nx\r\n");
        let reply = raw_message(&mut c, mail, "r@example.net", &data);
        assert!(reply.starts_with("250 "), "{reply}");
    };
    for i in 0..3 {
        send(&bulk, &format!("bulk {i}"), "");
    }
    send(from, "normal", "");
    send(from, "high", "X-Ringmta-Priority: high\r\n");
    // The header wins over MT-PRIORITY.
    send(&bulk, "high too", "X-Ringmta-Priority: 3\r\n");
    c.cmd("QUIT");
    let listed = s.cli(&["queue", "suspensions"]).1;
    let id = serde_json::from_str::<serde_json::Value>(&listed).unwrap()[0]["id"]
        .as_u64()
        .unwrap()
        .to_string();
    let (code, _, err) = s.cli(&["queue", "resume", &id]);
    assert_eq!(code, 0, "{err}");
    let msgs = sink.wait_for("6 messages", 30, |m| m.len() == 6);
    let order: Vec<&str> = msgs
        .iter()
        .map(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("Subject: "))
                .unwrap_or("?")
        })
        .collect();
    let lane = |s: &str| match s {
        "high" | "high too" => 0,
        "normal" => 1,
        _ => 2,
    };
    let lanes: Vec<u8> = order.iter().map(|s| lane(s)).collect();
    assert_eq!(lanes, [0, 0, 1, 2, 2, 2], "arrival order: {order:?}");
}

/// Sites carry their domains' mail (issue 13): with one connection allowed to a site, the
/// mail of two domains whose MX records name the same host goes over shared connections:
/// a connection opened for one domain carries the other domain's queued mail too, instead of
/// the second domain waiting for a connection of its own.
#[test]
fn a_connection_to_a_site_carries_the_mail_of_every_domain_on_it() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("transactions");
    let sink = Sink::start_with(&["--delay", "20", "--transaction-log", log.to_str().unwrap()]);
    let zone = r#"{"a.test": {"MX": [[10, "mx.shared.test."]]},
        "b.test": {"MX": [[10, "mx.shared.test."]]},
        "mx.shared.test": {"A": ["127.0.0.1"]}}"#;
    let Some(dns) = Dns::start(zone) else {
        ringmta::testkit::skip("python3 with dnslib is needed (pip install dnslib)");
        return;
    };
    let dir = tmp.path().join("spool");
    let config = crate::harness::base_config(
        &dir,
        &format!(
            "[delivery]\nnameservers = [\"127.0.0.1:{}\"]\nsmtp_port = {}\nmax_connections = 1\n",
            dns.port,
            sink.addr.port()
        ),
    )
    .replace("threads = 2", "threads = 1");
    let s = Server::start_in(&dir, &config);
    // First one message per domain, so that both domains are known to be on the site.
    submit(&s, &["--to", "first@a.test", "--to", "first@b.test"]);
    sink.wait_for("the first two", 30, |m| m.len() == 2);
    // Then 40 messages alternating between the domains, in one session.
    let mut c = Raw::greeted(s.addr("smtp"));
    for i in 0..40 {
        let rcpt = if i % 2 == 0 { "x@a.test" } else { "y@b.test" };
        let reply = raw_message(
            &mut c,
            "MAIL FROM:<alice@example.com>",
            rcpt,
            "Subject: s\r\n\r\nx\r\n",
        );
        assert!(reply.starts_with("250 "), "{reply}");
    }
    c.cmd("QUIT");
    sink.wait_for("42 messages", 60, |m| m.len() == 42);
    let lines = std::fs::read_to_string(&log).unwrap();
    // Which domains each connection (client address and port) carried.
    let mut by_conn: std::collections::HashMap<&str, std::collections::BTreeSet<&str>> =
        std::collections::HashMap::new();
    for l in lines.lines() {
        let (peer, rcpts) = l.split_once(' ').unwrap();
        for r in rcpts.split(',') {
            by_conn
                .entry(peer)
                .or_default()
                .insert(r.rsplit('@').next().unwrap());
        }
    }
    assert!(
        by_conn.values().any(|d| d.len() == 2),
        "no connection carried both domains:\n{lines}"
    );
}

/// A shaping rule's `max_queue_lifetime` (issue 13) shortens the life of the mail to its
/// destination as `delivery.max_queue_lifetime` would: with a one-hour retry schedule, a
/// recipient that keeps getting 4xx gets its last attempt at 3 s and then bounces as expired.
#[test]
fn a_shaping_rules_queue_lifetime_expires_the_mail_it_matches() {
    let sink = Sink::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let extra = format!(
        "{}[[shaping]]\ndomain = \"example.net\"\nmax_queue_lifetime = \"3s\"\n",
        routed_to(&sink, "retry_schedule = [\"1h\"]\n")
    );
    let s = Server::start_in(&dir, &crate::harness::base_config(&dir, &extra));
    let sent_at = unix_now_ms();
    let out = submit(&s, &["--to", "temp-1000-r@example.net"]);
    assert!(out[0].starts_with("OK "), "{out:?}");
    let ev = wait_events(&dir, "the expiry", 30, |ev| {
        count_outcome(ev, "bounced") == 1
    });
    assert_eq!(
        outcomes_of(&ev, "temp-1000-r@example.net"),
        ["deferred", "bounced"]
    );
    let bounced = ev.iter().find(|e| e["outcome"] == "bounced").unwrap();
    assert!(
        bounced["reply"]
            .as_str()
            .unwrap()
            .starts_with("delivery time expired; last error: 451"),
        "{bounced}"
    );
    assert_eq!(
        bounced["attempt"], 2,
        "a last attempt at the expiry: {bounced}"
    );
    assert!(
        bounced["ts_ms"].as_u64().unwrap() >= sent_at + 3_000,
        "{bounced}"
    );
}

/// A test certificate authority (made with rcgen) that writes its root as `ca.pem` in `dir`
/// and issues certificates there.
pub(crate) struct TestCa {
    dir: std::path::PathBuf,
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl TestCa {
    pub(crate) fn new(dir: &std::path::Path) -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "ringmta test CA");
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
        TestCa {
            dir: dir.to_owned(),
            cert,
            key,
        }
    }

    /// A certificate for `names`, written as `<stem>.pem` and `<stem>.key`; returns both paths.
    pub(crate) fn issue(&self, stem: &str, names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.cert, &self.key)
            .unwrap();
        let (pem, k) = (
            self.dir.join(format!("{stem}.pem")),
            self.dir.join(format!("{stem}.key")),
        );
        std::fs::write(&pem, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (pem.display().to_string(), k.display().to_string())
    }
}

/// A ringmta next hop on loopback serving a certificate for `names` from `ca`.
fn tls_hop(ca: &TestCa, names: &[&str]) -> Server {
    let (cert, key) = ca.issue("hop", names);
    Server::start(&format!("[tls]\ncert = \"{cert}\"\nkey = \"{key}\"\n"))
}

/// `tls = "verify"` (issue 14): the next hop's certificate must chain to a trusted root
/// (`delivery.tls_ca_file` here) and name the MX host. A certificate for the host delivers; the
/// same host reached as another MX name, or without the CA trusted, defers with category `tls`
/// and a reply that says what was wrong with the certificate, and nothing reaches the hop.
#[test]
fn verified_tls_delivers_to_a_trusted_certificate_and_defers_any_other() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new(tmp.path());
    let hop = tls_hop(&ca, &["mx.verify.test"]);
    let zone = r#"{"verify.test": {"MX": [[10, "mx.verify.test."]]},
        "wrong.test": {"MX": [[10, "other.wrong.test."]]},
        "mx.verify.test": {"A": ["127.0.0.1"]},
        "other.wrong.test": {"A": ["127.0.0.1"]}}"#;
    let Some(dns) = Dns::start(zone) else {
        ringmta::testkit::skip("python3 with dnslib is needed (pip install dnslib)");
        return;
    };
    let relay_config = |ca: bool| {
        let mut c = format!(
            "[delivery]\nnameservers = [\"127.0.0.1:{}\"]\nsmtp_port = {}\ntls = \"verify\"\n\
             retry_schedule = [\"1h\"]\n",
            dns.port,
            hop.port("smtp")
        );
        if ca {
            c += &format!(
                "tls_ca_file = \"{}\"\n",
                tmp.path().join("ca.pem").display()
            );
        }
        c
    };
    let trusting = Server::start(&relay_config(true));
    let out = submit(
        &trusting,
        &["--to", "a@verify.test", "--to", "b@wrong.test"],
    );
    assert!(out[0].starts_with("OK "), "{out:?}");
    let untrusting = Server::start(&relay_config(false));
    let out = submit(&untrusting, &["--to", "c@verify.test"]);
    assert!(out[0].starts_with("OK "), "{out:?}");

    let ev = wait_events(&trusting.dir, "a delivery and a deferral", 30, |ev| {
        ev.len() == 2
    });
    assert_eq!(outcomes_of(&ev, "a@verify.test"), ["delivered"]);
    let verified = ev
        .iter()
        .find(|e| e["recipient"] == "a@verify.test")
        .unwrap();
    assert_eq!(verified["tls"]["policy"], "verify", "{verified}");
    assert_eq!(verified["tls"]["version"], "TLSv1.3", "{verified}");
    assert!(
        verified["tls"]["cipher"]
            .as_str()
            .is_some_and(|c| c.starts_with("TLS13_")),
        "{verified}"
    );
    let wrong = ev
        .iter()
        .find(|e| e["recipient"] == "b@wrong.test")
        .unwrap();
    assert_eq!(wrong["outcome"], "deferred", "{wrong}");
    assert_eq!(wrong["category"], "tls", "{wrong}");
    let reply = wrong["reply"].as_str().unwrap();
    assert!(
        reply.contains("other.wrong.test") && reply.contains("certificate"),
        "says which host and that its certificate is the problem: {reply}"
    );
    let ev = wait_events(&untrusting.dir, "a deferral", 30, |ev| ev.len() == 1);
    assert_eq!(ev[0]["outcome"], "deferred", "{:?}", ev[0]);
    assert_eq!(ev[0]["category"], "tls", "{:?}", ev[0]);
    let reply = ev[0]["reply"].as_str().unwrap();
    assert!(reply.contains("UnknownIssuer"), "{reply}");
    // Only the verified delivery reached the hop (a refused handshake sends nothing in clear).
    let (code, ls, err) = hop.cli(&["queue", "ls"]);
    assert_eq!(code, 0, "{err}");
    let held: Vec<&str> = ls.lines().filter(|l| l.contains('@')).collect();
    assert!(
        held.iter().any(|l| l.contains("a@verify.test"))
            && !held
                .iter()
                .any(|l| l.contains("b@wrong.test") || l.contains("c@verify.test")),
        "{ls}"
    );
}

/// The bytes a gzip stream holds.
fn gunzip(gz: &[u8]) -> Vec<u8> {
    use std::io::Read as _;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut out)
        .expect("a gzip stream");
    out
}

/// The config of a relay that resolves through the test DNS on `dns_port`, delivers to MX
/// hosts on `smtp_port`, fetches MTA-STS policies on `sts_port` and trusts the test CA in
/// `ca_dir`, retrying hourly; `extra` adds `[delivery]` keys.
fn sts_relay_config(
    dir: &std::path::Path,
    (dns_port, smtp_port, sts_port): (u16, u16, u16),
    ca_dir: &std::path::Path,
    extra: &str,
) -> String {
    crate::harness::base_config(
        dir,
        &format!(
            "[delivery]\nnameservers = [\"127.0.0.1:{dns_port}\"]\nsmtp_port = {smtp_port}\n\
             retry_schedule = [\"1h\"]\nmta_sts_https_port = {sts_port}\ntls_ca_file = \"{}\"\n{extra}",
            ca_dir.join("ca.pem").display()
        ),
    )
}

/// A real HTTPS MTA-STS policy server on loopback (tests/it/sts_server.py) with a certificate
/// from `ca` for every policy host; `policies` maps each host to its policy text.
fn sts_server(ca: &TestCa, policies: &[(&str, &str)], log: &std::path::Path) -> PyServer {
    let hosts: Vec<&str> = policies.iter().map(|(h, _)| *h).collect();
    let (cert, key) = ca.issue("sts", &hosts);
    let map: serde_json::Map<String, serde_json::Value> = policies
        .iter()
        .map(|(h, p)| (h.to_string(), serde_json::Value::from(*p)))
        .collect();
    let args = [
        cert,
        key,
        serde_json::Value::Object(map).to_string(),
        log.display().to_string(),
    ];
    PyServer::start("sts_server.py", &args)
}

/// MTA-STS (issue 14, RFC 8461), with a real HTTPS policy server and DNS on loopback: a domain
/// whose policy is `enforce` gets its mail only over verified TLS to an MX host the policy
/// names — even with `delivery.tls` left opportunistic; a policy that names none of the MX
/// hosts, or an MX host whose certificate does not name it, defers the mail (category `tls`)
/// and the next hop gets nothing. The policy is cached on disk: after a restart it is not
/// fetched again while its TXT id is unchanged.
#[test]
fn an_enforced_mta_sts_policy_allows_only_its_mx_hosts_over_verified_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new(tmp.path());
    // The hop's certificate names mx.sts.test and mx.bad.test, not mx.weak.test.
    let hop = tls_hop(&ca, &["mx.sts.test", "mx.bad.test"]);
    let policy =
        |mx: &str| format!("version: STSv1\r\nmode: enforce\r\nmx: {mx}\r\nmax_age: 86400\r\n");
    let (good, bad, weak) = (
        policy("mx.sts.test"),
        policy("mx.elsewhere.test"),
        policy("*.weak.test"),
    );
    let log = tmp.path().join("sts-requests");
    let sts = sts_server(
        &ca,
        &[
            ("mta-sts.sts.test", &good),
            ("mta-sts.bad.test", &bad),
            ("mta-sts.weak.test", &weak),
        ],
        &log,
    );
    let mut zone = serde_json::Map::new();
    for d in ["sts", "bad", "weak"] {
        zone.insert(
            format!("{d}.test"),
            serde_json::json!({"MX": [[10, format!("mx.{d}.test.")]]}),
        );
        zone.insert(
            format!("mx.{d}.test"),
            serde_json::json!({"A": ["127.0.0.1"]}),
        );
        zone.insert(
            format!("mta-sts.{d}.test"),
            serde_json::json!({"A": ["127.0.0.1"]}),
        );
        zone.insert(
            format!("_mta-sts.{d}.test"),
            serde_json::json!({"TXT": ["v=STSv1; id=20261202a;"]}),
        );
    }
    let Some(dns) = Dns::start(&serde_json::Value::Object(zone).to_string()) else {
        ringmta::testkit::skip("python3 with dnslib is needed (pip install dnslib)");
        return;
    };
    let dir = tmp.path().join("relay");
    let config = sts_relay_config(&dir, (dns.port, hop.port("smtp"), sts.port), tmp.path(), "");
    let mut relay = Server::start_in(&dir, &config);
    let out = submit(
        &relay,
        &[
            "--to",
            "a@sts.test",
            "--to",
            "b@bad.test",
            "--to",
            "c@weak.test",
        ],
    );
    assert!(out[0].starts_with("OK "), "{out:?}");
    let ev = wait_events(&dir, "three outcomes", 30, |ev| ev.len() == 3);
    assert_eq!(outcomes_of(&ev, "a@sts.test"), ["delivered"], "{ev:?}");
    let enforced = ev.iter().find(|e| e["recipient"] == "a@sts.test").unwrap();
    assert_eq!(enforced["tls"]["policy"], "mta-sts", "{enforced}");
    assert_eq!(enforced["tls"]["version"], "TLSv1.3", "{enforced}");
    let of = |rcpt: &str| ev.iter().find(|e| e["recipient"] == rcpt).unwrap().clone();
    let bad = of("b@bad.test");
    assert_eq!(
        (bad["outcome"].as_str(), bad["category"].as_str()),
        (Some("deferred"), Some("tls"))
    );
    assert!(
        bad["reply"].as_str().unwrap().contains("MTA-STS policy of bad.test (enforce, id 20261202a) allows none of its MX hosts (mx.bad.test)"),
        "{bad}"
    );
    let weak = of("c@weak.test");
    assert_eq!(
        (weak["outcome"].as_str(), weak["category"].as_str()),
        (Some("deferred"), Some("tls"))
    );
    assert!(
        weak["reply"].as_str().unwrap().contains("certificate"),
        "{weak}"
    );
    // The next hop has a@sts.test only, received over TLS.
    let (_, ls, _) = hop.cli(&["queue", "ls"]);
    let mine: Vec<&str> = ls.lines().filter(|l| l.contains(".test")).collect();
    assert!(
        mine.len() == 1 && mine[0].contains("a@sts.test"),
        "the next hop holds: {ls}"
    );
    let id = mine[0].split_whitespace().next().unwrap();
    let (_, show, _) = hop.cli(&["queue", "show", id]);
    assert!(show.contains("tls:         TLSv1."), "{show}");
    // One fetch per policy; the cache on disk survives a restart.
    let fetched = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("mta-sts.sts.test "))
            .count()
    };
    assert_eq!(fetched(), 1);
    assert!(dir.join("mta-sts/sts.test").exists());
    relay.stop();
    relay.launch();
    let out = submit(&relay, &["--to", "again@sts.test"]);
    assert!(out[0].starts_with("OK "), "{out:?}");
    wait_events(&dir, "the second delivery", 30, |ev| {
        outcomes_of(ev, "again@sts.test") == ["delivered"]
    });
    assert_eq!(fetched(), 1, "fetched again after the restart");
}

/// `users[].notify` (issue 15): an application that never sets NOTIFY still gets the notices
/// its user asks for — here a success DSN ("relayed", the next hop offers no DSN) for mail it
/// submitted with AUTH; the same mail relayed without AUTH gets none (RFC 3461 default).
#[test]
fn a_users_notify_default_brings_success_notices_to_an_application_that_sets_none() {
    let sink = Sink::start_with(&["--no-dsn"]);
    // The first line belongs to alice's [[users]] entry in the base config.
    let s = Server::start(&format!(
        "notify = [\"success\", \"failure\"]\n{}",
        routed_to(&sink, "")
    ));
    crate::harness::submit_authenticated(&s, "happy@example.net", 1);
    submit(&s, &["--to", "unauthenticated@example.net"]);
    let msgs = sink.wait_for("two deliveries and the success DSN", 30, |m| m.len() == 3);
    let dsns: Vec<_> = msgs
        .iter()
        .filter(|x| x.contains("multipart/report"))
        .collect();
    assert_eq!(dsns.len(), 1, "{dsns:?}");
    assert!(
        to_header(dsns[0]) == "X-Sink-Recipients: alice@example.com"
            && dsns[0].contains("Action: relayed")
            && dsns[0].contains("Final-Recipient: rfc822;happy@example.net"),
        "{}",
        dsns[0]
    );
}

/// A message's deadline holds while it waits in a ready queue (issue 13): with its site paused
/// for an hour by a `421 4.7.28`, a code sent with `X-Ringmta-Expire-After: 3s` is bounced at
/// its deadline, without an attempt, not when the pause ends.
#[test]
fn a_deadline_expires_mail_that_waits_for_a_paused_site() {
    let sink = Sink::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let config = crate::harness::base_config(
        &dir,
        &routed_to(
            &sink,
            "throttle_pause = \"1h\"\nretry_schedule = [\"1h\"]\n",
        ),
    )
    .replace("threads = 2", "threads = 1");
    let s = Server::start_in(&dir, &config);
    submit(&s, &["--to", "throttle-1-first@example.net"]);
    wait_events(&dir, "the site paused", 30, |ev| {
        ev.iter().any(|e| e["event"] == "site_throttled")
    });
    let sent_at = unix_now_ms();
    let mut c = Raw::greeted(s.addr("smtp"));
    let reply = raw_message(
        &mut c,
        "MAIL FROM:<alice@example.com>",
        "code@example.net",
        "X-Ringmta-Expire-After: 3s\r\nSubject: code\r\n\r\n123456\r\n",
    );
    assert!(reply.starts_with("250 "), "{reply}");
    c.cmd("QUIT");
    let ev = wait_events(&dir, "the expiry", 30, |ev| {
        outcomes_of(ev, "code@example.net") == ["bounced"]
    });
    let bounced = ev
        .iter()
        .find(|e| e["recipient"] == "code@example.net")
        .unwrap();
    assert_eq!(bounced["reply"], "delivery time expired", "{bounced}");
    assert_eq!(bounced["attempt"], 0, "never attempted: {bounced}");
    assert!(
        bounced["ts_ms"].as_u64().unwrap() >= sent_at + 3_000,
        "{bounced}"
    );
}

/// TLS-RPT (RFC 8460, issue 14): with `delivery.tls_rpt`, a session that fails under a
/// domain's enforced MTA-STS policy (the MX's certificate names another host) is counted, and
/// at the end of the period the JSON report goes to the `rua` of the domain's `_smtp._tls`
/// record — here a mailbox whose MX is a ringmta that passes it on to the sink, where the
/// attachment is parsed back, and an https address (the policy server, reached through the
/// test DNS and the test CA) that gets the same JSON POSTed.
#[test]
fn a_tls_report_reaches_the_rua_address_after_a_failure() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new(tmp.path());
    let sink = Sink::start();
    // The hop takes mail for report.test (its certificate names only mx.report.test) and
    // passes it on to the sink.
    let (cert, key) = ca.issue("hop", &["mx.report.test"]);
    let hop = Server::start(&format!(
        "[tls]\ncert = \"{cert}\"\nkey = \"{key}\"\n[delivery]\nroutes = {{ \"*\" = \"{}\" }}\n",
        sink.addr
    ));
    let policy = "version: STSv1\r\nmode: enforce\r\nmx: mx.rpt.test\r\nmax_age: 86400\r\n";
    let log = tmp.path().join("sts-requests");
    let sts = sts_server(
        &ca,
        &[("mta-sts.rpt.test", policy), ("reports.rpt.test", "")],
        &log,
    );
    let rua = format!(
        "v=TLSRPTv1; rua=mailto:reports@report.test,https://reports.rpt.test:{}/tlsrpt",
        sts.port
    );
    let zone = serde_json::json!({
        "rpt.test": {"MX": [[10, "mx.rpt.test."]]},
        "mx.rpt.test": {"A": ["127.0.0.1"]},
        "mta-sts.rpt.test": {"A": ["127.0.0.1"]},
        "_mta-sts.rpt.test": {"TXT": ["v=STSv1; id=20261202r;"]},
        "_smtp._tls.rpt.test": {"TXT": [rua]},
        "reports.rpt.test": {"A": ["127.0.0.1"]},
        "report.test": {"MX": [[10, "mx.report.test."]]},
        "mx.report.test": {"A": ["127.0.0.1"]}
    });
    let Some(dns) = Dns::start(&zone.to_string()) else {
        ringmta::testkit::skip("python3 with dnslib is needed (pip install dnslib)");
        return;
    };
    let dir = tmp.path().join("relay");
    let config = sts_relay_config(
        &dir,
        (dns.port, hop.port("smtp"), sts.port),
        tmp.path(),
        "tls_rpt = true\ntls_rpt_interval = \"2s\"\ntls_rpt_from = \"tls-reports@mx.test\"\n",
    );
    let relay = Server::start_in(&dir, &config);
    let out = submit(&relay, &["--to", "a@rpt.test"]);
    assert!(out[0].starts_with("OK "), "{out:?}");
    let ev = wait_events(&dir, "the deferral", 30, |ev| ev.len() == 1);
    assert_eq!(ev[0]["outcome"], "deferred", "{:?}", ev[0]);
    assert_eq!(ev[0]["category"], "tls", "{:?}", ev[0]);

    let got = sink.wait_for("the TLS report", 60, |m| {
        m.iter()
            .any(|m| m.starts_with("X-Sink-Recipients: reports@report.test"))
    });
    let raw = got
        .iter()
        .find(|m| m.starts_with("X-Sink-Recipients: reports@report.test"))
        .unwrap();
    let message = mail_parser::MessageParser::default()
        .parse(raw.as_bytes())
        .expect("the report parses");
    assert_eq!(
        message
            .header("TLS-Report-Domain")
            .and_then(|h| h.as_text()),
        Some("rpt.test"),
        "{raw}"
    );
    let attachment = message.attachments().next().expect("an attachment");
    use mail_parser::MimeHeaders as _;
    assert_eq!(
        attachment
            .content_type()
            .map(|c| format!("{}/{}", c.ctype(), c.subtype().unwrap_or(""))),
        Some("application/tlsrpt+gzip".to_owned()),
        "{raw}"
    );
    assert!(
        attachment
            .attachment_name()
            .is_some_and(|n| n.ends_with(".json.gz")),
        "{raw}"
    );
    let json: serde_json::Value = serde_json::from_slice(&gunzip(attachment.contents())).unwrap();
    assert_eq!(json["contact-info"], "tls-reports@mx.test", "{json}");
    let p = &json["policies"][0];
    assert_eq!(p["policy"]["policy-type"], "sts", "{json}");
    assert_eq!(p["policy"]["policy-domain"], "rpt.test", "{json}");
    assert_eq!(p["policy"]["policy-string"][1], "mode: enforce", "{json}");
    assert_eq!(p["summary"]["total-successful-session-count"], 0, "{json}");
    assert_eq!(p["summary"]["total-failure-session-count"], 1, "{json}");
    let detail = &p["failure-details"][0];
    assert_eq!(detail["result-type"], "certificate-host-mismatch", "{json}");
    assert_eq!(detail["receiving-mx-hostname"], "mx.rpt.test", "{json}");

    // The same report, POSTed to the https address.
    let posts = log.with_extension("posts");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let post: serde_json::Value = loop {
        if let Some(line) = std::fs::read_to_string(&posts)
            .ok()
            .and_then(|t| t.lines().next().map(str::to_owned))
        {
            break serde_json::from_str(&line).unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "no report POSTed");
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(post["host"], "reports.rpt.test", "{post}");
    assert_eq!(post["path"], "/tlsrpt", "{post}");
    assert_eq!(post["content_type"], "application/tlsrpt+gzip", "{post}");
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD
        .decode(post["body_base64"].as_str().unwrap())
        .unwrap();
    let posted: serde_json::Value = serde_json::from_slice(&gunzip(&body)).unwrap();
    assert_eq!(posted["policies"], json["policies"], "{posted}");
}

/// MTA-STS (issue 14): a policy in `testing` mode delivers even to an MX host it does not
/// name; a changed `_mta-sts` TXT id makes the next connection fetch the policy again, and an
/// unchanged one does not.
#[test]
fn a_testing_policy_delivers_and_a_new_txt_id_fetches_the_policy_again() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new(tmp.path());
    let hop = tls_hop(&ca, &["mx.t.test"]);
    let policy = "version: STSv1\r\nmode: testing\r\nmx: mx.elsewhere.test\r\nmax_age: 86400\r\n";
    let log = tmp.path().join("sts-requests");
    let sts = sts_server(&ca, &[("mta-sts.t.test", policy)], &log);
    let zone_file = tmp.path().join("zone.json");
    let zone = |id: &str| {
        serde_json::json!({
            "t.test": {"MX": [[10, "mx.t.test."]]},
            "mx.t.test": {"A": ["127.0.0.1"]},
            "mta-sts.t.test": {"A": ["127.0.0.1"]},
            "_mta-sts.t.test": {"TXT": [format!("v=STSv1; id={id};")], "TTL": 0}
        })
        .to_string()
    };
    std::fs::write(&zone_file, zone("first")).unwrap();
    let Some(dns) = Dns::start(&format!("@{}", zone_file.display())) else {
        ringmta::testkit::skip("python3 with dnslib is needed (pip install dnslib)");
        return;
    };
    let dir = tmp.path().join("relay");
    // Each message on a connection of its own: the policy is looked up as a connection starts,
    // and an idle connection would carry the next message without a lookup.
    let config = sts_relay_config(
        &dir,
        (dns.port, hop.port("smtp"), sts.port),
        tmp.path(),
        "connection_idle_time = \"0s\"\n",
    );
    let relay = Server::start_in(&dir, &config);
    let fetched = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("mta-sts.t.test "))
            .count()
    };
    let deliver = |to: &str| {
        let out = submit(&relay, &["--to", to]);
        assert!(out[0].starts_with("OK "), "{out:?}");
        wait_events(&dir, "the delivery", 30, |ev| {
            outcomes_of(ev, to) == ["delivered"]
        });
    };
    // mx.t.test is not in the testing policy: delivered anyway.
    deliver("a@t.test");
    assert_eq!(fetched(), 1);
    deliver("b@t.test");
    assert_eq!(fetched(), 1, "same id: the cached policy holds");
    std::fs::write(&zone_file, zone("second")).unwrap();
    deliver("c@t.test");
    assert_eq!(fetched(), 2, "a new id fetches the policy again");
}

/// The SHA-256 of the first certificate of a PEM file, in hex (a TLSA `x 0 1` record's data).
fn cert_sha256(pem: &std::path::Path) -> String {
    use sha2::Digest;
    let text = std::fs::read(pem).unwrap();
    let der = rustls_pemfile::certs(&mut text.as_slice())
        .next()
        .unwrap()
        .unwrap();
    sha2::Sha256::digest(der.as_ref())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// DANE (RFC 7672), through a real validating resolver (unbound) on loopback serving a zone
/// signed by ldns-signzone. The relay trusts no CA and its policy is opportunistic, so only the
/// TLSA records can authenticate the hop: a DANE-EE record of the hop's certificate delivers
/// under any MX name; a DANE-TA record of the CA delivers when the hop presents the CA and its
/// certificate names the MX host, and defers when it names another; a record that matches
/// nothing defers with category `tls` and says so. The same mismatching record in an unsigned
/// zone is not validated, so it is ignored and the mail goes out opportunistically. A TLSA set
/// whose signature is broken (the resolver answers SERVFAIL) for a host whose address is
/// validated is passed over for the domain's next MX host, and with no other host it defers:
/// the records may exist and be withheld. A validated set without a usable record (PKIX usages)
/// requires TLS without checking the certificate.
#[test]
fn dane_tlsa_records_in_a_signed_zone_decide_which_certificate_is_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = TestCa::new(tmp.path());
    let (leaf, key) = ca.issue("hop", &["mx.dane.test"]);
    // The hop presents its chain with the CA, as DANE-TA needs (RFC 7672 §3.1.2).
    let chain = tmp.path().join("chain.pem");
    let both = std::fs::read_to_string(&leaf).unwrap()
        + &std::fs::read_to_string(tmp.path().join("ca.pem")).unwrap();
    std::fs::write(&chain, both).unwrap();
    let hop = Server::start(&format!(
        "[tls]\ncert = \"{}\"\nkey = \"{key}\"\n",
        chain.display()
    ));
    let ee = cert_sha256(std::path::Path::new(&leaf));
    let ta = cert_sha256(&tmp.path().join("ca.pem"));
    let other = "ab".repeat(32);
    let (signed_data, forged_data) = ("cd".repeat(32), "ef".repeat(32));
    let signed = format!(
        "ee MX 10 mx-ee\nta MX 10 mx\nwrongname MX 10 mx-wrongname\nbad MX 10 mx-bad\n\
         bogus MX 10 mx-bogus\nfallback MX 10 mx-bogus\nfallback MX 20 mx-ee\npkix MX 10 mx-pkix\n\
         mx-pkix A 127.0.0.1\n_25._tcp.mx-pkix TLSA 1 0 1 {other}\n\
         mx-ee A 127.0.0.1\nmx A 127.0.0.1\nmx-wrongname A 127.0.0.1\nmx-bad A 127.0.0.1\n\
         mx-bogus A 127.0.0.1\n\
         _25._tcp.mx-ee TLSA 3 0 1 {ee}\n_25._tcp.mx TLSA 2 0 1 {ta}\n\
         _25._tcp.mx-wrongname TLSA 2 0 1 {ta}\n_25._tcp.mx-bad TLSA 3 0 1 {other}\n\
         _25._tcp.mx-bogus TLSA 3 0 1 {signed_data}\n"
    );
    let unsigned = format!("@ MX 10 mx\nmx A 127.0.0.1\n_25._tcp.mx TLSA 3 0 1 {other}\n");
    let Some(dns) = crate::harness::SignedDns::start(
        tmp.path(),
        &[
            ("dane.test", &signed, true),
            ("plain.test", &unsigned, false),
        ],
        &[(&signed_data, &forged_data)],
    ) else {
        ringmta::testkit::skip(
            "unbound and ldnsutils are needed (apt-get install unbound ldnsutils)",
        );
        return;
    };
    let relay_dir = tmp.path().join("relay");
    let extra = format!(
        "[delivery]\nnameservers = [\"127.0.0.1:{}\"]\nsmtp_port = {}\nretry_schedule = [\"1h\"]\n",
        dns.port,
        hop.port("smtp")
    );
    let relay = Server::start_in(
        &relay_dir,
        &crate::harness::base_config(&relay_dir, &extra)
            .replace("http = \"\"", "http = \"127.0.0.1:0\""),
    );
    let out = submit(
        &relay,
        &[
            "--to",
            "a@ee.dane.test",
            "--to",
            "b@ta.dane.test",
            "--to",
            "c@wrongname.dane.test",
            "--to",
            "d@bad.dane.test",
            "--to",
            "e@plain.test",
            "--to",
            "f@bogus.dane.test",
            "--to",
            "g@fallback.dane.test",
            "--to",
            "h@pkix.dane.test",
        ],
    );
    assert!(out[0].starts_with("OK "), "{out:?}");
    let ev = wait_events(&relay.dir, "eight outcomes", 30, |ev| ev.len() == 8);
    let of = |rcpt: &str| ev.iter().find(|e| e["recipient"] == rcpt).unwrap();
    for rcpt in ["a@ee.dane.test", "b@ta.dane.test"] {
        let e = of(rcpt);
        assert_eq!(e["outcome"], "delivered", "{e}");
        assert_eq!(e["tls"]["policy"], "dane", "{e}");
    }
    let plain = of("e@plain.test");
    assert_eq!(plain["outcome"], "delivered", "{plain}");
    assert_eq!(plain["tls"]["policy"], "opportunistic", "{plain}");
    let wrong = of("c@wrongname.dane.test");
    assert_eq!(wrong["outcome"], "deferred", "{wrong}");
    assert_eq!(wrong["category"], "tls", "{wrong}");
    let reply = wrong["reply"].as_str().unwrap();
    assert!(
        reply.contains("DANE-TA") && reply.contains("not valid for name"),
        "{reply}"
    );
    let bad = of("d@bad.dane.test");
    assert_eq!(bad["outcome"], "deferred", "{bad}");
    assert_eq!(bad["category"], "tls", "{bad}");
    let reply = bad["reply"].as_str().unwrap();
    assert!(
        reply.contains("mx-bad.dane.test") && reply.contains(&format!("3 0 1 {other}")),
        "names the host and the record that did not match: {reply}"
    );
    let fallback = of("g@fallback.dane.test");
    assert_eq!(fallback["outcome"], "delivered", "{fallback}");
    assert_eq!(fallback["remote_host"], "mx-ee.dane.test", "{fallback}");
    assert_eq!(fallback["tls"]["policy"], "dane", "{fallback}");
    let pkix = of("h@pkix.dane.test");
    assert_eq!(pkix["outcome"], "delivered", "{pkix}");
    assert_eq!(pkix["tls"]["policy"], "required", "{pkix}");
    let bogus = of("f@bogus.dane.test");
    assert_eq!(bogus["outcome"], "deferred", "{bogus}");
    assert_eq!(bogus["category"], "tls", "{bogus}");
    let reply = bogus["reply"].as_str().unwrap();
    assert!(
        reply.contains("TLSA lookup for _25._tcp.mx-bogus.dane.test failed"),
        "{reply}"
    );
    crate::harness::wait_metrics(
        &relay,
        &[("ringmta_outbound_tls_total{use=\"dane\"}", 3.0)],
        10,
    );
    // Nothing reached the hop for the deferred recipients.
    let (code, ls, err) = hop.cli(&["queue", "ls"]);
    assert_eq!(code, 0, "{err}");
    for rcpt in [
        "c@wrongname.dane.test",
        "d@bad.dane.test",
        "f@bogus.dane.test",
    ] {
        assert!(!ls.contains(rcpt), "{ls}");
    }
    for rcpt in [
        "a@ee.dane.test",
        "b@ta.dane.test",
        "e@plain.test",
        "g@fallback.dane.test",
        "h@pkix.dane.test",
    ] {
        assert!(ls.contains(rcpt), "{ls}");
    }
}

/// A sink logging its connections and transactions under `dir` (with extra `flags`), and the
/// two logs' paths.
fn logged_sink(
    dir: &std::path::Path,
    flags: &[&str],
) -> (Sink, std::path::PathBuf, std::path::PathBuf) {
    let (conns, txns) = (dir.join("connections"), dir.join("txns"));
    let mut args = vec![
        "--connection-log",
        conns.to_str().unwrap(),
        "--transaction-log",
        txns.to_str().unwrap(),
    ];
    args.extend_from_slice(flags);
    (Sink::start_with(&args), conns, txns)
}

/// A one-worker ringmta in `dir` relaying everything to `sink`, with `delivery` keys added.
fn one_worker_relay(dir: &std::path::Path, sink: &Sink, delivery: &str) -> Server {
    let config = crate::harness::base_config(dir, &routed_to(sink, delivery))
        .replace("threads = 2", "threads = 1");
    Server::start_in(dir, &config)
}

/// The client ports of the sink's transaction log, one per message, in arrival order, once it
/// has `n` of them (the sink writes the log from a thread of its own: a bounded wait).
fn transaction_ports(path: &std::path::Path, n: usize) -> Vec<String> {
    for _ in 0..100 {
        let ports: Vec<String> = std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(|l| l.split(' ').next().unwrap().to_owned())
            .collect();
        if ports.len() >= n {
            return ports;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("the sink's transaction log never had {n} lines");
}

/// Connection reuse (issue 18): a connection with nothing left to send waits
/// `delivery.connection_idle_time` for the next message to its destination instead of quitting,
/// so a message queued meanwhile goes over it with no new connection, greeting or EHLO; once the
/// idle time has passed it quits, and the next message opens a new one. With `"0s"` every
/// message that finds no connection busy opens its own.
#[test]
fn an_idle_connection_carries_the_next_message_and_quits_after_the_idle_time() {
    for (idle, reused) in [("3s", true), ("0s", false)] {
        let tmp = tempfile::tempdir().unwrap();
        let (sink, conns, txns) = logged_sink(tmp.path(), &[]);
        let dir = tmp.path().join("spool");
        let s = one_worker_relay(&dir, &sink, &format!("connection_idle_time = \"{idle}\"\n"));
        submit(&s, &["--to", "one@example.net"]);
        sink.wait_for("the first message", 30, |m| m.len() == 1);
        submit(&s, &["--to", "two@example.net"]);
        sink.wait_for("the second message", 30, |m| m.len() == 2);
        let ports = transaction_ports(&txns, 2);
        let ehlos = connection_log(&conns).len();
        if reused {
            assert_eq!(ports[0], ports[1], "idle {idle}: {ports:?}");
            assert_eq!(ehlos, 1, "idle {idle}: one connection, one EHLO");
            // Past the idle time the connection has quit: the next message opens another.
            std::thread::sleep(std::time::Duration::from_millis(4_500));
            submit(&s, &["--to", "three@example.net"]);
            sink.wait_for("the third message", 30, |m| m.len() == 3);
            let ports = transaction_ports(&txns, 3);
            assert_ne!(ports[2], ports[1], "idle {idle}: {ports:?}");
            assert_eq!(connection_log(&conns).len(), 2);
        } else {
            assert_ne!(ports[0], ports[1], "idle {idle}: {ports:?}");
            assert_eq!(ehlos, 2, "idle {idle}: a connection per message");
        }
    }
}

/// A next hop that closes idle clients (`421 4.4.2`, then the socket) while ringmta's connection
/// waits for mail: the next message does not go to that dead connection, and is delivered on a
/// new one at the first attempt, with no deferral and nothing held against the site.
#[test]
fn a_connection_the_server_closed_while_idle_is_not_used_for_the_next_message() {
    let tmp = tempfile::tempdir().unwrap();
    let (sink, conns, txns) = logged_sink(tmp.path(), &["--idle-close", "300"]);
    let dir = tmp.path().join("spool");
    let s = one_worker_relay(
        &dir,
        &sink,
        "connection_idle_time = \"10s\"\nretry_schedule = [\"1h\"]\n",
    );
    submit(&s, &["--to", "one@example.net"]);
    sink.wait_for("the first message", 30, |m| m.len() == 1);
    // The sink says 421 and closes the idle connection after 300 ms.
    std::thread::sleep(std::time::Duration::from_millis(1_000));
    submit(&s, &["--to", "two@example.net"]);
    sink.wait_for("the second message", 30, |m| m.len() == 2);
    let ev = wait_events(&dir, "two deliveries", 30, |ev| {
        crate::harness::count_outcome(ev, "delivered") == 2
    });
    assert_eq!(outcomes_of(&ev, "two@example.net"), ["delivered"], "{ev:?}");
    assert_eq!(crate::harness::count_outcome(&ev, "deferred"), 0, "{ev:?}");
    assert!(
        !ev.iter().any(|e| e["event"] == "site_throttled"),
        "a closing server is not a throttle: {ev:?}"
    );
    let ports = transaction_ports(&txns, 2);
    assert_ne!(ports[0], ports[1], "{ports:?}");
    assert_eq!(connection_log(&conns).len(), 2);
}

/// A waiting connection holds one of its site's slots, so it gives the slot up as soon as mail on
/// another worker waits for one: with one connection allowed to the site and two workers, the
/// mail each worker takes goes out in seconds, not after the first connection's 30 s idle time.
#[test]
fn a_waiting_connection_quits_when_another_worker_needs_its_slot() {
    let tmp = tempfile::tempdir().unwrap();
    let (sink, conns, _txns) = logged_sink(tmp.path(), &[]);
    let dir = tmp.path().join("spool");
    let config = crate::harness::base_config(
        &dir,
        &routed_to(
            &sink,
            "max_connections = 1\nconnection_idle_time = \"30s\"\nretry_schedule = [\"1h\"]\n",
        ),
    );
    assert!(config.contains("threads = 2"), "{config}");
    let s = Server::start_in(&dir, &config);
    submit(&s, &["--to", "first@example.net"]);
    sink.wait_for("the first message", 30, |m| m.len() == 1);
    // Eight sessions of their own: the kernel spreads them over both workers' listeners.
    let out = submit(
        &s,
        &["--count", "8", "--reconnect", "--to", "more@example.net"],
    );
    assert!(out.iter().all(|l| l.starts_with("OK ")), "{out:?}");
    sink.wait_for("the eight, well inside the 30 s idle time", 10, |m| {
        m.len() == 9
    });
    let log = connection_log(&conns);
    assert!(log.iter().all(|(_, _, open)| *open == 1), "{log:?}");
}
