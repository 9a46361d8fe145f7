//! SMTP replies: the [`Reply`] value, its wire encoding and a streaming parser.
//!
//! The encoder is used by the server; the parser by the outbound client. The parser borrows the
//! input, reports "need more bytes" as [`ReplyStatus::Partial`] rather than as an error, and
//! enforces a per-line and a line-count limit so a hostile server cannot grow a buffer without
//! bound. No I/O happens here.

use std::fmt;

/// An enhanced mail system status code (RFC 3463), sent after the basic code (RFC 2034).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct EnhancedCode {
    /// Class: 2 (success), 4 (persistent transient failure) or 5 (permanent failure).
    pub class: u8,
    /// Subject (RFC 3463 §3), 0..=999.
    pub subject: u16,
    /// Detail, 0..=999.
    pub detail: u16,
}

impl EnhancedCode {
    /// Builds a code from its three parts.
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        EnhancedCode {
            class,
            subject,
            detail,
        }
    }
}

impl EnhancedCode {
    /// Parses `class.subject.detail` (RFC 3463 §2): a class of 2, 4 or 5, then one to three
    /// digits twice. The only parser of the syntax in the crate.
    pub fn parse(word: &str) -> Option<EnhancedCode> {
        let mut parts = word.split('.');
        let (class, subject, detail) = (parts.next()?, parts.next()?, parts.next()?);
        let digits = |s: &str, max: usize| {
            !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_digit())
        };
        if parts.next().is_some() || !digits(class, 1) || !digits(subject, 3) || !digits(detail, 3)
        {
            return None;
        }
        let class: u8 = class.parse().ok()?;
        matches!(class, 2 | 4 | 5).then_some(())?;
        Some(EnhancedCode::new(
            class,
            subject.parse().ok()?,
            detail.parse().ok()?,
        ))
    }
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

/// One SMTP reply, possibly multi-line (RFC 5321 §4.2.1).
///
/// Invariant for encoding: `code` is three digits (100..=599) and no line contains CR or LF.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit reply code.
    pub code: u16,
    /// The enhanced status code, repeated on every line when present.
    pub enhanced: Option<EnhancedCode>,
    /// Text of each line, without code, enhanced code or CRLF. Empty means one empty line.
    pub lines: Vec<String>,
}

impl Reply {
    /// A one-line reply.
    pub fn new(code: u16, enhanced: Option<EnhancedCode>, text: impl Into<String>) -> Self {
        Reply {
            code,
            enhanced,
            lines: vec![text.into()],
        }
    }

    /// A one-line reply with an enhanced code given as its parts.
    pub fn with_enhanced(code: u16, enhanced: (u8, u16, u16), text: impl Into<String>) -> Self {
        let (class, subject, detail) = enhanced;
        Reply::new(code, Some(EnhancedCode::new(class, subject, detail)), text)
    }

    /// The text lines joined by spaces, without the codes: what the bounce rules read.
    pub fn text_line(&self) -> String {
        let mut s = String::new();
        for l in &self.lines {
            if !s.is_empty() {
                s.push(' ');
            }
            s.push_str(l.trim());
        }
        s
    }

    /// The reply as one line, for logs, status records and DSNs: the code, the enhanced code
    /// and the text lines joined by spaces.
    pub fn one_line(&self) -> String {
        let mut s = self.code.to_string();
        if let Some(e) = self.enhanced {
            s.push(' ');
            s.push_str(&e.to_string());
        }
        for l in &self.lines {
            s.push(' ');
            s.push_str(l.trim());
        }
        s
    }

    /// Whether the code is a 2xx or 3xx (positive) reply.
    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// Appends the wire form (`250-...\r\n` lines, the last with a space) to `out`.
    ///
    /// Writes straight into `out`: a session encodes several replies per message, and this
    /// allocates nothing once `out` has room.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let empty = [String::new()];
        let lines: &[String] = if self.lines.is_empty() {
            &empty
        } else {
            &self.lines
        };
        let code = self.code.min(999);
        let digits = [
            b'0' + (code / 100) as u8,
            b'0' + (code / 10 % 10) as u8,
            b'0' + (code % 10) as u8,
        ];
        for (i, text) in lines.iter().enumerate() {
            out.extend_from_slice(&digits);
            out.push(if i + 1 == lines.len() { b' ' } else { b'-' });
            if let Some(enh) = self.enhanced {
                push_decimal(out, enh.class.into());
                out.push(b'.');
                push_decimal(out, enh.subject);
                out.push(b'.');
                push_decimal(out, enh.detail);
                if !text.is_empty() {
                    out.push(b' ');
                }
            }
            out.extend_from_slice(text.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The wire form as a new buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Parses one reply from the start of `input`.
    ///
    /// Lines end with CRLF; a bare LF is accepted too, since replies come from peers we do not
    /// control. An enhanced code is recognised when the first line's text starts with one whose
    /// class matches the reply code's first digit; it is then stripped from every line that
    /// carries it.
    pub fn parse(input: &[u8], limits: ReplyLimits) -> Result<ReplyStatus, ReplyParseError> {
        let mut pos = 0;
        let mut code = None;
        let mut raw_lines: Vec<&[u8]> = Vec::new();
        loop {
            let rest = &input[pos..];
            let Some(lf) = rest.iter().position(|&b| b == b'\n') else {
                if rest.len() >= limits.max_line_length {
                    return Err(ReplyParseError::LineTooLong {
                        limit: limits.max_line_length,
                    });
                }
                return Ok(ReplyStatus::Partial);
            };
            if lf + 1 > limits.max_line_length {
                return Err(ReplyParseError::LineTooLong {
                    limit: limits.max_line_length,
                });
            }
            let mut line = &rest[..lf];
            if let [head @ .., b'\r'] = line {
                line = head;
            }
            pos += lf + 1;
            let this_code = parse_code(line)?;
            if *code.get_or_insert(this_code) != this_code {
                return Err(ReplyParseError::CodeMismatch {
                    first: code.unwrap_or(this_code),
                    line: this_code,
                });
            }
            let last = match line.get(3) {
                None | Some(b' ') => true,
                Some(b'-') => false,
                Some(_) => return Err(ReplyParseError::BadSeparator),
            };
            raw_lines.push(line.get(4..).unwrap_or(&[]));
            if last {
                break;
            }
            if raw_lines.len() >= limits.max_lines {
                return Err(ReplyParseError::TooManyLines {
                    limit: limits.max_lines,
                });
            }
        }
        // The loop pushes at least one line and sets `code` before breaking.
        let code = code.unwrap_or_default();
        let enhanced = raw_lines
            .first()
            .and_then(|first| split_enhanced(first, code).map(|(enh, _)| enh));
        let lines = raw_lines
            .iter()
            .map(|raw| {
                let text = match enhanced {
                    Some(enh) => match split_enhanced(raw, code) {
                        Some((e, rest)) if e == enh => rest,
                        _ => raw,
                    },
                    None => raw,
                };
                String::from_utf8_lossy(text).into_owned()
            })
            .collect();
        Ok(ReplyStatus::Complete {
            reply: Reply {
                code,
                enhanced,
                lines,
            },
            consumed: pos,
        })
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.to_bytes();
        let text = String::from_utf8_lossy(&bytes);
        f.write_str(text.trim_end_matches("\r\n"))
    }
}

/// Appends `n` in decimal, without leading zeros.
fn push_decimal(out: &mut Vec<u8>, n: u16) {
    let mut buf = [0u8; 5];
    let mut at = buf.len();
    let mut n = n;
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[at..]);
}

/// Bounds for [`Reply::parse`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyLimits {
    /// Longest line, CRLF included. RFC 5321 §4.5.3.1.5 sets 512; servers exceed it in practice.
    pub max_line_length: usize,
    /// Most lines in one multi-line reply (EHLO replies are the longest in practice).
    pub max_lines: usize,
}

impl Default for ReplyLimits {
    fn default() -> Self {
        ReplyLimits {
            max_line_length: 4096,
            max_lines: 128,
        }
    }
}

/// Outcome of [`Reply::parse`] on well-formed input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyStatus {
    /// A whole reply was parsed from the first `consumed` bytes.
    Complete {
        /// The reply.
        reply: Reply,
        /// Bytes of input it occupied, final line ending included.
        consumed: usize,
    },
    /// The input holds no complete reply yet; call again with more bytes.
    Partial,
}

/// A malformed reply from the peer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReplyParseError {
    /// A line does not start with a three-digit code in 200..=599 (or 1xx/3xx).
    #[error("reply line does not start with a three-digit code")]
    BadCode,
    /// The fourth byte is neither space, hyphen nor end of line.
    #[error("reply code not followed by space or hyphen")]
    BadSeparator,
    /// Lines of one multi-line reply carry different codes (RFC 5321 §4.2.1).
    #[error("multi-line reply changes code from {first} to {line}")]
    CodeMismatch {
        /// Code of the first line.
        first: u16,
        /// Code of the offending line.
        line: u16,
    },
    /// A line is longer than the limit.
    #[error("reply line longer than {limit} bytes")]
    LineTooLong {
        /// The limit in force.
        limit: usize,
    },
    /// The reply has more lines than the limit.
    #[error("reply has more than {limit} lines")]
    TooManyLines {
        /// The limit in force.
        limit: usize,
    },
}

fn parse_code(line: &[u8]) -> Result<u16, ReplyParseError> {
    match line {
        [a @ b'1'..=b'5', b @ b'0'..=b'9', c @ b'0'..=b'9', ..] => {
            Ok(u16::from(a - b'0') * 100 + u16::from(b - b'0') * 10 + u16::from(c - b'0'))
        }
        _ => Err(ReplyParseError::BadCode),
    }
}

/// Splits a leading `class.subject.detail` (RFC 3463 §2) off `text` when its class matches `code`.
fn split_enhanced(text: &[u8], code: u16) -> Option<(EnhancedCode, &[u8])> {
    let end = text.iter().position(|&b| b == b' ').unwrap_or(text.len());
    let code_class = code / 100;
    let enhanced = EnhancedCode::parse(std::str::from_utf8(&text[..end]).ok()?)
        .filter(|e| u16::from(e.class) == code_class)?;
    Some((enhanced, text.get(end + 1..).unwrap_or(&[])))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(input: &str) -> Result<ReplyStatus, ReplyParseError> {
        Reply::parse(input.as_bytes(), ReplyLimits::default())
    }

    #[test]
    fn encodes_exact_bytes() {
        let r = Reply::with_enhanced(250, (2, 1, 0), "Ok");
        assert_eq!(r.to_bytes(), b"250 2.1.0 Ok\r\n");
        let r = Reply::new(334, None, "");
        assert_eq!(r.to_bytes(), b"334 \r\n");
        let r = Reply {
            code: 250,
            enhanced: None,
            lines: vec!["mx.test".into(), "PIPELINING".into(), "DSN".into()],
        };
        assert_eq!(
            r.to_bytes(),
            b"250-mx.test\r\n250-PIPELINING\r\n250 DSN\r\n"
        );
        let r = Reply {
            code: 550,
            enhanced: Some(EnhancedCode::new(5, 7, 1)),
            lines: vec!["a".into(), "".into()],
        };
        assert_eq!(r.to_bytes(), b"550-5.7.1 a\r\n550 5.7.1\r\n");
        assert_eq!(r.to_string(), "550-5.7.1 a\r\n550 5.7.1");
        let r = Reply::with_enhanced(421, (4, 7, 28), "slow down");
        assert_eq!(r.to_bytes(), b"421 4.7.28 slow down\r\n");
        let r = Reply::with_enhanced(554, (5, 110, 999), "x");
        assert_eq!(r.to_bytes(), b"554 5.110.999 x\r\n");
        let r = Reply::new(99, None, "odd");
        assert_eq!(r.to_bytes(), b"099 odd\r\n");
    }

    #[test]
    fn parses_multi_line_with_enhanced_codes() {
        let got = parse("250-2.0.0 one\r\n250 2.0.0 two\r\nNEXT").unwrap();
        assert_eq!(
            got,
            ReplyStatus::Complete {
                reply: Reply {
                    code: 250,
                    enhanced: Some(EnhancedCode::new(2, 0, 0)),
                    lines: vec!["one".into(), "two".into()],
                },
                consumed: 30,
            }
        );
    }

    #[test]
    fn parser_table() {
        use ReplyParseError::*;
        let ok = |code, enhanced, lines: &[&str], consumed| {
            Ok(ReplyStatus::Complete {
                reply: Reply {
                    code,
                    enhanced,
                    lines: lines.iter().map(|s| s.to_string()).collect(),
                },
                consumed,
            })
        };
        let cases: &[(&str, Result<ReplyStatus, ReplyParseError>)] = &[
            ("220 mx ESMTP\r\n", ok(220, None, &["mx ESMTP"], 14)),
            ("220\r\n", ok(220, None, &[""], 5)),
            ("250 ok\n", ok(250, None, &["ok"], 7)),
            (
                "550 5.1.1 no\r\n",
                ok(550, Some(EnhancedCode::new(5, 1, 1)), &["no"], 14),
            ),
            ("250 5.1.1 x\r\n", ok(250, None, &["5.1.1 x"], 13)),
            ("250-a\r\n", Ok(ReplyStatus::Partial)),
            ("250 partial", Ok(ReplyStatus::Partial)),
            ("", Ok(ReplyStatus::Partial)),
            ("25x ok\r\n", Err(BadCode)),
            ("650 ok\r\n", Err(BadCode)),
            ("250_ok\r\n", Err(BadSeparator)),
            (
                "250-a\r\n251 b\r\n",
                Err(CodeMismatch {
                    first: 250,
                    line: 251,
                }),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(&parse(input), want, "input {input:?}");
        }
    }

    #[test]
    fn parser_limits() {
        let limits = ReplyLimits {
            max_line_length: 10,
            max_lines: 2,
        };
        assert_eq!(
            Reply::parse(b"250 123456789", limits),
            Err(ReplyParseError::LineTooLong { limit: 10 })
        );
        assert_eq!(
            Reply::parse(b"250 1234567\r\n", limits),
            Err(ReplyParseError::LineTooLong { limit: 10 })
        );
        assert!(matches!(
            Reply::parse(b"250 1234\r\n", limits),
            Ok(ReplyStatus::Complete { .. })
        ));
        assert_eq!(
            Reply::parse(b"250-a\r\n250-b\r\n250 c\r\n", limits),
            Err(ReplyParseError::TooManyLines { limit: 2 })
        );
    }

    fn arb_reply() -> impl Strategy<Value = Reply> {
        let code = prop_oneof![200u16..260, 300u16..360, 400u16..460, 500u16..560];
        (
            code,
            any::<bool>(),
            0u16..1000,
            0u16..1000,
            prop::collection::vec("[a-zA-Z][ -~]{0,40}|", 1..5),
        )
            .prop_map(|(code, has_enh, subject, detail, lines)| {
                let class = (code / 100) as u8;
                let enhanced =
                    (has_enh && class != 3).then_some(EnhancedCode::new(class, subject, detail));
                Reply {
                    code,
                    enhanced,
                    lines,
                }
            })
    }

    proptest! {
        #[test]
        fn encode_parse_round_trip(reply in arb_reply()) {
            let bytes = reply.to_bytes();
            let got = Reply::parse(&bytes, ReplyLimits::default()).unwrap();
            prop_assert_eq!(got, ReplyStatus::Complete { reply, consumed: bytes.len() });
        }

        #[test]
        fn parser_never_panics(input in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = Reply::parse(&input, ReplyLimits { max_line_length: 50, max_lines: 3 });
        }
    }
}
