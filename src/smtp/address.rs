//! Envelope addresses: [`Mailbox`], [`Domain`], [`ReversePath`] and [`SenderPattern`].
//!
//! Parsing follows RFC 5321 §4.1.2 with the SMTPUTF8 extension of RFC 6531 §3.3 (non-ASCII
//! UTF-8 allowed in local parts and domains). Source routes are accepted and dropped (RFC 5321
//! §4.1.2 and Appendix C). Length limits of RFC 5321 §4.5.3.1 are enforced so an address can
//! never be larger than a command line allows. Unqualified addresses (no `@domain`) are rejected.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// RFC 5321 §4.5.3.1.1: the local part is at most 64 octets.
const MAX_LOCAL_PART: usize = 64;
/// RFC 5321 §4.5.3.1.2: a domain is at most 255 octets.
const MAX_DOMAIN: usize = 255;
/// RFC 1035 §2.3.4: a label is at most 63 octets.
const MAX_LABEL: usize = 63;
/// RFC 5321 §4.5.3.1.3: a path (brackets included) is at most 256 octets.
const MAX_PATH: usize = 256;

/// Why an address failed to parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// The path is not enclosed in `<` and `>`.
    #[error("path not enclosed in angle brackets")]
    MissingBrackets,
    /// `<>` where a mailbox is required.
    #[error("empty path")]
    Empty,
    /// The path is longer than RFC 5321 allows.
    #[error("path longer than {MAX_PATH} octets")]
    TooLong,
    /// No `@domain` part: unqualified addresses are not accepted.
    #[error("address has no domain")]
    Unqualified,
    /// The local part is not a valid dot-string or quoted string, or is too long.
    #[error("invalid local part")]
    LocalPart,
    /// The domain is not a valid name, or is too long.
    #[error("invalid domain")]
    Domain,
    /// An address literal is not a valid IPv4 or `IPv6:` address.
    #[error("invalid address literal")]
    AddressLiteral,
    /// A source route (`@a,@b:`) is malformed.
    #[error("invalid source route")]
    SourceRoute,
}

/// The domain of a mailbox: a name or an address literal (RFC 5321 §4.1.3).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Domain {
    /// A domain name as given (U-labels allowed); compare with [`Domain::eq_ignore_case`].
    Name(String),
    /// `[192.0.2.1]`.
    Ipv4(Ipv4Addr),
    /// `[IPv6:2001:db8::1]`.
    Ipv6(Ipv6Addr),
}

impl Domain {
    /// Parses a domain name or address literal.
    pub fn parse(s: &str) -> Result<Domain, AddressError> {
        if let Some(inner) = s.strip_prefix('[') {
            let inner = inner
                .strip_suffix(']')
                .ok_or(AddressError::AddressLiteral)?;
            let v6 = inner
                .get(..5)
                .filter(|tag| tag.eq_ignore_ascii_case("IPv6:"))
                .and_then(|_| inner.get(5..));
            return match v6 {
                Some(addr) => addr.parse().map(Domain::Ipv6),
                None => inner.parse().map(Domain::Ipv4),
            }
            .map_err(|_| AddressError::AddressLiteral);
        }
        if s.is_empty() || s.len() > MAX_DOMAIN {
            return Err(AddressError::Domain);
        }
        for label in s.split('.') {
            let bytes = label.as_bytes();
            let ok = !bytes.is_empty()
                && bytes.len() <= MAX_LABEL
                && bytes.first() != Some(&b'-')
                && bytes.last() != Some(&b'-')
                && bytes
                    .iter()
                    .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b >= 0x80);
            if !ok {
                return Err(AddressError::Domain);
            }
        }
        Ok(Domain::Name(s.to_owned()))
    }

    /// Compares two domains, ignoring case in names.
    pub fn eq_ignore_case(&self, other: &Domain) -> bool {
        match (self, other) {
            (Domain::Name(a), Domain::Name(b)) => a.to_lowercase() == b.to_lowercase(),
            _ => self == other,
        }
    }

    /// The lower-cased textual form used for matching.
    fn folded(&self) -> String {
        self.to_string().to_lowercase()
    }
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Domain::Name(name) => f.write_str(name),
            Domain::Ipv4(ip) => write!(f, "[{ip}]"),
            Domain::Ipv6(ip) => write!(f, "[IPv6:{ip}]"),
        }
    }
}

/// A mailbox `local@domain` (RFC 5321 §4.1.2).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Mailbox {
    /// The local part, unquoted (quoted-pair escapes removed).
    pub local: String,
    /// The domain.
    pub domain: Domain,
}

impl Mailbox {
    /// Parses `local@domain` without angle brackets.
    pub fn parse(s: &str) -> Result<Mailbox, AddressError> {
        let (local, domain) = if s.starts_with('"') {
            let end = quoted_end(s).ok_or(AddressError::LocalPart)?;
            let (quoted, rest) = s.split_at(end);
            let domain = rest.strip_prefix('@').ok_or(if rest.is_empty() {
                AddressError::Unqualified
            } else {
                AddressError::LocalPart
            })?;
            (unquote(quoted).ok_or(AddressError::LocalPart)?, domain)
        } else {
            let (local, domain) = s.rsplit_once('@').ok_or(AddressError::Unqualified)?;
            if !is_dot_string(local) {
                return Err(AddressError::LocalPart);
            }
            (local.to_owned(), domain)
        };
        if local.is_empty() || local.len() > MAX_LOCAL_PART {
            return Err(AddressError::LocalPart);
        }
        Ok(Mailbox {
            local,
            domain: Domain::parse(domain)?,
        })
    }

    /// Parses a bracketed path `<[@route:]local@domain>` (RFC 5321 §4.1.2), dropping the route.
    pub fn parse_path(s: &str) -> Result<Mailbox, AddressError> {
        match ReversePath::parse(s)? {
            ReversePath::Null => Err(AddressError::Empty),
            ReversePath::Mailbox(m) => Ok(m),
        }
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if is_dot_string(&self.local) {
            f.write_str(&self.local)?;
        } else {
            f.write_str("\"")?;
            for c in self.local.chars() {
                if c == '"' || c == '\\' {
                    f.write_str("\\")?;
                }
                write!(f, "{c}")?;
            }
            f.write_str("\"")?;
        }
        write!(f, "@{}", self.domain)
    }
}

/// The MAIL FROM path: a mailbox or the null path `<>` used by bounces (RFC 5321 §4.5.5).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum ReversePath {
    /// `<>`.
    Null,
    /// A mailbox.
    Mailbox(Mailbox),
}

impl ReversePath {
    /// Parses a bracketed path; `<>` gives [`ReversePath::Null`].
    pub fn parse(s: &str) -> Result<ReversePath, AddressError> {
        if s.len() > MAX_PATH {
            return Err(AddressError::TooLong);
        }
        let inner = s
            .strip_prefix('<')
            .and_then(|s| s.strip_suffix('>'))
            .ok_or(AddressError::MissingBrackets)?;
        if inner.is_empty() {
            return Ok(ReversePath::Null);
        }
        let mailbox = match inner.strip_prefix('@') {
            // RFC 5321 §4.1.2 / Appendix C: the source route is accepted and ignored.
            Some(route) => {
                let (route, mailbox) = route.split_once(':').ok_or(AddressError::SourceRoute)?;
                for (i, hop) in route.split(',').enumerate() {
                    let hop = if i == 0 {
                        Some(hop)
                    } else {
                        hop.strip_prefix('@')
                    };
                    match hop.map(Domain::parse) {
                        Some(Ok(_)) => {}
                        _ => return Err(AddressError::SourceRoute),
                    }
                }
                mailbox
            }
            None => inner,
        };
        Mailbox::parse(mailbox).map(ReversePath::Mailbox)
    }
}

impl fmt::Display for ReversePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => f.write_str("<>"),
            ReversePath::Mailbox(m) => write!(f, "<{m}>"),
        }
    }
}

/// Which envelope senders an authenticated user may use.
///
/// Text forms: `alice@example.com` (exact), `*@example.com` (any local part at that domain),
/// `*` (anything). Matching ignores case in both parts.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SenderPattern {
    /// One address; both parts stored lower-cased.
    Exact {
        /// Lower-cased local part.
        local: String,
        /// Lower-cased domain text.
        domain: String,
    },
    /// Any local part at this lower-cased domain text.
    Domain(String),
    /// Any sender.
    Any,
}

impl SenderPattern {
    /// Parses the text form.
    pub fn parse(s: &str) -> Result<SenderPattern, AddressError> {
        if s == "*" {
            return Ok(SenderPattern::Any);
        }
        if let Some(domain) = s.strip_prefix("*@") {
            return Ok(SenderPattern::Domain(Domain::parse(domain)?.folded()));
        }
        let m = Mailbox::parse(s)?;
        Ok(SenderPattern::Exact {
            local: m.local.to_lowercase(),
            domain: m.domain.folded(),
        })
    }

    /// Whether `mailbox` is covered by this pattern.
    pub fn matches(&self, mailbox: &Mailbox) -> bool {
        match self {
            SenderPattern::Any => true,
            SenderPattern::Domain(d) => *d == mailbox.domain.folded(),
            SenderPattern::Exact { local, domain } => {
                *domain == mailbox.domain.folded() && *local == mailbox.local.to_lowercase()
            }
        }
    }
}

/// RFC 5321 §4.1.2 atext, extended by RFC 6531 §3.3 with any non-ASCII character.
fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c) || !c.is_ascii()
}

fn is_dot_string(s: &str) -> bool {
    !s.is_empty()
        && s.split('.')
            .all(|atom| !atom.is_empty() && atom.chars().all(is_atext))
}

/// Index just past the closing quote of a quoted string starting at `s[0] == '"'`.
fn quoted_end(s: &str) -> Option<usize> {
    let mut escaped = false;
    for (i, c) in s.char_indices().skip(1) {
        match (escaped, c) {
            (true, _) => escaped = false,
            (false, '\\') => escaped = true,
            (false, '"') => return Some(i + 1),
            _ => {}
        }
    }
    None
}

/// Decodes a quoted string (RFC 5321 §4.1.2 Quoted-string), `None` if it holds forbidden bytes.
fn unquote(quoted: &str) -> Option<String> {
    let inner = quoted.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        let c = if c == '\\' { chars.next()? } else { c };
        // qtextSMTP is %d32-33 / %d35-91 / %d93-126 (plus UTF-8); quoted-pair is %d32-126.
        if c.is_ascii_control() {
            return None;
        }
        out.push(c);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mb(local: &str, domain: &str) -> Mailbox {
        Mailbox {
            local: local.into(),
            domain: Domain::Name(domain.into()),
        }
    }

    #[test]
    fn path_table() {
        use AddressError::*;
        let cases: Vec<(&str, Result<ReversePath, AddressError>)> = vec![
            ("<>", Ok(ReversePath::Null)),
            (
                "<a@b.example>",
                Ok(ReversePath::Mailbox(mb("a", "b.example"))),
            ),
            (
                "<@r1.example,@r2.example:u@c.example>",
                Ok(ReversePath::Mailbox(mb("u", "c.example"))),
            ),
            (
                "<\"a b\\\"c\"@x.example>",
                Ok(ReversePath::Mailbox(mb("a b\"c", "x.example"))),
            ),
            (
                "<\"a@b\"@x.example>",
                Ok(ReversePath::Mailbox(mb("a@b", "x.example"))),
            ),
            (
                "<δοκιμή@παράδειγμα.δοκιμή>",
                Ok(ReversePath::Mailbox(mb("δοκιμή", "παράδειγμα.δοκιμή"))),
            ),
            (
                "<a@[192.0.2.1]>",
                Ok(ReversePath::Mailbox(Mailbox {
                    local: "a".into(),
                    domain: super::Domain::Ipv4(Ipv4Addr::new(192, 0, 2, 1)),
                })),
            ),
            (
                "<a@[IPv6:2001:db8::1]>",
                Ok(ReversePath::Mailbox(Mailbox {
                    local: "a".into(),
                    domain: super::Domain::Ipv6("2001:db8::1".parse().unwrap()),
                })),
            ),
            ("a@b.example", Err(MissingBrackets)),
            ("<a@b.example", Err(MissingBrackets)),
            ("<postmaster>", Err(Unqualified)),
            ("<a@>", Err(Domain)),
            ("<@b.example>", Err(SourceRoute)),
            ("<a..b@c.example>", Err(LocalPart)),
            (".a@c.example>", Err(MissingBrackets)),
            ("<.a@c.example>", Err(LocalPart)),
            ("<a b@c.example>", Err(LocalPart)),
            ("<a@-c.example>", Err(Domain)),
            ("<a@c..example>", Err(Domain)),
            ("<a@c_d.example>", Err(Domain)),
            ("<a@[300.1.1.1]>", Err(AddressLiteral)),
            ("<a@[IPv6:zz]>", Err(AddressLiteral)),
            ("<a@[tag:x]>", Err(AddressLiteral)),
            ("<\"unterminated@c.example>", Err(LocalPart)),
            ("<\"q\"x@c.example>", Err(LocalPart)),
            ("<\"q\">", Err(Unqualified)),
            ("<@a.example,b.example:u@c.example>", Err(SourceRoute)),
            ("<@a.example:u>", Err(Unqualified)),
        ];
        for (input, want) in cases {
            assert_eq!(ReversePath::parse(input), want, "input {input:?}");
        }
        let long_local = format!("<{}@c.example>", "a".repeat(65));
        assert_eq!(ReversePath::parse(&long_local), Err(LocalPart));
        let long_path = format!("<a@{}.example>", "b".repeat(260));
        assert_eq!(ReversePath::parse(&long_path), Err(TooLong));
        assert_eq!(Mailbox::parse_path("<>"), Err(Empty));
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "<a@b.example>",
            "<\"a b\"@b.example>",
            "<a@[IPv6:2001:db8::1]>",
            "<>",
        ] {
            assert_eq!(ReversePath::parse(s).unwrap().to_string(), s);
        }
    }

    #[test]
    fn sender_patterns_ignore_case() {
        let m = Mailbox::parse("Alice@Example.COM").unwrap();
        let yes = [
            "alice@example.com",
            "ALICE@example.com",
            "*@EXAMPLE.com",
            "*",
        ];
        for p in yes {
            assert!(SenderPattern::parse(p).unwrap().matches(&m), "{p}");
        }
        for p in ["bob@example.com", "*@other.example", "alice@example.org"] {
            assert!(!SenderPattern::parse(p).unwrap().matches(&m), "{p}");
        }
        assert_eq!(SenderPattern::parse("*@"), Err(AddressError::Domain));
        assert_eq!(
            SenderPattern::parse("alice"),
            Err(AddressError::Unqualified)
        );
        assert!(
            Domain::parse("A.example")
                .unwrap()
                .eq_ignore_case(&Domain::parse("a.EXAMPLE").unwrap())
        );
    }
}
