//! Submission and relay through the real server with smtplib, swaks and raw bytes.

use crate::harness::{PASSWORD, Raw, Server, Sink, have, python};
use std::io::Write;

const CLIENT: &str = include_str!("client.py");

fn client(server: &Server, role: &str, args: &[&str]) -> Vec<String> {
    let mut argv = vec!["--port".to_owned(), server.port(role).to_string()];
    argv.extend(args.iter().map(|s| s.to_string()));
    let (code, out, err) = python(CLIENT, &argv);
    assert_eq!(code, 0, "client failed: {err}");
    out.lines().map(String::from).collect()
}

fn queued_id(line: &str) -> String {
    let id = line
        .strip_prefix("OK ")
        .unwrap_or_else(|| panic!("not accepted: {line}"));
    assert_eq!(id.len(), 16, "queue id {id:?}");
    id.to_owned()
}

#[test]
fn smtplib_implicit_tls_auth_plain_is_queued_and_in_the_spool() {
    let mut s = Server::start("");
    let out = client(
        &s,
        "submissions",
        &[
            "--mode",
            "ssl",
            "--auth",
            "plain",
            "--to",
            "bob@example.net",
            "--to",
            "carol@example.org",
        ],
    );
    let id = queued_id(&out[0]);
    s.stop();
    let (code, text, err) = s.cli(&["queue", "show", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("alice@example.com"), "{text}");
    assert!(
        text.contains("bob@example.net") && text.contains("carol@example.org"),
        "{text}"
    );
}

#[test]
fn smtplib_starttls_auth_login_is_queued() {
    let s = Server::start("");
    let out = client(
        &s,
        "submission",
        &["--mode", "starttls", "--auth", "login", "--count", "3"],
    );
    assert_eq!(out.len(), 3, "{out:?}");
    for line in &out {
        queued_id(line);
    }
}

#[test]
fn smtplib_login_default_mechanism_works() {
    let s = Server::start("");
    let out = client(&s, "submissions", &["--mode", "ssl", "--auth", "default"]);
    queued_id(&out[0]);
}

#[test]
fn submission_without_auth_gets_530() {
    let s = Server::start("");
    let out = client(&s, "submission", &["--mode", "starttls"]);
    assert!(out[0].starts_with("ERR mail 530 5.7.0"), "{out:?}");
}

#[test]
fn wrong_password_gets_535() {
    let s = Server::start("");
    let out = client(
        &s,
        "submissions",
        &["--mode", "ssl", "--auth", "plain", "--password", "nope"],
    );
    assert!(out[0].contains(" 535 5.7.8"), "{out:?}");
}

#[test]
fn sender_not_allowed_gets_550() {
    let s = Server::start("");
    let out = client(
        &s,
        "submissions",
        &[
            "--mode",
            "ssl",
            "--auth",
            "plain",
            "--sender",
            "mallory@evil.example",
        ],
    );
    assert!(out[0].starts_with("ERR mail 550 5.7.1"), "{out:?}");
    let ok = client(
        &s,
        "submissions",
        &[
            "--mode",
            "ssl",
            "--auth",
            "plain",
            "--sender",
            "news@alice.example",
        ],
    );
    queued_id(&ok[0]);
}

#[test]
fn relay_port_trusted_network_relays_without_auth() {
    let s = Server::start("");
    let out = client(&s, "smtp", &[]);
    queued_id(&out[0]);
}

#[test]
fn relay_port_untrusted_client_is_denied_554() {
    let s = Server::start("[relay]\ntrusted_networks = [\"10.0.0.0/8\"]\n");
    let out = client(&s, "smtp", &[]);
    assert!(out[0].starts_with("ERR rcpt 554 5.7.1"), "{out:?}");
}

#[test]
fn auth_is_not_offered_before_tls() {
    let s = Server::start("");
    let mut c = Raw::connect(s.addr("submission"));
    assert!(c.reply().starts_with("220 mx.test"));
    let ehlo = c.cmd("EHLO client.test");
    assert!(ehlo.contains("STARTTLS"), "{ehlo}");
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    let auth = c.cmd("AUTH PLAIN AGFsaWNlQGV4YW1wbGUuY29tAGNvcnJlY3QgaG9yc2U=");
    assert!(auth.starts_with("538 5.7.11"), "{auth}");
}

#[test]
fn size_declared_too_big_gets_552() {
    let s = Server::start("[limits]\nmax_message_size = \"10KB\"\n");
    let out = client(&s, "smtp", &["--mail-options", "SIZE=20000"]);
    assert!(out[0].starts_with("ERR mail 552 5.3.4"), "{out:?}");
    let out = client(&s, "smtp", &["--size", "20000"]);
    assert!(out[0].starts_with("ERR data 552 5.3.4"), "{out:?}");
    let out = client(&s, "smtp", &["--size", "5000"]);
    queued_id(&out[0]);
}

#[test]
fn too_many_recipients_gets_452() {
    let s = Server::start("[limits]\nmax_recipients = 2\n");
    let out = client(
        &s,
        "smtp",
        &[
            "--to",
            "a@x.example",
            "--to",
            "b@x.example",
            "--to",
            "c@x.example",
        ],
    );
    assert!(
        out.iter().any(|l| l.starts_with("ERR rcpt 452 4.5.3")),
        "{out:?}"
    );
    assert!(out.last().unwrap().starts_with("OK "), "{out:?}");
}

#[test]
fn pipelined_transaction_in_one_write_is_accepted() {
    let s = Server::start("");
    let mut c = Raw::connect(s.addr("smtp"));
    c.reply();
    c.cmd("EHLO client.test");
    c.send(b"MAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.net>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n");
    assert_eq!(c.reply(), "250 2.1.0 Ok\r\n");
    assert_eq!(c.reply(), "250 2.1.5 Ok\r\n");
    assert_eq!(c.reply(), "250 2.1.5 Ok\r\n");
    assert!(c.reply().starts_with("354 "));
    c.send(b"Subject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n");
    assert!(c.reply().starts_with("250 2.0.0 Ok: queued as "));
    assert_eq!(c.reply(), "221 2.0.0 Bye\r\n");
}

#[test]
fn disconnect_mid_data_leaves_nothing_in_the_spool() {
    let mut s = Server::start("");
    let mut c = Raw::connect(s.addr("smtp"));
    c.reply();
    c.cmd("EHLO client.test");
    c.cmd("MAIL FROM:<a@client.test>");
    c.cmd("RCPT TO:<b@example.net>");
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: half\r\n\r\nthis message never ends");
    drop(c);
    // The stop drains every session first, so the half message had its chance to be stored.
    s.stop();
    let (code, text, err) = s.cli(&["queue", "ls"]);
    assert_eq!(code, 0, "{err}");
    assert!(!text.contains("b@example.net"), "{text}");
}

#[test]
fn starttls_plaintext_injection_is_discarded() {
    // CVE-2011-0411: commands pipelined after STARTTLS in the same packet must never be
    // answered inside the TLS session.
    let s = Server::start("");
    let script = r#"
import socket, ssl, sys
port = int(sys.argv[1])
raw = socket.create_connection(("127.0.0.1", port), timeout=10)
f = raw.makefile("rb")
def reply(fh):
    lines = []
    while True:
        l = fh.readline()
        lines.append(l)
        if len(l) < 4 or l[3:4] != b"-":
            return b"".join(lines)
reply(f)
raw.sendall(b"EHLO x\r\n"); reply(f)
raw.sendall(b"STARTTLS\r\nQUIT\r\n")
print(reply(f).decode().strip())
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
t = ctx.wrap_socket(raw, server_hostname="mx.test")
t.sendall(b"NOOP\r\n")
tf = t.makefile("rb")
print(reply(tf).decode().strip())
t.sendall(b"EHLO y\r\n")
print(reply(tf).decode().splitlines()[0])
"#;
    let (code, out, err) = python(script, &[s.port("submission").to_string()]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "220 2.0.0 Ready to start TLS");
    // The injected QUIT would answer 221 and close: the first reply inside TLS must answer our
    // NOOP, and the session must go on.
    assert_eq!(lines[1], "250 2.0.0 Ok", "{out}");
    assert!(lines[2].starts_with("250-"), "{out}");
}

#[test]
fn swaks_submission_with_starttls_and_auth() {
    if !have("swaks") {
        ringmta::testkit::skip("swaks is not installed (apt-get install swaks)");
        return;
    }
    let s = Server::start("");
    let out = std::process::Command::new("swaks")
        .args([
            "--server",
            "127.0.0.1",
            "--port",
            &s.port("submission").to_string(),
        ])
        .args([
            "--tls",
            "--auth",
            "LOGIN",
            "--auth-user",
            "alice@example.com",
            "--auth-password",
            PASSWORD,
        ])
        .args([
            "--from",
            "alice@example.com",
            "--to",
            "bob@example.net",
            "--helo",
            "swaks.test",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("250 2.0.0 Ok: queued as "), "{text}");
    assert!(text.contains("235 2.7.0"), "{text}");
}

/// What a BDAT transaction carries: a line that would end a DATA body, lines that DATA would
/// dot-stuff, and a chunk boundary inside a line. BDAT transfers them untouched (RFC 3030 §2).
const BDAT_CHUNKS: [&str; 3] = [
    "From: a@client.test\r\nTo: bob@example.net\r\nSubject: chunks\r\n\r\nfirst line\r\n.\r\n",
    "..two dots\r\n.one dot\r\nhalf a li",
    "ne\r\nlast line\r\n",
];

/// Sends a BDAT transaction of [`BDAT_CHUNKS`] through the binary, routed to a sink, either one
/// command at a time or everything in one write (PIPELINING), and checks the replies and the
/// message at the sink byte for byte.
fn bdat_through_the_binary(pipelined: bool) {
    let sink = Sink::start();
    let s = Server::start(&format!(
        "[delivery]\nroutes = {{ \"*\" = \"{}\" }}\n",
        sink.addr
    ));
    let mut c = Raw::connect(s.addr("smtp"));
    assert!(c.reply().starts_with("220"));
    let ehlo = c.cmd("EHLO client.test");
    assert!(
        ehlo.contains("CHUNKING") && ehlo.contains("PIPELINING"),
        "{ehlo}"
    );
    let mut commands: Vec<Vec<u8>> = vec![
        b"MAIL FROM:<a@client.test>\r\n".to_vec(),
        b"RCPT TO:<bob@example.net>\r\n".to_vec(),
    ];
    for (i, chunk) in BDAT_CHUNKS.iter().enumerate() {
        let last = if i + 1 == BDAT_CHUNKS.len() {
            " LAST"
        } else {
            ""
        };
        let mut cmd = format!("BDAT {}{last}\r\n", chunk.len()).into_bytes();
        cmd.extend_from_slice(chunk.as_bytes());
        commands.push(cmd);
    }
    let mut replies = Vec::new();
    if pipelined {
        c.send(&commands.concat());
        for _ in &commands {
            replies.push(c.reply());
        }
    } else {
        for cmd in &commands {
            c.send(cmd);
            replies.push(c.reply());
        }
    }
    assert!(replies[0].starts_with("250 2.1.0"), "{replies:?}");
    assert!(replies[1].starts_with("250 2.1.5"), "{replies:?}");
    for r in &replies[2..replies.len() - 1] {
        assert!(r.starts_with("250 2.0.0"), "a chunk: {replies:?}");
    }
    let done = replies.last().unwrap();
    assert!(done.starts_with("250 2.0.0 Ok: queued as "), "{replies:?}");
    assert!(c.cmd("QUIT").starts_with("221"));
    let stored = sink.wait_for("the BDAT message", 20, |m| m.len() == 1);
    let sent = BDAT_CHUNKS.concat();
    let msg = &stored[0];
    assert!(
        msg.starts_with("X-Sink-Recipients: bob@example.net\r\nX-Sink-Mail-From: <a@client.test>\r\nReceived: from client.test"),
        "{msg}"
    );
    assert!(msg.ends_with(&sent), "sink has:\n{msg}\nsent:\n{sent}");
    let received = msg.find("Received:").unwrap();
    let body_start = msg.len() - sent.len();
    assert!(
        !msg[received..body_start].contains("\r\n\r\n"),
        "only trace fields before it"
    );
}

#[test]
fn bdat_chunks_one_at_a_time_reach_the_sink_byte_for_byte() {
    bdat_through_the_binary(false);
}

#[test]
fn bdat_pipelined_in_one_write_reaches_the_sink_byte_for_byte() {
    bdat_through_the_binary(true);
}

/// Exim's SMTP transport, configured only to send everything to one host and port and to use
/// CHUNKING wherever it is offered (`hosts_try_chunking`).
fn exim_config(dir: &std::path::Path, port: u16) -> String {
    format!(
        "spool_directory = {spool}\n\
         log_file_path = {spool}/%slog\n\
         exim_user = root\nexim_group = root\nnever_users =\n\
         primary_hostname = client.test\n\
         begin routers\n\
         to_ringmta:\n  driver = manualroute\n  transport = smtp_out\n\
         \x20 route_list = * 127.0.0.1::{port}\n  self = send\n\
         begin transports\n\
         smtp_out:\n  driver = smtp\n  user = nobody\n  hosts_try_chunking = *\n\
         \x20 hosts_avoid_tls = *\n  allow_localhost\n",
        spool = dir.display()
    )
}

#[test]
fn exim_sends_with_bdat_and_the_message_reaches_the_sink_intact() {
    // Exim conflicts with the Postfix the other tests use, so .ci/run unpacks its binary
    // without installing the package and names it in RINGMTA_EXIM.
    let exim = std::env::var("RINGMTA_EXIM").unwrap_or_else(|_| "exim4".into());
    if !have(&exim) {
        ringmta::testkit::skip("exim4 is not installed (RINGMTA_EXIM names an unpacked one)");
        return;
    }
    let sink = Sink::start();
    let s = Server::start(&format!(
        "[delivery]\nroutes = {{ \"*\" = \"{}\" }}\n",
        sink.addr
    ));
    let tmp = tempfile::tempdir().unwrap();
    let conf = tmp.path().join("exim.conf");
    std::fs::write(&conf, exim_config(tmp.path(), s.port("smtp"))).unwrap();
    let message = BDAT_CHUNKS.concat();
    // -odf: deliver in the foreground, so the transaction is over when exim exits; -oi: a
    // line holding a lone dot is message text;
    // -d+transport prints the SMTP dialogue to stderr.
    let out = crate::harness::run_with_input(
        std::process::Command::new(&exim)
            .args(["-C", conf.to_str().unwrap(), "-odf", "-oi", "-d+transport"])
            .args(["-f", "a@client.test", "bob@example.net"]),
        message.as_bytes(),
    );
    let dialogue = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{dialogue}");
    assert!(
        dialogue.contains("> BDAT "),
        "exim did not chunk:\n{dialogue}"
    );
    assert!(
        dialogue.contains("SMTP<< 250 2.0.0 Ok: queued as "),
        "{dialogue}"
    );
    let stored = sink.wait_for("exim's BDAT message", 20, |m| m.len() == 1);
    let msg = &stored[0];
    // Exim adds its own trace and ID fields to the header; the body is untouched.
    let body = &message[message.find("\r\n\r\n").unwrap() + 4..];
    assert!(msg.ends_with(body), "sink has:\n{msg}\nsent body:\n{body}");
    assert!(msg.contains("\r\nSubject: chunks\r\n"), "{msg}");
}

#[test]
fn idle_session_times_out_with_421() {
    let s = Server::start("[limits]\ncommand_timeout = \"1s\"\n");
    let mut c = Raw::connect(s.addr("smtp"));
    c.reply();
    let r = c.reply();
    assert!(r.starts_with("421 4.4.2"), "{r}");
}

#[test]
fn too_many_connections_get_421() {
    // One worker so that SO_REUSEPORT's spreading cannot make the count uneven.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let cfg = crate::harness::base_config(&dir, "[limits]\nmax_connections_per_core = 2\n")
        .replace("threads = 2", "threads = 1");
    let s = Server::start_in(&dir, &cfg);
    let mut open = Vec::new();
    let mut refused = 0;
    for _ in 0..6 {
        let mut c = Raw::connect(s.addr("smtp"));
        let greeting = c.reply();
        if greeting.starts_with("421 4.3.2") {
            refused += 1;
        } else {
            assert!(greeting.starts_with("220"), "{greeting}");
            open.push(c);
        }
    }
    assert_eq!(open.len(), 2);
    assert_eq!(refused, 4);
    // Closing one frees its slot.
    drop(open.pop());
    Raw::connect_until_greeted(s.addr("smtp"), 10);
}

#[test]
fn sigterm_answers_idle_sessions_421_and_exits_0() {
    let mut s = Server::start("");
    let mut c = Raw::connect(s.addr("smtp"));
    c.reply();
    c.cmd("EHLO client.test");
    s.signal(15);
    let r = c.reply();
    assert!(r.starts_with("421 4.3.2"), "{r}");
    assert_eq!(s.stop(), Some(0));
}

#[test]
fn dev_defaults_print_a_working_user() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let cfg = format!(
        "spool_dir = \"{}\"\nthreads = 1\n[listen]\nsmtp = [\"127.0.0.1:0\"]\nsubmission = [\"127.0.0.1:0\"]\nsubmissions = [\"127.0.0.1:0\"]\nhttp = \"\"\n{}",
        dir.display(),
        crate::harness::NOWHERE
    );
    let s = Server::start_in(&dir, &cfg);
    let pw = s.dev_password.clone().expect("dev user printed");
    let out = client(
        &s,
        "submissions",
        &[
            "--mode",
            "ssl",
            "--auth",
            "plain",
            "--user",
            "dev@localhost",
            "--password",
            &pw,
            "--sender",
            "anyone@anywhere.example",
        ],
    );
    queued_id(&out[0]);
    assert!(dir.join("tls/cert.pem").exists());
    use std::os::unix::fs::PermissionsExt;
    for (file, want) in [("dev-user", 0o600), ("tls/key.pem", 0o600)] {
        let mode = std::fs::metadata(dir.join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, want, "{file} is private");
    }
}

#[test]
fn auth_failures_are_throttled_per_ip() {
    let s = Server::start("[limits]\nauth_failures_per_ip = 2\nmax_auth_failures = 5\n");
    for _ in 0..2 {
        let out = client(
            &s,
            "submissions",
            &["--mode", "ssl", "--auth", "plain", "--password", "nope"],
        );
        assert!(out[0].contains(" 535 5.7.8"), "{out:?}");
    }
    // Now even the right password is refused from this address.
    let out = client(&s, "submissions", &["--mode", "ssl", "--auth", "plain"]);
    assert!(out[0].contains(" 421 4.7.0"), "{out:?}");
}

/// Runs `ringmta bounce classify` with `args` on `input`; its stdout.
fn bounce_classify(args: &[&str], input: &str) -> String {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ringmta"))
        .args(["bounce", "classify"])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn bounce_classify_cli_prints_one_json_object_per_line() {
    let text = bounce_classify(
        &[],
        "550 5.1.1 <bob@example.net>: Recipient address rejected: User unknown\n452 4.2.2 Mailbox full\n",
    );
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines[0],
        serde_json::json!({"category": "user_unknown", "action": "bounce", "rule": "generic.user_unknown"})
    );
    assert_eq!(
        lines[1],
        serde_json::json!({"category": "mailbox_full", "action": "retry", "rule": "iana.mailbox_full"})
    );
}

/// `--explain` names the rule, its file and the text it matched; an operator file can be
/// tested alone with `--no-builtin`.
#[test]
fn bounce_classify_explain_names_the_rule_and_the_matched_text() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("local.toml");
    std::fs::write(
        &rules,
        "[[rule]]\nid = \"local.vacation\"\npattern = \"on vacation\"\ncategory = \"mailbox_full\"\naction = \"retry\"\n",
    )
    .unwrap();
    let rules = rules.to_str().unwrap();
    let text = bounce_classify(
        &["--explain"],
        "550-5.7.26 Unauthenticated email from example.net is not accepted due to domain's DMARC policy\n",
    );
    assert!(
        text.contains("\npolicy bounce (rule iana.authentication)\n"),
        "{text}"
    );
    assert!(
        text.contains("  read as: reply 550, enhanced 5.7.26\n"),
        "{text}"
    );
    assert!(text.contains("of builtin rules.toml\n"), "{text}");
    assert!(text.contains("  conditions: enhanced *.7.26\n"), "{text}");

    let text = bounce_classify(
        &["--explain", "--rules", rules],
        "550 5.2.0 Bob is on vacation\n",
    );
    assert!(
        text.contains("mailbox_full retry (rule local.vacation)"),
        "{text}"
    );
    assert!(text.contains(&format!("  rule 1 of {rules}\n")), "{text}");
    assert!(
        text.contains("  pattern /on vacation/ matched \"on vacation\"\n"),
        "{text}"
    );

    // Alone, the file has nothing for an unknown user: the enhanced code decides.
    let text = bounce_classify(
        &["--rules", rules, "--no-builtin"],
        "550 5.1.1 no such user\n",
    );
    assert_eq!(
        text,
        "{\"category\":\"user_unknown\",\"action\":\"bounce\",\"rule\":\"fallback.enhanced\"}\n"
    );
}

/// The classic open-relay battery from an untrusted, unauthenticated client on the relay
/// port: every form is refused (relay denied or bad syntax), none is accepted.
#[test]
fn open_relay_battery_is_refused_from_untrusted_clients() {
    let s = Server::start("[relay]\ntrusted_networks = [\"10.0.0.0/8\"]\n");
    let mut c = Raw::connect(s.addr("smtp"));
    c.reply();
    c.cmd("EHLO attacker.test");
    let forms = [
        "<victim@example.net>",
        "<victim%example.net@mx.test>",
        "<\"victim@example.net\"@mx.test>",
        "<@mx.test:victim@example.net>",
        "<@mx.test,@relay.test:victim@example.net>",
        "<example.net!victim@mx.test>",
        "<victim@[127.0.0.1]>",
        "<victim@example.net.>",
        "<victim>",
        "<postmaster>",
        "<victim@mx.test>",
    ];
    for (i, rcpt) in forms.iter().enumerate() {
        assert!(c.cmd("RSET").starts_with("250"));
        assert!(
            c.cmd("MAIL FROM:<spammer@attacker.test>")
                .starts_with("250")
        );
        let r = c.cmd(&format!("RCPT TO:{rcpt}"));
        assert!(
            r.starts_with("554 5.7.1") || r.starts_with("501 "),
            "form {i} {rcpt}: {r}"
        );
    }
    assert!(
        c.cmd("DATA").starts_with("554"),
        "no recipient may have been accepted"
    );
}

/// An operator's certificate and key, as openssl writes them: RSA keys in PKCS#1 and PKCS#8,
/// an EC key in SEC1, and a leaf signed by an intermediate. A client that trusts only the root
/// completes a verified handshake on the implicit-TLS port, so the server loaded the key and
/// sends the chain.
#[test]
fn operator_certificates_load_in_every_key_format_and_serve_their_chain() {
    if !have("openssl") {
        ringmta::testkit::skip("openssl is needed to make the test certificates");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let sh = |script: &str| {
        let out = std::process::Command::new("bash")
            .args(["-euc", script])
            .current_dir(d)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    sh("openssl req -x509 -newkey rsa:2048 -nodes -keyout root.key -out root.pem -days 2 \
          -subj /CN=ringmta-test-root -addext basicConstraints=critical,CA:TRUE \
          -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
        printf 'basicConstraints=critical,CA:TRUE\\nkeyUsage=critical,keyCertSign,cRLSign\\n' > ca.ext
        openssl req -new -newkey rsa:2048 -nodes -keyout mid.key -out mid.csr \
          -subj /CN=ringmta-test-intermediate 2>/dev/null
        openssl x509 -req -in mid.csr -CA root.pem -CAkey root.key -CAcreateserial -days 2 \
          -extfile ca.ext -out mid.pem 2>/dev/null
        printf 'subjectAltName=DNS:mx.test\\n' > leaf.ext");
    for (name, make_key, header) in [
        (
            "pkcs1",
            "openssl genrsa -traditional -out leaf.key 2048 2>/dev/null",
            "BEGIN RSA PRIVATE KEY",
        ),
        (
            "pkcs8",
            "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out leaf.key 2>/dev/null",
            "BEGIN PRIVATE KEY",
        ),
        (
            "sec1",
            "openssl ecparam -name prime256v1 -genkey -noout -out leaf.key",
            "BEGIN EC PRIVATE KEY",
        ),
    ] {
        sh(&format!(
            "{make_key}
            openssl req -new -key leaf.key -subj /CN=mx.test -out leaf.csr
            openssl x509 -req -in leaf.csr -CA mid.pem -CAkey mid.key -CAcreateserial -days 2 \
              -extfile leaf.ext -out leaf.pem 2>/dev/null
            mkdir -p {name} && cp leaf.key {name}/key.pem && cat leaf.pem mid.pem > {name}/chain.pem"
        ));
        let key = d.join(name).join("key.pem");
        assert!(
            std::fs::read_to_string(&key).unwrap().contains(header),
            "{name}"
        );
        let s = Server::start(&format!(
            "[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            d.join(name).join("chain.pem").display(),
            key.display()
        ));
        let script = r#"
import socket, ssl, sys
ctx = ssl.create_default_context(cafile=sys.argv[2])
raw = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
t = ctx.wrap_socket(raw, server_hostname="mx.test")
print(t.recv(512).decode().strip())
"#;
        let (code, out, err) = python(
            script,
            &[
                s.port("submissions").to_string(),
                d.join("root.pem").display().to_string(),
            ],
        );
        assert_eq!(code, 0, "{name}: {err}");
        assert!(out.starts_with("220 "), "{name}: {out}");
    }
}
