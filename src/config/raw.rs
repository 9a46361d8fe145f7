//! The configuration file as written: serde structs, no validation beyond types.
//!
//! Every field documents its unit and default. Unknown keys are an error (`deny_unknown_fields`)
//! so a typo never silently falls back to a default. `resolved.rs` turns this into checked types.

use std::collections::BTreeMap;

use serde::Deserialize;

/// The whole file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Name used in the greeting, EHLO, Received headers and DSNs. Default: the system host name.
    pub hostname: Option<String>,
    /// Spool directory. Default: `./ringmta-spool`.
    pub spool_dir: Option<String>,
    /// Worker threads; 0 = one per core. Default: 0.
    pub threads: Option<usize>,
    /// Listening addresses.
    #[serde(default)]
    pub listen: RawListen,
    /// Certificate and key. Default: a self-signed pair generated in `spool_dir/tls/`.
    pub tls: Option<RawTls>,
    /// Relay policy of the `smtp` port.
    #[serde(default)]
    pub relay: RawRelay,
    /// Users allowed to authenticate.
    pub users: Option<Vec<RawUser>>,
    /// Session and message limits.
    #[serde(default)]
    pub limits: RawLimits,
    /// Spool tuning.
    #[serde(default)]
    pub spool: RawSpool,
    /// Outbound delivery.
    #[serde(default)]
    pub delivery: RawDelivery,
    /// Local addresses to deliver from, and pools of them.
    #[serde(default)]
    pub egress: RawEgress,
    /// Limits per destination (by recipient domain or MX host), before the built-in ones.
    #[serde(default)]
    pub shaping: Vec<RawShapingRule>,
    /// Content retention.
    #[serde(default)]
    pub retention: RawRetention,
    /// The suppression list.
    #[serde(default)]
    pub suppression: RawSuppression,
    /// Bearer tokens of the HTTP API.
    #[serde(default)]
    pub api_tokens: Vec<RawApiToken>,
    /// Where events are posted.
    #[serde(default)]
    pub webhooks: Vec<RawWebhook>,
    /// Nodes sharing limits through Redis. Default: off.
    pub cluster: Option<super::cluster::RawCluster>,
    /// Logging.
    #[serde(default)]
    pub log: RawLog,
    /// DKIM signing keys, chosen by the header From domain.
    pub dkim: Option<Vec<RawDkim>>,
    /// Threads that compute RSA DKIM signatures off the worker cores. Default: 0 = sign on the
    /// worker (fastest when the cores are saturated; see docs/benchmarks.md).
    pub dkim_sign_threads: Option<usize>,
    /// Content scanners.
    #[serde(default)]
    pub scan: RawScan,
    /// The files mail clients configure themselves from.
    #[serde(default)]
    pub autoconfig: super::autoconfig::RawAutoconfig,
}

/// One `[[dkim]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDkim {
    /// Signing domain (d=); also signs mail whose From is a subdomain of it.
    pub domain: String,
    /// Selector (s=).
    pub selector: String,
    /// PEM private key (PKCS#8 or PKCS#1 RSA, PKCS#8 ed25519).
    pub private_key: String,
    /// `"rsa-sha256"` or `"ed25519-sha256"`. Default: from the key.
    pub algorithm: Option<String>,
    /// Header fields to sign. Default: From, To, Cc, Subject, Date, Message-ID, MIME headers...
    pub headers: Option<Vec<String>>,
    /// Sign From twice so that a second From cannot be added. Default: true.
    pub oversign_from: Option<bool>,
}

/// `[scan]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScan {
    /// clamd malware scanning.
    pub clamd: Option<RawScanner>,
    /// rspamd spam scoring.
    pub rspamd: Option<RawScanner>,
}

/// `[scan.clamd]` or `[scan.rspamd]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScanner {
    /// clamd: `"unix:/path/clamd.sock"` or `"127.0.0.1:3310"`.
    pub address: Option<String>,
    /// rspamd: `"http://127.0.0.1:11333"`.
    pub url: Option<String>,
    /// Give up after this long. Default: 10s.
    pub timeout: Option<String>,
    /// Scanner down or slow: `"tempfail"` (451 4.7.1, default) or `"accept"`.
    pub on_error: Option<String>,
}

/// `[listen]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListen {
    /// Relay-role SMTP (port 25 role). Default: `["127.0.0.1:2525"]`.
    pub smtp: Option<Vec<String>>,
    /// Submission with STARTTLS (port 587 role). Default: `["127.0.0.1:2587"]`.
    pub submission: Option<Vec<String>>,
    /// Submission with implicit TLS (port 465 role). Default: `["127.0.0.1:2465"]`.
    pub submissions: Option<Vec<String>>,
    /// HTTP API and metrics. Default: `"127.0.0.1:8025"`.
    pub http: Option<String>,
    /// Load balancers whose connections open with a PROXY protocol header (v1 or v2), as CIDR
    /// blocks. Default: none.
    pub proxy_protocol: Option<Vec<String>>,
}

/// `[tls]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// PEM certificate chain path.
    pub cert: String,
    /// PEM private key path (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
}

/// `[relay]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRelay {
    /// CIDR blocks allowed to relay on the `smtp` port without AUTH. Default: `["127.0.0.0/8", "::1/128"]`.
    pub trusted_networks: Option<Vec<String>>,
}

/// One `[[users]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUser {
    /// Login name.
    pub username: String,
    /// argon2id PHC string from `ringmta hash-password`.
    pub password_hash: Option<String>,
    /// Plaintext password (accepted with a warning).
    pub password: Option<String>,
    /// Envelope senders this user may use: exact, `*@domain` or `*`. Default: the username.
    pub allowed_senders: Option<Vec<String>>,
    /// The egress pool this user's mail leaves from. Default: `delivery.egress_pool`.
    pub egress_pool: Option<String>,
    /// How long this user's mail may stay queued (capped by `delivery.max_queue_lifetime`).
    pub max_queue_lifetime: Option<String>,
    /// NOTIFY for this user's recipients that were given none: `["success", "failure",
    /// "delay"]` (any of them) or `["never"]`.
    pub notify: Option<Vec<String>>,
}

/// One `[[shaping]]` rule (the built-in file has the same form).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShapingRule {
    /// A recipient domain, exactly.
    pub domain: Option<String>,
    /// An MX host pattern: `*.google.com` or an exact host name.
    pub mx: Option<String>,
    /// Connections open at once per egress path.
    pub max_connections: Option<usize>,
    /// Messages per second per egress path.
    pub max_messages_per_second: Option<u32>,
    /// Messages per connection.
    pub max_messages_per_connection: Option<usize>,
    /// Pause after a `rate_limited` reply.
    pub throttle_pause: Option<String>,
    /// Pause after a `blocklisted` reply.
    pub blocklist_pause: Option<String>,
    /// Ramp step after a pause.
    pub throttle_ramp_step: Option<String>,
    /// How long mail for this destination may stay queued (capped by
    /// `delivery.max_queue_lifetime`).
    pub max_queue_lifetime: Option<String>,
    /// Who the rule is for (documentation).
    pub provider: Option<String>,
    /// Where its numbers come from (documentation).
    pub source: Option<String>,
}

/// `[egress]`: `[[egress.sources]]` and `[[egress.pools]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEgress {
    /// Local addresses to connect from.
    #[serde(default)]
    pub sources: Vec<RawEgressSource>,
    /// Weighted sets of sources.
    #[serde(default)]
    pub pools: Vec<RawEgressPool>,
}

/// One `[[egress.sources]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEgressSource {
    /// Its name.
    pub name: String,
    /// A local IPv4 or IPv6 address.
    pub address: String,
    /// The EHLO name on its connections. Default: `hostname`.
    pub ehlo: Option<String>,
}

/// One `[[egress.pools]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEgressPool {
    /// Its name.
    pub name: String,
    /// Source names, each optionally weighted: `["a", { name = "b", weight = 3 }]`.
    pub sources: Vec<RawPoolMember>,
}

/// A pool member: a source name (weight 1) or `{ name, weight }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawPoolMember {
    /// A source with weight 1.
    Name(String),
    /// A source with a weight.
    Weighted {
        /// The source.
        name: String,
        /// Its share of the pool's connections.
        weight: u32,
    },
}

/// `[limits]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLimits {
    /// Largest message, e.g. `"25MB"`. Default: 25 MB.
    pub max_message_size: Option<String>,
    /// Recipients per transaction. Default: 1000.
    pub max_recipients: Option<usize>,
    /// Longest command line in bytes, CRLF included. Default: 2048.
    pub max_line_length: Option<usize>,
    /// Bad commands before the session is closed with 421. Default: 20.
    pub max_bad_commands: Option<u32>,
    /// Idle time allowed while waiting for a command, e.g. `"5m"`. Default: 5m (RFC 5321 §4.5.3.2.7).
    pub command_timeout: Option<String>,
    /// Idle time allowed between data chunks. Default: 5m.
    pub data_timeout: Option<String>,
    /// Concurrent connections per worker thread; more get 421. Default: 10000.
    pub max_connections_per_core: Option<usize>,
    /// Concurrent connections from one client IP per worker thread (trusted networks exempt);
    /// more get 421. Default: 100.
    pub max_connections_per_ip: Option<usize>,
    /// Failed AUTH attempts per session before 421. Default: 3.
    pub max_auth_failures: Option<u32>,
    /// Largest header section of a message. Default: 256KB.
    pub max_header_size: Option<String>,
    /// Failed AUTH attempts per client IP within `auth_failure_window` before throttling. Default: 10.
    pub auth_failures_per_ip: Option<u32>,
    /// Window of the per-IP AUTH failure count. Default: 5m.
    pub auth_failure_window: Option<String>,
    /// New connections per client IP (IPv6: per /64) within `rate_window`, counted over all
    /// workers; more get 421 4.7.0. Trusted networks exempt. Default: 0 = unlimited.
    pub connection_rate_per_ip: Option<u32>,
    /// MAIL commands per client IP within `rate_window` from clients outside the trusted
    /// networks (authenticated or not); more get 450 4.7.1. Default: 0 = unlimited.
    pub message_rate_per_ip: Option<u32>,
    /// Window of the two rate limits. Default: 1m.
    pub rate_window: Option<String>,
    /// Slowest DATA/BDAT transfer allowed once `data_timeout` has passed since the transfer
    /// began, in bytes per second, e.g. `"1KB"`; slower gets 421 4.4.2. Default: 1KB. `"0"`
    /// turns it off.
    pub min_data_rate: Option<String>,
    /// Most MIME containers (multipart/*, message/rfc822) nested inside one another; deeper
    /// gets 554 5.6.0. Default: 100 (as Postfix's `mime_nesting_limit`).
    pub max_mime_depth: Option<usize>,
    /// Most MIME body parts in one message; more gets 554 5.6.0. Default: 10000.
    pub max_mime_parts: Option<usize>,
    /// NOOP, RSET, VRFY and HELP allowed since the last accepted message; beyond it each counts
    /// as a bad command. Default: 100.
    pub max_junk_commands: Option<u32>,
}

/// `[spool]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSpool {
    /// `"fsync"` (default) or `"none"` (benchmarks only: a 250 is then NOT durable).
    pub durability: Option<String>,
    /// Preallocated segment size. Default: 64MiB.
    pub segment_size: Option<String>,
    /// Largest spool per worker thread; beyond it new mail gets 452 4.3.1. Default: 0 = unlimited.
    pub max_size: Option<String>,
}

/// `[delivery]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDelivery {
    /// Static next hops by recipient domain (`"*"` matches every other domain). Default: none (MX).
    pub routes: Option<BTreeMap<String, String>>,
    /// DNS servers (`ip:port`). Default: the system resolver.
    pub nameservers: Option<Vec<String>>,
    /// Delays between attempts; the last one repeats. Default: 5m, 10m, 20m, 40m, 1h.
    pub retry_schedule: Option<Vec<String>>,
    /// Give up and bounce after this long. Default: 5d.
    pub max_queue_lifetime: Option<String>,
    /// Send one delay DSN after this long. Default: 4h.
    pub delay_notice_after: Option<String>,
    /// Connections open at once per destination site, whole process. Default: 16.
    pub max_connections: Option<usize>,
    /// Messages per outbound connection before it is closed. Default: 100.
    pub max_messages_per_connection: Option<usize>,
    /// Recipients per outbound transaction; a message with more goes out in several.
    /// Default: 100 (the minimum every server must accept, RFC 5321 §4.5.3.1.8).
    pub max_recipients_per_transaction: Option<usize>,
    /// TCP port of MX hosts. Default: 25 (tests point it at a sink).
    pub smtp_port: Option<u16>,
    /// Outbound STARTTLS: `"opportunistic"` (default), `"required"`, `"verify"` or `"disabled"`.
    pub tls: Option<String>,
    /// PEM certificates trusted for `verify`, besides the system's roots.
    pub tls_ca_file: Option<String>,
    /// Honour the MTA-STS policies of recipient domains (RFC 8461). Default: true.
    pub mta_sts: Option<bool>,
    /// The port MTA-STS policies are fetched from. Default: 443.
    pub mta_sts_https_port: Option<u16>,
    /// Honour the TLSA records of MX hosts (DANE, RFC 7672) when the resolver vouches for them
    /// with the AD bit. Default: true.
    pub dane: Option<bool>,
    /// The domain bounces and complaints come back to: mail leaves with the return path
    /// `bounces+<queue id>@<bounce_domain>` (VERP), and DSNs and ARF reports sent there on the
    /// smtp role are read, not relayed. Off (the sender's own return path) when unset.
    pub bounce_domain: Option<String>,
    /// Send SMTP TLS reports (RFC 8460) to the domains with an MTA-STS policy that publish a
    /// `_smtp._tls` record. Default: false.
    pub tls_rpt: Option<bool>,
    /// The reporting period. Default: 24h.
    pub tls_rpt_interval: Option<String>,
    /// The sender of mailed reports. Default: `tls-reports@<hostname>`.
    pub tls_rpt_from: Option<String>,
    /// Connect timeout. Default: 30s.
    pub connect_timeout: Option<String>,
    /// Wait for a reply to a command (greeting, EHLO, MAIL, RCPT). Default: 5m (RFC 5321 §4.5.3.2).
    pub command_timeout: Option<String>,
    /// Wait for the reply to the end of data. Default: 10m (RFC 5321 §4.5.3.2.6).
    pub data_timeout: Option<String>,
    /// How long an open outbound connection with nothing to send waits for a message before
    /// QUIT. Default: 2s; "0s" closes at once.
    pub connection_idle_time: Option<String>,
    /// Extra bounce classification rules (TOML), tried before the built-in ones.
    pub bounce_rules: Option<String>,
    /// STARTTLS policy per recipient domain, overriding `tls` (e.g. `{ "bank.example" = "required" }`).
    pub route_tls: Option<BTreeMap<String, String>>,
    /// Messages per second per destination site, whole process; 0 = unlimited. Default: 0.
    pub max_messages_per_second: Option<u32>,
    /// No new connection to a site this long after a `rate_limited` reply. Default: 1m.
    pub throttle_pause: Option<String>,
    /// No new connection to a site this long after a `blocklisted` reply. Default: 1h.
    pub blocklist_pause: Option<String>,
    /// After a pause, a site's connection limit doubles this often from 1. Default: 1m.
    pub throttle_ramp_step: Option<String>,
    /// The egress pool mail leaves from (a user's `egress_pool` overrides it). Default: none,
    /// the system's choice of source address.
    pub egress_pool: Option<String>,
    /// Path of the JSON-lines event log. Default: `spool_dir/events.jsonl`.
    pub event_log: Option<String>,
}

/// One `[[webhooks]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWebhook {
    /// `http://` or `https://` URL.
    pub url: String,
    /// HMAC-SHA256 key of the signature.
    pub secret: String,
    /// Event types. Default: all.
    pub events: Option<Vec<String>>,
    /// Only this authenticated user's mail.
    pub user: Option<String>,
    /// Drop events older than this. Default: 3d.
    pub max_age: Option<String>,
}

/// One `[[api_tokens]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawApiToken {
    /// Its name.
    pub name: String,
    /// SHA-256 of the token, hex (`ringmta api-token` prints both).
    pub token_sha256: String,
    /// `read`, `write` (implies read), `inject`.
    pub scopes: Vec<String>,
}

/// `[suppression]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSuppression {
    /// `"global"` (default): one list for all senders; `"user"`: one per authenticated user.
    pub scope: Option<crate::suppress::Scope>,
}

/// `[retention]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    /// Keep a message's body this long after its final outcome. Default: 30d.
    pub content: Option<String>,
    /// Keep the ledger's placeholders of purged messages this long. Default: 400d.
    pub ledger: Option<String>,
}

/// `[log]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// `"text"` (default) or `"json"`.
    pub format: Option<String>,
    /// tracing filter, e.g. `"info"`. Default: `info` (or `RUST_LOG`).
    pub level: Option<String>,
}
