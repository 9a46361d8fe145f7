//! The outbound SMTP client as a sans-IO state machine: it emits commands and consumes replies,
//! and reports one outcome per message with a reply per recipient. Used by delivery and by the
//! load tool.
//!
//! No sockets, clock or TLS inside: the glue feeds reply bytes with `handle_input`, writes what
//! `poll_output` gives, runs the TLS handshake when `ClientEvent::StartTls` asks, and moves time
//! forward with `handle_timeout`. Commands are pipelined (RFC 2920) when the server offers
//! PIPELINING: MAIL, every RCPT and DATA go out in one write, and the replies are matched in
//! order.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use base64::Engine as _;

use super::reply::{Reply, ReplyLimits, ReplyParseError, ReplyStatus};

/// Client-side timeouts, defaults from RFC 5321 §4.5.3.2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientTimeouts {
    /// Waiting for the greeting (§4.5.3.2.1: 5 minutes).
    pub greeting: Duration,
    /// Waiting for EHLO, MAIL, RCPT, RSET, STARTTLS, AUTH replies (§4.5.3.2.2-3: 5 minutes).
    pub command: Duration,
    /// Waiting for the 354 (§4.5.3.2.4: 2 minutes).
    pub data_init: Duration,
    /// Waiting for the reply to the final dot (§4.5.3.2.6: 10 minutes).
    pub data_done: Duration,
}

impl Default for ClientTimeouts {
    fn default() -> Self {
        ClientTimeouts {
            greeting: Duration::from_secs(300),
            command: Duration::from_secs(300),
            data_init: Duration::from_secs(120),
            data_done: Duration::from_secs(600),
        }
    }
}

/// Whether to upgrade the connection with STARTTLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsPolicy {
    /// Never try.
    Disabled,
    /// Use it when offered; go on in plaintext when not.
    Opportunistic,
    /// Fail the connection when it is not offered (any certificate is accepted).
    Required,
    /// As `Required`, and the next hop's certificate must chain to a trusted root and name the
    /// host (the transport checks it; for the session this is `Required`).
    Verify,
}

impl TlsPolicy {
    /// Whether the session must not go on in plaintext.
    pub fn requires_tls(self) -> bool {
        matches!(self, TlsPolicy::Required | TlsPolicy::Verify)
    }
}

/// Settings of one outbound connection.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// Our name in EHLO/HELO.
    pub helo: String,
    /// STARTTLS policy (ignored once TLS is already on, e.g. implicit TLS).
    pub tls: TlsPolicy,
    /// Use PIPELINING when the server offers it (otherwise one command per round trip).
    pub pipelining: bool,
    /// Credentials for AUTH PLAIN, if any.
    pub auth: Option<(String, String)>,
    /// Timeouts.
    pub timeouts: ClientTimeouts,
    /// Reply parser bounds.
    pub reply_limits: ReplyLimits,
}

/// Parameters of one message's envelope.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutboundEnvelope {
    /// Reverse path without brackets; empty for the null sender.
    pub reverse_path: String,
    /// Recipients without brackets.
    pub recipients: Vec<OutboundRecipient>,
    /// Whether the body has 8-bit bytes (BODY=8BITMIME is sent when the server offers it).
    pub eight_bit: bool,
    /// Whether SMTPUTF8 is needed.
    pub smtputf8: bool,
    /// DSN RET value (`FULL`/`HDRS`), passed on when the server offers DSN.
    pub ret: Option<String>,
    /// DSN ENVID (xtext-encoded as received), passed on when the server offers DSN.
    pub envid: Option<String>,
}

/// One recipient with its DSN parameters (already encoded as they go on the wire).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OutboundRecipient {
    /// Address without brackets.
    pub address: String,
    /// NOTIFY value, e.g. `SUCCESS,FAILURE`.
    pub notify: Option<String>,
    /// ORCPT value, e.g. `rfc822;bob@example.net`.
    pub orcpt: Option<String>,
}

/// What happened to one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MessageOutcome {
    /// One reply per recipient, in envelope order: the RCPT reply when it failed, the MAIL
    /// reply when MAIL failed, otherwise the reply to the end of data.
    pub recipients: Vec<Reply>,
    /// The server offered DSN, so each recipient's NOTIFY and ORCPT went with it: a success is
    /// then the next hop's to report (RFC 3461 §5.2.2), not ours.
    pub dsn_passed_on: bool,
}

/// Server extensions seen in the EHLO reply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Extensions {
    /// PIPELINING (RFC 2920).
    pub pipelining: bool,
    /// STARTTLS (RFC 3207).
    pub starttls: bool,
    /// 8BITMIME (RFC 6152).
    pub eight_bit_mime: bool,
    /// SMTPUTF8 (RFC 6531).
    pub smtputf8: bool,
    /// DSN (RFC 3461).
    pub dsn: bool,
    /// SIZE limit (RFC 1870); `Some(0)` means no fixed limit.
    pub size: Option<u64>,
    /// AUTH PLAIN offered.
    pub auth_plain: bool,
}

/// Why a connection cannot go on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The server's greeting or EHLO/HELO was refused.
    #[error("server refused the session: {0}")]
    Refused(Reply),
    /// STARTTLS was required and not offered or refused.
    #[error("starttls required but not available")]
    TlsUnavailable(Option<Reply>),
    /// AUTH was refused.
    #[error("authentication refused: {0}")]
    AuthFailed(Reply),
    /// The server sent something that is not an SMTP reply.
    #[error("malformed reply: {0}")]
    Malformed(ReplyParseError),
    /// A reply did not arrive in time.
    #[error("timed out waiting for the server")]
    Timeout,
    /// The server's message is too big for it.
    #[error("message of {size} bytes exceeds the server's SIZE {limit}")]
    TooBig {
        /// Our message size.
        size: usize,
        /// The server's advertised limit.
        limit: u64,
    },
}

/// Something the glue must act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// Flush output, run the TLS handshake, then call `handle_tls_established`.
    StartTls,
    /// The session can take a message (`send_message`).
    Ready,
    /// A message finished; the session is ready again afterwards.
    Outcome(MessageOutcome),
    /// The connection failed; flush output and close. A message in flight gets no outcome:
    /// the caller defers it with this error.
    Failed(ClientError),
    /// QUIT was answered (or sent); close.
    Closed,
}

#[derive(Debug)]
enum Expect {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    Auth,
    Mail,
    Rcpt(usize),
    Data,
    Dot,
    Rset,
    Quit,
}

struct InFlight {
    rcpts: usize,
    mail: Option<Reply>,
    rcpt_replies: Vec<Option<Reply>>,
    accepted: usize,
    body: Vec<u8>,
}

/// The outbound session.
pub struct ClientSession {
    config: ClientConfig,
    input: Vec<u8>,
    out: Vec<u8>,
    events: VecDeque<ClientEvent>,
    expect: VecDeque<Expect>,
    deadline: Option<Instant>,
    ext: Extensions,
    tls_on: bool,
    msg: Option<InFlight>,
    /// Commands held back until the previous reply when the server lacks PIPELINING.
    pending_lines: VecDeque<(String, Expect)>,
    /// STARTTLS was accepted; input is discarded until the handshake is done.
    tls_pending: bool,
    done: bool,
}

impl ClientSession {
    /// A session on a fresh connection; `tls_on` for implicit TLS. Waits for the greeting.
    pub fn new(config: ClientConfig, tls_on: bool, now: Instant) -> Self {
        let deadline = Some(now + config.timeouts.greeting);
        ClientSession {
            config,
            input: Vec::new(),
            out: Vec::new(),
            events: VecDeque::new(),
            expect: VecDeque::from([Expect::Greeting]),
            deadline,
            ext: Extensions::default(),
            tls_on,
            msg: None,
            pending_lines: VecDeque::new(),
            tls_pending: false,
            done: false,
        }
    }

    /// Extensions the server announced.
    pub fn extensions(&self) -> Extensions {
        self.ext
    }

    /// Whether the body has been handed out and the reply to its final dot is awaited (the
    /// load tool measures the "250 after DATA" latency from here).
    pub fn is_awaiting_dot(&self) -> bool {
        matches!(self.expect.front(), Some(Expect::Dot))
    }

    /// Whether TLS is on.
    pub fn is_tls(&self) -> bool {
        self.tls_on
    }

    /// Feeds reply bytes. Always consumes everything (replies are buffered internally, bounded
    /// by the reply limits).
    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) -> usize {
        if self.done || self.tls_pending {
            return bytes.len();
        }
        self.input.extend_from_slice(bytes);
        loop {
            match Reply::parse(&self.input, self.config.reply_limits) {
                Ok(ReplyStatus::Partial) => break,
                Ok(ReplyStatus::Complete { reply, consumed }) => {
                    self.input.drain(..consumed);
                    self.on_reply(reply, now);
                    if self.done || self.tls_pending {
                        self.input.clear();
                        break;
                    }
                }
                Err(e) => {
                    self.fail(ClientError::Malformed(e));
                    break;
                }
            }
        }
        bytes.len()
    }

    /// Moves time forward.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.deadline.is_some_and(|d| now >= d) && !self.done {
            self.fail(ClientError::Timeout);
        }
    }

    /// The TLS handshake after `StartTls` finished: EHLO again (RFC 3207 §4.2).
    pub fn handle_tls_established(&mut self, now: Instant) {
        self.tls_on = true;
        self.tls_pending = false;
        self.input.clear();
        self.ext = Extensions::default();
        self.command(
            format!("EHLO {}\r\n", self.config.helo),
            Expect::Ehlo,
            self.config.timeouts.command,
            now,
        );
    }

    /// Starts a message. Only valid after `Ready` (or an `Outcome`); otherwise ignored with a
    /// debug assertion.
    /// Returns false (and does nothing) when the session cannot take a message now.
    pub fn send_message(&mut self, envelope: &OutboundEnvelope, body: &[u8], now: Instant) -> bool {
        if self.msg.is_some() || self.done || !self.expect.is_empty() {
            return false;
        }
        if let Some(limit) = self.ext.size.filter(|l| *l > 0 && body.len() as u64 > *l) {
            let reply = Reply::new(
                552,
                None,
                format!(
                    "message of {} bytes exceeds the server's SIZE {limit}",
                    body.len()
                ),
            );
            let replies = vec![reply; envelope.recipients.len()];
            self.events.push_back(ClientEvent::Outcome(MessageOutcome {
                recipients: replies,
                dsn_passed_on: self.ext.dsn,
            }));
            self.events.push_back(ClientEvent::Ready);
            return true;
        }
        if envelope.smtputf8 && !self.ext.smtputf8 {
            // RFC 6531 §3.4: a message that needs SMTPUTF8 cannot go to a server without it.
            let reply = Reply::new(
                553,
                Some(super::EnhancedCode::new(5, 6, 7)),
                "the next hop does not support SMTPUTF8",
            );
            let replies = vec![reply; envelope.recipients.len()];
            self.events.push_back(ClientEvent::Outcome(MessageOutcome {
                recipients: replies,
                dsn_passed_on: self.ext.dsn,
            }));
            self.events.push_back(ClientEvent::Ready);
            return true;
        }
        let mut mail = format!("MAIL FROM:<{}>", envelope.reverse_path);
        if self.ext.size.is_some() {
            mail.push_str(&format!(" SIZE={}", body.len()));
        }
        if envelope.eight_bit && self.ext.eight_bit_mime {
            mail.push_str(" BODY=8BITMIME");
        }
        if envelope.smtputf8 && self.ext.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        if self.ext.dsn {
            if let Some(ret) = &envelope.ret {
                mail.push_str(&format!(" RET={ret}"));
            }
            if let Some(envid) = &envelope.envid {
                mail.push_str(&format!(" ENVID={envid}"));
            }
        }
        mail.push_str("\r\n");
        // Stuffed once here, terminator included; sent when the 354 arrives.
        let stuffed = super::data::stuff(body);
        self.msg = Some(InFlight {
            rcpts: envelope.recipients.len(),
            mail: None,
            rcpt_replies: vec![None; envelope.recipients.len()],
            accepted: 0,
            body: stuffed,
        });
        let t = self.config.timeouts.command;
        self.command(mail, Expect::Mail, t, now);
        for (i, r) in envelope.recipients.iter().enumerate() {
            let mut line = format!("RCPT TO:<{}>", r.address);
            if self.ext.dsn {
                if let Some(n) = &r.notify {
                    line.push_str(&format!(" NOTIFY={n}"));
                }
                if let Some(o) = &r.orcpt {
                    line.push_str(&format!(" ORCPT={o}"));
                }
            }
            line.push_str("\r\n");
            if self.ext.pipelining {
                self.command(line, Expect::Rcpt(i), t, now);
            } else {
                self.pending_lines.push_back((line, Expect::Rcpt(i)));
            }
        }
        if self.ext.pipelining {
            self.command(
                "DATA\r\n".into(),
                Expect::Data,
                self.config.timeouts.data_init,
                now,
            );
        } else {
            self.pending_lines
                .push_back(("DATA\r\n".into(), Expect::Data));
        }
        true
    }

    /// Ends the session politely.
    pub fn quit(&mut self, now: Instant) {
        if self.done {
            return;
        }
        self.command(
            "QUIT\r\n".into(),
            Expect::Quit,
            self.config.timeouts.command,
            now,
        );
    }

    /// Appends bytes to send.
    pub fn poll_output(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.out);
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// When `handle_timeout` must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.done { None } else { self.deadline }
    }

    fn command(&mut self, line: String, expect: Expect, timeout: Duration, now: Instant) {
        self.out.extend_from_slice(line.as_bytes());
        self.expect.push_back(expect);
        self.deadline = Some(now + timeout);
    }

    fn fail(&mut self, e: ClientError) {
        // A Ready queued by an earlier reply of the same read must not start a message on a
        // session that is over.
        self.events.retain(|ev| !matches!(ev, ClientEvent::Ready));
        self.done = true;
        self.deadline = None;
        self.expect.clear();
        self.events.push_back(ClientEvent::Failed(e));
    }

    fn ready(&mut self) {
        self.deadline = None;
        self.events.push_back(ClientEvent::Ready);
    }

    fn on_reply(&mut self, reply: Reply, now: Instant) {
        let Some(expect) = self.expect.pop_front() else {
            // RFC 5321 §4.2: replies only answer commands; an unsolicited one (e.g. a 421
            // before closing) ends the session.
            self.fail(ClientError::Refused(reply));
            return;
        };
        // RFC 5321 §3.8: a 421 is the server closing the session, whatever command it answers
        // (Gmail's `421 4.7.28` rate limit comes at RCPT): the transaction is over, and the
        // reply is what its recipients get.
        if reply.code == 421 && !matches!(expect, Expect::Quit) {
            self.fail(ClientError::Refused(reply));
            return;
        }
        let t = self.config.timeouts.command;
        match expect {
            Expect::Greeting => {
                if reply.code != 220 {
                    self.fail(ClientError::Refused(reply));
                    return;
                }
                self.command(
                    format!("EHLO {}\r\n", self.config.helo),
                    Expect::Ehlo,
                    t,
                    now,
                );
            }
            Expect::Ehlo => {
                if reply.code != 250 {
                    // RFC 5321 §3.2: fall back to HELO when EHLO is not understood.
                    if reply.code >= 500 {
                        self.command(
                            format!("HELO {}\r\n", self.config.helo),
                            Expect::Helo,
                            t,
                            now,
                        );
                    } else {
                        self.fail(ClientError::Refused(reply));
                    }
                    return;
                }
                self.ext = parse_extensions(&reply);
                self.ext.pipelining &= self.config.pipelining;
                self.after_ehlo(now);
            }
            Expect::Helo => {
                if reply.code != 250 {
                    self.fail(ClientError::Refused(reply));
                    return;
                }
                if self.config.tls.requires_tls() && !self.tls_on {
                    self.fail(ClientError::TlsUnavailable(None));
                    return;
                }
                self.ready();
            }
            Expect::StartTls => {
                if reply.code != 220 {
                    if self.config.tls.requires_tls() {
                        self.fail(ClientError::TlsUnavailable(Some(reply)));
                    } else {
                        // Opportunistic: go on in plaintext (RFC 3207 §4.1 allows it).
                        self.ext.starttls = false;
                        self.after_ehlo(now);
                    }
                    return;
                }
                self.deadline = None;
                // RFC 3207 §4.2: nothing received before the handshake may be used after it.
                self.tls_pending = true;
                self.input.clear();
                self.events.push_back(ClientEvent::StartTls);
            }
            Expect::Auth => {
                if reply.code != 235 {
                    self.fail(ClientError::AuthFailed(reply));
                    return;
                }
                self.config.auth = None;
                self.ready();
            }
            Expect::Mail => {
                let Some(msg) = self.msg.as_mut() else {
                    return self.fail(ClientError::Refused(reply));
                };
                if !reply.is_positive() {
                    msg.mail = Some(reply);
                }
                self.next_unpipelined(now);
            }
            Expect::Rcpt(i) => {
                let Some(msg) = self.msg.as_mut() else {
                    return self.fail(ClientError::Refused(reply));
                };
                // RFC 5321 §4.2.1: any 2yz is a positive completion; 252 and other 2xx
                // replies accept the recipient as surely as 250 and 251 do.
                if (200..300).contains(&reply.code) {
                    msg.accepted += 1;
                } else if let Some(slot) = msg.rcpt_replies.get_mut(i) {
                    *slot = Some(reply);
                }
                self.next_unpipelined(now);
            }
            Expect::Data => {
                let Some(msg) = self.msg.as_mut() else {
                    return self.fail(ClientError::Refused(reply));
                };
                if reply.code == 354 && msg.accepted > 0 && msg.mail.is_none() {
                    let body = std::mem::take(&mut msg.body);
                    self.out.extend_from_slice(&body);
                    self.expect.push_back(Expect::Dot);
                    self.deadline = Some(now + self.config.timeouts.data_done);
                    return;
                }
                if reply.code == 354 {
                    // RFC 2920 §3.1: the server accepted DATA although no recipient was valid;
                    // send an empty message end so the transaction is discarded.
                    self.out.extend_from_slice(b".\r\n");
                    self.expect.push_back(Expect::Dot);
                    self.deadline = Some(now + self.config.timeouts.data_done);
                    if let Some(m) = self.msg.as_mut() {
                        m.accepted = 0;
                    }
                    return;
                }
                let mail_accepted = self.msg.as_ref().is_some_and(|m| m.mail.is_none());
                if mail_accepted {
                    // The server still holds the transaction MAIL opened: close it, or the next
                    // MAIL on this connection gets "503 nested MAIL".
                    self.finish_with_rset(reply, now);
                } else {
                    self.finish(reply);
                }
            }
            Expect::Dot => self.finish(reply),
            Expect::Rset => {
                if self.expect.is_empty() {
                    self.ready();
                }
            }
            Expect::Quit => {
                self.done = true;
                self.deadline = None;
                self.events.push_back(ClientEvent::Closed);
            }
        }
    }

    fn after_ehlo(&mut self, now: Instant) {
        let t = self.config.timeouts.command;
        if !self.tls_on && self.config.tls != TlsPolicy::Disabled {
            if self.ext.starttls {
                self.command("STARTTLS\r\n".into(), Expect::StartTls, t, now);
                return;
            }
            if self.config.tls.requires_tls() {
                self.fail(ClientError::TlsUnavailable(None));
                return;
            }
        }
        if let Some((user, pass)) = &self.config.auth {
            let token =
                base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"));
            self.command(format!("AUTH PLAIN {token}\r\n"), Expect::Auth, t, now);
            return;
        }
        self.ready();
    }

    fn next_unpipelined(&mut self, now: Instant) {
        if self.ext.pipelining {
            return;
        }
        // Without PIPELINING each command waits for the previous reply (RFC 5321 §4.3).
        let mail_failed = self.msg.as_ref().is_some_and(|m| m.mail.is_some());
        if mail_failed {
            self.pending_lines.clear();
            let reply = self.msg.as_ref().and_then(|m| m.mail.clone());
            if let Some(reply) = reply {
                self.finish(reply);
            }
            return;
        }
        if let Some((line, expect)) = self.pending_lines.pop_front() {
            let no_rcpt = matches!(expect, Expect::Data)
                && self.msg.as_ref().is_some_and(|m| m.accepted == 0);
            if no_rcpt {
                // Every recipient was refused: no DATA; RSET closes the transaction.
                let reply = Reply::new(554, None, "no recipient accepted");
                self.finish_with_rset(reply, now);
                return;
            }
            let t = match expect {
                Expect::Data => self.config.timeouts.data_init,
                _ => self.config.timeouts.command,
            };
            self.command(line, expect, t, now);
        }
    }

    fn finish_with_rset(&mut self, reply: Reply, now: Instant) {
        self.emit_outcome(reply);
        self.command(
            "RSET\r\n".into(),
            Expect::Rset,
            self.config.timeouts.command,
            now,
        );
    }

    fn finish(&mut self, final_reply: Reply) {
        if !self.expect.is_empty() {
            // Pipelined replies still to come for this transaction (e.g. RCPT after a failed
            // MAIL); the outcome is reported after the DATA reply.
            if matches!(
                self.expect.front(),
                Some(Expect::Rcpt(_)) | Some(Expect::Data)
            ) {
                return;
            }
        }
        self.emit_outcome(final_reply);
        if self.expect.is_empty() {
            self.ready();
        }
    }

    fn emit_outcome(&mut self, final_reply: Reply) {
        let Some(msg) = self.msg.take() else { return };
        let recipients = (0..msg.rcpts)
            .map(|i| {
                if let Some(m) = &msg.mail {
                    return m.clone();
                }
                msg.rcpt_replies
                    .get(i)
                    .cloned()
                    .flatten()
                    .unwrap_or_else(|| final_reply.clone())
            })
            .collect();
        self.events.push_back(ClientEvent::Outcome(MessageOutcome {
            recipients,
            dsn_passed_on: self.ext.dsn,
        }));
    }
}

fn parse_extensions(reply: &Reply) -> Extensions {
    let mut ext = Extensions::default();
    for line in reply.lines.iter().skip(1) {
        let mut words = line.split_whitespace();
        let Some(keyword) = words.next() else {
            continue;
        };
        match keyword.to_ascii_uppercase().as_str() {
            "PIPELINING" => ext.pipelining = true,
            "STARTTLS" => ext.starttls = true,
            "8BITMIME" => ext.eight_bit_mime = true,
            "SMTPUTF8" => ext.smtputf8 = true,
            "DSN" => ext.dsn = true,
            "SIZE" => ext.size = Some(words.next().and_then(|w| w.parse().ok()).unwrap_or(0)),
            "AUTH" => ext.auth_plain = words.any(|w| w.eq_ignore_ascii_case("PLAIN")),
            _ => {}
        }
    }
    ext
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ids::QueueId;
    use crate::smtp::{Event, PeerInfo, PortRole, ServerSession, SessionConfig, SessionLimits};

    fn config(pipelining: bool) -> ClientConfig {
        ClientConfig {
            helo: "client.test".into(),
            tls: TlsPolicy::Disabled,
            pipelining,
            auth: None,
            timeouts: ClientTimeouts::default(),
            reply_limits: ReplyLimits::default(),
        }
    }

    fn envelope(rcpts: &[&str]) -> OutboundEnvelope {
        OutboundEnvelope {
            reverse_path: "a@client.test".into(),
            recipients: rcpts
                .iter()
                .map(|r| OutboundRecipient {
                    address: (*r).into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    /// An in-memory pair: our client against our server, bytes moved by hand, commits
    /// answered at once. Returns every outcome, in order.
    fn run_pair(trusted: bool, pipelining: bool, messages: &[(&[&str], &[u8])]) -> Vec<Vec<u16>> {
        let now = Instant::now();
        let server_config = Arc::new(SessionConfig {
            hostname: "mx.test".into(),
            role: PortRole::Relay,
            limits: SessionLimits::default(),
            starttls_available: false,
            feedback_domain: None,
        });
        let peer = PeerInfo {
            addr: "127.0.0.1:1000".parse().unwrap(),
            is_trusted: trusted,
        };
        let mut server = ServerSession::new(server_config, peer, None, now);
        let mut client = ClientSession::new(config(pipelining), false, now);
        let mut outcomes = Vec::new();
        let mut next = 0;
        let mut buf = Vec::new();
        for _ in 0..1000 {
            buf.clear();
            server.poll_output(&mut buf);
            if !buf.is_empty() {
                client.handle_input(&buf, now);
            }
            while let Some(ev) = client.poll_event() {
                match ev {
                    ClientEvent::Ready => {
                        if let Some((rcpts, body)) = messages.get(next) {
                            assert!(client.send_message(&envelope(rcpts), body, now));
                            next += 1;
                        } else {
                            client.quit(now);
                        }
                    }
                    ClientEvent::Outcome(o) => {
                        outcomes.push(o.recipients.iter().map(|r| r.code).collect())
                    }
                    ClientEvent::Closed => return outcomes,
                    other => panic!("unexpected {other:?}"),
                }
            }
            buf.clear();
            client.poll_output(&mut buf);
            let mut pos = 0;
            while pos < buf.len() {
                let used = server.handle_input(&buf[pos..], now);
                pos += used;
                while let Some(ev) = server.poll_event() {
                    if let Event::Commit(txn, _) = ev {
                        server.handle_commit(txn, Ok(QueueId(7)), now);
                    }
                }
                if used == 0 {
                    break;
                }
            }
        }
        panic!("pair did not finish: {outcomes:?}");
    }

    #[test]
    fn pipelined_and_sequential_transactions_deliver() {
        for pipelining in [true, false] {
            let out = run_pair(
                true,
                pipelining,
                &[
                    (
                        &["b@example.net", "c@example.net"],
                        b"Subject: x\r\n\r\n.dot\r\n",
                    ),
                    (&["d@example.net"], b"hi\r\n"),
                ],
            );
            assert_eq!(
                out,
                vec![vec![250, 250], vec![250]],
                "pipelining={pipelining}"
            );
        }
    }

    #[test]
    fn refused_recipients_then_a_second_message_on_the_same_connection() {
        // Untrusted relay client: every RCPT gets 554; DATA is refused while MAIL stays open on
        // the server, so the client must RSET before the next MAIL (no "503 nested MAIL").
        for pipelining in [true, false] {
            let out = run_pair(
                false,
                pipelining,
                &[
                    (&["b@example.net"], b"x\r\n"),
                    (&["c@example.net"], b"y\r\n"),
                ],
            );
            assert_eq!(out, vec![vec![554], vec![554]], "pipelining={pipelining}");
        }
    }

    #[test]
    fn plaintext_after_the_starttls_220_is_discarded() {
        let now = Instant::now();
        let mut c = ClientSession::new(
            ClientConfig {
                tls: TlsPolicy::Required,
                ..config(true)
            },
            false,
            now,
        );
        c.handle_input(b"220 mx ESMTP\r\n", now);
        let mut out = Vec::new();
        c.poll_output(&mut out);
        assert_eq!(out, b"EHLO client.test\r\n");
        out.clear();
        c.handle_input(b"250-mx\r\n250 STARTTLS\r\n", now);
        c.poll_output(&mut out);
        assert_eq!(out, b"STARTTLS\r\n");
        // An injected reply in the same segment as the 220 must not be taken as the EHLO answer
        // after the handshake.
        c.handle_input(b"220 go ahead\r\n250-evil\r\n250 AUTH PLAIN\r\n", now);
        assert_eq!(c.poll_event(), Some(ClientEvent::StartTls));
        c.handle_tls_established(now);
        out.clear();
        c.poll_output(&mut out);
        assert_eq!(out, b"EHLO client.test\r\n");
        c.handle_input(b"250-mx\r\n250 PIPELINING\r\n", now);
        assert_eq!(c.poll_event(), Some(ClientEvent::Ready));
        assert!(c.extensions().pipelining);
    }

    /// Regression (issue 23, bug 7): a recipient accepted with 252 was counted as refused, so a
    /// lone one got an empty transaction (just ".") and was then recorded as delivered.
    #[test]
    fn a_252_recipient_gets_the_message_body() {
        for pipelining in [true, false] {
            let now = Instant::now();
            let mut c = ClientSession::new(config(pipelining), false, now);
            let ext = if pipelining {
                "250-mx\r\n250 PIPELINING\r\n"
            } else {
                "250 mx\r\n"
            };
            c.handle_input(b"220 mx\r\n", now);
            c.handle_input(ext.as_bytes(), now);
            assert_eq!(c.poll_event(), Some(ClientEvent::Ready));
            assert!(c.send_message(
                &envelope(&["b@x.example"]),
                b"Subject: s\r\n\r\nbody\r\n",
                now
            ));
            let mut out = Vec::new();
            c.poll_output(&mut out);
            c.handle_input(b"250 2.1.0 ok\r\n", now);
            c.poll_output(&mut out);
            c.handle_input(b"252 2.1.5 cannot verify, will accept\r\n", now);
            c.poll_output(&mut out);
            out.clear();
            c.handle_input(b"354 go\r\n", now);
            c.poll_output(&mut out);
            assert_eq!(
                String::from_utf8_lossy(&out),
                "Subject: s\r\n\r\nbody\r\n.\r\n",
                "pipelining={pipelining}"
            );
            c.handle_input(b"250 2.0.0 queued\r\n", now);
            let Some(ClientEvent::Outcome(o)) = c.poll_event() else {
                panic!("no outcome, pipelining={pipelining}");
            };
            assert_eq!(o.recipients[0].code, 250);
        }
    }

    #[test]
    fn a_failure_cancels_a_queued_ready() {
        let now = Instant::now();
        let mut c = ClientSession::new(config(true), false, now);
        c.handle_input(b"220 mx\r\n", now);
        c.handle_input(b"250 mx\r\n", now);
        assert_eq!(c.poll_event(), Some(ClientEvent::Ready));
        assert!(c.send_message(&envelope(&["b@x.example"]), b"x\r\n", now));
        let mut out = Vec::new();
        c.poll_output(&mut out);
        // The final reply and an unsolicited 421 arrive in one read.
        c.handle_input(b"250 ok\r\n250 ok\r\n354 go\r\n", now);
        c.poll_output(&mut out);
        c.handle_input(b"250 queued\r\n421 bye\r\n", now);
        assert!(matches!(c.poll_event(), Some(ClientEvent::Outcome(_))));
        assert!(matches!(c.poll_event(), Some(ClientEvent::Failed(_))));
        assert_eq!(c.poll_event(), None);
        assert!(!c.send_message(&envelope(&["c@x.example"]), b"y\r\n", now));
    }

    #[test]
    fn a_421_at_rcpt_ends_the_session_with_that_reply() {
        let now = Instant::now();
        let mut c = ClientSession::new(config(true), false, now);
        c.handle_input(b"220 mx\r\n", now);
        c.handle_input(b"250 mx\r\n", now);
        assert_eq!(c.poll_event(), Some(ClientEvent::Ready));
        assert!(c.send_message(&envelope(&["a@x.example", "b@x.example"]), b"x\r\n", now));
        let mut out = Vec::new();
        c.poll_output(&mut out);
        // The server takes the first recipient, then rate-limits and hangs up.
        c.handle_input(b"250 ok\r\n250 ok\r\n421 4.7.28 rate limited\r\n", now);
        let Some(ClientEvent::Failed(ClientError::Refused(r))) = c.poll_event() else {
            panic!("the 421 must end the session");
        };
        assert_eq!(
            (r.code, r.one_line().as_str()),
            (421, "421 4.7.28 rate limited")
        );
        assert_eq!(c.poll_event(), None);
        assert!(!c.send_message(&envelope(&["c@x.example"]), b"y\r\n", now));
    }

    #[test]
    fn a_4xx_for_one_recipient_is_reported_for_that_recipient_only() {
        // Our server allows 2 recipients: the third gets 452 4.5.3, the others are delivered.
        let now = Instant::now();
        let server_config = Arc::new(SessionConfig {
            hostname: "mx.test".into(),
            role: PortRole::Relay,
            limits: SessionLimits {
                max_recipients: 2,
                ..SessionLimits::default()
            },
            starttls_available: false,
            feedback_domain: None,
        });
        let peer = PeerInfo {
            addr: "127.0.0.1:1000".parse().unwrap(),
            is_trusted: true,
        };
        let mut server = ServerSession::new(server_config, peer, None, now);
        let mut client = ClientSession::new(config(true), false, now);
        let mut buf = Vec::new();
        let mut outcome = None;
        for _ in 0..50 {
            buf.clear();
            server.poll_output(&mut buf);
            client.handle_input(&buf, now);
            while let Some(ev) = client.poll_event() {
                match ev {
                    ClientEvent::Ready if outcome.is_none() => {
                        assert!(client.send_message(
                            &envelope(&["a@x.example", "b@x.example", "c@x.example"]),
                            b"x\r\n",
                            now
                        ));
                    }
                    ClientEvent::Ready => client.quit(now),
                    ClientEvent::Outcome(o) => outcome = Some(o),
                    _ => {}
                }
            }
            buf.clear();
            client.poll_output(&mut buf);
            server.handle_input(&buf, now);
            while let Some(ev) = server.poll_event() {
                if let Event::Commit(txn, t) = ev {
                    assert_eq!(t.recipients.len(), 2);
                    server.handle_commit(txn, Ok(QueueId(9)), now);
                }
            }
        }
        let codes: Vec<u16> = outcome
            .expect("an outcome")
            .recipients
            .iter()
            .map(|r| r.code)
            .collect();
        assert_eq!(codes, [250, 250, 452]);
    }

    #[test]
    fn a_server_that_stops_answering_times_out() {
        let now = Instant::now();
        let mut c = ClientSession::new(config(true), false, now);
        c.handle_input(b"220 mx\r\n250 mx\r\n", now);
        assert_eq!(c.poll_event(), Some(ClientEvent::Ready));
        assert!(c.send_message(&envelope(&["b@x.example"]), b"x\r\n", now));
        let deadline = c
            .poll_timeout()
            .expect("a deadline while waiting for MAIL's reply");
        c.handle_timeout(deadline - std::time::Duration::from_millis(1));
        assert_eq!(c.poll_event(), None, "not before the deadline");
        c.handle_timeout(deadline);
        assert_eq!(
            c.poll_event(),
            Some(ClientEvent::Failed(ClientError::Timeout))
        );
        assert_eq!(c.poll_timeout(), None);
    }

    #[test]
    fn smtputf8_message_to_a_server_without_it_fails_with_5_6_7() {
        let now = Instant::now();
        let mut c = ClientSession::new(config(true), false, now);
        c.handle_input(b"220 mx\r\n250-mx\r\n250 8BITMIME\r\n", now);
        assert_eq!(c.poll_event(), Some(ClientEvent::Ready));
        let mut out = Vec::new();
        c.poll_output(&mut out);
        out.clear();
        let env = OutboundEnvelope {
            smtputf8: true,
            ..envelope(&["jos\u{e9}@x.example"])
        };
        assert!(c.send_message(&env, b"x\r\n", now));
        c.poll_output(&mut out);
        assert!(out.is_empty());
        match c.poll_event() {
            Some(ClientEvent::Outcome(o)) => {
                assert_eq!(o.recipients[0].code, 553);
                assert_eq!(
                    o.recipients[0].enhanced,
                    Some(super::super::EnhancedCode::new(5, 6, 7))
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn server_size_limit_is_honoured_before_sending() {
        let now = Instant::now();
        let mut c = ClientSession::new(config(true), false, now);
        c.handle_input(b"220 mx\r\n250-mx\r\n250 SIZE 10\r\n", now);
        assert_eq!(c.poll_event(), Some(ClientEvent::Ready));
        let mut out = Vec::new();
        c.poll_output(&mut out);
        out.clear();
        assert!(c.send_message(
            &envelope(&["b@x.example"]),
            b"far more than ten bytes\r\n",
            now
        ));
        c.poll_output(&mut out);
        assert!(
            out.is_empty(),
            "nothing sent: {:?}",
            String::from_utf8_lossy(&out)
        );
        match c.poll_event() {
            Some(ClientEvent::Outcome(o)) => assert_eq!(o.recipients[0].code, 552),
            other => panic!("{other:?}"),
        }
    }
}
