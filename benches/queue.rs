//! Scheduler benches: the timer wheel with one million retry deadlines spread over five days,
//! the retry maths, and the host-wide limits of a destination site that every core shares (the
//! per-message rate reservation and the per-connection slot).
//!
//! Run with `cargo bench --bench queue`; throughput is reported in entries (or calls) per second.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

use ringmta::queue::schedule::{RetryPolicy, after_failure};
use ringmta::queue::wheel::{DEFAULT_TICK_MS, TimerWheel};

const N: usize = 1_000_000;
const DAY_MS: u64 = 86_400_000;
/// Unix ms used as "now" at the start of every run.
const T0: u64 = 1_700_000_000_000;

/// Deterministic deadlines so every run measures the same work.
fn deadlines() -> Vec<u64> {
    let mut state = 0x5eed_u64;
    (0..N)
        .map(|_| {
            // splitmix64
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            T0 + (z ^ (z >> 31)) % (5 * DAY_MS)
        })
        .collect()
}

fn filled(deadlines: &[u64]) -> TimerWheel<u64> {
    let mut w = TimerWheel::new(DEFAULT_TICK_MS, T0);
    for (i, &d) in deadlines.iter().enumerate() {
        w.insert(d, i as u64);
    }
    w
}

fn wheel(c: &mut Criterion) {
    let deadlines = deadlines();
    let mut g = c.benchmark_group("wheel");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(N as u64));

    g.bench_function("insert_1m_over_5d", |b| {
        b.iter_batched(
            || TimerWheel::new(DEFAULT_TICK_MS, T0),
            |mut w| {
                for (i, &d) in deadlines.iter().enumerate() {
                    w.insert(d, i as u64);
                }
                w
            },
            BatchSize::PerIteration,
        )
    });

    // The scheduler loop: sleep until next_deadline, advance, take what fired.
    g.bench_function("advance_1m_via_next_deadline", |b| {
        b.iter_batched(
            || filled(&deadlines),
            |mut w| {
                let mut out = Vec::with_capacity(1024);
                let mut fired = 0;
                while let Some(at) = w.next_deadline() {
                    w.advance(at, &mut out);
                    fired += out.len();
                    out.clear();
                }
                assert_eq!(fired, N);
                w
            },
            BatchSize::PerIteration,
        )
    });

    // A timer that wakes every tick whether or not anything is due: 4.32 million advances.
    g.bench_function("advance_1m_every_tick", |b| {
        b.iter_batched(
            || filled(&deadlines),
            |mut w| {
                let mut out = Vec::with_capacity(1024);
                let mut now = T0;
                while !w.is_empty() {
                    now += DEFAULT_TICK_MS;
                    w.advance(now, &mut out);
                    black_box(&out);
                    out.clear();
                }
                w
            },
            BatchSize::PerIteration,
        )
    });

    // Recovery after downtime: five days pass in a single advance.
    g.bench_function("advance_1m_one_jump", |b| {
        b.iter_batched(
            || filled(&deadlines),
            |mut w| {
                let mut out = Vec::with_capacity(N);
                w.advance(T0 + 5 * DAY_MS, &mut out);
                assert_eq!(out.len(), N);
                (w, out)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn schedule(c: &mut Criterion) {
    let minutes = |m: u64| Duration::from_secs(m * 60);
    let policy = RetryPolicy::new(
        [5, 10, 20, 40, 60].map(minutes).to_vec(),
        Duration::from_secs(5 * 86_400),
        Duration::from_secs(4 * 3600),
    )
    .expect("the default schedule is valid");
    const CALLS: u64 = 10_000;
    let mut g = c.benchmark_group("schedule");
    g.throughput(Throughput::Elements(CALLS));
    g.bench_function("after_failure", |b| {
        b.iter(|| {
            for i in 0..CALLS {
                let attempts = (i % 64) as u32 + 1;
                let now = T0 + i * 60_000;
                black_box(after_failure(
                    &policy,
                    black_box(attempts),
                    T0,
                    black_box(now),
                ));
            }
        })
    });
    g.finish();
}

/// The shared limit checks of `delivery::sites`: what a message (rate) and a connection (slot)
/// pay for a host-wide limit, uncontended and with the other core hammering the same site.
fn site_limits(c: &mut Criterion) {
    use ringmta::delivery::sites::Sites;
    use ringmta::queue::shaping::PathLimits;
    use ringmta::queue::throttle::ThrottlePolicy;
    use std::sync::Arc;
    use std::time::Instant;
    let limits = |rate| PathLimits {
        max_connections: 1_000_000,
        max_messages_per_second: rate,
        max_messages_per_connection: 100,
        throttle: ThrottlePolicy::default(),
        max_queue_lifetime_ms: None,
    };
    let t0 = Instant::now();
    let mut g = c.benchmark_group("site");
    let sites = Sites::new(limits(1_000_000_000), vec![], t0);
    let site = sites.get("mx1.example.net mx2.example.net", None, "example.net");
    g.bench_function("rate_delay_per_message", |b| {
        b.iter(|| black_box(site.rate_delay(black_box(t0))))
    });
    let wake = Arc::new(tokio::sync::Notify::new());
    g.bench_function("slot_per_connection", |b| {
        b.iter(|| {
            let s = sites.get("mx1.example.net mx2.example.net", None, "example.net");
            black_box(s.acquire(&wake, t0))
        })
    });
    // The same per-message reservation while another thread reserves on the same site.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let other = {
        let (site, stop) = (Arc::clone(&site), Arc::clone(&stop));
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                black_box(site.rate_delay(t0));
            }
        })
    };
    g.bench_function("rate_delay_per_message_contended", |b| {
        b.iter(|| black_box(site.rate_delay(black_box(t0))))
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = other.join();
    g.finish();
}

/// The suppression check at RCPT: nothing while the list is empty, one hash lookup otherwise
/// (hit or miss), with 100,000 addresses on the list.
fn suppression(c: &mut Criterion) {
    use ringmta::smtp::RecipientCheck;
    use ringmta::suppress::{Scope, Suppressions};
    let mut g = c.benchmark_group("suppression");
    let empty = Suppressions::in_memory(Scope::Global);
    let sender = ringmta::smtp::ReversePath::parse("<app@example.com>").expect("a path");
    g.bench_function("rcpt_check_empty_list", |b| {
        b.iter(|| black_box(empty.refusal(black_box("bob@example.net"), &sender, None)))
    });
    let full = Suppressions::in_memory(Scope::Global);
    for i in 0..100_000 {
        full.add(
            &format!("user{i}@example.net"),
            None,
            "user_unknown",
            "550 5.1.1",
            (0, None),
            false,
        )
        .unwrap();
    }
    g.bench_function("rcpt_check_miss_100k", |b| {
        b.iter(|| black_box(full.refusal(black_box("bob@example.net"), &sender, None)))
    });
    g.bench_function("rcpt_check_hit_100k", |b| {
        b.iter(|| black_box(full.refusal(black_box("user4242@example.net"), &sender, None)))
    });
    g.finish();
}

criterion_group!(benches, wheel, schedule, site_limits, suppression);
criterion_main!(benches);
