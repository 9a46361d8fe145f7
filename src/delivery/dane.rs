//! DANE for SMTP (RFC 7672): the TLSA records at `_25._tcp.<mx host>` say which certificate
//! the host presents, and a resolver that validated them (the AD bit, see
//! `docs/decisions/2026-12-02-dane-trusts-the-resolvers-ad-bit.md`) makes them binding: TLS is then
//! required and the certificate must match one of them, whatever the other TLS policies say.
//!
//! Which records count (RFC 7672 §3.1): DANE-EE (usage 3) pins the server's own certificate or
//! key, with no name or expiry check; DANE-TA (usage 2) names a trust anchor in the chain the
//! server presents, and the chain must verify up to it for the MX host name. PKIX-TA and PKIX-EE
//! (usages 0 and 1) are not for SMTP and are skipped, as are unknown selectors and matching
//! types. A secure TLSA set with no usable record still means "TLS is required" (§2.2).

use std::sync::Arc;

use hickory_resolver::proto::rr::{RData, RecordType};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256, Sha512};

use super::route::Router;
use crate::net::tls::AcceptAnyCert;

/// One TLSA record (RFC 6698 §2.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tlsa {
    /// Certificate usage: 2 DANE-TA, 3 DANE-EE (0 and 1 are not used for SMTP).
    pub usage: u8,
    /// 0: the whole certificate; 1: its SubjectPublicKeyInfo.
    pub selector: u8,
    /// 0: the selected bytes themselves; 1: their SHA-256; 2: their SHA-512.
    pub matching: u8,
    /// The certificate association data.
    pub data: Vec<u8>,
}

/// DANE-TA: a trust anchor in the presented chain.
pub const DANE_TA: u8 = 2;
/// DANE-EE: the server's own certificate or key.
pub const DANE_EE: u8 = 3;

impl Tlsa {
    /// Whether an SMTP client can use this record (RFC 7672 §3.1).
    pub fn usable(&self) -> bool {
        matches!(self.usage, DANE_TA | DANE_EE)
            && self.selector <= 1
            && match self.matching {
                0 => !self.data.is_empty(),
                1 => self.data.len() == 32,
                2 => self.data.len() == 64,
                _ => false,
            }
    }

    /// Whether `cert` (DER) is the certificate or key this record names.
    pub fn matches(&self, cert: &CertificateDer<'_>) -> bool {
        let spki;
        let selected: &[u8] = match self.selector {
            0 => cert.as_ref(),
            1 => match webpki::anchor_from_trusted_cert(cert) {
                Ok(anchor) => {
                    spki = webpki::spki_for_anchor(&anchor);
                    spki.as_ref()
                }
                Err(_) => return false,
            },
            _ => return false,
        };
        match self.matching {
            0 => selected == self.data.as_slice(),
            1 => Sha256::digest(selected).as_slice() == self.data.as_slice(),
            2 => Sha512::digest(selected).as_slice() == self.data.as_slice(),
            _ => false,
        }
    }

    /// The record in presentation form, as in a zone file: `3 1 1 ab12…`.
    pub fn display(&self) -> String {
        let hex: String = self.data.iter().map(|b| format!("{b:02x}")).collect();
        format!("{} {} {} {hex}", self.usage, self.selector, self.matching)
    }
}

/// What DANE asks of a connection to one MX host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Dane {
    /// No validated TLSA records: the other policies apply.
    None,
    /// Validated TLSA records, none usable: TLS is required, any certificate will do.
    Unusable,
    /// Validated, usable records: TLS is required and the certificate must match one of them.
    Records(Vec<Tlsa>),
}

/// Looks up the TLSA records of `host` (port 25) and decides what they ask. They count only
/// when both they and the host's address records are validated (RFC 7672 §2.2.2: a forged
/// address could otherwise point at a server the records were not meant for). A failed TLSA
/// lookup for a host whose addresses are validated is an error: the records may exist and be
/// withheld by an attacker, so the host is not used without them.
pub async fn lookup(router: &Router, host: &str) -> Result<Dane, String> {
    let host = host.trim_end_matches('.');
    if host.parse::<std::net::IpAddr>().is_ok() {
        return Ok(Dane::None);
    }
    let tlsa_name = format!("_25._tcp.{host}");
    let tlsa = router.validated(&tlsa_name, RecordType::TLSA).await;
    if let Ok(answer) = &tlsa
        && (!answer.secure || answer.records.is_empty())
    {
        return Ok(Dane::None);
    }
    let validated = addresses_validated(router, host)
        .await
        .map_err(|e| match &tlsa {
            Err(t) => format!("TLSA lookup for {tlsa_name} failed: {t}; address lookup: {e}"),
            Ok(_) => format!("address lookup for {host} (to use its TLSA records) failed: {e}"),
        })?;
    if !validated {
        return Ok(Dane::None);
    }
    let answer = tlsa.map_err(|e| format!("TLSA lookup for {tlsa_name} failed: {e}"))?;
    let records: Vec<Tlsa> = answer
        .records
        .iter()
        .filter_map(|r| match &r.data {
            RData::TLSA(t) => Some(Tlsa {
                usage: t.cert_usage.into(),
                selector: t.selector.into(),
                matching: t.matching.into(),
                data: t.cert_data.clone(),
            }),
            _ => None,
        })
        .filter(Tlsa::usable)
        .collect();
    Ok(if records.is_empty() {
        Dane::Unusable
    } else {
        Dane::Records(records)
    })
}

/// Whether the resolver validated `host`'s addresses (A, else AAAA).
async fn addresses_validated(router: &Router, host: &str) -> Result<bool, String> {
    let a = router.validated(host, RecordType::A).await?;
    if !a.records.is_empty() {
        return Ok(a.secure);
    }
    let aaaa = router.validated(host, RecordType::AAAA).await?;
    Ok(aaaa.secure && !aaaa.records.is_empty())
}

/// The client TLS configuration that authenticates the server by `records` (see [`Verifier`]).
pub fn client_config(records: Vec<Tlsa>) -> Arc<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Verifier::new(records, Arc::clone(&provider));
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        // Invariant: the ring provider supports every default protocol version.
        .expect("ring supports the default versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Arc::new(config)
}

/// Checks a server's chain against TLSA records: a DANE-EE record matching the end entity
/// accepts it as it is; a DANE-TA record matching a certificate of the chain makes that
/// certificate the only trust anchor for a normal path validation (names, dates) of the chain.
#[derive(Debug)]
pub struct Verifier {
    records: Vec<Tlsa>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    signatures: AcceptAnyCert,
}

impl Verifier {
    /// A verifier for `records` with the crypto of `provider`.
    pub fn new(records: Vec<Tlsa>, provider: Arc<rustls::crypto::CryptoProvider>) -> Verifier {
        Verifier {
            records,
            signatures: AcceptAnyCert(Arc::clone(&provider)),
            provider,
        }
    }

    fn no_match(&self, why: &str) -> rustls::Error {
        let records: Vec<String> = self.records.iter().map(Tlsa::display).collect();
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
            Arc::new(DaneMismatch(format!(
                "{why} (DANE TLSA: {})",
                records.join(", ")
            ))),
        )))
    }
}

/// Why a chain did not match the TLSA records.
#[derive(Debug)]
struct DaneMismatch(String);

/// The reason a handshake failed on the TLSA records, when it did (rustls would show it
/// wrapped in its debug form).
pub fn mismatch(e: &std::io::Error) -> Option<&str> {
    match e.get_ref()?.downcast_ref::<rustls::Error>()? {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
            other.0.downcast_ref::<DaneMismatch>().map(|m| m.0.as_str())
        }
        _ => None,
    }
}

impl std::fmt::Display for DaneMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DaneMismatch {}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self
            .records
            .iter()
            .any(|r| r.usage == DANE_EE && r.matches(end_entity))
        {
            return Ok(ServerCertVerified::assertion());
        }
        let mut last = None;
        for anchor in intermediates {
            if !self
                .records
                .iter()
                .any(|r| r.usage == DANE_TA && r.matches(anchor))
            {
                continue;
            }
            let mut roots = rustls::RootCertStore::empty();
            if roots.add(anchor.clone().into_owned()).is_err() {
                continue;
            }
            let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                Arc::clone(&self.provider),
            )
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
            match verifier.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ) {
                Ok(ok) => return Ok(ok),
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(rustls::Error::InvalidCertificate(e)) => self.no_match(&format!(
                "the chain does not verify to its DANE-TA anchor: {e}"
            )),
            _ => self.no_match("no TLSA record matches the certificate chain"),
        })
    }

    // The handshake signatures are checked as for any certificate.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.signatures.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.signatures.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests;
