//! Reading a message's header fields for signing: the field list, and the header From domain
//! that picks the key.

use super::*;

/// Returns the lower-case domain (A-label form for internationalized names) of the first
/// address in the message's From header field.
///
/// Returns `None` when the header section has no From field or more than one (RFC 5322 §3.6
/// allows exactly one, and RFC 7489 §6.6.1 lets receivers reject such messages), when the
/// first address has no domain, or when the domain is not a valid domain name (an address
/// literal, for instance).
pub fn header_from_domain(message: &[u8]) -> Option<String> {
    let mut from = None;
    for (name, value) in HeaderFields::new(message) {
        if name.eq_ignore_ascii_case(b"From") && from.replace(value).is_some() {
            return None;
        }
    }
    let parsed = MessageStream::new(from?).parse_address();
    let address = parsed.as_address()?.first()?.address()?;
    let (_, domain) = address.rsplit_once('@')?;
    normalize_domain(domain)
}

/// The header fields of `message` in order, and the body (after the empty line, RFC 5322
/// §2.1); a message without an empty line has an empty body.
pub(super) fn split_message(message: &[u8]) -> (Vec<Field<'_>>, &[u8]) {
    let mut iter = HeaderFields::new(message);
    let fields: Vec<_> = iter.by_ref().collect();
    let body = message.get(iter.pos..).unwrap_or_default();
    (fields, body)
}

/// Iterates the header fields of a message as (name, value) where the value runs from after
/// the colon through the field's final line break, folding included: the shape mail-auth's
/// canonicalization expects. Lines without a colon are not fields and are skipped.
pub(super) struct HeaderFields<'a> {
    message: &'a [u8],
    /// Start of the next field; after iteration ends, the start of the body.
    pos: usize,
    done: bool,
}

impl<'a> HeaderFields<'a> {
    fn new(message: &'a [u8]) -> Self {
        HeaderFields {
            message,
            pos: 0,
            done: false,
        }
    }
}

impl<'a> Iterator for HeaderFields<'a> {
    type Item = Field<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            let rest = self.message.get(self.pos..).unwrap_or_default();
            let separator = if rest.starts_with(b"\r\n") {
                Some(2)
            } else if rest.starts_with(b"\n") {
                Some(1)
            } else if rest.is_empty() {
                Some(0)
            } else {
                None
            };
            if let Some(len) = separator {
                self.done = true;
                self.pos += len;
                return None;
            }
            // RFC 5322 §2.2.3: a field ends at a line break not followed by WSP. `end` only
            // moves past a '\n' found in `rest`, so it never exceeds `rest.len()`.
            let mut end = 0;
            loop {
                match rest[end..].iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        end += i + 1;
                        if !matches!(rest.get(end), Some(b' ' | b'\t')) {
                            break;
                        }
                    }
                    None => {
                        end = rest.len();
                        break;
                    }
                }
            }
            let field = &rest[..end];
            self.pos += end;
            if let Some(colon) = field.iter().position(|&b| b == b':') {
                return Some((&field[..colon], &field[colon + 1..]));
            }
        }
        None
    }
}
