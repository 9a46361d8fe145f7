//! Starts the real `ringmta` binary on 127.0.0.1 port 0 with a temporary spool, and runs real
//! clients (Python smtplib, swaks) against it.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Password of the test user `alice@example.com`.
pub const PASSWORD: &str = "correct horse";

/// A running server; killed (SIGKILL) on drop unless stopped.
pub struct Server {
    pub child: Option<Child>,
    pub dir: PathBuf,
    pub config_path: PathBuf,
    pub addrs: HashMap<String, SocketAddr>,
    pub dev_password: Option<String>,
    /// Extra environment variables for the server process.
    pub env: Vec<(String, String)>,
    /// Every line the server wrote to stderr (its log), also echoed to the test's stderr.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    _tmp: Option<tempfile::TempDir>,
}

/// The default config for tests: every listener on port 0, two threads, one user. Unless the
/// test configures `[delivery]`, all mail is routed to a closed loopback port so that nothing
/// ever leaves the machine (no DNS either).
pub fn base_config(spool: &Path, extra: &str) -> String {
    let delivery = if extra.contains("[delivery]") {
        ""
    } else {
        NOWHERE
    };
    format!(
        r#"hostname = "mx.test"
spool_dir = "{spool}"
threads = 2
[listen]
smtp = ["127.0.0.1:0"]
submission = ["127.0.0.1:0"]
submissions = ["127.0.0.1:0"]
http = ""
[[users]]
username = "alice@example.com"
password = "{PASSWORD}"
allowed_senders = ["alice@example.com", "*@alice.example"]
{extra}
{delivery}
"#,
        spool = spool.display()
    )
}

/// Routes everything to a closed port on loopback, retried hourly.
pub const NOWHERE: &str =
    "[delivery]\nroutes = { \"*\" = \"127.0.0.1:1\" }\nretry_schedule = [\"1h\"]\n";

impl Server {
    /// Starts a server on a fresh temporary spool with `base_config` plus `extra` TOML.
    pub fn start(extra: &str) -> Server {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("spool");
        let mut s = Server::start_in(&dir, &base_config(&dir, extra));
        s._tmp = Some(tmp);
        s
    }

    /// Starts a server with the given config text (written next to the spool).
    pub fn start_in(dir: &Path, config: &str) -> Server {
        Server::start_in_env(dir, config, &[])
    }

    /// Starts a server with the given config text and extra environment variables.
    pub fn start_in_env(dir: &Path, config: &str, env: &[(&str, &str)]) -> Server {
        std::fs::create_dir_all(dir).unwrap();
        let config_path = dir.with_extension("toml");
        std::fs::write(&config_path, config).unwrap();
        let mut s = Server {
            child: None,
            log: Default::default(),
            dir: dir.to_owned(),
            config_path,
            addrs: HashMap::new(),
            dev_password: None,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            _tmp: None,
        };
        s.launch();
        s
    }

    /// Starts the server under a wrapper command (e.g. `prlimit --nofile=64`).
    pub fn start_wrapped(dir: &Path, config: &str, wrapper: &[&str]) -> Server {
        std::fs::create_dir_all(dir).unwrap();
        let config_path = dir.with_extension("toml");
        std::fs::write(&config_path, config).unwrap();
        let mut s = Server {
            child: None,
            log: Default::default(),
            dir: dir.to_owned(),
            config_path,
            addrs: HashMap::new(),
            dev_password: None,
            env: Vec::new(),
            _tmp: None,
        };
        s.launch_with(wrapper);
        s
    }

    /// (Re)starts the process with the same config and spool.
    pub fn launch(&mut self) {
        self.launch_with(&[]);
    }

    fn launch_with(&mut self, wrapper: &[&str]) {
        let (program, pre): (&str, &[&str]) = match wrapper.split_first() {
            Some((p, rest)) => (p, rest),
            None => (env!("CARGO_BIN_EXE_ringmta"), &[]),
        };
        let mut cmd = Command::new(program);
        cmd.args(pre);
        if !wrapper.is_empty() {
            cmd.arg(env!("CARGO_BIN_EXE_ringmta"));
        }
        let mut child = cmd
            .args(["serve", "--config"])
            .arg(&self.config_path)
            .env("RUST_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ringmta");
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::clone(&self.log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                log.lock().unwrap().push(line);
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        self.addrs.clear();
        loop {
            let line = rx
                .recv_timeout(Duration::from_secs(60))
                .expect("ringmta did not print its ready line within 60 s");
            if let Some(rest) = line.strip_prefix("ringmta dev user: ") {
                self.dev_password = rest
                    .split(" password: ")
                    .nth(1)
                    .and_then(|p| p.split(' ').next())
                    .map(String::from);
            }
            if let Some(rest) = line.strip_prefix("ringmta ready:") {
                for kv in rest.split_whitespace() {
                    let (k, v) = kv.split_once('=').unwrap();
                    self.addrs.insert(k.to_owned(), v.parse().unwrap());
                }
                break;
            }
        }
        self.child = Some(child);
    }

    /// Waits (bounded) until the server's log has a line containing `needle`.
    pub fn wait_log(&self, needle: &str, secs: u64) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(line) = self.log.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return line.clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no log line with {needle:?} within {secs} s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Address of a listener role: "smtp", "submission" or "submissions".
    pub fn addr(&self, role: &str) -> SocketAddr {
        self.addrs[role]
    }

    /// Port of a listener role.
    pub fn port(&self, role: &str) -> u16 {
        self.addr(role).port()
    }

    /// SIGKILL: the crash case.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (bounded); returns the exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        unsafe_kill(c.id() as i32, 15);
        for _ in 0..600 {
            if let Ok(Some(status)) = c.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    /// Sends a signal without waiting.
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            unsafe_kill(c.id() as i32, sig);
        }
    }

    /// Runs `ringmta <args> --config <this config>` and returns (status, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        self.cli_env(args, &[])
    }

    /// [`Server::cli`] with these environment variables set.
    pub fn cli_env(&self, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_ringmta"))
            .args(args)
            .arg("--config")
            .arg(&self.config_path)
            .envs(env.iter().copied())
            .output()
            .expect("run ringmta cli");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

fn unsafe_kill(pid: i32, sig: i32) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status();
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends with the smtplib driver (`client.py`) to the server's smtp port; returns its lines
/// ("OK <queue id>" or "ERR ...").
pub fn submit(server: &Server, args: &[&str]) -> Vec<String> {
    let mut argv = vec!["--port".to_owned(), server.port("smtp").to_string()];
    argv.extend(args.iter().map(|s| s.to_string()));
    let (code, out, err) = python(include_str!("client.py"), &argv);
    assert_eq!(code, 0, "client failed: {err}");
    out.lines().map(String::from).collect()
}

/// Runs a Python 3 script with the given arguments; returns (status, stdout, stderr).
pub fn python(script: &str, args: &[String]) -> (i32, String, String) {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3 is required for the integration tests");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether a program is on PATH.
pub fn have(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A raw SMTP client over a std TcpStream for byte-exact tests.
pub struct Raw {
    pub stream: std::net::TcpStream,
    reader: BufReader<std::net::TcpStream>,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        Raw::from_stream(std::net::TcpStream::connect(addr).unwrap())
    }

    /// Connects from a chosen loopback source address (any of 127.0.0.0/8 works on Linux).
    pub fn connect_from(source: std::net::IpAddr, addr: SocketAddr) -> Raw {
        let sock =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        sock.bind(&SocketAddr::new(source, 0).into()).unwrap();
        sock.connect(&addr.into()).unwrap();
        Raw::from_stream(sock.into())
    }

    pub fn from_stream(stream: std::net::TcpStream) -> Raw {
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let reader = BufReader::new(stream.try_clone().unwrap());
        Raw { stream, reader }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        use std::io::Write;
        self.stream.write_all(bytes).unwrap();
    }

    /// Reads one complete (possibly multi-line) reply.
    pub fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).unwrap_or(0);
            if n == 0 {
                return all;
            }
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return all;
            }
        }
    }

    /// Connects until a greeting is a 220 (a freed slot may take a moment to be seen by the
    /// server), for at most `secs`.
    pub fn connect_until_greeted(addr: SocketAddr, secs: u64) -> Raw {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let mut c = Raw::connect(addr);
            let greeting = c.reply();
            if greeting.starts_with("220") {
                return c;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "still refused after {secs} s: {greeting}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Connects, checks the 220 greeting and says EHLO.
    pub fn greeted(addr: SocketAddr) -> Raw {
        let mut c = Raw::connect(addr);
        let greeting = c.reply();
        assert!(greeting.starts_with("220"), "{greeting}");
        let ehlo = c.cmd("EHLO client.example");
        assert!(ehlo.starts_with("250"), "{ehlo}");
        c
    }

    /// Sends a line (CRLF appended) and returns the reply.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }
}

/// The Prometheus text from `/metrics` on the server's `listen.http` address.
pub fn metrics(server: &Server) -> String {
    http_get(server, "/metrics")
}

/// The whole response (status line, headers, body) to a GET on the server's `listen.http`.
pub fn http_get(server: &Server, path: &str) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(server.addr("http")).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    text
}

/// The value of one sample in Prometheus text, e.g. `ringmta_dsns_total` or
/// `ringmta_queue_recipients{state="bounced"}`.
pub fn metric_value(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Waits (bounded) until every `(sample, least)` has at least that value on `/metrics`.
pub fn wait_metrics(server: &Server, wanted: &[(&str, f64)], secs: u64) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let text = metrics(server);
        if wanted
            .iter()
            .all(|(sample, least)| metric_value(&text, sample).is_some_and(|v| v >= *least))
        {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "metrics never reached {wanted:?} within {secs} s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `loadtest sink` process that stores every accepted message in a directory.
pub struct Sink {
    child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl Sink {
    pub fn start() -> Sink {
        Sink::start_with(&[])
    }

    /// A sink with extra `loadtest sink` flags.
    pub fn start_with(flags: &[&str]) -> Sink {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_loadtest"))
            .args([
                "sink",
                "--listen",
                "127.0.0.1:0",
                "--threads",
                "1",
                "--maildir",
            ])
            .arg(dir.path())
            .args(flags)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn loadtest sink");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .expect("sink address");
        Sink { child, addr, dir }
    }

    /// Every stored message as text, in arrival order.
    pub fn messages(&self) -> Vec<String> {
        let mut names: Vec<_> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .collect();
        names.sort();
        names
            .iter()
            .map(|p| String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned())
            .collect()
    }

    /// Waits (bounded) until `pred` holds for the stored messages; returns them.
    pub fn wait_for(&self, what: &str, secs: u64, pred: impl Fn(&[String]) -> bool) -> Vec<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(secs);
        loop {
            let m = self.messages();
            if pred(&m) {
                return m;
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "timed out after {secs} s waiting for {what}; sink has {} message(s):\n{}",
                    m.len(),
                    m.join("\n----\n")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A DNS server on loopback serving a JSON zone (see dns_server.py).
pub struct Dns {
    child: Child,
    pub port: u16,
}

impl Dns {
    pub fn start(zone: &str) -> Option<Dns> {
        let mut child = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/it/dns_server.py"
            ))
            .arg(zone)
            .arg("300")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .ok()?;
        let mut line = String::new();
        let _ = BufReader::new(child.stdout.take().unwrap()).read_line(&mut line);
        if line.starts_with("SKIP") {
            let _ = child.wait();
            return None;
        }
        // The helper is there but did not come up: an error, never a skip.
        let Some(port) = line.trim().rsplit(' ').next().and_then(|p| p.parse().ok()) else {
            let status = child.wait();
            panic!("dns_server.py failed to start ({status:?}): {line:?}");
        };
        Some(Dns { child, port })
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits (bounded) until `pred` holds for the event log of a spool; returns the events. The
/// sink stores a message before it answers 250 and another thread writes the event line after,
/// so a test that saw the message must still wait for its line.
pub fn wait_events(
    spool: &Path,
    what: &str,
    secs: u64,
    pred: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        let ev = events(spool);
        if pred(&ev) {
            return ev;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {secs} s waiting for {what} in the event log: {ev:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Events with this outcome.
pub fn count_outcome(ev: &[serde_json::Value], outcome: &str) -> usize {
    ev.iter().filter(|e| e["outcome"] == outcome).count()
}

/// The outcomes of one recipient, in order.
pub fn outcomes_of(ev: &[serde_json::Value], recipient: &str) -> Vec<String> {
    ev.iter()
        .filter(|e| e["recipient"] == recipient)
        .map(|e| e["outcome"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// Reads the JSON-lines event log of a spool.
pub fn events(spool: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(spool.join("events.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// A test server script of `tests/it` run with python3: it prints "<name> listening on PORT"
/// first. Killed when dropped.
pub struct PyServer {
    child: std::process::Child,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
}

impl PyServer {
    /// Starts `tests/it/<script>` with `args`.
    pub fn start(script: &str, args: &[String]) -> PyServer {
        let mut child = Command::new("python3")
            .arg(format!("{}/tests/it/{script}", env!("CARGO_MANIFEST_DIR")))
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .rsplit_once(" listening on ")
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or_else(|| panic!("{script} did not start: {line:?}"));
        PyServer { child, port }
    }
}

impl Drop for PyServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Submits `count` messages to `to` as alice, with STARTTLS and AUTH PLAIN on the submission
/// port; each must be queued.
pub fn submit_authenticated(s: &Server, to: &str, count: usize) {
    let argv: Vec<String> = [
        "--port",
        &s.port("submission").to_string(),
        "--mode",
        "starttls",
        "--auth",
        "plain",
        "--count",
        &count.to_string(),
        "--to",
        to,
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let (code, out, err) = python(include_str!("client.py"), &argv);
    assert_eq!(code, 0, "{out}{err}");
}

/// A validating resolver on loopback (Debian's unbound) serving zones from files: each signed
/// zone is signed with a fresh key by ldns-signzone and that key is its trust anchor, so the
/// resolver sets the AD bit on its answers; an unsigned zone answers without it. A local root
/// zone answers every other name with NXDOMAIN, so nothing is ever asked off the machine.
pub struct SignedDns {
    child: Child,
    pub port: u16,
}

impl SignedDns {
    /// `zones` are (origin, records in zone-file syntax relative to the origin, signed). The
    /// records need no SOA or NS: they are added. Each `(from, to)` of `tamper` is replaced in
    /// the signed zones after signing, which breaks the signatures of the records it changes.
    /// None when unbound or ldns-utils is missing.
    pub fn start(
        dir: &Path,
        zones: &[(&str, &str, bool)],
        tamper: &[(&str, &str)],
    ) -> Option<SignedDns> {
        if !["unbound", "ldns-keygen", "ldns-signzone"]
            .into_iter()
            .all(have)
        {
            return None;
        }
        let dir = dir.join("unbound");
        std::fs::create_dir_all(&dir).unwrap();
        let run = |args: &[&str]| {
            let out = Command::new(args[0])
                .args(&args[1..])
                .current_dir(&dir)
                .output()
                .unwrap();
            assert!(out.status.success(), "{args:?}: {out:?}");
            String::from_utf8(out.stdout).unwrap().trim().to_owned()
        };
        std::fs::write(
            dir.join("root.zone"),
            ". 60 IN SOA ns.invalid. hostmaster.invalid. 1 3600 600 86400 60\n. 60 IN NS localhost.\n",
        )
        .unwrap();
        let mut conf_zones = String::from(
            "auth-zone:\n  name: \".\"\n  zonefile: \"root.zone\"\n  for-downstream: no\n  \
             for-upstream: yes\n  fallback-enabled: no\n",
        );
        let mut anchors = String::new();
        let mut tampered = vec![false; tamper.len()];
        for (origin, records, signed) in zones {
            let file = format!("{origin}.zone");
            std::fs::write(
                dir.join(&file),
                format!(
                    "$ORIGIN {origin}.\n$TTL 60\n@ IN SOA ns.{origin}. hostmaster.{origin}. 1 3600 600 86400 60\n\
                     @ IN NS ns.{origin}.\nns IN A 127.0.0.1\n{records}\n"
                ),
            )
            .unwrap();
            let served = if *signed {
                let key = run(&["ldns-keygen", "-a", "ECDSAP256SHA256", "-k", origin]);
                run(&["ldns-signzone", &file, &key]);
                let signed = dir.join(format!("{file}.signed"));
                let mut text = std::fs::read_to_string(&signed).unwrap();
                for (i, (from, to)) in tamper.iter().enumerate() {
                    if text.contains(from) {
                        text = text.replace(from, to);
                        tampered[i] = true;
                    }
                }
                std::fs::write(&signed, text).unwrap();
                anchors += &format!("  trust-anchor-file: \"{key}.key\"\n");
                format!("{file}.signed")
            } else {
                file
            };
            conf_zones += &format!(
                "auth-zone:\n  name: \"{origin}\"\n  zonefile: \"{served}\"\n  for-downstream: no\n  \
                 for-upstream: yes\n  fallback-enabled: no\n"
            );
        }
        for ((from, _), done) in tamper.iter().zip(&tampered) {
            assert!(
                done,
                "{from:?} is in no signed zone: nothing was tampered with"
            );
        }
        // unbound binds its own port: take a free one for UDP and TCP (a clash fails the
        // start, as so-reuseport is off, and another port is tried).
        for _ in 0..10 {
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let port = udp.local_addr().unwrap().port();
            let Ok(tcp) = std::net::TcpListener::bind(("127.0.0.1", port)) else {
                continue;
            };
            drop((udp, tcp));
            let log = dir.join(format!("unbound-{port}.log"));
            std::fs::write(
                dir.join("unbound.conf"),
                format!(
                    "server:\n  interface: 127.0.0.1\n  port: {port}\n  so-reuseport: no\n  \
                     do-daemonize: no\n  username: \"\"\n  chroot: \"\"\n  directory: \"{}\"\n  \
                     pidfile: \"\"\n  use-syslog: no\n  logfile: \"{}\"\n  verbosity: 1\n  \
                     do-ip6: no\n  module-config: \"validator iterator\"\n  \
                     local-zone: \"test.\" nodefault\n{anchors}{conf_zones}",
                    dir.display(),
                    log.display()
                ),
            )
            .unwrap();
            let mut child = Command::new("unbound")
                .args(["-d", "-c"])
                .arg(dir.join("unbound.conf"))
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(status)) = child.try_wait() {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    assert!(
                        text.contains("address already in use"),
                        "unbound exited ({status}): {text}"
                    );
                    break;
                }
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                if text.contains("start of service") {
                    return Some(SignedDns { child, port });
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("unbound did not start on a free port");
    }
}

impl Drop for SignedDns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `cmd` with `input` on its standard input; returns what it printed and its status.
pub fn run_with_input(cmd: &mut Command, input: &[u8]) -> std::process::Output {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}
