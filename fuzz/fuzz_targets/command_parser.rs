//! Any line: the command parser returns a command or an error, never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ringmta::smtp::Command::parse(data);
});
