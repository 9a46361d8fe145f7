//! The accepted transaction handed to the spool: envelope, DSN parameters and body.
//!
//! Plain data: the server session fills it in and moves it out in
//! [`Event::Commit`](super::Event::Commit). The DSN parameters also know their RFC 3461
//! meaning and their one-byte spool encoding, so nothing else decodes bits by hand.

use std::net::SocketAddr;

use super::address::{Mailbox, ReversePath};
use super::server::TlsInfo;

/// The `BODY=` MAIL parameter (RFC 6152).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BodyType {
    /// `BODY=7BIT` or no parameter.
    SevenBit,
    /// `BODY=8BITMIME`.
    EightBitMime,
}

/// The `RET=` MAIL parameter (RFC 3461 §4.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ret {
    /// Return the full message in a DSN.
    Full,
    /// Return only the headers.
    Hdrs,
}

/// The `NOTIFY=` RCPT parameter (RFC 3461 §4.1). All false means the parameter was not given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Notify {
    /// `NEVER`; exclusive with the other three.
    pub never: bool,
    /// `SUCCESS`.
    pub success: bool,
    /// `FAILURE`.
    pub failure: bool,
    /// `DELAY`.
    pub delay: bool,
}

impl Notify {
    /// Spool bit for `NEVER`.
    pub const NEVER: u8 = 1;
    /// Spool bit for `SUCCESS`.
    pub const SUCCESS: u8 = 2;
    /// Spool bit for `FAILURE`.
    pub const FAILURE: u8 = 4;
    /// Spool bit for `DELAY`.
    pub const DELAY: u8 = 8;

    /// The one-byte spool encoding; 0 means the parameter was not given.
    pub const fn bits(self) -> u8 {
        ((self.never as u8) * Notify::NEVER)
            | ((self.success as u8) * Notify::SUCCESS)
            | ((self.failure as u8) * Notify::FAILURE)
            | ((self.delay as u8) * Notify::DELAY)
    }

    /// Decodes [`Notify::bits`]; unknown bits are ignored.
    pub const fn from_bits(bits: u8) -> Notify {
        Notify {
            never: bits & Notify::NEVER != 0,
            success: bits & Notify::SUCCESS != 0,
            failure: bits & Notify::FAILURE != 0,
            delay: bits & Notify::DELAY != 0,
        }
    }

    /// Whether the client gave the parameter at all.
    pub const fn given(self) -> bool {
        self.never || self.success || self.failure || self.delay
    }

    /// Whether a failure is reported: RFC 3461 §4.1 makes `FAILURE,DELAY` the default, and
    /// `NEVER` silences everything.
    pub const fn reports_failure(self) -> bool {
        !self.never && (!self.given() || self.failure)
    }

    /// Whether a delay is reported (same default as [`Notify::reports_failure`]).
    pub const fn reports_delay(self) -> bool {
        !self.never && (!self.given() || self.delay)
    }

    /// Whether a success is reported: only when asked for.
    pub const fn reports_success(self) -> bool {
        !self.never && self.success
    }

    /// The ESMTP value to pass on to the next hop (`NEVER`, or a comma list), `None` when the
    /// client gave none (RFC 3461 §4.1: a relay passes NOTIFY on only as it received it).
    pub fn param(self) -> Option<String> {
        if !self.given() {
            return None;
        }
        if self.never {
            return Some("NEVER".into());
        }
        let words = [
            (self.success, "SUCCESS"),
            (self.failure, "FAILURE"),
            (self.delay, "DELAY"),
        ];
        let list: Vec<&str> = words
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, w)| *w)
            .collect();
        Some(list.join(","))
    }
}

impl Ret {
    /// The one-byte spool encoding of an optional `RET=`: 0 not given, 1 `FULL`, 2 `HDRS`.
    pub const fn to_byte(ret: Option<Ret>) -> u8 {
        match ret {
            None => 0,
            Some(Ret::Full) => 1,
            Some(Ret::Hdrs) => 2,
        }
    }

    /// Decodes [`Ret::to_byte`]; an unknown byte reads as not given.
    pub const fn from_byte(byte: u8) -> Option<Ret> {
        match byte {
            1 => Some(Ret::Full),
            2 => Some(Ret::Hdrs),
            _ => None,
        }
    }

    /// The ESMTP value.
    pub const fn param(self) -> &'static str {
        match self {
            Ret::Full => "FULL",
            Ret::Hdrs => "HDRS",
        }
    }
}

/// One accepted recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recipient {
    /// The RCPT TO mailbox, source route dropped.
    pub forward_path: Mailbox,
    /// DSN notification request.
    pub notify: Notify,
    /// `ORCPT=` decoded as `addr-type;address` (RFC 3461 §4.2), xtext removed.
    pub orcpt: Option<String>,
}

/// RFC 2852 `BY=` on MAIL: deliver within `seconds` of the MAIL command, or else.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeliverBy {
    /// The by-time in seconds (positive for `R`; may be zero or negative for `N`).
    pub seconds: i64,
    /// `R`: return the message (failure DSN) when the time passes. `N`: notify (delay DSN)
    /// and keep trying.
    pub return_on_expiry: bool,
    /// The `T` trace modifier.
    pub trace: bool,
}

/// A complete message waiting to be made durable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transaction {
    /// The EHLO/HELO argument.
    pub helo: String,
    /// Whether the client greeted with EHLO.
    pub esmtp: bool,
    /// The client's address.
    pub peer: SocketAddr,
    /// TLS parameters when the session is encrypted.
    pub tls: Option<TlsInfo>,
    /// The authenticated user name, if any.
    pub auth_user: Option<String>,
    /// MAIL FROM.
    pub reverse_path: ReversePath,
    /// `BODY=`.
    pub body_type: BodyType,
    /// `SMTPUTF8` was given on MAIL (RFC 6531).
    pub smtputf8: bool,
    /// `RET=`.
    pub ret: Option<Ret>,
    /// `ENVID=`, xtext decoded.
    pub envid: Option<String>,
    /// `BY=` (RFC 2852 DELIVERBY).
    pub deliver_by: Option<DeliverBy>,
    /// `MT-PRIORITY=` (RFC 6710), -9..=9.
    pub mt_priority: Option<i8>,
    /// Accepted recipients, in RCPT order; never empty.
    pub recipients: Vec<Recipient>,
    /// The recipients are VERP feedback addresses: the message is a report to read, not mail
    /// to relay (`delivery.bounce_domain`).
    pub feedback: bool,
    /// The message: un-stuffed, every line ending CRLF, at most `max_message_size` bytes.
    pub body: Vec<u8>,
}

impl Transaction {
    /// A message ringmta builds itself (an HTTP injection, a TLS report): from `sender` to
    /// `recipients` with default NOTIFY, 8-bit body, no TLS, no DSN parameters.
    pub fn built(
        (helo, peer): (String, std::net::SocketAddr),
        auth_user: Option<String>,
        sender: super::Mailbox,
        recipients: Vec<super::Mailbox>,
        body: Vec<u8>,
    ) -> Transaction {
        Transaction {
            helo,
            esmtp: true,
            peer,
            tls: None,
            auth_user,
            reverse_path: super::ReversePath::Mailbox(sender),
            body_type: BodyType::EightBitMime,
            smtputf8: false,
            ret: None,
            envid: None,
            deliver_by: None,
            mt_priority: None,
            recipients: recipients
                .into_iter()
                .map(|m| Recipient {
                    forward_path: m,
                    notify: Notify::default(),
                    orcpt: None,
                })
                .collect(),
            feedback: false,
            body,
        }
    }
}
