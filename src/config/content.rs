//! `[[dkim]]` and `[scan]`: signing keys and the clamd and rspamd scanners.

use std::path::PathBuf;
use std::time::Duration;

use super::raw::{RawDkim, RawScan};
use super::resolved::Resolver;

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

/// The `[[dkim]]` keys.
pub(super) fn dkim_keys(r: &mut Resolver, keys: &[RawDkim]) -> Vec<DkimKey> {
    let mut dkim = Vec::new();
    for (i, k) in keys.iter().enumerate() {
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
    dkim
}

/// The clamd and rspamd scanners, each when configured.
pub(super) fn scanners(r: &mut Resolver, scan: &RawScan) -> (Option<Scanner>, Option<Scanner>) {
    let clamd = scan.clamd.as_ref().map(|c| {
        let target = c.address.clone().unwrap_or_default();
        if target.is_empty() {
            r.problem(
                "scan.clamd.address",
                "is required (\"unix:/path/clamd.sock\" or \"ip:port\")",
            );
        }
        scanner(r, "scan.clamd", target, c)
    });
    let rspamd = scan.rspamd.as_ref().map(|c| {
        let target = c.url.clone().unwrap_or_default();
        if !target.starts_with("http://") {
            r.problem("scan.rspamd.url", "is required and must start with http://");
        }
        scanner(r, "scan.rspamd", target, c)
    });
    (clamd, rspamd)
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
