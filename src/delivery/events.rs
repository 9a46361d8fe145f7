//! The delivery event log: one JSON object per line per attempt, for senders' pipelines, and
//! one per change of a destination site's state (`"event": "site_throttled"`).
//!
//! Writes go through a channel to one writer thread so that a slow disk never stalls a core; the
//! writer flushes whenever the channel runs dry.

use std::io::Write;
use std::path::Path;

use serde::Serialize;

use crate::ids::QueueId;

/// A destination site throttled by its receiver's reply.
#[derive(Debug, Clone)]
pub struct SiteEvent {
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// The site (its MX hosts, see `delivery::sites::site_of`).
    pub site: String,
    /// The egress source of the throttled path, if any.
    pub source: Option<String>,
    /// `rate_limited` or `blocklisted`.
    pub signal: &'static str,
    /// No new connection to the site before this time (ms since the Unix epoch); then a ramp.
    pub paused_until_ms: u64,
    /// The reply that said so.
    pub reply: String,
}

/// What the writer thread is sent.
#[derive(Debug, Clone)]
enum Entry {
    Attempt(Event),
    Site(SiteEvent),
    Suppressed(SuppressedEvent),
}

/// A recipient refused at RCPT or injection because it is on the suppression list.
#[derive(Debug, Clone)]
pub struct SuppressedEvent {
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// The envelope sender.
    pub sender: String,
    /// The authenticated user, if any.
    pub user: Option<String>,
    /// The refused recipient.
    pub recipient: String,
    /// The reply it got (`550 5.1.1 <addr> suppressed: <reason> on <date>`).
    pub reply: String,
}

#[derive(Serialize)]
struct SuppressedLine<'a> {
    event_id: String,
    ts_ms: u64,
    event: &'static str,
    sender: &'a str,
    user: Option<&'a str>,
    recipient: &'a str,
    reply: &'a str,
}

#[derive(Serialize)]
struct SiteLine<'a> {
    event_id: String,
    ts_ms: u64,
    event: &'static str,
    site: &'a str,
    source: Option<&'a str>,
    signal: &'a str,
    paused_until_ms: u64,
    reply: &'a str,
}

/// One attempt's outcome for one recipient.
#[derive(Debug, Clone)]
pub struct Event {
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// The message.
    pub id: QueueId,
    /// The recipient's index in the message.
    pub rcpt: u32,
    /// The envelope sender (empty for the null reverse path).
    pub sender: String,
    /// The authenticated user who submitted the message, if any.
    pub user: Option<String>,
    /// The recipient.
    pub recipient: String,
    /// `delivered`, `deferred` or `bounced`.
    pub outcome: &'static str,
    /// The remote host.
    pub remote: String,
    /// The remote reply or the local error.
    pub reply: String,
    /// The classifier's category, when the attempt failed.
    pub category: Option<&'static str>,
    /// The id of the classifier rule that gave the category.
    pub rule: Option<&'static str>,
    /// How the connection that got the reply was protected (none for failures before a reply,
    /// reports that came back and replays).
    pub tls: Option<TlsUse>,
    /// Attempt number (1-based).
    pub attempt: u32,
    /// Next attempt (ms since the Unix epoch) when deferred.
    pub next_attempt_ms: Option<u64>,
}

#[derive(Serialize)]
struct Line<'a> {
    /// Unique per recipient, attempt and outcome: `<queue id>-<rcpt>-<attempt>-<outcome>`.
    event_id: String,
    ts_ms: u64,
    queue_id: String,
    sender: &'a str,
    user: Option<&'a str>,
    recipient: &'a str,
    outcome: &'a str,
    remote_host: &'a str,
    reply: &'a str,
    category: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<&'a TlsUse>,
    attempt: u32,
    next_attempt_ms: Option<u64>,
}

/// How an outbound connection was protected, as the event log records it per delivery:
/// `{"policy": "verify", "version": "TLSv1.3", "cipher": "TLS13_AES_256_GCM_SHA384"}`;
/// `version` and `cipher` are null when the session stayed in plaintext.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TlsUse {
    /// The policy that applied: `none` (`tls = "disabled"`), `opportunistic`, `required`,
    /// `verify`, or `mta-sts` (an enforced MTA-STS policy: verified TLS to a listed MX).
    pub policy: &'static str,
    /// The negotiated protocol version.
    pub version: Option<String>,
    /// The negotiated cipher suite.
    pub cipher: Option<String>,
}

impl TlsUse {
    /// This use's index in [`crate::metrics::TLS_USES`]: its policy when encrypted, `plaintext` when an
    /// opportunistic session stayed in clear.
    pub fn index(&self) -> usize {
        let label = match (self.policy, &self.version) {
            ("none", _) => "none",
            (_, None) => "plaintext",
            (policy, Some(_)) => policy,
        };
        crate::metrics::TLS_USES
            .iter()
            .position(|u| *u == label)
            .unwrap_or(0)
    }
}

/// How far before the event log's last line a restart writes events again (see
/// `Delivery::replay_events`): the writer thread and the cores' clocks are not one clock.
pub const REPLAY_MARGIN_MS: u64 = 2_000;

/// The `ts_ms` of the last complete line of the event log at `path`, if it has one.
pub fn last_ts_ms(path: &Path) -> Option<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    let len = f.metadata().ok()?.len();
    let start = len.saturating_sub(64 * 1024);
    f.seek(SeekFrom::Start(start)).ok()?;
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).ok()?;
    let text = String::from_utf8_lossy(&tail);
    text.lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find_map(|v| v["ts_ms"].as_u64())
}

/// Handle to the event log writer; cheap to clone.
#[derive(Clone)]
pub struct EventLog {
    tx: Option<crossbeam_channel::Sender<Entry>>,
}

impl EventLog {
    /// Opens (appends to) `path` and starts the writer thread.
    pub fn open(path: &Path) -> std::io::Result<EventLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let (tx, rx) = crossbeam_channel::bounded::<Entry>(65_536);
        std::thread::Builder::new()
            .name("ringmta-events".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::new(file);
                while let Ok(ev) = rx.recv() {
                    write_line(&mut out, &ev);
                    while let Ok(more) = rx.try_recv() {
                        write_line(&mut out, &more);
                    }
                    // Not synced: lines lost with the page cache (a power cut) are written
                    // again at start from the spool's synced status records
                    // (`Delivery::replay_events`); a sync per batch cost 5% of a core.
                    let _ = out.flush();
                }
            })?;
        Ok(EventLog { tx: Some(tx) })
    }

    /// A log that drops everything (for tests and tools).
    pub fn disabled() -> EventLog {
        EventLog { tx: None }
    }

    /// Queues an event; drops it (with a warning) if the writer is far behind.
    pub fn log(&self, ev: Event) {
        self.send(Entry::Attempt(ev));
    }

    /// Queues one site event for the writer.
    pub fn site(&self, ev: SiteEvent) {
        self.send(Entry::Site(ev));
    }

    /// Queues one `suppressed` event for the writer.
    pub fn suppressed(&self, ev: SuppressedEvent) {
        self.send(Entry::Suppressed(ev));
    }

    fn send(&self, entry: Entry) {
        if let Some(tx) = &self.tx
            && tx.try_send(entry).is_err()
        {
            tracing::warn!("event log writer is behind; an event was dropped");
        }
    }
}

fn write_line(out: &mut impl Write, entry: &Entry) {
    let written = match entry {
        Entry::Suppressed(ev) => serde_json::to_writer(
            &mut *out,
            &SuppressedLine {
                event_id: format!(
                    "{}-suppressed-{}-{}-{}",
                    ev.at_ms,
                    ev.user.as_deref().unwrap_or(""),
                    ev.sender,
                    ev.recipient
                ),
                ts_ms: ev.at_ms,
                event: "suppressed",
                sender: &ev.sender,
                user: ev.user.as_deref(),
                recipient: &ev.recipient,
                reply: &ev.reply,
            },
        ),
        Entry::Attempt(ev) => serde_json::to_writer(&mut *out, &attempt_line(ev)),
        Entry::Site(ev) => serde_json::to_writer(
            &mut *out,
            &SiteLine {
                event_id: format!(
                    "{}-throttled-{}-{}",
                    ev.at_ms,
                    ev.source.as_deref().unwrap_or(""),
                    ev.site
                ),
                ts_ms: ev.at_ms,
                event: "site_throttled",
                site: &ev.site,
                source: ev.source.as_deref(),
                signal: ev.signal,
                paused_until_ms: ev.paused_until_ms,
                reply: &ev.reply,
            },
        ),
    };
    if written.is_ok() {
        let _ = out.write_all(b"\n");
    }
}

fn attempt_line(ev: &Event) -> Line<'_> {
    Line {
        event_id: format!("{}-{}-{}-{}", ev.id, ev.rcpt, ev.attempt, ev.outcome),
        ts_ms: ev.at_ms,
        queue_id: ev.id.to_string(),
        sender: &ev.sender,
        user: ev.user.as_deref(),
        recipient: &ev.recipient,
        outcome: ev.outcome,
        remote_host: &ev.remote,
        reply: &ev.reply,
        category: ev.category,
        rule: ev.rule,
        tls: ev.tls.as_ref(),
        attempt: ev.attempt,
        next_attempt_ms: ev.next_attempt_ms,
    }
}
