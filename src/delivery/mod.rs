//! Outbound delivery on one worker core: the retry timer wheel, per-destination ready queues
//! and connection pools, outcome recording, DSNs and the event log.
//!
//! Each core delivers the messages of its own spool shard. The shard is single-writer (status
//! records go where the message is), and the body is sent straight from the shard's mapping, so
//! no body is ever copied between cores. Ready queues are per recipient domain and egress pool,
//! in priority lanes (`queue::ready`); a connection to a site carries the jobs of every domain
//! of that site on its core once its own are gone, and the site's connection and rate limits
//! hold for the whole process (`sites`). See `docs/delivery.md`.

pub mod attempt;
pub mod dane;
pub mod egress;
pub mod events;
pub mod route;
pub mod sites;
pub mod sts;
pub mod suspend;
pub mod tlsrpt;

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{Notify, watch};

use crate::bounce::classify::{Category, Classifier, Failure};
use crate::bounce::dsn::{self, DsnAction, DsnInput, DsnKind, DsnRecipient, ReturnContent};
use crate::ids::QueueId;
use crate::metrics::CoreMetrics;
pub use crate::queue::decision::AttemptResult;
use crate::queue::decision::{
    Cause, Decision, EXPIRED, Fate, MessageFacts, RecipientFacts, decide, dsn_status,
};
use crate::queue::ready::Ready;
use crate::queue::schedule::RetryPolicy;
use crate::queue::throttle::Signal;
use crate::queue::wheel::TimerWheel;
use crate::smtp::{self, EnhancedCode, Ret};
use crate::spool::{
    MessageMeta, NewMessage, RecipientMeta, RecipientStatus, Shard, StatusKind, StatusRecord,
};
use crate::time::{Clock, unix_ms};

use events::{Event as LogEvent, EventLog};
use route::Router;

/// Tick of the retry wheel.
const TICK_MS: u64 = 100;

/// A retry deadline in the wheel: the recipient, and the `next_attempt_ms` it was scheduled
/// for. The entry is live while the recipient's state still says that time: a recipient that
/// was attempted meanwhile (flush, an earlier entry) has moved on and the entry is skipped.
/// Comparing stored times, not reading the clock, keeps a wall-clock step from stranding it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Due {
    id: QueueId,
    rcpt: u32,
    /// `Some(next_attempt_ms)` from the wheel; `None` forces an attempt now (fresh mail, flush).
    scheduled_for: Option<u64>,
}

/// One batch of recipients of one message going to one destination in one transaction.
#[derive(Clone, Debug)]
pub struct Job {
    /// The message.
    pub id: QueueId,
    /// Recipient indexes (all in the same domain).
    pub rcpts: Vec<u32>,
    /// The message's priority (RFC 6710 level): its lane in the ready queue.
    pub priority: i8,
}

/// What a destination queue holds: the jobs of one recipient domain that leave through one
/// egress pool (`None`: no pool, the system's source address).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DestKey {
    /// The recipient domain (lower case).
    pub domain: String,
    /// The egress pool.
    pub pool: Option<egress::PoolId>,
}

/// A site reached through an egress pool: the destinations whose jobs its connections share.
type SitePool = (String, Option<egress::PoolId>);

/// How often an idle connection looks whether mail waits for a slot of its site.
const IDLE_LOOK: Duration = Duration::from_millis(50);

/// An idle connection's entry in its destination's list ([`Delivery::wait_for_job`]): dropped,
/// it takes the entry out if no job took it first, and counts the connection active again.
struct IdleListing<'a> {
    delivery: &'a Delivery,
    key: &'a DestKey,
    token: u64,
}

impl Drop for IdleListing<'_> {
    fn drop(&mut self) {
        let mut dests = self.delivery.dests.borrow_mut();
        if let Some(d) = dests.get_mut(self.key)
            && let Some(at) = d.idle.iter().position(|(t, _)| *t == self.token)
        {
            d.idle.swap_remove(at);
            d.active += 1;
            let n = &self.delivery.idle_count;
            n.set(n.get() - 1);
        }
    }
}

/// A destination (recipient domain and egress pool) with its ready queue and connection count.
#[derive(Default)]
pub struct Destination {
    /// Jobs ready to go, by priority.
    pub queue: Ready<Job>,
    /// Open connections, those waiting for a job ([`Delivery::wait_for_job`]) not counted.
    pub active: usize,
    /// Open connections waiting for a job: the first job for the destination (or its site) goes
    /// to one of them rather than to a new connection.
    idle: Vec<(u64, tokio::sync::oneshot::Sender<()>)>,
}

/// What an operator asked for a message's recipients that are not final yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cancel {
    /// Fail them now, with a DSN as for any failure (`queue bounce`).
    Bounce,
    /// Drop them, without a DSN (`queue delete`).
    Delete,
}

impl Cancel {
    /// The result recorded for a recipient this cancels.
    fn result(self) -> AttemptResult {
        match self {
            Cancel::Bounce => AttemptResult::Bounced,
            Cancel::Delete => AttemptResult::Deleted,
        }
    }
}

/// Delivery settings for one core.
pub struct DeliveryConfig {
    /// Retry policy.
    pub policy: RetryPolicy,
    /// Connections per destination on this core (the site's host-wide limit holds too).
    pub max_connections: usize,
    /// Recipients per transaction: a message's recipients for one domain go out in jobs of at
    /// most this many.
    pub max_recipients_per_transaction: usize,
    /// Our EHLO name and the Reporting-MTA.
    pub hostname: String,
    /// STARTTLS policy for outbound connections.
    pub tls: crate::smtp::client::TlsPolicy,
    /// Per-domain STARTTLS policy overrides.
    pub route_tls: Vec<(String, crate::smtp::client::TlsPolicy)>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// An open connection with nothing to send waits this long for a job before QUIT.
    pub connection_idle_time: Duration,
    /// Outbound session timeouts.
    pub timeouts: crate::smtp::client::ClientTimeouts,
    /// The VERP bounce domain: messages leave with `bounces+<queue id>@<it>` as return path.
    pub bounce_domain: Option<String>,
    /// Honour MX hosts' validated TLSA records (DANE).
    pub dane: bool,
}

/// What delivery is handed of its core: the shard, the metrics, the shutdown signal and the
/// clock (delivery reads no clock of its own), and the sites every core shares.
pub struct CoreHandles {
    /// The core's spool shard (the worker's commit task flushes what delivery appends).
    pub shard: Rc<RefCell<Shard>>,
    /// The core's metrics.
    pub metrics: Arc<CoreMetrics>,
    /// Becomes true when the server shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// The time.
    pub clock: Rc<dyn Clock>,
    /// Destination sites and their host-wide limits (shared by every core).
    pub sites: Arc<sites::Sites>,
    /// Egress sources and pools (shared by every core).
    pub egress: Arc<egress::Egress>,
    /// The operator's suspensions (shared by every core and the HTTP thread).
    pub suspensions: Arc<suspend::Suspensions>,
    /// The outbound TLS configuration that verifies certificates (the `verify` policy).
    pub verify_tls: Arc<rustls::ClientConfig>,
    /// MTA-STS policies (shared by every core).
    pub sts: Arc<sts::Sts>,
    /// The suppression list (shared by every core, the sessions and the HTTP thread).
    pub suppressions: Arc<crate::suppress::Suppressions>,
    /// TLS-RPT session counts (shared by every core), when `delivery.tls_rpt` is on.
    pub tls_rpt: Option<Arc<tlsrpt::TlsRpt>>,
    /// Wakes the core's commit task: a final outcome is flushed at once, not at the next lazy
    /// flush, so that a crash finds it on disk unless it lands within one fdatasync of the
    /// next hop's reply (the window in which a delivery can be repeated; docs/spool-format.md).
    pub flush: Rc<Notify>,
    /// The core's durable spool sequence (and failed-through sequence), published by the
    /// commit task: a DSN is delivered only once its record is durable.
    pub durable: watch::Receiver<(u64, u64)>,
}

/// Per-core delivery state. Lives in an `Rc` on the worker thread.
pub struct Delivery {
    /// The core's spool shard (the worker's commit task flushes what this appends).
    shard: Rc<RefCell<Shard>>,
    /// The core's metrics.
    metrics: Arc<CoreMetrics>,
    /// Becomes true when the server shuts down.
    shutdown: watch::Receiver<bool>,
    /// The time.
    clock: Rc<dyn Clock>,
    config: DeliveryConfig,
    router: RefCell<Rc<Router>>,
    classifier: RefCell<std::sync::Arc<Classifier>>,
    /// Retry deadlines on the monotonic clock (ms since `epoch`), so that a step of the wall
    /// clock neither fires them early nor strands them.
    wheel: RefCell<TimerWheel<Due>>,
    /// Time zero of the wheel.
    epoch: std::time::Instant,
    dests: RefCell<HashMap<DestKey, Destination>>,
    /// Numbers the idle connections' entries in `dests`.
    idle_tokens: Cell<u64>,
    /// How many connections wait in the `idle` lists of `dests`.
    idle_count: Cell<usize>,
    /// Destinations whose site had no free connection slot: no connection starts for them until
    /// a slot frees anywhere in the process (the site wakes this core through `kick`).
    parked: RefCell<HashMap<DestKey, Vec<Arc<sites::Site>>>>,
    sites: Arc<sites::Sites>,
    egress: Arc<egress::Egress>,
    suspensions: Arc<suspend::Suspensions>,
    /// Recipients held by a domain or user suspension: not queued, not in flight; dispatched
    /// again whenever the suspensions change (a resume, an expiry).
    held: RefCell<Vec<Due>>,
    /// The suspensions' generation when `held` was last looked at.
    held_generation: Cell<u64>,
    /// Messages made durable since the last loop turn, to schedule now.
    fresh: RefCell<Vec<QueueId>>,
    /// Wakes the scheduler loop: new mail, or a site slot freed on any core.
    kick: Arc<Notify>,
    events: EventLog,
    tls: std::sync::Arc<rustls::ClientConfig>,
    /// The TLS configuration of the `verify` policy.
    verify_tls: Arc<rustls::ClientConfig>,
    /// MTA-STS policies.
    sts: Arc<sts::Sts>,
    /// The suppression list.
    suppressions: Arc<crate::suppress::Suppressions>,
    /// TLS-RPT session counts, when reporting is on.
    tls_rpt: Option<Arc<tlsrpt::TlsRpt>>,
    /// Wakes the core's commit task (see [`CoreHandles::flush`]).
    flush: Rc<Notify>,
    /// The core's durable sequence (see [`CoreHandles::durable`]).
    durable: RefCell<watch::Receiver<(u64, u64)>>,
    /// DSNs queued here and the commit ticket that makes each durable: handed to the scheduler
    /// only then, so that a crash cannot forget a DSN already sent (and send it again).
    unsynced: RefCell<Vec<(QueueId, u64)>>,
    dsn_counter: Cell<u64>,
    /// Recipients queued on a destination or in a transaction right now: never dispatched twice.
    in_flight: RefCell<HashSet<(QueueId, u32)>>,
    /// Recipients an operator bounced or deleted while their transaction was under way: the
    /// transaction's result stands if it delivered them, otherwise this does.
    cancelled: RefCell<HashMap<(QueueId, u32), Cancel>>,
    /// Per-domain STARTTLS policy (reloadable).
    route_tls: RefCell<Vec<(String, crate::smtp::client::TlsPolicy)>>,
    /// The recipient domains of each (site, egress pool) on this core, learned when a
    /// connection resolves a domain: a connection to the site may carry their jobs too.
    site_domains: RefCell<HashMap<SitePool, Vec<String>>>,
    /// The site each recipient domain resolved to last on this core, and its shaping rule's
    /// queue lifetime in ms.
    domain_sites: RefCell<HashMap<String, (String, Option<u64>)>>,
}

impl Delivery {
    /// Builds the delivery state and schedules every pending recipient found by recovery.
    pub fn new(
        core: CoreHandles,
        config: DeliveryConfig,
        router: Router,
        classifier: std::sync::Arc<Classifier>,
        events: EventLog,
    ) -> Rc<Delivery> {
        let CoreHandles {
            shard,
            metrics,
            shutdown,
            clock,
            sites,
            egress,
            suspensions,
            verify_tls,
            sts,
            suppressions,
            tls_rpt,
            flush,
            durable,
        } = core;
        let now = unix_ms(clock.now());
        let route_tls = config.route_tls.clone();
        let mut wheel = TimerWheel::new(TICK_MS, 0);
        for (id, rcpt, next) in shard.borrow().pending() {
            wheel.insert(
                next.saturating_sub(now),
                Due {
                    id,
                    rcpt,
                    scheduled_for: Some(next),
                },
            );
        }
        Rc::new(Delivery {
            shard,
            metrics,
            shutdown,
            config,
            router: RefCell::new(Rc::new(router)),
            classifier: RefCell::new(classifier),
            wheel: RefCell::new(wheel),
            epoch: clock.monotonic(),
            clock,
            dests: RefCell::new(HashMap::new()),
            idle_tokens: Cell::new(0),
            idle_count: Cell::new(0),
            parked: RefCell::new(HashMap::new()),
            sites,
            egress,
            suspensions,
            held: RefCell::new(Vec::new()),
            held_generation: Cell::new(0),
            fresh: RefCell::new(Vec::new()),
            kick: Arc::new(Notify::new()),
            events,
            tls: crate::net::tls::outbound_client_config(),
            verify_tls,
            sts,
            suppressions,
            tls_rpt,
            flush,
            durable: RefCell::new(durable),
            unsynced: RefCell::new(Vec::new()),
            dsn_counter: Cell::new(0),
            in_flight: RefCell::new(HashSet::new()),
            cancelled: RefCell::new(HashMap::new()),
            route_tls: RefCell::new(route_tls),
            site_domains: RefCell::new(HashMap::new()),
            domain_sites: RefCell::new(HashMap::new()),
        })
    }

    /// Sends the failure DSNs that a crash may have lost: a recipient recorded as failed whose
    /// DSN was due but is not marked as sent (the DSN is queued right after the failure record,
    /// so a crash between the two loses it). Called once at start.
    pub fn recover_dsns(&self) {
        let now = self.clock.now();
        let mut todo: Vec<(QueueId, Vec<DsnRecipientFacts>)> = Vec::new();
        {
            let shard = self.shard.borrow();
            for id in shard.messages() {
                let (Some(st), Some(view)) = (shard.state(id), shard.message(id)) else {
                    continue;
                };
                if view.meta.is_dsn || view.meta.reverse_path.is_empty() {
                    continue;
                }
                let mut facts = Vec::new();
                for (i, r) in st.recipients.iter().enumerate() {
                    let Some(m) = view.meta.recipients.get(i) else {
                        continue;
                    };
                    if r.kind == Some(StatusKind::Failed)
                        && !r.dsn_sent
                        && m.notify().reports_failure()
                    {
                        let last = r.last_status.and_then(|at| shard.status_record(at));
                        let reply = last.map_or("", |l| l.reply.as_str());
                        let cause = if reply.starts_with(EXPIRED) {
                            Some(Cause::Expired)
                        } else {
                            last.and_then(|l| Category::from_name(l.category.as_str()))
                                .map(Cause::Category)
                        };
                        let enhanced = reply
                            .split_whitespace()
                            .nth(1)
                            .and_then(EnhancedCode::parse);
                        facts.push(DsnRecipientFacts {
                            rcpt: i as u32,
                            address: m.address.as_str().to_owned(),
                            reply: reply.to_owned(),
                            remote: last
                                .map(|l| l.remote.as_str().to_owned())
                                .unwrap_or_default(),
                            status: dsn_status(DsnKind::Failure, enhanced, cause),
                        });
                    }
                }
                if !facts.is_empty() {
                    todo.push((id, facts));
                }
            }
        }
        for (id, facts) in todo {
            tracing::info!(%id, recipients = facts.len(), "sending a failure dsn lost by a crash");
            self.send_dsn(id, DsnKind::Failure, &facts, now);
        }
    }

    /// Schedules every deferred recipient (of `domain`, or all) for now. Returns how many.
    pub fn flush(self: &Rc<Self>, domain: Option<&str>) -> u64 {
        let mut due = Vec::new();
        {
            let shard = self.shard.borrow();
            let unsynced: HashSet<QueueId> =
                self.unsynced.borrow().iter().map(|&(id, _)| id).collect();
            for (id, rcpt, _) in shard.pending() {
                // A DSN whose record is not durable yet waits for it (see `send_dsn`).
                if unsynced.contains(&id) {
                    continue;
                }
                let wanted = match domain {
                    None => true,
                    Some(d) => shard
                        .message(id)
                        .and_then(|v| {
                            v.meta
                                .recipients
                                .get(rcpt as usize)
                                .map(|m| domain_of(m.address.as_str()) == d.to_ascii_lowercase())
                        })
                        .unwrap_or(false),
                };
                if wanted {
                    due.push(Due {
                        id,
                        rcpt,
                        scheduled_for: None,
                    });
                }
            }
        }
        let n = due.len() as u64;
        self.dispatch(&mut due);
        n
    }

    /// Bounces or deletes every non-final recipient of `id` (an operator's `queue bounce` or
    /// `queue delete`). Recipients waiting on a destination queue are taken off it and become
    /// final now; those in a transaction under way become final with its result, unless that
    /// delivered them (the message is then already there: the record says so, no DSN claims
    /// otherwise). Returns how many recipients it concerns, or `None` for an unknown message.
    pub fn cancel(&self, id: QueueId, how: Cancel) -> Option<u64> {
        let pending: Vec<u32> = {
            let shard = self.shard.borrow();
            let st = shard.state(id)?;
            st.recipients
                .iter()
                .enumerate()
                .filter(|(_, r)| !r.is_final())
                .map(|(i, _)| i as u32)
                .collect()
        };
        Some(self.cancel_recipients(id, &pending, how))
    }

    /// Bounces or deletes every non-final recipient of a domain, or of the messages an
    /// authenticated user submitted (`POST /api/v1/queue/bounce`). Returns how many.
    pub fn cancel_matching(&self, target: &suspend::Target, how: Cancel) -> u64 {
        let mut matching: HashMap<QueueId, Vec<u32>> = HashMap::new();
        {
            let shard = self.shard.borrow();
            for (id, rcpt, _) in shard.pending() {
                let Some(view) = shard.message(id) else {
                    continue;
                };
                let hit = match target {
                    suspend::Target::Domain(d) => view
                        .meta
                        .recipients
                        .get(rcpt as usize)
                        .is_some_and(|m| domain_of(m.address.as_str()) == *d),
                    suspend::Target::User(u) => {
                        view.meta.auth_user.as_ref().map(|a| a.as_str()) == Some(u.as_str())
                    }
                    suspend::Target::Site(_) | suspend::Target::Source(_) => false,
                };
                if hit {
                    matching.entry(id).or_default().push(rcpt);
                }
            }
        }
        matching
            .into_iter()
            .map(|(id, rcpts)| self.cancel_recipients(id, &rcpts, how))
            .sum()
    }

    /// Cancels some non-final recipients of one message: off their queues and final now, or
    /// at the end of the transaction under way (see [`Delivery::cancel`]).
    fn cancel_recipients(&self, id: QueueId, rcpts: &[u32], how: Cancel) -> u64 {
        self.unqueue(id, rcpts);
        let mut immediate = Vec::new();
        {
            let in_flight = self.in_flight.borrow();
            let mut cancelled = self.cancelled.borrow_mut();
            for &r in rcpts {
                if in_flight.contains(&(id, r)) {
                    cancelled.insert((id, r), how);
                } else {
                    immediate.push((r, how.result()));
                }
            }
        }
        self.record(id, &immediate);
        rcpts.len() as u64
    }

    /// Takes these recipients of `id` off the destination queues (they stay in no job).
    /// Returns those it found in a queue (the others are in no queue: held, or in a
    /// transaction).
    fn unqueue(&self, id: QueueId, rcpts: &[u32]) -> Vec<u32> {
        let mut in_flight = self.in_flight.borrow_mut();
        let mut found = Vec::new();
        for d in self.dests.borrow_mut().values_mut() {
            d.queue.retain_mut(|job| {
                if job.id != id {
                    return true;
                }
                job.rcpts.retain(|r| {
                    let taken = rcpts.contains(r);
                    if taken {
                        in_flight.remove(&(id, *r));
                        found.push(*r);
                    }
                    !taken
                });
                !job.rcpts.is_empty()
            });
        }
        found
    }

    /// Whether an operator bounced or deleted this recipient while its transaction was under
    /// way (its result is due to `record`, which settles it).
    pub fn is_cancelled(&self, id: QueueId, rcpt: u32) -> bool {
        self.cancelled.borrow().contains_key(&(id, rcpt))
    }

    /// Forgets recipients that a job dropped before sending (final meanwhile, or the message
    /// is gone), so that they can be dispatched again if they ever need to be.
    pub fn release(&self, id: QueueId, rcpts: &[u32]) {
        let mut in_flight = self.in_flight.borrow_mut();
        for r in rcpts {
            in_flight.remove(&(id, *r));
        }
    }

    /// Hands a durable message to delivery (called after its 250 went out).
    pub fn submit(&self, id: QueueId) {
        self.fresh.borrow_mut().push(id);
        self.kick.notify_one();
    }

    /// Number of recipients waiting in the wheel.
    pub fn scheduled(&self) -> usize {
        self.wheel.borrow().len()
    }

    /// The scheduler loop: wakes on the next deadline or on new mail, moves due recipients to
    /// their destination queues and starts connections.
    pub async fn run(self: Rc<Self>) {
        let mut shutdown = self.shutdown.clone();
        let mut due = Vec::new();
        loop {
            if *shutdown.borrow() {
                return;
            }
            let now = self.wheel_now();
            if !self.unsynced.borrow().is_empty() {
                let durable = self.shard.borrow().durable_seq();
                let mut fresh = self.fresh.borrow_mut();
                self.unsynced.borrow_mut().retain(|&(id, ticket)| {
                    let wait = ticket > durable;
                    if !wait {
                        fresh.push(id);
                    }
                    wait
                });
            }
            let fresh: Vec<QueueId> = std::mem::take(&mut *self.fresh.borrow_mut());
            {
                let shard = self.shard.borrow();
                for id in fresh {
                    if let Some(st) = shard.state(id) {
                        for (i, r) in st.recipients.iter().enumerate() {
                            if !r.is_final() {
                                due.push(Due {
                                    id,
                                    rcpt: i as u32,
                                    scheduled_for: None,
                                });
                            }
                        }
                    }
                }
            }
            self.wheel.borrow_mut().advance(now, &mut due);
            // Held recipients go again once the suspensions changed (listing them drops the
            // expired ones, which changes them too).
            if !self.held.borrow().is_empty() {
                self.suspensions.list(unix_ms(self.clock.now()));
                let generation = self.suspensions.generation();
                if generation != self.held_generation.replace(generation) {
                    due.append(&mut self.held.borrow_mut());
                }
            }
            if !due.is_empty() {
                self.dispatch(&mut due);
            }
            // Destinations whose site has a free slot again (a slot freed on some core woke
            // this loop; the loop's periodic turn checks too).
            let free: Vec<DestKey> = self
                .parked
                .borrow()
                .iter()
                .filter(|(_, paths)| {
                    paths.iter().any(|site| {
                        let free = site.has_free_slot(self.clock.monotonic());
                        if !free {
                            // Still waiting: stay registered, so that a freed slot (or a
                            // cluster grant) wakes this loop and the path still counts as
                            // wanted.
                            site.wait_for_slot(&self.kick);
                        }
                        free && !self.path_suspended(site)
                    })
                })
                .map(|(key, _)| key.clone())
                .collect();
            for key in free {
                self.parked.borrow_mut().remove(&key);
                self.start_connections(&key);
            }
            let sleep_ms = self
                .wheel
                .borrow()
                .next_deadline()
                .map(|d| d.saturating_sub(now).clamp(TICK_MS, 1000))
                .unwrap_or(1000);
            let waiting = !self.unsynced.borrow().is_empty();
            let mut durable = self.durable.borrow().clone();
            tokio::select! {
                _ = self.kick.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(sleep_ms)) => {}
                _ = shutdown.changed() => {}
                _ = durable.changed(), if waiting => {}
            }
            *self.durable.borrow_mut() = durable;
        }
    }

    /// Milliseconds on the wheel's monotonic clock.
    fn wheel_now(&self) -> u64 {
        self.clock
            .monotonic()
            .duration_since(self.epoch)
            .as_millis() as u64
    }

    /// Puts a recipient in the wheel to be tried in `delay_ms`, whatever the wall clock does
    /// meanwhile; `scheduled_for` is its `next_attempt_ms` as the shard holds it now.
    fn schedule(&self, id: QueueId, rcpt: u32, delay_ms: u64, scheduled_for: u64) {
        let at = self.wheel_now().saturating_add(delay_ms);
        self.wheel.borrow_mut().insert(
            at,
            Due {
                id,
                rcpt,
                scheduled_for: Some(scheduled_for),
            },
        );
    }

    /// Groups due recipients into jobs per (message, destination) and queues them. Stale wheel
    /// entries (the recipient is final or was attempted since) are skipped.
    fn dispatch(self: &Rc<Self>, due: &mut Vec<Due>) {
        let mut jobs: HashMap<(QueueId, DestKey), (i8, Vec<u32>)> = HashMap::new();
        let mut expired: HashMap<QueueId, Vec<u32>> = HashMap::new();
        // Past their deadline but queued or in a transaction: expired if they are only queued.
        let mut overdue: HashMap<QueueId, Vec<u32>> = HashMap::new();
        let now_ms = unix_ms(self.clock.now());
        {
            let shard = self.shard.borrow();
            for Due {
                id,
                rcpt,
                scheduled_for,
            } in due.drain(..)
            {
                let (Some(st), Some(view)) = (shard.state(id), shard.message(id)) else {
                    continue;
                };
                let Some(r) = st.recipients.get(rcpt as usize) else {
                    continue;
                };
                if r.is_final() || scheduled_for.is_some_and(|t| t != r.next_attempt_ms) {
                    continue;
                }
                let Some(meta) = view.meta.recipients.get(rcpt as usize) else {
                    continue;
                };
                // Past its own deadline: it fails now, unless a transaction has it (that
                // transaction's result decides).
                let deadline = view.options.expires_at_ms;
                if deadline != 0 && now_ms >= deadline {
                    // (A held recipient may have several deadline entries due at once.)
                    let list = if self.in_flight.borrow().contains(&(id, rcpt)) {
                        overdue.entry(id).or_default()
                    } else {
                        expired.entry(id).or_default()
                    };
                    if !list.contains(&rcpt) {
                        list.push(rcpt);
                    }
                    continue;
                }
                let domain = domain_of(meta.address.as_str());
                let user = view.meta.auth_user.as_ref().map(|u| u.as_str());
                if self.suspensions.holds_message(now_ms, &domain, user) {
                    self.held.borrow_mut().push(Due {
                        id,
                        rcpt,
                        scheduled_for,
                    });
                    // A suspension does not stop the clock: it still expires at its deadline.
                    if deadline != 0 {
                        self.schedule(id, rcpt, deadline - now_ms, r.next_attempt_ms);
                    }
                    continue;
                }
                if !self.in_flight.borrow_mut().insert((id, rcpt)) {
                    continue;
                }
                // Queued now, it may wait (a paused or full site): the wheel comes back for it
                // at its deadline, and then takes it off the queue and expires it.
                if deadline != 0 {
                    self.schedule(id, rcpt, deadline - now_ms, r.next_attempt_ms);
                }
                let key = DestKey {
                    domain,
                    pool: self.egress.pool_for(user),
                };
                let entry = jobs
                    .entry((id, key))
                    .or_insert_with(|| (view.options.priority, Vec::new()));
                if !entry.1.contains(&rcpt) {
                    entry.1.push(rcpt);
                }
            }
        }
        for (id, rcpts) in overdue {
            // Those in a transaction are settled by it.
            let queued = self.unqueue(id, &rcpts);
            if !queued.is_empty() {
                expired.entry(id).or_default().extend(queued);
            }
        }
        for (id, rcpts) in expired {
            self.expire(id, &rcpts);
        }
        let mut touched = HashSet::new();
        {
            let mut dests = self.dests.borrow_mut();
            let per_txn = self.config.max_recipients_per_transaction.max(1);
            for ((id, key), (priority, rcpts)) in jobs {
                let queue = &mut dests.entry(key.clone()).or_default().queue;
                for chunk in rcpts.chunks(per_txn) {
                    queue.push_back(
                        priority,
                        Job {
                            id,
                            rcpts: chunk.to_vec(),
                            priority,
                        },
                    );
                }
                touched.insert(key);
            }
        }
        for key in touched {
            self.start_connections(&key);
        }
    }

    /// Starts connections for a destination up to its limit.
    fn start_connections(self: &Rc<Self>, key: &DestKey) {
        loop {
            let start = {
                let mut dests = self.dests.borrow_mut();
                if !dests.contains_key(key) {
                    return;
                }
                // The connections of the domain's whole site on this core serve its queue.
                let (active, queued) = self.site_load(&dests, key);
                let want = queued.min(self.config.max_connections);
                if active >= want {
                    return;
                }
                // An idle connection of the site takes the job before a new one is opened; it
                // holds a slot already, so this holds for a parked destination too.
                if self.wake_idle(&mut dests, key) {
                    false
                } else if self.parked.borrow().contains_key(key) {
                    return;
                } else {
                    let Some(d) = dests.get_mut(key) else {
                        return;
                    };
                    d.active += 1;
                    true
                }
            };
            if !start {
                continue;
            }
            let this = Rc::clone(self);
            let key = key.clone();
            tokio_uring::spawn(async move {
                attempt::connection(Rc::clone(&this), &key).await;
                // Jobs left here or at another domain of the site (which may have counted on
                // this connection) get connections again.
                let more: Vec<DestKey> = {
                    let mut dests = this.dests.borrow_mut();
                    dests.entry(key.clone()).or_default().active -= 1;
                    this.site_keys(&key)
                        .into_iter()
                        .filter(|k| dests.get(k).is_some_and(|d| !d.queue.is_empty()))
                        .collect()
                };
                for k in more {
                    this.start_connections(&k);
                }
            });
        }
    }

    /// Hands a job of `key` to an idle connection of its site (one of `key`'s own first), which
    /// counts as active again. False when none waits.
    ///
    /// Another domain's connection is only woken when `key`'s domain has no enforced MTA-STS
    /// policy: under one, [`Delivery::next_job`] also asks whether that connection's MX host and
    /// TLS meet the policy, and a connection woken for a job it may not carry would hold the job
    /// back until its idle time ran out.
    fn wake_idle(&self, dests: &mut HashMap<DestKey, Destination>, key: &DestKey) -> bool {
        if self.idle_count.get() == 0 {
            return false;
        }
        let wake = |d: &mut Destination| {
            while let Some((_, waiter)) = d.idle.pop() {
                self.idle_count.set(self.idle_count.get() - 1);
                // The entry leaves the list either way, so the connection counts as active
                // again either way (its listing no longer finds it to do so).
                d.active += 1;
                if waiter.send(()).is_ok() {
                    return true;
                }
            }
            false
        };
        if dests.get_mut(key).is_some_and(wake) {
            return true;
        }
        !self.sts_enforced(&key.domain)
            && self
                .site_keys(key)
                .iter()
                .filter(|k| *k != key)
                .any(|k| dests.get_mut(k).is_some_and(wake))
    }

    /// Whether `domain`'s cached MTA-STS policy is in `enforce` mode.
    fn sts_enforced(&self, domain: &str) -> bool {
        self.sts
            .cached(domain)
            .is_some_and(|c| c.policy.mode == crate::queue::sts::Mode::Enforce)
    }

    /// Holds an open connection of `key` to `site` that has nothing to send, so that the next
    /// message for its destination or site reuses it instead of paying for a new TCP
    /// connection, greeting and EHLO on both sides. `until` is when its idle time ends: set by
    /// the first wait (`delivery.connection_idle_time` from now), kept by the waits that follow
    /// a wake that brought nothing. True when a job came for it ([`Delivery::start_connections`]
    /// counted it active again); false when the idle time is over, at shutdown, or as soon as
    /// mail waits for one of the site's slots (another core's, or a destination this connection
    /// cannot serve): the caller then quits and frees its slot.
    ///
    /// `wanted` says whether the connection may still carry mail (its path not paused,
    /// suspended or over its limit); it is asked at every look, so that a path whose limit
    /// shrinks retires its waiting connections first.
    pub async fn wait_for_job(
        &self,
        key: &DestKey,
        site: &sites::Site,
        until: &mut Option<tokio::time::Instant>,
        wanted: impl Fn() -> bool,
    ) -> bool {
        let idle_for = self.config.connection_idle_time;
        if idle_for.is_zero() || *self.shutdown.borrow() || site.demand().1 || !wanted() {
            return false;
        }
        let until = *until.get_or_insert_with(|| tokio::time::Instant::now() + idle_for);
        let (waiter, woken) = tokio::sync::oneshot::channel();
        let token = self.idle_tokens.get();
        self.idle_tokens.set(token + 1);
        {
            let mut dests = self.dests.borrow_mut();
            let d = dests.entry(key.clone()).or_default();
            d.active -= 1;
            d.idle.push((token, waiter));
            self.idle_count.set(self.idle_count.get() + 1);
        }
        // However the wait ends (timeout, shutdown, the task dropped), a connection still
        // listed as idle leaves the list and counts as active until it has quit.
        let _listed = IdleListing {
            delivery: self,
            key,
            token,
        };
        let mut shutdown = self.shutdown.clone();
        let mut woken = woken;
        loop {
            let next_look = (tokio::time::Instant::now() + IDLE_LOOK).min(until);
            tokio::select! {
                // A wake and the end of the wait at once: the wake wins (it counted us).
                biased;
                got = &mut woken => return got.is_ok(),
                _ = shutdown.wait_for(|s| *s) => return false,
                _ = tokio::time::sleep_until(next_look) => {}
            }
            if tokio::time::Instant::now() >= until || site.demand().1 || !wanted() {
                return false;
            }
        }
    }

    /// Takes the next job for a connection to `site` opened for `key`, running under `tls`
    /// with `host`: the destination's own next job (highest priority first), else the next job
    /// of another domain of the same site and pool on this core with the same configured TLS
    /// policy and whose MTA-STS policy, if enforced, this connection meets (verified, to a host
    /// it names) — the one whose next job has the highest priority. Returns the job's
    /// destination with it.
    pub fn next_job(
        &self,
        key: &DestKey,
        site: &str,
        tls: crate::smtp::client::TlsPolicy,
        host: &str,
    ) -> Option<(DestKey, Job)> {
        let mut dests = self.dests.borrow_mut();
        if let Some(job) = dests.get_mut(key).and_then(|d| d.queue.pop_front()) {
            return Some((key.clone(), job));
        }
        let configured = self.tls_policy(&key.domain);
        let sts_met = |domain: &str| match self.sts.cached(domain) {
            Some(c) if c.policy.mode == crate::queue::sts::Mode::Enforce => {
                tls == crate::smtp::client::TlsPolicy::Verify && c.policy.allows(host)
            }
            _ => true,
        };
        let group = self.site_domains.borrow();
        let other = group
            .get(&(site.to_owned(), key.pool))?
            .iter()
            .filter(|d| **d != key.domain && self.tls_policy(d) == configured && sts_met(d))
            .filter_map(|d| {
                let k = DestKey {
                    domain: d.clone(),
                    pool: key.pool,
                };
                let lane = dests.get(&k)?.queue.next_lane()?;
                Some((lane, k))
            })
            .min_by_key(|(lane, _)| *lane)?
            .1;
        let job = dests.get_mut(&other)?.queue.pop_front()?;
        Some((other, job))
    }

    /// The destinations of `key`'s site on this core whose jobs the same connections can carry
    /// (same configured STARTTLS policy, and an MTA-STS policy enforced on both or neither),
    /// `key` itself included; `key` alone before its domain was resolved. A domain a connection
    /// could not serve is not counted with it, so it gets connections of its own.
    fn site_keys(&self, key: &DestKey) -> Vec<DestKey> {
        let enforced = |d: &str| self.sts_enforced(d);
        let (tls, sts) = (self.tls_policy(&key.domain), enforced(&key.domain));
        let site = self
            .domain_sites
            .borrow()
            .get(&key.domain)
            .map(|s| s.0.clone());
        let Some(site) = site else {
            return vec![key.clone()];
        };
        self.site_domains
            .borrow()
            .get(&(site, key.pool))
            .map(|domains| {
                domains
                    .iter()
                    .filter(|d| {
                        **d == key.domain || (self.tls_policy(d) == tls && enforced(d) == sts)
                    })
                    .map(|d| DestKey {
                        domain: d.clone(),
                        pool: key.pool,
                    })
                    .collect::<Vec<_>>()
            })
            .map(|mut keys| {
                // The domain was learned under another pool only: it is still one of its own
                // site's destinations (left out, its connections would go uncounted and
                // `start_connections` would start them without end).
                if !keys.contains(key) {
                    keys.push(key.clone());
                }
                keys
            })
            .unwrap_or_else(|| vec![key.clone()])
    }

    /// Connections open and jobs queued on this core for `key`'s site (or `key` alone before
    /// its domain was resolved).
    fn site_load(&self, dests: &HashMap<DestKey, Destination>, key: &DestKey) -> (usize, usize) {
        self.site_keys(key)
            .iter()
            .filter_map(|k| dests.get(k))
            .fold((0, 0), |(a, q), d| (a + d.active, q + d.queue.len()))
    }

    /// Notes which site a destination's domain resolved to (a connection for it is starting),
    /// so that connections to that site carry its jobs too.
    fn learn_site(&self, key: &DestKey, site: &sites::Site) {
        let known = self.domain_sites.borrow_mut().insert(
            key.domain.clone(),
            (site.name().to_owned(), site.max_queue_lifetime_ms()),
        );
        let mut groups = self.site_domains.borrow_mut();
        // Its MX records changed: it leaves its old site, whatever the pool.
        if let Some((old, _)) = known
            && old != site.name()
        {
            for ((name, _), members) in groups.iter_mut() {
                if *name == old {
                    members.retain(|d| *d != key.domain);
                }
            }
        }
        let members = groups
            .entry((site.name().to_owned(), key.pool))
            .or_default();
        if !members.contains(&key.domain) {
            members.push(key.domain.clone());
        }
    }

    /// Fails recipients of `id` whose own deadline passed, without an attempt: final, with a
    /// failure DSN carrying their last error.
    fn expire(&self, id: QueueId, rcpts: &[u32]) {
        let results: Vec<(u32, AttemptResult)> = {
            let shard = self.shard.borrow();
            let Some(st) = shard.state(id) else {
                return;
            };
            rcpts
                .iter()
                .map(|&r| {
                    let last = st
                        .recipients
                        .get(r as usize)
                        .and_then(|rs| rs.last_status)
                        .and_then(|at| shard.status_record(at))
                        .map(|s| {
                            (
                                s.reply.as_str().to_owned(),
                                Category::from_name(s.category.as_str())
                                    .unwrap_or(Category::Temporary),
                            )
                        });
                    (r, AttemptResult::Expired { last })
                })
                .collect()
        };
        self.record(id, &results);
    }

    /// Fails a job's recipients now if the message's own deadline passed while it waited in a
    /// ready queue (a paused site, say); returns whether it did.
    pub fn expire_if_due(&self, job: &Job, deadline_ms: u64) -> bool {
        if deadline_ms == 0 || unix_ms(self.clock.now()) < deadline_ms {
            return false;
        }
        self.release(job.id, &job.rcpts);
        self.expire(job.id, &job.rcpts);
        true
    }

    /// The STARTTLS policy for a destination.
    pub fn tls_policy(&self, domain: &str) -> crate::smtp::client::TlsPolicy {
        self.route_tls
            .borrow()
            .iter()
            .find(|(d, _)| d == domain)
            .map(|(_, p)| *p)
            .unwrap_or(self.config.tls)
    }

    /// Takes a connection slot on an egress path to `site` for a connection to `key`: from the
    /// pool's next source, or the first of its other sources whose path is neither suspended
    /// nor full (a paused path has no free slot); with no pool, the path without a source.
    /// When none has a slot, parks the destination until a slot frees on one of them, on any
    /// core, and returns `None`.
    pub fn path_slot(
        &self,
        key: &DestKey,
        site: &str,
    ) -> Option<(Option<Arc<egress::Source>>, sites::SiteSlot)> {
        let sources: Vec<Option<Arc<egress::Source>>> = match key.pool {
            None => vec![None],
            Some(pool) => self
                .egress
                .candidates(pool)
                .into_iter()
                .map(|s| Some(Arc::clone(s)))
                .collect(),
        };
        let mut paths = Vec::with_capacity(sources.len());
        for source in sources {
            let path = self
                .sites
                .get(site, source.as_ref().map(|s| s.name.as_str()), &key.domain);
            if paths.is_empty() {
                self.learn_site(key, &path);
            }
            if !self.path_suspended(&path)
                && let Some(slot) = path.acquire(&self.kick, self.clock.monotonic())
            {
                return Some((source, slot));
            }
            paths.push(path);
        }
        self.parked.borrow_mut().insert(key.clone(), paths);
        None
    }

    /// The MTA-STS policy in force for `domain` now, if any.
    pub async fn sts_policy(&self, domain: &str) -> Option<sts::Cached> {
        let router = self.router();
        self.sts
            .policy(&router, domain, unix_ms(self.clock.now()))
            .await
    }

    /// The egress sources and pools.
    pub fn egress(&self) -> &egress::Egress {
        &self.egress
    }

    /// Whether an operator suspended this egress path (its site or its source).
    pub fn path_suspended(&self, site: &sites::Site) -> bool {
        let now = unix_ms(self.clock.now());
        self.suspensions.holds_path(now, site.name(), site.source())
    }

    /// Holds a job's recipients if a domain or user suspension covers them now (a suspension
    /// that came after the job was queued); returns whether it did.
    pub fn hold_if_suspended(&self, key: &DestKey, job: &Job, user: Option<&str>) -> bool {
        let now = unix_ms(self.clock.now());
        if !self.suspensions.holds_message(now, &key.domain, user) {
            return false;
        }
        self.release(job.id, &job.rcpts);
        self.held
            .borrow_mut()
            .extend(job.rcpts.iter().map(|&rcpt| Due {
                id: job.id,
                rcpt,
                scheduled_for: None,
            }));
        true
    }

    /// The throttling signal in a receiver's reply, if its bounce category carries one.
    pub fn signal_of(&self, reply: &smtp::Reply) -> Option<Signal> {
        if reply.code < 400 {
            return None;
        }
        let text = reply.text_line();
        let class = self.classifier.borrow().classify(&Failure::Reply {
            code: reply.code,
            enhanced: reply.enhanced.map(|e| (e.class, e.subject, e.detail)),
            text: &text,
        });
        Signal::of(class.category)
    }

    /// A receiver's reply throttles its site: no connection to it during the pause, on any
    /// core, then a ramp back (`queue::throttle`). Logged, counted and written to the event log.
    pub fn throttle(&self, site: &sites::Site, signal: Signal, reply: &smtp::Reply) {
        let pause = site.signal(signal, self.clock.monotonic());
        let now = unix_ms(self.clock.now());
        let until = now + pause.as_millis() as u64;
        self.metrics.throttled(signal);
        tracing::warn!(
            site = site.name(),
            signal = signal.name(),
            pause_ms = pause.as_millis() as u64,
            reply = %reply.one_line(),
            "site throttled"
        );
        self.events.site(events::SiteEvent {
            at_ms: now,
            site: site.name().to_owned(),
            source: site.source().map(str::to_owned),
            signal: signal.name(),
            paused_until_ms: until,
            reply: reply.one_line(),
        });
    }

    /// Puts a job back at the head of its lane in its destination's queue.
    pub fn requeue_front(&self, key: &DestKey, job: Job) {
        self.dests
            .borrow_mut()
            .entry(key.clone())
            .or_default()
            .queue
            .push_front(job.priority, job);
    }

    /// Takes every queued job of a destination (when the destination is unreachable).
    pub fn drain_jobs(&self, key: &DestKey) -> Vec<Job> {
        self.dests
            .borrow_mut()
            .get_mut(key)
            .map(|d| d.queue.drain())
            .unwrap_or_default()
    }

    /// Records one attempt's result for some recipients of a message: asks the pure decision
    /// what becomes of each recipient, then applies it (status record, retry entry, metrics,
    /// event log, DSNs).
    pub fn record(&self, id: QueueId, results: &[(u32, AttemptResult)]) {
        self.record_with(id, results, None);
    }

    /// [`Delivery::record`] for attempts made over a connection protected as `tls` says
    /// (recorded in the events and counted in `ringmta_outbound_tls_total`).
    pub fn record_with(
        &self,
        id: QueueId,
        results: &[(u32, AttemptResult)],
        tls: Option<&events::TlsUse>,
    ) {
        let now_time = self.clock.now();
        let now = unix_ms(now_time);
        let overridden: Vec<(u32, AttemptResult)>;
        let mut results = results;
        {
            let mut in_flight = self.in_flight.borrow_mut();
            for (rcpt, _) in results {
                in_flight.remove(&(id, *rcpt));
            }
            let mut cancelled = self.cancelled.borrow_mut();
            if !cancelled.is_empty() {
                // An operator's bounce or delete stands unless the attempt delivered.
                overridden = results
                    .iter()
                    .map(|(r, result)| match cancelled.remove(&(id, *r)) {
                        Some(how) if !matches!(result, AttemptResult::Delivered { .. }) => {
                            (*r, how.result())
                        }
                        _ => (*r, result.clone()),
                    })
                    .collect();
                results = &overridden;
            }
        }
        let mut notices: [Vec<DsnRecipientFacts>; 3] = Default::default();
        {
            let mut shard = self.shard.borrow_mut();
            let Some(st) = shard.state(id).cloned() else {
                return;
            };
            let Some(view) = shard.message(id) else {
                return;
            };
            let message = MessageFacts {
                received_ms: st.received_at_ms,
                may_notify: !view.meta.is_dsn && !view.meta.reverse_path.is_empty(),
                deadline_ms: view.options.expires_at_ms,
            };
            let recipients: Vec<(String, smtp::Notify)> = results
                .iter()
                .map(|(rcpt, _)| {
                    view.meta.recipients.get(*rcpt as usize).map_or_else(
                        || (String::new(), smtp::Notify::default()),
                        |m| (m.address.as_str().to_owned(), m.notify()),
                    )
                })
                .collect();
            let classifier = std::sync::Arc::clone(&self.classifier.borrow());
            for ((rcpt, result), (address, notify)) in results.iter().zip(recipients) {
                let Some(rs) = st.recipients.get(*rcpt as usize) else {
                    continue;
                };
                if rs.is_final() {
                    continue;
                }
                let facts = RecipientFacts {
                    attempts: rs.attempts,
                    delay_notified: rs.delay_notified,
                    notify,
                };
                // The destination's shaping rule may give it a shorter life (a delivery needs
                // no deadline: no lookup on that path).
                let rule_deadline = if matches!(result, AttemptResult::Delivered { .. }) {
                    None
                } else {
                    self.domain_sites
                        .borrow()
                        .get(&domain_of(&address))
                        .and_then(|(_, life)| *life)
                        .map(|life| st.received_at_ms.saturating_add(life))
                };
                let message = match (rule_deadline, message.deadline_ms) {
                    (Some(rule), 0) => MessageFacts {
                        deadline_ms: rule,
                        ..message
                    },
                    (Some(rule), own) => MessageFacts {
                        deadline_ms: own.min(rule),
                        ..message
                    },
                    (None, _) => message,
                };
                let d = decide(
                    message,
                    facts,
                    result,
                    &classifier,
                    &self.config.policy,
                    now,
                );
                let replied = matches!(
                    result,
                    AttemptResult::Delivered { .. } | AttemptResult::Refused { .. }
                );
                let tls = tls.filter(|_| replied);
                if let Some(t) = tls {
                    self.metrics.outbound_tls(t.index());
                }
                self.apply(&mut shard, id, (*rcpt, &address), &d, now, tls);
                if let Some(notice) = d.dsn {
                    notices[notice.kind as usize].push(DsnRecipientFacts {
                        rcpt: *rcpt,
                        address,
                        reply: d.text,
                        remote: d.remote,
                        status: notice.status,
                    });
                }
            }
        }
        for (kind, list) in [DsnKind::Failure, DsnKind::Delay, DsnKind::Success]
            .into_iter()
            .zip(notices)
        {
            if !list.is_empty() {
                self.send_dsn(id, kind, &list, now_time);
            }
        }
    }

    /// Applies one recipient's decision: its status record, its next wheel entry, the metrics,
    /// the log line and the event.
    fn apply(
        &self,
        shard: &mut Shard,
        id: QueueId,
        (rcpt, address): (u32, &str),
        d: &Decision,
        now: u64,
        tls: Option<&events::TlsUse>,
    ) {
        let (kind, next, status) = match d.fate {
            Fate::Delivered => (StatusKind::Delivered, 0, RecipientStatus::Delivered),
            Fate::Deferred { next_attempt_ms } => (
                StatusKind::Deferred,
                next_attempt_ms,
                RecipientStatus::Deferred,
            ),
            Fate::Failed { .. } => (StatusKind::Failed, 0, RecipientStatus::Bounced),
            Fate::Deleted => (StatusKind::Deleted, 0, RecipientStatus::Deleted),
        };
        let rec = StatusRecord {
            id: id.0,
            rcpt,
            kind: kind as u8,
            attempt: d.attempt,
            at_ms: now,
            next_attempt_ms: next,
            reply: d.text.clone(),
            remote: d.remote.clone(),
            category: d.category.map(Category::name).unwrap_or("").to_owned(),
        };
        let outcome = match d.fate {
            Fate::Delivered => Some(crate::metrics::Outcome::Delivered),
            Fate::Deferred { .. } => Some(crate::metrics::Outcome::Deferred),
            Fate::Failed { .. } => Some(crate::metrics::Outcome::Bounced),
            Fate::Deleted => None,
        };
        if let Some(o) = outcome {
            self.metrics.outcome(o, d.category);
        }
        match shard.append_status(&rec) {
            Ok(_) if kind.is_final() => self.flush.notify_one(),
            Ok(_) => {}
            Err(e) => tracing::error!(%id, error = %e, "cannot record delivery status"),
        }
        // A receiver's hard bounce (the address does not exist, or is disabled) suppresses the
        // address: later mail to it is refused at RCPT instead of hurting the sender again.
        if d.fate == (Fate::Failed { expired: false })
            && !d.remote.is_empty()
            && matches!(
                d.category,
                Some(Category::UserUnknown | Category::MailboxDisabled)
            )
        {
            let user = shard
                .message(id)
                .and_then(|v| v.meta.auth_user.as_ref().map(|u| u.as_str().to_owned()));
            let reason = d.category.map(Category::name).unwrap_or("");
            match self.suppressions.add(
                address,
                user.as_deref(),
                reason,
                &d.text,
                (now, None),
                false,
            ) {
                Ok(_) => tracing::info!(%id, recipient = %address, reason, "address suppressed"),
                Err(e) => tracing::error!(%id, error = %e, "cannot write the suppression list"),
            }
        }
        tracing::info!(
            %id,
            recipient = %address,
            outcome = status.name(),
            remote = %d.remote,
            reply = %d.text,
            category = d.category.map(Category::name).unwrap_or(""),
            attempt = d.attempt,
            "delivery attempt"
        );
        let (sender, user) = shard
            .message(id)
            .map(|v| {
                (
                    v.meta.reverse_path.as_str().to_owned(),
                    v.meta.auth_user.as_ref().map(|u| u.as_str().to_owned()),
                )
            })
            .unwrap_or_default();
        let event = LogEvent {
            at_ms: now,
            id,
            rcpt,
            sender,
            user,
            recipient: address.to_owned(),
            outcome: status.name(),
            remote: d.remote.clone(),
            reply: d.text.clone(),
            category: d.category.map(Category::name),
            rule: d.rule,
            tls: tls.cloned(),
            attempt: d.attempt,
            next_attempt_ms: (next > 0).then_some(next),
        };
        // The first deferral past `delivery_notice_after` that sends a delay notice is also a
        // `delayed` event, for applications that follow webhooks rather than DSNs.
        let delayed = d
            .dsn
            .as_ref()
            .is_some_and(|n| n.kind == DsnKind::Delay)
            .then(|| LogEvent {
                outcome: "delayed",
                ..event.clone()
            });
        self.events.log(event);
        if let Some(delayed) = delayed {
            self.events.log(delayed);
        }
        if kind == StatusKind::Deferred {
            // What the shard holds (the record may have failed to append: then the entry must
            // still match the state to stay live).
            let held = shard
                .state(id)
                .and_then(|s| s.recipients.get(rcpt as usize))
                .map_or(next, |r| r.next_attempt_ms);
            self.schedule(id, rcpt, next.saturating_sub(now), held);
        }
    }

    /// Builds a DSN about `id` and queues it (null reverse-path, marked as a DSN so that no DSN
    /// is ever sent about it).
    fn send_dsn(&self, id: QueueId, kind: DsnKind, facts: &[DsnRecipientFacts], now: SystemTime) {
        let now_ms = unix_ms(now);
        let (bytes, to) = {
            let shard = self.shard.borrow();
            let Some(view) = shard.message(id) else {
                return;
            };
            let meta = view.meta;
            let to = meta.reverse_path.as_str().to_owned();
            let recipients: Vec<DsnRecipient> = facts
                .iter()
                .map(|f| {
                    let rm = meta.recipients.get(f.rcpt as usize);
                    DsnRecipient {
                        original_recipient: rm
                            .and_then(|m| m.orcpt.as_ref().map(|o| o.as_str().to_owned())),
                        final_recipient: f.address.clone(),
                        action: match kind {
                            DsnKind::Failure => DsnAction::Failed,
                            DsnKind::Delay => DsnAction::Delayed,
                            // ringmta always hands mail on to another system.
                            DsnKind::Success => DsnAction::Relayed,
                        },
                        status: (f.status.class, f.status.subject, f.status.detail),
                        remote_mta: (!f.remote.is_empty()).then(|| format!("dns;{}", f.remote)),
                        diagnostic: (!f.reply.is_empty()).then(|| format!("smtp; {}", f.reply)),
                        last_attempt: now,
                        will_retry_until: (kind == DsnKind::Delay).then(|| {
                            std::time::UNIX_EPOCH
                                + Duration::from_millis(meta.received_at_ms.to_native())
                                + self.config.policy.max_lifetime
                        }),
                    }
                })
                .collect();
            let n = self.dsn_counter.get() + 1;
            self.dsn_counter.set(n);
            let message_id = format!("<dsn.{id}.{n}.{now_ms}@{}>", self.config.hostname);
            let boundary = format!("{id}.{n}.{now_ms}/{}", self.config.hostname);
            let from = format!("MAILER-DAEMON@{}", self.config.hostname);
            let envid = meta.envid.as_ref().map(|e| e.as_str().to_owned());
            // RFC 3461 §4.3: the full message only in a failure DSN, and only unless RET=HDRS.
            let return_content = match (kind, meta.ret()) {
                (DsnKind::Failure, None | Some(Ret::Full)) => ReturnContent::Full,
                _ => ReturnContent::Headers,
            };
            let input = DsnInput {
                kind,
                reporting_mta: &self.config.hostname,
                from: &from,
                to: &to,
                envid: envid.as_deref(),
                arrival_date: std::time::UNIX_EPOCH
                    + Duration::from_millis(meta.received_at_ms.to_native()),
                date: now,
                message_id: &message_id,
                boundary: &boundary,
                recipients: &recipients,
                original: view.body,
                return_content,
                max_returned_body: 256 * 1024,
            };
            (dsn::render(&input), to)
        };
        let meta = MessageMeta {
            id: 0,
            received_at_ms: now_ms,
            reverse_path: String::new(),
            ret: 0,
            envid: None,
            body_type: 1,
            // RFC 6531 §3.4: a non-ASCII recipient needs SMTPUTF8 on the way out, or a
            // conforming next hop refuses it (and there is no DSN about a lost DSN).
            smtputf8: !to.is_ascii(),
            recipients: vec![RecipientMeta {
                address: to,
                notify: 1,
                orcpt: None,
            }],
            auth_user: None,
            client_addr: "local".into(),
            helo: self.config.hostname.clone(),
            tls: None,
            is_dsn: true,
        };
        let parts: [&[u8]; 1] = [&bytes];
        let appended = self.shard.borrow_mut().append_message(
            &mut NewMessage {
                meta,
                options: Default::default(),
                body: &parts,
            },
            now_ms,
        );
        match appended {
            Ok((dsn_id, ticket)) => {
                let mut last = ticket.0;
                tracing::info!(%id, %dsn_id, kind = ?kind, "dsn queued");
                self.metrics
                    .dsns
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                for f in facts {
                    let rec = StatusRecord {
                        id: id.0,
                        rcpt: f.rcpt,
                        kind: if kind == DsnKind::Delay {
                            StatusKind::DelayNotified
                        } else {
                            StatusKind::DsnSent
                        } as u8,
                        attempt: 0,
                        at_ms: now_ms,
                        next_attempt_ms: 0,
                        reply: String::new(),
                        remote: String::new(),
                        category: String::new(),
                    };
                    match self.shard.borrow_mut().append_status(&rec) {
                        Ok(t) => last = last.max(t.0),
                        Err(e) => tracing::error!(%id, error = %e, "cannot record the dsn flag"),
                    }
                }
                // Sent only once durable together with its flags (the last ticket: a segment
                // switch between them would make the DSN durable before the flags).
                self.unsynced.borrow_mut().push((dsn_id, last));
                self.flush.notify_one();
                self.kick.notify_one();
            }
            Err(e) => tracing::error!(%id, error = %e, "cannot queue dsn"),
        }
    }

    /// The per-core settings.
    pub fn config(&self) -> &DeliveryConfig {
        &self.config
    }

    /// The router in force (a clone: a reload may replace it while a lookup runs).
    pub fn router(&self) -> Rc<Router> {
        Rc::clone(&self.router.borrow())
    }

    /// Applies a SIGHUP reload: new routes, per-domain TLS policy and bounce rules.
    pub fn reload(
        &self,
        router: Router,
        classifier: std::sync::Arc<Classifier>,
        route_tls: Vec<(String, crate::smtp::client::TlsPolicy)>,
    ) {
        *self.router.borrow_mut() = Rc::new(router);
        *self.classifier.borrow_mut() = classifier;
        *self.route_tls.borrow_mut() = route_tls;
    }

    /// The outbound TLS configuration for a STARTTLS policy: one that checks the certificate
    /// for `verify`, one that accepts any (encryption only) otherwise.
    pub fn tls(&self, policy: crate::smtp::client::TlsPolicy) -> &Arc<rustls::ClientConfig> {
        match policy {
            crate::smtp::client::TlsPolicy::Verify => &self.verify_tls,
            _ => &self.tls,
        }
    }

    /// The core's spool shard.
    pub fn shard(&self) -> &RefCell<Shard> {
        &self.shard
    }

    /// The core's metrics.
    pub fn metrics(&self) -> &CoreMetrics {
        &self.metrics
    }

    /// The time.
    pub fn clock(&self) -> &dyn Clock {
        &*self.clock
    }

    /// Acts on what reports about message `id` say (DSNs and complaints that came back to its
    /// VERP address, `crate::feedback`). Only a message the spool still holds, and only notices
    /// about one of its recipients, count: anyone can write to a VERP address, and must not be
    /// able to suppress addresses the message was not sent to. Per notice: a `bounced`,
    /// `delayed` or `complained` event; a suppression entry (synced once, at the end) for a
    /// hard bounce (`user_unknown`, `mailbox_disabled`) or an `abuse`, `fraud` or `virus`
    /// complaint; and, for a failure or a delay, the DSN the sender's NOTIFY asks for (the next
    /// hop's own DSN came to ringmta, not to the sender). Returns how many notices counted.
    pub fn take_feedback(&self, id: QueueId, notices: &[crate::feedback::Notice]) -> usize {
        use crate::feedback::NoticeKind;
        let now_time = self.clock.now();
        let now = unix_ms(now_time);
        let classifier = Arc::clone(&self.classifier.borrow());
        let mut dsns: [Vec<DsnRecipientFacts>; 2] = Default::default();
        let mut to_suppress = Vec::new();
        let mut taken = 0;
        {
            let shard = self.shard.borrow();
            let Some(view) = shard.message(id) else {
                tracing::info!(%id, "report about a message the spool does not hold: ignored");
                return 0;
            };
            let meta = &view.meta;
            let sender = meta.reverse_path.as_str().to_owned();
            let user = meta.auth_user.as_ref().map(|u| u.as_str().to_owned());
            let may_notify = !meta.is_dsn && !meta.reverse_path.is_empty();
            for notice in notices {
                let matched = meta.recipients.iter().enumerate().find(|(_, r)| {
                    notice
                        .recipients
                        .iter()
                        .any(|n| r.address.as_str().eq_ignore_ascii_case(n))
                });
                let Some((rcpt, recipient)) = matched else {
                    tracing::info!(%id, recipients = ?notice.recipients, "report about an address the message was not sent to: ignored");
                    continue;
                };
                taken += 1;
                let address = recipient.address.as_str().to_owned();
                let verdict = (notice.kind != NoticeKind::Complaint).then(|| {
                    let has_code = notice
                        .reply
                        .as_bytes()
                        .get(..3)
                        .is_some_and(|b| b.iter().all(u8::is_ascii_digit));
                    match (has_code, notice.status) {
                        (true, _) | (false, None) => classifier.verdict_line(&notice.reply),
                        (false, Some(status)) => classifier.verdict(&Failure::Reply {
                            code: if status.0 == 4 { 450 } else { 550 },
                            enhanced: Some(status),
                            text: &notice.reply,
                        }),
                    }
                });
                let category = verdict.map(|v| v.class.category);
                let notify = recipient.notify();
                let (outcome, suppress, dsn) = match notice.kind {
                    NoticeKind::Failed => (
                        "bounced",
                        matches!(
                            category,
                            Some(Category::UserUnknown | Category::MailboxDisabled)
                        ),
                        (may_notify && notify.reports_failure()).then_some(DsnKind::Failure),
                    ),
                    NoticeKind::Delayed => (
                        "delayed",
                        false,
                        (may_notify && notify.reports_delay()).then_some(DsnKind::Delay),
                    ),
                    NoticeKind::Complaint => ("complained", notice.abuse, None),
                };
                if suppress {
                    let reason = category.map_or("complaint", Category::name);
                    to_suppress.push((address.clone(), reason, notice.reply.clone()));
                }
                if let Some(kind) = dsn {
                    let status = notice.status.map_or_else(
                        || {
                            let class = if kind == DsnKind::Failure { 5 } else { 4 };
                            EnhancedCode::new(class, 0, 0)
                        },
                        |(c, s, d)| EnhancedCode::new(c, s, d),
                    );
                    dsns[kind as usize].push(DsnRecipientFacts {
                        rcpt: rcpt as u32,
                        address: address.clone(),
                        reply: notice.reply.clone(),
                        remote: notice.reporting_mta.clone(),
                        status,
                    });
                }
                tracing::info!(%id, recipient = %address, outcome, reply = %notice.reply, "report");
                self.events.log(LogEvent {
                    at_ms: now,
                    id,
                    rcpt: rcpt as u32,
                    sender: sender.clone(),
                    user: user.clone(),
                    recipient: address,
                    outcome,
                    remote: notice.reporting_mta.clone(),
                    reply: notice.reply.clone(),
                    category: category.map(Category::name),
                    rule: verdict.map(|v| v.rule),
                    tls: None,
                    attempt: 0,
                    next_attempt_ms: None,
                });
            }
            // One sync for the whole report (the last entry's), before the 250.
            let last = to_suppress.len();
            for (i, (address, reason, reply)) in to_suppress.iter().enumerate() {
                match self.suppressions.add(
                    address,
                    user.as_deref(),
                    reason,
                    reply,
                    (now, None),
                    i + 1 == last,
                ) {
                    Ok(_) => {
                        tracing::info!(%id, recipient = %address, reason, "address suppressed by a report")
                    }
                    Err(e) => tracing::error!(%id, error = %e, "cannot write the suppression list"),
                }
            }
        }
        for (kind, list) in [DsnKind::Failure, DsnKind::Delay].into_iter().zip(dsns) {
            if !list.is_empty() {
                self.send_dsn(id, kind, &list, now_time);
            }
        }
        taken
    }

    /// Writes again the event of every recipient whose latest status record is from `since_ms`
    /// on. At start, `since_ms` is a little before the last line of the event log: an event
    /// queued for the log writer when the process died is lost with the process, while its
    /// status record, synced with the spool, is not. Event ids are the same as the first time,
    /// so a webhook receiver that deduplicates sees each event once. Returns how many.
    pub fn replay_events(&self, since_ms: u64) -> usize {
        let shard = self.shard.borrow();
        let mut n = 0;
        for id in shard.messages() {
            let (Some(state), Some(view)) = (shard.state(id), shard.message(id)) else {
                continue;
            };
            for (rcpt, r) in state.recipients.iter().enumerate() {
                let Some(rec) = r.last_status.and_then(|at| shard.status_record(at)) else {
                    continue;
                };
                let at_ms = rec.at_ms.to_native();
                if at_ms < since_ms {
                    continue;
                }
                let Some(address) = view.meta.recipients.get(rcpt) else {
                    continue;
                };
                let next = rec.next_attempt_ms.to_native();
                self.events.log(LogEvent {
                    at_ms,
                    id,
                    rcpt: rcpt as u32,
                    sender: view.meta.reverse_path.as_str().to_owned(),
                    user: view.meta.auth_user.as_ref().map(|u| u.as_str().to_owned()),
                    recipient: address.address.as_str().to_owned(),
                    outcome: r.status().name(),
                    remote: rec.remote.as_str().to_owned(),
                    reply: rec.reply.as_str().to_owned(),
                    category: Category::from_name(rec.category.as_str()).map(Category::name),
                    rule: None,
                    tls: None,
                    attempt: rec.attempt.to_native(),
                    next_attempt_ms: (next > 0).then_some(next),
                });
                n += 1;
            }
        }
        n
    }

    /// The TLS-RPT session counts, when reporting is on.
    pub fn tls_rpt(&self) -> Option<&tlsrpt::TlsRpt> {
        self.tls_rpt.as_deref()
    }

    /// The VERP bounce domain, when bounces come back to ringmta.
    pub fn bounce_domain(&self) -> Option<&str> {
        self.config.bounce_domain.as_deref()
    }
}

struct DsnRecipientFacts {
    rcpt: u32,
    address: String,
    reply: String,
    remote: String,
    status: EnhancedCode,
}

/// Lower-case domain of an address (the part after the last `@`).
pub fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d)
        .unwrap_or(address)
        .trim_end_matches('.')
        .to_ascii_lowercase()
}
