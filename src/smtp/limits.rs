//! Per-session limits for the SMTP server.
//!
//! Every buffer and counter that peer input can grow is bounded by a field here, so the bounds
//! live in the pure protocol layer where they are unit-tested. Defaults are safe: finite sizes and
//! finite timeouts.

use std::time::Duration;

/// Bounds applied to one SMTP server session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    /// Longest command line accepted, CRLF included. RFC 5321 §4.5.3.1.4 sets 512 octets and
    /// allows extensions to raise it; the default is 2048 to leave room for ESMTP parameters.
    pub max_line_length: usize,
    /// Most bytes of stored (un-stuffed, normalised) body; also advertised as `SIZE`.
    pub max_message_size: usize,
    /// Most accepted recipients in one transaction.
    pub max_recipients: usize,
    /// Syntax and sequence errors tolerated; one more closes the session with `421 4.7.0`.
    pub max_bad_commands: u32,
    /// Failed authentications per session; reaching it closes the session with `421 4.7.0`.
    pub max_auth_failures: u32,
    /// Time allowed between command bytes (RFC 5321 §4.5.3.2.7 asks for at least 5 minutes).
    pub command_timeout: Duration,
    /// Time allowed between chunks of DATA or BDAT payload (RFC 5321 §4.5.3.2.6).
    pub data_timeout: Duration,
    /// Slowest average transfer rate, in bytes per second, of a DATA body or a BDAT
    /// transaction once `data_timeout` has passed since it began: the deadline is
    /// `start + data_timeout + bytes / min_data_rate`. Bounds how long a client dripping a body
    /// can hold a session, where the idle timeout alone is reset by every byte. 0 turns it off.
    pub min_data_rate: u64,
    /// NOOP, RSET, VRFY and HELP commands allowed since the last accepted message; beyond it
    /// each one also counts toward `max_bad_commands` (as Postfix's `smtpd_junk_command_limit`),
    /// so a client cannot hold a session forever with keep-alives.
    pub max_junk_commands: u32,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            max_line_length: 2048,
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 1000,
            max_bad_commands: 20,
            max_auth_failures: 3,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(300),
            min_data_rate: 1000,
            max_junk_commands: 100,
        }
    }
}
