//! One worker thread: a tokio-uring runtime with its own SO_REUSEPORT listeners, its own spool
//! shard and its own group-commit task. Nothing here is shared with other workers except the
//! immutable `Shared` and the auth pool handle.
//!
//! Group commit: sessions append to the shard's mapping and wait for the durable sequence number
//! to pass their ticket; one task runs one fdatasync (through io_uring) at a time for everything
//! appended since the previous one, so N concurrent messages cost one flush, not N.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, watch};

use crate::auth::AuthService;
use crate::config::Config;
use crate::config::resolved::{Durability, ListenerRole};
use crate::ids::QueueId;
use crate::message::prepended_headers;
use crate::smtp::{CommitError, SessionConfig, Transaction};
use crate::spool::{NewMessage, Shard, SpoolError};

/// State shared read-only by every worker.
pub struct Shared {
    /// The resolved configuration.
    pub config: Arc<Config>,
    /// rustls server configuration.
    pub tls: Arc<rustls::ServerConfig>,
    /// Credential verifier pool.
    pub auth: AuthService,
    /// Session settings per role: smtp, submission, submissions.
    pub sessions: [Arc<SessionConfig>; 3],
}

impl Shared {
    /// The session settings for a listener role.
    pub fn session_config(&self, role: ListenerRole) -> &Arc<SessionConfig> {
        match role {
            ListenerRole::Smtp => &self.sessions[0],
            ListenerRole::Submission => &self.sessions[1],
            ListenerRole::Submissions => &self.sessions[2],
        }
    }
}

/// Per-core state, owned by the worker thread (`Rc`, never sent across threads).
pub struct Core {
    /// Worker index, also the spool shard number.
    pub index: u8,
    /// Shared read-only state.
    pub shared: Arc<Shared>,
    /// This core's spool shard. Borrows never span an `.await`.
    pub shard: RefCell<Shard>,
    /// (durable sequence, failed-through sequence) published by the commit task.
    durable: watch::Sender<(u64, u64)>,
    /// Wakes the commit task after an append.
    kick: Notify,
    /// Open connections on this core.
    pub connections: Cell<usize>,
    /// Becomes true when the server shuts down.
    pub shutdown: watch::Receiver<bool>,
    /// Counter for generated Message-IDs.
    unique: Cell<u64>,
}

impl Core {
    /// Appends an accepted transaction to the spool and waits until it is durable.
    pub async fn commit(&self, t: Transaction, now: SystemTime) -> Result<QueueId, CommitError> {
        let unique = self.unique.get().wrapping_add(1);
        self.unique.set(unique);
        let now_ms = unix_ms(now);
        let prefix = prepended_headers(
            &t,
            &self.shared.config.hostname,
            now,
            (now_ms << 16) ^ (unique << 8) ^ u64::from(self.index),
        );
        let meta = crate::message::spool_meta(&t, now_ms);
        let parts: [&[u8]; 2] = [&prefix, &t.body];
        let appended = self
            .shard
            .borrow_mut()
            .append_message(&NewMessage { meta, body: &parts }, now_ms);
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
                Ok(id)
            }
            _ => Err(CommitError::SpoolIo),
        }
    }

    /// The group-commit loop: one fdatasync at a time covering every append before it.
    async fn commit_loop(self: Rc<Self>) {
        loop {
            let (target, file) = {
                let shard = self.shard.borrow();
                if shard.durable_seq() >= shard.appended_seq() {
                    (None, None)
                } else {
                    (
                        Some(shard.appended_seq()),
                        Some(shard.active_file().try_clone()),
                    )
                }
            };
            let (Some(target), Some(file)) = (target, file) else {
                self.kick.notified().await;
                continue;
            };
            let result = match file {
                Ok(file) => {
                    let file = tokio_uring::fs::File::from_std(file);
                    let r = file.sync_data().await;
                    let _ = file.close().await;
                    r
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => {
                    self.shard.borrow_mut().mark_durable(target);
                    self.durable.send_modify(|v| v.0 = v.0.max(target));
                }
                Err(e) => {
                    // fdatasync failure: the pages' fate is unknown, so nothing they hold may be
                    // acknowledged. Waiters get 451 and the client retries.
                    tracing::error!(error = %e, shard = self.index, "fdatasync failed; shard stopped");
                    self.shard.borrow_mut().mark_sync_failed();
                    self.durable.send_modify(|v| v.1 = v.1.max(target));
                }
            }
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// What one worker needs to start.
pub struct WorkerSpec {
    /// Worker index.
    pub index: u8,
    /// Bound listeners (std sockets, SO_REUSEPORT already set) with their role.
    pub listeners: Vec<(std::net::TcpListener, ListenerRole)>,
    /// The recovered spool shard.
    pub shard: Shard,
}

/// Runs a worker until shutdown: accept loops, the commit task, then a drain and a final flush.
pub fn run(spec: WorkerSpec, shared: Arc<Shared>, shutdown: watch::Receiver<bool>) {
    tokio_uring::start(async move {
        let (durable, _) = watch::channel((spec.shard.durable_seq(), 0));
        let core = Rc::new(Core {
            index: spec.index,
            shared,
            shard: RefCell::new(spec.shard),
            durable,
            kick: Notify::new(),
            connections: Cell::new(0),
            shutdown,
            unique: Cell::new(0),
        });
        tokio_uring::spawn(Rc::clone(&core).commit_loop());
        for (listener, role) in spec.listeners {
            let listener = tokio_uring::net::TcpListener::from_std(listener);
            tokio_uring::spawn(accept_loop(Rc::clone(&core), listener, role));
        }
        let mut shutdown = core.shutdown.clone();
        let _ = shutdown.wait_for(|s| *s).await;
        // Sessions see the same signal: idle ones get 421 at once, busy ones finish their
        // transaction. Give them a bounded time.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while core.connections.get() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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

async fn accept_loop(core: Rc<Core>, listener: tokio_uring::net::TcpListener, role: ListenerRole) {
    let mut shutdown = core.shutdown.clone();
    let max = core.shared.config.limits.max_connections_per_core;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let (stream, peer): (tokio_uring::net::TcpStream, SocketAddr) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE/ENFILE: back off instead of spinning; the listener stays open.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if core.connections.get() >= max {
            tokio_uring::spawn(async move {
                let _ = stream.set_nodelay(true);
                let _ = stream
                    .write_all(b"421 4.3.2 Too many connections, try again later\r\n".to_vec())
                    .await;
                let _ = stream.shutdown(std::net::Shutdown::Both);
            });
            continue;
        }
        core.connections.set(core.connections.get() + 1);
        let c = Rc::clone(&core);
        tokio_uring::spawn(async move {
            crate::net::conn::serve(Rc::clone(&c), stream, peer, role).await;
            c.connections.set(c.connections.get() - 1);
        });
    }
}
