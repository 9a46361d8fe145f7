//! `[limits]`: what one client, one session and one message may use.

use std::time::Duration;

use super::raw::RawLimits;
use super::resolved::Resolver;

/// Session and connection limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest stored message in bytes.
    pub max_message_size: usize,
    /// Recipients per transaction.
    pub max_recipients: usize,
    /// Longest command line, CRLF included.
    pub max_line_length: usize,
    /// Bad commands before 421.
    pub max_bad_commands: u32,
    /// Wait for a command.
    pub command_timeout: Duration,
    /// Wait between data chunks.
    pub data_timeout: Duration,
    /// Connections per worker thread.
    pub max_connections_per_core: usize,
    /// Connections from one untrusted IP per worker.
    pub max_connections_per_ip: usize,
    /// Failed AUTH per session before 421.
    pub max_auth_failures: u32,
    /// Largest header section in bytes.
    pub max_header_size: usize,
    /// Failed AUTH per IP within the window before throttling.
    pub auth_failures_per_ip: u32,
    /// Window of the per-IP count.
    pub auth_failure_window: Duration,
    /// New connections per untrusted IP within `rate_window`; 0 = unlimited.
    pub connection_rate_per_ip: u32,
    /// MAIL commands per untrusted IP (authenticated or not) within `rate_window`; 0 = unlimited.
    pub message_rate_per_ip: u32,
    /// Window of the two rate limits.
    pub rate_window: Duration,
    /// Bytes per second a DATA/BDAT transfer must average after `data_timeout`; 0 = off.
    pub min_data_rate: u64,
    /// Most nested MIME containers.
    pub max_mime_depth: usize,
    /// Most MIME body parts.
    pub max_mime_parts: usize,
    /// Keep-alive commands since the last accepted message before they count as bad.
    pub max_junk_commands: u32,
}

impl Limits {
    /// The limits, defaults applied and checked.
    pub(super) fn resolve(r: &mut Resolver, l: &RawLimits) -> Limits {
        let max_message_size = r.size(
            "limits.max_message_size",
            l.max_message_size.as_ref(),
            25_000_000,
        );
        let limits = Limits {
            max_message_size: usize::try_from(max_message_size).unwrap_or(usize::MAX),
            max_recipients: l.max_recipients.unwrap_or(1000),
            max_line_length: l.max_line_length.unwrap_or(2048),
            max_bad_commands: l.max_bad_commands.unwrap_or(20),
            command_timeout: r.duration(
                "limits.command_timeout",
                l.command_timeout.as_ref(),
                Duration::from_secs(300),
            ),
            data_timeout: r.duration(
                "limits.data_timeout",
                l.data_timeout.as_ref(),
                Duration::from_secs(300),
            ),
            max_connections_per_core: l.max_connections_per_core.unwrap_or(10_000),
            max_connections_per_ip: l.max_connections_per_ip.unwrap_or(100).max(1),
            max_auth_failures: l.max_auth_failures.unwrap_or(3),
            max_header_size: r.size(
                "limits.max_header_size",
                l.max_header_size.as_ref(),
                256_000,
            ) as usize,
            auth_failures_per_ip: l.auth_failures_per_ip.unwrap_or(10),
            auth_failure_window: r.duration(
                "limits.auth_failure_window",
                l.auth_failure_window.as_ref(),
                Duration::from_secs(300),
            ),
            connection_rate_per_ip: l.connection_rate_per_ip.unwrap_or(0),
            message_rate_per_ip: l.message_rate_per_ip.unwrap_or(0),
            rate_window: r.duration(
                "limits.rate_window",
                l.rate_window.as_ref(),
                Duration::from_secs(60),
            ),
            min_data_rate: r.size("limits.min_data_rate", l.min_data_rate.as_ref(), 1000),
            max_mime_depth: l.max_mime_depth.unwrap_or(100),
            max_mime_parts: l.max_mime_parts.unwrap_or(10_000),
            max_junk_commands: l.max_junk_commands.unwrap_or(100),
        };
        if limits.rate_window.is_zero() {
            r.problem("limits.rate_window", "must be more than 0");
        }
        if limits.max_recipients == 0 {
            r.problem("limits.max_recipients", "must be at least 1");
        }
        if limits.max_line_length < 512 {
            r.problem(
                "limits.max_line_length",
                "must be at least 512 (RFC 5321 §4.5.3.1.4)",
            );
        }
        if limits.max_message_size == 0 {
            r.problem("limits.max_message_size", "must be more than 0");
        }
        limits
    }
}
