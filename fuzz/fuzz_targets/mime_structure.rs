//! Arbitrary bytes through the MIME structure check: no panic, and a passing message is
//! within the limits it was checked against.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ringmta::content::mime::{MimeLimits, check};

fuzz_target!(|data: &[u8]| {
    let Some((&knobs, message)) = data.split_first() else {
        return;
    };
    let limits = MimeLimits {
        max_depth: usize::from(knobs & 0x0f),
        max_parts: usize::from(knobs >> 4) * 4,
    };
    if let Ok(shape) = check(message, limits) {
        assert!(shape.depth <= limits.max_depth && shape.parts <= limits.max_parts);
    }
});
