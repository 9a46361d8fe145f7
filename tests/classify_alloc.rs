//! The bounce classifier allocates nothing per reply it classifies, whatever the length of
//! the reply's text (issue 16: "never allocates per byte of reply text"). Its own test binary,
//! because it counts allocations with a global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use ringmta::bounce::classify::{Classifier, Failure};

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator unchanged; only counts calls on this thread.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout (see `alloc`).
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_during(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

#[test]
fn classifying_a_reply_allocates_nothing() {
    let classifier = Classifier::builtin();
    let corpus = include_str!("../src/bounce/corpus.txt");
    let replies: Vec<(u16, String)> = corpus
        .lines()
        .filter_map(|l| l.split_once(" | ").map(|(_, r)| r))
        .filter_map(|r| {
            let code: u16 = r.get(..3)?.parse().ok()?;
            Some((code, r.get(4..).unwrap_or("").to_owned()))
        })
        .collect();
    let long = format!("550 {}", "no such user here ".repeat(1_000));
    let classify_all = || {
        for (code, text) in &replies {
            std::hint::black_box(classifier.classify(&Failure::Reply {
                code: *code,
                enhanced: Some((5, 7, 1)),
                text,
            }));
        }
        std::hint::black_box(classifier.classify(&Failure::Reply {
            code: 550,
            enhanced: Some((5, 1, 1)),
            text: &long,
        }));
    };
    // The regex engines fill their per-thread caches on first use.
    classify_all();
    assert!(replies.len() > 300);
    // The counter sees this thread's allocations (so a zero below means something).
    assert!(allocations_during(|| drop(std::hint::black_box(vec![0u8; 64]))) >= 1);
    assert_eq!(allocations_during(classify_all), 0);
}
