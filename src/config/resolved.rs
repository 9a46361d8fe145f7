//! The checked configuration: typed values, defaults applied, every problem reported at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::error::{ConfigError, Problem};
use super::raw::RawConfig;
use super::{content, listen, users};
pub use crate::spool::Durability;

pub use super::content::{DkimKey, OnError, Scanner};
pub use super::delivery::{DeliverySettings, Route};
pub use super::egress::{EgressPool, EgressSettings, EgressSource};
pub use super::limits::Limits;
pub use super::listen::{Listener, TlsSource};
pub use super::spool::SpoolSettings;
pub use super::users::{Cidr, Secret, User};

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
    /// `listen.proxy_protocol`: load balancers whose connections open with a PROXY header.
    pub proxy_protocol: Vec<Cidr>,
    /// Users; `None` = no `[[users]]` given (the dev user is generated).
    pub users: Option<Vec<User>>,
    /// Limits.
    pub limits: Limits,
    /// Spool tuning.
    pub spool: SpoolSettings,
    /// Delivery.
    pub delivery: DeliverySettings,
    /// Local addresses to deliver from, and pools of them.
    pub egress: EgressSettings,
    /// Limits per destination: the operator's `[[shaping]]` rules, then the built-in ones.
    pub shaping: Vec<crate::queue::shaping::Rule>,
    /// Keep bodies this long after the final outcome.
    pub retention_content: Duration,
    /// `retention.ledger`: how long the ledger keeps placeholders of purged messages.
    pub retention_ledger: Duration,
    /// Whose suppression list a hard bounce adds to, and which list a RCPT is checked against.
    pub suppression_scope: crate::suppress::Scope,
    /// Bearer tokens of the HTTP API (none: the admin routes answer on loopback only).
    pub api_tokens: Vec<super::tokens::ApiToken>,
    /// Where events are posted.
    pub webhooks: Vec<super::webhooks::Webhook>,
    /// `[cluster]`, when this node shares its limits with others through Redis.
    pub cluster: Option<super::cluster::ClusterSettings>,
    /// Mail-client autoconfiguration, when served.
    pub autoconfig: Option<super::autoconfig::Autoconfig>,
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

impl Default for Config {
    fn default() -> Self {
        // Invariant: the empty raw config has no invalid value, every field takes its default.
        resolve(RawConfig::default()).expect("defaults are valid")
    }
}

pub use crate::time::parse_duration;

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

/// Collects the problems of a configuration while its sections are resolved.
#[derive(Default)]
pub(crate) struct Resolver {
    problems: Vec<Problem>,
}

impl Resolver {
    /// Whether no problem was found.
    pub(super) fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    pub(super) fn problem(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    pub(super) fn duration(
        &mut self,
        key: &str,
        v: Option<&String>,
        default: Duration,
    ) -> Duration {
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

    pub(super) fn size(&mut self, key: &str, v: Option<&String>, default: u64) -> u64 {
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

    let proxy_protocol = users::cidrs(
        &mut r,
        "listen.proxy_protocol",
        raw.listen.proxy_protocol.as_deref().unwrap_or_default(),
    );
    let (listeners, http, tls) = listen::resolve(&mut r, raw.listen, raw.tls);

    let trusted_networks = users::trusted_networks(&mut r, raw.relay.trusted_networks);
    let users = raw.users.map(|list| users::resolve(&mut r, list));

    let limits = Limits::resolve(&mut r, &raw.limits);

    let spool = SpoolSettings::resolve(&mut r, &raw.spool);

    let delivery = DeliverySettings::resolve(&mut r, &raw.delivery, &spool_dir);
    let egress = EgressSettings::resolve(&mut r, &raw.egress, &hostname);
    let shaping = super::shaping::resolve(&mut r, &raw.shaping);
    if let Some(pool) = &delivery.egress_pool {
        egress.check_pool(&mut r, "delivery.egress_pool".into(), pool);
    }
    for (i, u) in users.iter().flatten().enumerate() {
        if let Some(pool) = &u.egress_pool {
            egress.check_pool(&mut r, format!("users[{i}].egress_pool"), pool);
        }
    }

    let retention_content = r.duration(
        "retention.content",
        raw.retention.content.as_ref(),
        Duration::from_secs(30 * 86_400),
    );
    let retention_ledger = r.duration(
        "retention.ledger",
        raw.retention.ledger.as_ref(),
        Duration::from_secs(400 * 86_400),
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

    let dkim = raw
        .dkim
        .map(|keys| content::dkim_keys(&mut r, &keys))
        .unwrap_or_default();
    let (clamd, rspamd) = content::scanners(&mut r, &raw.scan);
    let api_tokens = super::tokens::resolve(&mut r, raw.api_tokens);
    let autoconfig = super::autoconfig::resolve(
        &mut r,
        raw.autoconfig,
        &hostname,
        &listeners,
        http.is_some(),
    );
    let cluster = super::cluster::resolve(&mut r, raw.cluster);
    let webhooks = raw
        .webhooks
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let key = format!("webhooks[{i}]");
            let host = w
                .url
                .strip_prefix("https://")
                .or_else(|| w.url.strip_prefix("http://"));
            if host.is_none_or(|h| h.is_empty() || h.starts_with('/')) {
                r.problem(
                    format!("{key}.url"),
                    format!("{:?} is not an http:// or https:// URL", w.url),
                );
            }
            if w.secret.len() < 16 {
                r.problem(format!("{key}.secret"), "use at least 16 characters");
            }
            let events = w.events.clone().unwrap_or_else(|| {
                super::webhooks::EVENT_TYPES
                    .iter()
                    .map(|e| e.to_string())
                    .collect()
            });
            for e in &events {
                if !super::webhooks::EVENT_TYPES.contains(&e.as_str()) {
                    r.problem(
                        format!("{key}.events"),
                        format!(
                            "{e:?} is not one of {}",
                            super::webhooks::EVENT_TYPES.join(", ")
                        ),
                    );
                }
            }
            super::webhooks::Webhook {
                url: w.url.clone(),
                secret: w.secret.clone(),
                events,
                user: w.user.clone(),
                max_age: r.duration(
                    &format!("{key}.max_age"),
                    w.max_age.as_ref(),
                    Duration::from_secs(3 * 86_400),
                ),
            }
        })
        .collect();
    // The admin API without credentials must not be reachable from other hosts.
    if let Some(addr) = http
        && !addr.ip().is_loopback()
        && api_tokens.is_empty()
    {
        r.problem(
            "listen.http",
            format!(
                "{addr} is reachable from other hosts: configure [[api_tokens]] (`ringmta api-token`) or listen on loopback"
            ),
        );
    }

    if !r.problems.is_empty() {
        return Err(ConfigError::Invalid(r.problems));
    }
    Ok(Config {
        hostname,
        spool_dir,
        threads,
        listeners,
        proxy_protocol,
        http,
        tls,
        trusted_networks,
        users,
        limits,
        spool,
        delivery,
        egress,
        shaping,
        retention_content,
        retention_ledger,
        api_tokens,
        webhooks,
        cluster,
        autoconfig,
        suppression_scope: raw
            .suppression
            .scope
            .unwrap_or(crate::suppress::Scope::Global),
        log_format,
        log_level,
        dkim,
        dkim_sign_threads: raw.dkim_sign_threads.unwrap_or(0),
        clamd,
        rspamd,
    })
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
    use crate::smtp::client::TlsPolicy;

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
    fn connection_idle_time_defaults_to_2s_and_stops_at_5m() {
        let c = from_toml("", "t").unwrap();
        assert_eq!(c.delivery.connection_idle_time, Duration::from_secs(2));
        let c = from_toml("[delivery]\nconnection_idle_time = \"0s\"\n", "t").unwrap();
        assert_eq!(c.delivery.connection_idle_time, Duration::ZERO);
        match from_toml("[delivery]\nconnection_idle_time = \"6m\"\n", "t").unwrap_err() {
            ConfigError::Invalid(p) => {
                assert_eq!(p[0].key, "delivery.connection_idle_time");
                assert!(p[0].message.contains("over 5m"), "{}", p[0].message);
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
