//! Command-line interface: sub-commands and their implementations.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use crate::config::resolved::LogFormat;
use crate::config::{self, Config};
use crate::ids::QueueId;
use crate::queue::shape::{By, Shape};
use crate::spool::SpoolSnapshot;
use std::fmt::Write as _;

/// ringmta — a fast, durable mail transfer agent.
#[derive(Debug, Parser)]
#[command(name = "ringmta", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Sub-commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the MTA (embedded loopback defaults when no config is given).
    Serve {
        /// TOML configuration file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Operator view of the spool.
    Queue {
        /// TOML configuration file (for spool_dir).
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// What to do with the queue.
        #[command(subcommand)]
        action: QueueAction,
    },
    /// A live view of the running server (through its listen.http): rates, failures by
    /// category, the busiest destinations and sites, connections, spool. Full screen on a
    /// terminal (q quits); a plain print every interval otherwise.
    Top {
        /// TOML configuration file (for listen.http).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 2.0)]
        interval: f64,
        /// Print this many plain snapshots and stop (also on a terminal).
        #[arg(long)]
        count: Option<u64>,
    },
    /// The suppression list (through the running server's listen.http).
    Suppression {
        /// TOML configuration file (for listen.http).
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// What to do with the list.
        #[command(subcommand)]
        action: SuppressionAction,
    },
    /// Spool maintenance.
    Spool {
        /// TOML configuration file (for spool_dir).
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// What to do with the spool.
        #[command(subcommand)]
        action: SpoolAction,
    },
    /// Read a password on stdin, print an argon2id hash for `password_hash`.
    HashPassword,
    /// Make a new HTTP API token: prints the token (give it to the client, e.g. in
    /// RINGMTA_API_TOKEN) and the `[[api_tokens]]` entry with its hash.
    ApiToken {
        /// The token's name.
        #[arg(long, default_value = "admin")]
        name: String,
        /// Its scopes: read, write, inject.
        #[arg(long, value_delimiter = ',', default_value = "read,write")]
        scopes: Vec<String>,
    },
    /// Bounce classification tools.
    Bounce {
        /// What to do.
        #[command(subcommand)]
        action: BounceAction,
    },
}

/// `ringmta bounce ...`
#[derive(Debug, Subcommand)]
pub enum BounceAction {
    /// Read one remote reply per line on stdin; print one JSON classification per line
    /// (`{"category": ..., "action": ..., "rule": ...}`).
    Classify {
        /// Operator rules (TOML) tried before the built-in ones.
        #[arg(long)]
        rules: Option<PathBuf>,
        /// Say for each reply which rule fired, from which file, on what part of the text
        /// (or which fallback decided), in plain text instead of JSON.
        #[arg(long)]
        explain: bool,
        /// Use only the `--rules` file, without the built-in rules (the fallbacks on the
        /// enhanced code and reply class still apply): to test a complete rule set.
        #[arg(long, requires = "rules")]
        no_builtin: bool,
    },
}

/// `ringmta suppression ...`
#[derive(Debug, Subcommand)]
pub enum SuppressionAction {
    /// List every suppressed address (JSON).
    Ls,
    /// Suppress an address.
    Add {
        /// The address.
        address: String,
        /// On this user's list (with `suppression.scope = "user"`).
        #[arg(long)]
        user: Option<String>,
        /// Why (free text; default `manual`).
        #[arg(long)]
        reason: Option<String>,
        /// For this long (e.g. `30d`); default: until removed.
        #[arg(long = "for")]
        duration: Option<String>,
    },
    /// Remove an address from the list.
    Rm {
        /// The address.
        address: String,
        /// From this user's list.
        #[arg(long)]
        user: Option<String>,
    },
}

/// `ringmta queue ...`
#[derive(Debug, Subcommand)]
pub enum QueueAction {
    /// List queued messages.
    Ls {
        /// Pending recipients by destination site instead (live, through the running
        /// server's listen.http: sites are learned by resolving).
        #[arg(long)]
        by_site: bool,
    },
    /// The queue's shape, as Postfix's qshape: pending recipients by destination domain (or
    /// `--by`) and by how long their message has waited (columns: up to N minutes). Live through
    /// the running server's listen.http, from the spool when it is stopped.
    Summary {
        /// Rows by `domain`, `sender` (domain), `user`, `site` (live only) or `state`.
        #[arg(long, default_value = "domain", value_parser = ["domain", "sender", "user", "site", "state"])]
        by: String,
        /// Print JSON (`{"by", "buckets", "rows": [{"key", "total", "counts"}]}`).
        #[arg(long)]
        json: bool,
        /// Rows shown under the total.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Show one message: envelope, per-recipient state, or its purge placeholder.
    Show {
        /// Queue id (16 hex digits).
        id: String,
    },
    /// Delete a message: every recipient not yet final is marked deleted (no DSN). Goes through
    /// the HTTP API while the server runs, straight to the spool when it is stopped.
    Delete {
        /// Queue id (16 hex digits).
        id: String,
    },
    /// Bounce a message now (with a DSN to its sender), or every queued recipient of a domain
    /// (`--domain`) or of a user's messages (`--user`). Needs the running server's HTTP API.
    Bounce {
        /// Queue id (16 hex digits).
        #[arg(required_unless_present_any = ["domain", "user"], conflicts_with_all = ["domain", "user"])]
        id: Option<String>,
        /// Every queued recipient of this domain.
        #[arg(long, conflicts_with = "user")]
        domain: Option<String>,
        /// Every queued recipient of the messages this authenticated user submitted.
        #[arg(long)]
        user: Option<String>,
    },
    /// Hold delivery for a domain, a site, an egress source or a user until `queue resume`
    /// (or for `--for`). Needs the running server's HTTP API.
    Suspend {
        /// What to hold.
        #[command(flatten)]
        target: SuspendTarget,
        /// End by itself after this long (e.g. 30m).
        #[arg(long = "for")]
        duration: Option<String>,
    },
    /// End a suspension (its id from `queue suspend` or `queue suspensions`).
    Resume {
        /// Suspension id.
        id: u64,
    },
    /// List the suspensions in force.
    Suspensions,
    /// Retry deferred recipients now. Needs the running server's HTTP API.
    Flush {
        /// Only recipients of this domain.
        #[arg(long)]
        domain: Option<String>,
    },
}

/// What `queue suspend` holds: exactly one of these.
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct SuspendTarget {
    /// A recipient domain.
    #[arg(long)]
    domain: Option<String>,
    /// A destination site: its MX host names, space-separated (as events and metrics show it).
    #[arg(long)]
    site: Option<String>,
    /// An egress source name.
    #[arg(long)]
    source: Option<String>,
    /// An authenticated user.
    #[arg(long)]
    user: Option<String>,
}

impl SuspendTarget {
    fn query(&self) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("domain", &self.domain),
            ("site", &self.site),
            ("source", &self.source),
            ("user", &self.user),
        ] {
            if let Some(v) = v {
                q.append_pair(k, v);
            }
        }
        q.finish()
    }
}

/// `ringmta spool ...`
#[derive(Debug, Subcommand)]
pub enum SpoolAction {
    /// Verify every record's checksum and report what recovery would do. Changes nothing.
    /// Exit status (as fsck's): 0 clean, 1 torn tails only (appends a crash cut off, never
    /// acknowledged), 4 damage (records lost, or a file whose header cannot be read; after a
    /// power cut possibly unsynced appends of the active segment), 8 the check could not run
    /// (2: a mistyped command line).
    Check,
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Serve { config } => {
            let loaded = load(config.as_deref())?;
            init_logging(&loaded);
            crate::server::serve(loaded, config.as_deref())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::ApiToken { name, scopes } => {
            use base64::Engine as _;
            use rand::RngCore as _;
            let mut bytes = [0u8; 32];
            rand::thread_rng().fill_bytes(&mut bytes);
            let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
            let hash = crate::config::tokens::token_sha256(&token);
            let scopes: Vec<String> = scopes.iter().map(|s| format!("{s:?}")).collect();
            println!("token: {token}");
            println!(
                "\n[[api_tokens]]\nname = {name:?}\ntoken_sha256 = \"{hash}\"\nscopes = [{}]",
                scopes.join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::HashPassword => {
            let mut input = String::new();
            std::io::stdin()
                .read_to_string(&mut input)
                .context("cannot read stdin")?;
            let password = input.trim_end_matches(['\r', '\n']);
            if password.is_empty() {
                bail!("empty password on stdin");
            }
            let hash = crate::auth::hash_password(password)
                .map_err(|e| anyhow::anyhow!("hashing failed: {e}"))?;
            println!("{hash}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Bounce {
            action:
                BounceAction::Classify {
                    rules,
                    explain,
                    no_builtin,
                },
        } => {
            use crate::bounce::classify::Classifier;
            let mut classifier = Classifier::builtin();
            if let Some(path) = rules {
                let text = std::fs::read_to_string(&path)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                let operator = Classifier::from_toml(&text, &path.display().to_string())?;
                classifier = if no_builtin {
                    operator
                } else {
                    classifier.with_operator_rules(operator)
                };
            }
            let stdin = std::io::stdin();
            let mut out = std::io::stdout().lock();
            for line in std::io::BufRead::lines(stdin.lock()) {
                let line = line.context("cannot read stdin")?;
                if line.trim().is_empty() {
                    continue;
                }
                if explain {
                    let explanation = classifier.explain_line(&line);
                    let text = format!("{line}\n{explanation}\n");
                    std::io::Write::write_all(&mut out, text.as_bytes())?;
                } else {
                    serde_json::to_writer(&mut out, &classifier.verdict_line(&line))?;
                    std::io::Write::write_all(&mut out, b"\n")?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Spool {
            config,
            action: SpoolAction::Check,
        } => {
            // 1 and 4 are verdicts: a check that cannot run says so with its own status.
            let checked = load(config.as_deref())
                .and_then(|config| Ok(crate::spool::check(&config.spool_dir)?));
            match checked {
                Ok(report) => {
                    println!("{report}");
                    Ok(ExitCode::from(report.exit_code()))
                }
                Err(e) => {
                    eprintln!("ringmta: {e:#}");
                    Ok(ExitCode::from(8))
                }
            }
        }
        Command::Queue { config, action } => {
            let config = load(config.as_deref())?;
            queue(&config, action)
        }
        Command::Top {
            config,
            interval,
            count,
        } => {
            let config = load(config.as_deref())?;
            let addr = http_addr(&config).context("top needs the running server's listen.http")?;
            let interval = std::time::Duration::try_from_secs_f64(interval)
                .ok()
                .filter(|d| *d >= std::time::Duration::from_millis(100))
                .context("--interval must be at least 0.1 seconds")?;
            crate::top::run(
                &|path| api_call(addr, "GET", path),
                &addr.to_string(),
                interval,
                count,
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Suppression { config, action } => {
            let config = load(config.as_deref())?;
            let addr = http_addr(&config)
                .context("the suppression commands need the running server's listen.http")?;
            let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let user = |u: &Option<String>| {
                u.as_deref()
                    .map(|u| format!("user={}", enc(u)))
                    .unwrap_or_default()
            };
            let body = match action {
                SuppressionAction::Ls => api_call(addr, "GET", "/api/v1/suppressions")?,
                SuppressionAction::Add {
                    address,
                    user: u,
                    reason,
                    duration,
                } => {
                    let mut q = format!("address={}&{}", enc(&address), user(&u));
                    if let Some(r) = reason {
                        q += &format!("&reason={}", enc(&r));
                    }
                    if let Some(d) = duration {
                        q += &format!("&duration={}", enc(&d));
                    }
                    api_call(addr, "POST", &format!("/api/v1/suppressions?{q}"))?
                }
                SuppressionAction::Rm { address, user: u } => api_call(
                    addr,
                    "DELETE",
                    &format!("/api/v1/suppressions/{}?{}", enc(&address), user(&u)),
                )?,
            };
            println!("{body}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The running server's HTTP address: `listen.http`, or with port 0 there the address the
/// server wrote in `spool_dir/http.addr` when it bound.
fn http_addr(config: &Config) -> Option<std::net::SocketAddr> {
    config.http.map(|a| {
        if a.port() != 0 {
            return a;
        }
        std::fs::read_to_string(config.spool_dir.join("http.addr"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(a)
    })
}

fn queue(config: &Config, action: QueueAction) -> Result<ExitCode> {
    let dir = config.spool_dir.as_path();
    let http = http_addr(config);
    match &action {
        QueueAction::Delete { id } => {
            let id: QueueId = id.parse()?;
            let text = match delete(dir, id) {
                Ok(n) => format!("{id}: {n} recipient(s) marked deleted"),
                Err(offline) => match http {
                    Some(addr) => api_call(addr, "DELETE", &format!("/api/v1/messages/{id}"))?,
                    None => return Err(offline),
                },
            };
            println!("{text}");
            return Ok(ExitCode::SUCCESS);
        }
        QueueAction::Bounce { id, domain, user } => {
            let addr = http.context("queue bounce needs the running server's listen.http")?;
            let path = match id {
                Some(id) => {
                    let id: QueueId = id.parse()?;
                    format!("/api/v1/messages/{id}/bounce")
                }
                None => {
                    let mut q = form_urlencoded::Serializer::new(String::new());
                    match (domain, user) {
                        (Some(d), _) => q.append_pair("domain", d),
                        (_, Some(u)) => q.append_pair("user", u),
                        (None, None) => bail!("give a queue id, --domain or --user"),
                    };
                    format!("/api/v1/queue/bounce?{}", q.finish())
                }
            };
            println!("{}", api_call(addr, "POST", &path)?);
            return Ok(ExitCode::SUCCESS);
        }
        QueueAction::Suspend { target, duration } => {
            let addr = http.context("queue suspend needs the running server's listen.http")?;
            let mut path = format!("/api/v1/suspensions?{}", target.query());
            if let Some(d) = duration {
                path.push_str("&duration=");
                path.extend(form_urlencoded::byte_serialize(d.as_bytes()));
            }
            println!("{}", api_call(addr, "POST", &path)?);
            return Ok(ExitCode::SUCCESS);
        }
        QueueAction::Resume { id } => {
            let addr = http.context("queue resume needs the running server's listen.http")?;
            println!(
                "{}",
                api_call(addr, "DELETE", &format!("/api/v1/suspensions/{id}"))?
            );
            return Ok(ExitCode::SUCCESS);
        }
        QueueAction::Suspensions => {
            let addr = http.context("queue suspensions needs the running server's listen.http")?;
            println!("{}", api_call(addr, "GET", "/api/v1/suspensions")?);
            return Ok(ExitCode::SUCCESS);
        }
        QueueAction::Flush { domain } => {
            let addr = http.context("queue flush needs the running server's listen.http")?;
            let path = match domain {
                Some(d) => format!("/api/v1/queue/flush?domain={d}"),
                None => "/api/v1/queue/flush".to_owned(),
            };
            println!("{}", api_call(addr, "POST", &path)?);
            return Ok(ExitCode::SUCCESS);
        }
        QueueAction::Ls { by_site: true } => {
            let addr = http.context(
                "queue ls --by-site needs the running server's listen.http (sites are learned by resolving)",
            )?;
            print!("{}", by_site(&api_call(addr, "GET", "/api/v1/queue")?)?);
            return Ok(ExitCode::SUCCESS);
        }
        QueueAction::Summary { by, json, limit } => {
            let by_key = By::parse(by).context("--by")?;
            let running = crate::spool::lock(dir).is_err();
            let shape = match http {
                Some(addr) if running => {
                    let body = api_call(addr, "GET", &format!("/api/v1/queue/summary?by={by}"))?;
                    serde_json::from_str(&body)
                        .ok()
                        .and_then(|v| Shape::from_json(&v))
                        .context("the server's queue summary")?
                }
                _ if by_key == By::Site => bail!(
                    "queue summary --by site needs the running server's listen.http (sites are learned by resolving)"
                ),
                _ => offline_shape(
                    &crate::spool::read_spool(dir)?,
                    by_key,
                    crate::time::unix_ms(std::time::SystemTime::now()),
                ),
            };
            if *json {
                println!("{}", shape.json(by_key));
            } else {
                print!("{}", shape.table(*limit));
            }
            return Ok(ExitCode::SUCCESS);
        }
        QueueAction::Ls { .. } | QueueAction::Show { .. } => {}
    }
    let snapshot = crate::spool::read_spool(dir)?;
    match action {
        QueueAction::Ls { .. } => {
            print!("{}", listing(&snapshot));
            Ok(ExitCode::SUCCESS)
        }
        QueueAction::Delete { .. }
        | QueueAction::Summary { .. }
        | QueueAction::Bounce { .. }
        | QueueAction::Flush { .. }
        | QueueAction::Suspend { .. }
        | QueueAction::Resume { .. }
        | QueueAction::Suspensions => {
            unreachable!("handled above")
        }
        QueueAction::Show { id } => {
            let id: QueueId = id.parse()?;
            match describe(&snapshot, id) {
                Some(text) => {
                    print!("{text}");
                    Ok(ExitCode::SUCCESS)
                }
                None => bail!("no message {id} in {}", dir.display()),
            }
        }
    }
}

/// Marks every non-final recipient of `id` as deleted, durably. Needs the spool lock.
fn delete(dir: &Path, id: QueueId) -> Result<u64> {
    use crate::spool::{Shard, ShardConfig};
    let _lock = crate::spool::lock(dir).context(
        "cannot lock the spool: is the server running? (with listen.http set, this command goes through its API)",
    )?;
    let now = crate::time::unix_ms(std::time::SystemTime::now());
    // Appends after open go to a fresh segment; keep it small for a one-off command.
    let cfg = ShardConfig {
        segment_size: 1 << 20,
        ..ShardConfig::new(dir, id.shard())
    };
    let (mut shard, _) = Shard::open(cfg, now)?;
    let Some(marked) = shard.mark_deleted(id, now) else {
        bail!("no message {id} in {}", dir.display())
    };
    let n = marked?;
    shard.sync()?;
    Ok(n)
}

/// A one-shot HTTP/1.1 request to the local operator API; returns the body, or an error with
/// the API's message for a non-2xx status.
fn api_call(addr: std::net::SocketAddr, method: &str, path: &str) -> Result<String> {
    use std::io::Write as _;
    let mut s = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(5))
        .with_context(|| format!("cannot reach the server's HTTP API at {addr}"))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    // With [[api_tokens]] configured, the token comes from the environment.
    let auth = std::env::var("RINGMTA_API_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    if !(200..300).contains(&status) {
        bail!("{method} {path}: HTTP {status}: {}", body.trim());
    }
    Ok(body.trim().to_owned())
}

/// The queue's shape read from a spool snapshot (the server stopped).
fn offline_shape(snap: &SpoolSnapshot, by: By, now_ms: u64) -> Shape {
    let mut shape = Shape::default();
    for m in &snap.messages {
        let pending = (m.state.recipients.iter().zip(&m.meta.recipients))
            .filter(|(r, _)| !r.is_final())
            .map(|(r, meta)| (meta.address.as_str(), r.status().name()));
        shape.add_message(
            by,
            now_ms.saturating_sub(m.meta.received_at_ms),
            (&m.meta.reverse_path, m.meta.auth_user.as_deref()),
            pending,
        );
    }
    shape
}

/// One line per message: id, received time, size, state counts, sender, recipients.
fn listing(snap: &SpoolSnapshot) -> String {
    let mut out = String::new();
    for m in &snap.messages {
        let pending = m.state.recipients.iter().filter(|r| !r.is_final()).count();
        let rcpts: Vec<&str> = m
            .meta
            .recipients
            .iter()
            .map(|r| r.address.as_str())
            .collect();
        let _ = writeln!(
            out,
            "{}  {}  {:>8} B  {}/{} pending  <{}>  {}",
            m.id,
            crate::rfc5322::date(ms_to_time(m.meta.received_at_ms)),
            m.body_len,
            pending,
            rcpts.len(),
            m.meta.reverse_path,
            rcpts.join(" ")
        );
    }
    for p in &snap.placeholders {
        let _ = writeln!(
            out,
            "{:016x}  (content purged after delivery)  <{}>",
            p.id, p.reverse_path
        );
    }
    let _ = writeln!(
        out,
        "{} message(s) in the spool, {} purged placeholder(s)",
        snap.messages.len(),
        snap.placeholders.len()
    );
    out
}

/// Everything known about one message, or its placeholder.
/// The `sites` of `GET /api/v1/queue` as a table, busiest first; recipients of domains not
/// resolved yet are counted under `(not resolved yet)`.
fn by_site(summary: &str) -> Result<String> {
    let v: serde_json::Value = serde_json::from_str(summary).context("the queue summary")?;
    let mut rows: Vec<(u64, String)> = v["sites"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(site, n)| {
                    let name = if site.is_empty() {
                        "(not resolved yet)".to_owned()
                    } else {
                        site.clone()
                    };
                    (n.as_u64().unwrap_or(0), name)
                })
                .collect()
        })
        .unwrap_or_default();
    rows.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let mut out = format!("{:>9}  site\n", "pending");
    for (n, site) in rows {
        let _ = writeln!(out, "{n:>9}  {site}");
    }
    Ok(out)
}

fn describe(snap: &SpoolSnapshot, id: QueueId) -> Option<String> {
    let mut out = String::new();
    if let Some(m) = snap.messages.iter().find(|m| m.id == id) {
        let meta = &m.meta;
        let _ = writeln!(out, "id:          {}", m.id);
        let _ = writeln!(
            out,
            "received:    {}",
            crate::rfc5322::date(ms_to_time(meta.received_at_ms))
        );
        let _ = writeln!(out, "from:        <{}>", meta.reverse_path);
        let _ = writeln!(
            out,
            "client:      {} (helo {})",
            meta.client_addr, meta.helo
        );
        if let Some(u) = &meta.auth_user {
            let _ = writeln!(out, "auth user:   {u}");
        }
        if let Some(t) = &meta.tls {
            let _ = writeln!(out, "tls:         {t}");
        }
        if let Some(e) = &meta.envid {
            let _ = writeln!(out, "envid:       {e}");
        }
        if m.options.expires_at_ms != 0 {
            let _ = writeln!(
                out,
                "expires:     {}",
                crate::rfc5322::date(ms_to_time(m.options.expires_at_ms))
            );
        }
        if m.options.priority != 0 {
            let _ = writeln!(out, "priority:    {}", m.options.priority);
        }
        let _ = writeln!(out, "size:        {} bytes", m.body_len);
        let _ = writeln!(out, "recipients:");
        for (i, r) in meta.recipients.iter().enumerate() {
            let st = m.state.recipients.get(i);
            let state = match st.and_then(|s| s.kind) {
                None => "queued".to_owned(),
                Some(k) => format!("{k:?}").to_lowercase(),
            };
            let attempts = st.map(|s| s.attempts).unwrap_or(0);
            let reply = m.last_replies.get(i).cloned().flatten().unwrap_or_default();
            let _ = writeln!(
                out,
                "  {}  {state}  attempts {attempts}  {reply}",
                r.address
            );
        }
        return Some(out);
    }
    let p = snap.placeholders.iter().find(|p| p.id == id.0)?;
    let _ = writeln!(out, "id:          {id}");
    let _ = writeln!(out, "content purged after delivery");
    let _ = writeln!(
        out,
        "received:    {}",
        crate::rfc5322::date(ms_to_time(p.received_at_ms))
    );
    let _ = writeln!(
        out,
        "purged:      {}",
        crate::rfc5322::date(ms_to_time(p.purged_at_ms))
    );
    let _ = writeln!(out, "from:        <{}>", p.reverse_path);
    let _ = writeln!(out, "size:        {} bytes", p.body_len);
    for r in &p.recipients {
        let kind = crate::spool::StatusKind::from_u8(r.kind)
            .map(|k| format!("{k:?}").to_lowercase())
            .unwrap_or_else(|| "unknown".into());
        let _ = writeln!(
            out,
            "  {}  {kind}  attempts {}  {}",
            r.address, r.attempts, r.reply
        );
    }
    Some(out)
}

fn ms_to_time(ms: u64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)
}

fn load(path: Option<&Path>) -> Result<Config> {
    match path {
        Some(p) => Ok(config::load(p)?),
        None => Ok(Config::default()),
    }
}

fn init_logging(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log_level));
    use std::io::IsTerminal as _;
    // Colour only for a person at a terminal: a file or journald would keep the escapes.
    let builder = tracing_subscriber::fmt()
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
