//! Time helpers shared by every layer, and the [`Clock`] that layers above the pure cores are
//! handed instead of reading the time themselves. Only [`SystemClock`] reads the real clock.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 for a time before it).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Where a layer gets the time: the wall clock for what is recorded and compared with stored
/// times, the monotonic clock for timers and rates.
pub trait Clock {
    /// The wall-clock time.
    fn now(&self) -> SystemTime;
    /// The monotonic time.
    fn monotonic(&self) -> Instant;
}

/// The real clocks.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn monotonic(&self) -> Instant {
        Instant::now()
    }
}
