//! The operator surface: `/healthz`, `/readyz` and `/metrics` (parsed by Prometheus' own Python
//! parser) on the real binary.

use crate::harness::{Server, Sink, outcomes_of, python, wait_events};

const CLIENT: &str = include_str!("client.py");

/// Relays `count` messages to `to` through the smtp port (one connection); each must be queued.
fn send_to(s: &Server, to: &str, count: usize) {
    let (code, out, err) = python(
        CLIENT,
        &[
            "--port".into(),
            s.port("smtp").to_string(),
            "--to".into(),
            to.into(),
            "--count".into(),
            count.to_string(),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.lines().all(|l| l.starts_with("OK ")), "{out}");
}

#[test]
fn metrics_health_and_readiness() {
    let sink = Sink::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let extra = format!("[delivery]\nroutes = {{ \"*\" = \"{}\" }}\n", sink.addr);
    let cfg =
        crate::harness::base_config(&dir, &extra).replace("http = \"\"", "http = \"127.0.0.1:0\"");
    let s = Server::start_in(&dir, &cfg);
    let port = s.port("smtp").to_string();
    let (code, out, err) = python(
        CLIENT,
        &["--port".into(), port.clone(), "--count".into(), "3".into()],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("OK ")).count(),
        3,
        "{out}"
    );
    let (_, out, _) = python(
        CLIENT,
        &[
            "--port".into(),
            port,
            "--to".into(),
            "perm-z@example.net".into(),
        ],
    );
    assert!(out.starts_with("OK "), "{out}");
    // 3 delivered messages plus the bounce's DSN to alice@example.com.
    sink.wait_for("deliveries and the DSN", 30, |m| m.len() >= 4);
    // The outcome counters follow the sink's 250, the gauges refresh every second.
    crate::harness::wait_metrics(
        &s,
        &[
            ("ringmta_deliveries_total{outcome=\"delivered\"}", 4.0),
            ("ringmta_queue_recipients{state=\"delivered\"}", 4.0),
            ("ringmta_queue_recipients{state=\"bounced\"}", 1.0),
            // Every attempt that got a reply (4 deliveries and the 550), over the sink's
            // plaintext sessions (it offers no STARTTLS).
            ("ringmta_outbound_tls_total{use=\"plaintext\"}", 5.0),
        ],
        30,
    );
    let script = r#"
import sys, urllib.request, urllib.error
base = "http://" + sys.argv[1]
def get(path, method="GET"):
    try:
        r = urllib.request.urlopen(urllib.request.Request(base + path, method=method), timeout=10)
        return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
print("healthz", get("/healthz")[0])
print("readyz", get("/readyz")[0])
print("missing", get("/nope")[0])
print("post", get("/metrics", "POST")[0])
status, text = get("/metrics")
print("metrics", status)
try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:
    print("SKIP-PARSER"); sys.exit(0)
for fam in text_string_to_metric_families(text):
    for s in fam.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        print(f"sample {s.name}{{{labels}}} {s.value}")
"#;
    let (code, out, err) = python(script, &[s.addr("http").to_string()]);
    assert_eq!(code, 0, "{err}");
    let has = |line: &str| out.lines().any(|l| l == line);
    assert!(
        has("healthz 200") && has("readyz 200") && has("missing 404") && has("post 405"),
        "{out}"
    );
    assert!(has("metrics 200"), "{out}");
    if has("SKIP-PARSER") {
        ringmta::testkit::skip(
            "prometheus_client is not installed (pip install prometheus_client)",
        );
        return;
    }
    let value = |name: &str| -> f64 {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("sample {name} ")))
            .unwrap_or_else(|| panic!("no {name} in\n{out}"))
            .parse()
            .unwrap()
    };
    // 4 client messages + 1 DSN generated locally (counted as a DSN, not as accepted).
    assert_eq!(value("ringmta_messages_accepted_total{}"), 4.0);
    assert_eq!(value("ringmta_accept_latency_seconds_count{}"), 4.0);
    assert_eq!(value("ringmta_deliveries_total{outcome=bounced}"), 1.0);
    assert!(value("ringmta_deliveries_total{outcome=delivered}") >= 4.0);
    assert_eq!(
        value("ringmta_delivery_failures_total{category=user_unknown}"),
        1.0
    );
    assert_eq!(value("ringmta_dsns_total{}"), 1.0);
    assert!(value("ringmta_spool_bytes{}") > 0.0);
    assert_eq!(value("ringmta_queue_pending_recipients{}"), 0.0);
    assert_eq!(value("ringmta_queue_recipients{state=bounced}"), 1.0);
    assert!(value("ringmta_queue_recipients{state=delivered}") >= 4.0);
    assert!(value("ringmta_connections_total{}") >= 2.0);
}

const HTTP: &str = r#"
import base64, json, sys, urllib.request, urllib.error
base = "http://" + sys.argv[1]
def call(method, path, body=None, auth=None, raw=None):
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        r = urllib.request.urlopen(req, timeout=20)
        return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
"#;

fn api(server: &Server, script: &str) -> Vec<String> {
    let (code, out, err) = python(
        &format!("{HTTP}\n{script}"),
        &[server.addr("http").to_string()],
    );
    assert_eq!(code, 0, "{err}\n{out}");
    out.lines().map(String::from).collect()
}

/// A server with the HTTP API whose mail goes to `sink`: its temporary directory (keep it),
/// its spool and the server.
fn server_to(sink: &Sink) -> (tempfile::TempDir, std::path::PathBuf, Server) {
    server_to_with(sink, "")
}

/// A server whose next hop refuses connections (mail stays deferred for an hour), with its
/// HTTP API; the hop's address last.
fn server_to_a_dead_hop() -> (
    tempfile::TempDir,
    std::path::PathBuf,
    Server,
    std::net::SocketAddr,
) {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = closed.local_addr().unwrap();
    drop(closed);
    let (tmp, dir, s) = server_routed_to(dead, "retry_schedule = [\"1h\"]\n");
    (tmp, dir, s, dead)
}

/// [`server_to`] with more `[delivery]` keys.
fn server_to_with(sink: &Sink, delivery: &str) -> (tempfile::TempDir, std::path::PathBuf, Server) {
    server_routed_to(sink.addr, delivery)
}

/// A server with the HTTP API routing every domain to `hop`, with more `[delivery]` keys.
fn server_routed_to(
    hop: std::net::SocketAddr,
    delivery: &str,
) -> (tempfile::TempDir, std::path::PathBuf, Server) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let config = http_config(
        &dir,
        &format!("[delivery]\nroutes = {{ \"*\" = \"{hop}\" }}\n{delivery}"),
    );
    let s = Server::start_in(&dir, &config);
    (tmp, dir, s)
}

fn http_config(dir: &std::path::Path, extra: &str) -> String {
    crate::harness::base_config(dir, extra).replace("http = \"\"", "http = \"127.0.0.1:0\"")
}

#[test]
fn http_injection_is_authenticated_checked_durable_and_delivered() {
    let sink = Sink::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let s = Server::start_in(
        &dir,
        &http_config(
            &dir,
            &format!("[delivery]\nroutes = {{ \"*\" = \"{}\" }}\n", sink.addr),
        ),
    );
    let pw = crate::harness::PASSWORD;
    let out = api(
        &s,
        &format!(
            r#"
ok = {{"from": "Alice <alice@example.com>", "to": ["bob@example.net"], "subject": "Invoice", "text": "hi",
      "attachments": [{{"filename": "a.txt", "content_type": "text/plain", "content": "aGVsbG8="}}]}}
code, body = call("POST", "/api/v1/messages", ok, "alice@example.com:{pw}")
print("inject", code, body.get("id", body))
print("noauth", call("POST", "/api/v1/messages", ok)[0])
print("badpw", call("POST", "/api/v1/messages", ok, "alice@example.com:nope")[0])
print("sender", call("POST", "/api/v1/messages", dict(ok, **{{"from": "ceo@bank.example"}}), "alice@example.com:{pw}")[0])
print("inject-hdr", call("POST", "/api/v1/messages", dict(ok, subject="x\r\nBcc: v@example.org"), "alice@example.com:{pw}")[0])
print("badjson", call("POST", "/api/v1/messages", None, "alice@example.com:{pw}", raw=b"{{not json")[0])
raw = {{"from": "alice@example.com", "to": "bob@example.net", "raw": "From: ceo@bank.example\nSubject: spoof\n\nx"}}
print("spoof", call("POST", "/api/v1/messages", raw, "alice@example.com:{pw}")[0])
"#
        ),
    );
    let get = |k: &str| {
        out.iter()
            .find(|l| l.starts_with(&format!("{k} ")))
            .cloned()
            .unwrap_or_default()
    };
    let inject = get("inject");
    assert!(inject.starts_with("inject 202 "), "{out:?}");
    let id = inject.rsplit(' ').next().unwrap().to_owned();
    assert_eq!(id.len(), 16, "{inject}");
    assert_eq!(get("noauth"), "noauth 401");
    assert_eq!(get("badpw"), "badpw 401");
    assert_eq!(get("sender"), "sender 403");
    assert_eq!(get("inject-hdr"), "inject-hdr 400");
    assert_eq!(get("badjson"), "badjson 400");
    assert_eq!(get("spoof"), "spoof 403");
    let msgs = sink.wait_for("the injected message", 30, |m| !m.is_empty());
    assert_eq!(msgs.len(), 1, "only the accepted message: {msgs:?}");
    assert!(
        msgs[0].contains("Subject: Invoice") && msgs[0].contains("a.txt"),
        "{}",
        msgs[0]
    );
    // The state follows the sink's 250; ask until it does (bounded).
    let state = api(
        &s,
        &format!(
            "import time\nfor _ in range(300):\n    code, body = call('GET', '/api/v1/messages/{id}')\n    if body['recipients'][0]['state'] == 'delivered': break\n    time.sleep(0.1)\nprint(code, body['recipients'][0]['state'])"
        ),
    );
    assert_eq!(state, ["200 delivered"]);
}

#[test]
fn queue_api_counts_flushes_deletes_and_bounces() {
    let sink = Sink::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    // example.net goes nowhere (deferred for an hour); the sender's domain reaches the sink.
    let extra = format!(
        "[delivery]\nroutes = {{ \"example.net\" = \"127.0.0.1:1\", \"*\" = \"{}\" }}\nretry_schedule = [\"1h\"]\n",
        sink.addr
    );
    let s = Server::start_in(&dir, &http_config(&dir, &extra));
    let (code, out, err) = python(
        CLIENT,
        &[
            "--port".into(),
            s.port("smtp").to_string(),
            "--count".into(),
            "2".into(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    let ids: Vec<&str> = out.lines().filter_map(|l| l.strip_prefix("OK ")).collect();
    assert_eq!(ids.len(), 2, "{out}");
    let out = api(
        &s,
        &format!(
            r#"
import time
# The first attempts fail (a closed port): wait (bounded) until both are deferred.
for _ in range(300):
    code, q = call("GET", "/api/v1/queue")
    if q["recipients"].get("deferred", 0) == 2: break
    time.sleep(0.1)
print("queue", code, q["messages"], q["recipients"].get("deferred", 0), q["destinations"].get("example.net", 0))
code, r = call("POST", "/api/v1/queue/flush?domain=example.net")
print("flush", code, r["rescheduled"])
code, r = call("DELETE", "/api/v1/messages/{a}")
print("delete", code, r["id"], r["deleted"])
code, r = call("POST", "/api/v1/messages/{b}/bounce")
print("bounce", code, r["id"], r["bounced"])
print("missing", call("GET", "/api/v1/messages/00000000000000ff")[0])
print("badid", call("GET", "/api/v1/messages/xyz")[0])
code, m = call("GET", "/api/v1/messages/{a}")
print("a", m["recipients"][0]["state"])
code, m = call("GET", "/api/v1/messages/{b}")
print("b", m["recipients"][0]["state"])
"#,
            a = ids[0],
            b = ids[1]
        ),
    );
    let get = |k: &str| {
        out.iter()
            .find(|l| l.starts_with(&format!("{k} ")))
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!(get("queue"), "queue 200 2 2 2", "{out:?}");
    assert_eq!(get("flush"), "flush 200 2", "{out:?}");
    assert_eq!(get("delete"), format!("delete 200 {} 1", ids[0]));
    assert_eq!(get("bounce"), format!("bounce 200 {} 1", ids[1]));
    assert_eq!(get("missing"), "missing 404");
    assert_eq!(get("badid"), "badid 400");
    assert_eq!(get("a"), "a deleted");
    assert_eq!(get("b"), "b bounced");
    // The operator bounce produced a DSN to the sender, through the same queue.
    let msgs = sink.wait_for("the DSN of the operator bounce", 30, |m| {
        m.iter().any(|x| x.contains("Bounced by the operator"))
    });
    assert_eq!(msgs.len(), 1, "{msgs:?}");
}

#[test]
fn queue_cli_uses_the_api_while_the_server_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let s = Server::start_in(&dir, &http_config(&dir, ""));
    let (_, out, _) = python(CLIENT, &["--port".into(), s.port("smtp").to_string()]);
    let id = out
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("OK "))
        .expect("accepted")
        .to_owned();
    let (code, text, err) = s.cli(&["queue", "flush"]);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("\"rescheduled\""), "{text}");
    let (code, text, err) = s.cli(&["queue", "delete", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("\"deleted\":1"), "{text}");
    let (code, _, err) = s.cli(&["queue", "bounce", "00000000000000ff"]);
    assert_ne!(code, 0);
    assert!(err.contains("HTTP 404"), "{err}");
}

/// SIGHUP reloads users and routes without dropping a live session; a broken file is rejected
/// and the running configuration stays.
#[test]
fn sighup_reloads_users_and_routes_and_keeps_sessions() {
    let sink = Sink::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let s = Server::start_in(&dir, &crate::harness::base_config(&dir, ""));
    let mut live = crate::harness::Raw::connect(s.addr("smtp"));
    live.reply();
    assert!(live.cmd("EHLO before.reload").starts_with("250"));

    // The reload brings new routes, a new password and a DKIM key, signed on one signing
    // thread.
    let key = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src/content/testdata/rsa2048.pkcs8.pem"
    );
    let new_cfg = crate::harness::base_config(
        &dir,
        &format!(
            "[delivery]\nroutes = {{ \"*\" = \"{}\" }}\n\
             [[dkim]]\ndomain = \"client.test\"\nselector = \"s1\"\nprivate_key = \"{key}\"\n",
            sink.addr
        ),
    )
    .replace(crate::harness::PASSWORD, "new horse")
    .replace("threads = 2", "threads = 2\ndkim_sign_threads = 1");
    std::fs::write(&s.config_path, &new_cfg).unwrap();
    s.signal(1);
    let port = s.port("submissions").to_string();
    let login = |pw: &str| -> String {
        let (_, out, _) = python(
            CLIENT,
            &[
                "--port".into(),
                port.clone(),
                "--mode".into(),
                "ssl".into(),
                "--auth".into(),
                "plain".into(),
                "--password".into(),
                pw.into(),
            ],
        );
        out
    };
    let mut reloaded = false;
    for _ in 0..100 {
        if login("new horse").starts_with("OK ") {
            reloaded = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(reloaded, "the new password never worked");
    assert!(
        login(crate::harness::PASSWORD).contains(" 535 5.7.8"),
        "the old password still works"
    );
    // The session opened before the reload goes on.
    assert!(live.cmd("MAIL FROM:<a@client.test>").starts_with("250"));
    assert!(live.cmd("RCPT TO:<c@example.net>").starts_with("250"));
    assert!(live.cmd("DATA").starts_with("354"));
    assert!(
        live.cmd("From: a@client.test\r\nSubject: across the reload\r\n\r\nx\r\n.")
            .starts_with("250 2.0.0")
    );
    // New routes apply: mail reaches the sink, signed with the new key.
    let msgs = sink.wait_for("mail routed by the reloaded config", 30, |m| {
        m.iter().any(|x| x.contains("across the reload"))
    });
    let m = msgs
        .iter()
        .find(|x| x.contains("across the reload"))
        .unwrap();
    assert!(
        m.contains("DKIM-Signature: v=1; a=rsa-sha256;") && m.contains("d=client.test"),
        "not signed with the reloaded key:\n{m}"
    );

    // A broken file is rejected; the server keeps the last good configuration.
    std::fs::write(&s.config_path, "this is = not [valid toml").unwrap();
    s.signal(1);
    // The server read the broken file and said so: only then does the check below mean it
    // kept the good configuration.
    s.wait_log("reload rejected", 20);
    assert!(
        login("new horse").starts_with("OK "),
        "the good configuration was dropped"
    );
}

/// SIGHUP applies new bounce rules to the running server: the same 451 from the next hop is
/// retried before the reload and bounced after it (an operator rule tried first).
#[test]
fn sighup_reloads_the_bounce_rules() {
    let sink = Sink::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let rules = tmp.path().join("bounce-rules.toml");
    std::fs::write(&rules, "").unwrap();
    let cfg = |extra: &str| {
        crate::harness::base_config(
            &dir,
            &format!(
                "[delivery]\nroutes = {{ \"*\" = \"{}\" }}\nretry_schedule = [\"1h\"]\n\
                 bounce_rules = \"{}\"\n{extra}",
                sink.addr,
                rules.display()
            ),
        )
    };
    // Info level: the log says when the reload is done.
    let s = Server::start_in_env(&dir, &cfg(""), &[("RUST_LOG", "info")]);
    let send = |to: &str| send_to(&s, to, 1);
    send("temp-9-before@example.net");
    crate::harness::wait_events(&dir, "the first 451", 30, |ev| {
        crate::harness::outcomes_of(ev, "temp-9-before@example.net") == ["deferred"]
    });
    std::fs::write(
        &rules,
        "[[rule]]\ncode = \"451\"\npattern = \"try again\"\ncategory = \"policy\"\naction = \"bounce\"\n",
    )
    .unwrap();
    s.signal(1);
    s.wait_log("configuration reloaded", 20);
    send("temp-9-after@example.net");
    let ev = crate::harness::wait_events(&dir, "the second 451", 30, |ev| {
        !crate::harness::outcomes_of(ev, "temp-9-after@example.net").is_empty()
    });
    let after: Vec<_> = ev
        .iter()
        .filter(|e| e["recipient"] == "temp-9-after@example.net")
        .collect();
    assert_eq!(after[0]["outcome"], "bounced", "{ev:?}");
    assert_eq!(after[0]["category"], "policy", "{ev:?}");
}

/// While a large spool is recovered, the HTTP API is already up: /healthz answers 200 and
/// /readyz 503; once recovery is done (the ready line), /readyz answers 200.
#[test]
fn readyz_is_503_until_recovery_ends() {
    use ringmta::spool::{MessageMeta, NewMessage, RecipientMeta, Shard, ShardConfig};
    use std::io::{BufRead, BufReader};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    // Enough queued messages that reading them back takes a while (about a second here).
    {
        let (mut shard, _) = Shard::open(ShardConfig::new(&dir, 0), 1_000).unwrap();
        let meta = MessageMeta {
            received_at_ms: 1_000,
            reverse_path: "a@client.test".into(),
            recipients: vec![RecipientMeta {
                address: "b@example.net".into(),
                ..RecipientMeta::default()
            }],
            ..MessageMeta::default()
        };
        let body: [&[u8]; 1] = [b"Subject: queued\r\n\r\nx\r\n"];
        for _ in 0..400_000 {
            let mut msg = NewMessage {
                meta: meta.clone(),
                options: Default::default(),
                body: &body,
            };
            shard.append_message(&mut msg, 1_000).unwrap();
        }
        shard.sync().unwrap();
    }
    let cfg = http_config(&dir, crate::harness::NOWHERE).replace("threads = 2", "threads = 1");
    let config_path = tmp.path().join("ringmta.toml");
    std::fs::write(&config_path, cfg).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ringmta"))
        .args(["serve", "--config"])
        .arg(&config_path)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let _guard = Kill(child);
    let status = |addr: &str, path: &str| -> u16 {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(addr).unwrap();
        c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        write!(c, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
        let mut text = String::new();
        c.read_to_string(&mut text).unwrap();
        text.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let http = loop {
        let line = lines.next().expect("stdout closed").unwrap();
        assert!(
            !line.starts_with("ringmta ready:"),
            "ready before the http line: {line}"
        );
        if let Some(rest) = line.strip_prefix("ringmta http: ") {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    assert_eq!(status(&http, "/healthz"), 200);
    assert_eq!(
        status(&http, "/readyz"),
        503,
        "ready while the spool is still read"
    );
    let ready = loop {
        let line = lines.next().expect("stdout closed").unwrap();
        if line.starts_with("ringmta ready:") {
            break line;
        }
    };
    assert!(ready.contains(&format!("http={http}")), "{ready}");
    assert_eq!(status(&http, "/readyz"), 200);
}

/// Operator suspensions (issue 13) through the CLI and the HTTP API: a suspended domain's mail
/// waits (no attempt, no deferral) while other mail flows, and goes at the resume; a site
/// suspended for 3 s holds its mail until it expires; `queue bounce --domain` bounces every
/// queued recipient of a domain in one call, with DSNs.
#[test]
fn suspensions_hold_mail_until_resumed_or_expired_and_a_domain_bounces_in_one_call() {
    let sink = Sink::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let config = crate::harness::base_config(
        &dir,
        &format!("[delivery]\nroutes = {{ \"*\" = \"{}\" }}\n", sink.addr),
    )
    .replace("http = \"\"", "http = \"127.0.0.1:0\"");
    let s = Server::start_in(&dir, &config);
    let cli_json = |args: &[&str]| {
        let (code, out, err) = s.cli(args);
        assert_eq!(code, 0, "{args:?}: {err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let held = cli_json(&["queue", "suspend", "--domain", "Held.Example"]);
    assert_eq!(held["target"]["domain"], "held.example", "{held}");
    let send = |to: &str, count: usize| send_to(&s, to, count);
    send("a@held.example", 3);
    send("b@free.example", 1);
    sink.wait_for("the unsuspended message", 20, |m| m.len() == 1);
    let listed = cli_json(&["queue", "suspensions"]);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    let ev = crate::harness::events(&dir);
    assert!(
        ev.iter().all(|e| e["recipient"] != "a@held.example"),
        "a held recipient was attempted: {ev:?}"
    );
    let id = held["id"].as_u64().unwrap().to_string();
    let resumed = cli_json(&["queue", "resume", &id]);
    assert_eq!(resumed["resumed"].as_u64(), held["id"].as_u64());
    sink.wait_for("the 3 held messages", 20, |m| m.len() == 4);
    let ev = wait_events(&dir, "3 deliveries to the held domain", 20, |ev| {
        outcomes_of(ev, "a@held.example").len() == 3
    });
    assert_eq!(
        outcomes_of(&ev, "a@held.example"),
        ["delivered"; 3],
        "waited, never deferred"
    );
    let (code, _, err) = s.cli(&["queue", "resume", &id]);
    assert_ne!(code, 0, "a second resume of the same id: {err}");
    assert!(err.contains("404"), "{err}");

    // A site suspended for 3 s: its mail goes when the suspension ends by itself.
    let site = sink.addr.to_string();
    let timed = cli_json(&["queue", "suspend", "--site", &site, "--for", "3s"]);
    let until = timed["until_ms"].as_u64().unwrap();
    send("c@free.example", 1);
    // While it waits, the queue summary counts it under its site (free.example resolved to it
    // for the first message).
    let queue = crate::harness::http_get(&s, "/api/v1/queue");
    let body: serde_json::Value =
        serde_json::from_str(queue.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["sites"][&site], 1, "{body}");
    assert_eq!(body["destinations"]["free.example"], 1, "{body}");
    let (code, table, err) = s.cli(&["queue", "ls", "--by-site"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["1", site.as_str()]),
        "{table}"
    );
    sink.wait_for("the message held by the site", 20, |m| m.len() == 5);
    let ev = wait_events(&dir, "its delivery", 20, |ev| {
        outcomes_of(ev, "c@free.example") == ["delivered"]
    });
    let at = ev
        .iter()
        .find(|e| e["recipient"] == "c@free.example")
        .unwrap()["ts_ms"]
        .as_u64()
        .unwrap();
    assert!(
        at >= until,
        "delivered at {at}, the suspension ran until {until}"
    );

    // Bounce a whole domain at once: both recipients fail, each message gets its DSN.
    cli_json(&["queue", "suspend", "--domain", "gone.example"]);
    send("d@gone.example", 2);
    let bounced = cli_json(&["queue", "bounce", "--domain", "gone.example"]);
    assert_eq!(bounced["bounced"], 2, "{bounced}");
    let ev = wait_events(&dir, "two bounces", 20, |ev| {
        outcomes_of(ev, "d@gone.example").len() == 2
    });
    assert_eq!(outcomes_of(&ev, "d@gone.example"), ["bounced"; 2]);
    let msgs = sink.wait_for("two DSNs", 20, |m| {
        m.iter().filter(|x| x.contains("multipart/report")).count() == 2
    });
    assert!(
        msgs.iter()
            .all(|m| !m.contains("X-Sink-Recipients: d@gone.example"))
    );
    // Bad requests get clear errors.
    let (code, _, err) = s.cli(&["queue", "suspend", "--domain", "x.test", "--for", "soon"]);
    assert_ne!(code, 0);
    assert!(err.contains("HTTP 400") && err.contains("soon"), "{err}");
}

/// Suspensions of an egress source and of a user (issue 13): with source `a` suspended, the
/// default pool's mail leaves through `b` alone (the pool skips the suspended path instead of
/// waiting for it); with alice suspended, her authenticated mail waits while relayed mail
/// flows, and goes at the resume.
#[test]
fn a_suspended_source_is_skipped_by_its_pool_and_a_suspended_users_mail_waits() {
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("connections");
    let sink = Sink::start_with(&["--connection-log", log.to_str().unwrap()]);
    let dir = tmp.path().join("spool");
    let extra = format!(
        "[delivery]\nroutes = {{ \"*\" = \"{}\" }}\nmax_connections = 1\negress_pool = \"both\"\n\
         [[egress.sources]]\nname = \"a\"\naddress = \"127.0.0.2\"\n\
         [[egress.sources]]\nname = \"b\"\naddress = \"127.0.0.3\"\n\
         [[egress.pools]]\nname = \"both\"\nsources = [\"a\", \"b\"]\n",
        sink.addr
    );
    let config =
        crate::harness::base_config(&dir, &extra).replace("http = \"\"", "http = \"127.0.0.1:0\"");
    let s = Server::start_in(&dir, &config);
    let cli_json = |args: &[&str]| {
        let (code, out, err) = s.cli(args);
        assert_eq!(code, 0, "{args:?}: {err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let source = cli_json(&["queue", "suspend", "--source", "a"]);
    assert_eq!(source["target"]["source"], "a", "{source}");
    for _ in 0..6 {
        send_to(&s, "x@example.net", 1);
    }
    sink.wait_for("6 messages through b", 30, |m| m.len() == 6);
    let sources = |log: &str| -> Vec<String> {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .map(|l| l.split(' ').nth(1).unwrap_or("").to_owned())
            .collect()
    };
    let used = sources(log.to_str().unwrap());
    assert!(
        !used.is_empty() && used.iter().all(|ip| ip == "127.0.0.3"),
        "connections while a is suspended: {used:?}"
    );

    let user = cli_json(&["queue", "suspend", "--user", "alice@example.com"]);
    crate::harness::submit_authenticated(&s, "held@example.net", 2);
    send_to(&s, "relayed@example.net", 1);
    sink.wait_for("the relayed message", 30, |m| m.len() == 7);
    let ev = crate::harness::events(&dir);
    assert!(
        ev.iter().all(|e| e["recipient"] != "held@example.net"),
        "a suspended user's mail was attempted: {ev:?}"
    );
    for id in [&user["id"], &source["id"]] {
        cli_json(&["queue", "resume", &id.as_u64().unwrap().to_string()]);
    }
    sink.wait_for("alice's 2 messages", 30, |m| m.len() == 9);
    let ev = wait_events(&dir, "alice's deliveries", 20, |ev| {
        outcomes_of(ev, "held@example.net").len() == 2
    });
    assert_eq!(outcomes_of(&ev, "held@example.net"), ["delivered"; 2]);
}

/// The reply to `RCPT TO:<addr>` in a new session on the smtp port.
fn rcpt(s: &Server, addr: &str) -> String {
    let mut c = crate::harness::Raw::greeted(s.addr("smtp"));
    let mail = c.cmd("MAIL FROM:<alice@example.com>");
    assert!(mail.starts_with("250"), "{mail}");
    let reply = c.cmd(&format!("RCPT TO:<{addr}>"));
    c.cmd("QUIT");
    reply
}

/// The suppression list (issue 15): a hard bounce from the next hop (`550 5.1.1`) suppresses the
/// address; a second message to it is refused at RCPT with the reason and the date, and per
/// recipient by the HTTP injection API, while other addresses go on; the CLI lists, removes and
/// adds entries through the API; the list survives a restart.
#[test]
fn a_hard_bounce_suppresses_the_address_until_the_operator_removes_it() {
    let sink = Sink::start();
    let (_tmp, dir, mut s) = server_to(&sink);
    send_to(&s, "perm-gone@example.net", 1);
    wait_events(&dir, "the hard bounce", 30, |ev| {
        outcomes_of(ev, "perm-gone@example.net") == ["bounced"]
    });
    let today = ringmta::suppress::iso_date(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
    );
    assert_eq!(
        rcpt(&s, "Perm-Gone@example.net"),
        format!("550 5.1.1 <perm-gone@example.net> suppressed: user_unknown on {today}\r\n")
    );
    assert!(rcpt(&s, "someone@example.net").starts_with("250 "));
    let pw = crate::harness::PASSWORD;
    let out = api(
        &s,
        &format!(
            r#"
m = {{"from": "alice@example.com", "to": ["perm-gone@example.net", "ok@example.net"], "subject": "s", "text": "x"}}
code, body = call("POST", "/api/v1/messages", m, "alice@example.com:{pw}")
print("mixed", code, json.dumps(body["refused"]))
code, body = call("POST", "/api/v1/messages", dict(m, to=["perm-gone@example.net"]), "alice@example.com:{pw}")
print("all", code, body["error"])
"#
        ),
    );
    let mixed = out.iter().find(|l| l.starts_with("mixed ")).unwrap();
    assert!(
        mixed.starts_with("mixed 202 ")
            && mixed.contains("\"recipient\": \"perm-gone@example.net\"")
            && mixed.contains("suppressed: user_unknown"),
        "{out:?}"
    );
    assert!(
        out.contains(&"all 422 every recipient is suppressed".to_owned()),
        "{out:?}"
    );
    let cli_json = |s: &Server, args: &[&str]| {
        let (code, out, err) = s.cli(args);
        assert_eq!(code, 0, "{args:?}: {err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap()
    };
    let listed = cli_json(&s, &["suppression", "ls"]);
    assert_eq!(listed[0]["address"], "perm-gone@example.net", "{listed}");
    assert_eq!(listed[0]["reason"], "user_unknown", "{listed}");
    assert!(
        listed[0]["reply"]
            .as_str()
            .unwrap()
            .starts_with("550 5.1.1")
    );
    let removed = cli_json(&s, &["suppression", "rm", "perm-gone@example.net"]);
    assert_eq!(removed["removed"], "perm-gone@example.net");
    assert!(rcpt(&s, "perm-gone@example.net").starts_with("250 "));
    let (code, _, err) = s.cli(&["suppression", "rm", "perm-gone@example.net"]);
    assert!(code != 0 && err.contains("404"), "{err}");
    cli_json(
        &s,
        &[
            "suppression",
            "add",
            "a+tag@example.org",
            "--reason",
            "complaint",
        ],
    );
    s.stop();
    s.launch();
    assert_eq!(
        rcpt(&s, "a+tag@example.org"),
        format!("550 5.1.1 <a+tag@example.org> suppressed: complaint on {today}\r\n")
    );
    let listed = cli_json(&s, &["suppression", "ls"]);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
}

/// API tokens (issue 15): with `[[api_tokens]]`, the admin routes need a bearer token with the
/// right scope (401 without or with a wrong one, 403 for a read token that writes), the CLI
/// sends `RINGMTA_API_TOKEN`, and an `inject` token injects; `ringmta api-token` prints a
/// working entry. Without tokens, a `listen.http` other hosts can reach stops the start.
#[test]
fn the_admin_api_needs_a_token_with_the_right_scope() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringmta"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let token_of = |printed: &str| {
        let token = printed
            .lines()
            .next()
            .unwrap()
            .strip_prefix("token: ")
            .unwrap();
        let entry = printed.split_once("\n\n").unwrap().1.to_owned();
        (token.to_owned(), entry)
    };
    let (admin, admin_entry) = token_of(&run(&["api-token", "--name", "ops"]));
    let (reader, reader_entry) =
        token_of(&run(&["api-token", "--name", "dash", "--scopes", "read"]));
    let (injector, injector_entry) =
        token_of(&run(&["api-token", "--name", "app", "--scopes", "inject"]));
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    // Tokens go before [delivery] (the base config's last table is alice's [[users]] entry).
    let config = http_config(
        &dir,
        &format!("{admin_entry}\n{reader_entry}\n{injector_entry}\n"),
    );
    let s = Server::start_in(&dir, &config);
    let out = api(
        &s,
        &format!(
            r#"
def bearer(method, path, token, body=None):
    req = urllib.request.Request(base + path, data=json.dumps(body).encode() if body else None, method=method)
    if token:
        req.add_header("Authorization", "Bearer " + token)
    req.add_header("Content-Type", "application/json")
    try:
        r = urllib.request.urlopen(req, timeout=20)
        return r.status, r.headers.get("WWW-Authenticate")
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("WWW-Authenticate")
print("none", *bearer("GET", "/api/v1/queue", None))
print("wrong", *bearer("GET", "/api/v1/queue", "not-a-token"))
print("read", *bearer("GET", "/api/v1/queue", "{reader}"))
print("read-write", *bearer("POST", "/api/v1/suppressions?address=x@example.net", "{reader}"))
print("admin-write", *bearer("POST", "/api/v1/suppressions?address=x@example.net", "{admin}"))
print("health", *bearer("GET", "/healthz", None))
m = {{"from": "anyone@app.example", "to": ["bob@example.net"], "subject": "s", "text": "x"}}
print("inject", *bearer("POST", "/api/v1/messages", "{injector}", m))
print("inject-read", *bearer("POST", "/api/v1/messages", "{reader}", m))
"#
        ),
    );
    for want in [
        "none 401 Bearer realm=\"ringmta\"",
        "wrong 401 Bearer realm=\"ringmta\"",
        "read 200 None",
        "read-write 403 None",
        "admin-write 201 None",
        "health 200 None",
        "inject 202 None",
        "inject-read 403 None",
    ] {
        assert!(out.contains(&want.to_owned()), "{want} not in {out:?}");
    }
    let (code, _, err) = s.cli(&["suppression", "ls"]);
    assert!(code != 0 && err.contains("401"), "{err}");
    let (code, out, err) = s.cli_env(&["suppression", "ls"], &[("RINGMTA_API_TOKEN", &admin)]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("x@example.net"), "{out}");

    // No tokens and an HTTP listener other hosts could reach: refused before anything binds.
    let open = tmp.path().join("open.toml");
    std::fs::write(
        &open,
        crate::harness::base_config(&tmp.path().join("open"), "")
            .replace("http = \"\"", "http = \"0.0.0.0:0\""),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ringmta"))
        .args(["serve", "--config"])
        .arg(&open)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("listen.http") && err.contains("[[api_tokens]]"),
        "{err}"
    );
}

/// Webhooks (issue 15): events reach a receiver that checks every signature, although it
/// answers 500 to the first posts and ringmta restarts in the middle: every delivered and
/// bounced event of the event log arrives, each at least once, and none fails the signature.
#[test]
fn signed_webhooks_deliver_every_event_across_failures_and_a_restart() {
    let sink = Sink::start();
    let tmp = tempfile::tempdir().unwrap();
    let received = tmp.path().join("received");
    let secret = "a-webhook-secret-of-some-length";
    let receiver = crate::harness::PyServer::start(
        "webhook_receiver.py",
        &[secret.into(), "3".into(), received.display().to_string()],
    );
    let port = receiver.port;
    let dir = tmp.path().join("spool");
    let config = http_config(
        &dir,
        &format!(
            "[[webhooks]]\nurl = \"http://127.0.0.1:{port}/hook\"\nsecret = \"{secret}\"\n\
             events = [\"delivered\", \"bounced\"]\n\
             [delivery]\nroutes = {{ \"*\" = \"{}\" }}\n",
            sink.addr
        ),
    );
    let mut s = Server::start_in(&dir, &config);
    send_to(&s, "first@example.net", 2);
    send_to(&s, "perm-gone@example.net", 1);
    wait_events(&dir, "three outcomes", 30, |ev| ev.len() >= 3);
    s.stop();
    s.launch();
    send_to(&s, "second@example.net", 1);
    send_to(&s, "perm-other@example.net", 1);
    let ev = wait_events(&dir, "five outcomes", 30, |ev| {
        crate::harness::count_outcome(ev, "delivered")
            + crate::harness::count_outcome(ev, "bounced")
            >= 5
    });
    let wanted: Vec<String> = ev
        .iter()
        .filter(|e| e["outcome"] == "delivered" || e["outcome"] == "bounced")
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .collect();
    // DSNs to alice are delivered too: every delivered or bounced event counts.
    assert!(wanted.len() >= 5, "{ev:?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let got = loop {
        let got = std::fs::read_to_string(&received).unwrap_or_default();
        if wanted.iter().all(|id| got.contains(id.as_str())) {
            break got;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "missing events after 60 s: wanted {wanted:?}, received:\n{got}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(!got.contains("BAD"), "{got}");
    assert!(
        got.lines()
            .all(|l| l.ends_with(" delivered") || l.ends_with(" bounced")),
        "only the subscribed types: {got}"
    );
    let m = crate::harness::metrics(&s);
    let failures =
        crate::harness::metric_value(&m, "ringmta_webhook_failures_total{webhook=\"0\"}");
    // The 500s came before the restart or after it; the counter is this run's.
    assert!(failures.is_some(), "{m}");
}

/// A DSN in the style of Postfix's, about `rcpt`, for the VERP address of `qid`.
fn dsn_for(qid: &str, rcpt: &str) -> String {
    format!(
        "From: MAILER-DAEMON@mx.example.net\r\nTo: bounces+{qid}@bounces.example.com\r\n\
         Subject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status; boundary=\"B0\"\r\n\r\n\
         --B0\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n\
         --B0\r\nContent-Type: message/delivery-status\r\n\r\n\
         Reporting-MTA: dns; mx.example.net\r\n\r\n\
         Final-Recipient: rfc822; {rcpt}\r\nAction: failed\r\nStatus: 5.1.1\r\n\
         Diagnostic-Code: smtp; 550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown\r\n\r\n\
         --B0--\r\n"
    )
}

/// An ARF report (RFC 5965) from a feedback loop about `rcpt`, for the VERP address of `qid`.
fn arf_for(qid: &str, rcpt: &str) -> String {
    format!(
        "From: fbl@fbl.example.org\r\nTo: bounces+{qid}@bounces.example.com\r\nSubject: complaint\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=feedback-report; boundary=\"F0\"\r\n\r\n\
         --F0\r\nContent-Type: text/plain\r\n\r\nThis is an abuse report.\r\n\
         --F0\r\nContent-Type: message/feedback-report\r\n\r\n\
         Feedback-Type: abuse\r\nUser-Agent: fbl/1.0\r\nVersion: 1\r\n\
         Original-Rcpt-To: <{rcpt}>\r\nReporting-MTA: dns; fbl.example.org\r\n\r\n\
         --F0\r\nContent-Type: text/rfc822-headers\r\n\r\n\
         From: alice@example.com\r\nTo: {rcpt}\r\nSubject: hello\r\n\r\n--F0--\r\n"
    )
}

/// Sends `body` to `rcpt` on the smtp role from `<>`, as a receiver's MTA would; the final reply.
fn send_report(s: &Server, rcpt: &str, body: &str) -> String {
    let mut c = crate::harness::Raw::greeted(s.addr("smtp"));
    assert!(c.cmd("MAIL FROM:<>").starts_with("250"));
    let reply = c.cmd(&format!("RCPT TO:<{rcpt}>"));
    assert!(reply.starts_with("250"), "{rcpt}: {reply}");
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(body.as_bytes());
    c.send(b".\r\n");
    let reply = c.reply();
    c.cmd("QUIT");
    reply
}

/// Bounce and complaint processing (issue 15): with `delivery.bounce_domain`, mail leaves with
/// a VERP return path naming the message; a DSN and an ARF report sent back to it on the smtp
/// role, from an untrusted client, become `bounced` and `complained` events with the original
/// sender and user, and suppression entries; they are not relayed; a later injection to those
/// addresses is refused and logged as `suppressed`. Unknown addresses of the bounce domain are
/// refused at RCPT.
/// Bounce and complaint processing (issue 15): with `delivery.bounce_domain`, mail leaves with
/// a VERP return path naming the message; a DSN and an ARF report sent back to it on the smtp
/// role, from an untrusted client, become `bounced` and `complained` events with the original
/// sender and user, and suppression entries; they are not relayed; a later injection to those
/// addresses is refused and logged as `suppressed`. Unknown addresses of the bounce domain are
/// refused at RCPT.
#[test]
fn dsns_and_complaints_sent_to_the_verp_address_become_events_and_suppressions() {
    let sink = Sink::start();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let config = http_config(
        &dir,
        &format!(
            "[relay]\ntrusted_networks = [\"10.0.0.0/8\"]\n[delivery]\nroutes = {{ \"*\" = \"{}\" }}\nbounce_domain = \"Bounces.Example.com\"\n",
            sink.addr
        ),
    );
    let s = Server::start_in(&dir, &config);
    crate::harness::submit_authenticated(&s, "bob@example.net", 1);
    crate::harness::submit_authenticated(&s, "erin@example.net", 1);
    let ev = wait_events(&dir, "both delivered", 30, |ev| {
        outcomes_of(ev, "bob@example.net") == ["delivered"]
            && outcomes_of(ev, "erin@example.net") == ["delivered"]
    });
    let qid = |rcpt: &str| {
        ev.iter()
            .find(|e| e["recipient"] == rcpt)
            .and_then(|e| e["queue_id"].as_str())
            .unwrap()
            .to_owned()
    };
    let (bob_id, erin_id) = (qid("bob@example.net"), qid("erin@example.net"));
    let delivered = sink.wait_for("two messages", 10, |m| m.len() == 2);
    for id in [&bob_id, &erin_id] {
        let want = format!("X-Sink-Mail-From: <bounces+{id}@bounces.example.com>");
        assert!(
            delivered
                .iter()
                .any(|m| m.lines().nth(1) == Some(want.as_str())),
            "{want} in {delivered:?}"
        );
    }

    let mut c = crate::harness::Raw::greeted(s.addr("smtp"));
    assert!(c.cmd("MAIL FROM:<>").starts_with("250"));
    assert_eq!(
        c.cmd("RCPT TO:<nobody@bounces.example.com>"),
        "550 5.1.1 <nobody@bounces.example.com>: no such feedback address\r\n"
    );
    assert!(c.cmd("RCPT TO:<someone@example.net>").starts_with("5"));
    c.cmd("QUIT");

    let bob_dsn = dsn_for(&bob_id, "bob@example.net");
    let reply = send_report(
        &s,
        &format!("bounces+{bob_id}@bounces.example.com"),
        &bob_dsn,
    );
    assert!(reply.starts_with("250 "), "{reply}");
    let erin_arf = arf_for(&erin_id, "erin@example.net");
    let reply = send_report(
        &s,
        &format!("BOUNCES+{erin_id}@bounces.example.com"),
        &erin_arf,
    );
    assert!(reply.starts_with("250 "), "{reply}");

    let ev = wait_events(&dir, "the bounce and the complaint", 30, |ev| {
        outcomes_of(ev, "bob@example.net") == ["delivered", "bounced"]
            && outcomes_of(ev, "erin@example.net") == ["delivered", "complained"]
    });
    let bounced = ev.iter().find(|e| e["outcome"] == "bounced").unwrap();
    assert_eq!(bounced["queue_id"], bob_id.as_str(), "{bounced}");
    assert_eq!(bounced["category"], "user_unknown", "{bounced}");
    assert_eq!(bounced["rule"], "generic.user_unknown", "{bounced}");
    assert_eq!(bounced["sender"], "alice@example.com", "{bounced}");
    assert_eq!(bounced["user"], "alice@example.com", "{bounced}");
    assert_eq!(bounced["remote_host"], "mx.example.net", "{bounced}");
    assert!(
        bounced["reply"]
            .as_str()
            .unwrap()
            .starts_with("550 5.1.1 <bob@example.net>"),
        "{bounced}"
    );
    let complained = ev.iter().find(|e| e["outcome"] == "complained").unwrap();
    assert_eq!(complained["queue_id"], erin_id.as_str(), "{complained}");
    assert_eq!(complained["reply"], "complaint: abuse", "{complained}");
    assert_eq!(complained["user"], "alice@example.com", "{complained}");

    // Not relayed. The next hop's DSN came to ringmta, so alice gets ringmta's own failure
    // notice about bob (her NOTIFY default asks for failures); the complaint sends none.
    sink.wait_for("the failure notice to alice", 30, |m| m.len() >= 3);
    std::thread::sleep(std::time::Duration::from_millis(300));
    let all = sink.messages();
    assert_eq!(all.len(), 3, "{all:?}");
    let notice = all
        .iter()
        .find(|m| m.starts_with("X-Sink-Recipients: alice@example.com"))
        .expect("a DSN to alice");
    assert!(notice.contains("X-Sink-Mail-From: <>"), "{notice}");
    assert!(notice.contains("bob@example.net"), "{notice}");
    assert!(notice.contains("Action: failed"), "{notice}");

    // A forged report about an address the message was not sent to changes nothing.
    let forged = arf_for(&erin_id, "mallory@example.org");
    let reply = send_report(
        &s,
        &format!("bounces+{erin_id}@bounces.example.com"),
        &forged,
    );
    assert!(reply.starts_with("250 "), "{reply}");

    let (code, out, err) = s.cli(&["suppression", "ls"]);
    assert_eq!(code, 0, "{err}");
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let reason_of = |addr: &str| {
        listed
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["address"] == addr)
            .map(|e| e["reason"].as_str().unwrap().to_owned())
    };
    assert_eq!(
        reason_of("bob@example.net").as_deref(),
        Some("user_unknown"),
        "{listed}"
    );
    assert_eq!(
        reason_of("erin@example.net").as_deref(),
        Some("complaint"),
        "{listed}"
    );
    assert_eq!(reason_of("mallory@example.org"), None, "{listed}");
    assert!(
        outcomes_of(&crate::harness::events(&dir), "mallory@example.org").is_empty(),
        "a forged report made an event"
    );

    let pw = crate::harness::PASSWORD;
    let out = api(
        &s,
        &format!(
            r#"
m = {{"from": "alice@example.com", "to": ["erin@example.net", "ok@example.net"], "subject": "s", "text": "x"}}
code, body = call("POST", "/api/v1/messages", m, "alice@example.com:{pw}")
print("mixed", code, json.dumps(body["refused"]))
"#
        ),
    );
    assert!(
        out.iter()
            .any(|l| l.starts_with("mixed 202 ") && l.contains("suppressed: complaint")),
        "{out:?}"
    );
    let ev = wait_events(&dir, "the suppressed event", 30, |ev| {
        ev.iter().any(|e| e["event"] == "suppressed")
    });
    let suppressed = ev.iter().find(|e| e["event"] == "suppressed").unwrap();
    assert_eq!(suppressed["recipient"], "erin@example.net", "{suppressed}");
    assert_eq!(suppressed["sender"], "alice@example.com", "{suppressed}");
    assert!(
        suppressed["reply"]
            .as_str()
            .unwrap()
            .starts_with("550 5.1.1 <erin@example.net> suppressed: complaint on "),
        "{suppressed}"
    );
}

/// An `https://` webhook verified against `delivery.tls_ca_file`, subscribed to one user: it
/// gets that user's events, signed, and not the events of mail without that user.
#[test]
fn an_https_webhook_for_one_user_gets_only_that_users_events() {
    let sink = Sink::start();
    let tmp = tempfile::tempdir().unwrap();
    let ca = crate::delivery::TestCa::new(tmp.path());
    let (cert, key) = ca.issue("hook", &["localhost"]);
    let received = tmp.path().join("received");
    let secret = "another-webhook-secret";
    let receiver = crate::harness::PyServer::start(
        "webhook_receiver.py",
        &[
            secret.into(),
            "0".into(),
            received.display().to_string(),
            cert,
            key,
        ],
    );
    let dir = tmp.path().join("spool");
    let config = http_config(
        &dir,
        &format!(
            "[[webhooks]]\nurl = \"https://localhost:{}/hook\"\nsecret = \"{secret}\"\n\
             user = \"alice@example.com\"\n\
             [delivery]\nroutes = {{ \"*\" = \"{}\" }}\ntls_ca_file = \"{}\"\n",
            receiver.port,
            sink.addr,
            tmp.path().join("ca.pem").display()
        ),
    );
    let s = Server::start_in(&dir, &config);
    // The other mail first: once alice's later event has arrived, the poster has read past it.
    send_to(&s, "theirs@example.net", 1);
    wait_events(&dir, "the other delivery", 30, |ev| {
        outcomes_of(ev, "theirs@example.net") == ["delivered"]
    });
    crate::harness::submit_authenticated(&s, "mine@example.net", 1);
    let ev = wait_events(&dir, "both delivered", 30, |ev| {
        outcomes_of(ev, "mine@example.net") == ["delivered"]
            && outcomes_of(ev, "theirs@example.net") == ["delivered"]
    });
    let id_of = |rcpt: &str| {
        ev.iter()
            .find(|e| e["recipient"] == rcpt)
            .map(|e| e["event_id"].as_str().unwrap().to_owned())
            .unwrap()
    };
    let (mine, theirs) = (id_of("mine@example.net"), id_of("theirs@example.net"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let got = loop {
        let got = std::fs::read_to_string(&received).unwrap_or_default();
        if got.contains(&mine) {
            break got;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "alice's event did not arrive over https: {got:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    // The poster reads the log in order: the other event, before alice's, was read and skipped.
    assert!(!got.contains("BAD"), "{got}");
    assert!(
        !got.contains(&theirs),
        "another user's event was posted: {got}"
    );
}

/// Events queued for the log writer die with the process; their status records do not. At
/// start, the events of status records from just before the log's last line on are written
/// again, with the same ids: here the last delivery's lines are cut from the log while ringmta
/// is down (as if it had died before writing them) and come back after the restart.
#[test]
fn events_lost_with_the_process_are_written_again_at_restart() {
    let sink = Sink::start();
    let (_tmp, dir, mut s) = server_to(&sink);
    send_to(&s, "first@example.net", 1);
    wait_events(&dir, "the first delivery", 30, |ev| {
        outcomes_of(ev, "first@example.net") == ["delivered"]
    });
    send_to(&s, "second@example.net", 1);
    let ev = wait_events(&dir, "the second delivery", 30, |ev| {
        outcomes_of(ev, "second@example.net") == ["delivered"]
    });
    let lost = ev
        .iter()
        .find(|e| e["recipient"] == "second@example.net")
        .map(|e| e["event_id"].as_str().unwrap().to_owned())
        .unwrap();
    s.stop();
    let log = dir.join("events.jsonl");
    let text = std::fs::read_to_string(&log).unwrap();
    let kept: String = text
        .lines()
        .filter(|l| !l.contains("second@example.net"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(kept.contains("first@example.net") && !kept.contains(&lost));
    std::fs::write(&log, kept).unwrap();
    s.launch();
    let ev = wait_events(&dir, "the lost event written again", 30, |ev| {
        ev.iter().any(|e| e["event_id"] == lost.as_str())
    });
    let again = ev.iter().find(|e| e["event_id"] == lost.as_str()).unwrap();
    assert_eq!(again["outcome"], "delivered", "{again}");
    assert_eq!(again["sender"], "alice@example.com", "{again}");
    assert!(
        again["reply"].as_str().unwrap().starts_with("250"),
        "{again}"
    );
}

/// `ringmta queue summary` (issue 20): qshape's table of pending recipients by destination and
/// age, live through the API while the server runs and from the spool once it is stopped, with
/// the same counts; `--by` sender, user, state and site; `--json`. The next hop refuses
/// connections, so every recipient stays deferred.
#[test]
fn queue_summary_shows_pending_recipients_by_key_and_age_live_and_offline() {
    let (_tmp, dir, mut s, dead) = server_to_a_dead_hop();
    send_to(&s, "a@one.example", 3);
    send_to(&s, "b@two.example", 1);
    crate::harness::submit_authenticated(&s, "c@one.example", 2);
    wait_events(&dir, "six deferrals", 30, |ev| ev.len() == 6);

    let run = |s: &Server, args: &[&str]| {
        let mut argv = vec!["queue", "summary"];
        argv.extend_from_slice(args);
        let (code, out, err) = s.cli(&argv);
        assert_eq!(code, 0, "{argv:?}: {err}");
        out
    };
    // Rows: the key, the total, then one count per age bucket; all of it is seconds old.
    let rows = |table: &str| -> Vec<Vec<String>> {
        table
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().map(str::to_owned).collect())
            .collect()
    };
    let zeros = ["0"; 9];
    let row = |key: &str, n: u64| -> Vec<String> {
        let mut r = vec![key.to_owned(), n.to_string(), n.to_string()];
        r.extend(zeros.iter().map(|z| z.to_string()));
        r
    };
    let live = run(&s, &[]);
    let header: Vec<&str> = live.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "T", "5", "10", "20", "40", "80", "160", "320", "640", "1440", "+1440"
        ],
        "{live}"
    );
    assert_eq!(
        rows(&live),
        [
            row("TOTAL", 6),
            row("one.example", 5),
            row("two.example", 1)
        ],
        "{live}"
    );
    assert_eq!(
        rows(&run(&s, &["--by", "user"])),
        [row("TOTAL", 6), row("-", 4), row("alice@example.com", 2)]
    );
    assert_eq!(
        rows(&run(&s, &["--by", "state"])),
        [row("TOTAL", 6), row("deferred", 6)]
    );
    assert_eq!(
        rows(&run(&s, &["--by", "site"])),
        [row("TOTAL", 6), row(&dead.to_string(), 6)],
        "both domains resolved to the one route"
    );
    let json: serde_json::Value =
        serde_json::from_str(&run(&s, &["--by", "sender", "--json"])).unwrap();
    assert_eq!(json["by"], "sender", "{json}");
    assert_eq!(json["rows"][1]["key"], "example.com", "{json}");
    assert_eq!(json["rows"][1]["total"], 6, "{json}");
    assert_eq!(json["rows"][1]["counts"][0], 6, "{json}");
    let bad = crate::harness::http_get(&s, "/api/v1/queue/summary?by=mx");
    assert!(
        bad.starts_with("HTTP/1.0 400") && bad.contains("by= takes domain"),
        "{bad}"
    );

    // Stopped: the same table from the spool; sites are only known to the running server.
    assert_eq!(s.stop(), Some(0));
    assert_eq!(rows(&run(&s, &[])), rows(&live));
    let (code, _, err) = s.cli(&["queue", "summary", "--by", "site"]);
    assert_ne!(code, 0);
    assert!(err.contains("needs the running server"), "{err}");
}

/// Mail-client autoconfiguration (issue 20): with `[autoconfig]`, curl fetches Thunderbird's
/// file from both of its paths and the Apple profile; Python's XML and plist parsers read them
/// back with the structure their formats document: the submissions port with SSL first, then
/// the submission port with STARTTLS, a cleartext password over TLS, the user's address as
/// login. Without the section the paths are 404.
#[test]
fn mail_clients_fetch_their_submission_settings() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("spool");
    let s = Server::start_in(
        &dir,
        &http_config(
            &dir,
            "[autoconfig]\nenabled = true\nhostname = \"smtp.example.com\"\n\
             display_name = \"Example Mail\"\nsubmissions_port = 465\nsubmission_port = 587\n\
             imap = \"imap.example.com:993\"\n",
        ),
    );
    let http = s.addr("http");
    let curl = |path: &str| -> (String, String) {
        let out = std::process::Command::new("curl")
            .args(["-s", "-w", "\n%{http_code} %{content_type}"])
            .arg(format!("http://{http}{path}"))
            .output()
            .expect("curl");
        let text = String::from_utf8(out.stdout).unwrap();
        let (body, status) = text.rsplit_once('\n').unwrap();
        (status.to_owned(), body.to_owned())
    };
    const CHECK: &str = r#"
import sys, json, plistlib, xml.etree.ElementTree as ET
kind, text = sys.argv[1], sys.stdin.read()
if kind == "thunderbird":
    root = ET.fromstring(text)
    assert root.tag == "clientConfig" and root.get("version") == "1.1", root.tag
    (p,) = root.findall("emailProvider")
    out = {"id": p.get("id"), "domain": p.findtext("domain"), "name": p.findtext("displayName"),
           "incoming": [s.findtext("hostname") + ":" + s.findtext("port") for s in p.findall("incomingServer")],
           "outgoing": []}
    for s in p.findall("outgoingServer"):
        assert s.get("type") == "smtp"
        out["outgoing"].append([s.findtext(k) for k in ("hostname", "port", "socketType", "authentication", "username")])
else:
    d = plistlib.loads(text.encode())
    assert d["PayloadType"] == "Configuration" and d["PayloadVersion"] == 1
    (a,) = d["PayloadContent"]
    out = {k: a[k] for k in ("PayloadType", "EmailAddress", "OutgoingMailServerHostName",
           "OutgoingMailServerPortNumber", "OutgoingMailServerUseSSL", "OutgoingMailServerUsername",
           "OutgoingMailServerAuthentication", "IncomingMailServerHostName", "IncomingMailServerPortNumber")}
    out["uuids"] = [d["PayloadUUID"], a["PayloadUUID"]]
print(json.dumps(out))
"#;
    let parse = |kind: &str, body: &str| -> serde_json::Value {
        let out = crate::harness::run_with_input(
            std::process::Command::new("python3").args(["-c", CHECK, kind]),
            body.as_bytes(),
        );
        assert!(
            out.status.success(),
            "{}\n{body}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    for path in [
        "/mail/config-v1.1.xml?emailaddress=bob%40Example.org",
        "/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=bob%40example.org",
    ] {
        let (status, body) = curl(path);
        assert_eq!(status, "200 application/xml", "{path}: {body}");
        let t = parse("thunderbird", &body);
        assert_eq!(t["domain"], "example.org", "{t}");
        assert_eq!(t["name"], "Example Mail", "{t}");
        assert_eq!(
            t["incoming"],
            serde_json::json!(["imap.example.com:993"]),
            "{t}"
        );
        assert_eq!(
            t["outgoing"],
            serde_json::json!([
                [
                    "smtp.example.com",
                    "465",
                    "SSL",
                    "password-cleartext",
                    "%EMAILADDRESS%"
                ],
                [
                    "smtp.example.com",
                    "587",
                    "STARTTLS",
                    "password-cleartext",
                    "%EMAILADDRESS%"
                ]
            ]),
            "{t}"
        );
    }
    let (status, body) = curl("/apple/mail.mobileconfig?emailaddress=bob%40example.org");
    assert_eq!(status, "200 application/x-apple-aspen-config", "{body}");
    let a = parse("apple", &body);
    assert_eq!(a["PayloadType"], "com.apple.mail.managed", "{a}");
    assert_eq!(a["EmailAddress"], "bob@example.org", "{a}");
    assert_eq!(a["OutgoingMailServerHostName"], "smtp.example.com", "{a}");
    assert_eq!(a["OutgoingMailServerPortNumber"], 465, "{a}");
    assert_eq!(a["OutgoingMailServerUseSSL"], true, "{a}");
    assert_eq!(a["OutgoingMailServerUsername"], "bob@example.org", "{a}");
    assert_eq!(
        a["OutgoingMailServerAuthentication"], "EmailAuthPassword",
        "{a}"
    );
    assert_eq!(a["IncomingMailServerHostName"], "imap.example.com", "{a}");
    assert_ne!(a["uuids"][0], a["uuids"][1], "{a}");
    let (status, body) = curl("/apple/mail.mobileconfig");
    assert!(status.starts_with("400"), "{status} {body}");
    assert!(body.contains("emailaddress"), "{body}");

    // Off by default.
    let plain_dir = tmp.path().join("plain");
    let plain = Server::start_in(&plain_dir, &http_config(&plain_dir, ""));
    for path in [
        "/mail/config-v1.1.xml",
        "/.well-known/autoconfig/mail/config-v1.1.xml",
        "/apple/mail.mobileconfig?emailaddress=bob%40example.org",
    ] {
        let off = crate::harness::http_get(&plain, path);
        assert!(off.starts_with("HTTP/1.0 404"), "{path}: {off}");
    }
}

/// A GET with curl; the body.
fn curl_get(url: &str) -> String {
    let out = std::process::Command::new("curl")
        .args(["-s", "--max-time", "10", url])
        .output()
        .expect("curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The metric names (`ringmta_…`) a text mentions.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for (i, _) in text.match_indices("ringmta_") {
        let name: String = text[i..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        names.insert(name);
    }
    names
}

/// Monitoring (issue 20) with a real Prometheus (Debian's): `promtool` checks the alert rules
/// in `dist/prometheus` and runs their unit tests; Prometheus scrapes a running ringmta every
/// second and evaluates the rules; every rule evaluates without error, and the TLS-failure alert
/// goes pending once mail under `tls = "required"` meets a next hop without STARTTLS. Every
/// metric the rules and the Grafana dashboard name is one `/metrics` exports, and every panel's
/// query is valid PromQL to this Prometheus.
#[test]
fn prometheus_scrapes_ringmta_and_the_shipped_rules_and_dashboard_hold() {
    if !crate::harness::have("prometheus") || !crate::harness::have("promtool") {
        ringmta::testkit::skip("prometheus is needed (apt-get install prometheus)");
        return;
    }
    let dist = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("dist");
    let rules = dist.join("prometheus/ringmta-alerts.yml");
    for args in [
        vec!["check", "rules", "ringmta-alerts.yml"],
        vec!["test", "rules", "ringmta-alerts.test.yml"],
    ] {
        let out = std::process::Command::new("promtool")
            .args(&args)
            .current_dir(dist.join("prometheus"))
            .output()
            .unwrap();
        assert!(out.status.success(), "promtool {args:?}: {out:?}");
    }

    let sink = Sink::start();
    let (tmp, dir, s) = server_to_with(&sink, "tls = \"required\"\nretry_schedule = [\"1h\"]\n");
    let target = s.addr("http");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = tmp.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: ringmta\n    static_configs:\n      - targets: [\"{target}\"]\n",
            rules.display()
        ),
    )
    .unwrap();
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _prometheus = Killed(
        std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                tmp.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let api = |path: &str| -> serde_json::Value {
        serde_json::from_str(&curl_get(&format!("http://127.0.0.1:{port}{path}")))
            .unwrap_or(serde_json::Value::Null)
    };
    let wait = |what: &str, ok: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !ok() {
            assert!(std::time::Instant::now() < deadline, "{what} within 60 s");
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
    };
    // The counters must rise while Prometheus watches: mail goes only once ringmta is scraped.
    wait("ringmta scraped", &|| {
        api("/api/v1/query?query=up%7Bjob%3D%22ringmta%22%7D")["data"]["result"][0]["value"][1]
            == "1"
    });
    send_to(&s, "bob@example.net", 2);
    wait_events(&dir, "two TLS deferrals", 30, |ev| ev.len() == 2);
    wait("the TLS-failure alert", &|| {
        api("/api/v1/alerts")["data"]["alerts"]
            .as_array()
            .is_some_and(|a| {
                a.iter().any(|x| {
                    x["labels"]["alertname"] == "RingmtaTlsFailuresRising"
                        && (x["state"] == "pending" || x["state"] == "firing")
                })
            })
    });
    let groups = api("/api/v1/rules");
    let loaded: Vec<&serde_json::Value> = groups["data"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    assert_eq!(loaded.len(), 8, "{groups}");
    for rule in loaded {
        assert_eq!(rule["health"], "ok", "{rule}");
    }

    // The names the rules and the dashboard use are exported.
    let exported = crate::harness::metrics(&s);
    let dashboard = std::fs::read_to_string(dist.join("grafana/ringmta-dashboard.json")).unwrap();
    let used = metric_names(&std::fs::read_to_string(&rules).unwrap())
        .into_iter()
        .chain(metric_names(&dashboard));
    for name in used {
        let family = name.trim_end_matches("_bucket");
        assert!(
            exported.contains(&format!("# TYPE {family} ")),
            "{name} is not exported by /metrics"
        );
    }
    // Every panel query parses and runs.
    let dash: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let mut queries = 0;
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().unwrap() {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m")
                .replace("$instance", ".*");
            let q: String = form_urlencoded::byte_serialize(expr.as_bytes()).collect();
            let r = api(&format!("/api/v1/query?query={q}"));
            assert_eq!(r["status"], "success", "{expr}: {r}");
            // A label typo would still parse: every query finds series, but for the webhook
            // families (no webhook here).
            if !expr.contains("webhook") {
                assert!(
                    r["data"]["result"]
                        .as_array()
                        .is_some_and(|a| !a.is_empty()),
                    "{expr} found nothing: {r}"
                );
            }
            queries += 1;
        }
    }
    assert!(queries >= 16, "{queries}");
}

/// `ringmta top` (issue 20): piped, it prints plain snapshots (`--count`); in a terminal (tmux,
/// read back with capture-pane) it draws the full-screen view with the busiest destinations and
/// quits on `q`. The next hop refuses connections, so mail stays queued; one domain is
/// suspended and shows as such.
#[test]
fn top_shows_the_queue_live_and_quits_on_q() {
    if !crate::harness::have("tmux") {
        ringmta::testkit::skip("tmux is needed (apt-get install tmux)");
        return;
    }
    let (_tmp, dir, s, _) = server_to_a_dead_hop();
    let (code, _, err) = s.cli(&["queue", "suspend", "--domain", "held.example"]);
    assert_eq!(code, 0, "{err}");
    send_to(&s, "a@one.example", 3);
    send_to(&s, "b@held.example", 1);
    wait_events(&dir, "three deferrals", 30, |ev| ev.len() == 3);

    let (code, out, err) = s.cli(&["top", "--count", "2", "--interval", "0.3"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.matches("ringmta top").count(), 2, "{out}");
    let line = |name: &str| -> Vec<String> {
        out.lines()
            .rev()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} row: {out}"))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(line("one.example"), ["one.example", "3"], "{out}");
    assert_eq!(
        line("held.example"),
        ["held.example", "1", "suspended"],
        "{out}"
    );
    assert!(out.contains("pending recipients: 4"), "{out}");
    assert!(
        out.contains("per second: accepted 0.0"),
        "the second snapshot has rates: {out}"
    );

    // Full screen, in a terminal of its own.
    let socket = format!("ringmta-top-{}", std::process::id());
    let tmux = |args: &[&str]| {
        std::process::Command::new("tmux")
            .args(["-L", &socket])
            .args(args)
            .output()
            .unwrap()
    };
    let command = format!(
        "{} top --config {} --interval 0.3",
        env!("CARGO_BIN_EXE_ringmta"),
        dir.with_extension("toml").display()
    );
    let started = tmux(&["new-session", "-d", "-x", "120", "-y", "30", &command]);
    assert!(started.status.success(), "{started:?}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let screen = loop {
        let pane = String::from_utf8_lossy(&tmux(&["capture-pane", "-p"]).stdout).into_owned();
        if pane.contains("busiest destinations") && pane.contains("one.example") {
            break pane;
        }
        if std::time::Instant::now() > deadline {
            let _ = tmux(&["kill-server"]);
            panic!("top did not draw within 20 s:\n{pane}");
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    assert!(
        screen.contains("ringmta top") && screen.contains("(q quits)"),
        "{screen}"
    );
    assert!(screen.contains("pending recipients: 4"), "{screen}");
    assert!(screen.contains("suspended"), "{screen}");
    tmux(&["send-keys", "q"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while tmux(&["has-session"]).status.success() {
        if std::time::Instant::now() > deadline {
            let _ = tmux(&["kill-server"]);
            panic!("top did not quit on q");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// `loadtest send --report` (issue 20) writes a self-contained HTML page; Debian's Chromium,
/// headless, renders it to a screenshot in which the plots' two series colours are drawn (the
/// throughput, p50 and distribution lines in blue, the p99 line in orange), and the page asks
/// for nothing over the network.
#[test]
fn the_load_report_renders_its_plots_in_a_real_browser() {
    if !crate::harness::have("chromium") {
        ringmta::testkit::skip("chromium is needed (apt-get install chromium)");
        return;
    }
    let sink = Sink::start();
    let tmp = tempfile::tempdir().unwrap();
    let report = tmp.path().join("report.html");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["send", "--target", &sink.addr.to_string(), "-c", "4"])
        .args(["--duration", "3s", "--report"])
        .arg(&report)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let html = std::fs::read_to_string(&report).unwrap();
    assert_eq!(html.matches("<svg").count(), 3, "{html}");
    // Each plot has its lines, every second of the 3 s run a point of the throughput one.
    let lines: Vec<usize> = html
        .split("<polyline")
        .skip(1)
        .map(|l| {
            let points = l.split("points=\"").nth(1).unwrap();
            points[..points.find('"').unwrap()].split(' ').count()
        })
        .collect();
    assert_eq!(
        lines.len(),
        4,
        "throughput, p50, p99, distribution: {lines:?}"
    );
    assert!(
        lines[0] >= 3 && lines[..3].iter().all(|&n| n == lines[0]),
        "{lines:?}"
    );
    assert!(lines[3] > 3, "{lines:?}");
    assert!(
        !html.contains("src=") && !html.contains("href=") && !html.contains("<script"),
        "the page fetches nothing"
    );
    let shot = tmp.path().join("report.png");
    let browser = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=1000,1500",
        ])
        .arg(format!(
            "--user-data-dir={}",
            tmp.path().join("profile").display()
        ))
        .arg(format!("--screenshot={}", shot.display()))
        .arg(format!("file://{}", report.display()))
        .output()
        .unwrap();
    assert!(browser.status.success(), "{browser:?}");
    let decoder = png::Decoder::new(std::fs::File::open(&shot).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut pixels).unwrap();
    let step = frame.color_type.samples();
    let count = |rgb: [u8; 3]| {
        pixels[..frame.buffer_size()]
            .chunks(step)
            .filter(|p| p[..3] == rgb)
            .count()
    };
    // #1f77b4 and #ff7f0e, the series colours of loadtest/report.rs.
    let (blue, orange) = (count([0x1f, 0x77, 0xb4]), count([0xff, 0x7f, 0x0e]));
    assert!(blue > 1000, "blue pixels: {blue}");
    assert!(orange > 200, "orange pixels: {orange}");
}
