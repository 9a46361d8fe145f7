//! Two nodes, one Redis (issue 17): a real `redis-server` on a loopback port, two ringmta
//! processes with `threads = 2` each sharing one site limit, a throttle and the suppression
//! list; then Redis killed mid-run and started again.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Raw, Server, Sink, metric_value, metrics, python, submit, wait_events};

const CLIENT: &str = include_str!("client.py");

/// A `redis-server` on a loopback port, killed on drop.
struct Redis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    /// Its options beyond the port: TLS files, a password.
    options: Vec<String>,
    tls: bool,
}

impl Redis {
    fn start() -> Option<Redis> {
        Redis::start_with(Vec::new(), false)
    }

    /// A Redis with these `options`; `tls`: its port speaks TLS only.
    fn start_with(options: Vec<String>, tls: bool) -> Option<Redis> {
        if !crate::harness::have("redis-server") {
            ringmta::testkit::skip("redis-server is needed (apt-get install redis-server)");
            return None;
        }
        // The port is picked by binding port 0; Redis binds it again just after.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = Redis {
            child: None,
            port,
            dir: tempfile::tempdir().unwrap(),
            options,
            tls,
        };
        r.launch();
        Some(r)
    }

    fn launch(&mut self) {
        let port = self.port.to_string();
        let ports: Vec<&str> = match self.tls {
            false => vec!["--port", &port],
            true => vec!["--port", "0", "--tls-port", &port],
        };
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1"])
            .args(ports)
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(self.dir.path())
            .args(&self.options)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The URL with TLS and a password.
    fn tls_url(&self, password: &str) -> String {
        format!("rediss://:{password}@127.0.0.1:{}", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A node routed to `sink`, with the HTTP API on, in `dir`, joined to `redis`.
fn node(dir: &Path, name: &str, redis: &Redis, sink: &Sink, delivery: &str) -> Server {
    let s = node_with(
        dir,
        name,
        &format!("redis = \"{}\"", redis.url()),
        sink,
        delivery,
    );
    wait_metric(&s, "ringmta_cluster_redis_up", 1.0, 20);
    s
}

/// A node routed to `sink` whose `[cluster]` has `cluster` (its `redis` and more).
fn node_with(dir: &Path, name: &str, cluster: &str, sink: &Sink, delivery: &str) -> Server {
    let config = crate::harness::base_config(
        dir,
        &format!(
            "[delivery]\nroutes = {{ \"*\" = \"{}\" }}\nretry_schedule = [\"1s\"]\n{delivery}\n\
             [cluster]\n{cluster}\nnode = \"{name}\"\nlease = \"1s\"\n",
            sink.addr,
        ),
    )
    .replace("http = \"\"", "http = \"127.0.0.1:0\"");
    Server::start_in(dir, &config)
}

/// Waits (bounded) until the node's cluster metric `name` equals `value`.
fn wait_metric(server: &Server, name: &str, value: f64, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let text = metrics(server);
        let found = text
            .lines()
            .filter(|l| l.starts_with(&format!("{name}{{")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .next();
        if found == Some(value) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never became {value} within {secs} s:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The most connections the sink had open at once, from its connection log.
fn peak(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| l.rsplit(' ').next().unwrap().parse::<usize>().unwrap())
        .max()
        .unwrap_or(0)
}

fn post(server: &Server, path: &str) -> String {
    request(server, "POST", path)
}

/// The whole response to a request without a body on the node's HTTP API.
fn request(server: &Server, method: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(server.addr("http")).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(
        format!("{method} {path} HTTP/1.0\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let mut text = String::new();
    c.read_to_string(&mut text).unwrap();
    text
}

/// Waits (bounded) until `GET path` on the node answers with a body for which `pred` holds.
fn wait_api(server: &Server, path: &str, secs: u64, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let r = request(server, "GET", path);
        if pred(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "GET {path} never matched: {r}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (bounded) until the node refuses `rcpt` as suppressed; returns the reply.
fn wait_refused(server: &Server, rcpt: &str, secs: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let mut c = Raw::greeted(server.addr("smtp"));
        c.cmd("EHLO client.test");
        c.cmd("MAIL FROM:<alice@example.com>");
        let reply = c.cmd(&format!("RCPT TO:<{rcpt}>"));
        if reply.starts_with("550") {
            return reply;
        }
        assert!(
            Instant::now() < deadline,
            "{rcpt} still accepted after {secs} s: {reply}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The node number in a queue id (its 13th and 14th hex digits).
fn node_of(id: &str) -> u8 {
    u8::from_str_radix(&id[12..14], 16).unwrap()
}

#[test]
fn two_nodes_share_a_site_limit_a_throttle_and_the_suppression_list() {
    let Some(redis) = Redis::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("connections");
    let sink = Sink::start_with(&["--delay", "100", "--connection-log", log.to_str().unwrap()]);
    let delivery = "max_connections = 2\nthrottle_pause = \"3s\"\nthrottle_ramp_step = \"1s\"\n";
    let (dir_a, dir_b) = (tmp.path().join("a"), tmp.path().join("b"));
    let a = node(&dir_a, "node-a", &redis, &sink, delivery);
    let b = node(&dir_b, "node-b", &redis, &sink, delivery);

    // One site limit of 2 for both nodes: 40 messages through each, at the same time.
    let send = |s: &Server| {
        let port = s.port("smtp").to_string();
        std::thread::spawn(move || {
            let (code, out, err) = python(
                CLIENT,
                &[
                    "--port".into(),
                    port,
                    "--count".into(),
                    "40".into(),
                    "--reconnect".into(),
                ],
            );
            assert_eq!(code, 0, "{err}");
            out
        })
    };
    let (ta, tb) = (send(&a), send(&b));
    let (out_a, out_b) = (ta.join().unwrap(), tb.join().unwrap());
    assert_eq!(out_a.lines().filter(|l| l.starts_with("OK ")).count(), 40);
    assert_eq!(out_b.lines().filter(|l| l.starts_with("OK ")).count(), 40);
    sink.wait_for("80 deliveries", 120, |m| m.len() == 80);
    let open = peak(&log);
    assert!(
        (1..=2).contains(&open),
        "the sink saw {open} connections at once; the shared limit is 2"
    );
    // Queue ids carry each node's number.
    let id_a = out_a.lines().next().unwrap().split(' ').nth(1).unwrap();
    let id_b = out_b.lines().next().unwrap().split(' ').nth(1).unwrap();
    assert_eq!(
        node_of(id_a),
        ringmta::config::cluster::node_id_of("node-a"),
        "{id_a}"
    );
    assert_eq!(
        node_of(id_b),
        ringmta::config::cluster::node_id_of("node-b"),
        "{id_b}"
    );
    assert_ne!(node_of(id_a), node_of(id_b));

    // A 421 4.7.28 seen by node A pauses node B's path too.
    submit(&a, &["--to", "throttle-1-first@example.net"]);
    let ev = wait_events(&dir_a, "node A throttled", 30, |ev| {
        ev.iter().any(|e| e["event"] == "site_throttled")
    });
    let until = ev.iter().find(|e| e["event"] == "site_throttled").unwrap()["paused_until_ms"]
        .as_u64()
        .unwrap();
    b.wait_log("site throttled by another node", 10);
    let out = submit(&b, &["--to", "during-pause@example.net"]);
    let id = out[0].split(' ').nth(1).unwrap().to_owned();
    let now = ringmta::time::unix_ms(std::time::SystemTime::now());
    assert!(now < until, "the test was too slow to see the pause");
    let ev = wait_events(&dir_b, "the message sent during the pause", 30, |ev| {
        ev.iter()
            .any(|e| e["queue_id"] == id.as_str() && e["outcome"] == "delivered")
    });
    let delivered = ev
        .iter()
        .find(|e| e["queue_id"] == id.as_str() && e["outcome"] == "delivered")
        .unwrap()["ts_ms"]
        .as_u64()
        .unwrap();
    assert!(
        delivered >= until,
        "node B delivered at {delivered}, before node A's pause ended at {until}"
    );
    let m = metrics(&b);
    assert!(
        metric_value(&m, "ringmta_cluster_events_applied_total{node=\"node-b\"}")
            .is_some_and(|v| v >= 1.0),
        "{m}"
    );

    // A suppression added through node A's API refuses the address on node B.
    let r = post(&a, "/api/v1/suppressions?address=gone@example.net");
    assert!(
        r.starts_with("HTTP/1.0 201") || r.starts_with("HTTP/1.1 201"),
        "{r}"
    );
    let reply = wait_refused(&b, "gone@example.net", 10);
    assert!(
        reply.contains("5.1.1") || reply.contains("suppress"),
        "{reply}"
    );
    // Removed on node B: node A takes it again.
    let listed = request(&a, "GET", "/api/v1/suppressions");
    assert!(listed.contains("gone@example.net"), "{listed}");
    let r = request(&b, "DELETE", "/api/v1/suppressions/gone@example.net");
    assert!(r.contains(" 200 "), "{r}");
    wait_api(&a, "/api/v1/suppressions", 10, |r| {
        r.contains(" 200 ") && !r.contains("gone@example.net")
    });
    let mut c = Raw::greeted(a.addr("smtp"));
    c.cmd("EHLO client.test");
    c.cmd("MAIL FROM:<alice@example.com>");
    let reply = c.cmd("RCPT TO:<gone@example.net>");
    assert!(reply.starts_with("250"), "{reply}");

    // A suspension made on node A holds on node B; resumed on node B, it ends on node A.
    let r = post(&a, "/api/v1/suspensions?domain=held.example");
    assert!(r.contains(" 201 "), "{r}");
    let id = r
        .split("\"id\":")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .to_owned();
    wait_api(&b, "/api/v1/suspensions", 10, |r| {
        r.contains("held.example")
    });
    let r = request(&b, "DELETE", &format!("/api/v1/suspensions/{id}"));
    assert!(r.contains(" 200 "), "{r}");
    wait_api(&a, "/api/v1/suspensions", 10, |r| {
        r.contains(" 200 ") && !r.contains("held.example")
    });

    // Node B has been idle for longer than a path stays busy (its connections wait
    // `delivery.connection_idle_time`, 2 s, for more mail before they quit; the path is idle
    // 2 s after that): it gave its grant back, and node A alone may use the whole limit.
    let since = ringmta::time::unix_ms(std::time::SystemTime::now());
    std::thread::sleep(Duration::from_millis(4_500));
    let before = sink.messages().len();
    submit(&a, &["--count", "20", "--reconnect"]);
    sink.wait_for("20 more from node A", 60, |m| m.len() >= before + 20);
    let late = std::fs::read_to_string(&log).unwrap();
    let open_alone = late
        .lines()
        .filter(|l| l.split(' ').next().unwrap().parse::<u64>().unwrap() >= since)
        .map(|l| l.rsplit(' ').next().unwrap().parse::<usize>().unwrap())
        .max();
    assert_eq!(open_alone, Some(2), "node A alone: {late}");
}

#[test]
fn with_redis_gone_each_node_keeps_its_share_and_rejoins_when_it_returns() {
    let Some(mut redis) = Redis::start() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let log = tmp.path().join("connections");
    let sink = Sink::start_with(&["--delay", "100", "--connection-log", log.to_str().unwrap()]);
    let (dir_a, dir_b) = (tmp.path().join("a"), tmp.path().join("b"));
    let a = node(&dir_a, "node-a", &redis, &sink, "max_connections = 2\n");
    let b = node(&dir_b, "node-b", &redis, &sink, "max_connections = 2\n");

    // Mail queued on both nodes, still being delivered (10 per second per connection) when
    // Redis dies.
    let queued = |s: &Server| {
        submit(s, &["--count", "30", "--reconnect"])
            .iter()
            .filter(|l| l.starts_with("OK "))
            .count()
    };
    let accepted = queued(&a) + queued(&b);
    assert_eq!(accepted, 60);
    std::thread::sleep(Duration::from_millis(500));
    assert!(sink.messages().len() < 40, "delivered too fast to matter");
    redis.kill();
    wait_metric(&a, "ringmta_cluster_redis_up", 0.0, 10);
    wait_metric(&b, "ringmta_cluster_redis_up", 0.0, 10);
    a.wait_log("cluster: Redis cannot be reached", 5);
    // Both nodes keep accepting and delivering while Redis is away, at their share of the
    // limit (2 / 2 nodes = 1 each).
    let more = submit(&a, &["--count", "10", "--reconnect"])
        .iter()
        .chain(submit(&b, &["--count", "10", "--reconnect"]).iter())
        .filter(|l| l.starts_with("OK "))
        .count();
    assert_eq!(more, 20);
    sink.wait_for("every acknowledged message", 60, |m| {
        m.len() == accepted + more
    });
    let open = peak(&log);
    assert!(open <= 2, "the sink saw {open} connections at once");
    let m = metrics(&a);
    assert_eq!(
        metric_value(&m, "ringmta_cluster_fallbacks_total{node=\"node-a\"}"),
        Some(1.0),
        "{m}"
    );

    // Redis back: both nodes re-join, and sharing resumes.
    redis.launch();
    wait_metric(&a, "ringmta_cluster_redis_up", 1.0, 20);
    wait_metric(&b, "ringmta_cluster_redis_up", 1.0, 20);
    let r = post(&b, "/api/v1/suppressions?address=after@example.net");
    assert!(r.contains(" 201 "), "{r}");
    wait_refused(&a, "after@example.net", 10);
}

/// The per-address connection rate holds across nodes: what node A counted is added to node
/// B's count (after one exchange), so a client cannot get twice the limit by alternating.
#[test]
fn the_per_address_connection_rate_is_counted_over_both_nodes() {
    let Some(redis) = Redis::start() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let sink = Sink::start();
    // Loopback is not trusted here: the limit applies to it.
    let limits = "[limits]\nconnection_rate_per_ip = 4\nrate_window = \"1m\"\n\
                  [relay]\ntrusted_networks = [\"10.0.0.0/8\"]\n";
    let start = |name: &str| {
        let dir = tmp.path().join(name);
        let config = crate::harness::base_config(
            &dir,
            &format!(
                "{limits}[delivery]\nroutes = {{ \"*\" = \"{}\" }}\n\
                 [cluster]\nredis = \"{}\"\nnode = \"{name}\"\n",
                sink.addr,
                redis.url()
            ),
        )
        .replace("http = \"\"", "http = \"127.0.0.1:0\"");
        let s = Server::start_in(&dir, &config);
        wait_metric(&s, "ringmta_cluster_redis_up", 1.0, 20);
        s
    };
    let (a, b) = (start("node-a"), start("node-b"));
    // 127.0.0.7: three connections to node A.
    let client: std::net::IpAddr = "127.0.0.7".parse().unwrap();
    for _ in 0..3 {
        let mut c = Raw::connect_from(client, a.addr("smtp"));
        assert!(c.reply().starts_with("220"));
    }
    // One exchange later, node B lets the fourth in and refuses the fifth.
    std::thread::sleep(Duration::from_millis(500));
    let mut fourth = Raw::connect_from(client, b.addr("smtp"));
    assert!(fourth.reply().starts_with("220"));
    std::thread::sleep(Duration::from_millis(500));
    let mut fifth = Raw::connect_from(client, b.addr("smtp"));
    let reply = fifth.reply();
    assert!(reply.starts_with("421 4.7.0"), "{reply}");
    // Another address is not affected.
    let mut other = Raw::connect_from("127.0.0.8".parse().unwrap(), b.addr("smtp"));
    assert!(other.reply().starts_with("220"));

    // A copied config: a second process named node-a is refused by Redis (and says so), but
    // still takes mail on its fallback shares.
    let twin = node_with(
        &tmp.path().join("twin"),
        "node-a",
        &format!("redis = \"{}\"", redis.url()),
        &sink,
        "",
    );
    let line = twin.wait_log("cluster: cannot join", 10);
    assert!(
        line.contains("another process runs as node \"node-a\""),
        "{line}"
    );
    wait_metric(&twin, "ringmta_cluster_redis_up", 0.0, 1);
    // A node number held by another node's name stops the start.
    let dir = tmp.path().join("clash");
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.with_extension("toml");
    std::fs::write(
        &config,
        crate::harness::base_config(
            &dir,
            &format!(
                "[cluster]\nredis = \"{}\"\nnode = \"node-c\"\nnode_id = {}\n",
                redis.url(),
                ringmta::config::cluster::node_id_of("node-a")
            ),
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ringmta"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("is held by node \"node-a\""), "{err}");
}

/// `rediss://` with a password: a node given the CA joins; a wrong password and an unknown CA are
/// each logged with the reason, and those nodes run on their fallback shares.
#[test]
fn a_node_joins_redis_over_tls_with_a_password_and_a_bad_one_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let pair =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let (cert, key) = (tmp.path().join("redis.crt"), tmp.path().join("redis.key"));
    std::fs::write(&cert, pair.cert.pem()).unwrap();
    std::fs::write(&key, pair.key_pair.serialize_pem()).unwrap();
    let options = [
        "--tls-cert-file",
        cert.to_str().unwrap(),
        "--tls-key-file",
        key.to_str().unwrap(),
        "--tls-auth-clients",
        "no",
        "--requirepass",
        "s3cret",
    ];
    let Some(redis) = Redis::start_with(options.iter().map(|s| s.to_string()).collect(), true)
    else {
        return;
    };
    let sink = Sink::start();
    let ca = format!("redis_ca_file = \"{}\"", cert.display());
    let good = node_with(
        &tmp.path().join("good"),
        "good",
        &format!("redis = \"{}\"\n{ca}", redis.tls_url("s3cret")),
        &sink,
        "",
    );
    wait_metric(&good, "ringmta_cluster_redis_up", 1.0, 20);

    let wrong = node_with(
        &tmp.path().join("wrong"),
        "wrong",
        &format!("redis = \"{}\"\n{ca}", redis.tls_url("guess")),
        &sink,
        "",
    );
    let line = wrong.wait_log("cluster: Redis cannot be reached", 10);
    assert!(
        line.contains("WRONGPASS") || line.contains("uthentication"),
        "{line}"
    );
    let untrusted = node_with(
        &tmp.path().join("untrusted"),
        "untrusted",
        &format!("redis = \"{}\"", redis.tls_url("s3cret")),
        &sink,
        "",
    );
    let line = untrusted.wait_log("cluster: Redis cannot be reached", 10);
    assert!(line.contains("certificate"), "{line}");
    for s in [&wrong, &untrusted] {
        wait_metric(s, "ringmta_cluster_redis_up", 0.0, 1);
    }
    // Both still take mail.
    for s in [&wrong, &untrusted] {
        assert!(submit(s, &[]).iter().all(|l| l.starts_with("OK ")));
    }
}
