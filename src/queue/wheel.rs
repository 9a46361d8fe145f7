//! A hierarchical timer wheel holding retry deadlines for one core.
//!
//! Time is counted in ticks of `tick_ms` since `start_ms`. Level `l` has 64 slots of `64^l`
//! ticks each; an entry sits at the level of the highest base-64 digit in which its deadline
//! tick differs from the current tick (the scheme tokio's timer uses), so it moves down one or
//! more levels, never up, as time reaches its slot. With [`LEVELS`] = 6 the wheel spans 2^36
//! ticks (218 years at the default 100 ms tick); deadlines past the end of the current top-level
//! span wait in an overflow list that is re-inserted when time reaches their span.
//!
//! The module must never read a clock, box entries one by one or panic: the caller passes time
//! in, entries live by value in per-slot `Vec`s, and all tick arithmetic saturates. There is no
//! cancellation; a caller checks its own state when an entry fires.
//!
//! Invariants:
//! - every entry at level `l` has a deadline tick that agrees with `elapsed` in all digits above
//!   `l` and has a larger digit `l`, so occupied slots are always ahead of the current one;
//! - consequently the first occupied level holds the earliest slot, and entries leave
//!   [`TimerWheel::advance`] in non-decreasing deadline-tick order (after any that were
//!   inserted already due);
//! - `len` counts every entry held in slots, `due` and `overflow`.

use std::fmt;

/// The tick the scheduler uses unless configured otherwise, in milliseconds.
pub const DEFAULT_TICK_MS: u64 = 100;
/// Number of levels in the wheel.
pub const LEVELS: usize = 6;
/// Slots per level.
pub const SLOTS: usize = 1 << SLOT_BITS;

const SLOT_BITS: u32 = 6;
const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;
/// Ticks covered by the whole wheel (all levels); deadlines outside the current span of this
/// size go to the overflow list.
const SPAN_TICKS: u64 = 1 << (SLOT_BITS * LEVELS as u32);
/// Drained slot buffers up to this many entries are kept for reuse; larger ones are freed so
/// that a burst does not pin its peak memory in every slot it passed through.
const RETAIN_SLOT_CAPACITY: usize = 1024;

// `Entry::offset` must hold any offset inside a slot of the top level.
const _: () = assert!(SLOT_BITS * (LEVELS as u32 - 1) <= u32::BITS);
// The default tick must span the 5-day default queue lifetime without using the overflow list.
const _: () = assert!(SPAN_TICKS * DEFAULT_TICK_MS >= 5 * 86_400_000);

/// A hierarchical timer wheel: O(1) insert, and an advance whose cost is the number of entries
/// fired or moved down plus the number of occupied slots passed.
///
/// Deadlines are Unix milliseconds, rounded up to whole ticks: an entry fires at the first
/// [`advance`](Self::advance) whose `now_ms` reaches the tick boundary at or after its deadline.
/// So it never fires early, and fires less than one tick late when the caller advances to
/// [`next_deadline`](Self::next_deadline).
pub struct TimerWheel<T> {
    /// Milliseconds per tick, at least 1.
    tick_ms: u64,
    /// Unix milliseconds of tick 0.
    start_ms: u64,
    /// Ticks since `start_ms` that have been processed: everything with a deadline tick at or
    /// before this has fired or sits in `due`. Only grows.
    elapsed: u64,
    /// Exactly `LEVELS` levels, level 0 first.
    levels: Box<[Level<T>]>,
    /// Entries inserted with a deadline tick at or before `elapsed`: they fire at the next
    /// advance whatever its `now_ms`.
    due: Vec<T>,
    /// Entries whose deadline tick lies past the end of the current `SPAN_TICKS`-aligned span,
    /// with their full deadline tick.
    overflow: Vec<(u64, T)>,
    /// Smallest deadline tick in `overflow`; meaningless when `overflow` is empty.
    overflow_min: u64,
    /// Number of entries held.
    len: usize,
}

struct Level<T> {
    /// Bit `s` is set iff `slots[s]` is non-empty.
    occupied: u64,
    slots: [Vec<Entry<T>>; SLOTS],
}

/// One pending entry inside a slot. Its deadline tick is `slot start + offset`: the slot itself
/// encodes all higher digits, which keeps an entry at 4 bytes plus `T` (before padding).
struct Entry<T> {
    offset: u32,
    value: T,
}

/// Where the next thing happens.
#[derive(Clone, Copy)]
enum Source {
    Slot { level: usize, slot: usize },
    Overflow,
}

impl<T> TimerWheel<T> {
    /// Creates an empty wheel whose tick 0 is `start_ms`; a `tick_ms` of 0 is treated as 1.
    pub fn new(tick_ms: u64, start_ms: u64) -> Self {
        let levels = (0..LEVELS)
            .map(|_| Level {
                occupied: 0,
                slots: std::array::from_fn(|_| Vec::new()),
            })
            .collect();
        TimerWheel {
            tick_ms: tick_ms.max(1),
            start_ms,
            elapsed: 0,
            levels,
            due: Vec::new(),
            overflow: Vec::new(),
            overflow_min: u64::MAX,
            len: 0,
        }
    }

    /// Adds an entry that fires once time reaches `deadline_ms`. O(1) amortised.
    ///
    /// A deadline at or before the wheel's current tick fires at the next advance.
    pub fn insert(&mut self, deadline_ms: u64, value: T) {
        self.len += 1;
        let deadline = self.deadline_tick(deadline_ms);
        if let Some(value) = self.place(deadline, value) {
            self.due.push(value);
        }
    }

    /// Moves time forward to `now_ms` and appends to `out` every entry whose deadline, rounded
    /// up to a tick boundary, is at or before `now_ms`. Entries inserted with a deadline at or
    /// before the wheel's tick come first, in insertion order; the rest follow in
    /// non-decreasing deadline-tick order (entries sharing a tick in no particular order).
    /// A `now_ms` earlier than a previous one moves nothing back.
    pub fn advance(&mut self, now_ms: u64, out: &mut Vec<T>) {
        self.len -= self.due.len();
        out.append(&mut self.due);
        if self.due.capacity() > RETAIN_SLOT_CAPACITY {
            // A start-up burst of overdue entries must not pin its peak buffer.
            self.due = Vec::new();
        }
        // Every deadline is <= u64::MAX, so at the end of time everything is due, even a
        // deadline in the final partial tick whose rounded-up tick lies past `(MAX - start) / tick`.
        let target = if now_ms == u64::MAX {
            u64::MAX
        } else {
            now_ms.saturating_sub(self.start_ms) / self.tick_ms
        };
        while let Some((tick, source)) = self.next_event() {
            if tick > target {
                break;
            }
            self.elapsed = tick;
            match source {
                Source::Slot { level, slot } => self.process_slot(level, slot, out),
                Source::Overflow => self.process_overflow(out),
            }
        }
        self.elapsed = self.elapsed.max(target);
    }

    /// The earliest Unix millisecond at which an advance may fire something. `None` when the
    /// wheel is empty. Exact when the earliest entry is on level 0 (due within the current
    /// 64-tick block); otherwise the start of the higher-level slot it waits in, so a caller
    /// that sleeps until this time wakes at most once per level before the entry fires.
    /// When entries with past deadlines are waiting, it is the wheel's current tick time,
    /// which is not after any `now_ms` already passed in. O(levels).
    pub fn next_deadline(&self) -> Option<u64> {
        if !self.due.is_empty() {
            return Some(self.tick_to_ms(self.elapsed));
        }
        self.next_event().map(|(tick, _)| self.tick_to_ms(tick))
    }

    /// Number of entries waiting to fire.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no entry is waiting.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Rounds a deadline up to a whole tick, so that firing at the tick is never early.
    fn deadline_tick(&self, deadline_ms: u64) -> u64 {
        deadline_ms
            .saturating_sub(self.start_ms)
            .div_ceil(self.tick_ms)
    }

    fn tick_to_ms(&self, tick: u64) -> u64 {
        self.start_ms
            .saturating_add(tick.saturating_mul(self.tick_ms))
    }

    /// Files an entry by its deadline tick relative to `elapsed`; gives it back if it is due
    /// already. Does not touch `len`.
    fn place(&mut self, deadline: u64, value: T) -> Option<T> {
        if deadline <= self.elapsed {
            return Some(value);
        }
        let level = level_for(self.elapsed, deadline);
        if level >= LEVELS {
            self.overflow_min = if self.overflow.is_empty() {
                deadline
            } else {
                self.overflow_min.min(deadline)
            };
            self.overflow.push((deadline, value));
            return None;
        }
        let shift = SLOT_BITS * level as u32;
        let slot = ((deadline >> shift) & SLOT_MASK) as usize;
        // The offset keeps only the digits below `level`: at most 30 bits (checked above).
        let offset = (deadline & ((1u64 << shift) - 1)) as u32;
        let lvl = &mut self.levels[level];
        lvl.occupied |= 1 << slot;
        lvl.slots[slot].push(Entry { offset, value });
        None
    }

    /// The tick of the earliest occupied slot, or of the overflow re-insertion.
    ///
    /// Level `l`'s slots all start inside the current level-`l + 1` slot, and every occupied
    /// slot of a higher level starts after it, so the first occupied level holds the minimum.
    fn next_event(&self) -> Option<(u64, Source)> {
        for (level, lvl) in self.levels.iter().enumerate() {
            if lvl.occupied == 0 {
                continue;
            }
            let shift = SLOT_BITS * level as u32;
            let slot = lvl.occupied.trailing_zeros();
            debug_assert!(u64::from(slot) > (self.elapsed >> shift) & SLOT_MASK);
            let parent_start = self.elapsed & !((1u64 << (shift + SLOT_BITS)) - 1);
            let tick = parent_start + (u64::from(slot) << shift);
            return Some((
                tick,
                Source::Slot {
                    level,
                    slot: slot as usize,
                },
            ));
        }
        if self.overflow.is_empty() {
            return None;
        }
        Some((self.overflow_min & !(SPAN_TICKS - 1), Source::Overflow))
    }

    /// Empties the slot that starts at `elapsed`: level 0 fires, higher levels move down.
    fn process_slot(&mut self, level: usize, slot: usize, out: &mut Vec<T>) {
        let lvl = &mut self.levels[level];
        lvl.occupied &= !(1 << slot);
        let mut entries = std::mem::take(&mut lvl.slots[slot]);
        if level == 0 {
            self.len -= entries.len();
            out.extend(entries.drain(..).map(|e| e.value));
        } else {
            for e in entries.drain(..) {
                // `elapsed` is this slot's start and the offset is below one slot's width, so
                // the deadline stays inside this slot and lands on a lower level (or is due).
                let deadline = self.elapsed + u64::from(e.offset);
                if let Some(value) = self.place(deadline, e.value) {
                    self.len -= 1;
                    out.push(value);
                }
            }
        }
        if entries.capacity() <= RETAIN_SLOT_CAPACITY {
            self.levels[level].slots[slot] = entries;
        }
    }

    /// Time has reached the span holding the earliest overflow entry: re-file every overflow
    /// entry, which puts those of this span into the levels and the rest back in overflow.
    fn process_overflow(&mut self, out: &mut Vec<T>) {
        let pending = std::mem::take(&mut self.overflow);
        for (deadline, value) in pending {
            if let Some(value) = self.place(deadline, value) {
                self.len -= 1;
                out.push(value);
            }
        }
    }
}

impl<T> fmt::Debug for TimerWheel<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimerWheel")
            .field("tick_ms", &self.tick_ms)
            .field("start_ms", &self.start_ms)
            .field("elapsed_ticks", &self.elapsed)
            .field("len", &self.len)
            .field("overflow", &self.overflow.len())
            .finish_non_exhaustive()
    }
}

/// The level at which a deadline tick after `elapsed` belongs: the index of the highest base-64
/// digit in which the two differ. `LEVELS` or more means overflow.
fn level_for(elapsed: u64, deadline: u64) -> usize {
    let masked = (elapsed ^ deadline) | SLOT_MASK;
    let highest_bit = u64::BITS - 1 - masked.leading_zeros();
    (highest_bit / SLOT_BITS) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const DAY_MS: u64 = 86_400_000;
    /// Unix ms used as the wheel start (2023-11-14T22:13:20Z).
    const T0: u64 = 1_700_000_000_000;

    /// A small deterministic generator so the big test needs no dependency.
    struct SplitMix(u64);
    impl SplitMix {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn fire(w: &mut TimerWheel<u64>, now: u64) -> Vec<u64> {
        let mut out = Vec::new();
        w.advance(now, &mut out);
        out
    }

    #[test]
    fn entries_are_small() {
        assert_eq!(std::mem::size_of::<Entry<u32>>(), 8);
    }

    #[test]
    fn level_table() {
        // (elapsed, deadline, level)
        let table: &[(u64, u64, usize)] = &[
            (0, 1, 0),
            (0, 63, 0),
            (0, 64, 1),
            (63, 64, 1),
            (64, 127, 0),
            (100, 128, 1),
            (0, 4095, 1),
            (0, 4096, 2),
            (4095, 4096, 2),
            (0, SPAN_TICKS - 1, LEVELS - 1),
            (0, SPAN_TICKS, LEVELS),
            (SPAN_TICKS - 1, SPAN_TICKS, LEVELS),
            (0, u64::MAX, 10),
        ];
        for &(elapsed, deadline, want) in table {
            assert_eq!(
                level_for(elapsed, deadline),
                want,
                "{elapsed} -> {deadline}"
            );
        }
    }

    #[test]
    fn fires_on_tick_boundary_never_early() {
        let mut w = TimerWheel::new(100, T0);
        w.insert(T0 + 150, 1);
        w.insert(T0 + 200, 2);
        w.insert(T0 + 201, 3);
        assert_eq!(w.next_deadline(), Some(T0 + 200));
        assert_eq!(fire(&mut w, T0 + 149), Vec::<u64>::new());
        assert_eq!(fire(&mut w, T0 + 150), Vec::<u64>::new()); // mid-tick: waits for 200
        assert_eq!(fire(&mut w, T0 + 199), Vec::<u64>::new());
        let mut got = fire(&mut w, T0 + 200);
        got.sort_unstable();
        assert_eq!(got, vec![1, 2]);
        assert_eq!(w.next_deadline(), Some(T0 + 300));
        assert_eq!(fire(&mut w, T0 + 299), Vec::<u64>::new());
        assert_eq!(fire(&mut w, T0 + 300), vec![3]);
        assert!(w.is_empty());
        assert_eq!(w.next_deadline(), None);
    }

    #[test]
    fn order_across_levels_in_one_jump_and_in_steps() {
        // Deadlines (in ticks) chosen to start on every level and at level boundaries.
        let ticks: Vec<u64> = vec![
            5 * 864_000, // 5 days
            1,
            64,
            63,
            4096,
            4095,
            262_144,
            65,
            16_777_216,
            16_777_215,
            1_000_000,
            2,
            SPAN_TICKS - 1,
        ];
        let mut w = TimerWheel::new(100, T0);
        for &t in &ticks {
            w.insert(T0 + t * 100, t);
        }
        assert_eq!(w.len(), ticks.len());
        let got = fire(&mut w, T0 + SPAN_TICKS * 100);
        let mut want = ticks.clone();
        want.sort_unstable();
        assert_eq!(got, want);
        assert!(w.is_empty());

        // The same entries, visited by sleeping until next_deadline each time.
        let mut w = TimerWheel::new(100, T0);
        for &t in &ticks {
            w.insert(T0 + t * 100 - 50, t);
        }
        let mut fired = Vec::new();
        let mut wakeups = 0;
        while let Some(at) = w.next_deadline() {
            wakeups += 1;
            for t in fire(&mut w, at) {
                assert_eq!(
                    at,
                    T0 + t * 100,
                    "fired at the tick its deadline rounds up to"
                );
                fired.push(t);
            }
        }
        assert_eq!(fired, want);
        // Each wake-up fires something or cascades one occupied slot: bounded by entries x levels.
        assert!(wakeups <= ticks.len() * LEVELS, "{wakeups} wake-ups");
    }

    #[test]
    fn days_in_one_advance() {
        let mut w = TimerWheel::new(100, T0);
        let mut rng = SplitMix(7);
        for i in 0..10_000u64 {
            w.insert(T0 + rng.below(5 * DAY_MS), i);
        }
        let first = fire(&mut w, T0 + 5 * DAY_MS - 1).len();
        assert!(first > 9_900);
        assert_eq!(first + w.len(), 10_000);
        assert_eq!(fire(&mut w, T0 + 10 * DAY_MS).len(), 10_000 - first);
        assert!(w.is_empty());

        // A jump that lands mid-way through occupied higher-level slots keeps the rest.
        let mut w = TimerWheel::new(100, T0);
        for day in 1..=9u64 {
            w.insert(T0 + day * DAY_MS, day);
        }
        assert_eq!(fire(&mut w, T0 + 4 * DAY_MS + 1), vec![1, 2, 3, 4]);
        assert_eq!(w.len(), 5);
        assert_eq!(fire(&mut w, T0 + 9 * DAY_MS), vec![5, 6, 7, 8, 9]);
    }

    #[test]
    fn past_deadlines_fire_at_next_advance() {
        let mut w = TimerWheel::new(100, T0);
        w.insert(0, 1); // before the wheel's start
        w.insert(T0, 2); // exactly at tick 0
        assert_eq!(w.next_deadline(), Some(T0));
        assert_eq!(fire(&mut w, 0), vec![1, 2]); // whatever `now` says
        fire(&mut w, T0 + 1_000);
        w.insert(T0 + 500, 3);
        w.insert(T0 + 1_000, 4);
        w.insert(T0 + 1_001, 5); // next tick: not past
        assert_eq!(w.next_deadline(), Some(T0 + 1_000));
        assert_eq!(fire(&mut w, T0 + 900), vec![3, 4]); // time going back moves nothing back
        assert_eq!(fire(&mut w, T0 + 1_099), Vec::<u64>::new());
        assert_eq!(fire(&mut w, T0 + 1_100), vec![5]);
    }

    #[test]
    fn zero_tick_is_one_millisecond() {
        let mut w = TimerWheel::new(0, 10);
        w.insert(15, 1);
        assert_eq!(fire(&mut w, 14), Vec::<u64>::new());
        assert_eq!(fire(&mut w, 15), vec![1]);
    }

    #[test]
    fn overflow_beyond_the_horizon() {
        let span = SPAN_TICKS; // in ms, with a 1 ms tick
        let mut w = TimerWheel::new(1, 0);
        w.insert(3 * span + 7, 3);
        w.insert(span + 5, 1);
        w.insert(u64::MAX, 9);
        w.insert(span - 1, 0);
        w.insert(2 * span, 2);
        // span - 1 sits in the last top-level slot: the wake-up is that slot's start.
        assert_eq!(w.next_deadline(), Some(span - span / 64));
        assert_eq!(fire(&mut w, span - 2), Vec::<u64>::new());
        assert_eq!(w.next_deadline(), Some(span - 1));
        assert_eq!(fire(&mut w, span - 1), vec![0]);
        // The overflow wake-up is the start of the span holding the earliest overflow entry.
        assert_eq!(w.next_deadline(), Some(span));
        assert_eq!(fire(&mut w, span + 4), Vec::<u64>::new());
        assert_eq!(w.next_deadline(), Some(span + 5));
        assert_eq!(fire(&mut w, span + 5), vec![1]);
        assert_eq!(fire(&mut w, 2 * span - 1), Vec::<u64>::new());
        assert_eq!(fire(&mut w, 2 * span), vec![2]);
        assert_eq!(fire(&mut w, 10 * span), vec![3]);
        assert_eq!(w.len(), 1);
        assert_eq!(fire(&mut w, u64::MAX - 1), Vec::<u64>::new());
        assert_eq!(fire(&mut w, u64::MAX), vec![9]);
        assert!(w.is_empty());

        // Near the end of a span even a close deadline overflows, and still fires on time.
        let mut w = TimerWheel::new(1, 0);
        fire(&mut w, span - 2);
        w.insert(span + 1, 1);
        assert_eq!(w.overflow.len(), 1);
        assert_eq!(fire(&mut w, span), Vec::<u64>::new());
        assert_eq!(fire(&mut w, span + 1), vec![1]);
    }

    #[test]
    fn end_of_time_saturates() {
        // The last partial tick before u64::MAX rounds up past the last whole tick.
        let start = 5;
        let mut w = TimerWheel::new(100, start);
        w.insert(u64::MAX, 1);
        w.insert(u64::MAX - 3, 2);
        w.insert(u64::MAX - 100, 3);
        assert_eq!(fire(&mut w, u64::MAX - 101), Vec::<u64>::new());
        assert_eq!(fire(&mut w, u64::MAX - 1), vec![3]);
        assert_eq!(w.next_deadline(), Some(u64::MAX));
        let mut got = fire(&mut w, u64::MAX);
        got.sort_unstable();
        assert_eq!(got, vec![1, 2]);
        w.insert(u64::MAX, 4);
        assert_eq!(fire(&mut w, u64::MAX), vec![4]);
    }

    #[test]
    fn drained_slots_keep_small_buffers_only() {
        let mut w = TimerWheel::new(1, 0);
        for i in 0..5_000 {
            w.insert(1, i);
            w.insert(2, i);
        }
        for i in 0..10 {
            w.insert(3, i);
        }
        assert_eq!(fire(&mut w, 3).len(), 10_010);
        assert_eq!(w.levels[0].slots[1].capacity(), 0);
        assert!(w.levels[0].slots[3].capacity() >= 10);
        for i in 0..5_000 {
            w.insert(0, i); // overdue: goes to `due`
        }
        assert_eq!(fire(&mut w, 4).len(), 5_000);
        assert_eq!(w.due.capacity(), 0);
    }

    /// One million random deadlines over five days, advanced in random steps: each fires
    /// exactly once, never early and less than one tick after the first advance that could
    /// fire it.
    #[test]
    fn one_million_entries_fire_exactly_once() {
        const N: usize = 1_000_000;
        let mut rng = SplitMix(42);
        let mut w = TimerWheel::new(DEFAULT_TICK_MS, T0);
        let deadlines: Vec<u64> = (0..N).map(|_| T0 + rng.below(5 * DAY_MS)).collect();
        for (i, &d) in deadlines.iter().enumerate() {
            w.insert(d, i as u32);
        }
        assert_eq!(w.len(), N);
        let mut seen = vec![false; N];
        let mut out = Vec::new();
        let mut now = T0;
        let mut fired = 0;
        while !w.is_empty() {
            let prev = now;
            now += rng.below(20 * 60_000);
            w.advance(now, &mut out);
            for i in out.drain(..) {
                let d = deadlines[i as usize];
                assert!(
                    !std::mem::replace(&mut seen[i as usize], true),
                    "{i} fired twice"
                );
                assert!(d <= now, "{i} early: deadline {d} now {now}");
                let rounded = T0 + (d - T0).div_ceil(DEFAULT_TICK_MS) * DEFAULT_TICK_MS;
                assert!(prev < rounded, "{i} late: deadline {d} was due at {prev}");
                fired += 1;
            }
        }
        assert_eq!(fired, N);
        assert!(now < T0 + 5 * DAY_MS + 20 * 60_000);
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// Insert at `now + delta` (`delta` may be negative: a past deadline).
        Insert(i64),
        /// Advance by this many ms.
        Advance(u64),
        /// Advance exactly to `next_deadline()`.
        Sleep,
    }

    fn arb_op(tick: u64) -> impl Strategy<Value = Op> {
        let far = (SPAN_TICKS * tick) as i64;
        prop_oneof![
            4 => (-1_000i64..10_000).prop_map(Op::Insert),
            2 => (0..far * 2).prop_map(Op::Insert),
            1 => prop_oneof![Just(far - 1), Just(far), Just(far + 1)].prop_map(Op::Insert),
            3 => (0u64..5_000).prop_map(Op::Advance),
            1 => (0..(far as u64) * 2).prop_map(Op::Advance),
            2 => Just(Op::Sleep),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// The wheel fires exactly what a naive list model fires at every advance, in
        /// non-decreasing tick order, and `next_deadline` never overshoots the model's next fire.
        #[test]
        fn matches_a_naive_model(
            (tick, ops) in prop_oneof![Just(1u64), Just(7), Just(100)]
                .prop_flat_map(|tick| (Just(tick), prop::collection::vec(arb_op(tick), 1..400))),
            start in 0u64..1_000_000,
        ) {
            let mut w = TimerWheel::new(tick, start);
            // (deadline tick, id) pending in the model; `elapsed` mirrors the wheel's contract.
            let mut model: Vec<(u64, u32)> = Vec::new();
            let mut elapsed = 0u64;
            let mut now = start;
            let mut next_id = 0u32;
            let ceil_tick = |d: u64| d.saturating_sub(start).div_ceil(tick);
            for op in ops {
                let target_now = match op {
                    Op::Insert(delta) => {
                        let d = now.saturating_add_signed(delta);
                        w.insert(d, next_id);
                        model.push((ceil_tick(d), next_id));
                        next_id += 1;
                        prop_assert_eq!(w.len(), model.len());
                        continue;
                    }
                    Op::Advance(by) => now.saturating_add(by),
                    Op::Sleep => match w.next_deadline() {
                        Some(t) => t.max(now),
                        None => continue,
                    },
                };
                // next_deadline is a lower bound on the model's earliest fire time.
                if let Some(first) = model.iter().map(|&(t, _)| t.max(elapsed)).min() {
                    let nd = w.next_deadline().unwrap();
                    prop_assert!(nd <= start + first * tick, "next_deadline {} too late", nd);
                }
                now = target_now;
                let before = elapsed;
                elapsed = elapsed.max((now - start) / tick);
                let mut want: Vec<(u64, u32)> =
                    model.iter().copied().filter(|&(t, _)| t <= elapsed).collect();
                model.retain(|&(t, _)| t > elapsed);
                let mut out = Vec::new();
                w.advance(now, &mut out);
                // Past deadlines count as due at the tick the wheel had already reached.
                let tick_of = |id: u32| {
                    want.iter().find(|&&(_, i)| i == id).map(|&(t, _)| t.max(before))
                };
                let got_ticks: Vec<Option<u64>> = out.iter().map(|&id| tick_of(id)).collect();
                prop_assert!(got_ticks.iter().all(Option::is_some), "fired unexpected entries");
                prop_assert!(got_ticks.windows(2).all(|p| p[0] <= p[1]), "out of order");
                let mut got = out.clone();
                got.sort_unstable();
                want.sort_unstable_by_key(|&(_, id)| id);
                prop_assert_eq!(got, want.iter().map(|&(_, id)| id).collect::<Vec<_>>());
                prop_assert_eq!(w.len(), model.len());
            }
        }

        /// Random deadlines around a random start all fire exactly once, never early.
        #[test]
        fn random_entries_fire_exactly_once(
            deadlines in prop::collection::vec(0u64..30 * DAY_MS, 0..2_000),
            steps in prop::collection::vec(1u64..DAY_MS, 1..50),
        ) {
            let mut w = TimerWheel::new(DEFAULT_TICK_MS, T0);
            for (i, &d) in deadlines.iter().enumerate() {
                w.insert(T0 - DAY_MS + d, i);
            }
            let mut seen = vec![0u8; deadlines.len()];
            let mut out = Vec::new();
            let mut now = T0;
            for by in steps.iter().cycle().take(10_000) {
                if w.is_empty() {
                    break;
                }
                now += by;
                w.advance(now, &mut out);
                for i in out.drain(..) {
                    prop_assert!(T0 - DAY_MS + deadlines[i] <= now);
                    seen[i] += 1;
                }
            }
            prop_assert!(seen.iter().all(|&n| n == 1));
        }
    }
}
