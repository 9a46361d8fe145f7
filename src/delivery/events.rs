//! The delivery event log: one JSON object per line per attempt, for senders' pipelines.
//!
//! Writes go through a channel to one writer thread so that a slow disk never stalls a core; the
//! writer flushes whenever the channel runs dry.

use std::io::Write;
use std::path::Path;

use serde::Serialize;

use crate::ids::QueueId;

/// One attempt's outcome for one recipient.
#[derive(Debug, Clone)]
pub struct Event {
    /// When, ms since the Unix epoch.
    pub at_ms: u64,
    /// The message.
    pub id: QueueId,
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
    /// Attempt number (1-based).
    pub attempt: u32,
    /// Next attempt (ms since the Unix epoch) when deferred.
    pub next_attempt_ms: Option<u64>,
}

#[derive(Serialize)]
struct Line<'a> {
    ts_ms: u64,
    queue_id: String,
    recipient: &'a str,
    outcome: &'a str,
    remote_host: &'a str,
    reply: &'a str,
    category: Option<&'a str>,
    attempt: u32,
    next_attempt_ms: Option<u64>,
}

/// Handle to the event log writer; cheap to clone.
#[derive(Clone)]
pub struct EventLog {
    tx: Option<crossbeam_channel::Sender<Event>>,
}

impl EventLog {
    /// Opens (appends to) `path` and starts the writer thread.
    pub fn open(path: &Path) -> std::io::Result<EventLog> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        let (tx, rx) = crossbeam_channel::bounded::<Event>(65_536);
        std::thread::Builder::new()
            .name("ringmta-events".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::new(file);
                while let Ok(ev) = rx.recv() {
                    write_line(&mut out, &ev);
                    while let Ok(more) = rx.try_recv() {
                        write_line(&mut out, &more);
                    }
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
        if let Some(tx) = &self.tx
            && tx.try_send(ev).is_err()
        {
            tracing::warn!("event log writer is behind; an event was dropped");
        }
    }
}

fn write_line(out: &mut impl Write, ev: &Event) {
    let line = Line {
        ts_ms: ev.at_ms,
        queue_id: ev.id.to_string(),
        recipient: &ev.recipient,
        outcome: ev.outcome,
        remote_host: &ev.remote,
        reply: &ev.reply,
        category: ev.category,
        attempt: ev.attempt,
        next_attempt_ms: ev.next_attempt_ms,
    };
    if serde_json::to_writer(&mut *out, &line).is_ok() {
        let _ = out.write_all(b"\n");
    }
}
