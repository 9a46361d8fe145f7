//! MIME structure limits, checked in one pass before any scanner sees the message.
//!
//! A "MIME bomb" nests containers (multipart/*, message/rfc822) thousands deep or packs in
//! hundreds of thousands of parts: cheap to send, expensive for every parser downstream
//! (clamd, rspamd, the recipient's client). Like Postfix's `mime_nesting_limit`, ringmta
//! refuses such messages at the end of DATA. The walk does not decode anything: it reads
//! header sections for Content-Type, then jumps through bodies with a substring search for
//! the next line that starts with `--`, so a message without MIME structure costs one pass
//! over its header section and a multipart one about one `memmem` over its body.

use memchr::memmem;

/// Bounds on a message's MIME structure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MimeLimits {
    /// Most containers (multipart/* and message/rfc822 or message/global) nested inside one
    /// another; a message without MIME structure has depth 0.
    pub max_depth: usize,
    /// Most body parts (boundary delimiters) in the whole message.
    pub max_parts: usize,
}

/// Why a message's structure was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MimeError {
    /// Containers nested deeper than `max_depth`.
    #[error("MIME nesting deeper than {0} levels")]
    TooDeep(usize),
    /// More parts than `max_parts`.
    #[error("more than {0} MIME parts")]
    TooManyParts(usize),
}

/// What the walk found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct MimeShape {
    /// Deepest container nesting.
    pub depth: usize,
    /// Body parts seen.
    pub parts: usize,
}

/// Longest Content-Type value kept while unfolding; longer values are cut (a boundary
/// parameter past this point is not seen, and the part counts as a leaf).
const MAX_CONTENT_TYPE: usize = 4096;

/// One open container.
struct Frame {
    /// The multipart boundary; `None` for an encapsulated message.
    boundary: Option<Vec<u8>>,
    /// multipart/digest: parts without a Content-Type are messages (RFC 2046 §5.1.5).
    digest: bool,
}

enum Kind {
    Multipart { boundary: Vec<u8>, digest: bool },
    Message,
    Leaf,
}

/// Walks `message` (header section and body, CRLF line ends) and checks it against `limits`.
pub fn check(message: &[u8], limits: MimeLimits) -> Result<MimeShape, MimeError> {
    let mut stack: Vec<Frame> = Vec::new();
    let mut shape = MimeShape::default();
    let mut pos = 0;
    let mut in_headers = true;
    let mut content_type: Option<Vec<u8>> = None;
    let mut in_content_type = false;
    while pos < message.len() {
        if !in_headers {
            // Only a line starting with "--" can end or split a body.
            if !message[pos..].starts_with(b"--") {
                match memmem::find(&message[pos..], b"\n--") {
                    Some(i) => pos += i + 1,
                    None => break,
                }
            }
        }
        let line = next_line(message, &mut pos);
        if let Some((index, close)) = delimiter(line, &stack) {
            stack.truncate(index + 1);
            if close {
                stack.pop();
                in_headers = false;
            } else {
                shape.parts += 1;
                if shape.parts > limits.max_parts {
                    return Err(MimeError::TooManyParts(limits.max_parts));
                }
                in_headers = true;
                content_type = None;
                in_content_type = false;
            }
            continue;
        }
        if !in_headers {
            continue;
        }
        if !line.is_empty() {
            if line[0] == b' ' || line[0] == b'\t' {
                if in_content_type && let Some(ct) = content_type.as_mut() {
                    let room = MAX_CONTENT_TYPE.saturating_sub(ct.len());
                    ct.extend_from_slice(&line[..line.len().min(room)]);
                }
            } else {
                in_content_type = false;
                if let Some(value) = content_type_value(line) {
                    // Of several Content-Type fields, a container wins: a parser downstream
                    // may read either, so the limits must hold for the stricter reading.
                    let have_container = content_type
                        .as_deref()
                        .is_some_and(|ct| !matches!(kind(ct), Kind::Leaf));
                    if !have_container {
                        in_content_type = true;
                        content_type = Some(value[..value.len().min(MAX_CONTENT_TYPE)].to_vec());
                    }
                }
            }
            continue;
        }
        // End of a header section: does this entity open a container?
        let in_digest = stack
            .last()
            .is_some_and(|f| f.digest && f.boundary.is_some());
        let kind = match &content_type {
            Some(ct) => kind(ct),
            None if in_digest => Kind::Message,
            None => Kind::Leaf,
        };
        content_type = None;
        in_content_type = false;
        in_headers = false;
        match kind {
            Kind::Leaf if stack.is_empty() => break,
            Kind::Leaf => continue,
            Kind::Multipart { boundary, digest } => stack.push(Frame {
                boundary: Some(boundary),
                digest,
            }),
            Kind::Message => {
                stack.push(Frame {
                    boundary: None,
                    digest: false,
                });
                // The body of an encapsulated message starts with its own header section.
                in_headers = true;
            }
        }
        if stack.len() > limits.max_depth {
            return Err(MimeError::TooDeep(limits.max_depth));
        }
        shape.depth = shape.depth.max(stack.len());
    }
    Ok(shape)
}

/// The value of a `Content-Type` field line (name matched ignoring case, and allowing the
/// whitespace before the colon of RFC 5322's obsolete syntax).
fn content_type_value(line: &[u8]) -> Option<&[u8]> {
    let colon = memchr::memchr(b':', line)?;
    line[..colon]
        .trim_ascii_end()
        .eq_ignore_ascii_case(b"content-type")
        .then(|| &line[colon + 1..])
}

/// The line at `*pos` without its line end; moves `*pos` past it.
fn next_line<'a>(message: &'a [u8], pos: &mut usize) -> &'a [u8] {
    let rest = &message[*pos..];
    let (line, used) = match memchr::memchr(b'\n', rest) {
        Some(i) => (&rest[..i], i + 1),
        None => (rest, rest.len()),
    };
    *pos += used;
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Whether `line` is a delimiter of an open multipart: the frame's index (innermost match
/// wins) and whether it is the close delimiter. RFC 2046 §5.1.1 allows trailing whitespace.
fn delimiter(line: &[u8], stack: &[Frame]) -> Option<(usize, bool)> {
    let rest = line.strip_prefix(b"--")?;
    stack.iter().enumerate().rev().find_map(|(i, frame)| {
        let tail = rest.strip_prefix(frame.boundary.as_deref()?)?;
        let (close, tail) = match tail.strip_prefix(b"--") {
            Some(t) => (true, t),
            None => (false, tail),
        };
        tail.iter()
            .all(|&c| c == b' ' || c == b'\t')
            .then_some((i, close))
    })
}

/// Classifies a Content-Type value (after the colon).
fn kind(value: &[u8]) -> Kind {
    let mut params = split_params(value);
    let media = params.next().unwrap_or_default().trim_ascii();
    let is = |prefix: &[u8]| {
        media.len() >= prefix.len() && media[..prefix.len()].eq_ignore_ascii_case(prefix)
    };
    if is(b"message/rfc822") || is(b"message/global") {
        return Kind::Message;
    }
    if !is(b"multipart/") {
        return Kind::Leaf;
    }
    let digest = media.eq_ignore_ascii_case(b"multipart/digest");
    for param in params {
        let Some(eq) = param.iter().position(|&c| c == b'=') else {
            continue;
        };
        if !param[..eq].trim_ascii().eq_ignore_ascii_case(b"boundary") {
            continue;
        }
        let value = param[eq + 1..].trim_ascii();
        let boundary = match value.strip_prefix(b"\"") {
            Some(quoted) => unquote(quoted),
            None => value.to_vec(),
        };
        if boundary.is_empty() {
            return Kind::Leaf;
        }
        return Kind::Multipart { boundary, digest };
    }
    // A multipart without a boundary cannot be split; its body is opaque.
    Kind::Leaf
}

/// Splits at `;` outside double quotes.
fn split_params(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut quoted = false;
    let mut escaped = false;
    value.split(move |&c| {
        if escaped {
            escaped = false;
            return false;
        }
        match c {
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b';' if !quoted => return true,
            _ => {}
        }
        false
    })
}

/// The content of a quoted string whose opening quote is already stripped.
fn unquote(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.iter();
    while let Some(&c) = bytes.next() {
        match c {
            b'"' => break,
            b'\\' => out.extend(bytes.next()),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: MimeLimits = MimeLimits {
        max_depth: 100,
        max_parts: 1000,
    };

    /// `depth` multiparts nested inside one another, each with one text part beside the next.
    fn nested(depth: usize) -> Vec<u8> {
        let mut m = b"From: a@example.org\r\nSubject: nest\r\n".to_vec();
        for i in 0..depth {
            m.extend(format!("Content-Type: multipart/mixed; boundary=\"b{i}\"\r\n\r\n").bytes());
            m.extend(
                format!(
                    "preamble\r\n--b{i}\r\nContent-Type: text/plain\r\n\r\nlevel {i}\r\n--b{i}\r\n"
                )
                .bytes(),
            );
        }
        m.extend(b"Content-Type: text/plain\r\n\r\ninnermost\r\n");
        for i in (0..depth).rev() {
            m.extend(format!("--b{i}--\r\n").bytes());
        }
        m
    }

    #[test]
    fn a_plain_message_has_no_structure() {
        let m = b"From: a@example.org\r\nSubject: hi\r\n\r\n--not a boundary\r\n";
        assert_eq!(check(m, LIMITS), Ok(MimeShape::default()));
    }

    #[test]
    fn nesting_is_measured_and_bounded() {
        for depth in [1, 2, 10, 100] {
            let m = nested(depth);
            let shape = check(&m, LIMITS).unwrap();
            assert_eq!(shape.depth, depth);
            assert_eq!(shape.parts, 2 * depth);
        }
        let tight = MimeLimits {
            max_depth: 9,
            ..LIMITS
        };
        assert_eq!(check(&nested(10), tight), Err(MimeError::TooDeep(9)));
        assert_eq!(check(&nested(5_000), LIMITS), Err(MimeError::TooDeep(100)));
    }

    #[test]
    fn parts_are_counted_and_bounded() {
        let mut m = b"Content-Type: multipart/mixed; boundary=x\r\n\r\n".to_vec();
        for i in 0..50 {
            m.extend(format!("--x\r\nContent-Type: text/plain\r\n\r\npart {i}\r\n").bytes());
        }
        m.extend(b"--x--\r\n");
        assert_eq!(
            check(&m, LIMITS).unwrap(),
            MimeShape {
                depth: 1,
                parts: 50
            }
        );
        let tight = MimeLimits {
            max_parts: 49,
            ..LIMITS
        };
        assert_eq!(check(&m, tight), Err(MimeError::TooManyParts(49)));
    }

    #[test]
    fn encapsulated_messages_nest() {
        // message/rfc822 inside message/rfc822 inside a multipart: depth 3.
        let m = b"Content-Type: multipart/mixed; boundary=outer\r\n\r\n\
            --outer\r\nContent-Type: message/rfc822\r\n\r\n\
            Subject: inner\r\nContent-Type: message/rfc822\r\n\r\n\
            Subject: innermost\r\n\r\nbody\r\n\
            --outer--\r\n";
        assert_eq!(check(m, LIMITS).unwrap(), MimeShape { depth: 3, parts: 1 });
    }

    #[test]
    fn digest_parts_default_to_messages() {
        let m = b"Content-Type: multipart/digest; boundary=d\r\n\r\n\
            --d\r\n\r\nSubject: one\r\nContent-Type: multipart/mixed; boundary=e\r\n\r\n\
            --e\r\n\r\ntext\r\n--e--\r\n\
            --d--\r\n";
        assert_eq!(check(m, LIMITS).unwrap(), MimeShape { depth: 3, parts: 2 });
    }

    #[test]
    fn boundaries_match_exactly_with_trailing_whitespace_and_close_inner_levels() {
        // "--b1" is not a delimiter of "b"; "--b  " is. The outer close ends the inner one too.
        let m = b"Content-Type: multipart/mixed;\r\n boundary=\"b\"\r\n\r\n\
            --b  \r\nContent-Type: multipart/alternative; boundary=\"b1\"\r\n\r\n\
            --b1\r\nContent-Type: text/plain\r\n\r\nx\r\n\
            --b--\r\n\
            --b1\r\n";
        // After the outer close, "--b1" matches nothing open: 2 parts, depth 2.
        assert_eq!(check(m, LIMITS).unwrap(), MimeShape { depth: 2, parts: 2 });
    }

    #[test]
    fn content_type_parameters_are_parsed_like_rfc_2045() {
        for (value, boundary) in [
            (
                &b" multipart/mixed; boundary=\"a;b\"; charset=x"[..],
                &b"a;b"[..],
            ),
            (
                b" MULTIPART/Mixed ; charset=\"x\" ; BOUNDARY = plain",
                b"plain",
            ),
            (b" multipart/related; boundary=\"q\\\"d\"", b"q\"d"),
        ] {
            match kind(value) {
                Kind::Multipart { boundary: b, .. } => assert_eq!(b, boundary),
                _ => panic!("{value:?} not multipart"),
            }
        }
        assert!(matches!(kind(b" multipart/mixed"), Kind::Leaf));
        assert!(matches!(kind(b" text/plain; boundary=x"), Kind::Leaf));
        assert!(matches!(kind(b" Message/RFC822"), Kind::Message));
    }

    /// `Content-Type :` (obsolete syntax) and a second, leaf Content-Type do not hide a
    /// container from the limits.
    #[test]
    fn obsolete_and_duplicate_content_type_fields_still_count() {
        let tight = MimeLimits {
            max_depth: 0,
            ..LIMITS
        };
        let spaced =
            b"Content-Type  : multipart/mixed; boundary=x\r\n\r\n--x\r\n\r\na\r\n--x--\r\n";
        assert_eq!(check(spaced, tight), Err(MimeError::TooDeep(0)));
        let twice =
            b"Content-Type: multipart/mixed; boundary=x\r\nContent-Type: text/plain\r\n\r\n\
            --x\r\n\r\na\r\n--x--\r\n";
        assert_eq!(check(twice, tight), Err(MimeError::TooDeep(0)));
        assert_eq!(
            check(twice, LIMITS).unwrap(),
            MimeShape { depth: 1, parts: 1 }
        );
    }

    proptest::proptest! {
        /// Arbitrary bytes never panic, and the limits always hold on what is returned.
        #[test]
        fn arbitrary_input_stays_within_the_limits(
            body in proptest::collection::vec(proptest::sample::select(
                &b"-\r\n ;=\"abx:Content-Type multipart/mixed; boundary=bmessage/rfc822"[..]), 0..600),
            max_depth in 0usize..4,
            max_parts in 0usize..4,
        ) {
            let limits = MimeLimits { max_depth, max_parts };
            if let Ok(shape) = check(&body, limits) {
                proptest::prop_assert!(shape.depth <= max_depth && shape.parts <= max_parts);
            }
        }
    }
}
