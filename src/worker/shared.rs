//! The state every worker shares, built once at start-up from the configuration: TLS, the
//! credential pool, session settings, bounce rules, the event log, content checks, per-core
//! metrics, the per-address rate limits and the destination sites' limits.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};

use crate::auth::{AuthService, ThrottlePolicy};
use crate::config::Config;
use crate::config::resolved::{Secret, TlsSource, User};
use crate::ratelimit::RateLimit;
use crate::smtp::{PortRole, SessionConfig, SessionLimits};

use super::Shared;

impl Shared {
    /// Builds the shared state. Creates the self-signed certificate and the development user's
    /// password file under `spool_dir` when the configuration asks for them.
    pub fn build(config: Arc<Config>) -> Result<Shared> {
        let (cert, key) = match &config.tls {
            TlsSource::Files { cert, key } => (cert.clone(), key.clone()),
            TlsSource::SelfSigned => crate::net::tls::ensure_self_signed(
                &config.spool_dir.join("tls"),
                &config.hostname,
            )?,
        };
        let tls = crate::net::tls::server_config(&cert, &key)?;
        let (verify_tls, roots) =
            crate::net::tls::outbound_verifying_config(config.delivery.tls_ca_file.as_deref())?;
        let verifies = std::iter::once(config.delivery.tls)
            .chain(config.delivery.route_tls.iter().map(|(_, p)| *p))
            .any(|p| p == crate::smtp::client::TlsPolicy::Verify);
        if verifies && roots == 0 {
            tracing::warn!(
                "the verify TLS policy is in force but no trusted root was found (install \
                 ca-certificates or set delivery.tls_ca_file): every verified delivery will defer"
            );
        }

        let users = users_of(&config)?;
        for u in &users {
            if matches!(u.secret, Secret::Plain(_)) && config.users.is_some() {
                tracing::warn!(user = %u.username, "plaintext password in config; use password_hash from `ringmta hash-password`");
            }
        }
        let policy = ThrottlePolicy {
            max_failures: config.limits.auth_failures_per_ip,
            window: config.limits.auth_failure_window,
        };
        let auth = AuthService::start(&users, policy, config.threads.clamp(1, 4));

        let sessions = [PortRole::Relay, PortRole::Submission, PortRole::Submissions]
            .map(|role| Arc::new(session_config(&config, role)));
        let classifier = build_classifier(&config)?;
        let events_replay_since = crate::delivery::events::last_ts_ms(&config.delivery.event_log)
            .map(|t| t.saturating_sub(crate::delivery::events::REPLAY_MARGIN_MS));
        let events = crate::delivery::events::EventLog::open(&config.delivery.event_log)
            .with_context(|| {
                format!(
                    "cannot open event log {}",
                    config.delivery.event_log.display()
                )
            })?;
        let content =
            crate::content::ContentChecks::new(&config, &users).context("content checks")?;
        let suppressions = crate::suppress::Suppressions::open(
            &config.spool_dir.join("suppressions.jsonl"),
            config.suppression_scope,
            crate::time::unix_ms(std::time::SystemTime::now()),
        )
        .context("cannot open the suppression list")?;
        // Every refusal of a suppressed recipient is a `suppressed` event.
        let log = events.clone();
        suppressions.observe(Box::new(move |r| {
            log.suppressed(crate::delivery::events::SuppressedEvent {
                at_ms: crate::time::unix_ms(std::time::SystemTime::now()),
                sender: r.sender.to_owned(),
                user: r.user.map(str::to_owned),
                recipient: r.recipient.to_owned(),
                reply: r.reply.to_string(),
            });
        }));
        Ok(Shared {
            tls_rpt: config.delivery.tls_rpt.is_some().then(|| {
                Arc::new(crate::delivery::tlsrpt::TlsRpt::new(crate::time::unix_ms(
                    std::time::SystemTime::now(),
                )))
            }),
            events_replay_since,
            peers: std::sync::OnceLock::new(),
            suppressions: Arc::new(suppressions),
            config: Arc::clone(&config),
            tls,
            sts: Arc::new(crate::delivery::sts::Sts::new(
                config.delivery.mta_sts,
                config.delivery.mta_sts_https_port,
                config.spool_dir.join("mta-sts"),
                Arc::clone(&verify_tls),
            )),
            verify_tls,
            auth,
            sessions,
            classifier: Arc::new(classifier),
            events,
            content: Arc::new(content),
            metrics: (0..config.threads)
                .map(|_| Arc::new(crate::metrics::CoreMetrics::default()))
                .collect(),
            connection_rate: RateLimit::new(
                config.limits.connection_rate_per_ip,
                config.limits.rate_window,
            ),
            message_rate: RateLimit::new(
                config.limits.message_rate_per_ip,
                config.limits.rate_window,
            ),
            sites: Arc::new(crate::delivery::sites::Sites::new(
                crate::queue::shaping::PathLimits {
                    max_connections: config.delivery.max_connections,
                    max_messages_per_second: config.delivery.max_messages_per_second,
                    max_messages_per_connection: config.delivery.max_messages_per_connection,
                    throttle: config.delivery.throttle,
                    max_queue_lifetime_ms: None,
                },
                config.shaping.clone(),
                std::time::Instant::now(),
            )),
            egress: Arc::new(crate::delivery::egress::Egress::new(
                &config.egress,
                config.delivery.egress_pool.as_deref(),
                &users,
            )),
            suspensions: Arc::default(),
            user_notify: users
                .iter()
                .filter_map(|u| Some((u.username.clone(), u.notify?)))
                .collect(),
            user_lifetimes: users
                .iter()
                .filter_map(|u| Some((u.username.clone(), u.max_queue_lifetime?)))
                .collect(),
        })
    }
}

/// The users a configuration defines, or the development user when it defines none.
pub fn users_of(config: &Config) -> Result<Vec<User>> {
    Ok(match &config.users {
        Some(users) => users.clone(),
        None => vec![dev_user(&config.spool_dir)?],
    })
}

fn session_config(config: &Config, role: PortRole) -> SessionConfig {
    let l = &config.limits;
    SessionConfig {
        hostname: config.hostname.clone(),
        role,
        limits: SessionLimits {
            max_line_length: l.max_line_length,
            max_message_size: l.max_message_size,
            max_recipients: l.max_recipients,
            max_bad_commands: l.max_bad_commands,
            max_auth_failures: l.max_auth_failures,
            command_timeout: l.command_timeout,
            data_timeout: l.data_timeout,
            min_data_rate: l.min_data_rate,
            max_junk_commands: l.max_junk_commands,
        },
        starttls_available: true,
        feedback_domain: match role {
            PortRole::Relay => config.delivery.bounce_domain.clone(),
            _ => None,
        },
    }
}

/// The development user of a config without `[[users]]`: created once, its password kept in
/// `spool_dir/dev-user` (mode 0600) and printed at every start.
fn dev_user(spool_dir: &std::path::Path) -> Result<User> {
    let path: PathBuf = spool_dir.join("dev-user");
    let password = match std::fs::read_to_string(&path) {
        Ok(p) if !p.trim().is_empty() => p.trim().to_owned(),
        _ => {
            use rand::Rng;
            let p: String = rand::thread_rng()
                .sample_iter(&rand::distributions::Alphanumeric)
                .take(20)
                .map(char::from)
                .collect();
            // Mode 0600 from the start, and durable: a password printed once must still be the
            // password after a power cut.
            crate::fsutil::replace_durably(&path, p.as_bytes(), 0o600)
                .with_context(|| format!("cannot write {}", path.display()))?;
            p
        }
    };
    let username = "dev@localhost".to_owned();
    println!("ringmta dev user: {username} password: {password} (no [[users]] configured)");
    Ok(User {
        username,
        secret: Secret::Plain(password),
        allowed_senders: vec!["*".into()],
        egress_pool: None,
        max_queue_lifetime: None,
        notify: None,
    })
}

/// The built-in bounce rules, with the operator's file on top when configured.
pub fn build_classifier(config: &Config) -> Result<crate::bounce::classify::Classifier> {
    let mut classifier = crate::bounce::classify::Classifier::builtin();
    if let Some(path) = &config.delivery.bounce_rules {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read bounce rules {}", path.display()))?;
        let extra =
            crate::bounce::classify::Classifier::from_toml(&text, &path.display().to_string())?;
        classifier = classifier.with_operator_rules(extra);
    }
    Ok(classifier)
}
