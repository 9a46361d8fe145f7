//! A balancer's PROXY header is parsed before anything else on the connection: any bytes give
//! an answer (more, a header that fits them, or a reason), never a panic; and when the bytes
//! hold a complete header, the bytes after it change nothing and every shorter prefix asks for
//! more.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ringmta::net::proxy::{Parsed, parse};

fuzz_target!(|data: &[u8]| {
    let whole = parse(data);
    if let Ok(Parsed::Complete(header, len)) = whole {
        assert!(len <= data.len());
        // The header ends where it ends: bytes after it change nothing.
        assert_eq!(parse(&data[..len]), Ok(Parsed::Complete(header, len)));
        for cut in 0..len {
            assert_eq!(parse(&data[..cut]), Ok(Parsed::Incomplete), "cut at {cut}");
        }
    }
});
