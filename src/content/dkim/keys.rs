//! Key files and identities: PEM/DER keys and their algorithm, the signing domain, the
//! selector and the list of signed header fields, all checked at load.

use super::*;

/// Reads a PEM private key and checks it against the configured algorithm.
pub(super) fn load_key(
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
pub(super) fn pkcs8_algorithm(der: &[u8]) -> Option<DkimAlgorithm> {
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
pub(super) fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
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
pub(super) fn normalize_domain(domain: &str) -> Option<String> {
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
pub(super) fn is_valid_selector(selector: &str) -> bool {
    !selector.is_empty()
        && selector.len() <= 63
        && selector.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Checks the configured header list (or takes the default), deduplicating it ignoring case.
pub(super) fn signed_header_list(
    path: &Path,
    names: Option<&[String]>,
) -> Result<Vec<String>, DkimError> {
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
