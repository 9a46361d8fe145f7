//! Any bytes from a next hop: the reply parser completes, asks for more or errs; what it
//! consumed is within the input; an encoded reply parses back to itself.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ringmta::smtp::{Reply, ReplyLimits, ReplyStatus};

fuzz_target!(|data: &[u8]| {
    if let Ok(ReplyStatus::Complete { reply, consumed }) =
        Reply::parse(data, ReplyLimits::default())
    {
        assert!(consumed <= data.len());
        let again = reply.to_bytes();
        if let Ok(ReplyStatus::Complete { reply: back, .. }) =
            Reply::parse(&again, ReplyLimits::default())
        {
            assert_eq!(back.code, reply.code);
        }
    }
});
