//! The HTTP/1.1 response side that the rspamd client needs (RFC 9112): a strict, incremental
//! parser of one response (status line, header fields, then a `Content-Length`, chunked or
//! close-delimited body) with bounded sizes. Pure: bytes in, body or "need more bytes" out.

use std::borrow::Cow;

use super::scanner::{ReplyError, Status};

/// Longest HTTP response accepted, head and body together. A checkv2 reply lists each symbol
/// and, for messages with links, up to rspamd's `max_urls` URLs; 4 MiB leaves room for both.
pub const MAX_RESPONSE: usize = 4 * 1024 * 1024;

/// Longest response head (status line and header fields).
pub const MAX_HEAD: usize = 16 * 1024;

/// Parses the HTTP response bytes received so far (`eof`: the connection has closed) and
/// returns the body of a `200` response.
///
/// Strict on purpose (rspamd is a known peer): CRLF line ends only, no obsolete line
/// folding, no `Transfer-Encoding` other than `chunked`, never both `Transfer-Encoding` and
/// `Content-Length` (RFC 9112 §6.2 forbids sending both, and §6.3 says to treat it as an
/// error).
/// A body with neither ends at EOF (RFC 9112 §6.3 rule 8). Any status but 200 is
/// [`ReplyError::HttpStatus`] as soon as the head is in.
pub fn parse_response(buf: &[u8], eof: bool) -> Result<Status<Cow<'_, [u8]>>, ReplyError> {
    if buf.len() > MAX_RESPONSE {
        return Err(ReplyError::TooLong {
            limit: MAX_RESPONSE,
        });
    }
    let Some(head_len) = memchr::memmem::find(buf, b"\r\n\r\n") else {
        if buf.len() >= MAX_HEAD {
            return Err(ReplyError::TooLong { limit: MAX_HEAD });
        }
        return if eof {
            Err(ReplyError::Truncated)
        } else {
            Ok(Status::Partial)
        };
    };
    if head_len + 4 > MAX_HEAD {
        return Err(ReplyError::TooLong { limit: MAX_HEAD });
    }
    let framing = parse_head(&buf[..head_len])?;
    let body = &buf[head_len + 4..];
    match framing {
        Framing::Length(len) => {
            if body.len() >= len {
                Ok(Status::Complete(Cow::Borrowed(&body[..len])))
            } else if eof {
                Err(ReplyError::Truncated)
            } else {
                Ok(Status::Partial)
            }
        }
        Framing::Chunked => match decode_chunked(body)? {
            Status::Complete(decoded) => Ok(Status::Complete(Cow::Owned(decoded))),
            Status::Partial if eof => Err(ReplyError::Truncated),
            Status::Partial => Ok(Status::Partial),
        },
        Framing::UntilClose if eof => Ok(Status::Complete(Cow::Borrowed(body))),
        Framing::UntilClose => Ok(Status::Partial),
    }
}

/// How a response body is delimited (RFC 9112 §6.3).
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

/// Checks the status line and reads the framing headers of a head without its final CRLFCRLF.
fn parse_head(head: &[u8]) -> Result<Framing, ReplyError> {
    let mut lines = split_crlf_lines(head)?;
    let status_line = lines.next().unwrap_or_default();
    check_status_line(status_line)?;

    let mut length: Option<usize> = None;
    let mut chunked = false;
    for line in lines {
        let colon =
            memchr::memchr(b':', line).ok_or(ReplyError::MalformedHttp("header without colon"))?;
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        // RFC 9112 §5.1: no whitespace before the colon; §5.2: obs-fold is rejected.
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(ReplyError::MalformedHttp("bad header name"));
        }
        if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(ReplyError::MalformedHttp(
                "control character in header value",
            ));
        }
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_decimal(value).ok_or(ReplyError::MalformedHttp("bad content-length"))?;
            if length.is_some_and(|old| old != n) {
                return Err(ReplyError::MalformedHttp("conflicting content-length"));
            }
            if n > MAX_RESPONSE {
                return Err(ReplyError::TooLong {
                    limit: MAX_RESPONSE,
                });
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if !value.eq_ignore_ascii_case(b"chunked") || chunked {
                return Err(ReplyError::MalformedHttp("unsupported transfer-encoding"));
            }
            chunked = true;
        }
    }
    match (length, chunked) {
        (Some(_), true) => Err(ReplyError::MalformedHttp(
            "both content-length and transfer-encoding",
        )),
        (Some(n), false) => Ok(Framing::Length(n)),
        (None, true) => Ok(Framing::Chunked),
        (None, false) => Ok(Framing::UntilClose),
    }
}

/// Lines of a head that does not include its final CRLF: CRLF-separated, and a bare LF or CR
/// anywhere is an error.
fn split_crlf_lines(head: &[u8]) -> Result<impl Iterator<Item = &[u8]>, ReplyError> {
    let mut lines = Vec::new();
    let mut rest = head;
    loop {
        match memchr::memmem::find(rest, b"\r\n") {
            Some(i) => {
                lines.push(&rest[..i]);
                rest = &rest[i + 2..];
            }
            None => {
                lines.push(rest);
                break;
            }
        }
    }
    if lines
        .iter()
        .any(|line| memchr::memchr2(b'\r', b'\n', line).is_some())
    {
        return Err(ReplyError::MalformedHttp("bare cr or lf in head"));
    }
    Ok(lines.into_iter())
}

/// RFC 9112 §4: `HTTP/1.x SP 3DIGIT SP [reason]`. Only 200 passes.
fn check_status_line(line: &[u8]) -> Result<(), ReplyError> {
    let rest = line
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| line.strip_prefix(b"HTTP/1.0 "))
        .ok_or(ReplyError::MalformedHttp("bad status line"))?;
    let (code, reason) = match rest.get(3) {
        None => (rest, &b""[..]),
        Some(b' ') => (&rest[..3], &rest[4..]),
        Some(_) => return Err(ReplyError::MalformedHttp("bad status code")),
    };
    if code.len() != 3 {
        return Err(ReplyError::MalformedHttp("bad status code"));
    }
    let status = parse_decimal(code)
        .and_then(|n| u16::try_from(n).ok())
        .ok_or(ReplyError::MalformedHttp("bad status code"))?;
    if status == 200 {
        return Ok(());
    }
    let reason: String = reason
        .iter()
        .take(100)
        .map(|&b| {
            if (0x20..0x7f).contains(&b) {
                b as char
            } else {
                '?'
            }
        })
        .collect();
    Err(ReplyError::HttpStatus { status, reason })
}

/// Decodes a chunked body (RFC 9112 §7.1) from the bytes after the head. Chunk extensions and
/// trailer fields are skipped.
fn decode_chunked(mut buf: &[u8]) -> Result<Status<Vec<u8>>, ReplyError> {
    let mut body = Vec::new();
    loop {
        let Some(eol) = memchr::memmem::find(buf, b"\r\n") else {
            return Ok(Status::Partial);
        };
        let line = &buf[..eol];
        let size_text = line
            .split(|&b| b == b';')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        // Eight hex digits cover every size below MAX_RESPONSE and cannot overflow.
        if size_text.is_empty() || size_text.len() > 8 {
            return Err(ReplyError::MalformedHttp("bad chunk size"));
        }
        let size = size_text.iter().try_fold(0usize, |acc, &b| {
            let digit = (b as char).to_digit(16)?;
            Some(acc * 16 + digit as usize)
        });
        let size = size.ok_or(ReplyError::MalformedHttp("bad chunk size"))?;
        buf = &buf[eol + 2..];
        if size == 0 {
            // Trailer section: field lines up to an empty line.
            loop {
                let Some(eol) = memchr::memmem::find(buf, b"\r\n") else {
                    return Ok(Status::Partial);
                };
                if eol == 0 {
                    return Ok(Status::Complete(body));
                }
                buf = &buf[eol + 2..];
            }
        }
        if body.len() + size > MAX_RESPONSE {
            return Err(ReplyError::TooLong {
                limit: MAX_RESPONSE,
            });
        }
        if buf.len() < size + 2 {
            return Ok(Status::Partial);
        }
        if &buf[size..size + 2] != b"\r\n" {
            return Err(ReplyError::MalformedHttp("chunk not followed by crlf"));
        }
        body.extend_from_slice(&buf[..size]);
        buf = &buf[size + 2..];
    }
}

/// RFC 9110 §5.6.2 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A non-empty run of ASCII digits, without overflow.
fn parse_decimal(text: &[u8]) -> Option<usize> {
    if text.is_empty() || text.len() > 19 {
        return None;
    }
    text.iter().try_fold(0usize, |acc, &b| {
        let digit = (b as char).to_digit(10)?;
        acc.checked_mul(10)?.checked_add(digit as usize)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> Result<Vec<u8>, ReplyError> {
        match parse_response(buf, false)? {
            Status::Complete(body) => Ok(body.into_owned()),
            Status::Partial => match parse_response(buf, true)? {
                Status::Complete(body) => Ok(body.into_owned()),
                Status::Partial => panic!("partial at eof"),
            },
        }
    }

    /// Every prefix of `response` is Partial (or, for an until-close body, a prefix of the
    /// body at EOF), and the whole gives `body`.
    fn assert_body_at_every_split(response: &[u8], body: &[u8]) {
        for cut in 0..response.len() {
            match parse_response(&response[..cut], false) {
                Ok(Status::Partial) => {}
                other => panic!("cut {cut}: {other:?}"),
            }
        }
        assert_eq!(complete(response).unwrap(), body);
    }

    #[test]
    fn response_framings() {
        let json = br#"{"action":"no action","score":0.0,"required_score":15.0,"symbols":{}}"#;
        let mut by_length = format!(
            "HTTP/1.1 200 OK\r\nConnection: close\r\nServer: rspamd/3.4\r\nContent-Length: {}\r\n\
             Content-Type: application/json\r\n\r\n",
            json.len()
        )
        .into_bytes();
        by_length.extend_from_slice(json);
        assert_body_at_every_split(&by_length, json);

        let mut chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10;ext=1\r\n".to_vec();
        chunked.extend_from_slice(&json[..16]);
        chunked.extend_from_slice(format!("\r\n{:X}\r\n", json.len() - 16).as_bytes());
        chunked.extend_from_slice(&json[16..]);
        chunked.extend_from_slice(b"\r\n0\r\nTrailer: x\r\n\r\n");
        assert_body_at_every_split(&chunked, json);

        let mut until_close = b"HTTP/1.0 200 OK\r\n\r\n".to_vec();
        until_close.extend_from_slice(json);
        assert_eq!(parse_response(&until_close, false), Ok(Status::Partial));
        assert_eq!(complete(&until_close).unwrap(), json);
    }

    #[test]
    fn response_errors_table() {
        use ReplyError::*;
        let cases: &[(&[u8], ReplyError)] = &[
            (
                b"HTTP/1.1 500 invalid command\r\nContent-Length: 2\r\n\r\n{}",
                HttpStatus {
                    status: 500,
                    reason: "invalid command".into(),
                },
            ),
            (
                b"HTTP/1.1 404\r\n\r\n",
                HttpStatus {
                    status: 404,
                    reason: String::new(),
                },
            ),
            (b"garbage\r\n\r\n", MalformedHttp("bad status line")),
            (
                b"HTTP/1.1 2000 OK\r\n\r\n",
                MalformedHttp("bad status code"),
            ),
            (b"HTTP/1.1 20x OK\r\n\r\n", MalformedHttp("bad status code")),
            (
                b"HTTP/1.1 200 OK\nX: y\r\n\r\n",
                MalformedHttp("bare cr or lf in head"),
            ),
            (
                b"HTTP/1.1 200 OK\r\n folded\r\n\r\n",
                MalformedHttp("header without colon"),
            ),
            (
                b"HTTP/1.1 200 OK\r\nA b: c\r\n\r\n",
                MalformedHttp("bad header name"),
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
                MalformedHttp("conflicting content-length"),
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                MalformedHttp("bad content-length"),
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
                TooLong {
                    limit: MAX_RESPONSE,
                },
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                MalformedHttp("unsupported transfer-encoding"),
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                MalformedHttp("both content-length and transfer-encoding"),
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                MalformedHttp("bad chunk size"),
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n123456789\r\n",
                MalformedHttp("bad chunk size"),
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n",
                MalformedHttp("chunk not followed by crlf"),
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n",
                Truncated,
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nabc",
                Truncated,
            ),
            (b"HTTP/1.1 200 OK\r\n", Truncated),
            (b"", Truncated),
        ];
        for (input, expected) in cases {
            assert_eq!(
                complete(input).as_ref(),
                Err(expected),
                "input {:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn response_head_is_bounded() {
        let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
        while head.len() < MAX_HEAD {
            head.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        assert_eq!(
            parse_response(&head, false),
            Err(ReplyError::TooLong { limit: MAX_HEAD })
        );
        head.extend_from_slice(b"\r\n");
        assert_eq!(
            parse_response(&head, false),
            Err(ReplyError::TooLong { limit: MAX_HEAD })
        );
    }
}
