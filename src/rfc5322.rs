//! Internet Message Format helpers (RFC 5322) shared by every layer that reads or writes a
//! message: where the header section ends, whether a field is present, and the date format.
//! Pure functions on bytes and times passed in.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The header section of a message: up to and including the CRLF that ends its last field,
/// without the empty line. All of it when there is no empty line (a message with no body).
pub fn header_section(message: &[u8]) -> &[u8] {
    if message.starts_with(b"\r\n") {
        return &[];
    }
    match message.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => &message[..i + 2],
        None => message,
    }
}

/// Whether the header section has a field with this (lower-case) name.
pub fn has_header(headers: &[u8], name: &str) -> bool {
    headers.split(|b| *b == b'\n').any(|line| {
        line.len() > name.len()
            && line[name.len()] == b':'
            && line[..name.len()].eq_ignore_ascii_case(name.as_bytes())
    })
}

/// RFC 5322 §3.3 date in UTC with a numeric zone, e.g. `Wed, 25 Nov 2026 11:47:45 +0000`.
/// A time outside 1970..=9999 is clamped to that range (a stepped clock must not panic).
pub fn date(t: SystemTime) -> String {
    let mut t = t.max(UNIX_EPOCH);
    if let Some(last) = UNIX_EPOCH.checked_add(Duration::from_secs(253_402_300_799)) {
        t = t.min(last);
    }
    // httpdate gives "Wed, 25 Nov 2026 11:47:45 GMT"; RFC 5322 prefers a numeric zone.
    let s = httpdate::fmt_http_date(t);
    match s.strip_suffix("GMT") {
        Some(prefix) => format!("{prefix}+0000"),
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_section_and_lookup() {
        let body = b"From: a@b\r\nmessage-ID: <x@y>\r\n\r\nDate: not a header\r\n";
        let h = header_section(body);
        assert_eq!(h, b"From: a@b\r\nmessage-ID: <x@y>\r\n");
        assert!(has_header(h, "message-id"));
        assert!(!has_header(h, "date"));
        assert!(!has_header(h, "from:"));
        assert_eq!(header_section(b"\r\nbody only"), b"");
        assert_eq!(
            header_section(b"Subject: no body\r\n"),
            b"Subject: no body\r\n"
        );
    }

    #[test]
    fn dates_are_rfc5322_and_clamped() {
        let t = UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        assert_eq!(date(t), "Wed, 18 Nov 2026 11:06:40 +0000");
        assert_eq!(
            date(UNIX_EPOCH - Duration::from_secs(5)),
            "Thu, 01 Jan 1970 00:00:00 +0000"
        );
        let far = UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        assert_eq!(date(far), "Fri, 31 Dec 9999 23:59:59 +0000");
    }
}
