//! Reading a Content-Type field: its unfolded value and its parameters.

/// The unfolded value of the first Content-Type field of a header section, if any.
pub(super) fn content_type_value(headers: &[u8]) -> Option<Vec<u8>> {
    let mut value: Option<Vec<u8>> = None;
    for raw in headers.split(|b| *b == b'\n') {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if line.is_empty() {
            break;
        }
        if matches!(line[0], b' ' | b'\t') {
            if let Some(v) = value.as_mut() {
                v.extend_from_slice(line);
            }
            continue;
        }
        if value.is_some() {
            break;
        }
        if let Some(colon) = line.iter().position(|b| *b == b':')
            && line[..colon]
                .trim_ascii()
                .eq_ignore_ascii_case(b"content-type")
        {
            value = Some(line[colon + 1..].to_vec());
        }
    }
    value
}

/// Splits a Content-Type value at `;` into the media type and `name=value` parameters, with
/// quoted strings unquoted and comments (RFC 5322 §3.2.2) removed; items are trimmed.
pub(super) fn split_parameters(value: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut current = String::new();
    let mut chars = value.chars();
    let mut in_quotes = false;
    let mut comment_depth = 0usize;
    while let Some(c) = chars.next() {
        match c {
            '\\' if in_quotes || comment_depth > 0 => {
                if let Some(escaped) = chars.next()
                    && comment_depth == 0
                {
                    current.push(escaped);
                }
            }
            '"' if comment_depth == 0 => in_quotes = !in_quotes,
            '(' if !in_quotes => comment_depth += 1,
            ')' if !in_quotes && comment_depth > 0 => comment_depth -= 1,
            _ if comment_depth > 0 => {}
            ';' if !in_quotes => items.push(std::mem::take(&mut current)),
            c if !in_quotes && c.is_whitespace() => {}
            c => current.push(c),
        }
    }
    items.push(current);
    items
}
