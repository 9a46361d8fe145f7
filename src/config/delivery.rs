//! `[delivery]`: routes, name servers, the retry policy, connection limits, timeouts and the
//! outbound TLS policy.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::RawDelivery;
use super::resolved::Resolver;
use crate::queue::schedule::{RetryPolicy, RetryPolicyError};
use crate::queue::throttle::ThrottlePolicy;
use crate::smtp::client::TlsPolicy;

/// A static route entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Lower-case domain, or `*`.
    pub domain: String,
    /// `host:port` of the next hop.
    pub next_hop: String,
}

/// Longest `delivery.connection_idle_time`: a server may drop an idle client after 5 minutes.
const MAX_CONNECTION_IDLE_TIME: Duration = Duration::from_secs(300);

/// Outbound delivery settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliverySettings {
    /// Static routes, checked before DNS.
    pub routes: Vec<Route>,
    /// DNS servers; empty = system resolver.
    pub nameservers: Vec<SocketAddr>,
    /// `retry_schedule`, `max_queue_lifetime` and `delay_notice_after`, checked by
    /// [`RetryPolicy::new`].
    pub retry: RetryPolicy,
    /// Connections per destination.
    pub max_connections: usize,
    /// Messages per outbound connection.
    pub max_messages_per_connection: usize,
    /// Recipients per outbound transaction.
    pub max_recipients_per_transaction: usize,
    /// JSON-lines event log path.
    pub event_log: PathBuf,
    /// Port of MX hosts.
    pub smtp_port: u16,
    /// Outbound STARTTLS policy.
    pub tls: TlsPolicy,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Wait for a command reply.
    pub command_timeout: Duration,
    /// Wait for the end-of-data reply.
    pub data_timeout: Duration,
    /// An open connection with nothing to send waits this long for a message before QUIT.
    pub connection_idle_time: Duration,
    /// Operator bounce rules file.
    pub bounce_rules: Option<PathBuf>,
    /// STARTTLS policy overrides by lower-case recipient domain.
    pub route_tls: Vec<(String, TlsPolicy)>,
    /// PEM certificates trusted for `verify` besides the system's roots (read at start).
    pub tls_ca_file: Option<PathBuf>,
    /// Honour recipient domains' MTA-STS policies.
    pub mta_sts: bool,
    /// Port of the MTA-STS policy hosts (443; another for tests or a local proxy).
    pub mta_sts_https_port: u16,
    /// Honour MX hosts' DNSSEC-validated TLSA records (DANE, RFC 7672).
    pub dane: bool,
    /// The VERP bounce domain (lower case), when bounces and complaints are processed.
    pub bounce_domain: Option<String>,
    /// SMTP TLS reporting (RFC 8460): off, or the period and the sender of mailed reports
    /// (default `tls-reports@<hostname>`).
    pub tls_rpt: Option<(Duration, Option<String>)>,
    /// Messages per second per destination site, whole process; 0 = unlimited.
    pub max_messages_per_second: u32,
    /// The reaction to `rate_limited` and `blocklisted` replies.
    pub throttle: ThrottlePolicy,
    /// The default egress pool (checked against `[[egress.pools]]`).
    pub egress_pool: Option<String>,
}

impl DeliverySettings {
    /// The delivery settings, defaults applied and checked; the event log defaults to a file
    /// in `spool_dir`.
    pub(super) fn resolve(r: &mut Resolver, d: &RawDelivery, spool_dir: &Path) -> DeliverySettings {
        let mut routes = Vec::new();
        for (domain, hop) in d.routes.iter().flatten() {
            if !hop.contains(':') {
                r.problem(
                    format!("delivery.routes.{domain}"),
                    format!("{hop:?} must be host:port"),
                );
            }
            routes.push(Route {
                domain: domain.to_ascii_lowercase(),
                next_hop: hop.clone(),
            });
        }
        let mut nameservers = Vec::new();
        for (i, s) in d.nameservers.iter().flatten().enumerate() {
            match s.parse::<SocketAddr>() {
                Ok(a) => nameservers.push(a),
                Err(_) => r.problem(
                    format!("delivery.nameservers[{i}]"),
                    format!("{s:?} is not an ip:port address"),
                ),
            }
        }
        let defaults = RetryPolicy::default();
        let retry_schedule = match &d.retry_schedule {
            None => defaults.schedule.clone(),
            Some(steps) => steps
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let key = format!("delivery.retry_schedule[{i}]");
                    r.duration(&key, Some(s), defaults.schedule[0])
                })
                .collect(),
        };
        let max_queue_lifetime = r.duration(
            "delivery.max_queue_lifetime",
            d.max_queue_lifetime.as_ref(),
            defaults.max_lifetime,
        );
        let delay_notice_after = r.duration(
            "delivery.delay_notice_after",
            d.delay_notice_after.as_ref(),
            defaults.delay_notice_after,
        );
        let retry = RetryPolicy::new(retry_schedule, max_queue_lifetime, delay_notice_after)
            .unwrap_or_else(|e| {
                let key = match e {
                    RetryPolicyError::EmptySchedule => "delivery.retry_schedule".to_owned(),
                    RetryPolicyError::ZeroStep { index, .. }
                    | RetryPolicyError::DecreasingStep { index, .. } => {
                        format!("delivery.retry_schedule[{index}]")
                    }
                };
                r.problem(key, e.to_string());
                defaults
            });
        let mut delivery = DeliverySettings {
            routes,
            nameservers,
            retry,
            max_connections: d.max_connections.unwrap_or(16).max(1),
            max_messages_per_connection: d.max_messages_per_connection.unwrap_or(100).max(1),
            max_recipients_per_transaction: d.max_recipients_per_transaction.unwrap_or(100).max(1),
            event_log: d
                .event_log
                .as_ref()
                .map(PathBuf::from)
                .unwrap_or_else(|| spool_dir.join("events.jsonl")),
            smtp_port: d.smtp_port.unwrap_or(25),
            tls: d.tls.as_deref().map_or(TlsPolicy::Opportunistic, |policy| {
                outbound_tls(r, "delivery.tls".into(), policy)
            }),
            connect_timeout: r.duration(
                "delivery.connect_timeout",
                d.connect_timeout.as_ref(),
                Duration::from_secs(30),
            ),
            command_timeout: r.duration(
                "delivery.command_timeout",
                d.command_timeout.as_ref(),
                Duration::from_secs(300),
            ),
            data_timeout: r.duration(
                "delivery.data_timeout",
                d.data_timeout.as_ref(),
                Duration::from_secs(600),
            ),
            connection_idle_time: {
                let t = r.duration(
                    "delivery.connection_idle_time",
                    d.connection_idle_time.as_ref(),
                    Duration::from_secs(2),
                );
                if t > MAX_CONNECTION_IDLE_TIME {
                    r.problem(
                        "delivery.connection_idle_time",
                        "is over 5m: receivers close idle connections long before (RFC 5321 \
                         §4.5.3.2.7 gives them 5 minutes)",
                    );
                }
                t.min(MAX_CONNECTION_IDLE_TIME)
            },
            bounce_rules: d.bounce_rules.as_ref().map(PathBuf::from),
            route_tls: Vec::new(),
            tls_ca_file: d.tls_ca_file.as_ref().map(PathBuf::from),
            mta_sts: d.mta_sts.unwrap_or(true),
            mta_sts_https_port: d.mta_sts_https_port.unwrap_or(443),
            dane: d.dane.unwrap_or(true),
            tls_rpt: d.tls_rpt.unwrap_or(false).then(|| {
                (
                    r.duration(
                        "delivery.tls_rpt_interval",
                        d.tls_rpt_interval.as_ref(),
                        Duration::from_secs(86_400),
                    ),
                    d.tls_rpt_from.clone(),
                )
            }),
            bounce_domain: d
                .bounce_domain
                .as_ref()
                .map(|b| b.trim().trim_end_matches('.').to_ascii_lowercase())
                .filter(|b| !b.is_empty()),
            max_messages_per_second: d.max_messages_per_second.unwrap_or(0),
            throttle: throttle_policy(r, d),
            egress_pool: d.egress_pool.clone(),
        };
        for (domain, policy) in d.route_tls.iter().flatten() {
            let p = outbound_tls(r, format!("delivery.route_tls.{domain}"), policy);
            delivery.route_tls.push((domain.to_ascii_lowercase(), p));
        }
        delivery
    }
}

/// `delivery.throttle_pause`, `delivery.blocklist_pause` and `delivery.throttle_ramp_step`.
fn throttle_policy(r: &mut Resolver, d: &RawDelivery) -> ThrottlePolicy {
    let defaults = ThrottlePolicy::default();
    let mut ms = |key: &str, value: Option<&String>, default_ms: u64| {
        let d = r.duration(key, value, Duration::from_millis(default_ms));
        if d.is_zero() {
            r.problem(key.to_owned(), "must be longer than 0".to_owned());
        }
        d.as_millis() as u64
    };
    ThrottlePolicy {
        pause_ms: ms(
            "delivery.throttle_pause",
            d.throttle_pause.as_ref(),
            defaults.pause_ms,
        ),
        blocklist_pause_ms: ms(
            "delivery.blocklist_pause",
            d.blocklist_pause.as_ref(),
            defaults.blocklist_pause_ms,
        ),
        ramp_step_ms: ms(
            "delivery.throttle_ramp_step",
            d.throttle_ramp_step.as_ref(),
            defaults.ramp_step_ms,
        ),
    }
}

/// An outbound STARTTLS policy; an unknown word is a problem reported under `key` (and reads
/// as opportunistic, so resolution can go on and report everything at once).
fn outbound_tls(r: &mut Resolver, key: String, policy: &str) -> TlsPolicy {
    match policy {
        "opportunistic" => TlsPolicy::Opportunistic,
        "required" => TlsPolicy::Required,
        "verify" => TlsPolicy::Verify,
        "disabled" => TlsPolicy::Disabled,
        _ => {
            r.problem(
                key,
                format!(
                    "{policy:?} is not \"opportunistic\", \"required\", \"verify\" or \"disabled\""
                ),
            );
            TlsPolicy::Opportunistic
        }
    }
}
