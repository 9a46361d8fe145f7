//! Requests from the operator HTTP thread to the workers, and their answers.
//!
//! Each worker owns its spool shard and delivery state; the HTTP thread never touches them. It
//! sends a `ControlRequest` over the worker's channel and blocks on a oneshot reply. Requests
//! about one message go to the worker that owns its shard (the id says which); summaries go to
//! every worker and are added up.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::ids::QueueId;
use crate::smtp::{CommitError, Transaction};

/// One request to a worker.
pub enum ControlRequest {
    /// Reports that came back to the VERP address of a message this worker owns: events and
    /// suppression entries (see [`crate::feedback`]).
    Feedback {
        /// The message the VERP address names.
        id: QueueId,
        /// What the reports say, per recipient.
        notices: Vec<crate::feedback::Notice>,
        /// How many notices were acted on, once their suppression entries are synced.
        reply: oneshot::Sender<usize>,
    },
    /// Spool a message built by the HTTP API (same checks and durability as SMTP).
    Inject {
        /// The transaction.
        transaction: Box<Transaction>,
        /// The queue id, or why it was refused.
        reply: oneshot::Sender<Result<QueueId, CommitError>>,
    },
    /// Per-recipient state of one message.
    Message {
        /// The message.
        id: QueueId,
        /// `None` when the message is not in this shard.
        reply: oneshot::Sender<Option<MessageInfo>>,
    },
    /// Counts by state and destination.
    Queue {
        /// This worker's part.
        reply: oneshot::Sender<QueueSummary>,
    },
    /// The pending recipients by key and age (`queue summary`).
    Shape {
        /// What the rows are (sites come as domains; the caller maps them).
        by: crate::queue::shape::By,
        /// Now, in ms since the Unix epoch (ages are counted from it).
        now_ms: u64,
        /// This worker's part.
        reply: oneshot::Sender<crate::queue::shape::Shape>,
    },
    /// Retry deferred recipients now (all, or one domain's).
    Flush {
        /// Only this recipient domain.
        domain: Option<String>,
        /// How many recipients were rescheduled.
        reply: oneshot::Sender<u64>,
    },
    /// Delete a message: its non-final recipients become `deleted` (no DSN).
    Delete {
        /// The message.
        id: QueueId,
        /// Recipients deleted; `None` when the message is unknown.
        reply: oneshot::Sender<Option<u64>>,
    },
    /// Apply a reloaded configuration (SIGHUP): content checks, routes, bounce rules.
    Reload {
        /// The new settings.
        settings: Box<Reloaded>,
        /// Answered once applied (or the reason it was not).
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Bounce a message now: its non-final recipients fail, with a DSN as usual.
    Bounce {
        /// The message.
        id: QueueId,
        /// Recipients bounced; `None` when the message is unknown.
        reply: oneshot::Sender<Option<u64>>,
    },
    /// Bounce every non-final recipient of a domain or of a user's messages, with DSNs.
    BounceMatching {
        /// A domain or user target.
        target: crate::delivery::suspend::Target,
        /// Recipients bounced.
        reply: oneshot::Sender<u64>,
    },
}

/// The parts of the configuration a SIGHUP reload replaces on every worker.
pub struct Reloaded {
    /// Content checks (DKIM keys, scanners, users' allowed senders for the From check).
    pub content: std::sync::Arc<crate::content::ContentChecks>,
    /// Bounce classifier (built-in plus operator rules).
    pub classifier: std::sync::Arc<crate::bounce::classify::Classifier>,
    /// Delivery settings (routes, nameservers, per-domain TLS).
    pub delivery: crate::config::resolved::DeliverySettings,
}

/// What the API shows of a message.
#[derive(Debug, Serialize)]
pub struct MessageInfo {
    /// Queue id.
    pub id: String,
    /// Envelope sender (empty for the null sender).
    pub from: String,
    /// Received, ms since the Unix epoch.
    pub received_at_ms: u64,
    /// Stored size in bytes.
    pub size: u64,
    /// One entry per recipient.
    pub recipients: Vec<RecipientInfo>,
}

/// One recipient's state.
#[derive(Debug, Serialize)]
pub struct RecipientInfo {
    /// Address.
    pub address: String,
    /// `queued`, `deferred`, `delivered`, `bounced` or `deleted`.
    pub state: &'static str,
    /// Attempts made.
    pub attempts: u32,
    /// Next attempt (ms since the Unix epoch) while not final.
    pub next_attempt_ms: Option<u64>,
    /// The last reply (remote or local).
    pub last_reply: Option<String>,
    /// Bounce category of the last failure.
    pub category: Option<String>,
}

/// Counts for `GET /api/v1/queue`.
#[derive(Debug, Default, Serialize)]
pub struct QueueSummary {
    /// Messages in the spool (content not purged).
    pub messages: u64,
    /// Recipients by state.
    pub recipients: BTreeMap<&'static str, u64>,
    /// Recipients not yet final, by destination domain.
    pub destinations: BTreeMap<String, u64>,
    /// The same by destination site (the MX hosts the domain resolved to last; `""`: not
    /// resolved yet). Filled by the HTTP thread from `destinations`.
    pub sites: BTreeMap<String, u64>,
}

impl QueueSummary {
    fn add(&mut self, other: QueueSummary) {
        self.messages += other.messages;
        for (k, v) in other.recipients {
            *self.recipients.entry(k).or_default() += v;
        }
        for (k, v) in other.destinations {
            *self.destinations.entry(k).or_default() += v;
        }
    }
}

/// The HTTP thread's handle on every worker's channel.
pub struct ControlHandle {
    workers: Vec<mpsc::UnboundedSender<ControlRequest>>,
    next: AtomicUsize,
}

/// Why a control request got no answer.
#[derive(Debug, thiserror::Error)]
#[error("worker {0} is not answering (shutting down?)")]
pub struct Unavailable(pub usize);

impl ControlHandle {
    /// Wraps the workers' senders, indexed by worker (= shard).
    pub fn new(workers: Vec<mpsc::UnboundedSender<ControlRequest>>) -> ControlHandle {
        ControlHandle {
            workers,
            next: AtomicUsize::new(0),
        }
    }

    fn ask<T>(
        &self,
        worker: usize,
        make: impl FnOnce(oneshot::Sender<T>) -> ControlRequest,
    ) -> Result<T, Unavailable> {
        let (tx, rx) = oneshot::channel();
        let sender = self.workers.get(worker).ok_or(Unavailable(worker))?;
        sender.send(make(tx)).map_err(|_| Unavailable(worker))?;
        rx.blocking_recv().map_err(|_| Unavailable(worker))
    }

    /// Spools a message on the next worker (round robin). Blocks until it is durable.
    pub fn inject(&self, t: Transaction) -> Result<Result<QueueId, CommitError>, Unavailable> {
        let w = self.next.fetch_add(1, Ordering::Relaxed) % self.workers.len().max(1);
        self.ask(w, |reply| ControlRequest::Inject {
            transaction: Box::new(t),
            reply,
        })
    }

    /// One message's state.
    pub fn message(&self, id: QueueId) -> Result<Option<MessageInfo>, Unavailable> {
        let w = usize::from(id.shard());
        if w >= self.workers.len() {
            return Ok(None);
        }
        self.ask(w, |reply| ControlRequest::Message { id, reply })
    }

    /// The queue summary over all workers.
    pub fn queue(&self) -> Result<QueueSummary, Unavailable> {
        let mut total = QueueSummary::default();
        for w in 0..self.workers.len() {
            total.add(self.ask(w, |reply| ControlRequest::Queue { reply })?);
        }
        Ok(total)
    }

    /// The queue's shape over every worker; `rename` maps each worker's keys (domains to
    /// their sites for [`crate::queue::shape::By::Site`]).
    pub fn shape(
        &self,
        by: crate::queue::shape::By,
        now_ms: u64,
        rename: impl Fn(String) -> String,
    ) -> Result<crate::queue::shape::Shape, Unavailable> {
        let mut total = crate::queue::shape::Shape::default();
        for w in 0..self.workers.len() {
            total.merge(
                self.ask(w, |reply| ControlRequest::Shape { by, now_ms, reply })?,
                &rename,
            );
        }
        Ok(total)
    }

    /// Flushes every worker; returns the recipients rescheduled.
    pub fn flush(&self, domain: Option<String>) -> Result<u64, Unavailable> {
        let mut n = 0;
        for w in 0..self.workers.len() {
            let d = domain.clone();
            n += self.ask(w, |reply| ControlRequest::Flush { domain: d, reply })?;
        }
        Ok(n)
    }

    /// Deletes a message.
    pub fn delete(&self, id: QueueId) -> Result<Option<u64>, Unavailable> {
        let w = usize::from(id.shard());
        if w >= self.workers.len() {
            return Ok(None);
        }
        self.ask(w, |reply| ControlRequest::Delete { id, reply })
    }

    /// Sends a reload to every worker and waits for each to apply it.
    pub fn reload(&self, settings: impl Fn() -> Reloaded) -> Result<(), String> {
        for w in 0..self.workers.len() {
            let s = Box::new(settings());
            self.ask(w, |reply| ControlRequest::Reload { settings: s, reply })
                .map_err(|e| e.to_string())??;
        }
        Ok(())
    }

    /// Bounces every queued recipient of a domain or a user, on every worker.
    pub fn bounce_matching(
        &self,
        target: &crate::delivery::suspend::Target,
    ) -> Result<u64, Unavailable> {
        let mut n = 0;
        for w in 0..self.workers.len() {
            let target = target.clone();
            n += self.ask(w, |reply| ControlRequest::BounceMatching { target, reply })?;
        }
        Ok(n)
    }

    /// Bounces a message.
    pub fn bounce(&self, id: QueueId) -> Result<Option<u64>, Unavailable> {
        let w = usize::from(id.shard());
        if w >= self.workers.len() {
            return Ok(None);
        }
        self.ask(w, |reply| ControlRequest::Bounce { id, reply })
    }
}
