//! The accepted transaction handed to the spool: envelope, DSN parameters and body.
//!
//! Plain data, no behaviour: the server session fills it in and moves it out in
//! [`Event::Commit`](super::Event::Commit).

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
    /// Accepted recipients, in RCPT order; never empty.
    pub recipients: Vec<Recipient>,
    /// The message: un-stuffed, every line ending CRLF, at most `max_message_size` bytes.
    pub body: Vec<u8>,
}
