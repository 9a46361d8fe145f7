//! Spool throughput: append + group commit (one fdatasync per batch) for 1 KB and 100 KB
//! messages, against the disk's raw fdatasync rate for a small append measured in the same
//! run; and recovery time for a shard of 100k messages. Reported as elements (messages)/s.
//!
//! Run: `cargo bench --bench spool` (uses a temp dir on the filesystem of $TMPDIR).

use std::hint::black_box;
use std::io::Write;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

use ringmta::spool::{Durability, MessageMeta, NewMessage, RecipientMeta, Shard, ShardConfig};

fn meta() -> MessageMeta {
    MessageMeta {
        id: 0,
        received_at_ms: 1_800_000_000_000,
        reverse_path: "sender@example.com".into(),
        ret: 0,
        envid: None,
        body_type: 0,
        smtputf8: false,
        recipients: vec![RecipientMeta {
            address: "rcpt@example.net".into(),
            notify: 0,
            orcpt: None,
        }],
        auth_user: Some("sender@example.com".into()),
        client_addr: "127.0.0.1:40000".into(),
        helo: "client.example".into(),
        tls: Some("TLSv1.3 TLS13_AES_256_GCM_SHA384".into()),
        is_dsn: false,
    }
}

fn raw_fdatasync(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut f = std::fs::File::create(dir.path().join("raw")).unwrap();
    let block = vec![b'x'; 1024];
    let mut g = c.benchmark_group("baseline");
    g.throughput(Throughput::Elements(1));
    g.bench_function("write_1KiB_fdatasync", |b| {
        b.iter(|| {
            f.write_all(&block).unwrap();
            f.sync_data().unwrap();
        })
    });
    g.finish();
}

fn append_commit(c: &mut Criterion) {
    let mut g = c.benchmark_group("append_group_commit");
    g.measurement_time(Duration::from_secs(8));
    for (size, batch) in [(1024usize, 64usize), (1024, 1), (100 * 1024, 16)] {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ShardConfig {
            durability: Durability::Fsync,
            ..ShardConfig::new(dir.path(), 0)
        };
        let (mut shard, _) = Shard::open(cfg, 1_800_000_000_000).unwrap();
        let body = vec![b'a'; size];
        g.throughput(Throughput::Elements(batch as u64));
        g.bench_function(format!("{size}B_x{batch}_per_fdatasync"), |b| {
            b.iter(|| {
                for _ in 0..batch {
                    let parts: [&[u8]; 1] = [&body];
                    black_box(
                        shard
                            .append_message(
                                &mut NewMessage {
                                    meta: meta(),
                                    options: Default::default(),
                                    body: &parts,
                                },
                                1_800_000_000_000,
                            )
                            .unwrap(),
                    );
                }
                shard.sync().unwrap();
            })
        });
    }
    g.finish();
}

fn recovery(c: &mut Criterion) {
    const N: usize = 100_000;
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut shard, _) =
            Shard::open(ShardConfig::new(dir.path(), 0), 1_800_000_000_000).unwrap();
        let body = vec![b'a'; 160];
        for _ in 0..N {
            let parts: [&[u8]; 1] = [&body];
            shard
                .append_message(
                    &mut NewMessage {
                        meta: meta(),
                        options: Default::default(),
                        body: &parts,
                    },
                    1_800_000_000_000,
                )
                .unwrap();
        }
        shard.sync().unwrap();
    }
    let mut g = c.benchmark_group("recovery");
    g.sample_size(10);
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("open_100k_messages", |b| {
        b.iter_batched(
            || (),
            |_| {
                // Reopening starts a fresh (empty) segment for appends: keep it small.
                let cfg = ShardConfig {
                    segment_size: 1 << 20,
                    ..ShardConfig::new(dir.path(), 0)
                };
                let (shard, report) = Shard::open(cfg, 1_800_000_000_000).unwrap();
                black_box((shard.stats(), report));
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

/// Zero-copy record access: look a message up by id and read its envelope and body from the
/// mapping, as delivery does for every attempt.
fn record_access(c: &mut Criterion) {
    const N: usize = 10_000;
    let dir = tempfile::tempdir().unwrap();
    let (mut shard, _) = Shard::open(ShardConfig::new(dir.path(), 0), 1_800_000_000_000).unwrap();
    let body = vec![b'a'; 1024];
    let mut ids = Vec::with_capacity(N);
    for _ in 0..N {
        let parts: [&[u8]; 1] = [&body];
        ids.push(
            shard
                .append_message(
                    &mut NewMessage {
                        meta: meta(),
                        options: Default::default(),
                        body: &parts,
                    },
                    1_800_000_000_000,
                )
                .unwrap()
                .0,
        );
    }
    shard.sync().unwrap();
    let mut g = c.benchmark_group("record_access");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("message_by_id_10k", |b| {
        b.iter(|| {
            let mut total = 0usize;
            for id in &ids {
                let v = shard.message(*id).unwrap();
                total += v.body.len() + v.meta.recipients.len() + v.meta.reverse_path.len();
            }
            black_box(total)
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    raw_fdatasync,
    append_commit,
    recovery,
    record_access
);
criterion_main!(benches);
