//! The application on one worker thread: a tokio-uring runtime with its own SO_REUSEPORT
//! listeners, its own spool shard, group-commit task, housekeeping, delivery and control
//! requests. Nothing here is shared with other workers except the immutable `Shared` and the
//! auth pool handle. `net` drives the sockets and reaches this layer only through
//! [`crate::net::Application`], which [`Core`] implements.
//!
//! Group commit: sessions append to the shard's mapping and wait for the durable sequence number
//! to pass their ticket; one task runs one fdatasync (through io_uring) at a time for everything
//! appended since the previous one, so N concurrent messages cost one flush, not N.

pub mod control;
pub mod shared;
mod tls_reports;

use std::cell::{Cell, RefCell};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, watch};

use crate::auth::AuthService;
use crate::config::Config;
use crate::delivery::route::Router;
use crate::delivery::{CoreHandles, Delivery, DeliveryConfig};
use crate::ids::QueueId;
use crate::message::prepended_headers;
use crate::net::{Application, SessionSetup};
use crate::smtp::PortRole;
use crate::smtp::{
    AuthOutcome, CommitError, ConnectionRefused, PeerInfo, SessionConfig, Transaction,
};
use crate::spool::Durability;
use crate::spool::{MessageOptions, NewMessage, Shard, SpoolError};
use crate::time::{SystemClock, unix_ms};

/// State shared read-only by every worker.
pub struct Shared {
    /// The resolved configuration.
    pub config: Arc<Config>,
    /// Every worker's control channel, by worker (= shard): a worker that receives a report
    /// about a message hands it to the worker that owns the message. Set once at start.
    pub peers: std::sync::OnceLock<
        Vec<tokio::sync::mpsc::UnboundedSender<crate::control::ControlRequest>>,
    >,
    /// rustls server configuration.
    pub tls: Arc<rustls::ServerConfig>,
    /// Outbound TLS configuration of the `verify` policy (system roots and
    /// `delivery.tls_ca_file`).
    pub verify_tls: Arc<rustls::ClientConfig>,
    /// The suppression list (refused at RCPT; added to by hard bounces).
    pub suppressions: Arc<crate::suppress::Suppressions>,
    /// MTA-STS policies of recipient domains, cached in `spool_dir/mta-sts/`.
    pub sts: Arc<crate::delivery::sts::Sts>,
    /// Credential verifier pool.
    pub auth: AuthService,
    /// Session settings per role: smtp, submission, submissions.
    pub sessions: [Arc<SessionConfig>; 3],
    /// Bounce classifier (built-in plus operator rules).
    pub classifier: Arc<crate::bounce::classify::Classifier>,
    /// Delivery event log.
    pub events: crate::delivery::events::EventLog,
    /// TLS-RPT session counts, when `delivery.tls_rpt` is on.
    pub tls_rpt: Option<Arc<crate::delivery::tlsrpt::TlsRpt>>,
    /// At start, a little before the last line the event log had: the events of status
    /// records from then on are written again (`Delivery::replay_events`). `None` for a new or
    /// empty log.
    pub events_replay_since: Option<u64>,
    /// Validation, scanners and DKIM signing.
    pub content: Arc<crate::content::ContentChecks>,
    /// One metrics block per worker, indexed by worker.
    pub metrics: Vec<Arc<crate::metrics::CoreMetrics>>,
    /// New connections per untrusted client address, over all workers.
    pub connection_rate: crate::ratelimit::RateLimit,
    /// MAIL commands per untrusted client address (authenticated or not), over all workers.
    pub message_rate: crate::ratelimit::RateLimit,
    /// Destination sites and their host-wide delivery limits, over all workers.
    pub sites: Arc<crate::delivery::sites::Sites>,
    /// Egress sources and pools, over all workers.
    pub egress: Arc<crate::delivery::egress::Egress>,
    /// The operator's delivery suspensions, over all workers and the HTTP API.
    pub suspensions: Arc<crate::delivery::suspend::Suspensions>,
    /// The users with a NOTIFY default (`users[].notify`).
    pub user_notify: std::collections::HashMap<String, crate::smtp::Notify>,
    /// The users whose mail has a shorter queue lifetime (`users[].max_queue_lifetime`).
    pub user_lifetimes: std::collections::HashMap<String, Duration>,
}

impl Shared {
    /// The session settings for a listener role.
    pub fn session_config(&self, role: PortRole) -> &Arc<SessionConfig> {
        match role {
            PortRole::Relay => &self.sessions[0],
            PortRole::Submission => &self.sessions[1],
            PortRole::Submissions => &self.sessions[2],
        }
    }
}

/// Per-core state, owned by the worker thread (`Rc`, never sent across threads).
pub struct Core {
    /// Worker index, also the spool shard number.
    pub index: u8,
    /// Shared read-only state.
    pub shared: Arc<Shared>,
    /// This core's spool shard (delivery holds it too). Borrows never span an `.await`.
    pub shard: Rc<RefCell<Shard>>,
    /// (durable sequence, failed-through sequence) published by the commit task.
    durable: watch::Sender<(u64, u64)>,
    /// Wakes the commit task after an append (delivery holds it too, for final outcomes).
    kick: Rc<Notify>,
    /// Open connections on this core.
    pub connections: Cell<usize>,
    /// Woken when the last connection of the core closes (the shutdown drain waits on it).
    idle: Notify,
    /// Open connections per client IP on this core (entries removed at zero).
    pub per_ip: RefCell<std::collections::HashMap<std::net::IpAddr, usize>>,
    /// Becomes true when the server shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// Counter for generated Message-IDs.
    unique: Cell<u64>,
    /// This core's delivery, set once at start (an `Rc` cycle that lives as long as the thread).
    pub delivery: RefCell<Option<Rc<Delivery>>>,
    /// This core's metrics (written only by this core).
    pub metrics: Arc<crate::metrics::CoreMetrics>,
    /// Content checks in force; replaced by a SIGHUP reload (sessions keep the one they started
    /// a commit with).
    pub content: RefCell<Arc<crate::content::ContentChecks>>,
}

impl Core {
    /// A core around its recovered shard. Nothing runs yet: [`run`] starts its tasks.
    pub fn new(
        index: u8,
        shared: Arc<Shared>,
        shard: Shard,
        shutdown: watch::Receiver<bool>,
    ) -> Rc<Core> {
        let metrics = Arc::clone(&shared.metrics[usize::from(index)]);
        let content = RefCell::new(Arc::clone(&shared.content));
        let (durable, _) = watch::channel((shard.durable_seq(), 0));
        Rc::new(Core {
            index,
            shared,
            shard: Rc::new(RefCell::new(shard)),
            durable,
            kick: Rc::new(Notify::new()),
            connections: Cell::new(0),
            idle: Notify::new(),
            per_ip: RefCell::new(std::collections::HashMap::new()),
            shutdown,
            unique: Cell::new(0),
            delivery: RefCell::new(None),
            metrics,
            content,
        })
    }

    /// Appends an accepted transaction to the spool and waits until it is durable.
    pub async fn commit(&self, t: Transaction, now: SystemTime) -> Result<QueueId, CommitError> {
        use crate::metrics::RejectReason;
        if t.feedback {
            return self.take_feedback(&t).await;
        }
        let started = std::time::Instant::now();
        let result = self.commit_inner(t, now).await;
        match &result {
            Ok(_) => {
                self.metrics
                    .messages_accepted
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.metrics.accept_latency.observe(started.elapsed());
            }
            Err(CommitError::SpoolFull) => self.metrics.reject(RejectReason::SpoolFull),
            Err(CommitError::Rejected(_)) => self.metrics.reject(RejectReason::Content),
            Err(_) => self.metrics.reject(RejectReason::SpoolIo),
        }
        result
    }

    /// A message sent to VERP addresses: read as a DSN or an ARF report and handed to the
    /// workers that own the messages it is about, which record its events and suppressions
    /// (synced) before this returns. Nothing is spooled or relayed. A message that is not a
    /// report is accepted and dropped (an auto-reply has nothing to act on), with a log line.
    async fn take_feedback(&self, t: &Transaction) -> Result<QueueId, CommitError> {
        use crate::feedback::{Report, parse};
        let mut ids: Vec<QueueId> = t
            .recipients
            .iter()
            .filter_map(|r| crate::ids::parse_verp(&r.forward_path.local))
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let Some(&first) = ids.first() else {
            return Err(CommitError::SpoolIo);
        };
        let notices = match parse(&t.body) {
            Report::Notices(notices) => notices,
            Report::NotAReport => {
                tracing::info!(id = %first, peer = %t.peer, "mail to a bounce address that is not a DSN or ARF report: dropped");
                return Ok(first);
            }
        };
        for id in ids {
            let Some(peer) = self
                .shared
                .peers
                .get()
                .and_then(|p| p.get(usize::from(id.shard())))
            else {
                tracing::info!(%id, "report about a message of no shard here: dropped");
                continue;
            };
            let (reply, answer) = tokio::sync::oneshot::channel();
            let request = crate::control::ControlRequest::Feedback {
                id,
                notices: notices.clone(),
                reply,
            };
            if peer.send(request).is_err() {
                return Err(CommitError::SpoolIo);
            }
            let taken = answer.await.map_err(|_| CommitError::SpoolIo)?;
            tracing::info!(%id, notices = notices.len(), taken, "report read");
        }
        Ok(first)
    }

    async fn commit_inner(&self, t: Transaction, now: SystemTime) -> Result<QueueId, CommitError> {
        let content = Arc::clone(&self.content.borrow());
        let refused = |r: crate::content::refusal::Refusal| {
            CommitError::Rejected(crate::smtp::Reply::from(&r))
        };
        content.validate(&t).map_err(refused)?;
        let additions = if content.has_scanners() {
            content.scan(&t).await.map_err(refused)?
        } else {
            crate::content::Additions::default()
        };
        let unique = self.unique.get().wrapping_add(1);
        self.unique.set(unique);
        let now_ms = unix_ms(now);
        let prefix = prepended_headers(
            &t,
            &self.shared.config.hostname,
            now,
            (now_ms << 16) ^ (unique << 8) ^ u64::from(self.index),
        );
        let mut t = t;
        // The user's NOTIFY default, for the recipients whose RCPT gave none.
        if let Some(n) = t
            .auth_user
            .as_ref()
            .and_then(|u| self.shared.user_notify.get(u))
        {
            for r in t.recipients.iter_mut().filter(|r| !r.notify.given()) {
                r.notify = *n;
            }
        }
        let meta = crate::message::spool_meta(&t, now_ms);
        // The sender's control headers are ringmta's to read: never stored, never relayed.
        let controls = crate::message::control_headers(&t.body).map_err(|e| {
            CommitError::Rejected(crate::smtp::Reply::with_enhanced(
                554,
                (5, 6, 0),
                e.to_string(),
            ))
        })?;
        let options = self.message_options(&t, &controls, now_ms);
        let mut parts: Vec<&[u8]> = Vec::with_capacity(3 + controls.keep.len());
        parts.extend([&prefix[..], &additions.headers[..]]);
        parts.extend(controls.keep.iter().map(|r| &t.body[r.clone()]));
        let dkim_header = if content.has_dkim() {
            // DKIM signs the message as it will be stored (our added headers included).
            content
                .sign(parts.concat(), now_ms / 1000)
                .await
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        parts.insert(0, &dkim_header);
        let appended = self.shard.borrow_mut().append_message(
            &mut NewMessage {
                meta,
                options,
                body: &parts,
            },
            now_ms,
        );
        let (id, ticket) = match appended {
            Ok(x) => x,
            Err(SpoolError::Full { .. }) => return Err(CommitError::SpoolFull),
            Err(e) => {
                tracing::error!(error = %e, "spool append failed");
                return Err(CommitError::SpoolIo);
            }
        };
        if self.shared.config.spool.durability == Durability::None {
            self.shard.borrow_mut().mark_durable(ticket.0);
            self.hand_to_delivery(id);
            return Ok(id);
        }
        self.kick.notify_one();
        let mut rx = self.durable.subscribe();
        let seen = rx
            .wait_for(|(durable, failed)| *durable >= ticket.0 || *failed >= ticket.0)
            .await;
        match seen {
            Ok(v) if v.0 >= ticket.0 => {
                tracing::debug!(%id, "queued");
                self.hand_to_delivery(id);
                Ok(id)
            }
            _ => Err(CommitError::SpoolIo),
        }
    }

    /// A message's deadline and priority: the earliest of its `BY=` (return mode), its
    /// `X-Ringmta-Expire-After` and its user's `max_queue_lifetime`, counted from `now_ms`; the
    /// priority from `X-Ringmta-Priority`, else `MT-PRIORITY`. (A `BY=` in notify mode sets no
    /// deadline: the mail keeps trying, as RFC 2852 asks.)
    fn message_options(
        &self,
        t: &Transaction,
        controls: &crate::message::Controls,
        now_ms: u64,
    ) -> MessageOptions {
        let by = t
            .deliver_by
            .filter(|b| b.return_on_expiry)
            .map(|b| Duration::from_secs(b.seconds.unsigned_abs()));
        let user = t
            .auth_user
            .as_ref()
            .and_then(|u| self.shared.user_lifetimes.get(u).copied());
        let lifetime = [by, controls.expire_after, user]
            .into_iter()
            .flatten()
            .min();
        MessageOptions {
            expires_at_ms: lifetime.map_or(0, |d| {
                now_ms.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            }),
            priority: controls.priority.or(t.mt_priority).unwrap_or(0),
        }
    }

    fn hand_to_delivery(&self, id: QueueId) {
        if let Some(d) = self.delivery.borrow().as_ref() {
            d.submit(id);
        }
    }

    /// Copies the spool and queue gauges into the metrics every second.
    async fn stats_loop(self: Rc<Self>) {
        use std::sync::atomic::Ordering::Relaxed;
        let mut shutdown = self.shutdown.clone();
        loop {
            let st = self.shard.borrow().stats();
            self.metrics.spool_bytes.store(st.bytes, Relaxed);
            {
                let shard = self.shard.borrow();
                self.metrics
                    .spool_limit_bytes
                    .store(shard.max_bytes(), Relaxed);
                self.metrics
                    .spool_failed
                    .store(u64::from(shard.is_poisoned()), Relaxed);
            }
            self.metrics.spool_records.store(st.records, Relaxed);
            self.metrics
                .spool_lost_records
                .store(st.lost_records, Relaxed);
            self.metrics.spool_messages.store(st.messages, Relaxed);
            self.metrics
                .queue_pending
                .store(st.pending_recipients, Relaxed);
            let mut by_state = [0u64; crate::spool::RecipientStatus::ALL.len()];
            {
                let shard = self.shard.borrow();
                for id in shard.messages() {
                    let Some(m) = shard.state(id) else { continue };
                    for r in m.recipients.iter() {
                        by_state[r.status() as usize] += 1;
                    }
                }
            }
            for (i, n) in by_state.iter().enumerate() {
                self.metrics.recipients_by_state[i].store(*n, Relaxed);
            }
            self.metrics
                .connections_open
                .store(self.connections.get() as u64, Relaxed);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    /// Removes segments whose messages are all final and past `retention.content`, leaving
    /// placeholders in the ledger. Runs at start and every minute.
    async fn purge_loop(self: Rc<Self>) {
        let retention_ms = self.shared.config.retention_content.as_millis() as u64;
        let ledger_ms = self.shared.config.retention_ledger.as_millis() as u64;
        let mut shutdown = self.shutdown.clone();
        loop {
            let now = unix_ms(SystemTime::now());
            if let Err(e) = self.shard.borrow_mut().rotate_if_settled() {
                tracing::warn!(shard = self.index, error = %e, "segment rotation failed");
            }
            match self.shard.borrow_mut().purge(now, retention_ms) {
                Ok(r) if !r.purged.is_empty() || !r.removed.is_empty() => {
                    tracing::info!(
                        shard = self.index,
                        messages = r.purged.len(),
                        segments = r.removed.len(),
                        "purged content past retention"
                    );
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(shard = self.index, error = %e, "purge failed"),
            }
            if let Err(e) = self.shard.borrow().expire_ledger(now, ledger_ms) {
                tracing::warn!(shard = self.index, error = %e, "ledger expiry failed");
            }
            let period = Duration::from_millis(retention_ms.clamp(1000, 60_000));
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    /// The group-commit loop: one fdatasync at a time covering every append before it.
    async fn commit_loop(self: Rc<Self>) {
        use std::os::unix::fs::MetadataExt;
        // A dup of the active segment's file, kept while the segment stays active (keyed by
        // inode: the shard may reuse a descriptor number for its next segment).
        let mut cached: Option<(u64, tokio_uring::fs::File)> = None;
        loop {
            let pending = {
                let shard = self.shard.borrow();
                if shard.durable_seq() >= shard.appended_seq() {
                    None
                } else {
                    let file = match shard.active_file() {
                        Some(active) => {
                            let ino = active.metadata().map(|m| m.ino()).unwrap_or(0);
                            match &cached {
                                Some((i, _)) if *i == ino && ino != 0 => Ok((ino, None)),
                                _ => active.try_clone().map(|f| (ino, Some(f))),
                            }
                        }
                        // Only a simulated disk has no real file; the server never runs on one.
                        None => Err(std::io::Error::other("spool shard has no real file")),
                    };
                    Some((shard.appended_seq(), file))
                }
            };
            let Some((target, file)) = pending else {
                // Message commits, final delivery outcomes and DSNs (with their flags) wake us
                // at once; deferrals wait at most LAZY_FLUSH.
                tokio::select! {
                    _ = self.kick.notified() => {}
                    _ = tokio::time::sleep(LAZY_FLUSH) => {}
                }
                continue;
            };
            let result = match file {
                Ok((ino, Some(f))) => {
                    cached = Some((ino, tokio_uring::fs::File::from_std(f)));
                    Ok(())
                }
                Ok((_, None)) => Ok(()),
                Err(e) => Err(e),
            };
            let result = match (result, &cached) {
                (Ok(()), Some((_, f))) => f.sync_data().await,
                (Ok(()), None) => Err(std::io::Error::other("no active segment")),
                (Err(e), _) => Err(e),
            };
            match result {
                Ok(()) => {
                    // Publish what the shard vouches for (after a failed flush it vouches for
                    // nothing more, even if a later fdatasync returns Ok).
                    let durable = {
                        let mut shard = self.shard.borrow_mut();
                        shard.mark_durable(target);
                        shard.durable_seq()
                    };
                    self.durable.send_modify(|v| v.0 = v.0.max(durable));
                }
                Err(e) => {
                    // fdatasync failure: the pages' fate is unknown, so nothing they hold may be
                    // acknowledged. Waiters get 451 and the client retries.
                    tracing::error!(error = %e, shard = self.index, "fdatasync failed; shard stopped");
                    self.shard.borrow_mut().mark_sync_failed();
                    // Linux reports a writeback error once per file: a retry could "succeed"
                    // without the lost pages. Everything from here on fails until a restart.
                    self.durable.send_modify(|v| v.1 = u64::MAX);
                    return;
                }
            }
        }
    }
}

/// Longest time a status record (delivery outcome) waits for its fdatasync when no message
/// commit comes along to carry it. A crash inside this window can only cause a redelivery.
const LAZY_FLUSH: Duration = Duration::from_millis(20);

/// What one worker needs to start.
pub struct WorkerSpec {
    /// Worker index.
    pub index: u8,
    /// Bound listeners (std sockets, SO_REUSEPORT already set) with their role.
    pub listeners: Vec<(std::net::TcpListener, PortRole)>,
    /// The recovered spool shard.
    pub shard: Shard,
    /// Requests from the operator HTTP thread.
    pub control: tokio::sync::mpsc::UnboundedReceiver<crate::control::ControlRequest>,
}

/// The worker's io_uring set-up. COOP_TASKRUN: a completion does not interrupt the running
/// worker with an inter-processor interrupt; the kernel posts it at the worker's next system
/// call, which its event loop makes at every turn (measured: about 15% less kernel time per
/// message, docs/benchmarks.md "Issue 18, session 11"). SINGLE_ISSUER (Linux 6.0): only this
/// thread submits. A kernel that refuses both gets COOP_TASKRUN alone (5.19), else a plain ring.
fn ring_setup() -> io_uring::Builder {
    let mut both = tokio_uring::uring_builder();
    both.setup_coop_taskrun().setup_single_issuer();
    let mut coop = tokio_uring::uring_builder();
    coop.setup_coop_taskrun();
    for ring in [both, coop] {
        match ring.build(2) {
            Ok(_) => return ring,
            Err(e) => tracing::info!(error = %e, "io_uring set-up flags refused; trying fewer"),
        }
    }
    tokio_uring::uring_builder()
}

/// Runs a worker until shutdown: accept loops, the commit task, then a drain and a final flush.
pub fn run(spec: WorkerSpec, shared: Arc<Shared>, shutdown: watch::Receiver<bool>) {
    tokio_uring::builder()
        .uring_builder(&ring_setup())
        .start(async move {
            let core = Core::new(spec.index, shared, spec.shard, shutdown);
            tokio_uring::spawn(Rc::clone(&core).commit_loop());
            tokio_uring::spawn(Rc::clone(&core).purge_loop());
            tokio_uring::spawn(Rc::clone(&core).stats_loop());
            start_delivery(&core);
            tokio_uring::spawn(control::serve(Rc::clone(&core), spec.control));
            for (listener, role) in spec.listeners {
                crate::net::accept::spawn_listener(&core, listener, role);
            }
            let mut shutdown = core.shutdown.clone();
            let _ = shutdown.wait_for(|s| *s).await;
            // Sessions see the same signal: idle ones get 421 at once, busy ones finish their
            // transaction. Give them a bounded time.
            let drained = tokio::time::timeout(Duration::from_secs(30), async {
                // One thread: no connection can close between the check and the wait.
                while core.connections.get() > 0 {
                    core.idle.notified().await;
                }
            });
            let _ = drained.await;
            if let Err(e) = core.shard.borrow_mut().sync() {
                tracing::error!(error = %e, "final spool flush failed");
            }
            tracing::info!(
                worker = core.index,
                open = core.connections.get(),
                "worker stopped"
            );
        });
}

fn start_delivery(core: &Rc<Core>) {
    let config = &core.shared.config;
    let d = &config.delivery;
    let router = match Router::new(d.routes.clone(), &d.nameservers, d.smtp_port) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the dns resolver; delivery is off on this core");
            return;
        }
    };
    // DANE trusts the AD bit; a resolver across a network could forge it (the decision record
    // in docs/decisions says to use a local one).
    let by_dns = !d.routes.iter().any(|r| r.domain == "*");
    if d.dane && by_dns && core.index == 0 {
        for ns in router.validating_servers() {
            if !ns.ip().is_loopback() {
                tracing::warn!(
                    nameserver = %ns,
                    "DANE trusts the AD bit of a name server that is not on loopback; use a local validating resolver or set delivery.dane = false"
                );
            }
        }
    }
    let settings = DeliveryConfig {
        policy: d.retry.clone(),
        max_connections: d.max_connections,
        max_recipients_per_transaction: d.max_recipients_per_transaction,
        hostname: config.hostname.clone(),
        tls: d.tls,
        connect_timeout: d.connect_timeout,
        connection_idle_time: d.connection_idle_time,
        timeouts: crate::smtp::client::ClientTimeouts {
            greeting: d.command_timeout,
            command: d.command_timeout,
            data_init: d.command_timeout.min(std::time::Duration::from_secs(120)),
            data_done: d.data_timeout,
        },
        route_tls: d.route_tls.clone(),
        bounce_domain: d.bounce_domain.clone(),
        dane: d.dane,
    };
    let handles = CoreHandles {
        shard: Rc::clone(&core.shard),
        metrics: Arc::clone(&core.metrics),
        shutdown: core.shutdown.clone(),
        clock: Rc::new(SystemClock),
        sites: Arc::clone(&core.shared.sites),
        egress: Arc::clone(&core.shared.egress),
        suspensions: Arc::clone(&core.shared.suspensions),
        verify_tls: Arc::clone(&core.shared.verify_tls),
        sts: Arc::clone(&core.shared.sts),
        suppressions: Arc::clone(&core.shared.suppressions),
        tls_rpt: core.shared.tls_rpt.clone(),
        flush: Rc::clone(&core.kick),
        durable: core.durable.subscribe(),
    };
    let delivery = Delivery::new(
        handles,
        settings,
        router,
        Arc::clone(&core.shared.classifier),
        core.shared.events.clone(),
    );
    *core.delivery.borrow_mut() = Some(Rc::clone(&delivery));
    if core.index == 0 {
        tls_reports::start(core);
    }
    delivery.recover_dsns();
    if let Some(since) = core.shared.events_replay_since {
        let n = delivery.replay_events(since);
        if n > 0 {
            tracing::info!(
                worker = core.index,
                events = n,
                "event log lines written again after a restart (the last ones may have been lost)"
            );
        }
    }
    tokio_uring::spawn(delivery.run());
}

impl Application for Core {
    fn admit(&self, ip: IpAddr, may_trust: bool) -> Result<(), ConnectionRefused> {
        use crate::metrics::Refusal;
        let limits = &self.shared.config.limits;
        let trusted = may_trust && self.is_trusted(ip);
        let from_ip = self.per_ip.borrow().get(&ip).copied().unwrap_or(0);
        let refusal = if self.connections.get() >= limits.max_connections_per_core {
            Some((Refusal::PerCore, ConnectionRefused::TooManyConnections))
        } else if !trusted && from_ip >= limits.max_connections_per_ip {
            Some((Refusal::PerIp, ConnectionRefused::TooManyFromAddress))
        } else if !trusted && !self.shared.connection_rate.allow(ip, Instant::now()) {
            Some((Refusal::Rate, ConnectionRefused::RateExceeded))
        } else {
            None
        };
        if let Some((metric, why)) = refusal {
            self.metrics.refuse(metric);
            return Err(why);
        }
        *self.per_ip.borrow_mut().entry(ip).or_default() += 1;
        self.connections.set(self.connections.get() + 1);
        self.metrics
            .connections_total
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    fn accept_failed(&self, error: &std::io::Error) {
        tracing::warn!(%error, "accept failed");
        self.metrics
            .accept_errors
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn proxied(&self, ip: IpAddr) -> bool {
        let balancers = &self.shared.config.proxy_protocol;
        !balancers.is_empty() && balancers.iter().any(|c| c.contains(ip))
    }

    fn release(&self, ip: IpAddr) {
        self.connections.set(self.connections.get() - 1);
        if self.connections.get() == 0 {
            self.idle.notify_waiters();
        }
        let mut per_ip = self.per_ip.borrow_mut();
        if let Some(n) = per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&ip);
            }
        }
    }

    fn session(&self, role: PortRole, peer: SocketAddr, may_trust: bool) -> SessionSetup {
        let config = &self.shared.config;
        SessionSetup {
            config: Arc::clone(self.shared.session_config(role)),
            peer: PeerInfo {
                addr: peer,
                is_trusted: may_trust && self.is_trusted(peer.ip()),
            },
            tls: Arc::clone(&self.shared.tls),
            command_timeout: config.limits.command_timeout,
            data_timeout: config.limits.data_timeout,
            recipient_check: Some(Arc::clone(&self.shared.suppressions) as _),
        }
    }

    fn allow_mail(&self, ip: IpAddr) -> bool {
        let allowed = self.shared.message_rate.allow(ip, Instant::now());
        if !allowed {
            self.metrics
                .mail_rate_refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        allowed
    }

    async fn authenticate(&self, username: String, password: String, ip: IpAddr) -> AuthOutcome {
        self.shared
            .auth
            .verify(username, password, ip, Instant::now())
            .await
    }

    async fn commit(&self, t: Transaction) -> Result<QueueId, CommitError> {
        Core::commit(self, t, SystemTime::now()).await
    }

    fn shutdown(&self) -> watch::Receiver<bool> {
        self.shutdown.clone()
    }
}

impl Core {
    /// Whether `ip` is in `relay.trusted_networks`.
    fn is_trusted(&self, ip: IpAddr) -> bool {
        self.shared
            .config
            .trusted_networks
            .iter()
            .any(|c| c.contains(ip))
    }
}

#[cfg(test)]
mod tests;
