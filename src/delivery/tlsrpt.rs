//! SMTP TLS Reporting (RFC 8460): the sessions of every core with the MX hosts of domains that
//! have an MTA-STS policy, counted per policy domain for the current period. The worker that
//! sends the reports (`worker::tls_reports`) takes the counts at the end of each period.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::queue::tlsrpt::{ResultType, Sessions};

/// At most this many policy domains are counted per period; sessions with others are not.
pub const MAX_DOMAINS: usize = 10_000;

/// The counts every core shares.
#[derive(Debug, Default)]
pub struct TlsRpt {
    sessions: Mutex<HashMap<String, Sessions>>,
    period_start_ms: AtomicU64,
}

impl TlsRpt {
    /// Counting from `now_ms`.
    pub fn new(now_ms: u64) -> TlsRpt {
        TlsRpt {
            sessions: Mutex::default(),
            period_start_ms: AtomicU64::new(now_ms),
        }
    }

    fn with(&self, domain: &str, f: impl FnOnce(&mut Sessions)) {
        let mut sessions = self
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(s) = sessions.get_mut(domain) {
            f(s);
        } else if sessions.len() < MAX_DOMAINS {
            f(sessions.entry(domain.to_owned()).or_default());
        }
    }

    /// A session with an MX host of `domain` negotiated TLS as its policy asks.
    pub fn success(&self, domain: &str) {
        self.with(domain, |s| s.successful += 1);
    }

    /// A session with `mx`, an MX host of `domain`, failed for `result`.
    pub fn failure(&self, domain: &str, result: ResultType, mx: &str) {
        self.with(domain, |s| {
            *s.failed.entry((result, mx.to_owned())).or_default() += 1;
        });
    }

    /// The counts of the period that ends at `now_ms`, and its start; a new period begins.
    pub fn take(&self, now_ms: u64) -> (u64, HashMap<String, Sessions>) {
        let mut sessions = self
            .sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let start = self.period_start_ms.swap(now_ms, Ordering::Relaxed);
        (start, std::mem::take(&mut *sessions))
    }
}
