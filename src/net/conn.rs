//! Drives one `ServerSession` over one connection: read, hand bytes over, write replies, arm the
//! timer the session asks for, and carry out its events (AUTH check, STARTTLS, commit).
//!
//! No SMTP knowledge lives here. The only decisions are mechanical: a read stays in flight
//! while a timer or the shutdown signal wakes the loop (dropping it could lose bytes the kernel
//! already took), and input the session did not consume is kept and offered again once the
//! session stops waiting.

use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ids::QueueId;
use crate::ids::TxnId;
use crate::net::tls::tls_info;
use crate::net::transport::{COMMAND_READ_CHUNK, READ_CHUNK, Transport};
use crate::smtp::PortRole;
use crate::smtp::{CommitError, Event, ServerSession, Transaction};

use super::{Application, SessionSetup};

type ReadFuture = Pin<Box<dyn std::future::Future<Output = (std::io::Result<usize>, Vec<u8>)>>>;

/// Who a connection is from, as the accept loop found out.
pub struct Arrival {
    /// The client: the connection's own peer, or the one its balancer's PROXY header named.
    pub peer: SocketAddr,
    /// The balancer that relayed it, if any.
    pub via: Option<SocketAddr>,
    /// Bytes the client sent that were read with the PROXY header.
    pub pending: Vec<u8>,
    /// Never relay-trusted whatever its address (a PROXY header that named no client).
    pub untrusted: bool,
}

impl Arrival {
    /// A connection straight from its client.
    pub fn direct(peer: SocketAddr) -> Arrival {
        Arrival {
            peer,
            via: None,
            pending: Vec::new(),
            untrusted: false,
        }
    }
}

/// Serves one accepted connection to completion.
pub async fn serve<A: Application>(
    app: Rc<A>,
    mut transport: Transport,
    arrival: Arrival,
    role: PortRole,
) {
    let Arrival {
        peer,
        via,
        mut pending,
        untrusted,
    } = arrival;
    let SessionSetup {
        config: session_config,
        peer: peer_info,
        tls: server_tls,
        command_timeout,
        data_timeout,
        recipient_check,
    } = app.session(role, peer, !untrusted);
    let is_trusted = peer_info.is_trusted;

    let mut tls = None;
    if role == PortRole::Submissions {
        let handshake = Box::pin(tokio::time::timeout(
            command_timeout,
            transport.accept_tls(Arc::clone(&server_tls), std::mem::take(&mut pending)),
        ))
        .await
        .unwrap_or_else(|_| Err(timed_out("tls handshake")));
        if let Err(e) = handshake {
            tracing::debug!(%peer, error = %e, "implicit tls handshake failed");
            transport.close().await;
            return;
        }
        tls = transport.tls().map(tls_info);
    }
    let mut session = ServerSession::new(session_config, peer_info, tls, Instant::now());
    if let Some(check) = recipient_check {
        session.set_recipient_check(check);
    }
    if !is_trusted {
        session.require_mail_approval();
    }
    let mut driver = Driver {
        app,
        tls: server_tls,
        command_timeout,
        data_timeout,
        transport,
        peer,
        // What the client sent with its balancer's PROXY header (plaintext here: with implicit
        // TLS it went to the handshake above).
        input: pending,
        out: Vec::with_capacity(1024),
        accepted: 0,
        refused: 0,
    };
    let started = Instant::now();
    driver.run(&mut session).await;
    driver.transport.close().await;
    tracing::info!(
        %peer,
        via = via.map(tracing::field::display),
        role = ?role,
        tls = driver.transport.is_tls(),
        accepted = driver.accepted,
        refused = driver.refused,
        ms = started.elapsed().as_millis() as u64,
        "session"
    );
}

struct Driver<A> {
    app: Rc<A>,
    tls: Arc<rustls::ServerConfig>,
    command_timeout: Duration,
    data_timeout: Duration,
    transport: Transport,
    peer: SocketAddr,
    /// Plaintext received and not yet consumed by the session.
    input: Vec<u8>,
    /// Reply bytes to send; reused.
    out: Vec<u8>,
    /// Messages acknowledged with 250 in this session.
    accepted: u32,
    /// Messages refused at the end of DATA in this session.
    refused: u32,
}

impl<A: Application> Driver<A> {
    async fn run(&mut self, session: &mut ServerSession) {
        let mut shutdown = self.app.shutdown();
        let mut shutdown_seen = *shutdown.borrow();
        if shutdown_seen {
            session.handle_shutdown(Instant::now());
        }
        let mut pending_read: Option<ReadFuture> = None;
        let mut raw = Vec::new();
        // Bytes that came with a PROXY header are input like any read's.
        let mut preread = !self.input.is_empty();
        loop {
            // Carry out everything the session asked for; this may unblock buffered input.
            match self.pump(session).await {
                Pump::Close => return,
                Pump::Fed => continue,
                Pump::Idle => {}
            }
            if std::mem::take(&mut preread) && self.feed(session) {
                continue;
            }
            if pending_read.is_none() {
                let chunk = if session.is_transferring() {
                    READ_CHUNK
                } else {
                    // Between bodies, give back what a DATA phase grew, so an idle session
                    // holds about one small read buffer (loadtest/conn-memory.sh).
                    if raw.capacity() > 2 * COMMAND_READ_CHUNK {
                        raw = Vec::new();
                    }
                    if self.input.is_empty() && self.input.capacity() > 2 * COMMAND_READ_CHUNK {
                        self.input = Vec::new();
                    }
                    COMMAND_READ_CHUNK
                };
                let buf = std::mem::take(&mut raw);
                pending_read = Some(Box::pin(self.transport.read_raw_sized(buf, chunk)));
            }
            let Some(read) = pending_read.as_mut() else {
                return;
            };
            let deadline = session.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                (res, buf) = read.as_mut() => {
                    pending_read = None;
                    raw = buf;
                    match res {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {
                            if let Err(e) = self.transport.decode(&mut raw, &mut self.input).await {
                                tracing::debug!(peer = %self.peer, error = %e, "tls error");
                                return;
                            }
                            self.feed(session);
                        }
                    }
                }
                _ = sleep => session.handle_timeout(Instant::now()),
                _ = shutdown.changed(), if !shutdown_seen => {
                    shutdown_seen = true;
                    session.handle_shutdown(Instant::now());
                }
            }
        }
    }

    fn feed(&mut self, session: &mut ServerSession) -> bool {
        if self.input.is_empty() {
            return false;
        }
        let used = session.handle_input(&self.input, Instant::now());
        self.input.drain(..used.min(self.input.len()));
        used > 0
    }

    async fn flush(&mut self, session: &mut ServerSession) -> bool {
        session.poll_output(&mut self.out);
        if self.out.is_empty() {
            return true;
        }
        // A client that stops reading must not hold its slot forever (slowloris on replies).
        let written = tokio::time::timeout(
            self.data_timeout,
            self.transport.write_all(std::mem::take(&mut self.out)),
        )
        .await;
        match written {
            Ok((res, mut buf)) => {
                buf.clear();
                self.out = buf;
                res.is_ok()
            }
            Err(_) => false,
        }
    }

    async fn pump(&mut self, session: &mut ServerSession) -> Pump {
        let mut unblocked = false;
        loop {
            if !self.flush(session).await {
                return Pump::Close;
            }
            let Some(event) = session.poll_event() else {
                break;
            };
            match event {
                Event::Close => {
                    let _ = self.flush(session).await;
                    return Pump::Close;
                }
                Event::Authenticate {
                    username, password, ..
                } => {
                    let outcome = self
                        .app
                        .authenticate(username, password, self.peer.ip())
                        .await;
                    session.handle_auth_result(outcome, Instant::now());
                    unblocked = true;
                }
                Event::ApproveMail => {
                    let allowed = self.app.allow_mail(self.peer.ip());
                    session.handle_mail_approval(allowed, Instant::now());
                    unblocked = true;
                }
                Event::StartTls => {
                    if !self.flush(session).await {
                        return Pump::Close;
                    }
                    // RFC 3207 §4.2 / CVE-2011-0411: whatever plaintext followed STARTTLS is
                    // dropped; the session has already consumed it.
                    self.input.clear();
                    let handshake = Box::pin(tokio::time::timeout(
                        self.command_timeout,
                        self.transport.accept_tls(Arc::clone(&self.tls), Vec::new()),
                    ))
                    .await
                    .unwrap_or_else(|_| Err(timed_out("tls handshake")));
                    if let Err(e) = handshake {
                        tracing::debug!(peer = %self.peer, error = %e, "starttls handshake failed");
                        return Pump::Close;
                    }
                    let info = self.transport.tls().map(tls_info);
                    if let Some(info) = info {
                        session.handle_tls_established(info, Instant::now());
                    }
                    let mut none = Vec::new();
                    if self
                        .transport
                        .decode(&mut none, &mut self.input)
                        .await
                        .is_err()
                    {
                        return Pump::Close;
                    }
                    unblocked = true;
                }
                Event::Commit(txn, transaction) => {
                    // Boxed, like the handshakes: content checks and the spool append are large
                    // futures, and inlined they would size every idle session's task.
                    let result = Box::pin(self.commit(txn, *transaction)).await;
                    match &result {
                        Ok(_) => self.accepted += 1,
                        Err(_) => self.refused += 1,
                    }
                    session.handle_commit(txn, result, Instant::now());
                    unblocked = true;
                }
            }
        }
        if unblocked && self.feed(session) {
            return Pump::Fed;
        }
        if unblocked && !self.input.is_empty() {
            // The session may have produced output from the leftover even without consuming.
            return Pump::Fed;
        }
        Pump::Idle
    }

    async fn commit(&mut self, _txn: TxnId, t: Transaction) -> Result<QueueId, CommitError> {
        self.app.commit(t).await
    }
}

fn timed_out(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{what} timed out"))
}

enum Pump {
    /// The connection must close.
    Close,
    /// Buffered input was handed to the session; run the pump again before reading.
    Fed,
    /// Nothing more to do until the peer sends something.
    Idle,
}
