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

/// Returns the lower-case domain (A-label form for internationalized names) of the first
/// address in the message's From header field.
///
/// Returns `None` when the header section has no From field or more than one (RFC 5322 §3.6
/// allows exactly one, and RFC 7489 §6.6.1 lets receivers reject such messages), when the
/// first address has no domain, or when the domain is not a valid domain name (an address
/// literal, for instance).
pub fn header_from_domain(message: &[u8]) -> Option<String> {
    let mut from = None;
    for (name, value) in HeaderFields::new(message) {
        if name.eq_ignore_ascii_case(b"From") && from.replace(value).is_some() {
            return None;
        }
    }
    let parsed = MessageStream::new(from?).parse_address();
    let address = parsed.as_address()?.first()?.address()?;
    let (_, domain) = address.rsplit_once('@')?;
    normalize_domain(domain)
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

/// Checks the configured header list (or takes the default), deduplicating it ignoring case.
fn signed_header_list(path: &Path, names: Option<&[String]>) -> Result<Vec<String>, DkimError> {
    let names: Vec<String> = match names {
        Some(names) => names.to_vec(),
        None => DEFAULT_SIGNED_HEADERS
            .iter()
            .map(|&n| n.to_owned())
            .collect(),
    };
    let mut out: Vec<String> = Vec::with_capacity(names.len());
    for name in names {
        // RFC 5322 §3.6.8: field-name = 1*ftext, ftext = %d33-57 / %d59-126.
        let valid = !name.is_empty() && name.bytes().all(|b| matches!(b, 33..=57 | 59..=126));
        if !valid {
            return Err(DkimError::InvalidHeaderName {
                path: path.to_owned(),
                name,
            });
        }
        if !out.iter().any(|n| n.eq_ignore_ascii_case(&name)) {
            out.push(name);
        }
    }
    if !out.iter().any(|n| n.eq_ignore_ascii_case("From")) {
        return Err(DkimError::FromNotSigned {
            path: path.to_owned(),
        });
    }
    Ok(out)
}

/// Reads a PEM private key and checks it against the configured algorithm.
fn load_key(
    path: &Path,
    configured: Option<DkimAlgorithm>,
) -> Result<(DkimAlgorithm, DkimKey), DkimError> {
    let pem_bytes = std::fs::read(path).map_err(|source| DkimError::ReadKey {
        path: path.to_owned(),
        source,
    })?;
    let der = PrivateKeyDer::from_pem_slice(&pem_bytes).map_err(|source| match source {
        pem::Error::NoItemsFound => DkimError::NoPrivateKey {
            path: path.to_owned(),
        },
        source => DkimError::BadPem {
            path: path.to_owned(),
            source,
        },
    })?;
    let found = match &der {
        PrivateKeyDer::Pkcs1(_) => DkimAlgorithm::RsaSha256,
        PrivateKeyDer::Pkcs8(p) => {
            pkcs8_algorithm(p.secret_pkcs8_der()).ok_or_else(|| DkimError::UnsupportedKeyType {
                path: path.to_owned(),
                kind: "PKCS#8 of another algorithm",
            })?
        }
        PrivateKeyDer::Sec1(_) => {
            return Err(DkimError::UnsupportedKeyType {
                path: path.to_owned(),
                kind: "SEC1 EC",
            });
        }
        _ => {
            return Err(DkimError::UnsupportedKeyType {
                path: path.to_owned(),
                kind: "unknown",
            });
        }
    };
    if let Some(configured) = configured.filter(|&c| c != found) {
        return Err(DkimError::AlgorithmMismatch {
            path: path.to_owned(),
            configured,
            found,
        });
    }
    let key = match (found, &der) {
        (DkimAlgorithm::RsaSha256, _) => RsaKey::<Sha256>::from_key_der(der).map(DkimKey::Rsa),
        // OpenSSL writes RFC 8410 PKCS#8 v1 (no public key); ring's strict parser wants v2.
        (DkimAlgorithm::Ed25519Sha256, PrivateKeyDer::Pkcs8(k)) => {
            Ed25519Key::from_pkcs8_maybe_unchecked_der(k.secret_pkcs8_der()).map(DkimKey::Ed25519)
        }
        // `found` is Ed25519 only for PKCS#8 input (see above), so this arm is not reached.
        (DkimAlgorithm::Ed25519Sha256, _) => {
            return Err(DkimError::UnsupportedKeyType {
                path: path.to_owned(),
                kind: "non-PKCS#8 ed25519",
            });
        }
    }
    .map_err(|source| DkimError::BadKey {
        path: path.to_owned(),
        algorithm: found,
        source,
    })?;
    Ok((found, key))
}

/// The algorithm of a PKCS#8 key, from its AlgorithmIdentifier OID (RFC 5958 §2), or `None`
/// for other algorithms or unparsable DER.
fn pkcs8_algorithm(der: &[u8]) -> Option<DkimAlgorithm> {
    // rsaEncryption 1.2.840.113549.1.1.1 (RFC 8017 App. C); id-Ed25519 1.3.101.112 (RFC 8410 §3).
    const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

    let (0x30, key, _) = der_tlv(der)? else {
        return None;
    };
    let (0x02, _version, rest) = der_tlv(key)? else {
        return None;
    };
    let (0x30, algorithm_identifier, _) = der_tlv(rest)? else {
        return None;
    };
    let (0x06, oid, _) = der_tlv(algorithm_identifier)? else {
        return None;
    };
    match oid {
        OID_RSA_ENCRYPTION => Some(DkimAlgorithm::RsaSha256),
        OID_ED25519 => Some(DkimAlgorithm::Ed25519Sha256),
        _ => None,
    }
}

/// Splits one DER TLV off `input`: (tag, contents, rest). Definite lengths up to 4 bytes only,
/// which covers any key file.
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (bytes, rest) = rest.split_at_checked(n)?;
        let len = bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, rest)
    };
    let (contents, rest) = rest.split_at_checked(len)?;
    Some((tag, contents, rest))
}

/// Lower-cases a domain, converts it to A-labels, drops one trailing dot, and checks the
/// RFC 1035 §2.3.1 shape (letters, digits, hyphens; labels of 1..=63; at most 253 bytes).
/// Underscores are accepted: they are legal in DNS and appear in real names.
fn normalize_domain(domain: &str) -> Option<String> {
    let domain = domain.trim();
    let domain = domain.strip_suffix('.').unwrap_or(domain);
    let ascii = mail_auth::common::to_a_label(domain).to_ascii_lowercase();
    let valid = !ascii.is_empty()
        && ascii.len() <= 253
        && ascii.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    valid.then_some(ascii)
}

/// RFC 6376 §3.1: selector = sub-domain *("." sub-domain). Underscores are accepted as in
/// [`normalize_domain`].
fn is_valid_selector(selector: &str) -> bool {
    !selector.is_empty()
        && selector.len() <= 63
        && selector.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The header fields of `message` in order, and the body (after the empty line, RFC 5322
/// §2.1); a message without an empty line has an empty body.
fn split_message(message: &[u8]) -> (Vec<Field<'_>>, &[u8]) {
    let mut iter = HeaderFields::new(message);
    let fields: Vec<_> = iter.by_ref().collect();
    let body = message.get(iter.pos..).unwrap_or_default();
    (fields, body)
}

/// A header field as (name, value), shaped as [`HeaderFields`] yields it.
type Field<'a> = (&'a [u8], &'a [u8]);

/// Iterates the header fields of a message as (name, value) where the value runs from after
/// the colon through the field's final line break, folding included: the shape mail-auth's
/// canonicalization expects. Lines without a colon are not fields and are skipped.
struct HeaderFields<'a> {
    message: &'a [u8],
    /// Start of the next field; after iteration ends, the start of the body.
    pos: usize,
    done: bool,
}

impl<'a> HeaderFields<'a> {
    fn new(message: &'a [u8]) -> Self {
        HeaderFields {
            message,
            pos: 0,
            done: false,
        }
    }
}

impl<'a> Iterator for HeaderFields<'a> {
    type Item = Field<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            let rest = self.message.get(self.pos..).unwrap_or_default();
            let separator = if rest.starts_with(b"\r\n") {
                Some(2)
            } else if rest.starts_with(b"\n") {
                Some(1)
            } else if rest.is_empty() {
                Some(0)
            } else {
                None
            };
            if let Some(len) = separator {
                self.done = true;
                self.pos += len;
                return None;
            }
            // RFC 5322 §2.2.3: a field ends at a line break not followed by WSP. `end` only
            // moves past a '\n' found in `rest`, so it never exceeds `rest.len()`.
            let mut end = 0;
            loop {
                match rest[end..].iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        end += i + 1;
                        if !matches!(rest.get(end), Some(b' ' | b'\t')) {
                            break;
                        }
                    }
                    None => {
                        end = rest.len();
                        break;
                    }
                }
            }
            let field = &rest[..end];
            self.pos += end;
            if let Some(colon) = field.iter().position(|&b| b == b':') {
                return Some((&field[..colon], &field[colon + 1..]));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_700_000_000;

    fn testdata(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/content/testdata")
            .join(name)
    }

    fn dns_key(name: &str) -> String {
        std::fs::read_to_string(testdata(name))
            .expect("test key exists")
            .trim()
            .to_owned()
    }

    fn config(domain: &str, selector: &str, key: &str) -> DkimKeyConfig {
        DkimKeyConfig {
            domain: domain.to_owned(),
            selector: selector.to_owned(),
            private_key: testdata(key),
            algorithm: None,
            headers: None,
            oversign_from: true,
        }
    }

    fn message(from: &str) -> Vec<u8> {
        format!(
            "Received: from a.example by b.example; Tue, 14 Nov 2023 22:13:20 +0000\r\n\
             From: \"Sender, Jr.\" <{from}>\r\n\
             To: rcpt@other.example\r\n\
             Subject:   Hello\r\n\tfolded  subject \r\n\
             Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n\
             Message-ID: <abc@example.com>\r\n\
             MIME-Version: 1.0\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\
             \r\n\
             Hello  there,\t \r\n\
             second line\r\n\
             \r\n\
             \r\n"
        )
        .into_bytes()
    }

    /// Signs `msg` and returns the signed message (signature prepended).
    fn signed(signer: &DkimSigner, msg: &[u8]) -> Vec<u8> {
        let mut out = signer
            .sign(msg, NOW)
            .expect("signing works")
            .expect("a key matches");
        out.extend_from_slice(msg);
        out
    }

    /// The DNS TXT record for a key as a verifier would fetch it.
    fn txt_record(k: &str, p: &str) -> String {
        format!("v=DKIM1; k={k}; p={p}")
    }

    /// Verifies with dkimpy (an independent implementation). Returns `None` when python3 or
    /// dkimpy (and PyNaCl, for ed25519) is not installed.
    fn dkimpy_verify(msg: &[u8], record: &str) -> Option<bool> {
        use std::io::Write;
        use std::process::{Command, Stdio};

        let script = "import sys, dkim\n\
                      rec = sys.argv[1].encode()\n\
                      msg = sys.stdin.buffer.read()\n\
                      ok = dkim.verify(msg, dnsfunc=lambda name, timeout=5: rec)\n\
                      print('PASS' if ok else 'FAIL')\n";
        let needs = if record.contains("k=ed25519") {
            "import dkim, nacl"
        } else {
            "import dkim"
        };
        let probe = Command::new("python3").args(["-c", needs]).output();
        if !matches!(&probe, Ok(o) if o.status.success()) {
            eprintln!(
                "SKIP dkimpy check: python3 with dkimpy (and pynacl for ed25519) not installed \
                 (pip install dkimpy pynacl)"
            );
            return None;
        }
        let mut child = Command::new("python3")
            .args(["-c", script, record])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 starts");
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(msg)
            .expect("write message");
        let output = child.wait_with_output().expect("python3 finishes");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "dkimpy crashed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Some(stdout.trim() == "PASS")
    }

    /// Verifies with mail-auth's verifier, serving `record` for the selector from a cache
    /// so no DNS query is made. Returns the result of every signature found.
    fn mail_auth_verify(msg: &[u8], dns_name: &str, record: &str) -> Vec<bool> {
        use mail_auth::common::parse::TxtRecordParser;
        use mail_auth::common::verify::DomainKey;
        use mail_auth::{
            AuthenticatedMessage, DkimResult, MessageAuthenticator, Parameters, ResolverCache, Txt,
        };
        use std::borrow::Borrow;
        use std::hash::Hash;
        use std::sync::Arc;

        struct OneRecord(HashMap<Box<str>, Txt>);
        impl ResolverCache<Box<str>, Txt> for OneRecord {
            fn get<Q>(&self, name: &Q) -> Option<Txt>
            where
                Box<str>: Borrow<Q>,
                Q: Hash + Eq + ?Sized,
            {
                self.0.get(name).cloned()
            }
            fn remove<Q>(&self, _: &Q) -> Option<Txt>
            where
                Box<str>: Borrow<Q>,
                Q: Hash + Eq + ?Sized,
            {
                None
            }
            fn insert(&self, _: Box<str>, _: Txt, _: std::time::Instant) {}
        }

        let key = DomainKey::parse(record.as_bytes()).expect("record parses");
        let cache = OneRecord(HashMap::from([(
            Box::<str>::from(dns_name),
            Txt::DomainKey(Arc::new(key)),
        )]));
        let parsed = AuthenticatedMessage::parse(msg).expect("message parses");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let authenticator = MessageAuthenticator::new_cloudflare().expect("resolver");
            authenticator
                .verify_dkim(Parameters::new(&parsed).with_txt_cache(&cache))
                .await
                .iter()
                .map(|o| *o.result() == DkimResult::Pass)
                .collect()
        })
    }

    /// Signs with one key file, then checks the signature with both verifiers, and checks that
    /// a body changed after signing fails both.
    fn sign_and_verify(key_file: &str, k: &str, dns_file: &str) {
        let signer = DkimSigner::load(&[config("example.com", "sel1", key_file)]).unwrap();
        let msg = message("sender@example.com");
        let signed_msg = signed(&signer, &msg);
        let record = txt_record(k, &dns_key(dns_file));

        assert_eq!(
            mail_auth_verify(&signed_msg, "sel1._domainkey.example.com.", &record),
            [true],
            "mail-auth rejects:\n{}",
            String::from_utf8_lossy(&signed_msg)
        );
        let tampered = replace(&signed_msg, b"second line", b"second LINE");
        assert_eq!(
            mail_auth_verify(&tampered, "sel1._domainkey.example.com.", &record),
            [false]
        );

        if let Some(ok) = dkimpy_verify(&signed_msg, &record) {
            assert!(
                ok,
                "dkimpy rejects:\n{}",
                String::from_utf8_lossy(&signed_msg)
            );
            assert_eq!(dkimpy_verify(&tampered, &record), Some(false));
        }
    }

    fn replace(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
        let at = haystack
            .windows(from.len())
            .position(|w| w == from)
            .expect("needle present");
        [&haystack[..at], to, &haystack[at + from.len()..]].concat()
    }

    /// The value of tag `name` in a signature field, with folding whitespace removed.
    fn tag(header: &str, name: &str) -> Option<String> {
        let value_start = header.find(':')? + 1;
        header[value_start..]
            .split(';')
            .map(str::trim)
            .find_map(|t| t.strip_prefix(name)?.trim_start().strip_prefix('='))
            .map(|v| v.chars().filter(|c| !c.is_whitespace()).collect())
    }

    fn unfold(bytes: &[u8]) -> String {
        String::from_utf8(bytes.to_vec())
            .unwrap()
            .replace("\r\n\t", " ")
    }

    #[test]
    fn rsa_pkcs8_signature_verifies() {
        sign_and_verify("rsa2048.pkcs8.pem", "rsa", "rsa2048.dns.txt");
    }

    #[test]
    fn rsa_pkcs1_signature_verifies() {
        sign_and_verify("rsa2048.pkcs1.pem", "rsa", "rsa2048.dns.txt");
    }

    #[test]
    fn ed25519_signature_verifies() {
        sign_and_verify("ed25519.pem", "ed25519", "ed25519.dns.txt");
    }

    #[test]
    fn ed25519_pkcs8_v2_key_loads() {
        // ring writes PKCS#8 v2 (with the public key); OpenSSL writes v1. Both must load.
        let der = Ed25519Key::generate_pkcs8().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v2.pem");
        std::fs::write(&path, to_pem("PRIVATE KEY", &der)).unwrap();
        let mut cfg = config("example.com", "s", "unused");
        cfg.private_key = path;
        let signer = DkimSigner::load(&[cfg]).unwrap();
        assert!(
            signer
                .sign(&message("a@example.com"), NOW)
                .unwrap()
                .is_some()
        );
    }

    fn to_pem(label: &str, der: &[u8]) -> String {
        const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut b64 = String::new();
        for chunk in der.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, &b)| acc | (u32::from(b) << (16 - 8 * i)));
            for i in 0..4 {
                if i <= chunk.len() {
                    b64.push(B64[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    b64.push('=');
                }
            }
        }
        format!("-----BEGIN {label}-----\n{b64}\n-----END {label}-----\n")
    }

    #[test]
    fn dual_signing_rsa_and_ed25519_both_verify() {
        let signer = DkimSigner::load(&[
            config("example.com", "rsa", "rsa2048.pkcs8.pem"),
            config("example.com", "ed", "ed25519.pem"),
        ])
        .unwrap();
        let msg = message("sender@example.com");
        let out = signer.sign(&msg, NOW).unwrap().unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        assert_eq!(text.matches("DKIM-Signature:").count(), 2);
        assert!(text.find("s=rsa;") < text.find("s=ed;"), "config order");

        let signed_msg = [out, msg].concat();
        let rsa = txt_record("rsa", &dns_key("rsa2048.dns.txt"));
        let ed = txt_record("ed25519", &dns_key("ed25519.dns.txt"));
        // Each verifier knows only one of the two keys, so exactly one signature passes.
        let r = mail_auth_verify(&signed_msg, "rsa._domainkey.example.com.", &rsa);
        assert_eq!(r.iter().filter(|&&ok| ok).count(), 1, "{r:?}");
        let e = mail_auth_verify(&signed_msg, "ed._domainkey.example.com.", &ed);
        assert_eq!(e.iter().filter(|&&ok| ok).count(), 1, "{e:?}");
    }

    #[test]
    fn signature_tags() {
        let signer = DkimSigner::load(&[config("Example.COM.", "Sel1", "ed25519.pem")]).unwrap();
        let out = signer
            .sign(&message("sender@example.com"), NOW)
            .unwrap()
            .unwrap();
        assert!(out.starts_with(b"DKIM-Signature: v=1; a=ed25519-sha256; "));
        assert!(out.ends_with(b";\r\n"));
        // RFC 5322 §2.1.1: lines MUST be at most 998 bytes and SHOULD be at most 78. mail-auth
        // keeps v=, a=, s=, d= and c= on the first line, so only that one may pass 78.
        for (i, line) in out.split(|&b| b == b'\n').enumerate() {
            let limit = if i == 0 { 998 } else { 78 };
            assert!(line.len() <= limit, "line {i} too long: {line:?}");
        }
        let text = unfold(&out);
        assert_eq!(tag(&text, "d").as_deref(), Some("example.com"));
        assert_eq!(tag(&text, "s").as_deref(), Some("sel1"));
        assert_eq!(tag(&text, "c").as_deref(), Some("relaxed/relaxed"));
        assert_eq!(tag(&text, "t").as_deref(), Some("1700000000"));
        // Present default fields, bottom-up, plus the over-signed From. No Cc, Reply-To, ...
        assert_eq!(
            tag(&text, "h").as_deref(),
            Some("Content-Type:MIME-Version:Message-ID:Date:Subject:To:From:From")
        );
        assert_eq!(tag(&text, "x").as_deref(), None);
        assert_eq!(tag(&text, "l").as_deref(), None);
    }

    #[test]
    fn timestamp_comes_from_the_caller() {
        let signer = DkimSigner::load(&[config("example.com", "s", "ed25519.pem")]).unwrap();
        let msg = message("sender@example.com");
        let a = unfold(&signer.sign(&msg, 1).unwrap().unwrap());
        let b = unfold(&signer.sign(&msg, 1).unwrap().unwrap());
        assert_eq!(tag(&a, "t").as_deref(), Some("1"));
        // ed25519 is deterministic, so same input and time give the same bytes.
        assert_eq!(a, b);
    }

    #[test]
    fn no_oversign_and_custom_headers() {
        let mut cfg = config("example.com", "s", "ed25519.pem");
        cfg.oversign_from = false;
        cfg.headers = Some(vec![
            "from".into(),
            "subject".into(),
            "X-Absent".into(),
            "FROM".into(),
        ]);
        let signer = DkimSigner::load(&[cfg]).unwrap();
        let msg = message("sender@example.com");
        let out = signer.sign(&msg, NOW).unwrap().unwrap();
        assert_eq!(tag(&unfold(&out), "h").as_deref(), Some("subject:from"));
        let record = txt_record("ed25519", &dns_key("ed25519.dns.txt"));
        let signed_msg = [out, msg].concat();
        assert_eq!(
            mail_auth_verify(&signed_msg, "s._domainkey.example.com.", &record),
            [true]
        );
    }

    #[test]
    fn oversigned_from_detects_an_added_from() {
        let signer = DkimSigner::load(&[config("example.com", "s", "ed25519.pem")]).unwrap();
        let msg = message("sender@example.com");
        let signed_msg = signed(&signer, &msg);
        let record = txt_record("ed25519", &dns_key("ed25519.dns.txt"));
        // Insert a second From below the first (just before the body).
        let added = replace(
            &signed_msg,
            b"\r\n\r\nHello",
            b"\r\nFrom: evil@attacker.example\r\n\r\nHello",
        );
        assert_eq!(
            mail_auth_verify(&added, "s._domainkey.example.com.", &record),
            [false]
        );
        if let Some(ok) = dkimpy_verify(&added, &record) {
            assert!(!ok);
        }
    }

    #[test]
    fn changed_signed_header_fails_verification() {
        let signer = DkimSigner::load(&[config("example.com", "s", "ed25519.pem")]).unwrap();
        let signed_msg = signed(&signer, &message("sender@example.com"));
        let record = txt_record("ed25519", &dns_key("ed25519.dns.txt"));
        let tampered = replace(&signed_msg, b"rcpt@other.example", b"rcpt@other.exampla");
        assert_eq!(
            mail_auth_verify(&tampered, "s._domainkey.example.com.", &record),
            [false]
        );
        // Relaxed canonicalization tolerates whitespace changes in header values.
        let respaced = replace(&signed_msg, b"Subject:   Hello", b"Subject: Hello ");
        assert_eq!(
            mail_auth_verify(&respaced, "s._domainkey.example.com.", &record),
            [true]
        );
    }

    #[test]
    fn no_key_for_the_from_domain_gives_none() {
        let signer = DkimSigner::load(&[config("example.com", "s", "ed25519.pem")]).unwrap();
        assert!(
            signer
                .sign(&message("a@example.org"), NOW)
                .unwrap()
                .is_none()
        );
        // A suffix that is not a parent domain must not match.
        assert!(
            signer
                .sign(&message("a@badexample.com"), NOW)
                .unwrap()
                .is_none()
        );
        // No keys at all.
        let empty = DkimSigner::load(&[]).unwrap();
        assert!(
            empty
                .sign(&message("a@example.com"), NOW)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn parent_domain_matches_and_exact_match_wins() {
        let signer = DkimSigner::load(&[
            config("example.com", "parent", "ed25519.pem"),
            config("mail.example.com", "exact", "ed25519.pem"),
        ])
        .unwrap();
        let record = txt_record("ed25519", &dns_key("ed25519.dns.txt"));

        let msg = message("a@deep.sub.example.com");
        let out = signer.sign(&msg, NOW).unwrap().unwrap();
        let text = unfold(&out);
        assert_eq!(tag(&text, "d").as_deref(), Some("example.com"));
        assert_eq!(tag(&text, "s").as_deref(), Some("parent"));
        let signed_msg = [out, msg].concat();
        assert_eq!(
            mail_auth_verify(&signed_msg, "parent._domainkey.example.com.", &record),
            [true]
        );
        if let Some(ok) = dkimpy_verify(&signed_msg, &record) {
            assert!(ok);
        }

        let out = signer
            .sign(&message("a@MAIL.example.com"), NOW)
            .unwrap()
            .unwrap();
        let text = unfold(&out);
        assert_eq!(tag(&text, "d").as_deref(), Some("mail.example.com"));
        assert_eq!(text.matches("DKIM-Signature").count(), 1);
    }

    #[test]
    fn messages_without_a_usable_from_are_not_signed() {
        let signer = DkimSigner::load(&[config("example.com", "s", "ed25519.pem")]).unwrap();
        for msg in [
            &b""[..],
            b"\r\n\r\nbody",
            b"To: a@example.com\r\n\r\nbody",
            b"From: a@example.com\r\nFrom: b@example.com\r\n\r\nbody",
            b"From: undisclosed\r\n\r\nbody",
            b"From: a@[192.0.2.1]\r\n\r\nbody",
            b"From: <>\r\n\r\n",
            b"From:\r\n\r\n",
            b"From: a@exa mple.com\r\n\r\n",
        ] {
            assert_eq!(signer.sign(msg, NOW).unwrap(), None, "{msg:?}");
        }
    }

    #[test]
    fn header_from_domain_cases() {
        let cases: &[(&[u8], Option<&str>)] = &[
            (b"From: a@Example.COM\r\n\r\n", Some("example.com")),
            (b"from: a@example.com.\r\n\r\n", Some("example.com")),
            (
                b"From: \"x@y.example\" <a@b.example>\r\n\r\n",
                Some("b.example"),
            ),
            (
                b"From: Name (comment@c.example) <a@b.example>\r\n\r\n",
                Some("b.example"),
            ),
            (
                b"From: a@one.example, b@two.example\r\n\r\n",
                Some("one.example"),
            ),
            (
                b"From:\r\n Folded <a@fold.example>\r\n\r\n",
                Some("fold.example"),
            ),
            (
                b"From: =?utf-8?q?J=C3=B6rg?= <j@b.example>\r\n\r\n",
                Some("b.example"),
            ),
            (b"From: group: a@g.example;\r\n\r\n", Some("g.example")),
            (
                "From: a@b\u{fc}cher.example\r\n\r\n".as_bytes(),
                Some("xn--bcher-kva.example"),
            ),
            (b"From: a@b.example\n\nbare LF", Some("b.example")),
            (
                b"Subject: x\r\nFrom: a@late.example\r\n",
                Some("late.example"),
            ),
            // A From after the header section is body, not a field.
            (b"Subject: x\r\n\r\nFrom: a@body.example\r\n", None),
            (b"X-From: a@x.example\r\n\r\n", None),
            (b"From : a@ws.example\r\n\r\n", None),
            (b"garbage line\r\n\r\n", None),
            (b"\xff\xfe: \xff\r\nFrom: \xff@\xff\r\n\r\n", None),
        ];
        for (msg, want) in cases {
            assert_eq!(
                header_from_domain(msg).as_deref(),
                *want,
                "{}",
                String::from_utf8_lossy(msg)
            );
        }
    }

    #[test]
    fn header_fields_split_folding_and_body() {
        let msg = b"A: 1\r\nB: 2\r\n  cont\r\nno colon\r\nC:3\r\n\r\nbody\r\n";
        let (fields, body) = split_message(msg);
        assert_eq!(
            fields,
            [
                (&b"A"[..], &b" 1\r\n"[..]),
                (b"B", b" 2\r\n  cont\r\n"),
                (b"C", b"3\r\n"),
            ]
        );
        assert_eq!(body, b"body\r\n");
        let (fields, body) = split_message(b"A: 1\r\nB: 2");
        assert_eq!(fields.len(), 2);
        assert_eq!(body, b"");
    }

    #[test]
    fn any_prefix_of_a_message_signs_without_panicking() {
        let signer = DkimSigner::load(&[config("example.com", "s", "ed25519.pem")]).unwrap();
        let msg = message("sender@example.com");
        for end in 0..=msg.len() {
            let _ = signer.sign(&msg[..end], NOW).unwrap();
        }
    }

    #[test]
    fn empty_body_signature_verifies() {
        let signer = DkimSigner::load(&[config("example.com", "s", "rsa2048.pkcs8.pem")]).unwrap();
        let record = txt_record("rsa", &dns_key("rsa2048.dns.txt"));
        for msg in [
            &b"From: a@example.com\r\nSubject: x\r\n\r\n"[..],
            b"From: a@example.com\r\nSubject: x\r\n",
        ] {
            let signed_msg = signed(&signer, msg);
            assert_eq!(
                mail_auth_verify(&signed_msg, "s._domainkey.example.com.", &record),
                [true]
            );
            if let Some(ok) = dkimpy_verify(&signed_msg, &record) {
                assert!(ok, "{}", String::from_utf8_lossy(&signed_msg));
            }
        }
    }

    #[test]
    fn large_body_signature_verifies() {
        let signer = DkimSigner::load(&[config("example.com", "s", "rsa2048.pkcs1.pem")]).unwrap();
        let record = txt_record("rsa", &dns_key("rsa2048.dns.txt"));
        let mut msg = message("sender@example.com");
        for i in 0..2000 {
            msg.extend_from_slice(format!("line {i} with  some   spaces \t\r\n").as_bytes());
        }
        let signed_msg = signed(&signer, &msg);
        if let Some(ok) = dkimpy_verify(&signed_msg, &record) {
            assert!(ok);
        }
        assert_eq!(
            mail_auth_verify(&signed_msg, "s._domainkey.example.com.", &record),
            [true]
        );
    }

    #[test]
    fn load_errors_name_the_key_path() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, contents: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, contents).unwrap();
            p
        };
        let with_key = |path: PathBuf| DkimKeyConfig {
            private_key: path,
            ..config("example.com", "s", "unused")
        };
        let load_one = |cfg: DkimKeyConfig| {
            let path = cfg.private_key.clone();
            let err = DkimSigner::load(&[cfg]).expect_err("load fails");
            let text = err.to_string();
            assert!(
                text.contains(&path.display().to_string()),
                "{text} does not name {}",
                path.display()
            );
            err
        };

        let missing = dir.path().join("missing.pem");
        assert!(matches!(
            load_one(with_key(missing)),
            DkimError::ReadKey { .. }
        ));
        assert!(matches!(
            load_one(with_key(write("empty.pem", ""))),
            DkimError::NoPrivateKey { .. }
        ));
        assert!(matches!(
            load_one(with_key(write(
                "cert.pem",
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
            ))),
            DkimError::NoPrivateKey { .. }
        ));
        assert!(matches!(
            load_one(with_key(write(
                "trunc.pem",
                "-----BEGIN PRIVATE KEY-----\nMIIE\n"
            ))),
            DkimError::BadPem { .. }
        ));
        assert!(matches!(
            load_one(with_key(write(
                "junk.pem",
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
            ))),
            DkimError::UnsupportedKeyType { .. }
        ));
        assert!(matches!(
            load_one(with_key(write(
                "ec.pem",
                "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n"
            ))),
            DkimError::UnsupportedKeyType {
                kind: "SEC1 EC",
                ..
            }
        ));
        // A truncated RSA PKCS#1 body: right label, broken DER.
        assert!(matches!(
            load_one(with_key(write(
                "badrsa.pem",
                "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----\n"
            ))),
            DkimError::BadKey {
                algorithm: DkimAlgorithm::RsaSha256,
                ..
            }
        ));
        // ring signs only with RSA moduli of 2048 bits or more.
        assert!(matches!(
            load_one(with_key(testdata("rsa1024.pem"))),
            DkimError::BadKey {
                algorithm: DkimAlgorithm::RsaSha256,
                ..
            }
        ));

        let mut cfg = config("example.com", "s", "ed25519.pem");
        cfg.algorithm = Some("rsa-sha256".into());
        assert!(matches!(
            load_one(cfg),
            DkimError::AlgorithmMismatch {
                configured: DkimAlgorithm::RsaSha256,
                found: DkimAlgorithm::Ed25519Sha256,
                ..
            }
        ));
        let mut cfg = config("example.com", "s", "rsa2048.pkcs1.pem");
        cfg.algorithm = Some("ed25519-sha256".into());
        assert!(matches!(load_one(cfg), DkimError::AlgorithmMismatch { .. }));
        let mut cfg = config("example.com", "s", "rsa2048.pkcs1.pem");
        cfg.algorithm = Some("rsa-sha1".into());
        assert!(matches!(load_one(cfg), DkimError::UnknownAlgorithm { .. }));

        let mut cfg = config("example.com", "s", "ed25519.pem");
        cfg.headers = Some(vec!["To".into(), "Subject".into()]);
        assert!(matches!(load_one(cfg), DkimError::FromNotSigned { .. }));
        let mut cfg = config("example.com", "s", "ed25519.pem");
        cfg.headers = Some(vec!["From".into(), "Bad:Name".into()]);
        assert!(matches!(load_one(cfg), DkimError::InvalidHeaderName { .. }));
        for domain in [
            "",
            "exa mple.com",
            "-a.example",
            "a..example",
            "[192.0.2.1]",
        ] {
            let cfg = config(domain, "s", "ed25519.pem");
            assert!(
                matches!(load_one(cfg), DkimError::InvalidDomain { .. }),
                "{domain:?}"
            );
        }
        for selector in ["", "a b", "a..b", "a;b"] {
            let cfg = config("example.com", selector, "ed25519.pem");
            assert!(
                matches!(load_one(cfg), DkimError::InvalidSelector { .. }),
                "{selector:?}"
            );
        }

        let err = DkimSigner::load(&[
            config("example.com", "s", "ed25519.pem"),
            config("EXAMPLE.com", "S", "rsa2048.pkcs8.pem"),
        ])
        .unwrap_err();
        assert!(matches!(err, DkimError::DuplicateSelector { .. }));
        assert!(err.to_string().contains("rsa2048.pkcs8.pem"), "{err}");
    }

    #[test]
    fn explicit_algorithm_matching_the_key_loads() {
        let mut rsa = config("example.com", "a", "rsa2048.pkcs8.pem");
        rsa.algorithm = Some("rsa-sha256".into());
        let mut ed = config("example.com", "b", "ed25519.pem");
        ed.algorithm = Some("ED25519-SHA256".into());
        let signer = DkimSigner::load(&[rsa, ed]).unwrap();
        assert_eq!(
            format!("{signer:?}"),
            r#"["a._domainkey.example.com (rsa-sha256)", "b._domainkey.example.com (ed25519-sha256)"]"#
        );
    }

    #[test]
    fn pkcs8_algorithm_reads_the_oid() {
        let read = |name| {
            let pem = std::fs::read(testdata(name)).unwrap();
            let PrivateKeyDer::Pkcs8(der) = PrivateKeyDer::from_pem_slice(&pem).unwrap() else {
                panic!("{name} is PKCS#8");
            };
            pkcs8_algorithm(der.secret_pkcs8_der())
        };
        assert_eq!(read("rsa2048.pkcs8.pem"), Some(DkimAlgorithm::RsaSha256));
        assert_eq!(read("ed25519.pem"), Some(DkimAlgorithm::Ed25519Sha256));
        assert_eq!(pkcs8_algorithm(b""), None);
        assert_eq!(pkcs8_algorithm(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(pkcs8_algorithm(&[0x30, 0x80]), None);
    }

    #[test]
    fn signer_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<DkimSigner>();
    }
}
