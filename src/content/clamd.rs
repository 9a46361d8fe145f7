//! Malware scanning through clamd's `INSTREAM` command (clamd(8)).
//!
//! The protocol half is pure: [`InstreamEncoder`] frames a message as `zINSTREAM\0`, chunks of
//! `[u32 big-endian length][bytes]` and a zero-length terminator, and [`parse_reply`] turns the
//! NUL-terminated reply into a [`ScanVerdict`] or a [`ReplyError`]. [`clamd_scan`] is the only
//! function here that does I/O.
//!
//! This module must never block the thread: sockets are tokio-uring's, connecting included, and
//! one deadline bounds the whole exchange, so a slow or hung clamd delays only the session that
//! waits on it. It never holds more than [`MAX_REPLY`] bytes of reply or one chunk of request.
//! On a timeout the socket is shut down before it is dropped: tokio-uring does not cancel
//! in-flight operations, and without the shutdown a read that clamd never answers would keep
//! the socket (and its buffer) alive until clamd closed it.
//!
//! The error types and the connection are in `scanner`, shared with `rspamd`.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::time::Instant;

use super::scanner::{ReplyError, ScanConn, ScanError, Status, printable, within};

/// Bytes of message per `INSTREAM` chunk. clamd accepts any chunk up to its `StreamMaxLength`;
/// 64 KiB keeps the request buffer small while a typical message still goes in one write.
pub const CHUNK_SIZE: usize = 64 * 1024;

/// Longest clamd reply accepted, NUL included. Replies are one line naming at most one
/// signature.
pub const MAX_REPLY: usize = 4096;

/// The command that opens a stream scan. The `z` prefix asks for NUL-terminated replies
/// (clamd(8), "COMMANDS").
pub const INSTREAM_COMMAND: &[u8] = b"zINSTREAM\0";

/// Where clamd listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClamdAddr {
    /// A local socket (clamd.conf `LocalSocket`).
    Unix(PathBuf),
    /// A TCP socket (clamd.conf `TCPSocket`/`TCPAddr`).
    Tcp(SocketAddr),
}

impl ClamdAddr {
    /// Parses `unix:/path/to/clamd.sock`, `127.0.0.1:3310` or `[::1]:3310`. Host names are not
    /// accepted: resolving them would block.
    pub fn parse(s: &str) -> Result<ClamdAddr, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(format!("clamd address {s:?} has an empty socket path"));
            }
            return Ok(ClamdAddr::Unix(PathBuf::from(path)));
        }
        s.parse::<SocketAddr>().map(ClamdAddr::Tcp).map_err(|_| {
            format!("clamd address {s:?} is neither unix:/path nor an ip:port socket address")
        })
    }
}

impl fmt::Display for ClamdAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClamdAddr::Unix(path) => write!(f, "unix:{}", path.display()),
            ClamdAddr::Tcp(addr) => write!(f, "{addr}"),
        }
    }
}

/// What clamd found in a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanVerdict {
    /// No signature matched.
    Clean,
    /// A signature matched; its name, as clamd reported it (bytes outside printable ASCII are
    /// replaced by `?`).
    Infected(String),
}

/// Frames a message for `INSTREAM`, one write's worth at a time.
///
/// The first piece carries the command, and the piece with the last data chunk also carries
/// the zero-length terminator, so a message up to [`CHUNK_SIZE`] goes in a single write.
#[derive(Debug)]
pub struct InstreamEncoder<'a> {
    message: &'a [u8],
    /// Bytes per chunk; 1 ..= u32::MAX so that a chunk length always fits its prefix.
    chunk_size: usize,
    /// Bytes of `message` already framed; `pos <= message.len()`.
    pos: usize,
    state: EncoderState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EncoderState {
    AwaitingCommand,
    SendingChunks,
    Done,
}

impl<'a> InstreamEncoder<'a> {
    /// An encoder for `message` in chunks of `chunk_size` bytes (clamped to 1 ..= u32::MAX).
    pub fn new(message: &'a [u8], chunk_size: usize) -> Self {
        debug_assert!(chunk_size > 0, "chunk size must be positive");
        let max = usize::try_from(u32::MAX).unwrap_or(usize::MAX);
        InstreamEncoder {
            message,
            chunk_size: chunk_size.clamp(1, max),
            pos: 0,
            state: EncoderState::AwaitingCommand,
        }
    }

    /// Appends the next piece of the request to `out`: at most one data chunk, preceded by the
    /// command on the first call and followed by the terminator on the last. Returns `false`,
    /// appending nothing, once the whole request has been produced.
    pub fn encode_next(&mut self, out: &mut Vec<u8>) -> bool {
        match self.state {
            EncoderState::Done => return false,
            EncoderState::AwaitingCommand => {
                out.extend_from_slice(INSTREAM_COMMAND);
                self.state = EncoderState::SendingChunks;
            }
            EncoderState::SendingChunks => {}
        }
        let rest = &self.message[self.pos..];
        let chunk = &rest[..rest.len().min(self.chunk_size)];
        if !chunk.is_empty() {
            // Fits: chunk_size <= u32::MAX (see `new`).
            let len = u32::try_from(chunk.len()).unwrap_or(u32::MAX);
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(chunk);
            self.pos += chunk.len();
        }
        if self.pos == self.message.len() {
            out.extend_from_slice(&0u32.to_be_bytes());
            self.state = EncoderState::Done;
        }
        true
    }
}

/// Parses the reply bytes received so far; `eof` says the connection has closed.
///
/// With the `z` command prefix every reply ends in NUL, so bytes without one are `Partial`
/// until EOF, where they are `Truncated`. Forms (clamd(8), "INSTREAM"): `stream: OK`,
/// `stream: NAME FOUND` and `TEXT ERROR`, of which `INSTREAM size limit exceeded. ERROR` is
/// [`ReplyError::SizeLimit`].
pub fn parse_reply(buf: &[u8], eof: bool) -> Result<Status<ScanVerdict>, ReplyError> {
    let Some(end) = memchr::memchr(0, buf) else {
        if buf.len() >= MAX_REPLY {
            return Err(ReplyError::TooLong { limit: MAX_REPLY });
        }
        if eof {
            return Err(ReplyError::Truncated);
        }
        return Ok(Status::Partial);
    };
    if end >= MAX_REPLY {
        return Err(ReplyError::TooLong { limit: MAX_REPLY });
    }
    parse_reply_line(&buf[..end]).map(Status::Complete)
}

fn parse_reply_line(line: &[u8]) -> Result<ScanVerdict, ReplyError> {
    if line == b"stream: OK" {
        return Ok(ScanVerdict::Clean);
    }
    if let Some(name) = line
        .strip_prefix(b"stream: ")
        .and_then(|rest| rest.strip_suffix(b" FOUND"))
        .filter(|name| !name.is_empty())
    {
        return Ok(ScanVerdict::Infected(printable(name)));
    }
    if let Some(text) = line.strip_suffix(b" ERROR") {
        if memchr::memmem::find(text, b"size limit exceeded").is_some() {
            return Err(ReplyError::SizeLimit);
        }
        return Err(ReplyError::ScannerError(printable(text)));
    }
    Err(ReplyError::Unexpected(printable(line)))
}

/// Scans `message` with clamd at `addr`, all within `timeout` (connecting included).
///
/// When clamd closes the connection while the stream is still being written (it does so
/// after replying `INSTREAM size limit exceeded. ERROR`), its reply is read and reported as
/// the error rather than the broken pipe.
pub async fn clamd_scan(
    addr: &ClamdAddr,
    message: &[u8],
    timeout: Duration,
) -> Result<ScanVerdict, ScanError> {
    let deadline = Instant::now() + timeout;
    let connect = async {
        match addr {
            ClamdAddr::Unix(path) => ScanConn::connect_unix(path).await,
            ClamdAddr::Tcp(addr) => ScanConn::connect_tcp(*addr).await,
        }
    };
    let conn = match tokio::time::timeout_at(deadline, connect).await {
        Ok(conn) => conn?,
        Err(_) => return Err(ScanError::Timeout),
    };
    within(&conn, deadline, instream(&conn, message)).await
}

async fn instream(conn: &ScanConn, message: &[u8]) -> Result<ScanVerdict, ScanError> {
    let mut encoder = InstreamEncoder::new(message, CHUNK_SIZE);
    let mut out = Vec::with_capacity(INSTREAM_COMMAND.len() + CHUNK_SIZE + 8);
    while encoder.encode_next(&mut out) {
        let (written, buf) = conn.write_all(out).await;
        out = buf;
        out.clear();
        if let Err(e) = written {
            return match read_clamd_reply(conn).await {
                Err(ScanError::Protocol(reply)) => Err(ScanError::Protocol(reply)),
                _ => Err(ScanError::Io(e)),
            };
        }
    }
    read_clamd_reply(conn).await
}

async fn read_clamd_reply(conn: &ScanConn) -> Result<ScanVerdict, ScanError> {
    let mut buf = Vec::with_capacity(256);
    loop {
        let (n, returned) = conn.read_append(buf, MAX_REPLY).await;
        buf = returned;
        let eof = n? == 0;
        if let Status::Complete(verdict) = parse_reply(&buf, eof)? {
            return Ok(verdict);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::scanner::test_support::{closed_port, fake_server, start_scanner};
    use super::*;

    const TEST_SIGNATURE: &[u8] = b"RINGMTA-CLAMD-TEST-SIGNATURE-7F3A";

    fn encode_all(message: &[u8], chunk_size: usize) -> (Vec<u8>, usize) {
        let mut encoder = InstreamEncoder::new(message, chunk_size);
        let mut all = Vec::new();
        let mut writes = 0;
        let mut piece = Vec::new();
        while encoder.encode_next(&mut piece) {
            assert!(piece.len() <= INSTREAM_COMMAND.len() + 4 + chunk_size + 4);
            all.append(&mut piece);
            writes += 1;
        }
        assert!(!encoder.encode_next(&mut piece), "done stays done");
        assert!(piece.is_empty());
        (all, writes)
    }

    /// Decodes an INSTREAM request the way clamd does.
    fn decode_instream(mut bytes: &[u8]) -> Vec<u8> {
        bytes = bytes.strip_prefix(INSTREAM_COMMAND).expect("command");
        let mut message = Vec::new();
        loop {
            let (len, rest) = bytes.split_at(4);
            let len = u32::from_be_bytes(len.try_into().unwrap()) as usize;
            if len == 0 {
                assert!(rest.is_empty(), "bytes after the terminator");
                return message;
            }
            message.extend_from_slice(&rest[..len]);
            bytes = &rest[len..];
        }
    }

    #[test]
    fn encoder_frames_exactly() {
        let (bytes, writes) = encode_all(b"", 4);
        assert_eq!(bytes, b"zINSTREAM\0\0\0\0\0");
        assert_eq!(writes, 1);

        let (bytes, writes) = encode_all(b"abc", 4);
        assert_eq!(bytes, b"zINSTREAM\0\0\0\0\x03abc\0\0\0\0");
        assert_eq!(writes, 1);

        let (bytes, writes) = encode_all(b"abcdefghij", 4);
        assert_eq!(
            bytes,
            b"zINSTREAM\0\0\0\0\x04abcd\0\0\0\x04efgh\0\0\0\x02ij\0\0\0\0"
        );
        assert_eq!(writes, 3);

        // An exact multiple: the terminator rides with the last chunk, no empty chunk.
        let (bytes, writes) = encode_all(b"abcdefgh", 4);
        assert_eq!(bytes, b"zINSTREAM\0\0\0\0\x04abcd\0\0\0\x04efgh\0\0\0\0");
        assert_eq!(writes, 2);
    }

    #[test]
    fn encoder_round_trips_at_any_chunk_size() {
        let message: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 256) as u8).collect();
        for chunk in [1, 2, 3, 7, 64, 999, 1000, 1001, CHUNK_SIZE] {
            let (bytes, writes) = encode_all(&message, chunk);
            assert_eq!(decode_instream(&bytes), message, "chunk size {chunk}");
            assert_eq!(writes, message.len().div_ceil(chunk), "chunk size {chunk}");
        }
    }

    #[test]
    fn reply_table() {
        use ReplyError::*;
        use ScanVerdict::*;
        let cases: &[(&[u8], Result<ScanVerdict, ReplyError>)] = &[
            (b"stream: OK\0", Ok(Clean)),
            (
                b"stream: Eicar-Test-Signature FOUND\0",
                Ok(Infected("Eicar-Test-Signature".into())),
            ),
            // ExtendedDetectionInfo keeps the hash and size in the name.
            (
                b"stream: Win.Test.EICAR_HDB-1(44d88612fea8a8f36de82e1278abb02f:68) FOUND\0",
                Ok(Infected(
                    "Win.Test.EICAR_HDB-1(44d88612fea8a8f36de82e1278abb02f:68)".into(),
                )),
            ),
            (
                b"stream: Bad\r\nName\x01 FOUND\0",
                Ok(Infected("Bad??Name?".into())),
            ),
            (b"INSTREAM size limit exceeded. ERROR\0", Err(SizeLimit)),
            (
                b"stream: Can't allocate memory ERROR\0",
                Err(ScannerError("stream: Can't allocate memory".into())),
            ),
            (
                b"UNKNOWN COMMAND\0",
                Err(Unexpected("UNKNOWN COMMAND".into())),
            ),
            (
                b"stream:  FOUND\0",
                Err(Unexpected("stream:  FOUND".into())),
            ),
            (b"stream: OK\n\0", Err(Unexpected("stream: OK?".into()))),
            (b"\0", Err(Unexpected(String::new()))),
        ];
        for (input, expected) in cases {
            let got = parse_reply(input, false).map(|s| match s {
                Status::Complete(v) => v,
                Status::Partial => panic!("partial for {input:?}"),
            });
            assert_eq!(&got, expected, "input {:?}", String::from_utf8_lossy(input));
            // Whatever follows the NUL is ignored, EOF or not.
            let mut longer = input.to_vec();
            longer.extend_from_slice(b"junk");
            let got = parse_reply(&longer, true).map(|s| match s {
                Status::Complete(v) => v,
                Status::Partial => panic!("partial"),
            });
            assert_eq!(&got, expected);
        }
    }

    #[test]
    fn reply_split_at_every_byte_is_partial_until_the_nul() {
        let reply = b"stream: Ringmta.Test.Signature.UNOFFICIAL FOUND\0";
        for cut in 0..reply.len() {
            assert_eq!(parse_reply(&reply[..cut], false), Ok(Status::Partial));
            assert_eq!(parse_reply(&reply[..cut], true), Err(ReplyError::Truncated));
        }
        assert_eq!(
            parse_reply(reply, false),
            Ok(Status::Complete(ScanVerdict::Infected(
                "Ringmta.Test.Signature.UNOFFICIAL".into()
            )))
        );
    }

    #[test]
    fn reply_is_bounded() {
        let long = vec![b'a'; MAX_REPLY];
        assert_eq!(
            parse_reply(&long, false),
            Err(ReplyError::TooLong { limit: MAX_REPLY })
        );
        let mut long_with_nul = long.clone();
        long_with_nul.push(0);
        assert_eq!(
            parse_reply(&long_with_nul, false),
            Err(ReplyError::TooLong { limit: MAX_REPLY })
        );
        assert_eq!(parse_reply(&long[1..], false), Ok(Status::Partial));
    }

    #[test]
    fn addr_parse_table() {
        assert_eq!(
            ClamdAddr::parse("unix:/run/clamav/clamd.ctl"),
            Ok(ClamdAddr::Unix("/run/clamav/clamd.ctl".into()))
        );
        assert_eq!(
            ClamdAddr::parse("127.0.0.1:3310"),
            Ok(ClamdAddr::Tcp("127.0.0.1:3310".parse().unwrap()))
        );
        assert_eq!(
            ClamdAddr::parse("[::1]:3310"),
            Ok(ClamdAddr::Tcp("[::1]:3310".parse().unwrap()))
        );
        for bad in [
            "unix:",
            "localhost:3310",
            "127.0.0.1",
            "",
            "/run/clamd.sock",
        ] {
            assert!(ClamdAddr::parse(bad).is_err(), "{bad:?}");
        }
        for good in ["unix:/a/b.sock", "10.1.2.3:3310", "[::1]:3310"] {
            assert_eq!(ClamdAddr::parse(good).unwrap().to_string(), good);
        }
    }

    fn instream_complete(request: &[u8]) -> bool {
        request.ends_with(&[0, 0, 0, 0]) && request.len() > INSTREAM_COMMAND.len()
    }

    #[test]
    fn fake_clamd_over_tcp_gets_the_framed_message() {
        let message: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let (addr, seen) = fake_server(
            b"stream: Fake.Sig FOUND\0".to_vec(),
            instream_complete,
            false,
        );
        let verdict = tokio_uring::start(clamd_scan(
            &ClamdAddr::Tcp(addr),
            &message,
            Duration::from_secs(10),
        ));
        assert_eq!(verdict.unwrap(), ScanVerdict::Infected("Fake.Sig".into()));
        let seen = seen.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(decode_instream(&seen.request), message);
        assert!(seen.closed_by_client);
    }

    #[test]
    fn nothing_listening_is_a_quick_io_error() {
        let started = std::time::Instant::now();
        let tcp = tokio_uring::start(clamd_scan(
            &ClamdAddr::Tcp(closed_port()),
            b"x",
            Duration::from_secs(10),
        ));
        assert!(matches!(tcp, Err(ScanError::Io(_))), "{tcp:?}");
        let unix = tokio_uring::start(clamd_scan(
            &ClamdAddr::Unix("/nonexistent/ringmta/clamd.sock".into()),
            b"x",
            Duration::from_secs(10),
        ));
        assert!(matches!(unix, Err(ScanError::Io(_))), "{unix:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn silent_clamd_times_out_and_the_socket_is_released() {
        // Reads the request but never answers.
        let (addr, seen) = fake_server(Vec::new(), |_| false, false);
        let started = std::time::Instant::now();
        let result = tokio_uring::start(clamd_scan(
            &ClamdAddr::Tcp(addr),
            b"Subject: hi\r\n\r\nhello\r\n",
            Duration::from_millis(300),
        ));
        let elapsed = started.elapsed();
        assert!(matches!(result, Err(ScanError::Timeout)), "{result:?}");
        assert!(elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(3));
        let seen = seen.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(seen.closed_by_client, "socket left open after the timeout");
    }

    #[test]
    fn truncated_and_garbage_replies_are_protocol_errors() {
        let cases: [(&[u8], ReplyError); 3] = [
            (b"stream: O", ReplyError::Truncated),
            (b"", ReplyError::Truncated),
            (
                b"HTTP/1.1 200 OK\r\n\r\n\0",
                ReplyError::Unexpected("HTTP/1.1 200 OK????".into()),
            ),
        ];
        for (reply, expected) in cases {
            let (addr, _seen) = fake_server(reply.to_vec(), instream_complete, true);
            let result = tokio_uring::start(clamd_scan(
                &ClamdAddr::Tcp(addr),
                b"x",
                Duration::from_secs(5),
            ));
            match result {
                Err(ScanError::Protocol(e)) => assert_eq!(e, expected),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn real_clamd() {
        let Some(scanner) = start_scanner("clamd") else {
            return;
        };
        let addr = ClamdAddr::parse(&scanner.addr).expect("address from scanners.sh");
        assert!(matches!(addr, ClamdAddr::Unix(_)));
        let timeout = Duration::from_secs(30);
        tokio_uring::start(async {
            let clean = b"From: a@example.com\r\nSubject: hello\r\n\r\nNothing to see.\r\n";
            assert_eq!(
                clamd_scan(&addr, clean, timeout).await.unwrap(),
                ScanVerdict::Clean
            );

            let mut infected = b"From: a@example.com\r\nSubject: hello\r\n\r\n".to_vec();
            infected.extend_from_slice(TEST_SIGNATURE);
            infected.extend_from_slice(b"\r\n");
            assert_eq!(
                clamd_scan(&addr, &infected, timeout).await.unwrap(),
                ScanVerdict::Infected("Ringmta.Test.Signature.UNOFFICIAL".into())
            );

            // Several chunks, with the signature straddling a chunk boundary.
            let mut big = b"Subject: big\r\n\r\n".to_vec();
            big.resize(CHUNK_SIZE * 3 - 10, b'a');
            big.extend_from_slice(TEST_SIGNATURE);
            big.resize(CHUNK_SIZE * 5, b'b');
            assert_eq!(
                clamd_scan(&addr, &big, timeout).await.unwrap(),
                ScanVerdict::Infected("Ringmta.Test.Signature.UNOFFICIAL".into())
            );

            // scanners.sh sets StreamMaxLength 10M.
            let huge = vec![b'c'; 11 * 1024 * 1024];
            let result = clamd_scan(&addr, &huge, timeout).await;
            assert!(
                matches!(result, Err(ScanError::Protocol(ReplyError::SizeLimit))),
                "{result:?}"
            );
        });
    }
}
