//! Spam scanning through rspamd's HTTP protocol (`POST /checkv2`, rspamd's "protocol" docs).
//!
//! The protocol half is pure: [`encode_request_head`] builds the request head with the
//! envelope in rspamd's headers, [`parse_response`] (in `http1`) reads the HTTP/1.1 response and
//! [`parse_check_reply`] its JSON, and [`spam_headers`] renders a result as header fields.
//! [`rspamd_check`] is the only function here that does I/O.
//!
//! This module must never block the thread (tokio-uring sockets, IP-literal URLs only, so no
//! name resolution) and never buffers more than [`MAX_RESPONSE`] bytes of response. One
//! deadline bounds the whole exchange; on a timeout the socket is shut down first (see
//! `scanner`). Envelope values that would break a header line (CR, LF, other controls) are
//! dropped from the request, never sent.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::Deserialize;
use tokio::time::Instant;

use super::http1::{MAX_RESPONSE, parse_response};
use super::scanner::{ReplyError, ScanConn, ScanError, Status, within};

/// Bytes of request per write: the head and the start of the message, then the rest in pieces
/// of this size, so the copy of the message that owned-buffer I/O needs stays bounded.
const WRITE_CHUNK: usize = 64 * 1024;

/// Most symbols listed in `X-Spam-Symbols`; rspamd rarely reports more than a few dozen.
const MAX_HEADER_SYMBOLS: usize = 100;

/// The envelope and connection facts rspamd scores alongside the message.
#[derive(Debug, Clone, Copy)]
pub struct RspamdRequest<'a> {
    /// The reverse-path without angle brackets; empty for the null sender (sent as `<>`).
    pub from: &'a str,
    /// The forward-paths, one `Rcpt` header each.
    pub rcpts: &'a [String],
    /// The SMTP client's address.
    pub ip: Option<IpAddr>,
    /// The EHLO/HELO argument.
    pub helo: Option<&'a str>,
    /// The authenticated user, if any (rspamd relaxes some checks for these).
    pub user: Option<&'a str>,
    /// The queue id, for rspamd's log.
    pub queue_id: Option<&'a str>,
}

/// rspamd's recommended action (rspamd's "actions" docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpamAction {
    /// `no action`: deliver.
    NoAction,
    /// `greylist`: tempfail a first attempt.
    Greylist,
    /// `add header`: deliver marked as spam.
    AddHeader,
    /// `rewrite subject`: deliver with a marked subject.
    RewriteSubject,
    /// `soft reject`: tempfail (rate limits and the like).
    SoftReject,
    /// `reject`: refuse.
    Reject,
}

impl SpamAction {
    /// Parses rspamd's action name. Custom actions (`discard`, `quarantine`, ...) are not
    /// accepted: guessing what they mean would be worse than a protocol error.
    pub fn from_rspamd(name: &str) -> Option<SpamAction> {
        Some(match name {
            "no action" => SpamAction::NoAction,
            "greylist" => SpamAction::Greylist,
            "add header" => SpamAction::AddHeader,
            "rewrite subject" => SpamAction::RewriteSubject,
            "soft reject" => SpamAction::SoftReject,
            "reject" => SpamAction::Reject,
            _ => return None,
        })
    }

    /// rspamd's name for the action.
    pub fn as_str(self) -> &'static str {
        match self {
            SpamAction::NoAction => "no action",
            SpamAction::Greylist => "greylist",
            SpamAction::AddHeader => "add header",
            SpamAction::RewriteSubject => "rewrite subject",
            SpamAction::SoftReject => "soft reject",
            SpamAction::Reject => "reject",
        }
    }

    /// Whether the action says the message is spam. Greylist and soft reject are temporary
    /// measures, not judgements.
    pub fn is_spam(self) -> bool {
        matches!(
            self,
            SpamAction::AddHeader | SpamAction::RewriteSubject | SpamAction::Reject
        )
    }
}

/// rspamd's verdict on one message.
#[derive(Debug, Clone, PartialEq)]
pub struct SpamResult {
    /// The recommended action.
    pub action: SpamAction,
    /// The message's score.
    pub score: f64,
    /// The score at which rspamd rejects (checkv2's `required_score`).
    pub required_score: f64,
    /// Names of the symbols that matched, sorted, as rspamd sent them.
    pub symbols: Vec<String>,
}

/// The `http://ip:port` of an rspamd normal worker, checked once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RspamdUrl {
    addr: SocketAddr,
    /// The authority as written, for the `Host` header.
    host: String,
}

impl RspamdUrl {
    /// Parses `http://127.0.0.1:11333`, `http://[::1]:11333` or `http://localhost:11333`,
    /// optionally with a trailing `/`. The port is required and the host must be an IP
    /// literal or `localhost`: resolving other names would block. TLS is not supported.
    pub fn parse(url: &str) -> Result<RspamdUrl, String> {
        let bad = |why: &str| format!("rspamd url {url:?}: {why}");
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("must start with http://"))?;
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.contains('/') {
            return Err(bad("must not have a path"));
        }
        let addr = match authority.strip_prefix("localhost:") {
            Some(port) => port
                .parse::<u16>()
                .map(|port| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
                .map_err(|_| bad("bad port"))?,
            None => authority
                .parse::<SocketAddr>()
                .map_err(|_| bad("host must be an ip address or localhost, with a port"))?,
        };
        Ok(RspamdUrl {
            addr,
            host: authority.to_owned(),
        })
    }

    /// The socket address to connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Asks rspamd at `url` about `message`, all within `timeout` (connecting included).
///
/// A URL that [`RspamdUrl::parse`] rejects is reported as [`ScanError::Io`] with kind
/// `InvalidInput`; check it at configuration time to avoid that.
pub async fn rspamd_check(
    url: &str,
    req: &RspamdRequest<'_>,
    message: &[u8],
    timeout: Duration,
) -> Result<SpamResult, ScanError> {
    let url = RspamdUrl::parse(url)
        .map_err(|e| ScanError::Io(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    let deadline = Instant::now() + timeout;
    let conn = match tokio::time::timeout_at(deadline, ScanConn::connect_tcp(url.addr)).await {
        Ok(conn) => conn?,
        Err(_) => return Err(ScanError::Timeout),
    };
    within(&conn, deadline, exchange(&conn, &url, req, message)).await
}

async fn exchange(
    conn: &ScanConn,
    url: &RspamdUrl,
    req: &RspamdRequest<'_>,
    message: &[u8],
) -> Result<SpamResult, ScanError> {
    let mut out = Vec::with_capacity(WRITE_CHUNK + 1024);
    encode_request_head(&url.host, req, message.len(), &mut out);
    let first = message.len().min(WRITE_CHUNK.saturating_sub(out.len()));
    out.extend_from_slice(&message[..first]);
    let mut rest = &message[first..];
    loop {
        let (written, buf) = conn.write_all(out).await;
        if let Err(e) = written {
            // rspamd may answer (an error status for an oversized message) and close before
            // reading the whole body: its answer says more than the broken pipe.
            return match read_response(conn).await {
                Err(ScanError::Protocol(reply)) => Err(ScanError::Protocol(reply)),
                _ => Err(ScanError::Io(e)),
            };
        }
        out = buf;
        if rest.is_empty() {
            break;
        }
        out.clear();
        let n = rest.len().min(WRITE_CHUNK);
        out.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
    }
    drop(out);
    read_response(conn).await
}

async fn read_response(conn: &ScanConn) -> Result<SpamResult, ScanError> {
    let mut buf = Vec::with_capacity(4096);
    loop {
        let (n, returned) = conn.read_append(buf, MAX_RESPONSE).await;
        buf = returned;
        let eof = n? == 0;
        if let Status::Complete(body) = parse_response(&buf, eof)? {
            return Ok(parse_check_reply(&body)?);
        }
    }
}

/// Appends the `POST /checkv2` request head for a `body_len`-byte message to `out`.
///
/// The envelope goes in rspamd's request headers: `From`, one `Rcpt` per recipient, `IP`,
/// `Helo`, `User`, `Queue-Id`. `Connection: close` makes rspamd end the exchange.
pub fn encode_request_head(
    host: &str,
    req: &RspamdRequest<'_>,
    body_len: usize,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"POST /checkv2 HTTP/1.1\r\n");
    push_header(out, "Host", host);
    push_header(out, "Connection", "close");
    push_header(out, "Content-Length", &body_len.to_string());
    push_header(
        out,
        "From",
        if req.from.is_empty() { "<>" } else { req.from },
    );
    for rcpt in req.rcpts {
        push_header(out, "Rcpt", rcpt);
    }
    if let Some(ip) = req.ip {
        push_header(out, "IP", &ip.to_string());
    }
    let optional = [
        ("Helo", req.helo),
        ("User", req.user),
        ("Queue-Id", req.queue_id),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            push_header(out, name, value);
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends `name: value\r\n`, dropping from `value` the bytes RFC 9110 §5.5 forbids in a
/// field value (controls other than HTAB, DEL): they would split or corrupt the request.
/// Leading and trailing whitespace goes too. A value left empty omits the header.
fn push_header(out: &mut Vec<u8>, name: &str, value: &str) {
    let clean: Vec<u8> = value
        .bytes()
        .filter(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
        .collect();
    let clean = clean.trim_ascii();
    if clean.is_empty() {
        return;
    }
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(clean);
    out.extend_from_slice(b"\r\n");
}

/// The checkv2 fields used; the rest (`messages`, `urls`, `milter`, ...) is ignored.
#[derive(Deserialize)]
struct CheckV2Reply {
    action: String,
    score: f64,
    required_score: f64,
    #[serde(default)]
    symbols: BTreeMap<String, serde::de::IgnoredAny>,
}

/// Parses a checkv2 JSON body.
pub fn parse_check_reply(body: &[u8]) -> Result<SpamResult, ReplyError> {
    let reply: CheckV2Reply =
        serde_json::from_slice(body).map_err(|e| ReplyError::MalformedJson {
            line: e.line(),
            column: e.column(),
        })?;
    let action = SpamAction::from_rspamd(&reply.action)
        .ok_or_else(|| ReplyError::UnknownAction(reply.action.chars().take(100).collect()))?;
    Ok(SpamResult {
        action,
        score: reply.score,
        required_score: reply.required_score,
        symbols: reply.symbols.into_keys().collect(),
    })
}

/// Header fields that report `r` in the message, each line CRLF-terminated:
///
/// ```text
/// X-Spam-Status: Yes, score=7.20, required=15.00
/// X-Spam-Score: 7.20
/// X-Spam-Action: add header
/// X-Spam-Symbols: BAYES_SPAM, MISSING_DATE,
///  R_SPF_FAIL
/// ```
///
/// `Yes` when [`SpamAction::is_spam`]. Symbol names keep only `[A-Za-z0-9_.-]` (names
/// with nothing left are dropped), at most 100 are listed, and the list is folded so that
/// lines stay within 78 characters where names allow (RFC 5322 §2.1.1).
pub fn spam_headers(r: &SpamResult) -> Vec<u8> {
    let mut out = String::new();
    let yes_no = if r.action.is_spam() { "Yes" } else { "No" };
    let _ = write!(
        out,
        "X-Spam-Status: {yes_no}, score={:.2}, required={:.2}\r\n\
         X-Spam-Score: {:.2}\r\n\
         X-Spam-Action: {}\r\n",
        r.score,
        r.required_score,
        r.score,
        r.action.as_str()
    );
    let names: Vec<String> = r
        .symbols
        .iter()
        .map(|s| {
            s.chars()
                .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
                .collect::<String>()
        })
        .filter(|s| !s.is_empty())
        .take(MAX_HEADER_SYMBOLS)
        .collect();
    if !names.is_empty() {
        let mut line = String::from("X-Spam-Symbols:");
        for (i, name) in names.iter().enumerate() {
            let sep = if i + 1 < names.len() { "," } else { "" };
            if line.len() + 1 + name.len() + sep.len() > 78 && line.len() > 1 {
                out.push_str(&line);
                out.push_str("\r\n");
                line.clear();
            }
            line.push(' ');
            line.push_str(name);
            line.push_str(sep);
        }
        out.push_str(&line);
        out.push_str("\r\n");
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::super::scanner::test_support::{closed_port, fake_server, start_scanner};
    use super::*;

    const GTUBE: &[u8] = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X";

    fn request<'a>(rcpts: &'a [String]) -> RspamdRequest<'a> {
        RspamdRequest {
            from: "alice@example.com",
            rcpts,
            ip: Some("192.0.2.7".parse().unwrap()),
            helo: Some("client.example.com"),
            user: None,
            queue_id: Some("Q123"),
        }
    }

    #[test]
    fn request_head_exact() {
        let rcpts = vec![
            "bob@example.net".to_string(),
            "carol@example.org".to_string(),
        ];
        let mut out = Vec::new();
        encode_request_head("127.0.0.1:11333", &request(&rcpts), 42, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /checkv2 HTTP/1.1\r\n\
             Host: 127.0.0.1:11333\r\n\
             Connection: close\r\n\
             Content-Length: 42\r\n\
             From: alice@example.com\r\n\
             Rcpt: bob@example.net\r\n\
             Rcpt: carol@example.org\r\n\
             IP: 192.0.2.7\r\n\
             Helo: client.example.com\r\n\
             Queue-Id: Q123\r\n\
             \r\n"
        );
    }

    #[test]
    fn request_head_null_sender_and_hostile_values() {
        let rcpts = vec![
            "bob@example.net\r\nX-Evil: 1".to_string(),
            "\r\n".to_string(),
        ];
        let req = RspamdRequest {
            from: "",
            rcpts: &rcpts,
            ip: None,
            helo: Some("evil\r\n\r\nGET / HTTP/1.1"),
            user: Some("u\0ser"),
            queue_id: None,
        };
        let mut out = Vec::new();
        encode_request_head("h", &req, 0, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /checkv2 HTTP/1.1\r\n\
             Host: h\r\n\
             Connection: close\r\n\
             Content-Length: 0\r\n\
             From: <>\r\n\
             Rcpt: bob@example.netX-Evil: 1\r\n\
             Helo: evilGET / HTTP/1.1\r\n\
             User: user\r\n\
             \r\n"
        );
    }

    #[test]
    fn check_reply_json() {
        let body = br#"{"is_skipped":false,"score":7.25,"required_score":15.0,
            "action":"add header","symbols":{"Z_LAST":{"score":1},"A_FIRST":{"score":6.25}},
            "messages":{},"urls":["example.com"]}"#;
        assert_eq!(
            parse_check_reply(body).unwrap(),
            SpamResult {
                action: SpamAction::AddHeader,
                score: 7.25,
                required_score: 15.0,
                symbols: vec!["A_FIRST".into(), "Z_LAST".into()],
            }
        );
        for action in [
            SpamAction::NoAction,
            SpamAction::Greylist,
            SpamAction::AddHeader,
            SpamAction::RewriteSubject,
            SpamAction::SoftReject,
            SpamAction::Reject,
        ] {
            let body = format!(
                r#"{{"action":"{}","score":1,"required_score":2}}"#,
                action.as_str()
            );
            assert_eq!(parse_check_reply(body.as_bytes()).unwrap().action, action);
        }
        assert_eq!(
            parse_check_reply(br#"{"action":"discard","score":1,"required_score":2}"#),
            Err(ReplyError::UnknownAction("discard".into()))
        );
        assert!(matches!(
            parse_check_reply(br#"{"action":"reject","score":"high","required_score":2}"#),
            Err(ReplyError::MalformedJson { line: 1, .. })
        ));
        assert!(matches!(
            parse_check_reply(b"not json"),
            Err(ReplyError::MalformedJson { .. })
        ));
    }

    #[test]
    fn headers_exact() {
        let r = SpamResult {
            action: SpamAction::AddHeader,
            score: 7.2,
            required_score: 15.0,
            symbols: vec![
                "BAYES_SPAM".into(),
                "BAD\r\nX-Evil: 1".into(),
                "\r\n".into(),
            ],
        };
        assert_eq!(
            String::from_utf8(spam_headers(&r)).unwrap(),
            "X-Spam-Status: Yes, score=7.20, required=15.00\r\n\
             X-Spam-Score: 7.20\r\n\
             X-Spam-Action: add header\r\n\
             X-Spam-Symbols: BAYES_SPAM, BADX-Evil1\r\n"
        );
        let clean = SpamResult {
            action: SpamAction::NoAction,
            score: -0.5,
            required_score: 15.0,
            symbols: vec![],
        };
        assert_eq!(
            String::from_utf8(spam_headers(&clean)).unwrap(),
            "X-Spam-Status: No, score=-0.50, required=15.00\r\n\
             X-Spam-Score: -0.50\r\n\
             X-Spam-Action: no action\r\n"
        );
    }

    #[test]
    fn headers_fold_and_cap_symbols() {
        let r = SpamResult {
            action: SpamAction::Reject,
            score: 20.0,
            required_score: 15.0,
            symbols: (0..150).map(|i| format!("SYMBOL_NUMBER_{i:03}")).collect(),
        };
        let text = String::from_utf8(spam_headers(&r)).unwrap();
        assert!(text.ends_with("\r\n"));
        for line in text.split_terminator("\r\n") {
            assert!(line.len() <= 78, "{line:?}");
            assert!(!line.is_empty());
        }
        let symbols = text.split("X-Spam-Symbols:").nth(1).unwrap();
        let listed: Vec<&str> = symbols
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|s| !s.is_empty())
            .collect();
        assert_eq!(listed.len(), MAX_HEADER_SYMBOLS);
        assert_eq!(listed[0], "SYMBOL_NUMBER_000");
        // Continuation lines start with whitespace (RFC 5322 §2.2.3).
        let after_first = symbols.split("\r\n").skip(1).filter(|l| !l.is_empty());
        for line in after_first {
            assert!(line.starts_with(' '), "{line:?}");
        }
    }

    #[test]
    fn url_parse_table() {
        let ok = [
            ("http://127.0.0.1:11333", "127.0.0.1:11333"),
            ("http://127.0.0.1:11333/", "127.0.0.1:11333"),
            ("http://[::1]:11333", "[::1]:11333"),
            ("http://localhost:11333", "127.0.0.1:11333"),
        ];
        for (url, addr) in ok {
            assert_eq!(
                RspamdUrl::parse(url).unwrap().addr(),
                addr.parse::<SocketAddr>().unwrap(),
                "{url}"
            );
        }
        for bad in [
            "https://127.0.0.1:11333",
            "127.0.0.1:11333",
            "http://127.0.0.1",
            "http://rspamd.example:11333",
            "http://127.0.0.1:11333/checkv2",
            "http://localhost:99999",
        ] {
            assert!(RspamdUrl::parse(bad).is_err(), "{bad}");
        }
    }

    fn http_request_complete(request: &[u8]) -> bool {
        let Some(head) = memchr::memmem::find(request, b"\r\n\r\n") else {
            return false;
        };
        let text = String::from_utf8_lossy(&request[..head]);
        let len: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        request.len() >= head + 4 + len
    }

    fn check(addr: SocketAddr, message: &[u8], timeout: Duration) -> Result<SpamResult, ScanError> {
        let rcpts = vec!["bob@example.net".to_string()];
        let url = format!("http://{addr}");
        tokio_uring::start(async { rspamd_check(&url, &request(&rcpts), message, timeout).await })
    }

    #[test]
    fn fake_rspamd_gets_the_whole_message() {
        let json =
            br#"{"action":"rewrite subject","score":9.5,"required_score":15,"symbols":{"S":{}}}"#;
        let mut reply =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", json.len()).into_bytes();
        reply.extend_from_slice(json);
        let (addr, seen) = fake_server(reply, http_request_complete, false);
        let message: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let result = check(addr, &message, Duration::from_secs(10)).unwrap();
        assert_eq!(result.action, SpamAction::RewriteSubject);
        assert_eq!(result.symbols, ["S"]);
        let seen = seen.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(seen.closed_by_client);
        assert!(seen.request.starts_with(b"POST /checkv2 HTTP/1.1\r\n"));
        assert!(seen.request.ends_with(&message));
        let head_len = seen.request.len() - message.len();
        assert!(
            String::from_utf8_lossy(&seen.request[..head_len])
                .contains("\r\nContent-Length: 300000\r\n")
        );
    }

    #[test]
    fn malformed_replies_are_protocol_errors() {
        let cases: [(&[u8], ReplyError); 3] = [
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nnot j",
                ReplyError::MalformedJson { line: 1, column: 2 },
            ),
            (
                b"SMTP/1.0 220 hello\r\n\r\n",
                ReplyError::MalformedHttp("bad status line"),
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{}",
                ReplyError::Truncated,
            ),
        ];
        for (reply, expected) in cases {
            let (addr, _seen) = fake_server(reply.to_vec(), http_request_complete, true);
            match check(addr, b"Subject: x\r\n\r\nhi\r\n", Duration::from_secs(5)) {
                Err(ScanError::Protocol(e)) => assert_eq!(e, expected),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn early_error_reply_beats_the_broken_pipe() {
        // Answers 413 after the head and closes without reading the body, as a server that
        // refuses an oversized message does.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut stream, _) = listener.accept().unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap() == 1 {
                head.push(byte[0]);
            }
            stream
                .write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\n\r\n")
                .unwrap();
        });
        let message = vec![b'a'; 16 * 1024 * 1024];
        let result = check(addr, &message, Duration::from_secs(10));
        server.join().unwrap();
        match result {
            Err(ScanError::Protocol(ReplyError::HttpStatus { status: 413, .. })) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn nothing_listening_is_a_quick_io_error() {
        let started = std::time::Instant::now();
        let result = check(closed_port(), b"x", Duration::from_secs(10));
        assert!(matches!(result, Err(ScanError::Io(_))), "{result:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        let rcpts = vec![];
        let bad_url = tokio_uring::start(rspamd_check(
            "https://127.0.0.1:1",
            &request(&rcpts),
            b"x",
            Duration::from_secs(1),
        ));
        assert!(
            matches!(&bad_url, Err(ScanError::Io(e)) if e.kind() == io::ErrorKind::InvalidInput),
            "{bad_url:?}"
        );
    }

    #[test]
    fn silent_rspamd_times_out_and_the_socket_is_released() {
        let (addr, seen) = fake_server(Vec::new(), |_| false, false);
        let started = std::time::Instant::now();
        let result = check(
            addr,
            b"Subject: x\r\n\r\nhi\r\n",
            Duration::from_millis(300),
        );
        let elapsed = started.elapsed();
        assert!(matches!(result, Err(ScanError::Timeout)), "{result:?}");
        assert!(elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(3));
        let seen = seen.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(seen.closed_by_client, "socket left open after the timeout");
    }

    #[test]
    fn real_rspamd() {
        let Some(scanner) = start_scanner("rspamd") else {
            return;
        };
        let url = scanner.addr.clone();
        let rcpts = vec!["bob@example.net".to_string()];
        let req = request(&rcpts);
        let timeout = Duration::from_secs(30);
        tokio_uring::start(async {
            let plain = b"From: alice@example.com\r\nTo: bob@example.net\r\nSubject: lunch\r\n\
                Date: Mon, 1 Jan 2024 12:00:00 +0000\r\nMessage-ID: <1@example.com>\r\n\r\n\
                Shall we meet at noon?\r\n";
            let result = rspamd_check(&url, &req, plain, timeout).await.unwrap();
            assert_ne!(result.action, SpamAction::Reject, "{result:?}");
            assert!(result.required_score > 0.0);

            let mut gtube = b"From: alice@example.com\r\nSubject: test\r\n\r\n".to_vec();
            gtube.extend_from_slice(GTUBE);
            gtube.extend_from_slice(b"\r\n");
            let result = rspamd_check(&url, &req, &gtube, timeout).await.unwrap();
            assert_eq!(result.action, SpamAction::Reject, "{result:?}");
            assert!(result.symbols.iter().any(|s| s == "GTUBE"), "{result:?}");

            let null_sender = RspamdRequest {
                from: "",
                user: Some("alice@example.com"),
                ..req
            };
            let result = rspamd_check(&url, &null_sender, plain, timeout)
                .await
                .unwrap();
            assert_ne!(result.action, SpamAction::Reject, "{result:?}");
        });
    }
}
