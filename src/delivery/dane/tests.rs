use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256, Sha512};

use super::*;

/// A CA and a certificate it issued for `mx.example.test`.
struct Chain {
    ca: CertificateDer<'static>,
    ca_spki: Vec<u8>,
    leaf: CertificateDer<'static>,
    leaf_spki: Vec<u8>,
}

fn chain() -> Chain {
    chain_valid(None)
}

/// A date as (year, month, day).
type Ymd = (i32, u8, u8);

/// [`chain`] with the leaf valid only between the two dates given.
fn chain_valid(window: Option<(Ymd, Ymd)>) -> Chain {
    let ca_key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "dane test CA");
    let ca = params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf_params = CertificateParams::new(vec!["mx.example.test".to_owned()]).unwrap();
    if let Some(((y0, m0, d0), (y1, m1, d1))) = window {
        leaf_params.not_before = rcgen::date_time_ymd(y0, m0, d0);
        leaf_params.not_after = rcgen::date_time_ymd(y1, m1, d1);
    }
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();
    Chain {
        ca_spki: ca_key.public_key_der(),
        ca: ca.der().clone(),
        leaf: leaf.der().clone(),
        // rcgen's own encoding of the key, independent of the parser under test.
        leaf_spki: leaf_key.public_key_der(),
    }
}

fn tlsa(usage: u8, selector: u8, matching: u8, data: Vec<u8>) -> Tlsa {
    Tlsa {
        usage,
        selector,
        matching,
        data,
    }
}

#[test]
fn every_selector_and_matching_type_matches_the_certificate_it_names() {
    let c = chain();
    let sha256 = |b: &[u8]| Sha256::digest(b).to_vec();
    let sha512 = |b: &[u8]| Sha512::digest(b).to_vec();
    let cases = [
        (0, 0, c.leaf.to_vec()),
        (0, 1, sha256(&c.leaf)),
        (0, 2, sha512(&c.leaf)),
        (1, 0, c.leaf_spki.clone()),
        (1, 1, sha256(&c.leaf_spki)),
        (1, 2, sha512(&c.leaf_spki)),
    ];
    for (selector, matching, data) in cases {
        let record = tlsa(DANE_EE, selector, matching, data);
        assert!(record.usable(), "{}", record.display());
        assert!(record.matches(&c.leaf), "{}", record.display());
        assert!(
            !record.matches(&c.ca),
            "{} matched the CA",
            record.display()
        );
    }
    let mut wrong = sha256(&c.leaf_spki);
    wrong[0] ^= 1;
    assert!(!tlsa(DANE_EE, 1, 1, wrong).matches(&c.leaf));
}

#[test]
fn records_an_smtp_client_cannot_use_are_skipped() {
    let digest = vec![0u8; 32];
    let table = [
        (tlsa(0, 1, 1, digest.clone()), false, "PKIX-TA"),
        (tlsa(1, 1, 1, digest.clone()), false, "PKIX-EE"),
        (tlsa(2, 1, 1, digest.clone()), true, "DANE-TA"),
        (tlsa(3, 1, 1, digest.clone()), true, "DANE-EE"),
        (tlsa(3, 2, 1, digest.clone()), false, "unknown selector"),
        (
            tlsa(3, 1, 3, digest.clone()),
            false,
            "unknown matching type",
        ),
        (tlsa(3, 1, 1, vec![0u8; 31]), false, "short SHA-256"),
        (tlsa(3, 1, 2, digest), false, "SHA-512 of SHA-256 length"),
        (tlsa(3, 0, 0, Vec::new()), false, "empty full certificate"),
    ];
    for (record, usable, what) in table {
        assert_eq!(record.usable(), usable, "{what}: {}", record.display());
    }
}

fn verify(
    records: Vec<Tlsa>,
    c: &Chain,
    intermediates: &[CertificateDer<'static>],
    name: &str,
) -> Result<(), String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Verifier::new(records, provider)
        .verify_server_cert(
            &c.leaf,
            intermediates,
            &ServerName::try_from(name.to_owned()).unwrap(),
            &[],
            UnixTime::now(),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[test]
fn dane_ee_accepts_the_pinned_key_under_any_name_and_nothing_else() {
    let c = chain();
    let pinned = tlsa(DANE_EE, 1, 1, Sha256::digest(&c.leaf_spki).to_vec());
    // RFC 7672 §3.1.1: no name check for DANE-EE.
    assert_eq!(verify(vec![pinned.clone()], &c, &[], "other.test"), Ok(()));
    let other = tlsa(DANE_EE, 1, 1, vec![7u8; 32]);
    let err = verify(vec![other], &c, &[], "mx.example.test").unwrap_err();
    assert!(err.contains("no TLSA record matches"), "{err}");
    assert!(err.contains("3 1 1 0707"), "{err}");
}

/// RFC 7672 §3.1.1: the dates of a DANE-EE certificate are not checked (the TLSA record is
/// what vouches for it); under DANE-TA they are.
#[test]
fn dane_ee_ignores_the_certificate_dates_and_dane_ta_does_not() {
    let c = chain_valid(Some(((2000, 1, 1), (2001, 1, 1))));
    let pinned = tlsa(DANE_EE, 1, 1, Sha256::digest(&c.leaf_spki).to_vec());
    assert_eq!(verify(vec![pinned], &c, &[], "mx.example.test"), Ok(()));
    let anchor = tlsa(DANE_TA, 1, 1, Sha256::digest(&c.ca_spki).to_vec());
    let err = verify(
        vec![anchor],
        &c,
        std::slice::from_ref(&c.ca),
        "mx.example.test",
    )
    .unwrap_err();
    assert!(err.contains("DANE-TA") && err.contains("expired"), "{err}");
}

#[test]
fn dane_ta_needs_the_anchor_in_the_chain_and_the_mx_name_on_the_certificate() {
    let c = chain();
    let anchor = tlsa(DANE_TA, 0, 1, Sha256::digest(&c.ca).to_vec());
    let with_ca = [c.ca.clone()];
    assert_eq!(
        verify(vec![anchor.clone()], &c, &with_ca, "mx.example.test"),
        Ok(())
    );
    // The anchor must be presented: a chain without it matches nothing.
    let err = verify(vec![anchor.clone()], &c, &[], "mx.example.test").unwrap_err();
    assert!(err.contains("no TLSA record matches"), "{err}");
    // A DANE-TA chain is checked for the MX host name.
    let err = verify(vec![anchor], &c, &with_ca, "mx.other.test").unwrap_err();
    assert!(
        err.contains("does not verify to its DANE-TA anchor"),
        "{err}"
    );
    // The anchor's key (selector 1) works as its whole certificate does.
    let by_key = tlsa(DANE_TA, 1, 2, Sha512::digest(&c.ca_spki).to_vec());
    assert_eq!(
        verify(vec![by_key], &c, &with_ca, "mx.example.test"),
        Ok(())
    );
    // A DANE-TA record does not pin the end entity.
    let leaf_as_ta = tlsa(DANE_TA, 0, 1, Sha256::digest(&c.leaf).to_vec());
    assert!(verify(vec![leaf_as_ta], &c, &with_ca, "mx.example.test").is_err());
}
