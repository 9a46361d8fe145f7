//! Content checks between the end of DATA and the spool: validation (the message parses, its
//! header section and MIME structure are bounded, and an authenticated sender's header From is one it may use),
//! malware scanning with clamd, spam scoring with rspamd, and DKIM signing.
//!
//! Costs nothing when off: with no scanner and no DKIM key configured, `check` only runs the
//! validation of authenticated submissions and a header-size scan. Scanners are awaited on the
//! session's task (io_uring sockets with timeouts), so a slow scanner delays only its own
//! message, never the other sessions of the core.

pub mod clamd;
pub mod dkim;
pub mod http1;
pub mod mime;
pub mod refusal;
pub mod rspamd;
pub mod scanner;

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::Config;
use crate::config::resolved::{OnError, Scanner, User};
use crate::rfc5322::header_section;
use crate::smtp::{Mailbox, ReversePath, SenderPattern, Transaction};

use refusal::Refusal;

/// Why the checks could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    /// A DKIM key could not be loaded.
    #[error("dkim: {0}")]
    Dkim(#[from] dkim::DkimError),
    /// The clamd address is not valid.
    #[error("scan.clamd.address: {0}")]
    ClamdAddress(String),
}

/// The configured checks; shared read-only by every worker.
pub struct ContentChecks {
    max_header_size: usize,
    mime: mime::MimeLimits,
    senders: HashMap<String, Vec<SenderPattern>>,
    clamd: Option<(clamd::ClamdAddr, Scanner)>,
    rspamd: Option<Scanner>,
    dkim: Option<Arc<dkim::DkimSigner>>,
    /// Signing threads, when a key is RSA; `None` signs on the calling thread.
    sign_pool: Option<crossbeam_channel::Sender<SignJob>>,
}

/// One message to sign on the pool.
struct SignJob {
    signer: Arc<dkim::DkimSigner>,
    message: Vec<u8>,
    now_unix: u64,
    reply: tokio::sync::oneshot::Sender<Option<Vec<u8>>>,
}

/// Jobs waiting for a signing thread before new ones are signed inline instead (backpressure
/// on the worker rather than an unbounded queue).
const SIGN_QUEUE: usize = 1024;

/// Starts `threads` signing threads; they end when the returned sender (and every clone) is
/// dropped, e.g. when a SIGHUP reload replaces the checks.
fn start_sign_pool(threads: usize) -> crossbeam_channel::Sender<SignJob> {
    let (tx, rx) = crossbeam_channel::bounded::<SignJob>(SIGN_QUEUE);
    for i in 0..threads.max(1) {
        let rx = rx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("ringmta-dkim-{i}"))
            .spawn(move || {
                for job in rx {
                    let header = sign_or_log(&job.signer, &job.message, job.now_unix);
                    let _ = job.reply.send(header);
                }
            });
        if let Err(e) = spawned {
            // Fewer threads (or none: then every job falls back to inline signing).
            tracing::warn!(error = %e, "cannot start a dkim signing thread");
        }
    }
    tx
}

fn sign_or_log(signer: &dkim::DkimSigner, message: &[u8], now_unix: u64) -> Option<Vec<u8>> {
    match signer.sign(message, now_unix) {
        Ok(sig) => sig,
        Err(e) => {
            tracing::warn!(error = %e, "dkim signing failed; message sent unsigned");
            None
        }
    }
}

/// What the checks add to an accepted message.
#[derive(Debug, Default)]
pub struct Additions {
    /// Header lines to prepend (DKIM-Signature, X-Spam-*), CRLF-terminated.
    pub headers: Vec<u8>,
}

impl ContentChecks {
    /// Builds the checks from the configuration and the users (with the dev user, if any).
    pub fn new(config: &Config, users: &[User]) -> Result<ContentChecks, ContentError> {
        let senders = users
            .iter()
            .map(|u| {
                let patterns = u
                    .allowed_senders
                    .iter()
                    .filter_map(|p| SenderPattern::parse(p).ok())
                    .collect();
                (u.username.to_lowercase(), patterns)
            })
            .collect();
        let clamd = match &config.clamd {
            Some(s) => Some((
                clamd::ClamdAddr::parse(&s.target).map_err(ContentError::ClamdAddress)?,
                s.clone(),
            )),
            None => None,
        };
        let dkim = if config.dkim.is_empty() {
            None
        } else {
            Some(Arc::new(dkim::DkimSigner::load(&config.dkim)?))
        };
        let sign_pool = dkim
            .as_ref()
            .filter(|d| d.has_rsa() && config.dkim_sign_threads > 0)
            .map(|_| start_sign_pool(config.dkim_sign_threads));
        Ok(ContentChecks {
            max_header_size: config.limits.max_header_size,
            mime: mime::MimeLimits {
                max_depth: config.limits.max_mime_depth,
                max_parts: config.limits.max_mime_parts,
            },
            senders,
            clamd,
            rspamd: config.rspamd.clone(),
            dkim,
            sign_pool,
        })
    }

    /// Whether anything beyond validation is configured.
    pub fn has_scanners(&self) -> bool {
        self.clamd.is_some() || self.rspamd.is_some()
    }

    /// Pure checks of a finished transaction. `Err` says why it is refused (its reply:
    /// `Reply::from(&refusal)`).
    pub fn validate(&self, t: &Transaction) -> Result<(), Refusal> {
        let headers = header_section(&t.body);
        if headers.len() > self.max_header_size {
            return Err(Refusal::HeaderTooBig);
        }
        if let Err(e) = mime::check(&t.body, self.mime) {
            return Err(Refusal::Structure(e));
        }
        let Some(user) = &t.auth_user else {
            return Ok(());
        };
        // RFC 6409 §8: a submission server may check that the author is the authenticated user.
        let parsed = mail_parser::MessageParser::default().parse_headers(&t.body);
        let from = parsed
            .as_ref()
            .and_then(|m| m.from())
            .and_then(|a| a.first())
            .and_then(|a| a.address())
            .map(str::to_owned);
        let Some(from) = from else {
            return Err(Refusal::NoFrom);
        };
        let Ok(mailbox) = Mailbox::parse(&from) else {
            return Err(Refusal::NoFrom);
        };
        let allowed = self
            .senders
            .get(&user.to_lowercase())
            .is_some_and(|patterns| patterns.iter().any(|p| p.matches(&mailbox)));
        if !allowed {
            return Err(Refusal::FromNotOwned {
                from,
                user: user.clone(),
            });
        }
        Ok(())
    }

    /// Runs the scanners (when configured). `Err` says why the message is refused.
    pub async fn scan(&self, t: &Transaction) -> Result<Additions, Refusal> {
        let mut add = Additions::default();
        if let Some((addr, s)) = &self.clamd {
            match clamd::clamd_scan(addr, &t.body, s.timeout).await {
                Ok(clamd::ScanVerdict::Clean) => {}
                Ok(clamd::ScanVerdict::Infected(name)) => {
                    tracing::info!(signature = %name, "message rejected: malware");
                    return Err(Refusal::Malware {
                        signature: printable(&name),
                    });
                }
                Err(e) => scanner_failed("clamd", s.on_error, &e)?,
            }
        }
        if let Some(s) = &self.rspamd {
            let rcpts: Vec<String> = t
                .recipients
                .iter()
                .map(|r| r.forward_path.to_string())
                .collect();
            let from = match &t.reverse_path {
                ReversePath::Null => String::new(),
                ReversePath::Mailbox(m) => m.to_string(),
            };
            let req = rspamd::RspamdRequest {
                from: &from,
                rcpts: &rcpts,
                ip: Some(t.peer.ip()),
                helo: Some(&t.helo),
                user: t.auth_user.as_deref(),
                queue_id: None,
            };
            match rspamd::rspamd_check(&s.target, &req, &t.body, s.timeout).await {
                Ok(r) => match r.action {
                    rspamd::SpamAction::Reject => {
                        return Err(Refusal::Spam { score: r.score });
                    }
                    rspamd::SpamAction::SoftReject => {
                        return Err(Refusal::SpamDeferred);
                    }
                    rspamd::SpamAction::Greylist => {
                        return Err(Refusal::Greylisted);
                    }
                    rspamd::SpamAction::AddHeader | rspamd::SpamAction::RewriteSubject => {
                        add.headers.extend_from_slice(&rspamd::spam_headers(&r));
                    }
                    rspamd::SpamAction::NoAction => {}
                },
                Err(e) => scanner_failed("rspamd", s.on_error, &e)?,
            }
        }
        Ok(add)
    }

    /// The DKIM-Signature header for the final message, if a key matches its From domain.
    /// With an RSA key and `dkim_sign_threads > 0` the signature is computed on the signing
    /// threads, so the other sessions of the calling core do not wait behind it (inline when
    /// that queue is full).
    pub async fn sign(&self, message: Vec<u8>, now_unix: u64) -> Option<Vec<u8>> {
        let signer = self.dkim.as_ref()?;
        let Some(pool) = &self.sign_pool else {
            return sign_or_log(signer, &message, now_unix);
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = SignJob {
            signer: Arc::clone(signer),
            message,
            now_unix,
            reply,
        };
        match pool.try_send(job) {
            Ok(()) => answer.await.ok().flatten(),
            Err(e) => {
                let job = e.into_inner();
                sign_or_log(signer, &job.message, now_unix)
            }
        }
    }

    /// Whether DKIM signing is configured.
    pub fn has_dkim(&self) -> bool {
        self.dkim.is_some()
    }
}

fn scanner_failed(name: &str, on_error: OnError, e: &dyn std::fmt::Display) -> Result<(), Refusal> {
    match on_error {
        OnError::Accept => {
            tracing::warn!(scanner = name, error = %e, "scanner failed; message accepted unscanned (on_error = accept)");
            Ok(())
        }
        OnError::Tempfail => {
            tracing::warn!(scanner = name, error = %e, "scanner failed; message deferred");
            Err(Refusal::ScannerUnavailable)
        }
    }
}

fn printable(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(200)
        .collect()
}
