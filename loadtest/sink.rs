//! `loadtest sink`: a fast SMTP sink with fault injection chosen by rate or by recipient.
//!
//! Recipient prefixes choose behaviour (as KumoMTA's test sinks do): `perm-...@` gets
//! `550 5.1.1` at RCPT; `temp-N-...@` gets `451 4.2.0` for its first N attempts (N defaults to
//! 2), counted per address for the life of the sink; `slow-...@` delays the end-of-data reply by
//! `--delay` (default 10 s); `drop-N-...@` closes the connection in the middle of the data for its
//! first N attempts (default 1); `throttle-N-...@` gets Gmail's `421 4.7.28` rate-limit reply at
//! RCPT for its first N attempts (default 1), and the connection is closed. Rates apply to every message at end of data. Like a conforming
//! server, it refuses a non-ASCII address (`553 5.6.7`) unless MAIL carried SMTPUTF8.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;

use ringmta::config::resolved::Listener;
use ringmta::net::listen::bind_all;
use ringmta::net::transport::Transport;
use ringmta::smtp::PortRole;

#[derive(Debug, Args)]
pub struct SinkArgs {
    /// Address to listen on (port 0 picks one; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:2626")]
    listen: SocketAddr,
    /// Fraction of messages answered 451 at end of data.
    #[arg(long, default_value_t = 0.0)]
    tempfail: f64,
    /// Fraction of messages answered 554 at end of data.
    #[arg(long, default_value_t = 0.0)]
    permfail: f64,
    /// Close a connection that has sent nothing for this many ms, with `421 4.4.2`, as servers
    /// do with idle clients (default: never).
    #[arg(long)]
    idle_close: Option<u64>,
    /// Delay in ms before every end-of-data reply (and the stall of `slow-` recipients, default 10000).
    #[arg(long)]
    delay: Option<u64>,
    /// Append "<message-id> <recipients>" for every accepted message to this file.
    #[arg(long)]
    record: Option<std::path::PathBuf>,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Write every accepted message (recipients on the first line, then the data) to a file in
    /// this directory.
    #[arg(long)]
    maildir: Option<std::path::PathBuf>,
    /// Exit after accepting this many messages.
    #[arg(long)]
    exit_after: Option<u64>,
    /// Recipients per transaction; more get `452 4.5.3 Too many recipients` (0: no limit).
    #[arg(long, default_value_t = 0)]
    max_recipients: usize,
    /// Do not offer DSN (RFC 3461) in the EHLO reply, like a next hop that sends no notices.
    #[arg(long)]
    no_dsn: bool,
    /// Append "<unix ms> <client address> <EHLO name> <connections open from that address>" for
    /// every EHLO or HELO to this file: when and from where a client connected, under which
    /// name, and how many connections that address had open at once.
    #[arg(long)]
    connection_log: Option<std::path::PathBuf>,
    /// Append "<client address:port> <recipients, comma-separated>" for every message accepted
    /// to this file: which connection carried which recipients.
    #[arg(long)]
    transaction_log: Option<std::path::PathBuf>,
}

struct Shared {
    args: SinkArgs,
    accepted: AtomicU64,
    rejected: AtomicU64,
    stop: AtomicBool,
    temp_attempts: Mutex<HashMap<String, u32>>,
    record: Option<std::sync::mpsc::Sender<String>>,
    connection_log: Option<std::sync::mpsc::Sender<String>>,
    transaction_log: Option<std::sync::mpsc::Sender<String>>,
    /// Connections open now, by client address.
    open: Mutex<HashMap<std::net::IpAddr, usize>>,
}

impl Shared {
    /// Adds `change` to the connections open from `ip`; returns how many are open now.
    fn opened(&self, ip: std::net::IpAddr, change: isize) -> usize {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        *n = n.saturating_add_signed(change);
        *n
    }
}

/// A thread that appends the lines it is sent to `path`, flushing after each burst.
fn appender(path: std::path::PathBuf) -> std::sync::mpsc::Sender<String> {
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        while let Ok(line) = rx.recv() {
            let _ = writeln!(f, "{line}");
            while let Ok(more) = rx.try_recv() {
                let _ = writeln!(f, "{more}");
            }
            let _ = f.flush();
        }
    });
    tx
}

pub fn run(args: SinkArgs) -> Result<()> {
    let threads = args
        .threads
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        })
        .max(1);
    let bound = bind_all(
        &[Listener {
            addr: args.listen,
            role: PortRole::Relay,
        }],
        threads,
    )?;
    let record = args.record.clone().map(appender);
    let connection_log = args.connection_log.clone().map(appender);
    let transaction_log = args.transaction_log.clone().map(appender);
    let shared = Arc::new(Shared {
        args,
        accepted: AtomicU64::new(0),
        rejected: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        temp_attempts: Mutex::new(HashMap::new()),
        record,
        connection_log,
        transaction_log,
        open: Mutex::new(HashMap::new()),
    });
    let sigset = ringmta::net::signals::block()?;
    let addr = bound[0].addr;
    for (i, socket) in bound
        .into_iter()
        .next()
        .map(|b| b.sockets)
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let shared = Arc::clone(&shared);
        std::thread::spawn(move || {
            tokio_uring::start(async move {
                let listener = tokio_uring::net::TcpListener::from_std(socket);
                let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ (i as u64 + 1);
                loop {
                    let Ok((stream, peer)) = listener.accept().await else {
                        continue;
                    };
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    shared.opened(peer.ip(), 1);
                    tokio_uring::spawn(serve(
                        Arc::clone(&shared),
                        Transport::new(stream),
                        peer,
                        seed,
                    ));
                }
            })
        });
    }
    println!("loadtest sink listening on {addr}");
    let started = Instant::now();
    if let Some(n) = shared.args.exit_after {
        let s = Arc::clone(&shared);
        std::thread::spawn(move || {
            while s.accepted.load(Ordering::Relaxed) < n {
                std::thread::sleep(Duration::from_millis(5));
            }
            // SAFETY-free way to wake the main thread: signal ourselves.
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(std::process::id().to_string())
                .status();
        });
    }
    ringmta::net::signals::wait(&sigset)?;
    shared.stop.store(true, Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    let n = shared.accepted.load(Ordering::Relaxed);
    println!(
        "loadtest sink: {n} accepted, {} rejected in {secs:.2} s ({:.0} msg/s)",
        shared.rejected.load(Ordering::Relaxed),
        n as f64 / secs.max(1e-9)
    );
    // Let the recorder drain.
    std::thread::sleep(Duration::from_millis(100));
    Ok(())
}

#[derive(Default)]
struct Txn {
    /// The MAIL FROM path (saved with the message as `X-Sink-Mail-From`, after
    /// `X-Sink-Recipients`).
    mail_from: String,
    rcpts: Vec<String>,
    slow: bool,
    /// Close the connection in the middle of the data (a `drop-N-` recipient).
    drop: bool,
    /// MAIL carried SMTPUTF8: non-ASCII addresses are allowed in this transaction.
    smtputf8: bool,
}

async fn serve(shared: Arc<Shared>, mut t: Transport, peer: SocketAddr, mut rng: u64) {
    let mut input: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut raw = Vec::with_capacity(16 * 1024);
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(b"220 sink.loadtest ESMTP loadtest sink\r\n");
    let mut txn = Txn::default();
    let mut in_data = false;
    let mut msgid: Option<String> = None;
    let mut fresh = false;
    let keep_body = shared.args.maildir.is_some();
    // This connection is in `shared.open` (counted at accept) until QUIT or the end.
    let mut counted = true;
    let mut body: Vec<u8> = Vec::new();
    let mut data_from = 0usize;
    let shared = Rc::new(shared);
    loop {
        if !out.is_empty() {
            let (res, buf) = t.write_all(std::mem::take(&mut out)).await;
            out = buf;
            out.clear();
            if res.is_err() {
                break;
            }
        }
        let read = t.read_raw(std::mem::take(&mut raw));
        let (res, buf) = match shared.args.idle_close {
            Some(ms) => match tokio::time::timeout(Duration::from_millis(ms), read).await {
                Ok(r) => r,
                Err(_) => {
                    let _ = t
                        .write_all(b"421 4.4.2 sink.loadtest idle too long\r\n".to_vec())
                        .await;
                    break;
                }
            },
            None => read.await,
        };
        raw = buf;
        match res {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                if t.decode(&mut raw, &mut input).await.is_err() {
                    break;
                }
            }
        }
        let mut pos = 0;
        let mut quit = false;
        while pos < input.len() {
            if in_data {
                if txn.drop {
                    // Fault injection: vanish in the middle of the message.
                    quit = true;
                    out.clear();
                    break;
                }
                if fresh && msgid.is_none() {
                    msgid = find_message_id(&input[pos..input.len().min(pos + 8192)]);
                }
                // The terminator is CRLF "." CRLF; the 354 left us at a line start, so a body
                // that is only "." CRLF is an empty message.
                let end = if fresh && input[pos..].starts_with(b".\r\n") {
                    Some(pos + 3)
                } else {
                    memfind(&input[data_from..], b"\r\n.\r\n").map(|i| data_from + i + 5)
                };
                let Some(end) = end else {
                    if input.len() - pos >= 3 {
                        fresh = false;
                    }
                    // Keep a short tail: a terminator may straddle two reads.
                    let keep_from = input.len().saturating_sub(4).max(pos);
                    if keep_body {
                        body.extend_from_slice(&input[pos..keep_from]);
                    }
                    input.drain(..keep_from);
                    pos = 0;
                    data_from = 0;
                    break;
                };
                if keep_body {
                    body.extend_from_slice(&input[pos..end.saturating_sub(3).max(pos)]);
                }
                pos = end;
                in_data = false;
                let reply = end_of_data(&shared, &txn, msgid.take(), &mut rng);
                if let Some(log) = &shared.transaction_log
                    && reply.starts_with("250")
                {
                    let _ = log.send(format!("{peer} {}", txn.rcpts.join(",")));
                }
                if keep_body {
                    if reply.starts_with("250") {
                        save(&shared, &txn, &body);
                    }
                    body.clear();
                }
                if txn.slow || shared.args.delay.is_some() {
                    let ms = shared.args.delay.unwrap_or(10_000);
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                }
                out.extend_from_slice(reply.as_bytes());
                txn = Txn::default();
                continue;
            }
            let Some(nl) = input[pos..].iter().position(|b| *b == b'\n') else {
                break;
            };
            let line = String::from_utf8_lossy(&input[pos..pos + nl])
                .trim_end_matches('\r')
                .to_owned();
            pos += nl + 1;
            let upper = line.to_ascii_uppercase();
            if let Some(log) = &shared.connection_log
                && (upper.starts_with("EHLO") || upper.starts_with("HELO"))
            {
                let name = line.split_whitespace().nth(1).unwrap_or("");
                let open = shared.opened(peer.ip(), 0);
                let ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis());
                let _ = log.send(format!("{ms} {} {name} {open}", peer.ip()));
            }
            if upper.starts_with("EHLO") {
                out.extend_from_slice(b"250-sink.loadtest\r\n250-PIPELINING\r\n250-SIZE 0\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n");
                if !shared.args.no_dsn {
                    out.extend_from_slice(b"250-DSN\r\n");
                }
                out.extend_from_slice(b"250 ENHANCEDSTATUSCODES\r\n");
            } else if upper.starts_with("HELO") {
                out.extend_from_slice(b"250 sink.loadtest\r\n");
            } else if upper.starts_with("MAIL") {
                txn = Txn {
                    smtputf8: upper.split_whitespace().any(|w| w == "SMTPUTF8"),
                    mail_from: path_of(&line).to_owned(),
                    ..Txn::default()
                };
                if !txn.smtputf8 && !path_of(&line).is_ascii() {
                    out.extend_from_slice(NON_ASCII_REFUSED);
                } else {
                    out.extend_from_slice(b"250 2.1.0 Ok\r\n");
                }
            } else if upper.starts_with("RCPT") {
                let addr = path_of(&line).to_owned();
                if !txn.smtputf8 && !addr.is_ascii() {
                    out.extend_from_slice(NON_ASCII_REFUSED);
                } else {
                    let reply = rcpt_reply(&shared, &addr, &mut txn);
                    out.extend_from_slice(reply.as_bytes());
                    if reply == THROTTLED {
                        quit = true;
                        break;
                    }
                }
            } else if upper.starts_with("DATA") {
                if txn.rcpts.is_empty() {
                    out.extend_from_slice(b"554 5.5.1 No valid recipients\r\n");
                } else {
                    out.extend_from_slice(b"354 End data with <CR><LF>.<CR><LF>\r\n");
                    in_data = true;
                    fresh = true;
                    data_from = pos;
                }
            } else if upper.starts_with("RSET") {
                txn = Txn::default();
                out.extend_from_slice(b"250 2.0.0 Ok\r\n");
            } else if upper.starts_with("NOOP") {
                out.extend_from_slice(b"250 2.0.0 Ok\r\n");
            } else if upper.starts_with("QUIT") {
                // No longer open once QUIT is read: the client, seeing the 221, may open its
                // next connection at once, and the count must not include this one then.
                if counted {
                    shared.opened(peer.ip(), -1);
                    counted = false;
                }
                out.extend_from_slice(b"221 2.0.0 Bye\r\n");
                quit = true;
                break;
            } else {
                out.extend_from_slice(b"502 5.5.2 Not implemented\r\n");
            }
        }
        if pos > 0 {
            input.drain(..pos.min(input.len()));
            data_from = data_from.saturating_sub(pos);
        }
        if quit {
            if !out.is_empty() {
                let _ = t.write_all(std::mem::take(&mut out)).await;
            }
            break;
        }
    }
    if counted {
        shared.opened(peer.ip(), -1);
    }
    t.close().await;
}

/// RFC 6531 §3.5: a conforming server refuses a non-ASCII address in a transaction that did
/// not ask for SMTPUTF8.
const NON_ASCII_REFUSED: &[u8] = b"553 5.6.7 Non-ASCII address without SMTPUTF8\r\n";

/// The address between the angle brackets of a MAIL or RCPT line ("" when there are none).
fn path_of(line: &str) -> &str {
    line.split_once('<')
        .and_then(|(_, r)| r.split_once('>'))
        .map_or("", |(a, _)| a)
}

/// Gmail's rate-limit reply (the text of its 4.7.28 replies), after which it hangs up.
const THROTTLED: &str = "421 4.7.28 Our system has detected an unusual rate of unsolicited mail originating from your IP address. Please try again later.\r\n";

fn rcpt_reply(shared: &Shared, addr: &str, txn: &mut Txn) -> &'static str {
    let local = addr.split('@').next().unwrap_or("").to_ascii_lowercase();
    if shared.args.max_recipients > 0 && txn.rcpts.len() >= shared.args.max_recipients {
        return "452 4.5.3 Too many recipients\r\n";
    }
    if local.starts_with("perm-") {
        return "550 5.1.1 User unknown\r\n";
    }
    if let Some(rest) = local.strip_prefix("temp-")
        && within_first_attempts(shared, addr, rest, 2)
    {
        return "451 4.2.0 Mailbox temporarily unavailable, try again later\r\n";
    }
    if let Some(rest) = local.strip_prefix("throttle-")
        && within_first_attempts(shared, addr, rest, 1)
    {
        return THROTTLED;
    }
    if local.starts_with("slow-") {
        txn.slow = true;
    }
    if let Some(rest) = local.strip_prefix("drop-") {
        txn.drop |= within_first_attempts(shared, addr, rest, 1);
    }
    txn.rcpts.push(addr.to_owned());
    "250 2.1.5 Ok\r\n"
}

/// Counts an attempt for `addr` and tells whether it is among the first N, N being the number
/// that starts `rest` (`temp-3-x` → 3), or `default`.
fn within_first_attempts(shared: &Shared, addr: &str, rest: &str, default: u32) -> bool {
    let n: u32 = rest
        .split('-')
        .next()
        .and_then(|d| d.parse().ok())
        .unwrap_or(default);
    let mut map = shared
        .temp_attempts
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let seen = map.entry(addr.to_ascii_lowercase()).or_insert(0);
    *seen += 1;
    *seen <= n
}

fn end_of_data(shared: &Shared, txn: &Txn, msgid: Option<String>, rng: &mut u64) -> String {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    let roll = (*rng >> 11) as f64 / (1u64 << 53) as f64;
    if roll < shared.args.permfail {
        shared.rejected.fetch_add(1, Ordering::Relaxed);
        return "554 5.6.0 Rejected by sink\r\n".into();
    }
    if roll < shared.args.permfail + shared.args.tempfail {
        shared.rejected.fetch_add(1, Ordering::Relaxed);
        return "451 4.3.0 Temporary failure in sink\r\n".into();
    }
    let n = shared.accepted.fetch_add(1, Ordering::Relaxed) + 1;
    if let Some(tx) = &shared.record {
        let _ = tx.send(format!(
            "{} {}",
            msgid.unwrap_or_else(|| "-".into()),
            txn.rcpts.join(",")
        ));
    }
    format!("250 2.0.0 Ok: queued as sink{n}\r\n")
}

/// Writes one message: the recipients, a blank line, then the un-stuffed data.
fn save(shared: &Shared, txn: &Txn, data: &[u8]) {
    let Some(dir) = &shared.args.maildir else {
        return;
    };
    let n = shared.accepted.load(Ordering::Relaxed);
    let mut text = format!(
        "X-Sink-Recipients: {}\r\nX-Sink-Mail-From: <{}>\r\n",
        txn.rcpts.join(","),
        txn.mail_from
    )
    .into_bytes();
    // RFC 5321 §4.5.2: remove the leading dot of stuffed lines.
    let mut at_line_start = true;
    let mut i = 0;
    while i < data.len() {
        let b = data[i];
        if !(at_line_start && b == b'.') {
            text.push(b);
        }
        at_line_start = b == b'\n';
        i += 1;
    }
    let tmp = dir.join(format!(".tmp-{n}-{}", std::process::id()));
    let path = dir.join(format!("msg-{n:08}.eml"));
    if std::fs::write(&tmp, &text).is_ok() {
        let _ = std::fs::rename(&tmp, &path);
    }
}

fn memfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

fn find_message_id(head: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(head);
    for line in text.split("\r\n") {
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("message-id")
        {
            return Some(value.trim().to_owned());
        }
    }
    None
}
