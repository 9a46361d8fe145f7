//! The SMTP server session state machine.
//!
//! [`ServerSession`] consumes client bytes and produces reply bytes, [`Event`]s and a deadline.
//! It never performs I/O or reads the clock. Work it cannot do itself (checking credentials,
//! making a message durable, the TLS handshake) leaves as an event; the session then waits in
//! an explicit state and consumes no more input until the matching `handle_*` call.
//!
//! Invariants:
//! - the only `250` after DATA/BDAT comes from [`ServerSession::handle_commit`];
//! - the command line buffer never exceeds `max_line_length`, the body never exceeds
//!   `max_message_size`, recipients never exceed `max_recipients`;
//! - after [`Event::Close`] the session is poisoned: input is consumed and ignored, and no
//!   further output is produced.

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::address::{Domain, Mailbox, ReversePath, SenderPattern};
use super::command::{AuthMechanism, Command, MailParams, RcptParams};
use super::data::{BdatReceiver, DataReceiver, Status};
use super::envelope::{BodyType, Recipient, Transaction};
use super::error::{ProtocolError, Sequence, shutting_down};
use super::limits::SessionLimits;
use super::reply::Reply;
use crate::ids::{QueueId, TxnId};

/// Which listener the connection arrived on; decides the authentication policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PortRole {
    /// Port 25: STARTTLS offered; relaying only for trusted networks or authenticated users.
    Relay,
    /// Port 587: STARTTLS, AUTH required before MAIL (RFC 6409).
    Submission,
    /// Port 465: implicit TLS, AUTH required before MAIL (RFC 8314).
    Submissions,
}

/// Immutable per-listener configuration shared by its sessions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// Our host name, used in the greeting, EHLO and 421 replies.
    pub hostname: String,
    /// The listener's role.
    pub role: PortRole,
    /// Bounds for every session.
    pub limits: SessionLimits,
    /// Whether a certificate is loaded, so STARTTLS can be offered.
    pub starttls_available: bool,
    /// The VERP bounce domain (`delivery.bounce_domain`, lower case) on the smtp role: its
    /// `bounces+<queue id>` recipients are accepted from anyone, in transactions of their own,
    /// and the message is handed over as feedback instead of being relayed.
    pub feedback_domain: Option<String>,
}

/// Recipients the application refuses at RCPT after the session's own checks (its
/// suppression list). Called once per RCPT; must be quick (an in-memory lookup).
pub trait RecipientCheck: fmt::Debug {
    /// The reply refusing mail to `address` from `sender` (the envelope sender, empty for
    /// `<>`) submitted by `user` (the authenticated user), or `None`.
    fn refusal(&self, address: &str, sender: &ReversePath, user: Option<&str>) -> Option<Reply>;
}

/// Facts about the client, decided by the glue before the session starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The client's address.
    pub addr: SocketAddr,
    /// Whether the address is in a trusted network (may relay without AUTH).
    pub is_trusted: bool,
}

/// The negotiated TLS parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsInfo {
    /// Protocol version, e.g. `TLSv1.3`.
    pub version: String,
    /// Cipher suite, e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
}

/// A user whose credentials were verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthUser {
    /// The user name.
    pub name: String,
    /// Envelope senders this user may use.
    pub allowed_senders: Vec<SenderPattern>,
}

/// Result of checking credentials, given back through [`ServerSession::handle_auth_result`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthOutcome {
    /// Credentials valid.
    Success(AuthUser),
    /// Credentials invalid: `535 5.7.8`, counted toward `max_auth_failures`.
    BadCredentials,
    /// The checker refuses further attempts from this client: `421 4.7.0` and close.
    Throttled,
    /// The credentials could not be checked (the checker is overloaded or gone): `454 4.7.0`
    /// (RFC 4954 §6), not counted against the client, which may try again.
    Unavailable,
}

/// Why the spool could not take a message, given back through [`ServerSession::handle_commit`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CommitError {
    /// No space left: `452 4.3.1`.
    #[error("spool full")]
    SpoolFull,
    /// The write failed: `451 4.3.0`.
    #[error("spool write failed")]
    SpoolIo,
    /// The server is stopping: `421 4.3.2` and close.
    #[error("shutting down")]
    ShuttingDown,
    /// A content check refused the message with this reply.
    #[error("message rejected with {}", .0.code)]
    Rejected(Reply),
}

/// Something the glue must act on; drain with [`ServerSession::poll_event`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Message complete (DATA final dot or BDAT LAST), waiting for durability.
    Commit(TxnId, Box<Transaction>),
    /// Credentials to verify (off-core); answer with handle_auth_result.
    Authenticate {
        /// The SASL mechanism used.
        mechanism: AuthMechanism,
        /// The authentication identity.
        username: String,
        /// The password, as sent.
        password: String,
    },
    /// A MAIL passed every check of the session; the application decides whether this client
    /// may start another transaction now (its message rate) and answers with
    /// [`ServerSession::handle_mail_approval`]. Only asked after
    /// [`ServerSession::require_mail_approval`].
    ApproveMail,
    /// "220 Ready to start TLS" has been queued; the glue flushes output, runs the handshake,
    /// then calls handle_tls_established (or drops the connection if the handshake fails).
    StartTls,
    /// Flush output and close the connection.
    Close,
}

/// One SMTP server connection, without I/O.
#[derive(Debug)]
pub struct ServerSession {
    config: Arc<SessionConfig>,
    peer: PeerInfo,
    tls: Option<TlsInfo>,
    /// Set by EHLO/HELO; cleared by STARTTLS (RFC 3207 §4.2).
    helo: Option<Helo>,
    auth_user: Option<AuthUser>,
    state: State,
    /// Partial command line; `line.len() < max_line_length` always.
    line: Vec<u8>,
    /// Discarding the rest of an over-long line up to its LF.
    discarding_line: bool,
    bad_commands: u32,
    /// NOOP, RSET, VRFY and HELP since the last accepted message.
    junk_commands: u32,
    auth_failures: u32,
    next_txn: u64,
    shutting_down: bool,
    /// Time of the last input or awaited result; deadlines count from here.
    last_activity: Instant,
    /// When the command line being received got its first byte (`None` between lines).
    line_started: Option<Instant>,
    /// The DATA body or BDAT transaction being received, for `min_data_rate`.
    transfer: Option<Transfer>,
    /// Each MAIL waits for [`Event::ApproveMail`]'s answer (the per-IP message rate). Set by
    /// the glue for untrusted clients, authenticated or not.
    mail_approval: bool,
    /// The application's refusals at RCPT (its suppression list), when it has some.
    recipient_check: Option<Arc<dyn RecipientCheck>>,
    output: Vec<u8>,
    events: VecDeque<Event>,
}

/// A DATA body or BDAT transaction in progress.
#[derive(Clone, Copy, Debug)]
struct Transfer {
    started: Instant,
    bytes: u64,
}

#[derive(Clone, Debug)]
struct Helo {
    name: String,
    esmtp: bool,
}

/// A transaction opened by MAIL.
#[derive(Debug)]
struct Envelope {
    reverse_path: ReversePath,
    params: MailParams,
    recipients: Vec<Recipient>,
    /// The recipients are feedback addresses (see [`SessionConfig::feedback_domain`]).
    feedback: bool,
    /// Present once a BDAT chunk was received; DATA is then out of sequence.
    bdat: Option<BdatReceiver>,
}

#[derive(Debug)]
enum AuthStep {
    PlainResponse,
    LoginUsername,
    LoginPassword { username: String },
}

/// What the session waits for. Named by what it awaits.
#[derive(Debug)]
enum State {
    AwaitingCommand(Option<Envelope>),
    /// A 334 challenge was sent; the next line is a SASL response.
    AwaitingAuthResponse(AuthStep),
    ReceivingData(Envelope, DataReceiver),
    /// Inside a BDAT chunk of an accepted transaction; `envelope.bdat` is `Some`.
    ReceivingBdat {
        envelope: Envelope,
        size: u64,
        last: bool,
    },
    /// Inside a BDAT chunk that will be refused (no valid recipients); bytes are dropped.
    DiscardingBdat {
        remaining: u64,
        envelope: Option<Envelope>,
    },
    AwaitingAuthResult,
    /// A MAIL waits for [`Event::ApproveMail`]'s answer; the envelope it opens if approved.
    AwaitingMailApproval(Envelope),
    AwaitingCommit(TxnId),
    AwaitingTls,
    Closed,
}

impl ServerSession {
    /// Starts a session and queues the 220 greeting; `tls` is `Some` for implicit TLS (465).
    pub fn new(
        config: Arc<SessionConfig>,
        peer: PeerInfo,
        tls: Option<TlsInfo>,
        now: Instant,
    ) -> Self {
        let mut session = ServerSession {
            config,
            peer,
            tls,
            helo: None,
            auth_user: None,
            state: State::AwaitingCommand(None),
            line: Vec::new(),
            discarding_line: false,
            bad_commands: 0,
            junk_commands: 0,
            auth_failures: 0,
            next_txn: 1,
            shutting_down: false,
            last_activity: now,
            line_started: None,
            transfer: None,
            mail_approval: false,
            recipient_check: None,
            output: Vec::new(),
            events: VecDeque::new(),
        };
        // RFC 2034 §3: no enhanced code in the greeting.
        let greeting = format!("{} ESMTP ringmta", session.config.hostname);
        session.reply(&Reply::new(220, None, greeting));
        session
    }

    /// Feeds client bytes; returns how many were consumed.
    ///
    /// Fewer than `bytes.len()` are consumed only while the session waits for an auth result or
    /// a commit result; the caller keeps the rest and feeds it again after that result.
    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) -> usize {
        if !bytes.is_empty() {
            self.last_activity = now;
        }
        let mut pos = 0;
        while pos < bytes.len() {
            let rest = &bytes[pos..];
            let in_transfer = self.is_transferring();
            if in_transfer && self.transfer.is_none() {
                self.transfer = Some(Transfer {
                    started: now,
                    bytes: 0,
                });
            }
            let used = match &mut self.state {
                State::Closed | State::AwaitingTls => return bytes.len(),
                State::AwaitingAuthResult
                | State::AwaitingMailApproval(_)
                | State::AwaitingCommit(_) => return pos,
                State::AwaitingCommand(_) | State::AwaitingAuthResponse(_) => {
                    let used = self.read_line(rest);
                    // A command line must be complete within the command timeout of its first
                    // byte: dripping one byte at a time does not extend it (slowloris).
                    if self.line.is_empty() && !self.discarding_line {
                        self.line_started = None;
                    } else if self.line_started.is_none() {
                        self.line_started = Some(now);
                    }
                    used
                }
                State::ReceivingData(_, rx) => match rx.feed(rest) {
                    Status::Partial => rest.len(),
                    Status::Complete(n) => {
                        self.end_data();
                        n
                    }
                },
                State::ReceivingBdat { envelope, .. } => {
                    let status = match envelope.bdat.as_mut() {
                        Some(rx) => rx.feed(rest),
                        None => Status::Complete(0),
                    };
                    match status {
                        Status::Partial => rest.len(),
                        Status::Complete(n) => {
                            self.end_bdat_chunk();
                            n
                        }
                    }
                }
                State::DiscardingBdat { remaining, .. } => {
                    let take =
                        usize::try_from(*remaining).map_or(rest.len(), |r| r.min(rest.len()));
                    *remaining -= take as u64;
                    if *remaining == 0 {
                        self.transition(|s, state| match state {
                            State::DiscardingBdat { envelope, .. } => s.reject(
                                ProtocolError::NoValidRecipients,
                                State::AwaitingCommand(envelope),
                            ),
                            other => other,
                        });
                    }
                    take
                }
            };
            if used == 0 {
                // Every arm above makes progress on non-empty input; stop rather than spin.
                debug_assert!(false, "no progress in state {:?}", self.state);
                return pos;
            }
            pos += used;
            if in_transfer && let Some(t) = self.transfer.as_mut() {
                t.bytes += used as u64;
            }
            // The transfer clock starts at the 354 or the first BDAT command (so `BDAT 0`
            // repeated cannot hold the session) and stops when the transaction ends.
            if self.is_transferring() || self.between_bdat_chunks() {
                self.transfer.get_or_insert(Transfer {
                    started: now,
                    bytes: 0,
                });
            } else {
                self.transfer = None;
            }
        }
        bytes.len()
    }

    /// From now on each MAIL that passes the session's checks waits for the application's
    /// [`Event::ApproveMail`] answer; a refusal gets `450 4.7.1` (counted as a junk command,
    /// not as a bad one).
    pub fn require_mail_approval(&mut self) {
        self.mail_approval = true;
    }

    /// From now on each RCPT that passes the session's checks is also put to `check`; a
    /// refusal is its reply, and the recipient is not added.
    pub fn set_recipient_check(&mut self, check: Arc<dyn RecipientCheck>) {
        self.recipient_check = Some(check);
    }

    /// Delivers the answer to [`Event::ApproveMail`].
    pub fn handle_mail_approval(&mut self, allowed: bool, now: Instant) {
        match self.state {
            State::AwaitingMailApproval(_) => {}
            State::Closed => return,
            _ => {
                debug_assert!(false, "handle_mail_approval in state {:?}", self.state);
                return;
            }
        }
        self.last_activity = now;
        self.transition(|s, old| {
            let State::AwaitingMailApproval(envelope) = old else {
                unreachable!("checked above");
            };
            if allowed {
                s.reply(&Reply::with_enhanced(250, (2, 1, 0), "Ok"));
                State::AwaitingCommand(Some(envelope))
            } else {
                s.reject(
                    ProtocolError::MessageRateExceeded,
                    State::AwaitingCommand(None),
                )
            }
        });
    }

    /// Closes the session with `421 4.4.2` if the deadline from [`Self::poll_timeout`] passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.poll_timeout().is_some_and(|deadline| now >= deadline) {
            let hostname = self.config.hostname.clone();
            let e = if self.transfer_deadline().is_some_and(|d| now >= d) {
                ProtocolError::TransferTooSlow { hostname }
            } else {
                ProtocolError::Timeout { hostname }
            };
            self.state = self.close(&Reply::from(&e));
        }
    }

    /// Delivers the spool's verdict on the transaction announced by [`Event::Commit`].
    pub fn handle_commit(
        &mut self,
        txn: TxnId,
        result: Result<QueueId, CommitError>,
        now: Instant,
    ) {
        match self.state {
            State::AwaitingCommit(id) if id == txn => {}
            State::Closed => return,
            _ => {
                debug_assert!(false, "handle_commit({txn:?}) in state {:?}", self.state);
                return;
            }
        }
        self.last_activity = now;
        self.transition(|s, _| match result {
            Ok(id) => {
                s.junk_commands = 0;
                s.reply(&Reply::with_enhanced(
                    250,
                    (2, 0, 0),
                    format!("Ok: queued as {id}"),
                ));
                State::AwaitingCommand(None)
            }
            Err(e) => {
                let reply = Reply::from(&e);
                // RFC 5321 §3.8: a 421 reply is followed by closing the connection.
                if reply.code == 421 {
                    s.close(&reply)
                } else {
                    s.reply(&reply);
                    State::AwaitingCommand(None)
                }
            }
        });
    }

    /// Delivers the credential check requested by [`Event::Authenticate`].
    pub fn handle_auth_result(&mut self, outcome: AuthOutcome, now: Instant) {
        match self.state {
            State::AwaitingAuthResult => {}
            State::Closed => return,
            _ => {
                debug_assert!(false, "handle_auth_result in state {:?}", self.state);
                return;
            }
        }
        self.last_activity = now;
        self.transition(|s, _| match outcome {
            AuthOutcome::Success(user) => {
                s.auth_user = Some(user);
                s.reply(&Reply::with_enhanced(
                    235,
                    (2, 7, 0),
                    "Authentication successful",
                ));
                State::AwaitingCommand(None)
            }
            AuthOutcome::BadCredentials => s.auth_failed(),
            AuthOutcome::Throttled => s.close(&Reply::from(&ProtocolError::TooManyAuthFailures)),
            AuthOutcome::Unavailable => {
                s.reply(&Reply::from(&ProtocolError::AuthUnavailable));
                State::AwaitingCommand(None)
            }
        });
    }

    /// Reports a completed TLS handshake after [`Event::StartTls`].
    pub fn handle_tls_established(&mut self, info: TlsInfo, now: Instant) {
        match self.state {
            State::AwaitingTls => {}
            State::Closed => return,
            _ => {
                debug_assert!(false, "handle_tls_established in state {:?}", self.state);
                return;
            }
        }
        self.last_activity = now;
        self.tls = Some(info);
        // RFC 3207 §4.2: all knowledge from before TLS is discarded; the client starts over
        // with EHLO (no new greeting).
        self.helo = None;
        self.auth_user = None;
        self.line.clear();
        self.discarding_line = false;
        self.state = State::AwaitingCommand(None);
    }

    /// Asks the session to end: at once when idle, after the current transaction otherwise.
    pub fn handle_shutdown(&mut self, now: Instant) {
        let _ = now;
        if self.shutting_down || matches!(self.state, State::Closed) {
            return;
        }
        self.shutting_down = true;
        self.transition(|_, state| state);
    }

    /// Appends queued reply bytes to `out`.
    pub fn poll_output(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.output);
    }

    /// The next event for the glue, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Self::handle_timeout`] should be called; `None` while waiting for the glue.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let limits = &self.config.limits;
        let timeout = match self.state {
            State::AwaitingCommand(_) | State::AwaitingAuthResponse(_) => limits.command_timeout,
            State::ReceivingData(..)
            | State::ReceivingBdat { .. }
            | State::DiscardingBdat { .. } => limits.data_timeout,
            State::AwaitingAuthResult
            | State::AwaitingMailApproval(_)
            | State::AwaitingCommit(_)
            | State::AwaitingTls
            | State::Closed => return None,
        };
        let idle = self.last_activity.checked_add(timeout);
        let line = self
            .line_started
            .and_then(|t| t.checked_add(limits.command_timeout));
        [idle, line, self.transfer_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// When the transfer in progress falls below `min_data_rate`, if one is in progress.
    fn transfer_deadline(&self) -> Option<Instant> {
        let limits = &self.config.limits;
        let t = self.transfer.filter(|_| limits.min_data_rate > 0)?;
        let earned =
            Duration::try_from_secs_f64(t.bytes as f64 / limits.min_data_rate as f64).ok()?;
        // A deadline past what Instant can hold is no deadline.
        t.started
            .checked_add(limits.data_timeout.checked_add(earned)?)
    }

    /// Whether the session is receiving a DATA body or BDAT payload (the glue reads in larger
    /// chunks then).
    pub fn is_transferring(&self) -> bool {
        matches!(
            self.state,
            State::ReceivingData(..) | State::ReceivingBdat { .. } | State::DiscardingBdat { .. }
        )
    }

    /// Whether a BDAT transaction has chunks behind it and waits for the next BDAT command.
    fn between_bdat_chunks(&self) -> bool {
        matches!(&self.state, State::AwaitingCommand(Some(e)) if e.bdat.is_some())
    }

    /// Whether the session has ended ([`Event::Close`] was emitted).
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }
}

// Internals: line handling, command dispatch, transitions.
impl ServerSession {
    /// Runs a state transition `f(old) -> new`, then applies a pending shutdown if the new
    /// state is between transactions.
    fn transition(&mut self, f: impl FnOnce(&mut Self, State) -> State) {
        let old = std::mem::replace(&mut self.state, State::Closed);
        let new = f(self, old);
        let idle = matches!(
            new,
            State::AwaitingCommand(None)
                | State::AwaitingAuthResponse(_)
                | State::AwaitingAuthResult
                | State::AwaitingTls
                | State::DiscardingBdat { envelope: None, .. }
        );
        self.state = if self.shutting_down && idle {
            self.close(&shutting_down())
        } else {
            new
        };
    }

    fn reply(&mut self, reply: &Reply) {
        reply.encode(&mut self.output);
    }

    /// Queues `reply` and [`Event::Close`]; returns the poisoned state.
    fn close(&mut self, reply: &Reply) -> State {
        self.reply(reply);
        self.events.push_back(Event::Close);
        State::Closed
    }

    /// Replies with the error (or with 421 once too many errors) and returns `next`.
    fn reject(&mut self, e: ProtocolError, next: State) -> State {
        if e.is_bad_command() {
            self.bad_commands = self.bad_commands.saturating_add(1);
            if self.bad_commands > self.config.limits.max_bad_commands {
                return self.close(&Reply::from(&ProtocolError::TooManyErrors));
            }
        } else if e.is_junk() && self.count_junk() {
            return self.close(&Reply::from(&ProtocolError::TooManyErrors));
        }
        self.reply(&Reply::from(&e));
        next
    }

    /// Counts a command that moves no mail forward (keep-alives, refusals a client can repeat
    /// forever); past `max_junk_commands` since the last accepted message each one also counts
    /// as a bad command. Returns whether the session must close.
    fn count_junk(&mut self) -> bool {
        self.junk_commands = self.junk_commands.saturating_add(1);
        if self.junk_commands > self.config.limits.max_junk_commands {
            self.bad_commands = self.bad_commands.saturating_add(1);
            return self.bad_commands > self.config.limits.max_bad_commands;
        }
        false
    }

    /// Consumes bytes of a command (or SASL response) line; returns the count, at least one.
    fn read_line(&mut self, input: &[u8]) -> usize {
        let max = self.config.limits.max_line_length;
        let lf = input.iter().position(|&b| b == b'\n');
        if self.discarding_line {
            return match lf {
                Some(i) => {
                    self.discarding_line = false;
                    i + 1
                }
                None => input.len(),
            };
        }
        let Some(i) = lf else {
            if self.line.len() + input.len() >= max {
                // Already at least max+1 bytes with the line ending: refuse without buffering.
                self.line.clear();
                self.discarding_line = true;
                self.line_too_long();
            } else {
                self.line.extend_from_slice(input);
            }
            return input.len();
        };
        if self.line.len() + i + 1 > max {
            self.line.clear();
            self.line_too_long();
        } else if self.line.is_empty() {
            self.dispatch_line(&input[..=i]);
        } else {
            let mut line = std::mem::take(&mut self.line);
            line.extend_from_slice(&input[..=i]);
            self.dispatch_line(&line);
            line.clear();
            self.line = line;
        }
        i + 1
    }

    fn line_too_long(&mut self) {
        let limit = self.config.limits.max_line_length;
        self.transition(|s, state| {
            let next = match state {
                State::AwaitingAuthResponse(_) => State::AwaitingCommand(None),
                other => other,
            };
            s.reject(ProtocolError::LineTooLong { limit }, next)
        });
    }

    fn dispatch_line(&mut self, line: &[u8]) {
        self.transition(|s, state| match state {
            State::AwaitingAuthResponse(step) => s.on_auth_response(step, line),
            State::AwaitingCommand(txn) => match Command::parse(line) {
                Ok(cmd) => s.on_command(cmd, txn),
                Err(e) => s.reject(e, State::AwaitingCommand(txn)),
            },
            other => other,
        });
    }

    fn on_command(&mut self, cmd: Command<'_>, txn: Option<Envelope>) -> State {
        let ok = |code, enh, text: &str| Reply::with_enhanced(code, enh, text);
        if matches!(
            cmd,
            Command::Noop | Command::Rset | Command::Vrfy(_) | Command::Help
        ) && self.count_junk()
        {
            return self.close(&Reply::from(&ProtocolError::TooManyErrors));
        }
        match cmd {
            Command::Ehlo(name) => self.on_helo(name, true),
            Command::Helo(name) => self.on_helo(name, false),
            Command::Mail {
                reverse_path,
                params,
            } => self.on_mail(txn, reverse_path, params),
            Command::Rcpt {
                forward_path,
                params,
            } => self.on_rcpt(txn, forward_path, params),
            Command::Data => self.on_data(txn),
            Command::Bdat { size, last } => self.on_bdat(txn, size, last),
            Command::Rset => {
                self.reply(&ok(250, (2, 0, 0), "Ok"));
                State::AwaitingCommand(None)
            }
            Command::Noop => {
                self.reply(&ok(250, (2, 0, 0), "Ok"));
                State::AwaitingCommand(txn)
            }
            Command::Quit => self.close(&ok(221, (2, 0, 0), "Bye")),
            Command::Vrfy(_) => {
                // RFC 5321 §3.5.3: 252 when we will not verify but will attempt delivery.
                self.reply(&ok(
                    252,
                    (2, 5, 2),
                    "Cannot VRFY user, but will accept message and attempt delivery",
                ));
                State::AwaitingCommand(txn)
            }
            Command::Help => {
                self.reply(&ok(214, (2, 0, 0), HELP_TEXT));
                State::AwaitingCommand(txn)
            }
            Command::StartTls => self.on_starttls(txn),
            Command::Auth {
                mechanism,
                initial_response,
            } => self.on_auth(txn, mechanism, initial_response),
        }
    }

    /// EHLO/HELO: RFC 5321 §4.1.4, a (re)greeting resets any transaction.
    fn on_helo(&mut self, name: &str, esmtp: bool) -> State {
        self.helo = Some(Helo {
            name: name.to_owned(),
            esmtp,
        });
        let hostname = self.config.hostname.clone();
        if !esmtp {
            self.reply(&Reply::new(250, None, hostname));
            return State::AwaitingCommand(None);
        }
        let mut lines = vec![
            hostname,
            "PIPELINING".to_owned(),
            format!("SIZE {}", self.config.limits.max_message_size),
            "8BITMIME".to_owned(),
            "SMTPUTF8".to_owned(),
            "ENHANCEDSTATUSCODES".to_owned(),
            "CHUNKING".to_owned(),
            "DSN".to_owned(),
            // RFC 2852 with no minimum by-time; RFC 6710 with no named policy.
            "DELIVERBY".to_owned(),
            "MT-PRIORITY".to_owned(),
        ];
        if self.tls.is_none() && self.config.starttls_available {
            lines.push("STARTTLS".to_owned());
        }
        // RFC 4954 §4 / RFC 8314: never offer plaintext passwords without TLS.
        if self.tls.is_some() {
            lines.push("AUTH PLAIN LOGIN".to_owned());
        }
        self.reply(&Reply {
            code: 250,
            enhanced: None,
            lines,
        });
        State::AwaitingCommand(None)
    }

    fn on_mail(
        &mut self,
        txn: Option<Envelope>,
        reverse_path: ReversePath,
        params: MailParams,
    ) -> State {
        let Some(helo) = &self.helo else {
            return self.reject(
                ProtocolError::OutOfSequence(Sequence::NoHelo),
                State::AwaitingCommand(txn),
            );
        };
        let esmtp = helo.esmtp;
        let error = if txn.is_some() {
            Some(ProtocolError::OutOfSequence(Sequence::NestedMail))
        } else if self.config.role != PortRole::Relay && self.auth_user.is_none() {
            Some(ProtocolError::AuthRequired)
        } else if !esmtp && params.count > 0 {
            Some(ProtocolError::ParamsAfterHelo)
        } else if params
            .size
            .is_some_and(|n| n > self.config.limits.max_message_size)
        {
            // RFC 1870 §6.
            Some(ProtocolError::MessageTooBig {
                limit: self.config.limits.max_message_size,
            })
        } else {
            self.sender_not_owned(&reverse_path)
        };
        if let Some(e) = error {
            return self.reject(e, State::AwaitingCommand(txn));
        }
        let envelope = Envelope {
            reverse_path,
            params,
            recipients: Vec::new(),
            feedback: false,
            bdat: None,
        };
        if self.mail_approval {
            self.events.push_back(Event::ApproveMail);
            return State::AwaitingMailApproval(envelope);
        }
        self.reply(&Reply::with_enhanced(250, (2, 1, 0), "Ok"));
        State::AwaitingCommand(Some(envelope))
    }

    /// `Some(valid)` when `mailbox` is in the feedback domain: `valid` says whether its local
    /// part names a message (`bounces+<queue id>`).
    fn is_feedback_address(&self, mailbox: &Mailbox) -> Option<bool> {
        let domain = self.config.feedback_domain.as_deref()?;
        match &mailbox.domain {
            Domain::Name(name) if name.eq_ignore_ascii_case(domain) => {
                Some(crate::ids::parse_verp(&mailbox.local).is_some())
            }
            _ => None,
        }
    }

    /// An authenticated user may only use their own senders; `<>` (bounces) is always allowed.
    fn sender_not_owned(&self, reverse_path: &ReversePath) -> Option<ProtocolError> {
        let user = self.auth_user.as_ref()?;
        let ReversePath::Mailbox(mailbox) = reverse_path else {
            return None;
        };
        if user.allowed_senders.iter().any(|p| p.matches(mailbox)) {
            return None;
        }
        Some(ProtocolError::SenderNotOwned {
            user: user.name.clone(),
        })
    }

    fn on_rcpt(
        &mut self,
        txn: Option<Envelope>,
        forward_path: Mailbox,
        params: RcptParams,
    ) -> State {
        let Some(mut envelope) = txn else {
            return self.reject(
                ProtocolError::OutOfSequence(Sequence::NoMail),
                State::AwaitingCommand(None),
            );
        };
        let esmtp = self.helo.as_ref().is_some_and(|h| h.esmtp);
        let limit = self.config.limits.max_recipients;
        let feedback = self.is_feedback_address(&forward_path);
        let error = if !esmtp && params.count > 0 {
            Some(ProtocolError::ParamsAfterHelo)
        } else if feedback.is_none()
            && self.config.role == PortRole::Relay
            && !self.peer.is_trusted
            && self.auth_user.is_none()
        {
            // ringmta has no local domains: every recipient is a relay.
            Some(ProtocolError::RelayDenied)
        } else if envelope.recipients.len() >= limit {
            // RFC 5321 §4.5.3.1.10: 452 for too many recipients.
            Some(ProtocolError::TooManyRecipients { limit })
        } else {
            None
        };
        if let Some(e) = error {
            return self.reject(e, State::AwaitingCommand(Some(envelope)));
        }
        if let Some(refusal) = feedback_refusal(&envelope, &forward_path, feedback) {
            self.reply(&refusal);
            return State::AwaitingCommand(Some(envelope));
        }
        envelope.feedback = feedback.is_some();
        if let (false, Some(check)) = (envelope.feedback, &self.recipient_check) {
            let user = self.auth_user.as_ref().map(|u| u.name.as_str());
            if let Some(reply) =
                check.refusal(&forward_path.to_string(), &envelope.reverse_path, user)
            {
                self.reply(&reply);
                return State::AwaitingCommand(Some(envelope));
            }
        }
        envelope.recipients.push(Recipient {
            forward_path,
            notify: params.notify,
            orcpt: params.orcpt,
        });
        self.reply(&Reply::with_enhanced(250, (2, 1, 5), "Ok"));
        State::AwaitingCommand(Some(envelope))
    }

    fn on_data(&mut self, txn: Option<Envelope>) -> State {
        let envelope = match txn {
            Some(e) if !e.recipients.is_empty() => e,
            other => {
                return self.reject(
                    ProtocolError::NoValidRecipients,
                    State::AwaitingCommand(other),
                );
            }
        };
        if envelope.bdat.is_some() {
            // RFC 3030 §3: DATA may not follow BDAT in one transaction.
            let e = ProtocolError::OutOfSequence(Sequence::DataAfterBdat);
            return self.reject(e, State::AwaitingCommand(Some(envelope)));
        }
        self.reply(&Reply::new(354, None, "End data with <CR><LF>.<CR><LF>"));
        State::ReceivingData(
            envelope,
            DataReceiver::new(self.config.limits.max_message_size),
        )
    }

    fn on_bdat(&mut self, txn: Option<Envelope>, size: u64, last: bool) -> State {
        let mut envelope = match txn {
            Some(e) if !e.recipients.is_empty() => e,
            // RFC 3030 §2: the chunk is consumed even though it is refused.
            envelope if size > 0 => {
                return State::DiscardingBdat {
                    remaining: size,
                    envelope,
                };
            }
            other => {
                return self.reject(
                    ProtocolError::NoValidRecipients,
                    State::AwaitingCommand(other),
                );
            }
        };
        let max = self.config.limits.max_message_size;
        envelope
            .bdat
            .get_or_insert_with(|| BdatReceiver::new(max))
            .start_chunk(size);
        if size == 0 {
            return self.finish_bdat_chunk(envelope, size, last);
        }
        State::ReceivingBdat {
            envelope,
            size,
            last,
        }
    }

    /// Called when the current BDAT chunk has been consumed.
    fn end_bdat_chunk(&mut self) {
        self.transition(|s, state| match state {
            State::ReceivingBdat {
                envelope,
                size,
                last,
            } => s.finish_bdat_chunk(envelope, size, last),
            other => other,
        });
    }

    /// Replies to a fully received BDAT chunk, committing after LAST.
    fn finish_bdat_chunk(&mut self, mut envelope: Envelope, size: u64, last: bool) -> State {
        let oversize = envelope
            .bdat
            .as_ref()
            .is_some_and(BdatReceiver::is_oversize);
        if oversize {
            // Keep refusing chunks until LAST, then forget the transaction.
            let limit = self.config.limits.max_message_size;
            let next = State::AwaitingCommand((!last).then_some(envelope));
            return self.reject(ProtocolError::MessageTooBig { limit }, next);
        }
        if !last {
            let text = format!("{size} octets received");
            self.reply(&Reply::with_enhanced(250, (2, 0, 0), text));
            return State::AwaitingCommand(Some(envelope));
        }
        let body = envelope
            .bdat
            .take()
            .map(BdatReceiver::finish)
            .unwrap_or_default();
        self.commit(envelope, body)
    }

    /// Called when the DATA terminator has been consumed.
    fn end_data(&mut self) {
        self.transition(|s, state| {
            let State::ReceivingData(envelope, rx) = state else {
                return state;
            };
            if rx.is_oversize() {
                let limit = s.config.limits.max_message_size;
                return s.reject(
                    ProtocolError::MessageTooBig { limit },
                    State::AwaitingCommand(None),
                );
            }
            s.commit(envelope, rx.into_body())
        });
    }

    /// Hands the finished message to the glue and waits for durability.
    fn commit(&mut self, envelope: Envelope, body: Vec<u8>) -> State {
        let id = TxnId(self.next_txn);
        self.next_txn += 1;
        // MAIL requires EHLO/HELO, so `helo` is set whenever a transaction exists.
        let (helo, esmtp) = self
            .helo
            .as_ref()
            .map(|h| (h.name.clone(), h.esmtp))
            .unwrap_or_default();
        let transaction = Transaction {
            helo,
            esmtp,
            peer: self.peer.addr,
            tls: self.tls.clone(),
            auth_user: self.auth_user.as_ref().map(|u| u.name.clone()),
            reverse_path: envelope.reverse_path,
            body_type: envelope.params.body.unwrap_or(BodyType::SevenBit),
            smtputf8: envelope.params.smtputf8,
            ret: envelope.params.ret,
            envid: envelope.params.envid,
            deliver_by: envelope.params.by,
            mt_priority: envelope.params.mt_priority,
            recipients: envelope.recipients,
            feedback: envelope.feedback,
            body,
        };
        self.events
            .push_back(Event::Commit(id, Box::new(transaction)));
        State::AwaitingCommit(id)
    }

    fn on_starttls(&mut self, txn: Option<Envelope>) -> State {
        if self.tls.is_some() {
            let e = ProtocolError::OutOfSequence(Sequence::TlsActive);
            return self.reject(e, State::AwaitingCommand(txn));
        }
        if !self.config.starttls_available {
            return self.reject(ProtocolError::TlsNotAvailable, State::AwaitingCommand(txn));
        }
        self.reply(&Reply::with_enhanced(220, (2, 0, 0), "Ready to start TLS"));
        self.events.push_back(Event::StartTls);
        // RFC 3207 §4.2 and CVE-2011-0411: forget everything, drop pipelined plaintext.
        self.helo = None;
        self.auth_user = None;
        State::AwaitingTls
    }

    fn on_auth(
        &mut self,
        txn: Option<Envelope>,
        mechanism: AuthMechanism,
        initial_response: Option<&str>,
    ) -> State {
        // RFC 4954 §4: 538 when the mechanism needs an encrypted channel; we require it for all.
        let error = if self.tls.is_none() {
            Some(ProtocolError::EncryptionRequired)
        } else if self.helo.is_none() {
            Some(ProtocolError::OutOfSequence(Sequence::NoHelo))
        } else if self.auth_user.is_some() {
            Some(ProtocolError::OutOfSequence(Sequence::AlreadyAuthenticated))
        } else if txn.is_some() {
            Some(ProtocolError::OutOfSequence(Sequence::AuthInTransaction))
        } else {
            None
        };
        if let Some(e) = error {
            return self.reject(e, State::AwaitingCommand(txn));
        }
        let step = match mechanism {
            AuthMechanism::Plain => AuthStep::PlainResponse,
            AuthMechanism::Login => AuthStep::LoginUsername,
        };
        match initial_response {
            // RFC 4954 §4: "=" is an empty initial response.
            Some(ir) => {
                let decoded = if ir == "=" {
                    Ok(Vec::new())
                } else {
                    decode_base64(ir)
                };
                self.on_sasl_data(step, decoded)
            }
            None => self.challenge(step),
        }
    }

    /// Sends the 334 challenge for `step` and waits for the response line.
    fn challenge(&mut self, step: AuthStep) -> State {
        let text = match step {
            AuthStep::PlainResponse => "",
            AuthStep::LoginUsername => "VXNlcm5hbWU6",
            AuthStep::LoginPassword { .. } => "UGFzc3dvcmQ6",
        };
        self.reply(&Reply::new(334, None, text));
        State::AwaitingAuthResponse(step)
    }

    fn on_auth_response(&mut self, step: AuthStep, line: &[u8]) -> State {
        let line = trim_response(line);
        if line == b"*" {
            // RFC 4954 §4: "*" cancels the exchange.
            return self.reject(ProtocolError::AuthCancelled, State::AwaitingCommand(None));
        }
        let decoded = std::str::from_utf8(line)
            .map_err(|_| ProtocolError::BadBase64)
            .and_then(decode_base64);
        self.on_sasl_data(step, decoded)
    }

    fn on_sasl_data(&mut self, step: AuthStep, data: Result<Vec<u8>, ProtocolError>) -> State {
        let data = match data {
            Ok(d) => d,
            Err(e) => return self.reject(e, State::AwaitingCommand(None)),
        };
        let text = match String::from_utf8(data) {
            Ok(t) => t,
            Err(_) => {
                return self.reject(
                    ProtocolError::MalformedCredentials,
                    State::AwaitingCommand(None),
                );
            }
        };
        let (mechanism, username, password) = match step {
            AuthStep::LoginUsername => {
                return self.challenge(AuthStep::LoginPassword { username: text });
            }
            AuthStep::LoginPassword { username } => (AuthMechanism::Login, username, text),
            AuthStep::PlainResponse => {
                // RFC 4616 §2: [authzid] NUL authcid NUL passwd.
                let mut parts = text.split('\0');
                let (Some(authzid), Some(authcid), Some(passwd), None) =
                    (parts.next(), parts.next(), parts.next(), parts.next())
                else {
                    return self.reject(
                        ProtocolError::MalformedCredentials,
                        State::AwaitingCommand(None),
                    );
                };
                if authcid.is_empty() {
                    return self.reject(
                        ProtocolError::MalformedCredentials,
                        State::AwaitingCommand(None),
                    );
                }
                if !authzid.is_empty() && authzid != authcid {
                    // Acting as another identity is not supported: a failed authentication.
                    return self.auth_failed();
                }
                (AuthMechanism::Plain, authcid.to_owned(), passwd.to_owned())
            }
        };
        self.events.push_back(Event::Authenticate {
            mechanism,
            username,
            password,
        });
        State::AwaitingAuthResult
    }

    fn auth_failed(&mut self) -> State {
        self.auth_failures = self.auth_failures.saturating_add(1);
        self.reply(&Reply::from(&ProtocolError::BadCredentials));
        if self.auth_failures >= self.config.limits.max_auth_failures {
            return self.close(&Reply::from(&ProtocolError::TooManyAuthFailures));
        }
        State::AwaitingCommand(None)
    }
}

const HELP_TEXT: &str =
    "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP STARTTLS AUTH";

fn decode_base64(text: &str) -> Result<Vec<u8>, ProtocolError> {
    BASE64.decode(text).map_err(|_| ProtocolError::BadBase64)
}

/// Strips the line ending and surrounding spaces of a SASL response line.
fn trim_response(line: &[u8]) -> &[u8] {
    let end = line
        .iter()
        .rposition(|b| !matches!(b, b'\r' | b'\n' | b' ' | b'\t'))
        .map_or(0, |i| i + 1);
    let start = line[..end]
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(end);
    &line[start..end]
}

/// Why a recipient cannot join this transaction on feedback grounds: an unknown address in
/// the feedback domain (550 5.1.1), or a mix of feedback and relayed recipients (452 4.5.3,
/// which makes the client send the rest in another transaction, RFC 5321 §4.5.3.1.10).
fn feedback_refusal(
    envelope: &Envelope,
    forward_path: &Mailbox,
    feedback: Option<bool>,
) -> Option<Reply> {
    if feedback == Some(false) {
        return Some(Reply::with_enhanced(
            550,
            (5, 1, 1),
            format!("<{forward_path}>: no such feedback address"),
        ));
    }
    let mixed = !envelope.recipients.is_empty() && envelope.feedback != feedback.is_some();
    mixed.then(|| {
        Reply::with_enhanced(
            452,
            (4, 5, 3),
            "Feedback and relayed recipients need separate transactions",
        )
    })
}

#[cfg(test)]
mod tests;
