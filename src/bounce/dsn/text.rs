//! Making peer text safe for a notification: cleaning, folding, ASCII and xtext forms, and
//! the Final-Recipient value.

use std::fmt::Write as _;

use super::{MAX_TEXT, MAX_WORD};

/// Writes `first` then the words of `text`, breaking lines before a space once `width` would be
/// passed and starting each new line with `indent`; ends with CRLF. With `indent` = " " this is
/// RFC 5322 §2.2.3 folding: unfolding gives the text back. A word over [`MAX_WORD`] octets is
/// broken across lines (unfolding then adds a space in it); with `first` and `indent` short, no
/// line passes [`MAX_LINE`]. `text` must hold no CR or LF ([`clean`] sees to that).
pub(super) fn fold(out: &mut String, first: &str, text: &str, width: usize, indent: &str) {
    out.push_str(first);
    let mut line_len = first.len();
    let mut line_has_word = false;
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        for (i, piece) in pieces(word, MAX_WORD).enumerate() {
            if line_has_word && (i > 0 || line_len + 1 + piece.len() > width) {
                out.push_str("\r\n");
                out.push_str(indent);
                line_len = indent.len();
                line_has_word = false;
            }
            if line_has_word {
                out.push(' ');
                line_len += 1;
            }
            out.push_str(piece);
            line_len += piece.len();
            line_has_word = true;
        }
    }
    out.push_str("\r\n");
}

/// Splits `s` into pieces of at most `max` octets (at least one character each), on character
/// boundaries.
pub(super) fn pieces(s: &str, max: usize) -> impl Iterator<Item = &str> {
    let mut rest = s;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut end = rest.len().min(max);
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        if end == 0 {
            // `max` is smaller than the first character: take the character whole.
            end = rest.chars().next().map_or(rest.len(), char::len_utf8);
        }
        let (piece, tail) = rest.split_at(end);
        rest = tail;
        Some(piece)
    })
}

/// Peer text made safe for one line: control and white-space characters (CR, LF, TAB, NEL,
/// U+2028, ...) become single spaces, the ends are trimmed, and the result is cut at
/// [`MAX_TEXT`] octets.
pub(super) fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(MAX_TEXT));
    for c in s.chars() {
        let c = if c.is_control() || c.is_whitespace() {
            ' '
        } else {
            c
        };
        if c == ' ' && (out.is_empty() || out.ends_with(' ')) {
            continue;
        }
        if out.len() + c.len_utf8() > MAX_TEXT {
            break;
        }
        out.push(c);
    }
    while out.ends_with(' ') {
        out.pop();
    }
    out
}

/// Replaces non-ASCII characters with `?`, for fields whose grammar is ASCII text.
pub(super) fn ascii(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii() { c } else { '?' })
        .collect()
}

/// Whether a field value already starts with its type, `atom;` (e.g. `smtp;`, `dns;`,
/// `x-local;`). An SMTP reply starts with a digit, so it never looks typed.
pub(super) fn has_type(s: &str) -> bool {
    let Some((kind, _)) = s.split_once(';') else {
        return false;
    };
    let kind = kind.trim();
    kind.starts_with(|c: char| c.is_ascii_alphabetic())
        && kind.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

/// The value without its `type;` prefix, for the explanation.
pub(super) fn strip_type(s: &str) -> &str {
    match s.split_once(';') {
        Some((_, rest)) if has_type(s) => rest.trim_start(),
        _ => s,
    }
}

/// Re-encodes as `+HH` every octet that xtext (RFC 3461 §4) does not allow literally, so that a
/// value that should already be xtext stays one line of ASCII. `+` is kept: in valid xtext it
/// starts an escape. Stops before [`MAX_WORD`] octets so the value is never broken by folding.
pub(super) fn xtext_safe(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        let literal = (0x21..=0x7e).contains(&b) && b != b'=';
        let needed = if literal { 1 } else { 3 };
        if out.len() + needed > MAX_WORD {
            break;
        }
        if literal {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "+{b:02X}");
        }
    }
    out
}

/// The Final-Recipient value: `rfc822;addr` for printable ASCII; otherwise RFC 6533 §3's
/// `utf-8;` form, where every character outside QCHAR is written `\x{HEX}`, so the
/// delivery-status part stays ASCII and no character is lost.
pub(super) fn final_recipient(addr: &str) -> String {
    let addr = addr.trim();
    if addr.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        let mut s = String::with_capacity(addr.len() + 7);
        s.push_str("rfc822;");
        for c in addr.chars() {
            if s.len() >= MAX_TEXT {
                break;
            }
            s.push(c);
        }
        return s;
    }
    let mut s = String::from("utf-8;");
    for c in addr.chars() {
        // RFC 6533 §3: QCHAR = %x21-2a / %x2c-3c / %x3e-5b / %x5d-7e.
        let qchar =
            matches!(c, '\x21'..='\x2a' | '\x2c'..='\x3c' | '\x3e'..='\x5b' | '\x5d'..='\x7e');
        let before = s.len();
        if qchar {
            s.push(c);
        } else {
            let _ = write!(s, "\\x{{{:X}}}", u32::from(c));
        }
        if s.len() > MAX_WORD {
            s.truncate(before);
            break;
        }
    }
    s
}
