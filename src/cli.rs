//! Command-line interface: sub-commands and their implementations.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use crate::config::resolved::LogFormat;
use crate::config::{self, Config};
use crate::ids::QueueId;
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
}

/// `ringmta queue ...`
#[derive(Debug, Subcommand)]
pub enum QueueAction {
    /// List queued messages.
    Ls,
    /// Show one message: envelope, per-recipient state, or its purge placeholder.
    Show {
        /// Queue id (16 hex digits).
        id: String,
    },
}

/// `ringmta spool ...`
#[derive(Debug, Subcommand)]
pub enum SpoolAction {
    /// Verify every record's checksum and report what recovery would do. Changes nothing.
    Check,
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Serve { config } => {
            let config = load(config.as_deref())?;
            init_logging(&config);
            crate::server::serve(config)?;
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
        Command::Spool {
            config,
            action: SpoolAction::Check,
        } => {
            let config = load(config.as_deref())?;
            let report = crate::spool::check(&config.spool_dir)?;
            println!("{report}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Queue { config, action } => {
            let config = load(config.as_deref())?;
            queue(&config.spool_dir, action)
        }
    }
}

fn queue(dir: &Path, action: QueueAction) -> Result<ExitCode> {
    let snapshot = crate::spool::read_spool(dir)?;
    match action {
        QueueAction::Ls => {
            print!("{}", listing(&snapshot));
            Ok(ExitCode::SUCCESS)
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
            crate::message::rfc5322_date(ms_to_time(m.meta.received_at_ms)),
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
fn describe(snap: &SpoolSnapshot, id: QueueId) -> Option<String> {
    let mut out = String::new();
    if let Some(m) = snap.messages.iter().find(|m| m.id == id) {
        let meta = &m.meta;
        let _ = writeln!(out, "id:          {}", m.id);
        let _ = writeln!(
            out,
            "received:    {}",
            crate::message::rfc5322_date(ms_to_time(meta.received_at_ms))
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
        crate::message::rfc5322_date(ms_to_time(p.received_at_ms))
    );
    let _ = writeln!(
        out,
        "purged:      {}",
        crate::message::rfc5322_date(ms_to_time(p.purged_at_ms))
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
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
