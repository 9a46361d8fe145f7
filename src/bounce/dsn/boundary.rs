//! The MIME boundary: the caller's, cleaned, and lengthened until no content contains it.

use super::{BCHARS, FALLBACK_BOUNDARY, MAX_BOUNDARY};

/// Keeps the characters RFC 2046 §5.1.1 allows in a boundary (spaces dropped, so none can end
/// it), at most 70 of them.
pub(super) fn clean_boundary(boundary: &str) -> String {
    let cleaned: String = boundary
        .bytes()
        .filter(|b| BCHARS.contains(b))
        .take(MAX_BOUNDARY)
        .map(char::from)
        .collect();
    if cleaned.is_empty() {
        FALLBACK_BOUNDARY.to_owned()
    } else {
        cleaned
    }
}

/// `preferred`, lengthened if needed so that `--boundary` occurs in none of `contents`.
///
/// Each round appends the boundary character that least often follows the current delimiter in
/// the contents; one that never follows it ends the search. When every character follows
/// (only crafted input does that), the count still drops by a factor of at least
/// `BCHARS.len()` per round, so a few rounds suffice for any input that fits in memory.
pub(super) fn collision_free_boundary(preferred: String, contents: &[&[u8]]) -> String {
    let mut boundary = preferred;
    let mut shortened = false;
    loop {
        let Some(followers) = delimiter_followers(&boundary, contents) else {
            return boundary;
        };
        if !shortened && boundary.len() > MAX_BOUNDARY / 2 {
            // Leave room to append; the shorter boundary is checked again. It is ASCII, so any
            // length is a character boundary.
            shortened = true;
            boundary.truncate(MAX_BOUNDARY / 2);
            continue;
        }
        if boundary.len() >= MAX_BOUNDARY {
            // Unreachable for real sizes (see above): it would take over 74^35 occurrences.
            return boundary;
        }
        let next = BCHARS
            .iter()
            .copied()
            .min_by_key(|c| followers[usize::from(*c)])
            .unwrap_or(b'0');
        boundary.push(char::from(next));
    }
}

/// How often each octet follows `--boundary` in `contents`, or `None` when it never occurs.
pub(super) fn delimiter_followers(boundary: &str, contents: &[&[u8]]) -> Option<[usize; 256]> {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    let mut found = false;
    let mut followers = [0usize; 256];
    for content in contents {
        for (i, window) in content.windows(delimiter.len()).enumerate() {
            if window == delimiter {
                found = true;
                if let Some(&next) = content.get(i + delimiter.len()) {
                    followers[usize::from(next)] += 1;
                }
            }
        }
    }
    found.then_some(followers)
}
