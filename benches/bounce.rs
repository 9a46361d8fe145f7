//! Bounce classification throughput over both corpora of real-world style replies (the tuned
//! one and the held-out one), with the built-in rules and, in the same run, with the rule set
//! they replaced (`benches/data/bounce-rules-before-16.toml`, the rules before issue 16), so
//! that a change to the rules shows its cost against a baseline measured alongside.
//!
//! Run: `cargo bench --bench bounce`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use ringmta::bounce::classify::Classifier;

fn replies() -> Vec<&'static str> {
    let tuned = include_str!("../src/bounce/corpus.txt");
    let heldout = include_str!("../src/bounce/corpus-heldout.txt");
    tuned
        .lines()
        .chain(heldout.lines())
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once(" | ").map(|(_, r)| r.trim()))
        .collect()
}

fn classify(c: &mut Criterion) {
    let replies = replies();
    let before = Classifier::from_toml(
        include_str!("data/bounce-rules-before-16.toml"),
        "bounce-rules-before-16.toml",
    )
    .expect("the baseline rules load");
    let mut g = c.benchmark_group("bounce_classify");
    g.throughput(Throughput::Elements(replies.len() as u64));
    for (name, classifier) in [("builtin", Classifier::builtin()), ("before_16", before)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                for r in &replies {
                    black_box(classifier.classify_line(black_box(r)));
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, classify);
criterion_main!(benches);
