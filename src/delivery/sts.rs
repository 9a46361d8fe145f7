//! MTA-STS (RFC 8461) for outbound delivery: which policy holds for a recipient domain, fetched
//! over HTTPS with a verified certificate and cached in memory and on disk for its `max_age`.
//!
//! Per connection to a domain reached by MX, the `_mta-sts` TXT record is looked up (the
//! resolver caches it for its TTL) through `delivery.nameservers` when set. A cached policy
//! whose id matches and that has not expired is used as it is; otherwise the policy is fetched
//! from `https://mta-sts.<domain>/.well-known/mta-sts.txt` — the host's addresses resolved the
//! same way, the certificate checked against the system roots and `delivery.tls_ca_file`, the
//! reply bounded to 64 KiB plus its head and to 10 seconds per step, redirects not followed —
//! on a thread of its own, so a worker core never waits on it. When the record is missing or
//! the fetch fails, a cached policy that has not expired is still used (RFC 8461 §5.1). The
//! policy's parsing and matching are pure (`queue::sts`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::http_client::{Request, Target};
use crate::queue::sts::{MAX_POLICY, Policy, parse_policy, txt_id};

use super::route::Router;

/// A policy in force for a domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cached {
    /// The id of the TXT record it was fetched for.
    pub id: String,
    /// The policy.
    pub policy: Policy,
    /// When it stops being usable, ms since the Unix epoch (fetch time + `max_age`).
    pub expires_ms: u64,
}

/// The MTA-STS state every core shares.
pub struct Sts {
    enabled: bool,
    https_port: u16,
    dir: PathBuf,
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
    cache: Mutex<HashMap<String, Option<Cached>>>,
    /// Domains whose last fetch failed, and until when (ms) no new fetch is tried for them.
    failed: Mutex<HashMap<String, u64>>,
}

/// How long a failed fetch is not tried again for its domain.
const RETRY_FETCH_MS: u64 = 5 * 60 * 1000;

/// The policy cache file of a domain, as JSON.
#[derive(serde::Serialize, serde::Deserialize)]
struct OnDisk {
    id: String,
    expires_ms: u64,
    policy: String,
}

impl Sts {
    /// MTA-STS as configured: `enabled` (`delivery.mta_sts`), policies fetched on `https_port`
    /// (`delivery.mta_sts_https_port`, 443) with `tls`, cached in `dir`.
    pub fn new(
        enabled: bool,
        https_port: u16,
        dir: PathBuf,
        tls: Arc<rustls::ClientConfig>,
    ) -> Sts {
        Sts {
            enabled,
            https_port,
            dir,
            tls,
            timeout: Duration::from_secs(10),
            cache: Mutex::new(HashMap::new()),
            failed: Mutex::new(HashMap::new()),
        }
    }

    /// The policy in force for `domain` at `now_ms`, if any (see the module doc). Never fails:
    /// a lookup or fetch that fails leaves the cached policy, or none.
    pub async fn policy(&self, router: &Router, domain: &str, now_ms: u64) -> Option<Cached> {
        if !self.enabled || router.is_static(domain) {
            return None;
        }
        let cached = self.cached(domain).filter(|c| c.expires_ms > now_ms);
        let id = match router.txt(&format!("_mta-sts.{domain}")).await {
            Ok(records) => txt_id(records.iter().map(String::as_str)),
            Err(e) => {
                tracing::debug!(domain, error = %e, "mta-sts record lookup failed");
                return cached;
            }
        };
        let Some(id) = id else {
            return cached;
        };
        if let Some(c) = &cached
            && c.id == id
        {
            return cached;
        }
        // A policy host that failed is left alone for a while: every connection would
        // otherwise wait for the same timeout.
        let recently_failed = {
            let mut failed = self.failed.lock().unwrap_or_else(|e| e.into_inner());
            let recent = failed.get(domain).is_some_and(|until| *until > now_ms);
            if !recent {
                failed.remove(domain);
            }
            recent
        };
        if recently_failed {
            return cached;
        }
        match self.fetch(router, domain).await {
            Ok(policy) => {
                let c = Cached {
                    id,
                    expires_ms: now_ms.saturating_add(policy.max_age.saturating_mul(1000)),
                    policy,
                };
                self.store(domain, &c);
                Some(c)
            }
            Err(e) => {
                tracing::warn!(domain, error = %e, "mta-sts policy fetch failed");
                self.failed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(domain.to_owned(), now_ms + RETRY_FETCH_MS);
                cached
            }
        }
    }

    /// The policy cached for `domain`, from memory or else from its file (expired or not).
    pub fn cached(&self, domain: &str) -> Option<Cached> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .entry(domain.to_owned())
            .or_insert_with(|| self.read_file(domain))
            .clone()
    }

    fn file(&self, domain: &str) -> Option<PathBuf> {
        let safe = !domain.is_empty()
            && domain
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            && !domain.starts_with('.');
        safe.then(|| self.dir.join(domain))
    }

    fn read_file(&self, domain: &str) -> Option<Cached> {
        let text = std::fs::read_to_string(self.file(domain)?).ok()?;
        let d: OnDisk = serde_json::from_str(&text).ok()?;
        Some(Cached {
            id: d.id,
            expires_ms: d.expires_ms,
            policy: parse_policy(&d.policy).ok()?,
        })
    }

    /// Keeps a fetched policy in memory and on disk (written aside, then renamed), so that a
    /// restart does not fetch it again.
    fn store(&self, domain: &str, c: &Cached) {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(domain.to_owned(), Some(c.clone()));
        let Some(path) = self.file(domain) else {
            return;
        };
        let disk = OnDisk {
            id: c.id.clone(),
            expires_ms: c.expires_ms,
            policy: render(&c.policy),
        };
        let tmp = self.dir.join(format!("{domain}.tmp"));
        let written = std::fs::create_dir_all(&self.dir)
            .and_then(|()| std::fs::write(&tmp, serde_json::to_vec(&disk).unwrap_or_default()))
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = written {
            tracing::warn!(domain, error = %e, "cannot cache the mta-sts policy on disk");
        }
    }

    /// Fetches and parses the policy of `domain` on a thread of its own.
    async fn fetch(&self, router: &Router, domain: &str) -> Result<Policy, String> {
        let host = format!("mta-sts.{domain}");
        let addrs = router
            .addresses(&host, self.https_port)
            .await
            .map_err(|e| e.to_string())?;
        let tls = Arc::clone(&self.tls);
        let timeout = self.timeout;
        let port = self.https_port;
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("ringmta-mta-sts".into())
            .spawn(move || {
                let _ = tx.send(fetch_blocking(&host, &addrs, tls, timeout, port));
            })
            .map_err(|e| e.to_string())?;
        let text = rx.await.map_err(|_| "the fetch thread died".to_owned())??;
        parse_policy(&text).map_err(|e| format!("bad policy: {e}"))
    }
}

/// A policy in the file format (for the disk cache).
fn render(p: &Policy) -> String {
    let mut s = format!(
        "version: STSv1\nmode: {}\nmax_age: {}\n",
        p.mode.name(),
        p.max_age
    );
    for mx in &p.mx {
        s.push_str("mx: ");
        s.push_str(mx);
        s.push('\n');
    }
    s
}

/// GET `/.well-known/mta-sts.txt` from `host` at each address in turn until one answers 200.
fn fetch_blocking(
    host: &str,
    addrs: &[SocketAddr],
    tls: Arc<rustls::ClientConfig>,
    timeout: Duration,
    port: u16,
) -> Result<String, String> {
    let target = Target {
        https: true,
        host: host.to_owned(),
        port,
        path: "/.well-known/mta-sts.txt".into(),
    };
    let request = Request {
        method: "GET",
        headers: &["Accept: text/plain".to_owned()],
        body: &[],
    };
    let body = crate::http_client::send(&target, addrs, &request, &tls, timeout, MAX_POLICY)?;
    String::from_utf8(body).map_err(|_| "the policy is not UTF-8".to_owned())
}
