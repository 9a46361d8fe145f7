//! `loadtest send`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;

use ringmta::net::transport::Transport;
use ringmta::smtp::ReplyLimits;
use ringmta::smtp::client::{
    ClientConfig, ClientEvent, ClientSession, ClientTimeouts, OutboundEnvelope, OutboundRecipient,
    TlsPolicy,
};

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum TlsMode {
    Implicit,
    Starttls,
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// Server to send to (loopback by default).
    #[arg(long, default_value = "127.0.0.1:2525")]
    target: SocketAddr,
    /// Concurrent connections.
    #[arg(long, short = 'c', default_value_t = 10)]
    connections: usize,
    /// Total messages to send (default 10000 when --duration is not given).
    #[arg(long, short = 'm')]
    messages: Option<u64>,
    /// Send for this long instead, e.g. "30s".
    #[arg(long, short = 'd')]
    duration: Option<String>,
    /// Message size in bytes (headers included).
    #[arg(long, short = 's', default_value_t = 1024)]
    size: usize,
    /// Recipients per message.
    #[arg(long, default_value_t = 1)]
    recipients: usize,
    /// Use PIPELINING when offered (MAIL, RCPT and DATA in one write).
    #[arg(long)]
    pipelining: bool,
    /// Messages per connection (1 = a new SMTP session for every message, like smtp-source
    /// without -d).
    #[arg(long, default_value_t = 1)]
    per_connection: u64,
    /// TLS mode.
    #[arg(long, value_enum)]
    tls: Option<TlsMode>,
    /// AUTH PLAIN credentials as USER:PASS.
    #[arg(long)]
    auth: Option<String>,
    /// Envelope sender.
    #[arg(long, default_value = "loadtest@example.com")]
    from: String,
    /// Recipient domain (recipients are rcptN@DOMAIN).
    #[arg(long, default_value = "example.net")]
    to_domain: String,
    /// Total messages per second (0 = as fast as possible).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Worker threads (default: one per core, at most one per connection).
    #[arg(long)]
    threads: Option<usize>,
    /// Print a machine-readable JSON report.
    #[arg(long)]
    json: bool,
    /// Also write a self-contained HTML report (throughput and latency over time, the
    /// latency distribution, the run's parameters) to this file.
    #[arg(long)]
    report: Option<std::path::PathBuf>,
}

struct Stats {
    connect: Histogram<u64>,
    data: Histogram<u64>,
    txn: Histogram<u64>,
    ok: u64,
    bytes: u64,
    codes: BTreeMap<u16, u64>,
    conn_errors: BTreeMap<String, u64>,
    /// Per second of the run: the latency of the 250 after DATA of the messages accepted in it.
    timeline: BTreeMap<u64, Histogram<u64>>,
}

impl Stats {
    fn new() -> Stats {
        let h = || Histogram::new_with_bounds(1, 120_000_000, 3).expect("static bounds are valid");
        Stats {
            connect: h(),
            data: h(),
            txn: h(),
            ok: 0,
            bytes: 0,
            codes: BTreeMap::new(),
            conn_errors: BTreeMap::new(),
            timeline: BTreeMap::new(),
        }
    }

    /// Counts an accepted message at `second` of the run, with its 250's latency.
    fn at_second(&mut self, second: u64, latency: Duration) {
        let h = self.timeline.entry(second).or_insert_with(|| {
            // Two significant digits: one of these per second of the run.
            Histogram::new_with_bounds(1, 120_000_000, 2).expect("static bounds are valid")
        });
        record(h, latency);
    }

    fn merge(&mut self, o: &Stats) {
        let _ = self.connect.add(&o.connect);
        let _ = self.data.add(&o.data);
        let _ = self.txn.add(&o.txn);
        self.ok += o.ok;
        self.bytes += o.bytes;
        for (k, v) in &o.codes {
            *self.codes.entry(*k).or_default() += v;
        }
        for (k, v) in &o.conn_errors {
            *self.conn_errors.entry(k.clone()).or_default() += v;
        }
        for (second, h) in &o.timeline {
            match self.timeline.get_mut(second) {
                Some(mine) => {
                    let _ = mine.add(h);
                }
                None => {
                    self.timeline.insert(*second, h.clone());
                }
            }
        }
    }
}

struct Plan {
    started: Instant,
    args: SendArgs,
    budget: AtomicI64,
    deadline: Option<Instant>,
    done: AtomicU64,
    stop: AtomicBool,
    client_tls: Arc<rustls::ClientConfig>,
    auth: Option<(String, String)>,
}

impl Plan {
    /// Takes one message from the budget; false when the run is over.
    fn take(&self) -> bool {
        if self.stop.load(Ordering::Relaxed) || self.deadline.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
        self.budget.fetch_sub(1, Ordering::Relaxed) > 0
    }
}

pub fn run(args: SendArgs) -> Result<()> {
    if !args.target.ip().is_loopback() {
        eprintln!("warning: target {} is not a loopback address", args.target);
    }
    if args.connections == 0 || args.recipients == 0 {
        bail!("--connections and --recipients must be at least 1");
    }
    let deadline = match &args.duration {
        Some(d) => Some(
            Instant::now()
                + ringmta::config::resolved::parse_duration(d).context("bad --duration")?,
        ),
        None => None,
    };
    let messages = match (args.messages, deadline) {
        (Some(m), _) => m as i64,
        (None, Some(_)) => i64::MAX,
        (None, None) => 10_000,
    };
    let auth = match &args.auth {
        Some(a) => Some(
            a.split_once(':')
                .map(|(u, p)| (u.to_owned(), p.to_owned()))
                .context("--auth needs USER:PASS")?,
        ),
        None => None,
    };
    let threads = args
        .threads
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
        .clamp(1, args.connections);
    let plan = Arc::new(Plan {
        started: Instant::now(),
        budget: AtomicI64::new(messages),
        deadline,
        done: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        client_tls: insecure_client_config(),
        auth,
        args,
    });

    let started = Instant::now();
    let progress = std::io::stderr().is_terminal().then(|| {
        let plan = Arc::clone(&plan);
        std::thread::spawn(move || {
            let mut last = 0;
            while !plan.stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(500));
                let n = plan.done.load(Ordering::Relaxed);
                eprint!("\r{n} messages, {:.0} msg/s   ", (n - last) as f64 * 2.0);
                last = n;
            }
            eprintln!();
        })
    });

    let mut handles = Vec::new();
    for t in 0..threads {
        let plan = Arc::clone(&plan);
        let conns =
            plan.args.connections / threads + usize::from(t < plan.args.connections % threads);
        handles.push(std::thread::spawn(move || {
            tokio_uring::start(async move {
                let stats = Rc::new(RefCell::new(Stats::new()));
                let mut tasks = Vec::new();
                for c in 0..conns {
                    tasks.push(tokio_uring::spawn(connection_loop(
                        Arc::clone(&plan),
                        Rc::clone(&stats),
                        t,
                        c,
                    )));
                }
                for task in tasks {
                    let _ = task.await;
                }
                Rc::try_unwrap(stats)
                    .ok()
                    .map(RefCell::into_inner)
                    .unwrap_or_else(Stats::new)
            })
        }));
    }
    let mut total = Stats::new();
    for h in handles {
        if let Ok(s) = h.join() {
            total.merge(&s);
        }
    }
    let elapsed = started.elapsed();
    plan.stop.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.join();
    }
    report(&plan.args, &total, elapsed);
    if let Some(path) = &plan.args.report {
        let html = crate::report::html(&crate::report::Run {
            title: format!("loadtest send → {}", plan.args.target),
            parameters: parameters(&plan.args, threads, elapsed),
            accepted: total.ok,
            // Every second of the run, those without a reply at zero (a stall shows). The
            // last second is left out when the run ended inside it: it holds only the replies
            // still in flight, and would read as a drop.
            timeline: (0..elapsed.as_secs_f64().floor() as u64)
                .map(|sec| match total.timeline.get(&sec) {
                    Some(h) => crate::report::Second {
                        second: sec,
                        accepted: h.len(),
                        p50_ms: h.value_at_quantile(0.5) as f64 / 1000.0,
                        p99_ms: h.value_at_quantile(0.99) as f64 / 1000.0,
                    },
                    None => crate::report::Second {
                        second: sec,
                        accepted: 0,
                        p50_ms: 0.0,
                        p99_ms: 0.0,
                    },
                })
                .collect(),
            distribution: total
                .data
                .iter_quantiles(1)
                .map(|v| {
                    (
                        v.quantile_iterated_to(),
                        v.value_iterated_to() as f64 / 1000.0,
                    )
                })
                .collect(),
        });
        std::fs::write(path, html).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("report written to {}", path.display());
    }
    Ok(())
}

async fn connection_loop(plan: Arc<Plan>, stats: Rc<RefCell<Stats>>, thread: usize, conn: usize) {
    let a = &plan.args;
    let per_task_rate = if a.rate > 0.0 {
        a.rate / a.connections as f64
    } else {
        0.0
    };
    let mut next_slot = Instant::now();
    let mut seq = 0u64;
    let mut taken = plan.take();
    while taken {
        let t0 = Instant::now();
        let mut transport = match Transport::connect(a.target).await {
            Ok(t) => t,
            Err(e) => {
                *stats
                    .borrow_mut()
                    .conn_errors
                    .entry(format!("connect: {}", e.kind()))
                    .or_default() += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
                taken = plan.take();
                continue;
            }
        };
        let config = ClientConfig {
            helo: "loadtest.example".into(),
            tls: if a.tls == Some(TlsMode::Starttls) {
                TlsPolicy::Required
            } else {
                TlsPolicy::Disabled
            },
            pipelining: a.pipelining,
            auth: plan.auth.clone(),
            timeouts: ClientTimeouts {
                greeting: Duration::from_secs(60),
                command: Duration::from_secs(60),
                data_init: Duration::from_secs(60),
                data_done: Duration::from_secs(60),
            },
            reply_limits: ReplyLimits::default(),
        };
        if a.tls == Some(TlsMode::Implicit) {
            let name = rustls::pki_types::ServerName::IpAddress(a.target.ip().into());
            if let Err(e) = transport
                .connect_tls(Arc::clone(&plan.client_tls), name)
                .await
            {
                *stats
                    .borrow_mut()
                    .conn_errors
                    .entry(format!("tls: {e}"))
                    .or_default() += 1;
                taken = plan.take();
                continue;
            }
        }
        let mut session =
            ClientSession::new(config, a.tls == Some(TlsMode::Implicit), Instant::now());
        let mut in_conn = 0u64;
        let mut connected = false;
        let mut txn_start = Instant::now();
        let mut dot_sent: Option<Instant> = None;
        let mut raw = Vec::with_capacity(16 * 1024);
        let mut plain = Vec::with_capacity(16 * 1024);
        let mut out = Vec::with_capacity(a.size + 1024);
        'conn: loop {
            session.poll_output(&mut out);
            if !out.is_empty() {
                let (res, buf) = transport.write_all(std::mem::take(&mut out)).await;
                out = buf;
                out.clear();
                if res.is_err() {
                    *stats
                        .borrow_mut()
                        .conn_errors
                        .entry("write".into())
                        .or_default() += 1;
                    break 'conn;
                }
                if dot_sent.is_none() && session.is_awaiting_dot() {
                    dot_sent = Some(Instant::now());
                }
            }
            while let Some(ev) = session.poll_event() {
                match ev {
                    ClientEvent::StartTls => {
                        let name = rustls::pki_types::ServerName::IpAddress(a.target.ip().into());
                        if let Err(e) = transport
                            .connect_tls(Arc::clone(&plan.client_tls), name)
                            .await
                        {
                            *stats
                                .borrow_mut()
                                .conn_errors
                                .entry(format!("starttls: {e}"))
                                .or_default() += 1;
                            break 'conn;
                        }
                        session.handle_tls_established(Instant::now());
                    }
                    ClientEvent::Ready => {
                        if !connected {
                            connected = true;
                            record(&mut stats.borrow_mut().connect, t0.elapsed());
                        }
                        if !taken || in_conn >= a.per_connection {
                            session.quit(Instant::now());
                            continue;
                        }
                        if per_task_rate > 0.0 {
                            let now = Instant::now();
                            if next_slot > now {
                                tokio::time::sleep(next_slot - now).await;
                            }
                            next_slot =
                                next_slot.max(now) + Duration::from_secs_f64(1.0 / per_task_rate);
                        }
                        seq += 1;
                        in_conn += 1;
                        let (env, body) = build_message(a, thread, conn, seq);
                        txn_start = Instant::now();
                        dot_sent = None;
                        session.send_message(&env, &body, txn_start);
                    }
                    ClientEvent::Outcome(o) => {
                        let mut s = stats.borrow_mut();
                        let now = Instant::now();
                        let code = o.recipients.first().map(|r| r.code).unwrap_or(0);
                        *s.codes.entry(code).or_default() += 1;
                        if (200..300).contains(&code) {
                            s.ok += 1;
                            s.bytes += a.size as u64;
                            record(&mut s.txn, now - txn_start);
                            if let Some(d) = dot_sent {
                                record(&mut s.data, now - d);
                                let second = (now - plan.started).as_secs();
                                s.at_second(second, now - d);
                            }
                        }
                        plan.done.fetch_add(1, Ordering::Relaxed);
                        drop(s);
                        taken = in_conn < a.per_connection && plan.take();
                        if in_conn >= a.per_connection {
                            taken = false;
                        }
                    }
                    ClientEvent::Failed(e) => {
                        *stats
                            .borrow_mut()
                            .conn_errors
                            .entry(format!("{e}"))
                            .or_default() += 1;
                        break 'conn;
                    }
                    ClientEvent::Closed => break 'conn,
                }
            }
            session.poll_output(&mut out);
            if !out.is_empty() {
                continue;
            }
            let deadline = session.poll_timeout();
            let read = transport.read_raw(std::mem::take(&mut raw));
            let (res, buf) = match deadline {
                Some(d) => {
                    match tokio::time::timeout_at(tokio::time::Instant::from_std(d), read).await {
                        Ok(r) => r,
                        Err(_) => {
                            session.handle_timeout(Instant::now());
                            raw = Vec::with_capacity(16 * 1024);
                            continue;
                        }
                    }
                }
                None => read.await,
            };
            raw = buf;
            match res {
                Ok(0) | Err(_) => {
                    *stats
                        .borrow_mut()
                        .conn_errors
                        .entry("connection closed by server".into())
                        .or_default() += 1;
                    break 'conn;
                }
                Ok(_) => {
                    if transport.decode(&mut raw, &mut plain).await.is_err() {
                        break 'conn;
                    }
                    session.handle_input(&plain, Instant::now());
                    plain.clear();
                }
            }
        }
        transport.close().await;
        if !taken {
            taken = plan.take();
        }
    }
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    let _ = h.record((d.as_micros() as u64).max(1));
}

fn build_message(
    a: &SendArgs,
    thread: usize,
    conn: usize,
    seq: u64,
) -> (OutboundEnvelope, Vec<u8>) {
    let recipients = (0..a.recipients)
        .map(|i| OutboundRecipient {
            address: format!("rcpt{i}@{}", a.to_domain),
            notify: None,
            orcpt: None,
        })
        .collect();
    let env = OutboundEnvelope {
        reverse_path: a.from.clone(),
        recipients,
        ..Default::default()
    };
    let mut body = format!(
        "From: <{}>\r\nTo: <rcpt0@{}>\r\nSubject: loadtest {thread}-{conn}-{seq}\r\nMessage-ID: <lt-{thread}-{conn}-{seq}@loadtest.example>\r\n\r\n",
        a.from, a.to_domain
    )
    .into_bytes();
    const LINE: &[u8] =
        b"The quick brown fox jumps over the lazy dog. 0123456789 abcdefghijklmnopq\r\n";
    while body.len() < a.size {
        let n = (a.size - body.len()).min(LINE.len());
        body.extend_from_slice(&LINE[..n]);
    }
    if !body.ends_with(b"\r\n") {
        body.extend_from_slice(b"\r\n");
    }
    (env, body)
}

fn report(a: &SendArgs, s: &Stats, elapsed: Duration) {
    let secs = elapsed.as_secs_f64().max(1e-9);
    let pct = |h: &Histogram<u64>, q: f64| {
        if h.is_empty() {
            0.0
        } else {
            h.value_at_quantile(q) as f64 / 1000.0
        }
    };
    if a.json {
        let hist = |h: &Histogram<u64>| {
            serde_json::json!({
                "p50_ms": pct(h, 0.5), "p90_ms": pct(h, 0.9), "p99_ms": pct(h, 0.99),
                "p999_ms": pct(h, 0.999), "max_ms": h.max() as f64 / 1000.0, "count": h.len(),
            })
        };
        let j = serde_json::json!({
            "target": a.target.to_string(), "connections": a.connections, "size": a.size,
            "elapsed_s": secs, "messages_ok": s.ok, "msg_per_s": s.ok as f64 / secs,
            "bytes_per_s": s.bytes as f64 / secs,
            "codes": s.codes.iter().map(|(k, v)| (k.to_string(), v)).collect::<BTreeMap<_, _>>(),
            "connection_errors": s.conn_errors,
            "latency": { "connect": hist(&s.connect), "data_250": hist(&s.data), "transaction": hist(&s.txn) },
        });
        println!("{j}");
        return;
    }
    println!(
        "target {}  connections {}  size {} B",
        a.target, a.connections, a.size
    );
    println!(
        "{} messages accepted in {:.2} s: {:.0} msg/s, {:.1} MB/s",
        s.ok,
        secs,
        s.ok as f64 / secs,
        s.bytes as f64 / secs / 1e6
    );
    for (code, n) in &s.codes {
        println!("  reply {code}: {n}");
    }
    for (e, n) in &s.conn_errors {
        println!("  connection error {e}: {n}");
    }
    println!("latency (ms)       p50      p90      p99    p99.9      max");
    for (name, h) in [
        ("connect", &s.connect),
        ("250 after DATA", &s.data),
        ("transaction", &s.txn),
    ] {
        println!(
            "{name:<15} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            pct(h, 0.5),
            pct(h, 0.9),
            pct(h, 0.99),
            pct(h, 0.999),
            h.max() as f64 / 1000.0
        );
    }
}

/// The run's parameters and totals, as the report lists them.
fn parameters(a: &SendArgs, threads: usize, elapsed: Duration) -> Vec<(String, String)> {
    let mut p = vec![
        ("target".to_owned(), a.target.to_string()),
        ("connections".to_owned(), a.connections.to_string()),
        ("threads".to_owned(), threads.to_string()),
        ("message size".to_owned(), format!("{} B", a.size)),
        (
            "recipients per message".to_owned(),
            a.recipients.to_string(),
        ),
        (
            "messages per connection".to_owned(),
            a.per_connection.to_string(),
        ),
        ("pipelining".to_owned(), a.pipelining.to_string()),
        ("tls".to_owned(), format!("{:?}", a.tls)),
        (
            "rate limit".to_owned(),
            if a.rate > 0.0 {
                format!("{} msg/s", a.rate)
            } else {
                "none".to_owned()
            },
        ),
        (
            "elapsed".to_owned(),
            format!("{:.2} s", elapsed.as_secs_f64()),
        ),
    ];
    if let Some(m) = a.messages {
        p.push(("messages asked".to_owned(), m.to_string()));
    }
    if let Some(d) = &a.duration {
        p.push(("duration asked".to_owned(), d.clone()));
    }
    p
}

/// Certificate checks are off: the tool targets test servers with self-signed certificates on
/// loopback. Never use it to carry real mail.
fn insecure_client_config() -> Arc<rustls::ClientConfig> {
    ringmta::net::tls::outbound_client_config()
}
