//! Signatures checked by two independent verifiers (dkimpy and mail-auth), and the key and
//! header choices.

use super::keys::pkcs8_algorithm;
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
        crate::testkit::skip(
            "dkimpy check: python3 with dkimpy (and pynacl for ed25519) not installed \
             (pip install dkimpy pynacl)",
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
