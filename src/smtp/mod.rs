//! Sans-IO SMTP server session (RFC 5321 with ESMTP extensions).
//!
//! This module turns bytes and timestamps into reply bytes, events and deadlines. It never
//! touches a socket, file, clock, thread or random source: time arrives as `Instant`
//! parameters and everything the session waits for (credential checks, spool commits, TLS
//! handshakes) leaves as an [`Event`] and comes back through a `handle_*` call.
//!
//! Invariants: every buffer grown by peer input is bounded by [`SessionLimits`]; peer input can
//! produce an error reply or a closed session, never a panic; `250` after DATA/BDAT is sent only
//! from [`ServerSession::handle_commit`].

mod address;
pub mod client;
mod command;
mod data;
mod envelope;
mod error;
mod limits;
mod reply;
mod server;

pub use address::{AddressError, Domain, Mailbox, ReversePath, SenderPattern};
pub use command::{AuthMechanism, Command, MailParams, RcptParams, decode_xtext};
pub use data::{BdatReceiver, DataReceiver, DotStuffer, Status, stuff};
pub use envelope::{BodyType, DeliverBy, Notify, Recipient, Ret, Transaction};
pub use error::{ConnectionRefused, ProtocolError, Sequence, SyntaxError};
pub use limits::SessionLimits;
pub use reply::{EnhancedCode, Reply, ReplyLimits, ReplyParseError, ReplyStatus};
pub use server::{
    AuthOutcome, AuthUser, CommitError, Event, PeerInfo, PortRole, RecipientCheck, ServerSession,
    SessionConfig, TlsInfo,
};
