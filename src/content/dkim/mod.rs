//! DKIM signing of outbound messages (RFC 6376, with ed25519-sha256 from RFC 8463).
//!
//! [`DkimSigner::load`] reads the private keys once at start-up; [`DkimSigner::sign`] then picks
//! the key(s) for the header From domain and returns the `DKIM-Signature` field(s) to prepend.
//! The cryptography, canonicalization and tag-list encoding come from `mail-auth`; this module
//! chooses the key, the signed header fields and the timestamp.
//!
//! This module must never read the clock (the caller passes `now_unix`), touch the network or
//! DNS, or panic on message bytes: a message is peer input. Key files are read only in
//! [`DkimSigner::load`].
//!
//! Invariants: every loaded identity has a valid domain and selector, and a header list that
//! contains `From` and only valid field names; a signer is immutable after `load`, so one
//! instance can be shared across cores behind an `Arc`.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use mail_auth::common::crypto::{DkimKey, Ed25519Key, RsaKey, Sha256, SigningKey};
use mail_auth::common::headers::{Writable, Writer};
use mail_auth::dkim::canonicalize::CanonicalHeaders;
use mail_auth::dkim::{Canonicalization, Signature};
use mail_parser::parsers::MessageStream;
use rustls::pki_types::PrivateKeyDer;
use rustls::pki_types::pem::{self, PemObject};

mod headers;
mod keys;

pub use headers::header_from_domain;
use headers::split_message;
use keys::{is_valid_selector, load_key, normalize_domain, signed_header_list};

/// Header fields signed when a key's config gives no list; only those present in a message are
/// signed. RFC 6376 §5.4.1 recommends these fields; `From` must be signed (RFC 6376 §5.4).
pub const DEFAULT_SIGNED_HEADERS: &[&str] = &[
    "From",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "Reply-To",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Unsubscribe",
];

/// One signing identity as written in the configuration (resolved by `config`).
pub use crate::config::resolved::DkimKey as DkimKeyConfig;

/// A DKIM signing algorithm this module signs with. `rsa-sha1` is not offered: RFC 8301 §3.1
/// forbids signing with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DkimAlgorithm {
    /// `rsa-sha256` (RFC 6376 §3.3.2).
    RsaSha256,
    /// `ed25519-sha256` (RFC 8463 §3).
    Ed25519Sha256,
}

impl DkimAlgorithm {
    /// The `a=` tag value.
    pub fn name(self) -> &'static str {
        match self {
            DkimAlgorithm::RsaSha256 => "rsa-sha256",
            DkimAlgorithm::Ed25519Sha256 => "ed25519-sha256",
        }
    }

    /// Parses an `a=` tag value, ignoring ASCII case.
    pub fn parse(name: &str) -> Option<DkimAlgorithm> {
        [DkimAlgorithm::RsaSha256, DkimAlgorithm::Ed25519Sha256]
            .into_iter()
            .find(|a| a.name().eq_ignore_ascii_case(name))
    }
}

impl fmt::Display for DkimAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything that can go wrong loading keys or signing. Load errors name the key file.
#[derive(Debug, thiserror::Error)]
pub enum DkimError {
    /// The key file could not be read.
    #[error("dkim key {}: cannot read: {source}", path.display())]
    ReadKey {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file holds no unencrypted private key block.
    #[error("dkim key {}: no unencrypted private key in PEM form", path.display())]
    NoPrivateKey {
        /// The key file.
        path: PathBuf,
    },
    /// The PEM framing or its base64 is broken.
    #[error("dkim key {}: malformed PEM: {source}", path.display())]
    BadPem {
        /// The key file.
        path: PathBuf,
        /// The PEM parser's error.
        source: pem::Error,
    },
    /// The key is of a kind DKIM cannot sign with here (for example an EC key).
    #[error("dkim key {}: unsupported key type {kind} (use an RSA or ed25519 key)", path.display())]
    UnsupportedKeyType {
        /// The key file.
        path: PathBuf,
        /// What the file holds, e.g. `"SEC1 EC"`.
        kind: &'static str,
    },
    /// `algorithm` is not a known algorithm name.
    #[error(
        "dkim key {}: unknown algorithm {name:?} (expected rsa-sha256 or ed25519-sha256)",
        path.display()
    )]
    UnknownAlgorithm {
        /// The key file.
        path: PathBuf,
        /// The configured name.
        name: String,
    },
    /// `algorithm` names a different algorithm than the key is for.
    #[error("dkim key {}: configured as {configured} but the key is for {found}", path.display())]
    AlgorithmMismatch {
        /// The key file.
        path: PathBuf,
        /// The configured algorithm.
        configured: DkimAlgorithm,
        /// The algorithm the key is for.
        found: DkimAlgorithm,
    },
    /// The crypto library rejected the key (bad encoding, RSA modulus under 2048 bits, ...).
    #[error("dkim key {}: not a usable {algorithm} key: {source}", path.display())]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// The algorithm the key was loaded for.
        algorithm: DkimAlgorithm,
        /// The library's error.
        source: mail_auth::Error,
    },
    /// `domain` is not a valid domain name.
    #[error("dkim key {}: invalid domain {domain:?}", path.display())]
    InvalidDomain {
        /// The key file.
        path: PathBuf,
        /// The configured domain.
        domain: String,
    },
    /// `selector` is not a valid selector.
    #[error("dkim key {}: invalid selector {selector:?}", path.display())]
    InvalidSelector {
        /// The key file.
        path: PathBuf,
        /// The configured selector.
        selector: String,
    },
    /// A name in `headers` is not a valid header field name.
    #[error("dkim key {}: invalid header field name {name:?}", path.display())]
    InvalidHeaderName {
        /// The key file.
        path: PathBuf,
        /// The offending name.
        name: String,
    },
    /// `headers` does not list `From`, which RFC 6376 §5.4 requires to be signed.
    #[error("dkim key {}: the signed header list must include From", path.display())]
    FromNotSigned {
        /// The key file.
        path: PathBuf,
    },
    /// Two keys share one domain and selector.
    #[error("dkim key {}: selector {selector} is already configured for {domain}", path.display())]
    DuplicateSelector {
        /// The key file of the second entry.
        path: PathBuf,
        /// The signing domain.
        domain: String,
        /// The repeated selector.
        selector: String,
    },
    /// The signing operation itself failed: an internal fault of the crypto library, never
    /// caused by message content.
    #[error("dkim signing as {selector}._domainkey.{domain} failed: {source}")]
    Sign {
        /// The signing domain.
        domain: String,
        /// The selector.
        selector: String,
        /// The library's error.
        source: mail_auth::Error,
    },
}

/// The loaded signing keys, indexed by signing domain. Immutable once built; `Send + Sync`.
pub struct DkimSigner {
    /// Identities in configuration order.
    identities: Vec<Identity>,
    /// Lower-case A-label signing domain -> indexes into `identities`, in configuration order.
    by_domain: HashMap<String, Vec<usize>>,
}

impl DkimSigner {
    /// Reads and checks every key. The first problem found is returned, naming its key file.
    ///
    /// Several keys may share a domain (with different selectors): [`DkimSigner::sign`] then
    /// signs with each, e.g. RSA and ed25519 side by side as RFC 8463 suggests while
    /// verifiers without ed25519 remain.
    pub fn load(keys: &[DkimKeyConfig]) -> Result<DkimSigner, DkimError> {
        let mut signer = DkimSigner {
            identities: Vec::with_capacity(keys.len()),
            by_domain: HashMap::new(),
        };
        for config in keys {
            let identity = Identity::load(config)?;
            let slot = signer.by_domain.entry(identity.domain.clone()).or_default();
            // Indexing: every index in `by_domain` was pushed together with its identity.
            if slot
                .iter()
                .any(|&i| signer.identities[i].selector == identity.selector)
            {
                return Err(DkimError::DuplicateSelector {
                    path: config.private_key.clone(),
                    domain: identity.domain,
                    selector: identity.selector,
                });
            }
            slot.push(signer.identities.len());
            signer.identities.push(identity);
        }
        Ok(signer)
    }

    /// Picks the key(s) by the header From domain (exact match first, then parent domains),
    /// signs, and returns the `DKIM-Signature` field(s) to prepend, each CRLF-terminated.
    /// Returns `None` when no key matches or the message has no single usable From address.
    ///
    /// `now_unix` becomes the `t=` tag. Canonicalization is relaxed/relaxed.
    pub fn sign(&self, message: &[u8], now_unix: u64) -> Result<Option<Vec<u8>>, DkimError> {
        let Some(from_domain) = header_from_domain(message) else {
            return Ok(None);
        };
        let Some(indexes) = self.keys_for(&from_domain) else {
            return Ok(None);
        };

        let (fields, body) = split_message(message);
        // Relaxed body canonicalization and SHA-256 are common to every identity, so the body
        // (the bulk of the work on large messages) is hashed once.
        let mut body_hash: Option<Vec<u8>> = None;
        let mut out = Vec::with_capacity(512 * indexes.len());
        for &i in indexes {
            // Indexing: `load` pushes each index into `by_domain` together with its identity.
            let identity = &self.identities[i];
            let bh = body_hash.get_or_insert_with(|| {
                let canonical = Canonicalization::Relaxed.canonical_body(body, 0);
                identity.key.hash(canonical).as_ref().to_vec()
            });
            identity
                .sign(&fields, bh.clone(), now_unix)?
                .write(&mut out, true);
        }
        Ok(Some(out))
    }

    /// Whether any key is RSA: signing then costs about 0.7 ms of CPU per message, worth moving
    /// off the worker core (ed25519 costs less than the hand-off).
    pub fn has_rsa(&self) -> bool {
        self.identities
            .iter()
            .any(|i| i.algorithm == DkimAlgorithm::RsaSha256)
    }

    /// The identities for `domain` or its nearest configured parent.
    fn keys_for(&self, domain: &str) -> Option<&[usize]> {
        let mut candidate = domain;
        loop {
            if let Some(indexes) = self.by_domain.get(candidate) {
                return Some(indexes);
            }
            candidate = candidate.split_once('.')?.1;
        }
    }
}

impl fmt::Debug for DkimSigner {
    /// Lists identities without key material.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(
                self.identities
                    .iter()
                    .map(|i| format!("{}._domainkey.{} ({})", i.selector, i.domain, i.algorithm)),
            )
            .finish()
    }
}

/// A loaded key with the settings it signs with.
struct Identity {
    /// Lower-case A-label signing domain, without a trailing dot.
    domain: String,
    /// Validated selector.
    selector: String,
    algorithm: DkimAlgorithm,
    key: DkimKey,
    /// Field names to sign, deduplicated ignoring case; always contains `From`.
    headers: Vec<String>,
    oversign_from: bool,
}

impl Identity {
    fn load(config: &DkimKeyConfig) -> Result<Identity, DkimError> {
        let path = &config.private_key;
        let domain = normalize_domain(&config.domain).ok_or_else(|| DkimError::InvalidDomain {
            path: path.clone(),
            domain: config.domain.clone(),
        })?;
        if !is_valid_selector(&config.selector) {
            return Err(DkimError::InvalidSelector {
                path: path.clone(),
                selector: config.selector.clone(),
            });
        }
        let configured = match &config.algorithm {
            None => None,
            Some(name) => {
                Some(
                    DkimAlgorithm::parse(name).ok_or_else(|| DkimError::UnknownAlgorithm {
                        path: path.clone(),
                        name: name.clone(),
                    })?,
                )
            }
        };
        let headers = signed_header_list(path, config.headers.as_deref())?;
        let (algorithm, key) = load_key(path, configured)?;
        Ok(Identity {
            domain,
            selector: config.selector.to_ascii_lowercase(),
            algorithm,
            key,
            headers,
            oversign_from: config.oversign_from,
        })
    }

    /// Builds the signature over `fields` (in message order) with body hash `bh`.
    fn sign(
        &self,
        fields: &[Field<'_>],
        bh: Vec<u8>,
        now_unix: u64,
    ) -> Result<Signature, DkimError> {
        let signed: Vec<Field<'_>> = fields
            .iter()
            .filter(|(name, _)| {
                self.headers
                    .iter()
                    .any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
            })
            .copied()
            .collect();
        // RFC 6376 §5.4.2: a verifier takes repeated fields from the bottom up, so `h=` lists
        // the selected fields bottom-up; mail-auth feeds `CanonicalHeaders` in that order too.
        // `h=` names match field names without regard to case, so the configured spelling is
        // written.
        let mut h: Vec<String> = signed
            .iter()
            .rev()
            .filter_map(|(name, _)| {
                self.headers
                    .iter()
                    .find(|h| name.eq_ignore_ascii_case(h.as_bytes()))
                    .cloned()
            })
            .collect();
        if self.oversign_from {
            // RFC 6376 §5.4 and §8.15: a name listed once more than it occurs signs the absence
            // of further instances, so a second From cannot be added without breaking the
            // signature. `From` occurs exactly once here (see `header_from_domain`).
            h.push("From".to_owned());
        }

        let mut signature = Signature {
            v: 1,
            a: match self.algorithm {
                DkimAlgorithm::RsaSha256 => mail_auth::common::crypto::Algorithm::RsaSha256,
                DkimAlgorithm::Ed25519Sha256 => mail_auth::common::crypto::Algorithm::Ed25519Sha256,
            },
            d: self.domain.clone(),
            s: self.selector.clone(),
            bh,
            h,
            t: now_unix,
            ch: Canonicalization::Relaxed,
            cb: Canonicalization::Relaxed,
            ..Signature::default()
        };
        let b = self
            .key
            .sign(SignedData {
                headers: Canonicalization::Relaxed.canonical_headers(signed),
                signature: &signature,
            })
            .map_err(|source| DkimError::Sign {
                domain: self.domain.clone(),
                selector: self.selector.clone(),
                source,
            })?;
        signature.b = b;
        Ok(signature)
    }
}

/// The data hashed for `b=` (RFC 6376 §3.7): the canonical signed fields, then the
/// DKIM-Signature field itself with an empty `b=` and no trailing CRLF.
struct SignedData<'a> {
    headers: CanonicalHeaders<'a>,
    signature: &'a Signature,
}

impl Writable for SignedData<'_> {
    fn write(self, writer: &mut impl Writer) {
        self.headers.write(writer);
        self.signature.write(writer, false);
    }
}

/// A header field as (name, value), shaped as [`HeaderFields`] yields it.
type Field<'a> = (&'a [u8], &'a [u8]);

#[cfg(test)]
mod tests;
