//! Webhooks: every event of the event log (`delivery.event_log`, JSON lines) posted to the
//! sender's application, durably and signed.
//!
//! The event log is the durable queue: an event is written there before anything is posted.
//! Each `[[webhooks]]` entry has a thread of its own (never a worker core) that reads the log
//! from its saved offset, keeps the events it subscribes to (and, with `user`, only that user's
//! mail), and posts them in batches of at most 100 as `{"events": [...]}`. The offset moves on —
//! written aside, synced and renamed in `spool_dir/webhooks/` — only after a 2xx, so delivery is
//! at least once across failures and restarts; the receiver deduplicates by `event_id`. A failing
//! or unreachable endpoint is retried with doubling back-off (1 s to 60 s); events older than
//! `max_age` when their turn comes are dropped and counted.
//!
//! Each post carries `X-Ringmta-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret,
//! "<t>.<body>")>`: the receiver recomputes it and rejects a stale `t` (replays).

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::time::Clock as _;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::http_client::{Request, Target};

pub use crate::config::webhooks::{EVENT_TYPES, Webhook};

/// Most events in one post.
const BATCH: usize = 100;

/// What a webhook's poster did, for `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Events posted (2xx).
    pub posted: AtomicU64,
    /// Posts that failed (and were retried).
    pub failures: AtomicU64,
    /// Events dropped for being older than `max_age`.
    pub dropped: AtomicU64,
}

/// The signature header value of `body` at `t` (unix seconds).
pub fn signature(secret: &str, t: u64, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("t={t},v1={hex}")
}

/// The event type of one event-log line, if it has one a webhook can subscribe to.
pub fn event_type(line: &serde_json::Value) -> Option<&'static str> {
    if line["event"] == "site_throttled" {
        return Some("throttled");
    }
    if let Some(e) = line["event"].as_str() {
        return EVENT_TYPES.iter().copied().find(|t| *t == e);
    }
    match line["outcome"].as_str()? {
        "delivered" => Some("delivered"),
        "deferred" => Some("deferred"),
        "bounced"
            if line["reply"]
                .as_str()
                .is_some_and(|r| r.starts_with(crate::queue::decision::EXPIRED)) =>
        {
            Some("expired")
        }
        "bounced" => Some("bounced"),
        "delayed" => Some("delayed"),
        "complained" => Some("complained"),
        "suppressed" => Some("suppressed"),
        _ => None,
    }
}

/// Starts one poster thread per webhook; returns their counters, in order.
pub fn start(
    hooks: &[Webhook],
    event_log: &Path,
    state_dir: &Path,
    tls: &Arc<rustls::ClientConfig>,
) -> std::io::Result<Vec<Arc<Stats>>> {
    std::fs::create_dir_all(state_dir)?;
    let mut all = Vec::new();
    for (i, hook) in hooks.iter().enumerate() {
        let stats = Arc::new(Stats::default());
        let poster = Poster {
            hook: hook.clone(),
            target: Target::parse(&hook.url).ok_or_else(|| {
                std::io::Error::new(std::io::ErrorKind::InvalidInput, "bad webhook url")
            })?,
            log: event_log.to_owned(),
            // Keyed by the URL, so that reordering [[webhooks]] keeps each one's place.
            offset_file: state_dir.join(format!(
                "{}.offset",
                &crate::config::tokens::token_sha256(&hook.url)[..16]
            )),
            tls: Arc::clone(tls),
            stats: Arc::clone(&stats),
        };
        std::thread::Builder::new()
            .name(format!("ringmta-webhook-{i}"))
            .spawn(move || poster.run())?;
        all.push(stats);
    }
    Ok(all)
}

struct Poster {
    hook: Webhook,
    target: Target,
    log: PathBuf,
    offset_file: PathBuf,
    tls: Arc<rustls::ClientConfig>,
    stats: Arc<Stats>,
}

impl Poster {
    fn run(self) {
        let mut offset: u64 = std::fs::read_to_string(&self.offset_file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let mut backoff = Duration::from_secs(1);
        loop {
            let (events, next) = self.read_batch(offset);
            if next == offset {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            if events.is_empty() {
                offset = next;
                self.save(offset);
                continue;
            }
            let body = serde_json::json!({ "events": events }).to_string();
            match self.post(body.as_bytes()) {
                Ok(()) => {
                    self.stats
                        .posted
                        .fetch_add(events.len() as u64, Ordering::Relaxed);
                    offset = next;
                    self.save(offset);
                    backoff = Duration::from_secs(1);
                }
                Err(e) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(url = %self.hook.url, error = %e, retry_in_s = backoff.as_secs(), "webhook post failed");
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                }
            }
        }
    }

    /// The subscribed events in the complete lines after `offset` (at most [`BATCH`]), and the
    /// offset after the last line read.
    fn read_batch(&self, offset: u64) -> (Vec<serde_json::Value>, u64) {
        let Ok(mut f) = File::open(&self.log) else {
            return (Vec::new(), offset);
        };
        // A log cut shorter than the offset (truncated, replaced) is read again from the start.
        let offset = match f.metadata() {
            Ok(m) if m.len() < offset => {
                tracing::warn!(log = %self.log.display(), "the event log shrank: reading it from the start");
                0
            }
            _ => offset,
        };
        if f.seek(SeekFrom::Start(offset)).is_err() {
            return (Vec::new(), offset);
        }
        let now_ms = crate::time::unix_ms(crate::time::SystemClock.now());
        let max_age = self.hook.max_age.as_millis() as u64;
        let mut reader = BufReader::new(f);
        let mut events = Vec::new();
        let mut next = offset;
        let mut line = String::new();
        while events.len() < BATCH {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(n) if n > 0 && line.ends_with('\n') => next += n as u64,
                // The end, or a line still being written.
                _ => break,
            }
            let Ok(mut v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            let Some(kind) = event_type(&v) else {
                continue;
            };
            if !self.hook.events.iter().any(|e| e == kind) {
                continue;
            }
            if let Some(user) = &self.hook.user
                && v["user"].as_str() != Some(user.as_str())
            {
                continue;
            }
            if v["ts_ms"]
                .as_u64()
                .is_some_and(|t| now_ms.saturating_sub(t) > max_age)
            {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            v["event"] = serde_json::Value::from(kind);
            events.push(v);
        }
        (events, next)
    }

    fn post(&self, body: &[u8]) -> Result<(), String> {
        let t = crate::time::unix_ms(crate::time::SystemClock.now()) / 1000;
        let headers = [
            "Content-Type: application/json".to_owned(),
            format!(
                "X-Ringmta-Signature: {}",
                signature(&self.hook.secret, t, body)
            ),
        ];
        let request = Request {
            method: "POST",
            headers: &headers,
            body,
        };
        crate::http_client::send(
            &self.target,
            &[],
            &request,
            &self.tls,
            Duration::from_secs(10),
            64 * 1024,
        )
        .map(|_| ())
    }

    /// Saves the offset: written aside, synced, renamed.
    fn save(&self, offset: u64) {
        let saved =
            crate::fsutil::replace_durably(&self.offset_file, offset.to_string().as_bytes(), 0o644);
        if let Err(e) = saved {
            tracing::error!(error = %e, "cannot save the webhook offset");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_and_event_types() {
        // RFC 4231 test case 2 key and data, with our "<t>." prefix in front.
        let s = signature("key", 1_700_000_000, b"{}");
        assert!(s.starts_with("t=1700000000,v1="), "{s}");
        assert_eq!(s.len(), "t=1700000000,v1=".len() + 64);
        assert_ne!(s, signature("key2", 1_700_000_000, b"{}"));
        assert_ne!(s, signature("key", 1_700_000_001, b"{}"));
        let line = |v: serde_json::Value| event_type(&v);
        assert_eq!(
            line(serde_json::json!({"outcome": "delivered"})),
            Some("delivered")
        );
        assert_eq!(
            line(
                serde_json::json!({"outcome": "bounced", "reply": "delivery time expired; last error: x"})
            ),
            Some("expired")
        );
        assert_eq!(
            line(serde_json::json!({"outcome": "bounced", "reply": "550"})),
            Some("bounced")
        );
        assert_eq!(
            line(serde_json::json!({"event": "site_throttled"})),
            Some("throttled")
        );
        assert_eq!(line(serde_json::json!({"outcome": "deleted"})), None);
    }
}
