//! The third part of a notification: how much of the original goes back (RFC 3462 §2,
//! RFC 3464 §2) and whether it can travel unchanged.

use super::{DsnAction, DsnInput, MAX_LINE, ReturnContent};
use crate::rfc5322::header_section;

/// What goes in the third part.
pub(super) enum Returned<'a> {
    Full(&'a [u8]),
    Headers {
        headers: &'a [u8],
        why: HeadersOnly,
        /// Some trailing header fields were left out.
        cut: bool,
    },
    Nothing(HeadersOnly),
}

/// Why the headers rather than the whole message go back.
pub(super) enum HeadersOnly {
    /// The sender asked for headers, or nothing failed (RFC 3461 §4.3).
    Asked,
    TooLarge {
        size: usize,
        cap: usize,
    },
    /// A line over 998 octets, a bare CR or LF, or a NUL: the message cannot be carried
    /// unchanged as an 8bit body part (RFC 2045 §2.8).
    NotTransportable,
}

impl Returned<'_> {
    pub(super) fn bytes(&self) -> &[u8] {
        match self {
            Returned::Full(b) => b,
            Returned::Headers { headers, .. } => headers,
            Returned::Nothing(_) => &[],
        }
    }

    pub(super) fn part_type(&self) -> Option<(&'static str, &'static str)> {
        match self {
            Returned::Full(message) => {
                if header_section(message).is_ascii() {
                    Some(("message/rfc822", "Original message"))
                } else {
                    Some(("message/global", "Original message"))
                }
            }
            Returned::Headers { headers, .. } => {
                if headers.is_ascii() {
                    Some(("text/rfc822-headers", "Original message headers"))
                } else {
                    Some(("message/global-headers", "Original message headers"))
                }
            }
            Returned::Nothing(_) => None,
        }
    }
}

pub(super) fn choose_returned<'a>(input: &DsnInput<'a>) -> Returned<'a> {
    let original = input.original;
    let cap = input.max_returned_body;
    let any_failed = input
        .recipients
        .iter()
        .any(|r| r.action == DsnAction::Failed);
    let why = if input.return_content == ReturnContent::Full && any_failed {
        if original.len() > cap {
            HeadersOnly::TooLarge {
                size: original.len(),
                cap,
            }
        } else if !is_transportable(original) {
            HeadersOnly::NotTransportable
        } else {
            return Returned::Full(original);
        }
    } else {
        HeadersOnly::Asked
    };
    let section = header_section(original);
    let headers = whole_fields_prefix(section, cap);
    if headers.is_empty() {
        return Returned::Nothing(why);
    }
    Returned::Headers {
        headers,
        why,
        cut: headers.len() < section.len(),
    }
}

/// The longest prefix of `section` made of whole fields that fits in `cap` octets and whose
/// lines are all transportable.
pub(super) fn whole_fields_prefix(section: &[u8], cap: usize) -> &[u8] {
    let mut end = 0;
    let mut field_end = 0;
    for line in section.split_inclusive(|b| *b == b'\n') {
        let starts_field = !matches!(line.first(), Some(b' ' | b'\t'));
        if starts_field {
            end = field_end;
        }
        if field_end + line.len() > cap || !is_transportable(line) {
            return &section[..end];
        }
        field_end += line.len();
    }
    &section[..field_end]
}

/// Whether `content` can go out unchanged as an 8bit body part: CRLF line endings only, no NUL,
/// lines within 998 octets.
pub(super) fn is_transportable(content: &[u8]) -> bool {
    content.split_inclusive(|b| *b == b'\n').all(|line| {
        let body = match line.strip_suffix(b"\n") {
            Some(rest) => match rest.strip_suffix(b"\r") {
                Some(body) => body,
                None => return false,
            },
            // The last line without a line ending gets a CRLF from `render`.
            None => line,
        };
        body.len() <= MAX_LINE && !body.iter().any(|b| *b == b'\r' || *b == 0)
    })
}

pub(super) fn returned_note(returned: &Returned<'_>) -> String {
    let why = match returned {
        Returned::Full(_) => return "A copy of the original message is attached.".to_owned(),
        Returned::Headers { why, .. } | Returned::Nothing(why) => why,
    };
    let what = match returned {
        Returned::Headers { cut: false, .. } => "its headers are attached.",
        Returned::Headers { cut: true, .. } => {
            "the first of its header fields are attached; the rest did not fit."
        }
        _ => "not even its headers could be attached.",
    };
    match why {
        HeadersOnly::Asked => {
            let mut s = "The original message is not returned; ".to_owned();
            s.push_str(what);
            s
        }
        HeadersOnly::TooLarge { size, cap } => format!(
            "The original message is {size} bytes, over the {cap}-byte limit for returned \
             messages, so {what}"
        ),
        HeadersOnly::NotTransportable => format!(
            "The original message cannot be returned unchanged (it has overlong lines or \
             stray line breaks), so {what}"
        ),
    }
}
