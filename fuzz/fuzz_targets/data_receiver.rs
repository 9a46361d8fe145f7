//! DATA and BDAT receivers over arbitrary chunking: bounded output, same body whatever the
//! split, and a stuffed body always comes back unchanged (after CRLF normalisation).
#![no_main]
use libfuzzer_sys::fuzz_target;
use ringmta::smtp::{BdatReceiver, DataReceiver, Status, stuff};

fuzz_target!(|input: (Vec<u8>, u8)| {
    let (data, split) = input;
    let max = 4096;
    // One piece.
    let mut a = DataReceiver::new(max);
    let ra = a.feed(&data);
    // Two pieces.
    let cut = (split as usize).min(data.len());
    let mut b = DataReceiver::new(max);
    let rb = match b.feed(&data[..cut]) {
        Status::Complete(n) => Status::Complete(n),
        Status::Partial => match b.feed(&data[cut..]) {
            Status::Complete(n) => Status::Complete(cut + n),
            Status::Partial => Status::Partial,
        },
    };
    assert_eq!(format!("{ra:?}"), format!("{rb:?}"));
    let (ba, bb) = (a.into_body(), b.into_body());
    assert!(ba.len() <= max);
    assert_eq!(ba, bb);
    // Round trip: what we stuff, the receiver returns.
    let wire = stuff(&data);
    let mut c = DataReceiver::new(usize::MAX);
    assert!(matches!(c.feed(&wire), Status::Complete(n) if n == wire.len()));
    let body = c.into_body();
    assert_eq!(stuff(&body), wire);
    // BDAT with the same bytes.
    let mut d = BdatReceiver::new(max);
    d.start_chunk(data.len() as u64);
    let _ = d.feed(&data);
    assert!(d.finish().len() <= max);
});
