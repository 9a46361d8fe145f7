//! Bounce classification throughput over the corpus of real-world style replies.
//!
//! Run: `cargo bench --bench bounce`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use ringmta::bounce::classify::Classifier;

fn classify(c: &mut Criterion) {
    let corpus = include_str!("../src/bounce/corpus.txt");
    let replies: Vec<&str> = corpus
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('|').map(|(_, r)| r.trim()))
        .collect();
    let classifier = Classifier::builtin();
    let mut g = c.benchmark_group("bounce_classify");
    g.throughput(Throughput::Elements(replies.len() as u64));
    g.bench_function("corpus", |b| {
        b.iter(|| {
            for r in &replies {
                black_box(classifier.classify_line(black_box(r)));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, classify);
criterion_main!(benches);
