//! Content checks through the real binary: header From validation, header size, scanners
//! (a fake slow clamd for concurrency, the real clamd and rspamd when installed), DKIM.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use crate::harness::{Raw, Server, python};

const CLIENT: &str = include_str!("client.py");

fn client(server: &Server, role: &str, args: &[&str]) -> Vec<String> {
    let mut argv = vec!["--port".to_owned(), server.port(role).to_string()];
    argv.extend(args.iter().map(|s| s.to_string()));
    let (code, out, err) = python(CLIENT, &argv);
    assert_eq!(code, 0, "client failed: {err}");
    out.lines().map(String::from).collect()
}

#[test]
fn header_from_must_match_the_authenticated_user() {
    let s = Server::start("");
    let bad = client(
        &s,
        "submissions",
        &[
            "--mode",
            "ssl",
            "--auth",
            "plain",
            "--header-from",
            "ceo@bank.example",
        ],
    );
    assert!(bad[0].starts_with("ERR data 550 5.7.1"), "{bad:?}");
    assert!(
        bad[0].contains("does not match your authenticated address"),
        "{bad:?}"
    );
    let ok = client(
        &s,
        "submissions",
        &[
            "--mode",
            "ssl",
            "--auth",
            "plain",
            "--header-from",
            "\"Alice\" <alice@example.com>",
        ],
    );
    assert!(ok[0].starts_with("OK "), "{ok:?}");
    // The relay role (trusted network, no AUTH) does not check the author.
    let relay = client(&s, "smtp", &["--header-from", "ceo@bank.example"]);
    assert!(relay[0].starts_with("OK "), "{relay:?}");
}

#[test]
fn oversized_header_section_gets_552() {
    let s = Server::start("[limits]\nmax_header_size = \"2KB\"\n");
    let mut c = Raw::connect(s.addr("smtp"));
    c.reply();
    c.cmd("EHLO client.test");
    c.cmd("MAIL FROM:<a@client.test>");
    c.cmd("RCPT TO:<b@example.net>");
    assert!(c.cmd("DATA").starts_with("354"));
    let mut msg = String::from("Subject: big\r\n");
    for i in 0..100 {
        msg.push_str(&format!("X-Filler-{i}: {}\r\n", "y".repeat(40)));
    }
    msg.push_str("\r\nbody\r\n.");
    let r = c.cmd(&msg);
    assert!(r.starts_with("552 5.3.4"), "{r}");
    // The session goes on.
    assert!(c.cmd("NOOP").starts_with("250"));
}

/// A clamd stand-in on a unix socket: answers "stream: OK" at once, except for messages that
/// contain SLOWSCAN, which it holds for 5 s. It touches `DIR/slow-started` when a slow scan
/// begins.
const FAKE_CLAMD: &str = r#"
import os, socket, struct, sys, threading, time
path, marker = sys.argv[1], sys.argv[2]
srv = socket.socket(socket.AF_UNIX); srv.bind(path); srv.listen(16)
print("ready", flush=True)
def handle(c):
    data = b""
    while not data.endswith(b"\0") or len(data) < 10:
        chunk = c.recv(65536)
        if not chunk: return
        data += chunk
        if data.startswith(b"zINSTREAM\0"): break
    body = data[10:]
    while True:
        while len(body) < 4:
            body += c.recv(65536)
        n = struct.unpack(">I", body[:4])[0]
        if n == 0: break
        while len(body) < 4 + n:
            body += c.recv(65536)
        if b"SLOWSCAN" in body[4:4 + n]:
            open(marker, "w").close(); time.sleep(5)
        body = body[4 + n:]
    c.sendall(b"stream: OK\0"); c.close()
deadline = time.time() + 120
srv.settimeout(1)
while time.time() < deadline:
    try:
        c, _ = srv.accept()
    except socket.timeout:
        continue
    threading.Thread(target=handle, args=(c,), daemon=True).start()
"#;

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_slow_scanner_does_not_delay_other_sessions_on_the_core() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("clamd.sock");
    let marker = tmp.path().join("slow-started");
    let mut child = Command::new("python3")
        .args(["-c", FAKE_CLAMD])
        .arg(&sock)
        .arg(&marker)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _clamd = Killed(child);
    let dir = tmp.path().join("spool");
    let cfg = crate::harness::base_config(
        &dir,
        &format!(
            "[scan.clamd]\naddress = \"unix:{}\"\ntimeout = \"30s\"\n",
            sock.display()
        ),
    )
    .replace("threads = 2", "threads = 1");
    let s = Server::start_in(&dir, &cfg);
    let addr = s.addr("smtp");
    let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let slow = {
        let order = order.clone();
        std::thread::spawn(move || {
            let mut c = Raw::connect(addr);
            c.reply();
            c.cmd("EHLO slow.test");
            c.cmd("MAIL FROM:<a@client.test>");
            c.cmd("RCPT TO:<b@example.net>");
            c.cmd("DATA");
            let r = c.cmd("Subject: slow\r\n\r\nSLOWSCAN\r\n.");
            order.lock().unwrap().push(("slow", r));
        })
    };
    // Wait (bounded) until the slow scan is running, then send a normal message on the same core.
    for _ in 0..200 {
        if marker.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    assert!(marker.exists(), "the slow scan never started");
    let mut c = Raw::connect(addr);
    c.reply();
    c.cmd("EHLO fast.test");
    c.cmd("MAIL FROM:<a@client.test>");
    c.cmd("RCPT TO:<b@example.net>");
    c.cmd("DATA");
    let r = c.cmd("Subject: fast\r\n\r\nclean\r\n.");
    order.lock().unwrap().push(("fast", r));
    slow.join().unwrap();
    let order = order.lock().unwrap();
    assert_eq!(order[0].0, "fast", "{order:?}");
    assert!(order[0].1.starts_with("250 "), "{order:?}");
    assert!(order[1].1.starts_with("250 "), "{order:?}");
}

#[test]
fn scanner_down_tempfails_or_accepts_as_configured() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-clamd.sock");
    let s = Server::start(&format!(
        "[scan.clamd]\naddress = \"unix:{}\"\ntimeout = \"2s\"\n",
        missing.display()
    ));
    let out = client(&s, "smtp", &[]);
    assert!(out[0].starts_with("ERR data 451 4.7.1"), "{out:?}");
    let s = Server::start(&format!(
        "[scan.clamd]\naddress = \"unix:{}\"\non_error = \"accept\"\n",
        missing.display()
    ));
    let out = client(&s, "smtp", &[]);
    assert!(out[0].starts_with("OK "), "{out:?}");
}

/// Starts a real scanner with `scanners.sh`; `None` (after a skip) only when it is not
/// installed. A scanner that is installed but does not start fails the test.
fn real_scanner(kind: &str, dir: &std::path::Path) -> Option<(Killed, String)> {
    let mut child = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/it/scanners.sh"))
        .arg(kind)
        .arg(dir)
        .stdout(Stdio::piped())
        .spawn()
        .ok()?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .ok()?;
    if line.starts_with("SKIP") {
        ringmta::testkit::skip(&format!("{kind} is not available ({})", line.trim()));
        let _ = child.kill();
        let _ = child.wait();
        return None;
    }
    // Anything else than an address is a daemon that is installed but did not start (crashed,
    // never ready, lost a port race): an error, never a skip.
    let Some(addr) = line.trim().split_once(' ').map(|(_, a)| a.to_owned()) else {
        let status = child.wait();
        panic!("scanners.sh {kind} failed to start ({status:?}); its stderr is above");
    };
    Some((Killed(child), addr))
}

/// The EICAR test file, which every clamd signature set detects.
const EICAR: &str = r"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

#[test]
fn real_clamd_rejects_malware_and_passes_clean_mail() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((_clamd, addr)) = real_scanner("clamd", &tmp.path().join("clamd")) else {
        return;
    };
    let s = Server::start(&format!("[scan.clamd]\naddress = \"{addr}\"\n"));
    let mut c = Raw::connect(s.addr("smtp"));
    c.reply();
    c.cmd("EHLO client.test");
    c.cmd("MAIL FROM:<a@client.test>");
    c.cmd("RCPT TO:<b@example.net>");
    c.cmd("DATA");
    let r = c.cmd(&format!("Subject: test\r\n\r\n{EICAR}\r\n."));
    assert!(r.starts_with("554 5.7.1") && r.contains("Eicar"), "{r}");
    c.cmd("MAIL FROM:<a@client.test>");
    c.cmd("RCPT TO:<b@example.net>");
    c.cmd("DATA");
    let r = c.cmd("Subject: clean\r\n\r\nnothing to see\r\n.");
    assert!(r.starts_with("250 2.0.0"), "{r}");
}

#[test]
fn real_rspamd_rejects_gtube_and_passes_clean_mail() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((_rspamd, url)) = real_scanner("rspamd", &tmp.path().join("rspamd")) else {
        return;
    };
    let s = Server::start(&format!("[scan.rspamd]\nurl = \"{url}\"\n"));
    let mut c = Raw::connect(s.addr("smtp"));
    c.reply();
    c.cmd("EHLO client.test");
    c.cmd("MAIL FROM:<a@client.test>");
    c.cmd("RCPT TO:<b@example.net>");
    c.cmd("DATA");
    let gtube = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";
    let r = c.cmd(&format!("Subject: test\r\n\r\n{gtube}\r\n."));
    assert!(r.starts_with("550 5.7.1"), "{r}");
    c.cmd("MAIL FROM:<a@client.test>");
    c.cmd("RCPT TO:<b@example.net>");
    c.cmd("DATA");
    let r =
        c.cmd("Subject: hello\r\nFrom: a@client.test\r\n\r\nA perfectly ordinary message.\r\n.");
    assert!(r.starts_with("250 2.0.0"), "{r}");
}

/// Signs with the test RSA key, delivers to the sink, and verifies the signature with Python's
/// dkimpy, which fetches the public key from a DNS server on loopback.
#[test]
fn dkim_signature_verifies_with_an_independent_verifier() {
    let key = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/content/testdata/rsa2048.pkcs8.pem"
    );
    let public = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/content/testdata/rsa2048.dns.txt"
    ))
    .unwrap();
    let txt = format!("v=DKIM1; k=rsa; p={}", public.trim());
    let zone = serde_json::json!({ "s1._domainkey.example.com": { "TXT": [txt] } }).to_string();
    let Some(dns) = crate::harness::Dns::start(&zone) else {
        ringmta::testkit::skip("python3 with dnslib is needed");
        return;
    };
    let sink = crate::harness::Sink::start();
    let extra = format!(
        "[delivery]\nroutes = {{ \"*\" = \"{}\" }}\n[[dkim]]\ndomain = \"example.com\"\nselector = \"s1\"\nprivate_key = \"{key}\"\n",
        sink.addr
    );
    let s = Server::start(&extra);
    let out = client(&s, "submissions", &["--mode", "ssl", "--auth", "plain"]);
    assert!(out[0].starts_with("OK "), "{out:?}");
    let msgs = sink.wait_for("the signed message", 30, |m| !m.is_empty());
    // The message after the sink's two X-Sink- lines.
    let stored = msgs[0].splitn(3, "\r\n").nth(2).unwrap().to_owned();
    assert!(stored.starts_with("DKIM-Signature: "), "{stored}");
    let verify = r#"
import sys
try:
    import dkim
    from dnslib import DNSRecord
except ImportError as e:
    print("SKIP", e); sys.exit(0)
port = int(sys.argv[1])
msg = sys.stdin.buffer.read()
def dnsfunc(name, timeout=5):
    name = name.decode() if isinstance(name, bytes) else name
    r = DNSRecord.parse(DNSRecord.question(name, "TXT").send("127.0.0.1", port, timeout=timeout))
    return b"".join(b"".join(rr.rdata.data) for rr in r.rr)
print("VALID" if dkim.verify(msg, dnsfunc=dnsfunc) else "INVALID")
tampered = msg.replace(b"Subject: test", b"Subject: tampered")
print("VALID" if dkim.verify(tampered, dnsfunc=dnsfunc) else "INVALID")
"#;
    let mut child = Command::new("python3")
        .args(["-c", verify])
        .arg(dns.port.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), stored.as_bytes()).unwrap();
    let out = String::from_utf8(child.wait_with_output().unwrap().stdout).unwrap();
    if out.starts_with("SKIP") {
        ringmta::testkit::skip(&format!("dkimpy is needed ({out})"));
        return;
    }
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, ["VALID", "INVALID"], "{stored}");
}

/// Nested and wide MIME bombs are refused at the end of DATA, before any scanner parses them;
/// an ordinary multipart message with an attachment passes the same checks. Runs with the real
/// clamd and rspamd in front when they are installed.
#[test]
fn mime_bombs_are_refused_before_the_scanners_and_ordinary_multipart_passes() {
    let tmp = tempfile::tempdir().unwrap();
    let clamd = real_scanner("clamd", &tmp.path().join("clamd"));
    let rspamd = real_scanner("rspamd", &tmp.path().join("rspamd"));
    let mut cfg = String::new();
    if let Some((_, addr)) = &clamd {
        cfg.push_str(&format!("[scan.clamd]\naddress = \"{addr}\"\n"));
    }
    if let Some((_, url)) = &rspamd {
        cfg.push_str(&format!("[scan.rspamd]\nurl = \"{url}\"\n"));
    }
    let s = Server::start(&cfg);
    let mut c = Raw::connect(s.addr("smtp"));
    c.reply();
    c.cmd("EHLO client.test");
    let mut send = |body: &str| {
        assert!(c.cmd("MAIL FROM:<a@client.test>").starts_with("250"));
        assert!(c.cmd("RCPT TO:<b@example.net>").starts_with("250"));
        assert!(c.cmd("DATA").starts_with("354"));
        c.cmd(&format!(
            "From: a@client.test\r\nSubject: mime\r\n{body}\r\n."
        ))
    };

    // 5,000 multiparts inside one another (about 400 KB).
    let depth = 5_000;
    let mut deep = String::new();
    for i in 0..depth {
        deep.push_str(&format!(
            "Content-Type: multipart/mixed; boundary=\"n{i}\"\r\n\r\n--n{i}\r\n"
        ));
    }
    deep.push_str("Content-Type: text/plain\r\n\r\ncore\r\n");
    for i in (0..depth).rev() {
        deep.push_str(&format!("--n{i}--\r\n"));
    }
    let r = send(&deep);
    assert!(r.starts_with("554 5.6.0") && r.contains("nesting"), "{r}");

    // 50,000 empty parts side by side (about 1 MB).
    let mut wide = String::from("Content-Type: multipart/mixed; boundary=w\r\n\r\n");
    for _ in 0..50_000 {
        wide.push_str("--w\r\n\r\nx\r\n");
    }
    wide.push_str("--w--\r\n");
    let r = send(&wide);
    assert!(r.starts_with("554 5.6.0") && r.contains("parts"), "{r}");

    let ordinary = "MIME-Version: 1.0\r\n\
        Content-Type: multipart/mixed; boundary=\"outer\"\r\n\r\n\
        --outer\r\n\
        Content-Type: multipart/alternative; boundary=\"alt\"\r\n\r\n\
        --alt\r\nContent-Type: text/plain\r\n\r\nHello.\r\n\
        --alt\r\nContent-Type: text/html\r\n\r\n<p>Hello.</p>\r\n\
        --alt--\r\n\
        --outer\r\nContent-Type: application/pdf; name=a.pdf\r\n\
        Content-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n\
        --outer--\r\n";
    let r = send(ordinary);
    assert!(r.starts_with("250 2.0.0"), "{r}");
}

/// SIGHUP brings a scanner into the running server: EICAR is accepted before the reload that
/// configures the real clamd, and refused after it (new sessions use the new checks).
#[test]
fn sighup_reload_adds_the_clamd_scanner() {
    let tmp = tempfile::tempdir().unwrap();
    let Some((_clamd, addr)) = real_scanner("clamd", &tmp.path().join("clamd")) else {
        return;
    };
    let dir = tmp.path().join("spool");
    let s = Server::start_in_env(
        &dir,
        &crate::harness::base_config(&dir, ""),
        &[("RUST_LOG", "info")],
    );
    let send = || {
        let mut c = Raw::connect(s.addr("smtp"));
        c.reply();
        c.cmd("EHLO client.test");
        c.cmd("MAIL FROM:<a@client.test>");
        c.cmd("RCPT TO:<b@example.net>");
        c.cmd("DATA");
        c.cmd(&format!("Subject: test\r\n\r\n{EICAR}\r\n."))
    };
    let before = send();
    assert!(before.starts_with("250 2.0.0"), "no scanner yet: {before}");
    let with_clamd =
        crate::harness::base_config(&dir, &format!("[scan.clamd]\naddress = \"{addr}\"\n"));
    std::fs::write(&s.config_path, with_clamd).unwrap();
    s.signal(1);
    s.wait_log("configuration reloaded", 20);
    let after = send();
    assert!(
        after.starts_with("554 5.7.1") && after.contains("Eicar"),
        "{after}"
    );
}
