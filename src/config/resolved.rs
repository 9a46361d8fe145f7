//! The checked configuration: typed values, defaults applied, every problem reported at once.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use super::error::{ConfigError, Problem};
use super::raw::RawConfig;
use crate::queue::schedule::{RetryPolicy, RetryPolicyError};
use crate::smtp::PortRole;
use crate::smtp::client::TlsPolicy;
pub use crate::spool::Durability;

/// One SMTP listening address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// Address to bind (port 0 = pick a free port).
    pub addr: SocketAddr,
    /// Its role.
    pub role: PortRole,
}

/// Where the certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// PEM files given in `[tls]`.
    Files {
        /// Certificate chain.
        cert: PathBuf,
        /// Private key.
        key: PathBuf,
    },
    /// Generated on first start into `spool_dir/tls/`.
    SelfSigned,
}

/// A CIDR block such as `127.0.0.0/8`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    /// Network address.
    pub addr: IpAddr,
    /// Prefix length in bits.
    pub prefix: u8,
}

impl Cidr {
    /// Parses `addr/prefix` or a bare address (a /32 or /128).
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.trim().parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= max)?,
            None => max,
        };
        Some(Cidr { addr, prefix })
    }

    /// Whether `ip` lies in this block. IPv4-mapped IPv6 addresses match IPv4 blocks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// How a user's password is checked.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    /// argon2 PHC string.
    Argon2(String),
    /// Plaintext from the config (warned about at start).
    Plain(String),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::Argon2(_) => f.write_str("Argon2(..)"),
            Secret::Plain(_) => f.write_str("Plain(..)"),
        }
    }
}

/// One user allowed to authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Login name.
    pub username: String,
    /// Password check.
    pub secret: Secret,
    /// Allowed envelope senders (patterns, see `smtp::SenderPattern`).
    pub allowed_senders: Vec<String>,
}

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

/// Spool tuning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolSettings {
    /// Durability mode.
    pub durability: Durability,
    /// Preallocated segment size in bytes.
    pub segment_size: u64,
    /// Largest spool per worker in bytes, 0 = unlimited.
    pub max_size: u64,
}

/// A static route entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Lower-case domain, or `*`.
    pub domain: String,
    /// `host:port` of the next hop.
    pub next_hop: String,
}

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
    /// Operator bounce rules file.
    pub bounce_rules: Option<PathBuf>,
    /// STARTTLS policy overrides by lower-case recipient domain.
    pub route_tls: Vec<(String, TlsPolicy)>,
    /// Messages per second per destination and worker; 0 = unlimited.
    pub max_messages_per_second: u32,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The resolved configuration. Immutable once built.
#[derive(Debug, Clone)]
pub struct Config {
    /// Host name for greeting, Received and DSNs.
    pub hostname: String,
    /// Spool directory.
    pub spool_dir: PathBuf,
    /// Worker threads (resolved: never 0).
    pub threads: usize,
    /// SMTP listeners.
    pub listeners: Vec<Listener>,
    /// HTTP listener.
    pub http: Option<SocketAddr>,
    /// Certificate source.
    pub tls: TlsSource,
    /// Networks that may relay without AUTH on the smtp port.
    pub trusted_networks: Vec<Cidr>,
    /// Users; `None` = no `[[users]]` given (the dev user is generated).
    pub users: Option<Vec<User>>,
    /// Limits.
    pub limits: Limits,
    /// Spool tuning.
    pub spool: SpoolSettings,
    /// Delivery.
    pub delivery: DeliverySettings,
    /// Keep bodies this long after the final outcome.
    pub retention_content: Duration,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter.
    pub log_level: String,
    /// DKIM keys.
    pub dkim: Vec<DkimKey>,
    /// Threads signing RSA off the worker cores; 0 = on the worker.
    pub dkim_sign_threads: usize,
    /// clamd scanning, when configured.
    pub clamd: Option<Scanner>,
    /// rspamd scoring, when configured.
    pub rspamd: Option<Scanner>,
}

/// One signing identity as written in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DkimKey {
    /// Signing domain (`d=`). Messages whose header From domain equals it or is a subdomain of
    /// it are signed with this key.
    pub domain: String,
    /// Selector (`s=`): the public key is published at `<selector>._domainkey.<domain>`.
    pub selector: String,
    /// PEM file holding the private key: PKCS#8 or PKCS#1 for RSA, PKCS#8 for ed25519.
    pub private_key: PathBuf,
    /// `"rsa-sha256"` or `"ed25519-sha256"`; `None` takes the algorithm from the key. When set,
    /// it must agree with the key.
    pub algorithm: Option<String>,
    /// Header fields to sign; `None` means `content::dkim::DEFAULT_SIGNED_HEADERS`. Must include `From`.
    pub headers: Option<Vec<String>>,
    /// List `From` once more in `h=` than it occurs, so that a `From` field added later breaks
    /// the signature (RFC 6376 §8.15). The usual default is `true`.
    pub oversign_from: bool,
}

/// What to do when a scanner fails or times out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Answer 451 4.7.1: the client retries later.
    Tempfail,
    /// Accept the message unscanned (logged).
    Accept,
}

/// A configured scanner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scanner {
    /// clamd address or rspamd URL.
    pub target: String,
    /// Timeout of one scan.
    pub timeout: Duration,
    /// Failure policy.
    pub on_error: OnError,
}

impl Default for Config {
    fn default() -> Self {
        // Invariant: the empty raw config has no invalid value, every field takes its default.
        resolve(RawConfig::default()).expect("defaults are valid")
    }
}

/// Parses `"30s"`, `"5m"`, `"4h"`, `"5d"`, `"250ms"`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => return Some(Duration::from_millis(n)),
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        "w" => n.checked_mul(7 * 86_400)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

/// Parses `"25MB"`, `"64MiB"`, `"512KB"`, `"1GB"`, `"1000"` (bytes). Decimal and binary units.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

struct Resolver {
    problems: Vec<Problem>,
}

impl Resolver {
    fn problem(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    fn duration(&mut self, key: &str, v: Option<&String>, default: Duration) -> Duration {
        match v {
            None => default,
            Some(s) => parse_duration(s).unwrap_or_else(|| {
                self.problem(
                    key,
                    format!("{s:?} is not a duration (use e.g. \"30s\", \"5m\", \"4h\", \"5d\")"),
                );
                default
            }),
        }
    }

    fn size(&mut self, key: &str, v: Option<&String>, default: u64) -> u64 {
        match v {
            None => default,
            Some(s) => parse_size(s).unwrap_or_else(|| {
                self.problem(
                    key,
                    format!("{s:?} is not a size (use e.g. \"25MB\", \"64MiB\")"),
                );
                default
            }),
        }
    }

    fn addrs(
        &mut self,
        key: &str,
        v: Option<&Vec<String>>,
        default: &str,
        role: PortRole,
    ) -> Vec<Listener> {
        let list = match v {
            Some(list) => list.clone(),
            None => vec![default.to_owned()],
        };
        let mut out = Vec::new();
        for (i, s) in list.iter().enumerate() {
            match s.parse::<SocketAddr>() {
                Ok(addr) => out.push(Listener { addr, role }),
                Err(_) => self.problem(
                    format!("{key}[{i}]"),
                    format!("{s:?} is not an ip:port address"),
                ),
            }
        }
        out
    }
}

/// Checks a raw config and applies defaults. Reports every problem, not just the first.
pub fn resolve(raw: RawConfig) -> Result<Config, ConfigError> {
    let mut r = Resolver {
        problems: Vec::new(),
    };

    let hostname = raw.hostname.clone().unwrap_or_else(system_hostname);
    if hostname.is_empty() || hostname.contains(|c: char| c.is_whitespace() || c.is_control()) {
        r.problem("hostname", format!("{hostname:?} is not a valid host name"));
    }
    let spool_dir = PathBuf::from(
        raw.spool_dir
            .clone()
            .unwrap_or_else(|| "./ringmta-spool".into()),
    );
    let threads = match raw.threads.unwrap_or(0) {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        n if n > 255 => {
            r.problem("threads", "at most 255 worker threads");
            255
        }
        n => n,
    };

    let mut listeners = r.addrs(
        "listen.smtp",
        raw.listen.smtp.as_ref(),
        "127.0.0.1:2525",
        PortRole::Relay,
    );
    listeners.extend(r.addrs(
        "listen.submission",
        raw.listen.submission.as_ref(),
        "127.0.0.1:2587",
        PortRole::Submission,
    ));
    listeners.extend(r.addrs(
        "listen.submissions",
        raw.listen.submissions.as_ref(),
        "127.0.0.1:2465",
        PortRole::Submissions,
    ));
    let http = match raw.listen.http.as_deref() {
        None => Some(SocketAddr::from(([127, 0, 0, 1], 8025))),
        Some("") => None,
        Some(s) => s.parse().map(Some).unwrap_or_else(|_| {
            r.problem("listen.http", format!("{s:?} is not an ip:port address"));
            None
        }),
    };

    let tls = match raw.tls {
        Some(t) => TlsSource::Files {
            cert: t.cert.into(),
            key: t.key.into(),
        },
        None => TlsSource::SelfSigned,
    };

    let trusted_raw = raw
        .relay
        .trusted_networks
        .clone()
        .unwrap_or_else(|| vec!["127.0.0.0/8".into(), "::1/128".into()]);
    let mut trusted_networks = Vec::new();
    for (i, s) in trusted_raw.iter().enumerate() {
        match Cidr::parse(s) {
            Some(c) => trusted_networks.push(c),
            None => r.problem(
                format!("relay.trusted_networks[{i}]"),
                format!("{s:?} is not a CIDR block"),
            ),
        }
    }

    let users = raw.users.map(|users| {
        let mut out = Vec::new();
        for (i, u) in users.into_iter().enumerate() {
            let key = format!("users[{i}]");
            if u.username.is_empty() {
                r.problem(format!("{key}.username"), "must not be empty");
            }
            let secret = match (u.password_hash, u.password) {
                (Some(h), None) => {
                    if !h.starts_with("$argon2") {
                        r.problem(
                            format!("{key}.password_hash"),
                            "not an argon2 PHC string (use `ringmta hash-password`)",
                        );
                    }
                    Secret::Argon2(h)
                }
                (None, Some(p)) => Secret::Plain(p),
                (Some(_), Some(_)) => {
                    r.problem(&key, "give password_hash or password, not both");
                    Secret::Plain(String::new())
                }
                (None, None) => {
                    r.problem(&key, "needs password_hash (or password)");
                    Secret::Plain(String::new())
                }
            };
            let allowed_senders = u
                .allowed_senders
                .unwrap_or_else(|| vec![u.username.clone()]);
            for (j, s) in allowed_senders.iter().enumerate() {
                if !is_sender_pattern(s) {
                    r.problem(
                        format!("{key}.allowed_senders[{j}]"),
                        format!("{s:?} is not an address, \"*@domain\" or \"*\""),
                    );
                }
            }
            out.push(User {
                username: u.username,
                secret,
                allowed_senders,
            });
        }
        out
    });

    let l = &raw.limits;
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

    let durability = match raw.spool.durability.as_deref() {
        None | Some("fsync") => Durability::Fsync,
        Some("none") => Durability::None,
        Some(other) => {
            r.problem(
                "spool.durability",
                format!("{other:?} is not \"fsync\" or \"none\""),
            );
            Durability::Fsync
        }
    };
    let spool = SpoolSettings {
        durability,
        segment_size: r.size(
            "spool.segment_size",
            raw.spool.segment_size.as_ref(),
            64 << 20,
        ),
        max_size: r.size("spool.max_size", raw.spool.max_size.as_ref(), 0),
    };
    if spool.segment_size < (1 << 20) {
        r.problem("spool.segment_size", "must be at least 1MiB");
    }

    let d = &raw.delivery;
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
    let delivery = DeliverySettings {
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
            outbound_tls(&mut r, "delivery.tls".into(), policy)
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
        bounce_rules: d.bounce_rules.as_ref().map(PathBuf::from),
        route_tls: Vec::new(),
        max_messages_per_second: d.max_messages_per_second.unwrap_or(0),
    };
    let mut delivery = delivery;
    for (domain, policy) in d.route_tls.iter().flatten() {
        let p = outbound_tls(&mut r, format!("delivery.route_tls.{domain}"), policy);
        delivery.route_tls.push((domain.to_ascii_lowercase(), p));
    }

    let retention_content = r.duration(
        "retention.content",
        raw.retention.content.as_ref(),
        Duration::from_secs(30 * 86_400),
    );
    let log_format = match raw.log.format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            r.problem(
                "log.format",
                format!("{other:?} is not \"text\" or \"json\""),
            );
            LogFormat::Text
        }
    };
    let log_level = raw.log.level.clone().unwrap_or_else(|| "info".into());

    let mut dkim = Vec::new();
    for (i, k) in raw.dkim.iter().flatten().enumerate() {
        if let Some(a) = &k.algorithm
            && a != "rsa-sha256"
            && a != "ed25519-sha256"
        {
            r.problem(
                format!("dkim[{i}].algorithm"),
                format!("{a:?} is not \"rsa-sha256\" or \"ed25519-sha256\""),
            );
        }
        if k.domain.is_empty() || k.selector.is_empty() {
            r.problem(
                format!("dkim[{i}]"),
                "domain and selector must not be empty",
            );
        }
        dkim.push(DkimKey {
            domain: k.domain.to_ascii_lowercase(),
            selector: k.selector.clone(),
            private_key: PathBuf::from(&k.private_key),
            algorithm: k.algorithm.clone(),
            headers: k.headers.clone(),
            oversign_from: k.oversign_from.unwrap_or(true),
        });
    }
    let clamd = raw.scan.clamd.as_ref().map(|c| {
        let target = c.address.clone().unwrap_or_default();
        if target.is_empty() {
            r.problem(
                "scan.clamd.address",
                "is required (\"unix:/path/clamd.sock\" or \"ip:port\")",
            );
        }
        scanner(&mut r, "scan.clamd", target, c)
    });
    let rspamd = raw.scan.rspamd.as_ref().map(|c| {
        let target = c.url.clone().unwrap_or_default();
        if !target.starts_with("http://") {
            r.problem("scan.rspamd.url", "is required and must start with http://");
        }
        scanner(&mut r, "scan.rspamd", target, c)
    });

    if !r.problems.is_empty() {
        return Err(ConfigError::Invalid(r.problems));
    }
    Ok(Config {
        hostname,
        spool_dir,
        threads,
        listeners,
        http,
        tls,
        trusted_networks,
        users,
        limits,
        spool,
        delivery,
        retention_content,
        log_format,
        log_level,
        dkim,
        dkim_sign_threads: raw.dkim_sign_threads.unwrap_or(0),
        clamd,
        rspamd,
    })
}

fn scanner(r: &mut Resolver, key: &str, target: String, c: &super::raw::RawScanner) -> Scanner {
    let timeout = r.duration(
        &format!("{key}.timeout"),
        c.timeout.as_ref(),
        Duration::from_secs(10),
    );
    let on_error = match c.on_error.as_deref() {
        None | Some("tempfail") => OnError::Tempfail,
        Some("accept") => OnError::Accept,
        Some(other) => {
            r.problem(
                format!("{key}.on_error"),
                format!("{other:?} is not \"tempfail\" or \"accept\""),
            );
            OnError::Tempfail
        }
    };
    Scanner {
        target,
        timeout,
        on_error,
    }
}

/// An outbound STARTTLS policy; an unknown word is a problem reported under `key` (and reads
/// as opportunistic, so resolution can go on and report everything at once).
fn outbound_tls(r: &mut Resolver, key: String, policy: &str) -> TlsPolicy {
    match policy {
        "opportunistic" => TlsPolicy::Opportunistic,
        "required" => TlsPolicy::Required,
        "disabled" => TlsPolicy::Disabled,
        _ => {
            r.problem(
                key,
                format!("{policy:?} is not \"opportunistic\", \"required\" or \"disabled\""),
            );
            TlsPolicy::Opportunistic
        }
    }
}

fn is_sender_pattern(s: &str) -> bool {
    if s == "*" {
        return true;
    }
    match s.rsplit_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('*')
                && !s.contains(char::is_whitespace)
        }
        None => false,
    }
}

fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::from_toml;

    #[test]
    fn empty_file_gives_safe_defaults() {
        let c = from_toml("", "t").unwrap();
        assert_eq!(c.limits.max_message_size, 25_000_000);
        assert_eq!(c.limits.max_recipients, 1000);
        assert_eq!(c.spool.durability, Durability::Fsync);
        assert_eq!(
            c.delivery.retry.max_lifetime,
            Duration::from_secs(5 * 86_400)
        );
        assert_eq!(c.retention_content, Duration::from_secs(30 * 86_400));
        assert_eq!(c.listeners.len(), 3);
        assert!(c.listeners.iter().all(|l| l.addr.ip().is_loopback()));
        assert!(c.threads >= 1);
    }

    #[test]
    fn design_example_parses() {
        let text = r#"
hostname = "mta.example.com"
spool_dir = "/var/spool/ringmta"
threads = 0
[listen]
smtp        = ["0.0.0.0:25"]
submission  = ["0.0.0.0:587"]
submissions = ["0.0.0.0:465"]
http        = "127.0.0.1:8025"
[tls]
cert = "/etc/ringmta/cert.pem"
key  = "/etc/ringmta/key.pem"
[relay]
trusted_networks = ["127.0.0.0/8"]
[[users]]
username = "alice@example.com"
password_hash = "$argon2id$v=19$m=19456,t=2,p=1$abc$def"
allowed_senders = ["alice@example.com", "*@example.com"]
[limits]
max_message_size = "25MB"
max_recipients = 1000
[delivery]
routes = { "example.net" = "10.0.0.5:25", "*" = "smarthost.local:25" }
nameservers = ["127.0.0.1:53"]
retry_schedule = ["5m", "10m", "20m", "40m", "1h"]
max_queue_lifetime = "5d"
delay_notice_after = "4h"
[retention]
content = "30d"
"#;
        let c = from_toml(text, "t").unwrap();
        assert_eq!(c.hostname, "mta.example.com");
        assert_eq!(c.delivery.routes.len(), 2);
        assert_eq!(c.delivery.retry.schedule[4], Duration::from_secs(3600));
        assert_eq!(c.users.as_ref().unwrap()[0].allowed_senders.len(), 2);
    }

    #[test]
    fn per_domain_tls_and_rate() {
        let text = "[delivery]\nroute_tls = { \"Bank.example\" = \"required\" }\nmax_messages_per_second = 5\n";
        let c = from_toml(text, "t").unwrap();
        assert_eq!(
            c.delivery.route_tls,
            vec![("bank.example".to_owned(), TlsPolicy::Required)]
        );
        assert_eq!(c.delivery.max_messages_per_second, 5);
        let err = from_toml(
            "[delivery]\nroute_tls = { \"x.example\" = \"maybe\" }\n",
            "t",
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("delivery.route_tls.x.example"),
            "{err}"
        );
    }

    #[test]
    fn retry_schedules_that_would_spin_or_shrink_are_refused() {
        for (schedule, key, words) in [
            ("[\"0s\"]", "delivery.retry_schedule[0]", "shorter than 1ms"),
            (
                "[\"5m\", \"1m\"]",
                "delivery.retry_schedule[1]",
                "shorter than the step before",
            ),
            ("[]", "delivery.retry_schedule", "empty"),
        ] {
            let err = from_toml(&format!("[delivery]\nretry_schedule = {schedule}\n"), "t")
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(key) && err.contains(words),
                "{schedule}: {err}"
            );
        }
        let ok = from_toml(
            "[delivery]\nretry_schedule = [\"1s\", \"1s\", \"2m\"]\n",
            "t",
        );
        assert_eq!(ok.unwrap().delivery.retry.schedule.len(), 3);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = from_toml("[limits]\nmax_mesage_size = \"1MB\"\n", "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max_mesage_size"), "{err}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = "[limits]\nmax_message_size = \"lots\"\ncommand_timeout = \"soon\"\n[relay]\ntrusted_networks = [\"10.0.0.0/99\"]\n";
        match from_toml(text, "t").unwrap_err() {
            ConfigError::Invalid(p) => {
                let keys: Vec<_> = p.iter().map(|p| p.key.as_str()).collect();
                assert_eq!(
                    keys,
                    [
                        "relay.trusted_networks[0]",
                        "limits.max_message_size",
                        "limits.command_timeout"
                    ]
                );
            }
            other => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("5 d"), Some(Duration::from_secs(432_000)));
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_size("25MB"), Some(25_000_000));
        assert_eq!(parse_size("64MiB"), Some(64 << 20));
        assert_eq!(parse_size("12"), Some(12));
        assert_eq!(parse_size("99999999999999999999GB"), None);
    }

    #[test]
    fn cidr_matching() {
        let c = Cidr::parse("127.0.0.0/8").unwrap();
        assert!(c.contains("127.1.2.3".parse().unwrap()));
        assert!(!c.contains("128.0.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:127.0.0.1".parse().unwrap()));
        let all = Cidr::parse("0.0.0.0/0").unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(Cidr::parse("1.2.3.4/33").is_none());
    }
}
