//! Message body transfer: the DATA receiver, BDAT chunk counting and the dot-stuffing encoder.
//!
//! Inbound, the only DATA terminator is CRLF "." CRLF, where the start of the data counts as
//! following a CRLF (RFC 5321 §4.1.1.4). A bare CR or bare LF is stored as CRLF but is not a
//! line start, neither for the terminator nor for un-stuffing, so `\n.\n`, `\n.\r\n` and `\r.\r`
//! never end a message (SMTP smuggling). BDAT payloads get the same CR/LF normalisation.
//!
//! Stored bodies are bounded: once a body would exceed its limit nothing more is stored, the
//! rest is consumed and counted, and the caller rejects the message at its end. No I/O here.

/// The outcome of feeding bytes to a receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// The body ended; the first `n` bytes of the input were consumed (terminator included).
    Complete(usize),
    /// All input was consumed and more is needed.
    Partial,
}

/// Where the normaliser stands between bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LineState {
    /// Just after CRLF (or at the start of DATA): a "." here is a stuffed or terminating dot.
    LineStart,
    /// Inside a line, including just after a bare CR or LF.
    Middle,
    /// After a CR whose meaning depends on the next byte.
    Cr,
    /// After a "." at a line start.
    Dot,
    /// After "." CR at a line start.
    DotCr,
}

/// What a body buffer reserves at its first bytes.
const INITIAL_BODY_CAPACITY: usize = 4096;

/// A size-bounded body buffer.
#[derive(Clone, Debug, Default)]
struct BodySink {
    /// Stored bytes; `body.len() <= max` always holds.
    body: Vec<u8>,
    max: usize,
    /// Set once storing more would pass `max`; then `body` is emptied and stays empty.
    overflow: bool,
}

impl BodySink {
    fn new(max: usize) -> Self {
        BodySink {
            body: Vec::new(),
            max,
            overflow: false,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.overflow {
            return;
        }
        if self.body.len() + bytes.len() > self.max {
            self.overflow = true;
            self.body = Vec::new();
            return;
        }
        if self.body.capacity() == 0 {
            // Start at 4 KiB rather than growing 8, 16, 32, ... bytes at a time: most
            // messages fit, and a large one then doubles from there.
            self.body
                .reserve(bytes.len().max(INITIAL_BODY_CAPACITY).min(self.max));
        }
        self.body.extend_from_slice(bytes);
    }
}

/// Streaming DATA receiver: un-stuffs, normalises line endings and finds the terminator.
#[derive(Clone, Debug)]
pub struct DataReceiver {
    state: LineState,
    sink: BodySink,
}

impl DataReceiver {
    /// A receiver storing at most `max_size` body bytes.
    pub fn new(max_size: usize) -> Self {
        DataReceiver {
            state: LineState::LineStart,
            sink: BodySink::new(max_size),
        }
    }

    /// Consumes `input` up to and including the terminator, if it is there.
    pub fn feed(&mut self, input: &[u8]) -> Status {
        let mut i = 0;
        while i < input.len() {
            if self.state == LineState::Middle {
                // Fast path: copy a run of ordinary bytes at once.
                let run = memchr::memchr2(b'\r', b'\n', &input[i..]).unwrap_or(input.len() - i);
                self.sink.push(&input[i..i + run]);
                i += run;
                if i == input.len() {
                    break;
                }
            }
            let b = input[i];
            i += 1;
            self.state = match (self.state, b) {
                (LineState::DotCr, b'\n') => {
                    self.state = LineState::LineStart;
                    return Status::Complete(i);
                }
                (LineState::LineStart, b'.') => LineState::Dot,
                // RFC 5321 §4.5.2: the leading dot of a line is removed.
                (LineState::Dot, b'\r') => LineState::DotCr,
                (LineState::Dot, _) => self.middle(b),
                (LineState::Cr, b'\n') => {
                    self.sink.push(b"\r\n");
                    LineState::LineStart
                }
                (LineState::Cr | LineState::DotCr, _) => {
                    // The pending CR was bare: store it as CRLF, not a line start.
                    self.sink.push(b"\r\n");
                    self.middle(b)
                }
                (LineState::LineStart | LineState::Middle, _) => self.middle(b),
            };
        }
        Status::Partial
    }

    /// Handles `b` inside a line and returns the next state.
    fn middle(&mut self, b: u8) -> LineState {
        match b {
            b'\r' => LineState::Cr,
            b'\n' => {
                self.sink.push(b"\r\n");
                LineState::Middle
            }
            _ => {
                self.sink.push(&[b]);
                LineState::Middle
            }
        }
    }

    /// Whether the body passed the size limit (and so was not kept).
    pub fn is_oversize(&self) -> bool {
        self.sink.overflow
    }

    /// The stored body; empty if oversize.
    pub fn into_body(self) -> Vec<u8> {
        self.sink.body
    }
}

/// BDAT payload receiver (RFC 3030): counts chunk octets and normalises CR/LF across chunks.
///
/// One receiver lives for the whole transaction; each BDAT command arms it with a chunk size.
#[derive(Clone, Debug)]
pub struct BdatReceiver {
    /// Octets of the current chunk not yet consumed.
    remaining: u64,
    /// True after a CR that may pair with an LF at the start of the next chunk.
    pending_cr: bool,
    sink: BodySink,
}

impl BdatReceiver {
    /// A receiver storing at most `max_size` body bytes.
    pub fn new(max_size: usize) -> Self {
        BdatReceiver {
            remaining: 0,
            pending_cr: false,
            sink: BodySink::new(max_size),
        }
    }

    /// Starts a chunk of `size` octets.
    pub fn start_chunk(&mut self, size: u64) {
        self.remaining = size;
    }

    /// Octets of the current chunk still expected.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Consumes up to the end of the current chunk.
    pub fn feed(&mut self, input: &[u8]) -> Status {
        let take = usize::try_from(self.remaining).map_or(input.len(), |r| r.min(input.len()));
        let data = &input[..take];
        let mut i = 0;
        while i < data.len() {
            if !self.pending_cr {
                // Fast path: copy a run of ordinary bytes at once.
                let run = memchr::memchr2(b'\r', b'\n', &data[i..]).unwrap_or(data.len() - i);
                self.sink.push(&data[i..i + run]);
                i += run;
                if i == data.len() {
                    break;
                }
            }
            let b = data[i];
            i += 1;
            match (self.pending_cr, b) {
                (true, b'\n') => {
                    self.sink.push(b"\r\n");
                    self.pending_cr = false;
                }
                (true, b'\r') => self.sink.push(b"\r\n"),
                (true, _) => {
                    self.sink.push(b"\r\n");
                    self.sink.push(&[b]);
                    self.pending_cr = false;
                }
                (false, b'\r') => self.pending_cr = true,
                (false, b'\n') => self.sink.push(b"\r\n"),
                (false, _) => self.sink.push(&[b]),
            }
        }
        // `take <= remaining`, so this cannot underflow.
        self.remaining -= take as u64;
        if self.remaining == 0 {
            Status::Complete(take)
        } else {
            Status::Partial
        }
    }

    /// Whether the body passed the size limit (and so was not kept).
    pub fn is_oversize(&self) -> bool {
        self.sink.overflow
    }

    /// Ends the message (after BDAT LAST): a trailing bare CR becomes CRLF.
    pub fn finish(mut self) -> Vec<u8> {
        if self.pending_cr {
            self.sink.push(b"\r\n");
        }
        self.sink.body
    }
}

/// Dot-stuffs `body` for DATA and appends the terminator (RFC 5321 §4.5.2).
///
/// Bare CR and LF are sent as CRLF (so no peer can read a terminator we did not mean) and a
/// body not ending in CRLF gets one. Feeding the result to [`DataReceiver`] gives back a
/// CRLF-normalised body unchanged.
pub fn stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 64 + 5);
    let mut stuffer = DotStuffer::new();
    stuffer.push(body, &mut out);
    stuffer.finish(&mut out);
    out
}

/// Streaming form of [`stuff`]: push chunks, then [`DotStuffer::finish`].
#[derive(Clone, Debug)]
pub struct DotStuffer {
    at_line_start: bool,
    pending_cr: bool,
}

impl Default for DotStuffer {
    fn default() -> Self {
        Self::new()
    }
}

impl DotStuffer {
    /// A stuffer at the start of a body.
    pub fn new() -> Self {
        DotStuffer {
            at_line_start: true,
            pending_cr: false,
        }
    }

    /// Appends the stuffed form of `chunk` to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<u8>) {
        out.reserve(chunk.len() + chunk.len() / 64 + 4);
        let mut i = 0;
        while i < chunk.len() {
            if !self.pending_cr && !self.at_line_start {
                // Fast path: a run of ordinary bytes in the middle of a line is copied as is.
                let run = memchr::memchr2(b'\r', b'\n', &chunk[i..]).unwrap_or(chunk.len() - i);
                out.extend_from_slice(&chunk[i..i + run]);
                i += run;
                if i == chunk.len() {
                    break;
                }
            }
            let b = chunk[i];
            i += 1;
            if self.pending_cr {
                self.pending_cr = false;
                out.extend_from_slice(b"\r\n");
                self.at_line_start = true;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\r' => self.pending_cr = true,
                b'\n' => {
                    out.extend_from_slice(b"\r\n");
                    self.at_line_start = true;
                }
                _ => {
                    if self.at_line_start && b == b'.' {
                        out.push(b'.');
                    }
                    out.push(b);
                    self.at_line_start = false;
                }
            }
        }
    }

    /// Ends the body: closes the last line if needed and appends `.` CRLF.
    pub fn finish(self, out: &mut Vec<u8>) {
        if self.pending_cr || !self.at_line_start {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Feeds `input` in one piece; returns (consumed, body) when the terminator was found.
    fn receive(input: &[u8], max: usize) -> Option<(usize, Vec<u8>, bool)> {
        let mut rx = DataReceiver::new(max);
        let Status::Complete(n) = rx.feed(input) else {
            return None;
        };
        let oversize = rx.is_oversize();
        Some((n, rx.into_body(), oversize))
    }

    #[test]
    fn receiver_table() {
        /// Input, then (bytes consumed, stored body) when the terminator is found.
        type Case = (&'static [u8], Option<(usize, &'static [u8])>);
        let cases: &[Case] = &[
            (b".\r\n", Some((3, b""))),
            (b"a\r\n.\r\nMAIL", Some((6, b"a\r\n"))),
            (b"..x\r\n.\r\n", Some((8, b".x\r\n"))),
            (b"a\r\n..\r\n.\r\n", Some((10, b"a\r\n.\r\n"))),
            (b"a\n.\nb\r\n.\r\n", Some((10, b"a\r\n.\r\nb\r\n"))),
            (b"a\n.\r\nb\r\n.\r\n", Some((11, b"a\r\n.\r\nb\r\n"))),
            (b"a\r.\rb\r\n.\r\n", Some((10, b"a\r\n.\r\nb\r\n"))),
            (b"a\r\n.\rb\r\n.\r\n", Some((11, b"a\r\n\r\nb\r\n"))),
            (b"a\r\r\n.\r\n", Some((7, b"a\r\n\r\n"))),
            (b".\n.\r\n", None),
            (b"a\r\n.", None),
            (b"a\r\n.\r", None),
            (b"a\n.\n", None),
            (b"a\r.\r", None),
            (b"", None),
        ];
        for (input, want) in cases {
            let got = receive(input, 1000).map(|(n, body, _)| (n, body));
            let want = want.map(|(n, b)| (n, b.to_vec()));
            assert_eq!(got, want, "input {:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn oversize_body_is_consumed_not_stored() {
        let mut input = vec![b'x'; 100];
        input.extend_from_slice(b"\r\n.\r\nNEXT");
        assert_eq!(receive(&input, 50), Some((105, Vec::new(), true)));
        assert_eq!(receive(&input, 102).map(|r| r.2), Some(false));
        assert_eq!(receive(&input, 101).map(|r| r.2), Some(true));
    }

    #[test]
    fn bdat_counts_and_normalises_across_chunks() {
        let mut rx = BdatReceiver::new(100);
        rx.start_chunk(3);
        assert_eq!(rx.feed(b"a\r"), Status::Partial);
        assert_eq!(rx.remaining(), 1);
        assert_eq!(rx.feed(b"\rMORE"), Status::Complete(1));
        rx.start_chunk(4);
        assert_eq!(rx.feed(b"\nb\nc"), Status::Complete(4));
        rx.start_chunk(1);
        assert_eq!(rx.feed(b"\r"), Status::Complete(1));
        rx.start_chunk(0);
        assert_eq!(rx.feed(b""), Status::Complete(0));
        assert_eq!(rx.finish(), b"a\r\n\r\nb\r\nc\r\n");

        let mut rx = BdatReceiver::new(3);
        rx.start_chunk(4);
        assert_eq!(rx.feed(b"abcd"), Status::Complete(4));
        assert!(rx.is_oversize());
    }

    #[test]
    fn stuffing_table() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"", b".\r\n"),
            (b"a", b"a\r\n.\r\n"),
            (b".a\r\n.\r\n", b"..a\r\n..\r\n.\r\n"),
            (b"a\n.b\r", b"a\r\n..b\r\n.\r\n"),
            (b"a\r.b", b"a\r\n..b\r\n.\r\n"),
        ];
        for (body, want) in cases {
            assert_eq!(
                stuff(body),
                *want,
                "body {:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    fn crlf_body() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec("[.a\\r\\n]{0,6}|\\.|\\.\\.|x", 0..12).prop_map(|lines| {
            let mut body = Vec::new();
            for line in lines {
                let line = line.replace(['\r', '\n'], "");
                body.extend_from_slice(line.as_bytes());
                body.extend_from_slice(b"\r\n");
            }
            body
        })
    }

    proptest! {
        #[test]
        fn stuff_then_receive_is_identity(
            body in crlf_body(),
            split in any::<prop::sample::Index>(),
        ) {
            let mut wire = stuff(&body);
            wire.extend_from_slice(b"NEXT");
            let at = split.index(wire.len());
            let mut rx = DataReceiver::new(usize::MAX);
            let consumed = match rx.feed(&wire[..at]) {
                Status::Complete(n) => n,
                Status::Partial => match rx.feed(&wire[at..]) {
                    Status::Complete(n) => at + n,
                    Status::Partial => panic!("no terminator"),
                },
            };
            prop_assert_eq!(consumed, wire.len() - 4);
            prop_assert_eq!(rx.into_body(), body);
        }

        #[test]
        fn any_chunking_gives_same_body(
            input in prop::collection::vec(prop::sample::select(b".\r\nab".to_vec()), 0..60),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let mut whole = DataReceiver::new(40);
            let want = whole.feed(&input);
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(input.len() + 1)).collect();
            cuts.push(input.len());
            cuts.sort_unstable();
            let mut rx = DataReceiver::new(40);
            let mut pos = 0;
            let mut got = Status::Partial;
            for cut in cuts {
                if cut < pos { continue; }
                if let Status::Complete(n) = rx.feed(&input[pos..cut]) {
                    got = Status::Complete(pos + n);
                    break;
                }
                pos = cut;
            }
            prop_assert_eq!(got, want);
            prop_assert_eq!(rx.is_oversize(), whole.is_oversize());
            prop_assert_eq!(rx.into_body(), whole.into_body());
        }
    }
}
