//! DKIM signing benches: a 2 KB and a 100 KB message signed with RSA-2048 and with ed25519.
//!
//! Run with `cargo bench --bench dkim`; throughput is reported in messages per second. The
//! keys are the test keys in `src/content/testdata/`.

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use ringmta::content::dkim::{DkimKeyConfig, DkimSigner};

/// Unix seconds used as the signature time.
const NOW: u64 = 1_700_000_000;

fn signer(key_file: &str) -> DkimSigner {
    let config = DkimKeyConfig {
        domain: "example.com".to_owned(),
        selector: "bench".to_owned(),
        private_key: PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("src/content/testdata")
            .join(key_file),
        algorithm: None,
        headers: None,
        oversign_from: true,
    };
    DkimSigner::load(&[config]).expect("bench key loads")
}

/// A plain-text message of about `size` bytes with the usual header fields.
fn message(size: usize) -> Vec<u8> {
    let mut msg = b"From: Sender <sender@example.com>\r\n\
        To: Recipient <rcpt@other.example>\r\n\
        Subject: Quarterly report\r\n\
        Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n\
        Message-ID: <bench.1@example.com>\r\n\
        MIME-Version: 1.0\r\n\
        Content-Type: text/plain; charset=utf-8\r\n\
        \r\n"
        .to_vec();
    let line = b"The quick brown fox jumps over the lazy dog,  again and again.\t\r\n";
    while msg.len() + line.len() <= size {
        msg.extend_from_slice(line);
    }
    msg
}

fn sign(c: &mut Criterion) {
    let mut g = c.benchmark_group("dkim_sign");
    g.throughput(Throughput::Elements(1));
    for (alg, key_file) in [("rsa2048", "rsa2048.pkcs8.pem"), ("ed25519", "ed25519.pem")] {
        let signer = signer(key_file);
        for (label, size) in [("2k", 2 * 1024), ("100k", 100 * 1024)] {
            let msg = message(size);
            g.bench_function(format!("{alg}/{label}"), |b| {
                b.iter(|| {
                    signer
                        .sign(black_box(&msg), NOW)
                        .expect("signing works")
                        .expect("key matches")
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, sign);
criterion_main!(benches);
